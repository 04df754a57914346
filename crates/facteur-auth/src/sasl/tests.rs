//! The SASL mechanisms (facteur-proto's state machines) against a real passwd-file: every
//! scheme, unknown users, made-up SCRAM keys, the hash work a client can cause.

use std::fs;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use facteur_proto::sasl::{derivations, hmac_sha256, ScramKeys};
use facteur_proto::Msg;
use proptest::prelude::*;

use crate::cram_md5::CramMd5Context;
use crate::scram::format_stored;
use crate::{
    hash_password, Account, AuthOutcome, Authenticator, Mechanism, Nonces, PasswdDb, SaslContext,
    SaslExchange, SaslOutcome, SaslStep, Scheme, MAX_SASL_LINE, PASSWORD_MAX_LEN,
    USER_NAME_MAX_LEN,
};
use facteur_store::Owner;

const RFC2195_CHALLENGE: &str = "<1896.697170952@postoffice.reston.mci.net>";
const RFC2195_DIGEST: &str = "b913a602c7eda7a495b4e6e7334d3890";

// RFC 7677 section 3. The server's part of the nonce ends in "$k0".
const RFC7677_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
const RFC7677_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
const RFC7677_SERVER_FIRST: &str =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const RFC7677_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const RFC7677_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

fn b64(data: impl AsRef<[u8]>) -> String {
    BASE64.encode(data)
}

fn db(text: &str) -> (tempfile::TempDir, PasswdDb) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("passwd");
    fs::write(&path, text).unwrap();
    let db = PasswdDb::open(&path).unwrap();
    (dir, db)
}

/// RFC 7677's user as Dovecot would store them, plus others.
fn rfc7677_line() -> String {
    let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
    let keys = ScramKeys::derive(b"pencil", &salt, 4096);
    format!(
        "user:{{SCRAM-SHA-256}}{}::::/home/user\n",
        format_stored(&keys)
    )
}

fn standard_db() -> (tempfile::TempDir, PasswdDb) {
    let mut text = rfc7677_line();
    text.push_str("tim:{PLAIN}tanstaaftanstaaf::::/home/tim\n");
    text.push_str(&format!(
        "cram:{}\n",
        hash_password(Scheme::CramMd5, b"tanstaaftanstaaf").unwrap()
    ));
    text.push_str(&format!(
        "sha:{}\n",
        hash_password(Scheme::Sha256Crypt, b"secret").unwrap()
    ));
    db(&text)
}

/// Fresh nonces, as the connection driver makes them: random bytes from the operating system
/// and the time.
fn fresh_nonces() -> Option<Nonces> {
    let mut random = [0u8; Nonces::RANDOM_LEN];
    getrandom::fill(&mut random).unwrap();
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    Some(Nonces::new(random, seconds.as_secs()))
}

fn ctx() -> SaslContext {
    SaslContext {
        hostname: "pop.example.org".to_string(),
        tls_client_identity: None,
        nonces: fresh_nonces(),
        bearer_error: Default::default(),
    }
}

/// The nonces of the RFC examples: RFC 2195's challenge (with its host name) and RFC 7677's
/// server nonce.
fn rfc_ctx() -> SaslContext {
    SaslContext {
        hostname: "postoffice.reston.mci.net".to_string(),
        tls_client_identity: None,
        nonces: Nonces::chosen(1896, 697_170_952, RFC7677_SERVER_NONCE),
        bearer_error: Default::default(),
    }
}

fn success(user: &str, home: Option<&str>) -> SaslStep {
    SaslStep::Done(SaslOutcome::Success(Account {
        user: user.to_string(),
        home: home.map(str::to_string),
        owner: Ok(Owner::default()),
        policy: Ok(facteur_proto::policy::UserPolicy::default()),
        app_password: None,
    }))
}

const FAILURE: SaslStep = SaslStep::Done(SaslOutcome::Failure);

fn start(mechanism: Mechanism, ir: Option<&str>, auth: &PasswdDb) -> (SaslExchange, SaslStep) {
    SaslExchange::start(mechanism, ctx(), ir, auth)
}

fn is_malformed(step: &SaslStep) -> bool {
    matches!(step, SaslStep::Malformed(_))
}

#[test]
fn plain_with_and_without_authzid() {
    let (_dir, db) = standard_db();
    let home = Some("/home/tim");
    let (ex, step) = start(Mechanism::Plain, Some(&b64("\0tim\0tanstaaftanstaaf")), &db);
    assert_eq!(step, success("tim", home));
    assert!(ex.is_over());
    let (_, step) = start(
        Mechanism::Plain,
        Some(&b64("tim\0tim\0tanstaaftanstaaf")),
        &db,
    );
    assert_eq!(step, success("tim", home));
    // Without an initial response: an empty challenge, then the message.
    let (mut ex, step) = start(Mechanism::Plain, None, &db);
    assert_eq!(step, SaslStep::Challenge(Vec::new()));
    assert!(!ex.is_over());
    assert_eq!(
        ex.step(&b64("\0tim\0tanstaaftanstaaf"), &db),
        success("tim", home)
    );
    assert!(ex.is_over());
    // Any scheme works through PLAIN.
    let (_, step) = start(Mechanism::Plain, Some(&b64("\0sha\0secret")), &db);
    assert_eq!(step, success("sha", None));
    let (_, step) = start(Mechanism::Plain, Some(&b64("\0user\0pencil")), &db);
    assert_eq!(step, success("user", Some("/home/user")));
}

#[test]
fn plain_failures() {
    let (_dir, db) = standard_db();
    for message in [
        "\0tim\0tanstaaf",
        "\0tim\0tanstaaftanstaaf ",
        "\0nobody\0tanstaaftanstaaf",
        "\0Tim\0tanstaaftanstaaf",
        // Somebody else's identity, even with a good password.
        "sha\0tim\0tanstaaftanstaaf",
        "Tim\0tim\0tanstaaftanstaaf",
    ] {
        let (_, step) = start(Mechanism::Plain, Some(&b64(message)), &db);
        assert_eq!(step, FAILURE, "{message:?}");
    }
}

#[test]
fn plain_malformed() {
    let (_dir, db) = standard_db();
    let bad_base64 = [
        "=",
        "AHRpbQB0YW5zdGFhZnRhbnN0YWFm=",
        "AHRpbQB0YW5zdGFhZnRhbnN0YWFm ",
        "AHRpbQB0YW5zdGFhZnRhbnN0YWF",
        "AHRpbQB0YW5zdGFhZnRhbnN0YWFm\r",
        "=AHRpbQB0YW5zdGFhZnRhbnN0YWFm",
        "AHRp=bQB0YW5zdGFhZnRhbnN0YWFm",
        "*",
        "",
    ];
    for ir in bad_base64 {
        let (ex, step) = start(Mechanism::Plain, Some(ir), &db);
        assert!(is_malformed(&step), "{ir:?}: {step:?}");
        assert!(ex.is_over());
    }
    // The same text is good base64 without the damage.
    let good = b64("\0tim\0tanstaaftanstaaf");
    assert_eq!(good, "AHRpbQB0YW5zdGFhZnRhbnN0YWFm");
    for message in [
        &b"tim tanstaaftanstaaf"[..],
        b"\0timtanstaaftanstaaf",
        b"tim\0tanstaaftanstaaf",
        b"\0tim\0tanstaaf\0tanstaaf",
        b"\0\0tanstaaftanstaaf",
        b"\0tim\0",
        b"\0t\xffm\0tanstaaftanstaaf",
        b"\xff\0tim\0tanstaaftanstaaf",
    ] {
        let (_, step) = start(Mechanism::Plain, Some(&b64(message)), &db);
        assert!(is_malformed(&step), "{message:?}: {step:?}");
        let (mut ex, _) = start(Mechanism::Plain, None, &db);
        assert!(is_malformed(&ex.step(&b64(message), &db)), "{message:?}");
    }
    // A continuation line is never "=": an empty one is empty.
    let (mut ex, _) = start(Mechanism::Plain, None, &db);
    assert!(is_malformed(&ex.step("=", &db)));
}

#[test]
fn login_two_steps() {
    let (_dir, db) = standard_db();
    let (mut ex, step) = start(Mechanism::Login, None, &db);
    assert_eq!(step, SaslStep::Challenge(b"Username:".to_vec()));
    assert_eq!(
        ex.step(&b64("tim"), &db),
        SaslStep::Challenge(b"Password:".to_vec())
    );
    assert_eq!(
        ex.step(&b64("tanstaaftanstaaf"), &db),
        success("tim", Some("/home/tim"))
    );
    assert!(ex.is_over());
    assert!(is_malformed(&ex.step(&b64("again"), &db)));

    // The user name as an initial response.
    let (mut ex, step) = start(Mechanism::Login, Some(&b64("tim")), &db);
    assert_eq!(step, SaslStep::Challenge(b"Password:".to_vec()));
    assert_eq!(ex.step(&b64("wrong"), &db), FAILURE);

    let (mut ex, _) = start(Mechanism::Login, None, &db);
    ex.step(&b64("nobody"), &db);
    assert_eq!(ex.step(&b64("tanstaaftanstaaf"), &db), FAILURE);
    let (mut ex, _) = start(Mechanism::Login, None, &db);
    ex.step(&b64("tim"), &db);
    assert_eq!(ex.step("", &db), FAILURE);

    let (mut ex, _) = start(Mechanism::Login, None, &db);
    assert!(is_malformed(&ex.step("", &db)));
    let (mut ex, _) = start(Mechanism::Login, None, &db);
    assert!(is_malformed(&ex.step(&b64(b"t\xffm"), &db)));
    let (mut ex, _) = start(Mechanism::Login, None, &db);
    assert!(is_malformed(&ex.step("dGlt!", &db)));
    let (_, step) = start(Mechanism::Login, Some("="), &db);
    assert!(is_malformed(&step));
}

#[test]
fn cram_md5_rfc2195_through_the_db() {
    let (_dir, db) = standard_db();
    let challenge = RFC2195_CHALLENGE.as_bytes();
    let sha_digest: String = CramMd5Context::from_secret(b"secret")
        .hmac(challenge)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        db.verify_cram_md5("tim", challenge, RFC2195_DIGEST),
        AuthOutcome::Success(Account {
            user: "tim".to_string(),
            home: Some("/home/tim".to_string()),
            owner: Ok(Owner::default()),
            policy: Ok(facteur_proto::policy::UserPolicy::default()),
            app_password: None,
        })
    );
    assert_eq!(
        db.verify_cram_md5("cram", challenge, RFC2195_DIGEST),
        AuthOutcome::Success(Account {
            user: "cram".to_string(),
            home: None,
            owner: Ok(Owner::default()),
            policy: Ok(facteur_proto::policy::UserPolicy::default()),
            app_password: None,
        })
    );
    for (user, digest) in [
        ("tim", "b913a602c7eda7a495b4e6e7334d3891"),
        ("cram", "b913a602c7eda7a495b4e6e7334d3891"),
        ("nobody", RFC2195_DIGEST),
        // A user whose hash CRAM-MD5 cannot use, even with the right digest.
        ("sha", sha_digest.as_str()),
        ("user", RFC2195_DIGEST),
        ("tim", ""),
    ] {
        assert_eq!(
            db.verify_cram_md5(user, challenge, digest),
            AuthOutcome::Failure,
            "{user} {digest}"
        );
    }
    assert_eq!(
        db.verify_cram_md5(
            "tim",
            b"<1896.697170953@postoffice.reston.mci.net>",
            RFC2195_DIGEST
        ),
        AuthOutcome::Failure
    );
    assert!(db.cram_md5_possible());
    let (_dir, sha_only) = db_with_sha_only();
    assert!(!sha_only.cram_md5_possible());
}

fn db_with_sha_only() -> (tempfile::TempDir, PasswdDb) {
    db(&format!(
        "sha:{}\n",
        hash_password(Scheme::Sha256Crypt, b"secret").unwrap()
    ))
}

#[test]
fn cram_md5_exchange_with_the_rfc2195_challenge() {
    let (_dir, db) = standard_db();
    for user in ["tim", "cram"] {
        let (mut ex, step) = SaslExchange::start(Mechanism::CramMd5, rfc_ctx(), None, &db);
        assert_eq!(
            step,
            SaslStep::Challenge(RFC2195_CHALLENGE.as_bytes().to_vec())
        );
        // RFC 2195's own base64 of the answer, for tim.
        let answer = b64(format!("{user} {RFC2195_DIGEST}"));
        if user == "tim" {
            assert_eq!(answer, "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw");
        }
        let home = (user == "tim").then_some("/home/tim");
        assert_eq!(ex.step(&answer, &db), success(user, home), "{user}");
    }
    let (mut ex, _) = SaslExchange::start(Mechanism::CramMd5, rfc_ctx(), None, &db);
    assert_eq!(
        ex.step(&b64("tim b913a602c7eda7a495b4e6e7334d3891"), &db),
        FAILURE
    );
}

#[test]
fn cram_md5_fresh_challenges() {
    let (_dir, db) = standard_db();
    let (mut ex, step) = start(Mechanism::CramMd5, None, &db);
    let SaslStep::Challenge(challenge) = step else {
        panic!("{step:?}")
    };
    let text = String::from_utf8(challenge.clone()).unwrap();
    let inner = text
        .strip_prefix('<')
        .and_then(|t| t.strip_suffix("@pop.example.org>"))
        .unwrap();
    let (random, seconds) = inner.split_once('.').unwrap();
    assert!(random.parse::<u64>().is_ok(), "{text}");
    assert!(seconds.parse::<u64>().unwrap() > 1_600_000_000, "{text}");
    let digest: String = CramMd5Context::from_secret(b"tanstaaftanstaaf")
        .hmac(&challenge)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        ex.step(&b64(format!("tim {digest}")), &db),
        success("tim", Some("/home/tim"))
    );
    // Another exchange, another challenge: the old answer does not replay.
    let (mut ex, step) = start(Mechanism::CramMd5, None, &db);
    assert_ne!(step, SaslStep::Challenge(challenge));
    assert_eq!(ex.step(&b64(format!("tim {digest}")), &db), FAILURE);
    // A host name that cannot go in a msg-id is replaced.
    let odd = SaslContext {
        hostname: "a b<c>".to_string(),
        ..ctx()
    };
    let (_, step) = SaslExchange::start(Mechanism::CramMd5, odd, None, &db);
    let SaslStep::Challenge(challenge) = step else {
        panic!("{step:?}")
    };
    assert!(challenge.ends_with(b"@localhost>"));
}

#[test]
fn cram_md5_malformed() {
    let (_dir, db) = standard_db();
    let (ex, step) = start(Mechanism::CramMd5, Some(&b64("tim")), &db);
    assert!(is_malformed(&step));
    assert!(ex.is_over());
    for answer in [
        "tim".to_string(),
        format!("tim{RFC2195_DIGEST}"),
        format!(" {RFC2195_DIGEST}"),
        format!("tim {}", &RFC2195_DIGEST[..31]),
        format!("tim {RFC2195_DIGEST}0"),
        format!("tim {}", RFC2195_DIGEST.replace('b', "x")),
        format!("tim {RFC2195_DIGEST} "),
        String::new(),
    ] {
        let (mut ex, _) = start(Mechanism::CramMd5, None, &db);
        assert!(is_malformed(&ex.step(&b64(&answer), &db)), "{answer:?}");
    }
    let (mut ex, _) = start(Mechanism::CramMd5, None, &db);
    assert!(is_malformed(
        &ex.step(&b64(b"t\xffm 0123456789abcdef0123456789abcdef"), &db)
    ));
}

/// What a SCRAM-SHA-256 client sends as its final message, and the server-final message it
/// expects, for `password` and the server-first message received.
fn scram_client_final(
    password: &[u8],
    gs2_header: &str,
    client_first_bare: &str,
    server_first: &str,
) -> (String, String) {
    scram_client_final_with_nonce(password, gs2_header, client_first_bare, server_first, None)
}

/// As [`scram_client_final`], but sending `nonce` instead of the one received (and proving it,
/// so that only the server's check of the nonce can catch it).
fn scram_client_final_with_nonce(
    password: &[u8],
    gs2_header: &str,
    client_first_bare: &str,
    server_first: &str,
    nonce_sent: Option<&str>,
) -> (String, String) {
    let mut nonce = "";
    let mut salt = Vec::new();
    let mut iterations = 0;
    for attr in server_first.split(',') {
        if let Some(v) = attr.strip_prefix("r=") {
            nonce = v;
        } else if let Some(v) = attr.strip_prefix("s=") {
            salt = BASE64.decode(v).unwrap();
        } else if let Some(v) = attr.strip_prefix("i=") {
            iterations = v.parse().unwrap();
        }
    }
    // PBKDF2 called here, not through ScramKeys: the client's derivation is not the server's
    // work that the tests count.
    let salted = pbkdf2::pbkdf2_hmac_array::<sha2::Sha256, 32>(password, &salt, iterations);
    let client_key = hmac_sha256(&salted, &[b"Client Key"]);
    let stored_key: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(client_key).into();
    let without_proof = format!("c={},r={}", b64(gs2_header), nonce_sent.unwrap_or(nonce));
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let signature = hmac_sha256(&stored_key, &[auth_message.as_bytes()]);
    let proof: Vec<u8> = client_key
        .iter()
        .zip(signature)
        .map(|(k, s)| k ^ s)
        .collect();
    let server_key = hmac_sha256(&salted, &[b"Server Key"]);
    let server_signature = hmac_sha256(&server_key, &[auth_message.as_bytes()]);
    (
        format!("{without_proof},p={}", b64(proof)),
        format!("v={}", b64(server_signature)),
    )
}

fn challenge_text(step: SaslStep) -> String {
    match step {
        SaslStep::Challenge(data) => String::from_utf8(data).unwrap(),
        other => panic!("expected a challenge, got {other:?}"),
    }
}

#[test]
fn scram_rfc7677_example() {
    let (_dir, db) = standard_db();
    for initial in [true, false] {
        let (mut ex, step) = if initial {
            SaslExchange::start(
                Mechanism::ScramSha256,
                rfc_ctx(),
                Some(&b64(RFC7677_CLIENT_FIRST)),
                &db,
            )
        } else {
            let (mut ex, step) = SaslExchange::start(Mechanism::ScramSha256, rfc_ctx(), None, &db);
            assert_eq!(step, SaslStep::Challenge(Vec::new()));
            let step = ex.step(&b64(RFC7677_CLIENT_FIRST), &db);
            (ex, step)
        };
        assert_eq!(challenge_text(step), RFC7677_SERVER_FIRST);
        let step = ex.step(&b64(RFC7677_CLIENT_FINAL), &db);
        // RFC 5034 section 4: no data with +OK, so the server-final message is a challenge...
        assert_eq!(challenge_text(step), RFC7677_SERVER_FINAL);
        assert!(!ex.is_over());
        // ... answered by an empty line.
        assert_eq!(ex.step("", &db), success("user", Some("/home/user")));
        assert!(ex.is_over());
    }
    // Our test client agrees with the RFC.
    let (client_final, server_final) = scram_client_final(
        b"pencil",
        "n,,",
        "n=user,r=rOprNGfwEbeRWgbNEkqO",
        RFC7677_SERVER_FIRST,
    );
    assert_eq!(client_final, RFC7677_CLIENT_FINAL);
    assert_eq!(server_final, RFC7677_SERVER_FINAL);
}

/// Runs a SCRAM exchange with `password` and returns the last step.
fn scram_login(db: &PasswdDb, gs2_header: &str, user: &str, password: &[u8]) -> SaslStep {
    let bare = format!("n={user},r=clientnonce123");
    let (mut ex, step) = SaslExchange::start(
        Mechanism::ScramSha256,
        ctx(),
        Some(&b64(format!("{gs2_header}{bare}"))),
        db,
    );
    let SaslStep::Challenge(server_first) = step else {
        return step;
    };
    let server_first = String::from_utf8(server_first).unwrap();
    assert!(
        server_first.starts_with("r=clientnonce123"),
        "{server_first}"
    );
    let (client_final, expected) = scram_client_final(password, gs2_header, &bare, &server_first);
    match ex.step(&b64(client_final), db) {
        SaslStep::Challenge(server_final) => {
            assert_eq!(String::from_utf8(server_final).unwrap(), expected);
            ex.step("", db)
        }
        other => other,
    }
}

#[test]
fn scram_wrong_proof_fails() {
    let (_dir, db) = standard_db();
    assert_eq!(
        scram_login(&db, "n,,", "user", b"pencil"),
        success("user", Some("/home/user"))
    );
    assert_eq!(scram_login(&db, "n,,", "user", b"pencil2"), FAILURE);
    assert_eq!(scram_login(&db, "n,,", "user", b""), FAILURE);
    // The proof itself damaged.
    let (mut ex, _) = SaslExchange::start(
        Mechanism::ScramSha256,
        rfc_ctx(),
        Some(&b64(RFC7677_CLIENT_FIRST)),
        &db,
    );
    let tampered = RFC7677_CLIENT_FINAL.replace("p=dHzb", "p=dHzc");
    assert_eq!(ex.step(&b64(tampered), &db), FAILURE);
    assert!(ex.is_over());
}

#[test]
fn scram_for_plain_users_and_hash_password_output() {
    let field = hash_password(Scheme::ScramSha256, "pâté".as_bytes()).unwrap();
    let text = format!(
        "tim:{{PLAIN}}tanstaaftanstaaf::::/home/tim\nnew:{field}\nsha:{}\n",
        hash_password(Scheme::Sha256Crypt, b"secret").unwrap()
    );
    let (_dir, db) = db(&text);
    assert!(db.scram_possible());
    assert_eq!(
        scram_login(&db, "n,,", "tim", b"tanstaaftanstaaf"),
        success("tim", Some("/home/tim"))
    );
    assert_eq!(
        scram_login(&db, "y,,", "tim", b"tanstaaftanstaaf"),
        success("tim", Some("/home/tim"))
    );
    assert_eq!(scram_login(&db, "n,,", "tim", b"tanstaaf"), FAILURE);
    assert_eq!(
        scram_login(&db, "n,,", "new", "pâté".as_bytes()),
        success("new", None)
    );
    assert_eq!(scram_login(&db, "n,,", "new", "pate".as_bytes()), FAILURE);
    // A SCRAM hash is also good for USER/PASS.
    assert_eq!(
        db.verify_password("new", "pâté".as_bytes()),
        AuthOutcome::Success(Account {
            user: "new".to_string(),
            home: None,
            owner: Ok(Owner::default()),
            policy: Ok(facteur_proto::policy::UserPolicy::default()),
            app_password: None,
        })
    );
    // A user whose hash SCRAM cannot use fails even with the right password.
    assert_eq!(scram_login(&db, "n,,", "sha", b"secret"), FAILURE);
    let (_dir, sha_only) = db_with_sha_only();
    assert!(!sha_only.scram_possible());
}

#[test]
fn scram_authzid() {
    let (_dir, db) = standard_db();
    assert_eq!(
        scram_login(&db, "n,a=user,", "user", b"pencil"),
        success("user", Some("/home/user"))
    );
    assert_eq!(scram_login(&db, "n,a=tim,", "user", b"pencil"), FAILURE);
}

#[test]
fn scram_unknown_user_fails_after_the_proof() {
    let (_dir, db) = standard_db();
    let first = |user: &str| {
        let (ex, step) = SaslExchange::start(
            Mechanism::ScramSha256,
            ctx(),
            Some(&b64(format!("n,,n={user},r=abc"))),
            &db,
        );
        (ex, challenge_text(step))
    };
    // An unknown user gets a server-first message of the same shape as a known one, with a
    // salt that does not change from one attempt to the next.
    let (_, known) = first("user");
    let (mut ex, unknown) = first("nobody");
    let (_, again) = first("nobody");
    let (_, other) = first("nobody2");
    let salt = |m: &str| m.split(',').nth(1).unwrap().to_string();
    let shape = |m: &str| {
        let parts: Vec<&str> = m.split(',').collect();
        (
            parts.len(),
            parts[0].len(),
            parts[1].len(),
            parts[2].to_string(),
        )
    };
    assert_eq!(shape(&known), shape(&unknown));
    assert_eq!(salt(&unknown), salt(&again));
    assert_ne!(salt(&unknown), salt(&other));
    assert_ne!(unknown, again, "fresh server nonces");
    // It goes to the proof, and fails there.
    let (client_final, _) = scram_client_final(b"pencil", "n,,", "n=nobody,r=abc", &unknown);
    assert_eq!(ex.step(&b64(client_final), &db), FAILURE);
    assert_eq!(scram_login(&db, "n,,", "nobody", b"pencil"), FAILURE);
    // A user of another scheme looks the same.
    let (_, sha) = first("sha");
    assert_eq!(shape(&sha), shape(&known));
}

#[test]
fn scram_tampered_messages_fail() {
    let (_dir, db) = standard_db();
    let exchange = || {
        SaslExchange::start(
            Mechanism::ScramSha256,
            rfc_ctx(),
            Some(&b64(RFC7677_CLIENT_FIRST)),
            &db,
        )
        .0
    };
    let failures = [
        // The nonce changed: one character of the server's part, its end cut, the client's only.
        RFC7677_CLIENT_FINAL.replace("$k0,p", "$k1,p"),
        RFC7677_CLIENT_FINAL.replace("$k0,p", "$k,p"),
        RFC7677_CLIENT_FINAL.replace("%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0", ""),
        RFC7677_CLIENT_FINAL.replace("$k0,p", "$k0x,p"),
        // The channel binding is not the GS2 header sent ("y,," and "n,a=user,").
        RFC7677_CLIENT_FINAL.replace("c=biws", "c=eSws"),
        RFC7677_CLIENT_FINAL.replace("c=biws", "c=bixhPXVzZXIs"),
    ];
    for msg in failures {
        assert_eq!(exchange().step(&b64(&msg), &db), FAILURE, "{msg}");
    }
    let malformed = [
        RFC7677_CLIENT_FINAL.replace("c=biws,", ""),
        RFC7677_CLIENT_FINAL.replace("c=biws", "c=biw"),
        RFC7677_CLIENT_FINAL.replace("p=dHzb", "p=dHz"),
        RFC7677_CLIENT_FINAL.replace("p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=", "p=AAAA"),
        RFC7677_CLIENT_FINAL.replace(",p=", ",q="),
        format!("{RFC7677_CLIENT_FINAL},x=1"),
        RFC7677_CLIENT_FINAL
            .replace("c=biws,r=", "r=")
            .replace(",p=", ",c=biws,p="),
        RFC7677_CLIENT_FINAL.replace(",p=", ",,p="),
        RFC7677_CLIENT_FINAL
            .replace(",p=", ",m=1,p=")
            .replace("m=1", "mm"),
        String::new(),
    ];
    for msg in malformed {
        let step = exchange().step(&b64(&msg), &db);
        assert!(is_malformed(&step), "{msg}: {step:?}");
    }
    // The same with proofs the client computed over what it sent: only the server's own checks
    // of the nonce and of c= can catch these.
    let bare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
    let full_nonce = format!("rOprNGfwEbeRWgbNEkqO{RFC7677_SERVER_NONCE}");
    for (gs2, nonce) in [
        ("y,,", None),
        ("n,a=user,", None),
        ("n,,", Some("rOprNGfwEbeRWgbNEkqO")),
        ("n,,", Some(&full_nonce[..full_nonce.len() - 1])),
        (
            "n,,",
            Some("rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k1"),
        ),
    ] {
        let (client_final, _) =
            scram_client_final_with_nonce(b"pencil", gs2, bare, RFC7677_SERVER_FIRST, nonce);
        assert_eq!(
            exchange().step(&b64(&client_final), &db),
            FAILURE,
            "{client_final}"
        );
    }
    // And the control: the same computation with nothing changed succeeds.
    let (client_final, _) =
        scram_client_final_with_nonce(b"pencil", "n,,", bare, RFC7677_SERVER_FIRST, None);
    assert_eq!(client_final, RFC7677_CLIENT_FINAL);
    // An extension between the nonce and the proof is allowed by the grammar; it is part of
    // the AuthMessage, so the RFC's proof no longer matches.
    let with_extension = RFC7677_CLIENT_FINAL.replace(",p=", ",x=1,p=");
    assert_eq!(exchange().step(&b64(&with_extension), &db), FAILURE);
    // Not base64, not UTF-8.
    assert!(is_malformed(&exchange().step("c=biws", &db)));
    assert!(is_malformed(&exchange().step(&b64(b"c=\xff"), &db)));
    // The empty answer to the server-final message must be empty.
    let mut ex = exchange();
    challenge_text(ex.step(&b64(RFC7677_CLIENT_FINAL), &db));
    assert!(is_malformed(&ex.step(&b64("x"), &db)));
    assert!(ex.is_over());
}

#[test]
fn scram_refuses_channel_binding_and_extensions() {
    let (_dir, db) = standard_db();
    for first in [
        "p=tls-unique,,n=user,r=abc",
        "p=tls-server-end-point,,n=user,r=abc",
        "n,,m=ext,n=user,r=abc",
        "n,,n=user",
        "n,,n=us=er,r=abc",
        "n,,n=\u{85}user,r=abc",
        "q,,n=user,r=abc",
        "n,,n=user,r=a,b",
    ] {
        let (ex, step) = start(Mechanism::ScramSha256, Some(&b64(first)), &db);
        assert!(is_malformed(&step), "{first}: {step:?}");
        assert!(ex.is_over());
    }
    let (_, step) = start(
        Mechanism::ScramSha256,
        Some(&b64("p=tls-unique,,n=user,r=abc")),
        &db,
    );
    assert_eq!(step, SaslStep::Malformed(Msg::ScramNoChannelBinding));
    assert!(is_malformed(
        &start(Mechanism::ScramSha256, Some(&b64(b"n,,n=\xff,r=a")), &db).1
    ));
    assert!(is_malformed(
        &start(Mechanism::ScramSha256, Some("="), &db).1
    ));
    // "y,," and an escaped name are fine (the name is unknown here, so it fails at the proof).
    let (mut ex, step) = start(
        Mechanism::ScramSha256,
        Some(&b64("y,,n=a=2Cb=3Dc,r=abc")),
        &db,
    );
    let server_first = challenge_text(step);
    let (client_final, _) = scram_client_final(b"x", "y,,", "n=a=2Cb=3Dc,r=abc", &server_first);
    assert_eq!(ex.step(&b64(client_final), &db), FAILURE);
}

#[test]
fn external() {
    let (_dir, db) = standard_db();
    let with_identity = |identity: Option<&str>| SaslContext {
        tls_client_identity: identity.map(str::to_string),
        ..ctx()
    };
    let tim = success("tim", Some("/home/tim"));
    let run = |identity: Option<&str>, ir: Option<&str>| {
        SaslExchange::start(Mechanism::External, with_identity(identity), ir, &db).1
    };
    assert_eq!(run(Some("tim"), Some("=")), tim);
    assert_eq!(run(Some("tim"), Some(&b64("tim"))), tim);
    assert_eq!(run(Some("tim"), Some(&b64("cram"))), FAILURE);
    assert_eq!(run(None, Some("=")), FAILURE);
    assert_eq!(run(None, Some(&b64("tim"))), FAILURE);
    assert_eq!(run(Some("nobody"), Some("=")), FAILURE);
    assert_eq!(run(Some("Tim"), Some("=")), FAILURE);
    assert!(is_malformed(&run(Some("tim"), Some(&b64(b"\xff")))));
    assert!(is_malformed(&run(Some("tim"), Some("dGlt="))));
    // Without an initial response: an empty challenge, then the authorization identity.
    let (mut ex, step) =
        SaslExchange::start(Mechanism::External, with_identity(Some("tim")), None, &db);
    assert_eq!(step, SaslStep::Challenge(Vec::new()));
    assert_eq!(ex.step("", &db), tim);
    let (mut ex, _) =
        SaslExchange::start(Mechanism::External, with_identity(Some("tim")), None, &db);
    assert_eq!(ex.step(&b64("tim"), &db), tim);
    let (mut ex, _) =
        SaslExchange::start(Mechanism::External, with_identity(Some("tim")), None, &db);
    assert_eq!(ex.step(&b64("user"), &db), FAILURE);
}

#[test]
fn lines_past_the_limit_are_refused() {
    let (_dir, db) = standard_db();
    let long = "A".repeat(MAX_SASL_LINE + 4);
    let (mut ex, _) = start(Mechanism::Plain, None, &db);
    assert_eq!(
        ex.step(&long, &db),
        SaslStep::Malformed(Msg::SaslLineTooLong)
    );
    assert!(ex.is_over());
    assert!(is_malformed(&start(Mechanism::Plain, Some(&long), &db).1));
    // Just under the limit is decoded (and is a malformed PLAIN message, having no NUL).
    let (mut ex, _) = start(Mechanism::Plain, None, &db);
    assert_eq!(
        ex.step(&"A".repeat(MAX_SASL_LINE - 4), &db),
        SaslStep::Malformed(Msg::PlainShape)
    );
}

#[test]
fn debug_shows_no_secret() {
    let (_dir, db) = standard_db();
    let (mut ex, _) = start(Mechanism::Login, None, &db);
    ex.step(&b64("tim"), &db);
    let debug = format!("{ex:?}");
    assert!(
        debug.contains("Login") && debug.contains("password"),
        "{debug}"
    );
    let (ex, _) = SaslExchange::start(
        Mechanism::ScramSha256,
        rfc_ctx(),
        Some(&b64(RFC7677_CLIENT_FIRST)),
        &db,
    );
    let debug = format!("{ex:?}");
    assert!(debug.contains("ScramSha256"), "{debug}");
    for secret in ["W22ZaJ0S", "hvYDpW", "rOprNG", "pencil"] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }
}

fn any_line() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[A-Za-z0-9+/=]{0,200}",
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(|b| BASE64.encode(b)),
        // Near-valid SCRAM and PLAIN messages, in base64.
        "[nyp]?(=[a-z-]{0,5})?,(a=[a-z=2CD]{0,6})?,(n=[a-z=,2CD\u{0}\u{85}]{0,8})?(,r=[!-~]{0,10})?(,[a-z]=[^,]{0,5}){0,2}"
            .prop_map(|s| BASE64.encode(s)),
        "(c=[a-zA-Z0-9+/=]{0,8})?(,r=[!-~]{0,40})?(,[a-z]=[^,]{0,5}){0,2}(,p=[a-zA-Z0-9+/=]{0,48})?"
            .prop_map(|s| BASE64.encode(s)),
        "[a-z\u{0}]{0,6}\u{0}[a-z\u{0} ]{0,8}".prop_map(|s| BASE64.encode(s)),
    ]
}

fn any_mechanism() -> impl Strategy<Value = Mechanism> {
    proptest::sample::select(Mechanism::ALL.to_vec())
}

/// One database for all the cases of the property tests.
fn shared_db() -> &'static PasswdDb {
    static DB: std::sync::OnceLock<(tempfile::TempDir, PasswdDb)> = std::sync::OnceLock::new();
    &DB.get_or_init(standard_db).1
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn start_and_step_never_panic(
        mechanism in any_mechanism(),
        initial in proptest::option::of(any_line()),
        lines in proptest::collection::vec(any_line(), 0..4),
        identity in proptest::option::of("[a-z]{0,4}"),
    ) {
        let db = shared_db();
        let ctx = SaslContext {
            hostname: "h".to_string(),
            tls_client_identity: identity,
            nonces: Nonces::chosen(1, 2, "nonce"),
            bearer_error: Default::default(),
        };
        let (mut ex, _) = SaslExchange::start(mechanism, ctx, initial.as_deref(), db);
        for line in &lines {
            let _ = ex.step(line, db);
        }
    }

    #[test]
    fn scram_steps_never_panic(first in any_line(), last in any_line()) {
        let db = shared_db();
        let fixed = || SaslContext { nonces: Nonces::chosen(1, 2, "nonce"), ..ctx() };
        let (mut ex, _) = SaslExchange::start(Mechanism::ScramSha256, fixed(), None, db);
        let _ = ex.step(&first, db);
        let _ = ex.step(&last, db);
        // From a good client-first message, any client-final.
        let (mut ex, _) = SaslExchange::start(
            Mechanism::ScramSha256, fixed(), Some(&b64(RFC7677_CLIENT_FIRST)), db);
        let _ = ex.step(&last, db);
        let _ = ex.step(&first, db);
    }
}

#[test]
fn the_claimed_user_is_known_after_a_failure() {
    let (_dir, db) = standard_db();
    // PLAIN, in the initial response.
    let (ex, step) = SaslExchange::start(Mechanism::Plain, ctx(), Some(&b64("\0tim\0wrong")), &db);
    assert_eq!(step, SaslStep::Done(SaslOutcome::Failure));
    assert_eq!(ex.claimed_user(), Some("tim"));
    // LOGIN, in two steps: claimed from the user name on.
    let (mut ex, _) = SaslExchange::start(Mechanism::Login, ctx(), None, &db);
    assert_eq!(ex.claimed_user(), None);
    ex.step(&b64("nobody"), &db);
    assert_eq!(ex.claimed_user(), Some("nobody"));
    assert_eq!(
        ex.step(&b64("x"), &db),
        SaslStep::Done(SaslOutcome::Failure)
    );
    assert_eq!(ex.claimed_user(), Some("nobody"));
    // CRAM-MD5.
    let (mut ex, _) = SaslExchange::start(Mechanism::CramMd5, ctx(), None, &db);
    ex.step(&b64(format!("tim {}", "0".repeat(32))), &db);
    assert_eq!(ex.claimed_user(), Some("tim"));
    // SCRAM: known from the client-first message on.
    let (mut ex, _) = SaslExchange::start(Mechanism::ScramSha256, ctx(), None, &db);
    ex.step(&b64(RFC7677_CLIENT_FIRST), &db);
    assert_eq!(ex.claimed_user(), Some("user"));
}

/// Over-long credentials are refused before any lookup or hashing, in every mechanism, with
/// the user name known for the failed-login penalty.
#[test]
fn over_long_credentials_are_refused_without_hashing() {
    let (_dir, db) = standard_db();
    let long_user = "u".repeat(USER_NAME_MAX_LEN + 1);
    let long_password = "p".repeat(PASSWORD_MAX_LEN + 1);
    let ok_user = "u".repeat(USER_NAME_MAX_LEN);
    let refused_user = SaslStep::Refused(Msg::UserNameTooLong);
    let refused_password = SaslStep::Refused(Msg::PasswordTooLong);
    let derived = derivations();

    let (ex, step) = start(
        Mechanism::Plain,
        Some(&b64(format!("\0tim\0{long_password}"))),
        &db,
    );
    assert_eq!(step, refused_password);
    assert_eq!(ex.claimed_user(), Some("tim"));
    let (ex, step) = start(
        Mechanism::Plain,
        Some(&b64(format!("\0{long_user}\0x"))),
        &db,
    );
    assert_eq!(step, refused_user);
    assert_eq!(ex.claimed_user(), Some(long_user.as_str()));
    let (_, step) = start(
        Mechanism::Plain,
        Some(&b64(format!("{long_user}\0tim\0x"))),
        &db,
    );
    assert_eq!(step, refused_user);
    // At the limits, an ordinary failure.
    let at_limit = format!("\0{ok_user}\0{}", "p".repeat(PASSWORD_MAX_LEN));
    assert_eq!(
        start(Mechanism::Plain, Some(&b64(at_limit)), &db).1,
        FAILURE
    );

    let (mut ex, _) = start(Mechanism::Login, None, &db);
    assert_eq!(ex.step(&b64(&long_user), &db), refused_user);
    assert!(ex.is_over());
    let (mut ex, _) = start(Mechanism::Login, Some(&b64("tim")), &db);
    assert_eq!(ex.step(&b64(&long_password), &db), refused_password);
    assert_eq!(ex.claimed_user(), Some("tim"));

    let (mut ex, _) = start(Mechanism::CramMd5, None, &db);
    let answer = format!("{long_user} {}", "0".repeat(32));
    assert_eq!(ex.step(&b64(answer), &db), refused_user);

    let first = format!("n,,n={long_user},r=abc");
    let (ex, step) = start(Mechanism::ScramSha256, Some(&b64(first)), &db);
    assert_eq!(step, refused_user);
    assert_eq!(ex.claimed_user(), Some(long_user.as_str()));
    let first = format!("n,a={long_user},n=tim,r=abc");
    assert_eq!(
        start(Mechanism::ScramSha256, Some(&b64(first)), &db).1,
        refused_user
    );

    let with_cert = SaslContext {
        tls_client_identity: Some("tim".into()),
        ..ctx()
    };
    let (_, step) =
        SaslExchange::start(Mechanism::External, with_cert, Some(&b64(&long_user)), &db);
    assert_eq!(step, refused_user);

    assert_eq!(derivations(), derived);
    // And the database itself hashes nothing for them, whoever calls it.
    let checks = db.slow_checks();
    assert_eq!(
        db.verify_password("tim", long_password.as_bytes()),
        AuthOutcome::Failure
    );
    assert_eq!(db.verify_password(&long_user, b"x"), AuthOutcome::Failure);
    assert_eq!(db.slow_checks(), checks);
}

/// A SCRAM exchange that stops after the client-first message, or sends a malformed or
/// mismatched client-final one, makes the server derive nothing, even for a {PLAIN} user or an
/// unknown one in a file of {PLAIN} users; only a well-formed proof costs a PBKDF2.
#[test]
fn scram_derives_only_for_a_proof() {
    let (_dir, db) = db("tim:{PLAIN}tanstaaf\nann:{PLAIN}other\n");
    let derived = derivations;
    let before = derived();
    for user in ["tim", "nobody"] {
        for _ in 0..20 {
            let first = format!("n,,n={user},r=clientnonce");
            let (mut ex, step) = start(Mechanism::ScramSha256, Some(&b64(first)), &db);
            assert!(matches!(step, SaslStep::Challenge(_)));
            assert!(is_malformed(&ex.step(&b64("c=biws,r=x,p=garbage"), &db)));
        }
        let first = format!("n,,n={user},r=clientnonce");
        let (mut ex, _) = start(Mechanism::ScramSha256, Some(&b64(first)), &db);
        let wrong_nonce = format!("c=biws,r=clientnonceX,p={}", b64([0u8; 32]));
        assert_eq!(ex.step(&b64(wrong_nonce), &db), FAILURE);
    }
    assert_eq!(derived(), before);
    // A proof costs one derivation, for the {PLAIN} user and for the unknown one alike.
    assert_eq!(scram_login(&db, "n,,", "tim", b"wrong"), FAILURE);
    assert_eq!(derived() - before, 1);
    assert_eq!(scram_login(&db, "n,,", "nobody", b"wrong"), FAILURE);
    assert_eq!(derived() - before, 2);
    assert_eq!(
        scram_login(&db, "n,,", "tim", b"tanstaaf"),
        success("tim", None)
    );
}

/// Each way an exchange fails leaves its reason for the log, and the client's step is the same
/// `Done(Failure)` whatever the reason.
#[test]
fn failures_say_why_for_the_log() {
    use crate::FailureReason::*;
    let (_dir, db) = standard_db();
    let reason = |mechanism: Mechanism, ctx: SaslContext, ir: Option<&str>, next: Option<&str>| {
        let (mut ex, mut step) = SaslExchange::start(mechanism, ctx, ir, &db);
        if let Some(line) = next {
            step = ex.step(line, &db);
        }
        assert_eq!(step, FAILURE, "{mechanism}");
        ex.failure_reason()
    };
    let plain = |authz: &str, user: &str, pw: &str| b64(format!("{authz}\0{user}\0{pw}"));
    assert_eq!(
        reason(Mechanism::Plain, ctx(), Some(&plain("", "tim", "x")), None),
        Some(WrongPassword)
    );
    assert_eq!(
        reason(
            Mechanism::Plain,
            ctx(),
            Some(&plain("", "nobody", "x")),
            None
        ),
        Some(UnknownUser)
    );
    assert_eq!(
        reason(
            Mechanism::Plain,
            ctx(),
            Some(&plain("tim", "sha", "x")),
            None
        ),
        Some(OtherIdentity)
    );
    assert_eq!(
        reason(
            Mechanism::Login,
            ctx(),
            Some(&b64("nobody")),
            Some(&b64("x"))
        ),
        Some(UnknownUser)
    );
    let cram = |user: &str| b64(format!("{user} {}", "0".repeat(32)));
    assert_eq!(
        reason(Mechanism::CramMd5, ctx(), None, Some(&cram("sha"))),
        Some(MethodImpossible(Scheme::Sha256Crypt.name()))
    );
    assert_eq!(
        reason(Mechanism::CramMd5, ctx(), None, Some(&cram("user"))),
        Some(MethodImpossible(Scheme::ScramSha256.name()))
    );
    assert_eq!(
        reason(Mechanism::CramMd5, ctx(), None, Some(&cram("tim"))),
        Some(WrongPassword)
    );
    assert_eq!(
        reason(Mechanism::CramMd5, ctx(), None, Some(&cram("nobody"))),
        Some(UnknownUser)
    );
    let identity = |id: Option<&str>| SaslContext {
        tls_client_identity: id.map(str::to_string),
        ..ctx()
    };
    assert_eq!(
        reason(Mechanism::External, identity(None), Some("="), None),
        Some(NoCertificateIdentity)
    );
    assert_eq!(
        reason(
            Mechanism::External,
            identity(Some("nobody")),
            Some("="),
            None
        ),
        Some(UnknownUser)
    );
    assert_eq!(
        reason(
            Mechanism::External,
            identity(Some("tim")),
            Some(&b64("cram")),
            None
        ),
        Some(OtherIdentity)
    );
    // SCRAM: the reason is known only at the proof, like the verdict.
    let scram = |user: &str, password: &[u8]| {
        let bare = format!("n={user},r=clientnonce123");
        let (mut ex, step) = SaslExchange::start(
            Mechanism::ScramSha256,
            ctx(),
            Some(&b64(format!("n,,{bare}"))),
            &db,
        );
        let server_first = challenge_text(step);
        assert_eq!(ex.failure_reason(), None);
        let (client_final, _) = scram_client_final(password, "n,,", &bare, &server_first);
        assert_eq!(ex.step(&b64(client_final), &db), FAILURE);
        ex.failure_reason()
    };
    assert_eq!(scram("user", b"wrong"), Some(WrongPassword));
    assert_eq!(scram("nobody", b"pencil"), Some(UnknownUser));
    assert_eq!(
        scram("sha", b"secret"),
        Some(MethodImpossible(Scheme::Sha256Crypt.name()))
    );
    // A success leaves no reason.
    let (ex, step) = start(
        Mechanism::Plain,
        Some(&plain("", "tim", "tanstaaftanstaaf")),
        &db,
    );
    assert_eq!(step, success("tim", Some("/home/tim")));
    assert_eq!(ex.failure_reason(), None);
}
