//! MQTT and STOMP over WebSocket: the listeners browser clients (MQTT.js,
//! @stomp/stompjs) and paho's `websockets` transport connect to.
//!
//! A WebSocket connection is one more byte stream under the unchanged
//! adapters: the listener runs the HTTP upgrade (path, subprotocol,
//! `Origin`, the real client behind a trusted proxy), then hands the
//! adapter a [`WsStream`], which reads the messages' payloads as one byte
//! stream and writes what the adapter writes between two flushes as one
//! message. The session, codec and core code are the TCP ones.
//!
//! - MQTT runs over binary messages; a message may hold part of a packet
//!   or several. A text message closes the connection (1003).
//! - STOMP answers in text messages, or in binary ones once the client has
//!   sent binary (or when a frame is not UTF-8); heart-beat newlines are
//!   messages of their own, both ways.
//! - The server pings an idle client every `ping_interval_secs`; a client
//!   that sends nothing (not even a pong) for two intervals is cut off.
//!   Client pings are answered.
//! - A message larger than `max_message_size` closes the connection (1009).

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, Stream as _};
use junction_core::io::{ByteStream, Stream};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes, error::CapacityError};
use tokio_util::sync::CancellationToken;

/// `[websocket]`: MQTT and STOMP over WebSocket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    /// Open the WebSocket listeners (each only with its protocol's
    /// listener enabled).
    pub enabled: bool,
    /// MQTT over WebSocket on `[broker] bind`, paths `/ws` and `/mqtt`
    /// (RabbitMQ Web-MQTT's port); 0 picks any free port.
    pub mqtt_port: u16,
    /// STOMP over WebSocket, path `/ws` (RabbitMQ Web-STOMP's port).
    pub stomp_port: u16,
    /// Origins (`scheme://host[:port]`) a browser may connect from; empty
    /// allows any. Clients that send no `Origin` (not browsers) are
    /// always allowed.
    pub allowed_origins: Vec<String>,
    /// Proxies (addresses or CIDR blocks) whose `Forwarded` /
    /// `X-Forwarded-For` header names the real client, for logs, the
    /// connections list and the per-client checks after the upgrade.
    pub trusted_proxies: Vec<String>,
    /// Largest WebSocket message a client may send, bytes; a larger one
    /// closes the connection (1009). Each connection may buffer this much.
    pub max_message_size: usize,
    /// Seconds between the server's pings to an idle client; one that
    /// sends nothing for two intervals is cut off. 0: no pings.
    pub ping_interval_secs: u64,
    /// Seconds a client has to finish the HTTP upgrade.
    pub handshake_timeout_secs: u64,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            enabled: true,
            mqtt_port: 15675,
            stomp_port: 15674,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            max_message_size: 16 << 20,
            ping_interval_secs: 30,
            handshake_timeout_secs: 10,
        }
    }
}

impl WsConfig {
    /// Refuses settings that cannot work, at start.
    pub fn validate(&self) -> Result<(), String> {
        for p in &self.trusted_proxies {
            Cidr::parse(p).map_err(|e| format!("[websocket] trusted_proxies: {e}"))?;
        }
        if self.max_message_size < 1024 {
            return Err("[websocket] max_message_size must be at least 1024".to_owned());
        }
        if self.handshake_timeout_secs == 0 {
            return Err("[websocket] handshake_timeout_secs must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// Which protocol a WebSocket listener carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsProtocol {
    Mqtt,
    Stomp,
}

impl WsProtocol {
    /// The request paths served.
    fn paths(self) -> &'static [&'static str] {
        match self {
            WsProtocol::Mqtt => &["/ws", "/mqtt"],
            WsProtocol::Stomp => &["/ws"],
        }
    }

    /// The subprotocols accepted, in the server's order of preference
    /// (used for STOMP: the highest version offered wins; MQTT takes the
    /// client's first acceptable one).
    fn subprotocols(self) -> &'static [&'static str] {
        match self {
            WsProtocol::Mqtt => &["mqtt", "mqttv3.1.1", "mqttv3.1"],
            WsProtocol::Stomp => &["v12.stomp", "v11.stomp", "v10.stomp"],
        }
    }

    /// Whether the adapter's output goes out in text messages.
    fn text(self) -> bool {
        self == WsProtocol::Stomp
    }
}

/// An address or CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or CIDR block"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { net, bits })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.net, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            _ => ip,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// What a WebSocket listener needs, shared by its connections.
#[derive(Debug)]
pub struct WsListener {
    protocol: WsProtocol,
    allowed_origins: Vec<String>,
    trusted: Vec<Cidr>,
    config: WebSocketConfig,
    ping: Option<Duration>,
    handshake_timeout: Duration,
}

impl WsListener {
    pub fn new(protocol: WsProtocol, c: &WsConfig) -> Result<WsListener, String> {
        c.validate()?;
        let trusted = c
            .trusted_proxies
            .iter()
            .map(|p| Cidr::parse(p))
            .collect::<Result<_, _>>()?;
        Ok(WsListener {
            protocol,
            allowed_origins: c
                .allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            trusted,
            // Small buffers: a connection holds little until it carries a
            // message; writes go out as the adapter flushes them.
            config: WebSocketConfig::default()
                .read_buffer_size(8 * 1024)
                .write_buffer_size(0)
                .max_write_buffer_size(c.max_message_size.saturating_mul(2))
                .max_message_size(Some(c.max_message_size))
                .max_frame_size(Some(c.max_message_size)),
            ping: (c.ping_interval_secs > 0).then(|| Duration::from_secs(c.ping_interval_secs)),
            handshake_timeout: Duration::from_secs(c.handshake_timeout_secs),
        })
    }

    /// Checks an upgrade request: the path, the `Origin`, the subprotocol.
    /// Returns the subprotocol to echo (None when the client offered none)
    /// and the client's address (the forwarded one behind a trusted
    /// proxy), or the HTTP refusal.
    fn check(
        &self,
        req: &Request,
        peer: SocketAddr,
    ) -> Result<(Option<&'static str>, SocketAddr), (StatusCode, String)> {
        let path = req.uri().path();
        if !self.protocol.paths().contains(&path) {
            return Err((
                StatusCode::NOT_FOUND,
                format!(
                    "no WebSocket endpoint at {path} (use {})",
                    self.protocol.paths().join(" or ")
                ),
            ));
        }
        if let Some(origin) = req.headers().get("origin")
            && !self.allowed_origins.is_empty()
        {
            let origin = origin
                .to_str()
                .unwrap_or("")
                .trim_end_matches('/')
                .to_ascii_lowercase();
            if !self.allowed_origins.contains(&origin) {
                return Err((
                    StatusCode::FORBIDDEN,
                    format!("origin {origin} is not allowed"),
                ));
            }
        }
        let offered: Vec<String> = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_ascii_lowercase())
            .filter(|p| !p.is_empty())
            .collect();
        let accepted = self.protocol.subprotocols();
        let chosen = if offered.is_empty() {
            None
        } else {
            let pick = match self.protocol {
                // The client's first acceptable one.
                WsProtocol::Mqtt => offered
                    .iter()
                    .find_map(|o| accepted.iter().find(|a| **a == o.as_str())),
                // The highest version offered.
                WsProtocol::Stomp => accepted.iter().find(|a| offered.iter().any(|o| o == *a)),
            };
            match pick {
                Some(p) => Some(*p),
                None => {
                    return Err((
                        StatusCode::BAD_REQUEST,
                        format!(
                            "no supported subprotocol among {:?} (this endpoint speaks {})",
                            offered.join(", "),
                            accepted.join(", ")
                        ),
                    ));
                }
            }
        };
        Ok((chosen, self.client_address(req, peer)))
    }

    /// The client behind `peer`: when `peer` is a trusted proxy, the
    /// nearest untrusted address its `Forwarded` (or `X-Forwarded-For`)
    /// header names, read from the right; else `peer`.
    fn client_address(&self, req: &Request, peer: SocketAddr) -> SocketAddr {
        let trusted = |ip: IpAddr| self.trusted.iter().any(|c| c.contains(ip));
        if !trusted(peer.ip()) {
            return peer;
        }
        let mut hops: Vec<SocketAddr> = Vec::new();
        for v in req.headers().get_all("forwarded") {
            let Ok(v) = v.to_str() else { continue };
            for element in v.split(',') {
                for pair in element.split(';') {
                    let Some((k, val)) = pair.split_once('=') else {
                        continue;
                    };
                    if k.trim().eq_ignore_ascii_case("for")
                        && let Some(a) = parse_node(val.trim().trim_matches('"'))
                    {
                        hops.push(a);
                    }
                }
            }
        }
        if hops.is_empty() {
            for v in req.headers().get_all("x-forwarded-for") {
                let Ok(v) = v.to_str() else { continue };
                hops.extend(v.split(',').filter_map(|h| parse_node(h.trim())));
            }
        }
        hops.iter()
            .rev()
            .find(|a| !trusted(a.ip()))
            .or(hops.first())
            .copied()
            .unwrap_or(peer)
    }
}

/// One `for=` node or `X-Forwarded-For` entry: `ip`, `ip:port`,
/// `[v6]` or `[v6]:port` (port 0 when absent).
fn parse_node(s: &str) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    let ip = s.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 0))
}

/// Runs the upgrade on an accepted (and, for wss, TLS-handshaken)
/// connection, then `serve` (the adapter's TCP entry point) over the
/// WebSocket. A refused or failed upgrade is logged at debug and closed.
pub async fn serve<C, F, Fut>(
    listener: Arc<WsListener>,
    stream: Stream,
    peer: SocketAddr,
    ctx: Arc<C>,
    shutdown: CancellationToken,
    serve: F,
) where
    F: FnOnce(Stream, SocketAddr, Arc<C>, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    stream.set_nodelay();
    let client_name = stream.client_name();
    let tls = stream.is_tls();
    let mut outcome: Option<SocketAddr> = None;
    // tungstenite's callback type: its error is an HTTP response.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        match listener.check(req, peer) {
            Ok((protocol, client)) => {
                if let Some(p) = protocol {
                    resp.headers_mut()
                        .insert("sec-websocket-protocol", HeaderValue::from_static(p));
                }
                outcome = Some(client);
                Ok(resp)
            }
            Err((status, why)) => {
                tracing::debug!(%peer, status = status.as_u16(), reason = %why, "WebSocket upgrade refused");
                let mut r = ErrorResponse::new(Some(why));
                *r.status_mut() = status;
                Err(r)
            }
        }
    };
    let upgrade =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(listener.config));
    let ws = tokio::select! {
        _ = shutdown.cancelled() => return,
        r = tokio::time::timeout(listener.handshake_timeout, upgrade) => r,
    };
    let ws = match ws {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "WebSocket upgrade failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "WebSocket upgrade timed out");
            return;
        }
    };
    let client = outcome.unwrap_or(peer);
    let stream = WsStream::new(ws, listener.protocol, listener.ping, client_name, tls);
    serve(Stream::Other(Box::new(stream)), client, ctx, shutdown).await;
}

/// Writes gathered into one message at most this big before a flush
/// sends them; more goes out as further messages (MQTT allows a packet
/// across messages, STOMP parsers take a frame in parts).
const WRITE_CHUNK: usize = 64 * 1024;

/// A WebSocket as the byte stream the adapters read and write.
pub struct WsStream {
    /// Always there but while dropping (see the `Drop` impl).
    ws: Option<WebSocketStream<Stream>>,
    protocol: WsProtocol,
    /// The client has sent a binary message (STOMP then answers in binary).
    client_binary: bool,
    /// What is left of the last message read.
    read: Bytes,
    /// Written by the adapter, not yet sent.
    write: BytesMut,
    /// The message being sent: queued into the socket by `poll_ready` and
    /// `start_send`, then flushed.
    sending: bool,
    ping: Option<tokio::time::Interval>,
    /// Pings sent since the client last sent anything.
    unanswered: u8,
    /// The client closed (or the stream ended): reads give 0.
    eof: bool,
    /// This side closed on an error with input possibly unread: on drop,
    /// read and discard for a while, so the close frame is not lost to a
    /// reset.
    linger: bool,
    client_name: Option<String>,
    tls: bool,
}

impl WsStream {
    fn new(
        ws: WebSocketStream<Stream>,
        protocol: WsProtocol,
        ping: Option<Duration>,
        client_name: Option<String>,
        tls: bool,
    ) -> WsStream {
        WsStream {
            ws: Some(ws),
            protocol,
            client_binary: false,
            read: Bytes::new(),
            write: BytesMut::new(),
            sending: false,
            ping: ping.map(|p| {
                let mut i = tokio::time::interval_at(tokio::time::Instant::now() + p, p);
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                i
            }),
            unanswered: 0,
            eof: false,
            linger: false,
            client_name,
            tls,
        }
    }

    fn ws(&mut self) -> Pin<&mut WebSocketStream<Stream>> {
        Pin::new(self.ws.as_mut().expect("present until dropped"))
    }

    /// Queues a control message and pushes it out as far as the socket
    /// takes it now (best effort: pings and refusals must not block
    /// reading).
    fn send_control(&mut self, cx: &mut Context<'_>, m: Message) {
        let mut ws = self.ws();
        if let Poll::Ready(Ok(())) = ws.as_mut().poll_ready(cx)
            && ws.as_mut().start_send(m).is_ok()
        {
            let _ = ws.poll_flush(cx);
        }
    }

    /// Closes with `code` and `reason` (best effort) and gives the error the
    /// adapter sees.
    fn fail(&mut self, cx: &mut Context<'_>, code: CloseCode, reason: &str) -> std::io::Error {
        self.send_control(
            cx,
            Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })),
        );
        self.eof = true;
        self.linger = true;
        std::io::Error::new(std::io::ErrorKind::InvalidData, reason.to_owned())
    }

    /// Sends what the adapter wrote as one message, and flushes.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        loop {
            if self.sending {
                ready!(self.ws().poll_flush(cx)).map_err(io_error)?;
                self.sending = false;
            }
            if self.write.is_empty() {
                return Poll::Ready(Ok(()));
            }
            ready!(self.ws().poll_ready(cx)).map_err(io_error)?;
            let data = self.write.split().freeze();
            let message = if self.protocol.text() && !self.client_binary {
                // One UTF-8 check; the clone is a reference count.
                match Utf8Bytes::try_from(data.clone()) {
                    Ok(text) => Message::Text(text),
                    Err(_) => Message::Binary(data),
                }
            } else {
                Message::Binary(data)
            };
            self.ws().start_send(message).map_err(io_error)?;
            self.sending = true;
        }
    }
}

fn io_error(e: WsError) -> std::io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => std::io::ErrorKind::BrokenPipe.into(),
        other => std::io::Error::other(other.to_string()),
    }
}

impl AsyncRead for WsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.read.is_empty() {
                let n = this.read.len().min(buf.remaining());
                buf.put_slice(&this.read[..n]);
                this.read.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if let Some(ping) = this.ping.as_mut()
                && ping.poll_tick(cx).is_ready()
            {
                if this.unanswered >= 2 {
                    let e = this.fail(cx, CloseCode::Away, "no pong");
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        e.to_string(),
                    )));
                }
                this.unanswered += 1;
                this.send_control(cx, Message::Ping(Bytes::new()));
                continue;
            }
            let next = ready!(this.ws().poll_next(cx));
            this.unanswered = 0;
            match next {
                Some(Ok(Message::Binary(b))) => {
                    this.client_binary = true;
                    this.read = b;
                }
                Some(Ok(Message::Text(t))) => {
                    if !this.protocol.text() {
                        let reason = "MQTT runs over binary WebSocket messages";
                        return Poll::Ready(Err(this.fail(cx, CloseCode::Unsupported, reason)));
                    }
                    this.read = Bytes::from(t);
                }
                // Pings are answered by the WebSocket layer as it reads.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => this.eof = true,
                Some(Err(WsError::Capacity(
                    CapacityError::MessageTooLong { .. } | CapacityError::TooManyHeaders,
                ))) => {
                    let reason = "message larger than [websocket] max_message_size";
                    return Poll::Ready(Err(this.fail(cx, CloseCode::Size, reason)));
                }
                Some(Err(WsError::Protocol(e))) => {
                    let reason = format!("WebSocket protocol error: {e}");
                    return Poll::Ready(Err(this.fail(cx, CloseCode::Protocol, &reason)));
                }
                Some(Err(e)) => {
                    this.eof = true;
                    return Poll::Ready(Err(io_error(e)));
                }
            }
        }
    }
}

impl AsyncWrite for WsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_write_vectored(cx, &[std::io::IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.write.len() >= WRITE_CHUNK {
            ready!(this.poll_send(cx))?;
        }
        let mut n = 0;
        for b in bufs {
            let room = WRITE_CHUNK.saturating_sub(this.write.len()).max(1);
            let take = b.len().min(room);
            this.write.extend_from_slice(&b[..take]);
            n += take;
            if take < b.len() || this.write.len() >= WRITE_CHUNK {
                break;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().poll_send(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        match ready!(this.ws().poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(io_error(e))),
        }
    }
}

impl Drop for WsStream {
    fn drop(&mut self) {
        let Some(mut ws) = self.ws.take() else { return };
        if !self.linger {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                junction_core::io::linger(
                    ws.get_mut(),
                    junction_core::io::CLOSE_GRACE,
                    junction_core::io::CLOSE_DRAIN_BYTES,
                )
                .await;
            });
        }
    }
}

impl ByteStream for WsStream {
    fn client_name(&self) -> Option<&str> {
        self.client_name.as_deref()
    }

    fn is_tls(&self) -> bool {
        self.tls
    }

    fn is_websocket(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, headers: &[(&str, &str)]) -> Request {
        let mut b = Request::builder().uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request")
    }

    fn listener(protocol: WsProtocol, f: impl FnOnce(&mut WsConfig)) -> WsListener {
        let mut c = WsConfig::default();
        f(&mut c);
        WsListener::new(protocol, &c).expect("valid settings")
    }

    const PEER: &str = "10.1.2.3:5000";

    #[test]
    fn mqtt_paths_and_subprotocols() {
        let l = listener(WsProtocol::Mqtt, |_| {});
        let peer: SocketAddr = PEER.parse().unwrap();
        let ok = |path: &str, proto: Option<&str>| {
            let h: Vec<(&str, &str)> = proto
                .map(|p| ("sec-websocket-protocol", p))
                .into_iter()
                .collect();
            l.check(&request(path, &h), peer).map(|(p, _)| p)
        };
        assert_eq!(ok("/ws", Some("mqtt")), Ok(Some("mqtt")));
        assert_eq!(ok("/mqtt", Some("mqttv3.1, mqtt")), Ok(Some("mqttv3.1")));
        assert_eq!(ok("/ws", Some("MQTTv3.1.1")), Ok(Some("mqttv3.1.1")));
        assert_eq!(ok("/ws", None), Ok(None));
        assert_eq!(ok("/other", None).unwrap_err().0, StatusCode::NOT_FOUND);
        let (status, why) = ok("/ws", Some("v12.stomp")).unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(why.contains("mqtt, mqttv3.1.1, mqttv3.1"), "{why}");
    }

    #[test]
    fn stomp_picks_the_highest_version_offered() {
        let l = listener(WsProtocol::Stomp, |_| {});
        let peer: SocketAddr = PEER.parse().unwrap();
        let pick = |p: &str| {
            l.check(&request("/ws", &[("sec-websocket-protocol", p)]), peer)
                .map(|(p, _)| p)
        };
        assert_eq!(
            pick("v10.stomp, v11.stomp, v12.stomp"),
            Ok(Some("v12.stomp"))
        );
        assert_eq!(pick("v10.stomp,v11.stomp"), Ok(Some("v11.stomp")));
        assert_eq!(pick("mqtt").unwrap_err().0, StatusCode::BAD_REQUEST);
        assert_eq!(
            l.check(&request("/mqtt", &[]), peer).unwrap_err().0,
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn origins_are_checked_only_when_listed() {
        let peer: SocketAddr = PEER.parse().unwrap();
        let open = listener(WsProtocol::Mqtt, |_| {});
        assert!(
            open.check(&request("/ws", &[("origin", "https://evil.example")]), peer)
                .is_ok()
        );
        let l = listener(WsProtocol::Mqtt, |c| {
            c.allowed_origins = vec!["https://app.example/".into()];
        });
        assert!(
            l.check(&request("/ws", &[("origin", "https://APP.example")]), peer)
                .is_ok()
        );
        assert!(l.check(&request("/ws", &[]), peer).is_ok());
        let (status, why) = l
            .check(&request("/ws", &[("origin", "https://evil.example")]), peer)
            .unwrap_err();
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(why.contains("evil.example"), "{why}");
    }

    #[test]
    fn forwarded_clients_only_from_trusted_proxies() {
        let l = listener(WsProtocol::Mqtt, |c| {
            c.trusted_proxies = vec!["10.0.0.0/8".into(), "192.0.2.7".into()];
        });
        let client = |peer: &str, h: &[(&str, &str)]| {
            l.check(&request("/ws", h), peer.parse().unwrap())
                .map(|(_, a)| a.to_string())
                .unwrap()
        };
        let xff = [("x-forwarded-for", "198.51.100.9, 10.9.9.9")];
        // From a trusted proxy: the nearest untrusted hop.
        assert_eq!(client(PEER, &xff), "198.51.100.9:0");
        // From anyone else the header is ignored.
        assert_eq!(client("203.0.113.5:1234", &xff), "203.0.113.5:1234");
        assert_eq!(
            client(
                "192.0.2.7:80",
                &[(
                    "forwarded",
                    "for=\"[2001:db8::1]:4711\";proto=https, for=10.0.0.1"
                )]
            ),
            "[2001:db8::1]:4711"
        );
        // Nothing usable: the proxy itself.
        assert_eq!(client(PEER, &[("x-forwarded-for", "unknown")]), PEER);
        assert_eq!(
            Cidr::parse("10.0.0.0/33").unwrap_err(),
            "\"10.0.0.0/33\": the prefix length must be 0 to 32"
        );
        assert!(
            Cidr::parse("::/0")
                .unwrap()
                .contains("2001:db8::1".parse().unwrap())
        );
        assert!(
            Cidr::parse("127.0.0.1")
                .unwrap()
                .contains("::ffff:127.0.0.1".parse().unwrap())
        );
    }
}
