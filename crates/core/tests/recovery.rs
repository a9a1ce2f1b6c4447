//! Recovery keeps what it cannot use (quarantine) and a queue's record is
//! in the store before the queue takes messages.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use junction_core::codec::Writer;
use junction_core::{Broker, BrokerConfig, Message, QueueDef};
use junction_store::{Batch, Cf, Store, StoreOptions};

const VH: &str = "/";

async fn open(dir: &Path) -> Arc<Broker> {
    let store = Store::open_rocksdb(dir, StoreOptions::default()).expect("rocksdb opens");
    Broker::open(store, BrokerConfig::default())
        .await
        .expect("broker recovers")
}

/// Whether a `meta` record's key ends with `name` (the queue's record).
fn meta_names_queue(store: &Store, name: &str) -> bool {
    let mut found = false;
    store
        .scan(Cf::Meta, &[], &mut |k, _| {
            found |= k.ends_with(name.as_bytes()) && k.first() == Some(&b'q');
            !found
        })
        .unwrap();
    found
}

fn count(store: &Store, cf: Cf) -> usize {
    let mut n = 0;
    store
        .scan(cf, &[], &mut |_, _| {
            n += 1;
            true
        })
        .unwrap();
    n
}

#[tokio::test]
async fn undecodable_records_and_orphan_entries_move_to_quarantine_not_away() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = open(dir.path()).await;
        b.declare_queue(VH, QueueDef::new("q"), false)
            .await
            .unwrap();
        let p = b
            .publish(
                VH,
                Message::new("", "q", Bytes::from_static(b"kept")).persistent(),
            )
            .await
            .unwrap();
        assert!(p.confirmed().await.unwrap());
        // Garbage where records are read, and an entry of a queue id that
        // no queue record names (as a crash between a queue's record and
        // its first message could once leave).
        let mut batch = Batch::new();
        batch.put(
            Cf::Meta,
            b"qgarbage".to_vec(),
            Bytes::from_static(b"\xff\xff"),
        );
        batch.put(
            Cf::Messages,
            vec![0; 8],
            Bytes::from_static(b"\x00not a message"),
        );
        let mut orphan = 999_999u64.to_be_bytes().to_vec();
        orphan.extend_from_slice(&1u64.to_be_bytes());
        let mut entry = Writer::record();
        entry.u64(42);
        entry.u64(0);
        batch.put(Cf::QueueEntries, orphan, entry.finish());
        b.store().submit(batch, true).await.unwrap().await.unwrap();
        b.shutdown().await.unwrap();
    }
    let b = open(dir.path()).await;
    assert_eq!(
        b.queue_for(VH, "q", None).unwrap().peek_bodies(),
        vec![Bytes::from_static(b"kept")],
        "what could be read is recovered"
    );
    assert_eq!(b.stats().quarantined_records, 3);
    b.shutdown().await.unwrap();
    drop(b);
    // Moved, not deleted, and counted again on the next start.
    let b = open(dir.path()).await;
    assert_eq!(b.stats().quarantined_records, 3);
    assert_eq!(count(b.store(), Cf::Quarantine), 3);
    assert_eq!(b.queue_for(VH, "q", None).unwrap().message_count(), 1);
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_confirmed_into_a_new_queue_survives_when_published_during_its_declare() {
    // Declares and publishes race: a publish routed into a queue must
    // never commit before the queue's own record.
    let dir = tempfile::tempdir().unwrap();
    let mut confirmed = Vec::new();
    {
        let b = open(dir.path()).await;
        for i in 0..200 {
            let name = format!("q{i}");
            let declare = {
                let b = Arc::clone(&b);
                let name = name.clone();
                tokio::spawn(async move { b.declare_queue(VH, QueueDef::new(name), false).await })
            };
            // Publish as soon as the queue is routable, before the declare
            // returns.
            let published = loop {
                if b.queue_for(VH, &name, None).is_ok() {
                    let msg = Message::new("", &name, Bytes::from(name.clone())).persistent();
                    break b.publish(VH, msg).await.unwrap();
                }
                tokio::task::yield_now().await;
            };
            assert_eq!(published.routed, 1);
            assert!(published.confirmed().await.unwrap());
            // Confirmed: the queue's record is in the store already.
            assert!(
                meta_names_queue(b.store(), &name),
                "{name}: confirmed before its queue's record was written"
            );
            confirmed.push(name);
            declare.await.unwrap().unwrap();
        }
        // No shutdown: what is on disk is what a crash would leave (the
        // store is closed as the broker is dropped, with no final flush).
        drop(b);
    }
    let b = open(dir.path()).await;
    for name in confirmed {
        assert_eq!(
            b.queue_for(VH, &name, None).unwrap().peek_bodies(),
            vec![Bytes::from(name.clone())],
            "{name}"
        );
    }
    assert_eq!(b.stats().quarantined_records, 0);
}
