//! Property-based round trips of the packets with the most structure:
//! PUBLISH, SUBSCRIBE and CONNECT, generated with arbitrary valid fields.

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use super::*;

fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![
        Just(ProtocolVersion::V3_1),
        Just(ProtocolVersion::V3_1_1),
        Just(ProtocolVersion::V5),
    ]
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce),
    ]
}

/// Any string without U+0000, some multi-byte.
fn text() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,12}"
}

fn topic_name() -> impl Strategy<Value = TopicName> {
    "[a-z$/é ]{1,12}".prop_map(|s| TopicName::new(s).expect("valid name"))
}

fn topic_filter() -> impl Strategy<Value = TopicFilter> {
    vec(prop_oneof!["[a-z0-9]{0,4}", Just("+".to_string())], 1..5).prop_flat_map(|levels| {
        let joined = match levels.join("/") {
            empty if empty.is_empty() => "+".to_string(),
            joined => joined,
        };
        prop_oneof![Just(joined.clone()), Just(format!("{joined}/#"))]
            .prop_map(|f| TopicFilter::new(f).expect("valid filter"))
    })
}

fn bytes() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..32).prop_map(Bytes::from)
}

fn user_properties() -> impl Strategy<Value = UserProperties> {
    vec((text(), text()), 0..3)
}

fn publish_properties() -> impl Strategy<Value = PublishProperties> {
    (
        option::of(prop_oneof![
            Just(PayloadFormat::Unspecified),
            Just(PayloadFormat::Utf8)
        ]),
        option::of(any::<u32>()),
        option::of(1..=u16::MAX),
        option::of(topic_name()),
        option::of(bytes()),
        user_properties(),
        vec(1..=268_435_455u32, 0..3),
        option::of(text()),
    )
        .prop_map(|(f, e, a, r, c, u, s, t)| PublishProperties {
            payload_format: f,
            message_expiry_interval: e,
            topic_alias: a,
            response_topic: r,
            correlation_data: c,
            user_properties: u,
            subscription_identifiers: s,
            content_type: t,
        })
}

fn publish(v: ProtocolVersion) -> impl Strategy<Value = Publish> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        1..=u16::MAX,
    )
        .prop_flat_map(move |(qos, dup, retain, topic, id)| {
            let props = if v.is_v5() {
                publish_properties().boxed()
            } else {
                Just(PublishProperties::default()).boxed()
            };
            (props, bytes()).prop_map(move |(properties, payload)| Publish {
                dup: dup && qos != QoS::AtMostOnce,
                qos,
                retain,
                topic: topic.clone(),
                packet_id: (qos != QoS::AtMostOnce).then_some(id),
                properties,
                payload,
            })
        })
}

fn subscribe(v: ProtocolVersion) -> impl Strategy<Value = Subscribe> {
    let options =
        (qos(), any::<bool>(), any::<bool>(), 0..3u8).prop_map(move |(q, nl, rap, rh)| {
            let mut o = SubscriptionOptions::new(q);
            if v.is_v5() {
                o.no_local = nl;
                o.retain_as_published = rap;
                o.retain_handling = match rh {
                    0 => RetainHandling::SendAtSubscribe,
                    1 => RetainHandling::SendAtSubscribeIfNew,
                    _ => RetainHandling::DoNotSend,
                };
            }
            o
        });
    let sub =
        (topic_filter(), options).prop_map(|(filter, options)| Subscription { filter, options });
    let props = (option::of(1..=268_435_455u32), user_properties()).prop_map(move |(s, u)| {
        if v.is_v5() {
            SubscribeProperties {
                subscription_identifier: s,
                user_properties: u,
            }
        } else {
            SubscribeProperties::default()
        }
    });
    (1..=u16::MAX, props, vec(sub, 1..4)).prop_map(|(packet_id, properties, subscriptions)| {
        Subscribe {
            packet_id,
            properties,
            subscriptions,
        }
    })
}

fn connect(v: ProtocolVersion) -> impl Strategy<Value = Connect> {
    let will = (
        topic_name(),
        bytes(),
        qos(),
        any::<bool>(),
        option::of(any::<u32>()),
    )
        .prop_map(move |(topic, payload, qos, retain, delay)| LastWill {
            topic,
            payload,
            qos,
            retain,
            properties: WillProperties {
                will_delay_interval: delay.filter(|_| v.is_v5()),
                ..WillProperties::default()
            },
        });
    let props = (
        option::of(any::<u32>()),
        option::of(1..=u16::MAX),
        user_properties(),
    )
        .prop_map(move |(expiry, receive, user)| {
            if v.is_v5() {
                ConnectProperties {
                    session_expiry_interval: expiry,
                    receive_maximum: receive,
                    user_properties: user,
                    ..ConnectProperties::default()
                }
            } else {
                ConnectProperties::default()
            }
        });
    (
        text(),
        any::<bool>(),
        any::<u16>(),
        props,
        option::of(will),
        option::of(text()),
        option::of(bytes()),
    )
        .prop_map(
            move |(client_id, clean_start, keep_alive, properties, will, username, password)| {
                // Before 5.0 a password needs a user name [MQTT-3.1.2-22].
                let username = match (&username, &password) {
                    (None, Some(_)) if !v.is_v5() => Some(String::new()),
                    _ => username,
                };
                Connect {
                    version: v,
                    client_id,
                    clean_start,
                    keep_alive,
                    properties,
                    will,
                    username,
                    password,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn mqtt_prop_publish_round_trips(p in version().prop_flat_map(|v| (Just(v), publish(v)))) {
        let (v, p) = p;
        round_trip(&Packet::Publish(p), v);
    }

    #[test]
    fn mqtt_prop_subscribe_round_trips(s in version().prop_flat_map(|v| (Just(v), subscribe(v)))) {
        let (v, s) = s;
        round_trip(&Packet::Subscribe(s), v);
    }

    #[test]
    fn mqtt_prop_connect_round_trips(c in version().prop_flat_map(|v| (Just(v), connect(v)))) {
        let (v, c) = c;
        round_trip(&Packet::Connect(c), v);
    }
}
