//! The per-maildrop index: a cache of each message file's name and wire size.
//!
//! It exists so that a login on an unchanged maildrop of 100,000 messages opens no message file
//! and does not even list `cur/`. It is only a cache: unique-ids are derived from the file names,
//! so when the index is missing, unreadable or corrupt it is rebuilt from the directory and no
//! unique-id changes. It is written atomically (temporary file, fsync, rename, directory fsync),
//! and only by the session that holds the maildrop's lock.
//!
//! The file lives in the maildrop, so it is a claim like any other: it is opened without
//! following a link and read only if it is a regular file no larger than [`MAX_INDEX_BYTES`];
//! anything else is ignored and replaced. The temporary file is created exclusively, never
//! through a link.
//!
//! The format is text, one record a line, so an administrator can read it:
//!
//! ```text
//! facteur-index 2
//! cur 1700000000123456789        (mtime of cur/ in ns, or "-": not trusted)
//! new 1700000000123456789        (mtime of new/ when it was last seen empty, or "-")
//! 1234 1700000000.M1P2.host:2,S  (wire size, then the file name in cur/, %XX-escaped)
//! - 1700000001.M3P4.host:2,      (a message not sized yet: see `maildir`, deferred sizes)
//! end 2 5d1c0a3b9e8f7a61         (the number of message lines, and a checksum of the lines
//!                                 above it: a truncated, damaged or hand-edited file is caught)
//! ```
//!
//! The index is written only by facteur, after it sorted the messages in delivery order and made
//! sure no unique-id appears twice; the checksum proves the file is still exactly that, so an
//! open on the fast path need not check either again.
//!
//! Version 1 (written before sizes could be deferred) has no "-" sizes and no checksum; it is
//! read, and its order and unique-ids are checked as for a listing of the directory.
//!
//! In names, every octet outside 0x21..=0x7E and '%' itself is written `%XX` (upper-case hex), so
//! any file name (spaces, newlines, non-UTF-8) fits on one line.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use super::fasthash::checksum;
use super::handle::{self, Opened};
use super::name::is_message_name;
use super::Owner;
use facteur_proto::encoding::{percent_decode, percent_encode_into};
use facteur_proto::types::parse_decimal;

/// The index file, in the maildir's top directory (beside `cur/`, `new/` and `tmp/`).
pub(crate) const INDEX_FILE: &str = "facteur-index";
/// Where a new index is written before it is renamed over the old one.
const INDEX_TMP_FILE: &str = "facteur-index.tmp";
/// The first line; a different version is treated as corrupt and rebuilt.
const HEADER: &[u8] = b"facteur-index 2";
/// The first line of the previous version, still read.
const HEADER_V1: &[u8] = b"facteur-index 1";
/// The most messages an index describes; a maildrop with more still opens, by listing its
/// directories, at every login.
pub(crate) const MAX_INDEX_MESSAGES: u64 = 1_000_000;
/// Octets allowed per message line: a size and a typical name take about 70; this leaves room
/// for long names and a few escaped octets.
const BYTES_PER_MESSAGE: u64 = 256;
/// An index larger than this (256 MB) is neither read nor written: treated as corrupt and
/// rebuilt, so a file planted in the maildrop cannot make a login allocate without bound.
pub(crate) const MAX_INDEX_BYTES: u64 = 4096 + MAX_INDEX_MESSAGES * BYTES_PER_MESSAGE;

/// The index as read or about to be written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Index {
    /// The mtime of `cur/` (ns since the epoch) when it was listed for this index, if it was old
    /// enough to be trusted.
    pub(crate) cur_mtime: Option<u128>,
    /// The mtime of `new/` when it was last listed and found empty, if old enough to be trusted.
    pub(crate) new_mtime: Option<u128>,
    /// The messages, in delivery order.
    pub(crate) entries: Vec<Entry>,
    /// True when the file's checksum proved it is as facteur wrote it: in delivery order, and no
    /// unique-id twice. Not written; set by `parse`.
    pub(crate) sealed: bool,
}

/// One message file of `cur/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) name: OsString,
    /// `None` while nobody has read the file to size it.
    pub(crate) wire_size: Option<u64>,
}

/// Why an index file was not accepted.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {reason}")]
pub(crate) struct Corrupt {
    line: usize,
    reason: &'static str,
}

/// Which index file, and which state of it, a snapshot was built from: its device and inode
/// (a new index is a new file, renamed into place), size, mtime and ctime (an edit in place
/// changes the ctime, which no program can set back). Two reads of the file with the same
/// version read the same bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Version {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Version {
    /// The version a `stat` of the file gives (the same values as [`Version::of`] for the
    /// same state of the same file).
    // The fields' types differ between targets (i64/u64, i64/c_long).
    #[allow(clippy::useless_conversion)]
    fn of_stat(st: &rustix::fs::Stat) -> Self {
        Self {
            dev: st.st_dev,
            ino: st.st_ino,
            len: u64::try_from(st.st_size).unwrap_or(0),
            mtime: (st.st_mtime, i64::try_from(st.st_mtime_nsec).unwrap_or(-1)),
            ctime: (st.st_ctime, i64::try_from(st.st_ctime_nsec).unwrap_or(-1)),
        }
    }

    pub(crate) fn of_metadata(meta: &std::fs::Metadata) -> Self {
        Self::of(meta)
    }

    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// The version of the index file of the maildir whose top directory is `dir`, from one stat
/// of its name there (never through a link), without opening or reading it; `None` if there
/// is none or it is not a regular file (a link, a FIFO: as when an open of it tells so).
pub(crate) fn version(dir: &File) -> io::Result<Option<Version>> {
    use rustix::fs::{statat, AtFlags, FileType};
    // One system call where an open, an fstat and a close took three: nothing is read here,
    // so a FIFO or a device has nothing to make wait.
    match statat(dir, INDEX_FILE, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {
            Ok(Some(Version::of_stat(&st)))
        }
        Ok(_) | Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Reads the index file of the maildir whose top directory is `dir`; `None` if there is none.
/// A link, a FIFO, a device or a file larger than [`MAX_INDEX_BYTES`] is an error (rebuilt by
/// the caller), and is never read.
#[cfg(test)]
pub(crate) fn read(dir: &File) -> io::Result<Option<Vec<u8>>> {
    Ok(read_versioned(dir)?.map(|(bytes, _)| bytes))
}

/// [`read`], with the version of the file as it was opened (fstat before the read: should the
/// file change meanwhile, the version is older than the bytes, and never matches again).
pub(crate) fn read_versioned(dir: &File) -> io::Result<Option<(Vec<u8>, Version)>> {
    let name = OsStr::new(INDEX_FILE);
    let invalid = |what| io::Error::new(io::ErrorKind::InvalidData, what);
    let (file, meta) = match handle::open_regular_stat(dir, name)? {
        (Opened::File(f), Some(meta)) => (f, meta),
        (Opened::Missing, _) => return Ok(None),
        _ => return Err(invalid("the index is not a regular file")),
    };
    let version = Version::of(&meta);
    let len = meta.len();
    if len > MAX_INDEX_BYTES {
        return Err(invalid("the index file is too large"));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    // The file may grow after fstat: never read past the cap.
    file.take(MAX_INDEX_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_INDEX_BYTES {
        return Err(invalid("the index file is too large"));
    }
    Ok(Some((bytes, version)))
}

/// Parses an index file. Any deviation from the format is an error: the caller rebuilds.
pub(crate) fn parse(bytes: &[u8]) -> Result<Index, Corrupt> {
    let Some(body) = bytes.strip_suffix(b"\n") else {
        return Err(Corrupt {
            line: 0,
            reason: "the file does not end with a newline",
        });
    };
    let mut lines = Lines(Some(body)).enumerate().map(|(i, l)| (i + 1, l));
    let mut next = |reason| lines.next().ok_or(Corrupt { line: 0, reason });

    let (n, header) = next("the file is empty")?;
    let v1 = header == HEADER_V1;
    if header != HEADER && !v1 {
        return Err(Corrupt {
            line: n,
            reason: "unknown header or version",
        });
    }
    let (n, cur) = next("no cur line")?;
    let cur_mtime = parse_mtime(cur, b"cur ").ok_or(Corrupt {
        line: n,
        reason: "bad cur line",
    })?;
    let (n, new) = next("no new line")?;
    let new_mtime = parse_mtime(new, b"new ").ok_or(Corrupt {
        line: n,
        reason: "bad new line",
    })?;

    // Message lines are about 60 octets: reserve once rather than grow a 100,000-entry vector.
    let mut entries = Vec::with_capacity(bytes.len() / 48);
    loop {
        let (n, line) = next("no end line (truncated file?)")?;
        if let Some(end) = line.strip_prefix(b"end ") {
            let (count, sum) = match end.iter().position(|&b| b == b' ') {
                Some(space) if !v1 => (&end[..space], Some(&end[space + 1..])),
                _ => (end, None),
            };
            if parse_decimal(count) != Some(entries.len() as u64) {
                return Err(Corrupt {
                    line: n,
                    reason: "the message count does not match",
                });
            }
            if !v1 {
                // Everything before the end line.
                let covered = body.len() - line.len();
                let expected = format!("{:016x}", checksum(&body[..covered]));
                if sum != Some(expected.as_bytes()) {
                    return Err(Corrupt {
                        line: n,
                        reason: "the checksum does not match",
                    });
                }
            }
            // Any line at all after the end line.
            if next("").is_ok() {
                return Err(Corrupt {
                    line: n + 1,
                    reason: "text after the end line",
                });
            }
            return Ok(Index {
                cur_mtime,
                new_mtime,
                entries,
                sealed: !v1,
            });
        }
        let corrupt = |reason| Corrupt { line: n, reason };
        let space = memchr::memchr(b' ', line).ok_or(corrupt("no space in a message line"))?;
        let size_field = &line[..space];
        let wire_size = if size_field == b"-" && !v1 {
            None
        } else {
            Some(parse_decimal(size_field).ok_or(corrupt("bad wire size"))?)
        };
        let name = unescape(&line[space + 1..]).ok_or(corrupt("bad file name escape"))?;
        if !is_message_name(&name) {
            return Err(corrupt("not a message file name"));
        }
        entries.push(Entry { name, wire_size });
    }
}

/// The lines of a text, as `split(|&b| b == b'\n')` gives them, found with memchr.
struct Lines<'a>(Option<&'a [u8]>);

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.0.take()?;
        match memchr::memchr(b'\n', rest) {
            Some(i) => {
                let (line, tail) = rest.split_at(i);
                self.0 = tail.get(1..);
                Some(line)
            }
            None => Some(rest),
        }
    }
}

fn parse_mtime(line: &[u8], prefix: &[u8]) -> Option<Option<u128>> {
    let value = line.strip_prefix(prefix)?;
    if value == b"-" {
        return Some(None);
    }
    if value.is_empty() || value.len() > 39 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok().map(Some)
}

/// The bytes of an index file.
pub(crate) fn serialize(index: &Index) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + index.entries.len() * 72);
    out.extend_from_slice(HEADER);
    out.push(b'\n');
    for (label, mtime) in [(&b"cur "[..], index.cur_mtime), (b"new ", index.new_mtime)] {
        out.extend_from_slice(label);
        match mtime {
            Some(ns) => out.extend_from_slice(ns.to_string().as_bytes()),
            None => out.push(b'-'),
        }
        out.push(b'\n');
    }
    for entry in &index.entries {
        match entry.wire_size {
            Some(size) => out.extend_from_slice(size.to_string().as_bytes()),
            None => out.push(b'-'),
        }
        out.push(b' ');
        escape_into(entry.name.as_bytes(), &mut out);
        out.push(b'\n');
    }
    let sum = checksum(&out);
    out.extend_from_slice(format!("end {} {sum:016x}\n", index.entries.len()).as_bytes());
    out
}

/// An octet that stands for itself in the index: printable ASCII but space (and '%').
fn plain(b: u8) -> bool {
    (0x21..=0x7e).contains(&b)
}

fn escape_into(name: &[u8], out: &mut Vec<u8>) {
    percent_encode_into(out, name, plain);
}

fn unescape(escaped: &[u8]) -> Option<OsString> {
    // Nearly every name has nothing escaped: check and copy it in one go.
    if escaped.iter().all(|&b| plain(b) && b != b'%') {
        return Some(OsString::from_vec(escaped.to_vec()));
    }
    if !escaped.iter().all(|&b| plain(b)) {
        return None;
    }
    percent_decode(escaped).map(OsString::from_vec)
}

/// Replaces the index of the maildir whose top directory is `dir` with `bytes`, atomically and
/// durably. The temporary file is created exclusively (never through a link); a leftover one
/// (a crash, or anything planted under that name) is unlinked first: only the session holding
/// the maildrop's lock writes here, so nobody else is using it. The new file is given to
/// `owner` (when running as root).
pub(crate) fn write_atomic(dir: &File, bytes: &[u8], owner: Owner) -> io::Result<()> {
    if bytes.len() as u64 > MAX_INDEX_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the index would be too large to be read back",
        ));
    }
    replace_file(
        dir,
        OsStr::new(INDEX_TMP_FILE),
        OsStr::new(INDEX_FILE),
        bytes,
        owner,
    )
}

/// Replaces `name` in `dir` with `bytes` through the temporary file `tmp`: created exclusively
/// (never through a link; a leftover is unlinked first, so only a writer that excludes the
/// others may use this), fsynced, renamed over `name`, then the directory fsynced. The new file
/// is given to `owner`.
pub(crate) fn replace_file(
    dir: &File,
    tmp: &OsStr,
    name: &OsStr,
    bytes: &[u8],
    owner: Owner,
) -> io::Result<()> {
    let mut file = match handle::create_new(dir, tmp, owner) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            handle::unlink(dir, tmp)?;
            handle::create_new(dir, tmp, owner)?
        }
        other => other?,
    };
    let result = (|| {
        file.write_all(bytes)?;
        file.sync_all()?;
        handle::rename_replace(dir, tmp, name)?;
        dir.sync_all()
    })();
    if result.is_err() {
        // Best effort: a leftover temporary file is removed by the next write anyway.
        let _ = handle::unlink(dir, tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The version from a stat of the name is the one an open and fstat of the file give (a
    /// snapshot kept under one is found under the other), and a link or a FIFO has none.
    #[test]
    fn the_version_of_a_name_is_the_version_of_the_file_read() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = handle::open_dir_path(tmp.path()).unwrap();
        assert_eq!(version(&dir).unwrap(), None);
        write_atomic(&dir, &serialize(&sample()), Owner::default()).unwrap();
        let (_, read) = read_versioned(&dir).unwrap().unwrap();
        assert_eq!(version(&dir).unwrap(), Some(read));
        // An edit in place is another version.
        std::fs::OpenOptions::new()
            .append(true)
            .open(tmp.path().join(INDEX_FILE))
            .unwrap()
            .write_all(b"x")
            .unwrap();
        assert_ne!(version(&dir).unwrap(), Some(read));
        let (_, reread) = read_versioned(&dir).unwrap().unwrap();
        assert_eq!(version(&dir).unwrap(), Some(reread));

        std::fs::remove_file(tmp.path().join(INDEX_FILE)).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("elsewhere"), tmp.path().join(INDEX_FILE))
            .unwrap();
        write_atomic_elsewhere(&tmp);
        assert_eq!(version(&dir).unwrap(), None, "a link");
        std::fs::remove_file(tmp.path().join(INDEX_FILE)).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(tmp.path().join(INDEX_FILE))
            .status()
            .unwrap();
        assert!(made.success());
        assert_eq!(version(&dir).unwrap(), None, "a FIFO");
    }

    /// A regular file where the link of the test points.
    fn write_atomic_elsewhere(tmp: &tempfile::TempDir) {
        std::fs::write(tmp.path().join("elsewhere"), serialize(&sample())).unwrap();
    }

    fn sample() -> Index {
        Index {
            cur_mtime: Some(1_700_000_000_123_456_789),
            new_mtime: None,
            entries: vec![
                Entry {
                    name: "1700000000.M1P2.host,S=3,W=4:2,S".into(),
                    wire_size: Some(4),
                },
                Entry {
                    name: "1700000001.M3P4.host:2,".into(),
                    wire_size: None,
                },
                Entry {
                    name: OsString::from_vec(b"odd name\n%\xff:2,".to_vec()),
                    wire_size: Some(0),
                },
            ],
            sealed: true,
        }
    }

    #[test]
    fn round_trip() {
        let index = sample();
        let bytes = serialize(&index);
        assert!(bytes.starts_with(b"facteur-index 2\ncur 1700000000123456789\nnew -\n4 1700"));
        let end = bytes.len() - "end 3 0123456789abcdef\n".len();
        assert!(bytes[..end].ends_with(b"\n- 1700000001.M3P4.host:2,\n0 odd%20name%0A%25%FF:2,\n"));
        assert!(bytes[end..].starts_with(b"end 3 "));
        assert_eq!(parse(&bytes).unwrap(), index);
        let empty = Index {
            sealed: true,
            ..Index::default()
        };
        assert_eq!(parse(&serialize(&empty)).unwrap(), empty);
    }

    #[test]
    fn version_1_is_still_read() {
        let v1 = b"facteur-index 1\ncur 17\nnew -\n12 1.M1P1.h:2,\nend 1\n";
        let index = parse(v1).unwrap();
        assert!(
            !index.sealed,
            "no checksum: order and unique-ids must be checked"
        );
        assert_eq!(index.cur_mtime, Some(17));
        assert_eq!(index.entries[0].wire_size, Some(12));
        // A deferred size did not exist in version 1.
        assert!(parse(b"facteur-index 1\ncur -\nnew -\n- a\nend 1\n").is_err());
    }

    #[test]
    fn every_damage_is_caught() {
        let good = serialize(&sample());
        // Every truncation is rejected.
        for len in 0..good.len() {
            assert!(parse(&good[..len]).is_err(), "truncated to {len}");
        }
        let cases: [&[u8]; 11] = [
            b"",
            b"\x00\xff garbage \n",
            b"facteur-index 3\ncur -\nnew -\nend 0\n",
            b"facteur-index 1\ncur x\nnew -\nend 0\n",
            b"facteur-index 1\ncur -\nnew -\nend 1\n",
            b"facteur-index 1\ncur -\nnew -\n12 .hidden\nend 1\n",
            b"facteur-index 1\ncur -\nnew -\n12 a/b\nend 1\n",
            b"facteur-index 1\ncur -\nnew -\n-1 a\nend 1\n",
            b"facteur-index 1\ncur -\nnew -\n1 a%zz\nend 1\n",
            b"facteur-index 1\ncur -\nnew -\nend 0\n1 a\n",
            b"facteur-index 2\ncur -\nnew -\n-- a\nend 1\n",
        ];
        for case in cases {
            assert!(parse(case).is_err(), "{:?}", String::from_utf8_lossy(case));
        }
        // Any change to a message line, even one that parses, breaks the checksum.
        let text = String::from_utf8_lossy(&good).into_owned();
        for (from, to) in [("\n4 ", "\n5 "), (":2,S", ":2,T"), ("\n- 1700", "\n7 1700")] {
            let edited = text.replacen(from, to, 1);
            assert_ne!(edited, text);
            let err = parse(edited.as_bytes()).unwrap_err();
            assert_eq!(err.reason, "the checksum does not match");
        }
        // Lines moved around: the checksum covers their order too.
        let mut lines: Vec<&str> = text.lines().collect();
        lines.swap(3, 4);
        let swapped = lines.join("\n") + "\n";
        assert!(parse(swapped.as_bytes()).is_err());
    }

    #[test]
    fn atomic_write_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let d = handle::open_dir_path(dir.path()).unwrap();
        assert_eq!(read(&d).unwrap(), None);
        write_atomic(&d, b"one", Owner::default()).unwrap();
        write_atomic(&d, b"two", Owner::default()).unwrap();
        assert_eq!(read(&d).unwrap().as_deref(), Some(&b"two"[..]));
        assert!(!dir.path().join(INDEX_TMP_FILE).exists());
    }

    #[test]
    fn links_fifos_and_huge_files_are_never_read_or_written_through() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let d = handle::open_dir_path(dir.path()).unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(outside.path(), b"precious").unwrap();

        // The temporary file a link to somewhere else: the link is replaced, never written
        // through.
        symlink(outside.path(), dir.path().join(INDEX_TMP_FILE)).unwrap();
        write_atomic(&d, b"one", Owner::default()).unwrap();
        assert_eq!(std::fs::read(outside.path()).unwrap(), b"precious");
        assert_eq!(read(&d).unwrap().as_deref(), Some(&b"one"[..]));

        // The index a link (to a file, or to /dev/zero): an error, nothing read.
        std::fs::remove_file(dir.path().join(INDEX_FILE)).unwrap();
        symlink(outside.path(), dir.path().join(INDEX_FILE)).unwrap();
        assert!(read(&d).is_err());
        std::fs::remove_file(dir.path().join(INDEX_FILE)).unwrap();
        symlink("/dev/zero", dir.path().join(INDEX_FILE)).unwrap();
        assert!(read(&d).is_err());
        // Replaced by the next write, the target untouched.
        write_atomic(&d, b"two", Owner::default()).unwrap();
        assert_eq!(read(&d).unwrap().as_deref(), Some(&b"two"[..]));
        assert_eq!(std::fs::read(outside.path()).unwrap(), b"precious");

        // A FIFO: refused at once, without waiting for a writer.
        std::fs::remove_file(dir.path().join(INDEX_FILE)).unwrap();
        let status = std::process::Command::new("mkfifo")
            .arg(dir.path().join(INDEX_FILE))
            .status()
            .unwrap();
        assert!(status.success());
        assert!(read(&d).is_err());

        // Larger than the cap: refused from its size alone (a sparse file, nothing allocated).
        std::fs::remove_file(dir.path().join(INDEX_FILE)).unwrap();
        let big = File::create(dir.path().join(INDEX_FILE)).unwrap();
        big.set_len(MAX_INDEX_BYTES + 1).unwrap();
        assert!(read(&d).is_err());
    }

    fn entry() -> impl proptest::strategy::Strategy<Value = Entry> {
        use proptest::prelude::*;
        (
            proptest::collection::vec(any::<u8>(), 1..40),
            proptest::option::of(any::<u64>()),
        )
            .prop_map(|(mut name, wire_size)| {
                // A message name: not a dotfile, no '/' and no NUL (the parser refuses those).
                name.retain(|&b| b != b'/' && b != 0);
                if name.first().is_none_or(|&b| b == b'.') {
                    name.insert(0, b'1');
                }
                Entry {
                    name: OsString::from_vec(name),
                    wire_size,
                }
            })
    }

    proptest::proptest! {
        /// Any index, whatever bytes its names hold, reads back as written, sealed.
        #[test]
        fn any_index_round_trips(
            entries in proptest::collection::vec(entry(), 0..30),
            cur in proptest::option::of(proptest::prelude::any::<u128>()),
            new in proptest::option::of(proptest::prelude::any::<u128>()),
        ) {
            let index = Index { cur_mtime: cur, new_mtime: new, entries, sealed: true };
            proptest::prop_assert_eq!(parse(&serialize(&index)).unwrap(), index);
        }

        /// Damage of any kind (a byte changed, a cut, bytes inserted) is an error, never a
        /// panic and never a different index.
        #[test]
        fn damaged_indexes_are_refused(
            entries in proptest::collection::vec(entry(), 1..10),
            at in proptest::prelude::any::<usize>(),
            byte in proptest::prelude::any::<u8>(),
            how in 0u8..3,
        ) {
            let index = Index { cur_mtime: Some(1), new_mtime: None, entries, sealed: true };
            let good = serialize(&index);
            let at = at % good.len();
            let mut bad = good.clone();
            match how {
                0 => bad[at] = byte,
                1 => bad.truncate(at),
                _ => bad.insert(at, byte),
            }
            if bad != good {
                match parse(&bad) {
                    Err(_) => {}
                    // A change can only keep the file valid if it changes nothing that counts
                    // (impossible here: every byte is covered by the checksum or checked).
                    Ok(other) => proptest::prop_assert_eq!(other, index),
                }
            }
        }

        /// Arbitrary bytes never make the parser panic.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = parse(&bytes);
            let mut framed = b"facteur-index 2\ncur -\nnew -\n".to_vec();
            framed.extend_from_slice(&bytes);
            let _ = parse(&framed);
        }
    }
}
