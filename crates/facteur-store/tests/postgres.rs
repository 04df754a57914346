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
                "leases",
                "maildrops",
                "message_chunks",
                "messages",
                "schema_version"
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
            c.query(
                "EXPLAIN SELECT id, uid, wire_size FROM messages \
                 WHERE maildrop_id = '6f1c2e1e-8d1a-4c1b-9b1e-2a3b4c5d6e7f' ORDER BY delivered_at, id",
                &[],
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
