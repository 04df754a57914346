//! Small text encodings that several parts of facteur write and read: lowercase hex (digests,
//! tokens, keys).
//!
//! One copy of each, so that a writer and its reader can never disagree. The decoders are strict
//! (exactly two hex digits an octet, no sign, no space): what they read may come from a file someone else
//! can edit, and a lenient decoder would give two spellings to one value.

/// Lowercase hex, two digits an octet.
pub(crate) fn hex(bytes: &[u8]) -> String {
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
pub(crate) fn decode_hex<const N: usize>(hex: &str) -> Option<[u8; N]> {
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
}
