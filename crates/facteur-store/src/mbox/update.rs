//! UPDATE on an mbox: deleting messages by rewriting the file in place, safe against a crash at
//! any moment and against the MTA appending meanwhile.
//!
//! The file is rewritten in place (same inode, owner, mode and links: the MTA, the user's mail
//! reader and the spool's permissions see the same file), under the MTA locks, through a
//! journal beside it (`.USER.facteur-journal`):
//!
//! 1. From the first deleted message (offset `p`) to the end of the file (length `L`), the
//!    octets to keep (kept messages, mail appended after the session's snapshot) are copied into
//!    `.USER.facteur-journal.tmp`, after a header giving `p`, `L`, the new length `N` and the
//!    SHA-256 of the file's octets `[N, L)` as they are now. The journal is fsync'd, renamed to
//!    `.USER.facteur-journal` (the commit point) and the spool directory fsync'd.
//! 2. The journal's data is written over the file at `p`; the file is fsync'd.
//! 3. The file is truncated to `N` and fsync'd.
//! 4. The journal is removed; the directory fsync'd.
//!
//! Nothing is written to `[N, L)` before the truncation, so at recovery those octets tell
//! whether step 3 happened: if the file is at least `L` long and `[N, L)` still has the recorded
//! hash, it did not, and whatever lies beyond `L` was appended by an MTA after the crash (which
//! it may do once our dotlock is stale); otherwise it did, and whatever lies beyond `N` was
//! appended after it. Recovery (at the next login or delivery, under the MTA locks):
//! - no journal (a crash before the commit point): the file was never touched; the `.tmp` is
//!   removed. The deletions were not confirmed to the client (no `+OK`), so they are not done.
//! - not truncated, nothing appended: steps 2 to 4 again (each is idempotent).
//! - not truncated, mail appended: a new journal whose data is the old one's plus the appended
//!   octets (with `L` the file's length now) replaces it, then steps 2 to 4.
//! - truncated: step 2 again (a no-op), then step 4; appended mail stays where it is.
//!
//! So a crash at any moment loses no message and brings back no deleted one, once the `+OK`
//! was sent. What this needs: write access to the spool directory (the journal, the dotlock) and
//! free space there for the journal, at most the size of the mbox after `p`.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs::OFlags;
use sha2::{Digest, Sha256};

use super::super::handle::{self, Opened};
use super::super::{Owner, StoreError};
use super::lock::MtaLock;
use super::{read_range, Names};

/// The first line of a journal.
const MAGIC: &[u8] = b"facteur-mbox-journal 1\n";

/// Copies run in blocks of this size.
const BLOCK: usize = 64 * 1024;

/// The longest header a journal may have (its magic line and one line of numbers).
const MAX_HEADER: usize = 256;

/// Where copied blocks go.
type Sink<'a> = &'a mut dyn FnMut(&[u8]) -> Result<(), StoreError>;

/// Where a simulated crash stops an UPDATE (tests only; `None` everywhere else).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Half the journal's data written, not synced, not renamed.
    JournalHalf,
    /// The journal written and synced, not renamed.
    JournalWritten,
    /// Renamed: committed.
    Committed,
    /// Half the data written over the file.
    DataHalf,
    /// The data written and synced, not truncated.
    DataWritten,
    /// Truncated, the journal still there.
    Truncated,
}

fn crash_at(want: Option<Step>, here: Step) -> Result<(), StoreError> {
    if want == Some(here) {
        return Err(StoreError::io(
            "(simulated crash)",
            io::Error::other(format!("simulated crash at {here:?}")),
        ));
    }
    Ok(())
}

/// What a journal's header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    /// Where the rewritten part begins.
    p: u64,
    /// The file's length when the journal was written.
    old_len: u64,
    /// Its length once rewritten.
    new_len: u64,
    /// SHA-256 of the file's octets `[new_len, old_len)` when the journal was written.
    tail: [u8; 32],
}

impl Header {
    fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        let hex: String = self.tail.iter().map(|b| format!("{b:02x}")).collect();
        out.extend_from_slice(
            format!("{} {} {} {hex}\n", self.p, self.old_len, self.new_len).as_bytes(),
        );
        out
    }

    /// The header at the start of `bytes`, and its length.
    fn decode(bytes: &[u8]) -> Option<(Self, usize)> {
        let rest = bytes.strip_prefix(MAGIC)?;
        let nl = memchr::memchr(b'\n', rest)?;
        let line = std::str::from_utf8(rest.get(..nl)?).ok()?;
        let mut fields = line.split(' ');
        let mut num = || {
            fields
                .next()
                .and_then(|f| facteur_proto::types::parse_decimal(f.as_bytes()))
        };
        let (p, old_len, new_len) = (num()?, num()?, num()?);
        let hex = fields.next()?;
        if fields.next().is_some() || hex.len() != 64 || p > new_len || new_len >= old_len {
            return None;
        }
        let mut tail = [0u8; 32];
        for (i, slot) in tail.iter_mut().enumerate() {
            *slot = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some((
            Self {
                p,
                old_len,
                new_len,
                tail,
            },
            MAGIC.len() + nl + 1,
        ))
    }
}

fn file_len(file: &File, path: &Path) -> Result<u64, StoreError> {
    Ok(file.metadata().map_err(|e| StoreError::io(path, e))?.len())
}

/// SHA-256 of `file[from, to)`.
fn hash_range(file: &File, path: &Path, from: u64, to: u64) -> Result<[u8; 32], StoreError> {
    let mut sha = Sha256::new();
    read_range(file, path, from, to, &mut |b| {
        sha.update(b);
        Ok(())
    })?;
    Ok(sha.finalize().into())
}

/// Deletes from the mbox every region of `delete` (start and end offsets, sorted, not
/// overlapping), keeping everything else, through the journal (see the module's doc). The MTA
/// locks must be held (`lock`).
#[allow(clippy::too_many_arguments)] // reason: the spool's handles and names, each needed.
pub(crate) fn delete_regions(
    dir: &File,
    dir_path: &Path,
    names: &Names,
    mbox: &File,
    owner: Owner,
    delete: &[(u64, u64)],
    lock: &mut MtaLock,
    crash: Option<Step>,
) -> Result<(), StoreError> {
    let path = dir_path.join(&names.mbox);
    let Some(&(p, _)) = delete.first() else {
        return Ok(());
    };
    let old_len = file_len(mbox, &path)?;
    // The regions to keep, after p.
    let mut keep = Vec::with_capacity(delete.len());
    let mut at = p;
    for &(start, end) in delete {
        if start < at || end < start || end > old_len {
            return Err(StoreError::io(
                &path,
                io::Error::other("the regions to delete are out of order or beyond the file"),
            ));
        }
        if start > at {
            keep.push((at, start));
        }
        at = end;
    }
    if at < old_len {
        keep.push((at, old_len));
    }
    let kept: u64 = keep.iter().map(|(a, b)| b - a).sum();
    let new_len = p + kept;
    if new_len == old_len {
        return Ok(());
    }
    let header = Header {
        p,
        old_len,
        new_len,
        tail: hash_range(mbox, &path, new_len, old_len)?,
    };
    let journal = write_journal(
        dir,
        dir_path,
        names,
        owner,
        &header,
        lock,
        crash,
        &mut |sink| {
            for &(a, b) in &keep {
                read_range(mbox, &path, a, b, sink)?;
            }
            Ok(())
        },
    )?;
    crash_at(crash, Step::Committed)?;
    apply(
        dir, dir_path, names, mbox, &journal, &header, true, lock, crash,
    )
}

/// Writes a journal with `header` and the data `fill` gives, syncs it, and commits it (rename,
/// directory sync). Returns it open for reading.
#[allow(clippy::too_many_arguments)] // reason: the spool's handles and names, each needed.
fn write_journal(
    dir: &File,
    dir_path: &Path,
    names: &Names,
    owner: Owner,
    header: &Header,
    lock: &mut MtaLock,
    crash: Option<Step>,
    fill: &mut dyn FnMut(Sink<'_>) -> Result<(), StoreError>,
) -> Result<File, StoreError> {
    let tmp_path = dir_path.join(&names.journal_tmp);
    remove_if_present(dir, names.journal_tmp.as_ref(), &tmp_path)?;
    // Read-write: `apply` reads the data back from it.
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL;
    let file = handle::open_at(dir, names.journal_tmp.as_ref(), flags, handle::FILE_MODE)
        .map(File::from)
        .and_then(|f| handle::give_to(&f, owner).map(|()| f))
        .map_err(|e| StoreError::io(&tmp_path, e))?;
    let mut out = io::BufWriter::with_capacity(BLOCK, &file);
    out.write_all(&header.encode())
        .map_err(|e| StoreError::io(&tmp_path, e))?;
    let total = header.new_len - header.p;
    let mut written = 0u64;
    fill(&mut |block| {
        if crash == Some(Step::JournalHalf) {
            let half = block.get(..block.len() / 2).unwrap_or_default();
            let _ = out.write_all(half).and_then(|()| out.flush());
            return crash_at(crash, Step::JournalHalf);
        }
        out.write_all(block)
            .map_err(|e| StoreError::io(&tmp_path, e))?;
        written += block.len() as u64;
        lock.refresh();
        Ok(())
    })?;
    out.flush().map_err(|e| StoreError::io(&tmp_path, e))?;
    drop(out);
    if written != total {
        return Err(StoreError::io(
            &tmp_path,
            io::Error::other("the mbox changed while its journal was written"),
        ));
    }
    file.sync_all().map_err(|e| StoreError::io(&tmp_path, e))?;
    crash_at(crash, Step::JournalWritten)?;
    handle::rename_replace(dir, names.journal_tmp.as_ref(), names.journal.as_ref())
        .map_err(|e| StoreError::io(&tmp_path, e))?;
    dir.sync_all().map_err(|e| StoreError::io(dir_path, e))?;
    Ok(file)
}

fn remove_if_present(dir: &File, name: &OsStr, path: &Path) -> Result<(), StoreError> {
    match handle::unlink(dir, name) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(path, e)),
    }
}

/// Steps 2 to 4: the journal's data over the file at `p`, the truncation (if `truncate`), the
/// journal's removal.
#[allow(clippy::too_many_arguments)] // reason: the spool's handles and names, each needed.
fn apply(
    dir: &File,
    dir_path: &Path,
    names: &Names,
    mbox: &File,
    journal: &File,
    header: &Header,
    truncate: bool,
    lock: &mut MtaLock,
    crash: Option<Step>,
) -> Result<(), StoreError> {
    let path = dir_path.join(&names.mbox);
    let journal_path = dir_path.join(&names.journal);
    let data_at = header.encode().len() as u64;
    let total = header.new_len - header.p;
    let mut at = header.p;
    read_range(
        journal,
        &journal_path,
        data_at,
        data_at + total,
        &mut |block| {
            if crash == Some(Step::DataHalf) {
                let half = block.get(..block.len() / 2).unwrap_or_default();
                let _ = mbox.write_all_at(half, at);
                return crash_at(crash, Step::DataHalf);
            }
            mbox.write_all_at(block, at)
                .map_err(|e| StoreError::io(&path, e))?;
            at += block.len() as u64;
            lock.refresh();
            Ok(())
        },
    )?;
    mbox.sync_all().map_err(|e| StoreError::io(&path, e))?;
    crash_at(crash, Step::DataWritten)?;
    if truncate {
        mbox.set_len(header.new_len)
            .map_err(|e| StoreError::io(&path, e))?;
        mbox.sync_all().map_err(|e| StoreError::io(&path, e))?;
    }
    crash_at(crash, Step::Truncated)?;
    remove_if_present(dir, names.journal.as_ref(), &journal_path)?;
    dir.sync_all().map_err(|e| StoreError::io(dir_path, e))
}

/// Finishes an UPDATE that a crash interrupted, if there is one (see the module's doc). The MTA
/// locks must be held. Returns true if there was one.
pub(crate) fn recover(
    dir: &File,
    dir_path: &Path,
    names: &Names,
    mbox: &File,
    owner: Owner,
    lock: &mut MtaLock,
) -> Result<bool, StoreError> {
    let journal_path = dir_path.join(&names.journal);
    remove_if_present(
        dir,
        names.journal_tmp.as_ref(),
        &dir_path.join(&names.journal_tmp),
    )?;
    let journal = match handle::open_regular(dir, names.journal.as_ref()) {
        Ok(Opened::File(f)) => f,
        Ok(Opened::Missing) => return Ok(false),
        Ok(Opened::NotRegular) => {
            return Err(damaged(&journal_path, "it is not a regular file"));
        }
        Err(e) => return Err(StoreError::io(&journal_path, e)),
    };
    let mut head = vec![0u8; MAX_HEADER];
    let n = journal
        .read_at(&mut head, 0)
        .map_err(|e| StoreError::io(&journal_path, e))?;
    let Some((header, header_len)) = Header::decode(head.get(..n).unwrap_or_default()) else {
        return Err(damaged(&journal_path, "its header cannot be read"));
    };
    let journal_len = file_len(&journal, &journal_path)?;
    if journal_len != header_len as u64 + (header.new_len - header.p) {
        return Err(damaged(
            &journal_path,
            "its length is not what its header says",
        ));
    }
    let path = dir_path.join(&names.mbox);
    let len = file_len(mbox, &path)?;
    let untruncated = len >= header.old_len
        && hash_range(mbox, &path, header.new_len, header.old_len)? == header.tail;
    tracing::warn!(mbox = %path.display(), truncated = !untruncated,
        appended = len.saturating_sub(if untruncated { header.old_len } else { header.new_len }),
        "finishing an UPDATE that was interrupted");
    if !untruncated {
        return apply(
            dir, dir_path, names, mbox, &journal, &header, false, lock, None,
        )
        .map(|()| true);
    }
    if len == header.old_len {
        return apply(
            dir, dir_path, names, mbox, &journal, &header, true, lock, None,
        )
        .map(|()| true);
    }
    // Mail appended after the crash, beyond old_len: it joins the journal's data.
    let appended = len - header.old_len;
    let new_len = header.new_len + appended;
    let extended = Header {
        p: header.p,
        old_len: len,
        new_len,
        tail: hash_range(mbox, &path, new_len, len)?,
    };
    let data_at = header_len as u64;
    let old_total = header.new_len - header.p;
    let journal = write_journal(
        dir,
        dir_path,
        names,
        owner,
        &extended,
        lock,
        None,
        &mut |sink| {
            read_range(&journal, &journal_path, data_at, data_at + old_total, sink)?;
            read_range(mbox, &path, header.old_len, len, sink)
        },
    )?;
    apply(
        dir, dir_path, names, mbox, &journal, &extended, true, lock, None,
    )
    .map(|()| true)
}

fn damaged(path: &Path, why: &str) -> StoreError {
    StoreError::io(
        path,
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the journal of an interrupted UPDATE is damaged: {why} (the mbox is not \
                 served until an administrator looks at it; see the README)"
            ),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_refuse_nonsense() {
        let h = Header {
            p: 5,
            old_len: 100,
            new_len: 60,
            tail: [0xab; 32],
        };
        let bytes = h.encode();
        assert_eq!(Header::decode(&bytes), Some((h, bytes.len())));
        let mut with_data = bytes.clone();
        with_data.extend_from_slice(b"data\n");
        assert_eq!(Header::decode(&with_data), Some((h, bytes.len())));
        for bad in [
            &b"facteur-mbox-journal 1\n5 100 100 ab\n"[..],
            b"facteur-mbox-journal 2\n5 100 60 ab\n",
            b"facteur-mbox-journal 1\n70 100 60 abababababababababababababababababababababababababababababababab\n",
            b"facteur-mbox-journal 1\n+5 100 60 abababababababababababababababababababababababababababababababab\n",
            b"facteur-mbox-journal 1\n5 100 60",
        ] {
            assert_eq!(Header::decode(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
