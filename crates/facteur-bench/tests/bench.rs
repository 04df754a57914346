//! `facteur-bench`, the binary, against a facteur server running in this process: the figures
//! it prints must be exactly what the sessions did.
//!
//! Everything listens on and connects to 127.0.0.1; every wait is bounded. The fixture is a
//! small copy of the one in `crates/facteur/tests/common` (which runs facteur's own binary, not
//! available to this crate's tests).

use facteur::config::Config;
use facteur::server::{run_with_tls, Shared};
use facteur_auth::{Authenticator, PasswdDb};
use facteur_store::{MaildirStore, Store};
use facteur_tls::{TlsFiles, TlsState};
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// The user every fixture has, with a `{PLAIN}` password.
const USER: &str = "alice";

/// How long a run of the bench may take before the test gives up (a hung bench, not a slow one).
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// A temporary facteur installation: `facteur.toml`, `users`, `mail/<user>/Maildir`, and with
/// TLS a self-signed `cert.pem` and `key.pem` for localhost/127.0.0.1.
struct Fixture {
    dir: tempfile::TempDir,
    config: Config,
    tls: Option<TlsFiles>,
}

impl Fixture {
    fn build(tls: bool) -> Self {
        let dir = tempfile::tempdir().expect("create a temporary folder");
        std::fs::write(
            dir.path().join("users"),
            format!("{USER}:{{PLAIN}}secret\n"),
        )
        .expect("write the users file");
        let tls_files = tls.then(|| {
            facteur_tls::write_self_signed(dir.path()).expect("write a self-signed certificate")
        });
        let (listen_tls, tls_section) = if tls {
            (
                "listen_tls = [\"127.0.0.1:0\"]\n",
                "[tls]\ncertificate = \"cert.pem\"\nprivate_key = \"key.pem\"\n\n",
            )
        } else {
            ("", "")
        };
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n{listen_tls}hostname = \"test.invalid\"\nallow_root = true\n\n\
             [limits]\nfailed_login_delay_ms = 50\nshutdown_grace_secs = 1\n\n\
             [auth]\npasswd_file = \"users\"\n\n\
             [store]\nmaildir = \"mail/%u/Maildir\"\n\n\
             {tls_section}\
             [log]\nlevel = \"info\"\n"
        );
        let config_path = dir.path().join("facteur.toml");
        std::fs::write(&config_path, &text).expect("write the configuration");
        let config = Config::parse(&text, &config_path).expect("the test configuration parses");
        Self {
            dir,
            config,
            tls: tls_files,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The certificate of a fixture made with TLS (the CA file clients trust).
    fn cert(&self) -> &Path {
        &self
            .tls
            .as_ref()
            .expect("a fixture with a certificate")
            .certificate
    }

    fn store(&self) -> MaildirStore {
        MaildirStore::new(self.config.store.maildir.clone())
    }

    /// Deliver `message` to `user` through the store API, as `facteur deliver` does.
    fn deliver(&self, user: &str, message: &[u8]) {
        let mut reader: &[u8] = message;
        self.store()
            .deliver(user, None, &mut reader)
            .expect("deliver a message");
    }

    /// The message files of `user`'s Maildir (in `new/` and `cur/`).
    fn message_files(&self, user: &str) -> Vec<PathBuf> {
        let maildir = self.path().join("mail").join(user).join("Maildir");
        let mut files = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(maildir.join(sub)) else {
                continue;
            };
            for e in entries {
                let e = e.expect("read a Maildir entry");
                if !e.file_name().to_string_lossy().starts_with('.') {
                    files.push(e.path());
                }
            }
        }
        files
    }

    /// Start a server in this process, on a tokio runtime of its own: plain POP3 on `addr`
    /// and, with TLS, POP3S on `tls_addr`.
    fn start(&self) -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("start a tokio runtime");
        let bind = || {
            rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .expect("bind 127.0.0.1:0")
        };
        let listener = bind();
        let addr = listener.local_addr().expect("the listener's address");
        let tls_listeners: Vec<_> = self.tls.iter().map(|_| bind()).collect();
        let tls_addr = tls_listeners
            .first()
            .map(|l| l.local_addr().expect("the listener's address"));
        let db = PasswdDb::open(&self.config.auth.passwd_file).expect("open the users file");
        let mut shared = Shared::new(
            self.config.clone(),
            Arc::new(db) as Arc<dyn Authenticator>,
            Arc::new(self.store()) as Arc<dyn Store>,
        );
        if let Some(files) = &self.tls {
            shared = shared.with_tls(TlsState::new(files.clone()).expect("load the certificate"));
        }
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = rt.spawn(run_with_tls(
            Arc::new(shared),
            vec![listener],
            tls_listeners,
            async move {
                let _ = rx.await;
            },
        ));
        Server {
            addr,
            tls_addr,
            shutdown: Some(tx),
            task: Some(task),
            rt: Some(rt),
        }
    }
}

/// A server running in this process; stopped (gracefully) when dropped.
struct Server {
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Server {
    fn pop3s(&self) -> SocketAddr {
        self.tls_addr.expect("a server with a POP3S listener")
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

/// Message `n` of the fixture, with LF line ends (as a local delivery gets it).
fn message(n: usize) -> Vec<u8> {
    format!(
        "From: sender{n}@example.org\nTo: alice@example.org\nSubject: message {n}\n\n\
         Hello, this is message {n}.\n.a line that starts with a dot\n..two dots\n.\nBye.\n"
    )
    .into_bytes()
}

/// LF line ends to CRLF (a CR already before an LF is kept as is).
fn crlf(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 16);
    for (i, &b) in message.iter().enumerate() {
        if b == b'\n' && (i == 0 || message[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// Messages retrieved per session.
const K: usize = 3;
/// Users `bench0`..`bench3`, password `pw0`..`pw3`, each with K + 1 messages.
const USERS: usize = 4;

fn fixture(tls: bool) -> Fixture {
    let f = Fixture::build(tls);
    let path = f.path().join("users");
    let mut users = std::fs::read_to_string(&path).expect("read the users file");
    for i in 0..USERS {
        users.push_str(&format!("bench{i}:{{PLAIN}}pw{i}\n"));
    }
    std::fs::write(&path, users).expect("write the users file");
    for i in 0..USERS {
        for n in 0..=K {
            f.deliver(&format!("bench{i}"), &message(n));
        }
    }
    f
}

/// The octets RETR gives for each of the fixture's messages (all the same length).
fn message_octets() -> u64 {
    let len = crlf(&message(0)).len();
    assert!((0..=K).all(|n| crlf(&message(n)).len() == len));
    len as u64
}

/// Run `facteur-bench ARGS` (bounded by [`RUN_TIMEOUT`]); returns its standard output.
fn bench(args: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_facteur-bench"))
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start facteur-bench");
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
    for _ in 0..(RUN_TIMEOUT.as_millis() / 10) {
        if let Some(s) = child.try_wait().expect("wait for facteur-bench") {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("facteur-bench {args:?} did not finish");
    };
    let stderr = stderr.join().expect("the stderr reader");
    assert_eq!(status.code(), Some(0), "facteur-bench {args:?}: {stderr}");
    stdout.join().expect("the stdout reader")
}

/// The raw value of `key` in the bench's one-line JSON report.
fn field<'a>(json: &'a str, key: &str) -> &'a str {
    let pat = format!("\"{key}\":");
    let start = json
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + pat.len();
    let rest = &json[start..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    &rest[..end]
}

fn count(json: &str, key: &str) -> u64 {
    field(json, key)
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a count in {json}"))
}

/// Checks every run's report: all sessions ok, `messages` RETRs, their octets exactly.
fn assert_clean_run(json: &str, sessions: u64, messages: u64) {
    assert_eq!(count(json, "sessions"), sessions, "{json}");
    assert_eq!(count(json, "sessions_ok"), sessions, "{json}");
    assert_eq!(count(json, "errors"), 0, "{json}");
    assert_eq!(count(json, "messages"), messages, "{json}");
    assert_eq!(count(json, "octets"), messages * message_octets(), "{json}");
    let p50: f64 = field(json, "latency_p50_ms").parse().expect("a p50");
    let p99: f64 = field(json, "latency_p99_ms").parse().expect("a p99");
    assert!(0.0 < p50 && p50 <= p99, "{json}");
    let cpu: f64 = field(json, "cpu_secs")
        .parse()
        .expect("the bench's CPU time");
    assert!(cpu >= 0.0, "{json}");
}

fn user_args(port: u16) -> Vec<String> {
    [
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--user",
        "bench%d",
        "--password",
        "pw%d",
        "--user-count",
        &USERS.to_string(),
        "--json",
    ]
    .map(String::from)
    .to_vec()
}

fn args<'a>(base: &'a [String], more: &[&'a str]) -> Vec<&'a str> {
    base.iter()
        .map(String::as_str)
        .chain(more.iter().copied())
        .collect()
}

#[test]
fn counts_sessions_messages_and_octets_exactly() {
    let f = fixture(false);
    let server = f.start();
    let base = user_args(server.addr.port());
    let json = bench(&args(
        &base,
        &[
            "--concurrency",
            "4",
            "--sessions",
            "12",
            "--retr",
            "3",
            "--uidl",
        ],
    ));
    assert_clean_run(&json, 12, 12 * K as u64);
    // Nothing was deleted.
    for i in 0..USERS {
        assert_eq!(f.message_files(&format!("bench{i}")).len(), K + 1);
    }
}

#[test]
fn pipelined_retr_and_dele_empty_the_maildrops() {
    let f = fixture(false);
    let server = f.start();
    let base = user_args(server.addr.port());
    let json = bench(&args(
        &base,
        &[
            "--concurrency",
            "4",
            "--sessions",
            "4",
            "--retr",
            "3",
            "--pipelining",
            "--dele",
        ],
    ));
    assert_clean_run(&json, 4, 4 * K as u64);
    for i in 0..USERS {
        assert_eq!(f.message_files(&format!("bench{i}")).len(), 1, "bench{i}");
    }
}

#[test]
fn stls_with_a_ca_file_and_pop3s_insecure() {
    let f = fixture(true);
    let server = f.start();
    let cert = f.cert().to_string_lossy().into_owned();
    let base = user_args(server.addr.port());
    let json = bench(&args(
        &base,
        &[
            "--mode",
            "stls",
            "--cafile",
            &cert,
            "--concurrency",
            "2",
            "--sessions",
            "4",
            "--retr",
            "2",
        ],
    ));
    assert_clean_run(&json, 4, 8);

    let base = user_args(server.pop3s().port());
    let json = bench(&args(
        &base,
        &[
            "--mode",
            "pop3s",
            "--insecure",
            "--concurrency",
            "2",
            "--sessions",
            "4",
            "--retr",
            "1",
        ],
    ));
    assert_clean_run(&json, 4, 4);
}

#[test]
fn refused_logins_are_errors_by_kind() {
    let f = fixture(false);
    let server = f.start();
    let port = server.addr.port().to_string();
    let table = bench(&[
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--user",
        USER,
        "--password",
        "wrong",
        "--sessions",
        "2",
        "--retr",
        "1",
    ]);
    assert!(table.contains("sessions     2 (0 ok, 2 failed)"), "{table}");
    assert!(table.contains("messages     0 "), "{table}");
    assert!(table.contains("errors       2\n"), "{table}");
    assert!(
        table.contains("    auth         2 (first: PASS: -ERR [AUTH] "),
        "{table}"
    );
    assert!(table.contains("% of one core"), "{table}");
}
