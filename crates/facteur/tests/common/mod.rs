//! The end-to-end test harness: a temporary folder with a configuration, a users file and
//! Maildirs; a facteur server on `127.0.0.1:0`, either in-process or as the real binary; and a
//! tiny blocking POP3 client that speaks raw bytes, so tests compare exactly what is on the wire.
//!
//! Every connection goes to 127.0.0.1, every wait is a bounded loop or a read timeout (which only
//! stops a hung test, it is never what a test asserts).

// Each test file includes this module and uses a different part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use facteur::auth::{Authenticator, PasswdDb};
use facteur::config::Config;
use facteur::server::{run, Shared};
use facteur::store::{Delivered, MaildirStore, Store};

/// How long a test waits for one reply before it gives up (a hung server, not a slow one).
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The user every fixture has, with a `{PLAIN}` password.
pub const USER: &str = "alice";
pub const PASSWORD: &str = "secret";
/// A second user, whose password is stored as `{SHA512-CRYPT}`
/// (`openssl passwd -6 -salt saltsalt secret`).
pub const CRYPT_USER: &str = "carol";
pub const CRYPT_PASSWORD: &str = "secret";
const CRYPT_HASH: &str = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";

/// A temporary facteur installation: `facteur.toml`, `users`, and `mail/<user>/Maildir`.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub config: Config,
}

impl Fixture {
    /// The default installation: users alice ({PLAIN}) and carol ({SHA512-CRYPT}), a short
    /// failed-login delay and shutdown grace, logs at info (the binary's "listening" line).
    pub fn new() -> Self {
        Self::with_limits("failed_login_delay_ms = 50\nshutdown_grace_secs = 1\n")
    }

    /// The default installation with this `[limits]` section body.
    pub fn with_limits(limits: &str) -> Self {
        let dir = tempfile::tempdir().expect("create a temporary folder");
        let users =
            format!("{USER}:{{PLAIN}}{PASSWORD}\n{CRYPT_USER}:{{SHA512-CRYPT}}{CRYPT_HASH}\n");
        std::fs::write(dir.path().join("users"), users).expect("write the users file");
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nhostname = \"test.invalid\"\n\n\
             [limits]\n{limits}\n\
             [auth]\npasswd_file = \"users\"\n\n\
             [store]\nmaildir = \"mail/%u/Maildir\"\n\n\
             [log]\nlevel = \"info\"\n"
        );
        let config_path = dir.path().join("facteur.toml");
        std::fs::write(&config_path, &text).expect("write the configuration");
        let config = Config::parse(&text, &config_path).expect("the test configuration parses");
        Self {
            dir,
            config_path,
            config,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The Maildir of `user`, as the configuration's template names it.
    pub fn maildir(&self, user: &str) -> PathBuf {
        self.path().join("mail").join(user).join("Maildir")
    }

    pub fn store(&self) -> MaildirStore {
        MaildirStore::new(self.config.store.maildir.clone())
    }

    /// Deliver `message` to `user` through the store API, as `facteur deliver` does.
    pub fn deliver(&self, user: &str, message: &[u8]) -> Delivered {
        let mut reader: &[u8] = message;
        self.store()
            .deliver(user, None, &mut reader)
            .expect("deliver a message")
    }

    /// The message files of `user`'s Maildir (in `new/` and `cur/`), by file name.
    pub fn message_files(&self, user: &str) -> Vec<String> {
        let mut names = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(self.maildir(user).join(sub)) else {
                continue;
            };
            for e in entries {
                let name = e.expect("read a Maildir entry").file_name();
                let name = name.to_string_lossy().into_owned();
                if !name.starts_with('.') {
                    names.push(name);
                }
            }
        }
        names.sort();
        names
    }

    /// The base names (before `:2,`) of `user`'s message files.
    pub fn message_bases(&self, user: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .message_files(user)
            .iter()
            .map(|n| base_name(n).to_string())
            .collect();
        v.sort();
        v
    }

    /// Start a server in this process, on a tokio runtime of its own.
    pub fn start(&self) -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("start a tokio runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("the listener's address");
        let db = PasswdDb::open(&self.config.auth.passwd_file).expect("open the users file");
        let shared = Arc::new(Shared::new(
            self.config.clone(),
            Arc::new(db) as Arc<dyn Authenticator>,
            Arc::new(self.store()) as Arc<dyn Store>,
        ));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = rt.spawn(run(shared, vec![listener], async move {
            let _ = rx.await;
        }));
        Server {
            addr,
            shutdown: Some(tx),
            task: Some(task),
            rt: Some(rt),
        }
    }
}

/// The base name of a Maildir file name: everything before the first ':'.
pub fn base_name(name: &str) -> &str {
    name.split(':').next().unwrap_or(name)
}

/// The base name of a delivered message's file.
pub fn delivered_base(d: &Delivered) -> String {
    let name = d.path.file_name().expect("a delivered file has a name");
    base_name(&name.to_string_lossy()).to_string()
}

/// A server running in this process; stopped (gracefully) when dropped.
pub struct Server {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Server {
    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    pub fn login(&self, user: &str, password: &str) -> Client {
        Client::login(self.addr, user, password)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let (Some(rt), Some(task)) = (self.rt.take(), self.task.take()) {
            // Bounded: a server that does not stop must not hang the test run.
            let _ =
                rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), task).await });
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// The real `facteur` binary, serving a configuration; killed when dropped.
pub struct BinServer {
    pub child: Child,
    pub addr: SocketAddr,
    /// Everything the server wrote on stderr so far.
    pub stderr: Arc<Mutex<String>>,
}

impl BinServer {
    /// Run `facteur serve --config FILE` and wait for its `listening address=...` log line.
    pub fn start(config: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_facteur"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the facteur binary");
        let stderr = child.stderr.take().expect("the child's stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        {
            let log = log.clone();
            // Keep draining stderr for the server's whole life, so it never blocks on a full pipe.
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let line = strip_ansi(&line);
                    if let Some(addr) = listening_address(&line) {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(addr);
                        }
                    }
                    let mut log = log.lock().expect("the log lock");
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let addr = match rx.recv_timeout(READ_TIMEOUT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "facteur serve did not log its listening address; stderr:\n{}",
                    log.lock().expect("the log lock")
                );
            }
        };
        Self {
            child,
            addr,
            stderr: log,
        }
    }

    /// `kill -9`: no cleanup of any kind.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn login(&self, user: &str, password: &str) -> Client {
        Client::login(self.addr, user, password)
    }
}

impl Drop for BinServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address of a `listening address=127.0.0.1:PORT` log line.
pub fn listening_address(line: &str) -> Option<SocketAddr> {
    if !line.contains("listening") {
        return None;
    }
    let rest = &line[line.find("address=")? + "address=".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A free TCP port on 127.0.0.1 (bound, then released: good enough for a test).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A blocking POP3 client that sends raw bytes and reads raw replies.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    pub greeting: String,
}

impl Client {
    /// Connect and read the greeting (which must be `+OK`).
    pub fn connect(addr: SocketAddr) -> Self {
        assert!(addr.ip().is_loopback(), "tests only talk to 127.0.0.1");
        let stream = TcpStream::connect(addr).expect("connect to the server");
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("set a read timeout");
        stream
            .set_write_timeout(Some(READ_TIMEOUT))
            .expect("set a write timeout");
        let writer = stream.try_clone().expect("clone the stream");
        let mut c = Self {
            reader: BufReader::new(stream),
            writer,
            greeting: String::new(),
        };
        c.greeting = c.line();
        assert!(c.greeting.starts_with("+OK"), "greeting: {:?}", c.greeting);
        c
    }

    /// Connect and log in with USER/PASS; panics unless both are `+OK`.
    pub fn login(addr: SocketAddr, user: &str, password: &str) -> Self {
        let mut c = Self::connect(addr);
        let r = c.cmd(&format!("USER {user}"));
        assert!(r.starts_with("+OK"), "USER {user}: {r:?}");
        let r = c.cmd(&format!("PASS {password}"));
        assert!(r.starts_with("+OK"), "PASS for {user}: {r:?}");
        c
    }

    /// Log in, retrying while the maildrop is still locked by a session that is going away
    /// (the server notices a dropped connection asynchronously). Bounded.
    pub fn login_when_unlocked(addr: SocketAddr, user: &str, password: &str) -> Self {
        for _ in 0..400 {
            let mut c = Self::connect(addr);
            let r = c.cmd(&format!("USER {user}"));
            assert!(r.starts_with("+OK"), "USER {user}: {r:?}");
            let r = c.cmd(&format!("PASS {password}"));
            if r.starts_with("+OK") {
                return c;
            }
            assert!(r.starts_with("-ERR [IN-USE]"), "PASS for {user}: {r:?}");
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("the maildrop of {user} stayed locked");
    }

    /// A second handle on the socket, to write from another thread while this one reads.
    pub fn writer(&self) -> TcpStream {
        self.writer.try_clone().expect("clone the stream")
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("send to the server");
    }

    /// One reply line, CRLF included, as bytes; panics at EOF or on a timeout.
    pub fn raw_line(&mut self) -> Vec<u8> {
        let line = self.try_raw_line().expect("a reply line, got EOF");
        assert!(
            line.ends_with(b"\r\n"),
            "a line without CRLF: {:?}",
            String::from_utf8_lossy(&line)
        );
        line
    }

    /// One line, or `None` at EOF.
    pub fn try_raw_line(&mut self) -> Option<Vec<u8>> {
        let mut line = Vec::new();
        let n = self
            .reader
            .read_until(b'\n', &mut line)
            .expect("read from the server");
        (n > 0).then_some(line)
    }

    /// Every line until the server closes the connection (a reset counts as a close).
    pub fn lines_until_closed(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let mut line = Vec::new();
            match self.reader.read_until(b'\n', &mut line) {
                Ok(0) => return lines,
                Ok(_) => lines.push(String::from_utf8_lossy(&line).into_owned()),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return lines,
                Err(e) => panic!("the server did not close the connection: {e}"),
            }
        }
    }

    /// One reply line as text, CRLF included.
    pub fn line(&mut self) -> String {
        String::from_utf8(self.raw_line()).expect("a UTF-8 status line")
    }

    /// Send one command line (CRLF added) and read one reply line.
    pub fn cmd(&mut self, command: &str) -> String {
        self.send(format!("{command}\r\n").as_bytes());
        self.line()
    }

    /// The body of a multi-line reply whose status line was read: the raw lines, still
    /// dot-stuffed, without the terminating ".\r\n".
    pub fn body(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line = self.raw_line();
            if line == b".\r\n" {
                return body;
            }
            body.extend_from_slice(&line);
        }
    }

    /// Send a command, read its status line and, if `+OK`, its multi-line body (raw).
    pub fn cmd_multi(&mut self, command: &str) -> (String, Vec<u8>) {
        let status = self.cmd(command);
        if status.starts_with("+OK") {
            (status, self.body())
        } else {
            (status, Vec::new())
        }
    }

    /// RETR or TOP: the message as the client gets it after un-stuffing.
    pub fn retrieve(&mut self, command: &str) -> Vec<u8> {
        let (status, body) = self.cmd_multi(command);
        assert!(status.starts_with("+OK"), "{command}: {status:?}");
        unstuff(&body)
    }

    /// STAT as (count, octets).
    pub fn stat(&mut self) -> (usize, u64) {
        let r = self.cmd("STAT");
        let mut it = r
            .strip_prefix("+OK ")
            .unwrap_or_else(|| panic!("STAT: {r:?}"))
            .split_whitespace();
        let n = it.next().and_then(|s| s.parse().ok()).expect("STAT count");
        let size = it.next().and_then(|s| s.parse().ok()).expect("STAT size");
        (n, size)
    }

    /// LIST as (message number, octets).
    pub fn list(&mut self) -> Vec<(u32, u64)> {
        let (status, body) = self.cmd_multi("LIST");
        assert!(status.starts_with("+OK"), "LIST: {status:?}");
        pairs(&body)
            .into_iter()
            .map(|(n, s)| (n, s.parse().expect("a LIST size")))
            .collect()
    }

    /// UIDL as (message number, unique-id).
    pub fn uidl(&mut self) -> Vec<(u32, String)> {
        let (status, body) = self.cmd_multi("UIDL");
        assert!(status.starts_with("+OK"), "UIDL: {status:?}");
        pairs(&body)
    }

    /// QUIT, which must be answered `+OK`, then the server must close the connection.
    pub fn quit(mut self) -> String {
        let r = self.cmd("QUIT");
        assert!(r.starts_with("+OK"), "QUIT: {r:?}");
        self.expect_closed();
        r
    }

    /// The server closes the connection: nothing more is sent.
    pub fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => assert!(
                rest.is_empty(),
                "bytes after the end: {:?}",
                String::from_utf8_lossy(&rest)
            ),
            // A reset after QUIT is a close too.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    }
}

/// The "n value" lines of a LIST or UIDL body.
fn pairs(body: &[u8]) -> Vec<(u32, String)> {
    let text = std::str::from_utf8(body).expect("a UTF-8 listing");
    text.split_terminator("\r\n")
        .map(|l| {
            let (n, v) = l
                .split_once(' ')
                .unwrap_or_else(|| panic!("listing line {l:?}"));
            (n.parse().expect("a message number"), v.to_string())
        })
        .collect()
}

/// Every bare LF turned into CRLF: a stored message as RFC 1939 sends it.
pub fn crlf(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 16);
    for (i, &b) in message.iter().enumerate() {
        if b == b'\n' && (i == 0 || message[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// Dot-stuffing, written here independently of facteur-proto: each line of `wire` (CRLF line
/// ends) that starts with '.' gets one more.
pub fn stuff(wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(wire.len() + 16);
    let mut at_line_start = true;
    for &b in wire {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    out
}

/// Undo dot-stuffing: a line that starts with '.' loses that first '.'.
pub fn unstuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut at_line_start = true;
    for &b in body {
        let skip = at_line_start && b == b'.';
        at_line_start = b == b'\n';
        if !skip {
            out.push(b);
        }
    }
    out
}

/// The number of lines of `body` that start with '.' (each carries one stuffing dot).
pub fn stuffed_lines(body: &[u8]) -> usize {
    let mut n = 0;
    let mut at_line_start = true;
    for &b in body {
        if at_line_start && b == b'.' {
            n += 1;
        }
        at_line_start = b == b'\n';
    }
    n
}

/// A small message with LF line ends, different for each `n`.
pub fn message(n: usize) -> Vec<u8> {
    format!(
        "From: sender{n}@example.org\nTo: alice@example.org\nSubject: message {n}\n\n\
         Hello, this is message {n}.\n.a line that starts with a dot\n..two dots\n.\nBye.\n"
    )
    .into_bytes()
}

/// The header of a message in wire form, with the empty line that ends it (what `TOP n 0`
/// sends).
pub fn wire_header(message: &[u8]) -> Vec<u8> {
    let wire = crlf(message);
    let end = wire
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a message with a header and a body");
    wire[..end + 4].to_vec()
}

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Run a program to completion with `stdin` as its input; returns (status code, stdout, stderr).
/// A program still running after [`READ_TIMEOUT`] is killed (a hung test, not a slow one).
pub fn run_with_input(cmd: &mut Command, stdin: &[u8]) -> (Option<i32>, String, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let mut input = child.stdin.take().expect("the child's stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("the child's stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("the child's stderr")));
    let mut status = None;
    for _ in 0..(READ_TIMEOUT.as_millis() / 10) {
        if let Some(s) = child.try_wait().expect("wait for the child") {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{cmd:?} did not finish");
    };
    let _ = writer.join();
    (
        status.code(),
        stdout.join().expect("the stdout reader"),
        stderr.join().expect("the stderr reader"),
    )
}

/// The `facteur` binary built for these tests.
pub fn facteur() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_facteur"));
    c.env("NO_COLOR", "1");
    c
}
