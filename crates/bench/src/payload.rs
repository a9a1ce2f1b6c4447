//! The bench message body: a fixed 20-byte header that lets any consumer,
//! whatever protocol it speaks, tell who sent a message, which one it was and
//! when. Layout (all big-endian):
//!
//! ```text
//! publisher id (u32) ‖ sequence number (u64) ‖ send time (u64, ns since the Unix epoch) ‖ padding
//! ```
//!
//! Pure: no I/O, no clock (callers pass the time in).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::time::{SystemTime, UNIX_EPOCH};

/// Size of the header every bench payload starts with; also the minimum
/// payload size.
pub const HEADER_LEN: usize = 20;

/// Byte the padding after the header is filled with (printable, so a payload
/// is harmless to brokers or tools that treat bodies as text).
const PADDING: u8 = b'x';

/// The header decoded from a bench payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Which publisher sent it (run base id + publisher index).
    pub publisher: u32,
    /// The publisher's sequence number, from 0.
    pub seq: u64,
    /// Wall-clock send time, nanoseconds since the Unix epoch.
    pub sent_ns: u64,
}

/// A payload too short to hold the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("payload of {0} bytes is shorter than the {HEADER_LEN}-byte bench header")]
pub struct TooShort(pub usize);

/// Builds a payload of `size` bytes (at least [`HEADER_LEN`]; a smaller size
/// is raised to it) carrying `header`.
pub fn encode(header: Header, size: usize) -> Bytes {
    let size = size.max(HEADER_LEN);
    let mut buf = BytesMut::with_capacity(size);
    buf.put_u32(header.publisher);
    buf.put_u64(header.seq);
    buf.put_u64(header.sent_ns);
    buf.resize(size, PADDING);
    buf.freeze()
}

/// Reads the header from the start of `payload`; the padding is ignored.
pub fn decode(payload: &[u8]) -> Result<Header, TooShort> {
    let Some(mut head) = payload.get(..HEADER_LEN) else {
        return Err(TooShort(payload.len()));
    };
    // `head` holds exactly HEADER_LEN = 4 + 8 + 8 bytes, so the reads below
    // cannot run short.
    Ok(Header {
        publisher: head.get_u32(),
        seq: head.get_u64(),
        sent_ns: head.get_u64(),
    })
}

/// Wall-clock now in nanoseconds since the Unix epoch (0 if the clock is set
/// before 1970). Publisher and consumer run on the same host, so the same
/// clock stamps both ends.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode_round_trips_the_header_and_pads_to_size() {
        let header = Header {
            publisher: 0xDEAD_BEEF,
            seq: 42,
            sent_ns: 1_700_000_000_123_456_789,
        };
        let payload = encode(header, 64);
        assert_eq!(payload.len(), 64);
        assert_eq!(decode(&payload), Ok(header));
        assert!(payload[HEADER_LEN..].iter().all(|&b| b == PADDING));
    }

    #[test]
    fn header_bytes_are_big_endian_in_order() {
        let payload = encode(
            Header {
                publisher: 1,
                seq: 2,
                sent_ns: 3,
            },
            HEADER_LEN,
        );
        assert_eq!(
            &payload[..],
            &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3]
        );
    }

    #[test]
    fn size_below_the_header_is_raised_to_the_header() {
        let payload = encode(
            Header {
                publisher: 7,
                seq: 0,
                sent_ns: 0,
            },
            5,
        );
        assert_eq!(payload.len(), HEADER_LEN);
    }

    #[test]
    fn too_short_payload_is_rejected() {
        assert_eq!(decode(&[0u8; 19]), Err(TooShort(19)));
        assert_eq!(decode(b""), Err(TooShort(0)));
    }
}
