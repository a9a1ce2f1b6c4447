//! AMQP basic properties and field tables to and from the core message.
//! The core model is AMQP's own, so the mapping is one to one, with two
//! lossy corners listed in docs/amqp.md: the core has no `cluster-id`
//! (deprecated in 0-9-1, dropped), and an unsigned 64-bit header (which
//! AMQP cannot carry; MQTT/STOMP never produce one) goes out as a signed
//! 64-bit value, saturating.

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable as AmqpTable, LongString,
    ShortString,
};
use bytes::Bytes;
use junction_core::{FieldTable, FieldValue, Properties};

pub fn value_to_core(v: &AMQPValue) -> FieldValue {
    match v {
        AMQPValue::Boolean(b) => FieldValue::Bool(*b),
        AMQPValue::ShortShortInt(x) => FieldValue::I8(*x),
        AMQPValue::ShortShortUInt(x) => FieldValue::U8(*x),
        AMQPValue::ShortInt(x) => FieldValue::I16(*x),
        AMQPValue::ShortUInt(x) => FieldValue::U16(*x),
        AMQPValue::LongInt(x) => FieldValue::I32(*x),
        AMQPValue::LongUInt(x) => FieldValue::U32(*x),
        AMQPValue::LongLongInt(x) => FieldValue::I64(*x),
        AMQPValue::Float(x) => FieldValue::F32(*x),
        AMQPValue::Double(x) => FieldValue::F64(*x),
        AMQPValue::DecimalValue(d) => FieldValue::Decimal {
            scale: d.scale,
            value: d.value,
        },
        AMQPValue::ShortString(s) => FieldValue::ShortString(s.as_str().to_string()),
        AMQPValue::LongString(s) => FieldValue::LongString(Bytes::copy_from_slice(s.as_bytes())),
        AMQPValue::FieldArray(a) => {
            FieldValue::Array(a.as_slice().iter().map(value_to_core).collect())
        }
        AMQPValue::Timestamp(t) => FieldValue::Timestamp(*t),
        AMQPValue::FieldTable(t) => FieldValue::Table(table_to_core(t)),
        AMQPValue::ByteArray(b) => FieldValue::ByteArray(Bytes::copy_from_slice(b.as_slice())),
        AMQPValue::Void => FieldValue::Void,
    }
}

pub fn table_to_core(t: &AmqpTable) -> FieldTable {
    t.inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), value_to_core(v)))
        .collect()
}

pub fn value_from_core(v: &FieldValue) -> AMQPValue {
    match v {
        FieldValue::Bool(b) => AMQPValue::Boolean(*b),
        FieldValue::I8(x) => AMQPValue::ShortShortInt(*x),
        FieldValue::U8(x) => AMQPValue::ShortShortUInt(*x),
        FieldValue::I16(x) => AMQPValue::ShortInt(*x),
        FieldValue::U16(x) => AMQPValue::ShortUInt(*x),
        FieldValue::I32(x) => AMQPValue::LongInt(*x),
        FieldValue::U32(x) => AMQPValue::LongUInt(*x),
        FieldValue::I64(x) => AMQPValue::LongLongInt(*x),
        FieldValue::U64(x) => AMQPValue::LongLongInt(i64::try_from(*x).unwrap_or(i64::MAX)),
        FieldValue::F32(x) => AMQPValue::Float(*x),
        FieldValue::F64(x) => AMQPValue::Double(*x),
        FieldValue::Decimal { scale, value } => AMQPValue::DecimalValue(DecimalValue {
            scale: *scale,
            value: *value,
        }),
        // RabbitMQ's table dialect has no short strings (its 's' is a short
        // int), so text always goes out as a long string.
        FieldValue::ShortString(s) => {
            AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
        }
        FieldValue::LongString(b) => AMQPValue::LongString(LongString::from(b.to_vec())),
        FieldValue::Timestamp(t) => AMQPValue::Timestamp(*t),
        FieldValue::Table(t) => AMQPValue::FieldTable(table_from_core(t)),
        FieldValue::Array(a) => {
            let mut arr = FieldArray::default();
            for v in a {
                arr.push(value_from_core(v));
            }
            AMQPValue::FieldArray(arr)
        }
        FieldValue::ByteArray(b) => AMQPValue::ByteArray(ByteArray::from(b.to_vec())),
        FieldValue::Void => AMQPValue::Void,
    }
}

/// AMQP tables have unique keys: of repeated names (possible from MQTT user
/// properties) the first wins.
pub fn table_from_core(t: &FieldTable) -> AmqpTable {
    let mut out = AmqpTable::default();
    for (k, v) in t.iter() {
        if !out.contains_key(k) {
            out.insert(short(k), value_from_core(v));
        }
    }
    out
}

/// A short string, cut at 255 bytes (on a character boundary) if longer.
pub fn short(s: &str) -> ShortString {
    ShortString::from(cut_at_char_boundary(s, 255))
}

/// The longest prefix of `s` of at most `max` bytes that ends on a
/// character boundary (never a panic on multi-byte text).
pub fn cut_at_char_boundary(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn opt(s: &Option<ShortString>) -> Option<String> {
    s.as_ref().map(|s| s.as_str().to_string())
}

pub fn properties_to_core(p: &AMQPProperties) -> Properties {
    Properties {
        content_type: opt(p.content_type()),
        content_encoding: opt(p.content_encoding()),
        headers: p.headers().as_ref().map(table_to_core).unwrap_or_default(),
        delivery_mode: *p.delivery_mode(),
        priority: *p.priority(),
        correlation_id: opt(p.correlation_id()),
        reply_to: opt(p.reply_to()),
        expiration: opt(p.expiration()),
        message_id: opt(p.message_id()),
        timestamp: *p.timestamp(),
        kind: opt(p.kind()),
        user_id: opt(p.user_id()),
        app_id: opt(p.app_id()),
    }
}

pub fn properties_from_core(p: &Properties) -> AMQPProperties {
    let mut out = AMQPProperties::default();
    if let Some(v) = &p.content_type {
        out = out.with_content_type(short(v));
    }
    if let Some(v) = &p.content_encoding {
        out = out.with_content_encoding(short(v));
    }
    if !p.headers.is_empty() {
        out = out.with_headers(table_from_core(&p.headers));
    }
    if let Some(v) = p.delivery_mode {
        out = out.with_delivery_mode(v);
    }
    if let Some(v) = p.priority {
        out = out.with_priority(v);
    }
    if let Some(v) = &p.correlation_id {
        out = out.with_correlation_id(short(v));
    }
    if let Some(v) = &p.reply_to {
        out = out.with_reply_to(short(v));
    }
    if let Some(v) = &p.expiration {
        out = out.with_expiration(short(v));
    }
    if let Some(v) = &p.message_id {
        out = out.with_message_id(short(v));
    }
    if let Some(v) = p.timestamp {
        out = out.with_timestamp(v);
    }
    if let Some(v) = &p.kind {
        out = out.with_type(short(v));
    }
    if let Some(v) = &p.user_id {
        out = out.with_user_id(short(v));
    }
    if let Some(v) = &p.app_id {
        out = out.with_app_id(short(v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_round_trip_through_the_core() {
        let mut headers = AmqpTable::default();
        headers.insert("n".into(), AMQPValue::LongInt(-5));
        headers.insert("s".into(), AMQPValue::LongString("x".into()));
        let mut inner = AmqpTable::default();
        inner.insert("deep".into(), AMQPValue::Boolean(true));
        headers.insert("t".into(), AMQPValue::FieldTable(inner));
        let p = AMQPProperties::default()
            .with_content_type("application/json".into())
            .with_headers(headers)
            .with_delivery_mode(2)
            .with_priority(4)
            .with_correlation_id("c1".into())
            .with_reply_to("amq.gen-x".into())
            .with_expiration("60000".into())
            .with_message_id("m1".into())
            .with_timestamp(1_700_000_000)
            .with_type("k".into())
            .with_user_id("guest".into())
            .with_app_id("a".into());
        let core = properties_to_core(&p);
        assert!(core.is_persistent());
        assert_eq!(core.ttl_millis(), Some(60_000));
        assert_eq!(properties_from_core(&core), p);
    }

    #[test]
    fn long_short_strings_are_cut_on_a_char_boundary() {
        let s = "é".repeat(200);
        let cut = short(&s);
        assert_eq!(cut.as_str().len(), 254);
        assert_eq!(cut_at_char_boundary("aé", 2), "a");
        assert_eq!(cut_at_char_boundary("aé", 3), "aé");
        assert_eq!(cut_at_char_boundary("", 0), "");
    }
}
