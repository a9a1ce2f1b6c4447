//! junction-core: Junction's one message model, shared by every protocol
//! adapter. No sockets, no wire formats.
//!
//! - [`ids`]: newtype ids (messages, queues, connections, consumers, deliveries).
//! - [`value`]: typed header values (the AMQP field-table types).
//! - [`message`]: the immutable [`Message`] and its properties.
//! - [`codec`]: binary encoding of durable records.
//! - [`topic`]: the topic exchange's trie and pattern matching.
//! - [`exchange`]: exchange and binding definitions, headers matching.
//! - [`topology`]: one vhost's exchanges and bindings, and routing.
//! - [`queue`]: one queue's state machine and its declared arguments.
//! - [`consumer`]: consumer specs, credit, deliveries.
//! - [`broker`]: vhosts, the publish and consume paths, recovery, shutdown.
//! - [`retained`]: last-message-per-key, for MQTT.
//! - [`state`]: durable adapter state (MQTT sessions).
//! - [`error`]: the core's error type.
//! - [`Authenticator`]: the seam through which adapters check logins.

pub mod broker;
pub mod codec;
pub mod consumer;
pub mod error;
pub mod exchange;
pub mod ids;
pub mod message;
pub mod queue;
pub mod retained;
pub mod state;
pub mod topic;
pub mod topology;
pub mod value;

pub use broker::{
    Broker, BrokerConfig, BrokerStats, ConnectionGuard, ConsumerHandle, GetOk, Published, Queue,
    QueueInfo, QueueStats,
};
pub use consumer::{ConsumerEvent, ConsumerSpec, Credit, Delivery};
pub use error::CoreError;
pub use exchange::{Binding, Destination, ExchangeDef, ExchangeKind};
pub use ids::{ConnectionId, ConsumerId, DeliveryTag, MessageId, QueueId};
pub use message::{Message, Origin, Properties, Protocol};
pub use queue::args::{Overflow, QueueArgs, QueueDef};
pub use queue::{DeathReason, Settle};
pub use state::StateWrites;
pub use value::{FieldTable, FieldValue};

/// Checks logins for the protocol adapters. The server implements it over
/// its users file, so neither the core nor the adapters know how users are
/// stored.
pub trait Authenticator: Send + Sync + 'static {
    /// Checks a user name and password from `peer`. May be slow (password
    /// hashing): adapters call it on a blocking thread.
    fn authenticate(
        &self,
        user: &str,
        password: &str,
        peer: std::net::IpAddr,
    ) -> Result<(), String>;
    /// Answers without the slow check when it can (a login verified
    /// before, a refusal that needs no hashing); None sends the caller to
    /// [`Authenticator::authenticate`] on a blocking thread.
    fn authenticate_fast(
        &self,
        _user: &str,
        _password: &str,
        _peer: std::net::IpAddr,
    ) -> Option<Result<(), String>> {
        None
    }
    /// Whether `user` may use `vhost`.
    fn may_access(&self, user: &str, vhost: &str) -> bool;
    /// Whether `user` may connect from `peer` at all (checked for logins
    /// without a password too, e.g. MQTT's anonymous user).
    fn may_connect_from(&self, _user: &str, _peer: std::net::IpAddr) -> bool {
        true
    }
}

/// Checks a login: on the caller's task when the authenticator can answer
/// at once, else on a blocking thread. Thousands of clients reconnecting
/// with known credentials then cost no threads.
pub async fn check_login(
    auth: &std::sync::Arc<dyn Authenticator>,
    user: &str,
    password: String,
    peer: std::net::IpAddr,
) -> Result<(), String> {
    if let Some(verdict) = auth.authenticate_fast(user, &password, peer) {
        return verdict;
    }
    let (auth, user) = (std::sync::Arc::clone(auth), user.to_string());
    tokio::task::spawn_blocking(move || auth.authenticate(&user, &password, peer))
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
}
