//! One vhost's exchanges and bindings, and the routing function over them.
//!
//! Routing is a pure function of the topology and the message, run in the
//! publisher's task under a read lock (RabbitMQ's model: no router thread).
//! Mutations return the [`Change`]s they made so the broker can persist the
//! durable ones.

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::Arc;

use crate::error::CoreError;
use crate::exchange::{
    Binding, Destination, ExchangeDef, ExchangeKind, HeadersMode, headers_match,
};
use crate::message::Message;
use crate::topic::TopicTrie;
use crate::value::FieldTable;
use crate::{FastMap as HashMap, FastSet as HashSet};

/// The built-in exchanges every vhost has.
pub const BUILTIN_EXCHANGES: [(&str, ExchangeKind); 4] = [
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
];

/// What a mutation did, for persistence and auto-delete bookkeeping.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    ExchangeAdded(ExchangeDef),
    ExchangeRemoved(ExchangeDef),
    BindingAdded(Binding),
    BindingRemoved(Binding),
}

/// A multiset: each value with how many bindings hold it. Adding and
/// removing one binding is O(1), however many share the exchange or key.
type Counted<V> = HashMap<V, u32>;

fn count_in<V: Eq + Hash>(set: &mut Counted<V>, v: V) {
    *set.entry(v).or_default() += 1;
}

fn count_out<V: Eq + Hash + Borrow<Q>, Q: Eq + Hash + ?Sized>(set: &mut Counted<V>, v: &Q) {
    if let Some(n) = set.get_mut(v) {
        *n -= 1;
        if *n == 0 {
            set.remove(v);
        }
    }
}

/// A binding's destination as the indexes hold it: one allocation per
/// queue or exchange, shared by every binding to it.
type Dest = Arc<Destination>;

/// Per-type routing index of one exchange's bindings.
#[derive(Debug)]
enum Routes {
    Direct(HashMap<Box<str>, Counted<Dest>>),
    Fanout(Counted<Dest>),
    Topic(TopicTrie<Dest>),
    /// Headers bindings by destination: routing tests every one anyway,
    /// removal finds its own without a scan of the exchange.
    Headers(HashMap<Dest, Vec<(HeadersMode, FieldTable)>>),
}

impl Routes {
    fn new(kind: ExchangeKind) -> Routes {
        match kind {
            ExchangeKind::Direct => Routes::Direct(HashMap::default()),
            ExchangeKind::Fanout => Routes::Fanout(HashMap::default()),
            ExchangeKind::Topic => Routes::Topic(TopicTrie::default()),
            ExchangeKind::Headers => Routes::Headers(HashMap::default()),
        }
    }

    /// Indexes `b`, whose destination the caller has in shared form.
    fn add(&mut self, b: &Binding, dest: &Dest) -> Result<(), CoreError> {
        match self {
            Routes::Direct(map) => match map.get_mut(b.routing_key.as_str()) {
                Some(set) => count_in(set, Arc::clone(dest)),
                None => {
                    let mut set = Counted::default();
                    count_in(&mut set, Arc::clone(dest));
                    map.insert(b.routing_key.as_str().into(), set);
                }
            },
            Routes::Fanout(all) => count_in(all, Arc::clone(dest)),
            Routes::Topic(trie) => trie.insert(&b.routing_key, Arc::clone(dest)),
            Routes::Headers(by_dest) => {
                let mode = HeadersMode::from_arguments(&b.arguments)?;
                by_dest
                    .entry(Arc::clone(dest))
                    .or_default()
                    .push((mode, b.arguments.clone()));
            }
        }
        Ok(())
    }

    fn remove(&mut self, b: &Binding) {
        match self {
            Routes::Direct(map) => {
                if let Some(set) = map.get_mut(b.routing_key.as_str()) {
                    count_out(set, &b.destination);
                    if set.is_empty() {
                        map.remove(b.routing_key.as_str());
                    }
                }
            }
            Routes::Fanout(all) => count_out(all, &b.destination),
            Routes::Topic(trie) => {
                trie.remove(&b.routing_key, &b.destination);
            }
            Routes::Headers(by_dest) => {
                if let Some(list) = by_dest.get_mut(&b.destination) {
                    if let Some(i) = list.iter().position(|(_, a)| *a == b.arguments) {
                        list.swap_remove(i);
                    }
                    if list.is_empty() {
                        by_dest.remove(&b.destination);
                    }
                }
            }
        }
    }

    fn matching<'a>(&'a self, msg: &Message, out: &mut Vec<&'a Dest>) {
        match self {
            Routes::Direct(map) => {
                if let Some(set) = map.get(msg.routing_key.as_str()) {
                    out.extend(set.keys());
                }
            }
            Routes::Fanout(all) => out.extend(all.keys()),
            Routes::Topic(trie) => trie.matches_ref(&msg.routing_key, out),
            Routes::Headers(by_dest) => out.extend(
                by_dest
                    .iter()
                    .filter(|(_, list)| {
                        list.iter()
                            .any(|(mode, args)| headers_match(*mode, args, &msg.properties.headers))
                    })
                    .map(|(d, _)| d),
            ),
        }
    }
}

/// The arguments one (source, destination, key) binding slot is bound
/// with. Most bindings have none, which costs no allocation here, and the
/// slot is two words (it sits in a table slot per binding).
#[derive(Debug, Default)]
struct Args {
    /// Bound with empty arguments.
    plain: bool,
    /// Bound with these (non-empty) arguments, each once (rare: boxed,
    /// so a slot without them is two words).
    others: Option<Box<OtherArgs>>,
}

#[derive(Debug, Default)]
struct OtherArgs(Vec<FieldTable>);

impl Args {
    fn others(&self) -> &[FieldTable] {
        self.others.as_deref().map_or(&[], |o| o.0.as_slice())
    }

    fn contains(&self, a: &FieldTable) -> bool {
        if a.is_empty() {
            self.plain
        } else {
            self.others().contains(a)
        }
    }

    fn insert(&mut self, a: &FieldTable) -> bool {
        if self.contains(a) {
            return false;
        }
        if a.is_empty() {
            self.plain = true;
        } else {
            self.others.get_or_insert_default().0.push(a.clone());
        }
        true
    }

    fn remove(&mut self, a: &FieldTable) -> bool {
        if a.is_empty() {
            return std::mem::replace(&mut self.plain, false);
        }
        let Some(i) = self.others().iter().position(|x| x == a) else {
            return false;
        };
        if let Some(others) = self.others.as_mut() {
            others.0.swap_remove(i);
            if others.0.is_empty() {
                self.others = None;
            }
        }
        true
    }

    fn is_empty(&self) -> bool {
        !self.plain && self.others.is_none()
    }

    fn iter(&self) -> impl Iterator<Item = FieldTable> + '_ {
        self.plain
            .then(FieldTable::new)
            .into_iter()
            .chain(self.others().iter().cloned())
    }
}

/// The bindings to one destination, by source and then key, so that
/// adding, finding and removing one is O(1) however many there are (an
/// MQTT subscription storm binds hundreds of thousands to `amq.topic`).
/// Names are shared handles: a binding costs one map slot here, not
/// copies of its names.
#[derive(Debug)]
struct BindingSet<E> {
    slots: HashMap<E, HashMap<Box<str>, Args>>,
    len: usize,
}

impl<E> Default for BindingSet<E> {
    fn default() -> Self {
        BindingSet {
            slots: HashMap::default(),
            len: 0,
        }
    }
}

impl<E: Eq + Hash> BindingSet<E> {
    fn contains<Q: Eq + Hash + ?Sized>(&self, end: &Q, key: &str, args: &FieldTable) -> bool
    where
        E: Borrow<Q>,
    {
        self.slots
            .get(end)
            .and_then(|keys| keys.get(key))
            .is_some_and(|a| a.contains(args))
    }

    /// Adds a binding; false if it was there already.
    fn insert(&mut self, end: E, key: &str, args: &FieldTable) -> bool {
        let keys = self.slots.entry(end).or_default();
        let slot = match keys.get_mut(key) {
            Some(slot) => slot,
            None => keys.entry(key.into()).or_default(),
        };
        let added = slot.insert(args);
        self.len += usize::from(added);
        added
    }

    /// Removes a binding; false if it was not there.
    fn remove<Q: Eq + Hash + ?Sized>(&mut self, end: &Q, key: &str, args: &FieldTable) -> bool
    where
        E: Borrow<Q>,
    {
        let Some(keys) = self.slots.get_mut(end) else {
            return false;
        };
        let Some(slot) = keys.get_mut(key) else {
            return false;
        };
        if !slot.remove(args) {
            return false;
        }
        if slot.is_empty() {
            keys.remove(key);
            if keys.is_empty() {
                self.slots.remove(end);
            }
        }
        self.len -= 1;
        true
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every binding as (other end, key, arguments).
    fn iter(&self) -> impl Iterator<Item = (&E, &Box<str>, FieldTable)> + '_ {
        self.slots.iter().flat_map(|(end, keys)| {
            keys.iter()
                .flat_map(move |(key, args)| args.iter().map(move |a| (end, key, a)))
        })
    }
}

#[derive(Debug)]
struct Exchange {
    def: ExchangeDef,
    /// Its name, shared by the destinations' index of its bindings.
    name: Arc<str>,
    routes: Routes,
    /// The destinations it has bindings to, with how many to each. The
    /// bindings themselves are kept once, by destination
    /// ([`Topology::by_destination`]): an exchange with a million bindings
    /// to a hundred queues holds a hundred entries here.
    dests: Counted<Dest>,
    /// Its bindings in all.
    binding_count: usize,
}

/// Exchange-to-exchange and alternate-exchange hops a message may take
/// from the exchange it was published to; exchanges further away are not
/// visited. Bounds the work of one publish whatever a client declared.
pub const MAX_EXCHANGE_HOPS: usize = 32;

/// The exchanges and bindings of one vhost.
#[derive(Debug, Default)]
pub struct Topology {
    exchanges: HashMap<String, Exchange>,
    /// Every binding, by destination (then source and key), so deleting a
    /// queue finds its bindings without scanning every exchange; an
    /// exchange's are found through its destinations. Its keys are the
    /// shared destination handles every index uses.
    by_destination: HashMap<Dest, BindingSet<Arc<str>>>,
    /// Bindings in all (the `max_bindings` limit counts them).
    binding_total: usize,
}

/// How the stand-in destination of another cluster node's routes is named
/// (`broker/routes.rs`): this, then the node's name. Listings leave such
/// bindings out.
pub const NODE_ROUTE_PREFIX: &str = "amq.junction.node/";

/// Is `name` one only the broker may declare?
pub fn is_reserved_exchange(name: &str) -> bool {
    name.is_empty() || name.starts_with("amq.")
}

impl Topology {
    /// A topology holding the built-in exchanges.
    pub fn with_builtins() -> Topology {
        let mut t = Topology::default();
        for (name, kind) in BUILTIN_EXCHANGES {
            t.insert_exchange(ExchangeDef::new(name, kind));
        }
        t
    }

    fn insert_exchange(&mut self, def: ExchangeDef) {
        let routes = Routes::new(def.kind);
        self.exchanges.insert(
            def.name.clone(),
            Exchange {
                name: Arc::from(def.name.as_str()),
                def,
                routes,
                dests: Counted::default(),
                binding_count: 0,
            },
        );
    }

    pub fn exchange(&self, name: &str) -> Option<&ExchangeDef> {
        self.exchanges.get(name).map(|e| &e.def)
    }

    pub fn exchanges(&self) -> impl Iterator<Item = &ExchangeDef> {
        self.exchanges.values().map(|e| &e.def)
    }

    /// How many exchanges the vhost has (built-ins included).
    pub fn exchange_count(&self) -> usize {
        self.exchanges.len()
    }

    /// Whether exactly this binding exists.
    pub fn has_binding(&self, b: &Binding) -> bool {
        self.by_destination
            .get(&b.destination)
            .is_some_and(|set| set.contains(b.source.as_str(), &b.routing_key, &b.arguments))
    }

    /// How many bindings the vhost has.
    pub fn binding_count(&self) -> usize {
        self.binding_total
    }

    /// Every binding, sorted by source, destination and key (listings).
    pub fn bindings(&self) -> Vec<Binding> {
        let mut all: Vec<Binding> = self
            .by_destination
            .iter()
            .filter(|(dest, _)| {
                !matches!(&***dest, Destination::Queue(q) if q.starts_with(NODE_ROUTE_PREFIX))
            })
            .flat_map(|(dest, set)| {
                set.iter().map(|(source, key, arguments)| Binding {
                    source: source.to_string(),
                    destination: Destination::clone(dest),
                    routing_key: key.to_string(),
                    arguments,
                })
            })
            .collect();
        all.sort_by(|a, b| {
            (&a.source, &a.destination, &a.routing_key).cmp(&(
                &b.source,
                &b.destination,
                &b.routing_key,
            ))
        });
        all
    }

    /// Bindings from exchange `source`, through its destinations.
    fn bindings_from(&self, source: &Exchange) -> Vec<Binding> {
        let mut out = Vec::with_capacity(source.binding_count);
        for dest in source.dests.keys() {
            let Some(keys) = self
                .by_destination
                .get(dest)
                .and_then(|set| set.slots.get(&*source.name))
            else {
                continue;
            };
            for (key, args) in keys {
                out.extend(args.iter().map(|arguments| Binding {
                    source: source.def.name.clone(),
                    destination: Destination::clone(dest),
                    routing_key: key.to_string(),
                    arguments,
                }));
            }
        }
        out
    }

    /// Bindings leading to `dest`.
    pub fn bindings_to(&self, dest: &Destination) -> Vec<Binding> {
        self.by_destination.get(dest).map_or_else(Vec::new, |set| {
            set.iter()
                .map(|(source, key, arguments)| Binding {
                    source: source.to_string(),
                    destination: dest.clone(),
                    routing_key: key.to_string(),
                    arguments,
                })
                .collect()
        })
    }

    /// `exchange.declare`. Returns the change if it created the exchange.
    pub fn declare_exchange(
        &mut self,
        def: ExchangeDef,
        passive: bool,
    ) -> Result<Option<Change>, CoreError> {
        if def.name.is_empty() {
            return Err(CoreError::AccessRefused(
                "operation not permitted on the default exchange".into(),
            ));
        }
        if let Some(existing) = self.exchanges.get(&def.name) {
            if passive {
                return Ok(None);
            }
            return match existing.def.inequivalence(&def) {
                None => Ok(None),
                Some((arg, why)) => Err(CoreError::PreconditionFailed(format!(
                    "inequivalent arg '{arg}' for exchange '{}': {why}",
                    def.name
                ))),
            };
        }
        if passive {
            return Err(CoreError::NotFound(format!("no exchange '{}'", def.name)));
        }
        if is_reserved_exchange(&def.name) {
            return Err(CoreError::AccessRefused(format!(
                "exchange name '{}' contains reserved prefix 'amq.'",
                def.name
            )));
        }
        if let Some(ae) = def.alternate_exchange()
            && ae.is_empty()
        {
            return Err(CoreError::PreconditionFailed(
                "alternate-exchange may not be the default exchange".into(),
            ));
        }
        self.insert_exchange(def.clone());
        Ok(Some(Change::ExchangeAdded(def)))
    }

    /// Restores an exchange read from the store (no checks beyond the name).
    pub fn restore_exchange(&mut self, def: ExchangeDef) {
        if !self.exchanges.contains_key(&def.name) {
            self.insert_exchange(def);
        }
    }

    /// `exchange.delete`: removes the exchange and every binding from or to it.
    pub fn delete_exchange(
        &mut self,
        name: &str,
        if_unused: bool,
    ) -> Result<Vec<Change>, CoreError> {
        if is_reserved_exchange(name) {
            return Err(CoreError::AccessRefused(format!(
                "operation not permitted on built-in exchange '{name}'"
            )));
        }
        let Some(ex) = self.exchanges.get(name) else {
            return Err(CoreError::NotFound(format!("no exchange '{name}'")));
        };
        if if_unused && ex.binding_count > 0 {
            return Err(CoreError::PreconditionFailed(format!(
                "exchange '{name}' in use"
            )));
        }
        let mut changes = Vec::new();
        self.remove_exchange(name, &mut changes);
        Ok(changes)
    }

    /// Removes an exchange and every binding from or to it; auto-delete
    /// exchanges left without bindings go too. A worklist, not recursion:
    /// a chain of auto-delete exchanges of any length unwinds in a loop.
    fn remove_exchange(&mut self, name: &str, changes: &mut Vec<Change>) {
        let mut doomed = vec![name.to_string()];
        while let Some(name) = doomed.pop() {
            let Some(ex) = self.exchanges.get(&name) else {
                continue;
            };
            let from = self.bindings_from(ex);
            let Some(ex) = self.exchanges.remove(&name) else {
                continue;
            };
            self.binding_total -= ex.binding_count;
            for b in from {
                self.unindex(&b);
                changes.push(Change::BindingRemoved(b));
            }
            let dest = Destination::Exchange(name);
            for b in self.bindings_to(&dest) {
                if let Some(emptied) = self.remove_one_binding(&b, changes) {
                    doomed.push(emptied);
                }
            }
            changes.push(Change::ExchangeRemoved(ex.def));
        }
    }

    /// Removes `b` from the index by destination; false if it was not
    /// there.
    fn unindex(&mut self, b: &Binding) -> bool {
        let Some(set) = self.by_destination.get_mut(&b.destination) else {
            return false;
        };
        let removed = set.remove(b.source.as_str(), &b.routing_key, &b.arguments);
        if set.is_empty() {
            self.by_destination.remove(&b.destination);
        }
        removed
    }

    /// Adds a binding. The caller has checked that a queue destination
    /// exists; exchanges are checked here. Binding twice is a no-op.
    pub fn bind(&mut self, b: Binding) -> Result<Option<Change>, CoreError> {
        if b.source.is_empty() || b.destination == Destination::Exchange(String::new()) {
            return Err(CoreError::AccessRefused(
                "operation not permitted on the default exchange".into(),
            ));
        }
        if let Destination::Exchange(d) = &b.destination
            && !self.exchanges.contains_key(d)
        {
            return Err(CoreError::NotFound(format!("no exchange '{d}'")));
        }
        if !self.exchanges.contains_key(&b.source) {
            return Err(CoreError::NotFound(format!("no exchange '{}'", b.source)));
        }
        if self.has_binding(&b) {
            return Ok(None);
        }
        let Some(ex) = self.exchanges.get_mut(&b.source) else {
            return Err(CoreError::NotFound(format!("no exchange '{}'", b.source)));
        };
        // One handle per destination, shared by every index below.
        let dest = match self.by_destination.get_key_value(&b.destination) {
            Some((d, _)) => Arc::clone(d),
            None => Arc::new(b.destination.clone()),
        };
        ex.routes.add(&b, &dest)?;
        count_in(&mut ex.dests, Arc::clone(&dest));
        ex.binding_count += 1;
        let source = Arc::clone(&ex.name);
        self.binding_total += 1;
        self.by_destination
            .entry(dest)
            .or_default()
            .insert(source, &b.routing_key, &b.arguments);
        Ok(Some(Change::BindingAdded(b)))
    }

    /// Removes a binding; unbinding one that does not exist is not an error
    /// (RabbitMQ's behaviour), but a missing source exchange is 404. Removing
    /// an auto-delete exchange's last binding deletes the exchange.
    pub fn unbind(&mut self, b: &Binding) -> Result<Vec<Change>, CoreError> {
        if b.source.is_empty() {
            return Err(CoreError::AccessRefused(
                "operation not permitted on the default exchange".into(),
            ));
        }
        if !self.exchanges.contains_key(&b.source) {
            return Err(CoreError::NotFound(format!("no exchange '{}'", b.source)));
        }
        let mut changes = Vec::new();
        self.remove_binding(b, &mut changes);
        Ok(changes)
    }

    /// Removes a binding, and the auto-delete exchanges that lose their
    /// last binding by it.
    fn remove_binding(&mut self, b: &Binding, changes: &mut Vec<Change>) {
        if let Some(emptied) = self.remove_one_binding(b, changes) {
            self.remove_exchange(&emptied, changes);
        }
    }

    /// Removes one binding; returns its source if that is an auto-delete
    /// exchange now without bindings (for the caller to remove).
    fn remove_one_binding(&mut self, b: &Binding, changes: &mut Vec<Change>) -> Option<String> {
        if !self.exchanges.contains_key(&b.source) || !self.unindex(b) {
            return None;
        }
        let ex = self.exchanges.get_mut(&b.source)?;
        ex.routes.remove(b);
        count_out(&mut ex.dests, &b.destination);
        ex.binding_count -= 1;
        self.binding_total -= 1;
        let now_unused = ex.def.auto_delete && ex.binding_count == 0;
        changes.push(Change::BindingRemoved(b.clone()));
        now_unused.then(|| b.source.clone())
    }

    /// Removes a route's stand-in binding, leaving its exchange even if
    /// auto-delete (a route is not a binding of this node's).
    pub fn unbind_route(&mut self, b: &Binding) {
        let mut changes = Vec::new();
        self.remove_one_binding(b, &mut changes);
    }

    /// Removes every binding to a queue being deleted.
    pub fn queue_deleted(&mut self, queue: &str) -> Vec<Change> {
        let mut changes = Vec::new();
        let dest = Destination::Queue(queue.to_string());
        for b in self.bindings_to(&dest) {
            self.remove_binding(&b, &mut changes);
        }
        changes
    }

    /// Routes `msg` published to `exchange` to queue names, each once.
    /// Follows exchange-to-exchange bindings (each exchange visited once, so
    /// cycles end) and alternate exchanges for what an exchange cannot route.
    /// The default exchange ("") routes to the queue named by the key. The
    /// names are the bindings' own: whether each queue still exists is the
    /// caller's lookup ([`crate::broker`] resolves them in its queue map).
    pub fn route<'a>(
        &'a self,
        exchange: &'a str,
        msg: &'a Message,
    ) -> Result<Vec<&'a str>, CoreError> {
        let mut out: Vec<&'a str> = Vec::new();
        if exchange.is_empty() {
            out.push(&msg.routing_key);
            return Ok(out);
        }
        let Some((first, ex)) = self.exchanges.get_key_value(exchange) else {
            return Err(CoreError::NotFound(format!("no exchange '{exchange}'")));
        };
        if ex.def.internal {
            return Err(CoreError::AccessRefused(format!(
                "cannot publish to internal exchange '{exchange}'"
            )));
        }
        // Breadth first over exchanges, each visited once (so cycles end),
        // at most MAX_EXCHANGE_HOPS away. An exchange that matches nothing
        // itself hands the message to its alternate exchange, if any
        // (RabbitMQ's rule). The visited set is made only when a message
        // goes on to another exchange: most publishes never do.
        let mut visited: Option<HashSet<&str>> = None;
        let mut frontier: Vec<&Exchange> = vec![ex];
        let mut dests: Vec<&Dest> = Vec::new();
        let mut onward: Vec<&str> = Vec::new();
        for hop in 0..=MAX_EXCHANGE_HOPS {
            let mut next = Vec::new();
            for ex in frontier {
                dests.clear();
                onward.clear();
                ex.routes.matching(msg, &mut dests);
                if dests.is_empty() {
                    onward.extend(ex.def.alternate_exchange());
                } else {
                    for &d in &dests {
                        match &**d {
                            Destination::Queue(q) => out.push(q),
                            Destination::Exchange(x) => onward.push(x),
                        }
                    }
                }
                if hop == MAX_EXCHANGE_HOPS {
                    continue;
                }
                for x in &onward {
                    let seen = visited.get_or_insert_with(|| {
                        let mut v = HashSet::default();
                        v.insert(first.as_str());
                        v
                    });
                    if let Some((name, ex)) = self.exchanges.get_key_value(*x)
                        && seen.insert(name.as_str())
                    {
                        next.push(ex);
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            frontier = next;
        }
        crate::topic::dedup_from(&mut out, 0);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::FieldValue;

    fn binding(source: &str, queue: &str, key: &str, args: &[(&str, i32)]) -> Binding {
        Binding {
            source: source.to_string(),
            destination: Destination::Queue(queue.to_string()),
            routing_key: key.to_string(),
            arguments: args
                .iter()
                .map(|(k, v)| (k.to_string(), FieldValue::I32(*v)))
                .collect(),
        }
    }

    #[test]
    fn a_binding_slot_is_small() {
        // One per binding (a million MQTT subscriptions are a million
        // bindings): the key handle and these.
        assert!(std::mem::size_of::<Args>() <= 16);
    }

    #[test]
    fn bindings_differing_only_in_arguments_are_kept_and_removed_one_by_one() {
        let mut t = Topology::with_builtins();
        let plain = binding("amq.topic", "q1", "a.*", &[]);
        let with_x = binding("amq.topic", "q1", "a.*", &[("x", 1)]);
        let with_y = binding("amq.topic", "q1", "a.*", &[("y", 2)]);
        let other = binding("amq.direct", "q1", "k", &[]);
        for b in [&plain, &with_x, &with_y, &other] {
            assert!(t.bind(b.clone()).unwrap().is_some());
        }
        // Binding again is a no-op.
        assert_eq!(t.bind(with_x.clone()).unwrap(), None);
        assert_eq!(t.binding_count(), 4);
        assert!(t.has_binding(&with_y));
        assert!(!t.has_binding(&binding("amq.topic", "q1", "a.*", &[("x", 2)])));
        let dest = Destination::Queue("q1".into());
        assert_eq!(t.bindings_to(&dest).len(), 4);
        let listed = t.bindings();
        for b in [&plain, &with_x, &with_y, &other] {
            assert_eq!(listed.iter().filter(|l| *l == b).count(), 1, "{b:?}");
        }
        // The plain one goes; the others still route and are listed.
        let removed = t.unbind(&plain).unwrap();
        assert_eq!(removed, vec![Change::BindingRemoved(plain.clone())]);
        assert!(t.unbind(&plain).unwrap().is_empty());
        assert!(!t.has_binding(&plain) && t.has_binding(&with_x));
        let msg = Message::new("amq.topic", "a.b", bytes::Bytes::new());
        assert_eq!(t.route("amq.topic", &msg).unwrap(), vec!["q1"]);
        // Deleting the queue takes the rest, from both indexes.
        let changes = t.queue_deleted("q1");
        assert_eq!(changes.len(), 3);
        assert_eq!(t.binding_count(), 0);
        assert!(t.bindings().is_empty() && t.bindings_to(&dest).is_empty());
        assert!(t.route("amq.topic", &msg).unwrap().is_empty());
    }

    #[test]
    fn deleting_an_exchange_takes_its_bindings_both_ways_and_empties_auto_delete_sources() {
        let mut t = Topology::with_builtins();
        let mut src = ExchangeDef::new("src", ExchangeKind::Topic);
        src.auto_delete = true;
        t.declare_exchange(src, false).unwrap();
        t.declare_exchange(ExchangeDef::new("mid", ExchangeKind::Fanout), false)
            .unwrap();
        let to_mid = Binding {
            source: "src".into(),
            destination: Destination::Exchange("mid".into()),
            routing_key: "a.#".into(),
            arguments: FieldTable::new(),
        };
        let from_mid = binding("mid", "q1", "", &[]);
        let from_src = [
            binding("src", "q1", "a.*", &[]),
            binding("src", "q1", "a.*", &[("x", 1)]),
            binding("src", "q2", "b", &[]),
        ];
        for b in from_src.iter().chain([&to_mid, &from_mid]) {
            t.bind(b.clone()).unwrap();
        }
        assert_eq!(t.binding_count(), 5);
        let err = t.delete_exchange("mid", true).unwrap_err();
        assert!(matches!(err, CoreError::PreconditionFailed(_)), "{err:?}");
        // Deleting `mid` removes its own binding and the one to it; `src`
        // keeps three.
        let changes = t.delete_exchange("mid", false).unwrap();
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert!(changes.contains(&Change::BindingRemoved(from_mid.clone())));
        assert!(changes.contains(&Change::BindingRemoved(to_mid.clone())));
        assert_eq!(t.binding_count(), 3);
        assert_eq!(t.bindings().len(), 3);
        // `src` is auto-delete: its last binding going takes it too.
        for b in &from_src[..2] {
            t.unbind(b).unwrap();
        }
        assert!(t.exchange("src").is_some());
        let changes = t.unbind(&from_src[2]).unwrap();
        assert!(matches!(changes.last(), Some(Change::ExchangeRemoved(d)) if d.name == "src"));
        assert_eq!(t.binding_count(), 0);
        assert!(t.bindings().is_empty());
    }
}
