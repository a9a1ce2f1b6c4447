//! The TLS listeners end to end with the Rust clients, against the real
//! `junction` binary and certificates made with the `openssl` command as
//! docs/security.md tells an operator to (the same commands as
//! tests/python/tls_support.py):
//!
//! - lapin over `amqps` with PLAIN (guest/guest): a byte-exact publish and
//!   consume; under `--tls-verify required` a client showing the test CA's
//!   certificate is served and one showing none is refused in the handshake;
//! - lapin over `amqps` with the EXTERNAL mechanism: the user is the client
//!   certificate's subject Common Name (`[tls] login_name = "common_name"`,
//!   the default), which must be in the users file; a certificate whose CN
//!   is nobody known is refused with 403 ACCESS_REFUSED;
//! - rumqttc, its MQTT 3.1.1 and MQTT 5 clients, over `mqtts` without and
//!   with a client certificate (`--tls-verify optional`): QoS 1 publish and
//!   delivery.
//!
//! The clients' TLS is rustls with the ring provider only (see the root
//! Cargo.toml's dev-dependencies): aws-lc is never built.

use std::fs::File;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use junction_testsupport::{ANY_PORTS, BrokerProcess, temp_dir, wait_exit};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, ErrorKind};
use rumqttc::v5;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const JUNCTION: &str = env!("CARGO_BIN_EXE_junction");

/// Bound on any one step: a TLS connect and login (argon2), a method round
/// trip, a delivery.
const STEP: Duration = Duration::from_secs(30);

/// Bound on one `openssl` or `junction user add` run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The subject CN of the client certificate that stands for a known user.
const CERT_USER: &str = "tls-user";

/// The subject CN of a client certificate (from the same CA) that is no
/// user of the broker.
const UNKNOWN_CN: &str = "nobody-known";

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no outcome within {STEP:?}"))
}

// ---------------------------------------------------------------------------
// Certificates, made with the `openssl` command

/// Runs `openssl args` in `dir` (bounded); its stderr goes to a log file
/// there, shown if it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let log_path = dir.join("openssl.log");
    let log = File::create(&log_path).expect("create openssl.log");
    let mut child = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("run openssl (is the openssl command installed?)");
    let status = wait_exit(&mut child, COMMAND_TIMEOUT);
    if !status.success() {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        panic!("openssl {args:?}: {status}\n{log}");
    }
}

const SERVER_EXT: &str = "basicConstraints=CA:FALSE\n\
    keyUsage=critical,digitalSignature\n\
    extendedKeyUsage=serverAuth\n\
    subjectAltName=DNS:localhost,IP:127.0.0.1\n";

const CLIENT_EXT: &str = "basicConstraints=CA:FALSE\n\
    keyUsage=critical,digitalSignature\n\
    extendedKeyUsage=clientAuth\n";

/// A test CA (`ca.pem`, `ca.key`) and, signed by it, `server.pem`/`.key`
/// (for `localhost` and 127.0.0.1), `client.pem`/`.key` (CN
/// [`CERT_USER`]) and `stranger.pem`/`.key` (CN [`UNKNOWN_CN`]), in a
/// temporary directory.
struct Certs {
    dir: TempDir,
}

impl Certs {
    fn generate() -> Certs {
        let dir = temp_dir();
        let d = dir.path();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=Junction test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Self::leaf(d, "server", "junction", SERVER_EXT);
        Self::leaf(d, "client", CERT_USER, CLIENT_EXT);
        Self::leaf(d, "stranger", UNKNOWN_CN, CLIENT_EXT);
        Certs { dir }
    }

    /// `name`.key and `name`.pem, signed by the CA; `ext` is the
    /// extensions file's body.
    fn leaf(d: &Path, name: &str, cn: &str, ext: &str) {
        let (key, csr, pem, extfile) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        std::fs::write(d.join(&extfile), ext).expect("write extensions file");
        let subj = format!("/CN={cn}");
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &subj,
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &extfile,
                "-out",
                &pem,
            ],
        );
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.path(file)).unwrap_or_else(|e| panic!("read {file}: {e}"))
    }
}

/// Which client certificate a client shows, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Identity {
    None,
    /// `client.pem`: CN [`CERT_USER`].
    User,
    /// `stranger.pem`: CN [`UNKNOWN_CN`].
    Stranger,
}

impl Identity {
    /// The certificate and key files.
    fn files(self) -> Option<(&'static str, &'static str)> {
        match self {
            Identity::None => None,
            Identity::User => Some(("client.pem", "client.key")),
            Identity::Stranger => Some(("stranger.pem", "stranger.key")),
        }
    }
}

// ---------------------------------------------------------------------------
// The broker process

/// A `junction` process with its TLS listeners on OS-picked ports, on a
/// temporary data directory whose users file has [`CERT_USER`] (besides
/// the built-in guest), and the certificates it was started with.
struct TlsBroker {
    /// First, so the process is killed before its directories go.
    process: BrokerProcess,
    certs: Certs,
    _data: TempDir,
}

impl TlsBroker {
    /// Starts a broker with `--tls-verify verify` ("none", "optional",
    /// "required").
    async fn start(verify: &str) -> TlsBroker {
        tokio::task::block_in_place(|| {
            let certs = Certs::generate();
            let data = temp_dir();
            let data_dir = data.path().to_str().expect("utf-8 path").to_string();
            // The certificate's user. Its password is never checked by
            // EXTERNAL; set one so the user can exist.
            let mut add = Command::new(JUNCTION)
                .args(["user", "add", CERT_USER, "--password", "not-used"])
                .args(["--data-dir", &data_dir])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .expect("run junction user add");
            let status = wait_exit(&mut add, COMMAND_TIMEOUT);
            assert!(status.success(), "junction user add {CERT_USER}: {status}");

            let file = |f: &str| certs.path(f).to_str().expect("utf-8 path").to_string();
            let mut args: Vec<String> = vec!["--data-dir".into(), data_dir];
            args.extend(ANY_PORTS.iter().map(|a| a.to_string()));
            for (flag, value) in [
                ("--tls-cert", file("server.pem")),
                ("--tls-key", file("server.key")),
                ("--tls-ca", file("ca.pem")),
                ("--tls-verify", verify.to_string()),
                ("--amqps-port", "0".into()),
                ("--mqtts-port", "0".into()),
                ("--stomps-port", "0".into()),
                ("--https-port", "0".into()),
                ("--mqtt-wss-port", "0".into()),
                ("--stomp-wss-port", "0".into()),
            ] {
                args.push(flag.into());
                args.push(value);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let process = BrokerProcess::start(Path::new(JUNCTION), &args, data.path());
            for listener in ["amqps", "mqtts", "stomps"] {
                assert!(
                    process.listeners.contains_key(listener),
                    "ready line names {listener}: {:?}",
                    process.listeners
                );
            }
            TlsBroker {
                process,
                certs,
                _data: data,
            }
        })
    }

    fn addr(&self, listener: &str) -> SocketAddr {
        self.process.addr(listener)
    }
}

// ---------------------------------------------------------------------------
// lapin over amqps

#[derive(Clone, Copy, Debug)]
enum Mechanism {
    /// PLAIN as guest/guest.
    PlainGuest,
    /// EXTERNAL: the user is the client certificate's CN.
    External,
}

/// An `amqps` connection trusting the test CA and showing `identity`.
/// The host is 127.0.0.1, which the server certificate names.
async fn amqps(
    broker: &TlsBroker,
    mechanism: Mechanism,
    identity: Identity,
) -> lapin::Result<Connection> {
    let addr = broker.addr("amqps");
    let uri = match mechanism {
        Mechanism::PlainGuest => format!("amqps://guest:guest@{addr}/%2f"),
        Mechanism::External => format!("amqps://{addr}/%2f?auth_mechanism=external"),
    };
    let config = OwnedTLSConfig {
        identity: identity.files().map(|(pem, key)| OwnedIdentity::PKCS8 {
            pem: broker.certs.read(pem),
            key: broker.certs.read(key),
        }),
        cert_chain: Some(
            String::from_utf8(broker.certs.read("ca.pem")).expect("ca.pem is PEM text"),
        ),
    };
    let runtime = lapin::runtime::default_runtime().expect("lapin's tokio runtime");
    within(
        &format!("amqps connect ({mechanism:?}, {identity:?})"),
        Connection::connect_with_config(&uri, ConnectionProperties::default(), config, runtime),
    )
    .await
}

/// A body that any mangling shows: every byte value (NUL, 0xFF, invalid
/// UTF-8) and then a pattern long enough for several TLS records and two
/// AMQP body frames (frame_max 131072).
fn tricky_body() -> Vec<u8> {
    let mut body: Vec<u8> = (0..=255u8).collect();
    body.extend((0..200_000usize).map(|i| (i * 31 % 251) as u8));
    body
}

/// Publishes `body` with `props` to a new queue `queue` (confirmed with
/// ack), consumes it and returns the delivery (acked), whose body must be
/// `body` byte for byte.
async fn round_trip(
    conn: &Connection,
    queue: &str,
    body: &[u8],
    props: BasicProperties,
) -> Delivery {
    let ch = within("channel.open", conn.create_channel())
        .await
        .expect("channel.open");
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    within(
        "queue.declare",
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.declare");
    let mut consumer = within(
        "basic.consume",
        ch.basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("basic.consume");
    let confirm = within(
        "basic.publish",
        ch.basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            props,
        ),
    )
    .await
    .expect("basic.publish");
    let confirmation = within("publisher confirm", confirm)
        .await
        .expect("publisher confirm");
    assert_eq!(confirmation, Confirmation::Ack(None), "publish to {queue}");
    let d = within("delivery", consumer.next())
        .await
        .expect("consumer ended before the delivery")
        .expect("delivery");
    assert_eq!(d.data.len(), body.len(), "body length via {queue}");
    assert!(d.data == body, "body via {queue} differs");
    assert_eq!(d.routing_key.as_str(), queue);
    within("basic.ack", d.ack(BasicAckOptions::default()))
        .await
        .expect("basic.ack");
    // Closed here, not left to its drop: a channel still closing in the
    // background would race the test's connection.close.
    within("channel.close", ch.close(200, "done".into()))
        .await
        .expect("channel.close");
    d
}

async fn close(conn: Connection) {
    within("connection.close", conn.close(200, "done".into()))
        .await
        .expect("connection.close");
}

/// The reply code of an AMQP error the broker sent (connection.close).
fn amqp_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        ErrorKind::ProtocolError(p) => Some(p.get_id()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_plain_over_amqps_publishes_and_consumes_byte_exactly() {
    let broker = TlsBroker::start("none").await;
    let conn = amqps(&broker, Mechanism::PlainGuest, Identity::None)
        .await
        .expect("amqps as guest");
    let body = tricky_body();
    round_trip(&conn, "over-tls", &body, BasicProperties::default()).await;
    close(conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_with_verify_required_needs_the_client_certificate() {
    let broker = TlsBroker::start("required").await;
    // With the test CA's client certificate: served (PLAIN login).
    let conn = amqps(&broker, Mechanism::PlainGuest, Identity::User)
        .await
        .expect("amqps with the client certificate");
    round_trip(
        &conn,
        "with-cert",
        b"\x00certified\xff",
        BasicProperties::default(),
    )
    .await;

    // Without one: refused in the TLS handshake (under TLS 1.3 the client
    // learns it on its first read), never an AMQP answer.
    match amqps(&broker, Mechanism::PlainGuest, Identity::None).await {
        Ok(_) => panic!("a client without a certificate was served under verify=required"),
        Err(e) => assert_eq!(
            amqp_code(&e),
            None,
            "refused in the handshake, not by AMQP: {e}"
        ),
    }

    // The first connection, and new ones with the certificate, go on.
    round_trip(&conn, "still-served", b"after", BasicProperties::default()).await;
    close(conn).await;
    let again = amqps(&broker, Mechanism::PlainGuest, Identity::User)
        .await
        .expect("amqps with the client certificate, again");
    close(again).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_external_login_is_the_certificate_common_name() {
    let broker = TlsBroker::start("optional").await;
    let conn = amqps(&broker, Mechanism::External, Identity::User)
        .await
        .unwrap_or_else(|e| panic!("EXTERNAL with CN {CERT_USER}: {e}"));
    // The broker refuses a user_id other than the connection's user
    // (406), so an acked publish carrying it shows who logged in.
    let props = BasicProperties::default().with_user_id(CERT_USER.into());
    let body = tricky_body();
    let d = round_trip(&conn, "external", &body, props).await;
    assert_eq!(
        d.properties.user_id().as_ref().map(|u| u.as_str()),
        Some(CERT_USER)
    );
    close(conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_external_login_with_an_unknown_common_name_is_refused_with_403() {
    let broker = TlsBroker::start("optional").await;
    // The same broker takes EXTERNAL from a known CN, so the refusal below
    // is about the user, not the mechanism.
    let known = amqps(&broker, Mechanism::External, Identity::User)
        .await
        .unwrap_or_else(|e| panic!("EXTERNAL with CN {CERT_USER}: {e}"));
    close(known).await;

    match amqps(&broker, Mechanism::External, Identity::Stranger).await {
        Ok(_) => panic!("EXTERNAL with CN {UNKNOWN_CN} (no such user) was accepted"),
        Err(e) => assert_eq!(amqp_code(&e), Some(403), "ACCESS_REFUSED: {e}"),
    }
}

// ---------------------------------------------------------------------------
// rumqttc over mqtts

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    V3,
    V5,
}

/// A rustls client configuration trusting the test CA and showing
/// `identity`, for rumqttc.
fn mqtt_tls(certs: &Certs, identity: Identity) -> rumqttc::TlsConfiguration {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(certs.path("ca.pem")).expect("open ca.pem") {
        roots.add(cert.expect("ca.pem")).expect("add the CA");
    }
    // ring, as the broker itself uses (crates/server/src/tls.rs): aws-lc
    // is never built here. rustls 0.23.48 marks ring's provider deprecated
    // only because ring has no post-quantum key exchange.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
    let config = match identity.files() {
        None => builder.with_no_client_auth(),
        Some((pem, key)) => {
            let chain = CertificateDer::pem_file_iter(certs.path(pem))
                .expect("open client certificate")
                .collect::<Result<Vec<_>, _>>()
                .expect("client certificate");
            let key = PrivateKeyDer::from_pem_file(certs.path(key)).expect("client key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client certificate and key")
        }
    };
    rumqttc::TlsConfiguration::Rustls(Arc::new(config))
}

/// What the tests look at, the same for both versions.
#[derive(Debug)]
enum Ev {
    /// The CONNACK's return/reason code, by rumqttc's name.
    ConnAck(String),
    /// Granted QoS per filter, or the refusal's name.
    SubAck(Vec<Result<u8, String>>),
    /// The PUBACK's reason by rumqttc's name ("Success" for 3.1.1).
    PubAck(String),
    Publish {
        topic: String,
        payload: Vec<u8>,
        qos: u8,
    },
    Other,
}

enum Handle {
    V3(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

/// A connected client; its event loop runs in a task until its first
/// error (so rumqttc never reconnects behind the test's back).
struct MqttClient {
    name: String,
    handle: Handle,
    events: mpsc::UnboundedReceiver<Result<Ev, String>>,
    driver: JoinHandle<()>,
}

impl Drop for MqttClient {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

fn v3_event(ev: rumqttc::Event) -> Ev {
    use rumqttc::{Event, Packet, SubscribeReasonCode};
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
        Event::Incoming(Packet::PubAck(_)) => Ev::PubAck("Success".into()),
        Event::Incoming(Packet::Publish(p)) => Ev::Publish {
            topic: p.topic,
            payload: p.payload.to_vec(),
            qos: p.qos as u8,
        },
        _ => Ev::Other,
    }
}

fn v5_event(ev: v5::Event) -> Ev {
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
        Event::Incoming(Incoming::PubAck(a)) => Ev::PubAck(format!("{:?}", a.reason)),
        Event::Incoming(Incoming::Publish(p)) => Ev::Publish {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload.to_vec(),
            qos: p.qos as u8,
        },
        _ => Ev::Other,
    }
}

/// Connects `id` over `mqtts` showing `identity`, and waits for a
/// successful CONNACK.
async fn mqtts(broker: &TlsBroker, version: Version, id: &str, identity: Identity) -> MqttClient {
    let addr = broker.addr("mqtts");
    let host = addr.ip().to_string();
    let transport = rumqttc::Transport::tls_with_config(mqtt_tls(&broker.certs, identity));
    let (tx, events) = mpsc::unbounded_channel();
    let (handle, driver) = match version {
        Version::V3 => {
            let mut o = rumqttc::MqttOptions::new(id, host, addr.port());
            o.set_transport(transport);
            let (client, mut el) = rumqttc::AsyncClient::new(o, 16);
            let driver = tokio::spawn(async move {
                loop {
                    let ev = el.poll().await.map(v3_event).map_err(|e| e.to_string());
                    let end = ev.is_err();
                    if tx.send(ev).is_err() || end {
                        return;
                    }
                }
            });
            (Handle::V3(client), driver)
        }
        Version::V5 => {
            let mut o = v5::MqttOptions::new(id, host, addr.port());
            o.set_transport(transport);
            let (client, mut el) = v5::AsyncClient::new(o, 16);
            let driver = tokio::spawn(async move {
                loop {
                    let ev = el.poll().await.map(v5_event).map_err(|e| e.to_string());
                    let end = ev.is_err();
                    if tx.send(ev).is_err() || end {
                        return;
                    }
                }
            });
            (Handle::V5(client), driver)
        }
    };
    let mut c = MqttClient {
        name: format!("{id} ({version:?}, {identity:?})"),
        handle,
        events,
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

impl MqttClient {
    /// The first event `want` picks (others are passed over).
    async fn wait_for<T>(&mut self, what: &str, mut want: impl FnMut(&Ev) -> Option<T>) -> T {
        let what = format!("{}: {what}", self.name);
        let events = &mut self.events;
        within(&what, async {
            loop {
                match events.recv().await {
                    Some(Ok(e)) => {
                        if let Some(t) = want(&e) {
                            return t;
                        }
                    }
                    Some(Err(e)) => panic!("{what}: connection closed: {e}"),
                    None => panic!("{what}: connection already closed"),
                }
            }
        })
        .await
    }

    async fn subscribe_qos1(&mut self, filter: &str) {
        let sent = match &self.handle {
            Handle::V3(c) => c
                .subscribe(filter, rumqttc::QoS::AtLeastOnce)
                .await
                .map_err(|e| e.to_string()),
            Handle::V5(c) => c
                .subscribe(filter, v5::mqttbytes::QoS::AtLeastOnce)
                .await
                .map_err(|e| e.to_string()),
        };
        sent.unwrap_or_else(|e| panic!("{}: subscribe: {e}", self.name));
        let granted = self
            .wait_for("SUBACK", |e| match e {
                Ev::SubAck(codes) => Some(codes.clone()),
                _ => None,
            })
            .await;
        assert_eq!(granted, vec![Ok(1)], "{}: SUBACK for {filter}", self.name);
    }

    /// Publishes at QoS 1 and waits for the PUBACK.
    async fn publish_qos1(&mut self, topic: &str, payload: &[u8]) {
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
        sent.unwrap_or_else(|e| panic!("{}: publish: {e}", self.name));
        let reason = self
            .wait_for("PUBACK", |e| match e {
                Ev::PubAck(reason) => Some(reason.clone()),
                _ => None,
            })
            .await;
        assert_eq!(reason, "Success", "{}: PUBACK of {topic}", self.name);
    }

    /// The next PUBLISH delivered: (topic, payload, QoS).
    async fn next_message(&mut self) -> (String, Vec<u8>, u8) {
        self.wait_for("PUBLISH", |e| match e {
            Ev::Publish {
                topic,
                payload,
                qos,
            } => Some((topic.clone(), payload.clone(), *qos)),
            _ => None,
        })
        .await
    }
}

/// Over `mqtts` (verify optional), a subscriber and a publisher both showing
/// `identity`: a QoS 1 publish is acked and delivered at QoS 1, byte exact.
async fn mqtts_qos1_round_trip(version: Version, identity: Identity) {
    let broker = TlsBroker::start("optional").await;
    let tag = format!("{version:?}-{identity:?}").to_lowercase();
    let topic = format!("tls/{tag}/temp");
    let mut sub = mqtts(&broker, version, &format!("sub-{tag}"), identity).await;
    sub.subscribe_qos1(&topic).await;
    let mut publisher = mqtts(&broker, version, &format!("pub-{tag}"), identity).await;
    let payload = b"\x00secure \xff\xfe 21.5";
    publisher.publish_qos1(&topic, payload).await;
    let (got_topic, got_payload, qos) = sub.next_message().await;
    assert_eq!(got_topic, topic);
    assert_eq!(got_payload, payload.to_vec());
    assert_eq!(qos, 1, "delivered at QoS 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_v3_over_mqtts_without_a_client_certificate() {
    mqtts_qos1_round_trip(Version::V3, Identity::None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_v3_over_mqtts_with_a_client_certificate() {
    mqtts_qos1_round_trip(Version::V3, Identity::User).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_v5_over_mqtts_without_a_client_certificate() {
    mqtts_qos1_round_trip(Version::V5, Identity::None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_v5_over_mqtts_with_a_client_certificate() {
    mqtts_qos1_round_trip(Version::V5, Identity::User).await;
}
