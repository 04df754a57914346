//! POP3 sessions over a real socket against an in-process server: RFC 1939's example session,
//! deletion and UPDATE, the maildrop lock, mail arriving mid-session, a large message,
//! pipelining and strict command parsing, failed logins.
//!
//! Every test runs on both stores (`maildir::` and `postgresql::`), but the last: sizes
//! deferred at login are the Maildir's (files without `,W=`), the database knows every size.

mod common;

use common::*;
use std::collections::BTreeSet;

/// A message of exactly `wire_size` octets on the wire: `head` (LF line ends) and a filler line.
fn sized(head: &str, wire_size: usize) -> Vec<u8> {
    let used = crlf(head.as_bytes()).len() + 2;
    let m = format!("{head}{}\n", "x".repeat(wire_size - used)).into_bytes();
    assert_eq!(crlf(&m).len(), wire_size);
    m
}

/// The two messages of RFC 1939 section 10's maildrop (120 and 200 octets). The first has a
/// body line that starts with '.'; the second's very first line starts with '.'.
fn rfc_messages() -> (Vec<u8>, Vec<u8>) {
    let m1 = sized(
        "From: mrose@dbc.mtview.ca.us\nSubject: first\n\n.This line starts with a dot\n",
        120,
    );
    let m2 = sized(
        ".first line of this message starts with a dot\nSubject: second\n\nbody\n.\n..\n",
        200,
    );
    (m1, m2)
}

fn rfc1939_example_session(backend: Backend) {
    let fx = Fixture::new().on(backend);
    let (m1, m2) = rfc_messages();
    fx.deliver(USER, &m1);
    fx.deliver(USER, &m2);
    let server = fx.start();

    let mut c = server.connect();
    assert!(c.greeting.starts_with("+OK "), "{:?}", c.greeting);
    assert!(c.cmd("USER alice").starts_with("+OK"));
    let r = c.cmd("PASS secret");
    assert!(
        r.starts_with("+OK") && r.contains("2 messages (320 octets)"),
        "{r:?}"
    );
    assert_eq!(c.cmd("STAT"), "+OK 2 320\r\n");

    let (status, body) = c.cmd_multi("LIST");
    assert!(status.starts_with("+OK"), "{status:?}");
    assert_eq!(body, b"1 120\r\n2 200\r\n");

    // RETR 1: the exact octets, CRLF line ends and the stuffed dot included.
    c.send(b"RETR 1\r\n");
    assert_eq!(c.line(), "+OK 120 octets\r\n");
    let body = c.body();
    assert_eq!(
        String::from_utf8_lossy(&body),
        "From: mrose@dbc.mtview.ca.us\r\nSubject: first\r\n\r\n..This line starts with a dot\r\n"
            .to_string()
            + &"x".repeat(120 - 78 - 2)
            + "\r\n"
    );
    assert_eq!(body, stuff(&crlf(&m1)));
    assert!(c.cmd("DELE 1").starts_with("+OK"));

    c.send(b"RETR 2\r\n");
    assert_eq!(c.line(), "+OK 200 octets\r\n");
    let body = c.body();
    assert!(
        body.starts_with(b"..first line of this message"),
        "the first line is stuffed too"
    );
    assert!(String::from_utf8_lossy(&body).contains("\r\nbody\r\n..\r\n...\r\n"));
    assert_eq!(body, stuff(&crlf(&m2)));
    assert!(c.cmd("DELE 2").starts_with("+OK"));

    let r = c.quit();
    assert!(r.contains("2 messages deleted"), "{r:?}");
    assert_eq!(fx.uids(USER), Vec::<String>::new());

    let mut c = server.login(USER, PASSWORD);
    assert_eq!(c.cmd("STAT"), "+OK 0 0\r\n");
    c.quit();
}

fn rset_undoes_deletions(backend: Backend) {
    let fx = Fixture::new().on(backend);
    fx.deliver(USER, &message(1));
    fx.deliver(USER, &message(2));
    let server = fx.start();

    let mut c = server.login(USER, PASSWORD);
    assert!(c.cmd("DELE 1").starts_with("+OK"));
    assert!(c.cmd("DELE 2").starts_with("+OK"));
    assert_eq!(c.stat().0, 0);
    assert!(c.cmd("RSET").starts_with("+OK"));
    assert_eq!(c.stat().0, 2);
    c.quit();
    assert_eq!(fx.message_count(USER), 2);

    let mut c = server.login(USER, PASSWORD);
    assert_eq!(c.stat().0, 2);
    assert_eq!(c.retrieve("RETR 1"), crlf(&message(1)));
    c.quit();
}

fn dropped_connection_deletes_nothing(backend: Backend) {
    let fx = Fixture::new().on(backend);
    fx.deliver(USER, &message(1));
    fx.deliver(USER, &message(2));
    let server = fx.start();

    let mut c = server.login(USER, PASSWORD);
    assert!(c.cmd("DELE 1").starts_with("+OK"));
    assert!(c.cmd("DELE 2").starts_with("+OK"));
    drop(c);

    // Once the server has noticed (the lock is free again), both messages are still there.
    let mut c = Client::login_when_unlocked(server.addr, USER, PASSWORD);
    assert_eq!(c.stat().0, 2);
    assert_eq!(fx.message_count(USER), 2);
    c.quit();
}

fn quit_deletes_exactly_the_marked_messages(backend: Backend) {
    let fx = Fixture::new().on(backend);
    let d: Vec<_> = (1..=5).map(|n| fx.deliver(USER, &message(n))).collect();
    let server = fx.start();

    let mut c = server.login(USER, PASSWORD);
    for n in [1, 3, 5] {
        assert!(c.cmd(&format!("DELE {n}")).starts_with("+OK"));
    }
    let r = c.quit();
    assert!(r.contains("3 messages deleted"), "{r:?}");

    // uids() is sorted, which is not delivery order (two Maildir names of one second differ in
    // their microseconds, whose digit counts vary): compare sorted.
    let mut left: Vec<String> = [&d[1], &d[3]].iter().map(|d| delivered_base(d)).collect();
    left.sort();
    assert_eq!(fx.uids(USER), left);

    let mut c = server.login(USER, PASSWORD);
    assert_eq!(c.stat().0, 2);
    assert_eq!(c.retrieve("RETR 1"), crlf(&message(2)));
    assert_eq!(c.retrieve("RETR 2"), crlf(&message(4)));
    c.quit();
}

fn a_deleted_message_is_gone_for_every_command(backend: Backend) {
    let fx = Fixture::new().on(backend);
    let sizes: Vec<u64> = (1..=3)
        .map(|n| fx.deliver(USER, &message(n)).wire_size)
        .collect();
    let server = fx.start();

    let mut c = server.login(USER, PASSWORD);
    let uids = c.uidl();
    assert!(c.cmd("DELE 2").starts_with("+OK"));
    for cmd in ["RETR 2", "LIST 2", "UIDL 2", "TOP 2 0", "DELE 2"] {
        let r = c.cmd(cmd);
        assert!(r.starts_with("-ERR"), "{cmd} after DELE 2: {r:?}");
    }
    assert_eq!(c.stat(), (2, sizes[0] + sizes[2]));
    assert_eq!(c.list(), vec![(1, sizes[0]), (3, sizes[2])]);
    assert_eq!(c.uidl(), vec![uids[0].clone(), uids[2].clone()]);
    // The numbers of the other messages do not change.
    assert_eq!(c.retrieve("RETR 3"), crlf(&message(3)));
    assert_eq!(c.cmd("LIST 3"), format!("+OK 3 {}\r\n", sizes[2]));
    c.quit();
}

fn the_maildrop_is_locked_while_a_session_is_in_transaction(backend: Backend) {
    let fx = Fixture::new().on(backend);
    fx.deliver(USER, &message(1));
    let server = fx.start();

    let mut first = server.login(USER, PASSWORD);
    let mut second = server.connect();
    assert!(second.cmd("USER alice").starts_with("+OK"));
    let r = second.cmd("PASS secret");
    assert!(r.starts_with("-ERR [IN-USE]"), "{r:?}");
    // The locked-out session is still in AUTHORIZATION and may try again.
    assert!(second.cmd("STAT").starts_with("-ERR"));

    // The first session is unaffected.
    assert_eq!(first.stat().0, 1);
    first.quit();

    // After QUIT, the lock is free: the same connection can log in now.
    assert!(second.cmd("USER alice").starts_with("+OK"));
    assert!(second.cmd("PASS secret").starts_with("+OK"));
    assert_eq!(second.stat().0, 1);

    // A dropped connection releases the lock too.
    drop(second);
    let c = Client::login_when_unlocked(server.addr, USER, PASSWORD);
    c.quit();

    // Another user's maildrop was never affected.
    server.login(CRYPT_USER, CRYPT_PASSWORD).quit();
}

fn mail_delivered_mid_session_waits_for_the_next_session(backend: Backend) {
    let fx = Fixture::new().on(backend);
    fx.deliver(USER, &message(1));
    fx.deliver(USER, &message(2));
    let server = fx.start();

    let mut c = server.login(USER, PASSWORD);
    let before = c.stat();
    let late = fx.deliver(USER, &message(3));
    assert_eq!(c.stat(), before);
    assert_eq!(c.list().len(), 2);
    assert!(c.cmd("LIST 3").starts_with("-ERR"));
    assert!(c.cmd("RETR 3").starts_with("-ERR"));
    assert!(c.cmd("DELE 1").starts_with("+OK"));
    assert!(c.cmd("DELE 2").starts_with("+OK"));
    c.quit();

    assert_eq!(fx.uids(USER), vec![delivered_base(&late)]);
    let mut c = server.login(USER, PASSWORD);
    assert_eq!(c.stat(), (1, late.wire_size));
    assert_eq!(c.retrieve("RETR 1"), crlf(&message(3)));
    c.quit();
}

/// 8 MiB of pseudo-random lines (LF ends, 8-bit octets, no CR or NUL), some starting with '.',
/// some a lone '.'.
fn big_message() -> Vec<u8> {
    let mut m = b"From: big@example.org\nSubject: eight MiB\n\n".to_vec();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    while m.len() < 8 * 1024 * 1024 {
        let r = next();
        let len = (r % 200) as usize;
        match r % 13 {
            0 => m.push(b'.'),
            1 => m.extend_from_slice(b".."),
            _ => {}
        }
        for _ in 0..len {
            let b = (next() % 254 + 1) as u8;
            m.push(if b == b'\r' || b == b'\n' { b'~' } else { b });
        }
        m.push(b'\n');
    }
    m
}

fn an_8_mib_message_arrives_intact(backend: Backend) {
    let fx = Fixture::new().on(backend);
    let original = big_message();
    let delivered = fx.deliver(USER, &original);
    let wire = crlf(&original);
    assert_eq!(delivered.wire_size, wire.len() as u64);
    let server = fx.start();

    let mut c = server.login(USER, PASSWORD);
    let list_size = c.list()[0].1;
    assert_eq!(list_size, wire.len() as u64);
    c.send(b"RETR 1\r\n");
    assert_eq!(c.line(), format!("+OK {list_size} octets\r\n"));
    let raw = c.body();
    let received = raw.len() + b".\r\n".len();
    let dots = stuffed_lines(&raw);
    assert!(dots > 1000, "the test message has many dot lines ({dots})");
    assert_eq!(list_size, (received - dots - 3) as u64);
    assert_eq!(sha256_hex(&unstuff(&raw)), sha256_hex(&wire));
    // The session goes on after a large transfer.
    assert_eq!(c.stat(), (1, list_size));
    c.quit();
}

fn pipelined_commands_are_answered_in_order(backend: Backend) {
    let fx = Fixture::new().on(backend);
    let d1 = fx.deliver(USER, &message(1));
    let d2 = fx.deliver(USER, &message(2));
    let server = fx.start();

    let mut c = server.connect();
    c.send(b"USER alice\r\nPASS secret\r\nSTAT\r\nLIST\r\nUIDL\r\nRETR 1\r\nNOOP\r\n");
    assert!(c.line().starts_with("+OK"));
    assert!(c.line().starts_with("+OK"));
    assert_eq!(
        c.line(),
        format!("+OK 2 {}\r\n", d1.wire_size + d2.wire_size)
    );
    assert!(c.line().starts_with("+OK"));
    assert_eq!(
        c.body(),
        format!("1 {}\r\n2 {}\r\n", d1.wire_size, d2.wire_size).into_bytes()
    );
    assert!(c.line().starts_with("+OK"));
    let uidl = String::from_utf8(c.body()).expect("UTF-8 unique-ids");
    let uids: Vec<&str> = uidl
        .lines()
        .map(|l| l.split(' ').nth(1).expect("a unique-id"))
        .collect();
    assert_eq!(uids.len(), 2);
    assert_ne!(uids[0], uids[1]);
    assert!(
        uidl.starts_with("1 ") && uidl.contains("\r\n2 "),
        "{uidl:?}"
    );
    assert_eq!(c.line(), format!("+OK {} octets\r\n", d1.wire_size));
    assert_eq!(unstuff(&c.body()), crlf(&message(1)));
    assert_eq!(c.line(), "+OK\r\n");

    // Pipelined to the end: DELE, then QUIT in the same write as more commands after it.
    c.send(b"DELE 2\r\nQUIT\r\nNOOP\r\n");
    assert!(c.line().starts_with("+OK"));
    assert!(c.line().starts_with("+OK"));
    c.expect_closed();
    assert_eq!(fx.uids(USER), vec![delivered_base(&d1)]);
}

fn malformed_commands_get_err_and_the_session_goes_on(backend: Backend) {
    let fx = Fixture::new().on(backend);
    let d1 = fx.deliver(USER, &message(1));
    fx.deliver(USER, &message(2));
    fx.deliver(USER, &message(3));
    let server = fx.start();
    let mut c = server.login(USER, PASSWORD);

    let mut long = b"NOOP ".to_vec();
    long.resize(298, b'x');
    long.extend_from_slice(b"\r\n");
    assert_eq!(long.len(), 300);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("RETR 0", b"RETR 0\r\n".to_vec()),
        ("LIST 0", b"LIST 0\r\n".to_vec()),
        // 2^32 + 1: must not wrap around to message 1.
        ("LIST 4294967297", b"LIST 4294967297\r\n".to_vec()),
        ("RETR 4294967297", b"RETR 4294967297\r\n".to_vec()),
        ("LIST -1", b"LIST -1\r\n".to_vec()),
        ("LIST +1", b"LIST +1\r\n".to_vec()),
        ("RETR 4", b"RETR 4\r\n".to_vec()),
        ("TOP 1", b"TOP 1\r\n".to_vec()),
        ("TOP 1 -1", b"TOP 1 -1\r\n".to_vec()),
        ("a 300-octet line", long),
        ("a NUL", b"ST\0AT\r\n".to_vec()),
        ("an unknown command", b"FROB\r\n".to_vec()),
    ];
    for (what, bytes) in cases {
        c.send(&bytes);
        let r = c.line();
        assert!(r.starts_with("-ERR"), "{what}: {r:?}");
        // The next command is answered normally.
        assert_eq!(c.cmd("NOOP"), "+OK\r\n", "after {what}");
    }
    assert_eq!(c.cmd("LIST 1"), format!("+OK 1 {}\r\n", d1.wire_size));
    assert_eq!(c.stat().0, 3);
    c.quit();
    // None of it deleted anything.
    assert_eq!(fx.message_count(USER), 3);
}

fn top_sends_the_header_and_the_requested_lines(backend: Backend) {
    let fx = Fixture::new().on(backend);
    let m = message(7);
    fx.deliver(USER, &m);
    let server = fx.start();
    let mut c = server.login(USER, PASSWORD);

    let header = wire_header(&m);
    let (status, raw) = c.cmd_multi("TOP 1 0");
    assert!(status.starts_with("+OK"), "{status:?}");
    assert_eq!(
        unstuff(&raw),
        header,
        "TOP n 0 is the header and the empty line only"
    );

    // TOP 1 2: the header, then "Hello..." and ".a line that starts with a dot" (stuffed).
    let (status, raw) = c.cmd_multi("TOP 1 2");
    assert!(status.starts_with("+OK"), "{status:?}");
    let mut expected = header.clone();
    expected.extend_from_slice(b"Hello, this is message 7.\r\n.a line that starts with a dot\r\n");
    assert_eq!(unstuff(&raw), expected);
    assert_eq!(raw, stuff(&expected));

    // More lines than the body has: the whole message.
    assert_eq!(c.retrieve("TOP 1 1000"), crlf(&m));
    c.quit();
}

fn a_failed_login_says_the_same_for_a_wrong_password_and_an_unknown_user(backend: Backend) {
    // Three failures, then a good login on the same connection: one more than the default
    // max_failed_logins allows (abuse.rs tests that cut-off).
    let fx = Fixture::with_limits(&format!("{DEFAULT_LIMITS}max_failed_logins = 4\n")).on(backend);
    let server = fx.start();
    let mut c = server.connect();

    assert!(c.cmd("USER alice").starts_with("+OK"));
    let wrong_password = c.cmd("PASS wrong");
    assert!(c.cmd("USER nobody").starts_with("+OK"));
    let unknown_user = c.cmd("PASS secret");
    assert!(c.cmd("USER carol").starts_with("+OK"));
    let wrong_crypt_password = c.cmd("PASS Secret");
    assert!(
        wrong_password.starts_with("-ERR [AUTH] "),
        "{wrong_password:?}"
    );
    assert_eq!(wrong_password, unknown_user);
    assert_eq!(wrong_password, wrong_crypt_password);

    // Still in AUTHORIZATION: TRANSACTION commands are refused, and a good login works.
    assert!(c.cmd("STAT").starts_with("-ERR"));
    assert!(c.cmd("USER alice").starts_with("+OK"));
    assert!(c.cmd("PASS secret").starts_with("+OK"));
    c.quit();
}

fn a_sha512_crypt_user_logs_in(backend: Backend) {
    let fx = Fixture::new().on(backend);
    fx.deliver(CRYPT_USER, &message(1));
    let server = fx.start();
    let mut c = server.login(CRYPT_USER, CRYPT_PASSWORD);
    assert_eq!(c.retrieve("RETR 1"), crlf(&message(1)));
    c.quit();
    // Each user has a maildrop of their own.
    let mut c = server.login(USER, PASSWORD);
    assert_eq!(c.stat(), (0, 0));
    c.quit();
}

fn unique_ids_are_stable_and_distinct_across_sessions(backend: Backend) {
    let fx = Fixture::new().on(backend);
    for n in 1..=20 {
        fx.deliver(USER, &message(n));
    }
    let server = fx.start();
    let mut c = server.login(USER, PASSWORD);
    let first = c.uidl();
    let distinct: BTreeSet<&String> = first.iter().map(|(_, u)| u).collect();
    assert_eq!(distinct.len(), 20);
    for (_, uid) in &first {
        assert!(!uid.is_empty() && uid.len() <= 70, "{uid:?}");
        assert!(uid.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{uid:?}");
    }
    assert!(c.cmd("DELE 5").starts_with("+OK"));
    c.quit();

    let mut c = server.login(USER, PASSWORD);
    let second = c.uidl();
    let mut expected: Vec<String> = first.iter().map(|(_, u)| u.clone()).collect();
    expected.remove(4);
    assert_eq!(
        second.into_iter().map(|(_, u)| u).collect::<Vec<_>>(),
        expected
    );
    c.quit();
}

/// A maildrop first seen with more files of unknown size (no `,W=`, as Postfix writes them)
/// than an open reads: the login and UIDL read none; the first STAT, LIST or RETR sizes them
/// all, exactly, even pipelined behind other commands.
#[test]
fn sizes_deferred_at_login_are_exact_when_first_needed() {
    let fx = Fixture::new();
    let cur = fx.maildir(USER).join("cur");
    std::fs::create_dir_all(&cur).expect("create cur/");
    std::fs::create_dir_all(fx.maildir(USER).join("new")).expect("create new/");
    std::fs::create_dir_all(fx.maildir(USER).join("tmp")).expect("create tmp/");
    let count = 400;
    let mut total = 0u64;
    let mut wire_sizes = Vec::new();
    for i in 0..count {
        // Message i has i % 7 bare LF lines more than the one before.
        let body = format!("Subject: {i}\n\n{}", "line\n".repeat(1 + i % 7));
        let wire = crlf(body.as_bytes()).len() as u64;
        total += wire;
        wire_sizes.push(wire);
        std::fs::write(
            cur.join(format!("{}.M{i}P1.example:2,", 1_600_000_000 + i)),
            body,
        )
        .expect("write a message");
    }
    let server = fx.start();

    let mut c = server.connect();
    assert!(c.cmd("USER alice").starts_with("+OK"));
    let r = c.cmd("PASS secret");
    assert_eq!(
        r,
        format!("+OK alice has {count} messages\r\n"),
        "no octets yet"
    );
    let (status, uidl) = c.cmd_multi("UIDL");
    assert!(status.starts_with("+OK"));
    assert_eq!(String::from_utf8_lossy(&uidl).lines().count(), count);
    // TOP needs no size: it is answered before any is known, from the whole file.
    c.send(b"TOP 4 1\r\n");
    assert_eq!(c.line(), "+OK top of message follows\r\n");
    assert_eq!(c.body(), b"Subject: 3\r\n\r\nline\r\n");
    assert!(c.cmd("DELE 2").starts_with("+OK"));
    // STAT, LIST and RETR pipelined: STAT waits for the sizes, the others follow in order.
    c.send(b"STAT\r\nLIST 3\r\nRETR 1\r\nNOOP\r\n");
    assert_eq!(
        c.line(),
        format!("+OK {} {}\r\n", count - 1, total - wire_sizes[1])
    );
    assert_eq!(c.line(), format!("+OK 3 {}\r\n", wire_sizes[2]));
    assert_eq!(c.line(), format!("+OK {} octets\r\n", wire_sizes[0]));
    assert_eq!(unstuff(&c.body()).len() as u64, wire_sizes[0]);
    assert_eq!(c.line(), "+OK\r\n");
    c.quit();

    // The sizes were recorded: the next login knows them at once.
    let mut c = server.login(USER, PASSWORD);
    let (status, list) = c.cmd_multi("LIST");
    assert!(
        status.contains(&format!("({} octets)", total - wire_sizes[1])),
        "{status:?}"
    );
    assert_eq!(String::from_utf8_lossy(&list).lines().count(), count - 1);
    c.quit();
}

both_backends!(
    rfc1939_example_session,
    rset_undoes_deletions,
    dropped_connection_deletes_nothing,
    quit_deletes_exactly_the_marked_messages,
    a_deleted_message_is_gone_for_every_command,
    the_maildrop_is_locked_while_a_session_is_in_transaction,
    mail_delivered_mid_session_waits_for_the_next_session,
    an_8_mib_message_arrives_intact,
    pipelined_commands_are_answered_in_order,
    malformed_commands_get_err_and_the_session_goes_on,
    top_sends_the_header_and_the_requested_lines,
    a_failed_login_says_the_same_for_a_wrong_password_and_an_unknown_user,
    a_sha512_crypt_user_logs_in,
    unique_ids_are_stable_and_distinct_across_sessions,
);

/// A login the cache of verifications remembers, on a maildrop unchanged since the session
/// before (its snapshot in memory): checked and opened on the async threads, with the same
/// maildrop, the same lock, and every change (the passwd-file, new mail) seen at the next login.
#[test]
fn remembered_logins_on_an_unchanged_maildrop_see_every_change() {
    let fx = Fixture::new();
    fx.deliver(USER, &message(1));
    fx.deliver(USER, &message(2));
    let server = fx.start();
    server.login(USER, PASSWORD).quit();
    let maildir = fx.maildir(USER);
    let past = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for sub in ["cur", "new"] {
        std::fs::File::open(maildir.join(sub))
            .and_then(|f| f.set_modified(past))
            .expect("set a directory's mtime");
    }
    // The index gets the trusted mtimes; from then on the snapshot is in memory.
    for _ in 0..3 {
        let mut c = server.login(USER, PASSWORD);
        assert_eq!(c.stat().0, 2);
        assert_eq!(c.retrieve("RETR 2"), crlf(&message(2)));
        c.quit();
    }

    // The lock is held as ever.
    let first = server.login(USER, PASSWORD);
    let mut second = server.connect();
    assert!(second.cmd("USER alice").starts_with("+OK"));
    let r = second.cmd("PASS secret");
    assert!(r.starts_with("-ERR [IN-USE]"), "{r:?}");
    first.quit();
    drop(second);

    // New mail is in the next session.
    fx.deliver(USER, &message(3));
    let mut c = Client::login_when_unlocked(server.addr, USER, PASSWORD);
    assert_eq!(c.stat().0, 3);
    c.quit();

    // A password changed in the passwd-file: the old one fails at once, the new one works.
    let users = fx.path().join("users");
    let text = std::fs::read_to_string(&users).unwrap();
    let changed = text.replace(
        &format!("{USER}:{{PLAIN}}{PASSWORD}\n"),
        &format!("{USER}:{{PLAIN}}{PASSWORD}-changed\n"),
    );
    assert_ne!(changed, text);
    std::fs::write(&users, &changed).unwrap();
    let mut c = server.connect();
    assert!(c.cmd("USER alice").starts_with("+OK"));
    let r = c.cmd("PASS secret");
    assert!(r.starts_with("-ERR"), "{r:?}");
    drop(c);
    let c = Client::login_when_unlocked(server.addr, USER, &format!("{PASSWORD}-changed"));
    c.quit();
    // The user removed: no login, remembered or not.
    std::fs::write(
        &users,
        text.replace(&format!("{USER}:{{PLAIN}}{PASSWORD}\n"), ""),
    )
    .unwrap();
    let mut c = server.connect();
    assert!(c.cmd("USER alice").starts_with("+OK"));
    let r = c.cmd(&format!("PASS {PASSWORD}-changed"));
    assert!(r.starts_with("-ERR"), "{r:?}");
}
