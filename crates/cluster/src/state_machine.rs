//! [`StateMachine`]: the replicated record map a group applies its log
//! to, kept in memory for reads and in the store's `raft` family for
//! restarts, and its snapshots.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use junction_store::{Batch, Cf, CommitReceipt, Store};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StoredMembership,
};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::ClusterError;
use crate::records::{self, APPLIED, RECORD, SNAPSHOT};
use crate::types::{Command, GroupId, NodeId, Response, TypeConfig};

/// Openraft's storage error, as every method here returns it.
type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// The membership type of our configuration.
type Membership = StoredMembership<NodeId, openraft::BasicNode>;

/// Where the state machine stands: the last entry applied and the last
/// membership among them (the `a` record).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct AppliedState {
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
}

/// A snapshot's data: the applied state and every record.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    applied: AppliedState,
    records: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The stored current snapshot (the `s` record).
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    data: Vec<u8>,
}

/// What the state machine holds in memory.
#[derive(Debug, Default)]
struct Inner {
    applied: AppliedState,
    records: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// A change to the records, as the state machine applied it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// `key` was set to `value`.
    Put {
        /// The record's key.
        key: Vec<u8>,
        /// Its new value.
        value: Vec<u8>,
    },
    /// `key` was removed (it may have been absent).
    Delete {
        /// The record's key.
        key: Vec<u8>,
    },
    /// A snapshot replaced every record; these are all of them now.
    Reset(Vec<(Vec<u8>, Vec<u8>)>),
}

/// Told of every change, in log order, once the store has it. Called on
/// openraft's state machine task after each applied batch: it must be
/// quick. It may read the state machine, which by then holds the whole
/// batch (a change's key may already have a later value).
pub type Observer = Arc<dyn Fn(&Change) + Send + Sync>;

/// The state machine of one group. Cheap to clone: clones share the
/// state, so the snapshot builder and readers see what was applied.
#[derive(Clone)]
pub struct StateMachine {
    /// The node's store.
    store: Store,
    /// Records kept in memory only: the store holds the log and the
    /// snapshots, and a restart rebuilds the records from the last
    /// snapshot and the log after it (see [`StateMachine::open_volatile`]).
    volatile: bool,
    /// Whose state this is.
    group: GroupId,
    /// The applied state and the records, read by the broker.
    inner: Arc<RwLock<Inner>>,
    /// Snapshots built so far, for unique snapshot ids.
    built: Arc<AtomicU64>,
    /// Told of each change (the broker applying records to its topology).
    observer: Arc<RwLock<Option<Observer>>>,
    /// Held while the observer is told anything, so that what it hears is
    /// in log order (its first reset included).
    telling: Arc<Mutex<()>>,
    /// The index of the last entry applied and told, for writers waiting
    /// to read their own writes here.
    applied_index: Arc<watch::Sender<u64>>,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("group", &self.group)
            .field("last_applied", &self.last_applied())
            .finish()
    }
}

impl StateMachine {
    /// Tell `observer` of every record there is now, as a reset, then of
    /// every change applied from now on, in log order.
    pub fn observe(&self, observer: Observer) {
        let _telling = self.telling.lock();
        let all = {
            let inner = self.inner.read();
            *self.observer.write() = Some(Arc::clone(&observer));
            inner
                .records
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        observer(&Change::Reset(all));
    }

    /// Hand `changes` to the observer, if there is one.
    fn tell(&self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        let _telling = self.telling.lock();
        let observer = self.observer.read().clone();
        if let Some(observer) = observer {
            for change in changes {
                observer(change);
            }
        }
    }

    /// Run `f` while no change is told to the observer (it may read the
    /// records: none changes under it from the observer's point of view).
    /// `f` must not wait for an apply.
    pub fn while_quiet<R>(&self, f: impl FnOnce() -> R) -> R {
        let _telling = self.telling.lock();
        f()
    }

    /// Entries up to `last` are applied and told.
    fn mark_applied(&self, last: Option<LogId<NodeId>>) {
        let index = last.map_or(0, |l| l.index);
        self.applied_index.send_if_modified(|current| {
            let newer = index > *current;
            if newer {
                *current = index;
            }
            newer
        });
    }

    /// Wait until the entry at `index` is applied here and its changes
    /// told, up to `within`; false when that did not happen in time.
    pub async fn wait_applied(&self, index: u64, within: Duration) -> bool {
        let mut seen = self.applied_index.subscribe();
        tokio::time::timeout(within, seen.wait_for(|applied| *applied >= index))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Apply one command to `records`, adding its store writes to `batch`
    /// and, when some observer listens, its changes to `changes`; answer
    /// the key's previous value (None for a batch).
    fn apply_command(
        &self,
        records: &mut BTreeMap<Vec<u8>, Vec<u8>>,
        batch: &mut Batch,
        mut changes: Option<&mut Vec<Change>>,
        command: Command,
    ) -> Option<Vec<u8>> {
        match command {
            Command::Put { key, value } => {
                if !self.volatile {
                    batch.put(
                        Cf::Raft,
                        records::record_key(self.group, &key),
                        value.clone(),
                    );
                }
                if let Some(changes) = changes {
                    changes.push(Change::Put {
                        key: key.clone(),
                        value: value.clone(),
                    });
                }
                records.insert(key, value)
            }
            Command::Delete { key } => {
                if !self.volatile {
                    batch.delete(Cf::Raft, records::record_key(self.group, &key));
                }
                if let Some(changes) = changes {
                    changes.push(Change::Delete { key: key.clone() });
                }
                records.remove(&key)
            }
            Command::PutIfAbsent { key, value } => match records.get(&key) {
                Some(current) => Some(current.clone()),
                None => self.apply_command(records, batch, changes, Command::Put { key, value }),
            },
            Command::DeleteIf { key, value } => match records.get(&key) {
                Some(current) if *current == value => {
                    self.apply_command(records, batch, changes, Command::Delete { key })
                }
                current => current.cloned(),
            },
            Command::Batch(all) => {
                for command in all {
                    self.apply_command(records, batch, changes.as_deref_mut(), command);
                }
                None
            }
        }
    }

    /// The state machine of `group`, loaded from what `store` holds.
    pub fn open(store: Store, group: GroupId) -> Result<Self, ClusterError> {
        let applied = match store.get(Cf::Raft, &records::state_key(group, APPLIED))? {
            Some(bytes) => records::decode("applied state", &bytes)?,
            None => AppliedState::default(),
        };
        let mut records = BTreeMap::new();
        let prefix = records::state_key(group, RECORD);
        store.scan(Cf::Raft, &prefix, &mut |key, value| {
            records.insert(key[prefix.len()..].to_vec(), value.to_vec());
            true
        })?;
        let index = applied.last_applied.map_or(0, |l| l.index);
        Ok(Self {
            store,
            group,
            volatile: false,
            inner: Arc::new(RwLock::new(Inner { applied, records })),
            built: Arc::new(AtomicU64::new(0)),
            observer: Arc::new(RwLock::new(None)),
            telling: Arc::new(Mutex::new(())),
            applied_index: Arc::new(watch::Sender::new(index)),
        })
    }

    /// The state machine of `group` that writes nothing to the store as it
    /// applies: its records and applied state are in memory, rebuilt at
    /// start from the last snapshot (openraft applies the log after it
    /// again). For groups whose every entry carries bulk (a replicated
    /// queue's messages): each is written once, in the log, not again as a
    /// record.
    pub fn open_volatile(store: Store, group: GroupId) -> Result<Self, ClusterError> {
        let mut sm = Self::open(store, group)?;
        sm.volatile = true;
        let (applied, records) = match sm.stored_snapshot()? {
            Some(stored) => {
                let data: SnapshotData = records::decode("snapshot data", &stored.data)?;
                (
                    AppliedState {
                        last_applied: stored.meta.last_log_id,
                        membership: stored.meta.last_membership,
                    },
                    data.records.into_iter().collect(),
                )
            }
            None => (AppliedState::default(), BTreeMap::new()),
        };
        let index = applied.last_applied.map_or(0, |l| l.index);
        *sm.inner.write() = Inner { applied, records };
        sm.applied_index = Arc::new(watch::Sender::new(index));
        Ok(sm)
    }

    /// The value of `key`, as of the last entry applied here.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.read().records.get(key).cloned()
    }

    /// Every record whose key starts with `prefix`, in key order.
    pub fn scan(&self, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.inner
            .read()
            .records
            .range(prefix.to_vec()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect()
    }

    /// The last log id applied here.
    pub fn last_applied(&self) -> Option<LogId<NodeId>> {
        self.inner.read().applied.last_applied
    }

    /// Hand `batch` to the committer now, so that batches reach it in the
    /// order the caller made its changes (call it under the state lock),
    /// and return the receipt to await once the lock is released.
    fn submit(&self, batch: Batch, durable: bool) -> Result<CommitReceipt, ClusterError> {
        Ok(self.store.submit_now(batch, durable)?)
    }

    /// The stored current snapshot, if one was built or installed.
    fn stored_snapshot(&self) -> Result<Option<StoredSnapshot>, ClusterError> {
        match self
            .store
            .get(Cf::Raft, &records::state_key(self.group, SNAPSHOT))?
        {
            Some(bytes) => records::decode("snapshot", &bytes).map(Some),
            None => Ok(None),
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let subject = ErrorSubject::Snapshot(None);
        let built = self.built.fetch_add(1, Ordering::Relaxed) + 1;
        let (meta, data, receipt) = {
            // A read lock: applies wait while the map is encoded, readers do
            // not. The snapshot is submitted under it, so it reaches the
            // store after every apply it contains and before any install
            // that comes later, and never overwrites a newer snapshot.
            let inner = self.inner.read();
            let applied = inner.applied.clone();
            let snapshot_id = match applied.last_applied {
                Some(id) => format!("{}-{}-{built}", id.leader_id.term, id.index),
                None => format!("none-{built}"),
            };
            let data = records::encode(
                "snapshot data",
                &SnapshotData {
                    applied: applied.clone(),
                    records: inner
                        .records
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                },
            )
            .map_err(|e| e.storage(subject.clone(), ErrorVerb::Write))?;
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership,
                snapshot_id,
            };
            let stored = StoredSnapshot {
                meta: meta.clone(),
                data: data.clone(),
            };
            let mut batch = Batch::new();
            let write = records::encode("snapshot", &stored).and_then(|value| {
                batch.put(
                    Cf::Raft,
                    records::state_key(self.group, SNAPSHOT).to_vec(),
                    value,
                );
                // Synced: once openraft has a snapshot it may purge the log
                // below it, and a purged entry must be covered on disk.
                self.submit(batch, true)
            });
            (meta, data, write)
        };
        let wait = async { Ok::<(), ClusterError>(receipt?.await?) };
        wait.await
            .map_err(|e| e.storage(subject, ErrorVerb::Write))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<NodeId>>, Membership)> {
        let inner = self.inner.read();
        Ok((inner.applied.last_applied, inner.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = Batch::new();
        let mut responses = Vec::new();
        let mut changes = Vec::new();
        let (receipt, last) = {
            let mut inner = self.inner.write();
            // Read under the records' lock: an observer set after this
            // batch's changes is given them in its first reset instead.
            let observed = self.observer.read().is_some();
            for entry in entries {
                inner.applied.last_applied = Some(entry.log_id);
                let previous = match entry.payload {
                    EntryPayload::Blank => None,
                    EntryPayload::Membership(membership) => {
                        inner.applied.membership =
                            StoredMembership::new(Some(entry.log_id), membership);
                        None
                    }
                    EntryPayload::Normal(command) => self.apply_command(
                        &mut inner.records,
                        &mut batch,
                        observed.then_some(&mut changes),
                        command,
                    ),
                };
                responses.push(Response {
                    previous,
                    index: entry.log_id.index,
                });
            }
            // Not synced: the entries are already on disk in the log, and a
            // restart re-applies whatever the store lost past the last sync.
            // Submitted under the lock, in the order of the changes. A
            // volatile machine writes nothing (see `open_volatile`).
            if self.volatile {
                (Ok(None), inner.applied.last_applied)
            } else {
                let receipt = records::encode("applied state", &inner.applied).and_then(|value| {
                    batch.put(
                        Cf::Raft,
                        records::state_key(self.group, APPLIED).to_vec(),
                        value,
                    );
                    self.submit(batch, false)
                });
                (receipt.map(Some), inner.applied.last_applied)
            }
        };
        let wait = async {
            if let Some(receipt) = receipt? {
                receipt.await?;
            }
            Ok::<(), ClusterError>(())
        };
        wait.await
            .map_err(|e| e.storage(ErrorSubject::StateMachine, ErrorVerb::Write))?;
        self.tell(&changes);
        self.mark_applied(last);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let decoded: SnapshotData = records::decode("snapshot data", &data)
            .map_err(|e| e.storage(subject.clone(), ErrorVerb::Read))?;
        let applied = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let receipt = {
            // Under the write lock: the old records go (the in-memory map
            // names every one the store holds), the snapshot's come, and
            // the batch reaches the store in order with applies and builds.
            let mut inner = self.inner.write();
            let mut batch = Batch::new();
            let receipt = if self.volatile {
                // Only the snapshot: the records are rebuilt from it.
                records::encode("snapshot", &stored)
            } else {
                for key in inner.records.keys() {
                    batch.delete(Cf::Raft, records::record_key(self.group, key));
                }
                for (key, value) in &decoded.records {
                    batch.put(
                        Cf::Raft,
                        records::record_key(self.group, key),
                        value.clone(),
                    );
                }
                records::encode("applied state", &applied).and_then(|value| {
                    batch.put(
                        Cf::Raft,
                        records::state_key(self.group, APPLIED).to_vec(),
                        value,
                    );
                    records::encode("snapshot", &stored)
                })
            };
            let receipt = receipt.and_then(|value| {
                batch.put(
                    Cf::Raft,
                    records::state_key(self.group, SNAPSHOT).to_vec(),
                    value,
                );
                self.submit(batch, true)
            });
            if receipt.is_ok() {
                inner.applied = applied;
                inner.records = decoded.records.into_iter().collect();
            }
            receipt
        };
        let wait = async { Ok::<(), ClusterError>(receipt?.await?) };
        wait.await
            .map_err(|e| e.storage(subject, ErrorVerb::Write))?;
        let all = self.scan(b"");
        self.tell(&[Change::Reset(all)]);
        self.mark_applied(meta.last_log_id);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let stored = self
            .stored_snapshot()
            .map_err(|e| e.storage(ErrorSubject::Snapshot(None), ErrorVerb::Read))?;
        Ok(stored.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use junction_store::Store;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder};
    use parking_lot::Mutex;

    use super::*;

    fn entry(index: u64, command: Command) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(command),
        }
    }

    #[tokio::test]
    async fn a_put_if_absent_leaves_a_present_key_alone_and_tells_nothing() {
        let mut sm = StateMachine::open(Store::in_memory(), GroupId(4)).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        sm.observe(Arc::new(move |change: &Change| {
            sink.lock().push(change.clone())
        }));
        let first = |v: &str| Command::PutIfAbsent {
            key: b"q".to_vec(),
            value: v.into(),
        };
        let answers = sm
            .apply([entry(1, first("one")), entry(2, first("two"))])
            .await
            .unwrap();
        assert_eq!(answers[0].previous, None);
        assert_eq!(answers[1].previous, Some(b"one".to_vec()));
        assert_eq!(sm.get(b"q"), Some(b"one".to_vec()));
        assert_eq!(
            *seen.lock(),
            vec![
                Change::Reset(Vec::new()),
                Change::Put {
                    key: b"q".to_vec(),
                    value: b"one".to_vec()
                }
            ]
        );
        // After a delete, the next one is first again.
        sm.apply([
            entry(3, Command::Delete { key: b"q".to_vec() }),
            entry(4, first("three")),
        ])
        .await
        .unwrap();
        assert_eq!(sm.get(b"q"), Some(b"three".to_vec()));
    }

    #[tokio::test]
    async fn a_delete_if_removes_only_the_value_it_names() {
        let mut sm = StateMachine::open(Store::in_memory(), GroupId(5)).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        sm.observe(Arc::new(move |change: &Change| {
            sink.lock().push(change.clone())
        }));
        let put = |v: &str| Command::Put {
            key: b"c".to_vec(),
            value: v.into(),
        };
        let delete_if = |v: &str| Command::DeleteIf {
            key: b"c".to_vec(),
            value: v.into(),
        };
        let answers = sm
            .apply([
                entry(1, put("a:1")),
                entry(2, put("b:2")),
                // The first claim's holder lets go after the second took it.
                entry(3, delete_if("a:1")),
            ])
            .await
            .unwrap();
        assert_eq!(answers[2].previous, Some(b"b:2".to_vec()));
        assert_eq!(sm.get(b"c"), Some(b"b:2".to_vec()));
        let answers = sm.apply([entry(4, delete_if("b:2"))]).await.unwrap();
        assert_eq!(answers[0].previous, Some(b"b:2".to_vec()));
        assert_eq!(sm.get(b"c"), None);
        // Absent: nothing to remove, nothing told.
        sm.apply([entry(5, delete_if("b:2"))]).await.unwrap();
        assert_eq!(
            *seen.lock(),
            vec![
                Change::Reset(Vec::new()),
                Change::Put {
                    key: b"c".to_vec(),
                    value: b"a:1".to_vec()
                },
                Change::Put {
                    key: b"c".to_vec(),
                    value: b"b:2".to_vec()
                },
                Change::Delete { key: b"c".to_vec() },
            ]
        );
    }

    #[tokio::test]
    async fn the_observer_hears_each_change_in_order_and_a_snapshot_as_a_reset() {
        let mut sm = StateMachine::open(Store::in_memory(), GroupId(3)).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let reader = sm.clone();
        let applied_when_told = Arc::new(Mutex::new(Vec::new()));
        let applied = Arc::clone(&applied_when_told);
        sm.observe(Arc::new(move |change: &Change| {
            // An observer may read the state machine: it holds the whole
            // batch the change came in by then.
            applied.lock().push(reader.last_applied().map(|l| l.index));
            sink.lock().push(change.clone());
        }));
        let put = |k: &str, v: &str| Command::Put {
            key: k.into(),
            value: v.into(),
        };
        let answers = sm
            .apply([
                entry(1, put("a", "1")),
                entry(2, put("b", "2")),
                entry(3, Command::Delete { key: b"a".to_vec() }),
                entry(4, put("b", "3")),
            ])
            .await
            .unwrap();
        assert_eq!(
            answers
                .iter()
                .map(|a| a.previous.clone())
                .collect::<Vec<_>>(),
            vec![None, None, Some(b"1".to_vec()), Some(b"2".to_vec())]
        );
        // The first reset (nothing applied yet), then the batch's changes.
        assert_eq!(
            *applied_when_told.lock(),
            vec![None, Some(4), Some(4), Some(4), Some(4)]
        );
        let snapshot = sm.build_snapshot().await.unwrap();
        assert_eq!(
            *seen.lock(),
            vec![
                Change::Reset(Vec::new()),
                Change::Put {
                    key: b"a".to_vec(),
                    value: b"1".to_vec()
                },
                Change::Put {
                    key: b"b".to_vec(),
                    value: b"2".to_vec()
                },
                Change::Delete { key: b"a".to_vec() },
                Change::Put {
                    key: b"b".to_vec(),
                    value: b"3".to_vec()
                },
            ]
        );

        // Another member installs the snapshot over records of its own.
        let mut other = StateMachine::open(Store::in_memory(), GroupId(3)).unwrap();
        other.apply([entry(1, put("z", "9"))]).await.unwrap();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&heard);
        other.observe(Arc::new(move |change: &Change| {
            sink.lock().push(change.clone())
        }));
        other
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert_eq!(
            *heard.lock(),
            vec![
                Change::Reset(vec![(b"z".to_vec(), b"9".to_vec())]),
                Change::Reset(vec![(b"b".to_vec(), b"3".to_vec())])
            ]
        );
        assert!(other.wait_applied(4, Duration::ZERO).await);
        assert!(!other.wait_applied(5, Duration::from_millis(10)).await);
        assert_eq!(other.get(b"z"), None);
        assert_eq!(other.last_applied().map(|l| l.index), Some(4));
    }
}
