//! Secret masking, usable without SSH: built-in detectors with stable names,
//! policy regexes, an aho-corasick prefilter and a streaming masker with a
//! carry-over window so secrets split across reads are still caught.
//!
//! Everything works on bytes (pty output is not always UTF-8). A secret is
//! replaced by `[MASKED:<detector>]` whatever its length; for detectors that
//! name a value (`password=...`, `postgres://user:pw@`) only the value is
//! replaced and the key stays readable.
//!
//! # How a chunk is processed
//!
//! 1. The aho-corasick automaton (all detectors' keywords, ASCII
//!    case-insensitive) scans the pending bytes. Clean text has no keyword, so
//!    it is emitted as is: this is the fast path.
//! 2. Only detectors whose keyword occurred run their regex. The scan takes
//!    the leftmost match over all detectors (ties: detector order), masks it
//!    and continues after it.
//! 3. A PEM private-key header switches the masker into "inside a key block"
//!    mode that swallows the body until the `-----END ...-----` line,
//!    however long the block is and however it is chunked.
//!
//! # Streaming contract ([`StreamMasker`])
//!
//! `push` returns, at once, every byte that can no longer be part of a
//! secret. It holds back only the shortest tail that could still be the
//! beginning of one: a partial keyword at the very end (`gh` of `ghp_...`),
//! or a keyword whose match could still grow with the next read (a
//! `token=...` value that reaches the end of the chunk). The held-back tail
//! is bounded by the longest detector (about 14 KiB, a JWT) and is usually a
//! few bytes. So a secret split across reads, even byte by byte, is masked
//! exactly as if the whole text had arrived at once (a property test checks
//! this for every chunking).
//!
//! The caller must call [`StreamMasker::flush`] when the stream goes idle
//! (say 20 ms without output) and at its end: flush releases the held-back
//! tail (masking what is there). A secret whose halves are separated by a
//! flush is not recognised as a whole, except PEM blocks (the "inside a key
//! block" mode survives a flush). Offsets in [`Hit`]s are stream offsets.
//!
//! Custom rules whose regex starts with a literal of 3+ characters (and has
//! no `|`) use it as their keyword; other custom rules run on every chunk and
//! are guaranteed across chunk boundaries only for matches within one line.
//! Custom matches longer than [`CUSTOM_MAX`] bytes are not guaranteed across
//! chunk boundaries.

use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::bytes::{Regex, RegexBuilder};

mod detectors;

pub use detectors::builtin_names;
use detectors::{BUILTINS, Kind, Run};

/// Longest custom match the streaming masker guarantees across chunks.
pub const CUSTOM_MAX: usize = 1024;

/// Bytes of already-emitted context kept before the pending bytes, so that
/// `\b` at a chunk boundary sees the same neighbour as in the whole text.
const CONTEXT: usize = 8;

/// Slack after the end of a possible match before it counts as settled: the
/// trailing delimiter some detectors consume, plus the byte a trailing `\b`
/// looks at.
const SLACK: usize = 2;

/// Longest PEM footer (`-----END <type> PRIVATE KEY-----`) accepted.
const PEM_FOOTER_MAX: usize = 96;

/// Errors building a [`Masker`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A detector name in the config is not a built-in one.
    #[error("unknown masking detector `{0}` (known: {known})", known = builtin_names().collect::<Vec<_>>().join(", "))]
    UnknownDetector(String),
    /// A custom rule's regex does not compile.
    #[error("masking rule `{name}`: invalid regex: {source}")]
    BadRegex {
        name: String,
        #[source]
        source: Box<regex::Error>,
    },
    /// A custom rule's name is empty or has characters other than `[A-Za-z0-9_.-]`.
    #[error(
        "masking rule name `{0}` must be non-empty and use only letters, digits, `_`, `.`, `-`"
    )]
    BadName(String),
    /// The keyword automaton could not be built.
    #[error("masking keyword automaton: {0}")]
    Prefilter(#[from] aho_corasick::BuildError),
}

/// A custom masking rule from policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomRule {
    /// Shown as `[MASKED:<name>]` and in the audit log.
    pub name: String,
    /// Regex (Rust `regex` syntax) over the bytes; the first capture group
    /// that participates is masked, or the whole match without groups.
    pub regex: String,
}

/// Which detectors a [`Masker`] runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MaskConfig {
    /// Built-in detector names; empty means all of them.
    pub detectors: Vec<String>,
    /// Policy regexes.
    pub custom: Vec<CustomRule>,
}

impl MaskConfig {
    /// The masking a session grant asks for. Policy names detector
    /// families (`aws`, `password`, see `policy::load::KNOWN_DETECTORS`);
    /// each is expanded to the built-in detectors it stands for.
    pub fn from_grant(grant: &crate::policy::SessionGrant) -> Self {
        let mut detectors: Vec<String> = Vec::new();
        for family in &grant.mask_detectors {
            for name in family_detectors(family) {
                if !detectors.iter().any(|d| d == name) {
                    detectors.push(name.to_string());
                }
            }
        }
        Self {
            detectors,
            custom: grant
                .mask_custom
                .iter()
                .map(|(name, regex)| CustomRule {
                    name: name.clone(),
                    regex: regex.clone(),
                })
                .collect(),
        }
    }
}

/// The built-in detectors a policy detector name stands for: a family name
/// (`aws` -> `aws-access-key-id`, `aws-secret-access-key`) or a built-in
/// name itself. An unknown name maps to itself, so [`Masker::new`] reports
/// it instead of silently masking less.
pub fn family_detectors(name: &str) -> Vec<&str> {
    let family: &[&'static str] = match name {
        "aws" => &["aws-access-key-id", "aws-secret-access-key"],
        "github" => &["github-token"],
        "gitlab" => &["gitlab-token"],
        "slack" => &["slack-token", "slack-webhook"],
        "stripe" => &["stripe-key"],
        "gcp" => &["gcp-api-key", "gcp-service-account-key"],
        "password" => &["password-assignment"],
        "connection-string" => &["connection-string-password"],
        _ => &[],
    };
    if family.is_empty() {
        vec![name]
    } else {
        family.to_vec()
    }
}

/// One masked secret: which detector and where (byte offset of the masked
/// bytes in the input stream). Never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub detector: Arc<str>,
    pub offset: u64,
}

/// Masked output of one call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Masked {
    pub bytes: Vec<u8>,
    pub hits: Vec<Hit>,
}

impl Masked {
    fn extend(&mut self, other: Masked) {
        self.bytes.extend_from_slice(&other.bytes);
        self.hits.extend(other.hits);
    }
}

struct Detector {
    name: Arc<str>,
    marker: Vec<u8>,
    regex: Regex,
    lead: usize,
    max_len: usize,
    run: Run,
    kind: Kind,
    /// Custom rule without a usable literal: runs on every chunk.
    always: bool,
    /// A generic value detector (`password=...`): when a specific detector
    /// matches exactly the masked value, the hit takes that name.
    generic: bool,
}

struct Keyword {
    detector: usize,
    len: usize,
}

struct Inner {
    detectors: Vec<Detector>,
    ac: Option<AhoCorasick>,
    /// Per aho-corasick pattern: which detector it belongs to.
    keywords: Vec<Keyword>,
    /// Lowercased keywords, for the partial-keyword check at a chunk's end.
    keyword_bytes: Vec<Vec<u8>>,
    /// Bytes that occur in some keyword (both cases): a chunk ending in any
    /// other byte cannot end in a partial keyword.
    keyword_chars: [bool; 256],
    any_always: bool,
}

/// A compiled set of detectors. Cheap to clone and share between sessions
/// (`Send + Sync`); [`Masker::stream`] makes a per-stream [`StreamMasker`].
#[derive(Clone)]
pub struct Masker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masker")
            .field(
                "detectors",
                &self
                    .inner
                    .detectors
                    .iter()
                    .map(|d| &*d.name)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The literal a custom regex starts with (lowercased), if it is long enough
/// to serve as a prefilter keyword. `None` when the regex has an alternation
/// anywhere (a literal prefix would not be required then).
fn literal_prefix(re: &str) -> Option<String> {
    if re.contains('|') {
        return None;
    }
    let body = re.strip_prefix("(?i)").unwrap_or(re);
    let mut lit = String::new();
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        let lc = if c == '\\' {
            match chars.peek() {
                Some(&n) if n.is_ascii_punctuation() => {
                    chars.next();
                    n
                }
                _ => break,
            }
        } else if c.is_ascii_alphanumeric() || "_-:/@#%=!,;<>~\"' ".contains(c) {
            c
        } else {
            break;
        };
        // A quantifier after this char makes it optional or repeated.
        if matches!(chars.peek(), Some('?' | '*' | '{')) {
            break;
        }
        lit.push(lc.to_ascii_lowercase());
    }
    (lit.len() >= 3).then_some(lit)
}

impl Masker {
    /// Compile the detectors a config asks for.
    pub fn new(cfg: &MaskConfig) -> Result<Self, Error> {
        for name in &cfg.detectors {
            if !BUILTINS.iter().any(|b| b.name == name) {
                return Err(Error::UnknownDetector(name.clone()));
            }
        }
        let mut detectors = Vec::new();
        let mut patterns: Vec<String> = Vec::new();
        let mut keywords = Vec::new();
        // Custom rules first: an operator's own rule wins a tie.
        for rule in &cfg.custom {
            if !valid_name(&rule.name) {
                return Err(Error::BadName(rule.name.clone()));
            }
            let regex = RegexBuilder::new(&rule.regex)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| Error::BadRegex {
                    name: rule.name.clone(),
                    source: Box::new(e),
                })?;
            let lit = literal_prefix(&rule.regex);
            let idx = detectors.len();
            if let Some(l) = &lit {
                keywords.push(Keyword {
                    detector: idx,
                    len: l.len(),
                });
                patterns.push(l.clone());
            }
            detectors.push(Detector {
                marker: format!("[MASKED:{}]", rule.name).into_bytes(),
                name: Arc::from(rule.name.as_str()),
                regex,
                lead: 0,
                max_len: CUSTOM_MAX,
                run: Run::Any,
                kind: Kind::Plain,
                always: lit.is_none(),
                generic: false,
            });
        }
        for b in BUILTINS {
            if !cfg.detectors.is_empty() && !cfg.detectors.iter().any(|n| n == b.name) {
                continue;
            }
            let regex = RegexBuilder::new(b.regex)
                .unicode(false)
                .build()
                .map_err(|e| Error::BadRegex {
                    name: b.name.to_string(),
                    source: Box::new(e),
                })?;
            let idx = detectors.len();
            for k in b.keywords {
                keywords.push(Keyword {
                    detector: idx,
                    len: k.len(),
                });
                patterns.push(k.to_ascii_lowercase());
            }
            detectors.push(Detector {
                name: Arc::from(b.name),
                marker: format!("[MASKED:{}]", b.name).into_bytes(),
                regex,
                lead: b.lead,
                max_len: b.max_len,
                run: b.run,
                kind: b.kind,
                always: false,
                generic: b.name == "password-assignment",
            });
        }
        let ac = if patterns.is_empty() {
            None
        } else {
            Some(
                AhoCorasickBuilder::new()
                    .ascii_case_insensitive(true)
                    .match_kind(MatchKind::Standard)
                    .build(&patterns)?,
            )
        };
        let mut keyword_chars = [false; 256];
        for b in patterns.iter().flat_map(|p| p.bytes()) {
            for c in [b.to_ascii_lowercase(), b.to_ascii_uppercase()] {
                if let Some(slot) = keyword_chars.get_mut(usize::from(c)) {
                    *slot = true;
                }
            }
        }
        let any_always = detectors.iter().any(|d| d.always);
        Ok(Self {
            inner: Arc::new(Inner {
                detectors,
                ac,
                keywords,
                keyword_bytes: patterns.into_iter().map(String::into_bytes).collect(),
                keyword_chars,
                any_always,
            }),
        })
    }

    /// All built-in detectors, no custom rules.
    pub fn builtin() -> Result<Self, Error> {
        Self::new(&MaskConfig::default())
    }

    /// Names of the detectors this masker runs, in priority order.
    pub fn detector_names(&self) -> Vec<&str> {
        self.inner.detectors.iter().map(|d| &*d.name).collect()
    }

    /// Mask a whole text at once (offsets relative to its start).
    pub fn mask(&self, text: &[u8]) -> Masked {
        let mut s = self.stream();
        let mut out = s.push(text);
        out.extend(s.flush());
        out
    }

    /// Mask a string; the convenience for audit text (commands, kube bodies).
    pub fn mask_str(&self, text: &str) -> String {
        String::from_utf8_lossy(&self.mask(text.as_bytes()).bytes).into_owned()
    }

    /// A streaming masker for one stream (pty output, a recording, ...).
    pub fn stream(&self) -> StreamMasker {
        StreamMasker {
            inner: Arc::clone(&self.inner),
            buf: Vec::new(),
            ctx: 0,
            base: 0,
            in_pem: false,
        }
    }
}

/// Per-stream masking state. See the module docs for the contract.
pub struct StreamMasker {
    inner: Arc<Inner>,
    /// `buf[..ctx]` was already emitted (kept as context); `buf[ctx..]` is pending.
    buf: Vec<u8>,
    ctx: usize,
    /// Stream offset of `buf[ctx]`.
    base: u64,
    /// Inside a PEM private-key block: body bytes are swallowed.
    in_pem: bool,
}

impl std::fmt::Debug for StreamMasker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the pending bytes: they may be half a secret.
        f.debug_struct("StreamMasker")
            .field("held_back", &self.held_back())
            .field("offset", &self.base)
            .field("in_pem", &self.in_pem)
            .finish()
    }
}

/// A regex match as the scan uses it: whole match and masked span.
#[derive(Debug, Clone, Copy)]
struct Found {
    start: usize,
    end: usize,
    mask_start: usize,
    mask_end: usize,
}

enum PemStep {
    /// Body ended (footer consumed or a non-body byte) at this index.
    Done(usize),
    /// Consumed up to this index; the rest (a partial footer) must wait.
    Wait(usize),
}

fn pem_body_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'+' | b'/' | b'=' | b' ' | b'\t' | b'\r' | b'\n' | b':' | b',' | b'.' | b'-' | b'\\'
        )
}

const PEM_END: &[u8] = b"-----END";

/// Swallow a PEM body from `i`. With `last`, nothing more will come.
fn pem_consume(buf: &[u8], mut i: usize, last: bool) -> PemStep {
    let len = buf.len();
    // A footer cut by the chunk end waits for more bytes; on flush it is
    // swallowed and the block stays open (safer than showing a key's tail).
    let more = |i: usize| {
        if last {
            PemStep::Wait(len)
        } else {
            PemStep::Wait(i)
        }
    };
    while i < len {
        let rest = buf.get(i..).unwrap_or_default();
        if rest.first() == Some(&b'-') {
            if rest.len() < PEM_END.len() && PEM_END.starts_with(rest) {
                return more(i);
            }
            if rest.starts_with(PEM_END) {
                // Footer: `-----END` [ A-Z0-9]* `-----`.
                let mut j = PEM_END.len();
                loop {
                    match rest.get(j) {
                        Some(b) if b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b' ' => {
                            j += 1;
                            if j > PEM_FOOTER_MAX {
                                break;
                            }
                        }
                        Some(b'-') => {
                            let dashes = rest.get(j..).unwrap_or_default();
                            let n = dashes.iter().take(5).take_while(|&&b| b == b'-').count();
                            if n == 5 {
                                return PemStep::Done(i + j + 5);
                            }
                            if j + n == rest.len() {
                                return more(i);
                            }
                            break;
                        }
                        Some(_) => break,
                        None => return more(i),
                    }
                }
            }
        }
        match rest.first() {
            Some(&b) if pem_body_byte(b) => i += 1,
            _ => return PemStep::Done(i),
        }
    }
    // The whole chunk was body; stay in the block (the rest may still come).
    PemStep::Wait(len)
}

impl Inner {
    /// The specific detector that matches exactly `f`'s masked value, if any
    /// (`AWS_ACCESS_KEY_ID=AKIA...` is an AWS key id, not just a password).
    fn specific_name<'a>(
        &'a self,
        buf: &[u8],
        triggered: &[bool],
        f: Found,
        generic: &'a Detector,
    ) -> &'a Detector {
        let hay = buf.get(..f.mask_end).unwrap_or_default();
        for (i, d) in self.detectors.iter().enumerate() {
            if d.generic || d.kind != Kind::Plain || !triggered.get(i).copied().unwrap_or(false) {
                continue;
            }
            if let Some(g) = self.find(d, hay, f.mask_start)
                && g.start == f.mask_start
                && g.end == f.mask_end
            {
                return d;
            }
        }
        generic
    }

    /// First match of detector `d` starting at or after `from`.
    fn find(&self, d: &Detector, hay: &[u8], from: usize) -> Option<Found> {
        let mut at = from;
        loop {
            if at > hay.len() {
                return None;
            }
            // The fast DFA finds the match; capture groups are then resolved
            // on the match alone (slow engines never see the whole buffer).
            let m = d.regex.find_at(hay, at)?;
            if m.start() == m.end() {
                // Empty matches mask nothing; look further.
                at = m.start() + 1;
                continue;
            }
            let mut locs = d.regex.capture_locations();
            let span = hay.get(..m.end()).unwrap_or_default();
            if d.regex
                .captures_read_at(&mut locs, span, m.start())
                .is_none()
            {
                locs = d.regex.capture_locations();
            }
            let (mut ms, mut me) = (m.start(), m.end());
            for g in 1..locs.len() {
                if let Some((s, e)) = locs.get(g) {
                    (ms, me) = (s, e);
                    break;
                }
            }
            return Some(Found {
                start: m.start(),
                end: m.end(),
                mask_start: ms,
                mask_end: me,
            });
        }
    }
}

impl StreamMasker {
    /// Mask the next chunk of the stream. Returns what can be released now.
    pub fn push(&mut self, chunk: &[u8]) -> Masked {
        self.buf.extend_from_slice(chunk);
        self.process(false)
    }

    /// Release everything held back (the stream is idle or ended).
    pub fn flush(&mut self) -> Masked {
        self.process(true)
    }

    /// How many bytes are held back now.
    pub fn held_back(&self) -> usize {
        self.buf.len().saturating_sub(self.ctx)
    }

    /// Stream offset of the next byte to be released.
    pub fn offset(&self) -> u64 {
        self.base
    }

    fn process(&mut self, last: bool) -> Masked {
        let inner = Arc::clone(&self.inner);
        let buf = std::mem::take(&mut self.buf);
        let len = buf.len();
        let ctx = self.ctx;
        let mut out = Masked::default();

        // Keyword hits in the pending bytes decide which detectors run and
        // how much must be held back.
        let mut triggered = vec![false; inner.detectors.len()];
        let mut hold = len;
        let pending = buf.get(ctx..).unwrap_or_default();
        // Fast path: one leftmost search decides whether there is any
        // keyword at all (clean text has none).
        let any_keyword = inner.ac.as_ref().is_some_and(|ac| ac.is_match(pending));
        if let Some(ac) = inner.ac.as_ref().filter(|_| any_keyword) {
            for m in ac.find_overlapping_iter(pending) {
                let Some(kw) = inner.keywords.get(m.pattern().as_usize()) else {
                    continue;
                };
                let Some(d) = inner.detectors.get(kw.detector) else {
                    continue;
                };
                if let Some(t) = triggered.get_mut(kw.detector) {
                    *t = true;
                }
                if last {
                    continue;
                }
                let k = ctx + m.start();
                if k + d.max_len + SLACK <= len {
                    continue; // any match around k lies within known bytes
                }
                let after = k + kw.len;
                let run_end = buf
                    .get(after..)
                    .unwrap_or_default()
                    .iter()
                    .position(|&b| !d.run.contains(b))
                    .map_or(len, |p| after + p);
                if run_end + SLACK > len {
                    hold = hold.min(k.saturating_sub(d.lead).max(ctx));
                }
            }
        }
        if !last {
            // A keyword cut by the chunk end (`gh` of `ghp_`).
            let ends_in_keyword_char = pending.last().is_some_and(|&b| {
                inner
                    .keyword_chars
                    .get(usize::from(b))
                    .copied()
                    .unwrap_or(false)
            });
            if ends_in_keyword_char {
                for (kw, meta) in inner.keyword_bytes.iter().zip(&inner.keywords) {
                    let lead = inner.detectors.get(meta.detector).map_or(0, |d| d.lead);
                    for l in (1..kw.len().min(pending.len() + 1)).rev() {
                        let tail = pending.get(pending.len() - l..).unwrap_or_default();
                        if tail.eq_ignore_ascii_case(kw.get(..l).unwrap_or_default()) {
                            let q = len - l;
                            hold = hold.min(q.saturating_sub(lead).max(ctx));
                            break;
                        }
                    }
                }
            }
            if inner.any_always {
                let line_start = pending
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(ctx, |p| ctx + p + 1);
                hold = hold.min(line_start.max(len.saturating_sub(CUSTOM_MAX)).max(ctx));
            }
        }
        for (t, d) in triggered.iter_mut().zip(&inner.detectors) {
            if d.always {
                *t = true;
            }
        }

        // The scan: leftmost match over the triggered detectors.
        let mut cache: Vec<Option<Option<Found>>> = vec![None; inner.detectors.len()];
        let mut p = ctx;
        let mut waiting_in_pem = false;
        loop {
            if self.in_pem {
                match pem_consume(&buf, p, last) {
                    PemStep::Done(i) => {
                        self.in_pem = false;
                        p = i;
                    }
                    PemStep::Wait(i) => {
                        p = i;
                        waiting_in_pem = true;
                        break;
                    }
                }
            }
            let mut best: Option<(usize, Found)> = None;
            for (i, d) in inner.detectors.iter().enumerate() {
                if !triggered.get(i).copied().unwrap_or(false) {
                    continue;
                }
                let Some(slot) = cache.get_mut(i) else {
                    continue;
                };
                let stale = match slot {
                    None => true,
                    Some(Some(f)) => f.start < p,
                    Some(None) => false,
                };
                if stale {
                    *slot = Some(inner.find(d, &buf, p));
                }
                if let Some(Some(f)) = slot
                    && best.as_ref().is_none_or(|(_, b)| f.start < b.start)
                {
                    best = Some((i, *f));
                }
            }
            let Some((di, f)) = best else { break };
            if f.start >= hold {
                break;
            }
            let Some(mut d) = inner.detectors.get(di) else {
                break;
            };
            if d.generic {
                d = inner.specific_name(&buf, &triggered, f, d);
            }
            out.bytes
                .extend_from_slice(buf.get(p..f.mask_start).unwrap_or_default());
            out.bytes.extend_from_slice(&d.marker);
            out.bytes
                .extend_from_slice(buf.get(f.mask_end..f.end).unwrap_or_default());
            out.hits.push(Hit {
                detector: Arc::clone(&d.name),
                offset: self.base + (f.mask_start - ctx) as u64,
            });
            p = f.end;
            if d.kind == Kind::PemHeader {
                self.in_pem = true;
            }
        }
        let emitted = if waiting_in_pem {
            p
        } else {
            if p < hold {
                out.bytes
                    .extend_from_slice(buf.get(p..hold).unwrap_or_default());
            }
            p.max(hold)
        };

        // Keep a little context before the pending bytes.
        let keep_from = emitted.saturating_sub(CONTEXT);
        self.base += (emitted - ctx) as u64;
        self.ctx = emitted - keep_from;
        self.buf = buf;
        self.buf.drain(..keep_from);
        out
    }
}

#[cfg(test)]
mod tests;
