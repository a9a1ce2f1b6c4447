//! The MQTT connection storms: how fast a broker takes connections, not
//! messages.
//!
//! - `connect-storm`: `--connections` clients connect with a clean
//!   session, at most `--connect-concurrency` between TCP connect and
//!   CONNACK at once. Measured from the first connect to the last CONNACK;
//!   the broker's RSS is read with every connection still open (its CPU
//!   counts from the start), then all disconnect.
//! - `reconnect-storm`: `--connections` clients with persistent sessions
//!   (clean session false; v5 clean start false with a session expiry)
//!   connect, subscribe one filter each (`<topic>/<index>`) and disconnect.
//!   Once the broker has gone quiet, all reconnect at once, and only that
//!   phase is measured (rate, broker CPU from its start, RSS with every
//!   connection open); each CONNACK without session present counts in
//!   `session_missing`. Then all disconnect, and every session is removed
//!   by a clean-session connect of the same client id, so runs do not pile
//!   sessions up.
//!
//! Client ids carry the run id, so no run meets another's sessions. A
//! connection that fails is counted (`connect_failed`), not fatal: the
//! storm goes on, and the first failure makes the run exit 3 after its
//! RESULT line. Every phase is bounded by the `--duration` cap (the
//! clean-up by one more) and each connection by the connect timeout.

use crate::cli::{Args, Proto, Scenario};
use crate::clients::{Clients, Held};
use crate::error::BenchError;
use crate::mqtt;
use crate::procfs;
use crate::report::{self, Report};
use crate::run::{Outcome, Probe, join_held};
use futures_util::{StreamExt, stream};
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::time::timeout_at;
use tokio_util::sync::CancellationToken;

/// Longest wait for the broker to go quiet between the reconnect storm's
/// set-up and its measured phase (it may still be closing the set-up's
/// connections).
const QUIET_CAP: Duration = Duration::from_secs(20);

/// How often the quiet check samples the broker's CPU time.
const QUIET_SAMPLE: Duration = Duration::from_millis(250);

/// At most this much broker CPU per sample counts as quiet (8 % of a core).
const QUIET_CPU_S: f64 = 0.02;

/// Runs the storm `args.scenario` names; `started` is when the run began
/// (the cap counts from there).
pub async fn run(
    args: &Args,
    clients: &Clients,
    probe: Probe,
    started: Instant,
) -> Result<Outcome, BenchError> {
    match args.scenario {
        Scenario::ConnectStorm => connect_storm(args, clients, probe, started).await,
        Scenario::ReconnectStorm => reconnect_storm(args, clients, probe, started).await,
        other => Err(BenchError::Internal(format!(
            "not a connection storm: {other:?}"
        ))),
    }
}

/// Extra passes an unmeasured phase (the reconnect storm's set-up and
/// clean-up) makes over the clients that failed, a second apart: a broker
/// busy with the storm may refuse (server busy) or answer late.
const RETRY_PASSES: usize = 2;

/// What one phase of a storm got.
struct Phase<T> {
    /// What each connection that succeeded returned, in completion order.
    done: Vec<T>,
    /// The clients that failed or were not tried before the deadline, in
    /// the order asked.
    failed: Vec<u32>,
    /// Why the first one failed (or that the deadline came).
    first_error: Option<BenchError>,
    /// From the first connect to the last answer (or the deadline).
    elapsed: Duration,
}

/// Runs `connect` for every index, at most `concurrency` at once, until all
/// have answered or `deadline`; prints `[Ns] <label>=<done>` every second
/// unless `quiet`.
async fn phase<T, F, Fut>(
    indices: Vec<u32>,
    concurrency: usize,
    deadline: Instant,
    label: &str,
    quiet: bool,
    connect: F,
) -> Phase<T>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, BenchError>>,
{
    let asked = indices.len();
    let started = Instant::now();
    let mut next_report = started + Duration::from_secs(1);
    let mut connect = connect;
    // Which positions of `indices` succeeded.
    let mut succeeded = vec![false; asked];
    let mut pending = stream::iter(indices.iter().copied().enumerate())
        .map(|(at, index)| {
            let connecting = connect(index);
            async move { (at, connecting.await) }
        })
        .buffer_unordered(concurrency.max(1));
    let mut done = Vec::with_capacity(asked);
    let mut errors = 0usize;
    let mut first_error = None;
    loop {
        match timeout_at(deadline.into(), pending.next()).await {
            Ok(Some((at, Ok(t)))) => {
                done.push(t);
                if let Some(ok) = succeeded.get_mut(at) {
                    *ok = true;
                }
            }
            Ok(Some((_, Err(e)))) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
            Ok(None) => break,
            Err(_) => {
                let untried = asked - done.len() - errors;
                tracing::warn!(label, done = done.len(), untried, "the --duration cap came");
                first_error.get_or_insert(BenchError::Timeout(format!(
                    "{label}: {untried} of {asked} not done before the --duration cap"
                )));
                break;
            }
        }
        if !quiet && Instant::now() >= next_report {
            eprintln!("[{}s] {label}={}", started.elapsed().as_secs(), done.len());
            next_report += Duration::from_secs(1);
        }
    }
    let elapsed = started.elapsed();
    drop(pending);
    if !quiet {
        eprintln!(
            "{label}: {} of {asked} in {:.3}s",
            done.len(),
            elapsed.as_secs_f64()
        );
    }
    let failed = indices
        .iter()
        .zip(&succeeded)
        .filter(|(_, ok)| !**ok)
        .map(|(index, _)| *index)
        .collect();
    Phase {
        failed,
        done,
        first_error,
        elapsed,
    }
}

/// An unmeasured phase: [`phase`], then up to [`RETRY_PASSES`] more over
/// the clients that failed, a second apart, all before `deadline`. The
/// result holds every success; `failed` and `first_error` are the last
/// pass's.
async fn phase_with_retries<T, F, Fut>(
    indices: Vec<u32>,
    concurrency: usize,
    deadline: Instant,
    label: &str,
    quiet: bool,
    mut connect: F,
) -> Phase<T>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, BenchError>>,
{
    let mut all = phase(indices, concurrency, deadline, label, quiet, &mut connect).await;
    for pass in 1..=RETRY_PASSES {
        if all.failed.is_empty() || Instant::now() + Duration::from_secs(1) >= deadline {
            break;
        }
        tracing::warn!(
            label,
            failed = all.failed.len(),
            pass,
            first_error = %all.first_error.as_ref().map(ToString::to_string).unwrap_or_default(),
            "trying the failed ones again"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let again = std::mem::take(&mut all.failed);
        let retry = phase(again, concurrency, deadline, label, quiet, &mut connect).await;
        all.done.extend(retry.done);
        all.failed = retry.failed;
        all.first_error = retry.first_error;
        all.elapsed += retry.elapsed;
    }
    all
}

/// The measured phase's figures in a blank report of `args.scenario`.
fn storm_report(args: &Args, opened: u64, elapsed: Duration, failed: u64) -> Report {
    let seconds = elapsed.as_secs_f64();
    Report {
        connections: Some(opened),
        connect_s: Some(report::round3(seconds)),
        connects_per_sec: report::per_sec(opened, seconds),
        connect_failed: Some(failed),
        ..Report::blank(args.scenario, Proto::Mqtt, Proto::Mqtt)
    }
}

async fn connect_storm(
    args: &Args,
    clients: &Clients,
    probe: Probe,
    started: Instant,
) -> Result<Outcome, BenchError> {
    let settings = &clients.mqtt;
    let cancel = CancellationToken::new();
    let storm = phase(
        (0..args.connections).collect(),
        args.connect_concurrency as usize,
        started + args.duration(),
        "connected",
        args.quiet,
        |index| mqtt::storm_connect(settings, index, cancel.clone()),
    )
    .await;
    let opened = storm.done.len() as u64;
    let mut report = storm_report(args, opened, storm.elapsed, storm.failed.len() as u64);
    // Read the broker with every connection still open.
    probe.finish(&mut report);
    cancel.cancel();
    let closed = join_held(storm.done).await;
    report.elapsed_s = report::round3(started.elapsed().as_secs_f64());
    Ok(Outcome {
        report,
        failure: storm.first_error.or(closed),
    })
}

async fn reconnect_storm(
    args: &Args,
    clients: &Clients,
    probe: Probe,
    started: Instant,
) -> Result<Outcome, BenchError> {
    let settings = &clients.mqtt;
    let concurrency = args.connect_concurrency as usize;
    let deadline = started + args.duration();
    let topic = args.topic.as_str();

    // 1. Every client makes its session and subscription, then leaves
    // (not measured: failures are tried again).
    let sessions = phase_with_retries(
        (0..args.connections).collect(),
        concurrency,
        deadline,
        "sessions",
        args.quiet,
        |index| async move {
            let filter = format!("{topic}/{index}");
            mqtt::open_session(settings, index, &filter)
                .await
                .map(|present| (index, present))
        },
    )
    .await;
    let leftovers = sessions.done.iter().filter(|(_, present)| *present).count();
    if leftovers > 0 {
        tracing::warn!(leftovers, "new sessions said session present");
    }
    let mut with_session: Vec<u32> = sessions.done.iter().map(|(i, _)| *i).collect();
    with_session.sort_unstable();

    // 2. The broker finishes with the set-up before the measured phase.
    let quiet_cap = QUIET_CAP.min(deadline.saturating_duration_since(Instant::now()));
    let waited = broker_quiet(args.broker_pid, quiet_cap).await;
    if !args.quiet {
        eprintln!("broker quiet after {:.2}s", waited.as_secs_f64());
    }
    let probe = probe.restart_cpu();

    // 3. Measured: every client with a session reconnects.
    let cancel = CancellationToken::new();
    let reconnect = phase(
        with_session,
        concurrency,
        deadline,
        "reconnected",
        args.quiet,
        |index| mqtt::resume_session(settings, index, cancel.clone()),
    )
    .await;
    let (held, present): (Vec<Held>, Vec<bool>) = reconnect.done.into_iter().unzip();
    let opened = held.len() as u64;
    let mut report = storm_report(
        args,
        opened,
        reconnect.elapsed,
        (sessions.failed.len() + reconnect.failed.len()) as u64,
    );
    report.session_missing = Some(session_missing(&present));
    probe.finish(&mut report);
    cancel.cancel();
    let closed = join_held(held).await;

    // 4. Clean-up, not measured: a clean-session connect of every client
    // id removes its session (even where the set-up did not finish);
    // failures are tried again.
    let removed = phase_with_retries(
        (0..args.connections).collect(),
        concurrency,
        Instant::now() + args.duration(),
        "sessions removed",
        args.quiet,
        |index| mqtt::end_session(settings, index),
    )
    .await;
    let not_removed = removed.failed.len();
    let cleanup_failure = removed.first_error.map(|e| {
        BenchError::protocol(
            Proto::Mqtt,
            format!(
                "{not_removed} of {} persistent sessions may be left on the broker: {e}",
                args.connections
            ),
        )
    });
    report.elapsed_s = report::round3(started.elapsed().as_secs_f64());
    Ok(Outcome {
        report,
        failure: sessions
            .first_error
            .or(reconnect.first_error)
            .or(closed)
            .or(cleanup_failure),
    })
}

/// Reconnects whose CONNACK did not say session present.
fn session_missing(present: &[bool]) -> u64 {
    present.iter().filter(|p| !**p).count() as u64
}

/// Waits until broker `pid` uses at most [`QUIET_CPU_S`] of CPU in a
/// [`QUIET_SAMPLE`], or `cap` passed; without a pid, one sample's time.
/// Returns the wait.
async fn broker_quiet(pid: Option<u32>, cap: Duration) -> Duration {
    let started = Instant::now();
    let Some(mut prev) = pid.and_then(|pid| procfs::sample(pid).ok()) else {
        tokio::time::sleep(QUIET_SAMPLE.min(cap)).await;
        return started.elapsed();
    };
    while started.elapsed() < cap {
        tokio::time::sleep(QUIET_SAMPLE).await;
        let Some(now) = pid.and_then(|pid| procfs::sample(pid).ok()) else {
            break;
        };
        if prev.cpu_s_until(&now) <= QUIET_CPU_S {
            break;
        }
        prev = now;
    }
    started.elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reconnects_without_session_present_count() {
        assert_eq!(session_missing(&[true, false, true, false, false]), 3);
        assert_eq!(session_missing(&[true; 4]), 0);
        assert_eq!(session_missing(&[]), 0);
    }

    #[tokio::test]
    async fn a_phase_counts_failures_and_keeps_going() {
        let deadline = Instant::now() + Duration::from_secs(10);
        let p = phase((0..10).collect(), 3, deadline, "t", true, |i| async move {
            if i % 4 == 1 {
                Err(BenchError::Timeout(format!("client {i}")))
            } else {
                Ok(i * 10)
            }
        })
        .await;
        let mut done = p.done.clone();
        done.sort_unstable();
        // 1, 5 and 9 fail.
        assert_eq!(done, [0, 20, 30, 40, 60, 70, 80]);
        assert_eq!(p.failed, [1, 5, 9]);
        assert!(matches!(p.first_error, Some(BenchError::Timeout(_))));
    }

    #[tokio::test]
    async fn a_phase_stops_at_its_deadline_and_counts_the_rest_as_failed() {
        let deadline = Instant::now() + Duration::from_millis(200);
        let p = phase((0..5).collect(), 2, deadline, "t", true, |i| async move {
            if i >= 2 {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            Ok::<u32, BenchError>(i)
        })
        .await;
        let mut done = p.done.clone();
        done.sort_unstable();
        assert_eq!(done, [0, 1]);
        assert_eq!(p.failed, [2, 3, 4]);
        assert!(p.elapsed < Duration::from_secs(10), "{:?}", p.elapsed);
        assert!(
            matches!(&p.first_error, Some(BenchError::Timeout(m)) if m == "t: 3 of 5 not done before the --duration cap"),
            "{:?}",
            p.first_error.as_ref().map(ToString::to_string)
        );
    }

    #[tokio::test]
    async fn an_unmeasured_phase_tries_the_failed_ones_again() {
        let deadline = Instant::now() + Duration::from_secs(30);
        // Clients 3 and 4 are refused the first time, 4 the second time
        // too; 7 always.
        let mut tries = std::collections::HashMap::<u32, u32>::new();
        let p = phase_with_retries((0..8).collect(), 4, deadline, "t", true, |i| {
            let n = tries.entry(i).or_insert(0);
            *n += 1;
            let refused = i == 7 || (i == 3 && *n == 1) || (i == 4 && *n <= 2);
            async move {
                if refused {
                    Err(BenchError::Timeout(format!("client {i}")))
                } else {
                    Ok(i)
                }
            }
        })
        .await;
        let mut done = p.done.clone();
        done.sort_unstable();
        assert_eq!(done, [0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(p.failed, [7]);
        assert!(matches!(&p.first_error, Some(BenchError::Timeout(m)) if m == "client 7"));
        assert_eq!((tries[&0], tries[&3], tries[&4], tries[&7]), (1, 2, 3, 3));
    }
}
