//! The memory alarm: on while queued message bytes exceed the watermark,
//! off again when they drop below it.

use bytes::Bytes;
use junction_core::{Broker, BrokerConfig, Message, QueueDef};
use junction_store::Store;

#[tokio::test]
async fn alarm_fires_above_the_watermark_and_clears_below_it() {
    // The alarm counts each queued message's footprint: its body and a
    // per-message overhead.
    let hundred = || Message::new("", "q", Bytes::from(vec![0u8; 100]));
    let one = hundred().footprint();
    assert_eq!(one, 512 + 100 + 1, "overhead + body + routing key");
    let broker = Broker::open(
        Store::in_memory(),
        BrokerConfig {
            vhosts: vec!["/".into()],
            memory_high_watermark: 10 * one - 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let alarm = broker.memory_alarm();
    broker
        .declare_queue("/", QueueDef::new("q").transient(), false)
        .await
        .unwrap();
    for _ in 0..9 {
        let p = broker.publish("/", hundred()).await.unwrap();
        assert_eq!(p.routed, 1);
    }
    broker.check_memory();
    assert_eq!(broker.held_bytes(), 9 * one);
    assert!(!*alarm.borrow(), "nine messages are under the watermark");
    let p = broker.publish("/", hundred()).await.unwrap();
    assert_eq!(p.routed, 1);
    broker.check_memory();
    assert_eq!(broker.held_bytes(), 10 * one);
    assert!(*alarm.borrow(), "ten are over it");
    assert!(broker.stats().memory_alarm);
    assert_eq!(broker.purge_queue("/", "q", None).await.unwrap(), 10);
    broker.check_memory();
    assert_eq!(broker.held_bytes(), 0);
    assert!(!*alarm.borrow(), "cleared once the queue is empty");
}

#[tokio::test]
async fn retained_messages_and_adapter_charges_count_towards_the_alarm() {
    let broker = Broker::open(Store::in_memory(), BrokerConfig::default())
        .await
        .unwrap();
    let retained = Message::new("amq.topic", "a.b", Bytes::from(vec![0u8; 1000]));
    let one = retained.footprint();
    broker.set_retained("/", retained).await.unwrap();
    broker.check_memory();
    assert_eq!(broker.held_bytes(), one);
    // Replacing it counts the new one only; clearing it counts nothing.
    let smaller = Message::new("amq.topic", "a.b", Bytes::from(vec![0u8; 10]));
    let two = smaller.footprint();
    broker.set_retained("/", smaller).await.unwrap();
    broker.check_memory();
    assert_eq!(broker.held_bytes(), two);
    broker
        .set_retained("/", Message::new("amq.topic", "a.b", Bytes::new()))
        .await
        .unwrap();
    broker.check_memory();
    assert_eq!(broker.held_bytes(), 0);

    let mut charge = broker.charge_memory(500);
    charge.grow(250);
    broker.check_memory();
    assert_eq!(broker.held_bytes(), 750);
    drop(charge);
    broker.check_memory();
    assert_eq!(broker.held_bytes(), 0, "a dropped charge counts nothing");
}

#[tokio::test]
async fn no_ack_deliveries_count_until_the_consumer_drops_them() {
    let hundred = || Message::new("", "q", Bytes::from(vec![0u8; 100]));
    let one = hundred().footprint();
    let broker = Broker::open(Store::in_memory(), BrokerConfig::default())
        .await
        .unwrap();
    broker
        .declare_queue("/", QueueDef::new("q").transient(), false)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _consumer = broker
        .consume(
            "/",
            "q",
            junction_core::ConsumerSpec::new("c", junction_core::ConnectionId(1)).no_ack(),
            tx,
        )
        .unwrap();
    for _ in 0..5 {
        let p = broker.publish("/", hundred()).await.unwrap();
        assert_eq!(p.routed, 1);
    }
    // Delivered (settled, gone from the queue) but not yet taken by the
    // connection: still held, still counted.
    assert_eq!(broker.queue_for("/", "q", None).unwrap().message_count(), 0);
    broker.check_memory();
    assert_eq!(broker.held_bytes(), 5 * one);
    let mut taken = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        taken.push(ev);
    }
    assert_eq!(taken.len(), 5);
    broker.check_memory();
    assert_eq!(
        broker.held_bytes(),
        5 * one,
        "held until written and dropped"
    );
    drop(taken);
    broker.check_memory();
    assert_eq!(broker.held_bytes(), 0);
}
