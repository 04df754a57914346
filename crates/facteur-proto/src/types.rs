//! Value types that cannot hold an invalid POP3 value: a message number is never 0, a
//! unique-id is 1 to 70 octets of 0x21..=0x7E, and a secret never shows in Debug output; and
//! the one strict decimal parser that every number from a peer or a file goes through.

use std::fmt;
use std::num::NonZeroU32;
use zeroize::Zeroize;

/// A message number as the client sends it: 1-based, never 0 (RFC 1939 section 4).
///
/// Whether it names an existing, undeleted message is for the session to decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsgNum(NonZeroU32);

impl MsgNum {
    /// `None` for 0.
    pub fn new(n: u32) -> Option<Self> {
        NonZeroU32::new(n).map(Self)
    }

    /// The number as the client wrote it (1-based).
    pub fn get(self) -> u32 {
        self.0.get()
    }

    /// The 0-based position in the maildrop listing.
    pub fn index(self) -> usize {
        // u32 always fits in usize on the 32- and 64-bit targets facteur supports.
        (self.0.get() - 1) as usize
    }

    /// The message number of a 0-based listing position, if it fits in 32 bits.
    pub fn from_index(index: usize) -> Option<Self> {
        u32::try_from(index)
            .ok()
            .and_then(|i| i.checked_add(1))
            .and_then(Self::new)
    }
}

impl fmt::Display for MsgNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A unique-id (RFC 1939 section 7, UIDL): 1 to 70 octets, each in 0x21..=0x7E.
///
/// Stored inline (no heap allocation): a snapshot of 100,000 messages is one allocation, and
/// copying it is a memory copy.
#[derive(Clone)]
pub struct Uidl {
    len: u8,
    bytes: [u8; UIDL_MAX_LEN],
}

/// The longest unique-id RFC 1939 allows.
pub const UIDL_MAX_LEN: usize = 70;

impl Uidl {
    /// `None` unless `s` is a valid unique-id.
    pub fn new(s: impl AsRef<str>) -> Option<Self> {
        Self::from_bytes(s.as_ref().as_bytes())
    }

    /// `None` unless `b` is a valid unique-id.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if !Self::is_valid(b) {
            return None;
        }
        let mut bytes = [0u8; UIDL_MAX_LEN];
        bytes.get_mut(..b.len())?.copy_from_slice(b);
        Some(Self {
            len: u8::try_from(b.len()).ok()?,
            bytes,
        })
    }

    /// True if `b` may be sent as a unique-id as it is.
    pub fn is_valid(b: &[u8]) -> bool {
        !b.is_empty() && b.len() <= UIDL_MAX_LEN && b.iter().all(|&c| (0x21..=0x7e).contains(&c))
    }

    /// The octets of the unique-id (all printable ASCII).
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or(&[])
    }

    pub fn as_str(&self) -> &str {
        // Always valid: only printable ASCII gets in.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

impl PartialEq for Uidl {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Uidl {}

impl PartialOrd for Uidl {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Uidl {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl std::hash::Hash for Uidl {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for Uidl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uidl({})", self.as_str())
    }
}

impl fmt::Display for Uidl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value that must never be logged: its `Debug` prints `<redacted>`, and it is wiped
/// ([`zeroize::Zeroize`]) when dropped, so that a password does not stay in freed memory.
/// (Copies the holder makes, as `expose().clone()` does, are its own to wipe.)
///
/// No `PartialEq`: comparing secrets with `==` stops at the first octet that differs, and the time
/// it takes tells an attacker how much of a guess was right. Compare the exposed values in
/// constant time (`subtle::ConstantTimeEq`) instead; tests compare `.expose()` explicitly.
///
/// ```compile_fail
/// let guess = facteur_proto::Secret::new(b"hunter2".to_vec());
/// let _ = guess == facteur_proto::Secret::new(b"hunter3".to_vec());
/// ```
#[derive(Clone)]
pub struct Secret<T: Zeroize>(T);

impl<T: Zeroize> Drop for Secret<T> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl<T: Zeroize> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret itself; call only where it is used, never to print it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

/// Constant time for secrets of the same length (the length itself may show).
impl<T: AsRef<[u8]> + Zeroize> subtle::ConstantTimeEq for Secret<T> {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        self.0.as_ref().ct_eq(other.0.as_ref())
    }
}

/// `a` and `b` hold the same secret (or both none), compared in constant time: for the
/// `PartialEq` of the commands and events that carry secrets.
pub(crate) fn same_secret<T: AsRef<[u8]> + Zeroize>(
    a: Option<&Secret<T>>,
    b: Option<&Secret<T>>,
) -> bool {
    use subtle::ConstantTimeEq;
    match (a, b) {
        (Some(a), Some(b)) => a.ct_eq(b).into(),
        (None, None) => true,
        _ => false,
    }
}

impl<T: Zeroize> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// What the session knows of one message of the maildrop snapshot taken at login.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageMeta {
    /// The exact number of octets RETR sends before dot-stuffing (LF counted as CRLF).
    pub size: u64,
    /// The message's unique-id, stable across sessions.
    pub uid: Uidl,
}

/// Strict decimal: ASCII digits only (at least one), no sign, no space, no wrap; `None` on
/// overflow. `LIST 4294967297` must be an error, never message 1 (popa3d's rule), and the same
/// holds for a size in a LIST line, a `,W=` field of a file name or a count in an index.
pub fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msgnum_is_never_zero() {
        assert!(MsgNum::new(0).is_none());
        assert_eq!(MsgNum::new(1).map(MsgNum::index), Some(0));
        assert_eq!(MsgNum::from_index(0).map(MsgNum::get), Some(1));
        assert!(MsgNum::from_index(u32::MAX as usize).is_none());
    }

    #[test]
    fn uidl_bounds() {
        assert!(Uidl::new("").is_none());
        assert!(Uidl::new("a b").is_none());
        assert!(Uidl::new("x".repeat(70)).is_some());
        assert!(Uidl::new("x".repeat(71)).is_none());
        assert!(Uidl::new("é").is_none());
        assert!(Uidl::new("!~").is_some());
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::new("hunter2".to_string());
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn a_dropped_secret_is_wiped() {
        use std::cell::Cell;
        use std::rc::Rc;
        struct Probe(Rc<Cell<bool>>);
        impl Zeroize for Probe {
            fn zeroize(&mut self) {
                self.0.set(true);
            }
        }
        let wiped = Rc::new(Cell::new(false));
        let secret = Secret::new(Probe(wiped.clone()));
        assert!(!wiped.get());
        drop(secret);
        assert!(wiped.get());
    }

    #[test]
    fn secrets_compare_by_value() {
        let a = Secret::new(b"hunter2".to_vec());
        assert!(same_secret(
            Some(&a),
            Some(&Secret::new(b"hunter2".to_vec()))
        ));
        assert!(!same_secret(
            Some(&a),
            Some(&Secret::new(b"hunter3".to_vec()))
        ));
        assert!(!same_secret(
            Some(&a),
            Some(&Secret::new(b"hunter".to_vec()))
        ));
        assert!(!same_secret(Some(&a), None));
        assert!(same_secret::<Vec<u8>>(None, None));
    }
}
