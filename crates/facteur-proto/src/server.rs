//! `ServerSession`: the server side of POP3 as a state machine with no I/O.
//!
//! The driver feeds it one command line at a time ([`ServerSession::handle_line`]) and writes
//! whatever it appends to the output buffer. When a command needs the world (checking a
//! password, reading a message, applying deletions), the session returns an [`Event`]; the driver
//! does the work and reports back ([`ServerSession::auth_result`],
//! [`ServerSession::update_result`]). Until then the driver must not feed further lines; they
//! stay in its input buffer, which is how pipelined commands keep their order (RFC 2449 section 6.6).
//!
//! States follow RFC 1939 section 3: AUTHORIZATION, then TRANSACTION once the maildrop is
//! locked and its snapshot taken, then UPDATE after QUIT, where (and only where) deletions happen.
//!
//! RFC 6856: UTF8 (AUTHORIZATION only) turns UTF-8 mode on; user names and passwords that are
//! not ASCII are SASLprep'd ([`crate::utf8`]) in either mode. LANG chooses the language of every
//! human-readable text after it; the texts are [`crate::text`]'s, never written here.

use crate::command::{self, Command};
use crate::policy::{Expire, Policy};
use crate::response::{self, Code};
use crate::text::{Lang, Msg};
use crate::types::{same_secret, MessageMeta, MsgNum, Secret};
use crate::utf8::{self, PrepError};
use std::fmt;
use std::sync::Arc;

/// The longest AUTH line with the initial response of a bearer mechanism (OAUTHBEARER,
/// XOAUTH2), CRLF included: `AUTH OAUTHBEARER ` and the longest response those mechanisms take.
pub const MAX_AUTH_LINE: usize = "AUTH OAUTHBEARER ".len() + crate::sasl::MAX_BEARER_LINE + 2;

/// What the session needs to know of its server and of this connection.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Sent in CAPA as `IMPLEMENTATION`; empty to leave it out. Shared: a server gives every
    /// session the same.
    pub implementation: Arc<str>,
    /// The greeting text after `+OK`; `None` for the catalogue's, in `language`.
    pub greeting: Option<Arc<str>>,
    /// The language of the texts until the client chooses one with LANG (RFC 6856 section 3),
    /// and the one `LANG *` chooses.
    pub language: Lang,
    /// APOP's `<process.random@host>` timestamp; `Some` only when APOP is offered.
    pub apop_timestamp: Option<String>,
    /// Whether USER/PASS (and APOP) may be used on this connection (the plaintext policy).
    pub user_pass_allowed: bool,
    /// Whether STLS can be offered on this connection (a plain connection with a certificate).
    pub stls_available: bool,
    /// The SASL mechanisms offered on this connection, in CAPA order (empty: no AUTH).
    pub sasl_mechanisms: Arc<[String]>,
    /// Answer the obsolete LAST command (RFC 1460); off by default.
    pub enable_last: bool,
    /// After this many bad commands (unknown, malformed, out of state, too long) the session
    /// closes: a client that speaks nonsense is not a POP3 client. A SASL exchange that ends
    /// without a verdict (cancelled with `*`, or malformed) counts as one.
    pub max_bad_commands: u32,
    /// After this many login attempts (PASS, APOP, or AUTH with a mechanism), whatever their
    /// outcome, a session still in AUTHORIZATION closes: a client that knows its password needs
    /// one, and each attempt may cost the server a password hash.
    pub max_auth_attempts: u32,
    /// The server-wide LOGIN-DELAY and EXPIRE (RFC 2449), announced by CAPA before login; the
    /// user's own replace them at login ([`ServerSession::set_policy`]).
    pub policy: Policy,
    /// True when some users have a LOGIN-DELAY or EXPIRE of their own: CAPA then says `USER`
    /// after the server-wide values before login (RFC 2449 sections 6.5 and 6.7).
    pub policy_per_user: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            implementation: Arc::from(""),
            greeting: None,
            language: Lang::En,
            apop_timestamp: None,
            user_pass_allowed: true,
            stls_available: false,
            sasl_mechanisms: Arc::from([]),
            enable_last: false,
            max_bad_commands: 20,
            max_auth_attempts: 10,
            policy: Policy::default(),
            policy_per_user: false,
        }
    }
}

/// The RFC 1939 states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Authorization,
    Transaction,
    Update,
    /// The session is over; the driver closes the connection after flushing the output.
    Closed,
}

/// Work the driver must do for the session. Equality compares the secrets in constant time.
#[derive(Debug)]
pub enum Event {
    /// Check USER/PASS credentials, then lock and open the maildrop, and call `auth_result`.
    Authenticate {
        user: String,
        password: Secret<Vec<u8>>,
    },
    /// Check an APOP digest against the configured timestamp, then as for `Authenticate`.
    Apop { user: String, digest: String },
    /// Stream message `index` (0-based): the `+OK` line is already in the output; send the body
    /// through a `dot::DotEncoder::new(top_lines)` and its terminator.
    Retrieve {
        index: usize,
        top_lines: Option<u64>,
    },
    /// A multi-line listing is pending: call `fill_listing` until it returns true.
    Listing,
    /// STAT, LIST or RETR needs the messages' sizes, which were not known at login (see
    /// `AuthResult::Success::sizes_known`): compute them and call `sizes_result`, which answers
    /// the command (and may return `Retrieve` or `Listing`).
    MessageSizes,
    /// QUIT in TRANSACTION: delete these messages (0-based, ascending), record the first
    /// retrieval of the `retrieved` ones (0-based, ascending, none of them deleted: the messages
    /// sent whole by RETR in this session, for EXPIRE), and call `update_result`. Under EXPIRE 0
    /// the retrieved messages are among the deletions instead.
    Update {
        deletions: Vec<usize>,
        retrieved: Vec<usize>,
    },
    /// STLS accepted (`+OK` is in the output): flush, discard every buffered input byte, and
    /// start the TLS handshake (RFC 2595 section 4).
    StartTls,
    /// AUTH with a SASL mechanism the session advertised (handled by the driver's SASL layer).
    Sasl {
        mechanism: String,
        initial_response: Option<Secret<String>>,
    },
    /// Flush the output and close the connection.
    Close,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        use Event as E;
        // A match on `self` alone, so that a new variant cannot be forgotten here.
        match self {
            E::Authenticate { user, password } => {
                matches!(other, E::Authenticate { user: u, password: p }
                    if user == u && same_secret(Some(password), Some(p)))
            }
            E::Apop { user, digest } => {
                matches!(other, E::Apop { user: u, digest: d } if user == u && digest == d)
            }
            E::Retrieve { index, top_lines } => {
                matches!(other, E::Retrieve { index: i, top_lines: t } if index == i && top_lines == t)
            }
            E::Update {
                deletions,
                retrieved,
            } => {
                matches!(other, E::Update { deletions: d, retrieved: r } if deletions == d && retrieved == r)
            }
            E::Sasl {
                mechanism,
                initial_response,
            } => matches!(other, E::Sasl { mechanism: m, initial_response: r }
                if mechanism == m && same_secret(initial_response.as_ref(), r.as_ref())),
            E::Listing => matches!(other, E::Listing),
            E::MessageSizes => matches!(other, E::MessageSizes),
            E::StartTls => matches!(other, E::StartTls),
            E::Close => matches!(other, E::Close),
        }
    }
}

impl Eq for Event {}

/// How the driver's authentication and maildrop opening ended.
#[derive(Debug)]
pub enum AuthResult {
    /// Credentials good and the maildrop locked; `messages` is the snapshot (shared with the
    /// store's cache of snapshots: a warm login copies none of it).
    Success {
        user: String,
        messages: Arc<Vec<MessageMeta>>,
        /// False when the sizes in `messages` are not known yet (0 placeholders): the store
        /// defers reading message files until a command needs a size, so that a login and UIDL
        /// on a large maildrop whose files carry no size cost no file reads.
        sizes_known: bool,
    },
    /// Bad credentials (unknown user and wrong password alike).
    Failed,
    /// The maildrop is locked by another session.
    InUse,
    /// The credentials were good, but the user logged in less than LOGIN-DELAY seconds ago
    /// (RFC 2449 section 8.1.2): `-ERR [LOGIN-DELAY]`. Not a failed login.
    LoginDelay,
    /// A server-side failure; `permanent` selects `[SYS/PERM]` over `[SYS/TEMP]`.
    SystemError { permanent: bool },
    /// A SASL exchange ended without a verdict (cancelled with `*`, or malformed data):
    /// `-ERR` with this text, no response code; it counts as a bad command, and the client may
    /// try again.
    Aborted(Msg),
    /// The credentials were refused before any check, for their shape (a user name or a
    /// password over the length limit): `-ERR [AUTH]` with this text; `[UTF8]` for
    /// `Msg::Utf8Prohibited` and `Msg::Utf8Invalid` (RFC 6856).
    Refused(Msg),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListingKind {
    List,
    Uidl,
}

/// The state machine for one POP3 connection, server side.
#[derive(Debug)]
pub struct ServerSession {
    config: ServerConfig,
    state: State,
    /// The name given by USER, waiting for PASS.
    pending_user: Option<String>,
    /// An Event that awaits its result; lines must not be fed meanwhile.
    awaiting: Option<Awaiting>,
    user: Option<String>,
    /// Copied only if the sizes are filled in while shared (`Arc::make_mut`).
    messages: Arc<Vec<MessageMeta>>,
    deleted: Vec<bool>,
    /// Per message: sent whole by RETR in this session (EXPIRE counts from the first one).
    retrieved: Vec<bool>,
    /// The message RETR is sending, until the driver says it went out whole.
    sending: Option<usize>,
    /// The policy in force: the server's until login, then the user's.
    policy: Policy,
    deleted_count: usize,
    deleted_octets: u64,
    total_octets: u64,
    /// Highest message number accessed, for LAST (RFC 1460).
    last_accessed: u32,
    bad_commands: u32,
    /// Login attempts so far (PASS, APOP, AUTH with a mechanism), against `max_auth_attempts`.
    auth_attempts: u32,
    /// The session was closed because of `max_bad_commands` or `max_auth_attempts`.
    closed_for_errors: bool,
    tls_active: bool,
    listing: Option<(ListingKind, usize)>,
    /// False until the sizes in `messages` are real (see `Event::MessageSizes`).
    sizes_known: bool,
    /// The language of the texts (LANG).
    lang: Lang,
    /// UTF8 was accepted (RFC 6856 section 2).
    utf8_mode: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaiting {
    Auth,
    Update,
    /// The sizes, to answer this command.
    Sizes(SizedCommand),
}

/// A command that cannot be answered without the messages' sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SizedCommand {
    Stat,
    List(Option<MsgNum>),
    Retr(MsgNum),
}

impl SizedCommand {
    fn of(cmd: &Command) -> Option<Self> {
        match *cmd {
            Command::Stat => Some(Self::Stat),
            Command::List(n) => Some(Self::List(n)),
            Command::Retr(n) => Some(Self::Retr(n)),
            _ => None,
        }
    }

    fn command(self) -> Command {
        match self {
            Self::Stat => Command::Stat,
            Self::List(n) => Command::List(n),
            Self::Retr(n) => Command::Retr(n),
        }
    }
}

impl ServerSession {
    pub fn new(config: ServerConfig) -> Self {
        let policy = config.policy;
        Self {
            lang: config.language,
            utf8_mode: false,
            config,
            state: State::Authorization,
            pending_user: None,
            awaiting: None,
            user: None,
            messages: Arc::default(),
            deleted: Vec::new(),
            retrieved: Vec::new(),
            sending: None,
            policy,
            deleted_count: 0,
            deleted_octets: 0,
            total_octets: 0,
            last_accessed: 0,
            bad_commands: 0,
            auth_attempts: 0,
            closed_for_errors: false,
            tls_active: false,
            listing: None,
            sizes_known: true,
        }
    }

    /// Write the greeting (RFC 1939 section 4), with the APOP timestamp when APOP is offered.
    pub fn greeting(&self, out: &mut Vec<u8>) {
        let text = self.lang.render(Msg::Greeting, &[]);
        let greeting: &dyn fmt::Display = match &self.config.greeting {
            Some(g) => g,
            None => &text,
        };
        match &self.config.apop_timestamp {
            Some(ts) => response::ok(out, format_args!("{greeting} {ts}")),
            None => response::ok(out, greeting),
        }
    }

    /// The language of the texts now.
    pub fn lang(&self) -> Lang {
        self.lang
    }

    /// True once UTF8 was accepted (RFC 6856 section 2).
    pub fn utf8_mode(&self) -> bool {
        self.utf8_mode
    }

    /// Write `-ERR [code] text` with `msg` in the session's language: for the driver's own
    /// answers (a deadline, a shutdown, a read error).
    pub fn write_err(&self, out: &mut Vec<u8>, code: Option<Code>, msg: Msg) {
        response::err(out, code, self.lang.render(msg, &[]));
    }

    fn ok(&self, out: &mut Vec<u8>, msg: Msg, args: &[&dyn fmt::Display]) {
        response::ok(out, self.lang.render(msg, args));
    }

    fn err(&self, out: &mut Vec<u8>, code: Option<Code>, msg: Msg, args: &[&dyn fmt::Display]) {
        response::err(out, code, self.lang.render(msg, args));
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The APOP timestamp of the greeting, when APOP is offered.
    pub fn apop_timestamp(&self) -> Option<&str> {
        self.config.apop_timestamp.as_deref()
    }

    /// The authenticated user, once in TRANSACTION.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The policy the session runs under: the server's before login, the user's after.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The user's own LOGIN-DELAY and EXPIRE, from the login on: what CAPA announces in
    /// TRANSACTION, and what QUIT applies (EXPIRE 0). The driver calls it just before it
    /// reports a successful login.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// The number of messages marked deleted so far.
    pub fn deleted_count(&self) -> usize {
        self.deleted_count
    }

    /// True while an event's result is awaited: feed no line until it is given.
    pub fn is_awaiting(&self) -> bool {
        self.awaiting.is_some()
    }

    /// The connection is now under TLS (after STLS and a handshake, or implicit TLS). Updates
    /// the policy: STLS is no longer offered, and plaintext logins become acceptable.
    ///
    /// What the client chose before TLS (UTF8, LANG) is forgotten: RFC 2595 section 4 wants the
    /// server to discard what it learnt from the client before the handshake.
    pub fn set_tls_active(&mut self, user_pass_allowed: bool, sasl_mechanisms: Arc<[String]>) {
        self.tls_active = true;
        self.utf8_mode = false;
        self.lang = self.config.language;
        self.config.stls_available = false;
        self.config.user_pass_allowed = user_pass_allowed;
        self.config.sasl_mechanisms = sasl_mechanisms;
    }

    /// A command line longer than the limit arrived (and was discarded by the framer).
    pub fn handle_too_long(&mut self, out: &mut Vec<u8>) -> Option<Event> {
        self.err(out, None, Msg::LineTooLong, &[]);
        self.bad_command(out)
    }

    /// Handle one command line (without CRLF), appending the reply to `out`.
    pub fn handle_line(&mut self, line: &[u8], out: &mut Vec<u8>) -> Option<Event> {
        if self.awaiting.is_some() || self.listing.is_some() {
            // A driver bug, not a client's: refuse rather than reorder replies.
            self.err(out, Some(Code::SysTemp), Msg::CommandOutOfTurn, &[]);
            return None;
        }
        match self.state {
            State::Update | State::Closed => return Some(Event::Close),
            State::Authorization | State::Transaction => {}
        }
        if line.len() + 2 > crate::line::MAX_COMMAND_LINE && !self.long_line_allowed(line) {
            return self.handle_too_long(out);
        }
        let cmd = match command::parse(line) {
            Ok(c) => c,
            Err(e) => {
                // A user name that is not UTF-8 is RFC 6856's [UTF8] case.
                let code = (e.msg() == Msg::UserNameNotUtf8).then_some(Code::Utf8);
                self.err(out, code, e.msg(), &[]);
                return self.bad_command(out);
            }
        };
        match self.state {
            State::Authorization => self.authorization(cmd, out),
            _ => self.transaction(cmd, out),
        }
    }

    /// Command lines are at most 255 octets (RFC 2449 section 4), but for AUTH with an initial
    /// response of a bearer mechanism offered here (OAUTHBEARER, XOAUTH2): their clients (mpop,
    /// Net::POP3's XOAUTH2, Outlook's) send a token of several KiB on the AUTH line, as Gmail's
    /// and Outlook's servers accept. The driver frames lines up to [`MAX_AUTH_LINE`] when it
    /// offers those mechanisms; this is where every other command is held to 255.
    fn long_line_allowed(&self, line: &[u8]) -> bool {
        if line.len() + 2 > MAX_AUTH_LINE {
            return false;
        }
        let mut words = line.splitn(3, |&b| b == b' ');
        let (Some(keyword), Some(mechanism)) = (words.next(), words.next()) else {
            return false;
        };
        let Ok(mechanism) = std::str::from_utf8(mechanism) else {
            return false;
        };
        keyword.eq_ignore_ascii_case(b"AUTH")
            && mechanism
                .parse::<crate::sasl::Mechanism>()
                .is_ok_and(|m| m.sends_bearer_token())
            && self
                .config
                .sasl_mechanisms
                .iter()
                .any(|o| o.eq_ignore_ascii_case(mechanism))
    }

    fn bad_command(&mut self, out: &mut Vec<u8>) -> Option<Event> {
        self.bad_commands += 1;
        if self.bad_commands >= self.config.max_bad_commands {
            self.err(out, None, Msg::TooManyBadCommands, &[]);
            self.state = State::Closed;
            self.closed_for_errors = true;
            return Some(Event::Close);
        }
        None
    }

    /// True if the session closed itself after too many bad commands or login attempts.
    pub fn closed_for_errors(&self) -> bool {
        self.closed_for_errors
    }

    fn wrong_state(&mut self, out: &mut Vec<u8>) -> Option<Event> {
        let text = match self.state {
            State::Authorization => Msg::NotBeforeLogin,
            _ => Msg::NotAfterLogin,
        };
        self.err(out, None, text, &[]);
        self.bad_command(out)
    }

    fn capa(&self, out: &mut Vec<u8>) {
        self.ok(out, Msg::CapabilityList, &[]);
        let mut caps: Vec<String> = vec!["TOP".into(), "UIDL".into()];
        // USER and SASL in every state: RFC 2449 section 5 wants the capabilities announced
        // before login announced after it too (the policy cannot change after login). STLS
        // is the exception clients expect: RFC 2595 section 4 permits it in AUTHORIZATION
        // only, and a client that sees it after login would try a command bound to fail.
        if self.config.user_pass_allowed {
            caps.push("USER".into());
        }
        if !self.config.sasl_mechanisms.is_empty() {
            caps.push(format!("SASL {}", self.config.sasl_mechanisms.join(" ")));
        }
        if self.state == State::Authorization && self.config.stls_available && !self.tls_active {
            caps.push("STLS".into());
        }
        caps.extend([
            "RESP-CODES".into(),
            "AUTH-RESP-CODE".into(),
            "PIPELINING".into(),
        ]);
        // RFC 6856: UTF-8 mode, with UTF-8 user names and passwords where USER is offered,
        // and LANG; in every state, as both are announced.
        caps.push(
            if self.config.user_pass_allowed {
                "UTF8 USER"
            } else {
                "UTF8"
            }
            .into(),
        );
        caps.push("LANG".into());
        if !self.config.implementation.is_empty() {
            caps.push(format!("IMPLEMENTATION {}", self.config.implementation));
        }
        self.policy_capabilities(&mut caps);
        for c in caps {
            out.extend_from_slice(c.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        response::end_multiline(out);
    }

    /// LOGIN-DELAY and EXPIRE (RFC 2449 sections 6.5 and 6.7), when either says anything: in
    /// AUTHORIZATION the server-wide values, followed by `USER` when some users have their own;
    /// after login, the user's. A server with neither (and no user with either) announces
    /// nothing, which clients read as no delay and no expiry.
    fn policy_capabilities(&self, caps: &mut Vec<String>) {
        let before_login = self.state == State::Authorization;
        let per_user = before_login && self.config.policy_per_user;
        let tag = if per_user { " USER" } else { "" };
        if self.policy.login_delay > 0 || per_user {
            caps.push(format!("LOGIN-DELAY {}{tag}", self.policy.login_delay));
        }
        if self.policy.expire != Expire::Never || per_user {
            caps.push(format!("EXPIRE {}{tag}", self.policy.expire));
        }
    }

    fn authorization(&mut self, cmd: Command, out: &mut Vec<u8>) -> Option<Event> {
        match cmd {
            Command::Capa => {
                self.capa(out);
                None
            }
            Command::Noop => {
                // RFC 1939 gives NOOP to TRANSACTION only; answering it earlier harms nobody
                // and keeps idle-checking clients happy, but it is not counted as a login step.
                response::ok(out, "");
                None
            }
            Command::Quit => {
                self.ok(out, Msg::SigningOff, &[]);
                self.state = State::Closed;
                Some(Event::Close)
            }
            Command::Utf8 => {
                // RFC 6856 section 2: AUTHORIZATION only; the mode cannot be left.
                self.utf8_mode = true;
                self.ok(out, Msg::Utf8Enabled, &[]);
                None
            }
            Command::Lang(range) => self.lang_command(range, out),
            Command::User(name) => {
                if !self.config.user_pass_allowed {
                    return self.plaintext_refused(out);
                }
                let name = match utf8::prepare(&name) {
                    Ok(n) => n.into_owned(),
                    Err(e) => return self.utf8_refused(e, out),
                };
                // The same answer whether the user exists or not: USER reveals nothing.
                self.ok(out, Msg::SendPass, &[]);
                self.pending_user = Some(name);
                None
            }
            Command::Pass(password) => {
                if !self.config.user_pass_allowed {
                    return self.plaintext_refused(out);
                }
                match self.pending_user.take() {
                    Some(user) => {
                        // Not UTF-8: the 8-bit password of a client that never said UTF8 is
                        // checked as it came; in UTF-8 mode it is an error (RFC 6856).
                        let prepared = utf8::prepare_octets(password.expose(), !self.utf8_mode);
                        let password = match prepared {
                            Ok(std::borrow::Cow::Borrowed(_)) => password,
                            Ok(std::borrow::Cow::Owned(p)) => Secret::new(p),
                            Err(e) => return self.utf8_refused(e, out),
                        };
                        self.auth_attempts = self.auth_attempts.saturating_add(1);
                        self.awaiting = Some(Awaiting::Auth);
                        Some(Event::Authenticate { user, password })
                    }
                    None => {
                        self.err(out, None, Msg::SendUserFirst, &[]);
                        self.bad_command(out)
                    }
                }
            }
            Command::Apop { name, digest } => {
                self.pending_user = None;
                if self.config.apop_timestamp.is_none() {
                    self.err(out, None, Msg::ApopUnavailable, &[]);
                    return self.bad_command(out);
                }
                if !self.config.user_pass_allowed {
                    return self.plaintext_refused(out);
                }
                let name = match utf8::prepare(&name) {
                    Ok(n) => n.into_owned(),
                    Err(e) => return self.utf8_refused(e, out),
                };
                self.auth_attempts = self.auth_attempts.saturating_add(1);
                self.awaiting = Some(Awaiting::Auth);
                Some(Event::Apop { user: name, digest })
            }
            Command::Stls => {
                if self.tls_active {
                    self.err(out, None, Msg::AlreadyTls, &[]);
                    return self.bad_command(out);
                }
                if !self.config.stls_available {
                    self.err(out, None, Msg::StlsUnavailable, &[]);
                    return self.bad_command(out);
                }
                self.pending_user = None;
                self.ok(out, Msg::BeginTls, &[]);
                Some(Event::StartTls)
            }
            Command::Auth {
                mechanism,
                initial_response,
            } => {
                self.pending_user = None;
                let offered = &self.config.sasl_mechanisms;
                match mechanism {
                    None if offered.is_empty() => {
                        self.err(out, None, Msg::NoSasl, &[]);
                        self.bad_command(out)
                    }
                    None => {
                        self.ok(out, Msg::SaslMechanisms, &[]);
                        for m in offered.iter() {
                            out.extend_from_slice(m.as_bytes());
                            out.extend_from_slice(b"\r\n");
                        }
                        response::end_multiline(out);
                        None
                    }
                    Some(m) if offered.iter().any(|o| o.eq_ignore_ascii_case(&m)) => {
                        self.auth_attempts = self.auth_attempts.saturating_add(1);
                        self.awaiting = Some(Awaiting::Auth);
                        Some(Event::Sasl {
                            mechanism: m,
                            initial_response,
                        })
                    }
                    Some(_) => {
                        self.err(out, None, Msg::UnsupportedSasl, &[]);
                        self.bad_command(out)
                    }
                }
            }
            Command::Last if !self.config.enable_last => self.unknown(out),
            _ => self.wrong_state(out),
        }
    }

    fn plaintext_refused(&mut self, out: &mut Vec<u8>) -> Option<Event> {
        self.pending_user = None;
        self.err(out, Some(Code::Auth), Msg::PlaintextRefused, &[]);
        self.bad_command(out)
    }

    /// A user name or password that is not UTF-8 in UTF-8 mode, or that SASLprep refuses:
    /// `-ERR [UTF8]` (RFC 6856), a bad command; the login starts over from USER.
    fn utf8_refused(&mut self, e: PrepError, out: &mut Vec<u8>) -> Option<Event> {
        self.pending_user = None;
        let msg = match e {
            PrepError::InvalidUtf8 => Msg::Utf8Invalid,
            PrepError::Prohibited => Msg::Utf8Prohibited,
        };
        self.err(out, Some(Code::Utf8), msg, &[]);
        self.bad_command(out)
    }

    /// LANG (RFC 6856 section 3), in AUTHORIZATION and TRANSACTION: no argument lists the
    /// languages, `*` chooses the server's default, a language range the language it finds by
    /// lookup. The `+OK` is in the new language; an unknown one changes nothing.
    fn lang_command(&mut self, range: Option<String>, out: &mut Vec<u8>) -> Option<Event> {
        let chosen = match range.as_deref() {
            None => {
                self.ok(out, Msg::LanguageListing, &[]);
                for l in Lang::ALL {
                    out.extend_from_slice(l.tag().as_bytes());
                    out.push(b' ');
                    out.extend_from_slice(l.description().as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                response::end_multiline(out);
                return None;
            }
            Some("*") => Some(self.config.language),
            Some(range) => Lang::lookup(range),
        };
        match chosen {
            Some(l) => {
                self.lang = l;
                self.ok(out, Msg::LanguageChanged, &[]);
            }
            None => self.err(out, None, Msg::UnsupportedLanguage, &[]),
        }
        None
    }

    fn unknown(&mut self, out: &mut Vec<u8>) -> Option<Event> {
        self.err(out, None, Msg::UnknownCommand, &[]);
        self.bad_command(out)
    }

    /// Report how the authentication event ended; writes the answer. `Some(Event::Close)` when
    /// the session closes because of it (too many bad commands or login attempts).
    pub fn auth_result(&mut self, result: AuthResult, out: &mut Vec<u8>) -> Option<Event> {
        if self.awaiting != Some(Awaiting::Auth) {
            return None;
        }
        self.awaiting = None;
        match result {
            AuthResult::Success {
                user,
                messages,
                sizes_known,
            } => {
                self.sizes_known = sizes_known;
                self.total_octets = messages.iter().map(|m| m.size).sum();
                self.deleted = vec![false; messages.len()];
                self.retrieved = vec![false; messages.len()];
                self.messages = messages;
                let summary = self.summary(false);
                self.ok(out, Msg::LoggedIn, &[&user, &summary]);
                self.user = Some(user);
                self.state = State::Transaction;
                return None;
            }
            AuthResult::Failed => {
                self.err(out, Some(Code::Auth), Msg::BadCredentials, &[]);
            }
            AuthResult::InUse => {
                self.err(out, Some(Code::InUse), Msg::MaildropInUse, &[]);
            }
            AuthResult::LoginDelay => {
                self.err(out, Some(Code::LoginDelay), Msg::LoginTooSoon, &[]);
            }
            AuthResult::Aborted(text) => {
                self.err(out, None, text, &[]);
                if let Some(close) = self.bad_command(out) {
                    return Some(close);
                }
            }
            AuthResult::Refused(text) => {
                let code = match text {
                    Msg::Utf8Prohibited | Msg::Utf8Invalid => Code::Utf8,
                    _ => Code::Auth,
                };
                self.err(out, Some(code), text, &[]);
            }
            AuthResult::SystemError { permanent } => {
                let code = if permanent {
                    Code::SysPerm
                } else {
                    Code::SysTemp
                };
                let text = if permanent {
                    Msg::MaildropMisconfigured
                } else {
                    Msg::MaildropTryLater
                };
                self.err(out, Some(code), text, &[]);
            }
        }
        if self.auth_attempts >= self.config.max_auth_attempts {
            self.err(out, None, Msg::TooManyAuthAttempts, &[]);
            self.state = State::Closed;
            self.closed_for_errors = true;
            return Some(Event::Close);
        }
        None
    }

    /// "N messages (M octets)", the octets left out while the sizes are unknown; of the whole
    /// snapshot, or (`live`) of the messages not marked deleted.
    fn summary(&self, live: bool) -> String {
        let (count, octets) = if live {
            (
                self.messages.len() - self.deleted_count,
                self.total_octets - self.deleted_octets,
            )
        } else {
            (self.messages.len(), self.total_octets)
        };
        let messages = self
            .lang
            .count(count as u64, Msg::MessagesOne, Msg::MessagesMany);
        if self.sizes_known {
            let octets = self.lang.count(octets, Msg::OctetsOne, Msg::OctetsMany);
            self.lang
                .render(Msg::Summary, &[&messages, &octets])
                .to_string()
        } else {
            messages
        }
    }

    /// Report the sizes asked for by `Event::MessageSizes` (`None`: they could not be read),
    /// then answer the command that needed them.
    pub fn sizes_result(&mut self, sizes: Option<Vec<u64>>, out: &mut Vec<u8>) -> Option<Event> {
        let Some(Awaiting::Sizes(pending)) = self.awaiting else {
            return None;
        };
        self.awaiting = None;
        match sizes {
            Some(sizes) if sizes.len() == self.messages.len() => {
                for (meta, size) in Arc::make_mut(&mut self.messages).iter_mut().zip(sizes) {
                    meta.size = size;
                }
                self.sizes_known = true;
                self.total_octets = self.messages.iter().map(|m| m.size).sum();
                self.deleted_octets = self
                    .messages
                    .iter()
                    .zip(&self.deleted)
                    .filter(|(_, &deleted)| deleted)
                    .map(|(m, _)| m.size)
                    .sum();
                self.transaction(pending.command(), out)
            }
            _ => {
                self.err(out, Some(Code::SysTemp), Msg::CannotReadMaildrop, &[]);
                None
            }
        }
    }

    /// Look up a message number that must exist and not be deleted.
    fn message(&self, n: MsgNum, out: &mut Vec<u8>) -> Option<usize> {
        let i = n.index();
        match self.deleted.get(i) {
            None => {
                self.err(out, None, Msg::NoSuchMessage, &[&self.messages.len()]);
                None
            }
            Some(true) => {
                self.err(out, None, Msg::AlreadyDeleted, &[&n]);
                None
            }
            Some(false) => Some(i),
        }
    }

    fn transaction(&mut self, cmd: Command, out: &mut Vec<u8>) -> Option<Event> {
        if !self.sizes_known {
            if let Some(pending) = SizedCommand::of(&cmd) {
                self.awaiting = Some(Awaiting::Sizes(pending));
                return Some(Event::MessageSizes);
            }
        }
        match cmd {
            Command::Capa => self.capa(out),
            Command::Noop => response::ok(out, ""),
            Command::Stat => response::ok(
                out,
                format_args!(
                    "{} {}",
                    self.messages.len() - self.deleted_count,
                    self.total_octets - self.deleted_octets
                ),
            ),
            Command::List(Some(n)) => {
                let i = self.message(n, out)?;
                response::ok(out, format_args!("{n} {}", self.messages[i].size));
            }
            Command::Uidl(Some(n)) => {
                let i = self.message(n, out)?;
                response::ok(out, format_args!("{n} {}", self.messages[i].uid));
            }
            Command::List(None) => {
                response::ok(out, self.summary(true));
                self.listing = Some((ListingKind::List, 0));
                return Some(Event::Listing);
            }
            Command::Uidl(None) => {
                self.ok(out, Msg::UidlListing, &[]);
                self.listing = Some((ListingKind::Uidl, 0));
                return Some(Event::Listing);
            }
            Command::Retr(n) => {
                let index = self.message(n, out)?;
                self.last_accessed = self.last_accessed.max(n.get());
                self.ok(out, Msg::RetrOctets, &[&self.messages[index].size]);
                self.sending = Some(index);
                return Some(Event::Retrieve {
                    index,
                    top_lines: None,
                });
            }
            Command::Top(n, lines) => {
                let index = self.message(n, out)?;
                // TOP is a look at the headers, not a retrieval: EXPIRE does not count it (a
                // client that previews would otherwise lose mail it never downloaded).
                self.sending = None;
                self.ok(out, Msg::TopFollows, &[]);
                return Some(Event::Retrieve {
                    index,
                    top_lines: Some(lines),
                });
            }
            Command::Dele(n) => {
                let i = self.message(n, out)?;
                self.deleted[i] = true;
                self.deleted_count += 1;
                self.deleted_octets += self.messages[i].size;
                self.last_accessed = self.last_accessed.max(n.get());
                self.ok(out, Msg::Deleted, &[&n]);
            }
            Command::Rset => {
                self.deleted.iter_mut().for_each(|d| *d = false);
                self.deleted_count = 0;
                self.deleted_octets = 0;
                self.last_accessed = 0;
                self.ok(out, Msg::MaildropHas, &[&self.summary(false)]);
            }
            Command::Last if self.config.enable_last => {
                response::ok(out, self.last_accessed);
            }
            Command::Last => return self.unknown(out),
            Command::Lang(range) => return self.lang_command(range, out),
            Command::Quit => {
                self.state = State::Update;
                self.awaiting = Some(Awaiting::Update);
                // EXPIRE 0 (RFC 2449 section 6.7): a message retrieved in this session is
                // deleted in its UPDATE state, as if the client had sent DELE for it.
                if self.policy.expire == Expire::Days(0) {
                    for (i, _) in self.retrieved.iter().enumerate().filter(|(_, &r)| r) {
                        if let Some(d) = self.deleted.get_mut(i).filter(|d| !**d) {
                            *d = true;
                            self.deleted_count += 1;
                            self.deleted_octets += self.messages.get(i).map_or(0, |m| m.size);
                        }
                    }
                }
                let deletions = self
                    .deleted
                    .iter()
                    .enumerate()
                    .filter_map(|(i, &d)| d.then_some(i))
                    .collect();
                // Under NEVER nothing will ever read the retrieval times: none is recorded.
                let retrieved = if self.policy.expire == Expire::Never {
                    Vec::new()
                } else {
                    self.retrieved
                        .iter()
                        .zip(&self.deleted)
                        .enumerate()
                        .filter_map(|(i, (&r, &d))| (r && !d).then_some(i))
                        .collect()
                };
                return Some(Event::Update {
                    deletions,
                    retrieved,
                });
            }
            Command::User(_)
            | Command::Pass(_)
            | Command::Apop { .. }
            | Command::Auth { .. }
            | Command::Stls
            | Command::Utf8 => return self.wrong_state(out),
        }
        None
    }

    /// The message of the last `Event::Retrieve` of a RETR went out whole, terminator included:
    /// it counts as retrieved for EXPIRE. Not called when the message could not be sent (the
    /// driver answered `-ERR`, or the connection broke): the message is then not retrieved.
    pub fn retrieval_complete(&mut self) {
        if let Some(slot) = self.sending.take().and_then(|i| self.retrieved.get_mut(i)) {
            *slot = true;
        }
    }

    /// Continue a pending LIST or UIDL listing, appending up to about `budget` octets to `out`.
    /// Returns true when the listing (with its terminating ".") is complete.
    pub fn fill_listing(&mut self, out: &mut Vec<u8>, budget: usize) -> bool {
        let Some((kind, mut next)) = self.listing else {
            return true;
        };
        let start = out.len();
        out.reserve(budget.saturating_add(128));
        while next < self.messages.len() && out.len() - start < budget {
            if !self.deleted[next] {
                let m = &self.messages[next];
                push_decimal(out, next as u64 + 1);
                out.push(b' ');
                match kind {
                    ListingKind::List => push_decimal(out, m.size),
                    ListingKind::Uidl => out.extend_from_slice(m.uid.as_bytes()),
                }
                out.extend_from_slice(b"\r\n");
            }
            next += 1;
        }
        if next >= self.messages.len() {
            response::end_multiline(out);
            self.listing = None;
            true
        } else {
            self.listing = Some((kind, next));
            false
        }
    }

    /// Report how UPDATE ended; writes the final answer. The session is closed afterwards.
    pub fn update_result(&mut self, result: Result<(), ()>, out: &mut Vec<u8>) -> Option<Event> {
        if self.awaiting != Some(Awaiting::Update) {
            return None;
        }
        self.awaiting = None;
        self.state = State::Closed;
        match result {
            Ok(()) => {
                let left = self.messages.len() - self.deleted_count;
                let count = |n: usize| {
                    self.lang
                        .count(n as u64, Msg::MessagesOne, Msg::MessagesMany)
                };
                if self.deleted_count == 0 {
                    self.ok(out, Msg::SigningOffLeft, &[&count(left)]);
                } else {
                    let deleted = count(self.deleted_count);
                    self.ok(out, Msg::SigningOffDeleted, &[&deleted, &left]);
                }
            }
            Err(()) => self.err(out, Some(Code::SysTemp), Msg::UpdateFailed, &[]),
        }
        Some(Event::Close)
    }
}

/// Appends `n` in decimal (a listing line is written this way rather than through `fmt`: a
/// listing of 100,000 messages is 100,000 lines).
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    for slot in digits.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        start -= 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(start..).unwrap_or(&[]));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Uidl;

    fn meta(size: u64, uid: &str) -> MessageMeta {
        MessageMeta {
            size,
            uid: Uidl::new(uid).unwrap(),
        }
    }

    /// A session already in TRANSACTION with two messages of 120 and 200 octets.
    fn logged_in() -> ServerSession {
        let mut s = ServerSession::new(ServerConfig::default());
        let mut out = Vec::new();
        assert_eq!(s.handle_line(b"USER mrose", &mut out), None);
        assert!(matches!(
            s.handle_line(b"PASS secret", &mut out),
            Some(Event::Authenticate { .. })
        ));
        let msgs = vec![
            meta(120, "whqtswO00WBw418f9t5JxYwZ"),
            meta(200, "QhdPYR:00WBw1Ph7x7"),
        ];
        assert_eq!(
            s.auth_result(
                AuthResult::Success {
                    user: "mrose".into(),
                    messages: msgs.into(),
                    sizes_known: true,
                },
                &mut out
            ),
            None
        );
        assert_eq!(s.state(), State::Transaction);
        s
    }

    /// Run a line, draining listings; returns the text written and the event.
    fn run(s: &mut ServerSession, line: &str) -> (String, Option<Event>) {
        let mut out = Vec::new();
        let mut ev = s.handle_line(line.as_bytes(), &mut out);
        if ev == Some(Event::Listing) {
            while !s.fill_listing(&mut out, 10) {}
            ev = None;
        }
        (String::from_utf8(out).unwrap(), ev)
    }

    fn text(s: &mut ServerSession, line: &str) -> String {
        run(s, line).0
    }

    #[test]
    fn rfc1939_example_session() {
        // RFC 1939 section 10, with our own wording after the status indicators.
        let mut s = logged_in();
        assert_eq!(text(&mut s, "STAT"), "+OK 2 320\r\n");
        assert_eq!(
            text(&mut s, "LIST"),
            "+OK 2 messages (320 octets)\r\n1 120\r\n2 200\r\n.\r\n"
        );
        assert_eq!(
            run(&mut s, "RETR 1"),
            (
                "+OK 120 octets\r\n".into(),
                Some(Event::Retrieve {
                    index: 0,
                    top_lines: None
                })
            )
        );
        assert_eq!(text(&mut s, "DELE 1"), "+OK message 1 deleted\r\n");
        assert_eq!(
            run(&mut s, "RETR 2").1,
            Some(Event::Retrieve {
                index: 1,
                top_lines: None
            })
        );
        assert_eq!(text(&mut s, "DELE 2"), "+OK message 2 deleted\r\n");
        assert_eq!(
            run(&mut s, "QUIT").1,
            Some(Event::Update {
                deletions: vec![0, 1],
                retrieved: vec![]
            })
        );
        assert_eq!(s.state(), State::Update);
        let mut out = Vec::new();
        assert_eq!(s.update_result(Ok(()), &mut out), Some(Event::Close));
        assert!(String::from_utf8(out)
            .unwrap()
            .starts_with("+OK signing off (2 messages deleted"));
        assert_eq!(s.state(), State::Closed);
    }

    #[test]
    fn one_message_is_singular() {
        let mut s = logged_in();
        text(&mut s, "DELE 1");
        assert_eq!(
            text(&mut s, "RSET"),
            "+OK maildrop has 2 messages (320 octets)\r\n"
        );
        text(&mut s, "DELE 2");
        s.handle_line(b"QUIT", &mut Vec::new());
        let mut out = Vec::new();
        s.update_result(Ok(()), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "+OK signing off (1 message deleted, 1 left)\r\n"
        );
        let mut s = logged_in();
        s.handle_line(b"QUIT", &mut Vec::new());
        let mut out = Vec::new();
        s.update_result(Ok(()), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "+OK signing off (2 messages left)\r\n"
        );
    }

    #[test]
    fn greeting_carries_apop_timestamp_only_when_enabled() {
        let mut out = Vec::new();
        ServerSession::new(ServerConfig::default()).greeting(&mut out);
        assert_eq!(out, b"+OK facteur POP3 server ready\r\n");
        let cfg = ServerConfig {
            apop_timestamp: Some("<1896.697170952@dbc.mtview.ca.us>".into()),
            ..ServerConfig::default()
        };
        let mut out = Vec::new();
        ServerSession::new(cfg).greeting(&mut out);
        assert_eq!(
            out,
            b"+OK facteur POP3 server ready <1896.697170952@dbc.mtview.ca.us>\r\n"
        );
    }

    #[test]
    fn apop_only_when_offered() {
        let mut s = ServerSession::new(ServerConfig::default());
        let (t, ev) = run(&mut s, "APOP mrose c4c9334bac560ecc979e58001b3e22fb");
        assert!(t.starts_with("-ERR"));
        assert_eq!(ev, None);
        let cfg = ServerConfig {
            apop_timestamp: Some("<1.2@h>".into()),
            ..ServerConfig::default()
        };
        let mut s = ServerSession::new(cfg);
        assert_eq!(
            run(&mut s, "APOP mrose c4c9334bac560ecc979e58001b3e22fb").1,
            Some(Event::Apop {
                user: "mrose".into(),
                digest: "c4c9334bac560ecc979e58001b3e22fb".into()
            })
        );
    }

    #[test]
    fn deleted_messages_vanish_everywhere() {
        let mut s = logged_in();
        text(&mut s, "DELE 1");
        assert_eq!(text(&mut s, "STAT"), "+OK 1 200\r\n");
        assert_eq!(
            text(&mut s, "LIST"),
            "+OK 1 message (200 octets)\r\n2 200\r\n.\r\n"
        );
        assert_eq!(
            text(&mut s, "UIDL"),
            "+OK unique-id listing follows\r\n2 QhdPYR:00WBw1Ph7x7\r\n.\r\n"
        );
        for cmd in ["LIST 1", "UIDL 1", "RETR 1", "TOP 1 0", "DELE 1"] {
            let (t, ev) = run(&mut s, cmd);
            assert_eq!(t, "-ERR message 1 already deleted\r\n", "{cmd}");
            assert_eq!(ev, None);
        }
    }

    #[test]
    fn rset_undeletes() {
        let mut s = logged_in();
        text(&mut s, "DELE 2");
        assert_eq!(
            text(&mut s, "RSET"),
            "+OK maildrop has 2 messages (320 octets)\r\n"
        );
        assert_eq!(text(&mut s, "STAT"), "+OK 2 320\r\n");
        assert_eq!(
            run(&mut s, "QUIT").1,
            Some(Event::Update {
                deletions: vec![],
                retrieved: vec![]
            })
        );
    }

    #[test]
    fn message_numbers_out_of_range() {
        let mut s = logged_in();
        for cmd in ["RETR 3", "LIST 3", "UIDL 4294967295", "TOP 3 1", "DELE 3"] {
            assert!(
                text(&mut s, cmd).starts_with("-ERR no such message"),
                "{cmd}"
            );
        }
        for cmd in [
            "RETR 0",
            "LIST 4294967297",
            "RETR 99999999999999999999",
            "RETR",
            "TOP 1",
        ] {
            assert!(text(&mut s, cmd).starts_with("-ERR"), "{cmd}");
        }
        assert_eq!(text(&mut s, "LIST 2"), "+OK 2 200\r\n");
        assert_eq!(text(&mut s, "UIDL 1"), "+OK 1 whqtswO00WBw418f9t5JxYwZ\r\n");
    }

    #[test]
    fn top_event() {
        let mut s = logged_in();
        assert_eq!(
            run(&mut s, "TOP 2 0"),
            (
                "+OK top of message follows\r\n".into(),
                Some(Event::Retrieve {
                    index: 1,
                    top_lines: Some(0)
                })
            )
        );
    }

    #[test]
    fn commands_in_the_wrong_state() {
        let mut s = ServerSession::new(ServerConfig::default());
        for cmd in [
            "STAT", "LIST", "RETR 1", "DELE 1", "RSET", "TOP 1 1", "UIDL",
        ] {
            assert_eq!(
                text(&mut s, cmd),
                "-ERR command not valid before login\r\n",
                "{cmd}"
            );
        }
        assert_eq!(text(&mut s, "PASS x"), "-ERR send USER first\r\n");
        let mut s = logged_in();
        for cmd in [
            "USER a",
            "PASS b",
            "APOP a c4c9334bac560ecc979e58001b3e22fb",
            "STLS",
        ] {
            assert_eq!(
                text(&mut s, cmd),
                "-ERR command not valid after login\r\n",
                "{cmd}"
            );
        }
    }

    #[test]
    fn quit_in_authorization_closes_without_update() {
        let mut s = ServerSession::new(ServerConfig::default());
        assert_eq!(
            run(&mut s, "QUIT"),
            ("+OK signing off\r\n".into(), Some(Event::Close))
        );
        assert_eq!(s.state(), State::Closed);
    }

    #[test]
    fn failed_login_stays_in_authorization() {
        let mut s = ServerSession::new(ServerConfig::default());
        text(&mut s, "USER a");
        assert!(s.handle_line(b"PASS b", &mut Vec::new()).is_some());
        assert!(s.is_awaiting());
        let mut out = Vec::new();
        s.auth_result(AuthResult::Failed, &mut out);
        assert_eq!(out, b"-ERR [AUTH] invalid user name or password\r\n");
        assert_eq!(s.state(), State::Authorization);
        // The USER must be given again.
        assert_eq!(text(&mut s, "PASS b"), "-ERR send USER first\r\n");
    }

    #[test]
    fn auth_failures_carry_codes() {
        for (r, want) in [
            (AuthResult::InUse, "-ERR [IN-USE] "),
            (
                AuthResult::SystemError { permanent: false },
                "-ERR [SYS/TEMP] ",
            ),
            (
                AuthResult::SystemError { permanent: true },
                "-ERR [SYS/PERM] ",
            ),
        ] {
            let mut s = ServerSession::new(ServerConfig::default());
            text(&mut s, "USER a");
            s.handle_line(b"PASS b", &mut Vec::new());
            let mut out = Vec::new();
            s.auth_result(r, &mut out);
            let out = String::from_utf8(out).unwrap();
            assert!(out.starts_with(want));
            // A permanent failure does not invite the user to try again.
            assert_eq!(out.contains("try again"), want.contains("TEMP"), "{out}");
        }
    }

    #[test]
    fn aborted_sasl_is_a_plain_err_and_stays_in_authorization() {
        let cfg = ServerConfig {
            sasl_mechanisms: vec!["PLAIN".into()].into(),
            ..ServerConfig::default()
        };
        let mut s = ServerSession::new(cfg);
        assert!(matches!(
            run(&mut s, "AUTH PLAIN").1,
            Some(Event::Sasl { .. })
        ));
        let mut out = Vec::new();
        s.auth_result(AuthResult::Aborted(Msg::SaslCancelled), &mut out);
        assert_eq!(out, b"-ERR authentication cancelled\r\n");
        assert_eq!(s.state(), State::Authorization);
        assert!(!s.is_awaiting());
    }

    /// An AUTH exchange that ends without a verdict is a bad command: 200 of them cannot go on
    /// in one session.
    #[test]
    fn aborted_sasl_counts_as_a_bad_command() {
        let cfg = ServerConfig {
            sasl_mechanisms: vec!["SCRAM-SHA-256".into()].into(),
            max_bad_commands: 4,
            max_auth_attempts: 100,
            ..ServerConfig::default()
        };
        let mut s = ServerSession::new(cfg);
        run(&mut s, "FOO");
        for i in 0..3 {
            assert!(matches!(
                run(&mut s, "AUTH SCRAM-SHA-256").1,
                Some(Event::Sasl { .. })
            ));
            let mut out = Vec::new();
            let ev = s.auth_result(AuthResult::Aborted(Msg::SaslCancelled), &mut out);
            if i < 2 {
                assert_eq!(ev, None);
                assert_eq!(out, b"-ERR authentication cancelled\r\n");
            } else {
                assert_eq!(ev, Some(Event::Close));
                assert_eq!(
                    out,
                    b"-ERR authentication cancelled\r\n-ERR too many bad commands, closing connection\r\n"
                );
            }
        }
        assert_eq!(s.state(), State::Closed);
        assert!(s.closed_for_errors());
    }

    /// Login attempts of any kind count against `max_auth_attempts`; a failed or refused login
    /// is no bad command.
    #[test]
    fn login_attempts_are_capped() {
        let cfg = ServerConfig {
            sasl_mechanisms: vec!["PLAIN".into()].into(),
            apop_timestamp: Some("<1.2@host>".into()),
            max_bad_commands: 2,
            max_auth_attempts: 4,
            ..ServerConfig::default()
        };
        let mut s = ServerSession::new(cfg);
        let fail = |s: &mut ServerSession, result: AuthResult| {
            let mut out = Vec::new();
            let ev = s.auth_result(result, &mut out);
            (String::from_utf8(out).unwrap(), ev)
        };
        text(&mut s, "USER a");
        run(&mut s, "PASS b");
        assert_eq!(
            fail(&mut s, AuthResult::Failed),
            ("-ERR [AUTH] invalid user name or password\r\n".into(), None)
        );
        run(&mut s, "APOP a c4c9334bac560ecc979e58001b3e22fb");
        assert_eq!(fail(&mut s, AuthResult::Failed).1, None);
        run(&mut s, "AUTH PLAIN");
        assert_eq!(
            fail(&mut s, AuthResult::Refused(Msg::PasswordTooLong)),
            (
                "-ERR [AUTH] the password is longer than 1024 octets\r\n".into(),
                None
            )
        );
        assert_eq!(s.state(), State::Authorization);
        run(&mut s, "AUTH PLAIN");
        let (t, ev) = fail(&mut s, AuthResult::InUse);
        assert_eq!(ev, Some(Event::Close));
        assert!(t.ends_with("-ERR too many authentication attempts, closing connection\r\n"));
        assert_eq!(s.state(), State::Closed);
        assert!(s.closed_for_errors());
    }

    #[test]
    fn update_failure_is_sys_temp() {
        let mut s = logged_in();
        text(&mut s, "DELE 1");
        run(&mut s, "QUIT");
        let mut out = Vec::new();
        assert_eq!(s.update_result(Err(()), &mut out), Some(Event::Close));
        assert!(out.starts_with(b"-ERR [SYS/TEMP]"));
    }

    #[test]
    fn no_line_is_handled_while_awaiting() {
        let mut s = ServerSession::new(ServerConfig::default());
        text(&mut s, "USER a");
        s.handle_line(b"PASS b", &mut Vec::new());
        let (t, ev) = run(&mut s, "STAT");
        assert!(t.starts_with("-ERR [SYS/TEMP]"));
        assert_eq!(ev, None);
    }

    #[test]
    fn capa_reflects_state_and_policy() {
        let cfg = ServerConfig {
            implementation: "facteur".into(),
            stls_available: true,
            sasl_mechanisms: vec!["PLAIN".into()].into(),
            ..ServerConfig::default()
        };
        let mut s = ServerSession::new(cfg);
        let t = text(&mut s, "CAPA");
        assert_eq!(
            t,
            "+OK capability list follows\r\nTOP\r\nUIDL\r\nUSER\r\nSASL PLAIN\r\nSTLS\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nUTF8 USER\r\nLANG\r\nIMPLEMENTATION facteur\r\n.\r\n"
        );
        let cfg = ServerConfig {
            user_pass_allowed: false,
            ..ServerConfig::default()
        };
        let mut s = ServerSession::new(cfg);
        let t = text(&mut s, "CAPA");
        assert!(!t.contains("USER"));
        assert!(text(&mut s, "USER a").starts_with("-ERR [AUTH] plaintext login is disabled"));
        let mut s = logged_in();
        let t = text(&mut s, "CAPA");
        assert!(t.contains("TOP\r\n") && !t.contains("STLS"));
    }

    /// RFC 2449 section 5: what CAPA announced before login, it announces after it, but STLS
    /// (RFC 2595 section 4: AUTHORIZATION only).
    #[test]
    fn capa_after_login_keeps_user_and_sasl() {
        let cfg = ServerConfig {
            implementation: "facteur".into(),
            sasl_mechanisms: vec!["PLAIN".into(), "SCRAM-SHA-256".into()].into(),
            stls_available: true,
            ..ServerConfig::default()
        };
        let mut s = ServerSession::new(cfg);
        let before = text(&mut s, "CAPA");
        assert!(
            before.contains("\r\nUSER\r\nSASL PLAIN SCRAM-SHA-256\r\n"),
            "{before}"
        );
        text(&mut s, "USER mrose");
        run(&mut s, "PASS secret");
        let success = AuthResult::Success {
            user: "mrose".into(),
            messages: Arc::default(),
            sizes_known: true,
        };
        s.auth_result(success, &mut Vec::new());
        assert_eq!(s.state(), State::Transaction);
        assert_eq!(text(&mut s, "CAPA"), before.replace("STLS\r\n", ""));
        assert!(before.contains("\r\nSTLS\r\n"), "{before}");
    }

    fn capa_lines(s: &mut ServerSession) -> Vec<String> {
        text(s, "CAPA")
            .lines()
            .skip(1)
            .filter(|l| *l != ".")
            .map(str::to_owned)
            .collect()
    }

    fn policy_lines(s: &mut ServerSession) -> Vec<String> {
        capa_lines(s)
            .into_iter()
            .filter(|l| l.starts_with("LOGIN-DELAY") || l.starts_with("EXPIRE"))
            .collect()
    }

    /// Logs `s` in with `messages` messages of 100 octets, under the user's `policy`.
    fn log_in(s: &mut ServerSession, messages: usize, policy: Policy) {
        text(s, "USER mrose");
        run(s, "PASS secret");
        s.set_policy(policy);
        let success = AuthResult::Success {
            user: "mrose".into(),
            messages: (0..messages)
                .map(|i| meta(100, &format!("uid{i}")))
                .collect::<Vec<_>>()
                .into(),
            sizes_known: true,
        };
        assert_eq!(s.auth_result(success, &mut Vec::new()), None);
        assert_eq!(s.state(), State::Transaction);
    }

    /// RFC 2449 sections 6.5 and 6.7: nothing when neither policy says anything; the server's
    /// values before login, with `USER` when users may have their own; the user's after it.
    #[test]
    fn capa_announces_login_delay_and_expire_in_each_state() {
        let mut s = ServerSession::new(ServerConfig::default());
        assert_eq!(policy_lines(&mut s), Vec::<String>::new());
        log_in(&mut s, 0, Policy::default());
        assert_eq!(policy_lines(&mut s), Vec::<String>::new());

        let server = Policy {
            login_delay: 900,
            expire: Expire::Days(30),
        };
        let cfg = ServerConfig {
            policy: server,
            ..ServerConfig::default()
        };
        let mut s = ServerSession::new(cfg.clone());
        assert_eq!(policy_lines(&mut s), ["LOGIN-DELAY 900", "EXPIRE 30"]);
        // The policy comes after every other capability, IMPLEMENTATION included.
        let mut s2 = ServerSession::new(ServerConfig {
            implementation: "facteur".into(),
            ..cfg.clone()
        });
        let all = capa_lines(&mut s2);
        assert_eq!(all[all.len() - 2..], ["LOGIN-DELAY 900", "EXPIRE 30"]);
        log_in(&mut s, 0, server);
        assert_eq!(policy_lines(&mut s), ["LOGIN-DELAY 900", "EXPIRE 30"]);

        let cfg = ServerConfig {
            policy_per_user: true,
            ..ServerConfig::default()
        };
        let mut s = ServerSession::new(cfg.clone());
        assert_eq!(
            policy_lines(&mut s),
            ["LOGIN-DELAY 0 USER", "EXPIRE NEVER USER"]
        );
        // After login: the user's own values, and never USER.
        log_in(
            &mut s,
            0,
            Policy {
                login_delay: 60,
                expire: Expire::Days(0),
            },
        );
        assert_eq!(policy_lines(&mut s), ["LOGIN-DELAY 60", "EXPIRE 0"]);
        let mut s = ServerSession::new(cfg);
        log_in(&mut s, 0, Policy::default());
        assert_eq!(policy_lines(&mut s), Vec::<String>::new());
    }

    #[test]
    fn login_delay_is_its_own_response_code_and_the_session_goes_on() {
        let mut s = ServerSession::new(ServerConfig {
            policy: Policy {
                login_delay: 2,
                expire: Expire::Never,
            },
            ..ServerConfig::default()
        });
        text(&mut s, "USER mrose");
        run(&mut s, "PASS secret");
        let mut out = Vec::new();
        assert_eq!(s.auth_result(AuthResult::LoginDelay, &mut out), None);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "-ERR [LOGIN-DELAY] logged in too recently, try again later\r\n"
        );
        assert_eq!(s.state(), State::Authorization);
        log_in(&mut s, 1, Policy::default());
    }

    /// Retrieves message `n` and reports it sent whole, as the driver does.
    fn retr(s: &mut ServerSession, n: usize) {
        let (t, ev) = run(s, &format!("RETR {n}"));
        assert!(t.starts_with("+OK"), "{t}");
        assert!(matches!(
            ev,
            Some(Event::Retrieve {
                top_lines: None,
                ..
            })
        ));
        s.retrieval_complete();
    }

    /// EXPIRE 0: what RETR sent whole is deleted in the UPDATE state, and only there; TOP and
    /// a RETR the driver could not complete do not count.
    #[test]
    fn expire_0_deletes_the_retrieved_messages_at_quit() {
        let policy = Policy {
            login_delay: 0,
            expire: Expire::Days(0),
        };
        let mut s = ServerSession::new(ServerConfig::default());
        log_in(&mut s, 5, policy);
        retr(&mut s, 1);
        retr(&mut s, 3);
        retr(&mut s, 3);
        text(&mut s, "DELE 3");
        // TOP, even of every line, is no retrieval.
        assert!(matches!(
            run(&mut s, "TOP 2 100").1,
            Some(Event::Retrieve {
                top_lines: Some(100),
                ..
            })
        ));
        s.retrieval_complete();
        // A RETR that never went out whole.
        assert!(matches!(
            run(&mut s, "RETR 4").1,
            Some(Event::Retrieve { .. })
        ));
        // Nothing is deleted before QUIT: RSET keeps the retrieved ones.
        assert_eq!(text(&mut s, "STAT"), "+OK 4 400\r\n");
        text(&mut s, "RSET");
        assert_eq!(text(&mut s, "STAT"), "+OK 5 500\r\n");
        assert_eq!(
            run(&mut s, "QUIT").1,
            Some(Event::Update {
                deletions: vec![0, 2],
                retrieved: vec![]
            })
        );
        let mut out = Vec::new();
        s.update_result(Ok(()), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "+OK signing off (2 messages deleted, 3 left)\r\n"
        );

        // QUIT in AUTHORIZATION, or no QUIT at all: no UPDATE, nothing deleted.
        let mut s = ServerSession::new(ServerConfig::default());
        log_in(&mut s, 2, policy);
        retr(&mut s, 1);
        assert_eq!(s.deleted_count(), 0);
    }

    /// EXPIRE N: the messages RETR sent whole (and not deleted) are reported at UPDATE for
    /// their first retrieval time; under NEVER, none.
    #[test]
    fn retrievals_are_reported_at_quit_unless_nothing_expires() {
        for (expire, reported) in [(Expire::Days(7), vec![1, 3]), (Expire::Never, vec![])] {
            let mut s = ServerSession::new(ServerConfig::default());
            log_in(
                &mut s,
                5,
                Policy {
                    login_delay: 0,
                    expire,
                },
            );
            retr(&mut s, 2);
            retr(&mut s, 4);
            retr(&mut s, 5);
            text(&mut s, "DELE 5");
            run(&mut s, "TOP 1 0");
            s.retrieval_complete();
            assert_eq!(
                run(&mut s, "QUIT").1,
                Some(Event::Update {
                    deletions: vec![4],
                    retrieved: reported
                })
            );
        }
    }

    #[test]
    fn stls_only_before_tls() {
        let mut s = ServerSession::new(ServerConfig::default());
        assert!(text(&mut s, "STLS").starts_with("-ERR STLS is not available"));
        let cfg = ServerConfig {
            stls_available: true,
            ..ServerConfig::default()
        };
        let mut s = ServerSession::new(cfg);
        assert_eq!(
            run(&mut s, "STLS"),
            (
                "+OK begin TLS negotiation\r\n".into(),
                Some(Event::StartTls)
            )
        );
        s.set_tls_active(true, Arc::from([]));
        assert_eq!(text(&mut s, "STLS"), "-ERR already under TLS\r\n");
        assert!(!text(&mut s, "CAPA").contains("STLS"));
    }

    #[test]
    fn last_is_off_by_default() {
        let mut s = logged_in();
        assert_eq!(text(&mut s, "LAST"), "-ERR unknown command\r\n");
        let mut s = ServerSession::new(ServerConfig {
            enable_last: true,
            ..ServerConfig::default()
        });
        text(&mut s, "USER a");
        s.handle_line(b"PASS b", &mut Vec::new());
        let msgs = vec![meta(1, "a"), meta(1, "b"), meta(1, "c")];
        s.auth_result(
            AuthResult::Success {
                user: "a".into(),
                messages: msgs.into(),
                sizes_known: true,
            },
            &mut Vec::new(),
        );
        assert_eq!(text(&mut s, "LAST"), "+OK 0\r\n");
        run(&mut s, "RETR 2");
        assert_eq!(text(&mut s, "LAST"), "+OK 2\r\n");
        run(&mut s, "TOP 3 1");
        assert_eq!(text(&mut s, "LAST"), "+OK 2\r\n");
        text(&mut s, "RSET");
        assert_eq!(text(&mut s, "LAST"), "+OK 0\r\n");
    }

    #[test]
    fn too_many_bad_commands_close() {
        let mut s = ServerSession::new(ServerConfig {
            max_bad_commands: 3,
            ..ServerConfig::default()
        });
        assert_eq!(run(&mut s, "FOO").1, None);
        let mut out = Vec::new();
        assert_eq!(s.handle_too_long(&mut out), None);
        assert_eq!(out, b"-ERR line too long\r\n");
        let (t, ev) = run(&mut s, "BAR");
        assert_eq!(ev, Some(Event::Close));
        assert!(t.ends_with("-ERR too many bad commands, closing connection\r\n"));
        assert_eq!(s.state(), State::Closed);
        assert!(s.closed_for_errors());
    }

    #[test]
    fn bad_input_gets_err_and_session_goes_on() {
        let mut s = logged_in();
        assert_eq!(
            text(&mut s, "ST\0AT"),
            "-ERR command contains a NUL or control character\r\n"
        );
        assert_eq!(text(&mut s, "STAT"), "+OK 2 320\r\n");
    }

    /// A session whose snapshot came without sizes (`sizes_known: false`): three messages.
    fn unsized_session() -> ServerSession {
        let mut s = ServerSession::new(ServerConfig::default());
        text(&mut s, "USER a");
        s.handle_line(b"PASS b", &mut Vec::new());
        let msgs = vec![meta(0, "a"), meta(0, "b"), meta(0, "c")];
        let mut out = Vec::new();
        s.auth_result(
            AuthResult::Success {
                user: "a".into(),
                messages: msgs.into(),
                sizes_known: false,
            },
            &mut out,
        );
        assert_eq!(String::from_utf8(out).unwrap(), "+OK a has 3 messages\r\n");
        s
    }

    #[test]
    fn unknown_sizes_are_asked_for_only_by_commands_that_need_them() {
        let mut s = unsized_session();
        // UIDL, TOP, DELE, RSET and NOOP need no size.
        assert_eq!(text(&mut s, "UIDL 2"), "+OK 2 b\r\n");
        let (t, ev) = run(&mut s, "UIDL");
        assert_eq!(
            t,
            "+OK unique-id listing follows\r\n1 a\r\n2 b\r\n3 c\r\n.\r\n"
        );
        assert_eq!(ev, None);
        let (_, ev) = run(&mut s, "TOP 1 0");
        assert!(matches!(ev, Some(Event::Retrieve { index: 0, .. })));
        assert_eq!(text(&mut s, "DELE 3"), "+OK message 3 deleted\r\n");
        assert_eq!(text(&mut s, "RSET"), "+OK maildrop has 3 messages\r\n");
        assert_eq!(text(&mut s, "DELE 3"), "+OK message 3 deleted\r\n");

        // STAT waits for the sizes, then is answered with them (message 3 still deleted).
        let mut out = Vec::new();
        assert_eq!(s.handle_line(b"STAT", &mut out), Some(Event::MessageSizes));
        assert!(out.is_empty());
        assert!(s.is_awaiting());
        assert_eq!(s.sizes_result(Some(vec![10, 20, 40]), &mut out), None);
        assert_eq!(String::from_utf8(out).unwrap(), "+OK 2 30\r\n");
        // From now on nothing is asked again.
        assert_eq!(text(&mut s, "LIST 2"), "+OK 2 20\r\n");
        assert_eq!(
            text(&mut s, "RSET"),
            "+OK maildrop has 3 messages (70 octets)\r\n"
        );
    }

    #[test]
    fn a_deferred_retr_or_list_is_answered_after_the_sizes() {
        let mut s = unsized_session();
        let mut out = Vec::new();
        assert_eq!(
            s.handle_line(b"RETR 2", &mut out),
            Some(Event::MessageSizes)
        );
        let ev = s.sizes_result(Some(vec![1, 22, 333]), &mut out);
        assert_eq!(
            ev,
            Some(Event::Retrieve {
                index: 1,
                top_lines: None
            })
        );
        assert_eq!(String::from_utf8(out).unwrap(), "+OK 22 octets\r\n");

        let mut s = unsized_session();
        let mut out = Vec::new();
        assert_eq!(s.handle_line(b"LIST", &mut out), Some(Event::MessageSizes));
        assert_eq!(
            s.sizes_result(Some(vec![1, 22, 333]), &mut out),
            Some(Event::Listing)
        );
        while !s.fill_listing(&mut out, 10) {}
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "+OK 3 messages (356 octets)\r\n1 1\r\n2 22\r\n3 333\r\n.\r\n"
        );

        // A bad message number is still refused once the sizes are in.
        let mut s = unsized_session();
        let mut out = Vec::new();
        assert_eq!(
            s.handle_line(b"LIST 9", &mut out),
            Some(Event::MessageSizes)
        );
        assert_eq!(s.sizes_result(Some(vec![1, 2, 3]), &mut out), None);
        assert!(String::from_utf8(out)
            .unwrap()
            .starts_with("-ERR no such message"));
    }

    #[test]
    fn sizes_that_cannot_be_read_are_a_temporary_error_and_the_session_goes_on() {
        let mut s = unsized_session();
        let mut out = Vec::new();
        assert_eq!(s.handle_line(b"STAT", &mut out), Some(Event::MessageSizes));
        assert_eq!(s.sizes_result(None, &mut out), None);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "-ERR [SYS/TEMP] cannot read the maildrop, try again later\r\n"
        );
        // A wrong count is refused the same way, and the next STAT asks again.
        let mut out = Vec::new();
        assert_eq!(s.handle_line(b"STAT", &mut out), Some(Event::MessageSizes));
        assert_eq!(s.sizes_result(Some(vec![1]), &mut out), None);
        assert!(String::from_utf8(out)
            .unwrap()
            .starts_with("-ERR [SYS/TEMP]"));
        assert_eq!(
            s.handle_line(b"STAT", &mut Vec::new()),
            Some(Event::MessageSizes)
        );
        // A result nobody asked for is ignored.
        let mut s = unsized_session();
        assert_eq!(s.sizes_result(Some(vec![1, 2, 3]), &mut Vec::new()), None);
        assert_eq!(text(&mut s, "NOOP"), "+OK\r\n");
    }

    #[test]
    fn decimals_are_written_exactly() {
        for n in [0, 7, 10, 99, 100, 4_294_967_295, u64::MAX] {
            let mut out = b"x".to_vec();
            push_decimal(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }

    #[test]
    fn listing_in_small_steps_is_complete() {
        let mut s = ServerSession::new(ServerConfig::default());
        text(&mut s, "USER a");
        s.handle_line(b"PASS b", &mut Vec::new());
        let msgs: Vec<_> = (0..1000).map(|i| meta(i, &format!("u{i}"))).collect();
        s.auth_result(
            AuthResult::Success {
                user: "a".into(),
                messages: msgs.into(),
                sizes_known: true,
            },
            &mut Vec::new(),
        );
        let t = text(&mut s, "UIDL");
        assert_eq!(t.lines().count(), 1002);
        assert!(t.ends_with("1000 u999\r\n.\r\n"));
    }

    #[test]
    fn sasl_lists_and_dispatches_offered_mechanisms_only() {
        let cfg = ServerConfig {
            sasl_mechanisms: vec!["PLAIN".into()].into(),
            ..ServerConfig::default()
        };
        let mut s = ServerSession::new(cfg);
        assert_eq!(
            text(&mut s, "AUTH"),
            "+OK SASL mechanisms follow\r\nPLAIN\r\n.\r\n"
        );
        assert!(text(&mut s, "AUTH CRAM-MD5").starts_with("-ERR unsupported"));
        assert!(matches!(
            run(&mut s, "AUTH plain").1,
            Some(Event::Sasl { .. })
        ));
    }

    /// Lines over 255 octets are refused, but for AUTH with the initial response of a bearer
    /// mechanism that is offered, up to MAX_AUTH_LINE.
    #[test]
    fn long_auth_lines_only_for_offered_bearer_mechanisms() {
        let token = "A".repeat(4000);
        let cfg = |mechanisms: &[&str]| ServerConfig {
            sasl_mechanisms: mechanisms.iter().map(|m| m.to_string()).collect(),
            ..ServerConfig::default()
        };
        let mut s = ServerSession::new(cfg(&["PLAIN", "OAUTHBEARER", "XOAUTH2"]));
        for mechanism in ["OAUTHBEARER", "xoauth2"] {
            let (reply, event) = run(&mut s, &format!("AUTH {mechanism} {token}"));
            assert_eq!(reply, "", "{mechanism}");
            assert!(
                matches!(&event, Some(Event::Sasl { initial_response: Some(r), .. }) if r.expose().len() == 4000),
                "{event:?}"
            );
            s.auth_result(AuthResult::Failed, &mut Vec::new());
        }
        for line in [
            format!("AUTH PLAIN {token}"),
            format!("USER {token}"),
            format!("AUTH OAUTHBEARER {}", "A".repeat(MAX_AUTH_LINE)),
            format!("NOOP {token}"),
        ] {
            assert!(
                text(&mut s, &line).starts_with("-ERR line too long"),
                "{}",
                &line[..20]
            );
        }
        // Not offered (no issuer, or no TLS): 255 octets.
        let mut s = ServerSession::new(cfg(&["PLAIN"]));
        assert!(
            text(&mut s, &format!("AUTH OAUTHBEARER {token}")).starts_with("-ERR line too long")
        );
    }

    /// RFC 6856 section 2: UTF8 in AUTHORIZATION only.
    #[test]
    fn utf8_in_each_state() {
        let mut s = ServerSession::new(ServerConfig::default());
        assert!(!s.utf8_mode());
        assert_eq!(text(&mut s, "UTF8"), "+OK UTF-8 mode enabled\r\n");
        assert!(s.utf8_mode());
        assert_eq!(text(&mut s, "utf8"), "+OK UTF-8 mode enabled\r\n");
        assert_eq!(
            text(&mut s, "UTF8 x"),
            "-ERR this command takes no argument\r\n"
        );
        let mut s = logged_in();
        assert_eq!(
            text(&mut s, "UTF8"),
            "-ERR command not valid after login\r\n"
        );
        assert!(!s.utf8_mode());
        s.handle_line(b"QUIT", &mut Vec::new());
        s.update_result(Ok(()), &mut Vec::new());
        assert_eq!(run(&mut s, "UTF8"), (String::new(), Some(Event::Close)));
    }

    #[test]
    fn lang_lists_switches_and_resets() {
        let mut s = ServerSession::new(ServerConfig::default());
        assert_eq!(
            text(&mut s, "LANG"),
            "+OK language listing follows\r\nen English\r\nfr Fran\u{e7}ais\r\n.\r\n"
        );
        assert_eq!(
            text(&mut s, "LANG fr"),
            "+OK langue choisie : fran\u{e7}ais\r\n"
        );
        assert_eq!(s.lang(), Lang::Fr);
        assert_eq!(text(&mut s, "FOO"), "-ERR commande inconnue\r\n");
        assert_eq!(
            text(&mut s, "LANG"),
            "+OK liste des langues\r\nen English\r\nfr Fran\u{e7}ais\r\n.\r\n"
        );
        // Unknown: the answer in the language in force, which does not change.
        assert_eq!(
            text(&mut s, "LANG de"),
            "-ERR langue non prise en charge\r\n"
        );
        assert_eq!(
            text(&mut s, "LANG fr_FR"),
            "-ERR langue non prise en charge\r\n"
        );
        assert_eq!(s.lang(), Lang::Fr);
        assert_eq!(
            text(&mut s, "LANG *"),
            "+OK language changed to English\r\n"
        );
        assert_eq!(
            text(&mut s, "LANG FR-ca"),
            "+OK langue choisie : fran\u{e7}ais\r\n"
        );
        assert_eq!(
            text(&mut s, "LANG en-GB"),
            "+OK language changed to English\r\n"
        );
        assert_eq!(
            text(&mut s, "LANG en fr"),
            "-ERR LANG takes at most one argument: a language tag or *\r\n"
        );
        // In TRANSACTION too.
        let mut s = logged_in();
        assert_eq!(
            text(&mut s, "LANG fr"),
            "+OK langue choisie : fran\u{e7}ais\r\n"
        );
        assert_eq!(
            text(&mut s, "DELE 9"),
            "-ERR message inexistant, la bo\u{ee}te n'en contient que 2\r\n"
        );
    }

    /// The server's default language: the greeting, and what `LANG *` goes back to.
    #[test]
    fn default_language_from_the_configuration() {
        let cfg = ServerConfig {
            language: Lang::Fr,
            ..ServerConfig::default()
        };
        let mut s = ServerSession::new(cfg);
        let mut out = Vec::new();
        s.greeting(&mut out);
        assert_eq!(out, "+OK serveur POP3 facteur pr\u{ea}t\r\n".as_bytes());
        assert_eq!(
            text(&mut s, "LANG en"),
            "+OK language changed to English\r\n"
        );
        assert_eq!(
            text(&mut s, "LANG *"),
            "+OK langue choisie : fran\u{e7}ais\r\n"
        );
        // A configured greeting is the administrator's text, in no language of ours.
        let cfg = ServerConfig {
            language: Lang::Fr,
            greeting: Some("hello".into()),
            ..ServerConfig::default()
        };
        let mut out = Vec::new();
        ServerSession::new(cfg).greeting(&mut out);
        assert_eq!(out, b"+OK hello\r\n");
    }

    /// A session in French: the texts change, the status, codes and numbers do not.
    #[test]
    fn a_session_in_french() {
        let mut s = ServerSession::new(ServerConfig::default());
        text(&mut s, "LANG fr");
        assert_eq!(text(&mut s, "USER mrose"), "+OK envoyez PASS\r\n");
        s.handle_line(b"PASS secret", &mut Vec::new());
        let mut out = Vec::new();
        s.auth_result(AuthResult::Failed, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "-ERR [AUTH] nom d'utilisateur ou mot de passe invalide\r\n"
        );
        text(&mut s, "USER mrose");
        s.handle_line(b"PASS secret", &mut Vec::new());
        let mut out = Vec::new();
        let msgs = vec![meta(120, "a"), meta(200, "b"), meta(1, "c")];
        s.auth_result(
            AuthResult::Success {
                user: "mrose".into(),
                messages: msgs.into(),
                sizes_known: true,
            },
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "+OK mrose a 3 messages (321 octets)\r\n"
        );
        assert_eq!(text(&mut s, "STAT"), "+OK 3 321\r\n");
        assert_eq!(text(&mut s, "LIST 3"), "+OK 3 1\r\n");
        assert_eq!(text(&mut s, "RETR 1"), "+OK 120 octets\r\n");
        assert_eq!(text(&mut s, "DELE 1"), "+OK message 1 supprim\u{e9}\r\n");
        assert_eq!(
            text(&mut s, "DELE 1"),
            "-ERR message 1 d\u{e9}j\u{e0} supprim\u{e9}\r\n"
        );
        assert_eq!(
            text(&mut s, "LIST"),
            "+OK 2 messages (201 octets)\r\n2 200\r\n3 1\r\n.\r\n"
        );
        assert_eq!(
            text(&mut s, "USER x"),
            "-ERR commande non valide apr\u{e8}s l'authentification\r\n"
        );
        assert_eq!(
            text(&mut s, "RETR 0"),
            "-ERR num\u{e9}ro de message invalide\r\n"
        );
        text(&mut s, "DELE 3");
        s.handle_line(b"QUIT", &mut Vec::new());
        let mut out = Vec::new();
        s.update_result(Ok(()), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "+OK au revoir (suppression de 2 messages, il en reste 1)\r\n"
        );
    }

    /// RFC 6856 section 2 with SASLprep: a name and a password typed in NFD reach the user
    /// database in NFC, whether or not the client said UTF8.
    #[test]
    fn user_names_and_passwords_are_normalized() {
        for utf8 in [false, true] {
            let mut s = ServerSession::new(ServerConfig::default());
            if utf8 {
                text(&mut s, "UTF8");
            }
            assert_eq!(text(&mut s, "USER Jose\u{301}"), "+OK send PASS\r\n");
            let expected = Event::Authenticate {
                user: "Jos\u{e9}".into(),
                // SASLprep: NFKC, and a no-break space is a space.
                password: Secret::new("caf\u{e9} 1".as_bytes().to_vec()),
            };
            assert_eq!(run(&mut s, "PASS cafe\u{301}\u{a0}1").1, Some(expected));
        }
        let cfg = ServerConfig {
            apop_timestamp: Some("<1.2@host>".into()),
            ..ServerConfig::default()
        };
        let mut s = ServerSession::new(cfg);
        let (_, ev) = run(&mut s, "APOP Jose\u{301} c4c9334bac560ecc979e58001b3e22fb");
        assert!(matches!(ev, Some(Event::Apop { user, .. }) if user == "Jos\u{e9}"));
    }

    #[test]
    fn invalid_utf8_and_prohibited_code_points() {
        let mut s = ServerSession::new(ServerConfig::default());
        // A user name that is not UTF-8 is refused by the parser, with [UTF8].
        let mut out = Vec::new();
        assert_eq!(s.handle_line(b"USER caf\xe9", &mut out), None);
        assert_eq!(out, b"-ERR [UTF8] user name is not valid UTF-8\r\n");
        // A private-use character: refused, and PASS must start over from USER.
        assert_eq!(
            text(&mut s, "USER a\u{e000}"),
            "-ERR [UTF8] the user name or password has a character SASLprep (RFC 4013) prohibits\r\n"
        );
        assert_eq!(text(&mut s, "PASS x"), "-ERR send USER first\r\n");
        text(&mut s, "USER a");
        assert!(text(&mut s, "PASS \u{e9}\u{200e}")
            .starts_with("-ERR [UTF8] the user name or password has"));
        // An 8-bit password outside UTF-8 mode is checked as it came (legacy clients)...
        text(&mut s, "USER a");
        let mut out = Vec::new();
        let ev = s.handle_line(b"PASS caf\xe9", &mut out);
        let expected = Event::Authenticate {
            user: "a".into(),
            password: Secret::new(b"caf\xe9".to_vec()),
        };
        assert_eq!(ev, Some(expected));
        s.auth_result(AuthResult::Failed, &mut Vec::new());
        // ...and refused in UTF-8 mode, in the session's language.
        text(&mut s, "UTF8");
        text(&mut s, "LANG fr");
        text(&mut s, "USER a");
        let mut out = Vec::new();
        assert_eq!(s.handle_line(b"PASS caf\xe9", &mut out), None);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "-ERR [UTF8] le nom d'utilisateur ou le mot de passe n'est pas de l'UTF-8 valide\r\n"
        );
        // The SASL path's refusal carries [UTF8] too.
        let cfg = ServerConfig {
            sasl_mechanisms: vec!["PLAIN".into()].into(),
            ..ServerConfig::default()
        };
        let mut s = ServerSession::new(cfg);
        run(&mut s, "AUTH PLAIN");
        let mut out = Vec::new();
        s.auth_result(AuthResult::Refused(Msg::Utf8Prohibited), &mut out);
        assert!(out.starts_with(b"-ERR [UTF8] "));
    }

    /// RFC 2595 section 4: what the client chose before STLS is forgotten after it.
    #[test]
    fn stls_forgets_utf8_and_lang() {
        let cfg = ServerConfig {
            stls_available: true,
            ..ServerConfig::default()
        };
        let mut s = ServerSession::new(cfg);
        text(&mut s, "UTF8");
        text(&mut s, "LANG fr");
        assert_eq!(run(&mut s, "STLS").1, Some(Event::StartTls));
        s.set_tls_active(true, Arc::from([]));
        assert!(!s.utf8_mode());
        assert_eq!(s.lang(), Lang::En);
        assert_eq!(text(&mut s, "FOO"), "-ERR unknown command\r\n");
    }

    /// Every `-ERR` a session can write in French comes from the catalogue's French texts.
    #[test]
    fn french_errors_come_from_the_catalogue() {
        let french: Vec<String> = Msg::ALL
            .iter()
            .map(|&m| {
                Lang::Fr
                    .template(m)
                    .split('{')
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        let mut s = logged_in();
        text(&mut s, "LANG fr");
        for line in [
            "FOO", "", "RETR", "RETR x", "TOP 1", "LIST 1 2", "STAT 1", "APOP a b", "DELE 7",
            "UTF8", "STLS", "LANG a b",
        ] {
            let t = text(&mut s, line);
            let t = t
                .trim_end()
                .strip_prefix("-ERR ")
                .unwrap_or_else(|| panic!("{line}: {t}"));
            assert!(
                french
                    .iter()
                    .any(|f| !f.is_empty() && t.starts_with(f.as_str())),
                "{line:?} answered {t:?}, not a French text"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn any_line_in_any_state_never_panics(lines in proptest::collection::vec(
            proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40), 0..30)) {
            let mut s = logged_in();
            let mut a = ServerSession::new(ServerConfig::default());
            for l in &lines {
                let mut out = Vec::new();
                if let Some(Event::Listing) = s.handle_line(l, &mut out) {
                    while !s.fill_listing(&mut out, 100) {}
                }
                if a.handle_line(l, &mut out).is_some() && a.is_awaiting() {
                    a.auth_result(AuthResult::Failed, &mut out);
                }
            }
        }
    }
}
