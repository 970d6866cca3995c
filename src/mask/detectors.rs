//! The built-in secret detectors: stable names, the regex each one runs, the
//! literal keywords the aho-corasick prefilter looks for, and the bounds the
//! streaming masker relies on (how far before its keyword a match may start,
//! how long it may be, which bytes may follow the keyword inside a match).
//!
//! Invariant every detector keeps (the streaming masker's correctness rests on
//! it): each match contains one of the detector's keywords (ASCII
//! case-insensitively) starting at most `lead` bytes after the match start,
//! the bytes between the end of that keyword and the end of the match (except
//! one trailing delimiter) are all in `run`, and the match is at most
//! `max_len` bytes long.
//!
//! Three hand-written shortcuts keep the regexes off the hot path (issue 5,
//! benchmark goals), each compared with the regex by the tests: a [`Check`]
//! that rejects a keyword whose match cannot exist from the bytes right
//! after it (`secrets are not printed`, a URL without `user:pw@`); a
//! [`Shape`], a hand matcher that replaces the lazy DFA for the detectors
//! of a fixed shape (and for password-assignment); and [`Groups`], which
//! reads the masked value off a match instead of asking a capture engine.
//! The regex stays the definition: custom rules, the detectors without a
//! shape, and the reference the tests compare with use it.

/// Which bytes may follow a keyword inside a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Run {
    /// `[A-Za-z0-9_.+/=-]`: tokens, base64, JWT segments.
    Token,
    /// Anything but ASCII whitespace.
    NonSpace,
    /// Anything but CR and LF.
    Line,
    /// Any byte (custom rules: nothing is known).
    Any,
}

impl Run {
    pub(crate) fn contains(self, b: u8) -> bool {
        match self {
            Run::Token => {
                b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'/' | b'=' | b'-')
            }
            Run::NonSpace => !b.is_ascii_whitespace(),
            Run::Line => b != b'\r' && b != b'\n',
            Run::Any => true,
        }
    }
}

/// What happens after a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Mask the match (or its first participating capture group).
    Plain,
    /// A PEM private-key header: mask it and swallow the block body that
    /// follows, however long, until the END line.
    PemHeader,
}

/// A necessary condition on the bytes right after a keyword, tested before
/// any regex runs: `Reject` means no match of the detector contains that
/// keyword occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// Nothing cheap to test.
    None,
    /// `["']?[ \t]{0,4}[:=]` right after the keyword or, with `suffixes`,
    /// after one of password-assignment's `[_-]?(key|id|value|secret|token)`.
    Assignment { suffixes: bool },
    /// `user:password@` right after a URL scheme's `://`.
    UserInfo,
}

/// What a [`Check`] concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// No match can contain this keyword occurrence.
    Reject,
    /// A match may exist (or the bytes to decide have not arrived yet).
    Maybe,
}

/// Byte classes for [`Check::UserInfo`] and the bare password value, one
/// table lookup per byte.
const OTHER: u8 = 0;
/// Ends a userinfo part: ASCII whitespace, `/`, `@`, `"`, `'`.
const STOP: u8 = 4;
/// Cannot start a bare password value: `[\s"'$;&|,<>(){}\[\]`]`.
const NOT_FIRST: u8 = 8;
/// Cannot continue a bare password value: `[\s"';&|,<>`]`.
const NOT_REST: u8 = 16;

const CLASSES: [u8; 256] = {
    let mut t = [OTHER; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let space = matches!(c, b' ' | b'\t'..=b'\r');
        if space || matches!(c, b'/' | b'@' | b'"' | b'\'') {
            t[b] |= STOP;
        }
        if space
            || matches!(
                c,
                b'"' | b'\''
                    | b'$'
                    | b';'
                    | b'&'
                    | b'|'
                    | b','
                    | b'<'
                    | b'>'
                    | b'('
                    | b')'
                    | b'{'
                    | b'}'
                    | b'['
                    | b']'
                    | b'`'
            )
        {
            t[b] |= NOT_FIRST;
        }
        if space
            || matches!(
                c,
                b'"' | b'\'' | b';' | b'&' | b'|' | b',' | b'<' | b'>' | b'`'
            )
        {
            t[b] |= NOT_REST;
        }
        b += 1;
    }
    t
};

fn class(b: u8) -> u8 {
    CLASSES.get(usize::from(b)).copied().unwrap_or(OTHER)
}

impl Check {
    /// Test the bytes `after` a keyword; `last`: nothing follows them.
    pub(crate) fn verdict(self, after: &[u8], last: bool) -> Verdict {
        let short = if last {
            Verdict::Reject
        } else {
            Verdict::Maybe
        };
        match self {
            Check::None => Verdict::Maybe,
            Check::Assignment { suffixes } => {
                // Longest prefix that decides: `-secret"    =`.
                if after.len() < 14 && !last {
                    return Verdict::Maybe;
                }
                if separator_at(after, 0) {
                    return Verdict::Maybe;
                }
                if suffixes {
                    // The suffix words differ in their first letter, so at
                    // most one of them follows (after an optional `_`/`-`).
                    let skip = usize::from(matches!(after.first(), Some(b'_' | b'-')));
                    let w: &[u8] = match after.get(skip).map(u8::to_ascii_lowercase) {
                        Some(b'k') => b"key",
                        Some(b'i') => b"id",
                        Some(b'v') => b"value",
                        Some(b's') => b"secret",
                        Some(b't') => b"token",
                        _ => return Verdict::Reject,
                    };
                    if after
                        .get(skip..skip + w.len())
                        .is_some_and(|t| t.eq_ignore_ascii_case(w))
                        && separator_at(after, skip + w.len())
                    {
                        return Verdict::Maybe;
                    }
                }
                Verdict::Reject
            }
            Check::UserInfo => {
                // `[^\s:/@"']{1,128}:([^\s@/"']{1,256})@`
                let mut i = 0;
                for (part, end, max) in [(0, b':', 128), (1, b'@', 256)] {
                    let from = i;
                    loop {
                        let Some(&b) = after.get(i) else {
                            return short;
                        };
                        if b == end && i > from {
                            i += 1;
                            break;
                        }
                        if class(b) & STOP != 0 || (part == 0 && b == b':') || i - from >= max {
                            return Verdict::Reject;
                        }
                        i += 1;
                    }
                }
                Verdict::Maybe
            }
        }
    }
}

/// Does `["']?[ \t]{0,4}[:=]` match at `after[i..]`? The quote is taken
/// when there (nothing else could follow in its place) and then every
/// blank (a fifth one cannot be the separator).
fn separator_at(after: &[u8], mut i: usize) -> bool {
    if matches!(after.get(i), Some(b'"' | b'\'')) {
        i += 1;
    }
    let blanks = after
        .get(i..)
        .unwrap_or_default()
        .iter()
        .take(5)
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    blanks <= 4 && matches!(after.get(i + blanks), Some(b':' | b'='))
}

/// How the masked value (the regex's first participating group) is read
/// off a whole match `t`, without a capture engine. Each rule follows from
/// the shape of the detector's regex, noted at each arm; the tests compare
/// it with the regex's own groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Groups {
    /// No groups: the whole match is masked.
    None,
    /// password-assignment: a `"..."` or `'...'` value, an `Authorization:`
    /// credential, or a bare value after the separator.
    Assignment,
    /// connection-string-password: between the userinfo's `:` and the `@`.
    UserInfo,
    /// aws-secret-access-key: the 40 bytes before the trailing delimiter.
    Last40,
    /// gcp-service-account-key: from `-----BEGIN` to before the closing `"`.
    PemString,
}

impl Groups {
    /// The masked span inside match `t` (relative to its start); `None`
    /// when `t` does not have the expected shape (the caller then asks the
    /// regex).
    pub(crate) fn span(self, t: &[u8]) -> Option<(usize, usize)> {
        let n = t.len();
        match self {
            Groups::None => Some((0, n)),
            Groups::Assignment => {
                match t.last()? {
                    // Only the `"..."` value ends with `"` (the others
                    // exclude quotes) and holds none inside, so its
                    // opening quote is the last one before the end.
                    q @ (b'"' | b'\'') => {
                        let body = t.get(..n - 1)?;
                        let open = body.iter().rposition(|b| b == q)?;
                        Some((open + 1, n - 1))
                    }
                    _ => {
                        let auth = b"authorization";
                        if t.get(..auth.len())
                            .is_some_and(|h| h.eq_ignore_ascii_case(auth))
                        {
                            // `...[ \t]{1,4}([^\s"']{8,512})`: after the
                            // last blank.
                            let sp = t.iter().rposition(|&b| b == b' ' || b == b'\t')?;
                            Some((sp + 1, n))
                        } else {
                            // The key part holds no `:`/`=`, so the first
                            // is the separator; the value cannot start with
                            // a blank, so the greedy `[ \t]{0,4}` takes all.
                            let sep = t.iter().position(|&b| b == b':' || b == b'=')?;
                            let rest = t.get(sep + 1..)?;
                            let blanks = rest.iter().take_while(|&&b| b == b' ' || b == b'\t');
                            Some((sep + 1 + blanks.count(), n))
                        }
                    }
                }
            }
            Groups::UserInfo => {
                // The scheme has no `:`, so the first `:` is in `://`; the
                // user part has none, so the next one ends it.
                let scheme = t.iter().position(|&b| b == b':')?;
                let after = scheme + 3;
                let colon = t.get(after..)?.iter().position(|&b| b == b':')? + after;
                (t.last() == Some(&b'@')).then_some((colon + 1, n - 1))
            }
            Groups::Last40 => {
                let last = *t.last()?;
                let value = |b: u8| b.is_ascii_alphanumeric() || b == b'/' || b == b'+';
                // Either the delimiter after the value, or `$`.
                let end = if value(last) { n } else { n - 1 };
                Some((end.checked_sub(40)?, end))
            }
            Groups::PemString => {
                // The `"private_key": "` prefix holds no `-`.
                let start = t.iter().position(|&b| b == b'-')?;
                (t.last() == Some(&b'"')).then_some((start, n - 1))
            }
        }
    }
}

/// A hand-written matcher for a fixed-shape detector: the length of the
/// match of its regex anchored at the start of `hay` (after the leading
/// `\b`, which the caller checks), or `None`. Each arm mirrors the regex
/// quoted at it, leftmost-first and greedy as the regex engine is; a
/// property test compares them on random text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// No hand matcher: the lazy DFA runs.
    Regex,
    AwsKeyId,
    GitHub,
    GitLab,
    SlackToken,
    Stripe,
    GcpApiKey,
    Jwt,
    PemHeader,
    Assignment,
}

fn blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `\s` without Unicode: `[\t\n\v\f\r ]`.
fn space(b: u8) -> bool {
    matches!(b, b' ' | b'\t'..=b'\r')
}

/// ASCII case-insensitive `lit` at `hay[i..]`.
fn lit_at(hay: &[u8], i: usize, lit: &[u8]) -> bool {
    hay.get(i..i + lit.len())
        .is_some_and(|t| t.eq_ignore_ascii_case(lit))
}

/// Length of password-assignment's key alternation at the start of `hay`:
/// `passwd|password|passphrase|secret|token|api[_-]?key|apikey|
/// access[_-]?key|auth[_-]?key|private[_-]?key`. The alternatives that
/// match at one place all have the same length, so which one the regex
/// takes does not matter.
fn assignment_key(hay: &[u8]) -> Option<usize> {
    for w in [
        &b"passwd"[..],
        b"password",
        b"passphrase",
        b"secret",
        b"token",
    ] {
        if lit_at(hay, 0, w) {
            return Some(w.len());
        }
    }
    for w in [&b"api"[..], b"access", b"auth", b"private"] {
        if lit_at(hay, 0, w) {
            let dash = usize::from(matches!(hay.get(w.len()), Some(b'_' | b'-')));
            if lit_at(hay, w.len() + dash, b"key") {
                return Some(w.len() + dash + 3);
            }
        }
    }
    None
}

/// Greedy `[ \t]{0,max}` at `i` followed by something that cannot be a
/// blank: every blank is taken, and more than `max` means no match.
fn blanks(hay: &[u8], i: usize, max: usize) -> Option<usize> {
    let n = run(hay, i, max + 1, blank);
    (n <= max).then_some(i + n)
}

/// `"([^"\r\n]{1,256})"|'([^'\r\n]{1,256})'|([^\s"'$;&|,<>(){}\[\]`][^\s"';&|,<>`]{0,255})`
/// at `v`: the end of the value. The quoted bodies exclude their quote,
/// so the run to it is the only way; a failed quoted value leaves the
/// bare one nothing (it cannot start with a quote).
fn assignment_value(hay: &[u8], v: usize) -> Option<usize> {
    match hay.get(v).copied()? {
        q @ (b'"' | b'\'') => {
            let n = run(hay, v + 1, usize::MAX, |b| {
                b != q && b != b'\r' && b != b'\n'
            });
            ((1..=256).contains(&n) && hay.get(v + 1 + n) == Some(&q)).then_some(v + n + 2)
        }
        c if class(c) & NOT_FIRST != 0 => None,
        _ => Some(v + 1 + run(hay, v + 1, 255, |b| class(b) & NOT_REST == 0)),
    }
}

/// The key part's tail from `i`: `["']?[ \t]{0,4}[:=][ \t]{0,4}` then
/// the value.
fn assignment_rest(hay: &[u8], mut i: usize) -> Option<usize> {
    if matches!(hay.get(i), Some(b'"' | b'\'')) {
        i += 1;
    }
    let i = blanks(hay, i, 4)?;
    if !matches!(hay.get(i), Some(b':' | b'=')) {
        return None;
    }
    let v = blanks(hay, i + 1, 4)?;
    assignment_value(hay, v)
}

/// Length of the run of `class` bytes at `hay[from..]`, at most `max`.
fn run(hay: &[u8], from: usize, max: usize, class: impl Fn(u8) -> bool) -> usize {
    let rest = hay.get(from..).unwrap_or_default();
    let rest = rest.get(..max.min(rest.len())).unwrap_or_default();
    rest.iter().position(|&b| !class(b)).unwrap_or(rest.len())
}

fn upper_digit(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit()
}

fn alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

fn word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

fn alnum_dash(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

/// `[min,max]` bytes of `class` after a `prefix` of `p` bytes, greedy and
/// with nothing required after: the match is as long as the run allows.
fn prefix_run(
    hay: &[u8],
    p: usize,
    min: usize,
    max: usize,
    class: impl Fn(u8) -> bool,
) -> Option<usize> {
    let n = run(hay, p, max, class);
    (n >= min).then_some(p + n)
}

impl Shape {
    pub(crate) fn len(self, hay: &[u8]) -> Option<usize> {
        let at = |i: usize| hay.get(i).copied();
        let starts = |lit: &[u8]| hay.starts_with(lit);
        match self {
            Shape::Regex => None,
            // `(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}\b`: fixed
            // length, so the byte after must not be a word byte.
            Shape::AwsKeyId => {
                let ok = [&b"AKIA"[..], b"ASIA", b"ABIA", b"ACCA"]
                    .iter()
                    .any(|l| starts(l))
                    || (starts(b"A3T") && at(3).is_some_and(upper_digit));
                (ok && run(hay, 4, 16, upper_digit) == 16 && !at(20).is_some_and(word))
                    .then_some(20)
            }
            // `gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,251}`
            Shape::GitHub => {
                if starts(b"github_pat_") {
                    prefix_run(hay, 11, 22, 251, word)
                } else if starts(b"gh")
                    && at(2).is_some_and(|b| b"pousr".contains(&b))
                    && at(3) == Some(b'_')
                {
                    prefix_run(hay, 4, 36, 251, alnum)
                } else {
                    None
                }
            }
            // `glpat-[A-Za-z0-9_-]{20,64}`
            Shape::GitLab => starts(b"glpat-").then(|| prefix_run(hay, 6, 20, 64, b64url))?,
            // `xox[abposr]-[A-Za-z0-9-]{10,250}`
            Shape::SlackToken => (starts(b"xox")
                && at(3).is_some_and(|b| b"abposr".contains(&b))
                && at(4) == Some(b'-'))
            .then(|| prefix_run(hay, 5, 10, 250, alnum_dash))?,
            // `(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,247}`
            Shape::Stripe => ([&b"sk_live_"[..], b"sk_test_", b"rk_live_", b"rk_test_"]
                .iter()
                .any(|l| starts(l)))
            .then(|| prefix_run(hay, 8, 16, 247, alnum))?,
            // `AIza[0-9A-Za-z_-]{35}`
            Shape::GcpApiKey => starts(b"AIza").then(|| prefix_run(hay, 4, 35, 35, b64url))?,
            // `eyJ[A-Za-z0-9_-]{8,4096}\.eyJ[A-Za-z0-9_-]{8,8192}\.[A-Za-z0-9_-]{0,2048}`:
            // `.` is outside the class, so each run must end at its `.`
            // (a longer run cannot give back bytes to make one appear).
            Shape::Jwt => {
                if !starts(b"eyJ") {
                    return None;
                }
                let a = run(hay, 3, usize::MAX, b64url);
                let i = 3 + a;
                if !(8..=4096).contains(&a) || at(i) != Some(b'.') {
                    return None;
                }
                if hay.get(i + 1..i + 4) != Some(&b"eyJ"[..]) {
                    return None;
                }
                let b = run(hay, i + 4, usize::MAX, b64url);
                let j = i + 4 + b;
                if !(8..=8192).contains(&b) || at(j) != Some(b'.') {
                    return None;
                }
                Some(j + 1 + run(hay, j + 1, 2048, b64url))
            }
            // password-assignment, branch one: key, then the optional
            // `[_-]?(?:key|id|value|secret|token)` tried first, then
            // without it; branch two: `authorization[ \t]{0,4}:[ \t]{0,4}
            // (?:bearer|basic|token)[ \t]{1,4}([^\s"']{8,512})` (no key of
            // branch one starts `authorization`).
            Shape::Assignment => {
                if let Some(key) = assignment_key(hay) {
                    let dash = usize::from(matches!(hay.get(key), Some(b'_' | b'-')));
                    for w in [&b"key"[..], b"id", b"value", b"secret", b"token"] {
                        if lit_at(hay, key + dash, w) {
                            if let Some(end) = assignment_rest(hay, key + dash + w.len()) {
                                return Some(end);
                            }
                            break;
                        }
                    }
                    return assignment_rest(hay, key);
                }
                if !lit_at(hay, 0, b"authorization") {
                    return None;
                }
                let i = blanks(hay, 13, 4)?;
                if hay.get(i) != Some(&b':') {
                    return None;
                }
                let i = blanks(hay, i + 1, 4)?;
                let scheme = [&b"bearer"[..], b"basic", b"token"]
                    .into_iter()
                    .find(|w| lit_at(hay, i, w))?;
                let v = blanks(hay, i + scheme.len(), 4)?;
                if v == i + scheme.len() {
                    return None; // `[ \t]{1,4}`
                }
                let n = run(hay, v, 512, |b| !space(b) && b != b'"' && b != b'\'');
                (n >= 8).then_some(v + n)
            }
            // `-----BEGIN[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----`: the
            // greedy run gives back bytes until the rest matches.
            Shape::PemHeader => {
                if !starts(b"-----BEGIN") {
                    return None;
                }
                let class = |b: u8| b == b' ' || upper_digit(b);
                let n = run(hay, 10, 40, class);
                (0..=n).rev().find_map(|i| {
                    let rest = hay.get(10 + i..)?;
                    let rest = rest.strip_prefix(b"PRIVATE KEY")?;
                    let used = 10 + i + 11;
                    if rest.starts_with(b" BLOCK-----") {
                        Some(used + 11)
                    } else if rest.starts_with(b"-----") {
                        Some(used + 5)
                    } else {
                        None
                    }
                })
            }
        }
    }
}

/// A built-in detector's static description.
pub(crate) struct Builtin {
    pub name: &'static str,
    pub regex: &'static str,
    /// Exact case unless `ci` (then lowercase).
    pub keywords: &'static [&'static str],
    /// Keywords match ASCII case-insensitively (the regex is `(?i)` there).
    pub ci: bool,
    /// Three-byte anchors the fast scan looks for: each keyword is found
    /// through the first of these it contains (its first three bytes when
    /// it contains none). Chosen so that the scan looks for few, rare
    /// three-byte strings: `://` instead of 21 URL schemes, `key` for the
    /// twelve `*_key` spellings.
    pub anchors: &'static [&'static str],
    pub lead: usize,
    pub max_len: usize,
    pub run: Run,
    pub kind: Kind,
    pub check: Check,
    pub groups: Groups,
    pub shape: Shape,
}

const CONN_SCHEMES: &[&str] = &[
    "postgres://",
    "postgresql://",
    "mysql://",
    "mariadb://",
    "mongodb://",
    "mongodb+srv://",
    "redis://",
    "rediss://",
    "amqp://",
    "amqps://",
    "mssql://",
    "sqlserver://",
    "clickhouse://",
    "http://",
    "https://",
    "ftp://",
    "sftp://",
    "smtp://",
    "ldap://",
    "ldaps://",
    "nats://",
];

/// All built-in detectors, in priority order (when two matches start at the
/// same byte, the earlier detector wins).
pub(crate) const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "private-key",
        regex: r"-----BEGIN[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----",
        keywords: &["-----BEGIN"],
        ci: false,
        // `---` is common (tables, separators); `-BE` is not.
        anchors: &["-BE"],
        lead: 0,
        max_len: 80,
        run: Run::Line,
        kind: Kind::PemHeader,
        check: Check::None,
        groups: Groups::None,
        shape: Shape::PemHeader,
    },
    Builtin {
        name: "gcp-service-account-key",
        regex: r#""private_key"[ \t]{0,4}:[ \t]{0,4}"(-----BEGIN[^"\r\n]{0,8192})""#,
        keywords: &["\"private_key\""],
        ci: false,
        // Shares the `key` anchor of password-assignment: one group fewer
        // for the SIMD scan.
        anchors: &["key"],
        lead: 0,
        max_len: 8250,
        run: Run::Line,
        kind: Kind::Plain,
        check: Check::Assignment { suffixes: false },
        groups: Groups::PemString,
        shape: Shape::Regex,
    },
    Builtin {
        name: "aws-access-key-id",
        regex: r"\b(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}\b",
        keywords: &["AKIA", "ASIA", "ABIA", "ACCA", "A3T"],
        ci: false,
        anchors: &[],
        lead: 0,
        max_len: 20,
        run: Run::Token,
        kind: Kind::Plain,
        check: Check::None,
        groups: Groups::None,
        shape: Shape::AwsKeyId,
    },
    Builtin {
        name: "aws-secret-access-key",
        regex: r#"(?i:aws[_-]?)?(?i:secret_access_key|secret-access-key|secretaccesskey)["']?[ \t]{0,4}[:=][ \t]{0,4}["']?([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)"#,
        keywords: &["secret_access_key", "secret-access-key", "secretaccesskey"],
        ci: true,
        // `ecr` rather than `sec`: `second`, `security`, `section` are
        // common words, `secret` is not the only one starting so.
        anchors: &["ecr"],
        lead: 4,
        max_len: 80,
        run: Run::Line,
        kind: Kind::Plain,
        check: Check::Assignment { suffixes: false },
        groups: Groups::Last40,
        shape: Shape::Regex,
    },
    Builtin {
        name: "github-token",
        regex: r"\b(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,251})",
        keywords: &["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"],
        ci: false,
        // `b_p` for `github_pat_`: `git` is in every other command line.
        anchors: &["b_p", "ghp", "gho", "ghu", "ghs", "ghr"],
        lead: 0,
        max_len: 262,
        run: Run::Token,
        kind: Kind::Plain,
        check: Check::None,
        groups: Groups::None,
        shape: Shape::GitHub,
    },
    Builtin {
        name: "gitlab-token",
        regex: r"\bglpat-[A-Za-z0-9_-]{20,64}",
        keywords: &["glpat-"],
        ci: false,
        anchors: &[],
        lead: 0,
        max_len: 70,
        run: Run::Token,
        kind: Kind::Plain,
        check: Check::None,
        groups: Groups::None,
        shape: Shape::GitLab,
    },
    Builtin {
        name: "slack-token",
        regex: r"\bxox[abposr]-[A-Za-z0-9-]{10,250}",
        keywords: &["xox"],
        ci: false,
        anchors: &[],
        lead: 0,
        max_len: 260,
        run: Run::Token,
        kind: Kind::Plain,
        check: Check::None,
        groups: Groups::None,
        shape: Shape::SlackToken,
    },
    Builtin {
        name: "slack-webhook",
        regex: r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/+-]{20,200}",
        keywords: &["https://hooks.slack.com/"],
        ci: false,
        anchors: &["://"],
        lead: 0,
        max_len: 240,
        run: Run::NonSpace,
        kind: Kind::Plain,
        check: Check::None,
        groups: Groups::None,
        shape: Shape::Regex,
    },
    Builtin {
        name: "stripe-key",
        regex: r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,247}",
        keywords: &["sk_live_", "sk_test_", "rk_live_", "rk_test_"],
        ci: false,
        anchors: &[],
        lead: 0,
        max_len: 260,
        run: Run::Token,
        kind: Kind::Plain,
        check: Check::None,
        groups: Groups::None,
        shape: Shape::Stripe,
    },
    Builtin {
        name: "gcp-api-key",
        regex: r"\bAIza[0-9A-Za-z_-]{35}",
        keywords: &["AIza"],
        ci: false,
        anchors: &[],
        lead: 0,
        max_len: 39,
        run: Run::Token,
        kind: Kind::Plain,
        check: Check::None,
        groups: Groups::None,
        shape: Shape::GcpApiKey,
    },
    Builtin {
        name: "jwt",
        regex: r"\beyJ[A-Za-z0-9_-]{8,4096}\.eyJ[A-Za-z0-9_-]{8,8192}\.[A-Za-z0-9_-]{0,2048}",
        keywords: &["eyJ"],
        ci: false,
        anchors: &[],
        lead: 0,
        max_len: 14400,
        run: Run::Token,
        kind: Kind::Plain,
        check: Check::None,
        groups: Groups::None,
        shape: Shape::Jwt,
    },
    Builtin {
        name: "connection-string-password",
        regex: r#"(?i:postgres(?:ql)?|mysql|mariadb|mongodb(?:\+srv)?|rediss?|amqps?|mssql|sqlserver|clickhouse|https?|s?ftp|smtp|ldaps?|nats)://[^\s:/@"']{1,128}:([^\s@/"']{1,256})@"#,
        keywords: CONN_SCHEMES,
        ci: true,
        anchors: &["://"],
        lead: 0,
        max_len: 420,
        run: Run::NonSpace,
        kind: Kind::Plain,
        check: Check::UserInfo,
        groups: Groups::UserInfo,
        shape: Shape::Regex,
    },
    Builtin {
        name: "password-assignment",
        regex: r#"(?i:passwd|password|passphrase|secret|token|api[_-]?key|apikey|access[_-]?key|auth[_-]?key|private[_-]?key)(?i:[_-]?(?:key|id|value|secret|token))?["']?[ \t]{0,4}[:=][ \t]{0,4}(?:"([^"\r\n]{1,256})"|'([^'\r\n]{1,256})'|([^\s"'$;&|,<>(){}\[\]`][^\s"';&|,<>`]{0,255}))|(?i:authorization)[ \t]{0,4}:[ \t]{0,4}(?i:bearer|basic|token)[ \t]{1,4}([^\s"']{8,512})"#,
        keywords: &[
            "passwd",
            "password",
            "passphrase",
            "secret",
            "token",
            "api_key",
            "api-key",
            "apikey",
            "access_key",
            "access-key",
            "accesskey",
            "auth_key",
            "auth-key",
            "authkey",
            "private_key",
            "private-key",
            "privatekey",
            "authorization",
        ],
        ci: true,
        // Rare three-byte pieces where there is a choice: `key` for the
        // twelve `*key` spellings, `ecr` (secret), `zat` (authorization:
        // `aut` is in every sshd "authentication" line).
        anchors: &["key", "ecr", "zat"],
        lead: 0,
        max_len: 560,
        run: Run::Line,
        kind: Kind::Plain,
        check: Check::Assignment { suffixes: true },
        groups: Groups::Assignment,
        shape: Shape::Assignment,
    },
];

/// Names of every built-in detector, in priority order.
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    BUILTINS.iter().map(|b| b.name)
}
