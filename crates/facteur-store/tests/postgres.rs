//! The PostgreSQL store against a real server (see `support::pg`): never a mock.

#![allow(
    clippy::unwrap_used,
    reason = "a test's helpers may panic: that is the test failing"
)]

mod support;

use support::pg;

/// Runs `f` on a connection to `url`, on a small runtime of the test's own.
fn with_client<T>(url: &str, f: impl AsyncFnOnce(&tokio_postgres::Client) -> T) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let conn = tokio::spawn(connection);
        let r = f(&client).await;
        drop(client);
        let _ = conn.await;
        r
    })
}

#[test]
fn each_test_gets_a_fresh_empty_database() {
    let a = pg::fresh_database();
    let b = pg::fresh_database();
    assert_ne!(a.url, b.url);
    with_client(&a.url, async |c| {
        c.batch_execute("CREATE TABLE t (x int8); INSERT INTO t VALUES (7)")
            .await
            .unwrap();
    });
    // The other database does not see a's table.
    let tables: i64 = with_client(&b.url, async |c| {
        c.query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 't'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
    });
    assert_eq!(tables, 0);
    let x: i64 = with_client(&a.url, async |c| {
        c.query_one("SELECT x FROM t", &[]).await.unwrap().get(0)
    });
    assert_eq!(x, 7);
}

mod schema {
    use super::*;
    use facteur_store::postgres::{self, Migrated, SCHEMA_VERSION};
    use facteur_store::StoreError;

    fn migrate(url: &str) -> Result<Migrated, StoreError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(postgres::migrate_url(url))
    }

    fn check(url: &str) -> Result<(), StoreError> {
        with_client(url, async |c| postgres::check_schema(c).await)
    }

    #[test]
    fn migrate_applies_once_then_has_nothing_to_do() {
        let db = pg::fresh_database();
        let err = check(&db.url).unwrap_err();
        assert!(
            matches!(err, StoreError::Schema { found: 0, expected } if expected == SCHEMA_VERSION),
            "{err}"
        );
        assert!(err.to_string().contains("facteur db migrate"), "{err}");
        assert_eq!(
            migrate(&db.url).unwrap(),
            Migrated {
                from: 0,
                to: SCHEMA_VERSION
            }
        );
        check(&db.url).unwrap();
        assert_eq!(
            migrate(&db.url).unwrap(),
            Migrated {
                from: SCHEMA_VERSION,
                to: SCHEMA_VERSION
            }
        );
        let tables: Vec<String> = with_client(&db.url, async |c| {
            c.query(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = current_schema() ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
        });
        assert_eq!(
            tables,
            [
                "app_passwords",
                "leases",
                "login_penalties",
                "login_penalty_key",
                "maildrops",
                "message_chunks",
                "messages",
                "migrated_messages",
                "schema_version",
                "users"
            ]
        );
    }

    #[test]
    fn a_newer_or_older_schema_is_refused() {
        let db = pg::fresh_database();
        migrate(&db.url).unwrap();
        with_client(&db.url, async |c| {
            c.execute(
                "INSERT INTO schema_version (version) VALUES ($1)",
                &[&(SCHEMA_VERSION + 1)],
            )
            .await
            .unwrap()
        });
        let err = check(&db.url).unwrap_err();
        assert!(
            matches!(err, StoreError::Schema { found, .. } if found == SCHEMA_VERSION + 1),
            "{err}"
        );
        assert!(err.is_permanent());
        // migrate never downgrades, nor touches a schema it does not know.
        assert!(matches!(
            migrate(&db.url).unwrap_err(),
            StoreError::Schema { .. }
        ));
        // An older schema (here: the version table with no version in it) is refused too.
        with_client(&db.url, async |c| {
            c.batch_execute("DELETE FROM schema_version").await.unwrap()
        });
        assert!(matches!(
            check(&db.url).unwrap_err(),
            StoreError::Schema { found: 0, .. }
        ));
    }

    #[test]
    fn the_listing_is_an_index_only_scan() {
        let db = pg::fresh_database();
        migrate(&db.url).unwrap();
        let plan: Vec<String> = with_client(&db.url, async |c| {
            c.batch_execute("SET enable_seqscan = off; SET enable_bitmapscan = off")
                .await
                .unwrap();
            // The very query the store runs, with its parameter.
            c.query(
                &format!("EXPLAIN {}", facteur_store::postgres::LISTING),
                &[&"alice"],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
        });
        let plan = plan.join("\n");
        assert!(
            plan.contains("Index Only Scan using messages_listing"),
            "{plan}"
        );
        assert!(!plan.contains("Sort"), "{plan}");
    }
}

mod store {
    use super::*;
    use facteur_store::postgres::{self, LeaseCommit, PgStore, PgStoreConfig};
    use facteur_store::{Maildrop, Store, StoreError};
    use std::io::Read;
    use std::time::{Duration, Instant};

    /// A migrated database, a runtime driving the store's I/O (as the server's does), and
    /// the store. The tests call the store from their own thread, off the runtime, as the
    /// server's blocking pool does.
    struct Env {
        store: PgStore,
        rt: tokio::runtime::Runtime,
        db: pg::TestDb,
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    fn env(lease: Duration) -> Env {
        let db = pg::fresh_database();
        let rt = runtime();
        rt.block_on(postgres::migrate_url(&db.url)).unwrap();
        let store = connect(&rt, &db.url, lease);
        Env { store, rt, db }
    }

    fn connect(rt: &tokio::runtime::Runtime, url: &str, lease: Duration) -> PgStore {
        connect_with(rt, url, lease, LeaseCommit::default())
    }

    fn connect_with(
        rt: &tokio::runtime::Runtime,
        url: &str,
        lease: Duration,
        lease_commit: LeaseCommit,
    ) -> PgStore {
        rt.block_on(PgStore::connect(&PgStoreConfig {
            url: url.to_owned(),
            pool_size: 4,
            lease,
            lease_commit,
        }))
        .unwrap()
    }

    #[test]
    fn leases_commit_without_waiting_for_the_disk_and_nothing_else_does() {
        // The test cluster runs with synchronous_commit off for speed: this database waits for
        // its flushes, as a production one does, and the store must keep that but for leases.
        let db = pg::fresh_database();
        with_client(&db.url, async |c| {
            c.batch_execute(
                "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET synchronous_commit = on', \
                 current_database()); END $$",
            )
            .await
            .unwrap()
        });
        let rt = runtime();
        rt.block_on(postgres::migrate_url(&db.url)).unwrap();
        let store = connect(&rt, &db.url, Duration::from_secs(30));
        let env = Env { store, rt, db };
        let settings = env.rt.block_on(env.store.commit_settings()).unwrap();
        assert_eq!(settings, ("off".to_owned(), "on".to_owned()));
        // With lease_commit = "sync", every commit waits for its flush; the store still serves.
        let durable = connect_with(
            &env.rt,
            &env.db.url,
            Duration::from_secs(30),
            LeaseCommit::Synchronous,
        );
        let settings = env.rt.block_on(durable.commit_settings()).unwrap();
        assert_eq!(settings, ("on".to_owned(), "on".to_owned()));
        deliver(&durable, "alice", b"Subject: x\r\n\r\nbody\r\n");
        let mut m = durable.open("alice", None).unwrap();
        assert_eq!(m.messages().len(), 1);
        m.apply_deletions(&[0]).unwrap();
        m.release().unwrap();
        drop(m);
        let m = env.store.open("alice", None).unwrap();
        assert!(m.messages().is_empty());
    }

    fn deliver(store: &PgStore, user: &str, message: &[u8]) -> facteur_store::Delivered {
        let mut input = message;
        store.deliver(user, None, &mut input).unwrap()
    }

    /// Opens `user`'s maildrop, waiting (bounded) for a lease released by a dropped session.
    fn open_when_free(store: &PgStore, user: &str) -> Box<dyn Maildrop> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match store.open(user, None) {
                Ok(m) => return m,
                Err(StoreError::InUse) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("open {user}: {e}"),
            }
        }
    }

    fn read_all(m: &mut dyn Maildrop, index: usize, block: usize) -> Vec<u8> {
        let mut reader = m.open_message(index).unwrap();
        let mut out = Vec::new();
        let mut buf = vec![0u8; block];
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    fn uids(m: &dyn Maildrop) -> Vec<String> {
        m.messages().iter().map(|m| m.uid.to_string()).collect()
    }

    fn count(env: &Env, sql: &str) -> i64 {
        with_client(&env.db.url, async |c| {
            c.query_one(sql, &[]).await.unwrap().get(0)
        })
    }

    #[test]
    fn delivery_then_listing_with_stable_unique_ids() {
        let env = env(Duration::from_secs(30));
        let a = deliver(&env.store, "alice", b"Subject: one\r\n\r\nbody\r\n");
        // Bare LFs: RETR sends each as CRLF, so the wire size counts one more octet for each.
        let b = deliver(&env.store, "alice", b"Subject: two\n\nline\nline\n");
        let c = deliver(&env.store, "bob", b"Subject: for bob\r\n\r\n");
        assert_eq!((a.size, a.wire_size), (22, 22));
        assert_eq!((b.size, b.wire_size), (24, 28));
        assert_eq!(c.size, 20);

        let m = env.store.open("alice", None).unwrap();
        let sizes: Vec<u64> = m.messages().iter().map(|m| m.size).collect();
        assert_eq!(sizes, [22, 28]);
        assert!(m.sizes_known());
        let first = uids(m.as_ref());
        assert_eq!(first.len(), 2);
        assert_ne!(first[0], first[1]);
        assert!(
            a.path.to_string_lossy().ends_with(&first[0]),
            "{:?}",
            a.path
        );
        drop(m);

        // The next session sees the same unique-ids in the same order, plus the new mail.
        deliver(&env.store, "alice", b"Subject: three\r\n\r\n");
        let m = open_when_free(&env.store, "alice");
        let second = uids(m.as_ref());
        assert_eq!(second.len(), 3);
        assert_eq!(second[..2], first[..]);
        let bob = open_when_free(&env.store, "bob");
        assert_eq!(bob.messages().len(), 1);
        assert!(!second.contains(&uids(bob.as_ref())[0]));
    }

    #[test]
    fn the_listing_follows_delivery_order() {
        let env = env(Duration::from_secs(30));
        let delivered: Vec<String> = (0..300)
            .map(|i| {
                let d = deliver(&env.store, "alice", format!("message {i}\r\n").as_bytes());
                let path = d.path.to_string_lossy().into_owned();
                path.rsplit('/').next().unwrap().to_owned()
            })
            .collect();
        let mut m = env.store.open("alice", None).unwrap();
        assert_eq!(uids(m.as_ref()), delivered);
        assert_eq!(read_all(m.as_mut(), 299, 100), b"message 299\r\n");
        let taken = m.take_messages();
        assert_eq!(taken.len(), 300);
        assert!(m.messages().is_empty());
        // Sizes stay known after the snapshot is handed over.
        assert_eq!(m.size(299), Some(13));
        assert_eq!(m.compute_sizes().unwrap().len(), 300);
    }

    /// Content with bare LFs, CRLFs, dots at line starts and every octet value.
    fn content(len: usize) -> Vec<u8> {
        let mut x: u32 = 0x9e37_79b9;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                match i % 61 {
                    0 => b'\n',
                    1 => b'.',
                    30 => b'\r',
                    31 => b'\n',
                    _ => x as u8,
                }
            })
            .collect()
    }

    fn wire_size(bytes: &[u8]) -> u64 {
        let bare_lf = bytes
            .iter()
            .enumerate()
            .filter(|&(i, &b)| b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'))
            .count();
        (bytes.len() + bare_lf) as u64
    }

    #[test]
    fn retr_is_byte_exact_across_chunk_boundaries() {
        let env = env(Duration::from_secs(30));
        let lengths = [0, 1, 65535, 65536, 65537, 1 << 20];
        let bodies: Vec<Vec<u8>> = lengths.iter().map(|&n| content(n)).collect();
        for body in &bodies {
            let d = deliver(&env.store, "alice", body);
            assert_eq!(d.size, body.len() as u64);
            assert_eq!(d.wire_size, wire_size(body));
        }
        // Each chunk holds at most 64 KiB; a 0-octet message has none.
        let chunks = count(&env, "SELECT count(*) FROM message_chunks");
        assert_eq!(chunks, 1 + 1 + 1 + 2 + 16);
        let biggest = count(
            &env,
            "SELECT max(octet_length(data))::int8 FROM message_chunks",
        );
        assert_eq!(biggest, 65536);

        let mut m = env.store.open("alice", None).unwrap();
        let sizes: Vec<u64> = m.messages().iter().map(|m| m.size).collect();
        let expected: Vec<u64> = bodies.iter().map(|b| wire_size(b)).collect();
        assert_eq!(sizes, expected);
        for (i, body) in bodies.iter().enumerate() {
            // Read blocks that do not divide the chunk size, and blocks larger than a chunk.
            for block in [7000, 200_000] {
                let got = read_all(m.as_mut(), i, block);
                assert_eq!(got.len(), body.len(), "message {i}, blocks of {block}");
                assert!(got == *body, "message {i} differs (blocks of {block})");
            }
        }
        assert!(matches!(
            m.open_message(lengths.len()),
            Err(StoreError::NoSuchMessage(7))
        ));
    }

    #[test]
    fn a_second_lease_on_one_maildrop_is_refused_until_the_first_ends() {
        let env = env(Duration::from_secs(30));
        deliver(&env.store, "alice", b"x\r\n");
        let other = connect(&env.rt, &env.db.url, Duration::from_secs(30));
        let m = env.store.open("alice", None).unwrap();
        assert!(matches!(other.open("alice", None), Err(StoreError::InUse)));
        assert!(matches!(
            env.store.open("alice", None),
            Err(StoreError::InUse)
        ));
        // Another maildrop is not locked.
        drop(env.store.open("bob", None).unwrap());
        drop(m);
        let m = open_when_free(&other, "alice");
        assert_eq!(m.messages().len(), 1);
    }

    #[test]
    fn release_frees_the_maildrop_before_it_returns() {
        // Dropping leaves the release to a task; `release` is done when it returns, so another
        // node's open succeeds at once (the server calls it before answering QUIT).
        let env = env(Duration::from_secs(30));
        deliver(&env.store, "alice", b"x\r\n");
        let other = connect(&env.rt, &env.db.url, Duration::from_secs(30));
        for _ in 0..20 {
            let mut m = env.store.open("alice", None).unwrap();
            m.release().unwrap();
            assert_eq!(
                count(&env, "SELECT count(*) FROM leases WHERE expires_at > now()"),
                0
            );
            drop(m);
            let mut o = other.open("alice", None).unwrap();
            o.apply_deletions(&[]).unwrap();
            o.release().unwrap();
        }
        // A released lease no longer fences: deletions after it are refused.
        let mut m = env.store.open("alice", None).unwrap();
        m.release().unwrap();
        assert!(matches!(
            m.apply_deletions(&[0]),
            Err(StoreError::LeaseLost)
        ));
        drop(m);
        assert_eq!(other.open("alice", None).unwrap().messages().len(), 1);
    }

    #[test]
    fn a_live_session_keeps_its_lease_past_its_length() {
        let env = env(Duration::from_secs(1));
        let m = env.store.open("alice", None).unwrap();
        // Three lease lengths: renewals (every third of one) keep it.
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            assert!(matches!(
                env.store.open("alice", None),
                Err(StoreError::InUse)
            ));
            std::thread::sleep(Duration::from_millis(250));
        }
        drop(m);
    }

    #[test]
    fn an_expired_lease_is_taken_over_and_the_old_holder_is_fenced() {
        let env = env(Duration::from_secs(1));
        for i in 0..3 {
            deliver(&env.store, "alice", format!("message {i}\r\n").as_bytes());
        }
        // A node that stalls: it renews far less often than its lease lasts.
        let stalled = env
            .store
            .clone()
            .with_renewal_every(Duration::from_secs(3600));
        let mut old = stalled.open("alice", None).unwrap();
        assert!(matches!(
            env.store.open("alice", None),
            Err(StoreError::InUse)
        ));
        std::thread::sleep(Duration::from_millis(1300));
        let mut new = env.store.open("alice", None).unwrap();
        // The old session's UPDATE is refused: nothing deleted.
        let err = old.apply_deletions(&[0, 1]).unwrap_err();
        assert!(matches!(err, StoreError::LeaseLost), "{err}");
        assert!(!err.is_permanent());
        assert_eq!(count(&env, "SELECT count(*) FROM messages"), 3);
        // Dropping the old session releases nothing of the new one's.
        drop(old);
        std::thread::sleep(Duration::from_millis(200));
        assert!(matches!(
            env.store.open("alice", None),
            Err(StoreError::InUse)
        ));
        // The new holder's UPDATE applies.
        new.apply_deletions(&[2]).unwrap();
        assert_eq!(count(&env, "SELECT count(*) FROM messages"), 2);
    }

    #[test]
    fn of_many_nodes_racing_for_an_expired_lease_exactly_one_wins() {
        let env = env(Duration::from_secs(1));
        let stalled = env
            .store
            .clone()
            .with_renewal_every(Duration::from_secs(3600));
        let old = stalled.open("alice", None).unwrap();
        std::thread::sleep(Duration::from_millis(1300));
        let nodes: Vec<PgStore> = (0..6)
            .map(|_| connect(&env.rt, &env.db.url, Duration::from_secs(30)))
            .collect();
        let barrier = std::sync::Barrier::new(nodes.len());
        let outcomes: Vec<Result<Box<dyn Maildrop>, StoreError>> = std::thread::scope(|s| {
            let handles: Vec<_> = nodes
                .iter()
                .map(|node| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        node.open("alice", None)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let won = outcomes.iter().filter(|o| o.is_ok()).count();
        let in_use = outcomes
            .iter()
            .filter(|o| matches!(o, Err(StoreError::InUse)))
            .count();
        assert_eq!((won, in_use), (1, nodes.len() - 1));
        drop(old);
    }

    #[test]
    fn deletions_happen_only_in_apply_deletions() {
        let env = env(Duration::from_secs(30));
        for i in 0..4 {
            deliver(&env.store, "alice", &content(70_000 + i));
        }
        let m = env.store.open("alice", None).unwrap();
        let all = uids(m.as_ref());
        // A session that ends without UPDATE deletes nothing.
        drop(m);
        let mut m = open_when_free(&env.store, "alice");
        assert_eq!(uids(m.as_ref()), all);
        // An index out of the snapshot fails the whole call before anything is deleted.
        assert!(matches!(
            m.apply_deletions(&[0, 9]),
            Err(StoreError::NoSuchMessage(10))
        ));
        assert_eq!(count(&env, "SELECT count(*) FROM messages"), 4);
        m.apply_deletions(&[0, 2]).unwrap();
        drop(m);
        let m = open_when_free(&env.store, "alice");
        assert_eq!(uids(m.as_ref()), [all[1].clone(), all[3].clone()]);
        // The chunks of the deleted messages went with them.
        assert_eq!(count(&env, "SELECT count(*) FROM message_chunks"), 4);
    }

    /// LOGIN-DELAY: the last login is the database's, checked and recorded in one statement;
    /// a refused login leaves it as it was.
    #[test]
    fn login_delay_refuses_a_login_too_soon_after_the_last() {
        let env = env(Duration::from_secs(30));
        let delay = Duration::from_secs(2);
        let mut m = env.store.open("alice", None).unwrap();
        m.check_login_delay(delay).unwrap();
        let first = Instant::now();
        drop(m);
        let mut m = open_when_free(&env.store, "alice");
        assert!(matches!(
            m.check_login_delay(delay),
            Err(StoreError::LoginDelay)
        ));
        // Another user is not concerned.
        let mut other = env.store.open("bob", None).unwrap();
        other.check_login_delay(delay).unwrap();
        drop(m);
        // Refusals moved nothing: the login is accepted once the delay has passed since the
        // first one.
        std::thread::sleep(delay.saturating_sub(first.elapsed()) + Duration::from_millis(100));
        let mut m = open_when_free(&env.store, "alice");
        m.check_login_delay(delay).unwrap();
        // A zero delay always passes.
        drop(m);
        let mut m = open_when_free(&env.store, "alice");
        m.check_login_delay(Duration::ZERO).unwrap();
    }

    /// Logins racing on several nodes: exactly one passes LOGIN-DELAY, the others are told to
    /// wait (or find the maildrop in use and try again, then are told to wait).
    #[test]
    fn of_logins_racing_exactly_one_passes_the_login_delay() {
        let env = env(Duration::from_secs(30));
        let nodes: Vec<PgStore> = (0..4)
            .map(|_| connect(&env.rt, &env.db.url, Duration::from_secs(30)))
            .collect();
        let outcomes: Vec<bool> = std::thread::scope(|scope| {
            let handles: Vec<_> = nodes
                .iter()
                .map(|node| {
                    scope.spawn(move || {
                        let mut m = open_when_free(node, "alice");
                        match m.check_login_delay(Duration::from_secs(3600)) {
                            Ok(()) => true,
                            Err(StoreError::LoginDelay) => false,
                            Err(e) => panic!("{e}"),
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(outcomes.iter().filter(|&&passed| passed).count(), 1);
    }

    /// EXPIRE: a first retrieval time is recorded only by `record_retrievals` (a committed
    /// QUIT), never twice, and `expire` removes only the messages whose time has come, from the
    /// database and from the snapshot.
    #[test]
    fn retrievals_are_recorded_at_update_and_expire_at_a_later_open() {
        let env = env(Duration::from_secs(30));
        for i in 0..4 {
            deliver(&env.store, "alice", &content(100 + i));
        }
        let retrieved = "SELECT count(*) FROM messages WHERE first_retrieved_at IS NOT NULL";
        let m = env.store.open("alice", None).unwrap();
        let all = uids(m.as_ref());
        // A session that ends without UPDATE records nothing.
        drop(m);
        assert_eq!(count(&env, retrieved), 0);
        let mut m = open_when_free(&env.store, "alice");
        assert!(matches!(
            m.record_retrievals(&[9]),
            Err(StoreError::NoSuchMessage(10))
        ));
        m.record_retrievals(&[0, 2]).unwrap();
        drop(m);
        assert_eq!(count(&env, retrieved), 2);
        let first: i64 = count(
            &env,
            "SELECT count(*) FROM messages WHERE first_retrieved_at < now() - interval '1 second'",
        );
        assert_eq!(first, 0);

        // Not yet: nothing expires, nothing is hidden.
        let mut m = open_when_free(&env.store, "alice");
        assert_eq!(m.expire(Duration::from_secs(3600)).unwrap(), 0);
        assert_eq!(uids(m.as_ref()), all);
        // Retrieved again: the first time stays.
        std::thread::sleep(Duration::from_millis(1100));
        m.record_retrievals(&[0, 1]).unwrap();
        drop(m);
        assert_eq!(
            count(
                &env,
                "SELECT count(*) FROM messages WHERE first_retrieved_at < now() - interval '1 second'"
            ),
            2
        );
        // One second on: the two retrieved over a second ago go, at the open, from the
        // snapshot and the database; message 2, retrieved just now, stays.
        let mut m = open_when_free(&env.store, "alice");
        assert_eq!(m.expire(Duration::from_secs(1)).unwrap(), 2);
        assert_eq!(uids(m.as_ref()), [all[1].clone(), all[3].clone()]);
        assert_eq!(m.size(0), Some(m.messages()[0].size));
        let body = read_all(m.as_mut(), 0, 4096);
        assert_eq!(body, content(101));
        drop(m);
        assert_eq!(count(&env, "SELECT count(*) FROM messages"), 2);
    }

    #[test]
    fn the_store_refuses_a_database_without_its_schema() {
        let db = pg::fresh_database();
        let rt = runtime();
        let err = rt
            .block_on(PgStore::connect(&PgStoreConfig {
                url: db.url.clone(),
                pool_size: 1,
                lease: Duration::from_secs(5),
                lease_commit: LeaseCommit::default(),
            }))
            .err()
            .unwrap();
        assert!(matches!(err, StoreError::Schema { found: 0, .. }), "{err}");
    }
}
