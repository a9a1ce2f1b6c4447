//! One vhost's exchanges and bindings, and the routing function over them.
//!
//! Routing is a pure function of the topology and the message, run in the
//! publisher's task under a read lock (RabbitMQ's model: no router thread).
//! Mutations return the [`Change`]s they made so the broker can persist the
//! durable ones.

use std::hash::Hash;

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

fn count_out<V: Eq + Hash>(set: &mut Counted<V>, v: &V) {
    if let Some(n) = set.get_mut(v) {
        *n -= 1;
        if *n == 0 {
            set.remove(v);
        }
    }
}

/// Per-type routing index of one exchange's bindings.
#[derive(Debug)]
enum Routes {
    Direct(HashMap<String, Counted<Destination>>),
    Fanout(Counted<Destination>),
    Topic(TopicTrie<Destination>),
    /// Headers bindings by destination: routing tests every one anyway,
    /// removal finds its own without a scan of the exchange.
    Headers(HashMap<Destination, Vec<(HeadersMode, FieldTable)>>),
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

    fn add(&mut self, b: &Binding) -> Result<(), CoreError> {
        match self {
            Routes::Direct(map) => count_in(
                map.entry(b.routing_key.clone()).or_default(),
                b.destination.clone(),
            ),
            Routes::Fanout(all) => count_in(all, b.destination.clone()),
            Routes::Topic(trie) => trie.insert(&b.routing_key, b.destination.clone()),
            Routes::Headers(by_dest) => {
                let mode = HeadersMode::from_arguments(&b.arguments)?;
                by_dest
                    .entry(b.destination.clone())
                    .or_default()
                    .push((mode, b.arguments.clone()));
            }
        }
        Ok(())
    }

    fn remove(&mut self, b: &Binding) {
        match self {
            Routes::Direct(map) => {
                if let Some(set) = map.get_mut(&b.routing_key) {
                    count_out(set, &b.destination);
                    if set.is_empty() {
                        map.remove(&b.routing_key);
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

    fn matching<'a>(&'a self, msg: &Message, out: &mut Vec<&'a Destination>) {
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

/// A set of bindings, indexed by (source, destination, key) so that adding,
/// finding and removing one is O(1) however many there are (an MQTT
/// subscription storm binds hundreds of thousands to `amq.topic`).
/// Bindings that differ only in arguments share a slot.
#[derive(Debug, Default)]
struct BindingSet {
    slots: HashMap<(String, Destination, String), Vec<FieldTable>>,
    len: usize,
}

impl BindingSet {
    fn slot_key(b: &Binding) -> (String, Destination, String) {
        (
            b.source.clone(),
            b.destination.clone(),
            b.routing_key.clone(),
        )
    }

    fn contains(&self, b: &Binding) -> bool {
        self.slots
            .get(&Self::slot_key(b))
            .is_some_and(|args| args.contains(&b.arguments))
    }

    /// Adds `b`; false if it was there already.
    fn insert(&mut self, b: &Binding) -> bool {
        let args = self.slots.entry(Self::slot_key(b)).or_default();
        if args.contains(&b.arguments) {
            return false;
        }
        args.push(b.arguments.clone());
        self.len += 1;
        true
    }

    /// Removes `b`; false if it was not there.
    fn remove(&mut self, b: &Binding) -> bool {
        let key = Self::slot_key(b);
        let Some(args) = self.slots.get_mut(&key) else {
            return false;
        };
        let Some(i) = args.iter().position(|a| *a == b.arguments) else {
            return false;
        };
        args.swap_remove(i);
        if args.is_empty() {
            self.slots.remove(&key);
        }
        self.len -= 1;
        true
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn iter(&self) -> impl Iterator<Item = Binding> + '_ {
        self.slots.iter().flat_map(|((source, dest, key), args)| {
            args.iter().map(move |a| Binding {
                source: source.clone(),
                destination: dest.clone(),
                routing_key: key.clone(),
                arguments: a.clone(),
            })
        })
    }
}

#[derive(Debug)]
struct Exchange {
    def: ExchangeDef,
    routes: Routes,
    /// Bindings with this exchange as source.
    bindings: BindingSet,
}

/// Exchange-to-exchange and alternate-exchange hops a message may take
/// from the exchange it was published to; exchanges further away are not
/// visited. Bounds the work of one publish whatever a client declared.
pub const MAX_EXCHANGE_HOPS: usize = 32;

/// The exchanges and bindings of one vhost.
#[derive(Debug, Default)]
pub struct Topology {
    exchanges: HashMap<String, Exchange>,
    /// Bindings by destination, so deleting a queue or exchange finds its
    /// bindings without scanning every exchange.
    by_destination: HashMap<Destination, BindingSet>,
    /// Bindings in all (the `max_bindings` limit counts them).
    binding_total: usize,
}

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
                def,
                routes,
                bindings: BindingSet::default(),
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
        self.exchanges
            .get(&b.source)
            .is_some_and(|ex| ex.bindings.contains(b))
    }

    /// How many bindings the vhost has.
    pub fn binding_count(&self) -> usize {
        self.binding_total
    }

    /// Every binding, sorted by source, destination and key (listings).
    pub fn bindings(&self) -> Vec<Binding> {
        let mut all: Vec<Binding> = self
            .exchanges
            .values()
            .flat_map(|e| e.bindings.iter())
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

    /// Bindings leading to `dest`.
    pub fn bindings_to(&self, dest: &Destination) -> Vec<Binding> {
        self.by_destination
            .get(dest)
            .map_or_else(Vec::new, |set| set.iter().collect())
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
        if if_unused && !ex.bindings.is_empty() {
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
            let Some(ex) = self.exchanges.remove(&name) else {
                continue;
            };
            self.binding_total -= ex.bindings.len;
            for b in ex.bindings.iter() {
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

    fn unindex(&mut self, b: &Binding) {
        if let Some(set) = self.by_destination.get_mut(&b.destination) {
            set.remove(b);
            if set.is_empty() {
                self.by_destination.remove(&b.destination);
            }
        }
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
        let Some(ex) = self.exchanges.get_mut(&b.source) else {
            return Err(CoreError::NotFound(format!("no exchange '{}'", b.source)));
        };
        if ex.bindings.contains(&b) {
            return Ok(None);
        }
        ex.routes.add(&b)?;
        ex.bindings.insert(&b);
        self.binding_total += 1;
        self.by_destination
            .entry(b.destination.clone())
            .or_default()
            .insert(&b);
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
        let ex = self.exchanges.get_mut(&b.source)?;
        if !ex.bindings.remove(b) {
            return None;
        }
        ex.routes.remove(b);
        self.binding_total -= 1;
        let now_unused = ex.def.auto_delete && ex.bindings.is_empty();
        self.unindex(b);
        changes.push(Change::BindingRemoved(b.clone()));
        now_unused.then(|| b.source.clone())
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
    /// The default exchange ("") routes to the queue named by the key, if
    /// `queue_exists` says it exists.
    pub fn route<'a>(
        &'a self,
        exchange: &'a str,
        msg: &'a Message,
        queue_exists: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<&'a str>, CoreError> {
        let mut out: Vec<&'a str> = Vec::new();
        if exchange.is_empty() {
            if queue_exists(&msg.routing_key) {
                out.push(&msg.routing_key);
            }
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
        let mut dests: Vec<&Destination> = Vec::new();
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
                    for d in &dests {
                        match d {
                            Destination::Queue(q) => {
                                if queue_exists(q) {
                                    out.push(q);
                                }
                            }
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
