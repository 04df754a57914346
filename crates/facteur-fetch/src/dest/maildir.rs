//! A Maildir destination.
//!
//! Each message is written to `tmp/<unique>` as it arrives. At the commit of a batch, the
//! files and their names in `tmp/` are made durable: with [`SyncMode::Auto`] and a batch of
//! [`SYNCFS_MIN_BATCH`] files or more, by one `syncfs` of the file system (see
//! [`MaildirDest::prepare`] for why that suffices on ext4); otherwise by an fsync of each file
//! (with [`SyncMode::Fsync`], started on a few threads as soon as each file is complete, while
//! the next messages arrive) and one of `tmp/`. The commit comes in two halves: the syncfs (or
//! the fsyncs) started on another thread ([`MaildirDest::prepare`]), while the fetcher writes
//! the next batch's files, then a wait for it ([`MaildirDest::complete`]), and only then
//! anything recorded. Then `P` lines naming each file are appended
//! to the journal and fsynced (with the `D` lines of the batch before); the files are renamed
//! into `new/<unique>,S=<size>,W=<wire size>`; `D` lines are appended. From the `P` fsync on,
//! the messages are safe and may be deleted on the server: whole files under names that are
//! durable in `tmp/`, and lines that say where each goes. The renames become durable later, at
//! the next batch's syncfs, or at the fsync of `new/` that ends the session
//! ([`MaildirDest::settle`]) or starts the next run's recovery, always before the journal is
//! folded into the snapshot.
//!
//! After a crash, a `P` without its `D` is settled by looking at the Maildir: the file in
//! `new/` or `cur/` means it arrived; the file still in `tmp/` is whole (it was fsynced before
//! the `P`), so the rename is done now; neither means that the message was read and deleted
//! locally since, and it is fetched again if it is still on the server, which it is unless
//! the session's QUIT went through.

use super::{
    hostname, io_err, unique_name, CrlfToLf, DestError, Staged, StagedMessage, Writer, WriterKind,
    BLOCK,
};
use crate::config::{MaildirSync as SyncMode, SYNCFS_MIN_BATCH};
use crate::fetch::FaultPoint;
use crate::state::{AccountState, Pending};
use facteur_store::durable::sync_dir;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

/// A batch of files in `tmp/` whose durability is under way: see [`MaildirDest::prepare`].
#[derive(Debug)]
pub struct Prepared {
    /// The `P` lines to write once the files are durable.
    pending: Vec<Pending>,
    /// Each file in `tmp/`, and its name in `new/`.
    renames: Vec<(PathBuf, String)>,
    /// fsyncs of single files, under way.
    started: Vec<(PathBuf, Synced)>,
    /// The syncfs of the file system, under way.
    fs_synced: Option<Synced>,
    /// `tmp/` must be fsynced too (the files were fsynced one by one).
    sync_tmp: bool,
}

/// A file written in `tmp/`, on its way to being durable.
#[derive(Debug)]
pub enum FileSync {
    /// Closed at the commit, which makes it durable (by syncfs or an fsync).
    Open(File),
    /// Its fsync is under way on another thread.
    Syncing(Synced),
}

#[derive(Debug)]
pub struct MaildirDest {
    mode: SyncMode,
    dir: PathBuf,
    host: String,
    /// Ends the names of this account's files in `tmp/`.
    suffix: String,
    syncs: SyncPool,
    /// Files were renamed into `new/` since its last fsync.
    new_unsynced: bool,
    /// `tmp/`, open: the handle that `syncfs` is called on.
    tmp_handle: File,
}

impl MaildirDest {
    /// Open a Maildir for a run: it and its `tmp/`, `new/` and `cur/` are created (mode 700)
    /// if missing, and this account's files left in `tmp/` (named with `tag`) are removed.
    pub(super) fn open(dir: &Path, tag: &str, mode: SyncMode) -> Result<Self, DestError> {
        for sub in ["tmp", "new", "cur"] {
            create_dir_durably(&dir.join(sub))?;
        }
        let suffix = format!(".fetch-{tag}");
        let tmp = dir.join("tmp");
        for e in fs::read_dir(&tmp).map_err(io_err(&tmp))? {
            let e = e.map_err(io_err(&tmp))?;
            if e.file_name()
                .as_encoded_bytes()
                .ends_with(suffix.as_bytes())
            {
                let _ = fs::remove_file(e.path());
            }
        }
        let tmp_handle = File::open(&tmp).map_err(io_err(&tmp))?;
        Ok(MaildirDest {
            mode,
            dir: dir.to_path_buf(),
            host: hostname(),
            suffix,
            syncs: SyncPool::default(),
            new_unsynced: false,
            tmp_handle,
        })
    }

    /// Start a message in `tmp/`.
    pub(super) fn begin(&mut self) -> Result<Writer<'_>, DestError> {
        let tmp_dir = self.dir.join("tmp");
        for _ in 0..3 {
            let unique = unique_name(&self.host)?;
            let path = tmp_dir.join(format!("{unique}{}", self.suffix));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(f) => {
                    return Ok(Writer {
                        lf: CrlfToLf::default(),
                        scratch: Vec::new(),
                        kind: WriterKind::Maildir(MaildirWriter {
                            file: BufWriter::with_capacity(BLOCK, f),
                            syncs: &mut self.syncs,
                            mode: self.mode,
                            path,
                            unique,
                            size: 0,
                            lines: 0,
                        }),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        Err(io_err(&tmp_dir)(io::Error::other(
            "no unique file name after 3 tries",
        )))
    }

    /// The first half of the Maildir part of [`super::Destination::commit`]: the files of the
    /// batch closed, and their durability started on another thread (one syncfs, or the
    /// files' fsyncs), so that the fetcher reads the next batch while the disk works.
    /// Nothing is recorded yet; [`Self::complete`] waits for it, then records.
    pub(super) fn prepare(&mut self, batch: Vec<StagedMessage>) -> Result<Prepared, DestError> {
        let pending: Vec<Pending> = batch
            .iter()
            .filter_map(|m| match (&m.uid, &m.staged) {
                (Some(uid), Staged::Maildir { tmp, name, .. }) => Some(Pending::Maildir {
                    uid: uid.clone(),
                    dir: self.dir.clone(),
                    tmp: tmp.clone(),
                    name: name.clone(),
                }),
                _ => None,
            })
            .collect();
        let tmp_dir = self.dir.join("tmp");
        let mut renames = Vec::with_capacity(batch.len());
        let mut open = Vec::new();
        let mut started = Vec::new();
        for m in batch {
            if let Staged::Maildir { tmp, name, file } = m.staged {
                let path = tmp_dir.join(&tmp);
                match file {
                    FileSync::Open(f) => open.push((path.clone(), f)),
                    FileSync::Syncing(s) => started.push((path.clone(), s)),
                }
                renames.push((path, name));
            }
        }
        let mut fs_synced = None;
        let mut sync_tmp = false;
        if !renames.is_empty() {
            if open.len() >= SYNCFS_MIN_BATCH {
                // One syncfs for the whole batch, instead of an fsync per file: each fsync of
                // a new file is a commit of ext4's journal (jbd2) of its own, where syncfs
                // writes back every dirty page of the file system, then commits the journal
                // once (ext4_sync_fs) and flushes the disk's cache. When it returns, the
                // files' data, their inodes and their names in tmp/ (directory entries are
                // metadata, in that journal commit) are all durable, and so are the renames
                // into new/ of the batch before (done before it starts). syncfs reports the
                // writeback errors of the file system since the handle was opened (Linux 5.8
                // and later). The files are closed first (their data stays in the page cache).
                drop(open);
                let handle = self.tmp_handle.try_clone().map_err(io_err(&tmp_dir))?;
                fs_synced = Some(self.syncs.start_syncfs(handle));
            } else {
                for (path, f) in open {
                    started.push((path, self.syncs.start(f)));
                }
                // The names in tmp/ must be durable too: the messages may be deleted on the
                // server before their renames are.
                sync_tmp = true;
            }
        }
        Ok(Prepared {
            pending,
            renames,
            started,
            fs_synced,
            sync_tmp,
        })
    }

    /// The second half: wait until the files and their names in `tmp/` are durable, then
    /// `P` lines (fsynced), then the renames into `new/`.
    pub(super) fn complete(
        &mut self,
        prepared: Prepared,
        state: &mut AccountState,
        hook: &mut dyn FnMut(FaultPoint) -> Result<(), DestError>,
    ) -> Result<(), DestError> {
        let Prepared {
            pending,
            renames,
            started,
            fs_synced,
            sync_tmp,
        } = prepared;
        let tmp_dir = self.dir.join("tmp");
        if let Some(synced) = fs_synced {
            synced.wait().map_err(io_err(&tmp_dir))?;
            #[cfg(test)]
            crate::optrace::record(crate::optrace::Op::FsSynced);
            // The renames into new/ so far were done before the syncfs started.
            self.new_unsynced = false;
        }
        if sync_tmp {
            sync_dir(&tmp_dir).map_err(io_err(&tmp_dir))?;
            #[cfg(test)]
            crate::optrace::record(crate::optrace::Op::DirSynced(tmp_dir.clone()));
        }
        for (path, synced) in started {
            synced.wait().map_err(io_err(&path))?;
            #[cfg(test)]
            crate::optrace::record(crate::optrace::Op::FileSynced(path));
        }
        state.record_pending(&pending)?;
        hook(FaultPoint::AfterRecord)?;
        let new = self.dir.join("new");
        for (from, name) in renames {
            let to = new.join(name);
            fs::rename(&from, &to).map_err(io_err(&to))?;
            #[cfg(test)]
            crate::optrace::record(crate::optrace::Op::Renamed(from, to));
            self.new_unsynced = true;
        }
        Ok(())
    }

    /// Make the renames into `new/` durable: before the session ends, and always before the
    /// journal that names them is folded away.
    pub(super) fn settle(&mut self) -> Result<(), DestError> {
        if self.new_unsynced {
            let new = self.dir.join("new");
            sync_dir(&new).map_err(io_err(&new))?;
            #[cfg(test)]
            crate::optrace::record(crate::optrace::Op::DirSynced(new));
            self.new_unsynced = false;
        }
        Ok(())
    }
}

/// A message being written to `tmp/`.
pub(super) struct MaildirWriter<'a> {
    file: BufWriter<File>,
    syncs: &'a mut SyncPool,
    mode: SyncMode,
    path: PathBuf,
    unique: String,
    size: u64,
    lines: u64,
}

impl MaildirWriter<'_> {
    pub(super) fn put(&mut self, data: &[u8]) -> Result<(), DestError> {
        self.file.write_all(data).map_err(io_err(&self.path))?;
        self.size += data.len() as u64;
        self.lines += data.iter().filter(|&&b| b == b'\n').count() as u64;
        Ok(())
    }

    /// Flushed, and (with [`SyncMode::Fsync`]) its fsync started; the commit waits for it.
    pub(super) fn finish(self) -> Result<Staged, DestError> {
        let MaildirWriter {
            file,
            syncs,
            mode,
            path,
            unique,
            size,
            lines,
        } = self;
        let file = file
            .into_inner()
            .map_err(|e| io_err(&path)(e.into_error()))?;
        #[cfg(test)]
        crate::optrace::record(crate::optrace::Op::Written(path.clone()));
        let tmp = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        Ok(Staged::Maildir {
            name: format!("{unique},S={size},W={}", size + lines),
            tmp,
            file: match mode {
                SyncMode::Fsync => FileSync::Syncing(syncs.start(file)),
                SyncMode::Auto => FileSync::Open(file),
            },
        })
    }

    /// A message given up half-way leaves nothing behind: the partial file is removed.
    pub(super) fn abandon(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Settle one Maildir `P` line (see the module documentation): true if the message arrived.
pub(super) fn recover_one(dir: &Path, tmp: &str, name: &str) -> Result<bool, DestError> {
    if maildir_has(dir, name)? {
        return Ok(true);
    }
    let from = dir.join("tmp").join(tmp);
    if from.exists() {
        let to = dir.join("new").join(name);
        fs::rename(&from, &to).map_err(io_err(&to))?;
        let new = dir.join("new");
        sync_dir(&new).map_err(io_err(&new))?;
        return Ok(true);
    }
    Ok(false)
}

/// The fsyncs of finished messages and the syncfs of batches, on a few threads of their own:
/// each waits on the disk, and the disk serves several at once far faster than one after
/// another; started as each message or batch is finished, they overlap with the arrival of
/// the next ones.
#[derive(Debug, Default)]
struct SyncPool {
    /// `None` until the first job starts the threads.
    jobs: Option<mpsc::Sender<SyncJob>>,
}

/// What a thread of the [`SyncPool`] does with a file, and where it says how that went.
type SyncJob = (File, SyncKind, mpsc::Sender<io::Result<()>>);

/// fsync the file, or syncfs its file system.
#[derive(Clone, Copy, Debug)]
enum SyncKind {
    File,
    FileSystem,
}

impl SyncKind {
    fn run(self, file: &File) -> io::Result<()> {
        match self {
            SyncKind::File => file.sync_all(),
            SyncKind::FileSystem => rustix::fs::syncfs(file).map_err(io::Error::from),
        }
    }
}

impl SyncPool {
    /// fsyncs in flight at most.
    const THREADS: usize = 8;

    /// Start the fsync of `file` (which is closed when it is done).
    fn start(&mut self, file: File) -> Synced {
        self.start_job(file, SyncKind::File)
    }

    /// Start the syncfs of the file system that `handle` is on (closed when it is done).
    fn start_syncfs(&mut self, handle: File) -> Synced {
        self.start_job(handle, SyncKind::FileSystem)
    }

    fn start_job(&mut self, file: File, kind: SyncKind) -> Synced {
        let (done, wait) = mpsc::channel();
        let job = (file, kind, done);
        let job = match self.jobs.as_ref() {
            Some(jobs) => match jobs.send(job) {
                Ok(()) => return Synced(wait),
                Err(mpsc::SendError(job)) => job,
            },
            None => match self.spawn() {
                Some(jobs) => match jobs.send(job) {
                    Ok(()) => {
                        self.jobs = Some(jobs);
                        return Synced(wait);
                    }
                    Err(mpsc::SendError(job)) => job,
                },
                None => job,
            },
        };
        // No thread to take it: here and now.
        let (file, kind, done) = job;
        let _ = done.send(kind.run(&file));
        Synced(wait)
    }

    /// The threads; `None` if not even one could be started.
    fn spawn(&self) -> Option<mpsc::Sender<SyncJob>> {
        let (jobs, queue) = mpsc::channel::<SyncJob>();
        let queue = Arc::new(Mutex::new(queue));
        let mut started = 0;
        for _ in 0..Self::THREADS {
            let queue = Arc::clone(&queue);
            let worker = std::thread::Builder::new()
                .name("fetch-fsync".into())
                .spawn(move || loop {
                    // The lock is held only to take a job, not during its fsync.
                    let job = match queue.lock() {
                        Ok(q) => q.recv(),
                        Err(_) => return,
                    };
                    let Ok((file, kind, done)) = job else {
                        // The destination is gone: no more jobs.
                        return;
                    };
                    let _ = done.send(kind.run(&file));
                });
            if worker.is_ok() {
                started += 1;
            }
        }
        (started > 0).then_some(jobs)
    }
}

/// The outcome of a message file's fsync, to come.
#[derive(Debug)]
pub struct Synced(mpsc::Receiver<io::Result<()>>);

impl Synced {
    /// Wait for the fsync; an error if it failed, or if its thread is gone.
    fn wait(self) -> io::Result<()> {
        self.0
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("the fsync thread failed")))
    }
}

/// Create `dir` (mode 700) and its missing parents, each made durable in its parent.
fn create_dir_durably(dir: &Path) -> Result<(), DestError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_durably(parent)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(io_err(dir)(e)),
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent).map_err(io_err(parent))?;
    }
    Ok(())
}

/// True if `new/name` or `cur/name[:2,...]` exists.
fn maildir_has(dir: &Path, name: &str) -> Result<bool, DestError> {
    if dir.join("new").join(name).exists() {
        return Ok(true);
    }
    let cur = dir.join("cur");
    let entries = match fs::read_dir(&cur) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err(&cur)(e)),
    };
    for e in entries {
        let e = e.map_err(io_err(&cur))?;
        let n = e.file_name();
        let n = n.as_encoded_bytes();
        let base = n.split(|&b| b == b':').next().unwrap_or(n);
        if base == name.as_bytes() {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::super::{read_all, recover, Destination};
    use super::*;
    use crate::config::DestinationSpec;
    use facteur_proto::Uidl;

    #[test]
    fn maildir_commit_and_recovery_of_each_crash_point() {
        let dir = tempfile::tempdir().unwrap();
        let md = dir.path().join("Maildir");
        let state_dir = dir.path().join("state");
        let spool = dir.path().join("spool");
        let spec = DestinationSpec::Maildir(md.clone());
        let uid = |s: &str| Uidl::new(s).unwrap();
        for (i, point) in [FaultPoint::AfterRecord, FaultPoint::AfterCommit]
            .into_iter()
            .enumerate()
        {
            let mut state = AccountState::open(&state_dir, "k").unwrap();
            let mut d = Destination::open(&spec, &spool, "t").unwrap();
            let mut w = d.begin().unwrap();
            w.write(b"Subject: t\r\n\r\nbody\r\n").unwrap();
            let staged = w.finish().unwrap();
            let u = uid(&format!("u{i}"));
            let err = d
                .commit(
                    vec![StagedMessage {
                        uid: Some(u.clone()),
                        staged,
                    }],
                    &mut state,
                    1,
                    &mut |p| {
                        if p == point {
                            Err(DestError::Injected(p))
                        } else {
                            Ok(())
                        }
                    },
                )
                .unwrap_err();
            assert!(matches!(err, DestError::Injected(_)));
            drop(state);
            let mut state = AccountState::open(&state_dir, "k").unwrap();
            assert!(!state.contains(&u));
            let arrived = recover(state.pending(), &spool).unwrap();
            assert_eq!(arrived, std::slice::from_ref(&u), "{point:?}");
            state.finish_recovery(&arrived, 2).unwrap();
            assert!(state.contains(&u));
        }
        let files: Vec<_> = fs::read_dir(md.join("new")).unwrap().collect();
        assert_eq!(files.len(), 2);
        assert_eq!(fs::read_dir(md.join("tmp")).unwrap().count(), 0);
        for f in files {
            let f = f.unwrap();
            assert_eq!(read_all(&f.path()), b"Subject: t\n\nbody\n");
            let name = f.file_name().into_string().unwrap();
            assert!(name.ends_with(",S=17,W=20"), "{name}");
        }
        // A message read and moved to cur/ by a mail reader still counts as arrived.
        let p = Pending::Maildir {
            uid: uid("x"),
            dir: md.clone(),
            tmp: "gone".into(),
            name: "123.abc".into(),
        };
        fs::write(md.join("cur").join("123.abc:2,S"), b"x").unwrap();
        assert_eq!(recover(&[p], &spool).unwrap(), [uid("x")]);
    }

    /// A power cut right after a commit, when the batch's DELEs may already be out: what was
    /// not fsynced then (the renames into `new/`, the `D` lines) is undone, and the recovery
    /// still finds every message, once.
    #[test]
    fn a_power_cut_after_a_commit_loses_nothing() {
        // Batches of 2 (an fsync of each file) and of SYNCFS_MIN_BATCH (one syncfs).
        power_cut_after_a_commit(2, SyncMode::Auto);
        power_cut_after_a_commit(SYNCFS_MIN_BATCH, SyncMode::Auto);
        power_cut_after_a_commit(SYNCFS_MIN_BATCH, SyncMode::Fsync);
    }

    fn power_cut_after_a_commit(per_batch: usize, mode: SyncMode) {
        let dir = tempfile::tempdir().unwrap();
        let md = dir.path().join("Maildir");
        let state_dir = dir.path().join("state");
        let spool = dir.path().join("spool");
        let spec = DestinationSpec::Maildir(md.clone());
        let uid = |s: &str| Uidl::new(s).unwrap();
        let mut state = AccountState::open(&state_dir, "k").unwrap();
        let mut d = Destination::open_with(&spec, &spool, "t", mode).unwrap();
        let commit = |d: &mut Destination, state: &mut AccountState, uids: &[String]| {
            let batch = uids
                .iter()
                .map(|u| {
                    let mut w = d.begin().unwrap();
                    w.write(format!("Subject: {u}\r\n\r\nbody\r\n").as_bytes())
                        .unwrap();
                    StagedMessage {
                        uid: Some(uid(u)),
                        staged: w.finish().unwrap(),
                    }
                })
                .collect();
            d.commit(batch, state, 1, &mut |_| Ok(())).unwrap();
        };
        let first: Vec<String> = (0..per_batch).map(|i| format!("a{i}")).collect();
        let second: Vec<String> = (0..per_batch).map(|i| format!("c{i}")).collect();
        crate::optrace::take();
        commit(&mut d, &mut state, &first);
        commit(&mut d, &mut state, &second);
        // Every message recorded durably after its file, whichever way.
        crate::optrace::check_durable_before_dele(&crate::optrace::take());
        // The moment the DELEs of the second batch may go out. Then the power goes: the
        // journal keeps what its last fsync (the `P` lines of the second batch) covered, and
        // the second batch's renames, never synced, are undone.
        drop(d);
        drop(state);
        let journal = state_dir.join("k.journal");
        let text = fs::read_to_string(&journal).unwrap();
        let durable = text.rfind("\nP ").unwrap();
        let durable = durable + 1 + text[durable + 1..].find('\n').unwrap() + 1;
        assert!(text[durable..].starts_with("D c0 "), "{text}");
        fs::write(&journal, &text[..durable]).unwrap();
        let mut undone = 0;
        for line in text[..durable].lines() {
            let w: Vec<&str> = line.split(' ').collect();
            if let ["P", u, "maildir", _, tmp, name] = w.as_slice() {
                if u.starts_with('c') {
                    fs::rename(md.join("new").join(name), md.join("tmp").join(tmp)).unwrap();
                    undone += 1;
                }
            }
        }
        assert_eq!(undone, per_batch);
        let mut state = AccountState::open(&state_dir, "k").unwrap();
        assert!(first.iter().all(|u| state.contains(&uid(u))));
        assert!(!second.iter().any(|u| state.contains(&uid(u))));
        assert_eq!(state.journal_maildirs(), std::slice::from_ref(&md));
        super::super::sync_journal_maildirs(state.journal_maildirs()).unwrap();
        let arrived = recover(state.pending(), &spool).unwrap();
        let want: Vec<Uidl> = second.iter().map(|u| uid(u)).collect();
        assert_eq!(arrived, want);
        state.finish_recovery(&arrived, 2).unwrap();
        drop(Destination::open(&spec, &spool, "t").unwrap());
        for u in first.iter().chain(&second) {
            assert!(state.contains(&uid(u)), "{u}");
        }
        let mut bodies: Vec<Vec<u8>> = fs::read_dir(md.join("new"))
            .unwrap()
            .map(|f| read_all(&f.unwrap().path()))
            .collect();
        bodies.sort();
        let mut want: Vec<Vec<u8>> = first
            .iter()
            .chain(&second)
            .map(|u| format!("Subject: {u}\n\nbody\n").into_bytes())
            .collect();
        want.sort();
        assert_eq!(bodies, want);
        assert_eq!(fs::read_dir(md.join("tmp")).unwrap().count(), 0);
    }
}
