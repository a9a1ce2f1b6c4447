//! The broker's side of the cluster's topology (`broker/replica.rs`),
//! with a log standing in for the metadata group: a commit applies its
//! ops to every attached broker in order, as the group's observer does,
//! and can be made to fail as a group without a majority does. The real
//! group under three processes is `tests/python/test_cluster_topology.py`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use junction_core::{
    Binding, Broker, BrokerConfig, CallFuture, ClientClaim, ClientSessions, ConnectionId,
    ConsumerEvent, ConsumerSpec, CoreError, Delivery, Destination, ExchangeDef, ExchangeKind,
    ForwardFuture, Forwarded, Forwarder, HandOverFuture, Message, MetaFuture, MetaLog, MetaOp,
    PeerCall, PeerReply, QueueDef, Settle, TakenSession,
};
use junction_store::Store;
use parking_lot::Mutex;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

const VH: &str = "/";

#[derive(Default)]
struct Log {
    records: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
    nodes: Mutex<Vec<Weak<Broker>>>,
    down: AtomicBool,
}

impl MetaLog for Log {
    fn commit(&self, ops: Vec<MetaOp>) -> MetaFuture<'_> {
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return Err(CoreError::Unavailable("no majority".into()));
            }
            let mut applied = Vec::new();
            {
                let mut records = self.records.lock();
                for op in &ops {
                    match op {
                        MetaOp::Put { key, value } => records.insert(key.clone(), value.clone()),
                        MetaOp::PutIfAbsent { key, value } => {
                            if records.contains_key(key) {
                                None
                            } else {
                                records.insert(key.clone(), value.clone())
                            }
                        }
                        MetaOp::Delete { key } => records.remove(key),
                        MetaOp::DeleteIf { key, value } => {
                            if records.get(key) != Some(value) {
                                // Not applied: nobody hears of it.
                                continue;
                            }
                            records.remove(key)
                        }
                    };
                    applied.push(op.clone());
                }
            }
            let ops = applied;
            let nodes: Vec<Arc<Broker>> =
                self.nodes.lock().iter().filter_map(Weak::upgrade).collect();
            for node in nodes {
                for op in &ops {
                    match op {
                        MetaOp::Put { key, value } | MetaOp::PutIfAbsent { key, value } => {
                            node.apply_replicated(key, Some(value))
                        }
                        MetaOp::Delete { key } | MetaOp::DeleteIf { key, .. } => {
                            node.apply_replicated(key, None)
                        }
                    }
                }
            }
            Ok(())
        })
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.records.lock().get(key).cloned()
    }

    fn scan(&self, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.records
            .lock()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl Log {
    fn all(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.scan(b"")
    }
}

async fn node(name: &str, log: &Arc<Log>) -> Arc<Broker> {
    let config = BrokerConfig {
        node: Some(name.to_owned()),
        node_local_names: vec!["local-".to_owned()],
        ..BrokerConfig::default()
    };
    let broker = Broker::open(Store::in_memory(), config)
        .await
        .expect("opens");
    broker.attach_meta_log(Arc::clone(log) as Arc<dyn MetaLog>);
    log.nodes.lock().push(Arc::downgrade(&broker));
    broker.reset_replicated(&log.all());
    broker
}

fn binding(source: &str, queue: &str, key: &str) -> Binding {
    Binding {
        source: source.into(),
        destination: Destination::Queue(queue.into()),
        routing_key: key.into(),
        arguments: Default::default(),
    }
}

/// A direct exchange "x" bound to a queue "q" with key "k", declared on `b`.
async fn x_bound_to_q(b: &Arc<Broker>) {
    b.declare_exchange(VH, ExchangeDef::new("x", ExchangeKind::Direct), false)
        .await
        .unwrap();
    b.declare_queue(VH, QueueDef::new("q"), false)
        .await
        .unwrap();
    b.bind(VH, binding("x", "q", "k"), None).await.unwrap();
}

fn local_queues(b: &Broker) -> Vec<String> {
    b.queues(VH)
        .unwrap()
        .into_iter()
        .map(|q| q.def.name)
        .collect()
}

fn remote_queues(b: &Broker) -> Vec<(String, String)> {
    b.remote_queues(VH)
        .unwrap()
        .into_iter()
        .map(|q| (q.def.name, q.node))
        .collect()
}

#[tokio::test]
async fn durable_topology_made_on_one_node_is_on_every_node_and_transient_stays() {
    let log = Arc::new(Log::default());
    let a = node("a", &log).await;
    let b = node("b", &log).await;

    x_bound_to_q(&a).await;
    let mut transient = ExchangeDef::new("t", ExchangeKind::Fanout);
    transient.durable = false;
    a.declare_exchange(VH, transient, false).await.unwrap();
    a.declare_queue(VH, QueueDef::new("temp").transient(), false)
        .await
        .unwrap();
    a.declare_queue(VH, QueueDef::new("local-session"), false)
        .await
        .unwrap();
    a.bind(VH, binding("x", "local-session", "k"), None)
        .await
        .unwrap();

    // b: the exchange, a's durable queue as a's, the binding to it; none
    // of the transient or node-local things.
    assert_eq!(b.exchange(VH, "x").unwrap().kind, ExchangeKind::Direct);
    assert!(b.exchange(VH, "t").is_err());
    assert_eq!(local_queues(&b), Vec::<String>::new());
    assert_eq!(remote_queues(&b), vec![("q".to_owned(), "a".to_owned())]);
    assert_eq!(b.bindings(VH).unwrap(), vec![binding("x", "q", "k")]);
    // a: its own queues are local; the log holds only what is shared,
    // and one route: the node-local queue's binding from the shared
    // exchange, naming a (b binds it to a stand-in it does not list).
    assert_eq!(local_queues(&a), vec!["local-session", "q", "temp"]);
    assert_eq!(remote_queues(&a), vec![]);
    let kinds: Vec<u8> = log.all().iter().map(|(k, _)| k[0]).collect();
    assert_eq!(kinds, vec![b'b', b'q', b'r', b'x'], "{:?}", log.all());

    // b declares a's queue again: same arguments are fine, others 406.
    let info = b
        .declare_queue(VH, QueueDef::new("q"), false)
        .await
        .unwrap();
    assert!(!info.created);
    let other = QueueDef::new("q").argument("x-max-length", junction_core::FieldValue::I32(3));
    assert!(matches!(
        b.declare_queue(VH, other, false).await,
        Err(CoreError::PreconditionFailed(_))
    ));

    // A queue deleted on b goes from a, with its binding; an exchange
    // deleted on b goes from a.
    assert!(matches!(
        b.delete_queue(VH, "q", false, true, None).await,
        Err(CoreError::PreconditionFailed(_))
    ));
    b.delete_queue(VH, "q", false, false, None).await.unwrap();
    assert_eq!(local_queues(&a), vec!["local-session", "temp"]);
    assert_eq!(
        a.bindings(VH).unwrap(),
        vec![binding("x", "local-session", "k")]
    );
    assert_eq!(remote_queues(&b), vec![]);
    b.delete_exchange(VH, "x", false).await.unwrap();
    assert!(a.exchange(VH, "x").is_err());
    assert!(a.bindings(VH).unwrap().is_empty());
    // a's route goes with the binding that needed it, within a second.
    eventually("the route removed", || log.all().is_empty()).await;
}

#[tokio::test]
async fn a_change_the_log_refuses_is_undone_where_it_was_made() {
    let log = Arc::new(Log::default());
    let a = node("a", &log).await;
    a.declare_exchange(VH, ExchangeDef::new("x", ExchangeKind::Topic), false)
        .await
        .unwrap();
    log.down.store(true, Ordering::SeqCst);

    let refused = a
        .declare_exchange(VH, ExchangeDef::new("y", ExchangeKind::Direct), false)
        .await;
    assert!(
        matches!(refused, Err(CoreError::Unavailable(_))),
        "{refused:?}"
    );
    assert!(a.exchange(VH, "y").is_err());
    let refused = a.declare_queue(VH, QueueDef::new("q"), false).await;
    assert!(
        matches!(refused, Err(CoreError::Unavailable(_))),
        "{refused:?}"
    );
    assert_eq!(local_queues(&a), Vec::<String>::new());
    // A refused delete puts the exchange back.
    let refused = a.delete_exchange(VH, "x", false).await;
    assert!(
        matches!(refused, Err(CoreError::Unavailable(_))),
        "{refused:?}"
    );
    assert_eq!(a.exchange(VH, "x").unwrap().kind, ExchangeKind::Topic);
    // Transient topology never asks the log.
    a.declare_queue(VH, QueueDef::new("t").transient(), false)
        .await
        .unwrap();
    assert_eq!(local_queues(&a), vec!["t"]);
}

#[tokio::test]
async fn a_reset_makes_a_node_match_the_log() {
    let log = Arc::new(Log::default());
    let a = node("a", &log).await;
    a.put_vhost("v2", Default::default()).await.unwrap();
    a.declare_exchange("v2", ExchangeDef::new("x", ExchangeKind::Fanout), false)
        .await
        .unwrap();
    a.declare_queue("v2", QueueDef::new("q"), false)
        .await
        .unwrap();
    a.bind("v2", binding("x", "q", ""), None).await.unwrap();

    // A node that joins later is given everything by its first reset.
    let c = node("c", &log).await;
    assert_eq!(c.exchange("v2", "x").unwrap().kind, ExchangeKind::Fanout);
    assert_eq!(
        c.remote_queues("v2").unwrap()[0].node,
        "a",
        "{:?}",
        c.remote_queues("v2")
    );
    assert_eq!(c.bindings("v2").unwrap(), vec![binding("x", "q", "")]);

    // A reset that lacks records removes them (bindings with them).
    let without_x: Vec<(Vec<u8>, Vec<u8>)> = log
        .all()
        .into_iter()
        .filter(|(k, _)| k[0] == b'v' || k[0] == b'q')
        .collect();
    c.reset_replicated(&without_x);
    assert!(c.exchange("v2", "x").is_err());
    assert!(c.bindings("v2").unwrap().is_empty());
    assert_eq!(c.remote_queues("v2").unwrap().len(), 1);
    // The vhost's removal takes it down everywhere.
    c.delete_vhost("v2").await.unwrap();
    assert!(a.vhost_names().iter().all(|v| v != "v2"));
    assert!(c.vhost_names().iter().all(|v| v != "v2"));
    assert!(log.all().is_empty(), "{:?}", log.all());
}

#[tokio::test]
async fn outside_a_cluster_every_stored_queue_is_this_brokers() {
    // A data directory of a former cluster node: a queue record naming
    // another node, and one of its messages' entry.
    let store = Store::in_memory();
    {
        let log = Arc::new(Log::default());
        let config = BrokerConfig {
            node: Some("b".to_owned()),
            ..BrokerConfig::default()
        };
        let b = Broker::open(store.clone(), config).await.unwrap();
        b.attach_meta_log(Arc::clone(&log) as Arc<dyn MetaLog>);
        b.declare_queue(VH, QueueDef::new("q"), false)
            .await
            .unwrap();
        b.shutdown().await.unwrap();
    }
    let alone = Broker::open(store, BrokerConfig::default()).await.unwrap();
    assert_eq!(local_queues(&alone), vec!["q"]);
    assert_eq!(remote_queues(&alone), vec![]);
}

/// Forwards to the brokers of this process by node name, as the peer
/// links do between processes; a node that is "down" cannot be asked.
#[derive(Default)]
struct Links {
    nodes: Mutex<Vec<(String, Weak<Broker>)>>,
    down: Mutex<Vec<String>>,
}

impl Forwarder for Links {
    fn forward(&self, node: &str, batch: Vec<Forwarded>) -> ForwardFuture<'_> {
        let node = node.to_owned();
        Box::pin(async move {
            if self.down.lock().contains(&node) {
                return Err(format!("no link to {node}"));
            }
            let target = self
                .nodes
                .lock()
                .iter()
                .find(|(n, _)| *n == node)
                .and_then(|(_, b)| b.upgrade())
                .ok_or_else(|| format!("no node {node}"))?;
            let items = batch
                .into_iter()
                .map(|f| (f.vhost, f.queues, (*f.message).clone()))
                .collect();
            Ok(target.accept_forwarded(items).await)
        })
    }

    fn call(&self, node: &str, call: PeerCall, _within: Duration) -> CallFuture<'_> {
        let node = node.to_owned();
        Box::pin(async move {
            if self.down.lock().contains(&node) {
                return Err(format!("no link to {node}"));
            }
            let (target, from) = {
                let nodes = self.nodes.lock();
                let target = nodes
                    .iter()
                    .find(|(n, _)| *n == node)
                    .and_then(|(_, b)| b.upgrade())
                    .ok_or_else(|| format!("no node {node}"))?;
                // The caller is the node whose life the call carries.
                let life = call.life();
                let from = nodes
                    .iter()
                    .find(|(_, b)| b.upgrade().is_some_and(|b| b.life() == life))
                    .map(|(n, _)| n.clone())
                    .ok_or("an unknown caller")?;
                (target, from)
            };
            Ok(target.answer_call(&from, call).await)
        })
    }
}

#[tokio::test]
async fn a_publish_reaches_queues_on_other_nodes_and_is_nacked_when_one_is_down() {
    let (links, a, b) = linked_pair().await;
    a.declare_exchange(VH, ExchangeDef::new("x", ExchangeKind::Fanout), false)
        .await
        .unwrap();
    a.declare_queue(VH, QueueDef::new("on-a"), false)
        .await
        .unwrap();
    b.declare_queue(VH, QueueDef::new("on-b"), false)
        .await
        .unwrap();
    a.bind(VH, binding("x", "on-a", ""), None).await.unwrap();
    a.bind(VH, binding("x", "on-b", ""), None).await.unwrap();

    // Published on b to the fanout: one copy in b's queue, one forwarded
    // to a's, in order; the confirm waits for a.
    for i in 0..10 {
        let msg = Message::new("x", "", Bytes::from(format!("m{i}"))).persistent();
        let published = b.publish(VH, msg).await.unwrap();
        assert_eq!(published.routed, 2);
        assert_eq!(published.settled(), None);
        assert!(published.confirmed().await.unwrap());
    }
    let bodies = |q: &junction_core::Queue| -> Vec<Bytes> { q.peek_bodies() };
    let on_a = a.queue_for(VH, "on-a", None).unwrap();
    let on_b = b.queue_for(VH, "on-b", None).unwrap();
    let expected: Vec<Bytes> = (0..10).map(|i| Bytes::from(format!("m{i}"))).collect();
    assert_eq!(bodies(&on_a), expected);
    assert_eq!(bodies(&on_b), expected);

    // a cannot be asked: the copy for a's queue is refused (a nack), b's
    // own copy is kept.
    links.down.lock().push("a".to_owned());
    let msg = Message::new("x", "", Bytes::from_static(b"late")).persistent();
    let published = b.publish(VH, msg).await.unwrap();
    assert!(!published.confirmed().await.unwrap());
    assert_eq!(on_a.message_count(), 10);
    assert_eq!(on_b.message_count(), 11);
}

#[tokio::test]
async fn a_record_that_redefines_an_exchange_replaces_it_and_one_of_a_missing_vhost_makes_nothing()
{
    let log = Arc::new(Log::default());
    let a = node("a", &log).await;
    x_bound_to_q(&a).await;

    // Records made on a node of another log: a fanout "x" (a declaration
    // that won elsewhere), and an exchange in a vhost a does not have.
    let other = Arc::new(Log::default());
    let b = node("b", &other).await;
    b.declare_exchange(VH, ExchangeDef::new("x", ExchangeKind::Fanout), false)
        .await
        .unwrap();
    b.put_vhost("v9", Default::default()).await.unwrap();
    b.declare_exchange("v9", ExchangeDef::new("y", ExchangeKind::Topic), false)
        .await
        .unwrap();
    let exchanges: Vec<(Vec<u8>, Vec<u8>)> = other
        .all()
        .into_iter()
        .filter(|(k, _)| k[0] == b'x')
        .collect();
    assert_eq!(exchanges.len(), 2);
    for (key, value) in &exchanges {
        a.apply_replicated(key, Some(value));
    }
    assert_eq!(a.exchange(VH, "x").unwrap().kind, ExchangeKind::Fanout);
    assert_eq!(a.bindings(VH).unwrap(), vec![binding("x", "q", "k")]);
    assert!(!a.vhost_names().contains(&"v9".to_owned()));
}

/// Two nodes joined by `Links`.
async fn linked_pair() -> (Arc<Links>, Arc<Broker>, Arc<Broker>) {
    let log = Arc::new(Log::default());
    let links = Arc::new(Links::default());
    let a = node("a", &log).await;
    let b = node("b", &log).await;
    for (name, broker) in [("a", &a), ("b", &b)] {
        broker.attach_forwarder(Arc::clone(&links) as Arc<dyn Forwarder>);
        links
            .nodes
            .lock()
            .push((name.to_owned(), Arc::downgrade(broker)));
    }
    (links, a, b)
}

/// A durable queue "work" on `b` holding `n` persistent messages m0...
async fn work_on(b: &Arc<Broker>, n: usize) -> Arc<junction_core::Queue> {
    b.declare_queue(VH, QueueDef::new("work"), false)
        .await
        .unwrap();
    for i in 0..n {
        let msg = Message::new("", "work", Bytes::from(format!("m{i}"))).persistent();
        assert!(b.publish(VH, msg).await.unwrap().confirmed().await.unwrap());
    }
    b.queue_for(VH, "work", None).unwrap()
}

/// The next delivery on `rx` (within 5 s), or None on a cancel.
async fn next_delivery(rx: &mut UnboundedReceiver<ConsumerEvent>) -> Option<Delivery> {
    match tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("an event within 5 s")
        .expect("the channel is open")
    {
        ConsumerEvent::Deliver(d) => Some(d),
        ConsumerEvent::Cancelled(_) => None,
    }
}

/// Waits until `f` holds (5 s at most).
async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_consumer_on_one_node_takes_and_settles_the_messages_of_a_queue_on_another() {
    let (_links, a, b) = linked_pair().await;
    let on_b = work_on(&b, 5).await;

    // A consumer on a with a prefetch of 2: b's queue gives it two.
    let (tx, mut rx) = unbounded_channel();
    let conn = a.new_connection_id();
    let handle = a
        .attach_consumer(VH, "work", ConsumerSpec::new("c1", conn).prefetch(2), tx)
        .await
        .unwrap();
    assert_eq!(handle.queue().node(), Some("b"));
    let d0 = next_delivery(&mut rx).await.unwrap();
    let d1 = next_delivery(&mut rx).await.unwrap();
    assert_eq!(d0.message.body, Bytes::from_static(b"m0"));
    assert_eq!(d1.message.body, Bytes::from_static(b"m1"));
    assert_eq!(d0.consumer, handle.id());
    eventually("b holds two unacked", || on_b.unacked_count() == 2).await;
    assert_eq!(on_b.consumer_count(), 1);
    // A passive declare on a tells b's counts.
    let info = a
        .declare_queue(VH, QueueDef::new("work"), true)
        .await
        .unwrap();
    assert_eq!((info.messages, info.consumers), (3, 1));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "a third delivery came past the prefetch"
    );

    // An ack frees room: m2 comes. A requeue sends m1 back, redelivered.
    handle.settle(d0.tag, Settle::Ack).unwrap();
    let d2 = next_delivery(&mut rx).await.unwrap();
    assert_eq!(d2.message.body, Bytes::from_static(b"m2"));
    handle.settle(d1.tag, Settle::Requeue).unwrap();
    let again = next_delivery(&mut rx).await.unwrap();
    assert_eq!(again.message.body, Bytes::from_static(b"m1"));
    assert!(again.redelivered);
    // A tag the consumer does not hold is refused here.
    assert!(matches!(
        handle.settle(d0.tag, Settle::Ack),
        Err(CoreError::PreconditionFailed(_))
    ));
    handle.settle(d2.tag, Settle::Ack).unwrap();
    eventually("b has m1, m3 and m4 left", || {
        on_b.message_count() + on_b.unacked_count() == 3
    })
    .await;

    // Dropping the handle (the client went) returns what it held.
    drop(handle);
    eventually("the consumer is gone from b", || {
        on_b.consumer_count() == 0 && on_b.unacked_count() == 0
    })
    .await;
    assert_eq!(on_b.message_count(), 3);

    // basic.get from a: the head, then settled through the stand-in.
    let holder = a.new_consumer_id();
    let got = a
        .get(VH, "work", holder, false, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.delivery.message.body, Bytes::from_static(b"m1"));
    assert_eq!(got.remaining, 2);
    a.settle(&got.queue, holder, got.delivery.tag, Settle::Ack)
        .unwrap();
    let got = a
        .get(VH, "work", holder, false, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.delivery.message.body, Bytes::from_static(b"m3"));
    // The channel closes with m3 unsettled: it goes back.
    a.release(&got.queue, holder);
    eventually("m3 went back", || {
        on_b.message_count() == 2 && on_b.unacked_count() == 0
    })
    .await;
    assert_eq!(
        on_b.peek_bodies(),
        vec![Bytes::from_static(b"m3"), Bytes::from_static(b"m4")]
    );
}

#[tokio::test]
async fn a_remote_consumer_is_refused_as_a_local_one_and_ends_when_its_queue_goes() {
    let (_links, a, b) = linked_pair().await;
    b.declare_queue(VH, QueueDef::new("solo"), false)
        .await
        .unwrap();
    let conn = b.new_connection_id();
    let (tx, _keep) = unbounded_channel();
    let mut spec = ConsumerSpec::new("only", conn);
    spec.exclusive = true;
    let _only = b.consume(VH, "solo", spec, tx).unwrap();

    // An exclusive consumer on b holds the queue: a's consumer is refused
    // as a local one would be.
    let (tx, _rx) = unbounded_channel();
    let refused = a
        .attach_consumer(
            VH,
            "solo",
            ConsumerSpec::new("c", a.new_connection_id()),
            tx,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(refused, CoreError::AccessRefused(_)),
        "{refused:?}"
    );

    // The queue is deleted on b: a's consumer is told.
    b.declare_queue(VH, QueueDef::new("doomed"), false)
        .await
        .unwrap();
    let (tx, mut rx) = unbounded_channel();
    let handle = a
        .attach_consumer(
            VH,
            "doomed",
            ConsumerSpec::new("c", a.new_connection_id()),
            tx,
        )
        .await
        .unwrap();
    b.delete_queue(VH, "doomed", false, false, None)
        .await
        .unwrap();
    assert!(next_delivery(&mut rx).await.is_none());
    drop(handle);
}

#[tokio::test]
async fn what_a_holder_of_an_earlier_life_held_goes_back_when_its_node_speaks_again() {
    let (_links, a, b) = linked_pair().await;
    b.declare_queue(VH, QueueDef::new("work"), false)
        .await
        .unwrap();
    let on_b = b.queue_for(VH, "work", None).unwrap();
    let msg = Message::new("", "work", Bytes::from_static(b"m")).persistent();
    assert!(b.publish(VH, msg).await.unwrap().confirmed().await.unwrap());

    // A call from a's life takes m; a call from a later life of a (a
    // restart) gives it back.
    let reply = b
        .answer_call(
            "a",
            PeerCall::Get {
                life: 1,
                holder: 9,
                vhost: VH.into(),
                queue: "work".into(),
                no_ack: false,
            },
        )
        .await;
    assert!(matches!(reply, PeerReply::Got(Some(_))), "{reply:?}");
    assert_eq!(on_b.unacked_count(), 1);
    let reply = b
        .answer_call(
            "a",
            PeerCall::Control {
                life: 2,
                ops: Vec::new(),
            },
        )
        .await;
    assert!(matches!(reply, PeerReply::Done));
    assert_eq!(on_b.unacked_count(), 0);
    assert_eq!(on_b.message_count(), 1);
    let _ = a;
}

#[tokio::test]
async fn a_cancelled_remote_consumer_gives_back_what_it_never_fetched_and_is_forgotten_once_settled()
 {
    let (_links, a, b) = linked_pair().await;
    let on_b = work_on(&b, 10).await;
    // Prefetch 5 on b, but a transport window of 2 here: b gives five,
    // a fetches two (the others wait on b, unfetched).
    let (tx, mut rx) = unbounded_channel();
    let mut spec = ConsumerSpec::new("c", a.new_connection_id()).prefetch(5);
    spec.window = 2;
    let handle = a.attach_consumer(VH, "work", spec, tx).await.unwrap();
    let stub = Arc::clone(handle.queue());
    let id = handle.id();
    let d0 = next_delivery(&mut rx).await.unwrap();
    let d1 = next_delivery(&mut rx).await.unwrap();
    eventually("b gave five", || on_b.unacked_count() == 5).await;

    // basic.cancel (deliveries stay settleable): the three never fetched
    // go back at once; the two fetched wait for their acks.
    handle.cancel(false);
    eventually("three back on b", || {
        on_b.unacked_count() == 2 && on_b.message_count() == 8
    })
    .await;
    assert_eq!(on_b.consumer_count(), 0);
    a.settle(&stub, id, d0.tag, Settle::Ack).unwrap();
    a.settle(&stub, id, d1.tag, Settle::Ack).unwrap();
    eventually("both acked on b", || on_b.unacked_count() == 0).await;
    assert_eq!(on_b.message_count(), 8);
    // The holder is forgotten on both sides: a late settle does nothing
    // (the adapters check their clients' tags), and a late attach under
    // its id is refused there.
    a.settle(&stub, id, d0.tag, Settle::Ack).unwrap();
    assert_eq!(on_b.message_count(), 8);
    let late = b.answer_call("a", attach_work(a.life(), id.0, 5)).await;
    assert!(
        matches!(late, PeerReply::Refused { code: 404, .. }),
        "{late:?}"
    );
    assert_eq!(on_b.consumer_count(), 0);
}

#[tokio::test]
async fn more_remote_consumers_than_open_fetches_all_get_their_messages() {
    let (_links, a, b) = linked_pair().await;
    // 100 idle queues on b, each with a consumer on a: more than the 64
    // fetches a node keeps open on another.
    let mut consumers = Vec::new();
    for i in 0..100 {
        let name = format!("idle-{i}");
        b.declare_queue(VH, QueueDef::new(&name), false)
            .await
            .unwrap();
        let (tx, rx) = unbounded_channel();
        let spec = ConsumerSpec::new("c", a.new_connection_id()).prefetch(1);
        let handle = a.attach_consumer(VH, &name, spec, tx).await.unwrap();
        consumers.push((handle, rx));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..100 {
        let msg = Message::new("", format!("idle-{i}"), Bytes::from(format!("m{i}")));
        assert_eq!(b.publish(VH, msg).await.unwrap().routed, 1);
    }
    for (i, (handle, rx)) in consumers.iter_mut().enumerate() {
        let d = next_delivery(rx).await.expect("a delivery, not a cancel");
        assert_eq!(d.message.body, Bytes::from(format!("m{i}")));
        handle.settle(d.tag, Settle::Ack).unwrap();
    }
}

#[tokio::test]
async fn a_channel_wide_prefetch_raised_after_consume_reaches_the_queues_node() {
    let (_links, a, b) = linked_pair().await;
    let on_b = work_on(&b, 5).await;
    // A channel's budget of 1, shared by its consumers (global qos).
    let channel = junction_core::Credit::new(1);
    let mut spec = ConsumerSpec::new("c", a.new_connection_id());
    spec.credits.push(Arc::clone(&channel));
    let (tx, mut rx) = unbounded_channel();
    let handle = a.attach_consumer(VH, "work", spec, tx).await.unwrap();
    next_delivery(&mut rx).await.unwrap();
    eventually("b gave one", || on_b.unacked_count() == 1).await;

    // basic.qos global 3: the channel pumps its consumers; b gives two more.
    channel.set_limit(3);
    handle.pump();
    next_delivery(&mut rx).await.unwrap();
    next_delivery(&mut rx).await.unwrap();
    eventually("b gave three", || on_b.unacked_count() == 3).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "a fourth delivery came past the prefetch"
    );
    assert_eq!(on_b.message_count(), 2);
}

#[tokio::test]
async fn a_peers_oversized_asks_are_bounded() {
    let (_links, a, b) = linked_pair().await;
    let on_b = work_on(&b, 600).await;
    let life = a.life();
    let attach = |holder: u64| attach_work(life, holder, 0);
    // A fetch asking for u32::MAX deliveries gets at most 512.
    assert!(matches!(
        b.answer_call("a", attach(1)).await,
        PeerReply::Attached
    ));
    eventually("b gave all 600", || on_b.unacked_count() == 600).await;
    let reply = b
        .answer_call(
            "a",
            PeerCall::Fetch {
                life,
                holder: 1,
                max: u32::MAX,
                wait_ms: u32::MAX,
            },
        )
        .await;
    let PeerReply::Fetched { deliveries, ended } = reply else {
        panic!("{reply:?}");
    };
    assert_eq!((deliveries.len(), ended), (512, false));

    // 70,000 forgets of unknown holders: at most 65,536 are remembered
    // (a late attach of an early one is refused, of a late one taken).
    let ops = (1_000..71_000)
        .map(|holder| junction_core::ControlOp::Forget { holder })
        .collect();
    assert!(matches!(
        b.answer_call("a", PeerCall::Control { life, ops }).await,
        PeerReply::Done
    ));
    assert!(matches!(
        b.answer_call("a", attach(1_000)).await,
        PeerReply::Refused { code: 404, .. }
    ));
    assert!(matches!(
        b.answer_call("a", attach(70_999)).await,
        PeerReply::Attached
    ));
}

/// A peer's attach of consumer `holder` to queue `work` (tag `c`, manual
/// acks), as node `a` in its life `life` sends it.
fn attach_work(life: u64, holder: u64, prefetch: u32) -> PeerCall {
    PeerCall::Attach {
        life,
        holder,
        vhost: VH.into(),
        queue: "work".into(),
        tag: "c".into(),
        no_ack: false,
        exclusive: false,
        priority: 0,
        prefetch,
    }
}

/// An adapter standing in for MQTT's side of the client-id registry: it
/// notes every claim another node makes, and hands over the records it
/// holds (each once).
#[derive(Default)]
struct Sessions {
    told: Mutex<Vec<(String, String)>>,
    held: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl ClientSessions for Sessions {
    fn claimed_elsewhere(&self, vhost: &str, client_id: &str) {
        self.told
            .lock()
            .push((vhost.to_owned(), client_id.to_owned()));
    }

    fn hand_over<'a>(
        &'a self,
        _vhost: &'a str,
        client_id: &'a str,
        _deadline: tokio::time::Instant,
    ) -> HandOverFuture<'a> {
        Box::pin(async move { self.held.lock().remove(client_id) })
    }
}

#[tokio::test]
async fn a_client_id_claimed_on_another_node_is_taken_from_the_first_and_let_go_by_its_holder_only()
{
    let (links, a, b) = linked_pair().await;
    let on_a = Arc::new(Sessions::default());
    let on_b = Arc::new(Sessions::default());
    a.serve_client_sessions(Arc::clone(&on_a) as Arc<dyn ClientSessions>);
    b.serve_client_sessions(Arc::clone(&on_b) as Arc<dyn ClientSessions>);
    let told = |s: &Sessions| s.told.lock().clone();
    let dev = vec![(VH.to_owned(), "dev".to_owned())];

    // a's connection 11 claims "dev": nobody held it; b hears, a does not.
    assert_eq!(
        a.claim_client(VH, "dev", ConnectionId(11)).await.unwrap(),
        None
    );
    assert!(!a.client_elsewhere(VH, "dev"));
    assert!(b.client_elsewhere(VH, "dev"));
    assert_eq!(told(&on_b), dev);
    assert_eq!(told(&on_a), vec![]);
    on_a.held
        .lock()
        .insert("dev".into(), b"subscriptions".to_vec());

    // b's connection 22 claims it: the claim it replaced names a, and a
    // hears of it; b then takes the session from a, once.
    let previous = b
        .claim_client(VH, "dev", ConnectionId(22))
        .await
        .unwrap()
        .map(|(claim, _index)| claim);
    assert_eq!(
        previous,
        Some(ClientClaim {
            node: "a".into(),
            connection: 11
        })
    );
    assert_eq!(told(&on_a), dev);
    // (This log is applied everywhere before a commit returns: index 0.)
    let take = |conn| b.take_client_session("a", VH, "dev", ConnectionId(conn), 0);
    assert_eq!(
        take(22).await.unwrap(),
        TakenSession::Record(b"subscriptions".to_vec())
    );
    assert_eq!(take(22).await.unwrap(), TakenSession::Nothing);
    // A claim a makes since keeps a session there from an older ask, and
    // says so (the asker's claim is not the latest).
    on_a.held.lock().insert("dev".into(), b"again".to_vec());
    a.claim_client(VH, "dev", ConnectionId(33)).await.unwrap();
    assert_eq!(take(22).await.unwrap(), TakenSession::Kept);
    assert_eq!(on_a.held.lock().len(), 1);
    b.claim_client(VH, "dev", ConnectionId(44)).await.unwrap();
    assert_eq!(
        take(44).await.unwrap(),
        TakenSession::Record(b"again".to_vec())
    );

    // a's and b's earlier connections end late: b's latest claim stands.
    a.release_client(VH, "dev", ConnectionId(11));
    a.release_client(VH, "dev", ConnectionId(33));
    b.release_client(VH, "dev", ConnectionId(22));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        a.client_claim(VH, "dev"),
        Some(ClientClaim {
            node: "b".into(),
            connection: 44
        })
    );
    assert_eq!(b.client_claims_here(VH).len(), 1);
    assert_eq!(a.client_claims_here(VH), vec![]);
    // b's ends: the claim goes, on every node; nobody is told of a removal.
    b.release_client(VH, "dev", ConnectionId(44));
    eventually("the claim removed", || a.client_claim(VH, "dev").is_none()).await;
    let twice = [dev.clone(), dev.clone()].concat();
    assert_eq!(told(&on_a), twice);
    assert_eq!(told(&on_b), twice);

    // A node that cannot be reached hands nothing over.
    links.down.lock().push("a".into());
    assert!(matches!(take(44).await, Err(CoreError::Unavailable(_))));
}
