//! One queue's state machine: ready messages in priority-then-arrival order,
//! unacknowledged deliveries, consumers with credit, TTL, length limits and
//! the decisions that dead-letter a message. Sans-IO: it sends deliveries on
//! consumers' channels and returns every other effect ([`Effects`]) for the
//! broker to carry out (store deletes, dead-letter publishes).

pub mod args;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use crate::consumer::{ConsumerEvent, ConsumerSpec, Credit, Delivery, Window};
use crate::error::CoreError;
use crate::ids::{ConsumerId, DeliveryTag, MessageId};
use crate::message::Message;
use args::{Overflow, QueueArgs};

/// Why a message was dead-lettered; the `reason` of its `x-death` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeathReason {
    Rejected,
    Expired,
    MaxLen,
    DeliveryLimit,
}

impl DeathReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::MaxLen => "maxlen",
            DeathReason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// A message in the queue.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Arrival order; with the queue id it keys the entry's store record.
    pub seq: u64,
    pub message: Arc<Message>,
    /// Times returned to the queue (nack/reject with requeue, consumer gone).
    pub delivery_count: u32,
    /// Delivered before, here or before a restart.
    pub redelivered: bool,
    pub expires_at: Option<Instant>,
    /// Whether a `queue_entries` record exists for it.
    pub persisted: bool,
}

impl Entry {
    fn removed(&self) -> Option<Removed> {
        self.persisted.then_some(Removed {
            seq: self.seq,
            message: self.message.id,
        })
    }
}

/// A stored entry that left the queue: its record must be deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Removed {
    pub seq: u64,
    pub message: MessageId,
}

/// A message to republish to the dead-letter exchange.
#[derive(Debug)]
pub struct DeadLetter {
    pub message: Arc<Message>,
    pub reason: DeathReason,
    /// The entry's own record, deleted in the same batch that stores the copy.
    pub removed: Option<Removed>,
}

/// What an operation left for the broker to do.
#[derive(Debug, Default)]
pub struct Effects {
    pub dead_letters: Vec<DeadLetter>,
    pub removed: Vec<Removed>,
    /// Deliveries sent (for the out counters).
    pub delivered: u64,
    pub delivered_bytes: u64,
}

/// How a consumer settles a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    Ack,
    /// Back to the queue at its original place, flagged redelivered.
    Requeue,
    /// Dead-lettered if the queue has a dead-letter exchange, else dropped.
    Reject,
}

/// Whether a published message was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    Yes,
    /// Refused by `x-overflow` reject-publish(-dlx).
    Rejected,
}

struct Consumer {
    id: ConsumerId,
    spec: ConsumerSpec,
    /// The spec's budgets, shared with each unacked delivery so settling
    /// gives credit back even after the consumer was cancelled.
    credits: Arc<[Arc<Credit>]>,
    window: Arc<Window>,
    sink: UnboundedSender<ConsumerEvent>,
}

impl Consumer {
    fn has_room(&self) -> bool {
        self.window.has_room() && (self.spec.no_ack || self.credits.iter().all(|c| c.has_room()))
    }

    /// Takes a slot in every budget, or in none (a no-ack consumer has
    /// none to take).
    fn take_credit(&self) -> bool {
        if self.spec.no_ack {
            return true;
        }
        for (i, c) in self.credits.iter().enumerate() {
            if !c.try_take() {
                for taken in &self.credits[..i] {
                    taken.give_back();
                }
                return false;
            }
        }
        true
    }
}

struct Unacked {
    entry: Entry,
    /// The consumer (or `get` caller) that must settle it.
    holder: ConsumerId,
    credits: Option<Arc<[Arc<Credit>]>>,
}

impl Unacked {
    fn give_back_credit(&self) {
        for c in self.credits.iter().flat_map(|c| c.iter()) {
            c.give_back();
        }
    }
}

/// Ordering key of ready entries: higher priority first, then arrival.
type ReadyKey = (u8, u64);

/// The state of one queue.
pub struct QueueState {
    pub args: QueueArgs,
    ready: BTreeMap<ReadyKey, Entry>,
    ready_bytes: u64,
    unacked: HashMap<DeliveryTag, Unacked>,
    /// Body bytes of the unacked deliveries.
    unacked_bytes: u64,
    /// Memory the entries hold, ready or unacked, by
    /// [`Message::footprint`]: what the memory alarm counts.
    held: u64,
    /// The broker-wide sum of every queue's `held`, kept as messages come
    /// and go so the memory alarm reads one counter instead of locking
    /// every queue (see [`QueueState::count_into`]).
    total: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    next_tag: u64,
    next_seq: u64,
    consumers: Vec<Consumer>,
    /// Round-robin position among consumers.
    rr: usize,
    /// Last use (consume, get, declare) for `x-expires`.
    pub last_used: Instant,
    /// An auto-delete queue is deleted only after it had a consumer.
    had_consumer: bool,
}

impl QueueState {
    pub fn new(args: QueueArgs, now: Instant) -> QueueState {
        QueueState {
            args,
            ready: BTreeMap::new(),
            ready_bytes: 0,
            unacked: HashMap::new(),
            unacked_bytes: 0,
            held: 0,
            total: None,
            next_tag: 1,
            next_seq: 1,
            consumers: Vec::new(),
            rr: 0,
            last_used: now,
            had_consumer: false,
        }
    }

    pub fn ready_count(&self) -> u64 {
        self.ready.len() as u64
    }

    pub fn unacked_count(&self) -> u64 {
        self.unacked.len() as u64
    }

    pub fn consumer_count(&self) -> u64 {
        self.consumers.len() as u64
    }

    pub fn has_consumer(&self, id: ConsumerId) -> bool {
        self.consumers.iter().any(|c| c.id == id)
    }

    /// Reserves the next arrival number (before the entry's record is written).
    pub fn reserve_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    fn ready_key(&self, e: &Entry) -> ReadyKey {
        let prio = match self.args.max_priority {
            Some(max) => e.message.properties.priority.unwrap_or(0).min(max),
            None => 0,
        };
        (u8::MAX - prio, e.seq)
    }

    /// Adds this queue's held memory (and from now on its changes) to
    /// `total`.
    pub fn count_into(&mut self, total: std::sync::Arc<std::sync::atomic::AtomicU64>) {
        total.fetch_add(self.held, std::sync::atomic::Ordering::Relaxed);
        self.total = Some(total);
    }

    fn count_held(&mut self, bytes: u64) {
        self.held += bytes;
        if let Some(t) = &self.total {
            t.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn uncount_held(&mut self, bytes: u64) {
        self.held -= bytes;
        if let Some(t) = &self.total {
            let _ = t.fetch_update(
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
                |v| Some(v.saturating_sub(bytes)),
            );
        }
    }

    fn push_ready(&mut self, e: Entry) {
        self.ready_bytes += e.message.body_len();
        self.count_held(e.message.footprint());
        let key = self.ready_key(&e);
        self.ready.insert(key, e);
    }

    fn insert_unacked(&mut self, tag: DeliveryTag, u: Unacked) {
        self.unacked_bytes += u.entry.message.body_len();
        self.count_held(u.entry.message.footprint());
        self.unacked.insert(tag, u);
    }

    fn remove_unacked(&mut self, tag: &DeliveryTag) -> Option<Unacked> {
        let u = self.unacked.remove(tag)?;
        self.unacked_bytes -= u.entry.message.body_len();
        self.uncount_held(u.entry.message.footprint());
        Some(u)
    }

    /// Memory this queue's messages hold, ready or unacked: bodies and
    /// per-message overhead (see [`Message::footprint`]).
    pub fn held_bytes(&self) -> u64 {
        self.held
    }

    fn pop_ready(&mut self) -> Option<Entry> {
        let (_, e) = self.ready.pop_first()?;
        self.ready_bytes -= e.message.body_len();
        self.uncount_held(e.message.footprint());
        Some(e)
    }

    fn over_limit(&self, extra_len: u64, extra_bytes: u64) -> bool {
        self.args
            .max_length
            .is_some_and(|m| self.ready.len() as u64 + extra_len > m)
            || self
                .args
                .max_length_bytes
                .is_some_and(|m| self.ready_bytes + extra_bytes > m)
    }

    /// When an entry published now expires: the sooner of the queue's
    /// `x-message-ttl` and the message's own `expiration`.
    pub fn expiry_for(&self, msg: &Message, now: Instant) -> Option<Instant> {
        let ttl = match (self.args.message_ttl, msg.properties.ttl_millis()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }?;
        Some(now + std::time::Duration::from_millis(ttl))
    }

    fn dead_letter_or_drop(&self, e: Entry, reason: DeathReason, fx: &mut Effects) {
        if self.args.dead_letter_exchange.is_some() {
            fx.dead_letters.push(DeadLetter {
                removed: e.removed(),
                message: e.message,
                reason,
            });
        } else if let Some(r) = e.removed() {
            fx.removed.push(r);
        }
    }

    /// Adds a published entry, applying `x-overflow`, then delivers what it
    /// can.
    pub fn publish(&mut self, entry: Entry, now: Instant, fx: &mut Effects) -> Accepted {
        self.expire(now, fx);
        match self.args.overflow {
            Overflow::RejectPublish | Overflow::RejectPublishDlx
                if self.over_limit(1, entry.message.body_len()) =>
            {
                if self.args.overflow == Overflow::RejectPublishDlx {
                    self.dead_letter_or_drop(entry, DeathReason::MaxLen, fx);
                } else if let Some(r) = entry.removed() {
                    fx.removed.push(r);
                }
                return Accepted::Rejected;
            }
            _ => {}
        }
        self.push_ready(entry);
        // Deliver before expiring: a message with TTL 0 reaches a consumer
        // that can take it at once, and otherwise expires (RabbitMQ's rule).
        self.deliver(now, fx);
        self.expire(now, fx);
        // drop-head: make room by dropping the oldest ready messages. A
        // consumer with credit has already taken what it could.
        while self.over_limit(0, 0) {
            match self.pop_ready() {
                Some(head) => self.dead_letter_or_drop(head, DeathReason::MaxLen, fx),
                None => break,
            }
        }
        Accepted::Yes
    }

    /// Restores an entry read from the store at start-up (no overflow rules:
    /// it was accepted before the restart).
    pub fn restore(&mut self, entry: Entry) {
        self.next_seq = self.next_seq.max(entry.seq + 1);
        self.push_ready(entry);
    }

    /// Drops expired messages from the head (RabbitMQ's rule: only the head
    /// expires; a message behind one without TTL waits) and delivers.
    pub fn service(&mut self, now: Instant, fx: &mut Effects) {
        self.expire(now, fx);
        self.deliver(now, fx);
    }

    /// Hands ready messages to consumers with room, in order.
    fn deliver(&mut self, now: Instant, fx: &mut Effects) {
        while !self.ready.is_empty() {
            let Some(ci) = self.pick_consumer() else {
                break;
            };
            let Some(entry) = self.pop_ready() else {
                break;
            };
            if !self.consumers[ci].take_credit() {
                // Another queue sharing the budget took the last slot
                // since `pick_consumer` looked: this consumer has no room.
                self.push_ready(entry);
                continue;
            }
            self.deliver_to(ci, entry, fx);
            self.expire(now, fx);
        }
    }

    fn expire(&mut self, now: Instant, fx: &mut Effects) {
        while let Some((_, head)) = self.ready.first_key_value() {
            if head.expires_at.is_some_and(|t| t <= now) {
                if let Some(e) = self.pop_ready() {
                    self.dead_letter_or_drop(e, DeathReason::Expired, fx);
                }
            } else {
                break;
            }
        }
    }

    /// The next instant at which `service` has expiry work to do.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.ready.first_key_value().and_then(|(_, e)| e.expires_at)
    }

    /// When the queue expires under `x-expires`, if it is unused.
    pub fn expires_at(&self) -> Option<Instant> {
        let ms = self.args.expires?;
        if !self.consumers.is_empty() {
            return None;
        }
        Some(self.last_used + std::time::Duration::from_millis(ms))
    }

    fn pick_consumer(&mut self) -> Option<usize> {
        if self.consumers.is_empty() {
            return None;
        }
        if self.args.single_active_consumer {
            // The earliest registered consumer is the active one.
            return self.consumers[0].has_room().then_some(0);
        }
        let best = self
            .consumers
            .iter()
            .filter(|c| c.has_room())
            .map(|c| c.spec.priority)
            .max()?;
        let n = self.consumers.len();
        for i in 0..n {
            let idx = (self.rr + i) % n;
            let c = &self.consumers[idx];
            if c.spec.priority == best && c.has_room() {
                self.rr = idx + 1;
                return Some(idx);
            }
        }
        None
    }

    /// Hands `entry` to consumer `ci`, whose credit slots were taken
    /// (`Consumer::take_credit`).
    fn deliver_to(&mut self, ci: usize, entry: Entry, fx: &mut Effects) {
        let tag = DeliveryTag(self.next_tag);
        self.next_tag += 1;
        let consumer = &self.consumers[ci];
        let delivery = Delivery {
            consumer: consumer.id,
            tag,
            message: Arc::clone(&entry.message),
            redelivered: entry.redelivered,
            delivery_count: entry.delivery_count,
            _permit: Some(consumer.window.permit()),
        };
        if consumer
            .sink
            .send(ConsumerEvent::Deliver(delivery))
            .is_err()
        {
            // The connection is gone: the message was never handed over,
            // so it goes back unchanged, and the consumer leaves rotation
            // (its handle's drop finds it gone), with the slots it took.
            if !consumer.spec.no_ack {
                for c in consumer.credits.iter() {
                    c.give_back();
                }
            }
            let id = consumer.id;
            self.push_ready(entry);
            self.cancel(id, true, fx);
            return;
        }
        fx.delivered += 1;
        fx.delivered_bytes += entry.message.body_len();
        if consumer.spec.no_ack {
            if let Some(r) = entry.removed() {
                fx.removed.push(r);
            }
        } else {
            let u = Unacked {
                entry,
                holder: consumer.id,
                credits: Some(Arc::clone(&consumer.credits)),
            };
            self.insert_unacked(tag, u);
        }
    }

    /// Registers a consumer.
    pub(crate) fn consume(
        &mut self,
        id: ConsumerId,
        spec: ConsumerSpec,
        window: Arc<Window>,
        sink: UnboundedSender<ConsumerEvent>,
        now: Instant,
    ) -> Result<(), CoreError> {
        if self.consumers.iter().any(|c| c.spec.exclusive) {
            return Err(CoreError::AccessRefused(
                "queue has an exclusive consumer".into(),
            ));
        }
        if spec.exclusive && !self.consumers.is_empty() {
            return Err(CoreError::AccessRefused(
                "cannot obtain exclusive access to a queue with consumers".into(),
            ));
        }
        let credits: Arc<[Arc<Credit>]> = spec.credits.clone().into();
        self.consumers.push(Consumer {
            id,
            credits,
            spec,
            window,
            sink,
        });
        self.had_consumer = true;
        self.last_used = now;
        Ok(())
    }

    /// Removes a consumer. With `requeue`, its unacknowledged deliveries go
    /// back to the queue (its connection is gone); without, they stay
    /// settleable (AMQP `basic.cancel` leaves them to the channel). Returns
    /// true if an auto-delete queue is now due for deletion.
    pub fn cancel(&mut self, id: ConsumerId, requeue: bool, fx: &mut Effects) -> bool {
        let Some(pos) = self.consumers.iter().position(|c| c.id == id) else {
            // Already taken out of rotation (its channel closed during a
            // delivery): the queue may have become unused then.
            return self.consumers.is_empty() && self.had_consumer;
        };
        self.consumers.remove(pos);
        if self.rr > pos {
            self.rr -= 1;
        }
        if requeue {
            self.release(id, fx);
        }
        self.consumers.is_empty() && self.had_consumer
    }

    /// Returns everything `holder` has not settled (its connection or channel
    /// closed), in delivery order. Used for consumers and `get` holders.
    pub fn release(&mut self, holder: ConsumerId, fx: &mut Effects) {
        let mut tags: Vec<DeliveryTag> = self
            .unacked
            .iter()
            .filter(|(_, u)| u.holder == holder)
            .map(|(t, _)| *t)
            .collect();
        tags.sort();
        for tag in tags {
            if let Some(u) = self.remove_unacked(&tag) {
                u.give_back_credit();
                self.requeue(u.entry, fx);
            }
        }
    }

    fn requeue(&mut self, mut entry: Entry, fx: &mut Effects) {
        entry.delivery_count = entry.delivery_count.saturating_add(1);
        entry.redelivered = true;
        if let Some(limit) = self.args.delivery_limit
            && u64::from(entry.delivery_count) > limit
        {
            self.dead_letter_or_drop(entry, DeathReason::DeliveryLimit, fx);
            return;
        }
        self.push_ready(entry);
    }

    /// Settles one delivery. An unknown tag is 406 PRECONDITION_FAILED.
    pub fn settle(
        &mut self,
        tag: DeliveryTag,
        how: Settle,
        now: Instant,
        fx: &mut Effects,
    ) -> Result<(), CoreError> {
        let Some(u) = self.remove_unacked(&tag) else {
            return Err(CoreError::PreconditionFailed(format!(
                "unknown delivery tag {tag}"
            )));
        };
        u.give_back_credit();
        match how {
            Settle::Ack => {
                if let Some(r) = u.entry.removed() {
                    fx.removed.push(r);
                }
            }
            Settle::Requeue => self.requeue(u.entry, fx),
            Settle::Reject => self.dead_letter_or_drop(u.entry, DeathReason::Rejected, fx),
        }
        self.service(now, fx);
        Ok(())
    }

    /// Whether `tag` is an outstanding delivery held by `holder`.
    pub fn holds(&self, holder: ConsumerId, tag: DeliveryTag) -> bool {
        self.unacked.get(&tag).is_some_and(|u| u.holder == holder)
    }

    /// `basic.get`: takes the head message for `holder`, or None if empty.
    pub fn get(
        &mut self,
        holder: ConsumerId,
        no_ack: bool,
        now: Instant,
        fx: &mut Effects,
    ) -> Option<Delivery> {
        self.last_used = now;
        self.expire(now, fx);
        let entry = self.pop_ready()?;
        let tag = DeliveryTag(self.next_tag);
        self.next_tag += 1;
        fx.delivered += 1;
        fx.delivered_bytes += entry.message.body_len();
        let delivery = Delivery {
            consumer: holder,
            tag,
            message: Arc::clone(&entry.message),
            redelivered: entry.redelivered,
            delivery_count: entry.delivery_count,
            _permit: None,
        };
        if no_ack {
            if let Some(r) = entry.removed() {
                fx.removed.push(r);
            }
        } else {
            self.insert_unacked(
                tag,
                Unacked {
                    entry,
                    holder,
                    credits: None,
                },
            );
        }
        Some(delivery)
    }

    /// `queue.purge`: removes the ready messages (not the unacknowledged ones).
    pub fn purge(&mut self, fx: &mut Effects) -> u64 {
        let mut n = 0;
        while let Some(e) = self.pop_ready() {
            if let Some(r) = e.removed() {
                fx.removed.push(r);
            }
            n += 1;
        }
        n
    }

    /// Empties the queue for deletion; returns how many messages it held.
    pub fn drain_all(&mut self, fx: &mut Effects) -> u64 {
        let mut n = self.purge(fx);
        self.unacked_bytes = 0;
        self.uncount_held(self.held);
        for (_, u) in self.unacked.drain() {
            // The holders' budgets (shared with other queues) get the slots
            // back: nobody will settle these deliveries now.
            u.give_back_credit();
            if let Some(r) = u.entry.removed() {
                fx.removed.push(r);
            }
            n += 1;
        }
        for c in self.consumers.drain(..) {
            let _ = c.sink.send(ConsumerEvent::Cancelled(c.id));
        }
        n
    }

    /// Ready messages in delivery order (for inspection and tests).
    pub fn ready_messages(&self) -> impl Iterator<Item = &Entry> {
        self.ready.values()
    }
}
