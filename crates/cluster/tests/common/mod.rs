//! Members of a cluster in this process, each with its own RocksDB store
//! in a temporary directory, linked over loopback: what the cluster tests
//! and `benches/groups.rs` start from.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use junction_cluster::{MetaNode, NodeId, Timing};
use junction_store::{Store, StoreOptions};
use tokio::net::TcpListener;

/// Every member's copy of the cluster secret.
pub const SECRET: &[u8] = b"in-process-cluster-secret";

/// The members, their addresses and what keeps their stores.
pub struct Local {
    /// Each node's metadata-group member and links.
    pub nodes: BTreeMap<NodeId, MetaNode>,
    /// Every member's peer address.
    pub members: BTreeMap<NodeId, SocketAddr>,
    /// Each node's store, in id order.
    pub stores: Vec<Store>,
    /// Each node's data directory, in id order (ids 1, 2, 3...).
    pub dirs: Vec<tempfile::TempDir>,
}

impl Local {
    /// The data directory of node `id`.
    pub fn dir(&self, id: NodeId) -> &Path {
        self.dirs[usize::try_from(id - 1).expect("small id")].path()
    }
}

/// Timing for tests: elections in about a second (the heartbeat is also
/// the append deadline, so it leaves room for a loaded fsync), writes
/// waiting at most `write`.
pub fn quick_timing(write: std::time::Duration) -> Timing {
    use std::time::Duration;
    Timing {
        heartbeat: Duration::from_millis(100),
        election_min: Duration::from_millis(500),
        election_max: Duration::from_millis(1000),
        install_snapshot: Duration::from_secs(10),
        write,
    }
}

/// Start nodes 1..=`count` with `timing`.
pub async fn start(count: u64, timing: &Timing) -> Local {
    let dirs: Vec<tempfile::TempDir> = (0..count)
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect();
    let mut listeners = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=count {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        members.insert(id, listener.local_addr().expect("address"));
        listeners.push((id, listener));
    }
    let mut nodes = BTreeMap::new();
    let mut stores = Vec::new();
    for ((id, listener), dir) in listeners.into_iter().zip(&dirs) {
        let (node, store) = start_node(id, listener, &members, dir.path(), timing).await;
        stores.push(store);
        nodes.insert(id, node);
    }
    Local {
        nodes,
        members,
        stores,
        dirs,
    }
}

/// Start node `id` on `listener` with its store in `dir` (what it already
/// holds is its state).
pub async fn start_node(
    id: NodeId,
    listener: TcpListener,
    members: &BTreeMap<NodeId, SocketAddr>,
    dir: &Path,
    timing: &Timing,
) -> (MetaNode, Store) {
    start_node_with(id, listener, members, dir, timing, false).await
}

/// [`start_node`]; `join`: a node joining the running cluster whose
/// members `members` lists (it never initializes the group).
pub async fn start_node_with(
    id: NodeId,
    listener: TcpListener,
    members: &BTreeMap<NodeId, SocketAddr>,
    dir: &Path,
    timing: &Timing,
    join: bool,
) -> (MetaNode, Store) {
    let store = Store::open_rocksdb(dir, StoreOptions::default()).expect("open store");
    let secret: Arc<[u8]> = Arc::from(SECRET);
    let node = MetaNode::start(
        id,
        listener,
        members,
        secret,
        None,
        store.clone(),
        timing,
        join,
    )
    .await
    .expect("start node");
    (node, store)
}
