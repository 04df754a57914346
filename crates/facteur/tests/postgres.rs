//! facteur with `[store] backend = "postgresql"`, against a real PostgreSQL (the harness of
//! facteur-store's tests: `FACTEUR_TEST_DATABASE_URL`, or a throwaway cluster).

mod common;
#[path = "../../facteur-store/tests/support/pg.rs"]
mod pg;

use common::*;

/// The fixture's configuration with the PostgreSQL store at `url` instead of its Maildirs.
fn postgres_config(fx: &Fixture, url: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(&fx.config_path).expect("read the configuration");
    let maildir = "[store]\nmaildir = \"mail/%u/Maildir\"\n";
    assert!(text.contains(maildir), "{text}");
    let text = text.replace(
        maildir,
        &format!("[store]\nbackend = \"postgresql\"\nurl = {url:?}\nlease_secs = 5\n"),
    );
    let path = fx.path().join("postgres.toml");
    std::fs::write(&path, text).expect("write the configuration");
    path
}

#[test]
fn db_migrate_then_check_config() {
    let db = pg::fresh_database();
    let fx = Fixture::new();
    let config = postgres_config(&fx, &db.url);
    let check = || {
        run_with_input(
            facteur().args(["check-config", "--config"]).arg(&config),
            b"",
        )
    };
    let migrate = || {
        run_with_input(
            facteur().args(["db", "migrate", "--config"]).arg(&config),
            b"",
        )
    };
    // An empty database: check-config says what to do.
    let (code, stdout, stderr) = check();
    assert_ne!(code, Some(0), "{stdout}");
    assert!(stderr.contains("facteur db migrate"), "{stderr}");

    let (code, stdout, stderr) = migrate();
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("schema version 2 (was 0)"), "{stdout}");
    let (code, stdout, stderr) = migrate();
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("up to date"), "{stdout}");

    let (code, stdout, stderr) = check();
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("store postgresql"), "{stdout}");
    assert!(stdout.contains("schema version 2"), "{stdout}");

    // The Maildir configuration has no database to migrate.
    let (code, _, stderr) = run_with_input(
        facteur()
            .args(["db", "migrate", "--config"])
            .arg(&fx.config_path),
        b"",
    );
    assert_ne!(code, Some(0));
    assert!(stderr.contains("backend is maildir"), "{stderr}");
}
