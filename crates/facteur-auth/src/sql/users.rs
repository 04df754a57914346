//! [`SqlUsers`]: the users of the `users` table as an [`Authenticator`], with the behaviour of
//! the passwd-file's [`PasswdDb`](crate::PasswdDb): the same scheme strings, the same dummy work
//! for an unknown user, APOP, CRAM-MD5 and SCRAM where the stored scheme allows, and the cache of
//! verifications, keyed on the row's `generation` so that a password changed on any node
//! invalidates every node's cached logins at their next lookup.
//!
//! Each login reads its user's row: one query on the primary key. The [`Authenticator`] is
//! blocking, as the server calls it from its password-check threads: each query is run on the
//! server's runtime ([`tokio::runtime::Handle::block_on`]) from the calling thread, which must
//! be a thread of its own (the server's password-check threads): called from a thread of the
//! runtime (a task, or `spawn_blocking`) it refuses with [`FailureReason::Unavailable`] and an
//! error in the log, rather than block a worker or panic.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use facteur_proto::policy::{BadPolicy, Expire, UserPolicy};
use facteur_proto::sasl::{FailureReason, SCRAM_DEFAULT_ITERATIONS};
use facteur_proto::Secret;
use facteur_store::Owner;
use tokio::runtime::Handle;

use super::app_passwords::{login_app_password, record_use};
use super::{retrying, Pool};
use crate::app_password::{check_app_password, presented};
use crate::cache::VerifiedCache;
use crate::cram_md5::CramMd5Context;
use crate::edit::{check_stored, check_user};
use crate::scheme::{apop_digest, apop_digest_matches, random_token, CostKey, ScramSource};
use crate::scram::{fake_keys, plain_user_salt};
use crate::{
    Account, AuthError, AuthOutcome, Authenticator, Checked, Scheme, ScramCredentials,
    StoredPassword, PASSWORD_MAX_LEN, USER_NAME_MAX_LEN,
};

/// How long the answers of "could any user use APOP, CRAM-MD5, SCRAM?" are kept before they
/// are asked again (at the next login): a user added with `{PLAIN}` on another node makes APOP
/// possible here within this time.
const METHODS_REFRESH: Duration = Duration::from_secs(60);

/// The row of one user, as `facteur user list` and the tests see it. `Debug` shows the scheme
/// of the password, never the password.
#[derive(Clone, Debug)]
pub struct UserRecord {
    pub name: String,
    pub password: StoredPassword,
    /// Goes up by one at each password change.
    pub generation: i64,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub home: Option<String>,
    /// The columns `login_delay_secs` and `expire` (`never` or days); `None`: the server's.
    pub login_delay: Option<i32>,
    pub expire: Option<String>,
}

impl UserRecord {
    /// The user's own LOGIN-DELAY and EXPIRE, or why the columns cannot be used.
    pub fn policy(&self) -> Result<UserPolicy, BadPolicy> {
        let login_delay = self
            .login_delay
            .map(|d| facteur_proto::policy::parse_login_delay(&d.to_string()))
            .transpose()?;
        let expire = self.expire.as_deref().map(Expire::parse).transpose()?;
        Ok(UserPolicy {
            login_delay,
            expire,
        })
    }

    fn account(&self) -> Account {
        Account {
            user: self.name.clone(),
            home: self.home.clone(),
            owner: Ok(Owner {
                uid: self.uid,
                gid: self.gid,
            }),
            policy: self.policy(),
            app_password: None,
        }
    }
}

/// One user's row as a login reads it: the record and the password field as stored.
struct Row {
    record: UserRecord,
    field: Secret<String>,
}

const SELECT_USER: &str = "SELECT name, password, generation, uid, gid, home, \
     login_delay_secs, expire FROM users WHERE name = $1";

fn u32_column(v: Option<i64>) -> Option<u32> {
    v.and_then(|v| u32::try_from(v).ok())
}

/// Reads `user`'s row; a stored password that does not parse is an error naming the user.
/// The statement is prepared once per pooled connection: a login costs one round trip.
async fn read_row(
    client: &deadpool_postgres::Object,
    user: &str,
) -> Result<Option<Row>, AuthError> {
    let failed = |e: tokio_postgres::Error| AuthError::Database {
        what: "read a user",
        detail: super::detail(&e),
    };
    let select = client.prepare_cached(SELECT_USER).await.map_err(failed)?;
    let row = client.query_opt(&select, &[&user]).await.map_err(failed)?;
    row.map(|r| {
        let field: String = r.get(1);
        let password = StoredPassword::parse(&field)?;
        Ok(Row {
            record: UserRecord {
                name: r.get(0),
                password,
                generation: r.get(2),
                uid: u32_column(r.get(3)),
                gid: u32_column(r.get(4)),
                home: r.get(5),
                login_delay: r.get(6),
                expire: r.get(7),
            },
            field: Secret::new(field),
        })
    })
    .transpose()
}

/// The user named exactly `user`, if any.
pub async fn find_user(pool: &Pool, user: &str) -> Result<Option<UserRecord>, AuthError> {
    let row = retrying(pool, "read a user", |c| async move {
        let select = c.prepare_cached(SELECT_USER).await?;
        c.query_opt(&select, &[&user]).await
    })
    .await?;
    row.map(|r| {
        let field: String = r.get(1);
        Ok(UserRecord {
            name: r.get(0),
            password: StoredPassword::parse(&field)?,
            generation: r.get(2),
            uid: u32_column(r.get(3)),
            gid: u32_column(r.get(4)),
            home: r.get(5),
            login_delay: r.get(6),
            expire: r.get(7),
        })
    })
    .transpose()
}

/// Adds `user` with the stored password `stored` (`{SCHEME}hash`, as
/// [`hash_password`](crate::hash_password) returns it); the same checks as the passwd-file's.
pub async fn add_user(pool: &Pool, user: &str, stored: &str) -> Result<(), AuthError> {
    check_user(user)?;
    check_stored(stored)?;
    let scheme = StoredPassword::parse(stored)?.scheme().name();
    let added = retrying(pool, "add a user", |c| async move {
        c.execute(
            "INSERT INTO users (name, password, scheme) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
            &[&user, &stored, &scheme],
        )
        .await
    })
    .await?;
    if added == 0 {
        return Err(AuthError::SqlUserExists {
            user: user.to_string(),
        });
    }
    Ok(())
}

/// Removes `user` (their maildrop is not touched).
pub async fn del_user(pool: &Pool, user: &str) -> Result<(), AuthError> {
    check_user(user)?;
    let removed = retrying(pool, "remove a user", |c| async move {
        c.execute("DELETE FROM users WHERE name = $1", &[&user])
            .await
    })
    .await?;
    if removed == 0 {
        return Err(AuthError::SqlNoSuchUser {
            user: user.to_string(),
        });
    }
    Ok(())
}

/// Replaces `user`'s password with `stored` and moves its generation on, which invalidates the
/// cached verifications of every node (even when `stored` is the same string as before).
pub async fn set_password(pool: &Pool, user: &str, stored: &str) -> Result<(), AuthError> {
    check_user(user)?;
    check_stored(stored)?;
    let scheme = StoredPassword::parse(stored)?.scheme().name();
    let changed = retrying(pool, "change a password", |c| async move {
        c.execute(
            "UPDATE users SET password = $2, scheme = $3, generation = generation + 1, \
             password_changed_at = now(), updated_at = now() WHERE name = $1",
            &[&user, &stored, &scheme],
        )
        .await
    })
    .await?;
    if changed == 0 {
        return Err(AuthError::SqlNoSuchUser {
            user: user.to_string(),
        });
    }
    Ok(())
}

/// Names read per query by [`list_users`]: memory stays bounded whatever the number of users.
const LIST_PAGE: i64 = 1000;

/// Calls `each` with every user name, in the database's order of names, a page at a time.
pub async fn list_users(pool: &Pool, mut each: impl FnMut(&str)) -> Result<(), AuthError> {
    let mut after: Option<String> = None;
    loop {
        let from = after.clone();
        let rows = retrying(pool, "list the users", |c| {
            let from = from.clone();
            async move {
                match from {
                    None => {
                        c.query(
                            "SELECT name FROM users ORDER BY name LIMIT $1",
                            &[&LIST_PAGE],
                        )
                        .await
                    }
                    Some(f) => {
                        c.query(
                            "SELECT name FROM users WHERE name > $1 ORDER BY name LIMIT $2",
                            &[&f, &LIST_PAGE],
                        )
                        .await
                    }
                }
            }
        })
        .await?;
        for r in &rows {
            each(r.get(0));
        }
        if (rows.len() as i64) < LIST_PAGE {
            return Ok(());
        }
        after = rows.last().map(|r| r.get(0));
    }
}

/// The number of users.
pub async fn count_users(pool: &Pool) -> Result<i64, AuthError> {
    let row = retrying(pool, "count the users", |c| async move {
        c.query_one("SELECT count(*) FROM users", &[]).await
    })
    .await?;
    Ok(row.get(0))
}

/// Stored passwords read per scheme at start to find the slowest cost in use.
const COST_SAMPLE: i64 = 20;

/// The slowest cost among a sample of each scheme's stored passwords (`None`: no users): what
/// the dummy hash starts with, as the passwd-file's slowest user. A slower user met at a login
/// later raises it ([`SqlUsers`] never lowers it).
async fn sample_slowest_cost(pool: &Pool) -> Result<Option<CostKey>, AuthError> {
    let mut slowest: Option<CostKey> = None;
    for scheme in Scheme::ALL {
        let name = scheme.name();
        let rows = retrying(pool, "sample the users' password costs", |c| async move {
            c.query(
                "SELECT password FROM users WHERE scheme = $1 LIMIT $2",
                &[&name, &COST_SAMPLE],
            )
            .await
        })
        .await?;
        for row in rows {
            let field: String = row.get(0);
            if let Ok(stored) = StoredPassword::parse(&field) {
                let key = stored.cost_key();
                if slowest.is_none_or(|s| key.estimated_work() > s.estimated_work()) {
                    slowest = Some(key);
                }
            }
        }
    }
    Ok(slowest)
}

/// How many users have their password stored in each scheme (the schemes with none left out;
/// a scheme name this build does not know is skipped). For `facteur check-config`: one scan of
/// the scheme index.
pub async fn count_schemes(pool: &Pool) -> Result<Vec<(Scheme, u64)>, AuthError> {
    let rows = retrying(pool, "count the users per scheme", |c| async move {
        c.query("SELECT scheme, count(*) FROM users GROUP BY scheme", &[])
            .await
    })
    .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let scheme: String = r.get(0);
            let n: i64 = r.get(1);
            Some((scheme.parse().ok()?, u64::try_from(n).ok()?))
        })
        .collect())
}

/// What login methods some user could use, as last asked.
#[derive(Default)]
struct Methods {
    apop: AtomicBool,
    /// Some user has a LOGIN-DELAY or EXPIRE of their own.
    policy_per_user: AtomicBool,
    cram_md5: AtomicBool,
    scram: AtomicBool,
    /// The iteration count of a `{SCRAM-SHA-256}` user (4096 if none): made-up keys use it.
    scram_iterations: AtomicU32,
    /// `{PLAIN}` users and no stored SCRAM keys: made-up keys cost a PBKDF2 at the proof.
    scram_derive: AtomicBool,
    /// When they were last asked; `None`: never.
    asked: Mutex<Option<Instant>>,
}

/// The dummy hash unknown users are checked against, and its cost.
struct Dummy {
    cost: CostKey,
    stored: StoredPassword,
}

/// The users of the `users` table as the server uses them. See the module's documentation.
pub struct SqlUsers {
    pool: Pool,
    runtime: Handle,
    /// As [`PasswdDb`](crate::PasswdDb)'s: the key of the SCRAM salts of `{PLAIN}` users and of
    /// made-up keys. Random for each process.
    scram_secret: Secret<[u8; 32]>,
    verified: Option<VerifiedCache>,
    /// The slowest cost seen so far (a sample of the users at start, ARGON2ID with no users):
    /// an unknown user costs what the slowest known user seen costs.
    dummy: RwLock<Arc<Dummy>>,
    dummy_apop_secret: Secret<String>,
    methods: Methods,
    slow_checks: AtomicU64,
}

impl std::fmt::Debug for SqlUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlUsers")
            .field("verified_cache", &self.verified)
            .finish_non_exhaustive()
    }
}

impl SqlUsers {
    /// The users of the database behind `pool`, whose schema is checked first. Called inside
    /// the runtime the queries will run on.
    pub async fn open(pool: Pool) -> Result<Self, AuthError> {
        super::check_schema(&pool).await?;
        let mut scram_secret = [0u8; 32];
        getrandom::fill(&mut scram_secret)?;
        let cost = sample_slowest_cost(&pool).await?.unwrap_or_default();
        let users = Self {
            runtime: Handle::current(),
            pool,
            scram_secret: Secret::new(scram_secret),
            verified: None,
            dummy: RwLock::new(Arc::new(Dummy {
                cost,
                stored: StoredPassword::dummy(cost)?,
            })),
            dummy_apop_secret: Secret::new(random_token()?),
            methods: Methods::default(),
            slow_checks: AtomicU64::new(0),
        };
        users.ask_methods().await?;
        Ok(users)
    }

    /// Remembers successful password verifications for `ttl`, at most `max_entries` of them, as
    /// [`PasswdDb::with_verified_cache`](crate::PasswdDb::with_verified_cache) does; each is
    /// keyed on the user's row generation, so a password change anywhere invalidates it.
    pub fn with_verified_cache(mut self, ttl: Duration, max_entries: usize) -> Self {
        self.verified = VerifiedCache::new(ttl, max_entries);
        self
    }

    /// The scheme of the dummy hash unknown users are checked against: the slowest seen.
    pub fn dummy_scheme(&self) -> Scheme {
        self.current_dummy().stored.scheme()
    }

    /// How many passwords were checked the slow way (the scheme's own check or the dummy's).
    pub fn slow_checks(&self) -> u64 {
        self.slow_checks.load(Ordering::Relaxed)
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Runs `f` on the runtime from this (blocking) thread.
    fn block_on<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, AuthError>>,
    ) -> Result<T, AuthError> {
        if Handle::try_current().is_ok() {
            // A thread of the runtime would wait on itself (or panic in block_on).
            return Err(AuthError::Database {
                what: "look up a user",
                detail: "called from inside an async task instead of a blocking thread".into(),
            });
        }
        self.runtime.block_on(f)
    }

    /// `user`'s row, read now; a database error is logged here, and is
    /// [`FailureReason::Unavailable`] for the caller (no credential judged, no hash work).
    fn lookup(&self, user: &str) -> Result<Option<Row>, FailureReason> {
        self.refresh_methods_if_stale();
        let pool = &self.pool;
        let found = self.block_on(async {
            let client = tokio::time::timeout(super::QUERY_TIMEOUT, pool.get())
                .await
                .map_err(|_| AuthError::Database {
                    what: "read a user",
                    detail: format!("no connection within {:?}", super::QUERY_TIMEOUT),
                })?
                .map_err(|e| AuthError::Database {
                    what: "read a user",
                    detail: super::detail(&e),
                })?;
            tokio::time::timeout(super::QUERY_TIMEOUT, read_row(&client, user))
                .await
                .map_err(|_| AuthError::Database {
                    what: "read a user",
                    detail: format!("no answer within {:?}", super::QUERY_TIMEOUT),
                })?
        });
        match found {
            Ok(row) => {
                if let Some(row) = &row {
                    self.note_cost(row.record.password.cost_key());
                }
                Ok(row)
            }
            Err(error) => {
                tracing::error!(%error, "cannot read the user from the database");
                Err(FailureReason::Unavailable)
            }
        }
    }

    /// A known user slower to check than the dummy: the dummy takes that cost from now on.
    fn note_cost(&self, cost: CostKey) {
        let current = self.current_dummy();
        if cost.estimated_work() <= current.cost.estimated_work() {
            return;
        }
        match StoredPassword::dummy(cost) {
            Ok(stored) => {
                let mut dummy = self.dummy.write().unwrap_or_else(PoisonError::into_inner);
                if cost.estimated_work() > dummy.cost.estimated_work() {
                    *dummy = Arc::new(Dummy { cost, stored });
                }
            }
            Err(error) => tracing::warn!(%error, "cannot make a new dummy hash"),
        }
    }

    fn current_dummy(&self) -> Arc<Dummy> {
        Arc::clone(&self.dummy.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Asks which login methods some user could use.
    async fn ask_methods(&self) -> Result<(), AuthError> {
        let row = retrying(
            &self.pool,
            "ask which login methods users can use",
            |c| async move {
                c.query_one(
                    "SELECT EXISTS (SELECT 1 FROM users WHERE scheme = 'PLAIN'), \
                        EXISTS (SELECT 1 FROM users WHERE scheme = 'CRAM-MD5'), \
                        (SELECT password FROM users WHERE scheme = 'SCRAM-SHA-256' LIMIT 1), \
                        EXISTS (SELECT 1 FROM users \
                          WHERE login_delay_secs IS NOT NULL OR expire IS NOT NULL)",
                    &[],
                )
                .await
            },
        )
        .await?;
        let plain: bool = row.get(0);
        let cram: bool = row.get(1);
        let scram_field: Option<String> = row.get(2);
        let policy_per_user: bool = row.get(3);
        let iterations = scram_field
            .as_deref()
            .and_then(|f| StoredPassword::parse(f).ok())
            .and_then(|p| match p.scram_source() {
                Some(ScramSource::Stored(keys)) => Some(keys.iterations),
                _ => None,
            });
        let m = &self.methods;
        m.apop.store(plain, Ordering::Relaxed);
        m.policy_per_user.store(policy_per_user, Ordering::Relaxed);
        m.cram_md5.store(plain || cram, Ordering::Relaxed);
        m.scram
            .store(plain || scram_field.is_some(), Ordering::Relaxed);
        m.scram_iterations.store(
            iterations.unwrap_or(SCRAM_DEFAULT_ITERATIONS),
            Ordering::Relaxed,
        );
        m.scram_derive
            .store(plain && scram_field.is_none(), Ordering::Relaxed);
        *m.asked.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        Ok(())
    }

    /// Asks again when the answers are older than [`METHODS_REFRESH`] (blocking threads only).
    fn refresh_methods_if_stale(&self) {
        {
            let mut asked = self
                .methods
                .asked
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if asked.is_some_and(|at| at.elapsed() < METHODS_REFRESH) {
                return;
            }
            // One thread asks; the others go on with the answers they have.
            *asked = Some(Instant::now());
        }
        if let Err(error) = self.block_on(self.ask_methods()) {
            tracing::warn!(%error, "cannot ask which login methods users can use");
        }
    }

    /// [`Authenticator::check_password`] at the time `now`.
    pub fn check_password_at(&self, user: &str, password: &[u8], now: Instant) -> Checked {
        if user.len() > USER_NAME_MAX_LEN || password.len() > PASSWORD_MAX_LEN {
            return Err(FailureReason::TooLong);
        }
        let row = self.lookup(user)?;
        // The tag is computed for unknown users too (generation 0, which no row has).
        let field = row.as_ref().map_or(String::new(), |r| {
            format!("{}:{}", r.record.generation, r.field.expose())
        });
        let cached = self
            .verified
            .as_ref()
            .map(|cache| (cache, cache.tag(user, &field, password)));
        if let Some((cache, tag)) = &cached {
            if let Some(row) = &row {
                if cache.is_fresh(tag, now) {
                    return Ok(row.record.account());
                }
            }
        }
        let Some(row) = row else {
            black_box(self.slow_check(&self.current_dummy().stored, password));
            return Err(FailureReason::UnknownUser);
        };
        // A password of an app password's shape names the one app password it can be: one
        // query on the primary key, whose row is gone once revoked (on every node), one hash.
        if let Some(p) = presented(password) {
            let app = self
                .block_on(login_app_password(&self.pool, user, &p.id))
                .map_err(|error| {
                    tracing::error!(%error, "cannot read an app password from the database");
                    FailureReason::Unavailable
                })?;
            if let Some(app) = app {
                let cache = self.verified.as_ref();
                let ok = check_app_password(cache, user, &app.app, &p, now, |s, pw| {
                    self.slow_check(s, pw)
                });
                if ok {
                    if app.record_use {
                        // The login goes on whatever happens to the record.
                        if let Err(error) = self.block_on(record_use(&self.pool, user, &p.id)) {
                            tracing::warn!(%error,
                                "cannot record when an app password was last used");
                        }
                    }
                    return Ok(Account {
                        app_password: Some(app.app.label),
                        ..row.record.account()
                    });
                }
            }
        }
        if self.slow_check(&row.record.password, password) {
            if let Some((cache, tag)) = cached {
                cache.insert(tag, now);
            }
            return Ok(row.record.account());
        }
        Err(FailureReason::WrongPassword)
    }

    fn slow_check(&self, stored: &StoredPassword, password: &[u8]) -> bool {
        self.slow_checks.fetch_add(1, Ordering::Relaxed);
        stored.verify(password)
    }
}

fn impossible_or_unknown(row: Option<&Row>) -> FailureReason {
    row.map_or(FailureReason::UnknownUser, |r| {
        FailureReason::MethodImpossible(r.record.password.scheme().name())
    })
}

impl Authenticator for SqlUsers {
    fn verify_password(&self, user: &str, password: &[u8]) -> AuthOutcome {
        self.check_password(user, password).into()
    }

    fn check_password(&self, user: &str, password: &[u8]) -> Checked {
        self.check_password_at(user, password, Instant::now())
    }

    fn verify_apop(&self, user: &str, timestamp: &str, digest: &str) -> AuthOutcome {
        self.check_apop(user, timestamp, digest).into()
    }

    fn check_apop(&self, user: &str, timestamp: &str, digest: &str) -> Checked {
        if user.len() > USER_NAME_MAX_LEN {
            return Err(FailureReason::TooLong);
        }
        let row = self.lookup(user)?;
        match row
            .as_ref()
            .and_then(|r| r.record.password.apop_secret().map(|s| (r, s)))
        {
            Some((row, secret)) => {
                if apop_digest_matches(&apop_digest(timestamp, secret), digest) {
                    Ok(row.record.account())
                } else {
                    Err(FailureReason::WrongPassword)
                }
            }
            None => {
                let ours = apop_digest(timestamp, self.dummy_apop_secret.expose().as_bytes());
                black_box(apop_digest_matches(&ours, digest));
                Err(impossible_or_unknown(row.as_ref()))
            }
        }
    }

    fn apop_possible(&self) -> bool {
        self.methods.apop.load(Ordering::Relaxed)
    }

    fn policy_per_user(&self) -> bool {
        self.methods.policy_per_user.load(Ordering::Relaxed)
    }

    fn verify_cram_md5(&self, user: &str, challenge: &[u8], digest_hex: &str) -> AuthOutcome {
        self.check_cram_md5(user, challenge, digest_hex).into()
    }

    fn check_cram_md5(&self, user: &str, challenge: &[u8], digest_hex: &str) -> Checked {
        if user.len() > USER_NAME_MAX_LEN {
            return Err(FailureReason::TooLong);
        }
        let row = self.lookup(user)?;
        match row
            .as_ref()
            .and_then(|r| r.record.password.cram_md5_context().map(|c| (r, c)))
        {
            Some((row, ctx)) => {
                if ctx.digest_matches(challenge, digest_hex) {
                    Ok(row.record.account())
                } else {
                    Err(FailureReason::WrongPassword)
                }
            }
            None => {
                let ctx = CramMd5Context::from_secret(self.dummy_apop_secret.expose().as_bytes());
                black_box(ctx.digest_matches(challenge, digest_hex));
                Err(impossible_or_unknown(row.as_ref()))
            }
        }
    }

    fn cram_md5_possible(&self) -> bool {
        self.methods.cram_md5.load(Ordering::Relaxed)
    }

    fn scram_credentials(&self, user: &str) -> ScramCredentials {
        let secret = self.scram_secret.expose();
        let iterations = self.methods.scram_iterations.load(Ordering::Relaxed);
        let derive = self.methods.scram_derive.load(Ordering::Relaxed);
        let (row, failed) = match self.lookup(user) {
            Ok(row) => (row, None),
            Err(reason) => (None, Some(reason)),
        };
        match row
            .as_ref()
            .and_then(|r| r.record.password.scram_source().map(|s| (r, s)))
        {
            Some((row, ScramSource::Stored(keys))) => {
                ScramCredentials::from_keys(keys.clone(), Some(row.record.account()))
            }
            Some((row, ScramSource::Plain(password))) => ScramCredentials::from_password(
                password,
                &plain_user_salt(secret, user),
                iterations,
                Some(row.record.account()),
            ),
            None => ScramCredentials::made_up(fake_keys(secret, user, iterations), derive)
                .because(failed.unwrap_or_else(|| impossible_or_unknown(row.as_ref()))),
        }
    }

    fn scram_possible(&self) -> bool {
        self.methods.scram.load(Ordering::Relaxed)
    }

    fn account(&self, user: &str) -> Option<Account> {
        self.lookup(user).ok().flatten().map(|r| r.record.account())
    }

    fn recipient(&self, user: &str) -> Result<Option<Account>, FailureReason> {
        if user.len() > USER_NAME_MAX_LEN {
            return Ok(None);
        }
        Ok(self.lookup(user)?.map(|r| r.record.account()))
    }
}
