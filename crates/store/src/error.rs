//! The store's error type, shared by both engines and the committer.

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB reported an error (its message; `rocksdb::Error` is not `Clone`
    /// and one failed group commit must be reported to every batch in it).
    #[error("rocksdb: {0}")]
    Rocks(String),
    /// The store was closed (or its committer stopped) before the request
    /// could be accepted or answered.
    #[error("store is closed")]
    Closed,
    /// Stored bytes could not be interpreted: a missing column family or a
    /// record a caller failed to decode.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// An operating-system error outside RocksDB (directory creation,
    /// starting the committer thread).
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// An earlier group commit failed, so later batches are refused to keep
    /// the promise that batches apply in submission order (no later batch is
    /// ever applied after an earlier one was lost). Carries the first error.
    #[error("store failed earlier and refuses further writes: {0}")]
    Poisoned(String),
}

impl StoreError {
    /// A copy of this error, for reporting one failure to several waiters.
    pub fn duplicate(&self) -> StoreError {
        match self {
            StoreError::Rocks(m) => StoreError::Rocks(m.clone()),
            StoreError::Closed => StoreError::Closed,
            StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
            StoreError::Io(e) => StoreError::Io(std::io::Error::new(e.kind(), e.to_string())),
            StoreError::Poisoned(m) => StoreError::Poisoned(m.clone()),
        }
    }
}

#[cfg(feature = "rocksdb")]
impl From<rocksdb::Error> for StoreError {
    fn from(e: rocksdb::Error) -> Self {
        StoreError::Rocks(e.into_string())
    }
}
