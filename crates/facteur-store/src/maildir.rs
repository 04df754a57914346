//! The Maildir store: lock a maildrop, take its snapshot, stream its messages, apply UPDATE.
//!
//! ## Opening a maildrop
//! 1. Open the maildir's directory (creating it if missing), never through a link at its last
//!    component; when the account has a uid, refuse the maildrop unless the directory is that
//!    uid's. Open `cur/` and `new/` (mode 0700, created if missing) relative to it: every later
//!    call goes through these handles (see `handle`), so a link planted in the maildrop is never
//!    followed.
//! 2. Take an exclusive, non-blocking `flock` on `<maildir>/facteur.lock` (a regular file, never
//!    through a link). The lock lives in the open file, so the kernel drops it when the session
//!    ends or the process dies: there is never a stale lock to clean up. Held already:
//!    [`StoreError::InUse`].
//! 3. Fast path: if the index records the mtimes of `cur/` and `new/`, both unchanged, the index
//!    is the snapshot. No directory is listed and no message file is opened; `tmp/` is listed
//!    (and cleaned, as below) only if its own mtime is older than [`TMP_MAX_AGE`].
//!    The snapshot an open takes from the index (or writes into it) is also kept in memory
//!    (see `SnapshotCache`), tagged with the index file's version (device, inode, size, mtime,
//!    ctime): a later open whose index file has that same version, and whose `cur/` and `new/`
//!    mtimes are still the ones the index records, copies it instead of reading and parsing the
//!    index again. Only with `uidl = "facteur"` (the unique-ids come from the names alone).
//! 4. Otherwise: remove the files of `tmp/` older than [`TMP_MAX_AGE`] (left by a killed
//!    delivery); move every file of `new/` into `cur/` (adding the `:2,` info, never replacing a
//!    file), list `cur/`, take each message's wire size from the index (by base name, so a flag
//!    change costs nothing), or from a `,W=` field, or by reading the file; sort in delivery
//!    order; write the index if it changed.
//!
//! A message that cannot be moved or read (an over-long name, a file its owner made unreadable)
//! is logged and left out of the snapshot; the others are served.
//!
//! ## Deferred sizes
//! A file whose size neither the index nor a `,W=` field knows must be read whole to be sized
//! (RETR sends every LF as CRLF). When more than [`EAGER_SIZING_MAX`] files are in that case (a
//! large maildrop filled by a delivery agent that writes no `,W=`, seen for the first time), the
//! open reads none of them: the snapshot is taken with those sizes unknown, a login and UIDL
//! cost no file read, and the first command that needs a size (STAT, LIST, RETR) has them read
//! through [`Maildrop::compute_sizes`], which also records them in the index. Fewer (the usual
//! case: the mail delivered since the last login) are read at the open.
//!
//! ## Why the mtimes can be trusted
//! Every change to a directory's entries (a delivery into `new/`, a flag change renaming a file
//! of `cur/`, an unlink) sets the directory's mtime to the current time. A directory's mtime is
//! read before it is listed, so any later change moves it. The only hole is a change within the
//! same timestamp tick as the read (file systems keep mtimes from 1 ns to 2 s apart), so an mtime
//! is recorded as trustworthy only when it was at least [`SETTLE_TIME`] old when the open began;
//! a fresher one is recorded as "-" and the next open lists the directory again.
//!
//! ## Unique-ids and crashes
//! Unique-ids come from file names (see `name::uid_for_base`), never from the index, so a lost
//! or rebuilt index changes none. UPDATE unlinks files one by one (each unlink is atomic), then
//! fsyncs `cur/`, then rewrites the index; a crash at any point leaves each message present or
//! gone, and the next open reconciles the index with the directory (its `cur/` mtime differs).
//!
//! With `uidl = "dovecot"` the unique-ids and the order of the snapshot come from Dovecot's
//! `dovecot-uidlist` instead (see `uidlist`), looked up by base name after the snapshot is
//! taken as above; the index stays in delivery order and knows nothing of them.

use rustix::io::Errno;
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{DirBuilder, File, TryLockError};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use facteur_proto::{MessageMeta, Uidl};

use super::deliver::{deliver_into, hostname, unique_name};
use super::fasthash::FastSet;
use super::handle::{self, escaped, Kind, Opened};
use super::index::{self, Entry, Index};
use super::name::{
    base_name, compare, compare_bases, count_wire_size, cur_name_for_new, has_wire_form_field,
    info_part, is_message_name, order_key, size_field, uid_for_base, wire_size_field, BLOCK_SIZE,
};
use super::names::Names;
use super::policy_files;
use super::uidlist::{self, Uidlist};
use super::{template, Delivered, LineEnds, Maildrop, Owner, Store, StoreError, UidlScheme};

/// The lock file, in the maildir's top directory.
pub(crate) const LOCK_FILE: &str = "facteur.lock";

/// How old a directory's mtime must be, when an open begins, for the index to trust it: more
/// than the coarsest timestamp granularity in use (2 s on FAT, 1 s on ext3 and HFS+).
pub(crate) const SETTLE_TIME: Duration = Duration::from_secs(2);

/// At most this many message files of unknown size are read during an open (see "Deferred
/// sizes"): reading 256 small files takes a few milliseconds, and it is the usual case (the mail
/// delivered since the last login), so the login reply can give the maildrop's size at once.
pub(crate) const EAGER_SIZING_MAX: usize = 256;

/// At most this many messages in a snapshot that [`Store::open_as_now`] copies on an async
/// thread (some 100 KB, a few microseconds); a larger one is copied by `open_as`, off them.
pub(crate) const NOW_SNAPSHOT_MAX: usize = 10_000;

/// How many rounds of "list `new/`, move what is there" one open does before giving up on seeing
/// `new/` empty (a stream of deliveries); the next open moves the rest.
const NEW_ROUNDS: usize = 4;

/// A file of `tmp/` older than this was left by a delivery that died: the Maildir convention
/// (maildir(5)) is to remove it after 36 hours.
pub(crate) const TMP_MAX_AGE: Duration = Duration::from_secs(36 * 3600);

/// How many fresh names a move into `cur/` tries when the name it wants is taken.
const MOVE_ATTEMPTS: usize = 3;

/// A store of one Maildir per user, found by a path template.
#[derive(Debug)]
pub struct MaildirStore {
    template: String,
    hostname: OnceLock<String>,
    uidl: UidlScheme,
    /// How delivery stores line ends (`[store] line_ends`).
    line_ends: LineEnds,
    /// `uidl = "dovecot"`: the uidlists parsed by earlier logins, so that a login on a maildrop
    /// whose uidlist did not change reads no more than its fstat.
    uidlists: Mutex<UidlistCache>,
    /// The snapshots of the last opens (see "Opening a maildrop"), shared with the maildrops
    /// open, which record the snapshots they write into the index.
    snapshots: Arc<Mutex<SnapshotCache>>,
}

/// A maildrop's snapshot as an open builds it from the index: what a [`LockedMaildir`] starts
/// from. The names are shared (copied only by a session that changes one).
#[derive(Clone, Debug, Default)]
struct Snapshot {
    /// Shared by the cache and the sessions that opened the maildrop from it.
    messages: Arc<Vec<MessageMeta>>,
    sizes: Vec<u64>,
    names: Arc<Names>,
    not_sized: Vec<usize>,
    /// The `cur/` and `new/` mtimes the index records for this snapshot.
    cur_mtime: Option<u128>,
    new_mtime: Option<u128>,
}

impl Snapshot {
    /// `uids`: the unique-id of each entry, or `None` to derive them here (one pass, no
    /// intermediate vector). `mtimes`: the `cur/` and `new/` mtimes the index records.
    fn build(
        entries: Vec<Entry>,
        uids: Option<Vec<Uidl>>,
        mtimes: (Option<u128>, Option<u128>),
    ) -> Self {
        let mut messages = Vec::with_capacity(entries.len());
        let mut sizes = Vec::with_capacity(entries.len());
        let octets = entries.iter().map(|e| e.name.len()).sum();
        let mut names = Names::with_capacity(entries.len(), octets);
        let mut not_sized = Vec::new();
        let mut given = uids.map(Vec::into_iter);
        for entry in entries {
            let uid = match given.as_mut() {
                Some(uids) => match uids.next() {
                    Some(uid) => uid,
                    None => break,
                },
                None => uid_for_base(base_name(entry.name.as_bytes())),
            };
            if entry.wire_size.is_none() {
                not_sized.push(messages.len());
            }
            let size = entry.wire_size.unwrap_or(0);
            messages.push(MessageMeta { size, uid });
            sizes.push(size);
            names.push(Some(&entry.name));
        }
        Self {
            messages: Arc::new(messages),
            sizes,
            names: Arc::new(names),
            not_sized,
            cur_mtime: mtimes.0,
            new_mtime: mtimes.1,
        }
    }

    /// True if an open may take this snapshot as it is, `cur/` and `new/` having these mtimes
    /// now: the index trusted both, and neither changed since (the fast path's condition).
    fn still_current(&self, cur_mtime: Option<u128>, new_mtime: Option<u128>) -> bool {
        self.cur_mtime.is_some()
            && self.cur_mtime == cur_mtime
            && self.new_mtime.is_some()
            && self.new_mtime == new_mtime
    }
}

/// The snapshot of each maildir last read from or written into its index, with the version of
/// the index file that holds it and the identity of the maildir's directory. Bounded by
/// [`MAX_CACHED_SNAPSHOT_RECORDS`] messages in all (an entry counts one more than its messages,
/// so empty maildrops are bounded too); past it, entries are dropped.
#[derive(Debug, Default)]
struct SnapshotCache {
    by_dir: HashMap<PathBuf, CachedSnapshot>,
    records: usize,
}

#[derive(Debug)]
struct CachedSnapshot {
    root_id: (u64, u64),
    version: index::Version,
    snapshot: Arc<Snapshot>,
}

/// The most messages the snapshot cache holds, all maildrops together (about 150 octets each in
/// memory: 40 MB).
const MAX_CACHED_SNAPSHOT_RECORDS: usize = 250_000;

impl SnapshotCache {
    fn get(
        &self,
        dir: &Path,
        root_id: (u64, u64),
        version: index::Version,
    ) -> Option<Arc<Snapshot>> {
        self.by_dir
            .get(dir)
            .filter(|c| c.root_id == root_id && c.version == version)
            .map(|c| Arc::clone(&c.snapshot))
    }

    fn remove(&mut self, dir: &Path) {
        if let Some(old) = self.by_dir.remove(dir) {
            self.records -= old.snapshot.names.len() + 1;
        }
    }

    /// Keeps `snapshot` for `dir`, unless it could never be taken as it is (an mtime not
    /// trusted) or it is too large.
    fn insert(
        &mut self,
        dir: &Path,
        root_id: (u64, u64),
        version: index::Version,
        snapshot: Arc<Snapshot>,
    ) {
        self.remove(dir);
        let cost = snapshot.names.len() + 1;
        if snapshot.cur_mtime.is_none()
            || snapshot.new_mtime.is_none()
            || cost > MAX_CACHED_SNAPSHOT_RECORDS
        {
            return;
        }
        while self.records + cost > MAX_CACHED_SNAPSHOT_RECORDS {
            let Some(victim) = self.by_dir.keys().next().cloned() else {
                break;
            };
            self.remove(&victim);
        }
        self.records += cost;
        self.by_dir.insert(
            dir.to_owned(),
            CachedSnapshot {
                root_id,
                version,
                snapshot,
            },
        );
    }
}

fn lock_cache(cache: &Mutex<SnapshotCache>) -> std::sync::MutexGuard<'_, SnapshotCache> {
    cache.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The parsed `dovecot-uidlist` of each maildir, with the version of the file it was read
/// from (inode, size, mtime: Dovecot and facteur replace it by a rename or append to it).
#[derive(Debug, Default)]
struct UidlistCache {
    by_dir: HashMap<PathBuf, (uidlist::Version, Arc<Uidlist>)>,
    records: usize,
}

/// The most uidlist records the cache holds, all maildrops together (about 200 octets each:
/// 50 MB). A maildrop larger than this is read at each login; past it, entries are dropped.
const MAX_CACHED_RECORDS: usize = 250_000;

impl UidlistCache {
    fn get(&self, dir: &Path, version: uidlist::Version) -> Option<Arc<Uidlist>> {
        self.by_dir
            .get(dir)
            .filter(|(v, _)| *v == version)
            .map(|(_, list)| Arc::clone(list))
    }

    fn insert(&mut self, dir: &Path, version: uidlist::Version, list: Arc<Uidlist>) {
        if let Some((_, old)) = self.by_dir.remove(dir) {
            self.records -= old.len();
        }
        if list.len() > MAX_CACHED_RECORDS {
            return;
        }
        while self.records + list.len() > MAX_CACHED_RECORDS {
            let Some(victim) = self.by_dir.keys().next().cloned() else {
                break;
            };
            if let Some((_, old)) = self.by_dir.remove(&victim) {
                self.records -= old.len();
            }
        }
        self.records += list.len();
        self.by_dir.insert(dir.to_owned(), (version, list));
    }
}

/// What became of the index file during an open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IndexOutcome {
    /// There was no index (first open): it was built from the directory.
    #[default]
    Missing,
    /// The index was unreadable or corrupt: it was rebuilt from the directory.
    Corrupt,
    /// The index was read and used (whole on the fast path, or reconciled with the directory).
    Used,
}

/// What one open cost, for logs and benchmarks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenStats {
    /// Messages in the snapshot.
    pub messages: usize,
    /// True when the index was the snapshot: no directory listed, no message file opened.
    pub fast_path: bool,
    /// How many directory listings (`new/` and `cur/`) the open made.
    pub dir_listings: usize,
    /// Files moved from `new/` to `cur/`.
    pub moved_from_new: usize,
    /// Message files opened to count their wire size (neither the index nor a `,W=` knew it).
    pub files_read: usize,
    /// Messages whose size is left unknown until a command needs it (see "Deferred sizes").
    pub sizes_deferred: usize,
    /// What became of the index.
    pub index: IndexOutcome,
    /// True if the index file was (re)written.
    pub index_written: bool,
    /// True when the snapshot came from memory: an earlier open read or wrote this very index
    /// file, and the directories did not change since (the index was not even read).
    pub from_memory: bool,
    /// Files renamed because another file already had their unique-id.
    pub renamed_duplicates: usize,
    /// Messages left out of the snapshot because they could not be moved or read (logged).
    pub skipped: usize,
    /// Files removed from `tmp/` because they were older than 36 hours (left by a killed
    /// delivery).
    pub tmp_removed: usize,
}

/// One locked Maildir maildrop and its snapshot. Dropping it releases the lock.
pub struct LockedMaildir {
    dir: PathBuf,
    /// The handle every message file is opened, listed and unlinked through.
    cur_dir: File,
    /// The device and inode of the maildir's directory: the index is written only into the
    /// same directory the snapshot was taken from.
    root_id: (u64, u64),
    /// Who the files written during the session are given to (when running as root).
    owner: Owner,
    /// The snapshot, until the session takes it (`take_messages`); shared with the snapshot
    /// cache until changed (`Arc::make_mut`).
    messages: Arc<Vec<MessageMeta>>,
    /// The wire size of each message of the snapshot (0 while not known).
    sizes: Vec<u64>,
    /// The file name in `cur/` of each message of the snapshot; `None` once deleted. Shared
    /// with the snapshot cache until the session changes one (`Arc::make_mut`).
    names: Arc<Names>,
    /// Positions (ascending) of the messages whose size is not known yet (0 in `messages`).
    not_sized: Vec<usize>,
    /// The `cur/` mtime the index recorded for this snapshot, if trusted.
    cur_mtime: Option<u128>,
    /// The `new/` mtime the index recorded for this snapshot, kept when the index is rewritten.
    new_mtime: Option<u128>,
    /// The store's snapshot cache, where the snapshots this maildrop writes into the index are
    /// recorded; `None` when unique-ids do not come from names alone (`uidl = "dovecot"`).
    snapshots: Option<Arc<Mutex<SnapshotCache>>>,
    /// Holds the flock; closing the file releases it.
    _lock: File,
}

impl MaildirStore {
    /// A store whose maildrops are at `path_template`, expanded per user: `%u` the user name,
    /// `%n` its local part, `%d` its domain (after the last '@'), `%h` the home directory, `%%`
    /// a percent sign. Example: `/var/mail/%d/%n/Maildir`.
    pub fn new(path_template: impl Into<String>) -> Self {
        Self {
            template: path_template.into(),
            hostname: OnceLock::new(),
            uidl: UidlScheme::default(),
            line_ends: LineEnds::default(),
            uidlists: Mutex::default(),
            snapshots: Arc::default(),
        }
    }

    /// The same store, delivering with `line_ends` (`[store] line_ends`).
    pub fn with_line_ends(mut self, line_ends: LineEnds) -> Self {
        self.line_ends = line_ends;
        self
    }

    /// The same store, with its unique-ids from `uidl` (`[store] uidl`).
    pub fn with_uidl(mut self, uidl: UidlScheme) -> Self {
        self.uidl = uidl;
        self
    }

    /// The maildir of `user`; fails if the user name could leave the template.
    pub fn maildir_path(&self, user: &str, home: Option<&str>) -> Result<PathBuf, StoreError> {
        template::expand(&self.template, user, home)
    }

    /// [`Store::open`], with the cost of the open.
    pub fn open_maildir(
        &self,
        user: &str,
        home: Option<&str>,
    ) -> Result<(LockedMaildir, OpenStats), StoreError> {
        self.open_maildir_as(user, home, Owner::default())
    }

    /// [`Store::open_as`], with the cost of the open.
    pub fn open_maildir_as(
        &self,
        user: &str,
        home: Option<&str>,
        owner: Owner,
    ) -> Result<(LockedMaildir, OpenStats), StoreError> {
        let dir = self.maildir_path(user, home)?;
        self.open_dir(&dir, owner)
    }

    fn hostname(&self) -> &str {
        self.hostname.get_or_init(hostname)
    }

    /// The snapshot cache, where unique-ids come from the file names alone.
    fn snapshot_cache(&self) -> Option<Arc<Mutex<SnapshotCache>>> {
        matches!(self.uidl, UidlScheme::Facteur).then(|| Arc::clone(&self.snapshots))
    }

    /// The memory fast path of [`Self::open_dir`] (an unchanged maildrop whose snapshot is in
    /// memory, no stale file in `tmp/`) with every name looked up from the kernel's caches
    /// alone (see [`handle::open_at_cached`]): never waits for a disk, creates and writes
    /// nothing. The same checks as `open_dir`, in the same order, on the same kinds of handle;
    /// `None` at the first that cannot be made at once or does not pass, with nothing held.
    fn open_dir_now(&self, dir: &Path, owner: Owner) -> Option<(LockedMaildir, OpenStats)> {
        use rustix::fs::OFlags;
        let snapshots = self.snapshot_cache()?;
        let root = handle::open_dir_path_cached(dir)?;
        let (found, root_id) = handle::identity(&root).ok()?;
        if owner.uid.is_some_and(|expected| expected != found) {
            return None;
        }
        let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY;
        let cur_dir = File::from(handle::open_at_cached(&root, "cur".as_ref(), dir_flags).ok()?);
        let lock_flags = OFlags::RDWR | OFlags::NONBLOCK;
        let lock = File::from(handle::open_at_cached(&root, LOCK_FILE.as_ref(), lock_flags).ok()?);
        if !lock.metadata().ok()?.is_file() {
            return None;
        }
        lock.try_lock().ok()?;
        let version = {
            let flags = OFlags::RDONLY | OFlags::NONBLOCK;
            let index =
                File::from(handle::open_at_cached(&root, index::INDEX_FILE.as_ref(), flags).ok()?);
            let meta = index.metadata().ok()?;
            if !meta.is_file() {
                return None;
            }
            index::Version::of_metadata(&meta)
        };
        let snapshot = lock_cache(&snapshots).get(dir, root_id, version)?;
        // A large snapshot is copied off the async threads.
        if snapshot.messages.len() > NOW_SNAPSHOT_MAX {
            return None;
        }
        let cur_mtime = mtime_ns(&cur_dir, dir).ok()?;
        let new_dir = File::from(handle::open_at_cached(&root, "new".as_ref(), dir_flags).ok()?);
        let new_mtime = mtime_ns(&new_dir, dir).ok()?;
        if !snapshot.still_current(cur_mtime, new_mtime) {
            return None;
        }
        // tmp/ as `tmp_may_hold_stale_files` sees it: a stale file there is cleaned by the
        // ordinary path.
        match handle::open_at_cached(&root, "tmp".as_ref(), OFlags::PATH) {
            Ok(tmp) => {
                let meta = File::from(tmp).metadata().ok()?;
                let stale = meta.is_dir()
                    && meta
                        .modified()
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age >= TMP_MAX_AGE);
                if stale {
                    return None;
                }
            }
            // No tmp/, or a link or a file in its place: nothing the fast path would clean.
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::LOOP) => {}
            Err(_) => return None,
        }
        let stats = OpenStats {
            index: IndexOutcome::Used,
            fast_path: true,
            from_memory: true,
            messages: snapshot.messages.len(),
            sizes_deferred: snapshot.not_sized.len(),
            ..OpenStats::default()
        };
        let maildrop = LockedMaildir::new(
            Handles {
                dir,
                cur_dir,
                root_id,
                owner,
                lock,
                snapshots: Some(snapshots),
            },
            Snapshot::clone(&snapshot),
        );
        Some((maildrop, stats))
    }

    fn open_dir(&self, dir: &Path, owner: Owner) -> Result<(LockedMaildir, OpenStats), StoreError> {
        let (root, root_id) = open_root(dir, owner)?;
        let cur = dir.join("cur");
        let new = dir.join("new");
        let cur_dir = handle::subdir(&root, "cur", owner).map_err(|e| StoreError::io(&cur, e))?;
        let lock = lock(&root, dir, owner)?;
        let started = now_ns();
        let mut stats = OpenStats::default();
        let snapshots = self.snapshot_cache();

        // The snapshot an earlier open read from (or wrote into) this very index file, if the
        // directories did not change since: copied, the index neither read nor parsed.
        if let Some(cache) = &snapshots {
            let cached = match index::version(&root) {
                Ok(Some(version)) => lock_cache(cache).get(dir, root_id, version),
                Ok(None) | Err(_) => None,
            };
            if let Some(snapshot) = cached {
                let cur_mtime = mtime_ns(&cur_dir, &cur)?;
                // new/ is not opened for its mtime: a stat of its name (never through a link)
                // says the same; anything but a directory there takes the path below, which
                // opens (or makes) it and says what is wrong.
                let new_mtime = subdir_mtime_ns(&root, "new");
                if new_mtime.is_some() && snapshot.still_current(cur_mtime, new_mtime) {
                    stats.index = IndexOutcome::Used;
                    stats.fast_path = true;
                    stats.from_memory = true;
                    stats.messages = snapshot.messages.len();
                    stats.sizes_deferred = snapshot.not_sized.len();
                    let maildrop = LockedMaildir::new(
                        Handles {
                            dir,
                            cur_dir,
                            root_id,
                            owner,
                            lock,
                            snapshots: snapshots.clone(),
                        },
                        Snapshot::clone(&snapshot),
                    );
                    // As on the fast path below.
                    if tmp_may_hold_stale_files(&root) {
                        stats.tmp_removed = clean_tmp_dir(&root, dir, owner);
                    }
                    return Ok((maildrop, stats));
                }
            }
        }

        let new_dir = handle::subdir(&root, "new", owner).map_err(|e| StoreError::io(&new, e))?;
        let mut old_version = None;
        let (mut old_index, old_bytes) = match index::read_versioned(&root) {
            Ok(None) => (None, None),
            Ok(Some((bytes, version))) => match index::parse(&bytes) {
                Ok(index) => {
                    stats.index = IndexOutcome::Used;
                    old_version = Some(version);
                    (Some(index), Some(bytes))
                }
                Err(e) => {
                    tracing::warn!(maildir = %dir.display(), error = %e,
                        "maildrop index is corrupt; rebuilding it from the directory");
                    stats.index = IndexOutcome::Corrupt;
                    (None, None)
                }
            },
            Err(e) => {
                tracing::warn!(maildir = %dir.display(), error = %e,
                    "maildrop index is unreadable; rebuilding it from the directory");
                stats.index = IndexOutcome::Corrupt;
                (None, None)
            }
        };

        if let Some(index) = &mut old_index {
            let cur_mtime = mtime_ns(&cur_dir, &cur)?;
            let new_mtime = mtime_ns(&new_dir, &new)?;
            let unchanged = index.cur_mtime.is_some()
                && index.cur_mtime == cur_mtime
                && index.new_mtime.is_some()
                && index.new_mtime == new_mtime;
            if unchanged {
                let entries = std::mem::take(&mut index.entries);
                // A sealed index is as facteur wrote it: sorted, no unique-id twice.
                let (entries, uids, duplicates) = if index.sealed {
                    // Computed as the snapshot is built, below.
                    (entries, None, Vec::new())
                } else {
                    let entries = sort_entries(entries);
                    let (uids, duplicates) = unique_ids(&entries);
                    (entries, Some(uids), duplicates)
                };
                if duplicates.is_empty() {
                    stats.fast_path = true;
                    let (entries, uids) = match self.uidl {
                        UidlScheme::Facteur => (entries, uids),
                        UidlScheme::Dovecot => {
                            let (entries, uids) =
                                self.dovecot_uids(&root, dir, owner, entries, &mut stats)?;
                            (entries, Some(uids))
                        }
                    };
                    stats.messages = entries.len();
                    let snapshot =
                        Snapshot::build(entries, uids, (index.cur_mtime, index.new_mtime));
                    if let (Some(cache), Some(version)) = (&snapshots, old_version) {
                        lock_cache(cache).insert(dir, root_id, version, Arc::new(snapshot.clone()));
                    }
                    let maildrop = LockedMaildir::new(
                        Handles {
                            dir,
                            cur_dir,
                            root_id,
                            owner,
                            lock,
                            snapshots,
                        },
                        snapshot,
                    );
                    stats.sizes_deferred = maildrop.not_sized.len();
                    // A delivery killed after creating its file in tmp/, and no delivery since:
                    // tmp/ itself tells, by an mtime older than the age at which its files are
                    // stale (one stat, no listing, while tmp/ changes).
                    if tmp_may_hold_stale_files(&root) {
                        stats.tmp_removed = clean_tmp_dir(&root, dir, owner);
                    }
                    return Ok((maildrop, stats));
                }
                tracing::warn!(maildir = %dir.display(),
                    "maildrop index lists two messages with one unique-id; listing the directory");
                // Its sizes are still worth knowing.
                index.entries = entries;
            }
        }

        // What a killed delivery left in tmp/. Only here, not on the fast path: a login on an
        // unchanged maildrop lists no directory, and any delivery since makes the next open come
        // here.
        stats.tmp_removed = clean_tmp_dir(&root, dir, owner);

        // new/ -> cur/, until new/ is seen empty (but for the files that cannot be moved).
        let mut new_mtime = None;
        let mut stuck = HashSet::new();
        for _ in 0..NEW_ROUNDS {
            let mtime = mtime_ns(&new_dir, &new)?;
            let mut waiting = list_messages(&new_dir, &new)?;
            waiting.retain(|name| !stuck.contains(name));
            stats.dir_listings += 1;
            if waiting.is_empty() {
                new_mtime = settled(mtime, started);
                break;
            }
            for name in waiting {
                match self.move_to_cur(&new_dir, &cur_dir, &name) {
                    Ok(true) => stats.moved_from_new += 1,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(maildir = %dir.display(), file = %escaped(&name),
                            error = %e, "cannot move a message from new/ to cur/; skipping it");
                        stats.skipped += 1;
                        stuck.insert(name);
                    }
                }
            }
        }

        // List cur/ and size every message, reading only the files nobody has sized before.
        let cur_mtime = mtime_ns(&cur_dir, &cur)?;
        let names = list_messages(&cur_dir, &cur)?;
        stats.dir_listings += 1;
        // Delivery order first: the old index is in that order too, so the sizes it knows are
        // found by walking both lists side by side (no hash map of 100,000 names).
        let mut entries = sort_entries(
            names
                .into_iter()
                .map(|name| Entry {
                    name,
                    wire_size: None,
                })
                .collect(),
        );
        // Two files with one base name (one is about to be renamed apart) may differ: the index
        // cannot tell which one it sized, so both are sized afresh.
        let shared = shared_bases(&entries);
        if let Some(old) = old_index.take() {
            let old = if old.sealed {
                old.entries
            } else {
                sort_entries(old.entries)
            };
            copy_known_sizes(&mut entries, &old, &shared);
        }
        // Positions in `entries` of the messages whose files must be read to be sized.
        let mut to_size = Vec::new();
        for (pos, entry) in entries.iter_mut().enumerate() {
            if entry.wire_size.is_none() {
                entry.wire_size = wire_size_field(base_name(entry.name.as_bytes()));
            }
            if entry.wire_size.is_none() {
                to_size.push(pos);
            }
        }
        let mut vanished = Vec::new();
        if to_size.len() <= EAGER_SIZING_MAX {
            stats.files_read += to_size.len();
            let targets: Vec<&OsStr> = to_size
                .iter()
                .filter_map(|&pos| entries.get(pos).map(|e| e.name.as_os_str()))
                .collect();
            let sized = size_files(&cur_dir, &cur, &targets)?;
            for (&pos, size) in to_size.iter().zip(sized) {
                match (size, entries.get_mut(pos)) {
                    (Some(size), Some(entry)) => entry.wire_size = Some(size),
                    (None, _) => {
                        stats.skipped += 1;
                        vanished.push(pos);
                    }
                    (Some(_), None) => {}
                }
            }
        } else {
            stats.sizes_deferred = to_size.len();
        }
        // Renamed or removed by another program since the listing: it will be in the next
        // snapshot under its new name, if it still exists. Unreadable: logged by size_files.
        if !vanished.is_empty() {
            let mut keep = vec![true; entries.len()];
            for pos in vanished {
                if let Some(k) = keep.get_mut(pos) {
                    *k = false;
                }
            }
            let mut flags = keep.into_iter();
            entries.retain(|_| flags.next().unwrap_or(true));
        }

        // Unique-ids (the entries are in delivery order already); a file whose unique-id is
        // taken gets a fresh name.
        let (mut uids, duplicates) = unique_ids(&entries);
        if !duplicates.is_empty() {
            let mut gone = HashSet::new();
            for &i in &duplicates {
                let Some(entry) = entries.get_mut(i) else {
                    continue;
                };
                match self.rename_duplicate(&cur_dir, &entry.name) {
                    Err(e) => {
                        tracing::warn!(maildir = %dir.display(), file = %escaped(&entry.name),
                            error = %e, "cannot rename a message whose unique-id is taken; \
                            skipping it");
                        stats.skipped += 1;
                        gone.insert(i);
                    }
                    Ok(Some(fresh)) => {
                        tracing::warn!(maildir = %dir.display(),
                            old = %entry.name.to_string_lossy(), new = %fresh.to_string_lossy(),
                            "two messages had one unique-id; renamed one");
                        entry.name = fresh;
                        stats.renamed_duplicates += 1;
                    }
                    Ok(None) => {
                        gone.insert(i);
                    }
                }
            }
            let kept = entries
                .into_iter()
                .enumerate()
                .filter(|(i, _)| !gone.contains(i))
                .map(|(_, e)| e)
                .collect();
            entries = sort_entries(kept);
            let (fresh_uids, still) = unique_ids(&entries);
            uids = fresh_uids;
            // Fresh names cannot collide; should one ever, leave that file out of the snapshot
            // rather than show one unique-id twice.
            if !still.is_empty() {
                tracing::error!(maildir = %dir.display(),
                    "unique-id collision after renaming; leaving the files out of this session");
                let still: HashSet<usize> = still.into_iter().collect();
                let keep = |i: &usize| !still.contains(i);
                entries = entries
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| keep(i))
                    .map(|(_, e)| e)
                    .collect();
                uids = uids
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| keep(i))
                    .map(|(_, u)| u)
                    .collect();
            }
        }

        let index = Index {
            cur_mtime: settled(cur_mtime, started),
            new_mtime,
            entries,
            sealed: false,
        };
        let bytes = index::serialize(&index);
        // The version of the index file that now holds this snapshot, if one does.
        let mut version = old_version;
        if old_bytes.as_deref() != Some(&bytes[..]) {
            version = None;
            match index::write_atomic(&root, &bytes, owner) {
                Ok(()) => {
                    stats.index_written = true;
                    // Under the maildrop's lock, so no facteur writes it meanwhile. Should another
                    // program swap the file in between, the version is that file's, and later
                    // opens get this snapshot (facteur's own, from the directory) until it changes.
                    version = index::version(&root).ok().flatten();
                }
                Err(e) => tracing::warn!(maildir = %dir.display(), error = %e,
                    "cannot write the maildrop index"),
            }
        }
        let (entries, uids) = match self.uidl {
            UidlScheme::Facteur => (index.entries, uids),
            UidlScheme::Dovecot => {
                self.dovecot_uids(&root, dir, owner, index.entries, &mut stats)?
            }
        };
        stats.messages = entries.len();
        let snapshot = Snapshot::build(entries, Some(uids), (index.cur_mtime, new_mtime));
        if let Some(cache) = &snapshots {
            let mut cache = lock_cache(cache);
            match version {
                Some(version) => {
                    cache.insert(dir, root_id, version, Arc::new(snapshot.clone()));
                }
                None => cache.remove(dir),
            }
        }
        let maildrop = LockedMaildir::new(
            Handles {
                dir,
                cur_dir,
                root_id,
                owner,
                lock,
                snapshots,
            },
            snapshot,
        );
        Ok((maildrop, stats))
    }

    /// `uidl = "dovecot"`: the unique-ids of `entries` (in delivery order) from Dovecot's
    /// uidlist, after giving new mail its uids there under Dovecot's lock, the way Dovecot does;
    /// the entries come back in Dovecot's POP3 order. A message left without a uid (the lock
    /// was held past [`uidlist::LOCK_WAIT`], the file could not be written) or whose saved
    /// unique-id POP3 cannot send is left out of this session (counted in `stats.skipped`): it
    /// is never shown under a unique-id that is not recorded.
    fn dovecot_uids(
        &self,
        root: &File,
        dir: &Path,
        owner: Owner,
        entries: Vec<Entry>,
        stats: &mut OpenStats,
    ) -> Result<(Vec<Entry>, Vec<Uidl>), StoreError> {
        let path = dir.join(uidlist::UIDLIST_FILE);
        let mut list = self.read_uidlist(root, dir, &path)?;
        let known = |list: &Option<Arc<Uidlist>>, e: &Entry| {
            list.as_ref()
                .is_some_and(|l| l.get(base_name(e.name.as_bytes())).is_some())
        };
        if entries.iter().any(|e| !known(&list, e)) {
            match uidlist::lock(root, owner, uidlist::LOCK_WAIT) {
                Ok(Some(held)) => {
                    if let Some(extended) =
                        self.add_uids(&held, root, dir, &path, owner, &entries)?
                    {
                        list = Some(extended);
                    }
                }
                Ok(None) => tracing::warn!(maildir = %dir.display(),
                    "dovecot-uidlist.lock is held by another process: new messages wait for \
                     the next login"),
                Err(e) => tracing::warn!(maildir = %dir.display(), error = %e,
                    "cannot take dovecot-uidlist.lock: new messages wait for the next login"),
            }
        }
        let mut keyed = Vec::with_capacity(entries.len());
        let mut saved = false;
        for entry in entries {
            let base = base_name(entry.name.as_bytes());
            let Some((list, record)) = list.as_ref().and_then(|l| Some((l, l.get(base)?))) else {
                stats.skipped += 1;
                continue;
            };
            saved |= record.pop3_uidl() != uidlist::Pop3Uidl::Format;
            let Some(uid) = list.uidl_of(record) else {
                tracing::warn!(maildir = %dir.display(), file = %escaped(&entry.name),
                    "the unique-id dovecot-uidlist saved for this message cannot be sent in \
                     POP3 (1 to 70 printable characters); skipping it");
                stats.skipped += 1;
                continue;
            };
            keyed.push(((record.pop3_order(), record.uid), entry, uid));
        }
        if !keyed.is_sorted_by_key(|k| k.0) {
            // uids are unique: no two keys are equal.
            keyed.sort_unstable_by_key(|k| k.0);
        }
        if saved {
            // Saved unique-ids are claims: one given twice is served once.
            let mut seen = FastSet::with_capacity_and_hasher(keyed.len(), Default::default());
            let before = keyed.len();
            keyed.retain(|(_, _, uid)| seen.insert(uid.as_bytes().to_vec()));
            if keyed.len() < before {
                tracing::warn!(maildir = %dir.display(), count = before - keyed.len(),
                    "dovecot-uidlist gives one unique-id to several messages; serving the \
                     first only");
                stats.skipped += before - keyed.len();
            }
        }
        Ok(keyed.into_iter().map(|(_, e, u)| (e, u)).unzip())
    }

    /// The uidlist of `dir`, from the cache while the file is the one it was read from.
    fn read_uidlist(
        &self,
        root: &File,
        dir: &Path,
        path: &Path,
    ) -> Result<Option<Arc<Uidlist>>, StoreError> {
        let unusable = |reason: String| StoreError::DovecotUidlist {
            path: path.to_owned(),
            reason,
        };
        let Some((file, version)) = uidlist::open(root).map_err(|e| unusable(e.to_string()))?
        else {
            return Ok(None);
        };
        let cache = || self.uidlists.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(list) = cache().get(dir, version) {
            return Ok(Some(list));
        }
        let bytes = uidlist::read(file, version).map_err(|e| unusable(e.to_string()))?;
        let list = Arc::new(uidlist::parse(&bytes).map_err(|e| unusable(e.to_string()))?);
        cache().insert(dir, version, Arc::clone(&list));
        Ok(Some(list))
    }

    /// Under the dotlock: reads the uidlist afresh (Dovecot may have changed it meanwhile),
    /// gives each message of `entries` that has no uid the next one, in delivery order, and
    /// writes the file back. Records of files no longer here are dropped once they outnumber
    /// the messages (so that a file another program renames at the moment of the listing keeps
    /// its uid). `None` when nothing could be added (logged).
    fn add_uids(
        &self,
        held: &uidlist::DotLock<'_>,
        root: &File,
        dir: &Path,
        path: &Path,
        owner: Owner,
        entries: &[Entry],
    ) -> Result<Option<Arc<Uidlist>>, StoreError> {
        let unusable = |reason: String| StoreError::DovecotUidlist {
            path: path.to_owned(),
            reason,
        };
        let mut list = match uidlist::open(root).map_err(|e| unusable(e.to_string()))? {
            Some((file, version)) => {
                let bytes = uidlist::read(file, version).map_err(|e| unusable(e.to_string()))?;
                uidlist::parse(&bytes).map_err(|e| unusable(e.to_string()))?
            }
            None => Uidlist::new().map_err(|e| unusable(e.to_string()))?,
        };
        let bases: HashSet<&[u8]> = entries
            .iter()
            .map(|e| base_name(e.name.as_bytes()))
            .collect();
        let here = bases.iter().filter(|b| list.get(b).is_some()).count();
        if list.len() - here > entries.len() {
            list.retain(|b| bases.contains(b));
        }
        let mut added = 0usize;
        for entry in entries {
            let base = base_name(entry.name.as_bytes());
            if list.get(base).is_some() {
                continue;
            }
            if list.push(base).is_none() {
                tracing::error!(maildir = %dir.display(),
                    "dovecot-uidlist has no uid left to give (its next uid is 4294967295): new \
                     messages cannot be served");
                break;
            }
            added += 1;
        }
        if added == 0 {
            return Ok(Some(Arc::new(list)));
        }
        if let Err(e) = uidlist::write(held, &uidlist::serialize(&list), owner) {
            tracing::warn!(maildir = %dir.display(), error = %e,
                "cannot write dovecot-uidlist: new messages wait for the next login");
            return Ok(None);
        }
        let list = Arc::new(list);
        if let Ok(Some((_, version))) = uidlist::open(root) {
            self.uidlists
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(dir, version, Arc::clone(&list));
        }
        Ok(Some(list))
    }

    /// Moves `new/<name>` to `cur/`, never replacing a file there (a name clash, or a name too
    /// long for the `:2,` it needs, gets a fresh name). False if it was gone already (another
    /// reader moved it).
    fn move_to_cur(&self, new: &File, cur: &File, name: &OsStr) -> io::Result<bool> {
        let mut to = cur_name_for_new(name);
        for _ in 0..MOVE_ATTEMPTS {
            match handle::rename_noreplace(new, name, cur, &to) {
                Ok(()) => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(e)
                    if e.kind() == io::ErrorKind::AlreadyExists
                        || Errno::from_io_error(&e) == Some(Errno::NAMETOOLONG) =>
                {
                    // Never seen by a client (it is in new/): a fresh unique-id costs nothing.
                    to = cur_name_for_new(&self.fresh_name(name.as_bytes())?);
                }
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free name in cur/",
        ))
    }

    /// Renames `cur/<name>` to a fresh unique name with the same info part; `None` if it is gone.
    fn rename_duplicate(&self, cur: &File, name: &OsStr) -> io::Result<Option<OsString>> {
        let fresh = self.fresh_name(name.as_bytes())?;
        match handle::rename_noreplace(cur, name, cur, &fresh) {
            Ok(()) => Ok(Some(fresh)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A new unique base name followed by the info part of `old`.
    fn fresh_name(&self, old: &[u8]) -> io::Result<OsString> {
        let unique = unique_name(self.hostname())?;
        let mut name = unique.into_bytes();
        name.extend_from_slice(info_part(old));
        Ok(OsString::from_vec(name))
    }
}

impl Store for MaildirStore {
    fn open_as(
        &self,
        user: &str,
        home: Option<&str>,
        owner: Owner,
    ) -> Result<Box<dyn Maildrop>, StoreError> {
        let (maildrop, stats) = self.open_maildir_as(user, home, owner)?;
        tracing::debug!(user, ?stats, "maildrop opened");
        Ok(Box::new(maildrop))
    }

    fn open_as_now(
        &self,
        user: &str,
        home: Option<&str>,
        owner: Owner,
    ) -> Option<Box<dyn Maildrop>> {
        let dir = self.maildir_path(user, home).ok()?;
        let (maildrop, stats) = self.open_dir_now(&dir, owner)?;
        tracing::debug!(user, ?stats, "maildrop opened");
        Some(Box::new(maildrop))
    }

    fn deliver_as(
        &self,
        user: &str,
        home: Option<&str>,
        owner: Owner,
        message: &mut dyn Read,
    ) -> Result<Delivered, StoreError> {
        let dir = self.maildir_path(user, home)?;
        let (root, _) = open_root(&dir, owner)?;
        deliver_into(&root, &dir, self.hostname(), owner, self.line_ends, message)
    }
}

/// What a [`LockedMaildir`] holds open, besides its snapshot.
struct Handles<'a> {
    dir: &'a Path,
    cur_dir: File,
    root_id: (u64, u64),
    owner: Owner,
    lock: File,
    snapshots: Option<Arc<Mutex<SnapshotCache>>>,
}

impl LockedMaildir {
    /// `cur/`, for logs and errors (made when needed: a session holds no copy of it).
    fn cur(&self) -> PathBuf {
        self.dir.join("cur")
    }

    /// The file of message `index`, opened without following a link; a file renamed by a mail
    /// reader since the snapshot (its flags changed) is found again by its base name.
    fn open_file(&mut self, index: usize) -> Result<File, StoreError> {
        let number = index.saturating_add(1);
        let name = match self.names.get(index) {
            None => return Err(StoreError::NoSuchMessage(number)),
            Some(None) => return Err(StoreError::Vanished(number)),
            Some(Some(name)) => name.to_os_string(),
        };
        match handle::open_regular(&self.cur_dir, &name) {
            Ok(Opened::File(file)) => return Ok(file),
            Ok(Opened::Missing | Opened::NotRegular) => {}
            Err(e) => return Err(StoreError::io(self.cur().join(&name), e)),
        }
        let Some(current) = self.find_by_base(base_name(name.as_bytes()))? else {
            return Err(StoreError::Vanished(number));
        };
        match handle::open_regular(&self.cur_dir, &current) {
            Ok(Opened::File(file)) => {
                Arc::make_mut(&mut self.names).set(index, Some(&current));
                Ok(file)
            }
            Ok(Opened::Missing | Opened::NotRegular) => Err(StoreError::Vanished(number)),
            Err(e) => Err(StoreError::io(self.cur().join(&current), e)),
        }
    }

    fn new(handles: Handles<'_>, snapshot: Snapshot) -> Self {
        Self {
            dir: handles.dir.to_owned(),
            cur_dir: handles.cur_dir,
            root_id: handles.root_id,
            owner: handles.owner,
            messages: snapshot.messages,
            sizes: snapshot.sizes,
            names: snapshot.names,
            not_sized: snapshot.not_sized,
            cur_mtime: snapshot.cur_mtime,
            new_mtime: snapshot.new_mtime,
            snapshots: handles.snapshots,
            _lock: handles.lock,
        }
    }

    /// The index entries of the snapshot as it is now: deleted messages left out, sizes not
    /// known yet as `None`.
    fn index_entries(&self) -> Vec<Entry> {
        let mut not_sized = self.not_sized.iter().peekable();
        self.names
            .iter()
            .zip(&self.sizes)
            .enumerate()
            .filter_map(|(i, (name, &size))| {
                let known = if not_sized.peek() == Some(&&i) {
                    not_sized.next();
                    false
                } else {
                    true
                };
                name.map(|name| Entry {
                    name: name.to_os_string(),
                    wire_size: known.then_some(size),
                })
            })
            .collect()
    }

    /// The maildir's directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The current name in `cur/` of a message whose file is not where the snapshot left it
    /// (another program changed its flags); `None` if no file has its base name any more.
    fn find_by_base(&self, base: &[u8]) -> Result<Option<OsString>, StoreError> {
        Ok(self.names_by_base()?.remove(base))
    }

    /// Every message file of `cur/`, by base name.
    fn names_by_base(&self) -> Result<HashMap<Vec<u8>, OsString>, StoreError> {
        Ok(list_messages(&self.cur_dir, &self.cur())?
            .into_iter()
            .map(|name| (base_name(name.as_bytes()).to_vec(), name))
            .collect())
    }

    /// Unlinks one message file, following a rename; a file already gone counts as removed.
    fn remove_message(
        &self,
        name: &OsStr,
        by_base: &mut Option<HashMap<Vec<u8>, OsString>>,
    ) -> Result<(), StoreError> {
        match handle::unlink(&self.cur_dir, name) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io(self.cur().join(name), e)),
        }
        let base = base_name(name.as_bytes());
        // The listing is made once per UPDATE, and made again only if it proved stale.
        for fresh_listing in [false, true] {
            if fresh_listing || by_base.is_none() {
                *by_base = Some(self.names_by_base()?);
            }
            let Some(current) = by_base.as_ref().and_then(|m| m.get(base)) else {
                return Ok(());
            };
            match handle::unlink(&self.cur_dir, current) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io(self.cur().join(current), e)),
            }
        }
        Ok(())
    }

    /// Rewrites the index without the deleted messages. A failure only costs the next open a
    /// directory listing, so it is logged, not returned.
    fn rewrite_index(&self) {
        // cur/ was just changed: its new mtime is too fresh to trust.
        self.write_index(None, "cannot rewrite the maildrop index after UPDATE");
    }

    /// Writes the index of the snapshot as it is now, recording `cur_mtime` for `cur/`. A
    /// failure only costs a later open a directory listing, so it is logged (`failure`), not
    /// returned.
    fn write_index(&self, cur_mtime: Option<u128>, failure: &str) {
        let index = Index {
            cur_mtime,
            new_mtime: self.new_mtime,
            // In delivery order, as the fast path expects (with `uidl = "dovecot"` the snapshot
            // is in Dovecot's order).
            entries: sort_entries(self.index_entries()),
            sealed: false,
        };
        let written = self.reopen_root().and_then(|root| {
            index::write_atomic(&root, &index::serialize(&index), self.owner)?;
            index::version(&root)
        });
        let version = match written {
            Ok(version) => version,
            Err(e) => {
                tracing::warn!(maildir = %self.dir.display(), error = %e, "{failure}");
                None
            }
        };
        // What the next open would read from the file just written, so that it need not.
        if let Some(cache) = &self.snapshots {
            let trusted = index.cur_mtime.is_some() && index.new_mtime.is_some();
            match version {
                Some(version) if trusted => {
                    let snapshot =
                        Snapshot::build(index.entries, None, (index.cur_mtime, index.new_mtime));
                    lock_cache(cache).insert(&self.dir, self.root_id, version, Arc::new(snapshot));
                }
                _ => lock_cache(cache).remove(&self.dir),
            }
        }
    }

    /// The maildir's directory again (the session holds only `cur/` open), refused unless it
    /// is the one the snapshot was taken from.
    fn reopen_root(&self) -> io::Result<File> {
        let root = handle::open_dir_path(&self.dir)?;
        if handle::identity(&root)?.1 != self.root_id {
            return Err(io::Error::other(
                "the maildir's directory was replaced during the session",
            ));
        }
        Ok(root)
    }
}

impl Maildrop for LockedMaildir {
    fn messages(&self) -> &[MessageMeta] {
        &self.messages
    }

    fn check_login_delay(&mut self, delay: Duration) -> Result<(), StoreError> {
        let root = self
            .reopen_root()
            .map_err(|e| StoreError::io(&self.dir, e))?;
        let path = self.dir.join(policy_files::LAST_LOGIN_FILE);
        let now = policy_files::millis(SystemTime::now());
        // A time that cannot be read or written (a full disk, a file made unreadable) does not
        // lock the user out: the login goes on, and the log says why no delay was enforced.
        let last = policy_files::last_login(&root).unwrap_or_else(|e| {
            tracing::warn!(file = %path.display(), error = %e, "cannot read the last login");
            None
        });
        if last.is_some_and(|last| policy_files::too_soon(last, now, delay)) {
            return Err(StoreError::LoginDelay);
        }
        if let Err(e) = policy_files::write_last_login(&root, now, self.owner) {
            tracing::warn!(file = %path.display(), error = %e, "cannot record the last login");
        }
        Ok(())
    }

    fn expire(&mut self, after: Duration) -> Result<usize, StoreError> {
        let root = self
            .reopen_root()
            .map_err(|e| StoreError::io(&self.dir, e))?;
        let times = policy_files::retrieved(&root)
            .map_err(|e| StoreError::io(self.dir.join(policy_files::RETRIEVED_FILE), e))?;
        if times.is_empty() {
            return Ok(0);
        }
        let now = policy_files::millis(SystemTime::now());
        let after = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        let expired: Vec<usize> = self
            .names
            .iter()
            .enumerate()
            .filter_map(|(i, name)| {
                let first = *times.get(base_name(name?.as_bytes()))?;
                (first.saturating_add(after) <= now).then_some(i)
            })
            .collect();
        if expired.is_empty() {
            return Ok(0);
        }
        // Removed as UPDATE removes (durably, the index rewritten), then out of the snapshot.
        self.apply_deletions(&expired)?;
        self.drop_from_snapshot(&expired);
        Ok(expired.len())
    }

    fn record_retrievals(&mut self, indices: &[usize]) -> Result<(), StoreError> {
        if indices.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(policy_files::RETRIEVED_FILE);
        let root = self
            .reopen_root()
            .map_err(|e| StoreError::io(&self.dir, e))?;
        let mut times = policy_files::retrieved(&root).map_err(|e| StoreError::io(&path, e))?;
        let before = times.clone();
        // Forget the messages that are gone (deleted now or by another program).
        let live: HashSet<&[u8]> = self
            .names
            .iter()
            .flatten()
            .map(|n| base_name(n.as_bytes()))
            .collect();
        times.retain(|base, _| live.contains(base.as_slice()));
        let now = policy_files::millis(SystemTime::now());
        for &i in indices {
            if let Some(Some(name)) = self.names.get(i) {
                times
                    .entry(base_name(name.as_bytes()).to_vec())
                    .or_insert(now);
            }
        }
        if times == before {
            return Ok(());
        }
        policy_files::write_retrieved(&root, &times, self.owner)
            .map_err(|e| StoreError::io(&path, e))
    }

    fn take_messages(&mut self) -> Arc<Vec<MessageMeta>> {
        std::mem::take(&mut self.messages)
    }

    fn size(&self, index: usize) -> Option<u64> {
        if self.not_sized.binary_search(&index).is_ok() {
            return None;
        }
        self.sizes.get(index).copied()
    }

    fn sizes_known(&self) -> bool {
        self.not_sized.is_empty()
    }

    fn compute_sizes(&mut self) -> Result<Vec<u64>, StoreError> {
        if !self.not_sized.is_empty() {
            let targets: Vec<&OsStr> = self
                .not_sized
                .iter()
                .map(|&pos| self.names.get(pos).flatten().unwrap_or_default())
                .collect();
            let mut sized = size_files(&self.cur_dir, &self.cur(), &targets)?;
            // Renamed by another program since the open (a flag change): found by base name,
            // with one listing of cur/. Gone for good: it stays in the snapshot with size 0, and
            // RETR will say it vanished.
            if sized.iter().any(Option::is_none) {
                let mut by_base = self.names_by_base()?;
                for (&pos, size) in self.not_sized.iter().zip(sized.iter_mut()) {
                    if size.is_some() {
                        continue;
                    }
                    let Some(Some(old)) = self.names.get(pos) else {
                        continue;
                    };
                    let Some(current) = by_base.remove(base_name(old.as_bytes())) else {
                        continue;
                    };
                    *size = size_files(&self.cur_dir, &self.cur(), &[current.as_os_str()])?
                        .first()
                        .copied()
                        .flatten();
                    if size.is_some() {
                        Arc::make_mut(&mut self.names).set(pos, Some(&current));
                    }
                }
            }
            for (&pos, size) in self.not_sized.iter().zip(sized) {
                if size.is_none() {
                    // Gone or unreadable: RETR and DELE will say it vanished.
                    Arc::make_mut(&mut self.names).set(pos, None);
                }
                let size = size.unwrap_or(0);
                if let Some(meta) = Arc::make_mut(&mut self.messages).get_mut(pos) {
                    meta.size = size;
                }
                if let Some(slot) = self.sizes.get_mut(pos) {
                    *slot = size;
                }
            }
            self.not_sized.clear();
            // Record the sizes, so that no later session reads these files again. The mtimes
            // are those of the open's listing: if another program changed a directory since,
            // the next open sees it and lists it again.
            self.write_index(
                self.cur_mtime,
                "cannot record message sizes in the maildrop index",
            );
        }
        Ok(self.sizes.clone())
    }

    fn open_message(&mut self, index: usize) -> Result<Box<dyn Read + Send>, StoreError> {
        Ok(Box::new(self.open_file(index)?))
    }

    fn read_cached(&mut self, index: usize, buf: &mut [u8]) -> Option<usize> {
        let Some(Some(name)) = self.names.get(index) else {
            return None;
        };
        // A name not found here (a mail reader renamed the file since the snapshot), a link,
        // a FIFO: `open_message` sorts them out.
        let (file, len) = handle::open_regular_cached(&self.cur_dir, name)?;
        let len = usize::try_from(len).ok()?;
        // One octet more than the length fstat gave, to see the end of the file.
        let want = buf.get_mut(..len.checked_add(1)?)?;
        let n = handle::read_now(&file, want)?;
        // Fewer octets than the length: not all of the file is in the page cache (a read
        // that must not wait stops there). More: the file grew since fstat. Either way,
        // the ordinary path reads it.
        (n == len).then_some(n)
    }

    fn open_wire_form(&mut self, index: usize) -> Result<Option<(File, u64)>, StoreError> {
        let Some(Some(name)) = self.names.get(index) else {
            return Ok(None);
        };
        let base = base_name(name.as_bytes());
        if !has_wire_form_field(base) {
            return Ok(None);
        }
        let Some(claimed) = size_field(base) else {
            return Ok(None);
        };
        let path = self.cur().join(name);
        let file = self.open_file(index)?;
        // A file whose length is not the one delivery wrote was changed since: not trusted.
        let len = file.metadata().map_err(|e| StoreError::io(path, e))?.len();
        Ok((len == claimed).then_some((file, len)))
    }

    fn apply_deletions(&mut self, indices: &[usize]) -> Result<(), StoreError> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.names.len()) {
            return Err(StoreError::NoSuchMessage(bad.saturating_add(1)));
        }
        let mut by_base = None;
        let mut removed = 0usize;
        let mut failure = None;
        for &i in indices {
            let Some(name) = self.names.get(i).flatten().map(OsStr::to_os_string) else {
                continue; // listed twice
            };
            if let Err(e) = self.remove_message(&name, &mut by_base) {
                failure = Some(e);
                break;
            }
            Arc::make_mut(&mut self.names).set(i, None);
            removed += 1;
        }
        if removed == 0 {
            return failure.map_or(Ok(()), Err);
        }
        // Make the unlinks that were done durable, even when a later one failed.
        let synced = self
            .cur_dir
            .sync_all()
            .map_err(|e| StoreError::io(self.cur(), e));
        if let Some(e) = failure {
            return Err(e);
        }
        synced?;
        self.rewrite_index();
        Ok(())
    }
}

impl LockedMaildir {
    /// Takes the messages at `positions` (ascending) out of the snapshot: the session never
    /// sees them. Only before the snapshot is handed over (`take_messages`).
    fn drop_from_snapshot(&mut self, positions: &[usize]) {
        let gone = |i: usize| positions.binary_search(&i).is_ok();
        let keep_messages = self.messages.len() == self.names.len();
        Arc::make_mut(&mut self.names).retain_positions(|i| !gone(i));
        let mut i = 0;
        self.sizes.retain(|_| {
            i += 1;
            !gone(i - 1)
        });
        if keep_messages {
            let mut i = 0;
            Arc::make_mut(&mut self.messages).retain(|_| {
                i += 1;
                !gone(i - 1)
            });
        }
        // Positions after a dropped one move down by the number dropped before them.
        self.not_sized = self
            .not_sized
            .iter()
            .filter(|&&p| !gone(p))
            .map(|&p| p - positions.partition_point(|&q| q < p))
            .collect();
    }
}

impl fmt::Debug for LockedMaildir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockedMaildir")
            .field("dir", &self.dir)
            .field("messages", &self.sizes.len())
            .finish_non_exhaustive()
    }
}

/// Opens the maildir's directory `dir`, creating it (and, mode 0700, the directories above it)
/// if missing. Its last component is never followed if it is a link (the parts above it come
/// from the administrator's template). With a uid for the account, a directory owned by another
/// uid is refused; a directory created here is given to the owner (when running as root).
/// Returns the handle and the directory's device and inode.
pub(crate) fn open_root(dir: &Path, owner: Owner) -> Result<(File, (u64, u64)), StoreError> {
    // O_DIRECTORY | O_NOFOLLOW on a link fails with ENOTDIR (or ELOOP): say what it is.
    let is_link = || {
        std::fs::symlink_metadata(dir)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false)
    };
    let explain = |e: io::Error| match Errno::from_io_error(&e) {
        Some(Errno::LOOP | Errno::NOTDIR) if is_link() => StoreError::io(
            dir,
            io::Error::new(
                io::ErrorKind::InvalidData,
                "the maildir is a symbolic link (refused: it is the maildrop's own)",
            ),
        ),
        _ => StoreError::io(dir, e),
    };
    let root = match handle::open_dir_path(dir) {
        Ok(root) => root,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent() {
                DirBuilder::new()
                    .recursive(true)
                    .mode(handle::DIR_MODE)
                    .create(parent)
                    .map_err(|e| StoreError::io(first_missing(parent), e))?;
            }
            let created = match DirBuilder::new().mode(handle::DIR_MODE).create(dir) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
                Err(e) => return Err(StoreError::io(dir, e)),
            };
            let root = handle::open_dir_path(dir).map_err(explain)?;
            if created {
                handle::give_to(&root, owner).map_err(|e| StoreError::io(dir, e))?;
            }
            root
        }
        Err(e) => return Err(explain(e)),
    };
    let (found, id) = handle::identity(&root).map_err(|e| StoreError::io(dir, e))?;
    if let Some(expected) = owner.uid {
        if found != expected {
            return Err(StoreError::WrongOwner {
                path: dir.to_owned(),
                expected,
                found,
            });
        }
    }
    Ok((root, id))
}

/// The directory a recursive creation of `dir` failed on: the highest one of `dir` and its
/// parents that does not exist (the first one it had to make), rather than `dir` itself.
fn first_missing(dir: &Path) -> &Path {
    dir.ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && std::fs::symlink_metadata(a).is_err())
        .last()
        .unwrap_or(dir)
}

/// Opens the lock file (a regular file, never through a link) and takes the exclusive lock
/// without waiting.
fn lock(root: &File, dir: &Path, owner: Owner) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let file =
        handle::open_lock_file(root, LOCK_FILE, owner).map_err(|e| StoreError::io(&path, e))?;
    // flock: per open file, released when the file is closed or the process dies.
    let locked = file.try_lock();
    match locked {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StoreError::InUse),
        Err(TryLockError::Error(e)) => Err(StoreError::io(path, e)),
    }
}

/// The message files of a directory: regular files (never followed through links) whose names
/// are not dotfiles. `path` names the directory in errors and logs.
fn list_messages(dir: &File, path: &Path) -> Result<Vec<OsString>, StoreError> {
    let found = handle::list(dir, is_message_name, |name, e| {
        tracing::warn!(dir = %path.display(), file = %escaped(name), error = %e,
            "cannot tell what a maildrop entry is; skipping it");
    })
    .map_err(|e| StoreError::io(path, e))?;
    Ok(found
        .into_iter()
        .filter(|(_, kind)| *kind == Kind::Regular)
        .map(|(name, _)| name)
        .collect())
}

/// Whether `tmp/` may hold a file older than [`TMP_MAX_AGE`] that the fast path should remove:
/// every file created in (or removed from) `tmp/` sets its mtime, so files that are all younger
/// than that age leave it younger too. An old `tmp/` that is empty costs one short listing.
fn tmp_may_hold_stale_files(root: &File) -> bool {
    use rustix::fs::{statat, AtFlags, FileType};
    let Ok(st) = statat(root, "tmp", AtFlags::SYMLINK_NOFOLLOW) else {
        return false;
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return false;
    }
    // The fields' types differ between targets (i64/u64, i64/c_long).
    #[allow(clippy::useless_conversion)]
    let mtime = UNIX_EPOCH
        + Duration::from_secs(u64::try_from(st.st_mtime).unwrap_or(0))
        + Duration::from_nanos(u64::try_from(st.st_mtime_nsec).unwrap_or(0));
    mtime.elapsed().is_ok_and(|age| age >= TMP_MAX_AGE)
}

/// [`clean_tmp`] on the maildrop's `tmp/`, opened without following a link.
fn clean_tmp_dir(root: &File, dir: &Path, owner: Owner) -> usize {
    match handle::subdir(root, "tmp", owner) {
        Ok(tmp) => clean_tmp(&tmp, dir),
        Err(e) => {
            tracing::warn!(maildir = %dir.display(), error = %e,
                "cannot open tmp/; not cleaning it");
            0
        }
    }
}

/// Removes the regular files of `tmp/` older than [`TMP_MAX_AGE`]: what a delivery killed half
/// way left behind. Never fatal: a failure is logged, and the next open tries again. Returns how
/// many were removed.
fn clean_tmp(tmp: &File, dir: &Path) -> usize {
    let skip = |name: &OsStr, e: io::Error| {
        tracing::warn!(maildir = %dir.display(), file = %escaped(name), error = %e,
            "cannot look at a file of tmp/");
    };
    let entries = match handle::list(tmp, |n| n != "." && n != "..", skip) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(maildir = %dir.display(), error = %e, "cannot list tmp/");
            return 0;
        }
    };
    let mut removed = 0;
    for (name, kind) in entries {
        if kind != Kind::Regular {
            continue;
        }
        let stale = match handle::open_regular(tmp, &name) {
            Ok(Opened::File(f)) => f
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= TMP_MAX_AGE),
            Ok(Opened::Missing | Opened::NotRegular) | Err(_) => false,
        };
        if !stale {
            continue;
        }
        match handle::unlink(tmp, &name) {
            Ok(()) => {
                removed += 1;
                tracing::info!(maildir = %dir.display(), file = %escaped(&name),
                    "removed a file left in tmp/ by an interrupted delivery");
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(maildir = %dir.display(), file = %escaped(&name),
                error = %e, "cannot remove an old file of tmp/"),
        }
    }
    removed
}

/// Which entries (sorted with `name::compare`) share their base name with another: they fall
/// within runs of names that `compare_bases` finds equal (nearly always runs of one).
fn shared_bases(entries: &[Entry]) -> Vec<bool> {
    let mut shared = vec![false; entries.len()];
    let base = |i: usize| {
        entries
            .get(i)
            .map_or(&[][..], |e| base_name(e.name.as_bytes()))
    };
    let mut start = 0;
    while start < entries.len() {
        let mut end = start + 1;
        while end < entries.len() {
            let (a, b) = (base(end - 1), base(end));
            // The timestamps tell most neighbours apart before any token is compared.
            if order_key(a) != order_key(b) || compare_bases(a, b) != Ordering::Equal {
                break;
            }
            end += 1;
        }
        if end - start > 1 {
            let mut run: Vec<(&[u8], usize)> = (start..end).map(|i| (base(i), i)).collect();
            run.sort_unstable();
            for pair in run.windows(2) {
                if let [(a, i), (b, j)] = pair {
                    if a == b {
                        for k in [*i, *j] {
                            if let Some(flag) = shared.get_mut(k) {
                                *flag = true;
                            }
                        }
                    }
                }
            }
        }
        start = end;
    }
    shared
}

/// Gives each entry (sorted with `name::compare`, as `old` is) the size `old` records for the
/// same base name, walking both lists once. Only an identical base name gives a size; where the
/// two orders could disagree (base names that differ only in leading zeros), a size is missed
/// and the file read again, never misattributed. Entries marked `shared` are left unknown.
fn copy_known_sizes(entries: &mut [Entry], old: &[Entry], shared: &[bool]) {
    let mut j = 0;
    for (i, entry) in entries.iter_mut().enumerate() {
        let base = base_name(entry.name.as_bytes());
        while let Some(o) = old.get(j) {
            let old_base = base_name(o.name.as_bytes());
            match compare_bases(old_base, base).then_with(|| old_base.cmp(base)) {
                Ordering::Less => j += 1,
                Ordering::Equal => {
                    if !shared.get(i).copied().unwrap_or(true) {
                        entry.wire_size = o.wire_size;
                    }
                    break;
                }
                Ordering::Greater => break,
            }
        }
    }
}

/// A directory's mtime in ns since the epoch; `None` if the file system cannot say.
fn mtime_ns(dir: &File, path: &Path) -> Result<Option<u128>, StoreError> {
    let meta = dir.metadata().map_err(|e| StoreError::io(path, e))?;
    Ok(meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos()))
}

/// The mtime of the subdirectory `name` of `root`, as [`mtime_ns`] gives it, from one stat of
/// the name (never through a link); `None` if it is not a directory or cannot be looked at.
// The fields' types differ between targets (i64/u64, i64/c_long/u64).
#[allow(clippy::useless_conversion, clippy::unnecessary_fallible_conversions)]
fn subdir_mtime_ns(root: &File, name: &str) -> Option<u128> {
    use rustix::fs::{statat, AtFlags, FileType};
    let st = statat(root, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return None;
    }
    let secs = u128::try_from(st.st_mtime).ok()?;
    let nanos = u128::try_from(st.st_mtime_nsec).ok()?;
    Some(secs * 1_000_000_000 + nanos)
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// `mtime` if it was old enough, when the open began, to be trusted by the next open.
fn settled(mtime: Option<u128>, started_ns: u128) -> Option<u128> {
    mtime.filter(|&m| m.saturating_add(SETTLE_TIME.as_nanos()) <= started_ns)
}

/// Sorts message files oldest first (see `name::compare`); an index is stored sorted, so on the
/// fast path this is one pass that finds nothing to do. Each name's timestamp is parsed once
/// (`name::order_key`); only names with the same timestamp are compared token by token.
fn sort_entries(entries: Vec<Entry>) -> Vec<Entry> {
    let mut keyed: Vec<((bool, u64), Entry)> = entries
        .into_iter()
        .map(|e| (order_key(e.name.as_bytes()), e))
        .collect();
    let order = |a: &((bool, u64), Entry), b: &((bool, u64), Entry)| {
        a.0.cmp(&b.0)
            .then_with(|| compare(a.1.name.as_bytes(), b.1.name.as_bytes()))
    };
    if !keyed.is_sorted_by(|a, b| order(a, b) != Ordering::Greater) {
        // Unstable is enough: `compare` never finds two different names equal.
        keyed.sort_unstable_by(order);
    }
    keyed.into_iter().map(|(_, e)| e).collect()
}

/// The unique-id of each entry, and the positions whose unique-id an earlier entry already has.
/// Sizes the files `names` of `cur` by reading them; `None` for a file that vanished meanwhile,
/// is no longer a regular file, or cannot be read (logged). Sizing a large maildrop is bound by
/// these reads (open, read, close per file, mostly kernel time), so they are spread over a few
/// threads. `path` names `cur/` in logs.
fn size_files(cur: &File, path: &Path, names: &[&OsStr]) -> Result<Vec<Option<u64>>, StoreError> {
    /// Below this many files, threads cost more than they save.
    const PARALLEL_FROM: usize = 256;
    /// Reads in flight at most: beyond a few, the disk or the kernel is the limit.
    const MAX_THREADS: usize = 4;
    let size_some = |chunk: &[&OsStr]| -> Result<Vec<Option<u64>>, StoreError> {
        let mut buf = vec![0u8; BLOCK_SIZE];
        chunk
            .iter()
            .map(|&name| {
                let counted = handle::open_regular(cur, name).and_then(|opened| match opened {
                    Opened::File(mut f) => count_wire_size(&mut f, &mut buf).map(Some),
                    Opened::Missing | Opened::NotRegular => Ok(None),
                });
                match counted {
                    Ok(size) => Ok(size),
                    Err(e) => {
                        tracing::warn!(dir = %path.display(), file = %escaped(name), error = %e,
                            "cannot read a message; skipping it");
                        Ok(None)
                    }
                }
            })
            .collect()
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_THREADS);
    if names.len() < PARALLEL_FROM || threads < 2 {
        return size_some(names);
    }
    let per_thread = names.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = names
            .chunks(per_thread)
            .map(|chunk| scope.spawn(move || size_some(chunk)))
            .collect();
        let mut sizes = Vec::with_capacity(names.len());
        for handle in handles {
            match handle.join() {
                Ok(part) => sizes.extend(part?),
                // A panic while sizing is a bug; treat the maildrop as unreadable for now.
                Err(_) => {
                    return Err(StoreError::io(
                        path,
                        io::Error::other("a thread sizing messages failed"),
                    ))
                }
            }
        }
        Ok(sizes)
    })
}

fn unique_ids(entries: &[Entry]) -> (Vec<Uidl>, Vec<usize>) {
    let uids: Vec<Uidl> = entries
        .iter()
        .map(|e| uid_for_base(base_name(e.name.as_bytes())))
        .collect();
    let mut seen = FastSet::with_capacity_and_hasher(uids.len(), Default::default());
    let duplicates = uids
        .iter()
        .enumerate()
        .filter(|(_, uid)| !seen.insert(uid.as_bytes()))
        .map(|(i, _)| i)
        .collect();
    (uids, duplicates)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, OpenOptions};
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    struct Fixture {
        _tmp: tempfile::TempDir,
        store: MaildirStore,
        dir: PathBuf,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let store = MaildirStore::new(format!("{}/%d/%n/Maildir", tmp.path().display()));
        let dir = store.maildir_path("bob@example.org", None).unwrap();
        Fixture {
            _tmp: tmp,
            store,
            dir,
        }
    }

    impl Fixture {
        fn open(&self) -> (LockedMaildir, OpenStats) {
            self.store.open_maildir("bob@example.org", None).unwrap()
        }

        fn put(&self, sub: &str, name: &str, content: &[u8]) {
            fs::create_dir_all(self.dir.join(sub)).unwrap();
            fs::write(self.dir.join(sub).join(name), content).unwrap();
        }

        fn files(&self, sub: &str) -> Vec<String> {
            let mut v: Vec<String> = fs::read_dir(self.dir.join(sub))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        }

        /// Makes cur/ and new/ look untouched for a while, as if time had passed.
        fn age(&self) {
            for sub in ["cur", "new", "tmp"] {
                fs::create_dir_all(self.dir.join(sub)).unwrap();
            }
            let past = SystemTime::now() - Duration::from_secs(10);
            for sub in ["cur", "new"] {
                File::open(self.dir.join(sub))
                    .unwrap()
                    .set_modified(past)
                    .unwrap();
            }
        }

        /// A handle on the maildir's directory, for the index functions.
        fn root(&self) -> File {
            handle::open_dir_path(&self.dir).unwrap()
        }

        fn deliver(&self, content: &[u8]) -> Delivered {
            self.store
                .deliver("bob@example.org", None, &mut &content[..])
                .unwrap()
        }
    }

    fn uids(m: &LockedMaildir) -> Vec<String> {
        m.messages()
            .iter()
            .map(|m| m.uid.as_str().to_owned())
            .collect()
    }

    fn sizes(m: &LockedMaildir) -> Vec<u64> {
        m.messages().iter().map(|m| m.size).collect()
    }

    fn read_message(m: &mut LockedMaildir, i: usize) -> Vec<u8> {
        let mut out = Vec::new();
        m.open_message(i).unwrap().read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn open_creates_the_directories() {
        let f = fixture();
        assert!(!f.dir.exists());
        let (m, stats) = f.open();
        for sub in ["cur", "new", "tmp"] {
            let meta = fs::metadata(f.dir.join(sub)).unwrap();
            assert!(meta.is_dir());
            assert_eq!(meta.permissions().mode() & 0o777, 0o700, "{sub}");
        }
        assert!(f.dir.join(LOCK_FILE).exists());
        assert!(m.messages().is_empty());
        assert_eq!(stats.index, IndexOutcome::Missing);
        assert!(stats.index_written);
        assert_eq!(m.path(), f.dir);
    }

    #[test]
    fn new_mail_moves_to_cur_with_info() {
        let f = fixture();
        f.put("new", "1000.A.h", b"one\n");
        f.put("new", "1001.B.h:2,S", b"two\n");
        f.put("new", ".hidden", b"x");
        let (m, stats) = f.open();
        assert_eq!(stats.moved_from_new, 2);
        assert_eq!(f.files("new"), vec![".hidden"]);
        assert_eq!(f.files("cur"), vec!["1000.A.h:2,", "1001.B.h:2,S"]);
        assert_eq!(uids(&m), vec!["1000.A.h", "1001.B.h"]);
    }

    #[test]
    fn a_name_clash_in_cur_loses_nothing() {
        let f = fixture();
        f.put("cur", "1000.A.h:2,", b"old\n");
        f.put("new", "1000.A.h", b"newer\n");
        let (mut m, stats) = f.open();
        assert_eq!(stats.moved_from_new, 1);
        assert_eq!(m.messages().len(), 2);
        let mut bodies = vec![read_message(&mut m, 0), read_message(&mut m, 1)];
        bodies.sort();
        assert_eq!(bodies, vec![b"newer\n".to_vec(), b"old\n".to_vec()]);
        let u = uids(&m);
        assert_ne!(u[0], u[1]);
    }

    #[test]
    fn duplicate_base_names_are_renamed_apart() {
        let f = fixture();
        f.put("cur", "1000.A.h:2,", b"a\n");
        f.put("cur", "1000.A.h:2,S", b"b\n");
        let (m, stats) = f.open();
        assert_eq!(stats.renamed_duplicates, 1);
        let u = uids(&m);
        assert_eq!(u.len(), 2);
        assert_ne!(u[0], u[1]);
        assert!(u.contains(&"1000.A.h".to_owned()));
        drop(m);
        // Stable from then on.
        let (m, _) = f.open();
        let mut again = uids(&m);
        let mut before = u;
        again.sort();
        before.sort();
        assert_eq!(again, before);
    }

    #[test]
    fn a_second_file_with_a_known_base_name_is_sized_afresh() {
        let f = fixture();
        f.put("cur", "1000.A.h:2,", b"a\n");
        drop(f.open());
        // Another program drops a different message under the same base name.
        f.put("cur", "1000.A.h:2,S", b"much longer\n");
        let (mut m, _) = f.open();
        assert_eq!(m.messages().len(), 2);
        for i in 0..2 {
            let body = read_message(&mut m, i);
            assert_eq!(m.messages()[i].size, body.len() as u64 + 1);
        }
    }

    #[test]
    fn snapshot_is_in_delivery_order() {
        let f = fixture();
        // Written in another order than delivered.
        f.put("cur", "1700000010.M1P1.h:2,S", b"c\n");
        f.put("cur", "1700000000.M20P1.h:2,", b"b\n");
        f.put("cur", "1700000000.M3P1.h:2,", b"a\n");
        f.put("new", "1700000020.M1P1.h", b"d\n");
        f.put("cur", "999999999.M1P1.h:2,", b"z\n");
        let (mut m, _) = f.open();
        assert_eq!(
            uids(&m),
            vec![
                "999999999.M1P1.h",
                "1700000000.M3P1.h",
                "1700000000.M20P1.h",
                "1700000010.M1P1.h",
                "1700000020.M1P1.h",
            ]
        );
        assert_eq!(read_message(&mut m, 1), b"a\n");
    }

    #[test]
    fn skips_dotfiles_and_non_files() {
        let f = fixture();
        f.put("cur", "1.a:2,", b"x\n");
        f.put("cur", ".1.b:2,", b"x\n");
        fs::create_dir_all(f.dir.join("cur/2.dir:2,")).unwrap();
        std::os::unix::fs::symlink(f.dir.join("cur/1.a:2,"), f.dir.join("cur/3.link:2,")).unwrap();
        let (m, _) = f.open();
        assert_eq!(uids(&m), vec!["1.a"]);
    }

    #[test]
    fn a_message_swapped_for_a_link_or_a_fifo_is_never_followed() {
        let f = fixture();
        f.put("cur", "1.a:2,", b"x\n");
        f.put("cur", "2.b:2,", b"y\n");
        let secret = f.dir.join("secret");
        fs::write(&secret, b"not mail\n").unwrap();
        let (mut m, _) = f.open();
        // After the snapshot, someone with write access to cur/ swaps the files.
        fs::remove_file(f.dir.join("cur/1.a:2,")).unwrap();
        std::os::unix::fs::symlink(&secret, f.dir.join("cur/1.a:2,")).unwrap();
        fs::remove_file(f.dir.join("cur/2.b:2,")).unwrap();
        let status = std::process::Command::new("mkfifo")
            .arg(f.dir.join("cur/2.b:2,"))
            .status()
            .unwrap();
        assert!(status.success());
        assert!(matches!(m.open_message(0), Err(StoreError::Vanished(1))));
        // Without O_NONBLOCK this open would wait forever for a writer.
        assert!(matches!(m.open_message(1), Err(StoreError::Vanished(2))));
    }

    /// Every file of a directory with its content, to show a read-only listing changed nothing.
    fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let meta = fs::symlink_metadata(&p).unwrap();
                if meta.is_dir() {
                    stack.push(p.clone());
                    out.push((p, Vec::new()));
                } else if meta.is_file() {
                    let content = fs::read(&p).unwrap();
                    out.push((p, content));
                } else {
                    out.push((p, b"special".to_vec()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_read_only_listing_gives_the_servers_unique_ids_and_order_and_changes_nothing() {
        let f = fixture();
        // A missing maildir is an empty one, and is not created.
        use crate::listing::ReadOnlyListing;
        let empty = ReadOnlyListing::list(&f.dir, Owner::default(), UidlScheme::Facteur).unwrap();
        assert!(!empty.exists() && empty.messages.is_empty());
        assert!(!f.dir.exists());

        f.put("cur", "1700000003.M1P1.mx:2,S", b"c\n");
        f.put("new", "1700000001.M1P1.mx", b"a\n");
        f.put("new", "1700000002.M1P1.mx,W=3", b"b\n");
        let long = format!("1700000004.M1P1.{}", "y".repeat(90));
        f.put("cur", &format!("{long}:2,"), b"d\n");
        // One base name twice: the server renames the second one apart.
        f.put("cur", "1700000005.M1P1.mx:2,", b"e\n");
        f.put("cur", "1700000005.M1P1.mx:2,S", b"e\n");
        f.put("cur", ".hidden", b"no\n");
        std::os::unix::fs::symlink("/etc/passwd", f.dir.join("cur/1700000006.M1P1.mx:2,")).unwrap();
        let before = tree(&f.dir);
        // A maildir of another uid than the account's is refused, as the open refuses it.
        let mine = rustix::process::geteuid().as_raw();
        let other = Owner {
            uid: Some(mine.wrapping_add(1)),
            gid: None,
        };
        assert!(matches!(
            ReadOnlyListing::list(&f.dir, other, UidlScheme::Facteur),
            Err(StoreError::WrongOwner { .. })
        ));
        let listing = ReadOnlyListing::list(
            &f.dir,
            Owner {
                uid: Some(mine),
                gid: None,
            },
            UidlScheme::Facteur,
        )
        .unwrap();
        assert_eq!(tree(&f.dir), before, "nothing created, moved or written");
        assert_eq!(listing.not_regular.len(), 1);
        assert_eq!(listing.duplicates.len(), 1);
        let listed: Vec<String> = listing
            .messages
            .iter()
            .map(|m| m.uid.as_str().to_owned())
            .collect();
        let contents: Vec<Vec<u8>> = listing
            .messages
            .iter()
            .map(|m| match listing.open(m).unwrap() {
                Opened::File(mut file) => {
                    let mut v = Vec::new();
                    file.read_to_end(&mut v).unwrap();
                    v
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(contents, [b"a\n", b"b\n", b"c\n", b"d\n", b"e\n"]);

        // The server's open (which moves new/ to cur/ and renames the duplicate) gives the
        // same unique-ids, in the same order, to the messages the listing kept.
        let (m, _) = f.open();
        let served = uids(&m);
        drop(m);
        assert_eq!(served.len(), 6);
        assert_eq!(served.get(..5), Some(&listed[..]));
        assert!(listed.iter().any(|u| u.starts_with('H')));

        // Listed in new/, moved to cur/ (or renamed by a flag change) before it is read: found
        // by its base name. Deleted: missing.
        let f = fixture();
        f.put("new", "1700000001.M1P1.mx", b"a\n");
        f.put("cur", "1700000002.M1P1.mx:2,", b"b\n");
        let listing = ReadOnlyListing::list(&f.dir, Owner::default(), UidlScheme::Facteur).unwrap();
        fs::rename(
            f.dir.join("new/1700000001.M1P1.mx"),
            f.dir.join("cur/1700000001.M1P1.mx:2,S"),
        )
        .unwrap();
        fs::remove_file(f.dir.join("cur/1700000002.M1P1.mx:2,")).unwrap();
        let [first, second] = &listing.messages[..] else {
            panic!("two messages listed")
        };
        assert!(matches!(listing.open(first).unwrap(), Opened::File(_)));
        assert!(matches!(listing.open(second).unwrap(), Opened::Missing));
    }

    #[test]
    fn uid_survives_flag_changes_and_index_loss() {
        let f = fixture();
        f.put("cur", "1000.A.h:2,", b"one\n");
        f.put("cur", "1001.B.h:2,", b"two\r\n");
        let (m, _) = f.open();
        let before = uids(&m);
        let sizes_before = sizes(&m);
        drop(m);
        fs::rename(
            f.dir.join("cur/1000.A.h:2,"),
            f.dir.join("cur/1000.A.h:2,S"),
        )
        .unwrap();
        let (m, stats) = f.open();
        assert_eq!(uids(&m), before);
        assert_eq!(sizes(&m), sizes_before);
        // The renamed file was matched by base name: nothing was read.
        assert_eq!(stats.files_read, 0);
        drop(m);
        fs::remove_file(f.dir.join(index::INDEX_FILE)).unwrap();
        let (m, stats) = f.open();
        assert_eq!(stats.index, IndexOutcome::Missing);
        assert_eq!(stats.files_read, 2);
        assert_eq!(uids(&m), before);
        assert_eq!(sizes(&m), sizes_before);
    }

    #[test]
    fn long_base_name_gets_a_hashed_uid() {
        let f = fixture();
        let long = format!("1700000000.M1P1.{}", "h".repeat(80));
        f.put("cur", &format!("{long}:2,"), b"x\n");
        let (m, _) = f.open();
        let uid = uids(&m).remove(0);
        assert!(uid.starts_with('H') && uid.len() == 41, "{uid}");
        assert!(Uidl::is_valid(uid.as_bytes()));
        drop(m);
        fs::remove_file(f.dir.join(index::INDEX_FILE)).unwrap();
        fs::rename(
            f.dir.join("cur").join(format!("{long}:2,")),
            f.dir.join("cur").join(format!("{long}:2,RS")),
        )
        .unwrap();
        let (m, _) = f.open();
        assert_eq!(uids(&m), vec![uid]);
    }

    #[test]
    fn wire_sizes() {
        let f = fixture();
        f.put("cur", "1.lf:2,", b"a\nbb\n");
        f.put("cur", "2.crlf:2,", b"a\r\nbb\r\n");
        f.put("cur", "3.nofinal:2,", b"a\nbb");
        // W= is trusted without opening the file (the content says 2).
        f.put("cur", "4.w,S=2,W=999:2,", b"a\n");
        f.put("cur", "5.empty:2,", b"");
        let (m, stats) = f.open();
        assert_eq!(sizes(&m), vec![7, 7, 5, 999, 0]);
        assert_eq!(stats.files_read, 4);
    }

    #[test]
    fn many_unsized_files_are_deferred_then_sized_in_parallel_exactly_and_in_order() {
        let f = fixture();
        // More than EAGER_SIZING_MAX, enough to take the threaded path; message i has i bare
        // LF lines.
        for i in 0..600u64 {
            let body = "x\n".repeat(i as usize);
            f.put("cur", &format!("{}.m{i}:2,", 1000 + i), body.as_bytes());
        }
        let expected: Vec<u64> = (0..600u64).map(|i| 3 * i).collect();
        let (mut m, stats) = f.open();
        assert_eq!(stats.files_read, 0);
        assert_eq!(stats.sizes_deferred, 600);
        assert!(!m.sizes_known());
        assert_eq!(uids(&m)[599], "1599.m599");
        assert_eq!(m.compute_sizes().unwrap(), expected);
        assert!(m.sizes_known());
        assert_eq!(sizes(&m), expected);
        // Asking again reads nothing and answers the same.
        assert_eq!(m.compute_sizes().unwrap(), expected);
        drop(m);

        // The index now has every size: no later open reads a file, listing cur/ or not.
        let (m, stats) = f.open();
        assert_eq!((stats.files_read, stats.sizes_deferred), (0, 0));
        assert!(m.sizes_known());
        assert_eq!(sizes(&m), expected);
        drop(m);
        f.age();
        let (m, _) = f.open();
        drop(m);
        let (m, stats) = f.open();
        assert!(stats.fast_path);
        assert!(m.sizes_known());
        assert_eq!(sizes(&m), expected);
    }

    /// A name for the merge properties: a timestamp and a counter, with leading zeros or not,
    /// and flags.
    fn merge_name() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        (
            "(0{0,2})?",
            1u32..40,
            prop_oneof![Just("M"), Just("M0"), Just("x")],
            0u32..4,
            prop_oneof![Just(""), Just(":2,"), Just(":2,S"), Just(":2,FS")],
        )
            .prop_map(|(zeros, secs, mid, n, flags)| format!("{zeros}{secs}.{mid}{n}{flags}"))
    }

    proptest::proptest! {
        /// The side-by-side walk finds exactly the sizes a map by base name would, or misses one
        /// (then the file is read again); it never gives a message another one's size, and the
        /// files that share a base name are all found, and get no size.
        #[test]
        fn known_sizes_are_found_by_base_name_and_never_misattributed(
            names in proptest::collection::btree_set(merge_name(), 0..40),
            known in proptest::collection::btree_map(merge_name(), 1u64..1000, 0..40),
        ) {
            let entries: Vec<Entry> = names
                .iter()
                .map(|n| Entry { name: n.into(), wire_size: None })
                .collect();
            let mut entries = sort_entries(entries);
            // The old index: one entry per base name, in delivery order.
            let mut by_base = std::collections::BTreeMap::new();
            for (name, size) in &known {
                by_base.entry(base_name(name.as_bytes()).to_vec()).or_insert(*size);
            }
            let old = sort_entries(
                by_base
                    .iter()
                    .map(|(base, size)| Entry {
                        name: OsString::from_vec([&base[..], b":2,"].concat()),
                        wire_size: Some(*size),
                    })
                    .collect(),
            );
            let shared = shared_bases(&entries);
            copy_known_sizes(&mut entries, &old, &shared);
            let mut count = std::collections::HashMap::new();
            for e in &entries {
                *count.entry(base_name(e.name.as_bytes()).to_vec()).or_insert(0) += 1;
            }
            let no_leading_zeros = names.iter().all(|n| !n.starts_with('0') && !n.contains(".M0"));
            for (e, &is_shared) in entries.iter().zip(&shared) {
                let base = base_name(e.name.as_bytes());
                proptest::prop_assert_eq!(is_shared, count[base] > 1, "{:?}", e.name);
                if is_shared {
                    proptest::prop_assert_eq!(e.wire_size, None);
                } else if let Some(size) = e.wire_size {
                    proptest::prop_assert_eq!(Some(&size), by_base.get(base));
                } else if no_leading_zeros {
                    proptest::prop_assert_eq!(None, by_base.get(base), "missed {:?}", e.name);
                }
            }
        }
    }

    #[test]
    fn the_snapshot_is_handed_over_and_sizes_stay_known() {
        let f = fixture();
        for i in 0..300u64 {
            f.put("cur", &format!("{}.m{i}:2,", 1000 + i), b"ab\n");
        }
        let (mut m, _) = f.open();
        let snapshot = m.take_messages();
        assert_eq!(snapshot.len(), 300);
        assert_eq!(snapshot[7].uid.as_str(), "1007.m7");
        assert!(m.messages().is_empty());
        assert_eq!(m.size(0), None, "deferred: not known yet");
        assert_eq!(m.compute_sizes().unwrap(), vec![4; 300]);
        assert_eq!((m.size(299), m.size(300)), (Some(4), None));
        assert_eq!(read_message(&mut m, 299), b"ab\n");
        m.apply_deletions(&[0]).unwrap();
        drop(m);
        let (m, stats) = f.open();
        assert_eq!((stats.messages, stats.sizes_deferred), (299, 0));
        assert_eq!(m.size(0), Some(4));
    }

    #[test]
    fn a_few_unsized_files_are_sized_at_the_open() {
        let f = fixture();
        for i in 0..EAGER_SIZING_MAX {
            f.put("cur", &format!("{}.m{i}:2,", 1000 + i), b"a\nb\n");
        }
        let (m, stats) = f.open();
        assert_eq!(
            (stats.files_read, stats.sizes_deferred),
            (EAGER_SIZING_MAX, 0)
        );
        assert!(m.sizes_known());
        assert!(sizes(&m).iter().all(|&s| s == 6));
        drop(m);
        // New mail on a maildrop already sized: only the new files are read, at the open.
        f.put("new", "5000.new1", b"x\n");
        f.put("new", "5001.new2", b"y\r\n");
        let (m, stats) = f.open();
        assert_eq!((stats.files_read, stats.sizes_deferred), (2, 0));
        assert_eq!(sizes(&m)[EAGER_SIZING_MAX..], [3, 3]);
    }

    #[test]
    fn deferred_sizes_follow_renames_and_survive_deletions() {
        let f = fixture();
        for i in 0..300u64 {
            f.put("cur", &format!("{}.m{i}:2,", 1000 + i), b"12345\n");
        }
        let (mut m, stats) = f.open();
        assert_eq!(stats.sizes_deferred, 300);
        // Another program marks message 1 Seen and removes message 2 before anything is sized.
        fs::rename(f.dir.join("cur/1000.m0:2,"), f.dir.join("cur/1000.m0:2,S")).unwrap();
        fs::remove_file(f.dir.join("cur/1001.m1:2,")).unwrap();
        let got = m.compute_sizes().unwrap();
        assert_eq!(got[0], 7, "found under its new name");
        assert_eq!(got[1], 0, "gone: size 0, and RETR says it vanished");
        assert!(got[2..].iter().all(|&s| s == 7));
        assert!(matches!(m.open_message(1), Err(StoreError::Vanished(2))));
        assert_eq!(read_message(&mut m, 0), b"12345\n");
        drop(m);

        // Deleting before any size is known keeps the others unknown, not wrong.
        let f = fixture();
        for i in 0..300u64 {
            f.put("cur", &format!("{}.m{i}:2,", 1000 + i), b"12345\n");
        }
        let (mut m, _) = f.open();
        m.apply_deletions(&[0, 5]).unwrap();
        drop(m);
        let (mut m, stats) = f.open();
        assert_eq!(stats.messages, 298);
        assert_eq!(stats.sizes_deferred, 298);
        assert_eq!(m.compute_sizes().unwrap(), vec![7; 298]);
    }

    #[test]
    fn second_open_is_in_use_until_the_first_is_dropped() {
        let f = fixture();
        let (m, _) = f.open();
        assert!(matches!(
            f.store.open_maildir("bob@example.org", None),
            Err(StoreError::InUse)
        ));
        // Through the trait as well.
        assert!(matches!(
            f.store.open("bob@example.org", None),
            Err(StoreError::InUse)
        ));
        drop(m);
        assert!(f.store.open("bob@example.org", None).is_ok());
    }

    #[test]
    fn mail_delivered_during_a_session_is_not_touched() {
        let f = fixture();
        f.deliver(b"first\n");
        f.deliver(b"second\n");
        let mut m = f.store.open("bob@example.org", None).unwrap();
        assert_eq!(m.messages().len(), 2);
        let late = f.deliver(b"late\n");
        assert_eq!(m.messages().len(), 2);
        m.apply_deletions(&[0, 1]).unwrap();
        drop(m);
        assert!(late.path.exists());
        let (mut m, _) = f.open();
        assert_eq!(m.messages().len(), 1);
        assert_eq!(read_message(&mut m, 0), b"late\r\n");
    }

    #[test]
    fn deletions_are_applied() {
        let f = fixture();
        for i in 0..5 {
            f.put("cur", &format!("100{i}.x:2,"), format!("m{i}\n").as_bytes());
        }
        let (mut m, _) = f.open();
        let before = uids(&m);
        // Listed twice, in any order: still fine.
        m.apply_deletions(&[3, 1, 3]).unwrap();
        assert!(matches!(m.open_message(1), Err(StoreError::Vanished(2))));
        drop(m);
        assert_eq!(f.files("cur"), vec!["1000.x:2,", "1002.x:2,", "1004.x:2,"]);
        let (m, stats) = f.open();
        assert_eq!(stats.files_read, 0);
        assert_eq!(
            uids(&m),
            vec![before[0].clone(), before[2].clone(), before[4].clone()]
        );
        assert_eq!(sizes(&m), vec![4, 4, 4]);
    }

    /// LOGIN-DELAY on a Maildir: the last login is a file of the maildrop, checked and written
    /// under its lock; a refused login leaves it as it was.
    #[test]
    fn login_delay_refuses_a_login_too_soon_after_the_last() {
        let f = fixture();
        let delay = Duration::from_secs(2);
        let (mut m, _) = f.open();
        m.check_login_delay(delay).unwrap();
        let first = std::time::Instant::now();
        let recorded = fs::read_to_string(f.dir.join(policy_files::LAST_LOGIN_FILE)).unwrap();
        drop(m);
        let (mut m, _) = f.open();
        assert!(matches!(
            m.check_login_delay(delay),
            Err(StoreError::LoginDelay)
        ));
        drop(m);
        assert_eq!(
            fs::read_to_string(f.dir.join(policy_files::LAST_LOGIN_FILE)).unwrap(),
            recorded
        );
        std::thread::sleep(delay.saturating_sub(first.elapsed()) + Duration::from_millis(50));
        let (mut m, _) = f.open();
        m.check_login_delay(delay).unwrap();
        drop(m);
        // Planted garbage (or a link) counts as no last login: the maildrop's owner could
        // remove the file anyway.
        fs::write(f.dir.join(policy_files::LAST_LOGIN_FILE), "soon\n").unwrap();
        let (mut m, _) = f.open();
        m.check_login_delay(delay).unwrap();
    }

    /// Logins racing (threads standing for processes or nodes on one Maildir): the lock makes
    /// the check and the record one step, so exactly one passes LOGIN-DELAY.
    #[test]
    fn of_logins_racing_exactly_one_passes_the_login_delay() {
        let f = fixture();
        drop(f.open());
        let passed: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        let deadline = std::time::Instant::now() + Duration::from_secs(20);
                        loop {
                            match f.store.open_maildir("bob@example.org", None) {
                                Ok((mut m, _)) => {
                                    return match m.check_login_delay(Duration::from_secs(3600)) {
                                        Ok(()) => 1,
                                        Err(StoreError::LoginDelay) => 0,
                                        Err(e) => panic!("{e}"),
                                    }
                                }
                                Err(StoreError::InUse) if std::time::Instant::now() < deadline => {
                                    std::thread::sleep(Duration::from_millis(1))
                                }
                                Err(e) => panic!("{e}"),
                            }
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(passed, 1);
    }

    /// EXPIRE on a Maildir: first retrieval times are recorded only by `record_retrievals` (a
    /// committed QUIT), never moved by a second retrieval, and `expire` removes only the
    /// messages whose time has come, from `cur/` and from the snapshot.
    #[test]
    fn retrievals_are_recorded_at_update_and_expire_at_a_later_open() {
        let f = fixture();
        for i in 0..4 {
            f.put("cur", &format!("100{i}.x:2,"), format!("m{i}\n").as_bytes());
        }
        let (m, _) = f.open();
        let all = uids(&m);
        drop(m);
        assert!(!f.dir.join(policy_files::RETRIEVED_FILE).exists());
        let (mut m, _) = f.open();
        m.record_retrievals(&[]).unwrap();
        assert!(!f.dir.join(policy_files::RETRIEVED_FILE).exists());
        // UPDATE: message 2 deleted, messages 1 and 3 retrieved.
        m.apply_deletions(&[1]).unwrap();
        m.record_retrievals(&[0, 2]).unwrap();
        drop(m);
        let recorded = fs::read_to_string(f.dir.join(policy_files::RETRIEVED_FILE)).unwrap();
        assert_eq!(recorded.lines().count(), 3, "{recorded}");
        assert!(recorded.contains(" 1000.x\n") && recorded.contains(" 1002.x\n"));

        let (mut m, _) = f.open();
        assert_eq!(m.expire(Duration::from_secs(3600)).unwrap(), 0);
        assert_eq!(m.messages().len(), 3);
        std::thread::sleep(Duration::from_millis(1100));
        // Retrieved again: the first time stays; then 1003 retrieved for the first time.
        m.record_retrievals(&[0, 1]).unwrap();
        assert_eq!(
            fs::read_to_string(f.dir.join(policy_files::RETRIEVED_FILE)).unwrap(),
            recorded
        );
        m.record_retrievals(&[1, 2]).unwrap();
        drop(m);

        let (mut m, _) = f.open();
        assert_eq!(m.expire(Duration::from_secs(1)).unwrap(), 2);
        assert_eq!(uids(&m), vec![all[3].clone()]);
        assert_eq!(sizes(&m), vec![4]);
        assert_eq!(read_message(&mut m, 0), b"m3\n");
        assert_eq!(m.size(0), Some(4));
        drop(m);
        assert_eq!(f.files("cur"), vec!["1003.x:2,"]);
        // The index was rewritten without them: the next open reads no file.
        let (m, stats) = f.open();
        assert_eq!(stats.files_read, 0);
        assert_eq!(m.messages().len(), 1);
    }

    #[test]
    fn dropping_from_the_snapshot_keeps_deferred_sizes_in_place() {
        let f = fixture();
        for i in 0..5 {
            f.put("cur", &format!("100{i}.x:2,"), format!("m{i}\n").as_bytes());
        }
        let (mut m, _) = f.open();
        m.not_sized = vec![1, 3, 4];
        m.drop_from_snapshot(&[0, 3]);
        assert_eq!(m.names.len(), 3);
        assert_eq!(m.messages.len(), 3);
        assert_eq!(m.not_sized, vec![0, 2]);
        assert_eq!(
            m.names.get(2),
            Some(Some(std::ffi::OsStr::new("1004.x:2,")))
        );
    }

    #[test]
    fn deletions_rewrite_the_index() {
        let f = fixture();
        for i in 0..3 {
            f.put("cur", &format!("{i}.x:2,"), b"m\n");
        }
        f.age();
        let (mut m, _) = f.open();
        m.apply_deletions(&[1]).unwrap();
        let bytes = index::read(&f.root()).unwrap().unwrap();
        let written = index::parse(&bytes).unwrap();
        let names: Vec<_> = written.entries.iter().map(|e| e.name.clone()).collect();
        assert_eq!(
            names,
            vec![OsString::from("0.x:2,"), OsString::from("2.x:2,")]
        );
        // cur/ just changed: the next open must list it.
        assert_eq!(written.cur_mtime, None);
        assert!(written.new_mtime.is_some());
    }

    #[test]
    fn an_index_with_one_uid_twice_is_not_trusted() {
        let f = fixture();
        f.put("cur", "1.a:2,", b"a\n");
        f.put("cur", "2.b:2,", b"b\n");
        f.age();
        drop(f.open());
        let good = index::read(&f.root()).unwrap().unwrap();
        let parsed = index::parse(&good).unwrap();
        assert!(parsed.sealed && parsed.cur_mtime.is_some() && parsed.new_mtime.is_some());
        let text = String::from_utf8(good).unwrap();

        // Damaged in place: message 2 listed as a second copy of message 1. The checksum no
        // longer matches: the index is rebuilt.
        let damaged = text.replacen(" 2.b:2,", " 1.a:2,S", 1);
        index::write_atomic(&f.root(), damaged.as_bytes(), Owner::default()).unwrap();
        let (m, stats) = f.open();
        assert_eq!(stats.index, IndexOutcome::Corrupt);
        assert_eq!(uids(&m), vec!["1.a", "2.b"]);
        drop(m);

        // A version-1 index (no checksum) saying the same: well-formed, so it is read, but its
        // unique-ids are checked and the directory listed.
        let mut lines: Vec<String> = damaged.lines().map(str::to_owned).collect();
        lines[0] = "facteur-index 1".into();
        let last = lines.len() - 1;
        lines[last] = "end 2".into();
        index::write_atomic(
            &f.root(),
            (lines.join("\n") + "\n").as_bytes(),
            Owner::default(),
        )
        .unwrap();
        let (m, stats) = f.open();
        assert_eq!(stats.index, IndexOutcome::Used);
        assert!(!stats.fast_path);
        assert_eq!(uids(&m), vec!["1.a", "2.b"]);
    }

    #[test]
    fn deletions_follow_renames_and_accept_gone_files() {
        let f = fixture();
        f.put("cur", "1.a:2,", b"a\n");
        f.put("cur", "2.b:2,", b"b\n");
        f.put("cur", "3.c:2,", b"c\n");
        let (mut m, _) = f.open();
        fs::rename(f.dir.join("cur/1.a:2,"), f.dir.join("cur/1.a:2,S")).unwrap();
        fs::remove_file(f.dir.join("cur/2.b:2,")).unwrap();
        m.apply_deletions(&[0, 1]).unwrap();
        assert_eq!(f.files("cur"), vec!["3.c:2,"]);
    }

    #[test]
    fn out_of_range_deletion_deletes_nothing() {
        let f = fixture();
        f.put("cur", "1.a:2,", b"a\n");
        let (mut m, _) = f.open();
        assert!(matches!(
            m.apply_deletions(&[0, 7]),
            Err(StoreError::NoSuchMessage(8))
        ));
        assert_eq!(f.files("cur"), vec!["1.a:2,"]);
        assert!(matches!(
            m.open_message(1),
            Err(StoreError::NoSuchMessage(2))
        ));
    }

    #[test]
    fn deletion_stops_at_the_first_failure() {
        let f = fixture();
        f.put("cur", "1.a:2,", b"a\n");
        f.put("cur", "2.b:2,", b"b\n");
        let (mut m, _) = f.open();
        // A directory where message 1 was: unlink fails (EISDIR/EPERM), not NotFound.
        fs::remove_file(f.dir.join("cur/1.a:2,")).unwrap();
        fs::create_dir(f.dir.join("cur/1.a:2,")).unwrap();
        let err = m.apply_deletions(&[0, 1]).unwrap_err();
        assert!(
            matches!(&err, StoreError::Io { path, .. } if path.ends_with("1.a:2,")),
            "{err}"
        );
        assert!(f.dir.join("cur/2.b:2,").exists());
    }

    #[test]
    fn corrupt_index_is_rebuilt_with_the_same_uids_and_sizes() {
        let f = fixture();
        f.put("cur", "1.a:2,", b"a\nb\n");
        f.put("cur", &format!("2.{}:2,", "x".repeat(90)), b"xyz");
        f.deliver(b"delivered\n");
        let (m, _) = f.open();
        let (before, sizes_before) = (uids(&m), sizes(&m));
        drop(m);
        fs::write(f.dir.join(index::INDEX_FILE), b"\x00\xffgarbage\nend 0\n").unwrap();
        let (m, stats) = f.open();
        assert_eq!(stats.index, IndexOutcome::Corrupt);
        assert!(stats.index_written);
        assert_eq!(uids(&m), before);
        assert_eq!(sizes(&m), sizes_before);
        drop(m);
        let (_, stats) = f.open();
        assert_eq!(stats.index, IndexOutcome::Used);
    }

    #[test]
    fn unchanged_maildrop_opens_from_the_index_alone() {
        let f = fixture();
        for i in 0..20 {
            f.put("cur", &format!("17000000{i:02}.M1P1.h:2,"), b"line\n");
        }
        let (m, stats) = f.open();
        assert_eq!(stats.files_read, 20);
        assert!(!stats.fast_path);
        let before = uids(&m);
        drop(m);

        // The mtimes were too fresh to trust: the next open lists (but reads nothing)...
        f.age();
        let (m, stats) = f.open();
        assert!(!stats.fast_path);
        assert_eq!(stats.files_read, 0);
        assert!(stats.index_written, "the index now records trusted mtimes");
        drop(m);

        // ...and the one after that neither lists nor reads.
        let (m, stats) = f.open();
        assert!(stats.fast_path);
        assert_eq!(stats.dir_listings, 0);
        assert_eq!(stats.files_read, 0);
        assert!(!stats.index_written);
        assert_eq!(uids(&m), before);
        drop(m);

        // Proof that no message file is read: change one behind the index's back (a content
        // change does not touch the directory's mtime); the fast path still reports the indexed
        // size.
        fs::write(f.dir.join("cur/1700000000.M1P1.h:2,"), b"much longer now\n").unwrap();
        // Proof that cur/ is not listed: add a file, then put cur/'s mtime back.
        let cur_mtime = fs::metadata(f.dir.join("cur")).unwrap().modified().unwrap();
        f.put("cur", "1800000000.M1P1.h:2,", b"hidden\n");
        File::open(f.dir.join("cur"))
            .unwrap()
            .set_modified(cur_mtime)
            .unwrap();
        let (m, stats) = f.open();
        assert!(stats.fast_path);
        assert_eq!(m.messages().len(), 20);
        assert_eq!(m.messages()[0].size, 6);
        drop(m);

        // A delivery changes new/: the slow path runs and sees everything.
        f.deliver(b"new\n");
        let (m, stats) = f.open();
        assert!(!stats.fast_path);
        assert_eq!(stats.moved_from_new, 1);
        assert_eq!(m.messages().len(), 22);
    }

    #[test]
    fn the_snapshot_in_memory_serves_the_next_open_and_never_outlives_a_change() {
        let f = fixture();
        for i in 0..20 {
            f.put("cur", &format!("17000000{i:02}.M1P1.h:2,"), b"line\n");
        }
        // Fresh mtimes: the index trusts neither, so nothing is kept to be reused.
        let (m, _) = f.open();
        let before = uids(&m);
        let before_sizes = sizes(&m);
        drop(m);
        let (m, stats) = f.open();
        assert!(!stats.from_memory && !stats.fast_path);
        drop(m);
        f.age();
        // The index is written with trusted mtimes; the open after it takes that from memory.
        let (m, stats) = f.open();
        assert!(stats.index_written && !stats.from_memory);
        drop(m);
        let (m, stats) = f.open();
        assert!(stats.from_memory && stats.fast_path);
        assert_eq!(stats.dir_listings, 0);
        assert_eq!(
            (uids(&m), sizes(&m)),
            (before.clone(), before_sizes.clone())
        );
        drop(m);
        let (m, stats) = f.open();
        assert!(stats.from_memory);
        assert_eq!(uids(&m), before);
        drop(m);

        // Another index file (same directories): read, not the one in memory. This one leaves
        // out the first message, which the fast path then believes.
        let root = f.root();
        let mut parsed = index::parse(&index::read(&root).unwrap().unwrap()).unwrap();
        parsed.entries.remove(0);
        index::write_atomic(&root, &index::serialize(&parsed), Owner::default()).unwrap();
        let (m, stats) = f.open();
        assert!(!stats.from_memory && stats.fast_path);
        assert_eq!(uids(&m), before[1..]);
        drop(m);
        // That file read, it is the one kept now.
        let (m, stats) = f.open();
        assert!(stats.from_memory);
        assert_eq!(uids(&m), before[1..]);
        drop(m);

        // The index swapped for a FIFO: never used from memory, never read, rebuilt.
        fs::remove_file(f.dir.join(index::INDEX_FILE)).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(f.dir.join(index::INDEX_FILE))
            .status()
            .unwrap();
        assert!(made.success());
        let (m, stats) = f.open();
        assert!(!stats.from_memory);
        assert_eq!(stats.index, IndexOutcome::Corrupt);
        assert_eq!(uids(&m), before, "rebuilt from the directory");
        drop(m);
        let (m, stats) = f.open();
        assert!(stats.from_memory, "the rebuilt index is kept");
        drop(m);

        // A message removed by another program: cur/ changed, the directory is listed again.
        fs::remove_file(f.dir.join("cur/1700000005.M1P1.h:2,")).unwrap();
        let (m, stats) = f.open();
        assert!(!stats.from_memory && !stats.fast_path);
        assert_eq!(m.messages().len(), 19);
        assert!(!uids(&m).contains(&"1700000005.M1P1.h".to_owned()));
        drop(m);

        // Mail delivered in the same second as the index was written: new/'s mtime moved (or,
        // within the same tick, was too fresh to be trusted when the index was written), so the
        // next open lists new/ and sees it.
        f.age();
        let (m, _) = f.open();
        drop(m);
        let (m, stats) = f.open();
        assert!(stats.from_memory);
        drop(m);
        let delivered = f.deliver(b"just in\n");
        let (m, stats) = f.open();
        assert!(!stats.from_memory && !stats.fast_path);
        assert_eq!(stats.moved_from_new, 1);
        assert_eq!(m.messages().len(), 20);
        drop(m);
        // That open moved it into cur/ a moment ago: its mtimes were too fresh to trust, and
        // the next open lists the directories again rather than trust memory or the index.
        let again = f.deliver(b"same second\n");
        let (m, stats) = f.open();
        assert!(!stats.from_memory && !stats.fast_path);
        assert_eq!(m.messages().len(), 21);
        let all = uids(&m);
        for d in [&delivered, &again] {
            let name = d.path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(all.iter().any(|u| name.starts_with(u.as_str())), "{name}");
        }
    }

    /// The open from memory alone answers only when the memory fast path would, with the
    /// same snapshot, and leaves nothing held or changed when it does not.
    #[test]
    fn an_open_from_memory_is_the_memory_fast_path_or_nothing() {
        let f = fixture();
        let now = |f: &Fixture| f.store.open_dir_now(&f.dir, Owner::default());
        // No maildir yet: nothing made here.
        assert!(now(&f).is_none());
        assert!(!f.dir.exists());
        for i in 0..3 {
            f.put("cur", &format!("17000000{i:02}.M1P1.h:2,"), b"line\n");
        }
        let (m, _) = f.open();
        let expected = uids(&m);
        drop(m);
        assert!(now(&f).is_none(), "mtimes too fresh: not in memory");
        f.age();
        drop(f.open());
        let (m, stats) = now(&f).expect("in memory");
        assert!(stats.from_memory && stats.fast_path);
        assert_eq!((uids(&m), sizes(&m)), (expected.clone(), vec![6, 6, 6]));
        // Its lock is held: neither kind of open gets in meanwhile.
        assert!(now(&f).is_none());
        assert!(matches!(
            f.store.open_maildir("bob@example.org", None),
            Err(StoreError::InUse)
        ));
        drop(m);
        // A refused attempt held nothing: the ordinary open gets in.
        assert!(f.open().1.from_memory);

        // Another owner expected: left to the ordinary open, which says so.
        let mine = fs::metadata(&f.dir).unwrap().uid();
        let other = Owner {
            uid: Some(mine.wrapping_add(1)),
            gid: None,
        };
        assert!(f.store.open_dir_now(&f.dir, other).is_none());

        // A stale file in tmp/: left to the ordinary open, which removes it.
        f.put("tmp", "killed", b"half");
        let old = SystemTime::now() - TMP_MAX_AGE - Duration::from_secs(60);
        File::open(f.dir.join("tmp"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(now(&f).is_none());
        assert_eq!(f.files("tmp"), vec!["killed"]);
        File::options()
            .write(true)
            .open(f.dir.join("tmp/killed"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        File::open(f.dir.join("tmp"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(f.open().1.tmp_removed, 1);
        // tmp/ a link: nothing to clean, as on the memory fast path.
        fs::remove_dir(f.dir.join("tmp")).unwrap();
        std::os::unix::fs::symlink(f.dir.join("cur"), f.dir.join("tmp")).unwrap();
        assert!(now(&f).is_some());
        fs::remove_file(f.dir.join("tmp")).unwrap();

        // New mail: the ordinary open moves it.
        f.deliver(b"new\n");
        assert!(now(&f).is_none());
        assert_eq!(f.files("new").len(), 1);
        assert_eq!(f.open().0.messages().len(), 4);

        // A link where cur/ or the lock file is: left to the ordinary open, which refuses it.
        f.age();
        drop(f.open());
        assert!(now(&f).is_some());
        let lock = f.dir.join(LOCK_FILE);
        fs::remove_file(&lock).unwrap();
        std::os::unix::fs::symlink(f.dir.join("elsewhere"), &lock).unwrap();
        assert!(now(&f).is_none());
        fs::remove_file(&lock).unwrap();
        fs::rename(f.dir.join("cur"), f.dir.join("cur.real")).unwrap();
        std::os::unix::fs::symlink(f.dir.join("cur.real"), f.dir.join("cur")).unwrap();
        assert!(now(&f).is_none());
        assert!(f.store.open_maildir("bob@example.org", None).is_err());
        // The maildir itself a link: refused.
        fs::remove_file(f.dir.join("cur")).unwrap();
        fs::rename(f.dir.join("cur.real"), f.dir.join("cur")).unwrap();
        assert!(
            now(&f).is_none(),
            "no lock file: made by the ordinary open only"
        );
        drop(f.open());
        assert!(now(&f).is_some());
        let real = f.dir.with_extension("real");
        fs::rename(&f.dir, &real).unwrap();
        std::os::unix::fs::symlink(&real, &f.dir).unwrap();
        assert!(now(&f).is_none());
    }

    #[test]
    fn a_snapshot_in_memory_is_never_used_when_new_is_not_a_directory() {
        let f = fixture();
        for i in 0..3 {
            f.put("cur", &format!("17000000{i:02}.M1P1.h:2,"), b"line\n");
        }
        drop(f.open());
        f.age();
        drop(f.open());
        let (m, stats) = f.open();
        assert!(stats.from_memory);
        drop(m);
        // new/ swapped for a link to the very same directory (same mtime): refused, as a
        // link always is, never taken for the directory the snapshot saw.
        fs::rename(f.dir.join("new"), f.dir.join("new.real")).unwrap();
        std::os::unix::fs::symlink(f.dir.join("new.real"), f.dir.join("new")).unwrap();
        let err = f.store.open_maildir("bob@example.org", None).unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }), "{err}");
        // A regular file in its place: refused too.
        fs::remove_file(f.dir.join("new")).unwrap();
        fs::write(f.dir.join("new"), b"").unwrap();
        let err = f.store.open_maildir("bob@example.org", None).unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }), "{err}");
        // The directory back: served from memory again.
        fs::remove_file(f.dir.join("new")).unwrap();
        fs::rename(f.dir.join("new.real"), f.dir.join("new")).unwrap();
        let (m, stats) = f.open();
        assert!(stats.from_memory, "{stats:?}");
        assert_eq!(m.messages().len(), 3);
    }

    #[test]
    fn a_session_changing_its_snapshot_leaves_the_one_in_memory_alone() {
        let f = fixture();
        for i in 0..5 {
            f.put("cur", &format!("17000000{i:02}.M1P1.h:2,"), b"line\n");
        }
        f.age();
        drop(f.open());
        let (mut m, stats) = f.open();
        assert!(stats.from_memory);
        let before = uids(&m);
        // Dropped from this session's snapshot only (as EXPIRE does before the handover).
        m.drop_from_snapshot(&[0]);
        assert_eq!(m.names.len(), 4);
        drop(m);
        let (mut m, stats) = f.open();
        assert!(stats.from_memory);
        assert_eq!(uids(&m), before);
        // A deletion changes cur/: nothing of the old snapshot is used again.
        m.apply_deletions(&[1]).unwrap();
        drop(m);
        let (m, stats) = f.open();
        assert!(!stats.from_memory);
        assert_eq!(m.messages().len(), 4);
        assert!(!uids(&m).contains(&before[1]));
    }

    #[test]
    fn sizes_recorded_after_a_deferred_open_serve_the_next_open_from_memory() {
        let f = fixture();
        let count = EAGER_SIZING_MAX + 10;
        for i in 0..count {
            f.put(
                "cur",
                &format!("{}.M1P1.h:2,", 1_700_000_000 + i),
                &b"x\n".repeat(i % 7 + 1),
            );
        }
        f.age();
        let (mut m, stats) = f.open();
        assert_eq!(stats.sizes_deferred, count);
        let sized = m.compute_sizes().unwrap();
        drop(m);
        let (m, stats) = f.open();
        assert!(stats.from_memory);
        assert!(m.sizes_known());
        assert_eq!(stats.sizes_deferred, 0);
        assert_eq!(sizes(&m), sized);
        drop(m);
        // The same answer as from the file itself (a fresh store has nothing in memory).
        let other = MaildirStore::new(f.store.template.clone());
        let (m2, stats) = other.open_maildir("bob@example.org", None).unwrap();
        assert!(!stats.from_memory && stats.fast_path);
        assert_eq!(sizes(&m2), sized);
    }

    #[test]
    fn dovecot_unique_ids_are_never_served_from_memory() {
        let mut f = fixture();
        f.store = MaildirStore::new(f.store.template.clone()).with_uidl(UidlScheme::Dovecot);
        f.put("cur", "1700000000.M1P1.h:2,", b"line\n");
        f.age();
        for _ in 0..3 {
            let (m, stats) = f.open();
            assert!(!stats.from_memory);
            drop(m);
        }
    }

    #[test]
    fn open_message_follows_an_external_rename() {
        let f = fixture();
        f.put("cur", "1.a:2,", b"hello\n");
        let (mut m, _) = f.open();
        fs::rename(f.dir.join("cur/1.a:2,"), f.dir.join("cur/1.a:2,RS")).unwrap();
        assert_eq!(read_message(&mut m, 0), b"hello\n");
        // And the new name is remembered for UPDATE.
        m.apply_deletions(&[0]).unwrap();
        assert!(f.files("cur").is_empty());
    }

    #[test]
    fn a_cached_read_is_the_file_whole_or_nothing() {
        let f = fixture();
        f.put("cur", "1.a:2,", b"hello\n");
        f.put("cur", "2.b:2,", b"world, a longer one\n");
        f.put("cur", "3.c:2,", b"renamed\n");
        let (mut m, _) = f.open();
        let mut buf = vec![0u8; 64];
        assert_eq!(m.read_cached(0, &mut buf), Some(6));
        assert_eq!(buf.get(..6).unwrap(), b"hello\n");
        // A buffer with no room for one octet past the end cannot show the end: not read.
        assert_eq!(m.read_cached(1, &mut [0u8; 20]), None);
        assert_eq!(m.read_cached(1, &mut [0u8; 21]), Some(20));
        // Renamed since the snapshot, or out of the snapshot: left to `open_message`, which
        // finds the new name.
        fs::rename(f.dir.join("cur/3.c:2,"), f.dir.join("cur/3.c:2,S")).unwrap();
        assert_eq!(m.read_cached(2, &mut buf), None);
        assert_eq!(read_message(&mut m, 2), b"renamed\n");
        assert_eq!(m.read_cached(2, &mut buf), Some(8));
        assert_eq!(m.read_cached(3, &mut buf), None);
        // Replaced by a link or a FIFO: never read.
        fs::remove_file(f.dir.join("cur/1.a:2,")).unwrap();
        std::os::unix::fs::symlink(f.dir.join("cur/2.b:2,"), f.dir.join("cur/1.a:2,")).unwrap();
        assert_eq!(m.read_cached(0, &mut buf), None);
    }

    #[test]
    fn open_message_of_a_removed_file_is_vanished() {
        let f = fixture();
        f.put("cur", "1.a:2,", b"hello\n");
        let (mut m, _) = f.open();
        fs::remove_file(f.dir.join("cur/1.a:2,")).unwrap();
        assert!(matches!(m.open_message(0), Err(StoreError::Vanished(1))));
    }

    #[test]
    fn a_message_stored_as_its_wire_form_is_handed_out_as_a_file() {
        let f = fixture();
        let plain = f.deliver(b"Subject: a\n\nline\n");
        let dotted = f.deliver(b"Subject: b\n\n.line\n");
        let changed = f.deliver(b"Subject: c\n\nline\n");
        for d in [&plain, &changed] {
            assert!(d.path.to_str().unwrap().ends_with(",P=1"), "{:?}", d.path);
        }
        assert!(!dotted.path.to_str().unwrap().contains(",P=1"));
        // Appended to after delivery: its length is no longer the one its name records.
        fs::OpenOptions::new()
            .append(true)
            .open(&changed.path)
            .unwrap()
            .write_all(b".\n")
            .unwrap();
        let lf = MaildirStore::new(f.store.template.clone()).with_line_ends(LineEnds::Lf);
        let as_given = lf
            .deliver("bob@example.org", None, &mut &b"Subject: d\n\nline\n"[..])
            .unwrap();
        assert_eq!(fs::read(&as_given.path).unwrap(), b"Subject: d\n\nline\n");
        assert!(!as_given.path.to_str().unwrap().contains(",P="));

        let (mut m, _) = f.open();
        let (mut file, len) = m.open_wire_form(0).unwrap().expect("a wire form");
        let mut got = Vec::new();
        file.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"Subject: a\r\n\r\nline\r\n");
        assert_eq!(len, got.len() as u64);
        assert!(
            m.open_wire_form(1).unwrap().is_none(),
            "a line starts with '.'"
        );
        assert!(
            m.open_wire_form(2).unwrap().is_none(),
            "changed since delivery"
        );
        assert!(m.open_wire_form(3).unwrap().is_none(), "stored as given");
        assert!(m.open_wire_form(4).unwrap().is_none(), "no such message");
    }

    #[test]
    fn deliver_then_open() {
        let f = fixture();
        let content = b"Subject: hi\n\nbody\r\nlast line without newline";
        // Stored with CRLF line ends (the default): as large as its wire form.
        let stored = b"Subject: hi\r\n\r\nbody\r\nlast line without newline";
        let d = f.deliver(content);
        assert_eq!(d.size, stored.len() as u64);
        assert_eq!(d.wire_size, content.len() as u64 + 2);
        let name = d.path.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(d.path.starts_with(f.dir.join("new")));
        assert!(
            name.ends_with(&format!(",S={},W={}", d.size, d.wire_size)),
            "{name}"
        );
        assert_eq!(fs::read(&d.path).unwrap(), stored);
        assert!(f.files("tmp").is_empty());

        let (mut m, stats) = f.open();
        assert_eq!(stats.files_read, 0, "W= is trusted");
        assert_eq!(sizes(&m), vec![d.wire_size]);
        assert_eq!(read_message(&mut m, 0), stored);
        // No line end at its end: RETR adds one, so the file is not its own wire form.
        assert!(m.open_wire_form(0).unwrap().is_none());
        assert_eq!(f.files("cur"), vec![format!("{name}:2,")]);
    }

    #[test]
    fn deliver_streams_large_messages() {
        let f = fixture();
        // Larger than one block, with a bare LF right at the block boundary.
        let mut content = vec![b'x'; BLOCK_SIZE * 3 + 17];
        content[BLOCK_SIZE - 1] = b'\r';
        content[BLOCK_SIZE] = b'\n';
        content[BLOCK_SIZE * 2] = b'\n';
        let d = f.deliver(&content);
        // Stored with CRLF: the bare LF got its CR, the one after a CR at the boundary did not.
        assert_eq!(d.size, content.len() as u64 + 1);
        assert_eq!(d.wire_size, content.len() as u64 + 1);
        let mut expected = content.clone();
        expected.insert(BLOCK_SIZE * 2, b'\r');
        assert_eq!(fs::read(&d.path).unwrap(), expected);
    }

    #[test]
    fn the_directory_that_could_not_be_made_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        assert_eq!(first_missing(&deep), dir.path().join("a"));
        fs::create_dir(dir.path().join("a")).unwrap();
        assert_eq!(first_missing(&deep), dir.path().join("a/b"));
        // Under a regular file: the first name below it.
        fs::write(dir.path().join("a/f"), "").unwrap();
        assert_eq!(
            first_missing(&dir.path().join("a/f/x/y")),
            dir.path().join("a/f/x")
        );
        // Nothing missing: the directory itself.
        assert_eq!(first_missing(dir.path()), dir.path());
    }

    #[test]
    fn deliver_rejects_escaping_names() {
        let f = fixture();
        let err = f.store.deliver("../x@example.org", None, &mut &b"x"[..]);
        assert!(matches!(err, Err(StoreError::BadUser(_))));
        assert!(matches!(
            f.store.open("bob/..", None),
            Err(StoreError::BadUser(_))
        ));
    }

    #[test]
    fn crash_between_unlink_and_index_rewrite_is_reconciled() {
        let f = fixture();
        for i in 0..3 {
            f.put("cur", &format!("{i}.x:2,"), b"m\n");
        }
        let (m, _) = f.open();
        drop(m);
        f.age();
        let (m, _) = f.open(); // records trusted mtimes
        drop(m);
        // As if UPDATE died after one unlink: the index still lists the file.
        fs::remove_file(f.dir.join("cur/1.x:2,")).unwrap();
        let (mut m, stats) = f.open();
        assert!(!stats.fast_path);
        assert_eq!(uids(&m), vec!["0.x", "2.x"]);
        assert_eq!(read_message(&mut m, 1), b"m\n");
    }

    #[test]
    fn index_file_is_written_only_when_it_changes() {
        let f = fixture();
        f.put("cur", "1.a:2,", b"a\n");
        let (_, stats) = f.open();
        assert!(stats.index_written);
        // Lists again (the mtimes are too fresh to trust) and finds the same: no write.
        let (_, stats) = f.open();
        assert!(!stats.fast_path);
        assert!(!stats.index_written);
        // Now the mtimes can be trusted: that is a change worth writing.
        f.age();
        let (_, stats) = f.open();
        assert!(stats.index_written);
        let mut file = OpenOptions::new()
            .append(true)
            .open(f.dir.join(index::INDEX_FILE))
            .unwrap();
        file.write_all(b"trailing junk\n").unwrap();
        let (_, stats) = f.open();
        assert_eq!(stats.index, IndexOutcome::Corrupt);
        assert!(stats.index_written);
    }

    /// A file outside the maildrop, and its content.
    fn outside(f: &Fixture) -> (PathBuf, &'static [u8]) {
        let path = f._tmp.path().join("outside");
        fs::write(&path, b"outside, precious\n").unwrap();
        (path, b"outside, precious\n")
    }

    #[test]
    fn linked_subdirectories_are_never_followed() {
        for sub in ["cur", "new", "tmp"] {
            let f = fixture();
            let (secret, content) = outside(&f);
            let elsewhere = f._tmp.path().join("elsewhere");
            fs::create_dir_all(&elsewhere).unwrap();
            fs::copy(&secret, elsewhere.join("1.a:2,")).unwrap();
            fs::create_dir_all(&f.dir).unwrap();
            std::os::unix::fs::symlink(&elsewhere, f.dir.join(sub)).unwrap();
            match f.store.open_maildir("bob@example.org", None) {
                // tmp/ is only needed to clean it: the session goes on without.
                Ok((mut m, _)) => {
                    assert_eq!(sub, "tmp");
                    assert!(m.messages().is_empty());
                    m.apply_deletions(&[]).unwrap();
                }
                Err(e) => assert!(matches!(e, StoreError::Io { .. }), "{sub}: {e}"),
            }
            assert!(
                f.store
                    .deliver("bob@example.org", None, &mut &b"x"[..])
                    .is_err(),
                "{sub}"
            );
            assert_eq!(
                fs::read(elsewhere.join("1.a:2,")).unwrap(),
                content,
                "{sub}"
            );
            assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 1, "{sub}");
        }
    }

    #[test]
    fn a_linked_maildir_is_refused() {
        let f = fixture();
        let elsewhere = f._tmp.path().join("elsewhere");
        for sub in ["cur", "new", "tmp"] {
            fs::create_dir_all(elsewhere.join(sub)).unwrap();
        }
        fs::write(elsewhere.join("cur/1.a:2,"), b"x\n").unwrap();
        fs::create_dir_all(f.dir.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &f.dir).unwrap();
        let err = f.store.open_maildir("bob@example.org", None).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(f
            .store
            .deliver("bob@example.org", None, &mut &b"x"[..])
            .is_err());
        assert_eq!(fs::read_dir(elsewhere.join("new")).unwrap().count(), 0);
    }

    #[test]
    fn linked_index_temporary_and_lock_files_are_never_written_through() {
        let f = fixture();
        let (secret, content) = outside(&f);
        fs::create_dir_all(&f.dir).unwrap();
        std::os::unix::fs::symlink(&secret, f.dir.join("facteur-index.tmp")).unwrap();
        f.put("cur", "1.a:2,", b"a\n");
        let (m, stats) = f.open();
        assert!(stats.index_written);
        assert_eq!(m.messages().len(), 1);
        drop(m);
        assert_eq!(fs::read(&secret).unwrap(), content);

        // The lock file a link: refused (never created, truncated or written through).
        fs::remove_file(f.dir.join(LOCK_FILE)).unwrap();
        std::os::unix::fs::symlink(&secret, f.dir.join(LOCK_FILE)).unwrap();
        let err = f.store.open_maildir("bob@example.org", None).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(fs::read(&secret).unwrap(), content);
        // A link to a file that does not exist yet is not created either.
        fs::remove_file(f.dir.join(LOCK_FILE)).unwrap();
        let missing = f._tmp.path().join("created-through-a-link");
        std::os::unix::fs::symlink(&missing, f.dir.join(LOCK_FILE)).unwrap();
        assert!(f.store.open_maildir("bob@example.org", None).is_err());
        assert!(!missing.exists());
    }

    #[test]
    fn an_index_that_is_a_fifo_or_a_device_is_rebuilt_without_reading_it() {
        let f = fixture();
        f.put("cur", "1.a:2,", b"a\n");
        fs::create_dir_all(&f.dir).unwrap();
        let status = std::process::Command::new("mkfifo")
            .arg(f.dir.join(index::INDEX_FILE))
            .status()
            .unwrap();
        assert!(status.success());
        // Without O_NONBLOCK and the fstat check, this open would wait forever for a writer.
        let (m, stats) = f.open();
        assert_eq!(stats.index, IndexOutcome::Corrupt);
        assert!(stats.index_written);
        assert_eq!(uids(&m), vec!["1.a"]);
        drop(m);
        assert!(fs::symlink_metadata(f.dir.join(index::INDEX_FILE))
            .unwrap()
            .is_file());

        fs::remove_file(f.dir.join(index::INDEX_FILE)).unwrap();
        std::os::unix::fs::symlink("/dev/zero", f.dir.join(index::INDEX_FILE)).unwrap();
        let (m, stats) = f.open();
        assert_eq!(stats.index, IndexOutcome::Corrupt);
        assert_eq!(uids(&m), vec!["1.a"]);
        drop(m);
        assert!(fs::symlink_metadata(f.dir.join(index::INDEX_FILE))
            .unwrap()
            .is_file());
    }

    #[test]
    fn a_name_too_long_for_cur_is_moved_under_a_fresh_name() {
        let f = fixture();
        let long = format!("1000.{}", "x".repeat(249));
        assert_eq!(long.len(), 254);
        f.put("new", &long, b"long\n");
        f.put("new", "2000.b", b"b\n");
        let (mut m, stats) = f.open();
        assert_eq!(stats.moved_from_new, 2);
        assert_eq!(m.messages().len(), 2);
        let mut bodies = vec![read_message(&mut m, 0), read_message(&mut m, 1)];
        bodies.sort();
        assert_eq!(bodies, vec![b"b\n".to_vec(), b"long\n".to_vec()]);
        assert!(f.files("new").is_empty());
    }

    #[test]
    fn a_message_that_cannot_be_moved_is_skipped_and_new_is_not_listed_forever() {
        let f = fixture();
        // Its name is taken in cur/, and a fresh base name with its 252-octet info part would
        // be too long: it cannot be moved at all.
        let long = format!("1:{}", "S".repeat(252));
        f.put("cur", &long, b"in cur\n");
        f.put("new", &long, b"stuck\n");
        f.put("new", "2000.b", b"b\n");
        let (mut m, stats) = f.open();
        assert_eq!(stats.skipped, 1);
        assert_eq!(stats.moved_from_new, 1);
        assert_eq!(uids(&m), vec!["1", "2000.b"]);
        assert_eq!(read_message(&mut m, 0), b"in cur\n");
        assert_eq!(read_message(&mut m, 1), b"b\n");
        drop(m);
        assert_eq!(f.files("new"), vec![long.clone()]);
        // Once the mtimes settle, the fast path is taken again despite the stuck file.
        f.age();
        drop(f.open());
        let (_, stats) = f.open();
        assert!(stats.fast_path);
    }

    #[test]
    fn old_files_of_tmp_are_removed_fresh_ones_kept() {
        let f = fixture();
        f.put("tmp", "stale", b"half a message");
        f.put("tmp", "fresh", b"being written");
        f.put("tmp", "nearly", b"35 hours old");
        let set_age = |name: &str, age: Duration| {
            File::options()
                .write(true)
                .open(f.dir.join("tmp").join(name))
                .unwrap()
                .set_modified(SystemTime::now() - age)
                .unwrap();
        };
        set_age("stale", TMP_MAX_AGE + Duration::from_secs(60));
        set_age("nearly", Duration::from_secs(35 * 3600));
        // A link to an old file outside, and an old directory: neither is touched.
        let (secret, content) = outside(&f);
        File::options()
            .write(true)
            .open(&secret)
            .unwrap()
            .set_modified(SystemTime::now() - TMP_MAX_AGE * 2)
            .unwrap();
        std::os::unix::fs::symlink(&secret, f.dir.join("tmp/link")).unwrap();
        fs::create_dir(f.dir.join("tmp/dir")).unwrap();
        let (_, stats) = f.open();
        assert_eq!(stats.tmp_removed, 1);
        assert_eq!(f.files("tmp"), vec!["dir", "fresh", "link", "nearly"]);
        assert_eq!(fs::read(&secret).unwrap(), content);
    }

    #[test]
    fn a_killed_delivery_with_no_delivery_since_is_cleaned_on_the_fast_path() {
        let f = fixture();
        f.deliver(b"one\n");
        drop(f.open());
        f.age();
        drop(f.open());
        let (_, stats) = f.open();
        assert!(stats.fast_path);
        // A delivery killed after writing tmp/, long ago; nothing delivered since.
        f.put("tmp", "killed", b"half a message");
        let old = SystemTime::now() - TMP_MAX_AGE - Duration::from_secs(60);
        File::options()
            .write(true)
            .open(f.dir.join("tmp/killed"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        // tmp/ changed recently (the file was just created): not looked at yet.
        let (_, stats) = f.open();
        assert!(stats.fast_path);
        assert_eq!(stats.tmp_removed, 0);
        // Once tmp/ itself is as old as its stale file, the fast path cleans it.
        File::open(f.dir.join("tmp"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let (m, stats) = f.open();
        assert!(stats.fast_path);
        assert_eq!(stats.tmp_removed, 1);
        assert!(f.files("tmp").is_empty());
        assert_eq!(m.messages().len(), 1);
    }

    #[test]
    fn a_maildrop_owned_by_another_uid_is_refused() {
        let f = fixture();
        f.put("cur", "1.a:2,", b"a\n");
        let mine = fs::metadata(&f.dir).unwrap().uid();
        let other = Owner {
            uid: Some(mine.wrapping_add(1)),
            gid: None,
        };
        let err = f
            .store
            .open_maildir_as("bob@example.org", None, other)
            .unwrap_err();
        assert!(
            matches!(err, StoreError::WrongOwner { expected, found, .. }
                if expected == mine.wrapping_add(1) && found == mine),
            "{err}"
        );
        assert!(err.to_string().contains("owned by uid"), "{err}");
        assert!(matches!(
            f.store
                .deliver_as("bob@example.org", None, other, &mut &b"x"[..]),
            Err(StoreError::WrongOwner { .. })
        ));
        let me = Owner {
            uid: Some(mine),
            gid: None,
        };
        let (m, _) = f
            .store
            .open_maildir_as("bob@example.org", None, me)
            .unwrap();
        assert_eq!(uids(&m), vec!["1.a"]);
    }

    #[test]
    fn delivery_as_root_gives_the_files_to_the_owner() {
        let f = fixture();
        let root = rustix::process::geteuid().is_root();
        // nobody/nogroup on Debian; any ids other than root's do.
        let owner = Owner {
            uid: Some(65534),
            gid: Some(65534),
        };
        let d = f
            .store
            .deliver_as("bob@example.org", None, owner, &mut &b"hello\n"[..])
            .unwrap();
        let expected = if root {
            65534
        } else {
            fs::metadata(f._tmp.path()).unwrap().uid()
        };
        for path in [
            d.path.clone(),
            f.dir.clone(),
            f.dir.join("new"),
            f.dir.join("cur"),
            f.dir.join("tmp"),
        ] {
            let meta = fs::metadata(&path).unwrap();
            assert_eq!(meta.uid(), expected, "{}", path.display());
            if root {
                assert_eq!(meta.gid(), 65534, "{}", path.display());
            }
        }
        // The server, given the same owner, opens it.
        let (m, _) = f
            .store
            .open_maildir_as("bob@example.org", None, owner)
            .unwrap();
        assert_eq!(m.messages().len(), 1);
    }

    fn delivered_base(d: &Delivered) -> String {
        let name = d.path.file_name().unwrap().to_str().unwrap();
        name.split(':').next().unwrap().to_owned()
    }

    fn dovecot_fixture() -> Fixture {
        let mut f = fixture();
        f.store = MaildirStore::new(f.store.template.clone()).with_uidl(UidlScheme::Dovecot);
        f
    }

    /// Dovecot's uidlist as Dovecot 2.3 wrote it for three messages; its uids are not in
    /// delivery order (a message restored from a backup got a later uid).
    const UIDLIST: &str = "3 V1796293094 N5 G2857e61ee641116bd65f000083ecc375\n\
        1 W6 :1700000003.M3P1.host\n\
        2 W6 :1700000001.M1P1.host\n\
        4 P O1 :1700000002.M2P1.host\n";

    fn seed_dovecot(f: &Fixture) {
        for i in 1..=3 {
            f.put(
                "cur",
                &format!("170000000{i}.M{i}P1.host:2,S"),
                format!("m{i}\n\n").as_bytes(),
            );
        }
        fs::write(f.dir.join("dovecot-uidlist"), UIDLIST).unwrap();
    }

    #[test]
    fn dovecot_unique_ids_and_order_are_dovecots() {
        let f = dovecot_fixture();
        seed_dovecot(&f);
        let (m, _) = f.open();
        // The one with a POP3 order (O1) first, then by uid; P with no value: the base name.
        assert_eq!(
            uids(&m),
            [
                "1700000002.M2P1.host",
                "000000016b1141e6",
                "000000026b1141e6"
            ]
        );
        assert_eq!(read_message(&mut { m }, 0), b"m2\n\n");
        // Nothing new: the uidlist is left as it was.
        assert_eq!(
            fs::read_to_string(f.dir.join("dovecot-uidlist")).unwrap(),
            UIDLIST
        );
    }

    #[test]
    fn dovecot_uids_for_new_mail_are_recorded_the_dovecot_way() {
        let f = dovecot_fixture();
        seed_dovecot(&f);
        drop(f.open());
        let first = f.deliver(b"new one\n");
        let second = f.deliver(b"new two\n");
        let (m, _) = f.open();
        let u = uids(&m);
        assert_eq!(u.len(), 5);
        assert_eq!(u[3..], ["000000056b1141e6", "000000066b1141e6"]);
        let text = fs::read_to_string(f.dir.join("dovecot-uidlist")).unwrap();
        let base = |d: &Delivered| delivered_base(d);
        assert_eq!(
            text,
            format!(
                "{}{}5 :{}\n6 :{}\n",
                UIDLIST
                    .replacen("N5", "N7", 1)
                    .lines()
                    .next()
                    .unwrap()
                    .to_owned()
                    + "\n",
                UIDLIST.split_once('\n').unwrap().1,
                base(&first),
                base(&second)
            )
        );
        assert!(!f.dir.join("dovecot-uidlist.lock").exists());
        // The same unique-ids at the next login, from the fast path, with nothing rewritten.
        let before = fs::metadata(f.dir.join("dovecot-uidlist")).unwrap();
        drop(m);
        f.age();
        drop(f.open()); // records the aged mtimes in the index
        let (m, stats) = f.open();
        assert!(stats.fast_path);
        assert_eq!(uids(&m), u);
        let after = fs::metadata(f.dir.join("dovecot-uidlist")).unwrap();
        assert_eq!(
            (before.ino(), before.mtime_nsec()),
            (after.ino(), after.mtime_nsec())
        );
    }

    #[test]
    fn deletions_in_dovecot_order_delete_the_right_files_and_keep_the_index_in_order() {
        let f = dovecot_fixture();
        seed_dovecot(&f);
        let (mut m, _) = f.open();
        // Message 1 is 1700000002 (O1), message 3 is 1700000001 (uid 2).
        m.apply_deletions(&[0, 2]).unwrap();
        drop(m);
        assert_eq!(f.files("cur"), ["1700000003.M3P1.host:2,S"]);
        f.age();
        let (m, _) = f.open();
        assert_eq!(uids(&m), ["000000016b1141e6"]);
    }

    #[test]
    fn a_maildrop_without_a_uidlist_gets_one_as_dovecot_makes_it() {
        let f = dovecot_fixture();
        f.deliver(b"a\n");
        f.deliver(b"b\n");
        let (m, _) = f.open();
        let text = fs::read_to_string(f.dir.join("dovecot-uidlist")).unwrap();
        let list = uidlist::parse(text.as_bytes()).unwrap();
        let v = format!("{:08x}", list.uid_validity);
        assert_eq!(uids(&m), [format!("00000001{v}"), format!("00000002{v}")]);
        assert_eq!(list.next_uid, 3);
        // An empty maildrop writes nothing.
        let g = dovecot_fixture();
        drop(g.open());
        assert!(!g.dir.join("dovecot-uidlist").exists());
    }

    #[test]
    fn a_hostile_uidlist_is_an_error_never_a_guess() {
        let f = dovecot_fixture();
        seed_dovecot(&f);
        let path = f.dir.join("dovecot-uidlist");
        let outside = tempfile::NamedTempFile::new().unwrap();
        fs::write(outside.path(), UIDLIST).unwrap();
        let bad: [&dyn Fn(); 3] = [
            &|| fs::write(&path, "3 V1 N2\n2 :a\n1 :b\n").unwrap(),
            &|| std::os::unix::fs::symlink(outside.path(), &path).unwrap(),
            &|| {
                let ok = std::process::Command::new("mkfifo")
                    .arg(&path)
                    .status()
                    .unwrap();
                assert!(ok.success());
            },
        ];
        for make in bad {
            let _ = fs::remove_file(&path);
            make();
            match f.store.open_maildir("bob@example.org", None) {
                Err(e @ StoreError::DovecotUidlist { .. }) => {
                    assert_eq!(e.lasting(), crate::Lasting::Temporary);
                    assert!(e.to_string().contains("dovecot-uidlist"), "{e}");
                }
                other => panic!("{other:?}"),
            }
        }
        // Every message is still there.
        assert_eq!(f.files("cur").len(), 3);
    }

    #[test]
    fn new_mail_waits_while_dovecot_holds_its_lock() {
        let f = dovecot_fixture();
        seed_dovecot(&f);
        let new = f.deliver(b"new\n");
        let lock = f.dir.join("dovecot-uidlist.lock");
        // Held by a live process of this host (this one), as Dovecot's would be.
        let host = fs::read_to_string("/etc/hostname").unwrap_or_default();
        fs::write(&lock, format!("{}:{}", std::process::id(), host.trim())).unwrap();
        let (m, stats) = f.open();
        assert_eq!(
            uids(&m).len(),
            3,
            "the new message is not shown without a uid"
        );
        assert_eq!(stats.skipped, 1);
        drop(m);
        fs::remove_file(&lock).unwrap();
        let (m, _) = f.open();
        assert_eq!(uids(&m).len(), 4);
        assert!(fs::read_to_string(f.dir.join("dovecot-uidlist"))
            .unwrap()
            .ends_with(&format!("5 :{}\n", delivered_base(&new))));
    }

    #[test]
    fn a_read_only_listing_gives_dovecots_unique_ids_and_writes_nothing() {
        use crate::listing::ReadOnlyListing;
        let f = dovecot_fixture();
        seed_dovecot(&f);
        f.put("new", "1700000009.M9P1.host", b"never served\n");
        let before = tree(&f.dir);
        let listing = ReadOnlyListing::list(&f.dir, Owner::default(), UidlScheme::Dovecot).unwrap();
        assert_eq!(tree(&f.dir), before, "nothing created, moved or written");
        let listed_uids: Vec<&str> = listing.messages.iter().map(|m| m.uid.as_str()).collect();
        // In delivery order; the message without a uid (never served) keeps facteur's.
        assert_eq!(
            listed_uids,
            [
                "000000026b1141e6",
                "1700000002.M2P1.host",
                "000000016b1141e6",
                "1700000009.M9P1.host"
            ]
        );
        // The same unique-ids as the server gives.
        let (m, _) = f.open();
        let mut served = uids(&m);
        served.sort();
        let mut listed: Vec<String> = listed_uids[..3].iter().map(|u| u.to_string()).collect();
        listed.push("000000056b1141e6".into());
        listed.sort();
        assert_eq!(served, listed);
        drop(m);
        fs::write(f.dir.join("dovecot-uidlist"), "garbage").unwrap();
        assert!(matches!(
            ReadOnlyListing::list(&f.dir, Owner::default(), UidlScheme::Dovecot),
            Err(StoreError::DovecotUidlist { .. })
        ));
    }

    #[test]
    fn an_unchanged_uidlist_is_not_read_again_and_a_changed_one_is() {
        let f = dovecot_fixture();
        seed_dovecot(&f);
        let first = uids(&f.open().0);
        // The same inode, size and mtime, other bytes: served from the parsed copy.
        let path = f.dir.join("dovecot-uidlist");
        let meta = fs::metadata(&path).unwrap();
        let garbage = vec![b'#'; UIDLIST.len()];
        let mut file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all(&garbage).unwrap();
        file.set_modified(meta.modified().unwrap()).unwrap();
        drop(file);
        assert_eq!(fs::metadata(&path).unwrap().ino(), meta.ino());
        assert_eq!(uids(&f.open().0), first, "not read again");
        // Any change the cache can see (here the mtime) and the file is read again.
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(SystemTime::now())
            .unwrap();
        assert!(matches!(
            f.store.open_maildir("bob@example.org", None),
            Err(StoreError::DovecotUidlist { .. })
        ));
    }
}
