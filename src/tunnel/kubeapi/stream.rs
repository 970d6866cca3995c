//! Upgraded streams (`exec`, `attach`, `port-forward`) after the 101: relayed
//! both ways, and for `exec`/`attach` over WebSocket also *read* on the way
//! through, so the terminal session is recorded as an asciicast like a local
//! shell (stdin → "i", stdout/stderr → "o", resize → "r").
//!
//! Kubernetes' WebSocket stream protocols (`v5.channel.k8s.io`,
//! `v4.channel.k8s.io`, `channel.k8s.io` binary; `*.base64.channel.k8s.io`
//! text) put one channel byte in front of every message: 0 stdin, 1 stdout,
//! 2 stderr, 3 error/status, 4 resize (`{"Width":..,"Height":..}`), 255 close
//! (v5). See k8s.io/apimachinery/pkg/util/httpstream/wsstream/conn.go.
//!
//! The reader is a tap, not a rewriter: bytes are forwarded unchanged. What
//! it cannot parse (SPDY, an unknown subprotocol, a frame above the size
//! cap) ends the stream when recording is required — an unrecorded session
//! must not run (the recorder's own rule, and Warpgate #950's lesson that
//! side doors around recording get used).

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use hyper::header::HeaderMap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::MaskFn;
use crate::record::Recorder;

/// Largest WebSocket message the tap buffers (kubectl sends ≤ 32 KiB).
pub const MAX_FRAME: usize = 1024 * 1024;

/// Errors of the stream tap; each ends the recorded stream.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("WebSocket frame of {0} bytes is over the {MAX_FRAME}-byte cap")]
    FrameTooLarge(u64),
    #[error("bad base64 in a channel message")]
    Base64,
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
/// `None` for anything the tap cannot read.
pub fn encoding_for(protocol: &str) -> Option<Encoding> {
    match protocol.trim() {
        "v5.channel.k8s.io" | "v4.channel.k8s.io" | "v3.channel.k8s.io" | "v2.channel.k8s.io"
        | "channel.k8s.io" => Some(Encoding::Binary),
        "v4.base64.channel.k8s.io" | "base64.channel.k8s.io" => Some(Encoding::Base64),
        _ => None,
    }
}

/// The recordable encoding of a 101 response, if it is a WebSocket with a
/// Kubernetes channel protocol.
pub fn response_encoding(h: &HeaderMap) -> Option<Encoding> {
    let ws = h
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !ws {
        return None;
    }
    h.get(hyper::header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(encoding_for)
}

/// Incremental WebSocket frame reader (RFC 6455 §5.2) for one direction.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

/// One complete frame: opcode and unmasked payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl FrameReader {
    /// Feed bytes; returns the frames completed by them.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Frame>, TapError> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        loop {
            let b = &self.buf;
            let (Some(&b0), Some(&b1)) = (b.first(), b.get(1)) else {
                break;
            };
            let masked = b1 & 0x80 != 0;
            let (len, mut at) = match b1 & 0x7f {
                126 => match b.get(2..4) {
                    Some(s) => (u64::from(u16::from_be_bytes([s[0], s[1]])), 4usize),
                    None => break,
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
                for (i, x) in payload.iter_mut().enumerate() {
                    *x ^= m[i % 4];
                }
            }
            out.push(Frame {
                opcode: b0 & 0x0f,
                payload,
            });
            self.buf.drain(..end);
        }
        Ok(out)
    }
}

/// Split a data frame into (channel, bytes) under `enc`.
pub fn channel_message(f: &Frame, enc: Encoding) -> Result<Option<(u8, Vec<u8>)>, TapError> {
    // 1 text, 2 binary; control frames and continuations carry no channel.
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

/// Direction of bytes through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// kubectl → API server (stdin, resize).
    Up,
    /// API server → kubectl (stdout, stderr, status).
    Down,
}

/// Feeds one direction's frames into the shared recording.
pub struct Tap {
    reader: FrameReader,
    enc: Encoding,
    dir: Direction,
    rec: Arc<Mutex<Recorder>>,
    mask: MaskFn,
}

impl Tap {
    pub fn new(enc: Encoding, dir: Direction, rec: Arc<Mutex<Recorder>>, mask: MaskFn) -> Self {
        Self {
            reader: FrameReader::default(),
            enc,
            dir,
            rec,
            mask,
        }
    }

    /// Record what `data` completes.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), TapError> {
        for f in self.reader.push(data)? {
            let Some((ch, bytes)) = channel_message(&f, self.enc)? else {
                continue;
            };
            let mut rec = match self.rec.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            match (self.dir, ch) {
                (Direction::Up, 0) if !bytes.is_empty() => rec.input(&(self.mask)(&bytes))?,
                (Direction::Up, 4) => {
                    #[derive(serde::Deserialize)]
                    struct Size {
                        #[serde(rename = "Width")]
                        width: u16,
                        #[serde(rename = "Height")]
                        height: u16,
                    }
                    if let Ok(s) = serde_json::from_slice::<Size>(&bytes)
                        && s.width > 0
                        && s.height > 0
                    {
                        rec.resize(s.width, s.height)?;
                    }
                }
                (Direction::Down, 1 | 2) if !bytes.is_empty() => {
                    rec.output(&(self.mask)(&bytes))?
                }
                (Direction::Down, 3) if !bytes.is_empty() => {
                    let text = String::from_utf8_lossy(&bytes);
                    rec.marker(&format!("status: {}", text.trim()))?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Copy `src` → `dst`, showing every chunk to `tap` first; returns bytes
/// copied. A tap error stops the copy (the caller then drops both sides).
pub async fn copy_tapped<R, W>(
    mut src: R,
    mut dst: W,
    mut tap: Option<Tap>,
) -> Result<u64, std::io::Error>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 32 * 1024];
    let mut total = 0u64;
    loop {
        let n = src.read(&mut buf).await?;
        if n == 0 {
            let _ = dst.shutdown().await;
            return Ok(total);
        }
        let chunk = buf.get(..n).unwrap_or_default();
        if let Some(t) = tap.as_mut() {
            t.feed(chunk).map_err(std::io::Error::other)?;
        }
        dst.write_all(chunk).await?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut v = vec![0x80 | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        if payload.len() < 126 {
            v.push(m | payload.len() as u8);
        } else {
            v.push(m | 126);
            v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        match mask {
            Some(k) => {
                v.extend_from_slice(&k);
                v.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
            }
            None => v.extend_from_slice(payload),
        }
        v
    }

    #[test]
    fn frames_split_anywhere_are_reassembled() {
        let mut wire = frame(2, b"\x00ls -l\r", Some([1, 2, 3, 4]));
        wire.extend(frame(2, &[b'x'; 300], None));
        wire.extend(frame(9, b"", None));
        for split in 0..wire.len() {
            let mut r = FrameReader::default();
            let (a, b) = wire.split_at(split);
            let mut got = r.push(a).unwrap();
            got.extend(r.push(b).unwrap());
            assert_eq!(got.len(), 3, "split at {split}");
            assert_eq!(got[0].payload, b"\x00ls -l\r");
            assert_eq!(got[1].payload.len(), 300);
            assert_eq!(got[2].opcode, 9);
        }
    }

    #[test]
    fn oversized_frames_are_refused() {
        let mut r = FrameReader::default();
        let mut head = vec![0x82, 127];
        head.extend_from_slice(&(u64::MAX).to_be_bytes());
        assert!(matches!(r.push(&head), Err(TapError::FrameTooLarge(_))));
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
        assert_eq!(encoding_for("v5.channel.k8s.io"), Some(Encoding::Binary));
        assert_eq!(
            encoding_for("v4.base64.channel.k8s.io"),
            Some(Encoding::Base64)
        );
        assert_eq!(encoding_for("SPDY/3.1"), None);
    }

    #[test]
    fn tap_records_input_output_resize_masked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.cast");
        let rec = Arc::new(Mutex::new(
            Recorder::create(&path, &crate::record::Header::default()).unwrap(),
        ));
        let mask: MaskFn = Arc::new(|b: &[u8]| {
            String::from_utf8_lossy(b)
                .replace("hunter2", "[MASKED]")
                .into_bytes()
        });
        let mut up = Tap::new(Encoding::Binary, Direction::Up, rec.clone(), mask.clone());
        let mut down = Tap::new(Encoding::Binary, Direction::Down, rec.clone(), mask);
        up.feed(&frame(2, b"\x00echo hunter2\r", Some([9, 9, 9, 9])))
            .unwrap();
        up.feed(&frame(
            2,
            br#"{"Width":120,"Height":40}"#
                .iter()
                .fold(vec![4u8], |mut v, b| {
                    v.push(*b);
                    v
                })
                .as_slice(),
            Some([1, 1, 1, 1]),
        ))
        .unwrap();
        down.feed(&frame(2, b"\x01hunter2\r\n", None)).unwrap();
        down.feed(&frame(2, b"\x03{\"status\":\"Success\"}", None))
            .unwrap();
        drop(up);
        drop(down);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains(r#""i", "echo [MASKED]\r""#), "{text}");
        assert!(text.contains(r#""o", "[MASKED]\r\n""#), "{text}");
        assert!(text.contains(r#""r", "120x40""#), "{text}");
        assert!(text.contains("status: {"), "{text}");
    }
}
