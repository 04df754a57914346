//! Maildrops: Maildir storage, the exclusive lock, unique-ids, UPDATE and delivery.
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
//! - `deliver`: writing a message into `tmp/`, then `new/`, the Maildir way.
//!
//! ## What this module must never do
//! - Read a whole message into memory: messages are counted and streamed in blocks.
//! - Change a message's unique-id, or give one message's unique-id to another: unique-ids are
//!   derived from the Maildir base name alone, so losing every cache file changes none of them.
//! - Delete or hide mail delivered after the snapshot was taken.
//! - Panic on any file name, file content or user name.

pub(crate) mod deliver;
mod fasthash;
mod index;
mod maildir;
mod name;
mod template;

use std::io::Read;
use std::path::PathBuf;

use facteur_proto::MessageMeta;

pub use maildir::{IndexOutcome, LockedMaildir, MaildirStore, OpenStats};

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
    /// `home` is the user's home directory if the user database knows it (for `%h`).
    fn open(&self, user: &str, home: Option<&str>) -> Result<Box<dyn Maildrop>, StoreError>;

    /// Deliver one message (read to EOF) into the user's maildrop; safe while a session holds the
    /// lock (the message joins the next session's snapshot, never the current one).
    fn deliver(
        &self,
        user: &str,
        home: Option<&str>,
        message: &mut dyn Read,
    ) -> Result<Delivered, StoreError>;
}

/// Where a delivered message went, and how big it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// The message file, in the maildrop's `new/`.
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
    /// copied (100,000 messages are 8 MB); `messages()` is empty afterwards.
    fn take_messages(&mut self) -> Vec<MessageMeta>;

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

    /// UPDATE state: remove these messages (0-based indices). Returns only once the removals are
    /// durable (directory fsync). On the first failure it stops, deletes nothing more, and returns
    /// the error. An index out of the snapshot fails the whole call before anything is deleted.
    fn apply_deletions(&mut self, indices: &[usize]) -> Result<(), StoreError>;
}
