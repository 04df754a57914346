//! # facteur-bench: a POP3 load generator
//!
//! N concurrent sessions against any POP3 server (plain, STLS or POP3S), each running the same
//! script: greeting, login, STAT, optionally UIDL, RETR of the first K messages (bodies read and
//! thrown away), optionally DELE, optionally an idle wait, QUIT. It stops after a number of
//! sessions or a duration, and reports sessions/s, messages/s, MB/s, session latency (p50, p99),
//! errors by kind, and its own CPU time, so that one can tell whether the client was the
//! bottleneck.
//!
//! Each session runs on facteur-fetch's [`Connection`], the connection code of the fetcher: the
//! bench speaks POP3 with the same code and the same rules as everything else in facteur
//! (every byte from the server goes through `facteur_proto::client::ClientSession`). It never
//! holds a message in memory (bodies are skipped as they arrive), never panics on what a server
//! sends (a broken reply is counted as a `protocol` error), and releases a session's read
//! buffer while it idles.
//!
//! # Contract: what this crate must never do
//! - be part of the production binary: it is a test tool, built on its own as
//!   `facteur-bench`; `facteur` does not depend on it (its `--insecure` certificate verifier
//!   that accepts any certificate must never be one flag away in a mail server);
//! - talk to anything but the address it is given (`--host`, `--port`): no discovery, no
//!   other connection; its own tests talk to 127.0.0.1 only;
//! - make a certificate or touch a maildrop: it is a POP3 client, nothing else.
//!
//! # Layout
//! - this file: the options ([`BenchArgs`]), the plan, the TLS setup (a CA file, or
//!   `--insecure`), the session script on a [`Connection`], the workers, and the [`Report`] (a
//!   table or one JSON object); [`run`] is the entry point.
//! - `retr.rs`: `facteur-bench retr`, `raw` and `aes-speed`: one session's RETR of one big
//!   message, timed, and the same client against a sender of the same bytes (workload 3 of
//!   bench/compare.sh), on plain threads with blocking sockets.
//! - `main.rs`: the `facteur-bench` binary: parse the options, run, print the error if any.
//! - its tests that need a server are in `crates/facteur/tests/bench.rs` (the bench against a
//!   facteur server running in the test's process, with the shared test fixtures).

pub mod retr;

use facteur_fetch::{ConnectOptions, Connection, Pop3Error, Reply, Security, Target};
use facteur_proto::client::{ClientError, Listing};
use facteur_proto::command::Command;
use facteur_proto::response::{Code, Status};
use facteur_proto::{MsgNum, Secret};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Octets read from the socket at once; the buffer is dropped while a session idles.
const READ_BUFFER: usize = 16 * 1024;

/// How long a session that got `-ERR` waits for the answer to its QUIT (which lets the server
/// release the maildrop at once instead of noticing a closed connection later).
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// Without `--sessions` or `--duration`, run for this long.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// How the connection is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Plain POP3, no TLS.
    Plain,
    /// Plain POP3, then STLS (RFC 2595) before logging in.
    Stls,
    /// TLS from the first byte (POP3S, RFC 8314).
    Pop3s,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Stls => "stls",
            Mode::Pop3s => "pop3s",
        }
    }

    fn security(self) -> Security {
        match self {
            Mode::Plain => Security::Plaintext,
            Mode::Stls => Security::Starttls,
            Mode::Pop3s => Security::Tls,
        }
    }
}

/// `facteur-bench`: the options of the load generator.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// The server: a host name or an address.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The server's port [default: 110, or 995 with --mode pop3s].
    #[arg(long)]
    pub port: Option<u16>,
    /// plain, stls (STLS before login) or pop3s (implicit TLS).
    #[arg(long, value_enum, default_value_t = Mode::Plain)]
    pub mode: Mode,
    /// A PEM file of the certificates to trust for TLS (a CA, or the server's self-signed one).
    #[arg(long, visible_alias = "ca-file", conflicts_with = "insecure")]
    pub cafile: Option<PathBuf>,
    /// Accept any server certificate (handshake signatures are still checked): for benchmarks
    /// against self-signed certificates, never for real mail.
    #[arg(long)]
    pub insecure: bool,
    /// The TLS server name to send and check [default: --host].
    #[arg(long)]
    pub server_name: Option<String>,
    /// Resume TLS sessions across connections (default: a full handshake every time, the
    /// server's worst case).
    #[arg(long)]
    pub tls_resume: bool,
    /// A file of `user:password` lines; session i logs in as line (i modulo the line count).
    #[arg(long, conflicts_with_all = ["user", "password"])]
    pub users: Option<PathBuf>,
    /// The user to log in as; `%d` is replaced by the session index modulo --user-count.
    #[arg(long, required_unless_present = "users", requires = "password")]
    pub user: Option<String>,
    /// The password (test accounts only: a command line is visible to every local user);
    /// `%d` as in --user.
    #[arg(long)]
    pub password: Option<String>,
    /// The number of users `%d` ranges over. A multiple of --concurrency gives every
    /// concurrent session its own users, so no session waits on another's maildrop lock.
    #[arg(long, default_value_t = 1)]
    pub user_count: u64,
    /// Sessions run at the same time.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Stop after this many sessions in all.
    #[arg(long, conflicts_with = "duration")]
    pub sessions: Option<u64>,
    /// Stop starting sessions after this many seconds [default: 10 without --sessions].
    #[arg(long)]
    pub duration: Option<f64>,
    /// RETR the first K messages of each maildrop (fewer if it has fewer).
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub retr: u32,
    /// Ask for the unique-id listing (UIDL) after STAT.
    #[arg(long)]
    pub uidl: bool,
    /// DELE each message retrieved (the maildrops empty as the bench runs).
    #[arg(long)]
    pub dele: bool,
    /// Hold each session idle this many seconds after its commands, before QUIT (to measure
    /// the server's memory per idle session).
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    pub idle: f64,
    /// Send the RETRs (and DELEs) of a session in one write (RFC 2449 PIPELINING).
    #[arg(long)]
    pub pipelining: bool,
    /// A session that takes longer than this (plus --idle) is abandoned and counted as an error.
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    pub timeout: f64,
    /// Threads of the bench's own runtime.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Why the bench could not run at all (failures of single sessions are counted, not errors).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// Who each session logs in as.
#[derive(Debug, Clone)]
enum Credentials {
    /// `user:password` pairs, used in turn.
    List(Vec<(String, String)>),
    /// Templates where `%d` is the session index modulo `count`.
    Template {
        user: String,
        password: String,
        count: u64,
    },
}

impl Credentials {
    fn for_session(&self, index: u64) -> (String, String) {
        match self {
            Credentials::List(list) => {
                let len = list.len().max(1) as u64;
                let i = usize::try_from(index % len).unwrap_or(0);
                list.get(i).cloned().unwrap_or_default()
            }
            Credentials::Template {
                user,
                password,
                count,
            } => {
                let d = (index % (*count).max(1)).to_string();
                (user.replace("%d", &d), password.replace("%d", &d))
            }
        }
    }

    fn parse_file(text: &str) -> Vec<(String, String)> {
        text.lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once(':'))
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect()
    }
}

/// When to stop starting sessions.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Sessions(u64),
    After(Duration),
}

/// Everything a session needs, shared by all of them.
struct Plan {
    addr: SocketAddr,
    /// `host:port` as given, for the report.
    target: String,
    /// The server, as the connection names it in its errors.
    server: Target,
    /// TLS, no CAPA, the read buffer, the silence allowed.
    connect: ConnectOptions,
    mode: Mode,
    credentials: Credentials,
    concurrency: usize,
    stop: Stop,
    retr: u32,
    uidl: bool,
    dele: bool,
    idle: Duration,
    pipelining: bool,
    timeout: Duration,
}

fn seconds(what: &str, value: f64) -> Result<Duration, BenchError> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| BenchError::Invalid(format!("--{what} must be a number of seconds >= 0")))
}

impl Plan {
    async fn new(args: BenchArgs) -> Result<Self, BenchError> {
        if args.concurrency == 0 {
            return Err(BenchError::Invalid(
                "--concurrency must be at least 1".into(),
            ));
        }
        let credentials = match (&args.users, &args.user, &args.password) {
            (Some(path), _, _) => {
                let text = std::fs::read_to_string(path).map_err(|source| BenchError::Read {
                    path: path.clone(),
                    source,
                })?;
                let list = Credentials::parse_file(&text);
                if list.is_empty() {
                    return Err(BenchError::Invalid(format!(
                        "{}: no user:password line",
                        path.display()
                    )));
                }
                Credentials::List(list)
            }
            (None, Some(user), Some(password)) => Credentials::Template {
                user: user.clone(),
                password: password.clone(),
                count: args.user_count.max(1),
            },
            _ => {
                return Err(BenchError::Invalid(
                    "give --users FILE, or --user and --password".into(),
                ))
            }
        };
        let stop = match (args.sessions, args.duration) {
            (Some(n), _) => Stop::Sessions(n),
            (None, Some(d)) => Stop::After(seconds("duration", d)?),
            (None, None) => Stop::After(DEFAULT_DURATION),
        };
        let port = args.port.unwrap_or(match args.mode {
            Mode::Pop3s => 995,
            Mode::Plain | Mode::Stls => 110,
        });
        let addr = tokio::net::lookup_host((args.host.as_str(), port))
            .await
            .map_err(|e| BenchError::Resolve {
                host: args.host.clone(),
                reason: e.to_string(),
            })?
            .next()
            .ok_or_else(|| BenchError::Resolve {
                host: args.host.clone(),
                reason: "no address".into(),
            })?;
        let (tls, server_name) = match args.mode {
            Mode::Plain => (None, None),
            Mode::Stls | Mode::Pop3s => {
                let name = args
                    .server_name
                    .clone()
                    .unwrap_or_else(|| args.host.clone());
                let name = ServerName::try_from(name.clone())
                    .map_err(|_| BenchError::Tls(format!("invalid server name {name:?}")))?;
                (Some(tls_config(&args)?), Some(name))
            }
        };
        let timeout = seconds("timeout", args.timeout)?;
        Ok(Self {
            addr,
            target: format!("{}:{port}", args.host),
            server: Target {
                host: args.host.clone(),
                port,
                security: args.mode.security(),
                ca_file: args.cafile.clone(),
            },
            connect: ConnectOptions {
                tls,
                server_name,
                // The script needs no capability: CAPA would only cost a round trip.
                capa: false,
                // The whole session is bounded by --timeout too (see `worker`).
                timeout,
                run_deadline: None,
                read_buffer: READ_BUFFER,
                trace: None,
            },
            mode: args.mode,
            credentials,
            concurrency: args.concurrency,
            stop,
            retr: args.retr,
            uidl: args.uidl,
            dele: args.dele,
            idle: seconds("idle", args.idle)?,
            pipelining: args.pipelining,
            timeout,
        })
    }
}

/// A rustls client configuration: TLS 1.2 and 1.3 with aws-lc-rs, trusting `--cafile`, or
/// anything with `--insecure`. Made once, shared by every connection.
fn tls_config(args: &BenchArgs) -> Result<Arc<rustls::ClientConfig>, BenchError> {
    let provider = facteur_tls::provider();
    let builder = facteur_tls::client_builder(provider.clone())
        .map_err(|e| BenchError::Tls(e.to_string()))?;
    let mut config = if args.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let Some(cafile) = &args.cafile else {
            return Err(BenchError::Invalid(
                "TLS needs --cafile FILE (the certificates to trust) or --insecure".into(),
            ));
        };
        let bad = |reason: String| BenchError::Tls(format!("{}: {reason}", cafile.display()));
        let mut roots = rustls::RootCertStore::empty();
        for cert in facteur_tls::read_certificates(cafile).map_err(bad)? {
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    if !args.tls_resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// `--insecure`: any certificate is accepted, but the handshake signatures must still be valid
/// for the key in the certificate the server sent (so the connection is at least with the
/// holder of that key, and the handshake costs what a real one costs).
#[derive(Debug)]
pub(crate) struct AnyCertificate(pub(crate) Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why one session failed; counted by [`Failure::kind`].
#[derive(Debug)]
enum Failure {
    Connect(std::io::Error),
    Tls(String),
    Io(std::io::Error),
    /// The server closed the connection before the script was done.
    Closed,
    Timeout,
    Protocol(ClientError),
    /// `-ERR` (or a `-ERR` greeting).
    Refused {
        command: String,
        status: Status,
    },
    /// A reply that a correct ClientSession cannot produce at this point.
    Unexpected(String),
}

impl Failure {
    /// The error's kind in the report.
    fn kind(&self) -> &'static str {
        match self {
            Failure::Connect(_) => "connect",
            Failure::Tls(_) => "tls",
            Failure::Io(_) => "io",
            Failure::Closed => "closed",
            Failure::Timeout => "timeout",
            Failure::Protocol(_) | Failure::Unexpected(_) => "protocol",
            Failure::Refused { status, .. } => match status.code {
                Some(Code::InUse) => "in-use",
                Some(Code::Auth) => "auth",
                Some(Code::LoginDelay) => "login-delay",
                Some(Code::SysTemp) => "sys-temp",
                Some(Code::SysPerm) => "sys-perm",
                Some(Code::Utf8) => "utf8",
                None => "err",
            },
        }
    }

    fn describe(&self) -> String {
        match self {
            Failure::Connect(e) => format!("connect: {e}"),
            Failure::Tls(e) => format!("TLS: {e}"),
            Failure::Io(e) => format!("I/O: {e}"),
            Failure::Closed => "the server closed the connection".into(),
            Failure::Timeout => "the session timed out".into(),
            Failure::Protocol(e) => e.to_string(),
            Failure::Refused { command, status } => {
                let code = status.code.map(|c| format!(" [{c}]")).unwrap_or_default();
                format!("{command}: -ERR{code} {}", status.text)
            }
            Failure::Unexpected(what) => format!("unexpected {what}"),
        }
    }
}

impl From<Pop3Error> for Failure {
    fn from(e: Pop3Error) -> Self {
        match e {
            Pop3Error::Connect { source, .. } => Failure::Connect(source),
            Pop3Error::Resolve { host, reason } => Failure::Connect(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("cannot resolve {host}: {reason}"),
            )),
            Pop3Error::Tls(e) => Failure::Tls(e),
            Pop3Error::NoStls(status) => Failure::Refused {
                command: "STLS".into(),
                status,
            },
            Pop3Error::Timeout(_) | Pop3Error::RunDeadline(_) | Pop3Error::MessageDeadline(_) => {
                Failure::Timeout
            }
            Pop3Error::Closed => Failure::Closed,
            Pop3Error::Io(e) => Failure::Io(e),
            Pop3Error::Protocol(e) => Failure::Protocol(e),
            Pop3Error::Refused { command, status } => Failure::Refused { command, status },
            e @ (Pop3Error::TooManyLines { .. } | Pop3Error::Unexpected(_)) => {
                Failure::Unexpected(e.to_string())
            }
        }
    }
}

/// Send one command and read its status line, which must be `+OK`.
async fn ok(conn: &mut Connection, cmd: Command) -> Result<Reply, Failure> {
    Ok(conn.command(cmd).await?.ok()?)
}

/// What a worker counts.
#[derive(Debug, Default)]
struct Tally {
    sessions: u64,
    failed: u64,
    messages: u64,
    octets: u64,
    /// Latency of each successful session, in microseconds.
    latencies_us: Vec<u64>,
    errors: BTreeMap<&'static str, (u64, String)>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.sessions += other.sessions;
        self.failed += other.failed;
        self.messages += other.messages;
        self.octets += other.octets;
        self.latencies_us.extend(other.latencies_us);
        for (kind, (n, first)) in other.errors {
            let e = self.errors.entry(kind).or_insert((0, first));
            e.0 += n;
        }
    }

    fn fail(&mut self, f: &Failure) {
        self.failed += 1;
        let e = self
            .errors
            .entry(f.kind())
            .or_insert_with(|| (0, f.describe()));
        e.0 += 1;
    }
}

/// Sessions holding idle now, to say once when all of them are.
struct IdleGauge {
    now: AtomicUsize,
    all: usize,
}

/// One session from connect to the answer to QUIT.
async fn session(
    plan: &Plan,
    index: u64,
    tally: &mut Tally,
    idle: &IdleGauge,
) -> Result<(), Failure> {
    let tcp = TcpStream::connect(plan.addr)
        .await
        .map_err(Failure::Connect)?;
    let mut conn = Connection::connect_with(tcp, &plan.server, &plan.connect).await?;
    let result = script(plan, &mut conn, index, tally, idle).await;
    if let Err(Failure::Refused { .. }) = &result {
        // The connection is in a known state: say goodbye, so the server releases the
        // maildrop now rather than when it notices the connection closed.
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, conn.command(Command::Quit)).await;
    }
    result
}

/// Login, STAT, UIDL, RETR, DELE, idle, QUIT.
async fn script(
    plan: &Plan,
    conn: &mut Connection,
    index: u64,
    tally: &mut Tally,
    idle: &IdleGauge,
) -> Result<(), Failure> {
    let (user, password) = plan.credentials.for_session(index);
    ok(conn, Command::User(user)).await?;
    ok(conn, Command::Pass(Secret::new(password.into_bytes()))).await?;
    let count = match ok(conn, Command::Stat).await?.listing {
        Some(Listing::Drop { count, .. }) => count,
        other => return Err(Failure::Unexpected(format!("STAT reply {other:?}"))),
    };
    if plan.uidl {
        ok(conn, Command::Uidl(None)).await?;
        conn.skip_multiline().await?;
    }
    let messages: Vec<MsgNum> = (1..=plan.retr.min(count)).filter_map(MsgNum::new).collect();
    if plan.pipelining {
        for &n in &messages {
            conn.queue(Command::Retr(n));
        }
        if plan.dele {
            for &n in &messages {
                conn.queue(Command::Dele(n));
            }
        }
        conn.flush().await?;
        for _ in &messages {
            conn.reply().await?.ok()?;
            let octets = conn.skip_multiline().await?;
            tally.messages += 1;
            tally.octets += octets;
        }
        if plan.dele {
            for _ in &messages {
                conn.reply().await?.ok()?;
            }
        }
    } else {
        for &n in &messages {
            ok(conn, Command::Retr(n)).await?;
            let octets = conn.skip_multiline().await?;
            tally.messages += 1;
            tally.octets += octets;
            if plan.dele {
                ok(conn, Command::Dele(n)).await?;
            }
        }
    }
    if !plan.idle.is_zero() {
        // An idle session keeps no read buffer.
        conn.release_buffers();
        let now = idle.now.fetch_add(1, Ordering::Relaxed) + 1;
        if now == idle.all {
            eprintln!("facteur-bench: {now} sessions logged in and idle");
        }
        tokio::time::sleep(plan.idle).await;
        idle.now.fetch_sub(1, Ordering::Relaxed);
    }
    ok(conn, Command::Quit).await?;
    Ok(())
}

/// One of the `concurrency` workers: sessions one after the other until the plan says stop.
/// Worker `w` runs sessions `w`, `w + concurrency`, `w + 2 * concurrency`...: with a user count
/// that is a multiple of the concurrency, two workers never share a user.
async fn worker(
    plan: Arc<Plan>,
    w: usize,
    claimed: Arc<AtomicU64>,
    deadline: Option<Instant>,
    idle: Arc<IdleGauge>,
) -> Tally {
    let mut tally = Tally::default();
    let step = plan.concurrency as u64;
    let mut index = w as u64;
    loop {
        match plan.stop {
            Stop::Sessions(n) if claimed.fetch_add(1, Ordering::Relaxed) >= n => break,
            Stop::After(_) if deadline.is_some_and(|d| Instant::now() >= d) => break,
            _ => {}
        }
        let start = Instant::now();
        let limit = plan.timeout.saturating_add(plan.idle);
        let outcome = tokio::time::timeout(limit, session(&plan, index, &mut tally, &idle))
            .await
            .unwrap_or(Err(Failure::Timeout));
        tally.sessions += 1;
        match outcome {
            Ok(()) => {
                let us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
                tally.latencies_us.push(us);
            }
            Err(f) => tally.fail(&f),
        }
        index = index.saturating_add(step);
    }
    tally
}

/// The figures of a run, as [`run`] printed them.
#[derive(Debug)]
pub struct Report {
    target: String,
    mode: Mode,
    concurrency: usize,
    retr: u32,
    elapsed: Duration,
    tally: Tally,
    cpu: Option<Duration>,
}

/// The user+system CPU time of this process so far (all threads), from /proc/self/stat.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from the ')'.
    let after = stat.get(stat.rfind(')')?.saturating_add(1)..)?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime), counted from 1; `after` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // USER_HZ: the unit of these fields, 100 on every Linux architecture facteur runs on.
    const TICKS_PER_SECOND: u64 = 100;
    let ticks = utime.saturating_add(stime);
    Some(Duration::from_millis(
        ticks.saturating_mul(1000 / TICKS_PER_SECOND),
    ))
}

/// The nearest-rank percentile `p` (0..=100) of sorted values.
fn percentile(sorted: &[u64], p: u64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len() as u64;
    let rank = (p.saturating_mul(n)).div_ceil(100).max(1);
    sorted
        .get(usize::try_from(rank - 1).unwrap_or(usize::MAX))
        .or(sorted.last())
        .copied()
}

impl Report {
    /// Sessions run, successful or not.
    pub fn sessions(&self) -> u64 {
        self.tally.sessions
    }

    /// Messages retrieved (RETR answered and its body read to the end).
    pub fn messages(&self) -> u64 {
        self.tally.messages
    }

    /// Octets of the messages retrieved, un-stuffed.
    pub fn octets(&self) -> u64 {
        self.tally.octets
    }

    /// Failed sessions by kind (`auth`, `in-use`, `protocol`, `timeout`...): their number and
    /// the first one's description.
    pub fn errors(&self) -> impl Iterator<Item = (&'static str, u64, &str)> {
        self.tally
            .errors
            .iter()
            .map(|(kind, (n, first))| (*kind, *n, first.as_str()))
    }

    fn per_second(&self, n: f64) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            n / secs
        } else {
            0.0
        }
    }

    /// Sessions that ran their script to the end.
    pub fn ok_sessions(&self) -> u64 {
        self.tally.sessions - self.tally.failed
    }

    fn latencies_ms(&self) -> (Option<f64>, Option<f64>, Option<f64>) {
        let ms = |us: Option<u64>| us.map(|u| u as f64 / 1000.0);
        let l = &self.tally.latencies_us;
        (
            ms(percentile(l, 50)),
            ms(percentile(l, 99)),
            ms(l.last().copied()),
        )
    }

    fn cpu_percent(&self) -> Option<f64> {
        let secs = self.elapsed.as_secs_f64();
        self.cpu
            .filter(|_| secs > 0.0)
            .map(|c| c.as_secs_f64() / secs * 100.0)
    }

    /// The report for a person.
    pub fn table(&self) -> String {
        let t = &self.tally;
        let (p50, p99, max) = self.latencies_ms();
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
        let mut s = String::new();
        let _ = writeln!(
            s,
            "facteur-bench: {} ({}), concurrency {}, RETR {} per session",
            self.target,
            self.mode.as_str(),
            self.concurrency,
            self.retr
        );
        let _ = writeln!(
            s,
            "  sessions     {} ({} ok, {} failed) in {:.2} s",
            t.sessions,
            self.ok_sessions(),
            t.failed,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(
            s,
            "  sessions/s   {:.1}",
            self.per_second(self.ok_sessions() as f64)
        );
        let _ = writeln!(
            s,
            "  messages     {} ({:.1}/s)",
            t.messages,
            self.per_second(t.messages as f64)
        );
        let _ = writeln!(
            s,
            "  data         {:.2} MB ({:.2} MB/s)",
            t.octets as f64 / 1e6,
            self.per_second(t.octets as f64) / 1e6
        );
        let _ = writeln!(
            s,
            "  latency      p50 {}, p99 {}, max {}",
            ms(p50),
            ms(p99),
            ms(max)
        );
        match (self.cpu, self.cpu_percent()) {
            (Some(cpu), Some(pct)) => {
                let _ = writeln!(
                    s,
                    "  bench CPU    {:.2} s user+sys, {pct:.1}% of one core",
                    cpu.as_secs_f64()
                );
            }
            _ => {
                let _ = writeln!(s, "  bench CPU    unknown (no /proc/self/stat)");
            }
        }
        let _ = writeln!(s, "  errors       {}", t.failed);
        for (kind, (n, first)) in &t.errors {
            let _ = writeln!(s, "    {kind:<12} {n} (first: {first})");
        }
        s
    }

    /// The report as one JSON object on one line (what `--json` prints; bench/compare.sh
    /// reads it).
    pub fn json(&self) -> String {
        let t = &self.tally;
        let (p50, p99, max) = self.latencies_ms();
        let num = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:.3}"));
        let mut errors = String::new();
        for (i, (kind, (n, first))) in t.errors.iter().enumerate() {
            if i > 0 {
                errors.push(',');
            }
            let _ = write!(
                errors,
                "{}:{{\"count\":{n},\"first\":{}}}",
                json_string(kind),
                json_string(first)
            );
        }
        format!(
            "{{\"target\":{},\"mode\":{},\"concurrency\":{},\"retr\":{},\"elapsed_secs\":{:.3},\
             \"sessions\":{},\"sessions_ok\":{},\"sessions_failed\":{},\"sessions_per_sec\":{:.3},\
             \"messages\":{},\"messages_per_sec\":{:.3},\"octets\":{},\"mb_per_sec\":{:.3},\
             \"latency_p50_ms\":{},\"latency_p99_ms\":{},\"latency_max_ms\":{},\
             \"cpu_secs\":{},\"cpu_percent_of_one_core\":{},\"errors\":{},\"errors_by_kind\":{{{errors}}}}}",
            json_string(&self.target),
            json_string(self.mode.as_str()),
            self.concurrency,
            self.retr,
            self.elapsed.as_secs_f64(),
            t.sessions,
            self.ok_sessions(),
            t.failed,
            self.per_second(self.ok_sessions() as f64),
            t.messages,
            self.per_second(t.messages as f64),
            t.octets,
            self.per_second(t.octets as f64) / 1e6,
            num(p50),
            num(p99),
            num(max),
            num(self.cpu.map(|c| c.as_secs_f64())),
            num(self.cpu_percent()),
            t.failed,
        )
    }
}

/// A JSON string literal.
pub(crate) fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

async fn bench(plan: Plan) -> Report {
    let plan = Arc::new(plan);
    let claimed = Arc::new(AtomicU64::new(0));
    let idle = Arc::new(IdleGauge {
        now: AtomicUsize::new(0),
        all: plan.concurrency,
    });
    let start = Instant::now();
    let deadline = match plan.stop {
        Stop::After(d) => start.checked_add(d),
        Stop::Sessions(_) => None,
    };
    let workers: Vec<_> = (0..plan.concurrency)
        .map(|w| {
            tokio::spawn(worker(
                plan.clone(),
                w,
                claimed.clone(),
                deadline,
                idle.clone(),
            ))
        })
        .collect();
    let mut tally = Tally::default();
    for w in workers {
        if let Ok(t) = w.await {
            tally.merge(t);
        }
    }
    let elapsed = start.elapsed();
    tally.latencies_us.sort_unstable();
    Report {
        target: plan.target.clone(),
        mode: plan.mode,
        concurrency: plan.concurrency,
        retr: plan.retr,
        elapsed,
        tally,
        cpu: None,
    }
}

/// Run the bench, print its report on standard output, and return it.
pub fn run(args: BenchArgs) -> Result<Report, BenchError> {
    let threads = args.threads.max(1);
    let json = args.json;
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .map_err(BenchError::Runtime)?;
    let plan = runtime.block_on(Plan::new(args))?;
    let cpu_before = cpu_time();
    let mut report = runtime.block_on(bench(plan));
    report.cpu = cpu_time()
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    if json {
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_spread_sessions_over_users() {
        let c = Credentials::Template {
            user: "user%d".into(),
            password: "pw-%d".into(),
            count: 3,
        };
        assert_eq!(c.for_session(0), ("user0".into(), "pw-0".into()));
        assert_eq!(c.for_session(4), ("user1".into(), "pw-1".into()));
        let list = Credentials::parse_file("# users\na:x:y\r\n\nb:z\nbad line\n");
        assert_eq!(list, [("a".into(), "x:y".into()), ("b".into(), "z".into())]);
        let c = Credentials::List(list);
        assert_eq!(c.for_session(3).0, "b");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), Some(50));
        assert_eq!(percentile(&v, 99), Some(99));
        assert_eq!(percentile(&v, 100), Some(100));
        assert_eq!(percentile(&[7], 99), Some(7));
        assert_eq!(percentile(&[], 50), None);
    }

    #[test]
    fn failures_are_counted_by_kind() {
        let refused = |code| Failure::Refused {
            command: "PASS".into(),
            status: Status {
                ok: false,
                code,
                text: "x".into(),
            },
        };
        assert_eq!(refused(Some(Code::InUse)).kind(), "in-use");
        assert_eq!(refused(None).kind(), "err");
        assert_eq!(
            refused(Some(Code::InUse)).describe(),
            "PASS: -ERR [IN-USE] x"
        );
        let mut t = Tally::default();
        t.fail(&refused(Some(Code::InUse)));
        t.fail(&Failure::Closed);
        t.fail(&refused(Some(Code::InUse)));
        assert_eq!(t.failed, 3);
        assert_eq!(t.errors.get("in-use").map(|e| e.0), Some(2));
        assert_eq!(t.errors.get("closed").map(|e| e.0), Some(1));
    }

    #[test]
    fn cpu_time_reads_proc() {
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(cpu_time().is_some());
        }
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
