//! The PostgreSQL store (cargo feature `postgres`): maildrops shared by any number of server
//! nodes, in a PostgreSQL database or a PostgreSQL-wire distributed one (CockroachDB,
//! YugabyteDB).
//!
//! What it must never do: hold a message whole in memory (messages are stored and read in chunks
//! of at most [`CHUNK_SIZE`] octets); use what only PostgreSQL has (sequences, advisory locks,
//! LISTEN/NOTIFY); apply a session's deletions once that session has lost its lease.
//!
//! ## Layout
//! - [`schema`]: the versions of the schema, `facteur db migrate`, and the check at start.
//! - `store`: [`PgStore`] and [`PgMaildrop`]: leases, the snapshot, streaming, UPDATE, delivery.
//! - [`migrate`](mod@migrate): `facteur migrate`, copying Maildirs into the store.
//! - this module: the connection pool, and the errors of the database as [`StoreError`]s.

pub mod migrate;
pub mod schema;
mod store;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::StoreError;

pub use schema::{check_schema, migrate, Migrated, SCHEMA_VERSION};
pub use store::{ChunkReader, PgMaildrop, PgStore, PgStoreConfig, LISTING};

/// The most octets one row of `message_chunks` holds.
pub const CHUNK_SIZE: usize = 64 * 1024;

/// How long a new connection to the database may take before the attempt fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a session waits for a free connection of the pool before it fails (`[SYS/TEMP]`).
pub const POOL_WAIT: Duration = Duration::from_secs(10);

/// The chain of messages of a database error: tokio-postgres puts the server's own message in
/// the source chain, so the top one alone says little.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut detail = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    detail
}

/// Turns a database error into a [`StoreError::Database`] saying what the store was doing.
pub(crate) fn db_error<E: std::error::Error>(what: &'static str) -> impl Fn(E) -> StoreError {
    move |e| StoreError::Database {
        what,
        detail: error_chain(&e),
    }
}

/// Parses a connection string (`host=/run/postgresql dbname=mail` or
/// `postgresql://user@host/mail`), with facteur's connect timeout unless it sets one.
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    let mut config: tokio_postgres::Config =
        url.parse().map_err(db_error("parse the database url"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("facteur");
    }
    Ok(config)
}

/// A pool of at most `size` connections to `url`. No connection is made until one is needed.
pub fn pool(url: &str, size: usize) -> Result<Pool, StoreError> {
    let config = parse_url(url)?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            // A connection that broke is found by the next query; checking each one before use
            // would cost a round trip per checkout.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(db_error("build the connection pool"))
}

/// Runs `f` on one connection of its own to `url`, then closes it.
async fn with_connection<T>(
    url: &str,
    f: impl AsyncFnOnce(&mut tokio_postgres::Client) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let config = parse_url(url)?;
    let (mut client, connection) = config
        .connect(NoTls)
        .await
        .map_err(db_error("connect to the database"))?;
    let driver = tokio::spawn(connection);
    let r = f(&mut client).await;
    drop(client);
    let _ = driver.await;
    r
}

/// `facteur db migrate`: connects to `url` and applies the migrations the database lacks.
pub async fn migrate_url(url: &str) -> Result<Migrated, StoreError> {
    with_connection(url, async |c| migrate(c).await).await
}

/// `facteur check-config`: connects to `url` and checks its schema; returns its version.
pub async fn check_url(url: &str) -> Result<i64, StoreError> {
    with_connection(url, async |c| check_schema(&*c).await).await?;
    Ok(SCHEMA_VERSION)
}
