//! POP2 (RFC 937) end to end, over a real socket on 127.0.0.1, on the Maildir store and on
//! PostgreSQL: the RFC's session with real messages, deletions applied only at a clean QUIT,
//! the maildrop lock shared with POP3, the plaintext policy (POP2 has no TLS), and a server
//! that keeps serving whatever a client sends. One test, of a Maildir whose file names lie
//! about their sizes, runs on the Maildir store only: its subject is the Maildir itself.

mod common;

use common::*;

both_backends!(
    rfc937_session,
    ackd_then_drop_deletes_nothing,
    pop3_and_pop2_exclude_each_other,
    plaintext_policy_refuses_helo,
    bad_input_keeps_the_server_serving,
    failed_helo_ends_the_session,
    facteur_serve_listens_on_listen_pop2,
    connection_caps_count_both_protocols,
);

/// Deliver these messages to alice.
fn with_messages(backend: Backend, messages: &[Vec<u8>]) -> Fixture {
    let fx = Fixture::new().on(backend);
    for m in messages {
        fx.deliver(USER, m);
    }
    fx
}

fn pop2_login(addr: std::net::SocketAddr) -> Client {
    let mut c = Client::connect_pop2(addr);
    let r = c.cmd(&format!("HELO {USER} {PASSWORD}"));
    assert!(r.starts_with('#'), "HELO: {r:?}");
    c
}

/// The `n` of a `=n` reply.
fn size(reply: &str) -> usize {
    reply
        .strip_prefix('=')
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a =n reply: {reply:?}"))
}

/// RFC 937's example: HELO, READ, RETR, ACKS, RETR, ACKD, QUIT. Each message comes with CRLF
/// line ends, not dot-stuffed, exactly as many octets as `=n` said (the POP3 size of it); the
/// one acknowledged with ACKD is deleted at QUIT, and the other is still there for POP3.
fn rfc937_session(backend: Backend) {
    let first = message(1);
    let second = b"Subject: two\n\n.a dot line\r\nmixed ends\nno final newline".to_vec();
    let fx = with_messages(backend, &[first.clone(), second.clone()]);
    let server = fx.start();
    let pop3_sizes = {
        let mut c = server.login(USER, PASSWORD);
        let l = c.list();
        c.quit();
        l
    };
    let mut c = Client::connect_pop2(server.pop2_addr);
    assert!(
        c.greeting.starts_with("+ POP2 test.invalid"),
        "{:?}",
        c.greeting
    );
    assert_eq!(c.cmd(&format!("HELO {USER} {PASSWORD}")), "#2 messages\r\n");
    let r = c.cmd("READ");
    assert_eq!(size(&r), crlf(&first).len(), "{r:?}");
    assert_eq!(size(&r) as u64, pop3_sizes[0].1);
    c.send(b"RETR\r\n");
    assert_eq!(c.read_octets(size(&r)), crlf(&first));
    let r = c.cmd("ACKS");
    assert_eq!(size(&r), crlf(&second).len(), "{r:?}");
    assert_eq!(size(&r) as u64, pop3_sizes[1].1);
    c.send(b"RETR\r\n");
    let got = c.read_octets(size(&r));
    assert_eq!(got, crlf(&second));
    assert!(got.starts_with(b"Subject: two\r\n\r\n.a dot line\r\n"));
    assert_eq!(c.cmd("ACKD"), "=0 no more messages\r\n");
    // The deleted message is gone for the session; the first is still there.
    assert_eq!(c.cmd("READ 2"), "=0 no more messages\r\n");
    assert_eq!(size(&c.cmd("READ 1")), crlf(&first).len());
    assert_eq!(c.cmd("QUIT"), "+ bye, 1 message deleted\r\n");
    c.expect_closed();
    assert_eq!(fx.message_count(USER), 1);
    let mut c = Client::login_when_unlocked(server.addr, USER, PASSWORD);
    assert_eq!(c.retrieve("RETR 1"), crlf(&first));
    c.quit();
}

/// ACKD only marks: a connection that ends without QUIT deletes nothing, and leaves the
/// maildrop unlocked.
fn ackd_then_drop_deletes_nothing(backend: Backend) {
    let fx = with_messages(backend, &[message(1), message(2)]);
    let server = fx.start();
    let mut c = pop2_login(server.pop2_addr);
    let r = c.cmd("READ 1");
    c.send(b"RETR\r\n");
    c.read_octets(size(&r));
    assert_eq!(size(&c.cmd("ACKD")), crlf(&message(2)).len());
    c.send(b"RETR\r\n");
    c.read_octets(crlf(&message(2)).len());
    assert_eq!(c.cmd("ACKD"), "=0 no more messages\r\n");
    drop(c);
    let mut c = Client::login_when_unlocked(server.addr, USER, PASSWORD);
    assert_eq!(c.stat().0, 2);
    c.quit();
    assert_eq!(fx.message_count(USER), 2);
}

/// One lock for both protocols: a POP2 session is refused while POP3 holds the maildrop, and
/// the other way round; each gets it once the other has quit.
fn pop3_and_pop2_exclude_each_other(backend: Backend) {
    let fx = with_messages(backend, &[message(1)]);
    let server = fx.start();
    let pop3 = server.login(USER, PASSWORD);
    let mut c = Client::connect_pop2(server.pop2_addr);
    let r = c.cmd(&format!("HELO {USER} {PASSWORD}"));
    assert!(
        r.starts_with("- maildrop is locked by another session"),
        "{r:?}"
    );
    c.expect_closed();
    pop3.quit();

    let mut pop2 = pop2_login(server.pop2_addr);
    let mut c = server.connect();
    assert!(c.cmd(&format!("USER {USER}")).starts_with("+OK"));
    let r = c.cmd(&format!("PASS {PASSWORD}"));
    assert!(r.starts_with("-ERR [IN-USE]"), "{r:?}");
    assert_eq!(pop2.cmd("QUIT"), "+ bye\r\n");
    pop2.expect_closed();
    Client::login_when_unlocked(server.addr, USER, PASSWORD).quit();
}

/// POP2 has no TLS: HELO is refused before any check where the policy wants passwords
/// protected. `never` refuses it everywhere; the default, `loopback`, refuses a remote client
/// that a trusted load balancer on this host relays (its PROXY header names the client).
fn plaintext_policy_refuses_helo(backend: Backend) {
    let fx = Fixture::build(DEFAULT_LIMITS, "plaintext_auth = \"never\"\n", false).on(backend);
    fx.deliver(USER, &message(1));
    let server = fx.start();
    let mut c = Client::connect_pop2(server.pop2_addr);
    let r = c.cmd(&format!("HELO {USER} {PASSWORD}"));
    assert!(
        r.starts_with("- plaintext login is not allowed from this address, and POP2 has no TLS"),
        "{r:?}"
    );
    c.expect_closed();
    drop(server);

    let mut fx = Fixture::new().on(backend);
    fx.deliver(USER, &message(1));
    fx.config.server.proxy_protocol =
        vec!["127.0.0.1/32".to_string().try_into().expect("a CIDR block")];
    let server = fx.start();
    let header = "PROXY TCP4 203.0.113.7 127.0.0.1 40000 109\r\n";
    let mut c = Client::connect_after(server.pop2_addr, header.as_bytes());
    assert!(c.greeting.starts_with("+ POP2"), "{:?}", c.greeting);
    let r = c.cmd(&format!("HELO {USER} {PASSWORD}"));
    assert!(r.starts_with("- plaintext login is not allowed"), "{r:?}");
    c.expect_closed();
    // A client on this host, through the same balancer, may.
    let header = "PROXY TCP4 127.0.0.1 127.0.0.1 40001 109\r\n";
    let mut c = Client::connect_after(server.pop2_addr, header.as_bytes());
    assert_eq!(c.cmd(&format!("HELO {USER} {PASSWORD}")), "#1 message\r\n");
    assert_eq!(c.cmd("QUIT"), "+ bye\r\n");
}

/// Nonsense, overlong lines, binary, bad numbers, commands out of turn: each gets a `-` and
/// the session goes on; a client that gives up in the middle of a line harms nobody.
fn bad_input_keeps_the_server_serving(backend: Backend) {
    let fx = with_messages(backend, &[message(1)]);
    let server = fx.start();
    let mut c = Client::connect_pop2(server.pop2_addr);
    for bad in ["READ", "RETR", "ACKD", "FOLD INBOX", "USER alice", "CAPA"] {
        let r = c.cmd(bad);
        assert!(r.starts_with("- "), "{bad}: {r:?}");
    }
    let mut long = vec![b'A'; 5000];
    long.extend_from_slice(b"\r\n");
    c.send(&long);
    assert_eq!(c.line(), "- line too long\r\n");
    c.send(b"\x00\xff\x80garbage\r\n");
    assert!(c.line().starts_with("- "));
    assert_eq!(c.cmd(&format!("HELO {USER} {PASSWORD}")), "#1 message\r\n");
    for bad in [
        "READ 0",
        "READ 4294967297",
        "READ -1",
        "ACKS",
        "NACK",
        "HELO alice secret",
        "FOLD /etc/passwd",
        "FOLD ../bob",
    ] {
        let r = c.cmd(bad);
        assert!(r.starts_with("- "), "{bad}: {r:?}");
    }
    assert_eq!(c.cmd("FOLD inbox"), "#1 message\r\n");
    assert_eq!(c.cmd("READ 99"), "=0 no more messages\r\n");
    // Pipelined: the answers come in order, the message between them.
    let n = crlf(&message(1)).len();
    c.send(b"READ 1\r\nRETR\r\nNACK\r\n");
    assert_eq!(size(&c.line()), n);
    assert_eq!(c.read_octets(n), crlf(&message(1)));
    assert_eq!(size(&c.line()), n);
    // A client that leaves half a line behind.
    let mut gone = Client::connect_pop2(server.pop2_addr);
    gone.send(b"HELO alice sec");
    drop(gone);
    assert_eq!(c.cmd("QUIT"), "+ bye\r\n");
    c.expect_closed();
    let mut c = pop2_login(server.pop2_addr);
    assert_eq!(c.cmd("QUIT"), "+ bye\r\n");
    assert_eq!(fx.message_count(USER), 1);
}

/// A failed HELO ends the session with the same answer for a wrong password and an unknown
/// user (one guess per connection), and the server goes on.
fn failed_helo_ends_the_session(backend: Backend) {
    let fx = with_messages(backend, &[message(1)]);
    let server = fx.start();
    for helo in ["HELO alice wrong", "HELO nobody secret"] {
        let mut c = Client::connect_pop2(server.pop2_addr);
        assert_eq!(c.cmd(helo), "- invalid user name or password\r\n");
        c.expect_closed();
    }
    let mut c = pop2_login(server.pop2_addr);
    assert_eq!(c.cmd("QUIT"), "+ bye\r\n");
}

/// `facteur serve` itself: `[server] listen_pop2` in the configuration file is bound, logged,
/// and served from the configured store; `check-config` says who may log in there.
fn facteur_serve_listens_on_listen_pop2(backend: Backend) {
    let fx = with_messages(backend, &[message(1)]);
    let text = std::fs::read_to_string(&fx.config_path).expect("read the configuration");
    let text = text.replacen(
        "[server]\n",
        "[server]\nlisten_pop2 = [\"127.0.0.1:0\"]\n",
        1,
    );
    let path = fx.config_path.with_file_name("pop2.toml");
    std::fs::write(&path, text).expect("write the configuration");
    let (code, stdout, stderr) =
        run_with_input(facteur().args(["check-config", "--config"]).arg(&path), b"");
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(
            "POP2: on 127.0.0.1:0 (no TLS: passwords in clear, logins from this host only"
        ),
        "{stdout}"
    );
    let server = BinServer::start(&path);
    let log = server.wait_for_log("pop2 (no TLS)", 1);
    let addr = log
        .lines()
        .filter(|l| l.contains("pop2 (no TLS)"))
        .find_map(listening_address)
        .expect("the POP2 listener's address in the log");
    let mut c = Client::connect_pop2(addr);
    assert_eq!(c.cmd(&format!("HELO {USER} {PASSWORD}")), "#1 message\r\n");
    let r = c.cmd("READ");
    c.send(b"RETR\r\n");
    assert_eq!(c.read_octets(size(&r)), crlf(&message(1)));
    assert_eq!(c.cmd("ACKD"), "=0 no more messages\r\n");
    assert_eq!(c.cmd("QUIT"), "+ bye, 1 message deleted\r\n");
    c.expect_closed();
    assert_eq!(fx.message_count(USER), 0);
    let log = server.wait_for_log("session ended", 1);
    assert!(
        log.contains("protocol=\"pop2\"") || log.contains("protocol=pop2"),
        "{log}"
    );
}

/// One per-address cap for POP3 and POP2 together: with room for one connection, a POP2
/// client is refused in POP2's words while a POP3 session is open, and the other way round.
fn connection_caps_count_both_protocols(backend: Backend) {
    let fx =
        Fixture::with_limits(&format!("{DEFAULT_LIMITS}max_connections_per_ip = 1\n")).on(backend);
    let server = fx.start();
    let pop3 = server.connect();
    let mut c = Client::connect_unchecked(server.pop2_addr);
    assert_eq!(c.greeting, "- too many connections from your address\r\n");
    c.expect_closed();
    pop3.quit();
    // The slot is given back when the session's task ends, just after the close: retry a
    // moment (bounded).
    let mut pop2 = (0..400)
        .find_map(|_| {
            let c = Client::connect_unchecked(server.pop2_addr);
            if c.greeting.starts_with("+ ") {
                return Some(c);
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
            None
        })
        .expect("a POP2 session once the POP3 one is gone");
    let mut c = Client::connect_unchecked(server.addr);
    assert!(
        c.greeting
            .starts_with("-ERR [SYS/TEMP] too many connections from your address"),
        "{:?}",
        c.greeting
    );
    c.expect_closed();
    assert_eq!(pop2.cmd("QUIT"), "+ bye\r\n");
}

/// A Maildir file whose `,W=` size is not its size (a hostile or broken maildrop): the count
/// told by `=n` cannot be honoured, so the session is cut before any octet of that message,
/// nothing is deleted, and the other messages are served as usual. (Maildir only: the subject is
/// the Maildir's file names.)
#[test]
fn a_message_not_its_size_cuts_the_session() {
    let fx = Fixture::new();
    let cur = fx.maildir(USER).join("cur");
    std::fs::create_dir_all(&cur).expect("create cur/");
    for sub in ["new", "tmp"] {
        std::fs::create_dir_all(fx.maildir(USER).join(sub)).expect("create the Maildir");
    }
    std::fs::write(cur.join("1700000001.M1P1.mx,S=2,W=999:2,"), b"a\n").expect("write");
    std::fs::write(cur.join("1700000002.M1P1.mx,S=4,W=1:2,"), b"abc\n").expect("write");
    std::fs::write(cur.join("1700000003.M1P1.mx:2,"), b"ok\n").expect("write");
    let server = fx.start();
    for (n, told) in [(1, 999), (2, 1)] {
        let mut c = pop2_login(server.pop2_addr);
        // Pipelined: the answer to READ goes out, then nothing of the message.
        c.send(format!("READ {n}\r\nRETR\r\nACKD\r\nQUIT\r\n").as_bytes());
        assert_eq!(size(&c.line()), told);
        assert_eq!(c.lines_until_closed(), Vec::<String>::new());
    }
    let mut c = Client::login_when_unlocked(server.addr, USER, PASSWORD);
    assert_eq!(c.stat().0, 3);
    c.quit();
    let mut c = pop2_login(server.pop2_addr);
    assert_eq!(c.cmd("READ 3"), "=4 octets\r\n");
    c.send(b"RETR\r\n");
    assert_eq!(c.read_octets(4), b"ok\r\n");
    assert_eq!(c.cmd("ACKD"), "=0 no more messages\r\n");
    assert_eq!(c.cmd("QUIT"), "+ bye, 1 message deleted\r\n");
    assert_eq!(fx.message_count(USER), 2);
}
