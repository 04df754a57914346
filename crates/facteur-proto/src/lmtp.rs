//! LMTP (RFC 2033) on the server side: the command parser, the replies with their enhanced
//! status codes (RFC 3463, RFC 2034), the body decoder of DATA, and the session's state machine.
//!
//! LMTP is SMTP (RFC 5321) for the last hop: an MTA hands a message to the delivery agent, which
//! answers DATA with one reply per accepted recipient, each sent only once that recipient's copy
//! is durable. Offered extensions: PIPELINING (RFC 2920), ENHANCEDSTATUSCODES (RFC 2034), 8BITMIME
//! (RFC 6152) and SIZE (RFC 1870).
//!
//! Like the POP3 modules, no I/O here: the driver frames lines with
//! [`LineFramer`](crate::line::LineFramer) capped at [`MAX_LMTP_LINE`], hands each frame to
//! [`LmtpSession::command`], and does what the [`Step`] says: send a reply, look a recipient up
//! (then [`LmtpSession::recipient_checked`]), or receive a body through
//! [`LmtpSession::data`], deliver it, and answer each recipient with
//! [`LmtpSession::delivered`].
//!
//! What this module must never do: hold a body in memory (the decoder streams it in the caller's
//! buffer, and drops what exceeds the size cap), keep more recipients than the cap, accept a line
//! longer than the cap, or panic on any input.

use std::fmt;

use crate::line::Frame;

/// The longest command line, CRLF included (RFC 5321 section 4.5.3.1.4: 512 octets). The SIZE
/// and BODY parameters fit in it with a path of the longest size.
pub const MAX_LMTP_LINE: usize = 512;

/// The longest path, angle brackets included (RFC 5321 section 4.5.3.1.3).
pub const MAX_PATH: usize = 256;

/// The longest local part (RFC 5321 section 4.5.3.1.1).
pub const MAX_LOCAL_PART: usize = 64;

/// An enhanced status code (RFC 3463): class, subject, detail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enhanced(pub u8, pub u16, pub u16);

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// One reply: a three-digit code, an enhanced status code (every reply but the greeting and
/// LHLO's carries one, RFC 2034), and one or more lines of text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub status: Option<Enhanced>,
    pub lines: Vec<String>,
}

impl Reply {
    /// A one-line reply with an enhanced status code.
    pub fn new(code: u16, status: Enhanced, text: impl Into<String>) -> Self {
        Self {
            code,
            status: Some(status),
            lines: vec![text.into()],
        }
    }

    /// True for a 2xx or 3xx reply.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// Appends the reply to `out`, each line `code-text` but the last, `code text`. A CR, LF
    /// or other control character in the text becomes a space: a reply never splits.
    pub fn encode(&self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        let code = self.code.clamp(200, 599);
        let count = self.lines.len().max(1);
        for i in 0..count {
            let text = self.lines.get(i).map(String::as_str).unwrap_or_default();
            let sep = if i + 1 == count { ' ' } else { '-' };
            let start = out.len();
            // Writing into a Vec cannot fail.
            let _ = write!(out, "{code}{sep}");
            if let Some(s) = self.status {
                let _ = write!(out, "{s} ");
            }
            out.extend_from_slice(text.as_bytes());
            for b in out.iter_mut().skip(start) {
                if b.is_ascii_control() {
                    *b = b' ';
                }
            }
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// A mailbox of a path: `local@domain`, or a bare `postmaster` (RFC 5321 section 4.1.1.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    /// The local part, unquoted: `"a b"@x` is `a b`. Printable ASCII only.
    pub local: String,
    /// The domain as sent (letters, digits, '-', '.'; or an address literal in brackets);
    /// `None` for `<postmaster>`.
    pub domain: Option<String>,
}

impl fmt::Display for Address {
    /// The address as it goes into a header: the local part quoted when it needs to be.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_dot_string(&self.local) {
            f.write_str(&self.local)?;
        } else {
            f.write_str("\"")?;
            for c in self.local.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            f.write_str("\"")?;
        }
        match &self.domain {
            Some(d) => write!(f, "@{d}"),
            None => Ok(()),
        }
    }
}

/// The BODY parameter of MAIL (RFC 6152).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    SevenBit,
    EightBitMime,
}

/// A command of LMTP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// LHLO and the client's name.
    Lhlo(String),
    /// MAIL FROM: the reverse path (`None`: the null path `<>`, a bounce), the declared SIZE.
    Mail {
        from: Option<Address>,
        size: Option<u64>,
        body: Body,
    },
    /// RCPT TO.
    Rcpt(Address),
    Data,
    Rset,
    Noop,
    Quit,
    /// VRFY: answered without saying whether the user exists.
    Vrfy,
    /// HELO or EHLO: SMTP's greetings, which an LMTP server must refuse (RFC 2033 section 4.1).
    Helo,
}

/// Why a command line was refused; each maps to one reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("unknown command")]
    Unknown,
    #[error("syntax error: {0}")]
    Syntax(&'static str),
    #[error("unknown or malformed parameter: {0}")]
    Parameter(&'static str),
}

impl CommandError {
    fn reply(self) -> Reply {
        match self {
            Self::Unknown => Reply::new(500, Enhanced(5, 5, 2), "unknown command"),
            Self::Syntax(what) => Reply::new(501, Enhanced(5, 5, 4), format!("syntax: {what}")),
            Self::Parameter(what) => Reply::new(555, Enhanced(5, 5, 4), what),
        }
    }
}

/// Parses one command line (without its line end). Strict where it matters (the paths and
/// parameters, which name mailboxes and limits), lenient where MTAs differ: verbs in any case,
/// spaces after `FROM:` and `TO:` allowed.
pub fn parse_command(line: &[u8]) -> Result<Command, CommandError> {
    let line = std::str::from_utf8(line).map_err(|_| CommandError::Syntax("not ASCII"))?;
    if !line
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) || b == b'\t')
    {
        return Err(CommandError::Syntax("control or non-ASCII character"));
    }
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let no_args = |c: Command| {
        if rest.trim().is_empty() {
            Ok(c)
        } else {
            Err(CommandError::Syntax("this command takes no argument"))
        }
    };
    match verb.to_ascii_uppercase().as_str() {
        "LHLO" => {
            let name = rest.trim();
            if name.is_empty() || name.contains(' ') {
                return Err(CommandError::Syntax("LHLO needs one domain name"));
            }
            Ok(Command::Lhlo(name.to_owned()))
        }
        "MAIL" => parse_mail(rest),
        "RCPT" => parse_rcpt(rest),
        "DATA" => no_args(Command::Data),
        "RSET" => no_args(Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_args(Command::Quit),
        "VRFY" => Ok(Command::Vrfy),
        "HELO" | "EHLO" => Ok(Command::Helo),
        _ => Err(CommandError::Unknown),
    }
}

/// `rest` starts with `keyword` (any case), then optional spaces: what follows.
fn strip_keyword<'a>(rest: &'a str, keyword: &str) -> Option<&'a str> {
    let head = rest.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword)
        .then(|| rest.get(keyword.len()..).unwrap_or_default().trim_start())
}

/// The path in angle brackets at the start of `s`, and what follows it.
fn split_path(s: &str) -> Result<(&str, &str), CommandError> {
    if !s.starts_with('<') {
        return Err(CommandError::Syntax("the path must be in angle brackets"));
    }
    // A '>' inside a quoted local part does not end the path.
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => {
                if i + 1 > MAX_PATH {
                    return Err(CommandError::Syntax("path too long"));
                }
                return Ok((&s[1..i], &s[i + 1..]));
            }
            _ => {}
        }
    }
    Err(CommandError::Syntax("no closing angle bracket"))
}

fn parse_mail(rest: &str) -> Result<Command, CommandError> {
    let rest = strip_keyword(rest, "FROM:").ok_or(CommandError::Syntax("MAIL FROM:<path>"))?;
    let (path, params) = split_path(rest)?;
    let from = if path.is_empty() {
        None
    } else {
        Some(parse_mailbox(path, false)?)
    };
    let (mut size, mut body) = (None, None);
    for param in params.split(' ').filter(|p| !p.is_empty()) {
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param, None),
        };
        if key.eq_ignore_ascii_case("SIZE") {
            let v = value.ok_or(CommandError::Parameter("SIZE needs a value"))?;
            if size.is_some() {
                return Err(CommandError::Parameter("SIZE given twice"));
            }
            // RFC 1870: 1*20DIGIT; strict, so "+5" or " 5" are refused rather than guessed.
            if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(CommandError::Parameter("SIZE must be a number"));
            }
            // Twenty digits may exceed u64: such a size is too large anyway.
            size = Some(v.parse::<u64>().unwrap_or(u64::MAX));
        } else if key.eq_ignore_ascii_case("BODY") {
            if body.is_some() {
                return Err(CommandError::Parameter("BODY given twice"));
            }
            body = Some(match value {
                Some(v) if v.eq_ignore_ascii_case("7BIT") => Body::SevenBit,
                Some(v) if v.eq_ignore_ascii_case("8BITMIME") => Body::EightBitMime,
                _ => return Err(CommandError::Parameter("BODY must be 7BIT or 8BITMIME")),
            });
        } else {
            return Err(CommandError::Parameter("unknown MAIL parameter"));
        }
    }
    Ok(Command::Mail {
        from,
        size,
        body: body.unwrap_or(Body::SevenBit),
    })
}

fn parse_rcpt(rest: &str) -> Result<Command, CommandError> {
    let rest = strip_keyword(rest, "TO:").ok_or(CommandError::Syntax("RCPT TO:<path>"))?;
    let (path, params) = split_path(rest)?;
    if !params.trim().is_empty() {
        return Err(CommandError::Parameter("RCPT takes no parameter here"));
    }
    if path.is_empty() {
        return Err(CommandError::Syntax("empty recipient"));
    }
    Ok(Command::Rcpt(parse_mailbox(path, true)?))
}

/// RFC 5322 atext, the characters of an unquoted local part besides '.'.
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

/// A dot-string: atoms of atext separated by single dots.
fn is_dot_string(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|a| !a.is_empty() && a.bytes().all(is_atext))
}

fn is_domain(d: &str) -> bool {
    if let Some(inner) = d.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        return !inner.is_empty()
            && inner
                .bytes()
                .all(|b| (0x21..0x7f).contains(&b) && !matches!(b, b'[' | b']' | b'\\'));
    }
    !d.is_empty()
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A mailbox inside a path's brackets. An obsolete source route (`@a,@b:`) is dropped, as RFC
/// 5321 section 4.1.1.3 says servers must. `rcpt`: a bare `postmaster` is allowed.
fn parse_mailbox(path: &str, rcpt: bool) -> Result<Address, CommandError> {
    let path = if path.starts_with('@') {
        path.split_once(':')
            .map(|(_, m)| m)
            .ok_or(CommandError::Syntax("malformed source route"))?
    } else {
        path
    };
    let (local, domain) = if let Some(quoted) = path.strip_prefix('"') {
        let mut local = String::new();
        let mut chars = quoted.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(CommandError::Syntax("unterminated quoted local part")),
                Some((_, '\\')) => match chars.next() {
                    Some((_, c)) => local.push(c),
                    None => return Err(CommandError::Syntax("unterminated quoted local part")),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => local.push(c),
            }
        };
        let after = &quoted[end + 1..];
        if after.is_empty() {
            (local, None)
        } else {
            let domain = after
                .strip_prefix('@')
                .ok_or(CommandError::Syntax("text after the quoted local part"))?;
            (local, Some(domain))
        }
    } else {
        match path.rsplit_once('@') {
            Some((l, d)) => {
                if !is_dot_string(l) {
                    return Err(CommandError::Syntax("malformed local part"));
                }
                (l.to_owned(), Some(d))
            }
            None => (path.to_owned(), None),
        }
    };
    if local.is_empty() || local.len() > MAX_LOCAL_PART {
        return Err(CommandError::Syntax("local part empty or too long"));
    }
    match domain {
        Some(d) if is_domain(d) => Ok(Address {
            local,
            domain: Some(d.to_owned()),
        }),
        Some(_) => Err(CommandError::Syntax("malformed domain")),
        None if rcpt && local.eq_ignore_ascii_case("postmaster") => Ok(Address {
            local,
            domain: None,
        }),
        None => Err(CommandError::Syntax("the address needs a domain")),
    }
}

/// How the body of DATA ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataEnd {
    /// The whole body was given out; `size` octets as received, less the stuffing.
    Complete { size: u64 },
    /// The body went past the size cap: what came after the cap was dropped, and the message
    /// must be refused.
    TooBig,
}

/// Where the body decoder is within the current line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Line {
    /// After a CRLF (or at the start of the body): a '.' here is stuffing or the terminator.
    Start,
    /// Inside a line.
    Inside,
    /// Inside a line, right after a CR: a LF now ends the line.
    Cr,
    /// The line began with '.'.
    Dot,
    /// The line is ".\r" so far: a LF now ends the body.
    DotCr,
    /// The terminating line was read.
    Done,
}

/// Decodes the body of DATA as it streams in: removes the stuffing dots (RFC 5321 section
/// 4.5.2), finds the terminating line, turns CRLF into LF (the Maildir way), and stops giving
/// out octets past the cap while still reading to the end.
///
/// Strict about line ends, against SMTP smuggling: only CRLF ends a line, so only
/// `CRLF . CRLF` ends the body. A bare LF or CR is content (stored as it is), and a '.' after
/// it is neither stuffing nor a terminator. A peer that meant `LF . LF` as the end sees its
/// next commands taken as body, and the transaction times out; no second message can be
/// slipped in behind one the MTA saw as whole.
#[derive(Debug, Clone)]
pub struct DataDecoder {
    line: Line,
    max_size: u64,
    /// Octets of the body as received (CRLF counted as two), less the stuffing.
    size: u64,
}

impl DataDecoder {
    /// A decoder for a body of at most `max_size` octets (as received, less the stuffing).
    pub fn new(max_size: u64) -> Self {
        Self {
            line: Line::Start,
            max_size,
            size: 0,
        }
    }

    /// Octets of the body received so far (CRLF counted as two, stuffing not counted).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Gives out `bytes` (which stand for `counted` octets of the body) unless the cap is
    /// passed.
    fn emit(&mut self, bytes: &[u8], counted: usize, out: &mut Vec<u8>) {
        let before = self.size;
        self.size = self
            .size
            .saturating_add(u64::try_from(counted).unwrap_or(u64::MAX));
        if self.size <= self.max_size {
            out.extend_from_slice(bytes);
        } else if before < self.max_size {
            // The cap falls inside these octets: give out what fits, so that `out` never holds
            // more than the cap (the message is refused anyway).
            let room = usize::try_from(self.max_size - before).unwrap_or(usize::MAX);
            out.extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or_default());
        }
    }

    /// Decodes `input`, appending the body's octets to `out`. Returns (octets consumed, the end
    /// once the terminating line is read). Never consumes past the terminator, so that what
    /// follows (a pipelined command) stays with the caller. `out` grows by at most
    /// `input.len() + 1` octets per call (a CR held back at the end of the previous call).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, Option<DataEnd>) {
        let mut i = 0;
        while self.line != Line::Done {
            let Some(rest) = input.get(i..).filter(|r| !r.is_empty()) else {
                break;
            };
            if self.line == Line::Inside {
                // Most of a body is here: copy up to the next CR in one go.
                let n = memchr::memchr(b'\r', rest).unwrap_or(rest.len());
                self.emit(rest.get(..n).unwrap_or_default(), n, out);
                i += n;
                if n < rest.len() {
                    self.line = Line::Cr;
                    i += 1;
                }
                continue;
            }
            let Some(&b) = rest.first() else { break };
            i += 1;
            self.line = match (self.line, b) {
                (Line::Start, b'.') => Line::Dot,
                (Line::Start, b'\r') => Line::Cr,
                (Line::Dot, b'\r') => Line::DotCr,
                (Line::DotCr, b'\n') => Line::Done,
                (Line::Cr, b'\n') => {
                    self.emit(b"\n", 2, out);
                    Line::Start
                }
                // A CR not followed by LF is content; the octet after it is looked at again.
                (Line::Cr | Line::DotCr, _) => {
                    self.emit(b"\r", 1, out);
                    i -= 1;
                    Line::Inside
                }
                // The first octet of a line (a stuffing dot dropped before it).
                (_, _) => {
                    self.emit(&[b], 1, out);
                    Line::Inside
                }
            };
        }
        if self.line != Line::Done {
            return (i, None);
        }
        if self.size > self.max_size {
            return (i, Some(DataEnd::TooBig));
        }
        (i, Some(DataEnd::Complete { size: self.size }))
    }
}

/// What the server's policy says about one recipient, once looked up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A user of this server: accepted.
    Accepted,
    /// No such user: `550 5.1.1`.
    Unknown,
    /// The address's domain is not one this server takes mail for: `550 5.1.2`.
    OtherDomain,
    /// The lookup failed (the user database is down): `451 4.3.0`, try again later.
    TempFail,
}

/// How the delivery to one recipient went, as the driver tells [`LmtpSession::delivered`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Durable in the maildrop: `250 2.0.0`.
    Stored,
    /// A failure that may pass (disk full, I/O error, database down): `451 4.3.0`.
    TempFail,
    /// The user's maildrop can never be written (a name the template refuses): `550 5.1.1`.
    NoMailbox,
    /// A lasting server-side failure (permissions, configuration): `554 5.3.0`; the MTA bounces.
    PermFail,
}

/// Settings of an LMTP session.
#[derive(Clone, Debug)]
pub struct LmtpConfig {
    /// The server's name in the greeting and the LHLO reply.
    pub hostname: String,
    /// The largest body accepted, in octets (SIZE of LHLO, and the cap of DATA).
    pub max_message_size: u64,
    /// Recipients accepted per transaction; more get `452 4.5.3`.
    pub max_recipients: usize,
    /// Bad commands before the session is closed with `421`.
    pub max_bad_commands: u32,
}

/// Where the session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Greeting sent, waiting for LHLO.
    Greeted,
    /// LHLO done, no transaction.
    Ready,
    /// MAIL accepted; RCPT commands being taken.
    Transaction,
    /// Looking a recipient up: the driver calls [`LmtpSession::recipient_checked`].
    CheckingRecipient,
    /// DATA accepted (354 sent): body octets go to [`LmtpSession::data`].
    Data,
    /// The body was read; the driver delivers and calls [`LmtpSession::delivered`] once per
    /// recipient.
    Delivering,
    /// QUIT, or too many errors: nothing more is read.
    Closed,
}

/// What the driver does after a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this reply and read the next command.
    Reply(Reply),
    /// Send this reply and close the connection.
    Close(Reply),
    /// Look this recipient up, then call [`LmtpSession::recipient_checked`].
    CheckRecipient(Address),
    /// Send this reply (354) and feed the body to [`LmtpSession::data`].
    ReceiveData(Reply),
}

/// What [`LmtpSession::data`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataProgress {
    /// More body to come.
    More,
    /// The body is complete: deliver what was given out to each of
    /// [`LmtpSession::recipients`], then answer each with [`LmtpSession::delivered`].
    Deliver { size: u64 },
    /// The body was too large: send these replies (one per recipient); nothing is delivered.
    Refused,
}

/// The server side of one LMTP connection.
#[derive(Debug)]
pub struct LmtpSession {
    config: LmtpConfig,
    state: State,
    /// The reverse path of the transaction; `Some(None)` is the null path.
    sender: Option<Option<Address>>,
    recipients: Vec<Address>,
    /// The recipient being looked up.
    pending: Option<Address>,
    data: Option<DataDecoder>,
    bad_commands: u32,
    /// Replies of DATA answered so far.
    answered: usize,
}

impl LmtpSession {
    pub fn new(config: LmtpConfig) -> Self {
        Self {
            config,
            state: State::Greeted,
            sender: None,
            recipients: Vec::new(),
            pending: None,
            data: None,
            bad_commands: 0,
            answered: 0,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The greeting (RFC 2033 section 4: `220`, the server's name, LMTP).
    pub fn greeting(&self) -> Reply {
        Reply {
            code: 220,
            status: None,
            lines: vec![format!("{} LMTP facteur ready", self.config.hostname)],
        }
    }

    /// The reverse path of the transaction (`None`: the null path, or no transaction).
    pub fn sender(&self) -> Option<&Address> {
        self.sender.as_ref().and_then(Option::as_ref)
    }

    /// The recipients accepted in this transaction, in order; DATA answers them in this order.
    pub fn recipients(&self) -> &[Address] {
        &self.recipients
    }

    fn reset(&mut self) {
        self.sender = None;
        self.recipients.clear();
        self.pending = None;
        self.data = None;
        self.answered = 0;
    }

    /// Counts a bad command: its reply, or `421` and the end once there were too many.
    fn bad(&mut self, reply: Reply) -> Step {
        self.bad_commands = self.bad_commands.saturating_add(1);
        if self.bad_commands >= self.config.max_bad_commands {
            self.state = State::Closed;
            return Step::Close(Reply::new(
                421,
                Enhanced(4, 7, 0),
                "too many bad commands, closing",
            ));
        }
        Step::Reply(reply)
    }

    fn sequence(&mut self, text: &'static str) -> Step {
        self.bad(Reply::new(503, Enhanced(5, 5, 1), text))
    }

    /// Handles one command line from the framer. Outside the states that read commands
    /// (while a recipient is looked up, or a body read or delivered) it answers a bad sequence:
    /// the driver never calls it then.
    pub fn command(&mut self, frame: Frame<'_>) -> Step {
        let line = match frame {
            Frame::Line(l) => l,
            Frame::TooLong => {
                return self.bad(Reply::new(500, Enhanced(5, 5, 6), "line too long"));
            }
        };
        match self.state {
            State::Greeted | State::Ready | State::Transaction => {}
            State::Closed => {
                return Step::Close(Reply::new(421, Enhanced(4, 7, 0), "closing"));
            }
            State::CheckingRecipient | State::Data | State::Delivering => {
                return self.sequence("a command while the previous one is not done");
            }
        }
        let command = match parse_command(line) {
            Ok(c) => c,
            Err(e) => return self.bad(e.reply()),
        };
        match command {
            Command::Quit => {
                self.state = State::Closed;
                Step::Close(Reply::new(
                    221,
                    Enhanced(2, 0, 0),
                    format!("{} closing", self.config.hostname),
                ))
            }
            Command::Noop => Step::Reply(Reply::new(250, Enhanced(2, 0, 0), "OK")),
            Command::Rset => {
                self.reset();
                if self.state == State::Transaction {
                    self.state = State::Ready;
                }
                Step::Reply(Reply::new(250, Enhanced(2, 0, 0), "OK"))
            }
            Command::Vrfy => Step::Reply(Reply::new(
                252,
                Enhanced(2, 5, 0),
                "cannot verify, but will accept the message and attempt delivery",
            )),
            Command::Helo => self.bad(Reply::new(
                500,
                Enhanced(5, 5, 1),
                "this is LMTP: use LHLO (RFC 2033)",
            )),
            Command::Lhlo(_) => {
                self.reset();
                self.state = State::Ready;
                Step::Reply(Reply {
                    code: 250,
                    status: None,
                    lines: vec![
                        self.config.hostname.clone(),
                        "PIPELINING".into(),
                        "ENHANCEDSTATUSCODES".into(),
                        "8BITMIME".into(),
                        format!("SIZE {}", self.config.max_message_size),
                    ],
                })
            }
            Command::Mail { from, size, .. } => match self.state {
                State::Greeted => self.sequence("send LHLO first"),
                State::Transaction => self.sequence("nested MAIL command"),
                _ if size.is_some_and(|s| s > self.config.max_message_size) => {
                    Step::Reply(Reply::new(
                        552,
                        Enhanced(5, 3, 4),
                        format!(
                            "message too large: at most {} octets",
                            self.config.max_message_size
                        ),
                    ))
                }
                _ => {
                    self.reset();
                    self.sender = Some(from);
                    self.state = State::Transaction;
                    Step::Reply(Reply::new(250, Enhanced(2, 1, 0), "sender OK"))
                }
            },
            Command::Rcpt(address) => {
                if self.state != State::Transaction {
                    return self.sequence("need MAIL before RCPT");
                }
                if self.recipients.len() >= self.config.max_recipients {
                    return Step::Reply(Reply::new(452, Enhanced(4, 5, 3), "too many recipients"));
                }
                self.pending = Some(address.clone());
                self.state = State::CheckingRecipient;
                Step::CheckRecipient(address)
            }
            Command::Data => {
                if self.state != State::Transaction {
                    return self.sequence("need MAIL before DATA");
                }
                if self.recipients.is_empty() {
                    return self.sequence("no valid recipients");
                }
                self.data = Some(DataDecoder::new(self.config.max_message_size));
                self.state = State::Data;
                Step::ReceiveData(Reply::new(
                    354,
                    Enhanced(2, 0, 0),
                    "start mail input; end with <CRLF>.<CRLF>",
                ))
            }
        }
    }

    /// The verdict on the recipient of [`Step::CheckRecipient`]: the reply to its RCPT.
    pub fn recipient_checked(&mut self, verdict: Verdict) -> Reply {
        let Some(address) = self
            .pending
            .take()
            .filter(|_| self.state == State::CheckingRecipient)
        else {
            return Reply::new(503, Enhanced(5, 5, 1), "no recipient is being checked");
        };
        self.state = State::Transaction;
        match verdict {
            Verdict::Accepted => {
                self.recipients.push(address);
                Reply::new(250, Enhanced(2, 1, 5), "recipient OK")
            }
            Verdict::Unknown => Reply::new(550, Enhanced(5, 1, 1), "no such user here"),
            Verdict::OtherDomain => Reply::new(
                550,
                Enhanced(5, 1, 2),
                "this server does not take mail for that domain",
            ),
            Verdict::TempFail => Reply::new(
                451,
                Enhanced(4, 3, 0),
                "cannot check the recipient now, try again later",
            ),
        }
    }

    /// Feeds body octets (after the 354): the decoded body goes to `out` (at most
    /// `input.len() + 1` octets per call, nothing past the size cap). Returns the octets consumed
    /// (never past the terminating line) and the progress; on [`DataProgress::Refused`] the
    /// replies to send are in `replies`, one per recipient, and the session is ready for the
    /// next transaction.
    pub fn data(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        replies: &mut Vec<Reply>,
    ) -> (usize, DataProgress) {
        let Some(decoder) = self.data.as_mut().filter(|_| self.state == State::Data) else {
            return (0, DataProgress::More);
        };
        let (consumed, end) = decoder.feed(input, out);
        match end {
            None => (consumed, DataProgress::More),
            Some(DataEnd::Complete { size }) => {
                self.data = None;
                self.state = State::Delivering;
                self.answered = 0;
                (consumed, DataProgress::Deliver { size })
            }
            Some(DataEnd::TooBig) => {
                let text = format!(
                    "message too large: at most {} octets",
                    self.config.max_message_size
                );
                replies.extend(
                    self.recipients
                        .iter()
                        .map(|_| Reply::new(552, Enhanced(5, 3, 4), text.clone())),
                );
                self.reset();
                self.state = State::Ready;
                (consumed, DataProgress::Refused)
            }
        }
    }

    /// The reply for the next recipient (in the order of [`LmtpSession::recipients`]), once its
    /// copy is durable or has failed. After the last one the session is ready for the next
    /// transaction.
    pub fn delivered(&mut self, outcome: Delivery) -> Reply {
        if self.state != State::Delivering {
            return Reply::new(503, Enhanced(5, 5, 1), "no delivery in progress");
        }
        let who = self
            .recipients
            .get(self.answered)
            .map(ToString::to_string)
            .unwrap_or_default();
        self.answered = self.answered.saturating_add(1);
        if self.answered >= self.recipients.len() {
            self.reset();
            self.state = State::Ready;
        }
        match outcome {
            Delivery::Stored => Reply::new(250, Enhanced(2, 0, 0), format!("<{who}> delivered")),
            Delivery::TempFail => Reply::new(
                451,
                Enhanced(4, 3, 0),
                format!("<{who}> temporary failure, try again later"),
            ),
            Delivery::NoMailbox => Reply::new(
                550,
                Enhanced(5, 1, 1),
                format!("<{who}> has no usable mailbox"),
            ),
            Delivery::PermFail => Reply::new(
                554,
                Enhanced(5, 3, 0),
                format!("<{who}> cannot be delivered to"),
            ),
        }
    }
}

#[cfg(test)]
mod tests;
