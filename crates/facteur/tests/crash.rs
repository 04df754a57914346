//! Crash safety: the server binary is killed with SIGKILL in the middle of the UPDATE state.
//! After a restart no unmarked message may be lost, each marked message is either there or gone
//! (never half there), and what the server lists is exactly what it can send.
//!
//! Maildir only: the kill is timed on a message file's unlink, and the checks are about the
//! Maildir's files and its index (the fast path taken on aged directories). On PostgreSQL the
//! UPDATE state is one transaction; a node killed mid-session is tests/postgres.rs's and
//! tests/cluster.rs's subject.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

const MESSAGES: usize = 3000;
const MARKED: usize = 2000;

fn crash_message(n: usize) -> Vec<u8> {
    format!("From: load@example.org\nSubject: crash test {n}\n\n.body of message {n}\n")
        .into_bytes()
}

/// Everything the server lists, checked against what it sends: STAT agrees with LIST, UIDL
/// numbers the same messages, every listed message can be retrieved with exactly its LIST size
/// and the content delivered under its unique-id. Returns the listed unique-ids.
fn check_listing(c: &mut Client, expected: &BTreeMap<String, Vec<u8>>) -> BTreeSet<String> {
    let (count, octets) = c.stat();
    let list = c.list();
    let uidl = c.uidl();
    assert_eq!(count, list.len(), "STAT count vs LIST");
    assert_eq!(
        octets,
        list.iter().map(|(_, s)| s).sum::<u64>(),
        "STAT octets vs LIST"
    );
    assert_eq!(
        list.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        uidl.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        "LIST and UIDL number the same messages"
    );
    for ((n, size), (_, uid)) in list.iter().zip(&uidl) {
        let content = expected
            .get(uid)
            .unwrap_or_else(|| panic!("message {n} has an unknown unique-id {uid:?}"));
        c.send(format!("RETR {n}\r\n").as_bytes());
        let status = c.line();
        assert_eq!(status, format!("+OK {size} octets\r\n"), "RETR {n}");
        let got = unstuff(&c.body());
        assert_eq!(
            got.len() as u64,
            *size,
            "RETR {n}: received octets vs LIST size"
        );
        assert_eq!(&got, content, "RETR {n} ({uid})");
    }
    let uids: BTreeSet<String> = uidl.into_iter().map(|(_, u)| u).collect();
    assert_eq!(uids.len(), count, "unique-ids are distinct");
    uids
}

/// Set the mtimes of `cur/` and `new/` an hour back, as if the maildrop had been left alone that
/// long: the next open may then record them as trustworthy, and the one after that may take the
/// index's fast path (no directory listing). This is what makes a stale index dangerous.
fn age_maildir(dir: &Path) {
    let past = SystemTime::now() - Duration::from_secs(3600);
    for sub in ["cur", "new"] {
        std::fs::File::open(dir.join(sub))
            .and_then(|f| f.set_modified(past))
            .expect("set a directory's mtime");
    }
}

#[test]
fn sigkill_right_after_the_first_unlink() {
    crash_during_update(1);
}

#[test]
fn sigkill_halfway_through_update() {
    crash_during_update(MARKED / 2);
}

#[test]
fn sigkill_after_the_last_unlink() {
    crash_during_update(MARKED);
}

/// Deliver, mark the first [`MARKED`] messages, QUIT, and SIGKILL the server as soon as the file
/// of message `kill_after` is gone; then check the maildrop after a restart.
fn crash_during_update(kill_after: usize) {
    let fx = Fixture::new();
    // Delivered before the server starts, through the store API (the fast way).
    let mut watched = None;
    let wire: Vec<Vec<u8>> = (1..=MESSAGES)
        .map(|n| {
            let m = crash_message(n);
            let d = fx.deliver(USER, &m);
            if n == kill_after {
                watched = Some(delivered_base(&d));
            }
            crlf(&m)
        })
        .collect();
    let watched = watched.expect("the watched message was delivered");

    let server = BinServer::start(&fx.config_path);
    // A first session moves the mail from new/ to cur/ and writes the index.
    server.login(USER, PASSWORD).quit();
    age_maildir(&fx.maildir(USER));

    let mut c = server.login(USER, PASSWORD);
    let uidl = c.uidl();
    assert_eq!(uidl.len(), MESSAGES);
    // Message numbers follow delivery order; the unique-ids tie each message to its content.
    let expected: BTreeMap<String, Vec<u8>> = uidl
        .iter()
        .map(|(n, uid)| (uid.clone(), wire[*n as usize - 1].clone()))
        .collect();
    let marked: BTreeSet<String> = uidl[..MARKED].iter().map(|(_, u)| u.clone()).collect();
    let unmarked: BTreeSet<String> = uidl[MARKED..].iter().map(|(_, u)| u.clone()).collect();
    let watched_file = fx.maildir(USER).join("cur").join(
        fx.message_files(USER)
            .into_iter()
            .find(|f| base_name(f) == watched)
            .expect("the watched message is in cur/"),
    );

    // DELE 1..=2000 and QUIT in one write, from another thread, while a third reads the answers
    // (the server answers a whole read buffer of commands at once, so the UPDATE state may begin
    // before the last DELE answers arrive).
    let mut commands: Vec<u8> = (1..=MARKED)
        .flat_map(|n| format!("DELE {n}\r\n").into_bytes())
        .collect();
    commands.extend_from_slice(b"QUIT\r\n");
    let mut writer = c.writer();
    let sender = std::thread::spawn(move || writer.write_all(&commands));
    let reader = std::thread::spawn(move || c.lines_until_closed());

    // SIGKILL as soon as the watched file is gone (bounded wait; if UPDATE is over by then, the
    // checks below hold all the same).
    for _ in 0..10_000_000 {
        if !watched_file.exists() {
            break;
        }
        std::thread::yield_now();
    }
    server.kill();
    let left = fx.message_files(USER).len();
    eprintln!("killed the server after message {kill_after} went: {left} of {MESSAGES} files left");
    // The connection is gone, which ends both threads.
    let _ = sender.join().expect("the sender thread");
    let answers = reader.join().expect("the reader thread");
    assert!(answers.len() <= MARKED + 1, "{} answers", answers.len());
    for (i, a) in answers.iter().enumerate() {
        assert!(a.starts_with("+OK"), "answer {}: {a:?}", i + 1);
    }

    // Restart on the same configuration: a kill -9 leaves no stale lock.
    let server = BinServer::start(&fx.config_path);
    let mut c = server.login(USER, PASSWORD);
    let present = check_listing(&mut c, &expected);
    let lost: Vec<&String> = unmarked.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "{} unmarked messages lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    assert!(present
        .iter()
        .all(|u| marked.contains(u) || unmarked.contains(u)));
    assert_eq!(left, present.len(), "every message on disk is listed");
    c.quit();

    // After clean sessions, with the directories aged so that the index's fast path is taken,
    // the maildrop and its index still agree.
    age_maildir(&fx.maildir(USER));
    for _ in 0..2 {
        let mut c = server.login(USER, PASSWORD);
        assert_eq!(check_listing(&mut c, &expected), present);
        c.quit();
    }

    // Finish the job: delete the marked ones that survived, cleanly this time.
    let mut c = server.login(USER, PASSWORD);
    let numbers: Vec<u32> = c
        .uidl()
        .into_iter()
        .filter(|(_, u)| marked.contains(u))
        .map(|(n, _)| n)
        .collect();
    for n in &numbers {
        assert!(c.cmd(&format!("DELE {n}")).starts_with("+OK"));
    }
    c.quit();

    age_maildir(&fx.maildir(USER));
    for _ in 0..2 {
        let mut c = server.login(USER, PASSWORD);
        assert_eq!(check_listing(&mut c, &expected), unmarked);
        c.quit();
    }
    assert_eq!(fx.message_files(USER).len(), MESSAGES - MARKED);
}
