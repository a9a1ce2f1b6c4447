//! Test support, not part of the product: drives the broker core inside a
//! real `junction` server process so tests can kill it (SIGKILL, SIGTERM)
//! at any instant and check what survived.
//!
//! - `junction-testkit publish DATA_DIR COUNT`: starts the server on
//!   DATA_DIR, declares the test queues, publishes COUNT persistent
//!   messages ("0", "1", ...) to the durable queue `crash`, one at a time,
//!   printing `confirmed N` once each is on disk. Exits 0 after a SIGTERM
//!   or SIGINT, through the server's own graceful shutdown.
//! - `junction-testkit inspect DATA_DIR`: starts the server on DATA_DIR
//!   (recovering it), prints `queue NAME READY` for every queue, then
//!   `body B` for each ready message of `crash` in order, and stops.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use bytes::Bytes;
use junction_core::{Message, QueueDef};
use junction_server::config::Config;
use junction_server::run::{Server, ShutdownSignals};

fn config(data_dir: PathBuf) -> Config {
    let mut c = Config::default();
    c.broker.data_dir = data_dir;
    c.admin.enabled = false;
    c.amqp.enabled = false;
    c.mqtt.enabled = false;
    c.stomp.enabled = false;
    c
}

async fn publish(server: &Server, count: u64) -> Result<(), String> {
    let broker = server.broker();
    let err = |e: junction_core::CoreError| e.to_string();
    broker
        .declare_queue("/", QueueDef::new("crash"), false)
        .await
        .map_err(err)?;
    broker
        .declare_queue("/", QueueDef::new("transient-queue").transient(), false)
        .await
        .map_err(err)?;
    broker
        .declare_queue("/", QueueDef::new("durable-nonpersistent"), false)
        .await
        .map_err(err)?;
    // A persistent message in a transient queue, and a transient message in
    // a durable queue: neither may survive a restart.
    let p = broker
        .publish(
            "/",
            Message::new("", "transient-queue", Bytes::from_static(b"t")).persistent(),
        )
        .await
        .map_err(err)?;
    p.confirmed().await.map_err(err)?;
    let p = broker
        .publish(
            "/",
            Message::new("", "durable-nonpersistent", Bytes::from_static(b"n")),
        )
        .await
        .map_err(err)?;
    p.confirmed().await.map_err(err)?;
    let mut out = std::io::stdout();
    for i in 0..count {
        let msg = Message::new("", "crash", Bytes::from(i.to_string())).persistent();
        let published = broker.publish("/", msg).await.map_err(err)?;
        if published.confirmed().await.map_err(err)? {
            let _ = writeln!(out, "confirmed {i}");
            let _ = out.flush();
        }
    }
    let _ = writeln!(out, "done");
    let _ = out.flush();
    std::future::pending::<()>().await;
    Ok(())
}

fn inspect(server: &Server) {
    let broker = server.broker();
    let mut out = std::io::stdout().lock();
    for q in broker.stats().queues {
        let _ = writeln!(out, "queue {} {}", q.name, q.ready);
    }
    if let Ok(vh) = broker.vhost("/")
        && let Some(q) = vh.queue("crash")
    {
        for b in q.peek_bodies() {
            let _ = writeln!(out, "body {}", String::from_utf8_lossy(&b));
        }
    }
    let _ = out.flush();
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (mode, dir) = match (args.get(1), args.get(2)) {
        (Some(m), Some(d)) => (m.clone(), PathBuf::from(d)),
        _ => {
            eprintln!("usage: junction-testkit publish DATA_DIR COUNT | inspect DATA_DIR");
            return ExitCode::from(2);
        }
    };
    let count: u64 = args.get(3).and_then(|c| c.parse().ok()).unwrap_or(10_000);
    let Ok(rt) = tokio::runtime::Runtime::new() else {
        return ExitCode::FAILURE;
    };
    rt.block_on(async move {
        let Ok(mut signals) = ShutdownSignals::install() else {
            eprintln!("testkit: cannot install signal handlers");
            return ExitCode::FAILURE;
        };
        let server = match Server::start(config(dir)).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("testkit: {e}");
                return ExitCode::FAILURE;
            }
        };
        match mode.as_str() {
            "publish" => {
                tokio::select! {
                    _ = signals.recv() => {}
                    r = publish(&server, count) => {
                        if let Err(e) = r {
                            eprintln!("testkit: publish failed: {e}");
                            let _ = server.shutdown().await;
                            return ExitCode::FAILURE;
                        }
                    }
                }
            }
            "inspect" => inspect(&server),
            other => {
                eprintln!("testkit: unknown mode {other}");
                return ExitCode::from(2);
            }
        }
        match server.shutdown().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("testkit: shutdown failed: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
