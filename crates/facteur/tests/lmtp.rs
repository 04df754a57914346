//! LMTP delivery (RFC 2033) end to end: `facteur serve` with `[server] listen_lmtp` on a TCP
//! port and a Unix socket, driven by Python's `smtplib.LMTP` (pipelined commands, one reply per
//! recipient after DATA), on the Maildir store and on PostgreSQL, then read back over POP3; and
//! a private Postfix instance (Debian's package, its own configuration, queue and log in a
//! temporary folder) delivering mail it received over SMTP through `lmtp:unix:` and
//! `lmtp:inet:`.

mod common;
use common::pg;
use common::postfix::{chmod, Postfix};

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A fixture's configuration with LMTP on `port` and on `socket`, `[limits]` and `[lmtp]` extras,
/// written to `name`; returns its path.
fn lmtp_config(config: &Path, port: u16, socket: &Path, limits: &str, lmtp: &str) -> PathBuf {
    let text = std::fs::read_to_string(config).expect("read the configuration");
    let text = text
        .replacen(
            "[server]\n",
            &format!(
                "[server]\nlisten_lmtp = [\"127.0.0.1:{port}\", {:?}]\n",
                socket.display()
            ),
            1,
        )
        .replacen("[limits]\n", &format!("[limits]\n{limits}\n"), 1);
    let text = format!("{text}\n[lmtp]\n{lmtp}\n");
    let path = config.with_file_name("lmtp.toml");
    std::fs::write(&path, text).expect("write the configuration");
    path
}

/// The Python side: pipelined transactions over `smtplib.LMTP`, checking every reply.
const PYTHON_LMTP: &str = r#"
import smtplib, socket, sys

where, max_size = sys.argv[1], int(sys.argv[2])
if where.startswith('/'):
    s = smtplib.LMTP(where, timeout=30)
else:
    host, port = where.rsplit(':', 1)
    s = smtplib.LMTP(host, int(port), timeout=30)

def expect(reply, code, status):
    got = (reply[0], reply[1].decode('ascii', 'replace'))
    assert got[0] == code and got[1].startswith(status), f"want {code} {status}, got {got}"

code, _ = s.ehlo()  # LMTP's ehlo sends LHLO
assert code == 250, code
for ext in ('pipelining', 'enhancedstatuscodes', '8bitmime', 'size'):
    assert s.has_extn(ext), (ext, s.esmtp_features)
assert int(s.esmtp_features['size']) == max_size, s.esmtp_features

# One write for the whole envelope (PIPELINING): the replies come back in order.
s.sock.sendall(b"MAIL FROM:<sender@example.net> BODY=8BITMIME\r\n"
               b"RCPT TO:<alice@test.invalid>\r\n"
               b"RCPT TO:<nobody@test.invalid>\r\n"
               b"RCPT TO:<carol@test.invalid>\r\n"
               b"DATA\r\n")
expect(s.getreply(), 250, '2.1.0')
expect(s.getreply(), 250, '2.1.5')
expect(s.getreply(), 550, '5.1.1')
expect(s.getreply(), 250, '2.1.5')
expect(s.getreply(), 354, '')
body = ("Subject: LMTP test\r\n\r\nH\u00e9llo\r\n.a stuffed line\r\n..\r\nend\r\n").encode('utf-8')
s.send(smtplib.quotedata(body.decode('utf-8')).encode('utf-8') + b".\r\n")
# One reply per accepted recipient, in RCPT order; carol's maildrop is blocked by the test
# when it says so, and only carol then gets 451.
first = s.getreply()
second = s.getreply()
expect(first, 250, '2.0.0')
assert b'alice@test.invalid' in first[1], first
if sys.argv[3] == 'carol-blocked':
    expect(second, 451, '4.3.0')
else:
    expect(second, 250, '2.0.0')
assert b'carol@test.invalid' in second[1], second

# SIZE over the cap, and a body over the cap: 552 5.3.4 per recipient.
expect(s.docmd('MAIL FROM:<a@example.net> SIZE=%d' % (max_size + 1)), 552, '5.3.4')
expect(s.docmd('MAIL FROM:<a@example.net>'), 250, '2.1.0')
expect(s.docmd('RCPT TO:<alice@test.invalid>'), 250, '2.1.5')
expect(s.docmd('DATA'), 354, '')
s.send(b'x' * (max_size + 100) + b'\r\n.\r\n')
expect(s.getreply(), 552, '5.3.4')

# The recipient cap (3 in this test), RSET, NOOP, VRFY that tells nothing, HELO refused.
expect(s.docmd('MAIL FROM:<>'), 250, '2.1.0')
for _ in range(3):
    expect(s.docmd('RCPT TO:<alice@test.invalid>'), 250, '2.1.5')
expect(s.docmd('RCPT TO:<alice@test.invalid>'), 452, '4.5.3')
expect(s.docmd('RSET'), 250, '2.0.0')
expect(s.docmd('DATA'), 503, '5.5.1')
expect(s.docmd('NOOP'), 250, '2.0.0')
expect(s.docmd('VRFY nobody'), 252, '2.5.0')
expect(s.docmd('HELO x'), 500, '5.5.1')
expect(s.docmd('RCPT TO:<alice@elsewhere.example>'), 503, '5.5.1')
expect(s.docmd('MAIL FROM:<>'), 250, '2.1.0')
expect(s.docmd('RCPT TO:<alice@elsewhere.example>'), 550, '5.1.2')
expect(s.docmd('NOOP ' + 'x' * 600), 500, '5.5.6')
expect(s.docmd('QUIT'), 221, '2.0.0')
print('ok')
"#;

fn run_python(where_: &str, max_size: u64, mode: &str) {
    let (code, stdout, stderr) = run_with_input(
        Command::new("python3")
            .arg("-c")
            .arg(PYTHON_LMTP)
            .arg(where_)
            .arg(max_size.to_string())
            .arg(mode),
        b"",
    );
    assert_eq!(
        code,
        Some(0),
        "python3 smtplib.LMTP at {where_} failed:\n{stdout}\n{stderr}"
    );
    assert_eq!(stdout.trim(), "ok");
}

/// What a delivered message looks like in the maildrop (LF line ends, the dot unstuffed).
/// What the Maildir holds after the LMTP delivery of the test message: with CRLF line ends
/// (`[store] line_ends = "crlf"`, the default), stuffing removed.
fn stored(rcpt: &str) -> Vec<u8> {
    format!(
        "Return-Path: <sender@example.net>\r\nDelivered-To: {rcpt}\r\nSubject: LMTP test\r\n\r\nH\u{e9}llo\r\n.a stuffed line\r\n..\r\nend\r\n"
    )
    .into_bytes()
}

/// A message as delivery stored it, which must be with CRLF line ends (`[store] line_ends`,
/// the default): its text with LF line ends, for the checks of its content.
fn stored_with_crlf(message: &[u8]) -> String {
    let text = String::from_utf8_lossy(message);
    let bare_lf = text
        .match_indices('\n')
        .any(|(i, _)| i == 0 || !text[..i].ends_with('\r'));
    assert!(
        !bare_lf,
        "a line end without CR in a message stored with CRLF:\n{text}"
    );
    text.replace("\r\n", "\n")
}

fn new_messages(maildir: &Path) -> Vec<Vec<u8>> {
    let mut names: Vec<_> = std::fs::read_dir(maildir.join("new"))
        .map(|d| d.map(|e| e.expect("a directory entry").path()).collect())
        .unwrap_or_default();
    names.sort();
    names
        .iter()
        .map(|p| std::fs::read(p).expect("read a message"))
        .collect()
}

const LIMITS: &str = "max_message_size = 4096\nmax_lmtp_recipients = 3";
const DOMAINS: &str = "domains = [\"test.invalid\"]\nsocket_mode = 0o600";

#[test]
fn smtplib_lmtp_on_tcp_and_unix_socket_into_maildirs() {
    let fx = Fixture::new();
    let port = free_port();
    let socket = fx.path().join("lmtp.sock");
    let config = lmtp_config(&fx.config_path, port, &socket, LIMITS, DOMAINS);
    let (code, stdout, stderr) = run_with_input(
        facteur().args(["check-config", "--config"]).arg(&config),
        b"",
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let summary = format!(
        "LMTP: on 127.0.0.1:{port}, unix:{} (domains test.invalid, the user is the local part, \
         sockets' mode 0o600)",
        socket.display()
    );
    assert!(stdout.contains(&summary), "{stdout}");
    let server = BinServer::start(&config);
    let mode = std::fs::metadata(&socket)
        .expect("the socket")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );

    run_python(&format!("127.0.0.1:{port}"), 4096, "all");
    run_python(&socket.display().to_string(), 4096, "all");
    for user in [USER, CRYPT_USER] {
        let got = new_messages(&fx.maildir(user));
        let want = stored(&format!("{user}@test.invalid"));
        assert_eq!(got, vec![want.clone(), want], "{user}'s maildrop");
    }
    // And POP3 serves what LMTP delivered.
    let mut c = server.login(USER, PASSWORD);
    let body = c.retrieve("RETR 1");
    assert!(
        body.ends_with(b"\r\n.a stuffed line\r\n..\r\nend\r\n"),
        "{}",
        String::from_utf8_lossy(&body)
    );

    // A temporary failure of one maildrop is that recipient's 451 alone.
    std::fs::remove_dir_all(fx.path().join("mail").join(CRYPT_USER)).expect("remove carol's");
    std::fs::write(fx.path().join("mail").join(CRYPT_USER), "in the way").expect("block");
    run_python(&socket.display().to_string(), 4096, "carol-blocked");
    assert_eq!(fx.message_files(USER).len(), 3);
    server.wait_for_log("LMTP: not delivered", 1);
}

#[test]
fn smtplib_lmtp_into_postgresql() {
    let db = pg::fresh_database();
    let fx = Fixture::new();
    let pg_config = postgres_config(&fx, &db.url, "postgres.toml");
    db_migrate(&pg_config);
    let port = free_port();
    let socket = fx.path().join("lmtp.sock");
    let config = lmtp_config(&pg_config, port, &socket, LIMITS, DOMAINS);
    let server = BinServer::start(&config);
    run_python(&format!("127.0.0.1:{port}"), 4096, "all");
    for user in [USER, CRYPT_USER] {
        let mut c = server.login(user, PASSWORD);
        // Stored as in a Maildir, it goes out the same.
        let want_wire = stored(&format!("{user}@test.invalid"));
        assert_eq!(c.retrieve("RETR 1"), want_wire, "{user}");
        c.cmd("QUIT");
    }
}

#[test]
fn lmtp_connections_are_capped_and_domains_checked() {
    use std::io::{BufRead, BufReader, Write};
    let fx = Fixture::new();
    let port = free_port();
    let socket = fx.path().join("lmtp.sock");
    let config = lmtp_config(
        &fx.config_path,
        port,
        &socket,
        "max_lmtp_connections = 1",
        "domains = [\"Test.Invalid\"]\nfull_address = false",
    );
    let _server = BinServer::start(&config);
    let connect = || {
        let s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
        let r = BufReader::new(s.try_clone().expect("clone"));
        (s, r)
    };
    let line = |r: &mut BufReader<std::net::TcpStream>| {
        let mut l = String::new();
        r.read_line(&mut l).expect("read a reply");
        l
    };
    let (mut first, mut first_r) = connect();
    assert!(line(&mut first_r).starts_with("220 test.invalid LMTP"));
    let (_second, mut second_r) = connect();
    assert_eq!(
        line(&mut second_r),
        "421 4.3.2 too many connections, try again later\r\n"
    );
    first
        .write_all(b"LHLO me\r\nMAIL FROM:<>\r\nRCPT TO:<alice@TEST.invalid>\r\nRCPT TO:<alice@other.example>\r\nQUIT\r\n")
        .expect("write");
    let mut replies = Vec::new();
    loop {
        let l = line(&mut first_r);
        if l.is_empty() {
            break;
        }
        replies.push(l);
    }
    let tail: Vec<&str> = replies
        .iter()
        .rev()
        .take(4)
        .rev()
        .map(|s| &s[..9])
        .collect();
    assert_eq!(tail, ["250 2.1.0", "250 2.1.5", "550 5.1.2", "221 2.0.0"]);
}

/// Sends one message over SMTP from carol to alice and to a user facteur does not know.
const PYTHON_SMTP: &str = r#"
import smtplib, sys
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=30)
msg = (b"From: carol@test.invalid\r\nTo: alice@test.invalid\r\nSubject: through Postfix\r\n\r\n"
       b"Hello from Postfix.\r\n.leading dot\r\n")
refused = s.sendmail('carol@test.invalid', ['alice@test.invalid', 'nobody@test.invalid'], msg)
assert refused == {}, refused
s.quit()
print('ok')
"#;

/// Postfix takes a message over SMTP and hands it to facteur over `transport`: alice gets it,
/// and the unknown recipient's `550 5.1.1` makes Postfix bounce to the sender, carol, whose
/// bounce comes to facteur the same way.
fn postfix_delivers_through(transport: impl Fn(u16, &Path) -> String) {
    if let Some(why) = Postfix::available() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let fx = Fixture::new();
    // The postfix user must reach the socket in the fixture's folder.
    chmod(fx.path(), 0o755);
    let lmtp_port = free_port();
    let socket = fx.path().join("lmtp.sock");
    let config = lmtp_config(
        &fx.config_path,
        lmtp_port,
        &socket,
        "",
        "domains = [\"test.invalid\"]\nsocket_mode = 0o660\nsocket_group = \"postfix\"",
    );
    let server = BinServer::start(&config);
    let smtp_port = free_port();
    let postfix = Postfix::start(smtp_port, &transport(lmtp_port, &socket));
    let (code, stdout, stderr) = run_with_input(
        Command::new("python3")
            .arg("-c")
            .arg(PYTHON_SMTP)
            .arg(smtp_port.to_string()),
        b"",
    );
    assert_eq!(code, Some(0), "SMTP to Postfix:\n{stdout}{stderr}");
    let mut arrived = false;
    for _ in 0..600 {
        if !fx.message_files(USER).is_empty() && !fx.message_files(CRYPT_USER).is_empty() {
            arrived = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        arrived,
        "the messages did not arrive; Postfix's log:\n{}\nfacteur's log:\n{}",
        postfix.log(),
        server.log()
    );
    let alice = new_messages(&fx.maildir(USER));
    assert_eq!(alice.len(), 1);
    let alice = stored_with_crlf(&alice[0]);
    assert!(
        alice.starts_with("Return-Path: <carol@test.invalid>\nDelivered-To: alice@test.invalid\n"),
        "{alice}"
    );
    assert!(alice.contains("Subject: through Postfix\n"), "{alice}");
    assert!(
        alice.ends_with("\n\nHello from Postfix.\n.leading dot\n"),
        "{alice}"
    );
    // The bounce: Postfix's report for nobody, with facteur's answer in it.
    let carol = new_messages(&fx.maildir(CRYPT_USER));
    assert_eq!(carol.len(), 1);
    let carol = stored_with_crlf(&carol[0]);
    assert!(carol.contains("Return-Path: <>\n"), "{carol}");
    assert!(carol.contains("nobody@test.invalid"), "{carol}");
    assert!(carol.contains("5.1.1"), "{carol}");
    assert!(!carol.contains("alice@test.invalid: "), "{carol}");
}

#[test]
fn postfix_delivers_over_lmtp_unix_socket() {
    postfix_delivers_through(|_, socket| format!("lmtp:unix:{}", socket.display()));
}

#[test]
fn postfix_delivers_over_lmtp_inet() {
    postfix_delivers_through(|port, _| format!("lmtp:inet:127.0.0.1:{port}"));
}

/// A peer that goes silent, before a command or in the middle of a body, is cut after
/// `lmtp_timeout_secs`, and half a body is never delivered.
#[test]
fn silent_lmtp_peers_are_cut() {
    use std::io::{Read, Write};
    let fx = Fixture::new();
    let port = free_port();
    let socket = fx.path().join("lmtp.sock");
    let config = lmtp_config(&fx.config_path, port, &socket, "lmtp_timeout_secs = 1", "");
    let server = BinServer::start(&config);
    for input in [
        &b""[..],
        b"LHLO me\r\nMAIL FROM:<>\r\nRCPT TO:<alice@test.invalid>\r\nDATA\r\nSubject: half\r\n",
    ] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
        s.write_all(input).expect("write");
        let started = std::time::Instant::now();
        let mut all = Vec::new();
        // The server closes the connection: the read ends (EOF) well before READ_TIMEOUT.
        s.read_to_end(&mut all)
            .expect("read until the server closes");
        let waited = started.elapsed();
        assert!(
            waited >= std::time::Duration::from_millis(900)
                && waited < std::time::Duration::from_secs(10),
            "{waited:?}"
        );
        assert!(String::from_utf8_lossy(&all).starts_with("220 "));
    }
    server.wait_for_log("end=timeout", 2);
    assert!(fx.message_files(USER).is_empty());
}
