//! Codec tests: one per spec rule (`escaping`, `headers`, `body`,
//! `framing`, `limits`, `encoding`), property-based round trips and splits
//! (`prop`), and a deterministic no-panic sweep that stands in for the fuzz
//! targets on stable (`sweep`). Every test name starts with `stomp_` so
//! `cargo test -- stomp` runs them.

mod body;
mod encoding;
mod escaping;
mod framing;
mod headers;
mod limits;
mod prop;
mod sweep;

use bytes::BytesMut;

use super::*;

/// Limits no test frame reaches.
pub(super) const BIG: Limits = Limits {
    max_frame: 1 << 26,
    max_headers: 1 << 16,
    max_header_line: 1 << 20,
    max_body: 1 << 25,
};

/// Decodes the front of `bytes` once with `v` and `limits`.
pub(super) fn dec_with(bytes: &[u8], v: Version, limits: &Limits) -> Result<Decoded, CodecError> {
    decode(&mut BytesMut::from(bytes), v, limits)
}

/// Decodes exactly one frame from `bytes` with `v`; it must take every
/// byte.
pub(super) fn frame(bytes: &[u8], v: Version) -> Frame {
    let mut buf = BytesMut::from(bytes);
    match decode(&mut buf, v, &BIG) {
        Ok(Decoded::Frame(frame)) => {
            assert!(buf.is_empty(), "{} bytes left over", buf.len());
            frame
        }
        other => panic!("expected a frame from {bytes:?}, got {other:?}"),
    }
}

/// The error decoding the front of `bytes` gives (with `limits`).
pub(super) fn error_with(bytes: &[u8], v: Version, limits: &Limits) -> CodecError {
    match dec_with(bytes, v, limits) {
        Err(e) => e,
        other => panic!("expected an error from {bytes:?}, got {other:?}"),
    }
}

/// The kind of error decoding the front of `bytes` gives.
pub(super) fn error(bytes: &[u8], v: Version) -> ErrorKind {
    error_with(bytes, v, &BIG).kind().clone()
}

/// Encodes `frame` for `v`.
pub(super) fn enc(frame: &Frame, v: Version) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(frame, v, &mut out);
    out.to_vec()
}

pub(super) use super::samples::{End, Outcome};

/// Decodes `chunks` as a connection would, with one [`Decoder`] (see
/// [`super::samples::decode_chunks`]).
pub(super) fn feed(v: Version, limits: &Limits, chunks: &[&[u8]]) -> Outcome {
    super::samples::decode_chunks(v, limits, super::samples::Mode::Stateful, chunks)
}

/// [`feed`] with the stream whole.
pub(super) fn feed_whole(bytes: &[u8], v: Version, limits: &Limits) -> Outcome {
    feed(v, limits, &[bytes])
}

/// [`feed`] one byte at a time.
pub(super) fn feed_bytewise(bytes: &[u8], v: Version, limits: &Limits) -> Outcome {
    let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
    feed(v, limits, &chunks)
}
