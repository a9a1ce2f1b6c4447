//! Running the broker process: open the store and the core, bind the
//! listeners, print the ready line, and shut down in DESIGN.md's order.
//!
//! Shutdown: stop accepting → connections close (each protocol's own close)
//! → wait for connection tasks under `shutdown_timeout_secs` → stop queue
//! tasks → flush the committer → close RocksDB.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use junction_core::{Broker, BrokerConfig, CoreError};
use junction_store::{Store, StoreError, StoreOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
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
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running broker.
pub struct Server {
    broker: Arc<Broker>,
    /// The users the protocol adapters authenticate against.
    users: Arc<UserDb>,
    config: Config,
    admin_addr: Option<SocketAddr>,
    /// Read by `/api/health`; false again once shutdown starts.
    ready: Arc<AtomicBool>,
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

/// The metrics snapshot of a broker.
pub fn snapshot(broker: &Broker) -> MetricsSnapshot {
    let s = broker.stats();
    MetricsSnapshot {
        queues: s
            .queues
            .into_iter()
            .map(|q| QueueMetrics {
                vhost: q.vhost,
                name: q.name,
                depth: q.ready,
                unacked: q.unacked,
                consumers: q.consumers,
            })
            .collect(),
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
            tokio::task::spawn_blocking(move || Store::open_rocksdb(&path, opts))
                .await
                .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))??
        };
        let users = Arc::new(UserDb::load(&config.users_path())?);
        let broker = Broker::open(
            store,
            BrokerConfig {
                vhosts: config.broker.vhosts.clone(),
            },
        )
        .await?;
        let ready = Arc::new(AtomicBool::new(false));
        let listeners = CancellationToken::new();
        let tasks = TaskTracker::new();
        let mut admin_addr = None;
        if config.admin.enabled {
            let addr = SocketAddr::new(config.broker.bind, config.admin.port);
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind {
                    what: "admin HTTP",
                    addr,
                    source,
                })?;
            admin_addr = Some(listener.local_addr().map_err(|source| ServerError::Bind {
                what: "admin HTTP",
                addr,
                source,
            })?);
            let b = Arc::clone(&broker);
            let state = AdminState::new(Arc::clone(&ready), move || snapshot(&b));
            let token = listeners.child_token();
            tasks.spawn(async move {
                if let Err(e) = admin::serve(listener, state, token).await {
                    tracing::error!(error = %e, "admin HTTP listener failed");
                }
            });
        }
        for (name, enabled) in [
            ("mqtt", config.mqtt.enabled),
            ("amqp", config.amqp.enabled),
            ("stomp", config.stomp.enabled),
        ] {
            if enabled {
                tracing::debug!(protocol = name, "adapter not built yet; no listener");
            }
        }
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
            ready,
            listeners,
            tasks,
        })
    }

    /// `junction ready admin=HOST:PORT`: one line naming every listener, so
    /// scripts and tests can find the ports (0 in the config = any free port).
    pub fn ready_line(&self) -> String {
        let mut line = String::from("junction ready");
        if let Some(a) = self.admin_addr {
            line.push_str(&format!(" admin={a}"));
        }
        line
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    pub fn users(&self) -> &Arc<UserDb> {
        &self.users
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
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
