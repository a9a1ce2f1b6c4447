//! Writes a seed corpus for the fuzz targets: every packet type of every
//! version, with every field and MQTT 5 property set somewhere, one packet
//! per file and one whole connection (CONNECT first) per version. Without
//! seeds a short run seldom builds an MQTT 5 CONNECT with properties.
//!
//! From crates/mqtt, `cargo run --manifest-path fuzz/Cargo.toml --example
//! seeds -- fuzz/corpus` writes `fuzz/corpus/decode/` and
//! `fuzz/corpus/decode_split/`, each in its target's input format.

use std::fs;
use std::path::Path;

use bytes::{Bytes, BytesMut};
use junction_mqtt::codec::*;

fn user() -> UserProperties {
    vec![("k".into(), "v".into()), ("k".into(), String::new())]
}

fn reason_props(v5: bool) -> ReasonProperties {
    if !v5 {
        return ReasonProperties::default();
    }
    ReasonProperties {
        reason_string: Some("why".into()),
        user_properties: user(),
    }
}

fn topic(s: &str) -> TopicName {
    TopicName::new(s).expect("valid topic name")
}

fn filter(s: &str) -> TopicFilter {
    TopicFilter::new(s).expect("valid topic filter")
}

fn connect(v: ProtocolVersion, full: bool) -> Connect {
    let v5 = v.is_v5();
    Connect {
        version: v,
        client_id: if full {
            "client-1".into()
        } else {
            String::new()
        },
        clean_start: full,
        keep_alive: 60,
        properties: if v5 && full {
            ConnectProperties {
                session_expiry_interval: Some(3600),
                receive_maximum: Some(100),
                maximum_packet_size: Some(1 << 20),
                topic_alias_maximum: Some(10),
                request_response_information: Some(true),
                request_problem_information: Some(false),
                user_properties: user(),
                authentication_method: Some("SCRAM-SHA-256".into()),
                authentication_data: Some(Bytes::from_static(b"\x00\x01")),
            }
        } else {
            ConnectProperties::default()
        },
        will: full.then(|| LastWill {
            topic: topic("clients/1/status"),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: if v5 {
                WillProperties {
                    will_delay_interval: Some(5),
                    payload_format: Some(PayloadFormat::Utf8),
                    message_expiry_interval: Some(120),
                    content_type: Some("text/plain".into()),
                    response_topic: Some(topic("replies/1")),
                    correlation_data: Some(Bytes::from_static(b"corr")),
                    user_properties: user(),
                }
            } else {
                WillProperties::default()
            },
        }),
        username: full.then(|| "alice".into()),
        password: full.then(|| Bytes::from_static(b"s3cret")),
    }
}

/// One packet of every type valid in `v`, CONNECT first.
fn packets(v: ProtocolVersion) -> Vec<Packet> {
    let v5 = v.is_v5();
    let mut out = vec![
        Packet::Connect(connect(v, true)),
        Packet::Connect(connect(v, false)),
        Packet::ConnAck(ConnAck {
            session_present: v != ProtocolVersion::V3_1,
            reason: ReasonCode::SUCCESS,
            properties: if v5 {
                ConnAckProperties {
                    session_expiry_interval: Some(0),
                    receive_maximum: Some(20),
                    maximum_qos: Some(QoS::AtLeastOnce),
                    retain_available: Some(false),
                    maximum_packet_size: Some(65_536),
                    assigned_client_identifier: Some("auto-1".into()),
                    topic_alias_maximum: Some(16),
                    reason_string: Some("welcome".into()),
                    user_properties: user(),
                    wildcard_subscription_available: Some(true),
                    subscription_identifiers_available: Some(true),
                    shared_subscription_available: Some(false),
                    server_keep_alive: Some(30),
                    response_information: Some("resp/".into()),
                    server_reference: Some("other:1883".into()),
                    authentication_method: Some("SCRAM-SHA-256".into()),
                    authentication_data: Some(Bytes::from_static(b"server-final")),
                }
            } else {
                ConnAckProperties::default()
            },
        }),
        Packet::Publish(Publish {
            topic: topic("a/b"),
            payload: Bytes::from_static(b"hello"),
            ..Publish::default()
        }),
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: topic("sensors/1/temp"),
            packet_id: Some(7),
            properties: if v5 {
                PublishProperties {
                    payload_format: Some(PayloadFormat::Unspecified),
                    message_expiry_interval: Some(10),
                    topic_alias: Some(3),
                    response_topic: Some(topic("r/1")),
                    correlation_data: Some(Bytes::from_static(b"\x00")),
                    user_properties: user(),
                    subscription_identifiers: vec![1, 268_435_455],
                    content_type: Some("application/json".into()),
                }
            } else {
                PublishProperties::default()
            },
            payload: Bytes::new(),
        }),
    ];
    if v5 {
        out.push(Packet::Publish(Publish {
            qos: QoS::AtLeastOnce,
            topic: TopicName::empty(),
            packet_id: Some(1),
            properties: PublishProperties {
                topic_alias: Some(7),
                ..PublishProperties::default()
            },
            payload: Bytes::from_static(b"aliased"),
            ..Publish::default()
        }));
    }
    let (failed, not_found) = if v5 {
        (
            ReasonCode::QUOTA_EXCEEDED,
            ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
        )
    } else {
        (ReasonCode::SUCCESS, ReasonCode::SUCCESS)
    };
    let ack = |packet_id, reason| Ack {
        packet_id,
        reason,
        properties: reason_props(v5),
    };
    out.extend([
        Packet::PubAck(Ack::new(1)),
        Packet::PubAck(ack(2, failed)),
        Packet::PubRec(ack(3, ReasonCode::SUCCESS)),
        Packet::PubRel(Ack::new(4)),
        Packet::PubComp(ack(5, not_found)),
        Packet::Subscribe(Subscribe {
            packet_id: 10,
            properties: if v5 {
                SubscribeProperties {
                    subscription_identifier: Some(42),
                    user_properties: user(),
                }
            } else {
                SubscribeProperties::default()
            },
            subscriptions: vec![
                Subscription {
                    filter: filter("a/+/c"),
                    options: SubscriptionOptions {
                        qos: QoS::ExactlyOnce,
                        no_local: v5,
                        retain_as_published: v5,
                        retain_handling: if v5 {
                            RetainHandling::DoNotSend
                        } else {
                            RetainHandling::SendAtSubscribe
                        },
                    },
                },
                Subscription {
                    filter: filter("$share/g/#"),
                    options: SubscriptionOptions::new(QoS::AtMostOnce),
                },
            ],
        }),
        Packet::SubAck(SubAck {
            packet_id: 10,
            properties: reason_props(v5),
            reasons: vec![
                ReasonCode::GRANTED_QOS_2,
                ReasonCode::GRANTED_QOS_0,
                ReasonCode::UNSPECIFIED_ERROR,
            ],
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 11,
            properties: UnsubscribeProperties {
                user_properties: if v5 { user() } else { Vec::new() },
            },
            filters: vec![filter("a/+/c"), filter("#")],
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: 11,
            properties: reason_props(v5),
            reasons: if v5 {
                vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]
            } else {
                Vec::new()
            },
        }),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect(Disconnect::default()),
    ]);
    if v5 {
        out.extend([
            Packet::Disconnect(Disconnect {
                reason: ReasonCode::DISCONNECT_WITH_WILL_MESSAGE,
                properties: DisconnectProperties {
                    session_expiry_interval: Some(0),
                    reason_string: Some("bye".into()),
                    user_properties: user(),
                    server_reference: Some("elsewhere".into()),
                },
            }),
            Packet::Auth(Auth::default()),
            Packet::Auth(Auth {
                reason: ReasonCode::CONTINUE_AUTHENTICATION,
                properties: AuthProperties {
                    authentication_method: Some("SCRAM-SHA-256".into()),
                    authentication_data: Some(Bytes::from_static(b"client-final")),
                    reason_string: Some("more".into()),
                    user_properties: user(),
                },
            }),
        ]);
    }
    out
}

/// The first input byte that makes the targets start with `v`
/// (see `version_from`).
fn version_byte(v: Option<ProtocolVersion>) -> u8 {
    match v {
        None => 0,
        Some(ProtocolVersion::V3_1) => 1,
        Some(ProtocolVersion::V3_1_1) => 2,
        Some(ProtocolVersion::V5) => 3,
    }
}

fn write(root: &Path, name: &str, version: Option<ProtocolVersion>, stream: &[u8]) {
    let first = version_byte(version);
    let mut decode = vec![first];
    decode.extend_from_slice(stream);
    fs::write(root.join("decode").join(name), decode).expect("write seed");
    // Split in the middle of the stream.
    let at = u16::try_from(stream.len() / 2).unwrap_or(u16::MAX);
    let mut split = vec![first];
    split.extend_from_slice(&at.to_le_bytes());
    split.extend_from_slice(stream);
    fs::write(root.join("decode_split").join(name), split).expect("write seed");
}

fn main() {
    let root = std::env::args()
        .nth(1)
        .expect("usage: seeds CORPUS_ROOT (e.g. fuzz/corpus)");
    let root = Path::new(&root);
    for target in ["decode", "decode_split"] {
        fs::create_dir_all(root.join(target)).expect("create corpus dir");
    }
    let mut count = 0;
    for v in [
        ProtocolVersion::V3_1,
        ProtocolVersion::V3_1_1,
        ProtocolVersion::V5,
    ] {
        let tag = version_byte(Some(v));
        let mut connection = BytesMut::new();
        for (i, p) in packets(v).iter().enumerate() {
            let mut one = BytesMut::new();
            encode(p, v, &mut one).expect("seed packet encodes");
            // Each packet alone, under its own version (CONNECT also before
            // any version).
            write(root, &format!("seed-v{tag}-{i:02}"), Some(v), &one);
            if let Packet::Connect(_) = p {
                write(root, &format!("seed-v{tag}-{i:02}-first"), None, &one);
            }
            // The whole connection: the full CONNECT, then everything else.
            if i != 1 {
                connection.extend_from_slice(&one);
            }
            count += 1;
        }
        write(root, &format!("seed-v{tag}-connection"), None, &connection);
    }
    println!("wrote {count} packets as seeds under {}", root.display());
}
