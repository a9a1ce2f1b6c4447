//! The command line: every flag of the `junction-bench` contract (the
//! compare script drives exactly these), their defaults, and the checks
//! clap cannot express alone.

use crate::error::BenchError;
use crate::payload::HEADER_LEN;
use clap::{ArgAction, Parser, ValueEnum};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

/// Which traffic shape to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// P publishers → one topic → 1 consumer.
    FanIn,
    /// 1 publisher → one topic → C consumers, each getting every message.
    FanOut,
    /// P publishers → one queue → C competing consumers.
    Queue,
    /// N idle connections held open (memory per connection).
    Idle,
    /// MQTT only: P clients each subscribing --count distinct wildcard
    /// filters, one SUBSCRIBE each (how long a subscription table takes
    /// to build; filters per second).
    SubscribeStorm,
    /// MQTT only: --connections clients connect (clean session), at most
    /// --connect-concurrency awaiting their CONNACK, and stay open until
    /// the last is in; then all close (connections per second).
    ConnectStorm,
    /// MQTT only: --connections clients with persistent sessions (one
    /// subscription each) connect, subscribe and disconnect; then all
    /// reconnect at once, and that phase is measured (connections per
    /// second, and how many CONNACKs lacked session present); finally every
    /// session is removed with a clean-session connect.
    ReconnectStorm,
}

impl Scenario {
    /// The connection storms (connections, not messages, are the load).
    pub fn is_connection_storm(self) -> bool {
        matches!(self, Scenario::ConnectStorm | Scenario::ReconnectStorm)
    }
}

/// A wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// MQTT 3.1.1 or 5.0 (rumqttc).
    Mqtt,
    /// AMQP 0-9-1 (lapin).
    Amqp,
    /// STOMP 1.2 (our own client).
    Stomp,
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Mqtt => "mqtt",
            Proto::Amqp => "amqp",
            Proto::Stomp => "stomp",
        })
    }
}

/// STOMP 1.2 SUBSCRIBE `ack` header values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StompAck {
    /// The broker considers a MESSAGE acknowledged once sent.
    Auto,
    /// Cumulative ACK.
    Client,
    /// ACK per message.
    ClientIndividual,
}

impl StompAck {
    /// The header value, as STOMP 1.2 "SUBSCRIBE" spells it.
    pub fn header_value(self) -> &'static str {
        match self {
            StompAck::Auto => "auto",
            StompAck::Client => "client",
            StompAck::ClientIndividual => "client-individual",
        }
    }
}

/// Load generator for MQTT, AMQP 0-9-1 and STOMP brokers. Every run is
/// bounded in count and time, stops by itself and ends with one
/// `RESULT {json}` line on stdout.
#[derive(Debug, Clone, Parser)]
#[command(name = "junction-bench", version, args_override_self = true)]
pub struct Args {
    /// Traffic shape.
    #[arg(long, value_enum, default_value_t = Scenario::FanIn)]
    pub scenario: Scenario,
    /// Protocol of both sides.
    #[arg(long, value_enum, default_value_t = Proto::Mqtt)]
    pub proto: Proto,
    /// Publishing protocol (overrides --proto).
    #[arg(long, value_enum)]
    pub pub_proto: Option<Proto>,
    /// Consuming protocol (overrides --proto).
    #[arg(long, value_enum)]
    pub sub_proto: Option<Proto>,
    /// Number of publishing connections.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub publishers: u32,
    /// Number of consuming connections.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub consumers: u32,
    /// Idle scenario: connections to open and hold; connection storms:
    /// clients in the storm.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub connections: u32,
    /// Connection storms: connections being opened at once (from TCP
    /// connect to CONNACK); the next starts as one completes.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connect_concurrency: u32,
    /// Messages per publisher.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub count: u64,
    /// Hard cap on the whole run, seconds; publishers stop at the count or here.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Time-based run: seconds measured after the warm-up, with publishers
    /// publishing throughout (`--count` then only bounds them); the rate
    /// and latency are those of this window. 0: count-based (rate over
    /// first publish to last receive).
    #[arg(long, default_value_t = 0.0)]
    pub measure: f64,
    /// Time-based run: seconds after the first publish whose arrivals are
    /// checked (loss, duplicates) but not measured.
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
    /// Publishers wait while consumers are more than this many messages
    /// behind what was sent (deliveries owed ÷ consumers that each get
    /// every message; 0: no bound). With it a run measures the rate
    /// a broker sustains end to end, not how fast its queues grow; without
    /// it a QoS 0 or fan-out run can outpace its consumers.
    #[arg(long, default_value_t = 0)]
    pub max_lag: u64,
    /// MQTT: wildcard subscriptions held during the run that match none of
    /// its messages (`<first level>/+/b<run>-<client>/<n>`, beside the
    /// published topic), made before the consumers subscribe: how routing
    /// cost grows with the subscription table.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    pub background_subs: u64,
    /// MQTT: each consumer also holds this many exact-topic subscriptions
    /// that match none of the run's messages (`<first level>/c<run>-<consumer>/<n>`),
    /// subscribed before its own: what a delivery costs as its session's
    /// subscriptions grow.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub consumer_filters: u64,
    /// Clients the background subscriptions are spread over.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub background_clients: u32,
    /// Once publishers finish, how long consumers wait for the rest, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout: f64,
    /// Payload size in bytes (at least the 20-byte header).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Per-publisher messages per second; 0 = unlimited.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Publishes one publisher may have outstanding: unacknowledged (MQTT
    /// QoS 1/2, AMQP confirms, STOMP receipts) or unwritten (otherwise).
    /// Default 20 for MQTT, 100 for AMQP and STOMP.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub inflight: Option<u16>,
    /// MQTT QoS of publishes and subscriptions.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// MQTT protocol level: 4 (3.1.1) or 5.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(4..=5))]
    pub mqtt_version: u8,
    /// MQTT clean session (v5: clean start).
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    pub clean_session: bool,
    /// AMQP delivery mode 2 / STOMP `persistent:true`.
    #[arg(long)]
    pub persistent: bool,
    /// AMQP publisher confirms.
    #[arg(long)]
    pub confirms: bool,
    /// AMQP manual consumer acks (otherwise no-ack).
    #[arg(long)]
    pub manual_ack: bool,
    /// AMQP basic.qos prefetch count (also STOMP prefetch headers with client acks).
    #[arg(long, default_value_t = 100)]
    pub prefetch: u16,
    /// STOMP SUBSCRIBE ack mode.
    #[arg(long, value_enum, default_value_t = StompAck::Auto)]
    pub stomp_ack: StompAck,
    /// STOMP: ask for a RECEIPT on every SEND.
    #[arg(long)]
    pub receipts: bool,
    /// AMQP: the `x-queue-type` argument of the queue the generator
    /// declares (`quorum` for a replicated queue); absent: none.
    #[arg(long)]
    pub queue_type: Option<String>,
    /// Topic, MQTT form (`a/b`); AMQP and STOMP use `a.b`.
    #[arg(long, default_value = "bench/t")]
    pub topic: String,
    /// Queue name for the queue scenario.
    #[arg(long, default_value = "bench-q")]
    pub queue: String,
    /// AMQP queue scenario: N queues `<--queue>-0` … `<--queue>-(N-1)`
    /// (transient, exclusive to their consumer's connection, so they go
    /// when it closes) instead of the one named queue, each with one
    /// consumer; the consumers are spread over --consumers connections
    /// (at most N), one channel each. Publisher p sends its message n to
    /// queue (p + n) mod N through the default exchange, and every
    /// delivery is checked to come from that queue. 0: the one queue.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub queues: u32,
    /// Broker host; the only address the generator connects to.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// MQTT port.
    #[arg(long, default_value_t = 1883)]
    pub mqtt_port: u16,
    /// AMQP port.
    #[arg(long, default_value_t = 5672)]
    pub amqp_port: u16,
    /// STOMP port.
    #[arg(long, default_value_t = 61613)]
    pub stomp_port: u16,
    /// User name for every protocol.
    #[arg(long, default_value = "guest")]
    pub user: String,
    /// Password for every protocol.
    #[arg(long, default_value = "guest")]
    pub password: String,
    /// AMQP virtual host; also the STOMP `host` header.
    #[arg(long, default_value = "/")]
    pub vhost: String,
    /// TLS for every MQTT and AMQP connection, trusting only the CA
    /// certificates in this PEM file; the broker's certificate must name
    /// --host (an IP address in its subjectAltName for 127.0.0.1). The
    /// ports are then the TLS listeners' (mqtts, amqps). Not for STOMP.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// How the MQTT clients reach the broker: `tcp`, `ws` (a WebSocket to
    /// --mqtt-port at --ws-path, binary messages, subprotocol mqtt) or
    /// `bridged` (plain TCP through the same in-process bridge as `ws`: the
    /// baseline that shows what WebSocket itself costs). See src/bridge.rs.
    #[arg(long, value_enum, default_value_t = crate::bridge::Transport::Tcp)]
    pub transport: crate::bridge::Transport,
    /// The WebSocket path for `--transport ws`.
    #[arg(long, default_value = "/ws")]
    pub ws_path: String,
    /// Broker process id: its RSS and CPU time are read from /proc.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

impl Args {
    /// The publishing side's protocol.
    pub fn pub_proto(&self) -> Proto {
        self.pub_proto.unwrap_or(self.proto)
    }

    /// The consuming side's protocol.
    pub fn sub_proto(&self) -> Proto {
        self.sub_proto.unwrap_or(self.proto)
    }

    /// Consumer connections: `--consumers`, but with `--queues N` never
    /// more than the N queues they share.
    pub fn consumer_connections(&self) -> u32 {
        if self.queues > 0 {
            self.consumers.min(self.queues)
        } else {
            self.consumers
        }
    }

    /// Who the tracker sees as a consumer: each queue with `--queues`
    /// (a delivery is placed by the queue it came from), else each
    /// consumer connection.
    pub fn tracked_consumers(&self) -> u32 {
        if self.queues > 0 {
            self.queues
        } else {
            self.consumers
        }
    }

    /// The in-flight window of a `proto` publisher. MQTT's default is 20:
    /// brokers commonly accept that many unfinished incoming QoS 2 flows
    /// per client (Mosquitto's `max_inflight_messages`) and drop the excess
    /// (PUBREC "quota exceeded"), which a 3.1.1 client cannot be told in
    /// advance; MQTT 5 clients also honour the broker's Receive Maximum.
    pub fn inflight_for(&self, proto: Proto) -> u16 {
        self.inflight.unwrap_or(match proto {
            Proto::Mqtt => 20,
            Proto::Amqp | Proto::Stomp => 100,
        })
    }

    /// The hard cap on the run.
    pub fn duration(&self) -> Duration {
        Duration::try_from_secs_f64(self.duration).unwrap_or(Duration::ZERO)
    }

    /// Time-based run's (warm-up, measuring time), None when count-based.
    pub fn window(&self) -> Option<(Duration, Duration)> {
        (self.measure > 0.0).then(|| {
            (
                Duration::try_from_secs_f64(self.warmup).unwrap_or(Duration::ZERO),
                Duration::try_from_secs_f64(self.measure).unwrap_or(Duration::ZERO),
            )
        })
    }

    /// The drain timeout.
    pub fn drain_timeout(&self) -> Duration {
        Duration::try_from_secs_f64(self.drain_timeout).unwrap_or(Duration::ZERO)
    }

    /// The checks clap cannot express: sizes, times and names.
    pub fn validate(&self) -> Result<(), BenchError> {
        let usage = |m: String| Err(BenchError::Usage(m));
        if self.size < HEADER_LEN {
            return usage(format!(
                "--size {} is below the {HEADER_LEN}-byte header",
                self.size
            ));
        }
        if !(self.duration.is_finite() && self.duration > 0.0 && self.duration <= 86_400.0) {
            return usage(format!(
                "--duration {} must be in (0, 86400]",
                self.duration
            ));
        }
        for (name, v) in [("--measure", self.measure), ("--warmup", self.warmup)] {
            if !(v.is_finite() && (0.0..=86_400.0).contains(&v)) {
                return usage(format!("{name} {v} must be in [0, 86400]"));
            }
        }
        if self.warmup > 0.0 && self.measure == 0.0 {
            return usage("--warmup needs --measure (a time-based run)".into());
        }
        if self.measure > 0.0 && self.warmup + self.measure > self.duration {
            return usage(format!(
                "--warmup {} + --measure {} exceed the --duration cap {}",
                self.warmup, self.measure, self.duration
            ));
        }
        if !(self.drain_timeout.is_finite() && (0.0..=3_600.0).contains(&self.drain_timeout)) {
            return usage(format!(
                "--drain-timeout {} must be in [0, 3600]",
                self.drain_timeout
            ));
        }
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            return usage(format!("--rate {} must be 0 or positive", self.rate));
        }
        if self.topic.is_empty() || self.topic.contains(['+', '#', '*']) {
            return usage(format!(
                "--topic {:?} must be a non-empty name without wildcards",
                self.topic
            ));
        }
        if self.queue.is_empty() {
            return usage("--queue must not be empty".into());
        }
        if self.queues > 0 {
            if self.scenario != Scenario::Queue
                || self.pub_proto() != Proto::Amqp
                || self.sub_proto() != Proto::Amqp
            {
                return usage(
                    "--queues is for --scenario queue with AMQP on both sides (--proto amqp)"
                        .into(),
                );
            }
            // AMQP queue names are short strings: at most 255 bytes.
            let longest = crate::address::queue_name(&self.queue, self.queues - 1);
            if longest.len() > 255 {
                return usage(format!(
                    "--queue {:?}: the queue names ({longest:?}) exceed AMQP's 255 bytes",
                    self.queue
                ));
            }
        }
        if self.scenario.is_connection_storm()
            && [self.proto, self.pub_proto(), self.sub_proto()]
                .iter()
                .any(|p| *p != Proto::Mqtt)
        {
            return usage(format!(
                "--scenario {}: MQTT only (--proto mqtt)",
                match self.scenario {
                    Scenario::ConnectStorm => "connect-storm",
                    _ => "reconnect-storm",
                }
            ));
        }
        if self.transport != crate::bridge::Transport::Tcp && self.tls_ca.is_some() {
            return usage("--transport ws|bridged: no TLS (--tls-ca) on the bridge".into());
        }
        if self.tls_ca.is_some() && [self.pub_proto(), self.sub_proto()].contains(&Proto::Stomp) {
            return usage(
                "--tls-ca: TLS is for the MQTT and AMQP clients; the STOMP client has none".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(flags: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("junction-bench").chain(flags.iter().copied()))
            .unwrap()
    }

    fn refused(flags: &[&str]) -> String {
        match parse(flags).validate() {
            Err(BenchError::Usage(m)) => m,
            other => panic!("{flags:?} accepted: {other:?}"),
        }
    }

    #[test]
    fn a_queue_set_caps_consumer_connections_at_its_queues() {
        let a = parse(&[
            "--proto",
            "amqp",
            "--scenario",
            "queue",
            "--queues",
            "10000",
            "--consumers",
            "20",
        ]);
        a.validate().unwrap();
        assert_eq!(
            (a.consumer_connections(), a.tracked_consumers()),
            (20, 10_000)
        );
        let a = parse(&[
            "--proto",
            "amqp",
            "--scenario",
            "queue",
            "--queues",
            "1",
            "--consumers",
            "20",
        ]);
        a.validate().unwrap();
        assert_eq!((a.consumer_connections(), a.tracked_consumers()), (1, 1));
        // Without --queues, consumers are connections and tracked as such.
        let a = parse(&["--proto", "amqp", "--scenario", "queue", "--consumers", "3"]);
        assert_eq!((a.consumer_connections(), a.tracked_consumers()), (3, 3));
    }

    #[test]
    fn a_queue_set_is_amqp_queue_only() {
        let m = "--queues is for --scenario queue with AMQP on both sides (--proto amqp)";
        assert_eq!(
            refused(&["--proto", "amqp", "--scenario", "fan-in", "--queues", "2"]),
            m
        );
        assert_eq!(
            refused(&["--proto", "mqtt", "--scenario", "queue", "--queues", "2"]),
            m
        );
        assert_eq!(
            refused(&[
                "--pub-proto",
                "stomp",
                "--sub-proto",
                "amqp",
                "--scenario",
                "queue",
                "--queues",
                "2",
            ]),
            m
        );
        assert!(
            Args::try_parse_from(["junction-bench", "--queues", "100001"]).is_err(),
            "more than 100,000 queues"
        );
    }

    #[test]
    fn queue_set_names_must_fit_amqp_short_strings() {
        // 250 bytes + "-" + up to 4 digits = 255: fits; one byte more does not.
        let fits = "q".repeat(250);
        parse(&[
            "--proto",
            "amqp",
            "--scenario",
            "queue",
            "--queue",
            &fits,
            "--queues",
            "10000",
        ])
        .validate()
        .unwrap();
        let long = "q".repeat(251);
        let m = refused(&[
            "--proto",
            "amqp",
            "--scenario",
            "queue",
            "--queue",
            &long,
            "--queues",
            "10000",
        ]);
        assert!(m.contains("exceed AMQP's 255 bytes"), "{m}");
    }

    #[test]
    fn connection_storms_are_mqtt_only() {
        parse(&["--scenario", "connect-storm", "--connections", "10000"])
            .validate()
            .unwrap();
        parse(&["--scenario", "reconnect-storm", "--mqtt-version", "5"])
            .validate()
            .unwrap();
        assert_eq!(
            refused(&["--scenario", "connect-storm", "--proto", "amqp"]),
            "--scenario connect-storm: MQTT only (--proto mqtt)"
        );
        assert_eq!(
            refused(&["--scenario", "reconnect-storm", "--sub-proto", "stomp"]),
            "--scenario reconnect-storm: MQTT only (--proto mqtt)"
        );
        assert!(Scenario::ConnectStorm.is_connection_storm());
        assert!(!Scenario::SubscribeStorm.is_connection_storm());
    }

    #[test]
    fn connect_concurrency_is_bounded() {
        assert_eq!(parse(&[]).connect_concurrency, 32);
        assert_eq!(
            parse(&["--connect-concurrency", "100"]).connect_concurrency,
            100
        );
        for bad in ["0", "10001"] {
            assert!(
                Args::try_parse_from(["junction-bench", "--connect-concurrency", bad]).is_err(),
                "{bad}"
            );
        }
    }
}
