//! A server that is safe to expose: passwords never in clear text unless allowed, failed
//! logins slowed and cut off, bad clients disconnected, connection caps, and a graceful
//! shutdown that never applies deletions without QUIT.

mod common;

use common::*;
use std::io::ErrorKind;
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

/// CAPA's capabilities, one per line.
fn capa(c: &mut Client) -> Vec<String> {
    let (status, body) = c.cmd_multi("CAPA");
    assert!(status.starts_with("+OK"), "CAPA: {status:?}");
    String::from_utf8(body)
        .expect("a UTF-8 capability list")
        .split_terminator("\r\n")
        .map(str::to_string)
        .collect()
}

fn has_cap(caps: &[String], name: &str) -> bool {
    caps.iter()
        .any(|c| c.split_whitespace().next() == Some(name))
}

/// The mechanisms of the SASL capability (none if it is not listed).
fn sasl(caps: &[String]) -> Vec<String> {
    caps.iter()
        .find(|c| c.split_whitespace().next() == Some("SASL"))
        .map(|c| c.split_whitespace().skip(1).map(str::to_string).collect())
        .unwrap_or_default()
}

fn base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn plaintext_never_refuses_passwords_in_clear_until_stls(backend: Backend) {
    let fx = Fixture::build(
        DEFAULT_LIMITS,
        "plaintext_auth = \"never\"\napop = true\n",
        true,
    )
    .on(backend);
    fx.deliver(USER, &message(1));
    let server = fx.start();
    let mut c = server.connect();

    let caps = capa(&mut c);
    assert!(!has_cap(&caps, "USER"), "USER offered in clear: {caps:?}");
    let mechanisms = sasl(&caps);
    assert!(
        !mechanisms.iter().any(|m| m == "PLAIN" || m == "LOGIN"),
        "PLAIN or LOGIN offered in clear: {caps:?}"
    );
    assert!(has_cap(&caps, "STLS"), "{caps:?}");

    let r = c.cmd(&format!("USER {USER}"));
    assert!(r.starts_with("-ERR [AUTH] "), "USER in clear: {r:?}");
    assert!(
        r.contains("TLS"),
        "the refusal should say to use TLS: {r:?}"
    );
    let r = c.cmd(&format!("PASS {PASSWORD}"));
    assert!(r.starts_with("-ERR"), "PASS in clear: {r:?}");
    let plain = base64(format!("\0{USER}\0{PASSWORD}").as_bytes());
    let r = c.cmd(&format!("AUTH PLAIN {plain}"));
    assert!(r.starts_with("-ERR"), "AUTH PLAIN in clear: {r:?}");
    let r = c.cmd("AUTH PLAIN");
    assert!(r.starts_with("-ERR"), "AUTH PLAIN in clear: {r:?}");
    let r = c.cmd("AUTH LOGIN");
    assert!(r.starts_with("-ERR"), "AUTH LOGIN in clear: {r:?}");
    // APOP with the right digest, if the greeting offers a timestamp at all.
    let digest = match (c.greeting.find('<'), c.greeting.rfind('>')) {
        (Some(a), Some(b)) if a < b => {
            use md5::{Digest, Md5};
            let ts = &c.greeting[a..=b];
            Md5::digest(format!("{ts}{PASSWORD}").as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        }
        _ => "0".repeat(32),
    };
    let r = c.cmd(&format!("APOP {USER} {digest}"));
    assert!(r.starts_with("-ERR"), "APOP in clear: {r:?}");
    let r = c.cmd("STAT");
    assert!(r.starts_with("-ERR"), "logged in after all that: {r:?}");

    // Under TLS, the same connection may log in.
    c.stls(fx.cert());
    let caps = capa(&mut c);
    assert!(has_cap(&caps, "USER"), "{caps:?}");
    let mechanisms = sasl(&caps);
    assert!(
        mechanisms.iter().any(|m| m == "PLAIN") && mechanisms.iter().any(|m| m == "LOGIN"),
        "{caps:?}"
    );
    assert!(c.cmd(&format!("USER {USER}")).starts_with("+OK"));
    assert!(c.cmd(&format!("PASS {PASSWORD}")).starts_with("+OK"));
    assert_eq!(c.stat().0, 1);
    c.quit();

    // And so may a POP3S connection, here with SASL PLAIN.
    let mut c = Client::connect_tls(server.pop3s(), fx.cert());
    assert!(has_cap(&capa(&mut c), "USER"));
    let r = c.cmd(&format!("AUTH PLAIN {plain}"));
    assert!(r.starts_with("+OK"), "AUTH PLAIN under TLS: {r:?}");
    assert_eq!(c.stat().0, 1);
    c.quit();
}

fn plaintext_loopback_by_default_allows_clear_text_from_127_0_0_1(backend: Backend) {
    let fx = Fixture::with_tls().on(backend);
    assert_eq!(
        fx.config.auth.plaintext_auth,
        facteur_server::config::PlaintextAuth::Loopback
    );
    fx.deliver(USER, &message(1));
    let server = fx.start();
    let mut c = server.connect();
    let caps = capa(&mut c);
    assert!(has_cap(&caps, "USER"), "{caps:?}");
    assert!(has_cap(&caps, "STLS"), "{caps:?}");
    let mechanisms = sasl(&caps);
    assert!(mechanisms.iter().any(|m| m == "PLAIN"), "{caps:?}");
    assert!(c.cmd(&format!("USER {USER}")).starts_with("+OK"));
    assert!(c.cmd(&format!("PASS {PASSWORD}")).starts_with("+OK"));
    assert_eq!(c.stat().0, 1);
    c.quit();
}

const PENALTY_LIMITS: &str = "failed_login_delay_ms = 20\nmax_failed_login_delay_ms = 200\n\
                              max_failed_logins = 3\nshutdown_grace_secs = 1\n";

/// The server has closed the connection (or is closing it, maybe with a last `-ERR`): a NOOP
/// sent now gets no `+OK`.
fn expect_cut_off(c: &mut Client) {
    c.try_send(b"NOOP\r\n");
    while let Some(line) = c.line_or_close() {
        assert!(
            line.starts_with("-ERR"),
            "the connection is still open: {line:?}"
        );
    }
}

fn three_failed_logins_close_the_connection_with_the_same_answer_each_time(backend: Backend) {
    let fx = Fixture::with_limits(PENALTY_LIMITS).on(backend);
    let server = fx.start();
    let mut c = server.connect();

    // An unknown user, a wrong password, a wrong password for a hashed user.
    let mut answers = Vec::new();
    for (user, password) in [
        ("nobody", PASSWORD),
        (USER, "wrong"),
        (CRYPT_USER, "Secret"),
    ] {
        assert!(c.cmd(&format!("USER {user}")).starts_with("+OK"));
        c.send(format!("PASS {password}\r\n").as_bytes());
        answers.push(c.line());
    }
    assert!(answers[0].starts_with("-ERR [AUTH] "), "{answers:?}");
    assert_eq!(answers[1], answers[0], "unknown user vs wrong password");
    assert_eq!(
        answers[2], answers[0],
        "unknown user vs wrong crypt password"
    );
    // Then the server closes the connection: a command sent now is never answered.
    expect_cut_off(&mut c);

    // Two failures leave the connection open, and a good login then works.
    let mut c = server.connect();
    for _ in 0..2 {
        assert!(c.cmd(&format!("USER {USER}")).starts_with("+OK"));
        assert_eq!(c.cmd("PASS wrong"), answers[0]);
    }
    assert!(c.cmd(&format!("USER {USER}")).starts_with("+OK"));
    assert!(c.cmd(&format!("PASS {PASSWORD}")).starts_with("+OK"));
    c.quit();
}

fn three_failed_sasl_logins_close_the_connection_too(backend: Backend) {
    let fx = Fixture::with_limits(PENALTY_LIMITS).on(backend);
    let server = fx.start();
    // The answer to a failed USER/PASS, for comparison.
    let mut c = server.connect();
    assert!(c.cmd(&format!("USER {USER}")).starts_with("+OK"));
    let failed = c.cmd("PASS wrong");
    assert!(failed.starts_with("-ERR [AUTH] "), "{failed:?}");
    c.quit();

    let mut c = server.connect();
    // AUTH PLAIN with an initial response, for an unknown user and a wrong password.
    for (user, password) in [("nobody", PASSWORD), (USER, "wrong")] {
        let plain = base64(format!("\0{user}\0{password}").as_bytes());
        assert_eq!(
            c.cmd(&format!("AUTH PLAIN {plain}")),
            failed,
            "AUTH PLAIN {user}"
        );
    }
    // AUTH LOGIN, through its two challenges.
    let r = c.cmd("AUTH LOGIN");
    assert!(r.starts_with("+ "), "AUTH LOGIN: {r:?}");
    let r = c.cmd(&base64(USER.as_bytes()));
    assert!(r.starts_with("+ "), "AUTH LOGIN after the user name: {r:?}");
    assert_eq!(c.cmd(&base64(b"wrong")), failed, "AUTH LOGIN");
    expect_cut_off(&mut c);

    // A good SASL login still works from another connection.
    let mut c = server.connect();
    let plain = base64(format!("\0{USER}\0{PASSWORD}").as_bytes());
    assert!(c.cmd(&format!("AUTH PLAIN {plain}")).starts_with("+OK"));
    c.quit();
}

fn a_correct_login_succeeds_while_a_guesser_fails(backend: Backend) {
    let fx = Fixture::with_limits(PENALTY_LIMITS).on(backend);
    fx.deliver(USER, &message(1));
    let server = fx.start();
    let addr = server.addr;

    // A guesser on alice's password: three connections of three failures each.
    let (tx, rx) = mpsc::channel();
    let guesser = std::thread::spawn(move || {
        let mut answers = Vec::new();
        for round in 0..3 {
            let mut c = Client::connect(addr);
            for i in 0..3 {
                assert!(c.cmd(&format!("USER {USER}")).starts_with("+OK"));
                answers.push(c.cmd(&format!("PASS guess{round}{i}")));
                let _ = tx.send(());
            }
            expect_cut_off(&mut c);
        }
        answers
    });

    // Once the guesser has failed at least once, alice logs in from another connection.
    rx.recv_timeout(READ_TIMEOUT)
        .expect("the guesser's first failure");
    let mut c = Client::login(addr, USER, PASSWORD);
    assert_eq!(c.retrieve("RETR 1"), crlf(&message(1)));
    c.quit();

    let answers = guesser.join().expect("the guesser thread");
    assert_eq!(answers.len(), 9, "{answers:?}");
    assert!(
        answers.iter().all(|a| a.starts_with("-ERR")),
        "a guess succeeded: {answers:?}"
    );
}

fn too_many_bad_commands_close_the_connection(backend: Backend) {
    let fx = Fixture::with_limits("max_bad_commands = 3\n").on(backend);
    let server = fx.start();
    let mut c = server.connect();

    let r = c.cmd("FROB");
    assert!(r.starts_with("-ERR"), "an unknown command: {r:?}");
    // Good commands in between do not make up for it.
    assert_eq!(c.cmd("NOOP"), "+OK\r\n");
    let mut long = vec![b'x'; 400];
    long.extend_from_slice(b"\r\n");
    c.send(&long);
    let r = c.line();
    assert!(r.starts_with("-ERR"), "a line too long: {r:?}");
    assert!(c.cmd("CAPA").starts_with("+OK"));
    let _ = c.body();
    // The third: a command that is not valid before login. The NOOP after it is never run.
    c.send(b"STAT\r\nNOOP\r\n");
    let mut rest = Vec::new();
    while let Some(line) = c.line_or_close() {
        assert!(
            line.starts_with("-ERR"),
            "after the third bad command: {line:?}"
        );
        rest.push(line);
    }
    assert!(
        rest.last().is_some_and(|l| l.contains("too many")),
        "the last word should say why: {rest:?}"
    );

    // Other connections are not affected.
    server.login(USER, PASSWORD).quit();
}

fn a_10_kb_line_gets_one_error_and_the_session_goes_on(backend: Backend) {
    let fx = Fixture::new().on(backend);
    let m = message(1);
    fx.deliver(USER, &m);
    let server = fx.start();
    let mut c = server.login(USER, PASSWORD);

    // 10 KiB without a line end, in one write; the end of the line comes in a later write,
    // together with the next command.
    c.send(&vec![b'A'; 10 * 1024]);
    c.send(b"\r\nNOOP\r\n");
    assert_eq!(c.line(), "-ERR line too long\r\n");
    assert_eq!(c.line(), "+OK\r\n", "the command after the long line");

    // Same again, with the long line cut in many small writes.
    let chunk = vec![b'B'; 512];
    for _ in 0..20 {
        c.send(&chunk);
    }
    c.send(b"\n");
    assert_eq!(c.line(), "-ERR line too long\r\n");
    assert_eq!(c.cmd("NOOP"), "+OK\r\n");

    // Still logged in, nothing changed.
    assert_eq!(c.stat().0, 1);
    assert_eq!(c.retrieve("RETR 1"), crlf(&m));
    c.quit();
    assert_eq!(fx.message_count(USER), 1);
}

/// Wait (bounded) until connecting to `addr` is refused.
fn wait_until_refused(addr: std::net::SocketAddr) {
    for _ in 0..2000 {
        match TcpStream::connect(addr) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return,
            // Accepted by the kernel just as the listener closed: not refused yet.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ) => {}
            Err(e) => panic!("connect to {addr}: {e}"),
            Ok(s) => drop(s),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{addr} still accepts connections");
}

fn sigterm_stops_accepting_cuts_idle_sessions_without_update_and_lets_quit_finish(
    backend: Backend,
) {
    let fx =
        Fixture::with_limits("failed_login_delay_ms = 20\nshutdown_grace_secs = 2\n").on(backend);
    fx.deliver(USER, &message(1));
    fx.deliver(USER, &message(2));
    fx.deliver(CRYPT_USER, &message(3));
    let mut server = BinServer::start(&fx.config_path);

    // alice marks message 1 and then stays idle; carol marks hers and will QUIT in time.
    let mut idle = server.login(USER, PASSWORD);
    assert!(idle.cmd("DELE 1").starts_with("+OK"));
    let mut quitter = server.login(CRYPT_USER, CRYPT_PASSWORD);
    assert!(quitter.cmd("DELE 1").starts_with("+OK"));

    server.signal("TERM");
    wait_until_refused(server.addr);

    // QUIT during the grace period: UPDATE happens.
    quitter.quit();
    assert!(fx.uids(CRYPT_USER).is_empty());

    // The idle session is told, then closed, when the grace period is over.
    let r = idle.line();
    assert!(
        r.starts_with("-ERR [SYS/TEMP] server shutting down"),
        "the idle session got {r:?}"
    );
    idle.expect_closed();

    let status = server.wait_exit();
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        server.log()
    );
    // No UPDATE without QUIT: alice still has both messages.
    assert_eq!(fx.message_count(USER), 2);
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.contains("session ended") && l.contains("end=Shutdown")),
        "{log}"
    );
}

fn sigint_also_stops_the_server_cleanly(backend: Backend) {
    let fx = Fixture::new().on(backend);
    let mut server = BinServer::start(&fx.config_path);
    // A session served proves the signal handlers are in place.
    server.login(USER, PASSWORD).quit();
    server.signal("INT");
    let status = server.wait_exit();
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        server.log()
    );
    assert!(TcpStream::connect(server.addr).is_err());
}

/// Connect until the server greets with `+OK` (a closed session's slot is given back a
/// moment after its socket closes); every refusal on the way must be `refusal`. Bounded.
fn connect_when_a_slot_is_free(addr: std::net::SocketAddr, refusal: &str) -> Client {
    for _ in 0..500 {
        let c = Client::connect_unchecked(addr);
        if c.greeting.starts_with("+OK") {
            return c;
        }
        assert_eq!(c.greeting, refusal);
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no connection slot came free");
}

fn per_ip_connection_cap(backend: Backend) {
    let fx = Fixture::with_limits("max_connections_per_ip = 2\n").on(backend);
    let server = fx.start();
    let refusal = "-ERR [SYS/TEMP] too many connections from your address\r\n";
    let first = server.connect();
    let mut second = server.connect();
    let mut third = Client::connect_unchecked(server.addr);
    assert_eq!(third.greeting, refusal);
    third.expect_closed();

    // The two admitted sessions work normally.
    assert!(second.cmd(&format!("USER {USER}")).starts_with("+OK"));
    assert!(second.cmd(&format!("PASS {PASSWORD}")).starts_with("+OK"));

    // Once one closes, a new connection is admitted.
    first.quit();
    let fourth = connect_when_a_slot_is_free(server.addr, refusal);
    let mut fifth = Client::connect_unchecked(server.addr);
    assert_eq!(fifth.greeting, refusal);
    fifth.expect_closed();
    fourth.quit();
    second.quit();
}

fn global_connection_cap(backend: Backend) {
    let fx = Fixture::with_limits("max_connections = 2\n").on(backend);
    let server = fx.start();
    let refusal = "-ERR [SYS/TEMP] too many connections\r\n";
    let first = server.connect();
    let second = server.connect();
    let mut third = Client::connect_unchecked(server.addr);
    assert_eq!(third.greeting, refusal);
    third.expect_closed();
    first.quit();
    let fourth = connect_when_a_slot_is_free(server.addr, refusal);
    fourth.quit();
    second.quit();
}

both_backends!(
    plaintext_never_refuses_passwords_in_clear_until_stls,
    plaintext_loopback_by_default_allows_clear_text_from_127_0_0_1,
    three_failed_logins_close_the_connection_with_the_same_answer_each_time,
    three_failed_sasl_logins_close_the_connection_too,
    a_correct_login_succeeds_while_a_guesser_fails,
    too_many_bad_commands_close_the_connection,
    a_10_kb_line_gets_one_error_and_the_session_goes_on,
    sigterm_stops_accepting_cuts_idle_sessions_without_update_and_lets_quit_finish,
    sigint_also_stops_the_server_cleanly,
    per_ip_connection_cap,
    global_connection_cap,
);
