//! The open connections as the management API lists them, and closing one
//! on an operator's word.
//!
//! Every [`ConnectionGuard`] is registered here from
//! [`Broker::open_connection`] until it drops. Its adapter fills in what it
//! learns (peer, user, vhost, client id, channels) and watches the
//! connection's close token, which an operator's close cancels with a
//! reason; the adapter then closes with its protocol's words for an
//! administrative close.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::{Broker, ConnectionGuard};
use crate::ids::ConnectionId;
use crate::message::Protocol;

/// What an adapter tells about its connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionDetails {
    /// The client's address.
    pub peer: Option<SocketAddr>,
    /// The broker's listening address the client reached.
    pub local: Option<SocketAddr>,
    /// Over TLS.
    pub tls: bool,
    /// Over WebSocket.
    pub websocket: bool,
    /// The logged-in user, once logged in.
    pub user: Option<String>,
    pub vhost: Option<String>,
    /// MQTT's client id, STOMP's `client-id`.
    pub client_id: Option<String>,
    /// The protocol version in use (`0-9-1`, `5`, `1.2`).
    pub version: Option<&'static str>,
    /// What the client says it is (AMQP `client_properties.product`).
    pub client: Option<String>,
}

/// One registered connection.
#[derive(Debug)]
pub struct ConnectionEntry {
    pub id: ConnectionId,
    pub protocol: Protocol,
    /// Unix milliseconds when it was accepted.
    pub connected_at: u64,
    details: Mutex<ConnectionDetails>,
    /// Open AMQP channels.
    channels: AtomicU64,
    /// Their numbers.
    channel_numbers: Mutex<Vec<u16>>,
    /// Bytes read from and written to the client.
    recv_oct: AtomicU64,
    send_oct: AtomicU64,
    /// How [`Broker::close_connection`] stops this connection (see
    /// [`ConnectionGuard::close_with`]).
    close: Mutex<Option<Closer>>,
    reason: Mutex<Option<String>>,
}

/// What an operator's close pokes.
#[derive(Debug)]
enum Closer {
    /// The adapter's stop token for this connection, cancelled.
    Token(CancellationToken),
    /// A wake-up the connection already waits on, notified; it then reads
    /// [`ConnectionGuard::close_reason`] (no token per connection).
    Notify(Arc<tokio::sync::Notify>),
}

impl Closer {
    fn close(&self) {
        match self {
            Closer::Token(t) => t.cancel(),
            // A stored permit if the connection is not waiting right now.
            Closer::Notify(n) => n.notify_one(),
        }
    }
}

/// A snapshot of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionSnapshot {
    pub id: ConnectionId,
    pub protocol: Protocol,
    pub connected_at: u64,
    pub details: ConnectionDetails,
    pub channels: u64,
    /// The open AMQP channels' numbers, sorted.
    pub channel_numbers: Vec<u16>,
    /// Bytes read from and written to the client so far.
    pub recv_oct: u64,
    pub send_oct: u64,
}

/// The registry.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    open: Mutex<HashMap<ConnectionId, Arc<ConnectionEntry>>>,
}

impl Connections {
    pub(crate) fn register(&self, id: ConnectionId, protocol: Protocol) -> Arc<ConnectionEntry> {
        let connected_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let entry = Arc::new(ConnectionEntry {
            id,
            protocol,
            connected_at,
            details: Mutex::new(ConnectionDetails::default()),
            channels: AtomicU64::new(0),
            channel_numbers: Mutex::new(Vec::new()),
            recv_oct: AtomicU64::new(0),
            send_oct: AtomicU64::new(0),
            close: Mutex::new(None),
            reason: Mutex::new(None),
        });
        self.open.lock().insert(id, Arc::clone(&entry));
        entry
    }

    pub(crate) fn remove(&self, id: ConnectionId) {
        self.open.lock().remove(&id);
    }
}

impl Broker {
    /// Every open connection, oldest first.
    pub fn connections(&self) -> Vec<ConnectionSnapshot> {
        let entries: Vec<Arc<ConnectionEntry>> =
            self.connections.open.lock().values().cloned().collect();
        let mut all: Vec<ConnectionSnapshot> = entries
            .iter()
            .map(|e| ConnectionSnapshot {
                id: e.id,
                protocol: e.protocol,
                connected_at: e.connected_at,
                details: e.details.lock().clone(),
                channels: e.channels.load(Ordering::Relaxed),
                channel_numbers: e.channel_numbers.lock().clone(),
                recv_oct: e.recv_oct.load(Ordering::Relaxed),
                send_oct: e.send_oct.load(Ordering::Relaxed),
            })
            .collect();
        all.sort_by_key(|c| (c.connected_at, c.id.0));
        all
    }

    /// Asks connection `id` to close with `reason` (an operator's close);
    /// false when there is no such connection.
    pub fn close_connection(&self, id: ConnectionId, reason: &str) -> bool {
        let Some(entry) = self.connections.open.lock().get(&id).cloned() else {
            return false;
        };
        *entry.reason.lock() = Some(reason.to_owned());
        if let Some(closer) = entry.close.lock().as_ref() {
            closer.close();
        }
        true
    }
}

impl ConnectionGuard {
    /// Changes what the management API shows of this connection.
    pub fn describe(&self, f: impl FnOnce(&mut ConnectionDetails)) {
        f(&mut self.entry.details.lock());
    }

    /// Counts bytes read from the client.
    pub fn count_received(&self, n: usize) {
        self.entry.recv_oct.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts bytes written to the client.
    pub fn count_sent(&self, n: usize) {
        self.entry.send_oct.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The channels the connection has open now (AMQP), by number.
    pub fn set_channels(&self, open: impl Iterator<Item = u16>) {
        let mut numbers: Vec<u16> = open.collect();
        numbers.sort_unstable();
        self.entry
            .channels
            .store(numbers.len() as u64, Ordering::Relaxed);
        *self.entry.channel_numbers.lock() = numbers;
    }

    /// Makes `token` (the adapter's stop token for this connection, a
    /// child of the listener's shutdown token) the one an operator's close
    /// cancels; cancelled at once if a close came first.
    pub fn close_with(&self, token: &CancellationToken) {
        self.set_closer(Closer::Token(token.clone()));
    }

    /// Makes `wake` the one an operator's close notifies: the connection
    /// then learns why from [`ConnectionGuard::close_reason`]. Notified at
    /// once if a close came first.
    pub fn close_with_notify(&self, wake: &Arc<tokio::sync::Notify>) {
        self.set_closer(Closer::Notify(Arc::clone(wake)));
    }

    fn set_closer(&self, closer: Closer) {
        let mut slot = self.entry.close.lock();
        if self.entry.reason.lock().is_some() {
            closer.close();
        }
        *slot = Some(closer);
    }

    /// The operator's reason, once closed by one (else the stop token
    /// fired for a broker shutdown).
    pub fn close_reason(&self) -> Option<String> {
        self.entry.reason.lock().clone()
    }
}
