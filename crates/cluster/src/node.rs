//! [`Group`]: this node's member of one consensus group; [`MetaNode`]:
//! the metadata group and the node's peer links, started from a static
//! member list, over which more groups can start.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use junction_store::Store;
use openraft::error::{InitializeError, RaftError};
use openraft::{BasicNode, Config, Raft, RaftMetrics, ServerState};
use tokio::net::TcpListener;

use crate::error::ClusterError;
use crate::log_store::LogStore;
use crate::network::Network;
use crate::peer::{
    ClusterId, MemberChange, PeerTls, Peers, Refusal, Reply, Rpc, change_locally, cluster_id,
    write_locally,
};
use crate::state_machine::StateMachine;
use crate::types::{Command, GroupId, NodeId, Response, TypeConfig};

/// Raft timing of a node (docs/cluster.md "Configuration").
#[derive(Clone, Debug)]
pub struct Timing {
    /// Between a leader's heartbeats.
    pub heartbeat: Duration,
    /// A follower that hears nothing for a time between these two starts
    /// an election.
    pub election_min: Duration,
    /// See `election_min`.
    pub election_max: Duration,
    /// For a follower to take one snapshot chunk and, on the last, install
    /// the whole snapshot.
    pub install_snapshot: Duration,
    /// For a write to be taken by a leader, forwarded if need be.
    pub write: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(250),
            election_min: Duration::from_millis(1000),
            election_max: Duration::from_millis(2000),
            install_snapshot: Duration::from_secs(10),
            write: Duration::from_secs(10),
        }
    }
}

/// First and longest pause between two tries of a write waiting for a
/// leader.
const RETRY_MIN: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_millis(200);

/// Largest key plus value one command may carry: far above any metadata
/// record, far below the peer frame limit a log entry must fit in.
pub const MAX_COMMAND_BYTES: usize = 1 << 20;

/// Why a write to a group failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// No leader took the write in time (an election that does not end,
    /// or this node is cut off from a majority). The write may or may not
    /// have been applied.
    #[error("no leader took the write within {0:?}")]
    Unavailable(Duration),
    /// The command is over [`MAX_COMMAND_BYTES`].
    #[error("a command of {0} bytes is over the limit")]
    TooLarge(usize),
    /// openraft refused or failed the write.
    #[error("raft: {0}")]
    Raft(String),
}

/// One voter of the group, as [`Group::status`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    /// The member's id.
    pub id: NodeId,
    /// This node itself, or a peer with an open link to it.
    pub linked: bool,
    /// Entries the member is behind the leader's log; known only when
    /// this node leads (None elsewhere).
    pub lag: Option<u64>,
}

/// A group as one node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    /// This node.
    pub me: NodeId,
    /// This node's role: leader, follower, candidate, learner, shutdown.
    pub role: &'static str,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// The current term.
    pub term: u64,
    /// This node's last log index.
    pub last_log_index: Option<u64>,
    /// The last index applied to this node's state machine.
    pub applied_index: Option<u64>,
    /// Every voter.
    pub members: Vec<MemberStatus>,
}

/// Who leads a group, as one node sees it change ([`Group::leadership`]).
pub struct LeaderWatch {
    metrics: tokio::sync::watch::Receiver<RaftMetrics<NodeId, BasicNode>>,
    last: Option<(bool, Option<NodeId>)>,
}

impl LeaderWatch {
    /// The next change (the first call: how it stands now): whether this
    /// node leads, and the leader it knows. None once the member stopped.
    pub async fn changed(&mut self) -> Option<(bool, Option<NodeId>)> {
        loop {
            let now = {
                let m = self.metrics.borrow_and_update();
                if m.state == ServerState::Shutdown {
                    return None;
                }
                (m.state == ServerState::Leader, m.current_leader)
            };
            if self.last != Some(now) {
                self.last = Some(now);
                return Some(now);
            }
            if self.metrics.changed().await.is_err() {
                return None;
            }
        }
    }
}

/// This node's member of one consensus group, over the node's shared
/// peer links and store. Stop it with [`Group::shutdown`].
pub struct Group {
    /// Which group.
    id: GroupId,
    /// The Raft member.
    raft: Raft<TypeConfig>,
    /// Its state machine.
    state: StateMachine,
    /// The node's peer links (shared with its other groups).
    peers: Peers,
    /// [`Timing::write`].
    write_timeout: Duration,
    /// Longest wait of one try of a write ([`Timing::election_max`]).
    attempt: Duration,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group").field("id", &self.id).finish()
    }
}

impl Group {
    /// Start this node's member of `group`, whose members are `members`
    /// (each one's peer address), over `peers`, with its log and state in
    /// `store`. The member with the lowest id initializes the group on
    /// first start; a restarted member finds its state in the store.
    pub async fn start(
        group: GroupId,
        members: &BTreeMap<NodeId, SocketAddr>,
        peers: &Peers,
        store: Store,
        timing: &Timing,
    ) -> Result<Self, ClusterError> {
        let lowest = members.keys().next().copied();
        Self::start_with(group, members, peers, store, timing, false, lowest).await
    }

    /// [`Group::start`]; `volatile`: its records in memory only
    /// ([`StateMachine::open_volatile`]); `first`: the member that
    /// initializes the group with `members` as its voters (and so is its
    /// first leader). No member initializes it when `first` is None or
    /// not in `members`: it waits for a leader to add it.
    pub async fn start_with(
        group: GroupId,
        members: &BTreeMap<NodeId, SocketAddr>,
        peers: &Peers,
        store: Store,
        timing: &Timing,
        volatile: bool,
        first: Option<NodeId>,
    ) -> Result<Self, ClusterError> {
        let me = peers.me();
        let config = Config {
            cluster_name: format!("junction-{group}"),
            heartbeat_interval: millis(timing.heartbeat),
            election_timeout_min: millis(timing.election_min),
            election_timeout_max: millis(timing.election_max),
            install_snapshot_timeout: millis(timing.install_snapshot),
            // At most 64 commands of at most 1 MiB each per append: within
            // the peer frame limit, and a far-behind follower catches up
            // in calls that fit a heartbeat's deadline more often.
            max_payload_entries: 64,
            ..Config::default()
        }
        .validate()
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let state = if volatile {
            StateMachine::open_volatile(store.clone(), group)?
        } else {
            StateMachine::open(store.clone(), group)?
        };
        let raft = Raft::new(
            me,
            Arc::new(config),
            Network::new(peers.clone(), group),
            LogStore::new(store, group),
            state.clone(),
        )
        .await
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
        peers.register(group, raft.clone());
        if first == Some(me) && members.contains_key(&me) {
            let nodes: BTreeMap<NodeId, BasicNode> = members
                .iter()
                .map(|(id, addr)| (*id, BasicNode::new(addr.to_string())))
                .collect();
            match raft.initialize(nodes).await {
                Ok(()) => tracing::info!(me, %group, "initialized the group"),
                // Already initialized: a restart.
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => {
                    peers.unregister(group);
                    let _ = raft.shutdown().await;
                    return Err(ClusterError::Raft(e.to_string()));
                }
            }
        }
        Ok(Self {
            id: group,
            raft,
            state,
            peers: peers.clone(),
            write_timeout: timing.write,
            attempt: timing.election_max,
        })
    }

    /// This node.
    pub fn me(&self) -> NodeId {
        self.peers.me()
    }

    /// Which group this is.
    pub fn id(&self) -> GroupId {
        self.id
    }

    /// The replicated records, as applied on this node.
    pub fn state(&self) -> &StateMachine {
        &self.state
    }

    /// The group's metrics (leader, term, log and applied indexes...).
    pub fn metrics(&self) -> RaftMetrics<NodeId, BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    /// Who leads the group, as it changes.
    pub fn leadership(&self) -> LeaderWatch {
        LeaderWatch {
            metrics: self.raft.metrics(),
            last: None,
        }
    }

    /// Whether this node leads the group, confirmed by a majority in its
    /// term, with every entry committed before applied here; false when
    /// that is not so within `within`. (openraft restores a restarted
    /// leader as leader until it hears of a newer term: its metrics alone
    /// do not tell.)
    pub async fn confirm_leadership(&self, within: Duration) -> bool {
        matches!(
            tokio::time::timeout(within, self.raft.ensure_linearizable()).await,
            Ok(Ok(_))
        )
    }

    /// Hands the group's leadership to member `to`, wherever the leader
    /// is (asked over its link): true once `to` leads. Writes to the
    /// group wait meanwhile, about one election timeout
    /// (`Peers::transfer`).
    pub async fn hand_leadership_to(&self, to: NodeId) -> bool {
        let m = self.metrics();
        match m.current_leader {
            Some(leader) if leader == to => true,
            Some(leader) if leader == self.peers.me() => {
                self.peers.transfer(self.id, &self.raft, to).await
            }
            Some(leader) => {
                // The leader's hand-over takes up to about five election
                // timeouts (catch-up, lease, election, margins).
                let within = self.attempt * 6;
                matches!(
                    self.peers
                        .call(leader, self.id, Rpc::Transfer { to }, within)
                        .await,
                    Ok(Reply::Transferred(true))
                )
            }
            None => false,
        }
    }

    /// The group's voters, as this node knows.
    pub fn voters(&self) -> std::collections::BTreeSet<NodeId> {
        self.metrics()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// Whether the group's members are between the two steps of a
    /// change (joint), as this node knows.
    pub fn is_joint(&self) -> bool {
        self.metrics()
            .membership_config
            .membership()
            .get_joint_config()
            .len()
            > 1
    }

    /// The group's learners, as this node knows.
    pub fn learners(&self) -> std::collections::BTreeSet<NodeId> {
        self.metrics()
            .membership_config
            .membership()
            .learner_ids()
            .collect()
    }

    /// Whether this node has a link to `peer` now.
    pub fn is_linked(&self, peer: NodeId) -> bool {
        self.peers.is_linked(peer)
    }

    /// Make `change` to the group's members if this node leads it (never
    /// forwarded); within `within`.
    pub async fn change_members_here(
        &self,
        change: MemberChange,
        within: Duration,
    ) -> Result<(), String> {
        match change_locally(&self.raft, change, within).await {
            Ok(()) => Ok(()),
            Err(Refusal::NotLeader(_)) => Err("this node does not lead the group".to_owned()),
            Err(Refusal::Later) => Err(format!("not done within {within:?}")),
            Err(Refusal::Failed(e)) => Err(e),
        }
    }

    /// Make `change` to the group's members, wherever its leader is
    /// (asked over its link); within `within`. An added node is a learner
    /// until it has every entry, then a voter.
    pub async fn change_members(
        &self,
        change: MemberChange,
        within: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + within;
        let mut pause = RETRY_MIN;
        let mut leader = self.leader();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "the group's members did not change within {within:?}"
                ));
            }
            let answer = match leader {
                Some(l) if l == self.peers.me() => {
                    change_locally(&self.raft, change.clone(), left).await
                }
                Some(l) => {
                    // The leader gives up a little before this node, so
                    // that its reason comes back.
                    let rpc = Rpc::Members {
                        change: change.clone(),
                        within_ms: millis(left.mul_f64(0.9)),
                    };
                    match self.peers.call(l, self.id, rpc, left).await {
                        Ok(Reply::Members(answer)) => answer,
                        Ok(_) | Err(_) => Err(Refusal::Later),
                    }
                }
                None => Err(Refusal::NotLeader(None)),
            };
            match answer {
                Ok(()) => return Ok(()),
                Err(Refusal::Failed(e)) => return Err(e),
                Err(Refusal::NotLeader(Some(l))) if Some(l) != leader => {
                    leader = Some(l);
                    continue;
                }
                Err(Refusal::NotLeader(_) | Refusal::Later) => {}
            }
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
            pause = (pause * 2).min(RETRY_MAX);
            leader = self.leader();
        }
    }

    /// Who leads the group, as this node knows.
    pub fn leader(&self) -> Option<NodeId> {
        self.metrics().current_leader
    }

    /// Whether this node leads the group now.
    pub fn is_leader(&self) -> bool {
        self.metrics().state == ServerState::Leader
    }

    /// Propose `command` and wait until a majority has it on disk and it
    /// is applied on the leader, then until it is applied on this node
    /// too (within the same deadline). On a follower, the write is forwarded to
    /// the leader over the peer link; during an election it waits for the
    /// new leader, up to [`Timing::write`], each try at most
    /// [`Timing::election_max`].
    ///
    /// A try that times out or loses its link may still have been
    /// committed, and the next try applies the command again: only
    /// commands that give the same records applied twice (puts, deletes)
    /// may be written this way, and the answer's `previous` is then what
    /// the first application left.
    pub async fn write(&self, command: Command) -> Result<Response, WriteError> {
        let size = command.size();
        if size > MAX_COMMAND_BYTES {
            return Err(WriteError::TooLarge(size));
        }
        let deadline = Instant::now() + self.write_timeout;
        let mut pause = RETRY_MIN;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(WriteError::Unavailable(self.write_timeout));
            }
            // A leader that lost its majority waits for it: bounded here.
            // One try waits at most an election's length: a leader lost
            // without a word is replaced by then.
            let attempt = left.min(self.attempt);
            let local = if self.peers.is_paused(self.id) {
                // This node is handing the leadership over: wait for it.
                Ok(Err(Refusal::Later))
            } else {
                tokio::time::timeout(attempt, write_locally(&self.raft, command.clone())).await
            };
            match local {
                Ok(Ok(answer)) => return Ok(self.applied_here(answer, deadline).await),
                Ok(Err(Refusal::Failed(e))) => return Err(WriteError::Raft(e)),
                Ok(Err(Refusal::NotLeader(Some(leader)))) if leader != self.peers.me() => {
                    let attempt = deadline
                        .saturating_duration_since(Instant::now())
                        .min(self.attempt);
                    let rpc = Rpc::Propose {
                        command: command.clone(),
                        within_ms: millis(attempt),
                    };
                    match self.peers.call(leader, self.id, rpc, attempt).await {
                        Ok(Reply::Propose(Ok(answer))) => {
                            return Ok(self.applied_here(answer, deadline).await);
                        }
                        Ok(Reply::Propose(Err(Refusal::Failed(e)))) => {
                            return Err(WriteError::Raft(e));
                        }
                        // Moved on, or unreachable: ask again. A call cut
                        // after it was sent may have been applied; puts and
                        // deletes are the same applied twice.
                        Ok(_) | Err(_) => {}
                    }
                }
                // No leader known yet (an election), a member stopping, or
                // a try that ran out of time.
                Ok(Err(Refusal::NotLeader(_) | Refusal::Later)) | Err(_) => {}
            }
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
            pause = (pause * 2).min(RETRY_MAX);
        }
    }

    /// `answer`, once its entry is applied on this node too (so that a
    /// writer reads its own write here), or at `deadline`.
    async fn applied_here(&self, answer: Response, deadline: Instant) -> Response {
        let within = deadline.saturating_duration_since(Instant::now());
        if !self.state.wait_applied(answer.index, within).await {
            tracing::debug!(
                group = %self.id,
                index = answer.index,
                "a write was committed but is not applied here yet"
            );
        }
        answer
    }

    /// Where the group stands, as this node sees it: its role, the leader,
    /// and each voter's lag (known on the leader only).
    pub fn status(&self) -> GroupStatus {
        let m = self.metrics();
        let last = m.last_log_index;
        let replication = m.replication.as_ref();
        let linked = self.peers.connected();
        let members = m
            .membership_config
            .membership()
            .voter_ids()
            .map(|id| {
                let matched = replication
                    .and_then(|r| r.get(&id))
                    .map(|l| l.map(|l| l.index));
                MemberStatus {
                    id,
                    linked: id == m.id || linked.contains(&id),
                    lag: matched
                        .map(|matched| last.unwrap_or(0).saturating_sub(matched.unwrap_or(0))),
                }
            })
            .collect();
        GroupStatus {
            me: m.id,
            role: match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            },
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: last,
            applied_index: m.last_applied.map(|l| l.index),
            members,
        }
    }

    /// Stop this member and remove everything it kept in the store (its
    /// log, vote and records): the group is gone for good.
    pub async fn destroy(&self, store: &Store) -> Result<(), ClusterError> {
        self.shutdown().await;
        let prefix = crate::records::group_prefix(self.id);
        for cf in [junction_store::Cf::RaftLog, junction_store::Cf::Raft] {
            let mut keys = Vec::new();
            store.scan(cf, &prefix, &mut |key, _| {
                keys.push(key.to_vec());
                true
            })?;
            for chunk in keys.chunks(4096) {
                let mut batch = junction_store::Batch::new();
                for key in chunk {
                    batch.delete(cf, key.clone());
                }
                store.submit(batch, false).await?.await?;
            }
        }
        Ok(())
    }

    /// Stop this member (the node's links stay up for its other groups).
    pub async fn shutdown(&self) {
        self.peers.unregister(self.id);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, group = %self.id, "group did not stop cleanly");
        }
    }
}

/// The members of the cluster: the metadata group's voters and
/// learners, each with its peer address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    /// Voters.
    pub voters: BTreeMap<NodeId, SocketAddr>,
    /// Learners (nodes joining, not caught up yet).
    pub learners: BTreeMap<NodeId, SocketAddr>,
}

/// This node's member of the metadata group, and the node's peer links.
/// Stop it with [`MetaNode::shutdown`]: its links' tasks hold it otherwise.
pub struct MetaNode {
    /// The metadata group.
    group: Group,
    /// The node's peer links.
    peers: Peers,
    /// The cluster's members as the group has them.
    members: tokio::sync::watch::Receiver<Members>,
    /// For groups started later over the same links.
    store: Store,
    timing: Timing,
}

impl std::fmt::Debug for MetaNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaNode")
            .field("peers", &self.peers)
            .finish()
    }
}

impl std::ops::Deref for MetaNode {
    type Target = Group;

    /// The metadata group's state, status and writes.
    fn deref(&self) -> &Group {
        &self.group
    }
}

impl MetaNode {
    /// Start this node (`me`) of the cluster `members` (every member's
    /// peer address, this node's included), accepting peers on
    /// `listener`, with the group's log and state in `store`; every link
    /// proves `secret` both ways. The member with the lowest id
    /// initializes the group on first start, unless `join`: then no node
    /// of `members` initializes, and this node waits to be added to the
    /// running cluster they are members of ([`Group::change_members`] on
    /// one of them). A restarted member finds its state in the store, and
    /// its peers are the group's members from then on, whatever
    /// `members` lists. With `tls` every peer link is TLS with
    /// certificates both ways.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        me: NodeId,
        listener: TcpListener,
        members: &BTreeMap<NodeId, SocketAddr>,
        secret: Arc<[u8]>,
        tls: Option<PeerTls>,
        store: Store,
        timing: &Timing,
        join: bool,
    ) -> Result<Self, ClusterError> {
        if secret.is_empty() {
            return Err(ClusterError::Raft("the cluster secret is empty".to_owned()));
        }
        let id_key = crate::records::state_key(GroupId::META, crate::records::CLUSTER);
        let stored: Option<ClusterId> = match store.get(junction_store::Cf::Raft, &id_key)? {
            Some(bytes) => Some(crate::records::decode("cluster id", &bytes)?),
            None => None,
        };
        let cluster = stored.or_else(|| (!join).then(|| cluster_id(members.keys().copied())));
        if stored.is_none()
            && let Some(id) = cluster
        {
            save_cluster_id(&store, id).await?;
        }
        let addrs: HashMap<NodeId, SocketAddr> =
            members.iter().map(|(id, addr)| (*id, *addr)).collect();
        let peers = Peers::start(me, listener, &addrs, secret, tls, cluster);
        if join {
            // Until this node has the group's membership, any member may
            // be the leader that dials it.
            peers.welcome_any();
        }
        if cluster.is_none() {
            // Kept once the first link tells it.
            let mut told = peers.cluster();
            let store = store.clone();
            tokio::spawn(async move {
                let id = told.wait_for(Option::is_some).await.ok().and_then(|id| *id);
                if let Some(id) = id
                    && let Err(e) = save_cluster_id(&store, id).await
                {
                    tracing::error!(error = %e, "the cluster's id was not kept");
                }
            });
        }
        let first = if join {
            None
        } else {
            members.keys().next().copied()
        };
        let started = Group::start_with(
            GroupId::META,
            members,
            &peers,
            store.clone(),
            timing,
            false,
            first,
        )
        .await;
        match started {
            Ok(group) => {
                let members = follow_members(&group, &peers, members.clone());
                Ok(Self {
                    group,
                    peers,
                    members,
                    store,
                    timing: timing.clone(),
                })
            }
            Err(e) => {
                // Nothing keeps running, and the address can be bound again.
                peers.shutdown().await;
                Err(e)
            }
        }
    }

    /// Start this node's member of another group over the same links and
    /// store (its members must be among the node's peers).
    pub async fn start_group(
        &self,
        group: GroupId,
        members: &BTreeMap<NodeId, SocketAddr>,
    ) -> Result<Group, ClusterError> {
        Group::start(
            group,
            members,
            &self.peers,
            self.store.clone(),
            &self.timing,
        )
        .await
    }

    /// Start this node's member of a replicated queue's group: as
    /// [`MetaNode::start_group`], with its records in memory only (each
    /// message is written once, in the log; a restart rebuilds them from
    /// the last snapshot and the log after it). Member `first`
    /// initializes the group, and so leads it first.
    pub async fn start_queue_group(
        &self,
        group: GroupId,
        members: &BTreeMap<NodeId, SocketAddr>,
        first: NodeId,
    ) -> Result<Group, ClusterError> {
        Group::start_with(
            group,
            members,
            &self.peers,
            self.store.clone(),
            &self.timing,
            true,
            Some(first),
        )
        .await
    }

    /// The cluster's members as the metadata group has them now, and as
    /// they change (empty until this node has the group's membership).
    pub fn members(&self) -> tokio::sync::watch::Receiver<Members> {
        self.members.clone()
    }

    /// The node's store (every group's log and records are in it).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The node's peer links.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// Stop the metadata group's member and close the links (stop the
    /// node's other groups first).
    pub async fn shutdown(&self) {
        self.group.shutdown().await;
        self.peers.shutdown().await;
    }
}

/// Keep the cluster's id in `store`, synced.
async fn save_cluster_id(store: &Store, id: ClusterId) -> Result<(), ClusterError> {
    let mut batch = junction_store::Batch::new();
    batch.put(
        junction_store::Cf::Raft,
        crate::records::state_key(GroupId::META, crate::records::CLUSTER).to_vec(),
        crate::records::encode("cluster id", &id)?,
    );
    store.submit(batch, true).await?.await?;
    Ok(())
}

/// Follow the metadata group's membership: the node's links go to its
/// members (once it has one: a joining node keeps its configured list
/// until then), each at the address `configured` gives it if it lists
/// it (a node may reach a member another way than the one that added
/// it: a proxy, another network), and the answer shows it as it changes.
fn follow_members(
    group: &Group,
    peers: &Peers,
    configured: BTreeMap<NodeId, SocketAddr>,
) -> tokio::sync::watch::Receiver<Members> {
    let (tx, rx) = tokio::sync::watch::channel(Members::default());
    let mut metrics = group.raft.metrics();
    let peers = peers.clone();
    tokio::spawn(async move {
        let mut seen = None;
        loop {
            let membership = metrics.borrow_and_update().membership_config.clone();
            if seen.as_ref() != Some(membership.log_id()) {
                seen = Some(*membership.log_id());
                let config = membership.membership();
                let addr = |id: &NodeId| {
                    configured
                        .get(id)
                        .copied()
                        .or_else(|| {
                            config
                                .get_node(id)
                                .and_then(|n| n.addr.parse::<SocketAddr>().ok())
                        })
                        .map(|a| (*id, a))
                };
                let members = Members {
                    voters: config.voter_ids().filter_map(|id| addr(&id)).collect(),
                    learners: config.learner_ids().filter_map(|id| addr(&id)).collect(),
                };
                let all: HashMap<NodeId, SocketAddr> = members
                    .voters
                    .iter()
                    .chain(&members.learners)
                    .map(|(id, a)| (*id, *a))
                    .collect();
                if all.contains_key(&peers.me()) {
                    peers.set_members(&all);
                } else if !all.is_empty() {
                    // Not a member yet (joining, and catching up through
                    // memberships older than the one that adds it): learn
                    // addresses, drop nobody, welcome whoever leads.
                    peers.learn_members(&all);
                }
                tx.send_replace(members);
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    });
    rx
}

/// A duration in whole milliseconds, as openraft's config counts them.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
