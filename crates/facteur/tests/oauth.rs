//! SASL OAUTHBEARER (RFC 7628) and XOAUTH2 end to end: tokens minted here with keys made here,
//! key sets from a file or from an HTTPS server the test runs on 127.0.0.1 (which also answers
//! RFC 7662 introspection), and real clients (curl, mpop).
//!
//! On the Maildir store only: the subject is the login, which is the same whatever the store
//! (the maildrop opened after it is the other tests' subject).

#![allow(
    clippy::unwrap_used,
    reason = "a test: a failed unwrap is a failed test"
)]

mod common;

#[path = "../../facteur-auth/tests/support/mint.rs"]
mod mint;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use common::{Client, Fixture, USER};
use mint::{claims, jwks, unsigned, Signer};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ISS: &str = "https://issuer.test";
const AUD: &str = "facteur";
const MESSAGE: &[u8] = b"Subject: token\r\n\r\nread with a bearer token\r\n";

/// The error JSON of the fixtures' `[oauth]`, as the continuation carries it.
const ERROR_JSON: &str = "{\"status\":\"invalid_token\",\"scope\":\"mail\",\
    \"openid-configuration\":\"https://issuer.test/.well-known/openid-configuration\"}";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(data: impl AsRef<[u8]>) -> String {
    BASE64.encode(data)
}

/// The `[oauth]` section and one issuer of this kind (the lines after `audience`).
fn oauth_section(issuer_lines: &str) -> String {
    format!(
        "[oauth]\nscope = \"mail\"\n\
         openid_configuration = \"https://issuer.test/.well-known/openid-configuration\"\n\
         ca_file = \"cert.pem\"\n\n\
         [[oauth.issuer]]\nissuer = \"{ISS}\"\naudience = \"{AUD}\"\n{issuer_lines}\n"
    )
}

/// A fixture with a certificate, an issuer whose keys are `signers` in `jwks.json`, and a
/// message for alice. Failed logins cost 1 ms, so that a test of many refusals is quick.
fn jwks_file_fixture(signers: &[&Signer]) -> Fixture {
    let fx = Fixture::build(
        "failed_login_delay_ms = 1\nmax_failed_login_delay_ms = 2\nshutdown_grace_secs = 1\n",
        "",
        true,
    );
    std::fs::write(fx.path().join("jwks.json"), jwks(signers)).unwrap();
    let fx = fx.with_config_tail(&oauth_section("jwks_file = \"jwks.json\""));
    fx.deliver(USER, MESSAGE);
    fx
}

fn oauthbearer(authzid: &str, token: &str) -> String {
    b64(format!(
        "n,{authzid},\x01host=127.0.0.1\x01port=110\x01auth=Bearer {token}\x01\x01"
    ))
}

/// AUTH OAUTHBEARER with the message after the empty challenge; the status line that answers it.
fn auth(c: &mut Client, mechanism: &str, message: &str) -> String {
    assert_eq!(c.cmd(&format!("AUTH {mechanism}")), "+ \r\n");
    c.cmd(message).trim_end().to_string()
}

/// A refused token: the error JSON as a continuation, then, once answered, `-ERR [AUTH]`.
fn assert_refused(c: &mut Client, reply: &str, answer: &str, what: &str) {
    let json = reply
        .strip_prefix("+ ")
        .unwrap_or_else(|| panic!("{what}: expected the error continuation, got {reply:?}"));
    assert_eq!(
        String::from_utf8(BASE64.decode(json).unwrap()).unwrap(),
        ERROR_JSON,
        "{what}"
    );
    let end = c.cmd(answer);
    assert!(end.starts_with("-ERR [AUTH]"), "{what}: {end:?}");
}

#[test]
fn a_good_token_logs_in_and_retrieves() {
    let key = Signer::rs256("k1");
    let fx = jwks_file_fixture(&[&key]);
    let server = fx.start();
    let token = key.sign(&claims(ISS, AUD, USER, now()));
    // Offered where PLAIN is: here, on loopback.
    let mut c = server.connect();
    c.send(b"CAPA\r\n");
    assert!(c.line().starts_with("+OK"));
    let capa = String::from_utf8(c.body()).unwrap();
    assert!(
        capa.contains("SASL PLAIN LOGIN OAUTHBEARER XOAUTH2\r\n"),
        "{capa}"
    );
    assert!(auth(&mut c, "OAUTHBEARER", &oauthbearer("a=alice", &token)).starts_with("+OK"));
    assert_eq!(c.stat().0, 1);
    assert!(c
        .retrieve("RETR 1")
        .ends_with(b"read with a bearer token\r\n"));
    c.quit();
    // Without an authorization identity; and as XOAUTH2.
    let mut c = server.connect();
    assert!(auth(&mut c, "OAUTHBEARER", &oauthbearer("", &token)).starts_with("+OK"));
    c.quit();
    let mut c = server.connect();
    let xoauth2 = b64(format!("user=alice\x01auth=Bearer {token}\x01\x01"));
    assert!(auth(&mut c, "XOAUTH2", &xoauth2).starts_with("+OK"));
    c.quit();
}

#[test]
fn bad_tokens_get_the_error_json_then_err() {
    let key = Signer::es256("k1");
    let other = Signer::es256("k1");
    let fx = jwks_file_fixture(&[&key]);
    std::fs::write(
        fx.path().join("users"),
        format!(
            "{}bob:{{PLAIN}}x\n",
            std::fs::read_to_string(fx.path().join("users")).unwrap()
        ),
    )
    .unwrap();
    let server = fx.start();
    let t = now();
    let base = claims(ISS, AUD, USER, t);
    let with = |key: &str, value: serde_json::Value| {
        let mut c = base.clone();
        c[key] = value;
        c
    };
    let cases = [
        (
            "expired",
            oauthbearer("", &key.sign(&with("exp", json!(t - 3600)))),
        ),
        (
            "wrong audience",
            oauthbearer("", &key.sign(&with("aud", json!("other")))),
        ),
        (
            "wrong issuer",
            oauthbearer("", &key.sign(&with("iss", json!("https://evil.test")))),
        ),
        ("bad signature", oauthbearer("", &other.sign(&base))),
        ("alg none", oauthbearer("", &unsigned(&base))),
        (
            "unknown user",
            oauthbearer("", &key.sign(&with("email", json!("nobody")))),
        ),
        ("authzid mismatch", oauthbearer("a=bob", &key.sign(&base))),
    ];
    for (what, message) in cases {
        let mut c = server.connect();
        let reply = auth(&mut c, "OAUTHBEARER", &message);
        assert_refused(&mut c, &reply, "AQ==", what);
        // The session goes on: the right token still logs in.
        let good = oauthbearer("", &key.sign(&base));
        assert!(
            auth(&mut c, "OAUTHBEARER", &good).starts_with("+OK"),
            "{what}"
        );
        c.quit();
    }
    // XOAUTH2 clients answer the error with an empty line.
    let mut c = server.connect();
    let expired = key.sign(&with("exp", json!(t - 3600)));
    let reply = auth(
        &mut c,
        "XOAUTH2",
        &b64(format!("user=alice\x01auth=Bearer {expired}\x01\x01")),
    );
    assert_refused(&mut c, &reply, "", "XOAUTH2 expired");
    // A malformed message is no token check: -ERR at once.
    let reply = auth(&mut c, "OAUTHBEARER", &b64("n,,auth=Bearer x\x01\x01"));
    assert!(reply.starts_with("-ERR"), "{reply}");
}

#[test]
fn not_offered_without_an_issuer_or_where_passwords_are_refused() {
    let key = Signer::eddsa("k1");
    // No issuer: not offered, and refused as unknown.
    let fx = Fixture::with_tls();
    let server = fx.start();
    let mut c = server.connect();
    c.send(b"CAPA\r\n");
    c.line();
    let capa = String::from_utf8(c.body()).unwrap();
    assert!(
        !capa.contains("OAUTHBEARER") && !capa.contains("XOAUTH2"),
        "{capa}"
    );
    assert!(c.cmd("AUTH OAUTHBEARER").starts_with("-ERR"));
    drop(server);
    // plaintext_auth = "never": only after STLS.
    let fx = Fixture::build(common::DEFAULT_LIMITS, "plaintext_auth = \"never\"\n", true);
    std::fs::write(fx.path().join("jwks.json"), jwks(&[&key])).unwrap();
    let fx = fx.with_config_tail(&oauth_section("jwks_file = \"jwks.json\""));
    fx.deliver(USER, MESSAGE);
    let server = fx.start();
    let mut c = server.connect();
    c.send(b"CAPA\r\n");
    c.line();
    let capa = String::from_utf8(c.body()).unwrap();
    assert!(!capa.contains("OAUTHBEARER"), "{capa}");
    assert!(c.cmd("AUTH OAUTHBEARER").starts_with("-ERR"));
    c.stls(fx.cert());
    let token = key.sign(&claims(ISS, AUD, USER, now()));
    assert!(auth(&mut c, "OAUTHBEARER", &oauthbearer("", &token)).starts_with("+OK"));
    c.quit();
}

/// An HTTPS server on 127.0.0.1 with the fixture's certificate: `GET /jwks` answers the key
/// set (chunked), `POST /introspect` the introspection answer (with a Content-Length). Every
/// request is recorded.
struct IssuerServer {
    addr: SocketAddr,
    jwks: Arc<Mutex<String>>,
    introspection: Arc<Mutex<String>>,
    requests: Arc<Mutex<Vec<String>>>,
    _rt: tokio::runtime::Runtime,
}

impl IssuerServer {
    fn start(fx: &Fixture) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let tls = facteur_tls::TlsState::new(fx.tls.clone().unwrap()).unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let jwks = Arc::new(Mutex::new(String::new()));
        let introspection = Arc::new(Mutex::new(String::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (j, i, r) = (jwks.clone(), introspection.clone(), requests.clone());
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = tls.acceptor();
                let (j, i, r) = (j.clone(), i.clone(), r.clone());
                tokio::spawn(tokio::time::timeout(Duration::from_secs(30), async move {
                    let Ok(mut s) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut raw = Vec::new();
                    let mut block = [0u8; 4096];
                    loop {
                        let n = s.read(&mut block).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        raw.extend_from_slice(&block[..n]);
                        let text = String::from_utf8_lossy(&raw).into_owned();
                        if let Some(at) = text.find("\r\n\r\n") {
                            let length = text[..at]
                                .lines()
                                .find_map(|l| l.strip_prefix("Content-Length: "))
                                .map_or(0, |n| n.parse::<usize>().unwrap());
                            if raw.len() >= at + 4 + length {
                                break;
                            }
                        }
                    }
                    let request = String::from_utf8_lossy(&raw).into_owned();
                    r.lock().unwrap().push(request.clone());
                    let reply = if request.starts_with("GET /jwks ") {
                        let body = j.lock().unwrap().clone();
                        let (a, b) = body.split_at(body.len() / 2);
                        format!(
                            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                             {:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                            a.len(),
                            b.len()
                        )
                    } else if request.starts_with("POST /introspect ") {
                        let body = i.lock().unwrap().clone();
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                    } else {
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string()
                    };
                    let _ = s.write_all(reply.as_bytes()).await;
                    let _ = s.shutdown().await;
                }));
            }
        });
        Self {
            addr,
            jwks,
            introspection,
            requests,
            _rt: rt,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

#[test]
fn a_key_set_at_an_https_url_is_fetched_and_kept() {
    let fx = Fixture::build(
        "failed_login_delay_ms = 1\nmax_failed_login_delay_ms = 2\nshutdown_grace_secs = 1\n",
        "",
        true,
    );
    let issuer = IssuerServer::start(&fx);
    let key = Signer::ps256("k1");
    *issuer.jwks.lock().unwrap() = jwks(&[&key]);
    let url = format!("https://localhost:{}/jwks", issuer.addr.port());
    let fx = fx.with_config_tail(&oauth_section(&format!("jwks_url = \"{url}\"")));
    fx.deliver(USER, MESSAGE);
    let server = fx.start();
    let token = key.sign(&claims(ISS, AUD, USER, now()));
    for _ in 0..3 {
        let mut c = server.connect();
        assert!(auth(&mut c, "OAUTHBEARER", &oauthbearer("", &token)).starts_with("+OK"));
        c.quit();
    }
    let requests = issuer.requests();
    assert_eq!(requests.len(), 1, "fetched once, then kept: {requests:?}");
    assert!(
        requests[0].starts_with("GET /jwks HTTP/1.1\r\n"),
        "{}",
        requests[0]
    );
    // Random key ids cost no fetch (the first fetch was under 30 s ago).
    for i in 0..5 {
        let header = json!({"alg": "PS256", "kid": format!("random{i}")});
        let forged = key.sign_with_header(&header, &claims(ISS, AUD, USER, now()));
        let mut c = server.connect();
        let reply = auth(&mut c, "OAUTHBEARER", &oauthbearer("", &forged));
        assert_refused(&mut c, &reply, "AQ==", "random kid");
    }
    assert_eq!(issuer.requests().len(), 1);
}

#[test]
fn opaque_tokens_are_introspected() {
    let fx = Fixture::build(
        "failed_login_delay_ms = 1\nmax_failed_login_delay_ms = 2\nshutdown_grace_secs = 1\n",
        "",
        true,
    );
    let issuer = IssuerServer::start(&fx);
    std::fs::write(fx.path().join("client-secret"), "s3cret\n").unwrap();
    let url = format!("https://127.0.0.1:{}/introspect", issuer.addr.port());
    let fx = fx.with_config_tail(&oauth_section(&format!(
        "introspection_url = \"{url}\"\nclient_id = \"pop\"\nclient_secret_file = \"client-secret\""
    )));
    fx.deliver(USER, MESSAGE);
    let server = fx.start();
    *issuer.introspection.lock().unwrap() =
        json!({"active": true, "email": USER, "aud": AUD, "iss": ISS, "exp": now() + 600})
            .to_string();
    let mut c = server.connect();
    assert!(auth(&mut c, "OAUTHBEARER", &oauthbearer("", "opaque-1")).starts_with("+OK"));
    c.quit();
    let requests = issuer.requests();
    assert_eq!(requests.len(), 1);
    let basic = format!("Authorization: Basic {}\r\n", b64("pop:s3cret"));
    assert!(requests[0].starts_with("POST /introspect HTTP/1.1\r\n"));
    assert!(requests[0].contains(&basic), "{}", requests[0]);
    assert!(requests[0].ends_with("\r\n\r\ntoken=opaque-1&token_type_hint=access_token"));
    // Inactive: refused with the error JSON.
    *issuer.introspection.lock().unwrap() = json!({"active": false}).to_string();
    let mut c = server.connect();
    let reply = auth(&mut c, "OAUTHBEARER", &oauthbearer("", "opaque-2"));
    assert_refused(&mut c, &reply, "AQ==", "inactive");
    // The first answer is kept: the same token logs in without a new request.
    assert!(auth(&mut c, "OAUTHBEARER", &oauthbearer("", "opaque-1")).starts_with("+OK"));
    assert_eq!(issuer.requests().len(), 2);
}

/// The fixture's own certificate is what curl and mpop trust.
fn curl_retrieves(fx: &Fixture, addr: SocketAddr, token: &str, extra: &[&str]) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["-s", "-S", "--max-time", "30", "--cacert"])
        .arg(fx.cert())
        .args(["-u", "alice:", "--oauth2-bearer", token])
        .args(extra)
        .arg(format!("pop3s://localhost:{}/1", addr.port()))
        .output()
        .expect("run curl (the CI script installs it)");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn curl_logs_in_with_a_bearer_token() {
    let key = Signer::rs256("k1");
    let fx = jwks_file_fixture(&[&key]);
    let server = fx.start();
    let token = key.sign(&claims(ISS, AUD, USER, now()));
    // curl picks OAUTHBEARER from CAPA; asked, XOAUTH2.
    let body = curl_retrieves(&fx, server.pop3s(), &token, &[]);
    assert!(body.ends_with(b"read with a bearer token\r\n"), "{body:?}");
    let body = curl_retrieves(
        &fx,
        server.pop3s(),
        &token,
        &["--login-options", "AUTH=XOAUTH2"],
    );
    assert!(body.ends_with(b"read with a bearer token\r\n"), "{body:?}");
    // An expired token: curl fails.
    let expired = key.sign(&json!({"iss": ISS, "aud": AUD, "email": USER, "exp": now() - 3600}));
    let out = Command::new("curl")
        .args(["-s", "--max-time", "30", "--cacert"])
        .arg(fx.cert())
        .args(["-u", "alice:", "--oauth2-bearer", &expired])
        .arg(format!("pop3s://localhost:{}/1", server.pop3s().port()))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// mpop with `auth oauthbearer` and the token from `passwordeval`. Skipped when mpop is not
/// installed, unless FACTEUR_REQUIRE_MPOP is set (the CI script installs mpop and sets it).
#[test]
fn mpop_logs_in_with_a_bearer_token() {
    if Command::new("mpop").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("FACTEUR_REQUIRE_MPOP").is_none(),
            "mpop is required here (FACTEUR_REQUIRE_MPOP) but not installed"
        );
        eprintln!("skipped: mpop is not installed");
        return;
    }
    let key = Signer::es256("k1");
    let fx = jwks_file_fixture(&[&key]);
    let server = fx.start();
    let token = key.sign(&claims(ISS, AUD, USER, now()));
    let dir = fx.path();
    std::fs::write(dir.join("token"), &token).unwrap();
    let out_mbox = dir.join("out.mbox");
    std::fs::write(&out_mbox, "").unwrap();
    let rc = dir.join("mpoprc");
    std::fs::write(
        &rc,
        format!(
            "account default\nhost localhost\nport {}\ntls on\ntls_starttls off\n\
             tls_trust_file {}\nuser alice\nauth oauthbearer\npasswordeval cat {}\n\
             delivery mbox {}\nkeep on\nuidls_file {}\n",
            server.pop3s().port(),
            fx.cert().display(),
            dir.join("token").display(),
            out_mbox.display(),
            dir.join("uidls").display()
        ),
    )
    .unwrap();
    set_private(&rc);
    let out = Command::new("mpop")
        .arg("-C")
        .arg(&rc)
        .arg("-q")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mpop: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let got = std::fs::read_to_string(&out_mbox).unwrap();
    assert!(got.contains("read with a bearer token"), "{got}");
}

fn set_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// `facteur fetch` with `token_command`, against facteur itself over POP3S: OAUTHBEARER chosen
/// from CAPA; the token never shows in `--trace`; a refused token is exit status 5 with the
/// error's status; a token command that fails or prints no token is a configuration error.
#[test]
fn the_fetcher_logs_in_with_token_command() {
    let key = Signer::rs256("k1");
    let fx = jwks_file_fixture(&[&key]);
    let server = fx.start();
    let dir = tempfile::tempdir().unwrap();
    let token = key.sign(&claims(ISS, AUD, USER, now()));
    std::fs::write(dir.path().join("token"), format!("{token}\n")).unwrap();
    let config = |auth: &str, command: &str| {
        let path = dir.path().join("fetch.toml");
        std::fs::write(
            &path,
            format!(
                "state_dir = \"state\"\n[[account]]\nname = \"tok\"\n\
                 url = \"pop3s://{USER}@localhost:{}\"\nca_file = \"{}\"\n{auth}\
                 token_command = \"{command}\"\nmaildir = \"Maildir\"\nkeep = true\n",
                server.pop3s().port(),
                fx.cert().display()
            ),
        )
        .unwrap();
        path
    };
    let run = |path: &Path, trace: bool| {
        let mut cmd = common::facteur();
        cmd.arg("fetch").arg("--config").arg(path);
        if trace {
            cmd.arg("--trace");
        }
        common::run_with_input(&mut cmd, b"")
    };
    let cat = format!("cat {}", dir.path().join("token").display());
    let path = config("", &cat);
    let (code, out, err) = run(&path, true);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("tok: 1 message fetched"), "{out}");
    let all = format!("{out}{err}");
    assert!(all.contains("AUTH OAUTHBEARER"), "{all}");
    assert!(
        !all.contains(&token[token.len() - 40..]),
        "the token in the trace: {all}"
    );
    let fetched = std::fs::read_dir(dir.path().join("Maildir/new"))
        .unwrap()
        .count();
    assert_eq!(fetched, 1);
    // XOAUTH2 when asked.
    fx.deliver(USER, b"Subject: two\r\n\r\nsecond\r\n");
    let path = config("auth = \"xoauth2\"\n", &cat);
    let (code, out, err) = run(&path, true);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(format!("{out}{err}").contains("AUTH XOAUTH2"), "{out}{err}");
    // A refused token: status 5, and the error's status said.
    let expired = key.sign(&json!({"iss": ISS, "aud": AUD, "email": USER, "exp": now() - 3600}));
    std::fs::write(dir.path().join("token"), &expired).unwrap();
    let path = config("", &cat);
    let (code, out, err) = run(&path, false);
    assert_eq!(code, Some(5), "{out}{err}");
    assert!(err.contains("invalid_token"), "{err}");
    // A token command that fails, or prints nothing: a configuration error, no connection.
    for command in ["exit 3", "true", "echo two words"] {
        let path = config("", command);
        let (code, out, err) = run(&path, false);
        assert_eq!(code, Some(2), "{command}: {out}{err}");
        assert!(err.contains("token_command"), "{command}: {err}");
    }
    // token_command with a password method is refused.
    let path = config("auth = \"plain\"\n", &cat);
    let (code, _, err) = run(&path, false);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("token_command gives a bearer token"), "{err}");
}

/// The real binary: a refused token is one login line with the method and the reason, never
/// the token; `check-config` lists the issuers, and fails on a key file that does not load.
#[test]
fn the_log_and_check_config() {
    let key = Signer::rs256("k1");
    let fx = jwks_file_fixture(&[&key]);
    let out = common::cli_ok(&fx.config_path, &["check-config"], b"");
    assert!(
        out.contains("OAuth: OAUTHBEARER and XOAUTH2 where PLAIN is offered, for https://issuer.test (keys in"),
        "{out}"
    );
    let server = common::BinServer::start(&fx.config_path);
    let expired = key.sign(&json!({"iss": ISS, "aud": AUD, "email": USER, "exp": now() - 3600}));
    let mut c = Client::connect(server.addr);
    let reply = auth(&mut c, "OAUTHBEARER", &oauthbearer("", &expired));
    assert_refused(&mut c, &reply, "AQ==", "expired");
    let good = key.sign(&claims(ISS, AUD, USER, now()));
    assert!(auth(
        &mut c,
        "XOAUTH2",
        &b64(format!("user=alice\x01auth=Bearer {good}\x01\x01"))
    )
    .starts_with("+OK"));
    c.quit();
    let log = server.wait_for_log("method=SASL/XOAUTH2 outcome=ok", 1);
    // The user the refused token claims (unverified) is named, as a refused password's.
    assert!(
        log.contains(
            "user=\"alice\" method=SASL/OAUTHBEARER outcome=failed reason=\"bad token: expired\""
        ),
        "{log}"
    );
    let signature = |t: &str| t.rsplit('.').next().unwrap().to_string();
    assert!(
        !log.contains(&signature(&expired)) && !log.contains(&signature(&good)),
        "{log}"
    );
    drop(server);
    // A key file that is no key set: check-config (and serve) refuse it, naming it.
    std::fs::write(fx.path().join("jwks.json"), "{\"keys\": []}").unwrap();
    let (code, out, err) = common::cli_with(&fx.config_path, &["check-config"], b"");
    assert_ne!(code, Some(0), "{out}");
    assert!(
        err.contains("jwks.json") && err.contains("no key facteur can use"),
        "{err}"
    );
}

/// The README's "OAuth" example is a configuration facteur takes.
#[test]
fn the_readme_example_parses() {
    let readme = include_str!("../../../README.md");
    let section = readme
        .split("## OAuth: OAUTHBEARER and XOAUTH2")
        .nth(1)
        .expect("the README has an OAuth section");
    let toml = section
        .split("```toml\n")
        .nth(1)
        .and_then(|block| block.split("```").next())
        .expect("a toml block in that section");
    let text =
        format!("{toml}\n[auth]\npasswd_file = \"users\"\n[store]\nmaildir = \"/var/mail/%u\"\n");
    let cfg = facteur_server::config::Config::parse(&text, Path::new("/etc/facteur/facteur.toml"))
        .expect("the README's configuration parses");
    assert_eq!(cfg.oauth.issuer.len(), 2);
    assert_eq!(
        cfg.oauth.issuer[1].client_secret_file.as_deref(),
        Some(Path::new("/etc/facteur/introspection-secret"))
    );
}
