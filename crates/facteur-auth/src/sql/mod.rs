//! Users and failed-login penalties in PostgreSQL (cargo feature `postgres`; `[auth] backend =
//! "sql"`): the database the store's nodes share, so that any node serves any user and guesses
//! spread over N nodes are counted together.
//!
//! What it must never do: use what only PostgreSQL has (advisory locks, LISTEN/NOTIFY,
//! sequences), so that the same statements run on CockroachDB and YugabyteDB; wait on the
//! database without a deadline; keep a password, a hash or a user name in the penalty table;
//! tell a client whether a user exists.
//!
//! ## Layout
//! - `users`: [`SqlUsers`], the [`Authenticator`](crate::Authenticator) over the `users` table,
//!   and [`add_user`], [`del_user`], [`set_password`], [`list_users`] for `facteur user`.
//! - `app_passwords`: [`add_app_password`], [`list_app_passwords`], [`revoke_app_password`]
//!   over the `app_passwords` table (schema version 5), and what a login reads of it.
//! - `penalties`: [`SharedPenalties`], the failed-login counters in `login_penalties`.
//! - this module: deadlines, retries on serialization failures, database errors as
//!   [`AuthError::Database`].
//!
//! The tables are created by the store's migrations (`facteur db migrate`: `users` in schema
//! version 2, `app_passwords` in version 5).

mod app_passwords;
mod penalties;
mod users;

use std::future::Future;
use std::time::Duration;

use tokio_postgres::error::SqlState;

use crate::AuthError;

pub use app_passwords::{add_app_password, list_app_passwords, revoke_app_password};
pub use penalties::{Cleaned, SharedPenalties, SharedPenaltiesConfig};
pub use users::{
    add_user, count_schemes, count_users, del_user, find_user, list_users, set_password, SqlUsers,
    UserRecord,
};

/// The connection pool the users and the penalties share (the store's pool type).
pub use deadpool_postgres::Pool;

/// How long one statement, the wait for a pooled connection included, may take.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Attempts of a statement that failed on a serialization failure (SQLSTATE 40001, which
/// CockroachDB and YugabyteDB return under contention) or a deadlock (40P01).
const ATTEMPTS: u32 = 5;

/// Why one attempt at a statement failed.
enum Attempt {
    /// Worth trying again: a serialization failure or a deadlock.
    Retry(String),
    Fail(AuthError),
}

// The chain of messages of a database error (tokio-postgres keeps the server's in the source).
use facteur_store::postgres::error_chain as detail;

fn attempt_error(what: &'static str, e: &tokio_postgres::Error) -> Attempt {
    match e.code() {
        Some(c)
            if *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED =>
        {
            Attempt::Retry(detail(e))
        }
        _ => Attempt::Fail(AuthError::Database {
            what,
            detail: detail(e),
        }),
    }
}

/// Runs `f` (one statement on a pooled connection) within [`QUERY_TIMEOUT`], again on a
/// serialization failure, at most [`ATTEMPTS`] times with a short growing pause between.
async fn retrying<T, F, Fut>(pool: &Pool, what: &'static str, mut f: F) -> Result<T, AuthError>
where
    F: FnMut(deadpool_postgres::Object) -> Fut,
    Fut: Future<Output = Result<T, tokio_postgres::Error>>,
{
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(5u64 << attempt)).await;
        }
        let run = async {
            let client = pool.get().await.map_err(|e| {
                Attempt::Fail(AuthError::Database {
                    what,
                    detail: detail(&e),
                })
            })?;
            f(client).await.map_err(|e| attempt_error(what, &e))
        };
        match tokio::time::timeout(QUERY_TIMEOUT, run).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(Attempt::Retry(d))) => last = d,
            Ok(Err(Attempt::Fail(e))) => return Err(e),
            Err(_) => {
                return Err(AuthError::Database {
                    what,
                    detail: format!("no answer within {QUERY_TIMEOUT:?}"),
                })
            }
        }
    }
    Err(AuthError::Database {
        what,
        detail: format!("still a serialization failure after {ATTEMPTS} attempts: {last}"),
    })
}

/// A pool of at most `size` connections to `url`, as the store makes it.
pub fn pool(url: &str, size: usize) -> Result<Pool, AuthError> {
    Ok(facteur_store::postgres::pool(url, size)?)
}

/// Checks that the database has the schema this build knows (the users tables among it).
pub async fn check_schema(pool: &Pool) -> Result<(), AuthError> {
    let client = tokio::time::timeout(QUERY_TIMEOUT, pool.get())
        .await
        .map_err(|_| AuthError::Database {
            what: "connect to the database",
            detail: format!("no connection within {QUERY_TIMEOUT:?}"),
        })?
        .map_err(|e| AuthError::Database {
            what: "connect to the database",
            detail: detail(&e),
        })?;
    tokio::time::timeout(
        QUERY_TIMEOUT,
        facteur_store::postgres::check_schema(&**client),
    )
    .await
    .map_err(|_| AuthError::Database {
        what: "check the schema",
        detail: format!("no answer within {QUERY_TIMEOUT:?}"),
    })??;
    Ok(())
}
