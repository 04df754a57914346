//! SCRAM-SHA-256 keys (RFC 5802 section 3, RFC 7677) as the passwd-file holds them: Dovecot's
//! `{SCRAM-SHA-256}` stored form, and the made-up keys of users who cannot use SCRAM. The keys
//! themselves, their derivation and the exchange are facteur-proto's
//! ([`facteur_proto::sasl::ScramKeys`]).
//!
//! Dovecot stores `{SCRAM-SHA-256}<iterations>,<base64 salt>,<base64 StoredKey>,<base64
//! ServerKey>`, with at least 4096 iterations. StoredKey and ServerKey let a server check a
//! client, and let whoever reads them impersonate the server, but not log in as the user.
//!
//! Passwords are used as their bytes. SCRAM clients apply SASLprep (RFC 4013) to the password
//! first; for a password of printable ASCII that changes nothing, and for other text it changes
//! nothing either as long as the text is already in Unicode normalization form KC and holds no
//! character that SASLprep maps (non-ASCII spaces, soft hyphens, zero-width characters). facteur
//! does not carry the Unicode tables to do more, so `hash_password` refuses control characters,
//! which SASLprep prohibits, and stores everything else as it is.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use facteur_proto::sasl::{
    hmac_sha256, ScramKeys, KEY_LEN, SCRAM_MAX_ITERATIONS, SCRAM_MIN_ITERATIONS,
};

/// The salt length of new hashes, in bytes (Dovecot's is 16 too).
pub const SCRAM_SALT_LEN: usize = 16;

/// The longest salt accepted from the passwd-file, in bytes: it is sent to the client in every
/// exchange, so it stays small.
const SCRAM_MAX_SALT_LEN: usize = 128;

/// Parses what follows `{SCRAM-SHA-256}`.
pub(crate) fn parse_stored(s: &str) -> Result<ScramKeys, &'static str> {
    let mut fields = s.split(',');
    let (Some(iterations), Some(salt), Some(stored_key), Some(server_key), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err("expected four fields: iterations,salt,StoredKey,ServerKey");
    };
    if iterations.is_empty() || !iterations.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the iteration count is not a number");
    }
    let iterations: u32 = iterations
        .parse()
        .map_err(|_| "the iteration count is out of range (4096 to 10000000)")?;
    if !(SCRAM_MIN_ITERATIONS..=SCRAM_MAX_ITERATIONS).contains(&iterations) {
        return Err("the iteration count is out of range (4096 to 10000000)");
    }
    let salt = BASE64
        .decode(salt)
        .map_err(|_| "the salt is not valid base64")?;
    if salt.is_empty() || salt.len() > SCRAM_MAX_SALT_LEN {
        return Err("the salt is empty or longer than 128 bytes");
    }
    let key = |field: &str| -> Result<[u8; KEY_LEN], &'static str> {
        BASE64
            .decode(field)
            .ok()
            .and_then(|k| <[u8; KEY_LEN]>::try_from(k).ok())
            .ok_or("a key is not the base64 of 32 bytes")
    };
    Ok(ScramKeys {
        iterations,
        salt,
        stored_key: key(stored_key)?,
        server_key: key(server_key)?,
    })
}

/// The stored form, without the `{SCRAM-SHA-256}` prefix.
pub(crate) fn format_stored(keys: &ScramKeys) -> String {
    format!(
        "{},{},{},{}",
        keys.iterations,
        BASE64.encode(&keys.salt),
        BASE64.encode(keys.stored_key),
        BASE64.encode(keys.server_key)
    )
}

/// Made-up SCRAM keys for `user`, the same for the same user and `secret`, unrelated for
/// another: an unknown user gets the same salt at every attempt, as a real one does. Nobody
/// knows a password for them: that would take a preimage of SHA-256.
pub(crate) fn fake_keys(secret: &[u8], user: &str, iterations: u32) -> ScramKeys {
    let salt = hmac_sha256(secret, &[b"facteur scram salt\0", user.as_bytes()]);
    ScramKeys {
        iterations,
        salt: salt.get(..SCRAM_SALT_LEN).unwrap_or(&salt[..]).to_vec(),
        stored_key: hmac_sha256(secret, &[b"facteur scram stored key\0", user.as_bytes()]),
        server_key: hmac_sha256(secret, &[b"facteur scram server key\0", user.as_bytes()]),
    }
}

/// The salt under which a `{PLAIN}` user's keys are derived: fixed for the life of `secret`, so
/// that, as for stored and made-up keys, the same user sees the same salt at every attempt.
pub(crate) fn plain_user_salt(secret: &[u8], user: &str) -> Vec<u8> {
    let salt = hmac_sha256(secret, &[b"facteur scram plain salt\0", user.as_bytes()]);
    salt.get(..SCRAM_SALT_LEN).unwrap_or(&salt[..]).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7677_keys() {
        // RFC 7677 section 3: user "user", password "pencil".
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let keys = ScramKeys::derive(b"pencil", &salt, 4096);
        let field = format_stored(&keys);
        assert!(
            field.starts_with("4096,W22ZaJ0SNY7soEsUEjb6gQ==,"),
            "{field}"
        );
        let parsed = parse_stored(&field).unwrap();
        assert_eq!(format_stored(&parsed), field);
        assert!(parsed.verify_password(b"pencil"));
        assert!(!parsed.verify_password(b"pencil "));
        assert!(!parsed.verify_password(b""));
    }

    #[test]
    fn malformed_fields_are_refused() {
        let salt = "W22ZaJ0SNY7soEsUEjb6gQ==";
        let key = BASE64.encode([7u8; 32]);
        let short_key = BASE64.encode([7u8; 31]);
        let ok = format!("4096,{salt},{key},{key}");
        assert!(parse_stored(&ok).is_ok());
        for bad in [
            String::new(),
            format!("4096,{salt},{key}"),
            format!("4096,{salt},{key},{key},"),
            format!("4095,{salt},{key},{key}"),
            format!("10000001,{salt},{key},{key}"),
            format!("99999999999999999999,{salt},{key},{key}"),
            format!("+4096,{salt},{key},{key}"),
            format!(",{salt},{key},{key}"),
            format!("4096,,{key},{key}"),
            format!("4096,W22ZaJ0SNY7soEsUEjb6gQ,{key},{key}"),
            format!("4096,W22ZaJ0SNY7soEsUEjb6gR==,{key},{key}"),
            format!("4096,{},{key},{key}", BASE64.encode([1u8; 129])),
            format!("4096,{salt},{short_key},{key}"),
            format!("4096,{salt},{key},{short_key}"),
            format!("4096,{salt},{key},{key} "),
            format!("4096,{salt},é{key},{key}"),
        ] {
            assert!(parse_stored(&bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn fake_keys_are_stable_per_user_and_secret() {
        let a = fake_keys(b"secret", "alice", 4096);
        let again = fake_keys(b"secret", "alice", 4096);
        let bob = fake_keys(b"secret", "bob", 4096);
        let other = fake_keys(b"other", "alice", 4096);
        assert_eq!(format_stored(&a), format_stored(&again));
        assert_ne!(a.salt, bob.salt);
        assert_ne!(a.stored_key, bob.stored_key);
        assert_ne!(a.salt, other.salt);
        assert_eq!(a.salt.len(), SCRAM_SALT_LEN);
        assert_ne!(plain_user_salt(b"secret", "alice"), a.salt);
        assert_eq!(
            plain_user_salt(b"secret", "alice"),
            plain_user_salt(b"secret", "alice")
        );
    }
}
