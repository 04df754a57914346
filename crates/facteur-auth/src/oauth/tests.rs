//! Bearer tokens against keys and tokens minted here, with a clock and an HTTPS client of the
//! tests' own (no network).

#[path = "../../tests/support/mint.rs"]
mod mint;

use std::sync::atomic::{AtomicUsize, Ordering};

use mint::{claims, jwks, unsigned, Signer};
use serde_json::json;

use super::*;

const NOW: u64 = 1_800_000_000;
const ISS: &str = "https://issuer.test";
const AUD: &str = "facteur";

fn clock() -> u64 {
    NOW
}

fn issuer(verification: Verification) -> Issuer {
    Issuer {
        issuer: ISS.into(),
        audience: AUD.into(),
        verification,
        user_claim: "email".into(),
        leeway: Duration::from_secs(60),
        refresh: Duration::from_secs(3600),
        introspection_cache: Duration::from_secs(60),
    }
}

/// An HTTPS client that answers from memory and counts what it is asked.
#[derive(Default)]
struct FakeHttps {
    jwks: Mutex<String>,
    introspection: Mutex<String>,
    gets: AtomicUsize,
    posts: AtomicUsize,
    /// The last form POSTed, and its Basic credentials.
    last_post: Mutex<Option<(String, String, String)>>,
}

impl HttpsClient for FakeHttps {
    fn get(&self, url: &str, max_len: usize) -> Result<Vec<u8>, String> {
        assert_eq!(url, "https://issuer.test/jwks");
        assert_eq!(max_len, MAX_JWKS_LEN);
        self.gets.fetch_add(1, Ordering::SeqCst);
        Ok(self.jwks.lock().unwrap().clone().into_bytes())
    }

    fn post_form(
        &self,
        url: &str,
        basic: (&str, &Secret<String>),
        form: &Secret<String>,
        _max_len: usize,
    ) -> Result<Vec<u8>, String> {
        assert_eq!(url, "https://issuer.test/introspect");
        self.posts.fetch_add(1, Ordering::SeqCst);
        *self.last_post.lock().unwrap() = Some((
            basic.0.to_string(),
            basic.1.expose().clone(),
            form.expose().clone(),
        ));
        Ok(self.introspection.lock().unwrap().clone().into_bytes())
    }
}

fn file_issuer(dir: &tempfile::TempDir, signers: &[&Signer]) -> OAuth {
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(signers)).unwrap();
    OAuth::new(vec![issuer(Verification::JwksFile(path))], None).with_clock(clock)
}

#[test]
fn good_tokens_of_each_algorithm_name_their_user() {
    let dir = tempfile::tempdir().unwrap();
    let signers = [
        Signer::rs256("r"),
        Signer::ps256("p"),
        Signer::es256("e"),
        Signer::eddsa("d"),
    ];
    let oauth = file_issuer(&dir, &signers.iter().collect::<Vec<_>>());
    oauth.load_key_files().unwrap();
    for s in &signers {
        let token = s.sign(&claims(ISS, AUD, "alice", NOW));
        assert_eq!(oauth.check(&token), Ok("alice".to_string()), "{}", s.alg);
    }
    // aud as an array; no kid (every key of the type is tried); the leeway on exp.
    let s = &signers[0];
    let mut c = claims(ISS, AUD, "alice", NOW);
    c["aud"] = json!(["other", AUD]);
    c["exp"] = json!(NOW - 30);
    assert_eq!(oauth.check(&s.sign(&c)), Ok("alice".to_string()));
    let token = s.sign_with_header(&json!({"alg": "RS256"}), &claims(ISS, AUD, "alice", NOW));
    assert_eq!(oauth.check(&token), Ok("alice".to_string()));
}

#[test]
fn bad_tokens_are_refused_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let good = Signer::rs256("k1");
    let ec = Signer::es256("k2");
    let oauth = file_issuer(&dir, &[&good, &ec]);
    let other = Signer::rs256("k1");
    let base = claims(ISS, AUD, "alice", NOW);
    let with = |key: &str, value: serde_json::Value| {
        let mut c = base.clone();
        c[key] = value;
        c
    };
    let without = |key: &str| {
        let mut c = base.clone();
        c.as_object_mut().unwrap().remove(key);
        c
    };
    let bad = |why: &'static str| Err(FailureReason::BadToken(why));
    let cases: Vec<(&str, String, Result<String, FailureReason>)> = vec![
        (
            "expired",
            good.sign(&with("exp", json!(NOW - 61))),
            bad("expired"),
        ),
        ("no exp", good.sign(&without("exp")), bad("no valid exp")),
        (
            "exp not a number",
            good.sign(&with("exp", json!("soon"))),
            bad("no valid exp"),
        ),
        (
            "nbf",
            good.sign(&with("nbf", json!(NOW + 61))),
            bad("not valid yet (nbf)"),
        ),
        (
            "iat",
            good.sign(&with("iat", json!(NOW + 600))),
            bad("issued in the future (iat)"),
        ),
        (
            "audience",
            good.sign(&with("aud", json!("other"))),
            bad("wrong audience"),
        ),
        (
            "audiences",
            good.sign(&with("aud", json!(["a", "b"]))),
            bad("wrong audience"),
        ),
        (
            "no audience",
            good.sign(&without("aud")),
            bad("wrong audience"),
        ),
        (
            "issuer",
            good.sign(&with("iss", json!("https://evil.test"))),
            bad("no issuer for this token"),
        ),
        (
            "no user",
            good.sign(&without("email")),
            bad("no usable user claim"),
        ),
        (
            "user not a string",
            good.sign(&with("email", json!(7))),
            bad("no usable user claim"),
        ),
        ("signature", other.sign(&base), bad("bad signature")),
        ("alg none", unsigned(&base), bad("unsigned (alg none)")),
        (
            "alg none with a kid",
            good.sign_with_header(&json!({"alg": "none", "kid": "k1"}), &base),
            bad("unsigned (alg none)"),
        ),
        (
            "HS256 with the public key",
            good.sign_with_header(&json!({"alg": "HS256", "kid": "k1"}), &base),
            bad("unsupported alg"),
        ),
        (
            "ES256 header on an RSA key",
            good.sign_with_header(&json!({"alg": "ES256", "kid": "k1"}), &base),
            bad("no key of the token's algorithm"),
        ),
        (
            "RS256 header on the EC key",
            ec.sign_with_header(&json!({"alg": "RS256", "kid": "k2"}), &base),
            bad("no key of the token's algorithm"),
        ),
        (
            "PS256 header, PKCS#1 signature",
            good.sign_with_header(&json!({"alg": "PS256", "kid": "k1"}), &base),
            bad("no key of the token's algorithm"),
        ),
        (
            "unknown kid",
            good.sign_with_header(&json!({"alg": "RS256", "kid": "k9"}), &base),
            bad("unknown key id (kid)"),
        ),
        (
            "critical extension",
            good.sign_with_header(&json!({"alg": "RS256", "kid": "k1", "crit": ["x"]}), &base),
            bad("critical header extension"),
        ),
        (
            "not a JWT",
            "opaque-token".into(),
            bad("no issuer for this token"),
        ),
    ];
    for (what, token, expected) in cases {
        assert_eq!(oauth.check(&token), expected, "{what}");
    }
    // A tampered payload under a good signature.
    let token = good.sign(&base);
    let parts: Vec<&str> = token.split('.').collect();
    let forged = B64URL.encode(with("email", json!("mallory")).to_string());
    let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
    assert_eq!(oauth.check(&tampered), bad("bad signature"));
    // What a refused JWT claims, for the penalties and the log.
    assert_eq!(oauth.claimed_user(&tampered), Some("mallory".into()));
    assert_eq!(oauth.claimed_user(&unsigned(&base)), Some("alice".into()));
    let evil = good.sign(&with("iss", json!("https://evil.test")));
    assert_eq!(oauth.claimed_user(&evil), None);
    assert_eq!(oauth.claimed_user("opaque"), None);
}

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;

#[test]
fn key_sets_are_bounded_and_checked() {
    let s = Signer::rs256("k");
    assert_eq!(Jwks::parse(jwks(&[&s]).as_bytes()).unwrap().len(), 1);
    assert_eq!(Jwks::parse(b"[]").unwrap_err(), JwksError::Shape);
    assert_eq!(Jwks::parse(b"{\"keys\": 1}").unwrap_err(), JwksError::Shape);
    assert_eq!(
        Jwks::parse(&vec![b' '; MAX_JWKS_LEN + 1]).unwrap_err(),
        JwksError::TooLarge
    );
    let many = json!({"keys": vec![s.jwk(); MAX_JWKS_KEYS + 1]}).to_string();
    assert_eq!(
        Jwks::parse(many.as_bytes()).unwrap_err(),
        JwksError::TooManyKeys
    );
    let only_enc = json!({"keys": [{"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"}]});
    assert_eq!(
        Jwks::parse(only_enc.to_string().as_bytes()).unwrap_err(),
        JwksError::NoUsableKey
    );
    let short = json!({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]});
    assert!(matches!(
        Jwks::parse(short.to_string().as_bytes()),
        Err(JwksError::BadKey(0, _))
    ));
    let bad_ec = json!({"keys": [{"kty": "EC", "crv": "P-256", "x": "AQAB", "y": "AQAB"}]});
    assert!(matches!(
        Jwks::parse(bad_ec.to_string().as_bytes()),
        Err(JwksError::BadKey(0, _))
    ));
    // Unknown types are skipped beside a usable key.
    let mixed = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}, s.jwk()]});
    assert_eq!(Jwks::parse(mixed.to_string().as_bytes()).unwrap().len(), 1);
}

#[test]
fn a_key_set_at_a_url_is_fetched_once_and_refetched_for_a_new_kid_at_most_once_per_interval() {
    let old = Signer::es256("old");
    let new = Signer::es256("new");
    let https = Arc::new(FakeHttps::default());
    *https.jwks.lock().unwrap() = jwks(&[&old]);
    let oauth = OAuth::new(
        vec![issuer(Verification::JwksUrl(
            "https://issuer.test/jwks".into(),
        ))],
        Some(https.clone() as Arc<dyn HttpsClient>),
    )
    .with_clock(clock);
    let c = claims(ISS, AUD, "alice", NOW);
    for _ in 0..3 {
        assert_eq!(oauth.check(&old.sign(&c)), Ok("alice".into()));
    }
    assert_eq!(
        https.gets.load(Ordering::SeqCst),
        1,
        "fetched once, then kept"
    );
    // The issuer rolls its key; a token with the new kid comes before MIN_REFETCH has passed
    // since the first fetch: no new fetch, refused.
    *https.jwks.lock().unwrap() = jwks(&[&old, &new]);
    assert_eq!(
        oauth.check(&new.sign(&c)),
        Err(FailureReason::BadToken("unknown key id (kid)"))
    );
    assert_eq!(https.gets.load(Ordering::SeqCst), 1);
    // Once the interval has passed, one unknown kid fetches again, and random kids after it do
    // not.
    lock(&oauth.issuers[0].keys).attempted = Instant::now().checked_sub(MIN_REFETCH);
    assert_eq!(oauth.check(&new.sign(&c)), Ok("alice".into()));
    assert_eq!(https.gets.load(Ordering::SeqCst), 2);
    for i in 0..20 {
        let header = json!({"alg": "ES256", "kid": format!("random{i}")});
        assert!(oauth.check(&new.sign_with_header(&header, &c)).is_err());
    }
    assert_eq!(
        https.gets.load(Ordering::SeqCst),
        2,
        "random kids cost no fetch"
    );
}

#[test]
fn a_key_set_that_cannot_be_had_is_unavailable_not_a_bad_token() {
    let s = Signer::es256("k");
    let oauth = OAuth::new(
        vec![issuer(Verification::JwksUrl(
            "https://issuer.test/jwks".into(),
        ))],
        None,
    )
    .with_clock(clock);
    assert_eq!(
        oauth.check(&s.sign(&claims(ISS, AUD, "alice", NOW))),
        Err(FailureReason::Unavailable)
    );
    let dir = tempfile::tempdir().unwrap();
    let missing = OAuth::new(
        vec![issuer(Verification::JwksFile(dir.path().join("none.json")))],
        None,
    );
    assert!(missing.load_key_files().unwrap_err().contains("none.json"));
}

#[test]
fn introspection_answers_are_checked_and_kept_briefly() {
    let https = Arc::new(FakeHttps::default());
    let oauth = OAuth::new(
        vec![issuer(Verification::Introspection {
            url: "https://issuer.test/introspect".into(),
            client_id: "facteur pop".into(),
            client_secret: Secret::new("s3cr&t".into()),
        })],
        Some(https.clone() as Arc<dyn HttpsClient>),
    )
    .with_clock(clock);
    *https.introspection.lock().unwrap() = json!({"active": true, "email": "alice",
        "iss": ISS, "aud": [AUD], "exp": NOW + 100})
    .to_string();
    assert_eq!(oauth.check("opaque+token/1"), Ok("alice".into()));
    let (id, secret, form) = https.last_post.lock().unwrap().clone().unwrap();
    assert_eq!(id, "facteur+pop");
    assert_eq!(secret, "s3cr%26t");
    assert_eq!(
        form,
        "token=opaque%2Btoken%2F1&token_type_hint=access_token"
    );
    // Kept: the same token asks nothing more.
    assert_eq!(oauth.check("opaque+token/1"), Ok("alice".into()));
    assert_eq!(https.posts.load(Ordering::SeqCst), 1);
    let cases = [
        (json!({"active": false}), "inactive (introspection)"),
        (
            json!({"active": "true", "email": "alice"}),
            "inactive (introspection)",
        ),
        (
            json!({"active": true, "email": "alice", "aud": "other"}),
            "wrong audience",
        ),
        (
            json!({"active": true, "email": "alice", "iss": "x"}),
            "wrong issuer",
        ),
        (
            json!({"active": true, "email": "alice", "exp": NOW - 100}),
            "expired",
        ),
        (
            json!({"active": true, "sub": "alice"}),
            "no usable user claim",
        ),
    ];
    for (i, (answer, why)) in cases.into_iter().enumerate() {
        *https.introspection.lock().unwrap() = answer.to_string();
        assert_eq!(
            oauth.check(&format!("token{i}")),
            Err(FailureReason::BadToken(why)),
            "{answer}"
        );
    }
    *https.introspection.lock().unwrap() = "<html>".into();
    assert_eq!(oauth.check("token-x"), Err(FailureReason::Unavailable));
    // A JWT of an issuer with keys is not sent to the introspection endpoint... and one of no
    // such issuer is.
    let posts = https.posts.load(Ordering::SeqCst);
    let s = Signer::es256("k");
    *https.introspection.lock().unwrap() = json!({"active": false}).to_string();
    assert!(oauth
        .check(&s.sign(&claims(ISS, AUD, "alice", NOW)))
        .is_err());
    assert_eq!(https.posts.load(Ordering::SeqCst), posts + 1);
}

#[test]
fn nothing_secret_in_debug() {
    let v = Verification::Introspection {
        url: "https://issuer.test/introspect".into(),
        client_id: "facteur".into(),
        client_secret: Secret::new("hunter2".into()),
    };
    assert!(!format!("{v:?}").contains("hunter2"));
    let s = Signer::es256("k");
    let token = s.sign(&claims(ISS, AUD, "alice", NOW));
    let jwt = jose::Jwt::parse(&token).unwrap();
    let shown = format!("{jwt:?}");
    assert!(!shown.contains("alice") && !shown.contains(&token[token.len() - 20..]));
}
