//! The two small files a Maildir keeps for RFC 2449's LOGIN-DELAY and EXPIRE, in the maildir's
//! top directory beside the index, where every node that serves the maildrop sees them:
//!
//! - `facteur-last-login`: the time of the last login that passed LOGIN-DELAY, in milliseconds
//!   since the epoch, one line.
//! - `facteur-retrieved`: the first retrieval time of each message that has one, by base name
//!   (the part of the file name that never changes, before `:`), one message a line:
//!
//! ```text
//! facteur-retrieved 1
//! 1700000000123 1700000000.M1P2.host   (milliseconds since the epoch, the base name %XX-escaped)
//! ```
//!
//! Neither is part of the Maildir format: Dovecot, Postfix and mail readers ignore files they
//! do not know in the top directory, as they ignore `facteur-index`. Both are written only by the
//! session holding the maildrop's lock, through a temporary file created exclusively (never
//! through a link), fsynced, then renamed over the old one. Both live in a maildrop its owner
//! can write, so they are claims: opened without following a link, read only if regular and
//! small, and a file that does not parse counts as absent. Absent, LOGIN-DELAY lets the next
//! login in, and EXPIRE counts from the next retrieval: both fail towards keeping mail.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use facteur_proto::encoding::{percent_decode, percent_encode};

use crate::handle::{self, Opened};
use crate::index::{replace_file, MAX_INDEX_BYTES};
use crate::Owner;

pub(crate) const LAST_LOGIN_FILE: &str = "facteur-last-login";
const LAST_LOGIN_TMP_FILE: &str = "facteur-last-login.tmp";
pub(crate) const RETRIEVED_FILE: &str = "facteur-retrieved";
const RETRIEVED_TMP_FILE: &str = "facteur-retrieved.tmp";
const RETRIEVED_HEADER: &[u8] = b"facteur-retrieved 1";

/// The largest last-login file read: one number and a newline.
const MAX_LAST_LOGIN_BYTES: u64 = 64;

/// Milliseconds since the epoch (0 for a clock before it).
pub(crate) fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The content of `name` in `dir` if it is a regular file of at most `cap` octets; `None` if it
/// is missing, not a regular file (a link, a FIFO: never followed, never read) or larger.
fn read_small(dir: &File, name: &str, cap: u64) -> io::Result<Option<Vec<u8>>> {
    let file = match handle::open_regular(dir, OsStr::new(name))? {
        Opened::File(f) => f,
        Opened::Missing => return Ok(None),
        Opened::NotRegular => {
            tracing::warn!(file = name, "not a regular file in a maildrop: ignored");
            return Ok(None);
        }
    };
    let mut bytes = Vec::new();
    // The file may grow after it was opened: never read past the cap.
    file.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        tracing::warn!(file = name, "file too large in a maildrop: ignored");
        return Ok(None);
    }
    Ok(Some(bytes))
}

/// The last login recorded in the maildir whose top directory is `dir`, in milliseconds since
/// the epoch; `None` if there is none that can be read.
pub(crate) fn last_login(dir: &File) -> io::Result<Option<u64>> {
    last_login_named(dir, LAST_LOGIN_FILE)
}

/// [`last_login`] from the file `name` of `dir` (an mbox's `.USER.facteur-last-login`).
pub(crate) fn last_login_named(dir: &File, name: &str) -> io::Result<Option<u64>> {
    let Some(bytes) = read_small(dir, name, MAX_LAST_LOGIN_BYTES)? else {
        return Ok(None);
    };
    let text = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    let parsed = std::str::from_utf8(text)
        .ok()
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|t| t.parse::<u64>().ok());
    if parsed.is_none() {
        tracing::warn!(file = name, "malformed file in a maildrop: ignored");
    }
    Ok(parsed)
}

/// Whether a login at `now` must wait, the last one having been at `last` (milliseconds): a
/// last login in the future (a clock set back) counts from now, so it never locks a user out
/// for longer than `delay`.
pub(crate) fn too_soon(last: u64, now: u64, delay: Duration) -> bool {
    let delay = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    let last = last.min(now);
    now < last.saturating_add(delay)
}

/// Records `now` (milliseconds) as the last login.
pub(crate) fn write_last_login(dir: &File, now: u64, owner: Owner) -> io::Result<()> {
    write_last_login_named(dir, LAST_LOGIN_TMP_FILE, LAST_LOGIN_FILE, now, owner)
}

/// [`write_last_login`] into the file `name` of `dir`, through `tmp`.
pub(crate) fn write_last_login_named(
    dir: &File,
    tmp: &str,
    name: &str,
    now: u64,
    owner: Owner,
) -> io::Result<()> {
    replace_file(
        dir,
        OsStr::new(tmp),
        OsStr::new(name),
        format!("{now}\n").as_bytes(),
        owner,
    )
}

/// First retrieval times, by base name, in milliseconds since the epoch.
pub(crate) type Retrieved = HashMap<Vec<u8>, u64>;

/// The first retrieval times recorded in the maildir whose top directory is `dir`; empty if
/// there are none that can be read.
pub(crate) fn retrieved(dir: &File) -> io::Result<Retrieved> {
    retrieved_named(dir, RETRIEVED_FILE)
}

/// [`retrieved`] from the file `name` of `dir`; the keys are whatever the store chose (a
/// Maildir's base names, an mbox's unique-ids).
pub(crate) fn retrieved_named(dir: &File, name: &str) -> io::Result<Retrieved> {
    let Some(bytes) = read_small(dir, name, MAX_INDEX_BYTES)? else {
        return Ok(Retrieved::new());
    };
    Ok(parse_retrieved(&bytes).unwrap_or_else(|| {
        tracing::warn!(file = name, "malformed file in a maildrop: ignored");
        Retrieved::new()
    }))
}

fn parse_retrieved(bytes: &[u8]) -> Option<Retrieved> {
    let body = bytes.strip_suffix(b"\n")?;
    let mut lines = body.split(|&b| b == b'\n');
    if lines.next()? != RETRIEVED_HEADER {
        return None;
    }
    let mut map = Retrieved::new();
    for line in lines {
        let space = line.iter().position(|&b| b == b' ')?;
        let (time, name) = (line.get(..space)?, line.get(space + 1..)?);
        if time.is_empty() || !time.iter().all(u8::is_ascii_digit) || name.is_empty() {
            return None;
        }
        let time = std::str::from_utf8(time).ok()?.parse::<u64>().ok()?;
        let base = percent_decode(name)?;
        if base.is_empty() {
            return None;
        }
        map.insert(base, time);
    }
    Some(map)
}

fn serialize_retrieved(map: &Retrieved) -> Vec<u8> {
    let mut entries: Vec<_> = map.iter().collect();
    // A stable order, so that the same times make the same file.
    entries.sort();
    let mut out = RETRIEVED_HEADER.to_vec();
    out.push(b'\n');
    for (base, time) in entries {
        out.extend_from_slice(format!("{time} ").as_bytes());
        out.extend_from_slice(percent_encode(base, |b| (0x21..=0x7e).contains(&b)).as_bytes());
        out.push(b'\n');
    }
    out
}

/// Replaces the first retrieval times with `map`.
pub(crate) fn write_retrieved(dir: &File, map: &Retrieved, owner: Owner) -> io::Result<()> {
    write_retrieved_named(dir, RETRIEVED_TMP_FILE, RETRIEVED_FILE, map, owner)
}

/// [`write_retrieved`] into the file `name` of `dir`, through `tmp`.
pub(crate) fn write_retrieved_named(
    dir: &File,
    tmp: &str,
    name: &str,
    map: &Retrieved,
    owner: Owner,
) -> io::Result<()> {
    let bytes = serialize_retrieved(map);
    if bytes.len() as u64 > MAX_INDEX_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the retrieval times would be too large to be read back",
        ));
    }
    replace_file(dir, OsStr::new(tmp), OsStr::new(name), &bytes, owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retrieval_times_round_trip_any_base_name() {
        let mut map = Retrieved::new();
        map.insert(b"1700000000.M1P2.host".to_vec(), 1_700_000_000_123);
        map.insert(b"with space\n%and newline".to_vec(), 5);
        map.insert(vec![0xff, b':', 0x00], 0);
        let bytes = serialize_retrieved(&map);
        assert!(bytes.starts_with(b"facteur-retrieved 1\n"));
        assert_eq!(parse_retrieved(&bytes), Some(map));
        assert_eq!(
            parse_retrieved(b"facteur-retrieved 1\n"),
            Some(Retrieved::new())
        );
    }

    #[test]
    fn malformed_retrieval_times_are_refused_whole() {
        for bad in [
            &b""[..],
            b"facteur-retrieved 1",
            b"facteur-retrieved 2\n",
            b"facteur-retrieved 1\n12\n",
            b"facteur-retrieved 1\n-1 a\n",
            b"facteur-retrieved 1\n1 \n",
            b"facteur-retrieved 1\n1 %zz\n",
            b"facteur-retrieved 1\n99999999999999999999999 a\n",
        ] {
            assert_eq!(parse_retrieved(bad), None, "{}", bad.escape_ascii());
        }
    }

    #[test]
    fn too_soon_counts_from_the_last_login_and_never_from_the_future() {
        let d = Duration::from_secs(2);
        assert!(too_soon(10_000, 11_999, d));
        assert!(!too_soon(10_000, 12_000, d));
        // A last login "in the future" (the clock went back) counts from now.
        assert!(too_soon(99_000, 12_000, d));
        assert!(!too_soon(10_000, 10_000, Duration::ZERO));
    }

    #[test]
    fn the_files_are_never_read_or_written_through_links() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("t");
        std::fs::write(&target, "1\n").unwrap();
        symlink(&target, dir.path().join(LAST_LOGIN_FILE)).unwrap();
        symlink(&target, dir.path().join(RETRIEVED_FILE)).unwrap();
        let root = File::open(dir.path()).unwrap();
        assert_eq!(last_login(&root).unwrap(), None);
        assert!(retrieved(&root).unwrap().is_empty());
        write_last_login(&root, 42, Owner::default()).unwrap();
        let mut map = Retrieved::new();
        map.insert(b"a".to_vec(), 7);
        write_retrieved(&root, &map, Owner::default()).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"1\n");
        assert_eq!(last_login(&root).unwrap(), Some(42));
        assert_eq!(retrieved(&root).unwrap(), map);
    }
}
