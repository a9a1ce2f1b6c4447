//! Codec tests: one per spec rule, named after its clause (`rules`,
//! `properties`, `framing`), round trips of every packet in every version
//! (`roundtrip`, `prop`), and a deterministic no-panic sweep (`fuzz`).
//! Every test name starts with `mqtt_` so `cargo test -- mqtt` runs them.

mod framing;
mod fuzz;
mod prop;
mod properties;
mod roundtrip;
mod rules;

use bytes::{Bytes, BytesMut};

use super::*;

pub(super) use super::samples::{sample_connect, samples};

/// A limit no test packet reaches.
pub(super) const BIG: usize = 1 << 30;

/// Every version, oldest first.
pub(super) const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

/// Encodes `p` for `v`.
pub(super) fn enc(p: &Packet, v: ProtocolVersion) -> BytesMut {
    let mut out = BytesMut::new();
    encode(p, v, &mut out).expect("encodable");
    out
}

/// Decodes one packet from `bytes`; a decoded packet must have consumed
/// every byte.
pub(super) fn dec(bytes: &[u8], v: Option<ProtocolVersion>) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let out = decode(&mut buf, v, BIG);
    if let Ok(Some(_)) = out {
        assert!(buf.is_empty(), "decode left {} bytes", buf.len());
    }
    out
}

/// The version to decode `p` with: CONNECT comes before any version.
pub(super) fn version_for(p: &Packet, v: ProtocolVersion) -> Option<ProtocolVersion> {
    match p {
        Packet::Connect(_) => None,
        _ => Some(v),
    }
}

/// Asserts that `p` survives encoding and decoding for `v`.
pub(super) fn round_trip(p: &Packet, v: ProtocolVersion) {
    let bytes = enc(p, v);
    let back = dec(&bytes, version_for(p, v));
    assert_eq!(back, Ok(Some(p.clone())), "{v}: {bytes:02x?}");
}

/// A whole packet: `first` byte, Remaining Length, `body`.
pub(super) fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    bytes::BufMut::put_u8(&mut out, first);
    wire::put_varint(&mut out, body.len());
    out.extend_from_slice(body);
    out.to_vec()
}

/// Expects a malformed-packet error.
#[track_caller]
pub(super) fn assert_malformed(r: Result<Option<Packet>, DecodeError>) {
    match r {
        Err(DecodeError::MalformedPacket(_)) => {}
        other => panic!("expected MalformedPacket, got {other:?}"),
    }
}

/// Expects a protocol error.
#[track_caller]
pub(super) fn assert_protocol_error(r: Result<Option<Packet>, DecodeError>) {
    match r {
        Err(DecodeError::ProtocolError(_)) => {}
        other => panic!("expected ProtocolError, got {other:?}"),
    }
}
