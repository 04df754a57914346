//! Small text encodings that several parts of facteur write and read: lowercase hex (digests,
//! tokens, keys) and `%XX` escapes (the maildrop index, state keys, journal words, URLs).
//!
//! One copy of each, so that a writer and its reader can never disagree. The decoders are strict
//! (exactly two hex digits an octet, either case, no sign, no space): what they read may come
//! from a file someone else can edit.

/// Lowercase hex, two digits an octet.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// The value of one hex digit (either case).
fn hex_digit(c: u8) -> Option<u8> {
    char::from(c)
        .to_digit(16)
        .and_then(|v| u8::try_from(v).ok())
}

/// Exactly `2 * N` hex digits (either case) to `N` octets; `None` for anything else.
pub fn decode_hex<const N: usize>(hex: &str) -> Option<[u8; N]> {
    let digits = hex.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *o = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?; // ok: chunks of 2
    }
    Some(out)
}

/// `%XX`, uppercase.
fn escaped(b: u8) -> [u8; 3] {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    [
        b'%',
        DIGITS[usize::from(b >> 4)],
        DIGITS[usize::from(b & 0x0f)],
    ]
}

/// Appends `bytes` to `out` with `%XX` for every octet that `keep` refuses, and for `%`.
pub fn percent_encode_into(out: &mut Vec<u8>, bytes: &[u8], keep: impl Fn(u8) -> bool) {
    for &b in bytes {
        if keep(b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(&escaped(b));
        }
    }
}

/// `bytes` with `%XX` for every octet that `keep` refuses, and for `%`. `keep` may accept
/// ASCII octets only (the others are escaped whatever it says, so that the result is text).
pub fn percent_encode(bytes: &[u8], keep: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii() && keep(b) && b != b'%' {
            out.push(char::from(b));
        } else {
            escaped(b).iter().for_each(|&c| out.push(char::from(c)));
        }
    }
    out
}

/// Decodes `%XX` escapes (either case); `None` for a broken escape.
pub fn percent_decode(escaped: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(escaped.len());
    let mut rest = escaped;
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let (&hi, tail) = tail.split_first()?;
            let (&lo, tail) = tail.split_first()?;
            out.push((hex_digit(hi)? << 4) | hex_digit(lo)?);
            rest = tail;
        } else {
            out.push(b);
            rest = tail;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_is_strict() {
        let raw = [0u8, 0x0f, 0xa0, 0xff];
        assert_eq!(hex(&raw), "000fa0ff");
        assert_eq!(decode_hex::<4>("000fa0ff"), Some(raw));
        assert_eq!(decode_hex::<4>("000FA0FF"), Some(raw));
        for bad in ["000fa0f", "000fa0ff0", "+00fa0ff", "000fa0fg", "000fa0é"] {
            assert_eq!(decode_hex::<4>(bad), None, "{bad}");
        }
    }

    #[test]
    fn percent_escapes_round_trip_and_are_strict() {
        let raw = b"a b%\xff/\xe9";
        let encoded = percent_encode(raw, |b| b.is_ascii_alphanumeric());
        assert_eq!(encoded, "a%20b%25%FF%2F%E9");
        let mut bytes = Vec::new();
        percent_encode_into(&mut bytes, raw, |b| b.is_ascii_alphanumeric());
        assert_eq!(bytes, encoded.as_bytes());
        assert_eq!(
            percent_decode(encoded.as_bytes()).as_deref(),
            Some(&raw[..])
        );
        assert_eq!(percent_decode(b"%2f").as_deref(), Some(&b"/"[..]));
        // Neither can keep '%', nor (as text) a non-ASCII octet.
        assert_eq!(percent_encode(b"%\xe9", |_| true), "%25%E9");
        for bad in [&b"%"[..], b"%2", b"%+1", b"%g0", "a%é".as_bytes()] {
            assert_eq!(percent_decode(bad), None, "{bad:?}");
        }
    }
}
