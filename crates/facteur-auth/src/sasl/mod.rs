//! The SASL mechanisms of POP3's AUTH command (RFC 5034), as state machines that do no I/O.
//!
//! The connection driver turns `AUTH <mechanism> [initial-response]` into
//! [`SaslExchange::start`], sends each [`SaslStep::Challenge`] as a `+ ` line, and feeds each
//! line the client sends back to [`SaslExchange::step`], until [`SaslStep::Done`] or
//! [`SaslStep::Malformed`]. A line of a single `*` (the client cancels, RFC 5034 section 4) is
//! the driver's to answer with `-ERR`; it never reaches `step`. Both calls may hash (PBKDF2,
//! Argon2...), so the driver runs them in `spawn_blocking`.
//!
//! The mechanisms:
//! - PLAIN (RFC 4616): `[authzid] NUL authcid NUL password`. The authorization identity must be
//!   empty or the authentication identity: nobody logs in as somebody else.
//! - LOGIN (draft-murchison-sasl-login): challenges `Username:` then `Password:`. An initial
//!   response is taken as the user name, as most servers do, although the draft has none.
//! - CRAM-MD5 (RFC 2195): the challenge `<random.time@hostname>`, the answer `user digest`. For
//!   users stored as `{PLAIN}` or `{CRAM-MD5}`. No initial response (the server speaks first).
//! - SCRAM-SHA-256 (RFC 5802, RFC 7677), without channel binding: see the `scram` module.
//! - EXTERNAL (RFC 4422 appendix A): the identity of a verified TLS client certificate, which
//!   must be a user of the passwd-file; the authorization identity sent must be empty or that
//!   identity.
//!
//! POP3 has no way to send data with `+OK` (RFC 5034 section 4: "POP3 does not allow for
//! additional data to be sent with a message indicating a successful outcome"). So SCRAM's
//! server-final message `v=<signature>` goes out as one more challenge, `+ <base64>`; the
//! client answers it with an empty line, and only then does the exchange end in success and the
//! driver send `+OK` (the DIGEST-MD5 example of RFC 5034 section 6 does exactly that with
//! `rspauth`).
//!
//! A user name over 255 octets or a password over 1,024 is [`SaslStep::Refused`] before any
//! lookup or hash, in every mechanism: no user has one, and a long password makes some hashes
//! cost more. [`SaslExchange::claimed_user`] is known from the first message that names a user
//! on, so that the driver can count an exchange abandoned after it as a failed login.
//!
//! What this module must never do: panic on anything a client sends; tell a client whether a
//! user exists (unknown users go through the same steps and the same work, and fail at the same
//! point); print a password, a key or a proof in a `Debug` output; hash credentials over those
//! lengths.

mod scram;

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use super::{
    Account, AuthOutcome, Authenticator, Checked, FailureReason, PASSWORD_MAX_LEN,
    USER_NAME_MAX_LEN,
};

/// The longest SASL continuation line accepted, in octets, CRLF included (the way
/// `facteur_proto::LineFramer` counts). RFC 5034 section 4 lifts POP3's 255-octet limit for these
/// lines and asks servers to take the longest their mechanisms produce. The longest here is
/// PLAIN's: a 255-octet authorization identity, a 255-octet user name and a password of up to
/// 1 KiB make 1.5 KiB, 2 KiB in base64; a SCRAM client-final message is under 300 octets with
/// a client nonce of 100 characters. 4 KiB leaves room to spare and keeps what one session may
/// make the server buffer small.
pub const MAX_SASL_LINE: usize = 4096;

/// The LOGIN mechanism's challenges: the forms most clients and servers use (the draft also
/// allows "User Name" and "Password"; clients ignore the text).
const LOGIN_USER_CHALLENGE: &[u8] = b"Username:";
const LOGIN_PASSWORD_CHALLENGE: &[u8] = b"Password:";

/// Random bytes in a SCRAM server nonce: 144 bits, 24 base64 characters.
const SCRAM_NONCE_BYTES: usize = 18;

/// A SASL mechanism facteur implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    Plain,
    Login,
    CramMd5,
    ScramSha256,
    External,
}

impl Mechanism {
    /// Every mechanism, strongest first.
    pub const ALL: [Mechanism; 5] = [
        Mechanism::External,
        Mechanism::ScramSha256,
        Mechanism::CramMd5,
        Mechanism::Plain,
        Mechanism::Login,
    ];

    /// The registered name, as in CAPA's SASL line and the AUTH command.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::CramMd5 => "CRAM-MD5",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::External => "EXTERNAL",
        }
    }

    /// True for the mechanisms that send the password itself (PLAIN, LOGIN): RFC 5034
    /// section 4 wants them refused unless the session is protected (TLS).
    pub fn sends_password(self) -> bool {
        matches!(self, Mechanism::Plain | Mechanism::Login)
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A mechanism name facteur does not implement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown SASL mechanism")]
pub struct UnknownMechanism;

impl FromStr for Mechanism {
    type Err = UnknownMechanism;

    /// Case-insensitive (RFC 5034 section 5).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mechanism::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s))
            .ok_or(UnknownMechanism)
    }
}

/// What an exchange needs to know of the session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SaslContext {
    /// The server's host name, for the CRAM-MD5 challenge.
    pub hostname: String,
    /// The identity from a verified TLS client certificate (for EXTERNAL).
    pub tls_client_identity: Option<String>,
}

/// What the driver does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SaslStep {
    /// Send `+ <base64(data)>` (or `+ ` for empty data) and feed the client's next line to
    /// [`SaslExchange::step`].
    Challenge(Vec<u8>),
    /// Finished: answer `+OK` for a success (the session enters the TRANSACTION state), `-ERR`
    /// for a failure.
    Done(AuthOutcome),
    /// The client's data was malformed (bad base64, wrong shape): answer `-ERR` with this text;
    /// the exchange is over.
    Malformed(&'static str),
    /// The client's credentials were refused for their length (a user name over
    /// [`USER_NAME_MAX_LEN`], a password over [`PASSWORD_MAX_LEN`]) before any lookup or
    /// hashing: answer `-ERR [AUTH]` with this text; a failed login. The exchange is over.
    Refused(&'static str),
}

/// The answers to credentials too long to be checked.
const USER_NAME_TOO_LONG: &str = "the user name is longer than 255 octets";
const PASSWORD_TOO_LONG: &str = "the password is longer than 1024 octets";

/// `Some(Refused)` if a user name (or authorization identity) is too long to be checked.
fn refuse_long_name(name: &str) -> Option<SaslStep> {
    (name.len() > USER_NAME_MAX_LEN).then_some(SaslStep::Refused(USER_NAME_TOO_LONG))
}

/// `Some(Refused)` if a password is too long to be hashed.
fn refuse_long_password(password: &[u8]) -> Option<SaslStep> {
    (password.len() > PASSWORD_MAX_LEN).then_some(SaslStep::Refused(PASSWORD_TOO_LONG))
}

/// Where an exchange stands. Holds no password.
enum State {
    Plain,
    LoginUser,
    LoginPassword {
        user: String,
    },
    CramMd5 {
        challenge: String,
    },
    External,
    ScramFirst,
    ScramFinal(Box<scram::Pending>),
    /// The server-final message went out as a challenge; the client must answer it empty.
    ScramEnd(Account),
    Over,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Plain => "awaiting the PLAIN message",
            State::LoginUser => "awaiting the LOGIN user name",
            State::LoginPassword { .. } => "awaiting the LOGIN password",
            State::CramMd5 { .. } => "awaiting the CRAM-MD5 answer",
            State::External => "awaiting the EXTERNAL authorization identity",
            State::ScramFirst => "awaiting the SCRAM client-first message",
            State::ScramFinal(_) => "awaiting the SCRAM client-final message",
            State::ScramEnd(_) => "awaiting the empty answer to the SCRAM server-final message",
            State::Over => "over",
        }
    }
}

/// One SASL authentication exchange, from AUTH to `+OK` or `-ERR`. `Debug` shows the mechanism
/// and the stage only.
pub struct SaslExchange {
    mechanism: Mechanism,
    ctx: SaslContext,
    state: State,
    /// For tests only: the CRAM-MD5 challenge or the SCRAM server nonce to use instead of fresh
    /// random ones.
    fixed_challenge: Option<String>,
    /// The user name the client claimed, once known (for failed-login penalties).
    claimed_user: Option<String>,
    /// Why the exchange ended in a failure, for the log (never for the client).
    failure: Option<FailureReason>,
}

impl fmt::Debug for SaslExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslExchange")
            .field("mechanism", &self.mechanism)
            .field("state", &self.state.name())
            .finish_non_exhaustive()
    }
}

impl SaslExchange {
    /// Starts an exchange for `AUTH <mechanism> [initial_response]`.
    ///
    /// `initial_response`: the optional second argument of AUTH as sent (base64 text; "="
    /// means empty, RFC 5034 section 4). CRAM-MD5 takes none: one is [`SaslStep::Malformed`].
    pub fn start(
        mechanism: Mechanism,
        ctx: SaslContext,
        initial_response: Option<&str>,
        auth: &dyn Authenticator,
    ) -> (Self, SaslStep) {
        Self::start_with(mechanism, ctx, initial_response, auth, None)
    }

    /// As [`SaslExchange::start`], with the CRAM-MD5 challenge or the SCRAM server nonce given
    /// instead of random.
    #[cfg(test)]
    pub(crate) fn start_with_fixed_challenge(
        mechanism: Mechanism,
        ctx: SaslContext,
        initial_response: Option<&str>,
        auth: &dyn Authenticator,
        challenge: &str,
    ) -> (Self, SaslStep) {
        Self::start_with(
            mechanism,
            ctx,
            initial_response,
            auth,
            Some(challenge.to_string()),
        )
    }

    fn start_with(
        mechanism: Mechanism,
        ctx: SaslContext,
        initial_response: Option<&str>,
        auth: &dyn Authenticator,
        fixed_challenge: Option<String>,
    ) -> (Self, SaslStep) {
        let mut exchange = Self {
            mechanism,
            ctx,
            state: State::Over,
            fixed_challenge,
            claimed_user: None,
            failure: None,
        };
        let step = exchange.begin(initial_response, auth);
        (exchange, step)
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// The user name the client claimed (PLAIN's authcid, LOGIN's user, CRAM-MD5's, SCRAM's
    /// `n=`), once the exchange got that far, verified or not: failed-login penalties count
    /// per user name.
    pub fn claimed_user(&self) -> Option<&str> {
        self.claimed_user.as_deref()
    }

    /// Why the exchange ended in `Done(Failure)`, for the server's log; `None` before that, and
    /// after a success. (A `Refused` step needs no reason: its credentials were too long.)
    pub fn failure_reason(&self) -> Option<FailureReason> {
        self.failure
    }

    /// True once the exchange has ended (a `Done`, `Malformed` or `Refused` was returned).
    pub fn is_over(&self) -> bool {
        matches!(self.state, State::Over)
    }

    /// Feeds the client's continuation line, as sent (base64, without its CRLF; an empty line
    /// is empty data). The caller handles `*` (cancel) itself.
    pub fn step(&mut self, line: &str, auth: &dyn Authenticator) -> SaslStep {
        let state = std::mem::replace(&mut self.state, State::Over);
        if matches!(state, State::Over) {
            return SaslStep::Malformed("the authentication exchange is over");
        }
        if line.len() > MAX_SASL_LINE {
            return SaslStep::Malformed("the line is too long");
        }
        let Ok(data) = BASE64.decode(line) else {
            return SaslStep::Malformed("the line is not valid base64");
        };
        match state {
            State::Plain => plain(&data, auth, &mut self.claimed_user, &mut self.failure),
            State::LoginUser => self.login_user(&data),
            State::LoginPassword { user } => {
                let refused = refuse_long_password(&data);
                let step = refused.unwrap_or_else(|| {
                    verdict(auth.check_password(&user, &data), &mut self.failure)
                });
                self.claimed_user = Some(user);
                step
            }
            State::CramMd5 { challenge } => cram_md5(
                &challenge,
                &data,
                auth,
                &mut self.claimed_user,
                &mut self.failure,
            ),
            State::External => self.external(&data, auth),
            State::ScramFirst => self.scram_first(&data, auth),
            State::ScramFinal(pending) => self.scram_final(&pending, &data),
            State::ScramEnd(account) => {
                if data.is_empty() {
                    SaslStep::Done(AuthOutcome::Success(account))
                } else {
                    SaslStep::Malformed(
                        "expected an empty answer to the server's final SCRAM message",
                    )
                }
            }
            State::Over => SaslStep::Malformed("the authentication exchange is over"),
        }
    }

    /// The first step: with the initial response if there is one, else the first challenge.
    fn begin(&mut self, initial_response: Option<&str>, auth: &dyn Authenticator) -> SaslStep {
        let initial = match initial_response {
            None => None,
            Some("=") => Some(Vec::new()),
            Some(text) if text.len() > MAX_SASL_LINE => {
                return SaslStep::Malformed("the initial response is too long")
            }
            Some(text) => match BASE64.decode(text) {
                Ok(data) if !data.is_empty() => Some(data),
                // "" is not how an empty response is sent ("=" is), and "" is no base64 line.
                _ => return SaslStep::Malformed("the initial response is not valid base64"),
            },
        };
        match (self.mechanism, initial) {
            (Mechanism::Plain, Some(data)) => {
                plain(&data, auth, &mut self.claimed_user, &mut self.failure)
            }
            (Mechanism::Plain, None) => self.challenge(State::Plain, Vec::new()),
            (Mechanism::Login, Some(data)) => self.login_user(&data),
            (Mechanism::Login, None) => {
                self.challenge(State::LoginUser, LOGIN_USER_CHALLENGE.to_vec())
            }
            (Mechanism::CramMd5, Some(_)) => {
                SaslStep::Malformed("CRAM-MD5 takes no initial response")
            }
            (Mechanism::CramMd5, None) => {
                let challenge = match self.fixed_challenge.take() {
                    Some(fixed) => fixed,
                    None => match cram_md5_challenge(&self.ctx.hostname) {
                        Ok(challenge) => challenge,
                        Err(error) => return self.no_randomness(error),
                    },
                };
                let data = challenge.as_bytes().to_vec();
                self.challenge(State::CramMd5 { challenge }, data)
            }
            (Mechanism::ScramSha256, Some(data)) => self.scram_first(&data, auth),
            (Mechanism::ScramSha256, None) => self.challenge(State::ScramFirst, Vec::new()),
            (Mechanism::External, Some(data)) => self.external(&data, auth),
            (Mechanism::External, None) => self.challenge(State::External, Vec::new()),
        }
    }

    fn challenge(&mut self, next: State, data: Vec<u8>) -> SaslStep {
        self.state = next;
        SaslStep::Challenge(data)
    }

    fn login_user(&mut self, data: &[u8]) -> SaslStep {
        match std::str::from_utf8(data) {
            Ok(user) if !user.is_empty() => {
                // Claimed from now on: an exchange cancelled at the password prompt is a
                // failed login for this name.
                self.claimed_user = Some(user.to_string());
                if let Some(refused) = refuse_long_name(user) {
                    return refused;
                }
                self.challenge(
                    State::LoginPassword {
                        user: user.to_string(),
                    },
                    LOGIN_PASSWORD_CHALLENGE.to_vec(),
                )
            }
            _ => SaslStep::Malformed("the LOGIN user name is empty or not UTF-8"),
        }
    }

    fn external(&mut self, data: &[u8], auth: &dyn Authenticator) -> SaslStep {
        let Ok(authzid) = std::str::from_utf8(data) else {
            return SaslStep::Malformed("the EXTERNAL authorization identity is not UTF-8");
        };
        if let Some(refused) = refuse_long_name(authzid) {
            return refused;
        }
        let Some(identity) = self.ctx.tls_client_identity.as_deref() else {
            return verdict(Err(FailureReason::NoCertificateIdentity), &mut self.failure);
        };
        if !authzid.is_empty() && authzid != identity {
            return verdict(Err(FailureReason::OtherIdentity), &mut self.failure);
        }
        let account = auth.account(identity).ok_or(FailureReason::UnknownUser);
        verdict(account, &mut self.failure)
    }

    fn scram_first(&mut self, data: &[u8], auth: &dyn Authenticator) -> SaslStep {
        let Ok(msg) = std::str::from_utf8(data) else {
            return SaslStep::Malformed("the SCRAM message is not UTF-8");
        };
        let client = match scram::parse_client_first(msg) {
            Ok(client) => client,
            Err(reject) => return self.rejected(reject),
        };
        self.claimed_user = Some(client.user.clone());
        let names = std::iter::once(&client.user).chain(client.authzid.as_ref());
        if let Some(refused) = names.filter_map(|name| refuse_long_name(name)).next() {
            return refused;
        }
        // Nobody logs in as somebody else.
        if client.authzid.as_ref().is_some_and(|a| *a != client.user) {
            return verdict(Err(FailureReason::OtherIdentity), &mut self.failure);
        }
        let server_nonce = match self.fixed_challenge.take() {
            Some(fixed) => fixed,
            None => {
                let mut raw = [0u8; SCRAM_NONCE_BYTES];
                if let Err(error) = getrandom::fill(&mut raw) {
                    return self.no_randomness(error);
                }
                BASE64.encode(raw)
            }
        };
        let credentials = auth.scram_credentials(&client.user);
        let (message, pending) = scram::server_first(&client, &server_nonce, credentials);
        self.challenge(State::ScramFinal(Box::new(pending)), message.into_bytes())
    }

    fn scram_final(&mut self, pending: &scram::Pending, data: &[u8]) -> SaslStep {
        let Ok(msg) = std::str::from_utf8(data) else {
            return SaslStep::Malformed("the SCRAM message is not UTF-8");
        };
        match scram::client_final(pending, msg) {
            Ok((server_final, account)) => {
                self.challenge(State::ScramEnd(account), server_final.into_bytes())
            }
            Err(reject) => self.rejected(reject),
        }
    }

    fn rejected(&mut self, reject: scram::Reject) -> SaslStep {
        match reject {
            scram::Reject::Malformed(text) => SaslStep::Malformed(text),
            scram::Reject::Failure(reason) => verdict(Err(reason), &mut self.failure),
        }
    }

    /// The operating system gave no random bytes: fail the exchange rather than send a
    /// guessable challenge.
    fn no_randomness(&mut self, error: getrandom::Error) -> SaslStep {
        tracing::error!(%error, "cannot get random bytes for a SASL challenge");
        verdict(Err(FailureReason::NoRandomness), &mut self.failure)
    }
}

/// The step that ends an exchange with this verdict; a failure's reason is kept in `failure`
/// for the log.
fn verdict(checked: Checked, failure: &mut Option<FailureReason>) -> SaslStep {
    if let Err(reason) = checked {
        *failure = Some(reason);
    }
    SaslStep::Done(checked.into())
}

/// PLAIN (RFC 4616 section 2): `[authzid] NUL authcid NUL passwd`. The identities must be
/// UTF-8; the password is passed on as bytes, as PASS's is.
fn plain(
    data: &[u8],
    auth: &dyn Authenticator,
    claimed: &mut Option<String>,
    failure: &mut Option<FailureReason>,
) -> SaslStep {
    let mut parts = data.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return SaslStep::Malformed("PLAIN expects authzid NUL user NUL password");
    };
    if authcid.is_empty() || password.is_empty() {
        return SaslStep::Malformed("PLAIN needs a user name and a password");
    }
    let (Ok(authzid), Ok(authcid)) = (std::str::from_utf8(authzid), std::str::from_utf8(authcid))
    else {
        return SaslStep::Malformed("the PLAIN identities are not UTF-8");
    };
    *claimed = Some(authcid.to_string());
    if let Some(refused) = refuse_long_name(authcid)
        .or_else(|| refuse_long_name(authzid))
        .or_else(|| refuse_long_password(password))
    {
        return refused;
    }
    // Nobody logs in as somebody else.
    if !authzid.is_empty() && authzid != authcid {
        return verdict(Err(FailureReason::OtherIdentity), failure);
    }
    verdict(auth.check_password(authcid, password), failure)
}

/// CRAM-MD5 (RFC 2195 section 2): the answer is the user name, a space, and 32 hex digits.
fn cram_md5(
    challenge: &str,
    data: &[u8],
    auth: &dyn Authenticator,
    claimed: &mut Option<String>,
    failure: &mut Option<FailureReason>,
) -> SaslStep {
    let shape = "CRAM-MD5 expects a user name, a space and 32 hex digits";
    let Ok(text) = std::str::from_utf8(data) else {
        return SaslStep::Malformed(shape);
    };
    match text.rsplit_once(' ') {
        Some((user, digest))
            if !user.is_empty()
                && digest.len() == 32
                && digest.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            *claimed = Some(user.to_string());
            if let Some(refused) = refuse_long_name(user) {
                return refused;
            }
            verdict(
                auth.check_cram_md5(user, challenge.as_bytes(), digest),
                failure,
            )
        }
        _ => SaslStep::Malformed(shape),
    }
}

/// A fresh CRAM-MD5 challenge in the form RFC 2195 section 2 suggests (a msg-id):
/// `<random.seconds@hostname>`, 64 random bits in decimal.
fn cram_md5_challenge(hostname: &str) -> Result<String, getrandom::Error> {
    let mut raw = [0u8; 8];
    getrandom::fill(&mut raw)?;
    let random = u64::from_be_bytes(raw);
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let usable = !hostname.is_empty()
        && hostname
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'<' | b'>' | b'@'));
    let host = if usable { hostname } else { "localhost" };
    Ok(format!("<{random}.{seconds}@{host}>"))
}

#[cfg(test)]
mod tests;
