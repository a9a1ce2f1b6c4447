//! The one message model every adapter converts to and from.
//!
//! A [`Message`] is immutable once published and shared as `Arc<Message>` by
//! every queue it was routed to; its body is a `Bytes` that is never copied
//! between the publishing socket and the consuming sockets.

use bytes::Bytes;

use crate::ids::{ConnectionId, MessageId};
use crate::value::FieldTable;

/// Which protocol a message came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Amqp,
    Mqtt,
    Stomp,
    /// Made by the broker itself: dead-lettered copies, `$SYS` messages, tests.
    Internal,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Amqp => "amqp",
            Protocol::Mqtt => "mqtt",
            Protocol::Stomp => "stomp",
            Protocol::Internal => "internal",
        }
    }
}

/// Where a message came from; MQTT's no-local option needs the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub protocol: Protocol,
    pub connection: ConnectionId,
}

impl Origin {
    pub const INTERNAL: Origin = Origin {
        protocol: Protocol::Internal,
        connection: ConnectionId(0),
    };
}

/// The AMQP 0-9-1 basic properties. MQTT 5 properties and STOMP headers map
/// onto these; whatever has no field goes into `headers` under a documented name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Properties {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub headers: FieldTable,
    /// AMQP delivery-mode as published (1 transient, 2 persistent; None:
    /// not set, which means transient). Only persistent messages routed to
    /// durable queues are written to the store.
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    /// Per-message TTL in milliseconds, as AMQP's `expiration` (a decimal string).
    pub expiration: Option<String>,
    pub message_id: Option<String>,
    /// Seconds since the Unix epoch.
    pub timestamp: Option<u64>,
    /// AMQP `type`.
    pub kind: Option<String>,
    pub user_id: Option<String>,
    pub app_id: Option<String>,
}

impl Properties {
    /// Delivery mode 2: the message is to be stored in durable queues.
    pub fn is_persistent(&self) -> bool {
        self.delivery_mode == Some(2)
    }

    /// The per-message TTL, if `expiration` holds a valid non-negative integer.
    pub fn ttl_millis(&self) -> Option<u64> {
        self.expiration
            .as_deref()
            .and_then(|e| e.parse::<u64>().ok())
    }
}

/// One published message.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// Unique for the life of the store; keys the `messages` column family.
    pub id: MessageId,
    /// The exchange the message was published to ("" is the default exchange).
    pub exchange: String,
    pub routing_key: String,
    pub properties: Properties,
    pub body: Bytes,
    pub origin: Origin,
}

impl Message {
    /// A message with default properties; the broker assigns the id at publish.
    pub fn new(
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
        body: Bytes,
    ) -> Message {
        Message {
            id: MessageId(0),
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            properties: Properties::default(),
            body,
            origin: Origin::INTERNAL,
        }
    }

    pub fn with_properties(mut self, properties: Properties) -> Message {
        self.properties = properties;
        self
    }

    pub fn persistent(mut self) -> Message {
        self.properties.delivery_mode = Some(2);
        self
    }

    /// Approximate memory/bytes accounting for `x-max-length-bytes` (body only, as RabbitMQ).
    pub fn body_len(&self) -> u64 {
        self.body.len() as u64
    }

    /// Memory one queued copy of this message accounts for: the body, the
    /// names and properties it carries, and a fixed overhead for the
    /// message, its queue entry and the index node holding it. An estimate
    /// (headers count at their encoded size), checked against real RSS by
    /// the hostile-input memory test; what the memory alarm sums.
    pub fn footprint(&self) -> u64 {
        /// Message + Arc + Entry + ordered-map slot, rounded up for the
        /// allocator's size classes.
        const PER_MESSAGE: u64 = 512;
        let p = &self.properties;
        let strings = [
            &p.content_type,
            &p.content_encoding,
            &p.correlation_id,
            &p.reply_to,
            &p.expiration,
            &p.message_id,
            &p.kind,
            &p.user_id,
            &p.app_id,
        ]
        .iter()
        .map(|s| s.as_ref().map_or(0, |s| s.len() as u64))
        .sum::<u64>();
        let headers: u64 = p
            .headers
            .0
            .iter()
            .map(|(k, v)| 32 + k.len() as u64 + v.approx_size())
            .sum();
        PER_MESSAGE
            + self.body_len()
            + (self.exchange.len() + self.routing_key.len()) as u64
            + strings
            + headers
    }
}

/// Bodies shorter than this are copied out of the read buffer they arrived
/// in before a queue keeps them (see [`detach_body`]).
pub const COPY_BODIES_BELOW: usize = 64 * 1024;

/// The body to keep for a message read off a socket. A body that is a
/// slice of a read buffer keeps that whole buffer alive as long as the
/// message lives: a 1-byte message could pin 64 KiB, or 16 MiB after a
/// large packet, while the memory alarm counts 1 byte. Small bodies are
/// copied into an allocation of their own; large ones fill most of the
/// buffer they came in, so sharing it costs little.
pub fn detach_body(body: bytes::Bytes) -> bytes::Bytes {
    if body.len() < COPY_BODIES_BELOW {
        bytes::Bytes::copy_from_slice(&body)
    } else {
        body
    }
}
