//! The SASL mechanisms of POP3's AUTH command (RFC 5034), as state machines that do no I/O.
//!
//! The connection driver turns `AUTH <mechanism> [initial-response]` into
//! [`SaslExchange::start`], sends each [`SaslStep::Challenge`] as a `+ ` line, and feeds each
//! line the client sends back to [`SaslExchange::step`], until [`SaslStep::Done`] or
//! [`SaslStep::Malformed`]. A line of a single `*` (the client cancels, RFC 5034 section 4) is
//! the driver's to answer with `-ERR`; it never reaches `step`.
//!
//! The credentials are checked by a [`SaslVerifier`] the driver passes to both calls: the user
//! database, which may hash (PBKDF2, Argon2...), so the driver runs the calls off its async
//! threads. What no state machine can make without I/O, the random part of CRAM-MD5's
//! challenge and of SCRAM's server nonce, and the time in CRAM-MD5's challenge, the driver
//! gives in [`SaslContext::nonces`].
//!
//! The mechanisms:
//! - PLAIN (RFC 4616): `[authzid] NUL authcid NUL password`. The authorization identity must be
//!   empty or the authentication identity: nobody logs in as somebody else.
//! - LOGIN (draft-murchison-sasl-login): challenges `Username:` then `Password:`. An initial
//!   response is taken as the user name, as most servers do, although the draft has none.
//! - CRAM-MD5 (RFC 2195): the challenge `<random.time@hostname>`, the answer `user digest`. For
//!   users whose secret the verifier holds in a form HMAC-MD5 can use (facteur's passwd-file:
//!   `{PLAIN}` or `{CRAM-MD5}`). No initial response (the server speaks first).
//! - SCRAM-SHA-256 (RFC 5802, RFC 7677), without channel binding: see the `scram` module; its
//!   keys and [`ScramCredentials`] are in `scram_keys`.
//! - EXTERNAL (RFC 4422 appendix A): the identity of a verified TLS client certificate, which
//!   must be a user the verifier knows; the authorization identity sent must be empty or that
//!   identity.
//! - OAUTHBEARER (RFC 7628) and XOAUTH2 (Google's and Microsoft's form): a bearer token, judged
//!   by [`SaslVerifier::check_bearer`], which names the user; an authorization identity sent
//!   (`a=`, `user=`) must be that user. A refused token is answered as RFC 7628 section 3.2.2
//!   asks: a challenge holding the error JSON ([`BearerErrorInfo`]), which the client answers
//!   with `\x01` (XOAUTH2 clients: an empty line), and only then the failure. The messages'
//!   grammar is in `oauth`.
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
//! lengths; do I/O, read a clock or draw random numbers.

mod oauth;
mod scram;
mod scram_keys;
#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

use crate::text::Msg;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

pub use oauth::{BearerErrorInfo, MAX_BEARER_LINE, MAX_TOKEN_LEN};
#[cfg(any(test, feature = "count-derivations"))]
pub use scram_keys::derivations;
pub use scram_keys::{
    hmac_sha256, sha256, ScramCredentials, ScramKeys, KEY_LEN, SCRAM_DEFAULT_ITERATIONS,
    SCRAM_MAX_ITERATIONS, SCRAM_MIN_ITERATIONS,
};

/// The longest user name accepted, in bytes. A longer one, from any login command, is refused
/// before any lookup or hashing.
pub const USER_NAME_MAX_LEN: usize = 255;

/// The longest password accepted at login, in bytes: longer than any password manager makes,
/// and short enough that no password makes a hash cost much more than usual (SHA-crypt's cost
/// grows with the length: a 3,000-octet password costs ten times a short one). A longer one is
/// refused before any hashing.
pub const PASSWORD_MAX_LEN: usize = 1024;

/// The longest SASL continuation line accepted, in octets, CRLF included (the way
/// [`LineFramer`](crate::line::LineFramer) counts). RFC 5034 section 4 lifts POP3's 255-octet
/// limit for these lines and asks servers to take the longest their mechanisms produce. The
/// longest here is PLAIN's: a 255-octet authorization identity, a 255-octet user name and a
/// password of up to 1 KiB make 1.5 KiB, 2 KiB in base64; a SCRAM client-final message is under
/// 300 octets with a client nonce of 100 characters. 4 KiB leaves room to spare and keeps what
/// one session may make the server buffer small.
pub const MAX_SASL_LINE: usize = 4096;

/// The LOGIN mechanism's challenges: the forms most clients and servers use (the draft also
/// allows "User Name" and "Password"; clients ignore the text).
const LOGIN_USER_CHALLENGE: &[u8] = b"Username:";
const LOGIN_PASSWORD_CHALLENGE: &[u8] = b"Password:";

/// Random bytes in a SCRAM server nonce: 144 bits, 24 base64 characters.
const SCRAM_NONCE_BYTES: usize = 18;

/// Random bytes in a CRAM-MD5 challenge: 64 bits, written in decimal.
const CRAM_MD5_RANDOM_BYTES: usize = 8;

/// Why a login failed, for the administrator's log only: the client gets the same answer
/// whatever the reason, and finding the reason costs no work that would tell them apart (it is
/// known at the point where the check already took one branch or the other, after the same
/// hash work).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// No such user.
    UnknownUser,
    /// The user exists; the password (or digest, or proof) is wrong.
    WrongPassword,
    /// The user's password is stored with a scheme this method cannot work from: CRAM-MD5,
    /// SCRAM-SHA-256 or APOP for a one-way hash. No password can succeed. The scheme's name, as
    /// the user database writes it (`SHA512-CRYPT`): the schemes are the database's business.
    MethodImpossible(&'static str),
    /// A user name over [`USER_NAME_MAX_LEN`] or a password over [`PASSWORD_MAX_LEN`], refused
    /// before any lookup.
    TooLong,
    /// An authorization identity other than the user (PLAIN, SCRAM, EXTERNAL): nobody logs in
    /// as somebody else.
    OtherIdentity,
    /// SASL EXTERNAL on a connection whose client certificate names no user.
    NoCertificateIdentity,
    /// A SCRAM client-final message whose nonce or channel binding is not the one of this
    /// exchange.
    ExchangeMismatch,
    /// No random bytes for a challenge: a server fault, not the client's.
    NoRandomness,
    /// The authenticator did not say (one that implements only the verdict methods).
    Unspecified,
    /// A bearer token (OAUTHBEARER, XOAUTH2) the verifier refused, and why: a bad signature,
    /// an expired token, another audience...
    BadToken(&'static str),
    /// The user database could not be asked (a database that does not answer): a fault of the
    /// server, not of the client, whose credentials were not judged. The driver answers
    /// `[SYS/TEMP]` and counts no failed login.
    Unavailable,
    /// A right app password where app passwords are not taken (POP2's HELO): a failed login
    /// like a wrong password.
    AppPasswordRefused,
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureReason::UnknownUser => f.write_str("unknown user"),
            FailureReason::WrongPassword => f.write_str("wrong password"),
            FailureReason::MethodImpossible(scheme) => write!(
                f,
                "method impossible: the password is stored as {scheme}, which this method cannot use"
            ),
            FailureReason::TooLong => f.write_str("credentials too long"),
            FailureReason::OtherIdentity => {
                f.write_str("authorization identity is not the user's own")
            }
            FailureReason::NoCertificateIdentity => {
                f.write_str("the client certificate names no user")
            }
            FailureReason::ExchangeMismatch => {
                f.write_str("exchange malformed: nonce or channel binding does not match")
            }
            FailureReason::NoRandomness => f.write_str("no random bytes for the challenge"),
            FailureReason::AppPasswordRefused => {
                f.write_str("an app password, which this protocol does not take")
            }
            FailureReason::Unspecified => f.write_str("refused by the authenticator"),
            FailureReason::BadToken(why) => write!(f, "bad token: {why}"),
            FailureReason::Unavailable => f.write_str("the user database is unavailable"),
        }
    }
}

/// What an exchange asks of the user database. Each method may be slow on purpose (password
/// hashing) and may block: the driver calls [`SaslExchange::start`] and [`SaslExchange::step`]
/// where that is allowed.
///
/// Whatever the method, an unknown user must cost the same work as a known one and get the
/// same answer as a wrong password; the [`FailureReason`] of a failure is for the log only.
pub trait SaslVerifier {
    /// What a successful login gives.
    type Account;

    /// PLAIN and LOGIN: `password` is the one the client sent, as bytes.
    fn check_password(&self, user: &str, password: &[u8]) -> Result<Self::Account, FailureReason>;

    /// CRAM-MD5 (RFC 2195): `digest_hex` is the client's 32 hex digits of
    /// HMAC-MD5(secret, `challenge`), `challenge` the exact bytes the server sent (angle
    /// brackets included).
    fn check_cram_md5(
        &self,
        user: &str,
        challenge: &[u8],
        digest_hex: &str,
    ) -> Result<Self::Account, FailureReason>;

    /// SCRAM-SHA-256: the keys of `user`. A user who cannot use SCRAM gets made-up keys that
    /// are the same at every attempt and no account ([`ScramCredentials::made_up`]), so that
    /// the exchange looks the same until the client's proof fails.
    fn scram_credentials(&self, user: &str) -> ScramCredentials<Self::Account>;

    /// EXTERNAL: the account of `identity`, with no credential checked, the TLS layer having
    /// verified a client certificate that names it.
    fn account(&self, identity: &str) -> Option<Self::Account>;

    /// OAUTHBEARER and XOAUTH2: the user a bearer token names, once it is judged valid (its
    /// signature, issuer, audience and times, or the issuer's introspection); the exchange then
    /// gets the account with [`SaslVerifier::account`]. A verifier that knows no issuer refuses
    /// every token, which is the default.
    fn check_bearer(&self, token: &str) -> Result<String, FailureReason> {
        let _ = token;
        Err(FailureReason::BadToken("no issuer is configured"))
    }

    /// The user a refused token claims to be, unverified: for the failed-login penalties per
    /// user name and the log, as the name a refused password was sent with. None by default.
    fn bearer_claimed_user(&self, token: &str) -> Option<String> {
        let _ = token;
        None
    }
}

/// A SASL mechanism facteur implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    Plain,
    Login,
    CramMd5,
    ScramSha256,
    External,
    OAuthBearer,
    XOAuth2,
}

impl Mechanism {
    /// Every mechanism, strongest first.
    pub const ALL: [Mechanism; 7] = [
        Mechanism::External,
        Mechanism::ScramSha256,
        Mechanism::OAuthBearer,
        Mechanism::XOAuth2,
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
            Mechanism::OAuthBearer => "OAUTHBEARER",
            Mechanism::XOAuth2 => "XOAUTH2",
        }
    }

    /// True for the bearer-token mechanisms (OAUTHBEARER, XOAUTH2). A bearer token is as good
    /// as a password to whoever reads it: the server offers them where it offers PLAIN.
    pub fn sends_bearer_token(self) -> bool {
        matches!(self, Mechanism::OAuthBearer | Mechanism::XOAuth2)
    }

    /// The longest continuation line (and initial response) this mechanism takes, in octets:
    /// [`MAX_SASL_LINE`], or [`MAX_BEARER_LINE`] for the bearer mechanisms, whose tokens are
    /// longer than any password.
    pub fn max_line(self) -> usize {
        if self.sends_bearer_token() {
            MAX_BEARER_LINE
        } else {
            MAX_SASL_LINE
        }
    }

    /// True for the mechanisms that send the password itself (PLAIN, LOGIN): RFC 5034
    /// section 4 wants them refused unless the session is protected (TLS).
    pub fn sends_password(self) -> bool {
        matches!(self, Mechanism::Plain | Mechanism::Login)
    }

    /// True for the mechanisms whose challenge must be fresh (CRAM-MD5, SCRAM-SHA-256): the
    /// driver draws random bytes for them into [`SaslContext::nonces`], and only for them.
    pub fn needs_nonces(self) -> bool {
        matches!(self, Mechanism::CramMd5 | Mechanism::ScramSha256)
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

/// What makes an exchange's challenge unique and unguessable: random bytes and the time, which
/// this crate cannot get itself (it has no random source and no clock). The driver makes them
/// with [`Nonces::new`] from the operating system's random bytes for every exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nonces {
    /// CRAM-MD5's challenge: a random number, in decimal.
    cram_md5_random: u64,
    /// CRAM-MD5's challenge: seconds since the Unix epoch.
    unix_time: u64,
    /// SCRAM's server nonce: printable ASCII but ','.
    scram_nonce: String,
}

impl Nonces {
    /// How many random bytes [`Nonces::new`] takes: 8 for CRAM-MD5's challenge, 18 (144 bits)
    /// for SCRAM's server nonce.
    pub const RANDOM_LEN: usize = CRAM_MD5_RANDOM_BYTES + SCRAM_NONCE_BYTES;

    /// Nonces from fresh random bytes, and the time in seconds since the Unix epoch.
    pub fn new(random: [u8; Self::RANDOM_LEN], unix_time: u64) -> Self {
        let (cram, scram) = random.split_at(CRAM_MD5_RANDOM_BYTES);
        let mut cram_md5_random = [0u8; CRAM_MD5_RANDOM_BYTES];
        cram_md5_random.copy_from_slice(cram);
        Self {
            cram_md5_random: u64::from_be_bytes(cram_md5_random),
            unix_time,
            scram_nonce: BASE64.encode(scram),
        }
    }

    /// Nonces chosen by the caller, SCRAM's server nonce given as it goes out: for test
    /// vectors (RFC 7677's nonce is no base64), never for a real exchange. `None` if
    /// `scram_nonce` is empty or holds a character other than printable ASCII but ','.
    pub fn chosen(cram_md5_random: u64, unix_time: u64, scram_nonce: &str) -> Option<Self> {
        let printable = !scram_nonce.is_empty() && scram_nonce.bytes().all(scram::is_printable);
        printable.then(|| Self {
            cram_md5_random,
            unix_time,
            scram_nonce: scram_nonce.to_string(),
        })
    }

    /// CRAM-MD5's challenge, in the form RFC 2195 section 2 suggests (a msg-id):
    /// `<random.seconds@hostname>`, with `localhost` for a host name that cannot be in it.
    fn cram_md5_challenge(&self, hostname: &str) -> String {
        let usable = !hostname.is_empty()
            && hostname
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'<' | b'>' | b'@'));
        let host = if usable { hostname } else { "localhost" };
        format!("<{}.{}@{host}>", self.cram_md5_random, self.unix_time)
    }
}

/// What an exchange needs to know of the session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SaslContext {
    /// The server's host name, for the CRAM-MD5 challenge.
    pub hostname: String,
    /// The identity from a verified TLS client certificate (for EXTERNAL).
    pub tls_client_identity: Option<String>,
    /// Fresh nonces for CRAM-MD5 and SCRAM-SHA-256; `None` if the operating system gave no
    /// random bytes, and then those mechanisms fail ([`FailureReason::NoRandomness`]) where they
    /// would have used them, rather than send a guessable challenge.
    pub nonces: Option<Nonces>,
    /// What the error challenge of a refused bearer token says besides its status.
    pub bearer_error: BearerErrorInfo,
}

/// How an exchange ended, as the client may be told: the account, or a failure whose reason
/// ([`SaslExchange::failure_reason`]) is for the log only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SaslOutcome<A> {
    Success(A),
    /// Wrong password, unknown user, or a user who cannot use this mechanism: deliberately the
    /// same answer for all three.
    Failure,
}

/// What the driver does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SaslStep<A> {
    /// Send `+ <base64(data)>` (or `+ ` for empty data) and feed the client's next line to
    /// [`SaslExchange::step`].
    Challenge(Vec<u8>),
    /// Finished: answer `+OK` for a success (the session enters the TRANSACTION state), `-ERR`
    /// for a failure.
    Done(SaslOutcome<A>),
    /// The client's data was malformed (bad base64, wrong shape): answer `-ERR` with this text;
    /// the exchange is over.
    Malformed(Msg),
    /// The client's credentials were refused for their length (a user name over
    /// [`USER_NAME_MAX_LEN`], a password over [`PASSWORD_MAX_LEN`]) before any lookup or
    /// hashing, or for a character SASLprep prohibits (`Msg::Utf8Prohibited`, RFC 6856): answer
    /// `-ERR [AUTH]` (`[UTF8]` for the latter) with this text; a failed login. The exchange is
    /// over.
    Refused(Msg),
}

/// The answers to credentials too long to be checked.
const USER_NAME_TOO_LONG: Msg = Msg::UserNameTooLong;
const PASSWORD_TOO_LONG: Msg = Msg::PasswordTooLong;

/// A user name as it is looked up: SASLprep'd when not ASCII (RFC 6856, RFC 4616 section 2),
/// or the step that refuses it.
fn prepared_name<A>(name: &str) -> Result<String, SaslStep<A>> {
    crate::utf8::prepare(name)
        .map(|n| n.into_owned())
        .map_err(|_| SaslStep::Refused(Msg::Utf8Prohibited))
}

/// A password as it is checked: SASLprep'd when UTF-8 and not ASCII; other octets as they came,
/// as PASS takes them from a client that never said UTF8.
fn prepared_password<A>(password: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, SaslStep<A>> {
    crate::utf8::prepare_octets(password, true).map_err(|_| SaslStep::Refused(Msg::Utf8Prohibited))
}

/// `Some(Refused)` if a user name (or authorization identity) is too long to be checked.
fn refuse_long_name<A>(name: &str) -> Option<SaslStep<A>> {
    (name.len() > USER_NAME_MAX_LEN).then_some(SaslStep::Refused(USER_NAME_TOO_LONG))
}

/// `Some(Refused)` if a password is too long to be hashed.
fn refuse_long_password<A>(password: &[u8]) -> Option<SaslStep<A>> {
    (password.len() > PASSWORD_MAX_LEN).then_some(SaslStep::Refused(PASSWORD_TOO_LONG))
}

/// Where an exchange stands. Holds no password.
enum State<A> {
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
    ScramFinal(Box<scram::Pending<A>>),
    /// The server-final message went out as a challenge; the client must answer it empty.
    ScramEnd(A),
    /// OAUTHBEARER or XOAUTH2, awaiting the client's message.
    Bearer,
    /// The token was refused and the error JSON went out; the client's answer (`\x01`, or
    /// empty) ends the exchange in this failure.
    BearerRefused(FailureReason),
    Over,
}

impl<A> State<A> {
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
            State::Bearer => "awaiting the bearer-token message",
            State::BearerRefused(_) => "awaiting the answer to the bearer-token error",
            State::Over => "over",
        }
    }
}

/// One SASL authentication exchange, from AUTH to `+OK` or `-ERR`, for a verifier whose
/// accounts are `A`. `Debug` shows the mechanism and the stage only.
pub struct SaslExchange<A> {
    mechanism: Mechanism,
    ctx: SaslContext,
    state: State<A>,
    /// The user name the client claimed, once known (for failed-login penalties).
    claimed_user: Option<String>,
    /// Why the exchange ended in a failure, for the log (never for the client).
    failure: Option<FailureReason>,
}

impl<A> fmt::Debug for SaslExchange<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslExchange")
            .field("mechanism", &self.mechanism)
            .field("state", &self.state.name())
            .finish_non_exhaustive()
    }
}

impl<A> SaslExchange<A> {
    /// Starts an exchange for `AUTH <mechanism> [initial_response]`.
    ///
    /// `initial_response`: the optional second argument of AUTH as sent (base64 text; "="
    /// means empty, RFC 5034 section 4). CRAM-MD5 takes none: one is [`SaslStep::Malformed`].
    pub fn start<V>(
        mechanism: Mechanism,
        ctx: SaslContext,
        initial_response: Option<&str>,
        verifier: &V,
    ) -> (Self, SaslStep<A>)
    where
        V: SaslVerifier<Account = A> + ?Sized,
    {
        let mut exchange = Self {
            mechanism,
            ctx,
            state: State::Over,
            claimed_user: None,
            failure: None,
        };
        let step = exchange.begin(initial_response, verifier);
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
    pub fn step<V>(&mut self, line: &str, verifier: &V) -> SaslStep<A>
    where
        V: SaslVerifier<Account = A> + ?Sized,
    {
        let state = std::mem::replace(&mut self.state, State::Over);
        if matches!(state, State::Over) {
            return SaslStep::Malformed(Msg::SaslExchangeOver);
        }
        if line.len() > self.mechanism.max_line() {
            return SaslStep::Malformed(Msg::SaslLineTooLong);
        }
        let Ok(data) = BASE64.decode(line) else {
            return SaslStep::Malformed(Msg::SaslNotBase64);
        };
        match state {
            State::Plain => plain(&data, verifier, &mut self.claimed_user, &mut self.failure),
            State::LoginUser => self.login_user(&data),
            State::LoginPassword { user } => {
                let refused = refuse_long_password(&data);
                let step = refused.unwrap_or_else(|| match prepared_password(&data) {
                    Ok(password) => {
                        verdict(verifier.check_password(&user, &password), &mut self.failure)
                    }
                    Err(refused) => refused,
                });
                self.claimed_user = Some(user);
                step
            }
            State::CramMd5 { challenge } => cram_md5(
                &challenge,
                &data,
                verifier,
                &mut self.claimed_user,
                &mut self.failure,
            ),
            State::External => self.external(&data, verifier),
            State::ScramFirst => self.scram_first(&data, verifier),
            State::ScramFinal(pending) => self.scram_final(*pending, &data),
            State::ScramEnd(account) => {
                if data.is_empty() {
                    SaslStep::Done(SaslOutcome::Success(account))
                } else {
                    SaslStep::Malformed(Msg::SaslEmptyAnswerExpected)
                }
            }
            State::Bearer => self.bearer(&data, verifier),
            State::BearerRefused(reason) => {
                // RFC 7628 wants `\x01`; XOAUTH2 clients send nothing. Whatever the answer, the
                // token was refused.
                verdict(Err(reason), &mut self.failure)
            }
            State::Over => SaslStep::Malformed(Msg::SaslExchangeOver),
        }
    }

    /// The first step: with the initial response if there is one, else the first challenge.
    fn begin<V>(&mut self, initial_response: Option<&str>, verifier: &V) -> SaslStep<A>
    where
        V: SaslVerifier<Account = A> + ?Sized,
    {
        let initial = match initial_response {
            None => None,
            Some("=") => Some(Vec::new()),
            Some(text) if text.len() > self.mechanism.max_line() => {
                return SaslStep::Malformed(Msg::SaslInitialTooLong)
            }
            Some(text) => match BASE64.decode(text) {
                Ok(data) if !data.is_empty() => Some(data),
                // "" is not how an empty response is sent ("=" is), and "" is no base64 line.
                _ => return SaslStep::Malformed(Msg::SaslInitialNotBase64),
            },
        };
        match (self.mechanism, initial) {
            (Mechanism::Plain, Some(data)) => {
                plain(&data, verifier, &mut self.claimed_user, &mut self.failure)
            }
            (Mechanism::Plain, None) => self.challenge(State::Plain, Vec::new()),
            (Mechanism::Login, Some(data)) => self.login_user(&data),
            (Mechanism::Login, None) => {
                self.challenge(State::LoginUser, LOGIN_USER_CHALLENGE.to_vec())
            }
            (Mechanism::CramMd5, Some(_)) => SaslStep::Malformed(Msg::CramMd5NoInitial),
            (Mechanism::CramMd5, None) => {
                let Some(nonces) = &self.ctx.nonces else {
                    return self.no_randomness();
                };
                let challenge = nonces.cram_md5_challenge(&self.ctx.hostname);
                let data = challenge.as_bytes().to_vec();
                self.challenge(State::CramMd5 { challenge }, data)
            }
            (Mechanism::ScramSha256, Some(data)) => self.scram_first(&data, verifier),
            (Mechanism::ScramSha256, None) => self.challenge(State::ScramFirst, Vec::new()),
            (Mechanism::External, Some(data)) => self.external(&data, verifier),
            (Mechanism::External, None) => self.challenge(State::External, Vec::new()),
            (Mechanism::OAuthBearer | Mechanism::XOAuth2, Some(data)) => {
                self.bearer(&data, verifier)
            }
            (Mechanism::OAuthBearer | Mechanism::XOAuth2, None) => {
                self.challenge(State::Bearer, Vec::new())
            }
        }
    }

    fn challenge(&mut self, next: State<A>, data: Vec<u8>) -> SaslStep<A> {
        self.state = next;
        SaslStep::Challenge(data)
    }

    fn login_user(&mut self, data: &[u8]) -> SaslStep<A> {
        match std::str::from_utf8(data) {
            Ok(user) if !user.is_empty() => {
                // Claimed from now on: an exchange cancelled at the password prompt is a
                // failed login for this name.
                self.claimed_user = Some(user.to_string());
                if let Some(refused) = refuse_long_name(user) {
                    return refused;
                }
                let user = match prepared_name(user) {
                    Ok(user) => user,
                    Err(refused) => return refused,
                };
                self.challenge(
                    State::LoginPassword { user },
                    LOGIN_PASSWORD_CHALLENGE.to_vec(),
                )
            }
            _ => SaslStep::Malformed(Msg::LoginNameInvalid),
        }
    }

    fn external<V>(&mut self, data: &[u8], verifier: &V) -> SaslStep<A>
    where
        V: SaslVerifier<Account = A> + ?Sized,
    {
        let Ok(authzid) = std::str::from_utf8(data) else {
            return SaslStep::Malformed(Msg::ExternalNotUtf8);
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
        let account = verifier.account(identity).ok_or(FailureReason::UnknownUser);
        verdict(account, &mut self.failure)
    }

    fn scram_first<V>(&mut self, data: &[u8], verifier: &V) -> SaslStep<A>
    where
        V: SaslVerifier<Account = A> + ?Sized,
    {
        let Ok(msg) = std::str::from_utf8(data) else {
            return SaslStep::Malformed(Msg::ScramNotUtf8);
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
        let Some(nonces) = &self.ctx.nonces else {
            return self.no_randomness();
        };
        let credentials = verifier.scram_credentials(&client.user);
        let (message, pending) = scram::server_first(&client, &nonces.scram_nonce, credentials);
        self.challenge(State::ScramFinal(Box::new(pending)), message.into_bytes())
    }

    fn scram_final(&mut self, pending: scram::Pending<A>, data: &[u8]) -> SaslStep<A> {
        let Ok(msg) = std::str::from_utf8(data) else {
            return SaslStep::Malformed(Msg::ScramNotUtf8);
        };
        match scram::client_final(pending, msg) {
            Ok((server_final, account)) => {
                self.challenge(State::ScramEnd(account), server_final.into_bytes())
            }
            Err(reject) => self.rejected(reject),
        }
    }

    fn rejected(&mut self, reject: scram::Reject) -> SaslStep<A> {
        match reject {
            scram::Reject::Malformed(text) => SaslStep::Malformed(text),
            scram::Reject::Failure(reason) => verdict(Err(reason), &mut self.failure),
        }
    }

    /// OAUTHBEARER or XOAUTH2's message: the token judged, the authorization identity compared
    /// with the user it names, the account looked up. A refusal goes out as the error
    /// challenge first.
    fn bearer<V>(&mut self, data: &[u8], verifier: &V) -> SaslStep<A>
    where
        V: SaslVerifier<Account = A> + ?Sized,
    {
        let parsed = if self.mechanism == Mechanism::OAuthBearer {
            oauth::parse_oauthbearer(data)
        } else {
            oauth::parse_xoauth2(data)
        };
        let message = match parsed {
            Ok(message) => message,
            Err(text) => return SaslStep::Malformed(text),
        };
        let authzid = match &message.authzid {
            Some(name) => {
                self.claimed_user = Some(name.clone());
                if let Some(refused) = refuse_long_name(name) {
                    return refused;
                }
                match prepared_name(name) {
                    Ok(name) => Some(name),
                    Err(refused) => return refused,
                }
            }
            None => None,
        };
        let checked = match verifier.check_bearer(&message.token) {
            Ok(user) => {
                if self.claimed_user.is_none() {
                    self.claimed_user = Some(user.clone());
                }
                // Nobody logs in as somebody else.
                if authzid.is_some_and(|a| a != user) {
                    Err(FailureReason::OtherIdentity)
                } else {
                    verifier.account(&user).ok_or(FailureReason::UnknownUser)
                }
            }
            Err(reason) => {
                if self.claimed_user.is_none() {
                    self.claimed_user = verifier
                        .bearer_claimed_user(&message.token)
                        .filter(|u| u.len() <= USER_NAME_MAX_LEN);
                }
                Err(reason)
            }
        };
        match checked {
            Ok(account) => SaslStep::Done(SaslOutcome::Success(account)),
            Err(reason) => {
                let json = self.ctx.bearer_error.json().into_bytes();
                self.challenge(State::BearerRefused(reason), json)
            }
        }
    }

    /// The driver had no random bytes for this exchange: fail it rather than send a guessable
    /// challenge. (The driver logs why.)
    fn no_randomness(&mut self) -> SaslStep<A> {
        verdict(Err(FailureReason::NoRandomness), &mut self.failure)
    }
}

/// The step that ends an exchange with this verdict; a failure's reason is kept in `failure`
/// for the log.
fn verdict<A>(
    checked: Result<A, FailureReason>,
    failure: &mut Option<FailureReason>,
) -> SaslStep<A> {
    match checked {
        Ok(account) => SaslStep::Done(SaslOutcome::Success(account)),
        Err(reason) => {
            *failure = Some(reason);
            SaslStep::Done(SaslOutcome::Failure)
        }
    }
}

/// PLAIN (RFC 4616 section 2): `[authzid] NUL authcid NUL passwd`. The identities must be
/// UTF-8; the password is passed on as bytes, as PASS's is.
fn plain<V>(
    data: &[u8],
    verifier: &V,
    claimed: &mut Option<String>,
    failure: &mut Option<FailureReason>,
) -> SaslStep<V::Account>
where
    V: SaslVerifier + ?Sized,
{
    let mut parts = data.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return SaslStep::Malformed(Msg::PlainShape);
    };
    if authcid.is_empty() || password.is_empty() {
        return SaslStep::Malformed(Msg::PlainNeedsCredentials);
    }
    let (Ok(authzid), Ok(authcid)) = (std::str::from_utf8(authzid), std::str::from_utf8(authcid))
    else {
        return SaslStep::Malformed(Msg::PlainNotUtf8);
    };
    *claimed = Some(authcid.to_string());
    if let Some(refused) = refuse_long_name(authcid)
        .or_else(|| refuse_long_name(authzid))
        .or_else(|| refuse_long_password(password))
    {
        return refused;
    }
    // SASLprep (RFC 4616 section 2), so that a name or password typed in NFD matches the one
    // stored in NFC; the identities are compared prepared.
    let prepared = (
        prepared_name(authzid),
        prepared_name(authcid),
        prepared_password(password),
    );
    let (authzid, authcid, password) = match prepared {
        (Ok(z), Ok(c), Ok(p)) => (z, c, p),
        (Err(refused), ..) | (_, Err(refused), _) | (.., Err(refused)) => return refused,
    };
    // Nobody logs in as somebody else.
    if !authzid.is_empty() && authzid != authcid {
        return verdict(Err(FailureReason::OtherIdentity), failure);
    }
    verdict(verifier.check_password(&authcid, &password), failure)
}

/// CRAM-MD5 (RFC 2195 section 2): the answer is the user name, a space, and 32 hex digits.
fn cram_md5<V>(
    challenge: &str,
    data: &[u8],
    verifier: &V,
    claimed: &mut Option<String>,
    failure: &mut Option<FailureReason>,
) -> SaslStep<V::Account>
where
    V: SaslVerifier + ?Sized,
{
    let shape = Msg::CramMd5Shape;
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
            let user = match prepared_name(user) {
                Ok(user) => user,
                Err(refused) => return refused,
            };
            verdict(
                verifier.check_cram_md5(&user, challenge.as_bytes(), digest),
                failure,
            )
        }
        _ => SaslStep::Malformed(shape),
    }
}
