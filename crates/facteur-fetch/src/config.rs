//! Accounts for `facteur fetch`: from a TOML file, or from a `pop3s://user@host[:port]` URL on
//! the command line; where each password comes from; and every default of the fetcher, in one
//! place.
//!
//! The file (`~/.config/facteur/fetch.toml` unless `--config` says otherwise):
//!
//! ```toml
//! state_dir = "~/.local/state/facteur/fetch"   # optional: where each account's state lives
//!
//! [[account]]
//! name = "work"                          # optional; default: user@host
//! identity = "alice@example.org"          # optional: pins the maildrop's identity (below)
//! url = "pop3s://alice@mail.example.org"  # or host, port, user and security, one by one
//! ca_file = "/etc/ssl/work-ca.pem"        # optional; default: the system's certificate store
//! auth = "auto"                           # auto, scram-sha-256, cram-md5, apop, plain, user,
//!                                         # oauthbearer, xoauth2
//! password_command = "pass show mail/work"   # or password_env = "VAR", or password = "..."
//!                                         # or token_command = "oauth2-helper --get-token":
//!                                         # an OAuth bearer token (OAUTHBEARER or XOAUTH2)
//! maildir = "~/Maildir"                   # or mbox = "~/mbox", or mda = "procmail"
//! keep = false                            # leave the messages on the server
//! delete_after_days = 30                  # with keep: delete them this long after the fetch
//! max_messages = 1000                     # per run
//! max_bytes = 100000000                   # per run
//! max_message_size = 20000000             # larger messages stay on the server, untouched
//! timeout_secs = 60                       # silence: the longest wait for any answer
//! message_timeout_secs = 900              # the longest one message may take to arrive
//! run_timeout_secs = 3600                 # the longest a run of this account may take
//! max_listing_lines = 1000000             # LIST/UIDL lines accepted from the server
//! maildir_sync = "auto"                   # auto: one syncfs per batch of 8 messages or more;
//!                                         # fsync: an fsync of each file (see MaildirSync)
//! ```
//!
//! What a server says is a claim. A message is read up to its LIST size plus
//! [`retr_limit`]'s slack (and never past `max_message_size`); one that goes on is cut off,
//! left on the server (never deleted), and reported as an error. A message that takes longer
//! than `message_timeout_secs` is cut off the same way, and a run that takes longer than
//! `run_timeout_secs` stops (what it committed stays committed). `timeout_secs` alone only
//! bounds silence: a server that sends one octet a minute would never trip it.
//!
//! What was fetched is remembered per maildrop identity (see [`mailbox_identity`]): the user
//! and the server, not the port nor the kind of TLS, so that switching from `pop3s://` to
//! `pop3://`, changing the port or writing `127.0.0.1` for `localhost` fetches nothing again.
//! `identity` pins it by hand: to join two names of one server, or to keep apart two servers
//! reached through one name (SSH tunnels on two ports of localhost). Two accounts of one file
//! with the same identity are refused.
//!
//! A file that holds a password (`password = ...`) must not be readable by anyone but its
//! owner (mode 600 or stricter): facteur refuses it otherwise. Relative paths are relative to
//! the file; `~/` is the home folder. Unknown keys are refused with their name.

use super::auth::AuthMethod;
use super::{Security, Target};
use facteur_proto::encoding::{hex, percent_decode, percent_encode};
use facteur_proto::types::parse_decimal;
use facteur_proto::Secret;
use serde::Deserialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long `token_command` may run: a token helper that refreshes a token over the network
/// has had its chance by then.
pub const TOKEN_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The most output read from `token_command`, in octets: a bearer token is at most 8 KiB
/// (what facteur's own server accepts), with room for a newline.
pub const MAX_TOKEN_OUTPUT: usize = 16 * 1024;

/// How long one wait for the server may last (connect, TLS handshake, each read and write).
/// RFC 1939's servers wait 10 minutes for a client; a client waiting a minute for a server
/// that said nothing has waited long enough.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one message (its RETR, from the command to the final `.`) may take. At 1 Mbit/s,
/// 15 minutes carry about 110 MB: more than any provider lets a message be. A server that
/// trickles a message is cut off here, with the message left on the server.
pub const DEFAULT_MESSAGE_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// How long a run of one account may take, from connecting to QUIT. A run holds the account's
/// lock, so a server that keeps it alive forever would block every later run; an hour fetches
/// gigabytes on any real link, and a run cut here loses nothing: what it committed stays, and
/// the next run goes on from there.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// Lines of a LIST or UIDL listing accepted from a server: one per message, and a maildrop of
/// a million messages is far beyond what POP3 servers serve (Gmail's POP3 lists a few hundred
/// at a time). Each line costs about 150 octets of memory here, so this bounds a listing that
/// never ends to some 150 MB, and the time to read it to seconds.
pub const DEFAULT_MAX_LISTING_LINES: u64 = 1_000_000;

/// Lines of a CAPA reply accepted: real servers send fewer than 20 (RFC 2449 defines 11
/// capabilities), so a CAPA this long is a server that never stops.
pub const MAX_CAPA_LINES: u64 = 1000;

/// Octets a message's RETR may carry past its LIST size, at least: servers that round sizes
/// (HP OpenMail rounded them to the nearest 1024) or approximate them (Exchange's "fast
/// message retrieval") are a few hundred octets off on small messages.
pub const RETR_SLACK_MIN: u64 = 4 * 1024;

/// ... and at least this fraction of the LIST size (1/8): a server that counts its stored
/// message with LF line ends instead of CRLF (RFC 1939 section 11 warns of it) lists one octet
/// too few per line, 1.3% for base64 (76-octet lines) and more for text of short lines.
pub const RETR_SLACK_DIVISOR: u64 = 8;

/// The most octets read for a message that LIST said was `listed` octets long: `listed` plus
/// the larger of [`RETR_SLACK_MIN`] and `listed /` [`RETR_SLACK_DIVISOR`], and never more than
/// `max_message_size`. A RETR that goes past it is cut off.
pub fn retr_limit(listed: u64, max_message_size: Option<u64>) -> u64 {
    let slack = (listed / RETR_SLACK_DIVISOR).max(RETR_SLACK_MIN);
    let limit = listed.saturating_add(slack);
    max_message_size.map_or(limit, |max| limit.min(max))
}

/// Messages fetched between two commits: each commit costs a syncfs of the Maildir's file
/// system (or fsyncs of its files, or of the mbox) and an fsync of the journal, and a crash
/// costs at most one batch fetched again. 256 rather than 64: 10,000 messages of 4 KB from
/// facteur serve on loopback took 1.35-1.80 s instead of 1.83-2.17 s (three alternating runs
/// each), the time blocked in syncfs 0.28 s instead of 0.51 s (40 syncfs instead of 157).
pub const BATCH_MESSAGES: usize = 256;

/// Octets (by LIST size) fetched between two commits, whichever comes first.
pub const BATCH_BYTES: u64 = 16 * 1024 * 1024;

/// Messages in a batch from which, with [`MaildirSync::Auto`], one `syncfs` of the Maildir's
/// file system makes the batch durable instead of an fsync of each file.
pub const SYNCFS_MIN_BATCH: usize = 8;

/// How a Maildir destination makes the files of a batch durable before anything records them
/// (`maildir_sync`, `--maildir-sync`). Either way every message is durable before its DELE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaildirSync {
    /// A batch of [`SYNCFS_MIN_BATCH`] messages or more: one `syncfs(2)` of the Maildir's file
    /// system (one journal commit for the whole batch, where an fsync of each file costs one
    /// each). syncfs also writes back what other programs left dirty on that file system, so
    /// a smaller batch, not worth that wait, gets an fsync of each file.
    #[default]
    Auto,
    /// Always an fsync of each file, started on a thread as soon as the file is written, and
    /// one of `tmp/`: never waits for other programs' writes (for a file system that others
    /// keep busy with large writes).
    Fsync,
}

impl std::str::FromStr for MaildirSync {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(MaildirSync::Auto),
            "fsync" => Ok(MaildirSync::Fsync),
            _ => Err(format!("{s:?}: auto or fsync")),
        }
    }
}

/// Accounts fetched at the same time, at most.
pub const MAX_PARALLEL_ACCOUNTS: usize = 8;

/// How long to wait for an mbox's locks (dotlock, then flock) before giving up: another
/// program holds them.
pub const MBOX_LOCK_WAIT: Duration = Duration::from_secs(60);

/// A dotlock older than this is taken as left behind by a crashed program and removed, as
/// other mail programs do (Postfix: 500 s; procmail: 17 minutes).
pub const STALE_DOTLOCK: Duration = Duration::from_secs(600);

/// How long a run waits for an account's lock before it takes another run to hold it. A lock
/// can outlive its run by the instant a child process (an MDA, a password command) needs to
/// exec after a fork that copied the descriptor.
pub const STATE_LOCK_WAIT: Duration = Duration::from_secs(2);

/// The configuration file read when neither a URL nor `--config` is given:
/// `$XDG_CONFIG_HOME/facteur/fetch.toml`, or `~/.config/facteur/fetch.toml`.
pub fn default_config_path() -> Option<PathBuf> {
    xdg_dir("XDG_CONFIG_HOME", ".config").map(|d| d.join("facteur").join("fetch.toml"))
}

/// Where each account's state goes unless told otherwise:
/// `$XDG_STATE_HOME/facteur/fetch`, or `~/.local/state/facteur/fetch`.
pub fn default_state_dir() -> Option<PathBuf> {
    xdg_dir("XDG_STATE_HOME", ".local/state").map(|d| d.join("facteur").join("fetch"))
}

fn xdg_dir(var: &str, under_home: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(d) if Path::new(&d).is_absolute() => Some(PathBuf::from(d)),
        _ => home().map(|h| h.join(under_home)),
    }
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// Why the configuration (or the command line) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{} holds a password and can be read by others (mode {mode:o}): run chmod 600 {}", path.display(), path.display())]
    Readable { path: PathBuf, mode: u32 },
    #[error("{0}")]
    Invalid(String),
    #[error("password for {account}: {reason}")]
    Password { account: String, reason: String },
}

/// Where an account's password comes from. `Debug` never shows an inline password; no
/// `PartialEq`, as for [`Secret`].
#[derive(Clone, Debug)]
pub enum PasswordSource {
    /// Asked on the terminal.
    Prompt,
    /// The value of an environment variable.
    Env(String),
    /// The first line a shell command prints (like mpop's passwordeval).
    Command(String),
    /// Written in the configuration file (which must then be private).
    Inline(Secret<String>),
    /// An OAuth bearer token: the trimmed output of a shell command (`token_command`), run
    /// within [`TOKEN_COMMAND_TIMEOUT`] and read up to [`MAX_TOKEN_OUTPUT`] octets.
    TokenCommand(String),
}

impl PasswordSource {
    /// The password. A command is run with `sh -c`, and must exit 0 and print a line.
    pub fn resolve(&self, account: &str) -> Result<Secret<String>, ConfigError> {
        let fail = |reason: String| ConfigError::Password {
            account: account.to_string(),
            reason,
        };
        let password = match self {
            PasswordSource::TokenCommand(cmd) => {
                let out = run_capped(cmd, TOKEN_COMMAND_TIMEOUT, MAX_TOKEN_OUTPUT)
                    .map_err(|e| fail(format!("token_command: {e}")))?;
                let token = String::from_utf8(out.expose().clone()).map_err(|_| {
                    fail("token_command printed something that is not UTF-8".into())
                })?;
                let token = Secret::new(token);
                let trimmed = token.expose().trim();
                if trimmed.is_empty() || trimmed.contains(char::is_whitespace) {
                    return Err(fail(
                        "token_command must print one token (no spaces) and nothing else".into(),
                    ));
                }
                return Ok(Secret::new(trimmed.to_string()));
            }
            PasswordSource::Inline(p) => p.expose().clone(),
            PasswordSource::Env(var) => std::env::var(var)
                .map_err(|_| fail(format!("the environment variable {var} is not set")))?,
            PasswordSource::Command(cmd) => {
                let out = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(cmd)
                    .stdin(std::process::Stdio::null())
                    .stderr(std::process::Stdio::inherit())
                    .output()
                    .map_err(|e| fail(format!("cannot run the password command: {e}")))?;
                if !out.status.success() {
                    return Err(fail(format!(
                        "the password command failed ({})",
                        out.status
                    )));
                }
                let text = String::from_utf8(out.stdout).map_err(|_| {
                    fail("the password command printed something that is not UTF-8".into())
                })?;
                text.lines().next().unwrap_or_default().to_string()
            }
            PasswordSource::Prompt => {
                rpassword::prompt_password(format!("Password for {account}: ")).map_err(|e| {
                    fail(format!(
                        "cannot prompt for it ({e}); use --password-env or --password-command"
                    ))
                })?
            }
        };
        let password = password.trim_end_matches(['\r', '\n']).to_string();
        if password.is_empty() {
            return Err(fail("it is empty".into()));
        }
        Ok(Secret::new(password))
    }
}

impl PasswordSource {
    /// True when the secret is a bearer token (`token_command`), not a password.
    pub fn is_token(&self) -> bool {
        matches!(self, PasswordSource::TokenCommand(_))
    }
}

/// Runs `cmd` with `sh -c` and returns its standard output: at most `cap` octets (more is an
/// error), within `timeout` (past it the command is killed), and only if it exits 0.
fn run_capped(cmd: &str, timeout: Duration, cap: usize) -> Result<Secret<Vec<u8>>, String> {
    use std::io::Read as _;
    use std::os::unix::process::CommandExt as _;
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        // A group of its own, so that the deadline kills whatever it started too.
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    let mut stdout = child.stdout.take().ok_or("no standard output")?;
    // The reader ends when the command (and whatever it left holding the pipe) closes it, or
    // when it is killed below.
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let read = (&mut stdout).take(cap as u64 + 1).read_to_end(&mut out);
        read.map(|_| Secret::new(out))
    });
    let deadline = std::time::Instant::now() + timeout;
    let group = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    let kill_group = || {
        if let Some(group) = group {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() >= deadline => {
                kill_group();
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "it did not finish within {} ms",
                    timeout.as_millis()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("cannot wait for it: {e}")),
        }
    };
    // The command exited; a child it left behind with the pipe open is not waited for longer
    // than the deadline's rest.
    let out = loop {
        if reader.is_finished() {
            break reader
                .join()
                .map_err(|_| "the reader failed".to_string())?
                .map_err(|e| format!("cannot read its output: {e}"))?;
        }
        if std::time::Instant::now() >= deadline {
            kill_group();
            return Err("its output did not end within the deadline".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // Too much output first: the command may have died of the closed pipe (SIGPIPE).
    if out.expose().len() > cap {
        return Err(format!("it printed more than {cap} octets"));
    }
    if !status.success() {
        return Err(format!("it failed ({status})"));
    }
    Ok(out)
}

/// Where fetched messages go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DestinationSpec {
    /// A Maildir (created if it does not exist): each message into `tmp/`, fsync, then `new/`.
    Maildir(PathBuf),
    /// An mbox file, appended to under a lock, with `From ` lines quoted (mboxrd).
    Mbox(PathBuf),
    /// A command run with `sh -c` for each message, fed the message on its standard input;
    /// the message counts as delivered when the command exits 0.
    Mda(String),
}

impl std::fmt::Display for DestinationSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DestinationSpec::Maildir(p) => write!(f, "maildir {}", p.display()),
            DestinationSpec::Mbox(p) => write!(f, "mbox {}", p.display()),
            DestinationSpec::Mda(c) => write!(f, "mda {c:?}"),
        }
    }
}

/// What happens to a message on the server once it is safe locally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeletePolicy {
    /// Deleted in the same session (the default, POP3's usual way).
    Delete,
    /// Left on the server; the state file makes sure it is fetched once.
    Keep,
    /// Left on the server, and deleted there this many days after it was first fetched.
    DeleteAfterDays(u32),
}

/// Per-run limits; `None` is no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Messages fetched in one run; the rest wait for the next run.
    pub max_messages: Option<u64>,
    /// Octets (by LIST size) fetched in one run; the rest wait for the next run.
    pub max_bytes: Option<u64>,
    /// Messages larger than this are not fetched (nor deleted): they stay on the server.
    pub max_message_size: Option<u64>,
    /// The longest one message may take to arrive ([`DEFAULT_MESSAGE_TIMEOUT`]).
    pub message_timeout: Duration,
    /// The longest a run of the account may take ([`DEFAULT_RUN_TIMEOUT`]).
    pub run_timeout: Duration,
    /// Lines of a LIST or UIDL listing accepted ([`DEFAULT_MAX_LISTING_LINES`]).
    pub max_listing_lines: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_messages: None,
            max_bytes: None,
            max_message_size: None,
            message_timeout: DEFAULT_MESSAGE_TIMEOUT,
            run_timeout: DEFAULT_RUN_TIMEOUT,
            max_listing_lines: DEFAULT_MAX_LISTING_LINES,
        }
    }
}

/// One account to fetch from.
#[derive(Clone, Debug)]
pub struct Account {
    /// For messages and the progress bar.
    pub name: String,
    /// The identity of the maildrop, when the configuration pins it (`identity = "..."`):
    /// see [`Account::identity`].
    pub identity: Option<String>,
    pub target: Target,
    pub user: String,
    pub auth: AuthMethod,
    pub password: PasswordSource,
    pub destination: DestinationSpec,
    pub policy: DeletePolicy,
    pub limits: Limits,
    pub timeout: Duration,
    /// How a Maildir destination makes its batches durable.
    pub maildir_sync: MaildirSync,
}

impl Account {
    /// The identity of this account's maildrop, which keys its state (what was fetched) and
    /// its lock: `identity` if the configuration pins one, else [`mailbox_identity`] of the user
    /// and the host. The port and the kind of TLS are not part of it: the same maildrop
    /// reached over POP3S, STLS or another port is the same maildrop.
    pub fn identity(&self) -> String {
        match &self.identity {
            Some(pinned) => pinned.clone(),
            None => mailbox_identity(&self.user, &self.target.host),
        }
    }

    /// The key of this account's state files: its [`identity`](Self::identity), as a file name.
    pub fn state_key(&self) -> String {
        state_key_of(&self.identity())
    }

    /// A short tag of this account for file names: 8 hex digits of SHA-256 of the state key.
    pub fn file_tag(&self) -> String {
        file_tag_of(&self.state_key())
    }
}

/// The identity of the maildrop of `user` on `host`: `user@server`, where
/// - the user is kept as it is, except the part after its last `@` (a mail domain), which is
///   lowercased: a server may well tell `Alice` from `alice`, and taking two maildrops for one
///   could delete mail that was never fetched, while the opposite mistake only fetches twice;
/// - the server is the host name lowercased, without a trailing dot; an IP address in its
///   canonical form (`::ffff:127.0.0.1` is `127.0.0.1`); and `localhost`, `127.0.0.1` and `::1`
///   are all `localhost`. Other names are not resolved: two names of one server are two
///   identities (pin one with `identity` in the configuration).
pub fn mailbox_identity(user: &str, host: &str) -> String {
    let user = match user.rsplit_once('@') {
        Some((local, domain)) => format!("{local}@{}", domain.to_ascii_lowercase()),
        None => user.to_string(),
    };
    format!("{user}@{}", server_identity(host))
}

/// The server part of [`mailbox_identity`].
pub fn server_identity(host: &str) -> String {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        let ip = ip.to_canonical();
        let loopback = match ip {
            std::net::IpAddr::V4(v4) => v4 == std::net::Ipv4Addr::LOCALHOST,
            std::net::IpAddr::V6(v6) => v6 == std::net::Ipv6Addr::LOCALHOST,
        };
        return if loopback {
            "localhost".into()
        } else {
            ip.to_string()
        };
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    host.to_ascii_lowercase()
}

/// The longest state key kept readable; a longer one is cut and ends with a hash of the whole,
/// so that `<key>.state.tmp` stays within the 255 octets of a file name.
const MAX_STATE_KEY: usize = 200;

/// An identity as a file name: `%XX` for every octet but letters, digits, `@`, `.` and `-`
/// (so never `/`, and never `_`, which every key of facteur 0.x before identities had, before
/// its port: the two kinds of names cannot be taken for each other).
pub fn state_key_of(identity: &str) -> String {
    let mut key = percent_encode(identity.as_bytes(), |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'@' | b'.' | b'-')
    });
    if key.len() > MAX_STATE_KEY {
        use sha2::{Digest, Sha256};
        let hash = hex(&Sha256::digest(key.as_bytes())[..8]);
        let mut cut = MAX_STATE_KEY - 20;
        // Never in the middle of a %XX escape.
        if let Some(i) = key.get(..cut).and_then(|k| k.rfind('%')) {
            if i + 3 > cut {
                cut = i;
            }
        }
        key.truncate(cut);
        key.push('-');
        key.push_str(&hash);
    }
    key
}

/// 8 hex digits of SHA-256 of `key`.
pub fn file_tag_of(key: &str) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(key.as_bytes())[..4])
}

/// The user, the host and the port of a state key of facteur before identities
/// (`<user>@<host>_<port>`, escaped), if `key` is one.
pub fn parse_legacy_state_key(key: &str) -> Option<(String, String, u16)> {
    let raw = percent_decode_text(key)?;
    let (rest, port) = raw.rsplit_once('_')?;
    let port = u16::try_from(parse_decimal(port.as_bytes())?).ok()?;
    let (user, host) = rest.rsplit_once('@')?;
    if user.is_empty() || host.is_empty() {
        return None;
    }
    Some((user.to_string(), host.to_string(), port))
}

/// The state key facteur gave this account before identities: user, host and port.
pub fn legacy_state_key(user: &str, host: &str, port: u16) -> String {
    let raw = format!("{user}@{host}_{port}");
    percent_encode(raw.as_bytes(), |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'@' | b'.' | b'_' | b'-')
    })
}

/// A parsed configuration file.
#[derive(Clone, Debug)]
pub struct FetchConfig {
    pub accounts: Vec<Account>,
    pub state_dir: Option<PathBuf>,
}

/// The server part of a `pop3s://user@host[:port]` or `pop3://user@host[:port]` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedUrl {
    pub user: String,
    pub host: String,
    pub port: u16,
    /// `pop3s`: TLS; `pop3`: STLS.
    pub security: Security,
}

/// Parse a `pop3s://` or `pop3://` URL. The user may hold `@` (as is, or `%40`): the host is
/// after the last `@`. A password in the URL is refused: it would be in the shell's history
/// and in `ps` output.
pub fn parse_url(url: &str) -> Result<ParsedUrl, ConfigError> {
    let bad = |why: &str| ConfigError::Invalid(format!("invalid URL {url:?}: {why}"));
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("expected pop3s://user@host[:port] or pop3://user@host[:port]"))?;
    let security = match scheme.to_ascii_lowercase().as_str() {
        "pop3s" => Security::Tls,
        "pop3" => Security::Starttls,
        _ => return Err(bad("the scheme must be pop3s or pop3")),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#']) {
        return Err(bad("a path, query or fragment has no meaning here"));
    }
    let (userinfo, hostport) = rest
        .rsplit_once('@')
        .ok_or_else(|| bad("no user name (pop3s://user@host)"))?;
    if userinfo.contains(':') {
        return Err(bad(
            "a password in the URL is refused (anyone could read it in ps or the shell history); use --password-env or --password-command",
        ));
    }
    let user =
        percent_decode_text(userinfo).ok_or_else(|| bad("malformed %-escape in the user"))?;
    if user.is_empty() || user.chars().any(|c| c.is_control() || c == ' ') {
        return Err(bad(
            "the user name is empty or holds a space or control character",
        ));
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    if host.is_empty() || host.contains(['[', ']', ' ']) {
        return Err(bad("no host"));
    }
    let port = match port {
        None => security.default_port(),
        Some(p) => parse_decimal(p.as_bytes())
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?,
    };
    Ok(ParsedUrl {
        user,
        host,
        port,
        security,
    })
}

/// A `%XX`-escaped URL part as text; `None` for a broken escape or a result that is not UTF-8.
fn percent_decode_text(s: &str) -> Option<String> {
    String::from_utf8(percent_decode(s.as_bytes())?).ok()
}

/// `~/x` under the home folder, a relative path under `base`, an absolute one as it is.
pub fn expand_path(s: &str, base: Option<&Path>) -> PathBuf {
    if let (Some(rest), Some(h)) = (s.strip_prefix("~/"), home()) {
        return h.join(rest);
    }
    if s == "~" {
        if let Some(h) = home() {
            return h;
        }
    }
    let p = PathBuf::from(s);
    match base {
        Some(b) if p.is_relative() => b.join(p),
        _ => p,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    state_dir: Option<String>,
    #[serde(default)]
    account: Vec<RawAccount>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccount {
    name: Option<String>,
    identity: Option<String>,
    url: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    security: Option<Security>,
    ca_file: Option<String>,
    auth: Option<AuthMethod>,
    password: Option<String>,
    password_env: Option<String>,
    password_command: Option<String>,
    token_command: Option<String>,
    maildir: Option<String>,
    mbox: Option<String>,
    mda: Option<String>,
    keep: Option<bool>,
    delete_after_days: Option<u32>,
    max_messages: Option<u64>,
    max_bytes: Option<u64>,
    max_message_size: Option<u64>,
    timeout_secs: Option<u64>,
    message_timeout_secs: Option<u64>,
    run_timeout_secs: Option<u64>,
    max_listing_lines: Option<u64>,
    maildir_sync: Option<MaildirSync>,
}

/// Read a configuration file; refused if it holds a password and others may read it.
pub fn load(path: &Path) -> Result<FetchConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let config = parse(&text, path)?;
    let has_password = config
        .accounts
        .iter()
        .any(|a| matches!(a.password, PasswordSource::Inline(_)));
    if has_password {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(ConfigError::Readable {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    Ok(config)
}

/// Parse the text of a configuration file at `path` (for messages and relative paths).
pub fn parse(text: &str, path: &Path) -> Result<FetchConfig, ConfigError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let base = path.parent().filter(|p| !p.as_os_str().is_empty());
    let mut accounts = Vec::with_capacity(raw.account.len());
    let mut names = HashSet::new();
    for (i, a) in raw.account.into_iter().enumerate() {
        let account = account(a, base).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message: format!("account {}: {message}", i + 1),
        })?;
        if !names.insert(account.name.clone()) {
            return Err(ConfigError::Parse {
                path: path.to_path_buf(),
                message: format!("two accounts are named {:?}", account.name),
            });
        }
        let identity = account.identity();
        if let Some(other) = accounts
            .iter()
            .find(|o: &&Account| o.identity() == identity)
        {
            return Err(ConfigError::Parse {
                path: path.to_path_buf(),
                message: format!(
                    "accounts {:?} and {:?} are the same maildrop ({identity}): what one fetches, the other would skip; remove one, or if they really are two maildrops, give one of them its own identity = \"...\"",
                    other.name, account.name
                ),
            });
        }
        accounts.push(account);
    }
    if accounts.is_empty() {
        return Err(ConfigError::Parse {
            path: path.to_path_buf(),
            message: "no [[account]]".into(),
        });
    }
    Ok(FetchConfig {
        accounts,
        state_dir: raw.state_dir.map(|d| expand_path(&d, base)),
    })
}

fn account(a: RawAccount, base: Option<&Path>) -> Result<Account, String> {
    let (user, host, port, security) = match (&a.url, &a.host) {
        (Some(url), None) => {
            if a.user.is_some() || a.port.is_some() {
                return Err("give either url, or host, port and user".into());
            }
            let u = parse_url(url).map_err(|e| e.to_string())?;
            let security = match (u.security, a.security) {
                (s, None) => s,
                (Security::Starttls, Some(s @ (Security::Starttls | Security::Plaintext))) => s,
                (Security::Tls, Some(Security::Tls)) => Security::Tls,
                (_, Some(s)) => {
                    return Err(format!("security = \"{s}\" contradicts the URL's scheme"))
                }
            };
            (u.user, u.host, u.port, security)
        }
        (None, Some(host)) => {
            let user = a.user.clone().ok_or("no user")?;
            let security = a.security.unwrap_or(Security::Tls);
            let port = a.port.unwrap_or(security.default_port());
            (user, host.clone(), port, security)
        }
        (Some(_), Some(_)) => return Err("give either url or host, not both".into()),
        (None, None) => return Err("no url and no host".into()),
    };
    if user.is_empty() || user.chars().any(|c| c.is_control() || c == ' ') {
        return Err("the user name is empty or holds a space or control character".into());
    }
    let sources = [
        a.password.is_some(),
        a.password_env.is_some(),
        a.password_command.is_some(),
        a.token_command.is_some(),
    ];
    if sources.iter().filter(|s| **s).count() > 1 {
        return Err(
            "give at most one of password, password_env, password_command and token_command".into(),
        );
    }
    let auth = a.auth.unwrap_or(AuthMethod::Auto);
    if a.token_command.is_some() && !(auth == AuthMethod::Auto || auth.sends_token()) {
        return Err(format!(
            "token_command gives a bearer token: auth must be auto, oauthbearer or xoauth2, not {}",
            auth.name()
        ));
    }
    let password = if let Some(c) = a.token_command {
        PasswordSource::TokenCommand(c)
    } else if let Some(p) = a.password {
        PasswordSource::Inline(Secret::new(p))
    } else if let Some(v) = a.password_env {
        PasswordSource::Env(v)
    } else if let Some(c) = a.password_command {
        PasswordSource::Command(c)
    } else {
        PasswordSource::Prompt
    };
    let destination = match (a.maildir, a.mbox, a.mda) {
        (Some(d), None, None) => DestinationSpec::Maildir(expand_path(&d, base)),
        (None, Some(m), None) => DestinationSpec::Mbox(expand_path(&m, base)),
        (None, None, Some(c)) if !c.trim().is_empty() => DestinationSpec::Mda(c),
        _ => return Err("give exactly one destination: maildir, mbox or mda".into()),
    };
    let policy = policy(a.keep, a.delete_after_days)?;
    let timeout = match a.timeout_secs {
        None => DEFAULT_TIMEOUT,
        Some(0) => return Err("timeout_secs must be at least 1".into()),
        Some(s) => Duration::from_secs(s),
    };
    let secs = |key: &str, value: Option<u64>, default: Duration| match value {
        None => Ok(default),
        Some(0) => Err(format!("{key} must be at least 1")),
        Some(s) => Ok(Duration::from_secs(s)),
    };
    let message_timeout = secs(
        "message_timeout_secs",
        a.message_timeout_secs,
        DEFAULT_MESSAGE_TIMEOUT,
    )?;
    let run_timeout = secs("run_timeout_secs", a.run_timeout_secs, DEFAULT_RUN_TIMEOUT)?;
    let max_listing_lines = match a.max_listing_lines {
        Some(0) => return Err("max_listing_lines must be at least 1".into()),
        n => n.unwrap_or(DEFAULT_MAX_LISTING_LINES),
    };
    if let Some(id) = &a.identity {
        if id.is_empty() || id.chars().any(|c| c.is_control()) {
            return Err("identity is empty or holds a control character".into());
        }
    }
    Ok(Account {
        identity: a.identity,
        name: a
            .name
            .unwrap_or_else(|| format!("{user}@{}", super::bracket(&host))),
        target: Target {
            host,
            port,
            security,
            ca_file: a.ca_file.map(|f| expand_path(&f, base)),
        },
        user,
        auth,
        password,
        destination,
        policy,
        limits: Limits {
            max_messages: a.max_messages,
            max_bytes: a.max_bytes,
            max_message_size: a.max_message_size,
            message_timeout,
            run_timeout,
            max_listing_lines,
        },
        timeout,
        maildir_sync: a.maildir_sync.unwrap_or_default(),
    })
}

/// The deletion policy of `keep` and `delete_after_days`.
pub fn policy(keep: Option<bool>, days: Option<u32>) -> Result<DeletePolicy, String> {
    Ok(match (keep, days) {
        (Some(false), Some(_)) => {
            return Err("delete_after_days needs keep = true (or no keep at all)".into())
        }
        (_, Some(d)) => DeletePolicy::DeleteAfterDays(d),
        (Some(true), None) => DeletePolicy::Keep,
        (Some(false) | None, None) => DeletePolicy::Delete,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("pop3s://alice@mail.example.org").unwrap();
        assert_eq!(
            u,
            ParsedUrl {
                user: "alice".into(),
                host: "mail.example.org".into(),
                port: 995,
                security: Security::Tls
            }
        );
        let u = parse_url("pop3://alice%40example.org@127.0.0.1:1110/").unwrap();
        assert_eq!(u.user, "alice@example.org");
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 1110));
        assert_eq!(u.security, Security::Starttls);
        let u = parse_url("POP3S://bob@example.org@[::1]:995").unwrap();
        assert_eq!(
            (u.user.as_str(), u.host.as_str()),
            ("bob@example.org", "::1")
        );
        for bad in [
            "imap://a@b",
            "pop3s://b",
            "pop3s://a:secret@b",
            "pop3s://a@b:0",
            "pop3s://a@b:99999",
            "pop3s://a@b:+1",
            "pop3s://a@b/INBOX",
            "pop3s://@b",
            "pop3s://a@",
            "pop3s://a@[::1",
            "pop3s://a%4@b",
            "mail.example.org",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        let e = parse_url("pop3s://a:secret@b").unwrap_err().to_string();
        assert!(!e.contains("secret") || e.contains("\"pop3s://a:secret@b\""));
    }

    #[test]
    fn a_full_file() {
        let text = r#"
            state_dir = "state"
            [[account]]
            name = "work"
            url = "pop3s://alice@mail.example.org"
            ca_file = "ca.pem"
            auth = "cram-md5"
            password_command = "echo x"
            maildir = "Mail"
            keep = true
            delete_after_days = 7
            max_messages = 10
            [[account]]
            host = "127.0.0.1"
            port = 1110
            user = "bob"
            security = "plaintext"
            password_env = "BOB_PW"
            mbox = "/var/mail/bob"
            timeout_secs = 5
            message_timeout_secs = 7
            run_timeout_secs = 8
            max_listing_lines = 9
        "#;
        let c = parse(text, Path::new("/etc/f/fetch.toml")).unwrap();
        assert_eq!(c.state_dir, Some(PathBuf::from("/etc/f/state")));
        let w = &c.accounts[0];
        assert_eq!(w.name, "work");
        assert_eq!(w.target.ca_file, Some(PathBuf::from("/etc/f/ca.pem")));
        assert_eq!(w.auth, AuthMethod::CramMd5);
        assert!(matches!(&w.password, PasswordSource::Command(c) if c == "echo x"));
        assert_eq!(
            w.destination,
            DestinationSpec::Maildir("/etc/f/Mail".into())
        );
        assert_eq!(w.policy, DeletePolicy::DeleteAfterDays(7));
        assert_eq!(w.limits.max_messages, Some(10));
        assert_eq!(w.state_key(), "alice@mail.example.org");
        let b = &c.accounts[1];
        assert_eq!(b.name, "bob@127.0.0.1");
        assert_eq!(b.target.security, Security::Plaintext);
        assert_eq!(b.target.port, 1110);
        assert_eq!(b.policy, DeletePolicy::Delete);
        assert_eq!(b.timeout, Duration::from_secs(5));
        assert_eq!(b.limits.message_timeout, Duration::from_secs(7));
        assert_eq!(b.limits.run_timeout, Duration::from_secs(8));
        assert_eq!(b.limits.max_listing_lines, 9);
        assert_eq!(w.limits.run_timeout, DEFAULT_RUN_TIMEOUT);
        assert_eq!(w.limits.message_timeout, DEFAULT_MESSAGE_TIMEOUT);
        assert_eq!(w.limits.max_listing_lines, DEFAULT_MAX_LISTING_LINES);
    }

    #[test]
    fn mistakes_are_refused_with_a_reason() {
        let cases = [
            ("[[account]]\nurl = \"pop3s://a@b\"\nmaildir = \"m\"\ncolour = 1\n", "colour"),
            ("[[account]]\nurl = \"pop3s://a@b\"\n", "destination"),
            ("[[account]]\nurl = \"pop3s://a@b\"\nmaildir = \"m\"\nmbox = \"x\"\n", "destination"),
            ("[[account]]\nurl = \"pop3s://a@b\"\nmaildir = \"m\"\npassword = \"p\"\npassword_env = \"X\"\n", "at most one"),
            ("[[account]]\nhost = \"b\"\nmaildir = \"m\"\n", "no user"),
            ("[[account]]\nurl = \"pop3s://a@b\"\nhost = \"b\"\nmaildir = \"m\"\n", "not both"),
            ("[[account]]\nurl = \"pop3s://a@b\"\nsecurity = \"starttls\"\nmaildir = \"m\"\n", "contradicts"),
            ("[[account]]\nurl = \"pop3s://a@b\"\nmaildir = \"m\"\nkeep = false\ndelete_after_days = 3\n", "keep = true"),
            ("[[account]]\nurl = \"pop3s://a@b\"\nmaildir = \"m\"\nauth = \"login\"\n", "unknown login method"),
            ("[[account]]\nurl = \"pop3s://a@b\"\nmaildir = \"m\"\n[[account]]\nurl = \"pop3s://a@b\"\nmaildir = \"n\"\n", "two accounts"),
            ("", "no [[account]]"),
            ("[[account]]\nurl = \"pop3s://a@b\"\nmaildir = \"m\"\nrun_timeout_secs = 0\n", "run_timeout_secs must be at least 1"),
            ("[[account]]\nurl = \"pop3s://a@b\"\nmaildir = \"m\"\nmessage_timeout_secs = 0\n", "message_timeout_secs must be at least 1"),
            ("[[account]]\nurl = \"pop3s://a@b\"\nmaildir = \"m\"\nmax_listing_lines = 0\n", "max_listing_lines must be at least 1"),
        ];
        for (text, why) in cases {
            let e = parse(text, Path::new("f.toml")).unwrap_err().to_string();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_password_in_a_readable_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fetch.toml");
        std::fs::write(
            &path,
            "[[account]]\nurl = \"pop3s://a@b\"\nmaildir = \"m\"\npassword = \"hunter2\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && e.contains("644"), "{e}");
        assert!(!e.contains("hunter2"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = load(&path).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        // Without a password in it, the file may be readable.
        std::fs::write(
            &path,
            "[[account]]\nurl = \"pop3s://a@b\"\nmaildir = \"m\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load(&path).is_ok());
    }

    #[test]
    fn password_sources() {
        let cmd = PasswordSource::Command("printf 'from-command\\nsecond line\\n'".into());
        assert_eq!(cmd.resolve("a").unwrap().expose(), "from-command");
        let failing = PasswordSource::Command("exit 3".into());
        assert!(failing
            .resolve("a")
            .unwrap_err()
            .to_string()
            .contains("failed"));
        let unset = PasswordSource::Env("FACTEUR_TEST_SURELY_UNSET_VARIABLE".into());
        assert!(unset.resolve("a").is_err());
        let inline = PasswordSource::Inline(Secret::new("p".into()));
        assert_eq!(inline.resolve("a").unwrap().expose(), "p");
    }

    /// `token_command`: the trimmed output, one token; bounded in time and size.
    #[test]
    fn token_commands() {
        let token = PasswordSource::TokenCommand("printf '  eyJ.a.b  \\n'".into());
        assert!(token.is_token());
        assert_eq!(token.resolve("a").unwrap().expose(), "eyJ.a.b");
        for (command, needle) in [
            ("exit 3", "failed"),
            ("true", "one token"),
            ("echo two words", "one token"),
        ] {
            let e = PasswordSource::TokenCommand(command.into())
                .resolve("a")
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{command}: {e}");
        }
        let started = std::time::Instant::now();
        let e = run_capped("sleep 10", Duration::from_millis(300), 100)
            .err()
            .unwrap();
        assert!(e.contains("did not finish"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let e = run_capped("head -c 100000 /dev/zero", Duration::from_secs(10), 1000)
            .err()
            .unwrap();
        assert!(e.contains("more than 1000 octets"), "{e}");
        // A command that exits but leaves a child holding its output open: cut at the
        // deadline, the child killed with its group.
        let started = std::time::Instant::now();
        assert!(run_capped("sleep 10 & echo x", Duration::from_millis(300), 100).is_err());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_retr_may_pass_its_list_size_by_a_bounded_slack() {
        assert_eq!(retr_limit(0, None), RETR_SLACK_MIN);
        assert_eq!(retr_limit(1000, None), 1000 + RETR_SLACK_MIN);
        assert_eq!(retr_limit(8_000_000, None), 9_000_000);
        assert_eq!(retr_limit(8_000_000, Some(8_500_000)), 8_500_000);
        assert_eq!(retr_limit(u64::MAX, None), u64::MAX);
        // A server that counts LF line ends lists one octet less per line: base64 bodies
        // (78 octets a line on the wire) stay well inside.
        let lines = 100_000u64;
        assert!(lines * 77 + lines <= retr_limit(lines * 77, None));
    }

    #[test]
    fn state_keys_are_file_names() {
        let mut a = parse(
            "[[account]]\nurl = \"pop3s://a%2Fb@[::1]:995\"\nmaildir = \"m\"\n",
            Path::new("f"),
        )
        .unwrap()
        .accounts
        .remove(0);
        assert_eq!(a.state_key(), "a%2Fb@localhost");
        a.user = "../x".into();
        assert!(!a.state_key().contains('/'));
        a.user = "x".repeat(400);
        let long = a.state_key();
        assert!(long.len() <= MAX_STATE_KEY, "{long}");
        a.user = "%".repeat(400);
        let long = a.state_key();
        assert!(long.len() <= MAX_STATE_KEY, "{long}");
        assert!(percent_decode(long.rsplit_once('-').unwrap().0.as_bytes()).is_some());
        assert_ne!(long, {
            a.user.push('x');
            a.state_key()
        });
    }

    #[test]
    fn the_identity_ignores_port_tls_case_and_loopback_aliases() {
        let id = mailbox_identity;
        for host in [
            "localhost",
            "LocalHost.",
            "127.0.0.1",
            "::1",
            "[::1]",
            "0:0:0:0:0:0:0:1",
            "::ffff:127.0.0.1",
        ] {
            assert_eq!(id("alice", host), "alice@localhost", "{host}");
        }
        assert_eq!(id("alice", "Mail.Example.ORG."), "alice@mail.example.org");
        assert_eq!(
            id("Alice@Example.ORG", "pop.example.org"),
            "Alice@example.org@pop.example.org"
        );
        // Kept apart: the local part's case, other loopback addresses, names not resolved.
        assert_ne!(id("Alice", "h"), id("alice", "h"));
        assert_ne!(id("a", "127.0.0.2"), id("a", "localhost"));
        assert_ne!(id("a", "mail.localhost"), id("a", "localhost"));
        assert_eq!(id("a", "2001:DB8::0:1"), "a@2001:db8::1");
        let parse = |text: &str| parse(text, Path::new("f"));
        let a = &parse("[[account]]\nurl = \"pop3s://alice@localhost\"\nmaildir = \"m\"\n")
            .unwrap()
            .accounts[0];
        let b = &parse("[[account]]\nurl = \"pop3://alice@127.0.0.1:11110\"\nsecurity = \"plaintext\"\nmaildir = \"m\"\n").unwrap().accounts[0];
        assert_eq!(a.state_key(), b.state_key());
        assert_eq!(a.file_tag(), b.file_tag());
        let pinned = &parse("[[account]]\nurl = \"pop3s://alice@localhost\"\nidentity = \"tunnel one\"\nmaildir = \"m\"\n").unwrap().accounts[0];
        assert_eq!(pinned.state_key(), "tunnel%20one");
    }

    #[test]
    fn two_accounts_of_one_maildrop_are_refused() {
        let text = "[[account]]\nname = \"tls\"\nurl = \"pop3s://alice@localhost\"\nmaildir = \"m\"\n\
                    [[account]]\nname = \"plain\"\nurl = \"pop3://alice@127.0.0.1:110\"\nmaildir = \"n\"\n";
        let e = parse(text, Path::new("f")).unwrap_err().to_string();
        assert!(
            e.contains("same maildrop") && e.contains("\"tls\"") && e.contains("identity"),
            "{e}"
        );
        let apart = text.replace("name = \"plain\"", "name = \"plain\"\nidentity = \"other\"");
        assert_eq!(parse(&apart, Path::new("f")).unwrap().accounts.len(), 2);
    }

    #[test]
    fn maildir_sync_is_auto_unless_set() {
        let text = "[[account]]\nurl = \"pop3s://alice@localhost\"\nmaildir = \"m\"\n";
        let a = &parse(text, Path::new("f")).unwrap().accounts[0];
        assert_eq!(a.maildir_sync, MaildirSync::Auto);
        let fsync = format!("{text}maildir_sync = \"fsync\"\n");
        let a = &parse(&fsync, Path::new("f")).unwrap().accounts[0];
        assert_eq!(a.maildir_sync, MaildirSync::Fsync);
        let bad = format!("{text}maildir_sync = \"never\"\n");
        assert!(parse(&bad, Path::new("f")).is_err());
        assert_eq!("fsync".parse(), Ok(MaildirSync::Fsync));
        assert!("syncfs".parse::<MaildirSync>().is_err());
    }

    #[test]
    fn legacy_keys_are_recognised() {
        let k = legacy_state_key("a_b@x", "::1", 995);
        assert_eq!(k, "a_b@x@%3A%3A1_995");
        assert_eq!(
            parse_legacy_state_key(&k),
            Some(("a_b@x".into(), "::1".into(), 995))
        );
        assert_eq!(parse_legacy_state_key("alice@localhost"), None);
        assert_eq!(parse_legacy_state_key("alice@h_99999"), None);
        assert_eq!(parse_legacy_state_key("@h_1"), None);
        // New keys never hold '_'.
        assert!(!state_key_of("a_b@c_1").contains('_'));
    }
}
