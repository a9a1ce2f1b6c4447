//! PUBACK, PUBREC, PUBREL and PUBCOMP (MQTT 5 sections 3.4 to 3.7; 3.1.1
//! sections 3.4 to 3.7): one layout for the four. Before 5.0 the body is
//! just the packet identifier. In 5.0 a reason code and properties follow;
//! both may be left out when the code is 0x00 and there are no properties,
//! and the properties alone when there are none (sections 3.4.2.1,
//! 3.4.2.2.1). Each packet has its own allowed reason codes
//! [MQTT-3.4.2-1] [MQTT-3.5.2-1] [MQTT-3.6.2-1] [MQTT-3.7.2-1].

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError, protocol};
use super::properties::{ReasonProperties, properties_len, write_properties};
use super::reason::ReasonCode;
use super::wire::Reader;
use super::{PacketType, ProtocolVersion};

/// The body of a PUBACK, PUBREC, PUBREL or PUBCOMP; the [`super::Packet`]
/// variant says which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The identifier of the PUBLISH (or PUBREL) acknowledged
    /// [MQTT-2.2.1-5].
    pub packet_id: u16,
    /// MQTT 5 outcome; always Success before 5.0, and not sent then.
    pub reason: ReasonCode,
    /// MQTT 5 Reason String and User Properties.
    pub properties: ReasonProperties,
}

impl Ack {
    /// A successful acknowledgement of `packet_id` without properties.
    pub fn new(packet_id: u16) -> Self {
        Self {
            packet_id,
            reason: ReasonCode::SUCCESS,
            properties: ReasonProperties::default(),
        }
    }

    pub(crate) fn read(
        r: &mut Reader,
        kind: PacketType,
        v: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let mut ack = Self::new(r.packet_id()?);
        if !v.is_v5() || r.is_empty() {
            return Ok(ack);
        }
        ack.reason = ReasonCode(r.u8("reason code")?);
        if !ack.reason.is_allowed_in(kind) {
            return Err(protocol(format!(
                "reason code {} is not allowed in {}",
                ack.reason,
                kind.name()
            )));
        }
        if !r.is_empty() {
            ack.properties = ReasonProperties::read(r, kind.name())?;
        }
        Ok(ack)
    }

    pub(crate) fn len(&self, kind: PacketType, v: ProtocolVersion) -> Result<usize, EncodeError> {
        if self.is_short(v) {
            return Ok(2);
        }
        if !self.reason.is_allowed_in(kind) {
            return Err(EncodeError::ReasonCodeNotAllowed {
                packet: kind.name(),
                code: self.reason,
            });
        }
        if self.properties.is_empty() {
            return Ok(3);
        }
        Ok(3 + properties_len(&self.properties)?)
    }

    pub(crate) fn write(&self, v: ProtocolVersion, out: &mut BytesMut) {
        out.put_u16(self.packet_id);
        if self.is_short(v) {
            return;
        }
        out.put_u8(self.reason.0);
        if !self.properties.is_empty() {
            write_properties(&self.properties, out);
        }
    }

    /// Whether the packet identifier says it all: before 5.0, or Success
    /// without properties.
    fn is_short(&self, v: ProtocolVersion) -> bool {
        !v.is_v5() || (self.reason == ReasonCode::SUCCESS && self.properties.is_empty())
    }
}
