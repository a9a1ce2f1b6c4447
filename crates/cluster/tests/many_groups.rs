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
