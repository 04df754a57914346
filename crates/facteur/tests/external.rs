//! SASL EXTERNAL (RFC 4422 appendix A) end to end: a client certificate verified against
//! `[tls] client_ca`, over POP3S and after STLS, with rustls as the client and with openssl
//! s_client (a client nobody here wrote).
//!
//! The PKI is made here with rcgen: a test CA; client certificates it signs for
//! `alice@example.org` (a user of the fixture's passwd-file, added for these tests), for
//! `mallory@example.org` (no such user) and for a subject CN `carol` without any e-mail
//! address (the identity falls back to the CN); and a certificate for `alice@example.org`
//! signed by another CA, which the server does not trust.

mod common;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// The identity of the main client certificate, and a user of the passwd-file.
const ALICE: &str = "alice@example.org";
/// The identity of a certificate the CA signed, but no user of the passwd-file.
const MALLORY: &str = "mallory@example.org";
/// The users file line that makes `alice@example.org` a user (its password plays no part).
const ALICE_LINE: &str = "alice@example.org:{PLAIN}unused-password\n";

/// A certification authority: its certificate (PEM) and what signs with it.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("generate a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign the CA");
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A client certificate with this subject CN and, if given, this subjectAltName
    /// rfc822Name (e-mail address).
    fn client(&self, cn: &str, email: Option<&str>) -> ClientCert {
        let key = KeyPair::generate().expect("generate a client key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client parameters");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = email
            .into_iter()
            .map(|e| SanType::Rfc822Name(e.try_into().expect("an IA5 e-mail address")))
            .collect();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign the client certificate");
        ClientCert {
            der: cert.der().to_vec(),
            pem: cert.pem(),
            key_der: key.serialize_der(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A client certificate and its private key (PKCS#8).
struct ClientCert {
    der: Vec<u8>,
    pem: String,
    key_der: Vec<u8>,
    key_pem: String,
}

impl ClientCert {
    /// A rustls client configuration that trusts the fixture's server certificate and
    /// presents this certificate.
    fn rustls(&self, fx: &Fixture) -> Arc<rustls::ClientConfig> {
        tls_client_config_with_cert(fx.cert(), vec![self.der.clone()], self.key_der.clone())
    }

    /// Write the certificate and the key as PEM files in the fixture's folder, for openssl.
    fn write(&self, fx: &Fixture, name: &str) -> (PathBuf, PathBuf) {
        let cert = fx.path().join(format!("{name}-cert.pem"));
        let key = fx.path().join(format!("{name}-key.pem"));
        std::fs::write(&cert, &self.pem).expect("write the client certificate");
        std::fs::write(&key, &self.key_pem).expect("write the client key");
        (cert, key)
    }
}

/// The test PKI: the CA the server trusts, and the client certificates.
struct Pki {
    ca: Ca,
    alice: ClientCert,
    mallory: ClientCert,
    carol_by_cn: ClientCert,
    alice_other_ca: ClientCert,
}

impl Pki {
    fn new() -> Self {
        let ca = Ca::new("facteur test client CA");
        let other = Ca::new("some other CA");
        Self {
            alice: ca.client("Alice", Some(ALICE)),
            mallory: ca.client("Mallory", Some(MALLORY)),
            carol_by_cn: ca.client(CRYPT_USER, None),
            alice_other_ca: other.client("Alice", Some(ALICE)),
            ca,
        }
    }

    /// A fixture with a certificate, `[tls] client_ca` = this PKI's CA,
    /// `[auth] sasl = ["PLAIN", "EXTERNAL"]`, and `alice@example.org` in the users file.
    fn fixture(&self) -> Fixture {
        Fixture::with_client_ca(
            "sasl = [\"PLAIN\", \"EXTERNAL\"]\n",
            ALICE_LINE,
            &self.ca.pem,
        )
    }
}

/// How a test reaches the TLS layer.
#[derive(Clone, Copy, Debug)]
enum Via {
    /// The POP3S listener (implicit TLS).
    Pop3s,
    /// STLS on the plain listener.
    Stls,
}

const BOTH: [Via; 2] = [Via::Pop3s, Via::Stls];

/// A session under TLS with this client configuration, greeting read.
fn open(server: &Server, via: Via, config: Arc<rustls::ClientConfig>) -> Client {
    match via {
        Via::Pop3s => Client::connect_tls_with(server.pop3s(), config),
        Via::Stls => {
            let mut c = server.connect();
            let r = c.cmd("STLS");
            assert!(r.starts_with("+OK"), "STLS: {r:?}");
            c.start_tls_with(config)
                .expect("the TLS handshake after STLS");
            c
        }
    }
}

/// The capabilities of CAPA, one per line.
fn capa(c: &mut Client) -> Vec<String> {
    let (status, body) = c.cmd_multi("CAPA");
    assert!(status.starts_with("+OK"), "CAPA: {status:?}");
    String::from_utf8(body)
        .expect("a UTF-8 capability list")
        .split_terminator("\r\n")
        .map(str::to_string)
        .collect()
}

/// The SASL line of CAPA, if any.
fn sasl_line(caps: &[String]) -> Option<&str> {
    caps.iter()
        .map(String::as_str)
        .find(|c| c.split_whitespace().next() == Some("SASL"))
}

fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn capa_offers_external_only_with_a_client_certificate(backend: Backend) {
    let pki = Pki::new();
    let fx = pki.fixture().on(backend);
    let server = fx.start();

    // In clear text: no TLS, so no EXTERNAL (PLAIN is offered on loopback).
    let mut c = server.connect();
    assert_eq!(sasl_line(&capa(&mut c)), Some("SASL PLAIN"));
    c.quit();

    for via in BOTH {
        let mut c = open(&server, via, pki.alice.rustls(&fx));
        assert_eq!(
            sasl_line(&capa(&mut c)),
            Some("SASL PLAIN EXTERNAL"),
            "{via:?} with a client certificate"
        );
        c.quit();

        // The same, but the client sends no certificate (the server asks, does not require).
        let mut c = open(&server, via, tls_client_config(fx.cert()));
        assert_eq!(
            sasl_line(&capa(&mut c)),
            Some("SASL PLAIN"),
            "{via:?} without a client certificate"
        );
        // Not offered, so not accepted either.
        let r = c.cmd("AUTH EXTERNAL =");
        assert!(r.starts_with("-ERR"), "{via:?}: AUTH EXTERNAL: {r:?}");
        assert!(
            !r.starts_with("-ERR [AUTH]"),
            "{via:?}: an unoffered mechanism is no failed login: {r:?}"
        );
        c.quit();
    }
}

fn auth_external_with_an_empty_authzid_logs_in_as_the_certificate_identity(backend: Backend) {
    let pki = Pki::new();
    let fx = pki.fixture().on(backend);
    let d = fx.deliver(ALICE, &message(1));
    let server = fx.start();
    for via in BOTH {
        let mut c = open(&server, via, pki.alice.rustls(&fx));
        let r = c.cmd("AUTH EXTERNAL =");
        assert!(r.starts_with("+OK"), "{via:?}: AUTH EXTERNAL =: {r:?}");
        assert!(r.contains(ALICE), "{via:?}: logged in as whom? {r:?}");
        assert_eq!(c.stat(), (1, d.wire_size), "{via:?}");
        // RFC 2449 section 5: what was announced before login is announced after it.
        assert_eq!(
            sasl_line(&capa(&mut c)),
            Some("SASL PLAIN EXTERNAL"),
            "{via:?}"
        );
        c.quit();
    }
}

fn auth_external_without_an_initial_response_takes_the_authzid_after_an_empty_challenge(
    backend: Backend,
) {
    let pki = Pki::new();
    let fx = pki.fixture().on(backend);
    let d = fx.deliver(ALICE, &message(1));
    let server = fx.start();
    for via in BOTH {
        let mut c = open(&server, via, pki.alice.rustls(&fx));
        assert_eq!(c.cmd("AUTH EXTERNAL"), "+ \r\n", "{via:?}");
        let r = c.cmd("");
        assert!(r.starts_with("+OK"), "{via:?}: empty authzid: {r:?}");
        assert_eq!(c.stat(), (1, d.wire_size), "{via:?}");
        c.quit();

        let mut c = open(&server, via, pki.alice.rustls(&fx));
        assert_eq!(c.cmd("AUTH EXTERNAL"), "+ \r\n", "{via:?}");
        let r = c.cmd(&b64(ALICE));
        assert!(r.starts_with("+OK"), "{via:?}: authzid {ALICE}: {r:?}");
        c.quit();
    }
}

fn auth_external_with_its_own_identity_as_authzid_logs_in(backend: Backend) {
    let pki = Pki::new();
    let fx = pki.fixture().on(backend);
    let d = fx.deliver(ALICE, &message(1));
    let server = fx.start();
    for via in BOTH {
        let mut c = open(&server, via, pki.alice.rustls(&fx));
        let r = c.cmd(&format!("AUTH EXTERNAL {}", b64(ALICE)));
        assert!(r.starts_with("+OK"), "{via:?}: authzid {ALICE}: {r:?}");
        assert_eq!(c.stat(), (1, d.wire_size), "{via:?}");
        c.quit();
    }
}

fn auth_external_as_somebody_else_fails(backend: Backend) {
    let pki = Pki::new();
    let fx = pki.fixture().on(backend);
    fx.deliver(USER, &message(1));
    let server = fx.start();
    for via in BOTH {
        // carol and alice are users of the passwd-file, but not the certificate's identity.
        for other in [CRYPT_USER, USER] {
            let mut c = open(&server, via, pki.alice.rustls(&fx));
            let r = c.cmd(&format!("AUTH EXTERNAL {}", b64(other)));
            assert!(
                r.starts_with("-ERR [AUTH]"),
                "{via:?}: alice's certificate with authzid {other}: {r:?}"
            );
            // Still in the AUTHORIZATION state: no maildrop was opened.
            let r = c.cmd("STAT");
            assert!(
                r.starts_with("-ERR"),
                "{via:?}: STAT after a failure: {r:?}"
            );
            // And the right identity still works on the same connection.
            let r = c.cmd("AUTH EXTERNAL =");
            assert!(r.starts_with("+OK"), "{via:?}: then AUTH EXTERNAL =: {r:?}");
            c.quit();
        }
    }
}

fn a_certificate_identity_that_is_no_user_fails(backend: Backend) {
    let pki = Pki::new();
    let fx = pki.fixture().on(backend);
    let server = fx.start();
    for via in BOTH {
        let mut c = open(&server, via, pki.mallory.rustls(&fx));
        // The certificate is verified, so EXTERNAL is offered; the identity is checked at AUTH.
        assert_eq!(sasl_line(&capa(&mut c)), Some("SASL PLAIN EXTERNAL"));
        let r = c.cmd("AUTH EXTERNAL =");
        assert!(r.starts_with("-ERR [AUTH]"), "{via:?}: {MALLORY}: {r:?}");
        let r = c.cmd(&format!("AUTH EXTERNAL {}", b64(MALLORY)));
        assert!(
            r.starts_with("-ERR [AUTH]"),
            "{via:?}: {MALLORY} as authzid: {r:?}"
        );
        c.quit();
    }
}

fn the_subject_cn_is_the_identity_when_there_is_no_email(backend: Backend) {
    let pki = Pki::new();
    let fx = pki.fixture().on(backend);
    let d = fx.deliver(CRYPT_USER, &message(1));
    let server = fx.start();
    for via in BOTH {
        let mut c = open(&server, via, pki.carol_by_cn.rustls(&fx));
        let r = c.cmd("AUTH EXTERNAL =");
        assert!(r.starts_with("+OK"), "{via:?}: CN {CRYPT_USER}: {r:?}");
        assert_eq!(c.stat(), (1, d.wire_size), "{via:?}");
        c.quit();
    }
}

/// What a client that presents a certificate from an untrusted CA gets: the server's verifier
/// (`WebPkiClientVerifier` with `allow_unauthenticated()`) lets a client send *no*
/// certificate, but one that is sent must verify, else the handshake fails.
///
/// With TLS 1.3 (what rustls negotiates here) the client sends its certificate in its last
/// flight, and its side of the handshake is complete once that flight is written: the server's
/// verdict only reaches it on its first read. So the handshake "succeeds" for the client, and
/// the first read, where the greeting (POP3S) or the answer to the next command (STLS) would
/// be, gets the server's fatal alert `unknown_ca` (rustls maps `UnknownIssuer` to that alert)
/// instead: rustls reports it as `InvalidData`, "received fatal alert: UnknownCA". No POP3
/// line is ever sent under that TLS session.
fn assert_refused(result: std::io::Result<Option<String>>, via: Via) {
    match result {
        Err(e) => {
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{via:?}: {e}");
            assert!(
                e.to_string().contains("UnknownCA"),
                "{via:?}: not the unknown_ca alert: {e}"
            );
        }
        Ok(line) => panic!("{via:?}: the server answered {line:?} to an untrusted certificate"),
    }
}

fn a_certificate_from_another_ca_is_refused_at_the_handshake(backend: Backend) {
    let pki = Pki::new();
    let fx = pki.fixture().on(backend);
    let server = fx.start();
    let config = pki.alice_other_ca.rustls(&fx);

    // POP3S: the greeting never comes.
    let mut c = Client::connect_tls_unchecked(server.pop3s(), config.clone())
        .expect("the client's side of the TLS 1.3 handshake");
    let first = c.try_line();
    assert_refused(first, Via::Pop3s);

    // STLS: the session does not continue under TLS.
    let mut c = server.connect();
    let r = c.cmd("STLS");
    assert!(r.starts_with("+OK"), "STLS: {r:?}");
    c.start_tls_with(config)
        .expect("the client's side of the TLS 1.3 handshake");
    c.send(b"CAPA\r\n");
    assert_refused(c.try_line(), Via::Stls);

    // The server goes on: the trusted certificate still logs in, on both listeners.
    for via in BOTH {
        let mut c = open(&server, via, pki.alice.rustls(&fx));
        let r = c.cmd("AUTH EXTERNAL =");
        assert!(r.starts_with("+OK"), "{via:?}: AUTH EXTERNAL =: {r:?}");
        c.quit();
    }
}

/// openssl s_client with `-cert`/`-key` sending CAPA, `AUTH EXTERNAL =`, STAT and QUIT, over
/// POP3S or (`starttls`) STLS. Returns (exit code, stdout: the server's lines, stderr).
fn openssl_session(
    addr: SocketAddr,
    starttls: bool,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> (Option<i32>, String, String) {
    let mut cmd = Command::new("openssl");
    cmd.arg("s_client");
    if starttls {
        cmd.args(["-starttls", "pop3"]);
    }
    cmd.args(["-connect", &addr.to_string()])
        .arg("-CAfile")
        .arg(ca)
        .arg("-cert")
        .arg(cert)
        .arg("-key")
        .arg(key)
        .args(["-verify_return_error", "-brief", "-ign_eof"]);
    run_with_input(&mut cmd, b"CAPA\r\nAUTH EXTERNAL =\r\nSTAT\r\nQUIT\r\n")
}

fn openssl_s_client_with_a_client_certificate_logs_in_with_auth_external(backend: Backend) {
    let pki = Pki::new();
    let fx = pki.fixture().on(backend);
    let d = fx.deliver(ALICE, &message(1));
    let server = fx.start();
    let (cert, key) = pki.alice.write(&fx, "alice");
    for (via, addr, starttls) in [
        (Via::Pop3s, server.pop3s(), false),
        (Via::Stls, server.addr, true),
    ] {
        let (code, stdout, stderr) = openssl_session(addr, starttls, fx.cert(), &cert, &key);
        assert_eq!(
            code,
            Some(0),
            "{via:?}: openssl s_client:\n{stdout}\n{stderr}"
        );
        assert!(
            stderr.contains("Verification: OK"),
            "{via:?}: openssl did not verify the server:\n{stderr}"
        );
        let lines: Vec<&str> = stdout.split_inclusive("\r\n").collect();
        // POP3S: openssl prints the greeting; with -starttls it consumed it (and STLS).
        let lines = match via {
            Via::Pop3s => {
                assert!(lines[0].starts_with("+OK"), "{via:?} greeting:\n{stdout}");
                &lines[1..]
            }
            Via::Stls => &lines[..],
        };
        let end = lines
            .iter()
            .position(|l| *l == ".\r\n")
            .unwrap_or_else(|| panic!("{via:?}: no end of the CAPA listing in:\n{stdout}"));
        assert_eq!(lines[0], "+OK capability list follows\r\n", "{via:?}");
        assert!(
            lines[1..end].contains(&"SASL PLAIN EXTERNAL\r\n"),
            "{via:?}: {stdout}"
        );
        let answers = &lines[end + 1..];
        assert_eq!(answers.len(), 3, "{via:?}:\n{stdout}");
        assert!(
            answers[0].starts_with("+OK") && answers[0].contains(ALICE),
            "{via:?}: AUTH EXTERNAL =: {:?}",
            answers[0]
        );
        assert_eq!(answers[1], format!("+OK 1 {}\r\n", d.wire_size), "{via:?}");
        assert!(
            answers[2].starts_with("+OK"),
            "{via:?}: QUIT: {:?}",
            answers[2]
        );
    }
}

both_backends!(
    capa_offers_external_only_with_a_client_certificate,
    auth_external_with_an_empty_authzid_logs_in_as_the_certificate_identity,
    auth_external_without_an_initial_response_takes_the_authzid_after_an_empty_challenge,
    auth_external_with_its_own_identity_as_authzid_logs_in,
    auth_external_as_somebody_else_fails,
    a_certificate_identity_that_is_no_user_fails,
    the_subject_cn_is_the_identity_when_there_is_no_email,
    a_certificate_from_another_ca_is_refused_at_the_handshake,
    openssl_s_client_with_a_client_certificate_logs_in_with_auth_external,
);
