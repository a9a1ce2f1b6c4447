//! The Raft type configuration every group of a node shares, the ids of
//! groups and nodes, and the commands a group's log carries.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// A node of the cluster, as openraft numbers it: derived from the node's
/// name by [`node_id`].
pub type NodeId = u64;

/// The Raft id of the node named `name`: the first eight bytes of the
/// name's SHA-256, so every node derives the same id from the same
/// configuration, whatever order it lists the members in.
pub fn node_id(name: &str) -> NodeId {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(name.as_bytes());
    let mut id = [0; 8];
    id.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(id)
}

/// One consensus group on a node. Group 0 is the cluster's metadata
/// group; every replicated queue has a group of its own. The id prefixes
/// every key the group keeps in the store, so groups share the store's
/// families (and its group commit) without seeing each other's records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupId(pub u64);

impl GroupId {
    /// The metadata group: membership, vhosts, users, permissions,
    /// exchanges, bindings, policies, queue placement, MQTT client ids.
    pub const META: GroupId = GroupId(0);
}

impl GroupId {
    /// The group of a replicated queue: a digest of its vhost, name, the
    /// node that declared it and the id that node gave it, so every node
    /// derives the same id, and a queue declared again under the same
    /// name gets another group. Never the metadata group's.
    pub fn of_queue(vhost: &str, name: &str, owner: &str, id: u64) -> GroupId {
        use sha2::{Digest, Sha256};
        let mut digest = Sha256::new();
        for part in [
            b"queue".as_slice(),
            vhost.as_bytes(),
            name.as_bytes(),
            owner.as_bytes(),
        ] {
            digest.update((part.len() as u64).to_be_bytes());
            digest.update(part);
        }
        digest.update(id.to_be_bytes());
        let digest = digest.finalize();
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&digest[..8]);
        GroupId(u64::from_be_bytes(bytes) | 1 << 63)
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "group-{}", self.0)
    }
}

/// A write to a group's replicated record map, as its log carries it.
/// Keys and values are the callers' own encodings (the broker's record
/// formats), so this crate never learns broker types.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set `key` to `value`.
    Put {
        /// The record's key.
        key: Vec<u8>,
        /// Its new value.
        value: Vec<u8>,
    },
    /// Remove `key` (nothing happens if it is absent).
    Delete {
        /// The record's key.
        key: Vec<u8>,
    },
    /// These commands, in order, as one entry: every member applies all
    /// of them or none (a queue's record with its bindings).
    Batch(Vec<Command>),
    /// Set `key` to `value` unless `key` holds a value already (then
    /// nothing happens): a first declaration wins over a later one.
    PutIfAbsent {
        /// The record's key.
        key: Vec<u8>,
        /// Its value, if it has none.
        value: Vec<u8>,
    },
    /// Remove `key` if it holds exactly `value` (else nothing happens):
    /// a claim is let go only by whoever made it.
    DeleteIf {
        /// The record's key.
        key: Vec<u8>,
        /// The value it must hold.
        value: Vec<u8>,
    },
}

impl Command {
    /// Bytes of keys and values it carries.
    pub fn size(&self) -> usize {
        match self {
            Command::Put { key, value }
            | Command::PutIfAbsent { key, value }
            | Command::DeleteIf { key, value } => key.len() + value.len(),
            Command::Delete { key } => key.len(),
            Command::Batch(all) => all.iter().map(Command::size).sum(),
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Put { key, value } => {
                write!(
                    f,
                    "put {} ({} bytes)",
                    String::from_utf8_lossy(key),
                    value.len()
                )
            }
            Command::Delete { key } => write!(f, "delete {}", String::from_utf8_lossy(key)),
            Command::PutIfAbsent { key, value } => write!(
                f,
                "put if absent {} ({} bytes)",
                String::from_utf8_lossy(key),
                value.len()
            ),
            Command::DeleteIf { key, value } => write!(
                f,
                "delete if equal {} ({} bytes)",
                String::from_utf8_lossy(key),
                value.len()
            ),
            Command::Batch(all) => write!(f, "batch of {}", all.len()),
        }
    }
}

/// What applying one log entry answers to whoever proposed it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The value the command's key held before it was applied (None for
    /// entries that carry no command, for batches, and for keys that were
    /// absent).
    pub previous: Option<Vec<u8>>,
    /// The log index of the entry.
    pub index: u64,
}

openraft::declare_raft_types!(
    /// The Raft types of every Junction group.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

#[cfg(test)]
mod tests {
    use super::node_id;

    #[test]
    fn a_node_id_is_a_stable_digest_of_the_name() {
        // Pinned to SHA-256's known digest of "" so ids never change
        // between versions (they are stored in every group's log).
        assert_eq!(node_id("n1"), node_id("n1"));
        assert_ne!(node_id("n1"), node_id("n2"));
        assert_eq!(format!("{:016x}", node_id("")), "e3b0c44298fc1c14");
    }
}
