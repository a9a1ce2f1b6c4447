//! junction-mqtt: the MQTT 3.1, 3.1.1 and 5.0 adapter. Devices and clients
//! written for Mosquitto, HiveMQ or EMQX talk to the core through it; their
//! topics live on `amq.topic`, so AMQP and STOMP clients share them.
//!
//! - [`codec`]: pure bytes ⇄ [`codec::Packet`] for every control packet of
//!   all three versions, one module per packet type (no tokio: fuzzed and
//!   benchmarked alone).
//! - [`convert`]: topics and filters to routing keys and patterns, PUBLISH
//!   to and from the core message.
//! - [`session`]: one session's state without I/O (subscriptions, packet
//!   ids, messages in flight, the durable record).
//! - `registry`: client ids to live connections and parked sessions;
//!   takeover, session expiry, delayed wills.
//! - `connection`: the connection task (the only socket code) and
//!   `handlers`: what each packet does.
//! - `sys`: the `$SYS/broker/...` topics.
//! - `context`: settings, the state every connection shares, start-up and
//!   `serve_connection` (the accept loop itself is `junction-server`'s).
//!
//! Everything but the codec sits behind the default feature `adapter`;
//! without it the crate is the codec alone (no tokio, no core), which is
//! what the fuzz targets in `fuzz/` build.
//!
//! See docs/mqtt.md for the mapping, the lifecycles and the known gaps.

pub mod codec;
#[cfg(feature = "adapter")]
mod connection;
#[cfg(feature = "adapter")]
mod context;
#[cfg(feature = "adapter")]
pub mod convert;
#[cfg(feature = "adapter")]
mod handlers;
#[cfg(feature = "adapter")]
mod registry;
#[cfg(feature = "adapter")]
pub mod session;
#[cfg(feature = "adapter")]
mod sys;

#[cfg(feature = "adapter")]
pub use context::{ClientInfo, MqttContext, MqttSettings, serve_connection, start};
