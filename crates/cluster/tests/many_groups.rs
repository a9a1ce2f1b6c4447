//! Many consensus groups on three nodes in one process: every group's
//! traffic crosses the same one link per pair of nodes, every group's log
//! shares each node's one store, and a write on any member of any group
//! reaches every member of that group only.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use junction_cluster::{Command, GroupId, NodeId, Timing};

const GROUPS: u64 = 24;

fn timing() -> Timing {
    common::quick_timing(Duration::from_secs(10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_share_one_link_per_pair_and_one_store_per_node() {
    let local = common::start(3, &timing()).await;
    let (nodes, members, stores) = (&local.nodes, &local.members, &local.stores);
    // Every node starts its member of every group.
    let mut groups: BTreeMap<(NodeId, u64), junction_cluster::Group> = BTreeMap::new();
    for (id, node) in nodes {
        for g in 1..=GROUPS {
            let group = node.start_group(GroupId(g), members).await.unwrap();
            groups.insert((*id, g), group);
        }
    }
    // One write per group, each on a different member (forwarded when it
    // does not lead), all at once.
    let writes = (1..=GROUPS).map(|g| {
        let group = &groups[&(1 + g % 3, g)];
        group.write(Command::Put {
            key: format!("queue/{g}").into_bytes(),
            value: g.to_be_bytes().to_vec(),
        })
    });
    for answer in futures_util::future::join_all(writes).await {
        answer.expect("write");
    }
    // Each group's record is on its three members, and on no other group.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let done = groups.iter().all(|((_, g), group)| {
            group.state().scan(b"queue/")
                == vec![(format!("queue/{g}").into_bytes(), g.to_be_bytes().to_vec())]
        });
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every group applied its write"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One link per pair carried all of it.
    for node in nodes.values() {
        assert_eq!(node.peers().connected().len(), 2);
    }
    // And each node's store took the appends of its 25 groups in fewer
    // syncs than appends: group commit across groups (each group's append
    // is synced; the committer merges those queued together).
    for store in stores {
        let stats = store.stats();
        assert!(
            stats.syncs > 0 && stats.batches > stats.commits,
            "{stats:?}"
        );
    }
    for group in groups.values() {
        group.shutdown().await;
    }
    for node in nodes.values() {
        node.shutdown().await;
    }
}

/// What a replicated queue's group needs of its members: every member
/// hears who leads, the leader confirms it leads, and a destroyed
/// member's log and records leave its store while the other groups'
/// stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_group_reports_its_leader_and_leaves_nothing_when_destroyed() {
    let local = common::start(3, &timing()).await;
    let (nodes, members, stores) = (&local.nodes, &local.members, &local.stores);
    // The metadata group settled first (its keys are compared below).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status: Vec<_> = nodes.values().map(|n| n.status()).collect();
        let leader = status[0].leader;
        if leader.is_some()
            && status
                .iter()
                .all(|s| s.leader == leader && s.applied_index == status[0].applied_index)
        {
            break;
        }
        assert!(Instant::now() < deadline, "{status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = GroupId::of_queue("/", "orders", "n1", 7);
    assert_ne!(id, GroupId::META);
    assert_ne!(id, GroupId::of_queue("/", "orders", "n1", 8));
    assert_ne!(id, GroupId::of_queue("/", "order", "sn1", 7));
    let mut groups = BTreeMap::new();
    for (n, node) in nodes {
        groups.insert(*n, node.start_group(id, members).await.unwrap());
    }
    // Every member's watch names the same leader; only it confirms.
    let mut seen = BTreeMap::new();
    for (n, group) in &groups {
        let mut watch = group.leadership();
        let deadline = Instant::now() + Duration::from_secs(20);
        let leader = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, watch.changed()).await {
                Ok(Some((_, Some(leader)))) => break leader,
                Ok(Some(_)) => {}
                other => panic!("no leader heard on node {n}: {other:?}"),
            }
        };
        seen.insert(*n, leader);
    }
    let leader = seen[&1];
    assert!(seen.values().all(|l| *l == leader), "{seen:?}");
    let confirm = Duration::from_secs(5);
    assert!(groups[&leader].confirm_leadership(confirm).await);
    let follower = groups.keys().copied().find(|n| *n != leader).unwrap();
    assert!(!groups[&follower].confirm_leadership(confirm).await);
    groups[&follower]
        .write(Command::Put {
            key: b"m1".to_vec(),
            value: b"body".to_vec(),
        })
        .await
        .unwrap();
    // Destroyed on every member: nothing of the group is left in any
    // store, and the metadata group's keys are untouched.
    let count = |store: &junction_store::Store, cf, group: GroupId| {
        let mut n = 0;
        store
            .scan(cf, &group.0.to_be_bytes(), &mut |_, _| {
                n += 1;
                true
            })
            .unwrap();
        n
    };
    for (n, group) in &groups {
        let store = &stores[usize::try_from(*n - 1).unwrap()];
        let cfs = [junction_store::Cf::RaftLog, junction_store::Cf::Raft];
        let meta_before: Vec<usize> = cfs
            .iter()
            .map(|cf| count(store, *cf, GroupId::META))
            .collect();
        assert!(cfs.iter().any(|cf| count(store, *cf, id) > 0));
        group.destroy(store).await.unwrap();
        for cf in cfs {
            assert_eq!(
                count(store, cf, id),
                0,
                "node {n} kept keys of the group in {cf:?}"
            );
        }
        let meta_after: Vec<usize> = cfs
            .iter()
            .map(|cf| count(store, *cf, GroupId::META))
            .collect();
        assert_eq!(meta_before, meta_after, "node {n}");
    }
    for node in nodes.values() {
        node.shutdown().await;
    }
}

/// A group's leadership handed to another member (openraft 0.9 has no
/// transfer call: `Group::hand_leadership_to`), asked on a member that
/// does not lead: the target leads, every member agrees, a write made
/// while the hand-over runs waits and is committed once (not lost), and
/// a hand-over to the leader itself is a no-op.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groups_leadership_is_handed_to_the_member_asked_for() {
    let local = common::start(3, &timing()).await;
    let (nodes, members) = (&local.nodes, &local.members);
    let id = GroupId(77);
    let mut groups = BTreeMap::new();
    for (n, node) in nodes {
        groups.insert(*n, node.start_group(id, members).await.unwrap());
    }
    let agreed = |groups: &BTreeMap<NodeId, junction_cluster::Group>| {
        let leaders: Vec<Option<NodeId>> = groups.values().map(|g| g.leader()).collect();
        (leaders[0].is_some() && leaders.iter().all(|l| *l == leaders[0]))
            .then(|| leaders[0].unwrap())
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        if let Some(l) = agreed(&groups) {
            break l;
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    groups[&first]
        .write(Command::Put {
            key: b"k/before".to_vec(),
            value: b"1".to_vec(),
        })
        .await
        .unwrap();
    let target = *groups.keys().find(|n| **n != first).unwrap();
    let asker = *groups
        .keys()
        .find(|n| **n != first && **n != target)
        .unwrap();
    assert!(groups[&first].hand_leadership_to(first).await);

    // Asked on the third member; a write on the old leader meanwhile.
    let (moved, written) = tokio::join!(groups[&asker].hand_leadership_to(target), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        groups[&first]
            .write(Command::Put {
                key: b"k/during".to_vec(),
                value: b"2".to_vec(),
            })
            .await
    });
    assert!(moved);
    written.expect("a write during the hand-over is committed");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let applied = groups.values().all(|g| {
            g.state().scan(b"k/")
                == vec![
                    (b"k/before".to_vec(), b"1".to_vec()),
                    (b"k/during".to_vec(), b"2".to_vec()),
                ]
        });
        if agreed(&groups) == Some(target) && applied {
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", agreed(&groups));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(groups[&target].is_leader());
    for group in groups.values() {
        group.shutdown().await;
    }
    for node in nodes.values() {
        node.shutdown().await;
    }
}
