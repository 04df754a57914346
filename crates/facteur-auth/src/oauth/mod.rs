//! Bearer tokens (SASL OAUTHBEARER and XOAUTH2): is this token good, and whose is it?
//!
//! Each configured [`Issuer`] judges tokens one of two ways:
//! - **JWT** (RFC 7519, RFC 7515): the signature is checked against the issuer's JSON Web Key
//!   Set (RFC 7517), read from a file or fetched over HTTPS and kept for
//!   [`Issuer::refresh`]; then the claims: `iss` is the issuer, `aud` (a string or an array)
//!   holds the audience, `exp` is in the future, `nbf` and `iat` are not, each with
//!   [`Issuer::leeway`]; the user is the [`Issuer::user_claim`] claim. RS256, PS256, ES256 and
//!   EdDSA (Ed25519); the key is chosen by the header's `kid` and must be of the algorithm's
//!   type (an RSA key never checks an ES256 signature; `alg: none` is no algorithm).
//! - **Introspection** (RFC 7662): the token is POSTed to the issuer's endpoint with the
//!   client's credentials; the answer must say `active`, and its `iss`, `aud` and `exp`, when
//!   present, are checked as above. Answers are kept for [`Issuer::introspection_cache`].
//!
//! A JWT goes to the issuer its (unverified) `iss` names, which must be one with keys; a token
//! that is no JWT, or names no such issuer, goes to the introspection endpoints in order.
//!
//! The network is not this crate's: fetches go through an [`HttpsClient`] the server gives
//! (facteur-server's, with its deadlines and size caps). A key set that cannot be had is
//! [`FailureReason::Unavailable`] (the server answers `[SYS/TEMP]`), not a client's failure.
//! An unknown `kid` makes the set be fetched again, at most once per [`MIN_REFETCH`]: a client
//! sending random key ids cannot make facteur hammer the issuer.
//!
//! What this module must never do: put a token in a log line, an error or a `Debug` output;
//! trust a claim before the signature is checked; read or keep anything without a bound.

mod jose;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::io::Read as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use facteur_proto::sasl::FailureReason;
use facteur_proto::Secret;
use sha2::{Digest, Sha256};

pub use jose::{Jwks, JwksError, MAX_JWKS_KEYS, MAX_JWKS_LEN};

/// The shortest time between two fetches of a key set asked for by an unknown `kid` (or a
/// failed fetch): a new key of the issuer is found within this, and a client sending random
/// key ids costs the issuer one request per interval at most.
pub const MIN_REFETCH: Duration = Duration::from_secs(30);

/// The most introspection answers kept at once: an attacker sending random tokens fills the
/// table, after which answers are no longer kept (each token is asked about again).
pub const MAX_INTROSPECTION_CACHE: usize = 10_000;

/// The longest introspection answer read, in octets.
pub const MAX_INTROSPECTION_LEN: usize = 64 * 1024;

/// Fetches over HTTPS, with deadlines and size caps. Blocking: called from the threads that
/// check logins.
pub trait HttpsClient: Send + Sync {
    /// `GET url`: the body of a 200 answer of at most `max_len` octets.
    fn get(&self, url: &str, max_len: usize) -> Result<Vec<u8>, String>;

    /// `POST url` of a form (`application/x-www-form-urlencoded`) with HTTP Basic
    /// credentials: the body of a 200 answer of at most `max_len` octets.
    fn post_form(
        &self,
        url: &str,
        basic: (&str, &Secret<String>),
        form: &Secret<String>,
        max_len: usize,
    ) -> Result<Vec<u8>, String>;
}

/// How an issuer's tokens are judged.
pub enum Verification {
    /// JWTs, with the key set in this file.
    JwksFile(PathBuf),
    /// JWTs, with the key set at this HTTPS URL.
    JwksUrl(String),
    /// RFC 7662 introspection at this HTTPS URL, as this client.
    Introspection {
        url: String,
        client_id: String,
        client_secret: Secret<String>,
    },
}

impl fmt::Debug for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verification::JwksFile(path) => f.debug_tuple("JwksFile").field(path).finish(),
            Verification::JwksUrl(url) => f.debug_tuple("JwksUrl").field(url).finish(),
            Verification::Introspection { url, client_id, .. } => f
                .debug_struct("Introspection")
                .field("url", url)
                .field("client_id", client_id)
                .finish_non_exhaustive(),
        }
    }
}

/// One issuer whose tokens are accepted.
#[derive(Debug)]
pub struct Issuer {
    /// The `iss` its tokens carry, exactly.
    pub issuer: String,
    /// What `aud` must hold.
    pub audience: String,
    pub verification: Verification,
    /// The claim that names the user (`email`, `sub`, `preferred_username`...).
    pub user_claim: String,
    /// The clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// How long a key set is used before it is read or fetched again.
    pub refresh: Duration,
    /// How long an introspection answer is kept (never past the token's `exp`).
    pub introspection_cache: Duration,
}

/// The key set of one issuer, as last read.
#[derive(Default)]
struct KeyCache {
    keys: Option<Arc<Jwks>>,
    /// When `keys` was read.
    loaded: Option<Instant>,
    /// When a read was last tried (successful or not).
    attempted: Option<Instant>,
}

struct IssuerState {
    config: Issuer,
    keys: Mutex<KeyCache>,
    /// Introspection answers by the SHA-256 of the token: the user, or why the token was
    /// refused, and until when the answer holds.
    introspected: Mutex<HashMap<[u8; 32], Introspected>>,
}

/// An introspection answer as kept: the user or why not, and until when it holds.
type Introspected = (Result<String, &'static str>, Instant);

/// Every configured issuer, with their key sets and introspection answers.
pub struct OAuth {
    issuers: Vec<IssuerState>,
    https: Option<Arc<dyn HttpsClient>>,
    /// Seconds since the Unix epoch (a test sets its own clock).
    clock: fn() -> u64,
}

impl fmt::Debug for OAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth")
            .field(
                "issuers",
                &self.issuers.iter().map(|i| &i.config).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn system_clock() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl OAuth {
    /// These issuers; `https` fetches what is at URLs (none: an issuer with a URL is
    /// [`FailureReason::Unavailable`]).
    pub fn new(issuers: Vec<Issuer>, https: Option<Arc<dyn HttpsClient>>) -> Self {
        Self {
            issuers: issuers
                .into_iter()
                .map(|config| IssuerState {
                    config,
                    keys: Mutex::new(KeyCache::default()),
                    introspected: Mutex::new(HashMap::new()),
                })
                .collect(),
            https,
            clock: system_clock,
        }
    }

    /// The same, with a clock of the caller's (seconds since the epoch).
    pub fn with_clock(mut self, clock: fn() -> u64) -> Self {
        self.clock = clock;
        self
    }

    /// Reads every key set from its file now: for `check-config`, and so that a bad file shows
    /// at start. Sets at URLs are fetched at the first login that needs them.
    pub fn load_key_files(&self) -> Result<(), String> {
        for issuer in &self.issuers {
            if let Verification::JwksFile(path) = &issuer.config.verification {
                let keys = read_jwks_file(path)?;
                let mut cache = lock(&issuer.keys);
                cache.keys = Some(Arc::new(keys));
                cache.loaded = Some(Instant::now());
                cache.attempted = cache.loaded;
            }
        }
        Ok(())
    }

    /// The user `token` names, if it is good; why not otherwise (for the log only).
    pub fn check(&self, token: &str) -> Result<String, FailureReason> {
        let now = (self.clock)();
        if let Some(jwt) = jose::Jwt::parse(token) {
            let iss = jwt.claims.get("iss").and_then(|v| v.as_str());
            let issuer = self.issuers.iter().find(|i| {
                Some(i.config.issuer.as_str()) == iss
                    && !matches!(i.config.verification, Verification::Introspection { .. })
            });
            if let Some(issuer) = issuer {
                return self.check_jwt(issuer, &jwt, now);
            }
        }
        let mut refused = FailureReason::BadToken("no issuer for this token");
        for issuer in &self.issuers {
            if let Verification::Introspection { .. } = issuer.config.verification {
                match self.introspect(issuer, token, now) {
                    Ok(user) => return Ok(user),
                    Err(reason) => refused = reason,
                }
            }
        }
        Err(refused)
    }

    /// The user a JWT claims to be, unverified (its issuer's user claim): for the failed-login
    /// penalties and the log of a refused token. None for a token that is no JWT of a
    /// configured issuer.
    pub fn claimed_user(&self, token: &str) -> Option<String> {
        let jwt = jose::Jwt::parse(token)?;
        let iss = jwt.claims.get("iss")?.as_str()?;
        let issuer = self.issuers.iter().find(|i| i.config.issuer == iss)?;
        let user = jwt.claims.get(&issuer.config.user_claim)?.as_str()?;
        (!user.is_empty()).then(|| user.to_string())
    }

    fn check_jwt(
        &self,
        issuer: &IssuerState,
        jwt: &jose::Jwt,
        now: u64,
    ) -> Result<String, FailureReason> {
        let alg = jwt.alg.map_err(FailureReason::BadToken)?;
        let keys = self.keys(issuer, false)?;
        let verified = match keys.verify(jwt, alg) {
            Err(jose::KeyMiss::UnknownKid) => {
                // Perhaps a key the issuer added since: look once more (rate-limited).
                let keys = self.keys(issuer, true)?;
                keys.verify(jwt, alg)
            }
            other => other,
        };
        verified.map_err(|miss| FailureReason::BadToken(miss.reason()))?;
        check_claims(&issuer.config, &jwt.claims, now, true).map_err(FailureReason::BadToken)
    }

    /// The issuer's key set: the one kept, unless it is older than the refresh interval, or
    /// `again` asks for a new read (at most once per [`MIN_REFETCH`]). A failed read keeps the
    /// old set.
    fn keys(&self, issuer: &IssuerState, again: bool) -> Result<Arc<Jwks>, FailureReason> {
        // Held across the read: concurrent logins wait for one fetch instead of each making
        // their own.
        let mut cache = lock(&issuer.keys);
        let fresh = cache
            .loaded
            .is_some_and(|at| at.elapsed() < issuer.config.refresh);
        let may_try = cache.attempted.is_none_or(|at| at.elapsed() >= MIN_REFETCH);
        let want = cache.keys.is_none() || !fresh || again;
        if want && may_try {
            cache.attempted = Some(Instant::now());
            match self.read_keys(&issuer.config) {
                Ok(keys) => {
                    cache.keys = Some(Arc::new(keys));
                    cache.loaded = cache.attempted;
                }
                Err(e) => tracing::warn!(
                    issuer = %issuer.config.issuer,
                    error = %e,
                    "cannot read the issuer's key set; keeping the one read before, if any"
                ),
            }
        }
        cache.keys.clone().ok_or(FailureReason::Unavailable)
    }

    fn read_keys(&self, issuer: &Issuer) -> Result<Jwks, String> {
        match &issuer.verification {
            Verification::JwksFile(path) => read_jwks_file(path),
            Verification::JwksUrl(url) => {
                let https = self.https.as_ref().ok_or("no HTTPS client")?;
                let body = https.get(url, MAX_JWKS_LEN)?;
                Jwks::parse(&body).map_err(|e| format!("{url}: {e}"))
            }
            Verification::Introspection { .. } => Err("an introspection issuer has no keys".into()),
        }
    }

    /// RFC 7662: ask the issuer, or remember what it said.
    fn introspect(
        &self,
        issuer: &IssuerState,
        token: &str,
        now: u64,
    ) -> Result<String, FailureReason> {
        let Verification::Introspection {
            url,
            client_id,
            client_secret,
        } = &issuer.config.verification
        else {
            return Err(FailureReason::BadToken("no issuer for this token"));
        };
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        {
            let mut kept = lock(&issuer.introspected);
            match kept.get(&key) {
                Some((answer, until)) if Instant::now() < *until => {
                    return answer.clone().map_err(FailureReason::BadToken)
                }
                Some(_) => {
                    kept.remove(&key);
                }
                None => {}
            }
        }
        let https = self.https.as_ref().ok_or(FailureReason::Unavailable)?;
        let form = Secret::new(format!(
            "token={}&token_type_hint=access_token",
            form_encode(token)
        ));
        // RFC 6749 section 2.3.1: the client's id and secret are form-encoded, then Basic.
        let id = form_encode(client_id);
        let secret = Secret::new(form_encode(client_secret.expose()));
        let body = https
            .post_form(url, (&id, &secret), &form, MAX_INTROSPECTION_LEN)
            .map_err(|e| {
                tracing::warn!(issuer = %issuer.config.issuer, error = %e, "token introspection failed");
                FailureReason::Unavailable
            })?;
        let answer: serde_json::Value = serde_json::from_slice(&body).map_err(|_| {
            tracing::warn!(issuer = %issuer.config.issuer, "the introspection answer is not JSON");
            FailureReason::Unavailable
        })?;
        let claims = answer.as_object().ok_or(FailureReason::Unavailable)?;
        let verdict = if claims.get("active").and_then(|v| v.as_bool()) != Some(true) {
            Err("inactive (introspection)")
        } else {
            check_claims(&issuer.config, claims, now, false)
        };
        // Kept briefly, and never past the token's own expiry.
        let mut ttl = issuer.config.introspection_cache;
        if let Some(exp) = claims.get("exp").and_then(|v| v.as_u64()) {
            ttl = ttl.min(Duration::from_secs(exp.saturating_sub(now)));
        }
        if !ttl.is_zero() {
            let mut kept = lock(&issuer.introspected);
            if kept.len() >= MAX_INTROSPECTION_CACHE {
                let at = Instant::now();
                kept.retain(|_, (_, until)| *until > at);
            }
            if kept.len() < MAX_INTROSPECTION_CACHE {
                kept.insert(key, (verdict.clone(), Instant::now() + ttl));
            }
        }
        verdict.map_err(FailureReason::BadToken)
    }
}

/// A mutex's guard, even after a panic elsewhere (what it guards stays consistent: each
/// update is one assignment).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read_jwks_file(path: &std::path::Path) -> Result<Jwks, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_JWKS_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Jwks::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// The claims' verdict: the user, or why not. `jwt`: the claims of a signed token, where `iss`,
/// `aud` and `exp` are required; an introspection answer need not repeat them.
fn check_claims(
    issuer: &Issuer,
    claims: &serde_json::Map<String, serde_json::Value>,
    now: u64,
    jwt: bool,
) -> Result<String, &'static str> {
    let leeway = issuer.leeway.as_secs();
    match claims.get("iss") {
        Some(serde_json::Value::String(iss)) if *iss == issuer.issuer => {}
        None if !jwt => {}
        _ => return Err("wrong issuer"),
    }
    match claims.get("aud") {
        Some(serde_json::Value::String(aud)) if *aud == issuer.audience => {}
        Some(serde_json::Value::Array(auds))
            if auds.iter().any(|a| a.as_str() == Some(&issuer.audience)) => {}
        None if !jwt => {}
        _ => return Err("wrong audience"),
    }
    match claims.get("exp").map(|v| v.as_u64()) {
        Some(Some(exp)) if exp.saturating_add(leeway) > now => {}
        Some(Some(_)) => return Err("expired"),
        None if !jwt => {}
        _ => return Err("no valid exp"),
    }
    for (claim, why) in [
        ("nbf", "not valid yet (nbf)"),
        ("iat", "issued in the future (iat)"),
    ] {
        match claims.get(claim).map(|v| v.as_u64()) {
            None => {}
            Some(Some(t)) if t <= now.saturating_add(leeway) => {}
            Some(_) => return Err(why),
        }
    }
    match claims.get(&issuer.user_claim) {
        Some(serde_json::Value::String(user))
            if !user.is_empty() && user.len() <= facteur_proto::sasl::USER_NAME_MAX_LEN =>
        {
            Ok(user.clone())
        }
        _ => Err("no usable user claim"),
    }
}

/// `application/x-www-form-urlencoded` (the WHATWG URL standard's byte serializer).
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
