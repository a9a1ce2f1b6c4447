//! Helpers shared by the fuzz targets in `fuzz_targets/`: which record
//! decoder an input goes to ([`Kind`]), and the checks every decoded
//! record must pass ([`check`]).
//!
//! The decoders read what the broker wrote to its store (DESIGN.md
//! "Storage"); a corrupt or foreign record must come back as
//! `CoreError::Corrupt`, never as a panic, and whatever decodes must
//! encode to bytes that decode to the same value.

use std::fmt::Debug;

use junction_core::codec::{Reader, Writer, decode_message, encode_message};
use junction_core::error::CoreError;
use junction_core::records::{
    decode_binding, decode_entry, decode_exchange, decode_queue, decode_retained_key,
    encode_binding, encode_entry, encode_exchange, encode_queue, entry_key, retained_key,
    split_entry_key,
};

/// The store records `decode_record` feeds its input to, picked by the
/// input's first byte ([`Kind::from_byte`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A `meta` exchange record.
    Exchange,
    /// A `meta` queue record.
    Queue,
    /// A `meta` binding record (also the tail of its key).
    Binding,
    /// A `queue_entries` value: message id and expiry.
    Entry,
    /// A `queue_entries` key: queue id then arrival number.
    EntryKey,
    /// A `retained` key: the vhost, then the routing key.
    RetainedKey,
    /// One field value alone, as tables and arrays hold them.
    Value,
    /// One field table alone, as headers and arguments are stored.
    Table,
}

impl Kind {
    /// Every kind, in the order of their bytes.
    pub const ALL: [Kind; 8] = [
        Kind::Exchange,
        Kind::Queue,
        Kind::Binding,
        Kind::Entry,
        Kind::EntryKey,
        Kind::RetainedKey,
        Kind::Value,
        Kind::Table,
    ];

    /// The kind an input's first byte picks (`byte % 8`).
    pub fn from_byte(byte: u8) -> Kind {
        Kind::ALL[usize::from(byte) % Kind::ALL.len()]
    }

    /// The first byte that picks this kind.
    pub fn byte(self) -> u8 {
        Kind::ALL
            .iter()
            .position(|k| *k == self)
            .and_then(|i| u8::try_from(i).ok())
            .expect("every kind is in ALL")
    }
}

/// `a` and `b` are equal, or print the same: a NaN in a table (`f`, `d`)
/// is not equal to itself, but decodes and encodes to the same bits. The
/// byte comparison next to every use catches what printing would hide.
pub fn same<T: PartialEq + Debug>(a: &T, b: &T) -> bool {
    a == b || format!("{a:?}") == format!("{b:?}")
}

/// Checks that `decoded` encodes to bytes that decode to the same value,
/// and that those bytes are stable: encoding that value again gives them
/// back. (The input itself need not come back: decoding ignores trailing
/// bytes and reads any non-zero byte as `true` or as "present".)
pub fn assert_round_trip<T, B>(
    what: &str,
    decoded: &T,
    encode: impl Fn(&T) -> B,
    decode: impl Fn(&[u8]) -> Result<T, CoreError>,
) where
    T: PartialEq + Debug,
    B: AsRef<[u8]>,
{
    let bytes = encode(decoded);
    let bytes = bytes.as_ref();
    let again = match decode(bytes) {
        Ok(again) => again,
        Err(e) => panic!("re-encoded {what} does not decode: {e}\n{decoded:?}\n{bytes:02x?}"),
    };
    assert!(
        same(&again, decoded),
        "{what} round trip changed the value\n  was: {decoded:?}\n  now: {again:?}"
    );
    assert_eq!(
        encode(&again).as_ref(),
        bytes,
        "{what} encoding is not stable: {decoded:?}"
    );
}

/// Decodes `data` as a message record; what decodes must round-trip.
pub fn check_message(data: &[u8]) {
    if let Ok(m) = decode_message(data) {
        assert_round_trip("message", &m, encode_message, decode_message);
    }
}

/// Decodes `data` as a record of `kind`; what decodes must round-trip.
/// Keys and queue entries have one encoding for each value, so there the
/// input itself must come back.
pub fn check(kind: Kind, data: &[u8]) {
    match kind {
        Kind::Exchange => {
            if let Ok(x) = decode_exchange(data) {
                assert_round_trip(
                    "exchange",
                    &x,
                    |(v, d)| encode_exchange(v, d),
                    decode_exchange,
                );
            }
        }
        Kind::Queue => {
            if let Ok(q) = decode_queue(data) {
                assert_round_trip(
                    "queue",
                    &q,
                    |(v, id, d)| encode_queue(v, *id, d),
                    decode_queue,
                );
            }
        }
        Kind::Binding => {
            if let Ok(b) = decode_binding(data) {
                assert_round_trip("binding", &b, |(v, b)| encode_binding(v, b), decode_binding);
            }
        }
        Kind::Entry => {
            if let Ok((message, expires)) = decode_entry(data) {
                // Version byte and two u64s; what follows is ignored.
                assert_eq!(
                    &encode_entry(message, expires)[..],
                    &data[..17],
                    "queue entry"
                );
            }
        }
        Kind::EntryKey => {
            if let Ok((queue, seq)) = split_entry_key(data) {
                assert_eq!(entry_key(queue, seq), data, "queue entry key");
            }
        }
        Kind::RetainedKey => {
            if let Ok(vhost) = decode_retained_key(data) {
                // The length-prefixed vhost is the key's head; the rest is
                // the routing key, which the message holds too.
                let head = retained_key(&vhost, "");
                assert_eq!(&data[..head.len()], &head[..], "retained key");
                let key = retained_key(&vhost, "a/b");
                assert_eq!(
                    decode_retained_key(&key).ok().as_ref(),
                    Some(&vhost),
                    "retained key"
                );
            }
        }
        Kind::Value => {
            if let Ok(v) = Reader::new(data).value() {
                assert_round_trip(
                    "field value",
                    &v,
                    |v| {
                        let mut w = Writer::new();
                        w.value(v);
                        w.finish()
                    },
                    |b| Reader::new(b).value(),
                );
            }
        }
        Kind::Table => {
            if let Ok(t) = Reader::new(data).table() {
                assert_round_trip(
                    "field table",
                    &t,
                    |t| {
                        let mut w = Writer::new();
                        w.table(t);
                        w.finish()
                    },
                    |b| Reader::new(b).table(),
                );
            }
        }
    }
}
