//! `facteur fetch` end to end, against facteur's own server running in this process (and the
//! `facteur` binary for the command line, the exit statuses and `kill -9`): every destination,
//! every deletion policy, the limits, the login methods, TLS, and crashes at every step of a
//! commit, each followed by a rerun that must leave every message exactly once.
//!
//! The server here runs on the Maildir store only: the subject is the fetcher, the POP3 client,
//! and the server it fetches from is a means (the store behind it is not what is tested).

mod common;

use common::*;
use facteur_fetch::auth::AuthMethod;
use facteur_fetch::config::{Account, DeletePolicy, DestinationSpec, Limits, PasswordSource};
use facteur_fetch::fetch::{
    fetch_account, Fault, FaultAction, FaultPoint, FetchError, Report, RunOptions,
};
use facteur_fetch::{Pop3Error, Security, Target};
use facteur_proto::Secret;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A server fixture, its server, and a folder for the fetcher's side.
struct Env {
    fx: Fixture,
    server: Server,
    local: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Self::with_auth("")
    }

    fn with_auth(auth: &str) -> Self {
        let fx = Fixture::build(DEFAULT_LIMITS, auth, false);
        let server = fx.start();
        Self {
            fx,
            server,
            local: tempfile::tempdir().expect("a temporary folder"),
        }
    }

    fn tls() -> Self {
        let fx = Fixture::with_tls();
        let server = fx.start();
        Self {
            fx,
            server,
            local: tempfile::tempdir().expect("a temporary folder"),
        }
    }

    fn maildir(&self) -> PathBuf {
        self.local.path().join("Maildir")
    }

    fn mbox(&self) -> PathBuf {
        self.local.path().join("mbox")
    }

    fn state_dir(&self) -> PathBuf {
        self.local.path().join("state")
    }

    fn opts(&self) -> RunOptions {
        RunOptions {
            state_dir: self.state_dir(),
            dry_run: false,
            now: None,
            fault: None,
            trace: None,
        }
    }

    /// A plaintext account on the plain listener.
    fn account(&self, destination: DestinationSpec) -> Account {
        account(self.server.addr, Security::Plaintext, None, destination)
    }

    fn deliver_messages(&self, n: usize) -> Vec<Vec<u8>> {
        (1..=n)
            .map(|i| {
                let m = message(i);
                self.fx.deliver(USER, &m);
                m
            })
            .collect()
    }

    /// The number of messages in the server's maildrop.
    fn on_server(&self) -> usize {
        let mut c = Client::login_when_unlocked(self.server.addr, USER, PASSWORD);
        let (n, _) = c.stat();
        c.quit();
        n
    }
}

fn account(
    addr: SocketAddr,
    security: Security,
    ca_file: Option<PathBuf>,
    destination: DestinationSpec,
) -> Account {
    Account {
        identity: None,
        name: "test".into(),
        target: Target {
            host: addr.ip().to_string(),
            port: addr.port(),
            security,
            ca_file,
        },
        user: USER.into(),
        auth: AuthMethod::Auto,
        password: PasswordSource::Inline(Secret::new(PASSWORD.into())),
        destination,
        policy: DeletePolicy::Delete,
        limits: Limits::default(),
        timeout: Duration::from_secs(30),
        maildir_sync: Default::default(),
    }
}

fn password() -> Secret<String> {
    Secret::new(PASSWORD.to_string())
}

/// One run, retried while the maildrop is still locked by a session the server has not yet
/// seen go (after a simulated crash). Bounded.
fn fetch(account: &Account, opts: &RunOptions) -> Result<Report, FetchError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let bar = indicatif::ProgressBar::hidden();
    for _ in 0..400 {
        match rt.block_on(fetch_account(account, &password(), opts, &bar)) {
            Err(e) if e.to_string().contains("IN-USE") => {
                std::thread::sleep(Duration::from_millis(25));
            }
            other => return other,
        }
    }
    panic!("the maildrop stayed locked");
}

fn fetch_ok(account: &Account, opts: &RunOptions) -> Report {
    fetch(account, opts).unwrap_or_else(|e| panic!("fetch failed: {e}"))
}

/// The messages of a Maildir (new/ and cur/), sorted.
fn maildir_messages(dir: &Path) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    for sub in ["new", "cur"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for e in entries {
            v.push(std::fs::read(e.expect("an entry").path()).expect("read a message"));
        }
    }
    v.sort();
    v
}

/// The messages of an mbox file, un-quoted (mboxrd), sorted; checks the entry format.
fn mbox_messages(path: &Path) -> Vec<Vec<u8>> {
    let Ok(text) = std::fs::read(path) else {
        return Vec::new();
    };
    let mut entries: Vec<Vec<u8>> = Vec::new();
    let mut at_start = true;
    let mut prev_blank = true;
    for line in text.split_inclusive(|&b| b == b'\n') {
        if prev_blank && line.starts_with(b"From ") {
            entries.push(Vec::new());
            at_start = false;
            prev_blank = false;
            continue;
        }
        assert!(!at_start, "the mbox does not start with a From line");
        prev_blank = line == b"\n";
        let gts = line.iter().take_while(|&&b| b == b'>').count();
        let body = if gts > 0 && line[gts..].starts_with(b"From ") {
            &line[1..]
        } else {
            line
        };
        entries
            .last_mut()
            .expect("an entry")
            .extend_from_slice(body);
    }
    for e in &mut entries {
        assert_eq!(e.pop(), Some(b'\n'), "an entry ends with an empty line");
    }
    entries.sort();
    entries
}

fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    v.sort();
    v
}

#[test]
fn maildir_fetch_and_delete() {
    let env = Env::new();
    let sent = env.deliver_messages(5);
    let a = env.account(DestinationSpec::Maildir(env.maildir()));
    let r = fetch_ok(&a, &env.opts());
    assert_eq!((r.fetched, r.deleted, r.on_server), (5, 5, 5));
    // USER/PASS is all the default server offers... besides SASL PLAIN, which is stronger.
    assert_eq!(r.method, Some(AuthMethod::Plain));
    assert_eq!(maildir_messages(&env.maildir()), sorted(sent));
    assert_eq!(env.on_server(), 0);
    let names: Vec<String> = std::fs::read_dir(env.maildir().join("new"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| n.contains(",S=") && n.contains(",W=")));
    assert_eq!(
        std::fs::read_dir(env.maildir().join("tmp"))
            .unwrap()
            .count(),
        0
    );
    // Nothing new.
    let r = fetch_ok(&a, &env.opts());
    assert_eq!((r.fetched, r.deleted), (0, 0));
}

#[test]
fn keep_mode_fetches_each_message_once() {
    let env = Env::new();
    let sent = env.deliver_messages(4);
    let mut a = env.account(DestinationSpec::Maildir(env.maildir()));
    a.policy = DeletePolicy::Keep;
    let r = fetch_ok(&a, &env.opts());
    assert_eq!((r.fetched, r.deleted), (4, 0));
    let r = fetch_ok(&a, &env.opts());
    assert_eq!((r.fetched, r.deleted), (0, 0));
    assert_eq!(env.on_server(), 4);
    // A new message: only it is fetched.
    let fifth = message(5);
    env.fx.deliver(USER, &fifth);
    let r = fetch_ok(&a, &env.opts());
    assert_eq!(r.fetched, 1);
    let mut want = sent;
    want.push(fifth);
    assert_eq!(maildir_messages(&env.maildir()), sorted(want));
    // Switching to delete mode deletes them all without fetching them again.
    a.policy = DeletePolicy::Delete;
    let r = fetch_ok(&a, &env.opts());
    assert_eq!((r.fetched, r.deleted), (0, 5));
    assert_eq!(env.on_server(), 0);
    assert_eq!(maildir_messages(&env.maildir()).len(), 5);
}

#[test]
fn delete_after_days() {
    let env = Env::new();
    env.deliver_messages(3);
    let mut a = env.account(DestinationSpec::Maildir(env.maildir()));
    a.policy = DeletePolicy::DeleteAfterDays(2);
    let mut opts = env.opts();
    opts.now = Some(1_000_000);
    let r = fetch_ok(&a, &opts);
    assert_eq!((r.fetched, r.deleted), (3, 0));
    opts.now = Some(1_000_000 + 86_400);
    let r = fetch_ok(&a, &opts);
    assert_eq!((r.fetched, r.deleted), (0, 0));
    assert_eq!(env.on_server(), 3);
    opts.now = Some(1_000_000 + 2 * 86_400);
    let r = fetch_ok(&a, &opts);
    assert_eq!((r.fetched, r.deleted), (0, 3));
    assert_eq!(env.on_server(), 0);
    assert_eq!(maildir_messages(&env.maildir()).len(), 3);
}

#[test]
fn mbox_with_from_quoting() {
    let env = Env::new();
    let tricky = b"From: a@example.org\nSubject: quoting\n\nFrom the start of a line\n>From quoted already\n>>From twice\nnot From here\nFrom\n".to_vec();
    env.fx.deliver(USER, &tricky);
    let mut sent = env.deliver_messages(3);
    sent.push(tricky);
    let a = env.account(DestinationSpec::Mbox(env.mbox()));
    let r = fetch_ok(&a, &env.opts());
    assert_eq!(r.fetched, 4);
    let raw = String::from_utf8(std::fs::read(env.mbox()).unwrap()).unwrap();
    assert!(raw.contains("\n>From the start of a line\n"), "{raw}");
    assert!(raw.contains("\n>>From quoted already\n>>>From twice\nnot From here\nFrom\n"));
    assert_eq!(raw.matches("\nFrom MAILER-DAEMON ").count(), 3);
    assert!(raw.starts_with("From MAILER-DAEMON "));
    assert_eq!(mbox_messages(&env.mbox()), sorted(sent));
    assert!(!env.local.path().join("mbox.lock").exists());
    // Appending keeps what was there.
    env.deliver_messages(1);
    fetch_ok(&a, &env.opts());
    assert_eq!(mbox_messages(&env.mbox()).len(), 5);
}

#[test]
fn mda_receives_each_message_and_a_failing_one_keeps_it_on_the_server() {
    let env = Env::new();
    let sent = env.deliver_messages(3);
    let out = env.local.path().join("delivered");
    std::fs::create_dir(&out).unwrap();
    // Each message into a file of its own.
    let cmd = format!("cat > \"{}/$(date +%s%N)-$$\"", out.display());
    let a = env.account(DestinationSpec::Mda(cmd));
    let r = fetch_ok(&a, &env.opts());
    assert_eq!(r.fetched, 3);
    assert_eq!(maildir_messages_flat(&out), sorted(sent));
    assert_eq!(env.on_server(), 0);

    env.deliver_messages(2);
    let a = env.account(DestinationSpec::Mda("cat > /dev/null; exit 75".into()));
    let e = fetch(&a, &env.opts()).unwrap_err();
    assert!(e.to_string().contains("stays on the server"), "{e}");
    assert_eq!(e.exit_code(), facteur_fetch::fetch::EXIT_LOCAL);
    assert_eq!(env.on_server(), 2);
}

fn maildir_messages_flat(dir: &Path) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .expect("read the folder")
        .map(|e| std::fs::read(e.expect("an entry").path()).expect("a file"))
        .collect();
    v.sort();
    v
}

#[test]
fn limits_per_run() {
    let env = Env::new();
    env.deliver_messages(5);
    let big = format!("Subject: big\n\n{}\n", "x".repeat(10_000)).into_bytes();
    env.fx.deliver(USER, &big);
    let mut a = env.account(DestinationSpec::Maildir(env.maildir()));
    a.limits.max_messages = Some(2);
    a.limits.max_message_size = Some(5_000);
    let r = fetch_ok(&a, &env.opts());
    assert_eq!((r.fetched, r.plan.deferred, r.plan.too_big), (2, 3, 1));
    assert_eq!(env.on_server(), 4);
    let r = fetch_ok(&a, &env.opts());
    assert_eq!(r.fetched, 2);
    a.limits.max_messages = None;
    a.limits.max_bytes = Some(1);
    let r = fetch_ok(&a, &env.opts());
    assert_eq!((r.fetched, r.plan.too_big), (1, 1));
    // The large one stays until the limit is lifted.
    assert_eq!(env.on_server(), 1);
    a.limits = Limits::default();
    let r = fetch_ok(&a, &env.opts());
    assert_eq!(r.fetched, 1);
    assert_eq!(maildir_messages(&env.maildir()).len(), 6);
}

#[test]
fn dry_run_changes_nothing() {
    let env = Env::new();
    env.deliver_messages(3);
    let a = env.account(DestinationSpec::Maildir(env.maildir()));
    let mut opts = env.opts();
    opts.dry_run = true;
    let r = fetch_ok(&a, &opts);
    assert_eq!(r.plan.fetch.len(), 3);
    assert_eq!(r.fetched, 0);
    assert_eq!(env.on_server(), 3);
    assert!(!env.maildir().exists());
    assert!(!env.state_dir().exists());
}

#[test]
fn the_strongest_login_method_offered_is_chosen() {
    let cases = [
        (
            "sasl = [\"PLAIN\", \"CRAM-MD5\", \"SCRAM-SHA-256\"]\napop = true\n",
            AuthMethod::ScramSha256,
        ),
        (
            "sasl = [\"PLAIN\", \"CRAM-MD5\"]\napop = true\n",
            AuthMethod::CramMd5,
        ),
        ("sasl = [\"PLAIN\"]\napop = true\n", AuthMethod::Apop),
        ("sasl = [\"LOGIN\", \"PLAIN\"]\n", AuthMethod::Plain),
        ("sasl = []\n", AuthMethod::User),
    ];
    for (auth, want) in cases {
        let env = Env::with_auth(auth);
        env.deliver_messages(1);
        let a = env.account(DestinationSpec::Maildir(env.maildir()));
        let r = fetch_ok(&a, &env.opts());
        assert_eq!(r.method, Some(want), "{auth}");
        assert_eq!(r.fetched, 1);
    }
    // A configured method is used even when a stronger one is offered.
    let env = Env::with_auth("sasl = [\"SCRAM-SHA-256\", \"PLAIN\"]\n");
    let mut a = env.account(DestinationSpec::Maildir(env.maildir()));
    a.auth = AuthMethod::User;
    assert_eq!(fetch_ok(&a, &env.opts()).method, Some(AuthMethod::User));
    // APOP needs the server's timestamp.
    a.auth = AuthMethod::Apop;
    let e = fetch(&a, &env.opts()).unwrap_err();
    assert!(e.to_string().contains("does not offer APOP"), "{e}");
}

#[test]
fn a_wrong_password_is_an_auth_error_for_each_method() {
    let env = Env::with_auth("sasl = [\"PLAIN\", \"CRAM-MD5\", \"SCRAM-SHA-256\"]\napop = true\n");
    for method in AuthMethod::STRONGEST_FIRST {
        let mut a = env.account(DestinationSpec::Maildir(env.maildir()));
        a.auth = method;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt
            .block_on(fetch_account(
                &a,
                &Secret::new("wrong".into()),
                &env.opts(),
                &indicatif::ProgressBar::hidden(),
            ))
            .unwrap_err();
        assert_eq!(
            e.exit_code(),
            facteur_fetch::fetch::EXIT_AUTH,
            "{method}: {e}"
        );
        assert!(!e.to_string().contains("wrong"), "{e}");
    }
}

#[test]
fn tls_with_a_ca_file_and_stls() {
    let env = Env::tls();
    let sent = env.deliver_messages(2);
    let ca = Some(env.fx.cert().to_path_buf());
    let tls = account(
        env.server.pop3s(),
        Security::Tls,
        ca.clone(),
        DestinationSpec::Maildir(env.maildir()),
    );
    let r = fetch_ok(&tls, &env.opts());
    assert_eq!(r.fetched, 2);
    env.deliver_messages(1);
    let stls = account(
        env.server.addr,
        Security::Starttls,
        ca,
        DestinationSpec::Maildir(env.maildir()),
    );
    let r = fetch_ok(&stls, &env.opts());
    assert_eq!(r.fetched, 1);
    assert_eq!(maildir_messages(&env.maildir()).len(), 3);
    assert!(maildir_messages(&env.maildir()).contains(&sent[0]));

    // Without the CA file, the self-signed certificate is not trusted.
    let untrusted = account(
        env.server.pop3s(),
        Security::Tls,
        None,
        DestinationSpec::Maildir(env.maildir()),
    );
    let e = fetch(&untrusted, &env.opts()).unwrap_err();
    assert!(matches!(e, FetchError::Pop3(Pop3Error::Tls(_))), "{e}");
    assert_eq!(e.exit_code(), facteur_fetch::fetch::EXIT_SERVER);
}

#[test]
fn stls_refused_means_no_plaintext() {
    let env = Env::new();
    env.deliver_messages(1);
    let a = account(
        env.server.addr,
        Security::Starttls,
        None,
        DestinationSpec::Maildir(env.maildir()),
    );
    let e = fetch(&a, &env.opts()).unwrap_err();
    assert!(matches!(e, FetchError::Pop3(Pop3Error::NoStls(_))), "{e}");
    assert_eq!(env.on_server(), 1);
}

/// Which destination a crash test uses.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Maildir,
    Mbox,
}

fn local_messages(env: &Env, kind: Kind) -> Vec<Vec<u8>> {
    match kind {
        Kind::Maildir => maildir_messages(&env.maildir()),
        Kind::Mbox => mbox_messages(&env.mbox()),
    }
}

fn spec(env: &Env, kind: Kind) -> DestinationSpec {
    match kind {
        Kind::Maildir => DestinationSpec::Maildir(env.maildir()),
        Kind::Mbox => DestinationSpec::Mbox(env.mbox()),
    }
}

/// Messages for three batches, the last one short.
const THREE_BATCHES: usize = 2 * facteur_fetch::config::BATCH_MESSAGES + 22;
/// A message of the second batch.
const IN_THE_SECOND_BATCH: u64 = facteur_fetch::config::BATCH_MESSAGES as u64 + 6;

/// THREE_BATCHES messages, a crash at `point` in the second batch, then a rerun: every
/// message is there exactly once, and the server is empty (or, kept, full).
fn crash_and_rerun(kind: Kind, point: FaultPoint, policy: DeletePolicy) {
    let env = Env::new();
    let sent = env.deliver_messages(THREE_BATCHES);
    let mut a = env.account(spec(&env, kind));
    a.policy = policy;
    let mut opts = env.opts();
    opts.fault = Some(Fault {
        point,
        at_message: IN_THE_SECOND_BATCH,
        action: FaultAction::Stop,
    });
    let e = fetch(&a, &opts).expect_err("the injected crash");
    assert!(e.to_string().contains("injected crash"), "{e}");
    // Nothing was deleted: the crash came before QUIT.
    assert_eq!(env.on_server(), THREE_BATCHES, "{kind:?} {point:?}");
    let r = fetch_ok(&a, &env.opts());
    assert_eq!(
        local_messages(&env, kind),
        sorted(sent.clone()),
        "{kind:?} {point:?}: every message exactly once"
    );
    let expected_left = if policy == DeletePolicy::Keep {
        THREE_BATCHES
    } else {
        0
    };
    assert_eq!(env.on_server(), expected_left, "{kind:?} {point:?}");
    assert!(r.fetched <= THREE_BATCHES as u64);
    if let Kind::Maildir = kind {
        let left = std::fs::read_dir(env.maildir().join("tmp"))
            .expect("read tmp/")
            .count();
        assert_eq!(left, 0, "{point:?}: files left in tmp/");
    }
    // And a third run has nothing to do.
    let r = fetch_ok(&a, &env.opts());
    assert_eq!(r.fetched, 0);
    assert_eq!(local_messages(&env, kind).len(), THREE_BATCHES);
}

#[test]
fn crash_at_each_step_of_a_maildir_commit() {
    for point in [
        FaultPoint::AfterWrite,
        FaultPoint::AfterRecord,
        FaultPoint::AfterCommit,
        FaultPoint::AfterDone,
        FaultPoint::BeforeQuit,
    ] {
        crash_and_rerun(Kind::Maildir, point, DeletePolicy::Delete);
    }
    crash_and_rerun(Kind::Maildir, FaultPoint::AfterRecord, DeletePolicy::Keep);
}

#[test]
fn crash_at_each_step_of_an_mbox_commit() {
    for point in [
        FaultPoint::AfterWrite,
        FaultPoint::AfterRecord,
        FaultPoint::MidAppend,
        FaultPoint::AfterCommit,
        FaultPoint::AfterDone,
        FaultPoint::BeforeQuit,
    ] {
        crash_and_rerun(Kind::Mbox, point, DeletePolicy::Delete);
    }
    crash_and_rerun(Kind::Mbox, FaultPoint::MidAppend, DeletePolicy::Keep);
}

// ---- The binary: command line, exit statuses, kill -9. ----

const PW_VAR: &str = "FACTEUR_FETCH_TEST_PASSWORD";

/// `facteur fetch pop3://alice@ADDR --plaintext --state-dir S ARGS...` with the password in
/// the environment.
fn fetch_cmd(env: &Env, args: &[&str]) -> std::process::Command {
    let mut c = facteur();
    c.arg("fetch")
        .arg(format!("pop3://{USER}@{}", env.server.addr))
        .arg("--plaintext")
        .arg("--password-env")
        .arg(PW_VAR)
        .arg("--state-dir")
        .arg(env.state_dir())
        .args(args)
        .env(PW_VAR, PASSWORD);
    c
}

/// Run a fetch command, again while the maildrop is still locked by a killed run's session.
fn run_fetch_cmd(mut make: impl FnMut() -> std::process::Command) -> (Option<i32>, String, String) {
    for _ in 0..400 {
        let (code, out, err) = run_with_input(&mut make(), b"");
        if code == Some(4) && err.contains("IN-USE") {
            std::thread::sleep(Duration::from_millis(25));
            continue;
        }
        return (code, out, err);
    }
    panic!("the maildrop stayed locked");
}

#[test]
fn exit_statuses_summary_and_quiet() {
    let env = Env::new();
    env.deliver_messages(2);
    let md = env.maildir();
    let md = md.to_str().unwrap();
    let (code, out, err) = run_fetch_cmd(|| fetch_cmd(&env, &["--maildir", md, "--dry-run"]));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("would fetch message 1"), "{out}");
    assert!(out.contains("2 messages to fetch"), "{out}");
    let (code, out, err) = run_fetch_cmd(|| fetch_cmd(&env, &["--maildir", md, "--keep"]));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("2 messages fetched"), "{out}");
    let (code, out, err) = run_fetch_cmd(|| fetch_cmd(&env, &["--maildir", md, "--keep", "-q"]));
    assert_eq!(code, Some(1), "nothing new: {err}");
    assert_eq!(out, "");
    assert_eq!(err, "");
    let (code, _, err) =
        run_fetch_cmd(|| fetch_cmd(&env, &["--maildir", md, "--dry-run", "--keep"]));
    assert_eq!(code, Some(1), "{err}");

    // Another run holds the account's lock.
    let lock_path = env.state_dir().join(format!("{USER}@localhost.lock"));
    let lock = std::fs::File::open(&lock_path).unwrap();
    lock.try_lock().unwrap();
    let (code, _, err) = run_fetch_cmd(|| fetch_cmd(&env, &["--maildir", md]));
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("another facteur fetch is running"), "{err}");
    drop(lock);

    // No destination: a usage error.
    let (code, _, err) = run_fetch_cmd(|| fetch_cmd(&env, &[]));
    assert_eq!(code, Some(2));
    assert!(err.contains("--maildir"), "{err}");
    // A wrong password.
    let (code, _, err) = run_fetch_cmd(|| {
        let mut c = fetch_cmd(&env, &["--maildir", md]);
        c.env(PW_VAR, "not-the-password");
        c
    });
    assert_eq!(code, Some(5), "{err}");
    assert!(!err.contains("not-the-password"));
}

#[test]
fn an_mda_does_not_see_the_password_and_relative_paths_work() {
    let env = Env::new();
    env.deliver_messages(1);
    let out = env.local.path().join("env-seen");
    let (code, _, err) = run_fetch_cmd(|| {
        let mut c = fetch_cmd(
            &env,
            &[
                "--mda",
                &format!("cat >/dev/null; env > '{}'", out.display()),
            ],
        );
        c.current_dir(env.local.path());
        c
    });
    assert_eq!(code, Some(0), "{err}");
    let seen = std::fs::read_to_string(&out).unwrap();
    assert!(seen.contains("PATH="), "{seen}");
    assert!(!seen.contains(PW_VAR) && !seen.contains(PASSWORD), "{seen}");

    // A relative Maildir, from another folder: the journal names it absolutely.
    env.deliver_messages(1);
    let (code, _, err) = run_fetch_cmd(|| {
        let mut c = facteur();
        c.current_dir(env.local.path())
            .arg("fetch")
            .arg(format!("pop3://{USER}@{}", env.server.addr))
            .args([
                "--plaintext",
                "--password-env",
                PW_VAR,
                "--state-dir",
                "state",
            ])
            .args(["--maildir", "Maildir"])
            .env(PW_VAR, PASSWORD);
        c
    });
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(maildir_messages(&env.maildir()).len(), 1);
}

#[test]
fn plaintext_needs_the_flag() {
    let env = Env::new();
    env.deliver_messages(1);
    let md = env.maildir();
    let (code, _, err) = run_with_input(
        facteur()
            .arg("fetch")
            .arg(format!("pop3://{USER}@{}", env.server.addr))
            .arg("--maildir")
            .arg(&md)
            .arg("--state-dir")
            .arg(env.state_dir())
            .arg("--password-env")
            .arg(PW_VAR)
            .env(PW_VAR, PASSWORD),
        b"",
    );
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("STLS"), "{err}");
    assert_eq!(env.on_server(), 1);
    let md = md.to_str().unwrap();
    let (code, _, err) = run_fetch_cmd(|| fetch_cmd(&env, &["--maildir", md]));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(env.on_server(), 0);
}

#[test]
fn a_config_file_with_a_password_must_be_private() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let sent = env.deliver_messages(2);
    let path = env.local.path().join("fetch.toml");
    std::fs::write(
        &path,
        format!(
            "state_dir = \"state\"\n\
             [[account]]\nname = \"local\"\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"{USER}\"\n\
             security = \"plaintext\"\npassword = \"{PASSWORD}\"\nmaildir = \"Maildir\"\n\
             [[account]]\nname = \"carol\"\nurl = \"pop3://{CRYPT_USER}@127.0.0.1:{port}\"\n\
             security = \"plaintext\"\npassword_command = \"echo {CRYPT_PASSWORD}\"\n\
             mbox = \"carol.mbox\"\n",
            port = env.server.addr.port()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = || run_with_input(facteur().arg("fetch").arg("--config").arg(&path), b"");
    let (code, _, err) = run();
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("chmod 600"), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    env.fx.deliver(CRYPT_USER, &message(7));
    let (code, out, err) = run();
    assert_eq!(code, Some(0), "{err}");
    // Two accounts, fetched at the same time, each to its own destination.
    assert!(out.contains("local: 2 messages fetched"), "{out}");
    assert!(out.contains("carol: 1 message fetched"), "{out}");
    assert!(out.contains("3 messages"), "{out}");
    assert_eq!(maildir_messages(&env.maildir()), sorted(sent));
    assert_eq!(
        mbox_messages(&env.local.path().join("carol.mbox")),
        [message(7)]
    );
    // Only one account, by name.
    let (code, out, err) = run_with_input(
        facteur()
            .arg("fetch")
            .arg("--config")
            .arg(&path)
            .arg("--account")
            .arg("carol"),
        b"",
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        out.contains("carol: no new messages") && !out.contains("local"),
        "{out}"
    );
}

/// Put `n` messages straight into the server's Maildir (faster than delivering each with an
/// fsync); returns their contents by Subject.
fn fill_server(env: &Env, n: usize) -> BTreeMap<String, Vec<u8>> {
    let md = env.fx.maildir(USER);
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(md.join(sub)).expect("create the Maildir");
    }
    let filler = "All work and no play makes a dull fetcher. ".repeat(40);
    let mut all = BTreeMap::new();
    for i in 0..n {
        let subject = format!("kill test {i:05}");
        let m = format!(
            "From: load@example.org\nSubject: {subject}\n\nFrom the body of {i}\n.{filler}\n"
        )
        .into_bytes();
        std::fs::write(
            md.join("new")
                .join(format!("{}.M{i}P1.test", 1_700_000_000 + i)),
            &m,
        )
        .expect("write a message");
        all.insert(subject, m);
    }
    all
}

/// Every message of `expected` exactly once among `local`.
fn exactly_once(local: &[Vec<u8>], expected: &BTreeMap<String, Vec<u8>>) {
    let mut seen: BTreeMap<&[u8], usize> = BTreeMap::new();
    for m in local {
        *seen.entry(m.as_slice()).or_default() += 1;
    }
    let dups: Vec<_> = seen.values().filter(|&&c| c > 1).collect();
    assert!(dups.is_empty(), "{} duplicated messages", dups.len());
    assert_eq!(local.len(), expected.len(), "messages lost");
    for m in expected.values() {
        assert!(seen.contains_key(m.as_slice()), "a message is missing");
    }
}

/// Start a fetch of many messages, `kill -9` it once it has delivered some, rerun it to the
/// end, and check that every message is there exactly once.
fn kill_during_a_big_fetch(kind: Kind, keep: bool) {
    const N: usize = 2500;
    let env = Env::new();
    let expected = fill_server(&env, N);
    let dest_args: Vec<String> = match kind {
        Kind::Maildir => vec!["--maildir".into(), env.maildir().display().to_string()],
        Kind::Mbox => vec!["--mbox".into(), env.mbox().display().to_string()],
    };
    let mut args: Vec<&str> = dest_args.iter().map(String::as_str).collect();
    if keep {
        args.push("--keep");
    }
    let mut child = fetch_cmd(&env, &args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start facteur fetch");
    // Wait (bounded) until some messages are in place, then kill -9.
    for _ in 0..20_000 {
        if child.try_wait().expect("wait for facteur fetch").is_some() {
            break;
        }
        let n = match kind {
            Kind::Maildir => std::fs::read_dir(env.maildir().join("new"))
                .map(|d| d.count())
                .unwrap_or(0),
            Kind::Mbox => {
                std::fs::metadata(env.mbox()).map(|m| m.len()).unwrap_or(0) as usize / 2000
            }
        };
        if n >= 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = child.kill();
    let _ = child.wait();
    let (code, _, err) = run_fetch_cmd(|| fetch_cmd(&env, &args));
    assert!(code == Some(0) || code == Some(1), "rerun: {code:?} {err}");
    exactly_once(&local_messages(&env, kind), &expected);
    assert_eq!(env.on_server(), if keep { N } else { 0 });
}

#[test]
fn kill_9_during_a_maildir_fetch() {
    kill_during_a_big_fetch(Kind::Maildir, false);
}

#[test]
fn kill_9_during_an_mbox_fetch_in_keep_mode() {
    kill_during_a_big_fetch(Kind::Mbox, true);
}

/// The binary aborted (no destructor, no flush, the dotlock left behind) at each point of the
/// commit, then rerun.
#[test]
fn abort_at_each_point_then_rerun() {
    let points = [
        (Kind::Maildir, "after-write"),
        (Kind::Maildir, "after-record"),
        (Kind::Maildir, "after-commit"),
        (Kind::Mbox, "after-record"),
        (Kind::Mbox, "mid-append"),
        (Kind::Mbox, "after-commit"),
        (Kind::Mbox, "before-quit"),
    ];
    for (kind, point) in points {
        let env = Env::new();
        let expected = fill_server(&env, THREE_BATCHES);
        let dest_args: Vec<String> = match kind {
            Kind::Maildir => vec!["--maildir".into(), env.maildir().display().to_string()],
            Kind::Mbox => vec!["--mbox".into(), env.mbox().display().to_string()],
        };
        let args: Vec<&str> = dest_args.iter().map(String::as_str).collect();
        let (code, _, err) = run_fetch_cmd(|| {
            let mut c = fetch_cmd(&env, &args);
            c.env(
                "FACTEUR_FETCH_FAULT",
                format!("{point}:{IN_THE_SECOND_BATCH}"),
            );
            c
        });
        assert!(
            code.is_none() || code == Some(134),
            "{kind:?} {point}: the process should have aborted: {code:?} {err}"
        );
        if matches!(kind, Kind::Mbox) && matches!(point, "after-record" | "mid-append") {
            assert!(
                env.local.path().join("mbox.lock").exists(),
                "an abort leaves the dotlock behind"
            );
        }
        let (code, _, err) = run_fetch_cmd(|| fetch_cmd(&env, &args));
        // 1, nothing new, when everything had been committed before the crash.
        assert!(
            code == Some(0) || code == Some(1),
            "{kind:?} {point}: rerun: {code:?} {err}"
        );
        exactly_once(&local_messages(&env, kind), &expected);
        assert_eq!(env.on_server(), 0, "{kind:?} {point}");
        assert!(!env.local.path().join("mbox.lock").exists());
    }
}
