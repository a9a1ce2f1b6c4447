//! Consuming: push consumers with credit, `get` (pull), settling
//! deliveries, and releasing what a departed holder left unsettled.

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use super::{Broker, Queue};
use crate::consumer::{ConsumerEvent, ConsumerSpec, Delivery, Window};
use crate::error::CoreError;
use crate::ids::{ConnectionId, ConsumerId, DeliveryTag};
use crate::queue::{Effects, Settle};

/// Page-in rounds one `get` makes before it answers "empty".
const GET_PAGE_IN_ROUNDS: usize = 8;

/// A `basic.get-ok`: the delivery and how many messages remain ready.
#[derive(Debug)]
pub struct GetOk {
    pub delivery: Delivery,
    pub remaining: u64,
    pub queue: Arc<Queue>,
}

impl Broker {
    /// Starts a consumer on `queue`; deliveries and cancellation arrive on
    /// `sink`. The consumer lives as long as the returned handle.
    pub fn consume(
        self: &Arc<Self>,
        vhost: &str,
        queue: &str,
        spec: ConsumerSpec,
        sink: UnboundedSender<ConsumerEvent>,
    ) -> Result<ConsumerHandle, CoreError> {
        let q = self.queue_for(vhost, queue, Some(spec.owner))?;
        let id = self.new_consumer_id();
        let window = Window::new(spec.window, Arc::clone(&q.wake));
        let now = Instant::now();
        let mut fx = Effects::default();
        {
            let mut st = q.state.lock();
            if q.is_deleted() {
                return Err(CoreError::NotFound(format!(
                    "no queue '{queue}' in vhost '{vhost}'"
                )));
            }
            st.consume(id, spec, window, sink, now)?;
            st.service(now, &mut fx);
        }
        self.apply_effects(&q, fx);
        q.wake.notify_one();
        Ok(ConsumerHandle {
            broker: Arc::clone(self),
            queue: q,
            id,
            active: true,
        })
    }

    /// `basic.get`: the head message for `holder` (a channel's id from
    /// [`Broker::new_consumer_id`]), or None when the queue is empty. A
    /// paged head is read back from the store first (off the async
    /// workers).
    pub async fn get(
        &self,
        vhost: &str,
        queue: &str,
        holder: ConsumerId,
        no_ack: bool,
        conn: Option<ConnectionId>,
    ) -> Result<Option<GetOk>, CoreError> {
        if let Some(remote) = self.serving_of(vhost, queue).await? {
            return self.get_remote(vhost, remote, holder, no_ack).await;
        }
        self.get_here(vhost, queue, holder, no_ack, conn).await
    }

    /// [`Broker::get`] from a queue of this node.
    pub(crate) async fn get_here(
        &self,
        vhost: &str,
        queue: &str,
        holder: ConsumerId,
        no_ack: bool,
        conn: Option<ConnectionId>,
    ) -> Result<Option<GetOk>, CoreError> {
        let q = self.queue_for(vhost, queue, conn)?;
        // Each round reads the head back; another round is needed only if
        // a paged entry overtook it meanwhile (a higher priority).
        for _ in 0..GET_PAGE_IN_ROUNDS {
            let mut fx = Effects::default();
            let (delivery, wanted, remaining) = {
                let mut st = q.state.lock();
                let d = st.get(holder, no_ack, Instant::now(), &mut fx);
                let wanted = (d.is_none() && st.head_is_paged()).then(|| st.page_in_request());
                (d, wanted, st.ready_count())
            };
            self.apply_effects(&q, fx);
            q.wake.notify_one();
            if let Some(req) = wanted {
                let store = self.store.clone();
                let (loaded, lost) =
                    tokio::task::spawn_blocking(move || super::read_paged(&store, &req.wanted))
                        .await
                        .map_err(|e| CoreError::Corrupt(format!("page-in task failed: {e}")))?;
                self.finish_page_in(&q, loaded, &lost, false);
                continue;
            }
            return Ok(delivery.map(|delivery| GetOk {
                delivery,
                remaining,
                queue: q,
            }));
        }
        Ok(None)
    }

    /// Settles a delivery `holder` received from `queue`. A tag that
    /// `holder` does not hold is 406 PRECONDITION_FAILED.
    pub fn settle(
        &self,
        queue: &Arc<Queue>,
        holder: ConsumerId,
        tag: DeliveryTag,
        how: Settle,
    ) -> Result<(), CoreError> {
        if let Some(node) = queue.node() {
            return self.settle_remote(queue, node, holder, tag, how);
        }
        let mut fx = Effects::default();
        {
            let mut st = queue.state.lock();
            if !st.holds(holder, tag) {
                return Err(CoreError::PreconditionFailed(format!(
                    "unknown delivery tag {tag}"
                )));
            }
            st.settle(tag, how, Instant::now(), &mut fx)?;
        }
        self.apply_effects(queue, fx);
        if how != Settle::Ack {
            // A requeued entry may now head the queue with an earlier
            // deadline than the one the service task sleeps until.
            queue.wake.notify_one();
        }
        Ok(())
    }

    /// Returns to `queue` everything `holder` left unsettled (its channel
    /// or connection closed), flagged redelivered.
    pub fn release(&self, queue: &Arc<Queue>, holder: ConsumerId) {
        if let Some(node) = queue.node() {
            return self.release_remote(queue, node, holder);
        }
        let mut fx = Effects::default();
        {
            let mut st = queue.state.lock();
            st.release(holder, &mut fx);
            st.service(Instant::now(), &mut fx);
        }
        self.apply_effects(queue, fx);
        queue.wake.notify_one();
    }

    fn cancel_consumer(&self, q: &Arc<Queue>, id: ConsumerId, requeue: bool) {
        if let Some(node) = q.node() {
            return self.cancel_remote(node, id, requeue);
        }
        let mut fx = Effects::default();
        let now_unused = {
            let mut st = q.state.lock();
            let unused = st.cancel(id, requeue, &mut fx);
            st.last_used = Instant::now();
            st.service(Instant::now(), &mut fx);
            unused
        };
        self.apply_effects(q, fx);
        q.wake.notify_one();
        if now_unused && q.def().auto_delete {
            self.remove_queue(q);
        }
    }
}

/// A registered consumer. Dropping it cancels the consumer and returns its
/// unsettled deliveries to the queue.
pub struct ConsumerHandle {
    pub(super) broker: Arc<Broker>,
    pub(super) queue: Arc<Queue>,
    pub(super) id: ConsumerId,
    /// False once cancelled, so drop does nothing more.
    pub(super) active: bool,
}

impl std::fmt::Debug for ConsumerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerHandle")
            .field("id", &self.id)
            .field("queue", &self.queue)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

impl ConsumerHandle {
    pub fn id(&self) -> ConsumerId {
        self.id
    }

    pub fn queue(&self) -> &Arc<Queue> {
        &self.queue
    }

    /// Settles one of this consumer's deliveries.
    pub fn settle(&self, tag: DeliveryTag, how: Settle) -> Result<(), CoreError> {
        self.broker.settle(&self.queue, self.id, tag, how)
    }

    /// Cancels the consumer. With `requeue` false its unsettled deliveries
    /// stay settleable through [`Broker::settle`] (AMQP `basic.cancel`).
    pub fn cancel(mut self, requeue: bool) {
        self.active = false;
        self.broker.cancel_consumer(&self.queue, self.id, requeue);
    }

    /// Asks the queue to deliver again: credit shared with other queues
    /// (a channel-wide prefetch) may have been freed elsewhere.
    pub fn pump(&self) {
        match self.queue.node() {
            // Another node's queue: its prefetch may have to change there.
            Some(node) => self.broker.retune_remote(node, self.id),
            None => self.queue.wake.notify_one(),
        }
    }
}

impl Drop for ConsumerHandle {
    fn drop(&mut self) {
        if self.active {
            self.broker.cancel_consumer(&self.queue, self.id, true);
        }
    }
}
