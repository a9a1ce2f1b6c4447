//! Junction's cluster: consensus groups on openraft whose logs and state
//! live in the node's one RocksDB store (docs/cluster.md).
//!
//! Modules:
//!
//! - [`types`] owns the Raft type configuration ([`TypeConfig`]), the
//!   group and node ids, and the commands a group's log carries.
//! - [`records`] owns how a group's log entries and state are keyed and
//!   encoded in the store's `raft_log` and `raft` column families.
//! - [`log_store`] owns [`LogStore`], openraft's log storage for one group.
//! - [`state_machine`] owns [`StateMachine`], the replicated record map a
//!   group applies its log to, and its snapshots.
//! - [`peer`] owns [`Peers`]: one multiplexed TCP link per pair of nodes.
//! - [`network`] owns openraft's network for a group over those links.
//! - [`node`] owns [`Group`], this node's member of one group, and
//!   [`MetaNode`], the metadata group with the node's peer links.
//! - [`error`] owns [`ClusterError`].

pub mod error;
pub mod log_store;
pub mod network;
pub mod node;
pub mod peer;
pub mod records;
pub mod state_machine;
pub mod types;

pub use error::ClusterError;
pub use log_store::LogStore;
pub use node::{
    Group, GroupStatus, LeaderWatch, MemberStatus, Members, MetaNode, Timing, WriteError,
};
pub use peer::{CallError, ClusterId, MemberChange, PeerTls, Peers, Service, cluster_id};
pub use state_machine::{Change, Observer, StateMachine};
pub use types::{Command, GroupId, NodeId, Response, TypeConfig, node_id};
