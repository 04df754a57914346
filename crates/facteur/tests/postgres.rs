//! facteur with `[store] backend = "postgresql"`, against a real PostgreSQL (the harness of
//! facteur-store's tests: `FACTEUR_TEST_DATABASE_URL`, or a throwaway cluster).

mod common;
use common::pg;

use common::*;

/// The fixture's configuration with the PostgreSQL store at `url` instead of its Maildirs.
fn postgres_config(fx: &Fixture, url: &str) -> std::path::PathBuf {
    common::postgres_config(fx, url, "postgres.toml")
}

#[test]
fn db_migrate_then_check_config() {
    let db = pg::fresh_database();
    let fx = Fixture::new();
    let config = postgres_config(&fx, &db.url);
    let check = || {
        run_with_input(
            facteur().args(["check-config", "--config"]).arg(&config),
            b"",
        )
    };
    let migrate = || {
        run_with_input(
            facteur().args(["db", "migrate", "--config"]).arg(&config),
            b"",
        )
    };
    // An empty database: check-config says what to do.
    let (code, stdout, stderr) = check();
    assert_ne!(code, Some(0), "{stdout}");
    assert!(stderr.contains("facteur db migrate"), "{stderr}");

    let (code, stdout, stderr) = migrate();
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("schema version 5 (was 0)"), "{stdout}");
    let (code, stdout, stderr) = migrate();
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("up to date"), "{stdout}");

    let (code, stdout, stderr) = check();
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("store postgresql"), "{stdout}");
    assert!(stdout.contains("schema version 5"), "{stdout}");

    // `user add` has no maildir template to check the name against: the maildrop is a row.
    let (code, stdout, stderr) = run_with_input(
        facteur()
            .args([
                "user",
                "add",
                "dave@example.org",
                "--password-stdin",
                "--config",
            ])
            .arg(&config),
        b"correct horse\n",
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let (code, stderr) = deliver_cli(&config, "dave@example.org", &message(1));
    assert_eq!(code, Some(0), "{stderr}");
    let server = BinServer::start(&config);
    let mut c = server.login("dave@example.org", "correct horse");
    assert_eq!(c.retrieve("RETR 1"), crlf(&message(1)));
    c.quit();
    server.kill();

    // The Maildir configuration has no database to migrate.
    let (code, _, stderr) = run_with_input(
        facteur()
            .args(["db", "migrate", "--config"])
            .arg(&fx.config_path),
        b"",
    );
    assert_ne!(code, Some(0));
    assert!(stderr.contains("backend is maildir"), "{stderr}");
}

/// A fresh database with the schema, and the fixture's configuration pointing at it.
fn migrated(fx: &Fixture, db: &pg::TestDb) -> std::path::PathBuf {
    let config = postgres_config(fx, &db.url);
    db_migrate(&config);
    config
}

/// A message of about 200 KiB (several chunks of the store) with dot lines and bare LFs.
fn big_message() -> Vec<u8> {
    let mut m = b"From: big@example.org\nSubject: big\n\n".to_vec();
    for i in 0..4000 {
        m.extend_from_slice(
            format!(".line {i} of a big message, with some padding text\n").as_bytes(),
        );
    }
    m
}

#[test]
fn deliver_serve_retrieve_and_update_on_postgresql() {
    let db = pg::fresh_database();
    let fx = Fixture::new();
    let config = migrated(&fx, &db);
    let small = message(1);
    let big = big_message();
    for m in [&small, &big] {
        let (code, stderr) = deliver_cli(&config, USER, m);
        assert_eq!(code, Some(0), "{stderr}");
        assert!(stderr.contains("postgresql:alice/"), "{stderr}");
    }
    // An unknown user bounces (EX_NOUSER), empty input too (EX_DATAERR).
    assert_eq!(deliver_cli(&config, "nobody", &small).0, Some(67));
    assert_eq!(deliver_cli(&config, USER, b"").0, Some(65));

    let server = BinServer::start(&config);
    let mut c = server.login(USER, PASSWORD);
    let wire = [crlf(&small), crlf(&big)];
    assert_eq!(
        c.stat(),
        (2, (wire[0].len() + wire[1].len()) as u64),
        "STAT counts wire octets"
    );
    assert_eq!(
        c.list(),
        [(1, wire[0].len() as u64), (2, wire[1].len() as u64)]
    );
    let uids = c.uidl();
    assert_eq!(uids.len(), 2);
    assert_ne!(uids[0].1, uids[1].1);
    assert_eq!(c.retrieve("RETR 1"), wire[0]);
    assert_eq!(c.retrieve("RETR 2"), wire[1]);

    // The lease: a second session for the same maildrop is refused while this one lives.
    let mut other = Client::connect(server.addr);
    other.cmd(&format!("USER {USER}"));
    let r = other.cmd(&format!("PASS {PASSWORD}"));
    assert!(r.starts_with("-ERR [IN-USE]"), "{r}");

    // A session that ends without QUIT deletes nothing, and its lease goes with it.
    assert!(c.cmd("DELE 1").starts_with("+OK"));
    drop(c);
    let mut c = Client::login_when_unlocked(server.addr, USER, PASSWORD);
    assert_eq!(c.uidl(), uids);
    // Mail delivered during a session waits for the next one.
    let (code, stderr) = deliver_cli(&config, USER, &message(3));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(c.stat().0, 2);
    assert!(c.cmd("DELE 1").starts_with("+OK"));
    c.quit();

    let mut c = Client::login_when_unlocked(server.addr, USER, PASSWORD);
    let after = c.uidl();
    assert_eq!(after.len(), 2);
    assert_eq!(
        after[0].1, uids[1].1,
        "the unique-id of a message never changes"
    );
    assert_eq!(c.retrieve("RETR 1"), wire[1]);
    assert_eq!(c.retrieve("RETR 2"), crlf(&message(3)));
    c.quit();
    server.kill();
}

#[test]
fn serve_refuses_a_database_without_the_schema() {
    let db = pg::fresh_database();
    let fx = Fixture::new();
    let config = postgres_config(&fx, &db.url);
    let (code, stdout, stderr) =
        run_with_input(facteur().args(["serve", "--config"]).arg(&config), b"");
    assert_ne!(code, Some(0), "{stdout}");
    assert!(stderr.contains("facteur db migrate"), "{stderr}");
}

/// Two nodes on one database: a session on node A locks the maildrop for node B; after A dies
/// (kill -9, nothing released), B serves the maildrop once the lease expires, and the dead
/// session's deletions were never applied.
#[test]
fn a_dead_nodes_lease_expires_and_its_deletions_are_lost() {
    let db = pg::fresh_database();
    let fx = Fixture::new();
    let config = migrated(&fx, &db);
    for n in 1..=3 {
        let (code, stderr) = deliver_cli(&config, USER, &message(n));
        assert_eq!(code, Some(0), "{stderr}");
    }
    let node_a = BinServer::start(&config);
    let node_b = BinServer::start(&config);
    let mut a = node_a.login(USER, PASSWORD);
    let uids = a.uidl();
    assert!(a.cmd("DELE 1").starts_with("+OK"));
    assert!(a.cmd("DELE 2").starts_with("+OK"));

    let try_login = || {
        let mut c = Client::connect(node_b.addr);
        assert!(c.cmd(&format!("USER {USER}")).starts_with("+OK"));
        let r = c.cmd(&format!("PASS {PASSWORD}"));
        (r, c)
    };
    let (r, _) = try_login();
    assert!(r.starts_with("-ERR [IN-USE]"), "{r}");

    let killed = std::time::Instant::now();
    node_a.kill();
    drop(a);
    // lease_secs = 5 in the test configuration: B gets the maildrop after at most about that.
    let mut b = loop {
        let (r, c) = try_login();
        if r.starts_with("+OK") {
            break c;
        }
        assert!(r.starts_with("-ERR [IN-USE]"), "{r}");
        assert!(
            killed.elapsed() < std::time::Duration::from_secs(30),
            "the dead node's lease never expired"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(
        killed.elapsed() >= std::time::Duration::from_secs(2),
        "the lease was free long before it expired"
    );
    assert_eq!(b.uidl(), uids, "the dead session deleted nothing");
    assert_eq!(b.retrieve("RETR 3"), crlf(&message(3)));
    b.quit();
    node_b.kill();
}

/// QUIT's `+OK` comes after the lease is released: a client that logs in again at once, on
/// this node or another, is never told `[IN-USE]` by the session it just ended (curl, for one,
/// opens a new connection for each step). With deletions and without.
#[test]
fn quit_releases_the_lease_before_its_answer() {
    let db = pg::fresh_database();
    let fx = Fixture::new();
    let config = migrated(&fx, &db);
    for n in 1..=12 {
        let (code, stderr) = deliver_cli(&config, USER, &message(n));
        assert_eq!(code, Some(0), "{stderr}");
    }
    let nodes = [BinServer::start(&config), BinServer::start(&config)];
    for round in 0..20 {
        let mut c = nodes[round % 2].login(USER, PASSWORD);
        if round % 2 == 0 {
            assert!(c.cmd("DELE 1").starts_with("+OK"));
        }
        c.quit();
        let mut next = Client::connect(nodes[(round + 1) % 2].addr);
        assert!(next.cmd(&format!("USER {USER}")).starts_with("+OK"));
        let r = next.cmd(&format!("PASS {PASSWORD}"));
        assert!(r.starts_with("+OK"), "round {round}: {r}");
        next.quit();
    }
    let mut c = nodes[0].login(USER, PASSWORD);
    assert_eq!(
        c.stat().0,
        2,
        "ten QUITs after DELE 1 applied ten deletions"
    );
    c.quit();
}
