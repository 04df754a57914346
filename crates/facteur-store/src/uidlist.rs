//! Dovecot's `dovecot-uidlist`: the file in which Dovecot gives each Maildir message its IMAP
//! uid, from which its default POP3 unique-ids (`pop3_uidl_format = %08Xu%08Xv`) are made. With
//! `[store] uidl = "dovecot"` facteur reads it, so that a maildrop Dovecot served keeps its
//! unique-ids, and adds the uids of new mail to it the way Dovecot does, so that a message gets
//! the same unique-id whichever of the two serves it next. Despite the upper-case `X`, Dovecot
//! writes that format in lower-case hex: `000000016b1141e6` for uid 1 of uidvalidity 1796293094.
//!
//! The format (version 3, Dovecot 1.1 and later; `maildir-uidlist.c`):
//!
//! ```text
//! 3 V1796293094 N4 G2857e61ee641116bd65f000083ecc375   (uidvalidity, next uid, mailbox GUID)
//! 1 W23 :1700000001.M1P1.host                           (uid, fields, ':', the base name)
//! 2 W23 P1700000002.M2P1.host :1700000002.M2P1.host     (P: the unique-id Dovecot saved)
//! ```
//!
//! uids are decimal, strictly increasing; a field is an upper-case letter and a value up to the
//! next space: `P` the unique-id `pop3_save_uidl` recorded (empty: the base name), `O` the POP3
//! order (listed first, lowest first). Only complete lines count: a last line without its newline
//! is one Dovecot is still appending, as Dovecot itself reads it.
//!
//! Dovecot changes the file only while it holds the dotlock `dovecot-uidlist.lock` (created
//! exclusively, holding `pid:host`, stale after two minutes without a change or when its process
//! is gone), and replaces it by a rename. facteur does the same.
//!
//! The file lives in the maildrop, so it is a claim like any other: it is opened without
//! following a link and never waited on, and read only if it is a regular file no larger than
//! [`MAX_UIDLIST_BYTES`] with lines of at most [`MAX_LINE_BYTES`]. Anything else is an error,
//! never a panic and never a guess: a maildrop whose unique-ids cannot be known is not served
//! (`-ERR [SYS/TEMP]`), because unique-ids that change make clients download everything again.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::hash::BuildHasherDefault;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use facteur_proto::types::parse_decimal;
use facteur_proto::Uidl;

use crate::fasthash::FastHasher;
use crate::handle::{self, Opened};
use crate::Owner;

/// The file, in the maildir's top directory (Dovecot's control directory when none is set).
pub(crate) const UIDLIST_FILE: &str = "dovecot-uidlist";
/// Dovecot's dotlock on it.
const LOCK_FILE: &str = "dovecot-uidlist.lock";
/// Where a new version is written before it replaces the file (Dovecot's own name for it: only
/// the holder of the dotlock writes it).
const TMP_FILE: &str = "dovecot-uidlist.tmp";
/// A uidlist larger than this (128 MiB, about a million messages at Dovecot's 60 to 120 octets
/// a line) is refused, so that a file planted in the maildrop cannot make a login allocate
/// without bound.
pub(crate) const MAX_UIDLIST_BYTES: u64 = 128 << 20;
/// A line: a uid, a few fields and a file name of at most 255 octets take about 400.
pub(crate) const MAX_LINE_BYTES: usize = 8192;
/// Dovecot's `MAILDIR_UIDLIST_LOCK_STALE_TIMEOUT`: a dotlock neither it nor the uidlist changed
/// for this long is overridden.
const LOCK_STALE: Duration = Duration::from_secs(120);
/// How long an open waits for the dotlock before serving the session without the new messages
/// (they are served at the next login): Dovecot holds it for milliseconds.
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(2);
/// Between two tries of the dotlock.
const LOCK_POLL: Duration = Duration::from_millis(20);
/// The lock file's content that is read to find its process: `pid:host` is short.
const LOCK_CONTENT_MAX: u64 = 256;

/// Why a uidlist was not accepted.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {reason}")]
pub(crate) struct Malformed {
    pub(crate) line: usize,
    pub(crate) reason: &'static str,
}

/// What Dovecot recorded for one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) uid: u32,
    /// The fields between the uid and the ':', as written (`W23 P...`), kept on a rewrite.
    fields: Vec<u8>,
    /// The message file's base name (its name up to the first ':').
    pub(crate) base: Vec<u8>,
}

/// The unique-id a record gives, as Dovecot's POP3 server would.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pop3Uidl<'a> {
    /// No `P` field: `%08Xu%08Xv`.
    Format,
    /// `P` with no value: the base name.
    BaseName,
    /// `P<value>`: that value.
    Saved(&'a [u8]),
}

impl Record {
    fn field(&self, key: u8) -> Option<&[u8]> {
        self.fields
            .split(|&b| b == b' ')
            .find(|f| f.first() == Some(&key))
            .map(|f| &f[1..])
    }

    /// The POP3 unique-id of this record.
    pub(crate) fn pop3_uidl(&self) -> Pop3Uidl<'_> {
        match self.field(b'P') {
            None => Pop3Uidl::Format,
            Some([]) => Pop3Uidl::BaseName,
            Some(value) => Pop3Uidl::Saved(value),
        }
    }

    /// Dovecot's POP3 order key: the `O` field, or after every message that has one (a value
    /// that is not a number counts as none, as in Dovecot's sort).
    pub(crate) fn pop3_order(&self) -> u64 {
        self.field(b'O')
            .and_then(parse_decimal)
            .unwrap_or(u64::from(u32::MAX))
    }
}

/// A parsed uidlist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Uidlist {
    pub(crate) uid_validity: u32,
    pub(crate) next_uid: u32,
    /// The header's other fields (`G<guid>` and any Dovecot may add), as written.
    header_fields: Vec<Vec<u8>>,
    /// In uid order.
    records: Vec<Record>,
    /// Base name -> position in `records` (looked up once per message at each login).
    by_base: HashMap<Vec<u8>, usize, BuildHasherDefault<FastHasher>>,
}

impl Uidlist {
    /// A new, empty uidlist, as Dovecot makes one for a mailbox it has never seen: uidvalidity
    /// from the clock (what `mailbox_uidvalidity_next` gives a fresh mail root), a random GUID.
    pub(crate) fn new() -> io::Result<Self> {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_secs());
        let uid_validity = u32::try_from(secs).unwrap_or(u32::MAX).max(1);
        let mut guid = [0u8; 16];
        getrandom::fill(&mut guid).map_err(|e| io::Error::other(e.to_string()))?;
        let mut g = b"G".to_vec();
        for b in guid {
            g.extend_from_slice(format!("{b:02x}").as_bytes());
        }
        Ok(Self {
            uid_validity,
            next_uid: 1,
            header_fields: vec![g],
            records: Vec::new(),
            by_base: HashMap::default(),
        })
    }

    /// The record of the message whose file has this base name.
    pub(crate) fn get(&self, base: &[u8]) -> Option<&Record> {
        self.by_base.get(base).and_then(|&i| self.records.get(i))
    }

    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    /// The unique-id Dovecot's POP3 server gives `record` with the default
    /// `pop3_uidl_format = %08Xu%08Xv`; `None` when a saved one cannot be sent (RFC 1939: 1 to
    /// 70 printable characters).
    pub(crate) fn uidl_of(&self, record: &Record) -> Option<Uidl> {
        match record.pop3_uidl() {
            Pop3Uidl::Format => Uidl::from_bytes(&dovecot_format(record.uid, self.uid_validity)),
            Pop3Uidl::BaseName => Uidl::from_bytes(&record.base),
            Pop3Uidl::Saved(value) => Uidl::from_bytes(value),
        }
    }

    /// Keeps only the records whose base name `keep` accepts.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&[u8]) -> bool) {
        self.records.retain(|r| keep(&r.base));
        self.reindex();
    }

    /// Gives the message `base` the next uid. `None` when Dovecot's uid space is used up.
    pub(crate) fn push(&mut self, base: &[u8]) -> Option<u32> {
        let last = self.records.last().map_or(0, |r| r.uid);
        let uid = self.next_uid.max(last.checked_add(1)?);
        if uid == u32::MAX {
            return None;
        }
        self.next_uid = uid + 1;
        self.by_base.insert(base.to_vec(), self.records.len());
        self.records.push(Record {
            uid,
            fields: Vec::new(),
            base: base.to_vec(),
        });
        Some(uid)
    }

    fn reindex(&mut self) {
        self.by_base = self
            .records
            .iter()
            .enumerate()
            .map(|(i, r)| (r.base.clone(), i))
            .collect();
    }
}

/// `%08Xu%08Xv`: `uid` and `uid_validity` as 8 hex digits each, in lower case as Dovecot's `X`
/// modifier writes them (checked against Dovecot 2.3.19). Without an allocation: it is made for
/// every message at every login.
fn dovecot_format(uid: u32, uid_validity: u32) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    let digits = (u64::from(uid) << 32) | u64::from(uid_validity);
    for (i, slot) in out.iter_mut().enumerate() {
        let nibble = (digits >> (60 - 4 * i)) & 0xf;
        *slot = HEX.get(nibble as usize).copied().unwrap_or(b'0');
    }
    out
}

/// Parses a uidlist. Anything Dovecot would call corrupt, and more (a NUL, an over-long line),
/// is an error.
pub(crate) fn parse(bytes: &[u8]) -> Result<Uidlist, Malformed> {
    // Only complete lines: a last line without its newline is being appended.
    let complete = match memchr::memrchr(b'\n', bytes) {
        Some(end) => &bytes[..end],
        None => {
            return Err(Malformed {
                line: 1,
                reason: "no complete header line",
            })
        }
    };
    let mut lines = complete.split(|&b| b == b'\n').enumerate();
    let Some((_, header)) = lines.next() else {
        return Err(Malformed {
            line: 1,
            reason: "empty file",
        });
    };
    let bad = |line: usize, reason| Malformed { line, reason };
    if header.len() > MAX_LINE_BYTES {
        return Err(bad(1, "header line too long"));
    }
    if header.contains(&0) {
        return Err(bad(1, "NUL in the header"));
    }
    let fields = match header.strip_prefix(b"3 ") {
        Some(fields) => fields,
        None if header.first().is_some_and(u8::is_ascii_digit) => {
            return Err(bad(
                1,
                "a uidlist version other than 3 (Dovecot 1.0 or Courier): let Dovecot 1.1 or later open the maildrop once to convert it",
            ))
        }
        None => return Err(bad(1, "not a Dovecot uidlist header")),
    };
    let (mut uid_validity, mut next_uid) = (None, None);
    let mut header_fields = Vec::new();
    for field in fields.split(|&b| b == b' ').filter(|f| !f.is_empty()) {
        let (key, value) = (field[0], &field[1..]);
        let number = || {
            parse_decimal(value)
                .and_then(|n| u32::try_from(n).ok())
                .filter(|&n| n > 0)
        };
        match key {
            b'V' => uid_validity = Some(number().ok_or(bad(1, "bad uidvalidity (V)"))?),
            b'N' => next_uid = Some(number().ok_or(bad(1, "bad next uid (N)"))?),
            b'G' if value.len() != 32 || !value.iter().all(u8::is_ascii_hexdigit) => {
                return Err(bad(1, "bad mailbox GUID (G)"))
            }
            _ => header_fields.push(field.to_vec()),
        }
    }
    let (Some(uid_validity), Some(next_uid)) = (uid_validity, next_uid) else {
        return Err(bad(
            1,
            "the header lacks the uidvalidity (V) or the next uid (N)",
        ));
    };
    let mut list = Uidlist {
        uid_validity,
        next_uid,
        header_fields,
        records: Vec::with_capacity(complete.len() / 48),
        by_base: HashMap::default(),
    };
    let mut last_uid = 0u32;
    for (i, line) in lines {
        let n = i + 1;
        if line.len() > MAX_LINE_BYTES {
            return Err(bad(n, "line too long"));
        }
        if line.contains(&0) {
            return Err(bad(n, "NUL in a line"));
        }
        let digits = line.iter().take_while(|b| b.is_ascii_digit()).count();
        let uid = parse_decimal(&line[..digits])
            .and_then(|u| u32::try_from(u).ok())
            .filter(|&u| u > 0 && u < u32::MAX)
            .ok_or(bad(n, "bad uid"))?;
        if uid <= last_uid {
            return Err(bad(n, "uids not in increasing order"));
        }
        last_uid = uid;
        let rest = &line[digits..];
        if rest.first() != Some(&b' ') {
            return Err(bad(n, "no space after the uid"));
        }
        // The fields, up to a token that starts with ':'; the rest of the line is the name.
        let mut pos = 0;
        let name = loop {
            while rest.get(pos) == Some(&b' ') {
                pos += 1;
            }
            match rest.get(pos) {
                None => return Err(bad(n, "no file name")),
                Some(b':') => break &rest[pos + 1..],
                Some(c) if c.is_ascii_uppercase() => {
                    pos += rest[pos..].iter().take_while(|&&b| b != b' ').count();
                }
                Some(_) => return Err(bad(n, "bad field")),
            }
        };
        let fields = trim_spaces(&rest[..pos]).to_vec();
        let base = crate::name::base_name(name);
        if base.is_empty() || name.contains(&b'/') {
            return Err(bad(n, "bad file name"));
        }
        // A name recorded twice: the later line wins, as in Dovecot.
        if let Some(old) = list.by_base.insert(base.to_vec(), list.records.len()) {
            if let Some(r) = list.records.get_mut(old) {
                r.base.clear();
            }
        }
        list.records.push(Record {
            uid,
            fields,
            base: base.to_vec(),
        });
    }
    if list.records.iter().any(|r| r.base.is_empty()) {
        list.records.retain(|r| !r.base.is_empty());
        list.reindex();
    }
    Ok(list)
}

fn trim_spaces(b: &[u8]) -> &[u8] {
    let start = b.iter().take_while(|&&c| c == b' ').count();
    let end = b.len() - b.iter().rev().take_while(|&&c| c == b' ').count();
    b.get(start..end.max(start)).unwrap_or_default()
}

/// The bytes of a uidlist, as Dovecot writes them: `3 V N G ...`, then `uid fields :base`.
pub(crate) fn serialize(list: &Uidlist) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + list.records.len() * 48);
    out.extend_from_slice(format!("3 V{} N{}", list.uid_validity, list.next_uid).as_bytes());
    for field in &list.header_fields {
        out.push(b' ');
        out.extend_from_slice(field);
    }
    out.push(b'\n');
    for r in &list.records {
        out.extend_from_slice(r.uid.to_string().as_bytes());
        if !r.fields.is_empty() {
            out.push(b' ');
            out.extend_from_slice(&r.fields);
        }
        out.extend_from_slice(b" :");
        out.extend_from_slice(&r.base);
        out.push(b'\n');
    }
    out
}

/// What identifies one version of the file: a new version is a new inode (a rename) or, for an
/// append, a new size and mtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Version {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

/// The uidlist of the maildir whose top directory is `dir`, opened without following a link
/// and without waiting on a FIFO: `None` if there is none. Not read yet.
pub(crate) fn open(dir: &File) -> io::Result<Option<(File, Version)>> {
    let file = match handle::open_regular(dir, OsStr::new(UIDLIST_FILE))? {
        Opened::File(f) => f,
        Opened::Missing => return Ok(None),
        Opened::NotRegular => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "dovecot-uidlist is not a regular file (a link, a FIFO or a device)",
            ))
        }
    };
    let meta = file.metadata()?;
    let version = Version {
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.len(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
    };
    if version.size > MAX_UIDLIST_BYTES {
        return Err(too_large());
    }
    Ok(Some((file, version)))
}

fn too_large() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "dovecot-uidlist is larger than 128 MiB",
    )
}

/// Reads an opened uidlist, never past [`MAX_UIDLIST_BYTES`] (it may grow after the fstat).
pub(crate) fn read(file: File, version: Version) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(usize::try_from(version.size).unwrap_or(0));
    file.take(MAX_UIDLIST_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_UIDLIST_BYTES {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Dovecot's dotlock on the uidlist, held by this process; removed when dropped.
pub(crate) struct DotLock<'a> {
    dir: &'a File,
}

impl Drop for DotLock<'_> {
    fn drop(&mut self) {
        if let Err(e) = handle::unlink(self.dir, OsStr::new(LOCK_FILE)) {
            tracing::warn!(error = %e, "cannot remove dovecot-uidlist.lock");
        }
    }
}

/// Takes Dovecot's dotlock on the uidlist of `dir`, waiting at most `wait`; `None` if it is
/// still held by someone else then. A lock whose process is gone (same host), or that neither
/// its holder nor the uidlist changed for two minutes, is overridden, as Dovecot does.
pub(crate) fn lock(dir: &File, owner: Owner, wait: Duration) -> io::Result<Option<DotLock<'_>>> {
    let deadline = Instant::now() + wait;
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let host = host.trim();
    loop {
        match handle::create_new(dir, OsStr::new(LOCK_FILE), owner) {
            Ok(mut file) => {
                let lock = DotLock { dir };
                file.write_all(format!("{}:{host}", std::process::id()).as_bytes())?;
                return Ok(Some(lock));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        if lock_is_stale(dir, host) {
            tracing::warn!("overriding a stale dovecot-uidlist.lock");
            match handle::unlink(dir, OsStr::new(LOCK_FILE)) {
                Ok(()) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(LOCK_POLL);
    }
}

/// True when the dotlock's holder is gone: its `pid:host` names a process of this host that no
/// longer exists, or neither the lock nor the uidlist changed for [`LOCK_STALE`].
fn lock_is_stale(dir: &File, host: &str) -> bool {
    use rustix::fs::{statat, AtFlags};
    let Ok(st) = statat(dir, LOCK_FILE, AtFlags::SYMLINK_NOFOLLOW) else {
        return false; // gone: the next try creates it
    };
    let is_regular =
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile;
    if is_regular {
        if let Ok(Opened::File(f)) = handle::open_regular(dir, OsStr::new(LOCK_FILE)) {
            let mut content = String::new();
            if f.take(LOCK_CONTENT_MAX)
                .read_to_string(&mut content)
                .is_ok()
            {
                if let Some((pid, their_host)) = content.trim().split_once(':') {
                    let pid = parse_decimal(pid.as_bytes())
                        .and_then(|p| i32::try_from(p).ok())
                        .and_then(rustix::process::Pid::from_raw);
                    if let (Some(pid), true) = (pid, their_host == host && !host.is_empty()) {
                        if rustix::process::test_kill_process(pid) == Err(rustix::io::Errno::SRCH) {
                            return true;
                        }
                    }
                }
            }
        }
    }
    let age = |mtime: i64| {
        let changed = UNIX_EPOCH + Duration::from_secs(u64::try_from(mtime).unwrap_or(0));
        changed.elapsed().unwrap_or_default()
    };
    // The fields' types differ between targets.
    #[allow(clippy::useless_conversion)]
    let lock_age = age(i64::from(st.st_mtime));
    #[allow(clippy::useless_conversion)]
    let list_age = statat(dir, UIDLIST_FILE, AtFlags::SYMLINK_NOFOLLOW)
        .map_or(lock_age, |s| age(i64::from(s.st_mtime)));
    lock_age > LOCK_STALE && list_age > LOCK_STALE
}

/// Replaces the uidlist of `dir` with `bytes`, atomically and durably, while holding its
/// dotlock (the argument proves it).
pub(crate) fn write(held: &DotLock<'_>, bytes: &[u8], owner: Owner) -> io::Result<()> {
    crate::index::replace_file(
        held.dir,
        OsStr::new(TMP_FILE),
        OsStr::new(UIDLIST_FILE),
        bytes,
        owner,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Dovecot 2.3.19 wrote for three messages, then with pop3_save_uidl and an order.
    const DOVECOT: &[u8] = b"3 V1796293094 N4 G2857e61ee641116bd65f000083ecc375\n\
        1 W23 :170000001.M1P1.host\n\
        2 W23 P000000026b1141e6 :170000002.M2P1.host\n\
        3 P O1 W23 :170000003.M3P1.host\n";

    #[test]
    fn dovecots_file_reads_and_writes_back_byte_for_byte() {
        let list = parse(DOVECOT).unwrap();
        assert_eq!(
            (list.uid_validity, list.next_uid, list.len()),
            (1_796_293_094, 4, 3)
        );
        assert_eq!(serialize(&list), DOVECOT);
        let uidl = |base: &str| {
            let r = list.get(base.as_bytes()).unwrap();
            list.uidl_of(r).unwrap().as_bytes().to_vec()
        };
        assert_eq!(uidl("170000001.M1P1.host"), b"000000016b1141e6");
        assert_eq!(uidl("170000002.M2P1.host"), b"000000026b1141e6");
        // An empty P: the base name.
        assert_eq!(uidl("170000003.M3P1.host"), b"170000003.M3P1.host");
        let order = |base: &str| list.get(base.as_bytes()).unwrap().pop3_order();
        assert_eq!(order("170000003.M3P1.host"), 1);
        assert_eq!(order("170000001.M1P1.host"), u64::from(u32::MAX));
        // Looked up by base name, whatever the flags.
        assert!(list.get(b"170000001.M1P1.host:2,S").is_none());
        assert!(list
            .get(crate::name::base_name(b"170000001.M1P1.host:2,S"))
            .is_some());
    }

    #[test]
    fn new_uids_continue_dovecots_and_gone_records_go() {
        let mut list = parse(DOVECOT).unwrap();
        list.retain(|b| b != b"170000002.M2P1.host");
        assert_eq!(list.push(b"170000009.M9P1.host"), Some(4));
        assert_eq!(list.push(b"170000010.M1P1.host"), Some(5));
        let text = String::from_utf8(serialize(&list)).unwrap();
        assert_eq!(
            text,
            "3 V1796293094 N6 G2857e61ee641116bd65f000083ecc375\n\
             1 W23 :170000001.M1P1.host\n\
             3 P O1 W23 :170000003.M3P1.host\n\
             4 :170000009.M9P1.host\n\
             5 :170000010.M1P1.host\n"
        );
        let back = parse(text.as_bytes()).unwrap();
        assert_eq!(back, list);
        let r = back.get(b"170000010.M1P1.host").unwrap();
        assert_eq!(back.uidl_of(r).unwrap().as_bytes(), b"000000056b1141e6");
        // A next uid lower than the last record's: the next one follows the record.
        let mut low = parse(b"3 V1 N2\n7 :a\n").unwrap();
        assert_eq!(low.push(b"b"), Some(8));
        // The uid space used up.
        let mut full = parse(b"3 V1 N4294967295\n").unwrap();
        assert_eq!(full.push(b"b"), None);
    }

    #[test]
    fn the_format_is_dovecots() {
        assert_eq!(&dovecot_format(1, 1_796_293_094), b"000000016b1141e6");
        assert_eq!(&dovecot_format(u32::MAX - 1, 0xABCD), b"fffffffe0000abcd");
        for (uid, v) in [(1u32, 2u32), (0x1234_5678, 0x9abc_def0), (7, u32::MAX)] {
            assert_eq!(
                dovecot_format(uid, v).to_vec(),
                format!("{uid:08x}{v:08x}").into_bytes()
            );
        }
    }

    #[test]
    fn a_new_uidlist_is_as_dovecot_makes_one() {
        let list = Uidlist::new().unwrap();
        let bytes = serialize(&list);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with("3 V") && text.contains(" N1 G"), "{text}");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(u64::from(list.uid_validity).abs_diff(now) < 5);
        assert_eq!(parse(&bytes).unwrap(), list);
    }

    #[test]
    fn a_partial_last_line_is_not_read_yet() {
        let mut bytes = DOVECOT.to_vec();
        bytes.extend_from_slice(b"4 W2");
        assert_eq!(parse(&bytes).unwrap().len(), 3);
    }

    #[test]
    fn a_name_recorded_twice_takes_the_later_uid() {
        let list = parse(b"3 V1 N9\n1 :a\n5 :a:2,S\n6 :b\n").unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list.get(b"a").unwrap().uid, 5);
        assert_eq!(list.get(b"b").unwrap().uid, 6);
    }

    #[test]
    fn malformed_files_are_refused() {
        let long = format!("3 V1 N2\n1 :{}\n", "a".repeat(MAX_LINE_BYTES));
        let cases: [&[u8]; 16] = [
            b"",
            b"3 V1 N2",
            b"\n",
            b"1 1796293094 4\n",
            b"3 N2\n",
            b"3 V0 N2\n",
            b"3 V1 N4294967296\n",
            b"3 V1 N2 Gxyz\n",
            b"3 V1 N2\n0 :a\n",
            b"3 V1 N2\n2 :a\n1 :b\n",
            b"3 V1 N2\n1 :\n",
            b"3 V1 N2\n1 :a/b\n",
            b"3 V1 N2\n1 w2 :a\n",
            b"3 V1 N2\n1 W2\n",
            b"3 V1 N2\n1 :a\x00b\n",
            long.as_bytes(),
        ];
        for case in cases {
            assert!(parse(case).is_err(), "{:?}", String::from_utf8_lossy(case));
        }
    }

    #[test]
    fn saved_unique_ids_that_pop3_cannot_send_are_none() {
        let long = format!("3 V1 N3\n1 P{} :a\n2 P\x7f :b\n", "x".repeat(71));
        let list = parse(long.as_bytes()).unwrap();
        assert_eq!(list.uidl_of(list.get(b"a").unwrap()), None);
        assert_eq!(list.uidl_of(list.get(b"b").unwrap()), None);
    }

    #[test]
    fn the_file_is_never_followed_waited_on_or_read_past_its_cap() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let d = handle::open_dir_path(dir.path()).unwrap();
        let path = dir.path().join(UIDLIST_FILE);
        assert!(open(&d).unwrap().is_none());
        std::fs::write(&path, DOVECOT).unwrap();
        let (f, v) = open(&d).unwrap().unwrap();
        assert_eq!(read(f, v).unwrap(), DOVECOT);

        let outside = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(outside.path(), DOVECOT).unwrap();
        std::fs::remove_file(&path).unwrap();
        symlink(outside.path(), &path).unwrap();
        assert!(open(&d).is_err());

        std::fs::remove_file(&path).unwrap();
        let status = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
        assert!(open(&d).is_err(), "a FIFO is refused without waiting");

        std::fs::remove_file(&path).unwrap();
        File::create(&path)
            .unwrap()
            .set_len(MAX_UIDLIST_BYTES + 1)
            .unwrap();
        assert!(open(&d).is_err());
    }

    #[test]
    fn the_dotlock_excludes_and_stale_ones_are_overridden() {
        let dir = tempfile::tempdir().unwrap();
        let d = handle::open_dir_path(dir.path()).unwrap();
        let lock_path = dir.path().join(LOCK_FILE);
        {
            let held = lock(&d, Owner::default(), LOCK_WAIT).unwrap().unwrap();
            let content = std::fs::read_to_string(&lock_path).unwrap();
            assert!(content.starts_with(&format!("{}:", std::process::id())));
            // Held by this very process: a second taker waits, then gives up.
            let started = Instant::now();
            assert!(lock(&d, Owner::default(), Duration::from_millis(100))
                .unwrap()
                .is_none());
            assert!(started.elapsed() >= Duration::from_millis(100));
            write(&held, DOVECOT, Owner::default()).unwrap();
        }
        assert!(!lock_path.exists(), "released when dropped");
        assert_eq!(
            std::fs::read(dir.path().join(UIDLIST_FILE)).unwrap(),
            DOVECOT
        );
        assert!(!dir.path().join(TMP_FILE).exists());

        // The lock of a process that is gone (pid 2^22 + 1 is above any pid_max default).
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        if !host.trim().is_empty() {
            std::fs::write(&lock_path, format!("4194305:{}", host.trim())).unwrap();
            assert!(lock(&d, Owner::default(), Duration::ZERO)
                .unwrap()
                .is_some());
        }
        // Another host's lock, untouched for three minutes, the uidlist too.
        std::fs::write(&lock_path, "1:elsewhere").unwrap();
        let old = SystemTime::now() - Duration::from_secs(180);
        for p in [&lock_path, &dir.path().join(UIDLIST_FILE)] {
            File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        assert!(lock(&d, Owner::default(), Duration::ZERO)
            .unwrap()
            .is_some());
        // A fresh one of another host is respected.
        std::fs::write(&lock_path, "1:elsewhere").unwrap();
        assert!(lock(&d, Owner::default(), Duration::ZERO)
            .unwrap()
            .is_none());
        std::fs::remove_file(&lock_path).unwrap();
        // A link planted as the lock: never written through.
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::os::unix::fs::symlink(outside.path(), &lock_path).unwrap();
        assert!(lock(&d, Owner::default(), Duration::ZERO)
            .unwrap()
            .is_none());
        assert_eq!(std::fs::read(outside.path()).unwrap(), b"");
    }

    fn record() -> impl proptest::strategy::Strategy<Value = (Vec<u8>, Vec<u8>)> {
        use proptest::prelude::*;
        (
            proptest::collection::vec(0x21u8..0x7f, 1..40),
            proptest::collection::vec(prop_oneof![Just(b' '), 0x41u8..0x5b, 0x21u8..0x7f], 0..20),
        )
            .prop_map(|(mut base, fields)| {
                base.retain(|&b| b != b'/' && b != b':');
                if base.is_empty() {
                    base.push(b'x');
                }
                // Fields: tokens that start with an upper-case letter.
                let fields: Vec<u8> = fields
                    .split(|&b| b == b' ')
                    .filter(|t| t.first().is_some_and(u8::is_ascii_uppercase))
                    .collect::<Vec<_>>()
                    .join(&b' ');
                (base, fields)
            })
    }

    proptest::proptest! {
        /// Any uidlist reads back as written.
        #[test]
        fn any_uidlist_round_trips(
            records in proptest::collection::vec(record(), 0..20),
            v in 1u32..,
        ) {
            let mut text = format!("3 V{v} N1 G{}\n", "0a".repeat(16)).into_bytes();
            let mut seen = std::collections::HashSet::new();
            let mut uid = 0;
            for (base, fields) in records {
                if !seen.insert(base.clone()) {
                    continue;
                }
                uid += 3;
                text.extend_from_slice(uid.to_string().as_bytes());
                if !fields.is_empty() {
                    text.push(b' ');
                    text.extend_from_slice(&fields);
                }
                text.extend_from_slice(b" :");
                text.extend_from_slice(&base);
                text.push(b'\n');
            }
            let list = parse(&text).unwrap();
            proptest::prop_assert_eq!(list.len(), seen.len());
            proptest::prop_assert_eq!(serialize(&list), text);
        }

        /// Arbitrary bytes never make the parser panic, with or without a valid header.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            if let Ok(list) = parse(&bytes) {
                // Whatever was accepted writes back to something that reads the same.
                proptest::prop_assert_eq!(parse(&serialize(&list)).unwrap(), list);
            }
            let mut framed = b"3 V1 N1\n".to_vec();
            framed.extend_from_slice(&bytes);
            if let Ok(list) = parse(&framed) {
                proptest::prop_assert_eq!(parse(&serialize(&list)).unwrap(), list);
            }
        }
    }
}
