//! docs/interop.md end to end, with client libraries nobody here wrote:
//! rumqttc (MQTT 3.1.1 and its MQTT 5 module `rumqttc::v5`), lapin
//! (AMQP 0-9-1) and async-stomp (STOMP 1.2), against the real `junction`
//! binary. The Rust twin of `tests/python/test_interop_*.py`.
//!
//! - `every_pair_carries_bodies_and_fields_as_the_interop_page_says`: each
//!   of the 9 (publisher, consumer) protocol pairs, transient and persistent,
//!   with an empty body, a binary one (NUL, 0xFF, CR, LF), UTF-8 text and
//!   1 MiB. Every delivery is compared whole with what docs/interop.md says
//!   the consumer's protocol shows: the body byte for byte, the persistence,
//!   content type, correlation id, a user header, and AMQP's typed headers
//!   (an i32, a bool, a nested table, a byte array) as the text of the
//!   page's value-text table in MQTT 5 user properties and STOMP headers.
//!   Each case sends several messages and compares the exact list; the next
//!   case's list and a final quiet period catch anything sent twice.
//!   The MQTT consumer is two clients, MQTT 3.1.1 and MQTT 5; the MQTT
//!   publisher is an MQTT 5 client with properties, except for the binary
//!   bodies, which an MQTT 3.1.1 client (no properties) publishes.
//! - `confirmed_persistent_messages_reach_persistent_subscribers_once_across_restart_and_kill_9`:
//!   persistent messages, confirmed to their publishers (AMQP publisher
//!   confirms, STOMP receipts, MQTT PUBACK), for persistent subscribers
//!   that are away (durable AMQP queues, STOMP `/queue/` queues, an MQTT
//!   3.1.1 clean session 0 subscription at QoS 1), across a SIGTERM restart
//!   and a kill -9: every message arrives exactly once, in order, and none
//!   comes back after the subscribers have acknowledged them and the broker
//!   restarted again.
//!
//! The STOMP client is async-stomp 0.5, not tokio-stomp 0.4 (the client of
//! tests/stomp_client.rs): tokio-stomp cannot put headers of its own on a
//! SEND (`persistent`, `content-type`, `receipt`). async-stomp sends any
//! header on any frame but neither writes `content-length` on a SEND (the
//! tests add it: bodies hold NULs) nor undoes STOMP 1.2's header escapes
//! when reading (see [`unescape`]).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use async_stomp::client::{ClientTransport, Connector};
use async_stomp::{AckMode, FromServer, ToServer};
use futures_util::{SinkExt, StreamExt};
use junction_testsupport::{ANY_PORTS, BrokerProcess, temp_dir};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, ByteArray, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer};
use rumqttc::v5;
use rumqttc::v5::mqttbytes::v5 as p5;
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const JUNCTION: &str = env!("CARGO_BIN_EXE_junction");

/// Bound on any one step: a login, a round trip, a delivery.
const STEP: Duration = Duration::from_secs(30);

/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(400);

/// Largest packet the MQTT clients accept and send (rumqttc's default is
/// 10 KiB; the largest body here is 1 MiB).
const MQTT_MAX_PACKET: usize = 2 << 20;

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no outcome within {STEP:?}"))
}

// ---------------------------------------------------------------------------
// The broker process

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

    fn addr(&self, listener: &str) -> SocketAddr {
        self.process.addr(listener)
    }

    /// Stops the process with `signal` ("TERM" or "KILL"), checks how it
    /// ended, and starts a new one on the same data directory.
    fn restart_after(&mut self, signal: &str) {
        self.process.signal(signal);
        let status = tokio::task::block_in_place(|| self.process.wait_exit(STEP));
        let expected = if signal == "TERM" { Some(0) } else { None };
        assert_eq!(status.code(), expected, "exit status after SIG{signal}");
        self.process = spawn(self.dir.path());
    }
}

// ---------------------------------------------------------------------------
// What is sent

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Proto {
    Mqtt,
    Amqp,
    Stomp,
}

impl Proto {
    const ALL: [Proto; 3] = [Proto::Mqtt, Proto::Amqp, Proto::Stomp];

    fn name(self) -> &'static str {
        match self {
            Proto::Mqtt => "mqtt",
            Proto::Amqp => "amqp",
            Proto::Stomp => "stomp",
        }
    }
}

/// The client that publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Publisher {
    /// MQTT 3.1.1: topic, payload and QoS only.
    Mqtt3,
    /// MQTT 5: Content Type, Correlation Data and a user property.
    Mqtt5,
    /// Content type, correlation id and typed headers.
    Amqp,
    /// `content-type`, `correlation-id` and a header of its own.
    Stomp,
}

impl Publisher {
    /// Does it set a content type, a correlation id and the user header?
    fn sets_fields(self) -> bool {
        self != Publisher::Mqtt3
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyKind {
    Empty,
    /// NUL, 0xFF, CR and LF among other bytes (not UTF-8).
    Binary,
    /// UTF-8 text, not ASCII.
    Text,
    /// 1 MiB of every byte value.
    MiB,
}

impl BodyKind {
    const ALL: [BodyKind; 4] = [
        BodyKind::Empty,
        BodyKind::Binary,
        BodyKind::Text,
        BodyKind::MiB,
    ];

    /// Messages per case.
    fn count(self) -> usize {
        match self {
            BodyKind::MiB => 2,
            _ => 3,
        }
    }

    /// The body of message `i` of a case (empty bodies are all alike).
    fn body(self, i: usize) -> Vec<u8> {
        match self {
            BodyKind::Empty => Vec::new(),
            BodyKind::Binary => vec![0x00, 0xFF, i as u8, b'\r', b'\n', 0x00, 0xFE, 0x80, 0xFF],
            BodyKind::Text => format!("grüße, 世界 ✓ naïve café #{i}").into_bytes(),
            BodyKind::MiB => (0..1usize << 20)
                .map(|j| (j.wrapping_mul(31) + i) as u8)
                .collect(),
        }
    }
}

/// The user header every publisher but MQTT 3.1.1 sets, with a colon and a
/// backslash that STOMP 1.2 escapes on the wire.
const NOTE_NAME: &str = "note";
const NOTE: &str = "grüße ✓ a:b\\c";

const CONTENT_TYPE: &str = "application/x-interop; charset=utf-8";

/// The AMQP publisher's headers: the user header and typed values.
fn typed_headers() -> FieldTable {
    let mut inner = FieldTable::default();
    inner.insert("b".into(), AMQPValue::Boolean(true));
    let mut nested = FieldTable::default();
    nested.insert("n".into(), AMQPValue::LongInt(1));
    // A long string: amq-protocol writes short strings with a type tag no
    // 0-9-1 parser reads (see tests/amqp_lapin.rs).
    nested.insert("s".into(), AMQPValue::LongString("x".into()));
    nested.insert("t".into(), AMQPValue::FieldTable(inner));
    let mut h = FieldTable::default();
    h.insert(NOTE_NAME.into(), AMQPValue::LongString(NOTE.into()));
    h.insert("i32".into(), AMQPValue::LongInt(-70_000));
    h.insert("flag".into(), AMQPValue::Boolean(true));
    h.insert("nested".into(), AMQPValue::FieldTable(nested));
    h.insert(
        "bytes".into(),
        AMQPValue::ByteArray(ByteArray::from(vec![1u8, 2, 3])),
    );
    h
}

/// [`typed_headers`] as text, by docs/interop.md's value-text table
/// (tables as compact JSON with sorted keys, byte arrays in base64).
fn typed_headers_text() -> Vec<(String, String)> {
    sorted(&[
        ("bytes", "AQID"),
        ("flag", "true"),
        ("i32", "-70000"),
        ("nested", r#"{"n":1,"s":"x","t":{"b":true}}"#),
        (NOTE_NAME, NOTE),
    ])
}

fn sorted(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

/// One message as published.
#[derive(Clone, Debug)]
struct Sent {
    by: Publisher,
    body: Vec<u8>,
    persistent: bool,
    correlation: String,
}

impl Sent {
    /// The MQTT QoS it was published with, or is published as (interop.md,
    /// "The QoS an MQTT subscriber gets": persistent counts as QoS 1).
    fn qos(&self) -> u8 {
        u8::from(self.persistent)
    }
}

/// A body that prints as its length and first bytes (1 MiB bodies would
/// bury a failure's message).
#[derive(Clone, PartialEq, Eq)]
struct Body(Vec<u8>);

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head: Vec<u8> = self.0.iter().copied().take(24).collect();
        write!(
            f,
            "{} bytes {:?}{}",
            self.0.len(),
            String::from_utf8_lossy(&head),
            if self.0.len() > 24 { "…" } else { "" }
        )
    }
}

// ---------------------------------------------------------------------------
// What each consumer protocol should show (docs/interop.md, "Fields")

/// An AMQP delivery, as compared.
#[derive(Debug, PartialEq)]
struct AmqpView {
    exchange: String,
    routing_key: String,
    body: Body,
    properties: BasicProperties,
}

fn amqp_view(d: &lapin::message::Delivery) -> AmqpView {
    AmqpView {
        exchange: d.exchange.to_string(),
        routing_key: d.routing_key.to_string(),
        body: Body(d.data.clone()),
        properties: d.properties.clone(),
    }
}

/// What an AMQP consumer gets for `s`: every core field, headers typed;
/// MQTT user properties and STOMP headers as long strings, and the MQTT
/// publisher's QoS in `x-mqtt-publish-qos` (docs/mqtt.md: an I8).
fn expect_amqp(s: &Sent, exchange: &str, routing_key: &str) -> AmqpView {
    // Transient is delivery mode 1 from every publisher, the STOMP one
    // included, which sends no `persistent` header (interop.md:
    // "`persistent:true` → 2, anything else → 1").
    let mut p = BasicProperties::default().with_delivery_mode(if s.persistent { 2 } else { 1 });
    if s.by.sets_fields() {
        p = p
            .with_content_type(CONTENT_TYPE.into())
            .with_correlation_id(s.correlation.as_str().into());
    }
    let headers = match s.by {
        Publisher::Amqp => typed_headers(),
        by => {
            let mut h = FieldTable::default();
            if by.sets_fields() {
                h.insert(NOTE_NAME.into(), AMQPValue::LongString(NOTE.into()));
            }
            if matches!(by, Publisher::Mqtt3 | Publisher::Mqtt5) {
                h.insert(
                    "x-mqtt-publish-qos".into(),
                    AMQPValue::ShortShortInt(s.qos() as i8),
                );
            }
            h
        }
    };
    p = p.with_headers(headers);
    AmqpView {
        exchange: exchange.into(),
        routing_key: routing_key.into(),
        body: Body(s.body.clone()),
        properties: p,
    }
}

/// An MQTT delivery, as compared: MQTT 5 properties with the user
/// properties sorted (their order is the headers' order), None for 3.1.1.
#[derive(Debug, PartialEq)]
struct MqttView {
    topic: String,
    body: Body,
    qos: u8,
    retain: bool,
    props: Option<p5::PublishProperties>,
}

fn mqtt_view(m: &Got, v5: bool) -> MqttView {
    MqttView {
        topic: m.topic.clone(),
        body: Body(m.payload.clone()),
        qos: m.qos,
        retain: m.retain,
        props: v5.then(|| {
            let mut p = m.props.clone().unwrap_or_default();
            p.user_properties.sort();
            p
        }),
    }
}

/// What an MQTT subscriber at QoS 1 gets: QoS min(published, 1); MQTT 5
/// also Content Type, Correlation Data and user properties (typed AMQP
/// headers as text; `x-mqtt-*` headers are the adapter's and not sent).
fn expect_mqtt(s: &Sent, topic: &str, v5: bool) -> MqttView {
    let props = v5.then(|| {
        let mut p = p5::PublishProperties::default();
        if s.by.sets_fields() {
            p.content_type = Some(CONTENT_TYPE.into());
            p.correlation_data = Some(s.correlation.clone().into_bytes().into());
            p.user_properties = match s.by {
                Publisher::Amqp => typed_headers_text(),
                _ => sorted(&[(NOTE_NAME, NOTE)]),
            };
        }
        p
    });
    MqttView {
        topic: topic.into(),
        body: Body(s.body.clone()),
        qos: s.qos(),
        retain: false,
        props,
    }
}

/// A STOMP MESSAGE, as compared: every header (unescaped, sorted; the
/// value of `message-id`, the broker's ack id, as `*`).
#[derive(Debug, PartialEq)]
struct StompView {
    body: Body,
    headers: Vec<(String, String)>,
}

fn stomp_view(m: &StompMsg) -> StompView {
    let mut headers: Vec<(String, String)> = m
        .headers
        .iter()
        .map(|(k, v)| {
            let v = if k == "message-id" {
                "*".into()
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect();
    headers.sort();
    StompView {
        body: Body(m.body.clone()),
        headers,
    }
}

/// What a STOMP subscriber (`ack:auto`, STOMP 1.2) gets: the MESSAGE's own
/// headers, `persistent` true/false, the mapped properties, and every other
/// core header as text (the MQTT publisher's `x-mqtt-publish-qos` too).
fn expect_stomp(s: &Sent, destination: &str, subscription: &str) -> StompView {
    let len = s.body.len().to_string();
    let mut h: Vec<(&str, &str)> = vec![
        ("content-length", &len),
        ("destination", destination),
        ("message-id", "*"),
        ("persistent", if s.persistent { "true" } else { "false" }),
        ("redelivered", "false"),
        ("subscription", subscription),
    ];
    if s.by.sets_fields() {
        h.push(("content-type", CONTENT_TYPE));
        h.push(("correlation-id", &s.correlation));
    }
    let qos = s.qos().to_string();
    if matches!(s.by, Publisher::Mqtt5 | Publisher::Stomp) {
        h.push((NOTE_NAME, NOTE));
    }
    // The MQTT publisher's QoS is a core header, and every core header but
    // the MESSAGE's own and the mapped ones goes out as text (interop.md's
    // "other headers" row, docs/stomp.md; its Fields row for the header
    // shows "—" for STOMP, meaning STOMP has no such field).
    if matches!(s.by, Publisher::Mqtt3 | Publisher::Mqtt5) {
        h.push(("x-mqtt-publish-qos", &qos));
    }
    let mut headers = sorted(&h);
    if s.by == Publisher::Amqp {
        headers.extend(typed_headers_text());
        headers.sort();
    }
    StompView {
        body: Body(s.body.clone()),
        headers,
    }
}

// ---------------------------------------------------------------------------
// MQTT clients (rumqttc), both versions behind one interface

/// A PUBLISH as the client saw it.
#[derive(Clone, Debug)]
struct Got {
    topic: String,
    payload: Vec<u8>,
    qos: u8,
    retain: bool,
    props: Option<p5::PublishProperties>,
}

#[derive(Debug)]
enum Ev {
    ConnAck(bool),
    SubAck(Vec<Result<u8, String>>),
    /// The client wrote a PUBLISH with this packet id (0 for QoS 0).
    Sent(u16),
    PubAck(u16, String),
    Publish(Box<Got>),
    Other,
}

type Events = mpsc::UnboundedReceiver<Result<Ev, String>>;

fn v3_event(ev: rumqttc::Event) -> Ev {
    use rumqttc::{Event, Outgoing, Packet, SubscribeReasonCode};
    match ev {
        Event::Incoming(Packet::ConnAck(c)) => Ev::ConnAck(c.session_present),
        Event::Incoming(Packet::SubAck(s)) => Ev::SubAck(
            s.return_codes
                .iter()
                .map(|r| match r {
                    SubscribeReasonCode::Success(q) => Ok(*q as u8),
                    other => Err(format!("{other:?}")),
                })
                .collect(),
        ),
        Event::Incoming(Packet::Publish(p)) => Ev::Publish(Box::new(Got {
            topic: p.topic,
            payload: p.payload.to_vec(),
            qos: p.qos as u8,
            retain: p.retain,
            props: None,
        })),
        Event::Incoming(Packet::PubAck(a)) => Ev::PubAck(a.pkid, "Success".into()),
        Event::Outgoing(Outgoing::Publish(pkid)) => Ev::Sent(pkid),
        _ => Ev::Other,
    }
}

fn v5_event(ev: v5::Event) -> Ev {
    use rumqttc::Outgoing;
    use v5::{Event, Incoming};
    match ev {
        Event::Incoming(Incoming::ConnAck(c)) => Ev::ConnAck(c.session_present),
        Event::Incoming(Incoming::SubAck(s)) => Ev::SubAck(
            s.return_codes
                .iter()
                .map(|r| match r {
                    p5::SubscribeReasonCode::Success(q) => Ok(*q as u8),
                    other => Err(format!("{other:?}")),
                })
                .collect(),
        ),
        // No topic aliases: the clients announce no Topic Alias Maximum.
        Event::Incoming(Incoming::Publish(p)) => Ev::Publish(Box::new(Got {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload.to_vec(),
            qos: p.qos as u8,
            retain: p.retain,
            props: p.properties,
        })),
        Event::Incoming(Incoming::PubAck(a)) => Ev::PubAck(a.pkid, format!("{:?}", a.reason)),
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
/// behind the test's back. rumqttc acknowledges QoS 1 deliveries itself.
struct Mqtt {
    name: String,
    handle: Handle,
    events: Events,
    backlog: VecDeque<Ev>,
    driver: JoinHandle<()>,
    session_present: bool,
}

impl Drop for Mqtt {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Mqtt {
    /// Connects (`clean`: clean session / clean start; an MQTT 5 client
    /// that is not clean asks for a 300 s session) and waits for CONNACK.
    async fn connect(addr: SocketAddr, v5: bool, id: &str, clean: bool) -> Mqtt {
        let host = addr.ip().to_string();
        let (tx, events) = mpsc::unbounded_channel();
        let (handle, driver) = if v5 {
            let mut o = v5::MqttOptions::new(id, host, addr.port());
            o.set_clean_start(clean);
            if !clean {
                o.set_session_expiry_interval(Some(300));
            }
            o.set_max_packet_size(Some(MQTT_MAX_PACKET as u32));
            let (c, mut el) = v5::AsyncClient::new(o, 64);
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
            o.set_clean_session(clean);
            o.set_max_packet_size(MQTT_MAX_PACKET, MQTT_MAX_PACKET);
            let (c, mut el) = rumqttc::AsyncClient::new(o, 64);
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
        let mut c = Mqtt {
            name: id.into(),
            handle,
            events,
            backlog: VecDeque::new(),
            driver,
            session_present: false,
        };
        c.session_present = c
            .wait_for("CONNACK", |e| match e {
                Ev::ConnAck(present) => Some(*present),
                _ => None,
            })
            .await;
        c
    }

    /// The first event `want` picks, from those already read or the next
    /// ones; the events passed over are kept for later.
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

    async fn subscribe(&mut self, filter: &str, qos: u8) {
        let sent = match &self.handle {
            Handle::V3(c) => c
                .subscribe(filter, rumqttc::qos(qos).expect("QoS"))
                .await
                .map_err(|e| e.to_string()),
            Handle::V5(c) => c
                .subscribe(filter, v5::mqttbytes::qos(qos).expect("QoS"))
                .await
                .map_err(|e| e.to_string()),
        };
        sent.unwrap_or_else(|e| panic!("{}: SUBSCRIBE: {e}", self.name));
        let granted = self
            .wait_for("SUBACK", |e| match e {
                Ev::SubAck(r) => Some(r.clone()),
                _ => None,
            })
            .await;
        assert_eq!(granted, vec![Ok(qos)], "{}: SUBACK of {filter}", self.name);
    }

    /// Publishes and, at QoS 1, waits for a PUBACK with reason Success.
    async fn publish(
        &mut self,
        topic: &str,
        qos: u8,
        payload: &[u8],
        props: Option<p5::PublishProperties>,
    ) {
        let sent = match (&self.handle, props) {
            (Handle::V3(c), None) => c
                .publish(
                    topic,
                    rumqttc::qos(qos).expect("QoS"),
                    false,
                    payload.to_vec(),
                )
                .await
                .map_err(|e| e.to_string()),
            (Handle::V3(_), Some(_)) => panic!("MQTT 3.1.1 PUBLISH has no properties"),
            (Handle::V5(c), props) => c
                .publish_with_properties(
                    topic,
                    v5::mqttbytes::qos(qos).expect("QoS"),
                    false,
                    payload.to_vec(),
                    props.unwrap_or_default(),
                )
                .await
                .map_err(|e| e.to_string()),
        };
        sent.unwrap_or_else(|e| panic!("{}: PUBLISH {topic}: {e}", self.name));
        let pkid = self
            .wait_for("PUBLISH written", |e| match e {
                Ev::Sent(id) => Some(*id),
                _ => None,
            })
            .await;
        if qos == 1 {
            let reason = self
                .wait_for("PUBACK", |e| match e {
                    Ev::PubAck(p, reason) if *p == pkid => Some(reason.clone()),
                    _ => None,
                })
                .await;
            assert_eq!(reason, "Success", "{}: PUBACK of {topic}", self.name);
        }
    }

    async fn next_publish(&mut self, what: &str) -> Got {
        self.wait_for(what, |e| match e {
            Ev::Publish(m) => Some((**m).clone()),
            _ => None,
        })
        .await
    }

    /// Fails if a PUBLISH is waiting or arrives within [`QUIET`].
    async fn assert_quiet(&mut self, why: &str) {
        let stray: Vec<&Ev> = self
            .backlog
            .iter()
            .filter(|e| matches!(e, Ev::Publish(_)))
            .collect();
        assert!(stray.is_empty(), "{}: {why}: got {stray:?}", self.name);
        let until = tokio::time::Instant::now() + QUIET;
        loop {
            match tokio::time::timeout_at(until, self.events.recv()).await {
                Err(_) => return,
                Ok(Some(Ok(Ev::Publish(m)))) => panic!(
                    "{}: {why}: got {} {:?}",
                    self.name,
                    m.topic,
                    Body(m.payload.clone())
                ),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(c))) => panic!("{}: {why}: connection closed: {c}", self.name),
                Ok(None) => panic!("{}: {why}: connection already closed", self.name),
            }
        }
    }

    /// Sends DISCONNECT and waits for the connection to end.
    async fn disconnect(mut self) {
        let sent = match &self.handle {
            Handle::V3(c) => c.disconnect().await.map_err(|e| e.to_string()),
            Handle::V5(c) => c.disconnect().await.map_err(|e| e.to_string()),
        };
        sent.unwrap_or_else(|e| panic!("{}: DISCONNECT: {e}", self.name));
        let what = format!("{}: close after DISCONNECT", self.name);
        let events = &mut self.events;
        within(&what, async {
            while let Some(Ok(_)) = events.recv().await {}
        })
        .await;
    }
}

// ---------------------------------------------------------------------------
// AMQP (lapin)

async fn amqp_connect(addr: SocketAddr) -> (Connection, Channel) {
    let conn = within(
        "AMQP connect",
        Connection::connect(
            &format!("amqp://guest:guest@{addr}/%2f"),
            ConnectionProperties::default(),
        ),
    )
    .await
    .expect("AMQP connect as guest");
    let ch = within("channel.open", conn.create_channel())
        .await
        .expect("channel.open");
    (conn, ch)
}

/// Declares `queue` (durable, or exclusive to the connection) bound to
/// `amq.topic` with `key` when given.
async fn amqp_queue(ch: &Channel, queue: &str, durable: bool, key: Option<&str>) {
    let options = QueueDeclareOptions {
        durable,
        exclusive: !durable,
        ..Default::default()
    };
    within(
        "queue.declare",
        ch.queue_declare(queue.into(), options, FieldTable::default()),
    )
    .await
    .unwrap_or_else(|e| panic!("declare {queue}: {e}"));
    if let Some(key) = key {
        within(
            "queue.bind",
            ch.queue_bind(
                queue.into(),
                "amq.topic".into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("bind {queue} to {key}: {e}"));
    }
}

async fn amqp_consume(ch: &Channel, queue: &str, no_ack: bool) -> Consumer {
    within(
        "basic.consume",
        ch.basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("consume {queue}: {e}"))
}

/// Publishes on a channel in confirm mode and waits for the broker's ack.
async fn amqp_publish_confirmed(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    let confirm = within(
        "basic.publish",
        ch.basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        ),
    )
    .await
    .expect("basic.publish");
    let c = within("publisher confirm", confirm)
        .await
        .expect("publisher confirm");
    assert_eq!(
        c,
        Confirmation::Ack(None),
        "confirm of {exchange:?}/{key:?}"
    );
}

async fn amqp_next(consumer: &mut Consumer, what: &str) -> lapin::message::Delivery {
    within(what, consumer.next())
        .await
        .unwrap_or_else(|| panic!("{what}: consumer ended"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

async fn amqp_quiet(consumer: &mut Consumer, why: &str) {
    if let Ok(extra) = tokio::time::timeout(QUIET, consumer.next()).await {
        let extra = extra.map(|r| r.map(|d| Body(d.data)));
        panic!("{why}: got {extra:?}");
    }
}

// ---------------------------------------------------------------------------
// STOMP (async-stomp)

/// STOMP 1.2's header escapes undone (async-stomp reads values as sent).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some('c') => out.push(':'),
            Some('\\') => out.push('\\'),
            other => panic!("undefined STOMP escape \\{other:?} in {s:?}"),
        }
    }
    out
}

/// A MESSAGE frame.
#[derive(Debug)]
struct StompMsg {
    subscription: String,
    /// Every header, unescaped, in frame order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl StompMsg {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A MESSAGE frame's content as a [`StompMsg`].
fn stomp_msg(frame: FromServer) -> Result<StompMsg, FromServer> {
    match frame {
        FromServer::Message {
            subscription,
            headers,
            body,
            ..
        } => Ok(StompMsg {
            subscription,
            headers: headers
                .iter()
                .map(|(k, v)| (unescape(k), unescape(v)))
                .collect(),
            body: body.unwrap_or_default(),
        }),
        other => Err(other),
    }
}

struct Stomp {
    name: String,
    conn: ClientTransport,
    receipts: u64,
    /// MESSAGEs read while waiting for a RECEIPT.
    backlog: VecDeque<StompMsg>,
}

impl Stomp {
    /// CONNECT (STOMP 1.2) as guest to vhost `/`.
    async fn connect(addr: SocketAddr, name: &str) -> Stomp {
        let conn = within(
            "STOMP CONNECT",
            Connector::builder()
                .server(addr)
                .virtualhost("/")
                .login("guest".to_string())
                .passcode("guest".to_string())
                .connect(),
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: CONNECTED: {e}"));
        Stomp {
            name: name.into(),
            conn,
            receipts: 0,
            backlog: VecDeque::new(),
        }
    }

    async fn send(&mut self, frame: async_stomp::Message<ToServer>) {
        let what = format!("{}: write a frame", self.name);
        within(&what, self.conn.send(frame))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }

    /// The next frame; an ERROR fails the test.
    async fn next(&mut self, what: &str) -> FromServer {
        let what = format!("{}: {what}", self.name);
        let frame = within(&what, self.conn.next())
            .await
            .unwrap_or_else(|| panic!("{what}: connection closed"))
            .unwrap_or_else(|e| panic!("{what}: bad frame: {e}"));
        if let FromServer::Error { message, body } = &frame.content {
            panic!(
                "{what}: ERROR {message:?}: {}",
                String::from_utf8_lossy(body.as_deref().unwrap_or_default())
            );
        }
        frame.content
    }

    fn receipt_id(&mut self) -> String {
        self.receipts += 1;
        format!("r{}", self.receipts)
    }

    /// Waits for RECEIPT `id`, keeping the MESSAGEs that come first (a
    /// subscription's messages may come before its SUBSCRIBE's receipt).
    async fn expect_receipt(&mut self, id: &str) {
        loop {
            match stomp_msg(self.next(&format!("RECEIPT {id}")).await) {
                Ok(m) => self.backlog.push_back(m),
                Err(FromServer::Receipt { receipt_id }) => {
                    assert_eq!(receipt_id, id, "{}", self.name);
                    return;
                }
                Err(other) => panic!("{}: expected RECEIPT {id}, got {other:?}", self.name),
            }
        }
    }

    /// SUBSCRIBE, in place once its RECEIPT is in.
    async fn subscribe(&mut self, destination: &str, id: &str, ack: AckMode) {
        let receipt = self.receipt_id();
        let mut frame: async_stomp::Message<ToServer> = ToServer::Subscribe {
            destination: destination.into(),
            id: id.into(),
            ack: Some(ack),
        }
        .into();
        frame.extra_headers = vec![(b"receipt".to_vec(), receipt.clone().into_bytes())];
        self.send(frame).await;
        self.expect_receipt(&receipt).await;
    }

    /// SEND of `body` with `headers` (and its `content-length`: bodies hold
    /// NULs); with a receipt (awaited) when `confirm`.
    async fn publish(
        &mut self,
        destination: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        confirm: bool,
    ) {
        let mut h: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        h.push(("content-length".into(), body.len().to_string()));
        let receipt = confirm.then(|| self.receipt_id());
        if let Some(r) = &receipt {
            h.push(("receipt".into(), r.clone()));
        }
        self.send(
            ToServer::Send {
                destination: destination.into(),
                transaction: None,
                headers: Some(h),
                body: Some(body.to_vec()),
            }
            .into(),
        )
        .await;
        if let Some(r) = receipt {
            self.expect_receipt(&r).await;
        }
    }

    async fn message(&mut self, what: &str) -> StompMsg {
        if let Some(m) = self.backlog.pop_front() {
            return m;
        }
        stomp_msg(self.next(what).await).unwrap_or_else(|other| {
            panic!("{}: {what}: expected MESSAGE, got {other:?}", self.name)
        })
    }

    async fn ack(&mut self, m: &StompMsg) {
        let id = m.header("ack").expect("a client-ack MESSAGE has `ack`");
        self.send(
            ToServer::Ack {
                id: id.into(),
                transaction: None,
            }
            .into(),
        )
        .await;
    }

    /// Fails if a frame arrives within [`QUIET`].
    async fn assert_quiet(&mut self, why: &str) {
        if let Some(m) = self.backlog.front() {
            panic!(
                "{}: {why}: got MESSAGE {:?} {:?}",
                self.name,
                m.header("destination"),
                Body(m.body.clone())
            );
        }
        if let Ok(Some(f)) = tokio::time::timeout(QUIET, self.conn.next()).await {
            let f = f.map(|m| match m.content {
                FromServer::Message {
                    destination, body, ..
                } => format!("MESSAGE {destination} {:?}", Body(body.unwrap_or_default())),
                other => format!("{other:?}"),
            });
            panic!("{}: {why}: got {f:?}", self.name);
        }
    }

    /// DISCONNECT with a receipt: every earlier frame's work is done.
    async fn disconnect(mut self) {
        let receipt = self.receipt_id();
        self.send(
            ToServer::Disconnect {
                receipt: Some(receipt.clone()),
            }
            .into(),
        )
        .await;
        self.expect_receipt(&receipt).await;
    }
}

// ---------------------------------------------------------------------------
// The matrix

/// Where a matrix message from `p` to `c` goes: one `amq.topic` key per pair.
fn matrix_key(p: Proto, c: Proto) -> String {
    format!("mx.{}.{}", p.name(), c.name())
}

/// The publishers of the matrix, one connection each.
struct MatrixPublishers {
    mqtt3: Mqtt,
    mqtt5: Mqtt,
    _amqp_conn: Connection,
    amqp: Channel,
    stomp: Stomp,
}

impl MatrixPublishers {
    async fn start(broker: &Broker) -> MatrixPublishers {
        let mqtt3 = Mqtt::connect(broker.addr("mqtt"), false, "mx-pub-3", true).await;
        let mqtt5 = Mqtt::connect(broker.addr("mqtt"), true, "mx-pub-5", true).await;
        let (_amqp_conn, amqp) = amqp_connect(broker.addr("amqp")).await;
        within(
            "confirm.select",
            amqp.confirm_select(ConfirmSelectOptions::default()),
        )
        .await
        .expect("confirm.select");
        let stomp = Stomp::connect(broker.addr("stomp"), "mx-pub-stomp").await;
        MatrixPublishers {
            mqtt3,
            mqtt5,
            _amqp_conn,
            amqp,
            stomp,
        }
    }

    /// Publishes one case from `p` to `c`'s destination; persistent
    /// messages are confirmed (PUBACK, publisher confirm, RECEIPT).
    async fn publish(&mut self, p: Proto, c: Proto, kind: BodyKind, persistent: bool) -> Vec<Sent> {
        let key = matrix_key(p, c);
        let mut sent = Vec::new();
        for i in 0..kind.count() {
            let by = match p {
                Proto::Mqtt if kind == BodyKind::Binary => Publisher::Mqtt3,
                Proto::Mqtt => Publisher::Mqtt5,
                Proto::Amqp => Publisher::Amqp,
                Proto::Stomp => Publisher::Stomp,
            };
            let s = Sent {
                by,
                body: kind.body(i),
                persistent,
                correlation: format!("{key}/{kind:?}/{persistent}/{i}"),
            };
            match by {
                Publisher::Mqtt3 => {
                    let topic = key.replace('.', "/");
                    self.mqtt3.publish(&topic, s.qos(), &s.body, None).await;
                }
                Publisher::Mqtt5 => {
                    let topic = key.replace('.', "/");
                    let props = p5::PublishProperties {
                        content_type: Some(CONTENT_TYPE.into()),
                        correlation_data: Some(s.correlation.clone().into_bytes().into()),
                        user_properties: vec![(NOTE_NAME.into(), NOTE.into())],
                        ..Default::default()
                    };
                    self.mqtt5
                        .publish(&topic, s.qos(), &s.body, Some(props))
                        .await;
                }
                Publisher::Amqp => {
                    let props = BasicProperties::default()
                        .with_delivery_mode(if persistent { 2 } else { 1 })
                        .with_content_type(CONTENT_TYPE.into())
                        .with_correlation_id(s.correlation.as_str().into())
                        .with_headers(typed_headers());
                    amqp_publish_confirmed(&self.amqp, "amq.topic", &key, &s.body, props).await;
                }
                Publisher::Stomp => {
                    let mut headers = vec![
                        ("content-type", CONTENT_TYPE),
                        ("correlation-id", s.correlation.as_str()),
                        (NOTE_NAME, NOTE),
                    ];
                    // Transient: no `persistent` header at all, as most
                    // STOMP clients send.
                    if persistent {
                        headers.push(("persistent", "true"));
                    }
                    self.stomp
                        .publish(&format!("/topic/{key}"), &headers, &s.body, persistent)
                        .await;
                }
            }
            sent.push(s);
        }
        sent
    }
}

/// The consumers of the matrix: per consumer protocol, one subscription
/// per publishing protocol.
struct MatrixConsumers {
    _amqp_conn: Connection,
    /// By publishing protocol.
    amqp: BTreeMap<Proto, Consumer>,
    mqtt3: Mqtt,
    mqtt5: Mqtt,
    stomp: Stomp,
    /// The differences from docs/interop.md found so far.
    mismatches: Vec<String>,
}

/// Records where `got` differs from `want` (the first differing message of
/// the list) instead of failing at once, so that one run shows every case
/// that differs from the page. Lists of different lengths cannot happen:
/// the consumers take as many messages as were sent.
fn compare<T: PartialEq + fmt::Debug>(got: &[T], want: &[T], what: &str, out: &mut Vec<String>) {
    assert_eq!(got.len(), want.len(), "{what}");
    if let Some((i, (g, w))) = got.iter().zip(want).enumerate().find(|(_, (g, w))| g != w) {
        out.push(format!("{what}, message #{i}:\n   got {g:?}\n  want {w:?}"));
    }
}

impl MatrixConsumers {
    async fn start(broker: &Broker) -> MatrixConsumers {
        let (_amqp_conn, ch) = amqp_connect(broker.addr("amqp")).await;
        let mut amqp = BTreeMap::new();
        for p in Proto::ALL {
            let queue = format!("mx-{}-amqp", p.name());
            amqp_queue(&ch, &queue, false, Some(&matrix_key(p, Proto::Amqp))).await;
            amqp.insert(p, amqp_consume(&ch, &queue, true).await);
        }
        let mut mqtt3 = Mqtt::connect(broker.addr("mqtt"), false, "mx-sub-3", true).await;
        mqtt3.subscribe("mx/+/mqtt", 1).await;
        let mut mqtt5 = Mqtt::connect(broker.addr("mqtt"), true, "mx-sub-5", true).await;
        mqtt5.subscribe("mx/+/mqtt", 1).await;
        let mut stomp = Stomp::connect(broker.addr("stomp"), "mx-sub-stomp").await;
        for p in Proto::ALL {
            let destination = format!("/topic/{}", matrix_key(p, Proto::Stomp));
            stomp
                .subscribe(&destination, &format!("from-{}", p.name()), AckMode::Auto)
                .await;
        }
        MatrixConsumers {
            _amqp_conn,
            amqp,
            mqtt3,
            mqtt5,
            stomp,
            mismatches: Vec::new(),
        }
    }

    /// Takes `sent.len()` deliveries from `c`'s subscription(s) for `p` and
    /// compares them, in order, with what docs/interop.md promises.
    async fn check(&mut self, p: Proto, c: Proto, sent: &[Sent], case: &str) {
        let key = matrix_key(p, c);
        match c {
            Proto::Amqp => {
                let consumer = self.amqp.get_mut(&p).expect("a consumer per publisher");
                let mut got = Vec::new();
                for i in 0..sent.len() {
                    got.push(amqp_view(
                        &amqp_next(consumer, &format!("{case} #{i}")).await,
                    ));
                }
                let want: Vec<AmqpView> = sent
                    .iter()
                    .map(|s| expect_amqp(s, "amq.topic", &key))
                    .collect();
                compare(
                    &got,
                    &want,
                    &format!("{case}: AMQP deliveries"),
                    &mut self.mismatches,
                );
            }
            Proto::Mqtt => {
                let topic = key.replace('.', "/");
                for (v5, client) in [(false, &mut self.mqtt3), (true, &mut self.mqtt5)] {
                    let mut got = Vec::new();
                    for i in 0..sent.len() {
                        let m = client.next_publish(&format!("{case} #{i}")).await;
                        got.push(mqtt_view(&m, v5));
                    }
                    let want: Vec<MqttView> =
                        sent.iter().map(|s| expect_mqtt(s, &topic, v5)).collect();
                    let what = format!("{case}: MQTT {} deliveries", client.name);
                    compare(&got, &want, &what, &mut self.mismatches);
                }
            }
            Proto::Stomp => {
                let destination = format!("/topic/{key}");
                let subscription = format!("from-{}", p.name());
                let mut got = Vec::new();
                for i in 0..sent.len() {
                    got.push(stomp_view(
                        &self.stomp.message(&format!("{case} #{i}")).await,
                    ));
                }
                let want: Vec<StompView> = sent
                    .iter()
                    .map(|s| expect_stomp(s, &destination, &subscription))
                    .collect();
                compare(
                    &got,
                    &want,
                    &format!("{case}: STOMP MESSAGEs"),
                    &mut self.mismatches,
                );
            }
        }
    }

    async fn assert_quiet(&mut self) {
        let why = "every message was taken: nothing more";
        for consumer in self.amqp.values_mut() {
            amqp_quiet(consumer, why).await;
        }
        self.mqtt3.assert_quiet(why).await;
        self.mqtt5.assert_quiet(why).await;
        self.stomp.assert_quiet(why).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pair_carries_bodies_and_fields_as_the_interop_page_says() {
    let broker = Broker::start();
    let mut consumers = MatrixConsumers::start(&broker).await;
    let mut publishers = MatrixPublishers::start(&broker).await;
    for p in Proto::ALL {
        for c in Proto::ALL {
            for persistent in [false, true] {
                for kind in BodyKind::ALL {
                    let case = format!(
                        "{} -> {}, {}, {kind:?} body",
                        p.name(),
                        c.name(),
                        if persistent {
                            "persistent"
                        } else {
                            "transient"
                        }
                    );
                    let sent = publishers.publish(p, c, kind, persistent).await;
                    // Cases follow each other: a message sent twice shows
                    // in the next case's list, or in the quiet at the end.
                    consumers.check(p, c, &sent, &case).await;
                }
            }
        }
    }
    consumers.assert_quiet().await;
    // The transient SENDs asked for no receipt: an ERROR for one of them
    // would be waiting here.
    publishers.stomp.disconnect().await;
    let m = &consumers.mismatches;
    assert!(
        m.is_empty(),
        "{} cases differ from docs/interop.md:\n{}",
        m.len(),
        m.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Persistent subscribers across a restart and a kill -9

/// Messages per (publisher, consumer) pair and publishing round.
const KEEP_PER_ROUND: usize = 5;

/// MQTT client id of the persistent (clean session 0) subscriber.
const KEEPER: &str = "keeper";

/// The durable AMQP queue, fed through `amq.topic`.
fn keep_amqp_queue(p: Proto) -> String {
    format!("keep-{}-amqp", p.name())
}

/// The STOMP `/queue/` queue, fed by name (MQTT `$queue/q`, AMQP's default
/// exchange, STOMP `/queue/q`).
fn keep_stomp_queue(p: Proto) -> String {
    format!("keep-{}-stomp", p.name())
}

/// `amq.topic` key for the AMQP queues and the MQTT subscription.
fn keep_key(p: Proto, c: Proto) -> String {
    format!("keep.{}.{}", p.name(), c.name())
}

fn keep_body(round: &str, p: Proto, c: Proto, i: usize) -> Vec<u8> {
    let mut b = format!("{round}{i} {}->{}", p.name(), c.name()).into_bytes();
    b.extend_from_slice(&[0x00, 0xFF, 0x00]);
    b
}

/// The persistent subscribers, created and left: nobody consumes while the
/// messages are published.
async fn keep_subscribers(broker: &Broker) {
    let (conn, ch) = amqp_connect(broker.addr("amqp")).await;
    for p in Proto::ALL {
        amqp_queue(
            &ch,
            &keep_amqp_queue(p),
            true,
            Some(&keep_key(p, Proto::Amqp)),
        )
        .await;
    }
    within("connection.close", conn.close(200, "bye".into()))
        .await
        .expect("connection.close");
    let mut stomp = Stomp::connect(broker.addr("stomp"), "keep-setup").await;
    for p in Proto::ALL {
        // SUBSCRIBE to /queue/q declares the durable queue q.
        let destination = format!("/queue/{}", keep_stomp_queue(p));
        stomp
            .subscribe(&destination, p.name(), AckMode::ClientIndividual)
            .await;
    }
    stomp.disconnect().await;
    let mut mqtt = Mqtt::connect(broker.addr("mqtt"), false, KEEPER, false).await;
    mqtt.subscribe("keep/+/mqtt", 1).await;
    mqtt.disconnect().await;
}

/// One round: every publisher sends [`KEEP_PER_ROUND`] persistent messages
/// to every persistent subscriber, each confirmed before the next; adds
/// them to `sent`, by (publisher, consumer).
async fn keep_publish(
    broker: &Broker,
    round: &str,
    sent: &mut BTreeMap<(Proto, Proto), Vec<Body>>,
) {
    let mut mqtt = Mqtt::connect(broker.addr("mqtt"), false, "keep-pub", true).await;
    let (conn, amqp) = amqp_connect(broker.addr("amqp")).await;
    within(
        "confirm.select",
        amqp.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    let mut stomp = Stomp::connect(broker.addr("stomp"), "keep-pub").await;
    for i in 0..KEEP_PER_ROUND {
        for p in Proto::ALL {
            for c in Proto::ALL {
                let body = keep_body(round, p, c, i);
                let key = keep_key(p, c);
                let queue = keep_stomp_queue(p);
                match p {
                    Proto::Mqtt => {
                        let topic = match c {
                            Proto::Stomp => format!("$queue/{queue}"),
                            _ => key.replace('.', "/"),
                        };
                        mqtt.publish(&topic, 1, &body, None).await;
                    }
                    Proto::Amqp => {
                        let (exchange, key) = match c {
                            Proto::Stomp => ("", queue.as_str()),
                            _ => ("amq.topic", key.as_str()),
                        };
                        let props = BasicProperties::default().with_delivery_mode(2);
                        amqp_publish_confirmed(&amqp, exchange, key, &body, props).await;
                    }
                    Proto::Stomp => {
                        let destination = match c {
                            Proto::Stomp => format!("/queue/{queue}"),
                            _ => format!("/topic/{key}"),
                        };
                        stomp
                            .publish(&destination, &[("persistent", "true")], &body, true)
                            .await;
                    }
                }
                sent.entry((p, c)).or_default().push(Body(body));
            }
        }
    }
    mqtt.disconnect().await;
    stomp.disconnect().await;
    within("connection.close", conn.close(200, "bye".into()))
        .await
        .expect("connection.close");
}

/// The persistent subscribers come back and take everything: `sent`
/// exactly, in order, each persistent; they acknowledge all and leave.
/// With an empty `sent`, checks that nothing is waiting.
async fn keep_consume(broker: &Broker, sent: &BTreeMap<(Proto, Proto), Vec<Body>>, when: &str) {
    let want = |p: Proto, c: Proto| sent.get(&(p, c)).cloned().unwrap_or_default();

    // AMQP: the durable queues.
    let (conn, ch) = amqp_connect(broker.addr("amqp")).await;
    for p in Proto::ALL {
        let queue = keep_amqp_queue(p);
        let mut consumer = amqp_consume(&ch, &queue, false).await;
        let mut got = Vec::new();
        for i in 0..want(p, Proto::Amqp).len() {
            let d = amqp_next(&mut consumer, &format!("{when}: {queue} #{i}")).await;
            assert_eq!(
                *d.properties.delivery_mode(),
                Some(2),
                "{when}: {queue} #{i} is persistent"
            );
            within("basic.ack", d.ack(BasicAckOptions::default()))
                .await
                .expect("basic.ack");
            got.push(Body(d.data));
        }
        assert_eq!(got, want(p, Proto::Amqp), "{when}: {queue}");
        amqp_quiet(&mut consumer, &format!("{when}: {queue} holds no more")).await;
    }
    within("connection.close", conn.close(200, "bye".into()))
        .await
        .expect("connection.close");

    // STOMP: the /queue/ queues, one subscription each (messages of the
    // three interleave).
    let mut stomp = Stomp::connect(broker.addr("stomp"), "keep-sub").await;
    let mut got: BTreeMap<String, Vec<Body>> = BTreeMap::new();
    for p in Proto::ALL {
        let destination = format!("/queue/{}", keep_stomp_queue(p));
        stomp
            .subscribe(&destination, p.name(), AckMode::ClientIndividual)
            .await;
        got.insert(p.name().into(), Vec::new());
    }
    let total: usize = Proto::ALL
        .iter()
        .map(|&p| want(p, Proto::Stomp).len())
        .sum();
    for i in 0..total {
        let m = stomp
            .message(&format!("{when}: STOMP message {i} of {total}"))
            .await;
        assert_eq!(
            m.header("persistent"),
            Some("true"),
            "{when}: {} #{i}",
            m.subscription
        );
        stomp.ack(&m).await;
        got.get_mut(&m.subscription)
            .unwrap_or_else(|| panic!("{when}: unknown subscription {}", m.subscription))
            .push(Body(m.body));
    }
    stomp
        .assert_quiet(&format!("{when}: the STOMP queues hold no more"))
        .await;
    stomp.disconnect().await;
    for p in Proto::ALL {
        assert_eq!(
            got[p.name()],
            want(p, Proto::Stomp),
            "{when}: /queue/{}",
            keep_stomp_queue(p)
        );
    }

    // MQTT: the clean session 0 session, its subscription stored.
    let mut mqtt = Mqtt::connect(broker.addr("mqtt"), false, KEEPER, false).await;
    assert!(mqtt.session_present, "{when}: the keeper's session is back");
    let mut got: BTreeMap<String, Vec<Body>> = BTreeMap::new();
    let total: usize = Proto::ALL.iter().map(|&p| want(p, Proto::Mqtt).len()).sum();
    for i in 0..total {
        let m = mqtt
            .next_publish(&format!("{when}: MQTT message {i} of {total}"))
            .await;
        assert_eq!(m.qos, 1, "{when}: {} #{i} at QoS 1", m.topic);
        got.entry(m.topic).or_default().push(Body(m.payload));
    }
    mqtt.assert_quiet(&format!("{when}: the keeper's session holds no more"))
        .await;
    mqtt.disconnect().await;
    let want_mqtt: BTreeMap<String, Vec<Body>> = Proto::ALL
        .iter()
        .map(|&p| {
            (
                keep_key(p, Proto::Mqtt).replace('.', "/"),
                want(p, Proto::Mqtt),
            )
        })
        .filter(|(_, v)| !v.is_empty())
        .collect();
    assert_eq!(got, want_mqtt, "{when}: the keeper's messages by topic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_persistent_messages_reach_persistent_subscribers_once_across_restart_and_kill_9()
{
    let mut broker = Broker::start();
    keep_subscribers(&broker).await;
    let mut sent = BTreeMap::new();
    keep_publish(&broker, "a", &mut sent).await;
    broker.restart_after("TERM");
    keep_publish(&broker, "b", &mut sent).await;
    broker.restart_after("KILL");
    keep_consume(&broker, &sent, "after a restart and a kill -9").await;
    // Acknowledged (and the subscribers gone): nothing comes back.
    broker.restart_after("TERM");
    keep_consume(&broker, &BTreeMap::new(), "after acks and a restart").await;
}
