//! Tests only: the durability steps of the fetcher, in the order they happened on this thread
//! (files written, fsyncs, syncfs, journal lines, renames, DELEs), so that a test can check
//! that a power cut at any point loses nothing: no message is recorded before it is durable,
//! and none is deleted on the server before it is recorded durably.

use facteur_proto::Uidl;
use std::cell::RefCell;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A message file is complete (flushed) under this name in `tmp/`.
    Written(PathBuf),
    /// That file's fsync is done.
    FileSynced(PathBuf),
    /// A folder's fsync is done: the names in it are durable.
    DirSynced(PathBuf),
    /// A syncfs of the file system (the tests' one file system) is done.
    FsSynced,
    /// A `P` line naming this file in `tmp/` is appended to the journal (not yet durable).
    Pending(Uidl, PathBuf),
    /// The journal's fsync is done.
    JournalSynced,
    /// A rename.
    Renamed(PathBuf, PathBuf),
    /// A DELE is queued for the server (it may go out from now on).
    Dele(Uidl),
}

thread_local! {
    static OPS: RefCell<Vec<Op>> = const { RefCell::new(Vec::new()) };
}

pub fn record(op: Op) {
    OPS.with(|o| o.borrow_mut().push(op));
}

/// The steps recorded on this thread since the last call.
pub fn take() -> Vec<Op> {
    OPS.with(|o| std::mem::take(&mut *o.borrow_mut()))
}

/// Check `ops` against a power cut at any point, and return the number of DELEs checked:
/// - before a `P` line names a file, the file's data (its fsync, or a syncfs) and its name in
///   `tmp/` (an fsync of `tmp/`, or a syncfs) are durable: the recovery trusts a `P` line
///   whose file it finds;
/// - before the DELE of a message, its `P` line is durable (a fsync of the journal after it).
///
/// Panics, saying what is wrong, otherwise.
pub fn check_durable_before_dele(ops: &[Op]) -> usize {
    let synced_between = |from: usize, to: usize, covers: &dyn Fn(&Op) -> bool| {
        ops.get(from..to)
            .unwrap_or_default()
            .iter()
            .any(|o| *o == Op::FsSynced || covers(o))
    };
    for (ip, op) in ops.iter().enumerate() {
        let Op::Pending(uid, path) = op else { continue };
        let w = ops
            .get(..ip)
            .unwrap_or_default()
            .iter()
            .rposition(|o| *o == Op::Written(path.clone()))
            .unwrap_or_else(|| panic!("{uid}: P line for {} never written", path.display()));
        assert!(
            synced_between(w, ip, &|o| *o == Op::FileSynced(path.clone())),
            "{uid}: P line before the data of {} is durable: {ops:#?}",
            path.display()
        );
        let dir: &Path = path.parent().unwrap_or(Path::new(""));
        assert!(
            synced_between(w, ip, &|o| *o == Op::DirSynced(dir.to_path_buf())),
            "{uid}: P line before the name of {} is durable: {ops:#?}",
            path.display()
        );
    }
    let mut deles = 0;
    for (k, op) in ops.iter().enumerate() {
        let Op::Dele(uid) = op else { continue };
        let ip = ops
            .get(..k)
            .unwrap_or_default()
            .iter()
            .rposition(|o| matches!(o, Op::Pending(u, _) if u == uid))
            .unwrap_or_else(|| panic!("DELE of {uid} with no P line before it: {ops:#?}"));
        assert!(
            synced_between(ip, k, &|o| *o == Op::JournalSynced),
            "DELE of {uid} before its P line is durable: {ops:#?}"
        );
        deles += 1;
    }
    deles
}
