//! The per-maildrop index: a cache of each message file's name and wire size.
//!
//! It exists so that a login on an unchanged maildrop of 100,000 messages opens no message file
//! and does not even list `cur/`. It is only a cache: unique-ids are derived from the file names,
//! so when the index is missing, unreadable or corrupt it is rebuilt from the directory and no
//! unique-id changes. It is written atomically (temporary file, fsync, rename, directory fsync),
//! and only by the session that holds the maildrop's lock.
//!
//! The format is text, one record a line, so an administrator can read it:
//!
//! ```text
//! facteur-index 1
//! cur 1700000000123456789        (mtime of cur/ in ns, or "-": not trusted)
//! new 1700000000123456789        (mtime of new/ when it was last seen empty, or "-")
//! 1234 1700000000.M1P2.host:2,S  (wire size, then the file name in cur/, %XX-escaped)
//! end 1                          (the number of message lines: a truncated file is caught)
//! ```
//!
//! In names, every octet outside 0x21..=0x7E and '%' itself is written `%XX` (upper-case hex), so
//! any file name (spaces, newlines, non-UTF-8) fits on one line.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::name::{is_message_name, parse_decimal};
use super::StoreError;

/// The index file, in the maildir's top directory (beside `cur/`, `new/` and `tmp/`).
pub(crate) const INDEX_FILE: &str = "facteur-index";
/// Where a new index is written before it is renamed over the old one.
const INDEX_TMP_FILE: &str = "facteur-index.tmp";
/// The first line; a different version is treated as corrupt and rebuilt.
const HEADER: &[u8] = b"facteur-index 1";
/// An index larger than this is not read (it would be about ten million messages): treated as
/// corrupt, so a garbage file cannot make a login allocate without bound.
const MAX_INDEX_BYTES: u64 = 1 << 30;

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
}

/// One message file of `cur/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) name: OsString,
    pub(crate) wire_size: u64,
}

/// Why an index file was not accepted.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {reason}")]
pub(crate) struct Corrupt {
    line: usize,
    reason: &'static str,
}

/// Reads the index file of the maildir `dir`; `None` if there is none.
pub(crate) fn read(dir: &Path) -> io::Result<Option<Vec<u8>>> {
    let file = match File::open(dir.join(INDEX_FILE)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len > MAX_INDEX_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the index file is too large",
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(MAX_INDEX_BYTES).read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

/// Parses an index file. Any deviation from the format is an error: the caller rebuilds.
pub(crate) fn parse(bytes: &[u8]) -> Result<Index, Corrupt> {
    let Some(body) = bytes.strip_suffix(b"\n") else {
        return Err(Corrupt {
            line: 0,
            reason: "the file does not end with a newline",
        });
    };
    let mut lines = body
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l));
    let mut next = |reason| lines.next().ok_or(Corrupt { line: 0, reason });

    let (n, header) = next("the file is empty")?;
    if header != HEADER {
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

    let mut entries = Vec::new();
    while let Some((n, line)) = lines.next() {
        if let Some(count) = line.strip_prefix(b"end ") {
            if parse_decimal(count) != Some(entries.len() as u64) {
                return Err(Corrupt {
                    line: n,
                    reason: "the message count does not match",
                });
            }
            if lines.next().is_some() {
                return Err(Corrupt {
                    line: n + 1,
                    reason: "text after the end line",
                });
            }
            return Ok(Index {
                cur_mtime,
                new_mtime,
                entries,
            });
        }
        let corrupt = |reason| Corrupt { line: n, reason };
        let space = line
            .iter()
            .position(|&b| b == b' ')
            .ok_or(corrupt("no space in a message line"))?;
        let wire_size = parse_decimal(&line[..space]).ok_or(corrupt("bad wire size"))?;
        let name = unescape(&line[space + 1..]).ok_or(corrupt("bad file name escape"))?;
        if !is_message_name(&name) {
            return Err(corrupt("not a message file name"));
        }
        entries.push(Entry { name, wire_size });
    }
    Err(Corrupt {
        line: 0,
        reason: "no end line (truncated file?)",
    })
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
        out.extend_from_slice(entry.wire_size.to_string().as_bytes());
        out.push(b' ');
        escape_into(entry.name.as_bytes(), &mut out);
        out.push(b'\n');
    }
    out.extend_from_slice(format!("end {}\n", index.entries.len()).as_bytes());
    out
}

fn escape_into(name: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in name {
        if (0x21..=0x7e).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.push(b'%');
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0x0f)]);
        }
    }
}

fn unescape(escaped: &[u8]) -> Option<OsString> {
    let mut out = Vec::with_capacity(escaped.len());
    let mut rest = escaped;
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let (&hi, tail) = tail.split_first()?;
            let (&lo, tail) = tail.split_first()?;
            out.push(hex_value(hi)? << 4 | hex_value(lo)?);
            rest = tail;
        } else if (0x21..=0x7e).contains(&b) {
            out.push(b);
            rest = tail;
        } else {
            return None;
        }
    }
    Some(OsString::from_vec(out))
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Replaces the index of the maildir `dir` with `bytes`, atomically and durably.
pub(crate) fn write_atomic(dir: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = dir.join(INDEX_TMP_FILE);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| StoreError::io(&tmp, e))?;
        file.write_all(bytes).map_err(|e| StoreError::io(&tmp, e))?;
        file.sync_all().map_err(|e| StoreError::io(&tmp, e))?;
        let target = dir.join(INDEX_FILE);
        fs::rename(&tmp, &target).map_err(|e| StoreError::io(&target, e))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        // Best effort: a leftover temporary file is harmless (truncated at the next write).
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Makes the entries of directory `dir` durable (creations, renames, unlinks).
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Index {
        Index {
            cur_mtime: Some(1_700_000_000_123_456_789),
            new_mtime: None,
            entries: vec![
                Entry {
                    name: "1700000000.M1P2.host,S=3,W=4:2,S".into(),
                    wire_size: 4,
                },
                Entry {
                    name: OsString::from_vec(b"odd name\n%\xff:2,".to_vec()),
                    wire_size: 0,
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let index = sample();
        let bytes = serialize(&index);
        assert!(bytes.starts_with(b"facteur-index 1\ncur 1700000000123456789\nnew -\n4 1700"));
        assert!(bytes.ends_with(b"0 odd%20name%0A%25%FF:2,\nend 2\n"));
        assert_eq!(parse(&bytes).unwrap(), index);
        let empty = Index::default();
        assert_eq!(parse(&serialize(&empty)).unwrap(), empty);
    }

    #[test]
    fn every_damage_is_caught() {
        let good = serialize(&sample());
        // Every truncation is rejected.
        for len in 0..good.len() {
            assert!(parse(&good[..len]).is_err(), "truncated to {len}");
        }
        let cases: [&[u8]; 10] = [
            b"",
            b"\x00\xff garbage \n",
            b"facteur-index 2\ncur -\nnew -\nend 0\n",
            b"facteur-index 1\ncur x\nnew -\nend 0\n",
            b"facteur-index 1\ncur -\nnew -\nend 1\n",
            b"facteur-index 1\ncur -\nnew -\n12 .hidden\nend 1\n",
            b"facteur-index 1\ncur -\nnew -\n12 a/b\nend 1\n",
            b"facteur-index 1\ncur -\nnew -\n-1 a\nend 1\n",
            b"facteur-index 1\ncur -\nnew -\n1 a%zz\nend 1\n",
            b"facteur-index 1\ncur -\nnew -\nend 0\n1 a\n",
        ];
        for case in cases {
            assert!(parse(case).is_err(), "{:?}", String::from_utf8_lossy(case));
        }
    }

    #[test]
    fn atomic_write_and_read() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        write_atomic(dir.path(), b"one").unwrap();
        write_atomic(dir.path(), b"two").unwrap();
        assert_eq!(read(dir.path()).unwrap().as_deref(), Some(&b"two"[..]));
        assert!(!dir.path().join(INDEX_TMP_FILE).exists());
    }
}
