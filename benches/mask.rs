//! Masking throughput (`cargo bench --bench mask`): clean terminal text and
//! secret-dense text with every built-in detector on, whole-buffer and
//! streamed in 4 KiB reads (a typical pty read). Criterion reports GB/s
//! (MB/s for the slow cases).
//!
//! Profiling mode (repeatable instruction counts on a loaded machine):
//! `MASK_PROFILE=clean|dense` runs a fixed amount of streamed masking in
//! `profile_loop` and exits without Criterion, so
//!
//! ```text
//! MASK_PROFILE=clean valgrind --tool=callgrind --collect-atstart=no \
//!     --toggle-collect='*profile_loop*' target/release/deps/mask-<hash>
//! ```
//!
//! counts only the masking itself (not the regex compilation); divide the
//! total by the bytes it prints.

use criterion::{Criterion, Throughput};
use sallyport::mask::Masker;
use std::hint::black_box;

/// Terminal output with no secret: `ls -l`, git, coloured `ls`, kubectl,
/// application logs, sshd/systemd journal lines, a URL (which the
/// connection-string detector must look at) and words close to keywords
/// (`publickey`, `Accepted`, `secrets`) that a prefilter must reject cheaply.
fn clean_text(size: usize) -> Vec<u8> {
    let lines = [
        "drwxr-xr-x  2 alice alice  4096 Nov 28 17:46 src\r\n",
        "-rw-r--r--  1 alice alice 18231 Nov 28 17:40 Cargo.lock\r\n",
        "commit 3f786850e387550fdab836ed7e6dc881de23001b\r\n",
        "\x1b[01;34mtarget\x1b[0m  \x1b[01;32mbuild.sh\x1b[0m  README.md  LICENSE\r\n",
        "NAME                      READY   STATUS    RESTARTS   AGE    IP           NODE\r\n",
        "nginx-7c5ddbdf54-x2x9k   1/1     Running   0          3d4h   10.42.0.17   node-1\r\n",
        "2026-11-28T17:46:01Z INFO request completed status=200 latency_ms=12 path=/v1/items\r\n",
        "Nov 28 17:46:02 node-1 sshd[4121]: Accepted publickey for alice from 10.0.0.5 port 52144 ssh2\r\n",
        "Nov 28 17:46:02 node-1 systemd[1]: Started session-42.scope - Session 42 of User alice.\r\n",
        "{\"level\":\"info\",\"ts\":1764351962.12,\"msg\":\"reconciled\",\"kind\":\"Deployment\",\"name\":\"web\"}\r\n",
        "10.42.0.1 - - [28/Nov/2026:17:46:03 +0000] \"GET /healthz HTTP/1.1\" 200 2 \"-\" \"kube-probe/1.31\"\r\n",
        "  Normal  Pulled   12s   kubelet  Container image \"registry.example.com/web:1.4.2\" already present\r\n",
        "fetching https://github.com/example/repo.git (secrets are not printed)\r\n",
        "root      1421  0.0  0.1  17420  9876 ?        Ss   17:40   0:00 /usr/sbin/sshd -D\r\n",
    ];
    let mut out = Vec::with_capacity(size);
    let mut i = 0;
    while out.len() < size {
        out.extend_from_slice(lines[i % lines.len()].as_bytes());
        i += 1;
    }
    out
}

fn dense_text(size: usize) -> Vec<u8> {
    let lines = [
        "export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\r\n",
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\r\n",
        "GITHUB_TOKEN=ghp_a1B2a1B2a1B2a1B2a1B2a1B2a1B2a1B2a1B2\r\n",
        "DATABASE_URL=postgres://app:s3cr3tpw@db.prod:5432/app\r\n",
        "token: eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJrdWJlcm5ldGVzIn0.c2lnbmF0dXJlc2ln\r\n",
        "drwxr-xr-x  2 alice alice  4096 Nov 28 17:46 src\r\n",
        "-----BEGIN RSA PRIVATE KEY-----\r\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\r\n-----END RSA PRIVATE KEY-----\r\n",
    ];
    let mut out = Vec::with_capacity(size);
    let mut i = 0;
    while out.len() < size {
        out.extend_from_slice(lines[i % lines.len()].as_bytes());
        i += 1;
    }
    out
}

/// Stream `text` through a fresh stream masker in 4 KiB reads; returns the
/// output length (so nothing is optimised away).
#[inline(never)]
fn stream_4k(m: &Masker, text: &[u8]) -> usize {
    let mut s = m.stream();
    let mut n = 0;
    for chunk in text.chunks(4096) {
        n += s.push(black_box(chunk)).bytes.len();
    }
    n += s.flush().bytes.len();
    n
}

#[inline(never)]
fn profile_loop(m: &Masker, text: &[u8], rounds: usize) -> usize {
    let mut n = 0;
    for _ in 0..rounds {
        n += stream_4k(m, text);
    }
    n
}

/// Nanoseconds this thread has run on a CPU (Linux schedstat), if known.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

fn bench(c: &mut Criterion, m: &Masker) {
    for (name, text) in [
        ("clean", clean_text(4 << 20)),
        ("secret-dense", dense_text(1 << 20)),
    ] {
        let mut g = c.benchmark_group(format!("mask/{name}"));
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.sample_size(20);
        g.bench_function("whole", |b| b.iter(|| black_box(m.mask(black_box(&text)))));
        g.bench_function("stream-4k", |b| b.iter(|| black_box(stream_4k(m, &text))));
        g.finish();
    }
}

fn main() {
    let m = match Masker::builtin() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("masker: {e}");
            std::process::exit(1);
        }
    };
    // The texts must be what they claim: clean text untouched, dense text
    // full of hits (a prefilter that lost a detector would make both fast).
    let clean = clean_text(64 << 10);
    let dense = dense_text(64 << 10);
    let (mc, md) = (m.mask(&clean), m.mask(&dense));
    if mc.bytes != clean || !mc.hits.is_empty() || md.hits.len() < dense.len() / 100 {
        eprintln!(
            "bench texts are wrong: clean changed={} hits={}, dense hits={}",
            mc.bytes != clean,
            mc.hits.len(),
            md.hits.len()
        );
        std::process::exit(1);
    }
    if let Ok(which) = std::env::var("MASK_PROFILE") {
        let (text, rounds) = match which.as_str() {
            "dense" => (dense_text(1 << 20), 2),
            _ => (clean_text(4 << 20), 4),
        };
        let rounds = std::env::var("MASK_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(rounds);
        let cpu0 = thread_cpu_ns();
        let n = profile_loop(&m, &text, rounds);
        let cpu = thread_cpu_ns().zip(cpu0).map(|(b, a)| b.saturating_sub(a));
        let bytes = text.len() * rounds;
        print!("MASK_PROFILE={which}: {bytes} bytes in, {n} bytes out");
        match cpu {
            // CPU time of this thread, not wall time: meaningful on a
            // machine shared with other builds.
            Some(ns) if ns > 0 => println!(", {:.3} GB/s of CPU time", bytes as f64 / ns as f64),
            _ => println!(),
        }
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &m);
    c.final_summary();
}
