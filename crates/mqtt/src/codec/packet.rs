//! The packet-level vocabulary shared by every module: [`Packet`], its
//! [`PacketType`] (MQTT 5 section 2.1.2, 3.1.1 section 2.2.1), the
//! [`ProtocolVersion`] and [`QoS`].

use std::fmt;

use super::{
    Ack, Auth, ConnAck, Connect, Disconnect, Publish, SubAck, Subscribe, UnsubAck, Unsubscribe,
};

/// The protocol version a connection speaks, fixed by its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQTT 3.1: protocol name "MQIsdp", level 3.
    V3_1,
    /// MQTT 3.1.1: protocol name "MQTT", level 4.
    V3_1_1,
    /// MQTT 5.0: protocol name "MQTT", level 5.
    V5,
}

impl ProtocolVersion {
    /// The Protocol Level byte of CONNECT.
    pub fn level(self) -> u8 {
        match self {
            Self::V3_1 => 3,
            Self::V3_1_1 => 4,
            Self::V5 => 5,
        }
    }

    /// The Protocol Name string of CONNECT.
    pub fn protocol_name(self) -> &'static str {
        match self {
            Self::V3_1 => "MQIsdp",
            Self::V3_1_1 | Self::V5 => "MQTT",
        }
    }

    /// Whether packets carry MQTT 5 properties and reason codes.
    pub fn is_v5(self) -> bool {
        self == Self::V5
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V3_1 => "3.1",
            Self::V3_1_1 => "3.1.1",
            Self::V5 => "5.0",
        })
    }
}

/// Quality of service of a message (section 4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    /// At most once: fire and forget.
    #[default]
    AtMostOnce = 0,
    /// At least once: PUBLISH, PUBACK.
    AtLeastOnce = 1,
    /// Exactly once: PUBLISH, PUBREC, PUBREL, PUBCOMP.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for a two-bit value; `None` for 3, which is malformed.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }
}

/// The control packet types (MQTT 5 table 2-1, 3.1.1 table 2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// 1.
    Connect = 1,
    /// 2.
    ConnAck,
    /// 3.
    Publish,
    /// 4.
    PubAck,
    /// 5.
    PubRec,
    /// 6.
    PubRel,
    /// 7.
    PubComp,
    /// 8.
    Subscribe,
    /// 9.
    SubAck,
    /// 10.
    Unsubscribe,
    /// 11.
    UnsubAck,
    /// 12.
    PingReq,
    /// 13.
    PingResp,
    /// 14.
    Disconnect,
    /// 15, MQTT 5 only.
    Auth,
}

impl PacketType {
    pub(crate) const ALL: [PacketType; 15] = [
        Self::Connect,
        Self::ConnAck,
        Self::Publish,
        Self::PubAck,
        Self::PubRec,
        Self::PubRel,
        Self::PubComp,
        Self::Subscribe,
        Self::SubAck,
        Self::Unsubscribe,
        Self::UnsubAck,
        Self::PingReq,
        Self::PingResp,
        Self::Disconnect,
        Self::Auth,
    ];

    /// The packet's name as the specification writes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Connect => "CONNECT",
            Self::ConnAck => "CONNACK",
            Self::Publish => "PUBLISH",
            Self::PubAck => "PUBACK",
            Self::PubRec => "PUBREC",
            Self::PubRel => "PUBREL",
            Self::PubComp => "PUBCOMP",
            Self::Subscribe => "SUBSCRIBE",
            Self::SubAck => "SUBACK",
            Self::Unsubscribe => "UNSUBSCRIBE",
            Self::UnsubAck => "UNSUBACK",
            Self::PingReq => "PINGREQ",
            Self::PingResp => "PINGRESP",
            Self::Disconnect => "DISCONNECT",
            Self::Auth => "AUTH",
        }
    }

    /// The fixed-header flags every packet but PUBLISH must carry
    /// [MQTT-2.2.2-1]: 0010 for PUBREL, SUBSCRIBE and UNSUBSCRIBE
    /// [MQTT-3.6.1-1] [MQTT-3.8.1-1] [MQTT-3.10.1-1], else 0000.
    pub(crate) fn required_flags(self) -> u8 {
        match self {
            Self::PubRel | Self::Subscribe | Self::Unsubscribe => 0b0010,
            _ => 0,
        }
    }
}

/// One MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// Client opens a session (section 3.1).
    Connect(Connect),
    /// Server answers CONNECT (section 3.2).
    ConnAck(ConnAck),
    /// An application message, either way (section 3.3).
    Publish(Publish),
    /// QoS 1 acknowledgement (section 3.4).
    PubAck(Ack),
    /// QoS 2, first acknowledgement (section 3.5).
    PubRec(Ack),
    /// QoS 2, release (section 3.6).
    PubRel(Ack),
    /// QoS 2, completion (section 3.7).
    PubComp(Ack),
    /// Client subscribes (section 3.8).
    Subscribe(Subscribe),
    /// Server answers SUBSCRIBE (section 3.9).
    SubAck(SubAck),
    /// Client unsubscribes (section 3.10).
    Unsubscribe(Unsubscribe),
    /// Server answers UNSUBSCRIBE (section 3.11).
    UnsubAck(UnsubAck),
    /// Keep-alive probe (section 3.12).
    PingReq,
    /// Keep-alive answer (section 3.13).
    PingResp,
    /// Orderly close, either way (section 3.14).
    Disconnect(Disconnect),
    /// MQTT 5 extended authentication exchange (section 3.15).
    Auth(Auth),
}

impl Packet {
    /// The packet's type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Self::Connect(_) => PacketType::Connect,
            Self::ConnAck(_) => PacketType::ConnAck,
            Self::Publish(_) => PacketType::Publish,
            Self::PubAck(_) => PacketType::PubAck,
            Self::PubRec(_) => PacketType::PubRec,
            Self::PubRel(_) => PacketType::PubRel,
            Self::PubComp(_) => PacketType::PubComp,
            Self::Subscribe(_) => PacketType::Subscribe,
            Self::SubAck(_) => PacketType::SubAck,
            Self::Unsubscribe(_) => PacketType::Unsubscribe,
            Self::UnsubAck(_) => PacketType::UnsubAck,
            Self::PingReq => PacketType::PingReq,
            Self::PingResp => PacketType::PingResp,
            Self::Disconnect(_) => PacketType::Disconnect,
            Self::Auth(_) => PacketType::Auth,
        }
    }
}
