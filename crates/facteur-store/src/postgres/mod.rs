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
//! - [`tls`]: TLS to the database (libpq's `sslmode`, `sslrootcert`, `sslcert`, `sslkey`) and
//!   SCRAM channel binding.
//! - this module: reading the connection string, the connection pool, and the errors of the
//!   database as [`StoreError`]s.

pub mod migrate;
pub mod schema;
mod store;
pub mod tls;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

use crate::StoreError;

pub use schema::{check_schema, migrate, Migrated, SCHEMA_VERSION};
pub use store::{ChunkReader, LeaseCommit, PgMaildrop, PgStore, PgStoreConfig, LISTING};
pub use tls::{PgTls, SslMode};

/// The most octets one row of `message_chunks` holds.
pub const CHUNK_SIZE: usize = 64 * 1024;

/// How long a new connection to the database may take before the attempt fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a session waits for a free connection of the pool before it fails (`[SYS/TEMP]`).
pub const POOL_WAIT: Duration = Duration::from_secs(10);

/// The chain of messages of a database error: tokio-postgres puts the server's own message in
/// the source chain, so the top one alone says little. A message already said (deadpool and
/// some tokio-postgres errors print their source in their own message) is not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut detail = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let message = s.to_string();
        if !detail.contains(&message) {
            detail.push_str(": ");
            detail.push_str(&message);
        }
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

/// A connection string, read: tokio-postgres' settings and the TLS it asks for.
#[derive(Clone, Debug)]
pub struct Settings {
    pub config: tokio_postgres::Config,
    pub tls: PgTls,
    /// The `sslmode` in force (`disable` when every host is a Unix socket).
    pub mode: SslMode,
    /// Where the database is, for messages: its hosts (and ports), as the string gives them.
    pub target: String,
}

impl Settings {
    /// Where the database is and how it is reached, for `facteur check-config`:
    /// `127.0.0.1:5432 (TLS: sslmode=verify-full)`.
    pub fn describe(&self) -> String {
        let tls = match self.mode {
            SslMode::Disable => "no TLS".to_string(),
            SslMode::Prefer => "TLS if offered, certificate not checked: sslmode=prefer".into(),
            SslMode::Require => "TLS, certificate not checked: sslmode=require".into(),
            m => format!("TLS: sslmode={m}"),
        };
        format!("{} ({tls})", self.target)
    }

    /// `e`, a failed connection, as a one-line error that says where the database is and
    /// what TLS was asked for (a TLS error of ours says it already).
    fn connect_error(&self, e: &dyn std::error::Error) -> StoreError {
        let mut source = e.source();
        let mut ours = None;
        while let Some(s) = source {
            if let Some(t) = s.downcast_ref::<tls::PgTlsError>() {
                ours = Some(t.to_string());
            }
            source = s.source();
        }
        let detail = if let Some(ours) = ours {
            ours
        } else {
            format!(
                "PostgreSQL at {} (sslmode={}): {}",
                self.target,
                self.mode,
                error_chain(e)
            )
        };
        StoreError::Database {
            what: "connect to the database",
            detail,
        }
    }
}

/// Reads a connection string (`host=/run/postgresql dbname=mail` or
/// `postgresql://user@host/mail`, with libpq's `sslmode`, `sslrootcert`, `sslcert` and `sslkey`;
/// see [`tls`]), with facteur's connect timeout unless it sets one. The files the TLS settings
/// name are read now.
pub fn settings(url: &str) -> Result<Settings, StoreError> {
    let bad = |detail: String| StoreError::Database {
        what: "read the database url",
        detail,
    };
    let (rest, params) = tls::split_params(url).map_err(bad)?;
    let mut config: tokio_postgres::Config =
        rest.parse().map_err(db_error("parse the database url"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("facteur");
    }
    // tokio-postgres does TLS only with a host name: `hostaddr` alone stands for it (the name
    // verify-full then checks is the address).
    if config.get_hosts().is_empty() {
        for addr in config.get_hostaddrs().to_vec() {
            config.host(addr.to_string());
        }
    }
    let hosts = config.get_hosts().to_vec();
    // The server never offers TLS on a Unix socket, and libpq does not ask there.
    let only_sockets = !hosts.is_empty()
        && hosts
            .iter()
            .all(|h| matches!(h, tokio_postgres::config::Host::Unix(_)));
    let mode = if only_sockets {
        SslMode::Disable
    } else {
        params.mode
    };
    config.ssl_mode(match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    });
    let tls = PgTls::new(&params).map_err(bad)?;
    let ports = config.get_ports();
    let target = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match h {
                tokio_postgres::config::Host::Tcp(name) if name.contains(':') => {
                    format!("[{name}]:{port}")
                }
                tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                tokio_postgres::config::Host::Unix(path) => {
                    format!("{}/.s.PGSQL.{port}", path.display())
                }
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    Ok(Settings {
        config,
        tls,
        mode,
        target,
    })
}

/// A pool of at most `size` connections to `url`. No connection is made until one is needed.
pub fn pool(url: &str, size: usize) -> Result<Pool, StoreError> {
    pool_of(&settings(url)?, size)
}

/// A pool of at most `size` connections with `settings`; none is made until one is needed.
pub fn pool_of(settings: &Settings, size: usize) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        settings.config.clone(),
        settings.tls.clone(),
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

/// A pool of at most `size` connections to `url`, with one connection made now: a database
/// that cannot be reached (or TLS that fails) is a one-line error at start, naming the host.
/// `serve` hands this one pool to the store and the SQL users when both are on `url`.
pub async fn connect_pool(url: &str, size: usize) -> Result<Pool, StoreError> {
    connect_pool_of(&settings(url)?, size).await
}

/// The setting of the connections of [`connect_pool_without_commit_wait`].
pub const NO_COMMIT_WAIT: &str = "-c synchronous_commit=off";

/// A pool like [`connect_pool`] whose connections commit without waiting for the database to
/// flush the commit to disk (`synchronous_commit = off`, set at connection). A crash of the
/// database may then forget the last fraction of a second of their commits, never corrupt
/// anything. The store uses it for the leases alone (take, renew, release) and for reads: a
/// forgotten lease write only makes a lease look free or held again, and the fencing of UPDATE,
/// which commits durably on the other pool, still lets at most one session apply deletions (a
/// durable commit also flushes every commit written before it).
pub async fn connect_pool_without_commit_wait(url: &str, size: usize) -> Result<Pool, StoreError> {
    let mut settings = settings(url)?;
    let options = match settings.config.get_options() {
        Some(o) if !o.trim().is_empty() => format!("{o} {NO_COMMIT_WAIT}"),
        _ => NO_COMMIT_WAIT.to_owned(),
    };
    settings.config.options(&options);
    connect_pool_of(&settings, size).await
}

async fn connect_pool_of(settings: &Settings, size: usize) -> Result<Pool, StoreError> {
    let pool = pool_of(settings, size)?;
    match pool.get().await {
        Ok(client) => drop(client),
        // The database's own error, without deadpool's words around it.
        Err(deadpool_postgres::PoolError::Backend(e)) => return Err(settings.connect_error(&e)),
        Err(e) => return Err(settings.connect_error(&e)),
    }
    Ok(pool)
}

/// One connection of its own to `url`, and the task that drives it (which ends when the
/// client is dropped).
pub(crate) async fn connect(
    url: &str,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), StoreError> {
    let settings = settings(url)?;
    let (client, connection) = settings
        .config
        .connect(settings.tls.clone())
        .await
        .map_err(|e| settings.connect_error(&e))?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "the database connection ended");
        }
    });
    Ok((client, driver))
}

/// Runs `f` on one connection of its own to `url`, then closes it.
async fn with_connection<T>(
    url: &str,
    f: impl AsyncFnOnce(&mut tokio_postgres::Client) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let (mut client, driver) = connect(url).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::config::Host;

    #[test]
    fn settings_say_where_and_how() {
        let s = settings("host=db.example port=5433 dbname=mail sslmode=require").unwrap();
        assert_eq!(s.mode, SslMode::Require);
        assert_eq!(
            s.describe(),
            "db.example:5433 (TLS, certificate not checked: sslmode=require)"
        );
        assert_eq!(
            s.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        assert_eq!(s.config.get_application_name(), Some("facteur"));
        // Unix sockets never use TLS, whatever sslmode says (as libpq).
        let s = settings("host=/run/postgresql dbname=mail sslmode=require").unwrap();
        assert_eq!(s.mode, SslMode::Disable);
        assert_eq!(
            s.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
        assert_eq!(s.describe(), "/run/postgresql/.s.PGSQL.5432 (no TLS)");
        // hostaddr alone: the address is the name TLS checks.
        let s = settings("hostaddr=127.0.0.1 dbname=mail").unwrap();
        assert_eq!(s.config.get_hosts(), [Host::Tcp("127.0.0.1".into())]);
        assert_eq!(s.mode, SslMode::Prefer);
        let e = settings("host=db sslmode=verify-full")
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs sslrootcert"), "{e}");
    }
}
