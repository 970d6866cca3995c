//! Upgraded streams (`exec`, `attach`, `port-forward`) after the 101. For
//! `exec`/`attach` over WebSocket the proxy is not a pipe but a frame-level
//! relay ([`relay`]) that:
//!
//! - records the session as an asciicast like a local shell (stdin → "i",
//!   stdout/stderr → "o", resize → "r", status and blocked lines → "m");
//! - masks stdout/stderr with one streaming masker per channel, so a secret
//!   split across frames is still caught: always in the recording, and in
//!   what kubectl shows when the grant's mask is `live` (held-back bytes are
//!   released after [`IDLE_FLUSH`] without output, before the exit status,
//!   and at the end);
//! - guards stdin of an interactive shell: typed lines go through
//!   `guard::line::LineTracker` and each submitted line is checked with
//!   policy before its Enter is released; a refused line is cleared
//!   (`CLEAR_LINE` + a bare `\r`) and the user told on stdout. Without a
//!   terminal (`kubectl exec -i`), whole lines are held until checked.
//!
//! Kubernetes' WebSocket stream protocols (`v5.channel.k8s.io`,
//! `v4.channel.k8s.io`, `channel.k8s.io` binary; `*.base64.channel.k8s.io`
//! text) put one channel byte in front of every message: 0 stdin, 1 stdout,
//! 2 stderr, 3 error/status, 4 resize (`{"Width":..,"Height":..}`), 255 close
//! (v5). See k8s.io/apimachinery/pkg/util/httpstream/wsstream/conn.go.
//!
//! Rewriting means re-framing: client → server frames must be masked with a
//! fresh key per frame (RFC 6455 §5.3), server → client frames are not
//! (§5.1); fragmented messages are reassembled first (§5.4) and sent on as
//! one frame. What the relay cannot parse (SPDY, an unknown subprotocol,
//! extension bits, a message above [`MAX_FRAME`]) ends the stream: an
//! unrecorded, unguarded session must not run (the recorder's own rule, and
//! Warpgate #950's lesson that side doors around recording get used).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use hyper::header::HeaderMap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::MaskFn;
use super::exec::{LineOutcome, SharedChecker};
use crate::guard::line::{Action, CLEAR_LINE, Certainty, LineTracker, Submitted};
use crate::mask::{Masker, StreamMasker};
use crate::record::Recorder;

/// Largest WebSocket message the relay buffers (kubectl sends ≤ 32 KiB).
pub const MAX_FRAME: usize = 1024 * 1024;

/// Longest line held while waiting for its newline (no-terminal mode).
pub const MAX_LINE: usize = 64 * 1024;

/// Output idle this long releases what the maskers hold back (the
/// streaming contract in `crate::mask` asks for "about 20 ms").
pub const IDLE_FLUSH: Duration = Duration::from_millis(20);

/// Longest wait for the echo of typed text before a line is read.
const ECHO_WAIT: Duration = Duration::from_millis(100);

/// Errors of the relay; each ends the stream.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("WebSocket frame of {0} bytes is over the {MAX_FRAME}-byte cap")]
    FrameTooLarge(u64),
    #[error("bad base64 in a channel message")]
    Base64,
    #[error("WebSocket extension bits set (no extension was negotiated)")]
    Extension,
    #[error("WebSocket continuation frame without a message to continue")]
    Continuation,
    #[error("a line of more than {MAX_LINE} bytes without a newline")]
    LineTooLong,
    #[error("recording: {0}")]
    Record(#[from] crate::record::Error),
}

/// How channel messages are encoded, from the negotiated subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Binary,
    Base64,
}

/// Channel encoding for a `Sec-WebSocket-Protocol` the upstream chose, or
/// `None` for anything the relay cannot read.
pub fn encoding_for(protocol: &str) -> Option<Encoding> {
    match protocol.trim() {
        "v5.channel.k8s.io" | "v4.channel.k8s.io" | "v3.channel.k8s.io" | "v2.channel.k8s.io"
        | "channel.k8s.io" => Some(Encoding::Binary),
        "v4.base64.channel.k8s.io" | "base64.channel.k8s.io" => Some(Encoding::Base64),
        _ => None,
    }
}

/// The readable encoding of a 101 response, if it is a WebSocket with a
/// Kubernetes channel protocol and no extension (a compressed stream could
/// not be read or re-framed).
pub fn response_encoding(h: &HeaderMap) -> Option<Encoding> {
    let ws = h
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !ws || h.contains_key(hyper::header::SEC_WEBSOCKET_EXTENSIONS) {
        return None;
    }
    h.get(hyper::header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(encoding_for)
}

/// Incremental WebSocket reader (RFC 6455 §5.2) for one direction: yields
/// control frames as they come and data messages once complete
/// (fragments joined, §5.4).
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Opcode and payload of a fragmented data message in progress.
    partial: Option<(u8, Vec<u8>)>,
}

/// One control frame or complete data message: opcode and unmasked payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl FrameReader {
    /// Feed bytes; returns the frames/messages completed by them.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Frame>, TapError> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        loop {
            let b = &self.buf;
            let (Some(&b0), Some(&b1)) = (b.first(), b.get(1)) else {
                break;
            };
            if b0 & 0x70 != 0 {
                return Err(TapError::Extension);
            }
            let masked = b1 & 0x80 != 0;
            let (len, mut at) = match b1 & 0x7f {
                126 => match b.get(2..4) {
                    Some(&[h, l]) => (u64::from(u16::from_be_bytes([h, l])), 4usize),
                    _ => break,
                },
                127 => match b.get(2..10).and_then(|s| <[u8; 8]>::try_from(s).ok()) {
                    Some(a) => (u64::from_be_bytes(a), 10usize),
                    None => break,
                },
                n => (u64::from(n), 2usize),
            };
            if len > MAX_FRAME as u64 {
                return Err(TapError::FrameTooLarge(len));
            }
            let mask = if masked {
                let Some(m) = b.get(at..at + 4).and_then(|s| <[u8; 4]>::try_from(s).ok()) else {
                    break;
                };
                at += 4;
                Some(m)
            } else {
                None
            };
            let end = at + len as usize;
            let Some(p) = b.get(at..end) else {
                break;
            };
            let mut payload = p.to_vec();
            if let Some(m) = mask {
                for (x, k) in payload.iter_mut().zip(m.iter().cycle()) {
                    *x ^= k;
                }
            }
            self.buf.drain(..end);
            let fin = b0 & 0x80 != 0;
            let opcode = b0 & 0x0f;
            if opcode >= 8 {
                // Control frames may come between fragments (§5.4).
                out.push(Frame { opcode, payload });
                continue;
            }
            let (op, mut acc) = match (opcode, self.partial.take()) {
                (0, Some(p)) => p,
                (0, None) => return Err(TapError::Continuation),
                (op, _) => (op, Vec::new()),
            };
            acc.extend_from_slice(&payload);
            if acc.len() > MAX_FRAME {
                return Err(TapError::FrameTooLarge(acc.len() as u64));
            }
            if fin {
                out.push(Frame {
                    opcode: op,
                    payload: acc,
                });
            } else {
                self.partial = Some((op, acc));
            }
        }
        Ok(out)
    }
}

/// One whole frame (FIN set): masked with `mask` when given (client →
/// server frames, RFC 6455 §5.3), plain otherwise.
pub fn encode_frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 14);
    v.push(0x80 | (opcode & 0x0f));
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => v.push(m | n as u8),
        n if n <= 0xffff => {
            v.push(m | 126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            v.push(m | 127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            v.extend_from_slice(&k);
            v.extend(payload.iter().zip(k.iter().cycle()).map(|(b, k)| b ^ k));
        }
        None => v.extend_from_slice(payload),
    }
    v
}

/// A channel message as a (opcode, payload) pair under `enc`.
pub fn encode_message(enc: Encoding, ch: u8, data: &[u8]) -> (u8, Vec<u8>) {
    match enc {
        Encoding::Binary => {
            let mut p = Vec::with_capacity(data.len() + 1);
            p.push(ch);
            p.extend_from_slice(data);
            (2, p)
        }
        Encoding::Base64 => {
            let mut p = vec![b'0'.wrapping_add(ch)];
            p.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(data)
                    .as_bytes(),
            );
            (1, p)
        }
    }
}

/// Split a data message into (channel, bytes) under `enc`.
pub fn channel_message(f: &Frame, enc: Encoding) -> Result<Option<(u8, Vec<u8>)>, TapError> {
    // 1 text, 2 binary; control frames carry no channel.
    if f.opcode != 1 && f.opcode != 2 {
        return Ok(None);
    }
    let Some((&first, rest)) = f.payload.split_first() else {
        return Ok(None);
    };
    match enc {
        Encoding::Binary => Ok(Some((first, rest.to_vec()))),
        Encoding::Base64 => {
            let ch = first.wrapping_sub(b'0');
            let data = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .map_err(|_| TapError::Base64)?;
            Ok(Some((ch, data)))
        }
    }
}

/// How typed input is guarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardMode {
    /// A terminal (`-t`): keys pass at once, Enter is held until the line
    /// is checked; a refused line is cleared in the shell.
    Tty,
    /// No terminal: whole lines are held until checked, a refused line is
    /// dropped (without a line discipline, clearing keys would become part
    /// of the next command).
    Lines,
}

/// Everything the relay of one exec/attach stream needs.
pub struct RelayConfig {
    pub enc: Encoding,
    /// `None`: not recorded.
    pub recorder: Option<Arc<Mutex<Recorder>>>,
    /// The grant's detectors (stdout/stderr get one stream each).
    pub masker: Masker,
    /// Mask what the client sees too (the grant's `mask.live`).
    pub live: bool,
    /// Masks recorded input (typed text is short and not split by design).
    pub mask: MaskFn,
    /// Typed-line checking for interactive shells.
    pub guard: Option<(GuardMode, SharedChecker)>,
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConfig")
            .field("enc", &self.enc)
            .field("recorded", &self.recorder.is_some())
            .field("live", &self.live)
            .field("guard", &self.guard.as_ref().map(|g| g.0))
            .finish_non_exhaustive()
    }
}

type Rec = Option<Arc<Mutex<Recorder>>>;

fn record(
    rec: &Rec,
    f: impl FnOnce(&mut Recorder) -> Result<(), crate::record::Error>,
) -> Result<(), TapError> {
    let Some(r) = rec else { return Ok(()) };
    let mut g = match r.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    Ok(f(&mut g)?)
}

fn lock(t: &Mutex<LineTracker>) -> std::sync::MutexGuard<'_, LineTracker> {
    match t.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn io_err(e: TapError) -> std::io::Error {
    std::io::Error::other(e)
}

/// The two halves of a relay: client → server ("up") and server → client
/// ("down"). Each returns the bytes it read; an error in either must end
/// both (the caller drops them).
pub fn relay<CR, CW, UR, UW>(
    cfg: RelayConfig,
    client_r: CR,
    client_w: CW,
    up_r: UR,
    up_w: UW,
) -> (
    impl std::future::Future<Output = std::io::Result<u64>> + Send + 'static,
    impl std::future::Future<Output = std::io::Result<u64>> + Send + 'static,
)
where
    CR: AsyncRead + Unpin + Send + 'static,
    CW: AsyncWrite + Unpin + Send + 'static,
    UR: AsyncRead + Unpin + Send + 'static,
    UW: AsyncWrite + Unpin + Send + 'static,
{
    let tracker = Arc::new(Mutex::new(LineTracker::new(24, 80)));
    let (notes_tx, notes_rx) = mpsc::unbounded_channel();
    let up = Up {
        enc: cfg.enc,
        rec: cfg.recorder.clone(),
        mask: cfg.mask.clone(),
        guard: cfg.guard.clone(),
        tracker: tracker.clone(),
        notes: notes_tx,
        pending: Vec::new(),
    };
    let down = Down {
        enc: cfg.enc,
        rec: cfg.recorder,
        live: cfg.live,
        stdout: cfg.masker.stream(),
        stderr: cfg.masker.stream(),
        tracker: cfg.guard.is_some().then_some(tracker),
    };
    (up.run(client_r, up_w), down.run(up_r, client_w, notes_rx))
}

/// Client → server half.
struct Up {
    enc: Encoding,
    rec: Rec,
    mask: MaskFn,
    guard: Option<(GuardMode, SharedChecker)>,
    tracker: Arc<Mutex<LineTracker>>,
    /// Messages for the client, written by the down half (channel, text).
    notes: mpsc::UnboundedSender<(u8, Vec<u8>)>,
    /// No-terminal mode: bytes of the line not yet complete.
    pending: Vec<u8>,
}

impl Up {
    async fn run<R, W>(mut self, mut src: R, mut dst: W) -> std::io::Result<u64>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut reader = FrameReader::default();
        let mut buf = vec![0u8; 32 * 1024];
        let mut total = 0u64;
        loop {
            let n = src.read(&mut buf).await?;
            if n == 0 {
                let _ = dst.shutdown().await;
                return Ok(total);
            }
            total += n as u64;
            let frames = reader
                .push(buf.get(..n).unwrap_or_default())
                .map_err(io_err)?;
            for f in frames {
                self.frame(f, &mut dst).await?;
            }
        }
    }

    async fn send<W: AsyncWrite + Unpin>(
        dst: &mut W,
        opcode: u8,
        payload: &[u8],
    ) -> std::io::Result<()> {
        // A fresh, unpredictable key for every client frame (RFC 6455 §5.3).
        let key: [u8; 4] = rand::random();
        dst.write_all(&encode_frame(opcode, payload, Some(key)))
            .await
    }

    async fn stdin<W: AsyncWrite + Unpin>(&self, dst: &mut W, data: &[u8]) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        record(&self.rec, |r| r.input(&(self.mask)(data))).map_err(io_err)?;
        let (op, p) = encode_message(self.enc, 0, data);
        Self::send(dst, op, &p).await
    }

    async fn frame<W: AsyncWrite + Unpin>(&mut self, f: Frame, dst: &mut W) -> std::io::Result<()> {
        let msg = channel_message(&f, self.enc).map_err(io_err)?;
        match msg {
            Some((0, data)) => {
                dst.flush().await?;
                self.typed(&data, dst).await?;
                dst.flush().await
            }
            Some((4, data)) => {
                #[derive(serde::Deserialize)]
                struct Size {
                    #[serde(rename = "Width")]
                    width: u16,
                    #[serde(rename = "Height")]
                    height: u16,
                }
                if let Ok(s) = serde_json::from_slice::<Size>(&data)
                    && s.width > 0
                    && s.height > 0
                {
                    record(&self.rec, |r| r.resize(s.width, s.height)).map_err(io_err)?;
                    lock(&self.tracker).resize(s.height, s.width);
                }
                Self::send(dst, f.opcode, &f.payload).await?;
                dst.flush().await
            }
            Some((255, data)) if data.first() == Some(&0) => {
                // v5 "stdin closed": a held last line without newline is
                // what the shell would run at end of input; check it first.
                self.finish_lines(dst).await?;
                Self::send(dst, f.opcode, &f.payload).await?;
                dst.flush().await
            }
            _ => {
                if f.opcode == 8 {
                    self.finish_lines(dst).await?;
                }
                Self::send(dst, f.opcode, &f.payload).await?;
                dst.flush().await
            }
        }
    }

    async fn typed<W: AsyncWrite + Unpin>(
        &mut self,
        data: &[u8],
        dst: &mut W,
    ) -> std::io::Result<()> {
        let Some((mode, checker)) = self.guard.clone() else {
            return self.stdin(dst, data).await;
        };
        match mode {
            // One line at a time: the tracker's idea of the line must be
            // the one before *this* Enter, not include keys typed after it
            // in the same message (type-ahead, pastes, scripted input).
            GuardMode::Tty => {
                for piece in data.split_inclusive(|b| *b == b'\r' || *b == b'\n') {
                    self.tty_piece(piece, dst, &checker).await?;
                }
                Ok(())
            }
            GuardMode::Lines => {
                self.pending.extend_from_slice(data);
                while let Some(pos) = self.pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = self.pending.drain(..=pos).collect();
                    self.line(&line, dst, &checker).await?;
                }
                if self.pending.len() > MAX_LINE {
                    return Err(io_err(TapError::LineTooLong));
                }
                Ok(())
            }
        }
    }

    /// Keys up to and including at most one Enter (terminal mode).
    async fn tty_piece<W: AsyncWrite + Unpin>(
        &mut self,
        piece: &[u8],
        dst: &mut W,
        checker: &SharedChecker,
    ) -> std::io::Result<()> {
        let actions = lock(&self.tracker).input(piece);
        for a in actions {
            match a {
                Action::Forward(b) => self.stdin(dst, &b).await?,
                Action::Enter(b) => {
                    dst.flush().await?;
                    // Let the echo of the forwarded keys arrive
                    // (only matters when the screen has prompt marks).
                    let deadline = tokio::time::Instant::now() + ECHO_WAIT;
                    while lock(&self.tracker).echo_pending()
                        && tokio::time::Instant::now() < deadline
                    {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    let sub = lock(&self.tracker).line();
                    let outcome = match checker.check(&sub) {
                        LineOutcome::Approve { reason, shown } => {
                            self.wait_approval(checker, &shown, &reason, 1, "\r\n")
                                .await?
                        }
                        other => other,
                    };
                    match outcome {
                        LineOutcome::Allow | LineOutcome::Approve { .. } => {
                            self.stdin(dst, &b).await?;
                            lock(&self.tracker).submitted();
                        }
                        LineOutcome::Block { reason, shown } => {
                            let mut clear = CLEAR_LINE.to_vec();
                            clear.push(b'\r');
                            self.stdin(dst, &clear).await?;
                            lock(&self.tracker).cleared();
                            self.blocked(1, &shown, &reason, "\r\n")?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Check one held line (no-terminal mode); forward it or drop it.
    async fn line<W: AsyncWrite + Unpin>(
        &mut self,
        line: &[u8],
        dst: &mut W,
        checker: &SharedChecker,
    ) -> std::io::Result<()> {
        let text = String::from_utf8_lossy(line);
        let sub = Submitted {
            line: text.trim_end_matches(['\n', '\r']).to_string(),
            certainty: Certainty::Typed,
        };
        let outcome = match checker.check(&sub) {
            LineOutcome::Approve { reason, shown } => {
                self.wait_approval(checker, &shown, &reason, 2, "\n")
                    .await?
            }
            other => other,
        };
        match outcome {
            LineOutcome::Allow | LineOutcome::Approve { .. } => self.stdin(dst, line).await,
            LineOutcome::Block { reason, shown } => self.blocked(2, &shown, &reason, "\n"),
        }
    }

    /// Hold a line under `approve` until a human answers: `Allow` or `Block`.
    async fn wait_approval(
        &self,
        checker: &SharedChecker,
        shown: &str,
        reason: &str,
        ch: u8,
        eol: &str,
    ) -> std::io::Result<LineOutcome> {
        record(&self.rec, |r| {
            r.marker(&format!("waiting for approval: {shown} ({reason})"))
        })
        .map_err(io_err)?;
        let _ = self.notes.send((
            ch,
            format!("{eol}sallyport: waiting for approval ({reason}){eol}").into_bytes(),
        ));
        Ok(match checker.approve(shown, reason).await {
            Ok(()) => {
                record(&self.rec, |r| r.marker(&format!("approved: {shown}"))).map_err(io_err)?;
                LineOutcome::Allow
            }
            Err(why) => LineOutcome::Block {
                reason: why,
                shown: shown.to_string(),
            },
        })
    }

    async fn finish_lines<W: AsyncWrite + Unpin>(&mut self, dst: &mut W) -> std::io::Result<()> {
        if let Some((GuardMode::Lines, checker)) = self.guard.clone()
            && !self.pending.is_empty()
        {
            let line = std::mem::take(&mut self.pending);
            self.line(&line, dst, &checker).await?;
        }
        Ok(())
    }

    /// A refused line: "m" marker, and a message on `ch` for the client.
    fn blocked(&self, ch: u8, shown: &str, reason: &str, eol: &str) -> std::io::Result<()> {
        record(&self.rec, |r| {
            r.marker(&format!("blocked: {shown} ({reason})"))
        })
        .map_err(io_err)?;
        let text = format!("{eol}sallyport: blocked by {reason}{eol}");
        // The down half may be gone already (stream ending): nothing to tell.
        let _ = self.notes.send((ch, text.into_bytes()));
        Ok(())
    }
}

/// Server → client half.
struct Down {
    enc: Encoding,
    rec: Rec,
    live: bool,
    stdout: StreamMasker,
    stderr: StreamMasker,
    /// Fed with what the client sees, when lines are guarded.
    tracker: Option<Arc<Mutex<LineTracker>>>,
}

impl Down {
    async fn run<R, W>(
        mut self,
        mut src: R,
        mut dst: W,
        mut notes: mpsc::UnboundedReceiver<(u8, Vec<u8>)>,
    ) -> std::io::Result<u64>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut reader = FrameReader::default();
        let mut buf = vec![0u8; 32 * 1024];
        let mut total = 0u64;
        let mut notes_open = true;
        let mut flush_at: Option<tokio::time::Instant> = None;
        loop {
            let idle = async {
                match flush_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => futures::future::pending().await,
                }
            };
            tokio::select! {
                r = src.read(&mut buf) => {
                    let n = r?;
                    if n == 0 {
                        self.flush(&mut dst).await?;
                        let _ = dst.shutdown().await;
                        return Ok(total);
                    }
                    total += n as u64;
                    let frames = reader.push(buf.get(..n).unwrap_or_default()).map_err(io_err)?;
                    for f in frames {
                        self.frame(f, &mut dst).await?;
                    }
                    dst.flush().await?;
                    // Idle is measured from the last output.
                    flush_at = (self.stdout.held_back() > 0 || self.stderr.held_back() > 0)
                        .then(|| tokio::time::Instant::now() + IDLE_FLUSH);
                }
                note = notes.recv(), if notes_open => match note {
                    Some((ch, text)) => {
                        // Output already shown comes first.
                        self.flush(&mut dst).await?;
                        flush_at = None;
                        self.client(&mut dst, ch, &text).await?;
                        dst.flush().await?;
                    }
                    None => notes_open = false,
                },
                () = idle => {
                    self.flush(&mut dst).await?;
                    dst.flush().await?;
                    flush_at = None;
                }
            }
        }
    }

    /// Send channel data to the client.
    async fn client<W: AsyncWrite + Unpin>(
        &mut self,
        dst: &mut W,
        ch: u8,
        data: &[u8],
    ) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if let Some(t) = &self.tracker {
            lock(t).output(data);
        }
        let (op, p) = encode_message(self.enc, ch, data);
        dst.write_all(&encode_frame(op, &p, None)).await
    }

    /// Release what the maskers hold back.
    async fn flush<W: AsyncWrite + Unpin>(&mut self, dst: &mut W) -> std::io::Result<()> {
        for ch in [1u8, 2] {
            let s = if ch == 1 {
                &mut self.stdout
            } else {
                &mut self.stderr
            };
            if s.held_back() == 0 {
                continue;
            }
            let m = s.flush();
            record(&self.rec, |r| r.output(&m.bytes)).map_err(io_err)?;
            if self.live {
                self.client(dst, ch, &m.bytes).await?;
            }
        }
        Ok(())
    }

    async fn frame<W: AsyncWrite + Unpin>(&mut self, f: Frame, dst: &mut W) -> std::io::Result<()> {
        match channel_message(&f, self.enc).map_err(io_err)? {
            Some((ch @ (1 | 2), data)) => {
                let s = if ch == 1 {
                    &mut self.stdout
                } else {
                    &mut self.stderr
                };
                let m = s.push(&data);
                record(&self.rec, |r| r.output(&m.bytes)).map_err(io_err)?;
                let shown = if self.live { m.bytes } else { data };
                self.client(dst, ch, &shown).await
            }
            Some((3, data)) => {
                // The exit status ends the output: release it first.
                self.flush(dst).await?;
                if !data.is_empty() {
                    let text = String::from_utf8_lossy(&data);
                    record(&self.rec, |r| r.marker(&format!("status: {}", text.trim())))
                        .map_err(io_err)?;
                }
                dst.write_all(&encode_frame(f.opcode, &f.payload, None))
                    .await
            }
            _ => {
                if f.opcode == 8 {
                    self.flush(dst).await?;
                }
                dst.write_all(&encode_frame(f.opcode, &f.payload, None))
                    .await
            }
        }
    }
}

/// Copy `src` → `dst` unchanged (streams that are not exec/attach, e.g.
/// port-forward); returns bytes copied.
pub async fn copy_plain<R, W>(mut src: R, mut dst: W) -> Result<u64, std::io::Error>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let n = tokio::io::copy(&mut src, &mut dst).await?;
    let _ = dst.shutdown().await;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::kubeapi::exec::LineCheck;

    fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        encode_frame(opcode, payload, mask)
    }

    /// A frame with FIN cleared (first or middle fragment).
    fn fragment(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = encode_frame(opcode, payload, None);
        v[0] &= 0x7f;
        v
    }

    #[test]
    fn frames_split_anywhere_are_reassembled() {
        let mut wire = frame(2, b"\x00ls -l\r", Some([1, 2, 3, 4]));
        wire.extend(frame(2, &[b'x'; 300], None));
        // A fragmented message with a ping between its fragments (§5.4).
        wire.extend(fragment(2, b"\x01hel"));
        wire.extend(frame(9, b"", None));
        wire.extend(frame(0, b"lo", None));
        for split in 0..wire.len() {
            let mut r = FrameReader::default();
            let (a, b) = wire.split_at(split);
            let mut got = r.push(a).unwrap();
            got.extend(r.push(b).unwrap());
            assert_eq!(got.len(), 4, "split at {split}");
            assert_eq!(got[0].payload, b"\x00ls -l\r");
            assert_eq!(got[1].payload.len(), 300);
            assert_eq!(got[2].opcode, 9);
            assert_eq!(got[3].opcode, 2);
            assert_eq!(got[3].payload, b"\x01hello");
        }
    }

    #[test]
    fn unreadable_frames_are_refused() {
        let mut r = FrameReader::default();
        let mut head = vec![0x82, 127];
        head.extend_from_slice(&(u64::MAX).to_be_bytes());
        assert!(matches!(r.push(&head), Err(TapError::FrameTooLarge(_))));
        // RSV1 = permessage-deflate: compressed, cannot be read.
        let mut r = FrameReader::default();
        assert!(matches!(
            r.push(&[0xc2, 0x01, 0x00]),
            Err(TapError::Extension)
        ));
        let mut r = FrameReader::default();
        assert!(matches!(
            r.push(&frame(0, b"x", None)),
            Err(TapError::Continuation)
        ));
        // Fragments adding up past the cap.
        let mut r = FrameReader::default();
        let piece = vec![0u8; 600 * 1024];
        r.push(&fragment(2, &piece)).unwrap();
        assert!(matches!(
            r.push(&frame(0, &piece, None)),
            Err(TapError::FrameTooLarge(_))
        ));
    }

    #[test]
    fn channels_binary_and_base64() {
        let f = Frame {
            opcode: 2,
            payload: b"\x01hello".to_vec(),
        };
        assert_eq!(
            channel_message(&f, Encoding::Binary).unwrap(),
            Some((1, b"hello".to_vec()))
        );
        let f = Frame {
            opcode: 1,
            payload: b"1aGVsbG8=".to_vec(),
        };
        assert_eq!(
            channel_message(&f, Encoding::Base64).unwrap(),
            Some((1, b"hello".to_vec()))
        );
        let f = Frame {
            opcode: 1,
            payload: b"1!!!".to_vec(),
        };
        assert!(channel_message(&f, Encoding::Base64).is_err());
        let f = Frame {
            opcode: 9,
            payload: b"\x01x".to_vec(),
        };
        assert_eq!(channel_message(&f, Encoding::Binary).unwrap(), None);
        for enc in [Encoding::Binary, Encoding::Base64] {
            let (opcode, payload) = encode_message(enc, 2, b"err\n");
            assert_eq!(
                channel_message(&Frame { opcode, payload }, enc).unwrap(),
                Some((2, b"err\n".to_vec()))
            );
        }
        assert_eq!(encoding_for("v5.channel.k8s.io"), Some(Encoding::Binary));
        assert_eq!(
            encoding_for("v4.base64.channel.k8s.io"),
            Some(Encoding::Base64)
        );
        assert_eq!(encoding_for("SPDY/3.1"), None);
        let mut h = HeaderMap::new();
        h.insert(hyper::header::UPGRADE, "websocket".parse().unwrap());
        h.insert(
            hyper::header::SEC_WEBSOCKET_PROTOCOL,
            "v5.channel.k8s.io".parse().unwrap(),
        );
        assert_eq!(response_encoding(&h), Some(Encoding::Binary));
        h.insert(
            hyper::header::SEC_WEBSOCKET_EXTENSIONS,
            "permessage-deflate".parse().unwrap(),
        );
        assert_eq!(response_encoding(&h), None);
    }

    #[test]
    fn client_frames_are_masked_with_fresh_keys_server_frames_are_not() {
        let a = frame(2, b"\x00same", Some(rand::random()));
        let b = frame(2, b"\x00same", Some(rand::random()));
        assert_eq!(a[1] & 0x80, 0x80);
        assert_ne!(a, b, "two frames, two keys");
        let mut r = FrameReader::default();
        assert_eq!(r.push(&a).unwrap()[0].payload, b"\x00same");
        let long = vec![7u8; 70_000];
        let c = frame(2, &long, None);
        assert_eq!(c[1], 127);
        assert_eq!(r.push(&c).unwrap()[0].payload, long);
    }

    /// Blocks lines containing "rm ", wants approval for "touch" (granted
    /// when the line says "ok"), remembers every line asked about.
    struct BlockRm(Mutex<Vec<Submitted>>);
    impl LineCheck for BlockRm {
        fn check(&self, sub: &Submitted) -> LineOutcome {
            self.0.lock().unwrap().push(sub.clone());
            if sub.line.contains("rm ") {
                LineOutcome::Block {
                    reason: "test rule 'rm *'".into(),
                    shown: sub.line.clone(),
                }
            } else if sub.line.starts_with("touch") {
                LineOutcome::Approve {
                    reason: "test rule 'touch *'".into(),
                    shown: sub.line.clone(),
                }
            } else {
                LineOutcome::Allow
            }
        }
        fn approve(
            &self,
            shown: &str,
            _reason: &str,
        ) -> futures::future::BoxFuture<'static, Result<(), String>> {
            let ok = shown.contains("ok");
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                if ok {
                    Ok(())
                } else {
                    Err("denied by bob".into())
                }
            })
        }
    }

    #[tokio::test]
    async fn tty_guard_holds_a_line_under_approve_until_answered() {
        let checker = Arc::new(BlockRm(Mutex::new(Vec::new())));
        let mut h = start(true, Some((GuardMode::Tty, checker as SharedChecker)));
        h.client
            .write_all(&stdin_frame(b"touch ok\rtouch no\recho after\r"))
            .await
            .unwrap();
        h.client.shutdown().await.unwrap();
        let (_, frames) = drain(&mut h.server).await;
        assert_eq!(
            channel(&frames, 0),
            "touch ok\rtouch no\x05\x15\recho after\r"
        );
        h.server.shutdown().await.unwrap();
        let (_, down) = drain(&mut h.client).await;
        let shown = channel(&down, 1);
        assert_eq!(shown.matches("waiting for approval").count(), 2, "{shown}");
        assert!(shown.contains("blocked by denied by bob"), "{shown}");
        let _ = h.done.await;
        let cast = std::fs::read_to_string(&h.cast).unwrap();
        assert!(cast.contains("\"approved: touch ok\""), "{cast}");
    }

    struct Harness {
        client: tokio::io::DuplexStream,
        server: tokio::io::DuplexStream,
        done: tokio::task::JoinHandle<(std::io::Result<u64>, std::io::Result<u64>)>,
        cast: std::path::PathBuf,
        _dir: tempfile::TempDir,
    }

    fn start(live: bool, guard: Option<(GuardMode, SharedChecker)>) -> Harness {
        start_enc(Encoding::Binary, live, guard)
    }

    fn start_enc(enc: Encoding, live: bool, guard: Option<(GuardMode, SharedChecker)>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let cast = dir.path().join("k.cast");
        let rec = Recorder::create(&cast, &crate::record::Header::default()).unwrap();
        let masker = Masker::builtin().unwrap();
        let m2 = masker.clone();
        let cfg = RelayConfig {
            enc,
            recorder: Some(Arc::new(Mutex::new(rec))),
            masker,
            live,
            mask: Arc::new(move |b: &[u8]| m2.mask(b).bytes),
            guard,
        };
        let (client, relay_client) = tokio::io::duplex(1 << 20);
        let (server, relay_server) = tokio::io::duplex(1 << 20);
        let (cr, cw) = tokio::io::split(relay_client);
        let (ur, uw) = tokio::io::split(relay_server);
        let (up, down) = relay(cfg, cr, cw, ur, uw);
        let done = tokio::spawn(async move { tokio::join!(up, down) });
        Harness {
            client,
            server,
            done,
            cast,
            _dir: dir,
        }
    }

    /// Read frames until EOF; returns (raw bytes, frames).
    async fn drain(mut s: impl AsyncRead + Unpin) -> (Vec<u8>, Vec<Frame>) {
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        let frames = FrameReader::default().push(&raw).unwrap();
        (raw, frames)
    }

    fn channel(frames: &[Frame], ch: u8) -> String {
        let mut out = Vec::new();
        for f in frames {
            if let Ok(Some((c, d))) = channel_message(f, Encoding::Binary)
                && c == ch
            {
                out.extend(d);
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    const SECRET: &str = "ghp_0123456789abcdefghijABCDEFGHIJ012345";

    async fn secret_split_across_two_frames(live: bool) -> (String, String) {
        let mut h = start(live, None);
        let (a, b) = SECRET.split_at(10);
        h.server
            .write_all(&frame(2, format!("\x01token: {a}").as_bytes(), None))
            .await
            .unwrap();
        h.server
            .write_all(&frame(2, format!("\x01{b}\r\n").as_bytes(), None))
            .await
            .unwrap();
        h.server
            .write_all(&frame(2, b"\x03{\"status\":\"Success\"}", None))
            .await
            .unwrap();
        h.server.shutdown().await.unwrap();
        h.client.shutdown().await.unwrap();
        let (_, frames) = drain(&mut h.client).await;
        let (up, down) = h.done.await.unwrap();
        up.unwrap();
        down.unwrap();
        let seen = channel(&frames, 1);
        // The status still comes after all output.
        assert!(
            matches!(frames.last(), Some(f) if f.payload.first() == Some(&3)),
            "{frames:?}"
        );
        (seen, std::fs::read_to_string(&h.cast).unwrap())
    }

    #[tokio::test]
    async fn live_masking_catches_a_secret_split_across_frames() {
        let (seen, cast) = secret_split_across_two_frames(true).await;
        assert!(!seen.contains(&SECRET[10..]), "{seen}");
        assert!(seen.contains("token: [MASKED:github-token]\r\n"), "{seen}");
        assert!(!cast.contains(&SECRET[10..]), "{cast}");
        assert!(cast.contains("[MASKED:github-token]"), "{cast}");
        assert!(cast.contains("status: {"), "{cast}");
    }

    #[tokio::test]
    async fn without_live_masking_only_the_recording_is_masked() {
        let (seen, cast) = secret_split_across_two_frames(false).await;
        assert!(seen.contains(SECRET), "{seen}");
        assert!(!cast.contains(&SECRET[10..]), "{cast}");
        assert!(cast.contains("[MASKED:github-token]"), "{cast}");
    }

    #[tokio::test]
    async fn base64_protocol_is_masked_and_reencoded() {
        let mut h = start_enc(Encoding::Base64, true, None);
        let b64 = |ch: u8, d: &str| {
            let (op, p) = encode_message(Encoding::Base64, ch, d.as_bytes());
            frame(op, &p, None)
        };
        let (a, b) = SECRET.split_at(20);
        h.server.write_all(&b64(1, a)).await.unwrap();
        h.server
            .write_all(&b64(1, &format!("{b}\n")))
            .await
            .unwrap();
        h.server.shutdown().await.unwrap();
        h.client.shutdown().await.unwrap();
        let mut raw = Vec::new();
        h.client.read_to_end(&mut raw).await.unwrap();
        let frames = FrameReader::default().push(&raw).unwrap();
        let mut seen = Vec::new();
        for f in &frames {
            assert_eq!(f.opcode, 1, "text frames for the base64 protocol");
            if let Some((1, d)) = channel_message(f, Encoding::Base64).unwrap() {
                seen.extend(d);
            }
        }
        assert_eq!(String::from_utf8_lossy(&seen), "[MASKED:github-token]\n");
        let _ = h.done.await;
    }

    #[tokio::test]
    async fn held_back_output_is_released_when_idle() {
        let mut h = start(true, None);
        // "gh" could start a token: the masker holds it back until idle.
        h.server
            .write_all(&frame(2, b"\x01$ gh", None))
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut r = FrameReader::default();
        let mut buf = [0u8; 256];
        while channel(&got, 1) != "$ gh" {
            let n = h.client.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got.extend(r.push(&buf[..n]).unwrap());
        }
        drop(h.server);
        drop(h.client);
        let _ = h.done.await;
    }

    fn stdin_frame(data: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8];
        p.extend_from_slice(data);
        frame(2, &p, Some(rand::random()))
    }

    #[tokio::test]
    async fn tty_guard_clears_a_blocked_line_and_releases_an_allowed_one() {
        let checker = Arc::new(BlockRm(Mutex::new(Vec::new())));
        let mut h = start(
            true,
            Some((GuardMode::Tty, checker.clone() as SharedChecker)),
        );
        // Typed key by key, Enter in its own frame, like a terminal.
        for k in "rm -rf /x".bytes() {
            h.client.write_all(&stdin_frame(&[k])).await.unwrap();
        }
        h.client.write_all(&stdin_frame(b"\r")).await.unwrap();
        h.client
            .write_all(&stdin_frame(b"echo ok\r"))
            .await
            .unwrap();
        h.client
            .write_all(&frame(8, &1000u16.to_be_bytes(), Some([9, 8, 7, 6])))
            .await
            .unwrap();
        h.client.shutdown().await.unwrap();
        let (raw, frames) = drain(&mut h.server).await;
        let stdin = channel(&frames, 0);
        assert_eq!(stdin, "rm -rf /x\x05\x15\recho ok\r", "{frames:?}");
        // Every client→server frame is masked (RFC 6455 §5.3).
        let mut at = 0;
        while at < raw.len() {
            assert_eq!(raw[at + 1] & 0x80, 0x80, "unmasked frame at {at}");
            let len = usize::from(raw[at + 1] & 0x7f);
            assert!(len < 126);
            at += 2 + 4 + len;
        }
        assert_eq!(frames.last().map(|f| f.opcode), Some(8));
        h.server.shutdown().await.unwrap();
        let (_, down) = drain(&mut h.client).await;
        let shown = channel(&down, 1);
        assert!(
            shown.contains("sallyport: blocked by test rule 'rm *'"),
            "{shown}"
        );
        let asked = checker.0.lock().unwrap().clone();
        assert_eq!(asked.len(), 2);
        assert_eq!(asked[0].line, "rm -rf /x");
        assert_eq!(asked[1].line, "echo ok");
        let (up, down) = h.done.await.unwrap();
        up.unwrap();
        down.unwrap();
        let cast = std::fs::read_to_string(&h.cast).unwrap();
        assert!(
            cast.contains("\"m\", \"blocked: rm -rf /x (test rule 'rm *')\""),
            "{cast}"
        );
    }

    #[tokio::test]
    async fn tty_guard_checks_each_line_of_type_ahead_in_one_frame() {
        let checker = Arc::new(BlockRm(Mutex::new(Vec::new())));
        let mut h = start(
            true,
            Some((GuardMode::Tty, checker.clone() as SharedChecker)),
        );
        h.client
            .write_all(&stdin_frame(b"ls\nrm -rf /x\necho ok\n"))
            .await
            .unwrap();
        h.client.shutdown().await.unwrap();
        let (_, frames) = drain(&mut h.server).await;
        assert_eq!(channel(&frames, 0), "ls\nrm -rf /x\x05\x15\recho ok\n");
        let lines: Vec<String> = checker
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.line.clone())
            .collect();
        assert_eq!(lines, ["ls", "rm -rf /x", "echo ok"]);
        h.server.shutdown().await.unwrap();
        let _ = h.done.await;
    }

    #[tokio::test]
    async fn line_guard_without_a_terminal_drops_blocked_lines() {
        let checker = Arc::new(BlockRm(Mutex::new(Vec::new())));
        let mut h = start(
            false,
            Some((GuardMode::Lines, checker.clone() as SharedChecker)),
        );
        // Split mid-line across frames; the last line has no newline and is
        // checked when stdin closes (v5 close signal on channel 255).
        h.client
            .write_all(&stdin_frame(b"echo a\nrm -r"))
            .await
            .unwrap();
        h.client
            .write_all(&stdin_frame(b"f /x\necho b\nrm -rf /y"))
            .await
            .unwrap();
        h.client
            .write_all(&frame(2, &[255, 0], Some([1, 2, 3, 4])))
            .await
            .unwrap();
        h.client.shutdown().await.unwrap();
        let (_, frames) = drain(&mut h.server).await;
        assert_eq!(channel(&frames, 0), "echo a\necho b\n");
        h.server.shutdown().await.unwrap();
        let (_, down) = drain(&mut h.client).await;
        let err = channel(&down, 2);
        assert_eq!(err.matches("sallyport: blocked by").count(), 2, "{err}");
        let lines: Vec<String> = checker
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.line.clone())
            .collect();
        assert_eq!(lines, ["echo a", "rm -rf /x", "echo b", "rm -rf /y"]);
        let _ = h.done.await;
    }

    #[tokio::test]
    async fn a_line_that_never_ends_ends_the_stream() {
        let checker = Arc::new(BlockRm(Mutex::new(Vec::new())));
        let mut h = start(false, Some((GuardMode::Lines, checker as SharedChecker)));
        let chunk = vec![b'a'; 30 * 1024];
        for _ in 0..3 {
            let _ = h.client.write_all(&stdin_frame(&chunk)).await;
        }
        // The caller ends both halves on the first error; here the server
        // side closing ends the down half.
        h.server.shutdown().await.unwrap();
        let (up, _) = h.done.await.unwrap();
        assert!(up.unwrap_err().to_string().contains("without a newline"));
        let (_, frames) = drain(&mut h.server).await;
        assert_eq!(channel(&frames, 0), "", "nothing of it was forwarded");
    }
}
