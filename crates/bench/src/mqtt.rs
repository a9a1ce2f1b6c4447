//! MQTT publisher, consumer and idle connection on rumqttc: 3.1.1 through
//! `rumqttc::AsyncClient`, 5.0 through `rumqttc::v5`. The two APIs differ
//! only in types, so a small enum pair ([`Client`], [`Session`]) hides the
//! version and the rest of the module is written once.
//!
//! Each connection's rumqttc event loop runs in its own task and is polled
//! without interruption (its `poll` is not cancel-safe). A publisher keeps at
//! most `inflight` publishes outstanding: a semaphore permit is taken per
//! publish and returned by the event loop on PUBACK (QoS 1) [MQTT-4.3.2],
//! PUBCOMP (QoS 2) [MQTT-4.3.3] or, for QoS 0, once the PUBLISH is written.

use crate::bridge::Bridge;
use crate::collector::Collector;
use crate::error::BenchError;
use crate::load::{CLOSE_TIMEOUT, CONNECT_TIMEOUT, Endpoint, Pacer, PubPlan};
use crate::tls::TlsClient;
use crate::tracker::ConsumerIx;
use bytes::Bytes;
use rumqttc::v5;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::{timeout, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::cli::Proto::Mqtt as MQTT;

/// Keep-alive of every connection: long enough to cost nothing, short enough
/// that an idle connection proves it is still alive during a long hold.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Room in the client's request channel beyond the in-flight window.
const REQUEST_SLACK: usize = 16;

/// How to talk MQTT for this run.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    /// Broker address and credentials.
    pub endpoint: Endpoint,
    /// Protocol level: 4 (3.1.1) or 5.
    pub version: u8,
    /// QoS of publishes and subscriptions.
    pub qos: u8,
    /// Clean session (v5: clean start). Without it client ids are stable
    /// across runs so sessions resume.
    pub clean_session: bool,
    /// Outstanding publishes per publisher.
    pub inflight: u16,
    /// Largest packet accepted or sent (payload plus headroom).
    pub max_packet: usize,
    /// Distinguishes this run's client ids from a concurrent run's.
    pub run_id: u32,
    /// TLS (`--tls-ca`): every connection goes over it.
    pub tls: Option<TlsClient>,
    /// `--transport ws|bridged`: every connection goes through this
    /// bridge (rumqttc on its Unix socket).
    pub bridge: Option<Arc<Bridge>>,
    /// `--consumer-filters`: extra subscriptions per consumer, matching
    /// nothing.
    pub consumer_filters: u64,
}

impl MqttSettings {
    /// Client id of connection storm client `index` of `role`: this run's
    /// whatever the clean-session flag (`jb<run>` + role + index, at most
    /// 2 + 8 + 1 + 10 = 21 characters), so a persistent session lasts
    /// exactly as long as the run makes it and never meets another run's.
    pub fn storm_client_id(&self, role: &str, index: u32) -> String {
        format!("jb{:08x}{role}{index}", self.run_id)
    }

    /// Client id for connection `index` of `role` ("p", "s" or "i"), at most
    /// 23 characters as [MQTT-3.1.3-5] guarantees every server accepts.
    fn client_id(&self, role: &str, index: u32) -> String {
        if self.clean_session {
            format!("jb{:08x}{role}{index}", self.run_id)
        } else {
            format!("jb-{role}{index}")
        }
    }
}

/// The request side of one connection, either version.
#[derive(Clone)]
enum Client {
    V4(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

/// The event loop of one connection, either version.
enum Session {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<v5::EventLoop>),
}

/// The event-loop outcomes the generator acts on.
enum Event {
    /// CONNACK accepted; whether it said session present.
    ConnAck(bool),
    SubAck(Result<(), String>),
    /// A PUBLISH arrived: its payload and the QoS it was delivered at.
    Message(Bytes, u8),
    /// A PUBLISH went onto the wire.
    Written,
    /// A PUBACK or PUBCOMP arrived: one publish fully acknowledged.
    Acked,
    /// Our DISCONNECT went out.
    Disconnected,
    Other,
}

fn qos4(qos: u8) -> rumqttc::QoS {
    match qos {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos5(qos: u8) -> v5::mqttbytes::QoS {
    match qos {
        0 => v5::mqttbytes::QoS::AtMostOnce,
        1 => v5::mqttbytes::QoS::AtLeastOnce,
        _ => v5::mqttbytes::QoS::ExactlyOnce,
    }
}

/// The QoS level a 3.1.1 PUBLISH arrived at.
fn level4(qos: rumqttc::QoS) -> u8 {
    match qos {
        rumqttc::QoS::AtMostOnce => 0,
        rumqttc::QoS::AtLeastOnce => 1,
        rumqttc::QoS::ExactlyOnce => 2,
    }
}

/// The QoS level a 5.0 PUBLISH arrived at.
fn level5(qos: v5::mqttbytes::QoS) -> u8 {
    match qos {
        v5::mqttbytes::QoS::AtMostOnce => 0,
        v5::mqttbytes::QoS::AtLeastOnce => 1,
        v5::mqttbytes::QoS::ExactlyOnce => 2,
    }
}

fn event4(event: rumqttc::Event) -> Event {
    use rumqttc::{Event as E, Outgoing as O, Packet as P, SubscribeReasonCode as R};
    match event {
        E::Incoming(P::ConnAck(c)) => Event::ConnAck(c.session_present),
        E::Incoming(P::SubAck(s)) if s.return_codes.iter().all(|c| matches!(c, R::Success(_))) => {
            Event::SubAck(Ok(()))
        }
        E::Incoming(P::SubAck(s)) => Event::SubAck(Err(format!("{:?}", s.return_codes))),
        E::Incoming(P::Publish(p)) => Event::Message(p.payload, level4(p.qos)),
        E::Incoming(P::PubAck(_) | P::PubComp(_)) => Event::Acked,
        E::Outgoing(O::Publish(_)) => Event::Written,
        E::Outgoing(O::Disconnect) => Event::Disconnected,
        _ => Event::Other,
    }
}

fn event5(event: v5::Event) -> Event {
    use rumqttc::Outgoing as O;
    use v5::Event as E;
    use v5::mqttbytes::v5::{Packet as P, SubscribeReasonCode as R};
    match event {
        E::Incoming(P::ConnAck(c)) => Event::ConnAck(c.session_present),
        E::Incoming(P::SubAck(s)) if s.return_codes.iter().all(|c| matches!(c, R::Success(_))) => {
            Event::SubAck(Ok(()))
        }
        E::Incoming(P::SubAck(s)) => Event::SubAck(Err(format!("{:?}", s.return_codes))),
        E::Incoming(P::Publish(p)) => Event::Message(p.payload, level5(p.qos)),
        E::Incoming(P::PubAck(_) | P::PubComp(_)) => Event::Acked,
        E::Outgoing(O::Publish(_)) => Event::Written,
        E::Outgoing(O::Disconnect) => Event::Disconnected,
        _ => Event::Other,
    }
}

impl Session {
    async fn poll(&mut self) -> Result<Event, String> {
        match self {
            Session::V4(el) => el.poll().await.map(event4).map_err(|e| e.to_string()),
            Session::V5(el) => el.poll().await.map(event5).map_err(|e| e.to_string()),
        }
    }
}

impl Client {
    async fn publish(&self, topic: &str, qos: u8, body: Bytes) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .publish_bytes(topic, qos4(qos), false, body)
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .publish(topic, qos5(qos), false, body)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    async fn subscribe(&self, filter: &str, qos: u8) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .subscribe(filter, qos4(qos))
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .subscribe(filter, qos5(qos))
                .await
                .map_err(|e| e.to_string()),
        }
    }

    fn try_disconnect(&self) {
        // Fails only when the event loop is gone, and then there is nothing
        // left to close.
        let _ = match self {
            Client::V4(c) => c.try_disconnect().map_err(|e| e.to_string()),
            Client::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
        };
    }
}

/// Opens one connection and waits for its CONNACK.
async fn connect(s: &MqttSettings, client_id: String) -> Result<(Client, Session), BenchError> {
    let (client, session, _) = connect_as(s, client_id, s.clean_session).await?;
    Ok((client, session))
}

/// Opens one connection as `client_id` with clean session (v5: clean start)
/// `clean` and waits for its CONNACK; also returns the CONNACK's session
/// present flag.
async fn connect_as(
    s: &MqttSettings,
    client_id: String,
    clean: bool,
) -> Result<(Client, Session, bool), BenchError> {
    let e = &s.endpoint;
    let cap = usize::from(s.inflight) + REQUEST_SLACK;
    // Through the bridge: rumqttc's "broker address" is its Unix socket.
    let (host, port) = match &s.bridge {
        Some(b) => (b.path().display().to_string(), 0),
        None => (e.host.clone(), e.port),
    };
    let (client, mut session) = if s.version == 5 {
        let mut o = v5::MqttOptions::new(client_id, host, port);
        o.set_keep_alive(KEEP_ALIVE)
            .set_clean_start(clean)
            .set_credentials(e.user.clone(), e.password.clone())
            .set_max_packet_size(Some(u32::try_from(s.max_packet).unwrap_or(u32::MAX)))
            .set_outgoing_inflight_upper_limit(s.inflight);
        if !clean {
            // A v5 session without an expiry ends with the connection.
            o.set_session_expiry_interval(Some(3_600));
        }
        if let Some(tls) = &s.tls {
            o.set_transport(tls.mqtt_transport());
        }
        if s.bridge.is_some() {
            o.set_transport(rumqttc::Transport::Unix);
        }
        let (c, el) = v5::AsyncClient::new(o, cap);
        (Client::V5(c), Session::V5(Box::new(el)))
    } else {
        let mut o = rumqttc::MqttOptions::new(client_id, host, port);
        o.set_keep_alive(KEEP_ALIVE)
            .set_clean_session(clean)
            .set_credentials(e.user.clone(), e.password.clone())
            .set_max_packet_size(s.max_packet, s.max_packet)
            .set_inflight(s.inflight);
        if let Some(tls) = &s.tls {
            o.set_transport(tls.mqtt_transport());
        }
        if s.bridge.is_some() {
            o.set_transport(rumqttc::Transport::Unix);
        }
        let (c, el) = rumqttc::AsyncClient::new(o, cap);
        (Client::V4(c), Session::V4(Box::new(el)))
    };
    let handshake = async {
        loop {
            match session.poll().await {
                Ok(Event::ConnAck(present)) => return Ok(present),
                Ok(_) => {}
                Err(reason) => return Err(BenchError::connect(MQTT, &e.addr(), reason)),
            }
        }
    };
    match timeout(CONNECT_TIMEOUT, handshake).await {
        Ok(Ok(present)) => Ok((client, session, present)),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(BenchError::connect(MQTT, &e.addr(), "no CONNACK in time")),
    }
}

/// Publishes `plan.count` messages to `topic`, at most `plan.inflight`
/// outstanding, until done or `plan.stop_at`; then waits up to `plan.drain`
/// for the last acknowledgements and disconnects.
pub async fn publish(
    s: &MqttSettings,
    topic: &str,
    plan: &PubPlan,
    collector: Arc<Collector>,
) -> Result<(), BenchError> {
    let (client, mut session) = connect(s, s.client_id("p", plan.index.0)).await?;
    let window = Arc::new(Semaphore::new(usize::from(plan.inflight)));
    let qos = s.qos;
    let events = tokio::spawn({
        let window = Arc::clone(&window);
        let collector = Arc::clone(&collector);
        async move {
            let result = loop {
                match session.poll().await {
                    Ok(Event::Written) => {
                        collector.on_sent(1);
                        if qos == 0 {
                            window.add_permits(1);
                        }
                    }
                    Ok(Event::Acked) if qos > 0 => window.add_permits(1),
                    Ok(Event::Disconnected) => break Ok(()),
                    Ok(_) => {}
                    Err(reason) => break Err(reason),
                }
            };
            // Wakes a publisher waiting for a permit that will never come.
            window.close();
            result
        }
    });

    let pacer = Pacer::new(plan.rate, Instant::now());
    let stop_at = tokio::time::Instant::from_std(plan.stop_at);
    for seq in 0..plan.count {
        if !pacer.wait(seq, plan.stop_at).await || !collector.wait_for_room(plan.stop_at).await {
            break;
        }
        match timeout_at(stop_at, window.acquire()).await {
            Ok(Ok(permit)) => permit.forget(),
            Ok(Err(_)) | Err(_) => break,
        }
        let body = collector.message(plan.index, seq, plan.size);
        match timeout_at(stop_at, client.publish(topic, qos, body)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => break,
        }
    }
    // The whole window back means every publish was acknowledged.
    let all = u32::from(plan.inflight);
    let _ = timeout(plan.drain, window.acquire_many(all)).await;
    client.try_disconnect();
    match timeout(CLOSE_TIMEOUT, events).await {
        Ok(Ok(Ok(()))) | Err(_) => Ok(()),
        Ok(Ok(Err(reason))) => Err(BenchError::protocol(
            MQTT,
            format!("publisher {}: {reason}", plan.index),
        )),
        Ok(Err(join)) => Err(BenchError::Internal(join.to_string())),
    }
}

/// Connects consumer `index`, subscribes to `filter` and waits for the
/// SUBACK; then hands every message to `collector` in a task that runs until
/// `cancel` and returns its outcome.
pub async fn consume(
    s: &MqttSettings,
    filter: &str,
    index: u32,
    collector: Arc<Collector>,
    cancel: CancellationToken,
) -> Result<JoinHandle<Result<(), BenchError>>, BenchError> {
    let (client, mut session) = connect(s, s.client_id("s", index)).await?;
    let consumer = ConsumerIx(index);
    // Deliveries below the subscribed QoS are counted: a broker may grant
    // less, or deliver at the publisher's lower QoS (min of the two).
    let wanted = s.qos;
    // The extra filters first, one SUBSCRIBE each, from a task: the
    // client's request queue is bounded, and SUBACKs are read below.
    let extra = s.consumer_filters;
    let _subscriber = {
        let (client, qos, filter) = (client.clone(), s.qos, filter.to_string());
        let first = filter.split('/').next().unwrap_or_default().to_string();
        let run = s.run_id;
        tokio::spawn(async move {
            for n in 0..extra {
                client
                    .subscribe(&format!("{first}/c{run:08x}-{index}/{n}"), qos)
                    .await?;
            }
            client.subscribe(&filter, qos).await
        })
    };
    let mut owed = extra + 1;
    let suback = async {
        loop {
            match session.poll().await {
                Ok(Event::SubAck(Ok(()))) => {
                    owed -= 1;
                    if owed == 0 {
                        return Ok(());
                    }
                }
                Ok(Event::SubAck(Err(codes))) => {
                    return Err(BenchError::protocol(
                        MQTT,
                        format!("SUBSCRIBE {filter} refused: {codes}"),
                    ));
                }
                Ok(Event::Message(body, qos)) => {
                    collector.on_mqtt_message(consumer, &body, qos, wanted)
                }
                Ok(_) => {}
                Err(reason) => return Err(BenchError::protocol(MQTT, reason)),
            }
        }
    };
    timeout(CONNECT_TIMEOUT, suback)
        .await
        .map_err(|_| BenchError::Timeout(format!("MQTT SUBACK for {filter}")))??;
    Ok(tokio::spawn(hold(
        client,
        session,
        cancel,
        move |body, qos| collector.on_mqtt_message(consumer, &body, qos, wanted),
    )))
}

/// Opens idle connection `index` and keeps it alive (keep-alive pings) in a
/// task until `cancel`.
pub async fn idle(
    s: &MqttSettings,
    index: u32,
    cancel: CancellationToken,
) -> Result<JoinHandle<Result<(), BenchError>>, BenchError> {
    let (client, session) = connect(s, s.client_id("i", index)).await?;
    Ok(tokio::spawn(hold(client, session, cancel, |_, _| {})))
}

/// Polls `session` until `cancel`, passing messages (payload, QoS) to
/// `on_message`; then sends DISCONNECT and waits briefly for it to go out.
async fn hold(
    client: Client,
    mut session: Session,
    cancel: CancellationToken,
    mut on_message: impl FnMut(Bytes, u8),
) -> Result<(), BenchError> {
    let result = loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break Ok(()),
            event = session.poll() => match event {
                Ok(Event::Message(body, qos)) => on_message(body, qos),
                Ok(_) => {}
                Err(reason) => break Err(BenchError::protocol(MQTT, reason)),
            },
        }
    };
    if result.is_ok() {
        disconnect(&client, &mut session).await;
    }
    result
}

/// Sends DISCONNECT and waits briefly for it to go out.
async fn disconnect(client: &Client, session: &mut Session) {
    client.try_disconnect();
    let _ = timeout(CLOSE_TIMEOUT, async {
        while let Ok(event) = session.poll().await {
            if matches!(event, Event::Disconnected) {
                break;
            }
        }
    })
    .await;
}

/// Subscribe storm, one client: connects, then subscribes `filters`
/// distinct wildcard filters (`storm/<run>/<index>/<n>/+/t`, one per
/// SUBSCRIBE) with at most `window` SUBSCRIBEs awaiting their SUBACK, until
/// all are granted or `stop_at`. Returns how many were granted.
pub async fn subscribe_storm(
    s: &MqttSettings,
    index: u32,
    filters: u64,
    window: u16,
    stop_at: tokio::time::Instant,
) -> Result<u64, BenchError> {
    let run = s.run_id;
    let name = move |n: u64| format!("storm/{run:08x}/{index}/{n}/+/t");
    let (client, mut session, result) =
        subscribe_many(s, "f", index, filters, name, window, stop_at).await?;
    disconnect(&client, &mut session).await;
    result
}

/// Background subscriptions, one client: connects and subscribes
/// `filters` wildcard filters under `first` (the published topic's first
/// level), `first/+/b<run>-<index>/<n>`: each walks the same tree as the
/// published topic and matches none of its messages. Held until `cancel`;
/// returns the holding task and how many were granted.
pub async fn background(
    s: &MqttSettings,
    first: &str,
    index: u32,
    filters: u64,
    window: u16,
    stop_at: tokio::time::Instant,
    cancel: CancellationToken,
) -> Result<(JoinHandle<Result<(), BenchError>>, u64), BenchError> {
    let (run, first) = (s.run_id, first.to_string());
    let name = move |n: u64| format!("{first}/+/b{run:08x}-{index}/{n}");
    let (client, session, result) =
        subscribe_many(s, "b", index, filters, name, window, stop_at).await?;
    let granted = result?;
    Ok((
        tokio::spawn(hold(client, session, cancel, |_, _| {})),
        granted,
    ))
}

/// Connects client `index` of `role` and subscribes the `filters` filters
/// `name(0..filters)`, one per SUBSCRIBE, at most `window` awaiting their
/// SUBACK, until all are answered or `stop_at`. Returns the connection
/// and how many were granted (or how the session failed).
async fn subscribe_many(
    s: &MqttSettings,
    role: &str,
    index: u32,
    filters: u64,
    name: impl Fn(u64) -> String + Send + 'static,
    window: u16,
    stop_at: tokio::time::Instant,
) -> Result<(Client, Session, Result<u64, BenchError>), BenchError> {
    let (client, mut session) = connect(s, s.client_id(role, index)).await?;
    let window = Arc::new(Semaphore::new(usize::from(window.max(1))));
    let issuer = {
        let (client, window, qos) = (client.clone(), Arc::clone(&window), s.qos);
        tokio::spawn(async move {
            for n in 0..filters {
                let Ok(permit) = window.acquire().await else {
                    return;
                };
                permit.forget();
                if client.subscribe(&name(n), qos).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut granted = 0u64;
    let mut refused = 0u64;
    let mut first_refusal = None;
    let result = loop {
        if granted + refused >= filters {
            break Ok(());
        }
        match timeout_at(stop_at, session.poll()).await {
            Err(_) => break Ok(()),
            Ok(Ok(Event::SubAck(Ok(())))) => {
                granted += 1;
                window.add_permits(1);
            }
            Ok(Ok(Event::SubAck(Err(codes)))) => {
                refused += 1;
                first_refusal.get_or_insert(codes);
                window.add_permits(1);
            }
            Ok(Ok(_)) => {}
            Ok(Err(reason)) => break Err(BenchError::protocol(MQTT, reason)),
        }
    };
    issuer.abort();
    if let Some(codes) = first_refusal {
        tracing::warn!(index, refused, codes, "SUBSCRIBEs were refused");
    }
    Ok((client, session, result.map(|()| granted)))
}

/// Connection storm, one client: connects with a clean session as client
/// `index` and keeps the connection alive in a task until `cancel`.
pub async fn storm_connect(
    s: &MqttSettings,
    index: u32,
    cancel: CancellationToken,
) -> Result<JoinHandle<Result<(), BenchError>>, BenchError> {
    let (client, session, _) = connect_as(s, s.storm_client_id("c", index), true).await?;
    Ok(tokio::spawn(hold(client, session, cancel, |_, _| {})))
}

/// Reconnect storm set-up, one client: connects as client `index` with a
/// persistent session (v5: session expiry 3,600 s), subscribes `filter`
/// at the run's QoS, waits for the SUBACK and disconnects, leaving the
/// session behind. Returns the CONNACK's session present flag (false
/// unless something of this client id was left over).
pub async fn open_session(s: &MqttSettings, index: u32, filter: &str) -> Result<bool, BenchError> {
    let (client, mut session, present) =
        connect_as(s, s.storm_client_id("r", index), false).await?;
    client
        .subscribe(filter, s.qos)
        .await
        .map_err(|e| BenchError::protocol(MQTT, e))?;
    let suback = async {
        loop {
            match session.poll().await {
                Ok(Event::SubAck(Ok(()))) => return Ok(()),
                Ok(Event::SubAck(Err(codes))) => {
                    return Err(BenchError::protocol(
                        MQTT,
                        format!("SUBSCRIBE {filter} refused: {codes}"),
                    ));
                }
                Ok(_) => {}
                Err(reason) => return Err(BenchError::protocol(MQTT, reason)),
            }
        }
    };
    let subscribed = timeout(CONNECT_TIMEOUT, suback)
        .await
        .map_err(|_| BenchError::Timeout(format!("MQTT SUBACK for {filter}")))
        .and_then(|r| r);
    disconnect(&client, &mut session).await;
    subscribed.map(|()| present)
}

/// Reconnect storm, one client: reconnects as client `index` to its
/// persistent session and keeps the connection alive in a task until
/// `cancel`. Returns the task and the CONNACK's session present flag.
pub async fn resume_session(
    s: &MqttSettings,
    index: u32,
    cancel: CancellationToken,
) -> Result<(JoinHandle<Result<(), BenchError>>, bool), BenchError> {
    let (client, session, present) = connect_as(s, s.storm_client_id("r", index), false).await?;
    Ok((
        tokio::spawn(hold(client, session, cancel, |_, _| {})),
        present,
    ))
}

/// Reconnect storm clean-up, one client: connects as client `index` with a
/// clean session, which discards the persistent one [MQTT-3.1.2-6] (v5:
/// clean start, and no expiry for the new session), and disconnects.
pub async fn end_session(s: &MqttSettings, index: u32) -> Result<(), BenchError> {
    let (client, mut session, _) = connect_as(s, s.storm_client_id("r", index), true).await?;
    disconnect(&client, &mut session).await;
    Ok(())
}
