//! [`PgStore`] and [`PgMaildrop`]: the [`Store`] and [`Maildrop`] traits on PostgreSQL.
//!
//! The traits are blocking, and the server calls them off its async threads (the blocking pool
//! or its login threads), never on a runtime worker. So each call here runs its database work
//! on the server's own runtime ([`tokio::runtime::Handle::block_on`] from that blocking thread):
//! the queries' I/O is driven by the runtime's workers as any socket's, no second runtime exists,
//! and no worker ever blocks. Calling these methods on a runtime worker is a bug (tokio panics).
//!
//! The maildrop lock is a lease row: taken at open with a fresh fencing token, pushed forward
//! every third of its length by a task of the runtime while the [`PgMaildrop`] lives, deleted
//! by [`Maildrop::release`] before QUIT's answer (or by a task when the maildrop is dropped).
//! UPDATE commits only while the row still carries the session's token.

use std::future::Future;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use facteur_proto::{MessageMeta, Uidl};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio_postgres::error::SqlState;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::{check_schema, db_error, CHUNK_SIZE};
use crate::name::WireCounter;
use crate::{Delivered, Maildrop, Owner, Store, StoreError};

/// How long opening a maildrop (lease and listing) may take.
const OPEN_DEADLINE: Duration = Duration::from_secs(30);
/// How long fetching one chunk of a message may take.
const CHUNK_DEADLINE: Duration = Duration::from_secs(30);
/// How long UPDATE may take, retries included. A deadline that passes during the commit leaves
/// its outcome unknown to the session: it answers `-ERR`, and the next session's listing shows
/// what the database decided.
const UPDATE_DEADLINE: Duration = Duration::from_secs(60);
/// How long one database statement of a delivery may take (reading the message is not timed
/// here: the delivering program owns its input).
const DELIVERY_STATEMENT_DEADLINE: Duration = Duration::from_secs(30);
/// Attempts of the UPDATE transaction when the database reports a serialization failure or a
/// deadlock (SQLSTATE 40001, 40P01): the normal way CockroachDB and serializable PostgreSQL ask
/// a client to try again.
const UPDATE_ATTEMPTS: u32 = 5;
/// The longest maildrop name stored (the user name; a login name is far shorter).
const MAX_NAME: usize = 512;

/// What a [`PgStore`] needs besides its pool.
#[derive(Clone, Debug)]
pub struct PgStoreConfig {
    /// The connection string (`host=/run/postgresql dbname=mail`, or a `postgresql://` URL).
    pub url: String,
    /// Connections this process opens at most.
    pub pool_size: usize,
    /// How long a maildrop's lease lasts without renewal (`[store] lease_secs`).
    pub lease: Duration,
    /// How the lease statements commit (`[store] lease_commit`).
    pub lease_commit: LeaseCommit,
}

/// How the lease statements commit (`[store] lease_commit`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LeaseCommit {
    /// Without waiting for the disk (`synchronous_commit = off` on connections of their own):
    /// more sessions per second on one node beside its database (measured with
    /// bench/pg_queries.sh), and safe, as [`super::connect_pool_without_commit_wait`] says.
    #[default]
    Asynchronous,
    /// Each lease change waits for its flush, as every other commit does: for databases that
    /// refuse the setting.
    Synchronous,
}

/// The PostgreSQL store; cheap to clone (one pool shared).
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Durable commits: deliveries and UPDATE.
    pool: Pool,
    /// Commits that do not wait for the disk: leases, and reads (see
    /// [`super::connect_pool_without_commit_wait`]). The same pool as `pool` with
    /// [`LeaseCommit::Synchronous`].
    lease_pool: Pool,
    runtime: Handle,
    lease: Duration,
    renew_every: Duration,
    /// Who holds a lease, for the administrator reading the `leases` table: host and pid.
    holder: String,
}

impl PgStore {
    /// Connects to the database and checks its schema. Must run inside the multi-thread tokio
    /// runtime that will drive the store's I/O from then on.
    pub async fn connect(config: &PgStoreConfig) -> Result<Self, StoreError> {
        let pool = super::connect_pool(&config.url, config.pool_size).await?;
        Self::with_pool(pool, config).await
    }

    /// The store on a pool made elsewhere (the one `serve` shares with the SQL users); checks
    /// the schema. With [`LeaseCommit::Asynchronous`], a second pool of `config.pool_size`
    /// connections to `config.url` serves the leases and the reads.
    pub async fn with_pool(pool: Pool, config: &PgStoreConfig) -> Result<Self, StoreError> {
        let client = pool
            .get()
            .await
            .map_err(db_error("connect to the database"))?;
        let plain: &tokio_postgres::Client = &client;
        check_schema(plain).await?;
        drop(client);
        let lease_pool = match config.lease_commit {
            LeaseCommit::Synchronous => pool.clone(),
            // A database that refuses the setting says so now, not at the first login.
            LeaseCommit::Asynchronous => {
                super::connect_pool_without_commit_wait(&config.url, config.pool_size)
                    .await
                    .map_err(|e| match e {
                        StoreError::Database { detail, .. } => StoreError::Database {
                            what: "connect with synchronous_commit = off (set [store] \
                                   lease_commit = \"sync\" if this database does not know it)",
                            detail,
                        },
                        e => e,
                    })?
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                lease_pool,
                runtime: Handle::current(),
                lease: config.lease,
                renew_every: config.lease / 3,
                holder: format!("{} pid {}", crate::deliver::hostname(), std::process::id()),
            }),
        })
    }

    /// Renew leases every `every` instead of every third of the lease. A period longer than the
    /// lease makes a node that stalls (a partition, a pause): its lease expires while its
    /// session still runs, as the tests need.
    pub fn with_renewal_every(self, every: Duration) -> Self {
        let inner = Inner {
            pool: self.inner.pool.clone(),
            lease_pool: self.inner.lease_pool.clone(),
            runtime: self.inner.runtime.clone(),
            lease: self.inner.lease,
            renew_every: every,
            holder: self.inner.holder.clone(),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// `SHOW synchronous_commit` on a connection of the lease pool, then of the durable pool:
    /// what the tests check.
    #[doc(hidden)]
    pub async fn commit_settings(&self) -> Result<(String, String), StoreError> {
        let mut settings = Vec::new();
        for client in [self.inner.lease_client().await?, self.inner.client().await?] {
            let row = client
                .query_one("SHOW synchronous_commit", &[])
                .await
                .map_err(db_error("read synchronous_commit"))?;
            settings.push(row.get::<_, String>(0));
        }
        let durable = settings.pop().unwrap_or_default();
        Ok((settings.pop().unwrap_or_default(), durable))
    }

    /// [`Store::open`], for callers on the runtime.
    pub async fn open_async(&self, user: &str) -> Result<PgMaildrop, StoreError> {
        within(OPEN_DEADLINE, "open the maildrop", self.inner.open(user)).await
    }

    /// [`Store::deliver`], for callers on the runtime. Reading `message` blocks the thread.
    pub async fn deliver_async(
        &self,
        user: &str,
        message: &mut dyn Read,
    ) -> Result<Delivered, StoreError> {
        self.inner.deliver(user, message).await
    }
}

/// Runs `f` within `limit`, or fails saying what could not be done in time.
pub(super) async fn within<T>(
    limit: Duration,
    what: &'static str,
    f: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Database {
            what,
            detail: format!("no answer within {} s", limit.as_secs()),
        }),
    }
}

pub(super) const TAKE_LEASE: &str = "INSERT INTO leases (maildrop_id, token, holder, expires_at) \
     VALUES ($1, $2, $3, now() + $4::float8 * interval '1 second') \
     ON CONFLICT (maildrop_id) DO UPDATE \
     SET token = excluded.token, holder = excluded.holder, expires_at = excluded.expires_at \
     WHERE leases.expires_at <= now() \
     RETURNING token";

/// Opening a maildrop by its name: its id, and whether this session's lease was taken. No row:
/// the maildrop does not exist yet. The lease row stays once made (a release expires it and
/// changes its token), so a login updates one row in place and never inserts, and the foreign
/// key on `maildrops` is checked once per maildrop, not once per session.
const OPEN: &str = "WITH md AS (SELECT id FROM maildrops WHERE name = $1), \
     taken AS (INSERT INTO leases (maildrop_id, token, holder, expires_at) \
       SELECT id, $2, $3, now() + $4::float8 * interval '1 second' FROM md \
       ON CONFLICT (maildrop_id) DO UPDATE \
       SET token = excluded.token, holder = excluded.holder, expires_at = excluded.expires_at \
       WHERE leases.expires_at <= now() \
       RETURNING maildrop_id) \
     SELECT md.id, (SELECT count(*) FROM taken) > 0 FROM md";

const FIND_MAILDROP: &str = "SELECT id FROM maildrops WHERE name = $1";

const RENEW_LEASE: &str =
    "UPDATE leases SET expires_at = now() + $3::float8 * interval '1 second' \
     WHERE maildrop_id = $1 AND token = $2";

/// Ends a lease: it expires now, and a fresh token (`$3`) makes sure the old one fences nothing.
pub(super) const RELEASE_LEASE: &str =
    "UPDATE leases SET token = $3, expires_at = now() WHERE maildrop_id = $1 AND token = $2";

/// The snapshot, by the maildrop's name so that it can be sent with the lease statement in one round trip.
/// It runs after the lease statement on the same connection; it is thrown away unless the lease was taken.
/// Public for the test that checks its plan (an index-only scan, no sort).
/// (The maildrop's id comes from a scalar subquery, not a join: so the planner knows it is one
/// value, and reads the index in its order with no sort.)
pub const LISTING: &str = "SELECT id, uid, wire_size FROM messages \
     WHERE maildrop_id = (SELECT id FROM maildrops WHERE name = $1) \
     ORDER BY delivered_at, id";

/// The start of a message: how many chunks it has, and the first one (none for an empty
/// message). Most messages are one chunk: one query per RETR.
const FIRST_CHUNK: &str = "SELECT m.chunks, c.data FROM messages m \
     LEFT JOIN message_chunks c ON c.message_id = m.id AND c.seq = 0 \
     WHERE m.id = $1 AND m.maildrop_id = $2";

/// LOGIN-DELAY: records the login unless the last one is less than `$2` seconds old; no row
/// returned: refused. One statement on one row, so two logins at once cannot both pass.
const LOGIN_DELAY: &str = "UPDATE maildrops SET last_login_at = now() \
     WHERE id = $1 AND (last_login_at IS NULL \
       OR last_login_at <= now() - $2::float8 * interval '1 second' \
       OR last_login_at > now()) \
     RETURNING 1";

/// EXPIRE at login: removes the messages first retrieved at least `$2` seconds ago, while the
/// session's lease (`$3`) holds.
const EXPIRE: &str = "DELETE FROM messages \
     WHERE maildrop_id = $1 AND first_retrieved_at <= now() - $2::float8 * interval '1 second' \
       AND EXISTS (SELECT 1 FROM leases WHERE maildrop_id = $1 AND token = $3) \
     RETURNING id";

/// UPDATE: the first retrieval time of the messages `$2` that have none, while the lease
/// (`$3`) holds; returns 1 if the lease holds.
const RECORD_RETRIEVALS: &str =
    "WITH held AS (SELECT 1 FROM leases WHERE maildrop_id = $1 AND token = $3), \
     stamped AS (UPDATE messages SET first_retrieved_at = now() \
       WHERE maildrop_id = $1 AND id = ANY($2) AND first_retrieved_at IS NULL \
         AND EXISTS (SELECT 1 FROM held) RETURNING 1) \
     SELECT count(*) FROM held";

const NEXT_CHUNK: &str = "SELECT data FROM message_chunks WHERE message_id = $1 AND seq = $2";

/// A statement prepared once per connection of the pool (deadpool keeps it), so that each use
/// costs the database one round trip and no parsing.
pub(super) async fn prepared(
    client: &Object,
    sql: &str,
    what: &'static str,
) -> Result<tokio_postgres::Statement, StoreError> {
    client.prepare_cached(sql).await.map_err(db_error(what))
}

impl Inner {
    /// A connection for durable writes (deliveries, UPDATE).
    async fn client(&self) -> Result<Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(db_error("get a database connection"))
    }

    /// A connection for leases and reads.
    async fn lease_client(&self) -> Result<Object, StoreError> {
        self.lease_pool
            .get()
            .await
            .map_err(db_error("get a database connection"))
    }

    /// Ends the lease `token` on `maildrop_id`, if it still holds it.
    async fn release(&self, maildrop_id: Uuid, token: Uuid) -> Result<u64, StoreError> {
        let client = self.lease_client().await?;
        let release = prepared(&client, RELEASE_LEASE, "release the lease").await?;
        client
            .execute(&release, &[&maildrop_id, &token, &Uuid::new_v4()])
            .await
            .map_err(db_error("release the lease"))
    }

    /// The id of `user`'s maildrop, made on first use.
    async fn maildrop_id(&self, client: &Object, user: &str) -> Result<Uuid, StoreError> {
        check_name(user)?;
        let find = prepared(client, FIND_MAILDROP, "prepare the maildrop lookup").await?;
        if let Some(row) = client
            .query_opt(&find, &[&user])
            .await
            .map_err(db_error("find the maildrop"))?
        {
            return Ok(row.get(0));
        }
        let plain: &tokio_postgres::Client = client;
        maildrop_id(plain, user).await
    }

    async fn open(self: &Arc<Self>, user: &str) -> Result<PgMaildrop, StoreError> {
        check_name(user)?;
        let client = self.lease_client().await?;
        let open = prepared(&client, OPEN, "prepare the maildrop's opening").await?;
        let listing = prepared(&client, LISTING, "prepare the listing").await?;
        let token = Uuid::new_v4();
        let lease_secs = self.lease.as_secs_f64();
        let mut created = false;
        let (maildrop_id, rows) = loop {
            // One round trip: the lease and the listing are sent together (tokio-postgres
            // pipelines concurrent queries on one connection) and run in that order.
            let (taken, rows) = futures_util::future::join(
                client.query_opt(&open, &[&user, &token, &self.holder, &lease_secs]),
                client.query_raw(&listing, [user]),
            )
            .await;
            let taken = taken.map_err(db_error("take the maildrop's lease"))?;
            match taken {
                Some(row) if row.get::<_, bool>(1) => break (row.get::<_, Uuid>(0), rows),
                Some(_) => return Err(StoreError::InUse),
                // The first login before any delivery: make the maildrop, then again.
                None if !created => {
                    drop(rows);
                    self.maildrop_id(&client, user).await?;
                    created = true;
                }
                None => {
                    return Err(StoreError::Database {
                        what: "open the maildrop",
                        detail: "the maildrop vanished while it was being opened".into(),
                    })
                }
            }
        };
        // From here on, dropping the lease (on any error below) releases it.
        let lease = Lease::start(Arc::clone(self), maildrop_id, token);
        // Row by row as they arrive: a maildrop of 100,000 messages is never held twice.
        let rows = rows.map_err(db_error("list the maildrop"))?;
        let mut rows = std::pin::pin!(rows);
        let mut messages = Vec::new();
        let mut entries = Vec::new();
        while let Some(row) = rows.next().await {
            let row = row.map_err(db_error("list the maildrop"))?;
            let id: Uuid = row.get(0);
            let uid: &str = row.get(1);
            let size: i64 = row.get(2);
            match (Uidl::new(uid), u64::try_from(size)) {
                (Some(uid), Ok(size)) => {
                    messages.push(MessageMeta { size, uid });
                    entries.push((id, size));
                }
                // The schema's checks keep these out; a row that slipped in is skipped, never
                // fatal to the session.
                _ => {
                    tracing::warn!(message = %id, "skipping a message with an invalid unique-id or size")
                }
            }
        }
        messages.shrink_to_fit();
        entries.shrink_to_fit();
        Ok(PgMaildrop {
            store: Arc::clone(self),
            lease,
            messages,
            entries,
        })
    }

    async fn deliver(&self, user: &str, message: &mut dyn Read) -> Result<Delivered, StoreError> {
        let mut client = within(
            DELIVERY_STATEMENT_DEADLINE,
            "get a database connection",
            self.client(),
        )
        .await?;
        let maildrop_id = within(
            DELIVERY_STATEMENT_DEADLINE,
            "find the maildrop",
            self.maildrop_id(&client, user),
        )
        .await?;
        let tx = within(DELIVERY_STATEMENT_DEADLINE, "begin a delivery", async {
            client
                .transaction()
                .await
                .map_err(db_error("begin a delivery"))
        })
        .await?;
        let id = Uuid::new_v4();
        let uid = id.simple().to_string();
        within(DELIVERY_STATEMENT_DEADLINE, "record the message", async {
            let insert = tx
                .prepare_cached(
                    "INSERT INTO messages \
                     (id, maildrop_id, uid, wire_size, octets, chunks, sha256, delivered_at) \
                     VALUES ($1, $2, $3, 0, 0, 0, ''::bytea, now())",
                )
                .await
                .map_err(db_error("record the message"))?;
            tx.execute(&insert, &[&id, &maildrop_id, &uid])
                .await
                .map_err(db_error("record the message"))
        })
        .await?;
        let insert_chunk = within(
            DELIVERY_STATEMENT_DEADLINE,
            "prepare the chunk insert",
            async {
                tx.prepare_cached(
                    "INSERT INTO message_chunks (message_id, seq, data) VALUES ($1, $2, $3)",
                )
                .await
                .map_err(db_error("prepare the chunk insert"))
            },
        )
        .await?;
        let mut buf = vec![0u8; CHUNK_SIZE];
        let mut counter = WireCounter::default();
        let mut hash = Sha256::new();
        let mut seq: i32 = 0;
        loop {
            let n = fill(message, &mut buf).map_err(StoreError::Source)?;
            if n == 0 {
                break;
            }
            let block = buf.get(..n).unwrap_or_default();
            counter.feed(block);
            hash.update(block);
            within(
                DELIVERY_STATEMENT_DEADLINE,
                "store a chunk of the message",
                async {
                    tx.execute(&insert_chunk, &[&id, &seq, &block])
                        .await
                        .map_err(db_error("store a chunk of the message"))
                },
            )
            .await?;
            seq = seq
                .checked_add(1)
                .ok_or(StoreError::Source(io::Error::other(
                    "message too large for the store",
                )))?;
            if n < buf.len() {
                break;
            }
        }
        let (size, wire_size) = (counter.size(), counter.wire_size());
        let sizes = (i64::try_from(size), i64::try_from(wire_size));
        let (Ok(octets), Ok(wire)) = sizes else {
            return Err(StoreError::Source(io::Error::other(
                "message too large for the store",
            )));
        };
        let digest = hash.finalize().to_vec();
        within(DELIVERY_STATEMENT_DEADLINE, "complete the message", async {
            let complete = tx
                .prepare_cached(
                    "UPDATE messages SET wire_size = $2, octets = $3, chunks = $4, sha256 = $5 \
                     WHERE id = $1",
                )
                .await
                .map_err(db_error("complete the message"))?;
            tx.execute(&complete, &[&id, &wire, &octets, &seq, &digest])
                .await
                .map_err(db_error("complete the message"))
        })
        .await?;
        within(DELIVERY_STATEMENT_DEADLINE, "commit the delivery", async {
            tx.commit().await.map_err(db_error("commit the delivery"))
        })
        .await?;
        Ok(Delivered {
            path: format!("postgresql:{user}/{uid}").into(),
            size,
            wire_size,
        })
    }
}

/// Refuses a maildrop name the store does not keep: empty, too long, or with control characters.
fn check_name(user: &str) -> Result<(), StoreError> {
    if user.is_empty() || user.len() > MAX_NAME || user.contains(|c: char| c.is_control()) {
        return Err(StoreError::BadUser(user.to_owned()));
    }
    Ok(())
}

/// The id of `user`'s maildrop, made on first use.
pub(super) async fn maildrop_id(
    client: &impl GenericClient,
    user: &str,
) -> Result<Uuid, StoreError> {
    check_name(user)?;
    let find = FIND_MAILDROP;
    if let Some(row) = client
        .query_opt(find, &[&user])
        .await
        .map_err(db_error("find the maildrop"))?
    {
        return Ok(row.get(0));
    }
    client
        .execute(
            "INSERT INTO maildrops (id, name) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&Uuid::new_v4(), &user],
        )
        .await
        .map_err(db_error("create the maildrop"))?;
    let row = client
        .query_one(find, &[&user])
        .await
        .map_err(db_error("find the maildrop"))?;
    Ok(row.get(0))
}

/// Reads until `buf` is full or the input ends; returns the octets read.
pub(super) fn fill(input: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..).filter(|r| !r.is_empty()) {
        match input.read(rest) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// A session's lease on one maildrop: renewed by a task while it lives, released when dropped.
struct Lease {
    store: Arc<Inner>,
    maildrop_id: Uuid,
    token: Uuid,
    /// Dropping it stops the renewals.
    stop: Option<oneshot::Sender<()>>,
    /// Set when a renewal found the lease taken by another session.
    lost: Arc<AtomicBool>,
    /// Set once [`Lease::release_now`] has deleted the row: nothing is left for the drop to do.
    released: bool,
}

impl Lease {
    fn start(store: Arc<Inner>, maildrop_id: Uuid, token: Uuid) -> Self {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let lost = Arc::new(AtomicBool::new(false));
        let (task_store, task_lost) = (Arc::clone(&store), Arc::clone(&lost));
        store.runtime.spawn(async move {
            let every = task_store.renew_every;
            loop {
                // The sender dropped (or sent): the session is over.
                if tokio::time::timeout(every, &mut stopped).await.is_ok() {
                    return;
                }
                let renewed = within(every.max(Duration::from_secs(1)), "renew the lease", async {
                    let client = task_store.lease_client().await?;
                    let renew = prepared(&client, RENEW_LEASE, "renew the lease").await?;
                    client
                        .execute(&renew, &[&maildrop_id, &token, &task_store.lease.as_secs_f64()])
                        .await
                        .map_err(db_error("renew the lease"))
                })
                .await;
                match renewed {
                    Ok(1) => {}
                    // The session released the row itself meanwhile (QUIT): nothing was lost.
                    Ok(_) if !matches!(stopped.try_recv(), Err(oneshot::error::TryRecvError::Empty)) => {
                        return;
                    }
                    Ok(_) => {
                        tracing::warn!(maildrop = %maildrop_id, "the maildrop's lease was taken by another session");
                        task_lost.store(true, Ordering::Relaxed);
                        return;
                    }
                    // The next period tries again; the lease lasts three of them.
                    Err(e) => tracing::warn!(maildrop = %maildrop_id, error = %e, "cannot renew the maildrop's lease"),
                }
            }
        });
        Self {
            store,
            maildrop_id,
            token,
            stop: Some(stop),
            lost,
            released: false,
        }
    }

    /// Stops the renewals and deletes the lease row, now (within [`OPEN_DEADLINE`]). Once it
    /// returns `Ok`, another session may take the maildrop.
    async fn release_now(&mut self) -> Result<(), StoreError> {
        drop(self.stop.take());
        let (store, maildrop_id, token) = (&self.store, self.maildrop_id, self.token);
        within(
            OPEN_DEADLINE,
            "release the lease",
            store.release(maildrop_id, token),
        )
        .await?;
        self.released = true;
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        drop(self.stop.take());
        if self.released {
            return;
        }
        // Dropped anywhere (a blocking thread, a runtime worker): the release runs as a task.
        // If it never runs (the runtime is going away), the lease expires by itself.
        let (store, maildrop_id, token) = (Arc::clone(&self.store), self.maildrop_id, self.token);
        self.store.runtime.spawn(async move {
            let released =
                within(OPEN_DEADLINE, "release the lease", store.release(maildrop_id, token)).await;
            if let Err(e) = released {
                tracing::warn!(maildrop = %maildrop_id, error = %e, "cannot release the maildrop's lease; it will expire");
            }
        });
    }
}

/// One leased maildrop of the PostgreSQL store.
pub struct PgMaildrop {
    store: Arc<Inner>,
    lease: Lease,
    messages: Vec<MessageMeta>,
    /// Per message number: the message's id and wire size (kept after `take_messages`).
    entries: Vec<(Uuid, u64)>,
}

/// Why one try of the UPDATE transaction failed.
enum Attempt {
    /// A serialization failure or a deadlock: try again.
    Retry(tokio_postgres::Error),
    Fail(StoreError),
}

impl PgMaildrop {
    /// True once a renewal found the lease taken by another session.
    pub fn lease_lost(&self) -> bool {
        self.lease.lost.load(Ordering::Relaxed)
    }

    /// [`Maildrop::open_message`], for callers on the runtime.
    pub async fn open_message_async(&self, index: usize) -> Result<ChunkReader, StoreError> {
        let &(id, _) = self
            .entries
            .get(index)
            .ok_or(StoreError::NoSuchMessage(index + 1))?;
        let store = &self.store;
        let row = within(CHUNK_DEADLINE, "open the message", async {
            let client = store.lease_client().await?;
            let first = prepared(&client, FIRST_CHUNK, "prepare the message's opening").await?;
            client
                .query_opt(&first, &[&id, &self.lease.maildrop_id])
                .await
                .map_err(db_error("open the message"))
        })
        .await?;
        let row = row.ok_or(StoreError::Vanished(index + 1))?;
        let chunks: i32 = row.get(0);
        let first: Option<Vec<u8>> = row.get(1);
        let mut reader = ChunkReader {
            store: Arc::clone(&self.store),
            message_id: id,
            chunks,
            next: 0,
            chunk: Vec::new(),
            pos: 0,
        };
        if chunks > 0 {
            let corrupt = |e: io::Error| StoreError::Database {
                what: "open the message",
                detail: e.to_string(),
            };
            let first = first.ok_or_else(|| corrupt(reader.missing(0)))?;
            reader.chunk = reader.checked(0, first).map_err(corrupt)?;
            reader.next = 1;
        }
        Ok(reader)
    }

    /// [`Maildrop::check_login_delay`], for callers on the runtime.
    pub async fn check_login_delay_async(&self, delay: Duration) -> Result<(), StoreError> {
        let store = &self.store;
        let passed = within(OPEN_DEADLINE, "check the login delay", async {
            let client = store.client().await?;
            let check = prepared(&client, LOGIN_DELAY, "check the login delay").await?;
            client
                .query_opt(&check, &[&self.lease.maildrop_id, &delay.as_secs_f64()])
                .await
                .map_err(db_error("check the login delay"))
        })
        .await?;
        match passed {
            Some(_) => Ok(()),
            None => Err(StoreError::LoginDelay),
        }
    }

    /// [`Maildrop::expire`], for callers on the runtime.
    pub async fn expire_async(&mut self, after: Duration) -> Result<usize, StoreError> {
        let store = &self.store;
        let (maildrop, token) = (self.lease.maildrop_id, self.lease.token);
        let rows = within(UPDATE_DEADLINE, "expire messages", async {
            let client = store.client().await?;
            let expire = prepared(&client, EXPIRE, "expire messages").await?;
            client
                .query(&expire, &[&maildrop, &after.as_secs_f64(), &token])
                .await
                .map_err(db_error("expire messages"))
        })
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let gone: std::collections::HashSet<Uuid> = rows.iter().map(|r| r.get(0)).collect();
        // Out of the snapshot too (before it is handed over, as the trait requires).
        let keep: Vec<bool> = self
            .entries
            .iter()
            .map(|(id, _)| !gone.contains(id))
            .collect();
        if self.messages.len() == keep.len() {
            let mut flags = keep.iter();
            self.messages
                .retain(|_| flags.next().copied().unwrap_or(true));
        }
        let mut flags = keep.iter();
        self.entries
            .retain(|_| flags.next().copied().unwrap_or(true));
        Ok(gone.len())
    }

    /// [`Maildrop::record_retrievals`], for callers on the runtime.
    pub async fn record_retrievals_async(&self, indices: &[usize]) -> Result<(), StoreError> {
        let mut ids = Vec::with_capacity(indices.len());
        for &i in indices {
            let &(id, _) = self
                .entries
                .get(i)
                .ok_or(StoreError::NoSuchMessage(i + 1))?;
            ids.push(id);
        }
        if ids.is_empty() {
            return Ok(());
        }
        let store = &self.store;
        let (maildrop, token) = (self.lease.maildrop_id, self.lease.token);
        let held: i64 = within(UPDATE_DEADLINE, "record the retrievals", async {
            let client = store.client().await?;
            let record = prepared(&client, RECORD_RETRIEVALS, "record the retrievals").await?;
            client
                .query_one(&record, &[&maildrop, &ids, &token])
                .await
                .map(|r| r.get(0))
                .map_err(db_error("record the retrievals"))
        })
        .await?;
        if held == 0 {
            self.lease.lost.store(true, Ordering::Relaxed);
            return Err(StoreError::LeaseLost);
        }
        Ok(())
    }

    /// [`Maildrop::release`], for callers on the runtime.
    pub async fn release_async(&mut self) -> Result<(), StoreError> {
        self.lease.release_now().await
    }

    /// [`Maildrop::apply_deletions`], for callers on the runtime.
    pub async fn apply_deletions_async(&self, indices: &[usize]) -> Result<(), StoreError> {
        let mut ids = Vec::with_capacity(indices.len());
        for &i in indices {
            let &(id, _) = self
                .entries
                .get(i)
                .ok_or(StoreError::NoSuchMessage(i + 1))?;
            ids.push(id);
        }
        if ids.is_empty() {
            return Ok(());
        }
        within(UPDATE_DEADLINE, "apply the deletions", async {
            let mut attempt = 1;
            loop {
                match self.try_delete(&ids).await {
                    Ok(()) => return Ok(()),
                    Err(Attempt::Retry(e)) if attempt < UPDATE_ATTEMPTS => {
                        tracing::debug!(error = %e, attempt, "UPDATE: serialization failure, retrying");
                        let backoff = 20u64 << attempt;
                        tokio::time::sleep(Duration::from_millis(backoff)).await;
                        attempt += 1;
                    }
                    Err(Attempt::Retry(e)) => return Err(db_error("apply the deletions")(e)),
                    Err(Attempt::Fail(e)) => return Err(e),
                }
            }
        })
        .await
    }

    /// One try of the UPDATE transaction: lock the lease row, check it still carries this
    /// session's token, delete, commit.
    async fn try_delete(&self, ids: &[Uuid]) -> Result<(), Attempt> {
        let classify = |what: &'static str| {
            move |e: tokio_postgres::Error| match e.code() {
                Some(c)
                    if *c == SqlState::T_R_SERIALIZATION_FAILURE
                        || *c == SqlState::T_R_DEADLOCK_DETECTED =>
                {
                    Attempt::Retry(e)
                }
                _ => Attempt::Fail(db_error(what)(e)),
            }
        };
        let mut client = self.store.client().await.map_err(Attempt::Fail)?;
        let tx = client
            .transaction()
            .await
            .map_err(classify("begin the UPDATE"))?;
        let check = tx
            .prepare_cached("SELECT 1 FROM leases WHERE maildrop_id = $1 AND token = $2 FOR UPDATE")
            .await
            .map_err(classify("check the lease"))?;
        let held = tx
            .query_opt(&check, &[&self.lease.maildrop_id, &self.lease.token])
            .await
            .map_err(classify("check the lease"))?;
        if held.is_none() {
            self.lease.lost.store(true, Ordering::Relaxed);
            return Err(Attempt::Fail(StoreError::LeaseLost));
        }
        let delete = tx
            .prepare_cached("DELETE FROM messages WHERE maildrop_id = $1 AND id = ANY($2)")
            .await
            .map_err(classify("delete the messages"))?;
        tx.execute(&delete, &[&self.lease.maildrop_id, &ids])
            .await
            .map_err(classify("delete the messages"))?;
        tx.commit().await.map_err(classify("commit the UPDATE"))
    }
}

impl Maildrop for PgMaildrop {
    fn messages(&self) -> &[MessageMeta] {
        &self.messages
    }

    fn take_messages(&mut self) -> std::sync::Arc<Vec<MessageMeta>> {
        std::sync::Arc::new(std::mem::take(&mut self.messages))
    }

    fn size(&self, index: usize) -> Option<u64> {
        self.entries.get(index).map(|&(_, size)| size)
    }

    fn sizes_known(&self) -> bool {
        true
    }

    fn compute_sizes(&mut self) -> Result<Vec<u64>, StoreError> {
        Ok(self.entries.iter().map(|&(_, size)| size).collect())
    }

    fn open_message(&mut self, index: usize) -> Result<Box<dyn Read + Send>, StoreError> {
        let runtime = self.store.runtime.clone();
        let reader = runtime.block_on(self.open_message_async(index))?;
        Ok(Box::new(reader))
    }

    fn apply_deletions(&mut self, indices: &[usize]) -> Result<(), StoreError> {
        let runtime = self.store.runtime.clone();
        runtime.block_on(self.apply_deletions_async(indices))
    }

    fn check_login_delay(&mut self, delay: Duration) -> Result<(), StoreError> {
        let runtime = self.store.runtime.clone();
        runtime.block_on(self.check_login_delay_async(delay))
    }

    fn expire(&mut self, after: Duration) -> Result<usize, StoreError> {
        let runtime = self.store.runtime.clone();
        runtime.block_on(self.expire_async(after))
    }

    fn record_retrievals(&mut self, indices: &[usize]) -> Result<(), StoreError> {
        let runtime = self.store.runtime.clone();
        runtime.block_on(self.record_retrievals_async(indices))
    }

    fn release(&mut self) -> Result<(), StoreError> {
        let runtime = self.store.runtime.clone();
        runtime.block_on(self.release_async())
    }

    fn release_blocks(&self) -> bool {
        true
    }
}

/// A message read chunk by chunk: one chunk (at most [`CHUNK_SIZE`] octets) in memory at a time.
pub struct ChunkReader {
    store: Arc<Inner>,
    message_id: Uuid,
    chunks: i32,
    next: i32,
    chunk: Vec<u8>,
    pos: usize,
}

impl ChunkReader {
    /// The next chunk, or `None` after the last.
    pub async fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        if self.next >= self.chunks {
            return Ok(None);
        }
        let (store, id, seq) = (&self.store, self.message_id, self.next);
        let row = within(CHUNK_DEADLINE, "read a chunk of the message", async {
            let client = store.lease_client().await?;
            let next = prepared(&client, NEXT_CHUNK, "prepare the chunk read").await?;
            client
                .query_opt(&next, &[&id, &seq])
                .await
                .map_err(db_error("read a chunk of the message"))
        })
        .await
        .map_err(io::Error::other)?;
        let data = row.ok_or_else(|| self.missing(seq))?.get(0);
        let data = self.checked(seq, data)?;
        self.next += 1;
        Ok(Some(data))
    }

    fn missing(&self, seq: i32) -> io::Error {
        io::Error::other(format!(
            "chunk {seq} of message {} is missing from the database",
            self.message_id
        ))
    }

    /// `data`, if it has the size a chunk may have.
    fn checked(&self, seq: i32, data: Vec<u8>) -> io::Result<Vec<u8>> {
        if data.is_empty() || data.len() > CHUNK_SIZE {
            return Err(io::Error::other(format!(
                "chunk {seq} of message {} has {} octets",
                self.message_id,
                data.len()
            )));
        }
        Ok(data)
    }
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.chunk.len() {
            let runtime = self.store.runtime.clone();
            match runtime.block_on(self.next_chunk())? {
                Some(chunk) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let rest = self.chunk.get(self.pos..).unwrap_or_default();
        let n = rest.len().min(out.len());
        out.get_mut(..n)
            .unwrap_or_default()
            .copy_from_slice(rest.get(..n).unwrap_or_default());
        self.pos += n;
        Ok(n)
    }
}

impl Store for PgStore {
    /// `home` and `owner` mean nothing here: the maildrop is the user name's row.
    fn open_as(
        &self,
        user: &str,
        _home: Option<&str>,
        _owner: Owner,
    ) -> Result<Box<dyn Maildrop>, StoreError> {
        let maildrop = self.inner.runtime.block_on(self.open_async(user))?;
        Ok(Box::new(maildrop))
    }

    fn deliver_as(
        &self,
        user: &str,
        _home: Option<&str>,
        _owner: Owner,
        message: &mut dyn Read,
    ) -> Result<Delivered, StoreError> {
        self.inner
            .runtime
            .block_on(self.deliver_async(user, message))
    }

    /// `SELECT 1` on a connection of each pool, within the connect timeout.
    fn check_health(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        inner
            .runtime
            .block_on(within(OPEN_DEADLINE, "check the database", async {
                for client in [inner.client().await?, inner.lease_client().await?] {
                    client
                        .simple_query("SELECT 1")
                        .await
                        .map_err(db_error("check the database"))?;
                }
                Ok(())
            }))
    }
}
