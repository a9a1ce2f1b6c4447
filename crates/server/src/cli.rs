//! The command line of the `junction` binary.
//!
//! Owns parsing only: the flags that override the config file (see
//! [`crate::config::Config::apply_cli`]) and the `user` subcommand that edits
//! the users file offline (carried out by [`crate::users::run_user_command`]).
//! With no subcommand the binary runs the broker.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// `junction [FLAGS] [COMMAND]`.
///
/// Every flag is global, so it may be given before or after a subcommand
/// (`junction --data-dir d user list` and `junction user list --data-dir d`
/// mean the same); the `user` commands need `--config`/`--data-dir` to find
/// the users file.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(
    name = "junction",
    version,
    about = "Junction multi-protocol message broker"
)]
pub struct Cli {
    /// Config file (TOML). Without it the built-in defaults are used.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Overrides `[broker] data_dir`: where the store and the users file live.
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Overrides `[broker] bind`: the address every listener binds to.
    #[arg(long, global = true, value_name = "ADDR")]
    pub bind: Option<IpAddr>,

    /// Overrides `[mqtt] port`.
    #[arg(long, global = true, value_name = "N")]
    pub mqtt_port: Option<u16>,

    /// Overrides `[amqp] port`.
    #[arg(long, global = true, value_name = "N")]
    pub amqp_port: Option<u16>,

    /// Overrides `[stomp] port`.
    #[arg(long, global = true, value_name = "N")]
    pub stomp_port: Option<u16>,

    /// Overrides `[tls] cert`: the server's certificate chain (PEM). With
    /// it, the TLS listeners open.
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// Overrides `[tls] key`: the server's private key (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Overrides `[tls] ca`: the CAs that sign client certificates (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// Overrides `[tls] crl`: revoked client certificates (PEM CRLs).
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_crl: Option<PathBuf>,

    /// Overrides `[tls] verify`: client certificates none, optional or required.
    #[arg(long, global = true, value_name = "MODE")]
    pub tls_verify: Option<crate::tls::Verify>,

    /// Overrides `[tls] amqps_port`.
    #[arg(long, global = true, value_name = "N")]
    pub amqps_port: Option<u16>,

    /// Overrides `[tls] mqtts_port`.
    #[arg(long, global = true, value_name = "N")]
    pub mqtts_port: Option<u16>,

    /// Overrides `[tls] stomps_port`.
    #[arg(long, global = true, value_name = "N")]
    pub stomps_port: Option<u16>,

    /// Overrides `[tls] https_port`: the admin listener over HTTPS.
    #[arg(long, global = true, value_name = "N")]
    pub https_port: Option<u16>,

    /// Overrides `[websocket] mqtt_port`: MQTT over WebSocket.
    #[arg(long, global = true, value_name = "N")]
    pub mqtt_ws_port: Option<u16>,

    /// Overrides `[websocket] stomp_port`: STOMP over WebSocket.
    #[arg(long, global = true, value_name = "N")]
    pub stomp_ws_port: Option<u16>,

    /// Overrides `[tls] mqtt_wss_port`: MQTT over WebSocket over TLS.
    #[arg(long, global = true, value_name = "N")]
    pub mqtt_wss_port: Option<u16>,

    /// Overrides `[tls] stomp_wss_port`: STOMP over WebSocket over TLS.
    #[arg(long, global = true, value_name = "N")]
    pub stomp_wss_port: Option<u16>,

    /// Overrides `[admin] port`; 0 asks the OS for any free port (tests).
    #[arg(long, global = true, value_name = "N")]
    pub admin_port: Option<u16>,

    /// Sets `[broker] in_memory`: keep everything in memory, nothing on disk
    /// survives a restart.
    #[arg(long, global = true)]
    pub in_memory: bool,

    /// Sets `[broker] load_definitions`: a definitions file (RabbitMQ's
    /// format) to import at start.
    #[arg(long, global = true, value_name = "FILE")]
    pub definitions: Option<PathBuf>,

    /// What to do; `None` runs the broker.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// A subcommand: an offline administrative task instead of running the broker.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Manage the users file (a running broker reads it again when it
    /// changes).
    #[command(subcommand)]
    User(UserCommand),
    /// Manage users' configure / write / read permissions per vhost.
    #[command(subcommand)]
    Permission(PermissionCommand),
    /// Manage users' topic permissions (routing keys of a topic exchange,
    /// MQTT topics, STOMP /topic/ destinations).
    #[command(subcommand)]
    TopicPermission(TopicPermissionCommand),
    /// Queues of a running broker (through its management API).
    Queues {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        action: QueuesAction,
    },
    /// Exchanges of a running broker.
    Exchanges {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        action: ListAction,
    },
    /// Bindings of a running broker.
    Bindings {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        action: ListAction,
    },
    /// Connections of a running broker, every protocol.
    Connections {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        action: ConnectionsAction,
    },
    /// MQTT clients and their sessions on a running broker.
    Mqtt {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        action: MqttAction,
    },
    /// Publish one message through a running broker's management API.
    Publish {
        #[command(flatten)]
        remote: Remote,
        /// The exchange ("" or amq.default: the default exchange).
        exchange: String,
        /// The routing key (a queue's name on the default exchange).
        routing_key: String,
        /// The body, as text.
        payload: String,
        /// The vhost.
        #[arg(long, default_value = "/")]
        vhost: String,
    },
    /// Get messages from a queue of a running broker.
    Get {
        #[command(flatten)]
        remote: Remote,
        /// The queue.
        queue: String,
        /// How many at most.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// peek (leaves them, not marked redelivered), ack_requeue_true
        /// (returns them, redelivered), ack_requeue_false (takes them).
        #[arg(long, default_value = "peek")]
        ackmode: String,
        /// The vhost.
        #[arg(long, default_value = "/")]
        vhost: String,
    },
    /// A running broker's overview, node and alarms.
    Status {
        #[command(flatten)]
        remote: Remote,
    },
    /// The cluster a running node belongs to (`[cluster]`).
    Cluster {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Export or import a running broker's definitions (RabbitMQ's format).
    Definitions {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        action: DefinitionsAction,
    },
}

/// `junction definitions ...`.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum DefinitionsAction {
    /// Print the definitions as JSON (or write them to FILE).
    Export {
        /// Where to write them; stdout when absent.
        file: Option<PathBuf>,
    },
    /// Import a definitions file (one exported by Junction or RabbitMQ).
    Import {
        /// The file.
        file: PathBuf,
    },
}

/// How the operator commands reach a running broker (the flags may come
/// after the action: `junction queues list --url ...`).
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct Remote {
    /// The management API's address; default http://<[broker] bind>:<[admin] port>
    /// from the configuration.
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// The user to log in as.
    #[arg(long, global = true, default_value = "guest")]
    pub user: String,
    /// Its password.
    #[arg(long, global = true, default_value = "guest")]
    pub password: String,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `junction queues ...`.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum QueuesAction {
    /// List queues with their message counts.
    List {
        /// Only this vhost's.
        #[arg(long)]
        vhost: Option<String>,
    },
    /// Remove every ready message of a queue.
    Purge {
        name: String,
        #[arg(long, default_value = "/")]
        vhost: String,
    },
    /// Delete a queue and its messages.
    Delete {
        name: String,
        #[arg(long, default_value = "/")]
        vhost: String,
    },
}

/// `junction cluster ...`.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum ClusterAction {
    /// Every member: linked to this node or not, which one leads, this
    /// node's role and term, and each member's lag (entries behind the
    /// leader's log; only the leader knows it, so ask the leader's admin
    /// address for lags).
    Status,
    /// Move quorum queues' leaders until every reachable node leads about
    /// as many (writes to a queue being moved wait about one election
    /// timeout; its consumers on the old leader are cancelled).
    Rebalance,
    /// Add a node, started with `[cluster] join = true`, to the cluster
    /// (it catches up as a learner, then votes; every quorum queue's
    /// group then takes it as a member).
    Join {
        /// The node's name and peer listener: name@ip:port.
        node: String,
    },
    /// Remove a stopped member from the cluster for good (RabbitMQ's
    /// `forget_cluster_node`): its votes, its membership of every quorum
    /// queue's group, its MQTT client-id claims, and its classic queues,
    /// whose messages were on it.
    Leave {
        /// The member's name.
        name: String,
    },
}

/// `junction exchanges list`, `junction bindings list`.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum ListAction {
    /// List them.
    List {
        /// Only this vhost's.
        #[arg(long)]
        vhost: Option<String>,
    },
}

/// `junction connections ...`.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum ConnectionsAction {
    /// List open connections.
    List,
    /// Close one (its name as `connections list` shows it).
    Close {
        name: String,
        /// Told to the client where its protocol can say it.
        #[arg(long, default_value = "Closed via the junction command")]
        reason: String,
    },
}

/// `junction mqtt ...`.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum MqttAction {
    /// List MQTT clients and their sessions, connected or parked.
    Clients,
}

/// `junction permission ...`: RabbitMQ's `set_permissions` and friends.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum PermissionCommand {
    /// Set USER's regular expressions on VHOST, replacing any ("" allows
    /// nothing, ".*" everything; lookahead such as "^(?!secret\.).*" works).
    Set {
        /// The user.
        user: String,
        /// The vhost.
        vhost: String,
        /// Exchange and queue names the user may declare and delete.
        configure: String,
        /// Names the user may publish to (exchanges) and bind to (queues).
        write: String,
        /// Names the user may consume from (queues) and bind from
        /// (exchanges).
        read: String,
    },
    /// Take USER's permissions on VHOST away (the vhost can no longer be used).
    Clear {
        /// The user.
        user: String,
        /// The vhost.
        vhost: String,
    },
    /// List permissions: user, vhost, configure, write, read (tab-separated).
    List {
        /// Only this user's.
        user: Option<String>,
        /// Only on this vhost.
        #[arg(long = "vhost", value_name = "V")]
        vhost: Option<String>,
    },
}

/// `junction topic-permission ...`: RabbitMQ's `set_topic_permissions`.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum TopicPermissionCommand {
    /// Set USER's routing-key patterns on the topic EXCHANGE of VHOST;
    /// "{username}", "{vhost}" and "{client_id}" stand for the
    /// connection's values.
    Set {
        /// The user.
        user: String,
        /// The vhost.
        vhost: String,
        /// The topic exchange (MQTT and STOMP /topic/ use amq.topic).
        exchange: String,
        /// Routing keys the user may publish with.
        write: String,
        /// Binding keys the user may subscribe with.
        read: String,
    },
    /// Remove USER's topic permissions in VHOST, on EXCHANGE or on all.
    Clear {
        /// The user.
        user: String,
        /// The vhost.
        vhost: String,
        /// Only this exchange's.
        exchange: Option<String>,
    },
    /// List topic permissions: user, vhost, exchange, write, read.
    List {
        /// Only this user's.
        user: Option<String>,
        /// Only on this vhost.
        #[arg(long = "vhost", value_name = "V")]
        vhost: Option<String>,
    },
}

/// `junction user ...`: edits the users file named by the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum UserCommand {
    /// Add a user.
    Add {
        /// The user's login name.
        name: String,
        /// The password; read as one line from stdin when absent, so it
        /// need not appear in the process list or shell history.
        #[arg(long)]
        password: Option<String>,
        /// A vhost the user may use, with ".*" permissions (narrow them
        /// with `junction permission set`); repeat the flag or separate
        /// with commas. Defaults to "/" when not given.
        #[arg(long = "vhost", value_name = "V", value_delimiter = ',')]
        vhosts: Vec<String>,
        /// Free-form tags (e.g. "administrator"); repeat or separate with
        /// commas.
        #[arg(long, value_name = "T", value_delimiter = ',')]
        tags: Vec<String>,
    },
    /// Delete a user.
    Delete {
        /// The user's login name.
        name: String,
    },
    /// List users with their vhosts and tags (never their password hashes).
    List,
    /// Change a user's password.
    Passwd {
        /// The user's login name.
        name: String,
        /// The new password; read as one line from stdin when absent.
        #[arg(long)]
        password: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Cli {
        match Cli::try_parse_from(args) {
            Ok(cli) => cli,
            Err(e) => panic!("{args:?} did not parse: {e}"),
        }
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_arguments_runs_the_broker_with_no_overrides() {
        let cli = parse(&["junction"]);
        assert_eq!(
            cli,
            Cli {
                config: None,
                data_dir: None,
                bind: None,
                mqtt_port: None,
                amqp_port: None,
                stomp_port: None,
                admin_port: None,
                tls_cert: None,
                tls_key: None,
                tls_ca: None,
                tls_crl: None,
                tls_verify: None,
                amqps_port: None,
                mqtts_port: None,
                stomps_port: None,
                https_port: None,
                mqtt_ws_port: None,
                stomp_ws_port: None,
                mqtt_wss_port: None,
                stomp_wss_port: None,
                in_memory: false,
                definitions: None,
                command: None,
            }
        );
    }

    #[test]
    fn every_flag_parses_without_a_subcommand() {
        let cli = parse(&[
            "junction",
            "--config",
            "j.toml",
            "--data-dir",
            "/var/lib/junction",
            "--bind",
            "0.0.0.0",
            "--mqtt-port",
            "11883",
            "--amqp-port",
            "15672",
            "--stomp-port",
            "16613",
            "--admin-port",
            "0",
            "--in-memory",
        ]);
        assert_eq!(cli.config, Some(PathBuf::from("j.toml")));
        assert_eq!(cli.data_dir, Some(PathBuf::from("/var/lib/junction")));
        assert_eq!(cli.bind, Some(IpAddr::from([0, 0, 0, 0])));
        assert_eq!(cli.mqtt_port, Some(11883));
        assert_eq!(cli.amqp_port, Some(15672));
        assert_eq!(cli.stomp_port, Some(16613));
        assert_eq!(cli.admin_port, Some(0));
        assert!(cli.in_memory);
        assert_eq!(cli.command, None);
    }

    #[test]
    fn global_flags_are_accepted_after_the_subcommand() {
        let cli = parse(&["junction", "user", "list", "--data-dir", "d"]);
        assert_eq!(cli.data_dir, Some(PathBuf::from("d")));
        assert_eq!(cli.command, Some(Command::User(UserCommand::List)));
    }

    #[test]
    fn user_add_collects_repeated_and_comma_separated_vhosts_and_tags() {
        let cli = parse(&[
            "junction",
            "user",
            "add",
            "alice",
            "--password",
            "s3cret",
            "--vhost",
            "/",
            "--vhost",
            "prod,test",
            "--tags",
            "administrator",
        ]);
        assert_eq!(
            cli.command,
            Some(Command::User(UserCommand::Add {
                name: "alice".into(),
                password: Some("s3cret".into()),
                vhosts: vec!["/".into(), "prod".into(), "test".into()],
                tags: vec!["administrator".into()],
            }))
        );
    }

    #[test]
    fn user_passwd_without_password_leaves_it_to_stdin() {
        let cli = parse(&["junction", "user", "passwd", "bob"]);
        assert_eq!(
            cli.command,
            Some(Command::User(UserCommand::Passwd {
                name: "bob".into(),
                password: None,
            }))
        );
    }

    #[test]
    fn permission_commands_take_rabbitmq_argument_order() {
        let cli = parse(&[
            "junction",
            "permission",
            "set",
            "bob",
            "/",
            "",
            "^bob\\.",
            ".*",
        ]);
        assert_eq!(
            cli.command,
            Some(Command::Permission(PermissionCommand::Set {
                user: "bob".into(),
                vhost: "/".into(),
                configure: String::new(),
                write: "^bob\\.".into(),
                read: ".*".into(),
            }))
        );
        let cli = parse(&[
            "junction",
            "topic-permission",
            "clear",
            "bob",
            "/",
            "--data-dir",
            "d",
        ]);
        assert_eq!(
            cli.command,
            Some(Command::TopicPermission(TopicPermissionCommand::Clear {
                user: "bob".into(),
                vhost: "/".into(),
                exchange: None,
            }))
        );
    }

    #[test]
    fn bad_port_is_rejected() {
        assert!(Cli::try_parse_from(["junction", "--mqtt-port", "70000"]).is_err());
    }
}
