//! SCRAM-SHA-256 keys (RFC 5802 section 3, RFC 7677): what the server stores and derives, and
//! Dovecot's `{SCRAM-SHA-256}` stored form.
//!
//! ```text
//! SaltedPassword = PBKDF2-HMAC-SHA-256(password, salt, iterations)
//! ClientKey      = HMAC(SaltedPassword, "Client Key")
//! StoredKey      = SHA-256(ClientKey)
//! ServerKey      = HMAC(SaltedPassword, "Server Key")
//! ```
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

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use facteur_proto::Secret;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::{Account, FailureReason};

/// The iteration count of new SCRAM-SHA-256 hashes: RFC 7677's minimum, and Dovecot's default.
pub const SCRAM_DEFAULT_ITERATIONS: u32 = 4096;

/// The fewest iterations accepted from the passwd-file, as Dovecot (RFC 5802 section 5.1 says
/// the count SHOULD be at least 4096).
pub const SCRAM_MIN_ITERATIONS: u32 = 4096;

/// The most iterations accepted from the passwd-file: about a second of PBKDF2 on one core. The
/// server derives keys with it for USER/PASS and for `{PLAIN}` users; a typo of a few extra
/// digits must not make each login cost minutes.
pub const SCRAM_MAX_ITERATIONS: u32 = 10_000_000;

/// The salt length of new hashes, in bytes (Dovecot's is 16 too).
pub const SCRAM_SALT_LEN: usize = 16;

/// The longest salt accepted from the passwd-file, in bytes: it is sent to the client in every
/// exchange, so it stays small.
const SCRAM_MAX_SALT_LEN: usize = 128;

/// SHA-256's output length, the length of StoredKey and ServerKey.
pub(crate) const KEY_LEN: usize = 32;

/// HMAC-SHA-256 of the concatenated `parts`. Written so that it cannot fail: HMAC (RFC 2104
/// section 2) replaces a key longer than a block with its hash and pads it with zeros to a block,
/// which is done here, and the padded block is a key of the one length the type takes.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; KEY_LEN] {
    let mut block = hmac::digest::generic_array::GenericArray::default();
    let short;
    let key = if key.len() > block.len() {
        short = Sha256::digest(key);
        &short[..]
    } else {
        key
    };
    for (b, &k) in block.iter_mut().zip(key) {
        *b = k;
    }
    let mut mac = <Hmac<Sha256> as KeyInit>::new(&block);
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; KEY_LEN] {
    Sha256::digest(data).into()
}

#[cfg(test)]
thread_local! {
    /// PBKDF2 derivations run by this thread, for the tests that count the hash work a peer
    /// can make the server do.
    static DERIVATIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The PBKDF2 derivations run by this thread so far.
#[cfg(test)]
pub(crate) fn derivations() -> usize {
    DERIVATIONS.with(std::cell::Cell::get)
}

/// The parts of a SCRAM-SHA-256 secret that a server keeps. Deliberately not `Debug`.
#[derive(Clone)]
pub(crate) struct ScramKeys {
    pub(crate) iterations: u32,
    pub(crate) salt: Vec<u8>,
    pub(crate) stored_key: [u8; KEY_LEN],
    pub(crate) server_key: [u8; KEY_LEN],
}

impl zeroize::Zeroize for ScramKeys {
    fn zeroize(&mut self) {
        self.salt.zeroize();
        self.stored_key.zeroize();
        self.server_key.zeroize();
    }
}

impl ScramKeys {
    /// Derives the keys from a password (RFC 5802 section 3).
    pub(crate) fn derive(password: &[u8], salt: &[u8], iterations: u32) -> Self {
        #[cfg(test)]
        DERIVATIONS.with(|d| d.set(d.get() + 1));
        let salted: [u8; KEY_LEN] =
            pbkdf2::pbkdf2_hmac_array::<Sha256, KEY_LEN>(password, salt, iterations);
        let client_key = hmac_sha256(&salted, &[b"Client Key"]);
        Self {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac_sha256(&salted, &[b"Server Key"]),
        }
    }

    /// True if `password` gives this StoredKey (for USER/PASS against a SCRAM hash). Compared
    /// in constant time.
    pub(crate) fn verify_password(&self, password: &[u8]) -> bool {
        let derived = Self::derive(password, &self.salt, self.iterations);
        subtle::ConstantTimeEq::ct_eq(&derived.stored_key[..], &self.stored_key[..]).into()
    }

    /// Parses what follows `{SCRAM-SHA-256}`.
    pub(crate) fn parse(s: &str) -> Result<Self, &'static str> {
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
        Ok(Self {
            iterations,
            salt,
            stored_key: key(stored_key)?,
            server_key: key(server_key)?,
        })
    }

    /// The stored form, without the `{SCRAM-SHA-256}` prefix.
    pub(crate) fn format(&self) -> String {
        format!(
            "{},{},{},{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(self.stored_key),
            BASE64.encode(self.server_key)
        )
    }
}

/// What a SCRAM-SHA-256 exchange needs to know of a user, from
/// [`Authenticator::scram_credentials`](super::Authenticator::scram_credentials).
///
/// For a user who cannot log in with SCRAM (unknown, or whose stored password cannot give the
/// keys) the authenticator returns made-up keys and no account: the exchange then looks the same
/// to the client until the proof fails. `Debug` shows the iteration count only.
///
/// The salt and the iteration count, which the server-first message carries, are at hand
/// without any hashing. The keys of a `{PLAIN}` user are derived (PBKDF2, thousands of rounds)
/// only when the client's proof is checked, in `ScramCredentials::keys`: a peer that sends a
/// client-first message and goes no further, or a malformed client-final one, buys no hash work.
#[derive(Clone)]
pub struct ScramCredentials {
    iterations: u32,
    salt: Vec<u8>,
    keys: Secret<KeySource>,
    account: Option<Account>,
    /// Why there is no account, for the log.
    no_account: FailureReason,
}

/// Where the keys come from. Holds a password for `{PLAIN}` users: never printed.
#[derive(Clone)]
enum KeySource {
    /// Stored keys, or made-up keys that cost nothing more to check.
    Ready(ScramKeys),
    /// A `{PLAIN}` user's password, the keys derived from it when the proof arrives.
    Password(Vec<u8>),
    /// Made-up keys that cost what a `{PLAIN}` user's cost: a PBKDF2 when the proof arrives.
    MadeUpWithDerivation(ScramKeys),
}

impl zeroize::Zeroize for KeySource {
    fn zeroize(&mut self) {
        match self {
            KeySource::Ready(keys) | KeySource::MadeUpWithDerivation(keys) => keys.zeroize(),
            KeySource::Password(password) => password.zeroize(),
        }
    }
}

impl fmt::Debug for ScramCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredentials")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramCredentials {
    /// Credentials from stored keys. `account` is `None` for made-up credentials, which never
    /// succeed even if the proof matched.
    pub fn new(
        iterations: u32,
        salt: Vec<u8>,
        stored_key: [u8; 32],
        server_key: [u8; 32],
        account: Option<Account>,
    ) -> Self {
        Self::from_keys(
            ScramKeys {
                iterations,
                salt,
                stored_key,
                server_key,
            },
            account,
        )
    }

    /// Credentials from a password: the keys are derived with PBKDF2 and `iterations` rounds,
    /// which is slow, but only when `ScramCredentials::keys` is first called for the proof.
    pub fn from_password(
        password: &[u8],
        salt: &[u8],
        iterations: u32,
        account: Option<Account>,
    ) -> Self {
        Self {
            iterations,
            salt: salt.to_vec(),
            keys: Secret::new(KeySource::Password(password.to_vec())),
            account,
            no_account: FailureReason::Unspecified,
        }
    }

    pub(crate) fn from_keys(keys: ScramKeys, account: Option<Account>) -> Self {
        Self {
            iterations: keys.iterations,
            salt: keys.salt.clone(),
            keys: Secret::new(KeySource::Ready(keys)),
            account,
            no_account: FailureReason::Unspecified,
        }
    }

    /// Made-up credentials (no account) whose proof check costs a PBKDF2 as a `{PLAIN}` user's
    /// does (`derivation_cost`), or nothing more than stored keys.
    pub(crate) fn made_up(keys: ScramKeys, derivation_cost: bool) -> Self {
        let iterations = keys.iterations;
        let salt = keys.salt.clone();
        let source = if derivation_cost {
            KeySource::MadeUpWithDerivation(keys)
        } else {
            KeySource::Ready(keys)
        };
        Self {
            iterations,
            salt,
            keys: Secret::new(source),
            account: None,
            no_account: FailureReason::UnknownUser,
        }
    }

    /// Says why credentials without an account have none (an unknown user, a scheme SCRAM
    /// cannot use), for the log line of the failed login. Changes nothing else.
    pub fn because(mut self, reason: FailureReason) -> Self {
        self.no_account = reason;
        self
    }

    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    /// The keys the proof is checked against. Slow (PBKDF2) for credentials from a password,
    /// and for made-up ones that must cost the same: call it once, for the client's proof.
    pub(crate) fn keys(&self) -> std::borrow::Cow<'_, ScramKeys> {
        match self.keys.expose() {
            KeySource::Ready(keys) => std::borrow::Cow::Borrowed(keys),
            KeySource::Password(password) => {
                std::borrow::Cow::Owned(ScramKeys::derive(password, &self.salt, self.iterations))
            }
            KeySource::MadeUpWithDerivation(keys) => {
                // The cost of deriving a {PLAIN} user's keys, from a value nobody knows.
                std::hint::black_box(ScramKeys::derive(
                    &keys.server_key,
                    &keys.salt,
                    keys.iterations,
                ));
                std::borrow::Cow::Borrowed(keys)
            }
        }
    }

    pub(crate) fn account(&self) -> Option<&Account> {
        self.account.as_ref()
    }

    /// Why [`ScramCredentials::account`] is `None`.
    pub(crate) fn no_account_reason(&self) -> FailureReason {
        self.no_account
    }
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
    fn zeroize_wipes_the_keys() {
        use zeroize::Zeroize as _;
        let mut keys = ScramKeys::derive(b"pencil", b"salt", 4096);
        keys.zeroize();
        assert!(keys.salt.is_empty());
        assert_eq!(
            (keys.stored_key, keys.server_key),
            ([0; KEY_LEN], [0; KEY_LEN])
        );
        let mut source = KeySource::Password(b"pencil".to_vec());
        source.zeroize();
        assert!(matches!(source, KeySource::Password(p) if p.is_empty()));
    }

    #[test]
    fn hmac_matches_the_hmac_crate() {
        for key_len in [0usize, 1, 32, 63, 64, 65, 200] {
            let key: Vec<u8> = (0..key_len).map(|i| (i * 11 + 7) as u8).collect();
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
            mac.update(b"ab");
            mac.update(b"cd");
            let expected: [u8; 32] = mac.finalize().into_bytes().into();
            assert_eq!(hmac_sha256(&key, &[b"ab", b"cd"]), expected, "{key_len}");
            assert_eq!(hmac_sha256(&key, &[b"abcd"]), expected, "{key_len}");
        }
    }

    #[test]
    fn rfc7677_keys() {
        // RFC 7677 section 3: user "user", password "pencil".
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let keys = ScramKeys::derive(b"pencil", &salt, 4096);
        let field = keys.format();
        assert!(
            field.starts_with("4096,W22ZaJ0SNY7soEsUEjb6gQ==,"),
            "{field}"
        );
        let parsed = ScramKeys::parse(&field).unwrap();
        assert_eq!(parsed.format(), field);
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
        assert!(ScramKeys::parse(&ok).is_ok());
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
            assert!(ScramKeys::parse(&bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn fake_keys_are_stable_per_user_and_secret() {
        let a = fake_keys(b"secret", "alice", 4096);
        let again = fake_keys(b"secret", "alice", 4096);
        let bob = fake_keys(b"secret", "bob", 4096);
        let other = fake_keys(b"other", "alice", 4096);
        assert_eq!(a.format(), again.format());
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

    #[test]
    fn debug_shows_no_key() {
        let c = ScramCredentials::new(4096, b"saltsalt".to_vec(), [0xab; 32], [0xcd; 32], None);
        let debug = format!("{c:?}");
        assert!(debug.contains("4096"), "{debug}");
        assert!(!debug.contains("171"), "{debug}");
        assert!(!debug.contains("salt"), "{debug}");
    }
}
