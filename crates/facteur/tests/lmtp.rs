//! LMTP delivery (RFC 2033) end to end: `facteur serve` with `[server] listen_lmtp` on a TCP
//! port and a Unix socket, driven by Python's `smtplib.LMTP` (pipelined commands, one reply per
//! recipient after DATA), on the Maildir store and on PostgreSQL, then read back over POP3; and
//! a private Postfix instance delivering through `lmtp:unix:` and `lmtp:inet:`
//! (`tests/lmtp_postfix.rs`).

mod common;
#[path = "../../facteur-store/tests/support/pg.rs"]
mod pg;

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
    let text = format!("{text}\n[lmtp]\nsocket_mode = 0o600\n{lmtp}\n");
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
fn stored(rcpt: &str) -> Vec<u8> {
    format!(
        "Return-Path: <sender@example.net>\nDelivered-To: {rcpt}\nSubject: LMTP test\n\nH\u{e9}llo\n.a stuffed line\n..\nend\n"
    )
    .into_bytes()
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
const DOMAINS: &str = "domains = [\"test.invalid\"]";

#[test]
fn smtplib_lmtp_on_tcp_and_unix_socket_into_maildirs() {
    let fx = Fixture::new();
    let port = free_port();
    let socket = fx.path().join("lmtp.sock");
    let config = lmtp_config(&fx.config_path, port, &socket, LIMITS, DOMAINS);
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
        let want = stored(&format!("{user}@test.invalid"));
        let want_wire: Vec<u8> = String::from_utf8(want)
            .expect("UTF-8")
            .replace('\n', "\r\n")
            .into_bytes();
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
