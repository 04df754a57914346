//! The SASL state machines against a small verifier written here: no file, no socket. The
//! mechanisms against facteur's real passwd-file are tested in facteur's auth module.

use std::cell::Cell;

use hmac::{Hmac, Mac};
use md5::Md5;

use super::*;

const HOST: &str = "postoffice.reston.mci.net";

// RFC 2195 section 2: the challenge, and tim's answer with the password "tanstaaftanstaaf".
const RFC2195_CHALLENGE: &str = "<1896.697170952@postoffice.reston.mci.net>";
const RFC2195_DIGEST: &str = "b913a602c7eda7a495b4e6e7334d3890";

// RFC 7677 section 3: user "user", password "pencil". The server's part of the nonce ends in
// "$k0".
const RFC7677_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
const RFC7677_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
const RFC7677_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
const RFC7677_SERVER_FIRST: &str =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const RFC7677_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const RFC7677_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

/// (user, password). "user" has stored SCRAM keys (RFC 7677's), "tim" a password the SCRAM
/// keys are derived from at the proof.
/// "josé" has a UTF-8 name and password, stored in NFC.
const USERS: &[(&str, &str)] = &[
    ("tim", "tanstaaftanstaaf"),
    ("user", "pencil"),
    ("jos\u{e9}", "caf\u{e9}"),
];

/// A user database in memory that counts the checks it is asked for. Its accounts are user
/// names.
#[derive(Default)]
struct Users {
    checks: Cell<usize>,
}

impl Users {
    fn password(&self, user: &str) -> Option<&'static str> {
        self.checks.set(self.checks.get() + 1);
        USERS.iter().find(|(u, _)| *u == user).map(|(_, p)| *p)
    }
}

impl SaslVerifier for Users {
    type Account = String;

    fn check_password(&self, user: &str, password: &[u8]) -> Result<String, FailureReason> {
        match self.password(user) {
            Some(p) if p.as_bytes() == password => Ok(user.to_string()),
            Some(_) => Err(FailureReason::WrongPassword),
            None => Err(FailureReason::UnknownUser),
        }
    }

    fn check_cram_md5(
        &self,
        user: &str,
        challenge: &[u8],
        digest_hex: &str,
    ) -> Result<String, FailureReason> {
        let Some(password) = self.password(user) else {
            return Err(FailureReason::UnknownUser);
        };
        let mut mac = <Hmac<Md5> as Mac>::new_from_slice(password.as_bytes()).unwrap();
        mac.update(challenge);
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if expected.eq_ignore_ascii_case(digest_hex) {
            Ok(user.to_string())
        } else {
            Err(FailureReason::WrongPassword)
        }
    }

    fn scram_credentials(&self, user: &str) -> ScramCredentials<String> {
        let salt = BASE64.decode(RFC7677_SALT).unwrap();
        match self.password(user) {
            Some(password) if user == "user" => ScramCredentials::from_keys(
                ScramKeys::derive(password.as_bytes(), &salt, 4096),
                Some(user.to_string()),
            ),
            Some(password) => ScramCredentials::from_password(
                password.as_bytes(),
                b"tim's salt",
                4096,
                Some(user.to_string()),
            ),
            None => ScramCredentials::made_up(
                ScramKeys {
                    iterations: 4096,
                    salt: b"made-up salt".to_vec(),
                    stored_key: [1; KEY_LEN],
                    server_key: [2; KEY_LEN],
                },
                false,
            ),
        }
    }

    fn account(&self, identity: &str) -> Option<String> {
        self.password(identity).map(|_| identity.to_string())
    }

    /// Tokens of the form `good.USER` name USER; any other is refused.
    fn check_bearer(&self, token: &str) -> Result<String, FailureReason> {
        self.checks.set(self.checks.get() + 1);
        match token.strip_prefix("good.") {
            Some(user) => Ok(user.to_string()),
            None => Err(FailureReason::BadToken("bad signature")),
        }
    }

    /// Forged tokens `forged.USER` claim USER.
    fn bearer_claimed_user(&self, token: &str) -> Option<String> {
        token.strip_prefix("forged.").map(str::to_string)
    }
}

type Step = SaslStep<String>;
type Exchange = SaslExchange<String>;

fn b64(data: impl AsRef<[u8]>) -> String {
    BASE64.encode(data)
}

/// A context with RFC 2195's challenge and RFC 7677's server nonce.
fn ctx() -> SaslContext {
    SaslContext {
        hostname: HOST.to_string(),
        tls_client_identity: None,
        nonces: Nonces::chosen(1896, 697_170_952, RFC7677_SERVER_NONCE),
        bearer_error: BearerErrorInfo {
            scope: Some("mail".to_string()),
            openid_configuration: Some(
                "https://issuer.test/.well-known/openid-configuration".to_string(),
            ),
        },
    }
}

fn start(mechanism: Mechanism, ir: Option<&str>, users: &Users) -> (Exchange, Step) {
    SaslExchange::start(mechanism, ctx(), ir, users)
}

fn success(user: &str) -> Step {
    SaslStep::Done(SaslOutcome::Success(user.to_string()))
}

const FAILURE: Step = SaslStep::Done(SaslOutcome::Failure);

/// Asserts the exchange is over and takes no further line, whatever it is.
fn assert_over(ex: &mut Exchange, users: &Users) {
    assert!(ex.is_over());
    for line in ["", "=", "dGlt", &b64("\0tim\0tanstaaftanstaaf")] {
        assert_eq!(
            ex.step(line, users),
            SaslStep::Malformed(Msg::SaslExchangeOver),
            "{line:?}"
        );
    }
}

#[test]
fn mechanism_names() {
    for m in Mechanism::ALL {
        assert_eq!(m.name().parse::<Mechanism>(), Ok(m));
        assert_eq!(m.name().to_ascii_lowercase().parse::<Mechanism>(), Ok(m));
        assert_eq!(m.to_string(), m.name());
    }
    assert_eq!("Scram-Sha-256".parse(), Ok(Mechanism::ScramSha256));
    assert_eq!("cram-md5".parse(), Ok(Mechanism::CramMd5));
    for unknown in [
        "",
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-1",
        "DIGEST-MD5",
        "PLAIN ",
        "GSSAPI",
    ] {
        assert_eq!(
            unknown.parse::<Mechanism>(),
            Err(UnknownMechanism),
            "{unknown}"
        );
    }
    assert!(Mechanism::Plain.sends_password());
    assert!(Mechanism::Login.sends_password());
    assert!(!Mechanism::CramMd5.sends_password());
    assert!(!Mechanism::ScramSha256.sends_password());
    assert!(!Mechanism::External.sends_password());
    for m in Mechanism::ALL {
        let fresh_challenge = matches!(m, Mechanism::CramMd5 | Mechanism::ScramSha256);
        assert_eq!(m.needs_nonces(), fresh_challenge, "{m}");
    }
}

#[test]
fn plain() {
    let users = Users::default();
    // With the initial response, with and without an authorization identity.
    for message in ["\0tim\0tanstaaftanstaaf", "tim\0tim\0tanstaaftanstaaf"] {
        let (mut ex, step) = start(Mechanism::Plain, Some(&b64(message)), &users);
        assert_eq!(step, success("tim"));
        assert_eq!(ex.claimed_user(), Some("tim"));
        assert_eq!(ex.failure_reason(), None);
        assert_over(&mut ex, &users);
    }
    // Without: an empty challenge, then the message.
    let (mut ex, step) = start(Mechanism::Plain, None, &users);
    assert_eq!(step, SaslStep::Challenge(Vec::new()));
    assert!(!ex.is_over());
    assert_eq!(
        ex.step(&b64("\0tim\0tanstaaftanstaaf"), &users),
        success("tim")
    );
    assert_over(&mut ex, &users);
    // Failures, each with its reason for the log.
    for (message, reason) in [
        ("\0tim\0tanstaaf", FailureReason::WrongPassword),
        ("\0nobody\0tanstaaftanstaaf", FailureReason::UnknownUser),
        ("user\0tim\0tanstaaftanstaaf", FailureReason::OtherIdentity),
    ] {
        let (mut ex, step) = start(Mechanism::Plain, Some(&b64(message)), &users);
        assert_eq!(step, FAILURE, "{message:?}");
        assert_eq!(ex.failure_reason(), Some(reason), "{message:?}");
        assert_over(&mut ex, &users);
    }
}

/// RFC 6856 and RFC 4616: a name and a password sent in NFD find the user stored in NFC, by
/// PLAIN, LOGIN and SCRAM's name; a prohibited code point is refused before any check.
#[test]
fn utf8_identities_are_saslprepped() {
    let users = Users::default();
    let (name_nfd, password_nfd) = ("jose\u{301}", "cafe\u{301}");
    let plain = b64(format!("\0{name_nfd}\0{password_nfd}"));
    assert_eq!(
        start(Mechanism::Plain, Some(&plain), &users).1,
        success("jos\u{e9}")
    );
    let plain = b64(format!("{name_nfd}\0jos\u{e9}\0{password_nfd}"));
    assert_eq!(
        start(Mechanism::Plain, Some(&plain), &users).1,
        success("jos\u{e9}")
    );
    let (mut ex, _) = start(Mechanism::Login, Some(&b64(name_nfd)), &users);
    assert_eq!(ex.step(&b64(password_nfd), &users), success("jos\u{e9}"));
    let checks = users.checks.get();
    for bad in ["\0jos\u{e9}\u{e000}\0x", "\0jos\u{e9}\0caf\u{e9}\u{200e}"] {
        let (_, step) = start(Mechanism::Plain, Some(&b64(bad)), &users);
        assert_eq!(step, SaslStep::Refused(Msg::Utf8Prohibited));
    }
    assert_eq!(
        users.checks.get(),
        checks,
        "no check for a refused credential"
    );
    let first = b64(format!("n,,n={name_nfd},r=abc"));
    let (ex, step) = start(Mechanism::ScramSha256, Some(&first), &users);
    assert!(matches!(step, SaslStep::Challenge(_)), "{step:?}");
    assert_eq!(ex.claimed_user(), Some("jos\u{e9}"));
}

#[test]
fn login() {
    let users = Users::default();
    let (mut ex, step) = start(Mechanism::Login, None, &users);
    assert_eq!(step, SaslStep::Challenge(b"Username:".to_vec()));
    assert_eq!(ex.claimed_user(), None);
    assert_eq!(
        ex.step(&b64("tim"), &users),
        SaslStep::Challenge(b"Password:".to_vec())
    );
    assert_eq!(ex.claimed_user(), Some("tim"));
    assert_eq!(users.checks.get(), 0);
    assert_eq!(ex.step(&b64("tanstaaftanstaaf"), &users), success("tim"));
    assert_over(&mut ex, &users);
    // The initial response is the user name.
    let (mut ex, step) = start(Mechanism::Login, Some(&b64("tim")), &users);
    assert_eq!(step, SaslStep::Challenge(b"Password:".to_vec()));
    assert_eq!(ex.step(&b64("wrong"), &users), FAILURE);
    assert_eq!(ex.failure_reason(), Some(FailureReason::WrongPassword));
    assert_over(&mut ex, &users);
    // An empty user name.
    let (_, step) = start(Mechanism::Login, Some("="), &users);
    assert!(matches!(step, SaslStep::Malformed(_)), "{step:?}");
}

#[test]
fn cram_md5_rfc2195() {
    let users = Users::default();
    let (mut ex, step) = start(Mechanism::CramMd5, None, &users);
    assert_eq!(
        step,
        SaslStep::Challenge(RFC2195_CHALLENGE.as_bytes().to_vec())
    );
    assert_eq!(
        ex.step(&b64(format!("tim {RFC2195_DIGEST}")), &users),
        success("tim")
    );
    assert_over(&mut ex, &users);
    // Upper-case hex is the same digest, to this verifier.
    let (mut ex, _) = start(Mechanism::CramMd5, None, &users);
    let upper = RFC2195_DIGEST.to_ascii_uppercase();
    assert_eq!(
        ex.step(&b64(format!("tim {upper}")), &users),
        success("tim")
    );
    // The right digest for the wrong user, and for nobody.
    for (user, reason) in [
        ("user", FailureReason::WrongPassword),
        ("nobody", FailureReason::UnknownUser),
    ] {
        let (mut ex, _) = start(Mechanism::CramMd5, None, &users);
        assert_eq!(
            ex.step(&b64(format!("{user} {RFC2195_DIGEST}")), &users),
            FAILURE
        );
        assert_eq!(ex.failure_reason(), Some(reason));
        assert_eq!(ex.claimed_user(), Some(user));
    }
}

#[test]
fn cram_md5_challenges_come_from_the_nonces() {
    let users = Users::default();
    let mut random = [0u8; Nonces::RANDOM_LEN];
    random[..8].copy_from_slice(&1896u64.to_be_bytes());
    let nonces = Nonces::new(random, 697_170_952);
    for (hostname, host) in [
        (HOST, HOST),
        ("", "localhost"),
        ("a b", "localhost"),
        ("a<b", "localhost"),
        ("a@b", "localhost"),
        ("hôte", "localhost"),
    ] {
        let ctx = SaslContext {
            hostname: hostname.to_string(),
            tls_client_identity: None,
            nonces: Some(nonces.clone()),
            bearer_error: BearerErrorInfo::default(),
        };
        let (_, step) = SaslExchange::start(Mechanism::CramMd5, ctx, None, &users);
        let expected = format!("<1896.697170952@{host}>");
        assert_eq!(
            step,
            SaslStep::Challenge(expected.into_bytes()),
            "{hostname:?}"
        );
    }
    // No nonces: a failure, logged as the server's fault, before any challenge.
    let none = SaslContext {
        nonces: None,
        ..ctx()
    };
    let (mut ex, step) = SaslExchange::start(Mechanism::CramMd5, none, None, &users);
    assert_eq!(step, FAILURE);
    assert_eq!(ex.failure_reason(), Some(FailureReason::NoRandomness));
    assert_over(&mut ex, &users);
}

/// The client side of SCRAM from the primitives: the client-final message for `password`.
fn client_final(password: &[u8], server_first: &str, client_first_bare: &str) -> String {
    let mut attrs = server_first.split(',');
    let nonce = attrs.next().unwrap().strip_prefix("r=").unwrap();
    let salt = BASE64
        .decode(attrs.next().unwrap().strip_prefix("s=").unwrap())
        .unwrap();
    let iterations = attrs.next().unwrap().strip_prefix("i=").unwrap();
    let (client_key, keys) =
        ScramKeys::derive_with_client_key(password, &salt, iterations.parse().unwrap());
    let without_proof = format!("c=biws,r={nonce}");
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let signature = hmac_sha256(&keys.stored_key, &[auth_message.as_bytes()]);
    let proof: Vec<u8> = client_key
        .expose()
        .iter()
        .zip(signature)
        .map(|(k, s)| k ^ s)
        .collect();
    format!("{without_proof},p={}", b64(proof))
}

fn challenge_text(step: Step) -> String {
    match step {
        SaslStep::Challenge(data) => String::from_utf8(data).unwrap(),
        other => panic!("expected a challenge, got {other:?}"),
    }
}

#[test]
fn scram_rfc7677() {
    let users = Users::default();
    // With and without the client-first message as the initial response.
    for initial in [true, false] {
        let (mut ex, step) = if initial {
            start(
                Mechanism::ScramSha256,
                Some(&b64(RFC7677_CLIENT_FIRST)),
                &users,
            )
        } else {
            let (mut ex, step) = start(Mechanism::ScramSha256, None, &users);
            assert_eq!(step, SaslStep::Challenge(Vec::new()));
            let step = ex.step(&b64(RFC7677_CLIENT_FIRST), &users);
            (ex, step)
        };
        assert_eq!(challenge_text(step), RFC7677_SERVER_FIRST);
        assert_eq!(ex.claimed_user(), Some("user"));
        let step = ex.step(&b64(RFC7677_CLIENT_FINAL), &users);
        assert_eq!(challenge_text(step), RFC7677_SERVER_FINAL);
        assert!(!ex.is_over());
        // POP3 sends no data with +OK: the client answers the server-final message empty.
        assert_eq!(ex.step("", &users), success("user"));
        assert_over(&mut ex, &users);
    }
    // The helper above computes the RFC's own client-final message.
    let bare = RFC7677_CLIENT_FIRST.strip_prefix("n,,").unwrap();
    assert_eq!(
        client_final(b"pencil", RFC7677_SERVER_FIRST, bare),
        RFC7677_CLIENT_FINAL
    );
    // Anything but an empty answer to the server-final message.
    let (mut ex, _) = start(
        Mechanism::ScramSha256,
        Some(&b64(RFC7677_CLIENT_FIRST)),
        &users,
    );
    ex.step(&b64(RFC7677_CLIENT_FINAL), &users);
    assert!(matches!(ex.step("eA==", &users), SaslStep::Malformed(_)));
    assert_over(&mut ex, &users);
}

#[test]
fn scram_failures() {
    let users = Users::default();
    // A wrong proof.
    let (mut ex, _) = start(
        Mechanism::ScramSha256,
        Some(&b64(RFC7677_CLIENT_FIRST)),
        &users,
    );
    let tampered = RFC7677_CLIENT_FINAL.replace("p=dHzb", "p=dHzc");
    assert_eq!(ex.step(&b64(tampered), &users), FAILURE);
    assert_eq!(ex.failure_reason(), Some(FailureReason::WrongPassword));
    assert_over(&mut ex, &users);
    // Another nonce.
    let (mut ex, _) = start(
        Mechanism::ScramSha256,
        Some(&b64(RFC7677_CLIENT_FIRST)),
        &users,
    );
    let other_nonce = RFC7677_CLIENT_FINAL.replace("$k0,p", "$k1,p");
    assert_eq!(ex.step(&b64(other_nonce), &users), FAILURE);
    assert_eq!(ex.failure_reason(), Some(FailureReason::ExchangeMismatch));
    // An unknown user: a server-first message like anyone's, and a failure after the proof.
    let first = "n,,n=nobody,r=abc";
    let (mut ex, step) = start(Mechanism::ScramSha256, Some(&b64(first)), &users);
    let server_first = challenge_text(step);
    assert!(server_first.starts_with(&format!("r=abc{RFC7677_SERVER_NONCE},s=")));
    assert!(server_first.ends_with(",i=4096"));
    let answer = client_final(b"anything", &server_first, "n=nobody,r=abc");
    assert_eq!(ex.step(&b64(answer), &users), FAILURE);
    assert_eq!(ex.failure_reason(), Some(FailureReason::UnknownUser));
    // Logging in as somebody else.
    let (mut ex, step) = start(
        Mechanism::ScramSha256,
        Some(&b64("n,a=tim,n=user,r=abc")),
        &users,
    );
    assert_eq!(step, FAILURE);
    assert_eq!(ex.failure_reason(), Some(FailureReason::OtherIdentity));
    assert_over(&mut ex, &users);
}

#[test]
fn scram_with_keys_derived_from_a_password() {
    let users = Users::default();
    let before = derivations();
    let (mut ex, step) = start(Mechanism::ScramSha256, Some(&b64("n,,n=tim,r=xyz")), &users);
    let server_first = challenge_text(step);
    assert_eq!(derivations(), before, "no PBKDF2 before the proof");
    let answer = client_final(b"tanstaaftanstaaf", &server_first, "n=tim,r=xyz");
    let server_final = challenge_text(ex.step(&b64(answer), &users));
    assert!(server_final.starts_with("v="), "{server_final}");
    assert_eq!(ex.step("", &users), success("tim"));
}

#[test]
fn scram_nonces() {
    let users = Users::default();
    let random: [u8; Nonces::RANDOM_LEN] = std::array::from_fn(|i| i as u8);
    let fresh = SaslContext {
        nonces: Some(Nonces::new(random, 0)),
        ..ctx()
    };
    let (_, step) = SaslExchange::start(
        Mechanism::ScramSha256,
        fresh,
        Some(&b64("n,,n=user,r=abc")),
        &users,
    );
    // The server's part of the nonce: the base64 of the last 18 random bytes.
    let expected = format!("r=abc{},s=", b64(&random[8..]));
    assert!(challenge_text(step).starts_with(&expected));
    // Without nonces: the failure comes where the nonce would be used, the user claimed.
    let none = SaslContext {
        nonces: None,
        ..ctx()
    };
    let looked_up = users.checks.get();
    let (mut ex, step) = SaslExchange::start(Mechanism::ScramSha256, none, None, &users);
    assert_eq!(step, SaslStep::Challenge(Vec::new()));
    assert_eq!(ex.step(&b64("n,,n=user,r=abc"), &users), FAILURE);
    assert_eq!(ex.failure_reason(), Some(FailureReason::NoRandomness));
    assert_eq!(ex.claimed_user(), Some("user"));
    assert_eq!(users.checks.get(), looked_up, "no lookup without a nonce");
    // A chosen nonce must be one a SCRAM message can carry.
    for bad in ["", "a,b", "a b", "é", "a\0"] {
        assert_eq!(Nonces::chosen(0, 0, bad), None, "{bad:?}");
    }
}

#[test]
fn external() {
    let users = Users::default();
    let with_identity = |identity: Option<&str>| SaslContext {
        tls_client_identity: identity.map(str::to_string),
        ..ctx()
    };
    for initial in [Some("="), Some("dGlt"), None] {
        let (mut ex, step) = SaslExchange::start(
            Mechanism::External,
            with_identity(Some("tim")),
            initial,
            &users,
        );
        let step = match initial {
            Some(_) => step,
            None => {
                assert_eq!(step, SaslStep::Challenge(Vec::new()));
                ex.step("", &users)
            }
        };
        assert_eq!(step, success("tim"), "{initial:?}");
        assert_over(&mut ex, &users);
    }
    for (identity, authzid, reason) in [
        (Some("tim"), "user", FailureReason::OtherIdentity),
        (None, "", FailureReason::NoCertificateIdentity),
        (None, "tim", FailureReason::NoCertificateIdentity),
        (Some("mallory"), "", FailureReason::UnknownUser),
    ] {
        let ir = if authzid.is_empty() {
            "=".to_string()
        } else {
            b64(authzid)
        };
        let ctx = with_identity(identity);
        let (ex, step) = SaslExchange::start(Mechanism::External, ctx, Some(&ir), &users);
        assert_eq!(step, FAILURE, "{identity:?} {authzid:?}");
        assert_eq!(
            ex.failure_reason(),
            Some(reason),
            "{identity:?} {authzid:?}"
        );
    }
}

#[test]
fn malformed_input_ends_the_exchange() {
    let users = Users::default();
    let malformed_initial = [
        (Mechanism::Plain, ""),
        (Mechanism::Plain, "not base64!"),
        (Mechanism::Plain, "dGlt"),                // "tim"
        (Mechanism::Plain, &b64("\0tim\0")),       // no password
        (Mechanism::Plain, &b64("\0\0pw")),        // no user
        (Mechanism::Plain, &b64("a\0tim\0pw\0x")), // four parts
        (Mechanism::Plain, &b64(b"\0t\xffm\0pw")), // not UTF-8
        (Mechanism::Login, &b64(b"\xff")),         // not UTF-8
        (Mechanism::CramMd5, &b64(format!("tim {RFC2195_DIGEST}"))), // no initial response
        (Mechanism::ScramSha256, &b64("p=tls-unique,,n=user,r=abc")), // channel binding
        (Mechanism::ScramSha256, &b64("n,,m=ext,n=user,r=abc")), // mandatory extension
        (Mechanism::ScramSha256, &b64(b"n,,n=us\xffer,r=abc")), // not UTF-8
        (Mechanism::External, &b64(b"\xff")),      // not UTF-8
    ];
    for (mechanism, ir) in malformed_initial {
        let (mut ex, step) = start(mechanism, Some(ir), &users);
        assert!(
            matches!(step, SaslStep::Malformed(_)),
            "{mechanism} {ir:?}: {step:?}"
        );
        assert_eq!(ex.failure_reason(), None);
        assert_over(&mut ex, &users);
    }
    // A continuation line that is not base64, or not the shape the mechanism expects.
    for (mechanism, line) in [
        (Mechanism::Plain, "*not base64*"),
        (Mechanism::CramMd5, "dGlt"),
        (
            Mechanism::CramMd5,
            &b64(format!("tim {}", &RFC2195_DIGEST[..31])),
        ),
        (
            Mechanism::CramMd5,
            &b64(format!("tim {}", RFC2195_DIGEST.replace('b', "x"))),
        ),
        (Mechanism::CramMd5, &b64(format!(" {RFC2195_DIGEST}"))),
        (Mechanism::ScramSha256, &b64("n,,n=user")),
    ] {
        let (mut ex, _) = start(mechanism, None, &users);
        let step = ex.step(line, &users);
        assert!(
            matches!(step, SaslStep::Malformed(_)),
            "{mechanism} {line:?}: {step:?}"
        );
        assert_over(&mut ex, &users);
    }
    let (mut ex, _) = start(
        Mechanism::ScramSha256,
        Some(&b64(RFC7677_CLIENT_FIRST)),
        &users,
    );
    let step = ex.step(&b64(RFC7677_CLIENT_FINAL.replace("c=biws,", "")), &users);
    assert!(matches!(step, SaslStep::Malformed(_)), "{step:?}");
    assert_eq!(users.checks.get(), 1, "the one SCRAM lookup; no check");
}

#[test]
fn lines_past_the_limit_are_refused_unread() {
    let users = Users::default();
    let long = "A".repeat(MAX_SASL_LINE + 1);
    let (mut ex, step) = start(Mechanism::Plain, Some(&long), &users);
    assert_eq!(step, SaslStep::Malformed(Msg::SaslInitialTooLong));
    assert_over(&mut ex, &users);
    for mechanism in Mechanism::ALL {
        let long = "A".repeat(mechanism.max_line() + 1);
        let (mut ex, step) = start(mechanism, None, &users);
        assert!(matches!(step, SaslStep::Challenge(_)), "{mechanism}");
        assert_eq!(
            ex.step(&long, &users),
            SaslStep::Malformed(Msg::SaslLineTooLong),
            "{mechanism}"
        );
        assert_over(&mut ex, &users);
    }
    // At the limit, the line is read (and here found malformed for its content, not length).
    let at_limit = "A".repeat(MAX_SASL_LINE);
    let (mut ex, _) = start(Mechanism::Plain, None, &users);
    let step = ex.step(&at_limit, &users);
    assert!(
        matches!(step, SaslStep::Malformed(m) if !m.to_string().contains("too long")),
        "{step:?}"
    );
    assert_eq!(users.checks.get(), 0);
}

#[test]
fn over_long_credentials_are_refused_before_any_check() {
    let users = Users::default();
    let long_user = "u".repeat(USER_NAME_MAX_LEN + 1);
    let long_password = "p".repeat(PASSWORD_MAX_LEN + 1);
    let name_refused = SaslStep::Refused(Msg::UserNameTooLong);
    let password_refused = SaslStep::Refused(Msg::PasswordTooLong);
    let cases: Vec<(Mechanism, String, &Step)> = vec![
        (
            Mechanism::Plain,
            format!("\0{long_user}\0pw"),
            &name_refused,
        ),
        (
            Mechanism::Plain,
            format!("{long_user}\0tim\0pw"),
            &name_refused,
        ),
        (
            Mechanism::Plain,
            format!("\0tim\0{long_password}"),
            &password_refused,
        ),
        (Mechanism::Login, long_user.clone(), &name_refused),
        (
            Mechanism::ScramSha256,
            format!("n,,n={long_user},r=abc"),
            &name_refused,
        ),
        (
            Mechanism::ScramSha256,
            format!("n,a={long_user},n=tim,r=abc"),
            &name_refused,
        ),
        (Mechanism::External, long_user.clone(), &name_refused),
    ];
    let with_identity = SaslContext {
        tls_client_identity: Some("tim".into()),
        ..ctx()
    };
    for (mechanism, message, refused) in cases {
        let (mut ex, step) = SaslExchange::start(
            mechanism,
            with_identity.clone(),
            Some(&b64(&message)),
            &users,
        );
        assert_eq!(&step, refused, "{mechanism}");
        assert_eq!(ex.failure_reason(), None, "{mechanism}");
        assert_over(&mut ex, &users);
    }
    // LOGIN's password, and CRAM-MD5's user, come in a continuation line.
    let (mut ex, _) = start(Mechanism::Login, Some(&b64("tim")), &users);
    assert_eq!(ex.step(&b64(&long_password), &users), password_refused);
    assert_eq!(ex.claimed_user(), Some("tim"));
    let (mut ex, _) = start(Mechanism::CramMd5, None, &users);
    let answer = format!("{long_user} {RFC2195_DIGEST}");
    assert_eq!(ex.step(&b64(answer), &users), name_refused);
    assert_eq!(ex.claimed_user(), Some(long_user.as_str()));
    assert_eq!(users.checks.get(), 0, "nothing looked up, nothing hashed");
    // At the limits, the credentials are checked.
    let user = "u".repeat(USER_NAME_MAX_LEN);
    let password = "p".repeat(PASSWORD_MAX_LEN);
    let (ex, step) = start(
        Mechanism::Plain,
        Some(&b64(format!("\0{user}\0{password}"))),
        &users,
    );
    assert_eq!(step, FAILURE);
    assert_eq!(ex.failure_reason(), Some(FailureReason::UnknownUser));
    assert_eq!(users.checks.get(), 1);
}

#[test]
fn a_dyn_verifier_serves_too() {
    let users = Users::default();
    let verifier: &dyn SaslVerifier<Account = String> = &users;
    let (mut ex, _) = SaslExchange::start(Mechanism::Plain, ctx(), None, verifier);
    assert_eq!(
        ex.step(&b64("\0tim\0tanstaaftanstaaf"), verifier),
        success("tim")
    );
}

#[test]
fn debug_shows_no_secret() {
    let users = Users::default();
    let (ex, _) = start(Mechanism::Login, Some(&b64("tim")), &users);
    let debug = format!("{ex:?}");
    assert!(debug.contains("LOGIN password"), "{debug}");
    let (ex, _) = start(
        Mechanism::ScramSha256,
        Some(&b64(RFC7677_CLIENT_FIRST)),
        &users,
    );
    let debug = format!("{ex:?}");
    assert!(debug.contains("client-final"), "{debug}");
    assert!(!debug.contains("W22Z"), "{debug}");
    let mut with_password = ex;
    with_password.step(&b64(RFC7677_CLIENT_FINAL), &users);
    for (_, password) in USERS {
        assert!(!format!("{with_password:?}").contains(password));
    }
}

#[test]
fn failure_reasons_read_as_the_log_prints_them() {
    assert_eq!(
        FailureReason::MethodImpossible("SHA512-CRYPT").to_string(),
        "method impossible: the password is stored as SHA512-CRYPT, which this method cannot use"
    );
    assert_eq!(FailureReason::UnknownUser.to_string(), "unknown user");
    assert_eq!(
        FailureReason::NoRandomness.to_string(),
        "no random bytes for the challenge"
    );
}

#[test]
fn matching_made_up_keys_never_logs_in() {
    // Made-up credentials carry no account: even a proof that matched them would fail.
    let keys = ScramKeys::derive(b"guess", b"saltsaltsaltsalt", 4096);
    let pending_for = |account: Option<String>| {
        let client = scram::parse_client_first("n,,n=nobody,r=abc").unwrap();
        scram::server_first(
            &client,
            "xyz",
            ScramCredentials::from_keys(keys.clone(), account),
        )
    };
    let (server_first, pending) = pending_for(None);
    let client_final = client_final(b"guess", &server_first, "n=nobody,r=abc");
    assert_eq!(
        scram::client_final(pending, &client_final).map(|(_, a)| a),
        Err(scram::Reject::Failure(FailureReason::Unspecified))
    );
    let (_, pending) = pending_for(Some("nobody".to_string()));
    assert_eq!(
        scram::client_final(pending, &client_final).map(|(_, a)| a),
        Ok("nobody".to_string())
    );
}

/// The error challenge of a refused bearer token (RFC 7628 section 3.2.2) for [`ctx`].
const BEARER_ERROR: &str = "{\"status\":\"invalid_token\",\"scope\":\"mail\",\"openid-configuration\":\"https://issuer.test/.well-known/openid-configuration\"}";

fn oauthbearer(authzid: &str, token: &str) -> String {
    b64(format!(
        "n,{authzid},\x01host=pop.test\x01port=995\x01auth=Bearer {token}\x01\x01"
    ))
}

fn xoauth2(user: &str, token: &str) -> String {
    b64(format!("user={user}\x01auth=Bearer {token}\x01\x01"))
}

#[test]
fn oauthbearer_and_xoauth2_log_in_with_a_good_token() {
    let users = Users::default();
    for ir in [
        oauthbearer("", "good.tim"),
        oauthbearer("a=tim", "good.tim"),
        b64("n,a=tim,\x01auth=bearer   good.tim\x01\x01"),
        b64("y,,\x01auth=Bearer good.tim\x01other=x y\x01\x01"),
    ] {
        let (mut ex, step) = start(Mechanism::OAuthBearer, Some(&ir), &users);
        assert_eq!(step, success("tim"), "{ir}");
        assert_eq!(ex.claimed_user(), Some("tim"));
        assert_over(&mut ex, &users);
    }
    let (mut ex, step) = start(
        Mechanism::XOAuth2,
        Some(&xoauth2("tim", "good.tim")),
        &users,
    );
    assert_eq!(step, success("tim"));
    assert_over(&mut ex, &users);
    // Without an initial response: an empty challenge, then the message.
    for (mechanism, message) in [
        (Mechanism::OAuthBearer, oauthbearer("a=tim", "good.tim")),
        (Mechanism::XOAuth2, xoauth2("tim", "good.tim")),
    ] {
        let (mut ex, step) = start(mechanism, None, &users);
        assert_eq!(step, SaslStep::Challenge(Vec::new()));
        assert_eq!(ex.step(&message, &users), success("tim"), "{mechanism}");
        assert_over(&mut ex, &users);
    }
    // A saslname's escapes: "ti,m" is sent as a=ti=2Cm; it is not tim, whose token this is.
    let (mut ex, step) = start(
        Mechanism::OAuthBearer,
        Some(&oauthbearer("a=ti=2Cm", "good.tim")),
        &users,
    );
    assert!(matches!(step, SaslStep::Challenge(_)), "{step:?}");
    assert_eq!(ex.claimed_user(), Some("ti,m"));
    assert_eq!(ex.step("AQ==", &users), FAILURE);
    assert_eq!(ex.failure_reason(), Some(FailureReason::OtherIdentity));
}

#[test]
fn a_refused_token_gets_the_error_json_then_a_failure() {
    let users = Users::default();
    let cases = [
        (
            oauthbearer("", "forged"),
            FailureReason::BadToken("bad signature"),
            None,
        ),
        (
            oauthbearer("a=user", "good.tim"),
            FailureReason::OtherIdentity,
            Some("user"),
        ),
        (
            oauthbearer("", "good.nobody"),
            FailureReason::UnknownUser,
            Some("nobody"),
        ),
    ];
    for (ir, reason, claimed) in cases {
        for answer in ["AQ==", ""] {
            let (mut ex, step) = start(Mechanism::OAuthBearer, Some(&ir), &users);
            assert_eq!(
                step,
                SaslStep::Challenge(BEARER_ERROR.as_bytes().to_vec()),
                "{ir}"
            );
            assert!(!ex.is_over());
            assert_eq!(ex.failure_reason(), None, "no verdict before the answer");
            assert_eq!(ex.step(answer, &users), FAILURE);
            assert_eq!(ex.failure_reason(), Some(reason), "{ir}");
            assert_eq!(ex.claimed_user(), claimed);
            assert_over(&mut ex, &users);
        }
    }
    // A refused token's unverified user is the name claimed (for the penalties and the log).
    let (mut ex, _) = start(
        Mechanism::OAuthBearer,
        Some(&oauthbearer("", "forged.tim")),
        &users,
    );
    assert_eq!(ex.step("AQ==", &users), FAILURE);
    assert_eq!(ex.claimed_user(), Some("tim"));
    // XOAUTH2: the same error challenge, answered by an empty line.
    let (mut ex, step) = start(Mechanism::XOAuth2, Some(&xoauth2("tim", "forged")), &users);
    assert_eq!(step, SaslStep::Challenge(BEARER_ERROR.as_bytes().to_vec()));
    assert_eq!(ex.step("", &users), FAILURE);
    assert_eq!(ex.claimed_user(), Some("tim"));
    // The error JSON with nothing configured, and a scope that needs escaping.
    assert_eq!(
        BearerErrorInfo::default().json(),
        "{\"status\":\"invalid_token\"}"
    );
    let info = BearerErrorInfo {
        scope: Some("a \"b\" \\ \u{1}".to_string()),
        openid_configuration: None,
    };
    assert_eq!(
        info.json(),
        "{\"status\":\"invalid_token\",\"scope\":\"a \\\"b\\\" \\\\ \\u0001\"}"
    );
}

#[test]
fn malformed_bearer_messages_are_refused_before_any_check() {
    let users = Users::default();
    let too_long = "x".repeat(MAX_TOKEN_LEN + 1);
    let cases: Vec<(Mechanism, String, Msg)> = vec![
        (Mechanism::OAuthBearer, "=".into(), Msg::OAuthShape),
        (Mechanism::OAuthBearer, b64("\x01"), Msg::OAuthShape),
        (
            Mechanism::OAuthBearer,
            b64("n,,auth=Bearer good.tim\x01\x01"),
            Msg::OAuthShape,
        ),
        (
            Mechanism::OAuthBearer,
            b64("n,,\x01auth=Bearer good.tim\x01"),
            Msg::OAuthShape,
        ),
        (
            Mechanism::OAuthBearer,
            b64("p=tls-unique,,\x01auth=Bearer good.tim\x01\x01"),
            Msg::OAuthChannelBinding,
        ),
        (
            Mechanism::OAuthBearer,
            b64("n,u=tim,\x01auth=Bearer good.tim\x01\x01"),
            Msg::OAuthShape,
        ),
        (
            Mechanism::OAuthBearer,
            b64("n,a=t=2Xm,\x01auth=Bearer good.tim\x01\x01"),
            Msg::OAuthShape,
        ),
        (
            Mechanism::OAuthBearer,
            b64("n,,\x01host=x\x01\x01"),
            Msg::OAuthNoToken,
        ),
        (
            Mechanism::OAuthBearer,
            b64("n,,\x01auth=Basic dGltOnB3\x01\x01"),
            Msg::OAuthNoToken,
        ),
        (
            Mechanism::OAuthBearer,
            b64("n,,\x01auth=Bearer good.tim\x01auth=Bearer good.tim\x01\x01"),
            Msg::OAuthShape,
        ),
        (
            Mechanism::OAuthBearer,
            b64("n,,\x01auth=Bearer good tim\x01\x01"),
            Msg::OAuthNoToken,
        ),
        (
            Mechanism::OAuthBearer,
            b64("n,,\x01a-b=c\x01auth=Bearer good.tim\x01\x01"),
            Msg::OAuthShape,
        ),
        (
            Mechanism::OAuthBearer,
            b64(b"n,,\x01auth=Bearer good.tim\xff\x01\x01"),
            Msg::OAuthShape,
        ),
        (
            Mechanism::OAuthBearer,
            oauthbearer("", &too_long),
            Msg::OAuthTokenTooLong,
        ),
        (
            Mechanism::XOAuth2,
            b64("auth=Bearer good.tim\x01\x01"),
            Msg::OAuthShape,
        ),
        (
            Mechanism::XOAuth2,
            b64("user=tim\x01auth=Bearer good.tim"),
            Msg::OAuthShape,
        ),
        (Mechanism::XOAuth2, b64("user=tim\x01\x01"), Msg::OAuthShape),
        (Mechanism::XOAuth2, xoauth2("tim", ""), Msg::OAuthNoToken),
    ];
    for (mechanism, ir, expected) in cases {
        let (mut ex, step) = start(mechanism, Some(&ir), &users);
        assert_eq!(step, SaslStep::Malformed(expected), "{mechanism} {ir}");
        assert_over(&mut ex, &users);
    }
    assert_eq!(
        users.checks.get(),
        0,
        "no malformed message reaches the verifier"
    );
    // An authorization identity too long to be a user is refused before the token is judged.
    let long_name = format!("a={}", "u".repeat(USER_NAME_MAX_LEN + 1));
    let (_, step) = start(
        Mechanism::OAuthBearer,
        Some(&oauthbearer(&long_name, "good.tim")),
        &users,
    );
    assert_eq!(step, SaslStep::Refused(Msg::UserNameTooLong));
    assert_eq!(users.checks.get(), 0);
    // A token at the limit is judged (and here refused for what it is, not its length).
    let at_limit = "x".repeat(MAX_TOKEN_LEN);
    let (_, step) = start(
        Mechanism::OAuthBearer,
        Some(&oauthbearer("", &at_limit)),
        &users,
    );
    assert!(matches!(step, SaslStep::Challenge(_)), "{step:?}");
    assert!(oauthbearer("a=tim", &at_limit).len() <= MAX_BEARER_LINE);
}

#[test]
fn a_bearer_exchange_never_shows_its_token() {
    let users = Users::default();
    let (ex, _) = start(Mechanism::OAuthBearer, None, &users);
    let message = oauth::parse_oauthbearer(b"n,,\x01auth=Bearer sekrit.token\x01\x01").unwrap();
    assert_eq!(message.token, "sekrit.token");
    assert!(!format!("{message:?}").contains("sekrit"));
    assert!(!format!("{ex:?}").contains("sekrit"));
    assert!(Mechanism::OAuthBearer.sends_bearer_token());
    assert!(Mechanism::XOAuth2.sends_bearer_token());
    assert!(!Mechanism::Plain.sends_bearer_token());
    assert_eq!("xoauth2".parse(), Ok(Mechanism::XOAuth2));
    assert_eq!("OAuthBearer".parse(), Ok(Mechanism::OAuthBearer));
}
