//! Quorum queues' groups on this node (docs/cluster.md "Replicated
//! (quorum) queues"): for each quorum queue, this node's member of the
//! queue's consensus group, a writer that commits the messages published
//! here in batches, a settler that removes what the leader's consumers
//! settled, a watch that hands the queue to the broker while this node
//! leads the group, and, on the leader, a keeper of the group's members:
//! the cluster's voters (nodes joining and leaving).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use junction_cluster::{
    Change, Command, Group, GroupId, MemberChange, Members, MetaNode, NodeId, WriteError,
};
use junction_core::{Broker, EnqueueFuture, ForwardAnswer, QuorumLog, QuorumQueue};
use tokio::sync::{mpsc, oneshot, watch};

/// Messages a queue's writer holds before publishers wait for room.
const WRITER_MESSAGES: usize = 8192;
/// Messages, and bytes, one entry of a queue's group carries at most.
const ENTRY_MESSAGES: usize = 512;
const ENTRY_BYTES: usize = 512 * 1024;
/// Entries one node's writer has on their way at once while it leads.
const WRITES_IN_FLIGHT: usize = 4;
/// Removals one entry carries at most (16-byte keys: far below the
/// group's 1 MiB command limit).
const SETTLE_KEYS: usize = 4096;

/// Leader hand-overs a rebalance runs at once.
const MOVES_AT_ONCE: usize = 16;

/// Longest wait for a majority to confirm this node leads a queue's
/// group, and the pause before asking again.
const CONFIRM_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);
const CONFIRM_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

/// A message waiting for its queue's writer.
struct Enqueue {
    key: Vec<u8>,
    value: Vec<u8>,
    done: oneshot::Sender<ForwardAnswer>,
}

/// This node's member of one quorum queue's group.
struct Member {
    queue: QuorumQueue,
    group: GroupId,
    /// The started member (None until it is).
    started: watch::Receiver<Option<Arc<Group>>>,
    writes: mpsc::Sender<Enqueue>,
    settles: mpsc::UnboundedSender<Vec<Vec<u8>>>,
}

/// Every quorum queue's group this node is a member of.
pub struct Quorums {
    /// Itself, for the tasks it starts.
    me: Weak<Quorums>,
    /// The node's metadata member: its links and store.
    node: Weak<MetaNode>,
    /// The configured members: the cluster's until this node has the
    /// metadata group's membership (every queue's group has them all).
    seeds: BTreeMap<NodeId, SocketAddr>,
    /// Member names by id.
    names: crate::cluster::Names,
    broker: std::sync::OnceLock<Weak<Broker>>,
    queues: parking_lot::Mutex<HashMap<(String, String), Arc<Member>>>,
}

impl std::fmt::Debug for Quorums {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quorums")
            .field("queues", &self.queues.lock().len())
            .finish()
    }
}

impl Quorums {
    /// The quorum queues' groups of the node whose metadata member is
    /// `node`, with every cluster member in each group.
    pub fn new(
        node: Weak<MetaNode>,
        seeds: BTreeMap<NodeId, SocketAddr>,
        names: crate::cluster::Names,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            node,
            seeds,
            names,
            broker: std::sync::OnceLock::new(),
            queues: parking_lot::Mutex::default(),
        })
    }

    /// The cluster's voters now: every queue's group should have them.
    fn members(&self) -> BTreeMap<NodeId, SocketAddr> {
        let voters = self
            .node
            .upgrade()
            .map(|n| n.members().borrow().voters.clone())
            .unwrap_or_default();
        if voters.is_empty() {
            self.seeds.clone()
        } else {
            voters
        }
    }

    /// Hand the queues to `broker` as this node leads them.
    pub fn serve(&self, broker: &Arc<Broker>) {
        let _ = self.broker.set(Arc::downgrade(broker));
    }

    /// The group of quorum queue `name`, once started here.
    pub fn group(&self, vhost: &str, name: &str) -> Option<Arc<Group>> {
        let member = self
            .queues
            .lock()
            .get(&(vhost.to_owned(), name.to_owned()))
            .cloned()?;
        member.started.borrow().clone()
    }

    /// Moves quorum queues' leaders so that every reachable node leads
    /// as many as any other, give or take one (RabbitMQ's `rabbitmq-queues
    /// rebalance quorum`): moves from the node leading most to the one
    /// leading fewest until they differ by at most one, each move a
    /// hand-over (`Group::hand_leadership_to`), all at once. Answers
    /// (queues, moves planned, moves made).
    pub async fn rebalance(&self) -> (usize, usize, usize) {
        let Some(node) = self.node.upgrade() else {
            return (0, 0, 0);
        };
        let peers = node.peers().clone();
        let me = peers.me();
        let groups: Vec<Arc<Group>> = {
            let members: Vec<Arc<Member>> = self.queues.lock().values().cloned().collect();
            members
                .iter()
                .filter_map(|m| m.started.borrow().clone())
                .collect()
        };
        let live: Vec<NodeId> = self
            .members()
            .keys()
            .copied()
            .filter(|id| *id == me || peers.is_linked(*id))
            .collect();
        let mut led: BTreeMap<NodeId, Vec<Arc<Group>>> =
            live.iter().map(|id| (*id, Vec::new())).collect();
        for g in &groups {
            if let Some(list) = g.leader().and_then(|l| led.get_mut(&l)) {
                list.push(Arc::clone(g));
            }
        }
        let mut moves: Vec<(Arc<Group>, NodeId)> = Vec::new();
        loop {
            let most = led.iter().max_by_key(|(_, g)| g.len()).map(|(id, _)| *id);
            let fewest = led.iter().min_by_key(|(_, g)| g.len()).map(|(id, _)| *id);
            let (Some(most), Some(fewest)) = (most, fewest) else {
                break;
            };
            if led[&most].len() <= led[&fewest].len() + 1 {
                break;
            }
            let Some(g) = led.get_mut(&most).and_then(Vec::pop) else {
                break;
            };
            led.entry(fewest).or_default().push(Arc::clone(&g));
            moves.push((g, fewest));
        }
        let planned = moves.len();
        // A few at once: each holds a request slot on its leader's link
        // for about an election timeout, and those slots also carry the
        // other groups' Raft traffic.
        use futures_util::StreamExt;
        let made = futures_util::stream::iter(moves)
            .map(|(g, to)| async move { g.hand_leadership_to(to).await })
            .buffer_unordered(MOVES_AT_ONCE)
            .filter(|moved| std::future::ready(*moved))
            .count()
            .await;
        tracing::info!(
            queues = groups.len(),
            planned,
            made,
            "quorum queue leaders rebalanced"
        );
        (groups.len(), planned, made)
    }

    /// The name of member `id`.
    pub fn name_of(&self, id: NodeId) -> Option<String> {
        self.names.read().get(&id).cloned()
    }

    /// Stop every member here (the node is stopping; their logs stay).
    pub async fn shutdown(&self) {
        let members: Vec<Arc<Member>> = self.queues.lock().drain().map(|(_, m)| m).collect();
        let groups: Vec<Arc<Group>> = members
            .iter()
            .filter_map(|m| m.started.borrow().clone())
            .collect();
        futures_util::future::join_all(groups.iter().map(|g| g.shutdown())).await;
    }

    /// Start member `member`'s group and its tasks.
    fn start(
        &self,
        member: &Arc<Member>,
        ready: watch::Sender<Option<Arc<Group>>>,
        writes: mpsc::Receiver<Enqueue>,
        settles: mpsc::UnboundedReceiver<Vec<Vec<u8>>>,
    ) {
        let me = self.me.clone();
        let member = Arc::clone(member);
        tokio::spawn(async move {
            let Some(node) = me.upgrade().and_then(|q| q.node.upgrade()) else {
                return;
            };
            let mut members = me.upgrade().map(|q| q.members()).unwrap_or_default();
            // The declaring node starts the group and leads it first (as
            // RabbitMQ's client-local leader locator): leaders spread as
            // declarations do, and a queue declared while another member
            // is down has a leader at once.
            let first = junction_cluster::node_id(&member.queue.owner);
            // A node still catching up as a learner may declare one: it is
            // a member of the group it starts.
            let here = node.peers().me();
            if first == here
                && let Some(addr) = me.upgrade().and_then(|q| q.seeds.get(&here).copied())
            {
                members.entry(here).or_insert(addr);
            }
            let mut pause = std::time::Duration::from_millis(200);
            let group = loop {
                match node.start_queue_group(member.group, &members, first).await {
                    Ok(group) => break Arc::new(group),
                    Err(e) => {
                        tracing::error!(vhost = member.queue.vhost, queue = member.queue.name, error = %e, "the quorum queue's group did not start here; trying again");
                    }
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(10));
                let current = me.upgrade().and_then(|q| {
                    q.queues
                        .lock()
                        .get(&(member.queue.vhost.clone(), member.queue.name.clone()))
                        .cloned()
                });
                if !current.is_some_and(|c| Arc::ptr_eq(&c, &member)) {
                    // Closed meanwhile.
                    return;
                }
            };
            tokio::spawn(keep_members(Arc::clone(&group), node.members()));
            drop(node);
            let (vhost, name) = (member.queue.vhost.clone(), member.queue.name.clone());
            let broker = me
                .upgrade()
                .and_then(|q| q.broker.get().cloned())
                .unwrap_or_default();
            {
                let broker = broker.clone();
                let (vhost, name) = (vhost.clone(), name.clone());
                group.state().observe(Arc::new(move |change: &Change| {
                    if let (Change::Put { key, value }, Some(broker)) = (change, broker.upgrade()) {
                        broker.quorum_put(&vhost, &name, key.clone(), value);
                    }
                }));
            }
            let _ = ready.send(Some(Arc::clone(&group)));
            tokio::spawn(write_loop(Arc::clone(&group), writes));
            tokio::spawn(settle_loop(Arc::clone(&group), settles, name.clone()));
            lead_loop(me, group, broker, vhost, name).await;
        });
    }
}

/// Hand the queue to the broker while this node leads the group: built
/// only once a majority confirmed this node in its term and everything
/// committed before is applied here.
async fn lead_here(group: &Group, broker: &Broker, vhost: &str, name: &str) {
    while group.is_leader() {
        if group.confirm_leadership(CONFIRM_WITHIN).await {
            let state = group.state();
            state.while_quiet(|| broker.quorum_lead(vhost, name, state.scan(b"")));
            return;
        }
        tokio::time::sleep(CONFIRM_PAUSE).await;
    }
}

/// Tell the broker who leads the group as it changes: this node builds
/// the queue when it leads, and drops it when it stops leading.
async fn lead_loop(
    quorums: Weak<Quorums>,
    group: Arc<Group>,
    broker: Weak<Broker>,
    vhost: String,
    name: String,
) {
    let mut leadership = group.leadership();
    let _stepped_down = StepDown {
        quorums: quorums.clone(),
        group: group.id(),
        broker: broker.clone(),
        vhost: vhost.clone(),
        name: name.clone(),
    };
    while let Some((leading, leader)) = leadership.changed().await {
        let (Some(broker), Some(quorums)) = (broker.upgrade(), quorums.upgrade()) else {
            return;
        };
        if leading {
            lead_here(&group, &broker, &vhost, &name).await;
        } else {
            let leader = leader.and_then(|id| quorums.name_of(id));
            broker.quorum_follow(&vhost, &name, leader);
        }
    }
}

/// How long a failed change of a group's members waits before the next
/// try, and the longest one try waits (an added node catching up).
const MEMBERS_RETRY: std::time::Duration = std::time::Duration::from_secs(5);
const MEMBERS_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

/// While this node leads the queue's group, make its members the
/// cluster's voters (`cluster`, the metadata group's membership): a node
/// that joined is added (a learner until caught up, then a voter), one
/// that left is removed, removals first. A member still linked to this
/// node is never removed (this node's view of the cluster may be behind:
/// it restarted, say), and changes are made here only, while this node
/// leads. Runs until the member stops.
async fn keep_members(group: Arc<Group>, mut cluster: tokio::sync::watch::Receiver<Members>) {
    let mut leadership = group.leadership();
    let mut retry = false;
    loop {
        if group.is_leader() {
            let (want, learning) = {
                let members = cluster.borrow_and_update();
                (members.voters.clone(), members.learners.clone())
            };
            let voters = group.voters();
            let me = group.me();
            retry = false;
            if !want.is_empty() {
                // Never this node (a learner of the cluster may lead a
                // queue it declared), a node joining, or one linked here.
                let mut changes: Vec<MemberChange> = voters
                    .iter()
                    .chain(&group.learners())
                    .filter(|id| {
                        **id != me
                            && !want.contains_key(id)
                            && !learning.contains_key(id)
                            && !group.is_linked(**id)
                    })
                    .map(|id| MemberChange::Remove { id: *id })
                    .collect();
                if changes.is_empty() && group.is_joint() {
                    changes.push(MemberChange::Finish);
                }
                changes.extend(want.iter().filter(|(id, _)| !voters.contains(id)).map(
                    |(id, addr)| MemberChange::Add {
                        id: *id,
                        addr: *addr,
                    },
                ));
                for change in changes {
                    if !group.is_leader() {
                        break;
                    }
                    if let Err(e) = group
                        .change_members_here(change.clone(), MEMBERS_WITHIN)
                        .await
                    {
                        tracing::warn!(group = %group.id(), ?change, error = %e, "a quorum queue's members not changed yet; trying again");
                        retry = true;
                    }
                }
            }
        }
        tokio::select! {
            changed = cluster.changed() => if changed.is_err() { return },
            led = leadership.changed() => if led.is_none() { return },
            () = tokio::time::sleep(MEMBERS_RETRY), if retry => {}
        }
    }
}

/// When a member stops (the queue deleted, the node stopping), its queue
/// here, if it led, goes with it.
struct StepDown {
    quorums: Weak<Quorums>,
    group: GroupId,
    broker: Weak<Broker>,
    vhost: String,
    name: String,
}

impl Drop for StepDown {
    fn drop(&mut self) {
        // Only while the queue is still this group's here (not a queue of
        // the same name declared since, whose group is another).
        let current = self.quorums.upgrade().and_then(|q| {
            q.queues
                .lock()
                .get(&(self.vhost.clone(), self.name.clone()))
                .map(|m| m.group)
        });
        if current == Some(self.group)
            && let Some(broker) = self.broker.upgrade()
        {
            broker.quorum_follow(&self.vhost, &self.name, None);
        }
    }
}

/// Commit the messages published here, a batch per entry. While this
/// node leads the group, up to [`WRITES_IN_FLIGHT`] entries are on their
/// way at once (proposed in order to the local Raft member, which keeps
/// their order); on a follower one at a time, as its proposals are
/// forwarded to the leader and could overtake each other.
async fn write_loop(group: Arc<Group>, mut writes: mpsc::Receiver<Enqueue>) {
    use futures_util::StreamExt;
    let mut held: Option<Enqueue> = None;
    let mut inflight = futures_util::stream::FuturesOrdered::new();
    let mut closed = false;
    loop {
        let room = if group.is_leader() {
            WRITES_IN_FLIGHT
        } else {
            1
        };
        while inflight.len() < room && !closed {
            let first = match held.take() {
                Some(first) => first,
                None if inflight.is_empty() => match writes.recv().await {
                    Some(first) => first,
                    None => {
                        closed = true;
                        break;
                    }
                },
                None => match writes.try_recv() {
                    Ok(first) => first,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                },
            };
            let (batch, next) = gather(first, &mut writes);
            held = next;
            inflight.push_back(commit(Arc::clone(&group), batch));
        }
        if inflight.is_empty() {
            if closed {
                return;
            }
            continue;
        }
        // The oldest entry's answer, or a message to start the next one.
        tokio::select! {
            _ = inflight.next() => {}
            next = writes.recv(), if held.is_none() && !closed && inflight.len() < room => {
                match next {
                    Some(next) => held = Some(next),
                    None => closed = true,
                }
            }
        }
    }
}

/// The messages of one entry: `first` and what waits after it, up to
/// [`ENTRY_MESSAGES`] and [`ENTRY_BYTES`]; a message that would take the
/// entry past its bytes is handed back for the next (alone, if it is that
/// large: refused alone).
fn gather(first: Enqueue, writes: &mut mpsc::Receiver<Enqueue>) -> (Vec<Enqueue>, Option<Enqueue>) {
    let mut bytes = first.key.len() + first.value.len();
    let mut batch = vec![first];
    while batch.len() < ENTRY_MESSAGES && bytes < ENTRY_BYTES {
        match writes.try_recv() {
            Ok(next) if bytes + next.key.len() + next.value.len() > ENTRY_BYTES => {
                return (batch, Some(next));
            }
            Ok(next) => {
                bytes += next.key.len() + next.value.len();
                batch.push(next);
            }
            Err(_) => break,
        }
    }
    (batch, None)
}

/// Commits one entry of messages and answers each one's publisher.
async fn commit(group: Arc<Group>, batch: Vec<Enqueue>) {
    let (puts, dones): (Vec<Command>, Vec<oneshot::Sender<ForwardAnswer>>) = batch
        .into_iter()
        .map(|e| {
            (
                Command::Put {
                    key: e.key,
                    value: e.value,
                },
                e.done,
            )
        })
        .unzip();
    let answer: ForwardAnswer = match group.write(Command::Batch(puts)).await {
        Ok(_) => Ok((1, 0)),
        Err(WriteError::TooLarge(bytes)) => Err(format!(
            "a message of {bytes} bytes is over a quorum queue's limit"
        )),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = &answer {
        tracing::warn!(group = %group.id(), messages = dones.len(), error = %e, "messages for a quorum queue were not committed");
    }
    for done in dones {
        let _ = done.send(answer.clone());
    }
}

/// Remove settled messages from the group, gathering what waits, at
/// most [`SETTLE_KEYS`] per entry; a removal that fails is tried again
/// while this node leads the group (removals are the same applied twice).
async fn settle_loop(
    group: Arc<Group>,
    mut settles: mpsc::UnboundedReceiver<Vec<Vec<u8>>>,
    queue: String,
) {
    let mut waiting: Vec<Vec<u8>> = Vec::new();
    loop {
        if waiting.is_empty() {
            match settles.recv().await {
                Some(keys) => waiting = keys,
                None => return,
            }
        }
        while waiting.len() < SETTLE_KEYS {
            match settles.try_recv() {
                Ok(more) => waiting.extend(more),
                Err(_) => break,
            }
        }
        let rest = waiting.split_off(waiting.len().min(SETTLE_KEYS));
        let keys = std::mem::replace(&mut waiting, rest);
        let count = keys.len();
        let deletes: Vec<Command> = keys
            .iter()
            .cloned()
            .map(|key| Command::Delete { key })
            .collect();
        let mut pause = std::time::Duration::from_millis(100);
        loop {
            match group.write(Command::Batch(deletes.clone())).await {
                Ok(_) => break,
                Err(e) if group.is_leader() => {
                    tracing::warn!(queue, messages = count, error = %e, "settled messages of a quorum queue not removed yet; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(2));
                }
                Err(e) => {
                    // Another node leads now: it delivers them again.
                    tracing::warn!(queue, messages = count, error = %e, "settled messages of a quorum queue were not removed");
                    break;
                }
            }
        }
    }
}

impl QuorumLog for Quorums {
    fn open(&self, queue: QuorumQueue) {
        let key = (queue.vhost.clone(), queue.name.clone());
        let group = GroupId::of_queue(&queue.vhost, &queue.name, &queue.owner, queue.id.0);
        let mut queues = self.queues.lock();
        if let Some(existing) = queues.get(&key) {
            if existing.group == group {
                return;
            }
            // The name was declared again: the old group goes.
            let old = queues.remove(&key).expect("present");
            self.destroy(old);
        }
        let (ready, started) = watch::channel(None);
        let (writes, write_rx) = mpsc::channel(WRITER_MESSAGES);
        let (settles, settle_rx) = mpsc::unbounded_channel();
        let member = Arc::new(Member {
            queue,
            group,
            started,
            writes,
            settles,
        });
        queues.insert(key, Arc::clone(&member));
        drop(queues);
        self.start(&member, ready, write_rx, settle_rx);
    }

    fn close(&self, vhost: &str, name: &str) {
        let member = self
            .queues
            .lock()
            .remove(&(vhost.to_owned(), name.to_owned()));
        if let Some(member) = member {
            self.destroy(member);
        }
    }

    fn enqueue(&self, vhost: &str, name: &str, key: Vec<u8>, value: Vec<u8>) -> EnqueueFuture<'_> {
        let member = self
            .queues
            .lock()
            .get(&(vhost.to_owned(), name.to_owned()))
            .cloned();
        let name = name.to_owned();
        // The answer's receiver is what this yields: the publisher awaits
        // it later, with the other answers of its publish.
        #[allow(clippy::async_yields_async)]
        Box::pin(async move {
            let (done, answer) = oneshot::channel();
            match member {
                Some(member) => {
                    if let Err(e) = member.writes.send(Enqueue { key, value, done }).await {
                        let _ = e.0.done.send(Err("the quorum queue is closing".to_owned()));
                    }
                }
                None => {
                    let _ = done.send(Err(format!("no group for quorum queue '{name}' here")));
                }
            }
            answer
        })
    }

    fn relead(&self, vhost: &str, name: &str) {
        let (Some(group), Some(broker)) = (
            self.group(vhost, name),
            self.broker.get().and_then(Weak::upgrade),
        ) else {
            return;
        };
        let (vhost, name) = (vhost.to_owned(), name.to_owned());
        tokio::spawn(async move { lead_here(&group, &broker, &vhost, &name).await });
    }

    fn settle(&self, vhost: &str, name: &str, keys: Vec<Vec<u8>>) {
        let member = self
            .queues
            .lock()
            .get(&(vhost.to_owned(), name.to_owned()))
            .cloned();
        if let Some(member) = member {
            let _ = member.settles.send(keys);
        }
    }
}

impl Quorums {
    /// Stop `member`'s group once it started, and remove its log and
    /// records from the store.
    fn destroy(&self, member: Arc<Member>) {
        let node = self.node.clone();
        tokio::spawn(async move {
            let mut started = member.started.clone();
            let group = match started.wait_for(Option::is_some).await {
                Ok(group) => group.clone(),
                Err(_) => None,
            };
            let (Some(group), Some(node)) = (group, node.upgrade()) else {
                return;
            };
            if let Err(e) = group.destroy(node.store()).await {
                tracing::warn!(group = %member.group, error = %e, "a deleted quorum queue's group left records in the store");
            }
        });
    }
}
