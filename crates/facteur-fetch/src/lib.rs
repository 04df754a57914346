//! # facteur-fetch: the client side of POP3, and `facteur fetch`, the fetcher built on it
//!
//! Downloads mail from any POP3 server into a Maildir, an mbox file or an MDA, so that nothing
//! is deleted on the server before it is durable here. The load generator (facteur-bench) drives
//! servers with the same connection code.
//!
//! # Layout
//! - this file: [`Connection`], the async connection driver: connect over TCP (or on a stream
//!   the caller opened, with [`ConnectOptions`]: the load generator's way), TLS from the
//!   first byte (POP3S) or after STLS, or in clear when that was explicitly allowed; the
//!   greeting, CAPA, commands and their replies (several in flight with PIPELINING), listings,
//!   and message bodies streamed to a sink chunk by chunk (or skipped). Every byte the server
//!   sends goes through [`facteur_proto::client::ClientSession`]: POP3 is parsed in one place
//!   only.
//! - [`auth`]: client-side logins: SCRAM-SHA-256 (with the server's signature checked),
//!   CRAM-MD5, APOP, SASL PLAIN, USER/PASS, and the choice of the strongest one offered.
//! - [`config`]: accounts from a TOML file or a `pop3s://user@host[:port]` URL, and where the
//!   password comes from (a prompt, an environment variable, a command).
//! - [`dest`]: where fetched messages go: a Maildir, an mbox file, or an MDA command.
//! - [`state`]: what was fetched from each account (a snapshot and a journal), and the recovery
//!   that makes a rerun after a crash lose nothing and duplicate nothing.
//! - [`tls`]: the certificates trusted (with `ca_file`'s pinned), and TLS errors in words.
//! - [`fetch`]: `facteur fetch` itself: the plan of a run, batches, deletion, limits, progress
//!   bars, the summary and the exit status.
//! - `date`: UTC calendar dates from UNIX time (an mbox `From ` line, a certificate's validity).
//!
//! # What this crate must never do
//! - parse POP3 a second time, or hold a whole message in memory;
//! - send a password on a connection without TLS unless plaintext was explicitly allowed, or
//!   put a password in a log line, an error or a `Debug` output;
//! - send DELE for a message that is not both durable on the local disk and recorded in the
//!   account's state (see [`fetch`] for the order of operations).

pub mod auth;
pub mod config;
mod date;
pub mod dest;
pub mod fetch;
#[cfg(test)]
pub(crate) mod optrace;
pub mod state;
pub mod tls;

pub use fetch::{run, FetchArgs};

use facteur_proto::client::{ClientError, ClientEvent, ClientSession, CommandKind, Listing};
use facteur_proto::command::Command;
use facteur_proto::response::Status;
use rustls::pki_types::ServerName;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Octets read from the socket at once by [`Connection::connect`] (the fetcher's).
const READ_BUFFER: usize = 64 * 1024;

/// How the connection to the server is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// TLS from the first byte: POP3S (RFC 8314), port 995 by default.
    Tls,
    /// Plain TCP, then STLS (RFC 2595) before anything else: port 110 by default. A server
    /// that refuses STLS is an error, never a reason to go on in clear.
    Starttls,
    /// No TLS at all: passwords and mail cross the network in clear. Only on explicit request.
    Plaintext,
}

impl Security {
    /// The port of this kind of connection when none is given.
    pub fn default_port(self) -> u16 {
        match self {
            Security::Tls => 995,
            Security::Starttls | Security::Plaintext => 110,
        }
    }
}

impl fmt::Display for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Security::Tls => "tls",
            Security::Starttls => "starttls",
            Security::Plaintext => "plaintext",
        })
    }
}

/// Where to connect and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// A host name or an IP address (without brackets).
    pub host: String,
    pub port: u16,
    pub security: Security,
    /// The certificates to trust, in a PEM file; `None`: the system's certificate store.
    pub ca_file: Option<PathBuf>,
}

/// Why a POP3 conversation failed.
#[derive(Debug, thiserror::Error)]
pub enum Pop3Error {
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error(
        "the server does not offer STLS ({}); refusing to go on without TLS",
        describe_status(.0)
    )]
    NoStls(Status),
    #[error("the connection timed out ({0} s without an answer)")]
    Timeout(u64),
    #[error("the run took longer than its deadline ({0} s, run_timeout_secs): stopped")]
    RunDeadline(u64),
    #[error("the message took longer than its deadline ({0} s, message_timeout_secs)")]
    MessageDeadline(u64),
    #[error("the server's {command} listing goes past {max} lines: refusing to read more")]
    TooManyLines { command: CommandKind, max: u64 },
    #[error("the server closed the connection")]
    Closed,
    #[error("network error: {0}")]
    Io(std::io::Error),
    #[error(transparent)]
    Protocol(#[from] ClientError),
    #[error("the server refused {command}: {}", describe_status(.status))]
    Refused { command: String, status: Status },
    #[error("the server sent {0} where a reply was expected")]
    Unexpected(String),
}

impl Pop3Error {
    /// True for a refusal tagged `[AUTH]` (RFC 3206): the credentials themselves were refused.
    pub fn is_auth_refusal(&self) -> bool {
        matches!(self, Pop3Error::Refused { status, .. }
            if status.code == Some(facteur_proto::response::Code::Auth))
    }
}

/// `-ERR [CODE] text`, as the server said it.
pub fn describe_status(status: &Status) -> String {
    let code = status.code.map(|c| format!("[{c}] ")).unwrap_or_default();
    let sign = if status.ok { "+OK" } else { "-ERR" };
    format!("{sign} {code}{}", status.text)
        .trim_end()
        .to_string()
}

/// What CAPA said (RFC 2449), or what is assumed of a server without CAPA.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The server answered CAPA with `+OK`.
    pub known: bool,
    pub pipelining: bool,
    pub uidl: bool,
    pub top: bool,
    pub user: bool,
    pub stls: bool,
    pub resp_codes: bool,
    /// SASL mechanisms, in capitals, in the server's order.
    pub sasl: Vec<String>,
}

impl Capabilities {
    fn from_listing(lines: &[Listing]) -> Self {
        let mut caps = Capabilities {
            known: true,
            ..Capabilities::default()
        };
        for line in lines {
            let Listing::Capability(c) = line else {
                continue;
            };
            match c.name.as_str() {
                "PIPELINING" => caps.pipelining = true,
                "UIDL" => caps.uidl = true,
                "TOP" => caps.top = true,
                "USER" => caps.user = true,
                "STLS" => caps.stls = true,
                "RESP-CODES" => caps.resp_codes = true,
                "SASL" => {
                    caps.sasl = c.params.iter().map(|m| m.to_ascii_uppercase()).collect();
                }
                _ => {}
            }
        }
        caps
    }

    /// What a server that does not know CAPA (RFC 1939 only) is assumed to do: USER/PASS and
    /// UIDL (the latter is tried, and a `-ERR` to it is handled), nothing else.
    fn assumed() -> Self {
        Capabilities {
            known: false,
            uidl: true,
            user: true,
            ..Capabilities::default()
        }
    }

    /// True if the server lists the SASL mechanism `name`.
    pub fn has_sasl(&self, name: &str) -> bool {
        self.sasl.iter().any(|m| m.eq_ignore_ascii_case(name))
    }
}

/// A reply's status line, with the parsed `+OK` of STAT, `LIST n` and `UIDL n`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub command: CommandKind,
    pub status: Status,
    pub listing: Option<Listing>,
}

impl Reply {
    /// `Ok(self)` for `+OK`, else the refusal as an error.
    pub fn ok(self) -> Result<Reply, Pop3Error> {
        if self.status.ok {
            Ok(self)
        } else {
            Err(Pop3Error::Refused {
                command: self.command.to_string(),
                status: self.status,
            })
        }
    }
}

/// During an AUTH exchange: a challenge to answer, or the final reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SaslTurn {
    /// `+ base64`: the text after `+ ` (base64, possibly empty).
    Challenge(String),
    Done(Reply),
}

/// An event the driver owns (a body chunk stays in the connection's buffer).
#[derive(Debug)]
enum Got {
    Greeting(Status, Option<String>),
    Reply(Reply),
    Listing(Listing),
    /// A body chunk of this many octets; in `Connection::chunk` if it was asked to be kept.
    Body(usize),
    End,
    Continuation(String),
}

/// The socket, plain or under TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Only while the stream is being moved into TLS.
    Detached,
}

/// A moment after which every wait fails, and the limit it stands for (for the message).
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    at: tokio::time::Instant,
    limit: Duration,
}

impl Deadline {
    /// `limit` from now; `None` if that is too far to be told apart from never.
    pub fn after(limit: Duration) -> Option<Deadline> {
        tokio::time::Instant::now()
            .checked_add(limit)
            .map(|at| Deadline { at, limit })
    }
}

/// What bounds a wait: the silence allowed, and the run's and the message's deadlines.
#[derive(Clone, Copy, Debug)]
struct Bounds {
    silence: Duration,
    run: Option<Deadline>,
    message: Option<Deadline>,
}

impl Bounds {
    /// `f`, or the error of the first bound it reaches.
    async fn wait<T>(self, f: impl std::future::Future<Output = T>) -> Result<T, Pop3Error> {
        let mut until = tokio::time::Instant::now()
            .checked_add(self.silence)
            .map(|at| (at, Pop3Error::Timeout(self.silence.as_secs())));
        let deadlines = [
            self.run
                .map(|d| (d, Pop3Error::RunDeadline(d.limit.as_secs()))),
            self.message
                .map(|d| (d, Pop3Error::MessageDeadline(d.limit.as_secs()))),
        ];
        for (d, e) in deadlines.into_iter().flatten() {
            if until.as_ref().is_none_or(|(at, _)| d.at <= *at) {
                until = Some((d.at, e));
            }
        }
        match until {
            Some((at, e)) => tokio::time::timeout_at(at, f).await.map_err(|_| e),
            None => Ok(f.await),
        }
    }
}

/// Where `facteur fetch --trace` sends the POP3 exchange: one line at a time, without its
/// CRLF, `C: ` for what the client sent and `S: ` for what the server said, `-- ` for events
/// of the connection (TLS). Passwords, APOP digests and SASL responses are redacted; a
/// message's text is summed up by its size.
#[derive(Clone)]
pub struct Trace(Arc<dyn Fn(&str) + Send + Sync>);

impl Trace {
    /// A trace that hands each line to `f`.
    pub fn new(f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// Traces one line.
    pub fn line(&self, line: &str) {
        (self.0)(line)
    }

    /// The same trace, each line after `prefix` and `: `.
    pub fn prefixed(&self, prefix: &str) -> Self {
        let (inner, prefix) = (self.clone(), prefix.to_owned());
        Self::new(move |line| inner.line(&format!("{prefix}: {line}")))
    }
}

impl fmt::Debug for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Trace")
    }
}

/// One POP3 connection: the socket and the client state machine.
pub struct Connection {
    stream: Stream,
    session: ClientSession,
    out: Vec<u8>,
    /// The read buffer: `read_buffer` octets, allocated on the first read after
    /// [`Connection::release_buffers`].
    buf: Vec<u8>,
    read_buffer: usize,
    chunk: Vec<u8>,
    timeout: Duration,
    run_deadline: Option<Deadline>,
    message_deadline: Option<Deadline>,
    apop_timestamp: Option<String>,
    caps: Capabilities,
    target: String,
    trace: Option<Trace>,
    /// Octets of message text received since the last traced line.
    traced_body: u64,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("target", &self.target)
            .field("tls", &self.is_tls())
            .finish_non_exhaustive()
    }
}

pub use tls::client_config as tls_config;

/// How [`Connection::connect_with`] sets up a connection on a TCP stream already open.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// The TLS client configuration, needed when the target's security is TLS or STLS (its
    /// certificate verifier decides whom to trust).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The name sent (SNI) and checked in the server's certificate; `None`: the target's host.
    pub server_name: Option<ServerName<'static>>,
    /// Ask for the capabilities (CAPA) after the greeting and again under STLS. Without it,
    /// [`Connection::capabilities`] knows nothing, and STLS is sent unasked for.
    pub capa: bool,
    /// The silence allowed on every wait for the network.
    pub timeout: Duration,
    /// Bounds every wait on the connection, from the handshake to QUIT.
    pub run_deadline: Option<Deadline>,
    /// Octets read from the socket at once (at least 1).
    pub read_buffer: usize,
    /// Where the exchange is traced, if anywhere (`facteur fetch --trace`).
    pub trace: Option<Trace>,
}

impl ConnectOptions {
    /// What [`Connection::connect`] uses for `target`: the certificates of its `ca_file` (or
    /// the system's), its host as the server name, CAPA, a 64 KiB read buffer. Fails before
    /// any connection if the TLS setup cannot be made.
    pub fn for_target(
        target: &Target,
        timeout: Duration,
        run_deadline: Option<Deadline>,
    ) -> Result<ConnectOptions, Pop3Error> {
        let (tls, server_name) = match target.security {
            Security::Plaintext => (None, None),
            Security::Tls | Security::Starttls => (
                Some(tls_config(target.ca_file.as_deref())?),
                Some(server_name(&target.host)?),
            ),
        };
        Ok(ConnectOptions {
            tls,
            server_name,
            capa: true,
            timeout,
            run_deadline,
            read_buffer: READ_BUFFER,
            trace: None,
        })
    }
}

impl Connection {
    /// Connect to `target`, read the greeting, ask for the capabilities, and for STLS, start
    /// TLS and ask for them again (RFC 2595 section 4: they may differ under TLS). Every wait
    /// for the network is bounded by `timeout`, and all of them together by `run_deadline`,
    /// which bounds every later wait on this connection too.
    pub async fn connect(
        target: &Target,
        timeout: Duration,
        run_deadline: Option<Deadline>,
    ) -> Result<Connection, Pop3Error> {
        Self::connect_traced(target, timeout, run_deadline, None).await
    }

    /// [`connect`](Self::connect), with the exchange traced to `trace` from the greeting on.
    pub async fn connect_traced(
        target: &Target,
        timeout: Duration,
        run_deadline: Option<Deadline>,
        trace: Option<Trace>,
    ) -> Result<Connection, Pop3Error> {
        let mut opts = ConnectOptions::for_target(target, timeout, run_deadline)?;
        opts.trace = trace;
        let bounds = Bounds {
            silence: timeout,
            run: run_deadline,
            message: None,
        };
        let addrs: Vec<std::net::SocketAddr> = bounds
            .wait(tokio::net::lookup_host((target.host.as_str(), target.port)))
            .await?
            .map_err(|e| Pop3Error::Resolve {
                host: target.host.clone(),
                reason: e.to_string(),
            })?
            .collect();
        let mut last = None;
        let mut tcp = None;
        for addr in addrs {
            match bounds.wait(TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    tcp = Some(s);
                    break;
                }
                Ok(Err(e)) => last = Some(e),
                Err(e @ Pop3Error::RunDeadline(_)) => return Err(e),
                Err(_) => last = Some(std::io::Error::from(std::io::ErrorKind::TimedOut)),
            }
        }
        let Some(tcp) = tcp else {
            return Err(match last {
                Some(source) => Pop3Error::Connect {
                    target: format!("{}:{}", bracket(&target.host), target.port),
                    source,
                },
                None => Pop3Error::Resolve {
                    host: target.host.clone(),
                    reason: "no address".into(),
                },
            });
        };
        Connection::connect_with(tcp, target, &opts).await
    }

    /// [`connect`](Self::connect) on a TCP stream already open to `target` (the load
    /// generator opens its own): TLS as `target.security` says, the greeting, CAPA if
    /// `opts.capa`, STLS. `target.host` and `target.port` only name the server in messages,
    /// and in the certificate check when `opts.server_name` is `None`.
    pub async fn connect_with(
        tcp: TcpStream,
        target: &Target,
        opts: &ConnectOptions,
    ) -> Result<Connection, Pop3Error> {
        let tls = match target.security {
            Security::Plaintext => None,
            Security::Tls | Security::Starttls => {
                let server_name = match &opts.server_name {
                    Some(name) => name.clone(),
                    None => server_name(&target.host)?,
                };
                let Some(config) = &opts.tls else {
                    return Err(Pop3Error::Tls(format!(
                        "no TLS configuration for a {} connection",
                        target.security
                    )));
                };
                Some((TlsConnector::from(Arc::clone(config)), server_name))
            }
        };
        let _ = tcp.set_nodelay(true);
        let mut conn = Connection {
            stream: Stream::Plain(tcp),
            session: ClientSession::new(),
            out: Vec::new(),
            buf: Vec::new(),
            read_buffer: opts.read_buffer.max(1),
            chunk: Vec::new(),
            timeout: opts.timeout,
            run_deadline: opts.run_deadline,
            message_deadline: None,
            apop_timestamp: None,
            caps: Capabilities::default(),
            target: format!("{}:{}", bracket(&target.host), target.port),
            trace: opts.trace.clone(),
            traced_body: 0,
        };
        if let (Security::Tls, Some(tls)) = (target.security, &tls) {
            conn.start_tls(tls, target).await?;
        }
        conn.greeting().await?;
        if opts.capa {
            conn.capa().await?;
        }
        if let (Security::Starttls, Some(tls)) = (target.security, &tls) {
            let reply = conn.command(Command::Stls).await?;
            if !reply.status.ok {
                return Err(Pop3Error::NoStls(reply.status));
            }
            conn.start_tls(tls, target).await?;
            if opts.capa {
                conn.capa().await?;
            }
        }
        Ok(conn)
    }

    async fn start_tls(
        &mut self,
        (connector, name): &(TlsConnector, ServerName<'static>),
        target: &Target,
    ) -> Result<(), Pop3Error> {
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Detached) else {
            return Err(Pop3Error::Tls("TLS started twice".into()));
        };
        let tls = self
            .bounds()
            .wait(connector.connect(name.clone(), tcp))
            .await?
            .map_err(|e| Pop3Error::Tls(tls::explain(&e, target)))?;
        if let Some(trace) = &self.trace {
            let (_, session) = tls.get_ref();
            let version = session
                .protocol_version()
                .and_then(|v| v.as_str())
                .unwrap_or("?");
            let suite = session
                .negotiated_cipher_suite()
                .and_then(|s| s.suite().as_str())
                .unwrap_or("?");
            trace.line(&format!("-- TLS established: {version}, {suite}"));
        }
        self.stream = Stream::Tls(Box::new(tls));
        Ok(())
    }

    async fn greeting(&mut self) -> Result<(), Pop3Error> {
        match self.next().await? {
            Got::Greeting(status, apop) if status.ok => {
                self.apop_timestamp = apop;
                Ok(())
            }
            Got::Greeting(status, _) => Err(Pop3Error::Refused {
                command: "the connection".into(),
                status,
            }),
            other => Err(Pop3Error::Unexpected(format!("{other:?}"))),
        }
    }

    /// CAPA; a server that answers `-ERR` is taken as a plain RFC 1939 server.
    async fn capa(&mut self) -> Result<(), Pop3Error> {
        let reply = self.command(Command::Capa).await?;
        self.caps = if reply.status.ok {
            Capabilities::from_listing(&self.listing(config::MAX_CAPA_LINES).await?)
        } else {
            Capabilities::assumed()
        };
        Ok(())
    }

    /// Bound every wait from now on by `deadline` too (one message's), or no longer.
    pub fn set_message_deadline(&mut self, deadline: Option<Deadline>) {
        self.message_deadline = deadline;
    }

    fn bounds(&self) -> Bounds {
        Bounds {
            silence: self.timeout,
            run: self.run_deadline,
            message: self.message_deadline,
        }
    }

    /// The capabilities of the server, as of the last CAPA (after TLS, if any).
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// The APOP timestamp of the greeting, angle brackets included, if it had one.
    pub fn apop_timestamp(&self) -> Option<&str> {
        self.apop_timestamp.as_deref()
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// `host:port`, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Queue a command without sending it: [`flush`](Self::flush) sends all queued commands
    /// in one write (PIPELINING). Replies are read in the order the commands were queued.
    pub fn queue(&mut self, cmd: Command) {
        if let Some(trace) = &self.trace {
            // Display redacts PASS, APOP's digest and AUTH's initial response.
            trace.line(&format!("C: {cmd}"));
        }
        self.session.send(cmd, &mut self.out);
    }

    /// Queue an answer to a SASL challenge: `data` is sent base64-encoded (an empty line for
    /// no data, as RFC 5034 section 4 wants).
    pub fn queue_sasl(&mut self, data: &[u8]) {
        use base64::Engine as _;
        let line = base64::engine::general_purpose::STANDARD.encode(data);
        if let Some(trace) = &self.trace {
            trace.line("C: <redacted>");
        }
        // Base64 never holds CR or LF.
        let _ = self
            .session
            .send_sasl_response(line.as_bytes(), &mut self.out);
    }

    /// Queue `*`: the client gives up a SASL exchange (RFC 5034 section 4).
    pub fn queue_sasl_cancel(&mut self) {
        if let Some(trace) = &self.trace {
            trace.line("C: *");
        }
        let _ = self.session.send_sasl_response(b"*", &mut self.out);
    }

    /// Send everything queued.
    pub async fn flush(&mut self) -> Result<(), Pop3Error> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        let bounds = self.bounds();
        let result = match &mut self.stream {
            Stream::Plain(s) => bounds.wait(s.write_all(&out)).await?,
            Stream::Tls(s) => {
                bounds
                    .wait(async {
                        s.write_all(&out).await?;
                        s.flush().await
                    })
                    .await?
            }
            Stream::Detached => Err(std::io::Error::from(std::io::ErrorKind::NotConnected)),
        };
        self.out = out;
        self.out.clear();
        result.map_err(Pop3Error::Io)
    }

    /// Send one command and read its status line (`+OK` or `-ERR`: the caller decides).
    pub async fn command(&mut self, cmd: Command) -> Result<Reply, Pop3Error> {
        self.queue(cmd);
        self.flush().await?;
        self.reply().await
    }

    /// The status line of the oldest command not yet answered.
    pub async fn reply(&mut self) -> Result<Reply, Pop3Error> {
        match self.next().await? {
            Got::Reply(r) => Ok(r),
            other => Err(Pop3Error::Unexpected(format!("{other:?}"))),
        }
    }

    /// The lines of a multi-line LIST, UIDL or CAPA reply whose `+OK` was read: at most
    /// `max` of them, or an error (a server that never ends its listing would fill memory).
    pub async fn listing(&mut self, max: u64) -> Result<Vec<Listing>, Pop3Error> {
        let mut lines = Vec::new();
        let mut count = 0u64;
        loop {
            match self.next().await? {
                Got::Listing(l) => {
                    count = count.saturating_add(1);
                    if count > max {
                        let command = match l {
                            Listing::Capability(_) => CommandKind::Capa,
                            Listing::UniqueId { .. } => CommandKind::Uidl,
                            Listing::Mechanism(_) => CommandKind::Auth,
                            Listing::Scan { .. } | Listing::Drop { .. } => CommandKind::List,
                        };
                        return Err(Pop3Error::TooManyLines { command, max });
                    }
                    lines.push(l);
                }
                Got::End => return Ok(lines),
                other => return Err(Pop3Error::Unexpected(format!("{other:?}"))),
            }
        }
    }

    /// The message of a RETR or TOP whose `+OK` was read, handed to `sink` in chunks as it
    /// arrives (un-stuffed, CRLF line ends as sent). Returns the octets received. A sink error
    /// stops reading at once; the connection is then in the middle of a reply and must be
    /// dropped, not used again.
    pub async fn body<E: From<Pop3Error>>(
        &mut self,
        mut sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<u64, E> {
        let mut total = 0u64;
        loop {
            match self.next_keeping(true).await? {
                Got::Body(n) => {
                    total = total.saturating_add(n as u64);
                    sink(&self.chunk)?;
                }
                Got::End => return Ok(total),
                other => return Err(Pop3Error::Unexpected(format!("{other:?}")).into()),
            }
        }
    }

    /// The rest of a multi-line reply whose `+OK` was read (a listing or a message), read and
    /// thrown away as it arrives: nothing of it is kept, so memory stays at the read buffer
    /// however long it is (time is bounded by the connection's deadlines). Returns the octets
    /// of message data (un-stuffed, as [`body`](Self::body) counts them; 0 for a listing).
    pub async fn skip_multiline(&mut self) -> Result<u64, Pop3Error> {
        let mut total = 0u64;
        loop {
            match self.next_keeping(false).await? {
                Got::Body(n) => total = total.saturating_add(n as u64),
                Got::Listing(_) => {}
                Got::End => return Ok(total),
                other => return Err(Pop3Error::Unexpected(format!("{other:?}"))),
            }
        }
    }

    /// Free the read buffer and the other buffers between replies, while the connection waits
    /// with nothing to read (an idle session of the load generator then costs little memory).
    /// The next read allocates the read buffer again.
    pub fn release_buffers(&mut self) {
        self.buf = Vec::new();
        self.chunk = Vec::new();
        if self.out.is_empty() {
            self.out = Vec::new();
        }
    }

    /// During AUTH: the next challenge, or the final reply.
    pub async fn sasl_turn(&mut self) -> Result<SaslTurn, Pop3Error> {
        match self.next().await? {
            Got::Continuation(c) => Ok(SaslTurn::Challenge(c)),
            Got::Reply(r) => Ok(SaslTurn::Done(r)),
            other => Err(Pop3Error::Unexpected(format!("{other:?}"))),
        }
    }

    /// QUIT and its reply: `+OK` means the deletions were applied (RFC 1939 section 6).
    pub async fn quit(mut self) -> Result<(), Pop3Error> {
        self.command(Command::Quit).await?.ok()?;
        let bounds = self.bounds();
        if let Stream::Tls(s) = &mut self.stream {
            // close_notify, best effort: the server closes the connection anyway.
            let _ = bounds.wait(s.shutdown()).await;
        }
        Ok(())
    }

    /// The next event, reading from the socket as needed.
    async fn next(&mut self) -> Result<Got, Pop3Error> {
        self.next_keeping(true).await
    }

    /// The next event; a body chunk is copied into `self.chunk` only if `keep_body`.
    async fn next_keeping(&mut self, keep_body: bool) -> Result<Got, Pop3Error> {
        let got = self.next_untraced(keep_body).await?;
        if let Some(trace) = &self.trace {
            match &got {
                Got::Body(n) => self.traced_body = self.traced_body.saturating_add(*n as u64),
                other => {
                    if self.traced_body > 0 {
                        trace.line(&format!("S: <{} octets of message>", self.traced_body));
                        self.traced_body = 0;
                    }
                    if let Some(line) = traced_line(other) {
                        trace.line(&line);
                    }
                }
            }
        }
        Ok(got)
    }

    async fn next_untraced(&mut self, keep_body: bool) -> Result<Got, Pop3Error> {
        loop {
            match self.session.next_event()? {
                Some(ClientEvent::Body(b)) => {
                    if keep_body {
                        self.chunk.clear();
                        self.chunk.extend_from_slice(b);
                    }
                    return Ok(Got::Body(b.len()));
                }
                Some(ClientEvent::Greeting {
                    status,
                    apop_timestamp,
                }) => return Ok(Got::Greeting(status, apop_timestamp)),
                Some(ClientEvent::Reply {
                    command,
                    status,
                    listing,
                }) => {
                    return Ok(Got::Reply(Reply {
                        command,
                        status,
                        listing,
                    }))
                }
                Some(ClientEvent::Listing(l)) => return Ok(Got::Listing(l)),
                Some(ClientEvent::End) => return Ok(Got::End),
                Some(ClientEvent::Continuation(c)) => return Ok(Got::Continuation(c)),
                None => {}
            }
            if self.buf.is_empty() {
                self.buf = vec![0; self.read_buffer];
            }
            let bounds = self.bounds();
            let n = match &mut self.stream {
                Stream::Plain(s) => bounds.wait(s.read(&mut self.buf)).await?,
                Stream::Tls(s) => bounds.wait(s.read(&mut self.buf)).await?,
                Stream::Detached => return Err(Pop3Error::Closed),
            };
            let n = match n {
                Ok(n) => n,
                Err(e) if is_close(&e) => return Err(Pop3Error::Closed),
                Err(e) => return Err(Pop3Error::Io(e)),
            };
            let Some(data) = self.buf.get(..n).filter(|d| !d.is_empty()) else {
                return Err(Pop3Error::Closed);
            };
            self.session.feed(data);
        }
    }
}

/// The trace line of what the server said (see [`Trace`]); `None` for message text.
fn traced_line(got: &Got) -> Option<String> {
    Some(match got {
        Got::Greeting(status, _) | Got::Reply(Reply { status, .. }) => {
            format!("S: {}", describe_status(status))
        }
        Got::Listing(Listing::Drop { count, octets }) => format!("S: {count} {octets}"),
        Got::Listing(Listing::Scan { msg, octets }) => format!("S: {msg} {octets}"),
        Got::Listing(Listing::UniqueId { msg, uid }) => format!("S: {msg} {}", uid.as_str()),
        Got::Listing(Listing::Capability(c)) if c.params.is_empty() => format!("S: {}", c.name),
        Got::Listing(Listing::Capability(c)) => {
            format!("S: {} {}", c.name, c.params.join(" "))
        }
        Got::Listing(Listing::Mechanism(m)) => format!("S: {m}"),
        Got::End => "S: .".to_owned(),
        Got::Continuation(c) => format!("S: + {c}"),
        Got::Body(_) => return None,
    })
}

/// A connection reset, or a TLS peer gone without close_notify: the server closed.
fn is_close(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
    )
}

/// `host` as the name to send (SNI) and check in the server's certificate.
fn server_name(host: &str) -> Result<ServerName<'static>, Pop3Error> {
    ServerName::try_from(host.to_string())
        .map_err(|_| Pop3Error::Tls(format!("{host:?} is not a valid server name")))
}

/// An IPv6 address in brackets, for `host:port`.
pub(crate) fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// A scripted POP3 server on 127.0.0.1 for the client's tests: it sends `greeting`, then
/// answers each line the client sends with what `answer` returns for it; `None` closes the
/// connection, and so does an answer ending in [`CLOSE`] (after the rest is sent). One
/// connection, on a thread of its own.
#[cfg(test)]
pub(crate) fn fake_server(
    greeting: &'static str,
    mut answer: impl FnMut(&str) -> Option<Vec<u8>> + Send + 'static,
) -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let Ok((mut tcp, _)) = listener.accept() else {
            return;
        };
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
        let _ = tcp.write_all(greeting.as_bytes());
        let mut reader = BufReader::new(tcp.try_clone().unwrap());
        let mut line = String::new();
        while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
            match answer(line.trim_end()) {
                Some(bytes) => match bytes.strip_suffix(CLOSE) {
                    Some(last) => {
                        let _ = tcp.write_all(last);
                        return;
                    }
                    None => {
                        let _ = tcp.write_all(&bytes);
                    }
                },
                None => return,
            }
            line.clear();
        }
    });
    addr
}

/// See [`fake_server`].
#[cfg(test)]
pub(crate) const CLOSE: &[u8] = b"\0close";

/// A [`Target`] for a fake server, without TLS.
#[cfg(test)]
pub(crate) fn fake_target(addr: std::net::SocketAddr) -> Target {
    Target {
        host: addr.ip().to_string(),
        port: addr.port(),
        security: Security::Plaintext,
        ca_file: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use facteur_proto::client::Capability;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_server_without_capa_is_taken_for_an_rfc1939_server() {
        let addr = fake_server("+OK hello <1.2@fake>\r\n", |line| {
            Some(match line {
                "CAPA" => b"-ERR what?\r\n".to_vec(),
                _ => b"+OK\r\n".to_vec(),
            })
        });
        let conn = block_on(Connection::connect(
            &fake_target(addr),
            Duration::from_secs(10),
            None,
        ))
        .unwrap();
        assert_eq!(conn.capabilities(), &Capabilities::assumed());
        assert_eq!(conn.apop_timestamp(), Some("<1.2@fake>"));
        assert!(!conn.is_tls());
    }

    #[test]
    fn an_err_greeting_or_a_silent_close_is_an_error() {
        let addr = fake_server("-ERR [SYS/TEMP] go away\r\n", |_| None);
        let e = block_on(Connection::connect(
            &fake_target(addr),
            Duration::from_secs(10),
            None,
        ))
        .unwrap_err();
        assert!(e.to_string().contains("go away"), "{e}");
        let addr = fake_server("", |_| None);
        let e = block_on(Connection::connect(
            &fake_target(addr),
            Duration::from_secs(1),
            None,
        ))
        .unwrap_err();
        assert!(
            matches!(e, Pop3Error::Timeout(_) | Pop3Error::Closed),
            "{e}"
        );
    }

    /// A fake server that answers RETR 1 and UIDL, and records every line it got.
    fn recording_server() -> (
        std::net::SocketAddr,
        std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    ) {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let addr = fake_server("+OK hello\r\n", move |line| {
            log.lock().unwrap().push(line.to_string());
            Some(match line {
                "RETR 1" => b"+OK 19 octets\r\nline one\r\n..dotted\r\n.\r\n".to_vec(),
                "UIDL" => b"+OK\r\n1 a\r\n2 b\r\n.\r\n".to_vec(),
                "QUIT" => b"+OK bye\r\n".to_vec(),
                _ => b"-ERR no\r\n".to_vec(),
            })
        });
        (addr, seen)
    }

    fn options(capa: bool, read_buffer: usize) -> ConnectOptions {
        ConnectOptions {
            tls: None,
            server_name: None,
            capa,
            timeout: Duration::from_secs(10),
            run_deadline: None,
            read_buffer,
            trace: None,
        }
    }

    #[test]
    fn the_trace_shows_the_exchange_without_secrets() {
        let addr = fake_server("+OK hello <1.2@fake>\r\n", |line| {
            Some(match line {
                "CAPA" => b"+OK\r\nUSER\r\nSASL PLAIN\r\n.\r\n".to_vec(),
                "RETR 1" => b"+OK\r\nSubject: s3cret-free\r\n\r\nbody\r\n.\r\n".to_vec(),
                "AUTH PLAIN" => b"+ \r\n".to_vec(),
                "UIDL" => b"+OK\r\n1 abc\r\n.\r\n".to_vec(),
                _ => b"+OK\r\n".to_vec(),
            })
        });
        let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let sink = lines.clone();
        let trace = Trace::new(move |l| sink.lock().unwrap().push(l.to_owned())).prefixed("acct");
        block_on(async {
            let mut conn = Connection::connect_traced(
                &fake_target(addr),
                Duration::from_secs(10),
                None,
                Some(trace),
            )
            .await
            .unwrap();
            conn.command(Command::User("alice".into())).await.unwrap();
            conn.command(Command::Pass(facteur_proto::Secret::new(
                b"hunter2".to_vec(),
            )))
            .await
            .unwrap();
            conn.command(Command::Apop {
                name: "alice".into(),
                digest: "c4c9334bac560ecc979e58001b3e22fb".into(),
            })
            .await
            .unwrap();
            conn.queue(Command::Auth {
                mechanism: Some("PLAIN".into()),
                initial_response: None,
            });
            conn.flush().await.unwrap();
            assert!(matches!(
                conn.sasl_turn().await.unwrap(),
                SaslTurn::Challenge(_)
            ));
            conn.queue_sasl(b"\0alice\0hunter2");
            conn.flush().await.unwrap();
            conn.reply().await.unwrap();
            conn.command(Command::Uidl(None)).await.unwrap();
            conn.listing(10).await.unwrap();
            let retr = Command::Retr(facteur_proto::MsgNum::new(1).unwrap());
            conn.command(retr).await.unwrap();
            conn.skip_multiline().await.unwrap();
        });
        let lines = lines.lock().unwrap().clone();
        let expected = [
            "acct: S: +OK hello <1.2@fake>",
            "acct: C: CAPA",
            "acct: S: +OK",
            "acct: S: USER",
            "acct: S: SASL PLAIN",
            "acct: S: .",
            "acct: C: USER alice",
            "acct: S: +OK",
            "acct: C: PASS <redacted>",
            "acct: S: +OK",
            "acct: C: APOP alice <redacted>",
            "acct: S: +OK",
            "acct: C: AUTH PLAIN",
            "acct: S: + ",
            "acct: C: <redacted>",
            "acct: S: +OK",
            "acct: C: UIDL",
            "acct: S: +OK",
            "acct: S: 1 abc",
            "acct: S: .",
            "acct: C: RETR 1",
            "acct: S: +OK",
            "acct: S: <30 octets of message>",
            "acct: S: .",
        ];
        assert_eq!(lines, expected);
        let all = lines.join("\n");
        assert!(
            !all.contains("hunter2") && !all.contains("c4c9334b"),
            "{all}"
        );
    }

    #[test]
    fn connect_with_skips_capa_and_multiline_replies_are_skipped_or_read_alike() {
        let (addr, seen) = recording_server();
        block_on(async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            // A 5-octet read buffer: every reply arrives in pieces.
            let mut conn = Connection::connect_with(tcp, &fake_target(addr), &options(false, 5))
                .await
                .unwrap();
            assert!(!conn.capabilities().known);
            let retr = || Command::Retr(facteur_proto::MsgNum::new(1).unwrap());
            conn.command(retr()).await.unwrap().ok().unwrap();
            let mut kept = Vec::new();
            let read = conn
                .body(|chunk| {
                    kept.extend_from_slice(chunk);
                    Ok::<_, Pop3Error>(())
                })
                .await
                .unwrap();
            assert_eq!(kept, b"line one\r\n.dotted\r\n");
            assert_eq!(read, kept.len() as u64);
            conn.command(retr()).await.unwrap().ok().unwrap();
            assert_eq!(conn.skip_multiline().await.unwrap(), read);
            // Idle: no buffers held; the next reply is read as before.
            conn.release_buffers();
            assert_eq!(conn.buf.capacity() + conn.chunk.capacity(), 0);
            conn.command(Command::Uidl(None))
                .await
                .unwrap()
                .ok()
                .unwrap();
            assert_eq!(conn.skip_multiline().await.unwrap(), 0);
            conn.quit().await.unwrap();
        });
        assert_eq!(*seen.lock().unwrap(), ["RETR 1", "RETR 1", "UIDL", "QUIT"]);
    }

    #[test]
    fn connect_asks_for_capa_and_tls_needs_a_configuration() {
        let (addr, seen) = recording_server();
        let conn = block_on(Connection::connect(
            &fake_target(addr),
            Duration::from_secs(10),
            None,
        ))
        .unwrap();
        assert_eq!(conn.capabilities(), &Capabilities::assumed());
        drop(conn);
        assert_eq!(*seen.lock().unwrap(), ["CAPA"]);

        let (addr, _) = recording_server();
        let target = Target {
            security: Security::Tls,
            ..fake_target(addr)
        };
        let e = block_on(async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            Connection::connect_with(tcp, &target, &options(true, 1024)).await
        })
        .unwrap_err();
        assert!(
            matches!(&e, Pop3Error::Tls(m) if m.contains("no TLS configuration")),
            "{e}"
        );
    }

    #[test]
    fn capabilities_from_capa() {
        let lines: Vec<Listing> = [
            ("TOP", vec![]),
            ("UIDL", vec![]),
            ("SASL", vec!["scram-sha-256", "PLAIN"]),
            ("PIPELINING", vec![]),
            ("STLS", vec![]),
        ]
        .into_iter()
        .map(|(name, params)| {
            Listing::Capability(Capability {
                name: name.into(),
                params: params.into_iter().map(String::from).collect(),
            })
        })
        .collect();
        let caps = Capabilities::from_listing(&lines);
        assert!(caps.known && caps.pipelining && caps.uidl && caps.top && caps.stls);
        assert!(!caps.user);
        assert!(caps.has_sasl("SCRAM-SHA-256") && caps.has_sasl("plain"));
        assert!(!caps.has_sasl("CRAM-MD5"));
        let assumed = Capabilities::assumed();
        assert!(!assumed.known && assumed.user && assumed.uidl && !assumed.pipelining);
    }

    #[test]
    fn statuses_are_described_as_sent() {
        let s = facteur_proto::response::parse_status(b"-ERR [IN-USE] locked").unwrap();
        assert_eq!(describe_status(&s), "-ERR [IN-USE] locked");
        let s = facteur_proto::response::parse_status(b"-ERR").unwrap();
        assert_eq!(describe_status(&s), "-ERR");
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(bracket("::1"), "[::1]");
        assert_eq!(bracket("mail.example.org"), "mail.example.org");
    }
}
