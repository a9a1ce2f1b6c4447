//! One vhost's exchanges and bindings, and the routing function over them.
//!
//! Routing is a pure function of the topology and the message, run in the
//! publisher's task under a read lock (RabbitMQ's model: no router thread).
//! Mutations return the [`Change`]s they made so the broker can persist the
//! durable ones.

use std::collections::{HashMap, HashSet};

use crate::error::CoreError;
use crate::exchange::{
    Binding, Destination, ExchangeDef, ExchangeKind, HeadersMode, headers_match,
};
use crate::message::Message;
use crate::topic::TopicTrie;
use crate::value::FieldTable;

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

/// Per-type routing index of one exchange's bindings.
#[derive(Debug)]
enum Routes {
    Direct(HashMap<String, Vec<Destination>>),
    Fanout(Vec<Destination>),
    Topic(TopicTrie<Destination>),
    Headers(Vec<(HeadersMode, FieldTable, Destination)>),
}

impl Routes {
    fn new(kind: ExchangeKind) -> Routes {
        match kind {
            ExchangeKind::Direct => Routes::Direct(HashMap::new()),
            ExchangeKind::Fanout => Routes::Fanout(Vec::new()),
            ExchangeKind::Topic => Routes::Topic(TopicTrie::default()),
            ExchangeKind::Headers => Routes::Headers(Vec::new()),
        }
    }

    fn add(&mut self, b: &Binding) -> Result<(), CoreError> {
        match self {
            Routes::Direct(map) => map
                .entry(b.routing_key.clone())
                .or_default()
                .push(b.destination.clone()),
            Routes::Fanout(all) => all.push(b.destination.clone()),
            Routes::Topic(trie) => trie.insert(&b.routing_key, b.destination.clone()),
            Routes::Headers(list) => {
                let mode = HeadersMode::from_arguments(&b.arguments)?;
                list.push((mode, b.arguments.clone(), b.destination.clone()));
            }
        }
        Ok(())
    }

    fn remove(&mut self, b: &Binding) {
        fn remove_one(v: &mut Vec<Destination>, d: &Destination) {
            if let Some(i) = v.iter().position(|x| x == d) {
                v.remove(i);
            }
        }
        match self {
            Routes::Direct(map) => {
                if let Some(v) = map.get_mut(&b.routing_key) {
                    remove_one(v, &b.destination);
                    if v.is_empty() {
                        map.remove(&b.routing_key);
                    }
                }
            }
            Routes::Fanout(all) => remove_one(all, &b.destination),
            Routes::Topic(trie) => {
                trie.remove(&b.routing_key, &b.destination);
            }
            Routes::Headers(list) => {
                if let Some(i) = list
                    .iter()
                    .position(|(_, a, d)| *d == b.destination && *a == b.arguments)
                {
                    list.remove(i);
                }
            }
        }
    }

    fn matching(&self, msg: &Message, out: &mut Vec<Destination>) {
        match self {
            Routes::Direct(map) => {
                if let Some(v) = map.get(&msg.routing_key) {
                    out.extend(v.iter().cloned());
                }
            }
            Routes::Fanout(all) => out.extend(all.iter().cloned()),
            Routes::Topic(trie) => trie.matches(&msg.routing_key, out),
            Routes::Headers(list) => out.extend(
                list.iter()
                    .filter(|(mode, args, _)| headers_match(*mode, args, &msg.properties.headers))
                    .map(|(_, _, d)| d.clone()),
            ),
        }
    }
}

#[derive(Debug)]
struct Exchange {
    def: ExchangeDef,
    routes: Routes,
    /// Bindings with this exchange as source, in creation order.
    bindings: Vec<Binding>,
}

/// The exchanges and bindings of one vhost.
#[derive(Debug, Default)]
pub struct Topology {
    exchanges: HashMap<String, Exchange>,
    /// Bindings by destination, so deleting a queue or exchange finds its
    /// bindings without scanning every exchange.
    by_destination: HashMap<Destination, Vec<Binding>>,
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
                bindings: Vec::new(),
            },
        );
    }

    pub fn exchange(&self, name: &str) -> Option<&ExchangeDef> {
        self.exchanges.get(name).map(|e| &e.def)
    }

    pub fn exchanges(&self) -> impl Iterator<Item = &ExchangeDef> {
        self.exchanges.values().map(|e| &e.def)
    }

    pub fn bindings(&self) -> impl Iterator<Item = &Binding> {
        self.exchanges.values().flat_map(|e| e.bindings.iter())
    }

    /// Bindings leading to `dest`.
    pub fn bindings_to(&self, dest: &Destination) -> &[Binding] {
        self.by_destination.get(dest).map_or(&[], Vec::as_slice)
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
            if passive || existing.def.equivalent(&def) {
                return Ok(None);
            }
            return Err(CoreError::PreconditionFailed(format!(
                "inequivalent arg for exchange '{}': declared as {} durable={} auto_delete={} internal={}",
                def.name,
                existing.def.kind,
                existing.def.durable,
                existing.def.auto_delete,
                existing.def.internal
            )));
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

    fn remove_exchange(&mut self, name: &str, changes: &mut Vec<Change>) {
        let Some(ex) = self.exchanges.remove(name) else {
            return;
        };
        for b in ex.bindings {
            self.unindex(&b);
            changes.push(Change::BindingRemoved(b));
        }
        let dest = Destination::Exchange(name.to_string());
        for b in self.bindings_to(&dest).to_vec() {
            self.remove_binding(&b, changes);
        }
        changes.push(Change::ExchangeRemoved(ex.def));
    }

    fn unindex(&mut self, b: &Binding) {
        if let Some(v) = self.by_destination.get_mut(&b.destination) {
            if let Some(i) = v.iter().position(|x| x == b) {
                v.remove(i);
            }
            if v.is_empty() {
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
        ex.bindings.push(b.clone());
        self.by_destination
            .entry(b.destination.clone())
            .or_default()
            .push(b.clone());
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

    fn remove_binding(&mut self, b: &Binding, changes: &mut Vec<Change>) {
        let Some(ex) = self.exchanges.get_mut(&b.source) else {
            return;
        };
        let Some(i) = ex.bindings.iter().position(|x| x == b) else {
            return;
        };
        ex.bindings.remove(i);
        ex.routes.remove(b);
        let now_unused = ex.def.auto_delete && ex.bindings.is_empty();
        self.unindex(b);
        changes.push(Change::BindingRemoved(b.clone()));
        if now_unused {
            let name = b.source.clone();
            self.remove_exchange(&name, changes);
        }
    }

    /// Removes every binding to a queue being deleted.
    pub fn queue_deleted(&mut self, queue: &str) -> Vec<Change> {
        let mut changes = Vec::new();
        let dest = Destination::Queue(queue.to_string());
        for b in self.bindings_to(&dest).to_vec() {
            self.remove_binding(&b, &mut changes);
        }
        changes
    }

    /// Routes `msg` published to `exchange` to queue names, each once.
    /// Follows exchange-to-exchange bindings (each exchange visited once, so
    /// cycles end) and alternate exchanges for what an exchange cannot route.
    /// The default exchange ("") routes to the queue named by the key, if
    /// `queue_exists` says it exists.
    pub fn route(
        &self,
        exchange: &str,
        msg: &Message,
        queue_exists: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<String>, CoreError> {
        let mut out = Vec::new();
        if exchange.is_empty() {
            if queue_exists(&msg.routing_key) {
                out.push(msg.routing_key.clone());
            }
            return Ok(out);
        }
        let Some(ex) = self.exchanges.get(exchange) else {
            return Err(CoreError::NotFound(format!("no exchange '{exchange}'")));
        };
        if ex.def.internal {
            return Err(CoreError::AccessRefused(format!(
                "cannot publish to internal exchange '{exchange}'"
            )));
        }
        let mut visited = HashSet::new();
        self.route_into(exchange, msg, queue_exists, &mut visited, &mut out);
        let mut seen = HashSet::new();
        out.retain(|q| seen.insert(q.clone()));
        Ok(out)
    }

    fn route_into(
        &self,
        exchange: &str,
        msg: &Message,
        queue_exists: &dyn Fn(&str) -> bool,
        visited: &mut HashSet<String>,
        out: &mut Vec<String>,
    ) {
        if !visited.insert(exchange.to_string()) {
            return;
        }
        let Some(ex) = self.exchanges.get(exchange) else {
            return;
        };
        let before = out.len();
        let mut dests = Vec::new();
        ex.routes.matching(msg, &mut dests);
        for d in dests {
            match d {
                Destination::Queue(q) => {
                    if queue_exists(&q) {
                        out.push(q);
                    }
                }
                Destination::Exchange(x) => self.route_into(&x, msg, queue_exists, visited, out),
            }
        }
        if out.len() == before
            && let Some(ae) = ex.def.alternate_exchange()
        {
            self.route_into(ae, msg, queue_exists, visited, out);
        }
    }
}
