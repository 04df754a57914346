//! `facteur fetch` without surprises: a maildrop is fetched once whatever the port, the TLS mode
//! or the name of its server; states of older versions are adopted; a message the server
//! refuses to send is an error even with `--quiet`; TLS errors say what is wrong and what to do;
//! a pinned self-signed certificate made by `openssl req -x509` (CA:TRUE) is accepted.
//!
//! The server here runs on the Maildir store only: the subject is the fetcher, the POP3 client,
//! and the server it fetches from is a means (the store behind it is not what is tested).

// The helpers below are test code too: a failed unwrap there is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use facteur_fetch::auth::AuthMethod;
use facteur_fetch::config::{Account, DeletePolicy, DestinationSpec, Limits, PasswordSource};
use facteur_fetch::fetch::{fetch_account, FetchError, Report, RunOptions, EXIT_LOCKED};
use facteur_fetch::{Security, Target};
use facteur_proto::Secret;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A server with TLS, and a folder for the fetcher's side.
struct Env {
    fx: Fixture,
    server: Server,
    local: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Self::with_cert(None)
    }

    /// A server whose certificate and key are these PEM texts (or the fixture's own).
    fn with_cert(cert_and_key: Option<(&str, &str)>) -> Self {
        let fx = Fixture::with_tls();
        if let Some((cert, key)) = cert_and_key {
            std::fs::write(fx.path().join("cert.pem"), cert).unwrap();
            std::fs::write(fx.path().join("key.pem"), key).unwrap();
        }
        let server = fx.start();
        Self {
            fx,
            server,
            local: tempfile::tempdir().unwrap(),
        }
    }

    fn maildir(&self) -> PathBuf {
        self.local.path().join("Maildir")
    }

    fn state_dir(&self) -> PathBuf {
        self.local.path().join("state")
    }

    fn opts(&self) -> RunOptions {
        RunOptions {
            state_dir: self.state_dir(),
            dry_run: false,
            now: None,
            fault: None,
            trace: None,
        }
    }

    fn account(&self, host: &str, security: Security, ca_file: Option<&Path>) -> Account {
        let port = match security {
            Security::Tls => self.server.pop3s().port(),
            Security::Starttls | Security::Plaintext => self.server.addr.port(),
        };
        Account {
            name: format!("{host}:{port}"),
            identity: None,
            target: Target {
                host: host.into(),
                port,
                security,
                ca_file: ca_file.map(Path::to_path_buf),
            },
            user: USER.into(),
            auth: AuthMethod::Auto,
            password: PasswordSource::Inline(Secret::new(PASSWORD.into())),
            destination: DestinationSpec::Maildir(self.maildir()),
            policy: DeletePolicy::Keep,
            limits: Limits::default(),
            timeout: Duration::from_secs(10),
            maildir_sync: Default::default(),
        }
    }

    fn deliver(&self, n: usize) {
        for i in 0..n {
            self.fx
                .deliver(USER, format!("Subject: m{i}\n\nbody {i}\n").as_bytes());
        }
    }

    fn write_pem(&self, name: &str, pem: &str) -> PathBuf {
        let path = self.local.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path
    }

    fn local_count(&self) -> usize {
        ["new", "cur"]
            .iter()
            .map(|s| {
                std::fs::read_dir(self.maildir().join(s))
                    .map(|d| d.count())
                    .unwrap_or(0)
            })
            .sum()
    }

    fn state_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.state_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }
}

/// One run; again while the maildrop is still locked by the session of the run before.
fn fetch(account: &Account, opts: &RunOptions) -> Result<Report, FetchError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bar = indicatif::ProgressBar::hidden();
    let password = Secret::new(PASSWORD.to_string());
    for _ in 0..200 {
        match rt.block_on(fetch_account(account, &password, opts, &bar)) {
            Err(e) if e.to_string().contains("IN-USE") => {
                std::thread::sleep(Duration::from_millis(25))
            }
            other => return other,
        }
    }
    panic!("the maildrop stayed locked");
}

fn fetched(account: &Account, opts: &RunOptions) -> u64 {
    fetch(account, opts)
        .unwrap_or_else(|e| panic!("{}: {e}", account.name))
        .fetched
}

fn tls_error(account: &Account, opts: &RunOptions) -> String {
    let e = fetch(account, opts).expect_err("the certificate must be refused");
    let text = e.to_string();
    assert_eq!(e.exit_code(), 4, "{text}");
    for internal in ["Other(", "OtherError", "{", "[6,", "Context"] {
        assert!(!text.contains(internal), "rustls internals in: {text}");
    }
    text
}

#[test]
fn tls_mode_port_and_host_alias_share_one_state() {
    let env = Env::new();
    env.deliver(3);
    let ca = env.fx.cert().to_path_buf();
    let opts = env.opts();
    let pop3s = env.account("127.0.0.1", Security::Tls, Some(&ca));
    assert_eq!(fetched(&pop3s, &opts), 3);
    let stls = env.account("localhost", Security::Starttls, Some(&ca));
    assert_eq!(
        fetched(&stls, &opts),
        0,
        "STLS on another port fetched again"
    );
    let plain = env.account("LocalHost", Security::Plaintext, None);
    assert_eq!(fetched(&plain, &opts), 0, "a host alias fetched again");
    env.deliver(1);
    let plain = env.account("127.0.0.1", Security::Plaintext, None);
    assert_eq!(fetched(&plain, &opts), 1);
    assert_eq!(env.local_count(), 4);
    assert_eq!(
        env.state_files(),
        [
            format!("{USER}@localhost.lock"),
            format!("{USER}@localhost.state")
        ]
    );
}

#[test]
fn states_of_older_versions_are_adopted() {
    let env = Env::new();
    env.deliver(4);
    let mut c = Client::login(env.server.addr, USER, PASSWORD);
    let uids: Vec<String> = c.uidl().into_iter().map(|(_, u)| u).collect();
    c.quit();
    let dir = env.state_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let port = env.server.addr.port();
    let header = "facteur-fetch-state 1";
    // Two states of the same maildrop (two ports, two names), one with only a journal.
    std::fs::write(
        dir.join(format!("{USER}@127.0.0.1_{port}.state")),
        format!("{header}\n{} 100\n{} 100\n", uids[0], uids[1]),
    )
    .unwrap();
    std::fs::write(
        dir.join(format!("{USER}@localhost_995.journal")),
        format!("D {} 200\n", uids[2]),
    )
    .unwrap();
    // Another user and another server: left alone.
    let others = [
        format!("bob@127.0.0.1_{port}.state"),
        format!("{USER}@10.0.0.1_995.state"),
    ];
    for o in &others {
        std::fs::write(dir.join(o), format!("{header}\n{} 100\n", uids[3])).unwrap();
    }

    // --dry-run reads them and changes nothing.
    let a = env.account("localhost", Security::Plaintext, None);
    let dry = RunOptions {
        dry_run: true,
        ..env.opts()
    };
    let r = fetch(&a, &dry).unwrap();
    assert_eq!(r.plan.fetch.len(), 1, "{:?}", r.plan);
    assert_eq!(r.plan.fetch[0].uid.as_ref().unwrap().as_str(), uids[3]);
    assert!(dir.join(format!("{USER}@localhost_995.journal")).exists());

    assert_eq!(fetched(&a, &env.opts()), 1);
    assert_eq!(env.local_count(), 1);
    let mut expected = vec![
        format!("{USER}@localhost.lock"),
        format!("{USER}@localhost.state"),
    ];
    expected.extend(others.iter().cloned());
    expected.sort();
    assert_eq!(env.state_files(), expected);
    assert_eq!(fetched(&a, &env.opts()), 0);
}

#[test]
fn an_interrupted_commit_of_an_older_version_is_settled_when_adopted() {
    let env = Env::new();
    env.deliver(2);
    let mut c = Client::login(env.server.addr, USER, PASSWORD);
    let uids: Vec<String> = c.uidl().into_iter().map(|(_, u)| u).collect();
    c.quit();
    // The older version had written message 1 whole into tmp/ and its P line, then crashed.
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(env.maildir().join(sub)).unwrap();
    }
    std::fs::write(env.maildir().join("tmp/old.1"), "Subject: m0\n\nbody 0\n").unwrap();
    let dir = env.state_dir();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(format!(
            "{USER}@127.0.0.1_{}.journal",
            env.server.addr.port()
        )),
        format!(
            "P {} maildir {} old.1 old.1,S=20\n",
            uids[0],
            env.maildir().display()
        ),
    )
    .unwrap();
    let a = env.account("localhost", Security::Plaintext, None);
    let r = fetch(&a, &env.opts()).unwrap();
    assert_eq!((r.recovered, r.fetched), (1, 1));
    assert!(env.maildir().join("new/old.1,S=20").exists());
    assert_eq!(env.local_count(), 2);
    assert_eq!(fetched(&a, &env.opts()), 0);
}

#[test]
fn the_lock_is_per_maildrop() {
    let env = Env::new();
    env.deliver(1);
    std::fs::create_dir_all(env.state_dir()).unwrap();
    let lock =
        std::fs::File::create(env.state_dir().join(format!("{USER}@localhost.lock"))).unwrap();
    lock.try_lock().unwrap();
    let a = env.account("127.0.0.1", Security::Plaintext, None);
    let e = fetch(&a, &env.opts()).unwrap_err();
    assert_eq!(e.exit_code(), EXIT_LOCKED, "{e}");
    drop(lock);
    assert_eq!(fetched(&a, &env.opts()), 1);
}

/// A POP3 server that refuses to send its one message; serves `connections` connections.
fn refusing_server(connections: usize) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for _ in 0..connections {
            let Ok((mut tcp, _)) = listener.accept() else {
                return;
            };
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = tcp.write_all(b"+OK ready\r\n");
            let mut reader = BufReader::new(tcp.try_clone().unwrap());
            let mut line = String::new();
            while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                let word = line.split_whitespace().next().unwrap_or("").to_string();
                let reply: &[u8] = match word.as_str() {
                    "CAPA" => b"+OK\r\nUSER\r\nUIDL\r\n.\r\n",
                    "LIST" => b"+OK\r\n1 20\r\n.\r\n",
                    "UIDL" => b"+OK\r\n1 only-one\r\n.\r\n",
                    "RETR" => b"-ERR [SYS/TEMP] message 1 is being scanned\r\n",
                    "QUIT" => b"+OK bye\r\n",
                    _ => b"+OK\r\n",
                };
                if tcp.write_all(reply).is_err() || word == "QUIT" {
                    break;
                }
                line.clear();
            }
        }
    });
    addr
}

#[test]
fn a_refused_retr_is_an_error_even_with_quiet() {
    let addr = refusing_server(1);
    let local = tempfile::tempdir().unwrap();
    let (code, out, err) = run_with_input(
        facteur()
            .arg("fetch")
            .arg(format!("pop3://u@{addr}"))
            .args([
                "--plaintext",
                "--quiet",
                "--password-env",
                "FETCH_IDENTITY_PW",
            ])
            .arg("--maildir")
            .arg(local.path().join("Maildir"))
            .arg("--state-dir")
            .arg(local.path().join("state"))
            .env("FETCH_IDENTITY_PW", "p"),
        b"",
    );
    assert_eq!(code, Some(4), "{out}{err}");
    assert_eq!(out, "");
    assert!(
        err.contains("refused to send message 1")
            && err.contains("-ERR [SYS/TEMP] message 1 is being scanned")
            && err.contains("stays on the server"),
        "{err}"
    );
}

#[test]
fn one_message_is_one_message() {
    let env = Env::new();
    env.deliver(1);
    let (code, out, err) = run_with_input(
        facteur()
            .arg("fetch")
            .arg(format!("pop3://{USER}@{}", env.server.addr))
            .args([
                "--plaintext",
                "--keep",
                "--password-env",
                "FETCH_IDENTITY_PW",
            ])
            .arg("--maildir")
            .arg(env.maildir())
            .arg("--state-dir")
            .arg(env.state_dir())
            .env("FETCH_IDENTITY_PW", PASSWORD),
        b"",
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(": 1 message fetched ("), "{out}");
}

// ---- TLS ----

/// A certificate for `names`, signed by `issuer` or self-signed; CA:TRUE if `ca`; expired in
/// 2020 if `expired`. Returns (certificate PEM, key PEM, the params and key to sign with).
fn cert(
    names: &[&str],
    ca: bool,
    expired: bool,
    issuer: Option<&rcgen::Issuer<'_, rcgen::KeyPair>>,
) -> (String, String, rcgen::CertificateParams, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    // A name of its own: not rcgen's default, which every certificate made here would share.
    let mut dn = rcgen::DistinguishedName::new();
    static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dn.push(rcgen::DnType::CommonName, format!("facteur test {n}"));
    params.distinguished_name = dn;
    if ca {
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    if expired {
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    }
    let c = match issuer {
        Some(i) => params.signed_by(&key, i).unwrap(),
        None => params.self_signed(&key).unwrap(),
    };
    (c.pem(), key.serialize_pem(), params, key)
}

/// `openssl req -x509` with these extra arguments: (certificate PEM, key PEM).
fn openssl_cert(dir: &Path, extra: &[&str]) -> (String, String) {
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(dir.join("o-key.pem"))
        .arg("-out")
        .arg(dir.join("o-cert.pem"))
        .args(extra)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        std::fs::read_to_string(dir.join("o-cert.pem")).unwrap(),
        std::fs::read_to_string(dir.join("o-key.pem")).unwrap(),
    )
}

#[test]
fn a_pinned_self_signed_certificate_from_openssl_req_is_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert_pem, key_pem) = openssl_cert(tmp.path(), &[]);
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(tmp.path().join("o-cert.pem"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("CA:TRUE"));
    let env = Env::with_cert(Some((&cert_pem, &key_pem)));
    env.deliver(2);
    let ca = env.write_pem("pinned.pem", &cert_pem);
    assert_eq!(
        fetched(
            &env.account("127.0.0.1", Security::Tls, Some(&ca)),
            &env.opts()
        ),
        2
    );
    env.deliver(1);
    assert_eq!(
        fetched(
            &env.account("localhost", Security::Starttls, Some(&ca)),
            &env.opts()
        ),
        1
    );
    // In a bundle with other certificates, too.
    let (other, _, _, _) = cert(&["other.example"], true, false, None);
    let bundle = env.write_pem("bundle.pem", &format!("{other}{cert_pem}"));
    env.deliver(1);
    assert_eq!(
        fetched(
            &env.account("127.0.0.1", Security::Tls, Some(&bundle)),
            &env.opts()
        ),
        1
    );
    // Not pinned: refused, with what to do.
    let other = env.write_pem("other.pem", &other);
    let e = tls_error(
        &env.account("127.0.0.1", Security::Tls, Some(&other)),
        &env.opts(),
    );
    assert!(
        e.contains("CA:TRUE") && e.contains("pinned") && e.contains("--ca-file"),
        "{e}"
    );
}

#[test]
fn a_pin_still_checks_the_name_and_the_dates() {
    let (c, k, _, _) = cert(&["mail.example.org", "pop.example.org"], true, false, None);
    let env = Env::with_cert(Some((&c, &k)));
    let ca = env.write_pem("pinned.pem", &c);
    let e = tls_error(
        &env.account("127.0.0.1", Security::Tls, Some(&ca)),
        &env.opts(),
    );
    assert!(
        e.contains("not valid for the name 127.0.0.1")
            && e.contains("mail.example.org, pop.example.org"),
        "{e}"
    );
    drop(env);
    let (c, k, _, _) = cert(&["127.0.0.1"], true, true, None);
    let env = Env::with_cert(Some((&c, &k)));
    let ca = env.write_pem("pinned.pem", &c);
    let e = tls_error(
        &env.account("127.0.0.1", Security::Tls, Some(&ca)),
        &env.opts(),
    );
    assert!(
        e.contains("expired on 2020-01-01 00:00 UTC") && e.contains("renew"),
        "{e}"
    );
}

#[test]
fn tls_errors_say_what_is_wrong_and_what_to_do() {
    // Unknown issuer.
    let env = Env::new();
    let (stranger, _, _, _) = cert(&["127.0.0.1"], false, false, None);
    let stranger = env.write_pem("stranger.pem", &stranger);
    let e = tls_error(
        &env.account("127.0.0.1", Security::Tls, Some(&stranger)),
        &env.opts(),
    );
    assert!(
        e.contains("not signed by an authority facteur trusts")
            && e.contains("stranger.pem")
            && e.contains("--ca-file"),
        "{e}"
    );
    // A certificate of the same name as the server's, but another key.
    let (_, _, mut twin_params, _) = cert(&["localhost"], false, false, None);
    let twin_key = rcgen::KeyPair::generate().unwrap();
    twin_params.distinguished_name = rcgen::DistinguishedName::new();
    twin_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "rcgen self signed cert");
    let twin = env.write_pem(
        "twin.pem",
        &twin_params.self_signed(&twin_key).unwrap().pem(),
    );
    let e = tls_error(
        &env.account("127.0.0.1", Security::Tls, Some(&twin)),
        &env.opts(),
    );
    assert!(
        e.contains("does not verify") && e.contains("twin.pem"),
        "{e}"
    );
    // STLS: the openssl command to look at the certificate says so.
    let e = tls_error(
        &env.account("127.0.0.1", Security::Starttls, Some(&stranger)),
        &env.opts(),
    );
    assert!(e.contains("-starttls pop3"), "{e}");
    // TLS spoken to a plain POP3 port.
    let mut wrong_port = env.account("127.0.0.1", Security::Tls, Some(env.fx.cert()));
    wrong_port.target.port = env.server.addr.port();
    let e = tls_error(&wrong_port, &env.opts());
    assert!(
        e.contains("did not answer in TLS") && e.contains("pop3://"),
        "{e}"
    );
    drop(env);

    // A certificate from an authority: for another name, then expired.
    let (ca_pem, _, ca_params, ca_key) = cert(&[], true, false, None);
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let (leaf, leaf_key, _, _) = cert(&["other.example", "127.0.0.2"], false, false, Some(&issuer));
    let env = Env::with_cert(Some((&leaf, &leaf_key)));
    let ca = env.write_pem("ca.pem", &ca_pem);
    let e = tls_error(
        &env.account("127.0.0.1", Security::Tls, Some(&ca)),
        &env.opts(),
    );
    assert!(
        e.contains("not valid for the name 127.0.0.1") && e.contains("other.example, 127.0.0.2"),
        "{e}"
    );
    drop(env);
    let (leaf, leaf_key, _, _) = cert(&["127.0.0.1"], false, true, Some(&issuer));
    let env = Env::with_cert(Some((&leaf, &leaf_key)));
    let ca = env.write_pem("ca.pem", &ca_pem);
    let e = tls_error(
        &env.account("127.0.0.1", Security::Tls, Some(&ca)),
        &env.opts(),
    );
    assert!(e.contains("expired on 2020-01-01"), "{e}");
    drop(env);
}

#[test]
fn the_command_prints_the_words_not_the_internals() {
    let (c, k, _, _) = cert(&["127.0.0.1"], true, false, None);
    let env = Env::with_cert(Some((&c, &k)));
    let (other, _, _, _) = cert(&["127.0.0.1"], true, false, None);
    let other = env.write_pem("other.pem", &other);
    let (code, out, err) = run_with_input(
        facteur()
            .arg("fetch")
            .arg(format!("pop3s://{USER}@{}", env.server.pop3s()))
            .arg("--ca-file")
            .arg(&other)
            .args(["--password-env", "FETCH_IDENTITY_PW"])
            .arg("--maildir")
            .arg(env.maildir())
            .arg("--state-dir")
            .arg(env.state_dir())
            .env("FETCH_IDENTITY_PW", PASSWORD),
        b"",
    );
    assert_eq!(code, Some(4), "{out}{err}");
    assert!(
        err.contains("CA:TRUE") && err.contains("other.pem"),
        "{err}"
    );
    assert!(
        !err.contains("OtherError") && !err.contains("CaUsedAsEndEntity"),
        "{err}"
    );
}
