//! The configuration file (TOML), and every limit and default of facteur in one place.
//!
//! Each default below says its unit and why it has that value. Unknown keys are rejected with a
//! message naming the key, so a typo never silently falls back to a default.

use facteur_proto::policy::{Expire, Policy, MAX_LOGIN_DELAY_SECS};
use facteur_proto::Lang;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where `facteur serve` and the tools look for the configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/facteur/facteur.toml";

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub limits: Limits,
    pub auth: AuthSection,
    pub store: StoreSection,
    #[serde(default)]
    pub log: LogSection,
    /// `[tls]`: without it, no STLS and no POP3S.
    #[serde(default)]
    pub tls: Option<TlsSection>,
    /// `[lmtp]`: how LMTP recipients map to users, and the Unix socket's mode.
    #[serde(default)]
    pub lmtp: LmtpSection,
    /// `[policy]`: RFC 2449's LOGIN-DELAY and EXPIRE, server-wide.
    #[serde(default)]
    pub policy: PolicySection,
    /// `[metrics]`: the Prometheus listener.
    #[serde(default)]
    pub metrics: MetricsSection,
    /// `[oauth]` and its `[[oauth.issuer]]` entries: SASL OAUTHBEARER and XOAUTH2.
    #[serde(default)]
    pub oauth: OAuthSection,
}

/// `[oauth]`: bearer-token logins (SASL OAUTHBEARER, RFC 7628, and XOAUTH2). Offered only with
/// at least one `[[oauth.issuer]]`, and only where PLAIN would be (a bearer token is as good
/// as a password to whoever reads it).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthSection {
    /// The `scope` of the error JSON sent for a refused token (RFC 7628 section 3.2.2): what a
    /// client should ask its issuer for. Unset: not sent.
    #[serde(default)]
    pub scope: Option<String>,
    /// The `openid-configuration` URL of the error JSON: where a client finds the issuer.
    #[serde(default)]
    pub openid_configuration: Option<String>,
    /// The trusted certificates (PEM) for the issuers' HTTPS endpoints (`jwks_url`,
    /// `introspection_url`); unset: the system's store.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Seconds one HTTPS request to an issuer may take, connection and TLS included (10).
    #[serde(default = "defaults::oauth_http_timeout_secs")]
    pub http_timeout_secs: u64,
    #[serde(default)]
    pub issuer: Vec<OAuthIssuer>,
}

impl Default for OAuthSection {
    fn default() -> Self {
        Self {
            scope: None,
            openid_configuration: None,
            ca_file: None,
            http_timeout_secs: defaults::oauth_http_timeout_secs(),
            issuer: Vec::new(),
        }
    }
}

/// `[[oauth.issuer]]`: one issuer whose tokens are accepted. Exactly one of `jwks_file`,
/// `jwks_url` and `introspection_url`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthIssuer {
    /// The `iss` of its tokens, exactly (`https://accounts.example.org/realms/mail`).
    pub issuer: String,
    /// What the tokens' `aud` must hold (the client id the issuer knows facteur by).
    pub audience: String,
    /// The JSON Web Key Set in a file (relative to this configuration file).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// The JSON Web Key Set at an `https://` URL (the `jwks_uri` of the issuer's OpenID
    /// configuration).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// RFC 7662 introspection at an `https://` URL, for tokens that are no JWT.
    #[serde(default)]
    pub introspection_url: Option<String>,
    /// The client id for introspection (HTTP Basic).
    #[serde(default)]
    pub client_id: Option<String>,
    /// A file whose first line is the client secret for introspection (never in this file).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// The claim that names the user (`email`, the default; `sub`, `preferred_username`...).
    /// Its value must be a user of the users file or the SQL users.
    #[serde(default = "defaults::oauth_user_claim")]
    pub user_claim: String,
    /// Seconds of clock skew allowed on `exp`, `nbf` and `iat` (60).
    #[serde(default = "defaults::oauth_leeway_secs")]
    pub leeway_secs: u64,
    /// Seconds a key set is used before it is read or fetched again (3600). A token with an
    /// unknown key id fetches it sooner, at most once per 30 s.
    #[serde(default = "defaults::oauth_jwks_refresh_secs")]
    pub jwks_refresh_secs: u64,
    /// Seconds an introspection answer is kept (60; never past the token's `exp`; 0: never).
    #[serde(default = "defaults::oauth_introspection_cache_secs")]
    pub introspection_cache_secs: u64,
}

/// `[policy]`: the server-wide LOGIN-DELAY and EXPIRE of RFC 2449, which a user's own values
/// (the passwd-file's extra fields `login_delay=` and `expire=`, the SQL users' columns
/// `login_delay_secs` and `expire`) replace.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// LOGIN-DELAY: a login sooner than this many seconds after the user's last one is refused
    /// with `-ERR [LOGIN-DELAY]` (once the password is verified). 0 (the default): none.
    #[serde(default)]
    pub login_delay_secs: u32,
    /// EXPIRE: `"never"` (the default), or the days a message stays after its first retrieval
    /// by RETR; 0: deleted at the QUIT of the session that retrieved it.
    #[serde(default)]
    pub expire: ExpireSetting,
}

/// `[policy] expire`: `"never"`, or a number of days (`30` or `"30"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawExpire")]
pub struct ExpireSetting(pub Expire);

#[derive(Deserialize)]
#[serde(untagged)]
enum RawExpire {
    Days(i64),
    Text(String),
}

impl TryFrom<RawExpire> for ExpireSetting {
    type Error = String;

    fn try_from(raw: RawExpire) -> Result<Self, String> {
        let text = match raw {
            RawExpire::Days(d) => d.to_string(),
            RawExpire::Text(t) => t,
        };
        Expire::parse(&text).map(Self).map_err(|_| {
            format!(
                "[policy] expire = {text:?}: expected \"never\" or a number of days, 0 to {}",
                Expire::MAX_DAYS
            )
        })
    }
}

impl PolicySection {
    /// The server-wide policy.
    pub fn policy(&self) -> Policy {
        Policy {
            login_delay: self.login_delay_secs,
            expire: self.expire.0,
        }
    }
}

/// `[metrics]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Where to serve `/metrics` (Prometheus's text format) and `/health` over HTTP, e.g.
    /// `"127.0.0.1:9110"`; unset: no listener (the counts are kept anyway). Put it on a
    /// private address: the figures tell an observer how busy the server is.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

/// An LMTP listener of `[server] listen_lmtp`: `"127.0.0.1:24"` (TCP) or an absolute path
/// (`"/run/facteur/lmtp"`, a Unix socket).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum LmtpListen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl TryFrom<String> for LmtpListen {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if text.starts_with('/') {
            return Ok(Self::Unix(PathBuf::from(text)));
        }
        text.parse().map(Self::Tcp).map_err(|_| {
            format!(
                "{text:?}: expected ADDRESS:PORT (127.0.0.1:24, [::1]:24) or the absolute path \
                 of a Unix socket"
            )
        })
    }
}

impl std::fmt::Display for LmtpListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "{a}"),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// `[lmtp]`: delivery by LMTP (RFC 2033) from an MTA, on `[server] listen_lmtp`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmtpSection {
    /// The domains whose recipients are taken (compared without case); any other gets `550
    /// 5.1.2`. Empty (the default): any domain, the MTA having decided what is local.
    #[serde(default)]
    pub domains: Vec<String>,
    /// The user name of a recipient: false (the default), its local part (`alice` for
    /// `alice@example.org`, exactly as sent: case matters, as in the users file); true, the
    /// whole address with the domain in lower case (`alice@example.org`), for users files that
    /// name users so.
    #[serde(default)]
    pub full_address: bool,
    /// The permissions of a Unix socket of `listen_lmtp` (TOML octal: `0o660`). Whoever may
    /// connect to it may deliver mail to any user.
    #[serde(default = "defaults::lmtp_socket_mode")]
    pub socket_mode: u32,
    /// The group a Unix socket is given (a name from /etc/group, or a gid), so that the MTA's
    /// user in that group may connect (Postfix: `postfix`). Unset: the group facteur starts as.
    #[serde(default)]
    pub socket_group: Option<String>,
}

impl Default for LmtpSection {
    fn default() -> Self {
        Self {
            domains: Vec::new(),
            full_address: false,
            socket_mode: defaults::lmtp_socket_mode(),
            socket_group: None,
        }
    }
}

/// `[tls]`: the certificate for STLS (RFC 2595) and POP3S (RFC 8314).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM file with the certificate chain, leaf first. Reloaded on SIGHUP.
    pub certificate: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1). Reloaded on SIGHUP.
    pub private_key: PathBuf,
    /// PEM file of CAs whose client certificates allow SASL EXTERNAL; unset: none asked.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Where to write every TLS session's secrets in the NSS key log format (Wireshark's
    /// "(Pre)-Master-Secret log"), to decrypt a capture. Off by default; the file must be the
    /// server's user's own, mode 0600 (created so). Warned about at start and at each session.
    #[serde(default)]
    pub key_log: Option<PathBuf>,
}

/// When passwords may cross a connection that is not encrypted.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PlaintextAuth {
    /// Never: USER/PASS, APOP, AUTH PLAIN and LOGIN need TLS.
    Never,
    /// Only from a loopback address (a webmail on the same host, tests).
    Loopback,
    /// Always (for a network you trust entirely; not recommended).
    Always,
}

/// `[server]`: what to listen on and how to greet.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Plain POP3 listeners (port 110 by default), IPv4 and IPv6 alike; STLS is offered there
    /// when `[tls]` is set.
    #[serde(default = "defaults::listen")]
    pub listen: Vec<SocketAddr>,
    /// POP3S listeners (implicit TLS, RFC 8314). Default: port 995 when `[tls]` is set, none
    /// otherwise.
    #[serde(default)]
    pub listen_tls: Option<Vec<SocketAddr>>,
    /// The host name in the greeting and in APOP timestamps; the machine's name if unset.
    #[serde(default)]
    pub hostname: Option<String>,
    /// The text of the greeting after `+OK`. Unset: facteur's own, in `language`
    /// ("facteur POP3 server ready").
    #[serde(default)]
    pub greeting: Option<String>,
    /// The language of the human-readable texts until a client chooses one with LANG (RFC 6856
    /// section 3), and the one `LANG *` chooses: a tag `LANG` lists, `en` or `fr`. English by
    /// default, as RFC 2277 section 4.5 asks of a default.
    #[serde(default = "defaults::language")]
    pub language: String,
    /// Answer the obsolete LAST command of RFC 1460. Off: RFC 1725 removed it, and clients that
    /// still send it fall back to UIDL when it is refused.
    #[serde(default)]
    pub enable_last: bool,
    /// The user `facteur serve` runs as once its listeners are bound and its certificate is read:
    /// a name from /etc/passwd, or a uid. Unset: the user that started it, which must not be root
    /// (see `allow_root`); under systemd, `User=` does the same. This user must be able to read
    /// and write the maildrops and to read the passwd-file (which is loaded after the switch);
    /// the TLS files are read before it, but a SIGHUP reload reads them as this user.
    #[serde(default)]
    pub user: Option<String>,
    /// The group to run as: a name from /etc/group, or a gid. Unset: the primary group of `user`.
    /// Supplementary groups are always cleared.
    #[serde(default)]
    pub group: Option<String>,
    /// Serve mail as root. Off (the default), `facteur serve` started as root without `user`
    /// refuses to start: as root, one flaw in the server, or a link planted in a maildrop, reaches
    /// every file of the system and every user's mail at once. Only for a system where root is
    /// confined anyway (some containers), and even there `user` is better.
    #[serde(default)]
    pub allow_root: bool,
    /// The load balancers trusted to name the client with a PROXY protocol header (HAProxy's
    /// v1 or v2), as CIDR blocks: `["10.0.0.0/8", "127.0.0.1/32", "::1/128"]`. A connection from
    /// one of them must start with a header (within `limits.proxy_header_timeout_secs`), and
    /// everything after it (the per-address cap, failed-login penalties, the plaintext policy,
    /// the logs) sees the client the header names. A connection from any other address is
    /// served as it is, and a header it sends is only a bad command. Empty (the default): off.
    #[serde(default)]
    pub proxy_protocol: Vec<Cidr>,
    /// LMTP listeners (RFC 2033), for an MTA to deliver mail: `"127.0.0.1:24"`, or the absolute
    /// path of a Unix socket (`"/run/facteur/lmtp"`, mode `[lmtp] socket_mode`). LMTP has no
    /// login: whoever reaches a listener can deliver to every user, so listen on loopback or a
    /// socket only the MTA can open. Empty (the default): no LMTP.
    #[serde(default)]
    pub listen_lmtp: Vec<LmtpListen>,
    /// POP2 listeners (RFC 937; its port is 109): `["0.0.0.0:109"]`. The same maildrops,
    /// users, lock, caps and PROXY handling as POP3. POP2 has no TLS: every password comes in
    /// clear, so `[auth] plaintext_auth` decides who may log in (the default, `loopback`,
    /// allows clients on this host only). Empty (the default): no POP2.
    #[serde(default)]
    pub listen_pop2: Vec<SocketAddr>,
}

/// A block of IP addresses, `ADDRESS/PREFIX` (`10.0.0.0/8`, `2001:db8::/32`, `::1/128`), as
/// `[server] proxy_protocol` lists them. Strict: the prefix length is required and in range,
/// written without leading zeros, and the address has no bits set past it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why a text is not a CIDR block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?}: expected ADDRESS/PREFIX, such as 10.0.0.0/8 or ::1/128")]
    Shape(String),
    #[error("{0:?}: not an IP address")]
    Address(String),
    #[error("{text:?}: the prefix length must be a number from 0 to {max}")]
    Prefix { text: String, max: u8 },
    #[error("{text:?}: the address has bits set past the prefix; did you mean {network}?")]
    HostBits { text: String, network: String },
}

impl Cidr {
    /// Whether `ip` is in this block; an IPv4-mapped IPv6 address (a dual-stack listener's
    /// view of an IPv4 peer) counts as the IPv4 address it is.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(ip) & mask == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(ip) & mask == u128::from(net)
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, CidrError> {
        let (address, prefix) = text
            .split_once('/')
            .ok_or_else(|| CidrError::Shape(text.to_string()))?;
        let network: IpAddr = address
            .parse()
            .map_err(|_| CidrError::Address(text.to_string()))?;
        let max: u8 = if network.is_ipv4() { 32 } else { 128 };
        let bad_prefix = || CidrError::Prefix {
            text: text.to_string(),
            max,
        };
        let digits_ok = !prefix.is_empty()
            && prefix.len() <= 3
            && prefix.bytes().all(|b| b.is_ascii_digit())
            && (prefix == "0" || !prefix.starts_with('0'));
        let prefix: u8 = match prefix.parse() {
            Ok(p) if digits_ok && p <= max => p,
            _ => return Err(bad_prefix()),
        };
        let block = Cidr { network, prefix };
        let masked = match network {
            IpAddr::V4(ip) => IpAddr::V4(
                (u32::from(ip) & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)).into(),
            ),
            IpAddr::V6(ip) => IpAddr::V6(
                (u128::from(ip) & u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0))
                    .into(),
            ),
        };
        if masked != network {
            return Err(CidrError::HostBits {
                text: text.to_string(),
                network: Cidr {
                    network: masked,
                    ..block
                }
                .to_string(),
            });
        }
        Ok(block)
    }
}

impl TryFrom<String> for Cidr {
    type Error = CidrError;

    fn try_from(text: String) -> Result<Self, CidrError> {
        text.parse()
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// `[limits]`: every limit of the server, with its unit in its name.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Connections served at once, all sources together; more are refused with `-ERR [SYS/TEMP]`.
    /// A session costs a few KiB, so the bound is file descriptors, not memory.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Connections served at once from one IP address: enough for a NAT of users, too few for
    /// one host to take the whole server.
    #[serde(default = "defaults::max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Seconds from the accept to a successful login, TLS handshake included: a deadline, not an
    /// idle timer, so a client that sends a byte (or a NOOP) every few seconds is cut all the
    /// same. A login needs only a few round trips.
    #[serde(default = "defaults::login_timeout_secs")]
    pub login_timeout_secs: u64,
    /// Seconds a logged-in client may stay idle. RFC 1939 section 3 requires at least 10 minutes.
    #[serde(default = "defaults::idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    /// Seconds one write to a client may wait for the client to read (a block of a message, a
    /// listing, a reply). A client that stops reading is cut after this, without UPDATE, and its
    /// maildrop lock is released; the same value is the socket's TCP_USER_TIMEOUT, so a peer
    /// that vanished is found as fast. Sixty seconds is far more than any living client needs to
    /// take one block.
    #[serde(default = "defaults::write_timeout_secs")]
    pub write_timeout_secs: u64,
    /// Milliseconds before the first failed login of a source or user name is answered; each
    /// further failure doubles it (per source address and per user name), up to the cap below.
    #[serde(default = "defaults::failed_login_delay_ms")]
    pub failed_login_delay_ms: u64,
    /// The cap of that delay, in milliseconds.
    #[serde(default = "defaults::max_failed_login_delay_ms")]
    pub max_failed_login_delay_ms: u64,
    /// Seconds without a failure after which a source's or user's failures are forgotten.
    #[serde(default = "defaults::failed_login_forget_secs")]
    pub failed_login_forget_secs: u64,
    /// Failed logins in one connection before it is closed (a client that knows the password
    /// needs one try; a guesser must reconnect and pay the TCP and TLS handshakes).
    #[serde(default = "defaults::max_failed_logins")]
    pub max_failed_logins: u32,
    /// Threads that check passwords, so checks running at once. A memory-hard hash (ARGON2ID)
    /// takes its memory cost (19 MiB by default) for each check: this bounds that memory and
    /// keeps a login flood from starving the threads that stream mail. Logins beyond it queue.
    #[serde(default = "defaults::max_concurrent_logins")]
    pub max_concurrent_logins: usize,
    /// Bad commands (unknown, malformed, out of state, too long) before the connection is closed.
    #[serde(default = "defaults::max_bad_commands")]
    pub max_bad_commands: u32,
    /// Login attempts (PASS, APOP, or AUTH with a mechanism) in one connection before it is
    /// closed, whatever their outcome: a client that knows its password needs one or two, and
    /// each attempt may cost a password hash, so one connection cannot buy unbounded hash work.
    /// Failed logins meet `max_failed_logins` first; this one bounds the rest (cancelled or
    /// malformed SASL exchanges, refused credentials).
    #[serde(default = "defaults::max_auth_attempts")]
    pub max_auth_attempts: u32,
    /// Seconds that sessions get to finish after SIGTERM/SIGINT before they are cut (without
    /// applying their deletions).
    #[serde(default = "defaults::shutdown_grace_secs")]
    pub shutdown_grace_secs: u64,
    /// Seconds a peer listed in `[server] proxy_protocol` has, from the accept, to send its
    /// PROXY header. A load balancer sends it at once, with the connection; the time also
    /// counts in `login_timeout_secs`.
    #[serde(default = "defaults::proxy_header_timeout_secs")]
    pub proxy_header_timeout_secs: u64,
    /// The largest message accepted by LMTP, in octets (announced as SIZE; a larger MAIL SIZE or
    /// body is refused with `552 5.3.4`).
    #[serde(default = "defaults::max_message_size")]
    pub max_message_size: u64,
    /// Recipients of one LMTP transaction; more get `452 4.5.3` and the MTA sends them in
    /// another. RFC 5321 section 4.5.3.1.8 asks for at least 100.
    #[serde(default = "defaults::max_lmtp_recipients")]
    pub max_lmtp_recipients: usize,
    /// LMTP connections served at once; more are answered `421 4.3.2` and closed. An MTA opens
    /// a few (Postfix: `lmtp_destination_concurrency_limit`, 20 by default).
    #[serde(default = "defaults::max_lmtp_connections")]
    pub max_lmtp_connections: usize,
    /// Seconds an LMTP connection waits for each command, each block of a message, and each
    /// write: RFC 5321 section 4.5.3.2 asks servers for 5 minutes.
    #[serde(default = "defaults::lmtp_timeout_secs")]
    pub lmtp_timeout_secs: u64,
}

/// `[auth]`: who may log in.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// Where the users are: `passwd-file` (the default: `passwd_file`) or `sql` (the `users`
    /// table of a PostgreSQL database that every node shares, with the failed-login penalties).
    #[serde(default)]
    pub backend: AuthBackend,
    /// The users file, in Dovecot's passwd-file format (backend `passwd-file`).
    #[serde(default)]
    pub passwd_file: PathBuf,
    /// Backend `passwd-file`: where the server records when each app password was last used
    /// (at most once a minute each); the default is `<passwd_file>.app-passwords.last-used`.
    /// The server must be able to write to its directory: set it to a state directory when
    /// the users file's is read-only for the server (as with the systemd unit).
    #[serde(default)]
    pub app_password_last_used: Option<PathBuf>,
    /// The database of backend `sql` when the store is not in one (`[store] backend =
    /// "maildir"`); with the PostgreSQL store, the users live in its database (`[store] url`)
    /// and this key is refused.
    #[serde(default)]
    pub url: Option<String>,
    /// Backend `sql`: the most failed-login penalty rows (sources and user names) kept in the
    /// database; past it, each cleaning evicts the oldest. A row is about 100 bytes.
    #[serde(default = "defaults::penalty_max_rows")]
    pub penalty_max_rows: u64,
    /// Backend `sql`: seconds between two cleanings of the expired penalty rows by each node.
    #[serde(default = "defaults::penalty_clean_secs")]
    pub penalty_clean_secs: u64,
    /// Offer APOP (RFC 1939 section 7) to users whose password is stored as `{PLAIN}`.
    #[serde(default)]
    pub apop: bool,
    /// When USER/PASS, APOP, AUTH PLAIN and AUTH LOGIN are allowed without TLS: "never",
    /// "loopback" (the default: only from 127.0.0.0/8 and ::1) or "always".
    #[serde(default = "defaults::plaintext_auth")]
    pub plaintext_auth: PlaintextAuth,
    /// SASL mechanisms to offer (RFC 5034), among PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-256 and
    /// EXTERNAL. Offer only what your users file can serve: SCRAM-SHA-256 needs passwords stored
    /// as {SCRAM-SHA-256} or {PLAIN}; CRAM-MD5 needs {CRAM-MD5} or {PLAIN}; EXTERNAL needs
    /// `[tls] client_ca`. PLAIN and LOGIN follow `plaintext_auth`.
    #[serde(default = "defaults::sasl_mechanisms")]
    pub sasl: Vec<String>,
    /// Seconds a successful USER/PASS, AUTH PLAIN or AUTH LOGIN verification is remembered, so
    /// that a client polling every few minutes with the same password is not hashed each time
    /// (like saslauthd's `-c`); 0 turns the cache off. What is kept is an HMAC, under a key drawn
    /// at random at each start, of the user, the password field of the users file and the
    /// password: never a password or a hash; a changed password or hash no longer matches.
    /// Failures are never remembered, so a wrong password always costs the full hash.
    ///
    /// The trade-off: whoever gets a memory dump of the server can test guesses against the
    /// remembered logins at the speed of an HMAC instead of the cost of the password scheme.
    #[serde(default = "defaults::cache_ttl_secs")]
    pub cache_ttl_secs: u64,
    /// The most verifications remembered at once; when full, expired ones go first, then the
    /// oldest half.
    #[serde(default = "defaults::cache_max_entries")]
    pub cache_max_entries: usize,
}

/// `[auth] backend`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthBackend {
    #[default]
    PasswdFile,
    Sql,
}

impl std::fmt::Display for AuthBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::PasswdFile => "passwd-file",
            Self::Sql => "sql",
        })
    }
}

impl AuthSection {
    /// Where the last use of app passwords is recorded (backend `passwd-file`).
    pub fn app_password_last_used_path(&self) -> PathBuf {
        self.app_password_last_used
            .clone()
            .unwrap_or_else(|| facteur_auth::default_last_used_path(&self.passwd_file))
    }

    /// Seconds between two cleanings of the shared penalty table.
    pub fn penalty_clean_every(&self) -> Duration {
        Duration::from_secs(self.penalty_clean_secs)
    }

    /// The configured mechanisms, upper-cased.
    pub fn sasl_mechanisms(&self) -> Vec<String> {
        self.sasl.iter().map(|m| m.to_ascii_uppercase()).collect()
    }

    /// How long a successful password verification is remembered (zero: not at all).
    pub fn cache_ttl(&self) -> Duration {
        Duration::from_secs(self.cache_ttl_secs)
    }
}

/// `[store]`: where the maildrops are.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `maildir` (the default: Maildirs on this host) or `postgresql` (maildrops in a database
    /// that any number of facteur nodes share).
    #[serde(default)]
    pub backend: StoreBackend,
    /// The Maildir of a user (backend `maildir`): `%u` user name, `%d` domain, `%n` local part,
    /// `%h` home (from the users file), `%%` a percent sign. Example: `/var/mail/%d/%n/Maildir`.
    #[serde(default)]
    pub maildir: String,
    /// The database (backend `postgresql`), as libpq writes it: `host=/run/postgresql
    /// dbname=mail user=facteur` or `postgresql://facteur@db.example.org/mail`.
    #[serde(default)]
    pub url: Option<String>,
    /// Connections to the database this process opens at most. A session holds one only for
    /// the length of a query, so a few dozen serve thousands of sessions; the database's own
    /// `max_connections`, shared by every node, bounds the sum.
    #[serde(default = "defaults::pool_size")]
    pub pool_size: usize,
    /// Seconds a maildrop stays locked after the node serving it died without a word: the
    /// lease of a session is renewed every third of this while the session lives, so a node
    /// has to miss two renewals in a row to lose it. Shorter: a crash locks users out for less
    /// time; longer: a slow database or a network hiccup costs fewer sessions.
    #[serde(default = "defaults::lease_secs")]
    pub lease_secs: u64,
    /// How lease changes commit on PostgreSQL: `"async"` (the default: without waiting for
    /// the database's disk, more sessions per second, and safe: a database crash can only
    /// make a lease look free or held again, and UPDATE's fencing commits durably) or `"sync"`
    /// (for a PostgreSQL-wire database that refuses `synchronous_commit = off`). Deliveries
    /// and UPDATE always wait for the disk.
    #[serde(default)]
    pub lease_commit: LeaseCommitSetting,
    /// Where a Maildir's unique-ids come from (backend `maildir`): `facteur`, the file names;
    /// `dovecot`, Dovecot's `dovecot-uidlist` (its default `%08Xu%08Xv`, or what
    /// `pop3_save_uidl` saved), so that clients that leave mail on the server do not download
    /// it again after a move from Dovecot. `facteur migrate` carries the one its source uses.
    #[serde(default)]
    pub uidl: UidlSetting,
    /// How mail is kept on this host (backend `maildir`): `maildir` (the default), or `mbox`,
    /// one file per user as MTAs write in `/var/mail` (named by `mbox`).
    #[serde(default)]
    pub format: StoreFormat,
    /// How delivery (`facteur deliver`, LMTP) stores line ends in a Maildir: `crlf` (the
    /// default: the form RETR sends, which Maildir readers accept; a large message with no
    /// line starting with '.' then goes out by `sendfile`, never through facteur's memory), or
    /// `lf` (as given: LF, the way Postfix's own Maildir delivery stores mail).
    #[serde(default)]
    pub line_ends: LineEndsSetting,
    /// The mbox file of a user (format `mbox`), with the escapes of `maildir`. Example:
    /// `/var/mail/%u`. The directory above it must exist; facteur writes its dotlock, its
    /// session lock and its UPDATE journal there.
    #[serde(default)]
    pub mbox: String,
}

/// `[store] format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreFormat {
    #[default]
    Maildir,
    Mbox,
}

/// `[store] line_ends`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineEndsSetting {
    #[default]
    Crlf,
    Lf,
}

impl From<LineEndsSetting> for facteur_store::LineEnds {
    fn from(s: LineEndsSetting) -> Self {
        match s {
            LineEndsSetting::Crlf => Self::Crlf,
            LineEndsSetting::Lf => Self::Lf,
        }
    }
}

/// `[store] lease_commit`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseCommitSetting {
    #[default]
    Async,
    Sync,
}

#[cfg(feature = "postgres")]
impl From<LeaseCommitSetting> for facteur_store::postgres::LeaseCommit {
    fn from(s: LeaseCommitSetting) -> Self {
        match s {
            LeaseCommitSetting::Async => Self::Asynchronous,
            LeaseCommitSetting::Sync => Self::Synchronous,
        }
    }
}

/// `[store] uidl`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UidlSetting {
    #[default]
    Facteur,
    Dovecot,
}

impl From<UidlSetting> for facteur_store::UidlScheme {
    fn from(setting: UidlSetting) -> Self {
        match setting {
            UidlSetting::Facteur => Self::Facteur,
            UidlSetting::Dovecot => Self::Dovecot,
        }
    }
}

/// `[store] backend`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    #[default]
    Maildir,
    Postgresql,
}

impl std::fmt::Display for StoreBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Maildir => "maildir",
            Self::Postgresql => "postgresql",
        })
    }
}

impl StoreSection {
    /// How long a lease lasts without renewal.
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }
}

/// `[log]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// One of error, warn, info, debug, trace.
    #[serde(default = "defaults::log_level")]
    pub level: String,
    /// Seconds: refused connections (the global or per-address cap) are logged one by one only
    /// at the start of a burst; the rest are counted and summed up in one line per this many
    /// seconds, so that a flood cannot fill the disk with log lines. 0 logs every refusal.
    #[serde(default = "defaults::refusal_summary_secs")]
    pub refusal_summary_secs: u64,
    /// `"text"` (the default: one line per event, `key=value` fields) or `"json"` (one JSON
    /// object per line, the same fields as keys beside `timestamp`, `level` and `message`, for
    /// log shippers).
    #[serde(default)]
    pub format: LogFormat,
}

/// `[log] format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The defaults, each with its reason at its field above.
pub mod defaults {
    use std::net::SocketAddr;

    /// The longest command line: 255 octets including CRLF (RFC 2449 section 4). A rule of
    /// POP3, so defined once in the protocol crate; named here to stand with the other limits.
    pub use facteur_proto::line::MAX_COMMAND_LINE;
    /// The longest PROXY protocol header read from a trusted load balancer, in octets (a v1
    /// line is at most 107; a v2 header with its TLVs, at most this). Defined with the parser
    /// in the protocol crate; named here to stand with the other limits.
    pub use facteur_proto::proxy::MAX_HEADER_LEN as MAX_PROXY_HEADER;
    /// Octets read from a message file at a time while streaming RETR/TOP: large enough for few
    /// system calls, small enough that thousands of concurrent RETRs stay in memory.
    pub const MESSAGE_CHUNK: usize = 64 * 1024;
    /// At most this many octets of a message go out by one `sendfile` call (a message stored
    /// as its own wire form), so that each call waits for the disk and the peer only so long
    /// before the write deadline is looked at again.
    pub const SENDFILE_CHUNK: u64 = 1024 * 1024;
    /// Messages larger than this (wire octets) are read in `LARGE_MESSAGE_CHUNK` blocks, and
    /// go out by `sendfile` over plain TCP when stored as their own wire form (smaller ones go
    /// out in one write with their `+OK` line and terminator, which costs less).
    pub const LARGE_MESSAGE: u64 = 1024 * 1024;
    /// Blocks for large messages: fewer trips to the blocking pool per message. While one block
    /// is sent the next is read and encoded, so a large RETR holds one block and two output
    /// buffers of about its size (1.5 MiB); few sessions fetch large messages at once, so the
    /// memory is affordable. (1 MiB blocks were no faster here; 256 KiB, 10% slower.)
    pub const LARGE_MESSAGE_CHUNK: usize = 512 * 1024;
    /// Output is written to the socket once this many octets are queued during a listing or RETR.
    pub const WRITE_HIGH_WATER: usize = 64 * 1024;
    /// Input read buffer per connection: commands are short, and an idle session must be cheap.
    pub const READ_BUFFER: usize = 1024;
    /// Silence on a connection before the kernel's first keepalive probe: far below the idle
    /// timeout, so a peer that vanished is found while its session still waits on it.
    pub const KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(60);
    /// Between keepalive probes.
    pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
    /// Unanswered probes before the kernel drops the connection (60 s + 6 x 10 s: two minutes).
    pub const KEEPALIVE_PROBES: u32 = 6;
    /// The longest `[auth] cache_ttl_secs`, one day: a remembered login lasts at most that long
    /// in memory, and a client that polls once a day pays one hash a day at most anyway.
    pub const MAX_CACHE_TTL_SECS: u64 = 24 * 3600;
    /// The largest `[auth] cache_max_entries`: an entry takes about 50 to 110 bytes (a 32-byte
    /// tag, its time, the hash table's slack), so this is at most about 1 GB.
    pub const MAX_CACHE_ENTRIES: usize = 10_000_000;

    pub fn listen() -> Vec<SocketAddr> {
        vec![
            SocketAddr::from(([0, 0, 0, 0], 110)),
            SocketAddr::from(([0u16; 8], 110)),
        ]
    }
    pub fn language() -> String {
        "en".into()
    }
    pub fn max_connections() -> usize {
        10_000
    }
    pub fn max_connections_per_ip() -> usize {
        50
    }
    pub fn login_timeout_secs() -> u64 {
        60
    }
    pub fn idle_timeout_secs() -> u64 {
        600
    }
    pub fn write_timeout_secs() -> u64 {
        60
    }
    pub fn failed_login_delay_ms() -> u64 {
        500
    }
    pub fn max_failed_login_delay_ms() -> u64 {
        15_000
    }
    pub fn failed_login_forget_secs() -> u64 {
        900
    }
    pub fn max_failed_logins() -> u32 {
        3
    }
    pub fn listen_tls() -> Vec<SocketAddr> {
        vec![
            SocketAddr::from(([0, 0, 0, 0], 995)),
            SocketAddr::from(([0u16; 8], 995)),
        ]
    }
    /// Ten seconds: an issuer that takes longer is down for a login waiting on it.
    pub fn oauth_http_timeout_secs() -> u64 {
        10
    }
    /// The claim most issuers fill with the address a mail user is known by.
    pub fn oauth_user_claim() -> String {
        "email".into()
    }
    /// One minute of clock skew, as most JWT libraries allow.
    pub fn oauth_leeway_secs() -> u64 {
        60
    }
    /// An hour: issuers announce new keys well before they sign with them.
    pub fn oauth_jwks_refresh_secs() -> u64 {
        3600
    }
    /// A minute: a revoked token is refused within a minute, and a client polling every few
    /// minutes costs the issuer one request per login at most.
    pub fn oauth_introspection_cache_secs() -> u64 {
        60
    }
    pub fn sasl_mechanisms() -> Vec<String> {
        vec!["PLAIN".into(), "LOGIN".into()]
    }
    pub fn plaintext_auth() -> super::PlaintextAuth {
        super::PlaintextAuth::Loopback
    }
    /// One hour, as Dovecot's `auth_cache_ttl`: a client polling every few minutes pays one
    /// hash an hour, and a remembered login does not outlive the hour.
    pub fn cache_ttl_secs() -> u64 {
        3600
    }
    /// Many more than the users of most servers, and at most about 11 MB.
    pub fn cache_max_entries() -> usize {
        100_000
    }
    /// One per CPU (at least 2): hashing is CPU-bound, more threads only add memory.
    pub fn max_concurrent_logins() -> usize {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .max(2)
    }
    pub fn max_bad_commands() -> u32 {
        20
    }
    pub fn max_auth_attempts() -> u32 {
        10
    }
    pub fn shutdown_grace_secs() -> u64 {
        30
    }
    pub fn proxy_header_timeout_secs() -> u64 {
        5
    }
    pub fn log_level() -> String {
        "info".into()
    }
    pub fn refusal_summary_secs() -> u64 {
        10
    }
    pub fn pool_size() -> usize {
        16
    }
    pub fn lease_secs() -> u64 {
        60
    }
    /// 64 MiB: more than mail systems commonly accept (Postfix's default is 10 MB).
    pub fn max_message_size() -> u64 {
        64 * 1024 * 1024
    }
    pub fn max_lmtp_recipients() -> usize {
        100
    }
    pub fn max_lmtp_connections() -> usize {
        100
    }
    pub fn lmtp_timeout_secs() -> u64 {
        300
    }
    /// Owner and group read and write: the MTA reaches it through `[lmtp] socket_group`.
    pub fn lmtp_socket_mode() -> u32 {
        0o660
    }
    /// As many as the in-memory table holds: about 10 MB of database.
    pub fn penalty_max_rows() -> u64 {
        100_000
    }
    /// A minute: expired rows linger at most that long past `failed_login_forget_secs`.
    pub fn penalty_clean_secs() -> u64 {
        60
    }
    /// `[auth] penalty_max_rows` from 1,000 to 100 million.
    pub const PENALTY_MAX_ROWS: std::ops::RangeInclusive<u64> = 1_000..=100_000_000;
    /// `[auth] penalty_clean_secs` from 1 second to 1 hour.
    pub const PENALTY_CLEAN_SECS: std::ops::RangeInclusive<u64> = 1..=3600;
    /// `[store] lease_secs` from 5 seconds (renewals every 1.7 s would cost more than they
    /// save) to one hour (a crashed node should not lock a user out for longer).
    pub const LEASE_SECS: std::ops::RangeInclusive<u64> = 5..=3600;
    /// `[store] pool_size` from 1 to 1,000 (more connections than that from one node would
    /// only queue inside the database).
    pub const POOL_SIZE: std::ops::RangeInclusive<usize> = 1..=1000;
}

impl ServerSection {
    /// The default language (`language`, checked by `validate`; English if it is not one).
    pub fn default_language(&self) -> Lang {
        Lang::from_tag(&self.language).unwrap_or_default()
    }
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: defaults::listen(),
            listen_tls: None,
            hostname: None,
            greeting: None,
            language: defaults::language(),
            enable_last: false,
            user: None,
            group: None,
            allow_root: false,
            proxy_protocol: Vec::new(),
            listen_lmtp: Vec::new(),
            listen_pop2: Vec::new(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: defaults::max_connections(),
            max_connections_per_ip: defaults::max_connections_per_ip(),
            login_timeout_secs: defaults::login_timeout_secs(),
            idle_timeout_secs: defaults::idle_timeout_secs(),
            write_timeout_secs: defaults::write_timeout_secs(),
            failed_login_delay_ms: defaults::failed_login_delay_ms(),
            max_failed_login_delay_ms: defaults::max_failed_login_delay_ms(),
            failed_login_forget_secs: defaults::failed_login_forget_secs(),
            max_failed_logins: defaults::max_failed_logins(),
            max_concurrent_logins: defaults::max_concurrent_logins(),
            max_bad_commands: defaults::max_bad_commands(),
            max_auth_attempts: defaults::max_auth_attempts(),
            shutdown_grace_secs: defaults::shutdown_grace_secs(),
            proxy_header_timeout_secs: defaults::proxy_header_timeout_secs(),
            max_message_size: defaults::max_message_size(),
            max_lmtp_recipients: defaults::max_lmtp_recipients(),
            max_lmtp_connections: defaults::max_lmtp_connections(),
            lmtp_timeout_secs: defaults::lmtp_timeout_secs(),
        }
    }
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            level: defaults::log_level(),
            refusal_summary_secs: defaults::refusal_summary_secs(),
            format: LogFormat::default(),
        }
    }
}

impl Limits {
    pub fn login_timeout(&self) -> Duration {
        Duration::from_secs(self.login_timeout_secs)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout_secs)
    }
    pub fn failed_login_delay(&self) -> Duration {
        Duration::from_millis(self.failed_login_delay_ms)
    }
    pub fn max_failed_login_delay(&self) -> Duration {
        Duration::from_millis(self.max_failed_login_delay_ms)
    }
    pub fn failed_login_forget(&self) -> Duration {
        Duration::from_secs(self.failed_login_forget_secs)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
    pub fn proxy_header_timeout(&self) -> Duration {
        Duration::from_secs(self.proxy_header_timeout_secs)
    }
    pub fn lmtp_timeout(&self) -> Duration {
        Duration::from_secs(self.lmtp_timeout_secs)
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// Read and check a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parse and check configuration text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let mut cfg: Config = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        cfg.check().map_err(invalid)?;
        // Relative paths in the file are relative to the file, not to the working directory.
        // A bare file name has an empty parent: that is the working directory.
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !cfg.auth.passwd_file.as_os_str().is_empty() && cfg.auth.passwd_file.is_relative() {
            cfg.auth.passwd_file = base.join(&cfg.auth.passwd_file);
        }
        if let Some(p) = &mut cfg.auth.app_password_last_used {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        for p in cfg
            .oauth
            .ca_file
            .iter_mut()
            .chain(cfg.oauth.issuer.iter_mut().flat_map(|i| {
                i.jwks_file
                    .iter_mut()
                    .chain(i.client_secret_file.iter_mut())
            }))
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(tls) = &mut cfg.tls {
            for p in [&mut tls.certificate, &mut tls.private_key]
                .into_iter()
                .chain(tls.client_ca.as_mut())
            {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        for template in [&mut cfg.store.maildir, &mut cfg.store.mbox] {
            if !template.is_empty() && !template.starts_with('/') && !template.starts_with("%h") {
                *template = format!("{}/{}", base.display(), template);
            }
        }
        Ok(cfg)
    }

    fn check_oauth(&self) -> Result<(), String> {
        let o = &self.oauth;
        if o.http_timeout_secs == 0 || o.http_timeout_secs > 300 {
            return Err("[oauth] http_timeout_secs: expected 1 to 300".into());
        }
        for (n, i) in o.issuer.iter().enumerate() {
            let at = format!("[[oauth.issuer]] {} ({:?})", n + 1, i.issuer);
            if i.issuer.is_empty() || i.audience.is_empty() {
                return Err(format!("{at}: issuer and audience must not be empty"));
            }
            let sources = [
                i.jwks_file.is_some(),
                i.jwks_url.is_some(),
                i.introspection_url.is_some(),
            ];
            if sources.iter().filter(|s| **s).count() != 1 {
                return Err(format!(
                    "{at}: give exactly one of jwks_file, jwks_url and introspection_url"
                ));
            }
            for url in i.jwks_url.iter().chain(&i.introspection_url) {
                if !url.starts_with("https://") {
                    return Err(format!("{at}: {url:?} is no https:// URL"));
                }
            }
            let credentials = i.client_id.is_some() && i.client_secret_file.is_some();
            if i.introspection_url.is_some() && !credentials {
                return Err(format!(
                    "{at}: introspection_url needs client_id and client_secret_file"
                ));
            }
            if i.introspection_url.is_none()
                && (i.client_id.is_some() || i.client_secret_file.is_some())
            {
                return Err(format!(
                    "{at}: client_id and client_secret_file are for introspection_url"
                ));
            }
            if i.user_claim.is_empty() {
                return Err(format!("{at}: user_claim must not be empty"));
            }
            if i.leeway_secs > 3600 {
                return Err(format!("{at}: leeway_secs: at most 3600"));
            }
            if !(60..=7 * 86_400).contains(&i.jwks_refresh_secs) {
                return Err(format!("{at}: jwks_refresh_secs: expected 60 to 604800"));
            }
            if i.introspection_cache_secs > 3600 {
                return Err(format!("{at}: introspection_cache_secs: at most 3600"));
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<(), String> {
        let l = &self.limits;
        if self.server.listen.is_empty()
            && self.listen_tls().is_empty()
            && self.server.listen_lmtp.is_empty()
            && self.server.listen_pop2.is_empty()
        {
            return Err("[server] listen: at least one address is needed".into());
        }
        if self.tls.is_none()
            && self
                .server
                .listen_tls
                .as_ref()
                .is_some_and(|l| !l.is_empty())
        {
            return Err("[server] listen_tls needs a [tls] section with a certificate".into());
        }
        if l.max_failed_logins == 0 {
            return Err("[limits] max_failed_logins must be above 0".into());
        }
        if l.idle_timeout_secs < 600 {
            return Err(format!(
                "[limits] idle_timeout_secs = {}: RFC 1939 requires at least 600 (10 minutes)",
                l.idle_timeout_secs
            ));
        }
        if l.login_timeout_secs == 0 || l.max_connections == 0 || l.max_connections_per_ip == 0 {
            return Err("[limits] timeouts and connection caps must be above 0".into());
        }
        if l.proxy_header_timeout_secs == 0 {
            return Err("[limits] proxy_header_timeout_secs must be above 0".into());
        }
        if l.max_concurrent_logins == 0 {
            return Err("[limits] max_concurrent_logins must be above 0".into());
        }
        if l.max_bad_commands == 0 {
            return Err("[limits] max_bad_commands must be above 0".into());
        }
        for m in &self.auth.sasl {
            if !["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256", "EXTERNAL"]
                .contains(&m.to_ascii_uppercase().as_str())
            {
                let hint =
                    if m.eq_ignore_ascii_case("OAUTHBEARER") || m.eq_ignore_ascii_case("XOAUTH2") {
                        " (OAUTHBEARER and XOAUTH2 are offered by [[oauth.issuer]] entries)"
                    } else {
                        ""
                    };
                return Err(format!(
                    "[auth] sasl: unknown mechanism {m:?}; expected PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-256 or EXTERNAL{hint}"
                ));
            }
        }
        self.check_oauth()?;
        if self.auth.cache_ttl_secs > defaults::MAX_CACHE_TTL_SECS {
            return Err(format!(
                "[auth] cache_ttl_secs = {}: at most {} (one day); 0 turns the cache off",
                self.auth.cache_ttl_secs,
                defaults::MAX_CACHE_TTL_SECS
            ));
        }
        if !(1..=defaults::MAX_CACHE_ENTRIES).contains(&self.auth.cache_max_entries) {
            return Err(format!(
                "[auth] cache_max_entries = {}: expected 1 to {}; set cache_ttl_secs = 0 to turn \
                 the cache off",
                self.auth.cache_max_entries,
                defaults::MAX_CACHE_ENTRIES
            ));
        }
        if self
            .auth
            .sasl
            .iter()
            .any(|m| m.eq_ignore_ascii_case("EXTERNAL"))
            && self.tls.as_ref().is_none_or(|t| t.client_ca.is_none())
        {
            return Err("[auth] sasl: EXTERNAL needs [tls] client_ca".into());
        }
        self.check_auth_backend()?;
        match self.store.backend {
            StoreBackend::Maildir if self.store.format == StoreFormat::Mbox => {
                if self.store.mbox.is_empty() {
                    return Err("[store] format = \"mbox\" needs [store] mbox (for example \
                                \"/var/mail/%u\")"
                        .into());
                }
                if !self.store.maildir.is_empty() {
                    return Err(
                        "[store] maildir is for format = \"maildir\"; the format is mbox \
                                (name the files with [store] mbox)"
                            .into(),
                    );
                }
                if self.store.url.is_some() {
                    return Err(
                        "[store] url is for backend = \"postgresql\"; the backend is maildir"
                            .into(),
                    );
                }
                if self.store.uidl != UidlSetting::Facteur {
                    return Err(
                        "[store] uidl is for Maildirs (an mbox's unique-ids come from \
                                its messages)"
                            .into(),
                    );
                }
            }
            StoreBackend::Maildir => {
                if !self.store.mbox.is_empty() {
                    return Err(
                        "[store] mbox is for format = \"mbox\"; the format is maildir".into(),
                    );
                }
                if self.store.maildir.is_empty() {
                    return Err("[store] maildir must not be empty".into());
                }
                if self.store.url.is_some() {
                    return Err(
                        "[store] url is for backend = \"postgresql\"; the backend is maildir"
                            .into(),
                    );
                }
            }
            StoreBackend::Postgresql => {
                if self
                    .store
                    .url
                    .as_deref()
                    .is_none_or(|u| u.trim().is_empty())
                {
                    return Err("[store] backend = \"postgresql\" needs [store] url".into());
                }
                if !self.store.maildir.is_empty() {
                    return Err(
                        "[store] maildir is for backend = \"maildir\"; the backend is postgresql"
                            .into(),
                    );
                }
                if self.store.format != StoreFormat::Maildir || !self.store.mbox.is_empty() {
                    return Err(
                        "[store] format and mbox are for backend = \"maildir\" (files \
                                on this host); the backend is postgresql"
                            .into(),
                    );
                }
                if self.store.uidl != UidlSetting::Facteur {
                    return Err("[store] uidl is for backend = \"maildir\" (the PostgreSQL \
                                store keeps the unique-ids `facteur migrate` copied)"
                        .into());
                }
            }
        }
        if !defaults::POOL_SIZE.contains(&self.store.pool_size) {
            return Err(format!(
                "[store] pool_size = {}: expected {} to {}",
                self.store.pool_size,
                defaults::POOL_SIZE.start(),
                defaults::POOL_SIZE.end()
            ));
        }
        if !defaults::LEASE_SECS.contains(&self.store.lease_secs) {
            return Err(format!(
                "[store] lease_secs = {}: expected {} to {} seconds",
                self.store.lease_secs,
                defaults::LEASE_SECS.start(),
                defaults::LEASE_SECS.end()
            ));
        }
        if !["error", "warn", "info", "debug", "trace"].contains(&self.log.level.as_str()) {
            return Err(format!(
                "[log] level = {:?}: expected error, warn, info, debug or trace",
                self.log.level
            ));
        }
        if self
            .server
            .greeting
            .as_deref()
            .is_some_and(|g| g.contains(['\r', '\n']))
        {
            return Err("[server] greeting must be one line".into());
        }
        if Lang::from_tag(&self.server.language).is_none() {
            let tags: Vec<&str> = Lang::ALL.iter().map(|l| l.tag()).collect();
            return Err(format!(
                "[server] language = {:?}: expected one of {}",
                self.server.language,
                tags.join(", ")
            ));
        }
        for (key, value) in [("user", &self.server.user), ("group", &self.server.group)] {
            if value
                .as_deref()
                .is_some_and(|v| v.is_empty() || v.contains([':', '\n']))
            {
                return Err(format!(
                    "[server] {key} = {value:?}: not a {key} name or id"
                ));
            }
        }
        if self.server.group.is_some() && self.server.user.is_none() {
            return Err("[server] group needs [server] user".into());
        }
        if self.policy.login_delay_secs > MAX_LOGIN_DELAY_SECS {
            return Err(format!(
                "[policy] login_delay_secs = {}: expected 0 to {MAX_LOGIN_DELAY_SECS} seconds",
                self.policy.login_delay_secs
            ));
        }
        self.check_lmtp()
    }

    fn check_lmtp(&self) -> Result<(), String> {
        let l = &self.limits;
        if l.max_message_size == 0
            || l.max_lmtp_recipients == 0
            || l.max_lmtp_connections == 0
            || l.lmtp_timeout_secs == 0
        {
            return Err(
                "[limits] max_message_size, max_lmtp_recipients, max_lmtp_connections \
                        and lmtp_timeout_secs must be above 0"
                    .into(),
            );
        }
        if self.lmtp.socket_mode > 0o777 {
            return Err(format!(
                "[lmtp] socket_mode = {:#o}: permission bits only (0o600, 0o660, 0o666)",
                self.lmtp.socket_mode
            ));
        }
        if let Some(d) = self
            .lmtp
            .domains
            .iter()
            .find(|d| d.is_empty() || !d.bytes().all(|b| b.is_ascii_graphic() && b != b'@'))
        {
            return Err(format!("[lmtp] domains: {d:?} is not a domain name"));
        }
        if self
            .lmtp
            .socket_group
            .as_deref()
            .is_some_and(|g| g.is_empty() || g.contains([':', '\n']))
        {
            return Err("[lmtp] socket_group: not a group name or id".into());
        }
        Ok(())
    }

    fn check_auth_backend(&self) -> Result<(), String> {
        let a = &self.auth;
        match a.backend {
            AuthBackend::PasswdFile => {
                if a.passwd_file.as_os_str().is_empty() {
                    return Err("[auth] passwd_file is needed (or backend = \"sql\")".into());
                }
                if a.url.is_some() {
                    return Err(
                        "[auth] url is for backend = \"sql\"; the backend is passwd-file".into(),
                    );
                }
            }
            AuthBackend::Sql => {
                if !a.passwd_file.as_os_str().is_empty() {
                    return Err(
                        "[auth] passwd_file is for backend = \"passwd-file\"; the backend is sql"
                            .into(),
                    );
                }
                if a.app_password_last_used.is_some() {
                    return Err(
                        "[auth] app_password_last_used is for backend = \"passwd-file\" \
                         (the database records it)"
                            .into(),
                    );
                }
                match (self.store.backend, &a.url) {
                    (StoreBackend::Postgresql, Some(_)) => {
                        return Err(
                            "[auth] url: with the postgresql store, the users live in its \
                                    database ([store] url); leave [auth] url out"
                                .into(),
                        )
                    }
                    (StoreBackend::Maildir, None) => {
                        return Err("[auth] backend = \"sql\" with the maildir store needs \
                                    [auth] url, the database of the users"
                            .into())
                    }
                    (StoreBackend::Maildir, Some(u)) if u.trim().is_empty() => {
                        return Err("[auth] url must not be empty".into())
                    }
                    _ => {}
                }
            }
        }
        if !defaults::PENALTY_MAX_ROWS.contains(&a.penalty_max_rows) {
            return Err(format!(
                "[auth] penalty_max_rows = {}: expected {} to {}",
                a.penalty_max_rows,
                defaults::PENALTY_MAX_ROWS.start(),
                defaults::PENALTY_MAX_ROWS.end()
            ));
        }
        if !defaults::PENALTY_CLEAN_SECS.contains(&a.penalty_clean_secs) {
            return Err(format!(
                "[auth] penalty_clean_secs = {}: expected {} to {} seconds",
                a.penalty_clean_secs,
                defaults::PENALTY_CLEAN_SECS.start(),
                defaults::PENALTY_CLEAN_SECS.end()
            ));
        }
        Ok(())
    }

    /// The PostgreSQL database of this configuration, if any: the store's, or the users' when
    /// only they are in one (`facteur db migrate` uses it).
    pub fn database_url(&self) -> Option<&str> {
        match (self.store.backend, self.auth.backend) {
            (StoreBackend::Postgresql, _) => self.store.url.as_deref(),
            (StoreBackend::Maildir, AuthBackend::Sql) => self.auth.url.as_deref(),
            (StoreBackend::Maildir, AuthBackend::PasswdFile) => None,
        }
    }

    /// The POP3S (implicit TLS) listen addresses in force.
    pub fn listen_tls(&self) -> Vec<SocketAddr> {
        match (&self.server.listen_tls, &self.tls) {
            (Some(l), _) => l.clone(),
            (None, Some(_)) => defaults::listen_tls(),
            (None, None) => Vec::new(),
        }
    }

    /// The host name for the greeting and APOP timestamps.
    pub fn hostname(&self) -> String {
        self.server.hostname.clone().unwrap_or_else(system_hostname)
    }
}

/// The machine's host name, from /etc/hostname, or "localhost".
pub fn system_hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str =
        "[auth]\npasswd_file = \"users\"\n[store]\nmaildir = \"/var/mail/%d/%n\"\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL, Path::new("/etc/facteur/facteur.toml")).unwrap();
        assert_eq!(c.auth.passwd_file, Path::new("/etc/facteur/users"));
        assert_eq!(c.limits.idle_timeout_secs, 600);
        assert_eq!(c.server.listen.len(), 2);
        assert!(!c.server.enable_last);
        assert!(!c.auth.apop);
        assert_eq!(c.auth.cache_ttl(), Duration::from_secs(3600));
        assert_eq!(c.auth.cache_max_entries, 100_000);
    }

    /// `[oauth]`: defaults, relative paths, and the checks of each issuer.
    #[test]
    fn oauth_issuers() {
        let c = Config::parse(MINIMAL, Path::new("/etc/f/f.toml")).unwrap();
        assert!(c.oauth.issuer.is_empty());
        assert_eq!(c.oauth.http_timeout_secs, 10);
        let with = |tail: &str| {
            Config::parse(
                &format!("{MINIMAL}\n[oauth]\nca_file = \"ca.pem\"\n{tail}"),
                Path::new("/etc/f/f.toml"),
            )
        };
        let issuer = "[[oauth.issuer]]\nissuer = \"https://id.test\"\naudience = \"pop\"\n";
        let c = with(&format!("{issuer}jwks_file = \"keys.json\"\n")).unwrap();
        let i = &c.oauth.issuer[0];
        assert_eq!(i.jwks_file.as_deref(), Some(Path::new("/etc/f/keys.json")));
        assert_eq!(c.oauth.ca_file.as_deref(), Some(Path::new("/etc/f/ca.pem")));
        assert_eq!(
            (i.user_claim.as_str(), i.leeway_secs, i.jwks_refresh_secs),
            ("email", 60, 3600)
        );
        for (tail, needle) in [
            (issuer.to_string(), "exactly one of"),
            (
                format!("{issuer}jwks_file = \"k\"\njwks_url = \"https://id.test/k\"\n"),
                "exactly one of",
            ),
            (
                format!("{issuer}jwks_url = \"http://id.test/k\"\n"),
                "no https:// URL",
            ),
            (
                format!("{issuer}introspection_url = \"https://id.test/i\"\n"),
                "needs client_id",
            ),
            (
                format!("{issuer}jwks_file = \"k\"\nclient_id = \"c\"\n"),
                "are for introspection_url",
            ),
            (
                format!("{issuer}jwks_file = \"k\"\nleeway_secs = 7200\n"),
                "leeway_secs",
            ),
            (
                format!("{issuer}jwks_file = \"k\"\njwks_refresh_secs = 1\n"),
                "jwks_refresh_secs",
            ),
            (
                format!("{issuer}jwks_file = \"k\"\nuser_claim = \"\"\n"),
                "user_claim",
            ),
            (
                "[[oauth.issuer]]\nissuer = \"\"\naudience = \"a\"\njwks_file = \"k\"\n"
                    .to_string(),
                "must not be empty",
            ),
        ] {
            let e = with(&tail).unwrap_err().to_string();
            assert!(e.contains(needle), "{tail}: {e}");
        }
        let e = Config::parse(
            &MINIMAL.replace("[auth]\n", "[auth]\nsasl = [\"PLAIN\", \"OAUTHBEARER\"]\n"),
            Path::new("f.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("[[oauth.issuer]]"), "{e}");
    }

    /// `[server] language`: a tag LANG lists; English by default. `greeting` stays unset
    /// unless given (the catalogue's greeting, in the language).
    #[test]
    fn default_language() {
        let c = Config::parse(MINIMAL, Path::new("f.toml")).unwrap();
        assert_eq!(c.server.default_language(), Lang::En);
        assert_eq!(c.server.greeting, None);
        let with = |keys: &str| format!("[server]\n{keys}\n{MINIMAL}");
        let c = Config::parse(&with("language = \"FR\""), Path::new("f.toml")).unwrap();
        assert_eq!(c.server.default_language(), Lang::Fr);
        for bad in ["de", "fr-CA", ""] {
            let e = Config::parse(&with(&format!("language = {bad:?}")), Path::new("f.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("expected one of en, fr"), "{bad}: {e}");
        }
        let e = Config::parse(&with("greeting = \"a\\nb\""), Path::new("f.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("one line"), "{e}");
    }

    #[test]
    fn policy_defaults_values_and_bounds() {
        let parse = |policy: &str| {
            Config::parse(
                &format!("{MINIMAL}[policy]\n{policy}\n"),
                Path::new("f.toml"),
            )
        };
        let c = Config::parse(MINIMAL, Path::new("f.toml")).unwrap();
        assert_eq!(c.policy.policy(), Policy::default());
        let c = parse("login_delay_secs = 900\nexpire = 30").unwrap();
        assert_eq!(
            c.policy.policy(),
            Policy {
                login_delay: 900,
                expire: Expire::Days(30)
            }
        );
        assert_eq!(
            parse("expire = \"0\"").unwrap().policy.policy().expire,
            Expire::Days(0)
        );
        assert_eq!(
            parse("expire = \"NEVER\"").unwrap().policy.policy().expire,
            Expire::Never
        );
        for bad in [
            "expire = -1",
            "expire = \"soon\"",
            "expire = 100001",
            "login_delay_secs = 604801",
            "login_delay_secs = -1",
            "expire_days = 3",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let e = parse("expire = \"7d\"").unwrap_err().to_string();
        assert!(e.contains("expected \"never\" or a number of days"), "{e}");
    }

    #[test]
    fn verification_cache_bounds() {
        let with = |keys: &str| MINIMAL.replace("[auth]\n", &format!("[auth]\n{keys}\n"));
        let c = Config::parse(
            &with("cache_ttl_secs = 0\ncache_max_entries = 1"),
            Path::new("f.toml"),
        )
        .unwrap();
        assert!(c.auth.cache_ttl().is_zero());
        assert_eq!(c.auth.cache_max_entries, 1);
        let c = Config::parse(
            &with("cache_ttl_secs = 86400\ncache_max_entries = 10000000"),
            Path::new("f.toml"),
        )
        .unwrap();
        assert_eq!(c.auth.cache_ttl_secs, 86_400);
        for (keys, expected) in [
            ("cache_ttl_secs = 86401", "cache_ttl_secs = 86401"),
            ("cache_max_entries = 0", "cache_max_entries = 0"),
            (
                "cache_max_entries = 10000001",
                "cache_max_entries = 10000001",
            ),
            ("cache_ttl_secs = -1", "cache_ttl_secs"),
        ] {
            let e = Config::parse(&with(keys), Path::new("f.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(expected), "{keys}: {e}");
        }
    }

    #[test]
    fn relative_paths_next_to_a_bare_file_name() {
        let c = Config::parse(
            MINIMAL.replace("/var/mail/%d/%n", "mail/%u").as_str(),
            Path::new("f.toml"),
        )
        .unwrap();
        assert_eq!(c.store.maildir, "./mail/%u");
        assert_eq!(c.auth.passwd_file, Path::new("./users"));
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let text = format!("{MINIMAL}[limits]\nmax_conections = 3\n");
        let e = Config::parse(&text, Path::new("f.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_conections"), "{e}");
    }

    #[test]
    fn idle_timeout_below_rfc_minimum_is_rejected() {
        let text = format!("{MINIMAL}[limits]\nidle_timeout_secs = 60\n");
        let e = Config::parse(&text, Path::new("f.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("RFC 1939"), "{e}");
    }

    #[test]
    fn tls_defaults_and_checks() {
        let c = Config::parse(MINIMAL, Path::new("/e/f.toml")).unwrap();
        assert!(c.listen_tls().is_empty());
        assert_eq!(c.auth.plaintext_auth, PlaintextAuth::Loopback);
        let text = format!("{MINIMAL}[tls]\ncertificate = \"c.pem\"\nprivate_key = \"k.pem\"\n");
        let c = Config::parse(&text, Path::new("/e/f.toml")).unwrap();
        assert_eq!(c.listen_tls().len(), 2);
        assert_eq!(c.tls.unwrap().certificate, Path::new("/e/c.pem"));
        let text = MINIMAL.replace(
            "[auth]",
            "[server]\nlisten_tls = [\"127.0.0.1:995\"]\n[auth]",
        );
        let e = Config::parse(&text, Path::new("f.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[tls]"), "{e}");
        let text = MINIMAL.replace("[auth]\n", "[auth]\nplaintext_auth = \"sometimes\"\n");
        assert!(Config::parse(&text, Path::new("f.toml")).is_err());
    }

    #[test]
    fn user_and_group_keys() {
        let c = Config::parse(MINIMAL, Path::new("f.toml")).unwrap();
        assert_eq!((c.server.user, c.server.group), (None, None));
        assert!(!c.server.allow_root);
        let with = |keys: &str| MINIMAL.replace("[auth]", &format!("[server]\n{keys}\n[auth]"));
        let c = Config::parse(
            &with("user = \"vmail\"\ngroup = \"5000\"\nallow_root = true"),
            Path::new("f.toml"),
        )
        .unwrap();
        assert_eq!(c.server.user.as_deref(), Some("vmail"));
        assert_eq!(c.server.group.as_deref(), Some("5000"));
        assert!(c.server.allow_root);
        for (keys, expected) in [
            ("group = \"mail\"", "group needs [server] user"),
            ("user = \"\"", "[server] user"),
            ("user = \"a:b\"", "[server] user"),
            ("user = \"vmail\"\ngroup = \"\"", "[server] group"),
            ("user = 5000", "user"),
        ] {
            let e = Config::parse(&with(keys), Path::new("f.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(expected), "{keys}: {e}");
        }
    }

    #[test]
    fn proxy_protocol_blocks() {
        let c = Config::parse(MINIMAL, Path::new("f.toml")).unwrap();
        assert!(c.server.proxy_protocol.is_empty());
        assert_eq!(c.limits.proxy_header_timeout(), Duration::from_secs(5));
        let with = |list: &str| {
            MINIMAL.replace(
                "[auth]",
                &format!("[server]\nproxy_protocol = [{list}]\n[auth]"),
            )
        };
        let c = Config::parse(
            &with("\"10.0.0.0/8\", \"127.0.0.1/32\", \"::1/128\", \"0.0.0.0/0\""),
            Path::new("f.toml"),
        )
        .unwrap();
        let shown: Vec<String> = c
            .server
            .proxy_protocol
            .iter()
            .map(|b| b.to_string())
            .collect();
        assert_eq!(
            shown,
            ["10.0.0.0/8", "127.0.0.1/32", "::1/128", "0.0.0.0/0"]
        );
        for (list, expected) in [
            ("\"10.0.0.1\"", "expected ADDRESS/PREFIX"),
            ("\"10.0.0.1/8\"", "did you mean 10.0.0.0/8?"),
            ("\"10.0.0.0/33\"", "from 0 to 32"),
            ("\"10.0.0.0/08\"", "from 0 to 32"),
            ("\"10.0.0.0/+8\"", "from 0 to 32"),
            ("\"10.0.0.0/\"", "from 0 to 32"),
            ("\"::/129\"", "from 0 to 128"),
            ("\"2001:db8::1/32\"", "did you mean 2001:db8::/32?"),
            ("\"010.0.0.0/8\"", "not an IP address"),
            ("\"example.org/8\"", "not an IP address"),
            ("\"10.0.0.0/8 \"", "from 0 to 32"),
            ("8", "proxy_protocol"),
        ] {
            let e = Config::parse(&with(list), Path::new("f.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(expected), "{list}: {e}");
        }
        let e = Config::parse(
            &format!("{MINIMAL}[limits]\nproxy_header_timeout_secs = 0\n"),
            Path::new("f.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("proxy_header_timeout_secs"), "{e}");
    }

    #[test]
    fn cidr_membership() {
        let block = |s: &str| s.parse::<Cidr>().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(block("10.0.0.0/8").contains(ip("10.255.1.2")));
        assert!(!block("10.0.0.0/8").contains(ip("11.0.0.0")));
        // A dual-stack listener sees an IPv4 peer as ::ffff:a.b.c.d.
        assert!(block("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")));
        assert!(!block("10.0.0.0/8").contains(ip("::a01:203")));
        assert!(block("127.0.0.1/32").contains(ip("127.0.0.1")));
        assert!(!block("127.0.0.1/32").contains(ip("127.0.0.2")));
        assert!(block("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(!block("0.0.0.0/0").contains(ip("::1")));
        assert!(block("::1/128").contains(ip("::1")));
        assert!(!block("::1/128").contains(ip("127.0.0.1")));
        assert!(block("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
        assert!(!block("2001:db8::/32").contains(ip("2001:db9::1")));
        assert!(block("::/0").contains(ip("2001:db9::1")));
    }

    #[test]
    fn missing_sections_are_named() {
        let e = Config::parse("[store]\nmaildir = \"x\"\n", Path::new("f.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth"), "{e}");
    }

    #[test]
    fn auth_backends() {
        let c = Config::parse(MINIMAL, Path::new("f.toml")).unwrap();
        assert_eq!(c.auth.backend, AuthBackend::PasswdFile);
        assert_eq!(c.database_url(), None);
        assert_eq!(
            (c.auth.penalty_max_rows, c.auth.penalty_clean_secs),
            (100_000, 60)
        );
        let parse = |auth: &str, store: &str| {
            Config::parse(
                &format!("[auth]\n{auth}\n[store]\n{store}\n"),
                Path::new("/etc/f.toml"),
            )
            .map_err(|e| e.to_string())
        };
        let maildir = "maildir = \"/m/%u\"";
        let pg = "backend = \"postgresql\"\nurl = \"host=/s dbname=mail\"";
        // Users in SQL, mail in Maildirs.
        let c = parse("backend = \"sql\"\nurl = \"host=/u dbname=users\"", maildir).unwrap();
        assert_eq!(c.auth.backend, AuthBackend::Sql);
        assert_eq!(c.auth.backend.to_string(), "sql");
        assert_eq!(c.database_url(), Some("host=/u dbname=users"));
        assert_eq!(c.auth.passwd_file, Path::new(""));
        // Where the last use of app passwords goes: beside the users file, or as configured
        // (relative to the configuration file).
        let c = parse("passwd_file = \"users\"", maildir).unwrap();
        assert_eq!(
            c.auth.app_password_last_used_path(),
            Path::new("/etc/users.app-passwords.last-used")
        );
        let c = parse(
            "passwd_file = \"users\"\napp_password_last_used = \"state/used\"",
            maildir,
        )
        .unwrap();
        assert_eq!(
            c.auth.app_password_last_used_path(),
            Path::new("/etc/state/used")
        );
        // Both in the store's database.
        let c = parse(
            "backend = \"sql\"\npenalty_max_rows = 5000\npenalty_clean_secs = 10",
            pg,
        )
        .unwrap();
        assert_eq!(c.database_url(), Some("host=/s dbname=mail"));
        assert_eq!(c.auth.penalty_clean_every(), Duration::from_secs(10));
        assert_eq!(c.auth.penalty_max_rows, 5000);
        for (auth, store, expected) in [
            ("backend = \"sql\"", maildir, "needs [auth] url"),
            (
                "backend = \"sql\"\nurl = \" \"",
                maildir,
                "must not be empty",
            ),
            (
                "backend = \"sql\"\nurl = \"host=x\"",
                pg,
                "leave [auth] url out",
            ),
            (
                "backend = \"sql\"\npasswd_file = \"users\"",
                pg,
                "passwd_file is for",
            ),
            ("", maildir, "passwd_file is needed"),
            (
                "passwd_file = \"users\"\nurl = \"host=x\"",
                maildir,
                "url is for",
            ),
            ("backend = \"ldap\"", maildir, "unknown variant"),
            (
                "backend = \"sql\"\npenalty_max_rows = 10",
                pg,
                "penalty_max_rows = 10",
            ),
            (
                "backend = \"sql\"\npenalty_clean_secs = 0",
                pg,
                "penalty_clean_secs = 0",
            ),
            (
                "backend = \"sql\"\napp_password_last_used = \"x\"",
                pg,
                "the database records it",
            ),
        ] {
            let e = parse(auth, store).unwrap_err();
            assert!(e.contains(expected), "{auth} / {store}: {e}");
        }
    }

    #[test]
    fn store_backends() {
        let c = Config::parse(MINIMAL, Path::new("f.toml")).unwrap();
        assert_eq!(c.store.backend, StoreBackend::Maildir);
        assert_eq!(c.store.lease(), Duration::from_secs(60));
        assert_eq!(c.store.pool_size, 16);
        let pg = "[auth]\npasswd_file = \"users\"\n[store]\nbackend = \"postgresql\"\n\
                  url = \"host=/run/postgresql dbname=mail\"\npool_size = 4\nlease_secs = 30\n";
        let c = Config::parse(pg, Path::new("/etc/f.toml")).unwrap();
        assert_eq!(c.store.backend, StoreBackend::Postgresql);
        assert_eq!(c.store.backend.to_string(), "postgresql");
        assert_eq!(
            c.store.url.as_deref(),
            Some("host=/run/postgresql dbname=mail")
        );
        assert_eq!((c.store.pool_size, c.store.lease_secs), (4, 30));
        assert_eq!(c.store.lease_commit, LeaseCommitSetting::Async);
        let sync = pg.replace(
            "lease_secs = 30",
            "lease_secs = 30\nlease_commit = \"sync\"",
        );
        let c = Config::parse(&sync, Path::new("/etc/f.toml")).unwrap();
        assert_eq!(c.store.lease_commit, LeaseCommitSetting::Sync);
        let bad = pg.replace("lease_secs = 30", "lease_commit = \"maybe\"");
        let e = Config::parse(&bad, Path::new("/etc/f.toml")).unwrap_err();
        assert!(e.to_string().contains("unknown variant"), "{e}");
        // No maildir is made up for the database backend.
        assert_eq!(c.store.maildir, "");
        let store = |keys: &str| {
            Config::parse(
                &format!("[auth]\npasswd_file = \"users\"\n[store]\n{keys}\n"),
                Path::new("f.toml"),
            )
            .map(|c| c.store.backend)
            .map_err(|e| e.to_string())
        };
        for (keys, expected) in [
            ("backend = \"postgresql\"", "needs [store] url"),
            ("backend = \"postgresql\"\nurl = \" \"", "needs [store] url"),
            (
                "backend = \"postgresql\"\nurl = \"host=x\"\nmaildir = \"m\"",
                "maildir is for",
            ),
            ("maildir = \"m\"\nurl = \"host=x\"", "url is for"),
            ("backend = \"mysql\"\nmaildir = \"m\"", "unknown variant"),
            (
                "backend = \"postgresql\"\nurl = \"host=x\"\nlease_secs = 4",
                "lease_secs = 4",
            ),
            ("maildir = \"m\"\nlease_secs = 3601", "lease_secs = 3601"),
            ("maildir = \"m\"\npool_size = 0", "pool_size = 0"),
            ("backend = \"maildir\"", "maildir must not be empty"),
            (
                "backend = \"postgresql\"\nurl = \"host=x\"\nuidl = \"dovecot\"",
                "uidl is for",
            ),
            ("maildir = \"m\"\nuidl = \"courier\"", "unknown variant"),
        ] {
            let e = store(keys).unwrap_err();
            assert!(e.contains(expected), "{keys}: {e}");
        }
        assert_eq!(
            store("backend = \"maildir\"\nmaildir = \"m\""),
            Ok(StoreBackend::Maildir)
        );
        let uidl = |keys: &str| {
            Config::parse(
                &format!("[auth]\npasswd_file = \"users\"\n[store]\nmaildir = \"m\"\n{keys}\n"),
                Path::new("f.toml"),
            )
            .unwrap()
            .store
            .uidl
        };
        assert_eq!(uidl(""), UidlSetting::Facteur);
        assert_eq!(uidl("uidl = \"facteur\""), UidlSetting::Facteur);
        assert_eq!(uidl("uidl = \"dovecot\""), UidlSetting::Dovecot);
    }

    #[test]
    fn mbox_format() {
        let store = |keys: &str| {
            Config::parse(
                &format!("[auth]\npasswd_file = \"users\"\n[store]\n{keys}\n"),
                Path::new("/etc/facteur/f.toml"),
            )
            .map(|c| c.store)
            .map_err(|e| e.to_string())
        };
        let c = store("maildir = \"m\"").unwrap();
        assert_eq!(c.format, StoreFormat::Maildir);
        let c = store("format = \"mbox\"\nmbox = \"/var/mail/%u\"").unwrap();
        assert_eq!(
            (c.format, c.mbox.as_str()),
            (StoreFormat::Mbox, "/var/mail/%u")
        );
        // Relative to the configuration's folder, as the maildir template.
        let c = store("format = \"mbox\"\nmbox = \"spool/%u\"").unwrap();
        assert_eq!(c.mbox, "/etc/facteur/spool/%u");
        for (keys, expected) in [
            ("format = \"mbox\"", "needs [store] mbox"),
            (
                "format = \"mbox\"\nmbox = \"/m/%u\"\nmaildir = \"m\"",
                "maildir is for",
            ),
            (
                "format = \"mbox\"\nmbox = \"/m/%u\"\nuidl = \"dovecot\"",
                "uidl is for",
            ),
            ("maildir = \"m\"\nmbox = \"/m/%u\"", "mbox is for"),
            ("format = \"mbx\"\nmbox = \"/m/%u\"", "unknown variant"),
            (
                "backend = \"postgresql\"\nurl = \"host=x\"\nformat = \"mbox\"",
                "format and mbox are for",
            ),
        ] {
            let e = store(keys).unwrap_err();
            assert!(e.contains(expected), "{keys}: {e}");
        }
    }
}
