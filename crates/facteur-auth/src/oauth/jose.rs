//! JSON Web Tokens in compact form (RFC 7519, RFC 7515) and JSON Web Key Sets (RFC 7517), as
//! far as checking a signed access token needs: the signature is aws-lc-rs's (already in the
//! tree through rustls), the JSON serde_json's. No JWT crate: the part of JOSE needed here is
//! small, and each of its checks is one the tests name.

use std::fmt;

use aws_lc_rs::signature::{
    RsaPublicKeyComponents, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ED25519,
    RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use serde_json::{Map, Value};

/// The largest key set read, in octets: a few dozen keys are a few KiB.
pub const MAX_JWKS_LEN: usize = 256 * 1024;

/// The most keys a set may hold: issuers keep two or three at a time (the current one, the next
/// and the last); more would let one token cost many signature checks.
pub const MAX_JWKS_KEYS: usize = 64;

/// A signature algorithm facteur checks (RFC 7518 section 3, RFC 8037).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Ps256,
    Es256,
    EdDsa,
}

impl Alg {
    fn from_name(name: &str) -> Result<Self, &'static str> {
        match name {
            "RS256" => Ok(Alg::Rs256),
            "PS256" => Ok(Alg::Ps256),
            "ES256" => Ok(Alg::Es256),
            "EdDSA" => Ok(Alg::EdDsa),
            "none" => Err("unsigned (alg none)"),
            _ => Err("unsupported alg"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Ps256 => "PS256",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }
}

/// A token in compact form, decoded but not verified. `Debug` shows neither its claims nor its
/// signature.
pub struct Jwt {
    /// The header's algorithm, or why it cannot be used.
    pub alg: Result<Alg, &'static str>,
    pub kid: Option<String>,
    /// Unverified until a key checked [`Jwt::signature`] over [`Jwt::signed`].
    pub claims: Map<String, Value>,
    /// `BASE64URL(header) . BASE64URL(payload)`, as sent.
    signed: String,
    signature: Vec<u8>,
}

impl fmt::Debug for Jwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwt")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Jwt {
    /// `None` if `token` is no JWS in compact form (three base64url parts, a JSON object header
    /// with `alg`, a JSON object payload).
    pub fn parse(token: &str) -> Option<Jwt> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let header: Map<String, Value> =
            serde_json::from_slice(&B64URL.decode(header).ok()?).ok()?;
        let claims: Map<String, Value> =
            serde_json::from_slice(&B64URL.decode(payload).ok()?).ok()?;
        let signature = B64URL.decode(signature).ok()?;
        let alg = match header.get("alg") {
            Some(Value::String(name)) => Alg::from_name(name),
            _ => Err("no alg"),
        };
        // RFC 7515 section 4.1.11: an extension the header says is critical and that we do not
        // know makes the token unusable.
        let alg = if header.contains_key("crit") {
            Err("critical header extension")
        } else {
            alg
        };
        let kid = match header.get("kid") {
            Some(Value::String(kid)) => Some(kid.clone()),
            _ => None,
        };
        let signed_len = token.len() - signature_len(token);
        Some(Jwt {
            alg,
            kid,
            claims,
            signed: token[..signed_len].to_string(),
            signature,
        })
    }
}

/// The length of the last part of `token` and its dot.
fn signature_len(token: &str) -> usize {
    token.rfind('.').map_or(0, |dot| token.len() - dot)
}

/// A public key, as a JWK gives it.
#[derive(Clone, PartialEq, Eq)]
enum KeyMaterial {
    /// Modulus and exponent, big-endian, no leading zero.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// `04 || x || y`.
    P256(Vec<u8>),
    Ed25519(Vec<u8>),
}

#[derive(Clone)]
struct Jwk {
    kid: Option<String>,
    /// The JWK's own `alg`, if it names one: the token's must then be that one.
    alg: Option<String>,
    key: KeyMaterial,
}

/// An issuer's keys: those of its set facteur can use (others, an `enc` key or an unknown
/// type, are left out).
#[derive(Clone, Default)]
pub struct Jwks {
    keys: Vec<Jwk>,
}

impl fmt::Debug for Jwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| &k.kid))
            .finish()
    }
}

/// Why a key set cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("the key set is larger than {MAX_JWKS_LEN} octets")]
    TooLarge,
    #[error("the key set is not a JSON object with a \"keys\" array")]
    Shape,
    #[error("the key set has more than {MAX_JWKS_KEYS} keys")]
    TooManyKeys,
    #[error("key {0}: {1}")]
    BadKey(usize, &'static str),
    #[error("the key set has no key facteur can use (RSA, EC P-256 or Ed25519 signing keys)")]
    NoUsableKey,
}

/// Why no key checked a token's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMiss {
    /// No key with the token's `kid` (the set may be fetched again).
    UnknownKid,
    /// No key of the algorithm's type (and `kid`).
    NoKeyForAlg,
    BadSignature,
}

impl KeyMiss {
    pub fn reason(self) -> &'static str {
        match self {
            KeyMiss::UnknownKid => "unknown key id (kid)",
            KeyMiss::NoKeyForAlg => "no key of the token's algorithm",
            KeyMiss::BadSignature => "bad signature",
        }
    }
}

impl Jwks {
    /// A JWK Set (RFC 7517 section 5). Keys facteur cannot use are skipped; a key it could use
    /// but that is malformed makes the whole set an error (better told at once than found at a
    /// login).
    pub fn parse(bytes: &[u8]) -> Result<Jwks, JwksError> {
        if bytes.len() > MAX_JWKS_LEN {
            return Err(JwksError::TooLarge);
        }
        let set: Map<String, Value> =
            serde_json::from_slice(bytes).map_err(|_| JwksError::Shape)?;
        let Some(Value::Array(entries)) = set.get("keys") else {
            return Err(JwksError::Shape);
        };
        if entries.len() > MAX_JWKS_KEYS {
            return Err(JwksError::TooManyKeys);
        }
        let mut keys = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let Value::Object(jwk) = entry else {
                return Err(JwksError::BadKey(i, "not a JSON object"));
            };
            if let Some(key) = parse_jwk(jwk).map_err(|why| JwksError::BadKey(i, why))? {
                keys.push(key);
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey);
        }
        Ok(Jwks { keys })
    }

    /// How many usable keys the set has.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks the token's signature with the key its `kid` names (or, without a `kid`, each key
    /// of the algorithm's type).
    pub(super) fn verify(&self, jwt: &Jwt, alg: Alg) -> Result<(), KeyMiss> {
        let named: Vec<&Jwk> = self
            .keys
            .iter()
            .filter(|k| jwt.kid.is_none() || k.kid == jwt.kid)
            .collect();
        if named.is_empty() {
            return Err(KeyMiss::UnknownKid);
        }
        let mut candidates = named
            .into_iter()
            .filter(|k| k.alg.as_deref().is_none_or(|a| a == alg.name()))
            .filter(|k| {
                matches!(
                    (alg, &k.key),
                    (Alg::Rs256 | Alg::Ps256, KeyMaterial::Rsa { .. })
                        | (Alg::Es256, KeyMaterial::P256(_))
                        | (Alg::EdDsa, KeyMaterial::Ed25519(_))
                )
            })
            .peekable();
        if candidates.peek().is_none() {
            return Err(KeyMiss::NoKeyForAlg);
        }
        let message = jwt.signed.as_bytes();
        let good = candidates.any(|k| match &k.key {
            KeyMaterial::Rsa { n, e } => {
                let params = if alg == Alg::Ps256 {
                    &RSA_PSS_2048_8192_SHA256
                } else {
                    &RSA_PKCS1_2048_8192_SHA256
                };
                RsaPublicKeyComponents { n, e }
                    .verify(params, message, &jwt.signature)
                    .is_ok()
            }
            KeyMaterial::P256(point) => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                .verify(message, &jwt.signature)
                .is_ok(),
            KeyMaterial::Ed25519(x) => UnparsedPublicKey::new(&ED25519, x)
                .verify(message, &jwt.signature)
                .is_ok(),
        });
        if good {
            Ok(())
        } else {
            Err(KeyMiss::BadSignature)
        }
    }
}

/// One JWK: `Ok(None)` for a key facteur does not use (an encryption key, another type or
/// curve).
fn parse_jwk(jwk: &Map<String, Value>) -> Result<Option<Jwk>, &'static str> {
    let text = |name: &str| match jwk.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err("a member is not a string"),
    };
    if text("use")?.is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    let bytes = |name: &str, max: usize| -> Result<Vec<u8>, &'static str> {
        let value = text(name)?.ok_or("a member is missing")?;
        if value.len() > max * 4 / 3 + 4 {
            return Err("a member is too long");
        }
        B64URL
            .decode(value)
            .map_err(|_| "a member is not base64url")
    };
    let key = match (text("kty")?, text("crv")?) {
        (Some("RSA"), _) => {
            let strip = |mut v: Vec<u8>| {
                let zeros = v.iter().take_while(|&&b| b == 0).count();
                v.drain(..zeros);
                v
            };
            let n = strip(bytes("n", 1024)?);
            let e = strip(bytes("e", 8)?);
            if !(256..=1024).contains(&n.len()) {
                return Err("an RSA modulus of 2048 to 8192 bits is needed");
            }
            if e.is_empty() {
                return Err("an RSA exponent is empty");
            }
            KeyMaterial::Rsa { n, e }
        }
        (Some("EC"), Some("P-256")) => {
            let (x, y) = (bytes("x", 32)?, bytes("y", 32)?);
            if x.len() != 32 || y.len() != 32 {
                return Err("a P-256 coordinate is not 32 octets");
            }
            let mut point = vec![4u8];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            KeyMaterial::P256(point)
        }
        (Some("OKP"), Some("Ed25519")) => {
            let x = bytes("x", 32)?;
            if x.len() != 32 {
                return Err("an Ed25519 key is not 32 octets");
            }
            KeyMaterial::Ed25519(x)
        }
        (Some(_), _) => return Ok(None),
        (None, _) => return Err("no kty"),
    };
    Ok(Some(Jwk {
        kid: text("kid")?.map(str::to_string),
        alg: text("alg")?.map(str::to_string),
        key,
    }))
}
