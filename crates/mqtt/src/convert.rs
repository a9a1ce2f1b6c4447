//! MQTT ⇄ core: topic names and filters to AMQP routing keys and topic
//! patterns on `amq.topic`, and PUBLISH packets to and from the core
//! [`Message`]. The mapping tables are in docs/mqtt.md.
//!
//! The conversions the three adapters share (topic separators, reply
//! addresses, header values as text) are in `junction_core::interop`;
//! docs/interop.md has the cross-protocol tables.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use junction_core::interop::{self, ReplyAddress};
use junction_core::{FieldTable, FieldValue, Message, Origin, Properties};

pub use junction_core::interop::{H_PUBLISH_QOS, H_RETAIN, filter_to_pattern, swap_separators};

use crate::codec::{PayloadFormat, Publish, PublishProperties, QoS, TopicName};

/// The exchange every MQTT topic lives on.
pub const TOPIC_EXCHANGE: &str = interop::TOPIC_EXCHANGE;

/// The exchange of the broker's own `$SYS/...` topics: apart from
/// `amq.topic`, so queues bound there with `#` (AMQP consumers, MQTT
/// sessions) never fill up with them.
pub const SYS_EXCHANGE: &str = "junction.mqtt.sys";

/// Topics and filters starting with `$SYS` live on [`SYS_EXCHANGE`],
/// everything else on [`TOPIC_EXCHANGE`].
pub fn exchange_for(topic_or_filter: &str) -> &'static str {
    if topic_or_filter.starts_with("$SYS") {
        SYS_EXCHANGE
    } else {
        TOPIC_EXCHANGE
    }
}

/// Header: MQTT 5 Payload Format Indicator 1 (UTF-8 payload).
pub const H_PAYLOAD_FORMAT: &str = "x-mqtt-payload-format-indicator";
/// Header: MQTT 5 Correlation Data that is not a short UTF-8 string.
pub const H_CORRELATION_DATA: &str = interop::H_CORRELATION_DATA;

/// Topics under this prefix name a queue, not a topic: a PUBLISH to
/// `$queue/q` goes to queue `q` through the default exchange. It is the
/// Response Topic an MQTT responder gets for a requester that waits on a
/// queue (AMQP `reply_to`, STOMP `/temp-queue/`).
pub const QUEUE_PREFIX: &str = "$queue/";

/// Does the MQTT `topic` match the MQTT `filter`? A topic starting with
/// `$` is not matched by a filter starting with a wildcard [MQTT-4.7.2-1].
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

pub(crate) fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where a PUBLISH on `topic` goes: `amq.topic` and the topic with AMQP
/// separators, or for `$queue/q` the default exchange and key `q`.
pub fn address(topic: &str) -> (&'static str, String) {
    match topic.strip_prefix(QUEUE_PREFIX) {
        Some(queue) => ("", queue.to_string()),
        None => (TOPIC_EXCHANGE, swap_separators(topic)),
    }
}

/// A PUBLISH from a client as a core message on `amq.topic`. QoS 1 and 2
/// messages are persistent (stored in durable queues), QoS 0 ones are not.
pub fn to_core(p: &Publish, topic: &str, origin: Origin) -> Message {
    let mut headers = FieldTable::new();
    headers.insert(H_PUBLISH_QOS, FieldValue::I8(p.qos as i8));
    if p.retain {
        headers.insert(H_RETAIN, FieldValue::Bool(true));
    }
    let pp = &p.properties;
    let mut props = Properties {
        delivery_mode: Some(if p.qos == QoS::AtMostOnce { 1 } else { 2 }),
        content_type: pp.content_type.clone(),
        ..Properties::default()
    };
    if let Some(t) = &pp.response_topic {
        match t.as_str().strip_prefix(QUEUE_PREFIX) {
            Some(queue) => props.reply_to = Some(queue.to_string()),
            None => {
                let key = swap_separators(t.as_str());
                props.reply_to = Some(ReplyAddress::topic(&key));
                headers.insert(interop::H_REPLY_TO_TOPIC, FieldValue::string(key));
            }
        }
    }
    if pp.payload_format == Some(PayloadFormat::Utf8) {
        headers.insert(H_PAYLOAD_FORMAT, FieldValue::U8(1));
    }
    if let Some(secs) = pp.message_expiry_interval {
        props.expiration = Some((u64::from(secs) * 1000).to_string());
        props.timestamp = Some(unix_secs());
    }
    if let Some(cd) = &pp.correlation_data {
        match std::str::from_utf8(cd) {
            Ok(s) if s.len() <= 255 => props.correlation_id = Some(s.to_string()),
            _ => headers.insert(H_CORRELATION_DATA, FieldValue::ByteArray(cd.clone())),
        }
    }
    for (k, v) in &pp.user_properties {
        if k.starts_with("x-mqtt-") {
            // The adapter's own header names: a client cannot set them.
            continue;
        }
        // Pushed, not inserted: user properties may repeat a name.
        headers
            .0
            .push((k.clone(), FieldValue::LongString(Bytes::from(v.clone()))));
    }
    props.headers = headers;
    let body = junction_core::message::detach_body(p.payload.clone());
    let (exchange, key) = address(topic);
    let mut m = Message::new(exchange, key, body);
    m.properties = props;
    m.origin = origin;
    m
}

/// The QoS the message was published with: MQTT's own header (which
/// AMQP and STOMP publishers may set too), else AMQP's delivery mode
/// (persistent → 1, as RabbitMQ maps it).
pub fn published_qos(m: &Message) -> QoS {
    match interop::publish_qos(&m.properties) {
        2 => QoS::ExactlyOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::AtMostOnce,
    }
}

/// Whether the publisher set RETAIN (or the header that stands for it).
pub fn published_retain(m: &Message) -> bool {
    interop::retain_requested(&m.properties)
}

/// Seconds left before the message expires (`Some(0)`: expired), or None
/// when it has no expiry. Counted from the publish time in whole seconds.
pub fn remaining_expiry(m: &Message, now_unix: u64) -> Option<u32> {
    let p = &m.properties;
    // MQTT's own expiry is whole seconds, so `expiration` holds it exactly.
    let secs = p.ttl_millis()?.div_ceil(1000);
    let elapsed = p.timestamp.map_or(0, |t| now_unix.saturating_sub(t));
    Some(u32::try_from(secs.saturating_sub(elapsed)).unwrap_or(u32::MAX))
}

/// The MQTT 5 properties of a core message going to a client (the
/// subscription identifiers and topic alias are the session's to add).
/// Headers under `x-mqtt-` are the adapter's own and are not passed on.
pub fn from_core(m: &Message, now_unix: u64) -> PublishProperties {
    let p = &m.properties;
    let h = &p.headers;
    let mut out = PublishProperties {
        content_type: p.content_type.clone(),
        response_topic: response_topic(p),
        message_expiry_interval: remaining_expiry(m, now_unix),
        ..PublishProperties::default()
    };
    if h.get(H_PAYLOAD_FORMAT).and_then(interop::integer) == Some(1) {
        out.payload_format = Some(PayloadFormat::Utf8);
    }
    out.correlation_data = match h.get(H_CORRELATION_DATA) {
        Some(FieldValue::ByteArray(b)) if b.len() <= MAX_FIELD => Some(b.clone()),
        _ => p
            .correlation_id
            .as_ref()
            .map(|c| Bytes::from(c.clone().into_bytes())),
    };
    for (k, v) in h.iter() {
        // The adapter's own headers, and the Response Topic already sent.
        if k.starts_with("x-mqtt-") || k == interop::H_REPLY_TO_TOPIC {
            continue;
        }
        let text = interop::value_text(v);
        // An AMQP or STOMP header MQTT cannot carry (a string over 64 KiB,
        // or with U+0000) is left out: sent, it would make the whole
        // PUBLISH unencodable [MQTT-1.5.4-1] [MQTT-1.5.4-2].
        if mqtt_string(k) && mqtt_string(&text) {
            out.user_properties.push((k.to_string(), text));
        }
    }
    out
}

/// Longest MQTT string or binary field (a 16-bit length prefix).
const MAX_FIELD: usize = 65_535;

/// Can `s` be an MQTT UTF-8 string?
fn mqtt_string(s: &str) -> bool {
    s.len() <= MAX_FIELD && !s.contains('\0')
}

/// The Response Topic for a message's `reply_to`: a topic for an
/// `amq.topic` address, `$queue/q` for a queue (an AMQP or STOMP
/// requester's reply queue). Another exchange has no topic: none is sent.
/// Without `reply_to`, RabbitMQ's `x-reply-to-topic` header.
fn response_topic(p: &Properties) -> Option<TopicName> {
    let topic = match p.reply_to.as_deref() {
        Some(r) => match ReplyAddress::parse(r) {
            ReplyAddress::Exchange {
                exchange: interop::TOPIC_EXCHANGE,
                key,
            } => swap_separators(key),
            ReplyAddress::Queue(q) => format!("{QUEUE_PREFIX}{q}"),
            ReplyAddress::Exchange { .. } => return None,
        },
        None => swap_separators(p.headers.get(interop::H_REPLY_TO_TOPIC)?.as_str()?),
    };
    TopicName::new(topic).ok().filter(|t| !t.is_empty())
}

/// Levels of an MQTT topic or filter ("a/b/c" has three): the routing
/// key's words, which `[broker] max_topic_levels` limits.
pub fn topic_levels(topic: &str) -> usize {
    topic.bytes().filter(|&b| b == b'/').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use junction_core::{ConnectionId, Protocol};

    fn publish(topic: &str, qos: QoS) -> Publish {
        Publish {
            dup: false,
            qos,
            retain: false,
            topic: TopicName::new(topic).unwrap(),
            packet_id: (qos != QoS::AtMostOnce).then_some(1),
            properties: PublishProperties::default(),
            payload: Bytes::from_static(b"\x00\xff"),
        }
    }

    const ORIGIN: Origin = Origin {
        protocol: Protocol::Mqtt,
        connection: ConnectionId(7),
    };

    #[test]
    fn mqtt_4_7_1_filter_matching() {
        assert!(filter_matches("a/#", "a"));
        assert!(filter_matches("a/#", "a/b/c"));
        assert!(filter_matches("a/+/c", "a/b/c"));
        assert!(filter_matches("a/+", "a/"));
        assert!(filter_matches("+/+", "/x"));
        assert!(!filter_matches("a/+", "a/b/c"));
        assert!(!filter_matches("a/b", "a/b/c"));
        assert!(!filter_matches("a/b/c", "a/b"));
    }

    #[test]
    fn mqtt_4_7_2_1_dollar_topics_not_matched_by_leading_wildcards() {
        assert!(!filter_matches("#", "$SYS/broker/uptime"));
        assert!(!filter_matches("+/broker/uptime", "$SYS/broker/uptime"));
        assert!(filter_matches("$SYS/#", "$SYS/broker/uptime"));
        assert!(filter_matches("$SYS/+/uptime", "$SYS/broker/uptime"));
    }

    #[test]
    fn qos_decides_persistence_and_is_kept() {
        let m = to_core(&publish("a/b", QoS::AtMostOnce), "a/b", ORIGIN);
        assert_eq!(
            (m.exchange.as_str(), m.routing_key.as_str()),
            ("amq.topic", "a.b")
        );
        assert!(!m.properties.is_persistent());
        assert_eq!(published_qos(&m), QoS::AtMostOnce);
        let m = to_core(&publish("a/b", QoS::ExactlyOnce), "a/b", ORIGIN);
        assert!(m.properties.is_persistent());
        assert_eq!(published_qos(&m), QoS::ExactlyOnce);
        assert_eq!(m.body.as_ref(), b"\x00\xff");
        assert_eq!(m.origin, ORIGIN);
    }

    #[test]
    fn amqp_messages_get_qos_from_delivery_mode() {
        let m = Message::new("amq.topic", "a", Bytes::new());
        assert_eq!(published_qos(&m), QoS::AtMostOnce);
        assert_eq!(published_qos(&m.persistent()), QoS::AtLeastOnce);
    }

    #[test]
    fn v5_properties_round_trip_through_the_core() {
        let mut p = publish("dev/7/req", QoS::AtLeastOnce);
        p.retain = true;
        p.properties = PublishProperties {
            payload_format: Some(PayloadFormat::Utf8),
            message_expiry_interval: Some(60),
            response_topic: Some(TopicName::new("reply/dev7").unwrap()),
            correlation_data: Some(Bytes::from_static(b"req-42")),
            user_properties: vec![
                ("k".into(), "1".into()),
                ("k".into(), "2".into()),
                ("z".into(), "3".into()),
            ],
            content_type: Some("application/json".into()),
            ..PublishProperties::default()
        };
        let m = to_core(&p, "dev/7/req", ORIGIN);
        assert_eq!(m.properties.reply_to.as_deref(), Some("/topic/reply.dev7"));
        assert_eq!(
            m.properties.headers.get(interop::H_REPLY_TO_TOPIC),
            Some(&FieldValue::string("reply.dev7"))
        );
        assert_eq!(m.properties.correlation_id.as_deref(), Some("req-42"));
        assert_eq!(
            m.properties.content_type.as_deref(),
            Some("application/json")
        );
        assert_eq!(m.properties.expiration.as_deref(), Some("60000"));
        assert!(published_retain(&m));
        let now = m.properties.timestamp.unwrap();
        let back = from_core(&m, now + 5);
        assert_eq!(back.payload_format, Some(PayloadFormat::Utf8));
        assert_eq!(back.message_expiry_interval, Some(55));
        assert_eq!(back.response_topic.as_ref().unwrap().as_str(), "reply/dev7");
        assert_eq!(back.correlation_data.as_deref(), Some(&b"req-42"[..]));
        assert_eq!(back.content_type.as_deref(), Some("application/json"));
        assert_eq!(back.user_properties, p.properties.user_properties);
        assert_eq!(from_core(&m, now + 61).message_expiry_interval, Some(0));
    }

    #[test]
    fn binary_correlation_data_goes_to_a_header() {
        let mut p = publish("a", QoS::AtLeastOnce);
        p.properties.correlation_data = Some(Bytes::from_static(b"\xff\x00"));
        let m = to_core(&p, "a", ORIGIN);
        assert_eq!(m.properties.correlation_id, None);
        let back = from_core(&m, 0);
        assert_eq!(back.correlation_data.as_deref(), Some(&b"\xff\x00"[..]));
    }

    #[test]
    fn amqp_headers_become_user_properties() {
        let mut m = Message::new("amq.topic", "cmd.7", Bytes::new());
        m.properties.headers.insert("s", FieldValue::string("v"));
        m.properties.headers.insert("n", FieldValue::I32(-3));
        m.properties
            .headers
            .insert("t", FieldValue::Table(FieldTable::new()));
        m.properties.reply_to = Some("amq.rabbitmq.reply-to.abc".into());
        let p = from_core(&m, 0);
        assert_eq!(
            p.user_properties,
            vec![
                ("s".to_string(), "v".to_string()),
                ("n".into(), "-3".into()),
                ("t".into(), "{}".into())
            ]
        );
        assert_eq!(
            p.response_topic.unwrap().as_str(),
            "$queue/amq.rabbitmq.reply-to.abc"
        );
    }

    #[test]
    fn headers_mqtt_cannot_carry_are_left_out() {
        let mut m = Message::new("amq.topic", "a", Bytes::new());
        let h = &mut m.properties.headers;
        h.insert("big", FieldValue::string("x".repeat(65_536)));
        h.insert("nul", FieldValue::string("a\0b"));
        h.insert("fits", FieldValue::string("y".repeat(65_535)));
        h.insert(
            H_CORRELATION_DATA,
            FieldValue::ByteArray(Bytes::from(vec![0u8; 65_536])),
        );
        m.properties.correlation_id = Some("c-1".into());
        let p = from_core(&m, 0);
        assert_eq!(
            p.user_properties
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>(),
            ["fits"]
        );
        assert_eq!(p.correlation_data.as_deref(), Some(&b"c-1"[..]));
    }

    #[test]
    fn response_topics_for_each_reply_address() {
        let topic = |reply_to: &str| {
            let mut m = Message::new("amq.topic", "a", Bytes::new());
            m.properties.reply_to = Some(reply_to.into());
            from_core(&m, 0)
                .response_topic
                .map(|t| t.as_str().to_string())
        };
        assert_eq!(topic("/topic/r.dev/7").as_deref(), Some("r/dev.7"));
        assert_eq!(topic("/exchange/amq.topic/r.x").as_deref(), Some("r/x"));
        assert_eq!(topic("amq.gen-1").as_deref(), Some("$queue/amq.gen-1"));
        assert_eq!(topic("/queue/q").as_deref(), Some("$queue/q"));
        assert_eq!(topic("/exchange/logs/k"), None);
        assert_eq!(topic("/topic/a.#"), None);
        let mut m = Message::new("amq.topic", "a", Bytes::new());
        m.properties
            .headers
            .insert(interop::H_REPLY_TO_TOPIC, FieldValue::string("r.9"));
        let p = from_core(&m, 0);
        assert_eq!(p.response_topic.unwrap().as_str(), "r/9");
        assert!(p.user_properties.is_empty());
    }

    #[test]
    fn queue_topics_publish_to_a_queue() {
        let mut p = publish("$queue/work.items", QoS::AtLeastOnce);
        p.properties.response_topic = Some(TopicName::new("$queue/amq.gen-7").unwrap());
        let m = to_core(&p, "$queue/work.items", ORIGIN);
        assert_eq!(
            (m.exchange.as_str(), m.routing_key.as_str()),
            ("", "work.items")
        );
        assert_eq!(m.properties.reply_to.as_deref(), Some("amq.gen-7"));
        assert_eq!(m.properties.headers.get(interop::H_REPLY_TO_TOPIC), None);
    }
}
