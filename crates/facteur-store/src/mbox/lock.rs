//! The locks MTAs take on an mbox: a dotlock (`USER.lock` beside it) and a POSIX `fcntl` lock
//! on the file, in that order, as Postfix does with `mailbox_delivery_lock = fcntl, dotlock`
//! (Debian's default) and procmail and liblockfile do.
//!
//! - The dotlock is created with `O_CREAT | O_EXCL` relative to the spool's directory handle
//!   (never through a link), holding this process's pid. One older than [`STALE_DOTLOCK`] is
//!   taken for the leftover of a writer that died and removed, as Postfix does after its
//!   `stale_lock_time` (500 s); a holder that works longer refreshes it ([`MtaLock::refresh`]).
//!   One that names a pid no process has (a writer killed) is removed at once, as liblockfile
//!   does; Postfix's dotlocks are empty and only age.
//! - The `fcntl` lock is a write lock on the whole file (`F_SETLK`, retried).
//!
//! Both are tried again every [`RETRY`] until [`LOCK_WAIT`] has passed: then the caller gets
//! [`StoreError::MboxBusy`], a temporary failure. Neither is held longer than one scan, one
//! UPDATE or one delivery: never for a whole POP3 session.
//!
//! A POSIX lock belongs to the process, and the kernel drops it when the process closes any
//! descriptor of the file. facteur's own writers (LMTP and UPDATE in one server process) are
//! kept apart by the dotlock, which they take first; the `fcntl` lock is for the other programs.
//! A session's RETR readers share the session's descriptor rather than duplicate it, so that
//! finishing a RETR closes nothing; a login or an UPDATE of another mbox never touches this one.
//! (Linux's open-file-description locks would avoid the rule, but rustix offers only the classic
//! `F_SETLK`, and this crate has no unsafe code.)

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::{self as rfs, AtFlags, FlockOperation, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use super::super::handle;
use super::super::StoreError;

/// How long a dotlock may sit untouched before it is taken for a dead writer's (Postfix's
/// `stale_lock_time` default).
pub(crate) const STALE_DOTLOCK: Duration = Duration::from_secs(500);

/// How long a holder may go without refreshing its dotlock: well under [`STALE_DOTLOCK`].
pub(crate) const REFRESH_EVERY: Duration = Duration::from_secs(60);

/// How long a login, an UPDATE or a delivery waits for the MTA's locks before giving up (an MTA
/// holds them for one delivery: milliseconds).
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(15);

/// Pause between two attempts.
const RETRY: Duration = Duration::from_millis(50);

/// The MTA locks, held. Dropping it unlocks the file and removes the dotlock.
pub(crate) struct MtaLock {
    /// The spool directory (a handle of our own, so the lock borrows nothing).
    dir: File,
    dotlock_name: OsString,
    dotlock: File,
    dotlock_id: (u64, u64),
    /// The mbox, locked with `fcntl` (a handle of our own; none until [`MtaLock::lock_file`]).
    locked: Option<File>,
    refreshed: Instant,
}

/// The dotlock's name for the mbox `name`.
pub(crate) fn dotlock_name(name: &OsStr) -> OsString {
    let mut n = name.to_owned();
    n.push(".lock");
    n
}

/// Takes the dotlock of the mbox `name` in `dir` (the spool), waiting until `deadline`.
pub(crate) fn dotlock(
    dir: &File,
    dir_path: &Path,
    name: &OsStr,
    deadline: Instant,
) -> Result<MtaLock, StoreError> {
    let lock_name = dotlock_name(name);
    let path = dir_path.join(&lock_name);
    loop {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL;
        match handle::open_at(dir, &lock_name, flags, handle::FILE_MODE) {
            Ok(fd) => {
                let mut file = File::from(fd);
                // The pid is for people and for tools that check it; its absence breaks nothing.
                let _ = writeln!(file, "{}", std::process::id());
                let meta = file.metadata().map_err(|e| StoreError::io(&path, e))?;
                use std::os::unix::fs::MetadataExt;
                let dir = dir.try_clone().map_err(|e| StoreError::io(dir_path, e))?;
                return Ok(MtaLock {
                    dir,
                    dotlock_name: lock_name,
                    dotlock: file,
                    dotlock_id: (meta.dev(), meta.ino()),
                    locked: None,
                    refreshed: Instant::now(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if remove_if_stale(dir, &lock_name) {
                    tracing::warn!(dotlock = %path.display(),
                        "removed a stale dotlock (older than {} s)", STALE_DOTLOCK.as_secs());
                    continue;
                }
            }
            Err(e) => return Err(StoreError::io(&path, e)),
        }
        if Instant::now() >= deadline {
            return Err(StoreError::MboxBusy(path));
        }
        thread::sleep(RETRY);
    }
}

/// Removes the dotlock `name` if it has not been touched for [`STALE_DOTLOCK`]. True if it is
/// gone (removed here, or by someone else meanwhile).
fn remove_if_stale(dir: &File, name: &OsStr) -> bool {
    let st = match rfs::statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return true,
        Err(_) => return false,
    };
    let mtime = SystemTime::UNIX_EPOCH
        + Duration::new(
            u64::try_from(st.st_mtime).unwrap_or(0),
            u32::try_from(st.st_mtime_nsec).unwrap_or(0),
        );
    let stale = SystemTime::now()
        .duration_since(mtime)
        .is_ok_and(|age| age > STALE_DOTLOCK);
    (stale || holder_is_gone(dir, name)) && handle::unlink(dir, name).is_ok()
}

/// True if the dotlock names a pid (as facteur, liblockfile and procmail write) and no process
/// has that pid here: its writer was killed. An empty dotlock (Postfix's) tells nothing.
fn holder_is_gone(dir: &File, name: &OsStr) -> bool {
    let Ok(handle::Opened::File(file)) = handle::open_regular(dir, name) else {
        return false;
    };
    let mut buf = [0u8; 24];
    let n = std::os::unix::fs::FileExt::read_at(&file, &mut buf, 0).unwrap_or(0);
    let text = buf.get(..n).unwrap_or_default();
    let digits = text.strip_suffix(b"\n").unwrap_or(text);
    let Some(pid) = facteur_proto::types::parse_decimal(digits) else {
        return false;
    };
    if pid == u64::from(std::process::id()) || !Path::new("/proc/self").exists() {
        return false;
    }
    !Path::new(&format!("/proc/{pid}")).exists()
}

impl MtaLock {
    /// Takes the `fcntl` write lock on the mbox, waiting until `deadline`.
    pub(crate) fn lock_file(
        &mut self,
        mbox: &File,
        path: &Path,
        deadline: Instant,
    ) -> Result<(), StoreError> {
        let mbox = mbox.try_clone().map_err(|e| StoreError::io(path, e))?;
        loop {
            match rfs::fcntl_lock(&mbox, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {
                    self.locked = Some(mbox);
                    return Ok(());
                }
                Err(Errno::AGAIN | Errno::ACCESS | Errno::INTR) => {}
                Err(e) => return Err(StoreError::io(path, e.into())),
            }
            if Instant::now() >= deadline {
                return Err(StoreError::MboxBusy(path.to_owned()));
            }
            thread::sleep(RETRY);
        }
    }

    /// Touches the dotlock if it was last touched [`REFRESH_EVERY`] ago, so that a long UPDATE
    /// is never taken for dead.
    pub(crate) fn refresh(&mut self) {
        if self.refreshed.elapsed() < REFRESH_EVERY {
            return;
        }
        let now = Timespec {
            tv_sec: 0,
            tv_nsec: rfs::UTIME_NOW,
        };
        let _ = rfs::futimens(
            &self.dotlock,
            &Timestamps {
                last_access: now,
                last_modification: now,
            },
        );
        self.refreshed = Instant::now();
    }
}

impl Drop for MtaLock {
    fn drop(&mut self) {
        if let Some(mbox) = self.locked.take() {
            let _ = rfs::fcntl_lock(&mbox, FlockOperation::NonBlockingUnlock);
        }
        // Remove the dotlock only if it is still ours (another writer may have found it stale
        // and replaced it, if this process stalled for minutes).
        let ours = rfs::statat(
            self.dir.as_fd(),
            &self.dotlock_name,
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .is_ok_and(|st| (st.st_dev, st.st_ino) == self.dotlock_id);
        if ours {
            let _ = handle::unlink(&self.dir, &self.dotlock_name);
        }
    }
}
