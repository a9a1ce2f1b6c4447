//! UNSUBACK (MQTT 5 section 3.11; 3.1.1 section 3.11): the packet
//! identifier of the UNSUBSCRIBE [MQTT-3.10.4-5]. MQTT 5 adds properties
//! (Reason String, User Properties) and one reason code per topic filter,
//! in order [MQTT-3.11.3-1], from the UNSUBACK set [MQTT-3.11.3-2]; before
//! 5.0 there is nothing after the identifier.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError, protocol};
use super::properties::{ReasonProperties, properties_len, write_properties};
use super::reason::ReasonCode;
use super::wire::Reader;
use super::{PacketType, ProtocolVersion};

const PACKET: &str = "UNSUBACK";

/// An UNSUBACK packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// The UNSUBSCRIBE's packet identifier.
    pub packet_id: u16,
    /// MQTT 5 Reason String and User Properties.
    pub properties: ReasonProperties,
    /// MQTT 5: one per topic filter of the UNSUBSCRIBE. Empty after
    /// decoding an earlier version, and not written for one.
    pub reasons: Vec<ReasonCode>,
}

impl UnsubAck {
    pub(crate) fn read(r: &mut Reader, v: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = r.packet_id()?;
        if !v.is_v5() {
            return Ok(Self {
                packet_id,
                properties: ReasonProperties::default(),
                reasons: Vec::new(),
            });
        }
        let properties = ReasonProperties::read(r, PACKET)?;
        let mut reasons = Vec::with_capacity(r.remaining());
        while !r.is_empty() {
            let reason = ReasonCode(r.u8("reason code")?);
            if !reason.is_allowed_in(PacketType::UnsubAck) {
                return Err(protocol(format!(
                    "reason code {reason} is not allowed in UNSUBACK [MQTT-3.11.3-2]"
                )));
            }
            reasons.push(reason);
        }
        Ok(Self {
            packet_id,
            properties,
            reasons,
        })
    }

    pub(crate) fn len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        if !v.is_v5() {
            return Ok(2);
        }
        let not_allowed = self
            .reasons
            .iter()
            .find(|r| !r.is_allowed_in(PacketType::UnsubAck));
        if let Some(&code) = not_allowed {
            return Err(EncodeError::ReasonCodeNotAllowed {
                packet: PACKET,
                code,
            });
        }
        Ok(2 + properties_len(&self.properties)? + self.reasons.len())
    }

    pub(crate) fn write(&self, v: ProtocolVersion, out: &mut BytesMut) {
        out.put_u16(self.packet_id);
        if v.is_v5() {
            write_properties(&self.properties, out);
            for reason in &self.reasons {
                out.put_u8(reason.0);
            }
        }
    }
}
