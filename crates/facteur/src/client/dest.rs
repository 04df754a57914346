//! Where fetched messages go: a Maildir, an mbox file, or an MDA command; and how each makes a
//! batch of messages durable and recorded, in an order that a crash at any point cannot turn
//! into a lost or a doubled message.
//!
//! Messages arrive with CRLF line ends (RFC 1939) and are stored with LF, the Unix way (a bare
//! CR is kept). A message is written as it arrives, chunk by chunk, never held whole.
//!
//! # Maildir
//! Each message is written to `tmp/<unique>` as it arrives. At the commit of a batch: the
//! batch's files are fsynced (on a few threads at once); `P` lines naming each file are appended to the journal and fsynced; the files are renamed
//! into `new/<unique>,S=<size>,W=<wire size>`; `new/` is fsynced; `D` lines are appended and
//! fsynced. After a crash, a `P` without its `D` is settled by looking at the Maildir: the file
//! in `new/` or `cur/` means it arrived; the file still in `tmp/` is whole (it was fsynced
//! before the `P`), so the rename is done now; neither means that the rename never became
//! durable or that the message was since read and deleted locally, and it is fetched again
//! (if it is still on the server, which it is unless it was recorded as done).
//!
//! # mbox
//! Each message is written, as its mbox entry (a `From ` line, the message with mboxrd quoting:
//! a line matching `^>*From ` gets one more `>`, then an empty line), to the account's spool
//! file, its SHA-256 computed on the way. At the commit, under the mbox's locks (a dotlock
//! `FILE.lock` holding our pid, and flock), the journal gets `P` lines with where each entry
//! will start and end and its SHA-256, fsynced; the entries are appended; the mbox is fsynced;
//! the locks are released; `D` lines are appended and fsynced. After a crash, a `P` without its
//! `D` is settled by reading the mbox: the bytes at its place with its SHA-256 mean it arrived;
//! a strict prefix of it reaching to the end of the file (checked against the spool) is a
//! partial append, cut off again; anything else (the file was changed since) is left alone and
//! the message fetched again: a possible duplicate, never a loss.
//!
//! # MDA
//! A command (`sh -c`) per message, fed the message on its standard input; delivered when it
//! exits 0, and only then recorded. This cannot be made exactly-once: a crash between the
//! command's exit and the `D` line means the message is delivered again by the next run
//! (at-least-once), and so does a command that delivered but then failed.

use super::fetch::FaultPoint;
use super::state::{AccountState, Pending, StateError};
use crate::durable::sync_dir;
use facteur_proto::Uidl;
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::config::{DestinationSpec, MBOX_LOCK_WAIT, STALE_DOTLOCK};

/// Octets read or copied at once.
const BLOCK: usize = 64 * 1024;

/// The longest first line searched for `Return-Path:` (RFC 5322 section 2.1.1: 998 + CRLF).
const MAX_FIRST_LINE: usize = 1000;

/// A line of only `>` this long is given up on as a candidate for mboxrd quoting.
const MAX_QUOTE_PREFIX: usize = 1000;

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

#[derive(Debug)]
pub struct MaildirDest {
    dir: PathBuf,
    host: String,
    /// Ends the names of this account's files in `tmp/`.
    suffix: String,
}

#[derive(Debug)]
pub struct MboxDest {
    path: PathBuf,
    spool_path: PathBuf,
    spool: File,
    /// Octets in the spool: the next entry starts there.
    spool_len: u64,
}

#[derive(Debug)]
pub struct MdaDest {
    command: String,
}

/// A message written (or delivered, for an MDA), not yet committed.
#[derive(Debug)]
pub enum Staged {
    /// In `tmp/`, written but not yet fsynced: a batch's files are fsynced together, on a few
    /// threads, at its commit, before anything names them in the journal.
    Maildir {
        tmp: String,
        name: String,
        file: File,
    },
    Mbox {
        spool_offset: u64,
        len: u64,
        sha256: [u8; 32],
    },
    Delivered,
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
        match spec {
            DestinationSpec::Maildir(dir) => {
                for sub in ["tmp", "new", "cur"] {
                    create_dir_durably(&dir.join(sub))?;
                }
                let suffix = format!(".fetch-{tag}");
                let tmp = dir.join("tmp");
                for e in fs::read_dir(&tmp).map_err(io_err(&tmp))? {
                    let e = e.map_err(io_err(&tmp))?;
                    if e.file_name()
                        .as_encoded_bytes()
                        .ends_with(suffix.as_bytes())
                    {
                        let _ = fs::remove_file(e.path());
                    }
                }
                Ok(Destination::Maildir(MaildirDest {
                    dir: dir.clone(),
                    host: hostname(),
                    suffix,
                }))
            }
            DestinationSpec::Mbox(path) => {
                let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
                if let Some(parent) = parent {
                    if !parent.is_dir() {
                        return Err(io_err(parent)(io::Error::new(
                            io::ErrorKind::NotFound,
                            "the mbox's folder does not exist",
                        )));
                    }
                }
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(spool)
                    .map_err(io_err(spool))?;
                Ok(Destination::Mbox(MboxDest {
                    path: path.clone(),
                    spool_path: spool.to_path_buf(),
                    spool: file,
                    spool_len: 0,
                }))
            }
            DestinationSpec::Mda(command) => Ok(Destination::Mda(MdaDest {
                command: command.clone(),
            })),
        }
    }

    /// Start a message.
    pub fn begin(&mut self) -> Result<Writer<'_>, DestError> {
        match self {
            Destination::Maildir(d) => {
                let tmp_dir = d.dir.join("tmp");
                for _ in 0..3 {
                    let unique = unique_name(&d.host)?;
                    let path = tmp_dir.join(format!("{unique}{}", d.suffix));
                    match OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&path)
                    {
                        Ok(f) => {
                            return Ok(Writer {
                                lf: CrlfToLf::default(),
                                scratch: Vec::new(),
                                kind: WriterKind::Maildir {
                                    file: BufWriter::with_capacity(BLOCK, f),
                                    path,
                                    unique,
                                    size: 0,
                                    lines: 0,
                                },
                            })
                        }
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                        Err(e) => return Err(io_err(&path)(e)),
                    }
                }
                Err(io_err(&tmp_dir)(io::Error::other(
                    "no unique file name after 3 tries",
                )))
            }
            Destination::Mbox(m) => {
                let start = m.spool_len;
                m.spool
                    .seek(SeekFrom::Start(start))
                    .map_err(io_err(&m.spool_path))?;
                Ok(Writer {
                    lf: CrlfToLf::default(),
                    scratch: Vec::new(),
                    kind: WriterKind::Mbox {
                        out: BufWriter::with_capacity(BLOCK, &mut m.spool),
                        spool_path: &m.spool_path,
                        spool_len: &mut m.spool_len,
                        start,
                        len: 0,
                        sha: Sha256::new(),
                        head: Some(Vec::new()),
                        quoter: FromQuoter::default(),
                        last: None,
                    },
                })
            }
            Destination::Mda(d) => {
                let mut child = Command::new("sh")
                    .arg("-c")
                    .arg(&d.command)
                    .stdin(Stdio::piped())
                    .spawn()
                    .map_err(|e| DestError::Mda {
                        command: d.command.clone(),
                        reason: format!("cannot be started: {e}"),
                    })?;
                let stdin = child.stdin.take();
                Ok(Writer {
                    lf: CrlfToLf::default(),
                    scratch: Vec::new(),
                    kind: WriterKind::Mda {
                        command: &d.command,
                        child: Some(child),
                        stdin,
                    },
                })
            }
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
        let uids: Vec<Uidl> = batch.iter().filter_map(|m| m.uid.clone()).collect();
        match self {
            Destination::Maildir(d) => {
                let pending: Vec<Pending> = batch
                    .iter()
                    .filter_map(|m| match (&m.uid, &m.staged) {
                        (Some(uid), Staged::Maildir { tmp, name, .. }) => Some(Pending::Maildir {
                            uid: uid.clone(),
                            dir: d.dir.clone(),
                            tmp: tmp.clone(),
                            name: name.clone(),
                        }),
                        _ => None,
                    })
                    .collect();
                let tmp_dir = d.dir.join("tmp");
                let files: Vec<(&File, PathBuf)> = batch
                    .iter()
                    .filter_map(|m| match &m.staged {
                        Staged::Maildir { file, tmp, .. } => Some((file, tmp_dir.join(tmp))),
                        _ => None,
                    })
                    .collect();
                sync_files(&files)?;
                state.record_pending(&pending)?;
                hook(FaultPoint::AfterRecord)?;
                for m in &batch {
                    if let Staged::Maildir { tmp, name, .. } = &m.staged {
                        let to = d.dir.join("new").join(name);
                        fs::rename(d.dir.join("tmp").join(tmp), &to).map_err(io_err(&to))?;
                    }
                }
                let new = d.dir.join("new");
                sync_dir(&new).map_err(io_err(&new))?;
            }
            Destination::Mbox(m) => {
                let total: u64 = batch
                    .iter()
                    .map(|s| match s.staged {
                        Staged::Mbox { len, .. } => len,
                        _ => 0,
                    })
                    .sum();
                let first = batch.iter().find_map(|s| match s.staged {
                    Staged::Mbox { spool_offset, .. } => Some(spool_offset),
                    _ => None,
                });
                let lock = MboxLock::acquire(&m.path)?;
                let start = lock.len()?;
                let mut pending = Vec::new();
                let mut at = start;
                for s in &batch {
                    if let Staged::Mbox {
                        spool_offset,
                        len,
                        sha256,
                    } = s.staged
                    {
                        if let Some(uid) = &s.uid {
                            pending.push(Pending::Mbox {
                                uid: uid.clone(),
                                path: m.path.clone(),
                                start: at,
                                end: at + len,
                                sha256,
                                spool_offset,
                            });
                        }
                        at += len;
                    }
                }
                state.record_pending(&pending)?;
                hook(FaultPoint::AfterRecord)?;
                if let Some(first) = first {
                    m.spool.flush().map_err(io_err(&m.spool_path))?;
                    let half = total / 2;
                    copy_range(&m.spool, &m.spool_path, first, half, &lock)?;
                    hook(FaultPoint::MidAppend)?;
                    copy_range(&m.spool, &m.spool_path, first + half, total - half, &lock)?;
                    lock.file.sync_data().map_err(io_err(&m.path))?;
                }
                drop(lock);
                m.spool.set_len(0).map_err(io_err(&m.spool_path))?;
                m.spool_len = 0;
            }
            Destination::Mda(_) => {}
        }
        hook(FaultPoint::AfterCommit)?;
        state.record_done(&uids, now)?;
        Ok(())
    }
}

/// fsync these files, on a few threads: each fsync waits on the disk, and the disk serves
/// several at once far faster than one after another.
fn sync_files(files: &[(&File, PathBuf)]) -> Result<(), DestError> {
    /// fsyncs in flight at most.
    const THREADS: usize = 8;
    if files.len() <= 1 {
        for (file, path) in files {
            file.sync_all().map_err(io_err(path))?;
        }
        return Ok(());
    }
    let per_thread = files.len().div_ceil(THREADS);
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(per_thread)
            .map(|chunk| {
                scope.spawn(move || {
                    for (file, path) in chunk {
                        file.sync_all().map_err(io_err(path))?;
                    }
                    Ok(())
                })
            })
            .collect();
        let mut result = Ok(());
        for handle in handles {
            let r = handle.join().unwrap_or_else(|_| {
                Err(DestError::Io {
                    path: PathBuf::from("fsync"),
                    source: io::Error::other("an fsync thread failed"),
                })
            });
            if result.is_ok() {
                result = r;
            }
        }
        result
    })
}

fn copy_range(
    spool: &File,
    spool_path: &Path,
    from: u64,
    len: u64,
    lock: &MboxLock,
) -> Result<(), DestError> {
    let mut buf = vec![0u8; BLOCK];
    let mut done = 0u64;
    while done < len {
        let want = usize::try_from((len - done).min(BLOCK as u64)).unwrap_or(BLOCK);
        let chunk = buf.get_mut(..want).unwrap_or_default();
        spool
            .read_exact_at(chunk, from + done)
            .map_err(io_err(spool_path))?;
        (&lock.file).write_all(chunk).map_err(io_err(&lock.path))?;
        done += want as u64;
    }
    Ok(())
}

/// Settle the messages that were being committed when a run stopped (see the module
/// documentation); returns the unique-ids of those that arrived.
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
                if maildir_has(dir, name)? {
                    arrived.push(uid.clone());
                    continue;
                }
                let from = dir.join("tmp").join(tmp);
                if from.exists() {
                    let to = dir.join("new").join(name);
                    fs::rename(&from, &to).map_err(io_err(&to))?;
                    let new = dir.join("new");
                    sync_dir(&new).map_err(io_err(&new))?;
                    arrived.push(uid.clone());
                }
            }
            Pending::Mbox { .. } => mbox.push(p),
        }
    }
    mbox.sort_by_key(|p| match p {
        Pending::Mbox { start, .. } => *start,
        Pending::Maildir { .. } => 0,
    });
    let spool = File::open(spool).ok();
    let mut locked: Option<MboxLock> = None;
    for p in mbox {
        let Pending::Mbox {
            uid,
            path,
            start,
            end,
            sha256,
            spool_offset,
        } = p
        else {
            continue;
        };
        if !path.exists() {
            continue;
        }
        if locked.as_ref().is_none_or(|l| l.path != *path) {
            drop(locked.take());
            locked = Some(MboxLock::acquire(path)?);
        }
        let Some(lock) = &locked else { continue };
        let len = lock.len()?;
        if len >= *end && sha_of(&lock.file, path, *start, *end)? == *sha256 {
            arrived.push(uid.clone());
            continue;
        }
        let partial = len > *start
            && len < *end
            && spool.as_ref().is_some_and(|s| {
                let our_len = end - start;
                sha_of(s, path, *spool_offset, spool_offset + our_len).ok() == Some(*sha256)
                    && same_bytes(&lock.file, *start, s, *spool_offset, len - start)
                        .unwrap_or(false)
            });
        if partial {
            lock.file.set_len(*start).map_err(io_err(path))?;
            lock.file.sync_data().map_err(io_err(path))?;
        }
    }
    Ok(arrived)
}

/// Create `dir` (mode 700) and its missing parents, each made durable in its parent.
fn create_dir_durably(dir: &Path) -> Result<(), DestError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_durably(parent)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(io_err(dir)(e)),
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent).map_err(io_err(parent))?;
    }
    Ok(())
}

/// True if `new/name` or `cur/name[:2,...]` exists.
fn maildir_has(dir: &Path, name: &str) -> Result<bool, DestError> {
    if dir.join("new").join(name).exists() {
        return Ok(true);
    }
    let cur = dir.join("cur");
    let entries = match fs::read_dir(&cur) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err(&cur)(e)),
    };
    for e in entries {
        let e = e.map_err(io_err(&cur))?;
        let n = e.file_name();
        let n = n.as_encoded_bytes();
        let base = n.split(|&b| b == b':').next().unwrap_or(n);
        if base == name.as_bytes() {
            return Ok(true);
        }
    }
    Ok(false)
}

fn sha_of(file: &File, path: &Path, from: u64, to: u64) -> Result<[u8; 32], DestError> {
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; BLOCK];
    let mut at = from;
    while at < to {
        let want = usize::try_from((to - at).min(BLOCK as u64)).unwrap_or(BLOCK);
        let chunk = buf.get_mut(..want).unwrap_or_default();
        file.read_exact_at(chunk, at).map_err(io_err(path))?;
        sha.update(&*chunk);
        at += want as u64;
    }
    Ok(sha.finalize().into())
}

fn same_bytes(a: &File, a_at: u64, b: &File, b_at: u64, len: u64) -> io::Result<bool> {
    let mut x = vec![0u8; BLOCK];
    let mut y = vec![0u8; BLOCK];
    let mut done = 0u64;
    while done < len {
        let want = usize::try_from((len - done).min(BLOCK as u64)).unwrap_or(BLOCK);
        let (cx, cy) = (
            x.get_mut(..want).unwrap_or_default(),
            y.get_mut(..want).unwrap_or_default(),
        );
        a.read_exact_at(cx, a_at + done)?;
        b.read_exact_at(cy, b_at + done)?;
        if cx != cy {
            return Ok(false);
        }
        done += want as u64;
    }
    Ok(true)
}

/// An mbox file locked with a dotlock (`FILE.lock`, holding our pid) and flock, opened for
/// appending. Both are released on drop; after a crash the kernel drops the flock, and the
/// dotlock is removed by the next run (its pid is gone) or by anyone once it is stale.
struct MboxLock {
    path: PathBuf,
    file: File,
    dotlock: Option<PathBuf>,
}

impl MboxLock {
    fn acquire(path: &Path) -> Result<Self, DestError> {
        let mut name = path.as_os_str().to_os_string();
        name.push(".lock");
        let dotlock_path = PathBuf::from(name);
        let lock_err = |reason: String| DestError::Lock {
            path: path.to_path_buf(),
            reason,
        };
        let tries = MBOX_LOCK_WAIT.as_millis() / 100;
        let mut dotlock = None;
        for _ in 0..tries {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&dotlock_path)
            {
                Ok(mut f) => {
                    let _ = writeln!(f, "{}", std::process::id());
                    dotlock = Some(dotlock_path.clone());
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if dotlock_is_stale(&dotlock_path) {
                        let _ = fs::remove_file(&dotlock_path);
                        continue;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                // A folder where we may not create files (/var/mail without the mail group):
                // flock alone then, as many MUAs do.
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => break,
                Err(e) => return Err(lock_err(format!("{}: {e}", dotlock_path.display()))),
            }
        }
        let existed = path.exists();
        let mut me = MboxLock {
            path: path.to_path_buf(),
            file: OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .mode(0o600)
                .open(path)
                .map_err(io_err(path))?,
            dotlock,
        };
        if !existed {
            // A new mbox must not vanish with a crash once messages are recorded in it.
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent).map_err(io_err(parent))?;
            }
        }
        if me.dotlock.is_none() && dotlock_path.exists() {
            me.dotlock = None;
            return Err(lock_err(format!(
                "{} is held by another program",
                dotlock_path.display()
            )));
        }
        for i in 0..tries {
            match me.file.try_lock() {
                Ok(()) => return Ok(me),
                Err(fs::TryLockError::WouldBlock) if i + 1 < tries => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(fs::TryLockError::WouldBlock) => break,
                Err(fs::TryLockError::Error(e)) => return Err(lock_err(e.to_string())),
            }
        }
        Err(lock_err("another program holds its flock".into()))
    }

    fn len(&self) -> Result<u64, DestError> {
        Ok(self.file.metadata().map_err(io_err(&self.path))?.len())
    }
}

impl Drop for MboxLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
        if let Some(d) = self.dotlock.take() {
            let _ = fs::remove_file(d);
        }
    }
}

/// A dotlock whose pid is not running (on this host), or older than [`STALE_DOTLOCK`].
fn dotlock_is_stale(path: &Path) -> bool {
    let old = fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > STALE_DOTLOCK);
    if old {
        return true;
    }
    let pid = fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    match pid {
        Some(pid) if pid != std::process::id() => {
            Path::new("/proc/self").exists() && !Path::new(&format!("/proc/{pid}")).exists()
        }
        _ => false,
    }
}

/// A message being written.
pub struct Writer<'a> {
    lf: CrlfToLf,
    scratch: Vec<u8>,
    kind: WriterKind<'a>,
}

enum WriterKind<'a> {
    Maildir {
        file: BufWriter<File>,
        path: PathBuf,
        unique: String,
        size: u64,
        lines: u64,
    },
    Mbox {
        out: BufWriter<&'a mut File>,
        spool_path: &'a Path,
        spool_len: &'a mut u64,
        start: u64,
        len: u64,
        sha: Sha256,
        /// The first line, until it is complete (it decides the `From ` line).
        head: Option<Vec<u8>>,
        quoter: FromQuoter,
        last: Option<u8>,
    },
    Mda {
        command: &'a str,
        child: Option<Child>,
        stdin: Option<ChildStdin>,
    },
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
            WriterKind::Maildir {
                file,
                path,
                size,
                lines,
                ..
            } => {
                file.write_all(data).map_err(io_err(path))?;
                *size += data.len() as u64;
                *lines += data.iter().filter(|&&b| b == b'\n').count() as u64;
                Ok(())
            }
            WriterKind::Mbox {
                out,
                spool_path,
                len,
                sha,
                head,
                quoter,
                last,
                ..
            } => {
                let mut sink = Emit {
                    out,
                    path: spool_path,
                    len,
                    sha,
                    last,
                };
                if let Some(h) = head {
                    let room = MAX_FIRST_LINE.saturating_sub(h.len());
                    let take = match data.iter().take(room).position(|&b| b == b'\n') {
                        Some(i) => i + 1,
                        None => data.len().min(room),
                    };
                    let (first, rest) = data.split_at(take);
                    h.extend_from_slice(first);
                    if h.ends_with(b"\n") || h.len() >= MAX_FIRST_LINE {
                        let h = head.take().unwrap_or_default();
                        sink.emit(from_line(&h, SystemTime::now()).as_bytes())?;
                        quoter.push(&h, &mut sink)?;
                        quoter.push(rest, &mut sink)?;
                    }
                    return Ok(());
                }
                quoter.push(data, &mut sink)
            }
            WriterKind::Done => Ok(()),
            WriterKind::Mda {
                command,
                child,
                stdin,
            } => {
                let Some(s) = stdin else {
                    return Ok(());
                };
                if let Err(e) = s.write_all(data) {
                    *stdin = None;
                    let status = child
                        .take()
                        .and_then(|mut c| c.wait().ok())
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "unknown status".into());
                    return Err(DestError::Mda {
                        command: command.to_string(),
                        reason: format!("stopped reading the message ({e}; {status})"),
                    });
                }
                Ok(())
            }
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
            WriterKind::Maildir {
                file,
                path,
                unique,
                size,
                lines,
            } => {
                let file = file
                    .into_inner()
                    .map_err(|e| io_err(&path)(e.into_error()))?;
                let tmp = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_string();
                Ok(Staged::Maildir {
                    name: format!("{unique},S={size},W={}", size + lines),
                    tmp,
                    file,
                })
            }
            WriterKind::Mbox {
                mut out,
                spool_path,
                spool_len,
                start,
                mut len,
                mut sha,
                head,
                mut quoter,
                mut last,
            } => {
                let mut sink = Emit {
                    out: &mut out,
                    path: spool_path,
                    len: &mut len,
                    sha: &mut sha,
                    last: &mut last,
                };
                if let Some(h) = head {
                    sink.emit(from_line(&h, SystemTime::now()).as_bytes())?;
                    quoter.push(&h, &mut sink)?;
                }
                quoter.finish(&mut sink)?;
                if *sink.last != Some(b'\n') {
                    sink.emit(b"\n")?;
                }
                sink.emit(b"\n")?;
                out.flush().map_err(io_err(spool_path))?;
                *spool_len = start + len;
                Ok(Staged::Mbox {
                    spool_offset: start,
                    len,
                    sha256: sha.finalize().into(),
                })
            }
            WriterKind::Mda {
                command,
                mut child,
                stdin,
            } => {
                drop(stdin);
                let status = child
                    .take()
                    .map(|mut c| c.wait())
                    .transpose()
                    .map_err(|e| DestError::Mda {
                        command: command.to_string(),
                        reason: format!("could not be waited for: {e}"),
                    })?;
                match status {
                    Some(s) if s.success() => Ok(Staged::Delivered),
                    Some(s) => Err(DestError::Mda {
                        command: command.to_string(),
                        reason: format!("failed ({s}); the message stays on the server"),
                    }),
                    None => Err(DestError::Mda {
                        command: command.to_string(),
                        reason: "failed; the message stays on the server".into(),
                    }),
                }
            }
        }
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        // A message given up half-way leaves nothing behind: a partial Maildir file is
        // removed, and an MDA is not left running or as a zombie (it is killed: its input was
        // only part of a message).
        match &mut self.kind {
            WriterKind::Mda { child, stdin, .. } => {
                *stdin = None;
                if let Some(mut c) = child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
            WriterKind::Maildir { path, .. } => {
                let _ = fs::remove_file(path);
            }
            WriterKind::Mbox { .. } | WriterKind::Done => {}
        }
    }
}

/// Where the mbox writer's output goes: the spool, the running SHA-256 and length.
struct Emit<'b, 'a> {
    out: &'b mut BufWriter<&'a mut File>,
    path: &'b Path,
    len: &'b mut u64,
    sha: &'b mut Sha256,
    last: &'b mut Option<u8>,
}

impl Emit<'_, '_> {
    fn emit(&mut self, data: &[u8]) -> Result<(), DestError> {
        if data.is_empty() {
            return Ok(());
        }
        self.out.write_all(data).map_err(io_err(self.path))?;
        self.sha.update(data);
        *self.len += data.len() as u64;
        *self.last = data.last().copied();
        Ok(())
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

/// mboxrd quoting, streaming: a line matching `^>*From ` gets one more `>` in front.
#[derive(Debug)]
struct FromQuoter {
    at_start: bool,
    held: Vec<u8>,
}

impl Default for FromQuoter {
    fn default() -> Self {
        Self {
            at_start: true,
            held: Vec::new(),
        }
    }
}

enum Quote {
    Maybe,
    Yes,
    No,
}

fn classify(held: &[u8]) -> Quote {
    let rest = held
        .get(held.iter().take_while(|&&b| b == b'>').count()..)
        .unwrap_or_default();
    if rest == b"From " {
        Quote::Yes
    } else if b"From ".starts_with(rest) && held.len() < MAX_QUOTE_PREFIX {
        Quote::Maybe
    } else {
        Quote::No
    }
}

impl FromQuoter {
    fn push(&mut self, mut data: &[u8], out: &mut Emit<'_, '_>) -> Result<(), DestError> {
        while !data.is_empty() {
            if !self.at_start {
                match data.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        let (line, rest) = data.split_at(i + 1);
                        out.emit(line)?;
                        data = rest;
                        self.at_start = true;
                    }
                    None => {
                        out.emit(data)?;
                        return Ok(());
                    }
                }
                continue;
            }
            let Some((&b, rest)) = data.split_first() else {
                break;
            };
            data = rest;
            self.held.push(b);
            match classify(&self.held) {
                Quote::Maybe => {}
                Quote::Yes => {
                    out.emit(b">")?;
                    out.emit(&std::mem::take(&mut self.held))?;
                    self.at_start = false;
                }
                Quote::No => {
                    out.emit(&std::mem::take(&mut self.held))?;
                    self.at_start = b == b'\n';
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Emit<'_, '_>) -> Result<(), DestError> {
        out.emit(&std::mem::take(&mut self.held))
    }
}

/// The `From ` line of an mbox entry: the address of a `Return-Path:` first line, else
/// MAILER-DAEMON, and the time in asctime form (UTC).
fn from_line(first_line: &[u8], now: SystemTime) -> String {
    let sender = std::str::from_utf8(first_line)
        .ok()
        .and_then(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("return-path")
                .then(|| value.trim().trim_start_matches('<').trim_end_matches('>'))
        })
        .filter(|s| !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b)))
        .unwrap_or("MAILER-DAEMON");
    format!("From {sender} {}\n", asctime(now))
}

/// `Mon Jan  2 15:04:05 2006` in UTC.
fn asctime(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = crate::date::civil_from_days(days);
    format!(
        "{} {} {:>2} {:02}:{:02}:{:02} {}",
        DAYS.get((days % 7) as usize).unwrap_or(&"Thu"),
        MONTHS
            .get(usize::try_from(month.saturating_sub(1)).unwrap_or(0))
            .unwrap_or(&"Jan"),
        day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        year
    )
}

/// This host's name for Maildir names, escaped as the store's delivery does.
fn hostname() -> String {
    crate::store::deliver::hostname()
}

/// A Maildir unique name, made as the store's delivery makes them.
fn unique_name(host: &str) -> Result<String, DestError> {
    crate::store::deliver::unique_name(host).map_err(|source| DestError::Io {
        path: PathBuf::from("getrandom"),
        source,
    })
}

/// Read a whole small file (for tests and recovery checks).
#[cfg(test)]
fn read_all(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let mut v = Vec::new();
    File::open(path).unwrap().read_to_end(&mut v).unwrap();
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

    /// Write `message` (CRLF) through an mbox writer in chunks of `n`; returns the spool.
    fn mbox_entry(message: &[u8], n: usize) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        let mut d = Destination::open(&DestinationSpec::Mbox(dir.path().join("mbox")), &spool, "t")
            .unwrap();
        let mut w = d.begin().unwrap();
        for c in message.chunks(n) {
            w.write(c).unwrap();
        }
        let Staged::Mbox { len, sha256, .. } = w.finish().unwrap() else {
            panic!()
        };
        let got = read_all(&spool);
        assert_eq!(got.len() as u64, len);
        assert_eq!(<[u8; 32]>::from(Sha256::digest(&got)), sha256);
        got
    }

    #[test]
    fn mbox_entries_are_quoted_the_mboxrd_way_whatever_the_chunking() {
        let msg = b"Return-Path: <bob@example.org>\r\nSubject: x\r\n\r\nFrom here\r\n>From there\r\nFro\r\nFrom\r\n >From not\r\nlast line without end";
        let want_body = b"Subject: x\n\n>From here\n>>From there\nFro\nFrom\n >From not\nlast line without end\n\n";
        for n in [1, 2, 3, 7, 1000] {
            let got = mbox_entry(msg, n);
            let text = String::from_utf8(got.clone()).unwrap();
            assert!(text.starts_with("From bob@example.org "), "{text}");
            let first_end = text.find('\n').unwrap() + 1;
            assert!(text[first_end..].starts_with("Return-Path:"));
            let body_start = text.find("Subject").unwrap();
            assert_eq!(&got[body_start..], &want_body[..], "chunk {n}");
        }
        let got = mbox_entry(b"From: a\r\n\r\nhi\r\n", 5);
        assert!(String::from_utf8(got)
            .unwrap()
            .starts_with("From MAILER-DAEMON "));
    }

    #[test]
    fn asctime_dates() {
        let t = UNIX_EPOCH + Duration::from_secs(1_136_214_245);
        assert_eq!(asctime(t), "Mon Jan  2 15:04:05 2006");
        assert_eq!(asctime(UNIX_EPOCH), "Thu Jan  1 00:00:00 1970");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(asctime(t), "Tue Feb 29 00:00:00 2000");
    }

    #[test]
    fn maildir_commit_and_recovery_of_each_crash_point() {
        let dir = tempfile::tempdir().unwrap();
        let md = dir.path().join("Maildir");
        let state_dir = dir.path().join("state");
        let spool = dir.path().join("spool");
        let spec = DestinationSpec::Maildir(md.clone());
        let uid = |s: &str| Uidl::new(s).unwrap();
        for (i, point) in [FaultPoint::AfterRecord, FaultPoint::AfterCommit]
            .into_iter()
            .enumerate()
        {
            let mut state = AccountState::open(&state_dir, "k").unwrap();
            let mut d = Destination::open(&spec, &spool, "t").unwrap();
            let mut w = d.begin().unwrap();
            w.write(b"Subject: t\r\n\r\nbody\r\n").unwrap();
            let staged = w.finish().unwrap();
            let u = uid(&format!("u{i}"));
            let err = d
                .commit(
                    vec![StagedMessage {
                        uid: Some(u.clone()),
                        staged,
                    }],
                    &mut state,
                    1,
                    &mut |p| {
                        if p == point {
                            Err(DestError::Injected(p))
                        } else {
                            Ok(())
                        }
                    },
                )
                .unwrap_err();
            assert!(matches!(err, DestError::Injected(_)));
            drop(state);
            let mut state = AccountState::open(&state_dir, "k").unwrap();
            assert!(!state.contains(&u));
            let arrived = recover(state.pending(), &spool).unwrap();
            assert_eq!(arrived, std::slice::from_ref(&u), "{point:?}");
            state.finish_recovery(&arrived, 2).unwrap();
            assert!(state.contains(&u));
        }
        let files: Vec<_> = fs::read_dir(md.join("new")).unwrap().collect();
        assert_eq!(files.len(), 2);
        assert_eq!(fs::read_dir(md.join("tmp")).unwrap().count(), 0);
        for f in files {
            let f = f.unwrap();
            assert_eq!(read_all(&f.path()), b"Subject: t\n\nbody\n");
            let name = f.file_name().into_string().unwrap();
            assert!(name.ends_with(",S=17,W=20"), "{name}");
        }
        // A message read and moved to cur/ by a mail reader still counts as arrived.
        let p = Pending::Maildir {
            uid: uid("x"),
            dir: md.clone(),
            tmp: "gone".into(),
            name: "123.abc".into(),
        };
        fs::write(md.join("cur").join("123.abc:2,S"), b"x").unwrap();
        assert_eq!(recover(&[p], &spool).unwrap(), [uid("x")]);
    }

    fn mbox_batch(
        d: &mut Destination,
        state: &mut AccountState,
        uids: &[&str],
        point: Option<FaultPoint>,
    ) -> Result<(), DestError> {
        let mut batch = Vec::new();
        for u in uids {
            let mut w = d.begin()?;
            w.write(format!("Subject: {u}\r\n\r\nFrom me\r\n").as_bytes())?;
            batch.push(StagedMessage {
                uid: Some(Uidl::new(*u).unwrap()),
                staged: w.finish()?,
            });
        }
        d.commit(batch, state, 1, &mut |p| {
            if Some(p) == point {
                Err(DestError::Injected(p))
            } else {
                Ok(())
            }
        })
    }

    #[test]
    fn mbox_recovery_cuts_a_partial_append_and_keeps_a_whole_one() {
        let dir = tempfile::tempdir().unwrap();
        let mbox = dir.path().join("mbox");
        let state_dir = dir.path().join("state");
        let spec = DestinationSpec::Mbox(mbox.clone());
        let spool = dir.path().join("k.mbox-spool");
        let open = || {
            (
                AccountState::open(&state_dir, "k").unwrap(),
                Destination::open(&spec, &spool, "t").unwrap(),
            )
        };

        let (mut state, mut d) = open();
        mbox_batch(&mut d, &mut state, &["a"], None).unwrap();
        drop((state, d));
        let after_a = read_all(&mbox);
        assert!(!mbox.with_extension("lock").exists());

        // Half of a batch of two appended, then a crash.
        let (mut state, mut d) = open();
        // The first is the longer, so half of the batch is part of the first message only.
        let e = mbox_batch(
            &mut d,
            &mut state,
            &["bbbbbbbbbbbbbbbbbbbb", "c"],
            Some(FaultPoint::MidAppend),
        );
        assert!(matches!(e, Err(DestError::Injected(_))));
        drop((state, d));
        assert!(read_all(&mbox).len() > after_a.len());
        let mut state = AccountState::open(&state_dir, "k").unwrap();
        let arrived = recover(state.pending(), &spool).unwrap();
        assert_eq!(arrived, []);
        state.finish_recovery(&arrived, 2).unwrap();
        // The partial message is cut off: the mbox is as it was.
        assert_eq!(read_all(&mbox), after_a);
        drop(state);

        // All appended, then a crash before the D lines: both count as arrived.
        let (mut state, mut d) = open();
        let e = mbox_batch(
            &mut d,
            &mut state,
            &["d", "e"],
            Some(FaultPoint::AfterCommit),
        );
        assert!(e.is_err());
        drop((state, d));
        let state = AccountState::open(&state_dir, "k").unwrap();
        let mut arrived = recover(state.pending(), &spool).unwrap();
        arrived.sort();
        assert_eq!(arrived, [Uidl::new("d").unwrap(), Uidl::new("e").unwrap()]);
        assert!(String::from_utf8(read_all(&mbox))
            .unwrap()
            .contains("\n>From me\n"));
    }

    #[test]
    fn a_stale_dotlock_is_broken_and_a_live_one_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let mbox = dir.path().join("mbox");
        let lock = dir.path().join("mbox.lock");
        // A pid that cannot be running (above the kernel's pid_max).
        fs::write(&lock, "99999999\n").unwrap();
        let l = MboxLock::acquire(&mbox).unwrap();
        assert_eq!(
            fs::read_to_string(&lock).unwrap().trim(),
            std::process::id().to_string()
        );
        drop(l);
        assert!(!lock.exists());
    }

    #[test]
    fn an_mda_that_fails_is_an_error_and_one_that_succeeds_gets_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let spool = dir.path().join("spool");
        let ok = DestinationSpec::Mda(format!("cat > '{}'", out.display()));
        let mut d = Destination::open(&ok, &spool, "t").unwrap();
        let mut w = d.begin().unwrap();
        w.write(b"Subject: m\r\n\r\nhi\r\n").unwrap();
        assert!(matches!(w.finish().unwrap(), Staged::Delivered));
        assert_eq!(read_all(&out), b"Subject: m\n\nhi\n");

        let mut d = Destination::open(
            &DestinationSpec::Mda("cat >/dev/null; exit 75".into()),
            &spool,
            "t",
        )
        .unwrap();
        let mut w = d.begin().unwrap();
        w.write(b"x\r\n").unwrap();
        let e = w.finish().unwrap_err().to_string();
        assert!(e.contains("75") && e.contains("stays on the server"), "{e}");
    }
}
