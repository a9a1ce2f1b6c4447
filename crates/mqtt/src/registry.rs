//! Client ids to sessions: which connection serves each client id, the
//! persistent sessions parked while their client is away, session expiry,
//! delayed wills, and the end of a session (its queues and records go).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use junction_core::{ConnectionId, Message, StateWrites};
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::MqttContext;
use crate::convert::unix_secs;
use crate::session::{self, NEVER_EXPIRES, Session, shared_queue_name, split_shared};

/// A will waiting for its delay (MQTT 5 Will Delay Interval).
pub(crate) struct PendingWill {
    pub at: Instant,
    pub message: Message,
    pub retain: bool,
}

/// A persistent session whose client is away.
pub(crate) struct Parked {
    pub session: Session,
    /// None: never expires.
    pub expires_at: Option<Instant>,
    pub will: Option<PendingWill>,
    /// Another node of the cluster claimed the client id: the session
    /// takes no more messages and has no will; its record stays until
    /// that node takes it ([`hand_over`]) or it expires. Its queues are
    /// not this node's to delete.
    pub departed: bool,
}

impl Parked {
    /// Stops the session taking messages here: its consumers go (what
    /// they held goes back to the queues, to be delivered again), and its
    /// will with them.
    fn let_go(&mut self) {
        self.departed = true;
        self.will = None;
        self.session.let_go();
    }
}

/// Asks the connection that holds a client id to go. `notify_one` keeps a
/// permit when nobody waits, so a kick is never missed; lighter than a
/// cancellation token (memory per idle connection).
pub(crate) type Kick = Arc<tokio::sync::Notify>;

enum Slot {
    /// A connection serves the client id; `kick` asks it to go.
    Online {
        conn: ConnectionId,
        kick: Kick,
    },
    Parked(Box<Parked>),
    /// The sweeper is ending this expired session (deleting its queue and
    /// records): a new connection waits, or it would see them vanish.
    Ending,
}

#[derive(Default)]
pub(crate) struct Registry {
    slots: Mutex<HashMap<String, Slot>>,
}

/// What a new connection finds for its client id.
pub(crate) enum Claim {
    /// No session: start one.
    Fresh,
    /// A parked session to resume (or to discard, on clean start).
    Parked(Box<Parked>),
    /// The previous connection did not let go in time.
    Busy,
}

/// How long a new connection waits for the one it takes over from.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// What [`Registry::take_for_hand_over`] finds.
enum Handing {
    Taken(Box<Parked>),
    Nothing,
    /// A connection (asked to go) or the sweeper has it still.
    Wait,
}

impl Registry {
    /// Registers `conn` for `client_id`, taking over from a connection
    /// that has it (which is asked to go and waited for).
    pub async fn claim(&self, client_id: &str, conn: ConnectionId, kick: Kick) -> Claim {
        let deadline = Instant::now() + TAKEOVER_WAIT;
        loop {
            {
                let mut slots = self.slots.lock();
                match slots.remove(client_id) {
                    None => {
                        slots.insert(client_id.to_string(), Slot::Online { conn, kick });
                        return Claim::Fresh;
                    }
                    Some(Slot::Parked(p)) => {
                        slots.insert(client_id.to_string(), Slot::Online { conn, kick });
                        return Claim::Parked(p);
                    }
                    Some(Slot::Ending) => {
                        slots.insert(client_id.to_string(), Slot::Ending);
                    }
                    Some(Slot::Online {
                        conn: other,
                        kick: other_kick,
                    }) => {
                        other_kick.notify_one();
                        slots.insert(
                            client_id.to_string(),
                            Slot::Online {
                                conn: other,
                                kick: other_kick,
                            },
                        );
                    }
                }
            }
            if Instant::now() >= deadline {
                return Claim::Busy;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The connection `conn` is done with `client_id`: park the session
    /// (persistent) or free the id.
    pub fn release(&self, client_id: &str, conn: ConnectionId, parked: Option<Box<Parked>>) {
        let mut slots = self.slots.lock();
        if matches!(slots.get(client_id), Some(Slot::Online { conn: c, .. }) if *c == conn) {
            match parked {
                Some(p) => slots.insert(client_id.to_string(), Slot::Parked(p)),
                None => slots.remove(client_id),
            };
        }
    }

    /// Another node claimed `client_id`: its connection here is asked to
    /// go, and its parked session lets go of its messages.
    pub fn depart(&self, client_id: &str) {
        let mut slots = self.slots.lock();
        match slots.get_mut(client_id) {
            Some(Slot::Online { kick, .. }) => kick.notify_one(),
            Some(Slot::Parked(p)) if !p.departed => p.let_go(),
            _ => {}
        }
    }

    /// Takes `client_id`'s parked session out for another node.
    fn take_for_hand_over(&self, client_id: &str) -> Handing {
        let mut slots = self.slots.lock();
        match slots.get(client_id) {
            None => Handing::Nothing,
            Some(Slot::Online { kick, .. }) => {
                kick.notify_one();
                Handing::Wait
            }
            Some(Slot::Ending) => Handing::Wait,
            Some(Slot::Parked(_)) => match slots.remove(client_id) {
                Some(Slot::Parked(p)) => Handing::Taken(p),
                _ => Handing::Nothing,
            },
        }
    }

    /// Wakes every connection (at shutdown: a parked connection waits on
    /// its kick only, see `connection::park`).
    pub fn kick_all(&self) {
        for slot in self.slots.lock().values() {
            if let Slot::Online { kick, .. } = slot {
                kick.notify_one();
            }
        }
    }

    /// The sweeper finished ending `client_id`'s session: the id is free.
    pub fn ended(&self, client_id: &str) {
        let mut slots = self.slots.lock();
        if matches!(slots.get(client_id), Some(Slot::Ending)) {
            slots.remove(client_id);
        }
    }

    /// Whether any parked session holds a subscription using `queue`.
    pub fn parked_uses_shared(&self, queue: &str) -> bool {
        self.slots.lock().values().any(|s| match s {
            Slot::Parked(p) if p.departed => false,
            Slot::Parked(p) => p
                .session
                .subs
                .shared()
                .any(|(g, f, _)| shared_queue_name(g, f) == queue),
            Slot::Online { .. } | Slot::Ending => false,
        })
    }

    /// Every client id with a session: online (its connection) or
    /// parked (its subscriptions, when it expires, whether a will waits).
    pub fn view(&self) -> Vec<crate::context::ClientInfo> {
        let now = Instant::now();
        let slots = self.slots.lock();
        let mut all: Vec<crate::context::ClientInfo> = slots
            .iter()
            .filter_map(|(id, slot)| match slot {
                Slot::Online { conn, .. } => Some(crate::context::ClientInfo {
                    client_id: id.clone(),
                    connection: Some(*conn),
                    subscriptions: Vec::new(),
                    expires_in: None,
                    will_pending: false,
                    queued: 0,
                }),
                Slot::Parked(p) if p.departed => None,
                Slot::Parked(p) => Some(crate::context::ClientInfo {
                    client_id: id.clone(),
                    connection: None,
                    subscriptions: p
                        .session
                        .subs
                        .by_filter
                        .keys()
                        .map(|f| f.to_string())
                        .collect(),
                    expires_in: p.expires_at.map(|t| t.saturating_duration_since(now)),
                    will_pending: p.will.is_some(),
                    queued: 0,
                }),
                Slot::Ending => None,
            })
            .collect();
        all.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        all
    }

    /// Takes out sessions past their expiry (each with whether it
    /// departed) and wills past their delay.
    fn due(&self, now: Instant) -> (Vec<(Session, bool)>, Vec<PendingWill>) {
        let mut slots = self.slots.lock();
        let mut wills = Vec::new();
        let mut expired_ids = Vec::new();
        for (id, slot) in slots.iter_mut() {
            if let Slot::Parked(p) = slot {
                let expired = p.expires_at.is_some_and(|t| t <= now);
                if p.will.as_ref().is_some_and(|w| w.at <= now || expired) {
                    wills.extend(p.will.take());
                }
                if expired {
                    expired_ids.push(id.clone());
                }
            }
        }
        let sessions = expired_ids
            .into_iter()
            .filter_map(|id| match slots.insert(id, Slot::Ending) {
                Some(Slot::Parked(p)) => Some((p.session, p.departed)),
                _ => None,
            })
            .collect();
        (sessions, wills)
    }
}

/// When a session parked now with `expiry` seconds ends.
pub(crate) fn expiry_deadline(expiry: u32, since: Instant) -> Option<Instant> {
    (expiry != NEVER_EXPIRES).then(|| since + Duration::from_secs(u64::from(expiry)))
}

/// Parks the persistent sessions an earlier run stored; their expiry
/// counts from their last disconnect (or from now, for those that were
/// connected when the broker stopped).
/// Returns the keys of records no stored session owns.
pub(crate) fn restore(ctx: &MqttContext) -> Result<Vec<String>, junction_core::CoreError> {
    let (stored, orphans) = session::load_all(ctx.broker.read_state(session::NAMESPACE)?)?;
    let now = Instant::now();
    let now_unix = unix_secs();
    let vhost = &ctx.settings.vhost;
    // Read under the lock that a claim applied meanwhile takes too
    // (`Registry::depart`): either this sees the claim or it sees this.
    let mut slots = ctx.registry.slots.lock();
    for (rec, incoming, outgoing) in stored {
        let claim = ctx.broker.client_claim(vhost, &rec.client_id);
        let departed = claim
            .as_ref()
            .is_some_and(|c| Some(c.node.as_str()) != ctx.broker.node_name());
        let away = match rec.disconnected_at {
            0 => 0,
            t => now_unix.saturating_sub(t),
        };
        let expires_at = expiry_deadline(rec.expiry, now)
            .map(|t| t.checked_sub(Duration::from_secs(away)).unwrap_or(now));
        // The connection that claimed it here, whose claim its end removes.
        let claimed_by = claim
            .filter(|_| !departed)
            .map_or(ConnectionId(0), |c| ConnectionId(c.connection));
        let mut s = Session::new(rec.client_id.clone(), rec.expiry, claimed_by);
        ctx.stats
            .subscriptions
            .fetch_add(rec.subscriptions.len() as i64, Ordering::Relaxed);
        s.subs = rec.subscriptions;
        s.save_all_filters = rec.inline;
        if !incoming.is_empty() {
            s.rare_mut().incoming_qos2 = incoming;
        }
        for o in outgoing {
            if o.released {
                s.rare_mut().pubrel_pending.insert(o.packet_id);
                // Awaiting PUBCOMP: it holds a slot in the window.
                s.credit.take();
            } else {
                s.rare_mut().recovered.insert(o.message, o.packet_id);
            }
        }
        s.stored = true;
        slots.insert(
            rec.client_id,
            Slot::Parked(Box::new(Parked {
                session: s,
                expires_at,
                will: None,
                departed,
            })),
        );
    }
    Ok(orphans)
}

/// At start: deletes what no stored session owns any more — session and
/// shared-subscription queues left by sessions that ended while the broker
/// was down or crashing, and QoS 2 records without a session record. In a
/// cluster, first the claims this node's earlier life left (no connection
/// exists yet); its orphan queues wait [`ORPHANS_AFTER`], for this node to
/// catch up with the claims the cluster made meanwhile.
pub(crate) async fn remove_orphans(
    ctx: &Arc<MqttContext>,
    records: Vec<String>,
    shutdown: &CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
) {
    let mut w = StateWrites::new();
    for key in records {
        w.delete(session::NAMESPACE, &key);
    }
    if !w.is_empty()
        && let Err(e) = ctx.broker.write_state(w).await
    {
        tracing::warn!(error = %e, "mqtt orphan records not deleted");
    }
    if ctx.broker.node_name().is_none() {
        remove_orphan_queues(ctx).await;
        return;
    }
    release_stale_claims(ctx);
    let ctx = Arc::clone(ctx);
    let shutdown = shutdown.clone();
    tasks.spawn(async move {
        // Each deletion is a commit: stop between them at shutdown too.
        tokio::select! {
            () = async {
                tokio::time::sleep(ORPHANS_AFTER).await;
                remove_orphan_queues(&ctx).await;
            } => {}
            () = shutdown.cancelled() => {}
        }
    });
}

/// How long after its start a cluster node looks for orphan queues.
const ORPHANS_AFTER: Duration = Duration::from_secs(30);

/// Removes the claims of this node that no session here holds (its
/// earlier life's connections; none of this life's exists yet).
fn release_stale_claims(ctx: &MqttContext) {
    let vhost = &ctx.settings.vhost;
    let held: std::collections::HashSet<String> =
        ctx.registry.slots.lock().keys().cloned().collect();
    let stale: Vec<(String, ConnectionId)> = ctx
        .broker
        .client_claims_here(vhost)
        .into_iter()
        .filter(|(client_id, _)| !held.contains(client_id))
        .map(|(client_id, claim)| (client_id, ConnectionId(claim.connection)))
        .collect();
    // A thousand a commit: within the group's entry limit with the
    // longest client ids.
    for chunk in stale.chunks(1000) {
        ctx.broker.release_clients(vhost, chunk.to_vec());
    }
}

/// Deletes the session and shared queues of this node no session uses.
/// In a cluster a session queue is the cluster's: an orphan only when no
/// node claims its client id; a shared queue may serve sessions of other
/// nodes, and stays.
async fn remove_orphan_queues(ctx: &MqttContext) {
    let vhost = &ctx.settings.vhost;
    let parked: std::collections::HashSet<String> = {
        let slots = ctx.registry.slots.lock();
        slots.keys().cloned().collect()
    };
    let queues: Vec<String> = ctx
        .broker
        .stats()
        .queues
        .into_iter()
        .filter(|q| &q.vhost == vhost)
        .map(|q| q.name)
        .collect();
    let clustered = ctx.broker.node_name().is_some();
    for q in queues {
        let orphan = match q.strip_prefix(session::SESSION_QUEUE_PREFIX) {
            Some(client) => {
                !parked.contains(client) && ctx.broker.client_claim(vhost, client).is_none()
            }
            None => {
                q.starts_with(session::SHARED_QUEUE_PREFIX)
                    && !clustered
                    && !ctx.registry.parked_uses_shared(&q)
            }
        };
        if orphan {
            tracing::info!(queue = %q, "mqtt queue of an ended session deleted");
            let _ = ctx.broker.delete_queue(vhost, &q, false, false, None).await;
        }
    }
}

/// Another node takes `client_id`'s session over: the connection serving
/// it here is asked to go (and waited for until `deadline`), the session
/// gives up its messages and its records here, and its record (with its
/// subscriptions) is the answer. None: no session here, or its
/// connection did not go in time.
pub(crate) async fn hand_over(
    ctx: &MqttContext,
    client_id: &str,
    deadline: Instant,
) -> Option<Vec<u8>> {
    let deadline = deadline.min(Instant::now() + TAKEOVER_WAIT);
    loop {
        match ctx.registry.take_for_hand_over(client_id) {
            Handing::Taken(mut p) => {
                p.let_go();
                let mut record = p.session.record(0);
                record.subscriptions = p.session.subs.clone();
                tracing::info!(%client_id, "mqtt session handed over to another node");
                discard_departed(ctx, p.session).await;
                return Some(record.encode());
            }
            Handing::Nothing => return None,
            Handing::Wait => {}
        }
        if Instant::now() >= deadline {
            tracing::warn!(%client_id, "mqtt session not handed over: its connection here did not go in time");
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// In a cluster, deletes the session queue of `client_id` a clean start
/// of connection `conn` finds without a session (its holder could not
/// hand it over): its messages are not the new session's. Not once
/// another connection claimed the id since (the queue may be its).
pub(crate) async fn drop_stale_queue(ctx: &MqttContext, client_id: &str, conn: ConnectionId) {
    let vhost = &ctx.settings.vhost;
    let queue = session::session_queue_name(client_id);
    let Some(me) = ctx.broker.node_name() else {
        return;
    };
    let ours = junction_core::ClientClaim {
        node: me.to_owned(),
        connection: conn.0,
    };
    if ctx.broker.client_claim(vhost, client_id) != Some(ours)
        || !ctx.broker.knows_queue(vhost, &queue)
    {
        return;
    }
    if let Err(e) = ctx
        .broker
        .delete_queue(vhost, &queue, false, false, None)
        .await
        && !matches!(e, junction_core::CoreError::NotFound(_))
    {
        tracing::warn!(error = %e, %queue, "mqtt queue of an earlier session not deleted");
    }
}

/// Forgets a session another node holds now: its records here go, its
/// queues stay (they are the other node's session's).
pub(crate) async fn discard_departed(ctx: &MqttContext, mut s: Session) {
    ctx.stats
        .subscriptions
        .fetch_sub(s.subs.len() as i64, Ordering::Relaxed);
    s.let_go();
    if s.stored {
        let mut w = StateWrites::new();
        s.forget(&mut w);
        if let Err(e) = ctx.broker.write_state(w).await {
            tracing::warn!(error = %e, "mqtt session record not deleted");
        }
    }
}

/// Ends a session for good: its consumers, its queue, its shared queues
/// nobody else uses, and its stored records.
pub(crate) async fn end_session(ctx: &MqttContext, mut s: Session) {
    ctx.stats
        .subscriptions
        .fetch_sub(s.subs.len() as i64, Ordering::Relaxed);
    s.consumer = None;
    let shared: Vec<String> = s
        .rare_if()
        .map(|r| std::mem::take(&mut r.shared))
        .unwrap_or_default()
        .into_keys()
        .collect();
    let broker = &ctx.broker;
    let vhost = &ctx.settings.vhost;
    if let Err(e) = broker
        .delete_queue(vhost, &s.queue(), false, false, None)
        .await
        && !matches!(e, junction_core::CoreError::NotFound(_))
    {
        tracing::warn!(error = %e, queue = %s.queue(), "mqtt session queue not deleted");
    }
    let mut names: Vec<String> = s
        .subs
        .shared()
        .map(|(g, f, _)| shared_queue_name(g, f))
        .collect();
    names.extend(shared);
    names.sort();
    names.dedup();
    for q in names {
        drop_shared_queue_if_unused(ctx, &q).await;
    }
    if s.stored {
        let mut w = StateWrites::new();
        s.forget(&mut w);
        if let Err(e) = broker.write_state(w).await {
            tracing::warn!(error = %e, "mqtt session record not deleted");
        }
    }
}

/// Deletes a shared subscription's queue once no session uses it.
pub(crate) async fn drop_shared_queue_if_unused(ctx: &MqttContext, queue: &str) {
    let vhost = &ctx.settings.vhost;
    let Ok(q) = ctx.broker.queue_for(vhost, queue, None) else {
        return;
    };
    if q.consumer_count() > 0 || ctx.registry.parked_uses_shared(queue) {
        return;
    }
    let _ = ctx
        .broker
        .delete_queue(vhost, queue, true, false, None)
        .await;
}

/// Publishes a will (retained too when it asks).
pub(crate) async fn publish_will(ctx: &MqttContext, will: PendingWill) {
    let vhost = &ctx.settings.vhost;
    if will.retain
        && let Err(e) = ctx.broker.set_retained(vhost, will.message.clone()).await
    {
        tracing::warn!(error = %e, "mqtt will not retained");
    }
    ctx.stats.messages_received.fetch_add(1, Ordering::Relaxed);
    ctx.stats
        .bytes_received
        .fetch_add(will.message.body_len(), Ordering::Relaxed);
    match ctx.broker.publish(vhost, will.message).await {
        Ok(p) => {
            let _ = p.confirmed().await;
        }
        Err(e) => tracing::warn!(error = %e, "mqtt will not published"),
    }
}

/// Four times a second: ends expired sessions and sends wills whose delay
/// is over.
pub(crate) async fn sweep(ctx: Arc<MqttContext>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (sessions, wills) = ctx.registry.due(Instant::now());
        for w in wills {
            publish_will(&ctx, w).await;
        }
        for (s, departed) in sessions {
            tracing::debug!(client_id = %s.client_id, departed, "mqtt session expired");
            let id = s.client_id.clone();
            if departed {
                discard_departed(&ctx, s).await;
            } else {
                let conn = s.connection;
                end_session(&ctx, s).await;
                ctx.broker.release_client(&ctx.settings.vhost, &id, conn);
            }
            ctx.registry.ended(&id);
        }
    }
}

/// A shared filter's queue, if `filter` is `$share/group/filter`.
pub(crate) fn shared_queue(filter: &str) -> Option<String> {
    split_shared(filter).map(|(g, f)| shared_queue_name(g, f))
}
