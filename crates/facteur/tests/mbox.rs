//! mbox maildrops end to end (`[store] format = "mbox"`): the real binary serving a spool that
//! Postfix's own `local` delivers into during the session, `facteur deliver` appending during a
//! session, and SIGKILL in the middle of UPDATE's rewrite.
//!
//! mbox only: the subject is the mbox file, its locks and its journal.

mod common;

use common::postfix::{chmod, Postfix};
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A fixture whose store is mbox files in `spool/` (mode 1777, as a spool that Postfix's `local`
/// writes into as each recipient), with these extra lines in the users file.
fn mbox_fixture(extra_users: &str) -> (Fixture, PathBuf) {
    let fx = Fixture::new();
    let text = std::fs::read_to_string(&fx.config_path).expect("read the configuration");
    let maildir = "[store]\nmaildir = \"mail/%u/Maildir\"\n";
    assert!(text.contains(maildir), "{text}");
    let text = text.replace(maildir, "[store]\nformat = \"mbox\"\nmbox = \"spool/%u\"\n");
    std::fs::write(&fx.config_path, text).expect("write the configuration");
    let spool = fx.path().join("spool");
    std::fs::create_dir(&spool).expect("make the spool");
    chmod(&spool, 0o1777);
    chmod(fx.path(), 0o755);
    let mut users = std::fs::OpenOptions::new()
        .append(true)
        .open(fx.path().join("users"))
        .expect("open the users file");
    users.write_all(extra_users.as_bytes()).expect("add users");
    (fx, spool)
}

/// `facteur deliver USER` with `message` on its standard input; returns what it logged.
fn deliver(config: &Path, user: &str, message: &[u8]) -> String {
    let (code, out, err) = run_with_input(
        Command::new(env!("CARGO_BIN_EXE_facteur"))
            .args(["deliver", user, "--config"])
            .arg(config),
        message,
    );
    assert_eq!(code, Some(0), "facteur deliver: {out}{err}");
    err
}

/// Message `n` as Postfix's `local` stores it (mboxo: a body line starting `From ` gets `>`), and
/// as RETR must send it (CRLF, not dot-stuffed).
fn postfix_style(n: usize, filler: usize) -> (Vec<u8>, Vec<u8>) {
    let body = format!(
        "Return-Path: <bob@example.org>\nSubject: message {n}\n\nFrom the first line of {n}\n.a dot line\n{}\nend of {n}\n",
        "x".repeat(filler)
    );
    let stored = format!(
        "From bob@example.org  Thu Dec  3 10:{:02}:{:02} 2026\n{}\n",
        n / 60 % 60,
        n % 60,
        body.replace("\nFrom the first", "\n>From the first")
    );
    (stored.into_bytes(), crlf(body.as_bytes()))
}

/// What the server lists, checked against what it sends: exact sizes, distinct unique-ids,
/// every message the content `expected` has under its unique-id. Returns the listed ids.
fn check_listing(c: &mut Client, expected: &BTreeMap<String, Vec<u8>>) -> BTreeSet<String> {
    let (count, octets) = c.stat();
    let list = c.list();
    let uidl = c.uidl();
    assert_eq!(count, list.len());
    assert_eq!(octets, list.iter().map(|(_, s)| s).sum::<u64>());
    for ((n, size), (_, uid)) in list.iter().zip(&uidl) {
        let want = expected
            .get(uid)
            .unwrap_or_else(|| panic!("message {n} has an unknown unique-id {uid:?}"));
        c.send(format!("RETR {n}\r\n").as_bytes());
        assert_eq!(c.line(), format!("+OK {size} octets\r\n"), "RETR {n}");
        let got = unstuff(&c.body());
        assert_eq!(got.len() as u64, *size, "RETR {n}: octets vs LIST");
        assert_eq!(&got, want, "RETR {n} ({uid})");
    }
    let uids: BTreeSet<String> = uidl.into_iter().map(|(_, u)| u).collect();
    assert_eq!(uids.len(), count, "unique-ids are distinct");
    uids
}

#[test]
fn a_session_on_an_mbox_with_a_delivery_during_it() {
    let (fx, spool) = mbox_fixture("");
    let mut stored = Vec::new();
    let mut expected = Vec::new();
    for n in 1..=3 {
        let (s, w) = postfix_style(n, 10);
        stored.extend_from_slice(&s);
        expected.push(w);
    }
    std::fs::write(spool.join(USER), &stored).expect("write the mbox");
    let server = BinServer::start(&fx.config_path);
    let mut c = server.login(USER, PASSWORD);
    let uidl = c.uidl();
    let by_uid: BTreeMap<String, Vec<u8>> = uidl
        .iter()
        .map(|(n, u)| (u.clone(), expected[*n as usize - 1].clone()))
        .collect();
    check_listing(&mut c, &by_uid);
    // TOP 0: the headers and the empty line only.
    let top = c.retrieve("TOP 1 0");
    assert_eq!(
        top,
        b"Return-Path: <bob@example.org>\r\nSubject: message 1\r\n\r\n"
    );
    // An MTA delivers meanwhile: not in this session's listing, kept by its UPDATE.
    let late = b"Subject: late\n\nFrom inside the body\n";
    deliver(&fx.config_path, USER, late);
    assert_eq!(c.stat().0, 3);
    assert!(c.cmd("DELE 2").starts_with("+OK"));
    c.quit();

    let mut c = server.login(USER, PASSWORD);
    let after = c.uidl();
    assert_eq!(after.len(), 3);
    assert_eq!(after[0].1, uidl[0].1);
    assert_eq!(after[1].1, uidl[2].1);
    assert!(!after.iter().any(|(_, u)| *u == uidl[1].1));
    assert_eq!(c.retrieve("RETR 3"), crlf(late));
    // A second session while this one holds the maildrop: [IN-USE].
    let mut other = Client::connect(server.addr);
    other.cmd(&format!("USER {USER}"));
    let r = other.cmd(&format!("PASS {PASSWORD}"));
    assert!(r.starts_with("-ERR [IN-USE]"), "{r}");
    c.quit();
    // Only the mbox and facteur's session lock are left in the spool.
    let mut names: Vec<String> = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, [".alice.facteur-lock", "alice"]);
}

const PYTHON_SMTP: &str = r#"
import smtplib, sys
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=30)
msg = ("From: carol@test.invalid\r\nTo: nobody@test.invalid\r\nSubject: " + sys.argv[2] +
       "\r\n\r\nFrom the body of " + sys.argv[2] + "\r\n.leading dot\r\n").encode()
assert s.sendmail('carol@test.invalid', ['nobody@test.invalid'], msg) == {}
s.quit()
"#;

/// Sends a message to nobody@test.invalid through Postfix and waits (bounded) until `local` has
/// written it into the spool.
fn send_through_postfix(postfix: &Postfix, smtp_port: u16, mbox: &Path, subject: &str) {
    let (code, out, err) = run_with_input(
        Command::new("python3")
            .arg("-c")
            .arg(PYTHON_SMTP)
            .arg(smtp_port.to_string())
            .arg(subject),
        b"",
    );
    assert_eq!(code, Some(0), "SMTP to Postfix:\n{out}{err}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let needle = format!("Subject: {subject}\n");
    loop {
        let text = std::fs::read(mbox).unwrap_or_default();
        let lock = mbox.with_file_name("nobody.lock");
        if String::from_utf8_lossy(&text).contains(&needle) && !lock.exists() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Postfix did not deliver {subject:?}; its log:\n{}",
            postfix.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Postfix's `local` (mboxo quoting, `mailbox_delivery_lock = fcntl, dotlock`) delivers into the
/// spool before and during a POP3 session; the session's UPDATE keeps what arrived meanwhile.
#[test]
fn postfix_local_delivers_into_the_spool_during_a_session() {
    if let Some(why) = Postfix::available() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    // nobody: a Unix account, which `local` needs, that no test runs as.
    let (fx, spool) = mbox_fixture("nobody:{PLAIN}secret\n");
    let server = BinServer::start(&fx.config_path);
    let smtp_port = free_port();
    let postfix = Postfix::start_local(smtp_port, &spool);
    let mbox = spool.join("nobody");
    send_through_postfix(&postfix, smtp_port, &mbox, "first");
    let raw = String::from_utf8_lossy(&std::fs::read(&mbox).unwrap()).into_owned();
    assert!(raw.starts_with("From carol@test.invalid "), "{raw}");
    assert!(
        raw.contains("\n>From the body of first\n"),
        "mboxo quoting: {raw}"
    );

    let mut c = server.login("nobody", "secret");
    let (count, _) = c.stat();
    assert_eq!(count, 1);
    let first = c.retrieve("RETR 1");
    let text = String::from_utf8_lossy(&first).into_owned();
    assert!(
        text.starts_with("Return-Path: <carol@test.invalid>\r\n"),
        "{text}"
    );
    assert!(
        text.ends_with("\r\n\r\nFrom the body of first\r\n.leading dot\r\n"),
        "{text}"
    );
    assert_eq!(c.list()[0].1, first.len() as u64);
    let first_uid = c.uidl()[0].1.clone();
    // Postfix delivers while the session holds the maildrop: facteur holds none of its locks.
    send_through_postfix(&postfix, smtp_port, &mbox, "second");
    assert!(c.cmd("DELE 1").starts_with("+OK"));
    c.quit();

    let mut c = server.login("nobody", "secret");
    let uidl = c.uidl();
    assert_eq!(uidl.len(), 1, "{}", server.log());
    assert_ne!(uidl[0].1, first_uid);
    let second = String::from_utf8_lossy(&c.retrieve("RETR 1")).into_owned();
    assert!(second.contains("Subject: second\r\n"), "{second}");
    assert!(second.ends_with("\r\n\r\nFrom the body of second\r\n.leading dot\r\n"));
    c.quit();
    // Postfix delivers after the rewrite too, into the same file.
    send_through_postfix(&postfix, smtp_port, &mbox, "third");
    let mut c = server.login("nobody", "secret");
    assert_eq!(c.uidl()[0], uidl[0]);
    assert_eq!(c.stat().0, 2);
    c.quit();
}

const MESSAGES: usize = 3000;

/// 3000 messages of about 3 KB; the session marks every other one of the first 2000 and QUITs;
/// the server is killed with SIGKILL when `moment` says; `facteur deliver` then appends a message
/// (the MTA after a crash); after a restart, nothing unmarked is lost, the marked messages are
/// all there or all gone (the journal's commit is the one point where UPDATE happens), and what
/// the server lists is exactly what it sends.
fn kill_during_update(moment: &str) {
    let (fx, spool) = mbox_fixture("");
    let mbox = spool.join(USER);
    let mut file = std::io::BufWriter::new(std::fs::File::create(&mbox).expect("create the mbox"));
    let mut wire = Vec::new();
    for n in 1..=MESSAGES {
        let (s, w) = postfix_style(n, 3000);
        file.write_all(&s).expect("write the mbox");
        wire.push(w);
    }
    drop(file);
    let server = BinServer::start(&fx.config_path);
    let mut c = server.login(USER, PASSWORD);
    let uidl = c.uidl();
    assert_eq!(uidl.len(), MESSAGES);
    let mut expected: BTreeMap<String, Vec<u8>> = uidl
        .iter()
        .map(|(n, u)| (u.clone(), wire[*n as usize - 1].clone()))
        .collect();
    let marked: BTreeSet<String> = uidl
        .iter()
        .filter(|(n, _)| *n <= 2000 && n % 2 == 1)
        .map(|(_, u)| u.clone())
        .collect();
    let mut commands: Vec<u8> = (1..=2000)
        .filter(|n| n % 2 == 1)
        .flat_map(|n| format!("DELE {n}\r\n").into_bytes())
        .collect();
    commands.extend_from_slice(b"QUIT\r\n");
    let mut writer = c.writer();
    let sender = std::thread::spawn(move || writer.write_all(&commands));
    let reader = std::thread::spawn(move || c.lines_until_closed());
    let journal = spool.join(".alice.facteur-journal");
    let tmp = spool.join(".alice.facteur-journal.tmp");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = false;
    while Instant::now() < deadline {
        seen = match moment {
            "journal being written" => tmp.exists(),
            _ => journal.exists(),
        };
        if seen {
            break;
        }
    }
    server.kill();
    let _ = sender.join();
    let _ = reader.join();
    assert!(seen, "the UPDATE never reached the moment {moment:?}");
    let committed = journal.exists();

    // The MTA delivers before facteur runs again.
    let late = b"Subject: after the crash\n\nFrom the MTA\n";
    let log = deliver(&fx.config_path, USER, late);
    // The delivery finished the interrupted UPDATE first (under the MTA locks).
    assert!(
        !journal.exists() && !tmp.exists(),
        "journal left by deliver: {log}"
    );

    let server = BinServer::start(&fx.config_path);
    let mut c = server.login(USER, PASSWORD);
    let late_uid = c.uidl().last().expect("a message").1.clone();
    expected.insert(late_uid.clone(), crlf(late));
    let listed = check_listing(&mut c, &expected);
    c.quit();
    assert!(
        listed.contains(&late_uid),
        "the mail delivered after the crash is lost"
    );
    for (_, uid) in uidl.iter().filter(|(_, u)| !marked.contains(u)) {
        assert!(listed.contains(uid), "unmarked message {uid} lost");
    }
    let kept = marked.iter().filter(|u| listed.contains(*u)).count();
    assert!(
        kept == 0 || kept == marked.len(),
        "{kept} of {} marked messages kept: UPDATE was not atomic",
        marked.len()
    );
    if committed {
        assert_eq!(kept, 0, "a committed UPDATE was not finished");
    }
    assert!(
        !journal.exists() && !tmp.exists(),
        "the journal was left behind"
    );
}

#[test]
fn sigkill_while_the_journal_is_written() {
    kill_during_update("journal being written");
}

#[test]
fn sigkill_after_the_journal_is_committed() {
    kill_during_update("journal committed");
}

const PYTHON_LMTP: &str = r#"
import smtplib, sys
s = smtplib.LMTP('127.0.0.1', int(sys.argv[1]), timeout=30)
msg = b"Subject: over LMTP\r\n\r\nFrom the LMTP body\r\n>From quoted already\r\n.dot\r\n"
assert s.sendmail('sender@example.net', ['alice@test.invalid'], msg) == {}
s.quit()
print('ok')
"#;

/// LMTP into the mbox store during a session (the server's own delivery path), and
/// `check-config` on an mbox configuration.
#[test]
fn lmtp_delivers_into_the_mbox_during_a_session() {
    let (fx, spool) = mbox_fixture("");
    let port = free_port();
    let text = std::fs::read_to_string(&fx.config_path).expect("read the configuration");
    let text = text.replacen(
        "[server]\n",
        &format!("[server]\nlisten_lmtp = [\"127.0.0.1:{port}\"]\n"),
        1,
    );
    std::fs::write(
        &fx.config_path,
        format!("{text}\n[lmtp]\ndomains = [\"test.invalid\"]\n"),
    )
    .expect("write the configuration");
    let (code, out, err) = run_with_input(
        Command::new(env!("CARGO_BIN_EXE_facteur"))
            .args(["check-config", "--config"])
            .arg(&fx.config_path),
        b"",
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(": OK (") && out.contains("mbox "), "{out}");

    deliver(&fx.config_path, USER, b"Subject: first\n\nfirst\n");
    let server = BinServer::start(&fx.config_path);
    let mut c = server.login(USER, PASSWORD);
    assert_eq!(c.stat().0, 1);
    let (code, out, err) = run_with_input(
        Command::new("python3")
            .arg("-c")
            .arg(PYTHON_LMTP)
            .arg(port.to_string()),
        b"",
    );
    assert_eq!(code, Some(0), "smtplib.LMTP: {out}{err}\n{}", server.log());
    assert_eq!(c.stat().0, 1);
    assert!(c.cmd("DELE 1").starts_with("+OK"));
    c.quit();

    let raw =
        String::from_utf8_lossy(&std::fs::read(spool.join(USER)).expect("the mbox")).into_owned();
    assert!(
        raw.contains("\n>From the LMTP body\n>>From quoted already\n"),
        "mboxrd: {raw}"
    );
    assert!(!raw.contains("Subject: first"), "{raw}");
    let mut c = server.login(USER, PASSWORD);
    let got = String::from_utf8_lossy(&c.retrieve("RETR 1")).into_owned();
    assert!(
        got.ends_with(
            "Subject: over LMTP\r\n\r\nFrom the LMTP body\r\n>From quoted already\r\n.dot\r\n"
        ),
        "{got}"
    );
    assert_eq!(c.list()[0].1, got.len() as u64);
    c.quit();
}
