//! The mbox store: `/var/mail/USER` files as Postfix's `local`, procmail and mutt write them.
//!
//! ## Files
//! The path template (`/var/mail/%u`) names the mbox; the directory above it is the spool. It
//! must exist (facteur never creates a spool) and is opened without following a link at its last
//! component; the mbox is opened relative to it with `O_NOFOLLOW`, refused unless it is a
//! regular file with one link (as Postfix refuses it), owned by the account's uid when the user
//! database gives one. Beside it, facteur keeps, all named after the mbox with a leading dot (a
//! name a user's mbox never has: such user names are refused):
//! - `.USER.facteur-lock`: the POP3 session's lock, an `flock` held for the whole session
//!   (RFC 1939's exclusive access; `[IN-USE]` for a second session). MTAs never look at it.
//! - `.USER.facteur-journal` (and `.tmp`): the journal of an UPDATE, present only while one runs
//!   or after a crash (see `update`).
//!
//! ## Locks
//! The MTA's locks (a dotlock `USER.lock`, then `fcntl` on the mbox: see `lock`) are taken for a
//! login's scan, for an UPDATE and for a delivery, never for a session: mail the MTA delivers
//! during a session is appended at the end of the file, beyond the session's snapshot, and every
//! offset the session holds stays valid (UPDATE runs only in the session that holds the POP3
//! lock; nothing else facteur does moves octets).
//!
//! ## Unique-ids
//! A message's unique-id is 32 hex digits of the SHA-256 of its `From ` line and its content as
//! stored (quoting included, trailing newlines excluded), followed by `-N` for the N-th message
//! of the file with the same hash (N >= 2). The `From ` line holds the envelope sender and the
//! delivery time to the second, so two copies of one message delivered at different seconds have
//! different ids without the counter. Nothing is written into users' messages, and no side file
//! has to survive: an UPDATE moves messages but never changes their octets, so ids are stable
//! across sessions and rewrites. What changes an id: a program that edits a message in place
//! (a mail reader adding `Status:` headers), and, for exact duplicates (same sender, same
//! second, same octets), deleting an earlier copy renumbers the later ones.
//!
//! ## What this module must never do
//! - Hold the MTA locks while a client thinks, or read a whole message into memory.
//! - Follow a link, open a FIFO or a device, or serve a file with several links.
//! - Confirm UPDATE before the rewrite is durable, or lose mail appended during it.

mod lock;
pub(crate) mod parse;
mod update;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use facteur_proto::{MessageMeta, Uidl};
use rustix::fs::OFlags;
use rustix::io::Errno;

use super::name::WireCounter;
use super::{handle, policy_files};
use super::{template, Delivered, Maildrop, Owner, Store, StoreError};
use parse::{IdHasher, Quoter, Scanner, Span, Unquoter};

pub(crate) use update::Step;

/// Messages served from one mbox at most: the snapshot keeps about 150 octets per message.
pub const MAX_MESSAGES: usize = 1_000_000;

/// The largest mbox served or delivered to (a larger one is refused, not truncated).
pub const MAX_MBOX_SIZE: u64 = 1 << 40;

/// The mode of an mbox facteur creates: the user's and the spool group's (Debian's
/// `/var/mail/USER` is `USER:mail`, 0660).
const MBOX_MODE: u32 = 0o660;

/// Reads and copies run in blocks of this size.
const BLOCK: usize = 64 * 1024;

/// The names facteur uses beside one mbox.
#[derive(Clone, Debug)]
pub(crate) struct Names {
    pub mbox: String,
    pub session_lock: String,
    pub journal: String,
    pub journal_tmp: String,
    /// LOGIN-DELAY's last login (and its temporary file).
    pub last_login: String,
    pub last_login_tmp: String,
    /// EXPIRE's first retrieval times, by unique-id (and its temporary file).
    pub retrieved: String,
    pub retrieved_tmp: String,
}

impl Names {
    fn new(mbox: &str) -> Self {
        Self {
            mbox: mbox.to_owned(),
            session_lock: format!(".{mbox}.facteur-lock"),
            journal: format!(".{mbox}.facteur-journal"),
            journal_tmp: format!(".{mbox}.facteur-journal.tmp"),
            last_login: format!(".{mbox}.facteur-last-login"),
            last_login_tmp: format!(".{mbox}.facteur-last-login.tmp"),
            retrieved: format!(".{mbox}.facteur-retrieved"),
            retrieved_tmp: format!(".{mbox}.facteur-retrieved.tmp"),
        }
    }
}

/// Maildrops kept as mbox files (`[store] format = "mbox"`).
#[derive(Clone, Debug)]
pub struct MboxStore {
    template: String,
}

impl MboxStore {
    /// A store whose mbox files the template names (`/var/mail/%u`; the escapes of the Maildir
    /// template).
    pub fn new(path_template: impl Into<String>) -> Self {
        Self {
            template: path_template.into(),
        }
    }

    /// The user's mbox.
    pub fn mbox_path(&self, user: &str, home: Option<&str>) -> Result<PathBuf, StoreError> {
        let (dir, name) = self.locate(user, home)?;
        Ok(dir.join(name))
    }

    /// The spool directory and the mbox's name in it.
    fn locate(&self, user: &str, home: Option<&str>) -> Result<(PathBuf, String), StoreError> {
        let path = template::expand(&self.template, user, home)?;
        let bad_template = |reason| StoreError::BadTemplate {
            template: self.template.clone(),
            reason,
        };
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| bad_template("the template names no file"))?
            .to_owned();
        // Ours: the dotfiles beside the mbox, and the MTA's dotlock.
        if name.starts_with('.') || name.ends_with(".lock") {
            return Err(StoreError::BadUser(user.to_owned()));
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => return Err(bad_template("the template names no directory")),
        };
        Ok((dir, name))
    }

    /// Locks and reads the user's mbox.
    pub fn open_mbox(
        &self,
        user: &str,
        home: Option<&str>,
        owner: Owner,
    ) -> Result<LockedMbox, StoreError> {
        let (dir_path, name) = self.locate(user, home)?;
        let dir = open_spool(&dir_path)?;
        let names = Names::new(&name);
        let session_lock = session_lock(&dir, &dir_path, &names, owner)?;
        let path = dir_path.join(&name);
        let deadline = Instant::now() + lock::LOCK_WAIT;
        let mut mta = lock::dotlock(&dir, &dir_path, name.as_ref(), deadline)?;
        let mbox = open_file(&dir, &path, &name, None, owner)?;
        let entries = match &mbox {
            None => Vec::new(),
            Some(file) => {
                mta.lock_file(file, &path, deadline)?;
                update::recover(&dir, &dir_path, &names, file, owner, &mut mta)?;
                scan(file, &path)?
            }
        };
        drop(mta);
        Ok(LockedMbox {
            dir,
            dir_path,
            names,
            owner,
            _session_lock: session_lock,
            mbox: mbox.map(Arc::new),
            metas: entries.iter().map(|e| e.meta.clone()).collect(),
            entries,
            crash: None,
        })
    }
}

impl Store for MboxStore {
    fn open_as(
        &self,
        user: &str,
        home: Option<&str>,
        owner: Owner,
    ) -> Result<Box<dyn Maildrop>, StoreError> {
        Ok(Box::new(self.open_mbox(user, home, owner)?))
    }

    fn deliver_as(
        &self,
        user: &str,
        home: Option<&str>,
        owner: Owner,
        message: &mut dyn Read,
    ) -> Result<Delivered, StoreError> {
        let (dir_path, name) = self.locate(user, home)?;
        let dir = open_spool(&dir_path)?;
        let names = Names::new(&name);
        let path = dir_path.join(&name);
        let deadline = Instant::now() + lock::LOCK_WAIT;
        let mut mta = lock::dotlock(&dir, &dir_path, name.as_ref(), deadline)?;
        let Some(mbox) = open_file(&dir, &path, &name, Some(owner), owner)? else {
            return Err(StoreError::io(&path, io::ErrorKind::NotFound.into()));
        };
        mta.lock_file(&mbox, &path, deadline)?;
        update::recover(&dir, &dir_path, &names, &mbox, owner, &mut mta)?;
        append(&mbox, &path, message, SystemTime::now())
    }
}

/// Opens the spool directory: never through a link at its last component (as the Maildir's
/// root); it must exist.
fn open_spool(dir_path: &Path) -> Result<File, StoreError> {
    handle::open_dir_path(dir_path).map_err(|e| match Errno::from_io_error(&e) {
        Some(Errno::LOOP | Errno::NOTDIR) => StoreError::io(
            dir_path,
            io::Error::new(
                io::ErrorKind::InvalidData,
                "the mail spool is not a directory, or is a symbolic link (name its real path)",
            ),
        ),
        _ => StoreError::io(dir_path, e),
    })
}

/// The POP3 session's lock: an exclusive `flock` on `.USER.facteur-lock`, without waiting.
fn session_lock(
    dir: &File,
    dir_path: &Path,
    names: &Names,
    owner: Owner,
) -> Result<File, StoreError> {
    let path = dir_path.join(&names.session_lock);
    let file = handle::open_lock_file(dir, &names.session_lock, owner)
        .map_err(|e| StoreError::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::io(path, e)),
    }
}

/// Opens the mbox read-write: a regular file with one link, never through a link, owned by
/// `owner.uid` if known. Missing: `None`, or, with `create`, a new empty file (mode 0660, given
/// to that owner's uid when running as root, in the spool's group).
fn open_file(
    dir: &File,
    path: &Path,
    name: &str,
    create: Option<Owner>,
    owner: Owner,
) -> Result<Option<File>, StoreError> {
    let flags = OFlags::RDWR | OFlags::NONBLOCK;
    let refuse = |why: &str| {
        StoreError::io(
            path,
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("refusing the mbox: {why}"),
            ),
        )
    };
    let file = match handle::open_at(dir, name.as_ref(), flags, 0) {
        Ok(fd) => File::from(fd),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let Some(new_owner) = create else {
                return Ok(None);
            };
            let excl = flags | OFlags::CREATE | OFlags::EXCL;
            match handle::open_at(dir, name.as_ref(), excl, MBOX_MODE) {
                Ok(fd) => {
                    let file = File::from(fd);
                    // The mode whatever the umask, the user's uid, and the spool's group (a
                    // setgid spool gives its own, `mail` on Debian): a server running with that
                    // group reads and rewrites it.
                    rustix::fs::fchmod(&file, rustix::fs::Mode::from_raw_mode(MBOX_MODE))
                        .map_err(|e| StoreError::io(path, e.into()))?;
                    let uid_only = Owner {
                        uid: new_owner.uid,
                        gid: None,
                    };
                    handle::give_to(&file, uid_only).map_err(|e| StoreError::io(path, e))?;
                    file
                }
                // Created meanwhile (by the MTA): open that one.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => File::from(
                    handle::open_at(dir, name.as_ref(), flags, 0)
                        .map_err(|e| StoreError::io(path, e))?,
                ),
                Err(e) => return Err(StoreError::io(path, e)),
            }
        }
        Err(e) if matches!(Errno::from_io_error(&e), Some(Errno::LOOP | Errno::NXIO)) => {
            return Err(refuse("it is a symbolic link or a socket"))
        }
        Err(e) => return Err(StoreError::io(path, e)),
    };
    let meta = file.metadata().map_err(|e| StoreError::io(path, e))?;
    if !meta.is_file() {
        return Err(refuse("it is not a regular file"));
    }
    if meta.nlink() != 1 {
        return Err(refuse("it has several hard links"));
    }
    if meta.len() > MAX_MBOX_SIZE {
        return Err(refuse("it is larger than facteur serves (MAX_MBOX_SIZE)"));
    }
    if let Some(expected) = owner.uid {
        if meta.uid() != expected {
            return Err(StoreError::WrongOwner {
                path: path.to_owned(),
                expected,
                found: meta.uid(),
            });
        }
    }
    Ok(Some(file))
}

/// One message of a snapshot.
#[derive(Clone, Debug)]
struct Entry {
    span: Span,
    meta: MessageMeta,
}

/// Reads the whole file (as long as it is now) and returns its messages, with their wire sizes
/// and unique-ids. Two passes: the boundaries, then each message.
fn scan(file: &File, path: &Path) -> Result<Vec<Entry>, StoreError> {
    let len = file.metadata().map_err(|e| StoreError::io(path, e))?.len();
    let mut scanner = Scanner::default();
    read_range(file, path, 0, len, &mut |block| {
        scanner.feed(block);
        if scanner.count() > MAX_MESSAGES {
            return Err(StoreError::io(
                path,
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("more than {MAX_MESSAGES} messages (MAX_MESSAGES)"),
                ),
            ));
        }
        Ok(())
    })?;
    let spans = scanner.finish();
    let mut seen: HashMap<String, u32> = HashMap::new();
    let mut out = Vec::with_capacity(spans.len());
    for span in spans {
        let mut hasher = IdHasher::default();
        let mut unquote = Unquoter::default();
        let mut counter = WireCounter::default();
        let mut at = span.start;
        read_range(file, path, span.start, span.end, &mut |block| {
            hasher.feed(block);
            let skip = usize::try_from(span.body.saturating_sub(at)).unwrap_or(usize::MAX);
            if let Some(content) = block.get(skip..) {
                unquote.push(content, &mut |d| counter.feed(d));
            }
            at += block.len() as u64;
            Ok(())
        })?;
        unquote.finish(&mut |d| counter.feed(d));
        let hash = hasher.finish();
        let n = seen.entry(hash.clone()).or_insert(0);
        *n += 1;
        let uid = Uidl::new(parse::unique_id(&hash, *n)).ok_or_else(|| {
            StoreError::io(path, io::Error::other("a unique-id out of its alphabet"))
        })?;
        out.push(Entry {
            span,
            meta: MessageMeta {
                size: counter.wire_size(),
                uid,
            },
        });
    }
    Ok(out)
}

/// Feeds `file[from, to)` to `sink` in blocks; a file shorter than `to` is an error.
pub(crate) fn read_range(
    file: &File,
    path: &Path,
    from: u64,
    to: u64,
    sink: &mut dyn FnMut(&[u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut buf = vec![0u8; BLOCK];
    let mut at = from;
    while at < to {
        let want = usize::try_from(to - at).unwrap_or(BLOCK).min(BLOCK);
        let chunk = buf.get_mut(..want).unwrap_or_default();
        let n = match file.read_at(chunk, at) {
            Ok(0) => {
                return Err(StoreError::io(
                    path,
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file is shorter than expected",
                    ),
                ))
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StoreError::io(path, e)),
        };
        sink(chunk.get(..n).unwrap_or_default())?;
        at += n as u64;
    }
    Ok(())
}

/// A writer at an offset of a file (the mbox's end, for a delivery).
struct At<'a> {
    file: &'a File,
    pos: u64,
}

impl Write for At<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Appends one message, mboxrd-quoted, after a `From ` line, followed by an empty line, and
/// syncs the file; on failure the file is cut back to its length before (as Postfix does). The
/// MTA locks must be held.
fn append(
    mbox: &File,
    path: &Path,
    message: &mut dyn Read,
    now: SystemTime,
) -> Result<Delivered, StoreError> {
    let start = mbox.metadata().map_err(|e| StoreError::io(path, e))?.len();
    let result = write_entry(mbox, path, start, message, now).and_then(|d| {
        mbox.sync_all().map_err(|e| StoreError::io(path, e))?;
        Ok(d)
    });
    if result.is_err() {
        if let Err(e) = mbox.set_len(start).and_then(|()| mbox.sync_all()) {
            tracing::error!(mbox = %path.display(), error = %e,
                "cannot cut a failed delivery off the mbox");
        }
    }
    result
}

fn write_entry(
    mbox: &File,
    path: &Path,
    start: u64,
    message: &mut dyn Read,
    now: SystemTime,
) -> Result<Delivered, StoreError> {
    let io_err = |e| StoreError::io(path, e);
    // A new message starts after an empty line: add what a previous writer left out.
    let mut tail = [0u8; 3];
    let have = usize::try_from(start.min(3)).unwrap_or(3);
    let tail = tail.get_mut(..have).unwrap_or_default();
    if have > 0 {
        mbox.read_exact_at(tail, start - have as u64)
            .map_err(io_err)?;
    }
    let tail: &[u8] = tail;
    let separator: &[u8] = if tail.is_empty()
        || tail == b"\n"
        || tail == b"\r\n"
        || tail.ends_with(b"\n\n")
        || tail.ends_with(b"\n\r\n")
    {
        b""
    } else if tail.ends_with(b"\n") {
        b"\n"
    } else {
        b"\n\n"
    };
    if start + BLOCK as u64 > MAX_MBOX_SIZE {
        return Err(StoreError::io(
            path,
            io::Error::new(io::ErrorKind::FileTooLarge, "the mbox is at its size limit"),
        ));
    }
    let mut out = io::BufWriter::with_capacity(
        BLOCK,
        At {
            file: mbox,
            pos: start,
        },
    );
    out.write_all(separator).map_err(io_err)?;
    out.write_all(parse::from_line(now).as_bytes())
        .map_err(io_err)?;
    let mut quoter = Quoter::default();
    let mut counter = WireCounter::default();
    let mut stored = 0u64;
    let mut last = None;
    let mut failed = None;
    let mut buf = vec![0u8; BLOCK];
    loop {
        let n = match message.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StoreError::Source(e)),
        };
        let block = buf.get(..n).unwrap_or_default();
        counter.feed(block);
        last = block.last().copied();
        quoter.push(block, &mut |d| {
            if failed.is_none() {
                stored += d.len() as u64;
                if let Err(e) = out.write_all(d) {
                    failed = Some(e);
                }
            }
        });
        if let Some(e) = failed.take() {
            return Err(io_err(e));
        }
        if start + stored > MAX_MBOX_SIZE {
            return Err(StoreError::io(
                path,
                io::Error::new(
                    io::ErrorKind::FileTooLarge,
                    "the mbox would pass its size limit",
                ),
            ));
        }
    }
    quoter.finish(&mut |d| {
        stored += d.len() as u64;
        if failed.is_none() {
            failed = out.write_all(d).err();
        }
    });
    if let Some(e) = failed {
        return Err(io_err(e));
    }
    if last.is_some_and(|b| b != b'\n') {
        out.write_all(b"\n").map_err(io_err)?;
        counter.feed(b"\n");
        stored += 1;
    }
    out.write_all(b"\n").map_err(io_err)?;
    out.flush().map_err(io_err)?;
    Ok(Delivered {
        path: path.to_owned(),
        size: stored,
        wire_size: counter.wire_size(),
    })
}

/// One locked mbox: the session's snapshot of it.
pub struct LockedMbox {
    dir: File,
    dir_path: PathBuf,
    names: Names,
    owner: Owner,
    /// Holds the session's flock; closing it releases it.
    _session_lock: File,
    /// The mbox as opened at login (`None`: there was none), shared with the RETR readers rather
    /// than duplicated: closing any descriptor of the file would drop every POSIX lock this
    /// process holds on it (an LMTP delivery's, in the server).
    mbox: Option<Arc<File>>,
    entries: Vec<Entry>,
    metas: Vec<MessageMeta>,
    /// Tests: where UPDATE stops as if killed.
    crash: Option<Step>,
}

impl std::fmt::Debug for LockedMbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockedMbox")
            .field("mbox", &self.dir_path.join(&self.names.mbox))
            .field("messages", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl LockedMbox {
    /// Reads the file again under the MTA's locks (after EXPIRE removed messages at login):
    /// the snapshot becomes what the file holds now.
    fn rescan(&mut self) -> Result<(), StoreError> {
        let Some(file) = self.mbox.clone() else {
            return Ok(());
        };
        let path = self.path();
        let deadline = Instant::now() + lock::LOCK_WAIT;
        let mut mta = lock::dotlock(
            &self.dir,
            &self.dir_path,
            self.names.mbox.as_ref(),
            deadline,
        )?;
        mta.lock_file(&file, &path, deadline)?;
        let entries = scan(&file, &path)?;
        drop(mta);
        self.metas = entries.iter().map(|e| e.meta.clone()).collect();
        self.entries = entries;
        Ok(())
    }

    /// The mbox's path.
    pub fn path(&self) -> PathBuf {
        self.dir_path.join(&self.names.mbox)
    }

    /// Tests: stop the next UPDATE at `step`, as a kill would.
    #[cfg(test)]
    pub(crate) fn crash_at(&mut self, step: Step) {
        self.crash = Some(step);
    }
}

impl Maildrop for LockedMbox {
    fn messages(&self) -> &[MessageMeta] {
        &self.metas
    }

    fn take_messages(&mut self) -> std::sync::Arc<Vec<MessageMeta>> {
        std::sync::Arc::new(std::mem::take(&mut self.metas))
    }

    fn size(&self, index: usize) -> Option<u64> {
        self.entries.get(index).map(|e| e.meta.size)
    }

    fn sizes_known(&self) -> bool {
        true
    }

    fn compute_sizes(&mut self) -> Result<Vec<u64>, StoreError> {
        Ok(self.entries.iter().map(|e| e.meta.size).collect())
    }

    fn open_message(&mut self, index: usize) -> Result<Box<dyn Read + Send>, StoreError> {
        let number = index.saturating_add(1);
        let entry = self
            .entries
            .get(index)
            .ok_or(StoreError::NoSuchMessage(number))?;
        let path = self.path();
        let file = Arc::clone(
            self.mbox
                .as_ref()
                .ok_or(StoreError::NoSuchMessage(number))?,
        );
        // Only facteur's UPDATE moves octets, and it runs in the session holding the lock; a
        // file cut shorter by someone else is a message that vanished.
        let len = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
        if len < entry.span.end {
            return Err(StoreError::Vanished(number));
        }
        Ok(Box::new(MessageReader {
            file,
            pos: entry.span.body,
            end: entry.span.end,
            unquote: Unquoter::default(),
            out: Vec::new(),
            out_pos: 0,
            finished: false,
            block: Vec::new(),
        }))
    }

    fn check_login_delay(&mut self, delay: Duration) -> Result<(), StoreError> {
        let path = self.dir_path.join(&self.names.last_login);
        let now = policy_files::millis(SystemTime::now());
        // As on a Maildir: a time that cannot be read or written does not lock the user out.
        let last = policy_files::last_login_named(&self.dir, &self.names.last_login)
            .unwrap_or_else(|e| {
                tracing::warn!(file = %path.display(), error = %e, "cannot read the last login");
                None
            });
        if last.is_some_and(|last| policy_files::too_soon(last, now, delay)) {
            return Err(StoreError::LoginDelay);
        }
        if let Err(e) = policy_files::write_last_login_named(
            &self.dir,
            &self.names.last_login_tmp,
            &self.names.last_login,
            now,
            self.owner,
        ) {
            tracing::warn!(file = %path.display(), error = %e, "cannot record the last login");
        }
        Ok(())
    }

    fn expire(&mut self, after: Duration) -> Result<usize, StoreError> {
        let path = self.dir_path.join(&self.names.retrieved);
        let times = policy_files::retrieved_named(&self.dir, &self.names.retrieved)
            .map_err(|e| StoreError::io(&path, e))?;
        if times.is_empty() {
            return Ok(0);
        }
        let now = policy_files::millis(SystemTime::now());
        let after = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        let expired: Vec<usize> = self
            .entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let first = *times.get(e.meta.uid.as_str().as_bytes())?;
                (first.saturating_add(after) <= now).then_some(i)
            })
            .collect();
        if expired.is_empty() {
            return Ok(0);
        }
        // Removed as UPDATE removes them (through the journal), then the file read again
        // under the MTA's locks: the offsets of the snapshot moved.
        self.apply_deletions(&expired)?;
        self.rescan()?;
        Ok(expired.len())
    }

    fn record_retrievals(&mut self, indices: &[usize]) -> Result<(), StoreError> {
        if indices.is_empty() {
            return Ok(());
        }
        let path = self.dir_path.join(&self.names.retrieved);
        let mut times = policy_files::retrieved_named(&self.dir, &self.names.retrieved)
            .map_err(|e| StoreError::io(&path, e))?;
        let before = times.clone();
        // Forget the messages that are gone (deleted by this UPDATE or by another program).
        let live: HashSet<&[u8]> = self
            .entries
            .iter()
            .map(|e| e.meta.uid.as_str().as_bytes())
            .collect();
        times.retain(|uid, _| live.contains(uid.as_slice()));
        let now = policy_files::millis(SystemTime::now());
        for &i in indices {
            if let Some(e) = self.entries.get(i) {
                times
                    .entry(e.meta.uid.as_str().as_bytes().to_vec())
                    .or_insert(now);
            }
        }
        if times == before {
            return Ok(());
        }
        policy_files::write_retrieved_named(
            &self.dir,
            &self.names.retrieved_tmp,
            &self.names.retrieved,
            &times,
            self.owner,
        )
        .map_err(|e| StoreError::io(&path, e))
    }

    fn apply_deletions(&mut self, indices: &[usize]) -> Result<(), StoreError> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.entries.len()) {
            return Err(StoreError::NoSuchMessage(bad.saturating_add(1)));
        }
        if indices.is_empty() {
            return Ok(());
        }
        let doomed: HashSet<&str> = indices
            .iter()
            .filter_map(|&i| self.entries.get(i))
            .map(|e| e.meta.uid.as_str())
            .collect();
        let path = self.path();
        let deadline = Instant::now() + lock::LOCK_WAIT;
        let mut mta = lock::dotlock(
            &self.dir,
            &self.dir_path,
            self.names.mbox.as_ref(),
            deadline,
        )?;
        // The file as it is now (the same inode, unless another program replaced it): the
        // messages are found again by unique-id, so nothing depends on the snapshot's offsets.
        let Some(file) = open_file(&self.dir, &path, &self.names.mbox, None, self.owner)? else {
            return Ok(());
        };
        mta.lock_file(&file, &path, deadline)?;
        update::recover(
            &self.dir,
            &self.dir_path,
            &self.names,
            &file,
            self.owner,
            &mut mta,
        )?;
        let now = scan(&file, &path)?;
        let regions: Vec<(u64, u64)> = now
            .iter()
            .filter(|e| doomed.contains(e.meta.uid.as_str()))
            .map(|e| (e.span.start, e.span.next))
            .collect();
        update::delete_regions(
            &self.dir,
            &self.dir_path,
            &self.names,
            &file,
            self.owner,
            &regions,
            &mut mta,
            self.crash,
        )
    }
}

/// Streams one message's content, unquoted, from the session's descriptor of the mbox.
struct MessageReader {
    file: Arc<File>,
    pos: u64,
    end: u64,
    unquote: Unquoter,
    out: Vec<u8>,
    out_pos: usize,
    finished: bool,
    /// The block read last (kept, so a RETR allocates once).
    block: Vec<u8>,
}

impl Read for MessageReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.out_pos < self.out.len() {
                let avail = self.out.get(self.out_pos..).unwrap_or_default();
                let n = avail.len().min(buf.len());
                buf.get_mut(..n)
                    .unwrap_or_default()
                    .copy_from_slice(avail.get(..n).unwrap_or_default());
                self.out_pos += n;
                return Ok(n);
            }
            self.out.clear();
            self.out_pos = 0;
            if self.finished {
                return Ok(0);
            }
            if self.pos >= self.end {
                let out = &mut self.out;
                self.unquote.finish(&mut |d| out.extend_from_slice(d));
                self.finished = true;
                continue;
            }
            let want = usize::try_from(self.end - self.pos)
                .unwrap_or(BLOCK)
                .min(BLOCK);
            self.block.resize(want, 0);
            let block = &mut self.block;
            let n = match self.file.read_at(block, self.pos) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the mbox was cut short while a message was read",
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.pos += n as u64;
            let out = &mut self.out;
            self.unquote
                .push(self.block.get(..n).unwrap_or_default(), &mut |d| {
                    out.extend_from_slice(d)
                });
        }
    }
}

#[cfg(test)]
mod tests;
