//! Broker configuration: the TOML file, its defaults and the command-line
//! overrides.
//!
//! Precedence, lowest first: built-in defaults, the config file, command-line
//! flags ([`Config::apply_cli`]). Every table rejects unknown keys so a typo
//! fails the start instead of being silently ignored. `conf/junction.toml`
//! lists every option at its default; a unit test keeps it equal to
//! [`Config::default`].

use crate::tls::TlsConfig;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cli::Cli;

/// Why the configuration could not be loaded. Each variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file we tried to read.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema (unknown key,
    /// wrong type).
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file we parsed.
        path: PathBuf,
        /// The TOML error; its text shows the line and column.
        source: toml::de::Error,
    },
    /// The file parsed but a value is out of range.
    #[error("invalid config file {path}: {reason}")]
    Invalid {
        /// The file we parsed.
        path: PathBuf,
        /// Which option is wrong and why.
        reason: String,
    },
}

/// The whole configuration, one field per TOML table.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[broker]`: process-wide settings.
    pub broker: BrokerConfig,
    /// `[store]`: persistence tuning.
    pub store: StoreConfig,
    /// `[admin]`: the HTTP health and metrics endpoint.
    pub admin: AdminConfig,
    /// `[mqtt]`: the MQTT listener.
    pub mqtt: MqttConfig,
    /// `[amqp]`: the AMQP 0-9-1 listener.
    pub amqp: AmqpConfig,
    /// `[stomp]`: the STOMP listener.
    pub stomp: StompConfig,
    /// `[tls]`: certificates and ports of the TLS listeners.
    pub tls: TlsConfig,
    /// `[auth]`: where logins and permissions are checked.
    pub auth: AuthConfig,
    /// `[websocket]`: MQTT and STOMP over WebSocket.
    pub websocket: crate::ws::WsConfig,
    /// `[cluster]`: membership of a cluster (docs/cluster.md).
    pub cluster: ClusterConfig,
}

/// `[cluster]`: this node's place in a cluster. What runs today is the
/// metadata group's membership and status; topology and queues are not
/// replicated yet (docs/cluster.md "Status").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Join the cluster of `nodes`; false runs the broker alone.
    pub enabled: bool,
    /// This node's name: one of `nodes`.
    pub node_name: String,
    /// Every member as `name@ip:port` (its peer listener), this node
    /// included: the same list on every node of a new cluster. After its
    /// first start a node takes its peers from the cluster's membership
    /// (which `junction cluster join/leave` change); the list is then
    /// only where a restarted node looks first.
    pub nodes: Vec<String>,
    /// This node joins a running cluster, some of whose members `nodes`
    /// lists: it never starts a cluster of its own, and waits until
    /// `junction cluster join` on a member adds it.
    pub join: bool,
    /// A file holding the cluster's shared secret (at least 16 bytes, the
    /// same on every node; a trailing newline is not part of it). Peer
    /// links prove it both ways when they open; without `peer_tls` what
    /// follows is neither encrypted nor authenticated.
    pub secret_file: PathBuf,
    /// TLS 1.3 on the peer links, with certificates both ways: each node
    /// shows its `[tls] cert` (which must allow both server and client
    /// authentication, and name its node's IP address from `nodes`) and
    /// checks the other's against `[tls] ca`.
    pub peer_tls: bool,
    /// Milliseconds between a leader's heartbeats (also the deadline of
    /// one replication call); at most a third of
    /// `election_timeout_min_ms`.
    pub heartbeat_ms: u64,
    /// A follower that hears no leader for a random time between these
    /// two (milliseconds) starts an election.
    pub election_timeout_min_ms: u64,
    /// See `election_timeout_min_ms`.
    pub election_timeout_max_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            enabled: false,
            node_name: String::new(),
            nodes: Vec::new(),
            join: false,
            secret_file: PathBuf::new(),
            peer_tls: false,
            heartbeat_ms: 250,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
        }
    }
}

/// Whether `name` may name a cluster node: letters, digits, '-', '_'
/// and '.', at least one.
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// One member of `[cluster] nodes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMember {
    /// Its name.
    pub name: String,
    /// Its peer listener.
    pub addr: std::net::SocketAddr,
}

impl ClusterConfig {
    /// The members, parsed and checked: names unique and non-empty,
    /// addresses `ip:port`, no two names with the same Raft id, and this
    /// node among them.
    pub fn members(&self) -> Result<Vec<ClusterMember>, String> {
        let mut members: Vec<ClusterMember> = Vec::new();
        for entry in &self.nodes {
            let (name, addr) = entry
                .split_once('@')
                .ok_or_else(|| format!("[cluster] nodes: {entry:?} is not name@ip:port"))?;
            let addr = addr
                .parse()
                .map_err(|_| format!("[cluster] nodes: {addr:?} in {entry:?} is not ip:port"))?;
            if !valid_node_name(name) {
                return Err(format!(
                    "[cluster] nodes: {entry:?}: a name is letters, digits, '-', '_' and '.'"
                ));
            }
            let id = junction_cluster::node_id(name);
            if let Some(other) = members
                .iter()
                .find(|m| m.name == name || junction_cluster::node_id(&m.name) == id)
            {
                return Err(format!(
                    "[cluster] nodes: {name:?} is listed twice or shares its id with {:?}",
                    other.name
                ));
            }
            members.push(ClusterMember {
                name: name.to_owned(),
                addr,
            });
        }
        if !members.iter().any(|m| m.name == self.node_name) {
            return Err(format!(
                "[cluster] node_name {:?} is not one of nodes",
                self.node_name
            ));
        }
        Ok(members)
    }

    /// Checks the section when it is enabled.
    pub fn validate(&self, in_memory: bool) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if in_memory {
            return Err("[cluster] needs a data directory: in_memory is on".to_owned());
        }
        self.members()?;
        if self.secret_file.as_os_str().is_empty() {
            return Err("[cluster] secret_file must name the shared secret's file".to_owned());
        }
        // Three heartbeats fit in the shortest election timeout, so a late
        // heartbeat alone does not start an election.
        if !(self.heartbeat_ms > 0
            && self.heartbeat_ms.saturating_mul(3) <= self.election_timeout_min_ms
            && self.election_timeout_min_ms < self.election_timeout_max_ms)
        {
            return Err("[cluster] needs 0 < 3 × heartbeat_ms <= election_timeout_min_ms < election_timeout_max_ms".to_owned());
        }
        Ok(())
    }
}

/// An authentication back-end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthBackend {
    /// The users file (`junction user`, `junction permission`).
    File,
    /// The HTTP service of `[auth.http]`.
    Http,
}

/// `[auth]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Back-ends asked in turn for a login; the first that accepts it
    /// answers that connection's permission checks too (RabbitMQ's
    /// `auth_backends`).
    pub backends: Vec<AuthBackend>,
    /// `[auth.http]`: the HTTP back-end.
    pub http: HttpAuthConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            backends: vec![AuthBackend::File],
            http: HttpAuthConfig::default(),
        }
    }
}

/// How the HTTP back-end sends its questions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpMethod {
    /// Parameters in the query string.
    Get,
    /// Parameters as an `application/x-www-form-urlencoded` body.
    Post,
}

/// `[auth.http]`: RabbitMQ's `rabbitmq_auth_backend_http` settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpAuthConfig {
    /// Asked for logins (`username`, `password`); empty refuses every login.
    pub user_path: String,
    /// Asked for vhost access (`username`, `vhost`, `ip`); empty refuses.
    pub vhost_path: String,
    /// Asked for configure / write / read (`username`, `vhost`,
    /// `resource`, `name`, `permission`); empty refuses.
    pub resource_path: String,
    /// Asked for topic write / read (those and `routing_key`,
    /// `variable_map.username|vhost|client_id`); empty asks nothing and
    /// lets every routing key through.
    pub topic_path: String,
    /// `get` or `post`.
    pub method: HttpMethod,
    /// How long an answer is kept, in seconds; 0 asks every time.
    pub cache_ttl_secs: u64,
    /// How long a question may take, in milliseconds, before it is a
    /// refusal.
    pub timeout_ms: u64,
}

impl Default for HttpAuthConfig {
    fn default() -> Self {
        HttpAuthConfig {
            user_path: String::new(),
            vhost_path: String::new(),
            resource_path: String::new(),
            topic_path: String::new(),
            method: HttpMethod::Get,
            cache_ttl_secs: 60,
            timeout_ms: 5000,
        }
    }
}

/// `[broker]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Where the RocksDB store and (by default) the users file live.
    pub data_dir: PathBuf,
    /// Use the in-memory store: nothing survives a restart. For tests and
    /// throwaway brokers.
    pub in_memory: bool,
    /// The address every listener binds to. Loopback by default so a fresh
    /// install is not reachable from the network.
    pub bind: IpAddr,
    /// Vhosts created at start if they do not exist yet. These cannot be
    /// deleted through the management API; vhosts made there (kept in the
    /// store) can.
    pub vhosts: Vec<String>,
    /// Most vhosts, configured and made at run time together.
    pub max_vhosts: usize,
    /// The users file; empty means `<data_dir>/users.toml`
    /// (see [`Config::users_path`]).
    pub users_file: PathBuf,
    /// A definitions file (RabbitMQ's format) imported at every start;
    /// empty: none (`--definitions FILE` sets it).
    pub load_definitions: PathBuf,
    /// Refuse the well-known `guest` login from any peer that is not
    /// loopback, so the default password is harmless on a network.
    pub guest_loopback_only: bool,
    /// Log filter (`tracing_subscriber::EnvFilter` syntax); `RUST_LOG` wins
    /// when it is set.
    pub log_level: String,
    /// Largest message body accepted, in bytes; adapters refuse bigger frames
    /// before buffering them.
    pub max_message_size: u64,
    /// Memory held by queued messages (bodies and a per-message footprint)
    /// above which the memory alarm blocks publishers; 0 means 40% of
    /// physical memory (RabbitMQ's default watermark).
    pub memory_high_watermark: u64,
    /// Free bytes on the data directory's file system below which the disk
    /// alarm blocks publishers (RabbitMQ's `disk_free_limit`); 0 = off.
    pub disk_free_limit: u64,
    /// How long shutdown waits for connections to close and the store to
    /// flush before giving up.
    pub shutdown_timeout_secs: u64,
    /// Most words in a routing or binding key (MQTT topic levels): topic
    /// matching costs grow with it.
    pub max_topic_levels: usize,
    /// Most queues in one vhost (every MQTT session owns one).
    pub max_queues_per_vhost: usize,
    /// Most exchanges in one vhost, the built-ins included.
    pub max_exchanges_per_vhost: usize,
    /// Most bindings in one vhost (every MQTT subscription is one).
    pub max_bindings_per_vhost: usize,
    /// Most client connections open at once, every protocol together
    /// (0: no cap); more are closed at accept.
    pub max_connections: usize,
    /// Most client connections open at once from one source address (0: no
    /// cap).
    pub max_connections_per_ip: usize,
    /// Most new connections per second from one source address (0: no
    /// cap); more are closed at accept.
    pub max_connection_rate_per_ip: u32,
    /// Most connections open at once per user, every protocol together (0:
    /// no cap); past it the login is refused (AMQP 530, MQTT CONNACK 0x97
    /// Quota exceeded / 3.1.1: 3, STOMP ERROR).
    pub max_connections_per_user: usize,
    /// Logins that may wait for a password check at once; more are refused
    /// at once (AMQP 506, MQTT 0x89 Server busy).
    pub max_pending_logins: usize,
    /// Largest first packet before login, bytes (MQTT CONNECT, AMQP frames
    /// before tune-ok, STOMP CONNECT).
    pub max_handshake_size: usize,
    /// Seconds a write to a client may make no progress before the
    /// connection is closed as a slow consumer.
    pub write_timeout_secs: u64,
    /// Persistent messages a queue keeps in memory at its head; later
    /// arrivals stay in the store until they near the head (paging).
    pub queue_head_messages: usize,
    /// The same bound in body bytes.
    pub queue_head_bytes: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            data_dir: PathBuf::from("./junction-data"),
            in_memory: false,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            vhosts: vec!["/".to_owned()],
            max_vhosts: 10_000,
            users_file: PathBuf::new(),
            load_definitions: PathBuf::new(),
            guest_loopback_only: true,
            log_level: "info".to_owned(),
            max_message_size: 128 * 1024 * 1024,
            memory_high_watermark: 0,
            disk_free_limit: 50_000_000,
            shutdown_timeout_secs: 10,
            max_topic_levels: 128,
            max_queues_per_vhost: 1_000_000,
            max_exchanges_per_vhost: 10_000,
            max_bindings_per_vhost: 5_000_000,
            max_connections: 100_000,
            max_connections_per_ip: 20_000,
            max_connection_rate_per_ip: 0,
            max_connections_per_user: 0,
            max_pending_logins: 64,
            max_handshake_size: 65_536,
            write_timeout_secs: 15,
            queue_head_messages: 2048,
            queue_head_bytes: 8 << 20,
        }
    }
}

/// `[store]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Bound of the committer's request queue: when it is full, publishers
    /// wait (the first link of the backpressure chain). At least 1.
    pub queue_capacity: usize,
    /// Most write operations the committer merges into one batch. At least 1.
    pub max_batch_ops: usize,
    /// Let concurrent batches share one WAL sync. Turning it off syncs every
    /// batch alone (slower, for measuring).
    pub group_commit: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            queue_capacity: 1024,
            max_batch_ops: 4096,
            group_commit: true,
        }
    }
}

/// `[admin]`: the HTTP health and metrics endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// TCP port on [`BrokerConfig::bind`]; 0 asks the OS for any free port.
    pub port: u16,
    /// Whether to open this listener at all.
    pub enabled: bool,
    /// Most queues with their own series in `/metrics` (the deepest
    /// first); the rest are counted in `junction_metrics_queues_omitted`.
    /// Keeps a broker with a million queues from a million-line scrape.
    pub metrics_max_queues: usize,
    /// `/metrics` asks for the credentials of a `monitoring` or
    /// `administrator` user, like the management API; `/api/health`
    /// always answers without.
    pub metrics_need_credentials: bool,
    /// Largest request body the admin endpoint reads, bytes (a definitions
    /// file is the big one); more is answered 413. RabbitMQ's
    /// `management.http.max_body_size` default.
    pub max_body_size: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            port: 15672,
            enabled: true,
            metrics_max_queues: 1000,
            metrics_need_credentials: false,
            max_body_size: 20 << 20,
        }
    }
}

/// `[mqtt]`: the MQTT listener and the adapter's limits (the adapter's own
/// settings type, so the keys are listed once).
pub use junction_mqtt::MqttSettings as MqttConfig;

/// `[amqp]`: the AMQP 0-9-1 listener and its channel limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpConfig {
    /// TCP port on [`BrokerConfig::bind`]; 0 asks the OS for any free port.
    pub port: u16,
    /// Whether to open this listener at all.
    pub enabled: bool,
    /// Most channels per connection, offered in `connection.tune` (the
    /// client may ask fewer); a channel number above it closes the
    /// connection with 530 NOT_ALLOWED. 1 to 65535.
    pub channel_max: u16,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            port: 5672,
            enabled: true,
            channel_max: 2047,
        }
    }
}
/// `[stomp]`: the STOMP listener and the adapter's limits (the adapter's
/// own settings type, so the keys are listed once).
pub use junction_stomp::StompSettings as StompConfig;

impl Config {
    /// Reads `path`, or returns the defaults when there is no path.
    ///
    /// Keys missing from the file keep their defaults; unknown keys and
    /// out-of-range values are errors that name the file.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        config.validate().map_err(|reason| ConfigError::Invalid {
            path: path.to_owned(),
            reason,
        })?;
        Ok(config)
    }

    /// Applies the command-line flags given in `cli` on top of this
    /// configuration (flags win over the file).
    pub fn apply_cli(&mut self, cli: &Cli) {
        if let Some(dir) = &cli.data_dir {
            self.broker.data_dir.clone_from(dir);
        }
        if let Some(bind) = cli.bind {
            self.broker.bind = bind;
        }
        if cli.in_memory {
            self.broker.in_memory = true;
        }
        if let Some(file) = &cli.definitions {
            self.broker.load_definitions.clone_from(file);
        }
        if let Some(port) = cli.mqtt_port {
            self.mqtt.port = port;
        }
        if let Some(port) = cli.amqp_port {
            self.amqp.port = port;
        }
        if let Some(port) = cli.stomp_port {
            self.stomp.port = port;
        }
        if let Some(port) = cli.admin_port {
            self.admin.port = port;
        }
        if let Some(port) = cli.mqtt_ws_port {
            self.websocket.mqtt_port = port;
        }
        if let Some(port) = cli.stomp_ws_port {
            self.websocket.stomp_port = port;
        }
        let tls = &mut self.tls;
        for (flag, field) in [
            (&cli.tls_cert, &mut tls.cert),
            (&cli.tls_key, &mut tls.key),
            (&cli.tls_ca, &mut tls.ca),
            (&cli.tls_crl, &mut tls.crl),
        ] {
            if let Some(path) = flag {
                field.clone_from(path);
            }
        }
        if let Some(v) = cli.tls_verify {
            tls.verify = v;
        }
        for (flag, port) in [
            (cli.amqps_port, &mut tls.amqps_port),
            (cli.mqtts_port, &mut tls.mqtts_port),
            (cli.stomps_port, &mut tls.stomps_port),
            (cli.https_port, &mut tls.https_port),
            (cli.mqtt_wss_port, &mut tls.mqtt_wss_port),
            (cli.stomp_wss_port, &mut tls.stomp_wss_port),
        ] {
            if let Some(p) = flag {
                *port = p;
            }
        }
    }

    /// The users file: `[broker] users_file`, or `<data_dir>/users.toml` when
    /// that is empty.
    pub fn users_path(&self) -> PathBuf {
        if self.broker.users_file.as_os_str().is_empty() {
            self.broker.data_dir.join("users.toml")
        } else {
            self.broker.users_file.clone()
        }
    }

    /// `[broker] shutdown_timeout_secs` as a [`Duration`].
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.broker.shutdown_timeout_secs)
    }

    /// Checks the values serde cannot: ranges that would otherwise fail
    /// later, far from the file (a zero channel capacity panics in tokio).
    fn validate(&self) -> Result<(), String> {
        self.websocket.validate()?;
        self.cluster.validate(self.broker.in_memory)?;
        if self.cluster.enabled
            && self.cluster.peer_tls
            && (!self.tls.enabled() || self.tls.ca.as_os_str().is_empty())
        {
            return Err(
                "[cluster] peer_tls needs [tls] cert, key and ca: each node's certificate and the CA that signs the others'".to_owned(),
            );
        }
        if self.broker.vhosts.is_empty() {
            return Err("[broker] vhosts must name at least one vhost".to_owned());
        }
        if self.broker.vhosts.iter().any(String::is_empty) {
            return Err("[broker] vhosts must not contain an empty name".to_owned());
        }
        if self.broker.max_handshake_size < 4096 {
            return Err(
                "[broker] max_handshake_size must be at least 4096 (AMQP's frame-min-size)"
                    .to_owned(),
            );
        }
        if self.broker.write_timeout_secs == 0 {
            return Err("[broker] write_timeout_secs must be at least 1".to_owned());
        }
        if self.broker.max_topic_levels == 0 {
            return Err("[broker] max_topic_levels must be at least 1".to_owned());
        }
        if self.broker.max_message_size == 0 {
            return Err("[broker] max_message_size must be at least 1".to_owned());
        }
        if self.store.queue_capacity == 0 {
            return Err("[store] queue_capacity must be at least 1".to_owned());
        }
        if self.store.max_batch_ops == 0 {
            return Err("[store] max_batch_ops must be at least 1".to_owned());
        }
        self.mqtt.validate()?;
        self.stomp.validate()?;
        self.tls.validate()?;
        if self.amqp.channel_max == 0 {
            return Err("[amqp] channel_max must be at least 1".to_owned());
        }
        let auth = &self.auth;
        if auth.backends.is_empty() {
            return Err("[auth] backends must name at least one back-end".to_owned());
        }
        let mut distinct = auth.backends.clone();
        distinct.sort_by_key(|b| *b as u8);
        distinct.dedup();
        if distinct.len() != auth.backends.len() {
            return Err("[auth] backends names a back-end twice".to_owned());
        }
        if auth.backends.contains(&AuthBackend::Http) {
            crate::auth::HttpAuth::new(&auth.http)?;
            if auth.http.user_path.is_empty() {
                return Err("[auth.http] user_path is needed when backends has \"http\"".to_owned());
            }
        }
        let m = &self.mqtt;
        if !self.broker.vhosts.contains(&m.vhost) {
            return Err(format!(
                "[mqtt] vhost '{}' must be one of [broker] vhosts",
                m.vhost
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    const SHIPPED: &str = include_str!("../../../conf/junction.toml");

    fn write_temp(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("junction.toml");
        std::fs::write(&path, text).expect("write config");
        (dir, path)
    }

    #[test]
    fn shipped_conf_file_equals_the_defaults() {
        let parsed: Config = toml::from_str(SHIPPED).expect("conf/junction.toml parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn defaults_are_the_documented_values() {
        let c = Config::default();
        assert_eq!(c.broker.data_dir, PathBuf::from("./junction-data"));
        assert!(!c.broker.in_memory);
        assert_eq!(c.broker.bind, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(c.broker.vhosts, vec!["/".to_owned()]);
        assert_eq!(c.broker.users_file, PathBuf::new());
        assert!(c.broker.guest_loopback_only);
        assert_eq!(c.broker.log_level, "info");
        assert_eq!(c.broker.max_message_size, 134_217_728);
        assert_eq!(c.broker.shutdown_timeout_secs, 10);
        assert_eq!(c.store.queue_capacity, 1024);
        assert_eq!(c.store.max_batch_ops, 4096);
        assert!(c.store.group_commit);
        assert_eq!((c.admin.port, c.admin.enabled), (15672, true));
        assert_eq!((c.mqtt.port, c.mqtt.enabled), (1883, true));
        assert_eq!((c.amqp.port, c.amqp.enabled), (5672, true));
        assert_eq!((c.stomp.port, c.stomp.enabled), (61613, true));
    }

    #[test]
    fn no_path_loads_the_defaults() {
        assert_eq!(Config::load(None).expect("defaults"), Config::default());
    }

    #[test]
    fn partial_table_keeps_the_other_defaults_of_that_table() {
        let (_dir, path) =
            write_temp("[stomp]\nenabled = false\n[broker]\nvhosts = [\"/\", \"iot\"]\n");
        let c = Config::load(Some(&path)).expect("loads");
        assert_eq!((c.stomp.port, c.stomp.enabled), (61613, false));
        assert_eq!(c.broker.vhosts, vec!["/".to_owned(), "iot".to_owned()]);
        assert_eq!(c.broker.log_level, "info");
        assert_eq!(c.mqtt, MqttConfig::default());
    }

    #[test]
    fn unknown_key_is_an_error_naming_the_file_and_the_key() {
        let (_dir, path) = write_temp("[broker]\ndata_dri = \"x\"\n");
        let err = Config::load(Some(&path)).expect_err("typo must fail");
        let text = err.to_string();
        assert!(matches!(err, ConfigError::Parse { .. }), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("data_dri"), "{text}");
    }

    #[test]
    fn unknown_table_is_an_error() {
        let (_dir, path) = write_temp("[kafka]\nport = 9092\n");
        assert!(matches!(
            Config::load(Some(&path)),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn missing_file_is_a_read_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("absent.toml");
        let err = Config::load(Some(&path)).expect_err("absent file");
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("absent.toml"), "{err}");
    }

    #[test]
    fn zero_queue_capacity_is_rejected() {
        let (_dir, path) = write_temp("[store]\nqueue_capacity = 0\n");
        let err = Config::load(Some(&path)).expect_err("zero capacity");
        assert_eq!(
            err.to_string(),
            format!(
                "invalid config file {}: [store] queue_capacity must be at least 1",
                path.display()
            )
        );
    }

    #[test]
    fn cli_flags_override_the_file() {
        let (_dir, path) =
            write_temp("[broker]\ndata_dir = \"/from/file\"\n[mqtt]\nport = 1\n[amqp]\nport = 2\n");
        let mut c = Config::load(Some(&path)).expect("loads");
        let cli = Cli::parse_from([
            "junction",
            "--data-dir",
            "/from/cli",
            "--bind",
            "::1",
            "--mqtt-port",
            "11883",
            "--stomp-port",
            "3",
            "--admin-port",
            "0",
            "--in-memory",
        ]);
        c.apply_cli(&cli);
        assert_eq!(c.broker.data_dir, PathBuf::from("/from/cli"));
        assert_eq!(c.broker.bind, "::1".parse::<IpAddr>().expect("ip"));
        assert!(c.broker.in_memory);
        assert_eq!(c.mqtt.port, 11883);
        assert_eq!(c.amqp.port, 2, "no flag: the file's value stays");
        assert_eq!(c.stomp.port, 3);
        assert_eq!(c.admin.port, 0);
    }

    #[test]
    fn users_path_defaults_into_the_data_dir() {
        let mut c = Config::default();
        c.broker.data_dir = PathBuf::from("/data");
        assert_eq!(c.users_path(), PathBuf::from("/data/users.toml"));
        c.broker.users_file = PathBuf::from("/etc/junction/users.toml");
        assert_eq!(c.users_path(), PathBuf::from("/etc/junction/users.toml"));
    }
}
