//! A PostgreSQL cluster of a test's own with `ssl = on`, on 127.0.0.1, and the PKI the tests
//! check it with (made here with rcgen): a test CA; the server's certificate, signed by it,
//! naming `localhost` only (so that `host=127.0.0.1` is a name mismatch); another CA that
//! signed nothing; a client certificate for the role `carol`.
//!
//! pg_hba.conf is the test's: `hostssl`-only lines make a server that refuses connections in
//! clear. The roles `alice` (password `alice-pw`, SCRAM-SHA-256) and `carol` exist.

#![allow(
    dead_code,
    reason = "facteur-store's and facteur's tests include this file, each using its own part"
)]

use std::path::{Path, PathBuf};

use super::pg::{Cluster, Setup};

/// The test CA, the other CA and the client certificate, as PEM files in a folder of the test.
pub struct Pki {
    dir: tempfile::TempDir,
    /// The CA that signed the server's certificate (an sslrootcert that works).
    pub ca: PathBuf,
    /// A CA that signed nothing (an sslrootcert that must fail).
    pub other_ca: PathBuf,
    /// The client certificate (CN=carol) and its key, signed by `ca`.
    pub carol_cert: PathBuf,
    pub carol_key: PathBuf,
    server_cert: String,
    server_key: String,
}

impl Pki {
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let dir = tempfile::tempdir().expect("a folder for the PKI");
        let ca_params = |cn: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, cn);
            p
        };
        let ca_key = KeyPair::generate().expect("a CA key");
        let ca_cert = ca_params("facteur test CA")
            .self_signed(&ca_key)
            .expect("the CA certificate");
        let issuer = Issuer::new(ca_params("facteur test CA"), ca_key);
        let other_key = KeyPair::generate().expect("a CA key");
        let other_cert = ca_params("another CA")
            .self_signed(&other_key)
            .expect("the other CA certificate");
        let server_key = KeyPair::generate().expect("a server key");
        let mut server_params =
            CertificateParams::new(vec!["localhost".to_string()]).expect("server parameters");
        server_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .expect("the server certificate");
        let carol_key = KeyPair::generate().expect("a client key");
        let mut carol_params = CertificateParams::new(Vec::<String>::new()).expect("parameters");
        carol_params
            .distinguished_name
            .push(DnType::CommonName, "carol");
        let carol_cert = carol_params
            .signed_by(&carol_key, &issuer)
            .expect("the client certificate");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write a PEM file");
            path
        };
        Self {
            ca: write("ca.pem", &ca_cert.pem()),
            other_ca: write("other-ca.pem", &other_cert.pem()),
            carol_cert: write("carol.pem", &carol_cert.pem()),
            carol_key: write("carol.key", &carol_key.serialize_pem()),
            server_cert: server_cert.pem(),
            server_key: server_key.serialize_pem(),
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A cluster with `ssl = on` (the server's certificate of `pki`, client certificates checked
/// against its CA), these pg_hba.conf lines, and the roles `alice` and `carol`.
pub fn tls_cluster(pki: &Pki, hba: &[&str]) -> Cluster {
    let ca = std::fs::read(&pki.ca).expect("read the CA");
    let cluster = Cluster::start(&Setup {
        conf: vec![
            "ssl = on".into(),
            "ssl_cert_file = 'server.crt'".into(),
            "ssl_key_file = 'server.key'".into(),
            "ssl_ca_file = 'ca.crt'".into(),
            "password_encryption = 'scram-sha-256'".into(),
        ],
        hba: hba.iter().map(|l| l.to_string()).collect(),
        files: vec![
            ("server.crt".into(), pki.server_cert.clone().into_bytes()),
            ("server.key".into(), pki.server_key.clone().into_bytes()),
            ("ca.crt".into(), ca),
        ],
    });
    cluster.sql(
        "postgres",
        "CREATE ROLE alice LOGIN SUPERUSER PASSWORD 'alice-pw'; CREATE ROLE carol LOGIN SUPERUSER",
    );
    cluster
}

/// A cluster with `ssl = off`, reachable in clear on 127.0.0.1.
pub fn plain_cluster() -> Cluster {
    Cluster::start(&Setup {
        conf: vec!["ssl = off".into()],
        hba: vec!["host all all 127.0.0.1/32 trust".into()],
        files: Vec::new(),
    })
}

/// The connection string to database `dbname` of `cluster` over TCP, connecting to 127.0.0.1
/// under the name `host` (`localhost`, which the certificate names, or `127.0.0.1`, which it
/// does not), with these extra settings.
pub fn tcp_url(cluster: &Cluster, host: &str, dbname: &str, extra: &str) -> String {
    format!(
        "host={host} hostaddr=127.0.0.1 port={} dbname={dbname} user=postgres {extra}",
        cluster.port
    )
}
