//! openraft's own storage test suite, run against our log store and state
//! machine over a real RocksDB store, over the in-memory engine, and with
//! a replicated queue's volatile state machine.

use std::sync::Arc;

use junction_cluster::{GroupId, LogStore, StateMachine, TypeConfig};
use junction_store::{MemEngine, Store, StoreOptions};
use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

/// Builds a fresh store per test case; the guard keeps its directory.
struct Rocks;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Rocks {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open_rocksdb(dir.path(), StoreOptions::default()).expect("open rocksdb");
        // A group other than 0, so keys carry a non-zero prefix.
        let group = GroupId(7);
        let sm = StateMachine::open(store.clone(), group).expect("open state machine");
        Ok((dir, LogStore::new(store, group), sm))
    }
}

/// The same over the in-memory engine.
struct Memory;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, ()> for Memory {
    async fn build(&self) -> Result<((), LogStore, StateMachine), StorageError<u64>> {
        let store = Store::new(Arc::new(MemEngine::new()), StoreOptions::default());
        let sm = StateMachine::open(store.clone(), GroupId::META).expect("open state machine");
        Ok(((), LogStore::new(store, GroupId::META), sm))
    }
}

#[test]
fn openraft_storage_suite_over_rocksdb() {
    Suite::test_all(Rocks).expect("openraft storage suite");
}

#[test]
fn openraft_storage_suite_over_memory() {
    Suite::test_all(Memory).expect("openraft storage suite");
}

/// A replicated queue's state machine (records in memory only, rebuilt
/// from the last snapshot and the log) over RocksDB.
struct Volatile;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Volatile {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open_rocksdb(dir.path(), StoreOptions::default()).expect("open rocksdb");
        let group = GroupId::of_queue("/", "q", "n1", 1);
        let sm = StateMachine::open_volatile(store.clone(), group).expect("open state machine");
        Ok((dir, LogStore::new(store, group), sm))
    }
}

#[test]
fn openraft_storage_suite_over_a_volatile_state_machine() {
    Suite::test_all(Volatile).expect("openraft storage suite");
}
