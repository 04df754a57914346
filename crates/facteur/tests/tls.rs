//! TLS end to end: STLS (RFC 2595) and POP3S (RFC 8314) with clients nobody here wrote
//! (openssl s_client, curl, Python's poplib and ssl) and with rustls as a client; the STARTTLS
//! command injection of CVE-2011-0411; the certificate reload on SIGHUP.

mod common;

use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;

/// The DER of the first certificate of a PEM file.
fn cert_der(pem: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(pem)
        .expect("a certificate in the PEM file")
        .to_vec()
}

/// The first line of `c`'s reply to CAPA and the capabilities, one per line.
fn capa(c: &mut Client) -> Vec<String> {
    let (status, body) = c.cmd_multi("CAPA");
    assert!(status.starts_with("+OK"), "CAPA: {status:?}");
    String::from_utf8(body)
        .expect("a UTF-8 capability list")
        .split_terminator("\r\n")
        .map(str::to_string)
        .collect()
}

fn has_cap(caps: &[String], name: &str) -> bool {
    caps.iter()
        .any(|c| c.split_whitespace().next() == Some(name))
}

/// Run a program; returns (status code, stdout, stderr).
fn run(cmd: &mut Command, stdin: &[u8]) -> (Option<i32>, String, String) {
    run_with_input(cmd, stdin)
}

fn curl(args: &[&str]) -> (Option<i32>, String, String) {
    run(
        Command::new("curl")
            .args(["--silent", "--show-error", "--max-time", "30"])
            .args(["--user", &format!("{USER}:{PASSWORD}")])
            .args(args),
        b"",
    )
}

fn openssl_s_client_starttls_session(backend: Backend) {
    let fx = Fixture::with_tls().on(backend);
    let d = fx.deliver(USER, &message(1));
    let server = BinServer::start(&fx.config_path);
    let cert = fx.cert().to_str().expect("a UTF-8 path");

    let (code, stdout, stderr) = run(
        Command::new("openssl").args([
            "s_client",
            "-starttls",
            "pop3",
            "-connect",
            &server.addr.to_string(),
            "-CAfile",
            cert,
            "-verify_return_error",
            "-brief",
            "-ign_eof",
        ]),
        format!("CAPA\r\nUSER {USER}\r\nPASS {PASSWORD}\r\nSTAT\r\nQUIT\r\n").as_bytes(),
    );
    // OpenSSL 3 fails with "unexpected eof" unless the server ends with close_notify.
    assert_eq!(code, Some(0), "openssl s_client:\n{stdout}\n{stderr}");
    assert!(
        stderr.contains("Verification: OK"),
        "openssl did not verify the server:\n{stderr}"
    );
    assert!(
        stderr.contains("Protocol version: TLSv1.3"),
        "openssl did not negotiate TLS 1.3:\n{stderr}"
    );

    // What came back through TLS: the capabilities under TLS, then one answer per command.
    let lines: Vec<&str> = stdout.split_inclusive("\r\n").collect();
    let end = lines
        .iter()
        .position(|l| *l == ".\r\n")
        .unwrap_or_else(|| panic!("no end of the CAPA listing in:\n{stdout}\n{stderr}"));
    assert_eq!(lines[0], "+OK capability list follows\r\n", "{stdout}");
    let caps: Vec<String> = lines[1..end]
        .iter()
        .map(|l| l.trim_end().to_string())
        .collect();
    assert!(has_cap(&caps, "USER"), "{caps:?}");
    assert!(!has_cap(&caps, "STLS"), "STLS offered under TLS: {caps:?}");
    let answers = &lines[end + 1..];
    assert_eq!(answers.len(), 4, "{stdout}");
    assert!(answers[0].starts_with("+OK"), "USER: {:?}", answers[0]);
    assert!(answers[1].starts_with("+OK"), "PASS: {:?}", answers[1]);
    assert_eq!(answers[2], format!("+OK 1 {}\r\n", d.wire_size));
    assert!(answers[3].starts_with("+OK"), "QUIT: {:?}", answers[3]);

    // The server's own account of the session.
    let log = server.wait_for_log("session ended", 1);
    let line = log
        .lines()
        .find(|l| l.contains("session ended") && l.contains(&format!("user=\"{USER}\"")))
        .unwrap_or_else(|| panic!("no session line for {USER}:\n{log}"));
    assert!(line.contains("tls=\"TLSv1_3 "), "{line}");
    assert!(line.contains("end=Quit"), "{line}");
}

fn curl_retrieves_over_pop3s(backend: Backend) {
    let fx = Fixture::with_tls().on(backend);
    let m = message(1);
    fx.deliver(USER, &m);
    let server = fx.start();
    let cert = fx.cert().to_str().expect("a UTF-8 path");
    let url = format!("pop3s://127.0.0.1:{}/1", server.pop3s().port());
    let (code, stdout, stderr) = curl(&["--cacert", cert, &url]);
    assert_eq!(code, Some(0), "curl {url}: {stderr}");
    assert_eq!(stdout.as_bytes(), crlf(&m));
}

fn curl_lists_over_stls_with_ssl_reqd(backend: Backend) {
    let fx = Fixture::with_tls().on(backend);
    let d1 = fx.deliver(USER, &message(1));
    let d2 = fx.deliver(USER, &message(2));
    let server = fx.start();
    let cert = fx.cert().to_str().expect("a UTF-8 path");
    let url = format!("pop3://127.0.0.1:{}/", server.addr.port());
    let (code, stdout, stderr) = curl(&["--ssl-reqd", "--cacert", cert, &url]);
    assert_eq!(code, Some(0), "curl --ssl-reqd {url}: {stderr}");
    assert_eq!(
        stdout,
        format!("1 {}\r\n2 {}\r\n", d1.wire_size, d2.wire_size)
    );
}

fn curl_refuses_a_certificate_it_does_not_trust(backend: Backend) {
    let fx = Fixture::with_tls().on(backend);
    fx.deliver(USER, &message(1));
    let server = fx.start();
    let pop3s = format!("pop3s://127.0.0.1:{}/1", server.pop3s().port());
    let stls = format!("pop3://127.0.0.1:{}/", server.addr.port());
    // 60: CURLE_PEER_FAILED_VERIFICATION. Without --cacert, curl uses the system's CAs.
    let (code, _, stderr) = curl(&[&pop3s]);
    assert_eq!(code, Some(60), "curl {pop3s} without --cacert: {stderr}");
    let (code, _, stderr) = curl(&["--ssl-reqd", &stls]);
    assert_eq!(
        code,
        Some(60),
        "curl --ssl-reqd {stls} without --cacert: {stderr}"
    );
    // Nor with another self-signed certificate for the same names.
    let other = tempfile::tempdir().expect("a temporary folder");
    let other = facteur_tls::write_self_signed(other.path()).expect("another certificate");
    let other_cert = other.certificate.to_str().expect("a UTF-8 path");
    let (code, _, stderr) = curl(&["--cacert", other_cert, &pop3s]);
    assert_eq!(code, Some(60), "curl {pop3s} with another CA: {stderr}");
    // No message was touched by any of it.
    assert_eq!(fx.message_count(USER), 1);
}

/// POP3_SSL with a context trusting only cert.pem, the same with the system's CAs (refused),
/// then POP3 + stls(): CAPA before and after, a second STLS, a login, RETR, QUIT.
const POPLIB_TLS_SCRIPT: &str = r#"
import hashlib, poplib, ssl, sys
host, port, sport, cafile, user, password = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
ctx = ssl.create_default_context(cafile=cafile)
def digest(lines):
    return hashlib.sha256(b"".join(l + b"\r\n" for l in lines)).hexdigest()

p = poplib.POP3_SSL(host, sport, context=ctx, timeout=30)
print("POP3S", p.sock.version(), p.getwelcome()[:3].decode())
print("POP3S CAPA", " ".join(sorted(p.capa())))
p.user(user)
p.pass_(password)
print("POP3S STAT", *p.stat())
resp, lines, octets = p.retr(1)
print("POP3S RETR", octets, digest(lines))
print("POP3S QUIT", p.quit()[:3].decode())

try:
    poplib.POP3_SSL(host, sport, context=ssl.create_default_context(), timeout=30)
    print("UNTRUSTED accepted")
except ssl.SSLCertVerificationError:
    print("UNTRUSTED refused")

p = poplib.POP3(host, port, timeout=30)
print("PLAIN CAPA", " ".join(sorted(p.capa())))
print("STLS", p.stls(ctx)[:3].decode(), p.sock.version())
print("TLS CAPA", " ".join(sorted(p.capa())))
try:
    p._shortcmd("STLS")
    print("STLS AGAIN accepted")
except poplib.error_proto as e:
    print("STLS AGAIN", e.args[0][:4].decode())
p.user(user)
p.pass_(password)
print("TLS STAT", *p.stat())
resp, lines, octets = p.retr(1)
print("TLS RETR", octets, digest(lines))
print("TLS QUIT", p.quit()[:3].decode())
"#;

fn python_poplib_pop3_ssl_and_stls(backend: Backend) {
    let fx = Fixture::with_tls().on(backend);
    let m = message(1);
    let d = fx.deliver(USER, &m);
    let server = fx.start();
    let (code, stdout, stderr) = run(
        Command::new("python3")
            .arg("-c")
            .arg(POPLIB_TLS_SCRIPT)
            .arg("127.0.0.1")
            .arg(server.addr.port().to_string())
            .arg(server.pop3s().port().to_string())
            .arg(fx.cert())
            .arg(USER)
            .arg(PASSWORD),
        b"",
    );
    assert_eq!(code, Some(0), "python3 poplib failed:\n{stdout}\n{stderr}");
    let size = d.wire_size;
    let hash = sha256_hex(&crlf(&m));
    let tls_caps =
        "AUTH-RESP-CODE IMPLEMENTATION LANG PIPELINING RESP-CODES SASL TOP UIDL USER UTF8";
    let plain_caps =
        "AUTH-RESP-CODE IMPLEMENTATION LANG PIPELINING RESP-CODES SASL STLS TOP UIDL USER UTF8";
    let expected = format!(
        "POP3S TLSv1.3 +OK\n\
         POP3S CAPA {tls_caps}\n\
         POP3S STAT 1 {size}\n\
         POP3S RETR {size} {hash}\n\
         POP3S QUIT +OK\n\
         UNTRUSTED refused\n\
         PLAIN CAPA {plain_caps}\n\
         STLS +OK TLSv1.3\n\
         TLS CAPA {tls_caps}\n\
         STLS AGAIN -ERR\n\
         TLS STAT 1 {size}\n\
         TLS RETR {size} {hash}\n\
         TLS QUIT +OK\n"
    );
    assert_eq!(stdout, expected, "stderr:\n{stderr}");
}

/// Connect to the plain listener, send `bytes` (which begin with STLS) in one write, read the
/// `+OK` to STLS, and do the handshake. `None` if the server closed the connection instead
/// (an acceptable defence); a handshake that fails for another reason (such as clear text
/// where the ServerHello should be) panics.
fn stls_with_injection(addr: SocketAddr, ca: &Path, bytes: &[u8]) -> Option<Client> {
    let mut c = Client::connect(addr);
    c.send(bytes);
    let r = c.try_raw_line()?;
    assert_eq!(
        String::from_utf8_lossy(&r),
        "+OK begin TLS negotiation\r\n",
        "the answer to STLS"
    );
    match c.start_tls(ca) {
        Ok(()) => Some(c),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
            ) =>
        {
            None
        }
        Err(e) => panic!("the TLS handshake after STLS failed: {e}"),
    }
}

fn stls_injection_of_a_whole_command_is_never_answered(backend: Backend) {
    let fx = Fixture::with_tls().on(backend);
    let server = fx.start();
    let Some(mut c) = stls_with_injection(server.addr, fx.cert(), b"STLS\r\nCAPA\r\n") else {
        return;
    };
    // Had the CAPA sent in clear been kept, its listing would come first.
    assert_eq!(c.cmd("NOOP"), "+OK\r\n");
    c.send(b"QUIT\r\n");
    let rest = c.lines_until_closed();
    assert_eq!(rest.len(), 1, "after NOOP: {rest:?}");
    assert!(rest[0].starts_with("+OK"), "QUIT: {rest:?}");
}

fn stls_injection_of_a_partial_line_is_not_joined(backend: Backend) {
    let fx = Fixture::with_tls().on(backend);
    let server = fx.start();
    let Some(mut c) = stls_with_injection(server.addr, fx.cert(), b"STLS\r\nCA") else {
        return;
    };
    // "CA" from before the handshake and "PA" after it must not make a CAPA.
    c.send(b"PA\r\n");
    match c.try_raw_line() {
        None => {}
        Some(r) => {
            let r = String::from_utf8_lossy(&r).into_owned();
            assert!(r.starts_with("-ERR"), "PA after an injected CA: {r:?}");
            assert_eq!(c.cmd("NOOP"), "+OK\r\n");
            c.quit();
        }
    }
}

fn stls_injection_of_a_login_does_not_log_in(backend: Backend) {
    let fx = Fixture::with_tls().on(backend);
    fx.deliver(USER, &message(1));
    let server = fx.start();
    let injected = format!("STLS\r\nUSER {USER}\r\nPASS {PASSWORD}\r\n");
    let Some(mut c) = stls_with_injection(server.addr, fx.cert(), injected.as_bytes()) else {
        return;
    };
    // Still in AUTHORIZATION: neither USER nor PASS was run.
    let r = c.cmd("STAT");
    assert!(r.starts_with("-ERR"), "STAT after an injected login: {r:?}");
    let r = c.cmd(&format!("PASS {PASSWORD}"));
    assert!(r.starts_with("-ERR"), "PASS after an injected USER: {r:?}");
    // The session goes on, and the client's own login works.
    assert!(c.cmd(&format!("USER {USER}")).starts_with("+OK"));
    assert!(c.cmd(&format!("PASS {PASSWORD}")).starts_with("+OK"));
    assert_eq!(c.stat().0, 1);
    c.quit();
}

fn stls_is_refused_after_login(backend: Backend) {
    let fx = Fixture::with_tls().on(backend);
    let server = fx.start();
    let mut c = server.login(USER, PASSWORD);
    let r = c.cmd("STLS");
    assert!(r.starts_with("-ERR"), "STLS after login: {r:?}");
    // Still a working clear-text session (nothing was taken for a handshake).
    assert_eq!(c.cmd("NOOP"), "+OK\r\n");
    assert!(!has_cap(&capa(&mut c), "STLS"));
    c.quit();
}

fn stls_is_refused_and_not_offered_without_a_certificate(backend: Backend) {
    let fx = Fixture::new().on(backend);
    fx.deliver(USER, &message(1));
    let server = fx.start();
    let mut c = server.connect();
    assert!(!has_cap(&capa(&mut c), "STLS"));
    let r = c.cmd("STLS");
    assert!(r.starts_with("-ERR"), "STLS without [tls]: {r:?}");
    // Still a working clear-text session.
    assert!(c.cmd(&format!("USER {USER}")).starts_with("+OK"));
    assert!(c.cmd(&format!("PASS {PASSWORD}")).starts_with("+OK"));
    c.quit();
    // A client that requires TLS gives up (64: CURLE_USE_SSL_FAILED) instead of logging in.
    let url = format!("pop3://127.0.0.1:{}/", server.addr.port());
    let (code, _, stderr) = curl(&["--ssl-reqd", &url]);
    assert_eq!(code, Some(64), "curl --ssl-reqd {url}: {stderr}");
}

fn pop3s_serves_a_session_and_does_not_offer_stls(backend: Backend) {
    let fx = Fixture::with_tls().on(backend);
    let small = message(1);
    // Larger than the TLS record size and the server's write buffer, with long lines.
    let mut big = b"Subject: big\n\n".to_vec();
    for i in 0..6000 {
        big.extend_from_slice(format!(".{i:05} {}\n", "y".repeat(90)).as_bytes());
    }
    let d1 = fx.deliver(USER, &small);
    let d2 = fx.deliver(USER, &big);
    let server = fx.start();
    let mut c = Client::connect_tls(server.pop3s(), fx.cert());
    assert_eq!(c.peer_certificate(), cert_der(fx.cert()));
    let caps = capa(&mut c);
    assert!(!has_cap(&caps, "STLS"), "STLS offered on POP3S: {caps:?}");
    assert!(has_cap(&caps, "USER"), "{caps:?}");
    let r = c.cmd("STLS");
    assert!(r.starts_with("-ERR"), "STLS on POP3S: {r:?}");
    assert!(c.cmd(&format!("USER {USER}")).starts_with("+OK"));
    assert!(c.cmd(&format!("PASS {PASSWORD}")).starts_with("+OK"));
    assert_eq!(c.list(), vec![(1, d1.wire_size), (2, d2.wire_size)]);
    assert_eq!(c.retrieve("RETR 1"), crlf(&small));
    assert_eq!(c.retrieve("RETR 2"), crlf(&big));
    assert!(c.cmd("DELE 1").starts_with("+OK"));
    c.quit();
    assert_eq!(fx.uids(USER), vec![delivered_base(&d2)]);
}

fn stls_then_capa_no_longer_offers_it_and_a_second_stls_is_refused(backend: Backend) {
    let fx = Fixture::with_tls().on(backend);
    let server = fx.start();
    let mut c = server.connect();
    assert!(has_cap(&capa(&mut c), "STLS"));
    c.stls(fx.cert());
    assert_eq!(c.peer_certificate(), cert_der(fx.cert()));
    assert!(!has_cap(&capa(&mut c), "STLS"));
    let r = c.cmd("STLS");
    assert!(r.starts_with("-ERR"), "a second STLS: {r:?}");
    assert!(c.is_tls());
    assert!(c.cmd(&format!("USER {USER}")).starts_with("+OK"));
    assert!(c.cmd(&format!("PASS {PASSWORD}")).starts_with("+OK"));
    c.quit();
}

/// RFC 8446 section 6.1: each party sends close_notify before closing its write side; a
/// client cannot tell a server's close without it from a truncation attack.
fn pop3s_and_stls_sessions_end_with_close_notify(backend: Backend) {
    let fx = Fixture::with_tls().on(backend);
    let server = fx.start();
    let mut c = Client::connect_tls(server.pop3s(), fx.cert());
    assert!(c.cmd("QUIT").starts_with("+OK"));
    c.expect_clean_tls_close();

    let mut c = server.connect();
    c.stls(fx.cert());
    assert!(c.cmd("QUIT").starts_with("+OK"));
    c.expect_clean_tls_close();
}

/// Replace the certificate and key at `dir` by a new self-signed pair (written aside, then
/// renamed over, so the server never reads half a file); returns the new certificate file.
fn replace_certificate(fx: &Fixture, aside: &Path) -> std::path::PathBuf {
    let new = facteur_tls::write_self_signed(aside).expect("a new certificate");
    let files = fx.tls.as_ref().expect("a fixture with a certificate");
    let cert_tmp = fx.path().join("cert.pem.new");
    let key_tmp = fx.path().join("key.pem.new");
    std::fs::copy(&new.certificate, &cert_tmp).expect("copy the new certificate");
    std::fs::copy(&new.private_key, &key_tmp).expect("copy the new key");
    std::fs::rename(&key_tmp, &files.private_key).expect("install the new key");
    std::fs::rename(&cert_tmp, &files.certificate).expect("install the new certificate");
    new.certificate
}

fn sighup_reloads_the_certificate_and_open_sessions_go_on(backend: Backend) {
    let fx = Fixture::with_tls().on(backend);
    fx.deliver(USER, &message(1));
    fx.deliver(CRYPT_USER, &message(2));
    let server = BinServer::start(&fx.config_path);
    let cert_a = fx.path().join("cert-a.pem");
    std::fs::copy(fx.cert(), &cert_a).expect("keep certificate A");
    let der_a = cert_der(&cert_a);

    // Two sessions opened before the reload, one POP3S and one STLS, both logged in.
    let mut pop3s = Client::connect_tls(server.pop3s(), &cert_a);
    assert_eq!(pop3s.peer_certificate(), der_a);
    assert!(pop3s.cmd(&format!("USER {USER}")).starts_with("+OK"));
    assert!(pop3s.cmd(&format!("PASS {PASSWORD}")).starts_with("+OK"));
    let mut stls = Client::connect(server.addr);
    stls.stls(&cert_a);
    assert_eq!(stls.peer_certificate(), der_a);
    assert!(stls.cmd(&format!("USER {CRYPT_USER}")).starts_with("+OK"));
    assert!(stls
        .cmd(&format!("PASS {CRYPT_PASSWORD}"))
        .starts_with("+OK"));

    let aside = tempfile::tempdir().expect("a temporary folder");
    let cert_b = replace_certificate(&fx, aside.path());
    let der_b = cert_der(&cert_b);
    assert_ne!(der_a, der_b);
    server.signal("HUP");
    server.wait_for_log("TLS certificate reloaded", 1);

    // New connections get certificate B, over POP3S and over STLS.
    let mut c = Client::connect_tls(server.pop3s(), &cert_b);
    assert_eq!(c.peer_certificate(), der_b);
    assert!(c.cmd("QUIT").starts_with("+OK"));
    let mut c = Client::connect(server.addr);
    c.stls(&cert_b);
    assert_eq!(c.peer_certificate(), der_b);
    assert!(c.cmd("QUIT").starts_with("+OK"));
    // A client that trusts only A no longer completes a handshake.
    let tcp = TcpStream::connect(server.pop3s()).expect("connect to POP3S");
    tcp.set_read_timeout(Some(READ_TIMEOUT))
        .expect("set a read timeout");
    assert!(tls_handshake(tcp, &cert_a).is_err());

    // The sessions opened before the reload still work, on certificate A.
    assert_eq!(pop3s.peer_certificate(), der_a);
    assert_eq!(pop3s.stat().0, 1);
    assert_eq!(pop3s.retrieve("RETR 1"), crlf(&message(1)));
    pop3s.quit();
    assert_eq!(stls.stat().0, 1);
    assert_eq!(stls.retrieve("RETR 1"), crlf(&message(2)));
    stls.quit();
}

fn sighup_with_a_broken_certificate_keeps_the_old_one(backend: Backend) {
    let fx = Fixture::with_tls().on(backend);
    let server = BinServer::start(&fx.config_path);
    let cert_a = fx.path().join("cert-a.pem");
    std::fs::copy(fx.cert(), &cert_a).expect("keep certificate A");
    let der_a = cert_der(&cert_a);
    let mut c = Client::connect_tls(server.pop3s(), &cert_a);
    assert!(c.cmd("QUIT").starts_with("+OK"));

    std::fs::write(fx.cert(), "not a certificate\n").expect("break the certificate");
    server.signal("HUP");
    server.wait_for_log("NOT reloaded", 1);

    // Still serving, still with A.
    let mut c = Client::connect_tls(server.pop3s(), &cert_a);
    assert_eq!(c.peer_certificate(), der_a);
    assert!(c.cmd(&format!("USER {USER}")).starts_with("+OK"));
    assert!(c.cmd(&format!("PASS {PASSWORD}")).starts_with("+OK"));
    c.quit();
}

fn commands_pipelined_before_stls_are_answered_in_clear_then_tls_begins(backend: Backend) {
    let fx = Fixture::with_tls().on(backend);
    let server = fx.start();
    let mut c = server.connect();
    c.send(b"NOOP\r\nCAPA\r\nSTLS\r\n");
    assert_eq!(c.line(), "+OK\r\n");
    assert!(c.line().starts_with("+OK"), "CAPA");
    let caps = String::from_utf8(c.body()).expect("a UTF-8 capability list");
    assert!(caps.contains("STLS\r\n"), "{caps}");
    assert_eq!(c.line(), "+OK begin TLS negotiation\r\n");
    c.start_tls(fx.cert()).expect("the TLS handshake");
    assert!(c.cmd(&format!("USER {USER}")).starts_with("+OK"));
    assert!(c.cmd(&format!("PASS {PASSWORD}")).starts_with("+OK"));
    c.quit();
}

fn silent_or_non_tls_clients_are_dropped_and_the_server_goes_on(backend: Backend) {
    let fx = Fixture::build("login_timeout_secs = 1\n", "", true).on(backend);
    let server = fx.start();

    // POP3S: clear text instead of a ClientHello.
    let mut tcp = TcpStream::connect(server.pop3s()).expect("connect to POP3S");
    tcp.set_read_timeout(Some(READ_TIMEOUT))
        .expect("set a read timeout");
    std::io::Write::write_all(&mut tcp, format!("USER {USER}\r\n").as_bytes())
        .expect("send clear text");
    let mut rest = Vec::new();
    let r = std::io::Read::read_to_end(&mut tcp, &mut rest);
    assert!(
        !rest.starts_with(b"+OK") && !rest.starts_with(b"-ERR"),
        "POP3 in clear on POP3S: {:?}",
        String::from_utf8_lossy(&rest)
    );
    if let Err(e) = r {
        assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "not closed");
        assert_ne!(e.kind(), std::io::ErrorKind::TimedOut, "not closed");
    }

    // POP3S: nothing at all; the login timeout ends it.
    let mut tcp = TcpStream::connect(server.pop3s()).expect("connect to POP3S");
    tcp.set_read_timeout(Some(READ_TIMEOUT))
        .expect("set a read timeout");
    let mut rest = Vec::new();
    match std::io::Read::read_to_end(&mut tcp, &mut rest) {
        Ok(_) => assert!(rest.is_empty(), "{rest:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }

    // STLS answered, then no handshake: the login timeout ends it too.
    let mut c = server.connect();
    assert!(c.cmd("STLS").starts_with("+OK"));
    assert_eq!(c.line_or_close(), None);

    // Meanwhile, and after, others are served.
    let mut c = Client::connect_tls(server.pop3s(), fx.cert());
    assert!(c.cmd(&format!("USER {USER}")).starts_with("+OK"));
    assert!(c.cmd(&format!("PASS {PASSWORD}")).starts_with("+OK"));
    c.quit();
}

fn sighup_without_tls_does_not_stop_the_server(backend: Backend) {
    let fx = Fixture::new().on(backend);
    let mut server = BinServer::start(&fx.config_path);
    // A session served proves the signal handlers are in place.
    server.login(USER, PASSWORD).quit();
    server.signal("HUP");
    server.signal("HUP");
    // Still serving (the default action of SIGHUP would have killed it).
    server.login(USER, PASSWORD).quit();
    assert!(
        server
            .child
            .try_wait()
            .expect("the server's status")
            .is_none(),
        "the server exited on SIGHUP; log:\n{}",
        server.log()
    );
}

both_backends!(
    openssl_s_client_starttls_session,
    curl_retrieves_over_pop3s,
    curl_lists_over_stls_with_ssl_reqd,
    curl_refuses_a_certificate_it_does_not_trust,
    python_poplib_pop3_ssl_and_stls,
    stls_injection_of_a_whole_command_is_never_answered,
    stls_injection_of_a_partial_line_is_not_joined,
    stls_injection_of_a_login_does_not_log_in,
    stls_is_refused_after_login,
    stls_is_refused_and_not_offered_without_a_certificate,
    pop3s_serves_a_session_and_does_not_offer_stls,
    stls_then_capa_no_longer_offers_it_and_a_second_stls_is_refused,
    pop3s_and_stls_sessions_end_with_close_notify,
    sighup_reloads_the_certificate_and_open_sessions_go_on,
    sighup_with_a_broken_certificate_keeps_the_old_one,
    commands_pipelined_before_stls_are_answered_in_clear_then_tls_begins,
    silent_or_non_tls_clients_are_dropped_and_the_server_goes_on,
    sighup_without_tls_does_not_stop_the_server,
);
