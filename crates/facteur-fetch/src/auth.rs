//! Client-side logins: SCRAM-SHA-256, CRAM-MD5, APOP, SASL PLAIN and USER/PASS, and the choice
//! of the strongest one the server offers.
//!
//! The order, strongest first: SCRAM-SHA-256 (RFC 5802, RFC 7677: the password never crosses
//! the wire, and the server proves that it knows it too), CRAM-MD5 (RFC 2195) and APOP
//! (RFC 1939 section 7), which keep the password off the wire, then PLAIN (RFC 4616) and
//! USER/PASS, which send it as it is (under TLS, unless plaintext was allowed).
//!
//! SCRAM's last server message, `v=<signature>`, reaches a POP3 client as one more `+`
//! challenge (RFC 5034 section 4: `+OK` carries no data). The client checks the signature
//! before it answers with an empty line; a wrong signature, or a server that says `+OK` without
//! ever proving itself, ends the login with an error: that server does not know the password,
//! so it is not the one the user meant.
//!
//! No SASLprep (RFC 4013) of the password: it is used as its UTF-8 bytes, which is what
//! SASLprep gives for the passwords people use (printable ASCII, or text already in NFKC
//! without mapped characters). The user name is escaped as RFC 5802 section 5.1 requires.
//!
//! OAUTHBEARER (RFC 7628) and XOAUTH2 send a bearer token (from `token_command`) instead of a
//! password; they are never chosen by `auto` for a password, and always (OAUTHBEARER if offered,
//! else XOAUTH2) for a token. A refused token comes back as a challenge holding the server's
//! error JSON, which is answered (`\x01`, or an empty line for XOAUTH2) before the `-ERR`.
//!
//! What this module must never do: put the password, a key or a proof in an error or a log
//! line; send a weaker login after a stronger one was refused (that would hand a downgrade to
//! whoever sits in the middle, and cost the user a failed-login penalty per try).

use super::{describe_status, Connection, Pop3Error, SaslTurn};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use facteur_proto::command::Command;
use facteur_proto::encoding::hex;
use facteur_proto::types::parse_decimal;
// An initial response goes on the AUTH line only if the line fits (RFC 5034 section 4).
use facteur_proto::line::MAX_COMMAND_LINE;
use facteur_proto::sasl::{hmac_sha256, ScramKeys, SCRAM_MAX_ITERATIONS, SCRAM_MIN_ITERATIONS};
use facteur_proto::Secret;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use std::fmt;
use std::str::FromStr;
use subtle::ConstantTimeEq;

/// Random bytes in a SCRAM client nonce: 192 bits, 32 base64 characters.
const SCRAM_NONCE_BYTES: usize = 24;

/// How to log in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// The strongest the server offers.
    Auto,
    ScramSha256,
    CramMd5,
    Apop,
    Plain,
    /// USER and PASS (RFC 1939 section 7).
    User,
    /// SASL OAUTHBEARER (RFC 7628): a bearer token.
    OAuthBearer,
    /// SASL XOAUTH2 (Google's, Microsoft's): a bearer token.
    XOAuth2,
}

impl AuthMethod {
    /// The methods `Auto` chooses from, strongest first.
    pub const STRONGEST_FIRST: [AuthMethod; 5] = [
        AuthMethod::ScramSha256,
        AuthMethod::CramMd5,
        AuthMethod::Apop,
        AuthMethod::Plain,
        AuthMethod::User,
    ];

    /// The name in the configuration and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            AuthMethod::Auto => "auto",
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::CramMd5 => "cram-md5",
            AuthMethod::Apop => "apop",
            AuthMethod::Plain => "plain",
            AuthMethod::User => "user",
            AuthMethod::OAuthBearer => "oauthbearer",
            AuthMethod::XOAuth2 => "xoauth2",
        }
    }

    /// True for the methods that send a bearer token rather than a password.
    pub fn sends_token(self) -> bool {
        matches!(self, AuthMethod::OAuthBearer | AuthMethod::XOAuth2)
    }

    /// The bearer-token method for a server: OAUTHBEARER if it offers it, else XOAUTH2.
    pub fn bearer_for(conn: &Connection) -> AuthMethod {
        if AuthMethod::OAuthBearer.is_offered(conn) || !AuthMethod::XOAuth2.is_offered(conn) {
            AuthMethod::OAuthBearer
        } else {
            AuthMethod::XOAuth2
        }
    }

    /// True if the server offers this method: SASL mechanisms from CAPA, APOP from a timestamp
    /// in the greeting, USER from CAPA (or from the absence of CAPA, RFC 1939 servers).
    pub fn is_offered(self, conn: &Connection) -> bool {
        let caps = conn.capabilities();
        match self {
            AuthMethod::Auto => true,
            AuthMethod::ScramSha256 => caps.has_sasl("SCRAM-SHA-256"),
            AuthMethod::CramMd5 => caps.has_sasl("CRAM-MD5"),
            AuthMethod::Apop => conn.apop_timestamp().is_some(),
            AuthMethod::Plain => caps.has_sasl("PLAIN"),
            AuthMethod::User => caps.user || !caps.known,
            AuthMethod::OAuthBearer => caps.has_sasl("OAUTHBEARER"),
            AuthMethod::XOAuth2 => caps.has_sasl("XOAUTH2"),
        }
    }
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthMethod::Auto => "auto",
            AuthMethod::ScramSha256 => "SCRAM-SHA-256",
            AuthMethod::CramMd5 => "CRAM-MD5",
            AuthMethod::Apop => "APOP",
            AuthMethod::Plain => "PLAIN",
            AuthMethod::User => "USER/PASS",
            AuthMethod::OAuthBearer => "OAUTHBEARER",
            AuthMethod::XOAuth2 => "XOAUTH2",
        })
    }
}

/// A name that is not a login method.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown login method {0:?}: expected auto, scram-sha-256, cram-md5, apop, plain, user, oauthbearer or xoauth2")]
pub struct UnknownMethod(String);

impl FromStr for AuthMethod {
    type Err = UnknownMethod;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            AuthMethod::Auto,
            AuthMethod::ScramSha256,
            AuthMethod::CramMd5,
            AuthMethod::Apop,
            AuthMethod::Plain,
            AuthMethod::User,
            AuthMethod::OAuthBearer,
            AuthMethod::XOAuth2,
        ]
        .into_iter()
        .find(|m| m.name().eq_ignore_ascii_case(s))
        .ok_or_else(|| UnknownMethod(s.to_string()))
    }
}

impl<'de> serde::Deserialize<'de> for AuthMethod {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a login failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the server offers no login method facteur knows (SCRAM-SHA-256, CRAM-MD5, APOP, PLAIN, USER/PASS)")]
    NothingOffered,
    #[error("the server does not offer {0}")]
    NotOffered(AuthMethod),
    #[error("the server refused the login ({method}): {status}{}", refused_hint(*method))]
    Refused { method: AuthMethod, status: String },
    #[error("{method}: {reason}")]
    Mechanism {
        method: AuthMethod,
        reason: &'static str,
    },
    #[error(transparent)]
    Pop3(#[from] Pop3Error),
}

/// The method to use: `wanted` if it is not `Auto` (APOP needs a timestamp all the same),
/// else the strongest one offered.
pub fn choose(wanted: AuthMethod, conn: &Connection) -> Result<AuthMethod, AuthError> {
    match wanted {
        AuthMethod::Auto => AuthMethod::STRONGEST_FIRST
            .into_iter()
            .find(|m| m.is_offered(conn))
            .ok_or(AuthError::NothingOffered),
        AuthMethod::Apop if !AuthMethod::Apop.is_offered(conn) => {
            Err(AuthError::NotOffered(AuthMethod::Apop))
        }
        other => Ok(other),
    }
}

/// Log in as `user`; returns the method used. On success the session is in the TRANSACTION
/// state; on any error the connection should be dropped.
pub async fn login(
    conn: &mut Connection,
    user: &str,
    password: &Secret<String>,
    wanted: AuthMethod,
) -> Result<AuthMethod, AuthError> {
    let method = if wanted == AuthMethod::Auto
        && conn.is_tls()
        && looks_like_app_password(password.expose())
    {
        // A facteur server checks an app password against its own hash, never against the
        // stored secret SCRAM-SHA-256, CRAM-MD5 and APOP work from: those would be refused.
        // Under TLS, PLAIN (or USER/PASS) is the strongest method that can succeed.
        [AuthMethod::Plain, AuthMethod::User]
            .into_iter()
            .find(|m| m.is_offered(conn))
            .ok_or(AuthError::NothingOffered)?
    } else {
        choose(wanted, conn)?
    };
    let pw = password.expose().as_bytes();
    match method {
        AuthMethod::ScramSha256 => scram_login(conn, user, pw).await?,
        AuthMethod::CramMd5 => cram_md5_login(conn, user, pw).await?,
        AuthMethod::Apop => {
            let timestamp = conn
                .apop_timestamp()
                .ok_or(AuthError::NotOffered(AuthMethod::Apop))?
                .to_string();
            let digest = apop_digest(&timestamp, pw);
            let reply = conn
                .command(Command::Apop {
                    name: user.to_string(),
                    digest,
                })
                .await?;
            refused_unless_ok(method, &reply.status)?;
        }
        AuthMethod::Plain => {
            let message = plain_message(user, pw);
            send_message(conn, method, "PLAIN", &message).await?;
            final_reply(conn, method).await?;
        }
        AuthMethod::OAuthBearer | AuthMethod::XOAuth2 => {
            let token = password.expose();
            let message = Secret::new(if method == AuthMethod::OAuthBearer {
                // RFC 7628 section 3.1; host and port are optional and left out.
                let authzid = user.replace('=', "=3D").replace(',', "=2C");
                format!("n,a={authzid},\x01auth=Bearer {token}\x01\x01").into_bytes()
            } else {
                format!("user={user}\x01auth=Bearer {token}\x01\x01").into_bytes()
            });
            let name = if method == AuthMethod::OAuthBearer {
                "OAUTHBEARER"
            } else {
                "XOAUTH2"
            };
            send_message(conn, method, name, &message).await?;
            bearer_reply(conn, method).await?;
        }
        AuthMethod::User => {
            let reply = conn.command(Command::User(user.to_string())).await?;
            refused_unless_ok(method, &reply.status)?;
            let reply = conn
                .command(Command::Pass(Secret::new(pw.to_vec())))
                .await?;
            refused_unless_ok(method, &reply.status)?;
        }
        AuthMethod::Auto => return Err(AuthError::NothingOffered),
    }
    Ok(method)
}

/// True if `password` has the shape `facteur user app-password add` prints: five groups of four
/// lowercase letters joined by `-`.
pub fn looks_like_app_password(password: &str) -> bool {
    let groups: Vec<&str> = password.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .all(|g| g.len() == 4 && g.bytes().all(|b| b.is_ascii_lowercase()))
}

/// Sends `AUTH <name>` with `message` as the initial response if the line fits (RFC 5034
/// section 4), else after the server's empty challenge.
async fn send_message(
    conn: &mut Connection,
    method: AuthMethod,
    name: &str,
    message: &Secret<Vec<u8>>,
) -> Result<(), AuthError> {
    let encoded = Secret::new(BASE64.encode(message.expose()));
    let fits = "AUTH ".len() + name.len() + 1 + encoded.expose().len() + 2 <= MAX_COMMAND_LINE;
    if fits {
        conn.queue(Command::Auth {
            mechanism: Some(name.into()),
            initial_response: Some(encoded),
        });
        conn.flush().await?;
        return Ok(());
    }
    conn.queue(Command::Auth {
        mechanism: Some(name.into()),
        initial_response: None,
    });
    conn.flush().await?;
    match conn.sasl_turn().await? {
        SaslTurn::Challenge(_) => {
            conn.queue_sasl(message.expose());
            conn.flush().await?;
            Ok(())
        }
        SaslTurn::Done(reply) => {
            refused_unless_ok(method, &reply.status)?;
            Err(AuthError::Mechanism {
                method,
                reason: "the server said +OK before it was sent the credentials",
            })
        }
    }
}

/// The end of a bearer-token exchange: `+OK`, or the error challenge (RFC 7628 section
/// 3.2.2), answered as the mechanism wants, then the `-ERR`, told with the error's status.
async fn bearer_reply(conn: &mut Connection, method: AuthMethod) -> Result<(), AuthError> {
    let challenge = match conn.sasl_turn().await? {
        SaslTurn::Done(reply) => return refused_unless_ok(method, &reply.status),
        SaslTurn::Challenge(text) => text,
    };
    let error = challenge_bytes(method, &challenge)?;
    conn.queue_sasl(if method == AuthMethod::OAuthBearer {
        b"\x01"
    } else {
        b""
    });
    conn.flush().await?;
    let status = error_status(&error);
    match conn.sasl_turn().await? {
        SaslTurn::Done(reply) if !reply.status.ok => match refused_unless_ok(method, &reply.status)
        {
            Err(AuthError::Refused { method, status: s }) => Err(AuthError::Refused {
                method,
                status: format!("{s} (token refused: {status})"),
            }),
            other => other,
        },
        SaslTurn::Done(_) => Err(AuthError::Mechanism {
            method,
            reason: "the server said +OK after refusing the token",
        }),
        SaslTurn::Challenge(_) => {
            cancel(conn).await;
            Err(AuthError::Mechanism {
                method,
                reason: "the server sent a challenge where the exchange should have ended",
            })
        }
    }
}

/// The `status` of an RFC 7628 error JSON, as printable text of at most 64 characters.
fn error_status(json: &[u8]) -> String {
    let text = String::from_utf8_lossy(json);
    let status = text
        .split("\"status\"")
        .nth(1)
        .and_then(|rest| rest.split('"').nth(1))
        .unwrap_or("unknown");
    status
        .chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// For a refused challenge-response login: servers offer SCRAM-SHA-256 and CRAM-MD5 to every
/// user, but only users whose password they store in a form those can use can log in with them.
fn refused_hint(method: AuthMethod) -> &'static str {
    match method {
        AuthMethod::ScramSha256 | AuthMethod::CramMd5 | AuthMethod::Apop => {
            " (if the password is right, the server may not store it in a form this method \
             can use: try --auth plain over TLS)"
        }
        _ => "",
    }
}

/// `-ERR` to a login: a refusal of the credentials (no code, or `[AUTH]`), or a state of the
/// server (`[IN-USE]`, `[LOGIN-DELAY]`, `[SYS/TEMP]`...) that says nothing about them.
fn refused_unless_ok(
    method: AuthMethod,
    status: &facteur_proto::response::Status,
) -> Result<(), AuthError> {
    use facteur_proto::response::Code;
    match status.code {
        _ if status.ok => Ok(()),
        None | Some(Code::Auth) => Err(AuthError::Refused {
            method,
            status: describe_status(status),
        }),
        Some(_) => Err(AuthError::Pop3(Pop3Error::Refused {
            command: method.to_string(),
            status: status.clone(),
        })),
    }
}

/// The reply that ends an AUTH exchange; a further challenge is answered `*`.
async fn final_reply(conn: &mut Connection, method: AuthMethod) -> Result<(), AuthError> {
    match conn.sasl_turn().await? {
        SaslTurn::Done(reply) => refused_unless_ok(method, &reply.status),
        SaslTurn::Challenge(_) => {
            cancel(conn).await;
            Err(AuthError::Mechanism {
                method,
                reason: "the server sent a challenge where the exchange should have ended",
            })
        }
    }
}

/// Answer `*` and read the `-ERR` that follows, best effort.
async fn cancel(conn: &mut Connection) {
    conn.queue_sasl_cancel();
    if conn.flush().await.is_ok() {
        let _ = conn.sasl_turn().await;
    }
}

fn challenge_bytes(method: AuthMethod, text: &str) -> Result<Vec<u8>, AuthError> {
    BASE64.decode(text).map_err(|_| AuthError::Mechanism {
        method,
        reason: "the server's challenge is not valid base64",
    })
}

async fn cram_md5_login(conn: &mut Connection, user: &str, pw: &[u8]) -> Result<(), AuthError> {
    let method = AuthMethod::CramMd5;
    conn.queue(Command::Auth {
        mechanism: Some("CRAM-MD5".into()),
        initial_response: None,
    });
    conn.flush().await?;
    let challenge = match conn.sasl_turn().await? {
        SaslTurn::Challenge(c) => challenge_bytes(method, &c)?,
        SaslTurn::Done(reply) => {
            refused_unless_ok(method, &reply.status)?;
            return Err(AuthError::Mechanism {
                method,
                reason: "the server said +OK before it was sent the credentials",
            });
        }
    };
    let answer = cram_md5_answer(user, pw, &challenge)?;
    conn.queue_sasl(answer.as_bytes());
    conn.flush().await?;
    final_reply(conn, method).await
}

async fn scram_login(conn: &mut Connection, user: &str, pw: &[u8]) -> Result<(), AuthError> {
    let method = AuthMethod::ScramSha256;
    let mut raw = [0u8; SCRAM_NONCE_BYTES];
    getrandom::fill(&mut raw).map_err(|_| AuthError::Mechanism {
        method,
        reason: "no random bytes for the nonce",
    })?;
    let client = ScramClient::new(user, &BASE64.encode(raw));
    conn.queue(Command::Auth {
        mechanism: Some("SCRAM-SHA-256".into()),
        initial_response: Some(Secret::new(BASE64.encode(client.client_first()))),
    });
    conn.flush().await?;
    let server_first = match conn.sasl_turn().await? {
        SaslTurn::Challenge(c) => challenge_bytes(method, &c)?,
        SaslTurn::Done(reply) => {
            refused_unless_ok(method, &reply.status)?;
            return Err(AuthError::Mechanism {
                method,
                reason: "the server said +OK before it was sent a proof",
            });
        }
    };
    let (client_final, expected) = match client.client_final(&server_first, pw) {
        Ok(v) => v,
        Err(reason) => {
            cancel(conn).await;
            return Err(AuthError::Mechanism { method, reason });
        }
    };
    conn.queue_sasl(client_final.as_bytes());
    conn.flush().await?;
    match conn.sasl_turn().await? {
        SaslTurn::Challenge(c) => {
            let server_final = challenge_bytes(method, &c)?;
            if let Err(reason) = expected.verify(&server_final) {
                cancel(conn).await;
                return Err(AuthError::Mechanism { method, reason });
            }
            conn.queue_sasl(b"");
            conn.flush().await?;
            final_reply(conn, method).await
        }
        SaslTurn::Done(reply) => {
            refused_unless_ok(method, &reply.status)?;
            Err(AuthError::Mechanism {
                method,
                reason: "the server accepted the login without proving that it knows the password (no SCRAM server signature)",
            })
        }
    }
}

/// The client side of a SCRAM-SHA-256 exchange without channel binding (GS2 header `n,,`).
pub struct ScramClient {
    client_first_bare: String,
    nonce: String,
}

/// The server signature a SCRAM exchange must end with. Deliberately not `Debug`.
pub struct ServerSignature([u8; 32]);

impl ServerSignature {
    /// Checks the server-final message `v=<base64 signature>` (RFC 5802 section 7), in
    /// constant time. `e=...` is the server's error.
    pub fn verify(&self, server_final: &[u8]) -> Result<(), &'static str> {
        let text = std::str::from_utf8(server_final)
            .map_err(|_| "the SCRAM server-final message is not UTF-8")?;
        if text.starts_with("e=") {
            return Err("the server ended the SCRAM exchange with an error");
        }
        let sig = text
            .split(',')
            .next()
            .and_then(|v| v.strip_prefix("v="))
            .ok_or("the SCRAM server-final message has no v=")?;
        let sig = BASE64
            .decode(sig)
            .map_err(|_| "the SCRAM server signature is not valid base64")?;
        if bool::from(sig.as_slice().ct_eq(&self.0[..])) {
            Ok(())
        } else {
            Err("the server's SCRAM signature is wrong: it does not know the password, so it is not the server it claims to be")
        }
    }
}

impl ScramClient {
    /// An exchange for `user` with the client nonce `nonce` (printable, no comma).
    pub fn new(user: &str, nonce: &str) -> Self {
        let name = user.replace('=', "=3D").replace(',', "=2C");
        Self {
            client_first_bare: format!("n={name},r={nonce}"),
            nonce: nonce.to_string(),
        }
    }

    /// The client-first message.
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// The client-final message for `server_first`, and the signature the server must then
    /// show. Refuses a nonce that does not extend ours, an iteration count outside 4096 to
    /// 10,000,000 (fewer makes guessing the password from a recorded exchange cheap; more is a
    /// way to make the client burn CPU), and mandatory extensions (`m=`).
    pub fn client_final(
        &self,
        server_first: &[u8],
        password: &[u8],
    ) -> Result<(String, ServerSignature), &'static str> {
        let text = std::str::from_utf8(server_first)
            .map_err(|_| "the SCRAM server-first message is not UTF-8")?;
        if text.starts_with("m=") {
            return Err("the server asks for a SCRAM extension facteur does not know (m=)");
        }
        let mut attrs = text.split(',');
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or("the SCRAM server-first message does not start with r=")?;
        if !nonce.starts_with(&self.nonce)
            || nonce.len() == self.nonce.len()
            || !nonce
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
        {
            return Err("the SCRAM server nonce does not extend the client's");
        }
        let salt = attrs
            .next()
            .and_then(|a| a.strip_prefix("s="))
            .and_then(|s| BASE64.decode(s).ok())
            .filter(|s| !s.is_empty())
            .ok_or("the SCRAM server-first message has no valid salt (s=)")?;
        let iterations: u32 = attrs
            .next()
            .and_then(|a| a.strip_prefix("i="))
            .and_then(|i| parse_decimal(i.as_bytes()))
            .and_then(|i| u32::try_from(i).ok())
            .ok_or("the SCRAM server-first message has no valid iteration count (i=)")?;
        if !(SCRAM_MIN_ITERATIONS..=SCRAM_MAX_ITERATIONS).contains(&iterations) {
            return Err("the SCRAM iteration count is outside 4096 to 10000000");
        }
        let (client_key, keys) = ScramKeys::derive_with_client_key(password, &salt, iterations);
        // c=biws: the base64 of the GS2 header "n,,".
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{text},{without_proof}", self.client_first_bare);
        let signature = hmac_sha256(&keys.stored_key, &[auth_message.as_bytes()]);
        let mut proof = [0u8; 32];
        for ((p, k), s) in proof.iter_mut().zip(client_key.expose()).zip(signature) {
            *p = k ^ s;
        }
        let server_signature = hmac_sha256(&keys.server_key, &[auth_message.as_bytes()]);
        Ok((
            format!("{without_proof},p={}", BASE64.encode(proof)),
            ServerSignature(server_signature),
        ))
    }
}

/// APOP's digest (RFC 1939 section 7): MD5 of the timestamp (angle brackets included) and the
/// password, in lowercase hex.
pub fn apop_digest(timestamp: &str, password: &[u8]) -> String {
    let mut md5 = Md5::new();
    md5.update(timestamp.as_bytes());
    md5.update(password);
    hex(&md5.finalize())
}

/// CRAM-MD5's answer (RFC 2195): the user name, a space, and HMAC-MD5(password, challenge) in
/// lowercase hex.
pub fn cram_md5_answer(user: &str, password: &[u8], challenge: &[u8]) -> Result<String, AuthError> {
    let mut mac =
        <Hmac<Md5> as Mac>::new_from_slice(password).map_err(|_| AuthError::Mechanism {
            method: AuthMethod::CramMd5,
            reason: "HMAC-MD5 refused the key",
        })?;
    mac.update(challenge);
    Ok(format!("{user} {}", hex(&mac.finalize().into_bytes())))
}

/// SASL PLAIN's message (RFC 4616): no authorization identity, the user, the password.
pub fn plain_message(user: &str, password: &[u8]) -> Secret<Vec<u8>> {
    let mut m = Vec::with_capacity(user.len() + password.len() + 2);
    m.push(0);
    m.extend_from_slice(user.as_bytes());
    m.push(0);
    m.extend_from_slice(password);
    Secret::new(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use facteur_auth::{
        Mechanism, Nonces, PasswdDb, SaslContext, SaslExchange, SaslOutcome, SaslStep,
    };

    #[test]
    fn scram_rfc7677_vector() {
        let client = ScramClient::new("user", "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(client.client_first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first =
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let (client_final, sig) = client.client_final(server_first, b"pencil").unwrap();
        assert_eq!(
            client_final,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert_eq!(
            sig.verify(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Ok(())
        );
        // One bit off, an error, or garbage: refused.
        assert!(sig
            .verify(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G5=")
            .is_err());
        assert!(sig.verify(b"e=invalid-proof").is_err());
        assert!(sig.verify(b"x").is_err());
        assert!(sig.verify(b"v=!!").is_err());
    }

    #[test]
    fn scram_refuses_bad_server_first_messages() {
        let client = ScramClient::new("user", "abc");
        for bad in [
            &b"r=xyz123,s=c2FsdA==,i=4096"[..],
            b"r=abc,s=c2FsdA==,i=4096",
            b"r=abcdef,s=,i=4096",
            b"r=abcdef,s=!!,i=4096",
            b"r=abcdef,s=c2FsdA==,i=4095",
            b"r=abcdef,s=c2FsdA==,i=99999999999",
            b"r=abcdef,s=c2FsdA==,i=-1",
            b"r=abcdef,s=c2FsdA==",
            b"m=ext,r=abcdef,s=c2FsdA==,i=4096",
            b"s=c2FsdA==,r=abcdef,i=4096",
            b"\xff",
        ] {
            assert!(
                client.client_final(bad, b"pw").is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(client
            .client_final(b"r=abcdef,s=c2FsdA==,i=4096,x=ext", b"pw")
            .is_ok());
    }

    #[test]
    fn scram_names_are_escaped() {
        let c = ScramClient::new("a=b,c", "n");
        assert_eq!(c.client_first(), "n,,n=a=3Db=2Cc,r=n");
    }

    #[test]
    fn cram_md5_rfc2195_vector() {
        assert_eq!(
            cram_md5_answer(
                "tim",
                b"tanstaaftanstaaf",
                b"<1896.697170952@postoffice.reston.mci.net>"
            )
            .unwrap(),
            "tim b913a602c7eda7a495b4e6e7334d3890"
        );
    }

    #[test]
    fn apop_rfc1939_vector() {
        assert_eq!(
            apop_digest("<1896.697170952@dbc.mtview.ca.us>", b"tanstaaf"),
            "c4c9334bac560ecc979e58001b3e22fb"
        );
    }

    #[test]
    fn plain_message_shape() {
        assert_eq!(plain_message("u", b"p").expose(), b"\0u\0p");
        assert!(!format!("{:?}", plain_message("u", b"hunter2")).contains("hunter2"));
    }

    #[test]
    fn method_names_parse() {
        for m in AuthMethod::STRONGEST_FIRST {
            assert_eq!(m.name().parse::<AuthMethod>(), Ok(m));
        }
        assert_eq!("SCRAM-SHA-256".parse(), Ok(AuthMethod::ScramSha256));
        assert_eq!("Auto".parse(), Ok(AuthMethod::Auto));
        assert!("login".parse::<AuthMethod>().is_err());
    }

    /// A fake server offering SCRAM-SHA-256 that answers the client-final message with
    /// `after_final` (a continuation or a status line).
    fn scram_server(after_final: fn(&str) -> Vec<u8>) -> std::net::SocketAddr {
        let mut stage = 0;
        crate::fake_server("+OK hi\r\n", move |line| {
            if line == "CAPA" {
                return Some(b"+OK\r\nSASL SCRAM-SHA-256\r\n.\r\n".to_vec());
            }
            stage += 1;
            match stage {
                1 => {
                    let first = line.strip_prefix("AUTH SCRAM-SHA-256 ")?;
                    let first = String::from_utf8(BASE64.decode(first).ok()?).ok()?;
                    let nonce = first.split("r=").nth(1)?;
                    let server_first = format!("r={nonce}srv,s=c2FsdHNhbHQ=,i=4096");
                    Some(format!("+ {}\r\n", BASE64.encode(server_first)).into_bytes())
                }
                2 => Some(after_final(line)),
                _ if line == "*" => Some(b"-ERR cancelled\r\n".to_vec()),
                _ => Some(b"+OK\r\n".to_vec()),
            }
        })
    }

    fn try_scram(addr: std::net::SocketAddr) -> Result<AuthMethod, AuthError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut conn = Connection::connect(
                &crate::fake_target(addr),
                std::time::Duration::from_secs(10),
                None,
            )
            .await?;
            login(
                &mut conn,
                "alice",
                &Secret::new("pencil".into()),
                AuthMethod::Auto,
            )
            .await
        })
    }

    #[test]
    fn a_scram_server_that_does_not_prove_itself_is_refused() {
        // +OK with no server signature at all.
        let e = try_scram(scram_server(|_| b"+OK welcome\r\n".to_vec())).unwrap_err();
        assert!(e.to_string().contains("without proving"), "{e}");
        // A signature that is not the right one.
        let e = try_scram(scram_server(|_| {
            format!(
                "+ {}\r\n",
                BASE64.encode(format!("v={}", BASE64.encode([0u8; 32])))
            )
            .into_bytes()
        }))
        .unwrap_err();
        assert!(e.to_string().contains("signature is wrong"), "{e}");
    }

    fn users_db(dir: &tempfile::TempDir) -> PasswdDb {
        let path = dir.path().join("users");
        std::fs::write(&path, "alice:{PLAIN}pencil\n").unwrap();
        PasswdDb::open(path).unwrap()
    }

    /// The client against facteur's own server-side exchange: each side was written on its
    /// own from the RFC, so agreeing is a check of both.
    #[test]
    fn the_app_password_shape() {
        assert!(looks_like_app_password("abcd-efgh-ijkl-mnop-qrst"));
        for not in [
            "abcd-efgh-ijkl-mnop",
            "abcd-efgh-ijkl-mnop-qrst-uvwx",
            "ABCD-efgh-ijkl-mnop-qrst",
            "abcdefghijklmnopqrst",
            "abcd-efgh-ijkl-mnop-qrs1",
            "pencil",
        ] {
            assert!(!looks_like_app_password(not), "{not}");
        }
    }

    #[test]
    fn scram_against_the_server_side() {
        let dir = tempfile::tempdir().unwrap();
        let db = users_db(&dir);
        for (password, succeeds) in [("pencil", true), ("wrong", false)] {
            let client = ScramClient::new("alice", "clientnonce123");
            let first = BASE64.encode(client.client_first());
            let ctx = SaslContext {
                nonces: Some(Nonces::new([7; Nonces::RANDOM_LEN], 0)),
                ..SaslContext::default()
            };
            let (mut server, step) =
                SaslExchange::start(Mechanism::ScramSha256, ctx, Some(&first), &db);
            let SaslStep::Challenge(server_first) = step else {
                panic!("{step:?}");
            };
            let (client_final, sig) = client
                .client_final(&server_first, password.as_bytes())
                .unwrap();
            let step = server.step(&BASE64.encode(client_final), &db);
            if !succeeds {
                assert_eq!(step, SaslStep::Done(SaslOutcome::Failure));
                continue;
            }
            let SaslStep::Challenge(server_final) = step else {
                panic!("{step:?}");
            };
            assert_eq!(sig.verify(&server_final), Ok(()));
            assert!(matches!(
                server.step("", &db),
                SaslStep::Done(SaslOutcome::Success(_))
            ));
        }
    }

    #[test]
    fn cram_md5_against_the_server_side() {
        let dir = tempfile::tempdir().unwrap();
        let db = users_db(&dir);
        let ctx = SaslContext {
            hostname: "test.invalid".into(),
            tls_client_identity: None,
            nonces: Some(Nonces::new([7; Nonces::RANDOM_LEN], 1_700_000_000)),
            bearer_error: Default::default(),
        };
        let (mut server, step) = SaslExchange::start(Mechanism::CramMd5, ctx, None, &db);
        let SaslStep::Challenge(challenge) = step else {
            panic!("{step:?}");
        };
        let answer = cram_md5_answer("alice", b"pencil", &challenge).unwrap();
        assert!(matches!(
            server.step(&BASE64.encode(answer), &db),
            SaslStep::Done(SaslOutcome::Success(_))
        ));
    }
}
