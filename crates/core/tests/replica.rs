//! The broker's side of the cluster's topology (`broker/replica.rs`),
//! with a log standing in for the metadata group: a commit applies its
//! ops to every attached broker in order, as the group's observer does,
//! and can be made to fail as a group without a majority does. The real
//! group under three processes is `tests/python/test_cluster_topology.py`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use junction_core::{
    Binding, Broker, BrokerConfig, CoreError, Destination, ExchangeDef, ExchangeKind,
    ForwardFuture, Forwarded, Forwarder, Message, MetaFuture, MetaLog, MetaOp, QueueDef,
};
use junction_store::Store;
use parking_lot::Mutex;

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
            {
                let mut records = self.records.lock();
                for op in &ops {
                    match op {
                        MetaOp::Put { key, value } => records.insert(key.clone(), value.clone()),
                        MetaOp::Delete { key } => records.remove(key),
                    };
                }
            }
            let nodes: Vec<Arc<Broker>> =
                self.nodes.lock().iter().filter_map(Weak::upgrade).collect();
            for node in nodes {
                for op in &ops {
                    match op {
                        MetaOp::Put { key, value } => node.apply_replicated(key, Some(value)),
                        MetaOp::Delete { key } => node.apply_replicated(key, None),
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
    // a: its own queues are local; the log holds only what is shared.
    assert_eq!(local_queues(&a), vec!["local-session", "q", "temp"]);
    assert_eq!(remote_queues(&a), vec![]);
    let kinds: Vec<u8> = log.all().iter().map(|(k, _)| k[0]).collect();
    assert_eq!(kinds, vec![b'b', b'q', b'x'], "{:?}", log.all());

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
    assert!(log.all().is_empty(), "{:?}", log.all());
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
}

#[tokio::test]
async fn a_publish_reaches_queues_on_other_nodes_and_is_nacked_when_one_is_down() {
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
