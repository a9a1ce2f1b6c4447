//! Peer links on loopback: they come up only between members of one
//! cluster that hold the same secret, never from a node that is not
//! listed, and follow the member list as it changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use junction_cluster::Peers;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The cluster id of the pairs below.
const CLUSTER: [u8; 32] = [7; 32];

async fn pair(
    secret_1: &[u8],
    secret_2: &[u8],
) -> (Peers, Peers, HashMap<u64, std::net::SocketAddr>) {
    let l1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let l2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let members: HashMap<u64, _> =
        [(1, l1.local_addr().unwrap()), (2, l2.local_addr().unwrap())].into();
    let p1 = Peers::start(1, l1, &members, Arc::from(secret_1), None, Some(CLUSTER));
    let p2 = Peers::start(2, l2, &members, Arc::from(secret_2), None, Some(CLUSTER));
    (p1, p2, members)
}

/// Wait up to ten seconds for nodes 1 and 2 to be linked, both ways.
async fn linked(p1: &Peers, p2: &Peers) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(p1.connected() == [2] && p2.connected() == [1]) {
        assert!(
            Instant::now() < deadline,
            "the members' link did not come up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_with_the_same_secret_link_and_others_never_do() {
    let (p1, p2, _) = pair(b"same", b"same").await;
    linked(&p1, &p2).await;
    p1.shutdown().await;
    p2.shutdown().await;

    // Different secrets: the dialer keeps trying and is refused each time
    // (a second of redials, up to twenty handshakes).
    let (p1, p2, _) = pair(b"one", b"two").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(p1.connected(), Vec::<u64>::new());
    assert_eq!(p2.connected(), Vec::<u64>::new());
    p1.shutdown().await;
    p2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_gets_a_challenge_and_is_cut_off() {
    let (p1, p2, members) = pair(b"same", b"same").await;
    // A raw socket to node 2's port: the first thing it hears is a
    // challenge frame; a Hello with a forged proof closes the connection.
    let mut raw = TcpStream::connect(members[&2]).await.unwrap();
    let len = raw.read_u32().await.unwrap();
    assert!(len <= 128, "challenge frame of {len} bytes");
    let mut challenge = vec![0; len as usize];
    raw.read_exact(&mut challenge).await.unwrap();
    assert_eq!(challenge[0], 1, "the records' version byte");
    // version 1, Frame::Hello (variant 1), from = 1, nonce, proof: all zero.
    let mut hello = vec![1u8, 1, 1];
    hello.extend([0u8; 64]);
    raw.write_u32(hello.len() as u32).await.unwrap();
    raw.write_all(&hello).await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "the forged Hello was not cut off: {read:?}"
    );

    // A length far over the handshake limit is refused before anything
    // is allocated for it, and the link between the members is untouched.
    let mut raw = TcpStream::connect(members[&2]).await.unwrap();
    let len = raw.read_u32().await.unwrap();
    let mut challenge = vec![0; len as usize];
    raw.read_exact(&mut challenge).await.unwrap();
    raw.write_u32(u32::MAX).await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "a 4 GiB frame was not cut off: {read:?}"
    );
    linked(&p1, &p2).await;
    p1.shutdown().await;
    p2.shutdown().await;
}

/// Wait up to ten seconds for `check`.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_two_clusters_never_link_even_with_one_secret() {
    let l1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let l2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let two: HashMap<u64, _> =
        [(1, l1.local_addr().unwrap()), (2, l2.local_addr().unwrap())].into();
    let secret: Arc<[u8]> = Arc::from(&b"same"[..]);
    let p1 = Peers::start(1, l1, &two, Arc::clone(&secret), None, Some([1; 32]));
    let p2 = Peers::start(2, l2, &two, secret, None, Some([2; 32]));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(p1.connected(), Vec::<u64>::new());
    assert_eq!(p2.connected(), Vec::<u64>::new());
    assert_eq!(*p1.cluster().borrow(), Some([1; 32]));
    assert_eq!(*p2.cluster().borrow(), Some([2; 32]));
    p1.shutdown().await;
    p2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_links_when_welcoming_takes_the_cluster_and_is_refused_while_it_left() {
    let (p1, p2, mut members) = pair(b"same", b"same").await;
    linked(&p1, &p2).await;
    // Node 3 joins: it knows no cluster yet and lists nobody but itself;
    // it does not welcome strangers, and nobody lists it: no link.
    let l3 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let alone: HashMap<u64, _> = [(3, l3.local_addr().unwrap())].into();
    let p3 = Peers::start(3, l3, &alone, Arc::from(&b"same"[..]), None, None);
    members.insert(3, alone[&3]);
    p1.set_members(&members);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(p3.connected(), Vec::<u64>::new());
    assert_eq!(*p3.cluster().borrow(), None);
    // Welcoming any dialer (as a joining node does until the cluster's
    // membership names it), it takes node 1's link and its cluster id.
    p3.welcome_any();
    eventually("node 1 did not link to node 3", || p3.connected() == [1]).await;
    assert_eq!(*p3.cluster().borrow(), Some(CLUSTER));
    // Its member list ends the welcome; node 2, which it does not list,
    // is still welcome as a node of its own cluster.
    p3.set_members(&[(1, members[&1]), (3, members[&3])].into());
    p2.set_members(&members);
    eventually("node 2 did not link to node 3", || p3.connected() == [1, 2]).await;
    // Node 3 leaves: the others refuse it from then on, however it dials
    // (it now lists both, and dials them past the fallback wait too).
    p3.set_members(&members);
    p1.forbid(3);
    p2.forbid(3);
    eventually("node 3's links did not close", || {
        p1.connected() == [2] && p2.connected() == [1]
    })
    .await;
    tokio::time::sleep(junction_cluster::peer::FALLBACK_AFTER + Duration::from_secs(1)).await;
    assert_eq!(p1.connected(), vec![2]);
    assert_eq!(p2.connected(), vec![1]);
    assert_eq!(p3.connected(), Vec::<u64>::new());
    // Taken back (it joins again): the member lists that named it name it
    // again, and it links.
    p1.allow(3);
    p2.allow(3);
    eventually("node 3 did not link again", || p3.connected() == [1, 2]).await;
    for p in [p1, p2, p3] {
        p.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_a_higher_id_dials_one_that_does_not_dial_it() {
    // Node 1 does not list node 2 (it joined while node 1 was away); node
    // 2 lists node 1 and, after the fallback wait, dials it: node 1
    // welcomes a node of its own cluster.
    let l1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let l2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a1 = l1.local_addr().unwrap();
    let a2 = l2.local_addr().unwrap();
    let secret: Arc<[u8]> = Arc::from(&b"same"[..]);
    let p1 = Peers::start(
        1,
        l1,
        &[(1, a1)].into(),
        Arc::clone(&secret),
        None,
        Some(CLUSTER),
    );
    let p2 = Peers::start(
        2,
        l2,
        &[(1, a1), (2, a2)].into(),
        secret,
        None,
        Some(CLUSTER),
    );
    linked(&p1, &p2).await;
    p1.shutdown().await;
    p2.shutdown().await;
}
