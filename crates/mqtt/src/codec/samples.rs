//! Sample packets: one of every type for each version, with every field
//! (and in 5.0 every property) set somewhere. The codec's tests round-trip
//! them; the fuzz targets' seed corpus is written from them
//! (`fuzz/examples/seeds.rs`, feature `samples`).

use bytes::Bytes;

use super::*;

fn user() -> UserProperties {
    vec![
        ("k".into(), "v1".into()),
        ("k".into(), "v2".into()),
        ("a".into(), String::new()),
    ]
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

/// A CONNECT for `v` using every field (and in 5.0 every property).
pub fn sample_connect(v: ProtocolVersion) -> Connect {
    let v5 = v.is_v5();
    Connect {
        version: v,
        client_id: "client-1".into(),
        clean_start: true,
        keep_alive: 60,
        properties: if v5 {
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
        will: Some(LastWill {
            topic: TopicName::new("clients/1/status").unwrap(),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: if v5 {
                WillProperties {
                    will_delay_interval: Some(5),
                    payload_format: Some(PayloadFormat::Utf8),
                    message_expiry_interval: Some(120),
                    content_type: Some("text/plain".into()),
                    response_topic: Some(TopicName::new("replies/1").unwrap()),
                    correlation_data: Some(Bytes::from_static(b"corr")),
                    user_properties: user(),
                }
            } else {
                WillProperties::default()
            },
        }),
        username: Some("alice".into()),
        password: Some(Bytes::from_static(b"s3cret\xff")),
    }
}

/// One packet of every type valid in `v`, with every field (and in 5.0
/// every property) set somewhere.
pub fn samples(v: ProtocolVersion) -> Vec<Packet> {
    let v5 = v.is_v5();
    let mut out = vec![
        Packet::Connect(sample_connect(v)),
        Packet::Connect(Connect {
            will: None,
            username: None,
            password: None,
            clean_start: false,
            client_id: String::new(),
            ..sample_connect(v)
        }),
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
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason: ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            properties: ConnAckProperties::default(),
        }),
        Packet::Publish(Publish {
            topic: TopicName::new("a/b").unwrap(),
            payload: Bytes::from_static(b"hello"),
            ..Publish::default()
        }),
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: TopicName::new("sensors/1/temp").unwrap(),
            packet_id: Some(65_535),
            properties: if v5 {
                PublishProperties {
                    payload_format: Some(PayloadFormat::Unspecified),
                    message_expiry_interval: Some(10),
                    topic_alias: Some(3),
                    response_topic: Some(TopicName::new("r/1").unwrap()),
                    correlation_data: Some(Bytes::from_static(b"\x00")),
                    user_properties: user(),
                    subscription_identifiers: vec![1, 268_435_455, 1],
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
    let failed = if v5 {
        ReasonCode::QUOTA_EXCEEDED
    } else {
        ReasonCode::SUCCESS
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
        Packet::PubComp(ack(
            5,
            if v5 {
                ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
            } else {
                ReasonCode::SUCCESS
            },
        )),
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
                    filter: TopicFilter::new("a/+/c").unwrap(),
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
                    filter: TopicFilter::new("$share/g/#").unwrap(),
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
                ReasonCode::GRANTED_QOS_1,
                ReasonCode::UNSPECIFIED_ERROR,
            ],
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 11,
            properties: UnsubscribeProperties {
                user_properties: if v5 { user() } else { Vec::new() },
            },
            filters: vec![
                TopicFilter::new("a/+/c").unwrap(),
                TopicFilter::new("#").unwrap(),
            ],
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
            Packet::Disconnect(Disconnect::new(ReasonCode::SERVER_SHUTTING_DOWN)),
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
