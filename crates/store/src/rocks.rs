//! The RocksDB back end: opening the database with every column family of
//! DESIGN.md "Storage", translating [`Batch`]es into `WriteBatch`es, and
//! syncing the WAL when a write must be durable.

use std::path::Path;

use bytes::Bytes;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType,
    FlushOptions, Options, ReadOptions, WriteBatch, WriteOptions,
};

use crate::batch::{Batch, Cf, Op, prefix_upper_bound};
use crate::engine::Engine;
use crate::error::StoreError;

/// Memtable size of the messages family: large enough that a message
/// acked soon after it was stored dies in the memtable (put and delete
/// never reach a table file), small enough that the broker's memory
/// settles within minutes of steady load.
const WRITE_BUFFER_BYTES: usize = 32 << 20;
/// Memtable size of the queue entries (small records).
const ENTRY_WRITE_BUFFER_BYTES: usize = 16 << 20;
/// Memtable size of the quiet families (topology, retained messages, MQTT
/// sessions, quarantine): their memtables fill slowly and would otherwise
/// grow the process for hours before their first flush (the soak bench
/// saw resident memory climb that way).
const QUIET_WRITE_BUFFER_BYTES: usize = 2 << 20;
/// Cap on all memtables together, across the families.
const DB_WRITE_BUFFER_BYTES: usize = 64 << 20;
/// One block cache for every family (RocksDB would give each family a
/// cache of its own): reads are paged messages and recovery.
const BLOCK_CACHE_BYTES: usize = 32 << 20;
/// Cap on the WAL files kept: past it RocksDB flushes the column families
/// whose memtables pin the oldest WAL file, so a quiet family (retained
/// messages, sessions) cannot keep gigabytes of log alive and slow a
/// restart's replay.
const MAX_TOTAL_WAL_BYTES: u64 = 256 << 20;
/// RocksDB's own info LOG: rolled at this size, this many kept.
const LOG_FILE_BYTES: usize = 16 << 20;
const LOG_FILES_KEPT: usize = 4;
/// Compaction on deletion: a file written while this many of the last
/// `DELETION_WINDOW` entries were tombstones is compacted soon, so acked
/// messages (a put then a delete per message) do not leave tombstones
/// that every queue scan must step over.
const DELETION_WINDOW: usize = 10_000;
const DELETIONS_TRIGGER: usize = 5_000;

/// An engine over one RocksDB database with one column family per [`Cf`].
/// The WAL is always on; `sync` decides only whether a write waits for it to
/// reach the disk.
pub struct RocksEngine {
    /// The open database; closed when the engine is dropped.
    db: DB,
    /// The block cache every family shares.
    cache: Cache,
}

impl std::fmt::Debug for RocksEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksEngine")
            .field("path", &self.db.path())
            .finish()
    }
}

impl RocksEngine {
    /// Open (creating the directory and every column family if missing) the
    /// database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_db_write_buffer_size(DB_WRITE_BUFFER_BYTES);
        db_opts.set_max_total_wal_size(MAX_TOTAL_WAL_BYTES);
        db_opts.set_max_log_file_size(LOG_FILE_BYTES);
        db_opts.set_keep_log_file_num(LOG_FILES_KEPT);
        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        let cfs = Cf::ALL.iter().map(|cf| {
            let mut cf_opts = Options::default();
            cf_opts.set_block_based_table_factory(&table);
            cf_opts.set_write_buffer_size(match cf {
                Cf::Messages => WRITE_BUFFER_BYTES,
                Cf::QueueEntries => ENTRY_WRITE_BUFFER_BYTES,
                _ => QUIET_WRITE_BUFFER_BYTES,
            });
            cf_opts.set_compression_type(DBCompressionType::Lz4);
            cf_opts.add_compact_on_deletion_collector_factory(
                DELETION_WINDOW,
                DELETIONS_TRIGGER,
                0.0,
            );
            ColumnFamilyDescriptor::new(cf.name(), cf_opts)
        });
        let db = DB::open_cf_descriptors(&db_opts, dir, cfs)?;
        tracing::info!(path = %dir.display(), "opened rocksdb store");
        Ok(Self { db, cache })
    }

    /// The handle of `cf`, which `open` guarantees exists.
    fn handle(&self, cf: Cf) -> Result<&ColumnFamily, StoreError> {
        self.db
            .cf_handle(cf.name())
            .ok_or_else(|| StoreError::Corrupt(format!("missing column family {}", cf.name())))
    }
}

impl Engine for RocksEngine {
    fn write(&self, batch: &Batch, sync: bool) -> Result<(), StoreError> {
        if batch.is_empty() {
            // An empty durable batch is a barrier: everything written before
            // it must reach the disk.
            if sync {
                self.db.flush_wal(true)?;
            }
            return Ok(());
        }
        let mut wb = WriteBatch::default();
        for op in batch.ops() {
            match op {
                Op::Put { cf, key, value } => wb.put_cf(self.handle(*cf)?, key, value),
                Op::Delete { cf, key } => wb.delete_cf(self.handle(*cf)?, key),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(wb, &wo)?;
        Ok(())
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        let value = self.db.get_pinned_cf(self.handle(cf)?, key)?;
        Ok(value.map(|v| Bytes::copy_from_slice(&v)))
    }

    fn scan_from(
        &self,
        cf: Cf,
        prefix: &[u8],
        from: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let mut ro = ReadOptions::default();
        if let Some(bound) = prefix_upper_bound(prefix) {
            ro.set_iterate_upper_bound(bound);
        }
        let mut it = self.db.raw_iterator_cf_opt(self.handle(cf)?, ro);
        it.seek(from.max(prefix));
        while let (Some(key), Some(value)) = (it.key(), it.value()) {
            if !key.starts_with(prefix) || !f(key, value) {
                break;
            }
            it.next();
        }
        it.status()?;
        Ok(())
    }

    fn last_under(&self, cf: Cf, prefix: &[u8]) -> Result<Option<(Vec<u8>, Bytes)>, StoreError> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(prefix.to_vec());
        if let Some(bound) = prefix_upper_bound(prefix) {
            ro.set_iterate_upper_bound(bound);
        }
        let mut it = self.db.raw_iterator_cf_opt(self.handle(cf)?, ro);
        it.seek_to_last();
        let last = match (it.key(), it.value()) {
            (Some(key), Some(value)) if key.starts_with(prefix) => {
                Some((key.to_vec(), Bytes::copy_from_slice(value)))
            }
            _ => None,
        };
        it.status()?;
        Ok(last)
    }

    fn free_disk_bytes(&self) -> Option<u64> {
        let st = rustix::fs::statvfs(self.db.path()).ok()?;
        Some(st.f_bavail.saturating_mul(st.f_frsize))
    }

    fn memory_usage(&self) -> (u64, u64) {
        let memtables = Cf::ALL
            .iter()
            .filter_map(|cf| self.handle(*cf).ok())
            .filter_map(|h| {
                self.db
                    .property_int_value_cf(h, "rocksdb.cur-size-all-mem-tables")
                    .ok()
                    .flatten()
            })
            .sum();
        (memtables, self.cache.get_usage() as u64)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_wal(true)?;
        let handles = Cf::ALL
            .iter()
            .map(|cf| self.handle(*cf))
            .collect::<Result<Vec<_>, _>>()?;
        let mut fo = FlushOptions::default();
        fo.set_wait(true);
        self.db.flush_cfs_opt(&handles, &fo)?;
        Ok(())
    }
}
