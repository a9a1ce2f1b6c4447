//! One run of a message scenario (fan-in, fan-out, queue), start to end:
//!
//! 1. consumers connect and subscribe (publishing waits for every SUBACK,
//!    consume-ok or SUBSCRIBE receipt, so nothing is lost to a late
//!    subscription);
//! 2. publishers connect and publish until their count or the `--duration`
//!    cap, then wait up to `--drain-timeout` for outstanding acks;
//! 3. consumers get up to `--drain-timeout` more for the rest;
//! 4. everything is cancelled and closed, each close under its own timeout.
//!
//! A progress line goes to stderr every second. Failing to set up (a
//! connection refused, a subscription denied) is an error with no result;
//! a failure mid-run still yields the result, plus the failure.

use crate::address::{self, SubSource};
use crate::cli::{Args, Proto, Scenario};
use crate::clients::{Clients, Held};
use crate::collector::Collector;
use crate::error::BenchError;
use crate::idle;
use crate::load::{CLOSE_TIMEOUT, PubPlan};
use crate::procfs::{self, Sample};
use crate::report::{self, Report};
use crate::stats::Latency;
use crate::tracker::{Delivery, PublisherIx, Tracker};
use futures_util::{StreamExt, TryStreamExt, stream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// Connections opened at once while setting up, so that a thousand
/// consumers do not hit the broker's accept queue in one burst.
pub const CONNECT_CONCURRENCY: usize = 32;

/// How often the drain phase checks whether everything has arrived.
const DRAIN_POLL: Duration = Duration::from_millis(5);

/// A finished run: the report, and what went wrong mid-run if anything did.
#[derive(Debug)]
pub struct Outcome {
    /// The RESULT line's content.
    pub report: Report,
    /// The first failure after setup, if any (the run still has a result).
    pub failure: Option<BenchError>,
}

/// Broker and generator resource readings around a run.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    /// The broker at the start, when `--broker-pid` is given.
    broker: Option<Sample>,
    /// This process at the start.
    bench: Option<Sample>,
    /// `--broker-pid`.
    pid: Option<u32>,
}

impl Probe {
    /// Takes the start readings; an unreadable broker pid is a usage error.
    pub fn start(pid: Option<u32>) -> Result<Self, BenchError> {
        let broker = match pid {
            Some(pid) => Some(procfs::sample(pid).map_err(|e| {
                BenchError::Usage(format!("--broker-pid {pid}: cannot read /proc/{pid}: {e}"))
            })?),
            None => None,
        };
        Ok(Probe {
            broker,
            bench: procfs::sample_self().ok(),
            pid,
        })
    }

    /// The same probe with its CPU readings taken again now (RSS still
    /// counts from the start).
    pub fn restart_cpu(self) -> Self {
        let now = Probe::start(self.pid).ok();
        let broker = match (self.broker, now.and_then(|p| p.broker)) {
            (Some(start), Some(again)) => Some(Sample {
                rss_kb: start.rss_kb,
                ..again
            }),
            (start, _) => start,
        };
        Probe {
            broker,
            bench: now.and_then(|p| p.bench).or(self.bench),
            pid: self.pid,
        }
    }

    /// Takes the end readings now: for a run whose connections' teardown
    /// (a million subscriptions removed, say) is not the traffic's cost.
    pub fn stop(&self) -> Stopped {
        Stopped {
            start: *self,
            broker: self.pid.and_then(|pid| procfs::sample(pid).ok()),
            bench: procfs::sample_self().ok(),
        }
    }

    /// Fills the resource fields of `report` from readings taken now.
    pub fn finish(&self, report: &mut Report) {
        self.stop().fill(report);
    }
}

/// A [`Probe`] with its end readings.
#[derive(Debug, Clone, Copy)]
pub struct Stopped {
    start: Probe,
    broker: Option<Sample>,
    bench: Option<Sample>,
}

impl Stopped {
    /// Fills the resource fields of `report`.
    pub fn fill(&self, report: &mut Report) {
        let start = &self.start;
        report.broker_rss_start_kb = start.broker.map(|s| s.rss_kb);
        report.broker_rss_kb = self.broker.map(|s| s.rss_kb);
        report.broker_cpu_s = match (start.broker, self.broker) {
            (Some(a), Some(b)) => Some(report::round3(a.cpu_s_until(&b))),
            _ => None,
        };
        report.bench_cpu_s = match (start.bench, self.bench) {
            (Some(a), Some(b)) => Some(report::round3(a.cpu_s_until(&b))),
            _ => None,
        };
    }
}

/// Runs the scenario `args` asks for.
pub async fn run(args: &Args) -> Result<Outcome, BenchError> {
    args.validate()?;
    let started = Instant::now();
    let probe = Probe::start(args.broker_pid)?;
    let run_id = Collector::fresh_base_id();
    let clients = Clients::from_args(args, run_id)?;
    if args.scenario == Scenario::Idle {
        return idle::run(args, &clients, probe, started).await;
    }
    if args.scenario == Scenario::SubscribeStorm {
        return crate::storm::run(args, &clients, probe, started).await;
    }
    if args.scenario.is_connection_storm() {
        return crate::connect_storm::run(args, &clients, probe, started).await;
    }
    let (target, source) = if args.queues > 0 {
        address::queue_set(&args.queue, args.queues, args.consumer_connections())
    } else {
        address::route(
            args.scenario,
            args.pub_proto(),
            args.sub_proto(),
            &args.topic,
            &args.queue,
        )?
    };
    let delivery = match args.scenario {
        Scenario::Queue => Delivery::Competing,
        _ => Delivery::Broadcast,
    };
    let tracker = Tracker::new(
        delivery,
        args.publishers as usize,
        args.tracked_consumers() as usize,
        args.count,
    );
    let mut collector = Collector::new(run_id, args.publishers, tracker, Latency::new()?)
        .with_max_lag(args.max_lag)
        .with_queues(args.queues);
    if let Some((warmup, measure)) = args.window() {
        collector = collector.with_window(warmup, measure);
    }
    let collector = Arc::new(collector);
    let stop_at = started + args.duration();
    let cancel = CancellationToken::new();

    let (background, background_granted) = match start_background(args, &clients, &cancel).await {
        Ok(b) => b,
        Err(e) => {
            cancel.cancel();
            return Err(e);
        }
    };
    // CPU from here: the background subscriptions' set-up is not the
    // traffic's cost.
    let probe = if args.background_subs > 0 {
        probe.restart_cpu()
    } else {
        probe
    };
    let consumers = match start_consumers(args, &clients, &source, &collector, &cancel).await {
        Ok(held) => held,
        Err(e) => {
            cancel.cancel();
            return Err(e);
        }
    };
    let progress =
        (!args.quiet).then(|| spawn_progress(Arc::clone(&collector), started, cancel.clone()));

    let publishers: Vec<_> = (0..args.publishers)
        .map(|index| {
            let plan = PubPlan {
                index: PublisherIx(index),
                count: args.count,
                size: args.size,
                rate: args.rate,
                inflight: args.inflight_for(args.pub_proto()),
                stop_at,
                drain: args.drain_timeout(),
            };
            let clients = clients.clone();
            let target = target.clone();
            let collector = Arc::clone(&collector);
            tokio::spawn(async move { clients.publish(&target, &plan, collector).await })
        })
        .collect();
    let mut failure = None;
    let mut setup_failure = None;
    for result in futures_util::future::join_all(publishers).await {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e @ BenchError::Connect { .. })) => {
                setup_failure.get_or_insert(e);
            }
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(join) => {
                failure.get_or_insert(BenchError::Internal(join.to_string()));
            }
        }
    }
    if let Some(e) = setup_failure {
        cancel.cancel();
        return Err(e);
    }

    let drain_until = Instant::now() + args.drain_timeout();
    while !collector.complete()
        && Instant::now() < drain_until
        && !consumers.iter().all(|h| h.is_finished())
    {
        tokio::time::sleep(DRAIN_POLL).await;
    }
    // The traffic's cost ends here: closing the connections (removing
    // every background subscription) is not part of it.
    let stopped = probe.stop();
    cancel.cancel();
    if let Some(e) = join_held(consumers).await {
        failure.get_or_insert(e);
    }
    if let Some(e) = join_held(background).await {
        failure.get_or_insert(e);
    }
    if let Some(progress) = progress {
        let _ = progress.await;
    }

    let snap = collector.snapshot();
    if snap.strays > 0 {
        tracing::warn!(
            strays = snap.strays,
            "ignored messages that were not this run's"
        );
    }
    if snap.misrouted > 0 {
        tracing::warn!(
            misrouted = snap.misrouted,
            "deliveries came from a queue their message was not sent to"
        );
    }
    let (msgs_per_sec, bytes_per_sec) = report::rates(snap.measured, args.size, snap.window_s);
    let mut report = Report {
        scenario: args.scenario,
        pub_proto: args.pub_proto(),
        sub_proto: args.sub_proto(),
        publishers: Some(args.publishers),
        consumers: Some(args.consumer_connections()),
        size: Some(args.size),
        sent: Some(snap.sent),
        expected: Some(snap.expected),
        received: Some(snap.counts.received),
        lost: Some(snap.lost),
        duplicated: Some(snap.counts.duplicated),
        reordered: Some(snap.counts.reordered),
        elapsed_s: report::round3(started.elapsed().as_secs_f64()),
        msgs_per_sec,
        bytes_per_sec,
        latency_us: snap.latency,
        broker_rss_kb: None,
        broker_rss_start_kb: None,
        broker_cpu_s: None,
        bench_cpu_s: None,
        connections: Some(u64::from(args.publishers) + u64::from(args.consumer_connections())),
        rss_per_connection_bytes: None,
        mqtt_below_qos: (args.sub_proto() == Proto::Mqtt).then_some(snap.below_qos),
        warmup_s: args.window().map(|(w, _)| w.as_secs_f64()),
        measure_s: args
            .window()
            .map(|_| snap.window_s.map_or(0.0, report::round3)),
        measured: Some(snap.measured),
        background_subs: (args.background_subs > 0).then_some(background_granted),
        queues: (args.queues > 0).then_some(args.queues),
        misrouted: (args.queues > 0).then_some(snap.misrouted),
        connect_s: None,
        connects_per_sec: None,
        connect_failed: None,
        session_missing: None,
    };
    stopped.fill(&mut report);
    Ok(Outcome { report, failure })
}

/// Makes `--background-subs` subscriptions over `--background-clients`
/// MQTT clients, all at once; returns the holding tasks and how many
/// were granted.
async fn start_background(
    args: &Args,
    clients: &Clients,
    cancel: &CancellationToken,
) -> Result<(Vec<Held>, u64), BenchError> {
    if args.background_subs == 0 {
        return Ok((Vec::new(), 0));
    }
    if args.sub_proto() != Proto::Mqtt && args.pub_proto() != Proto::Mqtt {
        return Err(BenchError::Usage(
            "--background-subs are MQTT subscriptions (an MQTT side is needed)".into(),
        ));
    }
    let n = u64::from(args.background_clients);
    let first = args.topic.split('/').next().unwrap_or("bench").to_string();
    let stop_at = tokio::time::Instant::now() + args.duration();
    let window = args.inflight_for(Proto::Mqtt);
    let tasks: Vec<_> = (0..args.background_clients)
        .map(|index| {
            // The remainder goes to the first clients.
            let filters =
                args.background_subs / n + u64::from(u64::from(index) < args.background_subs % n);
            let (settings, first, cancel) = (clients.mqtt.clone(), first.clone(), cancel.clone());
            tokio::spawn(async move {
                crate::mqtt::background(&settings, &first, index, filters, window, stop_at, cancel)
                    .await
            })
        })
        .collect();
    let mut held = Vec::with_capacity(tasks.len());
    let mut granted = 0;
    let mut failure = None;
    for t in tasks {
        match t.await {
            Ok(Ok((h, g))) => {
                held.push(h);
                granted += g;
            }
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(join) => {
                failure.get_or_insert(BenchError::Internal(join.to_string()));
            }
        }
    }
    if let Some(e) = failure {
        cancel.cancel();
        let _ = join_held(held).await;
        return Err(e);
    }
    tracing::info!(granted, "background subscriptions in place");
    Ok((held, granted))
}

/// Connects and subscribes every consumer, a few at a time.
async fn start_consumers(
    args: &Args,
    clients: &Clients,
    source: &SubSource,
    collector: &Arc<Collector>,
    cancel: &CancellationToken,
) -> Result<Vec<Held>, BenchError> {
    stream::iter(0..args.consumer_connections())
        .map(|index| clients.consume(source, index, Arc::clone(collector), cancel.clone()))
        .buffer_unordered(CONNECT_CONCURRENCY)
        .try_collect()
        .await
}

/// Waits for cancelled consumer or idle tasks to close, together bounded by
/// a few close timeouts; returns the first failure any reported.
pub async fn join_held(held: Vec<Held>) -> Option<BenchError> {
    let joined = timeout(CLOSE_TIMEOUT * 2, futures_util::future::join_all(held)).await;
    let Ok(results) = joined else {
        return Some(BenchError::Timeout("connections did not close".into()));
    };
    results.into_iter().find_map(|r| match r {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(join) => Some(BenchError::Internal(join.to_string())),
    })
}

/// Prints a progress line to stderr every second until `cancel`.
fn spawn_progress(
    collector: Arc<Collector>,
    started: Instant,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = tick.tick() => {
                    let line = report::progress_line(started.elapsed().as_secs(), &collector.snapshot());
                    eprintln!("{line}");
                }
            }
        }
    })
}
