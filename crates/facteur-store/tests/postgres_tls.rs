//! TLS to PostgreSQL against a real server with `ssl = on` (a cluster of each test's own, on
//! 127.0.0.1: Unix sockets never use TLS): every `sslmode`, `sslrootcert`, client certificates
//! and SCRAM channel binding, and the one-line errors a person reads when they fail.

#![allow(
    clippy::unwrap_used,
    reason = "a test's helpers may panic: that is the test failing"
)]

mod support;

use facteur_store::postgres;
use support::pg_tls::{plain_cluster, tcp_url, tls_cluster, Pki};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Connects through facteur's pool with `url`: whether the connection is under TLS, or the
/// error as `facteur` prints it.
fn connect(url: &str) -> Result<bool, String> {
    runtime().block_on(async {
        let pool = postgres::connect_pool(url, 1)
            .await
            .map_err(|e| e.to_string())?;
        let client = pool.get().await.map_err(|e| e.to_string())?;
        let row = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(row.get(0))
    })
}

fn refused(url: &str) -> String {
    match connect(url) {
        Ok(tls) => panic!("{url}: connected (TLS: {tls}), expected a refusal"),
        Err(e) => {
            assert!(!e.contains('\n'), "not one line: {e}");
            e
        }
    }
}

#[test]
fn certificates_are_checked_as_sslmode_says() {
    let pki = Pki::new();
    let cluster = tls_cluster(&pki, &["hostssl all all 127.0.0.1/32 trust"]);
    let db = cluster.fresh_database();
    let name = db.url.rsplit('=').next().unwrap().to_string();
    let url = |host: &str, extra: &str| tcp_url(&cluster, host, &name, extra);
    let ca = format!("sslrootcert={}", pki.ca.display());
    let other = format!("sslrootcert={}", pki.other_ca.display());

    // verify-full: the right CA and a name the certificate holds.
    assert_eq!(
        connect(&url("localhost", &format!("sslmode=verify-full {ca}"))),
        Ok(true)
    );
    // The same through a URL, and `facteur db migrate`'s path (a connection of its own).
    let as_url = format!(
        "postgresql://postgres@localhost:{}/{name}?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={}",
        cluster.port,
        pki.ca.display()
    );
    assert_eq!(connect(&as_url), Ok(true));
    let migrated = runtime().block_on(postgres::migrate_url(&as_url)).unwrap();
    assert_eq!(migrated.to, postgres::SCHEMA_VERSION);

    // Another CA: refused, and the message says by which file.
    let e = refused(&url("localhost", &format!("sslmode=verify-full {other}")));
    assert!(
        e.contains(&format!(
            "connect to the database: PostgreSQL at localhost: the server's certificate is not \
             trusted by sslrootcert {}",
            pki.other_ca.display()
        )),
        "{e}"
    );
    // verify-ca checks the chain too.
    let e = refused(&url("127.0.0.1", &format!("sslmode=verify-ca {other}")));
    assert!(e.contains("not trusted by sslrootcert"), "{e}");

    // The certificate names localhost, not 127.0.0.1: verify-full refuses, verify-ca accepts.
    let e = refused(&url("127.0.0.1", &format!("sslmode=verify-full {ca}")));
    assert!(
        e.contains(
            "PostgreSQL at 127.0.0.1: the server's certificate is not valid for the name 127.0.0.1"
        ),
        "{e}"
    );
    assert_eq!(
        connect(&url("127.0.0.1", &format!("sslmode=verify-ca {ca}"))),
        Ok(true)
    );

    // require: encrypted, not checked (as libpq); with an sslrootcert, checked (as libpq).
    assert_eq!(connect(&url("127.0.0.1", "sslmode=require")), Ok(true));
    let e = refused(&url("localhost", &format!("sslmode=require {other}")));
    assert!(e.contains("not trusted"), "{e}");
    // prefer, the default: TLS when the server offers it.
    assert_eq!(connect(&url("127.0.0.1", "")), Ok(true));

    // A server that accepts TLS connections only (hostssl) refuses sslmode=disable.
    let e = refused(&url("localhost", "sslmode=disable"));
    assert!(e.contains("PostgreSQL at localhost:"), "{e}");
    assert!(e.contains("no encryption"), "{e}");
    drop(db);
}

#[test]
fn channel_binding_and_client_certificates() {
    let pki = Pki::new();
    let cluster = tls_cluster(
        &pki,
        &[
            "hostssl all alice 127.0.0.1/32 scram-sha-256",
            "hostnossl all alice 127.0.0.1/32 scram-sha-256",
            "hostssl all carol 127.0.0.1/32 cert",
        ],
    );
    let ca = format!("sslrootcert={}", pki.ca.display());
    let alice = |extra: &str| {
        tcp_url(&cluster, "localhost", "postgres", extra)
            .replace("user=postgres", "user=alice password=alice-pw")
    };
    // SCRAM-SHA-256-PLUS: tokio-postgres refuses plain SCRAM under channel_binding=require, and
    // the server refuses a wrong tls-server-end-point hash: a login proves both right.
    assert_eq!(
        connect(&alice(&format!(
            "sslmode=verify-full {ca} channel_binding=require"
        ))),
        Ok(true)
    );
    assert_eq!(
        connect(&alice("sslmode=require channel_binding=require")),
        Ok(true)
    );
    // In clear there is nothing to bind to.
    let e = refused(&alice("sslmode=disable channel_binding=require"));
    assert!(e.contains("channel binding"), "{e}");
    assert_eq!(connect(&alice("sslmode=disable")), Ok(false));

    // carol logs in with her certificate only.
    let carol = |extra: &str| {
        tcp_url(&cluster, "localhost", "postgres", extra).replace("user=postgres", "user=carol")
    };
    assert_eq!(
        connect(&carol(&format!(
            "sslmode=verify-full {ca} sslcert={} sslkey={}",
            pki.carol_cert.display(),
            pki.carol_key.display()
        ))),
        Ok(true)
    );
    let e = refused(&carol(&format!("sslmode=verify-full {ca}")));
    assert!(e.contains("certificate"), "{e}");
    // A key that is not the certificate's is refused before any connection.
    let e = refused(&carol(&format!(
        "sslmode=verify-full {ca} sslcert={} sslkey={}",
        pki.carol_cert.display(),
        pki.dir().join("missing.key").display()
    )));
    assert!(e.contains("sslkey") && e.contains("missing.key"), "{e}");
}

#[test]
fn a_server_without_tls() {
    let cluster = plain_cluster();
    let url = |extra: &str| tcp_url(&cluster, "127.0.0.1", "postgres", extra);
    let e = refused(&url("sslmode=require"));
    assert!(
        e.contains(&format!(
            "PostgreSQL at 127.0.0.1:{} (sslmode=require): error performing TLS handshake: server does not support TLS",
            cluster.port
        )),
        "{e}"
    );
    // prefer falls back to a connection in clear, as libpq's.
    assert_eq!(connect(&url("sslmode=prefer")), Ok(false));
    // A Unix socket never uses TLS, whatever sslmode says (as libpq).
    let socket = format!("{} sslmode=require", cluster.admin_url("postgres"));
    assert_eq!(connect(&socket), Ok(false));
}
