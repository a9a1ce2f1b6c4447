//! The vocabulary of writes: column families, single operations and the
//! atomic [`Batch`] that groups them.

use bytes::Bytes;

/// The column families of DESIGN.md "Storage".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cf {
    /// Vhosts, exchanges, queues, bindings, users, id high-water marks.
    Meta,
    /// Message id → encoded message, stored once however many queues hold it.
    Messages,
    /// Queue id ‖ seq (big-endian) → message id + delivery count.
    QueueEntries,
    /// MQTT retained messages.
    Retained,
    /// MQTT sessions.
    Sessions,
    /// Records recovery could not read, kept aside rather than deleted:
    /// key = the family's index byte ‖ the original key, value unchanged.
    Quarantine,
    /// Raft logs of every consensus group on this node: group id ‖ log
    /// index (both big-endian) → entry. One family, so one sync covers
    /// the appends of many groups.
    RaftLog,
    /// Raft groups' small state (vote, committed and purged log ids,
    /// applied state, snapshots) and the records their state machines
    /// keep: group id ‖ tag ‖ rest.
    Raft,
}

impl Cf {
    /// Every column family, in a fixed order (the order of [`Cf::index`]).
    pub const ALL: [Cf; 8] = [
        Cf::Meta,
        Cf::Messages,
        Cf::QueueEntries,
        Cf::Retained,
        Cf::Sessions,
        Cf::Quarantine,
        Cf::RaftLog,
        Cf::Raft,
    ];

    /// The column family's name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Meta => "meta",
            Cf::Messages => "messages",
            Cf::QueueEntries => "queue_entries",
            Cf::Retained => "retained",
            Cf::Sessions => "sessions",
            Cf::Quarantine => "quarantine",
            Cf::RaftLog => "raft_log",
            Cf::Raft => "raft",
        }
    }

    /// Position of this family in [`Cf::ALL`], for per-family arrays.
    pub fn index(self) -> usize {
        match self {
            Cf::Meta => 0,
            Cf::Messages => 1,
            Cf::QueueEntries => 2,
            Cf::Retained => 3,
            Cf::Sessions => 4,
            Cf::Quarantine => 5,
            Cf::RaftLog => 6,
            Cf::Raft => 7,
        }
    }
}

/// One write: put or delete. Keys and values are raw bytes; callers encode
/// them, including the version byte records start with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Set `key` to `value` in `cf`, replacing any previous value.
    Put {
        /// Family the key lives in.
        cf: Cf,
        /// Raw key bytes.
        key: Vec<u8>,
        /// Raw value bytes.
        value: Bytes,
    },
    /// Remove `key` from `cf` (no error if absent).
    Delete {
        /// Family the key lives in.
        cf: Cf,
        /// Raw key bytes.
        key: Vec<u8>,
    },
}

/// An atomic group of writes, applied all-or-nothing and in order: when two
/// operations touch the same key, the later one wins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// The operations in the order they must be applied.
    ops: Vec<Op>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append a put of `key` → `value` in `cf`.
    pub fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: impl Into<Bytes>) {
        self.ops.push(Op::Put {
            cf,
            key: key.into(),
            value: value.into(),
        });
    }

    /// Append a delete of `key` in `cf`.
    pub fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Delete {
            cf,
            key: key.into(),
        });
    }

    /// True when the batch holds no operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Number of operations in the batch.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Move all of `other`'s operations to the end of this batch.
    pub fn append(&mut self, mut other: Batch) {
        if self.ops.is_empty() {
            self.ops = other.ops;
        } else {
            self.ops.append(&mut other.ops);
        }
    }

    /// The operations, in application order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }
}

/// The smallest key greater than every key starting with `prefix`, or `None`
/// when no such key exists (empty or all-0xFF prefix).
pub(crate) fn prefix_upper_bound(prefix: &[u8]) -> Option<Vec<u8>> {
    let last = prefix.iter().rposition(|b| *b != 0xFF)?;
    let mut bound = prefix[..=last].to_vec();
    bound[last] += 1;
    Some(bound)
}

#[cfg(test)]
mod tests {
    use super::prefix_upper_bound;

    #[test]
    fn upper_bound_increments_last_non_ff_byte() {
        assert_eq!(prefix_upper_bound(b""), None);
        assert_eq!(prefix_upper_bound(&[0xFF, 0xFF]), None);
        assert_eq!(prefix_upper_bound(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_upper_bound(&[1, 0xFF]), Some(vec![2]));
    }
}
