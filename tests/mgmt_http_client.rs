//! The management HTTP API (docs/management.md) end to end with
//! `rabbitmq_http_client`, RabbitMQ's own Rust client of it (its blocking
//! API, no TLS), against the real `junction` binary. Every call goes
//! through the client's typed requests and typed answers, so a field our
//! JSON lacks or misnames fails here as it would for the tools built on it:
//!
//! - `whoami`, the vhosts and the overview as the built-in `guest`
//!   (an administrator);
//! - a queue with `x-max-length`, a topic exchange, a binding, a publish
//!   through the API (`routed`), a get (`ack_requeue_false`) with the exact
//!   payload back, the message counts, a purge and a delete (then 404);
//! - a user created with a password hash and the `management` tag, its
//!   permissions on "/", then lapin logged in as that user: a queue the
//!   configure pattern allows is declared, one outside it is refused with
//!   403 ACCESS_REFUSED; the connection in `GET /api/connections`;
//! - definitions exported, the queue and exchange deleted, the export
//!   imported back: queue, exchange and binding are there again;
//! - a vhost made with a description and tags, permissions on it, a
//!   queue in it, the vhost
//!   deleted with its queue (then 404, and the idempotent delete passes);
//!   the configured "/" cannot be deleted.
//!
//! The blocking client runs its own runtime on a thread of its own, so the
//! tests are plain `#[test]` functions; lapin runs on a tokio runtime the
//! test builds, and the HTTP calls are made outside it. Every HTTP call is
//! bounded by the client's timeouts, every AMQP step by [`STEP`].

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use junction_testsupport::{BrokerProcess, temp_dir};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ErrorKind};
use rabbitmq_http_client::blocking_api::{Client, ClientBuilder, HttpClientError};
use rabbitmq_http_client::commons::BindingDestinationType;
use rabbitmq_http_client::requests::{
    ExchangeParams, Permissions, QueueParams, UserParams, VirtualHostParams,
};
use rabbitmq_http_client::responses::{self, BindingInfo, ExchangeInfo, XArguments};
use serde_json::{Map, Value, json};
use tempfile::TempDir;

const JUNCTION: &str = env!("CARGO_BIN_EXE_junction");

/// Bound on any one AMQP step: a login (argon2), a method round trip.
const STEP: Duration = Duration::from_secs(30);

/// The HTTP client's bounds: connecting, and a whole request.
const HTTP_CONNECT: Duration = Duration::from_secs(5);
const HTTP_REQUEST: Duration = Duration::from_secs(30);

/// The user `users_and_permissions` creates.
const CAROL: &str = "carol";
const CAROL_PW: &str = "carol-pw";
/// argon2id (m=19456, t=2, p=1: the broker's own parameters) of
/// [`CAROL_PW`], salt `mgmt-http-client`: the hash kind the users file
/// keeps (docs/management.md, `PUT /api/users/{name}`).
const CAROL_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$bWdtdC1odHRwLWNsaWVudA$QCg5gGQv12Iv5gUW2Po9IAPDF8lnkI21R9gtIoNZMdo";

type Api = Client<String, String, String>;

/// A `junction` process on a temporary data directory, every port picked
/// by the OS.
struct Broker {
    /// First, so the process is killed before its directory goes.
    process: BrokerProcess,
    _dir: TempDir,
}

impl Broker {
    fn start() -> Broker {
        let dir = temp_dir();
        let process = BrokerProcess::start_on(Path::new(JUNCTION), dir.path());
        Broker { process, _dir: dir }
    }

    /// A client of the management API as `user`.
    fn api(&self, user: &str, password: &str) -> Api {
        ClientBuilder::new()
            .with_endpoint(format!("http://{}/api", self.process.addr("admin")))
            .with_basic_auth_credentials(user.to_owned(), password.to_owned())
            .with_connect_timeout(HTTP_CONNECT)
            .with_request_timeout(HTTP_REQUEST)
            .build()
            .expect("build the HTTP API client")
    }

    fn amqp(&self) -> SocketAddr {
        self.process.addr("amqp")
    }
}

/// The HTTP status of an API error.
fn status(e: &HttpClientError) -> Option<u16> {
    e.status_code().map(|s| s.as_u16())
}

/// The `error` and `reason` of an API error's body.
fn details(e: &HttpClientError) -> (Option<String>, Option<String>) {
    e.error_details()
        .map_or((None, None), |d| (d.error.clone(), d.reason.clone()))
}

fn no_arguments() -> XArguments {
    XArguments(Map::new())
}

// ---------------------------------------------------------------------------
// AMQP (lapin)

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no outcome within {STEP:?}"))
}

/// A runtime for lapin; the blocking HTTP client must not run on it.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

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

/// The reply code and text of a channel or connection error from the
/// broker.
fn amqp_error(e: &lapin::Error) -> (u16, String) {
    match e.kind() {
        ErrorKind::ProtocolError(p) => (p.get_id(), p.get_message().as_str().to_string()),
        other => panic!("expected an AMQP error from the broker, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// The tests

#[test]
fn overview_whoami_and_vhosts() {
    let broker = Broker::start();
    let api = broker.api("guest", "guest");

    let me = api.current_user().expect("GET /api/whoami");
    assert_eq!(me.name, "guest");
    assert_eq!(me.tags.0, vec!["administrator".to_owned()]);
    assert!(me.tags.is_administrator());

    let vhosts = api.list_vhosts().expect("GET /api/vhosts");
    assert!(
        vhosts.iter().any(|v| v.name == "/"),
        "\"/\" among {:?}",
        vhosts.iter().map(|v| &v.name).collect::<Vec<_>>()
    );
    let root = api.get_vhost("/").expect("GET /api/vhosts/%2F");
    assert_eq!(root.name, "/");
    assert_eq!(root.description.as_deref(), Some(""));
    assert_eq!(root.tags.map(|t| t.0), Some(Vec::new()));

    let overview = api.overview().expect("GET /api/overview");
    assert_eq!(overview.rabbitmq_version, "3.13.0");
    assert_eq!(overview.product_name, "Junction");
    assert_eq!(overview.product_version, env!("CARGO_PKG_VERSION"));
    assert!(
        overview.node.starts_with("junction@"),
        "node {:?}",
        overview.node
    );
    assert_eq!(overview.cluster_name, overview.node);
    assert_eq!(overview.object_totals.connections, 0);
    assert_eq!(overview.object_totals.consumers, 0);
    assert_eq!(overview.queue_totals.messages, 0);
    assert_eq!(overview.queue_totals.messages_ready_for_delivery, 0);
    let queues = api.list_queues().expect("GET /api/queues");
    let exchanges = api.list_exchanges().expect("GET /api/exchanges");
    assert_eq!(overview.object_totals.queues, queues.len() as u64);
    assert_eq!(overview.object_totals.exchanges, exchanges.len() as u64);
    for (name, kind) in [
        ("amq.direct", "direct"),
        ("amq.fanout", "fanout"),
        ("amq.topic", "topic"),
        ("amq.headers", "headers"),
    ] {
        let want = ExchangeInfo {
            name: name.to_owned(),
            vhost: "/".to_owned(),
            exchange_type: kind.to_owned(),
            durable: true,
            auto_delete: false,
            arguments: no_arguments(),
        };
        assert!(exchanges.contains(&want), "{want:?} in {exchanges:?}");
    }

    assert_eq!(api.server_version().expect("rabbitmq_version"), "3.13.0");
    assert!(
        api.list_connections()
            .expect("GET /api/connections")
            .is_empty()
    );
}

#[test]
fn queues_exchanges_bindings_publish_get_purge_delete() {
    const Q: &str = "mgmt.orders";
    const X: &str = "mgmt.events";
    const PAYLOAD: &str = "order #1: 3 × café, {\"json\": true}";
    let broker = Broker::start();
    let api = broker.api("guest", "guest");

    // A durable queue with a length limit.
    api.declare_queue(
        "/",
        &QueueParams::new_durable_classic_queue(Q, None).with_max_length(10),
    )
    .expect("PUT /api/queues/%2F/{Q}");
    let info = api.get_queue_info("/", Q).expect("GET the queue");
    assert_eq!(info.name, Q);
    assert_eq!(info.vhost, "/");
    assert_eq!(info.queue_type, "classic");
    assert!(info.durable);
    assert!(!info.auto_delete);
    assert!(!info.exclusive);
    assert_eq!(info.state, "running");
    assert_eq!(info.arguments.get("x-max-length"), Some(&json!(10)));
    assert_eq!(info.arguments.get("x-queue-type"), Some(&json!("classic")));
    assert_eq!(info.arguments.len(), 2, "{:?}", info.arguments);
    assert_eq!(info.message_count, 0);
    assert_eq!(info.consumer_count, 0);

    // A topic exchange.
    api.declare_exchange("/", &ExchangeParams::durable_topic(X, None))
        .expect("PUT /api/exchanges/%2F/{X}");
    let want_x = ExchangeInfo {
        name: X.to_owned(),
        vhost: "/".to_owned(),
        exchange_type: "topic".to_owned(),
        durable: true,
        auto_delete: false,
        arguments: no_arguments(),
    };
    assert_eq!(
        api.get_exchange_info("/", X).expect("GET the exchange"),
        want_x
    );
    assert!(
        api.list_exchanges()
            .expect("GET /api/exchanges")
            .contains(&want_x)
    );

    // The binding `a.*`.
    api.bind_queue("/", Q, X, Some("a.*"), None)
        .expect("POST /api/bindings/%2F/e/{X}/q/{Q}");
    let want_b = BindingInfo {
        vhost: "/".to_owned(),
        source: X.to_owned(),
        destination: Q.to_owned(),
        destination_type: BindingDestinationType::Queue,
        routing_key: "a.*".to_owned(),
        arguments: no_arguments(),
        properties_key: Some("a.*".to_owned()),
    };
    let bindings = api.list_bindings().expect("GET /api/bindings");
    assert!(bindings.contains(&want_b), "{want_b:?} in {bindings:?}");
    let of_queue = api
        .list_queue_bindings("/", Q)
        .expect("GET /api/queues/%2F/{Q}/bindings");
    assert_eq!(
        of_queue,
        vec![
            BindingInfo {
                vhost: "/".to_owned(),
                source: String::new(),
                destination: Q.to_owned(),
                destination_type: BindingDestinationType::Queue,
                routing_key: Q.to_owned(),
                arguments: no_arguments(),
                properties_key: Some(Q.to_owned()),
            },
            want_b.clone(),
        ]
    );

    // Publishes through the API: two that the binding routes, one it does
    // not.
    let mut props = Map::new();
    props.insert("content_type".into(), json!("text/plain"));
    props.insert("delivery_mode".into(), json!(2));
    props.insert("message_id".into(), json!("m-1"));
    let routed = api
        .publish_message("/", X, "a.b", PAYLOAD, props)
        .expect("publish a.b");
    assert_eq!(routed, responses::MessageRouted { routed: true });
    let routed = api
        .publish_message("/", X, "b.a", "to nobody", Map::new())
        .expect("publish b.a");
    assert_eq!(routed, responses::MessageRouted { routed: false });
    let routed = api
        .publish_message("/", X, "a.c", "second", Map::new())
        .expect("publish a.c");
    assert_eq!(routed, responses::MessageRouted { routed: true });

    // The queue holds the two, as the list shows.
    let queues = api.list_queues().expect("GET /api/queues");
    let listed = queues
        .iter()
        .find(|q| q.name == Q && q.vhost == "/")
        .unwrap_or_else(|| panic!("{Q} in {queues:?}"));
    assert_eq!(listed.message_count, 2);
    assert_eq!(listed.unacknowledged_message_count, 0);
    assert_eq!(listed.arguments.get("x-max-length"), Some(&json!(10)));

    // A get that takes the first.
    let got = api
        .get_messages("/", Q, 1, "ack_requeue_false")
        .expect("POST /api/queues/%2F/{Q}/get");
    assert_eq!(got.len(), 1, "{got:?}");
    let m = &got[0];
    assert_eq!(m.payload, PAYLOAD);
    assert_eq!(m.payload_encoding, "string");
    assert_eq!(m.payload_bytes as usize, PAYLOAD.len());
    assert_eq!(m.exchange, X);
    assert_eq!(m.routing_key, "a.b");
    assert!(!m.redelivered);
    assert_eq!(m.message_count, 1, "one left after the get");
    assert_eq!(
        m.properties.0.get("content_type"),
        Some(&json!("text/plain"))
    );
    assert_eq!(m.properties.0.get("delivery_mode"), Some(&json!(2)));
    assert_eq!(m.properties.0.get("message_id"), Some(&json!("m-1")));
    let info = api.get_queue_info("/", Q).expect("GET the queue");
    assert_eq!(info.message_count, 1);

    // Purge: empty, and a get finds nothing.
    api.purge_queue("/", Q)
        .expect("DELETE /api/queues/%2F/{Q}/contents");
    let info = api.get_queue_info("/", Q).expect("GET the queue");
    assert_eq!(info.message_count, 0);
    let got = api
        .get_messages("/", Q, 1, "ack_requeue_false")
        .expect("get from the purged queue");
    assert!(got.is_empty(), "{got:?}");

    // Delete: gone (404), its binding with it.
    api.delete_queue("/", Q, false)
        .expect("DELETE /api/queues/%2F/{Q}");
    let e = api
        .get_queue_info("/", Q)
        .expect_err("the deleted queue is not found");
    assert!(e.is_not_found(), "{e:?}");
    assert_eq!(status(&e), Some(404));
    assert!(
        !api.list_bindings()
            .expect("GET /api/bindings")
            .contains(&want_b)
    );
    // A second delete is 404, which the idempotent form accepts.
    let e = api
        .delete_queue("/", Q, false)
        .expect_err("deleting it again");
    assert!(e.is_not_found(), "{e:?}");
    api.delete_queue("/", Q, true)
        .expect("idempotent delete of a missing queue");

    api.delete_exchange("/", X, false)
        .expect("DELETE /api/exchanges/%2F/{X}");
    let e = api
        .get_exchange_info("/", X)
        .expect_err("the deleted exchange is not found");
    assert!(e.is_not_found(), "{e:?}");
}

#[test]
fn users_and_permissions() {
    let broker = Broker::start();
    let admin = broker.api("guest", "guest");

    // The user, with a hash and the management tag.
    admin
        .create_user(&UserParams::management(CAROL, CAROL_HASH))
        .expect("PUT /api/users/carol");
    let carol = admin.get_user(CAROL).expect("GET /api/users/carol");
    assert_eq!(carol.name, CAROL);
    assert_eq!(carol.tags.0, vec!["management".to_owned()]);
    assert_eq!(
        carol.password_hash.as_ref().map(|h| h.as_str()),
        Some(CAROL_HASH)
    );
    let users = admin.list_users().expect("GET /api/users");
    assert!(
        users.iter().any(|u| u == &carol),
        "carol among {:?}",
        users.iter().map(|u| &u.name).collect::<Vec<_>>()
    );

    // Her permissions on "/": only `carol.` names.
    let pattern = r"^carol\.";
    admin
        .declare_permissions(&Permissions {
            user: CAROL,
            vhost: "/",
            configure: pattern,
            read: pattern,
            write: pattern,
        })
        .expect("PUT /api/permissions/%2F/carol");
    let want = responses::Permissions {
        user: CAROL.to_owned(),
        vhost: "/".to_owned(),
        configure: pattern.to_owned(),
        read: pattern.to_owned(),
        write: pattern.to_owned(),
    };
    let all = admin.list_permissions().expect("GET /api/permissions");
    assert!(all.contains(&want), "{want:?} in {all:?}");
    assert_eq!(
        admin
            .get_permissions("/", CAROL)
            .expect("GET /api/permissions/%2F/carol"),
        want
    );

    // The API as carol herself.
    let as_carol = broker.api(CAROL, CAROL_PW);
    let me = as_carol.current_user().expect("whoami as carol");
    assert_eq!(me.name, CAROL);
    assert_eq!(me.tags.0, vec!["management".to_owned()]);
    let e = as_carol
        .list_users()
        .expect_err("a management user may not list users");
    assert_eq!(status(&e), Some(401), "{e:?}");
    assert_eq!(
        details(&e),
        (
            Some("not_authorised".to_owned()),
            Some("Not administrator user".to_owned())
        )
    );
    let e = as_carol
        .declare_queue(
            "/",
            &QueueParams::new_durable_classic_queue("other.q", None),
        )
        .expect_err("a declare outside her configure pattern");
    assert_eq!(status(&e), Some(401), "{e:?}");
    assert_eq!(
        details(&e),
        (
            Some("not_authorised".to_owned()),
            Some(
                "configure access to queue 'other.q' in vhost '/' refused for user 'carol'"
                    .to_owned()
            )
        )
    );

    // lapin as carol: a queue her pattern allows, then one it does not.
    let rt = runtime();
    let conn = rt.block_on(async {
        let conn = amqp_connect(broker.amqp(), CAROL, CAROL_PW).await;
        let ch = open_channel(&conn).await;
        declare(&ch, "carol.q")
            .await
            .expect("carol declares carol.q");
        let refused = open_channel(&conn).await;
        let e = declare(&refused, "other.q")
            .await
            .expect_err("carol declares other.q");
        assert_eq!(
            amqp_error(&e),
            (
                403,
                "ACCESS_REFUSED - configure access to queue 'other.q' in vhost '/' refused for user 'carol'"
                    .to_owned()
            )
        );
        assert!(e.is_amqp_soft_error(), "a channel error: {e}");
        assert!(conn.status().connected(), "the connection stays open");
        conn
    });

    // Her connection, as the administrator and as herself see it.
    let conns = admin.list_connections().expect("GET /api/connections");
    let hers: Vec<_> = conns.iter().filter(|c| c.username == CAROL).collect();
    assert_eq!(hers.len(), 1, "{conns:?}");
    assert_eq!(hers[0].protocol, "AMQP 0-9-1");
    assert_eq!(hers[0].client_hostname.as_deref(), Some("127.0.0.1"));
    assert!(hers[0].connected_at > 0);
    let own = as_carol
        .list_connections()
        .expect("GET /api/connections as carol");
    assert_eq!(
        own.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        vec![hers[0].name.as_str()]
    );
    let queues = admin.list_queues().expect("GET /api/queues");
    assert!(
        queues.iter().any(|q| q.name == "carol.q"),
        "carol.q in {queues:?}"
    );
    assert!(!queues.iter().any(|q| q.name == "other.q"), "{queues:?}");

    rt.block_on(async move {
        within("connection.close", conn.close(200, "bye".into()))
            .await
            .expect("connection.close");
    });
    drop(rt);

    // Clean up: the queue, then the user, whose permissions go with it
    // and who can no longer log in.
    admin
        .delete_queue("/", "carol.q", false)
        .expect("DELETE carol.q");
    admin
        .delete_user(CAROL, false)
        .expect("DELETE /api/users/carol");
    let e = admin.get_user(CAROL).expect_err("the deleted user");
    assert!(e.is_not_found(), "{e:?}");
    assert!(
        !admin
            .list_permissions()
            .expect("GET /api/permissions")
            .iter()
            .any(|p| p.user == CAROL)
    );
    let e = as_carol.current_user().expect_err("a deleted user's login");
    assert_eq!(status(&e), Some(401), "{e:?}");
}

#[test]
fn definitions_round_trip() {
    const Q: &str = "defs.q";
    const X: &str = "defs.direct";
    let broker = Broker::start();
    let api = broker.api("guest", "guest");

    api.declare_exchange("/", &ExchangeParams::durable_direct(X, None))
        .expect("declare the exchange");
    api.declare_queue(
        "/",
        &QueueParams::new_durable_classic_queue(Q, None).with_message_ttl(60_000),
    )
    .expect("declare the queue");
    api.bind_queue("/", Q, X, Some("k.1"), None)
        .expect("bind the queue");

    // The export, typed: what was declared is in it.
    let before = api
        .export_cluster_wide_definitions_as_data()
        .expect("GET /api/definitions as ClusterDefinitionSet");
    assert_eq!(before.server_version.as_deref(), Some("3.13.0"));
    assert!(before.virtual_hosts.iter().any(|v| v.name == "/"));
    assert!(
        before
            .users
            .iter()
            .any(|u| u.name == "guest" && u.tags.is_administrator()),
        "guest among the users"
    );
    assert!(
        before.permissions.contains(&responses::Permissions {
            user: "guest".to_owned(),
            vhost: "/".to_owned(),
            configure: ".*".to_owned(),
            read: ".*".to_owned(),
            write: ".*".to_owned(),
        }),
        "{:?}",
        before.permissions
    );
    assert!(before.policies.is_empty() && before.parameters.is_empty());
    let queue = before.find_queue("/", Q).expect("the queue in the export");
    assert!(queue.durable && !queue.auto_delete);
    assert_eq!(queue.arguments.get("x-message-ttl"), Some(&json!(60_000)));
    let exchange = before
        .find_exchange("/", X)
        .expect("the exchange in the export");
    assert_eq!(exchange.exchange_type, "direct");
    assert!(exchange.durable && !exchange.auto_delete);
    let binding = BindingInfo {
        vhost: "/".to_owned(),
        source: X.to_owned(),
        destination: Q.to_owned(),
        destination_type: BindingDestinationType::Queue,
        routing_key: "k.1".to_owned(),
        arguments: no_arguments(),
        properties_key: None,
    };
    assert!(
        before.bindings.contains(&binding),
        "{binding:?} in {:?}",
        before.bindings
    );

    // The export as text, the form a file keeps.
    let text = api
        .export_cluster_wide_definitions()
        .expect("GET /api/definitions");
    let defs: Value = serde_json::from_str(&text).expect("the export is JSON");

    // Gone...
    api.delete_queue("/", Q, false).expect("delete the queue");
    api.delete_exchange("/", X, false)
        .expect("delete the exchange");
    assert!(
        api.get_queue_info("/", Q)
            .expect_err("deleted queue")
            .is_not_found()
    );
    assert!(
        api.get_exchange_info("/", X)
            .expect_err("deleted exchange")
            .is_not_found()
    );

    // ... and back from the export.
    api.import_definitions(defs).expect("POST /api/definitions");
    let info = api.get_queue_info("/", Q).expect("the queue is back");
    assert!(info.durable && !info.auto_delete);
    assert_eq!(info.arguments.get("x-message-ttl"), Some(&json!(60_000)));
    let x = api.get_exchange_info("/", X).expect("the exchange is back");
    assert_eq!(
        x,
        ExchangeInfo {
            name: X.to_owned(),
            vhost: "/".to_owned(),
            exchange_type: "direct".to_owned(),
            durable: true,
            auto_delete: false,
            arguments: no_arguments(),
        }
    );
    let of_queue = api
        .list_queue_bindings("/", Q)
        .expect("the queue's bindings");
    assert!(
        of_queue
            .iter()
            .any(|b| b.source == X && b.routing_key == "k.1"),
        "the binding is back: {of_queue:?}"
    );

    // A second export holds the same queues, exchanges and bindings.
    let after = api
        .export_cluster_wide_definitions_as_data()
        .expect("GET /api/definitions again");
    let mut queues = (before.queues.clone(), after.queues.clone());
    queues
        .0
        .sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
    queues
        .1
        .sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
    assert_eq!(queues.0, queues.1);
    let mut exchanges = (before.exchanges.clone(), after.exchanges.clone());
    exchanges
        .0
        .sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
    exchanges
        .1
        .sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
    assert_eq!(exchanges.0, exchanges.1);
    let key = |b: &BindingInfo| {
        (
            b.vhost.clone(),
            b.source.clone(),
            b.destination.clone(),
            b.routing_key.clone(),
        )
    };
    let mut bindings = (before.bindings.clone(), after.bindings.clone());
    bindings.0.sort_by_key(key);
    bindings.1.sort_by_key(key);
    assert_eq!(bindings.0, bindings.1);
}

#[test]
fn vhost_made_and_deleted() {
    const V: &str = "mgmt.tenant";
    let broker = Broker::start();
    let api = broker.api("guest", "guest");
    let params = VirtualHostParams::named(V)
        .with_description("made by rabbitmq_http_client")
        .with_tags(vec!["a", "b"]);
    api.create_vhost(&params).expect("PUT /api/vhosts/{V}");
    let got = api.get_vhost(V).expect("GET /api/vhosts/{V}");
    assert_eq!(got.name, V);
    assert_eq!(
        got.description.as_deref(),
        Some("made by rabbitmq_http_client")
    );
    assert_eq!(
        got.tags.map(|t| t.0),
        Some(vec!["a".to_owned(), "b".to_owned()])
    );
    let names: Vec<String> = api
        .list_vhosts()
        .expect("GET /api/vhosts")
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, vec!["/".to_owned(), V.to_owned()]);
    // As in RabbitMQ, making a vhost grants nobody anything.
    let e = api
        .declare_queue(V, &QueueParams::new_durable_classic_queue("inside", None))
        .expect_err("no permissions on the new vhost yet");
    assert_eq!(status(&e), Some(401), "{e:?}");
    api.declare_permissions(&Permissions {
        user: "guest",
        vhost: V,
        configure: ".*",
        read: ".*",
        write: ".*",
    })
    .expect("PUT /api/permissions/{V}/guest");
    api.declare_queue(V, &QueueParams::new_durable_classic_queue("inside", None))
        .expect("a queue in the new vhost");
    assert_eq!(
        api.get_queue_info(V, "inside").expect("the queue").name,
        "inside"
    );

    api.delete_vhost(V, false).expect("DELETE /api/vhosts/{V}");
    let e = api.get_vhost(V).expect_err("the deleted vhost");
    assert!(e.is_not_found(), "{e:?}");
    let e = api
        .get_queue_info(V, "inside")
        .expect_err("its queue went with it");
    assert!(e.is_not_found(), "{e:?}");
    api.delete_vhost(V, true)
        .expect("idempotent delete of a missing vhost");
    let e = api
        .delete_vhost("/", false)
        .expect_err("the configured vhost stays");
    assert_eq!(status(&e), Some(400), "{e:?}");
    let (_, reason) = details(&e);
    assert!(
        reason.is_some_and(|r| r.contains("[broker] vhosts")),
        "{e:?}"
    );
}
