//! The server side of SCRAM-SHA-256 (RFC 5802, RFC 7677): parsing the client's two messages,
//! building ours, checking the proof.
//!
//! ```text
//! C: n,,n=user,r=<client nonce>                           client-first
//! S: r=<client nonce><server nonce>,s=<salt>,i=4096         server-first
//! C: c=biws,r=<both nonces>,p=<proof>                       client-final
//! S: v=<server signature>                                   server-final
//! ```
//!
//! Parsing is strict: attributes in the order of RFC 5802 section 7, the nonce of the
//! client-final equal to the one the server sent, `c=` the base64 of the very GS2 header of the
//! client-first, `m=` refused (section 5.1: its presence must fail the exchange), `=2C` and `=3D`
//! the only escapes in a name. Extensions after the nonce are accepted and ignored, as the
//! grammar allows.
//!
//! No channel binding: only SCRAM-SHA-256 is offered, never -PLUS. A GS2 flag of `n` (no
//! channel binding) or `y` (the client could bind but believes the server cannot) is accepted;
//! `p=` (the client asks for binding) is refused.
//!
//! SASLprep (RFC 4013) of the user and authorization names: a name holding a character that
//! SASLprep maps to something else or prohibits is refused ([`saslprep_prohibited`]: the client
//! should have prepared it), and a non-ASCII one is then normalized as every user name is
//! ([`crate::utf8::prepare`]: NFKC, so that a name sent in NFD finds the user stored in NFC). An
//! ASCII name, the usual case, is unchanged.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use subtle::ConstantTimeEq;

use super::scram_keys::{hmac_sha256, sha256, ScramCredentials, KEY_LEN};
use super::FailureReason;
use crate::text::Msg;

/// Why a SCRAM message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reject {
    /// It does not follow the grammar (or asks for what we do not do): `-ERR` with this text.
    Malformed(Msg),
    /// It parses but does not authenticate: the same answer as a wrong password; the reason is
    /// for the log.
    Failure(FailureReason),
}

/// What the server keeps of a client-first message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ClientFirst<'a> {
    /// `n,,`, `y,,` or `n,a=name,`, as sent: `c=` must carry it back.
    pub(super) gs2_header: &'a str,
    /// The message without the GS2 header: part of the AuthMessage.
    pub(super) bare: &'a str,
    /// The user name, unescaped.
    pub(super) user: String,
    /// The authorization identity, unescaped, if one was sent.
    pub(super) authzid: Option<String>,
    pub(super) client_nonce: &'a str,
}

/// The exchange after the server-first message was sent. Deliberately not `Debug`.
pub(super) struct Pending<A> {
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    /// Client nonce then server nonce.
    nonce: String,
    credentials: ScramCredentials<A>,
}

/// Parses a client-first message (RFC 5802 section 7, `client-first-message`).
pub(super) fn parse_client_first(msg: &str) -> Result<ClientFirst<'_>, Reject> {
    let malformed = Reject::Malformed;
    let (flag, rest) = msg
        .split_once(',')
        .ok_or(malformed(Msg::ScramNotClientFirst))?;
    match flag {
        "n" | "y" => {}
        _ if flag.starts_with("p=") => return Err(malformed(Msg::ScramNoChannelBinding)),
        _ => return Err(malformed(Msg::ScramGs2Flag)),
    }
    let (authz, bare) = rest
        .split_once(',')
        .ok_or(malformed(Msg::ScramNotClientFirst))?;
    let authzid = if authz.is_empty() {
        None
    } else {
        let name = authz
            .strip_prefix("a=")
            .ok_or(malformed(Msg::ScramGs2Header))?;
        Some(decode_saslname(name).map_err(malformed)?)
    };
    let gs2_header = msg
        .get(..flag.len() + authz.len() + 2)
        .ok_or(malformed(Msg::ScramNotClientFirst))?;

    let mut attrs = bare.split(',');
    let user = attrs.next().unwrap_or_default();
    if user.starts_with("m=") {
        return Err(malformed(Msg::ScramNoExtensions));
    }
    let user = user
        .strip_prefix("n=")
        .ok_or(malformed(Msg::ScramFirstStartsWithN))?;
    let user = decode_saslname(user).map_err(malformed)?;
    let client_nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or(malformed(Msg::ScramFirstNoNonce))?;
    if client_nonce.is_empty() || !client_nonce.bytes().all(is_printable) {
        return Err(malformed(Msg::ScramNonceCharacter));
    }
    for extension in attrs {
        check_extension(extension)?;
    }
    Ok(ClientFirst {
        gs2_header,
        bare,
        user,
        authzid,
        client_nonce,
    })
}

/// The server-first message (RFC 5802 section 7, `server-first-message`) for `client`, and what
/// must be kept until the client-final message.
pub(super) fn server_first<A>(
    client: &ClientFirst<'_>,
    server_nonce: &str,
    credentials: ScramCredentials<A>,
) -> (String, Pending<A>) {
    let nonce = format!("{}{}", client.client_nonce, server_nonce);
    let message = format!(
        "r={nonce},s={},i={}",
        BASE64.encode(credentials.salt()),
        credentials.iterations()
    );
    let pending = Pending {
        gs2_header: client.gs2_header.to_string(),
        client_first_bare: client.bare.to_string(),
        server_first: message.clone(),
        nonce,
        credentials,
    };
    (message, pending)
}

/// Checks a client-final message (RFC 5802 section 7, `client-final-message`) and its proof
/// (section 3). On success, returns the server-final message and the account.
pub(super) fn client_final<A>(pending: Pending<A>, msg: &str) -> Result<(String, A), Reject> {
    let malformed = Reject::Malformed;
    let attrs: Vec<&str> = msg.split(',').collect();
    let Some((&proof_attr, without)) = attrs.split_last() else {
        return Err(malformed(Msg::ScramNotClientFinal));
    };
    let proof = proof_attr
        .strip_prefix("p=")
        .ok_or(malformed(Msg::ScramFinalEndsWithP))?;
    let [binding, nonce, extensions @ ..] = without else {
        return Err(malformed(Msg::ScramFinalAttributes));
    };
    let binding = binding
        .strip_prefix("c=")
        .ok_or(malformed(Msg::ScramFinalStartsWithC))?;
    let nonce = nonce
        .strip_prefix("r=")
        .ok_or(malformed(Msg::ScramFinalNoNonce))?;
    for extension in extensions {
        check_extension(extension)?;
    }
    let binding = BASE64
        .decode(binding)
        .map_err(|_| malformed(Msg::ScramBindingNotBase64))?;
    let proof: [u8; KEY_LEN] = BASE64
        .decode(proof)
        .ok()
        .and_then(|p| p.try_into().ok())
        .ok_or(malformed(Msg::ScramProofShape))?;
    // Without channel binding, c= carries the GS2 header back; a different one means the
    // client-first message was tampered with. The nonce must be the one we sent.
    if binding != pending.gs2_header.as_bytes() || nonce != pending.nonce {
        return Err(Reject::Failure(FailureReason::ExchangeMismatch));
    }
    // Everything before ",p=<proof>", the last attribute.
    let without_proof = msg
        .get(..msg.len().saturating_sub(proof_attr.len() + 1))
        .ok_or(malformed(Msg::ScramNotClientFinal))?;
    let auth_message = format!(
        "{},{},{}",
        pending.client_first_bare, pending.server_first, without_proof
    );
    let keys = pending.credentials.keys();
    let client_signature = hmac_sha256(&keys.stored_key, &[auth_message.as_bytes()]);
    let mut client_key = [0u8; KEY_LEN];
    for ((k, p), s) in client_key.iter_mut().zip(proof).zip(client_signature) {
        *k = p ^ s;
    }
    let proof_ok: bool = sha256(&client_key).ct_eq(&keys.stored_key).into();
    let server_signature =
        proof_ok.then(|| hmac_sha256(&keys.server_key, &[auth_message.as_bytes()]));
    let no_account = pending.credentials.no_account_reason();
    match (pending.credentials.into_account(), server_signature) {
        (Some(account), Some(server_signature)) => {
            Ok((format!("v={}", BASE64.encode(server_signature)), account))
        }
        (Some(_), None) => Err(Reject::Failure(FailureReason::WrongPassword)),
        (None, _) => Err(Reject::Failure(no_account)),
    }
}

/// `printable` of RFC 5802: the visible ASCII characters but ','.
pub(super) fn is_printable(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && b != b','
}

/// An `attr-val` of RFC 5802 (an extension): one letter, '=', a value without NUL (',' cannot
/// occur, the message was split on it).
fn check_extension(attr: &str) -> Result<(), Reject> {
    let mut chars = attr.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.next() == Some('=')
        && chars.next().is_some()
        && !attr.contains('\0');
    if ok {
        Ok(())
    } else {
        Err(Reject::Malformed(Msg::ScramMalformed))
    }
}

/// Unescapes a `saslname` (RFC 5802 section 5.1): `=2C` is ',' and `=3D` is '=' (either case of
/// the hex digit, ABNF strings being case-insensitive); any other '=' is an error. The result
/// must pass the prohibitions of SASLprep.
pub(super) fn decode_saslname(name: &str) -> Result<String, Msg> {
    if name.is_empty() {
        return Err(Msg::ScramNameEmpty);
    }
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some((before, after)) = rest.split_once('=') {
        out.push_str(before);
        if let Some(tail) = after
            .strip_prefix("2C")
            .or_else(|| after.strip_prefix("2c"))
        {
            out.push(',');
            rest = tail;
        } else if let Some(tail) = after
            .strip_prefix("3D")
            .or_else(|| after.strip_prefix("3d"))
        {
            out.push('=');
            rest = tail;
        } else {
            return Err(Msg::ScramNameEscape);
        }
    }
    out.push_str(rest);
    if out.chars().any(saslprep_prohibited) {
        return Err(Msg::ScramNameProhibited);
    }
    match crate::utf8::prepare(&out) {
        Ok(std::borrow::Cow::Borrowed(_)) => Ok(out),
        Ok(std::borrow::Cow::Owned(prepared)) => Ok(prepared),
        Err(_) => Err(Msg::ScramNameProhibited),
    }
}

/// The characters SASLprep (RFC 4013 sections 2.1 and 2.3) maps to something else or prohibits,
/// from the tables of RFC 3454: refused here rather than mapped, since a user name holding one
/// could never match a passwd-file entry as the client meant it.
///
/// Covered: ASCII and non-ASCII control characters (C.2.1, C.2.2), non-ASCII spaces (C.1.2,
/// mapped to SPACE by SASLprep, and no user name holds a space), characters mapped to nothing
/// (B.1), private use (C.3), non-characters (C.4), surrogates (C.5, which a Rust string cannot
/// hold), characters inappropriate for plain text (C.6) or canonical representation (C.7),
/// that change display (C.8), tagging characters (C.9). Not covered: unassigned code points
/// (A.1) and the bidirectional rule (section 6 of RFC 3454), which need Unicode tables.
pub(super) fn saslprep_prohibited(c: char) -> bool {
    let u = u32::from(c);
    c.is_control()
        // C.1.2 non-ASCII spaces
        || matches!(u, 0x00A0 | 0x1680 | 0x2000..=0x200B | 0x202F | 0x205F | 0x3000)
        // B.1 commonly mapped to nothing
        || matches!(u, 0x00AD | 0x034F | 0x1806 | 0x180B..=0x180D | 0x200B..=0x200D | 0x2060 | 0xFE00..=0xFE0F | 0xFEFF)
        // C.2.2 non-ASCII controls that are not in Cc
        || matches!(u, 0x06DD | 0x070F | 0x180E | 0x2028 | 0x2029 | 0x2061..=0x2063 | 0x206A..=0x206F | 0xFFF9..=0xFFFC | 0x1D173..=0x1D17A)
        // C.3 private use
        || matches!(u, 0xE000..=0xF8FF | 0xF_0000..=0xF_FFFD | 0x10_0000..=0x10_FFFD)
        // C.4 non-characters
        || matches!(u, 0xFDD0..=0xFDEF)
        || (u & 0xFFFE) == 0xFFFE
        // C.6, C.7, C.8
        || matches!(u, 0xFFF9..=0xFFFD | 0x2FF0..=0x2FFB | 0x0340 | 0x0341 | 0x200E | 0x200F | 0x202A..=0x202E)
        // C.9 tagging
        || matches!(u, 0xE_0001 | 0xE_0020..=0xE_007F)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_first_shapes() {
        let c = parse_client_first("n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL").unwrap();
        assert_eq!(c.gs2_header, "n,,");
        assert_eq!(c.bare, "n=user,r=fyko+d2lbbFgONRv9qkxdawL");
        assert_eq!(c.user, "user");
        assert_eq!(c.authzid, None);
        assert_eq!(c.client_nonce, "fyko+d2lbbFgONRv9qkxdawL");

        let c = parse_client_first("y,a=us=2Cer,n=us=3Der=2c,r=abc,x=ext").unwrap();
        assert_eq!(c.gs2_header, "y,a=us=2Cer,");
        assert_eq!(c.authzid.as_deref(), Some("us,er"));
        assert_eq!(c.user, "us=er,");
        assert_eq!(c.bare, "n=us=3Der=2c,r=abc,x=ext");

        let cases = [
            ("", "not a SCRAM client-first message"),
            ("n", "not a SCRAM client-first message"),
            ("n,", "not a SCRAM client-first message"),
            ("p=tls-unique,,n=user,r=abc", "channel binding"),
            ("p=,,n=user,r=abc", "channel binding"),
            ("x,,n=user,r=abc", "GS2 flag"),
            ("N,,n=user,r=abc", "GS2 flag"),
            ("n,b=x,n=user,r=abc", "a="),
            ("n,a=,n=user,r=abc", "empty"),
            ("n,,m=ext,n=user,r=abc", "m="),
            ("n,,r=abc,n=user", "must start with n="),
            ("n,,n=,r=abc", "empty"),
            ("n,,n=user", "no r="),
            ("n,,n=user,x=abc", "no r="),
            ("n,,n=user,r=", "nonce"),
            ("n,,n=user,r=a b", "nonce"),
            ("n,,n=user,r=abcé", "nonce"),
            ("n,,n=us=er,r=abc", "2C or 3D"),
            ("n,,n=user=,r=abc", "2C or 3D"),
            ("n,,n=us\u{7}er,r=abc", "SASLprep"),
            ("n,,n=us\u{85}er,r=abc", "SASLprep"),
            ("n,,n=us\u{a0}er,r=abc", "SASLprep"),
            ("n,,n=us\u{200b}er,r=abc", "SASLprep"),
            ("n,,n=us\u{e000}er,r=abc", "SASLprep"),
            ("n,,n=user,r=abc,", "attribute"),
            ("n,,n=user,r=abc,xx=1", "attribute"),
            ("n,,n=user,r=abc,x=", "attribute"),
            ("n,,n=user,r=abc,1=a", "attribute"),
        ];
        for (msg, why) in cases {
            match parse_client_first(msg) {
                Err(Reject::Malformed(text)) => {
                    assert!(text.to_string().contains(why), "{msg:?}: {text}")
                }
                other => panic!("{msg:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn saslprep_prohibitions() {
        for c in ['a', 'é', 'Z', '-', '.', '@', '☃', 'ß', '\u{1F600}'] {
            assert!(!saslprep_prohibited(c), "{c:?}");
        }
        for c in [
            '\0',
            '\u{1f}',
            '\u{7f}',
            '\u{80}',
            '\u{9f}',
            '\u{a0}',
            '\u{3000}',
            '\u{ad}',
            '\u{feff}',
            '\u{200d}',
            '\u{2028}',
            '\u{e000}',
            '\u{fdd0}',
            '\u{fffe}',
            '\u{1fffe}',
            '\u{10fffd}',
            '\u{202e}',
            '\u{e0041}',
            '\u{fffd}',
        ] {
            assert!(saslprep_prohibited(c), "{c:?}");
        }
    }
}
