//! Every SASL mechanism (`facteur_auth::SaslExchange`) driven as the connection driver does,
//! with the client's lines chosen by the fuzzer, against a small passwd-file. Never panics; an
//! exchange that ended says so and refuses further lines; and nobody logs in without the secret:
//! PLAIN and LOGIN succeed only with the user's password sent, CRAM-MD5 and SCRAM-SHA-256 (whose
//! answers need an HMAC over a random challenge) never, EXTERNAL only as the TLS identity.
#![no_main]

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use facteur_auth::{
    hash_password, AuthOutcome, Mechanism, PasswdDb, SaslContext, SaslExchange, SaslStep, Scheme,
};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// (user, scheme, password). CRAM-MD5 users are the majority so that the work done for unknown
/// users (the file's most common scheme) stays cheap; one SCRAM user, one PLAIN user.
const USERS: &[(&str, Scheme, &str)] = &[
    ("alice", Scheme::Plain, "alice-pw"),
    ("bob", Scheme::CramMd5, "bob-pw"),
    ("carol", Scheme::ScramSha256, "carol-pw"),
    ("erin", Scheme::CramMd5, "erin-pw"),
    ("frank", Scheme::CramMd5, "frank-pw"),
];

/// The passwd-file, written once to a temporary file and loaded with `PasswdDb::open`. The file
/// is removed right away: the loaded users stay in use (a missing file is not reloaded).
fn db() -> &'static PasswdDb {
    static DB: OnceLock<PasswdDb> = OnceLock::new();
    DB.get_or_init(|| {
        let mut text = String::new();
        for (user, scheme, password) in USERS {
            let stored = hash_password(*scheme, password.as_bytes()).expect("hash");
            text.push_str(&format!("{user}:{stored}::::/home/{user}\n"));
        }
        let path = std::env::temp_dir().join(format!("facteur-fuzz-{}.passwd", std::process::id()));
        std::fs::write(&path, text).expect("write the passwd-file");
        let db = PasswdDb::open(&path).expect("load the passwd-file");
        let _ = std::fs::remove_file(&path);
        db
    })
}

/// True if `sent` is the password. A `{CRAM-MD5}` secret is an HMAC-MD5 key schedule, in which
/// a key of up to 64 octets is padded with NULs: "pw" and "pw\0\0" are the same key (inherent in
/// the scheme, as in Dovecot), so for those users trailing NULs are allowed.
fn matches_password(sent: &[u8], password: &str, scheme: Scheme) -> bool {
    let key_padding = scheme == Scheme::CramMd5 && sent.len() <= 64;
    let sent = match key_padding {
        true => sent
            .iter()
            .rposition(|&b| b != 0)
            .map_or(&sent[..0], |i| &sent[..=i]),
        false => sent,
    };
    sent == password.as_bytes()
}

/// One client line: `!` then the line as sent, or else data that the client base64-encodes.
fn client_line(raw: &[u8], initial: bool) -> Option<String> {
    match raw.strip_prefix(b"!") {
        Some(sent) => String::from_utf8(sent.to_vec()).ok(), // the driver refuses non-UTF-8
        None if raw.is_empty() && initial => Some("=".into()),
        None => Some(BASE64.encode(raw)),
    }
}

fuzz_target!(|input: &[u8]| {
    // Byte 0: the mechanism; byte 1: initial response or not, and the TLS client identity.
    let Some((head, rest)) = input.split_at_checked(2) else {
        return;
    };
    let mechanism = Mechanism::ALL[usize::from(head[0]) % Mechanism::ALL.len()];
    let identity =
        [None, Some("alice"), Some("carol"), Some("mallory")][usize::from(head[1] >> 1) % 4];
    let ctx = SaslContext {
        hostname: "fuzz.example".into(),
        tls_client_identity: identity.map(str::to_string),
    };
    let mut lines = rest.split(|&b| b == b'\n');
    let mut sent: Vec<Vec<u8>> = Vec::new(); // what the client sent, decoded
    let mut note = |line: &str| sent.extend(BASE64.decode(line));

    let initial = match head[1] & 1 {
        0 => None,
        _ => match client_line(lines.next().unwrap_or_default(), true) {
            Some(line) => Some(line),
            None => return,
        },
    };
    if let Some(line) = &initial {
        note(line);
    }
    let (mut exchange, mut step) = SaslExchange::start(mechanism, ctx, initial.as_deref(), db());
    let outcome = loop {
        match step {
            SaslStep::Challenge(_) => {
                assert!(
                    !exchange.is_over(),
                    "{mechanism}: a challenge from an exchange that is over"
                );
                let Some(raw) = lines.next() else { return };
                if raw == b"*" {
                    return; // cancelled: the driver answers -ERR and drops the exchange
                }
                let Some(line) = client_line(raw, false) else {
                    return;
                };
                note(&line);
                step = exchange.step(&line, db());
            }
            // Too long to be checked: refused before any lookup, and over.
            SaslStep::Malformed(_) | SaslStep::Refused(_) => break None,
            SaslStep::Done(outcome) => break Some(outcome),
        }
    };
    assert!(exchange.is_over(), "{mechanism}: ended but not over");
    assert!(
        matches!(exchange.step("", db()), SaslStep::Malformed(_)),
        "{mechanism}: a line accepted after the end"
    );
    let debug = format!("{exchange:?}");
    assert!(
        !USERS.iter().any(|(_, _, pw)| debug.contains(pw)),
        "password in {debug}"
    );

    let Some(AuthOutcome::Success(account)) = outcome else {
        return;
    };
    let &(_, scheme, password) = USERS
        .iter()
        .find(|(user, ..)| *user == account.user)
        .unwrap_or_else(|| {
            panic!(
                "{mechanism}: logged in as {:?}, not in the file",
                account.user
            )
        });
    match mechanism {
        Mechanism::Plain | Mechanism::Login => {
            // PLAIN's password is what follows the last NUL; LOGIN's is the whole line.
            let proves = |d: &Vec<u8>| {
                let pw = d
                    .rsplit(|&b| b == 0)
                    .next()
                    .filter(|_| mechanism == Mechanism::Plain);
                matches_password(pw.unwrap_or(d), password, scheme)
            };
            assert!(
                sent.iter().any(proves),
                "{mechanism}: {} logged in without the password",
                account.user
            );
            assert_eq!(exchange.claimed_user(), Some(account.user.as_str()));
        }
        Mechanism::CramMd5 | Mechanism::ScramSha256 => {
            panic!(
                "{mechanism}: {} logged in without computing the answer",
                account.user
            )
        }
        Mechanism::External => assert_eq!(identity, Some(account.user.as_str()), "EXTERNAL"),
    }
});
