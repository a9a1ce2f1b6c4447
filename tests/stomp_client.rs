//! The STOMP adapter end to end through tokio-stomp, a Rust client nobody
//! here wrote, against the real `junction` binary: client-individual acks
//! and NACK redelivery, transactions, the DISCONNECT receipt, topic
//! wildcards, STOMP ⇄ AMQP through lapin, and persistent messages read over
//! STOMP after a kill -9.
//!
//! tokio-stomp 0.4 speaks STOMP 1.2 and sends `host` as given (tests pass
//! the vhost `/`). It reads every header of a MESSAGE (`extra_headers`)
//! but sends only the headers it has fields for: no `receipt` on SEND or
//! SUBSCRIBE and no custom SEND headers. Those are covered from Python
//! (stomp.py, tests/python/test_stomp_*.py); here a subscription is known
//! to be in place when a probe sent after it on the same connection
//! arrives.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use junction_testsupport::{ANY_PORTS, BrokerProcess, temp_dir};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tempfile::TempDir;
use tokio_stomp::client::{self, ClientTransport};
use tokio_stomp::{AckMode, FromServer, Message, ToServer};

const JUNCTION: &str = env!("CARGO_BIN_EXE_junction");

/// Bound on any one step.
const STEP: Duration = Duration::from_secs(20);

/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(400);

struct Broker {
    dir: TempDir,
    process: BrokerProcess,
}

fn spawn(dir: &Path) -> BrokerProcess {
    let mut args = vec!["--data-dir", dir.to_str().expect("utf-8 path")];
    args.extend(ANY_PORTS);
    tokio::task::block_in_place(|| BrokerProcess::start(Path::new(JUNCTION), &args, dir))
}

impl Broker {
    fn start() -> Broker {
        let dir = temp_dir();
        let process = spawn(dir.path());
        Broker { dir, process }
    }

    fn stomp(&self) -> SocketAddr {
        self.process.addr("stomp")
    }

    fn kill9_and_restart(&mut self) {
        self.process.signal("KILL");
        let status = tokio::task::block_in_place(|| self.process.wait_exit(STEP));
        assert_eq!(status.code(), None, "killed by a signal");
        self.process = spawn(self.dir.path());
    }
}

async fn connect(addr: SocketAddr) -> ClientTransport {
    tokio::time::timeout(
        STEP,
        client::connect(addr, "/", Some("guest".into()), Some("guest".into())),
    )
    .await
    .expect("CONNECT answered in time")
    .expect("CONNECTED")
}

fn send(dest: &str, body: &str) -> Message<ToServer> {
    ToServer::Send {
        destination: dest.into(),
        transaction: None,
        body: Some(body.as_bytes().to_vec()),
    }
    .into()
}

fn subscribe(dest: &str, id: &str, ack: AckMode) -> Message<ToServer> {
    ToServer::Subscribe {
        destination: dest.into(),
        id: id.into(),
        ack: Some(ack),
    }
    .into()
}

fn ack(id: String) -> Message<ToServer> {
    ToServer::Ack {
        id,
        transaction: None,
    }
    .into()
}

fn header(m: &Message<FromServer>, name: &str) -> Option<String> {
    m.extra_headers
        .iter()
        .find(|(k, _)| k == name.as_bytes())
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

/// The next frame, within [`STEP`].
async fn next(conn: &mut ClientTransport) -> Message<FromServer> {
    tokio::time::timeout(STEP, conn.next())
        .await
        .expect("a frame in time")
        .expect("connection open")
        .expect("a well-formed frame")
}

/// Nothing arrives for [`QUIET`].
async fn quiet(conn: &mut ClientTransport) {
    if let Ok(Some(f)) = tokio::time::timeout(QUIET, conn.next()).await {
        panic!("unexpected frame {f:?}");
    }
}

async fn expect_receipt(conn: &mut ClientTransport, id: &str) {
    match next(conn).await.content {
        FromServer::Receipt { receipt_id } => assert_eq!(receipt_id, id),
        other => panic!("expected RECEIPT {id}, got {other:?}"),
    }
}

/// The body of the next MESSAGE and the frame.
async fn expect_message(conn: &mut ClientTransport) -> (String, Message<FromServer>) {
    let m = next(conn).await;
    match &m.content {
        FromServer::Message { body, .. } => (
            String::from_utf8(body.clone().unwrap_or_default()).expect("utf-8 body"),
            m,
        ),
        other => panic!("expected MESSAGE, got {other:?}"),
    }
}

async fn amqp(broker: &Broker) -> lapin::Channel {
    let conn = Connection::connect(
        &format!("amqp://guest:guest@{}/%2f", broker.process.addr("amqp")),
        ConnectionProperties::default(),
    )
    .await
    .expect("lapin connects");
    conn.create_channel().await.expect("channel")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_messages_confirmed_over_amqp_are_read_over_stomp_after_kill_9() {
    let mut broker = Broker::start();
    {
        let ch = amqp(&broker).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        ch.queue_declare(
            "keep".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        for i in 0..50 {
            let confirm = ch
                .basic_publish(
                    "".into(),
                    "keep".into(),
                    BasicPublishOptions::default(),
                    format!("m{i}").as_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(confirm.is_ack());
        }
    }
    broker.kill9_and_restart();
    let mut conn = connect(broker.stomp()).await;
    conn.send(subscribe("/queue/keep", "s", AckMode::ClientIndividual))
        .await
        .unwrap();
    for i in 0..50 {
        let (body, m) = expect_message(&mut conn).await;
        assert_eq!(body, format!("m{i}"));
        assert_eq!(header(&m, "persistent").as_deref(), Some("true"));
        assert_eq!(header(&m, "redelivered").as_deref(), Some("true"));
        conn.send(ack(
            header(&m, "ack").expect("1.2 MESSAGE has an ack header")
        ))
        .await
        .unwrap();
    }
    quiet(&mut conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_redelivers_and_acks_settle_one_message_each() {
    let broker = Broker::start();
    let mut conn = connect(broker.stomp()).await;
    conn.send(subscribe("/queue/work", "w", AckMode::ClientIndividual))
        .await
        .unwrap();
    for body in ["a", "b", "c"] {
        conn.send(send("/queue/work", body)).await.unwrap();
    }
    let mut acks = Vec::new();
    for want in ["a", "b", "c"] {
        let (body, m) = expect_message(&mut conn).await;
        assert_eq!(body, want);
        assert_eq!(header(&m, "redelivered").as_deref(), Some("false"));
        match &m.content {
            FromServer::Message {
                destination,
                subscription,
                ..
            } => {
                assert_eq!(destination, "/queue/work");
                assert_eq!(subscription, "w");
            }
            other => panic!("{other:?}"),
        }
        acks.push(header(&m, "ack").expect("ack header"));
    }
    // NACK "b": it comes back, flagged redelivered; "a" and "c" are acked.
    conn.send(
        ToServer::Nack {
            id: acks[1].clone(),
            transaction: None,
        }
        .into(),
    )
    .await
    .unwrap();
    let (body, m) = expect_message(&mut conn).await;
    assert_eq!(body, "b");
    assert_eq!(header(&m, "redelivered").as_deref(), Some("true"));
    for id in [acks[0].clone(), acks[2].clone(), header(&m, "ack").unwrap()] {
        conn.send(ack(id)).await.unwrap();
    }
    // DISCONNECT's receipt comes after the acks are done.
    conn.send(
        ToServer::Disconnect {
            receipt: Some("bye".into()),
        }
        .into(),
    )
    .await
    .unwrap();
    expect_receipt(&mut conn, "bye").await;
    // Nothing is left for a new subscriber.
    let mut again = connect(broker.stomp()).await;
    again
        .send(subscribe("/queue/work", "w2", AckMode::Auto))
        .await
        .unwrap();
    quiet(&mut again).await;
}

/// Transactional ACKs (tokio-stomp 0.4 writes a SEND's transaction as an
/// `id` header, so transactional SENDs are tested from Python only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_acks_settle_and_aborted_ones_do_not() {
    let broker = Broker::start();
    let mut conn = connect(broker.stomp()).await;
    conn.send(subscribe("/queue/tx", "t", AckMode::ClientIndividual))
        .await
        .unwrap();
    for body in ["a", "b"] {
        conn.send(send("/queue/tx", body)).await.unwrap();
    }
    let (a, ma) = expect_message(&mut conn).await;
    let (b, mb) = expect_message(&mut conn).await;
    assert_eq!((a.as_str(), b.as_str()), ("a", "b"));
    let in_tx = |tx: &str, m: &Message<FromServer>| -> Message<ToServer> {
        ToServer::Ack {
            id: header(m, "ack").expect("ack header"),
            transaction: Some(tx.into()),
        }
        .into()
    };
    for frame in [
        ToServer::Begin {
            transaction: "t1".into(),
        }
        .into(),
        in_tx("t1", &ma),
        ToServer::Abort {
            transaction: "t1".into(),
        }
        .into(),
        ToServer::Begin {
            transaction: "t2".into(),
        }
        .into(),
        in_tx("t2", &mb),
        ToServer::Commit {
            transaction: "t2".into(),
        }
        .into(),
        ToServer::Disconnect {
            receipt: Some("bye".into()),
        }
        .into(),
    ] {
        conn.send(frame).await.unwrap();
    }
    expect_receipt(&mut conn, "bye").await;
    // "a" was never acked (its transaction aborted): it comes back alone.
    let mut again = connect(broker.stomp()).await;
    again
        .send(subscribe("/queue/tx", "t2", AckMode::Auto))
        .await
        .unwrap();
    let (body, m) = expect_message(&mut again).await;
    assert_eq!(body, "a");
    assert_eq!(header(&m, "redelivered").as_deref(), Some("true"));
    quiet(&mut again).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_send_reaches_stomp_wildcards_and_an_amqp_queue() {
    let broker = Broker::start();
    let ch = amqp(&broker).await;
    ch.queue_declare(
        "plant-temps".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "plant-temps".into(),
        "amq.topic".into(),
        "plant.*.temp".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut amqp_consumer = ch
        .basic_consume(
            "plant-temps".into(),
            "c".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut sub = connect(broker.stomp()).await;
    sub.send(subscribe("/topic/plant.>", "all", AckMode::Auto))
        .await
        .unwrap();
    // Frames are handled in order: once the probe arrives, the
    // subscription is bound.
    sub.send(send("/topic/plant.probe", "probe")).await.unwrap();
    assert_eq!(expect_message(&mut sub).await.0, "probe");
    let mut publisher = connect(broker.stomp()).await;
    publisher
        .send(send("/exchange/amq.topic/plant.7.temp", "21.5"))
        .await
        .unwrap();
    let (body, m) = expect_message(&mut sub).await;
    assert_eq!(body, "21.5");
    match &m.content {
        FromServer::Message {
            destination,
            subscription,
            ..
        } => {
            // Published to /exchange/amq.topic/k, delivered as /topic/k.
            assert_eq!(destination, "/topic/plant.7.temp");
            assert_eq!(subscription, "all");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(header(&m, "content-length").as_deref(), Some("4"));
    let d = tokio::time::timeout(STEP, amqp_consumer.next())
        .await
        .expect("AMQP delivery in time")
        .expect("consumer open")
        .expect("delivery");
    assert_eq!(d.data, b"21.5");
    assert_eq!(d.routing_key.as_str(), "plant.7.temp");
    assert_eq!(d.exchange.as_str(), "amq.topic");
    quiet(&mut sub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_binary_bodies_arrive_byte_for_byte() {
    let broker = Broker::start();
    let mut conn = connect(broker.stomp()).await;
    conn.send(subscribe("/queue/big", "b", AckMode::Auto))
        .await
        .unwrap();
    // Small bodies go out beside their headers, large ones as their own
    // chunk of a vectored write: both must arrive exact, NULs included.
    let bodies: Vec<Vec<u8>> = [0usize, 1, 4095, 4096, 100_000, 1 << 20]
        .iter()
        .map(|&n| (0..n).map(|i| (i % 251) as u8).collect())
        .collect();
    for b in &bodies {
        conn.send(
            ToServer::Send {
                destination: "/queue/big".into(),
                transaction: None,
                body: Some(b.clone()),
            }
            .into(),
        )
        .await
        .unwrap();
    }
    for want in &bodies {
        let m = next(&mut conn).await;
        match &m.content {
            FromServer::Message { body, .. } => {
                assert_eq!(body.clone().unwrap_or_default().len(), want.len());
                assert!(
                    body.clone().unwrap_or_default() == *want,
                    "body of {} bytes",
                    want.len()
                );
            }
            other => panic!("expected MESSAGE, got {other:?}"),
        }
        assert_eq!(header(&m, "content-length"), Some(want.len().to_string()));
    }
    quiet(&mut conn).await;
}
