//! Line tracker cost on the output path (`cargo bench --bench lineguard`):
//! every byte a pty shell prints also goes through the tracker's terminal
//! model, so its throughput bounds the guarded shell's output rate.
//! Criterion reports MB/s for clean terminal text in 4 KiB reads, as a
//! command's output (scanned for prompt marks, not modelled), and for
//! reference the `vt100` terminal model alone (what modelling it would cost).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sallyport::guard::line::LineTracker;
use std::hint::black_box;

fn clean_text(size: usize) -> Vec<u8> {
    let lines = [
        "drwxr-xr-x  2 alice alice  4096 Nov 28 17:46 src\r\n",
        "-rw-r--r--  1 alice alice 18231 Nov 28 17:40 Cargo.lock\r\n",
        "\x1b[01;34mtarget\x1b[0m  \x1b[01;32mbuild.sh\x1b[0m  README.md  LICENSE\r\n",
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

fn bench(c: &mut Criterion) {
    let text = clean_text(4 << 20);
    let mut g = c.benchmark_group("lineguard/output");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.sample_size(10);
    g.bench_function("stream-4k", |b| {
        b.iter(|| {
            // A prompt, then a command that prints a lot.
            let mut t = LineTracker::new(50, 160);
            t.output(b"\x1b]133;A\x07$ \x1b]133;B\x07cat big\r\n\x1b]133;C\x07");
            for chunk in text.chunks(4096) {
                t.output(black_box(chunk));
            }
            black_box(t.line())
        })
    });
    g.bench_function("vt100-only", |b| {
        b.iter(|| {
            let mut p = vt100::Parser::new(
                std::num::NonZeroU16::MIN.saturating_add(49),
                std::num::NonZeroU16::MIN.saturating_add(159),
                0,
            );
            for chunk in text.chunks(4096) {
                p.process(black_box(chunk));
            }
            black_box(p.screen().cursor_position())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
