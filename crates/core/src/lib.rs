//! junction-core: Junction's one message model, shared by every protocol
//! adapter. No sockets, no wire formats.
//!
//! - [`ids`]: newtype ids (messages, queues, connections, consumers, deliveries).
//! - [`value`]: typed header values (the AMQP field-table types).
//! - [`message`]: the immutable [`Message`] and its properties.
//! - [`interop`]: what the adapters share when a message crosses protocols:
//!   names, reply addresses, header values as text (docs/interop.md).
//! - [`codec`]: binary encoding of durable records.
//! - `records` (feature `fuzzing` only): the broker's store records, opened
//!   to the fuzz targets in `fuzz/`.
//! - [`topic`]: the topic exchange's trie and pattern matching.
//! - [`exchange`]: exchange and binding definitions, headers matching.
//! - [`topology`]: one vhost's exchanges and bindings, and routing.
//! - [`queue`]: one queue's state machine and its declared arguments.
//! - [`consumer`]: consumer specs, credit, deliveries.
//! - [`broker`]: vhosts, the publish and consume paths, recovery, shutdown.
//! - [`retained`]: last-message-per-key, for MQTT.
//! - [`state`]: durable adapter state (MQTT sessions).
//! - [`io`]: the write deadline and the close linger every adapter uses.
//! - [`error`]: the core's error type.
//! - [`access`]: permissions per operation (RabbitMQ's configure, write,
//!   read and topic checks), asked through [`access::Access`].
//! - [`Authenticator`]: the seam through which adapters check logins and
//!   permissions.

pub mod access;
pub mod broker;
pub mod codec;
pub mod consumer;
pub mod error;
pub mod exchange;
pub mod ids;
pub mod interop;
pub mod io;
pub mod message;
pub mod queue;
pub mod retained;
pub mod state;
pub mod topic;
pub mod topology;
pub mod value;

/// A hash map for the per-message path: foldhash instead of SipHash
/// (several times faster on short names), still seeded at random per
/// process so client-chosen names cannot be aimed at one bucket.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// The set form of [`FastMap`].
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// The store records' encoders and decoders (topology records in `meta`,
/// queue entries and their keys, retained keys), public only for the fuzz
/// targets in `fuzz/` (feature `fuzzing`); the broker reaches them as
/// `broker::records`. Messages are [`codec`]'s.
#[cfg(feature = "fuzzing")]
pub mod records {
    pub use crate::broker::records::{
        decode_binding, decode_entry, decode_exchange, decode_queue, decode_retained_key,
        encode_binding, encode_entry, encode_exchange, encode_queue, entry_key, retained_key,
        split_entry_key,
    };
}

pub use access::{Access, Denied, Login, Permission, Principal, Resource};
pub use broker::{
    AppliedFuture, Broker, BrokerConfig, BrokerStats, CallFuture, ClientClaim, ClientSessions,
    ConnectionDetails, ConnectionGuard, ConnectionSnapshot, ConsumerHandle, ConsumerSummary,
    ControlOp, EnqueueFuture, Forgotten, ForwardAnswer, ForwardFuture, Forwarded, Forwarder, GetOk,
    HandOverFuture, Limits, MemoryCharge, MetaFuture, MetaIndexFuture, MetaLog, MetaOp, PeerCall,
    PeerReply, PolicySource, Published, Queue, QueueInfo, QueueStats, QueueSummary, QuorumLog,
    QuorumQueue, Records, RemoteQueue, Shipped, TakenSession, VhostInfo, is_quorum, quorum_key,
};
pub use consumer::{ConsumerEvent, ConsumerSpec, Credit, Delivery};
pub use error::CoreError;
pub use exchange::{Binding, Destination, ExchangeDef, ExchangeKind};
pub use ids::{ConnectionId, ConsumerId, DeliveryTag, MessageId, QueueId};
pub use message::{Message, Origin, Properties, Protocol};
pub use queue::args::{Overflow, QueueArgs, QueueDef, QueueType};
pub use queue::{DeathReason, Settle};
pub use state::StateWrites;
pub use value::{FieldTable, FieldValue};

/// Checks logins and permissions for the protocol adapters. The server
/// implements it over its users file (and an HTTP back-end), so neither the
/// core nor the adapters know how users are stored.
pub trait Authenticator: Send + Sync + 'static {
    /// Checks a user name and password from `peer`. May be slow (password
    /// hashing, a network call): adapters call it on a blocking thread.
    fn authenticate(
        &self,
        user: &str,
        password: &str,
        peer: std::net::IpAddr,
    ) -> Result<Login, String>;
    /// Answers without the slow check when it can (a login verified
    /// before, a refusal that needs no hashing); None sends the caller to
    /// [`Authenticator::authenticate`] on a blocking thread.
    fn authenticate_fast(
        &self,
        _user: &str,
        _password: &str,
        _peer: std::net::IpAddr,
    ) -> Option<Result<Login, String>> {
        None
    }
    /// Whether `user` exists (a login without a password, by a verified
    /// client certificate, names a user that must).
    fn knows_user(&self, _user: &str) -> bool {
        false
    }
    /// A login by a verified client certificate standing for `user`: the
    /// user must exist and may connect from `peer`; no password.
    fn certificate_login(&self, user: &str, peer: std::net::IpAddr) -> Result<Login, String> {
        if !self.knows_user(user) {
            return Err(format!("no user '{user}' for the client certificate"));
        }
        if !self.may_connect_from(user, peer) {
            return Err(format!("user '{user}' may not connect from {peer}"));
        }
        Ok(Login::default())
    }
    /// Whether `user` may connect from `peer` at all (checked for logins
    /// without a password too, e.g. MQTT's anonymous user).
    fn may_connect_from(&self, _user: &str, _peer: std::net::IpAddr) -> bool {
        true
    }
    /// Whether the logged-in `who` may use its vhost.
    fn vhost_access<'a>(&'a self, who: &'a Principal) -> access::BoxFuture<'a, bool>;
    /// Answers a permission check at once when it can (a rule in memory, a
    /// cached answer); None sends [`crate::Access`] to
    /// [`Authenticator::authorize`].
    fn authorize_fast(
        &self,
        who: &Principal,
        perm: Permission,
        what: &Resource<'_>,
    ) -> Option<bool>;
    /// The slow answer to a permission check (a network call). Refuses
    /// unless overridden: a back-end that answers everything at once never
    /// gets here.
    fn authorize<'a>(
        &'a self,
        _who: &'a Principal,
        _perm: Permission,
        _what: Resource<'a>,
    ) -> access::BoxFuture<'a, bool> {
        Box::pin(std::future::ready(false))
    }
    /// Whether topic permissions may restrict `who` on `exchange`; false
    /// lets every routing key through without asking.
    fn topic_rules(&self, who: &Principal, exchange: &str) -> bool;
    /// Moves whenever users or permissions change, so connections drop the
    /// answers they remember.
    fn access_epoch(&self) -> u64 {
        0
    }
}

/// Why a login did not go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginError {
    /// Bad credentials, or a user not allowed from that peer.
    Refused(String),
    /// Too many logins are already waiting for a password check: refused
    /// at once rather than queued without bound (MQTT: 0x89 Server busy).
    Busy,
}

impl std::fmt::Display for LoginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoginError::Refused(why) => f.write_str(why),
            LoginError::Busy => f.write_str("too many logins waiting for a password check"),
        }
    }
}

/// Bounds the logins waiting for a slow password check (argon2 on a
/// blocking thread). A flood of logins with unknown passwords is refused
/// past the bound instead of piling up blocking threads that shutdown
/// would then wait behind. Logins with the same credentials while one of
/// them is being checked wait for that one answer: a fleet of clients
/// sharing a user, reconnecting at once to a broker that has just started
/// (nothing verified yet), costs one check and one slot, not one each.
#[derive(Debug)]
pub struct LoginGate {
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    running: std::sync::Arc<parking_lot::Mutex<Running>>,
    /// Keys the checks under way without holding a password.
    credentials: CredentialDigest,
}

/// A password check's answer, as the authenticator gives it.
type Verdict = Result<Login, String>;

/// The checks under way, by a keyed digest of the user and password (the
/// map holds no password) and the peer; each entry lives only while its
/// check runs.
type Running = std::collections::HashMap<
    ([u8; 32], std::net::IpAddr),
    tokio::sync::watch::Receiver<Option<Verdict>>,
>;

impl LoginGate {
    /// A gate letting `pending` slow checks wait or run at once.
    pub fn new(pending: usize) -> LoginGate {
        LoginGate {
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(pending.max(1))),
            running: std::sync::Arc::default(),
            credentials: CredentialDigest::new(),
        }
    }

    /// Checks a login: on the caller's task when the authenticator can
    /// answer at once (thousands of clients reconnecting with known
    /// credentials then cost no threads); else it waits for the same
    /// credentials' check if one is under way, or starts one on a
    /// blocking thread if a slot is free; else [`LoginError::Busy`].
    pub async fn check(
        &self,
        auth: &std::sync::Arc<dyn Authenticator>,
        user: &str,
        password: String,
        peer: std::net::IpAddr,
    ) -> Result<Login, LoginError> {
        if let Some(verdict) = auth.authenticate_fast(user, &password, peer) {
            return verdict.map_err(LoginError::Refused);
        }
        let key = (self.credentials.digest(user, &password), peer);
        let mut answer = {
            let mut running = self.running.lock();
            match running.get(&key) {
                Some(answer) => answer.clone(),
                None => {
                    let Ok(slot) = std::sync::Arc::clone(&self.slots).try_acquire_owned() else {
                        return Err(LoginError::Busy);
                    };
                    let (tx, answer) = tokio::sync::watch::channel(None);
                    running.insert(key, answer.clone());
                    // Its own task: the check finishes, and answers every
                    // waiter, even if the connection that started it goes.
                    let (auth, running, user) = (
                        std::sync::Arc::clone(auth),
                        std::sync::Arc::clone(&self.running),
                        user.to_string(),
                    );
                    tokio::spawn(async move {
                        let checked = tokio::task::spawn_blocking(move || {
                            let verdict = auth.authenticate(&user, &password, peer);
                            drop(slot);
                            verdict
                        })
                        .await
                        .unwrap_or_else(|e| Err(e.to_string()));
                        running.lock().remove(&key);
                        let _ = tx.send(Some(checked));
                    });
                    answer
                }
            }
        };
        let verdict = match answer.wait_for(Option::is_some).await {
            Ok(v) => v.clone().unwrap_or_else(|| Err("no answer".to_string())),
            Err(_) => Err("the password check was abandoned".to_string()),
        };
        verdict.map_err(LoginError::Refused)
    }
}

/// A keyed BLAKE2b digest of a user name and password: equal for equal
/// credentials, and useless to anyone without the key, which never leaves
/// the process. What remembers a login, or a check under way, without
/// holding the password (the login gate here, the users file's cache of
/// verified logins).
#[derive(Debug)]
pub struct CredentialDigest {
    key: [u8; 32],
}

impl CredentialDigest {
    /// With a key drawn from the standard library's per-process random
    /// hash keys (seeded from the operating system).
    pub fn new() -> CredentialDigest {
        use std::hash::BuildHasher;
        let state = std::collections::hash_map::RandomState::new();
        let mut key = [0u8; 32];
        for (i, chunk) in key.chunks_exact_mut(8).enumerate() {
            chunk.copy_from_slice(&state.hash_one(i).to_le_bytes());
        }
        CredentialDigest { key }
    }

    /// With `key` (random, from the caller's source).
    pub fn from_key(key: [u8; 32]) -> CredentialDigest {
        CredentialDigest { key }
    }

    /// The digest of `user` and `password`.
    pub fn digest(&self, user: &str, password: &str) -> [u8; 32] {
        use blake2::digest::{KeyInit, Mac};
        type Blake2bMac256 = blake2::Blake2bMac<blake2::digest::consts::U32>;
        let Ok(mut mac) = <Blake2bMac256 as KeyInit>::new_from_slice(&self.key) else {
            unreachable!("a 32-byte key is always valid for BLAKE2b");
        };
        Mac::update(&mut mac, user.as_bytes());
        Mac::update(&mut mac, &[0]);
        Mac::update(&mut mac, password.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

impl Default for CredentialDigest {
    fn default() -> Self {
        CredentialDigest::new()
    }
}

#[cfg(test)]
mod login_gate_tests {
    use super::*;

    #[test]
    fn a_credential_digest_tells_credentials_and_keys_apart() {
        let d = CredentialDigest::new();
        assert_eq!(d.digest("dev", "pw"), d.digest("dev", "pw"));
        assert_ne!(d.digest("dev", "pw"), d.digest("dev", "pw2"));
        // The separator keeps user and password apart.
        assert_ne!(d.digest("ab", "c"), d.digest("a", "bc"));
        assert_ne!(
            d.digest("dev", "pw"),
            CredentialDigest::new().digest("dev", "pw")
        );
        let fixed = CredentialDigest::from_key([7; 32]);
        assert_eq!(
            fixed.digest("u", "p"),
            CredentialDigest::from_key([7; 32]).digest("u", "p")
        );
    }
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Poll;

    /// A password check that waits while the test holds `hold`: accepts
    /// "right", counts the checks.
    #[derive(Default)]
    struct Held {
        checks: AtomicUsize,
        hold: std::sync::RwLock<()>,
    }

    impl Authenticator for Held {
        fn authenticate(
            &self,
            _: &str,
            password: &str,
            _: std::net::IpAddr,
        ) -> Result<Login, String> {
            self.checks.fetch_add(1, Ordering::SeqCst);
            drop(self.hold.read());
            if password == "right" {
                Ok(Login::default())
            } else {
                Err("bad password".into())
            }
        }
        fn vhost_access<'a>(&'a self, _: &'a Principal) -> access::BoxFuture<'a, bool> {
            Box::pin(std::future::ready(true))
        }
        fn authorize_fast(&self, _: &Principal, _: Permission, _: &Resource<'_>) -> Option<bool> {
            Some(true)
        }
        fn topic_rules(&self, _: &Principal, _: &str) -> bool {
            false
        }
    }

    fn peer() -> std::net::IpAddr {
        std::net::IpAddr::from([127, 0, 0, 1])
    }

    type Check<'a> = Pin<Box<dyn Future<Output = Result<Login, LoginError>> + Send + 'a>>;

    /// Polls every check once: each is then running or waiting.
    async fn start_all(checks: &mut [Check<'_>]) {
        std::future::poll_fn(|cx| {
            for c in checks.iter_mut() {
                assert!(c.as_mut().poll(cx).is_pending(), "a held check answered");
            }
            Poll::Ready(())
        })
        .await;
    }

    // The lock is held across awaits on purpose: it keeps the checks on
    // their blocking threads until every login is in.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn logins_with_the_same_credentials_share_one_check_and_one_slot() {
        let held = Arc::new(Held::default());
        let auth: Arc<dyn Authenticator> = held.clone();
        let gate = LoginGate::new(2);
        let hold = held.hold.write().expect("hold");
        let mut checks: Vec<Check<'_>> = (0..50)
            .map(|i| {
                let password = if i % 2 == 0 { "right" } else { "wrong" };
                Box::pin(gate.check(&auth, "fleet", password.into(), peer())) as Check<'_>
            })
            .collect();
        // All 50 are in before either check can answer: with 2 slots, a
        // check each would have refused 48 as busy.
        start_all(&mut checks).await;
        drop(hold);
        let (mut ok, mut refused) = (0, 0);
        for c in checks {
            match c.await {
                Ok(_) => ok += 1,
                Err(LoginError::Refused(why)) => {
                    assert_eq!(why, "bad password");
                    refused += 1;
                }
                Err(LoginError::Busy) => panic!("a login was refused as busy"),
            }
        }
        assert_eq!((ok, refused), (25, 25));
        // One check per distinct password, however many asked at once.
        assert_eq!(held.checks.load(Ordering::SeqCst), 2);
        // Both checks have ended: the next login is checked again.
        assert_eq!(
            gate.check(&auth, "fleet", "right".into(), peer()).await,
            Ok(Login::default())
        );
        assert_eq!(held.checks.load(Ordering::SeqCst), 3);
    }

    // The lock is held across awaits on purpose: it keeps the checks on
    // their blocking threads until every login is in.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn different_credentials_past_the_bound_are_refused_as_busy() {
        let held = Arc::new(Held::default());
        let auth: Arc<dyn Authenticator> = held.clone();
        let gate = LoginGate::new(2);
        let hold = held.hold.write().expect("hold");
        let mut checks: Vec<Check<'_>> = ["u0", "u1"]
            .into_iter()
            .map(|u| Box::pin(gate.check(&auth, u, "right".into(), peer())) as Check<'_>)
            .collect();
        start_all(&mut checks).await;
        // Both slots are taken by checks of other credentials.
        assert_eq!(
            gate.check(&auth, "u9", "right".into(), peer()).await,
            Err(LoginError::Busy)
        );
        drop(hold);
        for c in checks {
            assert_eq!(c.await, Ok(Login::default()));
        }
    }
}
