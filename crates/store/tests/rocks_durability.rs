//! RocksDB-only guarantees: data survives close and reopen, and durable
//! writes survive the process going away without a close.

use std::path::Path;

use junction_store::{Batch, Cf, RocksEngine, Store, StoreOptions};

fn write_numbers(store: &Store, range: std::ops::Range<u64>, durable: bool) {
    let receipts: Vec<_> = range
        .map(|i| {
            let mut b = Batch::new();
            b.put(
                Cf::Messages,
                i.to_be_bytes().to_vec(),
                format!("msg-{i}").into_bytes(),
            );
            b.put(
                Cf::QueueEntries,
                [&b"q/"[..], &i.to_be_bytes()].concat(),
                i.to_be_bytes().to_vec(),
            );
            store.submit_blocking(b, durable).unwrap()
        })
        .collect();
    for r in receipts {
        r.wait_blocking().unwrap();
    }
}

fn assert_numbers(store: &Store, n: u64) {
    for i in 0..n {
        let v = store.get(Cf::Messages, &i.to_be_bytes()).unwrap();
        assert_eq!(
            v.as_deref(),
            Some(format!("msg-{i}").as_bytes()),
            "message {i}"
        );
    }
    let mut seqs = Vec::new();
    store
        .scan(Cf::QueueEntries, b"q/", &mut |_, v| {
            seqs.push(u64::from_be_bytes(v.try_into().unwrap()));
            true
        })
        .unwrap();
    assert_eq!(seqs, (0..n).collect::<Vec<_>>());
}

/// Copy every file of a directory (no subdirectories in a RocksDB dir).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn reopen_after_close_finds_all_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_rocksdb(dir.path(), StoreOptions::default()).unwrap();
    write_numbers(&store, 0..300, false);
    store.close_blocking().unwrap();
    drop(store);
    let store = Store::open_rocksdb(dir.path(), StoreOptions::default()).unwrap();
    assert_numbers(&store, 300);
    write_numbers(&store, 300..400, true);
    store.close_blocking().unwrap();
    drop(store);
    let store = Store::open_rocksdb(dir.path(), StoreOptions::default()).unwrap();
    assert_numbers(&store, 400);
}

#[test]
fn durable_data_survives_drop_without_close() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_rocksdb(dir.path(), StoreOptions::default()).unwrap();
    write_numbers(&store, 0..250, true);
    drop(store);
    let store = Store::open_rocksdb(dir.path(), StoreOptions::default()).unwrap();
    assert_numbers(&store, 250);
}

#[test]
fn durable_data_survives_a_crash_image_of_the_open_directory() {
    // Copying the files of a still-open database is what a kill -9 leaves
    // behind: synced WAL, no flushed memtables, no clean shutdown.
    let dir = tempfile::tempdir().unwrap();
    let crash = tempfile::tempdir().unwrap();
    let store = Store::open_rocksdb(dir.path(), StoreOptions::default()).unwrap();
    write_numbers(&store, 0..200, false);
    write_numbers(&store, 200..220, true);
    copy_dir(dir.path(), &crash.path().join("db"));
    let reopened = Store::open_rocksdb(&crash.path().join("db"), StoreOptions::default()).unwrap();
    assert_numbers(&reopened, 220);
    store.close_blocking().unwrap();
}

#[test]
fn open_creates_missing_directories_and_column_families() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a").join("b");
    let engine = RocksEngine::open(&nested).unwrap();
    drop(engine);
    let mut names = rocksdb::DB::list_cf(&rocksdb::Options::default(), &nested).unwrap();
    names.sort();
    let mut expected: Vec<String> = Cf::ALL.iter().map(|cf| cf.name().to_owned()).collect();
    expected.push("default".to_owned());
    expected.sort();
    assert_eq!(names, expected);
}

#[test]
fn a_second_open_of_the_same_directory_fails_while_the_first_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_rocksdb(dir.path(), StoreOptions::default()).unwrap();
    assert!(matches!(
        Store::open_rocksdb(dir.path(), StoreOptions::default()),
        Err(junction_store::StoreError::Rocks(_))
    ));
    store.close_blocking().unwrap();
}
