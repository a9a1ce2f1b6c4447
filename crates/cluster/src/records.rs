//! How a group's records are keyed and encoded in the store.
//!
//! `raft_log`: group id ‖ log index, both big-endian (so a scan walks a
//! group's log in index order) → entry.
//!
//! `raft`: group id ‖ tag ‖ rest →
//! - `v`: the vote;
//! - `c`: the last committed log id (advisory; openraft re-learns it);
//! - `p`: the last purged log id;
//! - `a`: the state machine's applied state (last applied log id and
//!   membership);
//! - `s`: the current snapshot (metadata and data);
//! - `k` ‖ key: a record of the state machine's map;
//! - `i` (the metadata group's only): the cluster's id.
//!
//! Every value this crate defines starts with a version byte (DESIGN.md
//! "Storage") followed by the postcard encoding of its type; the values of
//! `k` records are the proposer's own bytes, stored as they came.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ClusterError;
use crate::types::GroupId;

/// The version byte of every value this module writes.
const VERSION: u8 = 1;

/// Tag of the vote record.
pub const VOTE: u8 = b'v';
/// Tag of the committed log id record.
pub const COMMITTED: u8 = b'c';
/// Tag of the last purged log id record.
pub const PURGED: u8 = b'p';
/// Tag of the state machine's applied state.
pub const APPLIED: u8 = b'a';
/// Tag of the current snapshot.
pub const SNAPSHOT: u8 = b's';
/// Tag of the state machine's records.
pub const RECORD: u8 = b'k';
/// Tag of the cluster's id (kept under the metadata group).
pub const CLUSTER: u8 = b'i';

/// The prefix of every key of `group` in either family.
pub fn group_prefix(group: GroupId) -> [u8; 8] {
    group.0.to_be_bytes()
}

/// The key of `group`'s log entry at `index`.
pub fn log_key(group: GroupId, index: u64) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&group.0.to_be_bytes());
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

/// The log index a `raft_log` key names (None if it is not 16 bytes).
pub fn log_index(key: &[u8]) -> Option<u64> {
    let index: [u8; 8] = key.get(8..16)?.try_into().ok()?;
    Some(u64::from_be_bytes(index))
}

/// The key of one of `group`'s state records (`tag`: [`VOTE`]...).
pub fn state_key(group: GroupId, tag: u8) -> [u8; 9] {
    let mut key = [0; 9];
    key[..8].copy_from_slice(&group.0.to_be_bytes());
    key[8] = tag;
    key
}

/// The key under which `group`'s state machine keeps `record`.
pub fn record_key(group: GroupId, record: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + record.len());
    key.extend_from_slice(&state_key(group, RECORD));
    key.extend_from_slice(record);
    key
}

/// A value: the version byte, then `value` in postcard; `what` names it
/// in the error.
pub fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, ClusterError> {
    postcard::to_extend(value, vec![VERSION]).map_err(|e| ClusterError::Record {
        what,
        reason: e.to_string(),
    })
}

/// A value written by [`encode`]; `what` names it in the error.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, ClusterError> {
    match bytes.split_first() {
        Some((&VERSION, body)) => postcard::from_bytes(body).map_err(|e| ClusterError::Record {
            what,
            reason: e.to_string(),
        }),
        Some((version, _)) => Err(ClusterError::Record {
            what,
            reason: format!("unknown version {version}"),
        }),
        None => Err(ClusterError::Record {
            what,
            reason: "empty".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_group_then_index() {
        let mut keys = [
            log_key(GroupId(2), 0),
            log_key(GroupId(1), 256),
            log_key(GroupId(1), 1),
            log_key(GroupId(1), u64::MAX),
        ];
        keys.sort();
        assert_eq!(
            keys.iter()
                .map(|k| log_index(k).unwrap())
                .collect::<Vec<_>>(),
            vec![1, 256, u64::MAX, 0]
        );
        assert!(keys[0].starts_with(&group_prefix(GroupId(1))));
        assert_eq!(log_index(b"short"), None);
    }

    #[test]
    fn a_value_round_trips_and_a_foreign_version_is_refused() {
        let bytes = encode("t", &(7u64, "x".to_owned())).unwrap();
        assert_eq!(bytes[0], VERSION);
        assert_eq!(
            decode::<(u64, String)>("t", &bytes).unwrap(),
            (7, "x".to_owned())
        );
        let mut other = bytes.clone();
        other[0] = 9;
        assert!(matches!(
            decode::<(u64, String)>("t", &other),
            Err(ClusterError::Record { reason, .. }) if reason == "unknown version 9"
        ));
        assert!(decode::<(u64, String)>("t", &[]).is_err());
        assert!(decode::<(u64, String)>("t", &bytes[..2]).is_err());
    }

    #[test]
    fn record_keys_stay_inside_their_group() {
        let key = record_key(GroupId(3), b"vhost/a");
        assert!(key.starts_with(&state_key(GroupId(3), RECORD)));
        assert_eq!(&key[9..], b"vhost/a");
    }
}
