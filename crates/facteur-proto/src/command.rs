//! POP3 commands: strict parsing of a command line (server side) and encoding (client side).
//!
//! A command line is a keyword of 3 or 4 letters, case-insensitive, then arguments separated by
//! spaces (RFC 1939 section 3). Parsing is strict where leniency would be dangerous: message
//! numbers are decimal digits only, never 0, never wrapped (`LIST 4294967297` is an error, not
//! message 1), and no argument may hold a control character. It is lenient where clients are
//! known to be sloppy and nothing is at stake: runs of spaces and trailing spaces are accepted.
//! This module never allocates more than the line it is given.

use crate::text::Msg;
use crate::types::{parse_decimal, same_secret, MsgNum, Secret};
use std::fmt;

/// One POP3 command with its arguments, already validated for shape (not for state).
/// Equality compares the secrets (PASS, an initial response) in constant time.
#[derive(Clone, Debug)]
pub enum Command {
    /// `USER name` (RFC 1939 section 7).
    User(String),
    /// `PASS string`: the rest of the line, spaces included (RFC 1939 section 7 allows it).
    Pass(Secret<Vec<u8>>),
    /// `APOP name digest` (RFC 1939 section 7): the digest is 32 hex digits, kept in lower case.
    Apop {
        name: String,
        digest: String,
    },
    /// `AUTH mechanism [initial-response]` (RFC 5034); `AUTH` alone lists mechanisms.
    Auth {
        mechanism: Option<String>,
        initial_response: Option<Secret<String>>,
    },
    /// `STLS` (RFC 2595).
    Stls,
    /// `CAPA` (RFC 2449).
    Capa,
    Quit,
    Stat,
    /// `LIST [msg]`.
    List(Option<MsgNum>),
    Retr(MsgNum),
    Dele(MsgNum),
    Noop,
    Rset,
    /// `TOP msg n`: the header and the first `n` lines of the body.
    Top(MsgNum, u64),
    /// `UIDL [msg]`.
    Uidl(Option<MsgNum>),
    /// `LAST` (RFC 1460, obsolete): the highest message number accessed.
    Last,
    /// `UTF8` (RFC 6856 section 2): UTF-8 mode.
    Utf8,
    /// `LANG [range]` (RFC 6856 section 3): no argument lists the languages; a language range
    /// or `*` (the server's default) chooses one. The argument is printable ASCII, unchecked.
    Lang(Option<String>),
}

impl PartialEq for Command {
    fn eq(&self, other: &Self) -> bool {
        use Command as C;
        // A match on `self` alone, so that a new variant cannot be forgotten here.
        match self {
            C::User(a) => matches!(other, C::User(b) if a == b),
            C::Pass(a) => matches!(other, C::Pass(b) if same_secret(Some(a), Some(b))),
            C::Apop { name, digest } => {
                matches!(other, C::Apop { name: n, digest: d } if name == n && digest == d)
            }
            C::Auth {
                mechanism,
                initial_response,
            } => matches!(other, C::Auth { mechanism: m, initial_response: r }
                if mechanism == m && same_secret(initial_response.as_ref(), r.as_ref())),
            C::List(a) => matches!(other, C::List(b) if a == b),
            C::Uidl(a) => matches!(other, C::Uidl(b) if a == b),
            C::Retr(a) => matches!(other, C::Retr(b) if a == b),
            C::Dele(a) => matches!(other, C::Dele(b) if a == b),
            C::Top(a, n) => matches!(other, C::Top(b, m) if a == b && n == m),
            C::Stls => matches!(other, C::Stls),
            C::Capa => matches!(other, C::Capa),
            C::Quit => matches!(other, C::Quit),
            C::Stat => matches!(other, C::Stat),
            C::Noop => matches!(other, C::Noop),
            C::Rset => matches!(other, C::Rset),
            C::Last => matches!(other, C::Last),
            C::Utf8 => matches!(other, C::Utf8),
            C::Lang(a) => matches!(other, C::Lang(b) if a == b),
        }
    }
}

impl Eq for Command {}

/// Why a command line could not be parsed. Its text for the client, in any language, is
/// [`ParseError::msg`]; Display gives it in English.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty command")]
    Empty,
    #[error("command contains a NUL or control character")]
    InvalidByte,
    #[error("unknown command")]
    UnknownCommand,
    #[error("{0}")]
    BadArguments(Msg),
}

impl ParseError {
    /// The text that tells the client what is wrong.
    pub fn msg(&self) -> Msg {
        match self {
            ParseError::Empty => Msg::EmptyCommand,
            ParseError::InvalidByte => Msg::ControlCharacter,
            ParseError::UnknownCommand => Msg::UnknownCommand,
            ParseError::BadArguments(m) => *m,
        }
    }
}

/// The command keywords facteur knows, for `is_known_keyword`.
const KEYWORDS: &[&str] = &[
    "USER", "PASS", "APOP", "AUTH", "STLS", "CAPA", "QUIT", "STAT", "LIST", "RETR", "DELE", "NOOP",
    "RSET", "TOP", "UIDL", "LAST", "UTF8", "LANG",
];

/// Parse one command line (without its CRLF).
pub fn parse(line: &[u8]) -> Result<Command, ParseError> {
    if line.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
        return Err(ParseError::InvalidByte);
    }
    let (keyword, rest) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &line[line.len()..]),
    };
    if keyword.is_empty() {
        return Err(if line.iter().all(|&b| b == b' ') {
            ParseError::Empty
        } else {
            ParseError::UnknownCommand
        });
    }
    // Letters and digits: UTF8 (RFC 6856) has one.
    if keyword.len() > 4 || !keyword.iter().all(u8::is_ascii_alphanumeric) {
        return Err(ParseError::UnknownCommand);
    }
    let mut kw = [0u8; 4];
    for (d, s) in kw.iter_mut().zip(keyword) {
        *d = s.to_ascii_uppercase();
    }
    let kw = &kw[..keyword.len()];

    // PASS takes the rest of the line as it is; every other argument is printable ASCII.
    if kw == b"PASS" {
        if rest.is_empty() {
            return Err(ParseError::BadArguments(Msg::PassNeedsPassword));
        }
        return Ok(Command::Pass(Secret::new(rest.to_vec())));
    }
    if rest.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(ParseError::InvalidByte);
    }
    let args = Args::new(rest);
    match kw {
        b"USER" => {
            let name = args.exactly_one(Msg::UserNeedsName)?;
            Ok(Command::User(utf8(name, Msg::UserNameNotUtf8)?))
        }
        b"APOP" => {
            let [name, digest] = args.exactly(Msg::ApopNeedsArguments)?;
            if digest.len() != 32 || !digest.iter().all(u8::is_ascii_hexdigit) {
                return Err(ParseError::BadArguments(Msg::ApopDigestShape));
            }
            Ok(Command::Apop {
                name: utf8(name, Msg::UserNameNotUtf8)?,
                digest: String::from_utf8_lossy(digest).to_ascii_lowercase(),
            })
        }
        b"AUTH" => {
            let mut it = args.iter();
            let mechanism = it
                .next()
                .map(|m| String::from_utf8_lossy(m).to_ascii_uppercase());
            let initial_response = it
                .next()
                .map(|r| Secret::new(String::from_utf8_lossy(r).into_owned()));
            if it.next().is_some() {
                return Err(ParseError::BadArguments(Msg::AuthTooManyArguments));
            }
            Ok(Command::Auth {
                mechanism,
                initial_response,
            })
        }
        b"STLS" => args.none(Command::Stls),
        b"CAPA" => args.none(Command::Capa),
        b"QUIT" => args.none(Command::Quit),
        b"STAT" => args.none(Command::Stat),
        b"NOOP" => args.none(Command::Noop),
        b"RSET" => args.none(Command::Rset),
        b"LAST" => args.none(Command::Last),
        b"UTF8" => args.none(Command::Utf8),
        b"LANG" => {
            let mut it = args.iter();
            let range = it.next();
            if it.next().is_some() || range.is_some_and(|r| !r.iter().all(u8::is_ascii_graphic)) {
                return Err(ParseError::BadArguments(Msg::LangArguments));
            }
            Ok(Command::Lang(
                range.map(|r| String::from_utf8_lossy(r).into_owned()),
            ))
        }
        b"LIST" => Ok(Command::List(args.optional_msg()?)),
        b"UIDL" => Ok(Command::Uidl(args.optional_msg()?)),
        b"RETR" => Ok(Command::Retr(msg_num(
            args.exactly_one(Msg::RetrNeedsNumber)?,
        )?)),
        b"DELE" => Ok(Command::Dele(msg_num(
            args.exactly_one(Msg::DeleNeedsNumber)?,
        )?)),
        b"TOP" => {
            let [m, n] = args.exactly(Msg::TopNeedsArguments)?;
            Ok(Command::Top(msg_num(m)?, line_count(n)?))
        }
        _ => Err(ParseError::UnknownCommand),
    }
}

/// True if `keyword` (any case) names a command facteur knows, whatever the state.
pub fn is_known_keyword(keyword: &str) -> bool {
    KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(keyword))
}

/// Space-separated arguments; runs of spaces count as one separator.
struct Args<'a>(&'a [u8]);

impl<'a> Args<'a> {
    fn new(rest: &'a [u8]) -> Self {
        Self(rest)
    }

    fn iter(&self) -> impl Iterator<Item = &'a [u8]> {
        self.0.split(|&b| b == b' ').filter(|a| !a.is_empty())
    }

    fn none(&self, c: Command) -> Result<Command, ParseError> {
        match self.iter().next() {
            None => Ok(c),
            Some(_) => Err(ParseError::BadArguments(Msg::NoArgument)),
        }
    }

    fn exactly<const N: usize>(&self, why: Msg) -> Result<[&'a [u8]; N], ParseError> {
        let mut out: [&[u8]; N] = [&[]; N];
        let mut it = self.iter();
        for slot in out.iter_mut() {
            *slot = it.next().ok_or(ParseError::BadArguments(why))?;
        }
        match it.next() {
            None => Ok(out),
            Some(_) => Err(ParseError::BadArguments(why)),
        }
    }

    fn exactly_one(&self, why: Msg) -> Result<&'a [u8], ParseError> {
        self.exactly::<1>(why).map(|[a]| a)
    }

    fn optional_msg(&self) -> Result<Option<MsgNum>, ParseError> {
        let mut it = self.iter();
        let first = it.next();
        if it.next().is_some() {
            return Err(ParseError::BadArguments(Msg::AtMostOneNumber));
        }
        first.map(msg_num).transpose()
    }
}

fn utf8(b: &[u8], why: Msg) -> Result<String, ParseError> {
    String::from_utf8(b.to_vec()).map_err(|_| ParseError::BadArguments(why))
}

fn msg_num(b: &[u8]) -> Result<MsgNum, ParseError> {
    let n = parse_decimal(b).ok_or(ParseError::BadArguments(Msg::InvalidMessageNumber))?;
    u32::try_from(n)
        .ok()
        .and_then(MsgNum::new)
        .ok_or(ParseError::BadArguments(Msg::InvalidMessageNumber))
}

fn line_count(b: &[u8]) -> Result<u64, ParseError> {
    parse_decimal(b).ok_or(ParseError::BadArguments(Msg::InvalidLineCount))
}

impl Command {
    /// Encode the command line with its CRLF, as a client sends it.
    pub fn encode(&self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        // Writing into a Vec cannot fail.
        let _ = match self {
            Command::User(n) => write!(out, "USER {n}"),
            Command::Pass(p) => {
                out.extend_from_slice(b"PASS ");
                out.extend_from_slice(p.expose());
                Ok(())
            }
            Command::Apop { name, digest } => write!(out, "APOP {name} {digest}"),
            Command::Auth {
                mechanism,
                initial_response,
            } => {
                out.extend_from_slice(b"AUTH");
                if let Some(m) = mechanism {
                    let _ = write!(out, " {m}");
                }
                if let Some(r) = initial_response {
                    let _ = write!(out, " {}", r.expose());
                }
                Ok(())
            }
            Command::Stls => write!(out, "STLS"),
            Command::Capa => write!(out, "CAPA"),
            Command::Quit => write!(out, "QUIT"),
            Command::Stat => write!(out, "STAT"),
            Command::List(None) => write!(out, "LIST"),
            Command::List(Some(m)) => write!(out, "LIST {m}"),
            Command::Retr(m) => write!(out, "RETR {m}"),
            Command::Dele(m) => write!(out, "DELE {m}"),
            Command::Noop => write!(out, "NOOP"),
            Command::Rset => write!(out, "RSET"),
            Command::Top(m, n) => write!(out, "TOP {m} {n}"),
            Command::Uidl(None) => write!(out, "UIDL"),
            Command::Uidl(Some(m)) => write!(out, "UIDL {m}"),
            Command::Last => write!(out, "LAST"),
            Command::Utf8 => write!(out, "UTF8"),
            Command::Lang(None) => write!(out, "LANG"),
            Command::Lang(Some(r)) => write!(out, "LANG {r}"),
        };
        out.extend_from_slice(b"\r\n");
    }

    /// True if the reply is multi-line (ends with a "." line) when it is `+OK`.
    pub fn has_multiline_reply(&self) -> bool {
        matches!(
            self,
            Command::Capa
                | Command::List(None)
                | Command::Uidl(None)
                | Command::Retr(_)
                | Command::Top(..)
                | Command::Lang(None)
                | Command::Auth {
                    mechanism: None,
                    ..
                }
        )
    }
}

impl fmt::Display for Command {
    /// For logs: the keyword and arguments, with any secret redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Pass(_) => f.write_str("PASS <redacted>"),
            // The digest is a hash of the password: a dictionary attack needs nothing else.
            Command::Apop { name, .. } => write!(f, "APOP {name} <redacted>"),
            Command::Auth {
                mechanism: Some(m),
                initial_response: Some(_),
            } => write!(f, "AUTH {m} <redacted>"),
            other => {
                let mut v = Vec::new();
                other.encode(&mut v);
                f.write_str(String::from_utf8_lossy(&v).trim_end())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(n: u32) -> MsgNum {
        MsgNum::new(n).unwrap()
    }

    #[test]
    fn keywords_are_case_insensitive() {
        assert_eq!(parse(b"stat"), Ok(Command::Stat));
        assert_eq!(parse(b"StAt"), Ok(Command::Stat));
        assert_eq!(parse(b"retr 1"), Ok(Command::Retr(m(1))));
        assert_eq!(parse(b"top 2 0"), Ok(Command::Top(m(2), 0)));
    }

    #[test]
    fn message_numbers_are_strict() {
        for bad in [
            &b"RETR 0"[..],
            b"LIST 4294967296",
            b"LIST 4294967297",
            b"RETR 99999999999999999999",
            b"RETR -1",
            b"RETR +1",
            b"RETR 1a",
            b"RETR 0x1",
            b"DELE 1.0",
        ] {
            assert!(
                matches!(parse(bad), Err(ParseError::BadArguments(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse(b"LIST 4294967295"),
            Ok(Command::List(Some(m(u32::MAX))))
        );
        assert_eq!(parse(b"RETR 007"), Ok(Command::Retr(m(7))));
    }

    #[test]
    fn argument_counts() {
        assert!(parse(b"RETR").is_err());
        assert!(parse(b"RETR 1 2").is_err());
        assert!(parse(b"STAT 1").is_err());
        assert!(parse(b"TOP 1").is_err());
        assert!(parse(b"TOP 1 2 3").is_err());
        assert!(parse(b"USER").is_err());
        assert!(parse(b"USER a b").is_err());
        assert!(parse(b"LIST 1 2").is_err());
        assert_eq!(parse(b"LIST"), Ok(Command::List(None)));
        assert_eq!(parse(b"LIST "), Ok(Command::List(None)));
        assert_eq!(parse(b"RETR  3"), Ok(Command::Retr(m(3))));
        assert_eq!(parse(b"TOP 1 99999999999999999999").ok(), None);
    }

    #[test]
    fn pass_keeps_spaces() {
        match parse(b"PASS  my secret ") {
            Ok(Command::Pass(p)) => assert_eq!(p.expose(), b" my secret "),
            other => panic!("{other:?}"),
        }
        assert!(parse(b"PASS").is_err());
    }

    #[test]
    fn rejects_nul_and_controls() {
        assert_eq!(parse(b"ST\0AT"), Err(ParseError::InvalidByte));
        assert_eq!(parse(b"PASS a\0b"), Err(ParseError::InvalidByte));
        assert_eq!(parse(b"USER a\x01b"), Err(ParseError::InvalidByte));
    }

    #[test]
    fn unknown_and_empty() {
        assert_eq!(parse(b""), Err(ParseError::Empty));
        assert_eq!(parse(b"   "), Err(ParseError::Empty));
        assert_eq!(parse(b"HELO"), Err(ParseError::UnknownCommand));
        assert_eq!(parse(b"RETRIEVE 1"), Err(ParseError::UnknownCommand));
        assert_eq!(parse(b" STAT"), Err(ParseError::UnknownCommand));
        assert_eq!(parse("ÉTAT".as_bytes()), Err(ParseError::UnknownCommand));
        assert_eq!(parse(b"UTF9"), Err(ParseError::UnknownCommand));
        assert_eq!(parse(b"8"), Err(ParseError::UnknownCommand));
    }

    #[test]
    fn utf8_and_lang() {
        assert_eq!(parse(b"utf8"), Ok(Command::Utf8));
        assert_eq!(
            parse(b"UTF8 USER"),
            Err(ParseError::BadArguments(Msg::NoArgument))
        );
        assert_eq!(parse(b"LANG"), Ok(Command::Lang(None)));
        assert_eq!(
            parse(b"lang  fr-CA "),
            Ok(Command::Lang(Some("fr-CA".into())))
        );
        assert_eq!(parse(b"LANG *"), Ok(Command::Lang(Some("*".into()))));
        for bad in [
            &b"LANG fr en"[..],
            "LANG fr\u{e9}".as_bytes(),
            "LANG é".as_bytes(),
        ] {
            assert_eq!(
                parse(bad),
                Err(ParseError::BadArguments(Msg::LangArguments)),
                "{bad:?}"
            );
        }
        assert!(Command::Lang(None).has_multiline_reply());
        assert!(!Command::Lang(Some("fr".into())).has_multiline_reply());
        assert!(is_known_keyword("utf8") && is_known_keyword("Lang"));
    }

    #[test]
    fn apop_digest_shape() {
        assert_eq!(
            parse(b"APOP mrose C4C9334BAC560ECC979E58001B3E22FB"),
            Ok(Command::Apop {
                name: "mrose".into(),
                digest: "c4c9334bac560ecc979e58001b3e22fb".into()
            })
        );
        assert!(parse(b"APOP mrose c4c9334bac560ecc979e58001b3e22f").is_err());
        assert!(parse(b"APOP mrose c4c9334bac560ecc979e58001b3e22fg").is_err());
        assert!(parse(b"APOP mrose").is_err());
    }

    #[test]
    fn display_redacts_secrets() {
        let c = parse(b"PASS hunter2").unwrap();
        assert!(!c.to_string().contains("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
        let c = parse(b"AUTH PLAIN AGh1bnRlcjI=").unwrap();
        assert!(!c.to_string().contains("AGh1"));
    }

    proptest! {
        #[test]
        fn parse_never_panics(line in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&line);
        }

        #[test]
        fn encode_parse_round_trip(n in 1u32.., k in 0u64..) {
            for c in [Command::Retr(m(n)), Command::Top(m(n), k), Command::List(Some(m(n))),
                      Command::Uidl(None), Command::Dele(m(n)), Command::Stat, Command::Utf8,
                      Command::Lang(None), Command::Lang(Some(format!("x-{n}")))] {
                let mut v = Vec::new();
                c.encode(&mut v);
                prop_assert!(v.ends_with(b"\r\n"));
                prop_assert_eq!(parse(&v[..v.len() - 2]), Ok(c));
            }
        }
    }
}
