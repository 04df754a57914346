//! Keys and tokens minted by the tests themselves (no outside service): signing keys of each
//! algorithm facteur checks, their JWK Set, and JWTs signed with them. Shared by facteur-auth's
//! unit tests and facteur's end-to-end tests (`#[path]`).

#![allow(dead_code, reason = "each test file uses a different part")]

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
    RSA_PKCS1_SHA256, RSA_PSS_SHA256,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use serde_json::{json, Value};

enum Key {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// A signing key with its `kid` and algorithm.
pub struct Signer {
    pub kid: String,
    pub alg: &'static str,
    key: Key,
}

impl Signer {
    pub fn rs256(kid: &str) -> Self {
        Self::rsa(kid, "RS256")
    }

    pub fn ps256(kid: &str) -> Self {
        Self::rsa(kid, "PS256")
    }

    fn rsa(kid: &str, alg: &'static str) -> Self {
        let key = RsaKeyPair::generate(KeySize::Rsa2048).expect("generate an RSA key");
        Self {
            kid: kid.into(),
            alg,
            key: Key::Rsa(key),
        }
    }

    pub fn es256(kid: &str) -> Self {
        let key =
            EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("generate a P-256 key");
        Self {
            kid: kid.into(),
            alg: "ES256",
            key: Key::Ec(key),
        }
    }

    pub fn eddsa(kid: &str) -> Self {
        let key = Ed25519KeyPair::generate().expect("generate an Ed25519 key");
        Self {
            kid: kid.into(),
            alg: "EdDSA",
            key: Key::Ed(key),
        }
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> Value {
        match &self.key {
            Key::Rsa(k) => {
                let (n, e) = rsa_public_key(k.public_key().as_ref());
                json!({"kty": "RSA", "kid": self.kid, "use": "sig", "alg": self.alg,
                       "n": B64URL.encode(n), "e": B64URL.encode(e)})
            }
            Key::Ec(k) => {
                let point = k.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig",
                       "x": B64URL.encode(&point[1..33]), "y": B64URL.encode(&point[33..65])})
            }
            Key::Ed(k) => json!({"kty": "OKP", "crv": "Ed25519", "kid": self.kid,
                                 "x": B64URL.encode(k.public_key().as_ref())}),
        }
    }

    /// A JWT of these claims, with the header `{"alg", "kid", "typ": "JWT"}`.
    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": self.alg, "kid": self.kid, "typ": "JWT"});
        self.sign_with_header(&header, claims)
    }

    /// A JWT of this header and these claims, signed with this key whatever the header says.
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let signed = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let signature = match &self.key {
            Key::Rsa(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                let padding = if self.alg == "PS256" {
                    &RSA_PSS_SHA256
                } else {
                    &RSA_PKCS1_SHA256
                };
                k.sign(padding, &rng, signed.as_bytes(), &mut sig)
                    .expect("sign with RSA");
                sig
            }
            Key::Ec(k) => k
                .sign(&rng, signed.as_bytes())
                .expect("sign with P-256")
                .as_ref()
                .to_vec(),
            Key::Ed(k) => k.sign(signed.as_bytes()).as_ref().to_vec(),
        };
        format!("{signed}.{}", B64URL.encode(signature))
    }
}

/// The modulus and exponent of a DER `RSAPublicKey` (RFC 8017: a SEQUENCE of two INTEGERs),
/// without leading zeros.
fn rsa_public_key(der: &[u8]) -> (&[u8], &[u8]) {
    /// One DER element: its tag's contents and what follows.
    fn element(der: &[u8], tag: u8) -> (&[u8], &[u8]) {
        assert_eq!(der[0], tag, "DER tag");
        let (len, at) = match der[1] {
            n if n < 0x80 => (n as usize, 2),
            n => {
                let bytes = (n & 0x7f) as usize;
                let len = der[2..2 + bytes]
                    .iter()
                    .fold(0usize, |acc, &b| acc << 8 | b as usize);
                (len, 2 + bytes)
            }
        };
        (&der[at..at + len], &der[at + len..])
    }
    let (sequence, _) = element(der, 0x30);
    let (n, rest) = element(sequence, 0x02);
    let (e, _) = element(rest, 0x02);
    let trim = |v: &[u8]| -> usize { v.iter().take_while(|&&b| b == 0).count() };
    (&n[trim(n)..], &e[trim(e)..])
}

/// The JWK Set of these keys.
pub fn jwks(signers: &[&Signer]) -> String {
    json!({"keys": signers.iter().map(|s| s.jwk()).collect::<Vec<_>>()}).to_string()
}

/// An unsigned token (`alg: none`, RFC 7519 section 6).
pub fn unsigned(claims: &Value) -> String {
    format!(
        "{}.{}.",
        B64URL.encode(json!({"alg": "none"}).to_string()),
        B64URL.encode(claims.to_string())
    )
}

/// Claims for `user` from `issuer` to `audience`, valid from `now - 60` for an hour.
pub fn claims(issuer: &str, audience: &str, user: &str, now: u64) -> Value {
    json!({"iss": issuer, "aud": audience, "email": user, "sub": "1234",
           "iat": now - 60, "nbf": now - 60, "exp": now + 3600})
}
