//! SUBSCRIBE (MQTT 5 section 3.8; 3.1.1 section 3.8): fixed-header flags
//! 0010 [MQTT-3.8.1-1], a packet identifier, MQTT 5 properties (one
//! Subscription Identifier, User Properties), then at least one topic
//! filter with its options [MQTT-3.8.3-2] (3.1.1: [MQTT-3.8.3-3]).
//!
//! The options byte holds the maximum QoS (3 is malformed) and, in 5.0, No
//! Local, Retain As Published and Retain Handling (3 is a protocol error);
//! reserved bits must be 0 [MQTT-3.8.3-5] (3.1.1: bits 2-7,
//! [MQTT-3-8.3-4]). In 5.0 a `$share/` filter must be well formed
//! [MQTT-4.8.2-1] [MQTT-4.8.2-2] and must not set No Local [MQTT-3.8.3-4].

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError, malformed, protocol};
use super::properties::{
    EmitProperties, Emitter, Property, UserProperties, block, id, nonzero, not_allowed,
    properties_len, set_once, write_properties,
};
use super::topic::TopicFilter;
use super::wire::{Reader, put_str, str_len};
use super::{ProtocolVersion, QoS};

const PACKET: &str = "SUBSCRIBE";

/// When retained messages are sent for a new subscription (section
/// 3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// 0: send retained messages at subscribe time [MQTT-3.3.1-9].
    #[default]
    SendAtSubscribe = 0,
    /// 1: send them only if the subscription did not exist [MQTT-3.3.1-10].
    SendAtSubscribeIfNew = 1,
    /// 2: do not send them at subscribe time [MQTT-3.3.1-11].
    DoNotSend = 2,
}

/// The options byte of one subscription (section 3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS the client accepts on this subscription.
    pub qos: QoS,
    /// MQTT 5: do not deliver the client's own publications back to it
    /// [MQTT-3.8.3-3].
    pub no_local: bool,
    /// MQTT 5: keep the RETAIN flag as published when forwarding
    /// [MQTT-3.3.1-12] [MQTT-3.3.1-13].
    pub retain_as_published: bool,
    /// MQTT 5: when to send retained messages.
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    /// Options with QoS `qos` and every MQTT 5 option at its default.
    pub fn new(qos: QoS) -> Self {
        Self {
            qos,
            ..Self::default()
        }
    }

    fn from_byte(byte: u8, v: ProtocolVersion) -> Result<Self, DecodeError> {
        let reserved = if v.is_v5() { 0xC0 } else { 0xFC };
        if byte & reserved != 0 {
            return Err(malformed(
                "reserved bits of subscription options are not 0 [MQTT-3.8.3-5]",
            ));
        }
        let qos = QoS::from_u8(byte & 0b11)
            .ok_or_else(|| malformed("subscription with QoS 3 [MQTT-3-8.3-4]"))?;
        let retain_handling = match (byte >> 4) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendAtSubscribeIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(protocol("Retain Handling 3")),
        };
        Ok(Self {
            qos,
            no_local: byte & 0x04 != 0,
            retain_as_published: byte & 0x08 != 0,
            retain_handling,
        })
    }

    fn to_byte(self, v: ProtocolVersion) -> u8 {
        let qos = self.qos as u8;
        if !v.is_v5() {
            return qos;
        }
        qos | (u8::from(self.no_local) << 2)
            | (u8::from(self.retain_as_published) << 3)
            | ((self.retain_handling as u8) << 4)
    }
}

/// One topic filter of a SUBSCRIBE with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// What to subscribe to.
    pub filter: TopicFilter,
    /// How.
    pub options: SubscriptionOptions,
}

/// The MQTT 5 properties of SUBSCRIBE (section 3.8.2.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeProperties {
    /// Tagged onto every message delivered through these subscriptions;
    /// 1..=268,435,455.
    pub subscription_identifier: Option<u32>,
    /// User Properties, in order.
    pub user_properties: UserProperties,
}

impl SubscribeProperties {
    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut block = block(r)?;
        let mut p = Self::default();
        while let Some(prop) = Property::next(&mut block)? {
            let name = prop.name();
            match prop {
                Property::SubscriptionIdentifier(v) => set_once(
                    &mut p.subscription_identifier,
                    nonzero(v, name)?,
                    name,
                    PACKET,
                )?,
                Property::UserProperty(k, v) => p.user_properties.push((k, v)),
                _ => return Err(not_allowed(name, PACKET)),
            }
        }
        Ok(p)
    }
}

impl EmitProperties for SubscribeProperties {
    fn emit(&self, e: &mut Emitter<'_>) {
        if let Some(sid) = self.subscription_identifier {
            e.varint(id::SUBSCRIPTION_IDENTIFIER, sid);
        }
        e.user(&self.user_properties);
    }
}

/// A SUBSCRIBE packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Echoed by the SUBACK; non-zero.
    pub packet_id: u16,
    /// MQTT 5 properties; empty before 5.0.
    pub properties: SubscribeProperties,
    /// The filters, at least one, in order.
    pub subscriptions: Vec<Subscription>,
}

impl Subscribe {
    pub(crate) fn read(r: &mut Reader, v: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = r.packet_id()?;
        let properties = if v.is_v5() {
            SubscribeProperties::read(r)?
        } else {
            SubscribeProperties::default()
        };
        let mut subscriptions = Vec::new();
        while !r.is_empty() {
            let filter = TopicFilter::new(r.string("topic filter")?)
                .map_err(|e| malformed(format!("topic filter: {e}")))?;
            let options = SubscriptionOptions::from_byte(r.u8("subscription options")?, v)?;
            if v.is_v5() {
                let shared = filter
                    .shared()
                    .map_err(|e| malformed(format!("topic filter: {e}")))?;
                if shared.is_some() && options.no_local {
                    return Err(protocol("No Local on a shared subscription [MQTT-3.8.3-4]"));
                }
            }
            subscriptions.push(Subscription { filter, options });
        }
        if subscriptions.is_empty() {
            return Err(protocol("SUBSCRIBE without a topic filter [MQTT-3.8.3-2]"));
        }
        Ok(Self {
            packet_id,
            properties,
            subscriptions,
        })
    }

    pub(crate) fn len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        if self.subscriptions.is_empty() {
            return Err(EncodeError::Invalid("SUBSCRIBE without a topic filter"));
        }
        let mut len = 2;
        if v.is_v5() {
            len += properties_len(&self.properties)?;
        }
        for s in &self.subscriptions {
            len += str_len(s.filter.as_str(), "topic filter")? + 1;
        }
        Ok(len)
    }

    pub(crate) fn write(&self, v: ProtocolVersion, out: &mut BytesMut) {
        out.put_u16(self.packet_id);
        if v.is_v5() {
            write_properties(&self.properties, out);
        }
        for s in &self.subscriptions {
            put_str(out, s.filter.as_str());
            out.put_u8(s.options.to_byte(v));
        }
    }
}
