//! Secret masking inside a session channel: the session's compiled detectors
//! ([`SessionMask`], from the policy grant) and the per-channel output side
//! ([`OutputMask`]) that the output seam runs every chunk through.
//!
//! What goes where (issue 5): the recording always gets masked bytes; the
//! client gets masked bytes when the grant says `mask.live`, otherwise the
//! raw bytes at once (the masker's hold-back never delays what the client
//! sees then). Audit text — the exec command in `sessions.command`, event
//! details, typed lines the guard records — goes through
//! [`SessionMask::mask_text`].
//!
//! The streaming masker holds back the tail of a chunk that could still be
//! the start of a secret. The owner of the output loop must call
//! [`OutputMask::flush`] once [`OutputMask::flush_at`] has passed (the
//! stream was idle for [`IDLE_FLUSH`]) and at the end of the stream, so the
//! held-back bytes are never delayed by more than one read or one idle period.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::mask::{self, Hit, MaskConfig, Masker, StreamMasker};
use crate::policy::SessionGrant;

/// Output idle this long releases what the masker holds back (the
/// streaming contract in `crate::mask` asks for "about 20 ms").
pub const IDLE_FLUSH: Duration = Duration::from_millis(20);

/// A session's masking: the detectors its grant asks for and whether the
/// client sees masked output. Cheap to clone (the compiled masker is shared).
#[derive(Debug, Clone)]
pub struct SessionMask {
    masker: Masker,
    live: bool,
}

impl SessionMask {
    /// Compile the grant's masking. An error (an unknown detector, a custom
    /// rule the masker cannot compile) must refuse the session: output that
    /// cannot be masked is not recorded.
    pub fn new(grant: &SessionGrant) -> Result<Self, mask::Error> {
        Ok(Self {
            masker: Masker::new(&MaskConfig::from_grant(grant))?,
            live: grant.mask_live,
        })
    }

    /// Whether the client sees masked output too.
    pub fn live(&self) -> bool {
        self.live
    }

    /// Mask text for the audit log, a recording header or a log line
    /// (commands, typed lines). The guard side calls this for the lines it
    /// records.
    pub fn mask_text(&self, text: &str) -> String {
        self.masker.mask_str(text)
    }

    /// [`Self::mask_text`] with the hits (offsets into `text`), for callers
    /// that audit them.
    pub fn mask_text_hits(&self, text: &str) -> (String, Vec<Hit>) {
        let m = self.masker.mask(text.as_bytes());
        (String::from_utf8_lossy(&m.bytes).into_owned(), m.hits)
    }

    /// A fresh output masker for one channel.
    pub fn output(&self) -> OutputMask {
        OutputMask {
            stdout: self.masker.stream(),
            stderr: self.masker.stream(),
            live: self.live,
            flush_at: None,
            hits: 0,
        }
    }
}

/// One chunk after masking.
#[derive(Debug, Default)]
pub struct Passed {
    /// Masked bytes for the recording (may be empty: all held back).
    pub record: Bytes,
    /// What the client gets now (may be empty).
    pub client: Bytes,
    /// Secrets masked in this chunk (stream offsets; never the secret).
    pub hits: Vec<Hit>,
}

/// Output masking of one channel: one stream masker for stdout (or the
/// pty) and one for stderr (a non-pty exec has both; a secret never spans
/// them, and interleaving them into one stream would corrupt both).
pub struct OutputMask {
    stdout: StreamMasker,
    stderr: StreamMasker,
    live: bool,
    flush_at: Option<Instant>,
    hits: u64,
}

impl std::fmt::Debug for OutputMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // StreamMasker's Debug never shows pending bytes.
        f.debug_struct("OutputMask")
            .field("stdout", &self.stdout)
            .field("stderr", &self.stderr)
            .field("live", &self.live)
            .field("hits", &self.hits)
            .finish()
    }
}

impl OutputMask {
    /// Mask the next chunk of stdout (`stderr` false) or stderr.
    pub fn push(&mut self, data: Bytes, stderr: bool) -> Passed {
        let s = if stderr {
            &mut self.stderr
        } else {
            &mut self.stdout
        };
        let m = s.push(&data);
        self.hits += m.hits.len() as u64;
        // Idle is measured from the last output: each chunk restarts it.
        self.flush_at = (self.stdout.held_back() > 0 || self.stderr.held_back() > 0)
            .then(|| Instant::now() + IDLE_FLUSH);
        let record = Bytes::from(m.bytes);
        let client = if self.live { record.clone() } else { data };
        Passed {
            record,
            client,
            hits: m.hits,
        }
    }

    /// Release what both streams hold back: `(stderr, passed)` per stream
    /// that had something. The client part is empty unless live (a non-live
    /// client already got these bytes raw).
    pub fn flush(&mut self) -> Vec<(bool, Passed)> {
        self.flush_at = None;
        let mut out = Vec::new();
        for (stderr, s) in [(false, &mut self.stdout), (true, &mut self.stderr)] {
            if s.held_back() == 0 {
                continue;
            }
            let m = s.flush();
            self.hits += m.hits.len() as u64;
            let record = Bytes::from(m.bytes);
            let client = if self.live {
                record.clone()
            } else {
                Bytes::new()
            };
            out.push((
                stderr,
                Passed {
                    record,
                    client,
                    hits: m.hits,
                },
            ));
        }
        out
    }

    /// When the held-back bytes are due (`None`: nothing held back).
    pub fn flush_at(&self) -> Option<Instant> {
        self.flush_at
    }

    /// Secrets masked in this channel's output so far.
    pub fn hits(&self) -> u64 {
        self.hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(live: bool) -> SessionGrant {
        SessionGrant {
            mask_live: live,
            ..SessionGrant::none()
        }
    }

    const TOKEN: &str = "ghp_0123456789abcdefghijABCDEFGHIJ012345";

    fn all(o: &mut OutputMask, chunks: &[&str]) -> (String, String, Vec<Hit>) {
        let (mut rec, mut cli, mut hits) = (Vec::new(), Vec::new(), Vec::new());
        for c in chunks {
            let p = o.push(Bytes::from(c.to_string()), false);
            rec.extend_from_slice(&p.record);
            cli.extend_from_slice(&p.client);
            hits.extend(p.hits);
        }
        for (_, p) in o.flush() {
            rec.extend_from_slice(&p.record);
            cli.extend_from_slice(&p.client);
            hits.extend(p.hits);
        }
        (
            String::from_utf8(rec).unwrap(),
            String::from_utf8(cli).unwrap(),
            hits,
        )
    }

    #[test]
    fn non_live_client_gets_raw_bytes_at_once_recording_masked() {
        let m = SessionMask::new(&grant(false)).unwrap();
        let mut o = m.output();
        let (a, b) = TOKEN.split_at(6);
        // The client copy is never held back, even mid-secret.
        let p = o.push(Bytes::from(format!("x {a}")), false);
        assert_eq!(&p.client[..], format!("x {a}").as_bytes());
        assert!(o.flush_at().is_some(), "the token's start is held back");
        let (rec, cli, hits) = all(&mut o, &[b, "\n"]);
        assert!(!rec.contains(b), "{rec}");
        assert_eq!(cli, format!("{b}\n"));
        assert_eq!(hits.len(), 1);
        assert_eq!(&*hits[0].detector, "github-token");
        assert_eq!(hits[0].offset, 2);
        assert_eq!(o.hits(), 1);
        assert!(o.flush_at().is_none());
    }

    #[test]
    fn live_client_gets_the_masked_bytes() {
        let m = SessionMask::new(&grant(true)).unwrap();
        let mut o = m.output();
        let (a, b) = TOKEN.split_at(10);
        let (rec, cli, hits) = all(&mut o, &["token: ", a, b, "\n"]);
        assert_eq!(rec, cli);
        assert!(!cli.contains(&TOKEN[4..]), "{cli}");
        assert!(cli.contains("[MASKED:"), "{cli}");
        assert_eq!(hits.len(), 1);
    }

    #[test]
    fn stdout_and_stderr_are_separate_streams() {
        let m = SessionMask::new(&grant(true)).unwrap();
        let mut o = m.output();
        let (a, b) = TOKEN.split_at(8);
        let p1 = o.push(Bytes::from(a.to_string()), false);
        // stderr in between does not break (or leak) the stdout secret.
        let p2 = o.push(Bytes::from_static(b"warning\n"), true);
        let p3 = o.push(Bytes::from(format!("{b}\n")), false);
        assert_eq!(&p2.client[..], b"warning\n");
        let flushed = o.flush();
        assert!(flushed.iter().all(|(stderr, _)| !stderr), "{flushed:?}");
        let mut out = [&p1.client[..], &p3.client[..]].concat();
        for (_, p) in &flushed {
            out.extend_from_slice(&p.client);
        }
        assert_eq!(String::from_utf8(out).unwrap(), "[MASKED:github-token]\n");
    }

    #[test]
    fn mask_text_masks_audit_text() {
        let m = SessionMask::new(&grant(false)).unwrap();
        let cmd = format!("curl -H 'Authorization: token {TOKEN}' https://api");
        let (t, hits) = m.mask_text_hits(&cmd);
        assert!(!t.contains(&TOKEN[4..]), "{t}");
        assert_eq!(t, m.mask_text(&cmd));
        assert!(!hits.is_empty());
        assert_eq!(m.mask_text("ls -l"), "ls -l");
    }

    #[test]
    fn unusable_custom_rules_fail() {
        // The policy loader checks that a custom regex compiles; the masker
        // is stricter (rule names, compiled size), and the session start
        // must see its error rather than run unmasked.
        for (name, regex) in [("acme token", "acme_[a-z]{8}"), ("huge", r"\w{4000}")] {
            let g = SessionGrant {
                mask_custom: vec![(name.into(), regex.into())],
                ..grant(true)
            };
            assert!(SessionMask::new(&g).is_err(), "{name}");
        }
    }
}
