//! App passwords in the `app_passwords` table (schema version 5): `facteur user app-password`'s
//! add, list and revoke, and what a login reads and records. See the crate's `app_password`
//! module for what app passwords are and their format.
//!
//! Every login with an app password reads its row by primary key (user, id), so a revocation
//! on any node is in force at the next login on every node; its last use is recorded by one
//! conditional UPDATE at most once a minute (the database's clock, shared by every node).

use facteur_proto::Secret;

use super::{retrying, Pool};
use crate::app_password::{new_id, validate_label, AppPassword, AppPasswordInfo};
use crate::edit::{check_stored, check_user};
use crate::{AuthError, StoredPassword, APP_PASSWORDS_PER_USER};

/// Adds an app password labelled `label` for `user`; `stored` is the hash of its secret.
/// Returns its id.
pub async fn add_app_password(
    pool: &Pool,
    user: &str,
    label: &str,
    stored: &str,
) -> Result<String, AuthError> {
    check_user(user)?;
    validate_label(label)?;
    check_stored(stored)?;
    let max = APP_PASSWORDS_PER_USER as i64;
    // An id drawn again only when another of the user's app passwords took it meanwhile.
    for _ in 0..8 {
        let taken = ids_of(pool, user).await?;
        let taken: Vec<&str> = taken.iter().map(String::as_str).collect();
        let id = new_id(&taken)?;
        let added = retrying(pool, "add an app password", |c| {
            let id = id.clone();
            async move {
                c.execute(
                    "INSERT INTO app_passwords (user_name, id, label, password) \
                     SELECT name, $2, $3, $4 FROM users WHERE name = $1 \
                     AND (SELECT count(*) FROM app_passwords WHERE user_name = $1) < $5 \
                     ON CONFLICT DO NOTHING",
                    &[&user, &id, &label, &stored, &max],
                )
                .await
            }
        })
        .await?;
        if added == 1 {
            return Ok(id);
        }
        if super::find_user(pool, user).await?.is_none() {
            return Err(AuthError::SqlNoSuchUser {
                user: user.to_string(),
            });
        }
        if list_rows(pool, user)
            .await?
            .iter()
            .any(|a| a.label == label)
        {
            return Err(AuthError::AppPasswordLabelTaken {
                user: user.to_string(),
                label: label.to_string(),
            });
        }
        if ids_of(pool, user).await?.len() >= APP_PASSWORDS_PER_USER {
            return Err(AuthError::TooManyAppPasswords {
                user: user.to_string(),
                max: APP_PASSWORDS_PER_USER,
            });
        }
    }
    Err(AuthError::Database {
        what: "add an app password",
        detail: "no free id in 8 tries".to_string(),
    })
}

async fn ids_of(pool: &Pool, user: &str) -> Result<Vec<String>, AuthError> {
    let rows = retrying(pool, "read app password ids", |c| async move {
        c.query(
            "SELECT id FROM app_passwords WHERE user_name = $1",
            &[&user],
        )
        .await
    })
    .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn list_rows(pool: &Pool, user: &str) -> Result<Vec<AppPasswordInfo>, AuthError> {
    let rows = retrying(pool, "list app passwords", |c| async move {
        c.query(
            "SELECT id, label, floor(extract(epoch FROM created_at))::bigint, \
             floor(extract(epoch FROM last_used_at))::bigint \
             FROM app_passwords WHERE user_name = $1 ORDER BY created_at, id",
            &[&user],
        )
        .await
    })
    .await?;
    Ok(rows
        .iter()
        .map(|r| AppPasswordInfo {
            id: r.get(0),
            label: r.get(1),
            created: r.get(2),
            last_used: r.get(3),
        })
        .collect())
}

/// `user`'s app passwords, oldest first, with when each was last used.
pub async fn list_app_passwords(
    pool: &Pool,
    user: &str,
) -> Result<Vec<AppPasswordInfo>, AuthError> {
    check_user(user)?;
    if super::find_user(pool, user).await?.is_none() {
        return Err(AuthError::SqlNoSuchUser {
            user: user.to_string(),
        });
    }
    list_rows(pool, user).await
}

/// Removes `user`'s app password labelled `label`: every node refuses it from its next login.
pub async fn revoke_app_password(pool: &Pool, user: &str, label: &str) -> Result<(), AuthError> {
    check_user(user)?;
    let removed = retrying(pool, "revoke an app password", |c| async move {
        c.execute(
            "DELETE FROM app_passwords WHERE user_name = $1 AND label = $2",
            &[&user, &label],
        )
        .await
    })
    .await?;
    if removed == 0 {
        return Err(AuthError::NoSuchAppPassword {
            user: user.to_string(),
            label: label.to_string(),
        });
    }
    Ok(())
}

/// One app password as a login reads it, and whether its use is worth recording (never
/// recorded, or more than a minute ago).
pub(crate) struct LoginAppPassword {
    pub(crate) app: AppPassword,
    pub(crate) record_use: bool,
}

/// `user`'s app password `id`, if it exists. A row whose hash does not parse is as if it did
/// not exist (and logged, without the hash).
pub(crate) async fn login_app_password(
    pool: &Pool,
    user: &str,
    id: &str,
) -> Result<Option<LoginAppPassword>, AuthError> {
    let row = retrying(pool, "read an app password", |c| async move {
        let select = c
            .prepare_cached(
                "SELECT label, floor(extract(epoch FROM created_at))::bigint, password, \
                 (last_used_at IS NULL OR last_used_at < now() - interval '1 minute') \
                 FROM app_passwords WHERE user_name = $1 AND id = $2",
            )
            .await?;
        c.query_opt(&select, &[&user, &id]).await
    })
    .await?;
    let Some(r) = row else {
        return Ok(None);
    };
    let field: String = r.get(2);
    match StoredPassword::parse(&field) {
        Ok(stored) => Ok(Some(LoginAppPassword {
            app: AppPassword {
                id: id.to_string(),
                label: r.get(0),
                created: r.get(1),
                stored,
                field: Secret::new(field),
            },
            record_use: r.get(3),
        })),
        Err(error) => {
            tracing::error!(user, id, %error, "an app password's hash does not parse");
            Ok(None)
        }
    }
}

/// Records that `user`'s app password `id` was just used; a no-op when another login
/// recorded it less than a minute ago.
pub(crate) async fn record_use(pool: &Pool, user: &str, id: &str) -> Result<(), AuthError> {
    retrying(pool, "record an app password's use", |c| async move {
        c.execute(
            "UPDATE app_passwords SET last_used_at = now() WHERE user_name = $1 AND id = $2 \
             AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
            &[&user, &id],
        )
        .await
    })
    .await
    .map(drop)
}
