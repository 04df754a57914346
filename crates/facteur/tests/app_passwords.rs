//! App passwords with the passwd-file, end to end: `facteur user app-password add|list|revoke`
//! and real logins through `facteur serve` (USER/PASS, SASL PLAIN; refused on POP2). The same on
//! SQL users is in tests/sql_users.rs.

mod common;

use base64::Engine as _;
use common::*;

#[test]
fn app_passwords_on_the_passwd_file() {
    let fx = Fixture::new();
    fx.deliver(USER, &message(1));
    // A POP2 listener too: app passwords must not open a maildrop there.
    let text = std::fs::read_to_string(&fx.config_path).unwrap().replacen(
        "[server]\n",
        "[server]\nlisten_pop2 = [\"127.0.0.1:0\"]\n",
        1,
    );
    let config = fx.path().join("pop2.toml");
    std::fs::write(&config, text).unwrap();

    let phone = add_app_password(&config, USER, "phone", "SHA256-CRYPT");
    // The default scheme, argon2id.
    let laptop = add_app_password(&config, USER, "laptop", "ARGON2ID");
    assert_ne!(phone, laptop);
    let stored = std::fs::read_to_string(fx.path().join("users.app-passwords")).unwrap();
    assert!(
        stored.contains(":phone:") && stored.contains("{ARGON2ID}"),
        "{stored}"
    );
    for p in [&phone, &laptop] {
        assert!(
            !stored.contains(&p[5..].replace('-', "")),
            "a secret in clear: {stored}"
        );
    }
    // Labels are unique per user; unknown users have none.
    let (code, _, err) = cli_with(
        &config,
        &["user", "app-password", "add", USER, "--label", "phone"],
        b"",
    );
    assert_ne!(code, Some(0));
    assert!(
        err.contains("already has an app password labelled"),
        "{err}"
    );
    let (code, _, err) = cli_with(&config, &["user", "app-password", "list", "nobody"], b"");
    assert_ne!(code, Some(0));
    assert!(err.contains("no user"), "{err}");
    let never = listed_app_password(&config, USER, "phone").expect("phone listed");
    assert!(never.ends_with("never"), "{never}");

    let server = BinServer::start(&config);
    // USER/PASS with each, and with the main password.
    let mut c = server.login(USER, &phone);
    assert_eq!(c.stat().0, 1);
    c.quit();
    assert!(user_pass(server.addr, USER, &laptop));
    assert!(user_pass(server.addr, USER, PASSWORD));
    // The letters count, not their case or the dashes.
    assert!(user_pass(
        server.addr,
        USER,
        &phone.to_uppercase().replace('-', "")
    ));
    // SASL PLAIN too.
    let plain =
        base64::engine::general_purpose::STANDARD.encode(format!("\0{USER}\0{laptop}").as_bytes());
    let mut c = Client::connect(server.addr);
    let r = c.cmd(&format!("AUTH PLAIN {plain}"));
    assert!(
        r.starts_with("+OK"),
        "AUTH PLAIN with an app password: {r:?}"
    );
    c.quit();
    // Another user's app password is no password of this one.
    assert!(!user_pass(server.addr, CRYPT_USER, &phone));

    // The log names the app password by its label, never the password.
    let log = server.wait_for_log("app_password=", 4);
    assert!(log.contains("app_password=\"phone\""), "{log}");
    assert!(log.contains("app_password=\"laptop\""), "{log}");
    for p in [&phone, &laptop] {
        assert!(!log.contains(&p[5..]), "a secret in the log: {log}");
    }

    // `list` shows the last use: written by the server's recorder thread, soon after.
    let used = wait_app_password_used(&config, USER, "phone");
    assert!(
        used.ends_with("UTC") && used.matches("UTC").count() == 2,
        "{used}"
    );

    // POP2 takes the main password, never an app password (and counts it as a failure).
    let log = server.wait_for_log("pop2 (no TLS)", 1);
    let pop2 = log
        .lines()
        .filter(|l| l.contains("pop2 (no TLS)"))
        .find_map(listening_address)
        .expect("the POP2 listener's address in the log");
    let mut c = Client::connect_pop2(pop2);
    let r = c.cmd(&format!("HELO {USER} {phone}"));
    assert!(r.starts_with('-'), "HELO with an app password: {r:?}");
    server.wait_for_log("an app password, which this protocol does not take", 1);
    let mut c = Client::connect_pop2(pop2);
    let r = c.cmd(&format!("HELO {USER} {PASSWORD}"));
    assert!(r.starts_with('#'), "HELO with the main password: {r:?}");
    c.cmd("QUIT");

    // Revoking the phone's: it fails at the next login (the server's cache remembered it),
    // and the laptop's and the main password still work.
    let out = cli_ok(
        &config,
        &["user", "app-password", "revoke", USER, "phone"],
        b"",
    );
    assert!(out.contains("revoked"), "{out}");
    assert!(!user_pass(server.addr, USER, &phone));
    assert!(user_pass(server.addr, USER, &laptop));
    assert!(user_pass(server.addr, USER, PASSWORD));
    assert_eq!(listed_app_password(&config, USER, "phone"), None);
    assert!(listed_app_password(&config, USER, "laptop").is_some());
    let (code, _, err) = cli_with(
        &config,
        &["user", "app-password", "revoke", USER, "phone"],
        b"",
    );
    assert_ne!(code, Some(0));
    assert!(err.contains("no app password labelled"), "{err}");

    // A user removed loses them: added again, the name does not get them back.
    cli_ok(&config, &["user", "del", USER], b"");
    cli_ok(
        &config,
        &["user", "add", USER, "--scheme", "PLAIN", "--password-stdin"],
        PASSWORD.as_bytes(),
    );
    assert_eq!(listed_app_password(&config, USER, "laptop"), None);
    assert!(!user_pass(server.addr, USER, &laptop));
    assert!(user_pass(server.addr, USER, PASSWORD));
}

/// `facteur fetch` with `auth = "auto"` from a facteur server that offers SCRAM-SHA-256: over
/// TLS, an app password goes by PLAIN (SCRAM would be refused: it works from the main
/// password's stored secret), and the main password still by SCRAM.
#[test]
fn the_fetcher_logs_in_with_an_app_password() {
    use facteur_fetch::auth::AuthMethod;
    use facteur_fetch::config::{Account, DeletePolicy, DestinationSpec, Limits, PasswordSource};
    use facteur_fetch::fetch::{fetch_account, RunOptions};
    use facteur_fetch::{Security, Target};
    use facteur_proto::Secret;

    let fx = Fixture::build(
        DEFAULT_LIMITS,
        "sasl = [\"PLAIN\", \"SCRAM-SHA-256\"]\n",
        true,
    );
    fx.deliver(USER, &message(1));
    let app = add_app_password(&fx.config_path, USER, "fetcher", "SHA256-CRYPT");
    let server = fx.start();
    let local = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let run = |password: &str| {
        let account = Account {
            identity: None,
            name: "test".into(),
            target: Target {
                host: "127.0.0.1".into(),
                port: server.pop3s().port(),
                security: Security::Tls,
                ca_file: Some(fx.cert().to_path_buf()),
            },
            user: USER.into(),
            auth: AuthMethod::Auto,
            password: PasswordSource::Inline(Secret::new(password.into())),
            destination: DestinationSpec::Maildir(local.path().join("Maildir")),
            policy: DeletePolicy::Keep,
            limits: Limits::default(),
            timeout: std::time::Duration::from_secs(30),
            maildir_sync: Default::default(),
        };
        let opts = RunOptions {
            state_dir: local.path().join("state"),
            dry_run: false,
            now: None,
            fault: None,
            trace: None,
        };
        let bar = indicatif::ProgressBar::hidden();
        let password = Secret::new(password.to_string());
        rt.block_on(fetch_account(&account, &password, &opts, &bar))
    };
    let report = run(&app).expect("a fetch with the app password");
    assert_eq!(report.method, Some(AuthMethod::Plain));
    assert_eq!(report.fetched, 1);
    let report = run(PASSWORD).expect("a fetch with the main password");
    assert_eq!(report.method, Some(AuthMethod::ScramSha256));
}
