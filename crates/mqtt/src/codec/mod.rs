//! The MQTT codec: bytes ⇄ [`Packet`] for MQTT 3.1 (protocol name
//! "MQIsdp", level 3), 3.1.1 (level 4) and 5.0 (level 5). Pure: no I/O, no
//! tokio, no session state beyond the protocol version the caller passes.
//!
//! [`decode`] reads the fixed header (MQTT 5 section 2.1, 3.1.1 section
//! 2.2) first: the packet type and its reserved flags [MQTT-2.2.2-1]
//! [MQTT-2.2.2-2], then the Remaining Length, a Variable Byte Integer of at
//! most four bytes. The packet's total size is checked against the limit
//! right there, before the body is buffered, so a peer cannot make the
//! broker wait for (or allocate) more than the limit. Only a whole packet
//! is parsed, by the module of its type; payloads and binary fields are
//! zero-copy slices of the read buffer.
//!
//! [`encode`] writes one packet for a given version; fields the version
//! cannot carry (MQTT 5 properties, ack reason codes before 5.0) are
//! dropped, so the session can build packets once for every version.

pub mod ack;
pub mod auth;
pub mod connack;
pub mod connect;
pub mod disconnect;
mod error;
mod packet;
pub mod ping;
pub mod properties;
pub mod publish;
pub mod reason;
#[cfg(any(test, feature = "samples"))]
pub mod samples;
pub mod suback;
pub mod subscribe;
pub mod topic;
pub mod unsuback;
pub mod unsubscribe;
mod wire;

#[cfg(test)]
mod tests;

use bytes::{Buf, BufMut, BytesMut};

pub use ack::Ack;
pub use auth::{Auth, AuthProperties};
pub use connack::{ConnAck, ConnAckProperties};
pub use connect::{Connect, ConnectProperties, LastWill, WillProperties};
pub use disconnect::{Disconnect, DisconnectProperties};
pub use error::{DecodeError, EncodeError};
pub use packet::{Packet, PacketType, ProtocolVersion, QoS};
pub use properties::{Property, ReasonProperties, UserProperties};
pub use publish::{PayloadFormat, Publish, PublishProperties};
pub use reason::ReasonCode;
pub use suback::SubAck;
pub use subscribe::{
    RetainHandling, Subscribe, SubscribeProperties, Subscription, SubscriptionOptions,
};
pub use topic::{SharedFilter, TopicError, TopicFilter, TopicName};
pub use unsuback::UnsubAck;
pub use unsubscribe::{Unsubscribe, UnsubscribeProperties};

use error::{malformed, protocol};
use wire::{MAX_VARINT, Reader, peek_varint, put_varint, varint_len};

/// Checks the first byte of a fixed header and returns the packet type and
/// its flags.
fn check_first_byte(
    byte: u8,
    version: Option<ProtocolVersion>,
) -> Result<(PacketType, u8), DecodeError> {
    let (code, flags) = (byte >> 4, byte & 0x0F);
    let kind = usize::from(code)
        .checked_sub(1)
        .and_then(|i| PacketType::ALL.get(i).copied());
    let Some(version) = version else {
        // [MQTT-3.1.0-1]: the first packet must be CONNECT.
        return match kind {
            Some(PacketType::Connect) if flags == 0 => Ok((PacketType::Connect, 0)),
            Some(PacketType::Connect) => Err(malformed("CONNECT flags must be 0000")),
            _ => Err(protocol("the first packet must be CONNECT")),
        };
    };
    let kind = match kind {
        Some(PacketType::Auth) if !version.is_v5() => None,
        kind => kind,
    };
    let Some(kind) = kind else {
        return Err(malformed(format!("reserved packet type {code}")));
    };
    // MQTT 3.1 gave every packet DUP/QoS/RETAIN bits, and its clients set
    // them on SUBSCRIBE and PUBREL retries; the reserved-flag rule starts
    // with 3.1.1.
    if kind != PacketType::Publish
        && version != ProtocolVersion::V3_1
        && flags != kind.required_flags()
    {
        return Err(malformed(format!(
            "{} fixed-header flags must be {:04b}, not {flags:04b}",
            kind.name(),
            kind.required_flags()
        )));
    }
    Ok((kind, flags))
}

/// Decodes one packet from the front of `buf`.
///
/// Returns `Ok(None)` while the packet is incomplete (nothing is consumed;
/// call again when more bytes arrive), `Ok(Some(packet))` after consuming
/// exactly that packet's bytes. `version` is `None` until CONNECT is
/// decoded: only CONNECT is accepted then, and it carries the version for
/// what follows. `max_packet_size` bounds the whole packet, fixed header
/// included (MQTT 5's definition of packet size, section 3.1.2.11.4); it
/// is checked as soon as the Remaining Length is read, so an oversized
/// packet fails with [`DecodeError::PacketTooLarge`] before its body
/// arrives. After an error the buffer's content is unspecified.
pub fn decode(
    buf: &mut BytesMut,
    version: Option<ProtocolVersion>,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let (kind, flags) = check_first_byte(first, version)?;
    let Some((remaining, len_bytes)) = peek_varint(&buf[1..])? else {
        return Ok(None);
    };
    let header = 1 + len_bytes;
    let size = header + remaining;
    if size > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size,
            max: max_packet_size,
        });
    }
    if buf.len() < size {
        // Bounded by `max_packet_size`: room for the rest of this packet.
        buf.reserve(size - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(size).freeze();
    frame.advance(header);
    let mut r = Reader::new(frame);
    let v = version.unwrap_or(ProtocolVersion::V5);
    let packet = match kind {
        PacketType::Connect => Packet::Connect(Connect::read(&mut r)?),
        PacketType::ConnAck => Packet::ConnAck(ConnAck::read(&mut r, v)?),
        PacketType::Publish => Packet::Publish(Publish::read(&mut r, flags, v)?),
        PacketType::PubAck => Packet::PubAck(Ack::read(&mut r, kind, v)?),
        PacketType::PubRec => Packet::PubRec(Ack::read(&mut r, kind, v)?),
        PacketType::PubRel => Packet::PubRel(Ack::read(&mut r, kind, v)?),
        PacketType::PubComp => Packet::PubComp(Ack::read(&mut r, kind, v)?),
        PacketType::Subscribe => Packet::Subscribe(Subscribe::read(&mut r, v)?),
        PacketType::SubAck => Packet::SubAck(SubAck::read(&mut r, v)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(Unsubscribe::read(&mut r, v)?),
        PacketType::UnsubAck => Packet::UnsubAck(UnsubAck::read(&mut r, v)?),
        PacketType::PingReq => ping::read(&r, kind).map(|()| Packet::PingReq)?,
        PacketType::PingResp => ping::read(&r, kind).map(|()| Packet::PingResp)?,
        PacketType::Disconnect => Packet::Disconnect(Disconnect::read(&mut r, v)?),
        PacketType::Auth => Packet::Auth(Auth::read(&mut r)?),
    };
    r.finish(kind.name())?;
    Ok(Some(packet))
}

/// Appends the encoding of `packet` for `version` to `out`. A CONNECT is
/// written for its own [`Connect::version`]; `version` is not used for it.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let kind = packet.packet_type();
    if kind == PacketType::Auth && !version.is_v5() {
        return Err(EncodeError::NotInVersion {
            packet: kind.name(),
            version,
        });
    }
    let v = version;
    let remaining = match packet {
        Packet::Connect(p) => p.len()?,
        Packet::ConnAck(p) => p.len(v)?,
        Packet::Publish(p) => p.len(v)?,
        Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
            p.len(kind, v)?
        }
        Packet::Subscribe(p) => p.len(v)?,
        Packet::SubAck(p) => p.len(v)?,
        Packet::Unsubscribe(p) => p.len(v)?,
        Packet::UnsubAck(p) => p.len(v)?,
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(p) => p.len(v)?,
        Packet::Auth(p) => p.len()?,
    };
    if remaining > MAX_VARINT {
        return Err(EncodeError::PacketTooLarge(remaining));
    }
    let flags = match packet {
        Packet::Publish(p) => p.flags(),
        _ => kind.required_flags(),
    };
    out.reserve(1 + varint_len(remaining) + remaining);
    out.put_u8(((kind as u8) << 4) | flags);
    put_varint(out, remaining);
    match packet {
        Packet::Connect(p) => p.write(out),
        Packet::ConnAck(p) => p.write(v, out),
        Packet::Publish(p) => p.write(v, out),
        Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
            p.write(v, out)
        }
        Packet::Subscribe(p) => p.write(v, out),
        Packet::SubAck(p) => p.write(v, out),
        Packet::Unsubscribe(p) => p.write(v, out),
        Packet::UnsubAck(p) => p.write(v, out),
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(p) => p.write(v, out),
        Packet::Auth(p) => p.write(out),
    }
    Ok(())
}
