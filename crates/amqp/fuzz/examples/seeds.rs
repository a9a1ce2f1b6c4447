//! Writes a seed corpus for the fuzz targets through the codec's own
//! encoder (`junction_amqp::codec::Output`): every method of AMQP 0-9-1
//! (and RabbitMQ's extensions amq-protocol knows), the ones that carry
//! field tables with a table holding every field type, a content header
//! with every basic property, body frames and a heartbeat; one frame per
//! file, and all of them in one stream. Without
//! seeds a short run seldom builds a method frame whose class, method and
//! arguments all parse.
//!
//! From crates/amqp, `cargo run --manifest-path fuzz/Cargo.toml --example
//! seeds -- fuzz/corpus` writes `fuzz/corpus/decode/` and
//! `fuzz/corpus/decode_split/`, each in its target's input format.

use std::fs;
use std::path::Path;

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::protocol::{
    AMQPClass, access, basic, channel, confirm, connection, exchange, queue, tx,
};
use amq_protocol::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable};
use bytes::Bytes;
use junction_amqp::codec::Output;

/// A table holding one value of every field type, a nested table and an
/// array (the types RabbitMQ's clients send in arguments and headers).
fn every_type() -> FieldTable {
    let mut inner = FieldTable::default();
    inner.insert("count".into(), AMQPValue::LongLongInt(2));
    inner.insert("reason".into(), AMQPValue::LongString("expired".into()));
    let mut t = FieldTable::default();
    t.insert("t".into(), AMQPValue::Boolean(true));
    t.insert("b".into(), AMQPValue::ShortShortInt(-1));
    t.insert("B".into(), AMQPValue::ShortShortUInt(255));
    t.insert("s".into(), AMQPValue::ShortInt(-2));
    t.insert("u".into(), AMQPValue::ShortUInt(65535));
    t.insert("I".into(), AMQPValue::LongInt(-3));
    t.insert("i".into(), AMQPValue::LongUInt(4));
    t.insert("l".into(), AMQPValue::LongLongInt(-5));
    t.insert("f".into(), AMQPValue::Float(1.5));
    t.insert("d".into(), AMQPValue::Double(-2.25));
    t.insert(
        "D".into(),
        AMQPValue::DecimalValue(DecimalValue {
            scale: 2,
            value: 314,
        }),
    );
    t.insert("S".into(), AMQPValue::LongString("long string".into()));
    t.insert(
        "A".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::FieldTable(inner.clone()),
            AMQPValue::LongInt(7),
            AMQPValue::Void,
        ])),
    );
    t.insert("T".into(), AMQPValue::Timestamp(1_700_000_000));
    t.insert("F".into(), AMQPValue::FieldTable(inner));
    t.insert(
        "x".into(),
        AMQPValue::ByteArray(ByteArray::from(&b"\x00\xff"[..])),
    );
    t.insert("V".into(), AMQPValue::Void);
    t
}

/// Queue arguments as clients declare them.
fn queue_arguments() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("x-message-ttl".into(), AMQPValue::LongInt(60_000));
    t.insert("x-max-length".into(), AMQPValue::LongInt(1000));
    t.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("dlx".into()),
    );
    t.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    t.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(10));
    t
}

/// Every basic property set.
fn all_properties() -> AMQPProperties {
    AMQPProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("gzip".into())
        .with_headers(every_type())
        .with_delivery_mode(2)
        .with_priority(5)
        .with_correlation_id("corr-1".into())
        .with_reply_to("amq.rabbitmq.reply-to".into())
        .with_expiration("60000".into())
        .with_message_id("msg-1".into())
        .with_timestamp(1_700_000_000)
        .with_type("order.created".into())
        .with_user_id("guest".into())
        .with_app_id("seeds".into())
        .with_cluster_id("c1".into())
}

/// Every method, the ones with tables or names filled in.
fn methods() -> Vec<AMQPClass> {
    use AMQPClass as C;
    let mut client_properties = every_type();
    let mut capabilities = FieldTable::default();
    capabilities.insert("publisher_confirms".into(), AMQPValue::Boolean(true));
    capabilities.insert("consumer_cancel_notify".into(), AMQPValue::Boolean(true));
    client_properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    vec![
        C::Connection(connection::AMQPMethod::Start(connection::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: client_properties.clone(),
            mechanisms: "PLAIN AMQPLAIN".into(),
            locales: "en_US".into(),
        })),
        C::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties,
            mechanism: "PLAIN".into(),
            response: "\0guest\0guest".into(),
            locale: "en_US".into(),
        })),
        C::Connection(connection::AMQPMethod::Secure(Default::default())),
        C::Connection(connection::AMQPMethod::SecureOk(Default::default())),
        C::Connection(connection::AMQPMethod::Tune(connection::Tune {
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: 60,
        })),
        C::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: 60,
        })),
        C::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: "/".into(),
        })),
        C::Connection(connection::AMQPMethod::OpenOk(Default::default())),
        C::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "Goodbye".into(),
            class_id: 0,
            method_id: 0,
        })),
        C::Connection(connection::AMQPMethod::CloseOk(Default::default())),
        C::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
            reason: "low on memory".into(),
        })),
        C::Connection(connection::AMQPMethod::Unblocked(Default::default())),
        C::Connection(connection::AMQPMethod::UpdateSecret(Default::default())),
        C::Connection(connection::AMQPMethod::UpdateSecretOk(Default::default())),
        C::Channel(channel::AMQPMethod::Open(Default::default())),
        C::Channel(channel::AMQPMethod::OpenOk(Default::default())),
        C::Channel(channel::AMQPMethod::Flow(channel::Flow { active: true })),
        C::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
            active: true,
        })),
        C::Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: 404,
            reply_text: "NOT_FOUND - no queue 'q'".into(),
            class_id: 50,
            method_id: 10,
        })),
        C::Channel(channel::AMQPMethod::CloseOk(Default::default())),
        C::Access(access::AMQPMethod::Request(Default::default())),
        C::Access(access::AMQPMethod::RequestOk(Default::default())),
        C::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
            exchange: "logs".into(),
            kind: "topic".into(),
            durable: true,
            arguments: every_type(),
            ..Default::default()
        })),
        C::Exchange(exchange::AMQPMethod::DeclareOk(Default::default())),
        C::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
            exchange: "logs".into(),
            if_unused: true,
            ..Default::default()
        })),
        C::Exchange(exchange::AMQPMethod::DeleteOk(Default::default())),
        C::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
            destination: "x2".into(),
            source: "amq.topic".into(),
            routing_key: "a.*.#".into(),
            arguments: every_type(),
            ..Default::default()
        })),
        C::Exchange(exchange::AMQPMethod::BindOk(Default::default())),
        C::Exchange(exchange::AMQPMethod::Unbind(exchange::Unbind {
            destination: "x2".into(),
            source: "amq.topic".into(),
            routing_key: "a.*.#".into(),
            ..Default::default()
        })),
        C::Exchange(exchange::AMQPMethod::UnbindOk(Default::default())),
        C::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "orders".into(),
            durable: true,
            arguments: queue_arguments(),
            ..Default::default()
        })),
        C::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
            queue: "orders".into(),
            message_count: 3,
            consumer_count: 1,
        })),
        C::Queue(queue::AMQPMethod::Bind(queue::Bind {
            queue: "orders".into(),
            exchange: "amq.headers".into(),
            routing_key: "".into(),
            arguments: every_type(),
            ..Default::default()
        })),
        C::Queue(queue::AMQPMethod::BindOk(Default::default())),
        C::Queue(queue::AMQPMethod::Purge(queue::Purge {
            queue: "orders".into(),
            ..Default::default()
        })),
        C::Queue(queue::AMQPMethod::PurgeOk(Default::default())),
        C::Queue(queue::AMQPMethod::Delete(queue::Delete {
            queue: "orders".into(),
            if_empty: true,
            ..Default::default()
        })),
        C::Queue(queue::AMQPMethod::DeleteOk(Default::default())),
        C::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
            queue: "orders".into(),
            exchange: "amq.direct".into(),
            routing_key: "orders".into(),
            ..Default::default()
        })),
        C::Queue(queue::AMQPMethod::UnbindOk(Default::default())),
        C::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 10,
            global: false,
        })),
        C::Basic(basic::AMQPMethod::QosOk(Default::default())),
        C::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: "orders".into(),
            consumer_tag: "ctag-1".into(),
            arguments: every_type(),
            ..Default::default()
        })),
        C::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
            consumer_tag: "ctag-1".into(),
        })),
        C::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
            consumer_tag: "ctag-1".into(),
            nowait: false,
        })),
        C::Basic(basic::AMQPMethod::CancelOk(Default::default())),
        C::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "amq.topic".into(),
            routing_key: "a.b".into(),
            mandatory: true,
            immediate: false,
        })),
        C::Basic(basic::AMQPMethod::Return(basic::Return {
            reply_code: 312,
            reply_text: "NO_ROUTE".into(),
            exchange: "amq.topic".into(),
            routing_key: "a.b".into(),
        })),
        C::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
            consumer_tag: "ctag-1".into(),
            delivery_tag: 1,
            redelivered: true,
            exchange: "amq.topic".into(),
            routing_key: "a.b".into(),
        })),
        C::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: "orders".into(),
            no_ack: true,
        })),
        C::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
            delivery_tag: 2,
            redelivered: false,
            exchange: "".into(),
            routing_key: "orders".into(),
            message_count: 5,
        })),
        C::Basic(basic::AMQPMethod::GetEmpty(Default::default())),
        C::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: 3,
            multiple: true,
        })),
        C::Basic(basic::AMQPMethod::Reject(basic::Reject {
            delivery_tag: 4,
            requeue: false,
        })),
        C::Basic(basic::AMQPMethod::RecoverAsync(Default::default())),
        C::Basic(basic::AMQPMethod::Recover(basic::Recover { requeue: true })),
        C::Basic(basic::AMQPMethod::RecoverOk(Default::default())),
        C::Basic(basic::AMQPMethod::Nack(basic::Nack {
            delivery_tag: 5,
            multiple: true,
            requeue: true,
        })),
        C::Tx(tx::AMQPMethod::Select(Default::default())),
        C::Tx(tx::AMQPMethod::SelectOk(Default::default())),
        C::Tx(tx::AMQPMethod::Commit(Default::default())),
        C::Tx(tx::AMQPMethod::CommitOk(Default::default())),
        C::Tx(tx::AMQPMethod::Rollback(Default::default())),
        C::Tx(tx::AMQPMethod::RollbackOk(Default::default())),
        C::Confirm(confirm::AMQPMethod::Select(Default::default())),
        C::Confirm(confirm::AMQPMethod::SelectOk(Default::default())),
    ]
}

/// Connection methods go on channel 0, the others on channel 1.
fn channel_of(m: &AMQPClass) -> u16 {
    match m {
        AMQPClass::Connection(_) => 0,
        _ => 1,
    }
}

fn flat(out: &mut Output) -> Vec<u8> {
    out.take().iter().flat_map(|b| b.iter().copied()).collect()
}

fn write(root: &Path, name: &str, stream: &[u8]) {
    fs::write(root.join("decode").join(name), stream).expect("write seed");
    // Split in the middle of the stream.
    let at = u16::try_from(stream.len() / 2).unwrap_or(u16::MAX);
    let mut split = at.to_le_bytes().to_vec();
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
    let mut out = Output::default();
    let mut count = 0;
    for (i, m) in methods().into_iter().enumerate() {
        out.method(channel_of(&m), m);
        write(root, &format!("seed-method-{i:02}"), &flat(&mut out));
        count += 1;
    }

    // Content: a header with every property and a body in three frames,
    // and a header and a body alone.
    let body = Bytes::from(vec![b'x'; 5000]);
    out.content(1, all_properties(), &body, 2048);
    write(root, "seed-content", &flat(&mut out));
    out.content(
        1,
        AMQPProperties::default(),
        &Bytes::from_static(b"hello"),
        4096,
    );
    let header_and_body = flat(&mut out);
    let header_len = header_and_body.len() - (5 + 8);
    write(root, "seed-header", &header_and_body[..header_len]);
    write(root, "seed-body", &header_and_body[header_len..]);
    out.heartbeat();
    write(root, "seed-heartbeat", &flat(&mut out));
    count += 4;

    // The methods as one stream, with content and heartbeats between.
    for (i, m) in methods().into_iter().enumerate() {
        out.method(channel_of(&m), m);
        if i % 8 == 0 {
            out.content(
                1,
                all_properties(),
                &Bytes::from_static(b"{\"id\":1}"),
                4096,
            );
            out.heartbeat();
        }
    }
    write(root, "seed-stream", &flat(&mut out));
    count += 1;
    println!("wrote {count} seeds under {}", root.display());
}
