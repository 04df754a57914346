//! `[auth] backend = "sql"` against a real PostgreSQL (facteur-store's harness:
//! `FACTEUR_TEST_DATABASE_URL`, or a throwaway cluster): the users' administration, logins
//! through [`SqlUsers`], the cache across nodes, and failed-login penalties shared by nodes.

#![allow(
    clippy::unwrap_used,
    reason = "a test's helpers may panic: that is the test failing"
)]

#[path = "../../facteur-store/tests/support/pg.rs"]
mod pg;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use facteur_auth::sql::{self, Cleaned, SharedPenalties, SharedPenaltiesConfig, SqlUsers};
use facteur_auth::{hash_password, AuthError, AuthOutcome, Authenticator, FailureReason, Scheme};

/// A database at the current schema, a runtime for its queries, and a pool.
struct Env {
    rt: tokio::runtime::Runtime,
    db: pg::TestDb,
}

impl Env {
    fn new() -> Self {
        let db = pg::fresh_database();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(facteur_store::postgres::migrate_url(&db.url))
            .unwrap();
        Env { rt, db }
    }

    fn pool(&self) -> sql::Pool {
        let _guard = self.rt.enter();
        sql::pool(&self.db.url, 4).unwrap()
    }

    /// Another node: its own pool and its own [`SqlUsers`], with a cache of verifications.
    fn node(&self) -> SqlUsers {
        let pool = self.pool();
        self.rt
            .block_on(SqlUsers::open(pool))
            .unwrap()
            .with_verified_cache(Duration::from_secs(3600), 100)
    }

    fn penalties(&self, forget_after: Duration, max_rows: u64) -> Arc<SharedPenalties> {
        let pool = self.pool();
        Arc::new(
            self.rt
                .block_on(SharedPenalties::open(
                    pool,
                    SharedPenaltiesConfig {
                        base: Duration::from_millis(100),
                        cap: Duration::from_secs(10),
                        forget_after,
                        max_rows,
                        clean_every: Duration::from_secs(3600),
                    },
                ))
                .unwrap(),
        )
    }

    fn sql(&self, statement: &str) -> u64 {
        let url = self.db.url.clone();
        let statement = statement.to_owned();
        self.rt.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            let driver = tokio::spawn(conn);
            let n = client.execute(&statement, &[]).await.unwrap();
            drop(client);
            let _ = driver.await;
            n
        })
    }

    fn count(&self, table: &str) -> i64 {
        let pool = self.pool();
        let table = table.to_owned();
        self.rt.block_on(async move {
            let c = pool.get().await.unwrap();
            c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await
                .unwrap()
                .get(0)
        })
    }
}

fn sha256(password: &str) -> String {
    hash_password(Scheme::Sha256Crypt, password.as_bytes()).unwrap()
}

fn names(env: &Env, pool: &sql::Pool) -> Vec<String> {
    let mut out = Vec::new();
    env.rt
        .block_on(sql::list_users(pool, |n| out.push(n.to_string())))
        .unwrap();
    out
}

#[test]
fn add_list_passwd_del() {
    let env = Env::new();
    let pool = env.pool();
    let rt = &env.rt;
    assert!(names(&env, &pool).is_empty());
    rt.block_on(sql::add_user(&pool, "bob", &sha256("b1")))
        .unwrap();
    rt.block_on(sql::add_user(&pool, "alice@example.org", "{PLAIN}a1"))
        .unwrap();
    assert_eq!(names(&env, &pool), ["alice@example.org", "bob"]);
    assert_eq!(rt.block_on(sql::count_users(&pool)).unwrap(), 2);
    // The passwd-file's rules: no duplicate, a valid name, a stored password that parses.
    let e = rt
        .block_on(sql::add_user(&pool, "bob", "{PLAIN}x"))
        .unwrap_err();
    assert!(matches!(e, AuthError::SqlUserExists { .. }), "{e}");
    for (user, stored) in [("a b", "{PLAIN}x"), ("", "{PLAIN}x"), ("#c", "{PLAIN}x")] {
        let e = rt.block_on(sql::add_user(&pool, user, stored)).unwrap_err();
        assert!(
            matches!(e, AuthError::InvalidUserName { .. }),
            "{user}: {e}"
        );
    }
    let e = rt
        .block_on(sql::add_user(&pool, "carol", "{SSHA}c2VjcmV0"))
        .unwrap_err();
    assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
    assert_eq!(names(&env, &pool).len(), 2);

    let bob = rt.block_on(sql::find_user(&pool, "bob")).unwrap().unwrap();
    assert_eq!(
        (bob.generation, bob.password.scheme()),
        (1, Scheme::Sha256Crypt)
    );
    assert!(bob.password.verify(b"b1"));
    rt.block_on(sql::set_password(&pool, "bob", "{PLAIN}b2"))
        .unwrap();
    let bob = rt.block_on(sql::find_user(&pool, "bob")).unwrap().unwrap();
    assert_eq!((bob.generation, bob.password.scheme()), (2, Scheme::Plain));
    assert!(bob.password.verify(b"b2") && !bob.password.verify(b"b1"));
    let e = rt
        .block_on(sql::set_password(&pool, "nobody", "{PLAIN}x"))
        .unwrap_err();
    assert!(matches!(e, AuthError::SqlNoSuchUser { .. }), "{e}");

    rt.block_on(sql::del_user(&pool, "bob")).unwrap();
    assert_eq!(names(&env, &pool), ["alice@example.org"]);
    let e = rt.block_on(sql::del_user(&pool, "bob")).unwrap_err();
    assert!(matches!(e, AuthError::SqlNoSuchUser { .. }), "{e}");
    assert!(rt.block_on(sql::find_user(&pool, "bob")).unwrap().is_none());
}

#[test]
fn list_pages_through_many_users() {
    let env = Env::new();
    let pool = env.pool();
    env.sql(
        "INSERT INTO users (name, password, scheme) \
         SELECT 'u' || lpad(i::text, 5, '0'), '{PLAIN}x', 'PLAIN' FROM generate_series(1, 2500) i",
    );
    let listed = names(&env, &pool);
    assert_eq!(listed.len(), 2500);
    assert_eq!(listed.first().map(String::as_str), Some("u00001"));
    assert_eq!(listed.last().map(String::as_str), Some("u02500"));
    assert!(listed.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn logins_through_sql_users() {
    let env = Env::new();
    let pool = env.pool();
    let rt = &env.rt;
    rt.block_on(sql::add_user(&pool, "alice", &sha256("secret")))
        .unwrap();
    rt.block_on(sql::add_user(&pool, "pat", "{PLAIN}tanstaaf"))
        .unwrap();
    env.sql("UPDATE users SET uid = 5000, gid = 5001, home = '/home/alice' WHERE name = 'alice'");
    let users = env.node();
    match users.verify_password("alice", b"secret") {
        AuthOutcome::Success(a) => {
            assert_eq!(a.user, "alice");
            assert_eq!(a.home.as_deref(), Some("/home/alice"));
            let owner = a.owner.unwrap();
            assert_eq!((owner.uid, owner.gid), (Some(5000), Some(5001)));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        users.check_password("alice", b"wrong"),
        Err(FailureReason::WrongPassword)
    );
    assert_eq!(
        users.check_password("Alice", b"secret"),
        Err(FailureReason::UnknownUser)
    );
    assert_eq!(
        users.check_password("nobody", b"x"),
        Err(FailureReason::UnknownUser)
    );
    // APOP and CRAM-MD5 for the {PLAIN} user; a crypt hash cannot serve them.
    assert!(users.apop_possible() && users.cram_md5_possible() && users.scram_possible());
    let ts = "<1.2@host>";
    let digest = md5_hex(&format!("{ts}tanstaaf"));
    assert!(matches!(
        users.verify_apop("pat", ts, &digest),
        AuthOutcome::Success(_)
    ));
    assert_eq!(
        users.check_apop("pat", ts, &md5_hex("x")),
        Err(FailureReason::WrongPassword)
    );
    assert_eq!(
        users.check_apop("alice", ts, &digest),
        Err(FailureReason::MethodImpossible("SHA256-CRYPT"))
    );
    // CRAM-MD5: the HMAC-MD5 of the challenge under the {PLAIN} password.
    let challenge = b"<7.8@host>";
    let cram = |key: &[u8]| {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<md5::Md5>::new_from_slice(key).unwrap();
        mac.update(challenge);
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    assert!(matches!(
        users.verify_cram_md5("pat", challenge, &cram(b"tanstaaf")),
        AuthOutcome::Success(_)
    ));
    assert_eq!(
        users.check_cram_md5("pat", challenge, &cram(b"other")),
        Err(FailureReason::WrongPassword)
    );
    assert_eq!(
        users.check_cram_md5("alice", challenge, &cram(b"secret")),
        Err(FailureReason::MethodImpossible("SHA256-CRYPT"))
    );
    assert_eq!(
        users.check_cram_md5("nobody", challenge, &cram(b"x")),
        Err(FailureReason::UnknownUser)
    );
    assert!(users.account("alice").is_some());
    assert!(users.account("nobody").is_none());
    // SCRAM: real keys for pat, made-up ones for the others, the same at every attempt.
    let pat = users.scram_credentials("pat");
    assert!(pat.account().is_some());
    let made_up = users.scram_credentials("alice");
    assert!(made_up.account().is_none());
    assert_eq!(made_up.salt(), users.scram_credentials("alice").salt());
    // Every unknown user was hashed against the dummy: the same work as a known one.
    assert_eq!(users.slow_checks(), 4);
}

/// Unknown users are checked against a dummy of the slowest scheme in use: of a sample of the
/// users at start (not a fixed scheme, which would make unknown users slower or faster than all
/// the real ones), raised when a slower user logs in.
#[test]
fn the_dummy_hash_follows_the_slowest_users() {
    let env = Env::new();
    let pool = env.pool();
    assert_eq!(env.node().dummy_scheme(), Scheme::Argon2id);
    env.rt
        .block_on(sql::add_user(&pool, "s", &sha256("x")))
        .unwrap();
    env.rt
        .block_on(sql::add_user(&pool, "p", "{PLAIN}x"))
        .unwrap();
    let node = env.node();
    assert_eq!(node.dummy_scheme(), Scheme::Sha256Crypt);
    let bcrypt = hash_password(Scheme::BlfCrypt, b"b").unwrap();
    env.rt.block_on(sql::add_user(&pool, "b", &bcrypt)).unwrap();
    assert_eq!(node.dummy_scheme(), Scheme::Sha256Crypt);
    assert!(matches!(
        node.verify_password("b", b"b"),
        AuthOutcome::Success(_)
    ));
    assert_eq!(node.dummy_scheme(), Scheme::BlfCrypt);
    // A faster user never lowers it.
    assert!(matches!(
        node.verify_password("p", b"x"),
        AuthOutcome::Success(_)
    ));
    assert_eq!(node.dummy_scheme(), Scheme::BlfCrypt);
    assert_eq!(env.node().dummy_scheme(), Scheme::BlfCrypt);
}

#[test]
fn a_database_with_crypt_users_only_offers_no_apop() {
    let env = Env::new();
    let pool = env.pool();
    env.rt
        .block_on(sql::add_user(&pool, "alice", &sha256("secret")))
        .unwrap();
    let users = env.node();
    assert!(!users.apop_possible() && !users.cram_md5_possible() && !users.scram_possible());
}

/// A password changed through another node (or `facteur user passwd`) is noticed at the very
/// next login of every node, whatever their cache remembers.
#[test]
fn a_password_changed_on_another_node_is_noticed_despite_the_cache() {
    let env = Env::new();
    let pool = env.pool();
    let rt = &env.rt;
    rt.block_on(sql::add_user(&pool, "alice", &sha256("old")))
        .unwrap();
    let a = env.node();
    let b = env.node();
    for _ in 0..3 {
        assert!(matches!(
            a.verify_password("alice", b"old"),
            AuthOutcome::Success(_)
        ));
    }
    assert_eq!(
        a.slow_checks(),
        1,
        "the cache serves the second and third logins"
    );
    // Node B (or the CLI) changes the password.
    rt.block_on(sql::set_password(b.pool(), "alice", &sha256("new")))
        .unwrap();
    assert_eq!(
        a.check_password("alice", b"old"),
        Err(FailureReason::WrongPassword)
    );
    assert!(matches!(
        a.verify_password("alice", b"new"),
        AuthOutcome::Success(_)
    ));
    assert_eq!(a.slow_checks(), 3);
    assert!(matches!(
        a.verify_password("alice", b"new"),
        AuthOutcome::Success(_)
    ));
    assert_eq!(a.slow_checks(), 3);
    // Even the same stored string set again moves the generation on: re-verified.
    let stored = rt
        .block_on(sql::find_user(&pool, "alice"))
        .unwrap()
        .unwrap();
    let field = env.rt.block_on(async {
        let c = pool.get().await.unwrap();
        c.query_one("SELECT password FROM users WHERE name = 'alice'", &[])
            .await
            .unwrap()
            .get::<_, String>(0)
    });
    rt.block_on(sql::set_password(&pool, "alice", &field))
        .unwrap();
    let after = rt
        .block_on(sql::find_user(&pool, "alice"))
        .unwrap()
        .unwrap();
    assert_eq!(after.generation, stored.generation + 1);
    assert!(matches!(
        a.verify_password("alice", b"new"),
        AuthOutcome::Success(_)
    ));
    assert_eq!(a.slow_checks(), 4);
    // A user removed elsewhere cannot log in on a remembered success.
    rt.block_on(sql::del_user(&pool, "alice")).unwrap();
    assert_eq!(
        a.check_password("alice", b"new"),
        Err(FailureReason::UnknownUser)
    );
}

#[test]
fn sql_users_refuse_to_block_an_async_task() {
    let env = Env::new();
    let users = Arc::new(env.node());
    let u = users.clone();
    let r = env
        .rt
        .block_on(async move { u.check_password("alice", b"x") });
    assert_eq!(r, Err(FailureReason::Unavailable));
}

/// A database that cannot answer is no verdict on the credentials: Unavailable, whatever the
/// method, and no hash work spent.
#[test]
fn a_failing_database_is_unavailable_not_a_wrong_password() {
    let env = Env::new();
    let pool = env.pool();
    env.rt
        .block_on(sql::add_user(&pool, "pat", "{PLAIN}tanstaaf"))
        .unwrap();
    let users = env.node();
    assert!(matches!(
        users.verify_password("pat", b"tanstaaf"),
        AuthOutcome::Success(_)
    ));
    env.sql("ALTER TABLE users RENAME TO users_elsewhere");
    assert_eq!(
        users.check_password("pat", b"tanstaaf"),
        Err(FailureReason::Unavailable)
    );
    assert_eq!(
        users.check_apop("pat", "<1@h>", &md5_hex("<1@h>tanstaaf")),
        Err(FailureReason::Unavailable)
    );
    assert!(users.account("pat").is_none());
    // LMTP's RCPT: "try again later", never "no such user" (which would bounce the mail).
    assert_eq!(
        users.recipient("pat").map(|a| a.map(|a| a.user)),
        Err(FailureReason::Unavailable)
    );
    assert_eq!(users.slow_checks(), 1);
    env.sql("ALTER TABLE users_elsewhere RENAME TO users");
    assert_eq!(
        users.recipient("pat").map(|a| a.map(|a| a.user)),
        Ok(Some("pat".to_string()))
    );
    assert_eq!(users.recipient("nobody").map(|a| a.is_none()), Ok(true));
    assert!(matches!(
        users.verify_password("pat", b"tanstaaf"),
        AuthOutcome::Success(_)
    ));
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Failures counted by one node delay the next failure answered by another.
#[test]
fn penalties_are_shared_by_nodes() {
    let env = Env::new();
    let a = env.penalties(Duration::from_secs(600), 1000);
    let b = env.penalties(Duration::from_secs(600), 1000);
    let rt = &env.rt;
    let attacker = ip("192.0.2.7");
    let ms = |d: Duration| d.as_millis();
    assert_eq!(ms(rt.block_on(a.failure(attacker, Some("bob")))), 100);
    assert_eq!(ms(rt.block_on(a.failure(attacker, Some("bob")))), 200);
    assert_eq!(ms(rt.block_on(a.failure(attacker, None))), 400);
    // Node B has seen nothing itself, yet its next failure from the same source is the 4th.
    assert_eq!(ms(rt.block_on(b.failure(attacker, None))), 800);
    // The user name is counted across sources and nodes too (the same keyed hash on both).
    assert_eq!(
        ms(rt.block_on(b.failure(ip("198.51.100.1"), Some("bob")))),
        400
    );
    // A success anywhere forgets the user name's failures, not the source's.
    rt.block_on(a.success("bob"));
    assert_eq!(
        ms(rt.block_on(b.failure(ip("203.0.113.1"), Some("bob")))),
        100
    );
    assert_eq!(ms(rt.block_on(b.failure(attacker, Some("carol")))), 1600);
    // An IPv6 source counts per /64; the cap holds.
    let v6 = ip("2001:db8:1:2::1");
    for _ in 0..10 {
        rt.block_on(a.failure(v6, None));
    }
    assert_eq!(
        ms(rt.block_on(b.failure(ip("2001:db8:1:2:ffff::9"), None))),
        10_000
    );
    // No user name is stored: only the keys' bytes.
    let names = env.rt.block_on(async {
        let pool = env.pool();
        let c = pool.get().await.unwrap();
        c.query(
            "SELECT 1 FROM login_penalties WHERE position('bob'::bytea in key) > 0",
            &[],
        )
        .await
        .unwrap()
        .len()
    });
    assert_eq!(names, 0);
}

#[test]
fn expired_penalties_are_forgotten_and_cleaned() {
    let env = Env::new();
    let p = env.penalties(Duration::from_secs(60), 1000);
    let rt = &env.rt;
    for i in 0..5 {
        rt.block_on(p.failure(ip(&format!("192.0.2.{i}")), Some("bob")));
    }
    assert_eq!(env.count("login_penalties"), 6);
    // Two sources and the user name had their last failure long ago.
    assert_eq!(
        env.sql(
            "UPDATE login_penalties SET last_failure = now() - interval '61 seconds' \
             WHERE key IN (SELECT key FROM login_penalties ORDER BY key DESC LIMIT 1) \
                OR key IN (SELECT key FROM login_penalties ORDER BY key LIMIT 2)"
        ),
        3
    );
    // A forgotten count starts again from one, before any cleaning.
    assert_eq!(
        rt.block_on(p.failure(ip("192.0.2.0"), None)).as_millis(),
        100
    );
    let cleaned = rt.block_on(p.clean()).unwrap();
    assert_eq!(
        cleaned,
        Cleaned {
            expired: 2,
            evicted: 0
        }
    );
    assert_eq!(env.count("login_penalties"), 4);
    assert_eq!(rt.block_on(p.clean()).unwrap(), Cleaned::default());
}

#[test]
fn the_penalty_table_is_capped_by_evicting_the_oldest() {
    let env = Env::new();
    let p = env.penalties(Duration::from_secs(600), 10);
    env.sql(
        "INSERT INTO login_penalties (key, failures, last_failure) \
         SELECT decode('01c000020' || to_hex(i), 'hex'), 1, now() - i * interval '1 second' \
         FROM generate_series(0, 14) i",
    );
    assert_eq!(env.count("login_penalties"), 15);
    let cleaned = env.rt.block_on(p.clean()).unwrap();
    assert_eq!(
        cleaned,
        Cleaned {
            expired: 0,
            evicted: 5
        }
    );
    assert_eq!(env.count("login_penalties"), 10);
    // The newest stayed: the five oldest (i = 10..14) went.
    let oldest_left: f64 = env.rt.block_on(async {
        let pool = env.pool();
        let c = pool.get().await.unwrap();
        c.query_one(
            "SELECT extract(epoch FROM now() - min(last_failure))::float8 FROM login_penalties",
            &[],
        )
        .await
        .unwrap()
        .get(0)
    });
    assert!(oldest_left < 10.0, "{oldest_left}");
    // A node that records max_rows / 8 failures cleans by itself.
    for i in 0..20 {
        env.rt
            .block_on(p.failure(ip(&format!("198.51.100.{i}")), None));
    }
    assert!(env.count("login_penalties") <= 10);
}

fn md5_hex(s: &str) -> String {
    use md5::Digest;
    let mut h = md5::Md5::new();
    h.update(s.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
