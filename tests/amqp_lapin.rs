//! The AMQP 0-9-1 adapter end to end through lapin, a client nobody here
//! wrote: content and property round trips, publisher confirms, prefetch,
//! redelivery after a consumer's connection goes, mandatory returns,
//! transactions, the channel errors clients rely on, dead-lettering, and
//! crash safety of confirmed messages across a SIGKILL of the real binary.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use junction_testsupport::{BrokerProcess, InProcessBroker, temp_dir};
use lapin::message::{BasicGetMessage, Delivery};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer, ErrorKind,
    ExchangeKind,
};

const JUNCTION: &str = env!("CARGO_BIN_EXE_junction");

/// Bound on any one step: a login (argon2 in a debug build is slow), a
/// method round trip, a delivery.
const STEP: Duration = Duration::from_secs(30);

/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(400);

/// The frame_max Junction offers in `connection.tune` (AmqpSettings default).
const FRAME_MAX: u32 = 131_072;

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no outcome within {STEP:?}"))
}

async fn connect(addr: SocketAddr) -> Connection {
    within(
        "connect",
        Connection::connect(
            &format!("amqp://guest:guest@{addr}/%2f"),
            ConnectionProperties::default(),
        ),
    )
    .await
    .expect("connect as guest")
}

async fn open_channel(conn: &Connection) -> Channel {
    within("channel.open", conn.create_channel())
        .await
        .expect("channel.open")
}

async fn declare(ch: &Channel, name: &str, options: QueueDeclareOptions, args: FieldTable) {
    within(
        "queue.declare",
        ch.queue_declare(name.into(), options, args),
    )
    .await
    .unwrap_or_else(|e| panic!("declare {name}: {e}"));
}

/// Ready messages in `queue`, by a passive declare on a channel of its own.
async fn ready_count(conn: &Connection, queue: &str) -> u32 {
    let ch = open_channel(conn).await;
    let q = within(
        "passive queue.declare",
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions::default().passive(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("passive declare {queue}: {e}"));
    within("channel.close", ch.close(200, "done".into()))
        .await
        .expect("channel.close");
    q.message_count()
}

async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8], props: BasicProperties) {
    within(
        "basic.publish",
        ch.basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        ),
    )
    .await
    .expect("basic.publish");
}

async fn consume(ch: &Channel, queue: &str) -> Consumer {
    within(
        "basic.consume",
        ch.basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("basic.consume")
}

async fn next_delivery(consumer: &mut Consumer, what: &str) -> Delivery {
    within(what, consumer.next())
        .await
        .unwrap_or_else(|| panic!("{what}: consumer ended"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Fails if `consumer` yields anything within [`QUIET`].
async fn assert_quiet(consumer: &mut Consumer, why: &str) {
    if let Ok(extra) = tokio::time::timeout(QUIET, consumer.next()).await {
        let extra = extra.map(|r| r.map(|d| String::from_utf8_lossy(&d.data).into_owned()));
        panic!("{why}: got {extra:?}");
    }
}

/// basic.get on `queue`; None is get-empty.
async fn get(ch: &Channel, queue: &str, no_ack: bool) -> Option<BasicGetMessage> {
    within(
        "basic.get",
        ch.basic_get(queue.into(), BasicGetOptions { no_ack }),
    )
    .await
    .expect("basic.get")
}

async fn ack(d: &Delivery) {
    within("basic.ack", d.ack(BasicAckOptions::default()))
        .await
        .expect("basic.ack");
}

/// The reply code and text of a channel or connection error from the broker.
fn amqp_error(e: &lapin::Error) -> (u16, String) {
    match e.kind() {
        ErrorKind::ProtocolError(p) => (p.get_id(), p.get_message().as_str().to_string()),
        other => panic!("expected an AMQP error from the broker, got {other:?}"),
    }
}

fn text(d: &Delivery) -> String {
    String::from_utf8(d.data.clone()).expect("utf-8 body")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// One header of every field type AMQP 0-9-1 tables carry, nested too.
/// No short string: amq-protocol writes it with type tag `_`, which no
/// 0-9-1 parser (amq-protocol's own included) reads back; the broker
/// rightly closes such a connection with 502 SYNTAX_ERROR.
fn headers_of_every_type() -> FieldTable {
    let mut inner = FieldTable::default();
    inner.insert("deep".into(), AMQPValue::Boolean(false));
    inner.insert("n".into(), AMQPValue::LongInt(42));
    let mut h = FieldTable::default();
    h.insert("bool".into(), AMQPValue::Boolean(true));
    h.insert("i8".into(), AMQPValue::ShortShortInt(-3));
    h.insert("u8".into(), AMQPValue::ShortShortUInt(200));
    h.insert("i16".into(), AMQPValue::ShortInt(-300));
    h.insert("u16".into(), AMQPValue::ShortUInt(60_000));
    h.insert("i32".into(), AMQPValue::LongInt(-70_000));
    h.insert("u32".into(), AMQPValue::LongUInt(4_000_000_000));
    h.insert("i64".into(), AMQPValue::LongLongInt(-(1 << 40)));
    h.insert("f32".into(), AMQPValue::Float(1.5));
    h.insert("f64".into(), AMQPValue::Double(-2.25));
    h.insert(
        "decimal".into(),
        AMQPValue::DecimalValue(DecimalValue {
            scale: 2,
            value: 12_345,
        }),
    );
    h.insert(
        "long".into(),
        AMQPValue::LongString(LongString::from("héllo wörld")),
    );
    h.insert(
        "binary".into(),
        AMQPValue::LongString(LongString::from(vec![0u8, 0xCE, 0xFF, 0x01])),
    );
    h.insert(
        "array".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::LongInt(1),
            AMQPValue::LongString("two".into()),
            AMQPValue::Boolean(true),
        ])),
    );
    h.insert("ts".into(), AMQPValue::Timestamp(1_700_000_000));
    h.insert("table".into(), AMQPValue::FieldTable(inner));
    h.insert(
        "bytes".into(),
        AMQPValue::ByteArray(ByteArray::from(vec![9u8, 8, 7])),
    );
    h.insert("void".into(), AMQPValue::Void);
    h
}

/// Every basic property Junction keeps. `cluster-id` is left out: it is
/// deprecated in 0-9-1 and dropped by design (crates/amqp/src/convert.rs).
fn every_property(message_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/octet-stream".into())
        .with_content_encoding("identity".into())
        .with_headers(headers_of_every_type())
        .with_delivery_mode(2)
        .with_priority(7)
        .with_correlation_id("corr-1".into())
        .with_reply_to("reply.queue".into())
        .with_expiration("600000".into())
        .with_message_id(message_id.into())
        .with_timestamp(1_700_000_123)
        .with_type("test.kind".into())
        .with_user_id("guest".into())
        .with_app_id("junction-tests".into())
}

/// A body whose bytes are not all alike, so a reordered or dropped frame shows.
fn patterned_body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_basic_property_and_header_type_round_trips_with_the_body_byte_identical() {
    let broker = InProcessBroker::start(false).await;
    let conn = connect(broker.addr("amqp")).await;
    assert_eq!(conn.configuration().frame_max(), FRAME_MAX);
    let ch = open_channel(&conn).await;
    declare(
        &ch,
        "props",
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    let bodies: [(&str, Vec<u8>); 3] = [
        ("small", b"hello, junction".to_vec()),
        // Three body frames each way at frame_max 131072.
        ("300KiB", patterned_body(300 * 1024)),
        ("empty", Vec::new()),
    ];
    for (id, body) in &bodies {
        publish(&ch, "", "props", body, every_property(id)).await;
    }
    let mut consumer = consume(&ch, "props").await;
    for (id, body) in &bodies {
        let d = next_delivery(&mut consumer, id).await;
        assert_eq!(d.properties, every_property(id), "properties of {id}");
        assert_eq!(d.data.len(), body.len(), "body length of {id}");
        assert!(d.data == *body, "body of {id} differs");
        assert_eq!(
            (d.exchange.as_str(), d.routing_key.as_str(), d.redelivered),
            ("", "props", false),
            "{id}"
        );
        ack(&d).await;
    }
    assert_quiet(&mut consumer, "three published, three delivered").await;
}

/// AMQP 0-9-1 basic content header: an absent property flag means the
/// property was not set, and a broker passes the flags through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_left_unset_come_back_unset() {
    let broker = InProcessBroker::start(false).await;
    let conn = connect(broker.addr("amqp")).await;
    let ch = open_channel(&conn).await;
    declare(
        &ch,
        "bare",
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    publish(
        &ch,
        "",
        "bare",
        b"no properties",
        BasicProperties::default(),
    )
    .await;
    let got = get(&ch, "bare", true).await.expect("a message");
    assert_eq!(got.delivery.data, b"no properties");
    assert_eq!(got.delivery.properties, BasicProperties::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_publishes_to_a_durable_queue_are_all_confirmed_with_ack() {
    let broker = InProcessBroker::start(true).await;
    let conn = connect(broker.addr("amqp")).await;
    let ch = open_channel(&conn).await;
    declare(
        &ch,
        "durable-confirms",
        QueueDeclareOptions::durable(),
        FieldTable::default(),
    )
    .await;
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    let mut confirms = Vec::new();
    for i in 0..50 {
        let confirm = within(
            "basic.publish",
            ch.basic_publish(
                "".into(),
                "durable-confirms".into(),
                BasicPublishOptions::default(),
                format!("persistent {i}").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            ),
        )
        .await
        .expect("basic.publish");
        confirms.push(confirm);
    }
    for (i, confirm) in confirms.into_iter().enumerate() {
        let c = within("confirm", confirm).await.expect("confirm");
        assert_eq!(c, Confirmation::Ack(None), "confirm of message {i}");
    }
    assert_eq!(ready_count(&conn, "durable-confirms").await, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_refused_by_a_full_reject_publish_queue_is_nacked() {
    let broker = InProcessBroker::start(false).await;
    let conn = connect(broker.addr("amqp")).await;
    let ch = open_channel(&conn).await;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    declare(&ch, "one-slot", QueueDeclareOptions::default(), args).await;
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    let mut outcomes = Vec::new();
    for body in ["first", "second"] {
        let confirm = within(
            "basic.publish",
            ch.basic_publish(
                "".into(),
                "one-slot".into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default(),
            ),
        )
        .await
        .expect("basic.publish");
        outcomes.push(within("confirm", confirm).await.expect("confirm"));
    }
    assert_eq!(
        outcomes,
        vec![Confirmation::Ack(None), Confirmation::Nack(None)]
    );
    let kept = get(&ch, "one-slot", true).await.expect("the first message");
    assert_eq!(
        (kept.delivery.data.as_slice(), kept.message_count),
        (&b"first"[..], 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_of_five_holds_back_deliveries_until_acked() {
    let broker = InProcessBroker::start(false).await;
    let conn = connect(broker.addr("amqp")).await;
    let publisher = open_channel(&conn).await;
    declare(
        &publisher,
        "prefetch",
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    for i in 0..20 {
        publish(
            &publisher,
            "",
            "prefetch",
            format!("m{i:02}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    assert_eq!(ready_count(&conn, "prefetch").await, 20);
    let ch = open_channel(&conn).await;
    within("basic.qos", ch.basic_qos(5, BasicQosOptions::default()))
        .await
        .expect("basic.qos");
    let mut consumer = consume(&ch, "prefetch").await;
    let mut unacked = std::collections::VecDeque::new();
    let mut seen = Vec::new();
    for _ in 0..5 {
        let d = next_delivery(&mut consumer, "within the prefetch window").await;
        seen.push(text(&d));
        unacked.push_back(d);
    }
    assert_quiet(&mut consumer, "a sixth delivery with 5 unacked").await;
    while seen.len() < 20 {
        let oldest = unacked.pop_front().expect("an unacked delivery");
        ack(&oldest).await;
        let d = next_delivery(&mut consumer, "one more after an ack").await;
        seen.push(text(&d));
        unacked.push_back(d);
        assert_quiet(&mut consumer, "more than one delivery per ack").await;
    }
    let expected: Vec<String> = (0..20).map(|i| format!("m{i:02}")).collect();
    assert_eq!(seen, expected);
    for d in &unacked {
        ack(d).await;
    }
    assert_eq!(ready_count(&conn, "prefetch").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_of_a_closed_consumer_connection_are_redelivered_to_another() {
    let broker = InProcessBroker::start(false).await;
    let addr = broker.addr("amqp");
    let setup = connect(addr).await;
    let ch = open_channel(&setup).await;
    declare(
        &ch,
        "handover",
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    for i in 0..10 {
        publish(
            &ch,
            "",
            "handover",
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }

    let doomed = connect(addr).await;
    let doomed_ch = open_channel(&doomed).await;
    within(
        "basic.qos",
        doomed_ch.basic_qos(4, BasicQosOptions::default()),
    )
    .await
    .expect("basic.qos");
    let mut first = consume(&doomed_ch, "handover").await;
    let mut taken = Vec::new();
    for _ in 0..4 {
        taken.push(next_delivery(&mut first, "first consumer").await);
    }
    assert_eq!(
        taken.iter().map(text).collect::<Vec<_>>(),
        ["m0", "m1", "m2", "m3"]
    );
    ack(&taken[0]).await;
    ack(&taken[1]).await;
    // The freed credit brings m4 and m5; m2..m5 stay unacked when the
    // connection goes.
    for _ in 0..2 {
        taken.push(next_delivery(&mut first, "first consumer after acks").await);
    }
    assert_eq!(
        taken.iter().map(text).collect::<Vec<_>>(),
        ["m0", "m1", "m2", "m3", "m4", "m5"]
    );
    assert_quiet(&mut first, "prefetch 4 with 4 unacked").await;
    within("connection.close", doomed.close(200, "gone".into()))
        .await
        .expect("connection.close");

    let second_conn = connect(addr).await;
    let second_ch = open_channel(&second_conn).await;
    let mut second = consume(&second_ch, "handover").await;
    let mut got = Vec::new();
    for _ in 0..8 {
        let d = next_delivery(&mut second, "second consumer").await;
        got.push((text(&d), d.redelivered));
        ack(&d).await;
    }
    let expected: Vec<(String, bool)> = (2..10).map(|i| (format!("m{i}"), i < 6)).collect();
    assert_eq!(got, expected);
    assert_quiet(&mut second, "acked messages must not come back").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandatory_publish_without_a_route_is_returned_with_312_no_route() {
    let broker = InProcessBroker::start(false).await;
    let conn = connect(broker.addr("amqp")).await;
    let ch = open_channel(&conn).await;
    within(
        "exchange.declare",
        ch.exchange_declare(
            "unbound.direct".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.declare");
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    let props = BasicProperties::default()
        .with_delivery_mode(1)
        .with_priority(3)
        .with_message_id("lost".into());
    for exchange in ["unbound.direct", ""] {
        let confirm = within(
            "basic.publish",
            ch.basic_publish(
                exchange.into(),
                "nowhere".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                b"returned body",
                props.clone(),
            ),
        )
        .await
        .expect("basic.publish");
        let confirmation = within("confirm", confirm).await.expect("confirm");
        let Confirmation::Ack(Some(returned)) = confirmation else {
            panic!("via {exchange:?}: expected Ack with a returned message, got {confirmation:?}");
        };
        assert_eq!(
            (returned.reply_code, returned.reply_text.as_str()),
            (312, "NO_ROUTE"),
            "via {exchange:?}"
        );
        assert_eq!(
            (
                returned.delivery.exchange.as_str(),
                returned.delivery.routing_key.as_str()
            ),
            (exchange, "nowhere")
        );
        assert_eq!(returned.delivery.data, b"returned body");
        assert_eq!(returned.delivery.properties, props);
    }
    // Not mandatory: dropped silently, still confirmed.
    let confirm = within(
        "basic.publish",
        ch.basic_publish(
            "unbound.direct".into(),
            "nowhere".into(),
            BasicPublishOptions::default(),
            b"dropped",
            props.clone(),
        ),
    )
    .await
    .expect("basic.publish");
    assert_eq!(
        within("confirm", confirm).await.expect("confirm"),
        Confirmation::Ack(None)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_rollback_discards_publishes_and_acks_and_tx_commit_applies_them() {
    let broker = InProcessBroker::start(false).await;
    let conn = connect(broker.addr("amqp")).await;
    let ch = open_channel(&conn).await;
    declare(
        &ch,
        "tx",
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    within("tx.select", ch.tx_select())
        .await
        .expect("tx.select");
    for body in ["r1", "r2", "r3"] {
        publish(&ch, "", "tx", body.as_bytes(), BasicProperties::default()).await;
    }
    within("tx.rollback", ch.tx_rollback())
        .await
        .expect("tx.rollback");
    assert_eq!(ready_count(&conn, "tx").await, 0, "rolled-back publishes");
    for body in ["c1", "c2"] {
        publish(&ch, "", "tx", body.as_bytes(), BasicProperties::default()).await;
    }
    assert_eq!(ready_count(&conn, "tx").await, 0, "before commit");
    within("tx.commit", ch.tx_commit())
        .await
        .expect("tx.commit");
    assert_eq!(ready_count(&conn, "tx").await, 2, "committed publishes");

    // An ack rolled back leaves the message unacked: closing the channel
    // requeues it.
    let getter = open_channel(&conn).await;
    within("tx.select", getter.tx_select())
        .await
        .expect("tx.select");
    let got = get(&getter, "tx", false).await.expect("c1");
    assert_eq!(got.delivery.data, b"c1");
    ack(&got.delivery).await;
    within("tx.rollback", getter.tx_rollback())
        .await
        .expect("tx.rollback");
    within("channel.close", getter.close(200, "done".into()))
        .await
        .expect("channel.close");
    assert_eq!(ready_count(&conn, "tx").await, 2, "rolled-back ack");

    let getter = open_channel(&conn).await;
    within("tx.select", getter.tx_select())
        .await
        .expect("tx.select");
    let got = get(&getter, "tx", false).await.expect("c1 again");
    assert_eq!(
        (got.delivery.data.as_slice(), got.redelivered),
        (&b"c1"[..], true)
    );
    ack(&got.delivery).await;
    within("tx.commit", getter.tx_commit())
        .await
        .expect("tx.commit");
    within("channel.close", getter.close(200, "done".into()))
        .await
        .expect("channel.close");
    assert_eq!(ready_count(&conn, "tx").await, 1, "committed ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_declare_of_a_missing_queue_is_channel_error_404() {
    let broker = InProcessBroker::start(false).await;
    let conn = connect(broker.addr("amqp")).await;
    let ch = open_channel(&conn).await;
    let err = within(
        "passive queue.declare",
        ch.queue_declare(
            "no-such-queue".into(),
            QueueDeclareOptions::default().passive(),
            FieldTable::default(),
        ),
    )
    .await
    .expect_err("missing queue");
    assert_eq!(
        amqp_error(&err),
        (
            404,
            "NOT_FOUND - no queue 'no-such-queue' in vhost '/'".to_string()
        )
    );
    assert!(err.is_amqp_soft_error(), "a channel error: {err}");
    assert!(!ch.status().connected(), "the channel is closed");
    assert!(conn.status().connected(), "the connection stays open");
    let other = open_channel(&conn).await;
    declare(
        &other,
        "after-404",
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclaring_a_queue_with_other_arguments_is_channel_error_406() {
    let broker = InProcessBroker::start(false).await;
    let conn = connect(broker.addr("amqp")).await;
    let ch = open_channel(&conn).await;
    let mut ten = FieldTable::default();
    ten.insert("x-max-length".into(), AMQPValue::LongInt(10));
    declare(&ch, "shaped", QueueDeclareOptions::default(), ten.clone()).await;
    declare(&ch, "shaped", QueueDeclareOptions::default(), ten).await;
    let mut twenty = FieldTable::default();
    twenty.insert("x-max-length".into(), AMQPValue::LongInt(20));
    let err = within(
        "queue.declare",
        ch.queue_declare("shaped".into(), QueueDeclareOptions::default(), twenty),
    )
    .await
    .expect_err("inequivalent arguments");
    let (code, text) = amqp_error(&err);
    assert_eq!(code, 406, "{text}");
    assert_eq!(
        text,
        "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'shaped' in vhost '/': \
         received '20' but current is '10'"
    );
    assert!(err.is_amqp_soft_error(), "a channel error: {err}");
    assert!(conn.status().connected(), "the connection stays open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_queue_is_locked_to_other_connections_and_dies_with_its_owner() {
    let broker = InProcessBroker::start(false).await;
    let addr = broker.addr("amqp");
    let owner = connect(addr).await;
    let owner_ch = open_channel(&owner).await;
    declare(
        &owner_ch,
        "mine",
        QueueDeclareOptions::exclusive(),
        FieldTable::default(),
    )
    .await;
    publish(
        &owner_ch,
        "",
        "mine",
        b"private",
        BasicProperties::default(),
    )
    .await;

    let other = connect(addr).await;
    let locked = (
        405,
        "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'mine'".to_string(),
    );
    let ch = open_channel(&other).await;
    let err = within(
        "passive queue.declare",
        ch.queue_declare(
            "mine".into(),
            QueueDeclareOptions::default().passive(),
            FieldTable::default(),
        ),
    )
    .await
    .expect_err("locked");
    assert_eq!(amqp_error(&err), locked, "passive declare");
    let ch = open_channel(&other).await;
    let err = within(
        "basic.get",
        ch.basic_get("mine".into(), BasicGetOptions::default()),
    )
    .await
    .expect_err("locked");
    assert_eq!(amqp_error(&err), locked, "basic.get");
    let ch = open_channel(&other).await;
    let err = within(
        "basic.consume",
        ch.basic_consume(
            "mine".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect_err("locked");
    assert_eq!(amqp_error(&err), locked, "basic.consume");
    let own = get(&owner_ch, "mine", true).await.expect("the message");
    assert_eq!(own.delivery.data, b"private");

    within("connection.close", owner.close(200, "bye".into()))
        .await
        .expect("connection.close");
    // The queue goes when the broker has finished with the connection,
    // which may be just after our close-ok.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let ch = open_channel(&other).await;
        let r = within(
            "passive queue.declare",
            ch.queue_declare(
                "mine".into(),
                QueueDeclareOptions::default().passive(),
                FieldTable::default(),
            ),
        )
        .await;
        match r {
            Err(e) => {
                assert_eq!(
                    amqp_error(&e),
                    (404, "NOT_FOUND - no queue 'mine' in vhost '/'".to_string())
                );
                break;
            }
            Ok(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "exclusive queue outlived its owner by 5 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// RabbitMQ checks exclusive access by connection: the owner may declare
/// its queue passively (as clients do to read the message count) or
/// redeclare it, whatever the exclusive flag of that declare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_may_passively_declare_its_exclusive_queue() {
    let broker = InProcessBroker::start(false).await;
    let conn = connect(broker.addr("amqp")).await;
    let ch = open_channel(&conn).await;
    declare(
        &ch,
        "owned",
        QueueDeclareOptions::exclusive(),
        FieldTable::default(),
    )
    .await;
    publish(&ch, "", "owned", b"one", BasicProperties::default()).await;
    declare(
        &ch,
        "owned",
        QueueDeclareOptions::exclusive(),
        FieldTable::default(),
    )
    .await;
    assert_eq!(ready_count(&conn, "owned").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_get_takes_messages_in_order_then_reports_empty() {
    let broker = InProcessBroker::start(false).await;
    let conn = connect(broker.addr("amqp")).await;
    let ch = open_channel(&conn).await;
    declare(
        &ch,
        "pull",
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    for body in ["g1", "g2"] {
        publish(&ch, "", "pull", body.as_bytes(), BasicProperties::default()).await;
    }
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = get(&ch, "pull", false).await.expect("get-ok");
        got.push((
            text(&m.delivery),
            m.message_count,
            m.redelivered,
            m.routing_key.as_str().to_string(),
        ));
        ack(&m.delivery).await;
    }
    assert_eq!(
        got,
        vec![
            ("g1".to_string(), 1, false, "pull".to_string()),
            ("g2".to_string(), 0, false, "pull".to_string()),
        ]
    );
    let empty = get(&ch, "pull", false).await;
    assert!(empty.is_none(), "get-empty, got {empty:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_and_nack_with_requeue_redeliver_flagged_redelivered() {
    let broker = InProcessBroker::start(false).await;
    let conn = connect(broker.addr("amqp")).await;
    let ch = open_channel(&conn).await;
    declare(
        &ch,
        "bounce",
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    publish(&ch, "", "bounce", b"boomerang", BasicProperties::default()).await;

    let consumer_ch = open_channel(&conn).await;
    let mut consumer = consume(&consumer_ch, "bounce").await;
    let first = next_delivery(&mut consumer, "first delivery").await;
    assert_eq!(
        (text(&first), first.redelivered),
        ("boomerang".into(), false)
    );
    within(
        "basic.reject",
        first.reject(BasicRejectOptions { requeue: true }),
    )
    .await
    .expect("basic.reject");
    let again = next_delivery(&mut consumer, "after reject requeue").await;
    assert_eq!(
        (text(&again), again.redelivered),
        ("boomerang".into(), true)
    );
    within(
        "basic.nack",
        again.nack(BasicNackOptions {
            multiple: false,
            requeue: true,
        }),
    )
    .await
    .expect("basic.nack");
    let third = next_delivery(&mut consumer, "after nack requeue").await;
    assert_eq!(
        (text(&third), third.redelivered),
        ("boomerang".into(), true)
    );
    within(
        "basic.nack",
        third.nack(BasicNackOptions {
            multiple: false,
            requeue: false,
        }),
    )
    .await
    .expect("basic.nack");
    assert_quiet(&mut consumer, "nack without requeue drops it").await;
    assert_eq!(ready_count(&conn, "bounce").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_message_is_dead_lettered_with_x_death() {
    let broker = InProcessBroker::start(false).await;
    let conn = connect(broker.addr("amqp")).await;
    let ch = open_channel(&conn).await;
    within(
        "exchange.declare",
        ch.exchange_declare(
            "dlx".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.declare");
    declare(
        &ch,
        "graveyard",
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    within(
        "queue.bind",
        ch.queue_bind(
            "graveyard".into(),
            "dlx".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.bind");
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("dlx".into()),
    );
    declare(&ch, "work", QueueDeclareOptions::default(), args).await;
    let mut headers = FieldTable::default();
    headers.insert("origin".into(), AMQPValue::LongString("test".into()));
    let props = BasicProperties::default()
        .with_delivery_mode(1)
        .with_message_id("doomed".into())
        .with_headers(headers);
    publish(&ch, "", "work", b"dead letter", props).await;
    let got = get(&ch, "work", false).await.expect("the message");
    let before = unix_now();
    within(
        "basic.reject",
        got.delivery.reject(BasicRejectOptions { requeue: false }),
    )
    .await
    .expect("basic.reject");

    let mut consumer = consume(&ch, "graveyard").await;
    let dead = next_delivery(&mut consumer, "dead-lettered copy").await;
    let after = unix_now();
    assert_eq!(dead.data, b"dead letter");
    assert_eq!(
        (
            dead.exchange.as_str(),
            dead.routing_key.as_str(),
            dead.redelivered
        ),
        ("dlx", "work", false)
    );
    assert_eq!(
        dead.properties
            .message_id()
            .as_ref()
            .map(ShortString::as_str),
        Some("doomed")
    );
    let h = dead
        .properties
        .headers()
        .clone()
        .expect("dead-lettered message has headers");
    let h = h.inner();
    let long = |s: &str| AMQPValue::LongString(s.into());
    assert_eq!(h.get("origin"), Some(&long("test")), "own header kept");
    for (k, v) in [
        ("x-first-death-reason", "rejected"),
        ("x-first-death-queue", "work"),
        ("x-first-death-exchange", ""),
        ("x-last-death-reason", "rejected"),
        ("x-last-death-queue", "work"),
        ("x-last-death-exchange", ""),
    ] {
        assert_eq!(h.get(k), Some(&long(v)), "{k}");
    }
    let Some(AMQPValue::FieldArray(deaths)) = h.get("x-death") else {
        panic!("x-death is not an array: {:?}", h.get("x-death"));
    };
    let [AMQPValue::FieldTable(death)] = deaths.as_slice() else {
        panic!("expected one x-death entry: {deaths:?}");
    };
    let death = death.inner();
    let Some(AMQPValue::Timestamp(time)) = death.get("time") else {
        panic!("x-death time is not a timestamp: {death:?}");
    };
    assert!(
        (before..=after).contains(time),
        "x-death time {time} outside [{before}, {after}]"
    );
    let mut rest: Vec<(String, AMQPValue)> = death
        .iter()
        .filter(|(k, _)| k.as_str() != "time")
        .map(|(k, v)| (k.as_str().to_string(), v.clone()))
        .collect();
    rest.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        rest,
        vec![
            ("count".to_string(), AMQPValue::LongLongInt(1)),
            ("exchange".to_string(), long("")),
            ("queue".to_string(), long("work")),
            ("reason".to_string(), long("rejected")),
            (
                "routing-keys".to_string(),
                AMQPValue::FieldArray(FieldArray::from(vec![long("work")]))
            ),
        ]
    );
}

/// What the crash test's publisher saw before the broker died.
#[derive(Default)]
struct PublisherLog {
    /// Messages handed to the socket, in order (index = sequence).
    published: u64,
    /// Sequences confirmed with a plain ack.
    acked: Vec<u64>,
    /// Anything but a plain ack, for the test to fail on.
    odd: Vec<String>,
}

fn crash_body(seq: u64) -> Vec<u8> {
    let mut b = format!("crash-{seq:06}-").into_bytes();
    b.extend((0..200u64).map(|i| ((seq + i) % 251) as u8));
    b
}

fn crash_seq(body: &[u8]) -> u64 {
    let s = std::str::from_utf8(&body[6..12]).expect("sequence digits");
    let seq: u64 = s.parse().expect("sequence");
    assert_eq!(body, crash_body(seq).as_slice(), "body of {seq} intact");
    seq
}

/// The publisher's bound per step: shorter than [`STEP`], so it gives up
/// on a dead broker before the test stops waiting for it.
const PUBLISHER_STEP: Duration = Duration::from_secs(10);

/// Publishes persistent messages with confirms until the broker goes away.
async fn publish_until_killed(addr: SocketAddr, log: Arc<Mutex<PublisherLog>>) {
    let conn = connect(addr).await;
    let ch = open_channel(&conn).await;
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    let mut inflight = std::collections::VecDeque::new();
    for seq in 0..1_000_000u64 {
        let sent = tokio::time::timeout(
            PUBLISHER_STEP,
            ch.basic_publish(
                "".into(),
                "crash-safe".into(),
                BasicPublishOptions::default(),
                &crash_body(seq),
                BasicProperties::default().with_delivery_mode(2),
            ),
        )
        .await;
        match sent {
            Ok(Ok(confirm)) => inflight.push_back((seq, confirm)),
            _ => return,
        }
        log.lock().expect("log").published = seq + 1;
        while inflight.len() >= 32 {
            let (seq, confirm) = inflight.pop_front().expect("in flight");
            match tokio::time::timeout(PUBLISHER_STEP, confirm).await {
                Ok(Ok(Confirmation::Ack(None))) => log.lock().expect("log").acked.push(seq),
                Ok(Ok(other)) => log
                    .lock()
                    .expect("log")
                    .odd
                    .push(format!("{seq}: {other:?}")),
                _ => return,
            }
        }
    }
}

fn start_broker(data_dir: &Path) -> BrokerProcess {
    BrokerProcess::start_on(Path::new(JUNCTION), data_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_sigkill_exactly_once_in_order() {
    let dir = temp_dir();
    let mut broker = tokio::task::block_in_place(|| start_broker(dir.path()));
    let addr = broker.addr("amqp");
    let conn = connect(addr).await;
    let ch = open_channel(&conn).await;
    declare(
        &ch,
        "crash-safe",
        QueueDeclareOptions::durable(),
        FieldTable::default(),
    )
    .await;

    let log = Arc::new(Mutex::new(PublisherLog::default()));
    let publisher = tokio::spawn(publish_until_killed(addr, Arc::clone(&log)));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while log.lock().expect("log").acked.len() < 300 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "300 confirms not reached in 120 s"
        );
        assert!(!publisher.is_finished(), "publisher stopped early");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    broker.signal("KILL");
    let status = tokio::task::block_in_place(|| broker.wait_exit(Duration::from_secs(30)));
    assert_eq!(status.code(), None, "killed by a signal");
    within("publisher sees the broker gone", publisher)
        .await
        .expect("publisher task");
    let (published, acked, odd) = {
        let l = log.lock().expect("log");
        (l.published, l.acked.clone(), l.odd.clone())
    };
    assert!(odd.is_empty(), "confirms other than a plain ack: {odd:?}");
    assert!(acked.len() >= 300, "{} acked", acked.len());
    assert_eq!(
        acked,
        (0..acked.len() as u64).collect::<Vec<_>>(),
        "confirms arrive in publish order"
    );
    drop(broker);

    let restarted = tokio::task::block_in_place(|| start_broker(dir.path()));
    let conn = connect(restarted.addr("amqp")).await;
    let stored = ready_count(&conn, "crash-safe").await;
    assert!(
        (acked.len() as u64..=published).contains(&u64::from(stored)),
        "{stored} recovered; {} confirmed, {published} published",
        acked.len()
    );
    let ch = open_channel(&conn).await;
    let mut consumer = consume(&ch, "crash-safe").await;
    let mut seqs = Vec::new();
    for _ in 0..stored {
        let d = next_delivery(&mut consumer, "recovered message").await;
        seqs.push(crash_seq(&d.data));
        ack(&d).await;
    }
    assert_quiet(&mut consumer, "more than the recovered count").await;
    // One publisher on one channel, commits in order: what survives is a
    // prefix of what was published, holding every confirmed message once.
    assert_eq!(seqs, (0..u64::from(stored)).collect::<Vec<_>>());
}
