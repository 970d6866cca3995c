//! Tests of the masking engine: each detector with positive and negative
//! samples, the streaming contract, and the property that any chunking gives
//! the whole-text result.

use super::*;
use proptest::prelude::*;

fn masker() -> Masker {
    Masker::builtin().unwrap()
}

/// One built-in masker for the property tests (compiling the regexes for
/// each of hundreds of cases dominated their run time).
fn shared_masker() -> &'static Masker {
    static M: std::sync::OnceLock<Masker> = std::sync::OnceLock::new();
    M.get_or_init(masker)
}

fn masked(text: &str) -> String {
    String::from_utf8_lossy(&masker().mask(text.as_bytes()).bytes).into_owned()
}

fn hits(text: &str) -> Vec<String> {
    masker()
        .mask(text.as_bytes())
        .hits
        .iter()
        .map(|h| h.detector.to_string())
        .collect()
}

const GH: &str = "ghp_a1B2a1B2a1B2a1B2a1B2a1B2a1B2a1B2a1B2";
const JWT: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEyMyJ9.eyJpc3MiOiJrdWJlcm5ldGVzL3NlcnZpY2VhY2NvdW50In0.c2lnbmF0dXJlc2lnbmF0dXJl";
const PEM: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\r\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\r\nQyNTUxOQAAACDbsl/9f6v1+UX3Q2Tlrp8cm/Bzo1d==\r\n-----END OPENSSH PRIVATE KEY-----\r\n";

/// (detector, text containing the secret, the secret value that must vanish)
fn samples() -> Vec<(&'static str, String, String)> {
    vec![
        (
            "aws-access-key-id",
            "export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\n".into(),
            "AKIAIOSFODNN7EXAMPLE".into(),
        ),
        (
            "aws-secret-access-key",
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n".into(),
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
        ),
        ("github-token", format!("remote token {GH} ok\n"), GH.into()),
        (
            "github-token",
            "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz\n".into(),
            "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz".into(),
        ),
        (
            "gitlab-token",
            "glpat-xY9zAbCdEfGhIjKlMnOp\n".into(),
            "glpat-xY9zAbCdEfGhIjKlMnOp".into(),
        ),
        (
            "slack-token",
            "SLACK=xoxb-123456789012-abcdefghijkl\n".into(),
            "xoxb-123456789012-abcdefghijkl".into(),
        ),
        (
            "slack-webhook",
            "curl https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX -d x\n"
                .into(),
            "T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX".into(),
        ),
        (
            "stripe-key",
            "key sk_live_4eC39HqLyjWDarjtT1zdp7dc\n".into(),
            "sk_live_4eC39HqLyjWDarjtT1zdp7dc".into(),
        ),
        (
            "gcp-api-key",
            "AIzaSyA-1234567890abcdefghijklmnopqrstu\n".into(),
            "AIzaSyA-1234567890abcdefghijklmnopqrstu".into(),
        ),
        (
            "gcp-service-account-key",
            r#"{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\n-----END PRIVATE KEY-----\n", "client_email": "a@b"}"#
                .to_string()
                + "\n",
            "MIIEvQIBADANBgkqhkiG9w0B".into(),
        ),
        ("jwt", format!("token\n{JWT}\n"), JWT.into()),
        (
            "private-key",
            PEM.into(),
            "QyNTUxOQAAACDbsl/9f6v1+UX3Q2Tlrp8cm".into(),
        ),
        (
            "password-assignment",
            "DB_PASSWORD=hunter2xyz ./run\n".into(),
            "hunter2xyz".into(),
        ),
        (
            "password-assignment",
            "{\"token\": \"abc def 123\"}\n".into(),
            "abc def 123".into(),
        ),
        (
            "password-assignment",
            "Authorization: Bearer abcdefghijklmnop\n".into(),
            "abcdefghijklmnop".into(),
        ),
        (
            "connection-string-password",
            "DATABASE_URL=postgres://app:s3cr3tpw@db.prod:5432/app\n".into(),
            "s3cr3tpw".into(),
        ),
        (
            "connection-string-password",
            "mongodb+srv://root:Pa55w0rd!@cluster0.example.net/\n".into(),
            "Pa55w0rd!".into(),
        ),
    ]
}

#[test]
fn every_detector_masks_its_samples() {
    let mut seen = std::collections::BTreeSet::new();
    for (det, text, secret) in samples() {
        let out = masked(&text);
        assert!(!out.contains(&secret), "{det}: secret visible in {out:?}");
        assert!(
            out.contains(&format!("[MASKED:{det}]")),
            "{det}: no marker in {out:?}"
        );
        assert!(hits(&text).contains(&det.to_string()), "{det}: no hit");
        seen.insert(det);
    }
    for name in builtin_names() {
        assert!(seen.contains(name), "no sample for detector {name}");
    }
}

#[test]
fn value_detectors_keep_the_key_visible() {
    assert_eq!(
        masked("DB_PASSWORD=hunter2xyz ./run"),
        "DB_PASSWORD=[MASKED:password-assignment] ./run"
    );
    assert_eq!(
        masked("postgres://app:s3cr3tpw@db:5432/x"),
        "postgres://app:[MASKED:connection-string-password]@db:5432/x"
    );
    assert_eq!(
        masked(PEM),
        "[MASKED:private-key]\r\n",
        "the whole PEM block, footer included, is one marker"
    );
}

#[test]
fn ordinary_shell_output_is_untouched() {
    let clean = [
        "total 48\r\ndrwxr-xr-x  2 alice alice 4096 Nov 28 17:46 .\r\n-rw-r--r--  1 alice alice  220 Jan  6  2022 .bash_logout\r\n",
        "commit 3f786850e387550fdab836ed7e6dc881de23001b\nAuthor: Alice <a@example.com>\n",
        "id: 123e4567-e89b-12d3-a456-426614174000\n",
        "PasswordAuthentication no\nsudo passwd alice\n[sudo] password for alice: \n",
        "OLDPWD=/home/alice\nPWD=/tmp\nTOKEN_TTL\n",
        "https://example.com:8443/path?q=1 and git@github.com:org/repo.git\n",
        "NAME                     TYPE                                  DATA   AGE\ndefault-token-abcde      kubernetes.io/service-account-token   3      1d\n",
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n",
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n",
        "Asia/Tokyo token: \n",
        "password=$PGPASSWORD\n",
    ];
    for c in clean {
        let m = masker().mask(c.as_bytes());
        assert_eq!(String::from_utf8_lossy(&m.bytes), c, "changed: {c:?}");
        assert!(m.hits.is_empty(), "hits on {c:?}: {:?}", m.hits);
    }
}

#[test]
fn invalid_utf8_neither_crashes_nor_unmasks() {
    let mut text = vec![0xff, 0xfe, 0xc3];
    text.extend_from_slice(GH.as_bytes());
    text.extend_from_slice(&[0x80, b' ', 0xc3, 0x28]);
    let m = masker().mask(&text);
    assert!(!m.bytes.windows(GH.len()).any(|w| w == GH.as_bytes()));
    assert_eq!(m.hits.len(), 1);
    assert!(m.bytes.starts_with(&[0xff, 0xfe, 0xc3]));
}

#[test]
fn secret_split_byte_by_byte_is_masked() {
    for (det, text, secret) in samples() {
        let m = masker();
        let mut s = m.stream();
        let mut out = Vec::new();
        let mut hits = Vec::new();
        for b in text.as_bytes() {
            let r = s.push(std::slice::from_ref(b));
            out.extend(r.bytes);
            hits.extend(r.hits);
        }
        let r = s.flush();
        out.extend(r.bytes);
        hits.extend(r.hits);
        let whole = m.mask(text.as_bytes());
        assert_eq!(out, whole.bytes, "{det}");
        assert_eq!(hits, whole.hits, "{det}");
        assert!(!String::from_utf8_lossy(&out).contains(&secret), "{det}");
    }
}

#[test]
fn clean_text_is_released_at_once() {
    let m = masker();
    let mut s = m.stream();
    let r = s.push(b"total 48\r\ndrwxr-xr-x 2 alice alice 4096 .\r\n");
    assert_eq!(r.bytes, b"total 48\r\ndrwxr-xr-x 2 alice alice 4096 .\r\n");
    assert_eq!(s.held_back(), 0);
    // A possible keyword start is held back, and only that.
    let r = s.push(b"$ echo gh");
    assert_eq!(r.bytes, b"$ echo ");
    assert_eq!(s.held_back(), 2);
    assert_eq!(s.flush().bytes, b"gh");
    assert_eq!(s.held_back(), 0);
}

#[test]
fn hit_offsets_are_stream_offsets() {
    let m = masker();
    let mut s = m.stream();
    let _ = s.push(b"0123456789");
    let mut all = s.push(format!("x {GH}\n").as_bytes()).hits;
    all.extend(s.flush().hits);
    assert_eq!(all.len(), 1);
    assert_eq!(all.first().map(|h| h.offset), Some(12));
}

#[test]
fn pem_block_longer_than_any_window_is_masked_when_streamed() {
    let m = masker();
    let mut s = m.stream();
    let mut out = Vec::new();
    out.extend(
        s.push(b"$ cat id_rsa\r\n-----BEGIN RSA PRIVATE KEY-----\r\n")
            .bytes,
    );
    let line = b"MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\r\n";
    for _ in 0..2000 {
        out.extend(s.push(line).bytes);
        // The body is swallowed, not held: memory stays bounded.
        assert!(s.held_back() < 100);
    }
    out.extend(s.flush().bytes); // an idle pause in the middle of the block
    out.extend(s.push(line).bytes);
    out.extend(
        s.push(b"-----END RSA PRIVATE KEY-----\r\nalice@host:~$ ")
            .bytes,
    );
    out.extend(s.flush().bytes);
    let text = String::from_utf8_lossy(&out);
    assert_eq!(
        text,
        "$ cat id_rsa\r\n[MASKED:private-key]\r\nalice@host:~$ "
    );
}

#[test]
fn custom_rules() {
    let cfg = MaskConfig {
        detectors: vec!["jwt".into()],
        custom: vec![
            CustomRule {
                name: "acme-key".into(),
                regex: r"ACME-[0-9]{6}".into(),
            },
            CustomRule {
                name: "ssn".into(),
                regex: r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b".into(),
            },
        ],
    };
    let m = Masker::new(&cfg).unwrap();
    assert_eq!(m.detector_names(), vec!["acme-key", "ssn", "jwt"]);
    let text = "id ACME-123456 ssn 123-45-6789 gh ghp_zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz\n";
    let out = m.mask_str(text);
    assert_eq!(
        out,
        "id [MASKED:acme-key] ssn [MASKED:ssn] gh ghp_zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz\n"
    );
    // Byte by byte, the same.
    let mut s = m.stream();
    let mut b = Vec::new();
    for c in text.as_bytes() {
        b.extend(s.push(std::slice::from_ref(c)).bytes);
    }
    b.extend(s.flush().bytes);
    assert_eq!(String::from_utf8_lossy(&b), out);
}

#[test]
fn bad_config_is_an_error_naming_the_rule() {
    let err = Masker::new(&MaskConfig {
        detectors: vec![],
        custom: vec![CustomRule {
            name: "broken".into(),
            regex: "(unclosed".into(),
        }],
    })
    .unwrap_err();
    assert!(err.to_string().contains("broken"), "{err}");
    let err = Masker::new(&MaskConfig {
        detectors: vec!["nope".into()],
        custom: vec![],
    })
    .unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    assert!(
        Masker::new(&MaskConfig {
            detectors: vec![],
            custom: vec![CustomRule {
                name: "bad name]".into(),
                regex: "x".into(),
            }],
        })
        .is_err()
    );
}

#[test]
fn empty_matching_custom_regex_does_not_loop() {
    let m = Masker::new(&MaskConfig {
        detectors: vec![],
        custom: vec![CustomRule {
            name: "maybe".into(),
            regex: "x*".into(),
        }],
    })
    .unwrap();
    assert_eq!(m.mask_str("abxxc"), "ab[MASKED:maybe]c");
}

#[test]
fn literal_prefixes() {
    assert_eq!(literal_prefix("ACME-[0-9]+").as_deref(), Some("acme-"));
    assert_eq!(
        literal_prefix(r"(?i)tok\.en=\w+").as_deref(),
        Some("tok.en=")
    );
    assert_eq!(literal_prefix("abcd?e").as_deref(), Some("abc"));
    assert_eq!(literal_prefix("ab[0-9]"), None);
    assert_eq!(literal_prefix("abc|def"), None);
}

#[test]
fn debug_never_shows_pending_bytes() {
    let m = masker();
    let mut s = m.stream();
    let _ = s.push(b"token=supersecretvalue");
    let dbg = format!("{s:?}");
    assert!(!dbg.contains("supersecret"), "{dbg}");
}

fn secret_strategy() -> impl Strategy<Value = String> {
    let all: Vec<String> = samples().into_iter().map(|(_, t, _)| t).collect();
    proptest::sample::select(all)
}

fn noise_strategy() -> impl Strategy<Value = Vec<u8>> {
    let alphabet: Vec<u8> = b"abcdeghkoprstxyzAEIKJ0123456789 \n\r\t=:-_./@\"'\xff\xc3".to_vec();
    prop_oneof![
        proptest::collection::vec(proptest::sample::select(alphabet), 0..40),
        proptest::sample::select(vec![
            b"gh".to_vec(),
            b"ghp_".to_vec(),
            b"token".to_vec(),
            b"password: ".to_vec(),
            b"eyJ".to_vec(),
            b"-----BEGIN".to_vec(),
            b"-----END".to_vec(),
            b"https://".to_vec(),
            b"AKIA".to_vec(),
            b"\x1b[0m".to_vec(),
            b"_token".to_vec(),
            b"-Secret\"".to_vec(),
            b"    ".to_vec(),
            b"secret_access_key".to_vec(),
            b"authorization:".to_vec(),
            b"mysql://u".to_vec(),
            b"\"private_key\"".to_vec(),
        ]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn any_chunking_equals_whole_text(
        parts in proptest::collection::vec(
            prop_oneof![
                noise_strategy(),
                secret_strategy().prop_map(|s| format!(" {s} ").into_bytes()),
            ],
            0..12,
        ),
        cuts in proptest::collection::vec(1usize..64, 1..200),
    ) {
        let text: Vec<u8> = parts.concat();
        let m = shared_masker();
        let whole = m.mask(&text);
        let mut s = m.stream();
        let mut out = Masked::default();
        let mut rest: &[u8] = &text;
        let mut i = 0;
        while !rest.is_empty() {
            let n = cuts.get(i % cuts.len()).copied().unwrap_or(1).min(rest.len());
            let (a, b) = rest.split_at(n);
            out.extend(s.push(a));
            rest = b;
            i += 1;
        }
        out.extend(s.flush());
        prop_assert_eq!(&out.bytes, &whole.bytes);
        prop_assert_eq!(&out.hits, &whole.hits);
    }

    #[test]
    fn embedded_secrets_never_leak(
        noise in proptest::collection::vec(noise_strategy(), 1..6),
        idx in 0usize..64,
    ) {
        let s = samples();
        let (det, text, secret) = s.get(idx % s.len()).cloned().unwrap();
        let mut input = noise.concat();
        input.extend_from_slice(b" \n");
        input.extend_from_slice(text.as_bytes());
        input.extend_from_slice(b" \n");
        input.extend(noise.concat());
        let out = shared_masker().mask(&input).bytes;
        prop_assert!(
            !out.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{} leaked in {:?}", det, String::from_utf8_lossy(&out)
        );
    }
}

#[test]
fn types_are_send_and_sync_where_sessions_need_it() {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    send::<Masker>();
    sync::<Masker>();
    send::<StreamMasker>();
    send::<crate::guard::line::LineTracker>();
}

#[test]
fn a_megabyte_of_random_bytes_survives() {
    let mut x: u32 = 12345;
    let data: Vec<u8> = (0..(1 << 20))
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    let m = masker();
    let whole = m.mask(&data);
    let mut s = m.stream();
    let mut out = Vec::new();
    for c in data.chunks(4093) {
        out.extend(s.push(c).bytes);
    }
    out.extend(s.flush().bytes);
    assert_eq!(out, whole.bytes);
}

#[test]
fn every_policy_detector_family_compiles_to_builtins() {
    // The policy loader accepts these names; a session built from them must
    // not fail on "unknown detector" (the family names differ from the
    // built-in detector names).
    for family in crate::policy::load::KNOWN_DETECTORS {
        let names = family_detectors(family);
        assert!(!names.is_empty(), "{family}");
        for n in &names {
            assert!(builtin_names().any(|b| b == *n), "{family} -> {n}");
        }
        let grant = crate::policy::SessionGrant {
            mask_detectors: vec![family.to_string()],
            ..crate::policy::SessionGrant::none()
        };
        let m = Masker::new(&MaskConfig::from_grant(&grant)).unwrap();
        assert_eq!(m.detector_names().len(), names.len(), "{family}");
    }
    // Every built-in belongs to some family: "all" spelled out misses nothing.
    for b in builtin_names() {
        assert!(
            crate::policy::load::KNOWN_DETECTORS
                .iter()
                .any(|f| family_detectors(f).contains(&b)),
            "{b} is in no policy family"
        );
    }
    // Unknown names stay unknown (reported, not ignored).
    let grant = crate::policy::SessionGrant {
        mask_detectors: vec!["nope".into()],
        ..crate::policy::SessionGrant::none()
    };
    assert!(matches!(
        Masker::new(&MaskConfig::from_grant(&grant)),
        Err(Error::UnknownDetector(_))
    ));
}

// ---------------------------------------------------------------------------
// The anchor prefilter and the regex windows (issue 5, benchmark goals): they
// must lose no detection. The reference below is the plain algorithm with
// neither: every detector's regex over the whole text, leftmost match first.

/// First match of `d` at or after `from` and its first participating group,
/// straight from the regex (no anchors, checks, windows or hand groups).
fn reference_find(d: &Detector, hay: &[u8], from: usize) -> Option<Found> {
    let mut at = from;
    while at <= hay.len() {
        let c = d.regex.captures_at(hay, at)?;
        let m = c.get(0)?;
        if m.is_empty() {
            at = m.start() + 1;
            continue;
        }
        let g = (1..c.len()).find_map(|i| c.get(i)).unwrap_or(m);
        return Some(Found {
            start: m.start(),
            end: m.end(),
            mask_start: g.start(),
            mask_end: g.end(),
        });
    }
    None
}

/// Mask `text` at once the slow, obvious way: no anchors, no windows.
fn reference_mask(m: &Masker, text: &[u8]) -> Masked {
    let inner = &m.inner;
    let mut out = Masked::default();
    let mut p = 0;
    let mut in_pem = false;
    loop {
        if in_pem {
            match pem_consume(text, p, true) {
                // `in_pem` is set again from the next match's detector.
                PemStep::Done(i) => p = i,
                PemStep::Wait(_) => return out,
            }
        }
        let mut best: Option<(usize, Found)> = None;
        for (i, d) in inner.detectors.iter().enumerate() {
            if let Some(f) = reference_find(d, text, p)
                && best.as_ref().is_none_or(|(_, b)| f.start < b.start)
            {
                best = Some((i, f));
            }
        }
        let Some((di, f)) = best else { break };
        let mut d = &inner.detectors[di];
        if d.generic {
            // The specific detector whose whole match is the value.
            let hay = &text[..f.mask_end];
            if let Some(s) = inner.detectors.iter().find(|s| {
                !s.generic
                    && s.kind == Kind::Plain
                    && reference_find(s, hay, f.mask_start)
                        .is_some_and(|g| g.start == f.mask_start && g.end == f.mask_end)
            }) {
                d = s;
            }
        }
        out.bytes.extend_from_slice(&text[p..f.mask_start]);
        out.bytes.extend_from_slice(&d.marker);
        out.bytes.extend_from_slice(&text[f.mask_end..f.end]);
        out.hits.push(Hit {
            detector: Arc::clone(&d.name),
            offset: f.mask_start as u64,
        });
        p = f.end;
        in_pem = d.kind == Kind::PemHeader;
    }
    out.bytes.extend_from_slice(&text[p..]);
    out
}

fn stream_in_two(m: &Masker, text: &[u8], at: usize) -> Masked {
    let mut s = m.stream();
    let mut out = s.push(&text[..at]);
    out.extend(s.push(&text[at..]));
    out.extend(s.flush());
    out
}

#[test]
fn builtin_anchors_use_the_simd_scanner_and_are_few() {
    let m = masker();
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("ssse3") {
        assert!(
            matches!(m.inner.scanner, Some(Scanner::Packed(_))),
            "built-in anchors must fit Teddy"
        );
    }
    // Teddy slows down past 64 patterns (aho-corasick refuses them by
    // default); 24 anchors, 5 of them in eight case variants, are 59.
    assert!(m.inner.anchors.len() <= 64, "{}", m.inner.anchors.len());
}

#[test]
fn every_keyword_is_reached_through_a_preferred_anchor() {
    // A keyword that contains none of its detector's preferred anchors
    // falls back to its first three bytes: correct, but it adds anchors.
    // Catch that when detectors change.
    for b in BUILTINS {
        for k in b.keywords {
            assert!(k.len() >= ANCHOR_LEN, "{}: keyword {k:?} too short", b.name);
            if !b.anchors.is_empty() && b.name != "password-assignment" {
                assert!(
                    b.anchors
                        .iter()
                        .any(|a| k.to_ascii_lowercase().contains(&a.to_ascii_lowercase())),
                    "{}: keyword {k:?} has no preferred anchor",
                    b.name
                );
            }
            if !b.ci {
                // Case-sensitive keywords must be spelled as the regex
                // spells them, or the regex could never match after them.
                let m = Masker::new(&MaskConfig {
                    detectors: vec![b.name.into()],
                    custom: vec![],
                })
                .unwrap();
                assert!(
                    m.inner.keywords.iter().any(|kw| kw.bytes == k.as_bytes()),
                    "{}: {k:?}",
                    b.name
                );
            }
        }
    }
}

#[test]
fn case_variants_of_keywords_are_masked() {
    let cases = [
        ("PASSWORD=hunter2xyz\n", "hunter2xyz", "password-assignment"),
        (
            "Password: hunter2xyz\n",
            "hunter2xyz",
            "password-assignment",
        ),
        ("pAsSwD=hunter2xyz\n", "hunter2xyz", "password-assignment"),
        (
            "Token: abcdef123456\n",
            "abcdef123456",
            "password-assignment",
        ),
        (
            "TOKEN=abcdef123456\n",
            "abcdef123456",
            "password-assignment",
        ),
        (
            "SECRET='s p a c e d'\n",
            "s p a c e d",
            "password-assignment",
        ),
        ("Api-Key: k3yk3yk3y\n", "k3yk3yk3y", "password-assignment"),
        ("APIKEY=k3yk3yk3y\n", "k3yk3yk3y", "password-assignment"),
        ("X_AUTH_KEY=k3yk3yk3y\n", "k3yk3yk3y", "password-assignment"),
        ("PrivateKey=k3yk3yk3y\n", "k3yk3yk3y", "password-assignment"),
        (
            "Access-Key: k3yk3yk3y\n",
            "k3yk3yk3y",
            "password-assignment",
        ),
        (
            "PassPhrase=correct-horse\n",
            "correct-horse",
            "password-assignment",
        ),
        (
            "AUTHORIZATION: BEARER abcdefghijklmnop\n",
            "abcdefghijklmnop",
            "password-assignment",
        ),
        (
            "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "aws-secret-access-key",
        ),
        (
            "Aws-Secret-Access-Key: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "aws-secret-access-key",
        ),
        (
            "POSTGRES://app:s3cr3tpw@db/x\n",
            "s3cr3tpw",
            "connection-string-password",
        ),
        (
            "MongoDB+SRV://root:Pa55w0rd!@c0/\n",
            "Pa55w0rd!",
            "connection-string-password",
        ),
        (
            "Redis://default:r3dispw@cache:6379\n",
            "r3dispw",
            "connection-string-password",
        ),
    ];
    let m = masker();
    for (text, secret, det) in cases {
        let out = m.mask(text.as_bytes());
        let shown = String::from_utf8_lossy(&out.bytes);
        assert!(!shown.contains(secret), "{text:?} -> {shown:?}");
        assert!(
            out.hits.iter().any(|h| &*h.detector == det),
            "{text:?}: {:?}",
            out.hits
        );
        assert_eq!(out, reference_mask(&m, text.as_bytes()), "{text:?}");
    }
}

#[test]
fn near_keywords_cost_a_comparison_and_mask_nothing() {
    // Anchors without their keyword (`key` in `publickey`, `pas` in
    // `past`, `://` in a URL without credentials) must not trigger masks.
    let m = masker();
    for text in [
        "Accepted publickey for alice from 10.0.0.5 port 52144 ssh2\n",
        "in the past, tokens were kept; secrets are not printed\n",
        "GET https://registry.example.com/v2/ 200\n",
        "ACCEPT ASIDE ABIDE AIzb eyj ghx_ glpa xo-x sk_other\n",
    ] {
        let out = m.mask(text.as_bytes());
        assert_eq!(out.bytes, text.as_bytes(), "{text:?}");
        assert!(out.hits.is_empty(), "{text:?}");
    }
}

#[test]
fn wrong_case_for_case_sensitive_detectors_is_not_a_secret() {
    // These detectors' regexes are case-sensitive, so their keywords are
    // too (fewer anchors, fewer false triggers); the reference agrees.
    let m = masker();
    for text in [
        "akiaiosfodnn7example\n",
        "GHP_a1B2a1B2a1B2a1B2a1B2a1B2a1B2a1B2a1B2\n",
        "EYJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJrdWJlcm5ldGVzIn0.c2ln\n",
        "-----begin rsa private key-----\n",
    ] {
        assert_eq!(m.mask(text.as_bytes()), reference_mask(&m, text.as_bytes()));
    }
}

#[test]
fn a_secret_split_at_every_offset_is_masked() {
    let m = masker();
    for (det, text, secret) in samples() {
        let whole = m.mask(text.as_bytes());
        assert_eq!(whole, reference_mask(&m, text.as_bytes()), "{det}");
        for at in 0..=text.len() {
            let out = stream_in_two(&m, text.as_bytes(), at);
            assert_eq!(out, whole, "{det} split at {at}");
            assert!(
                !String::from_utf8_lossy(&out.bytes).contains(&secret),
                "{det} split at {at}"
            );
        }
    }
}

#[test]
fn windows_reach_the_longest_matches() {
    // Matches as long as a detector allows: the window around the keyword
    // must hold them whole, or the tail would leak.
    let m = masker();
    let jwt = format!(
        "x eyJ{}.eyJ{}.{} y\n",
        "a".repeat(4096),
        "b".repeat(8192),
        "c".repeat(2048)
    );
    let pw = format!("password=\"{}\" z\n", "p".repeat(256));
    let bearer = format!("Authorization: Bearer {} z\n", "t".repeat(512));
    let conn = format!("mongodb+srv://{}:{}@h/\n", "u".repeat(128), "w".repeat(256));
    let aws = "aws-secret-access-key\t=\t\"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\"\n";
    for text in [jwt, pw, bearer, conn, aws.to_string()] {
        let out = m.mask(text.as_bytes());
        assert_eq!(out.hits.len(), 1, "{:?}", &text[..40]);
        assert_eq!(out, reference_mask(&m, text.as_bytes()));
        for at in [1, 7, text.len() / 2, text.len() - 3] {
            assert_eq!(stream_in_two(&m, text.as_bytes(), at), out);
        }
    }
}

#[test]
fn too_many_anchors_fall_back_to_the_dfa_and_still_mask() {
    // Ten custom literals with eight case variants each exceed what Teddy
    // takes: the DFA scanner must give the same result.
    let custom: Vec<CustomRule> = (0..10)
        .map(|i| CustomRule {
            name: format!("acme{i}"),
            regex: format!("(?i)acm{i}x-[0-9]{{6}}"),
        })
        .collect();
    let m = Masker::new(&MaskConfig {
        detectors: vec![],
        custom,
    })
    .unwrap();
    assert!(matches!(m.inner.scanner, Some(Scanner::Dfa(_))));
    let text = format!("a ACM3X-123456 b acm9x-654321 {GH} DB_PASSWORD=hunter2xyz\n");
    let out = m.mask(text.as_bytes());
    assert_eq!(
        String::from_utf8_lossy(&out.bytes),
        "a [MASKED:acme3] b [MASKED:acme9] [MASKED:github-token] DB_PASSWORD=[MASKED:password-assignment]\n"
    );
    assert_eq!(out, reference_mask(&m, text.as_bytes()));
    for at in 0..=text.len() {
        assert_eq!(stream_in_two(&m, text.as_bytes(), at), out, "split at {at}");
    }
}

/// A sample with its letters' case flipped where `flips` says so.
fn flip_case(text: &str, flips: &[bool]) -> String {
    text.chars()
        .zip(flips.iter().cycle())
        .map(|(c, &f)| {
            if f && c.is_ascii_alphabetic() {
                (c as u8 ^ 0x20) as char
            } else {
                c
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn anchors_and_windows_equal_the_plain_algorithm(
        parts in proptest::collection::vec(
            prop_oneof![
                noise_strategy(),
                secret_strategy().prop_map(|s| format!(" {s} ").into_bytes()),
                (secret_strategy(), proptest::collection::vec(any::<bool>(), 1..9))
                    .prop_map(|(s, f)| flip_case(&s, &f).into_bytes()),
                (secret_strategy(), 0usize..80, 1usize..80).prop_map(|(s, from, n)| {
                    // A piece of a secret: half a keyword, a cut value.
                    let b = s.as_bytes();
                    let x = from.min(b.len());
                    b[x..(x + n).min(b.len())].to_vec()
                }),
            ],
            0..14,
        ),
        at in 0usize..2000,
    ) {
        let text: Vec<u8> = parts.concat();
        let m = shared_masker();
        let whole = m.mask(&text);
        prop_assert_eq!(&whole, &reference_mask(m, &text));
        let at = at.min(text.len());
        prop_assert_eq!(&stream_in_two(m, &text, at), &whole);
    }
}

/// Texts shaped like the detectors with groups: every separator, quote
/// and blank count around the limits, keyword suffixes, case variants.
fn group_texts() -> Vec<String> {
    let mut out = Vec::new();
    for key in [
        "PASSWD",
        "Secret",
        "token",
        "Api-Key",
        "passwordsecret_token",
        "secrets",
        "X_AUTH_KEY",
    ] {
        for suffix in ["", "_id", "-VALUE", "token", "_tok"] {
            for quote in ["", "\"", "'"] {
                for blanks in ["", "\t ", "     "] {
                    for sep in ["=", ":", " "] {
                        for value in ["hunter2", "\"a b\"", "'c\"d'", "x=y:z", "$HOME"] {
                            out.push(format!(
                                "{key}{suffix}{quote}{blanks}{sep}{blanks}{value} ;"
                            ));
                        }
                    }
                }
            }
        }
    }
    for auth in ["Authorization", "AUTHORIZATION", "authorization_key"] {
        for blanks in ["", " ", "    ", "     "] {
            for scheme in ["Bearer", "basic", "Token", "none"] {
                for v in ["abcdefgh", "abcdefg", "a\"bcdefghij", &"t".repeat(600)] {
                    out.push(format!("{auth}{blanks}:{blanks}{scheme} {v}\n"));
                    out.push(format!("{auth}{blanks}:{blanks}{scheme}\t\t{v}\n"));
                }
            }
        }
    }
    for scheme in [
        "postgres",
        "POSTGRESQL",
        "mongodb+srv",
        "Redis",
        "https",
        "http",
        "git",
    ] {
        for user in ["u", "app", "", "a:b", "u/x", &"u".repeat(129)] {
            for pw in ["p", "s3:cr@t", "", "p w", "a/b", &"p".repeat(257)] {
                out.push(format!("{scheme}://{user}:{pw}@host:5432/db\n"));
            }
        }
        out.push(format!("{scheme}://localhost:8080/x@y\n"));
    }
    for name in [
        "aws_secret_access_key",
        "AWS-SECRET-ACCESS-KEY",
        "SecretAccessKey",
        "aws_secret_access_keys",
    ] {
        for q in ["", "\"", "'"] {
            for blanks in ["", "\t", "    ", "     "] {
                for tail in ["", "\n", "=", "a", "\"", "/"] {
                    out.push(format!(
                        "{name}{q}{blanks}={blanks}{q}wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY{tail}"
                    ));
                }
            }
        }
    }
    for blanks in ["", " ", "    ", "     "] {
        for body in [
            "-----BEGIN PRIVATE KEY-----\\nMIIE",
            "-----BEGIN",
            "----BEGIN x",
        ] {
            out.push(format!("{{\"private_key\"{blanks}:{blanks}\"{body}\"}}"));
        }
    }
    out
}

#[test]
fn hand_groups_equal_the_regex_groups() {
    // `Groups::span` reads the masked value off a match by hand; it must
    // be the regex's first participating group on every match.
    let m = masker();
    let mut compared = 0;
    for text in group_texts() {
        for d in m.inner.detectors.iter().filter(|d| d.groups) {
            let Some(groups) = d.resolve else { continue };
            let mut at = 0;
            while let Some(c) = d.regex.captures_at(text.as_bytes(), at) {
                let whole = c.get(0).unwrap();
                let g = (1..c.len()).find_map(|i| c.get(i)).unwrap();
                let span = groups.span(whole.as_bytes());
                assert_eq!(
                    span,
                    Some((g.start() - whole.start(), g.end() - whole.start())),
                    "{}: {text:?}",
                    d.name
                );
                compared += 1;
                at = whole.end().max(at + 1);
            }
        }
    }
    // The texts must really exercise every detector with groups.
    assert!(compared > 1000, "{compared}");
}

#[test]
fn checks_never_reject_a_keyword_a_match_contains() {
    // `Check::verdict` runs before any regex; a `Reject` for a keyword that
    // some match contains would lose the secret. Every keyword occurrence
    // inside a regex match must get `Maybe`, whole or cut anywhere after it.
    let m = masker();
    let inner = &m.inner;
    let mut kept = 0;
    let mut rejected = 0;
    for text in group_texts() {
        let t = text.as_bytes();
        for kw in &inner.keywords {
            let d = &inner.detectors[kw.detector];
            for k in 0..t.len() {
                let Some(w) = t.get(k..k + kw.bytes.len()) else {
                    break;
                };
                if !kw.matches(w) {
                    continue;
                }
                let after = &t[k + kw.bytes.len()..];
                let from = k.saturating_sub(d.lead);
                let in_match = (from..=k).any(|s| {
                    reference_find(d, t, s)
                        .is_some_and(|f| f.start == s && f.start <= k && k < f.end)
                });
                let v = d.check.verdict(after, true);
                if in_match {
                    assert_eq!(v, Verdict::Maybe, "{}: {text:?} at {k}", d.name);
                    kept += 1;
                    for cut in 0..after.len() {
                        assert_eq!(
                            d.check.verdict(&after[..cut], false),
                            Verdict::Maybe,
                            "{}: {text:?} at {k} cut {cut}",
                            d.name
                        );
                    }
                } else if v == Verdict::Reject {
                    rejected += 1;
                }
            }
        }
    }
    // Both sides must be exercised: real keywords kept, others rejected.
    assert!(
        kept > 1000 && rejected > 1000,
        "kept {kept} rejected {rejected}"
    );
}

#[test]
fn every_builtin_with_groups_reads_them_by_hand() {
    for b in BUILTINS {
        let re = regex::bytes::Regex::new(b.regex).unwrap();
        assert_eq!(
            re.captures_len() > 1,
            b.groups != Groups::None,
            "{}",
            b.name
        );
    }
}

#[test]
fn near_keywords_are_rejected_by_the_check() {
    let m = masker();
    let pw = m.inner.detectors.iter().find(|d| d.generic).unwrap();
    let conn = m
        .inner
        .detectors
        .iter()
        .find(|d| &*d.name == "connection-string-password")
        .unwrap();
    for after in [
        "s are not printed",
        " for alice from 10.0.0.5",
        "_tok=1 and more",
        "     =x and more",
    ] {
        assert_eq!(
            pw.check.verdict(after.as_bytes(), false),
            Verdict::Reject,
            "{after:?}"
        );
    }
    for after in ["=x", "_ID: y", "-secret\"    = z", "token:", "'\t:"] {
        assert_eq!(
            pw.check.verdict(after.as_bytes(), true),
            Verdict::Maybe,
            "{after:?}"
        );
    }
    for after in ["github.com/x", "localhost:8080/x@y", "u:p w@h", ":p@h"] {
        assert_eq!(
            conn.check.verdict(after.as_bytes(), false),
            Verdict::Reject,
            "{after:?}"
        );
    }
    assert_eq!(conn.check.verdict(b"app:pw@db", true), Verdict::Maybe);
    // Cut before the decision: wait for more, unless nothing more comes.
    assert_eq!(conn.check.verdict(b"app:p", false), Verdict::Maybe);
    assert_eq!(conn.check.verdict(b"app:p", true), Verdict::Reject);
    assert_eq!(pw.check.verdict(b" ", false), Verdict::Maybe);
    assert_eq!(pw.check.verdict(b" ", true), Verdict::Reject);
}

#[test]
fn group_texts_mask_as_the_plain_algorithm() {
    let m = masker();
    for text in group_texts() {
        let t = text.as_bytes();
        let whole = m.mask(t);
        assert_eq!(whole, reference_mask(&m, t), "{text:?}");
        for at in [1, t.len() / 3, t.len() / 2, t.len() - 2] {
            assert_eq!(stream_in_two(&m, t, at), whole, "{text:?} at {at}");
        }
    }
}

#[test]
fn values_at_the_relaxed_bound_mask_as_the_plain_algorithm() {
    // Values around the regex's counted bounds: the hand-read groups must
    // be the regex's.
    let m = masker();
    for n in [200, 240, 243, 244, 245, 246, 250, 255, 256, 257, 300] {
        for text in [
            format!("password={} tail\n", "v".repeat(n)),
            format!("token: \"{}\" tail\n", "w".repeat(n.min(256))),
            format!(
                "postgres://{}:{}@db/x\n",
                "u".repeat(n.min(128)),
                "p".repeat(n.min(256))
            ),
        ] {
            assert_eq!(
                m.mask(text.as_bytes()),
                reference_mask(&m, text.as_bytes()),
                "{n}"
            );
        }
    }
}

fn shape_text() -> impl Strategy<Value = Vec<u8>> {
    // Keyword starts, then bytes of the classes the shapes count (runs of
    // every length around their bounds), dots, blanks and dashes.
    let starts: Vec<Vec<u8>> = [
        "AKIA",
        "ASIA",
        "ABIA",
        "ACCA",
        "A3T",
        "A3Tx",
        "AKI",
        "ghp_",
        "gho_",
        "ghx_",
        "github_pat_",
        "glpat-",
        "xoxb-",
        "xoxz-",
        "sk_live_",
        "rk_test_",
        "sk_prod_",
        "AIza",
        "eyJ",
        "-----BEGIN",
        "-----BEGIN RSA ",
        "-----BEGIN PRIVATE KEY BLOCK",
        "password",
        "PASSWD",
        "passphrase",
        "Secret",
        "token",
        "api_key",
        "ApiKey",
        "api-key",
        "access-key",
        "auth_key",
        "PrivateKey",
        "private_key",
        "secret_",
        "token-Id",
        "password_value",
        "passwordsecret",
        "Authorization",
        "authorization_key",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let piece = prop_oneof![
        proptest::collection::vec(proptest::sample::select(b"aZ09_-./ +=Q".to_vec()), 0..12),
        (1usize..300, proptest::sample::select(b"aZ9_-".to_vec())).prop_map(|(n, b)| vec![b; n]),
        (0usize..4200, proptest::sample::select(b"aZ9_-".to_vec())).prop_map(|(n, b)| vec![b; n]),
        proptest::collection::vec(proptest::sample::select(b"=: \t\"'$;,(\r\n".to_vec()), 0..7),
        proptest::sample::select(vec![
            b"Bearer ".to_vec(),
            b"basic\t".to_vec(),
            b"_TOKEN".to_vec(),
            b"-id".to_vec(),
            b".eyJ".to_vec(),
            b"PRIVATE KEY".to_vec(),
            b"-----".to_vec(),
            b" BLOCK".to_vec(),
            b"ABCDEFGHIJKLMNOP".to_vec(),
        ]),
    ];
    (
        proptest::sample::select(starts),
        proptest::collection::vec(piece, 0..6),
    )
        .prop_map(|(s, rest)| [s, rest.concat()].concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Every hand matcher is its detector's anchored regex: same match
    /// length, or no match, on the same bytes (cut anywhere too).
    #[test]
    fn shapes_equal_their_anchored_regexes(text in shape_text(), cut in 0usize..5000) {
        let m = shared_masker();
        let cut = cut.min(text.len());
        for hay in [&text[..], &text[..cut]] {
            for d in m.inner.detectors.iter().filter(|d| d.shape != Shape::Regex) {
                let re = d.anchored.as_ref().unwrap();
                let want = re.find(hay).filter(|m| m.start() == 0 && !m.is_empty()).map(|m| m.end());
                prop_assert_eq!(d.shape.len(hay), want, "{}", d.name);
            }
        }
    }
}

#[test]
fn shapes_match_their_samples_and_bounds() {
    let m = masker();
    let shape = |name: &str| {
        m.inner
            .detectors
            .iter()
            .find(|d| &*d.name == name)
            .unwrap()
            .shape
    };
    assert_eq!(
        shape("aws-access-key-id").len(b"AKIAIOSFODNN7EXAMPLE "),
        Some(20)
    );
    assert_eq!(
        shape("aws-access-key-id").len(b"AKIAIOSFODNN7EXAMPLEX"),
        None
    );
    assert_eq!(shape("github-token").len(GH.as_bytes()), Some(GH.len()));
    assert_eq!(shape("github-token").len(&GH.as_bytes()[..39]), None);
    let jwt = JWT.as_bytes();
    assert_eq!(shape("jwt").len(jwt), Some(jwt.len()));
    assert_eq!(
        shape("private-key").len(b"-----BEGIN RSA PRIVATE KEY-----\n"),
        Some(31)
    );
    assert_eq!(
        shape("private-key").len(b"-----BEGIN PRIVATE KEY BLOCK-----"),
        Some(33)
    );
    assert_eq!(
        shape("private-key").len(b"-----BEGIN PUBLIC KEY-----"),
        None
    );
    // Every fixed-shape detector has its matcher; the others use the DFA.
    for d in &m.inner.detectors {
        assert_eq!(
            d.shape == Shape::Regex,
            d.groups && !d.generic || d.name.contains("webhook"),
            "{}",
            d.name
        );
    }
}
