//! junction-amqp: the AMQP 0-9-1 adapter. A client written for RabbitMQ
//! (pika, lapin, the Java client, kombu, bunny) talks to the core through it.
//!
//! - [`codec`]: framing on the `amq-protocol` parser and generator; bodies
//!   stay `Bytes` from socket to socket.
//! - [`convert`]: basic properties and field tables to and from the core.
//! - [`error`]: reply codes, channel vs connection errors, core error mapping.
//! - [`channel`]: one channel's state (content assembly, delivery tags,
//!   prefetch, confirm and tx modes).
//! - `handshake`: protocol header, start/tune/open under a timeout, SASL.
//! - `connection`: the connection task (the only socket code); `frames`:
//!   frame rules, channel lifecycle, content assembly; `methods`: what each
//!   channel method does to the core; `basic`: consumers, settling and the
//!   publish path; `deliveries`: deliveries, confirms,
//!   server-sent cancels, releasing a closing channel.
//!
//! Everything but the codec sits behind the default feature `adapter`;
//! without it the crate is the codec alone (no tokio, no core), which is
//! what the fuzz targets in `fuzz/` build.
//!
//! See docs/amqp.md for the mapping and the known gaps.

#[cfg(feature = "adapter")]
mod basic;
#[cfg(feature = "adapter")]
pub mod channel;
pub mod codec;
#[cfg(feature = "adapter")]
mod connection;
#[cfg(feature = "adapter")]
pub mod convert;
#[cfg(feature = "adapter")]
mod deliveries;
#[cfg(feature = "adapter")]
pub mod error;
#[cfg(feature = "adapter")]
mod frames;
#[cfg(feature = "adapter")]
mod handshake;
#[cfg(feature = "adapter")]
mod methods;

#[cfg(feature = "adapter")]
use std::net::SocketAddr;
#[cfg(feature = "adapter")]
use std::sync::Arc;
#[cfg(feature = "adapter")]
use std::time::Duration;

#[cfg(feature = "adapter")]
use junction_core::Broker;
#[cfg(feature = "adapter")]
use junction_core::io::Stream;
#[cfg(feature = "adapter")]
use tokio_util::sync::CancellationToken;

#[cfg(feature = "adapter")]
pub use junction_core::Authenticator;

/// The adapter's settings (the `[amqp]` table and broker-wide limits).
#[cfg(feature = "adapter")]
#[derive(Clone, Debug)]
pub struct AmqpSettings {
    /// Largest frame we accept and offer in `connection.tune`.
    pub frame_max: u32,
    /// Most channels per connection, offered in `connection.tune`.
    pub channel_max: u16,
    /// Heartbeat interval offered, in seconds (the client may lower it; 0 = off).
    pub heartbeat_secs: u16,
    /// Largest message body accepted.
    pub max_message_size: u64,
    /// Time from accept to `connection.open`.
    pub handshake_timeout: Duration,
}

#[cfg(feature = "adapter")]
impl Default for AmqpSettings {
    fn default() -> Self {
        AmqpSettings {
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat_secs: 60,
            max_message_size: 128 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// What every AMQP connection shares.
#[cfg(feature = "adapter")]
pub struct AmqpContext {
    pub broker: Arc<Broker>,
    pub auth: Arc<dyn Authenticator>,
    pub settings: AmqpSettings,
}

/// Serves one accepted AMQP connection until it closes; at `shutdown` it is
/// closed with 320 CONNECTION_FORCED. The server's accept loop calls it.
#[cfg(feature = "adapter")]
pub fn serve_connection(
    stream: Stream,
    peer: SocketAddr,
    ctx: Arc<AmqpContext>,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    connection::run(stream, peer, ctx, shutdown)
}
