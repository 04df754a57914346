//! UTF-8 user names and passwords (RFC 6856 section 2): SASLprep (RFC 4013) before any
//! comparison, so that a name or password typed in one Unicode form matches the one stored in
//! another (an `é` typed as `e` and a combining accent matches a precomposed `é`).
//!
//! Every path that takes a user name or a password applies [`prepare`]: USER, PASS, APOP's
//! name, the SASL mechanisms' identities and passwords, and `facteur user add|passwd` before it
//! stores a user. ASCII strings are left exactly as they are: SASLprep leaves printable ASCII
//! unchanged anyway, and the names and passwords stored before this existed (an ASCII password
//! with a tab in it, say) must go on working. No I/O here.

use std::borrow::Cow;

/// Why a user name or password cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrepError {
    /// The octets are not UTF-8 (RFC 3629).
    #[error("not valid UTF-8")]
    InvalidUtf8,
    /// SASLprep refuses it: a prohibited or unassigned code point, bidirectional text against
    /// RFC 3454 section 6, or nothing left once mapped.
    #[error("a character SASLprep (RFC 4013) prohibits")]
    Prohibited,
}

/// A user name or password as it is compared and stored: unchanged when ASCII, else SASLprep
/// (RFC 4013: non-ASCII spaces to space, "mapped to nothing" removed, NFKC, prohibited output
/// and unassigned code points refused).
pub fn prepare(s: &str) -> Result<Cow<'_, str>, PrepError> {
    if s.is_ascii() {
        return Ok(Cow::Borrowed(s));
    }
    match stringprep::saslprep(s) {
        Ok(p) if p.is_empty() => Err(PrepError::Prohibited),
        Ok(p) => Ok(p),
        Err(_) => Err(PrepError::Prohibited),
    }
}

/// [`prepare`] for a password given as octets (PASS, SASL). `legacy_octets` keeps a password
/// that is not UTF-8 as it came, for the 8-bit passwords of clients that never said UTF8;
/// otherwise it is refused.
pub fn prepare_octets(b: &[u8], legacy_octets: bool) -> Result<Cow<'_, [u8]>, PrepError> {
    if b.is_ascii() {
        return Ok(Cow::Borrowed(b));
    }
    match std::str::from_utf8(b) {
        Ok(s) => Ok(match prepare(s)? {
            Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
            Cow::Owned(s) => Cow::Owned(s.into_bytes()),
        }),
        Err(_) if legacy_octets => Ok(Cow::Borrowed(b)),
        Err(_) => Err(PrepError::InvalidUtf8),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NFC: &str = "Jos\u{e9}"; // "José", é precomposed
    const NFD: &str = "Jose\u{301}"; // "José", e and a combining acute accent

    #[test]
    fn nfd_and_nfc_prepare_alike() {
        assert_ne!(NFC, NFD);
        assert_eq!(prepare(NFD).unwrap(), NFC);
        assert_eq!(prepare(NFC).unwrap(), NFC);
        assert_eq!(
            prepare_octets(NFD.as_bytes(), false).unwrap(),
            NFC.as_bytes()
        );
    }

    #[test]
    fn saslprep_mappings() {
        // A no-break space is a space; a soft hyphen is mapped to nothing; NFKC folds the
        // ligature and the full-width letters.
        assert_eq!(prepare("a\u{a0}b").unwrap(), "a b");
        assert_eq!(
            prepare("mot\u{ad}de\u{ad}passe\u{e9}").unwrap(),
            "motdepasse\u{e9}"
        );
        assert_eq!(prepare("\u{fb01}\u{ff21}").unwrap(), "fiA");
    }

    #[test]
    fn ascii_is_left_alone() {
        assert!(matches!(prepare("alice@example.org"), Ok(Cow::Borrowed(_))));
        assert!(matches!(
            prepare_octets(b"tab\there", false),
            Ok(Cow::Borrowed(b"tab\there"))
        ));
    }

    #[test]
    fn prohibited_code_points_are_refused() {
        for bad in [
            "\u{e000}x",        // private use (C.3)
            "a\u{200e}b\u{e9}", // left-to-right mark (C.8)
            "\u{fffe}\u{e9}",   // non-character (C.4)
            "\u{e9}\u{85}",     // a non-ASCII control character (C.2.2)
            "\u{ad}",           // mapped to nothing: empty
            "\u{5d0}a",         // RandALCat then LCat (RFC 3454 section 6)
            "\u{e9}\u{50000}",  // unassigned in Unicode 3.2
        ] {
            assert_eq!(prepare(bad), Err(PrepError::Prohibited), "{bad:?}");
        }
    }

    #[test]
    fn octets_that_are_not_utf8() {
        let latin1 = b"caf\xe9";
        assert_eq!(prepare_octets(latin1, false), Err(PrepError::InvalidUtf8));
        assert_eq!(prepare_octets(latin1, true).unwrap(), &latin1[..]);
        assert_eq!(
            prepare_octets("\u{e000}".as_bytes(), true),
            Err(PrepError::Prohibited)
        );
    }
}
