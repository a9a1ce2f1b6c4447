//! Persistent publish throughput through the core, with and without group
//! commit: P concurrent publishers each publish persistent 1 KiB messages
//! to a durable queue on RocksDB, waiting for each receipt (as a publisher
//! with confirms, one message in flight, would). With group commit,
//! concurrent publishers share WAL syncs; without, every message pays one.
//!
//! Run: `cargo bench --bench core_publish` (add `-- --seconds N` to change
//! the time per case, default 3). Every case is bounded in time and count.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use junction_core::{Broker, BrokerConfig, Message, QueueDef};
use junction_store::{Store, StoreOptions};

/// Most messages one case publishes, whatever the time.
const MAX_MESSAGES: u64 = 200_000;

struct Outcome {
    messages: u64,
    elapsed: Duration,
    syncs: u64,
}

async fn run_case(publishers: usize, group_commit: bool, seconds: u64) -> Outcome {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open_rocksdb(
        dir.path(),
        StoreOptions {
            group_commit,
            ..StoreOptions::default()
        },
    )
    .expect("open store");
    let broker = Broker::open(store, BrokerConfig::default())
        .await
        .expect("open broker");
    broker
        .declare_queue("/", QueueDef::new("bench"), false)
        .await
        .expect("declare");
    let body = Bytes::from(vec![b'x'; 1024]);
    let sent = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..publishers {
        let broker = Arc::clone(&broker);
        let body = body.clone();
        let sent = Arc::clone(&sent);
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline && sent.fetch_add(1, Ordering::Relaxed) < MAX_MESSAGES {
                let msg = Message::new("", "bench", body.clone()).persistent();
                let p = broker.publish("/", msg).await.expect("publish");
                assert!(p.confirmed().await.expect("confirm"));
            }
        }));
    }
    for t in tasks {
        t.await.expect("publisher");
    }
    let elapsed = start.elapsed();
    let stats = broker.store().stats();
    let messages = broker.stats().queues[0].ready;
    broker.shutdown().await.expect("shutdown");
    Outcome {
        messages,
        elapsed,
        syncs: stats.syncs,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "persistent 1 KiB publishes to one durable queue, each publisher waits for its receipt"
    );
    println!(
        "| publishers | group commit msgs/s | syncs | one sync per message msgs/s | syncs | ratio |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for publishers in [1, 8, 64] {
        let with = rt.block_on(run_case(publishers, true, seconds));
        let without = rt.block_on(run_case(publishers, false, seconds));
        let rate = |o: &Outcome| o.messages as f64 / o.elapsed.as_secs_f64();
        println!(
            "| {publishers} | {:.0} | {} | {:.0} | {} | {:.2}x |",
            rate(&with),
            with.syncs,
            rate(&without),
            without.syncs,
            rate(&with) / rate(&without)
        );
    }
}
