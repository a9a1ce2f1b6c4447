//! PUBLISH (MQTT 5 section 3.3; 3.1.1 section 3.3): an application
//! message. Fixed-header flags carry DUP, QoS and RETAIN; QoS 3 is
//! malformed [MQTT-3.3.1-4] and so is DUP on QoS 0 [MQTT-3.3.1-2]. The
//! topic name has no wildcard [MQTT-3.3.2-2]; in MQTT 5 it may be empty
//! when a Topic Alias stands for it (section 3.3.2.3.4), which the session
//! resolves. A packet identifier follows only for QoS 1 and 2, and is not
//! 0 [MQTT-2.2.1-3]. The payload is everything left, kept as a zero-copy
//! slice of the read buffer.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{DecodeError, EncodeError, malformed, protocol};
use super::properties::{
    EmitProperties, Emitter, Property, UserProperties, block, id, nonzero, not_allowed,
    properties_len, set_once, write_properties,
};
use super::topic::TopicName;
use super::wire::{Reader, put_str, str_len};
use super::{ProtocolVersion, QoS};

const PACKET: &str = "PUBLISH";

/// The Payload Format Indicator (section 3.3.2.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadFormat {
    /// 0: unspecified bytes.
    Unspecified = 0,
    /// 1: UTF-8 encoded character data.
    Utf8 = 1,
}

impl PayloadFormat {
    pub(crate) fn from_byte(value: u8) -> Result<Self, DecodeError> {
        match value {
            0 => Ok(Self::Unspecified),
            1 => Ok(Self::Utf8),
            _ => Err(protocol(format!(
                "Payload Format Indicator must be 0 or 1, not {value}"
            ))),
        }
    }
}

/// The MQTT 5 properties of a PUBLISH (section 3.3.2.3). The same set
/// minus Topic Alias and Subscription Identifier describes a will message
/// (see [`super::WillProperties`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishProperties {
    /// Whether the payload is UTF-8 text; forwarded unaltered [MQTT-3.3.2-4].
    pub payload_format: Option<PayloadFormat>,
    /// Lifetime of the message in seconds; the server forwards what is left
    /// of it [MQTT-3.3.2-6].
    pub message_expiry_interval: Option<u32>,
    /// Stands for the topic name on this connection; never 0 [MQTT-3.3.2-8].
    pub topic_alias: Option<u16>,
    /// Where a responder should publish its answer; a topic name
    /// [MQTT-3.3.2-14].
    pub response_topic: Option<TopicName>,
    /// Lets a requester match a response to its request.
    pub correlation_data: Option<Bytes>,
    /// User Properties, forwarded in order [MQTT-3.3.2-18].
    pub user_properties: UserProperties,
    /// Identifiers of the subscriptions this delivery matched (server to
    /// client only [MQTT-3.3.4-6]); each 1..=268,435,455; may repeat.
    pub subscription_identifiers: Vec<u32>,
    /// MIME type or other description of the payload.
    pub content_type: Option<String>,
}

impl PublishProperties {
    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut block = block(r)?;
        let mut p = Self::default();
        while let Some(prop) = Property::next(&mut block)? {
            let name = prop.name();
            match prop {
                Property::PayloadFormatIndicator(v) => set_once(
                    &mut p.payload_format,
                    PayloadFormat::from_byte(v)?,
                    name,
                    PACKET,
                )?,
                Property::MessageExpiryInterval(v) => {
                    set_once(&mut p.message_expiry_interval, v, name, PACKET)?
                }
                Property::TopicAlias(v) => {
                    set_once(&mut p.topic_alias, nonzero(v, name)?, name, PACKET)?
                }
                Property::ResponseTopic(v) => {
                    set_once(&mut p.response_topic, response_topic(v)?, name, PACKET)?
                }
                Property::CorrelationData(v) => set_once(&mut p.correlation_data, v, name, PACKET)?,
                Property::UserProperty(k, v) => p.user_properties.push((k, v)),
                Property::SubscriptionIdentifier(v) => {
                    p.subscription_identifiers.push(nonzero(v, name)?)
                }
                Property::ContentType(v) => set_once(&mut p.content_type, v, name, PACKET)?,
                _ => return Err(not_allowed(name, PACKET)),
            }
        }
        Ok(p)
    }
}

/// Checks a Response Topic: a topic name without wildcards [MQTT-3.3.2-14].
pub(crate) fn response_topic(value: String) -> Result<TopicName, DecodeError> {
    TopicName::new(value).map_err(|e| malformed(format!("Response Topic: {e}")))
}

impl EmitProperties for PublishProperties {
    fn emit(&self, e: &mut Emitter<'_>) {
        e.u8(
            id::PAYLOAD_FORMAT_INDICATOR,
            self.payload_format.map(|f| f as u8),
        );
        e.u32(id::MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        e.u16(id::TOPIC_ALIAS, self.topic_alias);
        let topic = self.response_topic.as_ref().map(TopicName::as_str);
        e.str(id::RESPONSE_TOPIC, topic, "Response Topic");
        let data = self.correlation_data.as_deref();
        e.bin(id::CORRELATION_DATA, data, "Correlation Data");
        e.user(&self.user_properties);
        for &sid in &self.subscription_identifiers {
            e.varint(id::SUBSCRIPTION_IDENTIFIER, sid);
        }
        e.str(
            id::CONTENT_TYPE,
            self.content_type.as_deref(),
            "Content Type",
        );
    }
}

/// A PUBLISH packet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Publish {
    /// A redelivery of an earlier attempt [MQTT-3.3.1-1]; always false at
    /// QoS 0.
    pub dup: bool,
    /// Delivery guarantee.
    pub qos: QoS,
    /// Whether the message is (client to server) or was (server to client)
    /// retained.
    pub retain: bool,
    /// Where the message goes; empty only with an MQTT 5 Topic Alias.
    pub topic: TopicName,
    /// Present exactly when `qos` is 1 or 2.
    pub packet_id: Option<u16>,
    /// MQTT 5 properties; empty before 5.0.
    pub properties: PublishProperties,
    /// The application message, a zero-copy slice of the read buffer.
    pub payload: Bytes,
}

impl Publish {
    pub(crate) fn read(r: &mut Reader, flags: u8, v: ProtocolVersion) -> Result<Self, DecodeError> {
        let dup = flags & 0b1000 != 0;
        let retain = flags & 0b0001 != 0;
        let qos = QoS::from_u8((flags >> 1) & 0b11)
            .ok_or_else(|| malformed("PUBLISH with QoS 3 [MQTT-3.3.1-4]"))?;
        if dup && qos == QoS::AtMostOnce {
            return Err(malformed("DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2]"));
        }
        let topic = r.string("topic name")?;
        let packet_id = match qos {
            QoS::AtMostOnce => None,
            _ => Some(r.packet_id()?),
        };
        let properties = if v.is_v5() {
            PublishProperties::read(r)?
        } else {
            PublishProperties::default()
        };
        let topic = if !topic.is_empty() {
            TopicName::new(topic).map_err(|e| malformed(format!("topic name: {e}")))?
        } else if !v.is_v5() {
            return Err(malformed("empty topic name [MQTT-4.7.3-1]"));
        } else if properties.topic_alias.is_none() {
            return Err(protocol("empty topic name without a Topic Alias"));
        } else {
            TopicName::empty()
        };
        Ok(Self {
            dup,
            qos,
            retain,
            topic,
            packet_id,
            properties,
            payload: r.rest(),
        })
    }

    /// The fixed-header flags: DUP, QoS, RETAIN.
    pub(crate) fn flags(&self) -> u8 {
        (u8::from(self.dup) << 3) | ((self.qos as u8) << 1) | u8::from(self.retain)
    }

    pub(crate) fn len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        let mut len = str_len(self.topic.as_str(), "topic name")?;
        match (self.qos, self.packet_id) {
            (QoS::AtMostOnce, None) if !self.dup => {}
            (QoS::AtMostOnce, _) => {
                return Err(EncodeError::Invalid(
                    "QoS 0 PUBLISH with DUP or a packet identifier",
                ));
            }
            (_, Some(_)) => len += 2,
            (_, None) => {
                return Err(EncodeError::Invalid(
                    "QoS 1 or 2 PUBLISH without a packet identifier",
                ));
            }
        }
        if self.topic.is_empty() && (!v.is_v5() || self.properties.topic_alias.is_none()) {
            return Err(EncodeError::Invalid(
                "empty topic name without a Topic Alias",
            ));
        }
        if v.is_v5() {
            len += properties_len(&self.properties)?;
        }
        Ok(len + self.payload.len())
    }

    pub(crate) fn write(&self, v: ProtocolVersion, out: &mut BytesMut) {
        put_str(out, self.topic.as_str());
        if let Some(id) = self.packet_id {
            out.put_u16(id);
        }
        if v.is_v5() {
            write_properties(&self.properties, out);
        }
        out.put_slice(&self.payload);
    }
}
