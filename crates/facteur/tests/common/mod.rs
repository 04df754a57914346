//! The end-to-end test harness: a temporary folder with a configuration, a users file and
//! Maildirs; a facteur server on `127.0.0.1:0`, either in-process or as the real binary; and a
//! tiny blocking POP3 client that speaks raw bytes, so tests compare exactly what is on the wire.
//!
//! Every fixture has a store backend ([`Backend`]): Maildir, or PostgreSQL in a fresh database
//! of its own ([`Fixture::on`]). [`both_backends!`] makes each test of a file twice,
//! `maildir::NAME` and `postgresql::NAME`, so that a failure names its backend.
//!
//! Every connection goes to 127.0.0.1, every wait is a bounded loop or a read timeout (which only
//! stops a hung test, it is never what a test asserts).

// Each test file includes this module and uses a different part of it.
#![allow(dead_code)]

pub mod haproxy;
#[path = "../../../facteur-store/tests/support/pg.rs"]
pub mod pg;
pub mod postfix;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use facteur_auth::{Authenticator, PasswdDb};
use facteur_server::config::Config;
use facteur_server::serve::open_store;
use facteur_server::{run_listeners, Protocol, Shared};
use facteur_store::postgres::{PgStore, PgStoreConfig};
use facteur_store::{Delivered, MaildirStore, Store};
use facteur_tls::{TlsFiles, TlsState};

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

/// The `[limits]` of [`Fixture::new`]: a short failed-login delay and shutdown grace.
pub const DEFAULT_LIMITS: &str = "failed_login_delay_ms = 50\nshutdown_grace_secs = 1\n";

/// The store a fixture's server serves from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `mail/<user>/Maildir` in the fixture's folder.
    Maildir,
    /// A fresh PostgreSQL database, its schema migrated (see [`pg`]).
    Postgresql,
}

/// Each named function, `fn NAME(backend: Backend)`, becomes two tests: `maildir::NAME` and
/// `postgresql::NAME`. Both always exist and always run: nothing skips a backend.
#[allow(
    unused_macros,
    reason = "files without backend-neutral tests do not use it"
)]
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        /// The tests of this file on the Maildir store.
        mod maildir {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::common::Backend::Maildir)
                }
            )+
        }
        /// The tests of this file on the PostgreSQL store.
        mod postgresql {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::common::Backend::Postgresql)
                }
            )+
        }
    };
}
#[allow(
    unused_imports,
    reason = "files without backend-neutral tests do not use it"
)]
pub(crate) use both_backends;

/// The `[store]` section of the Maildir fixtures, which [`Fixture::on`] replaces.
const MAILDIR_STORE: &str = "[store]\nmaildir = \"mail/%u/Maildir\"\n";

/// A `[store]` section for the PostgreSQL store at `url`, with leases of 5 s (the shortest
/// allowed: a test of a session that dies without a word waits that long at most).
pub fn postgres_store_section(url: &str) -> String {
    format!("[store]\nbackend = \"postgresql\"\nurl = {url:?}\nlease_secs = 5\n")
}

/// The PostgreSQL side of a fixture. Fields drop in order: the store's pool, then the runtime
/// that drives it, then the database.
struct PgBackend {
    store: PgStore,
    rt: tokio::runtime::Runtime,
    db: pg::TestDb,
}

/// A temporary facteur installation: `facteur.toml`, `users`, and `mail/<user>/Maildir` (or a
/// database, see [`Fixture::on`]); with [`Fixture::with_tls`], also a self-signed `cert.pem`
/// and `key.pem` for localhost/127.0.0.1.
pub struct Fixture {
    /// The PostgreSQL store and its database, on that backend (dropped before the folder).
    pg: Option<PgBackend>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub config: Config,
    /// The certificate files, when the configuration has a `[tls]` section.
    pub tls: Option<TlsFiles>,
}

impl Fixture {
    /// The default installation: users alice ({PLAIN}) and carol ({SHA512-CRYPT}), a short
    /// failed-login delay and shutdown grace, logs at info (the binary's "listening" line).
    pub fn new() -> Self {
        Self::with_limits(DEFAULT_LIMITS)
    }

    /// The default installation with this `[limits]` section body.
    pub fn with_limits(limits: &str) -> Self {
        Self::build(limits, "", false)
    }

    /// The default installation with a certificate: STLS on the plain listener, and a POP3S
    /// listener on `127.0.0.1:0`.
    pub fn with_tls() -> Self {
        Self::build(DEFAULT_LIMITS, "", true)
    }

    /// An installation with this `[limits]` body, these extra `[auth]` lines, and a self-signed
    /// certificate (`[tls]`, STLS and a POP3S listener) if `tls`.
    pub fn build(limits: &str, auth: &str, tls: bool) -> Self {
        Self::build_full(limits, auth, tls, "", None)
    }

    /// An installation with a self-signed certificate (as [`Fixture::with_tls`]), these extra
    /// `[auth]` lines, these extra lines in the users file, and `client_ca_pem` written to
    /// `client-ca.pem` as `[tls] client_ca`: client certificates from those CAs are verified
    /// (for SASL EXTERNAL).
    pub fn with_client_ca(auth: &str, extra_users: &str, client_ca_pem: &str) -> Self {
        Self::build_full(DEFAULT_LIMITS, auth, true, extra_users, Some(client_ca_pem))
    }

    /// A plain fixture with a `[policy]` section (RFC 2449's LOGIN-DELAY and EXPIRE) and more
    /// users (passwd-file lines, each ending with a newline).
    pub fn with_policy(policy: &str, extra_users: &str) -> Self {
        let mut fx = Self::build_full(DEFAULT_LIMITS, "", false, extra_users, None);
        let mut text = std::fs::read_to_string(&fx.config_path).expect("read the configuration");
        text.push_str(&format!("\n[policy]\n{policy}\n"));
        std::fs::write(&fx.config_path, &text).expect("write the configuration");
        fx.config = Config::parse(&text, &fx.config_path).expect("the test configuration parses");
        fx
    }

    /// This installation with `text` added at the end of its configuration (new sections).
    pub fn with_config_tail(mut self, text: &str) -> Self {
        let mut config =
            std::fs::read_to_string(&self.config_path).expect("read the configuration");
        config.push_str(&format!("\n{text}\n"));
        std::fs::write(&self.config_path, &config).expect("write the configuration");
        self.config =
            Config::parse(&config, &self.config_path).expect("the test configuration parses");
        self
    }

    fn build_full(
        limits: &str,
        auth: &str,
        tls: bool,
        extra_users: &str,
        client_ca_pem: Option<&str>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("create a temporary folder");
        let users = format!(
            "{USER}:{{PLAIN}}{PASSWORD}\n{CRYPT_USER}:{{SHA512-CRYPT}}{CRYPT_HASH}\n{extra_users}"
        );
        std::fs::write(dir.path().join("users"), users).expect("write the users file");
        let tls_files = tls.then(|| {
            let mut files = facteur_tls::write_self_signed(dir.path())
                .expect("write a self-signed certificate");
            if let Some(pem) = client_ca_pem {
                let path = dir.path().join("client-ca.pem");
                std::fs::write(&path, pem).expect("write the client CA file");
                files.client_ca = Some(path);
            }
            files
        });
        let client_ca_line = if client_ca_pem.is_some() {
            "client_ca = \"client-ca.pem\"\n"
        } else {
            ""
        };
        let (listen_tls, tls_section) = if tls {
            (
                "listen_tls = [\"127.0.0.1:0\"]\n",
                format!(
                    "[tls]\ncertificate = \"cert.pem\"\nprivate_key = \"key.pem\"\n{client_ca_line}\n"
                ),
            )
        } else {
            ("", String::new())
        };
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n{listen_tls}hostname = \"test.invalid\"\nallow_root = true\n\n\
             [limits]\n{limits}\n\
             [auth]\npasswd_file = \"users\"\n{auth}\n\
             [store]\nmaildir = \"mail/%u/Maildir\"\n\n\
             {tls_section}\
             [log]\nlevel = \"info\"\n"
        );
        let config_path = dir.path().join("facteur.toml");
        std::fs::write(&config_path, &text).expect("write the configuration");
        let config = Config::parse(&text, &config_path).expect("the test configuration parses");
        Self {
            pg: None,
            dir,
            config_path,
            config,
            tls: tls_files,
        }
    }

    /// This installation on `backend`. For PostgreSQL: a fresh database with the schema
    /// migrated, and the `[store]` section of `facteur.toml` (and of [`Fixture::config`])
    /// pointing at it, so that the binary serves from it too.
    pub fn on(mut self, backend: Backend) -> Self {
        if backend == Backend::Maildir || self.pg.is_some() {
            return self;
        }
        let db = pg::fresh_database();
        let text = std::fs::read_to_string(&self.config_path).expect("read the configuration");
        assert!(text.contains(MAILDIR_STORE), "{text}");
        let text = text.replace(MAILDIR_STORE, &postgres_store_section(&db.url));
        std::fs::write(&self.config_path, &text).expect("write the configuration");
        self.config =
            Config::parse(&text, &self.config_path).expect("the test configuration parses");
        assert_eq!(
            self.config.store.backend,
            facteur_server::config::StoreBackend::Postgresql
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("start a tokio runtime");
        rt.block_on(facteur_store::postgres::migrate_url(&db.url))
            .expect("migrate the test database");
        let store = rt
            .block_on(PgStore::connect(&PgStoreConfig {
                url: db.url.clone(),
                pool_size: 2,
                lease: self.config.store.lease(),
                lease_commit: self.config.store.lease_commit.into(),
            }))
            .expect("connect to the test database");
        self.pg = Some(PgBackend { store, rt, db });
        self
    }

    /// The fixture's backend.
    pub fn backend(&self) -> Backend {
        if self.pg.is_some() {
            Backend::Postgresql
        } else {
            Backend::Maildir
        }
    }

    /// The connection string of the fixture's database (PostgreSQL fixtures only).
    pub fn database_url(&self) -> &str {
        &self.pg.as_ref().expect("a PostgreSQL fixture").db.url
    }

    /// The certificate of a fixture made with TLS (the CA file clients trust).
    pub fn cert(&self) -> &Path {
        &self
            .tls
            .as_ref()
            .expect("a fixture with a certificate")
            .certificate
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The Maildir of `user`, as the configuration's template names it (Maildir fixtures).
    pub fn maildir(&self, user: &str) -> PathBuf {
        self.assert_maildir("maildir()");
        self.path().join("mail").join(user).join("Maildir")
    }

    fn assert_maildir(&self, what: &str) {
        assert_eq!(
            self.backend(),
            Backend::Maildir,
            "{what} looks at Maildir files: use uids() or message_count() on PostgreSQL"
        );
    }

    /// The fixture's store, as the server opens it.
    pub fn store(&self) -> Arc<dyn Store> {
        match &self.pg {
            None => Arc::new(
                MaildirStore::new(self.config.store.maildir.clone())
                    .with_line_ends(self.config.store.line_ends.into()),
            ),
            Some(pg) => Arc::new(pg.store.clone()),
        }
    }

    /// The unique-ids stored for `user`, sorted, read behind the server's back: the Maildir's
    /// file base names, or the database's rows. What a session would list, without taking the
    /// maildrop's lock.
    pub fn uids(&self, user: &str) -> Vec<String> {
        let Some(pg) = &self.pg else {
            return self.message_bases(user);
        };
        let url = pg.db.url.clone();
        let user = user.to_string();
        pg.rt.block_on(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect to the test database");
            let driver = tokio::spawn(connection);
            let rows = client
                .query(
                    "SELECT m.uid FROM messages m JOIN maildrops d ON d.id = m.maildrop_id \
                     WHERE d.name = $1 ORDER BY m.uid",
                    &[&user],
                )
                .await
                .expect("list the messages");
            drop(client);
            let _ = driver.await;
            rows.iter().map(|r| r.get::<_, String>(0)).collect()
        })
    }

    /// How many messages `user`'s maildrop holds (see [`Fixture::uids`]).
    pub fn message_count(&self, user: &str) -> usize {
        self.uids(user).len()
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
        self.assert_maildir("message_files()");
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

    /// Start a server in this process, on a tokio runtime of its own: plain POP3 on `addr`,
    /// POP2 on `pop2_addr` and, for a fixture with a certificate, POP3S on `tls_addr`.
    pub fn start(&self) -> Server {
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
        let pop2_listener = bind();
        let pop2_addr = pop2_listener.local_addr().expect("the listener's address");
        let tls_listeners: Vec<_> = self.tls.iter().map(|_| bind()).collect();
        let tls_addr = tls_listeners
            .first()
            .map(|l| l.local_addr().expect("the listener's address"));
        let db = PasswdDb::open(&self.config.auth.passwd_file).expect("open the users file");
        // As `facteur serve` does: the store opened inside the server's runtime, which then
        // drives its database I/O.
        let store = rt
            .block_on(open_store(&self.config.store, None))
            .expect("open the store");
        let mut shared = Shared::new(
            self.config.clone(),
            Arc::new(db) as Arc<dyn Authenticator>,
            store,
        );
        if let Some(files) = &self.tls {
            shared = shared.with_tls(TlsState::new(files.clone()).expect("load the certificate"));
        }
        // As `facteur serve` does: the OAuth issuers' key files and secrets read at start.
        shared = shared.with_oauth(
            facteur_server::oauth_issuers(&self.config.oauth).expect("the OAuth issuers load"),
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let listeners = std::iter::once((listener, Protocol::Pop3))
            .chain(tls_listeners.into_iter().map(|l| (l, Protocol::Pop3s)))
            .chain([(pop2_listener, Protocol::Pop2)])
            .collect();
        let task = rt.spawn(run_listeners(Arc::new(shared), listeners, async move {
            let _ = rx.await;
        }));
        Server {
            addr,
            pop2_addr,
            tls_addr,
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
    /// The plain POP3 listener (with STLS when the fixture has a certificate).
    pub addr: SocketAddr,
    /// The POP2 listener (RFC 937).
    pub pop2_addr: SocketAddr,
    /// The POP3S listener, when the fixture has a certificate.
    pub tls_addr: Option<SocketAddr>,
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

    /// The POP3S listener's address (the fixture must have a certificate).
    pub fn pop3s(&self) -> SocketAddr {
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

/// The real `facteur` binary, serving a configuration; killed when dropped.
pub struct BinServer {
    pub child: Child,
    /// The first plain POP3 listener.
    pub addr: SocketAddr,
    /// The first POP3S listener, if the configuration has one.
    pub tls_addr: Option<SocketAddr>,
    /// Everything the server wrote on stderr so far.
    pub stderr: Arc<Mutex<String>>,
}

impl BinServer {
    /// Run `facteur serve --config FILE` and wait for a `listening address=...` log line for
    /// each listener of the configuration.
    pub fn start(config: &Path) -> Self {
        let cfg = Config::load(config).expect("the test configuration loads");
        let listeners = cfg.server.listen.len() + cfg.listen_tls().len();
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
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let line = strip_ansi(&line);
                    if let Some(addr) = listening_address(&line) {
                        let _ = tx.send((addr, line.contains("pop3s")));
                    }
                    let mut log = log.lock().expect("the log lock");
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let mut addr = None;
        let mut tls_addr = None;
        for _ in 0..listeners {
            match rx.recv_timeout(READ_TIMEOUT) {
                Ok((a, true)) => {
                    tls_addr.get_or_insert(a);
                }
                Ok((a, false)) => {
                    addr.get_or_insert(a);
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "facteur serve did not log its {listeners} listening addresses; stderr:\n{}",
                        log.lock().expect("the log lock")
                    );
                }
            }
        }
        Self {
            child,
            addr: addr.expect("a plain POP3 listener in the test configuration"),
            tls_addr,
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

    /// The POP3S listener's address (the configuration must have one).
    pub fn pop3s(&self) -> SocketAddr {
        self.tls_addr.expect("a server with a POP3S listener")
    }

    /// Send a signal (`HUP`, `TERM`, ...) to the server with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.stderr.lock().expect("the log lock").clone()
    }

    /// Wait (bounded) until the log has `count` lines containing `needle`; returns the log.
    pub fn wait_for_log(&self, needle: &str, count: usize) -> String {
        for _ in 0..(READ_TIMEOUT.as_millis() / 10) {
            let log = self.log();
            if log.lines().filter(|l| l.contains(needle)).count() >= count {
                return log;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "the server never logged {count} lines with {needle:?}; its log:\n{}",
            self.log()
        );
    }

    /// Wait (bounded) for the process to exit on its own, and return its exit status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        for _ in 0..(READ_TIMEOUT.as_millis() / 10) {
            if let Some(status) = self.child.try_wait().expect("wait for the server") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the server did not exit; its log:\n{}", self.log());
    }
}

impl Drop for BinServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address of a `listening address=127.0.0.1:PORT` log line, or of its JSON form
/// (`"message":"listening","address":"127.0.0.1:PORT"`, `[log] format = "json"`).
pub fn listening_address(line: &str) -> Option<SocketAddr> {
    if !line.contains("listening") {
        return None;
    }
    if line.starts_with('{') {
        let rest = &line[line.find("\"address\":\"")? + "\"address\":\"".len()..];
        return rest.split('"').next()?.parse().ok();
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

/// A rustls client configuration that trusts only the certificates in the PEM file `ca`.
pub fn tls_client_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    Arc::new(tls_client_builder(ca).with_no_client_auth())
}

/// A rustls client configuration that trusts only the certificates in the PEM file `ca` and
/// presents this client certificate chain (DER, leaf first) with its private key (PKCS#8 DER)
/// when the server asks for one.
pub fn tls_client_config_with_cert(
    ca: &Path,
    chain: Vec<Vec<u8>>,
    key_pkcs8: Vec<u8>,
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let chain = chain.into_iter().map(CertificateDer::from).collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8));
    let config = tls_client_builder(ca)
        .with_client_auth_cert(chain, key)
        .expect("a usable client certificate and key");
    Arc::new(config)
}

fn tls_client_builder(
    ca: &Path,
) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read the CA file") {
        roots
            .add(cert.expect("a certificate in the CA file"))
            .expect("a usable CA certificate");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
}

/// A TLS handshake as a client over `tcp`, verifying the server as `127.0.0.1` against `ca`.
/// The error is the handshake's: `UnexpectedEof`/`ConnectionReset` if the server closed the
/// connection, `InvalidData` if it sent something that is not TLS.
pub fn tls_handshake(tcp: TcpStream, ca: &Path) -> std::io::Result<TlsStream> {
    tls_handshake_with(tcp, tls_client_config(ca))
}

/// A TLS handshake as a client over `tcp` with this configuration, the server named
/// `127.0.0.1`. Ends when the client side of the handshake is complete: in TLS 1.3 that is
/// before the server has checked a client certificate (its verdict comes with the first read).
pub fn tls_handshake_with(
    tcp: TcpStream,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream> {
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("a server name");
    let mut conn =
        rustls::ClientConnection::new(config, name.to_owned()).map_err(std::io::Error::other)?;
    let mut tcp = tcp;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    Ok(rustls::StreamOwned::new(conn, tcp))
}

pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// The byte stream of a [`Client`]: plain TCP, or TLS (POP3S, or after STLS).
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
    /// Only while the plain stream is being upgraded.
    Detached,
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
            Conn::Detached => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
            Conn::Detached => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
            Conn::Detached => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }
}

/// How a read ended without data: a clean close, or the TCP connection going away (a reset,
/// or for TLS an end without close_notify), which tests of server behaviour count as a close.
fn is_abrupt_close(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::UnexpectedEof
    )
}

/// A blocking POP3 client that sends raw bytes and reads raw replies, over plain TCP or TLS.
pub struct Client {
    reader: BufReader<Conn>,
    /// The TCP socket under it all (for [`Client::writer`] on plain connections).
    tcp: TcpStream,
    pub greeting: String,
}

impl Client {
    fn tcp(addr: SocketAddr) -> TcpStream {
        assert!(addr.ip().is_loopback(), "tests only talk to 127.0.0.1");
        let stream = TcpStream::connect(addr).expect("connect to the server");
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("set a read timeout");
        stream
            .set_write_timeout(Some(READ_TIMEOUT))
            .expect("set a write timeout");
        stream
    }

    fn over(conn: Conn, tcp: TcpStream) -> Self {
        Self {
            reader: BufReader::new(conn),
            tcp,
            greeting: String::new(),
        }
    }

    /// Connect and read the greeting (which must be `+OK`).
    pub fn connect(addr: SocketAddr) -> Self {
        let c = Self::connect_unchecked(addr);
        assert!(c.greeting.starts_with("+OK"), "greeting: {:?}", c.greeting);
        c
    }

    /// Connect and read the first line, whatever it is (empty if the server closed at once).
    pub fn connect_unchecked(addr: SocketAddr) -> Self {
        let tcp = Self::tcp(addr);
        let mut c = Self::over(Conn::Plain(tcp.try_clone().expect("clone the stream")), tcp);
        c.greeting = c
            .try_raw_line()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .unwrap_or_default();
        c
    }

    /// Connect, send `first` at once (a PROXY protocol header, as a load balancer does), and
    /// read the first line, whatever it is (empty if the server closed without a word, or
    /// reset the connection: it does when it closes with octets of ours unread).
    pub fn connect_after(addr: SocketAddr, first: &[u8]) -> Self {
        let mut tcp = Self::tcp(addr);
        tcp.write_all(first).expect("send the first octets");
        let mut c = Self::over(Conn::Plain(tcp.try_clone().expect("clone the stream")), tcp);
        c.greeting = match c.try_line() {
            Ok(line) => line.unwrap_or_default(),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => String::new(),
            Err(e) => panic!("read the first line: {e}"),
        };
        c
    }

    /// Connect to a POP3S listener, send `first` before the TLS handshake (a PROXY protocol
    /// header), handshake verifying the certificate against `ca`, and read the greeting
    /// (which must be `+OK`).
    pub fn connect_tls_after(addr: SocketAddr, first: &[u8], ca: &Path) -> Self {
        let mut tcp = Self::tcp(addr);
        tcp.write_all(first).expect("send the first octets");
        let tls = tls_handshake_with(
            tcp.try_clone().expect("clone the stream"),
            tls_client_config(ca),
        )
        .expect("the TLS handshake with the POP3S listener");
        let mut c = Self::over(Conn::Tls(Box::new(tls)), tcp);
        c.greeting = c.line();
        assert!(c.greeting.starts_with("+OK"), "greeting: {:?}", c.greeting);
        c
    }

    /// The local address of the connection (the client's side).
    pub fn local_addr(&self) -> SocketAddr {
        self.tcp
            .local_addr()
            .expect("the connection's local address")
    }

    /// Connect to a POP3S listener, verifying its certificate against `ca`, and read the
    /// greeting (which must be `+OK`).
    pub fn connect_tls(addr: SocketAddr, ca: &Path) -> Self {
        Self::connect_tls_with(addr, tls_client_config(ca))
    }

    /// Connect to a POP3S listener with this TLS client configuration, and read the greeting
    /// (which must be `+OK`).
    pub fn connect_tls_with(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Self {
        let mut c = Self::connect_tls_unchecked(addr, config)
            .expect("the TLS handshake with the POP3S listener");
        c.greeting = c.line();
        assert!(c.greeting.starts_with("+OK"), "greeting: {:?}", c.greeting);
        c
    }

    /// Connect to a POP3S listener with this TLS client configuration and complete the
    /// client's side of the handshake; the greeting is not read.
    pub fn connect_tls_unchecked(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<Self> {
        let tcp = Self::tcp(addr);
        let tls = tls_handshake_with(tcp.try_clone().expect("clone the stream"), config)?;
        Ok(Self::over(Conn::Tls(Box::new(tls)), tcp))
    }

    /// The first line, or the error that ended the read (a TLS alert is `InvalidData`);
    /// `Ok(None)` at EOF.
    pub fn try_line(&mut self) -> std::io::Result<Option<String>> {
        let mut line = Vec::new();
        let n = self.reader.read_until(b'\n', &mut line)?;
        Ok((n > 0).then(|| String::from_utf8_lossy(&line).into_owned()))
    }

    /// STLS, which must be answered `+OK`, then the TLS handshake (verifying against `ca`).
    pub fn stls(&mut self, ca: &Path) {
        let r = self.cmd("STLS");
        assert!(r.starts_with("+OK"), "STLS: {r:?}");
        self.start_tls(ca).expect("the TLS handshake after STLS");
    }

    /// The TLS handshake on a plain connection, now (the STLS command was answered `+OK`).
    /// Panics if the server sent anything after that `+OK` before the handshake.
    pub fn start_tls(&mut self, ca: &Path) -> std::io::Result<()> {
        self.start_tls_with(tls_client_config(ca))
    }

    /// As [`Client::start_tls`], with this TLS client configuration.
    pub fn start_tls_with(&mut self, config: Arc<rustls::ClientConfig>) -> std::io::Result<()> {
        let old = std::mem::replace(&mut self.reader, BufReader::new(Conn::Detached));
        assert!(
            old.buffer().is_empty(),
            "the server sent {:?} in clear text after +OK to STLS",
            String::from_utf8_lossy(old.buffer())
        );
        let Conn::Plain(tcp) = old.into_inner() else {
            panic!("start_tls on a connection that is not plain TCP");
        };
        let tls = tls_handshake_with(tcp, config)?;
        self.reader = BufReader::new(Conn::Tls(Box::new(tls)));
        Ok(())
    }

    /// Whether the connection is under TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.reader.get_ref(), Conn::Tls(_))
    }

    /// The server's certificate (leaf, DER), on a TLS connection.
    pub fn peer_certificate(&self) -> Vec<u8> {
        match self.reader.get_ref() {
            Conn::Tls(s) => s
                .conn
                .peer_certificates()
                .and_then(|c| c.first())
                .expect("the server sent a certificate")
                .to_vec(),
            _ => panic!("not a TLS connection"),
        }
    }

    /// Connect to a POP2 listener and read its greeting (which must be `+ `).
    pub fn connect_pop2(addr: SocketAddr) -> Self {
        let c = Self::connect_unchecked(addr);
        assert!(
            c.greeting.starts_with("+ "),
            "POP2 greeting: {:?}",
            c.greeting
        );
        c
    }

    /// Exactly `n` octets from the server (a POP2 message, whose end is its count).
    pub fn read_octets(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        self.reader
            .read_exact(&mut buf)
            .expect("read the announced octets");
        buf
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

    /// A second handle on the socket, to write from another thread while this one reads
    /// (plain connections only).
    pub fn writer(&self) -> TcpStream {
        assert!(!self.is_tls(), "writer() on a TLS connection");
        self.tcp.try_clone().expect("clone the stream")
    }

    pub fn send(&mut self, bytes: &[u8]) {
        let conn = self.reader.get_mut();
        conn.write_all(bytes).expect("send to the server");
        conn.flush().expect("send to the server");
    }

    /// Send, without failing if the server has already closed the connection.
    pub fn try_send(&mut self, bytes: &[u8]) {
        let conn = self.reader.get_mut();
        let _ = conn.write_all(bytes).and_then(|()| conn.flush());
    }

    /// The next line, or `None` if the server closed the connection (a reset counts).
    pub fn line_or_close(&mut self) -> Option<String> {
        let mut line = Vec::new();
        match self.reader.read_until(b'\n', &mut line) {
            Ok(0) => None,
            Ok(_) => Some(String::from_utf8_lossy(&line).into_owned()),
            Err(e) if is_abrupt_close(&e) && line.is_empty() => None,
            Err(e) => panic!("read from the server: {e}"),
        }
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

    /// Every line until the server closes the connection (a reset, or a TLS connection
    /// closed without close_notify, counts as a close).
    pub fn lines_until_closed(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let mut line = Vec::new();
            match self.reader.read_until(b'\n', &mut line) {
                Ok(0) => return lines,
                Ok(_) => lines.push(String::from_utf8_lossy(&line).into_owned()),
                Err(e) if is_abrupt_close(&e) => {
                    if !line.is_empty() {
                        lines.push(String::from_utf8_lossy(&line).into_owned());
                    }
                    return lines;
                }
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
            Ok(_) => {}
            // A reset after QUIT is a close too (and so is a TLS end without close_notify:
            // `expect_clean_tls_close` is the test for that).
            Err(e) if is_abrupt_close(&e) => {}
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
        assert!(
            rest.is_empty(),
            "bytes after the end: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }

    /// The server ends the TLS connection properly: close_notify, then the TCP close.
    pub fn expect_clean_tls_close(&mut self) {
        assert!(self.is_tls(), "not a TLS connection");
        let mut rest = Vec::new();
        let r = self.reader.read_to_end(&mut rest);
        assert!(
            rest.is_empty(),
            "bytes after the end: {:?}",
            String::from_utf8_lossy(&rest)
        );
        if let Err(e) = r {
            panic!("the TLS connection did not end with close_notify: {e}");
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

/// The fixture's configuration with the PostgreSQL store at `url` (leases of 5 s, the shortest
/// allowed, so that tests of a dead node are quick) instead of its Maildirs, written to
/// `name` in the fixture's folder.
pub fn postgres_config(fx: &Fixture, url: &str, name: &str) -> PathBuf {
    let text = std::fs::read_to_string(&fx.config_path).expect("read the configuration");
    assert!(text.contains(MAILDIR_STORE), "{text}");
    let text = text.replace(MAILDIR_STORE, &postgres_store_section(url));
    let path = fx.path().join(name);
    std::fs::write(&path, text).expect("write the configuration");
    path
}

/// `facteur db migrate --config CONFIG`, which must succeed.
pub fn db_migrate(config: &Path) {
    let (code, stdout, stderr) = run_with_input(
        facteur().args(["db", "migrate", "--config"]).arg(config),
        b"",
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
}

/// `facteur deliver USER --config CONFIG` with `message` on its input: (exit code, stderr).
pub fn deliver_cli(config: &Path, user: &str, message: &[u8]) -> (Option<i32>, String) {
    let (code, _, stderr) = run_with_input(
        facteur().args(["deliver", user, "--config"]).arg(config),
        message,
    );
    (code, stderr)
}

/// `facteur ARGS --config CONFIG` with `stdin`: (exit code, stdout, stderr).
pub fn cli_with(config: &Path, args: &[&str], stdin: &[u8]) -> (Option<i32>, String, String) {
    let mut cmd = facteur();
    cmd.args(args).arg("--config").arg(config);
    run_with_input(&mut cmd, stdin)
}

/// [`cli_with`], which must succeed: its stdout.
pub fn cli_ok(config: &Path, args: &[&str], stdin: &[u8]) -> String {
    let (code, stdout, stderr) = cli_with(config, args, stdin);
    assert_eq!(code, Some(0), "{args:?}: {stdout}{stderr}");
    stdout
}

/// Users and mail in one PostgreSQL database, end to end through the CLI: `db migrate` on a
/// fresh database, `user add gus` (password `pw`), `deliver` of a message whose body is
/// `body`, `check-config` (its stdout and stderr are returned), then a POP3 login through `facteur serve`
/// that finds and reads the message. The server is returned still running.
pub fn sql_users_and_mail_round_trip(config: &Path, body: &str) -> (String, String, BinServer) {
    let out = cli_ok(config, &["db", "migrate"], b"");
    assert!(out.contains("schema version 5 (was 0)"), "{out}");
    let add = [
        "user",
        "add",
        "gus",
        "--scheme",
        "SHA256-CRYPT",
        "--password-stdin",
    ];
    cli_ok(config, &add, b"pw\n");
    let message = format!("Subject: round trip\r\n\r\n{body}\r\n");
    let (code, _, err) = cli_with(config, &["deliver", "gus"], message.as_bytes());
    assert_eq!(code, Some(0), "{err}");
    let (code, checked, warnings) = cli_with(config, &["check-config"], b"");
    assert_eq!(code, Some(0), "{checked}{warnings}");
    let server = BinServer::start(config);
    let mut c = server.login("gus", "pw");
    assert_eq!(c.stat().0, 1);
    let got = c.retrieve("RETR 1");
    assert!(String::from_utf8_lossy(&got).contains(body), "{got:?}");
    c.quit();
    (checked, warnings, server)
}

/// `facteur user app-password add USER --label LABEL`: the password printed (the last line).
pub fn add_app_password(config: &Path, user: &str, label: &str, scheme: &str) -> String {
    let out = cli_ok(
        config,
        &[
            "user",
            "app-password",
            "add",
            user,
            "--label",
            label,
            "--scheme",
            scheme,
        ],
        b"",
    );
    assert!(out.contains("shown this once"), "{out}");
    let password = out.lines().last().expect("the password line").to_string();
    assert_eq!(password.len(), 24, "{out}");
    password
}

/// True if USER/PASS with this password is accepted (the session is then closed with QUIT).
pub fn user_pass(addr: SocketAddr, user: &str, password: &str) -> bool {
    let mut c = Client::connect(addr);
    assert!(c.cmd(&format!("USER {user}")).starts_with("+OK"));
    let ok = c.cmd(&format!("PASS {password}")).starts_with("+OK");
    if ok {
        c.quit();
    }
    ok
}

/// `facteur user app-password list USER`'s line for `label`.
pub fn listed_app_password(config: &Path, user: &str, label: &str) -> Option<String> {
    cli_ok(config, &["user", "app-password", "list", user], b"")
        .lines()
        .find(|l| l.starts_with(&format!("{label} ")))
        .map(str::to_string)
}

/// Waits (bounded) until `list` shows a last use for `label`; that line.
pub fn wait_app_password_used(config: &Path, user: &str, label: &str) -> String {
    for _ in 0..500 {
        let line = listed_app_password(config, user, label).expect("the app password is listed");
        if !line.ends_with("never") {
            return line;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the last use of {label:?} was never recorded");
}
