//! An mbox destination.
//!
//! Each message is written, as its mbox entry (a `From ` line, the message with mboxrd quoting:
//! a line matching `^>*From ` gets one more `>`, then an empty line), to the account's spool
//! file, its SHA-256 computed on the way. At the commit, under the mbox's locks (a dotlock
//! `FILE.lock` holding our pid, and flock), the journal gets `P` lines with where each entry
//! will start and end and its SHA-256, fsynced; the entries are appended; the mbox is fsynced;
//! the locks are released; `D` lines are appended (fsynced with the next batch's `P` lines, or
//! at the end of the session: the messages may be deleted on the server before). After a
//! crash, a `P` without its `D` is settled by reading the mbox: the bytes at its place with its
//! SHA-256 mean it arrived; a strict prefix of it reaching to the end of the file (checked
//! against the spool) is a partial append, cut off again; anything else (the file was changed
//! since) is left alone and the message fetched again: a possible duplicate, never a loss.

use super::{io_err, CrlfToLf, DestError, Staged, StagedMessage, Writer, WriterKind, BLOCK};
use crate::config::{MBOX_LOCK_WAIT, STALE_DOTLOCK};
use crate::fetch::FaultPoint;
use crate::state::{AccountState, Pending};
use facteur_proto::Uidl;
use facteur_store::durable::sync_dir;
use facteur_store::mbox_format::{asctime, Quoter};
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The longest first line searched for `Return-Path:` (RFC 5322 section 2.1.1: 998 + CRLF).
const MAX_FIRST_LINE: usize = 1000;

#[derive(Debug)]
pub struct MboxDest {
    path: PathBuf,
    spool_path: PathBuf,
    spool: File,
    /// Octets in the spool: the next entry starts there.
    spool_len: u64,
}

impl MboxDest {
    /// Open an mbox for a run: its folder must exist (the file is created at the first
    /// message); `spool` is the account's mbox spool file, emptied.
    pub(super) fn open(path: &Path, spool: &Path) -> Result<Self, DestError> {
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
        Ok(MboxDest {
            path: path.to_path_buf(),
            spool_path: spool.to_path_buf(),
            spool: file,
            spool_len: 0,
        })
    }

    /// Start a message's entry at the end of the spool.
    pub(super) fn begin(&mut self) -> Result<Writer<'_>, DestError> {
        let start = self.spool_len;
        self.spool
            .seek(SeekFrom::Start(start))
            .map_err(io_err(&self.spool_path))?;
        Ok(Writer {
            lf: CrlfToLf::default(),
            scratch: Vec::new(),
            kind: WriterKind::Mbox(MboxWriter {
                out: BufWriter::with_capacity(BLOCK, &mut self.spool),
                spool_path: &self.spool_path,
                spool_len: &mut self.spool_len,
                start,
                len: 0,
                sha: Sha256::new(),
                head: Some(Vec::new()),
                quoter: FromQuoter::default(),
                last: None,
            }),
        })
    }

    /// The mbox part of [`super::Destination::commit`]: under the locks, `P` lines, append
    /// the entries from the spool, fsync; then empty the spool.
    pub(super) fn commit(
        &mut self,
        batch: &[StagedMessage],
        state: &mut AccountState,
        hook: &mut dyn FnMut(FaultPoint) -> Result<(), DestError>,
    ) -> Result<(), DestError> {
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
        let lock = MboxLock::acquire(&self.path)?;
        let start = lock.len()?;
        let mut pending = Vec::new();
        let mut at = start;
        for s in batch {
            if let Staged::Mbox {
                spool_offset,
                len,
                sha256,
            } = s.staged
            {
                if let Some(uid) = &s.uid {
                    pending.push(Pending::Mbox {
                        uid: uid.clone(),
                        path: self.path.clone(),
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
            self.spool.flush().map_err(io_err(&self.spool_path))?;
            let half = total / 2;
            copy_range(&self.spool, &self.spool_path, first, half, &lock)?;
            hook(FaultPoint::MidAppend)?;
            copy_range(
                &self.spool,
                &self.spool_path,
                first + half,
                total - half,
                &lock,
            )?;
            lock.file.sync_data().map_err(io_err(&self.path))?;
        }
        drop(lock);
        self.spool.set_len(0).map_err(io_err(&self.spool_path))?;
        self.spool_len = 0;
        Ok(())
    }
}

/// A message being written to the spool as its mbox entry.
pub(super) struct MboxWriter<'a> {
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
}

impl MboxWriter<'_> {
    pub(super) fn put(&mut self, data: &[u8]) -> Result<(), DestError> {
        let MboxWriter {
            out,
            spool_path,
            len,
            sha,
            head,
            quoter,
            last,
            ..
        } = self;
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

    /// The entry is complete in the spool (not yet appended to the mbox: that is the commit).
    pub(super) fn finish(self) -> Result<Staged, DestError> {
        let MboxWriter {
            mut out,
            spool_path,
            spool_len,
            start,
            mut len,
            mut sha,
            head,
            mut quoter,
            mut last,
        } = self;
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
}

/// Settle the mbox `P` lines (see the module documentation); returns the unique-ids of those
/// that arrived.
pub(super) fn recover(mut mbox: Vec<&Pending>, spool: &Path) -> Result<Vec<Uidl>, DestError> {
    let mut arrived = Vec::new();
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

/// mboxrd quoting, streaming: a line matching `^>*From ` gets one more `>` in front (the store's
/// quoter, the one the mbox store delivers with), its output sent to an [`Emit`].
#[derive(Debug, Default)]
struct FromQuoter(Quoter);

impl FromQuoter {
    fn push(&mut self, data: &[u8], out: &mut Emit<'_, '_>) -> Result<(), DestError> {
        let mut failed = None;
        self.0.push(data, &mut |d| {
            if failed.is_none() {
                failed = out.emit(d).err();
            }
        });
        failed.map_or(Ok(()), Err)
    }

    fn finish(&mut self, out: &mut Emit<'_, '_>) -> Result<(), DestError> {
        let mut failed = None;
        self.0.finish(&mut |d| {
            if failed.is_none() {
                failed = out.emit(d).err();
            }
        });
        failed.map_or(Ok(()), Err)
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

#[cfg(test)]
mod tests {
    use super::super::{read_all, recover, Destination};
    use super::*;
    use crate::config::DestinationSpec;
    use std::time::UNIX_EPOCH;

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
}
