//! Status lines: `+OK` and `-ERR` with the extended response codes of RFC 2449 and RFC 3206.
//!
//! Encoders write into a caller's buffer and never fail; the parser is for the client side.

use std::fmt;

/// An extended response code, sent in brackets right after `-ERR` (RFC 2449 section 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// The maildrop is locked by another session (RFC 2449 section 8.1.1).
    InUse,
    /// Logging in again so soon is refused (RFC 2449 section 8.1.2).
    LoginDelay,
    /// A temporary server-side failure; trying again later may succeed (RFC 3206).
    SysTemp,
    /// A permanent server-side failure; trying again will not help (RFC 3206).
    SysPerm,
    /// The credentials were refused (RFC 3206).
    Auth,
    /// The command needs UTF-8 mode or the reply would not be ASCII (RFC 6856).
    Utf8,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InUse => "IN-USE",
            Code::LoginDelay => "LOGIN-DELAY",
            Code::SysTemp => "SYS/TEMP",
            Code::SysPerm => "SYS/PERM",
            Code::Auth => "AUTH",
            Code::Utf8 => "UTF8",
        }
    }

    fn from_str(s: &str) -> Option<Self> {
        Some(match s.to_ascii_uppercase().as_str() {
            "IN-USE" => Code::InUse,
            "LOGIN-DELAY" => Code::LoginDelay,
            "SYS/TEMP" => Code::SysTemp,
            "SYS/PERM" => Code::SysPerm,
            "AUTH" => Code::Auth,
            "UTF8" => Code::Utf8,
            _ => return None,
        })
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Write `+OK text\r\n` (or `+OK\r\n` for an empty text).
pub fn ok(out: &mut Vec<u8>, text: impl fmt::Display) {
    status(out, true, None, text);
}

/// Write `-ERR [CODE] text\r\n`.
pub fn err(out: &mut Vec<u8>, code: Option<Code>, text: impl fmt::Display) {
    status(out, false, code, text);
}

fn status(out: &mut Vec<u8>, ok: bool, code: Option<Code>, text: impl fmt::Display) {
    use std::io::Write as _;
    out.extend_from_slice(if ok { b"+OK" } else { b"-ERR" });
    if let Some(c) = code {
        out.extend_from_slice(b" [");
        out.extend_from_slice(c.as_str().as_bytes());
        out.push(b']');
    }
    let start = out.len();
    // Writing into a Vec cannot fail.
    let _ = write!(out, " {text}");
    if out.len() == start + 1 {
        out.pop();
    }
    // A status line is one line: never let a CR or LF from the text split it.
    for b in &mut out[start..] {
        if *b == b'\r' || *b == b'\n' {
            *b = b' ';
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Write the line that ends a multi-line response.
pub fn end_multiline(out: &mut Vec<u8>) {
    out.extend_from_slice(b".\r\n");
}

/// A status line as a client reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub ok: bool,
    pub code: Option<Code>,
    /// The text after the status and code, without surrounding spaces.
    pub text: String,
}

/// Why a server's line is not a status line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the server sent something that is not a POP3 status line")]
pub struct NotAStatus;

/// Parse a status line (without its CRLF). `+ ` continuation lines (SASL) are not status lines.
pub fn parse_status(line: &[u8]) -> Result<Status, NotAStatus> {
    let (ok, rest) = if let Some(r) = strip_prefix_ci(line, b"+OK") {
        (true, r)
    } else if let Some(r) = strip_prefix_ci(line, b"-ERR") {
        (false, r)
    } else {
        return Err(NotAStatus);
    };
    if !(rest.is_empty() || rest[0] == b' ') {
        return Err(NotAStatus);
    }
    let text = String::from_utf8_lossy(rest);
    let text = text.trim();
    let (code, text) = match text.strip_prefix('[').and_then(|t| t.split_once(']')) {
        Some((c, t)) if !ok || Code::from_str(c).is_some() => (Code::from_str(c), t.trim()),
        _ => (None, text),
    };
    Ok(Status {
        ok,
        code,
        text: text.to_string(),
    })
}

fn strip_prefix_ci<'a>(line: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    if line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix) {
        Some(&line[prefix.len()..])
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut v = Vec::new();
        f(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn encodes_codes() {
        assert_eq!(s(|o| ok(o, "2 320")), "+OK 2 320\r\n");
        assert_eq!(s(|o| ok(o, "")), "+OK\r\n");
        assert_eq!(
            s(|o| err(o, Some(Code::InUse), "maildrop locked")),
            "-ERR [IN-USE] maildrop locked\r\n"
        );
        assert_eq!(
            s(|o| err(o, Some(Code::SysTemp), "")),
            "-ERR [SYS/TEMP]\r\n"
        );
    }

    #[test]
    fn text_never_splits_the_line() {
        assert_eq!(s(|o| err(o, None, "a\r\n+OK b")), "-ERR a  +OK b\r\n");
    }

    #[test]
    fn parses_status() {
        assert_eq!(
            parse_status(b"-ERR [IN-USE] locked"),
            Ok(Status {
                ok: false,
                code: Some(Code::InUse),
                text: "locked".into()
            })
        );
        assert_eq!(
            parse_status(b"+OK 2 320"),
            Ok(Status {
                ok: true,
                code: None,
                text: "2 320".into()
            })
        );
        assert_eq!(parse_status(b"+ok").map(|s| s.ok), Ok(true));
        assert!(parse_status(b"+OKAY").is_err());
        assert!(parse_status(b"+ abc").is_err());
        assert_eq!(
            parse_status(b"-ERR [X-UNKNOWN] t").map(|s| s.code),
            Ok(None)
        );
    }
}
