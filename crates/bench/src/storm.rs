//! The subscribe storm: `--publishers` MQTT clients each subscribe
//! `--count` distinct wildcard filters, one SUBSCRIBE per filter and at
//! most `--inflight` awaiting their SUBACK per client, all at once. The
//! time until the last SUBACK says how a broker's subscription table
//! grows: a cost per SUBSCRIBE that rises with the table's size shows as a
//! rate that falls as `--count` rises.

use crate::cli::{Args, Proto};
use crate::clients::Clients;
use crate::error::BenchError;
use crate::report::{self, Report};
use crate::run::{Outcome, Probe};
use std::time::Instant;

/// Runs the storm; `started` is when the run began (the cap counts from
/// there).
pub async fn run(
    args: &Args,
    clients: &Clients,
    probe: Probe,
    started: Instant,
) -> Result<Outcome, BenchError> {
    if args.proto != Proto::Mqtt {
        return Err(BenchError::Usage(
            "--scenario subscribe-storm speaks MQTT only (--proto mqtt)".into(),
        ));
    }
    let stop_at = tokio::time::Instant::from_std(started + args.duration());
    let window = args.inflight_for(Proto::Mqtt);
    let storm_started = Instant::now();
    let tasks: Vec<_> = (0..args.publishers)
        .map(|index| {
            let settings = clients.mqtt.clone();
            let count = args.count;
            tokio::spawn(async move {
                crate::mqtt::subscribe_storm(&settings, index, count, window, stop_at).await
            })
        })
        .collect();
    let mut granted = 0u64;
    let mut failure = None;
    for t in tasks {
        match t.await {
            Ok(Ok(n)) => granted += n,
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(e) => {
                failure.get_or_insert(BenchError::protocol(Proto::Mqtt, e.to_string()));
            }
        }
    }
    let elapsed = storm_started.elapsed().as_secs_f64();
    let asked = args.count * u64::from(args.publishers);
    let mut report = Report {
        scenario: args.scenario,
        pub_proto: Proto::Mqtt,
        sub_proto: Proto::Mqtt,
        publishers: Some(args.publishers),
        consumers: None,
        size: None,
        sent: Some(asked),
        expected: Some(asked),
        received: Some(granted),
        lost: Some(asked - granted.min(asked)),
        duplicated: None,
        reordered: None,
        elapsed_s: report::round3(elapsed),
        msgs_per_sec: (elapsed > 0.0).then(|| report::round3(granted as f64 / elapsed)),
        bytes_per_sec: None,
        latency_us: None,
        broker_rss_kb: None,
        broker_rss_start_kb: None,
        broker_cpu_s: None,
        bench_cpu_s: None,
        connections: Some(u64::from(args.publishers)),
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
    Ok(Outcome { report, failure })
}
