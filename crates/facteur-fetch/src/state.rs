//! What `facteur fetch` fetched from each account: the unique-ids of the messages that are
//! safe locally, when each was first fetched, and the journal that closes the window between
//! "written locally" and "recorded".
//!
//! Files, in the state folder (mode 700), for an account whose key is `K` (its maildrop's
//! identity as a file name: see [`super::config::mailbox_identity`]):
//! - `K.state`: the snapshot, replaced atomically (written to `K.state.tmp`, fsync, rename,
//!   fsync of the folder): a first line `facteur-fetch-state 1`, then `<unique-id> <unix time>`
//!   per line.
//! - `K.journal`: appended to during a run, and folded into the snapshot (then removed) at the
//!   end of a run and at the start of the next one:
//!   - `P <uid> maildir <folder> <tmp name> <new name>`: a message is whole and durable (by
//!     fsync or syncfs) in the Maildir's `tmp/` and is about to be renamed into `new/`;
//!   - `P <uid> mbox <file> <start> <end> <sha-256> <spool offset>`: a message is about to be
//!     appended to an mbox file at `start`, to end at `end`, with this SHA-256 of its bytes;
//!   - `D <uid> <unix time>`: the message is delivered and durable.
//!
//!   Paths are written with `%XX` escapes for `%`, spaces, controls and non-ASCII octets. A last
//!   line without its newline was cut by a crash and is ignored (it was never fsynced, so
//!   nothing that depends on it happened).
//! - `K.lock`: held (flock) by the run that owns the account, so two runs never interleave.
//! - `K.mbox-spool`: messages bound for an mbox, before they are appended (see `dest`).
//!
//! A `P` without its `D`, found when the state is opened, is a run that stopped between the
//! two; [`super::dest::recover`] looks at the destination to tell whether that message arrived
//! (then it counts as fetched) or not (then what was left of it is removed, and it is fetched
//! again). Either way, nothing is lost and nothing is there twice.
//!
//! facteur before maildrop identities keyed the files by user, host and port
//! (`alice@127.0.0.1_995`); such files are found by [`legacy_keys`], folded into the state of
//! their identity and removed, on the first run of the account (see `fetch`).
//!
//! What this module must never do: forget a unique-id whose `D` was written, or write the
//! snapshot in place (a crash would leave half a file).

use super::config::STATE_LOCK_WAIT;
use facteur_proto::encoding::{decode_hex, hex, percent_decode, percent_encode};
use facteur_proto::Uidl;
use facteur_store::durable::sync_dir;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The pause between two tries of the account's lock (for [`STATE_LOCK_WAIT`] in all).
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// The first line of a snapshot.
const SNAPSHOT_HEADER: &str = "facteur-fetch-state 1";

/// Why the state of an account cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("another facteur fetch is running for this account (it holds {})", .0.display())]
    Locked(PathBuf),
    #[error("state file {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("state file {}, line {line}: {reason}; move the file away to start afresh (every message still on the server would then be fetched again)", path.display())]
    Corrupt {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A message that was about to be committed when a run stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pending {
    Maildir {
        uid: Uidl,
        /// The Maildir (holding tmp/, new/, cur/).
        dir: PathBuf,
        /// The file's name in `tmp/`.
        tmp: String,
        /// Its name in `new/` (in `cur/`, the part before `:2,`).
        name: String,
    },
    Mbox {
        uid: Uidl,
        path: PathBuf,
        start: u64,
        end: u64,
        sha256: [u8; 32],
        /// Where the same bytes are in the account's spool file.
        spool_offset: u64,
    },
}

impl Pending {
    pub fn uid(&self) -> &Uidl {
        match self {
            Pending::Maildir { uid, .. } | Pending::Mbox { uid, .. } => uid,
        }
    }

    fn line(&self) -> String {
        match self {
            Pending::Maildir {
                uid,
                dir,
                tmp,
                name,
            } => format!(
                "P {uid} maildir {} {} {}\n",
                escape(dir.as_os_str().as_bytes()),
                escape(tmp.as_bytes()),
                escape(name.as_bytes())
            ),
            Pending::Mbox {
                uid,
                path,
                start,
                end,
                sha256,
                spool_offset,
            } => format!(
                "P {uid} mbox {} {start} {end} {} {spool_offset}\n",
                escape(path.as_os_str().as_bytes()),
                hex(sha256)
            ),
        }
    }

    fn parse(words: &[&str]) -> Option<Pending> {
        match words {
            [uid, "maildir", dir, tmp, name] => Some(Pending::Maildir {
                uid: Uidl::new(*uid)?,
                dir: PathBuf::from(OsString::from_vec(unescape(dir)?)),
                tmp: String::from_utf8(unescape(tmp)?).ok()?,
                name: String::from_utf8(unescape(name)?).ok()?,
            }),
            [uid, "mbox", path, start, end, sha, spool] => Some(Pending::Mbox {
                uid: Uidl::new(*uid)?,
                path: PathBuf::from(OsString::from_vec(unescape(path)?)),
                start: start.parse().ok()?,
                end: end.parse().ok()?,
                sha256: decode_hex(sha)?,
                spool_offset: spool.parse().ok()?,
            }),
            _ => None,
        }
    }
}

/// The state of one account, locked for this process (or read without a lock, for
/// `--dry-run`).
#[derive(Debug)]
pub struct AccountState {
    dir: PathBuf,
    key: String,
    /// Held for the life of this value; `None` when read-only.
    _lock: Option<File>,
    /// Unique-ids delivered, with the time each was first fetched (Unix seconds).
    fetched: BTreeMap<Uidl, u64>,
    /// `P` lines without a `D`, found at open.
    pending: Vec<Pending>,
    /// The Maildirs named by the `P` lines found at open.
    journal_maildirs: Vec<PathBuf>,
    journal: Option<File>,
    read_only: bool,
}

impl AccountState {
    /// Lock and read the state of account `key` in `dir` (created, mode 700, if needed).
    pub fn open(dir: &Path, key: &str) -> Result<Self, StateError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        let lock_path = dir.join(format!("{key}.lock"));
        let lock = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        let tries = (STATE_LOCK_WAIT.as_millis() / LOCK_RETRY.as_millis()).max(1);
        for attempt in 1..=tries {
            match lock.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) if attempt < tries => {
                    std::thread::sleep(LOCK_RETRY);
                }
                Err(fs::TryLockError::WouldBlock) => return Err(StateError::Locked(lock_path)),
                Err(fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
            }
        }
        let mut state = Self::read(dir, key)?;
        state._lock = Some(lock);
        state.read_only = false;
        Ok(state)
    }

    /// Read the state without locking or changing anything (a missing folder is an empty
    /// state). `P` lines stay pending: recovery is not run.
    pub fn open_read_only(dir: &Path, key: &str) -> Result<Self, StateError> {
        Self::read(dir, key)
    }

    fn read(dir: &Path, key: &str) -> Result<Self, StateError> {
        let mut state = AccountState {
            dir: dir.to_path_buf(),
            key: key.to_string(),
            _lock: None,
            fetched: BTreeMap::new(),
            pending: Vec::new(),
            journal_maildirs: Vec::new(),
            journal: None,
            read_only: true,
        };
        state.read_snapshot()?;
        state.replay_journal()?;
        Ok(state)
    }

    fn snapshot_path(&self) -> PathBuf {
        self.dir.join(format!("{}.state", self.key))
    }

    fn journal_path(&self) -> PathBuf {
        self.dir.join(format!("{}.journal", self.key))
    }

    /// The account's mbox spool file (see `dest`).
    pub fn spool_path(&self) -> PathBuf {
        self.dir.join(format!("{}.mbox-spool", self.key))
    }

    fn read_snapshot(&mut self) -> Result<(), StateError> {
        let path = self.snapshot_path();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let corrupt = |line: usize, reason: &str| StateError::Corrupt {
            path: path.clone(),
            line,
            reason: reason.to_string(),
        };
        for (i, line) in BufReader::new(file).lines().enumerate() {
            let line = line.map_err(io_err(&path))?;
            if i == 0 {
                if line != SNAPSHOT_HEADER {
                    return Err(corrupt(1, "not a facteur fetch state file"));
                }
                continue;
            }
            let mut words = line.split(' ');
            match (
                words.next().and_then(Uidl::new),
                words.next().and_then(|t| t.parse::<u64>().ok()),
                words.next(),
            ) {
                (Some(uid), Some(time), None) => {
                    self.fetched.insert(uid, time);
                }
                _ => return Err(corrupt(i + 1, "expected a unique-id and a time")),
            }
        }
        Ok(())
    }

    fn replay_journal(&mut self) -> Result<(), StateError> {
        let path = self.journal_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let mut pending: Vec<Pending> = Vec::new();
        // Only whole lines: a last line without its newline was never fsynced.
        let whole = match bytes.iter().rposition(|&b| b == b'\n') {
            Some(i) => bytes.get(..=i).unwrap_or_default(),
            None => &[],
        };
        for line in whole.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(line) = std::str::from_utf8(line) else {
                continue;
            };
            let words: Vec<&str> = line.split(' ').collect();
            match words.as_slice() {
                ["P", rest @ ..] => {
                    if let Some(p) = Pending::parse(rest) {
                        if let Pending::Maildir { dir, .. } = &p {
                            if !self.journal_maildirs.contains(dir) {
                                self.journal_maildirs.push(dir.clone());
                            }
                        }
                        pending.retain(|q| q.uid() != p.uid());
                        pending.push(p);
                    }
                }
                ["D", uid, time] => {
                    if let (Some(uid), Ok(time)) = (Uidl::new(*uid), time.parse::<u64>()) {
                        pending.retain(|q| *q.uid() != uid);
                        self.fetched.entry(uid).or_insert(time);
                    }
                }
                // A line this version does not know: skipping it can only make a message be
                // fetched again, never lost.
                _ => {}
            }
        }
        self.pending = pending;
        Ok(())
    }

    /// Messages that were being committed when a run stopped.
    pub fn pending(&self) -> &[Pending] {
        &self.pending
    }

    /// The outcome of the recovery of the pending messages: those in `arrived` count as
    /// fetched (at `now`), the others are forgotten. Then the state is compacted.
    pub fn finish_recovery(&mut self, arrived: &[Uidl], now: u64) -> Result<(), StateError> {
        if self.pending.is_empty() && arrived.is_empty() && !self.journal_path().exists() {
            // Nothing to fold in: the snapshot is as it should be.
            return Ok(());
        }
        for uid in arrived {
            self.fetched.entry(uid.clone()).or_insert(now);
        }
        self.pending.clear();
        self.compact(|_| true)
    }

    /// True if the message with this unique-id was fetched.
    pub fn contains(&self, uid: &Uidl) -> bool {
        self.fetched.contains_key(uid)
    }

    /// When the message was first fetched (Unix seconds).
    pub fn fetched_at(&self, uid: &Uidl) -> Option<u64> {
        self.fetched.get(uid).copied()
    }

    /// The number of unique-ids recorded.
    pub fn len(&self) -> usize {
        self.fetched.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fetched.is_empty()
    }

    fn journal(&mut self) -> Result<&mut File, StateError> {
        if self.read_only {
            return Err(StateError::Io {
                path: self.journal_path(),
                source: io::Error::other("the state was opened read-only"),
            });
        }
        if self.journal.is_none() {
            let path = self.journal_path();
            let existed = path.exists();
            let f = OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(&path)
                .map_err(io_err(&path))?;
            if !existed {
                // Its lines are durable only if its name is.
                sync_dir(&self.dir).map_err(io_err(&self.dir))?;
            }
            self.journal = Some(f);
        }
        let path = self.journal_path();
        self.journal
            .as_mut()
            .ok_or_else(|| io_err(&path)(io::Error::other("no journal")))
    }

    /// Append `P` lines and fsync them (with the `D` lines before them): after this, the
    /// messages may be moved into place.
    pub fn record_pending(&mut self, entries: &[Pending]) -> Result<(), StateError> {
        if entries.is_empty() {
            return Ok(());
        }
        let text: String = entries.iter().map(Pending::line).collect();
        let path = self.journal_path();
        let j = self.journal()?;
        j.write_all(text.as_bytes()).map_err(io_err(&path))?;
        #[cfg(test)]
        for e in entries {
            if let Pending::Maildir { uid, dir, tmp, .. } = e {
                let file = dir.join("tmp").join(tmp);
                crate::optrace::record(crate::optrace::Op::Pending(uid.clone(), file));
            }
        }
        j.sync_data().map_err(io_err(&path))?;
        #[cfg(test)]
        crate::optrace::record(crate::optrace::Op::JournalSynced);
        Ok(())
    }

    /// Append `D` lines: the messages count as fetched from now on. They become durable at
    /// the next fsync of the journal ([`Self::record_pending`], [`Self::sync_journal`]); until
    /// then, after a crash, their `P` lines and the destination tell the same.
    pub fn record_done(&mut self, uids: &[Uidl], now: u64) -> Result<(), StateError> {
        if uids.is_empty() {
            return Ok(());
        }
        let mut text = String::new();
        for uid in uids {
            text.push_str(&format!("D {uid} {now}\n"));
        }
        let path = self.journal_path();
        let j = self.journal()?;
        j.write_all(text.as_bytes()).map_err(io_err(&path))?;
        for uid in uids {
            self.fetched.entry(uid.clone()).or_insert(now);
        }
        Ok(())
    }

    /// fsync what was appended to the journal (the `D` lines since the last fsync).
    pub fn sync_journal(&mut self) -> Result<(), StateError> {
        let path = self.journal_path();
        match self.journal.as_mut() {
            Some(j) => {
                j.sync_data().map_err(io_err(&path))?;
                #[cfg(test)]
                crate::optrace::record(crate::optrace::Op::JournalSynced);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The Maildirs that the journal's `P` lines name, with a `D` or without.
    pub fn journal_maildirs(&self) -> &[PathBuf] {
        &self.journal_maildirs
    }

    /// Write the snapshot with the unique-ids for which `keep` is true (those still on the
    /// server), atomically, then remove the journal.
    pub fn compact(&mut self, keep: impl Fn(&Uidl) -> bool) -> Result<(), StateError> {
        if self.read_only {
            return Ok(());
        }
        self.fetched.retain(|uid, _| keep(uid));
        let path = self.snapshot_path();
        let tmp = self.dir.join(format!("{}.state.tmp", self.key));
        let mut text = String::with_capacity(32 + self.fetched.len() * 40);
        text.push_str(SNAPSHOT_HEADER);
        text.push('\n');
        for (uid, time) in &self.fetched {
            text.push_str(&format!("{uid} {time}\n"));
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        f.write_all(text.as_bytes()).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(&self.dir).map_err(io_err(&self.dir))?;
        // The snapshot now holds everything the journal said; the journal can go.
        self.journal = None;
        self.journal_maildirs.clear();
        let journal = self.journal_path();
        match fs::remove_file(&journal) {
            Ok(()) => sync_dir(&self.dir).map_err(io_err(&self.dir)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&journal)(e)),
        }
    }
}

impl AccountState {
    /// Take in what `other` (another key's state, see [`legacy_keys`]) knows: a unique-id
    /// fetched in either counts as fetched, since the earlier of the two times. The snapshot is
    /// written at once (unless read-only), so `other`'s files may then be removed.
    pub fn absorb(&mut self, other: &AccountState) -> Result<(), StateError> {
        for (uid, time) in &other.fetched {
            let t = self.fetched.entry(uid.clone()).or_insert(*time);
            *t = (*t).min(*time);
        }
        self.compact(|_| true)
    }

    /// Remove this state's files, once [`absorb`](Self::absorb)ed by another state; the lock
    /// goes last.
    pub fn remove_files(self) -> Result<(), StateError> {
        if self.read_only {
            return Ok(());
        }
        let tmp = self.dir.join(format!("{}.state.tmp", self.key));
        let lock = self.dir.join(format!("{}.lock", self.key));
        for path in [
            self.snapshot_path(),
            self.journal_path(),
            self.spool_path(),
            tmp,
            lock,
        ] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        sync_dir(&self.dir).map_err(io_err(&self.dir))
    }
}

/// The keys of the states in `dir` that facteur wrote before maildrop identities
/// (`<user>@<host>_<port>`), for which `wanted(user, host, port)` is true: the states to
/// [`absorb`](AccountState::absorb) so that an upgrade fetches nothing again. A missing folder
/// has none.
pub fn legacy_keys(
    dir: &Path,
    wanted: impl Fn(&str, &str, u16) -> bool,
) -> Result<Vec<String>, StateError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut keys = std::collections::BTreeSet::new();
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(key) = name
            .strip_suffix(".state")
            .or_else(|| name.strip_suffix(".journal"))
        else {
            continue;
        };
        if let Some((user, host, port)) = super::config::parse_legacy_state_key(key) {
            if wanted(&user, &host, port) {
                keys.insert(key.to_string());
            }
        }
    }
    Ok(keys.into_iter().collect())
}

/// `%XX` for '%', controls, space and non-ASCII: a path as one word of a journal line.
pub(crate) fn escape(b: &[u8]) -> String {
    let mut out = percent_encode(b, |c| (0x21..=0x7e).contains(&c));
    if out.is_empty() {
        out.push('%');
    }
    out
}

fn unescape(s: &str) -> Option<Vec<u8>> {
    if s == "%" {
        return Some(Vec::new());
    }
    percent_decode(s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(s: &str) -> Uidl {
        Uidl::new(s).unwrap()
    }

    #[test]
    fn escapes_round_trip() {
        for raw in [&b"/home/a b/Mail%"[..], b"\xff\n", b"", b"plain"] {
            assert_eq!(unescape(&escape(raw)).unwrap(), raw);
            assert!(!escape(raw).contains([' ', '\n']));
        }
        let sha = [7u8; 32];
        assert_eq!(decode_hex(&hex(&sha)), Some(sha));
        assert_eq!(decode_hex::<32>("zz"), None);
    }

    #[test]
    fn records_survive_a_reopen_and_the_lock_excludes() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = AccountState::open(dir.path(), "k").unwrap();
        assert!(matches!(
            AccountState::open(dir.path(), "k"),
            Err(StateError::Locked(_))
        ));
        s.record_done(&[uid("a"), uid("b")], 100).unwrap();
        let p = Pending::Maildir {
            uid: uid("c"),
            dir: "/x y/Maildir".into(),
            tmp: "t1".into(),
            name: "t1,S=3".into(),
        };
        s.record_pending(std::slice::from_ref(&p)).unwrap();
        drop(s);

        // A crash: the journal is still there and is replayed.
        let mut s = AccountState::open(dir.path(), "k").unwrap();
        assert!(s.contains(&uid("a")) && s.contains(&uid("b")));
        assert_eq!(s.fetched_at(&uid("a")), Some(100));
        assert_eq!(s.pending(), [p]);
        s.finish_recovery(&[uid("c")], 200).unwrap();
        assert!(!dir.path().join("k.journal").exists());
        drop(s);

        let mut s = AccountState::open(dir.path(), "k").unwrap();
        assert_eq!(s.len(), 3);
        assert!(s.pending().is_empty());
        assert_eq!(s.fetched_at(&uid("c")), Some(200));
        // Compaction keeps what is still on the server.
        s.compact(|u| u.as_str() != "b").unwrap();
        drop(s);
        let s = AccountState::open(dir.path(), "k").unwrap();
        assert!(s.contains(&uid("a")) && !s.contains(&uid("b")));
    }

    #[test]
    fn a_torn_last_line_and_done_pendings() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("k.journal");
        let sha = hex(&[1u8; 32]);
        std::fs::write(
            &journal,
            format!(
                "P a mbox /m 0 10 {sha} 0\nP b mbox /m 10 20 {sha} 10\nD a 5\nfuture line\nD b 6"
            ),
        )
        .unwrap();
        let s = AccountState::open_read_only(dir.path(), "k").unwrap();
        assert!(s.contains(&uid("a")));
        // "D b 6" had no newline: torn, so b is still pending.
        assert!(!s.contains(&uid("b")));
        assert_eq!(s.pending().len(), 1);
        assert_eq!(s.pending()[0].uid(), &uid("b"));
    }

    #[test]
    fn a_foreign_snapshot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k.state"), "hello\n").unwrap();
        let e = AccountState::open(dir.path(), "k").unwrap_err().to_string();
        assert!(e.contains("not a facteur fetch state file"), "{e}");
        std::fs::write(
            dir.path().join("k.state"),
            format!("{SNAPSHOT_HEADER}\nuid notatime\n"),
        )
        .unwrap();
        let e = AccountState::open(dir.path(), "k").unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn legacy_states_are_absorbed_then_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut old = AccountState::open(dir.path(), "alice@127.0.0.1_995").unwrap();
        old.record_done(&[uid("a"), uid("b")], 50).unwrap();
        drop(old);
        std::fs::write(dir.path().join("bob@127.0.0.1_995.state"), "x").unwrap();
        std::fs::write(
            dir.path().join("alice@localhost.state"),
            format!("{SNAPSHOT_HEADER}\nb 10\nc 20\n"),
        )
        .unwrap();
        let keys = legacy_keys(dir.path(), |u, h, _| u == "alice" && h == "127.0.0.1").unwrap();
        assert_eq!(keys, ["alice@127.0.0.1_995"]);
        let mut new = AccountState::open(dir.path(), "alice@localhost").unwrap();
        let old = AccountState::open(dir.path(), &keys[0]).unwrap();
        new.absorb(&old).unwrap();
        old.remove_files().unwrap();
        drop(new);
        let new = AccountState::open(dir.path(), "alice@localhost").unwrap();
        assert_eq!(
            (
                new.fetched_at(&uid("a")),
                new.fetched_at(&uid("b")),
                new.fetched_at(&uid("c"))
            ),
            (Some(50), Some(10), Some(20))
        );
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("alice@127"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert!(dir.path().join("bob@127.0.0.1_995.state").exists());
        assert!(legacy_keys(&dir.path().join("none"), |_, _, _| true)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn read_only_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none");
        let mut s = AccountState::open_read_only(&missing, "k").unwrap();
        assert!(s.is_empty());
        assert!(s.record_done(&[uid("a")], 1).is_err());
        s.compact(|_| true).unwrap();
        assert!(!missing.exists());
    }
}
