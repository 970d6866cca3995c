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
    },
];

/// Names of every built-in detector, in priority order.
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    BUILTINS.iter().map(|b| b.name)
}
