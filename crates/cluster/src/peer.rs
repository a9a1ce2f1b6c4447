//! Peer links: one TCP connection between two nodes, carrying the Raft
//! traffic of every group both hold (docs/cluster.md "Peer links").
//!
//! The node with the lower id dials, the other accepts (and dials too
//! when no link came for [`FALLBACK_AFTER`]); the dialer
//! redials with backoff when the link drops. Frames are a big-endian u32
//! length and a body in the records' encoding (version byte, postcard). A
//! request carries a correlation id and a group id; its reply carries the
//! id. Requests are answered on tasks of their own, at most
//! [`REQUESTS_IN_FLIGHT`] per link, so a slow group does not hold up the
//! link's reader and a peer cannot make this node start unbounded work.
//!
//! With [`PeerTls`] every link is TLS first, both ends showing a
//! certificate of the cluster's CA (the acceptor's checked against the
//! address dialed); the secret's handshake then runs inside it.
//!
//! The member list changes as members join and leave
//! ([`Peers::set_members`]); the handshake also carries the cluster's id
//! ([`ClusterId`]), so that nodes of two clusters never link even when
//! they share a secret.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hmac::{Hmac, Mac};
use openraft::Raft;
use openraft::error::{ClientWriteError, InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;

use crate::records;
use crate::types::{Command, GroupId, NodeId, Response, TypeConfig};

/// Largest frame sent to or read from a peer. A bigger length read closes
/// the link rather than allocating it; a bigger request is refused before
/// it is sent (openraft then sends fewer entries at a time).
pub const MAX_FRAME_BYTES: usize = 64 << 20;
/// Largest snapshot a peer may send: openraft writes each chunk at the
/// offset the sender names, so an offset past this would grow the
/// receiving buffer to it; the link is closed instead.
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 30;
/// Largest frame of the handshake (challenge, hello, welcome).
const MAX_HANDSHAKE_BYTES: usize = 256;
/// Time a new connection has to finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// What each handshake proof is about, so one cannot stand for another.
const HELLO_LABEL: &[u8] = b"junction peer hello";
const WELCOME_LABEL: &[u8] = b"junction peer welcome";
/// Frames queued for a link's writer before senders wait.
const SEND_QUEUE: usize = 1024;
/// Requests from one peer being answered at once; past it the link's
/// reader waits, which pushes back on the peer.
pub const REQUESTS_IN_FLIGHT: usize = 256;
/// Handshakes under way at once; a connection past it is closed at once.
const HANDSHAKES: usize = 64;
/// Every link sends a ping this often...
const PING_EVERY: Duration = Duration::from_secs(1);
/// ...and drops when it has read nothing for this long (a peer lost to a
/// power cut or a partition that does not close the connection).
const LINK_IDLE: Duration = Duration::from_secs(5);
/// How long a node waits for a member with a lower id to dial it before
/// it dials that member itself.
pub const FALLBACK_AFTER: Duration = Duration::from_secs(3);
/// First and longest pause between two dials of a peer that is down.
const REDIAL_MIN: Duration = Duration::from_millis(50);
const REDIAL_MAX: Duration = Duration::from_secs(1);

/// Which cluster a node belongs to: the SHA-256 of the member ids its
/// metadata group was first started with, kept in each member's store.
/// A node that joins a running cluster has none until its first link,
/// and takes its peer's.
pub type ClusterId = [u8; 32];

/// The cluster id of a cluster first started with `members`.
pub fn cluster_id(members: impl Iterator<Item = NodeId>) -> ClusterId {
    use sha2::Digest;
    let mut ids: Vec<NodeId> = members.collect();
    ids.sort_unstable();
    ids.dedup();
    let mut digest = Sha256::new();
    digest.update(b"junction cluster");
    for id in ids {
        digest.update(id.to_be_bytes());
    }
    digest.finalize().into()
}

/// TLS on the peer links: the acceptor asks for and checks the dialer's
/// certificate, the dialer checks the acceptor's (its chain to the
/// cluster's CA, and its name against the IP address dialed). Built by
/// the server from `[tls]`.
#[derive(Clone)]
pub struct PeerTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub connector: tokio_rustls::TlsConnector,
}

/// A link's byte stream: TCP, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}
type LinkStream = Box<dyn Io>;

/// One frame on a link.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Frame {
    /// The accepting node's first frame: a fresh nonce to prove the
    /// shared secret on.
    Challenge {
        /// Random, never reused.
        nonce: [u8; 32],
    },
    /// The dialer's first frame: who it is, proof that it holds the
    /// secret, and a nonce of its own for the acceptor to prove on.
    Hello {
        /// The dialing node.
        from: NodeId,
        /// The dialer's nonce.
        nonce: [u8; 32],
        /// HMAC-SHA256 over the challenge's nonce, both ids and
        /// `cluster`.
        proof: [u8; 32],
        /// The dialer's cluster, if it knows it yet.
        cluster: Option<ClusterId>,
    },
    /// The acceptor's answer to a good Hello: its own proof.
    Welcome {
        /// HMAC-SHA256 over the dialer's nonce, both ids and `cluster`.
        proof: [u8; 32],
        /// The acceptor's cluster, if it knows it yet.
        cluster: Option<ClusterId>,
    },
    /// A Raft RPC for one of the receiver's groups.
    Request {
        /// Correlates the reply.
        id: u64,
        /// The group the RPC is for.
        group: GroupId,
        /// The RPC.
        rpc: Box<Rpc>,
    },
    /// Keeps an idle link known to be alive; answered by nothing.
    Ping,
    /// The answer to the request with the same id.
    Reply {
        /// The request's id.
        id: u64,
        /// The answer.
        reply: Box<Reply>,
    },
}

/// A Raft RPC.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Rpc {
    /// Replicate entries, or a heartbeat.
    Append(AppendEntriesRequest<TypeConfig>),
    /// Ask for a vote.
    Vote(VoteRequest<NodeId>),
    /// One chunk of a snapshot.
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A write proposed on a node that does not lead, for the leader.
    Propose {
        /// The write.
        command: Command,
        /// How long the proposer still waits, in milliseconds: the leader
        /// gives up when it does.
        within_ms: u64,
    },
    /// A request for the receiving node's broker, in the broker's own
    /// encoding ([`Peers::serve`]).
    Broker(Vec<u8>),
    /// The receiving node leads the group: hand the leadership to member
    /// `to` ([`Peers::transfer`]).
    Transfer { to: NodeId },
    /// Start no election in this group for `for_ms` milliseconds (another
    /// member is being handed the leadership).
    HoldElections { for_ms: u64 },
    /// Stand for election in this group now (answered `Transferred`:
    /// whether it stands).
    Campaign,
    /// The receiving node leads the group: change its members (answered
    /// `Members`).
    Members {
        /// The change.
        change: MemberChange,
        /// How long the asker still waits, in milliseconds.
        within_ms: u64,
    },
}

/// A change of a group's members ([`crate::Group::change_members`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    /// Make node `id`, whose peer listener is `addr`, a voter: a learner
    /// first, until it has every entry.
    Add {
        /// The node.
        id: NodeId,
        /// Its peer listener.
        addr: SocketAddr,
    },
    /// Take node `id` out of the group (voter or learner).
    Remove {
        /// The node.
        id: NodeId,
    },
    /// Only finish a change left joint (every change does so first).
    Finish,
}

/// The answer to an [`Rpc`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    /// To [`Rpc::Append`].
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// To [`Rpc::Vote`].
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// To [`Rpc::Snapshot`].
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// To [`Rpc::Propose`]: the answer once committed, or why not.
    Propose(Result<Response, Refusal>),
    /// To [`Rpc::Broker`]: the broker's answer, or why there is none.
    Broker(Result<Vec<u8>, String>),
    /// The receiver holds no member of that group.
    NoGroup,
    /// The receiver is answering as many of this link's requests as it
    /// takes at once; ask again later.
    Busy,
    /// To [`Rpc::Transfer`]: whether `to` leads now.
    Transferred(bool),
    /// To [`Rpc::HoldElections`].
    Done,
    /// To [`Rpc::Members`]: done, or why not.
    Members(Result<(), Refusal>),
}

/// Why a member did not take a proposed write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// It does not lead; the leader it knows of, if any.
    NotLeader(Option<NodeId>),
    /// It leads but the write failed.
    Failed(String),
    /// It could not answer in time, or its member is stopping; another
    /// try may succeed.
    Later,
}

/// Propose `command` to the local member: the answer once a majority
/// has it and it is applied here, or why not.
pub(crate) async fn write_locally(
    raft: &Raft<TypeConfig>,
    command: Command,
) -> Result<Response, Refusal> {
    match raft.client_write(command).await {
        Ok(written) => Ok(written.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(to))) => {
            Err(Refusal::NotLeader(to.leader_id))
        }
        Err(RaftError::Fatal(_)) => Err(Refusal::Later),
        Err(e) => Err(Refusal::Failed(e.to_string())),
    }
}

/// Make `change` to the group whose local member, `raft`, leads it;
/// within `within`. A node added is a learner until it has every entry,
/// then a voter (a node that does not catch up in time stays a learner,
/// and the answer says so). Adding a voter or removing a non-member
/// changes nothing.
pub(crate) async fn change_locally(
    raft: &Raft<TypeConfig>,
    change: MemberChange,
    within: Duration,
) -> Result<(), Refusal> {
    use openraft::ChangeMembers;
    let deadline = tokio::time::Instant::now() + within;
    let state = || {
        let m = raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        (
            m.state == openraft::ServerState::Leader,
            membership.voter_ids().collect::<HashSet<_>>(),
            membership.learner_ids().collect::<HashSet<_>>(),
            // A change cut off between its joint and its final step (a
            // leader change, a crash): its final voters.
            (membership.get_joint_config().len() > 1)
                .then(|| membership.get_joint_config().last().cloned())
                .flatten(),
            m.current_leader,
        )
    };
    let (leader, _, _, joint, known) = state();
    if !leader {
        return Err(Refusal::NotLeader(known));
    }
    if let Some(last) = joint {
        // Finished first, whatever is asked.
        commit_membership(raft, ChangeMembers::ReplaceAllVoters(last), deadline).await?;
    }
    let (leader, voters, learners, _, known) = state();
    if !leader {
        return Err(Refusal::NotLeader(known));
    }
    let changes = match change {
        MemberChange::Finish => return Ok(()),
        MemberChange::Add { id, .. } if voters.contains(&id) => return Ok(()),
        MemberChange::Add { id, addr } => {
            if !voters.contains(&id) {
                let node = openraft::BasicNode::new(addr.to_string());
                match tokio::time::timeout_at(deadline, raft.add_learner(id, node, false)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(membership_refusal(e)),
                    Err(_) => return Err(Refusal::Later),
                }
                // Caught up: it has every entry this leader had once it was
                // added (openraft's own wait stops within
                // `replication_lag_threshold`, 5,000 entries, and a voter
                // that lags makes the joint step wait). A fixed target: a
                // busy group's last entry moves on all the time.
                let mut metrics = raft.metrics();
                let target = metrics.borrow().last_log_index;
                loop {
                    let m = metrics.borrow_and_update().clone();
                    if m.state != openraft::ServerState::Leader {
                        return Err(Refusal::NotLeader(m.current_leader));
                    }
                    if target.is_some() && matched(&m, id) >= target {
                        break;
                    }
                    if !matches!(
                        tokio::time::timeout_at(deadline, metrics.changed()).await,
                        Ok(Ok(()))
                    ) {
                        return Err(Refusal::Failed(format!(
                            "node {id:016x} did not catch up within {within:?}; it stays a learner"
                        )));
                    }
                }
            }
            ChangeMembers::AddVoterIds([id].into())
        }
        MemberChange::Remove { id } if voters.contains(&id) => {
            ChangeMembers::RemoveVoters([id].into())
        }
        MemberChange::Remove { id } if learners.contains(&id) => {
            ChangeMembers::RemoveNodes([id].into())
        }
        MemberChange::Remove { .. } => return Ok(()),
    };
    commit_membership(raft, changes, deadline).await
}

/// Why openraft did not take a change of members.
fn membership_refusal(
    e: RaftError<NodeId, ClientWriteError<NodeId, openraft::BasicNode>>,
) -> Refusal {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(to)) => {
            Refusal::NotLeader(to.leader_id)
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            openraft::error::ChangeMembershipError::InProgress(_),
        ))
        | RaftError::Fatal(_) => Refusal::Later,
        e => Refusal::Failed(e.to_string()),
    }
}

/// Runs `changes` on a task of its own, waiting until `deadline`:
/// openraft takes the joint step, then the final one, from the caller's
/// side, and a caller that gives up between the two must not leave the
/// group joint.
async fn commit_membership(
    raft: &Raft<TypeConfig>,
    changes: openraft::ChangeMembers<NodeId, openraft::BasicNode>,
    deadline: tokio::time::Instant,
) -> Result<(), Refusal> {
    let raft = raft.clone();
    let change = tokio::spawn(async move { raft.change_membership(changes, false).await });
    match tokio::time::timeout_at(deadline, change).await {
        Ok(Ok(Ok(_))) => Ok(()),
        Ok(Ok(Err(e))) => Err(membership_refusal(e)),
        Ok(Err(_)) | Err(_) => Err(Refusal::Later),
    }
}

/// Why a call to a peer got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// There is no link to the peer now.
    #[error("no link to node {0}")]
    Unreachable(NodeId),
    /// The link dropped before the answer came.
    #[error("link to node {0} closed during the call")]
    Closed(NodeId),
    /// No answer within the deadline.
    #[error("node {0} did not answer in time")]
    Timeout(NodeId),
    /// The request encodes to more than [`MAX_FRAME_BYTES`].
    #[error("a request of {0} bytes is over the peer frame limit")]
    TooLarge(usize),
    /// The request could not be encoded.
    #[error("{0}")]
    Encode(String),
    /// The peer answered that it could not serve the request.
    #[error("node {0} refused: {1}")]
    Refused(NodeId, String),
}

/// What a node's broker answers its peers' requests with
/// ([`Peers::serve`]): given the asking node and the request's bytes, the
/// answer's bytes or why there is none.
pub type Service = Arc<
    dyn Fn(NodeId, Vec<u8>) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send>>
        + Send
        + Sync,
>;

/// An open link: where its writer takes frames, and the calls waiting
/// for replies on it.
#[derive(Clone)]
struct Link {
    /// The writer task's queue of encoded frames.
    tx: mpsc::Sender<Vec<u8>>,
    /// Calls waiting for their reply, by correlation id.
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>,
    /// Tells this link from a later one to the same peer.
    serial: u64,
    /// Told when a newer link to the same peer replaces this one.
    replaced: Arc<Notify>,
}

/// A call's entry in its link's pending map, removed however the call
/// ends (answered, timed out, or dropped by openraft's own timeout).
struct Pending {
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>,
    id: u64,
}

impl Pending {
    fn new(link: &Link, id: u64, reply: oneshot::Sender<Reply>) -> Self {
        link.pending.lock().insert(id, reply);
        Self {
            pending: Arc::clone(&link.pending),
            id,
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.pending.lock().remove(&self.id);
    }
}

/// The tasks of a node's links.
#[derive(Default)]
struct Tasks {
    /// Running (and finished ones not yet reaped).
    set: JoinSet<()>,
    /// Set by shutdown: nothing new starts.
    closed: bool,
}

/// The shared state of a node's links.
struct Inner {
    /// This node.
    me: NodeId,
    /// Every member's address: a Hello from anyone else is refused, and
    /// with TLS a dialer's certificate must name its IP.
    members: RwLock<HashMap<NodeId, SocketAddr>>,
    /// Welcome any dialer that proves the secret, listed or not: a
    /// joining node that is no member yet, whichever member leads will
    /// dial it. Cleared by the first [`Peers::set_members`] after
    /// [`Peers::welcome_any`].
    open: std::sync::atomic::AtomicBool,
    /// Nodes that left the cluster: never welcomed, never dialed.
    forbidden: RwLock<HashSet<NodeId>>,
    /// The last member list given, forbidden nodes included (listed
    /// again when allowed).
    given: Mutex<HashMap<NodeId, SocketAddr>>,
    /// The dialer of each member, and where it dials.
    dialers: Mutex<HashMap<NodeId, (SocketAddr, tokio::task::AbortHandle)>>,
    /// The cluster's shared secret, which both ends of a link prove.
    secret: Arc<[u8]>,
    /// This node's cluster, once known; told when a joining node learns
    /// it from its first link (its owner keeps it).
    cluster: tokio::sync::watch::Sender<Option<ClusterId>>,
    /// TLS on every link, if set.
    tls: Option<PeerTls>,
    /// The open link to each peer.
    links: Mutex<HashMap<NodeId, Link>>,
    /// The local member of each group, which requests are handed to.
    groups: RwLock<HashMap<GroupId, Raft<TypeConfig>>>,
    /// Correlation ids and link serials.
    next_id: AtomicU64,
    /// The acceptor, dialers, links and request handlers.
    tasks: Mutex<Tasks>,
    /// Slots for handshakes under way.
    handshakes: Arc<Semaphore>,
    /// The broker's answer to [`Rpc::Broker`] requests.
    service: RwLock<Option<Service>>,
    /// Groups whose leadership this node is handing over: writes wait.
    paused: Mutex<HashSet<GroupId>>,
}

/// A node's peer links. Cheap to clone.
#[derive(Clone)]
pub struct Peers {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("me", &self.inner.me)
            .field("links", &self.inner.links.lock().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Peers {
    /// Start accepting on `listener` and dialing every peer in `members`
    /// (this node itself may be listed; see [`Peers::set_members`]). Both ends
    /// of every link prove they hold `secret`, and must be of the same
    /// `cluster` when both know theirs (a node that does not takes its
    /// first peer's). With `tls` every link is TLS with certificates both
    /// ways.
    pub fn start(
        me: NodeId,
        listener: TcpListener,
        members: &HashMap<NodeId, SocketAddr>,
        secret: Arc<[u8]>,
        tls: Option<PeerTls>,
        cluster: Option<ClusterId>,
    ) -> Self {
        let peers = Peers {
            inner: Arc::new(Inner {
                me,
                members: RwLock::new(HashMap::new()),
                open: std::sync::atomic::AtomicBool::new(false),
                forbidden: RwLock::new(HashSet::new()),
                given: Mutex::new(HashMap::new()),
                dialers: Mutex::new(HashMap::new()),
                secret,
                cluster: tokio::sync::watch::channel(cluster).0,
                tls,
                links: Mutex::new(HashMap::new()),
                groups: RwLock::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                tasks: Mutex::new(Tasks::default()),
                handshakes: Arc::new(Semaphore::new(HANDSHAKES)),
                service: RwLock::new(None),
                paused: Mutex::new(HashSet::new()),
            }),
        };
        let acceptor = peers.clone();
        peers.spawn(async move { acceptor.accept(listener).await });
        peers.set_members(members);
        peers
    }

    /// The members are `members` from now on (this node itself may be
    /// listed): every one is dialed (one with a lower id only when it has
    /// not linked to this node for [`FALLBACK_AFTER`]), and one no longer
    /// listed is no longer dialed (a link this node dialed closes; one it
    /// accepted stays until it drops, or the node is
    /// [forbidden](Peers::forbid)). A member whose address changed is
    /// dialed at the new one. Ends [`Peers::welcome_any`].
    pub fn set_members(&self, members: &HashMap<NodeId, SocketAddr>) {
        self.update_members(Some(members.clone()), false);
    }

    /// Adds `members` to those listed (for a node not yet in the
    /// cluster's membership, which learns members as it catches up);
    /// [`Peers::welcome_any`] stays as it is.
    pub fn learn_members(&self, members: &HashMap<NodeId, SocketAddr>) {
        let mut all = self.members();
        all.extend(members.iter().map(|(id, a)| (*id, *a)));
        self.update_members(Some(all), true);
    }

    /// Lists `members` (None: the last list given, again).
    fn update_members(&self, members: Option<HashMap<NodeId, SocketAddr>>, keep_open: bool) {
        let me = self.inner.me;
        if !keep_open {
            self.inner.open.store(false, Ordering::Relaxed);
        }
        // Under the dialers' lock, which `forbid` takes too: a node
        // forbidden meanwhile is never dialed again, and a list given
        // again is the latest.
        let mut dialers = self.inner.dialers.lock();
        let mut members = {
            let mut given = self.inner.given.lock();
            if let Some(mut members) = members {
                members.remove(&me);
                *given = members;
            }
            given.clone()
        };
        {
            let forbidden = self.inner.forbidden.read();
            members.retain(|id, _| !forbidden.contains(id));
        }
        *self.inner.members.write() = members.clone();
        let mut moved = Vec::new();
        dialers.retain(|id, (addr, task)| {
            let keep = members.get(id) == Some(addr);
            if !keep {
                task.abort();
                if members.contains_key(id) {
                    moved.push(*id);
                }
            }
            keep
        });
        for (&peer, &addr) in &members {
            if !dialers.contains_key(&peer) {
                let dialer = self.clone();
                if let Some(task) = self.spawn(async move { dialer.dial(peer, addr).await }) {
                    dialers.insert(peer, (addr, task));
                }
            }
        }
        drop(dialers);
        for id in moved {
            self.cut(id, "its address changed");
        }
    }

    /// Refuse node `id` from now on (it left the cluster): its link is
    /// closed, it is not dialed, and its Hellos are refused.
    pub fn forbid(&self, id: NodeId) {
        if id == self.inner.me {
            return;
        }
        {
            let mut dialers = self.inner.dialers.lock();
            if !self.inner.forbidden.write().insert(id) {
                return;
            }
            self.inner.members.write().remove(&id);
            if let Some((_, task)) = dialers.remove(&id) {
                task.abort();
            }
        }
        self.cut(id, "it left the cluster");
    }

    /// Take node `id` back (it joins again): listed again if the last
    /// member list named it.
    pub fn allow(&self, id: NodeId) {
        if self.inner.forbidden.write().remove(&id) {
            // Read and listed again under the dialers' lock, so that a
            // newer list given meanwhile is not undone.
            self.update_members(None, true);
        }
    }

    /// The nodes forbidden are `ids` from now on: others are allowed.
    pub fn set_forbidden(&self, ids: &HashSet<NodeId>) {
        let now: Vec<NodeId> = self.inner.forbidden.read().iter().copied().collect();
        for id in now.into_iter().filter(|id| !ids.contains(id)) {
            self.allow(id);
        }
        for id in ids {
            self.forbid(*id);
        }
    }

    /// Close the link to `id`, if any; its calls fail at once.
    fn cut(&self, id: NodeId, why: &str) {
        let link = self.inner.links.lock().remove(&id);
        if let Some(link) = link {
            link.replaced.notify_one();
            link.pending.lock().clear();
            tracing::info!(me = self.inner.me, peer = id, "peer link closed: {why}");
        }
    }

    /// Welcome dialers that are not listed too (with the secret and, if
    /// this node has one, its cluster id), until the next
    /// [`Peers::set_members`]: for a node joining a cluster, which only
    /// its members' membership will list.
    pub fn welcome_any(&self) {
        self.inner.open.store(true, Ordering::Relaxed);
    }

    /// The members as listed now (this node excluded).
    pub fn members(&self) -> HashMap<NodeId, SocketAddr> {
        self.inner.members.read().clone()
    }

    /// This node's cluster as it changes: None until a joining node
    /// learns it from its first link.
    pub fn cluster(&self) -> tokio::sync::watch::Receiver<Option<ClusterId>> {
        self.inner.cluster.subscribe()
    }

    /// Whether a peer of cluster `theirs` may link with this node; takes
    /// it as this node's own if this node has none yet.
    fn same_cluster(&self, peer: NodeId, theirs: Option<ClusterId>) -> std::io::Result<()> {
        let mut refused = false;
        self.inner
            .cluster
            .send_if_modified(|mine| match (*mine, theirs) {
                (Some(mine), Some(theirs)) => {
                    refused = mine != theirs;
                    false
                }
                (None, Some(theirs)) => {
                    tracing::info!(
                        me = self.inner.me,
                        peer,
                        "joined the cluster of node {peer}"
                    );
                    *mine = Some(theirs);
                    true
                }
                (_, None) => false,
            });
        if refused {
            Err(std::io::Error::other(format!(
                "node {peer} is a member of another cluster"
            )))
        } else {
            Ok(())
        }
    }

    /// This node's cluster, if known.
    fn cluster_now(&self) -> Option<ClusterId> {
        *self.inner.cluster.borrow()
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.inner.me
    }

    /// Hand requests for `group` to `raft` from now on.
    pub fn register(&self, group: GroupId, raft: Raft<TypeConfig>) {
        self.inner.groups.write().insert(group, raft);
    }

    /// Answer peers' broker requests ([`Peers::ask`]) with `service`.
    pub fn serve(&self, service: Service) {
        *self.inner.service.write() = Some(service);
    }

    /// Send `request` to the broker of node `target` over the link to it
    /// and wait up to `deadline` for its answer. Requests from one caller
    /// may be answered in any order: a caller that needs order sends the
    /// next once the last is answered.
    pub async fn ask(
        &self,
        target: NodeId,
        request: Vec<u8>,
        deadline: Duration,
    ) -> Result<Vec<u8>, CallError> {
        match self
            .call(target, GroupId::META, Rpc::Broker(request), deadline)
            .await?
        {
            Reply::Broker(Ok(answer)) => Ok(answer),
            Reply::Broker(Err(why)) => Err(CallError::Refused(target, why)),
            Reply::Busy => Err(CallError::Refused(target, "busy".to_owned())),
            _ => Err(CallError::Refused(
                target,
                "no broker service on that node".to_owned(),
            )),
        }
    }

    /// Stop handing requests for `group` to a local member.
    pub fn unregister(&self, group: GroupId) {
        self.inner.groups.write().remove(&group);
    }

    /// Whether a link to `peer` is open now.
    pub fn is_linked(&self, peer: NodeId) -> bool {
        self.inner.links.lock().contains_key(&peer)
    }

    /// The peers a link is open to now.
    pub fn connected(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.inner.links.lock().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Close every link, stop accepting and dialing, and return once the
    /// listener is closed (so its address can be bound again).
    pub async fn shutdown(&self) {
        let mut tasks = {
            let mut slot = self.inner.tasks.lock();
            slot.closed = true;
            std::mem::take(&mut slot.set)
        };
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        self.inner.links.lock().clear();
        self.inner.groups.write().clear();
    }

    /// Run `task` until shutdown (not at all once shut down).
    fn spawn(
        &self,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Option<tokio::task::AbortHandle> {
        let mut tasks = self.inner.tasks.lock();
        // Finished tasks stay in the set until joined.
        while tasks.set.try_join_next().is_some() {}
        (!tasks.closed).then(|| tasks.set.spawn(task))
    }

    /// Send `rpc` for `group` to `target` and wait up to `deadline` for
    /// its answer.
    pub(crate) async fn call(
        &self,
        target: NodeId,
        group: GroupId,
        rpc: Rpc,
        deadline: Duration,
    ) -> Result<Reply, CallError> {
        let link = self
            .inner
            .links
            .lock()
            .get(&target)
            .cloned()
            .ok_or(CallError::Unreachable(target))?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = records::encode(
            "peer request",
            &Frame::Request {
                id,
                group,
                rpc: Box::new(rpc),
            },
        )
        .map_err(|e| CallError::Encode(e.to_string()))?;
        if frame.len() > MAX_FRAME_BYTES {
            return Err(CallError::TooLarge(frame.len()));
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        let _pending = Pending::new(&link, id, reply_tx);
        let answer = tokio::time::timeout(deadline, async {
            link.tx
                .send(frame)
                .await
                .map_err(|_| CallError::Closed(target))?;
            reply_rx.await.map_err(|_| CallError::Closed(target))
        })
        .await;
        answer.unwrap_or(Err(CallError::Timeout(target)))
    }

    /// Accept links from members (those with lower ids, and those with
    /// higher ids whose link did not come).
    async fn accept(self, listener: TcpListener) {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors and the like: pause, not spin.
                    tracing::warn!(error = %e, "peer accept failed");
                    tokio::time::sleep(REDIAL_MIN).await;
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&self.inner.handshakes).try_acquire_owned() else {
                tracing::warn!("peer connection closed: {HANDSHAKES} handshakes under way");
                continue;
            };
            let peers = self.clone();
            self.spawn(async move {
                let _ = stream.set_nodelay(true);
                let source = stream.peer_addr().ok().map(|a| a.ip());
                let welcomed = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                    let (mut stream, leaf): (LinkStream, _) = match &peers.inner.tls {
                        Some(tls) => {
                            let tls = tls.acceptor.accept(stream).await?;
                            let leaf = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|chain| chain.first())
                                .map(|c| c.as_ref().to_vec());
                            (Box::new(tls), Some(leaf))
                        }
                        None => (Box::new(stream), None),
                    };
                    let from = peers.welcome(&mut stream, leaf, source).await?;
                    Ok::<_, std::io::Error>((from, stream))
                })
                .await;
                drop(slot);
                match welcomed {
                    Ok(Ok((from, stream))) => peers.run(from, stream).await,
                    Ok(Err(e)) => tracing::warn!(error = %e, "peer link refused"),
                    Err(_) => tracing::warn!("peer link refused: no handshake in time"),
                }
            });
        }
    }

    /// The acceptor's half of the handshake: challenge, check the Hello,
    /// prove the secret back. Answers the dialer's id.
    /// With TLS, `leaf` is the dialer's certificate (None: it showed
    /// none), which must name the dialer's address before it is welcome
    /// (`source`, the address it dials from, for a dialer not listed).
    async fn welcome(
        &self,
        stream: &mut LinkStream,
        leaf: Option<Option<Vec<u8>>>,
        source: Option<std::net::IpAddr>,
    ) -> std::io::Result<NodeId> {
        let challenge = nonce()?;
        send(stream, &Frame::Challenge { nonce: challenge }).await?;
        let Frame::Hello {
            from,
            nonce,
            proof,
            cluster,
        } = read_frame(stream, MAX_HANDSHAKE_BYTES).await?
        else {
            return Err(std::io::Error::other("the first frame is not a Hello"));
        };
        let me = self.inner.me;
        // A listed member, anyone while joining, or a node of this node's
        // own cluster this node does not list yet (it joined while this
        // node was away; it may lead now).
        let mine = self.cluster_now();
        let welcome = self.inner.members.read().contains_key(&from)
            || self.inner.open.load(Ordering::Relaxed)
            || (mine.is_some() && mine == cluster);
        if from == me || self.inner.forbidden.read().contains(&from) || !welcome {
            return Err(std::io::Error::other(format!(
                "node {from} is not a member"
            )));
        }
        let hello = Proof::new(HELLO_LABEL, &challenge, from, me, cluster);
        if !hello.verify(&self.inner.secret, &proof) {
            return Err(std::io::Error::other(format!(
                "node {from} does not hold the cluster secret"
            )));
        }
        if let Some(leaf) = leaf {
            self.check_dialer(from, leaf.as_deref(), source)?;
        }
        self.same_cluster(from, cluster)?;
        let cluster = self.cluster_now();
        let proof = Proof::new(WELCOME_LABEL, &nonce, me, from, cluster).prove(&self.inner.secret);
        send(stream, &Frame::Welcome { proof, cluster }).await?;
        Ok(from)
    }

    /// With TLS: the dialer `from` proved the secret; its certificate
    /// (which the CA signed) must also name its listed IP address, as
    /// the acceptor's names the address dialed, so that a certificate of
    /// the same CA issued to anything but that node (a client's) is not
    /// a node's.
    fn check_dialer(
        &self,
        from: NodeId,
        leaf: Option<&[u8]>,
        source: Option<std::net::IpAddr>,
    ) -> std::io::Result<()> {
        // An unlisted dialer's certificate must name the address it
        // dials from.
        let listed = self.inner.members.read().get(&from).map(SocketAddr::ip);
        let ip = listed
            .or(source)
            .ok_or_else(|| std::io::Error::other(format!("node {from} is not a member")))?;
        if leaf.is_some_and(|der| names_ip(der, ip)) {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "node {from}'s certificate does not name its address {ip}"
            )))
        }
    }

    /// The dialer's half of the handshake with `peer`.
    async fn hello(&self, stream: &mut LinkStream, peer: NodeId) -> std::io::Result<()> {
        let Frame::Challenge { nonce: challenge } = read_frame(stream, MAX_HANDSHAKE_BYTES).await?
        else {
            return Err(std::io::Error::other("the first frame is not a Challenge"));
        };
        let me = self.inner.me;
        let mine = nonce()?;
        let cluster = self.cluster_now();
        let proof =
            Proof::new(HELLO_LABEL, &challenge, me, peer, cluster).prove(&self.inner.secret);
        send(
            stream,
            &Frame::Hello {
                from: me,
                nonce: mine,
                proof,
                cluster,
            },
        )
        .await?;
        let Frame::Welcome { proof, cluster } = read_frame(stream, MAX_HANDSHAKE_BYTES).await?
        else {
            return Err(std::io::Error::other(
                "the answer to Hello is not a Welcome",
            ));
        };
        if !Proof::new(WELCOME_LABEL, &mine, peer, me, cluster).verify(&self.inner.secret, &proof) {
            return Err(std::io::Error::other(format!(
                "node {peer} does not hold the cluster secret"
            )));
        }
        self.same_cluster(peer, cluster)
    }

    /// Keep a link to `peer` open: dial, say Hello, run it, redial.
    async fn dial(self, peer: NodeId, addr: SocketAddr) {
        let mut pause = REDIAL_MIN;
        // The lower id dials; the higher only when no link came for a
        // while (the lower one may not know this node's address: it
        // joined, or this node did, while it was away).
        let fallback = peer < self.inner.me;
        loop {
            if fallback {
                tokio::time::sleep(FALLBACK_AFTER).await;
                if self.is_linked(peer) {
                    continue;
                }
            }
            match TcpStream::connect(addr).await {
                // A dial of a port nobody listens on can, rarely, be given
                // that very port as its source and connect to itself,
                // which would hold the peer's port when it comes back.
                Ok(stream) if stream.local_addr().ok() == stream.peer_addr().ok() => {
                    drop(stream);
                }
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    let said = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                        let mut stream: LinkStream = match &self.inner.tls {
                            Some(tls) => {
                                let name = tokio_rustls::rustls::pki_types::ServerName::IpAddress(
                                    addr.ip().into(),
                                );
                                Box::new(tls.connector.connect(name, stream).await?)
                            }
                            None => Box::new(stream),
                        };
                        self.hello(&mut stream, peer).await?;
                        Ok::<_, std::io::Error>(stream)
                    })
                    .await;
                    match said {
                        Ok(Ok(stream)) => {
                            pause = REDIAL_MIN;
                            self.clone().run(peer, stream).await;
                        }
                        Ok(Err(e)) => tracing::warn!(peer, error = %e, "peer handshake failed"),
                        Err(_) => tracing::warn!(peer, "peer handshake timed out"),
                    }
                }
                Err(e) => tracing::debug!(peer, error = %e, "peer dial failed"),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(REDIAL_MAX);
        }
    }

    /// Serve a link to `peer` until it drops or a newer one replaces it.
    async fn run(self, peer: NodeId, stream: LinkStream) {
        let (mut reader, writer) = tokio::io::split(stream);
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(SEND_QUEUE);
        let serial = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let link = Link {
            tx,
            pending: Arc::new(Mutex::new(HashMap::new())),
            serial,
            replaced: Arc::new(Notify::new()),
        };
        if let Some(old) = self.inner.links.lock().insert(peer, link.clone()) {
            // A stored permit: the old link stops even if it is not
            // waiting yet.
            old.replaced.notify_one();
        }
        // However this ends (dropped, aborted, replaced), the entry goes.
        let _entry = LinkEntry {
            peers: self.clone(),
            peer,
            serial,
            pending: Arc::clone(&link.pending),
        };
        if self.inner.forbidden.read().contains(&peer) {
            // Forbidden while its handshake ran (`forbid` inserts, then
            // cuts: one of the two sees the other).
            return;
        }
        tracing::info!(me = self.inner.me, peer, "peer link up");
        let write = async move {
            let mut writer = BufWriter::new(writer);
            while let Some(frame) = rx.recv().await {
                write_frame(&mut writer, &frame).await?;
                while let Ok(frame) = rx.try_recv() {
                    write_frame(&mut writer, &frame).await?;
                }
                writer.flush().await?;
            }
            Ok::<(), std::io::Error>(())
        };
        let slots = Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT));
        let ping = {
            let tx = link.tx.clone();
            async move {
                let ping =
                    records::encode("peer ping", &Frame::Ping).map_err(std::io::Error::other)?;
                loop {
                    tokio::time::sleep(PING_EVERY).await;
                    // A full queue is traffic enough.
                    if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(ping.clone()) {
                        return Ok::<(), std::io::Error>(());
                    }
                }
            }
        };
        let read = async {
            loop {
                let frame =
                    tokio::time::timeout(LINK_IDLE, read_frame(&mut reader, MAX_FRAME_BYTES))
                        .await
                        .map_err(|_| {
                            std::io::Error::other(format!("nothing read for {LINK_IDLE:?}"))
                        })??;
                match frame {
                    Frame::Ping => {}
                    Frame::Reply { id, reply } => {
                        if let Some(waiter) = link.pending.lock().remove(&id) {
                            let _ = waiter.send(*reply);
                        }
                    }
                    Frame::Request { id, group, rpc } => {
                        if !within_limits(&rpc) {
                            return Err(std::io::Error::other(
                                "a snapshot chunk past the snapshot size limit",
                            ));
                        }
                        let tx = link.tx.clone();
                        let peer_id = peer;
                        // Never wait here: replies to this node's own calls
                        // come on the same link and must still be read.
                        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                            let busy = Frame::Reply {
                                id,
                                reply: Box::new(Reply::Busy),
                            };
                            if let Ok(frame) = records::encode("peer reply", &busy) {
                                let _ = tx.try_send(frame);
                            }
                            continue;
                        };
                        let raft = self.inner.groups.read().get(&group).cloned();
                        let service = self.inner.service.read().clone();
                        let peers = self.clone();
                        self.spawn(async move {
                            let reply = match (*rpc, raft) {
                                (Rpc::Broker(request), _) => match service {
                                    Some(service) => Reply::Broker(service(peer_id, request).await),
                                    None => Reply::NoGroup,
                                },
                                (rpc, Some(raft)) => peers.answer(group, &raft, rpc).await,
                                (_, None) => Reply::NoGroup,
                            };
                            let reply = Frame::Reply {
                                id,
                                reply: Box::new(reply),
                            };
                            match records::encode("peer reply", &reply) {
                                Ok(frame) => {
                                    let _ = tx.send(frame).await;
                                }
                                Err(e) => tracing::error!(error = %e, "peer reply"),
                            }
                            drop(slot);
                        });
                    }
                    Frame::Challenge { .. } | Frame::Hello { .. } | Frame::Welcome { .. } => {
                        return Err::<(), _>(std::io::Error::other(
                            "a handshake frame on an open link",
                        ));
                    }
                }
            }
        };
        let outcome = tokio::select! {
            r = write => r,
            r = read => r,
            r = ping => r,
            () = link.replaced.notified() => Ok(()),
        };
        if let Err(e) = outcome {
            tracing::info!(me = self.inner.me, peer, error = %e, "peer link down");
        }
    }
}

/// A link's entry in the open links, removed when its task ends however
/// it ends (a dialer aborted mid-link included).
struct LinkEntry {
    peers: Peers,
    peer: NodeId,
    serial: u64,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>,
}

impl Drop for LinkEntry {
    fn drop(&mut self) {
        let mut links = self.peers.inner.links.lock();
        if links
            .get(&self.peer)
            .is_some_and(|l| l.serial == self.serial)
        {
            links.remove(&self.peer);
        }
        drop(links);
        // Dropping the waiters' senders answers their calls with Closed.
        self.pending.lock().clear();
    }
}

/// Whether `rpc` stays inside what this node accepts from a peer (a
/// snapshot chunk ends within [`MAX_SNAPSHOT_BYTES`]).
fn within_limits(rpc: &Rpc) -> bool {
    match rpc {
        Rpc::Snapshot(chunk) => u64::try_from(chunk.data.len())
            .ok()
            .and_then(|len| chunk.offset.checked_add(len))
            .is_some_and(|end| end <= MAX_SNAPSHOT_BYTES),
        _ => true,
    }
}

impl Peers {
    /// Answer `rpc` for this node's member `raft` of `group`.
    async fn answer(&self, group: GroupId, raft: &Raft<TypeConfig>, rpc: Rpc) -> Reply {
        match rpc {
            Rpc::Append(rpc) => Reply::Append(raft.append_entries(rpc).await),
            Rpc::Vote(rpc) => Reply::Vote(raft.vote(rpc).await),
            Rpc::Snapshot(rpc) => Reply::Snapshot(raft.install_snapshot(rpc).await),
            Rpc::Propose { .. } if self.is_paused(group) => Reply::Propose(Err(Refusal::Later)),
            Rpc::Propose { command, within_ms } => {
                let within = asked_wait(within_ms);
                let answer = tokio::time::timeout(within, write_locally(raft, command)).await;
                Reply::Propose(answer.unwrap_or(Err(Refusal::Later)))
            }
            Rpc::Transfer { to } => Reply::Transferred(self.transfer(group, raft, to).await),
            Rpc::HoldElections { for_ms: 0 } => {
                raft.runtime_config().elect(true);
                Reply::Done
            }
            Rpc::HoldElections { for_ms } => {
                raft.runtime_config().elect(false);
                let raft = raft.clone();
                let hold = Duration::from_millis(for_ms).min(MAX_ELECTION_HOLD);
                self.spawn(async move {
                    tokio::time::sleep(hold).await;
                    raft.runtime_config().elect(true);
                });
                Reply::Done
            }
            Rpc::Campaign => Reply::Transferred(raft.trigger().elect().await.is_ok()),
            Rpc::Members { change, within_ms } => {
                Reply::Members(change_locally(raft, change, asked_wait(within_ms)).await)
            }
            // Answered by the broker's service before a group is looked at.
            Rpc::Broker(_) => Reply::NoGroup,
        }
    }

    /// Whether writes to `group` wait (its leadership is being handed
    /// over from this node).
    pub(crate) fn is_paused(&self, group: GroupId) -> bool {
        self.inner.paused.lock().contains(&group)
    }

    /// Hands the leadership of `group`, which this node's `raft` leads, to
    /// member `to` (openraft 0.9 has no transfer call): this node takes no
    /// more writes and waits until `to` has every entry it has; the other
    /// members hold their elections; this node stops its heartbeats so
    /// that the followers' leader lease (the longest election timeout)
    /// runs out; then `to` stands for election, which its complete log
    /// wins. Writes wait meanwhile, about one election timeout. True once
    /// `to` leads; false when this node does not lead, `to` is not a voter
    /// or does not catch up, or it did not win in time (then whoever the
    /// group elects leads, this node again if nobody stands).
    pub(crate) async fn transfer(
        &self,
        group: GroupId,
        raft: &Raft<TypeConfig>,
        to: NodeId,
    ) -> bool {
        let me = self.inner.me;
        let voters: Vec<NodeId> = {
            let m = raft.metrics().borrow().clone();
            if m.state != openraft::ServerState::Leader || to == me {
                return false;
            }
            m.membership_config.membership().voter_ids().collect()
        };
        if !voters.contains(&to) {
            return false;
        }
        let lease = Duration::from_millis(raft.config().election_timeout_max);
        // One hand-over of a group at a time.
        if !self.inner.paused.lock().insert(group) {
            return false;
        }
        // Undone however this ends.
        let _resume = Resume {
            peers: self.clone(),
            group,
            raft: raft.clone(),
        };
        // No new writes; then `to` must have every entry this node has
        // (the last writes on their way included), so that its log wins.
        let mut metrics = raft.metrics();
        let caught_up_by = tokio::time::Instant::now() + lease;
        loop {
            let m = metrics.borrow().clone();
            if m.state != openraft::ServerState::Leader {
                return false;
            }
            if m.last_log_index.is_some() && matched(&m, to) >= m.last_log_index {
                break;
            }
            if !matches!(
                tokio::time::timeout_at(caught_up_by, metrics.changed()).await,
                Ok(Ok(()))
            ) {
                tracing::info!(%group, to, "no hand-over: the member is not caught up");
                return false;
            }
        }
        let others: Vec<NodeId> = voters
            .iter()
            .copied()
            .filter(|v| *v != me && *v != to)
            .collect();
        // Asked of every other voter at once (and released with 0).
        let hold = |ms: u64| {
            let mut calls = JoinSet::new();
            for v in others.iter().copied() {
                let peers = self.clone();
                calls.spawn(async move {
                    let _ = peers
                        .call(v, group, Rpc::HoldElections { for_ms: ms }, lease)
                        .await;
                });
            }
            calls.join_all()
        };
        hold(u64::try_from((lease * 4).as_millis()).unwrap_or(u64::MAX)).await;
        // Followers refuse votes while they heard the leader within the
        // lease: let it run out (past one more heartbeat's time, for an
        // append already on its way).
        raft.runtime_config().heartbeat(false);
        let heartbeat = Duration::from_millis(raft.config().heartbeat_interval);
        tokio::time::sleep(lease + TRANSFER_MARGIN.max(heartbeat)).await;
        // Still the leader, and `to` still has everything (no write
        // slipped in past the check above)?
        {
            let m = metrics.borrow().clone();
            if m.state != openraft::ServerState::Leader || matched(&m, to) < m.last_log_index {
                hold(0).await;
                return false;
            }
        }
        let stands = matches!(
            self.call(to, group, Rpc::Campaign, lease).await,
            Ok(Reply::Transferred(true))
        );
        if !stands {
            tracing::info!(%group, to, "no hand-over: the member did not stand");
            hold(0).await;
            return false;
        }
        let deadline = tokio::time::Instant::now() + lease * 2;
        loop {
            if metrics.borrow().current_leader == Some(to) {
                tracing::info!(%group, to, "handed the group's leadership over");
                hold(0).await;
                return true;
            }
            if !matches!(
                tokio::time::timeout_at(deadline, metrics.changed()).await,
                Ok(Ok(()))
            ) {
                tracing::info!(%group, to, "the group's leadership was not handed over in time");
                hold(0).await;
                return false;
            }
        }
    }
}

/// The last log index the leader whose metrics are `m` knows member `to`
/// has (None: nothing, or not known).
fn matched(m: &openraft::RaftMetrics<NodeId, openraft::BasicNode>, to: NodeId) -> Option<u64> {
    m.replication
        .as_ref()
        .and_then(|r| r.get(&to).cloned().flatten())
        .map(|log_id| log_id.index)
}

/// Longest a peer's request may ask this node to wait (a proposal, a
/// change of members): far above any deadline a node sends, and far
/// below where `Instant + wait` would overflow.
const MAX_ASKED_WAIT: Duration = Duration::from_secs(600);

/// How long a peer asked this node to wait, `ms` milliseconds, within
/// [`MAX_ASKED_WAIT`].
fn asked_wait(ms: u64) -> Duration {
    Duration::from_millis(ms).min(MAX_ASKED_WAIT)
}

/// Longest a member holds its elections when asked.
const MAX_ELECTION_HOLD: Duration = Duration::from_secs(30);
/// How long past the leader lease a hand-over waits before the new
/// leader stands.
const TRANSFER_MARGIN: Duration = Duration::from_millis(100);

/// What a hand-over undoes when it ends, however it ends.
struct Resume {
    peers: Peers,
    group: GroupId,
    raft: Raft<TypeConfig>,
}

impl Drop for Resume {
    fn drop(&mut self) {
        self.raft.runtime_config().heartbeat(true);
        self.peers.inner.paused.lock().remove(&self.group);
    }
}

/// Encode and write one frame (the handshake's).
async fn send(stream: &mut LinkStream, frame: &Frame) -> std::io::Result<()> {
    let bytes = records::encode("peer handshake", frame).map_err(std::io::Error::other)?;
    write_frame(stream, &bytes).await
}

/// Whether the certificate `der` has `ip` among its subject alternative
/// names (an IP entry).
fn names_ip(der: &[u8], ip: std::net::IpAddr) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    let Ok(Some(sans)) = cert.subject_alternative_name() else {
        return false;
    };
    let want: Vec<u8> = match ip {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    sans.value
        .general_names
        .iter()
        .any(|n| matches!(n, GeneralName::IPAddress(bytes) if *bytes == want.as_slice()))
}

/// A fresh random nonce.
fn nonce() -> std::io::Result<[u8; 32]> {
    let mut nonce = [0; 32];
    getrandom::fill(&mut nonce).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(nonce)
}

/// What one handshake proof is about: its label, the nonce it answers,
/// who proves to whom, and the prover's cluster.
struct Proof<'a> {
    label: &'a [u8],
    nonce: &'a [u8; 32],
    prover: NodeId,
    verifier: NodeId,
    cluster: Option<ClusterId>,
}

impl<'a> Proof<'a> {
    fn new(
        label: &'a [u8],
        nonce: &'a [u8; 32],
        prover: NodeId,
        verifier: NodeId,
        cluster: Option<ClusterId>,
    ) -> Self {
        Self {
            label,
            nonce,
            prover,
            verifier,
            cluster,
        }
    }

    /// The HMAC-SHA256 of it all under `secret`.
    fn mac(&self, secret: &[u8]) -> Hmac<Sha256> {
        // HMAC takes a key of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
        mac.update(self.label);
        mac.update(self.nonce);
        mac.update(&self.prover.to_be_bytes());
        mac.update(&self.verifier.to_be_bytes());
        match &self.cluster {
            Some(id) => {
                mac.update(&[1]);
                mac.update(id);
            }
            None => mac.update(&[0]),
        }
        mac
    }

    /// The proof the prover sends.
    fn prove(&self, secret: &[u8]) -> [u8; 32] {
        self.mac(secret).finalize().into_bytes().into()
    }

    /// Whether `proof` is right, compared in constant time.
    fn verify(&self, secret: &[u8], proof: &[u8; 32]) -> bool {
        self.mac(secret).verify_slice(proof).is_ok()
    }
}

/// Write one frame: its length, then its bytes.
async fn write_frame<W: AsyncWriteExt + Unpin>(
    writer: &mut W,
    frame: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(frame.len()).map_err(|_| std::io::Error::other("frame too large"))?;
    writer.write_all(&len.to_be_bytes()).await?;
    writer.write_all(frame).await
}

/// Read one frame of at most `limit` bytes. The body grows as its bytes
/// arrive, so a length alone reserves nothing.
async fn read_frame<R: AsyncReadExt + Unpin>(
    reader: &mut R,
    limit: usize,
) -> std::io::Result<Frame> {
    let len = reader.read_u32().await? as usize;
    if len > limit {
        return Err(std::io::Error::other(format!(
            "peer frame of {len} bytes, over {limit}"
        )));
    }
    let mut body = Vec::new();
    (&mut *reader)
        .take(len as u64)
        .read_to_end(&mut body)
        .await?;
    if body.len() < len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    records::decode("peer frame", &body).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_frame_over_the_limit_is_refused_before_its_body_arrives() {
        let mut input: &[u8] = &[0x7f, 0xff, 0xff, 0xff];
        let err = read_frame(&mut input, MAX_FRAME_BYTES).await.unwrap_err();
        assert!(err.to_string().contains("over"), "{err}");
        let mut short: &[u8] = &[0, 0, 0, 9, 1, 2];
        let err = read_frame(&mut short, MAX_FRAME_BYTES).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn a_frame_round_trips() {
        let hello = Frame::Hello {
            from: u64::MAX,
            nonce: [7; 32],
            proof: [9; 32],
            cluster: Some([3; 32]),
        };
        let bytes = records::encode("t", &hello).unwrap();
        let mut wire = Vec::new();
        write_frame(&mut wire, &bytes).await.unwrap();
        let mut input: &[u8] = &wire;
        match read_frame(&mut input, MAX_HANDSHAKE_BYTES).await.unwrap() {
            Frame::Hello {
                from,
                nonce,
                proof,
                cluster,
            } => {
                assert_eq!(
                    (from, nonce, proof, cluster),
                    (u64::MAX, [7; 32], [9; 32], Some([3; 32]))
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_snapshot_chunk_must_end_within_the_snapshot_limit() {
        use openraft::{SnapshotMeta, Vote};
        let chunk = |offset: u64, len: usize| {
            Rpc::Snapshot(InstallSnapshotRequest {
                vote: Vote::new(1, 1),
                meta: SnapshotMeta::default(),
                offset,
                data: vec![0; len],
                done: false,
            })
        };
        assert!(within_limits(&chunk(0, 16)));
        assert!(within_limits(&chunk(MAX_SNAPSHOT_BYTES - 16, 16)));
        assert!(!within_limits(&chunk(MAX_SNAPSHOT_BYTES - 15, 16)));
        assert!(!within_limits(&chunk(u64::MAX, 1)));
        assert!(!within_limits(&chunk(1 << 40, 0)));
    }

    #[test]
    fn a_proof_holds_only_for_its_secret_nonce_label_ids_and_cluster() {
        let c = Some([5; 32]);
        let proof = Proof::new(HELLO_LABEL, &[1; 32], 1, 2, c).prove(b"s3cret");
        let holds = |label, nonce: [u8; 32], prover, verifier, cluster, secret: &[u8]| {
            Proof::new(label, &nonce, prover, verifier, cluster).verify(secret, &proof)
        };
        assert!(holds(HELLO_LABEL, [1; 32], 1, 2, c, b"s3cret"));
        assert!(!holds(HELLO_LABEL, [1; 32], 1, 2, c, b"other"));
        assert!(!holds(WELCOME_LABEL, [1; 32], 1, 2, c, b"s3cret"));
        assert!(!holds(HELLO_LABEL, [2; 32], 1, 2, c, b"s3cret"));
        assert!(!holds(HELLO_LABEL, [1; 32], 2, 1, c, b"s3cret"));
        assert!(!holds(HELLO_LABEL, [1; 32], 1, 3, c, b"s3cret"));
        assert!(!holds(HELLO_LABEL, [1; 32], 1, 2, None, b"s3cret"));
        assert!(!holds(HELLO_LABEL, [1; 32], 1, 2, Some([6; 32]), b"s3cret"));
    }

    #[test]
    fn a_peer_cannot_ask_for_a_wait_past_the_limit() {
        assert_eq!(asked_wait(1500), Duration::from_millis(1500));
        assert_eq!(asked_wait(u64::MAX), MAX_ASKED_WAIT);
        // What change_locally does with it: no overflow.
        let _ = std::time::Instant::now() + asked_wait(u64::MAX);
    }

    #[test]
    fn a_cluster_id_depends_on_the_members_not_their_order() {
        assert_eq!(
            cluster_id([1, 2, 3].into_iter()),
            cluster_id([3, 1, 2, 2].into_iter())
        );
        assert_ne!(
            cluster_id([1, 2, 3].into_iter()),
            cluster_id([1, 2].into_iter())
        );
    }
}
