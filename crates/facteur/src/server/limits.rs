//! The per-source connection cap. A source is an IPv4 address, or an IPv6 /64: one host or
//! one customer's link gets a whole /64 and can pick any address in it, so counting IPv6
//! addresses one by one would let a single host take every slot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Counts connections per source address and refuses past the cap.
pub struct PerIpLimiter {
    cap: usize,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// Held for the life of a connection; gives its slot back on drop.
pub struct IpGuard {
    ip: IpAddr,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerIpLimiter {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            counts: Arc::default(),
        }
    }

    /// A slot for `ip`, or None if its source already has `cap` connections.
    pub fn try_acquire(&self, ip: IpAddr) -> Option<IpGuard> {
        // IPv4-mapped IPv6 addresses count as the IPv4 address they are; IPv6 per /64.
        let ip = facteur_auth::penalty::source_block(ip);
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(IpGuard {
            ip,
            counts: self.counts.clone(),
        })
    }
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_ip_and_releases() {
        let l = PerIpLimiter::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let g1 = l.try_acquire(a).unwrap();
        let _g2 = l.try_acquire(mapped).unwrap();
        assert!(l.try_acquire(a).is_none());
        assert!(l.try_acquire(b).is_some());
        drop(g1);
        assert!(l.try_acquire(a).is_some());
    }

    #[test]
    fn ipv6_counts_per_64() {
        let l = PerIpLimiter::new(2);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let g1 = l.try_acquire(ip("2001:db8:1:2::1")).unwrap();
        let _g2 = l
            .try_acquire(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))
            .unwrap();
        // A third address of the same /64 is the same source.
        assert!(l.try_acquire(ip("2001:db8:1:2:abcd::7")).is_none());
        // The next /64 is another source.
        assert!(l.try_acquire(ip("2001:db8:1:3::1")).is_some());
        drop(g1);
        assert!(l.try_acquire(ip("2001:db8:1:2:abcd::7")).is_some());
    }
}
