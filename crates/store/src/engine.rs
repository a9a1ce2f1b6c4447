//! The synchronous [`Engine`] trait both back ends implement, and the
//! in-memory back end [`MemEngine`] (tests, and brokers run without a data
//! directory).

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;
use parking_lot::RwLock;

use crate::batch::{Batch, Cf, Op};
use crate::error::StoreError;

/// The synchronous storage engine: the narrow trait both back ends
/// implement. Calls may block on disk, so they belong on the committer
/// thread or in startup/recovery code, never on an async worker.
pub trait Engine: Send + Sync + 'static {
    /// Apply the batch atomically; when `sync` is true the write is durable
    /// (WAL fsynced) on return.
    fn write(&self, batch: &Batch, sync: bool) -> Result<(), StoreError>;

    /// The value stored under `key` in `cf`, if any.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Bytes>, StoreError>;

    /// Visit every (key, value) whose key starts with `prefix`, in ascending
    /// key (bytewise) order; stop early when `f` returns false. `f` must not
    /// write to the same engine.
    fn scan(
        &self,
        cf: Cf,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        self.scan_from(cf, prefix, prefix, f)
    }

    /// Like [`Engine::scan`], but starting at the first key not below
    /// `from` (a range read inside one prefix, e.g. a log from an index).
    fn scan_from(
        &self,
        cf: Cf,
        prefix: &[u8],
        from: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError>;

    /// The greatest key starting with `prefix`, and its value (a log's
    /// last entry), without visiting the others.
    fn last_under(&self, cf: Cf, prefix: &[u8]) -> Result<Option<(Vec<u8>, Bytes)>, StoreError>;

    /// Flush memtables etc. before close (no-op for memory).
    fn flush(&self) -> Result<(), StoreError>;

    /// Whether data outlives the process (false for [`MemEngine`]).
    fn is_persistent(&self) -> bool {
        true
    }

    /// Bytes free for unprivileged writers on the file system holding the
    /// data (None: nothing on disk, or it cannot be read).
    fn free_disk_bytes(&self) -> Option<u64> {
        None
    }

    /// Memory the engine itself holds: (write buffers, read cache), in
    /// bytes. Zero for the in-memory engine, whose data is the broker's.
    fn memory_usage(&self) -> (u64, u64) {
        (0, 0)
    }
}

/// An engine holding everything in memory: one ordered map per column
/// family, all behind one lock so a batch touching several families is
/// atomic to readers.
#[derive(Debug, Default)]
pub struct MemEngine {
    /// One map per family, indexed by [`Cf::index`].
    maps: RwLock<[BTreeMap<Vec<u8>, Bytes>; Cf::ALL.len()]>,
}

impl MemEngine {
    /// An empty in-memory engine.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Engine for MemEngine {
    fn write(&self, batch: &Batch, _sync: bool) -> Result<(), StoreError> {
        let mut maps = self.maps.write();
        for op in batch.ops() {
            match op {
                Op::Put { cf, key, value } => {
                    maps[cf.index()].insert(key.clone(), value.clone());
                }
                Op::Delete { cf, key } => {
                    maps[cf.index()].remove(key.as_slice());
                }
            }
        }
        Ok(())
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        Ok(self.maps.read()[cf.index()].get(key).cloned())
    }

    fn scan_from(
        &self,
        cf: Cf,
        prefix: &[u8],
        from: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        // Recursive read so `f` may itself call `get` even if a writer waits.
        let maps = self.maps.read_recursive();
        let start = from.max(prefix);
        for (key, value) in
            maps[cf.index()].range::<[u8], _>((Bound::Included(start), Bound::Unbounded))
        {
            if !key.starts_with(prefix) || !f(key, value) {
                break;
            }
        }
        Ok(())
    }

    fn last_under(&self, cf: Cf, prefix: &[u8]) -> Result<Option<(Vec<u8>, Bytes)>, StoreError> {
        let maps = self.maps.read_recursive();
        let map = &maps[cf.index()];
        let last = match crate::batch::prefix_upper_bound(prefix) {
            Some(bound) => map
                .range::<[u8], _>((Bound::Included(prefix), Bound::Excluded(bound.as_slice())))
                .next_back(),
            None => map
                .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
                .next_back(),
        };
        Ok(last
            .filter(|(key, _)| key.starts_with(prefix))
            .map(|(key, value)| (key.clone(), value.clone())))
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn is_persistent(&self) -> bool {
        false
    }
}
