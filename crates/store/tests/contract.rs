//! The contract every engine must honour, run against both MemEngine and
//! RocksEngine through the `Store` front end (DESIGN.md "Storage": one
//! contract test suite runs against both).

use std::sync::Arc;

use junction_store::{Batch, Cf, MemEngine, Store, StoreError, StoreOptions};
use tempfile::TempDir;

/// Keeps a RocksDB directory alive for the test's duration.
type Guard = Option<TempDir>;

fn mem(opts: StoreOptions) -> (Store, Guard) {
    (Store::new(Arc::new(MemEngine::new()), opts), None)
}

fn rocks(opts: StoreOptions) -> (Store, Guard) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_rocksdb(dir.path(), opts).unwrap();
    (store, Some(dir))
}

fn be(n: u64) -> Vec<u8> {
    n.to_be_bytes().to_vec()
}

fn put(store: &Store, cf: Cf, key: &[u8], value: &'static [u8]) {
    let mut b = Batch::new();
    b.put(cf, key, value);
    store
        .submit_blocking(b, true)
        .unwrap()
        .wait_blocking()
        .unwrap();
}

fn collect(store: &Store, cf: Cf, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    store
        .scan(cf, prefix, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            true
        })
        .unwrap();
    out
}

macro_rules! contract {
    ($engine:ident) => {
        mod $engine {
            use super::*;

            fn open() -> (Store, Guard) {
                super::$engine(StoreOptions::default())
            }

            #[test]
            fn put_then_get_then_delete() {
                let (store, _g) = open();
                assert_eq!(store.get(Cf::Meta, b"k").unwrap(), None);
                put(&store, Cf::Meta, b"k", b"v1");
                assert_eq!(
                    store.get(Cf::Meta, b"k").unwrap().as_deref(),
                    Some(&b"v1"[..])
                );
                let mut b = Batch::new();
                b.delete(Cf::Meta, b"k".to_vec());
                store
                    .submit_blocking(b, false)
                    .unwrap()
                    .wait_blocking()
                    .unwrap();
                assert_eq!(store.get(Cf::Meta, b"k").unwrap(), None);
                store.close_blocking().unwrap();
            }

            #[test]
            fn later_op_in_same_batch_wins() {
                let (store, _g) = open();
                let mut b = Batch::new();
                b.put(Cf::Messages, b"a".to_vec(), &b"first"[..]);
                b.put(Cf::Messages, b"a".to_vec(), &b"second"[..]);
                b.put(Cf::Messages, b"gone".to_vec(), &b"x"[..]);
                b.delete(Cf::Messages, b"gone".to_vec());
                assert_eq!(b.len(), 4);
                store
                    .submit_blocking(b, true)
                    .unwrap()
                    .wait_blocking()
                    .unwrap();
                assert_eq!(
                    store.get(Cf::Messages, b"a").unwrap().as_deref(),
                    Some(&b"second"[..])
                );
                assert_eq!(store.get(Cf::Messages, b"gone").unwrap(), None);
            }

            #[test]
            fn later_batch_wins_in_submission_order() {
                let (store, _g) = open();
                let mut receipts = Vec::new();
                for i in 0..500u64 {
                    let mut b = Batch::new();
                    b.put(Cf::QueueEntries, b"q".to_vec(), be(i));
                    receipts.push(store.submit_blocking(b, i % 7 == 0).unwrap());
                }
                for r in receipts {
                    r.wait_blocking().unwrap();
                }
                assert_eq!(
                    store.get(Cf::QueueEntries, b"q").unwrap().as_deref(),
                    Some(&be(499)[..])
                );
            }

            #[test]
            fn batch_is_all_or_nothing_to_concurrent_readers() {
                let (store, _g) = open();
                let reader_store = store.clone();
                let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let reader_done = Arc::clone(&done);
                let reader = std::thread::spawn(move || {
                    let read = |cf| {
                        reader_store
                            .get(cf, b"k")
                            .unwrap()
                            .map_or(0, |v| u64::from_be_bytes(v.as_ref().try_into().unwrap()))
                    };
                    let mut checks = 0u64;
                    while !reader_done.load(std::sync::atomic::Ordering::Acquire) || checks == 0 {
                        // Batch i writes Meta then Messages; seeing Meta = i
                        // means all of batch i is applied, so Messages >= i.
                        let meta = read(Cf::Meta);
                        let messages = read(Cf::Messages);
                        assert!(
                            messages >= meta,
                            "torn batch: meta {meta} messages {messages}"
                        );
                        checks += 1;
                    }
                });
                for i in 1..=300u64 {
                    let mut b = Batch::new();
                    b.put(Cf::Meta, b"k".to_vec(), be(i));
                    b.put(Cf::Messages, b"k".to_vec(), be(i));
                    store
                        .submit_blocking(b, false)
                        .unwrap()
                        .wait_blocking()
                        .unwrap();
                }
                done.store(true, std::sync::atomic::Ordering::Release);
                reader.join().unwrap();
            }

            #[test]
            fn scan_yields_big_endian_u64_keys_in_numeric_order() {
                let (store, _g) = open();
                let mut b = Batch::new();
                for n in [256u64, 1, u64::MAX, 0, 255, 65_536, 2] {
                    let mut key = b"q1/".to_vec();
                    key.extend(be(n));
                    b.put(Cf::QueueEntries, key, be(n));
                }
                store
                    .submit_blocking(b, true)
                    .unwrap()
                    .wait_blocking()
                    .unwrap();
                let values: Vec<u64> = collect(&store, Cf::QueueEntries, b"q1/")
                    .into_iter()
                    .map(|(_, v)| u64::from_be_bytes(v.try_into().unwrap()))
                    .collect();
                assert_eq!(values, vec![0, 1, 2, 255, 256, 65_536, u64::MAX]);
            }

            #[test]
            fn scan_stops_when_callback_returns_false() {
                let (store, _g) = open();
                let mut b = Batch::new();
                for n in 0..10u64 {
                    b.put(Cf::Retained, be(n), &b"v"[..]);
                }
                store
                    .submit_blocking(b, true)
                    .unwrap()
                    .wait_blocking()
                    .unwrap();
                let mut seen = Vec::new();
                store
                    .scan(Cf::Retained, b"", &mut |k, _| {
                        seen.push(k.to_vec());
                        seen.len() < 3
                    })
                    .unwrap();
                assert_eq!(seen, vec![be(0), be(1), be(2)]);
            }

            #[test]
            fn scan_sees_only_keys_with_the_prefix() {
                let (store, _g) = open();
                for key in [
                    &b"a"[..],
                    b"ab",
                    b"ab\x00",
                    b"ab\xff",
                    b"ac",
                    b"b",
                    b"\xff",
                    b"\xff\xff\x01",
                ] {
                    put(&store, Cf::Sessions, key, b"v");
                }
                let keys = |prefix: &[u8]| -> Vec<Vec<u8>> {
                    collect(&store, Cf::Sessions, prefix)
                        .into_iter()
                        .map(|(k, _)| k)
                        .collect()
                };
                assert_eq!(
                    keys(b"ab"),
                    vec![b"ab".to_vec(), b"ab\x00".to_vec(), b"ab\xff".to_vec()]
                );
                assert_eq!(
                    keys(b"\xff"),
                    vec![b"\xff".to_vec(), b"\xff\xff\x01".to_vec()]
                );
                assert_eq!(keys(b"\xff\xff"), vec![b"\xff\xff\x01".to_vec()]);
                assert_eq!(keys(b"z"), Vec::<Vec<u8>>::new());
                assert_eq!(keys(b"").len(), 8);
            }

            #[test]
            fn scan_from_starts_inside_the_prefix_and_last_under_finds_its_end() {
                let (store, _g) = open();
                for key in [
                    &b"g1"[..],
                    b"g1\x00\x01",
                    b"g1\x00\x05",
                    b"g1\x00\x09",
                    b"g1\xff",
                    b"g2\x00\x01",
                    b"\xff\xff",
                ] {
                    put(&store, Cf::RaftLog, key, b"v");
                }
                let from = |prefix: &[u8], start: &[u8]| -> Vec<Vec<u8>> {
                    let mut keys = Vec::new();
                    store
                        .scan_from(Cf::RaftLog, prefix, start, &mut |k, _| {
                            keys.push(k.to_vec());
                            true
                        })
                        .unwrap();
                    keys
                };
                assert_eq!(
                    from(b"g1", b"g1\x00\x02"),
                    vec![
                        b"g1\x00\x05".to_vec(),
                        b"g1\x00\x09".to_vec(),
                        b"g1\xff".to_vec()
                    ]
                );
                // A start below the prefix starts at the prefix.
                assert_eq!(from(b"g2", b"a").len(), 1);
                assert_eq!(from(b"g1", b"g1\xff\x00"), Vec::<Vec<u8>>::new());
                let last = |prefix: &[u8]| {
                    store
                        .last_under(Cf::RaftLog, prefix)
                        .unwrap()
                        .map(|(k, v)| (k, v.to_vec()))
                };
                assert_eq!(last(b"g1"), Some((b"g1\xff".to_vec(), b"v".to_vec())));
                assert_eq!(
                    last(b"g1\x00"),
                    Some((b"g1\x00\x09".to_vec(), b"v".to_vec()))
                );
                assert_eq!(last(b"g2"), Some((b"g2\x00\x01".to_vec(), b"v".to_vec())));
                assert_eq!(last(b"g3"), None);
                assert_eq!(last(b"\xff"), Some((b"\xff\xff".to_vec(), b"v".to_vec())));
                assert_eq!(last(b""), Some((b"\xff\xff".to_vec(), b"v".to_vec())));
                assert_eq!(store.last_under(Cf::Raft, b"g1").unwrap(), None);
            }

            #[test]
            fn column_families_are_isolated() {
                let (store, _g) = open();
                let mut b = Batch::new();
                for cf in Cf::ALL {
                    b.put(cf, b"same".to_vec(), cf.name().as_bytes().to_vec());
                }
                store
                    .submit_blocking(b, true)
                    .unwrap()
                    .wait_blocking()
                    .unwrap();
                for cf in Cf::ALL {
                    assert_eq!(
                        collect(&store, cf, b""),
                        vec![(b"same".to_vec(), cf.name().as_bytes().to_vec())]
                    );
                }
                let mut b = Batch::new();
                b.delete(Cf::Retained, b"same".to_vec());
                store
                    .submit_blocking(b, true)
                    .unwrap()
                    .wait_blocking()
                    .unwrap();
                assert_eq!(store.get(Cf::Retained, b"same").unwrap(), None);
                assert_eq!(
                    store.get(Cf::Sessions, b"same").unwrap().as_deref(),
                    Some(&b"sessions"[..])
                );
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn receipts_resolve_when_awaited() {
                let (store, _g) = open();
                let mut b = Batch::new();
                b.put(Cf::Meta, b"async".to_vec(), &b"yes"[..]);
                store.submit(b, true).await.unwrap().await.unwrap();
                store
                    .submit(Batch::new(), true)
                    .await
                    .unwrap()
                    .await
                    .unwrap();
                assert_eq!(
                    store.get(Cf::Meta, b"async").unwrap().as_deref(),
                    Some(&b"yes"[..])
                );
                let stats = store.stats();
                assert_eq!(stats.batches, 2);
                assert_eq!(stats.ops, 1);
                store.close().await.unwrap();
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn many_concurrent_submitters_all_resolve_with_group_commit() {
                let (store, _g) = open();
                let mut tasks = Vec::new();
                for t in 0..64u64 {
                    let store = store.clone();
                    tasks.push(tokio::spawn(async move {
                        for i in 0..50u64 {
                            let mut b = Batch::new();
                            let mut key = be(t);
                            key.extend(be(i));
                            b.put(Cf::Messages, key, be(t * 1000 + i));
                            store.submit(b, true).await.unwrap().await.unwrap();
                        }
                    }));
                }
                for task in tasks {
                    task.await.unwrap();
                }
                let all = collect(&store, Cf::Messages, b"");
                assert_eq!(all.len(), 64 * 50);
                for (k, v) in &all {
                    let t = u64::from_be_bytes(k[..8].try_into().unwrap());
                    let i = u64::from_be_bytes(k[8..].try_into().unwrap());
                    assert_eq!(v, &be(t * 1000 + i));
                }
                let stats = store.stats();
                assert_eq!(stats.batches, 3200);
                assert_eq!(stats.ops, 3200);
                assert!(stats.commits <= stats.batches, "{stats:?}");
                assert_eq!(stats.syncs, stats.commits);
                assert!(stats.max_group >= 1);
                store.close().await.unwrap();
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn without_group_commit_every_batch_is_its_own_commit() {
                let (store, _g) = super::$engine(StoreOptions {
                    group_commit: false,
                    ..StoreOptions::default()
                });
                let mut tasks = Vec::new();
                for t in 0..16u64 {
                    let store = store.clone();
                    tasks.push(tokio::spawn(async move {
                        for i in 0..20u64 {
                            let mut b = Batch::new();
                            b.put(Cf::Messages, [be(t), be(i)].concat(), &b"v"[..]);
                            store.submit(b, true).await.unwrap().await.unwrap();
                        }
                    }));
                }
                for task in tasks {
                    task.await.unwrap();
                }
                let stats = store.stats();
                assert_eq!(stats.batches, 320);
                assert_eq!(stats.commits, 320);
                assert_eq!(stats.syncs, 320);
                assert_eq!(stats.max_group, 1);
                assert_eq!(collect(&store, Cf::Messages, b"").len(), 320);
            }

            #[test]
            fn close_applies_everything_queued() {
                let (store, _g) = open();
                let receipts: Vec<_> = (0..200u64)
                    .map(|i| {
                        let mut b = Batch::new();
                        b.put(Cf::Meta, be(i), be(i));
                        store.submit_blocking(b, false).unwrap()
                    })
                    .collect();
                store.close_blocking().unwrap();
                for r in receipts {
                    r.wait_blocking().unwrap();
                }
                assert_eq!(collect(&store, Cf::Meta, b"").len(), 200);
                assert_eq!(store.stats().batches, 200);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn close_is_idempotent_and_later_submits_are_closed() {
                let (store, _g) = open();
                put_async(&store).await;
                store.close().await.unwrap();
                store.close().await.unwrap();
                store.close_blocking().unwrap();
                assert!(matches!(
                    store.submit(Batch::new(), true).await,
                    Err(StoreError::Closed)
                ));
                let clone = store.clone();
                let blocking =
                    tokio::task::spawn_blocking(move || clone.submit_blocking(Batch::new(), false))
                        .await
                        .unwrap();
                assert!(matches!(blocking, Err(StoreError::Closed)));
                assert_eq!(
                    store.get(Cf::Meta, b"before-close").unwrap().as_deref(),
                    Some(&b"v"[..])
                );
            }

            async fn put_async(store: &Store) {
                let mut b = Batch::new();
                b.put(Cf::Meta, b"before-close".to_vec(), &b"v"[..]);
                store.submit(b, false).await.unwrap().await.unwrap();
            }
        }
    };
}

contract!(mem);
contract!(rocks);

#[test]
fn only_rocksdb_is_persistent() {
    assert!(!mem(StoreOptions::default()).0.is_persistent());
    assert!(rocks(StoreOptions::default()).0.is_persistent());
}
