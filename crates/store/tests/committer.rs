//! Group-commit behaviour of the committer, checked deterministically with
//! engines that hold a write open or fail on demand.

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use bytes::Bytes;
use junction_store::{Batch, Cf, Engine, MemEngine, Store, StoreError, StoreOptions};
use parking_lot::Mutex;

/// Wraps a MemEngine; the first write blocks until the test releases it, so
/// the test can queue batches behind it and observe how they are grouped.
struct GatedEngine {
    inner: MemEngine,
    /// Tells the test the first write has started.
    entered: Mutex<Option<std_mpsc::Sender<()>>>,
    /// The first write waits here for the test's go-ahead.
    release: Mutex<Option<std_mpsc::Receiver<()>>>,
    /// `sync` flag and op count of every write, in order.
    writes: Mutex<Vec<(bool, usize)>>,
}

impl Engine for GatedEngine {
    fn write(&self, batch: &Batch, sync: bool) -> Result<(), StoreError> {
        if let Some(entered) = self.entered.lock().take() {
            entered.send(()).unwrap();
            let release = self.release.lock().take().unwrap();
            release.recv().unwrap();
        }
        self.writes.lock().push((sync, batch.len()));
        self.inner.write(batch, sync)
    }
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        self.inner.get(cf, key)
    }
    fn scan_from(
        &self,
        cf: Cf,
        prefix: &[u8],
        from: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        self.inner.scan_from(cf, prefix, from, f)
    }
    fn last_under(&self, cf: Cf, prefix: &[u8]) -> Result<Option<(Vec<u8>, Bytes)>, StoreError> {
        self.inner.last_under(cf, prefix)
    }
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Submit one batch that blocks the committer, then `queued` batches of one
/// op each (durability from `durable`), release, and return the engine.
fn run_gated(
    opts: StoreOptions,
    durable: impl Fn(u64) -> bool,
    queued: u64,
) -> (Store, Arc<GatedEngine>) {
    let (entered_tx, entered_rx) = std_mpsc::channel();
    let (release_tx, release_rx) = std_mpsc::channel();
    let engine = Arc::new(GatedEngine {
        inner: MemEngine::new(),
        entered: Mutex::new(Some(entered_tx)),
        release: Mutex::new(Some(release_rx)),
        writes: Mutex::new(Vec::new()),
    });
    let store = Store::new(engine.clone(), opts);
    let mut first = Batch::new();
    first.put(Cf::Meta, b"first".to_vec(), &b"v"[..]);
    let mut receipts = vec![store.submit_blocking(first, false).unwrap()];
    entered_rx.recv().unwrap();
    for i in 0..queued {
        let mut b = Batch::new();
        b.put(Cf::Meta, i.to_be_bytes().to_vec(), &b"v"[..]);
        receipts.push(store.submit_blocking(b, durable(i)).unwrap());
    }
    release_tx.send(()).unwrap();
    for r in receipts {
        r.wait_blocking().unwrap();
    }
    (store, engine)
}

#[test]
fn queued_batches_merge_into_one_commit_synced_if_any_is_durable() {
    let (store, engine) = run_gated(StoreOptions::default(), |i| i == 5, 9);
    assert_eq!(*engine.writes.lock(), vec![(false, 1), (true, 9)]);
    let stats = store.stats();
    assert_eq!(stats.commits, 2);
    assert_eq!(stats.batches, 10);
    assert_eq!(stats.ops, 10);
    assert_eq!(stats.syncs, 1);
    assert_eq!(stats.max_group, 9);
}

#[test]
fn group_never_exceeds_max_batch_ops() {
    let opts = StoreOptions {
        max_batch_ops: 4,
        ..StoreOptions::default()
    };
    let (store, engine) = run_gated(opts, |_| false, 10);
    assert_eq!(
        *engine.writes.lock(),
        vec![(false, 1), (false, 4), (false, 4), (false, 2)]
    );
    assert_eq!(store.stats().max_group, 4);
}

#[test]
fn batch_larger_than_max_batch_ops_commits_alone() {
    let engine = Arc::new(MemEngine::new());
    let store = Store::new(
        engine,
        StoreOptions {
            max_batch_ops: 2,
            ..StoreOptions::default()
        },
    );
    let mut big = Batch::new();
    for i in 0..5u8 {
        big.put(Cf::Meta, vec![i], &b"v"[..]);
    }
    store
        .submit_blocking(big, true)
        .unwrap()
        .wait_blocking()
        .unwrap();
    let stats = store.stats();
    assert_eq!((stats.commits, stats.ops), (1, 5));
}

#[test]
fn without_group_commit_queued_batches_commit_one_by_one() {
    let opts = StoreOptions {
        group_commit: false,
        ..StoreOptions::default()
    };
    let (store, engine) = run_gated(opts, |_| true, 3);
    assert_eq!(
        *engine.writes.lock(),
        vec![(false, 1), (true, 1), (true, 1), (true, 1)]
    );
    assert_eq!(store.stats().commits, 4);
}

/// Fails every write, to check error propagation.
struct FailingEngine;

impl Engine for FailingEngine {
    fn write(&self, _batch: &Batch, _sync: bool) -> Result<(), StoreError> {
        Err(StoreError::Rocks("disk on fire".into()))
    }
    fn get(&self, _cf: Cf, _key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        Ok(None)
    }
    fn scan_from(
        &self,
        _cf: Cf,
        _prefix: &[u8],
        _from: &[u8],
        _f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    fn last_under(&self, _cf: Cf, _prefix: &[u8]) -> Result<Option<(Vec<u8>, Bytes)>, StoreError> {
        Ok(None)
    }
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[test]
fn failed_commit_reaches_receipt_and_poisons_later_batches() {
    let store = Store::new(Arc::new(FailingEngine), StoreOptions::default());
    let first = store
        .submit_blocking(Batch::new(), true)
        .unwrap()
        .wait_blocking();
    assert!(matches!(first, Err(StoreError::Rocks(m)) if m == "disk on fire"));
    let second = store
        .submit_blocking(Batch::new(), true)
        .unwrap()
        .wait_blocking();
    assert!(matches!(second, Err(StoreError::Poisoned(m)) if m == "rocksdb: disk on fire"));
    assert_eq!(store.stats().commits, 1);
}

#[test]
fn committer_runs_on_its_own_named_thread() {
    struct NameEngine(Mutex<Option<String>>);
    impl Engine for NameEngine {
        fn write(&self, _batch: &Batch, _sync: bool) -> Result<(), StoreError> {
            *self.0.lock() = std::thread::current().name().map(str::to_owned);
            Ok(())
        }
        fn get(&self, _cf: Cf, _key: &[u8]) -> Result<Option<Bytes>, StoreError> {
            Ok(None)
        }
        fn scan_from(
            &self,
            _cf: Cf,
            _p: &[u8],
            _from: &[u8],
            _f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
        ) -> Result<(), StoreError> {
            Ok(())
        }
        fn last_under(&self, _cf: Cf, _p: &[u8]) -> Result<Option<(Vec<u8>, Bytes)>, StoreError> {
            Ok(None)
        }
        fn flush(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }
    let engine = Arc::new(NameEngine(Mutex::new(None)));
    let store = Store::new(engine.clone(), StoreOptions::default());
    store
        .submit_blocking(Batch::new(), false)
        .unwrap()
        .wait_blocking()
        .unwrap();
    assert_eq!(engine.0.lock().as_deref(), Some("junction-committer"));
}

#[test]
fn dropping_the_last_store_applies_queued_batches() {
    let engine = Arc::new(MemEngine::new());
    let store = Store::new(engine.clone(), StoreOptions::default());
    let receipts: Vec<_> = (0..100u64)
        .map(|i| {
            let mut b = Batch::new();
            b.put(Cf::Meta, i.to_be_bytes().to_vec(), &b"v"[..]);
            store.submit_blocking(b, false).unwrap()
        })
        .collect();
    drop(store);
    for r in receipts {
        r.wait_blocking().unwrap();
    }
    let mut n = 0;
    engine
        .scan(Cf::Meta, b"", &mut |_, _| {
            n += 1;
            true
        })
        .unwrap();
    assert_eq!(n, 100);
}
