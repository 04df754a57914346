//! `facteur migrate`: Maildirs copied into PostgreSQL (the harness of facteur-store's tests:
//! `FACTEUR_TEST_DATABASE_URL`, or a throwaway cluster), checked end to end through two real
//! servers, one on each store.
//!
//! Not doubled by `both_backends!`: each test already runs both stores, the Maildirs as the
//! source and PostgreSQL as the destination.

mod common;
use common::pg;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// The fixture's configuration with the PostgreSQL store at `url`, its schema made.
fn postgres_config(fx: &Fixture, db: &pg::TestDb) -> PathBuf {
    let text = std::fs::read_to_string(&fx.config_path).expect("read the configuration");
    let maildir = "[store]\nmaildir = \"mail/%u/Maildir\"\n";
    assert!(text.contains(maildir), "{text}");
    let text = text.replace(
        maildir,
        &format!(
            "[store]\nbackend = \"postgresql\"\nurl = {:?}\nlease_secs = 5\n",
            db.url
        ),
    );
    let path = fx.path().join("postgres.toml");
    std::fs::write(&path, text).expect("write the configuration");
    let (code, stdout, stderr) = run_with_input(
        facteur().args(["db", "migrate", "--config"]).arg(&path),
        b"",
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    path
}

/// Runs `facteur migrate` for alice; returns the exit code and stdout (stderr appended).
fn migrate(fx: &Fixture, to: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let (code, stdout, stderr) = run_with_input(
        facteur()
            .arg("migrate")
            .arg("--from-config")
            .arg(&fx.config_path)
            .arg("--to-config")
            .arg(to)
            .args(["--user", USER])
            .args(extra),
        b"",
    );
    (code, format!("{stdout}{stderr}"))
}

/// One number of the first line of `output` that starts with `prefix`, before `what`.
fn count(output: &str, prefix: &str, what: &str) -> u64 {
    let line = output
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in {output}"));
    let before = line
        .split(what)
        .next()
        .unwrap_or_else(|| panic!("no {what:?} in {line}"));
    before
        .rsplit(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number before {what:?} in {line}"))
}

/// One number from the database.
fn query_i64(url: &str, sql: &str) -> i64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect to the test database");
        let driver = tokio::spawn(connection);
        let row = client.query_one(sql, &[]).await.expect(sql);
        drop(client);
        let _ = driver.await;
        row.get::<_, i64>(0)
    })
}

/// What a client sees of a maildrop: UIDL, LIST and every message.
struct Seen {
    uidl: Vec<(u32, String)>,
    list: Vec<(u32, u64)>,
    bodies: Vec<Vec<u8>>,
}

fn everything(server: &BinServer) -> Seen {
    let mut c = Client::login_when_unlocked(server.addr, USER, PASSWORD);
    let uidl = c.uidl();
    let list = c.list();
    let bodies = (1..=list.len())
        .map(|n| c.retrieve(&format!("RETR {n}")))
        .collect();
    c.quit();
    Seen { uidl, list, bodies }
}

fn write(path: PathBuf, content: &[u8]) {
    std::fs::write(path, content).expect("write a message file");
}

#[test]
fn uidl_and_retr_are_identical_after_migration_and_a_rerun_is_a_no_op() {
    let db = pg::fresh_database();
    let fx = Fixture::new();
    let to = postgres_config(&fx, &db);
    // Mail as other programs leave it: delivered by facteur (LF), CRLF line ends, a message
    // still in new/, a flagged one in cur/, a base name too long to be a unique-id as it is,
    // a message of several chunks, one with a wrong ,W= field, an empty one.
    fx.deliver(USER, &message(1));
    let maildir = fx.maildir(USER);
    let crlf_message = crlf(&message(2));
    write(maildir.join("cur/1700000001.M1P1.mx:2,S"), &crlf_message);
    write(maildir.join("new/1700000002.M2P2.mx"), &message(3));
    let long = format!("1700000003.M3P3.{}", "x".repeat(80));
    write(maildir.join("cur").join(format!("{long}:2,")), &message(4));
    let mut big = b"Subject: big\n\n".to_vec();
    for i in 0..5000 {
        big.extend_from_slice(format!("line {i} of a message bigger than a chunk\r\n").as_bytes());
    }
    write(maildir.join("new/1700000004.M4P4.mx"), &big);
    write(maildir.join("cur/1700000005.M5P5.mx,W=3:2,"), &message(5));
    write(maildir.join("cur/1700000006.M6P6.mx:2,"), b"");
    // Not mail: a link to a file outside the maildrop, and a FIFO.
    let secret = fx.path().join("secret");
    write(secret.clone(), b"not for a maildrop\n");
    std::os::unix::fs::symlink(&secret, maildir.join("cur/1700000007.M7P7.mx:2,")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        maildir.join("cur/1700000008.M8P8.mx:2,"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .expect("make a FIFO");
    let files_before = fx.message_files(USER);

    let (code, out) = migrate(&fx, &to, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(count(&out, "alice:", "listed"), 7, "{out}");
    assert_eq!(count(&out, "alice:", "copied"), 7, "{out}");
    assert_eq!(count(&out, "alice:", "skipped"), 2, "{out}");
    assert!(out.contains("verified"), "{out}");
    assert!(
        out.contains("1700000007.M7P7.mx:2,: not a regular file"),
        "{out}"
    );
    assert!(
        out.contains("1700000008.M8P8.mx:2,: not a regular file"),
        "{out}"
    );
    assert!(out.contains("W=3"), "the wrong ,W= field is noted: {out}");
    assert_eq!(
        fx.message_files(USER),
        files_before,
        "the Maildir is not changed"
    );
    assert!(!maildir.join("facteur.lock").exists());
    assert!(!maildir.join("facteur-index").exists());

    let old = BinServer::start(&fx.config_path);
    let Seen { uidl, list, bodies } = everything(&old);
    old.kill();
    let new = BinServer::start(&to);
    let Seen {
        uidl: pg_uidl,
        list: pg_list,
        bodies: pg_bodies,
    } = everything(&new);
    new.kill();
    assert_eq!(uidl.len(), 7);
    assert_eq!(pg_uidl, uidl, "UIDL is the same on both stores");
    assert!(uidl.iter().any(|(_, u)| u.starts_with('H')), "{uidl:?}");
    assert_eq!(pg_bodies, bodies, "RETR sends the same octets");
    // Exact wire sizes, LF and CRLF alike (the Maildir server believed the ,W= field).
    let wire: Vec<u64> = pg_bodies.iter().map(|b| b.len() as u64).collect();
    assert_eq!(pg_list.iter().map(|&(_, s)| s).collect::<Vec<_>>(), wire);
    // In delivery order: the names of 2023 first, facteur's delivery of today last.
    assert_eq!(wire[0], crlf_message.len() as u64);
    assert_eq!(wire[6], crlf(&message(1)).len() as u64);
    assert_eq!(pg_bodies[3], crlf(&big));
    for (i, (m, pg)) in list.iter().zip(&pg_list).enumerate() {
        if i != 4 {
            assert_eq!(m, pg, "LIST of message {}", i + 1);
        }
    }

    // Again: nothing to copy, everything checked. The Maildir server's open moved new/ to cur/
    // meanwhile, which changes no unique-id.
    let (code, out) = migrate(&fx, &to, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(count(&out, "alice:", "copied"), 0, "{out}");
    assert_eq!(count(&out, "alice:", "already there"), 7, "{out}");
    assert!(
        out.contains("summary: 1 maildrops, 0 messages copied"),
        "{out}"
    );
    assert_eq!(
        query_i64(&db.url, "SELECT count(*) FROM messages"),
        7,
        "nothing duplicated"
    );
}

#[test]
fn deletions_on_either_side_between_runs_are_kept_and_new_mail_is_caught_up() {
    let db = pg::fresh_database();
    let fx = Fixture::new();
    let to = postgres_config(&fx, &db);
    let delivered: Vec<_> = (1..=4).map(|i| fx.deliver(USER, &message(i))).collect();
    let (code, out) = migrate(&fx, &to, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(count(&out, "alice:", "copied"), 4, "{out}");

    // The old server deletes message 1 (after it was copied). A session on PostgreSQL holds
    // the maildrop meanwhile: the removal waits for a later run.
    std::fs::remove_file(&delivered[0].path).expect("delete a message from the Maildir");
    let new = BinServer::start(&to);
    let mut c = Client::login_when_unlocked(new.addr, USER, PASSWORD);
    let (code, stdout, stderr) = run_with_input(
        facteur()
            .arg("migrate")
            .arg("--from-config")
            .arg(&fx.config_path)
            .arg("--to-config")
            .arg(&to)
            .arg("--all"),
        b"",
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("1 deleted from the Maildir since they were copied, not removed yet"),
        "{stdout}"
    );
    assert!(
        stdout.contains("carol: 0 listed"),
        "every user of the file: {stdout}"
    );
    assert!(stdout.contains("summary: 2 maildrops"), "{stdout}");
    // That session deletes message 2; message 5 arrives in the Maildir.
    assert_eq!(c.stat().0, 4);
    assert!(c.cmd("DELE 2").starts_with("+OK"));
    c.quit();
    fx.deliver(USER, &message(5));

    let (code, out) = migrate(&fx, &to, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(count(&out, "alice:", "copied"), 1, "{out}");
    assert_eq!(count(&out, "alice:", "removed"), 1, "{out}");
    assert!(out.contains("1 deleted on PostgreSQL since"), "{out}");
    let mut c = Client::login_when_unlocked(new.addr, USER, PASSWORD);
    let bodies: Vec<Vec<u8>> = (1..=c.stat().0)
        .map(|n| c.retrieve(&format!("RETR {n}")))
        .collect();
    c.quit();
    new.kill();
    assert_eq!(
        bodies,
        [crlf(&message(3)), crlf(&message(4)), crlf(&message(5))],
        "neither deletion is undone, and the new message is there, in order"
    );

    // A message deleted from the Maildir before any run copied it is simply missing.
    let d = fx.deliver(USER, &message(6));
    std::fs::remove_file(&d.path).unwrap();
    let (code, out) = migrate(&fx, &to, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(count(&out, "alice:", "copied"), 0, "{out}");
    assert_eq!(query_i64(&db.url, "SELECT count(*) FROM messages"), 3);
}

#[test]
fn a_changed_message_is_a_conflict_and_a_dry_run_writes_nothing() {
    let db = pg::fresh_database();
    let fx = Fixture::new();
    let to = postgres_config(&fx, &db);
    let d = fx.deliver(USER, &message(1));
    let as_stored = std::fs::read(&d.path).unwrap();
    fx.deliver(USER, &message(2));
    let (code, out) = migrate(&fx, &to, &["--dry-run"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(count(&out, "alice:", "copied"), 2, "{out}");
    assert!(out.contains("dry run"), "{out}");
    assert_eq!(query_i64(&db.url, "SELECT count(*) FROM messages"), 0);

    let (code, out) = migrate(&fx, &to, &[]);
    assert_eq!(code, Some(0), "{out}");
    // Same name, other content: nothing is overwritten, and the run fails.
    std::fs::write(&d.path, message(9)).unwrap();
    let (code, out) = migrate(&fx, &to, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(count(&out, "alice:", "conflicts"), 1, "{out}");
    assert!(out.contains("conflict: unique-id"), "{out}");
    assert_eq!(query_i64(&db.url, "SELECT count(*) FROM messages"), 2);

    // A stored wire size that is not the file's fails the verification.
    std::fs::write(&d.path, &as_stored).unwrap();
    let (code, out) = migrate(&fx, &to, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        query_i64(
            &db.url,
            "WITH changed AS (UPDATE messages SET wire_size = wire_size + 1 \
             WHERE delivered_at = (SELECT max(delivered_at) FROM messages) RETURNING 1) \
             SELECT count(*) FROM changed"
        ),
        1
    );
    let (code, out) = migrate(&fx, &to, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("VERIFICATION FAILED"), "{out}");
    assert!(out.contains("1 verification failures"), "{out}");
}

#[test]
fn a_migration_killed_mid_run_completes_on_the_next_with_no_duplicates() {
    const MESSAGES: usize = 1500;
    let db = pg::fresh_database();
    let fx = Fixture::new();
    let to = postgres_config(&fx, &db);
    // Files written directly (a delivery each would be slow); 1 KiB each.
    let cur = fx.maildir(USER).join("cur");
    std::fs::create_dir_all(&cur).unwrap();
    std::fs::create_dir_all(fx.maildir(USER).join("new")).unwrap();
    let mut body = message(0);
    body.resize(1024, b'x');
    for i in 0..MESSAGES {
        write(
            cur.join(format!("{}.M{i}P1.mx:2,", 1_700_000_000 + i)),
            &body,
        );
    }

    let mut killed_mid_run = false;
    for _attempt in 0..5 {
        let mut child = facteur()
            .arg("migrate")
            .arg("--from-config")
            .arg(&fx.config_path)
            .arg("--to-config")
            .arg(&to)
            .args(["--user", USER])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start facteur migrate");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n = query_i64(&db.url, "SELECT count(*) FROM messages");
            if n >= 50 || Instant::now() > deadline {
                break;
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // kill -9: no cleanup of any kind.
        let _ = child.kill();
        let _ = child.wait();
        let n = query_i64(&db.url, "SELECT count(*) FROM messages");
        if n > 0 && n < MESSAGES as i64 {
            killed_mid_run = true;
            break;
        }
    }
    assert!(killed_mid_run, "the migration was never caught mid-run");

    let (code, out) = migrate(&fx, &to, &[]);
    assert_eq!(code, Some(0), "{out}");
    let copied = count(&out, "alice:", "copied");
    let already = count(&out, "alice:", "already there");
    assert!(copied > 0 && already > 0, "{out}");
    assert_eq!(copied + already, MESSAGES as u64, "{out}");
    assert!(out.contains("verified"), "{out}");
    assert_eq!(
        query_i64(&db.url, "SELECT count(*) FROM messages"),
        MESSAGES as i64
    );
    assert_eq!(
        query_i64(&db.url, "SELECT count(DISTINCT uid) FROM messages"),
        MESSAGES as i64
    );
    // Every message whole: one chunk each, and its row complete.
    assert_eq!(
        query_i64(&db.url, "SELECT count(*) FROM message_chunks"),
        MESSAGES as i64
    );
    assert_eq!(
        query_i64(
            &db.url,
            "SELECT count(*) FROM messages WHERE octets <> 1024"
        ),
        0
    );
    let (code, out) = migrate(&fx, &to, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(count(&out, "alice:", "copied"), 0, "{out}");
}

#[test]
fn runs_while_the_old_server_holds_the_maildrop() {
    let db = pg::fresh_database();
    let fx = Fixture::new();
    let to = postgres_config(&fx, &db);
    for i in 1..=3 {
        fx.deliver(USER, &message(i));
    }
    let old = BinServer::start(&fx.config_path);
    let mut c = Client::login_when_unlocked(old.addr, USER, PASSWORD);
    let uidl = c.uidl();
    // The session holds the Maildir's lock: migrate needs none.
    let (code, out) = migrate(&fx, &to, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(count(&out, "alice:", "copied"), 3, "{out}");
    // The old server's session deletes message 1 after it was copied.
    assert!(c.cmd("DELE 1").starts_with("+OK"));
    c.quit();
    old.kill();
    let (code, out) = migrate(&fx, &to, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(count(&out, "alice:", "removed"), 1, "{out}");
    let new = BinServer::start(&to);
    let seen = everything(&new);
    new.kill();
    let expected: Vec<String> = uidl.iter().skip(1).map(|(_, u)| u.clone()).collect();
    let got: Vec<String> = seen.uidl.iter().map(|(_, u)| u.clone()).collect();
    assert_eq!(got, expected);
    assert_eq!(seen.bodies, [crlf(&message(2)), crlf(&message(3))]);
}

/// `[store] uidl = "dovecot"` in the source configuration: the maildrops keep Dovecot's
/// unique-ids in PostgreSQL, and a message Dovecot never numbered (never served) keeps facteur's.
#[test]
fn dovecot_unique_ids_are_carried_into_postgresql() {
    let db = pg::fresh_database();
    let fx = Fixture::new();
    let to = postgres_config(&fx, &db);
    let maildir = fx.maildir(USER);
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    write(maildir.join("cur/1700000001.M1P1.mx:2,S"), &message(1));
    write(maildir.join("cur/1700000002.M2P2.mx:2,"), &message(2));
    write(maildir.join("new/1700000003.M3P3.mx"), &message(3));
    // As Dovecot 2.3 writes it; message 2's unique-id was saved by pop3_save_uidl.
    write(
        maildir.join("dovecot-uidlist"),
        b"3 V1796293094 N3 G2857e61ee641116bd65f000083ecc375\n\
          1 W40 :1700000001.M1P1.mx\n\
          2 Pold-uidl-2 :1700000002.M2P2.mx\n",
    );
    let text = std::fs::read_to_string(&fx.config_path).unwrap();
    let text = text.replacen(
        "maildir = \"mail/%u/Maildir\"\n",
        "maildir = \"mail/%u/Maildir\"\nuidl = \"dovecot\"\n",
        1,
    );
    std::fs::write(&fx.config_path, text).unwrap();

    let (code, out) = migrate(&fx, &to, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(count(&out, "alice:", "copied"), 3, "{out}");
    let server = BinServer::start(&to);
    let mut uidls: Vec<String> = everything(&server)
        .uidl
        .into_iter()
        .map(|(_, u)| u)
        .collect();
    uidls.sort();
    assert_eq!(
        uidls,
        ["000000016b1141e6", "1700000003.M3P3.mx", "old-uidl-2"],
        "{out}"
    );
    // The Maildir was only read.
    assert!(maildir.join("new/1700000003.M3P3.mx").exists());
    assert!(!std::fs::read_to_string(maildir.join("dovecot-uidlist"))
        .unwrap()
        .contains("1700000003"));
}
