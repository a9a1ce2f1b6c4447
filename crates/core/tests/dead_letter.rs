//! Dead-lettering through the broker's public API, as RabbitMQ does it: a
//! message rejected, expired, dropped by `x-max-length` or returned more
//! than `x-delivery-limit` times is republished to the queue's
//! `x-dead-letter-exchange` with an `x-death` history, and cycles without
//! a rejection are cut.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use junction_core::{
    Binding, Broker, BrokerConfig, ConnectionId, ConsumerEvent, ConsumerSpec, Destination,
    ExchangeDef, ExchangeKind, FieldTable, FieldValue, Message, Properties, QueueDef, Settle,
};
use junction_store::{Store, StoreOptions};
use tokio::sync::mpsc::unbounded_channel;

const VH: &str = "/";
/// The exchange messages are first published to.
const SOURCE_EXCHANGE: &str = "amq.direct";
const SOURCE_KEY: &str = "job";
const DLX: &str = "dlx";
const DEAD_KEY: &str = "dead-key";

fn int(v: i64) -> FieldValue {
    FieldValue::I64(v)
}

fn text(v: &str) -> FieldValue {
    FieldValue::string(v)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A broker with the queue "work" (declared from `work`) bound to
/// amq.direct with key "job", dead-lettering to the direct exchange "dlx"
/// with key "dead-key", which routes to the queue "dead".
async fn setup(work: QueueDef) -> Arc<Broker> {
    let b = Broker::open(Store::in_memory(), BrokerConfig::default())
        .await
        .expect("broker opens on an in-memory store");
    let dlx = ExchangeDef {
        durable: false,
        ..ExchangeDef::new(DLX, ExchangeKind::Direct)
    };
    b.declare_exchange(VH, dlx, false).await.unwrap();
    b.declare_queue(VH, QueueDef::new("dead").transient(), false)
        .await
        .unwrap();
    b.bind(VH, queue_binding(DLX, "dead", DEAD_KEY), None)
        .await
        .unwrap();
    let work = work
        .argument("x-dead-letter-exchange", text(DLX))
        .argument("x-dead-letter-routing-key", text(DEAD_KEY));
    b.declare_queue(VH, work, false).await.unwrap();
    b.bind(VH, queue_binding(SOURCE_EXCHANGE, "work", SOURCE_KEY), None)
        .await
        .unwrap();
    b
}

fn work_queue() -> QueueDef {
    QueueDef::new("work").transient()
}

fn queue_binding(source: &str, queue: &str, key: &str) -> Binding {
    Binding {
        source: source.into(),
        destination: Destination::Queue(queue.into()),
        routing_key: key.into(),
        arguments: FieldTable::new(),
    }
}

async fn publish_with(b: &Broker, exchange: &str, key: &str, body: &str, props: Properties) {
    let msg =
        Message::new(exchange, key, Bytes::copy_from_slice(body.as_bytes())).with_properties(props);
    let p = b.publish(VH, msg).await.expect("publish succeeds");
    assert_eq!(p.routed, 1, "{body} routed");
    assert!(p.confirmed().await.expect("receipt resolves"));
}

async fn publish(b: &Broker, body: &str) {
    publish_with(b, SOURCE_EXCHANGE, SOURCE_KEY, body, Properties::default()).await;
}

fn count(b: &Broker, queue: &str) -> u64 {
    b.vhost(VH).unwrap().queue(queue).unwrap().message_count()
}

/// Takes the one message waiting in `queue` (no-ack).
async fn take_one(b: &Broker, queue: &str) -> Arc<Message> {
    let holder = b.new_consumer_id();
    let got = b
        .get(VH, queue, holder, true, None)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("a message in {queue}"));
    assert_eq!(got.remaining, 0, "exactly one message in {queue}");
    got.delivery.message
}

/// Lets the queues' service tasks run (current-thread runtime).
async fn run_tasks() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

fn deaths(m: &Message) -> Vec<FieldTable> {
    match m.properties.headers.get("x-death") {
        Some(FieldValue::Array(entries)) => entries
            .iter()
            .map(|e| match e {
                FieldValue::Table(t) => t.clone(),
                other => panic!("x-death entry is not a table: {other:?}"),
            })
            .collect(),
        other => panic!("x-death is not an array: {other:?}"),
    }
}

/// Checks that `m` is the dead-lettered copy of a message published to
/// amq.direct with key "job" that died once in "work" for `reason`.
fn assert_died_once_in_work(m: &Message, reason: &str, before: u64, after: u64) {
    assert_eq!(m.exchange, DLX);
    assert_eq!(
        m.routing_key, DEAD_KEY,
        "x-dead-letter-routing-key replaces the key"
    );
    let d = deaths(m);
    assert_eq!(d.len(), 1, "one x-death entry: {d:?}");
    let entry = &d[0];
    let mut fields: Vec<&str> = entry.iter().map(|(k, _)| k).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        vec![
            "count",
            "exchange",
            "queue",
            "reason",
            "routing-keys",
            "time"
        ]
    );
    assert_eq!(entry.get("count").and_then(FieldValue::as_i128), Some(1));
    assert_eq!(
        entry.get("reason").and_then(FieldValue::as_str),
        Some(reason)
    );
    assert_eq!(
        entry.get("queue").and_then(FieldValue::as_str),
        Some("work")
    );
    assert_eq!(
        entry.get("exchange").and_then(FieldValue::as_str),
        Some(SOURCE_EXCHANGE)
    );
    assert_eq!(
        entry.get("routing-keys"),
        Some(&FieldValue::Array(vec![text(SOURCE_KEY)]))
    );
    match entry.get("time") {
        Some(FieldValue::Timestamp(t)) => {
            assert!(
                (before..=after).contains(t),
                "time {t} in {before}..={after}"
            )
        }
        other => panic!("time is not a timestamp: {other:?}"),
    }
    let h = &m.properties.headers;
    assert_eq!(h.get("x-first-death-reason"), Some(&text(reason)));
    assert_eq!(h.get("x-first-death-queue"), Some(&text("work")));
    assert_eq!(
        h.get("x-first-death-exchange"),
        Some(&text(SOURCE_EXCHANGE))
    );
}

#[tokio::test]
async fn rejected_message_is_dead_lettered_with_reason_rejected() {
    let b = setup(work_queue()).await;
    let before = unix_now();
    publish(&b, "m").await;
    let (tx, mut rx) = unbounded_channel();
    let c = b
        .consume(VH, "work", ConsumerSpec::new("c", ConnectionId(1)), tx)
        .unwrap();
    let Ok(ConsumerEvent::Deliver(d)) = rx.try_recv() else {
        panic!("expected a delivery");
    };
    c.settle(d.tag, Settle::Reject).unwrap();
    let after = unix_now();
    assert_eq!(count(&b, "work"), 0);
    assert_eq!(c.queue().unacked_count(), 0);
    let dead = take_one(&b, "dead").await;
    assert_eq!(dead.body, Bytes::from_static(b"m"));
    assert_died_once_in_work(&dead, "rejected", before, after);
}

#[tokio::test(start_paused = true)]
async fn expired_message_is_dead_lettered_with_reason_expired() {
    let b = setup(work_queue().argument("x-message-ttl", int(1000))).await;
    let before = unix_now();
    publish(&b, "m").await;
    tokio::time::advance(Duration::from_millis(999)).await;
    run_tasks().await;
    assert_eq!((count(&b, "work"), count(&b, "dead")), (1, 0));
    tokio::time::advance(Duration::from_millis(1)).await;
    run_tasks().await;
    let after = unix_now();
    assert_eq!((count(&b, "work"), count(&b, "dead")), (0, 1));
    assert_died_once_in_work(&*take_one(&b, "dead").await, "expired", before, after);
}

#[tokio::test]
async fn message_dropped_by_max_length_is_dead_lettered_with_reason_maxlen() {
    let b = setup(work_queue().argument("x-max-length", int(1))).await;
    let before = unix_now();
    publish(&b, "old").await;
    publish(&b, "new").await;
    let after = unix_now();
    assert_eq!(count(&b, "work"), 1);
    let dead = take_one(&b, "dead").await;
    assert_eq!(dead.body, Bytes::from_static(b"old"));
    assert_died_once_in_work(&dead, "maxlen", before, after);
}

#[tokio::test]
async fn second_requeue_past_delivery_limit_one_dead_letters_with_reason_delivery_limit() {
    let b = setup(work_queue().argument("x-delivery-limit", int(1))).await;
    let before = unix_now();
    publish(&b, "m").await;
    let holder = b.new_consumer_id();
    let first = b
        .get(VH, "work", holder, false, None)
        .await
        .unwrap()
        .unwrap();
    b.settle(&first.queue, holder, first.delivery.tag, Settle::Requeue)
        .unwrap();
    assert_eq!(
        (count(&b, "work"), count(&b, "dead")),
        (1, 0),
        "first requeue is allowed"
    );
    let second = b
        .get(VH, "work", holder, false, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.delivery.delivery_count, 1);
    b.settle(&second.queue, holder, second.delivery.tag, Settle::Requeue)
        .unwrap();
    let after = unix_now();
    assert_eq!((count(&b, "work"), count(&b, "dead")), (0, 1));
    assert_eq!(second.queue.unacked_count(), 0);
    assert_died_once_in_work(
        &*take_one(&b, "dead").await,
        "delivery_limit",
        before,
        after,
    );
}

#[tokio::test]
async fn dead_lettering_again_from_the_same_queue_and_reason_increments_the_count() {
    let b = Broker::open(Store::in_memory(), BrokerConfig::default())
        .await
        .unwrap();
    // Rejected messages go back to "work" itself through the default exchange.
    let work = QueueDef::new("work")
        .transient()
        .argument("x-dead-letter-exchange", text(""))
        .argument("x-dead-letter-routing-key", text("work"));
    b.declare_queue(VH, work, false).await.unwrap();
    publish_with(&b, "", "work", "m", Properties::default()).await;
    let holder = b.new_consumer_id();
    for round in 1..=3 {
        let got = b
            .get(VH, "work", holder, false, None)
            .await
            .unwrap()
            .unwrap();
        if round == 1 {
            assert_eq!(got.delivery.message.properties.headers.get("x-death"), None);
        } else {
            let d = deaths(&got.delivery.message);
            assert_eq!(d.len(), 1, "round {round}: one entry per queue and reason");
            assert_eq!(
                d[0].get("count").and_then(FieldValue::as_i128),
                Some(i128::from(round - 1)),
                "round {round}"
            );
        }
        b.settle(&got.queue, holder, got.delivery.tag, Settle::Reject)
            .unwrap();
        assert_eq!(count(&b, "work"), 1, "round {round}: came back");
    }
}

#[tokio::test(start_paused = true)]
async fn dead_letter_cycle_without_rejection_drops_the_message() {
    let b = Broker::open(Store::in_memory(), BrokerConfig::default())
        .await
        .unwrap();
    for (name, next) in [("a", "b"), ("b", "a")] {
        let def = QueueDef::new(name)
            .transient()
            .argument("x-message-ttl", int(100))
            .argument("x-dead-letter-exchange", text(""))
            .argument("x-dead-letter-routing-key", text(next));
        b.declare_queue(VH, def, false).await.unwrap();
    }
    publish_with(&b, "", "a", "m", Properties::default()).await;
    tokio::time::advance(Duration::from_millis(100)).await;
    run_tasks().await;
    assert_eq!((count(&b, "a"), count(&b, "b")), (0, 1), "a -> b");
    tokio::time::advance(Duration::from_millis(100)).await;
    run_tasks().await;
    assert_eq!(
        (count(&b, "a"), count(&b, "b")),
        (0, 0),
        "b -> a would cycle: dropped"
    );
    tokio::time::advance(Duration::from_millis(1000)).await;
    run_tasks().await;
    assert_eq!((count(&b, "a"), count(&b, "b")), (0, 0));
}

#[tokio::test]
async fn rejected_message_without_a_dead_letter_exchange_is_dropped() {
    let b = Broker::open(Store::in_memory(), BrokerConfig::default())
        .await
        .unwrap();
    b.declare_queue(VH, QueueDef::new("work").transient(), false)
        .await
        .unwrap();
    publish_with(&b, "", "work", "m", Properties::default()).await;
    let holder = b.new_consumer_id();
    let got = b
        .get(VH, "work", holder, false, None)
        .await
        .unwrap()
        .unwrap();
    b.settle(&got.queue, holder, got.delivery.tag, Settle::Reject)
        .unwrap();
    assert_eq!(
        (got.queue.message_count(), got.queue.unacked_count()),
        (0, 0)
    );
    let stats = b.stats();
    assert_eq!(stats.queues.len(), 1);
    assert_eq!((stats.queues[0].ready, stats.queues[0].unacked), (0, 0));
}

#[tokio::test]
async fn per_message_expiration_moves_to_original_expiration_on_the_copy() {
    let b = setup(work_queue()).await;
    let props = Properties {
        expiration: Some("60000".into()),
        ..Properties::default()
    };
    publish_with(&b, SOURCE_EXCHANGE, SOURCE_KEY, "m", props).await;
    let holder = b.new_consumer_id();
    let got = b
        .get(VH, "work", holder, false, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got.delivery.message.properties.expiration.as_deref(),
        Some("60000")
    );
    b.settle(&got.queue, holder, got.delivery.tag, Settle::Reject)
        .unwrap();
    let dead = take_one(&b, "dead").await;
    assert_eq!(dead.properties.expiration, None, "the copy does not expire");
    let d = deaths(&dead);
    assert_eq!(d.len(), 1);
    assert_eq!(
        d[0].get("original-expiration").and_then(FieldValue::as_str),
        Some("60000")
    );
}

#[tokio::test]
async fn without_a_dead_letter_routing_key_the_original_key_is_kept() {
    let b = Broker::open(Store::in_memory(), BrokerConfig::default())
        .await
        .unwrap();
    let dlx = ExchangeDef {
        durable: false,
        ..ExchangeDef::new(DLX, ExchangeKind::Direct)
    };
    b.declare_exchange(VH, dlx, false).await.unwrap();
    for name in ["dead", "wrong"] {
        b.declare_queue(VH, QueueDef::new(name).transient(), false)
            .await
            .unwrap();
    }
    b.bind(VH, queue_binding(DLX, "dead", SOURCE_KEY), None)
        .await
        .unwrap();
    b.bind(VH, queue_binding(DLX, "wrong", DEAD_KEY), None)
        .await
        .unwrap();
    let work = work_queue().argument("x-dead-letter-exchange", text(DLX));
    b.declare_queue(VH, work, false).await.unwrap();
    b.bind(VH, queue_binding(SOURCE_EXCHANGE, "work", SOURCE_KEY), None)
        .await
        .unwrap();
    publish(&b, "m").await;
    let holder = b.new_consumer_id();
    let got = b
        .get(VH, "work", holder, false, None)
        .await
        .unwrap()
        .unwrap();
    b.settle(&got.queue, holder, got.delivery.tag, Settle::Reject)
        .unwrap();
    assert_eq!((count(&b, "dead"), count(&b, "wrong")), (1, 0));
    let dead = take_one(&b, "dead").await;
    assert_eq!(
        (dead.exchange.as_str(), dead.routing_key.as_str()),
        (DLX, SOURCE_KEY)
    );
}

async fn open_rocksdb(dir: &std::path::Path) -> Arc<Broker> {
    let store = Store::open_rocksdb(dir, StoreOptions::default()).expect("rocksdb opens");
    Broker::open(store, BrokerConfig::default())
        .await
        .expect("broker recovers")
}

#[tokio::test]
async fn dead_lettered_persistent_message_survives_a_restart_with_its_history() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = open_rocksdb(dir.path()).await;
        b.declare_exchange(VH, ExchangeDef::new(DLX, ExchangeKind::Direct), false)
            .await
            .unwrap();
        b.declare_queue(VH, QueueDef::new("dead"), false)
            .await
            .unwrap();
        b.bind(VH, queue_binding(DLX, "dead", DEAD_KEY), None)
            .await
            .unwrap();
        let work = QueueDef::new("work")
            .argument("x-dead-letter-exchange", text(DLX))
            .argument("x-dead-letter-routing-key", text(DEAD_KEY));
        b.declare_queue(VH, work, false).await.unwrap();
        b.bind(VH, queue_binding(SOURCE_EXCHANGE, "work", SOURCE_KEY), None)
            .await
            .unwrap();
        let msg = Message::new(SOURCE_EXCHANGE, SOURCE_KEY, Bytes::from_static(b"m")).persistent();
        let p = b.publish(VH, msg).await.unwrap();
        assert!(p.confirmed().await.unwrap());
        let holder = b.new_consumer_id();
        let got = b
            .get(VH, "work", holder, false, None)
            .await
            .unwrap()
            .unwrap();
        b.settle(&got.queue, holder, got.delivery.tag, Settle::Reject)
            .unwrap();
        assert_eq!((count(&b, "work"), count(&b, "dead")), (0, 1));
        b.shutdown().await.unwrap();
    }
    let b = open_rocksdb(dir.path()).await;
    assert_eq!((count(&b, "work"), count(&b, "dead")), (0, 1));
    let dead = take_one(&b, "dead").await;
    assert_eq!(dead.body, Bytes::from_static(b"m"));
    assert_eq!(dead.routing_key, DEAD_KEY);
    let d = deaths(&dead);
    assert_eq!(d.len(), 1);
    assert_eq!(
        d[0].get("reason").and_then(FieldValue::as_str),
        Some("rejected")
    );
    assert_eq!(d[0].get("queue").and_then(FieldValue::as_str), Some("work"));
    b.shutdown().await.unwrap();
}
