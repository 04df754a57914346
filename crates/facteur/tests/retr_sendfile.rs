//! RETR of a message that delivery stored as its own wire form (`[store] line_ends = "crlf"`,
//! the default: CRLF line ends, no line starting with '.'): over plain TCP it goes out by
//! `sendfile`, and the client gets the same octets as by the encoder; a message that needs
//! stuffing, a small one and TOP take the encoder's way; over TLS such a message goes out as
//! stored, in blocks, with no dot-stuffing pass. The session's log line says which way each
//! went.

mod common;

use common::*;
use std::process::Command;

/// A message of about `lines` x 60 octets, LF line ends as an MTA hands it over; with a line
/// starting with '.' in its middle when `dotted`.
fn message(lines: usize, dotted: bool) -> Vec<u8> {
    let mut m = b"From: a@example.org\nSubject: big\n\n".to_vec();
    for i in 0..lines {
        if dotted && i == lines / 2 {
            m.extend_from_slice(b".a line that needs a stuffing dot\n");
        }
        m.extend_from_slice(
            format!("line {i:08} of a large message, long enough to count\n").as_bytes(),
        );
    }
    m
}

/// The `session ended` log lines that have every one of `parts`.
fn ended_lines<'a>(log: &'a str, parts: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| l.contains("session ended") && parts.iter().all(|p| l.contains(p)))
        .collect()
}

#[test]
fn a_message_stored_as_its_wire_form_goes_out_by_sendfile_and_arrives_the_same() {
    let fx = Fixture::with_tls();
    // 3 MiB and more: above the size where RETR reads in large blocks.
    let big = message(52_000, false);
    let dotted = message(52_000, true);
    let small = message(10, false);
    let d_big = fx.deliver(USER, &big);
    let d_dotted = fx.deliver(USER, &dotted);
    fx.deliver(USER, &small);
    assert!(delivered_base(&d_big).ends_with(",P=1"), "{:?}", d_big.path);
    assert!(
        !delivered_base(&d_dotted).contains(",P="),
        "{:?}",
        d_dotted.path
    );
    // Stored with CRLF, so its stored size is its wire size.
    assert_eq!(d_big.size, d_big.wire_size);
    assert_eq!(std::fs::read(&d_big.path).unwrap(), crlf(&big));

    let server = BinServer::start(&fx.config_path);
    let mut c = server.login(USER, PASSWORD);
    let (status, body) = c.cmd_multi("RETR 1");
    assert_eq!(status, format!("+OK {} octets\r\n", d_big.wire_size));
    assert_eq!(body, crlf(&big), "sent as stored: nothing to stuff");
    assert_eq!(stuffed_lines(&body), 0);
    // Pipelined after a sendfile RETR, the next answers come in order.
    c.send(b"RETR 2\r\nRETR 3\r\nTOP 1 2\r\n");
    let status = c.line();
    assert!(status.starts_with("+OK"), "{status:?}");
    let body = c.body();
    assert_eq!(stuffed_lines(&body), 1);
    assert_eq!(unstuff(&body), crlf(&dotted));
    assert!(c.line().starts_with("+OK"));
    assert_eq!(c.body(), crlf(&small));
    assert!(c.line().starts_with("+OK"));
    let top = c.body();
    assert!(top.starts_with(b"From: a@example.org\r\nSubject: big\r\n\r\nline 00000000"));
    assert_eq!(top.iter().filter(|&&b| b == b'\n').count(), 5);
    c.quit();

    // Over TLS the same message goes out as stored too (read in blocks, encrypted, no
    // dot-stuffing pass), with the same octets.
    let mut t = Client::connect_tls(server.pop3s(), fx.cert());
    assert!(t.cmd(&format!("USER {USER}")).starts_with("+OK"));
    assert!(t.cmd(&format!("PASS {PASSWORD}")).starts_with("+OK"));
    let (_, body) = t.cmd_multi("RETR 1");
    assert_eq!(body, crlf(&big));
    t.quit();

    let log = server.wait_for_log("session ended", 2);
    assert_eq!(
        ended_lines(
            &log,
            &[
                "retrieved=3 ",
                "retrieved_by_sendfile=1 ",
                "retrieved_as_stored=1 ",
                "tls=\"none\""
            ]
        )
        .len(),
        1,
        "{log}"
    );
    assert_eq!(
        ended_lines(
            &log,
            &[
                "retrieved=1 ",
                "retrieved_by_sendfile=0 ",
                "retrieved_as_stored=1 ",
                "tls=\"TLS"
            ]
        )
        .len(),
        1,
        "{log}"
    );
}

#[test]
fn a_file_changed_after_delivery_is_not_sent_as_it_is() {
    let fx = Fixture::new();
    let big = message(52_000, false);
    let d = fx.deliver(USER, &big);
    assert!(delivered_base(&d).ends_with(",P=1"));
    // Someone who can write into the maildrop adds a line that would need stuffing: the
    // file's length no longer matches its name, so RETR encodes it.
    let mut changed = crlf(&big);
    changed.extend_from_slice(b".\r\n");
    std::fs::write(&d.path, &changed).unwrap();

    let server = BinServer::start(&fx.config_path);
    let mut c = server.login(USER, PASSWORD);
    let (_, body) = c.cmd_multi("RETR 1");
    assert_eq!(stuffed_lines(&body), 1, "the '.' line is stuffed");
    assert_eq!(unstuff(&body), changed);
    c.quit();
    let log = server.wait_for_log("session ended", 1);
    assert_eq!(
        ended_lines(
            &log,
            &[
                "retrieved=1 ",
                "retrieved_by_sendfile=0 ",
                "retrieved_as_stored=0 "
            ]
        )
        .len(),
        1,
        "{log}"
    );
}

#[test]
fn line_ends_lf_stores_mail_as_given() {
    let fx = Fixture::new();
    let mut text = std::fs::read_to_string(&fx.config_path).unwrap();
    assert!(text.contains("[store]\n"), "{text}");
    text = text.replace("[store]\n", "[store]\nline_ends = \"lf\"\n");
    std::fs::write(&fx.config_path, &text).unwrap();
    let m = message(10, false);
    cli_ok(&fx.config_path, &["deliver", USER], &m);
    let files = fx.message_files(USER);
    assert_eq!(files.len(), 1);
    let path = fx.maildir(USER).join("new").join(&files[0]);
    assert_eq!(std::fs::read(path).unwrap(), m);
    assert!(!files[0].contains(",P="), "{files:?}");
}

/// Python's poplib and curl, which nobody here wrote, read a message sent by sendfile as they
/// read any other.
#[test]
fn real_clients_read_a_message_sent_by_sendfile() {
    let fx = Fixture::new();
    let big = message(52_000, false);
    let d = fx.deliver(USER, &big);
    assert!(delivered_base(&d).ends_with(",P=1"));
    let server = BinServer::start(&fx.config_path);
    let want = sha256_hex(&crlf(&big));

    let script = r#"
import hashlib, poplib, sys
p = poplib.POP3(sys.argv[1], int(sys.argv[2]), timeout=60)
p.user(sys.argv[3])
p.pass_(sys.argv[4])
resp, lines, octets = p.retr(1)
print(hashlib.sha256(b"".join(l + b"\r\n" for l in lines)).hexdigest())
p.quit()
"#;
    let (code, stdout, stderr) = run_with_input(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg("127.0.0.1")
            .arg(server.addr.port().to_string())
            .arg(USER)
            .arg(PASSWORD),
        b"",
    );
    assert_eq!(code, Some(0), "poplib: {stdout}{stderr}");
    assert_eq!(stdout.trim(), want, "poplib");

    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "60"])
        .args(["--user", &format!("{USER}:{PASSWORD}")])
        .arg(format!("pop3://127.0.0.1:{}/1", server.addr.port()))
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256_hex(&out.stdout), want, "curl");

    let log = server.wait_for_log("session ended", 2);
    assert_eq!(
        ended_lines(&log, &["retrieved=1 ", "retrieved_by_sendfile=1 "]).len(),
        2,
        "{log}"
    );
}
