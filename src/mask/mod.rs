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
//! 1. The anchor scan: every keyword of every detector is reached through a
//!    three-byte anchor (`AKI`, `ghp`, `eyJ`, `://`, the eight case
//!    variants of `key`, `pas`, `tok`, ...), about 60 in all, searched with
//!    aho-corasick's packed SIMD searcher (Teddy; an aho-corasick DFA where
//!    Teddy is unavailable). Clean text has few anchors, so it is emitted as
//!    is: this is the fast path. At each anchor the keywords it stands for
//!    are compared in place, each with one masked eight-byte compare
//!    (ASCII case-insensitively for the detectors whose regex is `(?i)`),
//!    and a detector's cheap [`detectors::Check`] of the bytes after the
//!    keyword (a `:`/`=` must follow `password`, `user:pw@` a `://`)
//!    drops occurrences no match can contain before any regex runs, so
//!    `Accepted publickey for` or `secrets are not printed` cost a few
//!    dozen instructions.
//! 2. Only detectors whose keyword occurred run their regex, and only over
//!    a window around each keyword (from `lead` bytes before it to
//!    `max_len` after: every match lies there, see `detectors.rs`). The scan
//!    takes the leftmost match over all detectors (ties: detector order),
//!    masks it and continues after it. The built-ins' masked value (a
//!    capture group) is read off the lazy DFA's match by hand
//!    ([`detectors::Groups`]); only custom rules use a capture engine.
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

use std::collections::HashMap;
use std::sync::Arc;

use aho_corasick::packed;
use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use regex::bytes::{CaptureLocations, Regex, RegexBuilder};

mod detectors;

pub use detectors::builtin_names;
use detectors::{BUILTINS, Check, Groups, Kind, Run, Shape, Verdict};

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

/// Length of the anchors the fast scan looks for. Teddy fingerprints the
/// first three bytes of each pattern; with every anchor exactly this long,
/// at most one anchor starts at any byte, so a leftmost scan restarted one
/// byte after each hit sees every occurrence.
const ANCHOR_LEN: usize = 3;

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
    #[cfg(test)]
    fn extend(&mut self, other: Masked) {
        self.bytes.extend_from_slice(&other.bytes);
        self.hits.extend(other.hits);
    }
}

struct Detector {
    name: Arc<str>,
    marker: Vec<u8>,
    regex: Regex,
    /// For built-ins whose match starts exactly at the keyword (`lead` 0):
    /// the regex anchored (`^(?:...)`, without a leading `\b`), run on the
    /// window from the keyword, so a keyword that starts no secret costs a
    /// few DFA steps instead of a scan of the window.
    anchored: Option<Regex>,
    /// Built-ins: how the masked value is read off a match by hand (the
    /// capture engines cost thousands of instructions per match). Custom
    /// rules: `None`, the regex resolves its groups.
    resolve: Option<Groups>,
    /// Built-ins: the cheap test of the bytes after a keyword.
    check: Check,
    /// Built-ins of a fixed shape: matched by hand instead of `anchored`.
    shape: Shape,
    /// The regex starts with `\b` (checked by hand before `anchored` runs,
    /// which cannot see the byte before the window).
    word_start: bool,
    /// The regex has capture groups (resolved only on a found match).
    groups: bool,
    lead: usize,
    max_len: usize,
    run: Run,
    kind: Kind,
    /// Custom rule without a usable literal: runs on every chunk.
    always: bool,
    /// A built-in: its `lead`/`max_len` bounds hold for every match, so the
    /// regex runs only on windows around its keywords. Custom rules promise
    /// no bound and are searched over the whole buffer.
    windowed: bool,
    /// A generic value detector (`password=...`): when a specific detector
    /// matches exactly the masked value, the hit takes that name.
    generic: bool,
}

struct Keyword {
    detector: usize,
    /// Lowercase when `ci`, else exact.
    bytes: Vec<u8>,
    ci: bool,
}

impl Keyword {
    fn matches(&self, hay: &[u8]) -> bool {
        Self::matches_as(self.ci, hay, &self.bytes)
    }

    fn matches_as(ci: bool, hay: &[u8], kw: &[u8]) -> bool {
        if ci {
            hay.eq_ignore_ascii_case(kw)
        } else {
            hay == kw
        }
    }
}

/// A keyword an anchor stands for, and where the anchor sits inside it.
#[derive(Clone, Copy)]
struct AnchorUse {
    keyword: usize,
    offset: usize,
    /// The keyword's first eight bytes (fewer: zero mask) as one masked
    /// compare, `load & mask == value`, case folded where `ci`: most
    /// anchor hits are rejected by it in a few instructions.
    mask: u64,
    value: u64,
    /// The keyword is longer than eight bytes: compare the rest after.
    long: bool,
}

impl AnchorUse {
    fn new(keyword: usize, offset: usize, kw: &Keyword) -> Self {
        let (mut mask, mut value) = (0u64, 0u64);
        for (i, &b) in kw.bytes.iter().take(8).enumerate() {
            let (m, v) = if kw.ci && b.is_ascii_alphabetic() {
                (0xdf_u8, b.to_ascii_uppercase())
            } else {
                (0xff, b)
            };
            mask |= u64::from(m) << (8 * i);
            value |= u64::from(v) << (8 * i);
        }
        Self {
            keyword,
            offset,
            mask,
            value,
            long: kw.bytes.len() > 8,
        }
    }

    /// Does the keyword occur at `buf[k..]`?
    fn matches_at(&self, kw: &Keyword, buf: &[u8], k: usize) -> bool {
        match buf.get(k..).and_then(<[u8]>::first_chunk::<8>) {
            Some(w) => {
                u64::from_le_bytes(*w) & self.mask == self.value
                    && (!self.long
                        || buf
                            .get(k..k + kw.bytes.len())
                            .is_some_and(|t| kw.matches(t)))
            }
            None => buf
                .get(k..k + kw.bytes.len())
                .is_some_and(|t| kw.matches(t)),
        }
    }
}

/// The keywords of one detector an anchor stands for whose ends lie at the
/// same distance from the anchor (the 21 URL schemes all end with their
/// `://`): the detector's [`Check`] of the bytes there runs once, before
/// any of the keywords is compared.
#[derive(Clone)]
struct AnchorGroup {
    /// From the anchor's start to the end of these keywords.
    after: usize,
    check: Check,
    /// Run the check before comparing keywords: worth it for a group of
    /// many (a URL's `://` stands for 21 schemes); a lone keyword is
    /// compared first (one masked compare rejects most occurrences).
    check_first: bool,
    uses: Vec<AnchorUse>,
}

/// The searcher for the anchors.
enum Scanner {
    /// Teddy (SSSE3/AVX2): the fast path.
    Packed(packed::Searcher),
    /// Where Teddy cannot be built (no SIMD, too many anchors from custom
    /// rules): an aho-corasick DFA, overlapping matches.
    Dfa(AhoCorasick),
}

struct Inner {
    detectors: Vec<Detector>,
    keywords: Vec<Keyword>,
    scanner: Option<Scanner>,
    /// Per anchor pattern: the keywords it stands for.
    anchors: Vec<Vec<AnchorGroup>>,
    /// Per byte value: the keywords starting with it (both cases when
    /// case-insensitive), for the partial-keyword check at a chunk's end.
    first_byte: Vec<Vec<usize>>,
    /// Longest keyword, bounding that check.
    longest_keyword: usize,
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

/// Every spelling of `a` that ASCII case-insensitive matching accepts
/// (just `a` when `ci` is false); at most 2^3 for a three-byte anchor.
fn case_variants(a: &[u8], ci: bool) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = vec![Vec::with_capacity(a.len())];
    for &b in a {
        let (lo, up) = (b.to_ascii_lowercase(), b.to_ascii_uppercase());
        if ci && lo != up {
            let mut uppers = out.clone();
            for v in &mut out {
                v.push(lo);
            }
            for v in &mut uppers {
                v.push(up);
            }
            out.extend(uppers);
        } else {
            for v in &mut out {
                v.push(b);
            }
        }
    }
    out
}

/// Where in `kw` its anchor sits: the first of `preferred` it contains,
/// else its start.
fn anchor_offset(kw: &[u8], ci: bool, preferred: &[&str]) -> usize {
    for a in preferred {
        let a = a.as_bytes();
        if let Some(i) = kw.windows(a.len()).position(|w| {
            if ci {
                w.eq_ignore_ascii_case(a)
            } else {
                w == a
            }
        }) {
            return i;
        }
    }
    0
}

/// Build the anchor scanner for `keywords` (each with its preferred
/// anchors): the searcher, and per anchor pattern the keywords it stands for.
fn build_scanner(
    keywords: &[Keyword],
    preferred: &[&[&str]],
    checks: &[Check],
) -> Result<(Option<Scanner>, Vec<Vec<AnchorGroup>>), Error> {
    let mut ids: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut patterns: Vec<Vec<u8>> = Vec::new();
    let mut anchors: Vec<Vec<AnchorUse>> = Vec::new();
    for (ki, kw) in keywords.iter().enumerate() {
        let pref = preferred.get(ki).copied().unwrap_or_default();
        let offset = anchor_offset(&kw.bytes, kw.ci, pref);
        let end = (offset + ANCHOR_LEN).min(kw.bytes.len());
        let anchor = kw.bytes.get(offset..end).unwrap_or_default();
        for v in case_variants(anchor, kw.ci) {
            let id = *ids.entry(v.clone()).or_insert_with(|| {
                patterns.push(v);
                anchors.push(Vec::new());
                anchors.len() - 1
            });
            if let Some(uses) = anchors.get_mut(id) {
                uses.push(AnchorUse::new(ki, offset, kw));
            }
        }
    }
    if patterns.is_empty() {
        return Ok((None, Vec::new()));
    }
    // Teddy puts patterns with the same low nybbles (the case variants of
    // one anchor) in one bucket, choosing the bucket from the id of the
    // group's first pattern. Listed variant after variant, the groups'
    // first ids would be 8 apart and pile into two buckets, whose merged
    // fingerprints then match common text (measured: 2.4x the scan's
    // instructions). So the first spelling of every anchor comes first.
    let mut seen = std::collections::HashSet::new();
    let (mut order, mut rest): (Vec<usize>, Vec<usize>) = (Vec::new(), Vec::new());
    for (i, pat) in patterns.iter().enumerate() {
        let low: Vec<u8> = pat.iter().map(|b| b & 0x0f).collect();
        if seen.insert(low) {
            order.push(i);
        } else {
            rest.push(i);
        }
    }
    order.extend(rest);
    let patterns: Vec<Vec<u8>> = order
        .iter()
        .filter_map(|&i| patterns.get(i).cloned())
        .collect();
    let anchors: Vec<Vec<AnchorGroup>> = order
        .iter()
        .filter_map(|&i| anchors.get(i))
        .map(|uses| {
            let mut groups: Vec<(usize, AnchorGroup)> = Vec::new();
            for u in uses {
                let Some(kw) = keywords.get(u.keyword) else {
                    continue;
                };
                let after = kw.bytes.len().saturating_sub(u.offset);
                let check = checks.get(kw.detector).copied().unwrap_or(Check::None);
                match groups
                    .iter_mut()
                    .find(|(d, g)| *d == kw.detector && g.after == after)
                {
                    Some((_, g)) => g.uses.push(*u),
                    None => groups.push((
                        kw.detector,
                        AnchorGroup {
                            after,
                            check,
                            check_first: false,
                            uses: vec![*u],
                        },
                    )),
                }
            }
            groups
                .into_iter()
                .map(|(_, mut g)| {
                    g.check_first = g.check != Check::None && g.uses.len() > 2;
                    g
                })
                .collect()
        })
        .collect();
    // Teddy only when all anchors have the same length (see ANCHOR_LEN):
    // a leftmost scan could otherwise hide a shorter anchor at a position
    // where a longer one matched.
    let uniform = patterns.iter().all(|p| p.len() == ANCHOR_LEN);
    if uniform
        && let Some(s) = packed::Config::new()
            .match_kind(packed::MatchKind::LeftmostFirst)
            .builder()
            .extend(&patterns)
            .build()
    {
        return Ok((Some(Scanner::Packed(s)), anchors));
    }
    let ac = AhoCorasick::builder()
        .kind(Some(AhoCorasickKind::DFA))
        .match_kind(MatchKind::Standard)
        .build(&patterns)?;
    Ok((Some(Scanner::Dfa(ac)), anchors))
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
        let mut keywords: Vec<Keyword> = Vec::new();
        let mut preferred: Vec<&[&str]> = Vec::new();
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
                    bytes: l.clone().into_bytes(),
                    ci: true,
                });
                preferred.push(&[]);
            }
            detectors.push(Detector {
                marker: format!("[MASKED:{}]", rule.name).into_bytes(),
                name: Arc::from(rule.name.as_str()),
                anchored: None,
                resolve: None,
                check: Check::None,
                shape: Shape::Regex,
                word_start: false,
                groups: regex.captures_len() > 1,
                regex,
                lead: 0,
                max_len: CUSTOM_MAX,
                run: Run::Any,
                kind: Kind::Plain,
                always: lit.is_none(),
                windowed: false,
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
            let word_start = b.regex.starts_with(r"\b");
            let compile = |re: &str| {
                RegexBuilder::new(re)
                    .unicode(false)
                    .build()
                    .map_err(|e| Error::BadRegex {
                        name: b.name.to_string(),
                        source: Box::new(e),
                    })
            };
            let mut anchored = None;
            if b.lead == 0 {
                let body = b.regex.strip_prefix(r"\b").unwrap_or(b.regex);
                anchored = Some(compile(&format!("^(?:{body})"))?);
            }
            let idx = detectors.len();
            for k in b.keywords {
                keywords.push(Keyword {
                    detector: idx,
                    bytes: if b.ci {
                        k.to_ascii_lowercase().into_bytes()
                    } else {
                        k.as_bytes().to_vec()
                    },
                    ci: b.ci,
                });
                preferred.push(b.anchors);
            }
            detectors.push(Detector {
                name: Arc::from(b.name),
                marker: format!("[MASKED:{}]", b.name).into_bytes(),
                anchored,
                resolve: Some(b.groups),
                check: b.check,
                shape: b.shape,
                word_start,
                groups: regex.captures_len() > 1,
                regex,
                lead: b.lead,
                max_len: b.max_len,
                run: b.run,
                kind: b.kind,
                always: false,
                windowed: true,
                generic: b.name == "password-assignment",
            });
        }
        let checks: Vec<Check> = detectors.iter().map(|d| d.check).collect();
        let (scanner, anchors) = build_scanner(&keywords, &preferred, &checks)?;
        let mut first_byte = vec![Vec::new(); 256];
        for (ki, kw) in keywords.iter().enumerate() {
            let Some(&c) = kw.bytes.first() else {
                continue;
            };
            let mut cases = vec![c];
            if kw.ci && c.to_ascii_uppercase() != c {
                cases.push(c.to_ascii_uppercase());
            }
            for c in cases {
                if let Some(list) = first_byte.get_mut(usize::from(c)) {
                    list.push(ki);
                }
            }
        }
        let longest_keyword = keywords.iter().map(|k| k.bytes.len()).max().unwrap_or(0);
        let any_always = detectors.iter().any(|d| d.always);
        Ok(Self {
            inner: Arc::new(Inner {
                detectors,
                keywords,
                scanner,
                anchors,
                first_byte,
                longest_keyword,
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
        // One pass over the caller's bytes as a stream's last chunk: what
        // `push` + `flush` give (the property tests compare them), without
        // copying the text into a stream buffer first.
        self.stream().scan(text, 0, true).0
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
            scratch: Scratch::default(),
        }
    }
}

/// Per-stream buffers reused from one chunk to the next, so that a chunk
/// allocates nothing but its output.
#[derive(Default)]
struct Scratch {
    /// Per detector: buffer positions of its keywords, ascending.
    hits: Vec<Vec<usize>>,
    /// Per detector: index of the first hit the scan has not passed.
    cursor: Vec<usize>,
    triggered: Vec<bool>,
    /// Per detector: its next match at or after the scan position, once
    /// searched (`Some(None)`: no further match).
    cache: Vec<Option<Option<Found>>>,
    /// Per detector: capture slots, made on its first match.
    locs: Vec<Option<CaptureLocations>>,
}

impl Scratch {
    fn reset(&mut self, n: usize) {
        self.hits.resize_with(n, Vec::new);
        for h in &mut self.hits {
            h.clear();
        }
        self.cursor.clear();
        self.cursor.resize(n, 0);
        self.triggered.clear();
        self.triggered.resize(n, false);
        self.cache.clear();
        self.cache.resize(n, None);
        self.locs.resize_with(n, || None);
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
    scratch: Scratch,
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

/// A byte `\b` counts as part of a word (ASCII: the built-ins are compiled
/// without Unicode).
fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

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
        hits: &[Vec<usize>],
        f: Found,
        generic: &'a Detector,
        locs: &mut [Option<CaptureLocations>],
    ) -> &'a Detector {
        let hay = buf.get(..f.mask_end).unwrap_or_default();
        for (((d, t), l), h) in self.detectors.iter().zip(triggered).zip(locs).zip(hits) {
            if d.generic || d.kind != Kind::Plain || !*t {
                continue;
            }
            // A built-in's match at the value's start holds one of its
            // keywords within `lead` bytes of it: without one, no regex.
            if d.windowed {
                let first = h.partition_point(|&k| k < f.mask_start);
                if h.get(first).is_none_or(|&k| k > f.mask_start + d.lead) {
                    continue;
                }
            }
            let found = match &d.anchored {
                Some(re) => Self::find_anchored(d, re, hay, f.mask_start, hay.len(), l),
                None => self.find(d, hay, f.mask_start, l),
            };
            if let Some(g) = found
                && g.start == f.mask_start
                && g.end == f.mask_end
            {
                return d;
            }
        }
        generic
    }

    /// First match of detector `d` starting at or after `from`.
    fn find(
        &self,
        d: &Detector,
        hay: &[u8],
        from: usize,
        locs: &mut Option<CaptureLocations>,
    ) -> Option<Found> {
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
            let (mut ms, mut me) = (m.start(), m.end());
            if d.groups
                && let Some((s, e)) = d.resolve.and_then(|g| g.span(hay.get(m.start()..m.end())?))
            {
                (ms, me) = (m.start() + s, m.start() + e);
            } else if d.groups {
                // Resolve groups on the match plus the few bytes before it
                // that a look-behind (`\b`, `(?m)^`, a Unicode `\b` decoding
                // one UTF-8 char) can see: the engines that track groups
                // cost in proportion to the haystack they are given.
                let base = m.start().saturating_sub(4);
                let locs = locs.get_or_insert_with(|| d.regex.capture_locations());
                let span = hay.get(base..m.end()).unwrap_or_default();
                if d.regex
                    .captures_read_at(locs, span, m.start() - base)
                    .is_some()
                {
                    for g in 1..locs.len() {
                        if let Some((s, e)) = locs.get(g) {
                            (ms, me) = (base + s, base + e);
                            break;
                        }
                    }
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

    /// The match of `d` that starts exactly at `k`, looking no further than
    /// `end`, through its anchored regex `re`.
    fn find_anchored(
        d: &Detector,
        re: &Regex,
        buf: &[u8],
        k: usize,
        end: usize,
        locs: &mut Option<CaptureLocations>,
    ) -> Option<Found> {
        if d.word_start && k > 0 && buf.get(k - 1).is_some_and(|&b| is_word_byte(b)) {
            return None; // the leading `\b` fails
        }
        let hay = buf.get(k..end)?;
        let len = if d.shape == Shape::Regex {
            let m = re.find(hay)?;
            if m.start() != 0 {
                return None;
            }
            m.end()
        } else {
            d.shape.len(hay)?
        };
        if len == 0 {
            return None;
        }
        let (mut ms, mut me) = (0, len);
        if d.groups {
            let span = hay.get(..len)?;
            if let Some((s, e)) = d.resolve.and_then(|g| g.span(span)) {
                (ms, me) = (s, e);
            } else {
                let locs = locs.get_or_insert_with(|| re.capture_locations());
                re.captures_read(locs, span);
                if locs.get(0).is_some() {
                    for g in 1..locs.len() {
                        if let Some((s, e)) = locs.get(g) {
                            (ms, me) = (s, e);
                            break;
                        }
                    }
                }
            }
        }
        Some(Found {
            start: k,
            end: k + len,
            mask_start: k + ms,
            mask_end: k + me,
        })
    }

    /// First match of built-in `d` starting at or after `p`, with its regex
    /// run only on windows around its keyword hits (`hits`, ascending;
    /// `cursor` skips those already behind the scan).
    ///
    /// Why this equals a search of the whole buffer: every match of `d`
    /// contains a keyword hit `k` with `start <= k <= start + lead` and is
    /// at most `max_len` long (the invariant in `detectors.rs`), so the
    /// leftmost match at or after `p` starts in `[k - lead, k]` for some hit
    /// and ends before `k + max_len`, inside the window. Cutting the
    /// haystack at the window's end only changes what happens at that end
    /// (`$`, a trailing `\b`): a match ending exactly there is searched
    /// again without the cut.
    fn find_windowed(
        &self,
        d: &Detector,
        buf: &[u8],
        p: usize,
        hits: &[usize],
        cursor: &mut usize,
        locs: &mut Option<CaptureLocations>,
    ) -> Option<Found> {
        while let Some(&k) = hits.get(*cursor) {
            if k < p {
                *cursor += 1;
                continue;
            }
            let end = (k + d.max_len + SLACK).min(buf.len());
            if let Some(re) = &d.anchored {
                // `lead` 0: a match starts exactly at its keyword.
                let found = match Self::find_anchored(d, re, buf, k, end, locs) {
                    Some(f) if f.end == end && end < buf.len() => {
                        Self::find_anchored(d, re, buf, k, buf.len(), locs)
                    }
                    other => other,
                };
                if found.is_some() {
                    return found;
                }
                *cursor += 1;
                continue;
            }
            let from = k.saturating_sub(d.lead).max(p);
            let hay = buf.get(..end).unwrap_or_default();
            match self.find(d, hay, from, locs) {
                Some(f) if f.end == end && end < buf.len() => {
                    return self.find(d, buf, from, locs);
                }
                Some(f) if f.start <= k => return Some(f),
                // Nothing starts at or before this keyword: a match after
                // it belongs to a later keyword and its own window.
                _ => *cursor += 1,
            }
        }
        None
    }

    /// How much a keyword at `k` in the pending bytes forces to be held
    /// back: from `lead` before it when its match could still grow with the
    /// next read.
    fn hold_for(&self, buf: &[u8], ctx: usize, k: usize, kw: &Keyword, hold: &mut usize) {
        let Some(d) = self.detectors.get(kw.detector) else {
            return;
        };
        let len = buf.len();
        if k + d.max_len + SLACK <= len {
            return; // any match around k lies within known bytes
        }
        let after = k + kw.bytes.len();
        let run_end = buf
            .get(after..)
            .unwrap_or_default()
            .iter()
            .position(|&b| !d.run.contains(b))
            .map_or(len, |p| after + p);
        if run_end + SLACK > len {
            *hold = (*hold).min(k.saturating_sub(d.lead).max(ctx));
        }
    }

    /// Find every keyword in the pending bytes `buf[ctx..]` (through the
    /// anchor scan), record it per detector in `hits` and, unless `last`,
    /// lower `hold` for keywords whose match may continue in the next read.
    fn scan_anchors(
        &self,
        buf: &[u8],
        ctx: usize,
        last: bool,
        hits: &mut [Vec<usize>],
        hold: &mut usize,
    ) {
        let Some(scanner) = &self.scanner else {
            return;
        };
        let pending = buf.get(ctx..).unwrap_or_default();
        let mut on_anchor = |pattern: usize, at: usize| {
            let Some(groups) = self.anchors.get(pattern) else {
                return;
            };
            let at = ctx + at;
            for g in groups {
                // A keyword whose match cannot exist triggers nothing and
                // holds nothing back (`secrets are not printed`, a URL
                // without `user:pw@`): tested once for the whole group,
                // before any keyword is compared.
                let rejected = || {
                    let after = buf.get(at + g.after..).unwrap_or_default();
                    g.check.verdict(after, last) == Verdict::Reject
                };
                if g.check_first && rejected() {
                    continue;
                }
                let mut checked = g.check_first || g.check == Check::None;
                for u in &g.uses {
                    // Keywords start in the pending bytes (as the
                    // whole-text scan sees them): a keyword cut by an
                    // earlier read was held back whole, unless a flush
                    // released it.
                    let Some(k) = at.checked_sub(u.offset).filter(|&k| k >= ctx) else {
                        continue;
                    };
                    let Some(kw) = self.keywords.get(u.keyword) else {
                        continue;
                    };
                    if !u.matches_at(kw, buf, k) {
                        continue;
                    }
                    if !checked {
                        if rejected() {
                            break;
                        }
                        checked = true;
                    }
                    if let Some(h) = hits.get_mut(kw.detector) {
                        h.push(k);
                    }
                    if !last {
                        self.hold_for(buf, ctx, k, kw, hold);
                    }
                }
            }
        };
        match scanner {
            Scanner::Packed(s) => {
                let mut at = 0;
                while at < pending.len() {
                    let span = aho_corasick::Span::from(at..pending.len());
                    let Some(m) = s.find_in(pending, span) else {
                        break;
                    };
                    on_anchor(m.pattern().as_usize(), m.start());
                    at = m.start() + 1;
                }
            }
            Scanner::Dfa(ac) => {
                for m in ac.find_overlapping_iter(pending) {
                    on_anchor(m.pattern().as_usize(), m.start());
                }
            }
        }
    }

    /// Lower `hold` to the start of a keyword cut by the chunk's end (`gh`
    /// of `ghp_`, `postgr` of `postgres://`).
    fn hold_partial_keyword(&self, buf: &[u8], ctx: usize, hold: &mut usize) {
        let len = buf.len();
        let from = len
            .saturating_sub(self.longest_keyword.saturating_sub(1))
            .max(ctx);
        for q in from..len {
            let tail = buf.get(q..).unwrap_or_default();
            let Some(list) = tail
                .first()
                .and_then(|&b| self.first_byte.get(usize::from(b)))
            else {
                continue;
            };
            for &ki in list {
                let Some(kw) = self.keywords.get(ki) else {
                    continue;
                };
                if tail.len() < kw.bytes.len()
                    && kw
                        .bytes
                        .get(..tail.len())
                        .is_some_and(|prefix| Keyword::matches_as(kw.ci, tail, prefix))
                {
                    let lead = self.detectors.get(kw.detector).map_or(0, |d| d.lead);
                    *hold = (*hold).min(q.saturating_sub(lead).max(ctx));
                }
            }
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
        let buf = std::mem::take(&mut self.buf);
        let ctx = self.ctx;
        let (out, emitted) = self.scan(&buf, ctx, last);
        // Keep a little context before the pending bytes.
        let keep_from = emitted.saturating_sub(CONTEXT);
        self.base += (emitted - ctx) as u64;
        self.ctx = emitted - keep_from;
        self.buf = buf;
        self.buf.drain(..keep_from);
        out
    }

    /// Mask `buf[ctx..]` (`buf[..ctx]` is emitted context): the output and
    /// how far into `buf` it reaches. [`Masker::mask`] calls it on the
    /// caller's text directly, sparing a copy into the stream buffer.
    fn scan(&mut self, buf: &[u8], ctx: usize, last: bool) -> (Masked, usize) {
        let inner = Arc::clone(&self.inner);
        let mut sc = std::mem::take(&mut self.scratch);
        let len = buf.len();
        let mut out = Masked {
            bytes: Vec::with_capacity(len - ctx),
            hits: Vec::new(),
        };
        sc.reset(inner.detectors.len());

        // Keyword hits in the pending bytes decide which detectors run,
        // where, and how much must be held back.
        let mut hold = len;
        inner.scan_anchors(buf, ctx, last, &mut sc.hits, &mut hold);
        for ((t, h), d) in sc
            .triggered
            .iter_mut()
            .zip(&mut sc.hits)
            .zip(&inner.detectors)
        {
            // Anchors sit at different offsets in a detector's keywords,
            // so its hits can come slightly out of order.
            if !h.is_sorted() {
                h.sort_unstable();
            }
            *t = d.always || !h.is_empty();
        }
        if !last {
            inner.hold_partial_keyword(buf, ctx, &mut hold);
            if inner.any_always {
                let pending = buf.get(ctx..).unwrap_or_default();
                let line_start = pending
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(ctx, |p| ctx + p + 1);
                hold = hold.min(line_start.max(len.saturating_sub(CUSTOM_MAX)).max(ctx));
            }
        }

        // The scan: leftmost match over the triggered detectors.
        let mut p = ctx;
        let mut waiting_in_pem = false;
        loop {
            if self.in_pem {
                match pem_consume(buf, p, last) {
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
                if !sc.triggered.get(i).copied().unwrap_or(false) {
                    continue;
                }
                let (Some(slot), Some(locs)) = (sc.cache.get_mut(i), sc.locs.get_mut(i)) else {
                    continue;
                };
                let stale = match slot {
                    None => true,
                    Some(Some(f)) => f.start < p,
                    Some(None) => false,
                };
                if stale {
                    *slot = Some(if d.windowed {
                        let (Some(hits), Some(cursor)) = (sc.hits.get(i), sc.cursor.get_mut(i))
                        else {
                            continue;
                        };
                        inner.find_windowed(d, buf, p, hits, cursor, locs)
                    } else {
                        inner.find(d, buf, p, locs)
                    });
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
                d = inner.specific_name(buf, &sc.triggered, &sc.hits, f, d, &mut sc.locs);
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

        self.scratch = sc;
        (out, emitted)
    }
}

#[cfg(test)]
mod tests;
