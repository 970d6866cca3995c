//! asciicast v2 recording: one file per shell/exec channel, a JSON header line
//! then one JSON array per event — `"o"` output, `"i"` input, `"r"` resize
//! (`"COLSxROWS"`), `"m"` marker — each written with a single `write` and
//! flushed as it happens, so a server killed with SIGKILL leaves a file that
//! `asciinema cat`/`play` still read (at worst without the events not yet
//! produced). Output is bytes; a UTF-8 sequence split across chunks is carried
//! to the next event, invalid bytes become U+FFFD (asciinema needs text).
//!
//! The recorder is on the path of every byte a session prints, so an event
//! is built in one pass into a buffer reused from event to event: the bytes
//! are checked as UTF-8 (std's validator, fast on ASCII) and JSON-escaped
//! straight from the chunk, with no `String`/`serde_json::Value` copies in
//! between (profiled under `bench/masking.sh`: those copies and the lossy
//! decoder were half of the bastion's CPU for bulk output). Durability is
//! unchanged: one `write` per event, nothing held in user space.
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
    /// The event line being built (reused: no allocation per event).
    line: Vec<u8>,
    /// A carried UTF-8 tail joined with the next chunk (reused).
    joined: Vec<u8>,
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
            line: Vec::new(),
            joined: Vec::new(),
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
        self.bytes_event(b"o", data, false)
    }

    /// Client input (only when policy or config asks for it).
    pub fn input(&mut self, data: &[u8]) -> Result<(), Error> {
        self.bytes_event(b"i", data, true)
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

    /// An "o" or "i" event from raw bytes: the incomplete UTF-8 tail of
    /// `data` waits for the next chunk of the same stream, invalid bytes
    /// become U+FFFD (as `String::from_utf8_lossy` does), the rest is
    /// escaped straight into the event line. Nothing to write: no event.
    fn bytes_event(&mut self, kind: &[u8], data: &[u8], input: bool) -> Result<(), Error> {
        let slot = if input {
            &mut self.carry_in
        } else {
            &mut self.carry_out
        };
        let mut carry = std::mem::take(slot);
        let mut joined = std::mem::take(&mut self.joined);
        // Only a sequence cut by the previous chunk costs a copy.
        let buf: &[u8] = if carry.is_empty() {
            data
        } else {
            joined.clear();
            joined.append(&mut carry);
            joined.extend_from_slice(data);
            &joined
        };
        let keep = incomplete_tail(buf);
        let (body, tail) = buf.split_at(buf.len() - keep);
        carry.extend_from_slice(tail);
        let r = if body.is_empty() {
            Ok(())
        } else {
            let mut line = std::mem::take(&mut self.line);
            self.start_event(&mut line, kind);
            escape_lossy(&mut line, body);
            line.extend_from_slice(b"\"]\n");
            let r = self.write_line(&line);
            self.line = line;
            r.map(|()| self.events += 1)
        };
        self.joined = joined;
        if input {
            self.carry_in = carry;
        } else {
            self.carry_out = carry;
        }
        r
    }

    fn event(&mut self, kind: &str, data: &str) -> Result<(), Error> {
        let mut line = std::mem::take(&mut self.line);
        self.start_event(&mut line, kind.as_bytes());
        escape_into(&mut line, data);
        line.extend_from_slice(b"\"]\n");
        let r = self.write_line(&line);
        self.line = line;
        r?;
        self.events += 1;
        Ok(())
    }

    /// `[<time>, "<kind>", "` into `line` (cleared first). `kind` is one of
    /// our ASCII event codes: nothing to escape.
    fn start_event(&mut self, line: &mut Vec<u8>, kind: &[u8]) {
        // Times never go backwards, even if Instant is coarse.
        let t = self.start.elapsed().as_secs_f64().max(self.last);
        self.last = t;
        line.clear();
        // Writing into a Vec cannot fail.
        let _ = write!(line, "[{t:.6}, \"");
        line.extend_from_slice(kind);
        line.extend_from_slice(b"\", \"");
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

/// Append `bytes` to `out` as the contents of a JSON string: valid UTF-8 as
/// is (escaped), each invalid sequence as one U+FFFD, exactly as
/// `String::from_utf8_lossy` would decode it. std's validator does the
/// checking (word-at-a-time on ASCII); the lossy path only runs on errors.
fn escape_lossy(out: &mut Vec<u8>, mut bytes: &[u8]) {
    loop {
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                escape_into(out, s);
                return;
            }
            Err(e) => {
                let (valid, rest) = bytes.split_at(e.valid_up_to());
                escape_into(out, std::str::from_utf8(valid).unwrap_or_default());
                out.extend_from_slice("\u{fffd}".as_bytes());
                // `None`: the input ends inside a sequence (the caller keeps
                // such tails, so only a truncated sequence gets here).
                let skip = e.error_len().unwrap_or(rest.len());
                bytes = rest.get(skip..).unwrap_or_default();
            }
        }
    }
}

/// Append `s` escaped as the contents of a JSON string (RFC 8259 §7: quote,
/// backslash and C0 controls; everything else as is) to `out`. Runs that
/// need no escape are found 8 bytes at a time and copied in one go (a
/// byte-at-a-time loop was the recorder's largest cost on bulk output).
fn escape_into(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + bytes.len() / 32 + 8);
    let mut start = 0;
    while let Some(i) = next_escape(bytes, start) {
        out.extend_from_slice(bytes.get(start..i).unwrap_or_default());
        match bytes.get(i).copied().unwrap_or(0) {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b => {
                // Writing into a Vec cannot fail.
                let _ = write!(out, "\\u{b:04x}");
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(bytes.get(start..).unwrap_or_default());
}

/// Index of the first byte at or after `from` that JSON must escape.
fn next_escape(bytes: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Bit 7 of each byte of the result is set where `w` has a byte below
    // `n` (n <= 0x80). A borrow only starts at such a byte, so the lowest
    // flagged byte is always a real one (higher ones may not be).
    let below = |w: u64, n: u64| w.wrapping_sub(ONES * n) & !w & HIGH;
    let rest = bytes.get(from..)?;
    let mut chunks = rest.chunks_exact(8);
    let mut at = from;
    for c in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(c);
        let w = u64::from_le_bytes(word);
        let hits = below(w, 0x20)
            | below(w ^ (ONES * u64::from(b'"')), 1)
            | below(w ^ (ONES * u64::from(b'\\')), 1);
        if hits != 0 {
            return Some(at + (hits.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b < 0x20 || b == b'"' || b == b'\\')
        .map(|p| at + p)
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
            line: Vec::new(),
            joined: Vec::new(),
        };
        assert!(matches!(r.output(b"x"), Err(Error::Write { .. })));
        // Every later write fails too (a session ends on the first).
        assert!(matches!(r.marker("m"), Err(Error::Write { .. })));
    }

    #[test]
    fn utf8_tail() {
        assert_eq!(incomplete_tail(b"a\xe2\x82"), 2);
        assert_eq!(incomplete_tail(b"a\xe2"), 1);
        assert_eq!(incomplete_tail(b"a\xe2\x82\xac"), 0);
        assert_eq!(incomplete_tail(b"\xf0\x9f\x98"), 3);
        assert_eq!(incomplete_tail(b"abc"), 0);
        assert_eq!(incomplete_tail(b""), 0);
    }

    /// The "o" texts of a recording, joined.
    fn output_text(p: &Path) -> String {
        lines(p)[1..]
            .iter()
            .filter(|e| e[1] == "o")
            .map(|e| e[2].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn utf8_split_byte_by_byte_is_kept_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("u.cast");
        let mut r = Recorder::create(&p, &header()).unwrap();
        let text = "h\u{e9}llo \u{1f600} \"q\" \\ \t\u{1}\x7f";
        for b in text.as_bytes() {
            r.output(&[*b]).unwrap();
        }
        r.finish().unwrap();
        assert_eq!(output_text(&p), text);
        // One event per complete character, never one for a partial one.
        assert_eq!(lines(&p).len() - 1, text.chars().count());
    }

    #[test]
    fn escaping_matches_serde_json() {
        let samples: [&[u8]; 8] = [
            b"plain ascii",
            b"\x00\x01\x1f\x7f \" \\ / \x08\x0c\n\r\t",
            "caf\u{e9} \u{2028} \u{1f600}".as_bytes(),
            b"bad \xff \xc3( \xe2\x82 end",
            b"\xed\xa0\x80 surrogate, \xf4\x90\x80\x80 too big",
            b"\xf0\x9f\x98",
            b"",
            b"\xc0\xaf overlong",
        ];
        for bytes in samples {
            let mut out = Vec::new();
            escape_lossy(&mut out, bytes);
            let want = serde_json::to_string(&String::from_utf8_lossy(bytes)).unwrap();
            assert_eq!(
                format!("\"{}\"", String::from_utf8(out).unwrap()),
                want,
                "{bytes:?}"
            );
        }
    }

    proptest::proptest! {
        /// Any bytes (biased to what needs escaping) escape exactly as
        /// serde_json escapes their lossy decoding.
        #[test]
        fn any_bytes_escape_like_serde_json(
            data in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::prelude::any::<u8>(),
                    proptest::sample::select(vec![b'"', b'\\', b'\n', 0u8, 0x1f, 0x7f, b'a']),
                ],
                0..200,
            ),
        ) {
            let mut out = Vec::new();
            escape_lossy(&mut out, &data);
            let want = serde_json::to_string(&String::from_utf8_lossy(&data)).unwrap();
            proptest::prop_assert_eq!(format!("\"{}\"", String::from_utf8(out).unwrap()), want);
        }

        /// Any bytes in any chunking: the recording's output text is the
        /// lossy decoding of all of them at once, as valid JSON.
        #[test]
        fn any_chunking_records_the_lossy_text(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            cuts in proptest::collection::vec(0usize..300, 0..8),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("p.cast");
            let mut r = Recorder::create(&p, &header()).unwrap();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut from = 0;
            for c in cuts.into_iter().chain([data.len()]) {
                r.output(&data[from..c]).unwrap();
                from = c;
            }
            r.finish().unwrap();
            proptest::prop_assert_eq!(output_text(&p), String::from_utf8_lossy(&data));
        }
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
