//! Access control, RabbitMQ's model: once a connection has logged in and
//! picked its vhost, every operation asks for one [`Permission`] on one
//! [`Resource`]. The adapters ask through an [`Access`], which the server's
//! [`Authenticator`] answers (users file, HTTP back-end, or a chain of both).
//!
//! - configure: declare or delete an exchange or queue;
//! - write: publish to an exchange, bind a queue (the destination);
//! - read: consume or get from a queue, bind from an exchange (the source);
//! - topic write / read: the routing key of a publish to, or a binding
//!   from, a topic exchange (MQTT topics and STOMP `/topic/` destinations
//!   in their AMQP form).
//!
//! An [`Access`] remembers its last allowed check of each resource kind (a
//! publisher sending to one exchange, and to one topic on it, asks once)
//! until the authenticator's epoch moves, which it
//! does whenever the users file or the permissions change, so a running
//! connection sees a change at its next operation.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use crate::Authenticator;

/// A boxed, sendable future: what the authenticator's slow (network)
/// answers return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The exchange name permissions use for the default exchange, as RabbitMQ.
pub const DEFAULT_EXCHANGE: &str = "amq.default";

/// One of RabbitMQ's three permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Declare, delete.
    Configure,
    /// Publish to, bind to.
    Write,
    /// Consume from, bind from.
    Read,
}

impl Permission {
    /// "configure", "write" or "read" (RabbitMQ's and the HTTP back-end's
    /// word).
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Configure => "configure",
            Permission::Write => "write",
            Permission::Read => "read",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a permission is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource<'a> {
    /// An exchange by name; "" is the default exchange (checked as
    /// [`DEFAULT_EXCHANGE`]).
    Exchange(&'a str),
    /// A queue by name.
    Queue(&'a str),
    /// A routing key of a topic exchange.
    Topic {
        /// The topic exchange.
        exchange: &'a str,
        /// The routing key (a publish) or binding key (a subscription).
        routing_key: &'a str,
    },
}

impl Resource<'_> {
    /// The name permissions match: the exchange or queue name, or the
    /// routing key of a topic.
    pub fn name(&self) -> &str {
        match self {
            Resource::Exchange("") => DEFAULT_EXCHANGE,
            Resource::Exchange(n) | Resource::Queue(n) => n,
            Resource::Topic { routing_key, .. } => routing_key,
        }
    }

    /// "exchange", "queue" or "topic" (the HTTP back-end's `resource`).
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Exchange(_) => "exchange",
            Resource::Queue(_) => "queue",
            Resource::Topic { .. } => "topic",
        }
    }

    fn kind_code(&self) -> u8 {
        match self {
            Resource::Exchange(_) => 0,
            Resource::Queue(_) => 1,
            Resource::Topic { .. } => 2,
        }
    }

    fn second(&self) -> &str {
        match self {
            Resource::Topic { exchange, .. } => exchange,
            _ => "",
        }
    }
}

impl fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Topic {
                exchange,
                routing_key,
            } => write!(f, "topic '{routing_key}' in exchange '{exchange}'"),
            other => write!(f, "{} '{}'", other.kind(), other.name()),
        }
    }
}

/// Who is asking: the logged-in user on one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user name.
    pub user: String,
    /// The vhost the connection uses.
    pub vhost: String,
    /// The MQTT client id; empty for the other protocols. Topic patterns'
    /// `{client_id}` stands for it.
    pub client_id: String,
    /// The client's address.
    pub peer: IpAddr,
    /// The authentication back-end that accepted the login; it answers
    /// the permission checks too (see [`Login`]).
    pub backend: u8,
}

/// A successful login: which back-end of the chain accepted it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Login {
    /// Index of the back-end in the server's chain (0 for a single one).
    pub backend: u8,
}

/// A refused operation; its text is RabbitMQ's (`write access to exchange
/// 'x' in vhost '/' refused for user 'bob'`), which AMQP sends as 403's
/// reply text and STOMP in its ERROR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied(pub String);

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One allowed check: permission, name, exchange (for a topic).
struct Remembered {
    perm: Permission,
    name: String,
    second: String,
}

/// Most distinct denials logged per connection: a client retrying one
/// refused operation logs it once; one trying many names cannot flood.
const MAX_LOGGED: usize = 64;

/// One connection's permission checks.
pub struct Access {
    auth: Arc<dyn Authenticator>,
    who: Principal,
    /// What the checks remembered; made by the first check (an idle
    /// connection asks nothing, and keeps this small).
    memo: Option<Box<Memo>>,
}

/// The answers a connection's checks remember.
#[derive(Default)]
struct Memo {
    /// The authenticator's epoch `last` was answered in.
    epoch: u64,
    /// The last allowed check of each resource kind (exchange, queue,
    /// topic): an MQTT or AMQP publish asks for an exchange and then a
    /// topic, and both are remembered. The strings are reused, so a
    /// publisher changing topics does not allocate per message.
    last: [Option<Remembered>; 3],
    /// Whether the user has topic rules on the last exchange asked about
    /// (the epoch it was answered in, the exchange, the answer).
    topic_rules: Option<(u64, String, bool)>,
    /// Denials already logged.
    logged: HashSet<(Permission, u8, String, String)>,
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Access")
            .field("who", &self.who)
            .finish_non_exhaustive()
    }
}

impl Access {
    /// The checks for `who`, once its vhost access is granted; None when
    /// the user may not use the vhost (logged).
    pub async fn open(auth: Arc<dyn Authenticator>, who: Principal) -> Option<Access> {
        if !auth.vhost_access(&who).await {
            tracing::info!(user = %who.user, vhost = %who.vhost, "vhost access refused");
            return None;
        }
        Some(Access {
            auth,
            who,
            memo: None,
        })
    }

    /// Who this connection is.
    pub fn principal(&self) -> &Principal {
        &self.who
    }

    /// Asks for `perm` on `what`: Ok, or the denial (logged once per
    /// connection and resource).
    pub async fn check(&mut self, perm: Permission, what: Resource<'_>) -> Result<(), Denied> {
        let epoch = self.auth.access_epoch();
        let memo = self.memo.get_or_insert_with(|| {
            Box::new(Memo {
                epoch,
                ..Memo::default()
            })
        });
        if epoch != memo.epoch {
            memo.epoch = epoch;
            memo.last = [None, None, None];
        }
        let slot = &mut memo.last[usize::from(what.kind_code())];
        if let Some(r) = slot
            && r.perm == perm
            && r.name == what.name()
            && r.second == what.second()
        {
            return Ok(());
        }
        let allowed = match self.auth.authorize_fast(&self.who, perm, &what) {
            Some(v) => v,
            None => self.auth.authorize(&self.who, perm, what).await,
        };
        let memo = self.memo.get_or_insert_with(Box::default);
        if allowed {
            let slot = &mut memo.last[usize::from(what.kind_code())];
            match slot {
                Some(r) => {
                    r.perm = perm;
                    r.name.clear();
                    r.name.push_str(what.name());
                    r.second.clear();
                    r.second.push_str(what.second());
                }
                None => {
                    *slot = Some(Remembered {
                        perm,
                        name: what.name().to_string(),
                        second: what.second().to_string(),
                    })
                }
            }
            return Ok(());
        }
        let key = (
            perm,
            what.kind_code(),
            what.name().to_string(),
            what.second().to_string(),
        );
        let denied = Denied(format!(
            "{perm} access to {what} in vhost '{}' refused for user '{}'",
            self.who.vhost, self.who.user
        ));
        if memo.logged.len() < MAX_LOGGED && memo.logged.insert(key) {
            tracing::warn!(
                user = %self.who.user,
                vhost = %self.who.vhost,
                peer = %self.who.peer,
                permission = perm.as_str(),
                resource = %what,
                "access refused"
            );
        }
        Err(denied)
    }

    /// Asks for topic `perm` on `routing_key` of `exchange`, which the
    /// caller knows to be a topic exchange; a user with no topic rules for
    /// it is allowed without asking further.
    pub async fn check_topic(
        &mut self,
        perm: Permission,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), Denied> {
        if !self.has_topic_rules(exchange) {
            return Ok(());
        }
        self.check(
            perm,
            Resource::Topic {
                exchange,
                routing_key,
            },
        )
        .await
    }

    /// Whether topic checks may apply to `exchange` for this user (so the
    /// caller looks up the exchange's kind only then).
    /// Remembered for the last exchange asked about until the epoch moves:
    /// it is asked once per publish.
    pub fn has_topic_rules(&mut self, exchange: &str) -> bool {
        let epoch = self.auth.access_epoch();
        if let Some((e, x, rules)) = self.memo.as_ref().and_then(|m| m.topic_rules.as_ref())
            && *e == epoch
            && x == exchange
        {
            return *rules;
        }
        let rules = self.auth.topic_rules(&self.who, exchange);
        let memo = self.memo.get_or_insert_with(Box::default);
        match &mut memo.topic_rules {
            // The exchange's name is reused (no allocation per publish
            // when a publisher alternates exchanges).
            Some((e, x, r)) => {
                *e = epoch;
                x.clear();
                x.push_str(exchange);
                *r = rules;
            }
            None => memo.topic_rules = Some((epoch, exchange.to_string(), rules)),
        }
        rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Allows everything and counts the questions.
    struct Counting(
        std::sync::atomic::AtomicUsize,
        std::sync::atomic::AtomicUsize,
    );

    impl Authenticator for Counting {
        fn authenticate(&self, _: &str, _: &str, _: IpAddr) -> Result<Login, String> {
            Ok(Login::default())
        }
        fn vhost_access<'a>(&'a self, _: &'a Principal) -> BoxFuture<'a, bool> {
            Box::pin(std::future::ready(true))
        }
        fn authorize_fast(&self, _: &Principal, _: Permission, _: &Resource<'_>) -> Option<bool> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Some(true)
        }
        fn topic_rules(&self, _: &Principal, _: &str) -> bool {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            true
        }
    }

    #[tokio::test]
    async fn a_publisher_asking_for_an_exchange_and_a_topic_asks_each_once() {
        let auth = Arc::new(Counting(
            std::sync::atomic::AtomicUsize::new(0),
            std::sync::atomic::AtomicUsize::new(0),
        ));
        let who = Principal {
            user: "u".into(),
            vhost: "/".into(),
            client_id: String::new(),
            peer: IpAddr::from([127, 0, 0, 1]),
            backend: 0,
        };
        let dynauth: Arc<dyn Authenticator> = auth.clone();
        let mut access = Access::open(dynauth, who).await.expect("open");
        for _ in 0..100 {
            access
                .check(Permission::Write, Resource::Exchange("amq.topic"))
                .await
                .expect("exchange");
            access
                .check_topic(Permission::Write, "amq.topic", "a.b")
                .await
                .expect("topic");
        }
        assert_eq!(auth.0.load(std::sync::atomic::Ordering::Relaxed), 2);
        // Whether topic rules apply is asked once too.
        assert_eq!(auth.1.load(std::sync::atomic::Ordering::Relaxed), 1);
        // A new topic is a new question; the exchange is still remembered.
        access
            .check_topic(Permission::Write, "amq.topic", "a.c")
            .await
            .expect("topic");
        access
            .check(Permission::Write, Resource::Exchange("amq.topic"))
            .await
            .expect("exchange");
        assert_eq!(auth.0.load(std::sync::atomic::Ordering::Relaxed), 3);
    }

    #[test]
    fn resources_read_as_rabbitmq_words() {
        assert_eq!(Resource::Exchange("").to_string(), "exchange 'amq.default'");
        assert_eq!(Resource::Queue("q1").to_string(), "queue 'q1'");
        assert_eq!(
            Resource::Topic {
                exchange: "amq.topic",
                routing_key: "a.b"
            }
            .to_string(),
            "topic 'a.b' in exchange 'amq.topic'"
        );
        assert_eq!(Permission::Configure.to_string(), "configure");
    }
}
