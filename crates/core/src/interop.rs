//! What every adapter agrees on when a message crosses protocols: names,
//! reply addresses, typed header values as text, and the headers that ask
//! for MQTT behaviour. One copy here, used by the MQTT, STOMP and AMQP
//! adapters and the core's router; docs/interop.md has the tables (and a
//! test reads them back against these functions).

use base64::Engine as _;

use crate::message::Properties;
use crate::value::{FieldTable, FieldValue};

/// The exchange MQTT topics and STOMP `/topic/` destinations share.
pub const TOPIC_EXCHANGE: &str = "amq.topic";

/// RabbitMQ's direct reply-to: an AMQP requester consumes from this name
/// (no-ack) and publishes with it as `reply_to`; the broker gives the
/// channel a private queue `amq.rabbitmq.reply-to.<id>` and puts that name
/// in `reply_to` instead.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Header: the QoS an MQTT publisher used (RabbitMQ's name). Any
/// publisher may set it (an integer, or the text `0`, `1` or `2`) to
/// choose the QoS MQTT subscribers get the message at.
pub const H_PUBLISH_QOS: &str = "x-mqtt-publish-qos";
/// Header: the publisher set MQTT's RETAIN flag. From AMQP (boolean true
/// or the text `true`) or STOMP (`true`), on a message published to
/// `amq.topic`, it makes the message the topic's retained message.
pub const H_RETAIN: &str = "x-mqtt-retain";
/// Header: MQTT 5 Correlation Data that is not a short UTF-8 string (a
/// byte array). STOMP carries it as base64 text and reads it back from
/// base64, so a STOMP responder that echoes it answers an MQTT requester
/// with the exact bytes.
pub const H_CORRELATION_DATA: &str = "x-mqtt-correlation-data";

/// Header: an MQTT Response Topic as an `amq.topic` routing key, as
/// RabbitMQ's MQTT plugin writes it for AMQP 0-9-1 consumers.
pub const H_REPLY_TO_TOPIC: &str = "x-reply-to-topic";

/// Swaps `/` and `.`: an MQTT topic to an AMQP routing key and back
/// (RabbitMQ's convention), so `plant/7/temp` is `plant.7.temp` and
/// `a.b/c` is `a/b.c`.
pub fn swap_separators(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '/' => '.',
            '.' => '/',
            c => c,
        })
        .collect()
}

/// An MQTT topic filter as an AMQP topic binding pattern: separators
/// swapped, `+` → `*`, `#` stays. (A level that is a literal `*` becomes
/// AMQP's one-word wildcard: AMQP patterns cannot say a literal `*`.)
pub fn filter_to_pattern(filter: &str) -> String {
    filter
        .split('/')
        .map(|level| match level {
            "+" => "*".to_string(),
            l => l.replace('.', "/"),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// An AMQP topic binding pattern as an MQTT filter: the inverse of
/// [`filter_to_pattern`] (`*` → `+`, separators swapped back).
pub fn pattern_to_filter(pattern: &str) -> String {
    pattern
        .split('.')
        .map(|word| match word {
            "*" => "+".to_string(),
            w => w.replace('/', "."),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Where a reply goes: the core's `reply_to` read as an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyAddress<'a> {
    /// A queue, reached through the default exchange (AMQP's convention:
    /// a bare name, or STOMP's `/queue/q`, `/amq/queue/q`, `/reply-queue/q`).
    Queue(&'a str),
    /// An exchange and routing key: `/topic/k` (on `amq.topic`, where an
    /// MQTT Response Topic lives) or `/exchange/x/k`.
    Exchange { exchange: &'a str, key: &'a str },
}

impl<'a> ReplyAddress<'a> {
    /// Reads a `reply_to` value. Anything that is not one of the address
    /// forms is a queue name, as AMQP has it.
    pub fn parse(s: &'a str) -> ReplyAddress<'a> {
        for prefix in ["/queue/", "/amq/queue/", "/reply-queue/"] {
            if let Some(q) = s.strip_prefix(prefix).filter(|q| !q.is_empty()) {
                return ReplyAddress::Queue(q);
            }
        }
        if let Some(key) = s.strip_prefix("/topic/").filter(|k| !k.is_empty()) {
            return ReplyAddress::Exchange {
                exchange: TOPIC_EXCHANGE,
                key,
            };
        }
        if let Some(rest) = s.strip_prefix("/exchange/") {
            let (exchange, key) = rest.split_once('/').unwrap_or((rest, ""));
            if !exchange.is_empty() {
                return ReplyAddress::Exchange { exchange, key };
            }
        }
        ReplyAddress::Queue(s)
    }

    /// The address of an `amq.topic` routing key (an MQTT Response Topic).
    pub fn topic(key: &str) -> String {
        format!("/topic/{key}")
    }

    /// Is this routing key, published to the default exchange, an address
    /// the router resolves (one starting with `/`)?
    pub fn is_address(routing_key: &str) -> bool {
        routing_key.starts_with('/')
    }
}

/// A header value read as a flag: boolean true, the text `true` (any
/// case), or a non-zero integer.
pub fn flag(v: &FieldValue) -> bool {
    match v {
        FieldValue::Bool(b) => *b,
        other => match other.as_str() {
            Some(s) => s.trim().eq_ignore_ascii_case("true"),
            None => other.as_i128().is_some_and(|n| n != 0),
        },
    }
}

/// A header value read as an integer: any integer type, or decimal text.
pub fn integer(v: &FieldValue) -> Option<i128> {
    v.as_i128()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

/// Does the message ask to be a topic's retained message (header
/// [`H_RETAIN`])?
pub fn retain_requested(p: &Properties) -> bool {
    p.headers.get(H_RETAIN).is_some_and(flag)
}

/// The QoS an MQTT subscriber may get the message at (before the
/// subscription's own maximum): header [`H_PUBLISH_QOS`] when it holds 0,
/// 1 or 2; else persistent → 1 and transient → 0 (RabbitMQ's rule).
pub fn publish_qos(p: &Properties) -> u8 {
    match p.headers.get(H_PUBLISH_QOS).and_then(integer) {
        Some(q @ 0..=2) => q as u8,
        _ if p.is_persistent() => 1,
        _ => 0,
    }
}

/// A typed header value as text, for protocols whose headers are text
/// (MQTT 5 user properties, STOMP headers). Every type has a form:
///
/// - strings as they are; a long string that is not UTF-8 as base64;
/// - booleans `true`/`false`; integers and timestamps (seconds) in decimal;
/// - floats in the shortest form that reads back to the same value
///   (`NaN`, `inf`, `-inf` for the others);
/// - decimals exactly (`value` with `scale` digits after the point);
/// - byte arrays as base64 (standard alphabet, padded);
/// - void as the empty string;
/// - tables and arrays as compact JSON, whose strings, numbers, booleans
///   and nulls follow the rules above (decimals, byte arrays and non-UTF-8
///   strings as JSON strings of their text form).
pub fn value_text(v: &FieldValue) -> String {
    match v {
        FieldValue::ShortString(s) => s.clone(),
        FieldValue::LongString(b) => match std::str::from_utf8(b) {
            Ok(s) => s.to_string(),
            Err(_) => base64_text(b),
        },
        FieldValue::Bool(b) => b.to_string(),
        FieldValue::F32(f) => float_text(f64::from(*f), format!("{f:?}")),
        FieldValue::F64(f) => float_text(*f, format!("{f:?}")),
        FieldValue::Decimal { scale, value } => decimal_text(*scale, *value),
        FieldValue::ByteArray(b) => base64_text(b),
        FieldValue::Void => String::new(),
        FieldValue::Table(_) | FieldValue::Array(_) => json(v).to_string(),
        other => other.as_i128().map(|n| n.to_string()).unwrap_or_default(),
    }
}

/// Bytes written as text by [`value_text`] (standard base64, padded).
pub fn base64_bytes(text: &str) -> Option<bytes::Bytes> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()
        .map(bytes::Bytes::from)
}

fn base64_text(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Rust's shortest round-trip form, with the names other languages read
/// for the values that are not numbers.
fn float_text(f: f64, shortest: String) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "inf".into() } else { "-inf".into() }
    } else {
        shortest
    }
}

/// `value / 10^scale`, written exactly: scale 2, value 150 is `1.50`.
fn decimal_text(scale: u8, value: u32) -> String {
    let digits = value.to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return digits;
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{int}.{frac}")
}

/// A table as a JSON object (the management API's `arguments`, `headers`).
pub fn table_json(t: &FieldTable) -> serde_json::Value {
    serde_json::Value::Object(t.iter().map(|(k, v)| (k.to_string(), json(v))).collect())
}

/// A JSON value as a field value: integers as `I64` (`U64` past it),
/// other numbers as `F64`, strings as long strings, objects as tables
/// (what RabbitMQ's management API does with `arguments`).
pub fn json_field(v: &serde_json::Value) -> FieldValue {
    use serde_json::Value;
    match v {
        Value::Null => FieldValue::Void,
        Value::Bool(b) => FieldValue::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => FieldValue::I64(i),
            (None, Some(u), _) => FieldValue::U64(u),
            (_, _, f) => FieldValue::F64(f.unwrap_or(0.0)),
        },
        Value::String(s) => FieldValue::string(s.clone()),
        Value::Array(a) => FieldValue::Array(a.iter().map(json_field).collect()),
        Value::Object(o) => FieldValue::Table(FieldTable(
            o.iter().map(|(k, v)| (k.clone(), json_field(v))).collect(),
        )),
    }
}

/// A JSON object as a table; anything else is an empty table.
pub fn json_table(v: &serde_json::Value) -> FieldTable {
    match json_field(v) {
        FieldValue::Table(t) => t,
        _ => FieldTable::new(),
    }
}

fn json(v: &FieldValue) -> serde_json::Value {
    use serde_json::Value;
    match v {
        FieldValue::Bool(b) => Value::Bool(*b),
        FieldValue::Void => Value::Null,
        FieldValue::F32(f) => serde_json::Number::from_f64(f64::from(*f))
            .map_or_else(|| Value::String(value_text(v)), Value::Number),
        FieldValue::F64(f) => serde_json::Number::from_f64(*f)
            .map_or_else(|| Value::String(value_text(v)), Value::Number),
        FieldValue::Table(t) => {
            Value::Object(t.iter().map(|(k, v)| (k.to_string(), json(v))).collect())
        }
        FieldValue::Array(a) => Value::Array(a.iter().map(json).collect()),
        other => match other.as_i128() {
            Some(n) => i64::try_from(n)
                .map(Value::from)
                .or_else(|_| u64::try_from(n).map(Value::from))
                .unwrap_or_else(|_| Value::String(n.to_string())),
            None => Value::String(value_text(other)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn separators_swap_both_ways() {
        assert_eq!(swap_separators("plant/7/temp"), "plant.7.temp");
        assert_eq!(swap_separators("a.b/c"), "a/b.c");
        assert_eq!(swap_separators(&swap_separators("x/y.z//")), "x/y.z//");
    }

    #[test]
    fn filters_become_topic_patterns() {
        assert_eq!(filter_to_pattern("cmd/+"), "cmd.*");
        assert_eq!(filter_to_pattern("a/#"), "a.#");
        assert_eq!(filter_to_pattern("#"), "#");
        assert_eq!(filter_to_pattern("+/v1.2/#"), "*.v1/2.#");
        for f in ["cmd/+", "a/#", "#", "+/v1.2/#", "plant/7/temp"] {
            assert_eq!(pattern_to_filter(&filter_to_pattern(f)), f);
        }
    }

    #[test]
    fn reply_addresses() {
        use ReplyAddress::*;
        assert_eq!(ReplyAddress::parse("amq.gen-1"), Queue("amq.gen-1"));
        assert_eq!(ReplyAddress::parse("/queue/q"), Queue("q"));
        assert_eq!(ReplyAddress::parse("/amq/queue/a/b"), Queue("a/b"));
        assert_eq!(ReplyAddress::parse("/reply-queue/r"), Queue("r"));
        assert_eq!(
            ReplyAddress::parse("/topic/reply.dev/7"),
            Exchange {
                exchange: "amq.topic",
                key: "reply.dev/7"
            }
        );
        assert_eq!(
            ReplyAddress::parse("/exchange/x/k.1"),
            Exchange {
                exchange: "x",
                key: "k.1"
            }
        );
        assert_eq!(
            ReplyAddress::parse("/exchange/x"),
            Exchange {
                exchange: "x",
                key: ""
            }
        );
        assert_eq!(ReplyAddress::parse("/topic/"), Queue("/topic/"));
        assert_eq!(ReplyAddress::parse("/elsewhere"), Queue("/elsewhere"));
        assert_eq!(ReplyAddress::topic("a.b"), "/topic/a.b");
    }

    #[test]
    fn qos_and_retain_headers_from_any_protocol() {
        let mut p = Properties::default();
        assert_eq!(publish_qos(&p), 0);
        p.delivery_mode = Some(2);
        assert_eq!(publish_qos(&p), 1);
        p.headers.insert(H_PUBLISH_QOS, FieldValue::string("2"));
        assert_eq!(publish_qos(&p), 2);
        p.headers.insert(H_PUBLISH_QOS, FieldValue::I8(0));
        assert_eq!(publish_qos(&p), 0);
        p.headers.insert(H_PUBLISH_QOS, FieldValue::I64(7));
        assert_eq!(publish_qos(&p), 1);
        assert!(!retain_requested(&p));
        for yes in [
            FieldValue::Bool(true),
            FieldValue::string("TRUE"),
            FieldValue::I32(1),
        ] {
            p.headers.insert(H_RETAIN, yes);
            assert!(retain_requested(&p));
        }
        for no in [
            FieldValue::Bool(false),
            FieldValue::string("yes"),
            FieldValue::I32(0),
        ] {
            p.headers.insert(H_RETAIN, no);
            assert!(!retain_requested(&p));
        }
    }

    #[test]
    fn every_value_type_has_a_text_form() {
        let t = |v: FieldValue| value_text(&v);
        assert_eq!(t(FieldValue::string("héllo")), "héllo");
        assert_eq!(
            t(FieldValue::LongString(Bytes::from_static(b"\x00\xff"))),
            "AP8="
        );
        assert_eq!(t(FieldValue::Bool(false)), "false");
        assert_eq!(t(FieldValue::I8(-8)), "-8");
        assert_eq!(t(FieldValue::U64(u64::MAX)), "18446744073709551615");
        assert_eq!(t(FieldValue::F32(0.1)), "0.1");
        assert_eq!(t(FieldValue::F64(3.0)), "3.0");
        assert_eq!(t(FieldValue::F64(-2.5e-300)), "-2.5e-300");
        assert_eq!(t(FieldValue::F64(f64::NAN)), "NaN");
        assert_eq!(t(FieldValue::F64(f64::NEG_INFINITY)), "-inf");
        assert_eq!(
            t(FieldValue::Decimal {
                scale: 2,
                value: 150
            }),
            "1.50"
        );
        assert_eq!(t(FieldValue::Decimal { scale: 3, value: 7 }), "0.007");
        assert_eq!(t(FieldValue::Decimal { scale: 0, value: 7 }), "7");
        assert_eq!(t(FieldValue::Timestamp(1_700_000_000)), "1700000000");
        assert_eq!(
            t(FieldValue::ByteArray(Bytes::from_static(b"\x01\x02\x03"))),
            "AQID"
        );
        assert_eq!(t(FieldValue::Void), "");
        let nested = FieldValue::Table(FieldTable(vec![
            ("n".into(), FieldValue::I32(1)),
            (
                "a".into(),
                FieldValue::Array(vec![
                    FieldValue::Bool(true),
                    FieldValue::Void,
                    FieldValue::string("x\"y"),
                    FieldValue::ByteArray(Bytes::from_static(b"\xff")),
                    FieldValue::Decimal { scale: 1, value: 5 },
                    FieldValue::F64(f64::INFINITY),
                ]),
            ),
            ("t".into(), FieldValue::Table(FieldTable::new())),
        ]));
        assert_eq!(
            t(nested),
            r#"{"a":[true,null,"x\"y","/w==","0.5","inf"],"n":1,"t":{}}"#
        );
    }
}
