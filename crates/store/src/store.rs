//! [`Store`], the front end every broker component uses: it hands batches to
//! the committer thread, answers synchronous reads straight from the engine,
//! and owns the lifecycle (open, submit, close).

#[cfg(feature = "rocksdb")]
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{Semaphore, TryAcquireError, mpsc, oneshot};

use crate::batch::{Batch, Cf};
use crate::committer::{CommitReceipt, Committer, Request, StoreStats};
use crate::engine::{Engine, MemEngine};
use crate::error::StoreError;
#[cfg(feature = "rocksdb")]
use crate::rocks::RocksEngine;

/// Name of the committer OS thread, as seen in `top -H` and debuggers.
const COMMITTER_THREAD: &str = "junction-committer";

/// Tuning of the committer.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Batches that may wait for the committer before `submit` applies
    /// backpressure (awaits). Values below 1 are treated as 1.
    pub queue_capacity: usize,
    /// Cap on operations merged into one group commit, so one commit's
    /// latency stays bounded under load. A single larger batch still commits
    /// alone.
    pub max_batch_ops: usize,
    /// Merge queued batches into one write and one sync. False gives one
    /// write (and sync, if durable) per submitted batch, for the benchmark
    /// comparison.
    pub group_commit: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            queue_capacity: 1024,
            max_batch_ops: 4096,
            group_commit: true,
        }
    }
}

/// The committer front end. Cheap to clone; all clones share one engine and
/// one committer thread. Dropping the last clone without [`Store::close`]
/// still applies everything queued (and joins the committer, so the engine
/// is released) but skips the final flush.
#[derive(Clone)]
pub struct Store {
    /// Shared by every clone.
    inner: Arc<Inner>,
}

/// State shared by the clones of one [`Store`].
struct Inner {
    /// Synchronous reads and the final flush go straight here.
    engine: Arc<dyn Engine>,
    /// Feeds the committer; `None` once closing began (or if the thread
    /// could not start). Held only long enough to clone the sender.
    tx: Mutex<Option<mpsc::UnboundedSender<Request>>>,
    /// Bounds the batches queued through `submit` (`queue_capacity`): a
    /// submitter waits for a slot, which is backpressure on publishers.
    /// The channel itself is unbounded so `submit_now` never blocks and
    /// both kinds of submission keep one order.
    slots: Arc<Semaphore>,
    /// Serialises close: held across the join and flush so a second closer
    /// waits for the first to finish.
    lifecycle: Mutex<Lifecycle>,
    /// Filled by the committer after every commit.
    stats: Arc<Mutex<StoreStats>>,
    /// Why the committer thread could not be started, reported by every
    /// submit instead of a misleading "closed".
    start_error: Option<String>,
}

/// Close-time state of a [`Store`].
struct Lifecycle {
    /// The committer thread, until joined.
    thread: Option<JoinHandle<()>>,
    /// Set by the first close so later closes return at once.
    closed: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("persistent", &self.is_persistent())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Store {
    /// Start ONE dedicated committer OS thread ("junction-committer") over
    /// `engine`. If the OS refuses to start the thread, the error is logged
    /// and every submit reports it; use [`Store::try_new`] to get it here.
    pub fn new(engine: Arc<dyn Engine>, opts: StoreOptions) -> Self {
        let (store, error) = Self::start(engine, opts);
        if let Some(e) = error {
            tracing::error!(error = %e, "could not start the store committer thread");
        }
        store
    }

    /// Like [`Store::new`] but fails if the committer thread cannot start.
    pub fn try_new(engine: Arc<dyn Engine>, opts: StoreOptions) -> Result<Self, StoreError> {
        match Self::start(engine, opts) {
            (store, None) => Ok(store),
            (_, Some(e)) => Err(StoreError::Io(e)),
        }
    }

    /// Open (creating if missing) a RocksDB store in `dir`.
    #[cfg(feature = "rocksdb")]
    pub fn open_rocksdb(dir: &Path, opts: StoreOptions) -> Result<Self, StoreError> {
        Self::try_new(Arc::new(RocksEngine::open(dir)?), opts)
    }

    /// A store over a fresh [`MemEngine`].
    pub fn in_memory() -> Self {
        Self::new(Arc::new(MemEngine::new()), StoreOptions::default())
    }

    fn start(engine: Arc<dyn Engine>, opts: StoreOptions) -> (Self, Option<std::io::Error>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let slots = Arc::new(Semaphore::new(opts.queue_capacity.max(1)));
        let stats = Arc::new(Mutex::new(StoreStats::default()));
        let committer = Committer {
            engine: Arc::clone(&engine),
            rx,
            stats: Arc::clone(&stats),
            max_batch_ops: opts.max_batch_ops,
            group_commit: opts.group_commit,
        };
        let spawned = std::thread::Builder::new()
            .name(COMMITTER_THREAD.to_owned())
            .spawn(move || committer.run());
        let (tx, thread, error) = match spawned {
            Ok(handle) => (Some(tx), Some(handle), None),
            Err(e) => (None, None, Some(e)),
        };
        let store = Store {
            inner: Arc::new(Inner {
                engine,
                tx: Mutex::new(tx),
                slots,
                lifecycle: Mutex::new(Lifecycle {
                    thread,
                    closed: false,
                }),
                stats,
                start_error: error.as_ref().map(ToString::to_string),
            }),
        };
        (store, error)
    }

    /// A sender to the committer, or why there is none.
    fn sender(&self) -> Result<mpsc::UnboundedSender<Request>, StoreError> {
        match &*self.inner.tx.lock() {
            Some(tx) => Ok(tx.clone()),
            None => Err(match &self.inner.start_error {
                Some(e) => StoreError::Io(std::io::Error::other(e.clone())),
                None => StoreError::Closed,
            }),
        }
    }

    /// Queue a batch for the committer. Awaits only while the committer
    /// queue is full (backpressure). The receipt resolves once the batch is
    /// applied — and, if `durable`, WAL-synced. Batches apply in submission
    /// order.
    pub async fn submit(&self, batch: Batch, durable: bool) -> Result<CommitReceipt, StoreError> {
        let tx = self.sender()?;
        let slot = Arc::clone(&self.inner.slots)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        Self::send(&tx, batch, durable, Some(slot))
    }

    /// Same as [`Store::submit`] from non-async code (blocks while the
    /// queue is full). Must not be called on an async worker. Used at
    /// startup/recovery and in tests.
    pub fn submit_blocking(
        &self,
        batch: Batch,
        durable: bool,
    ) -> Result<CommitReceipt, StoreError> {
        let tx = self.sender()?;
        // Polls for a slot: this path serves start-up and tests, where a
        // full queue is rare and a short sleep is harmless.
        let slot = loop {
            match Arc::clone(&self.inner.slots).try_acquire_owned() {
                Ok(slot) => break slot,
                Err(TryAcquireError::NoPermits) => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(TryAcquireError::Closed) => return Err(StoreError::Closed),
            }
        };
        Self::send(&tx, batch, durable, Some(slot))
    }

    /// Queues a batch without waiting, even when the queue is full, in the
    /// same order as every other submission. For callers that cannot wait
    /// (a consumer's handle being dropped, an ack on a sync path); their
    /// volume is bounded by the messages already stored, so this does not
    /// let publishers outrun the disk.
    pub fn submit_now(&self, batch: Batch, durable: bool) -> Result<CommitReceipt, StoreError> {
        let tx = self.sender()?;
        Self::send(&tx, batch, durable, None)
    }

    fn send(
        tx: &mpsc::UnboundedSender<Request>,
        batch: Batch,
        durable: bool,
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<CommitReceipt, StoreError> {
        let (reply, rx) = oneshot::channel();
        let request = Request {
            batch,
            durable,
            reply,
            slot,
        };
        tx.send(request).map_err(|_| StoreError::Closed)?;
        Ok(CommitReceipt::new(rx))
    }

    /// Read one key straight from the engine (recovery, before serving).
    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        self.inner.engine.get(cf, key)
    }

    /// Visit every (key, value) under `prefix` in ascending key order,
    /// straight from the engine; stops early when `f` returns false.
    pub fn scan(
        &self,
        cf: Cf,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        self.inner.engine.scan(cf, prefix, f)
    }

    /// Like [`Store::scan`], from the first key not below `from`.
    pub fn scan_from(
        &self,
        cf: Cf,
        prefix: &[u8],
        from: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        self.inner.engine.scan_from(cf, prefix, from, f)
    }

    /// The greatest key under `prefix` and its value, straight from the
    /// engine.
    pub fn last_under(
        &self,
        cf: Cf,
        prefix: &[u8],
    ) -> Result<Option<(Vec<u8>, Bytes)>, StoreError> {
        self.inner.engine.last_under(cf, prefix)
    }

    /// Commit statistics for /metrics.
    pub fn stats(&self) -> StoreStats {
        self.inner.stats.lock().clone()
    }

    /// Drain everything queued, apply it, flush the engine (WAL synced,
    /// memtables written), stop the committer thread and join it.
    /// Idempotent; submits after close return [`StoreError::Closed`].
    pub async fn close(&self) -> Result<(), StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.close_blocking())
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?
    }

    /// Same as [`Store::close`] from non-async code.
    pub fn close_blocking(&self) -> Result<(), StoreError> {
        let mut lifecycle = self.inner.lifecycle.lock();
        if lifecycle.closed {
            return Ok(());
        }
        lifecycle.closed = true;
        self.inner.stop_committer(&mut lifecycle)?;
        self.inner.engine.flush()?;
        tracing::info!("store closed");
        Ok(())
    }

    /// Bytes free on the file system holding the data (None in memory).
    /// A syscall, cheap enough for a periodic check on a worker.
    pub fn free_disk_bytes(&self) -> Option<u64> {
        self.inner.engine.free_disk_bytes()
    }

    /// Memory the engine holds: (write buffers, block cache), in bytes.
    pub fn memory_usage(&self) -> (u64, u64) {
        self.inner.engine.memory_usage()
    }

    /// Whether data outlives the process (false for the in-memory engine).
    pub fn is_persistent(&self) -> bool {
        self.inner.engine.is_persistent()
    }
}

impl Inner {
    /// Close the queue, let the committer drain it, and join the thread.
    fn stop_committer(&self, lifecycle: &mut Lifecycle) -> Result<(), StoreError> {
        // Submitters still holding a cloned sender finish their send; the
        // committer applies it and stops once the last sender is gone.
        drop(self.tx.lock().take());
        match lifecycle.thread.take() {
            Some(handle) => handle
                .join()
                .map_err(|_| StoreError::Io(std::io::Error::other("committer thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let mut lifecycle = std::mem::replace(
            &mut *self.lifecycle.lock(),
            Lifecycle {
                thread: None,
                closed: true,
            },
        );
        if let Err(e) = self.stop_committer(&mut lifecycle) {
            tracing::error!(error = %e, "store dropped with a failed committer");
        }
    }
}
