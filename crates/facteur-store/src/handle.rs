//! File system calls relative to a directory handle, never through a symbolic link.
//!
//! A maildrop is a trust boundary: its owner (a system user whose Maildir is in their home, or
//! anyone who can write into it) can put anything in it: a symbolic link where `cur/` or the
//! index should be, a FIFO, a device, a file of any size or name. Every name the store opens is
//! therefore one path component, resolved relative to a handle on the directory that holds it
//! (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` where the kernel has it, `openat` with
//! `O_NOFOLLOW` otherwise: for a single component the two say the same), and every file is
//! opened `O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC` and checked with `fstat` before it is read.
//!
//! ## What this module must never do
//! - Follow a symbolic link, or open a name with more than one component.
//! - Block on a FIFO or a device.
//! - Change the owner of a file it did not just create.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags};
use rustix::io::Errno;

use super::Owner;

/// Set once the kernel has said it has no `openat2` (before Linux 5.6): `openat` from then on.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Mode of the directories the store creates: the maildrop is private.
pub(crate) const DIR_MODE: u32 = 0o700;
/// Mode of the files the store creates.
pub(crate) const FILE_MODE: u32 = 0o600;

/// Refuses a name that is not exactly one path component: the fallback to `openat` relies on it.
fn one_component(name: &OsStr) -> io::Result<()> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a single file name",
        ));
    }
    Ok(())
}

/// Opens `name` in `dir` with `flags` (plus `O_NOFOLLOW | O_CLOEXEC`), never through a link.
pub(crate) fn open_at(dir: &File, name: &OsStr, flags: OFlags, mode: u32) -> io::Result<OwnedFd> {
    one_component(name)?;
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mode = Mode::from_raw_mode(mode);
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS;
        match rfs::openat2(dir.as_fd(), name, flags, mode, resolve) {
            Err(Errno::NOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
            // Some seccomp filters (container runtimes) refuse system calls they do not know
            // with EPERM; openat then gives the real answer.
            Err(Errno::PERM) => {}
            other => return other.map_err(io::Error::from),
        }
    }
    rfs::openat(dir.as_fd(), name, flags, mode).map_err(io::Error::from)
}

/// Opens a directory by path for the maildir root: the parts above it are the administrator's,
/// but its last component is the maildrop's and is never followed if it is a link.
pub(crate) fn open_dir_path(path: &Path) -> io::Result<File> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(File::from(rfs::open(path, flags, Mode::empty())?))
}

/// Opens the subdirectory `name` of `dir`, creating it (mode 0700, given to `owner`) if missing.
pub(crate) fn subdir(dir: &File, name: &str, owner: Owner) -> io::Result<File> {
    let name = OsStr::new(name);
    let flags = OFlags::RDONLY | OFlags::DIRECTORY;
    match open_at(dir, name, flags, 0) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        other => return other.map(File::from),
    }
    let created = match rfs::mkdirat(dir.as_fd(), name, Mode::from_raw_mode(DIR_MODE)) {
        Ok(()) => true,
        Err(Errno::EXIST) => false,
        Err(e) => return Err(e.into()),
    };
    let handle = File::from(open_at(dir, name, flags, 0)?);
    if created {
        give_to(&handle, owner)?;
    }
    Ok(handle)
}

/// What [`open_regular`] found.
#[derive(Debug)]
pub(crate) enum Opened {
    /// A regular file, open for reading.
    File(File),
    /// No such name.
    Missing,
    /// A symbolic link, or anything but a regular file (a FIFO, a device, a directory, a
    /// socket): for a maildrop, such a name holds no mail.
    NotRegular,
}

/// Opens `name` in `dir` for reading if it is a regular file. `O_NONBLOCK` keeps a FIFO from
/// making the open wait for a writer.
pub(crate) fn open_regular(dir: &File, name: &OsStr) -> io::Result<Opened> {
    Ok(open_regular_stat(dir, name)?.0)
}

/// [`open_regular`], with the fstat it made to tell a regular file (`Some` with
/// [`Opened::File`]): a caller that needs the file's length or version makes no second one.
pub(crate) fn open_regular_stat(
    dir: &File,
    name: &OsStr,
) -> io::Result<(Opened, Option<std::fs::Metadata>)> {
    let flags = OFlags::RDONLY | OFlags::NONBLOCK;
    let file = match open_at(dir, name, flags, 0) {
        Ok(fd) => File::from(fd),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Opened::Missing, None)),
        // ELOOP: a symbolic link (with openat2, a link on the way); ENXIO: a socket.
        Err(e) if matches!(Errno::from_io_error(&e), Some(Errno::LOOP | Errno::NXIO)) => {
            return Ok((Opened::NotRegular, None))
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if meta.is_file() {
        Ok((Opened::File(file), Some(meta)))
    } else {
        Ok((Opened::NotRegular, None))
    }
}

/// Set once the kernel has refused `RESOLVE_CACHED` (before Linux 5.12).
static NO_RESOLVE_CACHED: AtomicBool = AtomicBool::new(false);
/// Set once the file system has refused `RWF_NOWAIT` for a read.
static NO_RWF_NOWAIT: AtomicBool = AtomicBool::new(false);

/// [`open_regular`] from the kernel's caches alone, with the file's length: `openat2` with `RESOLVE_CACHED` fails
/// (EAGAIN) rather than read a directory or an inode from the disk. `None` whenever the answer
/// is not a regular file opened at once: the name missing, a link, a FIFO, a lookup that
/// would wait, a kernel without `openat2` or `RESOLVE_CACHED`. Callers then take the ordinary
/// path, which tells these apart. Never blocks, so it may run on an async thread.
pub(crate) fn open_regular_cached(dir: &File, name: &OsStr) -> Option<(File, u64)> {
    one_component(name).ok()?;
    if NO_OPENAT2.load(Ordering::Relaxed) || NO_RESOLVE_CACHED.load(Ordering::Relaxed) {
        return None;
    }
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::CACHED;
    match rfs::openat2(dir.as_fd(), name, flags, Mode::empty(), resolve) {
        Ok(fd) => {
            let file = File::from(fd);
            // fstat reads the inode the open just brought in: no wait.
            let meta = file.metadata().ok()?;
            meta.is_file().then_some((file, meta.len()))
        }
        // An unknown resolve flag: the kernel predates RESOLVE_CACHED.
        Err(Errno::INVAL) => {
            NO_RESOLVE_CACHED.store(true, Ordering::Relaxed);
            None
        }
        Err(_) => None,
    }
}

/// [`open_at`] from the kernel's caches alone (`RESOLVE_CACHED`): fails with `EAGAIN` rather
/// than read a directory or an inode from the disk, and with an error too on a kernel without
/// `openat2` or `RESOLVE_CACHED`. Never follows a link; never blocks, so it may run on an
/// async thread. Callers take the ordinary path on any error.
pub(crate) fn open_at_cached(dir: &File, name: &OsStr, flags: OFlags) -> Result<OwnedFd, Errno> {
    one_component(name).map_err(|_| Errno::INVAL)?;
    if NO_OPENAT2.load(Ordering::Relaxed) || NO_RESOLVE_CACHED.load(Ordering::Relaxed) {
        return Err(Errno::AGAIN);
    }
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::CACHED;
    rfs::openat2(dir.as_fd(), name, flags, Mode::empty(), resolve)
}

/// [`open_dir_path`] from the kernel's caches alone (see [`open_at_cached`]): `None` whenever
/// that cannot be done at once, or fails.
pub(crate) fn open_dir_path_cached(path: &Path) -> Option<File> {
    if NO_OPENAT2.load(Ordering::Relaxed) || NO_RESOLVE_CACHED.load(Ordering::Relaxed) {
        return None;
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    // The parts above the last component are the administrator's: links there are followed,
    // as by `open_dir_path`.
    let fd = rfs::openat2(rfs::CWD, path, flags, Mode::empty(), ResolveFlags::CACHED).ok()?;
    Some(File::from(fd))
}

/// Reads `buf.len()` octets of `file` from offset 0, only as far as the page cache holds
/// them (`preadv2` with `RWF_NOWAIT`): may return fewer than the file has even before its
/// end. `None` when not even that can be done without waiting (nothing cached, or a file
/// system that does not offer it). Never blocks, so it may run on an async thread.
pub(crate) fn read_now(file: &File, buf: &mut [u8]) -> Option<usize> {
    if NO_RWF_NOWAIT.load(Ordering::Relaxed) {
        return None;
    }
    let mut bufs = [io::IoSliceMut::new(buf)];
    match rustix::io::preadv2(file, &mut bufs, 0, rustix::io::ReadWriteFlags::NOWAIT) {
        Ok(n) => Some(n),
        Err(Errno::OPNOTSUPP | Errno::INVAL) => {
            NO_RWF_NOWAIT.store(true, Ordering::Relaxed);
            None
        }
        Err(_) => None,
    }
}

/// Creates `name` in `dir` for writing; fails if any file (or link) has that name already.
/// The new file is given to `owner`.
pub(crate) fn create_new(dir: &File, name: &OsStr, owner: Owner) -> io::Result<File> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL;
    let file = File::from(open_at(dir, name, flags, FILE_MODE)?);
    give_to(&file, owner)?;
    Ok(file)
}

/// Opens (creating it if missing) a file to hold a lock in: read-write, never truncated, and
/// refused unless it is a regular file.
pub(crate) fn open_lock_file(dir: &File, name: &str, owner: Owner) -> io::Result<File> {
    let name = OsStr::new(name);
    let flags = OFlags::RDWR | OFlags::NONBLOCK;
    // Open, else create, else open what another session created meanwhile: bounded, so that a
    // name that keeps appearing and vanishing cannot keep a login spinning.
    for _ in 0..3 {
        match open_at(dir, name, flags, 0) {
            Ok(fd) => {
                let file = File::from(fd);
                if !file.metadata()?.is_file() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the lock file is not a regular file",
                    ));
                }
                return Ok(file);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) if Errno::from_io_error(&e) == Some(Errno::LOOP) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the lock file is a symbolic link",
                ))
            }
            Err(e) => return Err(e),
        }
        match create_new(dir, name, owner) {
            // Reopened read-write at the next turn.
            Ok(_) => {}
            // Another session created it meanwhile: open that one.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(
        "the lock file keeps appearing and vanishing",
    ))
}

/// Renames `from` in `from_dir` to `to` in `to_dir` unless `to` exists (`AlreadyExists` then).
/// `renameat2(RENAME_NOREPLACE)`; where the file system refuses that flag, a hard link and an
/// unlink (the classic Maildir move), and where it has no hard links either, a check then a
/// plain rename (the only fallback with a window, for exotic file systems).
pub(crate) fn rename_noreplace(
    from_dir: &File,
    from: &OsStr,
    to_dir: &File,
    to: &OsStr,
) -> io::Result<()> {
    one_component(from)?;
    one_component(to)?;
    let (fd, td) = (from_dir.as_fd(), to_dir.as_fd());
    match rfs::renameat_with(fd, from, td, to, RenameFlags::NOREPLACE) {
        Err(Errno::INVAL | Errno::NOSYS | Errno::NOTSUP) => {}
        other => return other.map_err(io::Error::from),
    }
    rename_by_link(from_dir, from, to_dir, to)
}

/// The fallbacks of [`rename_noreplace`]: link then unlink (`linkat` without
/// `AT_SYMLINK_FOLLOW` never follows a link), or, on a file system without hard links, a check
/// then a rename.
fn rename_by_link(from_dir: &File, from: &OsStr, to_dir: &File, to: &OsStr) -> io::Result<()> {
    let (fd, td) = (from_dir.as_fd(), to_dir.as_fd());
    match rfs::linkat(fd, from, td, to, AtFlags::empty()) {
        Ok(()) => return unlink(from_dir, from),
        Err(Errno::PERM | Errno::NOTSUP | Errno::MLINK) => {}
        Err(e) => return Err(e.into()),
    }
    match rfs::statat(td, to, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => Err(io::Error::from(Errno::EXIST)),
        Err(Errno::NOENT) => rfs::renameat(fd, from, td, to).map_err(io::Error::from),
        Err(e) => Err(e.into()),
    }
}

/// Renames `from` to `to` in `dir`, replacing `to` (the way a new index replaces the old one).
pub(crate) fn rename_replace(dir: &File, from: &OsStr, to: &OsStr) -> io::Result<()> {
    one_component(from)?;
    one_component(to)?;
    rfs::renameat(dir.as_fd(), from, dir.as_fd(), to).map_err(io::Error::from)
}

/// Removes the name `name` from `dir` (a link is removed itself, never what it points to).
pub(crate) fn unlink(dir: &File, name: &OsStr) -> io::Result<()> {
    one_component(name)?;
    rfs::unlinkat(dir.as_fd(), name, AtFlags::empty()).map_err(io::Error::from)
}

/// What a directory listing found under one name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Regular,
    Other,
}

/// The entries of `dir` whose names pass `keep`, with what they are (not following links).
/// Entries that vanish while they are looked at are left out; one that cannot be looked at is
/// reported to `skipped` and left out.
pub(crate) fn list(
    dir: &File,
    keep: impl Fn(&OsStr) -> bool,
    mut skipped: impl FnMut(&OsStr, io::Error),
) -> io::Result<Vec<(OsString, Kind)>> {
    let mut out = Vec::new();
    for entry in rfs::Dir::read_from(dir.as_fd())? {
        let entry = entry?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if !keep(name) {
            continue;
        }
        let file_type = match entry.file_type() {
            FileType::Unknown => match rfs::statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => FileType::from_raw_mode(st.st_mode),
                Err(Errno::NOENT) => continue,
                Err(e) => {
                    skipped(name, e.into());
                    continue;
                }
            },
            t => t,
        };
        let kind = if file_type == FileType::RegularFile {
            Kind::Regular
        } else {
            Kind::Other
        };
        out.push((name.to_owned(), kind));
    }
    Ok(out)
}

/// Gives a file or directory the store has just created to the maildrop's owner, when the
/// owner is known and this process may (it runs as root: `facteur deliver` from an MTA, or a
/// server that kept its privileges). Otherwise the file stays this process's own.
pub(crate) fn give_to(file: &impl AsFd, owner: Owner) -> io::Result<()> {
    if owner.uid.is_none() && owner.gid.is_none() {
        return Ok(());
    }
    if !rustix::process::geteuid().is_root() {
        return Ok(());
    }
    let uid = owner.uid.map(rfs::Uid::from_raw);
    let gid = owner.gid.map(rfs::Gid::from_raw);
    rfs::fchown(file, uid, gid).map_err(io::Error::from)
}

/// The owner and identity (device, inode) of an open file.
pub(crate) fn identity(file: &File) -> io::Result<(u32, (u64, u64))> {
    let meta = file.metadata()?;
    Ok((meta.uid(), (meta.dev(), meta.ino())))
}

/// A file name as logs show it: printable ASCII kept, every other octet as `\xNN`, so a name
/// with control characters or invalid UTF-8 cannot forge or garble a log line.
pub(crate) fn escaped(name: &OsStr) -> String {
    let mut out = String::with_capacity(name.len());
    for &b in name.as_bytes() {
        if (0x20..0x7f).contains(&b) && b != b'\\' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::{Read, Write};
    use std::os::unix::fs::symlink;
    use std::os::unix::fs::OpenOptionsExt;

    fn dir() -> (tempfile::TempDir, File) {
        let tmp = tempfile::tempdir().unwrap();
        let handle = open_dir_path(tmp.path()).unwrap();
        (tmp, handle)
    }

    #[test]
    fn links_fifos_and_paths_are_never_opened() {
        let (tmp, d) = dir();
        let outside = tempfile::NamedTempFile::new().unwrap();
        fs::write(outside.path(), b"secret").unwrap();
        symlink(outside.path(), tmp.path().join("link")).unwrap();
        let status = std::process::Command::new("mkfifo")
            .arg(tmp.path().join("fifo"))
            .status()
            .unwrap();
        assert!(status.success());
        fs::create_dir(tmp.path().join("sub")).unwrap();
        fs::write(tmp.path().join("sub/file"), b"x").unwrap();
        fs::write(tmp.path().join("plain"), b"mail").unwrap();

        for name in ["link", "fifo", "sub"] {
            let got = open_regular(&d, OsStr::new(name)).unwrap();
            assert!(matches!(got, Opened::NotRegular), "{name}: {got:?}");
        }
        let got = open_regular(&d, OsStr::new("missing")).unwrap();
        assert!(matches!(got, Opened::Missing));
        for bad in ["sub/file", "..", ".", ""] {
            assert!(open_regular(&d, OsStr::new(bad)).is_err(), "{bad}");
        }
        let mut body = String::new();
        let Opened::File(mut plain) = open_regular(&d, OsStr::new("plain")).unwrap() else {
            panic!("a regular file");
        };
        plain.read_to_string(&mut body).unwrap();
        assert_eq!(body, "mail");

        // Neither a directory nor a lock file through a link.
        symlink(tmp.path().join("sub"), tmp.path().join("dirlink")).unwrap();
        assert!(subdir(&d, "dirlink", Owner::default()).is_err());
        assert!(open_lock_file(&d, "link", Owner::default()).is_err());
        assert!(open_lock_file(&d, "fifo", Owner::default()).is_err());
        // Creation never goes through a link either, and unlink removes the link itself.
        assert!(create_new(&d, OsStr::new("link"), Owner::default()).is_err());
        unlink(&d, OsStr::new("link")).unwrap();
        assert_eq!(fs::read(outside.path()).unwrap(), b"secret");
        // A root given as a link is refused.
        assert!(open_dir_path(&tmp.path().join("dirlink")).is_err());
    }

    #[test]
    fn cached_opens_refuse_links_and_fifos_and_reads_never_wait_for_the_disk() {
        let (tmp, d) = dir();
        let outside = tempfile::NamedTempFile::new().unwrap();
        fs::write(outside.path(), b"secret").unwrap();
        symlink(outside.path(), tmp.path().join("link")).unwrap();
        let status = std::process::Command::new("mkfifo")
            .arg(tmp.path().join("fifo"))
            .status()
            .unwrap();
        assert!(status.success());
        fs::create_dir(tmp.path().join("sub")).unwrap();
        for name in ["link", "fifo", "sub", "missing", "sub/x", ".."] {
            assert!(
                open_regular_cached(&d, OsStr::new(name)).is_none(),
                "{name}"
            );
        }

        // A file just written is in the page cache: read whole at once, and a buffer larger
        // than the file shows its end.
        let body = b"From: a@example.org\r\n\r\nhello\r\n".repeat(100);
        fs::write(tmp.path().join("mail"), &body).unwrap();
        let (file, len) =
            open_regular_cached(&d, OsStr::new("mail")).expect("a cached regular file");
        assert_eq!(len, body.len() as u64);
        let mut buf = vec![0u8; body.len() + 1];
        assert_eq!(read_now(&file, &mut buf), Some(body.len()));
        assert_eq!(buf.get(..body.len()).unwrap(), &body[..]);

        // A file none of whose pages is in the page cache (written with O_DIRECT, which goes
        // around it): the read must not wait for the disk. A read may still find the data if
        // the readahead it starts completes at once, so three files are tried; a read that
        // waits finds it every time. tmpfs has no disk (nor, before Linux 6.6, O_DIRECT).
        let mut block = vec![b'x'; 3 * 65536];
        let start = block.as_ptr().align_offset(65536);
        let aligned = block.get_mut(start..start + 65536).unwrap();
        let mut waited = Vec::new();
        for i in 0..3 {
            let name = format!("direct{i}");
            let direct = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc_o_direct())
                .open(tmp.path().join(&name));
            let Ok(mut direct) = direct else {
                return; // no O_DIRECT here
            };
            if rustix::fs::fstatfs(&direct).unwrap().f_type == 0x0102_1994 {
                return; // TMPFS_MAGIC
            }
            direct.write_all(aligned).unwrap();
            drop(direct);
            let (file, _) = open_regular_cached(&d, OsStr::new(&name)).expect("a regular file");
            let mut buf = vec![0u8; 65536 + 1];
            match read_now(&file, &mut buf) {
                Some(n) if n == 65536 => waited.push(n),
                _ => break,
            }
        }
        assert!(
            waited.len() < 3,
            "reads of uncached files waited for the disk: {waited:?}"
        );
    }

    /// `O_DIRECT` for this architecture (rustix has it as an `OFlags`).
    fn libc_o_direct() -> i32 {
        rustix::fs::OFlags::DIRECT.bits() as i32
    }

    #[test]
    fn rename_never_replaces() {
        let (tmp, d) = dir();
        fs::write(tmp.path().join("a"), b"a").unwrap();
        fs::write(tmp.path().join("b"), b"b").unwrap();
        let err = rename_noreplace(&d, OsStr::new("a"), &d, OsStr::new("b")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(tmp.path().join("b")).unwrap(), b"b");
        rename_noreplace(&d, OsStr::new("a"), &d, OsStr::new("c")).unwrap();
        assert_eq!(fs::read(tmp.path().join("c")).unwrap(), b"a");
        assert!(!tmp.path().join("a").exists());
    }

    #[test]
    fn the_fallbacks_refuse_links_and_never_replace_either() {
        let (tmp, d) = dir();
        // As on a kernel without openat2 (each test runs in a process of its own under
        // nextest; elsewhere, other tests merely take the fallback too).
        NO_OPENAT2.store(true, Ordering::Relaxed);
        let outside = tempfile::NamedTempFile::new().unwrap();
        symlink(outside.path(), tmp.path().join("link")).unwrap();
        assert!(matches!(
            open_regular(&d, OsStr::new("link")).unwrap(),
            Opened::NotRegular
        ));
        assert!(create_new(&d, OsStr::new("link"), Owner::default()).is_err());
        assert!(open_lock_file(&d, "link", Owner::default()).is_err());
        assert!(open_regular(&d, OsStr::new("../x")).is_err());
        fs::create_dir(tmp.path().join("sub")).unwrap();
        symlink(tmp.path().join("sub"), tmp.path().join("sublink")).unwrap();
        assert!(subdir(&d, "sublink", Owner::default()).is_err());
        assert!(subdir(&d, "sub", Owner::default()).is_ok());

        // Link and unlink, where renameat2 is refused.
        fs::write(tmp.path().join("a"), b"a").unwrap();
        fs::write(tmp.path().join("b"), b"b").unwrap();
        let err = rename_by_link(&d, OsStr::new("a"), &d, OsStr::new("b")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(tmp.path().join("b")).unwrap(), b"b");
        rename_by_link(&d, OsStr::new("a"), &d, OsStr::new("c")).unwrap();
        assert_eq!(fs::read(tmp.path().join("c")).unwrap(), b"a");
        assert!(!tmp.path().join("a").exists());
        // A link moved by the fallback is moved itself, never what it points to.
        rename_by_link(&d, OsStr::new("link"), &d, OsStr::new("moved")).unwrap();
        assert!(fs::symlink_metadata(tmp.path().join("moved"))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn listing_tells_files_from_the_rest() {
        let (tmp, d) = dir();
        fs::write(tmp.path().join("f"), b"").unwrap();
        fs::create_dir(tmp.path().join("g")).unwrap();
        symlink("f", tmp.path().join("h")).unwrap();
        fs::write(tmp.path().join(".x"), b"").unwrap();
        let mut got = list(&d, |n| !n.as_bytes().starts_with(b"."), |_, _| {}).unwrap();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("f".into(), Kind::Regular),
                ("g".into(), Kind::Other),
                ("h".into(), Kind::Other)
            ]
        );
        let mut f = create_new(&d, OsStr::new("new"), Owner::default()).unwrap();
        f.write_all(b"x").unwrap();
        assert!(create_new(&d, OsStr::new("new"), Owner::default()).is_err());
    }

    #[test]
    fn names_are_escaped_for_logs() {
        assert_eq!(escaped(OsStr::new("1.a:2,S")), "1.a:2,S");
        assert_eq!(
            escaped(OsStr::from_bytes(b"a\nb\\\xff")),
            "a\\x0ab\\x5c\\xff"
        );
    }
}
