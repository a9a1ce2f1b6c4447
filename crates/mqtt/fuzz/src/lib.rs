//! Helpers shared by the fuzz targets in `fuzz_targets/`.
//!
//! Every target reads its input the same way: the first byte picks the
//! version the connection starts with ([`version_from`]), the rest is what
//! the peer sent. Like a connection, a stream that starts with no version
//! takes the version of its first CONNECT; one that starts with a version
//! keeps it (a second CONNECT is the session's business, not the codec's).

use bytes::BytesMut;
use junction_mqtt::codec::{DecodeError, Packet, ProtocolVersion, decode, encode};

/// The limit passed to `decode`: far above libFuzzer's default input size,
/// so only a Remaining Length that announces more hits it.
pub const MAX_PACKET_SIZE: usize = 1 << 20;

/// The version a stream starts with, from the input's first byte: `None`
/// (before CONNECT), 3.1, 3.1.1 or 5.0.
pub fn version_from(byte: u8) -> Option<ProtocolVersion> {
    match byte % 4 {
        0 => None,
        1 => Some(ProtocolVersion::V3_1),
        2 => Some(ProtocolVersion::V3_1_1),
        _ => Some(ProtocolVersion::V5),
    }
}

/// The version for the packets after `packet`: a CONNECT decoded before
/// any version fixes it, as on a real connection.
pub fn next_version(version: Option<ProtocolVersion>, packet: &Packet) -> Option<ProtocolVersion> {
    match (version, packet) {
        (None, Packet::Connect(c)) => Some(c.version),
        _ => version,
    }
}

/// Checks that `packet`, decoded with `version`, encodes and decodes back
/// to itself.
///
/// This holds for every packet the codec decodes: decoding keeps only what
/// the version carries (no MQTT 5 properties or reason codes before 5.0,
/// no Session Present in 3.1, the granted QoS or 0x80 in a 3.x SUBACK),
/// and the encoder writes all of that back. What the wire may say in more
/// than one way (non-minimal Variable Byte Integers, an MQTT 5 ack or
/// DISCONNECT with an explicit Success code and no properties, 3.1's free
/// fixed-header flags) decodes to the same value either way, so the
/// packets compare equal even where the bytes differ. A CONNECT is encoded
/// for its own version, whatever `version` is; only CONNECT decodes before
/// a version is known.
pub fn assert_round_trip(packet: &Packet, version: Option<ProtocolVersion>) {
    let v = match (packet, version) {
        (Packet::Connect(c), _) => c.version,
        (_, Some(v)) => v,
        (_, None) => panic!("decoded a non-CONNECT packet before any version: {packet:?}"),
    };
    let mut out = BytesMut::new();
    if let Err(e) = encode(packet, v, &mut out) {
        panic!("decoded packet does not encode for {v}: {e}\n{packet:?}");
    }
    let bytes = out.to_vec();
    // No size limit: the round trip is about content, not the input's limit.
    match decode(&mut out, version, usize::MAX) {
        Ok(Some(again)) => assert_eq!(
            &again, packet,
            "round trip changed the packet ({v}, decoded with {version:?}); encoded as {bytes:02x?}"
        ),
        other => panic!(
            "re-encoded packet does not decode ({v}, decoded with {version:?}): {other:?}\n\
             packet: {packet:?}\nencoded as {bytes:02x?}"
        ),
    }
    assert!(
        out.is_empty(),
        "decoding the re-encoded packet left {} of its {} bytes",
        out.len(),
        bytes.len()
    );
}

/// How decoding a stream ended, after the packets it yielded.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// `decode` asked for more bytes; these were left unconsumed.
    Incomplete(Vec<u8>),
    /// `decode` failed (the buffer's content is then unspecified).
    Error(DecodeError),
}

/// Everything decoding a stream yielded.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The packets, in order.
    pub packets: Vec<Packet>,
    /// How it ended.
    pub end: End,
}

/// Decodes `chunks` as they would arrive on a connection that starts with
/// `version`: each chunk is appended to the read buffer, then packets are
/// decoded until `decode` asks for more bytes or fails. A failure ends the
/// stream, as it closes the connection.
pub fn decode_chunks(version: Option<ProtocolVersion>, chunks: &[&[u8]]) -> Outcome {
    let mut version = version;
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match decode(&mut buf, version, MAX_PACKET_SIZE) {
                Ok(Some(packet)) => {
                    version = next_version(version, &packet);
                    packets.push(packet);
                }
                Ok(None) => break,
                Err(e) => {
                    return Outcome {
                        packets,
                        end: End::Error(e),
                    };
                }
            }
        }
    }
    Outcome {
        packets,
        end: End::Incomplete(buf.to_vec()),
    }
}
