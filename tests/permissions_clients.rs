//! Permissions like RabbitMQ's (configure / write / read patterns per
//! vhost, topic patterns per topic exchange) end to end with the Rust
//! clients, against the real `junction` binary whose users file was set up
//! beforehand with `junction user add`, `junction permission set` and
//! `junction topic-permission set` on the same data directory:
//!
//! - lapin (AMQP 0-9-1): a declare, publish, get or bind the patterns do
//!   not allow closes its channel with 403 ACCESS_REFUSED and RabbitMQ's
//!   exact reply text, and does nothing; the connection, its other
//!   channels and other users go on;
//! - rumqttc, MQTT 5: a SUBSCRIBE refuses only the filter topic read does
//!   not allow (SUBACK 0x87), a QoS 1 PUBLISH topic write does not allow is
//!   answered with PUBACK 0x87 and the connection stays; `{client_id}` in
//!   a pattern stands for the connection's client id;
//! - rumqttc, MQTT 3.1.1: the refused filter fails alone (SUBACK 0x80),
//!   and a refused PUBLISH closes the connection (3.1.1 has no way to say
//!   no to it);
//! - async-stomp: a refused SEND gets an ERROR `access_refused` with the
//!   denial's text, and the connection closes; other connections go on.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use async_stomp::client::{ClientTransport, Connector};
use async_stomp::{AckMode, FromServer, ToServer};
use futures_util::{SinkExt, StreamExt};
use junction_testsupport::{ANY_PORTS, BrokerProcess, temp_dir, wait_exit};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind};
use rumqttc::v5;
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const JUNCTION: &str = env!("CARGO_BIN_EXE_junction");

/// Bound on any one step: a login (argon2), a round trip, a delivery.
const STEP: Duration = Duration::from_secs(30);

/// Bound on one `junction user|permission|topic-permission` run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(400);

/// The user whose permissions are narrowed.
const BOB: &str = "bob";
const BOB_PW: &str = "bob-pw";

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no outcome within {STEP:?}"))
}

// ---------------------------------------------------------------------------
// The broker process

/// Runs `junction --data-dir DIR args...` (bounded) and checks it succeeded.
fn junction_command(data_dir: &str, args: &[&str]) {
    let mut child = Command::new(JUNCTION)
        .args(["--data-dir", data_dir])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("run junction {args:?}: {e}"));
    let status = wait_exit(&mut child, COMMAND_TIMEOUT);
    assert!(status.success(), "junction {args:?}: {status}");
}

/// A `junction` process on a temporary data directory whose users file has
/// guest (everything on "/") and bob.
struct Broker {
    /// First, so the process is killed before its directory goes.
    process: BrokerProcess,
    _dir: TempDir,
}

impl Broker {
    /// Starts a broker where bob has `[configure, write, read]` on "/" and,
    /// when given, the topic permissions `[exchange, write, read]` there.
    async fn start(permissions: [&str; 3], topic: Option<[&str; 3]>) -> Broker {
        tokio::task::block_in_place(|| {
            let dir = temp_dir();
            let d = dir.path().to_str().expect("utf-8 path");
            junction_command(d, &["user", "add", BOB, "--password", BOB_PW]);
            let [configure, write, read] = permissions;
            junction_command(d, &["permission", "set", BOB, "/", configure, write, read]);
            if let Some([exchange, write, read]) = topic {
                junction_command(
                    d,
                    &["topic-permission", "set", BOB, "/", exchange, write, read],
                );
            }
            let mut args = vec!["--data-dir", d];
            args.extend(ANY_PORTS);
            let process = BrokerProcess::start(Path::new(JUNCTION), &args, dir.path());
            Broker { process, _dir: dir }
        })
    }

    fn addr(&self, listener: &str) -> SocketAddr {
        self.process.addr(listener)
    }
}

// ---------------------------------------------------------------------------
// AMQP (lapin)

async fn amqp_connect(addr: SocketAddr, user: &str, password: &str) -> Connection {
    within(
        &format!("AMQP connect as {user}"),
        Connection::connect(
            &format!("amqp://{user}:{password}@{addr}/%2f"),
            ConnectionProperties::default(),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("AMQP connect as {user}: {e}"))
}

async fn open_channel(conn: &Connection) -> Channel {
    within("channel.open", conn.create_channel())
        .await
        .expect("channel.open")
}

async fn confirm_mode(ch: &Channel) {
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
}

async fn declare(ch: &Channel, queue: &str) -> lapin::Result<()> {
    within(
        &format!("queue.declare {queue}"),
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .map(|_| ())
}

/// basic.publish on a channel in confirm mode, then its confirm: the
/// broker's ack, or the error that closed the channel (which lapin may
/// report on the publish itself or on its confirm).
async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
) -> lapin::Result<Confirmation> {
    let what = format!("publish to {exchange:?} with key {key:?}");
    let confirm = within(
        &what,
        ch.basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        ),
    )
    .await?;
    within(&format!("confirm of {what}"), confirm).await
}

/// basic.get with no_ack: the body, or None for get-empty.
async fn get_body(ch: &Channel, queue: &str) -> lapin::Result<Option<Vec<u8>>> {
    within(
        &format!("basic.get {queue}"),
        ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .map(|m| m.map(|m| m.delivery.data))
}

/// The reply code and text of a channel or connection error from the
/// broker.
fn amqp_error(e: &lapin::Error) -> (u16, String) {
    match e.kind() {
        ErrorKind::ProtocolError(p) => (p.get_id(), p.get_message().as_str().to_string()),
        other => panic!("expected an AMQP error from the broker, got {other:?}"),
    }
}

/// Checks that `e` closed `ch` (not the connection `conn`) with 403 and
/// exactly `text`.
fn assert_refused(e: &lapin::Error, ch: &Channel, conn: &Connection, text: &str) {
    assert_eq!(amqp_error(e), (403, text.to_string()));
    assert!(e.is_amqp_soft_error(), "a channel error: {e}");
    assert!(!ch.status().connected(), "the channel is closed: {text}");
    assert!(
        conn.status().connected(),
        "the connection stays open: {text}"
    );
}

/// A confirmed publish through the default exchange to `queue` and a
/// basic.get of it give back exactly `body`.
async fn round_trip_via_default_exchange(ch: &Channel, queue: &str, body: &[u8]) {
    let confirmation = publish_confirmed(ch, "", queue, body)
        .await
        .unwrap_or_else(|e| panic!("publish to {queue}: {e}"));
    assert_eq!(confirmation, Confirmation::Ack(None), "publish to {queue}");
    let got = get_body(ch, queue)
        .await
        .unwrap_or_else(|e| panic!("basic.get {queue}: {e}"));
    assert_eq!(got.as_deref(), Some(body), "basic.get {queue}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_gets_403_for_each_permission_and_keeps_the_connection() {
    let broker = Broker::start([r"^bob\.", r"^(bob\.|amq\.default$)", r"^bob\."], None).await;
    let addr = broker.addr("amqp");

    // guest (everything) owns a queue bob may not read.
    let guest = amqp_connect(addr, "guest", "guest").await;
    let gch = open_channel(&guest).await;
    declare(&gch, "guest.q")
        .await
        .expect("guest declares guest.q");
    confirm_mode(&gch).await;

    let conn = amqp_connect(addr, BOB, BOB_PW).await;
    let ch = open_channel(&conn).await;
    declare(&ch, "bob.q").await.expect("bob declares bob.q");
    confirm_mode(&ch).await;
    // Write on amq.default, read on bob.q.
    round_trip_via_default_exchange(&ch, "bob.q", b"to bob.q").await;

    // Configure: a queue outside ^bob\.
    let c = open_channel(&conn).await;
    let e = declare(&c, "other.q").await.expect_err("declare other.q");
    assert_refused(
        &e,
        &c,
        &conn,
        "ACCESS_REFUSED - configure access to queue 'other.q' in vhost '/' refused for user 'bob'",
    );

    // Write: amq.direct is not bob's.
    let c = open_channel(&conn).await;
    confirm_mode(&c).await;
    let e = publish_confirmed(&c, "amq.direct", "k", b"not allowed")
        .await
        .expect_err("publish to amq.direct");
    assert_refused(
        &e,
        &c,
        &conn,
        "ACCESS_REFUSED - write access to exchange 'amq.direct' in vhost '/' refused for user 'bob'",
    );

    // Read: guest's queue.
    let c = open_channel(&conn).await;
    let e = get_body(&c, "guest.q")
        .await
        .expect_err("basic.get guest.q");
    assert_refused(
        &e,
        &c,
        &conn,
        "ACCESS_REFUSED - read access to queue 'guest.q' in vhost '/' refused for user 'bob'",
    );

    // Bind: write on bob.q is there, read on the source exchange is not.
    let c = open_channel(&conn).await;
    let e = within(
        "queue.bind bob.q to amq.fanout",
        c.queue_bind(
            "bob.q".into(),
            "amq.fanout".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect_err("bind bob.q to amq.fanout");
    assert_refused(
        &e,
        &c,
        &conn,
        "ACCESS_REFUSED - read access to exchange 'amq.fanout' in vhost '/' refused for user 'bob'",
    );

    // The refused declare did nothing: other.q does not exist.
    let probe = open_channel(&guest).await;
    let e = within(
        "passive queue.declare other.q",
        probe.queue_declare(
            "other.q".into(),
            QueueDeclareOptions::default().passive(),
            FieldTable::default(),
        ),
    )
    .await
    .expect_err("other.q was never made");
    assert_eq!(
        amqp_error(&e),
        (
            404,
            "NOT_FOUND - no queue 'other.q' in vhost '/'".to_string()
        )
    );

    // The connection, its first channel, a new channel and guest go on.
    assert!(conn.status().connected(), "bob's connection is open");
    assert!(ch.status().connected(), "bob's first channel is open");
    round_trip_via_default_exchange(&ch, "bob.q", b"still here").await;
    let again = open_channel(&conn).await;
    confirm_mode(&again).await;
    declare(&again, "bob.q2").await.expect("declare bob.q2");
    round_trip_via_default_exchange(&again, "bob.q2", b"\x00new channel\xff").await;
    round_trip_via_default_exchange(&gch, "guest.q", b"guest works").await;

    within("connection.close", conn.close(200, "done".into()))
        .await
        .expect("bob's connection.close");
    within("connection.close", guest.close(200, "done".into()))
        .await
        .expect("guest's connection.close");
}

// ---------------------------------------------------------------------------
// MQTT (rumqttc)

/// What the tests look at, the same for both versions.
#[derive(Debug)]
enum Ev {
    /// The CONNACK's code by rumqttc's name.
    ConnAck(String),
    /// Granted QoS per filter, or the refusal's name.
    SubAck(Vec<Result<u8, String>>),
    /// The client wrote a PUBLISH with this packet id.
    Sent(u16),
    /// A PUBACK: packet id and reason by rumqttc's name ("Success" in
    /// 3.1.1, which has none).
    PubAck(u16, String),
    Publish {
        topic: String,
        payload: Vec<u8>,
    },
    Other,
}

fn v3_event(ev: rumqttc::Event) -> Ev {
    use rumqttc::{Event, Outgoing, Packet, SubscribeReasonCode};
    match ev {
        Event::Incoming(Packet::ConnAck(c)) => Ev::ConnAck(format!("{:?}", c.code)),
        Event::Incoming(Packet::SubAck(s)) => Ev::SubAck(
            s.return_codes
                .iter()
                .map(|r| match r {
                    SubscribeReasonCode::Success(q) => Ok(*q as u8),
                    other => Err(format!("{other:?}")),
                })
                .collect(),
        ),
        Event::Incoming(Packet::PubAck(a)) => Ev::PubAck(a.pkid, "Success".into()),
        Event::Incoming(Packet::Publish(p)) => Ev::Publish {
            topic: p.topic,
            payload: p.payload.to_vec(),
        },
        Event::Outgoing(Outgoing::Publish(pkid)) => Ev::Sent(pkid),
        _ => Ev::Other,
    }
}

fn v5_event(ev: v5::Event) -> Ev {
    use rumqttc::Outgoing;
    use v5::mqttbytes::v5::SubscribeReasonCode;
    use v5::{Event, Incoming};
    match ev {
        Event::Incoming(Incoming::ConnAck(c)) => Ev::ConnAck(format!("{:?}", c.code)),
        Event::Incoming(Incoming::SubAck(s)) => Ev::SubAck(
            s.return_codes
                .iter()
                .map(|r| match r {
                    SubscribeReasonCode::Success(q) => Ok(*q as u8),
                    other => Err(format!("{other:?}")),
                })
                .collect(),
        ),
        Event::Incoming(Incoming::PubAck(a)) => Ev::PubAck(a.pkid, format!("{:?}", a.reason)),
        Event::Incoming(Incoming::Publish(p)) => Ev::Publish {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload.to_vec(),
        },
        Event::Outgoing(Outgoing::Publish(pkid)) => Ev::Sent(pkid),
        _ => Ev::Other,
    }
}

enum Handle {
    V3(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

/// A connected MQTT client. Its event loop runs in a task that forwards
/// every event and stops at the first error, so rumqttc never reconnects
/// behind the test's back.
struct Mqtt {
    name: String,
    handle: Handle,
    events: mpsc::UnboundedReceiver<Result<Ev, String>>,
    /// Events read while waiting for another one.
    backlog: VecDeque<Ev>,
    driver: JoinHandle<()>,
}

impl Drop for Mqtt {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Mqtt {
    /// Connects `id` (clean session) as `user`/`password` and waits for a
    /// successful CONNACK.
    async fn connect(addr: SocketAddr, v5: bool, id: &str, user: &str, password: &str) -> Mqtt {
        let host = addr.ip().to_string();
        let (tx, events) = mpsc::unbounded_channel();
        let (handle, driver) = if v5 {
            let mut o = v5::MqttOptions::new(id, host, addr.port());
            o.set_credentials(user, password);
            let (c, mut el) = v5::AsyncClient::new(o, 16);
            let driver = tokio::spawn(async move {
                loop {
                    let ev = el.poll().await.map(v5_event).map_err(|e| e.to_string());
                    let end = ev.is_err();
                    if tx.send(ev).is_err() || end {
                        return;
                    }
                }
            });
            (Handle::V5(c), driver)
        } else {
            let mut o = rumqttc::MqttOptions::new(id, host, addr.port());
            o.set_credentials(user, password);
            let (c, mut el) = rumqttc::AsyncClient::new(o, 16);
            let driver = tokio::spawn(async move {
                loop {
                    let ev = el.poll().await.map(v3_event).map_err(|e| e.to_string());
                    let end = ev.is_err();
                    if tx.send(ev).is_err() || end {
                        return;
                    }
                }
            });
            (Handle::V3(c), driver)
        };
        let version = if v5 { "MQTT 5" } else { "MQTT 3.1.1" };
        let mut c = Mqtt {
            name: format!("{id} ({user}, {version})"),
            handle,
            events,
            backlog: VecDeque::new(),
            driver,
        };
        let code = c
            .wait_for("CONNACK", |e| match e {
                Ev::ConnAck(code) => Some(code.clone()),
                _ => None,
            })
            .await;
        assert_eq!(code, "Success", "{}: CONNACK", c.name);
        c
    }

    /// The first event `want` picks, from those already read or the next
    /// ones; the others are kept for later. The connection closing fails.
    async fn wait_for<T>(&mut self, what: &str, mut want: impl FnMut(&Ev) -> Option<T>) -> T {
        if let Some(i) = self.backlog.iter().position(|e| want(e).is_some()) {
            let e = self.backlog.remove(i).expect("position is in range");
            return want(&e).expect("picked before");
        }
        let what = format!("{}: {what}", self.name);
        let (events, backlog) = (&mut self.events, &mut self.backlog);
        within(&what, async {
            loop {
                match events.recv().await {
                    Some(Ok(e)) => match want(&e) {
                        Some(t) => return t,
                        None if matches!(e, Ev::Other) => {}
                        None => backlog.push_back(e),
                    },
                    Some(Err(c)) => panic!("{what}: connection closed: {c}"),
                    None => panic!("{what}: connection already closed"),
                }
            }
        })
        .await
    }

    /// One SUBSCRIBE with every filter at QoS 1; the SUBACK's codes.
    async fn subscribe_qos1(&mut self, filters: &[&str]) -> Vec<Result<u8, String>> {
        let sent =
            match &self.handle {
                Handle::V3(c) => c
                    .subscribe_many(filters.iter().map(|f| {
                        rumqttc::SubscribeFilter::new(f.to_string(), rumqttc::QoS::AtLeastOnce)
                    }))
                    .await
                    .map_err(|e| e.to_string()),
                Handle::V5(c) => c
                    .subscribe_many(filters.iter().map(|f| {
                        v5::mqttbytes::v5::Filter::new(*f, v5::mqttbytes::QoS::AtLeastOnce)
                    }))
                    .await
                    .map_err(|e| e.to_string()),
            };
        sent.unwrap_or_else(|e| panic!("{}: SUBSCRIBE {filters:?}: {e}", self.name));
        self.wait_for(&format!("SUBACK of {filters:?}"), |e| match e {
            Ev::SubAck(codes) => Some(codes.clone()),
            _ => None,
        })
        .await
    }

    /// Sends a QoS 1 PUBLISH and returns its packet id once written.
    async fn send_qos1(&mut self, topic: &str, payload: &[u8]) -> u16 {
        let sent = match &self.handle {
            Handle::V3(c) => c
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.to_vec())
                .await
                .map_err(|e| e.to_string()),
            Handle::V5(c) => c
                .publish(
                    topic,
                    v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    payload.to_vec(),
                )
                .await
                .map_err(|e| e.to_string()),
        };
        sent.unwrap_or_else(|e| panic!("{}: PUBLISH {topic}: {e}", self.name));
        self.wait_for(&format!("PUBLISH {topic} written"), |e| match e {
            Ev::Sent(id) => Some(*id),
            _ => None,
        })
        .await
    }

    /// Publishes at QoS 1 and returns the PUBACK's reason.
    async fn publish_qos1(&mut self, topic: &str, payload: &[u8]) -> String {
        let pkid = self.send_qos1(topic, payload).await;
        self.wait_for(&format!("PUBACK of {topic}"), |e| match e {
            Ev::PubAck(p, reason) if *p == pkid => Some(reason.clone()),
            _ => None,
        })
        .await
    }

    /// The next PUBLISH delivered: (topic, payload).
    async fn next_message(&mut self) -> (String, Vec<u8>) {
        self.wait_for("PUBLISH delivered", |e| match e {
            Ev::Publish { topic, payload } => Some((topic.clone(), payload.clone())),
            _ => None,
        })
        .await
    }

    /// Fails if a PUBLISH is waiting or arrives within [`QUIET`], or if the
    /// connection closes.
    async fn assert_quiet(&mut self, why: &str) {
        let stray: Vec<&Ev> = self
            .backlog
            .iter()
            .filter(|e| matches!(e, Ev::Publish { .. }))
            .collect();
        assert!(stray.is_empty(), "{}: {why}: got {stray:?}", self.name);
        let until = tokio::time::Instant::now() + QUIET;
        loop {
            match tokio::time::timeout_at(until, self.events.recv()).await {
                Err(_) => return,
                Ok(Some(Ok(e @ Ev::Publish { .. }))) => {
                    panic!("{}: {why}: got {e:?}", self.name)
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(c))) => panic!("{}: {why}: connection closed: {c}", self.name),
                Ok(None) => panic!("{}: {why}: connection already closed", self.name),
            }
        }
    }

    /// Waits for the broker to close the connection; fails if packet
    /// `pkid` is acknowledged first. Returns rumqttc's error.
    async fn expect_closed_without_ack(&mut self, pkid: u16) -> String {
        let what = format!("{}: connection closed instead of PUBACK {pkid}", self.name);
        if let Some(Ev::PubAck(p, reason)) = self
            .backlog
            .iter()
            .find(|e| matches!(e, Ev::PubAck(p, _) if *p == pkid))
        {
            panic!("{what}: PUBACK {p} {reason}");
        }
        let events = &mut self.events;
        within(&what, async {
            loop {
                match events.recv().await {
                    Some(Ok(Ev::PubAck(p, reason))) if p == pkid => {
                        panic!("{what}: got PUBACK {p} {reason}")
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return e,
                    None => panic!("{what}: the event loop ended without an error"),
                }
            }
        })
        .await
    }
}

/// A broker where bob may do anything but publish and subscribe outside
/// `bob.` on `amq.topic`.
async fn mqtt_broker() -> Broker {
    Broker::start(
        [".*", ".*", ".*"],
        Some(["amq.topic", r"^bob\.", r"^bob\."]),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_v5_publish_0x87_and_subscribe_0x87_per_filter() {
    let broker = mqtt_broker().await;
    let addr = broker.addr("mqtt");
    let mut bob = Mqtt::connect(addr, true, "bob-v5", BOB, BOB_PW).await;

    // `alice/a` is `alice.a`: topic read refuses it, and only it.
    let codes = bob.subscribe_qos1(&["bob/a", "alice/a"]).await;
    assert_eq!(
        codes,
        vec![Ok(1), Err("NotAuthorized".to_string())],
        "SUBACK of [bob/a, alice/a]"
    );

    // The refused filter was never bound: a publish on it matches nobody.
    let mut guest = Mqtt::connect(addr, true, "guest-v5", "guest", "guest").await;
    assert_eq!(
        guest.publish_qos1("alice/a", b"not for bob").await,
        "NoMatchingSubscribers",
        "guest's publish on the refused filter"
    );
    assert_eq!(
        guest.publish_qos1("bob/a", b"for bob").await,
        "Success",
        "guest's publish on the granted filter"
    );
    assert_eq!(
        bob.next_message().await,
        ("bob/a".to_string(), b"for bob".to_vec())
    );

    // Topic write refuses alice/x with 0x87; the connection stays and
    // bob's own topics go on.
    assert_eq!(
        bob.publish_qos1("alice/x", b"denied").await,
        "NotAuthorized",
        "PUBACK of alice/x"
    );
    assert_eq!(
        bob.publish_qos1("bob/x", b"allowed, nobody listens").await,
        "NoMatchingSubscribers",
        "PUBACK of bob/x"
    );
    assert_eq!(
        bob.publish_qos1("bob/a", b"to myself").await,
        "Success",
        "PUBACK of bob/a"
    );
    assert_eq!(
        bob.next_message().await,
        ("bob/a".to_string(), b"to myself".to_vec())
    );
    bob.assert_quiet("nothing but bob/a reaches bob").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_v311_denied_filter_fails_alone_and_denied_publish_disconnects() {
    let broker = mqtt_broker().await;
    let addr = broker.addr("mqtt");
    let mut bob = Mqtt::connect(addr, false, "bob-v3", BOB, BOB_PW).await;

    // 3.1.1 has one failure code, 0x80, for the refused filter alone.
    let codes = bob.subscribe_qos1(&["bob/a", "alice/a"]).await;
    assert_eq!(
        codes,
        vec![Ok(1), Err("Failure".to_string())],
        "SUBACK of [bob/a, alice/a]"
    );
    let mut guest = Mqtt::connect(addr, true, "guest-v5-watch", "guest", "guest").await;
    assert_eq!(
        guest.publish_qos1("alice/a", b"not for bob").await,
        "NoMatchingSubscribers",
        "guest's publish on the refused filter"
    );
    // From here guest listens to alice/#, where bob's refused publish
    // would go.
    assert_eq!(
        guest.subscribe_qos1(&["alice/#"]).await,
        vec![Ok(1)],
        "guest's SUBACK"
    );
    assert_eq!(
        bob.publish_qos1("bob/a", b"mine").await,
        "Success",
        "PUBACK of bob/a"
    );
    assert_eq!(
        bob.next_message().await,
        ("bob/a".to_string(), b"mine".to_vec())
    );
    bob.assert_quiet("nothing but bob/a reaches bob").await;

    // A refused PUBLISH: 3.1.1 cannot say no in a PUBACK, so the broker
    // closes the connection.
    let pkid = bob.send_qos1("alice/x", b"denied").await;
    let closed = bob.expect_closed_without_ack(pkid).await;
    assert!(!closed.is_empty(), "rumqttc reports the close");

    // bob may connect again and publish on his own topics; guest never
    // got the refused message.
    let mut again = Mqtt::connect(addr, false, "bob-v3-again", BOB, BOB_PW).await;
    assert_eq!(
        again.publish_qos1("bob/x", b"allowed").await,
        "Success",
        "PUBACK of bob/x on a new connection"
    );
    guest
        .assert_quiet("the refused alice/x was not routed")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_v5_client_id_variable_in_a_topic_write_pattern() {
    let broker = Broker::start(
        [".*", ".*", ".*"],
        Some(["amq.topic", r"^devices\.{client_id}\.", ".*"]),
    )
    .await;
    let addr = broker.addr("mqtt");
    let mut dev1 = Mqtt::connect(addr, true, "dev1", BOB, BOB_PW).await;
    assert_eq!(
        dev1.publish_qos1("devices/dev1/t", b"21.5").await,
        "NoMatchingSubscribers",
        "dev1 publishes under its own client id"
    );
    assert_eq!(
        dev1.publish_qos1("devices/dev2/t", b"22.0").await,
        "NotAuthorized",
        "dev1 publishes under another client id"
    );
    // The same user under the other client id: the other way round.
    let mut dev2 = Mqtt::connect(addr, true, "dev2", BOB, BOB_PW).await;
    assert_eq!(
        dev2.subscribe_qos1(&["devices/+/t"]).await,
        vec![Ok(1)],
        "dev2's SUBACK (topic read is .*)"
    );
    assert_eq!(
        dev2.publish_qos1("devices/dev1/t", b"no").await,
        "NotAuthorized",
        "dev2 publishes under dev1"
    );
    assert_eq!(
        dev1.publish_qos1("devices/dev1/t", b"23.0").await,
        "Success",
        "dev1 publishes to dev2's subscription"
    );
    assert_eq!(
        dev2.next_message().await,
        ("devices/dev1/t".to_string(), b"23.0".to_vec())
    );
    dev2.assert_quiet("refused publishes were not routed").await;
}

// ---------------------------------------------------------------------------
// STOMP (async-stomp)

async fn stomp_connect(addr: SocketAddr, login: &str, passcode: &str) -> ClientTransport {
    within(
        &format!("STOMP CONNECT as {login}"),
        Connector::builder()
            .server(addr)
            .virtualhost("/")
            .login(login.to_string())
            .passcode(passcode.to_string())
            .connect(),
    )
    .await
    .unwrap_or_else(|e| panic!("STOMP CONNECT as {login}: {e}"))
}

async fn stomp_send_frame(conn: &mut ClientTransport, frame: async_stomp::Message<ToServer>) {
    within("write a STOMP frame", conn.send(frame))
        .await
        .unwrap_or_else(|e| panic!("write a STOMP frame: {e}"));
}

/// SEND of a text `body` to `destination` with a receipt request.
async fn stomp_send(conn: &mut ClientTransport, destination: &str, body: &str, receipt: &str) {
    stomp_send_frame(
        conn,
        ToServer::Send {
            destination: destination.into(),
            transaction: None,
            headers: Some(vec![
                ("content-length".into(), body.len().to_string()),
                ("receipt".into(), receipt.into()),
            ]),
            body: Some(body.as_bytes().to_vec()),
        }
        .into(),
    )
    .await;
}

/// The next frame from the server.
async fn stomp_next(conn: &mut ClientTransport, what: &str) -> async_stomp::Message<FromServer> {
    within(what, conn.next())
        .await
        .unwrap_or_else(|| panic!("{what}: connection closed"))
        .unwrap_or_else(|e| panic!("{what}: bad frame: {e}"))
}

async fn stomp_expect_receipt(conn: &mut ClientTransport, id: &str) {
    let what = format!("RECEIPT {id}");
    match stomp_next(conn, &what).await.content {
        FromServer::Receipt { receipt_id } => assert_eq!(receipt_id, id, "{what}"),
        other => panic!("{what}: got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_stomp_denied_send_gets_error_access_refused() {
    let broker = Broker::start([".*", ".*", ".*"], Some(["amq.topic", r"^bob\.", ".*"])).await;
    let addr = broker.addr("stomp");

    // guest listens to every `*.x` topic.
    let mut guest = stomp_connect(addr, "guest", "guest").await;
    let mut sub: async_stomp::Message<ToServer> = ToServer::Subscribe {
        destination: "/topic/*.x".into(),
        id: "all-x".into(),
        ack: Some(AckMode::Auto),
    }
    .into();
    sub.extra_headers = vec![(b"receipt".to_vec(), b"g1".to_vec())];
    stomp_send_frame(&mut guest, sub).await;
    stomp_expect_receipt(&mut guest, "g1").await;

    // bob may publish under bob.: receipted and delivered.
    let mut bob = stomp_connect(addr, BOB, BOB_PW).await;
    stomp_send(&mut bob, "/topic/bob.x", "allowed", "b1").await;
    stomp_expect_receipt(&mut bob, "b1").await;
    match stomp_next(&mut guest, "MESSAGE from bob.x").await.content {
        FromServer::Message {
            destination,
            subscription,
            body,
            ..
        } => {
            assert_eq!(destination, "/topic/bob.x");
            assert_eq!(subscription, "all-x");
            assert_eq!(body.as_deref(), Some(&b"allowed"[..]));
        }
        other => panic!("guest: expected MESSAGE, got {other:?}"),
    }

    // Not under alice.: ERROR access_refused (for the SEND's receipt), and
    // the connection closes.
    stomp_send(&mut bob, "/topic/alice.x", "denied", "b2").await;
    let error = stomp_next(&mut bob, "ERROR for /topic/alice.x").await;
    match &error.content {
        FromServer::Error { message, body } => {
            assert_eq!(message.as_deref(), Some("access_refused"));
            assert_eq!(
                String::from_utf8_lossy(body.as_deref().unwrap_or_default()),
                "write access to topic 'alice.x' in exchange 'amq.topic' in vhost '/' \
                 refused for user 'bob'"
            );
        }
        other => panic!("bob: expected ERROR, got {other:?}"),
    }
    let receipt_id = error
        .extra_headers
        .iter()
        .find(|(k, _)| k == b"receipt-id")
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
    assert_eq!(
        receipt_id.as_deref(),
        Some("b2"),
        "the ERROR names the SEND"
    );
    match within("bob's connection closing", bob.next()).await {
        None | Some(Err(_)) => {}
        Some(Ok(frame)) => panic!("bob: a frame after ERROR: {:?}", frame.content),
    }

    // The refused message went nowhere; guest goes on (guest has no topic
    // rules, so alice.x is guest's to publish).
    if let Ok(Some(f)) = tokio::time::timeout(QUIET, guest.next()).await {
        panic!(
            "guest: the refused SEND was routed: {:?}",
            f.map(|m| m.content)
        );
    }
    stomp_send(&mut guest, "/topic/alice.x", "guest works", "g2").await;
    let mut got_receipt = false;
    let mut got_message = false;
    // The MESSAGE and the RECEIPT may come in either order.
    while !(got_receipt && got_message) {
        match stomp_next(&mut guest, "guest's RECEIPT g2 and MESSAGE")
            .await
            .content
        {
            FromServer::Receipt { receipt_id } if !got_receipt => {
                assert_eq!(receipt_id, "g2");
                got_receipt = true;
            }
            FromServer::Message {
                destination, body, ..
            } if !got_message => {
                assert_eq!(destination, "/topic/alice.x");
                assert_eq!(body.as_deref(), Some(&b"guest works"[..]));
                got_message = true;
            }
            other => panic!("guest: unexpected {other:?}"),
        }
    }
}
