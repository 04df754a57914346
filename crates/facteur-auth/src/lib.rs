//! # facteur-auth: who may log in
//!
//! User databases (the passwd-file, and with the cargo feature `postgres` the users of a
//! PostgreSQL database), password schemes, APOP and SASL, the cache of verifications and the
//! failed-login penalties. Every check is a blocking call the server runs off its async threads;
//! without the `postgres` feature there is no networking and no tokio at all, and with it the only
//! network is the database, reached through the store's pool.
//!
//! # Layout
//! - [`Authenticator`]: what the server calls to check USER/PASS and APOP. Blocking, since
//!   password hashing is slow on purpose: the server runs it in `spawn_blocking`. Its `check_*`
//!   methods give a failure's [`FailureReason`] for the server's log (never for the client);
//!   the `verify_*` ones, the verdict alone.
//! - `passwd_file`: [`PasswdFile`], a parsed Dovecot-style passwd-file, and [`PasswdDb`], the
//!   [`Authenticator`] that reloads the file when it changes.
//! - `cache`: the cache of successful password verifications that [`PasswdDb`] may keep, so
//!   that a client polling with the same password is not hashed at every login.
//! - `scheme`: [`Scheme`], [`StoredPassword`] and [`hash_password`].
//! - `app_password`: app passwords, extra passwords for POP3 logins only, each with a label
//!   ([`add_app_password`], [`list_app_passwords`], [`revoke_app_password`]): their format
//!   (an id that names the one hash to check), the file beside the passwd-file, the record of
//!   their last use. [`Account::app_password`] tells a login made with one.
//! - `edit`: [`add_user`], [`del_user`], [`set_password`], [`list_users`] for `facteur user`:
//!   atomic rewrites under a lock that keep every other line as it was.
//! - `sasl`: every [`Authenticator`] as the verifier of facteur-proto's SASL state machines
//!   ([`SaslExchange`], [`Mechanism`]; the rules of the mechanisms are there, not here).
//! - `scram`: Dovecot's `{SCRAM-SHA-256}` stored form, and the made-up keys of users who cannot
//!   use SCRAM (the keys themselves, [`ScramCredentials`], are facteur-proto's); `cram_md5`: the
//!   HMAC-MD5 context CRAM-MD5 works from, with the MD5 block function it needs.
//! - [`oauth`]: bearer tokens (SASL OAUTHBEARER and XOAUTH2): JWTs checked against the
//!   issuers' key sets, or RFC 7662 introspection; the HTTPS fetches are the server's, through
//!   [`oauth::HttpsClient`].
//! - [`penalty`]: the failed-login penalties, per source address and per user name, and
//!   [`penalty::FailedLogins`], the in-memory ones or the database's.
//! - `sql` (cargo feature `postgres`): `SqlUsers`, the users in PostgreSQL, and
//!   `SharedPenalties`, failed-login penalties every node shares.
//!
//! # What this crate must never do
//! Put a password or a hash in an error, a log line or a `Debug` output; tell a client whether a
//! user exists (an unknown user costs the same hash work as a known one); panic on any input.

mod app_password;
mod cache;
mod cram_md5;
mod edit;
pub mod oauth;
mod passwd_file;
pub mod penalty;
mod sasl;
mod scheme;
mod scram;
#[cfg(feature = "postgres")]
pub mod sql;

use std::io;
use std::path::PathBuf;

use facteur_store::{BadOwner, Owner};

pub use facteur_proto::policy::{BadPolicy, UserPolicy};

pub use app_password::{
    add_app_password, app_password_text, app_passwords_path, default_last_used_path,
    generate_app_password_secret, list_app_passwords, revoke_app_password, validate_label,
    AppPasswordInfo, APP_PASSWORDS_PER_USER, LABEL_MAX_LEN, LAST_USED_EVERY,
};
pub use edit::{add_user, del_user, list_users, set_password, validate_user_name};
pub use facteur_proto::sasl::{
    BearerErrorInfo, FailureReason, Mechanism, Nonces, SaslContext, SaslOutcome, UnknownMechanism,
    MAX_SASL_LINE, PASSWORD_MAX_LEN, SCRAM_DEFAULT_ITERATIONS, SCRAM_MAX_ITERATIONS,
    SCRAM_MIN_ITERATIONS, USER_NAME_MAX_LEN,
};
pub use passwd_file::{PasswdDb, PasswdEntry, PasswdFile};
pub use sasl::{SaslExchange, SaslStep, ScramCredentials, ServerVerifier};
pub use scheme::{
    hash_password, Scheme, StoredPassword, StoredPasswordError, UnknownScheme,
    ARGON2_MAX_M_COST_KIB, BCRYPT_DEFAULT_COST, BCRYPT_MAX_PASSWORD_LEN,
};

/// A user who has proved who they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// The user name exactly as it is in the passwd-file.
    pub user: String,
    /// The home directory (the passwd-file's sixth field), if it is set.
    pub home: Option<String>,
    /// Who must own the maildrop (the passwd-file's uid and gid fields), or why those fields
    /// cannot be used (not numbers): the maildrop is then refused.
    pub owner: Result<Owner, BadOwner>,
    /// The user's own LOGIN-DELAY and EXPIRE (the passwd-file's extra fields `login_delay=`
    /// and `expire=`, the SQL users' columns), or why they cannot be used: the maildrop is then
    /// refused.
    pub policy: Result<UserPolicy, BadPolicy>,
    /// The label of the app password the user logged in with; `None` for the main password
    /// (and every other method: only USER/PASS and SASL PLAIN/LOGIN take app passwords).
    pub app_password: Option<String>,
}

/// The result of a login attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    Success(Account),
    /// Wrong password, unknown user, or a user who cannot use this mechanism: deliberately the
    /// same answer for all three.
    Failure,
}

impl AuthOutcome {
    /// The outcome as a [`Checked`], with no reason known for a failure
    /// ([`FailureReason::Unspecified`]).
    pub fn checked(self) -> Checked {
        match self {
            AuthOutcome::Success(account) => Ok(account),
            AuthOutcome::Failure => Err(FailureReason::Unspecified),
        }
    }
}

/// A login's verdict with, for a failure, why: the account, or the reason for the server's log.
pub type Checked = Result<Account, FailureReason>;

impl From<Checked> for AuthOutcome {
    /// Forgets the reason: what the client may be told.
    fn from(checked: Checked) -> Self {
        match checked {
            Ok(account) => AuthOutcome::Success(account),
            Err(_) => AuthOutcome::Failure,
        }
    }
}

/// Checks credentials. Every method is blocking and may take tens of milliseconds.
///
/// Whatever the method, an unknown user costs the same work as a known one and gets the same
/// answer as a wrong password.
pub trait Authenticator: Send + Sync + 'static {
    /// USER/PASS, and SASL PLAIN and LOGIN.
    fn verify_password(&self, user: &str, password: &[u8]) -> AuthOutcome;

    /// As [`Authenticator::verify_password`], with the reason of a failure for the log. The
    /// default knows no reason; an authenticator that can tell should, at no extra cost.
    fn check_password(&self, user: &str, password: &[u8]) -> Checked {
        self.verify_password(user, password).checked()
    }

    /// [`Authenticator::check_password`] from memory alone, for a caller on an async thread:
    /// `Some` only with the answer `check_password` would give, and only when it could be had
    /// without waiting for a disk, a lock held for long, a network or a password hash (a
    /// success remembered by a cache of verifications), and with none of the effects the full
    /// check would have (an app password's last use, a reload). `None`: no answer here;
    /// `check_password` off the async threads is the way. The default never answers.
    fn check_password_now(&self, _user: &str, _password: &[u8]) -> Option<Checked> {
        None
    }

    /// APOP (RFC 1939 section 7): `digest` is the client's 32 lowercase hex digits of
    /// MD5(`timestamp` + secret), `timestamp` the one from our greeting, angle brackets included.
    fn verify_apop(&self, user: &str, timestamp: &str, digest: &str) -> AuthOutcome;

    /// As [`Authenticator::verify_apop`], with the reason of a failure for the log.
    fn check_apop(&self, user: &str, timestamp: &str, digest: &str) -> Checked {
        self.verify_apop(user, timestamp, digest).checked()
    }

    /// True if any user could use APOP (some stored secret is `{PLAIN}`); the server offers
    /// APOP only then.
    fn apop_possible(&self) -> bool;

    /// True if some user has a LOGIN-DELAY or EXPIRE of their own: CAPA then tags the
    /// server-wide values with `USER` before login (RFC 2449). False by default.
    fn policy_per_user(&self) -> bool {
        false
    }

    /// SASL CRAM-MD5 (RFC 2195): `digest_hex` is the client's 32 hex digits of
    /// HMAC-MD5(secret, `challenge`), `challenge` the exact bytes the server sent (angle
    /// brackets included). Only users stored as `{PLAIN}` or `{CRAM-MD5}` can succeed.
    fn verify_cram_md5(&self, user: &str, challenge: &[u8], digest_hex: &str) -> AuthOutcome;

    /// As [`Authenticator::verify_cram_md5`], with the reason of a failure for the log.
    fn check_cram_md5(&self, user: &str, challenge: &[u8], digest_hex: &str) -> Checked {
        self.verify_cram_md5(user, challenge, digest_hex).checked()
    }

    /// True if any user could use CRAM-MD5 (some stored secret is `{PLAIN}` or `{CRAM-MD5}`).
    fn cram_md5_possible(&self) -> bool;

    /// SASL SCRAM-SHA-256: the keys of `user`. A user who cannot use SCRAM (unknown, or stored
    /// with another scheme than `{SCRAM-SHA-256}` or `{PLAIN}`) gets made-up keys that are the
    /// same at every attempt and an account of `None`, so that the exchange looks the same
    /// until the client's proof fails; [`ScramCredentials::because`] tells the log why.
    fn scram_credentials(&self, user: &str) -> ScramCredentials;

    /// True if any user could use SCRAM-SHA-256 (some stored secret is `{SCRAM-SHA-256}` or
    /// `{PLAIN}`).
    fn scram_possible(&self) -> bool;

    /// The account of `user`, with no credential checked: for SASL EXTERNAL, where the TLS
    /// layer has already verified a client certificate that names the user.
    fn account(&self, user: &str) -> Option<Account>;

    /// The account mail for `user` is delivered to (LMTP's RCPT): `Ok(None)` for no such user,
    /// `Err(FailureReason::Unavailable)` when the user database cannot tell now (the database
    /// does not answer), so that the MTA tries again later instead of bouncing the message.
    /// The default asks [`Authenticator::account`], for user databases that cannot fail.
    fn recipient(&self, user: &str) -> Result<Option<Account>, FailureReason> {
        Ok(self.account(user))
    }
}

/// Why a passwd-file line was refused. The messages never quote a password or a hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("the line is not valid UTF-8")]
    NotUtf8,
    #[error("no password field (expected user:{{SCHEME}}password)")]
    NoPasswordField,
    #[error("invalid user name: {0}")]
    InvalidUserName(InvalidUserName),
    #[error("user {user:?} is already defined on line {first_line}")]
    DuplicateUser { user: String, first_line: usize },
    #[error(transparent)]
    Password(#[from] StoredPasswordError),
    #[error("extra field: {0}")]
    Policy(#[from] BadPolicy),
}

/// Why a user name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidUserName {
    #[error("it is empty")]
    Empty,
    #[error("it is longer than 255 bytes")]
    TooLong,
    #[error("it holds ':', whitespace or a control character")]
    BadCharacter,
    #[error("it starts with '#', which would make its line a comment")]
    StartsWithHash,
}

/// Everything that can go wrong in this module.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot lock {}: {source}", path.display())]
    Lock { path: PathBuf, source: io::Error },
    /// A line of a passwd-file that does not parse; `origin` is usually the file's path.
    #[error("{origin}:{line}: {error}")]
    Parse {
        origin: String,
        line: usize,
        error: LineError,
    },
    #[error("invalid user name {user:?}: {reason}")]
    InvalidUserName {
        user: String,
        reason: InvalidUserName,
    },
    #[error("user {user:?} already exists in {}", path.display())]
    UserExists { user: String, path: PathBuf },
    #[error("no user {user:?} in {}", path.display())]
    NoSuchUser { user: String, path: PathBuf },
    #[error("invalid stored password: {0}")]
    StoredPassword(#[from] StoredPasswordError),
    #[error("the stored password holds ':' or a line break")]
    StoredPasswordSeparator,
    #[error("the password {0}")]
    BadPassword(&'static str),
    #[error("cannot hash the password: {0}")]
    Hash(String),
    #[error("cannot get random bytes from the operating system: {0}")]
    Random(#[from] getrandom::Error),
    #[error("the label {0}")]
    BadLabel(&'static str),
    #[error("{origin}:{line}: {reason}")]
    AppPasswordLine {
        origin: String,
        line: usize,
        reason: &'static str,
    },
    #[error("user {user:?} has no app password labelled {label:?}")]
    NoSuchAppPassword { user: String, label: String },
    #[error("user {user:?} already has an app password labelled {label:?}")]
    AppPasswordLabelTaken { user: String, label: String },
    #[error("user {user:?} already has {max} app passwords, the most allowed: revoke one first")]
    TooManyAppPasswords { user: String, max: usize },
    #[error("user {user:?} already exists in the database")]
    SqlUserExists { user: String },
    #[error("no user {user:?} in the database")]
    SqlNoSuchUser { user: String },
    /// The user database (`[auth] backend = "sql"`) failed.
    #[error("user database: cannot {what}: {detail}")]
    Database { what: &'static str, detail: String },
    /// The store's database layer (its pool, its schema check).
    #[error(transparent)]
    Store(#[from] facteur_store::StoreError),
}
