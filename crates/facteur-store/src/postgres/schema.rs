//! The schema of the PostgreSQL store: its versions, applying them (`facteur db migrate`), and the
//! check a server makes before it serves (a schema it does not know, older or newer, is refused).
//!
//! The version lives in the table `schema_version`, one row per applied migration. Migrations are
//! plain SQL files compiled into the binary, applied in order, each in one transaction with its
//! version row; two migrators running at once cannot both apply one version (the second fails on
//! the row's primary key and changes nothing).

use tokio_postgres::GenericClient;

use super::db_error;
use crate::StoreError;

/// The migrations, in order: version `i + 1` is `MIGRATIONS[i]`.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_initial.sql"),
    include_str!("migrations/0002_users.sql"),
    include_str!("migrations/0003_migrated_messages.sql"),
    include_str!("migrations/0004_login_delay_expire.sql"),
    include_str!("migrations/0005_app_passwords.sql"),
];

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

const CREATE_VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_version (
    version bigint PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// What `facteur db migrate` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Migrated {
    /// The version found (0: an empty database).
    pub from: i64,
    /// The version now.
    pub to: i64,
}

/// The schema version of the database: `None` when it has no `schema_version` table.
pub async fn schema_version(client: &impl GenericClient) -> Result<Option<i64>, StoreError> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name = 'schema_version'",
            &[],
        )
        .await
        .map_err(db_error("look for the schema_version table"))?;
    if exists.is_none() {
        return Ok(None);
    }
    let row = client
        .query_one("SELECT max(version) FROM schema_version", &[])
        .await
        .map_err(db_error("read the schema version"))?;
    let version: Option<i64> = row.get(0);
    Ok(Some(version.unwrap_or(0)))
}

/// Refuses a database whose schema is not exactly [`SCHEMA_VERSION`]: an older one needs
/// `facteur db migrate`, a newer one a newer facteur.
pub async fn check_schema(client: &impl GenericClient) -> Result<(), StoreError> {
    match schema_version(client).await? {
        Some(SCHEMA_VERSION) => Ok(()),
        found => Err(StoreError::Schema {
            found: found.unwrap_or(0),
            expected: SCHEMA_VERSION,
        }),
    }
}

/// Applies every migration the database lacks, each in its own transaction. Refuses a database
/// whose schema is newer than this build's.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<Migrated, StoreError> {
    client
        .batch_execute(CREATE_VERSION_TABLE)
        .await
        .map_err(db_error("create the schema_version table"))?;
    let from = schema_version(&*client).await?.unwrap_or(0);
    if from > SCHEMA_VERSION {
        return Err(StoreError::Schema {
            found: from,
            expected: SCHEMA_VERSION,
        });
    }
    for (version, sql) in (1i64..)
        .zip(MIGRATIONS)
        .skip(usize::try_from(from).unwrap_or(0))
    {
        let tx = client
            .transaction()
            .await
            .map_err(db_error("begin a migration"))?;
        tx.batch_execute(sql)
            .await
            .map_err(db_error("apply a migration"))?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(db_error("record the schema version"))?;
        tx.commit().await.map_err(db_error("commit a migration"))?;
        tracing::info!(version, "schema migration applied");
    }
    Ok(Migrated {
        from,
        to: SCHEMA_VERSION,
    })
}
