//! Messages for queues of other nodes of the cluster (docs/cluster.md
//! "Messages across nodes"). A publish routed to a queue another node
//! holds is handed to that node's broker through a [`Forwarder`] (the
//! server's peer links): one outbox per node sends in publish order,
//! gathering what waits while a batch is on its way, and the publisher's
//! confirm waits for that node's answer, which comes once the message is
//! in its queues (on disk when persistent). A node that cannot be asked
//! counts as refusing the message: the publisher gets a nack.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use junction_store::Batch;
use tokio::sync::{mpsc, oneshot};

use super::{Broker, PeerCall, PeerReply};
use crate::error::CoreError;
use crate::message::Message;

/// One message for queues of one node.
#[derive(Clone, Debug)]
pub struct Forwarded {
    /// The vhost it was published in.
    pub vhost: String,
    /// The queues of the receiving node it goes to.
    pub queues: Vec<String>,
    /// The message.
    pub message: Arc<Message>,
}

/// For one forwarded message: how many of its queues took it and how many
/// did not (refused it, or are gone), or why the node gave no answer.
pub type ForwardAnswer = Result<(u32, u32), String>;

/// What [`Forwarder::forward`] returns: an answer per message, in order,
/// or why the node could not be asked at all.
pub type ForwardFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<ForwardAnswer>, String>> + Send + 'a>>;

/// What [`Forwarder::call`] returns: the other broker's reply, or why
/// the node could not be asked.
pub type CallFuture<'a> = Pin<Box<dyn Future<Output = Result<PeerReply, String>> + Send + 'a>>;

/// The way to other nodes' brokers (the server wires it to its peer
/// links, the receiving node's [`Broker::accept_forwarded`] and
/// [`Broker::answer_call`]).
pub trait Forwarder: Send + Sync {
    /// Hand `batch` to the broker of node `node`, to be taken in order.
    fn forward(&self, node: &str, batch: Vec<Forwarded>) -> ForwardFuture<'_>;

    /// Ask the broker of node `node` about its queues (consumers across
    /// nodes), waiting at most `within` for its reply.
    fn call(&self, node: &str, call: PeerCall, within: std::time::Duration) -> CallFuture<'_>;

    /// Whether a link to node `node` is up now.
    fn linked(&self, _node: &str) -> bool {
        true
    }
}

/// A message waiting in a node's outbox, and who waits for its answer.
pub(crate) struct Outgoing {
    item: Forwarded,
    done: oneshot::Sender<ForwardAnswer>,
}

/// Messages an outbox holds before publishers wait for room.
const OUTBOX_MESSAGES: usize = 8192;
/// Messages, and body bytes, one batch gathers at most.
const GATHER_MESSAGES: usize = 512;
const GATHER_BYTES: u64 = 4 << 20;

/// Sends a node's messages in the order they came, a batch at a time.
async fn outbox(node: String, forwarder: Arc<dyn Forwarder>, mut rx: mpsc::Receiver<Outgoing>) {
    while let Some(first) = rx.recv().await {
        let mut bytes = first.item.message.body_len();
        let mut group = vec![first];
        while group.len() < GATHER_MESSAGES && bytes < GATHER_BYTES {
            match rx.try_recv() {
                Ok(next) => {
                    bytes += next.item.message.body_len();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        let (items, dones): (Vec<Forwarded>, Vec<oneshot::Sender<ForwardAnswer>>) =
            group.into_iter().map(|o| (o.item, o.done)).unzip();
        let count = items.len();
        match forwarder.forward(&node, items).await {
            Ok(answers) if answers.len() == count => {
                for (done, answer) in dones.into_iter().zip(answers) {
                    let _ = done.send(answer);
                }
            }
            Ok(answers) => {
                let why = format!("node {node} answered {} of {count} messages", answers.len());
                tracing::warn!("{why}");
                for done in dones {
                    let _ = done.send(Err(why.clone()));
                }
            }
            Err(why) => {
                tracing::warn!(node, error = %why, messages = count, "messages for another node's queues not delivered");
                for done in dones {
                    let _ = done.send(Err(why.clone()));
                }
            }
        }
    }
}

/// The answers a publish waits for: per node, how many queues and the
/// answer's receiver.
pub(crate) type Awaited = Vec<(u32, oneshot::Receiver<ForwardAnswer>)>;

impl Broker {
    /// Reach other nodes' queues through `forwarder` (once, before clients
    /// connect).
    pub fn attach_forwarder(&self, forwarder: Arc<dyn Forwarder>) {
        if self.forwarder.set(forwarder).is_err() {
            tracing::warn!("a forwarder was attached twice; kept the first");
        }
    }

    /// Whether publishes may go to other nodes' queues.
    pub(crate) fn forwards(&self) -> bool {
        self.forwarder.get().is_some()
    }

    /// Hand `msg` to the outbox of each node holding some of `remote`
    /// (node, queue) and return what to wait for. Waits while an outbox
    /// is full.
    pub(crate) async fn forward(
        &self,
        vhost: &str,
        msg: &Arc<Message>,
        remote: Vec<(String, String)>,
    ) -> Awaited {
        let Some(forwarder) = self.forwarder.get() else {
            return Vec::new();
        };
        let mut remote = remote;
        remote.sort_unstable();
        let mut awaited = Vec::new();
        for group in remote.chunk_by(|a, b| a.0 == b.0) {
            let node = group[0].0.clone();
            let queues: Vec<String> = group.iter().map(|(_, q)| q.clone()).collect();
            // A route to the node's own queues is not refused when the node
            // cannot be reached: those queues went with it.
            let count = queues
                .iter()
                .filter(|q| super::routes::route_node(q).is_none())
                .count() as u32;
            let (done, answer) = oneshot::channel();
            let outbox_tx = {
                let mut outboxes = self.outboxes.lock();
                outboxes
                    .entry(node.clone())
                    .or_insert_with(|| {
                        let (tx, rx) = mpsc::channel(OUTBOX_MESSAGES);
                        tokio::spawn(outbox(node.clone(), Arc::clone(forwarder), rx));
                        tx
                    })
                    .clone()
            };
            let item = Forwarded {
                vhost: vhost.to_owned(),
                queues,
                message: Arc::clone(msg),
            };
            if outbox_tx.send(Outgoing { item, done }).await.is_err() {
                // The outbox ended (it never does while the broker lives):
                // the receiver answers Closed, counted as refused.
                tracing::warn!(node, "no outbox for another node's queues");
            }
            awaited.push((count, answer));
        }
        awaited
    }

    /// Messages another node forwarded for queues of this one: each goes
    /// into those of its queues that live here (on disk when persistent
    /// and the queue durable), in order. Answers once all are safe.
    pub async fn accept_forwarded(
        &self,
        items: Vec<(String, Vec<String>, Message)>,
    ) -> Vec<ForwardAnswer> {
        let mut pending = Vec::with_capacity(items.len());
        for (vhost, names, mut msg) in items {
            let taken = async {
                if self.is_shut_down() {
                    return Err(CoreError::ShuttingDown);
                }
                let vh = self.vhost(&vhost)?;
                msg.id = self.new_message_id();
                let mut queues: Vec<Arc<super::Queue>> =
                    names.iter().filter_map(|n| vh.queue(n)).collect();
                let routes = names
                    .iter()
                    .filter(|n| super::routes::route_node(n).is_some())
                    .count();
                let missing = names.len() - routes - queues.len();
                if routes > 0 {
                    self.route_here(&vh, &msg, &mut queues);
                }
                let msg = Arc::new(msg);
                // A quorum queue's messages go through its group (a node
                // that forwarded here knew it as a classic queue).
                self.enqueue_quorum_soon(&vhost, &msg, self.take_quorum(&mut queues));
                let mut batch = Batch::new();
                let targets = self.plan(&msg, queues, &[], &mut batch);
                Ok::<_, CoreError>((self.place(&msg, targets, batch).await?, missing))
            }
            .await;
            pending.push(taken);
        }
        let mut answers = Vec::with_capacity(pending.len());
        for taken in pending {
            answers.push(match taken {
                Ok((published, missing)) => {
                    let (routed, rejected) = (published.routed, published.rejected);
                    match published.confirmed().await {
                        Ok(_) => Ok(((routed - rejected) as u32, (rejected + missing) as u32)),
                        Err(e) => Err(e.to_string()),
                    }
                }
                Err(e) => Err(e.to_string()),
            });
        }
        answers
    }
}
