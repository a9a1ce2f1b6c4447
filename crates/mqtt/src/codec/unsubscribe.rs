//! UNSUBSCRIBE (MQTT 5 section 3.10; 3.1.1 section 3.10): fixed-header
//! flags 0010 [MQTT-3.10.1-1], a packet identifier, MQTT 5 properties
//! (User Properties only), then at least one topic filter [MQTT-3.10.3-2].
//! Filters are checked as filters; the session compares them character by
//! character with the existing subscriptions [MQTT-3.10.4-1].

use bytes::{BufMut, BytesMut};

use super::ProtocolVersion;
use super::error::{DecodeError, EncodeError, malformed, protocol};
use super::properties::{
    EmitProperties, Emitter, Property, UserProperties, block, not_allowed, properties_len,
    write_properties,
};
use super::topic::TopicFilter;
use super::wire::{Reader, put_str, str_len};

const PACKET: &str = "UNSUBSCRIBE";

/// The MQTT 5 properties of UNSUBSCRIBE (section 3.10.2.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnsubscribeProperties {
    /// User Properties, in order.
    pub user_properties: UserProperties,
}

impl UnsubscribeProperties {
    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut block = block(r)?;
        let mut p = Self::default();
        while let Some(prop) = Property::next(&mut block)? {
            match prop {
                Property::UserProperty(k, v) => p.user_properties.push((k, v)),
                other => return Err(not_allowed(other.name(), PACKET)),
            }
        }
        Ok(p)
    }
}

impl EmitProperties for UnsubscribeProperties {
    fn emit(&self, e: &mut Emitter<'_>) {
        e.user(&self.user_properties);
    }
}

/// An UNSUBSCRIBE packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Echoed by the UNSUBACK; non-zero.
    pub packet_id: u16,
    /// MQTT 5 properties; empty before 5.0.
    pub properties: UnsubscribeProperties,
    /// The filters to remove, at least one, in order.
    pub filters: Vec<TopicFilter>,
}

impl Unsubscribe {
    pub(crate) fn read(r: &mut Reader, v: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = r.packet_id()?;
        let properties = if v.is_v5() {
            UnsubscribeProperties::read(r)?
        } else {
            UnsubscribeProperties::default()
        };
        let mut filters = Vec::new();
        while !r.is_empty() {
            let filter = TopicFilter::new(r.string("topic filter")?)
                .map_err(|e| malformed(format!("topic filter: {e}")))?;
            filters.push(filter);
        }
        if filters.is_empty() {
            return Err(protocol(
                "UNSUBSCRIBE without a topic filter [MQTT-3.10.3-2]",
            ));
        }
        Ok(Self {
            packet_id,
            properties,
            filters,
        })
    }

    pub(crate) fn len(&self, v: ProtocolVersion) -> Result<usize, EncodeError> {
        if self.filters.is_empty() {
            return Err(EncodeError::Invalid("UNSUBSCRIBE without a topic filter"));
        }
        let mut len = 2;
        if v.is_v5() {
            len += properties_len(&self.properties)?;
        }
        for f in &self.filters {
            len += str_len(f.as_str(), "topic filter")?;
        }
        Ok(len)
    }

    pub(crate) fn write(&self, v: ProtocolVersion, out: &mut BytesMut) {
        out.put_u16(self.packet_id);
        if v.is_v5() {
            write_properties(&self.properties, out);
        }
        for f in &self.filters {
            put_str(out, f.as_str());
        }
    }
}
