//! The MQTT adapter end to end through rumqttc, a client nobody here wrote,
//! in both its MQTT 3.1.1 (`rumqttc`) and MQTT 5 (`rumqttc::v5`) flavours,
//! against the real `junction` binary: QoS 0/1/2 and the QoS actually
//! delivered, publish order, persistent sessions (offline messages, a
//! SIGTERM restart, a SIGKILL), retained messages, wills, session
//! takeover, shared subscriptions, MQTT 5 topic aliases, subscription
//! identifiers and message expiry, and MQTT ⇄ AMQP through lapin.
//!
//! Every client runs its event loop in a task of its own that forwards
//! each event (normalised to [`Ev`]) to the test; the loop stops at the
//! first error, so rumqttc never reconnects behind a test's back.
//! Aborting that task drops the socket without a DISCONNECT. A TCP relay
//! ([`Tap`]) shows the MQTT 5 DISCONNECT reason codes rumqttc 0.25 cannot.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use junction_testsupport::{ANY_PORTS, BrokerProcess, temp_dir};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use rumqttc::v5;
use rumqttc::v5::mqttbytes::v5 as p5;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const JUNCTION: &str = env!("CARGO_BIN_EXE_junction");

/// Bound on any one step: a connect, a round trip, a delivery.
const STEP: Duration = Duration::from_secs(20);

/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(400);

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no outcome within {STEP:?}"))
}

// ---------------------------------------------------------------------------
// The broker process

/// A `junction` process on a temporary data directory, with every port
/// picked by the OS and optional `[mqtt]` settings.
struct Broker {
    dir: TempDir,
    mqtt_config: String,
    process: BrokerProcess,
}

/// Starts the binary on `dir`; `mqtt_config` (lines of the `[mqtt]` table)
/// goes into a config file passed with `--config` when not empty.
fn spawn_broker(dir: &Path, mqtt_config: &str) -> BrokerProcess {
    let data = dir.to_str().expect("utf-8 path").to_string();
    let mut args = vec!["--data-dir".to_string(), data];
    args.extend(ANY_PORTS.iter().map(|a| a.to_string()));
    if !mqtt_config.is_empty() {
        let conf = dir.join("mqtt-test.toml");
        std::fs::write(&conf, format!("[mqtt]\n{mqtt_config}\n")).expect("write config");
        args.push("--config".into());
        args.push(conf.to_str().expect("utf-8 path").into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tokio::task::block_in_place(|| BrokerProcess::start(Path::new(JUNCTION), &args, dir))
}

impl Broker {
    async fn start() -> Broker {
        Broker::with_mqtt_config("").await
    }

    async fn with_mqtt_config(mqtt_config: &str) -> Broker {
        let dir = temp_dir();
        let process = spawn_broker(dir.path(), mqtt_config);
        Broker {
            dir,
            mqtt_config: mqtt_config.to_string(),
            process,
        }
    }

    fn mqtt(&self) -> SocketAddr {
        self.process.addr("mqtt")
    }

    fn amqp(&self) -> SocketAddr {
        self.process.addr("amqp")
    }

    /// Stops the process with `signal` ("TERM" or "KILL"), checks how it
    /// ended, and starts a new one on the same data directory.
    async fn restart_after(&mut self, signal: &str) {
        self.process.signal(signal);
        let status = tokio::task::block_in_place(|| self.process.wait_exit(STEP));
        let expected = if signal == "TERM" { Some(0) } else { None };
        assert_eq!(status.code(), expected, "exit status after SIG{signal}");
        self.process = spawn_broker(self.dir.path(), &self.mqtt_config);
    }
}

// ---------------------------------------------------------------------------
// Clients of both versions behind one interface

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    V3,
    V5,
}

/// A message as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Msg {
    /// The topic name, with an MQTT 5 topic alias already resolved.
    topic: String,
    payload: Vec<u8>,
    qos: u8,
    retain: bool,
    dup: bool,
    /// MQTT 5 properties, as received (None: 3.1.1, or none were sent).
    props: Option<p5::PublishProperties>,
}

/// The parts of a delivery most assertions compare.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    topic: String,
    payload: String,
    qos: u8,
    retain: bool,
    dup: bool,
}

/// A first delivery (DUP clear) of `payload` on `topic`.
fn seen(topic: &str, payload: &str, qos: u8, retain: bool) -> Seen {
    Seen {
        topic: topic.into(),
        payload: payload.into(),
        qos,
        retain,
        dup: false,
    }
}

impl Msg {
    fn seen(&self) -> Seen {
        Seen {
            topic: self.topic.clone(),
            payload: String::from_utf8_lossy(&self.payload).into_owned(),
            qos: self.qos,
            retain: self.retain,
            dup: self.dup,
        }
    }

    fn props(&self) -> p5::PublishProperties {
        self.props.clone().unwrap_or_default()
    }
}

fn seen_all(msgs: &[Msg]) -> Vec<Seen> {
    msgs.iter().map(Msg::seen).collect()
}

/// One client event, the same for both versions. Acknowledgement reasons
/// are rumqttc's names of the MQTT 5 reason codes ("Success" for 3.1.1,
/// whose acknowledgements have none).
#[derive(Debug)]
enum Ev {
    ConnAck {
        session_present: bool,
        props: Option<p5::ConnAckProperties>,
    },
    /// Granted QoS per filter, or the refusal's name.
    SubAck(Vec<Result<u8, String>>),
    /// The client wrote a PUBLISH with this packet id (0 for QoS 0).
    Sent(u16),
    PubAck {
        pkid: u16,
        reason: String,
    },
    PubRec {
        pkid: u16,
        reason: String,
    },
    PubComp {
        pkid: u16,
    },
    Publish(Msg),
    /// Pings, outgoing acks and the like: dropped.
    Other,
}

/// How a connection ended: rumqttc's error. (Not the broker's MQTT 5
/// DISCONNECT reason: rumqttc 0.25 drops a DISCONNECT without a Property
/// Length, see [`Tap`].)
type Closed = String;

type Events = mpsc::UnboundedReceiver<Result<Ev, Closed>>;

/// An event loop of either version, yielding normalised events.
trait Driver: Send + 'static {
    fn next(&mut self) -> impl Future<Output = Result<Ev, Closed>> + Send;
}

struct V3Loop(rumqttc::EventLoop);

impl Driver for V3Loop {
    async fn next(&mut self) -> Result<Ev, Closed> {
        use rumqttc::{Event, Outgoing, Packet, SubscribeReasonCode};
        let ev = self.0.poll().await.map_err(|e| e.to_string())?;
        Ok(match ev {
            Event::Incoming(Packet::ConnAck(c)) => Ev::ConnAck {
                session_present: c.session_present,
                props: None,
            },
            Event::Incoming(Packet::SubAck(s)) => Ev::SubAck(
                s.return_codes
                    .iter()
                    .map(|r| match r {
                        SubscribeReasonCode::Success(q) => Ok(*q as u8),
                        other => Err(format!("{other:?}")),
                    })
                    .collect(),
            ),
            Event::Incoming(Packet::Publish(p)) => Ev::Publish(Msg {
                topic: p.topic,
                payload: p.payload.to_vec(),
                qos: p.qos as u8,
                retain: p.retain,
                dup: p.dup,
                props: None,
            }),
            Event::Incoming(Packet::PubAck(a)) => Ev::PubAck {
                pkid: a.pkid,
                reason: "Success".into(),
            },
            Event::Incoming(Packet::PubRec(a)) => Ev::PubRec {
                pkid: a.pkid,
                reason: "Success".into(),
            },
            Event::Incoming(Packet::PubComp(a)) => Ev::PubComp { pkid: a.pkid },
            Event::Outgoing(Outgoing::Publish(pkid)) => Ev::Sent(pkid),
            _ => Ev::Other,
        })
    }
}

/// The MQTT 5 loop, resolving the topic aliases the broker sends (rumqttc
/// reports the PUBLISH as it came off the wire).
struct V5Loop {
    el: v5::EventLoop,
    aliases: HashMap<u16, String>,
}

impl V5Loop {
    fn publish(&mut self, p: p5::Publish) -> Msg {
        let mut topic = String::from_utf8_lossy(&p.topic).into_owned();
        if let Some(alias) = p.properties.as_ref().and_then(|pp| pp.topic_alias) {
            if topic.is_empty() {
                topic = self
                    .aliases
                    .get(&alias)
                    .cloned()
                    .unwrap_or_else(|| format!("<unknown topic alias {alias}>"));
            } else {
                self.aliases.insert(alias, topic.clone());
            }
        }
        Msg {
            topic,
            payload: p.payload.to_vec(),
            qos: p.qos as u8,
            retain: p.retain,
            dup: p.dup,
            props: p.properties,
        }
    }
}

impl Driver for V5Loop {
    async fn next(&mut self) -> Result<Ev, Closed> {
        use rumqttc::Outgoing;
        use v5::{Event, Incoming};
        let ev = self.el.poll().await.map_err(|e| e.to_string())?;
        Ok(match ev {
            Event::Incoming(Incoming::ConnAck(c)) => Ev::ConnAck {
                session_present: c.session_present,
                props: c.properties,
            },
            Event::Incoming(Incoming::SubAck(s)) => Ev::SubAck(
                s.return_codes
                    .iter()
                    .map(|r| match r {
                        p5::SubscribeReasonCode::Success(q) => Ok(*q as u8),
                        other => Err(format!("{other:?}")),
                    })
                    .collect(),
            ),
            Event::Incoming(Incoming::Publish(p)) => Ev::Publish(self.publish(p)),
            Event::Incoming(Incoming::PubAck(a)) => Ev::PubAck {
                pkid: a.pkid,
                reason: format!("{:?}", a.reason),
            },
            Event::Incoming(Incoming::PubRec(a)) => Ev::PubRec {
                pkid: a.pkid,
                reason: format!("{:?}", a.reason),
            },
            Event::Incoming(Incoming::PubComp(a)) => Ev::PubComp { pkid: a.pkid },
            Event::Outgoing(Outgoing::Publish(pkid)) => Ev::Sent(pkid),
            _ => Ev::Other,
        })
    }
}

/// Runs `d` in a task until its first error, forwarding every event.
fn drive(mut d: impl Driver) -> (Events, JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let ev = d.next().await;
            let end = ev.is_err();
            if tx.send(ev).is_err() || end {
                return;
            }
        }
    });
    (rx, task)
}

fn qos3(q: u8) -> rumqttc::QoS {
    rumqttc::qos(q).expect("QoS 0, 1 or 2")
}

fn qos5(q: u8) -> v5::mqttbytes::QoS {
    v5::mqttbytes::qos(q).expect("QoS 0, 1 or 2")
}

/// What a client connects with.
#[derive(Clone, Debug)]
struct Opts {
    version: Version,
    id: String,
    /// 3.1.1 clean session / MQTT 5 clean start.
    clean: bool,
    /// MQTT 5 Session Expiry Interval.
    expiry: Option<u32>,
    /// Will topic and payload (QoS 1, not retained).
    will: Option<(String, Vec<u8>)>,
    /// MQTT 5 Topic Alias Maximum the client accepts.
    alias_max: Option<u16>,
}

impl Opts {
    fn new(version: Version, id: &str) -> Opts {
        Opts {
            version,
            id: id.into(),
            clean: true,
            expiry: None,
            will: None,
            alias_max: None,
        }
    }

    /// Clean session 0 (3.1.1); clean start 0 and a 300 s expiry (MQTT 5).
    fn persistent(mut self) -> Opts {
        self.clean = false;
        if self.version == Version::V5 {
            self.expiry = Some(300);
        }
        self
    }

    fn clean_start(mut self) -> Opts {
        self.clean = true;
        self
    }

    fn will(mut self, topic: &str, payload: &[u8]) -> Opts {
        self.will = Some((topic.into(), payload.to_vec()));
        self
    }

    fn alias_max(mut self, max: u16) -> Opts {
        self.alias_max = Some(max);
        self
    }
}

enum Handle {
    V3(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

/// A connected client: its request handle, the events of its loop, and the
/// events read but not yet asked for.
struct Client {
    name: String,
    handle: Handle,
    events: Events,
    backlog: VecDeque<Ev>,
    driver: JoinHandle<()>,
    session_present: bool,
    connack: Option<p5::ConnAckProperties>,
}

/// Connects and waits for CONNACK.
async fn connect(addr: SocketAddr, o: &Opts) -> Client {
    let host = addr.ip().to_string();
    let (handle, (events, driver)) = match o.version {
        Version::V3 => {
            let mut m = rumqttc::MqttOptions::new(&o.id, host, addr.port());
            m.set_clean_session(o.clean);
            if let Some((topic, payload)) = o.will.clone() {
                m.set_last_will(rumqttc::LastWill::new(topic, payload, qos3(1), false));
            }
            let (c, el) = rumqttc::AsyncClient::new(m, 64);
            (Handle::V3(c), drive(V3Loop(el)))
        }
        Version::V5 => {
            let mut m = v5::MqttOptions::new(&o.id, host, addr.port());
            m.set_clean_start(o.clean);
            m.set_session_expiry_interval(o.expiry);
            m.set_topic_alias_max(o.alias_max);
            if let Some((topic, payload)) = o.will.clone() {
                m.set_last_will(p5::LastWill::new(topic, payload, qos5(1), false, None));
            }
            let (c, el) = v5::AsyncClient::new(m, 64);
            let el = V5Loop {
                el,
                aliases: HashMap::new(),
            };
            (Handle::V5(c), drive(el))
        }
    };
    let mut c = Client {
        name: o.id.clone(),
        handle,
        events,
        backlog: VecDeque::new(),
        driver,
        session_present: false,
        connack: None,
    };
    let (present, props) = c
        .wait_for("CONNACK", |e| match e {
            Ev::ConnAck {
                session_present,
                props,
            } => Some((*session_present, props.clone())),
            _ => None,
        })
        .await;
    c.session_present = present;
    c.connack = props;
    c
}

impl Drop for Client {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The PUBLISH properties that set only a topic alias.
fn alias(a: u16) -> p5::PublishProperties {
    p5::PublishProperties {
        topic_alias: Some(a),
        ..Default::default()
    }
}

/// The acknowledgement 3.1.1 and MQTT 5 give a QoS 1/2 publish that
/// reached subscribers.
const SUCCESS: Option<&str> = Some("Success");

impl Client {
    /// The first event `want` picks, from those already read or the next
    /// ones; the events passed over are kept for later.
    async fn wait_for<T>(&mut self, what: &str, mut want: impl FnMut(&Ev) -> Option<T>) -> T {
        if let Some(i) = self.backlog.iter().position(|e| want(e).is_some()) {
            let e = self.backlog.remove(i).expect("position is in range");
            return want(&e).expect("picked before");
        }
        let name = self.name.clone();
        let what = format!("{name}: {what}");
        let (events, backlog) = (&mut self.events, &mut self.backlog);
        within(&what, async {
            loop {
                match events.recv().await {
                    Some(Ok(e)) => match want(&e) {
                        Some(t) => return t,
                        None if matches!(e, Ev::Other) => {}
                        None => backlog.push_back(e),
                    },
                    Some(Err(c)) => panic!("{what}: connection closed: {c:?}"),
                    None => panic!("{what}: connection already closed"),
                }
            }
        })
        .await
    }

    /// Waits for the connection to end (keeping the events before it).
    async fn closed(&mut self, what: &str) -> Closed {
        let what = format!("{}: {what}", self.name);
        let (events, backlog) = (&mut self.events, &mut self.backlog);
        within(&what, async {
            loop {
                match events.recv().await {
                    Some(Ok(Ev::Other)) => {}
                    Some(Ok(e)) => backlog.push_back(e),
                    Some(Err(c)) => return c,
                    None => panic!("{what}: end already taken"),
                }
            }
        })
        .await
    }

    async fn subscribe(&mut self, filters: &[(&str, u8)]) -> Vec<Result<u8, String>> {
        self.subscribe_with_id(filters, None).await
    }

    /// One SUBSCRIBE of `filters`, with an MQTT 5 Subscription Identifier
    /// if `id`; returns the SUBACK's codes.
    async fn subscribe_with_id(
        &mut self,
        filters: &[(&str, u8)],
        id: Option<usize>,
    ) -> Vec<Result<u8, String>> {
        let sent = match &self.handle {
            Handle::V3(c) => {
                assert_eq!(id, None, "MQTT 3.1.1 has no subscription identifiers");
                let fs = filters
                    .iter()
                    .map(|(f, q)| rumqttc::SubscribeFilter::new(f.to_string(), qos3(*q)));
                within("SUBSCRIBE", c.subscribe_many(fs))
                    .await
                    .map_err(|e| e.to_string())
            }
            Handle::V5(c) => {
                let fs: Vec<p5::Filter> = filters
                    .iter()
                    .map(|(f, q)| p5::Filter::new(*f, qos5(*q)))
                    .collect();
                let props = p5::SubscribeProperties {
                    id,
                    user_properties: Vec::new(),
                };
                within("SUBSCRIBE", c.subscribe_many_with_properties(fs, props))
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        sent.unwrap_or_else(|e| panic!("{}: SUBSCRIBE: {e}", self.name));
        self.wait_for("SUBACK", |e| match e {
            Ev::SubAck(r) => Some(r.clone()),
            _ => None,
        })
        .await
    }

    /// Writes a PUBLISH (MQTT 5 `props` only on MQTT 5); returns its packet id.
    async fn send(
        &mut self,
        topic: &str,
        qos: u8,
        retain: bool,
        payload: &[u8],
        props: Option<p5::PublishProperties>,
    ) -> u16 {
        let sent = match (&self.handle, props) {
            (Handle::V3(c), None) => within(
                "PUBLISH",
                c.publish(topic, qos3(qos), retain, payload.to_vec()),
            )
            .await
            .map_err(|e| e.to_string()),
            (Handle::V3(_), Some(_)) => panic!("MQTT 3.1.1 PUBLISH has no properties"),
            (Handle::V5(c), props) => within(
                "PUBLISH",
                c.publish_with_properties(
                    topic,
                    qos5(qos),
                    retain,
                    payload.to_vec(),
                    props.unwrap_or_default(),
                ),
            )
            .await
            .map_err(|e| e.to_string()),
        };
        sent.unwrap_or_else(|e| panic!("{}: PUBLISH {topic}: {e}", self.name));
        self.wait_for("PUBLISH written", |e| match e {
            Ev::Sent(id) => Some(*id),
            _ => None,
        })
        .await
    }

    /// Waits for the broker's answer to the QoS `qos` publish `pkid`: the
    /// PUBACK reason (QoS 1), the PUBREC reason once PUBCOMP is in (QoS 2),
    /// None for QoS 0.
    async fn acked(&mut self, pkid: u16, qos: u8) -> Option<String> {
        match qos {
            1 => Some(
                self.wait_for("PUBACK", |e| match e {
                    Ev::PubAck { pkid: p, reason } if *p == pkid => Some(reason.clone()),
                    _ => None,
                })
                .await,
            ),
            2 => {
                let reason = self
                    .wait_for("PUBREC", |e| match e {
                        Ev::PubRec { pkid: p, reason } if *p == pkid => Some(reason.clone()),
                        _ => None,
                    })
                    .await;
                self.wait_for("PUBCOMP", |e| match e {
                    Ev::PubComp { pkid: p } if *p == pkid => Some(()),
                    _ => None,
                })
                .await;
                Some(reason)
            }
            _ => None,
        }
    }

    /// Publishes and waits for the acknowledgement (see [`Client::acked`]).
    async fn publish(
        &mut self,
        topic: &str,
        qos: u8,
        retain: bool,
        payload: &[u8],
    ) -> Option<String> {
        let pkid = self.send(topic, qos, retain, payload, None).await;
        self.acked(pkid, qos).await
    }

    /// Publishes at QoS 1 (MQTT 5 `props`) and asserts a PUBACK Success.
    async fn publish_acked(
        &mut self,
        topic: &str,
        payload: &[u8],
        props: Option<p5::PublishProperties>,
    ) {
        let pkid = self.send(topic, 1, false, payload, props).await;
        let ack = self.acked(pkid, 1).await;
        assert_eq!(ack.as_deref(), SUCCESS, "PUBACK of {topic} {payload:?}");
    }

    async fn next_publish(&mut self, what: &str) -> Msg {
        self.wait_for(what, |e| match e {
            Ev::Publish(m) => Some(m.clone()),
            _ => None,
        })
        .await
    }

    async fn publishes(&mut self, n: usize, what: &str) -> Vec<Msg> {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            out.push(
                self.next_publish(&format!("{what} ({i} of {n} so far)"))
                    .await,
            );
        }
        out
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
                Ok(Some(Ok(Ev::Publish(m)))) => panic!("{}: {why}: got {m:?}", self.name),
                Ok(Some(Ok(Ev::Other))) => {}
                Ok(Some(Ok(e))) => self.backlog.push_back(e),
                Ok(Some(Err(c))) => panic!("{}: {why}: connection closed: {c:?}", self.name),
                Ok(None) => panic!("{}: {why}: connection already closed", self.name),
            }
        }
    }

    /// Sends DISCONNECT and waits for the broker to close the connection.
    async fn disconnect(mut self) -> Closed {
        let sent = match &self.handle {
            Handle::V3(c) => within("DISCONNECT", c.disconnect())
                .await
                .map_err(|e| e.to_string()),
            Handle::V5(c) => within("DISCONNECT", c.disconnect())
                .await
                .map_err(|e| e.to_string()),
        };
        sent.unwrap_or_else(|e| panic!("{}: DISCONNECT: {e}", self.name));
        self.closed("close after DISCONNECT").await
    }

    /// Drops the socket without a DISCONNECT (the event loop goes).
    async fn drop_connection(mut self) {
        self.driver.abort();
        let _ = within("event loop abort", &mut self.driver).await;
    }
}

// ---------------------------------------------------------------------------
// A wire tap for what rumqttc cannot report

/// A TCP relay for one connection between a client and the broker that
/// reports every packet the broker sends, as raw bytes. rumqttc 0.25 loses
/// an MQTT 5 DISCONNECT whose Remaining Length is 1 (reason code, no
/// Property Length: valid, MQTT 5 section 3.14.2.2, and what Junction and
/// Mosquitto send): its decoder splits the packet off the buffer, then
/// asks for more bytes and reports a bare close. The tap shows the reason
/// code the broker actually sent.
struct Tap {
    addr: SocketAddr,
    packets: mpsc::UnboundedReceiver<Vec<u8>>,
}

/// The length of the whole packet at the front of `buf`, once it is all there.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let mut remaining = 0usize;
    for (i, b) in buf.iter().enumerate().skip(1).take(4) {
        remaining |= usize::from(b & 0x7f) << (7 * (i - 1));
        if b & 0x80 == 0 {
            let total = i + 1 + remaining;
            return (buf.len() >= total).then_some(total);
        }
    }
    None
}

impl Tap {
    async fn start(broker: SocketAddr) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind tap");
        let addr = listener.local_addr().expect("tap address");
        let (tx, packets) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let Ok(server) = TcpStream::connect(broker).await else {
                return;
            };
            let (mut from_client, mut to_client) = client.into_split();
            let (mut from_server, mut to_server) = server.into_split();
            let up = async move {
                let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
                let _ = to_server.shutdown().await;
            };
            let down = async move {
                let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
                while let Ok(n @ 1..) = from_server.read(&mut chunk).await {
                    if to_client.write_all(&chunk[..n]).await.is_err() {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(len) = frame_len(&buf) {
                        let _ = tx.send(buf.drain(..len).collect());
                    }
                }
                let _ = to_client.shutdown().await;
            };
            tokio::join!(up, down);
        });
        Tap { addr, packets }
    }

    /// The reason code of the DISCONNECT the broker sent before closing the
    /// connection (0x00 for one without), None when it closed without one.
    async fn disconnect_reason(&mut self) -> Option<u8> {
        within("broker closes the tapped connection", async {
            while let Some(p) = self.packets.recv().await {
                if p[0] == 0xE0 {
                    // Fixed header: the type byte and the Remaining Length.
                    let header = 2 + p[1..].iter().position(|b| b & 0x80 == 0).unwrap_or(0);
                    return Some(p.get(header).copied().unwrap_or(0));
                }
            }
            None
        })
        .await
    }
}

// ---------------------------------------------------------------------------
// Shared scenarios

/// Every combination of publish QoS and subscription QoS: the delivery
/// comes at the lower of the two [MQTT-3.8.4-6], acknowledged by PUBACK
/// (QoS 1) or PUBREC/PUBCOMP (QoS 2).
async fn qos_matrix(version: Version) {
    let broker = Broker::start().await;
    let mut sub = connect(broker.mqtt(), &Opts::new(version, "matrix-sub")).await;
    assert!(!sub.session_present);
    assert_eq!(
        sub.subscribe(&[("q/0", 0), ("q/1", 1), ("q/2", 2)]).await,
        vec![Ok(0), Ok(1), Ok(2)]
    );
    let mut publisher = connect(broker.mqtt(), &Opts::new(version, "matrix-pub")).await;
    let mut expected = Vec::new();
    for pq in 0..=2u8 {
        for sq in 0..=2u8 {
            let topic = format!("q/{sq}");
            let payload = format!("published at {pq}, subscribed at {sq}");
            let ack = publisher
                .publish(&topic, pq, false, payload.as_bytes())
                .await;
            let want = (pq > 0).then(|| "Success".to_string());
            assert_eq!(ack, want, "acknowledgement of {payload}");
            expected.push(seen(&topic, &payload, pq.min(sq), false));
        }
    }
    let mut got = seen_all(&sub.publishes(9, "the nine deliveries").await);
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    sub.assert_quiet("nothing beyond the nine").await;
}

/// Messages of one publisher on one topic, pipelined, arrive exactly once
/// each and in publish order [MQTT-4.6.0-6]: a QoS 1 stream, then a QoS 2
/// one (subscribed at the same QoS).
async fn streams_in_order(version: Version) {
    const N: usize = 40;
    let broker = Broker::start().await;
    let mut sub = connect(broker.mqtt(), &Opts::new(version, "order-sub")).await;
    let mut publisher = connect(broker.mqtt(), &Opts::new(version, "order-pub")).await;
    for qos in [1, 2] {
        let topic = format!("order/{qos}");
        assert_eq!(sub.subscribe(&[(&topic, qos)]).await, vec![Ok(qos)]);
        let bodies: Vec<String> = (0..N).map(|i| format!("message {i:03}")).collect();
        let mut pkids = Vec::new();
        for body in &bodies {
            pkids.push(
                publisher
                    .send(&topic, qos, false, body.as_bytes(), None)
                    .await,
            );
        }
        for pkid in pkids {
            assert_eq!(publisher.acked(pkid, qos).await.as_deref(), SUCCESS);
        }
        let got = seen_all(&sub.publishes(N, &format!("the QoS {qos} stream")).await);
        let expected: Vec<Seen> = bodies.iter().map(|b| seen(&topic, b, qos, false)).collect();
        assert_eq!(got, expected);
        sub.assert_quiet("each message once").await;
    }
}

/// A persistent session keeps its subscription and collects QoS 1
/// messages while its client is away; a clean start discards it.
async fn offline_messages(version: Version) {
    let broker = Broker::start().await;
    let opts = Opts::new(version, "offline-sub").persistent();
    let mut sub = connect(broker.mqtt(), &opts).await;
    assert!(!sub.session_present, "a new session");
    assert_eq!(sub.subscribe(&[("offline/+/t", 1)]).await, vec![Ok(1)]);
    sub.disconnect().await;

    let mut publisher = connect(broker.mqtt(), &Opts::new(version, "offline-pub")).await;
    let expected: Vec<Seen> = (0..3)
        .map(|i| {
            seen(
                &format!("offline/{i}/t"),
                &format!("while away {i}"),
                1,
                false,
            )
        })
        .collect();
    for s in &expected {
        publisher
            .publish_acked(&s.topic, s.payload.as_bytes(), None)
            .await;
    }

    let mut sub = connect(broker.mqtt(), &opts).await;
    assert!(sub.session_present, "the session was kept");
    assert_eq!(
        seen_all(&sub.publishes(3, "queued messages").await),
        expected
    );
    sub.assert_quiet("each queued message once").await;
    sub.disconnect().await;

    publisher
        .publish_acked("offline/9/t", b"queued, then discarded", None)
        .await;
    let mut fresh = connect(broker.mqtt(), &opts.clone().clean_start()).await;
    assert!(!fresh.session_present, "clean start: a new session");
    fresh
        .assert_quiet("a clean start discards the old session and its queue")
        .await;
}

/// Like [`offline_messages`], with the broker stopped by `signal` and
/// restarted on its data directory while the client is away. An MQTT 5
/// bystander, connected during the stop, sees how the broker went: a
/// DISCONNECT 0x8B Server shutting down on SIGTERM, a bare close on SIGKILL.
/// The queued messages were never sent to the client, so they come with
/// DUP clear [MQTT-3.3.1-1]; that is checked last, after the rest.
async fn session_survives_restart(version: Version, signal: &str) {
    let mut broker = Broker::start().await;
    let opts = Opts::new(version, "restart-sub").persistent();
    let mut sub = connect(broker.mqtt(), &opts).await;
    assert_eq!(sub.subscribe(&[("plant/+/alarm", 1)]).await, vec![Ok(1)]);
    sub.disconnect().await;
    let mut publisher = connect(broker.mqtt(), &Opts::new(version, "restart-pub")).await;
    let expected: Vec<Seen> = (0..5)
        .map(|i| seen(&format!("plant/{i}/alarm"), &format!("alarm {i}"), 1, false))
        .collect();
    for s in &expected {
        publisher
            .publish_acked(&s.topic, s.payload.as_bytes(), None)
            .await;
    }
    let mut tap = Tap::start(broker.mqtt()).await;
    let mut bystander = connect(tap.addr, &Opts::new(Version::V5, "bystander")).await;

    broker.restart_after(signal).await;
    bystander.closed("the broker stops").await;
    let want = (signal == "TERM").then_some(0x8B);
    assert_eq!(tap.disconnect_reason().await, want, "SIG{signal}");

    let mut sub = connect(broker.mqtt(), &opts).await;
    assert!(sub.session_present, "the session survived SIG{signal}");
    let got = sub.publishes(5, "messages queued before the stop").await;
    let ignoring_dup: Vec<Seen> = got
        .iter()
        .map(|m| Seen {
            dup: false,
            ..m.seen()
        })
        .collect();
    assert_eq!(ignoring_dup, expected);
    sub.assert_quiet("each message once").await;
    let mut publisher = connect(broker.mqtt(), &Opts::new(version, "restart-pub")).await;
    publisher
        .publish_acked("plant/9/alarm", b"after the restart", None)
        .await;
    assert_eq!(
        sub.next_publish("a message through the restored subscription")
            .await
            .seen(),
        seen("plant/9/alarm", "after the restart", 1, false)
    );
    let dups: Vec<bool> = got.iter().map(|m| m.dup).collect();
    assert_eq!(
        dups, [false; 5],
        "DUP on the first delivery of messages queued before SIG{signal}"
    );
}

/// The acknowledgement of a publish nobody subscribes to: MQTT 5 says so
/// with 0x10 No matching subscribers (Junction uses that reason code).
fn unrouted_ack(version: Version) -> Option<String> {
    Some(match version {
        Version::V3 => "Success".into(),
        Version::V5 => "NoMatchingSubscribers".into(),
    })
}

/// Retained messages go to a new `a/#` subscriber with RETAIN set, at the
/// lower QoS; live deliveries have RETAIN clear; an empty retained payload
/// clears the topic (and is delivered live as it is) [MQTT-3.3.1-5..12].
async fn retained(version: Version) {
    let broker = Broker::start().await;
    let mut publisher = connect(broker.mqtt(), &Opts::new(version, "retainer")).await;
    let ack = publisher.publish("a/c/d", 0, true, b"retained at 0").await;
    assert_eq!(ack, None);
    for (topic, body) in [("a/b", "retained at 1"), ("b/x", "elsewhere")] {
        let ack = publisher.publish(topic, 1, true, body.as_bytes()).await;
        assert_eq!(ack, unrouted_ack(version), "retained {topic}");
    }

    let mut sub = connect(broker.mqtt(), &Opts::new(version, "retained-sub")).await;
    assert_eq!(sub.subscribe(&[("a/#", 1)]).await, vec![Ok(1)]);
    let mut got = seen_all(&sub.publishes(2, "retained messages").await);
    got.sort();
    assert_eq!(
        got,
        vec![
            seen("a/b", "retained at 1", 1, true),
            seen("a/c/d", "retained at 0", 0, true),
        ]
    );
    sub.assert_quiet("only the two retained messages under a/")
        .await;

    publisher.publish_acked("a/b", b"live", None).await;
    assert_eq!(
        sub.next_publish("live message").await.seen(),
        seen("a/b", "live", 1, false)
    );
    let ack = publisher.publish("a/b", 1, true, b"").await;
    assert_eq!(ack.as_deref(), SUCCESS);
    assert_eq!(
        sub.next_publish("the clearing message, live").await.seen(),
        seen("a/b", "", 1, false)
    );

    let mut late = connect(broker.mqtt(), &Opts::new(version, "late-sub")).await;
    assert_eq!(late.subscribe(&[("a/#", 2)]).await, vec![Ok(2)]);
    assert_eq!(
        late.next_publish("the retained message left").await.seen(),
        seen("a/c/d", "retained at 0", 0, true)
    );
    late.assert_quiet("a/b was cleared").await;
}

/// The will goes out when a client's socket drops without DISCONNECT, and
/// not after a DISCONNECT [MQTT-3.1.2-8], [MQTT-3.1.2-10].
async fn wills(version: Version) {
    let broker = Broker::start().await;
    let mut watcher = connect(broker.mqtt(), &Opts::new(version, "will-watcher")).await;
    assert_eq!(watcher.subscribe(&[("will/#", 1)]).await, vec![Ok(1)]);

    let polite = Opts::new(version, "polite").will("will/polite", b"polite is gone");
    connect(broker.mqtt(), &polite).await.disconnect().await;
    let rude = Opts::new(version, "rude").will("will/rude", b"rude is gone");
    connect(broker.mqtt(), &rude).await.drop_connection().await;

    assert_eq!(
        watcher
            .next_publish("the will of the dropped client")
            .await
            .seen(),
        seen("will/rude", "rude is gone", 1, false)
    );
    watcher
        .assert_quiet("no will after a clean DISCONNECT")
        .await;
}

/// A second connection with the same client id takes the session over:
/// the first is closed (MQTT 5: DISCONNECT 0x8E Session taken over), the
/// second finds the session and its subscription [MQTT-3.1.4-3].
async fn takeover(version: Version) {
    let broker = Broker::start().await;
    let opts = Opts::new(version, "twin").persistent();
    let mut tap = Tap::start(broker.mqtt()).await;
    let mut first = connect(tap.addr, &opts).await;
    assert_eq!(first.subscribe(&[("twin/t", 1)]).await, vec![Ok(1)]);

    let mut second = connect(broker.mqtt(), &opts).await;
    assert!(second.session_present, "the session moved over");
    first.closed("taken over").await;
    let want = match version {
        Version::V3 => None,
        Version::V5 => Some(0x8E),
    };
    assert_eq!(tap.disconnect_reason().await, want);

    let mut publisher = connect(broker.mqtt(), &Opts::new(version, "twin-pub")).await;
    publisher
        .publish_acked("twin/t", b"for the new connection", None)
        .await;
    assert_eq!(
        second.next_publish("delivery after takeover").await.seen(),
        seen("twin/t", "for the new connection", 1, false)
    );
    second.assert_quiet("one copy").await;
}

// ---------------------------------------------------------------------------
// MQTT 3.1.1 and MQTT 5, the same scenarios

/// One `#[tokio::test]` per `name => scenario` (a future).
macro_rules! scenario_tests {
    ($($name:ident => $scenario:expr;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $scenario.await;
            }
        )*
    };
}

scenario_tests! {
    v3_delivered_qos_is_the_lower_of_publish_and_subscription_qos => qos_matrix(Version::V3);
    v5_delivered_qos_is_the_lower_of_publish_and_subscription_qos => qos_matrix(Version::V5);
    v3_pipelined_qos1_and_qos2_streams_arrive_once_in_order => streams_in_order(Version::V3);
    v5_pipelined_qos1_and_qos2_streams_arrive_once_in_order => streams_in_order(Version::V5);
    v3_clean_session_0_receives_qos1_messages_published_while_offline =>
        offline_messages(Version::V3);
    v5_session_expiry_receives_qos1_messages_published_while_offline =>
        offline_messages(Version::V5);
    v3_persistent_session_and_its_queue_survive_sigterm_restart =>
        session_survives_restart(Version::V3, "TERM");
    v3_persistent_session_and_its_queue_survive_sigkill =>
        session_survives_restart(Version::V3, "KILL");
    v5_persistent_session_and_its_queue_survive_sigterm_restart =>
        session_survives_restart(Version::V5, "TERM");
    v5_persistent_session_and_its_queue_survive_sigkill =>
        session_survives_restart(Version::V5, "KILL");
    v3_retained_messages_reach_new_subscribers_and_empty_payload_clears => retained(Version::V3);
    v5_retained_messages_reach_new_subscribers_and_empty_payload_clears => retained(Version::V5);
    v3_will_published_on_dropped_socket_not_on_disconnect => wills(Version::V3);
    v5_will_published_on_dropped_socket_not_on_disconnect => wills(Version::V5);
    v3_same_client_id_takes_over_the_session => takeover(Version::V3);
    v5_same_client_id_takes_over_with_disconnect_0x8e => takeover(Version::V5);
}

// ---------------------------------------------------------------------------
// MQTT 5 only

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_publish_without_subscribers_is_acked_no_matching_subscribers() {
    let broker = Broker::start().await;
    let mut publisher = connect(broker.mqtt(), &Opts::new(Version::V5, "lonely")).await;
    for qos in [1, 2] {
        let ack = publisher
            .publish("nobody/home", qos, false, b"anyone?")
            .await;
        assert_eq!(ack, unrouted_ack(Version::V5), "QoS {qos}");
    }
}

/// Waits until `a` and `b` together got `n` messages.
async fn split_between(a: &mut Client, b: &mut Client, n: usize) -> (Vec<Msg>, Vec<Msg>) {
    within("shared deliveries", async {
        let (mut ga, mut gb) = (Vec::new(), Vec::new());
        while ga.len() + gb.len() < n {
            tokio::select! {
                m = a.next_publish("shared delivery") => ga.push(m),
                m = b.next_publish("shared delivery") => gb.push(m),
            }
        }
        (ga, gb)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_shared_subscription_gives_each_message_to_exactly_one_member() {
    const N: usize = 20;
    let broker = Broker::start().await;
    let mut members = Vec::new();
    for id in ["member-a", "member-b"] {
        let mut m = connect(broker.mqtt(), &Opts::new(Version::V5, id)).await;
        assert_eq!(m.subscribe(&[("$share/g/sh/t", 1)]).await, vec![Ok(1)]);
        members.push(m);
    }
    let mut everything = connect(broker.mqtt(), &Opts::new(Version::V5, "non-shared")).await;
    assert_eq!(everything.subscribe(&[("sh/t", 1)]).await, vec![Ok(1)]);
    let mut publisher = connect(broker.mqtt(), &Opts::new(Version::V5, "sh-pub")).await;
    let expected: Vec<Seen> = (0..N)
        .map(|i| seen("sh/t", &format!("m{i:02}"), 1, false))
        .collect();
    for s in &expected {
        publisher
            .publish_acked(&s.topic, s.payload.as_bytes(), None)
            .await;
    }

    let [a, b] = &mut members[..] else {
        unreachable!("two members")
    };
    let (ga, gb) = split_between(a, b, N).await;
    assert!(
        !ga.is_empty() && !gb.is_empty(),
        "both members get a share: {} and {}",
        ga.len(),
        gb.len()
    );
    let mut union = seen_all(&ga);
    union.extend(seen_all(&gb));
    union.sort();
    assert_eq!(union, expected, "each message to exactly one member");
    a.assert_quiet("no second copy").await;
    b.assert_quiet("no second copy").await;
    assert_eq!(
        seen_all(&everything.publishes(N, "the non-shared subscription").await),
        expected
    );
    everything.assert_quiet("one copy each").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_topic_aliases_set_by_the_client_resolve_and_an_unknown_one_is_0x82() {
    let broker = Broker::with_mqtt_config("topic_alias_maximum = 3").await;
    let sub_opts = Opts::new(Version::V5, "alias-sub").alias_max(2);
    let mut sub = connect(broker.mqtt(), &sub_opts).await;
    assert_eq!(sub.subscribe(&[("alias/#", 1)]).await, vec![Ok(1)]);
    let mut tap = Tap::start(broker.mqtt()).await;
    let mut publisher = connect(tap.addr, &Opts::new(Version::V5, "alias-pub")).await;
    let announced = publisher.connack.as_ref().and_then(|p| p.topic_alias_max);
    assert_eq!(announced, Some(3), "Topic Alias Maximum from [mqtt]");

    // (topic on the wire, alias, payload, topic meant)
    let sends = [
        ("alias/t", 1, "one", "alias/t"),
        ("", 1, "two", "alias/t"),
        ("alias/u", 1, "three", "alias/u"),
        ("", 1, "four", "alias/u"),
        ("alias/v", 3, "five", "alias/v"),
        ("", 3, "six", "alias/v"),
        ("", 1, "seven", "alias/u"),
    ];
    for (wire, a, body, _) in sends {
        publisher
            .publish_acked(wire, body.as_bytes(), Some(alias(a)))
            .await;
    }
    let got = sub.publishes(sends.len(), "aliased publishes").await;
    let expected: Vec<Seen> = sends.iter().map(|s| seen(s.3, s.2, 1, false)).collect();
    assert_eq!(seen_all(&got), expected);
    for m in &got {
        if let Some(a) = m.props().topic_alias {
            assert!((1..=2).contains(&a), "alias {a} beyond the subscriber's 2");
        }
    }

    publisher
        .send("", 1, false, b"nowhere", Some(alias(2)))
        .await;
    publisher.closed("PUBLISH with an unset alias").await;
    assert_eq!(tap.disconnect_reason().await, Some(0x82));
    sub.assert_quiet("nothing from the refused publish").await;
}

fn subscription_ids(m: &Msg) -> Vec<usize> {
    let mut ids = m.props().subscription_identifiers;
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_deliveries_carry_the_identifiers_of_the_matching_subscriptions() {
    let broker = Broker::start().await;
    let mut sub = connect(broker.mqtt(), &Opts::new(Version::V5, "sid-sub")).await;
    assert_eq!(
        sub.subscribe_with_id(&[("sid/+", 1)], Some(7)).await,
        vec![Ok(1)]
    );
    assert_eq!(
        sub.subscribe_with_id(&[("sid/x/#", 1)], Some(9)).await,
        vec![Ok(1)]
    );
    assert_eq!(sub.subscribe(&[("other/t", 1)]).await, vec![Ok(1)]);
    let mut publisher = connect(broker.mqtt(), &Opts::new(Version::V5, "sid-pub")).await;
    for topic in ["sid/a", "sid/x/y", "other/t"] {
        publisher.publish_acked(topic, topic.as_bytes(), None).await;
    }
    let mut got: Vec<(String, Vec<usize>)> = sub
        .publishes(3, "one delivery per topic")
        .await
        .iter()
        .map(|m| (m.topic.clone(), subscription_ids(m)))
        .collect();
    got.sort();
    let expected = [
        ("other/t", vec![]),
        ("sid/a", vec![7]),
        ("sid/x/y", vec![9]),
    ];
    let expected: Vec<(String, Vec<usize>)> = expected
        .into_iter()
        .map(|(t, ids)| (t.into(), ids))
        .collect();
    assert_eq!(got, expected);

    // sid/x matches both sid/+ and sid/x/#: one copy with both identifiers,
    // or one copy per subscription [MQTT-3.3.4-3..5].
    publisher.publish_acked("sid/x", b"both", None).await;
    let first = sub.next_publish("overlapping delivery").await;
    let mut ids = subscription_ids(&first);
    if ids.len() < 2 {
        ids.extend(subscription_ids(&sub.next_publish("second copy").await));
        ids.sort();
    }
    assert_eq!(ids, vec![7, 9]);
    sub.assert_quiet("no further copy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_message_expiring_while_queued_for_an_offline_session_is_dropped() {
    let broker = Broker::start().await;
    let opts = Opts::new(Version::V5, "exp-sub").persistent();
    let mut sub = connect(broker.mqtt(), &opts).await;
    assert_eq!(sub.subscribe(&[("exp/t", 1)]).await, vec![Ok(1)]);
    sub.disconnect().await;
    let mut publisher = connect(broker.mqtt(), &Opts::new(Version::V5, "exp-pub")).await;
    let expiring = |secs| p5::PublishProperties {
        message_expiry_interval: Some(secs),
        ..Default::default()
    };
    publisher
        .publish_acked("exp/t", b"short", Some(expiring(1)))
        .await;
    publisher
        .publish_acked("exp/t", b"long", Some(expiring(60)))
        .await;
    publisher.publish_acked("exp/t", b"forever", None).await;
    // The time passing is what is tested: no event to wait for.
    tokio::time::sleep(Duration::from_millis(2_500)).await;

    let mut sub = connect(broker.mqtt(), &opts).await;
    assert!(sub.session_present);
    let got = sub.publishes(2, "unexpired messages").await;
    assert_eq!(
        seen_all(&got),
        vec![
            seen("exp/t", "long", 1, false),
            seen("exp/t", "forever", 1, false)
        ]
    );
    // The interval sent on is what is left of it [MQTT-3.3.2-6].
    let left = got[0].props().message_expiry_interval;
    assert!(
        left.is_some_and(|s| (55..=58).contains(&s)),
        "remaining expiry of 60 s after 2.5 s: {left:?}"
    );
    assert_eq!(got[1].props().message_expiry_interval, None);
    sub.assert_quiet("the expired message stays dropped").await;
}

// ---------------------------------------------------------------------------
// MQTT ⇄ AMQP 0-9-1 through lapin

async fn amqp_channel(addr: SocketAddr) -> (Connection, lapin::Channel) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_publish_reaches_an_amqp_queue_bound_to_amq_topic_byte_identical() {
    let broker = Broker::start().await;
    let (_conn, ch) = amqp_channel(broker.amqp()).await;
    within(
        "queue.declare",
        ch.queue_declare(
            "plant-temps".into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.declare");
    within(
        "queue.bind",
        ch.queue_bind(
            "plant-temps".into(),
            "amq.topic".into(),
            "plant.*.temp".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.bind");

    let mut publisher = connect(broker.mqtt(), &Opts::new(Version::V3, "plant-7")).await;
    let body: Vec<u8> = (0..=255u8).rev().chain([0, 0xff, b'\n', 0]).collect();
    publisher
        .publish_acked("plant/7/humidity", b"not bound", None)
        .await;
    publisher.publish_acked("plant/7/temp", &body, None).await;
    publisher
        .publish_acked("plant/7/temp/raw", b"not bound", None)
        .await;

    let mut consumer = within(
        "basic.consume",
        ch.basic_consume(
            "plant-temps".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("basic.consume");
    let d = within("AMQP delivery", consumer.next())
        .await
        .expect("consumer open")
        .expect("delivery");
    assert_eq!(d.data, body, "body byte-identical");
    assert_eq!(
        (d.exchange.as_str(), d.routing_key.as_str()),
        ("amq.topic", "plant.7.temp")
    );
    assert_eq!(
        *d.properties.delivery_mode(),
        Some(2),
        "QoS 1 is persistent"
    );
    within("basic.ack", d.ack(BasicAckOptions::default()))
        .await
        .expect("basic.ack");
    if let Ok(extra) = tokio::time::timeout(QUIET, consumer.next()).await {
        let extra = extra.map(|r| r.map(|d| d.routing_key.to_string()));
        panic!("only plant.7.temp is bound: got {extra:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_publish_to_amq_topic_reaches_an_mqtt_wildcard_subscriber() {
    let broker = Broker::start().await;
    let mut sub = connect(broker.mqtt(), &Opts::new(Version::V5, "cmd-sub")).await;
    assert_eq!(sub.subscribe(&[("cmd/+", 1)]).await, vec![Ok(1)]);
    let (_conn, ch) = amqp_channel(broker.amqp()).await;
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    for (key, body) in [
        ("cmd.7.x", "too deep"),
        ("cmd.7", "reboot"),
        ("cmd", "too short"),
    ] {
        let confirm = within(
            "basic.publish",
            ch.basic_publish(
                "amq.topic".into(),
                key.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            ),
        )
        .await
        .expect("basic.publish");
        let c = within("publisher confirm", confirm).await.expect("confirm");
        assert_eq!(c, Confirmation::Ack(None), "confirm of {key}");
    }
    // A persistent AMQP message counts as QoS 1.
    assert_eq!(
        sub.next_publish("the cmd.7 message").await.seen(),
        seen("cmd/7", "reboot", 1, false)
    );
    sub.assert_quiet("cmd/+ matches one level only").await;
}
