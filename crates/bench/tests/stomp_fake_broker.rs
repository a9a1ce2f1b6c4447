//! The generator end to end over its own STOMP client, against a fake STOMP
//! broker in this test that loses, duplicates and reorders messages on
//! purpose. The RESULT figures must match the faults exactly. No external
//! broker: the fake listens on 127.0.0.1:0.

use bytes::BytesMut;
use clap::Parser;
use junction_bench::payload;
use junction_bench::stomp::codec::{self, Frame};
use junction_bench::{Args, run};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// What the fake broker does to the messages it routes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Faults {
    /// Deliver everything once, in order.
    None,
    /// Drop seq % 10 == 9; hold seq % 5 == 0 back until the next message has
    /// been delivered; deliver seq % 7 == 3 twice.
    LoseDuplicateReorder,
}

/// The fake broker's routing state, shared by its connections.
struct Broker {
    faults: Faults,
    /// (sender to the subscriber's connection, subscription id).
    subscribers: Vec<(mpsc::UnboundedSender<Frame>, String)>,
    /// Round-robin cursor for /queue/ destinations.
    next: usize,
    /// A message held back to be delivered after the next one.
    held: Option<Frame>,
    /// message-id counter.
    ids: u64,
}

impl Broker {
    fn deliver(&mut self, destination: &str, frame: &Frame) {
        if self.subscribers.is_empty() {
            return;
        }
        if destination.starts_with("/queue/") {
            let i = self.next % self.subscribers.len();
            self.next += 1;
            self.send_to(i, frame);
        } else {
            for i in 0..self.subscribers.len() {
                self.send_to(i, frame);
            }
        }
    }

    fn send_to(&mut self, i: usize, frame: &Frame) {
        self.ids += 1;
        let (tx, sub) = &self.subscribers[i];
        let message = Frame::new("MESSAGE")
            .header("subscription", sub.clone())
            .header("message-id", self.ids.to_string())
            .header("ack", self.ids.to_string())
            .body(frame.body.clone());
        let _ = tx.send(message);
    }

    fn route(&mut self, send: &Frame) {
        let destination = send.get("destination").unwrap_or("").to_string();
        let seq = payload::decode(&send.body).expect("bench payload").seq;
        if self.faults == Faults::LoseDuplicateReorder {
            if seq % 10 == 9 {
                return;
            }
            if seq.is_multiple_of(5) && self.held.is_none() {
                self.held = Some(send.clone());
                return;
            }
        }
        self.deliver(&destination, send);
        if self.faults == Faults::LoseDuplicateReorder {
            if seq % 7 == 3 {
                self.deliver(&destination, send);
            }
            if let Some(held) = self.held.take() {
                self.deliver(&destination, &held);
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, broker: Arc<Mutex<Broker>>) {
    let (mut read, mut write) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
    let writer = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        while let Some(frame) = rx.recv().await {
            buf.clear();
            codec::encode(&frame, &mut buf);
            if write.write_all(&buf).await.is_err() {
                break;
            }
            if frame.command == "RECEIPT" && frame.get("receipt-id") == Some("bye") {
                break;
            }
        }
    });
    let mut buf = BytesMut::new();
    'conn: loop {
        while let Some(frame) =
            codec::decode(&mut buf, 1 << 20).expect("valid frame from the client")
        {
            let receipt = frame.get("receipt").map(str::to_string);
            match frame.command.as_str() {
                "CONNECT" | "STOMP" => {
                    assert_eq!(frame.get("accept-version"), Some("1.2"));
                    let _ = tx.send(
                        Frame::new("CONNECTED")
                            .header("version", "1.2")
                            .header("heart-beat", "0,0"),
                    );
                }
                "SUBSCRIBE" => {
                    let id = frame.get("id").unwrap_or("0").to_string();
                    broker.lock().unwrap().subscribers.push((tx.clone(), id));
                }
                "SEND" => broker.lock().unwrap().route(&frame),
                "ACK" => assert!(frame.get("id").is_some(), "ACK needs an id"),
                "DISCONNECT" => {}
                other => panic!("unexpected {other}"),
            }
            if let Some(r) = receipt {
                let _ = tx.send(Frame::new("RECEIPT").header("receipt-id", r));
            }
            if frame.command == "DISCONNECT" {
                break 'conn;
            }
        }
        match read.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// Starts the fake broker; returns its port.
async fn fake_broker(faults: Faults) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let broker = Arc::new(Mutex::new(Broker {
        faults,
        subscribers: Vec::new(),
        next: 0,
        held: None,
        ids: 0,
    }));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_connection(stream, Arc::clone(&broker)));
        }
    });
    port
}

fn args(port: u16, extra: &[&str]) -> Args {
    let port = port.to_string();
    let mut argv = vec![
        "junction-bench",
        "--proto",
        "stomp",
        "--stomp-port",
        &port,
        "--duration",
        "20",
        "--drain-timeout",
        "0.5",
        "--quiet",
    ];
    argv.extend_from_slice(extra);
    Args::try_parse_from(argv).unwrap()
}

#[tokio::test]
async fn lost_duplicated_and_reordered_messages_are_counted_exactly() {
    let port = fake_broker(Faults::LoseDuplicateReorder).await;
    let outcome = run(&args(port, &["--count", "100"])).await.unwrap();
    assert!(outcome.failure.is_none(), "{:?}", outcome.failure);
    let r = outcome.report;
    // Dropped: 9, 19, …, 99 (10). Held back past their successor: 0, 5, …,
    // 95 (20 reorders). Doubled: seq % 7 == 3 unless dropped or held: 3, 17,
    // 24, 31, 38, 52, 66, 73, 87, 94 (10). Received: 90 unique + 10 copies.
    assert_eq!(r.sent, Some(100));
    assert_eq!(r.expected, Some(100));
    assert_eq!(r.received, Some(100));
    assert_eq!(r.lost, Some(10));
    assert_eq!(r.duplicated, Some(10));
    assert_eq!(r.reordered, Some(20));
    assert!(r.latency_us.is_some());
    assert!(r.msgs_per_sec.is_some_and(|m| m > 0.0));
}

#[tokio::test]
async fn fan_out_with_receipts_and_client_acks_delivers_everything_to_everyone() {
    let port = fake_broker(Faults::None).await;
    let a = args(
        port,
        &[
            "--scenario",
            "fan-out",
            "--consumers",
            "3",
            "--count",
            "200",
            "--receipts",
            "--stomp-ack",
            "client-individual",
            "--inflight",
            "8",
            "--rate",
            "4000",
        ],
    );
    let outcome = run(&a).await.unwrap();
    assert!(outcome.failure.is_none(), "{:?}", outcome.failure);
    let r = outcome.report;
    assert_eq!(
        (r.sent, r.expected, r.received),
        (Some(200), Some(600), Some(600))
    );
    assert_eq!(
        (r.lost, r.duplicated, r.reordered),
        (Some(0), Some(0), Some(0))
    );
    assert_eq!(r.connections, Some(4));
}

#[tokio::test]
async fn queue_splits_messages_between_competing_consumers_without_loss() {
    let port = fake_broker(Faults::None).await;
    let a = args(
        port,
        &[
            "--scenario",
            "queue",
            "--publishers",
            "2",
            "--consumers",
            "2",
            "--count",
            "150",
            "--size",
            "1000",
        ],
    );
    let outcome = run(&a).await.unwrap();
    assert!(outcome.failure.is_none(), "{:?}", outcome.failure);
    let r = outcome.report;
    assert_eq!(
        (r.sent, r.expected, r.received),
        (Some(300), Some(300), Some(300))
    );
    assert_eq!((r.lost, r.duplicated), (Some(0), Some(0)));
    assert!(r.bytes_per_sec.is_some_and(|b| b > 0.0));
}

#[tokio::test]
async fn idle_connections_are_held_and_counted() {
    let port = fake_broker(Faults::None).await;
    let a = args(
        port,
        &[
            "--scenario",
            "idle",
            "--connections",
            "20",
            "--duration",
            "0.5",
        ],
    );
    let outcome = run(&a).await.unwrap();
    assert!(outcome.failure.is_none(), "{:?}", outcome.failure);
    assert_eq!(outcome.report.connections, Some(20));
    assert_eq!(outcome.report.sent, None);
}

#[tokio::test]
async fn refused_connection_is_a_setup_error() {
    // Bind then drop: nothing listens on that port any more.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = run(&args(port, &["--count", "10"])).await.unwrap_err();
    assert!(
        matches!(err, junction_bench::BenchError::Connect { .. }),
        "{err}"
    );
}
