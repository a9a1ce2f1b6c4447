//! [`LogStore`]: openraft's log storage for one group, over the node's
//! store. Every group's log shares the `raft_log` family and the store's
//! committer, so appends of many groups in flight together are written
//! and synced as one group commit.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use junction_store::{Batch, Cf, Store};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError, Vote,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ClusterError;
use crate::records::{self, COMMITTED, PURGED, VOTE};
use crate::types::{GroupId, NodeId, TypeConfig};

/// Openraft's storage error, as every method here returns it.
type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// The log of one group. Cheap to clone: clones share the store, and
/// every write goes through its committer, so they apply in call order.
///
/// Reads go straight to the engine on the calling task: they are point
/// and short range reads of recent keys, served from RocksDB's memtables
/// and block cache.
#[derive(Clone, Debug)]
pub struct LogStore {
    /// The node's store.
    store: Store,
    /// Whose log this is.
    group: GroupId,
}

impl LogStore {
    /// The log of `group` in `store` (whatever it already holds).
    pub fn new(store: Store, group: GroupId) -> Self {
        Self { store, group }
    }

    /// The group this log belongs to.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// One of the group's state records.
    fn read_state<T: DeserializeOwned>(
        &self,
        tag: u8,
        what: &'static str,
    ) -> Result<Option<T>, ClusterError> {
        match self
            .store
            .get(Cf::Raft, &records::state_key(self.group, tag))?
        {
            Some(bytes) => records::decode(what, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// A batch holding one state record.
    fn state_batch<T: Serialize>(
        &self,
        tag: u8,
        what: &'static str,
        value: &T,
    ) -> Result<Batch, ClusterError> {
        let mut batch = Batch::new();
        batch.put(
            Cf::Raft,
            records::state_key(self.group, tag).to_vec(),
            records::encode(what, value)?,
        );
        Ok(batch)
    }

    /// Write `batch` through the committer and wait until it is applied,
    /// and synced when `durable`.
    async fn write(&self, batch: Batch, durable: bool) -> Result<(), ClusterError> {
        write(&self.store, batch, durable).await
    }

    /// The keys of the group's entries from `from` on (inclusive), up to
    /// `to` (inclusive) when given.
    fn keys_between(&self, from: u64, to: Option<u64>) -> Result<Vec<Vec<u8>>, ClusterError> {
        let mut keys = Vec::new();
        self.store.scan_from(
            Cf::RaftLog,
            &records::group_prefix(self.group),
            &records::log_key(self.group, from),
            &mut |key, _| {
                let within = match (records::log_index(key), to) {
                    (Some(index), Some(to)) => index <= to,
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                if within {
                    keys.push(key.to_vec());
                }
                within
            },
        )?;
        Ok(keys)
    }

    /// The group's entries whose index lies in `range`, in index order.
    fn entries<RB: RangeBounds<u64>>(
        &self,
        range: &RB,
    ) -> Result<Vec<Entry<TypeConfig>>, ClusterError> {
        let from = match range.start_bound() {
            Bound::Included(n) => *n,
            Bound::Excluded(n) => n.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut entries = Vec::new();
        let mut failed = None;
        self.store.scan_from(
            Cf::RaftLog,
            &records::group_prefix(self.group),
            &records::log_key(self.group, from),
            &mut |key, value| {
                match records::log_index(key) {
                    Some(index) if range.contains(&index) => {}
                    _ => return false,
                }
                match records::decode("log entry", value) {
                    Ok(entry) => {
                        entries.push(entry);
                        true
                    }
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                }
            },
        )?;
        match failed {
            Some(e) => Err(e),
            None => Ok(entries),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        self.entries(&range)
            .map_err(|e| e.storage(ErrorSubject::Logs, ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let read = || -> Result<LogState<TypeConfig>, ClusterError> {
            let last_purged_log_id: Option<LogId<NodeId>> =
                self.read_state(PURGED, "purged log id")?;
            let last = match self
                .store
                .last_under(Cf::RaftLog, &records::group_prefix(self.group))?
            {
                Some((_, value)) => {
                    let entry: Entry<TypeConfig> = records::decode("log entry", &value)?;
                    Some(entry.log_id)
                }
                None => None,
            };
            Ok(LogState {
                last_log_id: last.or(last_purged_log_id),
                last_purged_log_id,
            })
        };
        read().map_err(|e| e.storage(ErrorSubject::Logs, ErrorVerb::Read))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        // Durable before it returns: a node must never vote twice in a term,
        // even across a power cut.
        let write = async {
            self.write(self.state_batch(VOTE, "vote", vote)?, true)
                .await
        };
        write
            .await
            .map_err(|e| e.storage(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.read_state(VOTE, "vote")
            .map_err(|e| e.storage(ErrorSubject::Vote, ErrorVerb::Read))
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Advisory (a restarted node re-applies up to it at once instead of
        // waiting for the leader), so it rides on the next sync.
        let write = async {
            let batch = self.state_batch(COMMITTED, "committed log id", &committed)?;
            self.write(batch, false).await
        };
        write
            .await
            .map_err(|e| e.storage(ErrorSubject::Store, ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        self.read_state::<Option<LogId<NodeId>>>(COMMITTED, "committed log id")
            .map(Option::flatten)
            .map_err(|e| e.storage(ErrorSubject::Store, ErrorVerb::Read))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let write = async {
            let mut batch = Batch::new();
            for entry in entries {
                batch.put(
                    Cf::RaftLog,
                    records::log_key(self.group, entry.log_id.index).to_vec(),
                    records::encode("log entry", &entry)?,
                );
            }
            self.write(batch, true).await
        };
        // Answered once the entries are synced: a follower acknowledges, and
        // a leader counts itself, only for what is on its disk.
        match write.await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e.storage(ErrorSubject::Logs, ErrorVerb::Write))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let removed = async {
            let mut batch = Batch::new();
            for key in self.keys_between(log_id.index, None)? {
                batch.delete(Cf::RaftLog, key);
            }
            self.write(batch, true).await
        };
        removed
            .await
            .map_err(|e| e.storage(ErrorSubject::Logs, ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let removed = async {
            // The purged id and the deletions in one batch: a crash leaves
            // either both or neither, never a hole below the last entry.
            let mut batch = self.state_batch(PURGED, "purged log id", &log_id)?;
            for key in self.keys_between(0, Some(log_id.index))? {
                batch.delete(Cf::RaftLog, key);
            }
            self.write(batch, false).await
        };
        removed
            .await
            .map_err(|e| e.storage(ErrorSubject::Logs, ErrorVerb::Delete))
    }
}

/// Write `batch` through the store's committer and wait until it is
/// applied, and synced when `durable`. Raft's writes do not wait for a
/// slot of the committer's bounded queue, where publishers queue under
/// load: a vote or an append stuck behind them would miss its RPC
/// deadline and churn elections. openraft bounds their volume itself.
pub(crate) async fn write(store: &Store, batch: Batch, durable: bool) -> Result<(), ClusterError> {
    store.submit_now(batch, durable)?.await?;
    Ok(())
}
