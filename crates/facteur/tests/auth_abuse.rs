//! Authentication abuse: what one connection that does not know a password can make the server
//! do. SASL exchanges that end without a verdict (cancelled, malformed) are bad commands, and
//! failed logins once a user name was given; login attempts per connection are capped;
//! credentials too long for any user are refused before any check; CAPA says the same before
//! and after login.
//!
//! The server runs in this process over an authenticator that counts the checks it is asked
//! for, so that "no password was checked" is asserted, not timed.

mod common;

use common::*;
use facteur_auth::{Account, AuthOutcome, Authenticator, PasswdDb, ScramCredentials};
use facteur_server::{run_with_tls, Shared};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The passwd-file, with every check the server asks for counted.
struct CountingAuth {
    inner: PasswdDb,
    /// USER/PASS, PLAIN and LOGIN checks (each one hashes).
    password_checks: AtomicUsize,
    /// SCRAM credential lookups (one per client-first message that got that far).
    scram_lookups: AtomicUsize,
}

impl Authenticator for CountingAuth {
    fn verify_password(&self, user: &str, password: &[u8]) -> AuthOutcome {
        self.password_checks.fetch_add(1, Ordering::SeqCst);
        self.inner.verify_password(user, password)
    }
    fn verify_apop(&self, user: &str, timestamp: &str, digest: &str) -> AuthOutcome {
        self.inner.verify_apop(user, timestamp, digest)
    }
    fn apop_possible(&self) -> bool {
        self.inner.apop_possible()
    }
    fn verify_cram_md5(&self, user: &str, challenge: &[u8], digest_hex: &str) -> AuthOutcome {
        self.inner.verify_cram_md5(user, challenge, digest_hex)
    }
    fn cram_md5_possible(&self) -> bool {
        self.inner.cram_md5_possible()
    }
    fn scram_credentials(&self, user: &str) -> ScramCredentials {
        self.scram_lookups.fetch_add(1, Ordering::SeqCst);
        self.inner.scram_credentials(user)
    }
    fn scram_possible(&self) -> bool {
        self.inner.scram_possible()
    }
    fn account(&self, user: &str) -> Option<Account> {
        self.inner.account(user)
    }
}

/// A server over a [`CountingAuth`], stopped (gracefully) when dropped.
struct CountingServer {
    addr: SocketAddr,
    auth: Arc<CountingAuth>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl CountingServer {
    fn start(fx: &Fixture) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("start a tokio runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("the listener's address");
        let auth = Arc::new(CountingAuth {
            inner: PasswdDb::open(&fx.config.auth.passwd_file).expect("open the users file"),
            password_checks: AtomicUsize::new(0),
            scram_lookups: AtomicUsize::new(0),
        });
        let shared = Shared::new(
            fx.config.clone(),
            auth.clone() as Arc<dyn Authenticator>,
            fx.store(),
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = rt.spawn(run_with_tls(
            Arc::new(shared),
            vec![listener],
            Vec::new(),
            async move {
                let _ = rx.await;
            },
        ));
        Self {
            addr,
            auth,
            shutdown: Some(tx),
            task: Some(task),
            rt: Some(rt),
        }
    }

    fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    fn password_checks(&self) -> usize {
        self.auth.password_checks.load(Ordering::SeqCst)
    }

    fn scram_lookups(&self) -> usize {
        self.auth.scram_lookups.load(Ordering::SeqCst)
    }
}

impl Drop for CountingServer {
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

fn base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// An installation that offers these SASL mechanisms, with these `[limits]` lines added to the
/// short test delays.
fn fixture(sasl: &str, limits: &str) -> Fixture {
    Fixture::build(
        &format!("{DEFAULT_LIMITS}{limits}"),
        &format!("sasl = [{sasl}]\n"),
        false,
    )
}

/// One SASL exchange: `AUTH <mechanism>`, then each of `answers` after a `+` challenge, until
/// a status line. The lines the server sent after the last answer, up to its close if it
/// closed; `None` if it had closed before the AUTH was answered at all.
fn exchange(c: &mut Client, mechanism: &str, answers: &[&str]) -> Option<Vec<String>> {
    c.try_send(format!("AUTH {mechanism}\r\n").as_bytes());
    let mut line = c.line_or_close()?;
    for answer in answers {
        if !line.starts_with("+ ") {
            break;
        }
        c.try_send(format!("{answer}\r\n").as_bytes());
        line = c.line_or_close()?;
    }
    assert!(
        line.starts_with("-ERR"),
        "{mechanism} {answers:?}: {line:?}"
    );
    Some(vec![line])
}

/// The lines still to come after an `-ERR`: a last word and the close, or nothing if the
/// connection stays open (checked with a NOOP, whose answer is consumed).
fn closed_after(c: &mut Client) -> Option<Vec<String>> {
    c.try_send(b"NOOP\r\n");
    let mut rest = Vec::new();
    while let Some(line) = c.line_or_close() {
        if line == "+OK\r\n" && rest.is_empty() {
            return None;
        }
        rest.push(line);
    }
    Some(rest)
}

/// 200 malformed or cancelled SCRAM exchanges cannot run in one connection: it is closed at
/// `max_auth_attempts` (10 by default), and not one user name was looked up.
fn malformed_sasl_exchanges_close_the_connection_early(backend: Backend) {
    let fx = fixture("\"SCRAM-SHA-256\", \"PLAIN\"", "").on(backend);
    let server = CountingServer::start(&fx);
    let mut c = server.connect();
    let mut answered = 0;
    let mut last_words = Vec::new();
    for i in 0..200 {
        let answer = match i % 3 {
            0 => "*",
            1 => "!!!not base64",
            _ => "Z2FyYmFnZQ==", // "garbage": not a client-first message
        };
        let Some(lines) = exchange(&mut c, "SCRAM-SHA-256", &[answer]) else {
            break;
        };
        answered += 1;
        last_words = lines;
        if let Some(rest) = closed_after(&mut c) {
            last_words.extend(rest);
            break;
        }
    }
    assert_eq!(answered, 10, "exchanges answered before the close");
    assert!(
        last_words
            .last()
            .is_some_and(|l| l.contains("too many authentication attempts")),
        "{last_words:?}"
    );
    assert_eq!(server.scram_lookups(), 0);
    assert_eq!(server.password_checks(), 0);
}

/// An exchange that ends without a verdict is a bad command: with a high cap on attempts,
/// `max_bad_commands` closes the connection.
fn aborted_sasl_exchanges_are_bad_commands(backend: Backend) {
    let fx = fixture(
        "\"PLAIN\"",
        "max_auth_attempts = 1000\nmax_bad_commands = 5\n",
    )
    .on(backend);
    let server = CountingServer::start(&fx);
    let mut c = server.connect();
    assert!(c.cmd("FROB").starts_with("-ERR"));
    let mut answered = 0;
    let mut rest = None;
    for i in 0..200 {
        let answer = if i % 2 == 0 { "*" } else { "bm8gbnVscw==" }; // "no nuls"
        if exchange(&mut c, "PLAIN", &[answer]).is_none() {
            break;
        }
        answered += 1;
        rest = closed_after(&mut c);
        if rest.is_some() {
            break;
        }
    }
    assert_eq!(answered, 4, "one bad command and four aborted exchanges");
    assert!(
        rest.as_ref()
            .and_then(|r| r.last())
            .is_some_and(|l| l.contains("too many bad commands")),
        "{rest:?}"
    );
    assert_eq!(server.password_checks(), 0);
}

/// Once the client gave a user name, an aborted exchange is a failed login too: the
/// connection closes at `max_failed_logins` (3 by default).
fn an_exchange_aborted_after_a_user_name_is_a_failed_login(backend: Backend) {
    let fx = fixture("\"SCRAM-SHA-256\", \"LOGIN\"", "").on(backend);
    let server = CountingServer::start(&fx);
    let mut c = server.connect();
    let first = base64(format!("n,,n={USER},r=clientnonce").as_bytes());
    let user = base64(USER.as_bytes());
    let mut answered = 0;
    for i in 0..20 {
        // SCRAM cancelled after its client-first message, LOGIN at the password prompt.
        let done = if i % 2 == 0 {
            exchange(&mut c, "SCRAM-SHA-256", &[&first, "*"])
        } else {
            exchange(&mut c, "LOGIN", &[&user, "*"])
        };
        if done.is_none() {
            break;
        }
        answered += 1;
        if closed_after(&mut c).is_some() {
            break;
        }
    }
    assert_eq!(answered, 3);
    assert_eq!(server.scram_lookups(), 2);
    assert_eq!(server.password_checks(), 0);
    // The user can still log in from another connection.
    let mut c = server.connect();
    assert!(c.cmd(&format!("USER {USER}")).starts_with("+OK"));
    assert!(c.cmd(&format!("PASS {PASSWORD}")).starts_with("+OK"));
}

/// A password over 1,024 octets or a user name over 255 gets a clear `-ERR [AUTH]`, counts as
/// a failed login, and is never checked (no hash).
fn over_long_credentials_are_refused_without_a_check(backend: Backend) {
    let fx = fixture("\"PLAIN\", \"LOGIN\"", "max_failed_logins = 5\n").on(backend);
    let server = CountingServer::start(&fx);
    let mut c = server.connect();
    let long_password = "p".repeat(3000);
    let long_user = "u".repeat(256);
    let too_long_password = "-ERR [AUTH] the password is longer than 1024 octets\r\n";
    let too_long_user = "-ERR [AUTH] the user name is longer than 255 octets\r\n";

    let plain = base64(format!("\0{CRYPT_USER}\0{long_password}").as_bytes());
    assert_eq!(
        exchange(&mut c, "PLAIN", &[&plain]),
        Some(vec![too_long_password.to_string()])
    );
    let plain = base64(format!("\0{long_user}\0x").as_bytes());
    assert_eq!(
        exchange(&mut c, "PLAIN", &[&plain]),
        Some(vec![too_long_user.to_string()])
    );
    let login = [
        base64(CRYPT_USER.as_bytes()),
        base64(&long_password.as_bytes()[..1025]),
    ];
    assert_eq!(
        exchange(&mut c, "LOGIN", &[&login[0], &login[1]]),
        Some(vec![too_long_password.to_string()])
    );
    assert_eq!(server.password_checks(), 0);
    // USER and PASS lines cannot carry them: a command line is at most 255 octets.
    assert_eq!(
        c.cmd(&format!("USER {long_user}")),
        "-ERR line too long\r\n"
    );
    assert_eq!(server.password_checks(), 0);
    // A password of 1,024 octets is checked (and wrong); that makes four failed logins.
    let plain = base64(format!("\0{CRYPT_USER}\0{}", &long_password[..1024]).as_bytes());
    assert_eq!(
        exchange(&mut c, "PLAIN", &[&plain]),
        Some(vec![
            "-ERR [AUTH] invalid user name or password\r\n".to_string()
        ])
    );
    assert_eq!(server.password_checks(), 1);
    // The fifth failed login closes the connection: the refusals counted.
    let plain = base64(format!("\0{long_user}\0x").as_bytes());
    assert_eq!(
        exchange(&mut c, "PLAIN", &[&plain]),
        Some(vec![too_long_user.to_string()])
    );
    assert_eq!(c.line_or_close(), None);
}

/// RFC 2449 section 5: the capabilities announced before login are announced after it.
fn capa_after_login_still_lists_user_and_sasl(backend: Backend) {
    let fx = fixture("\"SCRAM-SHA-256\", \"PLAIN\"", "").on(backend);
    let server = CountingServer::start(&fx);
    let mut c = server.connect();
    let (status, before) = c.cmd_multi("CAPA");
    assert!(status.starts_with("+OK"), "{status:?}");
    let before = String::from_utf8(before).expect("a UTF-8 CAPA reply");
    assert!(before.contains("\r\nUSER\r\n"), "{before}");
    assert!(
        before.contains("\r\nSASL SCRAM-SHA-256 PLAIN\r\n"),
        "{before}"
    );
    assert!(c.cmd(&format!("USER {USER}")).starts_with("+OK"));
    assert!(c.cmd(&format!("PASS {PASSWORD}")).starts_with("+OK"));
    let (status, after) = c.cmd_multi("CAPA");
    assert!(status.starts_with("+OK"), "{status:?}");
    assert_eq!(
        String::from_utf8(after).expect("a UTF-8 CAPA reply"),
        before
    );
}

both_backends!(
    malformed_sasl_exchanges_close_the_connection_early,
    aborted_sasl_exchanges_are_bad_commands,
    an_exchange_aborted_after_a_user_name_is_a_failed_login,
    over_long_credentials_are_refused_without_a_check,
    capa_after_login_still_lists_user_and_sasl,
);
