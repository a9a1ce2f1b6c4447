//! One HTTP/1 request on its own connection, with hyper's connection API
//! over a tokio `TcpStream`: what the HTTP auth back-end and the operator
//! commands need (few requests, no pool). The answer's body is read up to
//! a limit.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};

/// Sends `request` to `authority` (`host:port`); the status and the body,
/// which may be at most `max_body` bytes. Errors are text for the caller's
/// message (connect, handshake, send, an oversized or broken body).
pub async fn send(
    authority: &str,
    request: hyper::Request<Full<Bytes>>,
    max_body: usize,
) -> Result<(u16, Bytes), String> {
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let answer = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = answer.status().as_u16();
    let body = Limited::new(answer.into_body(), max_body)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    driver.abort();
    Ok((status, body))
}
