//! [`ClusterError`], and its translation into openraft's storage error.

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageError, StorageIOError};

use crate::types::NodeId;

/// What can go wrong in the cluster crate's own code.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The store refused or failed a read or write.
    #[error("store: {0}")]
    Store(#[from] junction_store::StoreError),
    /// openraft refused to start or to initialize a group.
    #[error("raft: {0}")]
    Raft(String),
    /// A stored record could not be read back: its version byte is
    /// unknown or its body does not decode.
    #[error("record {what}: {reason}")]
    Record {
        /// Which record (log entry, vote, snapshot...).
        what: &'static str,
        /// Why it could not be read.
        reason: String,
    },
}

impl ClusterError {
    /// As openraft's storage error, naming what was being done to what.
    pub(crate) fn storage(
        self,
        subject: ErrorSubject<NodeId>,
        verb: ErrorVerb,
    ) -> StorageError<NodeId> {
        StorageError::IO {
            source: StorageIOError::new(subject, verb, AnyError::new(&self)),
        }
    }
}
