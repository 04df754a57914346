//! # facteur-store: maildrops
//!
//! Maildir storage, the exclusive lock, unique-ids, UPDATE and delivery: the place where every
//! store backend lives (Maildir, mbox, and PostgreSQL with the cargo feature `postgres`),
//! behind the two traits below. No user database: the server hands over a user name that it has
//! already authenticated, a home directory and the owner the maildrop must have. Without the
//! feature `postgres`, no networking and no tokio; with it, the database's I/O runs on the
//! caller's tokio runtime (see the `postgres` module).
//!
//! The server sees a maildrop through two traits: a [`Store`] finds and locks a user's maildrop
//! and delivers mail into it; a [`Maildrop`] is one locked maildrop, holding the snapshot a POP3
//! session works on (RFC 1939 section 3: the maildrop is locked from the TRANSACTION state to the
//! end of the UPDATE state). All calls are blocking std I/O; the server runs them off its async
//! threads.
//!
//! ## Layout
//! - `template`: the maildir path template (`/var/mail/%d/%n/Maildir`) and the rules that keep a
//!   user name from ever leaving it.
//! - `name`: what a Maildir file name says: its base name, the unique-id derived from it, the
//!   `,W=` wire size, delivery order; and counting the wire size of a message.
//! - `index`: the per-maildrop cache file that lets a login on an unchanged maildrop cost one
//!   file read.
//! - `fasthash`: the hash behind the open's name sets and the index checksum.
//! - `maildir`: [`MaildirStore`] and [`LockedMaildir`]: lock, snapshot, streaming, UPDATE.
//! - `mbox`: [`MboxStore`] and [`LockedMbox`]: mbox spools (`/var/mail/%u`) as MTAs write them,
//!   their locks, unique-ids from content, and a crash-safe UPDATE through a journal.
//! - `listing`: a maildir listed read-only, with the unique-ids the open gives (for
//!   `facteur migrate`).
//! - `uidlist`: Dovecot's `dovecot-uidlist`, read and extended for `uidl = "dovecot"`.
//! - `policy_files`: the last login (LOGIN-DELAY) and the first retrieval times (EXPIRE) a
//!   Maildir keeps beside its index.
//! - `check`: what `check-config` asks: does the template give each user a maildrop the
//!   serving user can make and write.
//! - `deliver`: writing a message into `tmp/`, then `new/`, the Maildir way.
//! - `handle`: every file system call, relative to a directory handle and never through a link.
//! - `postgres` (feature `postgres`): the PostgreSQL store: schema and migrations, leases,
//!   chunked messages.
//! - [`durable`]: syncing a folder by path, for the other crates' files (the passwd-file editor,
//!   the fetcher's state and destinations); the store itself syncs through its handles.
//!
//! ## What this crate must never do
//! - Read a whole message into memory: messages are counted and streamed in blocks.
//! - Change a message's unique-id, or give one message's unique-id to another: unique-ids are
//!   derived from the Maildir base name alone, so losing every cache file changes none of them.
//!   With `uidl = "dovecot"` they are Dovecot's, recorded in `dovecot-uidlist` before a session
//!   ever shows them (that file, like Dovecot's, is then the one that must not be lost).
//! - Delete or hide mail delivered after the snapshot was taken.
//! - Panic on any file name, file content or user name.
//! - Trust the maildrop: its owner can put links, FIFOs, devices, huge or unreadable files and
//!   over-long names in it. None of them may make the server read, write or remove anything
//!   outside the maildrop, or wait; one bad message is skipped, never fatal to the session.

pub mod check;
pub mod deliver;
pub mod durable;
mod fasthash;
mod handle;
mod index;
#[cfg(any(feature = "postgres", test))]
mod listing;
mod maildir;
mod mbox;
mod name;
mod names;
mod policy_files;
#[cfg(feature = "postgres")]
pub mod postgres;
mod template;
mod uidlist;

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use facteur_proto::MessageMeta;

pub use maildir::{IndexOutcome, LockedMaildir, MaildirStore, OpenStats};
pub use mbox::{LockedMbox, MboxStore, MAX_MBOX_SIZE, MAX_MESSAGES};

/// The pieces of the mbox format that the fetcher's mbox destination shares with the mbox store:
/// mboxrd quoting (a line matching `^>*From ` gets one more `>`) and the `From ` line's date.
pub mod mbox_format {
    pub use crate::mbox::parse::{asctime, civil_from_days, scan_bytes, Quoter, ScannedMessage};
}

/// Why a maildrop could not be opened, read, updated or delivered to.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another session holds the maildrop's lock (RFC 1939: `-ERR [IN-USE]`).
    #[error("maildrop is locked by another session")]
    InUse,
    /// The user name cannot be turned into a maildrop path without leaving the template:
    /// it holds '/', '\\', a control character, or it (or the part the template uses) is empty,
    /// "." or "..".
    #[error("invalid user name for a maildrop path: {0:?}")]
    BadUser(String),
    /// The maildir path template itself is wrong (a configuration error, not the user's).
    #[error("invalid maildir path template {template:?}: {reason}")]
    BadTemplate {
        template: String,
        reason: &'static str,
    },
    /// The template uses `%h` but the user database gave no home directory for this user.
    #[error("maildir path template uses %h but user {0:?} has no home directory")]
    NoHome(String),
    /// A file system operation on `path` failed.
    #[error("maildrop I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Reading the message handed to [`Store::deliver`] failed; nothing was delivered.
    #[error("cannot read the message to deliver: {0}")]
    Source(std::io::Error),
    /// The message (1-based message number) was removed from the maildrop by another program
    /// after the snapshot was taken.
    #[error("message {0} has vanished from the maildrop")]
    Vanished(usize),
    /// There is no message with this 1-based message number in the snapshot (a caller's bug).
    #[error("message {0} is not in the maildrop snapshot")]
    NoSuchMessage(usize),
    /// The database of the PostgreSQL store failed or could not be reached; `what` says what the
    /// store was doing.
    #[error("database error while trying to {what}: {detail}")]
    Database { what: &'static str, detail: String },
    /// The database's schema is not the one this build knows (0: none at all).
    #[error(
        "the database's schema is version {found}, this facteur knows version {expected} only \
         (an older schema: run `facteur db migrate`; a newer one: run a newer facteur)"
    )]
    Schema { found: i64, expected: i64 },
    /// The session's lease on the maildrop expired and another session took it: this session's
    /// deletions are refused, so that two sessions never both update one maildrop.
    #[error("the maildrop's lease was lost to another session; nothing was deleted")]
    LeaseLost,
    /// The user database gives the account an owner that cannot be used.
    #[error(transparent)]
    BadOwner(#[from] BadOwner),
    /// The user database gives the account a LOGIN-DELAY or EXPIRE that cannot be used.
    #[error(transparent)]
    BadPolicy(#[from] facteur_proto::policy::BadPolicy),
    /// The user's last login is more recent than their LOGIN-DELAY (RFC 2449 section 8.1.2):
    /// this login is refused, and the time of the last one is left as it was.
    #[error("the user logged in less than LOGIN-DELAY seconds ago")]
    LoginDelay,
    /// The maildrop's directory belongs to another uid than the account's: refused, so that a
    /// wrong template or a planted directory never serves one user's mail to another.
    #[error(
        "maildrop {} is owned by uid {found}, but the account's uid is {expected}: refusing \
         it (chown the maildir to the user, or fix the uid field of the user database)",
        path.display()
    )]
    WrongOwner {
        path: PathBuf,
        expected: u32,
        found: u32,
    },
    /// `uidl = "dovecot"` and Dovecot's `dovecot-uidlist` cannot be used (not a regular file,
    /// too large, malformed, unreadable): the maildrop is not served rather than served with
    /// unique-ids that would make clients download everything again.
    #[error(
        "cannot use Dovecot's unique-ids in {}: {reason} (fix or remove the file; removed, \
         Dovecot and facteur number the messages afresh and clients download them again)",
        path.display()
    )]
    DovecotUidlist { path: PathBuf, reason: String },
    /// The MTA's locks on an mbox (its dotlock, its `fcntl` lock) stayed taken for longer than
    /// facteur waits: a delivery is under way, or a program holds them too long.
    #[error("the mbox {} stayed locked by another program (its dotlock or fcntl lock)", .0.display())]
    MboxBusy(PathBuf),
}

/// Where the unique-ids of a Maildir come from (`[store] uidl`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UidlScheme {
    /// The Maildir base name (or its SHA-256 when longer than 70 characters): nothing to keep
    /// but the file names.
    #[default]
    Facteur,
    /// Dovecot's: `%08Xu%08Xv` from `dovecot-uidlist` (or the unique-id Dovecot saved there
    /// with `pop3_save_uidl`), new mail given its uid there the way Dovecot does. Messages are
    /// listed in Dovecot's order (by uid, after those with a POP3 order).
    Dovecot,
}

/// How delivery into a Maildir stores line ends (`[store] line_ends`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LineEnds {
    /// Every line end as CRLF, the form RETR sends: Maildir readers (Dovecot, mutt) accept it,
    /// and a message with no line starting with '.' is then stored exactly as it goes on the
    /// wire, so a large RETR over plain TCP goes out by `sendfile` without passing through
    /// facteur's memory.
    #[default]
    Crlf,
    /// As given: what `facteur deliver` reads, or LF after LMTP (the way Postfix's own
    /// Maildir delivery stores mail).
    Lf,
}

/// Who owns a maildrop, as the user database says (the passwd-file's uid and gid fields).
///
/// With a uid, a maildrop whose directory belongs to another uid is refused. A process running
/// as root (`facteur deliver` from an MTA) gives the files and directories it creates to this
/// uid and gid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// A uid or gid field of the user database that is not a number.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the {field} field of the user database is {value:?}, not a number: refusing the maildrop \
     (facteur takes numeric ids only)"
)]
pub struct BadOwner {
    /// "uid" or "gid".
    pub field: &'static str,
    pub value: String,
}

impl Owner {
    /// From the uid and gid fields of the user database (absent or empty: not known). Only
    /// plain decimal numbers are accepted: no sign, no name to look up.
    pub fn from_fields(uid: Option<&str>, gid: Option<&str>) -> Result<Self, BadOwner> {
        let parse = |field: &'static str, value: Option<&str>| match value {
            None | Some("") => Ok(None),
            Some(v) if v.bytes().all(|b| b.is_ascii_digit()) => {
                v.parse::<u32>().map(Some).map_err(|_| BadOwner {
                    field,
                    value: v.to_owned(),
                })
            }
            Some(v) => Err(BadOwner {
                field,
                value: v.to_owned(),
            }),
        };
        Ok(Self {
            uid: parse("uid", uid)?,
            gid: parse("gid", gid)?,
        })
    }
}

/// How lasting a [`StoreError`] is: whether trying again later can succeed, and if not, whose
/// fix it needs. `facteur deliver` turns it into a sysexits status, the server into
/// `[SYS/TEMP]` or `[SYS/PERM]` (RFC 3206).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lasting {
    /// It may go away by itself (a lock, a full disk, an I/O error): try again later.
    Temporary,
    /// The user name can never be turned into a maildrop (it would leave the template).
    NoUser,
    /// The system refuses the operation (permissions, a read-only file system, a maildrop owned
    /// by another uid): it stays so until the administrator changes it.
    NoPermission,
    /// The configuration is wrong (the template, a missing home, a path through a regular file
    /// or a link): it stays so until the administrator changes it.
    Config,
}

impl StoreError {
    /// Whether this failure will last, and why; see [`Lasting`].
    pub fn lasting(&self) -> Lasting {
        match self {
            Self::BadUser(_) => Lasting::NoUser,
            Self::BadTemplate { .. }
            | Self::NoHome(_)
            | Self::BadOwner(_)
            | Self::BadPolicy(_)
            | Self::Schema { .. } => Lasting::Config,
            Self::WrongOwner { .. } => Lasting::NoPermission,
            Self::Io { source, .. } => io_lasting(source),
            Self::InUse
            | Self::Source(_)
            | Self::Vanished(_)
            | Self::NoSuchMessage(_)
            | Self::Database { .. }
            | Self::LeaseLost
            | Self::LoginDelay
            | Self::DovecotUidlist { .. }
            | Self::MboxBusy(_) => Lasting::Temporary,
        }
    }

    /// True when trying again later cannot help.
    pub fn is_permanent(&self) -> bool {
        self.lasting() != Lasting::Temporary
    }
}

/// Errors of the file system that stay until someone changes the system: permissions, a
/// read-only file system, a path that goes through a file or a link. Everything else (a full
/// disk, a quota, an I/O error, a directory removed meanwhile) may pass.
fn io_lasting(e: &std::io::Error) -> Lasting {
    use rustix::io::Errno;
    match Errno::from_io_error(e) {
        Some(Errno::ACCESS | Errno::PERM | Errno::ROFS) => Lasting::NoPermission,
        Some(Errno::NOTDIR | Errno::LOOP | Errno::NAMETOOLONG) => Lasting::Config,
        // The refusal of a maildir that is a symbolic link (see `maildir::open_root`).
        None if e.kind() == std::io::ErrorKind::InvalidData => Lasting::Config,
        _ => Lasting::Temporary,
    }
}

impl StoreError {
    /// Wraps an I/O error with the path it happened on.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// A source of maildrops (Maildir now; a shared SQL store later).
pub trait Store: Send + Sync + 'static {
    /// Lock and open the user's maildrop, taking the snapshot the session will see.
    ///
    /// `home` is the user's home directory if the user database knows it (for `%h`); `owner`
    /// who must own the maildrop, if the user database says.
    fn open_as(
        &self,
        user: &str,
        home: Option<&str>,
        owner: Owner,
    ) -> Result<Box<dyn Maildrop>, StoreError>;

    /// [`Store::open_as`] from what the kernel and the store hold in memory, for a caller on
    /// an async thread: `Some` only when the maildrop could be locked and its snapshot taken
    /// without waiting for a disk or a network and without writing anything (an unchanged
    /// maildrop whose snapshot is in memory), with the maildrop `open_as` would give. `None`:
    /// nothing was done (nothing is left locked), and `open_as` off the async threads is the
    /// way (it says what is wrong, if anything is). The default never answers.
    fn open_as_now(
        &self,
        _user: &str,
        _home: Option<&str>,
        _owner: Owner,
    ) -> Option<Box<dyn Maildrop>> {
        None
    }

    /// [`Store::open_as`] with no owner known.
    fn open(&self, user: &str, home: Option<&str>) -> Result<Box<dyn Maildrop>, StoreError> {
        self.open_as(user, home, Owner::default())
    }

    /// Deliver one message (read to EOF) into the user's maildrop; safe while a session holds the
    /// lock (the message joins the next session's snapshot, never the current one). Run as
    /// root, the files and directories it creates are given to `owner`.
    fn deliver_as(
        &self,
        user: &str,
        home: Option<&str>,
        owner: Owner,
        message: &mut dyn Read,
    ) -> Result<Delivered, StoreError>;

    /// [`Store::deliver_as`] with no owner known.
    fn deliver(
        &self,
        user: &str,
        home: Option<&str>,
        message: &mut dyn Read,
    ) -> Result<Delivered, StoreError> {
        self.deliver_as(user, home, Owner::default(), message)
    }

    /// Whether the store answers now (`/health`); blocking. Files need no check: a maildrop
    /// that cannot be read fails its own login. A database store asks its database.
    fn check_health(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Where a delivered message went, and how big it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// The message file, in the maildrop's `new/`; for the PostgreSQL store,
    /// `postgresql:<user>/<unique-id>`.
    pub path: PathBuf,
    /// Its size in octets, as stored.
    pub size: u64,
    /// The octets RETR will send before dot-stuffing (every bare LF counted as CRLF).
    pub wire_size: u64,
}

/// One locked maildrop; dropping it releases the lock.
pub trait Maildrop: Send {
    /// The snapshot taken at open: message number n is `messages()[n-1]`. Empty once
    /// [`Maildrop::take_messages`] has handed it over.
    fn messages(&self) -> &[MessageMeta];

    /// Hands the snapshot over to the session, which keeps it from then on, rather than have it
    /// copied (100,000 messages are 8 MB); `messages()` is empty afterwards. Shared: the
    /// Maildir store's cache of snapshots may hold the same one.
    fn take_messages(&mut self) -> std::sync::Arc<Vec<MessageMeta>>;

    /// The size of message `index` (0-based); `None` if there is no such message, or while its
    /// size is deferred.
    fn size(&self, index: usize) -> Option<u64>;

    /// True when every size in `messages()` is exact. False when the store deferred sizing
    /// (a first look at a large maildrop whose files carry no size): the sizes are 0 until
    /// [`Maildrop::compute_sizes`].
    fn sizes_known(&self) -> bool;

    /// Learns every size not known yet (reading those files), records it for later sessions,
    /// and returns the size of each message of the snapshot, in order. Cheap once they are known.
    fn compute_sizes(&mut self) -> Result<Vec<u64>, StoreError>;

    /// Open message `index` (0-based) for streaming; never reads it whole.
    fn open_message(&mut self, index: usize) -> Result<Box<dyn Read + Send>, StoreError>;

    /// Message `index` read whole into `buf` at once, when that needs no wait at all: its name
    /// resolved from the kernel's caches and its content in the page cache, so that the
    /// caller may do it on an async thread rather than make a trip to a blocking pool (which
    /// costs more than the read itself for a small message). `Some(n)`: the message is
    /// `buf[..n]`, all of it. `None` when the store would have to wait for a disk or a
    /// database, cannot tell, or the message does not fit in `buf` less one octet; nothing has
    /// changed then, and [`Maildrop::open_message`] off the async threads is the way (and
    /// says what went wrong, if anything did).
    fn read_cached(&mut self, _index: usize, _buf: &mut [u8]) -> Option<usize> {
        None
    }

    /// The file of message `index` and its length, when the file is exactly what RETR sends
    /// between its `+OK` line and its terminating `.` line (every line end CRLF, no line
    /// starting with '.', a line end at its end): such a message can be handed to `sendfile`.
    /// `None` when the store cannot tell, or it is not so; then [`Maildrop::open_message`] and
    /// the dot-stuffing encoder are the way. The answer rests on what delivery recorded in the
    /// name, a claim of whoever can write into the maildrop: it can only garble that maildrop's
    /// own messages for its own reader, never reach outside the file.
    fn open_wire_form(
        &mut self,
        _index: usize,
    ) -> Result<Option<(std::fs::File, u64)>, StoreError> {
        Ok(None)
    }

    /// UPDATE state: remove these messages (0-based indices). Returns only once the removals are
    /// durable (directory fsync). On the first failure it stops, deletes nothing more, and returns
    /// the error. An index out of the snapshot fails the whole call before anything is deleted.
    fn apply_deletions(&mut self, indices: &[usize]) -> Result<(), StoreError>;

    /// LOGIN-DELAY (RFC 2449 section 6.5), right after the open, under the maildrop's lock (so
    /// that two logins at once cannot both pass): refuses with [`StoreError::LoginDelay`] if
    /// the user's last login that passed this check is less than `delay` old, and otherwise
    /// records now as the last login, where every node serving the maildrop sees it. The server
    /// calls it only once the credentials were verified, and only with a delay.
    fn check_login_delay(&mut self, delay: Duration) -> Result<(), StoreError>;

    /// EXPIRE N (RFC 2449 section 6.7), right after the open and before
    /// [`Maildrop::take_messages`]: removes, from the store and from the snapshot, every
    /// message first retrieved at least `after` ago (recorded by
    /// [`Maildrop::record_retrievals`]), so that no session ever serves one. Returns how many.
    /// Messages with no retrieval recorded are never touched.
    fn expire(&mut self, after: Duration) -> Result<usize, StoreError>;

    /// UPDATE state, after [`Maildrop::apply_deletions`]: records now as the first retrieval
    /// time of these messages (0-based indices), for those that have none yet. Only a
    /// committed QUIT calls it: a session that ends otherwise retrieved nothing.
    fn record_retrievals(&mut self, indices: &[usize]) -> Result<(), StoreError>;

    /// Gives up the maildrop's lock now, as the session ends: the server calls it before it
    /// answers QUIT, so that a client that logs in again at once (on this node or another) is not
    /// told `[IN-USE]` by the session it just ended. Dropping the maildrop releases the lock too,
    /// but the PostgreSQL store does that in the background (a database round trip that a drop
    /// cannot wait for). Nothing but dropping may follow. The default does nothing: a lock that
    /// dropping releases at once (the Maildir's flock) needs nothing more. An error means the
    /// lock is left to expire by itself.
    fn release(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// True if [`Maildrop::release`] does anything (and may block): the server then calls it off
    /// its async threads even when the session deleted nothing. False by default, so that a
    /// read-only session on a Maildir ends without a trip to the blocking pool.
    fn release_blocks(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_lasts_and_what_may_pass() {
        use rustix::io::Errno;
        let io = |errno: Errno| {
            StoreError::io(
                "/x",
                std::io::Error::from_raw_os_error(errno.raw_os_error()),
            )
        };
        assert_eq!(io(Errno::ACCESS).lasting(), Lasting::NoPermission);
        assert_eq!(io(Errno::PERM).lasting(), Lasting::NoPermission);
        assert_eq!(io(Errno::ROFS).lasting(), Lasting::NoPermission);
        assert_eq!(io(Errno::NOTDIR).lasting(), Lasting::Config);
        assert_eq!(io(Errno::LOOP).lasting(), Lasting::Config);
        assert_eq!(io(Errno::NAMETOOLONG).lasting(), Lasting::Config);
        for errno in [
            Errno::NOSPC,
            Errno::DQUOT,
            Errno::IO,
            Errno::NOENT,
            Errno::MFILE,
        ] {
            assert_eq!(io(errno).lasting(), Lasting::Temporary, "{errno}");
            assert!(!io(errno).is_permanent());
        }
        assert_eq!(StoreError::BadUser("a/b".into()).lasting(), Lasting::NoUser);
        assert_eq!(StoreError::NoHome("a".into()).lasting(), Lasting::Config);
        let bad = StoreError::BadTemplate {
            template: "%x".into(),
            reason: "r",
        };
        assert_eq!(bad.lasting(), Lasting::Config);
        assert!(bad.is_permanent());
        assert!(!StoreError::InUse.is_permanent());
        let wrong = StoreError::WrongOwner {
            path: "/x".into(),
            expected: 1,
            found: 2,
        };
        assert_eq!(wrong.lasting(), Lasting::NoPermission);
    }

    #[test]
    fn owners_are_numbers_or_nothing() {
        assert_eq!(Owner::from_fields(None, Some("")), Ok(Owner::default()));
        assert_eq!(
            Owner::from_fields(Some("1000"), Some("100")),
            Ok(Owner {
                uid: Some(1000),
                gid: Some(100)
            })
        );
        for bad in ["alice", "+5", "-1", "4294967296", " 1"] {
            let err = Owner::from_fields(Some(bad), None).unwrap_err();
            assert_eq!(err.field, "uid");
            assert!(err.to_string().contains("not a number"), "{err}");
        }
        assert_eq!(
            Owner::from_fields(None, Some("x")).unwrap_err().field,
            "gid"
        );
    }
}
