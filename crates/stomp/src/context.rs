//! The adapter's settings (the `[stomp]` table), the state every STOMP
//! connection shares, and `serve_connection`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use junction_core::{Authenticator, Broker};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::codec::Limits;

/// The `[stomp]` table of the configuration file: the listener and the
/// adapter's limits. `conf/junction.toml` documents each key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StompSettings {
    /// TCP port on the broker's bind address; 0 asks the OS for any port.
    pub port: u16,
    /// Whether to open the listener at all.
    pub enabled: bool,
    /// Accept CONNECT frames without `login` as `anonymous_user` (its
    /// password is not checked; the loopback rule for guest still holds).
    pub allow_anonymous: bool,
    pub anonymous_user: String,
    /// Seconds from accept to a CONNECT frame.
    pub connect_timeout: u64,
    /// The shortest heart-beat interval, in milliseconds, we send or
    /// check at; 0 turns heart-beating off.
    pub heartbeat_min_ms: u64,
    /// Unacknowledged messages per `client`/`client-individual`
    /// subscription without `prefetch-count` (0: no limit).
    pub prefetch: u32,
    /// Largest frame, bytes (command, headers and body).
    pub max_frame_size: usize,
    /// Most headers in one frame.
    pub max_headers: usize,
    /// Longest header line, bytes.
    pub max_header_length: usize,
    /// Largest body, bytes.
    pub max_body_size: usize,
    /// Most subscriptions on one connection.
    pub max_subscriptions: usize,
    /// Most transactions open at once on one connection.
    pub max_transactions: usize,
    /// Most SEND/ACK/NACK frames in one transaction.
    pub max_transaction_frames: usize,
    /// Most body bytes held by one transaction.
    pub max_transaction_bytes: u64,
}

impl Default for StompSettings {
    fn default() -> Self {
        StompSettings {
            port: 61613,
            enabled: true,
            allow_anonymous: true,
            anonymous_user: "guest".into(),
            connect_timeout: 10,
            heartbeat_min_ms: 1000,
            prefetch: 1000,
            max_frame_size: Limits::DEFAULT_MAX_FRAME,
            max_headers: Limits::DEFAULT_MAX_HEADERS,
            max_header_length: Limits::DEFAULT_MAX_HEADER_LINE,
            max_body_size: Limits::DEFAULT_MAX_BODY,
            max_subscriptions: 1024,
            max_transactions: 64,
            max_transaction_frames: 65_536,
            max_transaction_bytes: 256 * 1024 * 1024,
        }
    }
}

impl StompSettings {
    /// The codec limits for frames after CONNECT.
    pub fn limits(&self) -> Limits {
        Limits {
            max_frame: self.max_frame_size,
            max_headers: self.max_headers,
            max_header_line: self.max_header_length,
            max_body: self.max_body_size,
        }
    }

    /// Checks the values a broker cannot run with.
    pub fn validate(&self) -> Result<(), String> {
        if self.connect_timeout == 0 {
            return Err("[stomp] connect_timeout must be at least 1".to_owned());
        }
        if self.max_frame_size < 1024 || self.max_header_length < 256 || self.max_headers < 16 {
            return Err(
                "[stomp] max_frame_size must be at least 1024, max_header_length at least 256 and max_headers at least 16"
                    .to_owned(),
            );
        }
        if self.max_body_size > self.max_frame_size {
            return Err("[stomp] max_body_size must not exceed max_frame_size".to_owned());
        }
        Ok(())
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout)
    }
}

/// What every STOMP connection shares.
pub struct StompContext {
    pub broker: Arc<Broker>,
    pub auth: Arc<dyn Authenticator>,
    pub settings: StompSettings,
}

/// Serves one accepted STOMP connection (TCP or TLS) until it
/// closes; at `shutdown` the client gets an ERROR ("broker shutting down").
/// The server's accept loop calls it.
pub fn serve_connection(
    stream: junction_core::io::Stream,
    peer: SocketAddr,
    ctx: Arc<StompContext>,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    crate::connection::run(stream, peer, ctx, shutdown)
}
