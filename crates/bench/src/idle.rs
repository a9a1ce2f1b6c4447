//! The idle scenario: open `--connections` connections of `--proto`, hold
//! them until the `--duration` cap, read the broker's RSS while they are
//! still open, then close them. The broker's RSS growth divided by the
//! connections opened is the memory one idle connection costs it.

use crate::cli::Args;
use crate::clients::{Clients, Held};
use crate::error::BenchError;
use crate::report::{self, Report};
use crate::run::{CONNECT_CONCURRENCY, Outcome, Probe, join_held};
use futures_util::{StreamExt, stream};
use std::time::{Duration, Instant};
use tokio::time::timeout_at;
use tokio_util::sync::CancellationToken;

/// Runs the idle scenario; `started` is when the run began (the cap counts
/// from there).
pub async fn run(
    args: &Args,
    clients: &Clients,
    probe: Probe,
    started: Instant,
) -> Result<Outcome, BenchError> {
    let proto = args.proto;
    let deadline = tokio::time::Instant::from_std(started + args.duration());
    let cancel = CancellationToken::new();
    let mut opening = stream::iter(0..args.connections)
        .map(|index| clients.idle(proto, index, cancel.clone()))
        .buffer_unordered(CONNECT_CONCURRENCY);
    let mut held: Vec<Held> = Vec::with_capacity(args.connections as usize);
    let mut next_report = started + Duration::from_secs(1);
    loop {
        match timeout_at(deadline, opening.next()).await {
            Ok(Some(Ok(h))) => held.push(h),
            Ok(Some(Err(e))) => {
                cancel.cancel();
                drop(opening);
                let _ = join_held(held).await;
                return Err(e);
            }
            Ok(None) => break,
            Err(_) => {
                tracing::warn!(
                    opened = held.len(),
                    asked = args.connections,
                    "duration reached before every connection was open"
                );
                break;
            }
        }
        if !args.quiet && Instant::now() >= next_report {
            eprintln!(
                "[{}s] connections={}",
                started.elapsed().as_secs(),
                held.len()
            );
            next_report += Duration::from_secs(1);
        }
    }
    drop(opening);
    let connections = held.len() as u64;
    if !args.quiet {
        eprintln!(
            "[{}s] connections={connections} (all open, holding)",
            started.elapsed().as_secs()
        );
    }
    tokio::time::sleep_until(deadline).await;

    // Read the broker while every connection is still open.
    let mut report = Report {
        scenario: args.scenario,
        pub_proto: proto,
        sub_proto: proto,
        publishers: None,
        consumers: None,
        size: None,
        sent: None,
        expected: None,
        received: None,
        lost: None,
        duplicated: None,
        reordered: None,
        elapsed_s: 0.0,
        msgs_per_sec: None,
        bytes_per_sec: None,
        latency_us: None,
        broker_rss_kb: None,
        broker_rss_start_kb: None,
        broker_cpu_s: None,
        bench_cpu_s: None,
        connections: Some(connections),
        rss_per_connection_bytes: None,
        mqtt_below_qos: None,
        warmup_s: None,
        measure_s: None,
        measured: None,
        background_subs: None,
        queues: None,
        misrouted: None,
        connect_s: None,
        connects_per_sec: None,
        connect_failed: None,
        session_missing: None,
    };
    probe.finish(&mut report);
    report.rss_per_connection_bytes = match (report.broker_rss_start_kb, report.broker_rss_kb) {
        (Some(start), Some(end)) if connections > 0 => {
            let growth = (end as f64 - start as f64) * 1024.0;
            Some(report::round3(growth / connections as f64))
        }
        _ => None,
    };
    cancel.cancel();
    let failure = join_held(held).await;
    report.elapsed_s = report::round3(started.elapsed().as_secs_f64());
    Ok(Outcome { report, failure })
}
