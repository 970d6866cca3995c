//! Masking throughput (`cargo bench --bench mask`): clean terminal text and
//! secret-dense text with every built-in detector on, whole-buffer and
//! streamed in 4 KiB reads (a typical pty read). Criterion reports MB/s.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sallyport::mask::Masker;
use std::hint::black_box;

fn clean_text(size: usize) -> Vec<u8> {
    let lines = [
        "drwxr-xr-x  2 alice alice  4096 Nov 28 17:46 src\r\n",
        "-rw-r--r--  1 alice alice 18231 Nov 28 17:40 Cargo.lock\r\n",
        "commit 3f786850e387550fdab836ed7e6dc881de23001b\r\n",
        "\x1b[01;34mtarget\x1b[0m  \x1b[01;32mbuild.sh\x1b[0m  README.md  LICENSE\r\n",
        "nginx-7c5ddbdf54-x2x9k   1/1     Running   0          3d4h   10.42.0.17   node-1\r\n",
        "2026-11-28T17:46:01Z INFO request completed status=200 latency_ms=12 path=/v1/items\r\n",
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

fn bench(c: &mut Criterion) {
    let Ok(m) = Masker::builtin() else {
        return;
    };
    for (name, text) in [
        ("clean", clean_text(4 << 20)),
        ("secret-dense", dense_text(1 << 20)),
    ] {
        let mut g = c.benchmark_group(format!("mask/{name}"));
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.sample_size(20);
        g.bench_function("whole", |b| b.iter(|| black_box(m.mask(black_box(&text)))));
        g.bench_function("stream-4k", |b| {
            b.iter(|| {
                let mut s = m.stream();
                let mut n = 0;
                for chunk in text.chunks(4096) {
                    n += s.push(black_box(chunk)).bytes.len();
                }
                n += s.flush().bytes.len();
                black_box(n)
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
