//! One connection's STOMP rules without I/O: version and heart-beat
//! negotiation, acknowledgement ids (cumulative `client` and per-message
//! `client-individual` acks) and transactions. Unit tested without sockets.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::codec::Version;

/// The version both sides speak: the highest of the client's
/// `accept-version` list that we know; 1.0 when the header is absent
/// ("STOMP 1.2 Protocol Negotiation"). None: nothing in common.
pub fn negotiate_version(accept: Option<&str>) -> Option<Version> {
    let Some(list) = accept else {
        return Some(Version::V1_0);
    };
    list.split(',')
        .filter_map(|v| Version::parse(v.trim()))
        .max()
}

/// Heart-beat intervals agreed with a client: how often we send, and how
/// often it promised to send (zero: none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartBeat {
    pub send: Duration,
    pub receive: Duration,
}

impl HeartBeat {
    /// From the client's `heart-beat: cx,cy` and the smallest interval we
    /// send or check at (`floor`; zero turns heart-beating off): we send
    /// every max(cy, floor) when the client wants beats, and expect one
    /// every max(cx, floor) when it offers them ("Heart-beating").
    pub fn negotiate(header: Option<&str>, floor: Duration) -> Result<HeartBeat, String> {
        let Some(h) = header else {
            return Ok(HeartBeat {
                send: Duration::ZERO,
                receive: Duration::ZERO,
            });
        };
        let bad = || format!("invalid heart-beat header '{h}'");
        let (cx, cy) = h.split_once(',').ok_or_else(bad)?;
        let cx: u64 = cx.trim().parse().map_err(|_| bad())?;
        let cy: u64 = cy.trim().parse().map_err(|_| bad())?;
        let pick = |client: u64| {
            if client == 0 || floor.is_zero() {
                Duration::ZERO
            } else {
                Duration::from_millis(client).max(floor)
            }
        };
        Ok(HeartBeat {
            send: pick(cy),
            receive: pick(cx),
        })
    }

    /// The CONNECTED `heart-beat` value: what we send, what we expect.
    pub fn header(&self) -> String {
        format!("{},{}", self.send.as_millis(), self.receive.as_millis())
    }

    /// How long a client may stay silent: its promise plus a grace of half
    /// of it (at least a second) for the network.
    pub fn receive_deadline(&self) -> Option<Duration> {
        (!self.receive.is_zero())
            .then(|| self.receive + (self.receive / 2).max(Duration::from_secs(1)))
    }
}

/// A subscription's `ack` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckMode {
    /// Settled when sent.
    Auto,
    /// ACK of one message acknowledges every earlier one of the subscription.
    Client,
    /// ACK acknowledges one message.
    ClientIndividual,
}

impl AckMode {
    pub fn parse(v: Option<&str>) -> Result<AckMode, String> {
        match v {
            None | Some("auto") => Ok(AckMode::Auto),
            Some("client") => Ok(AckMode::Client),
            Some("client-individual") => Ok(AckMode::ClientIndividual),
            Some(other) => Err(format!("invalid ack mode '{other}'")),
        }
    }
}

/// Deliveries awaiting ACK or NACK, by the id the client acks with (the
/// `message-id` of 1.0/1.1, the `ack` header of 1.2: the same number),
/// kept per subscription in id order, so a cumulative ACK takes its run
/// of the subscription's deliveries without looking at any other's.
#[derive(Debug)]
pub struct Acks<T> {
    next: u64,
    /// id → its subscription.
    owner: HashMap<u64, u64>,
    subs: HashMap<u64, SubAcks<T>>,
}

#[derive(Debug)]
struct SubAcks<T> {
    /// `client` mode: an ACK settles every earlier delivery too.
    cumulative: bool,
    pending: BTreeMap<u64, T>,
}

impl<T> Default for Acks<T> {
    fn default() -> Self {
        Acks {
            next: 1,
            owner: HashMap::new(),
            subs: HashMap::new(),
        }
    }
}

impl<T> Acks<T> {
    /// A fresh id for a delivery that needs no ack.
    pub fn next_id(&mut self) -> u64 {
        let id = self.next;
        self.next += 1;
        id
    }

    /// Records a delivery of subscription `sub` (acked cumulatively when
    /// `cumulative`); returns its ack id.
    pub fn track(&mut self, sub: u64, cumulative: bool, item: T) -> u64 {
        let id = self.next_id();
        self.owner.insert(id, sub);
        self.subs
            .entry(sub)
            .or_insert_with(|| SubAcks {
                cumulative,
                pending: BTreeMap::new(),
            })
            .pending
            .insert(id, item);
        id
    }

    /// Takes what an ACK/NACK of `id` settles: in a cumulative
    /// subscription every outstanding delivery up to `id`, oldest first;
    /// else that one. Empty when `id` is unknown (already settled, or
    /// never sent).
    pub fn take(&mut self, id: u64) -> Vec<T> {
        let Some(sub) = self.owner.get(&id).copied() else {
            return Vec::new();
        };
        let Some(acks) = self.subs.get_mut(&sub) else {
            return Vec::new();
        };
        let taken: Vec<(u64, T)> = if acks.cumulative {
            let rest = acks.pending.split_off(&(id + 1));
            std::mem::replace(&mut acks.pending, rest)
                .into_iter()
                .collect()
        } else {
            acks.pending
                .remove(&id)
                .map(|t| (id, t))
                .into_iter()
                .collect()
        };
        if acks.pending.is_empty() {
            self.subs.remove(&sub);
        }
        taken
            .into_iter()
            .map(|(i, t)| {
                self.owner.remove(&i);
                t
            })
            .collect()
    }

    /// The subscription a pending id belongs to.
    pub fn subscription_of(&self, id: u64) -> Option<u64> {
        self.owner.get(&id).copied()
    }

    /// Forgets every pending delivery of `sub` (its consumer is gone and
    /// they went back to the queue).
    pub fn forget(&mut self, sub: u64) {
        if let Some(acks) = self.subs.remove(&sub) {
            for id in acks.pending.keys() {
                self.owner.remove(id);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.owner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.owner.is_empty()
    }
}

/// Open transactions: what each will do at COMMIT, in order.
#[derive(Debug)]
pub struct Transactions<Op> {
    open: HashMap<String, (Vec<Op>, u64)>,
    max_open: usize,
    max_ops: usize,
    max_bytes: u64,
}

impl<Op> Transactions<Op> {
    pub fn new(max_open: usize, max_ops: usize, max_bytes: u64) -> Self {
        Transactions {
            open: HashMap::new(),
            max_open,
            max_ops,
            max_bytes,
        }
    }

    pub fn begin(&mut self, tx: &str) -> Result<(), String> {
        if self.open.contains_key(tx) {
            return Err(format!("transaction '{tx}' is already open"));
        }
        if self.open.len() >= self.max_open {
            return Err(format!(
                "too many open transactions (limit {})",
                self.max_open
            ));
        }
        self.open.insert(tx.to_string(), (Vec::new(), 0));
        Ok(())
    }

    /// Adds an operation of `bytes` body bytes to `tx`.
    pub fn push(&mut self, tx: &str, op: Op, bytes: u64) -> Result<(), String> {
        let (max_ops, max_bytes) = (self.max_ops, self.max_bytes);
        let (ops, held) = self
            .open
            .get_mut(tx)
            .ok_or_else(|| format!("no transaction '{tx}' is open"))?;
        if ops.len() >= max_ops || *held + bytes > max_bytes {
            return Err(format!(
                "transaction '{tx}' is too large (limits: {max_ops} frames, {max_bytes} bytes)"
            ));
        }
        ops.push(op);
        *held += bytes;
        Ok(())
    }

    /// Ends `tx`, returning its operations (COMMIT runs them; ABORT drops them).
    pub fn end(&mut self, tx: &str) -> Result<Vec<Op>, String> {
        self.open
            .remove(tx)
            .map(|(ops, _)| ops)
            .ok_or_else(|| format!("no transaction '{tx}' is open"))
    }

    pub fn is_open(&self, tx: &str) -> bool {
        self.open.contains_key(tx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_common_version_wins_and_none_means_1_0() {
        assert_eq!(negotiate_version(None), Some(Version::V1_0));
        assert_eq!(negotiate_version(Some("1.0,1.1,1.2")), Some(Version::V1_2));
        assert_eq!(negotiate_version(Some("1.1, 1.0")), Some(Version::V1_1));
        assert_eq!(negotiate_version(Some("2.0,1.1")), Some(Version::V1_1));
        assert_eq!(negotiate_version(Some("2.0")), None);
        assert_eq!(negotiate_version(Some("")), None);
    }

    #[test]
    fn heart_beats_take_the_larger_of_promise_and_floor() {
        let s = Duration::from_secs(1);
        let hb = HeartBeat::negotiate(Some("4000,500"), s).unwrap();
        assert_eq!(hb.receive, Duration::from_millis(4000));
        assert_eq!(hb.send, Duration::from_millis(1000));
        assert_eq!(hb.header(), "1000,4000");
        assert_eq!(hb.receive_deadline(), Some(Duration::from_millis(6000)));
        let none = HeartBeat::negotiate(Some("0,0"), s).unwrap();
        assert_eq!(none.header(), "0,0");
        assert_eq!(none.receive_deadline(), None);
        assert_eq!(HeartBeat::negotiate(None, s).unwrap(), none);
        assert!(HeartBeat::negotiate(Some("10"), s).is_err());
        assert!(HeartBeat::negotiate(Some("a,b"), s).is_err());
        let off = HeartBeat::negotiate(Some("100,100"), Duration::ZERO).unwrap();
        assert_eq!(off.header(), "0,0");
    }

    #[test]
    fn ack_modes_parse() {
        assert_eq!(AckMode::parse(None), Ok(AckMode::Auto));
        assert_eq!(AckMode::parse(Some("client")), Ok(AckMode::Client));
        assert_eq!(
            AckMode::parse(Some("client-individual")),
            Ok(AckMode::ClientIndividual)
        );
        assert!(AckMode::parse(Some("Client")).is_err());
    }

    #[test]
    fn client_acks_are_cumulative_per_subscription() {
        let mut acks = Acks::default();
        let a1 = acks.track(1, true, "a1");
        let b1 = acks.track(2, true, "b1");
        let a2 = acks.track(1, true, "a2");
        let a3 = acks.track(1, true, "a3");
        assert_eq!(acks.take(a2), vec!["a1", "a2"]);
        assert_eq!(acks.take(a1), Vec::<&str>::new(), "already settled");
        assert_eq!(acks.subscription_of(b1), Some(2));
        assert_eq!(acks.take(a3), vec!["a3"]);
        assert_eq!(acks.take(b1), vec!["b1"]);
        assert!(acks.is_empty());
    }

    #[test]
    fn individual_acks_take_one_and_forget_drops_a_subscription() {
        let mut acks = Acks::default();
        let x = acks.track(1, false, 10);
        let y = acks.track(1, false, 20);
        acks.track(2, false, 30);
        assert_eq!(acks.take(y), vec![20]);
        acks.forget(1);
        assert_eq!(acks.take(x), Vec::<i32>::new());
        assert_eq!(acks.subscription_of(x), None);
        assert_eq!(acks.len(), 1);
        assert_ne!(acks.next_id(), x);
    }

    #[test]
    fn transactions_collect_in_order_within_limits() {
        let mut tx: Transactions<u32> = Transactions::new(2, 3, 100);
        tx.begin("t1").unwrap();
        assert!(tx.begin("t1").is_err());
        tx.begin("t2").unwrap();
        assert!(tx.begin("t3").is_err(), "only two may be open");
        tx.push("t1", 1, 10).unwrap();
        tx.push("t1", 2, 10).unwrap();
        assert!(tx.push("t1", 3, 90).is_err(), "bytes limit");
        tx.push("t1", 3, 0).unwrap();
        assert!(tx.push("t1", 4, 0).is_err(), "frame limit");
        assert!(tx.push("nope", 1, 0).is_err());
        assert_eq!(tx.end("t1").unwrap(), vec![1, 2, 3]);
        assert!(!tx.is_open("t1"));
        assert!(tx.end("t1").is_err());
        assert_eq!(tx.end("t2").unwrap(), Vec::<u32>::new());
    }
}
