//! Password schemes: parsing a stored password (`{SCHEME}hash`), checking a password against it,
//! and hashing a new one.
//!
//! Every stored password is checked for its format when the passwd-file is loaded, so that a
//! typo shows at start-up with its file and line, and never at a user's login. Nothing in this
//! module may put a password or a hash in an error message, a log line or a `Debug` output.

use std::fmt;
use std::str::FromStr;

use argon2::password_hash::{PasswordHash, PasswordHashString, SaltString};
use argon2::{Argon2, PasswordHasher};
use facteur_proto::Secret;
use md5::Md5;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::cram_md5::CramMd5Context;
use super::scram::{format_stored, parse_stored, SCRAM_SALT_LEN};
use super::AuthError;
use facteur_proto::encoding::hex;
use facteur_proto::sasl::{ScramKeys, SCRAM_DEFAULT_ITERATIONS};

/// A password scheme, named as Dovecot names it in the `{SCHEME}` prefix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Argon2id in a PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`); the default.
    #[default]
    Argon2id,
    /// SHA-512 crypt (`$6$`), as glibc's crypt(3).
    Sha512Crypt,
    /// SHA-256 crypt (`$5$`), as glibc's crypt(3).
    Sha256Crypt,
    /// bcrypt (`$2y$`, `$2b$`, `$2a$`).
    BlfCrypt,
    /// SCRAM-SHA-256 keys in Dovecot's form (`iterations,salt,StoredKey,ServerKey`, base64):
    /// what SASL SCRAM-SHA-256 needs, and good for USER/PASS too (PBKDF2-SHA-256).
    ScramSha256,
    /// Dovecot's HMAC-MD5 context of the password (64 hex digits): what SASL CRAM-MD5 needs,
    /// and good for USER/PASS too. Unsalted and fast to compute: about as weak as PLAIN against
    /// anyone who reads the file.
    CramMd5,
    /// The password itself. Needed for APOP; anyone who reads the file reads the password.
    Plain,
}

impl Scheme {
    /// Every scheme, in the order the CLI should list them.
    pub const ALL: [Scheme; 7] = [
        Scheme::Argon2id,
        Scheme::Sha512Crypt,
        Scheme::Sha256Crypt,
        Scheme::BlfCrypt,
        Scheme::ScramSha256,
        Scheme::CramMd5,
        Scheme::Plain,
    ];

    /// The Dovecot name, as written between the braces.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Argon2id => "ARGON2ID",
            Scheme::Sha512Crypt => "SHA512-CRYPT",
            Scheme::Sha256Crypt => "SHA256-CRYPT",
            Scheme::BlfCrypt => "BLF-CRYPT",
            Scheme::ScramSha256 => "SCRAM-SHA-256",
            Scheme::CramMd5 => "CRAM-MD5",
            Scheme::Plain => "PLAIN",
        }
    }

    /// True if a password stored in this scheme can serve the login method `method` (a SASL
    /// mechanism name, or "APOP"; upper case). CRAM-MD5 needs the HMAC-MD5 context
    /// ({CRAM-MD5}, or {PLAIN} to compute it); SCRAM-SHA-256 needs its keys ({SCRAM-SHA-256},
    /// or {PLAIN}); APOP needs the password itself ({PLAIN}). USER/PASS, PLAIN, LOGIN and
    /// EXTERNAL (a client certificate) work with every scheme.
    pub fn serves(self, method: &str) -> bool {
        match method {
            "CRAM-MD5" => matches!(self, Scheme::CramMd5 | Scheme::Plain),
            "SCRAM-SHA-256" => matches!(self, Scheme::ScramSha256 | Scheme::Plain),
            "APOP" => self == Scheme::Plain,
            _ => true,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A scheme name that facteur does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown password scheme {name:?} (known: ARGON2ID, SHA512-CRYPT, SHA256-CRYPT, BLF-CRYPT, SCRAM-SHA-256, CRAM-MD5, PLAIN)")]
pub struct UnknownScheme {
    /// The name as written, shortened if it looks nothing like a scheme name.
    pub name: String,
}

impl FromStr for Scheme {
    type Err = UnknownScheme;

    /// Case-insensitive, as Dovecot; `CLEAR` and `CLEARTEXT` are Dovecot's other names for PLAIN.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let scheme = match s.to_ascii_uppercase().as_str() {
            "ARGON2ID" => Scheme::Argon2id,
            "SHA512-CRYPT" => Scheme::Sha512Crypt,
            "SHA256-CRYPT" => Scheme::Sha256Crypt,
            "BLF-CRYPT" => Scheme::BlfCrypt,
            "SCRAM-SHA-256" => Scheme::ScramSha256,
            "CRAM-MD5" => Scheme::CramMd5,
            "PLAIN" | "CLEAR" | "CLEARTEXT" => Scheme::Plain,
            _ => {
                return Err(UnknownScheme {
                    name: printable_scheme_name(s),
                })
            }
        };
        Ok(scheme)
    }
}

/// What is between the braces may be a password typed in the wrong place: echo it only if it
/// looks like a scheme name.
fn printable_scheme_name(s: &str) -> String {
    let looks_like_a_name = s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if looks_like_a_name {
        s.to_string()
    } else {
        "<not shown>".to_string()
    }
}

/// Why a stored password field was refused. The messages never quote the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoredPasswordError {
    #[error("the password field is empty")]
    Empty,
    #[error("the password field has no {{SCHEME}} prefix and is not a $6$, $5$, $2y$, $2b$ or $argon2id$ crypt string")]
    NoScheme,
    #[error("the {{SCHEME}} prefix has no closing brace")]
    UnclosedBrace,
    #[error(transparent)]
    UnknownScheme(#[from] UnknownScheme),
    #[error("not a valid {scheme} hash: {reason}")]
    Malformed {
        scheme: Scheme,
        reason: &'static str,
    },
}

fn malformed(scheme: Scheme, reason: &'static str) -> StoredPasswordError {
    StoredPasswordError::Malformed { scheme, reason }
}

/// The largest Argon2 memory cost accepted from the passwd-file, in KiB (1 GiB). Every login
/// against such a hash allocates that much; a typo of a few extra zeros must not take the
/// server down with an out-of-memory abort at the first login.
pub const ARGON2_MAX_M_COST_KIB: u32 = 1024 * 1024;

/// The bcrypt cost for new BLF-CRYPT hashes (2^12 rounds). Dovecot's default of 5 is too weak.
pub const BCRYPT_DEFAULT_COST: u32 = 12;

/// The longest password bcrypt looks at; bytes past it are ignored by every implementation.
pub const BCRYPT_MAX_PASSWORD_LEN: usize = 72;

/// glibc's default and bounds for the rounds of SHA-crypt.
const SHA_CRYPT_DEFAULT_ROUNDS: u32 = 5_000;
const SHA_CRYPT_MIN_ROUNDS: u32 = 1_000;
const SHA_CRYPT_MAX_ROUNDS: u32 = 999_999_999;
/// glibc uses at most 16 characters of salt.
const SHA_CRYPT_MAX_SALT: usize = 16;

/// The alphabet of crypt(3)'s base64, used by SHA-crypt (in this order): for making and checking
/// salts and checking stored hashes. sha-crypt encodes digests itself but keeps its table private.
const CRYPT_B64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// The alphabet of bcrypt's base64 (a different order from crypt's).
const BCRYPT_B64: &[u8; 64] = b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum ShaBits {
    Sha256,
    Sha512,
}

impl ShaBits {
    fn scheme(self) -> Scheme {
        match self {
            ShaBits::Sha256 => Scheme::Sha256Crypt,
            ShaBits::Sha512 => Scheme::Sha512Crypt,
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            ShaBits::Sha256 => "$5$",
            ShaBits::Sha512 => "$6$",
        }
    }

    /// Characters of the encoded digest.
    fn encoded_len(self) -> usize {
        match self {
            ShaBits::Sha256 => 43,
            ShaBits::Sha512 => 86,
        }
    }
}

/// Where the keys of a SCRAM-SHA-256 exchange come from.
pub(crate) enum ScramSource<'a> {
    /// A `{SCRAM-SHA-256}` password: the keys themselves.
    Stored(&'a ScramKeys),
    /// A `{PLAIN}` password: the keys are derived from it at each exchange.
    Plain(&'a [u8]),
}

/// The parsed content of a stored password. Deliberately not `Debug`.
#[derive(Clone)]
enum Inner {
    Argon2id(PasswordHashString),
    ShaCrypt {
        bits: ShaBits,
        rounds: u32,
        salt: String,
        digest: String,
    },
    Bcrypt {
        /// The whole `$2y$cc$...` string, as the bcrypt crate takes it.
        full: String,
        cost: u32,
    },
    Scram(ScramKeys),
    CramMd5(CramMd5Context),
    Plain(Vec<u8>),
}

impl zeroize::Zeroize for Inner {
    fn zeroize(&mut self) {
        match self {
            // PasswordHashString gives no mutable access to its text (a hash, not a password).
            Inner::Argon2id(_) => {}
            Inner::ShaCrypt { salt, digest, .. } => {
                salt.zeroize();
                digest.zeroize();
            }
            Inner::Bcrypt { full, .. } => full.zeroize(),
            Inner::Scram(keys) => keys.zeroize(),
            Inner::CramMd5(context) => context.zeroize(),
            Inner::Plain(password) => password.zeroize(),
        }
    }
}

/// A password as stored in the passwd-file, parsed and checked for its format.
///
/// Its `Debug` shows the scheme only.
#[derive(Clone)]
pub struct StoredPassword {
    scheme: Scheme,
    inner: Secret<Inner>,
}

impl fmt::Debug for StoredPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredPassword")
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

/// The scheme and cost parameters of a stored password: two passwords with the same key cost
/// the same work to check. Used to pick the dummy hash that unknown users are checked against.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum CostKey {
    Argon2id {
        m: u32,
        t: u32,
        p: u32,
        version: u32,
        output_len: usize,
    },
    ShaCrypt {
        bits: ShaBits,
        rounds: u32,
    },
    Bcrypt {
        cost: u32,
    },
    Scram {
        iterations: u32,
    },
    CramMd5,
    Plain,
}

impl CostKey {
    /// The work of one check of a short password at this cost, roughly in nanoseconds on one
    /// core of a current x86-64 machine: only the order between keys matters, to find the
    /// slowest scheme of a passwd-file. From the published figures of each algorithm:
    /// ARGON2ID fills and reads `m` blocks of 1 KiB `t` times (about 1 µs a block); SHA-crypt
    /// runs `rounds` rounds of about two hashes (about 1 µs each); bcrypt runs `2^cost` rounds of
    /// its key schedule (about 70 µs at cost 0, 70 ms at cost 10); PBKDF2-HMAC-SHA-256 for SCRAM
    /// costs two SHA-256 blocks an iteration (about 0.6 µs); CRAM-MD5 and PLAIN one hash.
    pub(crate) fn estimated_work(&self) -> u64 {
        match *self {
            CostKey::Argon2id { m, t, p, .. } => u64::from(m.max(8 * p))
                .saturating_mul(u64::from(t))
                .saturating_mul(1_000),
            CostKey::ShaCrypt { rounds, .. } => u64::from(rounds).saturating_mul(1_000),
            CostKey::Bcrypt { cost } => 1u64
                .checked_shl(cost)
                .unwrap_or(u64::MAX)
                .saturating_mul(70_000),
            CostKey::Scram { iterations } => u64::from(iterations).saturating_mul(600),
            CostKey::CramMd5 => 1_000,
            CostKey::Plain => 500,
        }
    }
}

impl Default for CostKey {
    /// The cost of a new ARGON2ID hash, for a passwd-file with no users yet.
    fn default() -> Self {
        let p = argon2::Params::DEFAULT;
        CostKey::Argon2id {
            m: p.m_cost(),
            t: p.t_cost(),
            p: p.p_cost(),
            version: argon2::Version::default() as u32,
            output_len: argon2::Params::DEFAULT_OUTPUT_LEN,
        }
    }
}

impl StoredPassword {
    /// Parses the password field of a passwd-file line: `{SCHEME}hash`, or a bare crypt string
    /// starting with `$6$`, `$5$`, `$2y$`, `$2b$` or `$argon2id$` whose scheme is inferred.
    pub fn parse(field: &str) -> Result<Self, StoredPasswordError> {
        if field.is_empty() {
            return Err(StoredPasswordError::Empty);
        }
        let (scheme, rest) = if let Some(after) = field.strip_prefix('{') {
            let close = after.find('}').ok_or(StoredPasswordError::UnclosedBrace)?;
            let scheme: Scheme = after[..close].parse()?;
            (scheme, &after[close + 1..])
        } else {
            (infer_scheme(field)?, field)
        };
        let inner = match scheme {
            Scheme::Argon2id => parse_argon2id(rest)?,
            Scheme::Sha512Crypt => parse_sha_crypt(ShaBits::Sha512, rest)?,
            Scheme::Sha256Crypt => parse_sha_crypt(ShaBits::Sha256, rest)?,
            Scheme::BlfCrypt => parse_bcrypt(rest)?,
            Scheme::ScramSha256 => Inner::Scram(
                parse_stored(rest).map_err(|reason| malformed(Scheme::ScramSha256, reason))?,
            ),
            Scheme::CramMd5 => Inner::CramMd5(
                CramMd5Context::from_hex(rest)
                    .ok_or_else(|| malformed(Scheme::CramMd5, "expected 64 hex digits"))?,
            ),
            Scheme::Plain => {
                if rest.is_empty() {
                    return Err(malformed(Scheme::Plain, "the password is empty"));
                }
                Inner::Plain(rest.as_bytes().to_vec())
            }
        };
        Ok(Self {
            scheme,
            inner: Secret::new(inner),
        })
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// True if `password` is the password. Slow by design for every scheme but PLAIN; the
    /// comparisons that are ours run in constant time.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self.inner.expose() {
            Inner::Argon2id(phc) => argon2_verify(password, &phc.password_hash()),
            Inner::ShaCrypt {
                bits,
                rounds,
                salt,
                digest,
            } => match sha_crypt_digest(*bits, password, salt.as_bytes(), *rounds) {
                Some(computed) => bool::from(computed.as_bytes().ct_eq(digest.as_bytes())),
                None => false,
            },
            Inner::Bcrypt { full, .. } => bcrypt::verify(password, full).unwrap_or(false),
            Inner::Scram(keys) => keys.verify_password(password),
            Inner::CramMd5(stored) => stored.ct_eq(&CramMd5Context::from_secret(password)),
            Inner::Plain(stored) => plain_matches(stored, password),
        }
    }

    /// The HMAC-MD5 context CRAM-MD5 needs: stored as such, or computed from a PLAIN password.
    pub(crate) fn cram_md5_context(&self) -> Option<CramMd5Context> {
        match self.inner.expose() {
            Inner::CramMd5(stored) => Some(stored.clone()),
            Inner::Plain(password) => Some(CramMd5Context::from_secret(password)),
            _ => None,
        }
    }

    /// Where SCRAM-SHA-256 keys come from for this password, if it can give them.
    pub(crate) fn scram_source(&self) -> Option<ScramSource<'_>> {
        match self.inner.expose() {
            Inner::Scram(keys) => Some(ScramSource::Stored(keys)),
            Inner::Plain(password) => Some(ScramSource::Plain(password)),
            _ => None,
        }
    }

    /// The shared secret for APOP: only a PLAIN password has one.
    pub(crate) fn apop_secret(&self) -> Option<&[u8]> {
        match self.inner.expose() {
            Inner::Plain(stored) => Some(stored),
            _ => None,
        }
    }

    pub(crate) fn cost_key(&self) -> CostKey {
        match self.inner.expose() {
            Inner::Argon2id(phc) => {
                let hash = phc.password_hash();
                // Parsed at load, so this succeeds; the default is never reached in practice.
                let params = argon2::Params::try_from(&hash).unwrap_or_default();
                CostKey::Argon2id {
                    m: params.m_cost(),
                    t: params.t_cost(),
                    p: params.p_cost(),
                    version: hash.version.unwrap_or(argon2::Version::default() as u32),
                    output_len: hash
                        .hash
                        .map_or(argon2::Params::DEFAULT_OUTPUT_LEN, |h| h.len()),
                }
            }
            Inner::ShaCrypt { bits, rounds, .. } => CostKey::ShaCrypt {
                bits: *bits,
                rounds: *rounds,
            },
            Inner::Bcrypt { cost, .. } => CostKey::Bcrypt { cost: *cost },
            Inner::Scram(keys) => CostKey::Scram {
                iterations: keys.iterations,
            },
            Inner::CramMd5(_) => CostKey::CramMd5,
            Inner::Plain(_) => CostKey::Plain,
        }
    }

    /// A stored password of the cost `key` for a random password nobody knows: what a login for
    /// an unknown user is checked against, so that it costs the same as a known user's.
    pub(crate) fn dummy(key: CostKey) -> Result<Self, AuthError> {
        let token = random_token()?;
        let password = token.as_bytes();
        let stored = match key {
            CostKey::Argon2id {
                m,
                t,
                p,
                version,
                output_len,
            } => {
                let version = argon2::Version::try_from(version).unwrap_or_default();
                let params = argon2::Params::new(m, t, p, Some(output_len))
                    .map_err(|e| AuthError::Hash(e.to_string()))?;
                argon2_hash(password, version, params)?
            }
            CostKey::ShaCrypt { bits, rounds } => sha_crypt_hash(bits, password, rounds)?,
            CostKey::Bcrypt { cost } => bcrypt_hash(password, cost)?,
            CostKey::Scram { iterations } => scram_hash(password, iterations)?,
            CostKey::CramMd5 => CramMd5Context::from_secret(password).to_hex(),
            CostKey::Plain => token.clone(),
        };
        let scheme = match key {
            CostKey::Argon2id { .. } => Scheme::Argon2id,
            CostKey::ShaCrypt { bits, .. } => bits.scheme(),
            CostKey::Bcrypt { .. } => Scheme::BlfCrypt,
            CostKey::Scram { .. } => Scheme::ScramSha256,
            CostKey::CramMd5 => Scheme::CramMd5,
            CostKey::Plain => Scheme::Plain,
        };
        Self::parse(&format!("{{{scheme}}}{stored}"))
            .map_err(|e| AuthError::Hash(format!("the dummy hash does not parse: {e}")))
    }
}

/// Compares through SHA-256 so that neither the content nor the length of the stored password
/// shows in the time taken.
fn plain_matches(stored: &[u8], given: &[u8]) -> bool {
    let a = Sha256::digest(stored);
    let b = Sha256::digest(given);
    a.as_slice().ct_eq(b.as_slice()).into()
}

fn infer_scheme(field: &str) -> Result<Scheme, StoredPasswordError> {
    if field.starts_with("$6$") {
        Ok(Scheme::Sha512Crypt)
    } else if field.starts_with("$5$") {
        Ok(Scheme::Sha256Crypt)
    } else if field.starts_with("$2y$") || field.starts_with("$2b$") {
        Ok(Scheme::BlfCrypt)
    } else if field.starts_with("$argon2id$") {
        Ok(Scheme::Argon2id)
    } else {
        Err(StoredPasswordError::NoScheme)
    }
}

fn parse_argon2id(s: &str) -> Result<Inner, StoredPasswordError> {
    let bad = |reason| malformed(Scheme::Argon2id, reason);
    if !s.starts_with("$argon2id$") {
        return Err(bad("it does not start with $argon2id$"));
    }
    let phc = PasswordHashString::new(s).map_err(|_| bad("it is not a valid PHC string"))?;
    {
        let hash = phc.password_hash();
        if let Some(version) = hash.version {
            argon2::Version::try_from(version).map_err(|_| bad("unknown Argon2 version"))?;
        }
        let params =
            argon2::Params::try_from(&hash).map_err(|_| bad("invalid Argon2 parameters"))?;
        if params.m_cost() > ARGON2_MAX_M_COST_KIB {
            return Err(bad("memory cost above facteur's limit of 1 GiB"));
        }
        let salt = hash.salt.ok_or_else(|| bad("no salt"))?;
        let mut buf = [0u8; 64];
        let salt = salt
            .decode_b64(&mut buf)
            .map_err(|_| bad("the salt is not valid base64"))?;
        if salt.len() < argon2::MIN_SALT_LEN {
            return Err(bad("the salt is shorter than 8 bytes"));
        }
        if hash.hash.is_none() {
            return Err(bad("no hash after the salt"));
        }
    }
    Ok(Inner::Argon2id(phc))
}

fn parse_sha_crypt(bits: ShaBits, s: &str) -> Result<Inner, StoredPasswordError> {
    let bad = |reason| malformed(bits.scheme(), reason);
    let rest = s.strip_prefix(bits.prefix()).ok_or_else(|| {
        bad(match bits {
            ShaBits::Sha256 => "it does not start with $5$",
            ShaBits::Sha512 => "it does not start with $6$",
        })
    })?;
    let (rounds, rest) = match rest.strip_prefix("rounds=") {
        Some(after) => {
            let end = after
                .find('$')
                .ok_or_else(|| bad("nothing after rounds="))?;
            let digits = &after[..end];
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("rounds= is not a number"));
            }
            let rounds: u32 = digits
                .parse()
                .map_err(|_| bad("rounds is out of range (1000 to 999999999)"))?;
            if !(SHA_CRYPT_MIN_ROUNDS..=SHA_CRYPT_MAX_ROUNDS).contains(&rounds) {
                return Err(bad("rounds is out of range (1000 to 999999999)"));
            }
            (rounds, &after[end + 1..])
        }
        None => (SHA_CRYPT_DEFAULT_ROUNDS, rest),
    };
    let (salt, digest) = rest
        .split_once('$')
        .ok_or_else(|| bad("no '$' between the salt and the hash"))?;
    if salt.len() > SHA_CRYPT_MAX_SALT {
        return Err(bad("the salt is longer than 16 characters"));
    }
    if salt.bytes().any(|b| b.is_ascii_control()) {
        return Err(bad("the salt holds a control character"));
    }
    if digest.len() != bits.encoded_len() {
        return Err(bad("the hash has the wrong length"));
    }
    if !digest.bytes().all(|b| CRYPT_B64.contains(&b)) {
        return Err(bad("the hash holds a character outside crypt's base64"));
    }
    // The last character carries 2 (SHA-512) or 4 (SHA-256) bits; a value above that can
    // never be produced, so the hash could never match.
    let last_limit = match bits {
        ShaBits::Sha512 => 4,
        ShaBits::Sha256 => 16,
    };
    let last_ok = digest
        .bytes()
        .last()
        .and_then(|b| CRYPT_B64.iter().position(|&c| c == b))
        .is_some_and(|v| v < last_limit);
    if !last_ok {
        return Err(bad("the hash is not canonical base64"));
    }
    Ok(Inner::ShaCrypt {
        bits,
        rounds,
        salt: salt.to_string(),
        digest: digest.to_string(),
    })
}

fn parse_bcrypt(s: &str) -> Result<Inner, StoredPasswordError> {
    let bad = |reason| malformed(Scheme::BlfCrypt, reason);
    let rest = ["$2y$", "$2b$", "$2a$"]
        .iter()
        .find_map(|p| s.strip_prefix(p))
        .ok_or_else(|| bad("it does not start with $2y$, $2b$ or $2a$"))?;
    // Checked first: the slicing below relies on one byte per character.
    if !rest.is_ascii() {
        return Err(bad("a character outside bcrypt's base64"));
    }
    // cc$ then 22 characters of salt and 31 of hash.
    if rest.len() != 2 + 1 + 22 + 31 {
        return Err(bad("wrong length"));
    }
    let (cost, tail) = rest.split_at(2);
    if !cost.bytes().all(|c| c.is_ascii_digit()) {
        return Err(bad("the cost is not two digits"));
    }
    let cost: u32 = cost
        .parse()
        .map_err(|_| bad("the cost is not two digits"))?;
    if !(4..=31).contains(&cost) {
        return Err(bad("the cost is outside 04 to 31"));
    }
    let Some(body) = tail.strip_prefix('$') else {
        return Err(bad("no '$' after the cost"));
    };
    let pos = |c: u8| BCRYPT_B64.iter().position(|&x| x == c);
    if !body.bytes().all(|c| pos(c).is_some()) {
        return Err(bad("a character outside bcrypt's base64"));
    }
    let (salt, hash) = body.split_at(22);
    // 22 characters carry 16 bytes and 31 carry 23: the unused low bits must be zero.
    let salt_ok = salt
        .bytes()
        .last()
        .and_then(pos)
        .is_some_and(|v| v % 16 == 0);
    let hash_ok = hash
        .bytes()
        .last()
        .and_then(pos)
        .is_some_and(|v| v % 4 == 0);
    if !salt_ok || !hash_ok {
        return Err(bad("not canonical base64"));
    }
    Ok(Inner::Bcrypt {
        full: s.to_string(),
        cost,
    })
}

/// Hashes `password` with `scheme` and returns the field to store, with its `{SCHEME}` prefix:
/// `{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$...`, `{SHA512-CRYPT}$6$...`,
/// `{SCRAM-SHA-256}4096,salt,StoredKey,ServerKey`, `{CRAM-MD5}<64 hex digits>`, `{PLAIN}secret`.
///
/// ARGON2ID uses the argon2 crate's default parameters, SHA-crypt glibc's default 5000 rounds,
/// BLF-CRYPT a cost of [`BCRYPT_DEFAULT_COST`], SCRAM-SHA-256 4096 iterations and a 16-byte
/// salt (Dovecot's defaults). Salts come from the operating system. SCRAM-SHA-256 refuses a
/// password that is not UTF-8 or holds a control character: SCRAM clients could never send it.
pub fn hash_password(scheme: Scheme, password: &[u8]) -> Result<String, AuthError> {
    if password.is_empty() {
        return Err(AuthError::BadPassword("is empty"));
    }
    let hash = match scheme {
        Scheme::Argon2id => argon2_hash(
            password,
            argon2::Version::default(),
            argon2::Params::default(),
        )?,
        Scheme::Sha512Crypt => sha_crypt_hash(ShaBits::Sha512, password, SHA_CRYPT_DEFAULT_ROUNDS)?,
        Scheme::Sha256Crypt => sha_crypt_hash(ShaBits::Sha256, password, SHA_CRYPT_DEFAULT_ROUNDS)?,
        Scheme::BlfCrypt => {
            if password.len() > BCRYPT_MAX_PASSWORD_LEN {
                return Err(AuthError::BadPassword(
                    "is longer than 72 bytes, which BLF-CRYPT would silently cut",
                ));
            }
            bcrypt_hash(password, BCRYPT_DEFAULT_COST)?
        }
        Scheme::ScramSha256 => {
            let text = std::str::from_utf8(password).map_err(|_| {
                AuthError::BadPassword("is not UTF-8, which SCRAM clients cannot send")
            })?;
            if text.chars().any(char::is_control) {
                return Err(AuthError::BadPassword(
                    "holds a control character, which SCRAM clients refuse (SASLprep)",
                ));
            }
            scram_hash(password, SCRAM_DEFAULT_ITERATIONS)?
        }
        Scheme::CramMd5 => CramMd5Context::from_secret(password).to_hex(),
        Scheme::Plain => {
            let text = std::str::from_utf8(password)
                .map_err(|_| AuthError::BadPassword("is not UTF-8, which PLAIN cannot store"))?;
            if text.contains(':') || text.chars().any(char::is_control) {
                return Err(AuthError::BadPassword(
                    "holds ':' or a control character, which PLAIN cannot store",
                ));
            }
            text.to_string()
        }
    };
    Ok(format!("{{{scheme}}}{hash}"))
}

thread_local! {
    /// Argon2's working memory (its memory cost, 19 MiB by default), kept by each thread that
    /// checks passwords and reused: allocating and freeing it at every login leaves the
    /// allocator holding freed blocks per thread, gigabytes under a login flood.
    static ARGON2_MEMORY: std::cell::RefCell<Vec<argon2::Block>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Check `password` against an Argon2id PHC hash, in this thread's reused working memory.
fn argon2_verify(password: &[u8], hash: &PasswordHash<'_>) -> bool {
    let (Some(expected), Some(salt)) = (hash.hash, hash.salt) else {
        return false;
    };
    let Ok(params) = argon2::Params::try_from(hash) else {
        return false;
    };
    let version = hash
        .version
        .and_then(|v| argon2::Version::try_from(v).ok())
        .unwrap_or_default();
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let blocks = params.block_count();
    let hasher = Argon2::new(argon2::Algorithm::Argon2id, version, params);
    let mut out = vec![0u8; expected.len()];
    let computed = ARGON2_MEMORY.with(|memory| {
        let mut memory = memory.borrow_mut();
        if memory.len() < blocks {
            memory.resize(blocks, argon2::Block::default());
        }
        let blocks = memory.get_mut(..blocks).unwrap_or_default();
        hasher
            .hash_password_into_with_memory(password, salt, &mut out, blocks)
            .is_ok()
    });
    computed && bool::from(out.as_slice().ct_eq(expected.as_bytes()))
}

fn argon2_hash(
    password: &[u8],
    version: argon2::Version,
    params: argon2::Params,
) -> Result<String, AuthError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt)?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Hash(e.to_string()))?;
    let hasher = Argon2::new(argon2::Algorithm::Argon2id, version, params);
    let hash: PasswordHash<'_> = hasher
        .hash_password(password, &salt)
        .map_err(|e| AuthError::Hash(e.to_string()))?;
    Ok(hash.to_string())
}

fn scram_hash(password: &[u8], iterations: u32) -> Result<String, AuthError> {
    let mut salt = [0u8; SCRAM_SALT_LEN];
    getrandom::fill(&mut salt)?;
    Ok(format_stored(&ScramKeys::derive(
        password, &salt, iterations,
    )))
}

fn bcrypt_hash(password: &[u8], cost: u32) -> Result<String, AuthError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt)?;
    let parts =
        bcrypt::hash_with_salt(password, cost, salt).map_err(|e| AuthError::Hash(e.to_string()))?;
    Ok(parts.format_for_version(bcrypt::Version::TwoY))
}

fn sha_crypt_hash(bits: ShaBits, password: &[u8], rounds: u32) -> Result<String, AuthError> {
    let mut raw = [0u8; SHA_CRYPT_MAX_SALT];
    getrandom::fill(&mut raw)?;
    // 256 is a multiple of 64: masking keeps every character equally likely.
    let salt: String = raw
        .iter()
        .map(|&b| char::from(CRYPT_B64[usize::from(b & 0x3f)]))
        .collect();
    let digest = sha_crypt_digest(bits, password, salt.as_bytes(), rounds)
        .ok_or_else(|| AuthError::Hash("SHA-crypt rounds out of range".to_string()))?;
    let mut out = String::from(bits.prefix());
    if rounds != SHA_CRYPT_DEFAULT_ROUNDS {
        out.push_str(&format!("rounds={rounds}$"));
    }
    out.push_str(&salt);
    out.push('$');
    out.push_str(&digest);
    Ok(out)
}

/// The encoded digest part of a SHA-crypt string (sha-crypt's own crypt(3) base64, with the
/// byte order of Drepper's specification); `None` if the rounds are out of range.
fn sha_crypt_digest(bits: ShaBits, password: &[u8], salt: &[u8], rounds: u32) -> Option<String> {
    let rounds = usize::try_from(rounds).ok()?;
    match bits {
        ShaBits::Sha512 => {
            let params = sha_crypt::Sha512Params::new(rounds).ok()?;
            sha_crypt::sha512_crypt_b64(password, salt, &params).ok()
        }
        ShaBits::Sha256 => {
            let params = sha_crypt::Sha256Params::new(rounds).ok()?;
            sha_crypt::sha256_crypt_b64(password, salt, &params).ok()
        }
    }
}

/// 32 random lowercase hex digits.
pub(crate) fn random_token() -> Result<String, AuthError> {
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw)?;
    Ok(hex(&raw))
}

/// The APOP digest (RFC 1939 section 7): MD5 of the greeting's timestamp followed by the
/// shared secret, as 32 lowercase hex digits.
pub(crate) fn apop_digest(timestamp: &str, secret: &[u8]) -> String {
    let mut md5 = Md5::new();
    md5.update(timestamp.as_bytes());
    md5.update(secret);
    hex(&md5.finalize())
}

/// Compares the client's APOP digest with ours in constant time. Hex digits in upper case are
/// accepted too: the case carries no secret.
pub(crate) fn apop_digest_matches(ours: &str, theirs: &str) -> bool {
    let theirs = theirs.to_ascii_lowercase();
    ours.as_bytes().ct_eq(theirs.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::Scheme as S;

    #[test]
    fn which_schemes_serve_which_methods() {
        let serving =
            |method: &str| -> Vec<S> { S::ALL.into_iter().filter(|s| s.serves(method)).collect() };
        assert_eq!(serving("CRAM-MD5"), [S::CramMd5, S::Plain]);
        assert_eq!(serving("SCRAM-SHA-256"), [S::ScramSha256, S::Plain]);
        assert_eq!(serving("APOP"), [S::Plain]);
        for method in ["PLAIN", "LOGIN", "EXTERNAL", "USER"] {
            assert_eq!(serving(method), S::ALL, "{method}");
        }
    }

    use super::*;
    use base64::Engine as _;

    // Produced here by OpenSSL 3.0 (`openssl passwd -6 -salt saltsalt secret`, and `-5`).
    const OPENSSL_SHA512: &str =
        "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";
    const OPENSSL_SHA256: &str = "$5$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5sA";
    // `openssl passwd -6 -salt 'rounds=10000$abcdefgh' hunter2`
    const OPENSSL_SHA512_ROUNDS: &str =
        "$6$rounds=10000$abcdefgh$brbjC3eR3VR4QHUzrJ.wQKa3.4DuASSh0IxggZDj0yfjhSoFhbQnX5JCqKvhV3KaHUoQwb96AkJNH8e.gTH2.0";
    // The system's crypt(3) (libxcrypt, through Python's crypt module):
    // crypt('secret', '$6$rounds=1000$saltsalt')
    const LIBC_SHA512_1000: &str =
        "$6$rounds=1000$saltsalt$LAV5VE5Y7w1d73x1mFNspYWUpazfmwv2SoepNXNKJ/otop/Zok96Hr8Q13LEv0DRY/x8v0/crpIjl8NJSAqXV/";
    // crypt('päss' as UTF-8, '$5$rounds=1500$0123456789abcdefXYZ'): the salt was cut to 16.
    const LIBC_SHA256_1500: &str =
        "$5$rounds=1500$0123456789abcdef$X82koQ2I9PTuW/l22hSCYi5WejAydp2i2kgUyod3IC7";
    // crypt('secret', '$2b$05$abcdefghijklmnopqrstuu') and the same with $2y$.
    const LIBC_BCRYPT_2B: &str = "$2b$05$abcdefghijklmnopqrstuuOQiyCxlgf/oeuTqixKmWdcYUh4Hjl0a";
    const LIBC_BCRYPT_2Y: &str = "$2y$05$abcdefghijklmnopqrstuuOQiyCxlgf/oeuTqixKmWdcYUh4Hjl0a";
    // The Argon2 reference implementation's own test vector (phc-winner-argon2, src/test.c):
    // password "password", salt "somesalt", m=256 KiB, t=2, p=1.
    const REFERENCE_ARGON2ID: &str =
        "$argon2id$v=19$m=256,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4";

    fn stored(field: &str) -> StoredPassword {
        StoredPassword::parse(field).unwrap()
    }

    #[test]
    fn scheme_names_are_case_insensitive_and_round_trip() {
        for scheme in Scheme::ALL {
            assert_eq!(scheme.to_string().parse::<Scheme>(), Ok(scheme));
            assert_eq!(
                scheme.to_string().to_ascii_lowercase().parse::<Scheme>(),
                Ok(scheme)
            );
        }
        assert_eq!("Sha512-Crypt".parse::<Scheme>(), Ok(Scheme::Sha512Crypt));
        assert_eq!("cleartext".parse::<Scheme>(), Ok(Scheme::Plain));
        assert!("MD5-CRYPT".parse::<Scheme>().is_err());
        assert_eq!("cram-md5".parse::<Scheme>(), Ok(Scheme::CramMd5));
        assert_eq!("Scram-Sha-256".parse::<Scheme>(), Ok(Scheme::ScramSha256));
        assert!("SCRAM-SHA-1".parse::<Scheme>().is_err());
        assert!("SCRAM-SHA-256-PLUS".parse::<Scheme>().is_err());
        assert!("".parse::<Scheme>().is_err());
        assert_eq!(Scheme::default(), Scheme::Argon2id);
    }

    #[test]
    fn unknown_scheme_name_is_echoed_only_when_it_looks_like_one() {
        let e = "SSHA".parse::<Scheme>().unwrap_err();
        assert!(e.to_string().contains("\"SSHA\""));
        let e = "hunter2 secret!".parse::<Scheme>().unwrap_err();
        assert!(!e.to_string().contains("hunter2"));
    }

    #[test]
    fn openssl_sha_crypt_vectors() {
        for (field, password) in [
            (OPENSSL_SHA512, "secret"),
            (OPENSSL_SHA256, "secret"),
            (OPENSSL_SHA512_ROUNDS, "hunter2"),
        ] {
            let s = stored(field);
            assert!(s.verify(password.as_bytes()), "{field}");
            assert!(!s.verify(b"Secret"), "{field}");
            assert!(!s.verify(b""), "{field}");
        }
        assert_eq!(stored(OPENSSL_SHA512).scheme(), Scheme::Sha512Crypt);
        assert_eq!(stored(OPENSSL_SHA256).scheme(), Scheme::Sha256Crypt);
    }

    #[test]
    fn libc_crypt_vectors() {
        assert!(stored(LIBC_SHA512_1000).verify(b"secret"));
        assert!(!stored(LIBC_SHA512_1000).verify(b"secret "));
        assert!(stored(LIBC_SHA256_1500).verify("päss".as_bytes()));
        assert!(!stored(LIBC_SHA256_1500).verify(b"pass"));
        for field in [LIBC_BCRYPT_2B, LIBC_BCRYPT_2Y] {
            let s = stored(&format!("{{BLF-CRYPT}}{field}"));
            assert_eq!(s.scheme(), Scheme::BlfCrypt);
            assert!(s.verify(b"secret"));
            assert!(!s.verify(b"secreT"));
        }
    }

    #[test]
    fn argon2_reference_vector() {
        let s = stored(&format!("{{ARGON2ID}}{REFERENCE_ARGON2ID}"));
        assert!(s.verify(b"password"));
        assert!(!s.verify(b"passwore"));
        assert_eq!(
            s.cost_key(),
            CostKey::Argon2id {
                m: 256,
                t: 2,
                p: 1,
                version: 0x13,
                output_len: 32
            }
        );
    }

    #[test]
    fn plain_verifies_exact_bytes() {
        let s = stored("{PLAIN}tanstaaf");
        assert!(s.verify(b"tanstaaf"));
        assert!(!s.verify(b"tanstaa"));
        assert!(!s.verify(b"tanstaaff"));
        assert!(!s.verify(b"TANSTAAF"));
        assert_eq!(s.apop_secret(), Some(&b"tanstaaf"[..]));
        assert_eq!(stored(OPENSSL_SHA256).apop_secret(), None);
    }

    #[test]
    fn hash_password_round_trips_for_every_scheme() {
        let password = "correct horse ☃".as_bytes();
        for scheme in Scheme::ALL {
            let field = hash_password(scheme, password).unwrap();
            let prefix = format!("{{{scheme}}}");
            assert!(field.starts_with(&prefix), "{field}");
            let s = stored(&field);
            assert_eq!(s.scheme(), scheme);
            assert!(s.verify(password), "{scheme}");
            assert!(!s.verify(b"correct horse"), "{scheme}");
        }
        let argon = hash_password(Scheme::Argon2id, b"x").unwrap();
        assert!(
            argon.starts_with("{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$"),
            "{argon}"
        );
        assert!(hash_password(Scheme::Sha512Crypt, b"x")
            .unwrap()
            .starts_with("{SHA512-CRYPT}$6$"));
        assert!(hash_password(Scheme::Sha256Crypt, b"x")
            .unwrap()
            .starts_with("{SHA256-CRYPT}$5$"));
        assert!(hash_password(Scheme::BlfCrypt, b"x")
            .unwrap()
            .starts_with("{BLF-CRYPT}$2y$12$"));
        assert_eq!(hash_password(Scheme::Plain, b"x").unwrap(), "{PLAIN}x");
        let scram = hash_password(Scheme::ScramSha256, b"x").unwrap();
        let fields: Vec<&str> = scram
            .strip_prefix("{SCRAM-SHA-256}4096,")
            .unwrap()
            .split(',')
            .collect();
        assert_eq!(fields.len(), 3, "{scram}");
        assert_eq!(fields[0].len(), 24, "a 16-byte salt: {scram}");
        assert_eq!(
            hash_password(Scheme::CramMd5, b"password").unwrap(),
            "{CRAM-MD5}9186d855e11eba527a7a52ca82b313e180d62234f0acc9051b527243d41e2740"
        );
    }

    #[test]
    fn dovecot_scram_and_cram_md5_hashes_verify() {
        // RFC 7677's example user, stored as Dovecot stores SCRAM-SHA-256 keys.
        let salt = base64::engine::general_purpose::STANDARD
            .decode("W22ZaJ0SNY7soEsUEjb6gQ==")
            .unwrap();
        let field = format!(
            "{{SCRAM-SHA-256}}{}",
            format_stored(&ScramKeys::derive(b"pencil", &salt, 4096))
        );
        let s = stored(&field);
        assert_eq!(s.scheme(), Scheme::ScramSha256);
        assert!(s.verify(b"pencil"));
        assert!(!s.verify(b"Pencil"));
        assert_eq!(s.cost_key(), CostKey::Scram { iterations: 4096 });
        assert!(s.scram_source().is_some());
        assert!(s.cram_md5_context().is_none());
        assert_eq!(s.apop_secret(), None);

        let s =
            stored("{CRAM-MD5}9186d855e11eba527a7a52ca82b313e180d62234f0acc9051b527243d41e2740");
        assert_eq!(s.scheme(), Scheme::CramMd5);
        assert!(s.verify(b"password"));
        assert!(!s.verify(b"passwor"));
        assert!(s.scram_source().is_none());
        assert!(s.cram_md5_context().is_some());
        assert_eq!(s.apop_secret(), None);

        let s = stored("{PLAIN}pencil");
        assert!(matches!(
            s.scram_source(),
            Some(ScramSource::Plain(b"pencil"))
        ));
        assert!(s.cram_md5_context().is_some());
        assert!(stored(OPENSSL_SHA256).scram_source().is_none());
        assert!(stored(OPENSSL_SHA256).cram_md5_context().is_none());
    }

    #[test]
    fn new_hashes_use_fresh_salts() {
        let a = hash_password(Scheme::Sha256Crypt, b"same").unwrap();
        let b = hash_password(Scheme::Sha256Crypt, b"same").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn hash_password_refuses_what_cannot_be_stored() {
        assert!(hash_password(Scheme::Argon2id, b"").is_err());
        assert!(hash_password(Scheme::Plain, b"a:b").is_err());
        assert!(hash_password(Scheme::Plain, b"a\nb").is_err());
        assert!(hash_password(Scheme::Plain, b"\xff").is_err());
        assert!(hash_password(Scheme::BlfCrypt, &[b'a'; 73]).is_err());
        assert!(hash_password(Scheme::BlfCrypt, &[b'a'; 72]).is_ok());
        assert!(hash_password(Scheme::ScramSha256, b"\xff").is_err());
        assert!(hash_password(Scheme::ScramSha256, b"a\tb").is_err());
        assert!(hash_password(Scheme::ScramSha256, "a\u{85}b".as_bytes()).is_err());
        assert!(hash_password(Scheme::ScramSha256, b"").is_err());
        assert!(hash_password(Scheme::ScramSha256, "päss wörd".as_bytes()).is_ok());
        let field = hash_password(Scheme::CramMd5, b"a:b\n\xff").unwrap();
        assert!(stored(&field).verify(b"a:b\n\xff"));
        // Other schemes store any bytes.
        let field = hash_password(Scheme::Sha512Crypt, b"a:b\n\xff").unwrap();
        assert!(stored(&field).verify(b"a:b\n\xff"));
    }

    #[test]
    fn bare_crypt_strings_infer_their_scheme() {
        assert_eq!(stored(OPENSSL_SHA512).scheme(), Scheme::Sha512Crypt);
        assert_eq!(stored(OPENSSL_SHA256).scheme(), Scheme::Sha256Crypt);
        assert_eq!(stored(LIBC_BCRYPT_2B).scheme(), Scheme::BlfCrypt);
        assert_eq!(stored(LIBC_BCRYPT_2Y).scheme(), Scheme::BlfCrypt);
        assert_eq!(stored(REFERENCE_ARGON2ID).scheme(), Scheme::Argon2id);
        for field in [
            "secret",
            "$1$saltsalt$abcdefghijklmnopqrstuv",
            "$2a$05$abcdefghijklmnopqrstuuOQiyCxlgf/oeuTqixKmWdcYUh4Hjl0a",
            "$argon2i$v=19$m=256,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4",
        ] {
            assert_eq!(
                StoredPassword::parse(field).unwrap_err(),
                StoredPasswordError::NoScheme,
                "{field}"
            );
        }
        // $2a$ is accepted with an explicit prefix.
        assert!(StoredPassword::parse(
            "{BLF-CRYPT}$2a$05$abcdefghijklmnopqrstuuOQiyCxlgf/oeuTqixKmWdcYUh4Hjl0a"
        )
        .is_ok());
    }

    #[test]
    fn malformed_hashes_are_refused() {
        let sha512_digest = OPENSSL_SHA512.rsplit('$').next().unwrap();
        let cases = [
            "".to_string(),
            "{".to_string(),
            "{SHA512-CRYPT".to_string(),
            "{NOPE}x".to_string(),
            "{PLAIN}".to_string(),
            "{SHA512-CRYPT}".to_string(),
            format!("{{SHA512-CRYPT}}{OPENSSL_SHA256}"),
            format!("{{SHA256-CRYPT}}{OPENSSL_SHA512}"),
            format!("{OPENSSL_SHA512}x"),
            OPENSSL_SHA512[..OPENSSL_SHA512.len() - 1].to_string(),
            format!("{OPENSSL_SHA512}$"),
            format!("$6$rounds=999$saltsalt${sha512_digest}"),
            format!("$6$rounds=1000000000$saltsalt${sha512_digest}"),
            format!("$6$rounds=99999999999999999999$saltsalt${sha512_digest}"),
            format!("$6$rounds=+5000$saltsalt${sha512_digest}"),
            format!("$6$rounds=$saltsalt${sha512_digest}"),
            format!("$6$0123456789abcdefg${sha512_digest}"),
            format!("$6$saltsalt${}", sha512_digest.replace('T', "!")),
            // the last character of a SHA-512 digest carries 2 bits only
            format!("$6$saltsalt${}z", &sha512_digest[..85]),
            "$6$saltsalt".to_string(),
            "$2y$03$abcdefghijklmnopqrstuuOQiyCxlgf/oeuTqixKmWdcYUh4Hjl0a".to_string(),
            "$2y$32$abcdefghijklmnopqrstuuOQiyCxlgf/oeuTqixKmWdcYUh4Hjl0a".to_string(),
            "$2y$5$$abcdefghijklmnopqrstuuOQiyCxlgf/oeuTqixKmWdcYUh4Hjl0a".to_string(),
            "$2y$05$abcdefghijklmnopqrstuuOQiyCxlgf/oeuTqixKmWdcYUh4Hjl0".to_string(),
            "$2y$05$abcdefghijklmnopqrstuvOQiyCxlgf/oeuTqixKmWdcYUh4Hjl0a".to_string(),
            "$2y$05$abcdefghijklmnopqrstuuOQiyCxlgf/oeuTqixKmWdcYUh4Hjl0b".to_string(),
            "$2y$05$abcdefghijklmnopqrstuuOQiyCxlgf/oeuTqixKmWdcYUh4Hjl+a".to_string(),
            "$2y$05x$bcdefghijklmnopqrstuuOQiyCxlgf/oeuTqixKmWdcYUh4Hjl0a".to_string(),
            "{ARGON2ID}$argon2id$v=19$m=256,t=2,p=1$c29tZXNhbHQ".to_string(),
            "{ARGON2ID}$argon2id$v=18$m=256,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4".to_string(),
            "{ARGON2ID}$argon2id$v=19$m=256,t=0,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4".to_string(),
            "{ARGON2ID}$argon2id$v=19$m=256,t=2,p=1,x=3$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4".to_string(),
            "{ARGON2ID}$argon2id$v=19$m=2097152,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4".to_string(),
            "{ARGON2ID}$argon2id$v=19$m=256,t=2,p=1$c29tZQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4".to_string(),
            "{ARGON2ID}$argon2i$v=19$m=256,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4".to_string(),
            "{ARGON2ID}garbage".to_string(),
            // Multi-byte characters where the parser slices.
            "$2y$1é$abcdefghijklmnopqrstuuOQiyCxlgf/oeuTqixKmWdcYUh4Hjl0".to_string(),
            "$2y$05$abcdefghijklmnopqrstuéOQiyCxlgf/oeuTqixKmWdcYUh4Hjl0".to_string(),
            format!("$6$rounds=1é$saltsalt${sha512_digest}"),
            format!("{{SHA512-CRYPT}}$6$saltsalt${}é", &sha512_digest[..84]),
            "{é}x".to_string(),
            "{PLAIN".to_string(),
            "{CRAM-MD5}".to_string(),
            "{CRAM-MD5}9186d855e11eba527a7a52ca82b313e180d62234f0acc9051b527243d41e274".to_string(),
            "{CRAM-MD5}9186d855e11eba527a7a52ca82b313e180d62234f0acc9051b527243d41e2740a".to_string(),
            "{SCRAM-SHA-256}".to_string(),
            "{SCRAM-SHA-256}4096".to_string(),
            "{SCRAM-SHA-256}1000,W22ZaJ0SNY7soEsUEjb6gQ==,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_string(),
            "{SCRAM-SHA-256}4096,W22ZaJ0SNY7soEsUEjb6gQ==,AAAA,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_string(),
        ];
        for case in &cases {
            assert!(StoredPassword::parse(case).is_err(), "accepted {case:?}");
        }
    }

    #[test]
    fn errors_never_quote_the_hash() {
        let digest = OPENSSL_SHA512.rsplit('$').next().unwrap();
        let e = StoredPassword::parse(&format!("{{SHA256-CRYPT}}{OPENSSL_SHA512}")).unwrap_err();
        assert!(!e.to_string().contains(digest));
        assert!(!e.to_string().contains("saltsalt"));
    }

    #[test]
    fn debug_shows_the_scheme_only() {
        for field in [
            "{PLAIN}tanstaaf".to_string(),
            "{CRAM-MD5}abcdef0123456789aa7a52ca82b313e180d62234f0acc9051b527243d41e2740".to_string(),
            "{SCRAM-SHA-256}4096,abcdefghNY7soEsUEjb6gQ==,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_string(),
            OPENSSL_SHA512.to_string(),
            LIBC_BCRYPT_2Y.to_string(),
            REFERENCE_ARGON2ID.to_string(),
        ] {
            let debug = format!("{:?}", stored(&field));
            assert!(!debug.contains("tanstaaf"), "{debug}");
            assert!(!debug.contains("saltsalt"), "{debug}");
            assert!(!debug.contains("abcdefgh"), "{debug}");
            assert!(!debug.contains("c29tZXNhbHQ"), "{debug}");
            assert!(!debug.contains("abcdef0123"), "{debug}");
            assert!(debug.contains("scheme"), "{debug}");
        }
    }

    #[test]
    fn dummy_has_the_same_cost_as_its_model() {
        for field in [
            "{PLAIN}x",
            LIBC_SHA512_1000,
            LIBC_SHA256_1500,
            LIBC_BCRYPT_2Y,
            REFERENCE_ARGON2ID,
            "{CRAM-MD5}9186d855e11eba527a7a52ca82b313e180d62234f0acc9051b527243d41e2740",
            "{SCRAM-SHA-256}5000,W22ZaJ0SNY7soEsUEjb6gQ==,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ] {
            let model = stored(field);
            let dummy = StoredPassword::dummy(model.cost_key()).unwrap();
            assert_eq!(dummy.cost_key(), model.cost_key(), "{field}");
            assert_eq!(dummy.scheme(), model.scheme(), "{field}");
            assert!(!dummy.verify(b"x"));
        }
        let default = StoredPassword::dummy(CostKey::default()).unwrap();
        assert_eq!(
            default.cost_key(),
            stored(&hash_password(Scheme::Argon2id, b"x").unwrap()).cost_key()
        );
    }

    #[test]
    fn apop_rfc1939_example() {
        let digest = apop_digest("<1896.697170952@dbc.mtview.ca.us>", b"tanstaaf");
        assert_eq!(digest, "c4c9334bac560ecc979e58001b3e22fb");
        assert!(apop_digest_matches(
            &digest,
            "c4c9334bac560ecc979e58001b3e22fb"
        ));
        assert!(apop_digest_matches(
            &digest,
            "C4C9334BAC560ECC979E58001B3E22FB"
        ));
        assert!(!apop_digest_matches(
            &digest,
            "c4c9334bac560ecc979e58001b3e22fc"
        ));
        assert!(!apop_digest_matches(
            &digest,
            "c4c9334bac560ecc979e58001b3e22f"
        ));
        assert!(!apop_digest_matches(&digest, ""));
    }
}
