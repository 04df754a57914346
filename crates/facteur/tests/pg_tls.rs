//! facteur on PostgreSQL over TLS, end to end: the store and the SQL users on a cluster with
//! `ssl = on` (facteur-store's harness: a cluster of this test's own on 127.0.0.1, whatever
//! `FACTEUR_TEST_DATABASE_URL` says), `sslmode=verify-full` and SCRAM with channel binding;
//! `db migrate`, `user add`, `deliver`, `check-config`, then a POP3 login and RETR through
//! `facteur serve`, whose store and users share one pool. And a CA that does not sign the
//! server's certificate stops every command with one line that says so.

mod common;
use common::pg;
#[path = "../../facteur-store/tests/support/pg_tls.rs"]
mod pg_tls;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use pg_tls::{tcp_url, tls_cluster, Pki};

/// The fixture's configuration with `store` as its `[store]` body and `auth` as its `[auth]`
/// body, written to `name`.
fn config_with(fx: &Fixture, name: &str, store: &str, auth: &str) -> PathBuf {
    let text = std::fs::read_to_string(&fx.config_path).expect("read the configuration");
    let text = text
        .replace(
            "[auth]\npasswd_file = \"users\"\n",
            &format!("[auth]\n{auth}\n"),
        )
        .replace(
            "[store]\nmaildir = \"mail/%u/Maildir\"\n",
            &format!("[store]\n{store}\n"),
        );
    let path = fx.path().join(name);
    std::fs::write(&path, text).expect("write the configuration");
    path
}

fn cli(config: &Path, args: &[&str], stdin: &[u8]) -> (Option<i32>, String, String) {
    let mut cmd = facteur();
    cmd.args(args).arg("--config").arg(config);
    run_with_input(&mut cmd, stdin)
}

fn ok(config: &Path, args: &[&str], stdin: &[u8]) -> String {
    let (code, stdout, stderr) = cli(config, args, stdin);
    assert_eq!(code, Some(0), "{args:?}: {stdout}{stderr}");
    stdout
}

/// One query's first column, as the superuser through the cluster's socket.
fn count(cluster: &pg::Cluster, sql: &str) -> i64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let (client, conn) =
            tokio_postgres::connect(&cluster.admin_url("postgres"), tokio_postgres::NoTls)
                .await
                .expect("connect as the superuser");
        let driver = tokio::spawn(conn);
        let n: i64 = client.query_one(sql, &[]).await.expect("the query").get(0);
        drop(client);
        let _ = driver.await;
        n
    })
}

#[test]
fn store_and_users_over_verified_tls_share_one_pool() {
    let pki = Pki::new();
    // alice may connect only under TLS, with SCRAM-SHA-256.
    let cluster = tls_cluster(&pki, &["hostssl all alice 127.0.0.1/32 scram-sha-256"]);
    let db = cluster.fresh_database();
    let name = db.url.rsplit('=').next().expect("a dbname").to_string();
    let url = tcp_url(
        &cluster,
        "localhost",
        &name,
        &format!(
            "sslmode=verify-full sslrootcert={} channel_binding=require",
            pki.ca.display()
        ),
    )
    .replace("user=postgres", "user=alice password=alice-pw");
    let fx = Fixture::new();
    let config = config_with(
        &fx,
        "tls.toml",
        &format!("backend = \"postgresql\"\nurl = {url:?}\nlease_secs = 5\npool_size = 1"),
        "backend = \"sql\"",
    );
    let out = ok(&config, &["db", "migrate"], b"");
    assert!(out.contains("schema version 4 (was 0)"), "{out}");
    ok(
        &config,
        &[
            "user",
            "add",
            "gus",
            "--scheme",
            "SHA256-CRYPT",
            "--password-stdin",
        ],
        b"pw\n",
    );
    let (code, _, err) = cli(
        &config,
        &["deliver", "gus"],
        b"Subject: over TLS\r\n\r\nsealed in transit\r\n",
    );
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = cli(&config, &["check-config"], b"");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!(
            "database: localhost:{} (TLS: sslmode=verify-full)",
            cluster.port
        )),
        "{out}"
    );
    assert!(!err.contains("not checked"), "{err}");

    let server = BinServer::start(&config);
    let mut c = server.login("gus", "pw");
    assert_eq!(c.stat().0, 1);
    let body = c.retrieve("RETR 1");
    assert!(
        String::from_utf8_lossy(&body).contains("sealed in transit"),
        "{body:?}"
    );
    c.quit();
    // One pool of one connection served the login and the maildrop (two pools would hold
    // two), and it is under TLS.
    let facteur = "FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
                   WHERE a.application_name = 'facteur' AND a.usename = 'alice'";
    assert_eq!(count(&cluster, &format!("SELECT count(*) {facteur}")), 1);
    assert_eq!(
        count(
            &cluster,
            &format!("SELECT count(*) {facteur} AND NOT s.ssl")
        ),
        0
    );
    assert!(server.log().contains("share one pool"), "{}", server.log());
    drop(server);
    drop(db);
}

/// Runs `facteur serve`, which must stop by itself within 30 s: (exit code, stderr).
fn serve_fails(config: &Path) -> (Option<i32>, String) {
    let mut child = facteur()
        .args(["serve", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start facteur serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait for facteur serve") {
            let mut err = String::new();
            use std::io::Read;
            let _ = child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut err);
            return (status.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("facteur serve did not stop on a database it cannot trust");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_untrusted_database_stops_every_command_with_one_line() {
    let pki = Pki::new();
    let cluster = tls_cluster(&pki, &["hostssl all all 127.0.0.1/32 trust"]);
    let db = cluster.fresh_database();
    let name = db.url.rsplit('=').next().expect("a dbname").to_string();
    let fx = Fixture::new();
    let untrusted = |file: &str, store: &str, auth: &str| {
        let url = tcp_url(
            &cluster,
            "localhost",
            &name,
            &format!("sslmode=verify-full sslrootcert={}", pki.other_ca.display()),
        );
        config_with(
            &fx,
            file,
            &store.replace("URL", &format!("{url:?}")),
            &auth.replace("URL", &format!("{url:?}")),
        )
    };
    let expected = format!(
        "PostgreSQL at localhost: the server's certificate is not trusted by sslrootcert {}",
        pki.other_ca.display()
    );
    let one_line = |what: &str, code: Option<i32>, err: &str| {
        assert_ne!(code, Some(0), "{what}: {err}");
        assert!(err.contains(&expected), "{what}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: {err}");
    };
    // The store and the users in the database.
    let both = untrusted(
        "both.toml",
        "backend = \"postgresql\"\nurl = URL",
        "backend = \"sql\"",
    );
    for args in [&["db", "migrate"][..], &["check-config"], &["user", "list"]] {
        let (code, _, err) = cli(&both, args, b"");
        one_line(&format!("{args:?}"), code, &err);
    }
    let (code, err) = serve_fails(&both);
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("not trusted")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    one_line("serve", code, errors[0]);
    // SQL users with the Maildir store ([auth] url).
    let users = untrusted(
        "users.toml",
        "maildir = \"mail/%u/Maildir\"",
        "backend = \"sql\"\nurl = URL",
    );
    let (code, _, err) = cli(&users, &["user", "list"], b"");
    one_line("user list", code, &err);
    let (code, err) = serve_fails(&users);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains(&expected), "{err}");

    // The same with the right CA, under verify-ca (the certificate names localhost, not
    // 127.0.0.1): the users' database works.
    let url = tcp_url(
        &cluster,
        "127.0.0.1",
        &name,
        &format!("sslmode=verify-ca sslrootcert={}", pki.ca.display()),
    );
    let fine = config_with(
        &fx,
        "fine.toml",
        "maildir = \"mail/%u/Maildir\"",
        &format!("backend = \"sql\"\nurl = {url:?}"),
    );
    ok(&fine, &["db", "migrate"], b"");
    ok(
        &fine,
        &[
            "user",
            "add",
            "hal",
            "--scheme",
            "SHA256-CRYPT",
            "--password-stdin",
        ],
        b"pw\n",
    );
    assert_eq!(ok(&fine, &["user", "list"], b""), "hal\n");
    drop(db);
}
