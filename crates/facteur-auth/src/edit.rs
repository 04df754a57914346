//! Editing the passwd-file for `facteur user add|del|list|passwd`.
//!
//! Each edit holds an exclusive lock on the sidecar file `<path>.lock` (never deleted, so that
//! two editors always lock the same inode), changes only the line of the user concerned, checks
//! that the result still loads, and replaces the file atomically: a temporary file in the same
//! directory, fsync, rename, fsync of the directory. A crash leaves the old file or the new one,
//! never half of one. The mode and owner of an existing file are kept; a new file is 0600.

use std::fs::{self, File, Metadata, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::app_password::revoke_all_app_passwords;
use super::passwd_file::{line_user, PasswdFile};
use super::scheme::random_token;
use super::{AuthError, InvalidUserName, StoredPassword, USER_NAME_MAX_LEN};
use facteur_store::durable::sync_dir;

/// Checks a user name for the passwd-file: not empty, at most 255 bytes, no `:`, whitespace or
/// control character, and not starting with `#` (the line would read as a comment).
pub fn validate_user_name(user: &str) -> Result<(), InvalidUserName> {
    if user.is_empty() {
        return Err(InvalidUserName::Empty);
    }
    if user.len() > USER_NAME_MAX_LEN {
        return Err(InvalidUserName::TooLong);
    }
    if user
        .chars()
        .any(|c| c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(InvalidUserName::BadCharacter);
    }
    if user.starts_with('#') {
        return Err(InvalidUserName::StartsWithHash);
    }
    Ok(())
}

pub(crate) fn check_user(user: &str) -> Result<(), AuthError> {
    validate_user_name(user).map_err(|reason| AuthError::InvalidUserName {
        user: user.to_string(),
        reason,
    })
}

/// A stored password must fit in its field and parse, e.g. the output of
/// [`hash_password`](super::hash_password).
pub(crate) fn check_stored(stored: &str) -> Result<(), AuthError> {
    if stored.contains([':', '\n', '\r']) {
        return Err(AuthError::StoredPasswordSeparator);
    }
    StoredPassword::parse(stored)?;
    Ok(())
}

/// Adds `user` with the stored password `stored` (`{SCHEME}hash`, as [`hash_password`]
/// returns it) at the end of the file, creating the file (mode 0600) if it does not exist.
///
/// [`hash_password`]: super::hash_password
pub fn add_user(path: impl AsRef<Path>, user: &str, stored: &str) -> Result<(), AuthError> {
    let path = path.as_ref();
    check_user(user)?;
    check_stored(stored)?;
    edit(path, true, |content| {
        let lines = split_lines(content);
        if lines.iter().any(|l| l.user.as_deref() == Some(user)) {
            return Err(AuthError::UserExists {
                user: user.to_string(),
                path: path.to_path_buf(),
            });
        }
        let eol: &[u8] = if lines.last().is_some_and(|l| l.eol == b"\r\n") {
            b"\r\n"
        } else {
            b"\n"
        };
        let mut out = content.to_vec();
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.extend_from_slice(eol);
        }
        out.extend_from_slice(format!("{user}:{stored}").as_bytes());
        out.extend_from_slice(eol);
        Ok(out)
    })
}

/// Removes `user`'s line; every other line stays as it was.
///
/// The user's app passwords are removed first, so that a user added again later under the same
/// name does not get them back.
pub fn del_user(path: impl AsRef<Path>, user: &str) -> Result<(), AuthError> {
    let path = path.as_ref();
    check_user(user)?;
    revoke_all_app_passwords(path, user)?;
    edit(path, false, |content| {
        let lines = split_lines(content);
        let kept: Vec<&Line<'_>> = lines
            .iter()
            .filter(|l| l.user.as_deref() != Some(user))
            .collect();
        if kept.len() == lines.len() {
            return Err(no_such_user(path, user));
        }
        Ok(kept
            .iter()
            .flat_map(|l| [l.text, l.eol])
            .flatten()
            .copied()
            .collect())
    })
}

/// Replaces `user`'s password field with `stored`, keeping the other fields of the line.
pub fn set_password(path: impl AsRef<Path>, user: &str, stored: &str) -> Result<(), AuthError> {
    let path = path.as_ref();
    check_user(user)?;
    check_stored(stored)?;
    edit(path, false, |content| {
        let mut found = false;
        let mut out = Vec::with_capacity(content.len() + stored.len());
        for line in split_lines(content) {
            if line.user.as_deref() == Some(user) {
                found = true;
                // user ':' password [':' the other fields]
                let after_user = line.text.get(user.len() + 1..).unwrap_or_default();
                let others = after_user
                    .iter()
                    .position(|&b| b == b':')
                    .map_or(&[][..], |i| &after_user[i..]);
                out.extend_from_slice(user.as_bytes());
                out.push(b':');
                out.extend_from_slice(stored.as_bytes());
                out.extend_from_slice(others);
            } else {
                out.extend_from_slice(line.text);
            }
            out.extend_from_slice(line.eol);
        }
        if found {
            Ok(out)
        } else {
            Err(no_such_user(path, user))
        }
    })
}

/// The user names of the file, in its order.
pub fn list_users(path: impl AsRef<Path>) -> Result<Vec<String>, AuthError> {
    Ok(PasswdFile::load(path)?
        .users()
        .map(str::to_string)
        .collect())
}

fn no_such_user(path: &Path, user: &str) -> AuthError {
    AuthError::NoSuchUser {
        user: user.to_string(),
        path: path.to_path_buf(),
    }
}

/// A line of the file with its end-of-line, as it was.
struct Line<'a> {
    text: &'a [u8],
    eol: &'a [u8],
    /// The user the line defines; `None` for a blank or comment line.
    user: Option<String>,
}

fn split_lines(content: &[u8]) -> Vec<Line<'_>> {
    let mut lines = Vec::new();
    let mut rest = content;
    while !rest.is_empty() {
        let (line, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => rest.split_at(i + 1),
            None => (rest, &[][..]),
        };
        let (text, eol) = if let Some(t) = line.strip_suffix(b"\r\n") {
            (t, &line[t.len()..])
        } else if let Some(t) = line.strip_suffix(b"\n") {
            (t, &line[t.len()..])
        } else {
            (line, &[][..])
        };
        let user = line_user(&String::from_utf8_lossy(text)).map(str::to_string);
        lines.push(Line { text, eol, user });
        rest = next;
    }
    lines
}

fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// Runs `change` on the passwd-file's content under the lock and writes its result atomically.
fn edit(
    path: &Path,
    create: bool,
    change: impl FnOnce(&[u8]) -> Result<Vec<u8>, AuthError>,
) -> Result<(), AuthError> {
    edit_file(
        path,
        if create {
            IfMissing::Create
        } else {
            IfMissing::Fail
        },
        LockWait::Forever,
        |new, path| PasswdFile::parse_bytes(new, &path.display().to_string()).map(drop),
        change,
    )
}

/// What [`edit_file`] does when the file does not exist.
#[derive(Clone, Copy, Debug)]
pub(crate) enum IfMissing<'a> {
    /// An error ([`AuthError::Read`] of `NotFound`).
    Fail,
    /// `change` is given an empty content; the new file is 0600, owned by whoever runs this.
    Create,
    /// As `Create`, with the mode and owner of this other file (the passwd-file, for the file
    /// of app passwords beside it: the server must read both).
    CreateLike(&'a Path),
}

/// How long [`edit_file`] waits for the lock.
#[derive(Clone, Copy, Debug)]
pub(crate) enum LockWait {
    Forever,
    /// Up to this long, then an [`AuthError::Lock`] of `TimedOut`.
    Up(Duration),
}

/// Runs `change` on the content of the file at `path` under its lock (the sidecar
/// `<path>.lock`), checks the result with `validate`, and writes it atomically.
pub(crate) fn edit_file(
    path: &Path,
    missing: IfMissing<'_>,
    wait: LockWait,
    validate: impl FnOnce(&[u8], &Path) -> Result<(), AuthError>,
    change: impl FnOnce(&[u8]) -> Result<Vec<u8>, AuthError>,
) -> Result<(), AuthError> {
    let lock_file = lock_path(path);
    let lock_error = |source| AuthError::Lock {
        path: lock_file.clone(),
        source,
    };
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_file)
        .map_err(lock_error)?;
    // Released when `lock` is dropped, after the rename. `File::lock` is stable since Rust
    // 1.89: the workspace's rust-version must be at least that.
    match wait {
        LockWait::Forever => lock.lock().map_err(lock_error)?,
        LockWait::Up(limit) => lock_within(&lock, limit).map_err(lock_error)?,
    }

    // Edit the file a symbolic link points to, not the link.
    let target = match fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => path.to_path_buf(),
        Err(source) => {
            return Err(AuthError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let (content, meta) = match (read_with_metadata(&target), missing) {
        (Ok((content, meta)), _) => (content, Some(meta)),
        (Err(e), IfMissing::Create) if e.kind() == io::ErrorKind::NotFound => (Vec::new(), None),
        (Err(e), IfMissing::CreateLike(like)) if e.kind() == io::ErrorKind::NotFound => {
            let meta = fs::metadata(like).map_err(|source| AuthError::Read {
                path: like.to_path_buf(),
                source,
            })?;
            (Vec::new(), Some(meta))
        }
        (Err(source), _) => {
            return Err(AuthError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let new = change(&content)?;
    // Never write a file the server would refuse to load.
    validate(&new, path)?;
    write_atomically(&target, &new, meta.as_ref())?;
    drop(lock);
    Ok(())
}

/// Takes the exclusive lock of `file`, trying every 20 ms for up to `limit`.
fn lock_within(file: &File, limit: Duration) -> io::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("another process held it for {} s", limit.as_secs()),
                ))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
}

fn read_with_metadata(path: &Path) -> io::Result<(Vec<u8>, Metadata)> {
    let mut f = File::open(path)?;
    let meta = f.metadata()?;
    let mut content = Vec::new();
    f.read_to_end(&mut content)?;
    Ok((content, meta))
}

fn write_atomically(
    target: &Path,
    content: &[u8],
    old: Option<&Metadata>,
) -> Result<(), AuthError> {
    let write_error = |source| AuthError::Write {
        path: target.to_path_buf(),
        source,
    };
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = target.file_name().ok_or_else(|| {
        write_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path does not name a file",
        ))
    })?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        random_token()?
    ));
    let result = write_and_rename(&tmp, target, dir, content, old);
    if result.is_err() {
        // Best effort: the temporary file is useless now, and may not exist.
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(write_error)
}

fn write_and_rename(
    tmp: &Path,
    target: &Path,
    dir: &Path,
    content: &[u8],
    old: Option<&Metadata>,
) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)?;
    if let Some(old) = old {
        let mine = f.metadata()?;
        if (mine.uid(), mine.gid()) != (old.uid(), old.gid()) {
            // The server may run as the file's owner: a file that changed owner could become
            // unreadable to it. Refuse rather than do that.
            std::os::unix::fs::fchown(&f, Some(old.uid()), Some(old.gid()))?;
        }
        f.set_permissions(Permissions::from_mode(old.mode() & 0o7777))?;
    }
    f.write_all(content)?;
    f.sync_all()?;
    drop(f);
    fs::rename(tmp, target)?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{hash_password, Scheme};

    const SHA256: &str = "{SHA256-CRYPT}$5$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5sA";

    fn temp() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        (dir, path)
    }

    fn dir_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn add_creates_the_file_0600() {
        let (dir, path) = temp();
        add_user(&path, "alice", SHA256).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("alice:{SHA256}\n")
        );
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(lock_path(&path)).unwrap().mode() & 0o777,
            0o600
        );
        assert_eq!(dir_names(dir.path()), ["passwd", "passwd.lock"]);
        let file = PasswdFile::load(&path).unwrap();
        assert!(file.get("alice").unwrap().password().verify(b"secret"));
    }

    #[test]
    fn add_refuses_an_existing_user() {
        let (_dir, path) = temp();
        add_user(&path, "alice", "{PLAIN}a").unwrap();
        let e = add_user(&path, "alice", "{PLAIN}b").unwrap_err();
        assert!(matches!(e, AuthError::UserExists { .. }), "{e:?}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "alice:{PLAIN}a\n");
    }

    #[test]
    fn round_trips_keep_every_other_line() {
        let (dir, path) = temp();
        let original = "\
# facteur users
alice:{PLAIN}a:1000:1000:Alice:/home/alice:/bin/sh:userdb_mail=maildir:~/Mail quota=1G

  # bob left
carol:{PLAIN}c
";
        fs::write(&path, original).unwrap();

        add_user(&path, "dave", "{PLAIN}d").unwrap();
        let added = format!("{original}dave:{{PLAIN}}d\n");
        assert_eq!(fs::read_to_string(&path).unwrap(), added);

        set_password(&path, "alice", SHA256).unwrap();
        let changed = added.replace("alice:{PLAIN}a:", &format!("alice:{SHA256}:"));
        assert_eq!(fs::read_to_string(&path).unwrap(), changed);
        let file = PasswdFile::load(&path).unwrap();
        let alice = file.get("alice").unwrap();
        assert!(alice.password().verify(b"secret"));
        assert_eq!(
            alice.extra_fields(),
            Some("userdb_mail=maildir:~/Mail quota=1G")
        );

        set_password(&path, "carol", "{PLAIN}c2").unwrap();
        let changed = changed.replace("carol:{PLAIN}c\n", "carol:{PLAIN}c2\n");
        assert_eq!(fs::read_to_string(&path).unwrap(), changed);

        del_user(&path, "dave").unwrap();
        del_user(&path, "carol").unwrap();
        let expected = changed
            .replace("dave:{PLAIN}d\n", "")
            .replace("carol:{PLAIN}c2\n", "");
        assert_eq!(fs::read_to_string(&path).unwrap(), expected);
        assert!(expected.contains("# facteur users\n") && expected.contains("  # bob left\n"));
        assert_eq!(list_users(&path).unwrap(), ["alice"]);
        assert_eq!(dir_names(dir.path()), ["passwd", "passwd.lock"]);
    }

    #[test]
    fn crlf_and_a_missing_last_newline() {
        let (_dir, path) = temp();
        fs::write(&path, "a:{PLAIN}a\r\nb:{PLAIN}b\r\n").unwrap();
        add_user(&path, "c", "{PLAIN}c").unwrap();
        set_password(&path, "a", "{PLAIN}A").unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "a:{PLAIN}A\r\nb:{PLAIN}b\r\nc:{PLAIN}c\r\n"
        );
        fs::write(&path, "a:{PLAIN}a").unwrap();
        add_user(&path, "b", "{PLAIN}b").unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "a:{PLAIN}a\nb:{PLAIN}b\n"
        );
        fs::write(&path, "a:{PLAIN}a:1").unwrap();
        set_password(&path, "a", "{PLAIN}x").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "a:{PLAIN}x:1");
    }

    #[test]
    fn unknown_users_and_missing_files() {
        let (_dir, path) = temp();
        assert!(matches!(del_user(&path, "a"), Err(AuthError::Read { .. })));
        assert!(matches!(
            set_password(&path, "a", "{PLAIN}x"),
            Err(AuthError::Read { .. })
        ));
        assert!(matches!(list_users(&path), Err(AuthError::Read { .. })));
        add_user(&path, "a", "{PLAIN}a").unwrap();
        assert!(matches!(
            del_user(&path, "b"),
            Err(AuthError::NoSuchUser { .. })
        ));
        assert!(matches!(
            set_password(&path, "b", "{PLAIN}x"),
            Err(AuthError::NoSuchUser { .. })
        ));
        // A commented-out user is not a user.
        fs::write(&path, "#b:{PLAIN}b\na:{PLAIN}a\n").unwrap();
        assert!(matches!(
            del_user(&path, "b"),
            Err(AuthError::NoSuchUser { .. })
        ));
        assert!(matches!(
            del_user(&path, "#b"),
            Err(AuthError::InvalidUserName { .. })
        ));
    }

    #[test]
    fn user_names_are_validated() {
        let (_dir, path) = temp();
        let long = "x".repeat(256);
        for (name, reason) in [
            ("", InvalidUserName::Empty),
            ("a:b", InvalidUserName::BadCharacter),
            ("a b", InvalidUserName::BadCharacter),
            ("a\tb", InvalidUserName::BadCharacter),
            ("a\u{7f}", InvalidUserName::BadCharacter),
            ("a\nb:{PLAIN}x", InvalidUserName::BadCharacter),
            ("a\u{a0}b", InvalidUserName::BadCharacter),
            ("#a", InvalidUserName::StartsWithHash),
            (long.as_str(), InvalidUserName::TooLong),
        ] {
            assert_eq!(validate_user_name(name), Err(reason), "{name:?}");
            let e = add_user(&path, name, "{PLAIN}x").unwrap_err();
            assert!(matches!(e, AuthError::InvalidUserName { .. }), "{name:?}");
        }
        assert!(!path.exists());
        assert_eq!(validate_user_name(&"x".repeat(255)), Ok(()));
        assert_eq!(validate_user_name("user@example.org"), Ok(()));
        assert_eq!(validate_user_name("élodie"), Ok(()));
    }

    #[test]
    fn stored_passwords_are_validated() {
        let (_dir, path) = temp();
        for stored in [
            "{NOPE}x",
            "plain",
            "{PLAIN}a:b",
            "{PLAIN}a\nb:{PLAIN}b",
            "{PLAIN}",
            "",
        ] {
            assert!(add_user(&path, "a", stored).is_err(), "{stored:?}");
        }
        assert!(!path.exists());
        let hashed = hash_password(Scheme::Sha512Crypt, b"pw").unwrap();
        add_user(&path, "a", &hashed).unwrap();
        assert!(set_password(&path, "a", "{SHA512-CRYPT}$6$x").is_err());
        assert_eq!(fs::read_to_string(&path).unwrap(), format!("a:{hashed}\n"));
    }

    #[test]
    fn a_broken_file_is_not_made_worse() {
        let (_dir, path) = temp();
        fs::write(&path, "a:{PLAIN}a\nb:{NOPE}b\n").unwrap();
        let e = add_user(&path, "c", "{PLAIN}c").unwrap_err();
        assert!(matches!(e, AuthError::Parse { line: 2, .. }), "{e:?}");
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "a:{PLAIN}a\nb:{NOPE}b\n"
        );
        // Removing the broken line is allowed: the result loads.
        del_user(&path, "b").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "a:{PLAIN}a\n");
    }

    #[test]
    fn removing_a_user_removes_their_app_passwords_only() {
        let (_dir, path) = temp();
        fs::write(&path, "a:{PLAIN}a\nb:{PLAIN}b\n").unwrap();
        crate::add_app_password(&path, "a", "phone", "{PLAIN}x").unwrap();
        crate::add_app_password(&path, "b", "phone", "{PLAIN}y").unwrap();
        del_user(&path, "a").unwrap();
        let apps = fs::read_to_string(crate::app_passwords_path(&path)).unwrap();
        assert!(!apps.contains("a:") && apps.starts_with("b:"), "{apps}");
        // Added again, the name does not get them back.
        add_user(&path, "a", "{PLAIN}a").unwrap();
        let used = crate::default_last_used_path(&path);
        assert!(crate::list_app_passwords(&path, &used, "a")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn mode_is_kept() {
        let (_dir, path) = temp();
        fs::write(&path, "a:{PLAIN}a\n").unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o640)).unwrap();
        add_user(&path, "b", "{PLAIN}b").unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o640);
    }

    #[test]
    fn a_symlink_is_followed() {
        let (dir, path) = temp();
        let real = dir.path().join("real");
        fs::write(&real, "a:{PLAIN}a\n").unwrap();
        std::os::unix::fs::symlink(&real, &path).unwrap();
        add_user(&path, "b", "{PLAIN}b").unwrap();
        assert!(fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            fs::read_to_string(&real).unwrap(),
            "a:{PLAIN}a\nb:{PLAIN}b\n"
        );
    }

    #[test]
    fn concurrent_edits_lose_nothing() {
        let (_dir, path) = temp();
        add_user(&path, "first", "{PLAIN}x").unwrap();
        std::thread::scope(|s| {
            for i in 0..16 {
                let path = &path;
                s.spawn(move || add_user(path, &format!("user{i}"), "{PLAIN}x").unwrap());
            }
        });
        let users = list_users(&path).unwrap();
        assert_eq!(users.len(), 17, "{users:?}");
        for i in 0..16 {
            assert!(users.contains(&format!("user{i}")), "user{i} lost");
        }
    }
}
