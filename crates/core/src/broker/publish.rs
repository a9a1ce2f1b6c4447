//! The publish path of DESIGN.md: route in the publisher's task, write one
//! store batch (the message once, an entry per durable queue), enqueue, and
//! hand back a receipt that resolves when the batch is on disk. Also where
//! queue effects are carried out: record deletes and dead-lettering.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use junction_store::{Batch, Cf, CommitReceipt};
use tokio::time::Instant;

use super::records;
use super::{Broker, Queue};
use crate::error::CoreError;
use crate::interop;
use crate::message::{Message, Origin, Protocol};
use crate::queue::{Accepted, DeadLetter, DeathReason, Effects, Entry, Removed};
use crate::value::{FieldTable, FieldValue};

/// The outcome of a publish.
#[must_use = "a publish is confirmed only when its receipt resolves"]
#[derive(Debug)]
pub struct Published {
    /// Queues the message was routed to (0: unroutable; AMQP `mandatory`
    /// then returns it with 312 NO_ROUTE).
    pub routed: usize,
    /// How many of those refused it (`x-overflow` reject-publish).
    pub rejected: usize,
    /// Resolves when the store batch is on disk (None: nothing was stored).
    receipt: Option<CommitReceipt>,
    /// The answers of the other nodes whose queues it went to (each with
    /// how many of its queues), in a cluster.
    forwarded: super::forward::Awaited,
}

impl Published {
    /// Waits until the message is safe; true if every queue took it (an
    /// AMQP confirm ack), false if any refused it (a nack).
    pub async fn confirmed(self) -> Result<bool, CoreError> {
        if let Some(r) = self.receipt {
            r.await?;
        }
        let mut rejected = self.rejected;
        for (queues, answer) in self.forwarded {
            rejected += refused_of(queues, answer.await.ok());
        }
        Ok(rejected == 0)
    }

    /// The outcome at once when there is nothing to wait for (nothing was
    /// stored): true if every queue took it. None while a store write is
    /// pending ([`Published::confirmed`] then waits for it).
    pub fn settled(&self) -> Option<bool> {
        (self.receipt.is_none() && self.forwarded.is_empty()).then_some(self.rejected == 0)
    }

    /// Blocking form of [`Published::confirmed`], for non-async callers.
    pub fn confirmed_blocking(self) -> Result<bool, CoreError> {
        if let Some(r) = self.receipt {
            r.wait_blocking()?;
        }
        let mut rejected = self.rejected;
        for (queues, answer) in self.forwarded {
            rejected += refused_of(queues, answer.blocking_recv().ok());
        }
        Ok(rejected == 0)
    }
}

/// How many of another node's `queues` did not take a message, from its
/// answer (none: all of them).
fn refused_of(queues: u32, answer: Option<super::forward::ForwardAnswer>) -> usize {
    match answer {
        Some(Ok((_, refused))) => refused as usize,
        Some(Err(_)) | None => queues as usize,
    }
}

/// One queue a message is going to.
pub(crate) struct Target {
    queue: Arc<Queue>,
    /// The arrival number and expiry, when they were fixed while planning
    /// (a stored entry's record needs them); otherwise they are taken
    /// under the same lock as the enqueue.
    reserved: Option<(u64, Option<Instant>)>,
    persisted: bool,
}

/// Puts `msg` into one planned target queue. A queue deleted since the
/// plan takes nothing: its entry record (already queued for the store) is
/// deleted again and the message's reference released.
fn enqueue_one(msg: &Arc<Message>, t: Target, now: Instant) -> (Arc<Queue>, Effects, Accepted) {
    let mut fx = Effects::default();
    let (accepted, expires) = {
        let mut st = t.queue.state.lock();
        let (seq, expires_at) = t
            .reserved
            .unwrap_or_else(|| (st.reserve_seq(), st.expiry_for(msg, now)));
        if t.queue.is_deleted() {
            if t.persisted {
                fx.removed.push(Removed {
                    seq,
                    message: msg.id,
                });
            }
            (Accepted::Rejected, false)
        } else {
            let entry = Entry {
                persisted: t.persisted,
                ..Entry::loaded(seq, Arc::clone(msg), expires_at)
            };
            (st.publish(entry, now, &mut fx), expires_at.is_some())
        }
    };
    if expires {
        // The queue's next deadline may have moved earlier.
        t.queue.wake.notify_one();
    }
    (t.queue, fx, accepted)
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Broker {
    /// Publishes `msg` (its `exchange` and `routing_key` say where) in `vhost`.
    /// Waits only while the store's queue is full (backpressure); the
    /// returned [`Published`] resolves when the message is on disk.
    pub async fn publish(&self, vhost: &str, msg: Message) -> Result<Published, CoreError> {
        self.publish_batch(vhost, msg, Batch::new()).await
    }

    /// [`Broker::publish`], with `extra` written in the message's batch.
    pub(crate) async fn publish_batch(
        &self,
        vhost: &str,
        mut msg: Message,
        extra: Batch,
    ) -> Result<Published, CoreError> {
        self.resolve_address(vhost, &mut msg)?;
        // MQTT's adapter keeps its own publishers' retained messages (it
        // must refuse the PUBLISH when that fails); AMQP and STOMP
        // publishers ask for it with a header (docs/interop.md).
        if msg.origin.protocol != Protocol::Mqtt
            && msg.exchange == interop::TOPIC_EXCHANGE
            && interop::retain_requested(&msg.properties)
        {
            self.set_retained(vhost, msg.clone()).await?;
        }
        let (msg, targets, remote, quorum, mut batch) = self.prepare(vhost, msg)?;
        batch.append(extra);
        let mut published = self.place(&msg, targets, batch).await?;
        if !remote.is_empty() {
            published.routed += remote.len();
            published.forwarded = self.forward(vhost, &msg, remote).await;
        }
        if !quorum.is_empty() {
            published.routed += quorum.len();
            let awaited = self.enqueue_quorum(vhost, &msg, quorum).await;
            published.forwarded.extend(awaited);
        }
        Ok(published)
    }

    /// Hands `batch` (the message's records) to the store, then puts the
    /// message into its planned `targets`; the receipt resolves when the
    /// batch is on disk.
    pub(crate) async fn place(
        &self,
        msg: &Arc<Message>,
        targets: Vec<Target>,
        batch: Batch,
    ) -> Result<Published, CoreError> {
        let receipt = if batch.is_empty() {
            None
        } else {
            Some(self.store.submit(batch, true).await?)
        };
        Ok(self.enqueue(msg, targets, receipt))
    }

    /// A message for the default exchange whose routing key is an address
    /// (`/topic/k`, `/exchange/x/k`, `/queue/q`: how a reply_to from MQTT
    /// or STOMP reads) and that names no queue goes where the address
    /// says, so an AMQP responder's usual `basic_publish("", reply_to)`
    /// reaches an MQTT or STOMP requester. An address of an exchange that
    /// does not exist is left alone: unroutable, as any unknown key.
    fn resolve_address(&self, vhost: &str, msg: &mut Message) -> Result<(), CoreError> {
        if !msg.exchange.is_empty() || !interop::ReplyAddress::is_address(&msg.routing_key) {
            return Ok(());
        }
        let vh = self.vhost(vhost)?;
        if vh.queue(&msg.routing_key).is_some() {
            return Ok(());
        }
        let (exchange, key) = match interop::ReplyAddress::parse(&msg.routing_key) {
            interop::ReplyAddress::Queue(q) => (String::new(), q.to_string()),
            interop::ReplyAddress::Exchange { exchange, key } => {
                if vh.topology.read().exchange(exchange).is_none() {
                    return Ok(());
                }
                (exchange.to_string(), key.to_string())
            }
        };
        msg.exchange = exchange;
        msg.routing_key = key;
        Ok(())
    }

    /// Routes the message and plans where it goes and what is written.
    #[allow(clippy::type_complexity)]
    fn prepare(
        &self,
        vhost: &str,
        mut msg: Message,
    ) -> Result<
        (
            Arc<Message>,
            Vec<Target>,
            super::RemoteTargets,
            Vec<String>,
            Batch,
        ),
        CoreError,
    > {
        if self.is_shut_down() {
            return Err(CoreError::ShuttingDown);
        }
        let vh = self.vhost(vhost)?;
        self.check_topic_levels(&msg.routing_key)?;
        msg.id = self.new_message_id();
        self.counters.messages_in.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_in
            .fetch_add(msg.body_len(), Ordering::Relaxed);
        let (mut queues, mut remote) = vh.route(&msg.exchange, &msg, self.forwards())?;
        let mut quorum = self.take_quorum(&mut queues);
        if self.quorum_log().is_some() && !remote.is_empty() {
            let known = vh.remote.read();
            remote.retain(|(_, name)| {
                let replicated = known.get(name).is_some_and(|r| super::is_quorum(&r.def));
                if replicated {
                    quorum.push(name.clone());
                }
                !replicated
            });
            drop(known);
        }
        let msg = Arc::new(msg);
        let mut batch = Batch::new();
        let targets = self.plan(&msg, queues, &[], &mut batch);
        Ok((msg, targets, remote, quorum, batch))
    }

    /// Reserves a place in each queue and writes the records for the
    /// durable ones into `batch`. `skip` lists queues a dead-lettered
    /// message must not return to (cycle detection).
    pub(crate) fn plan(
        &self,
        msg: &Arc<Message>,
        queues: Vec<Arc<Queue>>,
        skip: &[String],
        batch: &mut Batch,
    ) -> Vec<Target> {
        // The clocks only for stored entries (and the wall clock only for
        // those with an expiry).
        let mut clock = None;
        let mut now_unix = None;
        let mut targets = Vec::with_capacity(queues.len());
        let mut stored = 0u32;
        for queue in queues {
            if skip.iter().any(|s| s == queue.name()) {
                continue;
            }
            let persisted = msg.properties.is_persistent() && queue.def().durable;
            if !persisted {
                // Nothing to write: the queue is locked once, to enqueue.
                targets.push(Target {
                    queue,
                    reserved: None,
                    persisted,
                });
                continue;
            }
            let now = *clock.get_or_insert_with(Instant::now);
            let (seq, expires_at) = {
                let mut st = queue.state.lock();
                (st.reserve_seq(), st.expiry_for(msg, now))
            };
            let expires_unix = expires_at.map_or(0, |t| {
                let base = *now_unix.get_or_insert_with(unix_millis);
                base.saturating_add(t.saturating_duration_since(now).as_millis() as u64)
            });
            batch.put(
                Cf::QueueEntries,
                records::entry_key(queue.id(), seq),
                records::encode_entry(&records::EntryRecord {
                    message: msg.id,
                    expires_unix_ms: expires_unix,
                    index: Some((msg.body_len(), msg.properties.priority.unwrap_or(0))),
                }),
            );
            stored += 1;
            targets.push(Target {
                queue,
                reserved: Some((seq, expires_at)),
                persisted,
            });
        }
        if stored > 0 {
            batch.put(
                Cf::Messages,
                records::message_key(msg.id).to_vec(),
                crate::codec::encode_message(msg),
            );
            self.refs.lock().insert(msg.id, stored);
        }
        targets
    }

    /// Puts the message into each target queue and carries out the effects.
    fn enqueue(
        &self,
        msg: &Arc<Message>,
        targets: Vec<Target>,
        receipt: Option<CommitReceipt>,
    ) -> Published {
        let routed = targets.len();
        if routed == 0 {
            return Published {
                routed,
                rejected: 0,
                receipt,
                forwarded: Vec::new(),
            };
        }
        let now = Instant::now();
        let mut rejected = 0;
        let mut work = VecDeque::new();
        for t in targets {
            let (queue, fx, accepted) = enqueue_one(msg, t, now);
            if accepted == Accepted::Rejected {
                rejected += 1;
            }
            if fx.is_counters_only() {
                self.count_delivered(&fx);
            } else {
                work.push_back((queue, fx));
            }
        }
        // One list for every target: a target's dead letters made by an
        // earlier target's cascade come after its own (see `apply_all`).
        if !work.is_empty() {
            self.apply_all(work);
        }
        Published {
            routed,
            rejected,
            receipt,
            forwarded: Vec::new(),
        }
    }

    /// Adds deletes for entries that left `q` to `batch`, and the message
    /// record when its last entry goes.
    pub(crate) fn collect_removed(&self, q: &Queue, removed: &[Removed], batch: &mut Batch) {
        if removed.is_empty() {
            return;
        }
        if q.quorum.is_some() {
            // Its messages are its group's, not this store's.
            self.settle_quorum(q, removed);
            return;
        }
        let mut refs = self.refs.lock();
        for r in removed {
            batch.delete(Cf::QueueEntries, records::entry_key(q.id(), r.seq));
            if let Some(n) = refs.get_mut(&r.message) {
                *n -= 1;
                if *n == 0 {
                    refs.remove(&r.message);
                    batch.delete(Cf::Messages, records::message_key(r.message).to_vec());
                }
            }
        }
    }

    /// Adds a queue operation's deliveries to the broker's out counters.
    fn count_delivered(&self, fx: &Effects) {
        if fx.delivered == 0 {
            return;
        }
        self.counters
            .messages_out
            .fetch_add(fx.delivered, Ordering::Relaxed);
        self.counters
            .bytes_out
            .fetch_add(fx.delivered_bytes, Ordering::Relaxed);
    }

    /// Carries out what a queue operation left to do: store deletes,
    /// delivery counters, dead-letter publishes (which may cascade).
    pub(crate) fn apply_effects(&self, q: &Arc<Queue>, fx: Effects) {
        if fx.is_counters_only() {
            self.count_delivered(&fx);
            return;
        }
        self.apply_all(VecDeque::from([(Arc::clone(q), fx)]));
    }

    /// [`Broker::apply_effects`] for several queue operations, in the order
    /// they happened (first in, first out), with what they cascade into
    /// appended: a queue's batches of dead letters then come up in the
    /// order the queue made them, so this thread never waits for a turn
    /// it holds itself.
    fn apply_all(&self, mut work: VecDeque<(Arc<Queue>, Effects)>) {
        // Bounded: a dead-letter cycle is cut by x-death, this is a backstop.
        let mut rounds = 0;
        while let Some((q, fx)) = work.pop_front() {
            rounds += 1;
            self.count_delivered(&fx);
            // This batch's place among the queue's dead letters: the copies
            // are made after those of earlier batches (another thread's).
            let turn = fx
                .dead_letters
                .first()
                .zip(fx.dead_letters.last())
                .map(|(first, last)| (first.order, last.order + 1));
            if let Some((first, _)) = turn {
                q.await_dead_letter_turn(first, super::DEAD_LETTER_TURN_PATIENCE);
            }
            let mut batch = Batch::new();
            self.collect_removed(&q, &fx.removed, &mut batch);
            let mut copies = Vec::new();
            for dl in fx.dead_letters {
                if rounds > 10_000 {
                    tracing::warn!(queue = q.name(), "dead-letter cascade cut short");
                    if let Some(r) = dl.removed {
                        self.collect_removed(&q, &[r], &mut batch);
                    }
                    continue;
                }
                if let Some(copy) = self.dead_letter(&q, dl, &mut batch) {
                    copies.push(copy);
                }
            }
            // The copies' records are queued for the store before any
            // consumer can see (and ack) a copy: an ack's delete then always
            // follows the put, so an acked copy cannot come back after a crash.
            self.write_soon(batch);
            let now = if copies.is_empty() {
                None
            } else {
                Some(Instant::now())
            };
            for (msg, targets) in copies {
                let now = now.unwrap_or_else(Instant::now);
                for t in targets {
                    let (queue, fx, _) = enqueue_one(&msg, t, now);
                    work.push_back((queue, fx));
                }
            }
            if let Some((_, next)) = turn {
                q.end_dead_letter_turn(next);
            }
            // Last: what the read-back dead-letters must follow the copies
            // made here.
            if let Some(p) = fx.page_in {
                self.start_page_in(&q, p.wanted);
            }
        }
    }

    /// Plans the republishing of a dead letter to the queue's dead-letter
    /// exchange: the copy and where it goes. The copy's records and the
    /// removal of the original entry share `batch`, so a crash leaves one or
    /// the other, never neither. The caller enqueues the copy once `batch`
    /// is submitted.
    fn dead_letter(
        &self,
        q: &Arc<Queue>,
        dl: DeadLetter,
        batch: &mut Batch,
    ) -> Option<(Arc<Message>, Vec<Target>)> {
        if let Some(r) = dl.removed {
            self.collect_removed(q, &[r], batch);
        }
        let (dlx, dlrk) = {
            let st = q.state.lock();
            (
                st.args.dead_letter_exchange.clone(),
                st.args.dead_letter_routing_key.clone(),
            )
        };
        let dlx = dlx?;
        let vh = self.vhost(q.vhost()).ok()?;
        let mut msg = dead_lettered_copy(&dl.message, q.name(), dl.reason, &dlx, dlrk.as_deref());
        msg.id = self.new_message_id();
        let skip = cycle_queues(&msg);
        let queues = match vh.route_queues(&dlx, &msg) {
            Ok(q) => q,
            Err(e) => {
                tracing::debug!(queue = q.name(), error = %e, "dead-letter exchange unusable; message dropped");
                return None;
            }
        };
        let mut queues = queues;
        queues.retain(|t| !skip.iter().any(|s| s == t.name()));
        let msg = Arc::new(msg);
        self.enqueue_quorum_soon(q.vhost(), &msg, self.take_quorum(&mut queues));
        let targets = self.plan(&msg, queues, &skip, batch);
        Some((msg, targets))
    }
}

/// Queues a dead-lettered message must not go back to: RabbitMQ drops a
/// message that would cycle to a queue it already died in, unless a
/// consumer rejected it somewhere along the way.
fn cycle_queues(msg: &Message) -> Vec<String> {
    let Some(FieldValue::Array(deaths)) = msg.properties.headers.get("x-death") else {
        return Vec::new();
    };
    let tables: Vec<&FieldTable> = deaths
        .iter()
        .filter_map(|d| match d {
            FieldValue::Table(t) => Some(t),
            _ => None,
        })
        .collect();
    if tables
        .iter()
        .any(|t| t.get("reason").and_then(FieldValue::as_str) == Some("rejected"))
    {
        return Vec::new();
    }
    tables
        .iter()
        .filter_map(|t| {
            t.get("queue")
                .and_then(FieldValue::as_str)
                .map(str::to_string)
        })
        .collect()
}

/// The copy of `orig` that goes to the dead-letter exchange, with its
/// `x-death` history updated as RabbitMQ does: one entry per (queue,
/// reason), most recent first, with a count; `x-first-death-*` set once;
/// the per-message TTL removed (kept as `original-expiration`).
pub fn dead_lettered_copy(
    orig: &Message,
    queue: &str,
    reason: DeathReason,
    dlx: &str,
    dlrk: Option<&str>,
) -> Message {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut props = orig.properties.clone();
    let mut deaths: Vec<FieldValue> = match props.headers.remove("x-death") {
        Some(FieldValue::Array(a)) => a,
        _ => Vec::new(),
    };
    let same = |v: &FieldValue| match v {
        FieldValue::Table(t) => {
            t.get("queue").and_then(FieldValue::as_str) == Some(queue)
                && t.get("reason").and_then(FieldValue::as_str) == Some(reason.as_str())
        }
        _ => false,
    };
    let entry = match deaths.iter().position(same) {
        Some(i) => {
            let mut t = match deaths.remove(i) {
                FieldValue::Table(t) => t,
                _ => FieldTable::new(),
            };
            // A publisher may set any count: saturate, never overflow.
            let count = t
                .get("count")
                .and_then(FieldValue::as_i128)
                .unwrap_or(0)
                .clamp(0, i128::from(i64::MAX)) as i64;
            t.insert("count", FieldValue::I64(count.saturating_add(1)));
            t.insert("time", FieldValue::Timestamp(now));
            t
        }
        None => {
            let mut t = FieldTable::new();
            t.insert("count", FieldValue::I64(1));
            t.insert("reason", FieldValue::string(reason.as_str()));
            t.insert("queue", FieldValue::string(queue));
            t.insert("time", FieldValue::Timestamp(now));
            t.insert("exchange", FieldValue::string(orig.exchange.as_str()));
            t.insert(
                "routing-keys",
                FieldValue::Array(vec![FieldValue::string(orig.routing_key.as_str())]),
            );
            if let Some(exp) = &orig.properties.expiration {
                t.insert("original-expiration", FieldValue::string(exp.as_str()));
            }
            t
        }
    };
    deaths.insert(0, FieldValue::Table(entry));
    let first_death = props.headers.get("x-first-death-reason").is_none();
    for (which, set) in [("first", first_death), ("last", true)] {
        if set {
            for (field, value) in [
                ("reason", reason.as_str()),
                ("queue", queue),
                ("exchange", orig.exchange.as_str()),
            ] {
                props.headers.insert(
                    format!("x-{which}-death-{field}"),
                    FieldValue::string(value),
                );
            }
        }
    }
    props.headers.insert("x-death", FieldValue::Array(deaths));
    props.expiration = None;
    Message {
        id: orig.id,
        exchange: dlx.to_string(),
        routing_key: dlrk.unwrap_or(&orig.routing_key).to_string(),
        properties: props,
        body: orig.body.clone(),
        origin: Origin::INTERNAL,
    }
}
