//! MQTT over WebSocket for the load generator (`--transport ws`), and the
//! same path over plain TCP for comparison (`--transport bridged`).
//!
//! rumqttc speaks WebSocket only through a feature that would build a
//! second TLS stack (aws-lc, which this tree never builds), so the
//! generator keeps rumqttc on a Unix socket of its own and bridges each
//! connection to the broker here: over a WebSocket (binary messages,
//! subprotocol `mqtt`, as browsers and MQTT.js do), or over plain TCP.
//! Both transports pay the same bridge, so `ws ÷ bridged` is the cost of
//! WebSocket itself; `bridged ÷ tcp` is the bridge's.
//!
//! Each chunk rumqttc writes goes out as one binary message (one or more
//! whole packets as rumqttc batches them); each message received is
//! written on as it is.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::error::BenchError;
use crate::load::Endpoint;

/// How the MQTT clients reach the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// rumqttc straight to the broker's MQTT port.
    Tcp,
    /// Through the bridge, then a WebSocket to the broker (`--mqtt-port`
    /// is its WebSocket listener; path `--ws-path`).
    Ws,
    /// Through the bridge, then plain TCP: the baseline for `ws`.
    Bridged,
}

/// Bytes read from rumqttc per message at most.
const CHUNK: usize = 64 * 1024;

/// A running bridge: rumqttc connects to `path`; each connection is carried
/// to the broker. The socket file is removed on drop.
#[derive(Debug)]
pub struct Bridge {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Bridge {
    /// Listens on a fresh Unix socket for run `run_id` and carries each
    /// connection to `endpoint` over `transport` (`Ws` or `Bridged`).
    pub fn start(
        transport: Transport,
        endpoint: &Endpoint,
        ws_path: &str,
        run_id: u32,
    ) -> Result<Arc<Bridge>, BenchError> {
        let path = std::env::temp_dir().join(format!(
            "junction-bench-{}-{run_id:08x}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(|e| BenchError::Usage(format!("bridge socket {}: {e}", path.display())))?;
        let addr = format!("{}:{}", endpoint.host, endpoint.port);
        let url = format!("ws://{addr}{ws_path}");
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let (addr, url) = (addr.clone(), url.clone());
                tokio::spawn(async move {
                    if let Err(e) = carry(client, transport, &addr, &url).await {
                        tracing::debug!(error = %e, "bridged connection ended");
                    }
                });
            }
        });
        Ok(Arc::new(Bridge { path, task }))
    }

    /// The Unix socket rumqttc connects to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Carries one rumqttc connection to the broker until either side ends.
async fn carry(
    mut client: UnixStream,
    transport: Transport,
    addr: &str,
    url: &str,
) -> Result<(), String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    if transport != Transport::Ws {
        let mut tcp = tcp;
        tokio::io::copy_bidirectional(&mut client, &mut tcp)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(());
    }
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
    let config = WebSocketConfig::default()
        .write_buffer_size(0)
        .max_message_size(None)
        .max_frame_size(None);
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, tcp, Some(config))
        .await
        .map_err(|e| format!("WebSocket upgrade at {url}: {e}"))?;
    let (mut to_broker, mut from_broker) = ws.split();
    let (mut rd, mut wr) = client.split();
    let up = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = rd.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                let _ = to_broker.close().await;
                return Ok::<(), String>(());
            }
            to_broker
                .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                .await
                .map_err(|e| e.to_string())?;
        }
    };
    let down = async {
        while let Some(m) = from_broker.next().await {
            match m.map_err(|e| e.to_string())? {
                Message::Binary(b) => wr.write_all(&b).await.map_err(|e| e.to_string())?,
                Message::Close(_) => break,
                Message::Text(_) => return Err("text message from the broker".to_owned()),
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
        Ok(())
    };
    tokio::select! {
        r = up => r,
        r = down => r,
    }
}
