//! Three metadata-group members in one process, on loopback sockets,
//! each with its own RocksDB store: they elect a leader, replicate writes
//! to every member, survive losing the leader, and a stopped member
//! rejoins from its own store and catches up.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use junction_cluster::{
    Command, GroupId, MetaNode, NodeId, Response, StateMachine, Timing, WriteError,
};
use junction_store::{Store, StoreOptions};
use tokio::net::TcpListener;

/// Elections in about a second; a write gives up after two.
fn timing() -> Timing {
    common::quick_timing(Duration::from_secs(2))
}

/// Wait up to ten seconds for `check` to hold.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The one node that leads, once all running nodes agree on it.
async fn leader(nodes: &BTreeMap<NodeId, MetaNode>) -> NodeId {
    let mut found = None;
    eventually("one agreed leader", || {
        let leaders: Vec<Option<NodeId>> =
            nodes.values().map(|n| n.metrics().current_leader).collect();
        found =
            leaders[0].filter(|l| leaders.iter().all(|x| *x == Some(*l)) && nodes.contains_key(l));
        found.is_some_and(|l| nodes[&l].is_leader())
    })
    .await;
    found.expect("leader")
}

/// Bind `addr` again. A peer dialing the stopped node can, rarely, be
/// given that very port as its source port, so this retries for a while.
async fn rebind(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot bind {addr} again: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn put(key: &str, value: &str) -> Command {
    Command::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_replicate_lose_the_leader_and_catch_up_after_a_restart() {
    let mut local = common::start(3, &timing()).await;
    let members = local.members.clone();
    let mut nodes = BTreeMap::new();
    nodes.append(&mut local.nodes);
    // A node's store closes with its last handle: only its node keeps one.
    local.stores.clear();

    // A write on the leader reaches every member's state machine.
    let first = leader(&nodes).await;
    let answer = nodes[&first]
        .write(put("vhost/a", "1"))
        .await
        .expect("write");
    assert_eq!(answer.previous, None);
    assert!(answer.index > 0, "{answer:?}");
    let first_index = answer.index;
    let answer = nodes[&first]
        .write(put("vhost/a", "2"))
        .await
        .expect("write");
    assert_eq!(
        answer,
        Response {
            previous: Some(b"1".to_vec()),
            index: first_index + 1
        }
    );
    eventually("the write on every member", || {
        nodes
            .values()
            .all(|n| n.state().get(b"vhost/a").as_deref() == Some(&b"2"[..]))
    })
    .await;

    // A command too large for one log entry is refused before Raft sees it.
    let big = Command::Put {
        key: b"vhost/big".to_vec(),
        value: vec![0; 2 << 20],
    };
    match nodes[&first].write(big).await {
        Err(WriteError::TooLarge(n)) => assert_eq!(n, 9 + (2 << 20)),
        other => panic!("a 2 MiB command was not refused: {other:?}"),
    }

    // A write on a follower is forwarded to the leader and answered once
    // committed there and applied on the follower too.
    let follower = *nodes.keys().find(|id| **id != first).unwrap();
    let answer = nodes[&follower].write(put("vhost/b", "x")).await;
    assert_eq!(answer.expect("forwarded write").previous, None);
    assert_eq!(
        nodes[&follower].state().get(b"vhost/b").as_deref(),
        Some(&b"x"[..])
    );
    // A batch is one entry: all of it or none, in order.
    let answer = nodes[&follower]
        .write(Command::Batch(vec![
            put("vhost/d", "1"),
            put("vhost/e", "2"),
            Command::Delete {
                key: b"vhost/d".to_vec(),
            },
        ]))
        .await
        .expect("batch");
    assert_eq!(answer.previous, None);
    assert_eq!(nodes[&follower].state().get(b"vhost/d"), None);
    assert_eq!(
        nodes[&follower].state().get(b"vhost/e").as_deref(),
        Some(&b"2"[..])
    );
    eventually("the forwarded write on every member", || {
        nodes
            .values()
            .all(|n| n.state().get(b"vhost/b").as_deref() == Some(&b"x"[..]))
    })
    .await;

    // The leader reports every member linked and caught up; a follower
    // names the leader and cannot know the others' lag.
    eventually("the leader sees every member caught up", || {
        let s = nodes[&first].status();
        s.role == "leader"
            && s.members.len() == 3
            && s.members.iter().all(|m| m.linked && m.lag == Some(0))
    })
    .await;
    let seen = nodes[&follower].status();
    assert_eq!((seen.role, seen.leader), ("follower", Some(first)));
    assert!(seen.members.iter().all(|m| m.lag.is_none()), "{seen:?}");

    // The leader stops: the other two elect one of themselves and go on.
    let stopped = nodes.remove(&first).unwrap();
    stopped.shutdown().await;
    // Its store closes with the last handle on it.
    drop(stopped);
    let second = leader(&nodes).await;
    assert_ne!(second, first);
    nodes[&second]
        .write(Command::Delete {
            key: b"vhost/a".to_vec(),
        })
        .await
        .expect("write after losing the leader");
    nodes[&second]
        .write(put("vhost/c", "3"))
        .await
        .expect("write");
    eventually("the writes on both members", || {
        nodes
            .values()
            .all(|n| n.state().get(b"vhost/a").is_none() && n.state().get(b"vhost/c").is_some())
    })
    .await;

    // The stopped member's store holds what it had applied...
    let dir = local.dir(first);
    {
        let store = Store::open_rocksdb(dir, StoreOptions::default()).unwrap();
        let state = StateMachine::open(store.clone(), GroupId::META).unwrap();
        assert_eq!(state.get(b"vhost/a").as_deref(), Some(&b"2"[..]));
        assert_eq!(state.get(b"vhost/c"), None);
        store.close().await.unwrap();
    }
    // ...and it restarts from there and catches up with what it missed.
    let listener = rebind(members[&first]).await;
    let (back, _) = common::start_node(first, listener, &members, dir, &timing()).await;
    nodes.insert(first, back);
    eventually("the restarted member caught up", || {
        let s = nodes[&first].state();
        s.get(b"vhost/a").is_none() && s.get(b"vhost/c").as_deref() == Some(&b"3"[..])
    })
    .await;
    let applied: Vec<_> = nodes.values().map(|n| n.state().last_applied()).collect();
    eventually("every member applied the same log", || {
        let now: Vec<_> = nodes.values().map(|n| n.state().last_applied()).collect();
        now.windows(2).all(|w| w[0] == w[1])
    })
    .await;
    assert!(applied.iter().all(Option::is_some));

    // Alone, a member cannot write: no majority, whoever it asks.
    let alone = *nodes.keys().next().unwrap();
    let others: Vec<NodeId> = nodes.keys().copied().filter(|id| *id != alone).collect();
    for id in others {
        nodes.remove(&id).unwrap().shutdown().await;
    }
    let started = Instant::now();
    match nodes[&alone].write(put("vhost/d", "4")).await {
        Err(WriteError::Unavailable(_)) => {}
        other => panic!("a member without a majority took a write: {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(nodes[&alone].state().get(b"vhost/d"), None);
    for (_, node) in nodes {
        node.shutdown().await;
    }
}

/// Asks `node` to add node `id` at `addr` to the cluster.
async fn add(node: &MetaNode, id: NodeId, addr: SocketAddr) {
    node.change_members(
        junction_cluster::MemberChange::Add { id, addr },
        Duration::from_secs(10),
    )
    .await
    .expect("join");
}

/// Waits until every node of `nodes` has `want` as the voters.
async fn voters_everywhere(nodes: &BTreeMap<NodeId, MetaNode>, want: &[NodeId]) {
    eventually("the voters on every node", || {
        nodes.values().all(|n| {
            n.members()
                .borrow()
                .voters
                .keys()
                .copied()
                .eq(want.iter().copied())
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_a_running_cluster_and_a_stopped_one_is_forgotten() {
    use junction_cluster::MemberChange;
    let timing = timing();
    let local = common::start(3, &timing).await;
    let mut nodes = local.nodes;
    let first = leader(&nodes).await;
    nodes[&first]
        .write(put("vhost/before", "1"))
        .await
        .expect("write");

    // Node 4 starts to join: it lists one member that does not lead and
    // itself, never initializes, and knows no cluster yet.
    let dir4 = tempfile::tempdir().unwrap();
    let l4 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr4 = l4.local_addr().unwrap();
    let seed = *nodes.keys().find(|id| **id != first).unwrap();
    let seeds: BTreeMap<NodeId, SocketAddr> = [(seed, local.members[&seed]), (4, addr4)].into();
    let (n4, _) = common::start_node_with(4, l4, &seeds, dir4.path(), &timing, true).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(n4.status().leader, None, "{:?}", n4.status());
    assert_eq!(n4.state().get(b"vhost/before"), None);

    // Added from a member that may not lead (the change goes to the
    // leader): a learner until it caught up, then a voter.
    let asker = *nodes.keys().find(|id| **id != first).unwrap();
    add(&nodes[&asker], 4, addr4).await;
    nodes.insert(4, n4);
    voters_everywhere(&nodes, &[1, 2, 3, 4]).await;
    assert_eq!(
        nodes[&4].state().get(b"vhost/before").as_deref(),
        Some(&b"1"[..])
    );
    // Node 4 learned node 2 and 3 from the group and linked to them.
    eventually("node 4 linked to every member", || {
        nodes[&4].peers().connected() == [1, 2, 3]
    })
    .await;
    // Adding it again changes nothing.
    add(&nodes[&first], 4, addr4).await;

    // Node 3 stops and is forgotten (asked on node 4, which forwards it).
    nodes.remove(&3).unwrap().shutdown().await;
    nodes[&4]
        .change_members(MemberChange::Remove { id: 3 }, Duration::from_secs(10))
        .await
        .expect("leave");
    voters_everywhere(&nodes, &[1, 2, 4]).await;
    // With node 1 stopped too, nodes 2 and 4 are a majority of three and
    // still take writes (of the four before, two would not be).
    nodes.remove(&1).unwrap().shutdown().await;
    let last = leader(&nodes).await;
    nodes[&last]
        .write(put("vhost/after", "2"))
        .await
        .expect("a write with two of three voters");
    eventually("both members applied it", || {
        nodes
            .values()
            .all(|n| n.state().get(b"vhost/after").as_deref() == Some(&b"2"[..]))
    })
    .await;
    for (_, node) in nodes {
        node.shutdown().await;
    }
}
