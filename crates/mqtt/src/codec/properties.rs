//! MQTT 5 properties (section 2.2.2, table 2-4): the typed [`Property`]
//! read off the wire, the helpers each packet module uses to fill its own
//! typed property struct (`PublishProperties`, `ConnectProperties`...), and
//! the crate-private `emit` module that measures and writes them.
//!
//! Rules enforced here and by the packet modules:
//!
//! - an identifier the specification does not define, or one not valid for
//!   the packet type, makes the packet malformed (section 2.2.2.2: "A
//!   Control Packet which contains an Identifier which is not valid for its
//!   packet type ... is a Malformed Packet");
//! - a property repeated where it may appear only once is a protocol error
//!   (stated property by property: "It is a Protocol Error to include the
//!   ... more than once"); only User Property, and Subscription Identifier
//!   in PUBLISH, may repeat;
//! - a value outside its range (a 0/1 byte that is neither, a zero Receive
//!   Maximum, Topic Alias or Subscription Identifier...) is a protocol
//!   error, as each property's section says.

use bytes::Bytes;

use super::error::{DecodeError, malformed, protocol};
use super::wire::Reader;

mod emit;

pub(crate) use emit::{EmitProperties, Emitter, properties_len, write_properties};

/// Property identifiers (table 2-4).
pub(crate) mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// One property as read off the wire, its value typed by its identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Property {
    /// 0x01, byte: 0 unspecified bytes, 1 UTF-8 payload.
    PayloadFormatIndicator(u8),
    /// 0x02, seconds.
    MessageExpiryInterval(u32),
    /// 0x03, MIME type of the payload.
    ContentType(String),
    /// 0x08, topic name for a response.
    ResponseTopic(String),
    /// 0x09, opaque request/response correlation.
    CorrelationData(Bytes),
    /// 0x0B, Variable Byte Integer 1..=268,435,455.
    SubscriptionIdentifier(u32),
    /// 0x11, seconds.
    SessionExpiryInterval(u32),
    /// 0x12, the client id the server chose.
    AssignedClientIdentifier(String),
    /// 0x13, seconds.
    ServerKeepAlive(u16),
    /// 0x15, name of the extended authentication method.
    AuthenticationMethod(String),
    /// 0x16, method-specific data.
    AuthenticationData(Bytes),
    /// 0x17, byte 0 or 1.
    RequestProblemInformation(u8),
    /// 0x18, seconds.
    WillDelayInterval(u32),
    /// 0x19, byte 0 or 1.
    RequestResponseInformation(u8),
    /// 0x1A, basis for response topics.
    ResponseInformation(String),
    /// 0x1C, another server to use.
    ServerReference(String),
    /// 0x1F, human-readable diagnostic.
    ReasonString(String),
    /// 0x21, non-zero.
    ReceiveMaximum(u16),
    /// 0x22.
    TopicAliasMaximum(u16),
    /// 0x23, non-zero.
    TopicAlias(u16),
    /// 0x24, byte 0 or 1.
    MaximumQos(u8),
    /// 0x25, byte 0 or 1.
    RetainAvailable(u8),
    /// 0x26, name and value; may repeat, order kept.
    UserProperty(String, String),
    /// 0x27, non-zero.
    MaximumPacketSize(u32),
    /// 0x28, byte 0 or 1.
    WildcardSubscriptionAvailable(u8),
    /// 0x29, byte 0 or 1.
    SubscriptionIdentifierAvailable(u8),
    /// 0x2A, byte 0 or 1.
    SharedSubscriptionAvailable(u8),
}

impl Property {
    /// The specification's name, for error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::PayloadFormatIndicator(_) => "Payload Format Indicator",
            Self::MessageExpiryInterval(_) => "Message Expiry Interval",
            Self::ContentType(_) => "Content Type",
            Self::ResponseTopic(_) => "Response Topic",
            Self::CorrelationData(_) => "Correlation Data",
            Self::SubscriptionIdentifier(_) => "Subscription Identifier",
            Self::SessionExpiryInterval(_) => "Session Expiry Interval",
            Self::AssignedClientIdentifier(_) => "Assigned Client Identifier",
            Self::ServerKeepAlive(_) => "Server Keep Alive",
            Self::AuthenticationMethod(_) => "Authentication Method",
            Self::AuthenticationData(_) => "Authentication Data",
            Self::RequestProblemInformation(_) => "Request Problem Information",
            Self::WillDelayInterval(_) => "Will Delay Interval",
            Self::RequestResponseInformation(_) => "Request Response Information",
            Self::ResponseInformation(_) => "Response Information",
            Self::ServerReference(_) => "Server Reference",
            Self::ReasonString(_) => "Reason String",
            Self::ReceiveMaximum(_) => "Receive Maximum",
            Self::TopicAliasMaximum(_) => "Topic Alias Maximum",
            Self::TopicAlias(_) => "Topic Alias",
            Self::MaximumQos(_) => "Maximum QoS",
            Self::RetainAvailable(_) => "Retain Available",
            Self::UserProperty(..) => "User Property",
            Self::MaximumPacketSize(_) => "Maximum Packet Size",
            Self::WildcardSubscriptionAvailable(_) => "Wildcard Subscription Available",
            Self::SubscriptionIdentifierAvailable(_) => "Subscription Identifier Available",
            Self::SharedSubscriptionAvailable(_) => "Shared Subscription Available",
        }
    }

    /// Reads one property from a property block; `None` at the block's end.
    pub(crate) fn next(block: &mut Reader) -> Result<Option<Self>, DecodeError> {
        if block.is_empty() {
            return Ok(None);
        }
        let ident = block.varint("property identifier")?;
        let id = u8::try_from(ident)
            .map_err(|_| malformed(format!("unknown property identifier {ident:#x}")))?;
        let r = block;
        Ok(Some(match id {
            id::PAYLOAD_FORMAT_INDICATOR => Self::PayloadFormatIndicator(r.u8("property")?),
            id::MESSAGE_EXPIRY_INTERVAL => Self::MessageExpiryInterval(r.u32("property")?),
            id::CONTENT_TYPE => Self::ContentType(r.string("Content Type")?),
            id::RESPONSE_TOPIC => Self::ResponseTopic(r.string("Response Topic")?),
            id::CORRELATION_DATA => Self::CorrelationData(r.binary("property")?),
            id::SUBSCRIPTION_IDENTIFIER => {
                Self::SubscriptionIdentifier(r.varint("Subscription Identifier")?)
            }
            id::SESSION_EXPIRY_INTERVAL => Self::SessionExpiryInterval(r.u32("property")?),
            id::ASSIGNED_CLIENT_IDENTIFIER => {
                Self::AssignedClientIdentifier(r.string("Assigned Client Identifier")?)
            }
            id::SERVER_KEEP_ALIVE => Self::ServerKeepAlive(r.u16("property")?),
            id::AUTHENTICATION_METHOD => {
                Self::AuthenticationMethod(r.string("Authentication Method")?)
            }
            id::AUTHENTICATION_DATA => Self::AuthenticationData(r.binary("property")?),
            id::REQUEST_PROBLEM_INFORMATION => Self::RequestProblemInformation(r.u8("property")?),
            id::WILL_DELAY_INTERVAL => Self::WillDelayInterval(r.u32("property")?),
            id::REQUEST_RESPONSE_INFORMATION => Self::RequestResponseInformation(r.u8("property")?),
            id::RESPONSE_INFORMATION => {
                Self::ResponseInformation(r.string("Response Information")?)
            }
            id::SERVER_REFERENCE => Self::ServerReference(r.string("Server Reference")?),
            id::REASON_STRING => Self::ReasonString(r.string("Reason String")?),
            id::RECEIVE_MAXIMUM => Self::ReceiveMaximum(r.u16("property")?),
            id::TOPIC_ALIAS_MAXIMUM => Self::TopicAliasMaximum(r.u16("property")?),
            id::TOPIC_ALIAS => Self::TopicAlias(r.u16("property")?),
            id::MAXIMUM_QOS => Self::MaximumQos(r.u8("property")?),
            id::RETAIN_AVAILABLE => Self::RetainAvailable(r.u8("property")?),
            id::USER_PROPERTY => Self::UserProperty(
                r.string("User Property name")?,
                r.string("User Property value")?,
            ),
            id::MAXIMUM_PACKET_SIZE => Self::MaximumPacketSize(r.u32("property")?),
            id::WILDCARD_SUBSCRIPTION_AVAILABLE => {
                Self::WildcardSubscriptionAvailable(r.u8("property")?)
            }
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                Self::SubscriptionIdentifierAvailable(r.u8("property")?)
            }
            id::SHARED_SUBSCRIPTION_AVAILABLE => {
                Self::SharedSubscriptionAvailable(r.u8("property")?)
            }
            other => return Err(malformed(format!("unknown property identifier {other:#x}"))),
        }))
    }
}

/// Reads a Property Length and returns the property block as its own
/// reader.
pub(crate) fn block(r: &mut Reader) -> Result<Reader, DecodeError> {
    let len = r.varint("property length")?;
    let len = usize::try_from(len).map_err(|_| malformed("property length out of range"))?;
    Ok(Reader::new(r.take(len, "properties")?))
}

/// Stores a property that may appear at most once in `packet`.
pub(crate) fn set_once<T>(
    slot: &mut Option<T>,
    value: T,
    name: &str,
    packet: &str,
) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(protocol(format!(
            "{name} appears more than once in {packet}"
        )));
    }
    *slot = Some(value);
    Ok(())
}

/// The error for a property that `packet` may not carry: malformed
/// (section 2.2.2.2).
pub(crate) fn not_allowed(name: &str, packet: &str) -> DecodeError {
    malformed(format!("{name} is not valid in {packet}"))
}

/// A byte property whose value must be 0 or 1.
pub(crate) fn flag(value: u8, name: &str) -> Result<bool, DecodeError> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(protocol(format!("{name} must be 0 or 1, not {value}"))),
    }
}

/// A property whose value must not be zero.
pub(crate) fn nonzero<T: PartialEq + Default>(value: T, name: &str) -> Result<T, DecodeError> {
    if value == T::default() {
        return Err(protocol(format!("{name} must not be 0")));
    }
    Ok(value)
}

/// User Properties: name/value pairs, in order; a name may repeat
/// (section 3.1.2.11.8).
pub type UserProperties = Vec<(String, String)>;

/// Properties of the acknowledgements and of SUBACK/UNSUBACK: a Reason
/// String and User Properties (sections 3.4.2.2, 3.5.2.2, 3.6.2.2,
/// 3.7.2.2, 3.9.2.1, 3.11.2.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReasonProperties {
    /// Human-readable diagnostic; not to be parsed by the receiver.
    pub reason_string: Option<String>,
    /// User Properties, in order.
    pub user_properties: UserProperties,
}

impl ReasonProperties {
    /// Reads the property block of `packet`.
    pub(crate) fn read(r: &mut Reader, packet: &str) -> Result<Self, DecodeError> {
        let mut block = block(r)?;
        let mut p = Self::default();
        while let Some(prop) = Property::next(&mut block)? {
            let name = prop.name();
            match prop {
                Property::ReasonString(v) => set_once(&mut p.reason_string, v, name, packet)?,
                Property::UserProperty(k, v) => p.user_properties.push((k, v)),
                _ => return Err(not_allowed(name, packet)),
            }
        }
        Ok(p)
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.reason_string.is_none() && self.user_properties.is_empty()
    }
}

impl EmitProperties for ReasonProperties {
    fn emit(&self, e: &mut Emitter<'_>) {
        e.str(
            id::REASON_STRING,
            self.reason_string.as_deref(),
            "Reason String",
        );
        e.user(&self.user_properties);
    }
}
