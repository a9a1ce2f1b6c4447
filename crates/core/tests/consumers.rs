//! Consumers through the broker's public API: prefetch credit, round-robin,
//! consumer priorities, exclusive and single-active consumers, requeueing
//! and redelivery, `get` (AMQP 0-9-1 basic.get), settling and releasing,
//! the transport window of no-ack consumers, and credit shared across
//! queues (basic.qos global).

use std::sync::Arc;

use bytes::Bytes;
use junction_core::{
    Broker, BrokerConfig, ConnectionId, ConsumerEvent, ConsumerSpec, Credit, Delivery, DeliveryTag,
    FieldValue, Message, QueueDef, Settle,
};
use junction_store::Store;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

const VH: &str = "/";
const CONN: ConnectionId = ConnectionId(1);

type Events = UnboundedReceiver<ConsumerEvent>;

async fn broker_with_queue(def: QueueDef) -> Arc<Broker> {
    let b = Broker::open(Store::in_memory(), BrokerConfig::default())
        .await
        .expect("broker opens on an in-memory store");
    b.declare_queue(VH, def, false)
        .await
        .expect("queue declares");
    b
}

async fn broker() -> Arc<Broker> {
    broker_with_queue(QueueDef::new("q").transient()).await
}

async fn publish_to(b: &Broker, queue: &str, bodies: &[&str]) {
    for body in bodies {
        let msg = Message::new("", queue, Bytes::copy_from_slice(body.as_bytes()));
        let p = b.publish(VH, msg).await.expect("publish succeeds");
        assert_eq!(p.routed, 1, "{body} routed to {queue}");
        assert!(p.confirmed().await.expect("receipt resolves"));
    }
}

async fn publish(b: &Broker, bodies: &[&str]) {
    publish_to(b, "q", bodies).await;
}

fn channel() -> (UnboundedSender<ConsumerEvent>, Events) {
    unbounded_channel()
}

fn deliveries(rx: &mut Events) -> Vec<Delivery> {
    let mut out = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        match ev {
            ConsumerEvent::Deliver(d) => out.push(d),
            ConsumerEvent::Cancelled(id) => panic!("consumer {id} cancelled unexpectedly"),
        }
    }
    out
}

fn body(d: &Delivery) -> String {
    String::from_utf8(d.message.body.to_vec()).unwrap()
}

fn bodies(ds: &[Delivery]) -> Vec<String> {
    ds.iter().map(body).collect()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn ready(b: &Broker, queue: &str) -> Vec<String> {
    b.vhost(VH)
        .unwrap()
        .queue(queue)
        .unwrap()
        .peek_bodies()
        .iter()
        .map(|x| String::from_utf8(x.to_vec()).unwrap())
        .collect()
}

/// Lets the queues' service tasks run (current-thread runtime).
async fn run_tasks() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn prefetch_n_delivers_exactly_n_until_an_ack_frees_one() {
    let b = broker().await;
    let (tx, mut rx) = channel();
    let c = b
        .consume(VH, "q", ConsumerSpec::new("c", CONN).prefetch(2), tx)
        .unwrap();
    publish(&b, &["m1", "m2", "m3", "m4", "m5"]).await;
    let first = deliveries(&mut rx);
    assert_eq!(bodies(&first), strs(&["m1", "m2"]));
    run_tasks().await;
    assert!(
        deliveries(&mut rx).is_empty(),
        "still at the prefetch limit"
    );
    c.settle(first[0].tag, Settle::Ack).unwrap();
    assert_eq!(bodies(&deliveries(&mut rx)), strs(&["m3"]));
    let q = c.queue();
    assert_eq!((q.message_count(), q.unacked_count()), (2, 2));
}

#[tokio::test]
async fn consumers_of_equal_priority_alternate() {
    let b = broker().await;
    let (tx1, mut rx1) = channel();
    let (tx2, mut rx2) = channel();
    let _c1 = b
        .consume(VH, "q", ConsumerSpec::new("c1", CONN), tx1)
        .unwrap();
    let _c2 = b
        .consume(VH, "q", ConsumerSpec::new("c2", CONN), tx2)
        .unwrap();
    publish(&b, &["m1", "m2", "m3", "m4", "m5", "m6"]).await;
    assert_eq!(bodies(&deliveries(&mut rx1)), strs(&["m1", "m3", "m5"]));
    assert_eq!(bodies(&deliveries(&mut rx2)), strs(&["m2", "m4", "m6"]));
}

#[tokio::test]
async fn higher_priority_consumer_gets_everything_while_it_has_credit() {
    let b = broker().await;
    let (tx_low, mut rx_low) = channel();
    let (tx_high, mut rx_high) = channel();
    let _low = b
        .consume(VH, "q", ConsumerSpec::new("low", CONN), tx_low)
        .unwrap();
    let high = b
        .consume(
            VH,
            "q",
            ConsumerSpec {
                priority: 10,
                ..ConsumerSpec::new("high", CONN).prefetch(2)
            },
            tx_high,
        )
        .unwrap();
    publish(&b, &["m1", "m2", "m3", "m4", "m5"]).await;
    let got_high = deliveries(&mut rx_high);
    assert_eq!(bodies(&got_high), strs(&["m1", "m2"]));
    assert_eq!(bodies(&deliveries(&mut rx_low)), strs(&["m3", "m4", "m5"]));
    high.settle(got_high[0].tag, Settle::Ack).unwrap();
    publish(&b, &["m6"]).await;
    assert_eq!(bodies(&deliveries(&mut rx_high)), strs(&["m6"]));
    assert!(deliveries(&mut rx_low).is_empty());
}

#[tokio::test]
async fn exclusive_consumer_keeps_others_out() {
    let b = broker().await;
    let (tx, _rx) = channel();
    let exclusive = b
        .consume(
            VH,
            "q",
            ConsumerSpec {
                exclusive: true,
                ..ConsumerSpec::new("only", CONN)
            },
            tx.clone(),
        )
        .unwrap();
    let err = b
        .consume(VH, "q", ConsumerSpec::new("second", CONN), tx.clone())
        .unwrap_err();
    assert_eq!(err.amqp_code(), 403);
    exclusive.cancel(true);
    let _shared = b
        .consume(VH, "q", ConsumerSpec::new("shared", CONN), tx.clone())
        .unwrap();
    let err = b
        .consume(
            VH,
            "q",
            ConsumerSpec {
                exclusive: true,
                ..ConsumerSpec::new("late", CONN)
            },
            tx,
        )
        .unwrap_err();
    assert_eq!(
        err.amqp_code(),
        403,
        "exclusive refused while consumers exist"
    );
    assert_eq!(b.vhost(VH).unwrap().queue("q").unwrap().consumer_count(), 1);
}

#[tokio::test]
async fn single_active_consumer_serves_only_the_first_until_it_goes() {
    let b = broker_with_queue(
        QueueDef::new("q")
            .transient()
            .argument("x-single-active-consumer", FieldValue::Bool(true)),
    )
    .await;
    let (tx1, mut rx1) = channel();
    let (tx2, mut rx2) = channel();
    let c1 = b
        .consume(VH, "q", ConsumerSpec::new("c1", CONN).prefetch(2), tx1)
        .unwrap();
    let _c2 = b
        .consume(VH, "q", ConsumerSpec::new("c2", CONN), tx2)
        .unwrap();
    publish(&b, &["m1", "m2", "m3"]).await;
    let got1 = deliveries(&mut rx1);
    assert_eq!(bodies(&got1), strs(&["m1", "m2"]));
    assert!(
        deliveries(&mut rx2).is_empty(),
        "the inactive consumer gets nothing even when the active one is full"
    );
    assert_eq!(ready(&b, "q"), strs(&["m3"]));
    c1.settle(got1[0].tag, Settle::Ack).unwrap();
    assert_eq!(bodies(&deliveries(&mut rx1)), strs(&["m3"]));
    c1.cancel(true);
    let got2 = deliveries(&mut rx2);
    assert_eq!(bodies(&got2), strs(&["m2", "m3"]), "c1's unacked, in order");
    assert!(got2.iter().all(|d| d.redelivered));
    publish(&b, &["m4"]).await;
    assert_eq!(bodies(&deliveries(&mut rx2)), strs(&["m4"]));
}

#[tokio::test]
async fn requeued_message_keeps_its_place_and_is_flagged_redelivered() {
    let b = broker().await;
    publish(&b, &["m1", "m2", "m3"]).await;
    let holder = b.new_consumer_id();
    let g1 = b.get(VH, "q", holder, false, None).await.unwrap().unwrap();
    let g2 = b.get(VH, "q", holder, false, None).await.unwrap().unwrap();
    assert_eq!(
        (body(&g1.delivery), body(&g2.delivery)),
        ("m1".into(), "m2".into())
    );
    b.settle(&g2.queue, holder, g2.delivery.tag, Settle::Requeue)
        .unwrap();
    assert_eq!(ready(&b, "q"), strs(&["m2", "m3"]));
    b.settle(&g1.queue, holder, g1.delivery.tag, Settle::Requeue)
        .unwrap();
    assert_eq!(ready(&b, "q"), strs(&["m1", "m2", "m3"]));
    let again = b.get(VH, "q", holder, true, None).await.unwrap().unwrap();
    assert_eq!(body(&again.delivery), "m1");
    assert!(again.delivery.redelivered);
    assert_eq!(again.delivery.delivery_count, 1);
    assert!(!g1.delivery.redelivered);
    assert_eq!(g1.delivery.delivery_count, 0);
}

#[tokio::test]
async fn consumer_requeue_redelivers_the_head_to_the_same_consumer() {
    let b = broker().await;
    let (tx, mut rx) = channel();
    let c = b
        .consume(VH, "q", ConsumerSpec::new("c", CONN).prefetch(1), tx)
        .unwrap();
    publish(&b, &["m1", "m2"]).await;
    let first = deliveries(&mut rx);
    assert_eq!(bodies(&first), strs(&["m1"]));
    c.settle(first[0].tag, Settle::Requeue).unwrap();
    let second = deliveries(&mut rx);
    assert_eq!(bodies(&second), strs(&["m1"]));
    assert!(second[0].redelivered);
    assert_eq!(second[0].delivery_count, 1);
    assert_ne!(second[0].tag, first[0].tag, "a new delivery gets a new tag");
}

#[tokio::test]
async fn dropping_a_consumer_requeues_its_unacked_to_another_consumer() {
    let b = broker().await;
    let (tx1, mut rx1) = channel();
    let c1 = b
        .consume(VH, "q", ConsumerSpec::new("c1", CONN).prefetch(1), tx1)
        .unwrap();
    publish(&b, &["m1"]).await;
    assert_eq!(bodies(&deliveries(&mut rx1)), strs(&["m1"]));
    let (tx2, mut rx2) = channel();
    let _c2 = b
        .consume(VH, "q", ConsumerSpec::new("c2", CONN).prefetch(1), tx2)
        .unwrap();
    assert!(deliveries(&mut rx2).is_empty());
    drop(c1);
    let got = deliveries(&mut rx2);
    assert_eq!(bodies(&got), strs(&["m1"]));
    assert!(got[0].redelivered);
    assert_eq!(got[0].delivery_count, 1);
}

#[tokio::test]
async fn cancel_without_requeue_leaves_deliveries_settleable() {
    let b = broker().await;
    let (tx, mut rx) = channel();
    let c = b
        .consume(VH, "q", ConsumerSpec::new("c", CONN), tx)
        .unwrap();
    publish(&b, &["m1", "m2"]).await;
    let got = deliveries(&mut rx);
    assert_eq!(bodies(&got), strs(&["m1", "m2"]));
    let (id, q) = (c.id(), Arc::clone(c.queue()));
    c.cancel(false);
    assert_eq!(
        (q.consumer_count(), q.unacked_count(), q.message_count()),
        (0, 2, 0)
    );
    b.settle(&q, id, got[0].tag, Settle::Ack).unwrap();
    b.settle(&q, id, got[1].tag, Settle::Requeue).unwrap();
    assert_eq!((q.unacked_count(), q.message_count()), (0, 1));
    assert_eq!(ready(&b, "q"), strs(&["m2"]));
}

#[tokio::test]
async fn settling_an_unknown_or_foreign_tag_is_406() {
    let b = broker().await;
    let (tx, mut rx) = channel();
    let c = b
        .consume(VH, "q", ConsumerSpec::new("c", CONN), tx)
        .unwrap();
    publish(&b, &["m1"]).await;
    let got = deliveries(&mut rx);
    let err = c.settle(DeliveryTag(999), Settle::Ack).unwrap_err();
    assert_eq!(err.amqp_code(), 406);
    let stranger = b.new_consumer_id();
    let err = b
        .settle(c.queue(), stranger, got[0].tag, Settle::Ack)
        .unwrap_err();
    assert_eq!(err.amqp_code(), 406, "another holder's tag");
    c.settle(got[0].tag, Settle::Ack).unwrap();
    let err = c.settle(got[0].tag, Settle::Ack).unwrap_err();
    assert_eq!(err.amqp_code(), 406, "settling twice");
}

#[tokio::test]
async fn get_returns_the_head_and_the_remaining_count() {
    let b = broker().await;
    publish(&b, &["m1", "m2"]).await;
    let holder = b.new_consumer_id();
    let got = b.get(VH, "q", holder, false, None).await.unwrap().unwrap();
    assert_eq!(body(&got.delivery), "m1");
    assert_eq!(got.remaining, 1);
    assert!(!got.delivery.redelivered);
    let q = Arc::clone(&got.queue);
    assert_eq!((q.message_count(), q.unacked_count()), (1, 1));
    b.settle(&q, holder, got.delivery.tag, Settle::Ack).unwrap();
    assert_eq!(q.unacked_count(), 0);
    let no_ack = b.get(VH, "q", holder, true, None).await.unwrap().unwrap();
    assert_eq!(body(&no_ack.delivery), "m2");
    assert_eq!(no_ack.remaining, 0);
    assert_eq!(q.unacked_count(), 0, "no_ack: nothing to settle");
    let err = b
        .settle(&q, holder, no_ack.delivery.tag, Settle::Ack)
        .unwrap_err();
    assert_eq!(err.amqp_code(), 406);
    assert!(b.get(VH, "q", holder, false, None).await.unwrap().is_none());
    let err = b.get(VH, "missing", holder, false, None).await.unwrap_err();
    assert_eq!(err.amqp_code(), 404);
}

#[tokio::test]
async fn release_requeues_what_a_holder_got() {
    let b = broker().await;
    publish(&b, &["m1", "m2", "m3"]).await;
    let holder = b.new_consumer_id();
    let other = b.new_consumer_id();
    let g1 = b.get(VH, "q", holder, false, None).await.unwrap().unwrap();
    let g2 = b.get(VH, "q", other, false, None).await.unwrap().unwrap();
    let g3 = b.get(VH, "q", holder, false, None).await.unwrap().unwrap();
    assert_eq!(
        bodies(&[g1.delivery, g2.delivery, g3.delivery]),
        strs(&["m1", "m2", "m3"])
    );
    let q = Arc::clone(&g1.queue);
    b.release(&q, holder);
    assert_eq!(ready(&b, "q"), strs(&["m1", "m3"]));
    assert_eq!(
        q.unacked_count(),
        1,
        "the other holder's delivery stays out"
    );
    let again = b.get(VH, "q", holder, true, None).await.unwrap().unwrap();
    assert_eq!(body(&again.delivery), "m1");
    assert!(again.delivery.redelivered);
}

#[tokio::test]
async fn no_ack_consumer_ignores_prefetch_but_is_bounded_by_its_window() {
    let b = broker().await;
    publish(&b, &["m1", "m2", "m3", "m4", "m5"]).await;
    let (tx, mut rx) = channel();
    let _c = b
        .consume(
            VH,
            "q",
            ConsumerSpec {
                window: 3,
                ..ConsumerSpec::new("c", CONN).prefetch(1).no_ack()
            },
            tx,
        )
        .unwrap();
    let first = deliveries(&mut rx);
    assert_eq!(bodies(&first), strs(&["m1", "m2", "m3"]));
    run_tasks().await;
    assert!(
        deliveries(&mut rx).is_empty(),
        "the window is full while the deliveries are held"
    );
    let q = b.vhost(VH).unwrap().queue("q").unwrap();
    assert_eq!((q.message_count(), q.unacked_count()), (2, 0));
    drop(first);
    run_tasks().await;
    assert_eq!(bodies(&deliveries(&mut rx)), strs(&["m4", "m5"]));
    assert_eq!(q.message_count(), 0);
}

#[tokio::test]
async fn shared_credit_spans_consumers_on_two_queues() {
    let b = broker().await;
    b.declare_queue(VH, QueueDef::new("q2").transient(), false)
        .await
        .unwrap();
    let credit = Credit::new(2);
    let spec = |tag: &str| ConsumerSpec {
        credits: vec![Arc::clone(&credit)],
        ..ConsumerSpec::new(tag, CONN)
    };
    let (tx1, mut rx1) = channel();
    let (tx2, mut rx2) = channel();
    let c1 = b.consume(VH, "q", spec("c1"), tx1).unwrap();
    let c2 = b.consume(VH, "q2", spec("c2"), tx2).unwrap();
    publish_to(&b, "q", &["a1", "a2"]).await;
    publish_to(&b, "q2", &["b1", "b2"]).await;
    let got1 = deliveries(&mut rx1);
    assert_eq!(bodies(&got1), strs(&["a1", "a2"]));
    assert!(
        deliveries(&mut rx2).is_empty(),
        "the channel's credit is used up"
    );
    assert_eq!(credit.used(), 2);
    c1.settle(got1[0].tag, Settle::Ack).unwrap();
    assert_eq!(credit.used(), 1);
    c2.pump();
    run_tasks().await;
    assert_eq!(bodies(&deliveries(&mut rx2)), strs(&["b1"]));
    assert_eq!(credit.used(), 2);
    assert!(deliveries(&mut rx1).is_empty());
}

#[tokio::test]
async fn deleting_a_queue_returns_its_unacked_slots_to_a_shared_credit() {
    let b = broker().await;
    b.declare_queue(VH, QueueDef::new("q2").transient(), false)
        .await
        .unwrap();
    let credit = Credit::new(1);
    let spec = |tag: &str| ConsumerSpec {
        credits: vec![Arc::clone(&credit)],
        ..ConsumerSpec::new(tag, CONN)
    };
    let (tx1, mut rx1) = channel();
    let (tx2, mut rx2) = channel();
    let _c1 = b.consume(VH, "q", spec("c1"), tx1).unwrap();
    let c2 = b.consume(VH, "q2", spec("c2"), tx2).unwrap();
    publish_to(&b, "q", &["a1"]).await;
    publish_to(&b, "q2", &["b1"]).await;
    assert_eq!(bodies(&deliveries(&mut rx1)), strs(&["a1"]));
    assert!(deliveries(&mut rx2).is_empty(), "one slot, held by a1");
    // Nobody can settle a1 once its queue is gone: the slot comes back.
    assert_eq!(
        b.delete_queue(VH, "q", false, false, None).await.unwrap(),
        1
    );
    assert_eq!(credit.used(), 0);
    c2.pump();
    run_tasks().await;
    assert_eq!(bodies(&deliveries(&mut rx2)), strs(&["b1"]));
    assert_eq!(credit.used(), 1);
}
