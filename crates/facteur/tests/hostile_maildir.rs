//! The Maildir is a trust boundary: a maildrop's owner (or anyone who can write into it) plants
//! links, FIFOs, unreadable files and over-long names, and a real server, spoken to in POP3,
//! must read, write and remove nothing outside the maildrop, and never stall.
//!
//! Every login here has a hard deadline of its own (a few seconds), far below the harness's
//! read timeout: a server that hangs fails the test instead of stalling it.
//!
//! Maildir only: the subject is the Maildir's files themselves (links, FIFOs, owners, modes,
//! names), which the PostgreSQL store does not have.

// The helpers below are test code too: a failed unwrap there is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

/// How long a login may take before the server counts as stuck.
const DEADLINE: Duration = Duration::from_secs(5);

/// Appends `lines` to the fixture's users file (before the server starts).
fn add_users(fx: &Fixture, lines: &str) {
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(fx.path().join("users"))
        .unwrap();
    f.write_all(lines.as_bytes()).unwrap();
}

/// `user`'s Maildir with its three subdirectories.
fn maildir(fx: &Fixture, user: &str) -> PathBuf {
    let dir = fx.maildir(user);
    for sub in ["cur", "new", "tmp"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    dir
}

/// USER/PASS with a deadline of its own: the PASS reply, or an error if the server did not
/// answer in time. Runs on a thread, so a server stuck for good cannot hang the test.
fn login_reply(addr: SocketAddr, user: &str, password: &str) -> Result<String, String> {
    let (tx, rx) = mpsc::channel();
    let (user, password) = (user.to_owned(), password.to_owned());
    std::thread::spawn(move || {
        let run = || -> std::io::Result<String> {
            let tcp = TcpStream::connect(addr)?;
            tcp.set_read_timeout(Some(DEADLINE * 2))?;
            let mut w = tcp.try_clone()?;
            let mut r = BufReader::new(tcp);
            let mut line = String::new();
            r.read_line(&mut line)?;
            w.write_all(format!("USER {user}\r\n").as_bytes())?;
            line.clear();
            r.read_line(&mut line)?;
            w.write_all(format!("PASS {password}\r\n").as_bytes())?;
            line.clear();
            r.read_line(&mut line)?;
            let _ = w.write_all(b"QUIT\r\n");
            Ok(line)
        };
        let _ = tx.send(run());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(Ok(line)) => Ok(line),
        Ok(Err(e)) => Err(format!("{e}")),
        Err(_) => Err(format!("no answer to PASS within {DEADLINE:?}")),
    }
}

/// Logs in (within the deadline) and returns the session; panics unless PASS is `+OK`.
fn login_in_time(addr: SocketAddr, user: &str, password: &str) -> Client {
    let reply = login_reply(addr, user, password).unwrap_or_else(|e| panic!("{user}: {e}"));
    assert!(reply.starts_with("+OK"), "{user}: {reply:?}");
    // The session above quit; the maildrop may still look locked for a moment.
    Client::login_when_unlocked(addr, user, password)
}

/// A file outside every maildrop, with content that must survive.
fn precious(fx: &Fixture, name: &str) -> PathBuf {
    let path = fx.path().join(name);
    fs::write(&path, b"precious, not mail\n").unwrap();
    path
}

fn assert_intact(path: &Path) {
    assert_eq!(
        fs::read(path).unwrap(),
        b"precious, not mail\n",
        "{}",
        path.display()
    );
}

/// Peak resident memory of this process, in KiB (Linux).
fn peak_rss_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn linked_subdirectories_are_never_followed() {
    let fx = Fixture::new();
    add_users(
        &fx,
        "linkcur:{PLAIN}secret\nlinknew:{PLAIN}secret\nlinktmp:{PLAIN}secret\n",
    );
    let mut outside = Vec::new();
    for sub in ["cur", "new", "tmp"] {
        let user = format!("link{sub}");
        let elsewhere = fx.path().join(format!("elsewhere-{sub}"));
        fs::create_dir_all(&elsewhere).unwrap();
        // A message-looking file, and one old enough for tmp/ cleaning.
        let file = elsewhere.join("1700000000.M1P1.h:2,");
        fs::write(&file, b"precious, not mail\n").unwrap();
        let old = elsewhere.join("1600000000.M1P1.h");
        fs::write(&old, b"precious, not mail\n").unwrap();
        fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(40 * 3600))
            .unwrap();
        let dir = maildir(&fx, &user);
        fs::remove_dir(dir.join(sub)).unwrap();
        symlink(&elsewhere, dir.join(sub)).unwrap();
        outside.push((user, elsewhere, file, old));
    }
    let server = fx.start();
    for (user, elsewhere, file, old) in &outside {
        let reply = login_reply(server.addr, user, "secret").unwrap();
        if reply.starts_with("+OK") {
            // Logged in: nothing from outside is in the maildrop, and nothing is deleted.
            let mut c = Client::login_when_unlocked(server.addr, user, "secret");
            assert_eq!(c.stat().0, 0, "{user}");
            assert!(c.cmd("RETR 1").starts_with("-ERR"), "{user}");
            assert!(c.cmd("DELE 1").starts_with("-ERR"), "{user}");
            c.quit();
        } else {
            assert!(reply.starts_with("-ERR"), "{user}: {reply:?}");
        }
        assert_intact(file);
        assert_intact(old);
        assert_eq!(fs::read_dir(elsewhere).unwrap().count(), 2, "{user}");
        // Delivery refuses the maildrop too, and writes nothing outside.
        let delivered = fx.store().deliver(user, None, &mut &message(1)[..]);
        assert!(delivered.is_err(), "{user}: {delivered:?}");
        assert_eq!(fs::read_dir(elsewhere).unwrap().count(), 2, "{user}");
    }
    // No thread is stuck: another user logs in at once.
    let mut c = login_in_time(server.addr, USER, PASSWORD);
    c.stat();
    c.quit();
}

#[test]
fn linked_index_temporary_and_lock_files_are_never_written_through() {
    let fx = Fixture::new();
    add_users(&fx, "bob:{PLAIN}secret\ndave:{PLAIN}secret\n");
    fx.deliver(USER, &message(1));
    let target = precious(&fx, "target-of-index-tmp");
    symlink(&target, fx.maildir(USER).join("facteur-index.tmp")).unwrap();
    // The lock file: to a file, and to a name that does not exist yet.
    let lock_target = precious(&fx, "target-of-lock");
    symlink(&lock_target, maildir(&fx, "bob").join("facteur.lock")).unwrap();
    let missing = fx.path().join("created-through-a-link");
    symlink(&missing, maildir(&fx, "dave").join("facteur.lock")).unwrap();

    let server = fx.start();
    for _ in 0..2 {
        let mut c = login_in_time(server.addr, USER, PASSWORD);
        assert_eq!(c.stat().0, 1);
        assert_eq!(c.retrieve("RETR 1"), crlf(&message(1)));
        c.quit();
        assert_intact(&target);
    }
    for user in ["bob", "dave"] {
        let reply = login_reply(server.addr, user, "secret").unwrap();
        assert!(
            reply.starts_with("+OK") || reply.starts_with("-ERR"),
            "{user}: {reply:?}"
        );
    }
    assert_intact(&lock_target);
    assert!(!missing.exists(), "a lock file was created through a link");
    login_in_time(server.addr, CRYPT_USER, CRYPT_PASSWORD).quit();
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

#[test]
fn a_fifo_as_index_neither_hangs_the_login_nor_blocks_other_users() {
    let fx = Fixture::new();
    add_users(&fx, "bob:{PLAIN}secret\ndave:{PLAIN}secret\n");
    for user in [USER, "bob"] {
        fx.deliver(user, &message(1));
        mkfifo(&fx.maildir(user).join("facteur-index"));
    }
    fx.deliver("dave", &message(2));
    let server = fx.start();
    for user in [USER, "bob"] {
        let password = if user == USER { PASSWORD } else { "secret" };
        let mut c = login_in_time(server.addr, user, password);
        assert_eq!(c.stat().0, 1, "{user}");
        assert_eq!(c.retrieve("RETR 1"), crlf(&message(1)), "{user}");
        c.quit();
        // Replaced by a real index.
        let meta = fs::symlink_metadata(fx.maildir(user).join("facteur-index")).unwrap();
        assert!(meta.is_file(), "{user}");
    }
    let mut c = login_in_time(server.addr, "dave", "secret");
    assert_eq!(c.retrieve("RETR 1"), crlf(&message(2)));
    c.quit();
}

#[test]
fn an_index_linked_to_dev_zero_is_never_read() {
    let fx = Fixture::new();
    fx.deliver(USER, &message(1));
    symlink("/dev/zero", fx.maildir(USER).join("facteur-index")).unwrap();
    let server = fx.start();
    let before = peak_rss_kib();
    let mut c = login_in_time(server.addr, USER, PASSWORD);
    assert_eq!(c.stat().0, 1);
    c.quit();
    let grown = peak_rss_kib().saturating_sub(before);
    // Reading the link would cost a gibibyte.
    assert!(grown < 100 * 1024, "peak memory grew by {grown} KiB");
    let meta = fs::symlink_metadata(fx.maildir(USER).join("facteur-index")).unwrap();
    assert!(meta.is_file());
}

#[test]
fn stale_tmp_files_are_removed_at_login_fresh_ones_kept() {
    let fx = Fixture::new();
    let dir = maildir(&fx, USER);
    fs::write(dir.join("tmp/1600000000.M1P1.h"), b"half a message").unwrap();
    fs::write(dir.join("tmp/1700000000.M1P1.h"), b"being written").unwrap();
    fs::File::options()
        .write(true)
        .open(dir.join("tmp/1600000000.M1P1.h"))
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(37 * 3600))
        .unwrap();
    fx.deliver(USER, &message(1));
    let server = fx.start();
    let mut c = login_in_time(server.addr, USER, PASSWORD);
    assert_eq!(c.stat().0, 1);
    c.quit();
    let left: Vec<_> = fs::read_dir(dir.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, vec!["1700000000.M1P1.h"]);
}

#[test]
fn a_maildrop_owned_by_another_uid_or_with_a_bad_uid_is_refused() {
    let fx = Fixture::new();
    let me = fs::metadata(fx.path()).unwrap().uid();
    let other = me.wrapping_add(1);
    add_users(
        &fx,
        &format!(
            "erin:{{PLAIN}}secret:{other}:::::\nfay:{{PLAIN}}secret:{me}:::::\n\
             gus:{{PLAIN}}secret:gus:::::\n"
        ),
    );
    for user in ["erin", "fay", "gus"] {
        maildir(&fx, user);
        fx.deliver(user, &message(1));
    }
    let server = fx.start();
    for user in ["erin", "gus"] {
        let reply = login_reply(server.addr, user, "secret").unwrap();
        assert!(reply.starts_with("-ERR"), "{user}: {reply:?}");
    }
    let mut c = login_in_time(server.addr, "fay", "secret");
    assert_eq!(c.stat().0, 1);
    c.quit();

    // check-config names the user whose uid field facteur cannot use.
    let out = Command::new(env!("CARGO_BIN_EXE_facteur"))
        .args(["check-config", "--config"])
        .arg(&fx.config_path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("not a number"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains("user gus"), "{stderr}");
}

/// Runs the real binary's `serve` as `nobody` when this test runs as root (root reads any
/// file, whatever its mode), as this user otherwise; returns it and its address.
struct Unprivileged {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Drop for Unprivileged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn serve_unprivileged(fx: &Fixture) -> Unprivileged {
    let bin = env!("CARGO_BIN_EXE_facteur");
    let mut cmd = if is_root() {
        // nobody must reach the configuration, the users file and the maildrops.
        // (The temporary folder is 0700; the folders above it are world-readable.)
        fs::set_permissions(fx.path(), fs::Permissions::from_mode(0o755)).unwrap();
        chown_tree(&fx.path().join("mail"), 65534, 65534);
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--",
            bin,
        ]);
        c
    } else {
        Command::new(bin)
    };
    let mut child = cmd
        .args(["serve", "--config"])
        .arg(&fx.config_path)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start facteur serve");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let line = strip_ansi(&line);
            eprintln!("server: {line}");
            if let Some(addr) = listening_address(&line) {
                let _ = tx.send(addr);
            }
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(addr) => addr,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("facteur serve did not start");
        }
    };
    Unprivileged { child, addr }
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
    if fs::symlink_metadata(path).unwrap().is_dir() {
        for e in fs::read_dir(path).unwrap() {
            chown_tree(&e.unwrap().path(), uid, gid);
        }
    }
}

#[test]
fn unreadable_and_overlong_messages_do_not_hide_the_others() {
    let fx = Fixture::new();
    let dir = maildir(&fx, USER);
    fs::write(dir.join("cur/1700000001.M1P1.h:2,"), b"one\n").unwrap();
    let unreadable = dir.join("cur/1700000002.M1P1.h:2,");
    fs::write(&unreadable, b"secret\n").unwrap();
    fs::set_permissions(&unreadable, fs::Permissions::from_mode(0o000)).unwrap();
    let long = format!("1700000003.{}", "x".repeat(243));
    assert_eq!(long.len(), 254);
    fs::write(dir.join("new").join(&long), b"long name\n").unwrap();
    fs::write(dir.join("cur/1700000004.M1P1.h:2,"), b"four\n").unwrap();

    let server = serve_unprivileged(&fx);
    let mut c = login_in_time(server.addr, USER, PASSWORD);
    let uids: Vec<String> = c.uidl().into_iter().map(|(_, u)| u).collect();
    assert_eq!(uids.len(), 3, "{uids:?}");
    assert_eq!(uids[0], "1700000001.M1P1.h");
    assert_eq!(uids[1], "1700000004.M1P1.h");
    assert!(
        !uids.iter().any(|u| u.starts_with("1700000002")),
        "{uids:?}"
    );
    assert_eq!(c.retrieve("RETR 1"), b"one\r\n");
    assert_eq!(c.retrieve("RETR 2"), b"four\r\n");
    // The over-long name was moved under a fresh (later) name: its mail is served too.
    assert_eq!(c.retrieve("RETR 3"), b"long name\r\n");
    c.quit();
    // The unreadable file is still there, untouched.
    assert!(unreadable.exists());
    // And nothing is stuck.
    login_in_time(server.addr, CRYPT_USER, CRYPT_PASSWORD).quit();
}

#[test]
fn deliver_as_root_gives_the_message_to_the_owner() {
    let fx = Fixture::new();
    let root = is_root();
    let (uid, gid) = if root {
        (65534, 65534)
    } else {
        let m = fs::metadata(fx.path()).unwrap();
        (m.uid(), m.gid())
    };
    add_users(&fx, &format!("hal:{{PLAIN}}secret:{uid}:{gid}::::\n"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_facteur"))
        .args(["deliver", "hal", "--config"])
        .arg(&fx.config_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&message(1)).unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(child.wait().unwrap().success(), "{stderr}");
    let dir = fx.maildir("hal");
    let files: Vec<_> = fs::read_dir(dir.join("new"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    for path in [
        &files[0],
        &dir,
        &dir.join("new"),
        &dir.join("tmp"),
        &dir.join("cur"),
    ] {
        let meta = fs::metadata(path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{}", path.display());
    }
    // The server accepts the maildrop as hal's.
    let server = fx.start();
    let mut c = login_in_time(server.addr, "hal", "secret");
    assert_eq!(c.stat().0, 1);
    c.quit();
}
