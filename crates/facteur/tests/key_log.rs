//! `[tls] key_log`: every TLS session's secrets in the NSS key log format, for the
//! administrator only (the server refuses a file open to others and warns while it is on),
//! and the proof that it serves its purpose: tshark decrypts a capture of a POP3S session and
//! of an STLS session with it and finds the POP3 commands.
//!
//! Maildir only: the key log is about the TLS layer, the same for both stores.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The fixture's configuration with `key_log = PATH` in its `[tls]` section.
fn with_key_log(fx: &Fixture, key_log: &Path) -> PathBuf {
    let text = std::fs::read_to_string(&fx.config_path).expect("read the configuration");
    assert!(text.contains("[tls]\n"), "{text}");
    let text = text.replace("[tls]\n", &format!("[tls]\nkey_log = {key_log:?}\n"));
    let path = fx.path().join("key-log.toml");
    std::fs::write(&path, text).expect("write the configuration");
    path
}

fn private_file(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, "").expect("create the key log");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A POP3S session and an STLS session: USER, PASS, STAT, QUIT in each.
fn two_tls_sessions(fx: &Fixture, server: &BinServer) {
    let mut c = Client::connect_tls(server.pop3s(), fx.cert());
    assert!(c.cmd(&format!("USER {USER}")).starts_with("+OK"));
    assert!(c.cmd(&format!("PASS {PASSWORD}")).starts_with("+OK"));
    c.stat();
    c.quit();
    let mut c = Client::connect(server.addr);
    c.stls(fx.cert());
    assert!(c.cmd(&format!("USER {USER}")).starts_with("+OK"));
    assert!(c.cmd(&format!("PASS {PASSWORD}")).starts_with("+OK"));
    c.stat();
    c.quit();
}

#[test]
fn a_key_log_open_to_others_is_refused_at_start() {
    let fx = Fixture::with_tls();
    let key_log = fx.path().join("keys.log");
    private_file(&key_log, 0o644);
    let config = with_key_log(&fx, &key_log);
    let mut child = facteur()
        .args(["serve", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start facteur serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for facteur") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("facteur serve ran with a key log open to others");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    use std::io::Read as _;
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err);
    assert!(!status.success());
    assert!(err.contains("open to others (mode 0644)"), "{err}");
    assert_eq!(std::fs::read(&key_log).unwrap(), b"");
}

#[test]
fn every_tls_session_is_logged_in_the_key_log_and_warned_about() {
    let fx = Fixture::with_tls();
    fx.deliver(USER, &message(1));
    let key_log = fx.path().join("keys.log");
    let server = BinServer::start(&with_key_log(&fx, &key_log));
    let log = server.log();
    assert!(log.contains("the TLS key log is ON"), "{log}");
    two_tls_sessions(&fx, &server);
    server.wait_for_log("this session's secrets are written to the key log", 2);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_log).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "created private");
    let text = std::fs::read_to_string(&key_log).unwrap();
    // TLS 1.3: five secrets per session, each `LABEL <client random> <secret>` in hex.
    let traffic: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("CLIENT_TRAFFIC_SECRET_0 "))
        .collect();
    assert_eq!(traffic.len(), 2, "{text}");
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 3, "{line}");
        assert_eq!(fields[1].len(), 64, "a 32-octet client random: {line}");
        assert!(fields[1..]
            .iter()
            .all(|f| f.bytes().all(|b| b.is_ascii_hexdigit())));
    }
    // A plain session writes nothing.
    let before = text.len();
    let c = server.login(USER, PASSWORD);
    c.quit();
    assert_eq!(std::fs::read_to_string(&key_log).unwrap().len(), before);
}

/// dumpcap capturing `ports` on the loopback interface into `file`, running once the file
/// has its header.
fn start_capture(file: &Path, ports: &[u16]) -> Child {
    let filter = ports
        .iter()
        .map(|p| format!("tcp port {p}"))
        .collect::<Vec<_>>()
        .join(" or ");
    let child = Command::new("dumpcap")
        .args(["-q", "-i", "lo", "-f", &filter, "-w"])
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dumpcap");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(file).map_or(0, |m| m.len()) == 0 {
        assert!(Instant::now() < deadline, "dumpcap did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The header is written as the capture starts; give the filter a moment to be in place.
    std::thread::sleep(Duration::from_millis(500));
    child
}

fn stop_capture(mut child: Child) {
    // Let the last packets reach the capture, then stop it as Ctrl-C would.
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait for dumpcap").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.wait();
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn tshark_decrypts_pop3s_and_stls_with_the_key_log() {
    let required = std::env::var_os("FACTEUR_REQUIRE_TSHARK").is_some();
    let root = rustix::process::geteuid().is_root();
    if !(have("tshark") && have("dumpcap") && root) {
        assert!(
            !required,
            "FACTEUR_REQUIRE_TSHARK is set, but tshark and dumpcap (run as root) are not here"
        );
        eprintln!("skipped: tshark and dumpcap, as root, are needed to capture on lo");
        return;
    }
    let fx = Fixture::with_tls();
    fx.deliver(USER, &message(1));
    let key_log = fx.path().join("keys.log");
    let server = BinServer::start(&with_key_log(&fx, &key_log));
    let (plain, tls) = (server.addr.port(), server.pop3s().port());
    let capture = fx.path().join("pop3.pcapng");
    let dumpcap = start_capture(&capture, &[plain, tls]);
    two_tls_sessions(&fx, &server);
    stop_capture(dumpcap);

    // Without the key log, the POP3S commands cannot be read.
    let fields = |key_log: Option<&Path>| {
        let mut cmd = Command::new("tshark");
        cmd.arg("-r").arg(&capture);
        if let Some(k) = key_log {
            cmd.arg("-o")
                .arg(format!("tls.keylog_file:{}", k.display()));
        }
        cmd.args([
            // Neither port is POP3's: "Decode As", as an administrator would.
            "-d",
            &format!("tcp.port=={tls},tls"),
            "-d",
            &format!("tls.port=={tls},pop"),
            "-d",
            &format!("tcp.port=={plain},pop"),
            "-Y",
            "pop.request",
            "-T",
            "fields",
            "-e",
            "tcp.dstport",
            "-e",
            "pop.request.command",
        ]);
        let (code, out, err) = run_with_input(&mut cmd, b"");
        assert_eq!(code, Some(0), "tshark: {err}");
        out.lines()
            .map(|l| {
                let (port, command) = l.split_once('\t').unwrap_or((l, ""));
                (port.parse::<u16>().unwrap_or(0), command.to_owned())
            })
            .collect::<Vec<_>>()
    };
    let commands = |seen: &[(u16, String)], port: u16| {
        seen.iter()
            .filter(|(p, _)| *p == port)
            .map(|(_, c)| c.clone())
            .collect::<Vec<_>>()
    };
    let blind = fields(None);
    assert!(commands(&blind, tls).is_empty(), "{blind:?}");
    let seen = fields(Some(&key_log));
    assert_eq!(
        commands(&seen, tls),
        ["USER", "PASS", "STAT", "QUIT"],
        "{seen:?}"
    );
    // STLS in clear, then the same commands under TLS.
    assert_eq!(
        commands(&seen, plain),
        ["STLS", "USER", "PASS", "STAT", "QUIT"],
        "{seen:?}"
    );
}
