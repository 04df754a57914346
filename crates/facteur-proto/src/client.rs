//! `ClientSession`: the client side of POP3 as a state machine with no I/O.
//!
//! The driver writes what [`ClientSession::send`] appends to its output buffer, hands every byte
//! it receives to [`ClientSession::feed`], then calls [`ClientSession::next_event`] until it
//! returns `Ok(None)`. Replies are matched to commands in the order they were sent, so several
//! commands may be written at once (PIPELINING, RFC 2449 section 6.6).
//!
//! Nothing here parses POP3 a second time: status lines go through [`crate::response`], lines
//! through [`crate::line::LineFramer`], multi-line responses through [`crate::dot::DotDecoder`],
//! and what is multi-line is [`Command::has_multiline_reply`]'s call.
//!
//! What this module must never do:
//! - grow with what a server sends: a status or listing line is capped at 512 octets (RFC 2449
//!   section 4), and a longer one is an error, not a bigger buffer; the body of RETR or TOP is
//!   handed over in chunks as it arrives, never gathered into one message;
//! - panic, whatever the server sends; a server that breaks the protocol gets a [`ClientError`],
//!   after which the session is over and the connection should be closed;
//! - keep a byte that arrived between the `+OK` to STLS and the TLS handshake: a server sends
//!   nothing there, so such bytes were injected by someone in the middle (RFC 2595 section 4).

use crate::command::Command;
use crate::dot::DotDecoder;
use crate::line::{Frame, LineFramer};
use crate::response::{parse_status, Status};
use crate::types::{parse_decimal, MsgNum, Uidl};
use std::collections::VecDeque;
use std::fmt;

/// RFC 2449 section 4: a response line is at most 512 octets, CRLF included. Status lines,
/// listing lines and SASL continuations longer than this are an error.
pub const MAX_RESPONSE_LINE: usize = 512;

/// The most received octets one [`ClientEvent::Body`] covers: the body buffer never grows past
/// this, whatever the size of the message or of a `feed`.
pub const BODY_CHUNK: usize = 16 * 1024;

/// The most received octets of a listing un-stuffed at once, before they are cut into lines.
const LISTING_CHUNK: usize = 4 * 1024;

/// The most octets of a server's line quoted in an error message.
const EXCERPT: usize = 80;

/// The longest SASL mechanism name (RFC 4422 section 3.1).
const MAX_MECHANISM: usize = 20;

/// The command a reply answers, without its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CommandKind {
    User,
    Pass,
    Apop,
    Auth,
    Stls,
    Capa,
    Quit,
    Stat,
    List,
    Retr,
    Dele,
    Noop,
    Rset,
    Top,
    Uidl,
    Last,
    Utf8,
    Lang,
}

impl CommandKind {
    /// The kind of `cmd`.
    pub fn of(cmd: &Command) -> Self {
        match cmd {
            Command::User(_) => Self::User,
            Command::Pass(_) => Self::Pass,
            Command::Apop { .. } => Self::Apop,
            Command::Auth { .. } => Self::Auth,
            Command::Stls => Self::Stls,
            Command::Capa => Self::Capa,
            Command::Quit => Self::Quit,
            Command::Stat => Self::Stat,
            Command::List(_) => Self::List,
            Command::Retr(_) => Self::Retr,
            Command::Dele(_) => Self::Dele,
            Command::Noop => Self::Noop,
            Command::Rset => Self::Rset,
            Command::Top(..) => Self::Top,
            Command::Uidl(_) => Self::Uidl,
            Command::Last => Self::Last,
            Command::Utf8 => Self::Utf8,
            Command::Lang(_) => Self::Lang,
        }
    }

    /// The keyword, in capitals.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "USER",
            Self::Pass => "PASS",
            Self::Apop => "APOP",
            Self::Auth => "AUTH",
            Self::Stls => "STLS",
            Self::Capa => "CAPA",
            Self::Quit => "QUIT",
            Self::Stat => "STAT",
            Self::List => "LIST",
            Self::Retr => "RETR",
            Self::Dele => "DELE",
            Self::Noop => "NOOP",
            Self::Rset => "RSET",
            Self::Top => "TOP",
            Self::Uidl => "UIDL",
            Self::Last => "LAST",
            Self::Utf8 => "UTF8",
            Self::Lang => "LANG",
        }
    }
}

impl fmt::Display for CommandKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of a CAPA response (RFC 2449 section 5): a tag and its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capability {
    /// The capability's tag, in capitals (`TOP`, `SASL`, `PIPELINING`, ...).
    pub name: String,
    /// The words after the tag, as sent (`SASL PLAIN LOGIN` has `["PLAIN", "LOGIN"]`).
    pub params: Vec<String>,
}

/// A parsed item of a reply: from a single-line `+OK` (STAT, `LIST n`, `UIDL n`) or from one
/// line of a multi-line response (LIST, UIDL, CAPA, AUTH with no argument).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listing {
    /// STAT's "drop listing" (RFC 1939 section 5): messages and octets in the maildrop.
    Drop { count: u32, octets: u64 },
    /// LIST's "scan listing": a message and its size in octets.
    Scan { msg: MsgNum, octets: u64 },
    /// UIDL's "unique-id listing": a message and its unique-id.
    UniqueId { msg: MsgNum, uid: Uidl },
    /// A line of CAPA.
    Capability(Capability),
    /// A SASL mechanism of the list `AUTH` with no argument gives (RFC 5034), in capitals.
    Mechanism(String),
}

/// What the server said, one item at a time, in the order it said it.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientEvent<'a> {
    /// The greeting (RFC 1939 section 4), with the APOP timestamp if it has one. A `-ERR`
    /// greeting means the server will not serve this connection.
    Greeting {
        status: Status,
        apop_timestamp: Option<String>,
    },
    /// The status line of the reply to the oldest command still unanswered.
    ///
    /// `listing` is the parsed `+OK` of STAT, `LIST n` and `UIDL n`; `None` otherwise. After the
    /// `+OK` of a command with a multi-line reply, `Listing` or `Body` events follow, then `End`.
    Reply {
        command: CommandKind,
        status: Status,
        listing: Option<Listing>,
    },
    /// One line of a multi-line LIST, UIDL, CAPA or AUTH reply, parsed.
    Listing(Listing),
    /// Part of the message a RETR or TOP sends, un-stuffed, with its line ends as the server
    /// sent them (CRLF). Never more than [`BODY_CHUNK`] octets; consecutive events join up.
    Body(&'a [u8]),
    /// The end of a multi-line reply.
    End,
    /// A SASL challenge, `+ base64` (RFC 5034): the text after `+ `. Answer with
    /// [`ClientSession::send_sasl_response`]; the AUTH reply is still to come.
    Continuation(String),
}

/// How the server broke the protocol. Each one ends the session: after it, every call to
/// [`ClientSession::next_event`] returns the same error, and the connection should be closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("the server sent a line longer than {MAX_RESPONSE_LINE} octets")]
    LineTooLong,
    #[error("the server sent a line that is not a POP3 status line: {0:?}")]
    NotAStatus(String),
    #[error("the server sent data that answers no command: {0:?}")]
    Unsolicited(String),
    #[error("the server sent a SASL continuation that answers no AUTH: {0:?}")]
    UnexpectedContinuation(String),
    #[error("malformed {what} from the server: {line:?}")]
    Malformed { what: &'static str, line: String },
}

/// A SASL response must be one line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a SASL response must not contain CR or LF")]
pub struct NotOneLine;

/// A command sent and not yet answered.
#[derive(Clone, Copy, Debug)]
struct Pending {
    kind: CommandKind,
    multiline: bool,
}

/// What the next octets from the server are.
#[derive(Debug)]
enum Phase {
    /// The greeting line.
    Greeting,
    /// A status line (or a SASL continuation).
    Status,
    /// The lines of a multi-line LIST, UIDL, CAPA or AUTH reply.
    Listing {
        kind: CommandKind,
        decoder: DotDecoder,
    },
    /// The message of a RETR or TOP reply.
    Body { decoder: DotDecoder },
}

/// What `step` found: an event that owns its data, or a body chunk left in `scratch`.
enum Step {
    Event(ClientEvent<'static>),
    Body,
}

/// The state machine for one POP3 connection, client side.
#[derive(Debug)]
pub struct ClientSession {
    phase: Phase,
    /// Commands sent and not yet answered, oldest first.
    pending: VecDeque<Pending>,
    /// Status and listing lines; capped at [`MAX_RESPONSE_LINE`].
    framer: LineFramer,
    /// Octets fed and not yet turned into events: `input[pos..]`.
    input: Vec<u8>,
    pos: usize,
    /// Un-stuffed octets: a body chunk being handed out, or listing lines not yet framed
    /// (`scratch[scratch_pos..]`).
    scratch: Vec<u8>,
    scratch_pos: usize,
    /// The protocol error that ended the session.
    failed: Option<ClientError>,
}

impl Default for ClientSession {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientSession {
    /// A session waiting for the server's greeting.
    pub fn new() -> Self {
        Self {
            phase: Phase::Greeting,
            pending: VecDeque::new(),
            framer: LineFramer::new(MAX_RESPONSE_LINE),
            input: Vec::new(),
            pos: 0,
            scratch: Vec::new(),
            scratch_pos: 0,
            failed: None,
        }
    }

    /// Queue `cmd`: its line is appended to `out`, for the caller to write. Commands may be
    /// queued before earlier ones are answered (PIPELINING); replies are matched in order.
    pub fn send(&mut self, cmd: Command, out: &mut Vec<u8>) {
        cmd.encode(out);
        self.pending.push_back(Pending {
            kind: CommandKind::of(&cmd),
            multiline: cmd.has_multiline_reply(),
        });
    }

    /// Answer a SASL [`ClientEvent::Continuation`]: `response` (base64, or `*` to cancel) and
    /// CRLF are appended to `out`. The AUTH command stays the one awaiting a reply.
    pub fn send_sasl_response(
        &mut self,
        response: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), NotOneLine> {
        if response.iter().any(|&b| b == b'\r' || b == b'\n') {
            return Err(NotOneLine);
        }
        out.extend_from_slice(response);
        out.extend_from_slice(b"\r\n");
        Ok(())
    }

    /// Hand over octets received from the server; then call [`next_event`](Self::next_event)
    /// until it returns `Ok(None)`. The session keeps what it is given until it is turned into
    /// events, so draining the events after each `feed` keeps its memory to one `feed`.
    pub fn feed(&mut self, data: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.pos >= self.input.len() {
            self.input.clear();
            self.pos = 0;
        } else if self.pos > 0 {
            self.input.drain(..self.pos);
            self.pos = 0;
        }
        self.input.extend_from_slice(data);
    }

    /// The next event from what was fed, `Ok(None)` when more input is needed.
    ///
    /// An error means the server broke the protocol; the session is over and every later call
    /// returns the same error.
    pub fn next_event(&mut self) -> Result<Option<ClientEvent<'_>>, ClientError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.step() {
            Ok(None) => Ok(None),
            Ok(Some(Step::Event(e))) => Ok(Some(e)),
            Ok(Some(Step::Body)) => Ok(Some(ClientEvent::Body(&self.scratch))),
            Err(e) => {
                self.failed = Some(e.clone());
                self.input = Vec::new();
                self.pos = 0;
                self.scratch = Vec::new();
                self.scratch_pos = 0;
                self.framer.clear();
                Err(e)
            }
        }
    }

    /// The number of commands sent and not yet answered (the reply to the last one may be in
    /// progress).
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Octets fed and not yet turned into events, nor held as the start of a line (which the
    /// line framer caps at [`MAX_RESPONSE_LINE`]). Zero whenever
    /// [`next_event`](Self::next_event) has returned `Ok(None)`: the session keeps no more than
    /// one `feed` and one line, whatever the server sends.
    pub fn unread(&self) -> usize {
        let input = self.input.len().saturating_sub(self.pos);
        match self.phase {
            Phase::Listing { .. } => {
                input.saturating_add(self.scratch.len().saturating_sub(self.scratch_pos))
            }
            Phase::Greeting | Phase::Status | Phase::Body { .. } => input,
        }
    }

    /// True until the greeting has been read.
    pub fn awaiting_greeting(&self) -> bool {
        matches!(self.phase, Phase::Greeting)
    }

    /// True when every reply is complete: nothing sent is still unanswered, and no multi-line
    /// reply is in progress.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && matches!(self.phase, Phase::Status)
    }

    fn step(&mut self) -> Result<Option<Step>, ClientError> {
        loop {
            match &mut self.phase {
                Phase::Greeting | Phase::Status => return self.status_line(),
                Phase::Body { decoder } => {
                    if decoder.is_done() {
                        self.phase = Phase::Status;
                        return Ok(Some(Step::Event(ClientEvent::End)));
                    }
                    let rest = self.input.get(self.pos..).unwrap_or_default();
                    if rest.is_empty() {
                        return Ok(None);
                    }
                    let rest = rest.get(..BODY_CHUNK).unwrap_or(rest);
                    self.scratch.clear();
                    let (n, _) = decoder.decode(rest, &mut self.scratch);
                    self.pos = self.pos.saturating_add(n);
                    if !self.scratch.is_empty() {
                        return Ok(Some(Step::Body));
                    }
                }
                Phase::Listing { kind, decoder } => {
                    let kind = *kind;
                    if let Some(lines) = self
                        .scratch
                        .get(self.scratch_pos..)
                        .filter(|s| !s.is_empty())
                    {
                        let (n, frame) = self.framer.push(lines);
                        self.scratch_pos = self.scratch_pos.saturating_add(n);
                        match frame {
                            None => {}
                            Some(Frame::TooLong) => return Err(ClientError::LineTooLong),
                            Some(Frame::Line(line)) => {
                                let item = listing_line(kind, line)?;
                                return Ok(Some(Step::Event(ClientEvent::Listing(item))));
                            }
                        }
                        continue;
                    }
                    self.scratch.clear();
                    self.scratch_pos = 0;
                    if decoder.is_done() {
                        // The decoder only stops at the start of a line, so no partial line is
                        // left in the framer.
                        self.phase = Phase::Status;
                        return Ok(Some(Step::Event(ClientEvent::End)));
                    }
                    let rest = self.input.get(self.pos..).unwrap_or_default();
                    if rest.is_empty() {
                        return Ok(None);
                    }
                    let rest = rest.get(..LISTING_CHUNK).unwrap_or(rest);
                    let (n, _) = decoder.decode(rest, &mut self.scratch);
                    self.pos = self.pos.saturating_add(n);
                }
            }
        }
    }

    /// The greeting, a status line or a SASL continuation.
    fn status_line(&mut self) -> Result<Option<Step>, ClientError> {
        if matches!(self.phase, Phase::Greeting) {
            return self.greeting();
        }
        let rest = self.input.get(self.pos..).unwrap_or_default();
        if rest.is_empty() {
            return Ok(None);
        }
        let Some(&pending) = self.pending.front() else {
            return Err(ClientError::Unsolicited(excerpt(rest)));
        };
        let (n, frame) = self.framer.push(rest);
        self.pos = self.pos.saturating_add(n);
        let line = match frame {
            None => return Ok(None),
            Some(Frame::TooLong) => return Err(ClientError::LineTooLong),
            Some(Frame::Line(line)) => line,
        };
        if let Some(challenge) = continuation(line) {
            if pending.kind == CommandKind::Auth && !pending.multiline {
                return Ok(Some(Step::Event(ClientEvent::Continuation(challenge))));
            }
            return Err(ClientError::UnexpectedContinuation(excerpt(line)));
        }
        let status = parse_status(line).map_err(|_| ClientError::NotAStatus(excerpt(line)))?;
        self.pending.pop_front();
        let kind = pending.kind;
        let mut listing = None;
        if status.ok {
            let text = status.text.as_bytes();
            listing = match kind {
                CommandKind::Stat => Some(
                    parse_drop_listing(text)
                        .map(|(count, octets)| Listing::Drop { count, octets })
                        .ok_or_else(|| malformed("drop listing", text))?,
                ),
                CommandKind::List if !pending.multiline => Some(scan_listing(text)?),
                CommandKind::Uidl if !pending.multiline => Some(unique_id_listing(text)?),
                _ => None,
            };
            if pending.multiline {
                let decoder = DotDecoder::new();
                self.scratch.clear();
                self.scratch_pos = 0;
                self.phase = match kind {
                    CommandKind::Retr | CommandKind::Top => Phase::Body { decoder },
                    _ => Phase::Listing { kind, decoder },
                };
            }
            if kind == CommandKind::Stls {
                // Whatever followed the +OK came before the handshake: not from the server.
                self.input = Vec::new();
                self.pos = 0;
                self.framer.clear();
            }
        }
        Ok(Some(Step::Event(ClientEvent::Reply {
            command: kind,
            status,
            listing,
        })))
    }

    fn greeting(&mut self) -> Result<Option<Step>, ClientError> {
        let rest = self.input.get(self.pos..).unwrap_or_default();
        let (n, frame) = self.framer.push(rest);
        self.pos = self.pos.saturating_add(n);
        let line = match frame {
            None => return Ok(None),
            Some(Frame::TooLong) => return Err(ClientError::LineTooLong),
            Some(Frame::Line(line)) => line,
        };
        let status = parse_status(line).map_err(|_| ClientError::NotAStatus(excerpt(line)))?;
        let apop_timestamp = if status.ok {
            apop_timestamp(&status.text).map(str::to_owned)
        } else {
            None
        };
        self.phase = Phase::Status;
        Ok(Some(Step::Event(ClientEvent::Greeting {
            status,
            apop_timestamp,
        })))
    }
}

/// The challenge of a SASL continuation line (`+ base64`, or a bare `+`).
fn continuation(line: &[u8]) -> Option<String> {
    match line {
        [b'+'] => Some(String::new()),
        [b'+', b' ', rest @ ..] => Some(String::from_utf8_lossy(rest).trim().to_string()),
        _ => None,
    }
}

/// One line of a multi-line reply to `kind`, parsed.
fn listing_line(kind: CommandKind, line: &[u8]) -> Result<Listing, ClientError> {
    match kind {
        CommandKind::List => scan_listing(line),
        CommandKind::Uidl => unique_id_listing(line),
        CommandKind::Capa => parse_capability(line)
            .map(Listing::Capability)
            .ok_or_else(|| malformed("capability", line)),
        CommandKind::Auth => parse_mechanism(line)
            .map(Listing::Mechanism)
            .ok_or_else(|| malformed("SASL mechanism", line)),
        // Only the commands above are given a Listing phase.
        _ => Err(malformed("listing", line)),
    }
}

fn scan_listing(text: &[u8]) -> Result<Listing, ClientError> {
    parse_scan_listing(text)
        .map(|(msg, octets)| Listing::Scan { msg, octets })
        .ok_or_else(|| malformed("scan listing", text))
}

fn unique_id_listing(text: &[u8]) -> Result<Listing, ClientError> {
    parse_unique_id_listing(text)
        .map(|(msg, uid)| Listing::UniqueId { msg, uid })
        .ok_or_else(|| malformed("unique-id listing", text))
}

fn malformed(what: &'static str, line: &[u8]) -> ClientError {
    ClientError::Malformed {
        what,
        line: excerpt(line),
    }
}

/// The start of a server's line, for an error message.
fn excerpt(line: &[u8]) -> String {
    String::from_utf8_lossy(line.get(..EXCERPT).unwrap_or(line)).into_owned()
}

/// The words of a line: runs of spaces count as one separator, as in command parsing.
fn words(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|&b| b == b' ').filter(|w| !w.is_empty())
}

fn msg_num(b: &[u8]) -> Option<MsgNum> {
    parse_decimal(b)
        .and_then(|n| u32::try_from(n).ok())
        .and_then(MsgNum::new)
}

/// STAT's `+OK` text: `count octets` (RFC 1939 section 5). Words after the two numbers are
/// ignored (the RFC discourages them but allows them).
pub fn parse_drop_listing(text: &[u8]) -> Option<(u32, u64)> {
    let mut w = words(text);
    let count = parse_decimal(w.next()?).and_then(|n| u32::try_from(n).ok())?;
    let octets = parse_decimal(w.next()?)?;
    Some((count, octets))
}

/// A scan listing, `msg octets`: the `+OK` text of `LIST n` or a line of `LIST`. The message
/// number is never 0 and never wraps; words after the size are ignored.
pub fn parse_scan_listing(line: &[u8]) -> Option<(MsgNum, u64)> {
    let mut w = words(line);
    let msg = msg_num(w.next()?)?;
    let octets = parse_decimal(w.next()?)?;
    Some((msg, octets))
}

/// A unique-id listing, `msg unique-id`: the `+OK` text of `UIDL n` or a line of `UIDL`. The
/// unique-id must be valid (1 to 70 octets of 0x21..=0x7E).
pub fn parse_unique_id_listing(line: &[u8]) -> Option<(MsgNum, Uidl)> {
    let mut w = words(line);
    let msg = msg_num(w.next()?)?;
    let uid = std::str::from_utf8(w.next()?).ok().and_then(Uidl::new)?;
    Some((msg, uid))
}

/// A line of CAPA: a tag and its parameters, without control characters.
pub fn parse_capability(line: &[u8]) -> Option<Capability> {
    if line.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return None;
    }
    let mut w = words(line).map(|w| String::from_utf8_lossy(w).into_owned());
    let name = w.next()?.to_ascii_uppercase();
    Some(Capability {
        name,
        params: w.collect(),
    })
}

/// A SASL mechanism name (RFC 4422 section 3.1): 1 to 20 of A-Z, 0-9, `-` and `_`; returned in
/// capitals.
pub fn parse_mechanism(line: &[u8]) -> Option<String> {
    let ok = !line.is_empty()
        && line.len() <= MAX_MECHANISM
        && line
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then(|| String::from_utf8_lossy(line).to_ascii_uppercase())
}

/// The APOP timestamp of a greeting's text (RFC 1939 section 7): the first `<...>` that holds
/// an `@` and only printable ASCII, brackets included (they are part of what APOP digests).
pub fn apop_timestamp(greeting_text: &str) -> Option<&str> {
    let start = greeting_text.find('<')?;
    let len = greeting_text.get(start..)?.find('>')?;
    let ts = greeting_text.get(start..=start.saturating_add(len))?;
    let inner = ts.get(1..ts.len().saturating_sub(1))?;
    let ok = inner.contains('@') && inner.bytes().all(|b| (0x21..=0x7e).contains(&b));
    ok.then_some(ts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dot::{DotEncoder, WireSize};
    use crate::response::Code;
    use crate::server::{AuthResult, Event, ServerConfig, ServerSession};
    use crate::types::{MessageMeta, Secret};
    use proptest::prelude::*;

    fn m(n: u32) -> MsgNum {
        MsgNum::new(n).unwrap()
    }

    /// What the server does with a login.
    #[derive(Clone, Copy, Debug)]
    enum Login {
        Accept,
        InUse,
    }

    /// A facteur-proto `ServerSession` with an in-memory maildrop, driven as the real server
    /// drives it: lines through a `LineFramer`, messages through a `DotEncoder`.
    struct FakeServer {
        session: ServerSession,
        framer: LineFramer,
        messages: Vec<Vec<u8>>,
        login: Login,
        deletions: Option<Vec<usize>>,
        closed: bool,
    }

    impl FakeServer {
        fn new(config: ServerConfig, messages: Vec<Vec<u8>>, login: Login) -> Self {
            Self {
                session: ServerSession::new(config),
                framer: LineFramer::default(),
                messages,
                login,
                deletions: None,
                closed: false,
            }
        }

        fn greeting(&self) -> Vec<u8> {
            let mut out = Vec::new();
            self.session.greeting(&mut out);
            out
        }

        /// Everything the server answers to `input`.
        fn receive(&mut self, mut input: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            while !input.is_empty() && !self.closed {
                let (n, frame) = self.framer.push(input);
                input = &input[n..];
                let event = match frame {
                    None => break,
                    Some(Frame::TooLong) => self.session.handle_too_long(&mut out),
                    Some(Frame::Line(line)) => self.session.handle_line(line, &mut out),
                };
                self.handle(event, &mut out);
            }
            out
        }

        fn handle(&mut self, mut event: Option<Event>, out: &mut Vec<u8>) {
            while let Some(e) = event.take() {
                event = match e {
                    Event::Authenticate { user, .. } => {
                        let result = match self.login {
                            Login::Accept => AuthResult::Success {
                                user,
                                messages: self.metas().into(),
                                sizes_known: true,
                            },
                            Login::InUse => AuthResult::InUse,
                        };
                        self.session.auth_result(result, out)
                    }
                    Event::Retrieve { index, top_lines } => {
                        let mut enc = DotEncoder::new(top_lines);
                        // Small odd chunks, as a file read might give them.
                        for chunk in self.messages[index].chunks(7) {
                            if enc.encode(chunk, out) {
                                break;
                            }
                        }
                        enc.finish(out);
                        None
                    }
                    Event::Listing => {
                        while !self.session.fill_listing(out, 16) {}
                        None
                    }
                    Event::Update { deletions, .. } => {
                        self.deletions = Some(deletions);
                        self.session.update_result(Ok(()), out)
                    }
                    Event::Close => {
                        self.closed = true;
                        None
                    }
                    other => panic!("unexpected server event {other:?}"),
                };
            }
        }

        fn metas(&self) -> Vec<MessageMeta> {
            self.messages
                .iter()
                .enumerate()
                .map(|(i, msg)| {
                    let mut size = WireSize::new();
                    size.update(msg);
                    MessageMeta {
                        size: size.total(),
                        uid: Uidl::new(format!("uid-{}", i + 1)).unwrap(),
                    }
                })
                .collect()
        }
    }

    /// An event that owns its data, for comparisons.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Ev {
        Greeting(Status, Option<String>),
        Reply(CommandKind, Status, Option<Listing>),
        Listing(Listing),
        Body(Vec<u8>),
        End,
        Continuation(String),
        Error(ClientError),
    }

    /// Drain the client's events into `evs`; consecutive body chunks are joined.
    fn drain(c: &mut ClientSession, evs: &mut Vec<Ev>) {
        loop {
            let ev = match c.next_event() {
                Ok(None) => return,
                Ok(Some(e)) => e,
                Err(e) => {
                    evs.push(Ev::Error(e));
                    return;
                }
            };
            let ev = match ev {
                ClientEvent::Greeting {
                    status,
                    apop_timestamp,
                } => Ev::Greeting(status, apop_timestamp),
                ClientEvent::Reply {
                    command,
                    status,
                    listing,
                } => Ev::Reply(command, status, listing),
                ClientEvent::Listing(l) => Ev::Listing(l),
                ClientEvent::Body(b) => {
                    assert!(!b.is_empty(), "empty body chunk");
                    assert!(b.len() <= BODY_CHUNK);
                    if let Some(Ev::Body(prev)) = evs.last_mut() {
                        prev.extend_from_slice(b);
                        continue;
                    }
                    Ev::Body(b.to_vec())
                }
                ClientEvent::End => Ev::End,
                ClientEvent::Continuation(c) => Ev::Continuation(c),
            };
            evs.push(ev);
        }
    }

    fn feed_all(c: &mut ClientSession, bytes: &[u8]) -> Vec<Ev> {
        let mut evs = Vec::new();
        c.feed(bytes);
        drain(c, &mut evs);
        evs
    }

    /// One round trip: the client sends `cmds` in one write, the server answers them all.
    fn exchange(c: &mut ClientSession, s: &mut FakeServer, cmds: Vec<Command>) -> Vec<Ev> {
        let mut out = Vec::new();
        for cmd in cmds {
            c.send(cmd, &mut out);
        }
        let reply = s.receive(&out);
        feed_all(c, &reply)
    }

    fn ok(text: &str) -> Status {
        Status {
            ok: true,
            code: None,
            text: text.into(),
        }
    }

    fn reply(kind: CommandKind, text: &str) -> Ev {
        Ev::Reply(kind, ok(text), None)
    }

    fn cap(name: &str, params: &[&str]) -> Ev {
        Ev::Listing(Listing::Capability(Capability {
            name: name.into(),
            params: params.iter().map(|p| p.to_string()).collect(),
        }))
    }

    fn pass(p: &str) -> Command {
        Command::Pass(Secret::new(p.as_bytes().to_vec()))
    }

    /// Three messages: LF line ends, dot-started lines, a lone "." line, no final newline.
    fn maildrop() -> Vec<Vec<u8>> {
        vec![
            b"From: a@example.org\nSubject: one\n\nBody one.\n.hidden dot\n..two\n.\nend\n"
                .to_vec(),
            b"From: b@example.org\r\nSubject: two\r\n\r\nline 1\r\nline 2\r\nline 3\r\n".to_vec(),
            b".From: c\n\nno final newline".to_vec(),
        ]
    }

    fn wire_size(msg: &[u8]) -> u64 {
        let mut w = WireSize::new();
        w.update(msg);
        w.total()
    }

    fn apop_config() -> ServerConfig {
        ServerConfig {
            implementation: "facteur-test".into(),
            greeting: Some("ready".into()),
            apop_timestamp: Some("<1896.697170952@dbc.mtview.ca.us>".into()),
            ..ServerConfig::default()
        }
    }

    #[test]
    fn full_session_against_the_server_state_machine() {
        let msgs = maildrop();
        let mut s = FakeServer::new(apop_config(), msgs.clone(), Login::Accept);
        let mut c = ClientSession::new();
        assert!(c.awaiting_greeting());

        assert_eq!(
            feed_all(&mut c, &s.greeting()),
            [Ev::Greeting(
                ok("ready <1896.697170952@dbc.mtview.ca.us>"),
                Some("<1896.697170952@dbc.mtview.ca.us>".into())
            )]
        );
        assert!(c.is_idle());

        assert_eq!(
            exchange(&mut c, &mut s, vec![Command::Capa]),
            [
                reply(CommandKind::Capa, "capability list follows"),
                cap("TOP", &[]),
                cap("UIDL", &[]),
                cap("USER", &[]),
                cap("RESP-CODES", &[]),
                cap("AUTH-RESP-CODE", &[]),
                cap("PIPELINING", &[]),
                cap("UTF8", &["USER"]),
                cap("LANG", &[]),
                cap("IMPLEMENTATION", &["facteur-test"]),
                Ev::End,
            ]
        );

        assert_eq!(
            exchange(&mut c, &mut s, vec![Command::User("mrose".into())]),
            [reply(CommandKind::User, "send PASS")]
        );
        let sizes: Vec<u64> = msgs.iter().map(|msg| wire_size(msg)).collect();
        let total: u64 = sizes.iter().sum();
        assert_eq!(
            exchange(&mut c, &mut s, vec![pass("tanstaaf")]),
            [reply(
                CommandKind::Pass,
                &format!("mrose has 3 messages ({total} octets)")
            )]
        );

        assert_eq!(
            exchange(&mut c, &mut s, vec![Command::Stat]),
            [Ev::Reply(
                CommandKind::Stat,
                ok(&format!("3 {total}")),
                Some(Listing::Drop {
                    count: 3,
                    octets: total
                })
            )]
        );

        let mut want = vec![reply(
            CommandKind::List,
            &format!("3 messages ({total} octets)"),
        )];
        for (i, size) in sizes.iter().enumerate() {
            want.push(Ev::Listing(Listing::Scan {
                msg: m(i as u32 + 1),
                octets: *size,
            }));
        }
        want.push(Ev::End);
        assert_eq!(exchange(&mut c, &mut s, vec![Command::List(None)]), want);

        assert_eq!(
            exchange(&mut c, &mut s, vec![Command::List(Some(m(2)))]),
            [Ev::Reply(
                CommandKind::List,
                ok(&format!("2 {}", sizes[1])),
                Some(Listing::Scan {
                    msg: m(2),
                    octets: sizes[1]
                })
            )]
        );

        let mut want = vec![reply(CommandKind::Uidl, "unique-id listing follows")];
        for i in 1..=3u32 {
            want.push(Ev::Listing(Listing::UniqueId {
                msg: m(i),
                uid: Uidl::new(format!("uid-{i}")).unwrap(),
            }));
        }
        want.push(Ev::End);
        assert_eq!(exchange(&mut c, &mut s, vec![Command::Uidl(None)]), want);
        assert_eq!(
            exchange(&mut c, &mut s, vec![Command::Uidl(Some(m(3)))]),
            [Ev::Reply(
                CommandKind::Uidl,
                ok("3 uid-3"),
                Some(Listing::UniqueId {
                    msg: m(3),
                    uid: Uidl::new("uid-3").unwrap()
                })
            )]
        );

        // RETR: the client gets back the message as stored, LF turned to CRLF, dots intact.
        assert_eq!(
            exchange(&mut c, &mut s, vec![Command::Retr(m(1))]),
            [
                reply(CommandKind::Retr, &format!("{} octets", sizes[0])),
                Ev::Body(
                    b"From: a@example.org\r\nSubject: one\r\n\r\nBody one.\r\n.hidden dot\r\n..two\r\n.\r\nend\r\n"
                        .to_vec()
                ),
                Ev::End,
            ]
        );
        assert_eq!(
            exchange(&mut c, &mut s, vec![Command::Retr(m(3))]),
            [
                reply(CommandKind::Retr, &format!("{} octets", sizes[2])),
                Ev::Body(b".From: c\r\n\r\nno final newline\r\n".to_vec()),
                Ev::End,
            ]
        );

        assert_eq!(
            exchange(&mut c, &mut s, vec![Command::Top(m(2), 1)]),
            [
                reply(CommandKind::Top, "top of message follows"),
                Ev::Body(b"From: b@example.org\r\nSubject: two\r\n\r\nline 1\r\n".to_vec()),
                Ev::End,
            ]
        );
        // TOP n 0 on an empty body section gives the header and the blank line only.
        assert_eq!(
            exchange(&mut c, &mut s, vec![Command::Top(m(3), 0)]),
            [
                reply(CommandKind::Top, "top of message follows"),
                Ev::Body(b".From: c\r\n\r\n".to_vec()),
                Ev::End,
            ]
        );

        assert_eq!(
            exchange(&mut c, &mut s, vec![Command::Dele(m(1))]),
            [reply(CommandKind::Dele, "message 1 deleted")]
        );
        // A -ERR to a multi-line command has no body.
        assert_eq!(
            exchange(&mut c, &mut s, vec![Command::Retr(m(1)), Command::Noop]),
            [
                Ev::Reply(
                    CommandKind::Retr,
                    Status {
                        ok: false,
                        code: None,
                        text: "message 1 already deleted".into()
                    },
                    None
                ),
                reply(CommandKind::Noop, ""),
            ]
        );

        assert_eq!(
            exchange(&mut c, &mut s, vec![Command::Quit]),
            [reply(
                CommandKind::Quit,
                "signing off (1 message deleted, 2 left)"
            )]
        );
        assert_eq!(s.deletions, Some(vec![0]));
        assert!(s.closed);
        assert!(c.is_idle());
        assert_eq!(c.pending(), 0);
    }

    /// The commands of a whole session, every reply in one stream from the server.
    fn scripted_session() -> (Vec<Command>, Vec<u8>) {
        let cmds = vec![
            Command::Capa,
            Command::User("mrose".into()),
            pass("secret"),
            Command::Stat,
            Command::List(None),
            Command::Uidl(None),
            Command::Retr(m(1)),
            Command::Top(m(2), 2),
            Command::Retr(m(3)),
            // A listing right after a body: nothing of the body may leak into it.
            Command::List(None),
            Command::Uidl(Some(m(2))),
            Command::Dele(m(2)),
            Command::Retr(m(2)),
            Command::List(Some(m(9))),
            Command::Quit,
        ];
        let mut s = FakeServer::new(apop_config(), maildrop(), Login::Accept);
        let mut wire = s.greeting();
        let mut client = ClientSession::new();
        let mut out = Vec::new();
        for cmd in cmds.clone() {
            client.send(cmd, &mut out);
        }
        wire.extend(s.receive(&out));
        assert!(s.closed);
        (cmds, wire)
    }

    fn events_for(cmds: &[Command], chunks: &[&[u8]]) -> Vec<Ev> {
        let mut c = ClientSession::new();
        let mut out = Vec::new();
        for cmd in cmds {
            c.send(cmd.clone(), &mut out);
        }
        let mut evs = Vec::new();
        for chunk in chunks {
            c.feed(chunk);
            drain(&mut c, &mut evs);
        }
        assert!(c.is_idle(), "replies left unfinished: {evs:?}");
        evs
    }

    #[test]
    fn pipelined_commands_in_one_write_are_answered_in_order() {
        let (cmds, wire) = scripted_session();
        let evs = events_for(&cmds, &[&wire]);
        let replies: Vec<(CommandKind, bool)> = evs
            .iter()
            .filter_map(|e| match e {
                Ev::Reply(k, s, _) => Some((*k, s.ok)),
                _ => None,
            })
            .collect();
        let want: Vec<(CommandKind, bool)> = cmds
            .iter()
            .map(|c| {
                let failed = matches!(c, Command::Retr(n) if n.get() == 2)
                    || matches!(c, Command::List(Some(_)));
                (CommandKind::of(c), !failed)
            })
            .collect();
        assert_eq!(replies, want);
        assert_eq!(evs.iter().filter(|e| **e == Ev::End).count(), 7);
        assert!(!evs.iter().any(|e| matches!(e, Ev::Error(_))));
    }

    #[test]
    fn every_chunk_size_gives_the_same_events() {
        let (cmds, wire) = scripted_session();
        let whole = events_for(&cmds, &[&wire]);
        for size in 1..=64 {
            let chunks: Vec<&[u8]> = wire.chunks(size).collect();
            assert_eq!(events_for(&cmds, &chunks), whole, "chunk size {size}");
        }
    }

    #[test]
    fn err_with_in_use_code() {
        let mut s = FakeServer::new(ServerConfig::default(), maildrop(), Login::InUse);
        let mut c = ClientSession::new();
        feed_all(&mut c, &s.greeting());
        let evs = exchange(
            &mut c,
            &mut s,
            vec![Command::User("a".into()), pass("b"), Command::Quit],
        );
        assert_eq!(
            evs,
            [
                reply(CommandKind::User, "send PASS"),
                Ev::Reply(
                    CommandKind::Pass,
                    Status {
                        ok: false,
                        code: Some(Code::InUse),
                        text: "maildrop is locked by another session".into()
                    },
                    None
                ),
                reply(CommandKind::Quit, "signing off"),
            ]
        );
    }

    #[test]
    fn greeting_without_timestamp_and_err_greeting() {
        let mut c = ClientSession::new();
        assert_eq!(
            feed_all(&mut c, b"+OK POP3 server ready\r\n"),
            [Ev::Greeting(ok("POP3 server ready"), None)]
        );
        let mut c = ClientSession::new();
        assert_eq!(
            feed_all(&mut c, b"-ERR [SYS/TEMP] too many connections\r\n"),
            [Ev::Greeting(
                Status {
                    ok: false,
                    code: Some(Code::SysTemp),
                    text: "too many connections".into()
                },
                None
            )]
        );
    }

    #[test]
    fn apop_timestamps() {
        assert_eq!(
            apop_timestamp("POP3 server ready <1896.697170952@dbc.mtview.ca.us>"),
            Some("<1896.697170952@dbc.mtview.ca.us>")
        );
        assert_eq!(apop_timestamp("<a@b> and <c@d>"), Some("<a@b>"));
        assert_eq!(apop_timestamp("ready"), None);
        assert_eq!(apop_timestamp("ready <no-at-sign>"), None);
        assert_eq!(apop_timestamp("ready <a @b>"), None);
        assert_eq!(apop_timestamp("ready <@"), None);
        assert_eq!(apop_timestamp("ready <>"), None);
        assert_eq!(apop_timestamp("ready <é@b>"), None);
    }

    #[test]
    fn strict_listings() {
        assert_eq!(parse_drop_listing(b"2 320"), Some((2, 320)));
        assert_eq!(parse_drop_listing(b"2 320 extra words"), Some((2, 320)));
        assert_eq!(parse_drop_listing(b"0 0"), Some((0, 0)));
        for bad in [
            &b""[..],
            b"2",
            b"-2 320",
            b"+2 320",
            b"2 0x10",
            b"4294967296 1",
            b"1 18446744073709551616",
            b"two 320",
        ] {
            assert_eq!(parse_drop_listing(bad), None, "{bad:?}");
        }
        assert_eq!(parse_scan_listing(b"1 120"), Some((m(1), 120)));
        assert_eq!(parse_scan_listing(b"4294967295 1"), Some((m(u32::MAX), 1)));
        for bad in [
            &b"0 120"[..],
            b"4294967297 1",
            b"1",
            b"1 -1",
            b"1 1.5",
            b"a 1",
        ] {
            assert_eq!(parse_scan_listing(bad), None, "{bad:?}");
        }
        assert_eq!(
            parse_unique_id_listing(b"1 whqtswO00WBw418f9t5JxYwZ"),
            Some((m(1), Uidl::new("whqtswO00WBw418f9t5JxYwZ").unwrap()))
        );
        let too_long = format!("1 {}", "x".repeat(71));
        for bad in [&b"1"[..], b"0 abc", b"1 \x01", too_long.as_bytes()] {
            assert_eq!(parse_unique_id_listing(bad), None, "{bad:?}");
        }
        assert_eq!(
            parse_capability(b"sasl PLAIN LOGIN"),
            Some(Capability {
                name: "SASL".into(),
                params: vec!["PLAIN".into(), "LOGIN".into()]
            })
        );
        assert_eq!(parse_capability(b""), None);
        assert_eq!(parse_capability(b"TOP\0"), None);
        assert_eq!(
            parse_mechanism(b"scram-sha-256"),
            Some("SCRAM-SHA-256".into())
        );
        assert_eq!(parse_mechanism(b"PLAIN LOGIN"), None);
        assert_eq!(parse_mechanism(&[b'A'; 21]), None);
    }

    #[test]
    fn malformed_replies_end_the_session() {
        let cases: [(Command, &[u8], &str); 4] = [
            (Command::Stat, b"+OK x 320\r\n", "drop listing"),
            (Command::List(Some(m(1))), b"+OK 1 -5\r\n", "scan listing"),
            (
                Command::List(None),
                b"+OK\r\n4294967296 1\r\n.\r\n",
                "scan listing",
            ),
            (
                Command::Uidl(None),
                b"+OK\r\n1 \x7f\r\n.\r\n",
                "unique-id listing",
            ),
        ];
        for (cmd, wire, what) in cases {
            let mut c = ClientSession::new();
            feed_all(&mut c, b"+OK hi\r\n");
            c.send(cmd, &mut Vec::new());
            let evs = feed_all(&mut c, wire);
            match evs.last() {
                Some(Ev::Error(ClientError::Malformed { what: w, .. })) => assert_eq!(*w, what),
                other => panic!("{other:?}"),
            }
            // The error sticks: the session is over.
            assert!(c.next_event().is_err());
            c.feed(b"+OK\r\n");
            assert!(c.next_event().is_err());
        }
    }

    #[test]
    fn protocol_errors() {
        let mut c = ClientSession::new();
        assert!(matches!(
            feed_all(&mut c, b"HELLO\r\n")[..],
            [Ev::Error(ClientError::NotAStatus(_))]
        ));

        let mut c = ClientSession::new();
        assert_eq!(
            feed_all(&mut c, b"+OK hi\r\n+OK surprise\r\n")[1..],
            [Ev::Error(ClientError::Unsolicited(
                "+OK surprise\r\n".into()
            ))]
        );

        let mut c = ClientSession::new();
        feed_all(&mut c, b"+OK hi\r\n");
        c.send(Command::Stat, &mut Vec::new());
        assert_eq!(
            feed_all(&mut c, b"+ abc\r\n"),
            [Ev::Error(ClientError::UnexpectedContinuation(
                "+ abc".into()
            ))]
        );
    }

    #[test]
    fn long_lines_are_an_error_not_a_bigger_buffer() {
        let mut c = ClientSession::new();
        c.feed(b"+OK hi\r\n");
        assert!(matches!(
            c.next_event(),
            Ok(Some(ClientEvent::Greeting { .. }))
        ));
        c.send(Command::Noop, &mut Vec::new());
        let mut long = b"+OK ".to_vec();
        long.extend(std::iter::repeat_n(b'x', MAX_RESPONSE_LINE - 6));
        long.extend_from_slice(b"\r\n");
        assert_eq!(long.len(), MAX_RESPONSE_LINE);
        let evs = feed_all(&mut c, &long);
        assert!(matches!(evs[..], [Ev::Reply(CommandKind::Noop, _, None)]));

        c.send(Command::Noop, &mut Vec::new());
        for _ in 0..1000 {
            c.feed(&[b'x'; 1000]);
            assert_eq!(c.next_event(), Ok(None));
            assert!(c.input.len() <= 1000);
        }
        c.feed(b"\r\n");
        assert_eq!(c.next_event(), Err(ClientError::LineTooLong));

        let mut c = ClientSession::new();
        feed_all(&mut c, b"+OK hi\r\n");
        c.send(Command::Capa, &mut Vec::new());
        let mut wire = b"+OK\r\n".to_vec();
        wire.extend(std::iter::repeat_n(b'X', 600));
        wire.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(
            feed_all(&mut c, &wire),
            [
                reply(CommandKind::Capa, ""),
                Ev::Error(ClientError::LineTooLong)
            ]
        );
    }

    #[test]
    fn a_big_message_is_streamed_in_bounded_chunks() {
        let mut c = ClientSession::new();
        feed_all(&mut c, b"+OK hi\r\n");
        c.send(Command::Retr(m(1)), &mut Vec::new());
        c.feed(b"+OK 1000000 octets\r\n");
        assert!(matches!(
            c.next_event(),
            Ok(Some(ClientEvent::Reply { .. }))
        ));
        let line = b"..0123456789012345678901234567890123456789012345678901234567890123\r\n";
        let mut got = 0usize;
        let mut chunks = 0;
        for _ in 0..100 {
            let block: Vec<u8> = line
                .iter()
                .copied()
                .cycle()
                .take(line.len() * 150)
                .collect();
            c.feed(&block);
            while let Some(ev) = c.next_event().unwrap() {
                match ev {
                    ClientEvent::Body(b) => {
                        assert!(b.len() <= BODY_CHUNK);
                        assert!(b.starts_with(b".0"));
                        got += b.len();
                        chunks += 1;
                    }
                    other => panic!("{other:?}"),
                }
            }
            assert!(c.scratch.capacity() <= 2 * BODY_CHUNK);
        }
        c.feed(b".\r\n");
        assert_eq!(c.next_event(), Ok(Some(ClientEvent::End)));
        assert_eq!(got, (line.len() - 1) * 150 * 100);
        assert!(chunks >= 100);
        assert!(c.is_idle());
    }

    #[test]
    fn sasl_continuations_belong_to_auth() {
        let cfg = ServerConfig {
            sasl_mechanisms: vec!["PLAIN".into(), "SCRAM-SHA-256".into()].into(),
            ..ServerConfig::default()
        };
        let mut s = FakeServer::new(cfg, Vec::new(), Login::Accept);
        let mut c = ClientSession::new();
        feed_all(&mut c, &s.greeting());
        assert_eq!(
            exchange(
                &mut c,
                &mut s,
                vec![Command::Auth {
                    mechanism: None,
                    initial_response: None
                }]
            ),
            [
                reply(CommandKind::Auth, "SASL mechanisms follow"),
                Ev::Listing(Listing::Mechanism("PLAIN".into())),
                Ev::Listing(Listing::Mechanism("SCRAM-SHA-256".into())),
                Ev::End,
            ]
        );

        // The challenge/response exchange, as a server's SASL layer writes it.
        let mut out = Vec::new();
        c.send(
            Command::Auth {
                mechanism: Some("PLAIN".into()),
                initial_response: None,
            },
            &mut out,
        );
        assert_eq!(out, b"AUTH PLAIN\r\n");
        assert_eq!(
            feed_all(&mut c, b"+ \r\n"),
            [Ev::Continuation(String::new())]
        );
        let mut out = Vec::new();
        c.send_sasl_response(b"AGEAYg==", &mut out).unwrap();
        assert_eq!(out, b"AGEAYg==\r\n");
        assert_eq!(
            c.send_sasl_response(b"x\r\nQUIT", &mut out),
            Err(NotOneLine)
        );
        assert_eq!(
            feed_all(&mut c, b"+ Y2hhbGxlbmdl\r\n"),
            [Ev::Continuation("Y2hhbGxlbmdl".into())]
        );
        assert_eq!(
            feed_all(&mut c, b"+OK logged in\r\n"),
            [reply(CommandKind::Auth, "logged in")]
        );
        assert!(c.is_idle());
    }

    #[test]
    fn bytes_after_the_stls_ok_are_dropped() {
        let mut c = ClientSession::new();
        feed_all(&mut c, b"+OK hi\r\n");
        c.send(Command::Stls, &mut Vec::new());
        assert_eq!(
            feed_all(&mut c, b"+OK begin TLS\r\n+OK injected\r\n"),
            [reply(CommandKind::Stls, "begin TLS")]
        );
        // Under TLS now: the session goes on with the next command.
        c.send(Command::Capa, &mut Vec::new());
        assert_eq!(
            feed_all(&mut c, b"+OK\r\nTOP\r\n.\r\n"),
            [reply(CommandKind::Capa, ""), cap("TOP", &[]), Ev::End]
        );
    }

    #[test]
    fn listing_lines_are_unstuffed() {
        let mut c = ClientSession::new();
        feed_all(&mut c, b"+OK hi\r\n");
        c.send(Command::Capa, &mut Vec::new());
        assert_eq!(
            feed_all(&mut c, b"+OK\r\n..X-DOT\r\n.\r\n"),
            [reply(CommandKind::Capa, ""), cap(".X-DOT", &[]), Ev::End]
        );
    }

    fn split_at_points(bytes: &[u8], points: &[usize]) -> Vec<Vec<u8>> {
        let mut cuts: Vec<usize> = points.iter().map(|p| p % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut start = 0;
        for cut in cuts {
            chunks.push(bytes[start..cut].to_vec());
            start = cut;
        }
        chunks.push(bytes[start..].to_vec());
        chunks
    }

    fn any_command() -> impl Strategy<Value = Command> {
        prop_oneof![
            Just(Command::Capa),
            Just(Command::Stat),
            Just(Command::List(None)),
            (1u32..4).prop_map(|n| Command::List(Some(m(n)))),
            Just(Command::Uidl(None)),
            (1u32..4).prop_map(|n| Command::Uidl(Some(m(n)))),
            (1u32..4).prop_map(|n| Command::Retr(m(n))),
            (1u32..4, 0u64..3).prop_map(|(n, k)| Command::Top(m(n), k)),
            (1u32..4).prop_map(|n| Command::Dele(m(n))),
            Just(Command::Noop),
            Just(Command::Rset),
            Just(Command::Auth {
                mechanism: None,
                initial_response: None
            }),
            Just(Command::Auth {
                mechanism: Some("PLAIN".into()),
                initial_response: None
            }),
            Just(Command::Stls),
            Just(Command::Quit),
        ]
    }

    /// Bytes a server might send, broken or not: fragments of real replies mixed with noise.
    fn server_noise() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                Just(b"+OK ".to_vec()),
                Just(b"-ERR [IN-USE] x".to_vec()),
                Just(b"\r\n".to_vec()),
                Just(b"\n".to_vec()),
                Just(b".".to_vec()),
                Just(b".\r\n".to_vec()),
                Just(b"1 120".to_vec()),
                Just(b"+ ".to_vec()),
                Just(b"4294967296".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..8),
                Just(vec![b'x'; 300]),
            ],
            0..60,
        )
        .prop_map(|parts| parts.concat())
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_events(points in proptest::collection::vec(any::<usize>(), 0..40)) {
            let (cmds, wire) = scripted_session();
            let whole = events_for(&cmds, &[&wire]);
            let chunks = split_at_points(&wire, &points);
            let chunks: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            prop_assert_eq!(events_for(&cmds, &chunks), whole);
        }

        #[test]
        fn random_pipelines_against_the_server(
            cmds in proptest::collection::vec(any_command(), 0..20),
            points in proptest::collection::vec(any::<usize>(), 0..10),
        ) {
            // Log in, then whatever the strategy picked; every reply the server sends is read
            // as exactly one reply, and a multi-line one always ends.
            let mut s = FakeServer::new(ServerConfig::default(), maildrop(), Login::Accept);
            let mut c = ClientSession::new();
            let mut out = Vec::new();
            let mut all = vec![Command::User("u".into()), pass("p")];
            all.extend(cmds.into_iter().take_while(|c| !matches!(c, Command::Stls | Command::Quit)));
            for cmd in all.clone() {
                c.send(cmd, &mut out);
            }
            let mut wire = s.greeting();
            wire.extend(s.receive(&out));
            let mut evs = Vec::new();
            for chunk in split_at_points(&wire, &points) {
                c.feed(&chunk);
                drain(&mut c, &mut evs);
            }
            prop_assert!(!evs.iter().any(|e| matches!(e, Ev::Error(_))), "{:?}", evs);
            let kinds: Vec<CommandKind> = evs.iter().filter_map(|e| match e {
                Ev::Reply(k, ..) => Some(*k),
                _ => None,
            }).collect();
            let want: Vec<CommandKind> = all.iter().map(CommandKind::of).collect();
            prop_assert_eq!(kinds, want);
            prop_assert!(c.is_idle());
        }

        #[test]
        fn malformed_server_input_never_panics(
            cmds in proptest::collection::vec(any_command(), 0..8),
            wire in server_noise(),
            points in proptest::collection::vec(any::<usize>(), 0..10),
        ) {
            let mut c = ClientSession::new();
            let mut out = Vec::new();
            for cmd in cmds {
                c.send(cmd, &mut out);
            }
            let mut failed = None;
            for chunk in split_at_points(&wire, &points) {
                c.feed(&chunk);
                loop {
                    match c.next_event() {
                        Ok(Some(ClientEvent::Body(b))) => prop_assert!(b.len() <= BODY_CHUNK),
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            prop_assert_eq!(c.unread(), 0);
                            break;
                        }
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                prop_assert!(c.framer.max_len() == MAX_RESPONSE_LINE);
                prop_assert!(c.scratch.len() <= BODY_CHUNK.max(LISTING_CHUNK) * 2);
                if let Some(e) = &failed {
                    prop_assert_eq!(c.next_event(), Err(e.clone()));
                }
            }
        }
    }
}
