//! POP2 (RFC 937) on the server side: the command parser, the replies, the session's state
//! machine, and the encoder of a message as RETR sends it.
//!
//! POP2 is POP3's predecessor, on port 109. A client says who it is with `HELO user password`
//! (answered `#n`, the number of messages), may pick a folder with `FOLD` (`#n` again), asks
//! for a message's size with `READ [n]` (`=c`, its length in octets, `=0` when there is no such
//! message), takes it with `RETR` (the message itself, exactly `c` octets and nothing else: the
//! count is how the client knows where it ends, there is no dot-stuffing and no terminator), then
//! says what it did with it: `ACKS` (saved: go on to the next message), `ACKD` (saved, delete
//! it: go on to the next) or `NACK` (not saved: stay). Each of the three is answered with the
//! `=c` of the message the session is then on. `QUIT` ends the session. Other replies are
//! `+ text` and `- text`.
//!
//! The states are RFC 937's server states: AUTH (before HELO), MBOX (a folder selected, no
//! message read yet), ITEM (a message read, its size told), NEXT (a message sent, its
//! acknowledgement awaited), DONE.
//!
//! What facteur adds to the RFC, as it does for POP3: a deletion (`ACKD`) only marks the message;
//! the marks are applied in one UPDATE at a clean `QUIT`, and a connection that ends any other way
//! deletes nothing. A deleted message is gone for the rest of the session (`READ` of it is `=0`).
//! A message number keeps its message for the whole session. Only the user's inbox exists:
//! `FOLD INBOX` (any case), or `FOLD` with the user's own name as RFC 937's examples use it;
//! any other folder is refused with `-` and the selection stays as it was (an `#0` would tell the
//! client that an empty folder of that name exists).
//!
//! Like the other protocol modules, no I/O here: the driver feeds bytes to
//! [`Pop2Session::handle_input`] (which frames lines with a [`LineFramer`] capped at
//! [`MAX_POP2_LINE`]), writes what the session appends to the output, and does what an
//! [`Event`] asks: check a password and open the maildrop ([`Pop2Session::login_result`]),
//! send a message through a [`BodyEncoder`], apply deletions ([`Pop2Session::update_result`]).
//!
//! What this module must never do: accept a line longer than the cap, take a number that does
//! not fit (`READ 4294967297` is an error, never message 1), send a message with a count that
//! is not the count of the octets sent, delete before UPDATE, or panic on any input.

use std::fmt;

use crate::line::{Frame, LineFramer};
use crate::types::{parse_decimal, same_secret, MessageMeta, Secret};

/// The longest command line, CRLF included. RFC 937 sets no limit; HELO carries a user name
/// and a password on one line, so this is twice POP3's (RFC 2449's 255 octets).
pub const MAX_POP2_LINE: usize = 512;

/// The mailbox name every user has (besides their own name, see the module's documentation).
pub const INBOX: &str = "INBOX";

/// A command of POP2. Equality compares the password in constant time.
#[derive(Clone, Debug)]
pub enum Command {
    /// `HELO user password`: the password is the rest of the line, spaces included.
    Helo {
        user: String,
        password: Secret<Vec<u8>>,
    },
    /// `FOLD mailbox`.
    Fold(String),
    /// `READ [n]`: message `n`, or the current one.
    Read(Option<u32>),
    Retr,
    Acks,
    Ackd,
    Nack,
    Quit,
}

impl PartialEq for Command {
    fn eq(&self, other: &Self) -> bool {
        use Command as C;
        // A match on `self` alone, so that a new variant cannot be forgotten here.
        match self {
            C::Helo { user, password } => {
                matches!(other, C::Helo { user: u, password: p }
                    if user == u && same_secret(Some(password), Some(p)))
            }
            C::Fold(f) => matches!(other, C::Fold(g) if f == g),
            C::Read(n) => matches!(other, C::Read(m) if n == m),
            C::Retr => matches!(other, C::Retr),
            C::Acks => matches!(other, C::Acks),
            C::Ackd => matches!(other, C::Ackd),
            C::Nack => matches!(other, C::Nack),
            C::Quit => matches!(other, C::Quit),
        }
    }
}

impl Eq for Command {}

/// Why a command line was refused; each is a `-` reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unknown command")]
    Unknown,
    #[error("{0}")]
    Syntax(&'static str),
}

/// Parses one command line (without its line end). Verbs in any case; arguments separated by
/// one or more spaces; no control or non-ASCII octet anywhere but in the password.
pub fn parse_command(line: &[u8]) -> Result<Command, ParseError> {
    let (verb, rest) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (
            line.get(..i).unwrap_or_default(),
            line.get(i + 1..).unwrap_or_default(),
        ),
        None => (line, &[][..]),
    };
    let args = || {
        rest.split(|&b| b == b' ')
            .filter(|a| !a.is_empty())
            .collect::<Vec<_>>()
    };
    let printable = |b: &[u8]| b.iter().all(|c| (0x21..0x7f).contains(c));
    let none = |c: Command| {
        if args().is_empty() {
            Ok(c)
        } else {
            Err(ParseError::Syntax("this command takes no argument"))
        }
    };
    let verb = verb.to_ascii_uppercase();
    match verb.as_slice() {
        b"HELO" => {
            let rest = trim_start(rest);
            let (user, password) = match rest.iter().position(|&b| b == b' ') {
                Some(i) => (
                    rest.get(..i).unwrap_or_default(),
                    trim_start(rest.get(i + 1..).unwrap_or_default()),
                ),
                None => (rest, &[][..]),
            };
            if user.is_empty() || password.is_empty() {
                return Err(ParseError::Syntax("HELO needs a user name and a password"));
            }
            if !printable(user) {
                return Err(ParseError::Syntax("the user name must be printable ASCII"));
            }
            if password.iter().any(|&b| b < 0x20 || b == 0x7f) {
                return Err(ParseError::Syntax("a control character in the password"));
            }
            Ok(Command::Helo {
                user: String::from_utf8_lossy(user).into_owned(),
                password: Secret::new(password.to_vec()),
            })
        }
        b"FOLD" => match args().as_slice() {
            [name] if printable(name) => {
                Ok(Command::Fold(String::from_utf8_lossy(name).into_owned()))
            }
            [_] => Err(ParseError::Syntax(
                "the folder name must be printable ASCII",
            )),
            _ => Err(ParseError::Syntax("FOLD needs exactly one folder name")),
        },
        b"READ" => match args().as_slice() {
            [] => Ok(Command::Read(None)),
            [n] => parse_decimal(n)
                .and_then(|n| u32::try_from(n).ok())
                .filter(|&n| n > 0)
                .map(|n| Command::Read(Some(n)))
                .ok_or(ParseError::Syntax(
                    "invalid message number: 1 to 4294967295, digits only",
                )),
            _ => Err(ParseError::Syntax("READ takes at most one message number")),
        },
        b"RETR" => none(Command::Retr),
        b"ACKS" => none(Command::Acks),
        b"ACKD" => none(Command::Ackd),
        b"NACK" => none(Command::Nack),
        b"QUIT" => none(Command::Quit),
        _ => Err(ParseError::Unknown),
    }
}

fn trim_start(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&c| c != b' ').unwrap_or(b.len());
    b.get(start..).unwrap_or_default()
}

/// A reply of POP2: one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+ text`
    Ok(String),
    /// `- text`
    Err(String),
    /// `#n text`: how many messages the selected folder holds.
    Count(u64),
    /// `=n text`: the length in octets of the current message, 0 when there is none.
    Size(u64),
}

impl Reply {
    /// Appends the reply line with its CRLF. A control character in the text becomes a space:
    /// a reply never splits.
    pub fn encode(&self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        let start = out.len();
        // Writing into a Vec cannot fail.
        let _ = match self {
            Reply::Ok(text) => write!(out, "+ {text}"),
            Reply::Err(text) => write!(out, "- {text}"),
            Reply::Count(n) => write!(out, "#{n} {}", if *n == 1 { "message" } else { "messages" }),
            Reply::Size(0) => write!(out, "=0 no more messages"),
            Reply::Size(n) => write!(out, "={n} octets"),
        };
        for b in out.iter_mut().skip(start) {
            if b.is_ascii_control() {
                *b = b' ';
            }
        }
        out.extend_from_slice(b"\r\n");
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::new();
        self.encode(&mut out);
        f.write_str(String::from_utf8_lossy(&out).trim_end())
    }
}

/// RFC 937's server states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Before a successful HELO.
    Auth,
    /// A folder selected; no message read yet.
    Mbox,
    /// A message read (its size told): RETR may follow.
    Item,
    /// A message sent: ACKS, ACKD or NACK must follow.
    Next,
    /// The session is over; the driver closes the connection after flushing the output.
    Done,
}

/// What the session needs to know of its server and of this connection.
#[derive(Clone, Debug)]
pub struct Pop2Config {
    /// The greeting text after `+ `.
    pub greeting: String,
    /// Whether a password may be sent on this connection (the plaintext policy: POP2 has no
    /// TLS, so this is the policy's answer for a connection in clear from this client).
    pub plaintext_allowed: bool,
    /// After this many bad commands (unknown, malformed, out of state, too long) the session
    /// closes.
    pub max_bad_commands: u32,
}

impl Default for Pop2Config {
    fn default() -> Self {
        Self {
            greeting: "POP2 server ready".into(),
            plaintext_allowed: true,
            max_bad_commands: 20,
        }
    }
}

/// Work the driver must do for the session. Equality compares the password in constant time.
#[derive(Debug)]
pub enum Event {
    /// HELO: check the password, then lock and open the maildrop, and call
    /// [`Pop2Session::login_result`].
    Authenticate {
        user: String,
        password: Secret<Vec<u8>>,
    },
    /// RETR: send message `index` (0-based) through a [`BodyEncoder::new`]`(size)`: exactly
    /// `size` octets. Nothing else is answered; the session now awaits the acknowledgement. A
    /// message that cannot be sent whole with that count must end the connection.
    Retrieve { index: usize, size: u64 },
    /// QUIT after login: delete these messages (0-based, ascending) durably, release the
    /// maildrop, and call [`Pop2Session::update_result`].
    Update { deletions: Vec<usize> },
    /// Flush the output and close the connection.
    Close,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        use Event as E;
        match self {
            E::Authenticate { user, password } => {
                matches!(other, E::Authenticate { user: u, password: p }
                    if user == u && same_secret(Some(password), Some(p)))
            }
            E::Retrieve { index, size } => {
                matches!(other, E::Retrieve { index: i, size: s } if index == i && size == s)
            }
            E::Update { deletions } => {
                matches!(other, E::Update { deletions: d } if deletions == d)
            }
            E::Close => matches!(other, E::Close),
        }
    }
}

impl Eq for Event {}

/// How the driver's authentication and maildrop opening ended.
#[derive(Debug)]
pub enum LoginResult {
    /// The password is good and the maildrop locked; `messages` is its snapshot, with every
    /// size exact (POP2 tells a size with nearly every reply, so the driver computes them
    /// before it reports a success).
    Success {
        user: String,
        messages: Vec<MessageMeta>,
    },
    /// Bad credentials (unknown user and wrong password alike).
    Failed,
    /// The maildrop is locked by another session (POP3 or POP2).
    InUse,
    /// Sooner than the user's LOGIN-DELAY after the last login (RFC 2449's policy, which the
    /// server applies to POP2 logins too).
    LoginDelay,
    /// A server-side failure (the maildrop could not be opened, the user database did not
    /// answer).
    SystemError,
    /// The credentials were refused before any check, for their shape: `-` with this text.
    Refused(&'static str),
}

/// The state machine for one POP2 connection, server side.
#[derive(Debug)]
pub struct Pop2Session {
    config: Pop2Config,
    state: State,
    framer: LineFramer,
    /// The login event awaits its result, or the update its: no input is taken meanwhile.
    awaiting: bool,
    user: Option<String>,
    messages: Vec<MessageMeta>,
    deleted: Vec<bool>,
    deleted_count: usize,
    /// The current message number (1-based; may be past the last message).
    current: u64,
    bad_commands: u32,
    closed_for_errors: bool,
    /// HELO was refused (plaintext policy, credentials, lock): the session ended there.
    login_refused: bool,
}

impl Pop2Session {
    pub fn new(config: Pop2Config) -> Self {
        Self {
            config,
            state: State::Auth,
            framer: LineFramer::new(MAX_POP2_LINE),
            awaiting: false,
            user: None,
            messages: Vec::new(),
            deleted: Vec::new(),
            deleted_count: 0,
            current: 1,
            bad_commands: 0,
            closed_for_errors: false,
            login_refused: false,
        }
    }

    /// Write the greeting: `+ text`.
    pub fn greeting(&self, out: &mut Vec<u8>) {
        Reply::Ok(self.config.greeting.clone()).encode(out);
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The logged-in user.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The number of messages marked deleted so far.
    pub fn deleted_count(&self) -> usize {
        self.deleted_count
    }

    /// The current message number (1-based; may be past the last message).
    pub fn current(&self) -> u64 {
        self.current
    }

    /// True while an event's result is awaited: feed no input until it is given.
    pub fn is_awaiting(&self) -> bool {
        self.awaiting
    }

    /// True if the session closed itself after too many bad commands.
    pub fn closed_for_errors(&self) -> bool {
        self.closed_for_errors
    }

    /// True if the session ended because HELO was refused (by the plaintext policy, or by the
    /// login's result).
    pub fn login_refused(&self) -> bool {
        self.login_refused
    }

    /// Take bytes from `input` up to the end of one command line, and answer it if it is
    /// complete. Returns how many octets were taken (the rest is for the next call, once the
    /// event, if any, is done) and the event the command needs. Takes nothing while an event's
    /// result is awaited or once the session is over.
    pub fn handle_input(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, Option<Event>) {
        if self.awaiting || self.state == State::Done {
            return (0, None);
        }
        let (used, frame) = self.framer.push(input);
        let event = match frame {
            None => None,
            Some(Frame::TooLong) => {
                Reply::Err("line too long".into()).encode(out);
                self.bad_command(out)
            }
            Some(Frame::Line(line)) => match parse_command(line) {
                Ok(cmd) => self.command(cmd, out),
                Err(e) => {
                    Reply::Err(e.to_string()).encode(out);
                    self.bad_command(out)
                }
            },
        };
        (used, event)
    }

    fn bad_command(&mut self, out: &mut Vec<u8>) -> Option<Event> {
        self.bad_commands = self.bad_commands.saturating_add(1);
        if self.bad_commands >= self.config.max_bad_commands {
            Reply::Err("too many bad commands, closing connection".into()).encode(out);
            self.state = State::Done;
            self.closed_for_errors = true;
            return Some(Event::Close);
        }
        None
    }

    fn refuse(&mut self, text: &str, out: &mut Vec<u8>) -> Option<Event> {
        Reply::Err(text.into()).encode(out);
        self.bad_command(out)
    }

    fn close(&mut self, reply: Reply, out: &mut Vec<u8>) -> Option<Event> {
        reply.encode(out);
        self.state = State::Done;
        Some(Event::Close)
    }

    /// The size of message `number` for `=n`: 0 when there is no such message, or it is
    /// marked deleted (or empty: POP2 cannot tell an empty message from none).
    fn size_of(&self, number: u64) -> u64 {
        self.index_of(number)
            .and_then(|i| self.messages.get(i).map(|m| m.size))
            .unwrap_or(0)
    }

    /// The 0-based index of a live message number.
    fn index_of(&self, number: u64) -> Option<usize> {
        let index = usize::try_from(number.checked_sub(1)?).ok()?;
        match self.deleted.get(index) {
            Some(false) => Some(index),
            _ => None,
        }
    }

    fn told_size(&mut self, out: &mut Vec<u8>) -> Option<Event> {
        Reply::Size(self.size_of(self.current)).encode(out);
        self.state = State::Item;
        None
    }

    fn command(&mut self, cmd: Command, out: &mut Vec<u8>) -> Option<Event> {
        match (self.state, cmd) {
            (State::Done, _) => Some(Event::Close),
            (State::Auth, Command::Helo { user, password }) => {
                if !self.config.plaintext_allowed {
                    self.login_refused = true;
                    // POP2 has no TLS, so nothing on this connection can make a password
                    // acceptable: say why, and end it.
                    return self.close(
                        Reply::Err(
                            "plaintext login is not allowed from this address, and POP2 has no \
                             TLS: use POP3 with TLS (POP3S or STLS)"
                                .into(),
                        ),
                        out,
                    );
                }
                self.awaiting = true;
                Some(Event::Authenticate { user, password })
            }
            (State::Auth, Command::Quit) => self.close(Reply::Ok("bye".into()), out),
            (State::Auth, _) => self.refuse("send HELO user password first", out),
            (_, Command::Helo { .. }) => self.refuse("already logged in", out),
            (State::Next, Command::Acks) => {
                self.current = self.current.saturating_add(1);
                self.told_size(out)
            }
            (State::Next, Command::Ackd) => {
                if let Some(index) = self.index_of(self.current) {
                    if let Some(d) = self.deleted.get_mut(index) {
                        *d = true;
                        self.deleted_count += 1;
                    }
                }
                self.current = self.current.saturating_add(1);
                self.told_size(out)
            }
            (State::Next, Command::Nack) => self.told_size(out),
            (State::Next, Command::Quit) => self.quit(),
            (State::Next, _) => self.refuse("ACKS, ACKD or NACK expected", out),
            (_, Command::Acks | Command::Ackd | Command::Nack) => {
                self.refuse("no message was sent: READ and RETR first", out)
            }
            (_, Command::Fold(name)) => {
                let own = self.user.as_deref().is_some_and(|u| u == name);
                if !(name.eq_ignore_ascii_case(INBOX) || own) {
                    return self.refuse("no such folder: only INBOX exists here", out);
                }
                self.current = 1;
                self.state = State::Mbox;
                Reply::Count(self.messages.len() as u64).encode(out);
                None
            }
            (_, Command::Read(n)) => {
                if let Some(n) = n {
                    self.current = u64::from(n);
                }
                self.told_size(out)
            }
            (State::Mbox, Command::Retr) => self.refuse("READ a message first", out),
            (_, Command::Retr) => match self.index_of(self.current) {
                Some(index) => match self.messages.get(index).map(|m| m.size) {
                    Some(size) if size > 0 => {
                        self.state = State::Next;
                        Some(Event::Retrieve { index, size })
                    }
                    _ => self.refuse("no message to retrieve", out),
                },
                None => self.refuse("no message to retrieve", out),
            },
            (_, Command::Quit) => self.quit(),
        }
    }

    fn quit(&mut self) -> Option<Event> {
        let deletions = self
            .deleted
            .iter()
            .enumerate()
            .filter_map(|(i, &d)| d.then_some(i))
            .collect();
        self.awaiting = true;
        Some(Event::Update { deletions })
    }

    /// Report how the login ended; writes the answer. `Some(Event::Close)` when the session
    /// ends: every failed HELO ends it (one password guess per connection, as UW's ipop2d
    /// does).
    pub fn login_result(&mut self, result: LoginResult, out: &mut Vec<u8>) -> Option<Event> {
        if !self.awaiting || self.state != State::Auth {
            return None;
        }
        self.awaiting = false;
        let why = match result {
            LoginResult::Success { user, messages } => {
                self.deleted = vec![false; messages.len()];
                self.messages = messages;
                self.user = Some(user);
                self.current = 1;
                self.state = State::Mbox;
                Reply::Count(self.messages.len() as u64).encode(out);
                return None;
            }
            LoginResult::Failed => "invalid user name or password".to_string(),
            LoginResult::InUse => {
                "maildrop is locked by another session (POP3 or POP2), try again later".into()
            }
            LoginResult::LoginDelay => "too soon after the last login, try again later".into(),
            LoginResult::SystemError => "cannot open the maildrop now, try again later".into(),
            LoginResult::Refused(text) => text.to_string(),
        };
        self.login_refused = true;
        self.close(Reply::Err(why), out)
    }

    /// Report how the UPDATE ended (`Err`: nothing or not everything was deleted); writes the
    /// answer to QUIT and ends the session.
    pub fn update_result(&mut self, result: Result<(), ()>, out: &mut Vec<u8>) -> Option<Event> {
        if !self.awaiting || self.state == State::Auth || self.state == State::Done {
            return None;
        }
        self.awaiting = false;
        let reply = match result {
            Ok(()) if self.deleted_count == 0 => Reply::Ok("bye".into()),
            Ok(()) => Reply::Ok(format!(
                "bye, {} deleted",
                if self.deleted_count == 1 {
                    "1 message".to_string()
                } else {
                    format!("{} messages", self.deleted_count)
                }
            )),
            Err(()) => Reply::Err("some deletions could not be applied".into()),
        };
        self.close(reply, out)
    }
}

/// A message's count did not match the octets it has on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeMismatch {
    #[error("the message is longer than its size")]
    Longer,
    #[error("the message is shorter than its size: {missing} octets missing")]
    Shorter { missing: u64 },
}

/// Server side: turns stored message bytes into what POP2's RETR sends: a bare LF becomes CRLF
/// (even across chunks), nothing is stuffed, nothing ends it; and never more than the size
/// told by `=n`. The size is [`crate::dot::WireSize`]'s count, which is the same: the stored
/// octets plus one per bare LF.
#[derive(Debug, Clone)]
pub struct BodyEncoder {
    left: u64,
    prev_cr: bool,
}

impl BodyEncoder {
    /// An encoder for a message announced as `size` octets.
    pub fn new(size: u64) -> Self {
        Self {
            left: size,
            prev_cr: false,
        }
    }

    /// The octets still due.
    pub fn left(&self) -> u64 {
        self.left
    }

    /// Encode a chunk, appending to `out`. Fails, having appended at most the octets still due,
    /// if the chunk makes the message longer than its size.
    pub fn encode(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), SizeMismatch> {
        out.reserve(chunk.len() + chunk.len() / 32 + 1);
        let mut run = 0;
        for lf in memchr::memchr_iter(b'\n', chunk) {
            let cr_before = match lf.checked_sub(1).and_then(|i| chunk.get(i)) {
                Some(&b) => b == b'\r',
                None => self.prev_cr,
            };
            if !cr_before {
                self.put(chunk.get(run..lf).unwrap_or_default(), out)?;
                self.put(b"\r", out)?;
                run = lf;
            }
        }
        self.put(chunk.get(run..).unwrap_or_default(), out)?;
        if let Some(&last) = chunk.last() {
            self.prev_cr = last == b'\r';
        }
        Ok(())
    }

    fn put(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), SizeMismatch> {
        let n = bytes.len() as u64;
        if n > self.left {
            let fits = usize::try_from(self.left).unwrap_or(usize::MAX);
            out.extend_from_slice(bytes.get(..fits).unwrap_or_default());
            self.left = 0;
            return Err(SizeMismatch::Longer);
        }
        out.extend_from_slice(bytes);
        self.left -= n;
        Ok(())
    }

    /// The message ended: fails if fewer octets than its size were sent.
    pub fn finish(self) -> Result<(), SizeMismatch> {
        match self.left {
            0 => Ok(()),
            missing => Err(SizeMismatch::Shorter { missing }),
        }
    }
}

#[cfg(test)]
mod tests;
