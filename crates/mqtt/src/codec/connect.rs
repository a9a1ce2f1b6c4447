//! CONNECT (MQTT 5 section 3.1; 3.1.1 section 3.1; 3.1 "CONNECT"): the
//! first packet of a connection [MQTT-3.1.0-1], and the one that fixes its
//! protocol version: "MQIsdp" level 3 is 3.1, "MQTT" level 4 is 3.1.1,
//! "MQTT" level 5 is 5.0. Rules checked here:
//!
//! - another protocol name is [`DecodeError::BadProtocolName`]
//!   [MQTT-3.1.2-1]; another level [`DecodeError::UnsupportedProtocolVersion`]
//!   [MQTT-3.1.2-2];
//! - the reserved connect flag is 0 [MQTT-3.1.2-3];
//! - without the Will Flag, Will QoS and Will Retain are 0 [MQTT-3.1.2-11]
//!   [MQTT-3.1.2-13] (3.1.1: [MQTT-3.1.2-13] [MQTT-3.1.2-15]); Will QoS is
//!   never 3 [MQTT-3.1.2-12] (3.1.1: [MQTT-3.1.2-14]);
//! - before 5.0 a password needs a user name (3.1.1 [MQTT-3.1.2-22]);
//! - the will topic is a topic name; strings are well-formed UTF-8;
//! - MQTT 5 properties: each at most once, Receive Maximum and Maximum
//!   Packet Size non-zero, the request flags 0 or 1, Authentication Data
//!   only with an Authentication Method (section 3.1.2.11).
//!
//! Session rules (client identifier length and content, a second CONNECT
//! [MQTT-3.1.0-2]) belong to the session, not here.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{DecodeError, EncodeError, malformed, protocol};
use super::properties::{
    EmitProperties, Emitter, Property, UserProperties, block, flag, id, nonzero, not_allowed,
    properties_len, set_once, write_properties,
};
use super::publish::{PayloadFormat, response_topic};
use super::topic::TopicName;
use super::wire::{Reader, bin_len, put_bin, put_str, str_len};
use super::{ProtocolVersion, QoS};

const PACKET: &str = "CONNECT";
const WILL: &str = "CONNECT will properties";

/// The MQTT 5 properties of CONNECT (section 3.1.2.11).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectProperties {
    /// Seconds the session outlives the connection; absent means 0.
    pub session_expiry_interval: Option<u32>,
    /// QoS 1 and 2 publications the client will process at once; non-zero.
    pub receive_maximum: Option<u16>,
    /// Largest packet the client accepts; non-zero.
    pub maximum_packet_size: Option<u32>,
    /// Highest Topic Alias the client accepts from the server.
    pub topic_alias_maximum: Option<u16>,
    /// Whether the client wants Response Information in CONNACK.
    pub request_response_information: Option<bool>,
    /// Whether the server may send Reason Strings and User Properties on
    /// failures [MQTT-3.1.2-32].
    pub request_problem_information: Option<bool>,
    /// User Properties, in order.
    pub user_properties: UserProperties,
    /// Extended authentication method (section 4.12).
    pub authentication_method: Option<String>,
    /// Data for the authentication method.
    pub authentication_data: Option<Bytes>,
}

impl ConnectProperties {
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
                Property::MaximumPacketSize(v) => {
                    set_once(&mut p.maximum_packet_size, nonzero(v, name)?, name, PACKET)?
                }
                Property::TopicAliasMaximum(v) => {
                    set_once(&mut p.topic_alias_maximum, v, name, PACKET)?
                }
                Property::RequestResponseInformation(v) => {
                    let v = flag(v, name)?;
                    set_once(&mut p.request_response_information, v, name, PACKET)?
                }
                Property::RequestProblemInformation(v) => {
                    let v = flag(v, name)?;
                    set_once(&mut p.request_problem_information, v, name, PACKET)?
                }
                Property::UserProperty(k, v) => p.user_properties.push((k, v)),
                Property::AuthenticationMethod(v) => {
                    set_once(&mut p.authentication_method, v, name, PACKET)?
                }
                Property::AuthenticationData(v) => {
                    set_once(&mut p.authentication_data, v, name, PACKET)?
                }
                _ => return Err(not_allowed(name, PACKET)),
            }
        }
        if p.authentication_data.is_some() && p.authentication_method.is_none() {
            return Err(protocol(
                "Authentication Data without an Authentication Method in CONNECT",
            ));
        }
        Ok(p)
    }
}

impl EmitProperties for ConnectProperties {
    fn emit(&self, e: &mut Emitter<'_>) {
        e.u32(id::SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        e.u16(id::RECEIVE_MAXIMUM, self.receive_maximum);
        e.u32(id::MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        e.u16(id::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        let rri = self.request_response_information;
        e.flag(id::REQUEST_RESPONSE_INFORMATION, rri);
        e.flag(
            id::REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        );
        e.user(&self.user_properties);
        let method = self.authentication_method.as_deref();
        e.str(id::AUTHENTICATION_METHOD, method, "Authentication Method");
        let data = self.authentication_data.as_deref();
        e.bin(id::AUTHENTICATION_DATA, data, "Authentication Data");
    }
}

/// The MQTT 5 properties of a will message (section 3.1.3.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WillProperties {
    /// Seconds to wait after the connection drops before publishing.
    pub will_delay_interval: Option<u32>,
    /// Whether the will payload is UTF-8 text.
    pub payload_format: Option<PayloadFormat>,
    /// Lifetime of the will message in seconds.
    pub message_expiry_interval: Option<u32>,
    /// MIME type or other description of the payload.
    pub content_type: Option<String>,
    /// Response topic of the will message; a topic name.
    pub response_topic: Option<TopicName>,
    /// Correlation data of the will message.
    pub correlation_data: Option<Bytes>,
    /// User Properties, in order.
    pub user_properties: UserProperties,
}

impl WillProperties {
    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut block = block(r)?;
        let mut p = Self::default();
        while let Some(prop) = Property::next(&mut block)? {
            let name = prop.name();
            match prop {
                Property::WillDelayInterval(v) => {
                    set_once(&mut p.will_delay_interval, v, name, WILL)?
                }
                Property::PayloadFormatIndicator(v) => set_once(
                    &mut p.payload_format,
                    PayloadFormat::from_byte(v)?,
                    name,
                    WILL,
                )?,
                Property::MessageExpiryInterval(v) => {
                    set_once(&mut p.message_expiry_interval, v, name, WILL)?
                }
                Property::ContentType(v) => set_once(&mut p.content_type, v, name, WILL)?,
                Property::ResponseTopic(v) => {
                    set_once(&mut p.response_topic, response_topic(v)?, name, WILL)?
                }
                Property::CorrelationData(v) => set_once(&mut p.correlation_data, v, name, WILL)?,
                Property::UserProperty(k, v) => p.user_properties.push((k, v)),
                _ => return Err(not_allowed(name, WILL)),
            }
        }
        Ok(p)
    }
}

impl EmitProperties for WillProperties {
    fn emit(&self, e: &mut Emitter<'_>) {
        e.u32(id::WILL_DELAY_INTERVAL, self.will_delay_interval);
        let format = self.payload_format.map(|f| f as u8);
        e.u8(id::PAYLOAD_FORMAT_INDICATOR, format);
        e.u32(id::MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        e.str(
            id::CONTENT_TYPE,
            self.content_type.as_deref(),
            "Content Type",
        );
        let topic = self.response_topic.as_ref().map(TopicName::as_str);
        e.str(id::RESPONSE_TOPIC, topic, "Response Topic");
        let data = self.correlation_data.as_deref();
        e.bin(id::CORRELATION_DATA, data, "Correlation Data");
        e.user(&self.user_properties);
    }
}

/// The will message published if the connection ends without a normal
/// DISCONNECT (section 3.1.2.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    /// Where the will goes.
    pub topic: TopicName,
    /// The will message, zero-copy from the read buffer.
    pub payload: Bytes,
    /// QoS to publish it with.
    pub qos: QoS,
    /// Whether to publish it retained.
    pub retain: bool,
    /// MQTT 5 will properties.
    pub properties: WillProperties,
}

/// A CONNECT packet. Its `Debug` output hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Connect {
    /// The version the client speaks, from protocol name and level.
    pub version: ProtocolVersion,
    /// The client identifier; may be empty (the session decides).
    pub client_id: String,
    /// Clean Start (5.0) or Clean Session (3.1, 3.1.1).
    pub clean_start: bool,
    /// Keep Alive in seconds; 0 disables it.
    pub keep_alive: u16,
    /// MQTT 5 properties; empty before 5.0.
    pub properties: ConnectProperties,
    /// The will, when the Will Flag is set.
    pub will: Option<LastWill>,
    /// User Name, when its flag is set.
    pub username: Option<String>,
    /// Password, when its flag is set; binary data.
    pub password: Option<Bytes>,
}

impl fmt::Debug for Connect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connect")
            .field("version", &self.version)
            .field("client_id", &self.client_id)
            .field("clean_start", &self.clean_start)
            .field("keep_alive", &self.keep_alive)
            .field("properties", &self.properties)
            .field("will", &self.will)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Connect {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let name = r.string("protocol name")?;
        let level = r.u8("protocol level")?;
        let version = match (name.as_str(), level) {
            ("MQIsdp", 3) => ProtocolVersion::V3_1,
            ("MQTT", 4) => ProtocolVersion::V3_1_1,
            ("MQTT", 5) => ProtocolVersion::V5,
            ("MQTT" | "MQIsdp", level) => {
                return Err(DecodeError::UnsupportedProtocolVersion(level));
            }
            _ => return Err(DecodeError::BadProtocolName),
        };
        let flags = r.u8("connect flags")?;
        if flags & 0x01 != 0 {
            return Err(malformed("CONNECT reserved flag is 1 [MQTT-3.1.2-3]"));
        }
        let will_flag = flags & 0x04 != 0;
        let will_retain = flags & 0x20 != 0;
        let (password_flag, username_flag) = (flags & 0x40 != 0, flags & 0x80 != 0);
        let will_qos = (flags >> 3) & 0b11;
        if !will_flag && will_qos != 0 {
            return Err(malformed("Will QoS without Will Flag [MQTT-3.1.2-11]"));
        }
        if !will_flag && will_retain {
            return Err(malformed("Will Retain without Will Flag [MQTT-3.1.2-13]"));
        }
        let will_qos =
            QoS::from_u8(will_qos).ok_or_else(|| malformed("Will QoS 3 [MQTT-3.1.2-12]"))?;
        if password_flag && !username_flag && !version.is_v5() {
            return Err(malformed("password without user name [MQTT-3.1.2-22]"));
        }
        let keep_alive = r.u16("keep alive")?;
        let properties = if version.is_v5() {
            ConnectProperties::read(r)?
        } else {
            ConnectProperties::default()
        };
        let client_id = r.string("client identifier")?;
        let will = if will_flag {
            let properties = if version.is_v5() {
                WillProperties::read(r)?
            } else {
                WillProperties::default()
            };
            let topic = TopicName::new(r.string("will topic")?)
                .map_err(|e| malformed(format!("will topic: {e}")))?;
            let payload = r.binary("will payload")?;
            Some(LastWill {
                topic,
                payload,
                qos: will_qos,
                retain: will_retain,
                properties,
            })
        } else {
            None
        };
        let username = username_flag.then(|| r.string("user name")).transpose()?;
        let password = password_flag.then(|| r.binary("password")).transpose()?;
        Ok(Self {
            version,
            client_id,
            clean_start: flags & 0x02 != 0,
            keep_alive,
            properties,
            will,
            username,
            password,
        })
    }

    pub(crate) fn len(&self) -> Result<usize, EncodeError> {
        let v5 = self.version.is_v5();
        let name = self.version.protocol_name();
        let mut len = str_len(name, "protocol name")? + 1 + 1 + 2;
        if v5 {
            len += properties_len(&self.properties)?;
        }
        len += str_len(&self.client_id, "client identifier")?;
        if let Some(will) = &self.will {
            if will.topic.is_empty() {
                return Err(EncodeError::Invalid("empty will topic"));
            }
            if v5 {
                len += properties_len(&will.properties)?;
            }
            len += str_len(will.topic.as_str(), "will topic")?;
            len += bin_len(&will.payload, "will payload")?;
        }
        if let Some(user) = &self.username {
            len += str_len(user, "user name")?;
        } else if self.password.is_some() && !v5 {
            return Err(EncodeError::Invalid(
                "password without user name before MQTT 5",
            ));
        }
        if let Some(password) = &self.password {
            len += bin_len(password, "password")?;
        }
        Ok(len)
    }

    fn flags(&self) -> u8 {
        let mut flags = u8::from(self.clean_start) << 1;
        if let Some(will) = &self.will {
            flags |= 0x04 | ((will.qos as u8) << 3) | (u8::from(will.retain) << 5);
        }
        flags |= u8::from(self.password.is_some()) << 6;
        flags | (u8::from(self.username.is_some()) << 7)
    }

    pub(crate) fn write(&self, out: &mut BytesMut) {
        let v5 = self.version.is_v5();
        put_str(out, self.version.protocol_name());
        out.put_u8(self.version.level());
        out.put_u8(self.flags());
        out.put_u16(self.keep_alive);
        if v5 {
            write_properties(&self.properties, out);
        }
        put_str(out, &self.client_id);
        if let Some(will) = &self.will {
            if v5 {
                write_properties(&will.properties, out);
            }
            put_str(out, will.topic.as_str());
            put_bin(out, &will.payload);
        }
        if let Some(user) = &self.username {
            put_str(out, user);
        }
        if let Some(password) = &self.password {
            put_bin(out, password);
        }
    }
}
