//! The codec's errors. A [`DecodeError`] means the peer sent bytes this
//! connection cannot go on from: the session answers with the reason code
//! it names (MQTT 5 CONNACK or DISCONNECT, 3.1.1 CONNACK return code where
//! one exists) and closes the connection [MQTT-4.13.1-1]. An
//! [`EncodeError`] means the broker itself built a packet that the chosen
//! version cannot carry.

use thiserror::Error;

use super::ProtocolVersion;
use super::reason::ReasonCode;

/// Why bytes from the peer could not be decoded. After any of these the
/// read buffer is in an unspecified state and the connection must close.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The bytes do not follow the packet layout, or break a rule the
    /// specification calls malformed (reserved bits, bad UTF-8, QoS 3...).
    #[error("malformed packet: {0}")]
    MalformedPacket(String),
    /// The packet parses but breaks a rule the specification calls a
    /// protocol error (a property not allowed in this packet, a property
    /// repeated, a forbidden value, a first packet that is not CONNECT...).
    #[error("protocol error: {0}")]
    ProtocolError(String),
    /// The fixed header announces a packet larger than the configured
    /// maximum; `size` counts the whole packet, fixed header included.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max}")]
    PacketTooLarge {
        /// Size announced by the fixed header.
        size: usize,
        /// The limit in force.
        max: usize,
    },
    /// CONNECT names a protocol level this codec does not speak
    /// [MQTT-3.1.2-2].
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
    /// CONNECT's protocol name is neither "MQTT" nor "MQIsdp"
    /// [MQTT-3.1.2-1].
    #[error("protocol name is neither \"MQTT\" nor \"MQIsdp\"")]
    BadProtocolName,
}

impl DecodeError {
    /// The MQTT 5 reason code to put in the CONNACK or DISCONNECT sent
    /// before closing.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            Self::MalformedPacket(_) => ReasonCode::MALFORMED_PACKET,
            Self::ProtocolError(_) => ReasonCode::PROTOCOL_ERROR,
            Self::PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            Self::UnsupportedProtocolVersion(_) | Self::BadProtocolName => {
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            }
        }
    }

    /// For a CONNECT that fails on 3.1 or 3.1.1: the CONNACK return code
    /// to send before closing, or `None` when the connection closes
    /// without a CONNACK (3.1.1 only defines one for an unacceptable
    /// protocol level, 0x01 [MQTT-3.1.2-2]).
    pub fn connack_return_code(&self) -> Option<u8> {
        match self {
            Self::UnsupportedProtocolVersion(_) => Some(0x01),
            _ => None,
        }
    }
}

/// Shorthand for a [`DecodeError::MalformedPacket`].
pub(crate) fn malformed(msg: impl Into<String>) -> DecodeError {
    DecodeError::MalformedPacket(msg.into())
}

/// Shorthand for a [`DecodeError::ProtocolError`].
pub(crate) fn protocol(msg: impl Into<String>) -> DecodeError {
    DecodeError::ProtocolError(msg.into())
}

/// Why a packet could not be encoded. Only the broker's own mistakes lead
/// here, never peer input.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// The remaining length would exceed 268,435,455 bytes [MQTT-1.5.5].
    #[error("remaining length {0} exceeds 268435455")]
    PacketTooLarge(usize),
    /// A string or binary field is longer than its 16-bit length prefix
    /// allows [MQTT-1.5.4].
    #[error("{field} is {len} bytes, more than 65535")]
    TooLong {
        /// The field that is too long.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// The packet type does not exist in this version (AUTH before 5.0).
    #[error("{packet} does not exist in MQTT {version}")]
    NotInVersion {
        /// Packet name.
        packet: &'static str,
        /// The version asked for.
        version: ProtocolVersion,
    },
    /// The reason code is not one the packet may carry [MQTT-3.4.2-1] etc.
    #[error("reason code {code} is not allowed in {packet}")]
    ReasonCodeNotAllowed {
        /// Packet name.
        packet: &'static str,
        /// The offending code.
        code: ReasonCode,
    },
    /// A field breaks an invariant of the packet (packet identifier
    /// without QoS, subscription identifier out of range, empty list...).
    #[error("invalid packet: {0}")]
    Invalid(&'static str),
}
