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
//! See docs/amqp.md for the mapping and the known gaps.

mod basic;
pub mod channel;
pub mod codec;
mod connection;
pub mod convert;
mod deliveries;
pub mod error;
mod frames;
mod handshake;
mod methods;

use std::sync::Arc;
use std::time::Duration;

use junction_core::Broker;
use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

pub use junction_core::Authenticator;

/// The adapter's settings (the `[amqp]` table and broker-wide limits).
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
pub struct AmqpContext {
    pub broker: Arc<Broker>,
    pub auth: Arc<dyn Authenticator>,
    pub settings: AmqpSettings,
}

/// Serves one accepted AMQP connection until it closes; at `shutdown` it is
/// closed with 320 CONNECTION_FORCED. The server's accept loop calls it.
pub fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<AmqpContext>,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    connection::run(stream, peer, ctx, shutdown)
}
