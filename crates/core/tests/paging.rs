//! Paging: a long queue keeps its head in memory and the rest in RocksDB,
//! reads it back as consumers reach it, and restarts from indexes. Every
//! test runs on a real RocksDB store with a head of a few messages, and
//! checks the exact bodies and their order.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use junction_core::{
    Broker, BrokerConfig, ConnectionId, ConsumerEvent, ConsumerSpec, FieldValue, Message, QueueDef,
    Settle,
};
use junction_store::{Store, StoreOptions};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

const VH: &str = "/";
const CONN: ConnectionId = ConnectionId(1);
const HEAD: usize = 4;

async fn open(dir: &Path) -> Arc<Broker> {
    let store = Store::open_rocksdb(dir, StoreOptions::default()).expect("rocksdb opens");
    let config = BrokerConfig {
        queue_head_messages: HEAD,
        ..BrokerConfig::default()
    };
    Broker::open(store, config).await.expect("broker opens")
}

/// [`open`], with durable queue `name` declared.
async fn open_with_queue(dir: &Path, name: &str) -> Arc<Broker> {
    let b = open(dir).await;
    b.declare_queue(VH, QueueDef::new(name), false)
        .await
        .unwrap();
    b
}

fn body_of(i: usize) -> Bytes {
    Bytes::from(format!("message {i:04} {}", "x".repeat(i % 50)))
}

async fn publish_n(b: &Broker, queue: &str, range: std::ops::Range<usize>) {
    for i in range {
        let m = Message::new("", queue, body_of(i)).persistent();
        let p = b.publish(VH, m).await.expect("publish");
        assert_eq!(p.routed, 1);
        assert!(p.confirmed().await.expect("confirmed"));
    }
}

/// Takes `n` deliveries from `rx` (settling each), failing after 10 s.
async fn take(
    rx: &mut UnboundedReceiver<ConsumerEvent>,
    consumer: &junction_core::ConsumerHandle,
    n: usize,
) -> Vec<Bytes> {
    let mut got = Vec::new();
    while got.len() < n {
        let ev = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} deliveries arrived", got.len()))
            .expect("consumer channel open");
        match ev {
            ConsumerEvent::Deliver(d) => {
                got.push(d.message.body.clone());
                consumer.settle(d.tag, Settle::Ack).expect("ack");
            }
            ConsumerEvent::Cancelled(_) => panic!("consumer cancelled"),
        }
    }
    got
}

fn consume(
    b: &Arc<Broker>,
    queue: &str,
) -> (
    junction_core::ConsumerHandle,
    UnboundedReceiver<ConsumerEvent>,
) {
    let (tx, rx) = unbounded_channel();
    let c = b
        .consume(VH, queue, ConsumerSpec::new("c", CONN).prefetch(3), tx)
        .expect("consume");
    (c, rx)
}

fn expected(range: std::ops::Range<usize>) -> Vec<Bytes> {
    range.map(body_of).collect()
}

#[tokio::test]
async fn a_long_queue_keeps_its_head_in_memory_and_delivers_everything_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let b = open_with_queue(dir.path(), "q").await;
    publish_n(&b, "q", 0..300).await;
    let q = b.queue_for(VH, "q", None).unwrap();
    assert_eq!(q.message_count(), 300);
    assert_eq!(q.paged_count(), 300 - HEAD as u64);
    // The memory alarm counts the head's messages and a small index per
    // paged one (160 bytes), not the paged bodies.
    b.check_memory();
    let head: u64 = (0..HEAD).map(|i| body_of(i).len() as u64 + 1024).sum();
    let bound = head + (300 - HEAD as u64) * 160;
    assert!(b.held_bytes() <= bound, "held {} > {bound}", b.held_bytes());
    let (c, mut rx) = consume(&b, "q");
    assert_eq!(take(&mut rx, &c, 300).await, expected(0..300));
    assert_eq!(q.message_count(), 0);
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn get_reads_a_paged_head_back() {
    let dir = tempfile::tempdir().unwrap();
    let b = open_with_queue(dir.path(), "q").await;
    publish_n(&b, "q", 0..20).await;
    let holder = b.new_consumer_id();
    let mut got = Vec::new();
    while let Some(ok) = b.get(VH, "q", holder, true, None).await.unwrap() {
        got.push(ok.delivery.message.body.clone());
    }
    assert_eq!(got, expected(0..20));
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn paged_entries_keep_priority_order() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path()).await;
    b.declare_queue(
        VH,
        QueueDef::new("p").argument("x-max-priority", FieldValue::I32(9)),
        false,
    )
    .await
    .unwrap();
    for i in 0..40usize {
        let mut m = Message::new("", "p", body_of(i)).persistent();
        m.properties.priority = Some((i % 3) as u8);
        let p = b.publish(VH, m).await.unwrap();
        assert!(p.confirmed().await.unwrap());
    }
    let mut want: Vec<usize> = (0..40).collect();
    // Higher priority first, then arrival.
    want.sort_by_key(|i| (std::cmp::Reverse(i % 3), *i));
    let (c, mut rx) = consume(&b, "p");
    let got = take(&mut rx, &c, 40).await;
    assert_eq!(got, want.into_iter().map(body_of).collect::<Vec<_>>());
    b.shutdown().await.unwrap();
}

/// A broker with queue "dead" and queue "work" dead-lettering into it,
/// `work` also shaped by `limit`.
async fn dead_letter_pair(dir: &Path, limit: (&str, FieldValue)) -> Arc<Broker> {
    let b = open(dir).await;
    b.declare_queue(VH, QueueDef::new("dead"), false)
        .await
        .unwrap();
    b.declare_queue(
        VH,
        QueueDef::new("work")
            .argument(limit.0, limit.1)
            .argument("x-dead-letter-exchange", FieldValue::string(""))
            .argument("x-dead-letter-routing-key", FieldValue::string("dead")),
        false,
    )
    .await
    .unwrap();
    b
}

#[tokio::test]
async fn paged_messages_expire_into_the_dead_letter_exchange_whole() {
    let dir = tempfile::tempdir().unwrap();
    let b = dead_letter_pair(dir.path(), ("x-message-ttl", FieldValue::I32(50))).await;
    publish_n(&b, "work", 0..30).await;
    let (c, mut rx) = consume(&b, "dead");
    assert_eq!(take(&mut rx, &c, 30).await, expected(0..30));
    assert_eq!(b.queue_for(VH, "work", None).unwrap().message_count(), 0);
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn drop_head_overflow_dead_letters_paged_messages_whole() {
    let dir = tempfile::tempdir().unwrap();
    let b = dead_letter_pair(dir.path(), ("x-max-length", FieldValue::I32(10))).await;
    publish_n(&b, "work", 0..25).await;
    let (c, mut rx) = consume(&b, "dead");
    assert_eq!(take(&mut rx, &c, 15).await, expected(0..15));
    let (w, mut wrx) = consume(&b, "work");
    assert_eq!(take(&mut wrx, &w, 10).await, expected(15..25));
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn purge_and_delete_remove_paged_records() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = open_with_queue(dir.path(), "q").await;
        publish_n(&b, "q", 0..50).await;
        assert_eq!(b.purge_queue(VH, "q", None).await.unwrap(), 50);
        publish_n(&b, "q", 50..60).await;
        b.shutdown().await.unwrap();
    }
    let b = open(dir.path()).await;
    let (c, mut rx) = consume(&b, "q");
    assert_eq!(take(&mut rx, &c, 10).await, expected(50..60));
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_restart_reads_indexes_and_only_the_head_of_each_queue() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = open(dir.path()).await;
        for name in ["a", "b"] {
            b.declare_queue(VH, QueueDef::new(name), false)
                .await
                .unwrap();
        }
        publish_n(&b, "a", 0..200).await;
        publish_n(&b, "b", 200..230).await;
        b.shutdown().await.unwrap();
    }
    {
        let b = open(dir.path()).await;
        for (name, n) in [("a", 200), ("b", 30)] {
            let q = b.queue_for(VH, name, None).unwrap();
            assert_eq!(q.message_count(), n);
            assert_eq!(q.paged_count(), n - HEAD as u64, "queue {name}");
        }
        let (c, mut rx) = consume(&b, "a");
        assert_eq!(take(&mut rx, &c, 200).await, expected(0..200));
        let (c, mut rx) = consume(&b, "b");
        assert_eq!(take(&mut rx, &c, 30).await, expected(200..230));
        b.shutdown().await.unwrap();
    }
    // Everything acked: a third start finds nothing.
    let b = open(dir.path()).await;
    assert_eq!(b.queue_for(VH, "a", None).unwrap().message_count(), 0);
    assert_eq!(b.queue_for(VH, "b", None).unwrap().message_count(), 0);
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn requeued_messages_return_to_their_place_among_paged_ones() {
    let dir = tempfile::tempdir().unwrap();
    let b = open_with_queue(dir.path(), "q").await;
    publish_n(&b, "q", 0..20).await;
    let (tx, mut rx) = unbounded_channel();
    let c = b
        .consume(VH, "q", ConsumerSpec::new("c", CONN).prefetch(6), tx)
        .unwrap();
    let mut first = Vec::new();
    while first.len() < 6 {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(ConsumerEvent::Deliver(d))) => first.push(d),
            other => panic!("expected a delivery, got {other:?}"),
        }
    }
    // The consumer goes without acking: all six come back, in place.
    c.cancel(true);
    drop(rx);
    let (c, mut rx) = consume(&b, "q");
    assert_eq!(take(&mut rx, &c, 20).await, expected(0..20));
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn transient_messages_are_never_paged() {
    let dir = tempfile::tempdir().unwrap();
    let b = open_with_queue(dir.path(), "q").await;
    for i in 0..20 {
        let p = b
            .publish(VH, Message::new("", "q", body_of(i)))
            .await
            .unwrap();
        assert!(p.confirmed().await.unwrap());
    }
    assert_eq!(b.queue_for(VH, "q", None).unwrap().paged_count(), 0);
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_head_is_bounded_in_bytes_before_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let open_small = |dir: std::path::PathBuf| async move {
        let store = Store::open_rocksdb(&dir, StoreOptions::default()).unwrap();
        let config = BrokerConfig {
            queue_head_messages: 1000,
            queue_head_bytes: 200,
            ..BrokerConfig::default()
        };
        Broker::open(store, config).await.unwrap()
    };
    // Bodies fit while their running sum stays within 200 bytes.
    let mut sum = 0;
    let fitting = (0..100)
        .take_while(|i| {
            sum += body_of(*i).len();
            sum <= 200
        })
        .count() as u64;
    assert!(fitting > 1 && fitting < 100);
    {
        let b = open_small(dir.path().to_path_buf()).await;
        b.declare_queue(VH, QueueDef::new("q"), false)
            .await
            .unwrap();
        publish_n(&b, "q", 0..100).await;
        assert_eq!(
            b.queue_for(VH, "q", None).unwrap().paged_count(),
            100 - fitting
        );
        b.shutdown().await.unwrap();
    }
    let b = open_small(dir.path().to_path_buf()).await;
    assert_eq!(
        b.queue_for(VH, "q", None).unwrap().paged_count(),
        100 - fitting
    );
    let (c, mut rx) = consume(&b, "q");
    assert_eq!(take(&mut rx, &c, 100).await, expected(0..100));
    b.shutdown().await.unwrap();
}
