//! Real POP3 clients that nobody here wrote: Python's poplib and curl.

mod common;

use common::*;
use std::process::Command;

/// Logs in, then STAT, LIST, UIDL, RETR of every message, TOP 1 0, DELE 1, QUIT; prints what
/// it got, one line per answer.
const POPLIB_SCRIPT: &str = r#"
import hashlib, poplib, sys
host, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
p = poplib.POP3(host, port, timeout=30)
print("WELCOME", p.getwelcome()[:3].decode())
p.user(user)
p.pass_(password)
count, size = p.stat()
print("STAT", count, size)
for line in p.list()[1]:
    print("LIST", line.decode())
for line in p.uidl()[1]:
    print("UIDL", line.decode())
for i in range(1, count + 1):
    resp, lines, octets = p.retr(i)
    data = b"".join(l + b"\r\n" for l in lines)
    print("RETR", i, octets, hashlib.sha256(data).hexdigest())
resp, lines, octets = p.top(1, 0)
print("TOP", hashlib.sha256(b"".join(l + b"\r\n" for l in lines)).hexdigest())
print("DELE", p.dele(1)[:3].decode())
print("QUIT", p.quit()[:3].decode())
"#;

fn python_poplib(backend: Backend) {
    let fx = Fixture::new().on(backend);
    let messages = [message(1), message(2)];
    let delivered: Vec<_> = messages.iter().map(|m| fx.deliver(USER, m)).collect();
    let server = fx.start();

    // What the server says, read with our own client first (and the lock released by QUIT).
    let mut c = server.login(USER, PASSWORD);
    let uids = c.uidl();
    c.quit();

    let (code, stdout, stderr) = run_with_input(
        Command::new("python3")
            .arg("-c")
            .arg(POPLIB_SCRIPT)
            .arg("127.0.0.1")
            .arg(server.addr.port().to_string())
            .arg(USER)
            .arg(PASSWORD),
        b"",
    );
    assert_eq!(code, Some(0), "python3 poplib failed:\n{stdout}\n{stderr}");

    let sizes: Vec<u64> = delivered.iter().map(|d| d.wire_size).collect();
    let mut expected = format!(
        "WELCOME +OK\nSTAT 2 {}\nLIST 1 {}\nLIST 2 {}\n",
        sizes[0] + sizes[1],
        sizes[0],
        sizes[1]
    );
    for (n, uid) in &uids {
        expected += &format!("UIDL {n} {uid}\n");
    }
    for (i, m) in messages.iter().enumerate() {
        expected += &format!("RETR {} {} {}\n", i + 1, sizes[i], sha256_hex(&crlf(m)));
    }
    expected += &format!(
        "TOP {}\nDELE +OK\nQUIT +OK\n",
        sha256_hex(&wire_header(&messages[0]))
    );
    assert_eq!(stdout, expected);

    assert_eq!(fx.uids(USER), vec![delivered_base(&delivered[1])]);
}

/// Run curl against the server; returns its standard output, and panics unless it succeeds.
fn curl(args: &[&str]) -> String {
    let (code, stdout, stderr) = run_with_input(
        Command::new("curl")
            .args(["--silent", "--show-error", "--max-time", "30"])
            .args(["--user", &format!("{USER}:{PASSWORD}")])
            .args(args),
        b"",
    );
    assert_eq!(code, Some(0), "curl {args:?} failed: {stderr}");
    stdout
}

fn curl_lists_retrieves_and_deletes(backend: Backend) {
    let fx = Fixture::new().on(backend);
    let messages = [message(1), message(2)];
    let delivered: Vec<_> = messages.iter().map(|m| fx.deliver(USER, m)).collect();
    let server = fx.start();
    let base = format!("pop3://127.0.0.1:{}", server.addr.port());
    let sizes: Vec<u64> = delivered.iter().map(|d| d.wire_size).collect();

    // No message number: LIST.
    let listing = curl(&[&format!("{base}/")]);
    assert_eq!(listing, format!("1 {}\r\n2 {}\r\n", sizes[0], sizes[1]));

    // A message number: RETR, un-stuffed by curl.
    for (i, m) in messages.iter().enumerate() {
        let got = curl(&[&format!("{base}/{}", i + 1)]);
        assert_eq!(got.as_bytes(), crlf(m), "RETR {}", i + 1);
    }

    // A custom command: UIDL gives the same listing as our own client sees.
    let uidl = curl(&["--request", "UIDL", &format!("{base}/")]);
    let mut c = server.login(USER, PASSWORD);
    let uids = c.uidl();
    c.quit();
    let expected: String = uids.iter().map(|(n, u)| format!("{n} {u}\r\n")).collect();
    assert_eq!(uidl, expected);

    // DELE has a one-line answer, hence --head (no body expected); curl QUITs, so it is applied.
    curl(&["--request", "DELE", "--head", &format!("{base}/1")]);
    assert_eq!(fx.uids(USER), vec![delivered_base(&delivered[1])]);
    let listing = curl(&[&format!("{base}/")]);
    assert_eq!(listing, format!("1 {}\r\n", sizes[1]));
    let got = curl(&[&format!("{base}/1")]);
    assert_eq!(got.as_bytes(), crlf(&messages[1]));
}

fn curl_with_a_wrong_password_fails_to_log_in(backend: Backend) {
    let fx = Fixture::new().on(backend);
    fx.deliver(USER, &message(1));
    let server = fx.start();
    let (code, _, _) = run_with_input(
        Command::new("curl")
            .args(["--silent", "--max-time", "30", "--user", "alice:wrong"])
            .arg(format!("pop3://127.0.0.1:{}/", server.addr.port())),
        b"",
    );
    // 67: CURLE_LOGIN_DENIED.
    assert_eq!(code, Some(67));
    assert_eq!(fx.message_count(USER), 1);
}

both_backends!(
    python_poplib,
    curl_lists_retrieves_and_deletes,
    curl_with_a_wrong_password_fails_to_log_in,
);
