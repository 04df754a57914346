//! `facteur fetch`: download mail from POP3 accounts into a Maildir, an mbox or an MDA, and
//! never lose a message on the way.
//!
//! One run of one account:
//! 1. Lock the account's state; settle what an interrupted run left (see [`super::state`] and
//!    [`super::dest`]); fold the journal into the snapshot.
//! 2. Connect (TLS, STLS, or plaintext if allowed), log in with the strongest method offered.
//! 3. LIST and UIDL (together, with PIPELINING) and make the plan: what to fetch (not yet
//!    fetched, within the limits), what to delete without fetching (fetched before, and due).
//! 4. Fetch in batches: with PIPELINING, the RETRs of a batch go out in one write, two batches
//!    ahead (before the commit of the batch that just arrived, so that the server sends while
//!    the disk works), with the DELEs of the batch committed before. Each message is streamed to the
//!    destination; at the end of the batch the destination makes them durable and the journal
//!    records them. Only then are DELEs sent for them.
//! 5. QUIT: its `+OK` means the server applied the deletions; the state forgets those messages.
//!    If QUIT fails or the connection drops, nothing was deleted (RFC 1939 section 6), the
//!    state still knows the messages, and the next run deletes them without fetching them
//!    again.
//!
//! A server without UIDL can only be used in fetch-and-delete mode; there, a crash between the
//! local write and the server's `+OK` to QUIT fetches those messages again (at-least-once).
//!
//! Exit status: 0 something was fetched (or, with `--dry-run`, would be), 1 nothing new,
//! 2 usage or configuration error, 3 another `facteur fetch` holds an account's lock, 4 a
//! connection, TLS or POP3 error (a message cut off or refused by the server, or a deadline
//! passed), 5 login refused, 6 local delivery or state error (the messages stay on the server). With several accounts, the highest error status wins; with
//! no error, 0 if any account fetched something.

use super::auth::{self, AuthError, AuthMethod};
use super::config::{
    self, Account, ConfigError, DeletePolicy, DestinationSpec, Limits, MaildirSync, PasswordSource,
    BATCH_BYTES, BATCH_MESSAGES, MAX_PARALLEL_ACCOUNTS,
};
use super::dest::{self, DestError, Destination, StagedMessage};
use super::state::{AccountState, StateError};
use super::{Connection, Pop3Error, Security, Target};
use facteur_proto::client::Listing;
use facteur_proto::command::Command;
use facteur_proto::{MsgNum, Secret, Uidl};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Something was fetched (or would be, with `--dry-run`).
pub const EXIT_FETCHED: u8 = 0;
/// Nothing new: like fetchmail's 1, so that scripts can tell.
pub const EXIT_NOTHING: u8 = 1;
/// The command line or the configuration is wrong; nothing was attempted.
pub const EXIT_USAGE: u8 = 2;
/// Another `facteur fetch` is running for an account.
pub const EXIT_LOCKED: u8 = 3;
/// Connection, TLS or POP3 error (try again later).
pub const EXIT_SERVER: u8 = 4;
/// The server refused the login.
pub const EXIT_AUTH: u8 = 5;
/// A message could not be delivered locally, or the state could not be written.
pub const EXIT_LOCAL: u8 = 6;

/// The environment variable that arms a fault (see [`Fault`]): for the crash tests only.
pub const FAULT_ENV: &str = "FACTEUR_FETCH_FAULT";

/// `facteur fetch`: the options.
#[derive(clap::Args, Debug, Clone, Default)]
#[command(
    after_help = "Exit status: 0 fetched, 1 nothing new, 2 usage or configuration error, \
3 another fetch holds an account's lock, 4 connection/TLS/POP3 error (also: a message the \
server refused to send, or cut off), 5 login refused, \
6 local delivery or state error (messages stay on the server).

What the server says is a claim: a message is read up to its LIST size plus 1/8 (at least \
4 KiB more), and never past --max-message-size; one that goes on, or that takes longer than \
--message-timeout, is cut off, left on the server (never deleted) and reported (status 4), \
and the run goes on with the other messages. LIST and UIDL listings longer than \
max_listing_lines (configuration file; default 1000000) are refused."
)]
pub struct FetchArgs {
    /// One account: pop3s://user@host (TLS, port 995) or pop3://user@host (STLS, or no TLS
    /// with --plaintext; port 110), with :port after the host for another port. Without it,
    /// the accounts of the configuration file.
    #[arg(value_name = "URL", conflicts_with_all = ["config", "account"])]
    pub url: Option<String>,
    /// The accounts file [default: ~/.config/facteur/fetch.toml].
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Fetch only this account of the file (by name); may be repeated.
    #[arg(long, short)]
    pub account: Vec<String>,
    /// With a URL: deliver into this Maildir (created if missing).
    #[arg(long, conflicts_with_all = ["mbox", "mda"])]
    pub maildir: Option<PathBuf>,
    /// With --maildir: how each batch of messages is made durable before it is deleted on the
    /// server: auto (one syncfs of the file system per batch of 8 messages or more, an fsync
    /// of each file for fewer) or fsync (always an fsync of each file) [default: auto].
    #[arg(long, value_name = "HOW", requires = "maildir")]
    pub maildir_sync: Option<MaildirSync>,
    /// With a URL: append to this mbox file.
    #[arg(long, conflicts_with = "mda")]
    pub mbox: Option<PathBuf>,
    /// With a URL: run this command (sh -c) for each message, fed on its standard input.
    #[arg(long, value_name = "COMMAND")]
    pub mda: Option<String>,
    /// Leave the messages on the server (each is fetched once).
    #[arg(long)]
    pub keep: bool,
    /// Leave the messages on the server, and delete them this many days after they were
    /// fetched.
    #[arg(long, value_name = "DAYS")]
    pub delete_after_days: Option<u32>,
    /// Fetch at most this many messages in this run.
    #[arg(long, value_name = "N")]
    pub max_messages: Option<u64>,
    /// Fetch at most this many octets in this run (at least one message is fetched).
    #[arg(long, value_name = "OCTETS")]
    pub max_bytes: Option<u64>,
    /// Leave messages larger than this on the server (by LIST size), and cut off any message
    /// that turns out to be larger while it is read.
    #[arg(long, value_name = "OCTETS")]
    pub max_message_size: Option<u64>,
    /// The login method: auto (the strongest offered), scram-sha-256, cram-md5, apop, plain,
    /// user.
    #[arg(long, value_name = "METHOD")]
    pub auth: Option<AuthMethod>,
    /// Trust the certificates of this PEM file instead of the system's store. A certificate
    /// of the file that the server presents as it is, is accepted even if it is an
    /// authority's (CA:TRUE, as openssl req -x509 makes them); its name and dates are checked.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// With a pop3:// URL: no TLS at all (passwords and mail in clear).
    #[arg(long)]
    pub plaintext: bool,
    /// With a URL: read the password from this environment variable.
    #[arg(long, value_name = "VAR", conflicts_with = "password_command")]
    pub password_env: Option<String>,
    /// With a URL: run this command (sh -c) and use the first line it prints as the password.
    #[arg(long, value_name = "COMMAND")]
    pub password_command: Option<String>,
    /// Where each account's state (what was fetched) is kept, one per maildrop: user and
    /// server, whatever the port, the TLS mode or the name (localhost, 127.0.0.1 and ::1 are
    /// one) [default: ~/.local/state/facteur/fetch].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Seconds to wait for the server at each step (silence only: see the next two)
    /// [default: 60].
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Seconds one message may take to arrive; a slower one is cut off and left on the
    /// server [default: 900].
    #[arg(long, value_name = "SECS")]
    pub message_timeout: Option<u64>,
    /// Seconds a run of one account may take; then it stops, keeping what it committed
    /// [default: 3600].
    #[arg(long, value_name = "SECS")]
    pub run_timeout: Option<u64>,
    /// List what would be fetched and deleted; change nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Print the POP3 exchange on the standard error, each line after the account's name:
    /// `C:` what facteur sent, `S:` what the server said. Passwords, APOP digests and SASL
    /// responses are redacted, and messages summed up by their size.
    #[arg(long)]
    pub trace: bool,
    /// No progress bar and no summary: only errors (for cron).
    #[arg(long, short)]
    pub quiet: bool,
}

/// Messages cut off in one run before it gives up and leaves the rest for the next run: each
/// costs a new connection and login, and a server that cuts every message is not worth more.
pub const MAX_CUT_MESSAGES: usize = 5;

/// A point of the commit sequence where a crash can be simulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultPoint {
    /// The message is written and fsynced locally, not yet recorded.
    AfterWrite,
    /// `P` lines are in the journal; the messages are not yet in place.
    AfterRecord,
    /// mbox: half of the batch's octets are appended.
    MidAppend,
    /// The messages are in place and safe (durable, or a Maildir's renames recorded by
    /// durable `P` lines); no `D` line yet.
    AfterCommit,
    /// `D` lines written; no DELE sent yet.
    AfterDone,
    /// DELEs sent and answered; no QUIT yet.
    BeforeQuit,
}

/// What an armed fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultAction {
    /// Return an error at once, with no cleanup (in-process tests).
    Stop,
    /// `abort()` the process: no destructor runs, nothing is flushed (the binary's tests).
    Abort,
}

/// A simulated crash: at `point`, once `at_message` messages have been written in this run.
/// Written `after-write:5` (and `after-record`, `mid-append`, `after-commit`, `after-done`,
/// `before-quit`) in [`FAULT_ENV`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub point: FaultPoint,
    pub at_message: u64,
    pub action: FaultAction,
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (point, n) = s.split_once(':').unwrap_or((s, "1"));
        let point = match point {
            "after-write" => FaultPoint::AfterWrite,
            "after-record" => FaultPoint::AfterRecord,
            "mid-append" => FaultPoint::MidAppend,
            "after-commit" => FaultPoint::AfterCommit,
            "after-done" => FaultPoint::AfterDone,
            "before-quit" => FaultPoint::BeforeQuit,
            _ => return Err(format!("unknown fault point {point:?}")),
        };
        let at_message = n.parse().map_err(|_| format!("bad message count {n:?}"))?;
        Ok(Fault {
            point,
            at_message,
            action: FaultAction::Abort,
        })
    }
}

/// How a run goes, for every account.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub state_dir: PathBuf,
    pub dry_run: bool,
    /// The time (Unix seconds) to use as now; `None`: the clock (tests move it forward).
    pub now: Option<u64>,
    pub fault: Option<Fault>,
    /// Trace the POP3 exchange there (`--trace`), secrets redacted.
    pub trace: Option<crate::Trace>,
}

/// Why an account's run failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Dest(#[from] DestError),
    #[error(transparent)]
    Pop3(#[from] Pop3Error),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("the server does not support UIDL, so facteur fetch cannot tell which messages it already fetched: leaving messages on the server (keep, delete_after_days) is impossible here; fetch and delete them instead")]
    NoUidl,
    #[error("the server's LIST and UIDL disagree about message {0}")]
    Inconsistent(u32),
    #[error("message {msg} goes past {limit} octets though LIST said {listed}: cut off, left on the server")]
    TooLarge {
        msg: MsgNum,
        listed: u64,
        limit: u64,
    },
    #[error("message {msg} took longer than {secs} s (message_timeout_secs): cut off, left on the server")]
    TooSlow { msg: MsgNum, secs: u64 },
    #[error("the server refused to send message {msg} ({size} octets): {reply}; it stays on the server and the next run tries again")]
    RetrRefused {
        msg: MsgNum,
        size: u64,
        reply: String,
    },
}

impl FetchError {
    /// The exit status this error stands for.
    pub fn exit_code(&self) -> u8 {
        match self {
            FetchError::State(StateError::Locked(_)) => EXIT_LOCKED,
            FetchError::State(_) | FetchError::Dest(_) => EXIT_LOCAL,
            FetchError::Auth(AuthError::Pop3(_)) => EXIT_SERVER,
            FetchError::Auth(_) => EXIT_AUTH,
            FetchError::Pop3(_)
            | FetchError::NoUidl
            | FetchError::Inconsistent(_)
            | FetchError::TooLarge { .. }
            | FetchError::TooSlow { .. }
            | FetchError::RetrRefused { .. } => EXIT_SERVER,
        }
    }
}

/// A message of the maildrop, as LIST and UIDL describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerMessage {
    pub msg: MsgNum,
    pub size: u64,
    /// `None` on a server without UIDL, or when two messages share a unique-id.
    pub uid: Option<Uidl>,
}

/// What a run will do with the maildrop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// To fetch, in message order.
    pub fetch: Vec<ServerMessage>,
    /// Fetched by an earlier run and due for deletion: deleted without being fetched again.
    pub delete: Vec<ServerMessage>,
    /// New, but left for a later run by max_messages or max_bytes.
    pub deferred: u64,
    /// New, but larger than max_message_size: left on the server.
    pub too_big: u64,
    /// Without a usable unique-id, in a mode that leaves messages on the server: skipped.
    pub unidentified: u64,
}

const DAY: u64 = 86_400;

/// The plan for `messages` (LIST and UIDL, in order). `fetched_at` tells when a unique-id was
/// first fetched, if it was.
pub fn plan(
    messages: &[ServerMessage],
    uidl: bool,
    fetched_at: impl Fn(&Uidl) -> Option<u64>,
    policy: DeletePolicy,
    limits: Limits,
    now: u64,
) -> Result<Plan, FetchError> {
    if !uidl && policy != DeletePolicy::Delete {
        return Err(FetchError::NoUidl);
    }
    let mut counts: HashMap<&Uidl, u32> = HashMap::new();
    for m in messages {
        if let Some(u) = &m.uid {
            *counts.entry(u).or_default() += 1;
        }
    }
    let mut p = Plan::default();
    let mut bytes = 0u64;
    for m in messages {
        // A unique-id shared by two messages identifies neither.
        let uid = m.uid.as_ref().filter(|u| counts.get(u) == Some(&1));
        if let Some(t) = uid.and_then(&fetched_at) {
            let due = match policy {
                DeletePolicy::Delete => true,
                DeletePolicy::Keep => false,
                DeletePolicy::DeleteAfterDays(d) => {
                    now >= t.saturating_add(u64::from(d).saturating_mul(DAY))
                }
            };
            if due {
                p.delete.push(m.clone());
            }
            continue;
        }
        if uid.is_none() && policy != DeletePolicy::Delete {
            p.unidentified += 1;
            continue;
        }
        if limits.max_message_size.is_some_and(|max| m.size > max) {
            p.too_big += 1;
            continue;
        }
        let full = limits
            .max_messages
            .is_some_and(|max| p.fetch.len() as u64 >= max)
            || limits
                .max_bytes
                .is_some_and(|max| !p.fetch.is_empty() && bytes.saturating_add(m.size) > max);
        if full {
            p.deferred += 1;
            continue;
        }
        bytes = bytes.saturating_add(m.size);
        p.fetch.push(ServerMessage {
            uid: uid.cloned(),
            ..m.clone()
        });
    }
    Ok(p)
}

/// What a run of one account did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The login method used.
    pub method: Option<AuthMethod>,
    /// Messages in the maildrop at login.
    pub on_server: usize,
    /// Messages fetched and committed.
    pub fetched: u64,
    /// Their octets, as received.
    pub octets: u64,
    /// Messages the server confirmed deleted (QUIT `+OK`).
    pub deleted: u64,
    /// Messages an interrupted run had left, found to have arrived.
    pub recovered: u64,
    /// The plan (for `--dry-run`, what would be done).
    pub plan: Plan,
    pub warnings: Vec<String>,
    /// Messages cut off (larger than listed, or too slow) or refused by the server (`-ERR` to
    /// RETR) and left on the server: the run went on without them, but fails
    /// ([`EXIT_SERVER`]), and says so even with `--quiet`.
    pub errors: Vec<String>,
    pub elapsed: Duration,
}

impl Report {
    /// True if the run fetched something (or, dry, would).
    pub fn got_something(&self, dry_run: bool) -> bool {
        if dry_run {
            !self.plan.fetch.is_empty()
        } else {
            self.fetched > 0
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Where the faults stand in this run.
struct Faults {
    fault: Option<Fault>,
    written: u64,
}

impl Faults {
    fn fire(&self, point: FaultPoint) -> bool {
        match self.fault {
            Some(f) if f.point == point && self.written >= f.at_message => {
                if f.action == FaultAction::Abort {
                    std::process::abort();
                }
                true
            }
            _ => false,
        }
    }

    fn check(&self, point: FaultPoint) -> Result<(), DestError> {
        if self.fire(point) {
            Err(DestError::Injected(point))
        } else {
            Ok(())
        }
    }
}

/// Run one account: see the module documentation for the steps.
///
/// A message cut off (larger than LIST said, or slower than `message_timeout_secs`) ends its
/// connection, as a RETR cannot be abandoned half-way in POP3: the messages of its batch that
/// did arrive are committed, then the run connects again and goes on without it, up to
/// [`MAX_CUT_MESSAGES`] times. The cut messages stay on the server and are reported as errors.
pub async fn fetch_account(
    account: &Account,
    password: &Secret<String>,
    opts: &RunOptions,
    progress: &ProgressBar,
) -> Result<Report, FetchError> {
    let started = Instant::now();
    let run_deadline = super::Deadline::after(account.limits.run_timeout);
    let now = opts.now.unwrap_or_else(unix_now);
    let key = account.state_key();
    let mut report = Report::default();
    let mut state = if opts.dry_run {
        AccountState::open_read_only(&opts.state_dir, &key)?
    } else {
        AccountState::open(&opts.state_dir, &key)?
    };
    let mut dest = None;
    if !opts.dry_run {
        dest::sync_journal_maildirs(state.journal_maildirs())?;
        let arrived = dest::recover(state.pending(), &state.spool_path())?;
        report.recovered = arrived.len() as u64;
        state.finish_recovery(&arrived, now)?;
    }
    report.recovered += adopt_legacy_states(account, opts, &mut state, now)?;
    if !opts.dry_run {
        dest = Some(Destination::open_with(
            &account.destination,
            &state.spool_path(),
            &account.file_tag(),
            account.maildir_sync,
        )?);
    }
    let mut run = Run {
        account,
        password,
        opts,
        progress,
        state: &mut state,
        dest: dest.as_mut(),
        run_deadline,
        now,
        skip: HashSet::new(),
        report: &mut report,
    };
    let mut cuts = 0usize;
    loop {
        match run.session().await? {
            None => break,
            Some(cut) => {
                run.report.errors.push(cut.error.to_string());
                cuts += 1;
                let again = cuts < MAX_CUT_MESSAGES;
                match cut.uid {
                    // The next connection's plan leaves it out.
                    Some(uid) if again => {
                        run.skip.insert(uid);
                    }
                    // Without a unique-id it cannot be told apart after a reconnection: the
                    // rest waits for the next run.
                    _ => break,
                }
            }
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Fold into `state` the states that facteur wrote for this maildrop before identities (keyed
/// by user, host and port: one per port and host name used), settling what an interrupted run
/// of theirs left, then remove them. With `--dry-run`, they are only read. Returns the messages
/// found to have arrived in their recovery.
fn adopt_legacy_states(
    account: &Account,
    opts: &RunOptions,
    state: &mut AccountState,
    now: u64,
) -> Result<u64, FetchError> {
    let identity = account.identity();
    let keys = super::state::legacy_keys(&opts.state_dir, |user, host, port| {
        match &account.identity {
            // A pinned identity takes only the state of its very user, host and port.
            Some(_) => {
                user == account.user && host == account.target.host && port == account.target.port
            }
            None => config::mailbox_identity(user, host) == identity,
        }
    })?;
    let mut recovered = 0u64;
    for key in keys {
        if opts.dry_run {
            state.absorb(&AccountState::open_read_only(&opts.state_dir, &key)?)?;
            continue;
        }
        let mut old = AccountState::open(&opts.state_dir, &key)?;
        dest::sync_journal_maildirs(old.journal_maildirs())?;
        let arrived = dest::recover(old.pending(), &old.spool_path())?;
        recovered += arrived.len() as u64;
        old.finish_recovery(&arrived, now)?;
        // What the old key's runs left unrecorded in a Maildir's tmp/ goes, as its own would.
        drop(Destination::open(
            &account.destination,
            &old.spool_path(),
            &config::file_tag_of(&key),
        )?);
        state.absorb(&old)?;
        old.remove_files()?;
    }
    Ok(recovered)
}

/// One run of one account, across its connections.
struct Run<'a> {
    account: &'a Account,
    password: &'a Secret<String>,
    opts: &'a RunOptions,
    progress: &'a ProgressBar,
    state: &'a mut AccountState,
    /// `None` for `--dry-run`.
    dest: Option<&'a mut Destination>,
    run_deadline: Option<super::Deadline>,
    now: u64,
    /// Unique-ids of the messages cut off in this run: not tried again.
    skip: HashSet<Uidl>,
    report: &'a mut Report,
}

/// A message cut off: the connection was dropped in the middle of its RETR.
struct Cut {
    uid: Option<Uidl>,
    error: FetchError,
}

impl Run<'_> {
    /// One connection: log in, plan, fetch, delete, QUIT. `Some` if a message was cut off,
    /// after the messages before it were committed; the connection is then dropped with no
    /// QUIT, so the server deletes nothing (the state remembers what is due).
    async fn session(&mut self) -> Result<Option<Cut>, FetchError> {
        let (account, progress, now) = (self.account, self.progress, self.now);
        let report = &mut *self.report;
        let state = &mut *self.state;
        progress.set_message("connecting");
        let mut conn = Connection::connect_traced(
            &account.target,
            account.timeout,
            self.run_deadline,
            self.opts.trace.as_ref().map(|t| t.prefixed(&account.name)),
        )
        .await?;
        // A bearer token goes with OAUTHBEARER (or XOAUTH2, if that is all the server offers).
        let wanted = if account.password.is_token() && account.auth == auth::AuthMethod::Auto {
            auth::AuthMethod::bearer_for(&conn)
        } else {
            account.auth
        };
        let method = auth::login(&mut conn, &account.user, self.password, wanted).await?;
        report.method = Some(method);
        let pipelining = conn.capabilities().pipelining;
        let (messages, uidl) =
            scan(&mut conn, pipelining, account.limits.max_listing_lines).await?;
        report.on_server = messages.len();
        let candidates: Vec<ServerMessage> = messages
            .iter()
            .filter(|m| !m.uid.as_ref().is_some_and(|u| self.skip.contains(u)))
            .cloned()
            .collect();
        let plan = plan(
            &candidates,
            uidl,
            |u| state.fetched_at(u),
            account.policy,
            account.limits,
            now,
        )?;
        report.plan = plan.clone();
        let Some(dest) = self.dest.as_deref_mut() else {
            // --dry-run: the plan is the report.
            let _ = conn.quit().await;
            return Ok(None);
        };

        let total = plan.fetch.len();
        progress.set_length(
            plan.fetch
                .iter()
                .fold(0u64, |sum, m| sum.saturating_add(m.size)),
        );
        progress.set_message(format!("0/{}", count(total as u64, "message")));
        let delete_at_once = matches!(
            account.policy,
            DeletePolicy::Delete | DeletePolicy::DeleteAfterDays(0)
        );
        let mut faults = Faults {
            fault: self.opts.fault,
            written: 0,
        };
        let mut deles = Deletions::default();
        for m in &plan.delete {
            deles.queue(&mut conn, m);
            if !pipelining {
                conn.flush().await?;
                deles.read_replies(&mut conn, report).await?;
            }
        }
        let mut fetched = 0u64;
        let batches = batches(&plan.fetch);
        // With PIPELINING, the RETRs of [`RETR_AHEAD`] batches are out at any time: as batch
        // i has arrived, those of batch i + RETR_AHEAD go out, before batch i's commit, so
        // that the server sends while the commit waits on the disk and while the batches
        // before are read. Batch i's commit is started then (its syncfs on another thread)
        // and completed (recorded) once batch i + 1 has arrived, so that the disk works while
        // the next batch arrives; batch i's DELEs go out right after, with the RETRs of batch
        // i + 1 + RETR_AHEAD; their replies are read after batch i + 2's, which the server
        // sent before them.
        if pipelining {
            for batch in batches.iter().take(RETR_AHEAD) {
                for m in *batch {
                    conn.queue(Command::Retr(m.msg));
                }
            }
        }
        conn.flush().await?;
        deles.read_replies(&mut conn, report).await?;
        // Batch i - 1, its commit started (with PIPELINING), and its messages.
        let mut in_flight: Option<(dest::Prepared, Vec<&ServerMessage>)> = None;
        // Batch i - 1, committed at once (with PIPELINING, into an mbox), its DELEs not sent.
        let mut in_flight_deles: Vec<&ServerMessage> = Vec::new();
        for (i, &batch) in batches.iter().enumerate() {
            let mut staged = Vec::with_capacity(batch.len());
            let mut committed = Vec::with_capacity(batch.len());
            let mut cut = None;
            for m in batch {
                conn.set_message_deadline(super::Deadline::after(account.limits.message_timeout));
                if !pipelining {
                    conn.queue(Command::Retr(m.msg));
                    conn.flush().await?;
                }
                let reply = match conn.reply().await {
                    Err(Pop3Error::MessageDeadline(secs)) => {
                        cut = Some(Cut {
                            uid: m.uid.clone(),
                            error: FetchError::TooSlow { msg: m.msg, secs },
                        });
                        break;
                    }
                    reply => reply?,
                };
                if !reply.status.ok {
                    // Not "nothing new": a message the server would not send is an error,
                    // printed even with --quiet (exit status 4).
                    report.errors.push(
                        FetchError::RetrRefused {
                            msg: m.msg,
                            size: m.size,
                            reply: super::describe_status(&reply.status),
                        }
                        .to_string(),
                    );
                    continue;
                }
                let limit = config::retr_limit(m.size, account.limits.max_message_size);
                let mut writer = dest.begin()?;
                let mut received = 0u64;
                let body = conn
                    .body(|chunk| -> Result<(), FetchError> {
                        received = received.saturating_add(chunk.len() as u64);
                        if received > limit {
                            return Err(FetchError::TooLarge {
                                msg: m.msg,
                                listed: m.size,
                                limit,
                            });
                        }
                        writer.write(chunk)?;
                        progress.inc(chunk.len() as u64);
                        Ok(())
                    })
                    .await;
                let octets = match body {
                    Ok(octets) => octets,
                    Err(e @ FetchError::TooLarge { .. }) => {
                        // Dropping the writer removes what was written of the message.
                        drop(writer);
                        cut = Some(Cut {
                            uid: m.uid.clone(),
                            error: e,
                        });
                        break;
                    }
                    Err(FetchError::Pop3(Pop3Error::MessageDeadline(secs))) => {
                        drop(writer);
                        cut = Some(Cut {
                            uid: m.uid.clone(),
                            error: FetchError::TooSlow { msg: m.msg, secs },
                        });
                        break;
                    }
                    Err(e) => return Err(e),
                };
                let s = writer.finish()?;
                faults.written += 1;
                report.octets = report.octets.saturating_add(octets);
                staged.push(StagedMessage {
                    uid: m.uid.clone(),
                    staged: s,
                });
                committed.push(m);
                faults.check(FaultPoint::AfterWrite)?;
            }
            conn.set_message_deadline(None);
            // Batch i has arrived: batch i - 1's files have been becoming durable meanwhile.
            // (Into an mbox, batch i - 1 was committed at once: its DELEs wait here.)
            let mut to_delete = std::mem::take(&mut in_flight_deles);
            if let Some((prepared, msgs)) = in_flight.take() {
                dest.complete(prepared, state, now, &mut |p| faults.check(p))?;
                fetched += msgs.len() as u64;
                report.fetched += msgs.len() as u64;
                progress.set_message(format!("{fetched}/{}", count(total as u64, "message")));
                faults.check(FaultPoint::AfterDone)?;
                if delete_at_once {
                    to_delete.extend(msgs);
                }
            }
            if pipelining && cut.is_none() {
                // The replies to the DELEs sent as the batch before arrived: after this
                // batch's (see above).
                deles.read_replies(&mut conn, report).await?;
                for m in to_delete {
                    deles.queue(&mut conn, m);
                }
                if let Some(ahead) = batches.get(i + RETR_AHEAD) {
                    for m in *ahead {
                        conn.queue(Command::Retr(m.msg));
                    }
                }
                conn.flush().await?;
            }
            let prepared = dest.prepare(staged)?;
            if pipelining && cut.is_none() && dest.completes_later() {
                in_flight = Some((prepared, committed));
                continue;
            }
            // Without PIPELINING, into an mbox, or with the connection in the middle of a
            // cut-off message: the commit at once; with PIPELINING, the DELEs go out with the
            // next batch's RETRs.
            dest.complete(prepared, state, now, &mut |p| faults.check(p))?;
            fetched += committed.len() as u64;
            report.fetched += committed.len() as u64;
            progress.set_message(format!("{fetched}/{}", count(total as u64, "message")));
            faults.check(FaultPoint::AfterDone)?;
            if cut.is_some() {
                // The connection is in the middle of a reply: drop it, with no QUIT.
                return Ok(cut);
            }
            if delete_at_once {
                if pipelining {
                    in_flight_deles = committed;
                } else {
                    for m in committed {
                        deles.queue(&mut conn, m);
                    }
                    conn.flush().await?;
                    deles.read_replies(&mut conn, report).await?;
                }
            }
        }
        for m in in_flight_deles {
            deles.queue(&mut conn, m);
        }
        if let Some((prepared, msgs)) = in_flight.take() {
            dest.complete(prepared, state, now, &mut |p| faults.check(p))?;
            fetched += msgs.len() as u64;
            report.fetched += msgs.len() as u64;
            progress.set_message(format!("{fetched}/{}", count(total as u64, "message")));
            faults.check(FaultPoint::AfterDone)?;
            if delete_at_once {
                for m in msgs {
                    deles.queue(&mut conn, m);
                }
            }
        }
        conn.flush().await?;
        // Before QUIT makes the server delete anything, what the commits left to the end
        // becomes durable too.
        dest.settle(state)?;
        deles.read_replies(&mut conn, report).await?;
        faults.check(FaultPoint::BeforeQuit)?;

        let on_server: HashSet<Uidl> = messages.iter().filter_map(|m| m.uid.clone()).collect();
        let mut gone: HashSet<Uidl> = HashSet::new();
        match conn.quit().await {
            Ok(()) => {
                report.deleted = deles.accepted.len() as u64;
                gone.extend(deles.accepted.into_iter().flatten());
            }
            Err(e) if !deles.accepted.is_empty() => report.warnings.push(format!(
                "QUIT failed ({e}): the server did not delete the {} marked for deletion; the next run deletes them",
                count(deles.accepted.len() as u64, "message")
            )),
            Err(e) => report.warnings.push(format!("QUIT failed: {e}")),
        }
        state.compact(|u| on_server.contains(u) && !gone.contains(u))?;
        Ok(None)
    }
}

/// Batches whose RETRs are out at once, with PIPELINING: two, so that the server always has
/// a batch to send (about 1 MiB for 256 messages of 4 KB, as much as the sockets' buffers
/// hold on loopback) while the one before is read and committed.
const RETR_AHEAD: usize = 2;

/// DELEs sent and not yet answered, and those the server accepted.
#[derive(Default)]
struct Deletions {
    /// Unique-ids of the DELEs awaiting a reply, in order.
    waiting: std::collections::VecDeque<(MsgNum, Option<Uidl>)>,
    accepted: Vec<Option<Uidl>>,
}

impl Deletions {
    fn queue(&mut self, conn: &mut Connection, m: &ServerMessage) {
        conn.queue(Command::Dele(m.msg));
        #[cfg(test)]
        if let Some(uid) = &m.uid {
            crate::optrace::record(crate::optrace::Op::Dele(uid.clone()));
        }
        self.waiting.push_back((m.msg, m.uid.clone()));
    }

    async fn read_replies(
        &mut self,
        conn: &mut Connection,
        report: &mut Report,
    ) -> Result<(), Pop3Error> {
        while let Some((msg, uid)) = self.waiting.pop_front() {
            let reply = conn.reply().await?;
            if reply.status.ok {
                self.accepted.push(uid);
            } else {
                report.warnings.push(format!(
                    "the server refused to delete message {msg}: {}",
                    super::describe_status(&reply.status)
                ));
            }
        }
        Ok(())
    }
}

/// Batches of at most [`BATCH_MESSAGES`] messages and (unless one message is larger)
/// [`BATCH_BYTES`] octets.
fn batches(messages: &[ServerMessage]) -> Vec<&[ServerMessage]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (i, m) in messages.iter().enumerate() {
        let n = i - start;
        if n > 0 && (n >= BATCH_MESSAGES || bytes.saturating_add(m.size) > BATCH_BYTES) {
            out.extend(messages.get(start..i));
            start = i;
            bytes = 0;
        }
        bytes = bytes.saturating_add(m.size);
    }
    if start < messages.len() {
        out.extend(messages.get(start..));
    }
    out
}

/// LIST and UIDL (in one write with PIPELINING): the messages, and whether UIDL worked. Each
/// listing may have at most `max_lines` lines.
async fn scan(
    conn: &mut Connection,
    pipelining: bool,
    max_lines: u64,
) -> Result<(Vec<ServerMessage>, bool), FetchError> {
    conn.queue(Command::List(None));
    if pipelining {
        conn.queue(Command::Uidl(None));
    }
    conn.flush().await?;
    conn.reply().await?.ok()?;
    let list = conn.listing(max_lines).await?;
    if !pipelining {
        conn.queue(Command::Uidl(None));
        conn.flush().await?;
    }
    let uidl_reply = conn.reply().await?;
    let uids: Option<HashMap<MsgNum, Uidl>> = if uidl_reply.status.ok {
        Some(
            conn.listing(max_lines)
                .await?
                .into_iter()
                .filter_map(|l| match l {
                    Listing::UniqueId { msg, uid } => Some((msg, uid)),
                    _ => None,
                })
                .collect(),
        )
    } else {
        None
    };
    let mut messages = Vec::with_capacity(list.len());
    for l in list {
        if let Listing::Scan { msg, octets } = l {
            let uid = match &uids {
                None => None,
                Some(map) => Some(
                    map.get(&msg)
                        .cloned()
                        .ok_or(FetchError::Inconsistent(msg.get()))?,
                ),
            };
            messages.push(ServerMessage {
                msg,
                size: octets,
                uid,
            });
        }
    }
    if let Some(map) = &uids {
        if map.len() != messages.len() {
            let listed: HashSet<MsgNum> = messages.iter().map(|m| m.msg).collect();
            let extra = map
                .keys()
                .find(|m| !listed.contains(m))
                .map_or(0, |m| m.get());
            return Err(FetchError::Inconsistent(extra));
        }
    }
    Ok((messages, uids.is_some()))
}

/// Run `facteur fetch` and return its exit status.
pub fn run(args: FetchArgs) -> u8 {
    let code = match prepare(&args) {
        Ok((accounts, opts)) => run_accounts(&accounts, &opts, args.quiet),
        Err(e) => {
            eprintln!("facteur fetch: {e}");
            EXIT_USAGE
        }
    };
    let _ = std::io::stdout().flush();
    code
}

/// The accounts of a run, each with its password.
pub type Accounts = Vec<(Account, Secret<String>)>;

/// The accounts and the options of a run, from the command line and the configuration.
fn prepare(args: &FetchArgs) -> Result<(Accounts, RunOptions), ConfigError> {
    let invalid = |s: &str| ConfigError::Invalid(s.to_string());
    let mut file_state_dir = None;
    let mut accounts = if let Some(url) = &args.url {
        vec![url_account(url, args)?]
    } else {
        if args.maildir.is_some() || args.mbox.is_some() || args.mda.is_some() {
            return Err(invalid(
                "--maildir, --mbox and --mda go with a URL; in the configuration file, each account names its own",
            ));
        }
        if args.plaintext || args.password_env.is_some() || args.password_command.is_some() {
            return Err(invalid(
                "--plaintext, --password-env and --password-command go with a URL; in the configuration file, use security and password_env or password_command",
            ));
        }
        let path = match &args.config {
            Some(p) => p.clone(),
            None => config::default_config_path().ok_or_else(|| {
                invalid("no URL, no --config, and no home folder to look for the configuration in")
            })?,
        };
        if args.config.is_none() && !path.exists() {
            return Err(ConfigError::Invalid(format!(
                "no URL given and no configuration file at {} (see facteur fetch --help)",
                path.display()
            )));
        }
        let cfg = config::load(&path)?;
        file_state_dir = cfg.state_dir;
        let mut accounts = cfg.accounts;
        if !args.account.is_empty() {
            for name in &args.account {
                if !accounts.iter().any(|a| a.name == *name) {
                    return Err(ConfigError::Invalid(format!(
                        "no account named {name:?} in {}",
                        path.display()
                    )));
                }
            }
            accounts.retain(|a| args.account.contains(&a.name));
        }
        accounts
    };
    for a in &mut accounts {
        if args.keep || args.delete_after_days.is_some() {
            a.policy =
                config::policy(Some(true), args.delete_after_days).map_err(ConfigError::Invalid)?;
        }
        let l = &mut a.limits;
        l.max_messages = args.max_messages.or(l.max_messages);
        l.max_bytes = args.max_bytes.or(l.max_bytes);
        l.max_message_size = args.max_message_size.or(l.max_message_size);
        if let Some(t) = args.message_timeout {
            if t == 0 {
                return Err(invalid("--message-timeout must be at least 1"));
            }
            l.message_timeout = Duration::from_secs(t);
        }
        if let Some(t) = args.run_timeout {
            if t == 0 {
                return Err(invalid("--run-timeout must be at least 1"));
            }
            l.run_timeout = Duration::from_secs(t);
        }
        if let Some(m) = args.auth {
            a.auth = m;
        }
        if let Some(ca) = &args.ca_file {
            a.target.ca_file = Some(ca.clone());
        }
        if let Some(t) = args.timeout {
            if t == 0 {
                return Err(invalid("--timeout must be at least 1"));
            }
            a.timeout = Duration::from_secs(t);
        }
    }
    let state_dir = args
        .state_dir
        .clone()
        .or(file_state_dir)
        .or_else(config::default_state_dir)
        .ok_or_else(|| invalid("no --state-dir, and no home folder for the default one"))?;
    let fault = match std::env::var(FAULT_ENV) {
        Ok(v) => Some(
            v.parse::<Fault>()
                .map_err(|e| ConfigError::Invalid(format!("{FAULT_ENV}: {e}")))?,
        ),
        Err(_) => None,
    };
    // Journal lines name files by path: relative ones would change meaning with the folder
    // the next run starts in.
    let absolute = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
    for a in &mut accounts {
        match &mut a.destination {
            DestinationSpec::Maildir(p) | DestinationSpec::Mbox(p) => *p = absolute(p),
            DestinationSpec::Mda(_) => {}
        }
    }
    let state_dir = absolute(&state_dir);
    // Passwords are asked for one after the other, before any account starts.
    let mut with_passwords = Vec::with_capacity(accounts.len());
    for a in accounts {
        let p = a.password.resolve(&a.name)?;
        with_passwords.push((a, p));
    }
    // MDA commands need not see the passwords: the variables that held them leave the
    // environment. (No other thread runs yet.)
    for (a, _) in &with_passwords {
        if let PasswordSource::Env(var) = &a.password {
            std::env::remove_var(var);
        }
    }
    Ok((
        with_passwords,
        RunOptions {
            state_dir,
            dry_run: args.dry_run,
            now: None,
            fault,
            trace: args
                .trace
                .then(|| crate::Trace::new(|line| eprintln!("{line}"))),
        },
    ))
}

/// The account of a URL and the command line.
fn url_account(url: &str, args: &FetchArgs) -> Result<Account, ConfigError> {
    let u = config::parse_url(url)?;
    let security = match (u.security, args.plaintext) {
        (s, false) => s,
        (Security::Starttls, true) => Security::Plaintext,
        (_, true) => {
            return Err(ConfigError::Invalid(
                "--plaintext goes with a pop3:// URL, not pop3s://".into(),
            ))
        }
    };
    let destination = match (&args.maildir, &args.mbox, &args.mda) {
        (Some(d), None, None) => DestinationSpec::Maildir(d.clone()),
        (None, Some(m), None) => DestinationSpec::Mbox(m.clone()),
        (None, None, Some(c)) => DestinationSpec::Mda(c.clone()),
        _ => {
            return Err(ConfigError::Invalid(
                "where should the mail go? give --maildir DIR, --mbox FILE or --mda COMMAND".into(),
            ))
        }
    };
    let password = match (&args.password_env, &args.password_command) {
        (Some(v), _) => PasswordSource::Env(v.clone()),
        (None, Some(c)) => PasswordSource::Command(c.clone()),
        (None, None) => PasswordSource::Prompt,
    };
    Ok(Account {
        identity: None,
        name: format!("{}@{}", u.user, super::bracket(&u.host)),
        target: Target {
            host: u.host,
            port: u.port,
            security,
            ca_file: None,
        },
        user: u.user,
        auth: AuthMethod::Auto,
        password,
        destination,
        policy: DeletePolicy::Delete,
        limits: Limits::default(),
        timeout: config::DEFAULT_TIMEOUT,
        maildir_sync: args.maildir_sync.unwrap_or_default(),
    })
}

/// Fetch every account (up to [`MAX_PARALLEL_ACCOUNTS`] at a time, each on a thread of its
/// own), print the summary, and return the exit status.
pub fn run_accounts(accounts: &[(Account, Secret<String>)], opts: &RunOptions, quiet: bool) -> u8 {
    // A trace writes on the standard error too: the bars would garble it.
    let show_bars = !quiet && opts.trace.is_none() && std::io::stderr().is_terminal();
    let multi = MultiProgress::with_draw_target(if show_bars {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let style = ProgressStyle::with_template(
        "{prefix:.bold} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let bars: Vec<ProgressBar> = accounts
        .iter()
        .map(|(a, _)| {
            let bar = multi.add(ProgressBar::new(0));
            bar.set_style(style.clone());
            bar.set_prefix(a.name.clone());
            bar
        })
        .collect();
    let results: Vec<Mutex<Option<Result<Report, FetchError>>>> =
        accounts.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let workers = accounts.len().clamp(1, MAX_PARALLEL_ACCOUNTS);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let (Some((account, password)), Some(bar), Some(slot)) =
                    (accounts.get(i), bars.get(i), results.get(i))
                else {
                    break;
                };
                let result = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(fetch_account(account, password, opts, bar)),
                    Err(e) => Err(FetchError::Pop3(Pop3Error::Io(e))),
                };
                bar.finish_and_clear();
                if let Ok(mut s) = slot.lock() {
                    *s = Some(result);
                }
            });
        }
    });
    let mut worst_error = None::<u8>;
    let mut got_something = false;
    let mut totals = (0u64, 0u64);
    let mut out = std::io::stdout().lock();
    for ((account, _), slot) in accounts.iter().zip(results) {
        let result = slot.into_inner().ok().flatten();
        match result {
            Some(Ok(report)) => {
                got_something |= report.got_something(opts.dry_run);
                totals.0 = totals.0.saturating_add(report.fetched);
                totals.1 = totals.1.saturating_add(report.octets);
                for e in &report.errors {
                    eprintln!("facteur fetch: {}: {e}", account.name);
                    worst_error = worst_error.max(Some(EXIT_SERVER));
                }
                if !quiet {
                    for w in &report.warnings {
                        eprintln!("facteur fetch: {}: warning: {w}", account.name);
                    }
                    let _ = write!(out, "{}", summary(account, &report, opts.dry_run));
                }
            }
            Some(Err(e)) => {
                eprintln!("facteur fetch: {}: {e}", account.name);
                worst_error = worst_error.max(Some(e.exit_code()));
            }
            None => {
                eprintln!("facteur fetch: {}: the fetch did not finish", account.name);
                worst_error = worst_error.max(Some(EXIT_LOCAL));
            }
        }
    }
    if !quiet && accounts.len() > 1 && !opts.dry_run {
        let _ = writeln!(
            out,
            "facteur fetch: {} ({}) from {}",
            count(totals.0, "message"),
            human_bytes(totals.1),
            count(accounts.len() as u64, "account")
        );
    }
    match worst_error {
        Some(code) => code,
        None if got_something => EXIT_FETCHED,
        None => EXIT_NOTHING,
    }
}

/// The lines `facteur fetch` prints for an account.
fn summary(account: &Account, r: &Report, dry_run: bool) -> String {
    let mut s = String::new();
    let name = &account.name;
    let p = &r.plan;
    let mut extras = Vec::new();
    if p.deferred > 0 {
        extras.push(format!("{} left for the next run", p.deferred));
    }
    if p.too_big > 0 {
        extras.push(format!("{} too large, left on the server", p.too_big));
    }
    if p.unidentified > 0 {
        extras.push(format!(
            "{} without a unique unique-id, skipped",
            p.unidentified
        ));
    }
    if r.recovered > 0 {
        extras.push(format!("{} recovered from an interrupted run", r.recovered));
    }
    let extras = if extras.is_empty() {
        String::new()
    } else {
        format!("; {}", extras.join("; "))
    };
    if dry_run {
        for m in &p.fetch {
            s.push_str(&format!(
                "{name}: would fetch message {} ({} octets, unique-id {})\n",
                m.msg,
                m.size,
                m.uid.as_ref().map_or("-", |u| u.as_str())
            ));
        }
        for m in &p.delete {
            s.push_str(&format!(
                "{name}: would delete message {} on the server (unique-id {})\n",
                m.msg,
                m.uid.as_ref().map_or("-", |u| u.as_str())
            ));
        }
        s.push_str(&format!(
            "{name}: dry run: {} to fetch ({}), {} to delete on the server, {} on the server{extras}\n",
            count(p.fetch.len() as u64, "message"),
            human_bytes(
                p.fetch
                    .iter()
                    .fold(0u64, |sum, m| sum.saturating_add(m.size))
            ),
            p.delete.len(),
            r.on_server
        ));
        return s;
    }
    let method = r.method.map(|m| format!(", {m}")).unwrap_or_default();
    if r.fetched == 0 {
        s.push_str(&format!(
            "{name}: no new messages ({} on the server{method}); {} deleted on the server{extras}\n",
            r.on_server, r.deleted
        ));
    } else {
        let secs = r.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            format!(", {}/s", human_bytes((r.octets as f64 / secs) as u64))
        } else {
            String::new()
        };
        s.push_str(&format!(
            "{name}: {} fetched ({}) in {secs:.1} s{rate}{method}; {} deleted on the server{extras}\n",
            count(r.fetched, "message"),
            human_bytes(r.octets),
            r.deleted
        ));
    }
    s
}

/// `1 message`, `2 messages`: a count and its noun, singular for one.
fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in UNITS.iter().skip(1) {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SYNCFS_MIN_BATCH;

    fn m(n: u32, size: u64, uid: Option<&str>) -> ServerMessage {
        ServerMessage {
            msg: MsgNum::new(n).unwrap(),
            size,
            uid: uid.map(|u| Uidl::new(u).unwrap()),
        }
    }

    fn nums(v: &[ServerMessage]) -> Vec<u32> {
        v.iter().map(|m| m.msg.get()).collect()
    }

    #[test]
    fn plans_follow_the_policy() {
        let msgs = [
            m(1, 10, Some("a")),
            m(2, 20, Some("b")),
            m(3, 30, Some("c")),
        ];
        let seen = |u: &Uidl| (u.as_str() == "a").then_some(1000);
        let none = Limits::default();
        let p = plan(&msgs, true, seen, DeletePolicy::Delete, none, 2000).unwrap();
        assert_eq!(nums(&p.fetch), [2, 3]);
        assert_eq!(nums(&p.delete), [1]);
        let p = plan(&msgs, true, seen, DeletePolicy::Keep, none, 2000).unwrap();
        assert_eq!(nums(&p.fetch), [2, 3]);
        assert!(p.delete.is_empty());
        let days = DeletePolicy::DeleteAfterDays(1);
        let p = plan(&msgs, true, seen, days, none, 1000 + DAY - 1).unwrap();
        assert!(p.delete.is_empty());
        let p = plan(&msgs, true, seen, days, none, 1000 + DAY).unwrap();
        assert_eq!(nums(&p.delete), [1]);
    }

    #[test]
    fn plans_follow_the_limits() {
        let msgs: Vec<_> = (1..=5).map(|i| m(i, 100 * u64::from(i), None)).collect();
        let never = |_: &Uidl| None;
        let policy = DeletePolicy::Delete;
        let lim = |mm, mb, ms| Limits {
            max_messages: mm,
            max_bytes: mb,
            max_message_size: ms,
            ..Limits::default()
        };
        let p = plan(&msgs, false, never, policy, lim(Some(2), None, None), 0).unwrap();
        assert_eq!((nums(&p.fetch), p.deferred), (vec![1, 2], 3));
        let p = plan(&msgs, false, never, policy, lim(None, Some(650), None), 0).unwrap();
        assert_eq!((nums(&p.fetch), p.deferred), (vec![1, 2, 3], 2));
        let p = plan(&msgs, false, never, policy, lim(None, None, Some(300)), 0).unwrap();
        assert_eq!((nums(&p.fetch), p.too_big), (vec![1, 2, 3], 2));
        // One message larger than max_bytes is still fetched, alone.
        let p = plan(
            &msgs[4..],
            false,
            never,
            policy,
            lim(None, Some(10), None),
            0,
        )
        .unwrap();
        assert_eq!(nums(&p.fetch), [5]);
    }

    #[test]
    fn without_uidl_only_fetch_and_delete() {
        let msgs = [m(1, 10, None)];
        let never = |_: &Uidl| None;
        for policy in [DeletePolicy::Keep, DeletePolicy::DeleteAfterDays(3)] {
            let e = plan(&msgs, false, never, policy, Limits::default(), 0).unwrap_err();
            assert!(matches!(e, FetchError::NoUidl));
            assert!(e.to_string().contains("UIDL"));
        }
        let p = plan(
            &msgs,
            false,
            never,
            DeletePolicy::Delete,
            Limits::default(),
            0,
        )
        .unwrap();
        assert_eq!(nums(&p.fetch), [1]);
    }

    #[test]
    fn a_shared_unique_id_identifies_nothing() {
        let msgs = [
            m(1, 10, Some("x")),
            m(2, 10, Some("x")),
            m(3, 10, Some("y")),
        ];
        // "x" was fetched before: still, neither message is deleted unfetched.
        let seen = |u: &Uidl| (u.as_str() == "x").then_some(0);
        let p = plan(
            &msgs,
            true,
            seen,
            DeletePolicy::Delete,
            Limits::default(),
            0,
        )
        .unwrap();
        assert_eq!(nums(&p.fetch), [1, 2, 3]);
        assert!(p.delete.is_empty());
        assert_eq!(p.fetch[0].uid, None);
        let p = plan(&msgs, true, seen, DeletePolicy::Keep, Limits::default(), 0).unwrap();
        assert_eq!((nums(&p.fetch), p.unidentified), (vec![3], 2));
    }

    #[test]
    fn batches_are_bounded() {
        let msgs: Vec<_> = (1..=200).map(|i| m(i, 1000, None)).collect();
        let b = batches(&msgs);
        assert_eq!(b.len(), 200usize.div_ceil(BATCH_MESSAGES));
        assert!(b.iter().all(|b| b.len() <= BATCH_MESSAGES));
        let big: Vec<_> = (1..=3).map(|i| m(i, BATCH_BYTES, None)).collect();
        assert_eq!(batches(&big).len(), 3);
        assert!(batches(&[]).is_empty());
    }

    #[test]
    fn faults_parse() {
        let f: Fault = "mid-append:3".parse().unwrap();
        assert_eq!((f.point, f.at_message), (FaultPoint::MidAppend, 3));
        assert_eq!(
            "after-write".parse::<Fault>().unwrap().point,
            FaultPoint::AfterWrite
        );
        assert!("sometime".parse::<Fault>().is_err());
    }

    #[test]
    fn exit_codes_are_distinct() {
        let codes = [
            EXIT_FETCHED,
            EXIT_NOTHING,
            EXIT_USAGE,
            EXIT_LOCKED,
            EXIT_SERVER,
            EXIT_AUTH,
            EXIT_LOCAL,
        ];
        let set: HashSet<u8> = codes.into_iter().collect();
        assert_eq!(set.len(), codes.len());
        assert_eq!(FetchError::NoUidl.exit_code(), EXIT_SERVER);
        assert_eq!(
            FetchError::State(StateError::Locked("x".into())).exit_code(),
            EXIT_LOCKED
        );
    }

    fn fake_account(addr: std::net::SocketAddr, dir: &std::path::Path) -> Account {
        Account {
            identity: None,
            name: "fake".into(),
            target: crate::fake_target(addr),
            user: "u".into(),
            auth: AuthMethod::Auto,
            password: PasswordSource::Prompt,
            destination: DestinationSpec::Maildir(dir.join("Maildir")),
            policy: DeletePolicy::Delete,
            limits: Limits::default(),
            timeout: Duration::from_secs(10),
            maildir_sync: MaildirSync::default(),
        }
    }

    fn run_fake(account: &Account, dir: &std::path::Path) -> Result<Report, FetchError> {
        let opts = RunOptions {
            state_dir: dir.join("state"),
            dry_run: false,
            now: None,
            fault: None,
            trace: None,
        };
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(fetch_account(
                account,
                &Secret::new("p".into()),
                &opts,
                &ProgressBar::hidden(),
            ))
    }

    /// An RFC 1939 server: no CAPA, no UIDL, one message, USER/PASS.
    fn old_server(retr: &'static [u8]) -> std::net::SocketAddr {
        crate::fake_server("+OK old server\r\n", move |line| {
            let word = line.split(' ').next().unwrap_or_default();
            Some(match word {
                "CAPA" | "UIDL" => b"-ERR unknown command\r\n".to_vec(),
                "LIST" => b"+OK\r\n1 20\r\n.\r\n".to_vec(),
                "RETR" => retr.to_vec(),
                "QUIT" => b"+OK bye\r\n".to_vec(),
                _ => b"+OK\r\n".to_vec(),
            })
        })
    }

    #[test]
    fn a_server_without_uidl_is_fetch_and_delete_only() {
        let dir = tempfile::tempdir().unwrap();
        let addr = old_server(b"+OK\r\nSubject: old\r\n\r\n..hi\r\n.\r\n");
        let mut a = fake_account(addr, dir.path());
        a.policy = DeletePolicy::Keep;
        let e = run_fake(&a, dir.path()).unwrap_err();
        assert!(matches!(e, FetchError::NoUidl), "{e}");
        let addr = old_server(b"+OK\r\nSubject: old\r\n\r\n..hi\r\n.\r\n");
        let a = fake_account(addr, dir.path());
        let r = run_fake(&a, dir.path()).unwrap();
        assert_eq!(
            (r.fetched, r.deleted, r.method),
            (1, 1, Some(AuthMethod::User))
        );
        let new = dir.path().join("Maildir/new");
        let files: Vec<_> = std::fs::read_dir(&new).unwrap().collect();
        assert_eq!(files.len(), 1);
        let path = files[0].as_ref().unwrap().path();
        assert_eq!(std::fs::read(path).unwrap(), b"Subject: old\n\n.hi\n");
    }

    /// A server with `n` messages, PIPELINING and UIDL.
    fn server_of(n: usize) -> std::net::SocketAddr {
        let msg = |i: &str| format!("Subject: {i}\r\n\r\nbody {i}\r\n");
        crate::fake_server("+OK\r\n", move |line| {
            let mut words = line.split(' ');
            let word = words.next().unwrap_or_default();
            let arg = words.next().unwrap_or_default();
            Some(match word {
                "CAPA" => b"+OK\r\nUSER\r\nUIDL\r\nPIPELINING\r\n.\r\n".to_vec(),
                "LIST" | "UIDL" => {
                    let mut r = String::from("+OK\r\n");
                    for i in 1..=n {
                        if word == "LIST" {
                            r.push_str(&format!("{i} {}\r\n", msg(&i.to_string()).len()));
                        } else {
                            r.push_str(&format!("{i} u{i}\r\n"));
                        }
                    }
                    r.push_str(".\r\n");
                    r.into_bytes()
                }
                "RETR" => format!("+OK\r\n{}.\r\n", msg(arg)).into_bytes(),
                "QUIT" => b"+OK bye\r\n".to_vec(),
                _ => b"+OK\r\n".to_vec(),
            })
        })
    }

    /// Every message of a session is durable (data and name, by fsync or syncfs) before its
    /// `P` line, and its `P` line durable before its DELE, whichever way the Maildir syncs
    /// (an fsync of each file, a syncfs per batch) and whatever the size of the batches: a
    /// power cut at any point leaves every message on the server or safe locally.
    #[test]
    fn every_message_is_durable_before_its_dele() {
        // Three batches, the last one short; one short batch; one too small for a syncfs.
        let three = 2 * BATCH_MESSAGES + 22;
        for (n, sync, syncfs) in [
            (three, MaildirSync::Auto, true),
            (20, MaildirSync::Auto, true),
            (SYNCFS_MIN_BATCH - 1, MaildirSync::Auto, false),
            (three, MaildirSync::Fsync, false),
            (3, MaildirSync::Fsync, false),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let mut a = fake_account(server_of(n), dir.path());
            a.auth = AuthMethod::User;
            a.maildir_sync = sync;
            crate::optrace::take();
            let r = run_fake(&a, dir.path()).unwrap();
            assert_eq!((r.fetched, r.deleted), (n as u64, n as u64), "{n} {sync:?}");
            let ops = crate::optrace::take();
            assert_eq!(
                crate::optrace::check_durable_before_dele(&ops),
                n,
                "{n} {sync:?}"
            );
            let fs_syncs = ops
                .iter()
                .filter(|o| **o == crate::optrace::Op::FsSynced)
                .count();
            let file_syncs = ops
                .iter()
                .filter(|o| matches!(o, crate::optrace::Op::FileSynced(_)))
                .count();
            if syncfs {
                assert_eq!(fs_syncs, n.div_ceil(BATCH_MESSAGES), "{n} {sync:?}");
                assert_eq!(file_syncs, 0, "{n} {sync:?}");
            } else {
                assert_eq!((fs_syncs, file_syncs), (0, n), "{n} {sync:?}");
            }
            if n > BATCH_MESSAGES {
                // The next batch arrives while the batch before becomes durable: the whole
                // second batch is written before the first one's `P` lines.
                let first_record = ops
                    .iter()
                    .position(|o| matches!(o, crate::optrace::Op::Pending(..)))
                    .unwrap();
                let written = ops[..first_record]
                    .iter()
                    .filter(|o| matches!(o, crate::optrace::Op::Written(_)))
                    .count();
                assert_eq!(written, 2 * BATCH_MESSAGES, "{n} {sync:?}");
            }
            let new = std::fs::read_dir(dir.path().join("Maildir/new")).unwrap();
            assert_eq!(new.count(), n);
        }
    }

    /// The check above catches a commit that records or deletes too early.
    #[test]
    fn the_durability_check_catches_a_wrong_order() {
        use crate::optrace::{check_durable_before_dele, Op};
        let f = std::path::PathBuf::from("/m/tmp/a");
        let u = Uidl::new("a").unwrap();
        let good = vec![
            Op::Written(f.clone()),
            Op::FsSynced,
            Op::Pending(u.clone(), f.clone()),
            Op::JournalSynced,
            Op::Dele(u.clone()),
        ];
        assert_eq!(check_durable_before_dele(&good), 1);
        let fsync = vec![
            Op::Written(f.clone()),
            Op::FileSynced(f.clone()),
            Op::DirSynced("/m/tmp".into()),
            Op::Pending(u.clone(), f.clone()),
            Op::JournalSynced,
            Op::Dele(u.clone()),
        ];
        assert_eq!(check_durable_before_dele(&fsync), 1);
        let bad =
            |ops: Vec<Op>| std::panic::catch_unwind(|| check_durable_before_dele(&ops)).is_err();
        // syncfs after the P line; the name of the file never synced; the DELE before the
        // journal's fsync; a DELE with no P line.
        let mut late = good.clone();
        late.swap(1, 2);
        assert!(bad(late));
        let mut no_dir = fsync.clone();
        no_dir.remove(2);
        assert!(bad(no_dir));
        let mut early = good.clone();
        early.swap(3, 4);
        assert!(bad(early));
        assert!(bad(vec![Op::Dele(u)]));
    }

    #[test]
    fn a_connection_lost_in_the_middle_of_a_message_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let addr = crate::fake_server("+OK\r\n", |line| {
            let word = line.split(' ').next().unwrap_or_default();
            match word {
                "CAPA" => Some(b"+OK\r\nUSER\r\nUIDL\r\nPIPELINING\r\n.\r\n".to_vec()),
                "LIST" => Some(b"+OK\r\n1 5000\r\n.\r\n".to_vec()),
                "UIDL" => Some(b"+OK\r\n1 abc\r\n.\r\n".to_vec()),
                // Part of a message, then the connection drops.
                "RETR" => {
                    Some(b"+OK 5000 octets\r\nSubject: cut\r\n\r\nthe beginning\0close".to_vec())
                }
                _ => Some(b"+OK\r\n".to_vec()),
            }
        });
        let a = fake_account(addr, dir.path());
        let e = run_fake(&a, dir.path()).unwrap_err();
        assert_eq!(e.exit_code(), EXIT_SERVER, "{e}");
        for sub in ["tmp", "new", "cur"] {
            let n = std::fs::read_dir(dir.path().join("Maildir").join(sub))
                .unwrap()
                .count();
            assert_eq!(n, 0, "{sub}");
        }
        let state = AccountState::open(&dir.path().join("state"), &a.state_key()).unwrap();
        assert!(state.is_empty());
    }

    #[test]
    fn one_message_is_singular() {
        let dir = tempfile::tempdir().unwrap();
        let a = fake_account("127.0.0.1:1".parse().unwrap(), dir.path());
        let one = ServerMessage {
            msg: MsgNum::new(1).unwrap(),
            size: 10,
            uid: None,
        };
        let mut r = Report {
            fetched: 1,
            octets: 10,
            ..Report::default()
        };
        let s = summary(&a, &r, false);
        assert!(s.contains("fake: 1 message fetched (10 B)"), "{s}");
        r.plan.fetch = vec![one.clone()];
        let s = summary(&a, &r, true);
        assert!(s.contains("dry run: 1 message to fetch"), "{s}");
        r.plan.fetch = vec![one.clone(), one];
        r.fetched = 2;
        assert!(summary(&a, &r, true).contains("dry run: 2 messages to fetch"));
        assert!(summary(&a, &r, false).contains("2 messages fetched"));
        assert_eq!(count(0, "account"), "0 accounts");
    }

    #[test]
    fn bytes_for_people() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.0 MiB");
    }
}
