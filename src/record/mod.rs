//! asciicast v2 recording: one file per shell/exec channel, a JSON header line
//! then one JSON array per event — `"o"` output, `"i"` input, `"r"` resize
//! (`"COLSxROWS"`), `"m"` marker — each written with a single `write` and
//! flushed as it happens, so a server killed with SIGKILL leaves a file that
//! `asciinema cat`/`play` still read (at worst without the events not yet
//! produced). Output is bytes; a UTF-8 sequence split across chunks is carried
//! to the next event, invalid bytes become U+FFFD (asciinema needs text).
//!
//! Format: <https://docs.asciinema.org/manual/asciicast/v2/>.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

/// Recording errors. Any of them ends (or refuses) the session: a session
/// that cannot be recorded does not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be created.
    #[error("cannot create recording {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A write or flush failed (disk full, file system gone).
    #[error("cannot write recording {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The asciicast v2 header.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Header {
    pub width: u16,
    pub height: u16,
    /// Unix seconds when recording began.
    pub timestamp: i64,
    pub title: String,
    /// Usually `TERM` and `SHELL`.
    pub env: BTreeMap<String, String>,
    /// The exec command, when not a shell.
    pub command: Option<String>,
}

#[derive(Serialize)]
struct WireHeader<'a> {
    version: u8,
    width: u16,
    height: u16,
    timestamp: i64,
    #[serde(skip_serializing_if = "str::is_empty")]
    title: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    env: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: &'a Option<String>,
}

/// A recording in progress.
pub struct Recorder {
    path: PathBuf,
    file: File,
    start: Instant,
    last: f64,
    /// Incomplete UTF-8 tail of the previous chunk, per stream ("o", "i").
    carry_out: Vec<u8>,
    carry_in: Vec<u8>,
    events: u64,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("path", &self.path)
            .field("events", &self.events)
            .finish()
    }
}

impl Recorder {
    /// Create `path` (0600; parent dirs 0700) and write the header.
    pub fn create(path: &Path, header: &Header) -> Result<Recorder, Error> {
        let create_err = |source| Error::Create {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(create_err)?;
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(create_err)?;
        let mut r = Recorder {
            path: path.to_path_buf(),
            file,
            start: Instant::now(),
            last: 0.0,
            carry_out: Vec::new(),
            carry_in: Vec::new(),
            events: 0,
        };
        let wire = WireHeader {
            version: 2,
            width: header.width.max(1),
            height: header.height.max(1),
            timestamp: header.timestamp,
            title: &header.title,
            env: &header.env,
            command: &header.command,
        };
        let mut line = serde_json::to_vec(&wire).map_err(|e| Error::Create {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
        line.push(b'\n');
        r.write_line(&line).map_err(|e| match e {
            Error::Write { path, source } => Error::Create { path, source },
            other => other,
        })?;
        Ok(r)
    }

    /// Path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Events written so far (header excluded).
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Session output, as the client saw it (after masking).
    pub fn output(&mut self, data: &[u8]) -> Result<(), Error> {
        let text = take_utf8(&mut self.carry_out, data);
        if text.is_empty() {
            return Ok(());
        }
        self.event("o", &text)
    }

    /// Client input (only when policy or config asks for it).
    pub fn input(&mut self, data: &[u8]) -> Result<(), Error> {
        let text = take_utf8(&mut self.carry_in, data);
        if text.is_empty() {
            return Ok(());
        }
        self.event("i", &text)
    }

    /// Terminal resize.
    pub fn resize(&mut self, cols: u16, rows: u16) -> Result<(), Error> {
        self.event("r", &format!("{cols}x{rows}"))
    }

    /// A marker (blocked command, approval, ...); shows in players that support markers.
    pub fn marker(&mut self, label: &str) -> Result<(), Error> {
        self.event("m", label)
    }

    /// Flush what is left (an incomplete UTF-8 tail becomes U+FFFD) and sync.
    pub fn finish(mut self) -> Result<(), Error> {
        if !self.carry_out.is_empty() {
            let rest = String::from_utf8_lossy(&std::mem::take(&mut self.carry_out)).into_owned();
            self.event("o", &rest)?;
        }
        self.file.sync_all().map_err(|source| Error::Write {
            path: self.path.clone(),
            source,
        })
    }

    fn event(&mut self, kind: &str, data: &str) -> Result<(), Error> {
        // Times never go backwards, even if Instant is coarse.
        let t = self.start.elapsed().as_secs_f64().max(self.last);
        self.last = t;
        let mut line = Vec::with_capacity(data.len() + 32);
        line.push(b'[');
        line.extend_from_slice(format!("{t:.6}").as_bytes());
        line.extend_from_slice(b", ");
        line.extend_from_slice(serde_json::Value::from(kind).to_string().as_bytes());
        line.extend_from_slice(b", ");
        line.extend_from_slice(serde_json::Value::from(data).to_string().as_bytes());
        line.extend_from_slice(b"]\n");
        self.write_line(&line)?;
        self.events += 1;
        Ok(())
    }

    /// One `write` per event line: a SIGKILL between events never leaves a
    /// torn line behind.
    fn write_line(&mut self, line: &[u8]) -> Result<(), Error> {
        self.file
            .write_all(line)
            .and_then(|_| self.file.flush())
            .map_err(|source| Error::Write {
                path: self.path.clone(),
                source,
            })
    }
}

/// Append `data` to `carry`, return the longest valid-UTF-8-decodable prefix as
/// text (invalid bytes as U+FFFD) and keep an incomplete trailing sequence.
fn take_utf8(carry: &mut Vec<u8>, data: &[u8]) -> String {
    carry.extend_from_slice(data);
    let keep = incomplete_tail(carry);
    let split = carry.len() - keep;
    let rest = carry.split_off(split);
    let text = String::from_utf8_lossy(carry).into_owned();
    *carry = rest;
    text
}

/// Length of an incomplete (but so far valid) UTF-8 sequence at the end of `b`.
fn incomplete_tail(b: &[u8]) -> usize {
    let n = b.len();
    for back in 1..=3.min(n) {
        let Some(&byte) = b.get(n - back) else { break };
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue; // continuation byte: keep looking for the lead byte
        }
        let need = match byte {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => 1, // ASCII or a byte that can never start a sequence
        };
        return if need > back { back } else { 0 };
    }
    0
}

/// Where a session's recording goes: `<dir>/<YYYY-MM-DD>/<session-id>.cast`.
pub fn recording_path(dir: &Path, session_id: &str) -> PathBuf {
    let now = time::OffsetDateTime::now_utc();
    let day = format!(
        "{:04}-{:02}-{:02}",
        now.year(),
        u8::from(now.month()),
        now.day()
    );
    dir.join(day).join(format!("{session_id}.cast"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            width: 80,
            height: 24,
            timestamp: 1_700_000_000,
            title: "alice (local) session s1".into(),
            env: [("TERM".to_string(), "xterm".to_string())]
                .into_iter()
                .collect(),
            command: None,
        }
    }

    fn lines(p: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn writes_header_and_events() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b.cast");
        let mut r = Recorder::create(&p, &header()).unwrap();
        r.output(b"hello \xe2\x82").unwrap(); // split euro sign
        r.output(b"\xac!\r\n").unwrap();
        r.input(b"ls\r").unwrap();
        r.resize(100, 30).unwrap();
        r.marker("blocked: rm -rf /").unwrap();
        r.output(b"bad \xff byte").unwrap();
        r.finish().unwrap();
        let l = lines(&p);
        assert_eq!(l[0]["version"], 2);
        assert_eq!(l[0]["width"], 80);
        assert_eq!(l[0]["env"]["TERM"], "xterm");
        assert_eq!(l[1][1], "o");
        assert_eq!(l[1][2], "hello ");
        assert_eq!(l[2][2], "\u{20ac}!\r\n");
        assert_eq!(l[3][1], "i");
        assert_eq!(l[4][1], "r");
        assert_eq!(l[4][2], "100x30");
        assert_eq!(l[5][1], "m");
        assert_eq!(l[6][2], "bad \u{fffd} byte");
        let times: Vec<f64> = l[1..].iter().map(|e| e[0].as_f64().unwrap()).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn refuses_existing_file_and_unwritable_dir() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.cast");
        std::fs::write(&p, "").unwrap();
        assert!(matches!(
            Recorder::create(&p, &header()),
            Err(Error::Create { .. })
        ));
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "").unwrap();
        assert!(Recorder::create(&blocker.join("y.cast"), &header()).is_err());
    }

    #[test]
    fn full_disk_is_an_error() {
        // /dev/full accepts opens and fails every write with ENOSPC.
        let mut r = Recorder {
            path: PathBuf::from("/dev/full"),
            file: OpenOptions::new().write(true).open("/dev/full").unwrap(),
            start: Instant::now(),
            last: 0.0,
            carry_out: Vec::new(),
            carry_in: Vec::new(),
            events: 0,
        };
        assert!(matches!(r.output(b"x"), Err(Error::Write { .. })));
    }

    #[test]
    fn utf8_tail() {
        assert_eq!(incomplete_tail(b"a\xe2\x82"), 2);
        assert_eq!(incomplete_tail(b"a\xe2"), 1);
        assert_eq!(incomplete_tail(b"a\xe2\x82\xac"), 0);
        assert_eq!(incomplete_tail(b"\xf0\x9f\x98"), 3);
        assert_eq!(incomplete_tail(b"abc"), 0);
        assert_eq!(incomplete_tail(b""), 0);
        let mut c = Vec::new();
        let mut out = String::new();
        for b in "h\u{e9}llo \u{1f600}".as_bytes() {
            out.push_str(&take_utf8(&mut c, &[*b]));
        }
        assert_eq!(out, "h\u{e9}llo \u{1f600}");
    }

    #[test]
    fn asciinema_reads_it() {
        if std::process::Command::new("asciinema")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("asciinema not installed; the e2e tests cover this");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.cast");
        let mut r = Recorder::create(&p, &header()).unwrap();
        r.output(b"one\r\n").unwrap();
        r.resize(90, 20).unwrap();
        r.marker("m1").unwrap();
        r.output("tw\u{f6}\r\n".as_bytes()).unwrap();
        // No finish(): as if the server were killed here.
        drop(r);
        // asciinema 2.x `cat` opens /dev/tty (to set raw mode), so give it a
        // pty with `script` and send its stdout to a file: exact bytes.
        let out_path = dir.path().join("out");
        let st = std::process::Command::new("script")
            .arg("-qec")
            .arg(format!(
                "asciinema cat '{}' > '{}'",
                p.display(),
                out_path.display()
            ))
            .arg("/dev/null")
            .stdin(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(
            std::fs::read_to_string(&out_path).unwrap(),
            "one\r\ntw\u{f6}\r\n"
        );
    }
}
