//! junction-stomp: the STOMP 1.0, 1.1 and 1.2 adapter. Script authors'
//! clients (stomp.py, stomp.js, Ruby's stomp gem, a shell with netcat) talk
//! to the core through it; `/queue/...`, `/topic/...` and `/exchange/...`
//! destinations map onto the same exchanges and queues that AMQP and MQTT
//! clients use.
//!
//! - [`codec`]: pure bytes ⇄ [`codec::Frame`] for every command of all
//!   three versions: framing, header escaping, content-length bodies,
//!   heart-beats and the size limits (no tokio: fuzzed and benchmarked
//!   alone).
//!
//! - `convert`: destinations and headers to and from the core message.
//! - `session`: one connection's rules without I/O (version and
//!   heart-beat negotiation, acknowledgement ids, transactions).
//! - `connection`: the connection task (the only socket code) and what
//!   each frame does; `context`: settings, shared state,
//!   `serve_connection` (the accept loop itself is `junction-server`'s).
//!
//! Everything but the codec sits behind the default feature `adapter`;
//! without it the crate is the codec alone (no tokio, no core), which is
//! what the fuzz targets in `fuzz/` build.
//!
//! See docs/stomp.md for the mapping, the lifecycles and the known gaps.

pub mod codec;
#[cfg(feature = "adapter")]
mod connection;
#[cfg(feature = "adapter")]
mod context;
#[cfg(feature = "adapter")]
pub mod convert;
#[cfg(feature = "adapter")]
pub mod session;

#[cfg(feature = "adapter")]
pub use context::{StompContext, StompSettings, serve_connection};
