//! SCRAM-SHA-256 keys (RFC 5802 section 3, RFC 7677): what a server keeps of a user's secret,
//! what it derives from a password, and what a SCRAM exchange needs to know of a user
//! ([`ScramCredentials`]).
//!
//! ```text
//! SaltedPassword = PBKDF2-HMAC-SHA-256(password, salt, iterations)
//! ClientKey      = HMAC(SaltedPassword, "Client Key")
//! StoredKey      = SHA-256(ClientKey)
//! ServerKey      = HMAC(SaltedPassword, "Server Key")
//! ```
//!
//! StoredKey and ServerKey let a server check a client, and let whoever reads them impersonate
//! the server, but not log in as the user. The stored form of these keys (Dovecot's
//! `{SCRAM-SHA-256}` field) is the user database's business, not this module's.
//!
//! Passwords are used as their bytes: see the password schemes for what that means for
//! SASLprep.

use std::borrow::Cow;
use std::fmt;

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::FailureReason;
use crate::Secret;

/// The iteration count of new SCRAM-SHA-256 hashes: RFC 7677's minimum, and Dovecot's default.
pub const SCRAM_DEFAULT_ITERATIONS: u32 = 4096;

/// The fewest iterations accepted, from a user database or from a server (RFC 5802 section
/// 5.1 says the count SHOULD be at least 4096; fewer makes guessing the password from a
/// recorded exchange cheap).
pub const SCRAM_MIN_ITERATIONS: u32 = 4096;

/// The most iterations accepted: about a second of PBKDF2 on one core. A server derives keys
/// with it for USER/PASS and for `{PLAIN}` users, a client for every login; a typo of a few
/// extra digits in a user database, or a hostile server, must not make each login cost minutes.
pub const SCRAM_MAX_ITERATIONS: u32 = 10_000_000;

/// SHA-256's output length, the length of ClientKey, StoredKey and ServerKey.
pub const KEY_LEN: usize = 32;

/// HMAC-SHA-256 of the concatenated `parts`. Written so that it cannot fail: HMAC (RFC 2104
/// section 2) replaces a key longer than a block with its hash and pads it with zeros to a block,
/// which is done here, and the padded block is a key of the one length the type takes.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; KEY_LEN] {
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

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; KEY_LEN] {
    Sha256::digest(data).into()
}

#[cfg(any(test, feature = "count-derivations"))]
thread_local! {
    /// PBKDF2 derivations run by this thread, for the tests that count the hash work a peer
    /// can make a server do.
    static DERIVATIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The PBKDF2 derivations run by this thread so far (feature `count-derivations`, for tests).
#[cfg(any(test, feature = "count-derivations"))]
pub fn derivations() -> usize {
    DERIVATIONS.with(std::cell::Cell::get)
}

/// The parts of a SCRAM-SHA-256 secret that a server keeps. Deliberately not `Debug`.
#[derive(Clone)]
pub struct ScramKeys {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; KEY_LEN],
    pub server_key: [u8; KEY_LEN],
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
    pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> Self {
        Self::derive_with_client_key(password, salt, iterations).1
    }

    /// As [`ScramKeys::derive`], with the ClientKey too: what a client needs to make its proof
    /// (the server never sees it). The ClientKey is wiped when dropped.
    pub fn derive_with_client_key(
        password: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> (Secret<[u8; KEY_LEN]>, Self) {
        #[cfg(any(test, feature = "count-derivations"))]
        DERIVATIONS.with(|d| d.set(d.get() + 1));
        let salted = Secret::new(pbkdf2::pbkdf2_hmac_array::<Sha256, KEY_LEN>(
            password, salt, iterations,
        ));
        let client_key = Secret::new(hmac_sha256(salted.expose(), &[b"Client Key"]));
        let keys = Self {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(client_key.expose()),
            server_key: hmac_sha256(salted.expose(), &[b"Server Key"]),
        };
        (client_key, keys)
    }

    /// True if `password` gives this StoredKey (for USER/PASS against SCRAM keys). Compared in
    /// constant time.
    pub fn verify_password(&self, password: &[u8]) -> bool {
        let derived = Self::derive(password, &self.salt, self.iterations);
        subtle::ConstantTimeEq::ct_eq(&derived.stored_key[..], &self.stored_key[..]).into()
    }
}

/// What a SCRAM-SHA-256 exchange needs to know of a user, from
/// [`SaslVerifier::scram_credentials`](super::SaslVerifier::scram_credentials). `A` is the
/// verifier's account.
///
/// For a user who cannot log in with SCRAM (unknown, or whose stored password cannot give the
/// keys) the verifier returns made-up keys and no account: the exchange then looks the same
/// to the client until the proof fails. `Debug` shows the iteration count only.
///
/// The salt and the iteration count, which the server-first message carries, are at hand
/// without any hashing. The keys of a `{PLAIN}` user are derived (PBKDF2, thousands of rounds)
/// only when the client's proof is checked, in [`ScramCredentials::keys`]: a peer that sends a
/// client-first message and goes no further, or a malformed client-final one, buys no hash work.
#[derive(Clone)]
pub struct ScramCredentials<A> {
    iterations: u32,
    salt: Vec<u8>,
    keys: Secret<KeySource>,
    account: Option<A>,
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

impl<A> fmt::Debug for ScramCredentials<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredentials")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl<A> ScramCredentials<A> {
    /// Credentials from stored keys. `account` is `None` for made-up credentials, which never
    /// succeed even if the proof matched.
    pub fn new(
        iterations: u32,
        salt: Vec<u8>,
        stored_key: [u8; KEY_LEN],
        server_key: [u8; KEY_LEN],
        account: Option<A>,
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
    /// which is slow, but only when [`ScramCredentials::keys`] is first called for the proof.
    pub fn from_password(
        password: &[u8],
        salt: &[u8],
        iterations: u32,
        account: Option<A>,
    ) -> Self {
        Self {
            iterations,
            salt: salt.to_vec(),
            keys: Secret::new(KeySource::Password(password.to_vec())),
            account,
            no_account: FailureReason::Unspecified,
        }
    }

    /// Credentials from keys at hand (stored ones).
    pub fn from_keys(keys: ScramKeys, account: Option<A>) -> Self {
        Self {
            iterations: keys.iterations,
            salt: keys.salt.clone(),
            keys: Secret::new(KeySource::Ready(keys)),
            account,
            no_account: FailureReason::Unspecified,
        }
    }

    /// Made-up credentials (no account, [`FailureReason::UnknownUser`] unless
    /// [`ScramCredentials::because`] says otherwise) whose proof check costs a PBKDF2 as a
    /// `{PLAIN}` user's does (`derivation_cost`), or nothing more than stored keys.
    pub fn made_up(keys: ScramKeys, derivation_cost: bool) -> Self {
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
    pub fn keys(&self) -> Cow<'_, ScramKeys> {
        match self.keys.expose() {
            KeySource::Ready(keys) => Cow::Borrowed(keys),
            KeySource::Password(password) => {
                Cow::Owned(ScramKeys::derive(password, &self.salt, self.iterations))
            }
            KeySource::MadeUpWithDerivation(keys) => {
                // The cost of deriving a {PLAIN} user's keys, from a value nobody knows.
                std::hint::black_box(ScramKeys::derive(
                    &keys.server_key,
                    &keys.salt,
                    keys.iterations,
                ));
                Cow::Borrowed(keys)
            }
        }
    }

    /// The account the proof logs into; `None` for made-up credentials.
    pub fn account(&self) -> Option<&A> {
        self.account.as_ref()
    }

    /// The credentials' account, taken out (once the proof was checked).
    pub(super) fn into_account(self) -> Option<A> {
        self.account
    }

    /// Why [`ScramCredentials::account`] is `None`.
    pub fn no_account_reason(&self) -> FailureReason {
        self.no_account
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD as BASE64;
    use base64::Engine as _;

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
        // RFC 7677 section 3: user "user", password "pencil"; the server signature of the
        // example exchange checks ServerKey, the proof checks ClientKey and StoredKey.
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let (client_key, keys) = ScramKeys::derive_with_client_key(b"pencil", &salt, 4096);
        assert_eq!(keys.iterations, 4096);
        assert_eq!(keys.salt, salt);
        assert_eq!(sha256(client_key.expose()), keys.stored_key);
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,\
            r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,\
            c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let signature = hmac_sha256(&keys.stored_key, &[auth_message.as_bytes()]);
        let proof: Vec<u8> = client_key
            .expose()
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        assert_eq!(
            BASE64.encode(proof),
            "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert_eq!(
            BASE64.encode(hmac_sha256(&keys.server_key, &[auth_message.as_bytes()])),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        assert!(keys.verify_password(b"pencil"));
        assert!(!keys.verify_password(b"pencil "));
        assert!(!keys.verify_password(b""));
    }

    #[test]
    fn keys_are_derived_only_when_asked_for() {
        let before = derivations();
        let plain = ScramCredentials::from_password(b"x", b"salt", 4096, Some("p"));
        let stored = ScramCredentials::from_keys(ScramKeys::derive(b"x", b"salt", 4096), Some("s"));
        let made_up = ScramCredentials::<&str>::made_up(stored.keys().into_owned(), true);
        let cheap = ScramCredentials::<&str>::made_up(stored.keys().into_owned(), false);
        assert_eq!(derivations(), before + 1);
        assert_eq!(plain.keys().stored_key, stored.keys().stored_key);
        assert_eq!(derivations(), before + 2);
        let _ = made_up.keys();
        assert_eq!(derivations(), before + 3);
        let _ = cheap.keys();
        assert_eq!(derivations(), before + 3);
        assert_eq!(plain.account(), Some(&"p"));
        assert_eq!(made_up.account(), None);
        assert_eq!(made_up.no_account_reason(), FailureReason::UnknownUser);
        assert_eq!(
            cheap
                .because(FailureReason::WrongPassword)
                .no_account_reason(),
            FailureReason::WrongPassword
        );
    }

    #[test]
    fn debug_shows_no_key() {
        let c = ScramCredentials::new(
            4096,
            b"saltsalt".to_vec(),
            [0xab; 32],
            [0xcd; 32],
            Some("account"),
        );
        let debug = format!("{c:?}");
        assert!(debug.contains("4096"), "{debug}");
        assert!(!debug.contains("171"), "{debug}");
        assert!(!debug.contains("salt"), "{debug}");
        assert!(!debug.contains("account"), "{debug}");
        let p = ScramCredentials::from_password(b"hunter2", b"salt", 4096, Some(()));
        assert!(!format!("{p:?}").contains("hunter2"));
    }
}
