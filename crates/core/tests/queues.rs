//! Queue behaviour through the broker's public API: TTLs and `x-expires`
//! on a paused clock, length limits and overflow, priorities, declaration
//! rules (RabbitMQ's `x-` arguments, AMQP 0-9-1 queue.declare), exclusive
//! and auto-delete queues, purge and conditional delete, and recovery of
//! durable state from a RocksDB store.
//!
//! Timed tests use transient queues and non-persistent messages: with a
//! paused clock, awaiting a store write lets tokio jump the clock to the
//! next timer, which would expire things behind the test's back.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use junction_core::{
    Binding, Broker, BrokerConfig, ConnectionId, ConsumerEvent, ConsumerSpec, Delivery,
    Destination, ExchangeDef, ExchangeKind, FieldTable, FieldValue, Message, Properties, Protocol,
    QueueDef, QueueInfo, Settle,
};
use junction_store::{Store, StoreOptions};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

const VH: &str = "/";

async fn broker() -> Arc<Broker> {
    Broker::open(Store::in_memory(), BrokerConfig::default())
        .await
        .expect("broker opens on an in-memory store")
}

async fn declare(b: &Arc<Broker>, def: QueueDef) -> QueueInfo {
    b.declare_queue(VH, def, false)
        .await
        .expect("queue declares")
}

fn int(v: i64) -> FieldValue {
    FieldValue::I64(v)
}

fn text(v: &str) -> FieldValue {
    FieldValue::string(v)
}

/// Publishes a non-persistent message with `body` to the queue `queue`
/// through the default exchange; returns (routed, rejected, confirmed).
async fn publish_props(
    b: &Broker,
    queue: &str,
    body: &str,
    props: Properties,
) -> (usize, usize, bool) {
    let msg =
        Message::new("", queue, Bytes::copy_from_slice(body.as_bytes())).with_properties(props);
    let p = b.publish(VH, msg).await.expect("publish succeeds");
    let (routed, rejected) = (p.routed, p.rejected);
    (
        routed,
        rejected,
        p.confirmed().await.expect("receipt resolves"),
    )
}

async fn publish(b: &Broker, queue: &str, body: &str) {
    let outcome = publish_props(b, queue, body, Properties::default()).await;
    assert_eq!(outcome, (1, 0, true), "publishing {body} to {queue}");
}

fn bodies(b: &Broker, queue: &str) -> Vec<String> {
    b.vhost(VH)
        .unwrap()
        .queue(queue)
        .unwrap_or_else(|| panic!("queue {queue} exists"))
        .peek_bodies()
        .iter()
        .map(|x| String::from_utf8(x.to_vec()).unwrap())
        .collect()
}

fn exists(b: &Broker, queue: &str) -> bool {
    b.vhost(VH).unwrap().queue(queue).is_some()
}

/// Lets the queues' service tasks run (current-thread runtime).
async fn run_tasks() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// Moves the paused clock on by `ms` and lets the service tasks react.
async fn advance_ms(ms: u64) {
    tokio::time::advance(Duration::from_millis(ms)).await;
    run_tasks().await;
}

fn deliveries(rx: &mut UnboundedReceiver<ConsumerEvent>) -> Vec<Delivery> {
    let mut out = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        match ev {
            ConsumerEvent::Deliver(d) => out.push(d),
            ConsumerEvent::Cancelled(id) => panic!("consumer {id} cancelled unexpectedly"),
        }
    }
    out
}

fn body_of(d: &Delivery) -> String {
    String::from_utf8(d.message.body.to_vec()).unwrap()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn expiring(ms: &str) -> Properties {
    Properties {
        expiration: Some(ms.to_string()),
        ..Properties::default()
    }
}

#[tokio::test(start_paused = true)]
async fn message_ttl_expires_the_head_once_the_ttl_has_passed_and_not_before() {
    let b = broker().await;
    declare(
        &b,
        QueueDef::new("q")
            .transient()
            .argument("x-message-ttl", int(1000)),
    )
    .await;
    publish(&b, "q", "m1").await;
    advance_ms(400).await;
    publish(&b, "q", "m2").await;
    advance_ms(599).await;
    assert_eq!(
        bodies(&b, "q"),
        strs(&["m1", "m2"]),
        "999 ms: nothing expired"
    );
    advance_ms(1).await;
    assert_eq!(bodies(&b, "q"), strs(&["m2"]), "1000 ms: m1 expired");
    advance_ms(399).await;
    assert_eq!(bodies(&b, "q"), strs(&["m2"]));
    advance_ms(1).await;
    assert_eq!(bodies(&b, "q"), Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn per_message_expiration_expires_that_message() {
    let b = broker().await;
    declare(&b, QueueDef::new("q").transient()).await;
    assert_eq!(
        publish_props(&b, "q", "short", expiring("500")).await,
        (1, 0, true)
    );
    advance_ms(499).await;
    assert_eq!(bodies(&b, "q"), strs(&["short"]));
    advance_ms(1).await;
    assert_eq!(bodies(&b, "q"), Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn the_lower_of_queue_ttl_and_message_expiration_wins() {
    let b = broker().await;
    declare(
        &b,
        QueueDef::new("long_queue_ttl")
            .transient()
            .argument("x-message-ttl", int(1000)),
    )
    .await;
    declare(
        &b,
        QueueDef::new("short_queue_ttl")
            .transient()
            .argument("x-message-ttl", int(300)),
    )
    .await;
    publish_props(&b, "long_queue_ttl", "m", expiring("300")).await;
    publish_props(&b, "short_queue_ttl", "m", expiring("1000")).await;
    advance_ms(299).await;
    assert_eq!(bodies(&b, "long_queue_ttl"), strs(&["m"]));
    assert_eq!(bodies(&b, "short_queue_ttl"), strs(&["m"]));
    advance_ms(1).await;
    assert_eq!(bodies(&b, "long_queue_ttl"), Vec::<String>::new());
    assert_eq!(bodies(&b, "short_queue_ttl"), Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn ttl_zero_delivers_only_to_a_consumer_ready_at_once() {
    let b = broker().await;
    declare(
        &b,
        QueueDef::new("q")
            .transient()
            .argument("x-message-ttl", int(0)),
    )
    .await;
    publish(&b, "q", "nobody-listening").await;
    assert_eq!(bodies(&b, "q"), Vec::<String>::new(), "expired at once");

    let (tx, mut rx) = unbounded_channel();
    let c = b
        .consume(
            VH,
            "q",
            ConsumerSpec::new("c", ConnectionId(1)).prefetch(1),
            tx,
        )
        .unwrap();
    assert!(deliveries(&mut rx).is_empty());
    publish(&b, "q", "taken").await;
    let got = deliveries(&mut rx);
    assert_eq!(
        got.iter().map(body_of).collect::<Vec<_>>(),
        strs(&["taken"]),
        "a consumer with credit gets a TTL-0 message"
    );
    publish(&b, "q", "no-credit").await;
    assert_eq!(bodies(&b, "q"), Vec::<String>::new(), "no credit: expired");
    c.settle(got[0].tag, Settle::Ack).unwrap();
    run_tasks().await;
    assert!(deliveries(&mut rx).is_empty());
}

#[tokio::test(start_paused = true)]
async fn x_expires_deletes_an_unused_queue_after_the_period() {
    let b = broker().await;
    declare(
        &b,
        QueueDef::new("q")
            .transient()
            .argument("x-expires", int(1000)),
    )
    .await;
    advance_ms(999).await;
    assert!(exists(&b, "q"));
    advance_ms(1).await;
    assert!(!exists(&b, "q"));
}

#[tokio::test(start_paused = true)]
async fn x_expires_waits_while_the_queue_has_a_consumer() {
    let b = broker().await;
    declare(
        &b,
        QueueDef::new("q")
            .transient()
            .argument("x-expires", int(1000)),
    )
    .await;
    let (tx, _rx) = unbounded_channel();
    let c = b
        .consume(VH, "q", ConsumerSpec::new("c", ConnectionId(1)), tx)
        .unwrap();
    advance_ms(5000).await;
    assert!(exists(&b, "q"), "a queue with a consumer is in use");
    c.cancel(true);
    advance_ms(999).await;
    assert!(
        exists(&b, "q"),
        "the period restarts when the consumer goes"
    );
    advance_ms(1).await;
    assert!(!exists(&b, "q"));
}

#[tokio::test(start_paused = true)]
async fn only_the_head_expires_a_message_behind_one_without_ttl_waits() {
    let b = broker().await;
    declare(&b, QueueDef::new("q").transient()).await;
    publish(&b, "q", "no-ttl").await;
    publish_props(&b, "q", "short", expiring("100")).await;
    advance_ms(200).await;
    assert_eq!(bodies(&b, "q"), strs(&["no-ttl", "short"]));
    let holder = b.new_consumer_id();
    let head = b.get(VH, "q", holder, true, None).await.unwrap().unwrap();
    assert_eq!(body_of(&head.delivery), "no-ttl");
    assert!(
        b.get(VH, "q", holder, true, None).await.unwrap().is_none(),
        "the expired message is dropped once it reaches the head"
    );
}

#[tokio::test(start_paused = true)]
async fn requeued_message_still_expires_at_its_original_deadline() {
    let b = broker().await;
    declare(
        &b,
        QueueDef::new("q")
            .transient()
            .argument("x-message-ttl", int(1000)),
    )
    .await;
    publish(&b, "q", "m").await;
    let holder = b.new_consumer_id();
    let got = b.get(VH, "q", holder, false, None).await.unwrap().unwrap();
    run_tasks().await;
    advance_ms(100).await;
    b.settle(&got.queue, holder, got.delivery.tag, Settle::Requeue)
        .unwrap();
    assert_eq!(bodies(&b, "q"), strs(&["m"]));
    advance_ms(899).await;
    assert_eq!(bodies(&b, "q"), strs(&["m"]), "999 ms after publish");
    advance_ms(1).await;
    assert_eq!(
        bodies(&b, "q"),
        Vec::<String>::new(),
        "1000 ms after publish: the requeued message expired"
    );
}

#[tokio::test]
async fn max_length_drop_head_drops_the_oldest() {
    let b = broker().await;
    declare(
        &b,
        QueueDef::new("q")
            .transient()
            .argument("x-max-length", int(2)),
    )
    .await;
    for m in ["m1", "m2", "m3", "m4"] {
        publish(&b, "q", m).await;
    }
    assert_eq!(bodies(&b, "q"), strs(&["m3", "m4"]));
}

#[tokio::test]
async fn max_length_bytes_counts_body_bytes() {
    let b = broker().await;
    declare(
        &b,
        QueueDef::new("q")
            .transient()
            .argument("x-max-length-bytes", int(10)),
    )
    .await;
    publish(&b, "q", "aaaa").await;
    publish(&b, "q", "bbbb").await;
    assert_eq!(bodies(&b, "q"), strs(&["aaaa", "bbbb"]), "8 bytes fit");
    publish(&b, "q", "cccc").await;
    assert_eq!(bodies(&b, "q"), strs(&["bbbb", "cccc"]), "12 bytes do not");
    publish(&b, "q", "dddddddddd").await;
    assert_eq!(bodies(&b, "q"), strs(&["dddddddddd"]));
}

#[tokio::test]
async fn reject_publish_refuses_the_new_message_and_nacks_it() {
    let b = broker().await;
    declare(
        &b,
        QueueDef::new("q")
            .transient()
            .argument("x-max-length", int(1))
            .argument("x-overflow", text("reject-publish")),
    )
    .await;
    assert_eq!(
        publish_props(&b, "q", "first", Properties::default()).await,
        (1, 0, true)
    );
    assert_eq!(
        publish_props(&b, "q", "second", Properties::default()).await,
        (1, 1, false),
        "routed to the queue, refused by it, confirm is a nack"
    );
    assert_eq!(bodies(&b, "q"), strs(&["first"]));
}

#[tokio::test]
async fn reject_publish_dlx_refuses_and_dead_letters_the_new_message() {
    let b = broker().await;
    declare(&b, QueueDef::new("overflowed").transient()).await;
    declare(
        &b,
        QueueDef::new("q")
            .transient()
            .argument("x-max-length", int(1))
            .argument("x-overflow", text("reject-publish-dlx"))
            .argument("x-dead-letter-exchange", text(""))
            .argument("x-dead-letter-routing-key", text("overflowed")),
    )
    .await;
    publish(&b, "q", "first").await;
    assert_eq!(
        publish_props(&b, "q", "second", Properties::default()).await,
        (1, 1, false)
    );
    assert_eq!(bodies(&b, "q"), strs(&["first"]));
    assert_eq!(bodies(&b, "overflowed"), strs(&["second"]));
    let holder = b.new_consumer_id();
    let got = b
        .get(VH, "overflowed", holder, true, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got.delivery
            .message
            .properties
            .headers
            .get("x-first-death-reason"),
        Some(&text("maxlen"))
    );
}

#[tokio::test]
async fn max_priority_orders_by_priority_then_arrival_and_caps_at_the_max() {
    let b = broker().await;
    declare(
        &b,
        QueueDef::new("q")
            .transient()
            .argument("x-max-priority", FieldValue::U8(5)),
    )
    .await;
    let sends = [
        ("a", Some(1)),
        ("b", Some(5)),
        ("c", Some(1)),
        ("d", None),
        ("e", Some(9)),
        ("f", Some(3)),
    ];
    for (body, priority) in sends {
        let props = Properties {
            priority,
            ..Properties::default()
        };
        assert_eq!(publish_props(&b, "q", body, props).await, (1, 0, true));
    }
    assert_eq!(
        bodies(&b, "q"),
        strs(&["b", "e", "f", "a", "c", "d"]),
        "9 is capped to 5 and queues behind the earlier 5"
    );
    let holder = b.new_consumer_id();
    let first = b.get(VH, "q", holder, true, None).await.unwrap().unwrap();
    assert_eq!(body_of(&first.delivery), "b");
    assert_eq!(first.remaining, 5);
}

#[tokio::test]
async fn without_max_priority_priorities_are_ignored() {
    let b = broker().await;
    declare(&b, QueueDef::new("q").transient()).await;
    for (body, priority) in [("low", 0), ("high", 9)] {
        let props = Properties {
            priority: Some(priority),
            ..Properties::default()
        };
        publish_props(&b, "q", body, props).await;
    }
    assert_eq!(bodies(&b, "q"), strs(&["low", "high"]));
}

#[tokio::test]
async fn redeclaring_a_queue_with_other_arguments_is_406_and_with_the_same_is_ok() {
    let b = broker().await;
    let def = QueueDef::new("q")
        .transient()
        .argument("x-message-ttl", int(60_000))
        .argument("x-max-length", int(10));
    declare(&b, def.clone()).await;
    publish(&b, "q", "m1").await;
    publish(&b, "q", "m2").await;
    let mismatches = [
        QueueDef::new("q")
            .transient()
            .argument("x-message-ttl", int(30_000))
            .argument("x-max-length", int(10)),
        QueueDef::new("q")
            .transient()
            .argument("x-message-ttl", int(60_000)),
        QueueDef::new("q")
            .argument("x-message-ttl", int(60_000))
            .argument("x-max-length", int(10)),
        QueueDef {
            auto_delete: true,
            ..def.clone()
        },
    ];
    for other in mismatches {
        let err = b.declare_queue(VH, other.clone(), false).await.unwrap_err();
        assert_eq!(err.amqp_code(), 406, "{other:?}");
    }
    let same_in_other_order_and_width = QueueDef::new("q")
        .transient()
        .argument("x-max-length", FieldValue::U8(10))
        .argument("x-message-ttl", FieldValue::I32(60_000));
    assert_eq!(
        b.declare_queue(VH, same_in_other_order_and_width, false)
            .await
            .unwrap(),
        QueueInfo {
            name: "q".into(),
            messages: 2,
            consumers: 0,
            created: false
        }
    );
    assert_eq!(
        b.declare_queue(VH, QueueDef::new("q"), true).await.unwrap(),
        QueueInfo {
            name: "q".into(),
            messages: 2,
            consumers: 0,
            created: false
        },
        "a passive declare ignores the settings"
    );
}

#[tokio::test]
async fn invalid_queue_arguments_are_406_and_create_nothing() {
    let b = broker().await;
    let cases = [
        ("x-max-priority", int(256)),
        ("x-message-ttl", int(-1)),
        ("x-expires", int(0)),
        ("x-overflow", text("drop-tail")),
        ("x-max-length", text("10")),
        ("x-single-active-consumer", int(1)),
        ("x-dead-letter-routing-key", text("k")),
    ];
    for (name, value) in cases {
        let err = b
            .declare_queue(
                VH,
                QueueDef::new("q").transient().argument(name, value.clone()),
                false,
            )
            .await
            .unwrap_err();
        assert_eq!(err.amqp_code(), 406, "{name} = {value:?}");
        assert!(!exists(&b, "q"), "{name} = {value:?}");
    }
}

#[tokio::test]
async fn passive_declare_of_a_missing_queue_is_404() {
    let b = broker().await;
    let err = b
        .declare_queue(VH, QueueDef::new("missing"), true)
        .await
        .unwrap_err();
    assert_eq!(err.amqp_code(), 404);
}

#[tokio::test]
async fn declaring_an_amq_prefixed_queue_is_403() {
    let b = broker().await;
    let err = b
        .declare_queue(VH, QueueDef::new("amq.mine").transient(), false)
        .await
        .unwrap_err();
    assert_eq!(err.amqp_code(), 403);
    assert!(!exists(&b, "amq.mine"));
}

#[tokio::test]
async fn empty_name_gets_a_fresh_server_generated_name() {
    let b = broker().await;
    let first = declare(&b, QueueDef::new("").transient()).await;
    let second = declare(&b, QueueDef::new("").transient()).await;
    for info in [&first, &second] {
        let suffix = info
            .name
            .strip_prefix("amq.gen-")
            .unwrap_or_else(|| panic!("{} starts with amq.gen-", info.name));
        assert_eq!(suffix.len(), 22, "{}", info.name);
        assert!(
            suffix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{}",
            info.name
        );
        assert!(info.created);
        assert!(exists(&b, &info.name));
    }
    assert_ne!(first.name, second.name);
    publish(&b, &first.name, "hello").await;
    assert_eq!(bodies(&b, &first.name), strs(&["hello"]));
}

#[tokio::test]
async fn exclusive_queue_is_locked_to_its_connection_and_goes_with_it() {
    let b = broker().await;
    let owner = b.open_connection(Protocol::Amqp);
    let other = b.open_connection(Protocol::Amqp);
    let def = QueueDef {
        exclusive_owner: Some(owner.id()),
        ..QueueDef::new("mine").transient()
    };
    declare(&b, def.clone()).await;
    b.bind(
        VH,
        Binding {
            source: "amq.fanout".into(),
            destination: Destination::Queue("mine".into()),
            routing_key: String::new(),
            arguments: FieldTable::new(),
        },
        Some(owner.id()),
    )
    .await
    .unwrap();

    let theirs = QueueDef {
        exclusive_owner: Some(other.id()),
        ..def.clone()
    };
    let err = b.declare_queue(VH, theirs, false).await.unwrap_err();
    assert_eq!(err.amqp_code(), 405);
    let err = b
        .declare_queue(VH, QueueDef::new("mine").transient(), true)
        .await
        .unwrap_err();
    assert_eq!(err.amqp_code(), 405, "passive declare from elsewhere");
    let (tx, _rx) = unbounded_channel();
    let err = b
        .consume(VH, "mine", ConsumerSpec::new("c", other.id()), tx)
        .unwrap_err();
    assert_eq!(err.amqp_code(), 405);
    let holder = b.new_consumer_id();
    let err = b
        .get(VH, "mine", holder, true, Some(other.id()))
        .await
        .unwrap_err();
    assert_eq!(err.amqp_code(), 405);
    let err = b
        .delete_queue(VH, "mine", false, false, Some(other.id()))
        .await
        .unwrap_err();
    assert_eq!(err.amqp_code(), 405);
    let err = b
        .purge_queue(VH, "mine", Some(other.id()))
        .await
        .unwrap_err();
    assert_eq!(err.amqp_code(), 405);

    publish(&b, "mine", "m").await;
    let got = b
        .get(VH, "mine", holder, true, Some(owner.id()))
        .await
        .unwrap();
    assert_eq!(got.map(|g| body_of(&g.delivery)), Some("m".to_string()));

    drop(owner);
    assert!(!exists(&b, "mine"));
    assert_eq!(b.bindings(VH).unwrap(), Vec::<Binding>::new());
    drop(other);
}

#[tokio::test]
async fn auto_delete_queue_is_deleted_when_its_last_consumer_goes() {
    let b = broker().await;
    let def = QueueDef {
        auto_delete: true,
        ..QueueDef::new("q").transient()
    };
    declare(&b, def).await;
    assert!(exists(&b, "q"), "never had a consumer: stays");
    let (tx, _rx) = unbounded_channel();
    let c1 = b
        .consume(
            VH,
            "q",
            ConsumerSpec::new("c1", ConnectionId(1)),
            tx.clone(),
        )
        .unwrap();
    let c2 = b
        .consume(VH, "q", ConsumerSpec::new("c2", ConnectionId(1)), tx)
        .unwrap();
    c1.cancel(true);
    assert!(exists(&b, "q"), "one consumer left");
    drop(c2);
    assert!(!exists(&b, "q"));
}

#[tokio::test]
async fn auto_delete_queue_is_deleted_when_a_consumer_whose_channel_closed_goes() {
    let b = broker().await;
    let def = QueueDef {
        auto_delete: true,
        ..QueueDef::new("q").transient()
    };
    declare(&b, def).await;
    let (tx, rx) = unbounded_channel();
    let c = b
        .consume(VH, "q", ConsumerSpec::new("c", ConnectionId(1)), tx)
        .unwrap();
    // The connection went away first: its receiving end is gone when the
    // next delivery is attempted, and only then is its consumer handle dropped.
    drop(rx);
    publish(&b, "q", "m").await;
    drop(c);
    assert!(
        !exists(&b, "q"),
        "the queue's last consumer was cancelled, so the auto-delete queue goes"
    );
}

#[tokio::test]
async fn purge_removes_ready_messages_but_not_unacked_ones() {
    let b = broker().await;
    declare(&b, QueueDef::new("q").transient()).await;
    for m in ["m1", "m2", "m3"] {
        publish(&b, "q", m).await;
    }
    let holder = b.new_consumer_id();
    let got = b.get(VH, "q", holder, false, None).await.unwrap().unwrap();
    assert_eq!(b.purge_queue(VH, "q", None).await.unwrap(), 2);
    let q = b.vhost(VH).unwrap().queue("q").unwrap();
    assert_eq!((q.message_count(), q.unacked_count()), (0, 1));
    b.settle(&got.queue, holder, got.delivery.tag, Settle::Requeue)
        .unwrap();
    assert_eq!(bodies(&b, "q"), strs(&["m1"]));
}

#[tokio::test]
async fn conditional_delete_refuses_a_queue_in_use_or_not_empty() {
    let b = broker().await;
    declare(&b, QueueDef::new("q").transient()).await;
    publish(&b, "q", "m").await;
    let err = b
        .delete_queue(VH, "q", false, true, None)
        .await
        .unwrap_err();
    assert_eq!(err.amqp_code(), 406, "if_empty with a ready message");
    let (tx, _rx) = unbounded_channel();
    let c = b
        .consume(VH, "q", ConsumerSpec::new("c", ConnectionId(1)), tx)
        .unwrap();
    let q = b.vhost(VH).unwrap().queue("q").unwrap();
    assert_eq!((q.message_count(), q.unacked_count()), (0, 1));
    let err = b
        .delete_queue(VH, "q", false, true, None)
        .await
        .unwrap_err();
    assert_eq!(err.amqp_code(), 406, "if_empty with an unacked message");
    let err = b
        .delete_queue(VH, "q", true, false, None)
        .await
        .unwrap_err();
    assert_eq!(err.amqp_code(), 406, "if_unused with a consumer");
    assert!(exists(&b, "q"));
    c.cancel(true);
    assert_eq!(b.delete_queue(VH, "q", true, false, None).await.unwrap(), 1);
    assert!(!exists(&b, "q"));
    let err = b
        .delete_queue(VH, "q", false, false, None)
        .await
        .unwrap_err();
    assert_eq!(err.amqp_code(), 404);
}

#[tokio::test]
async fn deleting_a_queue_cancels_its_consumers() {
    let b = broker().await;
    declare(&b, QueueDef::new("q").transient()).await;
    let (tx, mut rx) = unbounded_channel();
    let c = b
        .consume(VH, "q", ConsumerSpec::new("c", ConnectionId(1)), tx)
        .unwrap();
    assert_eq!(
        b.delete_queue(VH, "q", false, false, None).await.unwrap(),
        0
    );
    match rx.try_recv() {
        Ok(ConsumerEvent::Cancelled(id)) => assert_eq!(id, c.id()),
        other => panic!("expected Cancelled, got {other:?}"),
    }
}

fn topic_binding(source: &str, destination: Destination, key: &str) -> Binding {
    Binding {
        source: source.into(),
        destination,
        routing_key: key.into(),
        arguments: FieldTable::new(),
    }
}

async fn open_rocksdb(dir: &Path) -> Arc<Broker> {
    let store = Store::open_rocksdb(dir, StoreOptions::default()).expect("rocksdb opens");
    Broker::open(store, BrokerConfig::default())
        .await
        .expect("broker recovers")
}

#[tokio::test]
async fn durable_state_survives_shutdown_and_reopen_on_rocksdb() {
    let dir = tempfile::tempdir().unwrap();
    let orders = ExchangeDef::new("orders", ExchangeKind::Topic);
    let front = ExchangeDef::new("front", ExchangeKind::Fanout);
    let to_orders = topic_binding("front", Destination::Exchange("orders".into()), "");
    let to_q = topic_binding("orders", Destination::Queue("q".into()), "order.#");
    let to_tq = topic_binding("orders", Destination::Queue("tq".into()), "#");
    let to_deleted = topic_binding("orders", Destination::Queue("deleted".into()), "#");
    {
        let b = open_rocksdb(dir.path()).await;
        b.declare_exchange(VH, orders.clone(), false).await.unwrap();
        b.declare_exchange(VH, front.clone(), false).await.unwrap();
        b.declare_exchange(
            VH,
            ExchangeDef {
                durable: false,
                ..ExchangeDef::new("gone", ExchangeKind::Direct)
            },
            false,
        )
        .await
        .unwrap();
        declare(&b, QueueDef::new("q")).await;
        declare(&b, QueueDef::new("tq").transient()).await;
        declare(&b, QueueDef::new("deleted")).await;
        for binding in [&to_orders, &to_q, &to_tq, &to_deleted] {
            b.bind(VH, binding.clone(), None).await.unwrap();
        }
        let sends = [
            ("acked", true),
            ("m1", true),
            ("transient", false),
            ("m2", true),
            ("m3", true),
        ];
        for (body, persistent) in sends {
            let mut msg = Message::new("front", "order.new", Bytes::from(body));
            if persistent {
                msg = msg.persistent();
            }
            let p = b.publish(VH, msg).await.unwrap();
            assert_eq!(p.routed, 3, "{body}");
            assert!(p.confirmed().await.unwrap());
        }
        assert_eq!(
            b.delete_queue(VH, "deleted", false, false, None)
                .await
                .unwrap(),
            5
        );
        let holder = b.new_consumer_id();
        let got = b.get(VH, "q", holder, false, None).await.unwrap().unwrap();
        assert_eq!(body_of(&got.delivery), "acked");
        b.settle(&got.queue, holder, got.delivery.tag, Settle::Ack)
            .unwrap();
        let unacked = b.get(VH, "q", holder, false, None).await.unwrap().unwrap();
        assert_eq!(body_of(&unacked.delivery), "m1");
        b.set_retained(
            VH,
            Message::new("amq.topic", "sensors.t1", Bytes::from_static(b"21C")),
        )
        .await
        .unwrap();
        b.shutdown().await.unwrap();
    }
    let b = open_rocksdb(dir.path()).await;
    assert_eq!(b.exchange(VH, "orders").unwrap(), orders);
    assert_eq!(b.exchange(VH, "front").unwrap(), front);
    assert_eq!(b.exchange(VH, "gone").unwrap_err().amqp_code(), 404);
    let mut bindings = b.bindings(VH).unwrap();
    bindings.sort_by(|x, y| x.source.cmp(&y.source));
    assert_eq!(bindings, vec![to_orders, to_q]);
    assert!(!exists(&b, "tq"), "a transient queue is not recovered");
    assert!(
        !exists(&b, "deleted"),
        "a deleted durable queue stays deleted"
    );
    assert_eq!(
        bodies(&b, "q"),
        strs(&["m1", "m2", "m3"]),
        "persistent messages in order, the unacked one included"
    );
    let holder = b.new_consumer_id();
    let first = b.get(VH, "q", holder, false, None).await.unwrap().unwrap();
    assert_eq!(body_of(&first.delivery), "m1");
    assert!(first.delivery.redelivered);
    let p = b
        .publish(
            VH,
            Message::new("front", "order.after", Bytes::from_static(b"m4")).persistent(),
        )
        .await
        .unwrap();
    assert_eq!(p.routed, 1, "recovered bindings route");
    assert!(p.confirmed().await.unwrap());
    assert_eq!(bodies(&b, "q"), strs(&["m2", "m3", "m4"]));
    let retained = b.retained_matching(VH, "sensors.#");
    assert_eq!(retained.len(), 1);
    assert_eq!(retained[0].routing_key, "sensors.t1");
    assert_eq!(retained[0].body, Bytes::from_static(b"21C"));
    b.shutdown().await.unwrap();
}
