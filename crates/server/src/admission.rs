//! Admission at accept: caps on open connections in total and per source
//! address, and on new connections per second per source address,
//! checked before a connection gets a task, a buffer or a handshake. A refused peer's socket is closed at once (as Mosquitto's
//! `max_connections` does): before the protocol header nothing else can
//! be said to it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

/// Counts open connections; shared by every listener.
#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    max_per_ip: usize,
    /// New connections per second from one address (0: no cap): a token
    /// bucket per address holding at most one second's worth.
    rate_per_ip: u32,
    /// Open connections per source address (the total is their sum).
    open: Mutex<OpenCounts>,
    /// Connections refused by a cap since start (`/metrics`).
    refused: AtomicU64,
}

#[derive(Debug, Default)]
struct OpenCounts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    /// Connection-rate buckets by address: (tokens left, last refill).
    /// Kept after the address's connections close (else closing would
    /// refill it), swept of full buckets as the map grows.
    buckets: HashMap<IpAddr, (f64, Instant)>,
    /// Bucket count after the last sweep; the next sweep is at twice it.
    swept_at: usize,
}

impl OpenCounts {
    /// Takes a token from `ip`'s bucket; false when it has none.
    fn take_token(&mut self, ip: IpAddr, rate: u32, now: Instant) -> bool {
        let cap = f64::from(rate);
        let (tokens, last) = self.buckets.entry(ip).or_insert((cap, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * cap).min(cap);
        *last = now;
        let ok = *tokens >= 1.0;
        if ok {
            *tokens -= 1.0;
        }
        if self.buckets.len() > 1024 && self.buckets.len() >= 2 * self.swept_at {
            // A bucket that has refilled tells nothing more: drop it.
            self.buckets
                .retain(|_, (t, l)| *t + now.duration_since(*l).as_secs_f64() * cap < cap);
            self.swept_at = self.buckets.len();
        }
        ok
    }
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    /// `0` for any cap means no cap.
    pub fn new(max_total: usize, max_per_ip: usize, rate_per_ip: u32) -> Arc<Admission> {
        Arc::new(Admission {
            max_total,
            max_per_ip,
            rate_per_ip,
            open: Mutex::new(OpenCounts::default()),
            refused: AtomicU64::new(0),
        })
    }

    /// Admits a connection from `ip`, or None past a cap.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        let ip = ip.to_canonical();
        let mut open = self.open.lock();
        let from_ip = open.per_ip.get(&ip).copied().unwrap_or(0);
        if (self.max_total > 0 && open.total >= self.max_total)
            || (self.max_per_ip > 0 && from_ip >= self.max_per_ip)
            || (self.rate_per_ip > 0 && !open.take_token(ip, self.rate_per_ip, Instant::now()))
        {
            drop(open);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        open.total += 1;
        open.per_ip.insert(ip, from_ip + 1);
        Some(Admitted {
            admission: Arc::clone(self),
            ip,
        })
    }

    /// Connections refused by a cap since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.admission.open.lock();
        open.total -= 1;
        if let Some(n) = open.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_total_and_per_address_and_frees_on_drop() {
        let a = Admission::new(3, 2, 0);
        let one: IpAddr = "10.0.0.1".parse().unwrap();
        let two: IpAddr = "10.0.0.2".parse().unwrap();
        let x1 = a.admit(one).unwrap();
        let _x2 = a.admit(one).unwrap();
        assert!(a.admit(one).is_none(), "third from one address");
        let _y1 = a.admit(two).unwrap();
        assert!(a.admit(two).is_none(), "fourth in total");
        assert_eq!(a.refused(), 2);
        drop(x1);
        assert!(a.admit(one).is_some(), "a place freed by a close");
    }

    #[test]
    fn new_connections_per_second_per_address() {
        let a = Admission::new(0, 0, 5);
        let one: IpAddr = "10.0.0.1".parse().unwrap();
        let two: IpAddr = "10.0.0.2".parse().unwrap();
        // A second's worth at once, then refused, though all are closed.
        for _ in 0..5 {
            drop(a.admit(one).expect("within the rate"));
        }
        assert!(a.admit(one).is_none(), "sixth in the same second");
        assert!(a.admit(two).is_some(), "another address has its own");
        // The bucket refills at the rate.
        let mut open = a.open.lock();
        let t0 = Instant::now();
        assert!(!open.take_token(one, 5, t0));
        assert!(open.take_token(one, 5, t0 + std::time::Duration::from_millis(250)));
        assert!(!open.take_token(one, 5, t0 + std::time::Duration::from_millis(260)));
    }

    #[test]
    fn full_buckets_are_swept_as_the_map_grows() {
        let a = Admission::new(0, 0, 100);
        let mut open = a.open.lock();
        let t0 = Instant::now();
        for i in 0..2000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(open.take_token(ip, 100, t0));
        }
        // Seconds later those buckets have refilled: the sweep when the map
        // has doubled since the last one drops them.
        let later = t0 + std::time::Duration::from_secs(2);
        for i in 0..100u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            assert!(open.take_token(ip, 100, later));
        }
        assert!(open.buckets.len() <= 100, "{}", open.buckets.len());
    }

    #[test]
    fn v4_mapped_v6_counts_as_its_v4_address() {
        let a = Admission::new(0, 1, 0);
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let _x = a.admit(v4).unwrap();
        assert!(a.admit(mapped).is_none());
    }
}
