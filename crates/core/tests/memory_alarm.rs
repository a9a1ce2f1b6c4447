//! The memory alarm: on while queued message bytes exceed the watermark,
//! off again when they drop below it.

use bytes::Bytes;
use junction_core::{Broker, BrokerConfig, Message, QueueDef};
use junction_store::Store;

#[tokio::test]
async fn alarm_fires_above_the_watermark_and_clears_below_it() {
    let broker = Broker::open(
        Store::in_memory(),
        BrokerConfig {
            vhosts: vec!["/".into()],
            memory_high_watermark: 1000,
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
        let p = broker
            .publish("/", Message::new("", "q", Bytes::from(vec![0u8; 100])))
            .await
            .unwrap();
        assert_eq!(p.routed, 1);
    }
    broker.check_memory();
    assert_eq!(broker.held_bytes(), 900);
    assert!(
        !*alarm.borrow(),
        "900 bytes is under the 1000-byte watermark"
    );
    let p = broker
        .publish("/", Message::new("", "q", Bytes::from(vec![0u8; 101])))
        .await
        .unwrap();
    assert_eq!(p.routed, 1);
    broker.check_memory();
    assert_eq!(broker.held_bytes(), 1001);
    assert!(*alarm.borrow(), "1001 bytes is over the watermark");
    assert!(broker.stats().memory_alarm);
    assert_eq!(broker.purge_queue("/", "q", None).await.unwrap(), 10);
    broker.check_memory();
    assert_eq!(broker.held_bytes(), 0);
    assert!(!*alarm.borrow(), "cleared once the queue is empty");
}
