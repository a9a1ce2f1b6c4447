//! One queue's state machine: ready messages in priority-then-arrival order,
//! unacknowledged deliveries, consumers with credit, TTL, length limits and
//! the decisions that dead-letter a message. Sans-IO: it sends deliveries on
//! consumers' channels and returns every other effect ([`Effects`]) for the
//! broker to carry out (store deletes, dead-letter publishes, reading paged
//! messages back).
//!
//! Paging (RabbitMQ's lazy / classic v2 behaviour): a long queue keeps only
//! its head in memory. A persistent entry that arrives while the queue
//! already holds [`Paging::head_messages`] or [`Paging::head_bytes`] of
//! loaded messages, or while the broker is under memory pressure, keeps
//! only its index ([`Paged`]: id, size, priority); its message stays in the
//! store. When the loaded head runs low and a consumer has room, the queue
//! asks for the next paged entries ([`Effects::page_in`]); the broker reads
//! them off the async workers and hands them back ([`QueueState::page_in`]).

pub mod args;

use std::collections::BTreeMap;
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

/// Memory one paged entry accounts for: its index node and the entry.
const PAGED_FOOTPRINT: u64 = 160;

/// Paged entries read back per request.
const PAGE_IN_BATCH: usize = 256;

/// Body bytes read back per request, at most (one entry at least).
const PAGE_IN_BYTES: u64 = 4 << 20;

/// How much of a long queue stays in memory (see the module docs).
#[derive(Clone, Debug)]
pub struct Paging {
    /// Off for the in-memory store (nothing to read back from).
    pub enabled: bool,
    /// Loaded ready messages a queue keeps before it pages new arrivals.
    pub head_messages: usize,
    /// Loaded ready body bytes a queue keeps before it pages new arrivals.
    pub head_bytes: u64,
    /// Set by the broker while the memory it holds is past half the
    /// watermark: every persistent arrival is paged.
    pub pressure: Arc<std::sync::atomic::AtomicBool>,
}

impl Default for Paging {
    fn default() -> Self {
        Paging {
            enabled: false,
            head_messages: 2048,
            head_bytes: 8 << 20,
            pressure: Arc::default(),
        }
    }
}

/// The index of a message that stays in the store until it nears the head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paged {
    pub id: MessageId,
    pub body_len: u64,
    pub priority: u8,
}

/// An entry's message: in memory, or in the store only.
#[derive(Clone, Debug)]
pub enum Body {
    Loaded(Arc<Message>),
    Paged(Paged),
}

/// Paged entries the queue wants read back, by ready position.
#[derive(Debug, Default)]
pub struct PageIn {
    pub wanted: Vec<(ReadyKey, MessageId)>,
}

/// A message in the queue.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Arrival order; with the queue id it keys the entry's store record.
    pub seq: u64,
    pub body: Body,
    /// Times returned to the queue (nack/reject with requeue, consumer gone).
    pub delivery_count: u32,
    /// Delivered before, here or before a restart.
    pub redelivered: bool,
    pub expires_at: Option<Instant>,
    /// Whether a `queue_entries` record exists for it.
    pub persisted: bool,
}

impl Entry {
    /// An entry holding `message` in memory.
    pub fn loaded(seq: u64, message: Arc<Message>, expires_at: Option<Instant>) -> Entry {
        Entry {
            seq,
            body: Body::Loaded(message),
            delivery_count: 0,
            redelivered: false,
            expires_at,
            persisted: false,
        }
    }

    pub fn message_id(&self) -> MessageId {
        match &self.body {
            Body::Loaded(m) => m.id,
            Body::Paged(p) => p.id,
        }
    }

    pub fn body_len(&self) -> u64 {
        match &self.body {
            Body::Loaded(m) => m.body_len(),
            Body::Paged(p) => p.body_len,
        }
    }

    fn priority(&self) -> u8 {
        match &self.body {
            Body::Loaded(m) => m.properties.priority.unwrap_or(0),
            Body::Paged(p) => p.priority,
        }
    }

    /// The message, if it is in memory.
    pub fn message(&self) -> Option<&Arc<Message>> {
        match &self.body {
            Body::Loaded(m) => Some(m),
            Body::Paged(_) => None,
        }
    }

    fn footprint(&self) -> u64 {
        match &self.body {
            Body::Loaded(m) => m.footprint(),
            Body::Paged(_) => PAGED_FOOTPRINT,
        }
    }

    fn is_paged(&self) -> bool {
        matches!(self.body, Body::Paged(_))
    }

    /// Drops the message from memory, keeping its index (stored entries only).
    fn page_out(&mut self) {
        if self.persisted
            && let Body::Loaded(m) = &self.body
        {
            self.body = Body::Paged(Paged {
                id: m.id,
                body_len: m.body_len(),
                priority: m.properties.priority.unwrap_or(0),
            });
        }
    }

    fn removed(&self) -> Option<Removed> {
        self.persisted.then_some(Removed {
            seq: self.seq,
            message: self.message_id(),
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
    /// Its place among the queue's dead letters (they are copied to the
    /// dead-letter exchange in this order; see [`QueueState::dead_letters_made`]).
    pub order: u64,
    /// The entry's own record, deleted in the same batch that stores the copy.
    pub removed: Option<Removed>,
}

/// What an operation left for the broker to do.
#[derive(Debug, Default)]
pub struct Effects {
    pub dead_letters: Vec<DeadLetter>,
    pub removed: Vec<Removed>,
    /// Paged entries to read back from the store.
    pub page_in: Option<PageIn>,
    /// Deliveries sent (for the out counters).
    pub delivered: u64,
    pub delivered_bytes: u64,
}

impl Effects {
    /// Whether there is nothing to carry out beyond counting deliveries.
    pub fn is_counters_only(&self) -> bool {
        self.dead_letters.is_empty() && self.removed.is_empty() && self.page_in.is_none()
    }
}

/// How a consumer settles a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
pub type ReadyKey = (u8, u64);

/// The state of one queue.
pub struct QueueState {
    pub args: QueueArgs,
    ready: BTreeMap<ReadyKey, Entry>,
    ready_bytes: u64,
    /// Ready entries whose message is in memory, and their body bytes.
    loaded: usize,
    loaded_bytes: u64,
    /// Ready entries whose message is in the store only.
    paged: usize,
    paging: Paging,
    /// A background read of paged entries is under way.
    loading: bool,
    unacked: crate::FastMap<DeliveryTag, Unacked>,
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
    /// Messages accepted and handed out (delivered or got) since the
    /// queue was made: the management API's rates are drawn from these.
    published_total: u64,
    delivered_total: u64,
    /// Dead letters made so far: the next one's `order`.
    dead_letters_made: u64,
}

impl QueueState {
    pub fn new(args: QueueArgs, now: Instant) -> QueueState {
        QueueState {
            args,
            ready: BTreeMap::new(),
            ready_bytes: 0,
            loaded: 0,
            loaded_bytes: 0,
            paged: 0,
            paging: Paging::default(),
            loading: false,
            unacked: crate::FastMap::default(),
            unacked_bytes: 0,
            held: 0,
            total: None,
            next_tag: 1,
            next_seq: 1,
            consumers: Vec::new(),
            rr: 0,
            last_used: now,
            had_consumer: false,
            published_total: 0,
            delivered_total: 0,
            dead_letters_made: 0,
        }
    }

    pub fn ready_count(&self) -> u64 {
        self.ready.len() as u64
    }

    /// Ready entries whose message is in the store only.
    pub fn paged_count(&self) -> u64 {
        self.paged as u64
    }

    /// How this queue pages (see the module docs).
    pub fn set_paging(&mut self, paging: Paging) {
        self.paging = paging;
    }

    pub fn unacked_count(&self) -> u64 {
        self.unacked.len() as u64
    }

    /// Body bytes of the ready messages.
    pub fn ready_bytes(&self) -> u64 {
        self.ready_bytes
    }

    /// Its consumers as the management API lists them: tag, connection,
    /// no-ack, exclusive, priority and the smallest prefetch limit (0:
    /// none).
    pub fn consumer_list(&self) -> Vec<(String, crate::ids::ConnectionId, bool, bool, i32, u32)> {
        self.consumers
            .iter()
            .map(|c| {
                let prefetch = c
                    .spec
                    .credits
                    .iter()
                    .map(|cr| cr.limit())
                    .filter(|l| *l > 0)
                    .min()
                    .unwrap_or(0);
                (
                    c.spec.tag.clone(),
                    c.spec.owner,
                    c.spec.no_ack,
                    c.spec.exclusive,
                    c.spec.priority,
                    prefetch,
                )
            })
            .collect()
    }

    /// Puts new arguments in force (a policy changed): a lower length limit
    /// trims at once. A new or shorter message TTL also reaches the
    /// messages already queued, counted from now (their arrival times are
    /// not kept): each lives at most the new TTL from here, or less if it
    /// was to expire sooner. A longer or removed TTL lengthens no queued
    /// message's life. As everywhere, expired messages leave from the head.
    pub fn set_args(&mut self, args: QueueArgs, now: Instant, fx: &mut Effects) {
        let shorter = match (args.message_ttl, self.args.message_ttl) {
            (Some(new), Some(old)) => new < old,
            (Some(_), None) => true,
            (None, _) => false,
        };
        self.args = args;
        if let (true, Some(ttl)) = (shorter, self.args.message_ttl) {
            let cap = now + std::time::Duration::from_millis(ttl);
            for e in self.ready.values_mut() {
                if e.expires_at.is_none_or(|t| t > cap) {
                    e.expires_at = Some(cap);
                }
            }
        }
        self.expire(now, fx);
        self.trim(fx);
    }

    /// Messages accepted and messages handed out (delivered or got) since
    /// the queue was made.
    pub fn totals(&self) -> (u64, u64) {
        (self.published_total, self.delivered_total)
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
            Some(max) => e.priority().min(max),
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

    /// A charge on the broker's queued-memory counter for a message that
    /// left this queue but is still held (a no-ack delivery on its way to
    /// the socket).
    fn in_flight_charge(&self, bytes: u64) -> Option<crate::broker::MemoryCharge> {
        self.total
            .as_ref()
            .map(|t| crate::broker::MemoryCharge::on(Arc::clone(t), bytes))
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
        self.ready_bytes += e.body_len();
        self.count_held(e.footprint());
        if e.is_paged() {
            self.paged += 1;
        } else {
            self.loaded += 1;
            self.loaded_bytes += e.body_len();
        }
        let key = self.ready_key(&e);
        self.ready.insert(key, e);
    }

    /// Takes the ready entry at `key` out of the counts (it was just
    /// removed from `ready`).
    fn uncount_ready(&mut self, e: &Entry) {
        self.ready_bytes -= e.body_len();
        self.uncount_held(e.footprint());
        if e.is_paged() {
            self.paged -= 1;
        } else {
            self.loaded -= 1;
            self.loaded_bytes -= e.body_len();
        }
    }

    /// Whether a new persistent arrival keeps only its index.
    fn should_page(&self, e: &Entry) -> bool {
        self.paging.enabled
            && e.persisted
            && (self.loaded >= self.paging.head_messages
                || self.loaded_bytes + e.body_len() > self.paging.head_bytes
                || self
                    .paging
                    .pressure
                    .load(std::sync::atomic::Ordering::Relaxed))
    }

    fn insert_unacked(&mut self, tag: DeliveryTag, u: Unacked) {
        self.unacked_bytes += u.entry.body_len();
        self.count_held(u.entry.footprint());
        self.unacked.insert(tag, u);
    }

    fn remove_unacked(&mut self, tag: &DeliveryTag) -> Option<Unacked> {
        let u = self.unacked.remove(tag)?;
        self.unacked_bytes -= u.entry.body_len();
        self.uncount_held(u.entry.footprint());
        Some(u)
    }

    /// Memory this queue's messages hold, ready or unacked: bodies and
    /// per-message overhead (see [`Message::footprint`]).
    pub fn held_bytes(&self) -> u64 {
        self.held
    }

    fn pop_ready(&mut self) -> Option<Entry> {
        let (_, e) = self.ready.pop_first()?;
        self.uncount_ready(&e);
        Some(e)
    }

    /// Whether the head's message is in the store only.
    pub fn head_is_paged(&self) -> bool {
        self.ready
            .first_key_value()
            .is_some_and(|(_, e)| e.is_paged())
    }

    /// Whether the head must be read back before it can leave: it is
    /// paged and would be dead-lettered (the copy needs the message).
    fn head_needs_message(&self) -> bool {
        self.args.dead_letter_exchange.is_some() && self.head_is_paged()
    }

    /// The next paged entries from the head, up to a batch, for a read
    /// the caller runs itself (`get`); does not mark a read under way.
    pub fn page_in_request(&self) -> PageIn {
        let mut wanted = Vec::new();
        let mut bytes = 0;
        for (key, e) in &self.ready {
            if let Body::Paged(p) = &e.body {
                if !wanted.is_empty() && bytes + p.body_len > PAGE_IN_BYTES {
                    break;
                }
                bytes += p.body_len;
                wanted.push((*key, p.id));
                if wanted.len() == PAGE_IN_BATCH {
                    break;
                }
            }
        }
        PageIn { wanted }
    }

    /// Asks for the next paged entries to be read back when the loaded
    /// head runs low (or `now_needed`), unless a read is under way.
    fn want_page_in(&mut self, now_needed: bool, fx: &mut Effects) {
        if self.paged == 0 || self.loading || fx.page_in.is_some() {
            return;
        }
        if !now_needed && self.loaded >= self.paging.head_messages / 2 {
            return;
        }
        let request = self.page_in_request();
        if !request.wanted.is_empty() {
            self.loading = true;
            fx.page_in = Some(request);
        }
    }

    /// Puts messages read back from the store into their paged entries
    /// (those still there: an entry may have left meanwhile), then serves
    /// the queue. `background` ends the read [`Effects::page_in`] asked
    /// for. Entries whose message could not be read (`lost`) leave the
    /// queue's memory; their records stay for recovery to judge.
    pub fn page_in(
        &mut self,
        loaded: Vec<(ReadyKey, Arc<Message>)>,
        lost: &[(ReadyKey, MessageId)],
        background: bool,
        now: Instant,
        fx: &mut Effects,
    ) {
        if background {
            self.loading = false;
        }
        for (key, m) in loaded {
            let Some(e) = self.ready.get(&key) else {
                continue;
            };
            if !matches!(&e.body, Body::Paged(p) if p.id == m.id) {
                continue;
            }
            let Some(mut e) = self.ready.remove(&key) else {
                continue;
            };
            self.uncount_ready(&e);
            e.body = Body::Loaded(m);
            self.push_ready(e);
        }
        for (key, id) in lost {
            if self
                .ready
                .get(key)
                .is_some_and(|e| e.is_paged() && e.message_id() == *id)
                && let Some(e) = self.ready.remove(key)
            {
                self.uncount_ready(&e);
            }
        }
        self.service(now, fx);
        self.trim(fx);
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

    /// Dead-letters `e` if the queue has a dead-letter exchange, else
    /// drops it. Callers read a paged entry back before dead-lettering it
    /// (`head_needs_message`); one that is still paged is dropped.
    fn dead_letter_or_drop(&mut self, e: Entry, reason: DeathReason, fx: &mut Effects) {
        let removed = e.removed();
        match e.body {
            Body::Loaded(message) if self.args.dead_letter_exchange.is_some() => {
                let order = self.dead_letters_made;
                self.dead_letters_made += 1;
                fx.dead_letters.push(DeadLetter {
                    removed,
                    message,
                    reason,
                    order,
                });
            }
            _ => fx.removed.extend(removed),
        }
    }

    /// Adds a published entry, applying `x-overflow`, then delivers what it
    /// can.
    pub fn publish(&mut self, entry: Entry, now: Instant, fx: &mut Effects) -> Accepted {
        self.expire(now, fx);
        match self.args.overflow {
            Overflow::RejectPublish | Overflow::RejectPublishDlx
                if self.over_limit(1, entry.body_len()) =>
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
        let mut entry = entry;
        if self.should_page(&entry) {
            entry.page_out();
        }
        self.published_total += 1;
        // Nothing waits, so the new entry is the head: a consumer with room
        // takes it at once, without a trip through `ready` (the usual case
        // for a consumer that keeps up).
        if self.ready.is_empty()
            && let Some(message) = entry.message().cloned()
            && let Some(ci) = self.pick_consumer()
            && self.consumers[ci].take_credit()
        {
            self.deliver_to(ci, entry, message, fx);
            if self.ready.is_empty() {
                return Accepted::Yes;
            }
            // The consumer's connection was gone: the entry went back to
            // `ready`, served as any other below.
        } else {
            self.push_ready(entry);
        }
        // Deliver before expiring: a message with TTL 0 reaches a consumer
        // that can take it at once, and otherwise expires (RabbitMQ's rule).
        self.deliver(now, fx);
        self.expire(now, fx);
        self.trim(fx);
        Accepted::Yes
    }

    /// drop-head: makes room by dropping the oldest ready messages. A
    /// consumer with credit has already taken what it could. A paged head
    /// bound for a dead-letter exchange is read back first (the queue is
    /// over its limit until then).
    fn trim(&mut self, fx: &mut Effects) {
        while self.over_limit(0, 0) {
            if self.head_needs_message() {
                self.want_page_in(true, fx);
                break;
            }
            match self.pop_ready() {
                Some(head) => self.dead_letter_or_drop(head, DeathReason::MaxLen, fx),
                None => break,
            }
        }
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

    /// Hands ready messages to consumers with room, in order; a paged head
    /// waits for its message to be read back.
    fn deliver(&mut self, now: Instant, fx: &mut Effects) {
        while !self.ready.is_empty() {
            let Some(ci) = self.pick_consumer() else {
                return;
            };
            let Some(entry) = self.pop_ready() else {
                break;
            };
            let Some(message) = entry.message().cloned() else {
                // Paged: it leaves once read back.
                self.push_ready(entry);
                self.want_page_in(true, fx);
                return;
            };
            if !self.consumers[ci].take_credit() {
                // Another queue sharing the budget took the last slot
                // since `pick_consumer` looked: this consumer has no room.
                self.push_ready(entry);
                continue;
            }
            self.deliver_to(ci, entry, message, fx);
            self.expire(now, fx);
        }
        // Read ahead while consumers drain the loaded head.
        if self.paged > 0 && self.consumers.iter().any(Consumer::has_room) {
            self.want_page_in(false, fx);
        }
    }

    fn expire(&mut self, now: Instant, fx: &mut Effects) {
        while let Some((_, head)) = self.ready.first_key_value() {
            if head.expires_at.is_some_and(|t| t <= now) {
                if self.head_needs_message() {
                    self.want_page_in(true, fx);
                    break;
                }
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

    /// Hands `entry` (whose loaded message is `message`) to consumer `ci`,
    /// whose credit slots were taken (`Consumer::take_credit`).
    fn deliver_to(&mut self, ci: usize, entry: Entry, message: Arc<Message>, fx: &mut Effects) {
        let tag = DeliveryTag(self.next_tag);
        self.next_tag += 1;
        let consumer = &self.consumers[ci];
        let body_len = message.body_len();
        // A no-ack delivery leaves the queue now: charge it until written.
        let in_flight = self.consumers[ci]
            .spec
            .no_ack
            .then(|| self.in_flight_charge(message.footprint()))
            .flatten();
        let delivery = Delivery {
            consumer: consumer.id,
            tag,
            message,
            redelivered: entry.redelivered,
            delivery_count: entry.delivery_count,
            _permit: Some(consumer.window.permit()),
            _held: in_flight,
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
        self.delivered_total += 1;
        fx.delivered_bytes += body_len;
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

    /// `basic.get`: takes the head message for `holder`, or None if the
    /// queue is empty or its head is paged ([`QueueState::head_is_paged`]:
    /// the caller reads it back and asks again).
    pub fn get(
        &mut self,
        holder: ConsumerId,
        no_ack: bool,
        now: Instant,
        fx: &mut Effects,
    ) -> Option<Delivery> {
        self.last_used = now;
        self.expire(now, fx);
        let message = self.ready.first_key_value()?.1.message()?.clone();
        let entry = self.pop_ready()?;
        let tag = DeliveryTag(self.next_tag);
        self.next_tag += 1;
        fx.delivered += 1;
        self.delivered_total += 1;
        fx.delivered_bytes += message.body_len();
        let delivery = Delivery {
            consumer: holder,
            tag,
            message,
            redelivered: entry.redelivered,
            delivery_count: entry.delivery_count,
            _permit: None,
            _held: None,
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
