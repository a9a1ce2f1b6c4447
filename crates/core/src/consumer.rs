//! Consumers and what they receive: credit (prefetch), the transport window
//! that bounds deliveries not yet written to a socket, and [`Delivery`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use tokio::sync::Notify;

use crate::ids::{ConnectionId, ConsumerId, DeliveryTag};
use crate::message::Message;

/// A prefetch budget: how many unacknowledged deliveries may be outstanding.
/// Shared between consumers when the protocol says so (AMQP `basic.qos` with
/// `global`, as RabbitMQ reads it: one budget for the whole channel).
#[derive(Debug, Default)]
pub struct Credit {
    /// 0 means unlimited.
    limit: AtomicU32,
    used: AtomicU32,
    /// No new deliveries at all while set (an MQTT session whose client is
    /// away keeps its consumer, but its messages stay in the queue).
    paused: std::sync::atomic::AtomicBool,
}

impl Credit {
    pub fn new(limit: u32) -> Arc<Credit> {
        Arc::new(Credit {
            limit: AtomicU32::new(limit),
            used: AtomicU32::new(0),
            paused: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Changes the limit; deliveries already made stay outstanding.
    pub fn set_limit(&self, limit: u32) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Unacknowledged deliveries counted against this budget.
    pub fn used(&self) -> u32 {
        self.used.load(Ordering::Relaxed)
    }

    /// Stops (or resumes) deliveries against this budget; after resuming,
    /// pump the consumers that share it.
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    pub(crate) fn has_room(&self) -> bool {
        if self.paused.load(Ordering::Relaxed) {
            return false;
        }
        let limit = self.limit();
        limit == 0 || self.used() < limit
    }

    /// Takes a slot if there is room, atomically: two queues sharing this
    /// budget cannot both take its last slot.
    pub(crate) fn try_take(&self) -> bool {
        if self.paused.load(Ordering::Relaxed) {
            return false;
        }
        let limit = self.limit();
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (limit == 0 || u < limit).then_some(u + 1)
            })
            .is_ok()
    }

    /// Counts one more outstanding delivery against the budget. Adapters
    /// call it for what they send outside a queue (MQTT retained messages,
    /// QoS 2 messages awaiting PUBCOMP) so the protocol's window holds.
    pub fn take(&self) {
        self.used.fetch_add(1, Ordering::Relaxed);
    }

    /// Returns one slot taken with [`Credit::take`] (or by a delivery).
    pub fn give_back(&self) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| u.checked_sub(1));
    }
}

/// Bounds deliveries handed to a connection but not yet written out, so a
/// consumer that reads slowly (or a no-ack consumer, which has no prefetch)
/// cannot make the broker buffer without limit. The queue stops delivering to
/// a consumer whose window is full; when the connection drops a delivery
/// (after writing it) the permit frees a slot and wakes the queue.
#[derive(Debug)]
pub(crate) struct Window {
    pending: AtomicUsize,
    limit: usize,
    /// The owning queue's wake-up signal (its service task waits on it).
    wake: Arc<Notify>,
}

impl Window {
    pub(crate) fn new(limit: usize, wake: Arc<Notify>) -> Arc<Window> {
        Arc::new(Window {
            pending: AtomicUsize::new(0),
            limit: limit.max(1),
            wake,
        })
    }

    pub(crate) fn has_room(&self) -> bool {
        self.pending.load(Ordering::Acquire) < self.limit
    }

    /// Deliveries that may still be handed out before it is full.
    pub(crate) fn room(&self) -> usize {
        self.limit
            .saturating_sub(self.pending.load(Ordering::Acquire))
    }

    pub(crate) fn permit(self: &Arc<Window>) -> WindowPermit {
        self.pending.fetch_add(1, Ordering::AcqRel);
        WindowPermit {
            window: Arc::clone(self),
        }
    }
}

/// One slot of a consumer's transport window, released on drop.
#[derive(Debug)]
pub struct WindowPermit {
    window: Arc<Window>,
}

impl Drop for WindowPermit {
    fn drop(&mut self) {
        let before = self.window.pending.fetch_sub(1, Ordering::AcqRel);
        if before >= self.window.limit {
            // Never lock the queue here: a permit may be dropped while the
            // queue is locked. The queue's service task does the delivering.
            self.window.wake.notify_one();
        }
    }
}

/// A message handed to a consumer. Dropping it (once written to the socket)
/// frees its slot in the consumer's transport window.
#[derive(Debug)]
pub struct Delivery {
    pub consumer: ConsumerId,
    /// Pass back to settle this delivery.
    pub tag: DeliveryTag,
    pub message: Arc<Message>,
    /// Delivered before (AMQP `redelivered`, MQTT DUP is separate).
    pub redelivered: bool,
    /// Times this message was returned to the queue before this delivery.
    pub delivery_count: u32,
    pub(crate) _permit: Option<WindowPermit>,
    /// For a no-ack delivery, which left its queue: the memory alarm counts
    /// the message until the adapter has written it out (then its
    /// outbound buffer is counted while being written).
    pub(crate) _held: Option<crate::broker::MemoryCharge>,
}

/// What a consumer's channel carries.
#[derive(Debug)]
pub enum ConsumerEvent {
    Deliver(Delivery),
    /// The broker ended the consumer: its queue was deleted (AMQP then
    /// sends `basic.cancel` to the client).
    Cancelled(ConsumerId),
}

/// What a protocol adapter asks for when it starts consuming.
#[derive(Clone, Debug)]
pub struct ConsumerSpec {
    /// The protocol's name for the consumer (AMQP consumer tag, STOMP
    /// subscription id); kept for listings and logs.
    pub tag: String,
    /// The connection; exclusive queues and no-local checks use it.
    pub owner: ConnectionId,
    /// Deliveries are settled as they are sent (AMQP no-ack, MQTT QoS 0).
    pub no_ack: bool,
    /// No other consumer may use the queue while this one exists.
    pub exclusive: bool,
    /// Higher-priority consumers are served first while they have credit.
    pub priority: i32,
    /// Prefetch budgets that all must have room (empty: unlimited).
    pub credits: Vec<Arc<Credit>>,
    /// Transport window size (see [`Window`]).
    pub window: usize,
}

impl ConsumerSpec {
    pub fn new(tag: impl Into<String>, owner: ConnectionId) -> ConsumerSpec {
        ConsumerSpec {
            tag: tag.into(),
            owner,
            no_ack: false,
            exclusive: false,
            priority: 0,
            credits: Vec::new(),
            window: DEFAULT_WINDOW,
        }
    }

    pub fn prefetch(mut self, n: u32) -> ConsumerSpec {
        self.credits.push(Credit::new(n));
        self
    }

    pub fn no_ack(mut self) -> ConsumerSpec {
        self.no_ack = true;
        self
    }
}

/// Events a connection takes from its consumer channel in one loop turn
/// beyond the first: a burst goes out in one write, and the socket is
/// read again soon.
pub const DRAIN_BATCH: usize = 256;

/// Calls `f` on `first`, then on what else `rx` already holds, at most
/// [`DRAIN_BATCH`] more.
pub fn drain<T>(rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>, first: T, mut f: impl FnMut(T)) {
    f(first);
    for _ in 0..DRAIN_BATCH {
        match rx.try_recv() {
            Ok(next) => f(next),
            Err(_) => break,
        }
    }
}

/// Default transport window: deliveries in flight between a queue and a socket.
pub const DEFAULT_WINDOW: usize = 1024;
