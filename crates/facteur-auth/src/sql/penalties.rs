//! [`SharedPenalties`]: the failed-login penalties of [`crate::penalty`], counted in the table
//! `login_penalties` of the database every node shares, so that an attacker who spreads guesses
//! over N nodes is delayed as if they had all gone to one.
//!
//! The same keys as in memory: a source's block (the IPv4 address, the IPv6 /64) and the keyed
//! hash of a user name, under a key every node shares (`login_penalty_key`, drawn by the first
//! node that starts). The same arithmetic: a failure is answered after `base * 2^(n-1)`, capped,
//! `n` the larger of the two counts; a success forgets the user name's count; a count is
//! forgotten `forget_after` after its last failure.
//!
//! Cost: one UPSERT (both keys, one statement, `RETURNING` the counts) per failure; one DELETE by
//! primary key per success (a read when the user had no failures). No lock is taken beyond the
//! rows written; a statement that meets a serialization failure (SQLSTATE 40001) is retried.
//!
//! Bounded: [`SharedPenalties::clean`] deletes the rows past `forget_after` and, when more than
//! `max_rows` are left, the oldest ones; it runs every `clean_every` on each node
//! ([`SharedPenalties::spawn_cleaner`]) and, between two runs, as soon as this node has recorded
//! `max_rows / 8` failures.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use facteur_proto::Secret;

use super::{retrying, Pool};
use crate::penalty::{delay_for, source_block, user_hash, HASH_KEY_LEN};
use crate::AuthError;

/// Rows deleted by one statement of the cleaning, so that no statement holds many locks.
const CLEAN_BATCH: i64 = 10_000;
/// Statements one cleaning runs at most (expired rows, then the oldest past the cap).
const CLEAN_MAX_STATEMENTS: usize = 100;
/// The count a row stops growing at (the delay reached the cap long before).
const MAX_FAILURES: i32 = 1_000_000;

/// The first byte of a key: what it counts.
const KIND_SOURCE: u8 = 1;
const KIND_USER: u8 = 2;

/// The settings of [`SharedPenalties`], from `[limits]` and `[auth]`.
#[derive(Clone, Copy, Debug)]
pub struct SharedPenaltiesConfig {
    /// The delay after a first failure.
    pub base: Duration,
    /// The longest delay.
    pub cap: Duration,
    /// Time without a failure after which a count is forgotten.
    pub forget_after: Duration,
    /// Rows kept at most after a cleaning.
    pub max_rows: u64,
    /// Between two cleanings by this node.
    pub clean_every: Duration,
}

/// What one cleaning removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cleaned {
    /// Rows past `forget_after`.
    pub expired: u64,
    /// The oldest live rows, removed to get back under `max_rows`.
    pub evicted: u64,
}

/// Failed-login penalties shared by every node. See the module's documentation.
pub struct SharedPenalties {
    pool: Pool,
    config: SharedPenaltiesConfig,
    hash_key: Secret<[u8; HASH_KEY_LEN]>,
    /// Failures this node recorded since its last cleaning.
    since_clean: AtomicU64,
    cleaning: AtomicBool,
}

impl std::fmt::Debug for SharedPenalties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPenalties")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SharedPenalties {
    /// The penalties in the database behind `pool`: reads the shared key of the user names'
    /// hashes, drawing and storing it first if no node has yet.
    pub async fn open(pool: Pool, config: SharedPenaltiesConfig) -> Result<Self, AuthError> {
        let mut drawn = [0u8; HASH_KEY_LEN];
        getrandom::fill(&mut drawn)?;
        let drawn = drawn.to_vec();
        let key: Vec<u8> = retrying(&pool, "read the penalty key", |c| {
            let drawn = drawn.clone();
            async move {
                c.execute(
                    "INSERT INTO login_penalty_key (id, key) VALUES (1, $1) \
                     ON CONFLICT (id) DO NOTHING",
                    &[&drawn],
                )
                .await?;
                c.query_one("SELECT key FROM login_penalty_key WHERE id = 1", &[])
                    .await
                    .map(|r| r.get(0))
            }
        })
        .await?;
        let key: [u8; HASH_KEY_LEN] = key.try_into().map_err(|_| AuthError::Database {
            what: "read the penalty key",
            detail: "login_penalty_key.key is not 64 bytes".into(),
        })?;
        Ok(Self {
            pool,
            config,
            hash_key: Secret::new(key),
            since_clean: AtomicU64::new(0),
            cleaning: AtomicBool::new(false),
        })
    }

    fn source_key(source: IpAddr) -> Vec<u8> {
        let mut key = vec![KIND_SOURCE];
        match source_block(source) {
            IpAddr::V4(v4) => key.extend_from_slice(&v4.octets()),
            IpAddr::V6(v6) => key.extend_from_slice(&v6.octets()[..8]),
        }
        key
    }

    fn user_key(&self, user: &str) -> Vec<u8> {
        let mut key = vec![KIND_USER];
        key.extend_from_slice(&user_hash(self.hash_key.expose(), user));
        key
    }

    fn forget_secs(&self) -> f64 {
        self.config.forget_after.as_secs_f64()
    }

    /// Records a failed login; returns how long to wait before answering it. Should the
    /// database not answer, the longest delay (logged).
    pub async fn failure(&self, source: IpAddr, user: Option<&str>) -> Duration {
        let mut keys = vec![Self::source_key(source)];
        keys.extend(user.map(|u| self.user_key(u)));
        let forget = self.forget_secs();
        let counted = retrying(&self.pool, "count a failed login", |c| {
            let keys = keys.clone();
            async move {
                c.query(
                    "INSERT INTO login_penalties (key, failures, last_failure) \
                     SELECT k, 1, now() FROM unnest($1::bytea[]) AS k \
                     ON CONFLICT (key) DO UPDATE SET \
                       failures = CASE \
                         WHEN login_penalties.last_failure < now() - $2::float8 * interval '1 second' \
                         THEN 1 \
                         ELSE LEAST(login_penalties.failures + 1, $3::integer) END, \
                       last_failure = now() \
                     RETURNING failures",
                    &[&keys, &forget, &MAX_FAILURES],
                )
                .await
            }
        })
        .await;
        let delay = match counted {
            Ok(rows) => {
                let worst = rows.iter().map(|r| r.get::<_, i32>(0)).max().unwrap_or(1);
                delay_for(
                    self.config.base,
                    self.config.cap,
                    u32::try_from(worst).unwrap_or(1),
                )
            }
            Err(error) => {
                tracing::error!(%error, "cannot count a failed login: answering after the longest delay");
                self.config.cap
            }
        };
        let every = (self.config.max_rows / 8).max(1);
        if self.since_clean.fetch_add(1, Ordering::Relaxed) + 1 >= every {
            // The answer waits for its delay anyway: clean meanwhile, once at a time.
            if let Err(error) = self.clean().await {
                tracing::warn!(%error, "cannot clean the failed-login penalties");
            }
        }
        delay
    }

    /// A successful login forgets the failures of that user name (not of the source).
    pub async fn success(&self, user: &str) {
        let key = self.user_key(user);
        let done = retrying(&self.pool, "forget a user's failed logins", |c| {
            let key = key.clone();
            async move {
                let forget = c
                    .prepare_cached("DELETE FROM login_penalties WHERE key = $1")
                    .await?;
                c.execute(&forget, &[&key]).await
            }
        })
        .await;
        if let Err(error) = done {
            tracing::warn!(%error, "cannot forget a user's failed logins");
        }
    }

    /// Deletes the rows past `forget_after`, then the oldest rows past `max_rows`, a batch per
    /// statement and a bounded number of statements. Another node cleaning at the same time is
    /// harmless. Skipped (nothing removed) while this node is already cleaning.
    pub async fn clean(&self) -> Result<Cleaned, AuthError> {
        if self.cleaning.swap(true, Ordering::AcqRel) {
            return Ok(Cleaned::default());
        }
        self.since_clean.store(0, Ordering::Relaxed);
        let r = self.clean_now().await;
        self.cleaning.store(false, Ordering::Release);
        r
    }

    async fn clean_now(&self) -> Result<Cleaned, AuthError> {
        let mut cleaned = Cleaned::default();
        let forget = self.forget_secs();
        for _ in 0..CLEAN_MAX_STATEMENTS {
            let n = retrying(&self.pool, "delete expired penalties", |c| async move {
                c.execute(
                    "DELETE FROM login_penalties WHERE key IN (\
                       SELECT key FROM login_penalties \
                       WHERE last_failure < now() - $1::float8 * interval '1 second' LIMIT $2)",
                    &[&forget, &CLEAN_BATCH],
                )
                .await
            })
            .await?;
            cleaned.expired += n;
            if n < CLEAN_BATCH as u64 {
                break;
            }
        }
        let max_rows = i64::try_from(self.config.max_rows).unwrap_or(i64::MAX);
        for _ in 0..CLEAN_MAX_STATEMENTS {
            let rows: i64 = retrying(&self.pool, "count the penalties", |c| async move {
                c.query_one("SELECT count(*) FROM login_penalties", &[])
                    .await
                    .map(|r| r.get(0))
            })
            .await?;
            let excess = rows.saturating_sub(max_rows).min(CLEAN_BATCH);
            if excess <= 0 {
                break;
            }
            let n = retrying(&self.pool, "evict the oldest penalties", |c| async move {
                c.execute(
                    "DELETE FROM login_penalties WHERE key IN (\
                       SELECT key FROM login_penalties ORDER BY last_failure LIMIT $1)",
                    &[&excess],
                )
                .await
            })
            .await?;
            cleaned.evicted += n;
        }
        if cleaned != Cleaned::default() {
            tracing::debug!(
                expired = cleaned.expired,
                evicted = cleaned.evicted,
                "failed-login penalties cleaned"
            );
        }
        Ok(cleaned)
    }

    /// Cleans every `clean_every` for as long as the runtime runs.
    pub fn spawn_cleaner(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.config.clean_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(error) = me.clean().await {
                    tracing::warn!(%error, "cannot clean the failed-login penalties");
                }
            }
        })
    }
}
