//! AUTH (MQTT 5 section 3.15; no earlier version has it, and its packet
//! type 15 is reserved there): fixed-header flags 0000 [MQTT-3.15.1-1], a
//! reason code from the AUTH set (0x00, 0x18, 0x19) [MQTT-3.15.2-1] and
//! properties (Authentication Method, Authentication Data, Reason String,
//! User Properties). Both may be left out when the code is 0x00 and there
//! are no properties (section 3.15.2.1). The exchange itself (section
//! 4.12) is the session's.

use bytes::{BufMut, Bytes, BytesMut};

use super::PacketType;
use super::error::{DecodeError, EncodeError, protocol};
use super::properties::{
    EmitProperties, Emitter, Property, UserProperties, block, id, not_allowed, properties_len,
    set_once, write_properties,
};
use super::reason::ReasonCode;
use super::wire::Reader;

const PACKET: &str = "AUTH";

/// The properties of AUTH (section 3.15.2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthProperties {
    /// The method of the exchange, as in CONNECT [MQTT-4.12.0-5].
    pub authentication_method: Option<String>,
    /// Data for the method.
    pub authentication_data: Option<Bytes>,
    /// Human-readable diagnostic.
    pub reason_string: Option<String>,
    /// User Properties, in order.
    pub user_properties: UserProperties,
}

impl AuthProperties {
    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut block = block(r)?;
        let mut p = Self::default();
        while let Some(prop) = Property::next(&mut block)? {
            let name = prop.name();
            match prop {
                Property::AuthenticationMethod(v) => {
                    set_once(&mut p.authentication_method, v, name, PACKET)?
                }
                Property::AuthenticationData(v) => {
                    set_once(&mut p.authentication_data, v, name, PACKET)?
                }
                Property::ReasonString(v) => set_once(&mut p.reason_string, v, name, PACKET)?,
                Property::UserProperty(k, v) => p.user_properties.push((k, v)),
                _ => return Err(not_allowed(name, PACKET)),
            }
        }
        Ok(p)
    }

    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl EmitProperties for AuthProperties {
    fn emit(&self, e: &mut Emitter<'_>) {
        let method = self.authentication_method.as_deref();
        e.str(id::AUTHENTICATION_METHOD, method, "Authentication Method");
        let data = self.authentication_data.as_deref();
        e.bin(id::AUTHENTICATION_DATA, data, "Authentication Data");
        e.str(
            id::REASON_STRING,
            self.reason_string.as_deref(),
            "Reason String",
        );
        e.user(&self.user_properties);
    }
}

/// An AUTH packet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Auth {
    /// Success, Continue authentication or Re-authenticate.
    pub reason: ReasonCode,
    /// The exchange's data.
    pub properties: AuthProperties,
}

impl Auth {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut auth = Self::default();
        if r.is_empty() {
            return Ok(auth);
        }
        auth.reason = ReasonCode(r.u8("reason code")?);
        if !auth.reason.is_allowed_in(PacketType::Auth) {
            return Err(protocol(format!(
                "reason code {} is not allowed in AUTH [MQTT-3.15.2-1]",
                auth.reason
            )));
        }
        auth.properties = AuthProperties::read(r)?;
        Ok(auth)
    }

    fn is_short(&self) -> bool {
        self.reason == ReasonCode::SUCCESS && self.properties.is_empty()
    }

    pub(crate) fn len(&self) -> Result<usize, EncodeError> {
        if self.is_short() {
            return Ok(0);
        }
        if !self.reason.is_allowed_in(PacketType::Auth) {
            return Err(EncodeError::ReasonCodeNotAllowed {
                packet: PACKET,
                code: self.reason,
            });
        }
        Ok(1 + properties_len(&self.properties)?)
    }

    pub(crate) fn write(&self, out: &mut BytesMut) {
        if !self.is_short() {
            out.put_u8(self.reason.0);
            write_properties(&self.properties, out);
        }
    }
}
