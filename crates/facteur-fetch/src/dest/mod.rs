//! Where fetched messages go: a Maildir, an mbox file, or an MDA command; and how each makes a
//! batch of messages durable and recorded, in an order that a crash at any point cannot turn
//! into a lost or a doubled message.
//!
//! Messages arrive with CRLF line ends (RFC 1939) and are stored with LF, the Unix way (a bare
//! CR is kept). A message is written as it arrives, chunk by chunk, never held whole.
//!
//! # Layout
//! - this module: what every destination shares: [`Destination`] (open, begin a message,
//!   commit a batch), the [`Writer`] of one message, [`recover`] after a crash, the CRLF to LF
//!   conversion;
//! - `maildir`: files in `tmp/`, renamed into `new/` at the commit;
//! - `mbox`: entries written to a spool, appended under the mbox's locks at the commit;
//! - `mda`: a command per message, at-least-once.
//!
//! The journal these commits write to, and read back after a crash, is [`super::state`].

mod maildir;
mod mbox;
mod mda;

pub use maildir::MaildirDest;
pub use mbox::MboxDest;
pub use mda::MdaDest;

use super::config::{DestinationSpec, MaildirSync as SyncMode};
use super::fetch::FaultPoint;
use super::state::{AccountState, Pending, StateError};
use facteur_proto::Uidl;
use std::io;
use std::path::{Path, PathBuf};

/// Octets read or copied at once.
const BLOCK: usize = 64 * 1024;

/// Why a message could not be delivered locally.
#[derive(Debug, thiserror::Error)]
pub enum DestError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("the MDA {command:?} {reason}")]
    Mda { command: String, reason: String },
    #[error("cannot lock {}: {reason}", path.display())]
    Lock { path: PathBuf, reason: String },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("injected crash at {0:?} (a test of crash recovery)")]
    Injected(FaultPoint),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DestError + '_ {
    move |source| DestError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A destination, open for one run of one account.
#[derive(Debug)]
pub enum Destination {
    Maildir(MaildirDest),
    Mbox(MboxDest),
    Mda(MdaDest),
}

/// A message written (or delivered, for an MDA), not yet committed.
#[derive(Debug)]
pub enum Staged {
    /// In `tmp/`, written; the commit makes it durable (or waits for its fsync, under way on
    /// another thread) before anything names the file in the journal.
    Maildir {
        tmp: String,
        name: String,
        file: maildir::FileSync,
    },
    Mbox {
        spool_offset: u64,
        len: u64,
        sha256: [u8; 32],
    },
    Delivered,
}

/// A batch whose commit [`Destination::prepare`] started.
#[derive(Debug)]
pub struct Prepared {
    uids: Vec<Uidl>,
    work: PreparedWork,
}

#[derive(Debug)]
enum PreparedWork {
    Maildir(maildir::Prepared),
    /// An mbox's commit is all done by [`Destination::complete`], under the mbox's locks.
    Mbox(Vec<StagedMessage>),
    Mda,
}

/// A staged message and its unique-id (`None` on a server without UIDL).
#[derive(Debug)]
pub struct StagedMessage {
    pub uid: Option<Uidl>,
    pub staged: Staged,
}

impl Destination {
    /// Open `spec` for a run: a Maildir and its `tmp/`, `new/` and `cur/` are created (mode
    /// 700) if missing; an mbox's folder must exist (the file is created at the first
    /// message); `spool` is the account's mbox spool file, emptied.
    ///
    /// `tag` names this account's files in a Maildir's `tmp/`: those left there by a run that
    /// stopped before it recorded them are removed (call this after [`recover`]).
    pub fn open(spec: &DestinationSpec, spool: &Path, tag: &str) -> Result<Self, DestError> {
        Self::open_with(spec, spool, tag, SyncMode::default())
    }

    /// [`Self::open`], with how a Maildir makes its batches durable.
    pub fn open_with(
        spec: &DestinationSpec,
        spool: &Path,
        tag: &str,
        sync: SyncMode,
    ) -> Result<Self, DestError> {
        Ok(match spec {
            DestinationSpec::Maildir(dir) => {
                Destination::Maildir(MaildirDest::open(dir, tag, sync)?)
            }
            DestinationSpec::Mbox(path) => Destination::Mbox(MboxDest::open(path, spool)?),
            DestinationSpec::Mda(command) => Destination::Mda(MdaDest::open(command)),
        })
    }

    /// Start a message.
    pub fn begin(&mut self) -> Result<Writer<'_>, DestError> {
        match self {
            Destination::Maildir(d) => d.begin(),
            Destination::Mbox(m) => m.begin(),
            Destination::Mda(d) => d.begin(),
        }
    }

    /// Make a batch of staged messages durable in place and record them, in the order the
    /// module documentation gives. `hook` is called at each fault-injection point; an error
    /// from it stops the commit there, as a crash would.
    pub fn commit(
        &mut self,
        batch: Vec<StagedMessage>,
        state: &mut AccountState,
        now: u64,
        hook: &mut dyn FnMut(FaultPoint) -> Result<(), DestError>,
    ) -> Result<(), DestError> {
        let prepared = self.prepare(batch)?;
        self.complete(prepared, state, now, hook)
    }

    /// [`Self::commit`] in two halves, so that the fetcher reads the next batch while the disk
    /// works: this one starts what takes the disk's time (a Maildir's syncfs, or its files'
    /// fsyncs, on another thread) and records nothing; [`Self::complete`] waits for it and
    /// records. Dropping the result instead records nothing (the files left in a Maildir's
    /// `tmp/` are removed at the next run's start).
    pub fn prepare(&mut self, batch: Vec<StagedMessage>) -> Result<Prepared, DestError> {
        let uids: Vec<Uidl> = batch.iter().filter_map(|m| m.uid.clone()).collect();
        let work = match self {
            Destination::Maildir(d) => PreparedWork::Maildir(d.prepare(batch)?),
            Destination::Mbox(_) => PreparedWork::Mbox(batch),
            Destination::Mda(_) => PreparedWork::Mda,
        };
        Ok(Prepared { uids, work })
    }

    /// True if a batch may be left prepared while the next one is written, its commit
    /// completed afterwards: a Maildir's (each message is a file of its own). Not an mbox's:
    /// its commit empties the spool that the next batch's messages are written to.
    pub fn completes_later(&self) -> bool {
        matches!(self, Destination::Maildir(_))
    }

    /// The second half of [`Self::commit`], for a batch that [`Self::prepare`] started.
    pub fn complete(
        &mut self,
        prepared: Prepared,
        state: &mut AccountState,
        now: u64,
        hook: &mut dyn FnMut(FaultPoint) -> Result<(), DestError>,
    ) -> Result<(), DestError> {
        let Prepared { uids, work } = prepared;
        match (&mut *self, work) {
            (Destination::Maildir(d), PreparedWork::Maildir(p)) => d.complete(p, state, hook)?,
            (Destination::Mbox(m), PreparedWork::Mbox(batch)) => m.commit(&batch, state, hook)?,
            (Destination::Mda(_), PreparedWork::Mda) => {}
            _ => {
                return Err(DestError::Io {
                    path: PathBuf::from("batch"),
                    source: io::Error::other("a batch prepared for another destination"),
                })
            }
        }
        hook(FaultPoint::AfterCommit)?;
        state.record_done(&uids, now)?;
        if let Destination::Mda(_) = self {
            // No `P` line stands for a message an MDA took: its `D` must be durable before
            // its DELE. A Maildir's or an mbox's `D` lines become durable with the next fsync
            // of the journal (the `P` lines suffice after a crash).
            state.sync_journal()?;
        }
        Ok(())
    }

    /// The end of a session, before its QUIT: what the commits left to become durable
    /// (the renames into a Maildir's `new/`, the last `D` lines) is made durable.
    pub fn settle(&mut self, state: &mut AccountState) -> Result<(), DestError> {
        if let Destination::Maildir(d) = self {
            d.settle()?;
        }
        state.sync_journal()?;
        Ok(())
    }
}

/// Make durable the renames into the `new/` of each Maildir that the journal names (a run that
/// stopped may have left them to its end): the journal is folded into the snapshot right
/// after the recovery, and its `P` lines are the only record of where those files were.
pub fn sync_journal_maildirs(maildirs: &[PathBuf]) -> Result<(), DestError> {
    for dir in maildirs {
        let new = dir.join("new");
        match facteur_store::durable::sync_dir(&new) {
            Ok(()) => {}
            // Gone: nothing of it to make durable (recovery fetches its messages again).
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&new)(e)),
        }
    }
    Ok(())
}

/// Settle the messages that were being committed when a run stopped (see the module
/// documentation of each destination); returns the unique-ids of those that arrived.
pub fn recover(pending: &[Pending], spool: &Path) -> Result<Vec<Uidl>, DestError> {
    let mut arrived = Vec::new();
    let mut mbox: Vec<&Pending> = Vec::new();
    for p in pending {
        match p {
            Pending::Maildir {
                uid,
                dir,
                tmp,
                name,
            } => {
                if maildir::recover_one(dir, tmp, name)? {
                    arrived.push(uid.clone());
                }
            }
            Pending::Mbox { .. } => mbox.push(p),
        }
    }
    arrived.extend(mbox::recover(mbox, spool)?);
    Ok(arrived)
}

/// A message being written.
pub struct Writer<'a> {
    lf: CrlfToLf,
    scratch: Vec<u8>,
    kind: WriterKind<'a>,
}

enum WriterKind<'a> {
    Maildir(maildir::MaildirWriter<'a>),
    Mbox(mbox::MboxWriter<'a>),
    Mda(mda::MdaWriter<'a>),
    /// Finished (or given up).
    Done,
}

impl Writer<'_> {
    /// The next chunk of the message as the server sent it (CRLF line ends).
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), DestError> {
        self.scratch.clear();
        self.lf.convert(chunk, &mut self.scratch);
        let data = std::mem::take(&mut self.scratch);
        let r = self.put(&data);
        self.scratch = data;
        r
    }

    fn put(&mut self, data: &[u8]) -> Result<(), DestError> {
        match &mut self.kind {
            WriterKind::Maildir(w) => w.put(data),
            WriterKind::Mbox(w) => w.put(data),
            WriterKind::Done => Ok(()),
            WriterKind::Mda(w) => w.put(data),
        }
    }

    /// The message is complete: make it durable (Maildir: fsync; mbox: into the spool; MDA:
    /// wait for the command, which must exit 0).
    pub fn finish(mut self) -> Result<Staged, DestError> {
        let mut tail = Vec::new();
        self.lf.finish(&mut tail);
        if !tail.is_empty() {
            self.put(&tail)?;
        }
        match std::mem::replace(&mut self.kind, WriterKind::Done) {
            WriterKind::Done => Err(DestError::Io {
                path: PathBuf::from("message"),
                source: io::Error::other("finished twice"),
            }),
            WriterKind::Maildir(w) => w.finish(),
            WriterKind::Mbox(w) => w.finish(),
            WriterKind::Mda(w) => w.finish(),
        }
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        // A message given up half-way leaves nothing behind: a partial Maildir file is
        // removed, and an MDA is not left running or as a zombie (it is killed: its input was
        // only part of a message).
        match &mut self.kind {
            WriterKind::Mda(w) => w.abandon(),
            WriterKind::Maildir(w) => w.abandon(),
            WriterKind::Mbox(_) | WriterKind::Done => {}
        }
    }
}

/// CRLF to LF, across chunk boundaries; a CR not followed by LF is kept.
#[derive(Default, Debug)]
pub struct CrlfToLf {
    cr: bool,
}

impl CrlfToLf {
    pub fn convert(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        if self.cr {
            match input.first() {
                None => return,
                Some(b'\n') => {}
                Some(_) => out.push(b'\r'),
            }
            self.cr = false;
        }
        while let Some(i) = input.iter().position(|&b| b == b'\r') {
            let (before, rest) = input.split_at(i);
            out.extend_from_slice(before);
            // `rest` starts with the CR.
            let after = rest.get(1..).unwrap_or_default();
            match after.first() {
                Some(b'\n') => {}
                Some(_) => out.push(b'\r'),
                None => self.cr = true,
            }
            input = after;
        }
        out.extend_from_slice(input);
    }

    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.cr) {
            out.push(b'\r');
        }
    }
}

/// This host's name for Maildir names, escaped as the store's delivery does.
fn hostname() -> String {
    facteur_store::deliver::hostname()
}

/// A Maildir unique name, made as the store's delivery makes them.
fn unique_name(host: &str) -> Result<String, DestError> {
    facteur_store::deliver::unique_name(host).map_err(|source| DestError::Io {
        path: PathBuf::from("getrandom"),
        source,
    })
}

/// Read a whole small file (for tests and recovery checks).
#[cfg(test)]
fn read_all(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let mut v = Vec::new();
    std::fs::File::open(path)
        .unwrap()
        .read_to_end(&mut v)
        .unwrap();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lf(chunks: &[&[u8]]) -> Vec<u8> {
        let mut c = CrlfToLf::default();
        let mut out = Vec::new();
        for ch in chunks {
            c.convert(ch, &mut out);
        }
        c.finish(&mut out);
        out
    }

    #[test]
    fn crlf_becomes_lf_across_chunks() {
        assert_eq!(lf(&[b"a\r\nb\r", b"\nc\rd\r"]), b"a\nb\nc\rd\r");
        assert_eq!(lf(&[b"\r", b"\r", b"\n"]), b"\r\n");
        assert_eq!(lf(&[b"\r", b"", b"\n"]), b"\n");
    }

    proptest::proptest! {
        #[test]
        fn crlf_conversion_ignores_chunking(
            data in proptest::collection::vec(proptest::sample::select(vec![b'\r', b'\n', b'a']), 0..64),
            cut in 0usize..64,
        ) {
            let naive: Vec<u8> = {
                let mut out = Vec::new();
                let mut i = 0;
                while i < data.len() {
                    if data[i] == b'\r' && data.get(i + 1) == Some(&b'\n') {
                        i += 1;
                        continue;
                    }
                    out.push(data[i]);
                    i += 1;
                }
                out
            };
            let cut = cut.min(data.len());
            proptest::prop_assert_eq!(lf(&[&data[..cut], &data[cut..]]), naive.clone());
            let bytes: Vec<&[u8]> = data.chunks(1).collect();
            proptest::prop_assert_eq!(lf(&bytes), naive);
        }
    }
}
