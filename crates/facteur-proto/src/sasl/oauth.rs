//! The messages of the bearer-token mechanisms: OAUTHBEARER (RFC 7628) and XOAUTH2 (Google's
//! and Microsoft's, which their POP3 servers speak), and the error JSON of RFC 7628 section
//! 3.2.2. Parsing only: the token is judged by the verifier, the exchange's steps are in the
//! parent module.
//!
//! What this module must never do: put a token in an error or a `Debug` output; take a token
//! over [`MAX_TOKEN_LEN`].

use std::fmt;

use crate::text::Msg;

/// The longest bearer token accepted, in octets. Access tokens of the big issuers are one to
/// four KiB (Microsoft's, with many groups, the longest); 8 KiB leaves room and bounds what a
/// verifier is asked to decode.
pub const MAX_TOKEN_LEN: usize = 8192;

/// The longest continuation line (or AUTH initial response) the bearer mechanisms accept, in
/// octets: the base64 of a message holding a token of [`MAX_TOKEN_LEN`], an authorization
/// identity of 255 octets and the host and port (3 KiB more than the 4/3 of 8.5 KiB).
pub const MAX_BEARER_LINE: usize = 14 * 1024;

/// A client's message: the token and the authorization identity it names, if any. `Debug`
/// never shows the token.
pub(super) struct BearerMessage {
    /// OAUTHBEARER's `a=` (unescaped), XOAUTH2's `user=`; `None` when absent or empty.
    pub authzid: Option<String>,
    pub token: String,
}

impl fmt::Debug for BearerMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerMessage")
            .field("authzid", &self.authzid)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// OAUTHBEARER's client response (RFC 7628 section 3.1): a GS2 header `n,a=USER,` (or `y,`;
/// `p=` asks for channel binding, which has no meaning here), then `key=value` pairs each
/// ended by `\x01`, then one more `\x01`. `auth=Bearer TOKEN` is required; `host` and `port`
/// are optional and other keys are ignored, as the RFC asks.
pub(super) fn parse_oauthbearer(data: &[u8]) -> Result<BearerMessage, Msg> {
    let text = std::str::from_utf8(data).map_err(|_| Msg::OAuthShape)?;
    let (flag, rest) = text.split_once(',').ok_or(Msg::OAuthShape)?;
    match flag {
        "n" | "y" => {}
        _ => return Err(Msg::OAuthChannelBinding),
    }
    let (authzid, rest) = rest.split_once(',').ok_or(Msg::OAuthShape)?;
    let authzid = match authzid {
        "" => None,
        a => Some(unescape_saslname(
            a.strip_prefix("a=").ok_or(Msg::OAuthShape)?,
        )?),
    };
    let pairs = rest.strip_prefix('\x01').ok_or(Msg::OAuthShape)?;
    let token = token_of(pairs)?;
    Ok(BearerMessage {
        authzid: authzid.filter(|a| !a.is_empty()),
        token,
    })
}

/// XOAUTH2's client response: `user=USER\x01auth=Bearer TOKEN\x01\x01`.
pub(super) fn parse_xoauth2(data: &[u8]) -> Result<BearerMessage, Msg> {
    let text = std::str::from_utf8(data).map_err(|_| Msg::OAuthShape)?;
    let (user, pairs) = text.split_once('\x01').ok_or(Msg::OAuthShape)?;
    let user = user.strip_prefix("user=").ok_or(Msg::OAuthShape)?;
    let token = token_of(pairs)?;
    Ok(BearerMessage {
        authzid: (!user.is_empty()).then(|| user.to_string()),
        token,
    })
}

/// The token of `auth=Bearer TOKEN` among `key=value\x01` pairs that end with an empty one.
fn token_of(pairs: &str) -> Result<String, Msg> {
    let body = pairs.strip_suffix("\x01\x01").ok_or(Msg::OAuthShape)?;
    let mut token = None;
    for pair in body.split('\x01') {
        let (key, value) = pair.split_once('=').ok_or(Msg::OAuthShape)?;
        // RFC 7628: key = 1*(ALPHA); value = *(VCHAR / SP / HTAB / CR / LF).
        let key_ok = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphabetic());
        let value_ok = value
            .bytes()
            .all(|b| b.is_ascii_graphic() || matches!(b, b' ' | b'\t' | b'\r' | b'\n'));
        if !key_ok || !value_ok {
            return Err(Msg::OAuthShape);
        }
        if key == "auth" {
            if token.is_some() {
                return Err(Msg::OAuthShape);
            }
            token = Some(bearer_token(value)?);
        }
    }
    token.ok_or(Msg::OAuthNoToken)
}

/// `Bearer TOKEN` (RFC 6750 section 2.1: the scheme in any case, one or more spaces, a
/// b64token).
fn bearer_token(value: &str) -> Result<String, Msg> {
    let (scheme, token) = value.split_once(' ').ok_or(Msg::OAuthNoToken)?;
    if !scheme.eq_ignore_ascii_case("Bearer") {
        return Err(Msg::OAuthNoToken);
    }
    let token = token.trim_start_matches(' ');
    if token.len() > MAX_TOKEN_LEN {
        return Err(Msg::OAuthTokenTooLong);
    }
    let body = token.trim_end_matches('=');
    let b64token = !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        });
    if !b64token {
        return Err(Msg::OAuthNoToken);
    }
    Ok(token.to_string())
}

/// A saslname (RFC 5801): `=2C` is `,` and `=3D` is `=`; any other `=` is an error.
fn unescape_saslname(name: &str) -> Result<String, Msg> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        let escape = rest.get(at..at + 3).ok_or(Msg::OAuthShape)?;
        match escape {
            "=2C" | "=2c" => out.push(','),
            "=3D" | "=3d" => out.push('='),
            _ => return Err(Msg::OAuthShape),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// What the server's error challenge says besides its status (RFC 7628 section 3.2.2): the
/// scope a token needs and where the client finds the issuer's OpenID configuration, each
/// optional, from the configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BearerErrorInfo {
    pub scope: Option<String>,
    pub openid_configuration: Option<String>,
}

impl BearerErrorInfo {
    /// The error JSON: `{"status":"invalid_token","scope":...,"openid-configuration":...}`.
    pub fn json(&self) -> String {
        let mut out = String::from("{\"status\":\"invalid_token\"");
        if let Some(scope) = &self.scope {
            out.push_str(",\"scope\":");
            json_string(&mut out, scope);
        }
        if let Some(url) = &self.openid_configuration {
            out.push_str(",\"openid-configuration\":");
            json_string(&mut out, url);
        }
        out.push('}');
        out
    }
}

/// `s` as a JSON string (RFC 8259 section 7).
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}
