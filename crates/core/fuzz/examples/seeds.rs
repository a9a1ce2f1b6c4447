//! Writes a seed corpus for the fuzz targets through the core's own
//! encoders: messages with every property and every field type in their
//! headers, and every other record kind `decode_record` reads, one record
//! per file. Without seeds a short run seldom gets past a message's
//! twenty-odd fields.
//!
//! From crates/core, `cargo run --manifest-path fuzz/Cargo.toml --example
//! seeds -- fuzz/corpus` writes `fuzz/corpus/decode_message/` and
//! `fuzz/corpus/decode_record/`, each in its target's input format.

use std::fs;
use std::path::Path;

use bytes::Bytes;
use junction_core::codec::{Writer, encode_message};
use junction_core::ids::{ConnectionId, MessageId, QueueId};
use junction_core::records::{
    encode_binding, encode_entry, encode_exchange, encode_queue, entry_key, retained_key,
};
use junction_core::{
    Binding, Destination, ExchangeDef, ExchangeKind, FieldTable, FieldValue, Message, Origin,
    Properties, Protocol, QueueDef,
};
use junction_core_fuzz::Kind;

/// A table holding one value of every field type, a nested table and an
/// array.
fn every_type() -> FieldTable {
    let mut inner = FieldTable::new();
    inner.insert("count", FieldValue::I64(2));
    inner.insert("reason", FieldValue::string("expired"));
    let mut t = FieldTable::new();
    t.insert("t", FieldValue::Bool(true));
    t.insert("b", FieldValue::I8(-1));
    t.insert("B", FieldValue::U8(255));
    t.insert("s", FieldValue::I16(-2));
    t.insert("u", FieldValue::U16(65535));
    t.insert("I", FieldValue::I32(-3));
    t.insert("i", FieldValue::U32(4));
    t.insert("l", FieldValue::I64(-5));
    t.insert("L", FieldValue::U64(6));
    t.insert("f", FieldValue::F32(1.5));
    t.insert("d", FieldValue::F64(-2.25));
    t.insert(
        "D",
        FieldValue::Decimal {
            scale: 2,
            value: 314,
        },
    );
    t.insert("S", FieldValue::ShortString("short".into()));
    t.insert("Z", FieldValue::LongString(Bytes::from_static(b"\xff\x00")));
    t.insert("T", FieldValue::Timestamp(1_700_000_000));
    t.insert("F", FieldValue::Table(inner.clone()));
    t.insert(
        "A",
        FieldValue::Array(vec![
            FieldValue::Table(inner),
            FieldValue::Array(vec![FieldValue::Void]),
            FieldValue::I32(7),
        ]),
    );
    t.insert("x", FieldValue::ByteArray(Bytes::from_static(b"abc")));
    t.insert("V", FieldValue::Void);
    t
}

fn messages() -> Vec<Message> {
    let full = Message {
        id: MessageId(42),
        exchange: "amq.topic".into(),
        routing_key: "sensors.a.b".into(),
        properties: Properties {
            content_type: Some("application/json".into()),
            content_encoding: Some("gzip".into()),
            headers: every_type(),
            delivery_mode: Some(2),
            priority: Some(5),
            correlation_id: Some("corr-1".into()),
            reply_to: Some("replies".into()),
            expiration: Some("60000".into()),
            message_id: Some("msg-1".into()),
            timestamp: Some(1_700_000_000),
            kind: Some("order.created".into()),
            user_id: Some("guest".into()),
            app_id: Some("seeds".into()),
        },
        body: Bytes::from_static(b"{\"id\":1}"),
        origin: Origin {
            protocol: Protocol::Mqtt,
            connection: ConnectionId(9),
        },
    };
    let plain = Message::new("", "orders", Bytes::from_static(b"hello"));
    let mut amqp = plain.clone().persistent();
    amqp.origin = Origin {
        protocol: Protocol::Amqp,
        connection: ConnectionId(1),
    };
    vec![full, plain, amqp]
}

fn records() -> Vec<(Kind, Vec<u8>)> {
    let mut queue_args = FieldTable::new();
    queue_args.insert("x-message-ttl", FieldValue::I32(60_000));
    queue_args.insert("x-dead-letter-exchange", FieldValue::string("dlx"));
    queue_args.insert("x-max-priority", FieldValue::U8(10));
    let mut headers_args = FieldTable::new();
    headers_args.insert("x-match", FieldValue::string("any"));
    headers_args.insert("region", FieldValue::string("eu"));
    let mut exchange = ExchangeDef::new("logs", ExchangeKind::Headers);
    exchange.arguments = every_type();
    let mut queue = QueueDef::new("orders");
    queue.arguments = queue_args;
    let mut value = Writer::new();
    value.value(&FieldValue::Table(every_type()));
    let mut table = Writer::new();
    table.table(&every_type());
    vec![
        (Kind::Exchange, encode_exchange("/", &exchange).to_vec()),
        (
            Kind::Exchange,
            encode_exchange("prod", &ExchangeDef::new("amq.topic", ExchangeKind::Topic)).to_vec(),
        ),
        (Kind::Queue, encode_queue("/", QueueId(7), &queue).to_vec()),
        (
            Kind::Binding,
            encode_binding(
                "/",
                &Binding {
                    source: "amq.headers".into(),
                    destination: Destination::Queue("orders".into()),
                    routing_key: String::new(),
                    arguments: headers_args,
                },
            ),
        ),
        (
            Kind::Binding,
            encode_binding(
                "/",
                &Binding {
                    source: "amq.topic".into(),
                    destination: Destination::Exchange("x2".into()),
                    routing_key: "a.*.#".into(),
                    arguments: FieldTable::new(),
                },
            ),
        ),
        (
            Kind::Entry,
            encode_entry(MessageId(42), 1_700_000_060_000).to_vec(),
        ),
        (Kind::EntryKey, entry_key(QueueId(7), 256)),
        (Kind::RetainedKey, retained_key("/", "sensors/a/b")),
        (Kind::Value, value.finish().to_vec()),
        (Kind::Table, table.finish().to_vec()),
    ]
}

fn main() {
    let root = std::env::args()
        .nth(1)
        .expect("usage: seeds CORPUS_ROOT (e.g. fuzz/corpus)");
    let root = Path::new(&root);
    for target in ["decode_message", "decode_record"] {
        fs::create_dir_all(root.join(target)).expect("create corpus dir");
    }
    let mut count = 0;
    for (i, m) in messages().iter().enumerate() {
        let path = root
            .join("decode_message")
            .join(format!("seed-message-{i}"));
        fs::write(path, encode_message(m)).expect("write seed");
        count += 1;
    }
    for (i, (kind, record)) in records().into_iter().enumerate() {
        let mut input = vec![kind.byte()];
        input.extend_from_slice(&record);
        let path = root
            .join("decode_record")
            .join(format!("seed-{i:02}-{kind:?}").to_lowercase());
        fs::write(path, input).expect("write seed");
        count += 1;
    }
    println!("wrote {count} seeds under {}", root.display());
}
