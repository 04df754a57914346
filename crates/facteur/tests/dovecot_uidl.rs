//! `[store] uidl = "dovecot"` against Dovecot itself: Dovecot's POP3 server and facteur take
//! turns on one Maildir, and their UIDL listings must be the same, byte for byte, before and
//! after new mail and deletions made by either of them.
//!
//! Dovecot runs without its master process: its `pop3` binary serves one pre-authenticated
//! session on its standard input and output (`USER` and `MAIL` in its environment), so the test
//! needs no port, no password and no root. Dovecot refuses to serve mail as root: when the tests
//! run as root, it runs as `nobody`, and the maildir is given to `nobody` before each of its
//! sessions (both servers then act as one mail user would).
//!
//! Without Dovecot (`/usr/lib/dovecot/pop3`, Debian's `dovecot-pop3d`) the tests say so on
//! stderr and pass, unless `FACTEUR_REQUIRE_DOVECOT=1` (CI sets it), where they fail.

// Helpers outside #[test] functions: a failure is the test's failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BinServer, Client, Fixture, PASSWORD, USER};

const DOVECOT_POP3: &str = "/usr/lib/dovecot/pop3";
/// Dovecot's uid for the mail when the tests run as root (`nobody`).
const NOBODY: u32 = 65534;

/// The `pop3` binary, or `None` (after saying so) when Dovecot is not installed here.
fn dovecot() -> Option<&'static str> {
    if Path::new(DOVECOT_POP3).exists() {
        return Some(DOVECOT_POP3);
    }
    assert!(
        std::env::var("FACTEUR_REQUIRE_DOVECOT").as_deref() != Ok("1"),
        "FACTEUR_REQUIRE_DOVECOT=1 but {DOVECOT_POP3} is missing (apt-get install dovecot-pop3d)"
    );
    eprintln!("SKIPPED: {DOVECOT_POP3} is missing (apt-get install dovecot-pop3d)");
    None
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The uid and gid Dovecot serves the mail as.
fn mail_ids() -> (u32, u32) {
    if is_root() {
        (NOBODY, NOBODY)
    } else {
        (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        )
    }
}

/// Gives `dir` and everything under it to the mail user (as root), and lets that user reach it.
fn give_to_mail_user(fx: &Fixture, dir: &Path) {
    if !is_root() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let mut up = dir.parent();
    while let Some(p) = up {
        if !p.starts_with(fx.path()) {
            break;
        }
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        up = p.parent();
    }
    fn walk(p: &Path) {
        std::os::unix::fs::lchown(p, Some(NOBODY), Some(NOBODY)).unwrap();
        if std::fs::symlink_metadata(p).unwrap().is_dir() {
            for e in std::fs::read_dir(p).unwrap() {
                walk(&e.unwrap().path());
            }
        }
    }
    walk(dir);
}

/// One Dovecot POP3 session on `maildir`: sends `commands` (CRLF added to each) and returns
/// everything Dovecot answered. `extra` is added to its configuration.
fn dovecot_session(fx: &Fixture, maildir: &Path, extra: &str, commands: &[&str]) -> Vec<u8> {
    let pop3 = dovecot().expect("checked by the caller");
    give_to_mail_user(fx, maildir);
    let (uid, gid) = mail_ids();
    let conf = fx.path().join("dovecot.conf");
    std::fs::write(
        &conf,
        format!(
            "log_path = {log}\nmail_location = maildir:{maildir}\nmail_uid = {uid}\n\
             mail_gid = {gid}\nfirst_valid_uid = 1\nfirst_valid_gid = 1\n\
             pop3_uidl_format = %08Xu%08Xv\n{extra}\n",
            log = fx.path().join("dovecot.log").display(),
            maildir = maildir.display(),
        ),
    )
    .unwrap();
    let mut child = Command::new(pop3)
        .arg("-c")
        .arg(&conf)
        .env_clear()
        .env("USER", USER)
        .env("HOME", maildir)
        .env("MAIL", format!("maildir:{}", maildir.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start Dovecot's pop3");
    let mut input = String::new();
    for c in commands {
        input.push_str(c);
        input.push_str("\r\n");
    }
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("Dovecot's pop3 did not finish in 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = reader.join().unwrap();
    let log = std::fs::read_to_string(fx.path().join("dovecot.log")).unwrap_or_default();
    assert!(
        status.success(),
        "Dovecot's pop3: {status}\n{}\nlog:\n{log}",
        String::from_utf8_lossy(&out)
    );
    out
}

/// The body of the first UIDL reply in a Dovecot session's output (which starts with it: a
/// pre-authenticated session has no greeting).
fn dovecot_uidl(fx: &Fixture, maildir: &Path, extra: &str) -> Vec<u8> {
    let out = dovecot_session(fx, maildir, extra, &["UIDL", "QUIT"]);
    let body = out
        .strip_prefix(b"+OK\r\n")
        .unwrap_or_else(|| panic!("Dovecot: {}", String::from_utf8_lossy(&out)));
    let end = find(body, b".\r\n").expect("the end of Dovecot's UIDL listing");
    body[..end].to_vec()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if hay.starts_with(needle) {
        return Some(0);
    }
    hay.windows(needle.len() + 2)
        .position(|w| w.starts_with(b"\r\n") && w.ends_with(needle))
        .map(|p| p + 2)
}

/// facteur serving the fixture with `uidl = "dovecot"`.
fn facteur_dovecot(fx: &Fixture) -> BinServer {
    let text = std::fs::read_to_string(&fx.config_path).unwrap();
    let text = text.replacen(
        "[store]\nmaildir = \"mail/%u/Maildir\"\n",
        "[store]\nmaildir = \"mail/%u/Maildir\"\nuidl = \"dovecot\"\n",
        1,
    );
    assert!(text.contains("uidl = \"dovecot\""));
    let path = fx.path().join("facteur-dovecot.toml");
    std::fs::write(&path, text).unwrap();
    BinServer::start(&path)
}

/// facteur's UIDL listing (the body, raw), then `then` (e.g. DELE commands), then QUIT.
fn facteur_uidl(server: &BinServer, then: &[&str]) -> Vec<u8> {
    let mut c: Client = Client::login_when_unlocked(server.addr, USER, PASSWORD);
    let (status, body) = c.cmd_multi("UIDL");
    assert!(status.starts_with("+OK"), "UIDL: {status:?}");
    for command in then {
        let r = c.cmd(command);
        assert!(r.starts_with("+OK"), "{command}: {r:?}");
    }
    c.quit();
    body
}

fn seed(maildir: &Path, count: usize) {
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    for i in 0..count {
        let name = format!("17000000{i:02}.M{i}P{}.seeded", 100 + i);
        let body = format!("From: a@example.org\nSubject: seeded {i}\n\nbody {i}\n.line\n");
        std::fs::write(maildir.join("new").join(name), body).unwrap();
    }
}

fn text(listing: &[u8]) -> String {
    String::from_utf8_lossy(listing).into_owned()
}

fn lines(listing: &[u8]) -> usize {
    listing
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count()
}

#[test]
fn facteur_and_dovecot_give_the_same_unique_ids_through_new_mail_and_deletions() {
    if dovecot().is_none() {
        return;
    }
    let fx = Fixture::new();
    let maildir = fx.maildir(USER);
    seed(&maildir, 6);

    // Dovecot serves the maildrop first: it makes dovecot-uidlist.
    let dovecot_first = dovecot_uidl(&fx, &maildir, "");
    assert_eq!(lines(&dovecot_first), 6, "{}", text(&dovecot_first));
    let uidlist = std::fs::read_to_string(maildir.join("dovecot-uidlist")).unwrap();
    let validity: u32 = uidlist[2..].split(' ').next().unwrap()[1..]
        .parse()
        .unwrap();
    assert!(
        text(&dovecot_first).starts_with(&format!("1 00000001{validity:08x}\r\n")),
        "{}",
        text(&dovecot_first)
    );

    // facteur, byte for byte the same.
    let server = facteur_dovecot(&fx);
    let facteur_first = facteur_uidl(&server, &[]);
    assert_eq!(text(&facteur_first), text(&dovecot_first));

    // New mail, which facteur numbers first; one old and one new message deleted by facteur.
    fx.deliver(USER, b"Subject: new 1\n\nnew one\n");
    fx.deliver(USER, b"Subject: new 2\n\nnew two\n");
    let with_new = facteur_uidl(&server, &[]);
    assert_eq!(lines(&with_new), 8, "{}", text(&with_new));
    assert!(text(&with_new).starts_with(&text(&facteur_first)));
    assert!(
        text(&with_new).ends_with(&format!("8 00000008{validity:08x}\r\n")),
        "{}",
        text(&with_new)
    );
    let uidlist = std::fs::read_to_string(maildir.join("dovecot-uidlist")).unwrap();
    assert!(
        uidlist.starts_with(&format!("3 V{validity} N9 ")),
        "{uidlist}"
    );
    let kept = facteur_uidl(&server, &["DELE 2", "DELE 7"]);
    assert_eq!(kept, with_new);
    let facteur_after = facteur_uidl(&server, &[]);
    assert_eq!(lines(&facteur_after), 6, "{}", text(&facteur_after));

    // Dovecot serves the same listing: the uids facteur gave, the deletions applied.
    let dovecot_after = dovecot_uidl(&fx, &maildir, "");
    assert_eq!(text(&dovecot_after), text(&facteur_after));

    // Dovecot numbers new mail and deletes one; facteur follows.
    fx.deliver(USER, b"Subject: new 3\n\nnew three\n");
    let out = dovecot_session(&fx, &maildir, "", &["UIDL", "DELE 1", "QUIT"]);
    assert!(
        text(&out).contains(&format!(" 00000009{validity:08x}\r\n")),
        "{}",
        text(&out)
    );
    let dovecot_last = dovecot_uidl(&fx, &maildir, "");
    assert_eq!(lines(&dovecot_last), 6, "{}", text(&dovecot_last));
    let facteur_last = facteur_uidl(&server, &[]);
    assert_eq!(text(&facteur_last), text(&dovecot_last));
}

#[test]
fn unique_ids_dovecot_saved_with_pop3_save_uidl_are_kept() {
    if dovecot().is_none() {
        return;
    }
    let fx = Fixture::new();
    let maildir = fx.maildir(USER);
    seed(&maildir, 4);
    // Dovecot saves the unique-ids of another format in the uidlist (P fields)...
    let saved = dovecot_uidl(
        &fx,
        &maildir,
        "pop3_save_uidl = yes\npop3_uidl_format = %v.%u",
    );
    let uidlist = std::fs::read_to_string(maildir.join("dovecot-uidlist")).unwrap();
    assert!(uidlist.contains(" P"), "no P field saved: {uidlist}");
    assert!(text(&saved).contains("1 "), "{}", text(&saved));
    // ...which it then serves whatever its format says.
    let dovecot_now = dovecot_uidl(&fx, &maildir, "");
    assert_eq!(text(&dovecot_now), text(&saved));
    assert!(!text(&saved).contains("00000001"), "{}", text(&saved));

    let server = facteur_dovecot(&fx);
    assert_eq!(text(&facteur_uidl(&server, &[])), text(&saved));
    // New mail gets Dovecot's default format, from both servers.
    fx.deliver(USER, b"Subject: new\n\nnew\n");
    let facteur_new = facteur_uidl(&server, &[]);
    assert_eq!(lines(&facteur_new), 5);
    assert_eq!(text(&dovecot_uidl(&fx, &maildir, "")), text(&facteur_new));
}

/// The maildrop's owner controls dovecot-uidlist: a malformed one, or a link, makes the login
/// fail with `[SYS/TEMP]` and a clear log line, and changes nothing.
#[test]
fn a_broken_uidlist_is_refused_with_sys_temp() {
    let fx = Fixture::new();
    let maildir = fx.maildir(USER);
    seed(&maildir, 2);
    let server = facteur_dovecot(&fx);
    let path: PathBuf = maildir.join("dovecot-uidlist");
    let outside = fx.path().join("elsewhere");
    std::fs::write(&outside, "3 V1 N3\n1 :a\n2 :b\n").unwrap();
    for (n, make) in [
        &(|| std::fs::write(&path, "3 V1 N3\n2 :a\n1 :b\n").unwrap()) as &dyn Fn(),
        &|| std::os::unix::fs::symlink(&outside, &path).unwrap(),
    ]
    .into_iter()
    .enumerate()
    {
        let _ = std::fs::remove_file(&path);
        make();
        let mut c = Client::connect(server.addr);
        assert!(c.cmd(&format!("USER {USER}")).starts_with("+OK"));
        let r = c.cmd(&format!("PASS {PASSWORD}"));
        assert!(r.starts_with("-ERR [SYS/TEMP]"), "{r:?}");
        server.wait_for_log("cannot use Dovecot's unique-ids", n + 1);
    }
    assert_eq!(std::fs::read(&outside).unwrap(), b"3 V1 N3\n1 :a\n2 :b\n");
    assert_eq!(fx.message_files(USER).len(), 2);
}
