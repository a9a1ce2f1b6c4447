//! The command-line contract the compare script is written against: every
//! flag parses, the defaults are the documented ones, and bad values are
//! refused before anything connects.

use clap::Parser;
use junction_bench::BenchError;
use junction_bench::cli::{Args, Proto, Scenario, StompAck};
use std::time::Duration;

fn parse(args: &[&str]) -> Result<Args, clap::Error> {
    Args::try_parse_from(std::iter::once("junction-bench").chain(args.iter().copied()))
}

#[test]
fn defaults_match_the_contract() {
    let a = parse(&[]).unwrap();
    assert_eq!(a.scenario, Scenario::FanIn);
    assert_eq!((a.pub_proto(), a.sub_proto()), (Proto::Mqtt, Proto::Mqtt));
    assert_eq!((a.publishers, a.consumers, a.count), (1, 1, 10_000));
    assert_eq!(
        (a.duration, a.drain_timeout, a.size, a.rate),
        (60.0, 10.0, 64, 0.0)
    );
    assert_eq!((a.qos, a.mqtt_version, a.clean_session), (1, 4, true));
    assert_eq!(
        (a.persistent, a.confirms, a.manual_ack, a.prefetch),
        (false, false, false, 100)
    );
    assert_eq!((a.stomp_ack, a.receipts), (StompAck::Auto, false));
    assert_eq!((a.topic.as_str(), a.queue.as_str()), ("bench/t", "bench-q"));
    assert_eq!(a.host, "127.0.0.1");
    assert_eq!(
        (a.mqtt_port, a.amqp_port, a.stomp_port),
        (1883, 5672, 61613)
    );
    assert_eq!(
        (a.user.as_str(), a.password.as_str(), a.vhost.as_str()),
        ("guest", "guest", "/")
    );
    assert_eq!((a.broker_pid, a.quiet), (None, false));
    assert_eq!(a.tls_ca, None);
    assert_eq!(
        (a.inflight_for(Proto::Mqtt), a.inflight_for(Proto::Amqp)),
        (20, 100)
    );
    assert!(a.validate().is_ok());
}

#[test]
fn every_contract_flag_parses() {
    let a = parse(&[
        "--scenario",
        "queue",
        "--proto",
        "stomp",
        "--pub-proto",
        "mqtt",
        "--sub-proto",
        "amqp",
        "--publishers",
        "4",
        "--consumers",
        "3",
        "--count",
        "500",
        "--duration",
        "5",
        "--drain-timeout",
        "2",
        "--size",
        "128",
        "--rate",
        "1000",
        "--qos",
        "2",
        "--mqtt-version",
        "5",
        "--clean-session",
        "false",
        "--persistent",
        "--confirms",
        "--manual-ack",
        "--prefetch",
        "10",
        "--stomp-ack",
        "client-individual",
        "--receipts",
        "--topic",
        "a/b",
        "--queue",
        "q1",
        "--host",
        "::1",
        "--mqtt-port",
        "18830",
        "--amqp-port",
        "15672",
        "--stomp-port",
        "16613",
        "--user",
        "u",
        "--password",
        "p",
        "--vhost",
        "v",
        "--broker-pid",
        "1234",
        "--quiet",
        "--inflight",
        "7",
        "--tls-ca",
        "/etc/ca.pem",
    ])
    .unwrap();
    assert_eq!(a.scenario, Scenario::Queue);
    assert_eq!(a.proto, Proto::Stomp);
    assert_eq!((a.pub_proto(), a.sub_proto()), (Proto::Mqtt, Proto::Amqp));
    assert_eq!((a.publishers, a.consumers, a.count), (4, 3, 500));
    assert_eq!(
        (a.duration(), a.drain_timeout()),
        (Duration::from_secs(5), Duration::from_secs(2))
    );
    assert_eq!(
        (a.size, a.rate, a.qos, a.mqtt_version, a.clean_session),
        (128, 1000.0, 2, 5, false)
    );
    assert!(a.persistent && a.confirms && a.manual_ack && a.receipts && a.quiet);
    assert_eq!((a.prefetch, a.stomp_ack), (10, StompAck::ClientIndividual));
    assert_eq!(
        (a.topic.as_str(), a.queue.as_str(), a.host.as_str()),
        ("a/b", "q1", "::1")
    );
    assert_eq!(
        (a.mqtt_port, a.amqp_port, a.stomp_port),
        (18830, 15672, 16613)
    );
    assert_eq!(
        (a.user.as_str(), a.password.as_str(), a.vhost.as_str()),
        ("u", "p", "v")
    );
    assert_eq!(a.broker_pid, Some(1234));
    assert_eq!(
        a.tls_ca.as_deref(),
        Some(std::path::Path::new("/etc/ca.pem"))
    );
    assert_eq!(
        (a.inflight_for(Proto::Mqtt), a.inflight_for(Proto::Stomp)),
        (7, 7)
    );
    assert!(a.validate().is_ok());
}

#[test]
fn idle_scenario_takes_a_connection_count() {
    let a = parse(&[
        "--scenario",
        "idle",
        "--connections",
        "500",
        "--proto",
        "amqp",
    ])
    .unwrap();
    assert_eq!(
        (a.scenario, a.connections, a.proto),
        (Scenario::Idle, 500, Proto::Amqp)
    );
}

#[test]
fn out_of_range_values_are_rejected_by_the_parser() {
    assert!(parse(&["--qos", "3"]).is_err());
    assert!(parse(&["--mqtt-version", "3"]).is_err());
    assert!(parse(&["--publishers", "0"]).is_err());
    assert!(parse(&["--scenario", "fanout"]).is_err());
    assert!(parse(&["--stomp-ack", "manual"]).is_err());
    assert!(parse(&["--clean-session"]).is_err());
}

#[test]
fn size_below_the_header_fails_validation() {
    let a = parse(&["--size", "19"]).unwrap();
    assert!(matches!(a.validate(), Err(BenchError::Usage(_))));
    assert!(parse(&["--size", "20"]).unwrap().validate().is_ok());
}

#[test]
fn zero_duration_and_wildcard_topic_fail_validation() {
    assert!(parse(&["--duration", "0"]).unwrap().validate().is_err());
    assert!(parse(&["--topic", "a/+"]).unwrap().validate().is_err());
    assert!(parse(&["--rate=-1"]).unwrap().validate().is_err());
}

#[test]
fn tls_is_for_mqtt_and_amqp_only() {
    let tls = ["--tls-ca", "ca.pem"];
    for proto in ["mqtt", "amqp"] {
        let a = parse(&[&tls[..], &["--proto", proto]].concat()).unwrap();
        assert!(a.validate().is_ok(), "--tls-ca with {proto}");
    }
    let stomp = parse(&[&tls[..], &["--proto", "stomp"]].concat()).unwrap();
    assert!(matches!(stomp.validate(), Err(BenchError::Usage(_))));
    let cross = parse(&[&tls[..], &["--pub-proto", "stomp", "--sub-proto", "amqp"]].concat());
    assert!(matches!(
        cross.unwrap().validate(),
        Err(BenchError::Usage(_))
    ));
}

#[test]
fn a_repeated_flag_takes_the_last_value() {
    let a = parse(&["--duration", "5", "--count", "10", "--duration", "1"]).unwrap();
    assert_eq!((a.duration(), a.count), (Duration::from_secs(1), 10));
}
