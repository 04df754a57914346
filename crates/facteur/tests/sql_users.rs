//! facteur with `[auth] backend = "sql"`: users in PostgreSQL (the harness of facteur-store's
//! tests: `FACTEUR_TEST_DATABASE_URL`, or a throwaway cluster), mail in Maildirs. The CLI's
//! `user` commands, `deliver`, `check-config`, and real POP3 logins through `facteur serve`,
//! two servers sharing their failed-login penalties.

mod common;
use common::pg;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

/// The fixture's configuration (Maildirs in its folder) with its users in the database at
/// `url` instead of its passwd-file, and these `[limits]` lines.
fn sql_config(fx: &Fixture, url: &str, name: &str, limits: &str) -> PathBuf {
    let text = std::fs::read_to_string(&fx.config_path).expect("read the configuration");
    let passwd = "[auth]\npasswd_file = \"users\"\n";
    assert!(text.contains(passwd), "{text}");
    let text = text
        .replace(
            passwd,
            &format!("[auth]\nbackend = \"sql\"\nurl = {url:?}\n"),
        )
        .replace("[limits]\n", &format!("[limits]\n{limits}"));
    let path = fx.path().join(name);
    std::fs::write(&path, text).expect("write the configuration");
    path
}

use common::{cli_ok as ok, cli_with as cli};

/// A fresh database, migrated by `facteur db migrate`, and a configuration using it.
fn setup(limits: &str) -> (pg::TestDb, Fixture, PathBuf) {
    let db = pg::fresh_database();
    let fx = Fixture::new();
    let config = sql_config(&fx, &db.url, "sql.toml", limits);
    let out = ok(&config, &["db", "migrate"], b"");
    assert!(out.contains("schema version 5 (was 0)"), "{out}");
    (db, fx, config)
}

#[test]
fn user_commands_work_on_the_database() {
    let (_db, fx, config) = setup("");
    // Before any user: the commands see the database, not the fixture's passwd-file.
    assert_eq!(ok(&config, &["user", "list"], b""), "");
    let add = |name: &str, password: &[u8]| {
        cli(
            &config,
            &[
                "user",
                "add",
                name,
                "--scheme",
                "SHA256-CRYPT",
                "--password-stdin",
            ],
            password,
        )
    };
    let (code, out, err) = add("bob", b"b1\n");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("added bob"), "{out}");
    assert_eq!(add("zoe", b"z1\n").0, Some(0));
    assert_eq!(ok(&config, &["user", "list"], b""), "bob\nzoe\n");
    let (code, _, err) = add("bob", b"again\n");
    assert_ne!(code, Some(0));
    assert!(err.contains("already exists in the database"), "{err}");
    // The maildir template still judges the names.
    let (code, _, err) = add("../x", b"p\n");
    assert_ne!(code, Some(0));
    assert!(err.contains("refusing to add"), "{err}");

    let out = ok(
        &config,
        &[
            "user",
            "passwd",
            "bob",
            "--scheme",
            "PLAIN",
            "--password-stdin",
        ],
        b"b2\n",
    );
    assert!(out.contains("changed the password of bob"), "{out}");
    let (code, _, err) = cli(
        &config,
        &["user", "passwd", "nobody", "--password-stdin"],
        b"x\n",
    );
    assert_ne!(code, Some(0));
    assert!(err.contains("no user \"nobody\" in the database"), "{err}");

    let (code, out, err) = cli(&config, &["check-config"], b"");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("2 users in the database"), "{out}");
    assert!(out.contains("schema version 5"), "{out}");
    assert!(!err.contains("warning"), "{err}");
    // A login method offered that some users' schemes cannot serve is warned about.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "backend = \"sql\"\n",
        "backend = \"sql\"\nsasl = [\"PLAIN\", \"SCRAM-SHA-256\"]\n",
    );
    let scram_config = fx.path().join("scram.toml");
    std::fs::write(&scram_config, text).unwrap();
    let (code, out, err) = cli(&scram_config, &["check-config"], b"");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        err.contains("SCRAM-SHA-256 is offered, but 1 of 2 users cannot log in with it"),
        "{err}"
    );
    assert!(err.contains("1 SHA256-CRYPT"), "{err}");

    let out = ok(&config, &["user", "del", "zoe"], b"");
    assert!(out.contains("removed zoe"), "{out}");
    assert_eq!(ok(&config, &["user", "list"], b""), "bob\n");
    assert_ne!(cli(&config, &["user", "del", "zoe"], b"").0, Some(0));
    // The fixture's passwd-file was never touched.
    let users = std::fs::read_to_string(fx.path().join("users")).unwrap();
    assert!(!users.contains("bob"), "{users}");
}

#[test]
fn commands_on_a_database_without_the_schema_say_what_to_do() {
    let db = pg::fresh_database();
    let fx = Fixture::new();
    let config = sql_config(&fx, &db.url, "sql.toml", "");
    for args in [&["user", "list"][..], &["check-config"]] {
        let (code, _, err) = cli(&config, args, b"");
        assert_ne!(code, Some(0), "{args:?}");
        assert!(err.contains("facteur db migrate"), "{args:?}: {err}");
    }
}

/// A real POP3 login through `facteur serve` with users in SQL and mail in Maildirs; a password
/// changed with the CLI is in force at the next login, despite the server's cache.
#[test]
fn pop3_logins_with_sql_users() {
    let (db, _fx, config) = setup("");
    ok(
        &config,
        &[
            "user",
            "add",
            "dora",
            "--scheme",
            "SHA512-CRYPT",
            "--password-stdin",
        ],
        b"first\n",
    );
    // `facteur deliver` finds the user in the database.
    let (code, _, err) = cli(
        &config,
        &["deliver", "dora"],
        b"Subject: hello\r\n\r\nfrom SQL\r\n",
    );
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = cli(&config, &["deliver", "nobody"], b"x\r\n");
    assert_eq!(code, Some(67), "{err}");

    let server = BinServer::start(&config);
    let mut c = server.login("dora", "first");
    assert_eq!(c.stat().0, 1);
    let body = c.retrieve("RETR 1");
    assert!(String::from_utf8_lossy(&body).contains("from SQL"));
    c.quit();
    // Cached now; a wrong password still fails.
    server.login("dora", "first").quit();
    let mut c = Client::connect(server.addr);
    c.cmd("USER dora");
    assert!(c.cmd("PASS wrong").starts_with("-ERR"));
    // The fixture's passwd-file users do not exist for this server.
    let mut c = Client::connect(server.addr);
    c.cmd(&format!("USER {USER}"));
    assert!(c.cmd(&format!("PASS {PASSWORD}")).starts_with("-ERR"));

    ok(
        &config,
        &[
            "user",
            "passwd",
            "dora",
            "--scheme",
            "SHA512-CRYPT",
            "--password-stdin",
        ],
        b"second\n",
    );
    let mut c = Client::connect(server.addr);
    c.cmd("USER dora");
    let r = c.cmd("PASS first");
    assert!(
        r.starts_with("-ERR"),
        "the old password after a change: {r}"
    );
    server.login("dora", "second").quit();
    let log = server.log();
    assert!(log.contains("backend = \"sql\""), "{log}");

    // A database that cannot answer is a temporary failure of the server, not a wrong password.
    execute(&db.url, "ALTER TABLE users RENAME TO users_elsewhere");
    let mut c = Client::connect(server.addr);
    c.cmd("USER dora");
    let r = c.cmd("PASS second");
    assert!(r.starts_with("-ERR [SYS/TEMP]"), "{r}");
    let log = server.wait_for_log("the user database is unavailable", 1);
    assert!(
        log.contains("cannot read the user from the database"),
        "{log}"
    );
    execute(&db.url, "ALTER TABLE users_elsewhere RENAME TO users");
    server.login("dora", "second").quit();
}

/// App passwords of SQL users: added, listed and revoked by the CLI on the database, taken by
/// USER/PASS on two servers sharing it; a revocation is in force at the next login on both,
/// despite their caches; the last use is in the database.
#[test]
fn app_passwords_in_the_database() {
    let (db, _fx, config) = setup("");
    ok(
        &config,
        &[
            "user",
            "add",
            "dora",
            "--scheme",
            "PLAIN",
            "--password-stdin",
        ],
        b"main\n",
    );
    ok(
        &config,
        &[
            "user",
            "add",
            "eve",
            "--scheme",
            "PLAIN",
            "--password-stdin",
        ],
        b"evepw\n",
    );
    let phone = add_app_password(&config, "dora", "phone", "SHA256-CRYPT");
    let tablet = add_app_password(&config, "dora", "tablet", "ARGON2ID");
    let (code, _, err) = cli(
        &config,
        &["user", "app-password", "add", "dora", "--label", "phone"],
        b"",
    );
    assert_ne!(code, Some(0));
    assert!(
        err.contains("already has an app password labelled"),
        "{err}"
    );
    let (code, _, err) = cli(
        &config,
        &["user", "app-password", "add", "nobody", "--label", "phone"],
        b"",
    );
    assert_ne!(code, Some(0));
    assert!(err.contains("no user \"nobody\" in the database"), "{err}");
    assert!(listed_app_password(&config, "dora", "tablet")
        .expect("tablet listed")
        .ends_with("never"));

    let one = BinServer::start(&config);
    let two = BinServer::start(&config);
    for server in [&one, &two] {
        assert!(user_pass(server.addr, "dora", &phone));
        assert!(user_pass(server.addr, "dora", &tablet));
        assert!(user_pass(server.addr, "dora", "main"));
        assert!(!user_pass(server.addr, "eve", &phone));
    }
    one.wait_for_log("app_password=\"phone\"", 1);
    let used = wait_app_password_used(&config, "dora", "phone");
    assert!(used.matches("UTC").count() == 2, "{used}");

    ok(
        &config,
        &["user", "app-password", "revoke", "dora", "phone"],
        b"",
    );
    for server in [&one, &two] {
        assert!(!user_pass(server.addr, "dora", &phone));
        assert!(user_pass(server.addr, "dora", &tablet));
        assert!(user_pass(server.addr, "dora", "main"));
    }
    assert_eq!(listed_app_password(&config, "dora", "phone"), None);

    // Removing the user removes theirs (ON DELETE CASCADE).
    ok(&config, &["user", "del", "dora"], b"");
    execute(
        &db.url,
        "DO $$ BEGIN IF EXISTS (SELECT 1 FROM app_passwords) THEN \
         RAISE EXCEPTION 'app passwords left'; END IF; END $$",
    );
}

/// LOGIN-DELAY and EXPIRE of SQL users: the columns `login_delay_secs` and `expire` replace
/// the server's values for their user (CAPA says `USER` before login once a user has one); a
/// value that cannot be used refuses that user's maildrop rather than guess.
#[test]
fn login_delay_and_expire_from_the_users_columns() {
    let (db, _fx, config) = setup("");
    for user in ["ed", "flo"] {
        ok(
            &config,
            &["user", "add", user, "--scheme", "PLAIN", "--password-stdin"],
            b"pw\n",
        );
        for i in 0..2 {
            let (code, _, err) = cli(
                &config,
                &["deliver", user],
                format!("Subject: {i}\r\n\r\nbody\r\n").as_bytes(),
            );
            assert_eq!(code, Some(0), "{err}");
        }
    }
    execute(
        &db.url,
        "UPDATE users SET expire = '0', login_delay_secs = 3600 WHERE name = 'ed'",
    );
    let server = BinServer::start(&config);
    let policy_caps = |c: &mut Client| -> Vec<String> {
        let (status, body) = c.cmd_multi("CAPA");
        assert!(status.starts_with("+OK"), "{status}");
        String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| l.starts_with("LOGIN-DELAY") || l.starts_with("EXPIRE"))
            .map(str::to_owned)
            .collect()
    };
    let mut c = Client::connect(server.addr);
    assert_eq!(
        policy_caps(&mut c),
        ["LOGIN-DELAY 0 USER", "EXPIRE NEVER USER"]
    );
    let mut c = server.login("ed", "pw");
    assert_eq!(policy_caps(&mut c), ["LOGIN-DELAY 3600", "EXPIRE 0"]);
    c.retrieve("RETR 2");
    assert_eq!(
        c.cmd("QUIT"),
        "+OK signing off (1 message deleted, 1 left)\r\n"
    );
    // ed's own delay: refused now, although the server has none.
    let mut c = Client::connect(server.addr);
    c.cmd("USER ed");
    let r = c.cmd("PASS pw");
    assert!(r.starts_with("-ERR [LOGIN-DELAY]"), "{r}");
    // flo has the server's values: nothing announced, nothing deleted.
    let mut c = server.login("flo", "pw");
    assert_eq!(policy_caps(&mut c), Vec::<String>::new());
    c.retrieve("RETR 1");
    assert_eq!(c.cmd("QUIT"), "+OK signing off (2 messages left)\r\n");
    // A value the server cannot use: that user's maildrop is refused, permanently.
    execute(
        &db.url,
        "UPDATE users SET expire = 'soon' WHERE name = 'flo'",
    );
    let mut c = Client::connect(server.addr);
    c.cmd("USER flo");
    let r = c.cmd("PASS pw");
    assert!(r.starts_with("-ERR [SYS/PERM]"), "{r}");
    server.wait_for_log("the expire field of the user database is \"soon\"", 1);
}

/// Runs one SQL statement on the test's database.
fn execute(url: &str, statement: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect to the test database");
        let driver = tokio::spawn(conn);
        client.batch_execute(statement).await.expect(statement);
        drop(client);
        let _ = driver.await;
    });
}

/// Guesses spread over two servers are counted together: failures on A make B's next failure
/// from the same source wait as long as a fourth failure in a row.
#[test]
fn two_servers_share_failed_login_penalties() {
    let (_db, fx, config) = setup("");
    ok(
        &config,
        &[
            "user",
            "add",
            "erin",
            "--scheme",
            "PLAIN",
            "--password-stdin",
        ],
        b"pw\n",
    );
    // A 200 ms first delay (the fixture's 50 ms replaced), doubling at each failure.
    let limits = "failed_login_delay_ms = 200\n";
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace("failed_login_delay_ms = 50\n", limits);
    let config_a = fx.path().join("a.toml");
    let config_b = fx.path().join("b.toml");
    std::fs::write(&config_a, &text).unwrap();
    std::fs::write(&config_b, &text).unwrap();
    let a = BinServer::start(&config_a);
    let b = BinServer::start(&config_b);
    let fail_once = |addr, user: &str| {
        let mut c = Client::connect(addr);
        c.cmd(&format!("USER {user}"));
        let started = Instant::now();
        let r = c.cmd("PASS wrong");
        assert!(r.starts_with("-ERR"), "{r}");
        started.elapsed()
    };
    // Three failures on A: 200, 400, 800 ms.
    for _ in 0..3 {
        fail_once(a.addr, "erin");
    }
    // B has seen none itself; its answer is the fourth failure's: 1.6 s.
    let waited = fail_once(b.addr, "someone-else");
    assert!(
        waited >= Duration::from_millis(1600),
        "B answered a failure from the same source after {waited:?}"
    );
    // A right password is never delayed by the penalties: it goes through on either server.
    b.login("erin", "pw").quit();
}

/// Every login method against SQL users, with facteur's own POP3 client (`facteur fetch`'s):
/// SCRAM-SHA-256 for a user stored with SCRAM keys and for a `{PLAIN}` one, CRAM-MD5 and APOP for
/// the `{PLAIN}` one, PLAIN and USER/PASS for both; a wrong password fails with each.
#[test]
fn every_login_method_with_sql_users() {
    use facteur_fetch::auth::AuthMethod;
    use facteur_fetch::config::{Account, DeletePolicy, DestinationSpec, Limits, PasswordSource};
    use facteur_fetch::fetch::{fetch_account, RunOptions, EXIT_AUTH};
    use facteur_fetch::{Security, Target};
    use facteur_proto::Secret;

    let (_db, fx, config) = setup("");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "backend = \"sql\"\n",
        "backend = \"sql\"\nsasl = [\"PLAIN\", \"CRAM-MD5\", \"SCRAM-SHA-256\"]\napop = true\n",
    );
    std::fs::write(&config, text).unwrap();
    for (user, scheme) in [("pat", "PLAIN"), ("sam", "SCRAM-SHA-256")] {
        ok(
            &config,
            &["user", "add", user, "--scheme", scheme, "--password-stdin"],
            b"pw\n",
        );
    }
    let server = BinServer::start(&config);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bar = indicatif::ProgressBar::hidden();
    let run = |user: &str, method: AuthMethod, password: &str| {
        let local = fx.path().join(format!("fetched-{user}-{method}"));
        let account = Account {
            identity: None,
            name: format!("{user}-{method}"),
            target: Target {
                host: server.addr.ip().to_string(),
                port: server.addr.port(),
                security: Security::Plaintext,
                ca_file: None,
            },
            user: user.into(),
            auth: method,
            password: PasswordSource::Inline(Secret::new(password.into())),
            destination: DestinationSpec::Maildir(local.join("Maildir")),
            policy: DeletePolicy::Keep,
            limits: Limits::default(),
            timeout: Duration::from_secs(30),
            maildir_sync: Default::default(),
        };
        let opts = RunOptions {
            state_dir: local.join("state"),
            dry_run: false,
            now: None,
            fault: None,
            trace: None,
        };
        rt.block_on(fetch_account(
            &account,
            &Secret::new(password.into()),
            &opts,
            &bar,
        ))
    };
    let cases = [
        ("pat", AuthMethod::ScramSha256),
        ("pat", AuthMethod::CramMd5),
        ("pat", AuthMethod::Apop),
        ("pat", AuthMethod::Plain),
        ("pat", AuthMethod::User),
        ("sam", AuthMethod::ScramSha256),
        ("sam", AuthMethod::Plain),
    ];
    for (user, method) in cases {
        let report = run(user, method, "pw").unwrap_or_else(|e| panic!("{user} {method}: {e}"));
        assert_eq!(report.method, Some(method), "{user}");
    }
    for (user, method) in cases {
        let e = run(user, method, "wrong").unwrap_err();
        assert_eq!(e.exit_code(), EXIT_AUTH, "{user} {method}: {e}");
    }
}

/// Users and mail in one PostgreSQL database: `[store] backend = "postgresql"` with
/// `[auth] backend = "sql"` (no `[auth] url`: the store's database).
#[test]
fn users_and_mail_in_one_database() {
    let db = pg::fresh_database();
    let fx = Fixture::new();
    let text = std::fs::read_to_string(&fx.config_path).unwrap();
    let text = text
        .replace(
            "[auth]\npasswd_file = \"users\"\n",
            "[auth]\nbackend = \"sql\"\n",
        )
        .replace(
            "[store]\nmaildir = \"mail/%u/Maildir\"\n",
            &format!(
                "[store]\nbackend = \"postgresql\"\nurl = {:?}\nlease_secs = 5\n",
                db.url
            ),
        );
    let config = fx.path().join("one-db.toml");
    std::fs::write(&config, text).unwrap();
    let (out, _, server) = sql_users_and_mail_round_trip(&config, "users and mail");
    assert!(out.contains("1 user in the database"), "{out}");
    assert!(out.contains("store postgresql"), "{out}");
    let mut c = Client::connect(server.addr);
    c.cmd("USER gus");
    assert!(c.cmd("PASS wrong").starts_with("-ERR [AUTH]"));
}
