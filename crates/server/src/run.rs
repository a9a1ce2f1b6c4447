//! Running the broker process: open the store and the core, bind the
//! listeners, print the ready line, and shut down in DESIGN.md's order.
//!
//! Shutdown: stop accepting → connections close (each protocol's own close)
//! → wait for connection tasks under `shutdown_timeout_secs` → stop queue
//! tasks → flush the committer → close RocksDB.

use junction_core::io::{Identified, Stream};

use crate::tls::Tls;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use junction_core::{Broker, BrokerConfig, CoreError};
use junction_store::{Store, StoreError, StoreOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::admission::Admission;
use crate::auth::{Backend, Chain, FileAuth, HttpAuth};
use crate::config::AuthBackend;
use crate::config::Config;
use crate::metrics::{MetricsSnapshot, QueueMetrics};
use crate::users::{UserDb, UsersError};

/// Why the server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error(transparent)]
    Users(#[from] UsersError),
    #[error("{0}")]
    Tls(String),
    #[error("{0}")]
    WebSocket(String),
    #[error("{0}")]
    Auth(String),
    #[error("cannot import the definitions file {0}")]
    Definitions(String),
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Listeners by name, for the ready line.
type Listeners = Vec<(&'static str, SocketAddr)>;

/// A running broker.
pub struct Server {
    broker: Arc<Broker>,
    /// The users file the protocol adapters authenticate against (read
    /// again when it changes), when `[auth] backends` has it.
    users: Option<Arc<FileAuth>>,
    config: Config,
    admin_addr: Option<SocketAddr>,
    amqp_addr: Option<SocketAddr>,
    mqtt_addr: Option<SocketAddr>,
    stomp_addr: Option<SocketAddr>,
    /// The WebSocket listeners, by name (`mqtt-ws`, `stomp-ws`).
    ws_addrs: Listeners,
    /// The TLS listeners, by name (`amqps`, `mqtts`, `stomps`, `https`,
    /// `mqtt-wss`, `stomp-wss`).
    tls_addrs: Listeners,
    /// The TLS configuration in use (reloadable), when TLS is on.
    tls: Option<Arc<Tls>>,
    /// Read by `/api/health`; false again once shutdown starts.
    ready: Arc<AtomicBool>,
    /// This node's cluster, when `[cluster]` is enabled.
    cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Cancelled to stop the listeners (and, through child tokens, the
    /// connections they accepted).
    listeners: CancellationToken,
    /// Listener and connection tasks, awaited at shutdown.
    tasks: TaskTracker,
}

fn store_options(config: &Config) -> StoreOptions {
    StoreOptions {
        queue_capacity: config.store.queue_capacity,
        max_batch_ops: config.store.max_batch_ops,
        group_commit: config.store.group_commit,
    }
}

/// Binds a listener; returns it with the address it got (port 0 picks one).
async fn bind(
    what: &'static str,
    ip: std::net::IpAddr,
    port: u16,
) -> Result<(TcpListener, SocketAddr), ServerError> {
    let addr = SocketAddr::new(ip, port);
    let err = |source| ServerError::Bind { what, addr, source };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    Ok((listener, local))
}

/// [`Tls::reload`], logged either way.
fn reload_logged(tls: &Tls, why: &str) -> Result<(), String> {
    match tls.reload() {
        Ok(()) => {
            tracing::info!(trigger = why, "TLS certificates reloaded");
            Ok(())
        }
        Err(e) => {
            tracing::warn!(trigger = why, error = %e, "TLS reload failed; the files in use stay");
            Err(e)
        }
    }
}

/// Imports the definitions file `path` at start (RabbitMQ's
/// `load_definitions`); a bad file stops the start with the reason.
async fn load_definitions(
    broker: &Arc<Broker>,
    users: &Arc<FileAuth>,
    policies: &crate::mgmt::policies::Policies,
    path: &std::path::Path,
) -> Result<(), ServerError> {
    let fail = |why: String| ServerError::Definitions(format!("{}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let defs: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| fail(format!("not JSON: {e}")))?;
    crate::mgmt::definitions::import(broker, Some(users), policies, &defs)
        .await
        .map_err(|e| fail(e.to_string()))?;
    tracing::info!(file = %path.display(), "definitions imported");
    Ok(())
}

/// How often the users file is checked for a change.
const USERS_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads the users file again when it changes (or always, with `force`),
/// logged: `junction user|permission|topic-permission` take effect in a
/// running broker this way.
/// From here on, the users file and the policies are the cluster's: an
/// edit on any node is committed to the metadata group and put in force
/// on every node as it applies it (docs/cluster.md "Users, permissions and
/// policies"). What the group already holds replaces this node's own now.
fn share_documents(
    cluster: &Arc<crate::cluster::Cluster>,
    users: Option<&Arc<FileAuth>>,
    policies: &Arc<crate::mgmt::policies::Policies>,
    broker: &Arc<Broker>,
) {
    use crate::cluster::{POLICIES_KEY, USERS_KEY};
    if let Some(users) = users {
        users.share_through(cluster.share(USERS_KEY));
    }
    policies.share_through(cluster.share(POLICIES_KEY));
    let users = users.cloned();
    let policies = Arc::clone(policies);
    let broker = Arc::downgrade(broker);
    cluster.serve_documents(Arc::new(move |key: &[u8], value: &[u8]| {
        let outcome = if key == USERS_KEY {
            match &users {
                Some(users) => users.install_shared(value).map_err(|e| e.to_string()),
                // Not authenticating with the users file: nothing to do.
                None => Ok(()),
            }
        } else if key == POLICIES_KEY {
            match broker.upgrade() {
                Some(broker) => policies.install_shared(value, &broker),
                None => Ok(()),
            }
        } else {
            Err("a document this version does not know".to_owned())
        };
        if let Err(e) = outcome {
            tracing::error!(key = %String::from_utf8_lossy(&key[1..]), error = %e, "the cluster's copy could not be put in force on this node");
        }
    }));
}

async fn reload_users(users: &Arc<FileAuth>, force: bool, why: &str) {
    let u = Arc::clone(users);
    match tokio::task::spawn_blocking(move || u.reload(force)).await {
        Ok(Ok(true)) => tracing::info!(trigger = why, "users file read again"),
        Ok(Ok(false)) => {}
        Ok(Err(e)) => {
            tracing::warn!(trigger = why, error = %e, "users file not read again; the users in force stay")
        }
        Err(e) => tracing::warn!(error = %e, "users file reload failed"),
    }
}

/// Checks the users file every [`USERS_POLL`] until `stop`.
async fn watch_users(users: Arc<FileAuth>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(USERS_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => reload_users(&users, false, "file change").await,
        }
    }
}

/// The TLS handshake of an accepted connection, within the handshake
/// timeout; None (logged at debug: scanners and health checks do this
/// all day) when it fails, times out or the broker shuts down.
async fn handshake(
    tls: &Tls,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    what: &'static str,
    shutdown: &CancellationToken,
) -> Option<Stream> {
    let _ = stream.set_nodelay(true);
    let accept = tls.acceptor().accept(stream);
    let done = tokio::select! {
        _ = shutdown.cancelled() => return None,
        r = tokio::time::timeout(tls.handshake_timeout(), accept) => r,
    };
    match done {
        Ok(Ok(s)) => {
            // Only a certificate the verifier accepted is here.
            let client_name = s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| tls.client_name(chain));
            Some(Stream::Other(Box::new(Identified { io: s, client_name })))
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, protocol = what, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, protocol = what, "TLS handshake timed out");
            None
        }
    }
}

/// What every listener's accept loop shares: the connection caps, the
/// shutdown token and the task tracker.
struct Acceptor<'a> {
    admission: &'a Arc<Admission>,
    shutdown: &'a CancellationToken,
    tasks: &'a TaskTracker,
}

impl Acceptor<'_> {
    /// Binds the TLS listener `name` on `ip:port` and serves it like
    /// [`Acceptor::spawn`], with handshakes; returns its address.
    async fn spawn_tls<C, F, Fut>(
        &self,
        name: &'static str,
        tls: &Arc<Tls>,
        ip: std::net::IpAddr,
        port: u16,
        ctx: &Arc<C>,
        serve: F,
    ) -> Result<SocketAddr, ServerError>
    where
        C: Send + Sync + 'static,
        F: Fn(Stream, SocketAddr, Arc<C>, CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (listener, addr) = bind(name, ip, port).await?;
        self.spawn(
            name,
            listener,
            Some(Arc::clone(tls)),
            Arc::clone(ctx),
            serve,
        );
        Ok(addr)
    }

    /// The WebSocket listener of `protocol` (`mqtt-ws`, `stomp-ws`), and with
    /// TLS its `wss` twin (`mqtt-wss`, `stomp-wss`); their addresses go to
    /// `addrs` (plain, TLS) for the ready line.
    async fn spawn_websockets<C, F, Fut>(
        &self,
        protocol: crate::ws::WsProtocol,
        config: &Config,
        tls: Option<&Arc<Tls>>,
        ctx: &Arc<C>,
        serve: F,
        addrs: (&mut Listeners, &mut Listeners),
    ) -> Result<(), ServerError>
    where
        C: Send + Sync + 'static,
        F: Fn(Stream, SocketAddr, Arc<C>, CancellationToken) -> Fut + Copy + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let ws = &config.websocket;
        let (plain, secure, port, tls_port) = match protocol {
            crate::ws::WsProtocol::Mqtt => (
                "mqtt-ws",
                "mqtt-wss",
                ws.mqtt_port,
                config.tls.mqtt_wss_port,
            ),
            crate::ws::WsProtocol::Stomp => (
                "stomp-ws",
                "stomp-wss",
                ws.stomp_port,
                config.tls.stomp_wss_port,
            ),
        };
        let ip = config.broker.bind;
        let addr = self
            .spawn_ws(plain, protocol, ws, None, ip, port, ctx, serve)
            .await?;
        addrs.0.push((plain, addr));
        if let Some(tls) = tls {
            let addr = self
                .spawn_ws(secure, protocol, ws, Some(tls), ip, tls_port, ctx, serve)
                .await?;
            addrs.1.push((secure, addr));
        }
        Ok(())
    }

    /// Binds the WebSocket listener `name` (with `tls`, its `wss` form)
    /// on `ip:port` for `protocol`: each connection runs the upgrade, then
    /// `serve` (the adapter's entry point) over the WebSocket; returns its
    /// address.
    #[allow(clippy::too_many_arguments)]
    async fn spawn_ws<C, F, Fut>(
        &self,
        name: &'static str,
        protocol: crate::ws::WsProtocol,
        settings: &crate::ws::WsConfig,
        tls: Option<&Arc<Tls>>,
        ip: std::net::IpAddr,
        port: u16,
        ctx: &Arc<C>,
        serve: F,
    ) -> Result<SocketAddr, ServerError>
    where
        C: Send + Sync + 'static,
        F: Fn(Stream, SocketAddr, Arc<C>, CancellationToken) -> Fut + Copy + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let ws = Arc::new(
            crate::ws::WsListener::new(protocol, settings).map_err(ServerError::WebSocket)?,
        );
        let (listener, addr) = bind(name, ip, port).await?;
        self.spawn(
            name,
            listener,
            tls.cloned(),
            Arc::clone(ctx),
            move |stream, peer, ctx, token| {
                crate::ws::serve(Arc::clone(&ws), stream, peer, ctx, token, serve)
            },
        );
        Ok(addr)
    }

    /// Accepts connections on `listener` until shutdown, each served by
    /// `serve(stream, peer, ctx, token)` in its own task, with a clone of
    /// the one shutdown token (no allocation per connection). With `tls`
    /// the task first runs the TLS handshake (bounded by its timeout and by
    /// shutdown); the connection counts against the caps from accept on.
    fn spawn<C, F, Fut>(
        &self,
        what: &'static str,
        listener: TcpListener,
        tls: Option<Arc<Tls>>,
        ctx: Arc<C>,
        serve: F,
    ) where
        C: Send + Sync + 'static,
        F: Fn(Stream, SocketAddr, Arc<C>, CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let serve = Arc::new(serve);
        let (shutdown, spawner) = (self.shutdown.clone(), self.tasks.clone());
        let admission = Arc::clone(self.admission);
        self.tasks.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    a = listener.accept() => a,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        let Some(admitted) = admission.admit(peer.ip()) else {
                            tracing::debug!(%peer, protocol = what, "connection cap reached; closed");
                            continue;
                        };
                        let Some(tls) = &tls else {
                            // Boxed: an async block that awaits a future it
                            // captured keeps room for it twice (the captured
                            // value and the await), which doubled every idle
                            // connection's task.
                            let served =
                                Box::pin(serve(stream.into(), peer, Arc::clone(&ctx), shutdown.clone()));
                            spawner.spawn(async move {
                                served.await;
                                drop(admitted);
                            });
                            continue;
                        };
                        let (tls, serve, ctx) = (Arc::clone(tls), Arc::clone(&serve), Arc::clone(&ctx));
                        let token = shutdown.clone();
                        spawner.spawn(async move {
                            if let Some(stream) = handshake(&tls, stream, peer, what, &token).await {
                                serve(stream, peer, ctx, token).await;
                            }
                            drop(admitted);
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, protocol = what, "accept failed");
                        // Out of file descriptors and the like: do not spin.
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }
}

/// The metrics snapshot of a broker.
pub fn snapshot(broker: &Broker, admission: &Admission, max_queues: usize) -> MetricsSnapshot {
    let s = broker.stats();
    let (memtables, block_cache) = broker.store().memory_usage();
    let mut queues = s.queues;
    let mut queues_omitted = 0;
    if queues.len() > max_queues {
        // The deepest queues are the ones worth a series; then by name.
        queues.sort_by(|a, b| {
            (b.ready + b.unacked)
                .cmp(&(a.ready + a.unacked))
                .then_with(|| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)))
        });
        queues_omitted = (queues.len() - max_queues) as u64;
        queues.truncate(max_queues);
        queues.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
    }
    MetricsSnapshot {
        queues: queues
            .into_iter()
            .map(|q| QueueMetrics {
                vhost: q.vhost,
                name: q.name,
                depth: q.ready,
                unacked: q.unacked,
                consumers: q.consumers,
            })
            .collect(),
        queues_omitted,
        messages_in: s.messages_in,
        bytes_in: s.bytes_in,
        messages_out: s.messages_out,
        bytes_out: s.bytes_out,
        connections: s
            .connections
            .into_iter()
            .map(|(p, n)| (p.as_str().to_string(), n))
            .collect(),
        store_commits: s.store.commits,
        store_batches: s.store.batches,
        store_syncs: s.store.syncs,
        store_commit_seconds_total: s.store.commit_seconds_total,
        store_max_group: s.store.max_group,
        held_bytes: s.held_bytes,
        memory_alarm: s.memory_alarm,
        disk_alarm: s.disk_alarm,
        connections_refused: admission.refused(),
        quarantined_records: s.quarantined_records,
        slow_consumer_disconnects: s.slow_consumer_disconnects,
        store_memtable_bytes: memtables,
        store_block_cache_bytes: block_cache,
    }
}

impl Server {
    /// Opens the store (recovering what it holds), starts the core and
    /// binds every enabled listener. Must run inside a tokio runtime.
    pub async fn start(config: Config) -> Result<Server, ServerError> {
        let store = if config.broker.in_memory {
            Store::in_memory()
        } else {
            let dir = config.broker.data_dir.clone();
            std::fs::create_dir_all(&dir).map_err(|source| ServerError::DataDir {
                path: dir.clone(),
                source,
            })?;
            let opts = store_options(&config);
            let path = dir.join("store");
            // The store holds message bodies and, in a cluster, the users
            // document (password hashes): its owner's only.
            {
                use std::os::unix::fs::PermissionsExt;
                let private = std::fs::create_dir_all(&path).and_then(|()| {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
                });
                if let Err(e) = private {
                    tracing::warn!(path = %path.display(), error = %e, "the store directory could not be made its owner's only");
                }
            }
            tokio::task::spawn_blocking(move || Store::open_rocksdb(&path, opts))
                .await
                .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))??
        };
        // Loading may hash the built-in guest's password: not on a worker.
        let users_path = config.users_path();
        let users = Arc::new(FileAuth::new(
            tokio::task::spawn_blocking(move || UserDb::load(&users_path))
                .await
                .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))??,
            config.broker.guest_loopback_only,
        ));
        let broker = Broker::open(
            store,
            BrokerConfig {
                vhosts: config.broker.vhosts.clone(),
                memory_high_watermark: config.broker.memory_high_watermark,
                disk_free_limit: config.broker.disk_free_limit,
                limits: junction_core::Limits {
                    max_topic_levels: config.broker.max_topic_levels,
                    max_queues: config.broker.max_queues_per_vhost,
                    max_exchanges: config.broker.max_exchanges_per_vhost,
                    max_bindings: config.broker.max_bindings_per_vhost,
                    max_pending_logins: config.broker.max_pending_logins,
                    max_handshake_size: config.broker.max_handshake_size,
                    write_timeout: std::time::Duration::from_secs(config.broker.write_timeout_secs),
                    max_connections_per_user: config.broker.max_connections_per_user,
                    max_vhosts: config.broker.max_vhosts,
                },
                queue_head_messages: config.broker.queue_head_messages,
                queue_head_bytes: config.broker.queue_head_bytes,
                node: config
                    .cluster
                    .enabled
                    .then(|| config.cluster.node_name.clone()),
                // MQTT sessions' durable queues are the cluster's, like any
                // durable queue: a session taken over by another node
                // consumes its queue where it lives.
                node_local_names: vec![junction_mqtt::convert::SYS_EXCHANGE.to_owned()],
            },
        )
        .await?;
        let cluster = if config.cluster.enabled {
            // Again here: flags (--in-memory) apply after the file's checks.
            config
                .cluster
                .validate(config.broker.in_memory)
                .map_err(ServerError::Cluster)?;
            let peer_tls = if config.cluster.peer_tls {
                Some(crate::tls::peer_tls(&config.tls).map_err(ServerError::Tls)?)
            } else {
                None
            };
            let cluster =
                crate::cluster::Cluster::start(&config.cluster, peer_tls, broker.store().clone())
                    .await?;
            cluster.attach(&broker);
            Some(cluster)
        } else {
            None
        };
        let cluster_guard = crate::cluster::StartGuard::new(cluster.clone());
        // Queue policies: kept beside the store, applied to every queue.
        let policies_file =
            (!config.broker.in_memory).then(|| config.broker.data_dir.join("policies.json"));
        let policies = Arc::new(
            crate::mgmt::policies::Policies::load(policies_file).map_err(ServerError::Auth)?,
        );
        {
            let p = Arc::clone(&policies);
            broker.set_policy_source(Arc::new(move |vhost: &str, queue: &str| {
                p.for_queue(vhost, queue)
            }));
        }
        if !config.broker.load_definitions.as_os_str().is_empty() {
            load_definitions(&broker, &users, &policies, &config.broker.load_definitions).await?;
        }
        let mut backends = Vec::new();
        for b in &config.auth.backends {
            backends.push(match b {
                AuthBackend::File => Backend::File(Arc::clone(&users)),
                AuthBackend::Http => Backend::Http(Arc::new(
                    HttpAuth::new(&config.auth.http).map_err(ServerError::Auth)?,
                )),
            });
        }
        let users = config
            .auth
            .backends
            .contains(&AuthBackend::File)
            .then_some(users);
        if let Some(cluster) = &cluster {
            share_documents(cluster, users.as_ref(), &policies, &broker);
        }
        let auth: Arc<dyn junction_core::Authenticator> = Arc::new(Chain::new(backends));
        let listeners = CancellationToken::new();
        let tasks = TaskTracker::new();
        if let Some(users) = &users {
            tasks.spawn(watch_users(Arc::clone(users), listeners.child_token()));
        }
        let ready = Arc::new(AtomicBool::new(false));
        let admission = Admission::new(
            config.broker.max_connections,
            config.broker.max_connections_per_ip,
            config.broker.max_connection_rate_per_ip,
        );
        let tls = if config.tls.enabled() {
            Some(Arc::new(Tls::load(&config.tls).map_err(ServerError::Tls)?))
        } else {
            None
        };
        let tls_reload = tls.as_ref().map(|tls| {
            let tls = Arc::clone(tls);
            Arc::new(move || reload_logged(&tls, "admin call"))
                as Arc<dyn Fn() -> Result<(), String> + Send + Sync>
        });
        let mgmt = Arc::new(crate::mgmt::MgmtState {
            broker: Arc::clone(&broker),
            auth: Arc::clone(&auth),
            users: users.clone(),
            started: std::time::Instant::now(),
            tls_reload,
            mqtt: std::sync::OnceLock::new(),
            rates: Arc::default(),
            policies: Arc::clone(&policies),
            metrics: config.admin.metrics_need_credentials.then(|| {
                let (b, adm) = (Arc::clone(&broker), Arc::clone(&admission));
                let max_queues = config.admin.metrics_max_queues;
                Arc::new(move || crate::metrics::render(&snapshot(&b, &adm, max_queues)))
                    as Arc<dyn Fn() -> String + Send + Sync>
            }),
            node: cluster
                .as_ref()
                .map_or_else(crate::mgmt::node_name, |c| c.node_name()),
            cluster: cluster.clone(),
        });
        tasks.spawn(crate::mgmt::rates::run(
            Arc::clone(&mgmt.rates),
            Arc::clone(&broker),
            listeners.child_token(),
        ));
        let mut tls_addrs = Vec::new();
        let mut ws_addrs = Vec::new();
        let mut admin_addr = None;
        if config.admin.enabled {
            let (listener, addr) =
                bind("admin HTTP", config.broker.bind, config.admin.port).await?;
            admin_addr = Some(addr);
            let b = Arc::clone(&broker);
            let adm = Arc::clone(&admission);
            let max_queues = config.admin.metrics_max_queues;
            let store = broker.store().clone();
            let state = AdminState::new(Arc::clone(&ready), move || snapshot(&b, &adm, max_queues))
                .with_failure(move || store.stats().failure);
            let open = if config.admin.metrics_need_credentials {
                admin::health_only(state)
            } else {
                admin::router(state)
            };
            let app = open
                .merge(crate::mgmt::router(Arc::clone(&mgmt)))
                .merge(crate::console::router())
                .layer(axum::extract::DefaultBodyLimit::max(
                    config.admin.max_body_size,
                ));
            if let Some(tls) = &tls {
                let (https, addr) =
                    bind("admin HTTPS", config.broker.bind, config.tls.https_port).await?;
                let https = crate::tls::HttpsListener::spawn(
                    https,
                    Arc::clone(tls),
                    listeners.child_token(),
                    &tasks,
                )
                .map_err(|source| ServerError::Bind {
                    what: "admin HTTPS",
                    addr,
                    source,
                })?;
                tls_addrs.push(("https", addr));
                let (app, token) = (app.clone(), listeners.child_token());
                tasks.spawn(async move {
                    if let Err(e) = admin::serve(https, app, token).await {
                        tracing::error!(error = %e, "admin HTTPS listener failed");
                    }
                });
            }
            let token = listeners.child_token();
            tasks.spawn(async move {
                if let Err(e) = admin::serve(listener, app, token).await {
                    tracing::error!(error = %e, "admin HTTP listener failed");
                }
            });
        }
        let acceptor = Acceptor {
            admission: &admission,
            shutdown: &listeners,
            tasks: &tasks,
        };
        let mut amqp_addr = None;
        if config.amqp.enabled {
            let (listener, addr) = bind("AMQP", config.broker.bind, config.amqp.port).await?;
            amqp_addr = Some(addr);
            let ctx = Arc::new(junction_amqp::AmqpContext {
                broker: Arc::clone(&broker),
                auth: Arc::clone(&auth),
                settings: junction_amqp::AmqpSettings {
                    max_message_size: config.broker.max_message_size,
                    channel_max: config.amqp.channel_max,
                    ..junction_amqp::AmqpSettings::default()
                },
            });
            if let Some(tls) = &tls {
                let addr = acceptor
                    .spawn_tls(
                        "amqps",
                        tls,
                        config.broker.bind,
                        config.tls.amqps_port,
                        &ctx,
                        junction_amqp::serve_connection,
                    )
                    .await?;
                tls_addrs.push(("amqps", addr));
            }
            acceptor.spawn("amqp", listener, None, ctx, junction_amqp::serve_connection);
        }
        let mut mqtt_addr = None;
        if config.mqtt.enabled {
            let (listener, addr) = bind("MQTT", config.broker.bind, config.mqtt.port).await?;
            mqtt_addr = Some(addr);
            let ctx = junction_mqtt::MqttContext::new(
                Arc::clone(&broker),
                Arc::clone(&auth),
                config.mqtt.clone(),
            );
            junction_mqtt::start(&ctx, &listeners, &tasks).await?;
            let _ = mgmt.mqtt.set(Arc::clone(&ctx));
            if let Some(tls) = &tls {
                let addr = acceptor
                    .spawn_tls(
                        "mqtts",
                        tls,
                        config.broker.bind,
                        config.tls.mqtts_port,
                        &ctx,
                        junction_mqtt::serve_connection,
                    )
                    .await?;
                tls_addrs.push(("mqtts", addr));
            }
            if config.websocket.enabled {
                acceptor
                    .spawn_websockets(
                        crate::ws::WsProtocol::Mqtt,
                        &config,
                        tls.as_ref(),
                        &ctx,
                        junction_mqtt::serve_connection,
                        (&mut ws_addrs, &mut tls_addrs),
                    )
                    .await?;
            }
            acceptor.spawn("mqtt", listener, None, ctx, junction_mqtt::serve_connection);
        }
        let mut stomp_addr = None;
        if config.stomp.enabled {
            let (listener, addr) = bind("STOMP", config.broker.bind, config.stomp.port).await?;
            stomp_addr = Some(addr);
            let ctx = Arc::new(junction_stomp::StompContext {
                broker: Arc::clone(&broker),
                auth: Arc::clone(&auth),
                settings: config.stomp.clone(),
            });
            if let Some(tls) = &tls {
                let addr = acceptor
                    .spawn_tls(
                        "stomps",
                        tls,
                        config.broker.bind,
                        config.tls.stomps_port,
                        &ctx,
                        junction_stomp::serve_connection,
                    )
                    .await?;
                tls_addrs.push(("stomps", addr));
            }
            if config.websocket.enabled {
                acceptor
                    .spawn_websockets(
                        crate::ws::WsProtocol::Stomp,
                        &config,
                        tls.as_ref(),
                        &ctx,
                        junction_stomp::serve_connection,
                        (&mut ws_addrs, &mut tls_addrs),
                    )
                    .await?;
            }
            acceptor.spawn(
                "stomp",
                listener,
                None,
                ctx,
                junction_stomp::serve_connection,
            );
        }
        cluster_guard.disarm();
        ready.store(true, Ordering::Release);
        tracing::info!(
            data_dir = %config.broker.data_dir.display(),
            in_memory = config.broker.in_memory,
            "junction started"
        );
        Ok(Server {
            broker,
            users,
            config,
            admin_addr,
            amqp_addr,
            mqtt_addr,
            stomp_addr,
            ws_addrs,
            tls_addrs,
            tls,
            ready,
            cluster,
            listeners,
            tasks,
        })
    }

    /// `junction ready amqp=HOST:PORT mqtt=HOST:PORT admin=HOST:PORT`: one line naming every listener, so
    /// scripts and tests can find the ports (0 in the config = any free port).
    pub fn ready_line(&self) -> String {
        let mut line = String::from("junction ready");
        if let Some(a) = self.amqp_addr {
            line.push_str(&format!(" amqp={a}"));
        }
        if let Some(a) = self.mqtt_addr {
            line.push_str(&format!(" mqtt={a}"));
        }
        if let Some(a) = self.stomp_addr {
            line.push_str(&format!(" stomp={a}"));
        }
        for (name, a) in self.ws_addrs.iter().chain(&self.tls_addrs) {
            line.push_str(&format!(" {name}={a}"));
        }
        if let Some(a) = self.admin_addr {
            line.push_str(&format!(" admin={a}"));
        }
        if let Some(c) = &self.cluster {
            line.push_str(&format!(" cluster={}", c.addr()));
        }
        line
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    pub fn users(&self) -> Option<Arc<UserDb>> {
        self.users.as_ref().map(|u| u.db())
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn amqp_addr(&self) -> Option<SocketAddr> {
        self.amqp_addr
    }

    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.mqtt_addr
    }

    pub fn stomp_addr(&self) -> Option<SocketAddr> {
        self.stomp_addr
    }

    /// Reads the users file again (SIGHUP), changed or not.
    pub async fn reload_users(&self) {
        if let Some(users) = &self.users {
            reload_users(users, true, "SIGHUP").await;
        }
    }

    /// Reads the TLS files again (on SIGHUP): new handshakes use them, open
    /// connections keep theirs; on error the files in use stay and the
    /// error says why. Without TLS there is nothing to do.
    pub fn reload_tls(&self) -> Result<(), String> {
        match &self.tls {
            None => Ok(()),
            Some(tls) => reload_logged(tls, "SIGHUP"),
        }
    }

    /// Shuts down in DESIGN.md's order. Idempotent.
    pub async fn shutdown(&self) -> Result<(), ServerError> {
        self.ready.store(false, Ordering::Release);
        self.listeners.cancel();
        self.tasks.close();
        if tokio::time::timeout(self.config.shutdown_timeout(), self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections still open at the shutdown deadline; closing anyway");
        }
        // Before the store closes: the group writes to it.
        if let Some(c) = &self.cluster {
            c.shutdown().await;
        }
        self.broker.shutdown().await?;
        tracing::info!("junction stopped");
        Ok(())
    }
}

/// SIGTERM and SIGINT handlers. Install them before announcing readiness:
/// a signal that arrives before they exist would kill the process outright.
pub struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// Installs the handlers; from now on these signals are only recorded.
    pub fn install() -> std::io::Result<ShutdownSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(ShutdownSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the first SIGTERM or SIGINT.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = self.int.recv() => tracing::info!("SIGINT received, shutting down"),
        }
    }
}
