//! Throughput of the forward relay alone (`tunnel::relay::relay`): a client
//! writes over loopback TCP into a listener whose connections are relayed to
//! a sink that only reads, so the figure is the relay's copy loop plus the
//! kernel's loopback, without SSH crypto. Run with `cargo bench --bench
//! relay`; prints MiB/s for `relay::BUF_SIZE`. `RELAY_BENCH_MIB` sets the
//! amount sent (default 512). The end-to-end `ssh -L` comparison with
//! OpenSSH is in `bench/`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Instant;

use sallyport::tunnel::relay::{BUF_SIZE, relay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn run(total: usize) -> f64 {
    let sink = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_addr = sink.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = sink.accept().await.unwrap();
            tokio::spawn(async move {
                let mut b = vec![0u8; 1 << 20];
                while s.read(&mut b).await.unwrap_or(0) > 0 {}
            });
        }
    });
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_addr = front.local_addr().unwrap();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (c, _) = front.accept().await.unwrap();
        let t = TcpStream::connect(sink_addr).await.unwrap();
        let o = relay(c, t, None::<futures::future::Pending<String>>).await;
        let _ = done_tx.send(o);
    });
    let mut c = TcpStream::connect(front_addr).await.unwrap();
    let chunk = vec![1u8; 1 << 20];
    let start = Instant::now();
    let mut sent = 0;
    while sent < total {
        c.write_all(&chunk).await.unwrap();
        sent += chunk.len();
    }
    c.shutdown().await.unwrap();
    // Counted once the relay has passed the last byte on (our EOF relayed).
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest).await;
    let outcome = done_rx.await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(outcome.bytes_up, sent as u64, "{outcome:?}");
    sent as f64 / secs / 1048576.0
}

fn main() {
    let mib: usize = std::env::var("RELAY_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Three runs: the machine is shared, so the spread matters.
    for i in 1..=3 {
        let rate = rt.block_on(run(mib * 1024 * 1024));
        println!(
            "relay BUF_SIZE={} KiB, {mib} MiB, run {i}: {rate:.0} MiB/s",
            BUF_SIZE / 1024
        );
    }
}
