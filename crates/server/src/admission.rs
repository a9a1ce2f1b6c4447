//! Admission at accept: caps on open connections in total and per source
//! address, checked before a connection gets a task, a buffer or a
//! handshake. A refused peer's socket is closed at once (as Mosquitto's
//! `max_connections` does): before the protocol header nothing else can
//! be said to it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// Counts open connections; shared by every listener.
#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    max_per_ip: usize,
    /// Open connections per source address (the total is their sum).
    open: Mutex<OpenCounts>,
    /// Connections refused by a cap since start (`/metrics`).
    refused: AtomicU64,
}

#[derive(Debug, Default)]
struct OpenCounts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    /// `0` for either cap means no cap.
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Admission> {
        Arc::new(Admission {
            max_total,
            max_per_ip,
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
        let a = Admission::new(3, 2);
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
    fn v4_mapped_v6_counts_as_its_v4_address() {
        let a = Admission::new(0, 1);
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let _x = a.admit(v4).unwrap();
        assert!(a.admit(mapped).is_none());
    }
}
