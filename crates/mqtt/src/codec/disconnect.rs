//! DISCONNECT (MQTT 5 section 3.14; 3.1.1 section 3.14). Before 5.0 it has
//! no body and only the client sends it. In 5.0 either side may, with a
//! reason code from the DISCONNECT set [MQTT-3.14.2-1] and properties
//! (Session Expiry Interval, Reason String, User Properties, Server
//! Reference); the code and properties may be left out when the code is
//! 0x00 and there are no properties, the properties alone when there are
//! none (section 3.14.2.1). Whether the sender may carry a Session Expiry
//! Interval [MQTT-3.14.2-2] is the session's call.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError, protocol};
use super::properties::{
    EmitProperties, Emitter, Property, UserProperties, block, id, not_allowed, properties_len,
    set_once, write_properties,
};
use super::reason::ReasonCode;
use super::wire::Reader;
use super::{PacketType, ProtocolVersion};

const PACKET: &str = "DISCONNECT";

/// The MQTT 5 properties of DISCONNECT (section 3.14.2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DisconnectProperties {
    /// Client only: a new session expiry for the session being left.
    pub session_expiry_interval: Option<u32>,
    /// Human-readable diagnostic.
    pub reason_string: Option<String>,
    /// User Properties, in order.
    pub user_properties: UserProperties,
    /// Server only: another server for the client to use.
    pub server_reference: Option<String>,
}

impl DisconnectProperties {
    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut block = block(r)?;
        let mut p = Self::default();
        while let Some(prop) = Property::next(&mut block)? {
            let name = prop.name();
            match prop {
                Property::SessionExpiryInterval(v) => {
                    set_once(&mut p.session_expiry_interval, v, name, PACKET)?
                }
                Property::ReasonString(v) => set_once(&mut p.reason_string, v, name, PACKET)?,
                Property::UserProperty(k, v) => p.user_properties.push((k, v)),
                Property::ServerReference(v) => set_once(&mut p.server_reference, v, name, PACKET)?,
                _ => return Err(not_allowed(name, PACKET)),
            }
        }
        Ok(p)
    }

    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl EmitProperties for DisconnectProperties {
    fn emit(&self, e: &mut Emitter<'_>) {
        e.u32(id::SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        e.str(
            id::REASON_STRING,
            self.reason_string.as_deref(),
            "Reason String",
        );
        e.user(&self.user_properties);
        let reference = self.server_reference.as_deref();
        e.str(id::SERVER_REFERENCE, reference, "Server Reference");
    }
}

/// A DISCONNECT packet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Disconnect {
    /// MQTT 5 reason; Normal disconnection (0x00) before 5.0.
    pub reason: ReasonCode,
    /// MQTT 5 properties; empty before 5.0.
    pub properties: DisconnectProperties,
}

impl Disconnect {
    /// A DISCONNECT with `reason` and no properties.
    pub fn new(reason: ReasonCode) -> Self {
        Self {
            reason,
            properties: DisconnectProperties::default(),
        }
    }

    pub(crate) fn read(r: &mut Reader, v: ProtocolVersion) -> Result<Self, DecodeError> {
        let mut d = Self::default();
        if !v.is_v5() || r.is_empty() {
            return Ok(d);
        }
        d.reason = ReasonCode(r.u8("reason code")?);
        if !d.reason.is_allowed_in(PacketType::Disconnect) {
            return Err(protocol(format!(
                "reason code {} is not allowed in DISCONNECT [MQTT-3.14.2-1]",
                d.reason
            )));
        }
        if !r.is_empty() {
            d.properties = DisconnectProperties::read(r)?;
        }
        Ok(d)
    }

    pub(crate) fn len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        if !v.is_v5() || (self.reason == ReasonCode::SUCCESS && self.properties.is_empty()) {
            return Ok(0);
        }
        if !self.reason.is_allowed_in(PacketType::Disconnect) {
            return Err(EncodeError::ReasonCodeNotAllowed {
                packet: PACKET,
                code: self.reason,
            });
        }
        // The property length is written even when it is 0: the one-byte
        // form is valid [MQTT-3.14.2.2.1], but rumqttc 0.25, for one, reads
        // it as a broken packet and never sees the reason code.
        Ok(1 + properties_len(&self.properties)?)
    }

    pub(crate) fn write(&self, v: ProtocolVersion, out: &mut BytesMut) {
        if !v.is_v5() || (self.reason == ReasonCode::SUCCESS && self.properties.is_empty()) {
            return;
        }
        out.put_u8(self.reason.0);
        write_properties(&self.properties, out);
    }
}
