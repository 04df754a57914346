//! `facteur-bench retr`, `raw` and `aes-speed`: one client for both sides of workload 3's
//! ratios (bench/compare.sh).
//!
//! - `retr`: one session (plain POP3 or POP3S), USER/PASS, then RETR of one message K times;
//!   each answer is read to its terminator with large reads and thrown away. Prints MB/s per
//!   RETR, their median, and the CPU time of the client's own thread.
//! - `raw`: the same client code reading the same wire bytes from a sender in this process
//!   (its own thread) that does nothing else: the file by `sendfile(2)` for plain TCP (or
//!   read + write of 64 KiB blocks with `--copy`), or the bytes from memory encrypted by
//!   rustls with the configuration facteur's servers use (`--tls CERT KEY`: TLS 1.3,
//!   AES-128-GCM). What this client can take at best: the ceiling of `retr`.
//! - `aes-speed`: AES-128-GCM sealing and opening of 16 KiB records on one core, with
//!   aws-lc-rs (the primitive under rustls' records here): whether a POP3S transfer can reach
//!   a given speed at all, when one core encrypts and another decrypts.
//!
//! The client does no work per octet besides the TLS decryption: it counts the octets and
//! keeps the last five to find CRLF.CRLF (which dot-stuffing leaves only at the end of a
//! multi-line answer), across read boundaries. Every socket wait is bounded (two minutes).
//! Everything runs on plain threads with blocking sockets.
//!
//! # Contract
//! As the rest of the bench: only the address given (or 127.0.0.1 for `raw`'s own sender); no
//! certificate is made here (`raw --tls` reads the PEM pair it is given).

use crate::{AnyCertificate, BenchError};
use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The receive buffer: large reads, few system calls.
const BUFFER: usize = 256 * 1024;
/// Room for TLS records beyond [`BUFFER`]: one whole record (16 KiB and its overhead) always
/// fits after a partial one is kept.
const RECORD_ROOM: usize = 16 * 1024 + 512;
/// The plaintext encrypted at once by a TLS sender (16 records).
const TLS_WRITE: usize = 256 * 1024;
/// `--copy`: the block of a raw sender that reads the file and writes it.
const COPY_BLOCK: usize = 64 * 1024;
/// The end of a multi-line answer.
const TERMINATOR: &[u8; 5] = b"\r\n.\r\n";
/// Every wait for the peer.
const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// How `retr` connects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RetrMode {
    /// Plain POP3.
    Plain,
    /// TLS from the first byte (POP3S).
    Pop3s,
}

/// `facteur-bench retr`: RETR one message K times in one session.
#[derive(clap::Args, Debug, Clone)]
pub struct RetrArgs {
    /// The server: a host name or an address.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The server's port [default: 110, or 995 with --mode pop3s].
    #[arg(long)]
    pub port: Option<u16>,
    /// plain or pop3s (implicit TLS).
    #[arg(long, value_enum, default_value_t = RetrMode::Plain)]
    pub mode: RetrMode,
    /// Accept any server certificate (handshake signatures are still checked).
    #[arg(long, conflicts_with = "cafile")]
    pub insecure: bool,
    /// A PEM file of the certificates to trust for TLS.
    #[arg(long, visible_alias = "ca-file")]
    pub cafile: Option<PathBuf>,
    /// The TLS server name [default: --host].
    #[arg(long)]
    pub server_name: Option<String>,
    #[arg(long)]
    pub user: String,
    /// The password (test accounts only: a command line is visible to every local user).
    #[arg(long)]
    pub password: String,
    /// The message number to retrieve.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub message: u32,
    #[command(flatten)]
    pub rounds: Rounds,
}

/// How many transfers `retr` and `raw` make (RETRs, or sends of the wire bytes), and how
/// they print them.
#[derive(clap::Args, Debug, Clone)]
pub struct Rounds {
    /// Transfers measured.
    #[arg(long, default_value_t = 5, value_name = "K")]
    pub runs: u32,
    /// Transfers first, not measured.
    #[arg(long, default_value_t = 0)]
    pub warmup: u32,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `facteur-bench raw`: the same client against a sender of the wire bytes.
#[derive(clap::Args, Debug, Clone)]
pub struct RawArgs {
    /// The message in its wire form, terminating line included (what RETR sends after +OK).
    #[arg(long)]
    pub wire: PathBuf,
    /// Encrypt with rustls as facteur's servers do (TLS 1.3, AES-128-GCM), with this
    /// certificate and key (PEM).
    #[arg(long, num_args = 2, value_names = ["CERT", "KEY"])]
    pub tls: Option<Vec<PathBuf>>,
    /// Plain TCP: read and write 64 KiB blocks instead of sendfile(2).
    #[arg(long, conflicts_with = "tls")]
    pub copy: bool,
    #[command(flatten)]
    pub rounds: Rounds,
}

/// `facteur-bench aes-speed`: AES-128-GCM on one core.
#[derive(clap::Args, Debug, Clone)]
pub struct AesArgs {
    /// MiB sealed, then opened.
    #[arg(long, default_value_t = 64)]
    pub mib: usize,
    /// Octets of plaintext per record.
    #[arg(long, default_value_t = 16 * 1024)]
    pub record: usize,
    /// Passes over the buffer; the fastest is reported.
    #[arg(long, default_value_t = 3)]
    pub passes: u32,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One measured transfer.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub secs: f64,
    /// Octets after the status line, the terminating line included.
    pub octets: u64,
    /// CPU time of the client's thread during the transfer.
    pub cpu_secs: f64,
}

impl Run {
    pub fn mb_per_sec(&self) -> f64 {
        self.octets as f64 / self.secs / 1e6
    }
}

/// What `retr` or `raw` measured.
#[derive(Debug, Clone)]
pub struct TransferReport {
    pub what: String,
    /// The TLS version and cipher suite, for TLS.
    pub cipher: Option<String>,
    pub runs: Vec<Run>,
}

impl TransferReport {
    pub fn median_mb_per_sec(&self) -> Option<f64> {
        let mut v: Vec<f64> = self.runs.iter().map(Run::mb_per_sec).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        match n {
            0 => None,
            _ if n % 2 == 1 => v.get(n / 2).copied(),
            _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    }

    pub fn cpu_secs(&self) -> f64 {
        self.runs.iter().map(|r| r.cpu_secs).sum()
    }

    pub fn octets(&self) -> u64 {
        self.runs.iter().map(|r| r.octets).sum()
    }

    pub fn json(&self) -> String {
        let runs: Vec<String> = self
            .runs
            .iter()
            .map(|r| {
                format!(
                    "{{\"secs\":{},\"octets\":{},\"cpu_secs\":{}}}",
                    r.secs, r.octets, r.cpu_secs
                )
            })
            .collect();
        let cipher = match &self.cipher {
            Some(c) => crate::json_string(c),
            None => "null".into(),
        };
        let median = self
            .median_mb_per_sec()
            .map_or("null".into(), |m| format!("{m}"));
        format!(
            "{{\"what\":{},\"cipher\":{cipher},\"runs\":[{}],\"median_mb_per_sec\":{median},\
             \"client_cpu_secs\":{}}}",
            crate::json_string(&self.what),
            runs.join(","),
            self.cpu_secs()
        )
    }

    pub fn table(&self) -> String {
        let mut out = self.what.clone();
        if let Some(c) = &self.cipher {
            out.push_str(&format!(" ({c})"));
        }
        out.push('\n');
        for (i, r) in self.runs.iter().enumerate() {
            out.push_str(&format!(
                "  run {}: {} octets in {:.4} s: {:.0} MB/s, client CPU {:.4} s ({:.0}% of the time)\n",
                i + 1,
                r.octets,
                r.secs,
                r.mb_per_sec(),
                r.cpu_secs,
                100.0 * r.cpu_secs / r.secs
            ));
        }
        if let Some(m) = self.median_mb_per_sec() {
            out.push_str(&format!("  median {m:.0} MB/s\n"));
        }
        let secs: f64 = self.runs.iter().map(|r| r.secs).sum();
        out.push_str(&format!(
            "  client CPU {:.3} s of {:.3} s ({:.0}% of one core)\n",
            self.cpu_secs(),
            secs,
            if secs > 0.0 {
                100.0 * self.cpu_secs() / secs
            } else {
                0.0
            }
        ));
        out
    }

    fn print(&self, json: bool) {
        if json {
            println!("{}", self.json());
        } else {
            print!("{}", self.table());
        }
    }
}

/// The CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

fn eof(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, what.to_string())
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// A byte stream the client reads plaintext from and writes commands to.
trait Channel {
    /// Waits for plaintext, then gives `f` what arrived, in one or more slices.
    fn recv(&mut self, f: &mut dyn FnMut(&[u8])) -> io::Result<()>;
    fn send(&mut self, data: &[u8]) -> io::Result<()>;
    /// The TLS version and cipher suite, for TLS.
    fn cipher(&self) -> Option<String>;
}

/// Plain TCP.
struct Plain {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Plain {
    fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            buf: vec![0; BUFFER],
        }
    }
}

impl Channel for Plain {
    fn recv(&mut self, f: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        let n = loop {
            match self.tcp.read(&mut self.buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => break r?,
            }
        };
        if n == 0 {
            return Err(eof("the peer closed the connection"));
        }
        f(self.buf.get(..n).unwrap_or_default());
        Ok(())
    }

    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.tcp.write_all(data)
    }

    fn cipher(&self) -> Option<String> {
        None
    }
}

/// rustls' two unbuffered connections, driven by the same loop.
trait Unbuffered {
    type Data;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn common(&self) -> &rustls::CommonState;
}

impl Unbuffered for UnbufferedClientConnection {
    type Data = rustls::client::ClientConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn common(&self) -> &rustls::CommonState {
        self
    }
}

impl Unbuffered for UnbufferedServerConnection {
    type Data = rustls::server::ServerConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn common(&self) -> &rustls::CommonState {
        self
    }
}

/// What [`Tls::pump`] is asked to do.
enum Goal<'a> {
    /// Complete the handshake.
    Handshake,
    /// Deliver the plaintext of every complete record received (at least one).
    Read,
    /// Encrypt and send this.
    Write(&'a [u8]),
}

/// TLS over a blocking TCP stream, with buffers of our own: TLS records read
/// [`BUFFER`] octets at a time, one output buffer reused for every write.
struct Tls<C> {
    tcp: TcpStream,
    conn: C,
    /// Records received: `incoming[..in_used]`.
    incoming: Vec<u8>,
    in_used: usize,
    /// Records to send: `outgoing[..out_len]`; the rest is room already allocated.
    outgoing: Vec<u8>,
    out_len: usize,
    /// Plaintext that came with the end of the handshake (a client's first command may share
    /// a TCP segment with its Finished): the first thing [`Channel::recv`] gives.
    held: Vec<u8>,
}

impl<C: Unbuffered> Tls<C> {
    fn new(tcp: TcpStream, conn: C) -> io::Result<Self> {
        let mut tls = Self {
            tcp,
            conn,
            incoming: vec![0; BUFFER + RECORD_ROOM],
            in_used: 0,
            outgoing: Vec::new(),
            out_len: 0,
            held: Vec::new(),
        };
        let mut held = Vec::new();
        tls.pump(&mut |d| held.extend_from_slice(d), Goal::Handshake)?;
        tls.held = held;
        Ok(tls)
    }

    /// Drive the connection toward `goal`, giving `f` the plaintext received.
    fn pump(&mut self, f: &mut dyn FnMut(&[u8]), goal: Goal<'_>) -> io::Result<()> {
        let Self {
            tcp,
            conn,
            incoming,
            in_used,
            outgoing,
            out_len,
            ..
        } = self;
        let mut delivered = false;
        loop {
            let UnbufferedStatus { discard, state } =
                conn.process(incoming.get_mut(..*in_used).unwrap_or_default());
            let state = state.map_err(|e| invalid(e.to_string()))?;
            let mut need_input = false;
            let mut done = false;
            match state {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = record.map_err(|e| invalid(e.to_string()))?;
                        f(record.payload);
                        delivered = true;
                    }
                }
                ConnectionState::EncodeTlsData(mut data) => {
                    let need = match data.encode(&mut []) {
                        Err(EncodeError::InsufficientSize(e)) => e.required_size,
                        _ => 0,
                    };
                    let room = room(outgoing, *out_len, need);
                    *out_len += data.encode(room).map_err(|e| invalid(e.to_string()))?;
                }
                ConnectionState::TransmitTlsData(data) => {
                    tcp.write_all(outgoing.get(..*out_len).unwrap_or_default())?;
                    *out_len = 0;
                    data.done();
                }
                ConnectionState::BlockedHandshake => need_input = true,
                ConnectionState::WriteTraffic(mut traffic) => match goal {
                    Goal::Handshake => {
                        // The server counts the handshake done once it has the client's
                        // Finished (its ticket goes before any data).
                        done = !conn.common().is_handshaking();
                        need_input = !done;
                    }
                    Goal::Read => {
                        done = delivered;
                        need_input = !done;
                    }
                    Goal::Write(data) => {
                        // One output buffer for every chunk, allocated once.
                        for chunk in data.chunks(TLS_WRITE) {
                            let need = match traffic.encrypt(chunk, &mut []) {
                                Err(EncryptError::InsufficientSize(e)) => e.required_size,
                                Err(e) => return Err(invalid(e.to_string())),
                                Ok(_) => 0,
                            };
                            let room = room(outgoing, 0, need);
                            let n = traffic
                                .encrypt(chunk, room)
                                .map_err(|e| invalid(e.to_string()))?;
                            tcp.write_all(outgoing.get(..n).unwrap_or_default())?;
                        }
                        done = true;
                    }
                },
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    return Err(eof("the peer closed the TLS session"))
                }
                _ => return Err(invalid("unexpected TLS connection state")),
            }
            // Drop the records processed; keep a partial one at the start.
            let discard = discard.min(*in_used);
            if discard > 0 {
                incoming.copy_within(discard..*in_used, 0);
                *in_used -= discard;
            }
            if done {
                return Ok(());
            }
            if need_input {
                let space = incoming.get_mut(*in_used..).unwrap_or_default();
                if space.is_empty() {
                    return Err(invalid("a TLS record larger than the buffer"));
                }
                let n = loop {
                    match tcp.read(space) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        r => break r?,
                    }
                };
                if n == 0 {
                    return Err(eof("the peer closed the connection"));
                }
                *in_used += n;
            }
        }
    }

    fn cipher_of(&self) -> Option<String> {
        let c = self.conn.common();
        Some(format!(
            "{:?} {:?}",
            c.protocol_version()?,
            c.negotiated_cipher_suite()?.suite()
        ))
    }
}

impl<C: Unbuffered> Channel for Tls<C> {
    fn recv(&mut self, f: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        if !self.held.is_empty() {
            f(&std::mem::take(&mut self.held));
            return Ok(());
        }
        self.pump(f, Goal::Read)
    }

    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.pump(&mut |_| {}, Goal::Write(data))
    }

    fn cipher(&self) -> Option<String> {
        self.cipher_of()
    }
}

/// `need` octets of room in `buf` from `at`, growing it (zero-filled) only when too small:
/// a buffer reused for every write is filled once.
fn room(buf: &mut Vec<u8>, at: usize, need: usize) -> &mut [u8] {
    let end = at + need;
    if buf.len() < end {
        buf.resize(end, 0);
    }
    buf.get_mut(at..end).unwrap_or_default()
}

/// The client: lines for the status replies, and multi-line answers counted, not kept.
struct Client<'a> {
    ch: &'a mut dyn Channel,
    /// Received and not yet taken as a line.
    pending: Vec<u8>,
}

impl Client<'_> {
    fn line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(at) = self.pending.windows(2).position(|w| w == b"\r\n") {
                let rest = self.pending.split_off(at + 2);
                let mut line = std::mem::replace(&mut self.pending, rest);
                line.truncate(at);
                return Ok(line);
            }
            if self.pending.len() > 64 * 1024 {
                return Err(invalid("a status line longer than 64 KiB"));
            }
            let pending = &mut self.pending;
            self.ch.recv(&mut |d| pending.extend_from_slice(d))?;
        }
    }

    fn ok(&mut self, what: &str) -> io::Result<()> {
        let line = self.line()?;
        if line.starts_with(b"+OK") {
            Ok(())
        } else {
            Err(invalid(format!(
                "{what}: {}",
                String::from_utf8_lossy(&line)
            )))
        }
    }

    /// The rest of a multi-line answer whose status line was read (or of a raw transfer):
    /// its octets, up to and including the terminating line.
    fn body(&mut self) -> io::Result<u64> {
        // The status line ended with CRLF: an empty answer is ".CRLF".
        let mut tail = Tail(*b"\0\0\0\r\n");
        let mut octets = 0u64;
        let mut after_end = false;
        let pending = std::mem::take(&mut self.pending);
        if !pending.is_empty() {
            octets += pending.len() as u64;
            tail.push(&pending);
        }
        while !tail.is_end() {
            let mut ended = false;
            self.ch.recv(&mut |d| {
                if ended {
                    after_end = true;
                }
                octets += d.len() as u64;
                tail.push(d);
                ended = tail.is_end();
            })?;
        }
        if after_end {
            return Err(invalid("octets after the terminating line"));
        }
        Ok(octets)
    }
}

/// The last five octets seen.
struct Tail([u8; 5]);

impl Tail {
    fn push(&mut self, d: &[u8]) {
        if let Some(last) = d.len().checked_sub(5).and_then(|at| d.get(at..)) {
            self.0.copy_from_slice(last);
        } else {
            let mut t = self.0.to_vec();
            t.extend_from_slice(d);
            let at = t.len() - 5;
            self.0.copy_from_slice(&t[at..]);
        }
    }

    fn is_end(&self) -> bool {
        &self.0 == TERMINATOR
    }
}

/// Time `command` then its answer (after a status line if `status`), `warmup + runs` times.
fn transfers(
    client: &mut Client<'_>,
    command: &[u8],
    status: bool,
    warmup: u32,
    runs: u32,
) -> io::Result<Vec<Run>> {
    let mut out = Vec::new();
    for i in 0..warmup + runs {
        let cpu = thread_cpu();
        let t0 = Instant::now();
        client.ch.send(command)?;
        if status {
            client.ok("RETR")?;
        }
        let octets = client.body()?;
        let secs = t0.elapsed().as_secs_f64();
        let cpu_secs = thread_cpu().saturating_sub(cpu).as_secs_f64();
        if i >= warmup {
            out.push(Run {
                secs,
                octets,
                cpu_secs,
            });
        }
    }
    Ok(out)
}

fn connect(host: &str, port: u16) -> Result<TcpStream, BenchError> {
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| BenchError::Resolve {
            host: host.into(),
            reason: e.to_string(),
        })?
        .next()
        .ok_or_else(|| BenchError::Resolve {
            host: host.into(),
            reason: "no address".into(),
        })?;
    let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| io_error("connect", e))?;
    setup_socket(&tcp).map_err(|e| io_error("connect", e))?;
    Ok(tcp)
}

fn setup_socket(tcp: &TcpStream) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))
}

fn io_error(what: &str, e: io::Error) -> BenchError {
    BenchError::Invalid(format!("{what}: {e}"))
}

fn client_tls(
    insecure: bool,
    cafile: Option<&PathBuf>,
) -> Result<Arc<rustls::ClientConfig>, BenchError> {
    let provider = facteur_tls::provider();
    let builder = facteur_tls::client_builder(provider.clone())
        .map_err(|e| BenchError::Tls(e.to_string()))?;
    let mut config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let Some(cafile) = cafile else {
            return Err(BenchError::Invalid(
                "TLS needs --cafile FILE or --insecure".into(),
            ));
        };
        let bad = |reason: String| BenchError::Tls(format!("{}: {reason}", cafile.display()));
        let mut roots = rustls::RootCertStore::empty();
        for cert in facteur_tls::read_certificates(cafile).map_err(bad)? {
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

fn tls_client(
    tcp: TcpStream,
    config: Arc<rustls::ClientConfig>,
    name: &str,
) -> Result<Tls<UnbufferedClientConnection>, BenchError> {
    let name = ServerName::try_from(name.to_string())
        .map_err(|_| BenchError::Tls(format!("invalid server name {name:?}")))?;
    let conn = UnbufferedClientConnection::new(config, name)
        .map_err(|e| BenchError::Tls(e.to_string()))?;
    Tls::new(tcp, conn).map_err(|e| BenchError::Tls(e.to_string()))
}

/// `facteur-bench retr`: prints the report and returns it.
pub fn retr(args: RetrArgs) -> Result<TransferReport, BenchError> {
    let port = args.port.unwrap_or(match args.mode {
        RetrMode::Plain => 110,
        RetrMode::Pop3s => 995,
    });
    let tcp = connect(&args.host, port)?;
    let mut channel: Box<dyn Channel> = match args.mode {
        RetrMode::Plain => Box::new(Plain::new(tcp)),
        RetrMode::Pop3s => {
            let config = client_tls(args.insecure, args.cafile.as_ref())?;
            let name = args.server_name.as_deref().unwrap_or(&args.host);
            Box::new(tls_client(tcp, config, name)?)
        }
    };
    let mut client = Client {
        ch: channel.as_mut(),
        pending: Vec::new(),
    };
    let session = |client: &mut Client<'_>| -> io::Result<Vec<Run>> {
        client.ok("greeting")?;
        client
            .ch
            .send(format!("USER {}\r\n", args.user).as_bytes())?;
        client.ok("USER")?;
        client
            .ch
            .send(format!("PASS {}\r\n", args.password).as_bytes())?;
        client.ok("PASS")?;
        let command = format!("RETR {}\r\n", args.message);
        let runs = transfers(
            client,
            command.as_bytes(),
            true,
            args.rounds.warmup,
            args.rounds.runs,
        )?;
        client.ch.send(b"QUIT\r\n")?;
        // The answer to QUIT, if it comes (the figures are taken).
        let _ = client.line();
        Ok(runs)
    };
    let runs = session(&mut client).map_err(|e| io_error("retr", e))?;
    let report = TransferReport {
        what: format!(
            "RETR {} from {}:{port} ({})",
            args.message,
            args.host,
            match args.mode {
                RetrMode::Plain => "plain",
                RetrMode::Pop3s => "pop3s",
            }
        ),
        cipher: channel.cipher(),
        runs,
    };
    report.print(args.rounds.json);
    Ok(report)
}

/// The sender of `raw`: one connection; the whole wire form for each line received.
fn raw_sender(
    listener: TcpListener,
    wire: PathBuf,
    tls: Option<Arc<rustls::ServerConfig>>,
    copy: bool,
) -> io::Result<()> {
    let (tcp, _) = listener.accept()?;
    drop(listener);
    setup_socket(&tcp)?;
    let mut file = std::fs::File::open(&wire)?;
    let len = file.metadata()?.len();
    // Waits for one request line; false at the end of the connection.
    fn request(ch: &mut dyn Channel) -> io::Result<bool> {
        let mut seen = false;
        while !seen {
            match ch.recv(&mut |d| seen |= d.contains(&b'\n')) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
    match tls {
        Some(config) => {
            let mut data = Vec::new();
            file.read_to_end(&mut data)?;
            let conn = UnbufferedServerConnection::new(config).map_err(io::Error::other)?;
            let mut tls = Tls::new(tcp, conn)?;
            while request(&mut tls)? {
                tls.send(&data)?;
            }
        }
        None => {
            let mut plain = Plain::new(tcp);
            let mut block = vec![0u8; COPY_BLOCK];
            while request(&mut plain)? {
                if copy {
                    let mut at = 0u64;
                    while at < len {
                        let n = std::os::unix::fs::FileExt::read_at(&file, &mut block, at)?;
                        if n == 0 {
                            return Err(eof("the wire file shrank"));
                        }
                        plain.tcp.write_all(block.get(..n).unwrap_or_default())?;
                        at += n as u64;
                    }
                } else {
                    let mut at = 0u64;
                    while at < len {
                        let chunk = usize::try_from(len - at).unwrap_or(usize::MAX);
                        let n = rustix::fs::sendfile(&plain.tcp, &file, Some(&mut at), chunk)?;
                        if n == 0 {
                            return Err(eof("the wire file shrank"));
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// `facteur-bench raw`: prints the report and returns it.
pub fn raw(args: RawArgs) -> Result<TransferReport, BenchError> {
    let server = match &args.tls {
        Some(files) => {
            let [cert, key] = files.as_slice() else {
                return Err(BenchError::Invalid("--tls takes CERT and KEY".into()));
            };
            let files = facteur_tls::TlsFiles {
                certificate: cert.clone(),
                private_key: key.clone(),
                client_ca: None,
            };
            Some(facteur_tls::load(&files).map_err(|e| BenchError::Tls(e.to_string()))?)
        }
        None => None,
    };
    if !args.wire.is_file() {
        return Err(BenchError::Invalid(format!(
            "{}: not a file",
            args.wire.display()
        )));
    }
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| io_error("bind", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| io_error("bind", e))?
        .port();
    let tls = server.is_some();
    let wire = args.wire.clone();
    let copy = args.copy;
    let sender = std::thread::spawn(move || raw_sender(listener, wire, server, copy));
    let tcp = connect("127.0.0.1", port)?;
    let mut channel: Box<dyn Channel> = if tls {
        let config = client_tls(true, None)?;
        Box::new(tls_client(tcp, config, "localhost")?)
    } else {
        Box::new(Plain::new(tcp))
    };
    let mut client = Client {
        ch: channel.as_mut(),
        pending: Vec::new(),
    };
    let runs = transfers(
        &mut client,
        b"SEND\r\n",
        false,
        args.rounds.warmup,
        args.rounds.runs,
    );
    let cipher = channel.cipher();
    // The end of the connection ends the sender.
    drop(channel);
    let sent = sender
        .join()
        .map_err(|_| BenchError::Invalid("the raw sender panicked".into()))?;
    let runs = runs.map_err(|e| io_error("raw", e))?;
    sent.map_err(|e| io_error("raw sender", e))?;
    let report = TransferReport {
        what: format!(
            "raw {} of {}",
            if tls {
                "TLS copy from memory"
            } else if args.copy {
                "read + write copy"
            } else {
                "sendfile copy"
            },
            args.wire.display()
        ),
        cipher,
        runs,
    };
    report.print(args.rounds.json);
    Ok(report)
}

/// What `aes-speed` measured, in MB/s (10^6 octets of plaintext per second).
#[derive(Debug, Clone, Copy)]
pub struct AesReport {
    pub seal_mb_per_sec: f64,
    pub open_mb_per_sec: f64,
    pub record: usize,
    pub octets: usize,
}

impl AesReport {
    pub fn json(&self) -> String {
        format!(
            "{{\"cipher\":\"AES-128-GCM\",\"library\":\"aws-lc-rs\",\"record\":{},\"octets\":{},\
             \"seal_mb_per_sec\":{},\"open_mb_per_sec\":{}}}",
            self.record, self.octets, self.seal_mb_per_sec, self.open_mb_per_sec
        )
    }
}

/// `facteur-bench aes-speed`: AES-128-GCM (aws-lc-rs) on this thread, records sealed in place
/// with a TLS 1.3 nonce and header as AAD, then opened; the fastest pass of each.
pub fn aes_speed(args: AesArgs) -> Result<AesReport, BenchError> {
    use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, NONCE_LEN};
    if args.record == 0 || args.record > 16 * 1024 || args.mib == 0 {
        return Err(BenchError::Invalid(
            "--record must be 1 to 16384 octets, --mib at least 1".into(),
        ));
    }
    let key = UnboundKey::new(&AES_128_GCM, &[0x42; 16])
        .map(LessSafeKey::new)
        .map_err(|_| BenchError::Invalid("AES-128-GCM key".into()))?;
    let octets = args.mib * 1024 * 1024;
    let records = octets.div_ceil(args.record);
    let mut data: Vec<Vec<u8>> = (0..records)
        .map(|i| vec![(i % 251) as u8; args.record])
        .collect();
    let mut tags = Vec::with_capacity(records);
    let nonce = |seq: usize| {
        let mut n = [0u8; NONCE_LEN];
        n[4..].copy_from_slice(&(seq as u64).to_be_bytes());
        Nonce::assume_unique_for_key(n)
    };
    let aad = |len: usize| {
        let len = u16::try_from(len + 16).unwrap_or(u16::MAX).to_be_bytes();
        [23, 3, 3, len[0], len[1]]
    };
    let mut best_seal = f64::INFINITY;
    let mut best_open = f64::INFINITY;
    for _ in 0..args.passes.max(1) {
        tags.clear();
        let t0 = thread_cpu();
        for (seq, record) in data.iter_mut().enumerate() {
            let tag = key
                .seal_in_place_separate_tag(nonce(seq), Aad::from(aad(record.len())), record)
                .map_err(|_| BenchError::Invalid("seal".into()))?;
            tags.push(tag);
        }
        best_seal = best_seal.min(thread_cpu().saturating_sub(t0).as_secs_f64());
        let t0 = thread_cpu();
        for (seq, (record, tag)) in data.iter_mut().zip(&tags).enumerate() {
            let len = record.len();
            record.extend_from_slice(tag.as_ref());
            key.open_in_place(nonce(seq), Aad::from(aad(len)), record)
                .map_err(|_| BenchError::Invalid("open: the tag does not match".into()))?;
            record.truncate(len);
        }
        best_open = best_open.min(thread_cpu().saturating_sub(t0).as_secs_f64());
    }
    let mb = (records * args.record) as f64 / 1e6;
    let report = AesReport {
        seal_mb_per_sec: mb / best_seal,
        open_mb_per_sec: mb / best_open,
        record: args.record,
        octets: records * args.record,
    };
    if args.json {
        println!("{}", report.json());
    } else {
        println!(
            "AES-128-GCM (aws-lc-rs), {} octet records, {} MiB, one core: seal {:.0} MB/s, open {:.0} MB/s",
            args.record, args.mib, report.seal_mb_per_sec, report.open_mb_per_sec
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_terminator_is_found_across_reads() {
        let body = b"line\r\n..dot\r\n.\r\n";
        for split in 0..body.len() {
            let mut t = Tail(*b"\0\0\0\r\n");
            let (a, b) = body.split_at(split);
            t.push(a);
            let early = t.is_end();
            for &byte in b {
                assert!(!early || b.is_empty());
                t.push(&[byte]);
            }
            assert!(t.is_end(), "split at {split}");
        }
        // An empty answer: the status line's CRLF, then ".CRLF".
        let mut t = Tail(*b"\0\0\0\r\n");
        t.push(b".\r\n");
        assert!(t.is_end());
        let mut t = Tail(*b"\0\0\0\r\n");
        t.push(b"..\r\n");
        assert!(!t.is_end());
    }

    #[test]
    fn medians() {
        let run = |mb: f64| Run {
            secs: 1.0,
            octets: (mb * 1e6) as u64,
            cpu_secs: 0.0,
        };
        let mut r = TransferReport {
            what: "x".into(),
            cipher: None,
            runs: vec![run(3.0), run(1.0), run(2.0)],
        };
        assert_eq!(r.median_mb_per_sec(), Some(2.0));
        r.runs.push(run(4.0));
        assert_eq!(r.median_mb_per_sec(), Some(2.5));
        assert!(r.json().contains("\"median_mb_per_sec\":2.5"));
    }

    #[test]
    fn aes_speed_seals_and_opens() {
        let r = aes_speed(AesArgs {
            mib: 1,
            record: 16 * 1024,
            passes: 1,
            json: true,
        })
        .unwrap();
        assert!(r.seal_mb_per_sec > 0.0 && r.open_mb_per_sec > 0.0);
    }
}
