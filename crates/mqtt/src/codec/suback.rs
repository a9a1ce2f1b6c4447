//! SUBACK (MQTT 5 section 3.9; 3.1.1 section 3.9): the packet identifier of
//! the SUBSCRIBE [MQTT-3.8.4-2], MQTT 5 properties (Reason String, User
//! Properties), then one code per topic filter, in order [MQTT-3.9.3-1].
//! In 5.0 each is a reason code from the SUBACK set [MQTT-3.9.3-2]; before
//! 5.0 a granted QoS 0-2 or 0x80 for failure (3.1.1 [MQTT-3.9.3-2]).

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError, protocol};
use super::properties::{ReasonProperties, properties_len, write_properties};
use super::reason::ReasonCode;
use super::wire::Reader;
use super::{PacketType, ProtocolVersion};

const PACKET: &str = "SUBACK";

/// A SUBACK packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// The SUBSCRIBE's packet identifier.
    pub packet_id: u16,
    /// MQTT 5 Reason String and User Properties.
    pub properties: ReasonProperties,
    /// One per topic filter of the SUBSCRIBE: the granted QoS (0x00-0x02)
    /// or a failure (0x80 and above; only 0x80 exists before 5.0).
    pub reasons: Vec<ReasonCode>,
}

impl SubAck {
    pub(crate) fn read(r: &mut Reader, v: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = r.packet_id()?;
        let properties = if v.is_v5() {
            ReasonProperties::read(r, PACKET)?
        } else {
            ReasonProperties::default()
        };
        let mut reasons = Vec::with_capacity(r.remaining());
        while !r.is_empty() {
            let reason = ReasonCode(r.u8("reason code")?);
            let allowed = if v.is_v5() {
                reason.is_allowed_in(PacketType::SubAck)
            } else {
                matches!(reason.0, 0x00..=0x02 | 0x80)
            };
            if !allowed {
                return Err(protocol(format!(
                    "reason code {reason} is not allowed in SUBACK [MQTT-3.9.3-2]"
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

    fn code(reason: ReasonCode, v: ProtocolVersion) -> Option<u8> {
        if v.is_v5() {
            reason.is_allowed_in(PacketType::SubAck).then_some(reason.0)
        } else {
            reason.to_v3_suback()
        }
    }

    pub(crate) fn len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        if let Some(&code) = self.reasons.iter().find(|&&r| Self::code(r, v).is_none()) {
            return Err(EncodeError::ReasonCodeNotAllowed {
                packet: PACKET,
                code,
            });
        }
        let props = if v.is_v5() {
            properties_len(&self.properties)?
        } else {
            0
        };
        Ok(2 + props + self.reasons.len())
    }

    pub(crate) fn write(&self, v: ProtocolVersion, out: &mut BytesMut) {
        out.put_u16(self.packet_id);
        if v.is_v5() {
            write_properties(&self.properties, out);
        }
        for &reason in &self.reasons {
            out.put_u8(Self::code(reason, v).unwrap_or(0x80));
        }
    }
}
