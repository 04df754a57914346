//! No surprises for the people who run facteur: `check-config` finds what will fail,
//! permanent delivery failures get permanent exit statuses, and small things a newcomer trips on.
//! Each test runs the real binary.
//!
//! Most of these tests are about Maildir templates, folders and descriptors, and run on the
//! Maildir store only; the deliveries whose outcome does not depend on the store run on both
//! (`maildir::` and `postgresql::`).

mod common;

use common::*;
use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};

/// The default fixture with another maildir template (and extra `[auth]` lines).
fn fixture_with(template: &str, auth: &str) -> Fixture {
    let f = Fixture::build(DEFAULT_LIMITS, auth, false);
    let text = std::fs::read_to_string(&f.config_path).expect("read the configuration");
    let text = text.replace(
        "maildir = \"mail/%u/Maildir\"",
        &format!("maildir = {template:?}"),
    );
    assert!(text.contains(&format!("maildir = {template:?}")), "{text}");
    std::fs::write(&f.config_path, text).expect("write the configuration");
    f
}

/// Run `facteur ARGS --config FILE` with `input` on stdin.
fn run(f: &Fixture, args: &[&str], input: &[u8]) -> Output {
    let mut child = facteur()
        .args(args)
        .arg("--config")
        .arg(&f.config_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start facteur");
    // The command may exit before it reads its input (a refusal): a broken pipe is fine.
    let _ = child.stdin.take().expect("its stdin").write_all(input);
    child.wait_with_output().expect("wait for facteur")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `facteur deliver USER` of a small message: (exit status, stderr).
fn deliver(f: &Fixture, user: &str, message: &[u8]) -> (i32, String) {
    let o = run(f, &["deliver", user], message);
    (o.status.code().unwrap_or(-1), stderr(&o))
}

const MESSAGE: &[u8] = b"Subject: hi\r\n\r\nhello\r\n";

#[test]
fn deliver_exits_with_a_permanent_status_for_what_retrying_cannot_fix() {
    // A bad template: a configuration error, 78.
    let f = fixture_with("mail/%x/Maildir", "");
    let (code, err) = deliver(&f, USER, MESSAGE);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("unknown %-escape"), "{err}");

    // A user name the template cannot use: 67, like an unknown user.
    let f = fixture_with("mail/%d/%n", "");
    let (code, err) = deliver(&f, USER, MESSAGE);
    assert_eq!(code, 67, "{err}");

    // %h for a user with no home: 78.
    let f = fixture_with("%h/Maildir", "");
    let (code, err) = deliver(&f, USER, MESSAGE);
    assert_eq!(code, 78, "{err}");

    // Under a regular file: 78, naming the path.
    let f = fixture_with("afile/%u/Maildir", "");
    std::fs::write(f.path().join("afile"), "").unwrap();
    let (code, err) = deliver(&f, USER, MESSAGE);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("afile"), "{err}");

    // Under /sys, where nobody may create a folder: refused by the system, 77.
    let f = fixture_with("/sys/facteur-test-%u/Maildir", "");
    let (code, err) = deliver(&f, USER, MESSAGE);
    assert_eq!(code, 77, "{err}");

    // The ordinary case still works, and an unknown user is 67.
    let f = Fixture::new();
    let (code, err) = deliver(&f, USER, MESSAGE);
    assert_eq!(code, 0, "{err}");
    assert_eq!(deliver(&f, "nobody-here", MESSAGE).0, 67);
}

/// What `facteur deliver` tells the MTA, whatever the store: 0 for a known user (the message is
/// there), 67 (EX_NOUSER) for an unknown one (nothing stored).
fn deliver_stores_for_a_known_user_and_bounces_an_unknown_one(backend: Backend) {
    let f = Fixture::new().on(backend);
    let (code, err) = deliver(&f, USER, MESSAGE);
    assert_eq!(code, 0, "{err}");
    assert_eq!(f.message_count(USER), 1);
    let (code, err) = deliver(&f, "nobody-here", MESSAGE);
    assert_eq!(code, 67, "{err}");
    assert!(f.uids("nobody-here").is_empty());
}

fn deliver_refuses_empty_input(backend: Backend) {
    let f = Fixture::new().on(backend);
    let (code, err) = deliver(&f, USER, b"");
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("empty"), "{err}");
    assert!(f.uids(USER).is_empty());
}

/// Run `cmd` as uid/gid 65534 with no supplementary groups (only when running as root, with
/// setpriv(1)); `None` otherwise.
fn as_nobody(args: &[&str], config: &Path, input: &[u8]) -> Option<Output> {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if !root
        || std::process::Command::new("setpriv")
            .arg("--version")
            .output()
            .is_err()
    {
        eprintln!("skipped: needs root and setpriv");
        return None;
    }
    let mut child = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_facteur"))
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let _ = child.stdin.take()?.write_all(input);
    child.wait_with_output().ok()
}

#[test]
fn deliver_names_the_directory_it_could_not_make_and_exits_77() {
    let f = fixture_with("locked/a/%u/Maildir", "");
    let locked = f.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for p in [f.path(), &f.path().join("users"), &f.config_path] {
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    let Some(o) = as_nobody(&["deliver", USER], &f.config_path, MESSAGE) else {
        return;
    };
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(77), "{err}");
    // locked/a is the folder that could not be made, not locked/a/alice.
    assert!(
        err.contains(&format!("{}:", locked.join("a").display())),
        "{err}"
    );
}

#[test]
fn user_add_refuses_names_the_template_cannot_use() {
    let f = fixture_with("mail/%d/%n", "");
    for name in ["noatsign", "../../etc"] {
        let o = run(&f, &["user", "add", name, "--password-stdin"], b"pw\n");
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains("refusing to add"), "{err}");
        let users = std::fs::read_to_string(f.path().join("users")).unwrap();
        assert!(!users.contains(name), "{users}");
    }
    let o = run(
        &f,
        &["user", "add", "bob@example.org", "--password-stdin"],
        b"pw\n",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // With %h, the name is checked and the missing home is pointed out.
    let f = fixture_with("%h/Maildir", "");
    let o = run(&f, &["user", "add", "bob", "--password-stdin"], b"pw\n");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("uses %h"), "{}", stderr(&o));
    // `user add --help` says what NAME is.
    let o = facteur().args(["user", "add", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.contains("The user name clients log in with"), "{help}");
}

#[test]
fn the_server_answers_sys_perm_when_the_maildrop_can_never_open() {
    let f = fixture_with("afile/%u/Maildir", "");
    std::fs::write(f.path().join("afile"), "").unwrap();
    let server = BinServer::start(&f.config_path);
    let mut c = Client::connect(server.addr);
    assert!(c.cmd(&format!("USER {USER}")).starts_with("+OK"));
    let r = c.cmd(&format!("PASS {PASSWORD}"));
    assert!(r.starts_with("-ERR [SYS/PERM] "), "{r}");
    assert!(!r.contains("try again"), "{r}");
}

/// `check-config`: (success, stderr).
fn check(f: &Fixture) -> (bool, String) {
    let o = run(f, &["check-config"], b"");
    (o.status.success(), stderr(&o))
}

#[test]
fn check_config_finds_maildir_templates_that_will_fail() {
    let (ok, err) = check(&fixture_with("mail/%x", ""));
    assert!(!ok && err.contains("unknown %-escape"), "{err}");
    let (ok, err) = check(&fixture_with("%h/Maildir", ""));
    assert!(!ok && err.contains("no home directory"), "{err}");
    let (ok, err) = check(&fixture_with("mail/shared/Maildir", ""));
    assert!(!ok && err.contains("no per-user part"), "{err}");
    let f = fixture_with("afile/%u", "");
    std::fs::write(f.path().join("afile"), "").unwrap();
    let (ok, err) = check(&f);
    assert!(!ok && err.contains("afile is not a directory"), "{err}");
    let (ok, err) = check(&fixture_with("/proc/mail/%u", ""));
    assert!(!ok && err.contains("kernel file system"), "{err}");
    // Users with no domain under a %d template: every user fails, an error.
    let (ok, err) = check(&fixture_with("mail/%d/%n", ""));
    assert!(!ok && err.contains("2 users"), "{err}");
    // The fixture's own setup passes.
    let (ok, err) = check(&Fixture::new());
    assert!(ok, "{err}");
    assert!(!err.contains("error"), "{err}");
}

#[test]
fn check_config_finds_a_maildir_root_the_serving_user_cannot_write() {
    let f = Fixture::new();
    let text = std::fs::read_to_string(&f.config_path).expect("read the configuration");
    // Served as nobody (65534), the maildirs go into a folder only root may write.
    let text = text.replace(
        "allow_root = true\n",
        "user = \"65534\"\ngroup = \"65534\"\n",
    );
    std::fs::write(&f.config_path, text).expect("write the configuration");
    std::fs::create_dir(f.path().join("mail")).unwrap();
    let (ok, err) = check(&f);
    if !ok && err.contains("does not exist") {
        return; // a system without uid 65534 in /etc/passwd: nothing to check here
    }
    let mail = f.path().join("mail");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&mail, std::fs::Permissions::from_mode(0o755)).unwrap();
    let owned_by_nobody = std::fs::metadata(&mail)
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 65534)
        .unwrap_or(false);
    let (ok, err) = check(&f);
    if owned_by_nobody {
        return; // the test itself runs as nobody
    }
    assert!(!ok, "{err}");
    assert!(err.contains("is not writable by uid 65534"), "{err}");
    assert!(err.contains(&*mail.to_string_lossy()), "{err}");
}

#[test]
fn check_config_warns_of_login_methods_users_cannot_use() {
    // alice is {PLAIN} (every method works), carol {SHA512-CRYPT}.
    let f = fixture_with(
        "mail/%u/Maildir",
        "sasl = [\"PLAIN\", \"CRAM-MD5\", \"SCRAM-SHA-256\"]\napop = true",
    );
    let (ok, err) = check(&f);
    assert!(ok, "{err}");
    for method in ["CRAM-MD5", "SCRAM-SHA-256", "APOP"] {
        let line = err
            .lines()
            .find(|l| l.starts_with(&format!("warning: {method} is offered")))
            .unwrap_or_else(|| panic!("no warning for {method}: {err}"));
        assert!(line.contains("1 of 2 users"), "{line}");
        assert!(line.contains("1 SHA512-CRYPT"), "{line}");
    }
    // Only PLAIN and LOGIN: no such warning.
    let (ok, err) = check(&fixture_with("mail/%u/Maildir", ""));
    assert!(ok && !err.contains("is offered"), "{err}");
}

#[test]
fn check_config_names_the_files_of_a_key_that_does_not_match() {
    let f = Fixture::with_tls();
    let other = tempfile::tempdir().unwrap();
    let other_files = facteur_tls::write_self_signed(other.path()).unwrap();
    std::fs::copy(&other_files.private_key, f.path().join("key.pem")).unwrap();
    let (ok, err) = check(&f);
    assert!(!ok, "{err}");
    assert!(err.contains("does not match the certificate"), "{err}");
    assert!(err.contains("key.pem") && err.contains("cert.pem"), "{err}");
    // The certificate given as the key.
    std::fs::copy(f.path().join("cert.pem"), f.path().join("key.pem")).unwrap();
    let (ok, err) = check(&f);
    assert!(!ok && err.contains("holds a certificate"), "{err}");
}

/// Run `facteur serve ARGS` (under `sh -c` with `prefix` before it, e.g. a ulimit), wait for
/// `lines` lines that say "listening", then stop it with SIGTERM and return its whole stderr.
fn serve_log(prefix: &str, args: &[&str], listeners: usize) -> (String, std::process::ExitStatus) {
    use std::io::{BufRead, BufReader};
    let script = format!("{prefix} exec \"$0\" serve \"$@\"");
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_facteur"))
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start facteur serve");
    let stderr = child.stderr.take().expect("its stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let mut log = String::new();
    let mut seen = 0;
    while seen < listeners {
        match rx.recv_timeout(READ_TIMEOUT) {
            Ok(line) => {
                seen += usize::from(line.contains("listening"));
                log.push_str(&line);
                log.push('\n');
            }
            Err(_) => break, // exited (or hung): the log says which
        }
    }
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    while let Ok(line) = rx.recv_timeout(READ_TIMEOUT) {
        log.push_str(&line);
        log.push('\n');
    }
    let status = child.wait().expect("wait for facteur serve");
    (log, status)
}

#[test]
fn check_config_and_serve_count_four_descriptors_per_session() {
    // 300 sessions need 4 * 300 + 64 = 1264 descriptors: more than 1000, though 2 per session
    // (664) would fit.
    let f = Fixture::with_limits(&format!("{DEFAULT_LIMITS}max_connections = 300\n"));
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 1000 && ulimit -Hn 1000 && exec \"$0\" check-config --config \"$1\"")
        .arg(env!("CARGO_BIN_EXE_facteur"))
        .arg(&f.config_path)
        .output()
        .expect("run check-config");
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("the open-file limit is 1000, and max_connections = 300 needs about 1264"),
        "{err}"
    );
    let config = f.config_path.to_string_lossy().into_owned();
    let (log, _) = serve_log(
        "ulimit -n 1000 && ulimit -Hn 1000 &&",
        &["--config", &config],
        1,
    );
    assert!(log.contains("needed=1264"), "{log}");
    assert!(log.contains("open-file limit is too low"), "{log}");
}

#[test]
fn serve_dev_fits_its_limits_to_the_machine_and_honours_given_ports() {
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let dir = tmp.path().join("dev");
    let dir_arg = dir.to_string_lossy().into_owned();
    // A port that is taken: the first run fails, and leaves no folder behind.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let taken_port = taken.local_addr().expect("its address").port().to_string();
    let tls_port = free_port().to_string();
    let (log, status) = serve_log(
        "",
        &[
            "--dev",
            "--data-dir",
            &dir_arg,
            "--port",
            &taken_port,
            "--tls-port",
            &tls_port,
        ],
        2,
    );
    assert!(!status.success(), "{log}");
    assert!(!dir.exists(), "the failed first run left {}", dir.display());
    // The retry on free ports serves, with a hard limit too low for the default 10,000
    // sessions, and no warning about it.
    let (port, tls_port) = (free_port().to_string(), free_port().to_string());
    let dev = [
        "--dev",
        "--data-dir",
        &dir_arg,
        "--port",
        &port,
        "--tls-port",
        &tls_port,
    ];
    let (log, _) = serve_log("ulimit -n 4096 && ulimit -Hn 4096 &&", &dev, 2);
    assert!(log.contains(&format!("address=127.0.0.1:{port}")), "{log}");
    assert!(!log.contains("open-file limit"), "{log}");
    // The folder exists now: other ports given on the command line are used all the same.
    let (port, tls_port) = (free_port().to_string(), free_port().to_string());
    let again = [
        "--dev",
        "--data-dir",
        &dir_arg,
        "--port",
        &port,
        "--tls-port",
        &tls_port,
    ];
    let (log, _) = serve_log("", &again, 2);
    assert!(log.contains(&format!("address=127.0.0.1:{port}")), "{log}");
    assert!(
        log.contains(&format!("address=127.0.0.1:{tls_port}")),
        "{log}"
    );
    // The last line is the last word.
    let last = log.lines().last().unwrap_or_default();
    assert!(last.ends_with("stopped"), "{log}");
}

both_backends!(
    deliver_stores_for_a_known_user_and_bounces_an_unknown_one,
    deliver_refuses_empty_input,
);
