//! The retention policies of RFC 2449: LOGIN-DELAY (section 6.5) and EXPIRE (section 6.7).
//!
//! A [`Policy`] is what one session runs under: the server-wide values until login, then the
//! user's own ([`Policy::for_user`] with the [`UserPolicy`] the user database gives). The values
//! are parsed here, once, for every place that reads them: the server's configuration, the
//! passwd-file's extra fields and the SQL users' columns. How the store keeps the times these
//! policies need (the last login, each message's first retrieval) is the store's business.

use std::fmt;

/// How long a message may stay on the server after it was first retrieved (RFC 2449 EXPIRE).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Expire {
    /// The server never removes a message by itself (the default).
    #[default]
    Never,
    /// Removed this many days after its first retrieval. `Days(0)`: removed at the end of the
    /// session that retrieved it, in the UPDATE state of a committed QUIT, as if the client had
    /// sent DELE for it.
    Days(u32),
}

impl Expire {
    /// The longest retention accepted, in days (about 270 years): keeps every computation of
    /// a time from it far from overflowing.
    pub const MAX_DAYS: u32 = 100_000;

    /// `never` (any case) or a number of days, `0` to [`Expire::MAX_DAYS`], plain decimal.
    pub fn parse(text: &str) -> Result<Self, BadPolicy> {
        if text.eq_ignore_ascii_case("never") {
            return Ok(Self::Never);
        }
        parse_number(text, Self::MAX_DAYS)
            .map(Self::Days)
            .ok_or_else(|| BadPolicy {
                field: "expire",
                value: text.to_owned(),
            })
    }
}

impl fmt::Display for Expire {
    /// As CAPA writes it: `NEVER` or the number of days.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Never => f.write_str("NEVER"),
            Self::Days(d) => write!(f, "{d}"),
        }
    }
}

/// The longest LOGIN-DELAY accepted, in seconds (one week).
pub const MAX_LOGIN_DELAY_SECS: u32 = 7 * 24 * 3600;

/// Parses a LOGIN-DELAY in seconds: plain decimal, 0 to [`MAX_LOGIN_DELAY_SECS`].
pub fn parse_login_delay(text: &str) -> Result<u32, BadPolicy> {
    parse_number(text, MAX_LOGIN_DELAY_SECS).ok_or_else(|| BadPolicy {
        field: "login_delay",
        value: text.to_owned(),
    })
}

/// Strict: digits only (no sign, no space), at most `max`.
fn parse_number(text: &str, max: u32) -> Option<u32> {
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u32>().ok().filter(|&n| n <= max)
}

/// A value of a user's policy that cannot be used: the user's maildrop is refused (`[SYS/PERM]`)
/// rather than served under a policy the administrator did not mean.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the {field} field of the user database is {value:?}: expected a number of {} ({})",
    if *field == "expire" { "days" } else { "seconds" },
    if *field == "expire" { "or never" } else { "0 for none" }
)]
pub struct BadPolicy {
    /// `login_delay` or `expire`.
    pub field: &'static str,
    pub value: String,
}

/// The policy one session runs under.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// LOGIN-DELAY: the fewest seconds between two logins of one user; 0 for none.
    pub login_delay: u32,
    /// EXPIRE.
    pub expire: Expire,
}

/// What the user database says of one user: `None` keeps the server-wide value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserPolicy {
    pub login_delay: Option<u32>,
    pub expire: Option<Expire>,
}

impl UserPolicy {
    /// True if the user has a value of their own.
    pub fn overrides(&self) -> bool {
        self.login_delay.is_some() || self.expire.is_some()
    }
}

impl Policy {
    /// The policy of a user whose database entry says `user`.
    pub fn for_user(self, user: UserPolicy) -> Self {
        Self {
            login_delay: user.login_delay.unwrap_or(self.login_delay),
            expire: user.expire.unwrap_or(self.expire),
        }
    }

    /// True when it changes nothing: no delay, nothing expires.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_strictly() {
        assert_eq!(Expire::parse("never"), Ok(Expire::Never));
        assert_eq!(Expire::parse("NEVER"), Ok(Expire::Never));
        assert_eq!(Expire::parse("0"), Ok(Expire::Days(0)));
        assert_eq!(Expire::parse("30"), Ok(Expire::Days(30)));
        assert_eq!(Expire::parse("100000"), Ok(Expire::Days(100_000)));
        for bad in ["", "-1", "+3", " 3", "3d", "100001", "99999999999", "nev"] {
            let e = Expire::parse(bad).unwrap_err();
            assert_eq!(e.field, "expire");
            assert!(e.to_string().contains("or never"), "{e}");
        }
        assert_eq!(parse_login_delay("900"), Ok(900));
        assert_eq!(parse_login_delay("0"), Ok(0));
        assert!(parse_login_delay("604801").is_err());
        assert!(parse_login_delay("never").is_err());
        assert_eq!(Expire::Never.to_string(), "NEVER");
        assert_eq!(Expire::Days(7).to_string(), "7");
    }

    #[test]
    fn a_users_values_override_the_servers() {
        let server = Policy {
            login_delay: 60,
            expire: Expire::Days(30),
        };
        assert_eq!(server.for_user(UserPolicy::default()), server);
        let user = UserPolicy {
            login_delay: Some(0),
            expire: None,
        };
        assert!(user.overrides());
        assert_eq!(
            server.for_user(user),
            Policy {
                login_delay: 0,
                expire: Expire::Days(30)
            }
        );
        assert!(Policy::default().is_default());
        assert!(!server.is_default());
    }
}
