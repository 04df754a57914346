//! Every SASL mechanism (`facteur_proto::sasl::SaslExchange`) driven as the connection driver
//! does, with the client's lines chosen by the fuzzer, against a small user database written
//! here as the exchange's verifier, with real checks. Never panics; an exchange that ended says
//! so and refuses further lines; no password shows in its `Debug`; and nobody logs in without
//! the secret: PLAIN and LOGIN succeed only with the user's password sent, CRAM-MD5 only with
//! the HMAC-MD5 of that password over the challenge sent, SCRAM-SHA-256 never (its proof needs
//! the password, or a preimage of SHA-256), EXTERNAL only as the TLS identity, OAUTHBEARER and
//! XOAUTH2 only with the user's token (`token-for-USER` here) and no other authorization
//! identity; no token shows in the exchange's `Debug`.
#![no_main]

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use facteur_proto::sasl::{
    FailureReason, Mechanism, Nonces, SaslContext, SaslExchange, SaslOutcome, SaslStep,
    SaslVerifier, ScramCredentials, ScramKeys, KEY_LEN, SCRAM_MIN_ITERATIONS,
};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use md5::Md5;
use std::sync::OnceLock;

/// How a user's secret is kept, as in facteur's passwd-file: which mechanisms can use it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stored {
    /// The password itself: every mechanism; SCRAM's keys derived from it at the proof.
    Plain,
    /// An HMAC-MD5 key schedule: PLAIN, LOGIN and CRAM-MD5, not SCRAM.
    CramMd5,
    /// SCRAM keys: PLAIN, LOGIN and SCRAM, not CRAM-MD5.
    Scram,
}

/// (user, how the secret is kept, password). CRAM-MD5 users are the majority so that the work
/// done for the SCRAM proof of users who cannot use it stays cheap; one SCRAM user, one PLAIN.
const USERS: &[(&str, Stored, &str)] = &[
    ("alice", Stored::Plain, "alice-pw"),
    ("bob", Stored::CramMd5, "bob-pw"),
    ("carol", Stored::Scram, "carol-pw"),
    ("erin", Stored::CramMd5, "erin-pw"),
    ("frank", Stored::CramMd5, "frank-pw"),
];

const SALT: &[u8] = b"facteur fuzz salt";

fn user(name: &str) -> Option<(Stored, &'static str)> {
    USERS
        .iter()
        .find(|(u, ..)| *u == name)
        .map(|&(_, stored, password)| (stored, password))
}

/// Carol's stored SCRAM keys, derived once.
fn carol_keys() -> &'static ScramKeys {
    static KEYS: OnceLock<ScramKeys> = OnceLock::new();
    KEYS.get_or_init(|| ScramKeys::derive(b"carol-pw", SALT, SCRAM_MIN_ITERATIONS))
}

/// HMAC-MD5(password, challenge) in lowercase hex: CRAM-MD5's digest (RFC 2195).
fn cram_md5_digest(password: &[u8], challenge: &[u8]) -> String {
    let mut mac = <Hmac<Md5> as Mac>::new_from_slice(password).expect("HMAC takes any key");
    mac.update(challenge);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The user database. Accounts are user names.
struct Users;

impl SaslVerifier for Users {
    type Account = String;

    fn check_password(&self, name: &str, password: &[u8]) -> Result<String, FailureReason> {
        match user(name) {
            Some((_, p)) if p.as_bytes() == password => Ok(name.to_string()),
            Some(_) => Err(FailureReason::WrongPassword),
            None => Err(FailureReason::UnknownUser),
        }
    }

    fn check_cram_md5(
        &self,
        name: &str,
        challenge: &[u8],
        digest_hex: &str,
    ) -> Result<String, FailureReason> {
        match user(name) {
            Some((Stored::Scram, _)) => Err(FailureReason::MethodImpossible("SCRAM-SHA-256")),
            Some((_, password)) => {
                let expected = cram_md5_digest(password.as_bytes(), challenge);
                if expected.eq_ignore_ascii_case(digest_hex) {
                    Ok(name.to_string())
                } else {
                    Err(FailureReason::WrongPassword)
                }
            }
            None => Err(FailureReason::UnknownUser),
        }
    }

    fn scram_credentials(&self, name: &str) -> ScramCredentials<String> {
        let account = Some(name.to_string());
        match user(name) {
            Some((Stored::Scram, _)) => ScramCredentials::from_keys(carol_keys().clone(), account),
            Some((Stored::Plain, password)) => ScramCredentials::from_password(
                password.as_bytes(),
                SALT,
                SCRAM_MIN_ITERATIONS,
                account,
            ),
            other => {
                let made_up = ScramKeys {
                    iterations: SCRAM_MIN_ITERATIONS,
                    salt: SALT.to_vec(),
                    stored_key: [0x5a; KEY_LEN],
                    server_key: [0xa5; KEY_LEN],
                };
                let reason = match other {
                    Some(_) => FailureReason::MethodImpossible("CRAM-MD5"),
                    None => FailureReason::UnknownUser,
                };
                ScramCredentials::made_up(made_up, false).because(reason)
            }
        }
    }

    fn account(&self, identity: &str) -> Option<String> {
        user(identity).map(|_| identity.to_string())
    }

    /// A good token is `token-for-USER` (any user: the account is looked up after).
    fn check_bearer(&self, token: &str) -> Result<String, FailureReason> {
        token
            .strip_prefix("token-for-")
            .map(str::to_string)
            .ok_or(FailureReason::BadToken("bad signature"))
    }
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
    // Byte 0: the mechanism, and whether the driver had random bytes; byte 1: initial response
    // or not, and the TLS client identity.
    let Some((head, rest)) = input.split_at_checked(2) else {
        return;
    };
    let mechanism = Mechanism::ALL[usize::from(head[0] & 0x7f) % Mechanism::ALL.len()];
    let identity =
        [None, Some("alice"), Some("carol"), Some("mallory")][usize::from(head[1] >> 1) % 4];
    // Fixed nonces: the fuzzer sees the challenges, as any client does.
    let nonces = (head[0] & 0x80 == 0).then(|| Nonces::new([0x42; Nonces::RANDOM_LEN], 1 << 30));
    let ctx = SaslContext {
        hostname: "fuzz.example".into(),
        tls_client_identity: identity.map(str::to_string),
        nonces,
        bearer_error: Default::default(),
    };
    let mut lines = rest.split(|&b| b == b'\n');
    let mut sent: Vec<Vec<u8>> = Vec::new(); // what the client sent, decoded
    let mut challenges: Vec<Vec<u8>> = Vec::new();
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
    let (mut exchange, mut step) = SaslExchange::start(mechanism, ctx, initial.as_deref(), &Users);
    let outcome = loop {
        match step {
            SaslStep::Challenge(challenge) => {
                assert!(
                    !exchange.is_over(),
                    "{mechanism}: a challenge from an exchange that is over"
                );
                challenges.push(challenge);
                let Some(raw) = lines.next() else { return };
                if raw == b"*" {
                    return; // cancelled: the driver answers -ERR and drops the exchange
                }
                let Some(line) = client_line(raw, false) else {
                    return;
                };
                note(&line);
                step = exchange.step(&line, &Users);
            }
            // Malformed, or too long to be checked: refused before any lookup, and over.
            SaslStep::Malformed(_) | SaslStep::Refused(_) => break None,
            SaslStep::Done(outcome) => break Some(outcome),
        }
    };
    assert!(exchange.is_over(), "{mechanism}: ended but not over");
    assert!(
        matches!(exchange.step("", &Users), SaslStep::Malformed(_)),
        "{mechanism}: a line accepted after the end"
    );
    let debug = format!("{exchange:?}");
    assert!(
        !USERS.iter().any(|(_, _, pw)| debug.contains(pw)) && !debug.contains("token-for-"),
        "password or token in {debug}"
    );

    let Some(SaslOutcome::Success(account)) = outcome else {
        return;
    };
    let (stored, password) = user(&account)
        .unwrap_or_else(|| panic!("{mechanism}: logged in as {account:?}, not a user"));
    match mechanism {
        Mechanism::Plain | Mechanism::Login => {
            // PLAIN's password is what follows the last NUL; LOGIN's is the whole line.
            let proves = |d: &Vec<u8>| {
                let pw = d
                    .rsplit(|&b| b == 0)
                    .next()
                    .filter(|_| mechanism == Mechanism::Plain);
                pw.unwrap_or(d) == password.as_bytes()
            };
            assert!(
                sent.iter().any(proves),
                "{mechanism}: {account} logged in without the password"
            );
            assert_eq!(exchange.claimed_user(), Some(account.as_str()));
        }
        Mechanism::CramMd5 => {
            assert!(stored != Stored::Scram, "CRAM-MD5: {account} has no usable secret");
            let [challenge] = &challenges[..] else {
                panic!("CRAM-MD5: {account} logged in after {} challenges", challenges.len());
            };
            let digest = cram_md5_digest(password.as_bytes(), challenge);
            let proves = |d: &Vec<u8>| {
                std::str::from_utf8(d).is_ok_and(|d| {
                    d.rsplit_once(' ').is_some_and(|(u, h)| {
                        u == account && h.eq_ignore_ascii_case(&digest)
                    })
                })
            };
            assert!(
                sent.iter().any(proves),
                "CRAM-MD5: {account} logged in without the HMAC of the password"
            );
        }
        Mechanism::ScramSha256 => {
            panic!("SCRAM-SHA-256: {account} logged in without computing the proof")
        }
        Mechanism::External => assert_eq!(identity, Some(account.as_str()), "EXTERNAL"),
        Mechanism::OAuthBearer | Mechanism::XOAuth2 => {
            // The token ends at the \x01 that ends its pair.
            let token = format!(" token-for-{account}\x01");
            let proves = |d: &Vec<u8>| String::from_utf8_lossy(d).contains(&token);
            assert!(
                sent.iter().any(proves),
                "{mechanism}: {account} logged in without the user's token"
            );
        }
    }
});
