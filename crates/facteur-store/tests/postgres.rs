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
