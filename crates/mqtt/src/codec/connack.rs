//! CONNACK (MQTT 5 section 3.2; 3.1.1 section 3.2): the server's answer to
//! CONNECT. Byte 1 holds Session Present, its other bits reserved 0
//! [MQTT-3.2.2-1] (3.1 had no flag there: the byte is written 0 and
//! ignored on read). Byte 2 is an MQTT 5 reason code from the CONNACK set
//! [MQTT-3.2.2-8], or before 5.0 a return code 0-5 (3.1.1 section 3.2.2.3),
//! mapped to and from reason codes by [`ReasonCode::to_v3_connack`] and
//! [`ReasonCode::from_v3_connack`]. MQTT 5 properties follow
//! (section 3.2.2.3).

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{DecodeError, EncodeError, malformed, protocol};
use super::properties::{
    EmitProperties, Emitter, Property, UserProperties, block, flag, id, nonzero, not_allowed,
    properties_len, set_once, write_properties,
};
use super::reason::ReasonCode;
use super::wire::Reader;
use super::{PacketType, ProtocolVersion, QoS};

const PACKET: &str = "CONNACK";

/// The MQTT 5 properties of CONNACK (section 3.2.2.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnAckProperties {
    /// The session expiry the server applies, if not the client's.
    pub session_expiry_interval: Option<u32>,
    /// QoS 1 and 2 publications the server will process at once; non-zero.
    pub receive_maximum: Option<u16>,
    /// Highest QoS the server supports, when below 2: 0 or 1 only.
    pub maximum_qos: Option<QoS>,
    /// Whether retained messages are supported.
    pub retain_available: Option<bool>,
    /// Largest packet the server accepts; non-zero.
    pub maximum_packet_size: Option<u32>,
    /// The client identifier the server chose for an empty one
    /// [MQTT-3.2.2-16].
    pub assigned_client_identifier: Option<String>,
    /// Highest Topic Alias the server accepts from the client.
    pub topic_alias_maximum: Option<u16>,
    /// Human-readable diagnostic.
    pub reason_string: Option<String>,
    /// User Properties, in order.
    pub user_properties: UserProperties,
    /// Whether wildcard subscriptions are supported.
    pub wildcard_subscription_available: Option<bool>,
    /// Whether subscription identifiers are supported.
    pub subscription_identifiers_available: Option<bool>,
    /// Whether shared subscriptions are supported.
    pub shared_subscription_available: Option<bool>,
    /// Keep Alive the client must use instead of its own [MQTT-3.2.2-21].
    pub server_keep_alive: Option<u16>,
    /// Basis for response topics (section 4.10).
    pub response_information: Option<String>,
    /// Another server for the client to use.
    pub server_reference: Option<String>,
    /// Extended authentication method, as in CONNECT.
    pub authentication_method: Option<String>,
    /// Data for the authentication method.
    pub authentication_data: Option<Bytes>,
}

impl ConnAckProperties {
    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut block = block(r)?;
        let mut p = Self::default();
        while let Some(prop) = Property::next(&mut block)? {
            let name = prop.name();
            match prop {
                Property::SessionExpiryInterval(v) => {
                    set_once(&mut p.session_expiry_interval, v, name, PACKET)?
                }
                Property::ReceiveMaximum(v) => {
                    set_once(&mut p.receive_maximum, nonzero(v, name)?, name, PACKET)?
                }
                Property::MaximumQos(v) => {
                    let qos = if flag(v, name)? {
                        QoS::AtLeastOnce
                    } else {
                        QoS::AtMostOnce
                    };
                    set_once(&mut p.maximum_qos, qos, name, PACKET)?
                }
                Property::RetainAvailable(v) => {
                    set_once(&mut p.retain_available, flag(v, name)?, name, PACKET)?
                }
                Property::MaximumPacketSize(v) => {
                    set_once(&mut p.maximum_packet_size, nonzero(v, name)?, name, PACKET)?
                }
                Property::AssignedClientIdentifier(v) => {
                    set_once(&mut p.assigned_client_identifier, v, name, PACKET)?
                }
                Property::TopicAliasMaximum(v) => {
                    set_once(&mut p.topic_alias_maximum, v, name, PACKET)?
                }
                Property::ReasonString(v) => set_once(&mut p.reason_string, v, name, PACKET)?,
                Property::UserProperty(k, v) => p.user_properties.push((k, v)),
                Property::WildcardSubscriptionAvailable(v) => {
                    let v = flag(v, name)?;
                    set_once(&mut p.wildcard_subscription_available, v, name, PACKET)?
                }
                Property::SubscriptionIdentifierAvailable(v) => {
                    let v = flag(v, name)?;
                    set_once(&mut p.subscription_identifiers_available, v, name, PACKET)?
                }
                Property::SharedSubscriptionAvailable(v) => {
                    let v = flag(v, name)?;
                    set_once(&mut p.shared_subscription_available, v, name, PACKET)?
                }
                Property::ServerKeepAlive(v) => {
                    set_once(&mut p.server_keep_alive, v, name, PACKET)?
                }
                Property::ResponseInformation(v) => {
                    set_once(&mut p.response_information, v, name, PACKET)?
                }
                Property::ServerReference(v) => set_once(&mut p.server_reference, v, name, PACKET)?,
                Property::AuthenticationMethod(v) => {
                    set_once(&mut p.authentication_method, v, name, PACKET)?
                }
                Property::AuthenticationData(v) => {
                    set_once(&mut p.authentication_data, v, name, PACKET)?
                }
                _ => return Err(not_allowed(name, PACKET)),
            }
        }
        Ok(p)
    }
}

impl EmitProperties for ConnAckProperties {
    fn emit(&self, e: &mut Emitter<'_>) {
        e.u32(id::SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        e.u16(id::RECEIVE_MAXIMUM, self.receive_maximum);
        e.u8(id::MAXIMUM_QOS, self.maximum_qos.map(|q| q as u8));
        e.flag(id::RETAIN_AVAILABLE, self.retain_available);
        e.u32(id::MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        let assigned = self.assigned_client_identifier.as_deref();
        e.str(
            id::ASSIGNED_CLIENT_IDENTIFIER,
            assigned,
            "Assigned Client Identifier",
        );
        e.u16(id::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        e.str(
            id::REASON_STRING,
            self.reason_string.as_deref(),
            "Reason String",
        );
        e.user(&self.user_properties);
        let wildcard = self.wildcard_subscription_available;
        e.flag(id::WILDCARD_SUBSCRIPTION_AVAILABLE, wildcard);
        let sid = self.subscription_identifiers_available;
        e.flag(id::SUBSCRIPTION_IDENTIFIER_AVAILABLE, sid);
        let shared = self.shared_subscription_available;
        e.flag(id::SHARED_SUBSCRIPTION_AVAILABLE, shared);
        e.u16(id::SERVER_KEEP_ALIVE, self.server_keep_alive);
        let info = self.response_information.as_deref();
        e.str(id::RESPONSE_INFORMATION, info, "Response Information");
        let reference = self.server_reference.as_deref();
        e.str(id::SERVER_REFERENCE, reference, "Server Reference");
        let method = self.authentication_method.as_deref();
        e.str(id::AUTHENTICATION_METHOD, method, "Authentication Method");
        let data = self.authentication_data.as_deref();
        e.bin(id::AUTHENTICATION_DATA, data, "Authentication Data");
    }
}

/// A CONNACK packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Whether the server resumed a stored session; always false in 3.1.
    pub session_present: bool,
    /// The outcome; before 5.0 written as its return code.
    pub reason: ReasonCode,
    /// MQTT 5 properties; empty before 5.0.
    pub properties: ConnAckProperties,
}

impl ConnAck {
    pub(crate) fn read(r: &mut Reader, v: ProtocolVersion) -> Result<Self, DecodeError> {
        let flags = r.u8("acknowledge flags")?;
        if v != ProtocolVersion::V3_1 && flags & 0xFE != 0 {
            return Err(malformed("CONNACK reserved flags are not 0 [MQTT-3.2.2-1]"));
        }
        let code = r.u8("reason code")?;
        let reason = if v.is_v5() {
            let reason = ReasonCode(code);
            if !reason.is_allowed_in(PacketType::ConnAck) {
                return Err(protocol(format!(
                    "reason code {reason} is not allowed in CONNACK [MQTT-3.2.2-8]"
                )));
            }
            reason
        } else {
            ReasonCode::from_v3_connack(code)
                .ok_or_else(|| protocol(format!("reserved CONNACK return code {code}")))?
        };
        let properties = if v.is_v5() {
            ConnAckProperties::read(r)?
        } else {
            ConnAckProperties::default()
        };
        Ok(Self {
            session_present: v != ProtocolVersion::V3_1 && flags & 0x01 != 0,
            reason,
            properties,
        })
    }

    pub(crate) fn len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        if !self.reason.is_allowed_in(PacketType::ConnAck) {
            return Err(EncodeError::ReasonCodeNotAllowed {
                packet: PACKET,
                code: self.reason,
            });
        }
        if !v.is_v5() {
            return Ok(2);
        }
        if self.properties.maximum_qos == Some(QoS::ExactlyOnce) {
            return Err(EncodeError::Invalid("Maximum QoS 2"));
        }
        Ok(2 + properties_len(&self.properties)?)
    }

    pub(crate) fn write(&self, v: ProtocolVersion, out: &mut BytesMut) {
        let present = self.session_present && v != ProtocolVersion::V3_1;
        out.put_u8(u8::from(present));
        if v.is_v5() {
            out.put_u8(self.reason.0);
            write_properties(&self.properties, out);
        } else {
            out.put_u8(self.reason.to_v3_connack());
        }
    }
}
