//! Connection start-up: protocol header, `connection.start`/`start-ok`
//! (SASL PLAIN or AMQPLAIN against the users), `tune`/`tune-ok` and `open`,
//! all in the connection's own task under the handshake timeout.

use std::net::SocketAddr;

use amq_protocol::protocol::{AMQPClass, connection};
use amq_protocol::types::parsing::parse_field_table;
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::BytesMut;
use junction_core::io::{ReadHalf, WriteHalf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::AmqpContext;
use crate::codec::{self, Frame, Output, PROTOCOL_HEADER};
use crate::error::{AmqpError, code};

/// A connection that got through `connection.open`.
#[derive(Debug)]
pub(crate) struct Opened {
    pub user: String,
    pub vhost: String,
    /// The user's permission checks on `vhost`.
    pub access: junction_core::Access,
    pub frame_max: usize,
    pub channel_max: u16,
    pub heartbeat: u16,
    /// The client announced the `connection.blocked` capability.
    pub wants_blocked: bool,
    /// `client_properties.product` (and version), for the management API.
    pub client: Option<String>,
}

/// Why a handshake ended without an open connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error("client sent a wrong protocol header {0:?}")]
    BadHeader(Vec<u8>),
    #[error("connection closed by the client")]
    Eof,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The error was sent to the client as `connection.close`.
    #[error("{}", .0.reply_text())]
    Refused(AmqpError),
}

fn server_properties() -> FieldTable {
    let mut caps = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
        "consumer_priorities",
    ] {
        caps.insert(cap.into(), AMQPValue::Boolean(true));
    }
    let mut p = FieldTable::default();
    p.insert("product".into(), AMQPValue::LongString("Junction".into()));
    p.insert(
        "version".into(),
        AMQPValue::LongString(env!("CARGO_PKG_VERSION").into()),
    );
    p.insert("platform".into(), AMQPValue::LongString("Rust".into()));
    p.insert(
        "cluster_name".into(),
        AMQPValue::LongString("junction".into()),
    );
    p.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    p
}

async fn write(wr: &mut WriteHalf, out: &mut Output) -> std::io::Result<()> {
    for chunk in out.take() {
        wr.write_all(&chunk).await?;
    }
    Ok(())
}

async fn read_frame(
    rd: &mut ReadHalf,
    buf: &mut BytesMut,
    frame_max: usize,
) -> Result<Frame, HandshakeError> {
    loop {
        match codec::decode(buf, frame_max) {
            Ok(Some(Frame::Heartbeat(_))) => continue,
            Ok(Some(f)) => return Ok(f),
            Ok(None) => {}
            Err(e) => {
                return Err(HandshakeError::Refused(AmqpError::connection(
                    e.reply_code(),
                    e.to_string(),
                )));
            }
        }
        if rd.read_buf(buf).await? == 0 {
            return Err(HandshakeError::Eof);
        }
    }
}

/// Expects a connection-class method on channel 0. Anything else, or a
/// frame the codec refuses (too large, malformed), is answered with
/// `connection.close` before the error returns.
async fn expect(
    rd: &mut ReadHalf,
    wr: &mut WriteHalf,
    buf: &mut BytesMut,
    frame_max: usize,
) -> Result<connection::AMQPMethod, HandshakeError> {
    let e = match read_frame(rd, buf, frame_max).await {
        Ok(Frame::Method(0, m)) => match *m {
            AMQPClass::Connection(c) => return Ok(c),
            other => AmqpError::connection(
                code::COMMAND_INVALID,
                format!("expected a connection method, got {other:?}"),
            ),
        },
        Ok(other) => AmqpError::connection(
            code::UNEXPECTED_FRAME,
            format!(
                "unexpected frame on channel {} during handshake",
                other.channel()
            ),
        ),
        Err(HandshakeError::Refused(e)) => e,
        Err(other) => return Err(other),
    };
    Err(refuse(wr, e).await)
}

/// User and password from a SASL response.
fn credentials(mechanism: &str, response: &LongString) -> Result<(String, String), AmqpError> {
    let bytes = response.as_bytes();
    match mechanism {
        "PLAIN" => {
            let mut parts = bytes.split(|b| *b == 0);
            let (_authzid, user, pass) = (parts.next(), parts.next(), parts.next());
            match (user, pass) {
                (Some(u), Some(p)) => Ok((
                    String::from_utf8_lossy(u).into_owned(),
                    String::from_utf8_lossy(p).into_owned(),
                )),
                _ => Err(AmqpError::connection(
                    code::ACCESS_REFUSED,
                    "malformed PLAIN response",
                )),
            }
        }
        "AMQPLAIN" => {
            // A field table without its length prefix.
            let mut framed = (bytes.len() as u32).to_be_bytes().to_vec();
            framed.extend_from_slice(bytes);
            let table = parse_field_table(&framed[..])
                .map(|(_, t)| t)
                .map_err(|_| {
                    AmqpError::connection(code::ACCESS_REFUSED, "malformed AMQPLAIN response")
                })?;
            let get = |k: &str| match table.inner().get(k) {
                Some(AMQPValue::LongString(s)) => {
                    Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_string()),
                _ => None,
            };
            match (get("LOGIN"), get("PASSWORD")) {
                (Some(u), Some(p)) => Ok((u, p)),
                _ => Err(AmqpError::connection(
                    code::ACCESS_REFUSED,
                    "AMQPLAIN response lacks LOGIN or PASSWORD",
                )),
            }
        }
        other => Err(AmqpError::connection(
            code::ACCESS_REFUSED,
            format!("unsupported authentication mechanism {other}"),
        )),
    }
}

/// Sends `connection.close` for a refused handshake.
async fn refuse(wr: &mut WriteHalf, e: AmqpError) -> HandshakeError {
    let mut out = Output::default();
    out.method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: e.code,
            reply_text: e.reply_text().into(),
            class_id: e.class_id,
            method_id: e.method_id,
        })),
    );
    let _ = write(wr, &mut out).await;
    HandshakeError::Refused(e)
}

/// Runs the handshake up to and including `connection.open-ok`.
/// `client_name`: the user a verified TLS client certificate stands for;
/// with it the broker also offers EXTERNAL (RabbitMQ's certificate login).
pub(crate) async fn handshake(
    rd: &mut ReadHalf,
    wr: &mut WriteHalf,
    buf: &mut BytesMut,
    ctx: &AmqpContext,
    peer: SocketAddr,
    client_name: Option<&str>,
    guard: &mut junction_core::ConnectionGuard,
) -> Result<Opened, HandshakeError> {
    while buf.len() < PROTOCOL_HEADER.len() {
        if rd.read_buf(buf).await? == 0 {
            return Err(HandshakeError::Eof);
        }
    }
    let header = buf.split_to(PROTOCOL_HEADER.len());
    if &header[..] != PROTOCOL_HEADER {
        // AMQP 0-9-1 section 4.2.2: answer with the header we speak, then close.
        wr.write_all(PROTOCOL_HEADER).await?;
        return Err(HandshakeError::BadHeader(header.to_vec()));
    }
    let settings = &ctx.settings;
    let our_max = settings.frame_max as usize;
    // Frames before tune-ok come from a peer not yet logged in (or one
    // still negotiating): a small bound, whatever frame_max is.
    let pre_tune_max = our_max.min(ctx.broker.limits().max_handshake_size);
    let mut out = Output::default();
    out.method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: server_properties(),
            mechanisms: if client_name.is_some() {
                "PLAIN AMQPLAIN EXTERNAL".into()
            } else {
                "PLAIN AMQPLAIN".into()
            },
            locales: "en_US".into(),
        })),
    );
    write(wr, &mut out).await?;

    let start_ok = match expect(rd, wr, buf, pre_tune_max).await? {
        connection::AMQPMethod::StartOk(s) => s,
        other => {
            let e = AmqpError::connection(
                code::COMMAND_INVALID,
                format!("expected start-ok, got {other:?}"),
            );
            return Err(refuse(wr, e).await);
        }
    };
    let text_prop = |k: &str| match start_ok.client_properties.inner().get(k) {
        Some(AMQPValue::LongString(s)) => Some(s.to_string()),
        Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_string()),
        _ => None,
    };
    let client = text_prop("product").map(|p| match text_prop("version") {
        Some(v) => format!("{p} {v}"),
        None => p,
    });
    let wants_blocked = matches!(
        start_ok.client_properties.inner().get("capabilities"),
        Some(AMQPValue::FieldTable(caps))
            if matches!(caps.inner().get("connection.blocked"), Some(AMQPValue::Boolean(true)))
    );
    let (user, verdict) = if start_ok.mechanism.as_str() == "EXTERNAL" {
        // The certificate is the credential; the response (an optional
        // authorization id) is not read, as in RabbitMQ.
        let Some(name) = client_name else {
            let e = AmqpError::connection(
                code::ACCESS_REFUSED,
                "EXTERNAL needs a verified TLS client certificate",
            );
            return Err(refuse(wr, e).await);
        };
        let verdict = ctx
            .auth
            .certificate_login(name, peer.ip())
            .map_err(junction_core::LoginError::Refused);
        (name.to_string(), verdict)
    } else {
        let (user, password) = match credentials(start_ok.mechanism.as_str(), &start_ok.response) {
            Ok(c) => c,
            Err(e) => return Err(refuse(wr, e).await),
        };
        let verdict = ctx
            .broker
            .logins()
            .check(&ctx.auth, &user, password, peer.ip())
            .await;
        (user, verdict)
    };
    let login = match verdict {
        Ok(login) => login,
        Err(why) => {
            tracing::info!(user, reason = %why, "amqp login refused");
            let e = match why {
                junction_core::LoginError::Busy => AmqpError::connection(
                    code::RESOURCE_ERROR,
                    "too many logins waiting for a password check; try again later",
                ),
                junction_core::LoginError::Refused(_) => AmqpError::connection(
                    code::ACCESS_REFUSED,
                    format!(
                        "Login was refused using authentication mechanism {}. For details see the broker logfile.",
                        start_ok.mechanism
                    ),
                ),
            };
            return Err(refuse(wr, e).await);
        }
    };

    out.method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
            channel_max: settings.channel_max,
            frame_max: settings.frame_max,
            heartbeat: settings.heartbeat_secs,
        })),
    );
    write(wr, &mut out).await?;
    let tune_ok = match expect(rd, wr, buf, pre_tune_max).await? {
        connection::AMQPMethod::TuneOk(t) => t,
        other => {
            let e = AmqpError::connection(
                code::COMMAND_INVALID,
                format!("expected tune-ok, got {other:?}"),
            );
            return Err(refuse(wr, e).await);
        }
    };
    let frame_max = match tune_ok.frame_max as usize {
        0 => our_max,
        n => n.clamp(4096, our_max),
    };
    let channel_max = match tune_ok.channel_max {
        0 => settings.channel_max,
        n => n.min(settings.channel_max),
    };
    let open = match expect(rd, wr, buf, frame_max).await? {
        connection::AMQPMethod::Open(o) => o,
        other => {
            let e = AmqpError::connection(
                code::COMMAND_INVALID,
                format!("expected open, got {other:?}"),
            );
            return Err(refuse(wr, e).await);
        }
    };
    let vhost = open.virtual_host.as_str().to_string();
    let who = junction_core::Principal {
        user: user.clone(),
        vhost: vhost.clone(),
        client_id: String::new(),
        peer: peer.ip(),
        backend: login.backend,
    };
    let access = if ctx.broker.vhost(&vhost).is_ok() {
        junction_core::Access::open(std::sync::Arc::clone(&ctx.auth), who).await
    } else {
        None
    };
    let Some(access) = access else {
        let e = AmqpError::connection(
            code::ACCESS_REFUSED,
            format!(
                "access to vhost '{vhost}' refused for user '{user}' (no such vhost or no permission)"
            ),
        );
        return Err(refuse(wr, e).await);
    };
    if let Err(why) = guard.login(&user) {
        tracing::info!(user, reason = %why, "amqp connection refused");
        let e = AmqpError::connection(code::NOT_ALLOWED, format!("connection refused: {why}"))
            .during(10, 40);
        return Err(refuse(wr, e).await);
    }
    out.method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
    );
    write(wr, &mut out).await?;
    Ok(Opened {
        user,
        vhost,
        access,
        frame_max,
        channel_max,
        heartbeat: tune_ok.heartbeat,
        wants_blocked,
        client,
    })
}
