//! What a consensus group costs: three nodes in this process, each with
//! its own RocksDB store in a temporary directory, linked over loopback.
//! A benchmark, not a test: it prints a table (docs/cluster.md "Scale").
//!
//! - one group, 1 and 16 concurrent writers, 128-byte and 1 KiB values:
//!   writes per second committed (majority on disk) and their latency;
//! - 10 and 100 groups, one writer each: writes per second over all of
//!   them, and fsyncs per committed write on the leader side;
//! - 200 idle groups: resident memory and CPU per group.
//!
//! `cargo bench -p junction-cluster --bench groups [-- --seconds N]`.
//! Every phase is bounded in time; the machine is shared, so compare
//! figures of one run with each other, not across runs.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use junction_cluster::{Command, Group, GroupId, Timing};

/// Groups started: each one's member on its leader, and the others.
type Started = (Vec<Group>, Vec<Group>);

/// Start `count` groups (ids from `first`) on every node; returns each
/// group's member on the node that leads it once elected.
async fn groups(c: &common::Local, first: u64, count: u64) -> Started {
    let mut all = Vec::new();
    for node in c.nodes.values() {
        for g in first..first + count {
            all.push(
                node.start_group(GroupId(g), &c.members)
                    .await
                    .expect("group"),
            );
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut leaders: Vec<Option<usize>> = vec![None; count as usize];
    while leaders.iter().any(Option::is_none) {
        assert!(Instant::now() < deadline, "groups did not elect leaders");
        for (i, group) in all.iter().enumerate() {
            if group.is_leader() {
                leaders[(group.id().0 - first) as usize] = Some(i);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut rest = Vec::new();
    let mut led = Vec::new();
    let picks: Vec<usize> = leaders.into_iter().flatten().collect();
    for (i, group) in all.into_iter().enumerate() {
        if picks.contains(&i) {
            led.push(group);
        } else {
            rest.push(group);
        }
    }
    (led, rest)
}

/// Writers on `groups` (each with `per_group` writers) for `seconds`:
/// (writes, sorted latencies in microseconds).
async fn run_writers(
    groups: &[Group],
    per_group: usize,
    value: usize,
    seconds: u64,
) -> (u64, Vec<u32>) {
    let stop = Arc::new(AtomicBool::new(false));
    let value = vec![7u8; value];
    let mut writers = Vec::new();
    for group in groups {
        for w in 0..per_group {
            let stop = Arc::clone(&stop);
            let value = value.clone();
            writers.push(async move {
                let mut latencies = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let key = format!("k/{w}/{}", n % 64).into_bytes();
                    group
                        .write(Command::Put {
                            key,
                            value: value.clone(),
                        })
                        .await
                        .expect("write");
                    latencies
                        .push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
                    n += 1;
                }
                latencies
            });
        }
    }
    let timer = {
        let stop = Arc::clone(&stop);
        async move {
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            stop.store(true, Ordering::Relaxed);
        }
    };
    let (all, ()) = tokio::join!(futures_util::future::join_all(writers), timer);
    let mut latencies: Vec<u32> = all.into_iter().flatten().collect();
    latencies.sort_unstable();
    (latencies.len() as u64, latencies)
}

fn pct(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|t| t.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// This process's CPU seconds (user + system).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after ")".
    (ticks(11) + ticks(12)) / 100.0
}

fn syncs(c: &common::Local) -> u64 {
    c.stores.iter().map(|s| s.stats().syncs).sum()
}

fn main() {
    let seconds: u64 = std::env::args()
        .skip_while(|a| a != "--seconds")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let c = common::start(3, &Timing::default()).await;
        println!("| scenario | writes/s | p50 µs | p99 µs | fsyncs per write (3 nodes) |");
        println!("|---|---:|---:|---:|---:|");
        // (label, first group id, groups, writers per group, value bytes)
        let scenarios = [
            ("1 group, 1 writer, 128 B", 1, 1, 1, 128),
            ("1 group, 16 writers, 128 B", 1, 1, 16, 128),
            ("1 group, 16 writers, 1024 B", 1, 1, 16, 1024),
            ("10 groups, 1 writer each, 128 B", 100, 10, 1, 128),
            ("100 groups, 1 writer each, 128 B", 1000, 100, 1, 128),
        ];
        let mut kept: Vec<(u64, Started)> = Vec::new();
        for (label, first, count, writers, value) in scenarios {
            if !kept.iter().any(|(f, _)| *f == first) {
                kept.push((first, groups(&c, first, count).await));
            }
            let led = &kept.iter().find(|(f, _)| *f == first).expect("started").1.0;
            let before = syncs(&c);
            let (n, lat) = run_writers(led, writers, value, seconds).await;
            let fsyncs = (syncs(&c) - before) as f64 / n.max(1) as f64;
            println!(
                "| {label} | {} | {} | {} | {fsyncs:.2} |",
                n / seconds,
                pct(&lat, 0.5),
                pct(&lat, 0.99)
            );
        }
        for (_, (led, rest)) in &kept {
            for group in led.iter().chain(rest) {
                group.shutdown().await;
            }
        }
        // Idle groups: memory and CPU each costs (3 members here), over
        // the metadata group alone.
        let cpu_base = {
            let before = cpu_seconds();
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            (cpu_seconds() - before) / seconds as f64
        };
        let rss_before = rss_bytes();
        let (idle_led, idle_rest) = groups(&c, 10_000, 200).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_after = rss_bytes();
        let cpu_before = cpu_seconds();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let cpu = (cpu_seconds() - cpu_before) / seconds as f64 - cpu_base;
        println!();
        println!("| idle groups | RSS per group (3 members) | CPU per group, % of a core |");
        println!("|---:|---:|---:|");
        println!(
            "| 200 | {} B | {:.3} |",
            rss_after.saturating_sub(rss_before) / 200,
            cpu.max(0.0) * 100.0 / 200.0
        );
        for group in idle_led.iter().chain(&idle_rest) {
            group.shutdown().await;
        }
        for node in c.nodes.values() {
            node.shutdown().await;
        }
    });
}
