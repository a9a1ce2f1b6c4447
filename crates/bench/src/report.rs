//! What the generator prints: the progress line (stderr, once a second) and
//! the final `RESULT {json}` line (stdout), whose keys and order are the
//! contract the compare script parses. Pure formatting.

use crate::cli::{Proto, Scenario};
use crate::collector::Snapshot;
use crate::stats::Percentiles;
use serde::Serialize;

/// The RESULT line's object. `None` serialises as `null` ("not applicable").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Scenario run.
    pub scenario: Scenario,
    /// Publishing protocol.
    pub pub_proto: Proto,
    /// Consuming protocol.
    pub sub_proto: Proto,
    /// Publisher connections.
    pub publishers: Option<u32>,
    /// Consumer connections.
    pub consumers: Option<u32>,
    /// Payload bytes.
    pub size: Option<usize>,
    /// Messages written to the wire.
    pub sent: Option<u64>,
    /// Deliveries a loss-free broker makes for `sent`.
    pub expected: Option<u64>,
    /// Deliveries received, duplicates included.
    pub received: Option<u64>,
    /// `expected − unique`.
    pub lost: Option<u64>,
    /// Deliveries of a message already received.
    pub duplicated: Option<u64>,
    /// First deliveries below the highest sequence already seen.
    pub reordered: Option<u64>,
    /// Wall-clock seconds of the whole run.
    pub elapsed_s: f64,
    /// `measured` / seconds from first publish to last receive, or over
    /// the measuring window of a time-based run.
    pub msgs_per_sec: Option<f64>,
    /// `msgs_per_sec × size`.
    pub bytes_per_sec: Option<f64>,
    /// End-to-end latency percentiles, µs.
    pub latency_us: Option<Percentiles>,
    /// Broker RSS at the end, KiB.
    pub broker_rss_kb: Option<u64>,
    /// Broker RSS at the start, KiB.
    pub broker_rss_start_kb: Option<u64>,
    /// Broker CPU seconds used during the run.
    pub broker_cpu_s: Option<f64>,
    /// Generator CPU seconds used during the run.
    pub bench_cpu_s: Option<f64>,
    /// Connections the generator held open.
    pub connections: Option<u64>,
    /// Idle scenario: broker RSS growth per connection, bytes.
    pub rss_per_connection_bytes: Option<f64>,
    /// MQTT consumers: deliveries that arrived at a lower QoS than
    /// subscribed (the broker granted less, or delivered at a lower
    /// published QoS); `None` when no MQTT consumer ran.
    pub mqtt_below_qos: Option<u64>,
    /// Time-based runs: the warm-up, seconds (`None`: count-based).
    pub warmup_s: Option<f64>,
    /// Time-based runs: the measuring window the rate is over, seconds
    /// (shorter than asked if arrivals stopped early).
    pub measure_s: Option<f64>,
    /// Arrivals the rate counts: all of them, or the measuring window's.
    pub measured: Option<u64>,
    /// `--background-subs`: how many the broker granted (`None`: none asked).
    pub background_subs: Option<u64>,
    /// `--queues`: the queues the messages were spread over.
    pub queues: Option<u32>,
    /// `--queues`: deliveries that came from a queue other than the one
    /// their message was sent to (not counted as received).
    pub misrouted: Option<u64>,
    /// Connection storms: seconds from the first connect of the measured
    /// phase to its last CONNACK.
    pub connect_s: Option<f64>,
    /// Connection storms: connections opened in the measured phase per
    /// second of `connect_s`.
    pub connects_per_sec: Option<f64>,
    /// Connection storms: connections asked for that did not open (refused,
    /// timed out, or not tried before the `--duration` cap), every phase
    /// together.
    pub connect_failed: Option<u64>,
    /// Reconnect storm: reconnects whose CONNACK said session present =
    /// false (the broker had lost the persistent session).
    pub session_missing: Option<u64>,
}

impl Report {
    /// A report of `scenario` with every measurement `None` (not
    /// applicable) and no time elapsed: what a scenario fills in.
    pub fn blank(scenario: Scenario, pub_proto: Proto, sub_proto: Proto) -> Self {
        Report {
            scenario,
            pub_proto,
            sub_proto,
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
            connections: None,
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
        }
    }
}

/// Rounds to three decimals (enough for rates and seconds, and keeps the
/// line readable).
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Messages and bytes per second over the throughput window, `None` when
/// the window is empty.
pub fn rates(received: u64, size: usize, window_s: Option<f64>) -> (Option<f64>, Option<f64>) {
    match window_s {
        Some(w) if w > 0.0 => {
            let msgs = received as f64 / w;
            (Some(round3(msgs)), Some(round3(msgs * size as f64)))
        }
        _ => (None, None),
    }
}

/// `n` per second over `seconds`, rounded; `None` for no time.
pub fn per_sec(n: u64, seconds: f64) -> Option<f64> {
    (seconds > 0.0 && seconds.is_finite()).then(|| round3(n as f64 / seconds))
}

/// `RESULT ` followed by the report as one JSON object.
pub fn result_line(report: &Report) -> Result<String, serde_json::Error> {
    Ok(format!("RESULT {}", serde_json::to_string(report)?))
}

/// `[3s] sent=… recv=… lost=… dup=… p99=…us`.
pub fn progress_line(elapsed_s: u64, snap: &Snapshot) -> String {
    let p99 = snap
        .latency
        .map_or_else(|| "-".to_string(), |p| p.p99.to_string());
    format!(
        "[{elapsed_s}s] sent={} recv={} lost={} dup={} p99={p99}us",
        snap.sent, snap.counts.received, snap.lost, snap.counts.duplicated
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::Counts;

    fn idle_report() -> Report {
        Report {
            elapsed_s: 5.0,
            broker_rss_kb: Some(2048),
            broker_rss_start_kb: Some(1024),
            broker_cpu_s: Some(0.1),
            bench_cpu_s: Some(0.2),
            connections: Some(100),
            rss_per_connection_bytes: Some(10485.76),
            ..Report::blank(Scenario::Idle, Proto::Mqtt, Proto::Mqtt)
        }
    }

    #[test]
    fn result_line_has_the_contract_keys_in_order() {
        let line = result_line(&idle_report()).unwrap();
        assert_eq!(
            line,
            "RESULT {\"scenario\":\"idle\",\"pub_proto\":\"mqtt\",\"sub_proto\":\"mqtt\",\
             \"publishers\":null,\"consumers\":null,\"size\":null,\"sent\":null,\
             \"expected\":null,\"received\":null,\"lost\":null,\"duplicated\":null,\
             \"reordered\":null,\"elapsed_s\":5.0,\"msgs_per_sec\":null,\"bytes_per_sec\":null,\
             \"latency_us\":null,\"broker_rss_kb\":2048,\"broker_rss_start_kb\":1024,\
             \"broker_cpu_s\":0.1,\"bench_cpu_s\":0.2,\"connections\":100,\
             \"rss_per_connection_bytes\":10485.76,\"mqtt_below_qos\":null,\
             \"warmup_s\":null,\"measure_s\":null,\"measured\":null,\"background_subs\":null,\
             \"queues\":null,\"misrouted\":null,\"connect_s\":null,\"connects_per_sec\":null,\
             \"connect_failed\":null,\"session_missing\":null}"
        );
    }

    #[test]
    fn storm_fields_serialise_under_their_names() {
        let r = Report {
            connections: Some(10_000),
            connect_s: Some(2.5),
            connects_per_sec: per_sec(10_000, 2.5),
            connect_failed: Some(0),
            session_missing: Some(3),
            ..Report::blank(Scenario::ReconnectStorm, Proto::Mqtt, Proto::Mqtt)
        };
        let line = result_line(&r).unwrap();
        assert!(line.starts_with("RESULT {\"scenario\":\"reconnect-storm\","));
        assert!(line.ends_with(
            "\"connect_s\":2.5,\"connects_per_sec\":4000.0,\"connect_failed\":0,\
             \"session_missing\":3}"
        ));
    }

    #[test]
    fn per_sec_needs_a_positive_time() {
        assert_eq!(per_sec(10_000, 4.0), Some(2500.0));
        assert_eq!(per_sec(1, 3.0), Some(0.333));
        assert_eq!(per_sec(5, 0.0), None);
        assert_eq!(per_sec(5, f64::NAN), None);
    }

    #[test]
    fn latency_serialises_as_the_five_named_percentiles() {
        let mut r = idle_report();
        r.scenario = Scenario::FanIn;
        r.latency_us = Some(Percentiles {
            p50: 1,
            p90: 2,
            p99: 3,
            p999: 4,
            max: 5,
        });
        let line = result_line(&r).unwrap();
        assert!(line.contains("\"scenario\":\"fan-in\""));
        assert!(
            line.contains("\"latency_us\":{\"p50\":1,\"p90\":2,\"p99\":3,\"p999\":4,\"max\":5}")
        );
    }

    #[test]
    fn rates_divide_received_by_the_window() {
        assert_eq!(rates(1000, 64, Some(0.5)), (Some(2000.0), Some(128000.0)));
        assert_eq!(rates(1000, 64, Some(0.0)), (None, None));
        assert_eq!(rates(0, 64, None), (None, None));
    }

    #[test]
    fn progress_line_format() {
        let snap = Snapshot {
            sent: 10,
            expected: 10,
            counts: Counts {
                received: 9,
                unique: 8,
                duplicated: 1,
                reordered: 0,
            },
            lost: 2,
            strays: 0,
            misrouted: 0,
            below_qos: 0,
            latency: None,
            window_s: None,
            measured: 9,
        };
        assert_eq!(
            progress_line(3, &snap),
            "[3s] sent=10 recv=9 lost=2 dup=1 p99=-us"
        );
    }
}
