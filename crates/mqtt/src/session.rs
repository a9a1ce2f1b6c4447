//! One MQTT session's state, without I/O: its subscriptions and what each
//! delivered message matches, packet identifiers, the QoS 1/2 messages in
//! flight both ways, and the durable record a persistent session keeps in
//! the core's adapter state (namespace [`NAMESPACE`]).
//!
//! A session outlives its connection when it is persistent (MQTT 3
//! `clean session = 0`, MQTT 5 Session Expiry Interval > 0): it is parked
//! in the registry with its consumer still registered, so messages in
//! flight keep their packet identifiers when the client comes back.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use junction_core::codec::{Reader, Writer};
use junction_core::{
    ConnectionId, ConsumerEvent, ConsumerHandle, ConsumerId, CoreError, Credit, DeliveryTag,
    StateWrites,
};
use tokio::sync::mpsc;

use crate::codec::{Publish, QoS, RetainHandling};
use crate::convert::{filter_matches, filter_to_pattern};
use junction_core::topic::TopicTrie;

/// The adapter-state namespace of MQTT sessions.
pub const NAMESPACE: &str = "mqtt";

/// Session Expiry Interval meaning "never" (MQTT 5 section 3.1.2.11.2).
pub const NEVER_EXPIRES: u32 = u32::MAX;

/// One subscription's options, as granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubOptions {
    /// The granted QoS: the most a delivery through it gets.
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
    /// MQTT 5 Subscription Identifier.
    pub id: Option<u32>,
}

/// What one delivered message matched among a session's subscriptions.
#[derive(Debug, PartialEq, Eq)]
pub struct Match {
    /// Highest QoS of the matching subscriptions.
    pub qos: QoS,
    /// Every matching subscription's identifier, in filter order.
    pub ids: Vec<u32>,
    /// Some matching subscription keeps the RETAIN flag as published.
    pub retain_as_published: bool,
}

impl Match {
    /// What the `candidates` (non-shared filters with their options, in
    /// filter order) give a message on `topic`: those that match it as
    /// MQTT matches, without No Local ones for an `own` message. None when
    /// none does.
    fn of<'a>(
        candidates: impl Iterator<Item = (&'a str, &'a SubOptions)>,
        topic: &str,
        own: bool,
    ) -> Option<Match> {
        let mut found: Option<Match> = None;
        for (filter, o) in candidates {
            if (own && o.no_local) || !filter_matches(filter, topic) {
                continue;
            }
            let m = found.get_or_insert(Match {
                qos: QoS::AtMostOnce,
                ids: Vec::new(),
                retain_as_published: false,
            });
            m.qos = m.qos.max(o.qos);
            m.ids.extend(o.id);
            m.retain_as_published |= o.retain_as_published;
        }
        found
    }
}

/// Where an outgoing QoS 1/2 message came from, to settle it when acked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A queue delivery to one of the session's consumers.
    Queue(ConsumerId, DeliveryTag),
    /// A retained message sent on subscribe (it holds a credit slot).
    Retained,
}

/// An outgoing QoS 1/2 PUBLISH the client has not acknowledged.
#[derive(Clone, Debug)]
pub struct Inflight {
    pub publish: Publish,
    pub source: Source,
    /// The core message's id (0 for a retained message).
    pub message: u64,
}

/// The subscriptions of a session, by filter (shared ones under their
/// whole `$share/group/filter`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subscriptions {
    /// Boxed keys: a filter is never changed in place, and a map of a
    /// million costs a word less per entry (memory per subscription).
    pub by_filter: BTreeMap<Box<str>, SubOptions>,
}

/// A `$share/group/filter` filter's group and filter.
pub fn split_shared(filter: &str) -> Option<(&str, &str)> {
    filter.strip_prefix("$share/")?.split_once('/')
}

impl Subscriptions {
    /// What a message on `topic` matches among the non-shared
    /// subscriptions; `own` says the message was published on this
    /// session's connection (No Local subscriptions skip it). None when
    /// nothing matches.
    pub fn matching(&self, topic: &str, own: bool) -> Option<Match> {
        let own_filters = self
            .by_filter
            .iter()
            .filter(|(f, _)| split_shared(f).is_none())
            .map(|(f, o)| (&**f, o));
        Match::of(own_filters, topic, own)
    }

    /// The shared subscriptions, as (queue group, filter, options).
    pub fn shared(&self) -> impl Iterator<Item = (&str, &str, &SubOptions)> {
        self.by_filter
            .iter()
            .filter_map(|(f, o)| split_shared(f).map(|(g, f)| (g, f, o)))
    }

    pub fn len(&self) -> usize {
        self.by_filter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_filter.is_empty()
    }
}

/// A session's durable part: what [`SessionRecord::encode`] stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    pub client_id: String,
    /// Session Expiry Interval, seconds.
    pub expiry: u32,
    /// Unix seconds of the last disconnect (0: it was connected).
    pub disconnected_at: u64,
    pub subscriptions: Subscriptions,
    /// The stored header held its subscriptions inline (an earlier
    /// version's format): the next save writes them as records.
    pub inline: bool,
}

fn qos_from(b: u8) -> Result<QoS, CoreError> {
    QoS::from_u8(b).ok_or_else(|| CoreError::Corrupt(format!("bad QoS {b} in MQTT session")))
}

fn retain_handling_byte(r: RetainHandling) -> u8 {
    match r {
        RetainHandling::SendAtSubscribe => 0,
        RetainHandling::SendAtSubscribeIfNew => 1,
        RetainHandling::DoNotSend => 2,
    }
}

fn encode_options(w: &mut Writer, o: &SubOptions) {
    w.u8(o.qos as u8);
    w.bool(o.no_local);
    w.bool(o.retain_as_published);
    w.u8(retain_handling_byte(o.retain_handling));
    w.u32(o.id.unwrap_or(0));
}

fn decode_options(r: &mut Reader<'_>) -> Result<SubOptions, CoreError> {
    let qos = qos_from(r.u8()?)?;
    let no_local = r.bool()?;
    let retain_as_published = r.bool()?;
    let retain_handling = match r.u8()? {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendAtSubscribeIfNew,
        _ => RetainHandling::DoNotSend,
    };
    let id = Some(r.u32()?).filter(|&i| i != 0);
    Ok(SubOptions {
        qos,
        no_local,
        retain_as_published,
        retain_handling,
        id,
    })
}

/// A subscription record's value: its options.
pub fn encode_subscription(o: &SubOptions) -> Vec<u8> {
    let mut w = Writer::new();
    encode_options(&mut w, o);
    w.finish().to_vec()
}

impl SessionRecord {
    /// The session's header record. Subscriptions are stored one record
    /// each (see [`filter_key`]), so a SUBSCRIBE writes what it changed,
    /// not the whole table: records of earlier versions that hold them
    /// inline still decode.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.str(&self.client_id);
        w.u32(self.expiry);
        w.u64(self.disconnected_at);
        w.u32(self.subscriptions.len() as u32);
        for (filter, o) in &self.subscriptions.by_filter {
            w.str(filter);
            encode_options(&mut w, o);
        }
        w.finish().to_vec()
    }

    pub fn decode(data: &[u8]) -> Result<SessionRecord, CoreError> {
        let mut r = Reader::new(data);
        let client_id = r.string()?;
        let expiry = r.u32()?;
        let disconnected_at = r.u64()?;
        let n = r.u32()?;
        let mut subscriptions = Subscriptions::default();
        for _ in 0..n {
            let filter = r.string()?;
            let o = decode_options(&mut r)?;
            subscriptions.by_filter.insert(filter.into(), o);
        }
        Ok(SessionRecord {
            client_id,
            expiry,
            disconnected_at,
            inline: n > 0,
            subscriptions,
        })
    }
}

/// State keys: `s/<client id>` holds the record, `i/<packet id>/<client id>`
/// an incoming QoS 2 message awaiting PUBREL, `o/<packet id>/<client id>`
/// an outgoing QoS 1/2 message not yet acknowledged (value: see
/// [`outgoing_value`]), `f/<client id length>/<client id><filter>` one
/// subscription (value: its options).
pub fn record_key(client_id: &str) -> String {
    format!("s/{client_id}")
}

pub fn filter_key(client_id: &str, filter: &str) -> String {
    format!("f/{:03}/{client_id}{filter}", client_id.len())
}

/// The (client id, filter) of a subscription key's part after `f/`.
fn split_filter_key(rest: &str) -> Option<(&str, &str)> {
    let (len, tail) = rest.split_once('/')?;
    let len: usize = len.parse().ok()?;
    (tail.is_char_boundary(len) && len <= tail.len()).then(|| tail.split_at(len))
}

pub fn incoming_key(client_id: &str, id: u16) -> String {
    format!("i/{id:05}/{client_id}")
}

pub fn outgoing_key(client_id: &str, id: u16) -> String {
    format!("o/{id:05}/{client_id}")
}

/// An outgoing record's value: the core message id, and whether the
/// client acknowledged it with PUBREC (we owe it a PUBREL only).
pub fn outgoing_value(message: u64, released: bool) -> [u8; 9] {
    let mut v = [0u8; 9];
    v[..8].copy_from_slice(&message.to_be_bytes());
    v[8] = u8::from(released);
    v
}

/// An outgoing record stored before a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub packet_id: u16,
    pub message: u64,
    pub released: bool,
}

/// A stored session: its record, incoming QoS 2 packet ids awaiting
/// PUBREL, outgoing messages not yet acknowledged.
pub type Stored = (SessionRecord, BTreeSet<u16>, Vec<Outgoing>);

/// Every stored session, with its QoS 2 packet ids, from the state map;
/// and the keys of packet-id records whose session has no record (left
/// by a session that ended in a crash), to delete.
pub fn load_all(
    entries: Vec<(String, bytes::Bytes)>,
) -> Result<(Vec<Stored>, Vec<String>), CoreError> {
    let mut records: HashMap<String, Stored> = HashMap::new();
    let mut ids: Vec<(bool, u16, String, bytes::Bytes)> = Vec::new();
    let mut filters: Vec<(String, String, bytes::Bytes)> = Vec::new();
    for (key, value) in entries {
        if let Some(rest) = key.strip_prefix("f/") {
            if let Some((client, filter)) = split_filter_key(rest) {
                filters.push((client.to_string(), filter.to_string(), value));
            }
        } else if let Some(client) = key.strip_prefix("s/") {
            let rec = SessionRecord::decode(&value)?;
            records.insert(client.to_string(), (rec, BTreeSet::new(), Vec::new()));
        } else if let Some((kind, rest)) = key.split_once('/')
            && let Some((id, client)) = rest.split_once('/')
            && let Ok(id) = id.parse::<u16>()
        {
            ids.push((kind == "i", id, client.to_string(), value));
        }
    }
    let mut orphans = Vec::new();
    for (client, filter, value) in filters {
        let Some((rec, _, _)) = records.get_mut(&client) else {
            orphans.push(filter_key(&client, &filter));
            continue;
        };
        let options = decode_options(&mut Reader::new(&value))?;
        rec.subscriptions.by_filter.insert(filter.into(), options);
    }
    for (incoming, packet_id, client, value) in ids {
        let Some((_, i, o)) = records.get_mut(&client) else {
            orphans.push(if incoming {
                incoming_key(&client, packet_id)
            } else {
                outgoing_key(&client, packet_id)
            });
            continue;
        };
        if incoming {
            i.insert(packet_id);
        } else if let (Some(m), Some(&released)) = (value.get(..8), value.get(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(m);
            o.push(Outgoing {
                packet_id,
                message: u64::from_be_bytes(b),
                released: released != 0,
            });
        }
    }
    let mut out: Vec<_> = records.into_values().collect();
    out.sort_by(|a, b| a.0.client_id.cmp(&b.0.client_id));
    Ok((out, orphans))
}

/// The parts of a [`Session`] most sessions never use.
#[derive(Default)]
pub struct SessionRare {
    /// Incoming QoS 2 packet ids published and acknowledged with PUBREC,
    /// awaiting PUBREL.
    pub incoming_qos2: BTreeSet<u16>,
    /// Outgoing QoS 2 packet ids acknowledged with PUBREC; we sent PUBREL
    /// and await PUBCOMP.
    pub pubrel_pending: BTreeSet<u16>,
    /// Messages sent before a broker restart and not acknowledged: core
    /// message id → the packet id to resend them with (DUP set).
    pub recovered: BTreeMap<u64, u16>,
    /// An ack-free own consumer that was replaced (upgraded to acked, or
    /// cancelled when the session parked): deliveries it made may still be
    /// in the channel.
    pub retired_own: Option<ConsumerId>,
    /// Consumers on shared-subscription queues, by queue name.
    pub shared: BTreeMap<String, ConsumerHandle>,
    /// Filters subscribed, changed or unsubscribed since the last save:
    /// the next save writes (or deletes) their records only.
    pub changed_filters: BTreeSet<String>,
    /// The non-shared filters as a topic trie over their AMQP patterns,
    /// made at the first delivery to a session holding more than
    /// [`INDEX_FROM`] of them, and kept up to date from then on: what a
    /// delivery matches is then found in the trie instead of by testing
    /// every filter. Sessions that hold many filters but are never
    /// delivered to (or hold few) do not pay its memory.
    index: Option<Box<TopicTrie<Box<str>>>>,
}

/// Past this many subscriptions a session that receives a message indexes
/// its filters (see [`SessionRare`]): below it, testing each filter is
/// as quick as a trie walk.
pub const INDEX_FROM: usize = 16;

/// What [`Session::rare`] reads when nothing was made.
static NO_RARE: SessionRare = SessionRare {
    incoming_qos2: BTreeSet::new(),
    pubrel_pending: BTreeSet::new(),
    recovered: BTreeMap::new(),
    retired_own: None,
    shared: BTreeMap::new(),
    changed_filters: BTreeSet::new(),
    index: None,
};

/// One session: durable state plus what lives only in memory.
pub struct Session {
    pub client_id: String,
    /// Session Expiry Interval in force, seconds (0: ends with the connection).
    pub expiry: u32,
    pub subs: Subscriptions,
    /// Outgoing QoS 1/2 PUBLISHes not yet acknowledged, by packet id.
    pub inflight: BTreeMap<u16, Inflight>,
    /// What most sessions never hold (QoS 2 state, a restart's
    /// leftovers, shared subscriptions), made on first use: memory per
    /// idle connection. Read through [`Session::rare`].
    rare: Option<Box<SessionRare>>,
    next_packet_id: u16,
    /// The consumer on the session's own queue (None until the first
    /// non-shared subscription).
    pub consumer: Option<ConsumerHandle>,
    /// The own consumer settles nothing itself (every non-shared
    /// subscription is QoS 0): no acks, no window, as fast as QoS 0 goes.
    pub own_no_ack: bool,
    /// Every consumer delivers here; the receiver moves with the session.
    /// Made with the first consumer (an idle connection has none).
    pub events_tx: Option<mpsc::UnboundedSender<ConsumerEvent>>,
    /// Taken by the connection while it serves the session.
    pub events_rx: Option<mpsc::UnboundedReceiver<ConsumerEvent>>,
    /// Outgoing flow control: the client's Receive Maximum, shared by
    /// every consumer of the session.
    pub credit: Arc<Credit>,
    /// The connection currently attached (for No Local).
    pub connection: ConnectionId,
    /// A record of this session may be in the store.
    pub stored: bool,
    /// The next save writes every subscription's record (the session was
    /// just made persistent, or came from a record holding them inline).
    pub save_all_filters: bool,
}

impl Session {
    pub fn new(client_id: String, expiry: u32, connection: ConnectionId) -> Session {
        Session {
            client_id,
            expiry,
            subs: Subscriptions::default(),
            inflight: BTreeMap::new(),
            rare: None,
            next_packet_id: 1,
            consumer: None,
            own_no_ack: false,
            events_tx: None,
            events_rx: None,
            credit: Credit::new(0),
            connection,
            stored: false,
            save_all_filters: false,
        }
    }

    /// Adds or replaces a subscription; true if the filter was already
    /// subscribed.
    pub fn subscribe(&mut self, filter: &str, options: SubOptions) -> bool {
        let existed = self.subs.by_filter.insert(filter.into(), options).is_some();
        if !existed
            && split_shared(filter).is_none()
            && let Some(index) = self.rare_if().and_then(|r| r.index.as_mut())
        {
            index.insert(&filter_to_pattern(filter), filter.into());
        }
        existed
    }

    /// Removes a subscription; its options if it was there.
    pub fn unsubscribe(&mut self, filter: &str) -> Option<SubOptions> {
        let options = self.subs.by_filter.remove(filter)?;
        if let Some(index) = self.rare_if().and_then(|r| r.index.as_mut()) {
            index.remove(&filter_to_pattern(filter), filter);
        }
        Some(options)
    }

    /// What a message with routing key `key` (MQTT topic `topic`) matches
    /// among the non-shared subscriptions; `own` says the message was
    /// published on this session's connection (No Local subscriptions
    /// skip it). The same answer as [`Subscriptions::matching`], found
    /// through the session's index once it holds more than
    /// [`INDEX_FROM`] filters (which the first call makes).
    pub fn matching(&mut self, key: &str, topic: &str, own: bool) -> Option<Match> {
        if self.subs.len() <= INDEX_FROM {
            return self.subs.matching(topic, own);
        }
        if self.rare().index.is_none() {
            let mut index = TopicTrie::default();
            for f in self.subs.by_filter.keys() {
                if split_shared(f).is_none() {
                    index.insert(&filter_to_pattern(f), f.clone());
                }
            }
            self.rare_mut().index = Some(Box::new(index));
        }
        let index = self.rare().index.as_deref()?;
        let mut found: Vec<&Box<str>> = Vec::new();
        index.matches_ref(key, &mut found);
        // In filter order, as the scan finds them (subscription ids).
        found.sort_unstable();
        // The trie finds a superset (AMQP patterns know no `$` rule, and a
        // literal `*` level is a wildcard to them): `Match::of` checks each
        // one as MQTT matches it.
        let candidates = found
            .into_iter()
            .filter_map(|f| self.subs.by_filter.get_key_value(&**f))
            .map(|(f, o)| (&**f, o));
        Match::of(candidates, topic, own)
    }

    /// The rarely used state (empty when none was made).
    pub fn rare(&self) -> &SessionRare {
        self.rare.as_deref().unwrap_or(&NO_RARE)
    }

    /// The rarely used state, if any was made (for removals: nothing is
    /// made to remove from).
    pub fn rare_if(&mut self) -> Option<&mut SessionRare> {
        self.rare.as_deref_mut()
    }

    /// The rarely used state, made now if it was not.
    pub fn rare_mut(&mut self) -> &mut SessionRare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Name of the session's own queue (bound to `amq.topic`); made on
    /// demand rather than kept, for the memory of idle connections.
    pub fn queue(&self) -> String {
        session_queue_name(&self.client_id)
    }

    /// A persistent session keeps a record and outlives its connection.
    pub fn is_persistent(&self) -> bool {
        self.expiry > 0
    }

    /// The next free packet id (skipping ids in flight), or None when all
    /// 65,535 are in use.
    pub fn next_packet_id(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            let id = self.next_packet_id;
            self.next_packet_id = if id == u16::MAX { 1 } else { id + 1 };
            if !self.inflight.contains_key(&id)
                && !self.rare().pubrel_pending.contains(&id)
                && !self.rare().recovered.values().any(|&r| r == id)
            {
                return Some(id);
            }
        }
        None
    }

    /// The header record (subscriptions are records of their own).
    pub fn record(&self, disconnected_at: u64) -> SessionRecord {
        SessionRecord {
            client_id: self.client_id.clone(),
            expiry: self.expiry,
            disconnected_at,
            subscriptions: Subscriptions::default(),
            inline: false,
        }
    }

    /// Marks `filter` as subscribed, changed or unsubscribed since the
    /// last save. Only a stored session saves filter by filter: the first
    /// save (or one after a record with inline subscriptions) writes them
    /// all, and a session that is never stored must not keep a second
    /// copy of every filter it subscribes (memory per subscription).
    pub fn filter_changed(&mut self, filter: &str) {
        if self.stored && !self.save_all_filters {
            self.rare_mut().changed_filters.insert(filter.to_string());
        }
    }

    /// Writes the session's header record and the records of the
    /// subscriptions changed since the last save (all of them the first
    /// time): O(what changed), however many subscriptions it has.
    pub fn save(&mut self, w: &mut StateWrites, disconnected_at: u64) {
        w.put(
            NAMESPACE,
            &record_key(&self.client_id),
            &self.record(disconnected_at).encode(),
        );
        if !self.stored || self.save_all_filters {
            // Every subscription is written below; a filter changed since
            // and gone now was never stored on its own.
            if let Some(r) = self.rare.as_mut() {
                r.changed_filters.clear();
            }
            for (filter, o) in &self.subs.by_filter {
                w.put(
                    NAMESPACE,
                    &filter_key(&self.client_id, filter),
                    &encode_subscription(o),
                );
            }
        }
        let changed = match self.rare.as_mut() {
            Some(r) => std::mem::take(&mut r.changed_filters),
            None => BTreeSet::new(),
        };
        for filter in changed {
            let key = filter_key(&self.client_id, &filter);
            match self.subs.by_filter.get(filter.as_str()) {
                Some(o) => w.put(NAMESPACE, &key, &encode_subscription(o)),
                None => w.delete(NAMESPACE, &key),
            }
        }
        self.stored = true;
        self.save_all_filters = false;
    }

    /// Drops every consumer of the session (what they held goes back to
    /// their queues, flagged redelivered): another node serves it now.
    pub fn let_go(&mut self) {
        self.consumer = None;
        if let Some(r) = self.rare.as_mut() {
            r.shared.clear();
        }
        self.events_tx = None;
        // What was in flight from the queues goes back to them with the
        // consumers: if the session is resumed here, the queue's next
        // delivery of each resends it with its packet id (DUP), as after a
        // restart, instead of a copy of our own going out beside it.
        let queued: Vec<u16> = self
            .inflight
            .iter()
            .filter(|(_, f)| matches!(f.source, Source::Queue(..)))
            .map(|(&id, _)| id)
            .collect();
        for id in queued {
            if let Some(f) = self.inflight.remove(&id) {
                self.rare_mut().recovered.insert(f.message, id);
                self.credit.give_back();
            }
        }
    }

    /// Deletes everything this session stored.
    pub fn forget(&mut self, w: &mut StateWrites) {
        self.stored = false;
        w.delete(NAMESPACE, &record_key(&self.client_id));
        let filters = self
            .subs
            .by_filter
            .keys()
            .map(|f| &**f)
            .chain(self.rare().changed_filters.iter().map(String::as_str));
        for filter in filters {
            w.delete(NAMESPACE, &filter_key(&self.client_id, filter));
        }
        if let Some(r) = self.rare.as_mut() {
            r.changed_filters.clear();
        }
        let rare = self.rare();
        for &id in &rare.incoming_qos2 {
            w.delete(NAMESPACE, &incoming_key(&self.client_id, id));
        }
        let outgoing = rare
            .pubrel_pending
            .iter()
            .chain(self.inflight.keys())
            .chain(rare.recovered.values());
        for &id in outgoing {
            w.delete(NAMESPACE, &outgoing_key(&self.client_id, id));
        }
    }

    /// Where consumers deliver; the channel is made on first use, and the
    /// connection picks up its receiver from `events_rx`.
    pub fn events(&mut self) -> mpsc::UnboundedSender<ConsumerEvent> {
        if let Some(tx) = &self.events_tx {
            return tx.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        self.events_tx = Some(tx.clone());
        self.events_rx = Some(rx);
        tx
    }

    /// Forgets the messages in flight from `consumer`: they went back to
    /// their queue (a shared subscription ended: another member gets them)
    /// or the queue is gone; resending them here would duplicate them.
    /// Returns the packet ids it freed.
    pub fn drop_inflight_of(&mut self, consumer: ConsumerId) -> Vec<u16> {
        let ids: Vec<u16> = self
            .inflight
            .iter()
            .filter(|(_, f)| matches!(f.source, Source::Queue(c, _) if c == consumer))
            .map(|(&id, _)| id)
            .collect();
        for id in &ids {
            self.inflight.remove(id);
        }
        ids
    }

    /// Whether every non-shared subscription is QoS 0 (the own consumer
    /// can then run without acks).
    pub fn own_subscriptions_qos0(&self) -> bool {
        self.subs
            .by_filter
            .iter()
            .filter(|(f, _)| split_shared(f).is_none())
            .all(|(_, o)| o.qos == QoS::AtMostOnce)
    }

    /// Whether deliveries of `consumer` were made without acks (nothing to
    /// settle).
    pub fn is_no_ack(&self, consumer: ConsumerId) -> bool {
        match &self.consumer {
            Some(c) if c.id() == consumer => self.own_no_ack,
            _ => self.rare().retired_own == Some(consumer),
        }
    }

    /// Whether `consumer` is (or was) the session's own-queue consumer.
    pub fn is_own(&self, consumer: ConsumerId) -> bool {
        self.consumer.as_ref().is_some_and(|c| c.id() == consumer)
            || self.rare().retired_own == Some(consumer)
    }

    /// The consumer handle a delivery came through.
    pub fn consumer_handle(&self, id: ConsumerId) -> Option<&ConsumerHandle> {
        self.consumer
            .as_ref()
            .filter(|c| c.id() == id)
            .or_else(|| self.rare().shared.values().find(|c| c.id() == id))
    }

    /// The shared subscription (filter, options) a shared-queue consumer serves.
    pub fn shared_sub_for(&self, consumer: ConsumerId) -> Option<(&str, &SubOptions)> {
        let (queue, _) = self
            .rare()
            .shared
            .iter()
            .find(|(_, c)| c.id() == consumer)?;
        self.subs
            .shared()
            .find(|(g, f, _)| shared_queue_name(g, f) == *queue)
            .map(|(_, f, o)| (f, o))
    }
}

/// How the queue of every session's name starts.
pub const SESSION_QUEUE_PREFIX: &str = "mqtt-session-";

/// How the queue of every shared subscription's name starts.
pub const SHARED_QUEUE_PREFIX: &str = "mqtt-shared-";

/// The queue of the session of `client_id`.
pub fn session_queue_name(client_id: &str) -> String {
    format!("{SESSION_QUEUE_PREFIX}{client_id}")
}

/// The queue a shared subscription's group consumes from. A share name
/// holds no `/`, so the first `/` ends it: no two (group, filter) pairs
/// share a queue.
pub fn shared_queue_name(group: &str, filter: &str) -> String {
    format!("{SHARED_QUEUE_PREFIX}{group}/{filter}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_let_go_keeps_queued_in_flight_ids_for_the_queues_next_delivery() {
        let mut s = Session::new("dev".into(), 60, ConnectionId(1));
        let publish = |qos| Publish {
            dup: false,
            qos,
            retain: false,
            topic: crate::codec::TopicName::new("a/b").unwrap(),
            packet_id: None,
            properties: Default::default(),
            payload: bytes::Bytes::from_static(b"x"),
        };
        s.inflight.insert(
            7,
            Inflight {
                publish: publish(QoS::AtLeastOnce),
                source: Source::Queue(ConsumerId(3), DeliveryTag(1)),
                message: 42,
            },
        );
        s.inflight.insert(
            8,
            Inflight {
                publish: publish(QoS::AtLeastOnce),
                source: Source::Retained,
                message: 0,
            },
        );
        s.let_go();
        // The queued one is the queue's again, under its packet id; the
        // retained one (no queue behind it) stays to be resent.
        assert_eq!(s.inflight.keys().copied().collect::<Vec<_>>(), vec![8]);
        assert_eq!(s.rare().recovered.get(&42), Some(&7));
        // Forgetting the session still deletes the outgoing records of
        // both ids, with its own record.
        let mut w = StateWrites::new();
        s.forget(&mut w);
        assert_eq!(w.len(), 3);
    }

    fn opts(qos: QoS, id: Option<u32>) -> SubOptions {
        SubOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAtSubscribe,
            id,
        }
    }

    #[test]
    fn mqtt_3_3_4_2_overlapping_subscriptions_one_copy_highest_qos_all_ids() {
        let mut s = Subscriptions::default();
        s.by_filter
            .insert("a/#".into(), opts(QoS::AtLeastOnce, Some(1)));
        s.by_filter
            .insert("a/+".into(), opts(QoS::ExactlyOnce, Some(2)));
        s.by_filter
            .insert("b".into(), opts(QoS::AtMostOnce, Some(3)));
        s.by_filter
            .insert("$share/g/a/b".into(), opts(QoS::AtMostOnce, Some(4)));
        let m = s.matching("a/b", false).unwrap();
        assert_eq!(m.qos, QoS::ExactlyOnce);
        assert_eq!(m.ids, vec![1, 2]);
        assert_eq!(s.matching("c", false), None);
    }

    #[test]
    fn a_large_session_matches_through_its_index_as_the_scan_does() {
        let filters = [
            "a/#",
            "a/+",
            "a/b",
            "+/b",
            "#",
            "+/+/c",
            "a/+/c",
            "$SYS/#",
            "$SYS/+",
            "x.y/z",
            "a/*",
            "$share/g/a/b",
            "a//b",
            "a/+/+",
            "b/#",
            "c",
            "a/b/c/#",
            "+",
            "d/+/#",
        ];
        assert!(filters.len() > INDEX_FROM + 1);
        let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
        let mut s = Session::new("c".into(), 0, ConnectionId(1));
        for (i, f) in filters.iter().enumerate() {
            let mut o = opts(qos[i % 3], Some(i as u32 + 1));
            o.no_local = i % 5 == 0;
            o.retain_as_published = i % 4 == 0;
            assert!(!s.subscribe(f, o));
        }
        let topics = [
            "a/b", "a", "a/b/c", "a/b/c/d", "$SYS/x", "$SYS", "x.y/z", "a/*", "a/q", "a//b", "c",
            "b", "d/e", "d/e/f/g", "/b", "q/r/c",
        ];
        let check = |s: &mut Session| {
            for own in [false, true] {
                for t in topics {
                    let scanned = s.subs.matching(t, own);
                    let key = crate::convert::swap_separators(t);
                    assert_eq!(s.matching(&key, t, own), scanned, "{t}, own {own}");
                }
            }
        };
        check(&mut s);
        assert!(s.rare().index.is_some(), "made by the first delivery");
        // Kept up to date by later subscribes and unsubscribes.
        assert!(s.unsubscribe("a/+").is_some());
        assert!(s.unsubscribe("a/+").is_none());
        assert!(!s.subscribe("a/b/+", opts(QoS::ExactlyOnce, Some(40))));
        assert!(
            s.subscribe("a/#", opts(QoS::AtMostOnce, Some(41))),
            "replaced"
        );
        assert!(!s.subscribe("$share/h/a/#", opts(QoS::AtLeastOnce, Some(42))));
        check(&mut s);
    }

    #[test]
    fn mqtt_3_8_3_3_no_local_skips_own_messages() {
        let mut s = Subscriptions::default();
        let mut o = opts(QoS::AtLeastOnce, None);
        o.no_local = true;
        s.by_filter.insert("a".into(), o);
        assert!(s.matching("a", true).is_none());
        assert!(s.matching("a", false).is_some());
    }

    #[test]
    fn packet_ids_skip_those_in_use_and_wrap() {
        let mut s = Session::new("c".into(), 0, ConnectionId(1));
        s.rare_mut().pubrel_pending.insert(1);
        assert_eq!(s.next_packet_id(), Some(2));
        s.next_packet_id = u16::MAX;
        assert_eq!(s.next_packet_id(), Some(u16::MAX));
        assert_eq!(s.next_packet_id(), Some(2), "0 is never used, 1 is taken");
    }

    #[test]
    fn records_round_trip_and_load_groups_packet_ids() {
        let mut subs = Subscriptions::default();
        subs.by_filter
            .insert("a/+".into(), opts(QoS::ExactlyOnce, Some(9)));
        // A header of an earlier version, with its subscription inline.
        let rec = SessionRecord {
            client_id: "dev/7".into(),
            expiry: 3600,
            disconnected_at: 1_700_000_000,
            subscriptions: subs,
            inline: true,
        };
        assert_eq!(SessionRecord::decode(&rec.encode()).unwrap(), rec);
        let entries = vec![
            (record_key("dev/7"), bytes::Bytes::from(rec.encode())),
            (incoming_key("dev/7", 5), bytes::Bytes::new()),
            (
                outgoing_key("dev/7", 65535),
                bytes::Bytes::copy_from_slice(&outgoing_value(42, true)),
            ),
            (incoming_key("gone", 1), bytes::Bytes::new()),
        ];
        let (all, orphans) = load_all(entries).unwrap();
        assert_eq!(orphans, vec![incoming_key("gone", 1)]);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0, rec);
        assert_eq!(all[0].1, BTreeSet::from([5]));
        assert_eq!(
            all[0].2,
            vec![Outgoing {
                packet_id: 65535,
                message: 42,
                released: true
            }]
        );
    }

    #[test]
    fn subscriptions_are_saved_one_record_each_and_only_when_changed() {
        let mut s = Session::new("dev/9".into(), 3600, ConnectionId(1));
        s.subs
            .by_filter
            .insert("a/#".into(), opts(QoS::AtLeastOnce, None));
        s.filter_changed("a/#");
        let mut w = StateWrites::new();
        s.save(&mut w, 0);
        // First save: the header and every subscription.
        assert_eq!(w.len(), 2);
        s.subs
            .by_filter
            .insert("b/+".into(), opts(QoS::AtMostOnce, Some(3)));
        s.filter_changed("b/+");
        let mut w = StateWrites::new();
        s.save(&mut w, 0);
        assert_eq!(w.len(), 2, "the header and the one new subscription");
        s.subs.by_filter.remove("a/#");
        s.filter_changed("a/#");
        let mut w = StateWrites::new();
        s.save(&mut w, 0);
        assert_eq!(
            w.len(),
            2,
            "the header and the removed subscription's delete"
        );

        // What the saves wrote loads back as the session's subscriptions.
        let header = s.record(0);
        let entries = vec![
            (
                filter_key("dev/9", "b/+"),
                bytes::Bytes::from(encode_subscription(&opts(QoS::AtMostOnce, Some(3)))),
            ),
            (
                filter_key("gone", "x"),
                bytes::Bytes::from(encode_subscription(&opts(QoS::AtMostOnce, None))),
            ),
            (record_key("dev/9"), bytes::Bytes::from(header.encode())),
        ];
        let (all, orphans) = load_all(entries).unwrap();
        assert_eq!(orphans, vec![filter_key("gone", "x")]);
        assert_eq!(all.len(), 1);
        assert!(!all[0].0.inline);
        assert_eq!(
            all[0]
                .0
                .subscriptions
                .by_filter
                .keys()
                .map(|f| &**f)
                .collect::<Vec<_>>(),
            vec!["b/+"]
        );
    }

    #[test]
    fn a_session_never_stored_keeps_no_second_copy_of_its_filters() {
        let mut s = Session::new("dev/1".into(), 0, ConnectionId(1));
        for i in 0..100 {
            let f = format!("a/{i}/+");
            s.subs
                .by_filter
                .insert(f.as_str().into(), opts(QoS::AtLeastOnce, None));
            s.filter_changed(&f);
        }
        assert!(s.rare().changed_filters.is_empty());
        // Stored, it saves what changed since, one record each.
        let mut w = StateWrites::new();
        s.save(&mut w, 0);
        assert_eq!(w.len(), 101, "the header and every subscription");
        s.subs.by_filter.remove("a/7/+");
        s.filter_changed("a/7/+");
        assert_eq!(s.rare().changed_filters.len(), 1);
    }

    #[test]
    fn filter_keys_split_back_whatever_the_client_id_holds() {
        let key = filter_key("a/b/c", "x/+/y");
        let rest = key.strip_prefix("f/").unwrap();
        assert_eq!(split_filter_key(rest), Some(("a/b/c", "x/+/y")));
        assert_eq!(split_filter_key("003/ab"), None, "too short");
    }
}
