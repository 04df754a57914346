//! A cache of successful password verifications, like saslauthd's `-c`: a client that polls
//! every few minutes with the same password is hashed once per TTL, not at every login.
//!
//! What is kept for a success is a tag, with the time it was stored: HMAC-SHA-256, under a key
//! drawn at random for each process, of the user name, the password field exactly as it is in
//! the passwd-file, and the password. A password change, a new hash or a new scheme changes the
//! field, hence the tag: an old password never matches a new entry. A login whose tag is here and
//! younger than the TTL succeeds without hashing; any other goes through the scheme's full check.
//!
//! # What this module must never do
//! Keep a password or a hash (only the 32-byte tags); show a tag in a `Debug` output; remember a
//! failure (a wrong password always costs the scheme's full work, so the cache is no faster
//! oracle for a guesser); grow past its bound; hold its lock while hashing; panic.
//!
//! The trade-off: someone who gets a memory dump of the server can test guesses against the tags
//! at the speed of an HMAC instead of the scheme's cost (the key is in the same dump). A TTL of 0
//! turns the cache off.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use facteur_proto::Secret;

use facteur_proto::sasl::{hmac_sha256, KEY_LEN};

/// What is remembered of one successful verification. Deliberately not `Debug`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Tag([u8; KEY_LEN]);

/// Successful password verifications, remembered for a while. See the module's documentation.
pub(crate) struct VerifiedCache {
    key: Secret<[u8; KEY_LEN]>,
    ttl: Duration,
    max_entries: usize,
    /// Each tag with the time its verification succeeded. The lock is held for a map operation
    /// only; tags are computed before taking it.
    tags: Mutex<HashMap<Tag, Instant>>,
}

impl fmt::Debug for VerifiedCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedCache")
            .field("ttl", &self.ttl)
            .field("max_entries", &self.max_entries)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl VerifiedCache {
    /// A cache that remembers a success for `ttl`, and at most `max_entries` successes at once.
    /// `None`, the cache off, when `ttl` or `max_entries` is zero, or when the operating system
    /// gives no random bytes for the key (logged: logins still work, each one hashed).
    pub(crate) fn new(ttl: Duration, max_entries: usize) -> Option<Self> {
        if ttl.is_zero() || max_entries == 0 {
            return None;
        }
        let mut key = [0u8; KEY_LEN];
        if let Err(error) = getrandom::fill(&mut key) {
            tracing::warn!(
                %error,
                "no random key for the cache of password verifications: every login will be hashed"
            );
            return None;
        }
        Some(Self {
            key: Secret::new(key),
            ttl,
            max_entries,
            tags: Mutex::new(HashMap::new()),
        })
    }

    /// The tag of a login: `user` and `password_field` (as in the passwd-file) are
    /// length-prefixed, so no two different triples give the same input to the HMAC.
    pub(crate) fn tag(&self, user: &str, password_field: &str, password: &[u8]) -> Tag {
        let user_len = (user.len() as u64).to_be_bytes();
        let field_len = (password_field.len() as u64).to_be_bytes();
        Tag(hmac_sha256(
            self.key.expose(),
            &[
                &user_len,
                user.as_bytes(),
                &field_len,
                password_field.as_bytes(),
                password,
            ],
        ))
    }

    /// True if `tag` was stored less than the TTL before `now`. Changes nothing.
    pub(crate) fn is_fresh(&self, tag: &Tag, now: Instant) -> bool {
        let stored = self.lock().get(tag).copied();
        stored.is_some_and(|at| self.is_live(at, now))
    }

    /// Remembers a successful verification made at `now`. When the cache is full, expired tags
    /// go first; if more than half of the bound is still in use, the oldest tags go until half
    /// is. A full cache is thus swept at most once per `max_entries / 2` insertions.
    pub(crate) fn insert(&self, tag: Tag, now: Instant) {
        let mut tags = self.lock();
        if !tags.contains_key(&tag) && tags.len() >= self.max_entries {
            tags.retain(|_, &mut at| self.is_live(at, now));
            evict_oldest(&mut tags, self.max_entries / 2);
        }
        tags.insert(tag, now);
    }

    /// The number of tags held, expired ones included until they are swept or replaced.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn is_live(&self, stored_at: Instant, now: Instant) -> bool {
        now.saturating_duration_since(stored_at) < self.ttl
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Tag, Instant>> {
        self.tags.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Removes the oldest tags until at most `keep` are left.
fn evict_oldest(tags: &mut HashMap<Tag, Instant>, keep: usize) {
    if tags.len() <= keep {
        return;
    }
    if keep == 0 {
        tags.clear();
        return;
    }
    let excess = tags.len() - keep;
    let mut times: Vec<Instant> = tags.values().copied().collect();
    // `excess - 1 < times.len()` since `keep > 0`: the time of the newest tag to remove.
    let (_, &mut newest_removed, _) = times.select_nth_unstable(excess - 1);
    let older = times.iter().filter(|&&at| at < newest_removed).count();
    // Everything older goes, and as many of the tags stored at that very time as needed.
    let mut ties_to_remove = excess - older;
    tags.retain(|_, &mut at| {
        if at < newest_removed {
            false
        } else if at == newest_removed && ties_to_remove > 0 {
            ties_to_remove -= 1;
            false
        } else {
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn cache(ttl: Duration, max_entries: usize) -> VerifiedCache {
        VerifiedCache::new(ttl, max_entries).unwrap()
    }

    /// A distinct tag for each `n`, whatever the key.
    fn nth_tag(c: &VerifiedCache, n: usize) -> Tag {
        c.tag(&format!("user{n}"), "{PLAIN}x", b"x")
    }

    #[test]
    fn a_stored_tag_is_fresh_until_the_ttl() {
        let c = cache(Duration::from_secs(10), 10);
        let t0 = Instant::now();
        let tag = c.tag("alice", "{PLAIN}x", b"x");
        assert!(!c.is_fresh(&tag, t0));
        c.insert(tag, t0);
        assert!(c.is_fresh(&tag, t0));
        assert!(c.is_fresh(&tag, t0 + Duration::from_millis(9_999)));
        assert!(!c.is_fresh(&tag, t0 + Duration::from_secs(10)));
        assert!(!c.is_fresh(&tag, t0 + HOUR));
        // A clock that seems to go back does not make a tag expire.
        c.insert(tag, t0 + Duration::from_secs(5));
        assert!(c.is_fresh(&tag, t0));
        // Storing it again restarts its time, without a second entry.
        c.insert(tag, t0 + HOUR);
        assert!(c.is_fresh(&tag, t0 + HOUR + Duration::from_secs(9)));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn each_part_of_the_login_changes_the_tag() {
        let c = cache(HOUR, 10);
        let tag = c.tag("alice", "{PLAIN}x", b"x");
        assert!(tag == c.tag("alice", "{PLAIN}x", b"x"));
        for other in [
            c.tag("alicf", "{PLAIN}x", b"x"),
            c.tag("alice", "{PLAIN}y", b"x"),
            c.tag("alice", "{PLAIN}x", b"y"),
            c.tag("alice", "{PLAIN}x", b"x\0"),
            // The length prefixes keep the boundaries between the parts.
            c.tag("alice{", "PLAIN}x", b"x"),
            c.tag("alice", "{PLAIN}", b"xx"),
            // Another process (another key) never recognises this one's tags.
            cache(HOUR, 10).tag("alice", "{PLAIN}x", b"x"),
        ] {
            assert!(tag != other);
        }
    }

    #[test]
    fn zero_ttl_or_zero_entries_is_no_cache() {
        assert!(VerifiedCache::new(Duration::ZERO, 10).is_none());
        assert!(VerifiedCache::new(HOUR, 0).is_none());
        assert!(VerifiedCache::new(Duration::from_nanos(1), 1).is_some());
    }

    #[test]
    fn the_bound_holds() {
        for max in [1, 2, 3, 10, 101] {
            let c = cache(HOUR, max);
            let t0 = Instant::now();
            for n in 0..max * 5 {
                // Several tags share each instant, as on a coarse clock.
                c.insert(nth_tag(&c, n), t0 + Duration::from_secs((n / 3) as u64));
                assert!(c.len() <= max, "max {max}, after {n}: {}", c.len());
                // The tag just stored is always kept.
                assert!(c.is_fresh(&nth_tag(&c, n), t0 + Duration::from_secs(1_000)));
            }
        }
    }

    #[test]
    fn a_full_cache_drops_expired_tags_first() {
        let c = cache(Duration::from_secs(10), 4);
        let t0 = Instant::now();
        c.insert(nth_tag(&c, 0), t0);
        c.insert(nth_tag(&c, 1), t0);
        c.insert(nth_tag(&c, 2), t0 + Duration::from_secs(8));
        c.insert(nth_tag(&c, 3), t0 + Duration::from_secs(9));
        assert_eq!(c.len(), 4);
        // 0 and 1 have expired and make the room; 2 and 3 are live and stay.
        let t = t0 + Duration::from_secs(10);
        c.insert(nth_tag(&c, 4), t);
        assert_eq!(c.len(), 3);
        for n in 2..=4 {
            assert!(c.is_fresh(&nth_tag(&c, n), t), "{n}");
        }
    }

    #[test]
    fn a_full_cache_of_live_tags_drops_the_oldest_half() {
        let c = cache(HOUR, 6);
        let t0 = Instant::now();
        for n in 0..6 {
            c.insert(nth_tag(&c, n), t0 + Duration::from_secs(n as u64));
        }
        let t = t0 + Duration::from_secs(6);
        c.insert(nth_tag(&c, 6), t);
        assert_eq!(c.len(), 4);
        for n in 0..3 {
            assert!(!c.is_fresh(&nth_tag(&c, n), t), "{n} should be gone");
        }
        for n in 3..=6 {
            assert!(c.is_fresh(&nth_tag(&c, n), t), "{n} should stay");
        }
        // Storing a tag that is already there needs no room.
        c.insert(nth_tag(&c, 7), t);
        c.insert(nth_tag(&c, 8), t);
        assert_eq!(c.len(), 6);
        c.insert(nth_tag(&c, 8), t);
        assert_eq!(c.len(), 6);
    }

    #[test]
    fn evict_oldest_keeps_exactly_the_newest() {
        let t0 = Instant::now();
        let mut tags = HashMap::new();
        for n in 0..10u8 {
            // Pairs of tags with the same time.
            tags.insert(
                Tag([n; KEY_LEN]),
                t0 + Duration::from_secs(u64::from(n / 2)),
            );
        }
        evict_oldest(&mut tags, 5);
        assert_eq!(tags.len(), 5);
        for n in 6..10u8 {
            assert!(tags.contains_key(&Tag([n; KEY_LEN])), "{n}");
        }
        evict_oldest(&mut tags, 5);
        assert_eq!(tags.len(), 5);
        evict_oldest(&mut tags, 0);
        assert!(tags.is_empty());
    }

    #[test]
    fn debug_shows_no_tag_and_no_key() {
        let c = cache(HOUR, 10);
        let tag = c.tag("alice", "{PLAIN}x", b"x");
        c.insert(tag, Instant::now());
        let debug = format!("{c:?}{c:#?}");
        assert!(debug.contains("len: 1"), "{debug}");
        for secret in [&tag.0[..], &c.key.expose()[..]] {
            let hex = facteur_proto::encoding::hex(secret);
            assert!(!debug.contains(&hex[..8]), "{debug}");
            assert!(
                !debug.contains(&format!("{}, {}", secret[0], secret[1])),
                "{debug}"
            );
        }
    }
}
