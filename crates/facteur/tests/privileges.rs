//! Giving up root: `facteur serve` binds its listeners, then runs as `[server] user` with every
//! id, group and capability of root gone; it refuses to serve mail as root unless
//! `[server] allow_root` says so; unknown accounts stop it at start and fail check-config.
//!
//! CI runs as root, where every test checks the real switch. Run as another user, the tests
//! that need root check what such a user can: that the switch is refused, not skipped.
//!
//! The test that serves mail as nobody runs on both stores (`maildir::` and `postgresql::`); the
//! others are about accounts, capabilities and files, the same whatever the store, and run once
//! on the Maildir store.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{mpsc, Arc, Mutex};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `[server]` keys naming an account other than the one running the tests (by number, so that
/// it need not exist): switching to it needs root.
fn someone_else() -> String {
    let me = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    format!("user = \"{}\"\ngroup = \"{gid}\"", me + 1)
}

/// An account's uid and gid, read from /etc/passwd here, independently of facteur's parser.
fn account(name: &str) -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[0] == name)
                .then(|| (f[2].parse().expect("a uid"), f[3].parse().expect("a gid")))
        })
        .unwrap_or_else(|| panic!("no {name} in /etc/passwd"))
}

/// The name of a gid in /etc/group (or the number).
fn group_name(gid: u32) -> String {
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    group
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 3 && f[2] == gid.to_string()).then(|| f[0].to_string())
        })
        .unwrap_or_else(|| gid.to_string())
}

/// Set `keys` at the top of the fixture's `[server]` section, instead of any `user`, `group` or
/// `allow_root` it had (the shared fixture allows root, since CI runs as root): these tests say
/// what they want.
fn set_server_keys(fx: &Fixture, keys: &str) {
    let text = std::fs::read_to_string(&fx.config_path).expect("read the configuration");
    let text: String = text
        .lines()
        .filter(|l| {
            !["allow_root", "user ", "group "]
                .iter()
                .any(|k| l.trim_start().starts_with(k))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(text.contains("[server]\n"), "{text}");
    let text = text.replacen("[server]\n", &format!("[server]\n{keys}\n"), 1);
    std::fs::write(&fx.config_path, text).expect("write the configuration");
}

/// Run `facteur serve --config` to its end (it must end by itself): (exit code, stderr).
fn serve_exits(config: &Path) -> (Option<i32>, String) {
    let (code, _, stderr) = run_with_input(facteur().arg("serve").arg("--config").arg(config), b"");
    (code, stderr)
}

/// Run `facteur check-config --config`: (exit code, stdout, stderr).
fn check_config(config: &Path) -> (Option<i32>, String, String) {
    run_with_input(
        facteur().arg("check-config").arg("--config").arg(config),
        b"",
    )
}

/// One line of a /proc status text, after its colon, trimmed.
fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in:\n{status}"))
        .trim()
        .to_string()
}

/// The status text of every thread of process `pid`.
fn thread_statuses(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("list the server's threads")
        .map(|t| {
            std::fs::read_to_string(t.expect("a thread").path().join("status"))
                .expect("read a thread's status")
        })
        .collect()
}

/// Every uid and gid slot (real, effective, saved, filesystem) of every thread is `uid`/`gid`,
/// no supplementary group, no capability, no_new_privs; returns the number of threads.
fn assert_runs_as(pid: u32, uid: u32, gid: u32) -> usize {
    let statuses = thread_statuses(pid);
    for s in &statuses {
        assert_eq!(
            status_field(s, "Uid"),
            format!("{uid}\t{uid}\t{uid}\t{uid}"),
            "{s}"
        );
        assert_eq!(
            status_field(s, "Gid"),
            format!("{gid}\t{gid}\t{gid}\t{gid}"),
            "{s}"
        );
        assert_eq!(status_field(s, "Groups"), "", "{s}");
        for cap in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
            assert_eq!(status_field(s, cap), "0000000000000000", "{cap}: {s}");
        }
        assert_eq!(status_field(s, "NoNewPrivs"), "1", "{s}");
    }
    statuses.len()
}

/// `chown -R uid:gid path` (links themselves, never followed).
fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).expect("chown");
    if path.symlink_metadata().expect("stat").is_dir() {
        for e in std::fs::read_dir(path).expect("list a folder") {
            chown_tree(&e.expect("a folder entry").path(), uid, gid);
        }
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The fixture's folder, configuration and users file readable by anyone (a temporary folder is
/// 0700): what an unprivileged server or a server started as nobody needs.
fn open_up(fx: &Fixture) {
    chmod(fx.path(), 0o755);
    chmod(&fx.config_path, 0o644);
    chmod(&fx.path().join("users"), 0o644);
}

/// `facteur serve` started by hand, as `uid:gid` if given; stderr kept; killed when dropped.
struct Started {
    child: Child,
    log: Arc<Mutex<String>>,
    /// A line for each "listening" log line, and one at the end of stderr.
    lines: mpsc::Receiver<Option<std::net::SocketAddr>>,
}

impl Started {
    fn new(args: &[&std::ffi::OsStr], ids: Option<(u32, u32)>) -> Self {
        let mut cmd = facteur();
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = ids {
            cmd.uid(uid).gid(gid);
        }
        let mut child = cmd.spawn().expect("start facteur");
        let stderr = child.stderr.take().expect("the child's stderr");
        Self::from_child(child, stderr)
    }

    /// Follow a child started elsewhere, whose stderr is `stderr`.
    fn from_child(child: Child, stderr: std::process::ChildStderr) -> Self {
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel();
        let keep = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let line = strip_ansi(&line);
                if let Some(a) = listening_address(&line) {
                    let _ = tx.send(Some(a));
                }
                keep.lock()
                    .expect("the log lock")
                    .push_str(&format!("{line}\n"));
            }
            let _ = tx.send(None);
        });
        Self { child, log, lines }
    }

    /// The first listening address, or None if the server ended first.
    fn listening(&self) -> Option<std::net::SocketAddr> {
        self.lines
            .recv_timeout(READ_TIMEOUT)
            .unwrap_or_else(|_| panic!("facteur neither listened nor ended:\n{}", self.log()))
    }

    /// Its exit code, once it ended (bounded).
    fn exit_code(&mut self) -> Option<i32> {
        for _ in 0..(READ_TIMEOUT.as_millis() / 10) {
            if let Some(s) = self.child.try_wait().expect("wait for facteur") {
                return s.code();
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("facteur did not end:\n{}", self.log());
    }

    fn log(&self) -> String {
        self.log.lock().expect("the log lock").clone()
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// On PostgreSQL, the store's connections are made after the switch: nobody reaches the
/// database (a Unix socket or TCP), where the maildrops are rows that no file mode guards.
fn serve_as_nobody_gives_up_every_id_group_and_capability_and_serves_a_maildrop(backend: Backend) {
    let fx = Fixture::new().on(backend);
    let (uid, gid) = account("nobody");
    let message = message(1);
    fx.deliver(USER, &message);
    fx.deliver(CRYPT_USER, &message);
    set_server_keys(&fx, "user = \"nobody\"");
    if !is_root() {
        // Switching to another user needs root: refused, never served as the wrong user.
        set_server_keys(&fx, &someone_else());
        let (code, stderr) = serve_exits(&fx.config_path);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("that needs root"), "{stderr}");
        assert!(!stderr.contains("listening"), "{stderr}");
        return;
    }
    open_up(&fx);
    if backend == Backend::Maildir {
        // alice's maildrop belongs to nobody; carol's stays root's, closed to others.
        chmod(&fx.path().join("mail"), 0o755);
        chown_tree(&fx.path().join("mail").join(USER), uid, gid);
        chmod(&fx.path().join("mail").join(CRYPT_USER), 0o700);
    }

    let server = BinServer::start(&fx.config_path);
    let threads = assert_runs_as(server.child.id(), uid, gid);
    // The runtime was started after the switch: its threads are nobody's too (checked above).
    assert!(threads > 1, "the runtime's threads: {threads}");
    assert!(
        server.log().contains(&format!(
            "running as user nobody (uid {uid}), group {} (gid {gid})",
            group_name(gid)
        )),
        "{}",
        server.log()
    );

    let mut c = server.login(USER, PASSWORD);
    assert_eq!(c.retrieve("RETR 1"), crlf(&message));
    c.quit();
    if backend == Backend::Postgresql {
        // Every maildrop is in the database, which the server reaches as nobody.
        let mut c = server.login(CRYPT_USER, CRYPT_PASSWORD);
        assert_eq!(c.retrieve("RETR 1"), crlf(&message));
        assert!(c.cmd("DELE 1").starts_with("+OK"));
        c.quit();
        assert!(fx.uids(CRYPT_USER).is_empty(), "carol's message deleted");
        return;
    }
    // A maildrop only root may open is out of reach: the server really is nobody.
    let mut c = Client::connect(server.addr);
    assert!(c.cmd(&format!("USER {CRYPT_USER}")).starts_with("+OK"));
    let r = c.cmd(&format!("PASS {CRYPT_PASSWORD}"));
    assert!(r.starts_with("-ERR"), "{r}");
    assert_eq!(
        fx.message_count(CRYPT_USER),
        1,
        "carol's message is untouched"
    );
}

/// The passwd-file is read after the switch, as the user that will re-read it: one that user
/// cannot read stops the server at start, with the reason.
#[test]
fn a_passwd_file_the_user_cannot_read_stops_the_server_at_start() {
    let fx = Fixture::new();
    if !is_root() {
        set_server_keys(&fx, &someone_else());
        let (code, stderr) = serve_exits(&fx.config_path);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("that needs root"), "{stderr}");
        return;
    }
    set_server_keys(&fx, "user = \"nobody\"");
    open_up(&fx);
    chmod(&fx.path().join("users"), 0o600);
    let (code, stderr) = serve_exits(&fx.config_path);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("running as user nobody"), "{stderr}");
    assert!(stderr.contains("who must be able to read it"), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
}

#[test]
fn root_is_refused_without_user_unless_allow_root() {
    let fx = Fixture::new();
    set_server_keys(&fx, "");
    fx.deliver(USER, &message(1));
    if !is_root() {
        // Nothing to refuse: an unprivileged user without [server] user serves as itself.
        open_up(&fx);
        let server = BinServer::start(&fx.config_path);
        let me = rustix::process::getuid().as_raw();
        let status = &thread_statuses(server.child.id())[0];
        assert!(
            status_field(status, "Uid").starts_with(&format!("{me}\t")),
            "{status}"
        );
        server.login(USER, PASSWORD).quit();
        return;
    }
    let (code, stderr) = serve_exits(&fx.config_path);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("refusing to serve mail as root"),
        "{stderr}"
    );
    assert!(stderr.contains("[server] user"), "{stderr}");
    assert!(stderr.contains("allow_root"), "{stderr}");
    assert!(!stderr.contains("listening"), "nothing bound: {stderr}");

    // check-config passes (the service may run with User=) but says so.
    let (code, stdout, stderr) = check_config(&fx.config_path);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("never root"), "{stdout}");
    assert!(stderr.contains("will refuse to run"), "{stderr}");

    set_server_keys(&fx, "allow_root = true");
    let server = BinServer::start(&fx.config_path);
    assert!(
        server.log().contains("allow_root = true"),
        "{}",
        server.log()
    );
    let status = &thread_statuses(server.child.id())[0];
    assert_eq!(status_field(status, "Uid"), "0\t0\t0\t0");
    server.login(USER, PASSWORD).quit();
}

#[test]
fn user_root_is_refused_without_allow_root() {
    let fx = Fixture::new();
    set_server_keys(&fx, "user = \"root\"");
    let (code, stderr) = serve_exits(&fx.config_path);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("refusing to serve mail as root"),
        "{stderr}"
    );
    let (code, _, stderr) = check_config(&fx.config_path);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("refusing to serve mail as root"),
        "{stderr}"
    );
}

#[test]
fn unknown_users_and_groups_are_refused_at_start_and_by_check_config() {
    for (keys, expected) in [
        (
            "user = \"no-such-user-facteur\"",
            "[server] user = \"no-such-user-facteur\": no such user in /etc/passwd",
        ),
        (
            "user = \"nobody\"\ngroup = \"no-such-group-facteur\"",
            "[server] group = \"no-such-group-facteur\": no such group in /etc/group",
        ),
        ("user = \"4321987\"", "set [server] group too"),
        ("user = \"4294967295\"", "below 4294967295"),
    ] {
        let fx = Fixture::new();
        set_server_keys(&fx, keys);
        let (code, stderr) = serve_exits(&fx.config_path);
        assert_eq!(code, Some(1), "{keys}: {stderr}");
        assert!(stderr.contains(expected), "{keys}: {stderr}");
        assert!(!stderr.contains("listening"), "{keys}: {stderr}");
        let (code, stdout, stderr) = check_config(&fx.config_path);
        assert_eq!(code, Some(1), "{keys}: {stdout}");
        assert!(stderr.contains(expected), "{keys}: {stderr}");
    }
}

#[test]
fn check_config_names_the_account_it_will_run_as() {
    // check-config checks that the serving account can make the maildirs: let it.
    let usable_by_nobody = |fx: &Fixture| {
        use std::os::unix::fs::PermissionsExt;
        let mail = fx.path().join("mail");
        std::fs::create_dir_all(&mail).unwrap();
        std::fs::set_permissions(fx.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&mail, std::fs::Permissions::from_mode(0o777)).unwrap();
    };
    let fx = Fixture::new();
    usable_by_nobody(&fx);
    let (uid, gid) = account("nobody");
    set_server_keys(&fx, "user = \"nobody\"");
    let (code, stdout, stderr) = check_config(&fx.config_path);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains(&format!(
            "runs as user nobody (uid {uid}), group {} (gid {gid})",
            group_name(gid)
        )),
        "{stdout}"
    );
    // By number, with a group by number.
    let fx = Fixture::new();
    usable_by_nobody(&fx);
    set_server_keys(&fx, &format!("user = \"{uid}\"\ngroup = \"{gid}\""));
    let (code, stdout, stderr) = check_config(&fx.config_path);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains(&format!("runs as user nobody (uid {uid})")),
        "{stdout}"
    );
}

/// As under systemd's User= and Group=: started as the configured user, nothing to switch; as
/// another unprivileged user, the switch is refused; without [server] user, it serves as itself.
#[test]
fn started_unprivileged_it_runs_as_itself_and_cannot_switch() {
    if !is_root() {
        // Starting a process as another user needs root; the refusal of a switch without root
        // is checked by serve_as_nobody_gives_up_every_id_group_and_capability_and_serves_a_maildrop.
        let fx = Fixture::new();
        let (code, stdout, stderr) = check_config(&fx.config_path);
        assert_eq!(code, Some(0), "{stderr}");
        assert!(stdout.contains("never root"), "{stdout}");
        return;
    }
    let (uid, gid) = account("nobody");
    let config = |keys: &str| {
        let fx = Fixture::new();
        set_server_keys(&fx, keys);
        fx.deliver(USER, &message(1));
        open_up(&fx);
        chmod(&fx.path().join("mail"), 0o755);
        chown_tree(&fx.path().join("mail").join(USER), uid, gid);
        fx
    };
    for keys in ["user = \"nobody\"", ""] {
        let fx = config(keys);
        let server = Started::new(
            &[
                "serve".as_ref(),
                "--config".as_ref(),
                fx.config_path.as_os_str(),
            ],
            Some((uid, gid)),
        );
        let addr = server
            .listening()
            .unwrap_or_else(|| panic!("{keys:?}: facteur ended:\n{}", server.log()));
        assert_runs_as(server.child.id(), uid, gid);
        Client::login(addr, USER, PASSWORD).quit();
    }
    // Another account than the one it was started as: that needs root.
    let fx = config("user = \"root\"\nallow_root = true");
    let mut server = Started::new(
        &[
            "serve".as_ref(),
            "--config".as_ref(),
            fx.config_path.as_os_str(),
        ],
        Some((uid, gid)),
    );
    assert_eq!(server.listening(), None, "{}", server.log());
    assert_eq!(server.exit_code(), Some(1));
    assert!(server.log().contains("that needs root"), "{}", server.log());
}

/// The README's first command, `facteur serve --dev` on a fresh machine, runs as whoever starts
/// it; as root it says loudly that this is for a first look only.
#[test]
fn dev_mode_as_root_serves_with_a_loud_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("dev");
    let (port, tls_port) = (free_port(), free_port());
    let server = Started::new(
        &[
            "serve".as_ref(),
            "--dev".as_ref(),
            "--data-dir".as_ref(),
            data_dir.as_os_str(),
            "--port".as_ref(),
            port.to_string().as_ref(),
            "--tls-port".as_ref(),
            tls_port.to_string().as_ref(),
        ],
        None,
    );
    let addr = server
        .listening()
        .unwrap_or_else(|| panic!("serve --dev ended:\n{}", server.log()));
    assert_eq!(addr.port(), port);
    let warned = server.log().contains("RUNNING AS ROOT");
    assert_eq!(warned, is_root(), "{}", server.log());
}

/// A key only root may read is read before the switch, so POP3S works as nobody; the log says at
/// start that a SIGHUP reload, which runs as nobody, cannot read it, and such a reload keeps the
/// certificate in use.
#[test]
fn a_root_only_key_serves_and_a_reload_as_nobody_keeps_it() {
    let fx = Fixture::with_tls();
    let key = fx.path().join("key.pem");
    chmod(&key, 0o600);
    if !is_root() {
        // Nothing to switch to: the refusal to switch without root is checked above; here the
        // key is ours, so it loads, and check-config agrees.
        let (code, stdout, stderr) = check_config(&fx.config_path);
        assert_eq!(code, Some(0), "{stderr}");
        assert!(stdout.contains("POP3S on"), "{stdout}");
        return;
    }
    let (uid, gid) = account("nobody");
    set_server_keys(&fx, "user = \"nobody\"");
    fx.deliver(USER, &message(1));
    open_up(&fx);
    chmod(&fx.path().join("mail"), 0o755);
    chown_tree(&fx.path().join("mail").join(USER), uid, gid);

    let server = BinServer::start(&fx.config_path);
    let log = server.log();
    assert!(
        log.contains("cannot read this file") && log.contains("SIGHUP reload will fail"),
        "{log}"
    );
    assert!(log.contains(&key.display().to_string()), "{log}");
    let mut c = Client::connect_tls(server.pop3s(), fx.cert());
    assert!(c.cmd(&format!("USER {USER}")).starts_with("+OK"));
    assert!(c.cmd(&format!("PASS {PASSWORD}")).starts_with("+OK"));
    c.quit();

    server.signal("HUP");
    server.wait_for_log("TLS certificate NOT reloaded", 1);
    let mut c = Client::connect_tls(server.pop3s(), fx.cert());
    assert!(c.cmd(&format!("USER {USER}")).starts_with("+OK"));
    assert!(c.cmd(&format!("PASS {PASSWORD}")).starts_with("+OK"));
    c.quit();
    assert_runs_as(server.child.id(), uid, gid);
}

/// As under systemd's User= with AmbientCapabilities=CAP_NET_BIND_SERVICE: the capability binds
/// a port below 1024, then facteur gives it up (setpriv sets the process up as systemd would).
#[test]
fn a_capability_given_for_binding_is_given_up_once_bound() {
    if !is_root() {
        // No capability to give: started as ourselves, none is left and no_new_privs is set.
        let fx = Fixture::new();
        set_server_keys(&fx, "");
        let server = BinServer::start(&fx.config_path);
        for s in thread_statuses(server.child.id()) {
            for cap in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
                assert_eq!(status_field(&s, cap), "0000000000000000", "{cap}: {s}");
            }
            assert_eq!(status_field(&s, "NoNewPrivs"), "1", "{s}");
        }
        return;
    }
    let (uid, gid) = account("nobody");
    // A free port below 1024 (bound and released by root here).
    let port = (900..1024)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below 1024");
    let fx = Fixture::new();
    set_server_keys(&fx, "");
    let text = std::fs::read_to_string(&fx.config_path).expect("read the configuration");
    let text = text.replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(&fx.config_path, text).expect("write the configuration");
    fx.deliver(USER, &message(1));
    open_up(&fx);
    chmod(&fx.path().join("mail"), 0o755);
    chown_tree(&fx.path().join("mail").join(USER), uid, gid);

    let mut cmd = std::process::Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .args([
            "--clear-groups",
            "--inh-caps=+net_bind_service",
            "--ambient-caps=+net_bind_service",
        ])
        .arg(env!("CARGO_BIN_EXE_facteur"))
        .args(["serve", "--config"])
        .arg(&fx.config_path)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run setpriv (util-linux)");
    let stderr = child.stderr.take().expect("the child's stderr");
    let server = Started::from_child(child, stderr);
    let addr = server
        .listening()
        .unwrap_or_else(|| panic!("facteur ended:\n{}", server.log()));
    assert_eq!(addr.port(), port);
    // setpriv exec()s facteur: same process.
    assert_runs_as(server.child.id(), uid, gid);
    Client::login(addr, USER, PASSWORD).quit();
}

both_backends!(serve_as_nobody_gives_up_every_id_group_and_capability_and_serves_a_maildrop);
