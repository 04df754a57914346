//! Penalties for failed logins: an exponential delay per source and per user name.
//!
//! A failed login is answered after `base * 2^(n-1)` (capped), where `n` is the larger of the
//! failure counts of the source address and of the user name tried. Only answers to failures
//! are delayed: a user who logs in correctly is never slowed down by an attacker guessing their
//! password, and one attacker's penalty never touches other sessions. Failures are forgotten
//! after `forget_after` without a new one. IPv6 sources count per /64, the block one host gets.
//!
//! User names are not kept: the table holds a keyed hash of each (HMAC-SHA-256 under a key
//! drawn at random for the process, truncated to 128 bits), so an entry has the same small
//! size whatever name a client sent, and the table's memory is bounded by its entry cap. The
//! key is secret so that nobody can pick names whose hashes collide with a victim's.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use facteur_proto::sasl::hmac_sha256;

/// Entries kept at most: past this, forgotten entries are swept, then the oldest dropped, so an
/// attacker rotating addresses or names cannot grow the table without bound.
const MAX_ENTRIES: usize = 100_000;

/// What failures are counted against. `Copy`: it owns no memory beyond its own few bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Source(IpAddr),
    /// The keyed hash of a user name (see the module documentation).
    User([u8; USER_KEY_LEN]),
}

/// Bytes kept of the keyed hash of a user name: 128 bits, no collision in practice.
pub(crate) const USER_KEY_LEN: usize = 16;

/// The HMAC key for user names: one SHA-256 block.
pub(crate) const HASH_KEY_LEN: usize = 64;

#[derive(Clone, Copy, Debug)]
struct Entry {
    failures: u32,
    last: Instant,
}

pub struct Penalties {
    base: Duration,
    cap: Duration,
    forget_after: Duration,
    /// Random for each process: the key of the user names' hashes.
    hash_key: [u8; HASH_KEY_LEN],
    table: Mutex<HashMap<Key, Entry>>,
}

impl Penalties {
    pub fn new(base: Duration, cap: Duration, forget_after: Duration) -> Self {
        Self {
            base,
            cap,
            forget_after,
            hash_key: random_hash_key(),
            table: Mutex::new(HashMap::new()),
        }
    }

    /// The table's key for a user name.
    fn user_key(&self, user: &str) -> Key {
        Key::User(user_hash(&self.hash_key, user))
    }

    /// Record a failed login and return how long to wait before answering it.
    pub fn failure(&self, source: IpAddr, user: Option<&str>) -> Duration {
        self.failure_at(source, user, Instant::now())
    }

    fn failure_at(&self, source: IpAddr, user: Option<&str>, now: Instant) -> Duration {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if table.len() >= MAX_ENTRIES {
            self.sweep(&mut table, now);
        }
        let mut worst = 0;
        let keys = std::iter::once(Key::Source(source_block(source)))
            .chain(user.map(|u| self.user_key(u)));
        for key in keys {
            let e = table.entry(key).or_insert(Entry {
                failures: 0,
                last: now,
            });
            if now.saturating_duration_since(e.last) > self.forget_after {
                e.failures = 0;
            }
            e.failures = e.failures.saturating_add(1);
            e.last = now;
            worst = worst.max(e.failures);
        }
        self.delay_for(worst)
    }

    /// A successful login forgets the failures of that user name (not of the source).
    pub fn success(&self, user: &str) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table.remove(&self.user_key(user));
    }

    fn delay_for(&self, failures: u32) -> Duration {
        delay_for(self.base, self.cap, failures)
    }

    fn sweep(&self, table: &mut HashMap<Key, Entry>, now: Instant) {
        table.retain(|_, e| now.saturating_duration_since(e.last) <= self.forget_after);
        if table.len() >= MAX_ENTRIES {
            // Still full of live entries: drop the older half.
            let mut lasts: Vec<Instant> = table.values().map(|e| e.last).collect();
            lasts.sort_unstable();
            if let Some(&median) = lasts.get(lasts.len() / 2) {
                table.retain(|_, e| e.last > median);
            }
        }
    }
}

/// The delay after the `failures`-th failure in a row: `base * 2^(failures-1)`, at most `cap`.
pub(crate) fn delay_for(base: Duration, cap: Duration, failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32.checked_shl(failures - 1).unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(cap)
}

/// The keyed hash of a user name that failures are counted against (HMAC-SHA-256 under
/// `hash_key`, truncated to 128 bits).
pub(crate) fn user_hash(hash_key: &[u8], user: &str) -> [u8; USER_KEY_LEN] {
    let tag = hmac_sha256(hash_key, &[user.as_bytes()]);
    let mut key = [0u8; USER_KEY_LEN];
    for (k, &t) in key.iter_mut().zip(tag.iter()) {
        *k = t;
    }
    key
}

/// What the server counts failed logins with: [`Penalties`] in this process (the passwd-file
/// backend), or, with `[auth] backend = "sql"`, `sql::SharedPenalties` (cargo feature
/// `postgres`) in the database every node uses, so that guesses spread over N nodes are counted
/// together. Both answer the same way.
pub enum FailedLogins {
    Local(Penalties),
    #[cfg(feature = "postgres")]
    Shared(std::sync::Arc<crate::sql::SharedPenalties>),
}

impl FailedLogins {
    /// Records a failed login from `source` for `user` (when one was given); returns how long
    /// to wait before answering it.
    pub async fn failure(&self, source: IpAddr, user: Option<&str>) -> Duration {
        match self {
            Self::Local(p) => p.failure(source, user),
            #[cfg(feature = "postgres")]
            // Boxed: a database round trip's future is large, and the callers' futures would
            // carry its room even with the local backend.
            Self::Shared(p) => Box::pin(p.failure(source, user)).await,
        }
    }

    /// A successful login forgets the failures of that user name (not of the source).
    pub async fn success(&self, user: &str) {
        match self {
            Self::Local(p) => p.success(user),
            #[cfg(feature = "postgres")]
            Self::Shared(p) => Box::pin(p.success(user)).await,
        }
    }
}

/// A random key from the operating system; should it give none, one from the random keys of
/// the standard library's hash maps (a weaker source, but still unknown to a client).
fn random_hash_key() -> [u8; HASH_KEY_LEN] {
    let mut key = [0u8; HASH_KEY_LEN];
    if getrandom::fill(&mut key).is_err() {
        for chunk in key.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u8(0);
            for (k, b) in chunk.iter_mut().zip(h.finish().to_le_bytes()) {
                *k = b;
            }
        }
    }
    key
}

/// The unit a source is counted in: the address for IPv4, the /64 for IPv6.
pub fn source_block(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut s = v6.segments();
            s[4..].iter_mut().for_each(|x| *x = 0);
            IpAddr::from(s)
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> Penalties {
        Penalties::new(
            Duration::from_millis(500),
            Duration::from_secs(8),
            Duration::from_secs(600),
        )
    }

    #[test]
    fn doubles_up_to_the_cap() {
        let p = p();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let t = Instant::now();
        let delays: Vec<_> = (0..7)
            .map(|_| p.failure_at(ip, None, t).as_millis())
            .collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 8000, 8000]);
    }

    #[test]
    fn user_failures_count_across_sources_and_success_forgets_them() {
        let p = p();
        let t = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(p.failure_at(a, Some("bob"), t).as_millis(), 500);
        assert_eq!(p.failure_at(b, Some("bob"), t).as_millis(), 1000);
        p.success("bob");
        let c: IpAddr = "203.0.113.1".parse().unwrap();
        assert_eq!(p.failure_at(c, Some("bob"), t).as_millis(), 500);
        // Another source trying another user is not affected by any of that.
        let d: IpAddr = "203.0.113.2".parse().unwrap();
        assert_eq!(p.failure_at(d, Some("carol"), t).as_millis(), 500);
    }

    #[test]
    fn ipv6_counts_per_64_and_failures_are_forgotten() {
        let p = p();
        let t = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(p.failure_at(a, None, t).as_millis(), 500);
        assert_eq!(p.failure_at(b, None, t).as_millis(), 1000);
        let later = t + Duration::from_secs(601);
        assert_eq!(p.failure_at(a, None, later).as_millis(), 500);
    }

    /// A user name of any length takes the same few bytes in the table: its memory is bounded
    /// by the entry cap, whatever names clients send.
    #[test]
    fn user_names_are_kept_as_fixed_size_keyed_hashes() {
        fn owns_no_heap_memory<T: Copy>() {}
        owns_no_heap_memory::<Key>();
        assert!(
            std::mem::size_of::<Key>() <= 24,
            "{}",
            std::mem::size_of::<Key>()
        );

        let p = p();
        let t = Instant::now();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let long = "x".repeat(3000);
        let mut other = long.clone();
        other.push('y');
        for i in 0..1000 {
            let name = format!("{long}{i}");
            p.failure_at(ip, Some(&name), t);
        }
        let table = p.table.lock().unwrap();
        assert_eq!(table.len(), 1001);
        drop(table);
        // Still counted per name: the same long name twice doubles its delay; a name that
        // differs in its last octet is another user.
        let fresh: IpAddr = "192.0.2.10".parse().unwrap();
        let fresh2: IpAddr = "192.0.2.11".parse().unwrap();
        let fresh3: IpAddr = "192.0.2.12".parse().unwrap();
        assert_eq!(p.failure_at(fresh, Some(&long), t).as_millis(), 500);
        assert_eq!(p.failure_at(fresh2, Some(&long), t).as_millis(), 1000);
        assert_eq!(p.failure_at(fresh3, Some(&other), t).as_millis(), 500);
        p.success(&long);
        assert!(!p.table.lock().unwrap().contains_key(&p.user_key(&long)));
        // Each process has its own key.
        assert_ne!(p.user_key(&long), self::p().user_key(&long));
        assert_eq!(p.user_key("bob"), p.user_key("bob"));
    }

    #[test]
    fn table_stays_bounded() {
        let p = p();
        let t = Instant::now();
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            p.failure_at(
                IpAddr::from(i.to_be_bytes()),
                None,
                t + Duration::from_micros(i.into()),
            );
        }
        assert!(p.table.lock().unwrap().len() <= MAX_ENTRIES);
    }
}
