//! Store keys and records for the broker's durable state: topology in the
//! `meta` column family, messages by id, and queue entries keyed by queue id
//! then arrival number (both big-endian, so a scan yields queue order).

use bytes::Bytes;

use crate::codec::{Reader, Writer};
use crate::error::CoreError;
use crate::exchange::{Binding, Destination, ExchangeDef, ExchangeKind};
use crate::ids::{MessageId, QueueId};
use crate::queue::args::QueueDef;

/// First byte of a `meta` key: what kind of record follows.
pub const TAG_EXCHANGE: u8 = b'x';
pub const TAG_QUEUE: u8 = b'q';
pub const TAG_BINDING: u8 = b'b';
pub const TAG_VHOST: u8 = b'v';
/// A protocol client id's claim in a cluster (`broker/clients.rs`): kept
/// by the metadata group only, never in the `meta` family.
pub const TAG_CLIENT: u8 = b'c';
/// A route to another node's node-local queues (`broker/routes.rs`): kept
/// by the metadata group only.
pub const TAG_ROUTE: u8 = b'r';

fn lp(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

pub fn exchange_key(vhost: &str, name: &str) -> Vec<u8> {
    let mut k = vec![TAG_EXCHANGE];
    lp(&mut k, vhost.as_bytes());
    lp(&mut k, name.as_bytes());
    k
}

pub fn client_key(vhost: &str, client_id: &str) -> Vec<u8> {
    let mut k = vec![TAG_CLIENT];
    lp(&mut k, vhost.as_bytes());
    lp(&mut k, client_id.as_bytes());
    k
}

/// The prefix of the routes node `node` publishes in `vhost`.
pub fn route_prefix(vhost: &str, node: &str) -> Vec<u8> {
    let mut k = vec![TAG_ROUTE];
    lp(&mut k, vhost.as_bytes());
    lp(&mut k, node.as_bytes());
    k
}

/// A route of node `node`: its stand-in binding's record after the prefix.
pub fn route_key(vhost: &str, node: &str, b: &Binding) -> Vec<u8> {
    let mut k = route_prefix(vhost, node);
    k.extend_from_slice(&encode_binding(vhost, b));
    k
}

/// The vhost, node and stand-in binding of a [`route_key`].
pub fn decode_route_key(key: &[u8]) -> Result<(String, String, Binding), CoreError> {
    let (vhost, at) = key_part(key, 1)?;
    let (node, at) = key_part(key, at)?;
    let (_, b) = decode_binding(&key[at..])?;
    Ok((vhost, node, b))
}

pub fn vhost_key(vhost: &str) -> Vec<u8> {
    let mut k = vec![TAG_VHOST];
    lp(&mut k, vhost.as_bytes());
    k
}

/// The prefix of every `tag` record (exchange, queue, binding) in `vhost`.
pub fn vhost_prefix(tag: u8, vhost: &str) -> Vec<u8> {
    let mut k = vec![tag];
    lp(&mut k, vhost.as_bytes());
    k
}

/// The prefix of `vhost`'s retained messages.
pub fn retained_prefix(vhost: &str) -> Vec<u8> {
    let mut k = Vec::new();
    lp(&mut k, vhost.as_bytes());
    k
}

pub fn encode_vhost(name: &str, info: &super::VhostInfo) -> Bytes {
    let mut w = Writer::record();
    w.str(name);
    w.str(&info.description);
    w.u32(info.tags.len() as u32);
    for t in &info.tags {
        w.str(t);
    }
    w.opt_str(info.default_queue_type.as_deref());
    w.finish()
}

pub fn decode_vhost(data: &[u8]) -> Result<(String, super::VhostInfo), CoreError> {
    let mut r = Reader::record(data)?;
    let name = r.string()?;
    let description = r.string()?;
    let n = r.u32()?;
    let mut tags = Vec::new();
    for _ in 0..n {
        tags.push(r.string()?);
    }
    let default_queue_type = r.opt_string()?;
    Ok((
        name,
        super::VhostInfo {
            description,
            tags,
            default_queue_type,
            configured: false,
        },
    ))
}

pub fn queue_key(vhost: &str, name: &str) -> Vec<u8> {
    let mut k = vec![TAG_QUEUE];
    lp(&mut k, vhost.as_bytes());
    lp(&mut k, name.as_bytes());
    k
}

/// A binding's key holds all of its identity (arguments included), so two
/// bindings differing only in arguments are two records.
pub fn binding_key(vhost: &str, b: &Binding) -> Vec<u8> {
    let mut k = vec![TAG_BINDING];
    lp(&mut k, vhost.as_bytes());
    k.extend_from_slice(&encode_binding(vhost, b));
    k
}

/// A retained message's key: the vhost then the routing key.
pub fn retained_key(vhost: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::new();
    lp(&mut k, vhost.as_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

/// The vhost part of a retained key (the message itself holds the routing key).
pub fn decode_retained_key(key: &[u8]) -> Result<String, CoreError> {
    if key.len() < 4 {
        return Err(CoreError::Corrupt("retained key too short".into()));
    }
    let mut n = [0u8; 4];
    n.copy_from_slice(&key[..4]);
    let n = u32::from_be_bytes(n) as usize;
    let v = key
        .get(4..4 + n)
        .ok_or_else(|| CoreError::Corrupt("retained key truncated".into()))?;
    String::from_utf8(v.to_vec()).map_err(|_| CoreError::Corrupt("retained vhost not UTF-8".into()))
}

pub fn message_key(id: MessageId) -> [u8; 8] {
    id.0.to_be_bytes()
}

pub fn entry_key(queue: QueueId, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&queue.0.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn split_entry_key(key: &[u8]) -> Result<(QueueId, u64), CoreError> {
    if key.len() != 16 {
        return Err(CoreError::Corrupt("queue entry key is not 16 bytes".into()));
    }
    let mut q = [0u8; 8];
    let mut s = [0u8; 8];
    q.copy_from_slice(&key[..8]);
    s.copy_from_slice(&key[8..]);
    Ok((QueueId(u64::from_be_bytes(q)), u64::from_be_bytes(s)))
}

fn kind_code(k: ExchangeKind) -> u8 {
    match k {
        ExchangeKind::Direct => 0,
        ExchangeKind::Fanout => 1,
        ExchangeKind::Topic => 2,
        ExchangeKind::Headers => 3,
    }
}

fn kind_from(code: u8) -> Result<ExchangeKind, CoreError> {
    Ok(match code {
        0 => ExchangeKind::Direct,
        1 => ExchangeKind::Fanout,
        2 => ExchangeKind::Topic,
        3 => ExchangeKind::Headers,
        c => return Err(CoreError::Corrupt(format!("exchange kind {c}"))),
    })
}

pub fn encode_exchange(vhost: &str, d: &ExchangeDef) -> Bytes {
    let mut w = Writer::record();
    w.str(vhost);
    w.str(&d.name);
    w.u8(kind_code(d.kind));
    w.bool(d.durable);
    w.bool(d.auto_delete);
    w.bool(d.internal);
    w.table(&d.arguments);
    w.finish()
}

pub fn decode_exchange(data: &[u8]) -> Result<(String, ExchangeDef), CoreError> {
    let mut r = Reader::record(data)?;
    let vhost = r.string()?;
    let def = ExchangeDef {
        name: r.string()?,
        kind: kind_from(r.u8()?)?,
        durable: r.bool()?,
        auto_delete: r.bool()?,
        internal: r.bool()?,
        arguments: r.table()?,
    };
    Ok((vhost, def))
}

/// A queue's record; `node` is the cluster node it lives on (None outside
/// a cluster, and in records written before clusters existed).
pub fn encode_queue(vhost: &str, id: QueueId, d: &QueueDef, node: Option<&str>) -> Bytes {
    let mut w = Writer::record();
    w.str(vhost);
    w.u64(id.0);
    w.str(&d.name);
    w.bool(d.auto_delete);
    w.table(&d.arguments);
    if node.is_some() {
        w.opt_str(node);
    }
    w.finish()
}

/// A decoded queue record: vhost, id, declaration, node.
pub type QueueRecord = (String, QueueId, QueueDef, Option<String>);

pub fn decode_queue(data: &[u8]) -> Result<QueueRecord, CoreError> {
    let mut r = Reader::record(data)?;
    let vhost = r.string()?;
    let id = QueueId(r.u64()?);
    let name = r.string()?;
    let auto_delete = r.bool()?;
    let arguments = r.table()?;
    let node = if r.is_empty() { None } else { r.opt_string()? };
    Ok((
        vhost,
        id,
        QueueDef {
            name,
            durable: true,
            exclusive_owner: None,
            auto_delete,
            arguments,
        },
        node,
    ))
}

/// Reads one length-prefixed string of a key at `at`, returning it and
/// where the next part starts.
fn key_part(key: &[u8], at: usize) -> Result<(String, usize), CoreError> {
    let corrupt = || CoreError::Corrupt("meta key truncated".into());
    let len = key.get(at..at + 4).ok_or_else(corrupt)?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let end = at + 4 + len;
    let part = key.get(at + 4..end).ok_or_else(corrupt)?;
    let part = String::from_utf8(part.to_vec())
        .map_err(|_| CoreError::Corrupt("meta key part is not UTF-8".into()))?;
    Ok((part, end))
}

/// The vhost of a [`vhost_key`].
pub fn decode_vhost_key(key: &[u8]) -> Result<String, CoreError> {
    key_part(key, 1).map(|(vhost, _)| vhost)
}

/// The vhost and name of an [`exchange_key`], a [`queue_key`] or a
/// [`client_key`].
pub fn decode_name_key(key: &[u8]) -> Result<(String, String), CoreError> {
    let (vhost, at) = key_part(key, 1)?;
    let (name, _) = key_part(key, at)?;
    Ok((vhost, name))
}

/// The binding record a [`binding_key`] holds after its vhost.
pub fn binding_record_of_key(key: &[u8]) -> Result<Vec<u8>, CoreError> {
    let (_, at) = key_part(key, 1)?;
    Ok(key[at..].to_vec())
}

pub fn encode_binding(vhost: &str, b: &Binding) -> Vec<u8> {
    let mut w = Writer::record();
    w.str(vhost);
    w.str(&b.source);
    match &b.destination {
        Destination::Queue(q) => {
            w.u8(b'q');
            w.str(q);
        }
        Destination::Exchange(x) => {
            w.u8(b'x');
            w.str(x);
        }
    }
    w.str(&b.routing_key);
    w.table(&b.arguments);
    w.finish().to_vec()
}

pub fn decode_binding(data: &[u8]) -> Result<(String, Binding), CoreError> {
    let mut r = Reader::record(data)?;
    let vhost = r.string()?;
    let source = r.string()?;
    let destination = match r.u8()? {
        b'q' => Destination::Queue(r.string()?),
        b'x' => Destination::Exchange(r.string()?),
        c => return Err(CoreError::Corrupt(format!("binding destination kind {c}"))),
    };
    let routing_key = r.string()?;
    let arguments = r.table()?;
    Ok((
        vhost,
        Binding {
            source,
            destination,
            routing_key,
            arguments,
        },
    ))
}

/// A queue entry record: which message, when it expires, and what a
/// queue needs to keep the entry without its message (paging).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRecord {
    pub message: MessageId,
    /// Unix ms; 0 = never.
    pub expires_unix_ms: u64,
    /// The message's body size and priority. None in records written
    /// before paging existed: recovery then reads the message itself.
    pub index: Option<(u64, u8)>,
}

pub fn encode_entry(e: &EntryRecord) -> Bytes {
    let mut w = Writer::record();
    w.u64(e.message.0);
    w.u64(e.expires_unix_ms);
    if let Some((body_len, priority)) = e.index {
        w.u64(body_len);
        w.u8(priority);
    }
    w.finish()
}

pub fn decode_entry(data: &[u8]) -> Result<EntryRecord, CoreError> {
    let mut r = Reader::record(data)?;
    let message = MessageId(r.u64()?);
    let expires_unix_ms = r.u64()?;
    let index = if r.is_empty() {
        None
    } else {
        Some((r.u64()?, r.u8()?))
    };
    Ok(EntryRecord {
        message,
        expires_unix_ms,
        index,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::{FieldTable, FieldValue};

    #[test]
    fn topology_records_round_trip() {
        let mut args = FieldTable::new();
        args.insert("alternate-exchange", FieldValue::string("ae"));
        let x = ExchangeDef {
            name: "logs".into(),
            kind: ExchangeKind::Headers,
            durable: true,
            auto_delete: true,
            internal: true,
            arguments: args.clone(),
        };
        assert_eq!(
            decode_exchange(&encode_exchange("/v", &x)).unwrap(),
            ("/v".into(), x)
        );
        let q = QueueDef::new("q1").argument("x-max-length", FieldValue::I32(5));
        assert_eq!(
            decode_queue(&encode_queue("/", QueueId(7), &q, None)).unwrap(),
            ("/".into(), QueueId(7), q.clone(), None)
        );
        assert_eq!(
            decode_queue(&encode_queue("/", QueueId(7), &q, Some("n2"))).unwrap(),
            ("/".into(), QueueId(7), q, Some("n2".into()))
        );
        assert_eq!(
            decode_name_key(&queue_key("/v", "q1")).unwrap(),
            ("/v".into(), "q1".into())
        );
        assert_eq!(
            decode_name_key(&exchange_key("/", "x")).unwrap(),
            ("/".into(), "x".into())
        );
        assert_eq!(decode_vhost_key(&vhost_key("/v")).unwrap(), "/v");
        assert!(decode_name_key(&queue_key("/v", "q1")[..7]).is_err());
        let b = Binding {
            source: "amq.topic".into(),
            destination: Destination::Exchange("x2".into()),
            routing_key: "a.#".into(),
            arguments: args,
        };
        assert_eq!(
            decode_binding(&encode_binding("/", &b)).unwrap(),
            ("/".into(), b.clone())
        );
        assert_eq!(
            binding_record_of_key(&binding_key("/", &b)).unwrap(),
            encode_binding("/", &b)
        );
    }

    #[test]
    fn entry_records_round_trip_and_read_the_old_form() {
        let e = EntryRecord {
            message: MessageId(9),
            expires_unix_ms: 77,
            index: Some((1234, 5)),
        };
        assert_eq!(decode_entry(&encode_entry(&e)).unwrap(), e);
        let old = EntryRecord { index: None, ..e };
        assert_eq!(decode_entry(&encode_entry(&old)).unwrap(), old);
    }

    #[test]
    fn entry_keys_sort_by_queue_then_arrival() {
        let a = entry_key(QueueId(1), 255);
        let b = entry_key(QueueId(1), 256);
        let c = entry_key(QueueId(2), 1);
        assert!(a < b && b < c);
        assert_eq!(split_entry_key(&b).unwrap(), (QueueId(1), 256));
    }
}
