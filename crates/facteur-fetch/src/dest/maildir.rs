//! A Maildir destination.
//!
//! Each message is written to `tmp/<unique>` as it arrives. At the commit of a batch: the
//! batch's files are fsynced (on a few threads at once); `P` lines naming each file are appended to the journal and fsynced; the files are renamed
//! into `new/<unique>,S=<size>,W=<wire size>`; `new/` is fsynced; `D` lines are appended and
//! fsynced. After a crash, a `P` without its `D` is settled by looking at the Maildir: the file
//! in `new/` or `cur/` means it arrived; the file still in `tmp/` is whole (it was fsynced
//! before the `P`), so the rename is done now; neither means that the rename never became
//! durable or that the message was since read and deleted locally, and it is fetched again
//! (if it is still on the server, which it is unless it was recorded as done).

use super::{
    hostname, io_err, unique_name, CrlfToLf, DestError, Staged, StagedMessage, Writer, WriterKind,
    BLOCK,
};
use crate::fetch::FaultPoint;
use crate::state::{AccountState, Pending};
use facteur_store::durable::sync_dir;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct MaildirDest {
    dir: PathBuf,
    host: String,
    /// Ends the names of this account's files in `tmp/`.
    suffix: String,
}

impl MaildirDest {
    /// Open a Maildir for a run: it and its `tmp/`, `new/` and `cur/` are created (mode 700)
    /// if missing, and this account's files left in `tmp/` (named with `tag`) are removed.
    pub(super) fn open(dir: &Path, tag: &str) -> Result<Self, DestError> {
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
        Ok(MaildirDest {
            dir: dir.to_path_buf(),
            host: hostname(),
            suffix,
        })
    }

    /// Start a message in `tmp/`.
    pub(super) fn begin(&self) -> Result<Writer<'_>, DestError> {
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

    /// The Maildir part of [`super::Destination::commit`]: fsync the files, `P` lines, rename
    /// into `new/`, fsync `new/`.
    pub(super) fn commit(
        &self,
        batch: &[StagedMessage],
        state: &mut AccountState,
        hook: &mut dyn FnMut(FaultPoint) -> Result<(), DestError>,
    ) -> Result<(), DestError> {
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
        let files: Vec<(&File, PathBuf)> = batch
            .iter()
            .filter_map(|m| match &m.staged {
                Staged::Maildir { file, tmp, .. } => Some((file, tmp_dir.join(tmp))),
                _ => None,
            })
            .collect();
        sync_files(&files)?;
        state.record_pending(&pending)?;
        hook(FaultPoint::AfterRecord)?;
        for m in batch {
            if let Staged::Maildir { tmp, name, .. } = &m.staged {
                let to = self.dir.join("new").join(name);
                fs::rename(self.dir.join("tmp").join(tmp), &to).map_err(io_err(&to))?;
            }
        }
        let new = self.dir.join("new");
        sync_dir(&new).map_err(io_err(&new))?;
        Ok(())
    }
}

/// A message being written to `tmp/`.
pub(super) struct MaildirWriter {
    file: BufWriter<File>,
    path: PathBuf,
    unique: String,
    size: u64,
    lines: u64,
}

impl MaildirWriter {
    pub(super) fn put(&mut self, data: &[u8]) -> Result<(), DestError> {
        self.file.write_all(data).map_err(io_err(&self.path))?;
        self.size += data.len() as u64;
        self.lines += data.iter().filter(|&&b| b == b'\n').count() as u64;
        Ok(())
    }

    /// Flushed, not yet fsynced (the commit fsyncs a batch's files together).
    pub(super) fn finish(self) -> Result<Staged, DestError> {
        let MaildirWriter {
            file,
            path,
            unique,
            size,
            lines,
        } = self;
        let file = file
            .into_inner()
            .map_err(|e| io_err(&path)(e.into_error()))?;
        let tmp = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        Ok(Staged::Maildir {
            name: format!("{unique},S={size},W={}", size + lines),
            tmp,
            file,
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

/// fsync these files, on a few threads: each fsync waits on the disk, and the disk serves
/// several at once far faster than one after another.
fn sync_files(files: &[(&File, PathBuf)]) -> Result<(), DestError> {
    /// fsyncs in flight at most.
    const THREADS: usize = 8;
    if files.len() <= 1 {
        for (file, path) in files {
            file.sync_all().map_err(io_err(path))?;
        }
        return Ok(());
    }
    let per_thread = files.len().div_ceil(THREADS);
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(per_thread)
            .map(|chunk| {
                scope.spawn(move || {
                    for (file, path) in chunk {
                        file.sync_all().map_err(io_err(path))?;
                    }
                    Ok(())
                })
            })
            .collect();
        let mut result = Ok(());
        for handle in handles {
            let r = handle.join().unwrap_or_else(|_| {
                Err(DestError::Io {
                    path: PathBuf::from("fsync"),
                    source: io::Error::other("an fsync thread failed"),
                })
            });
            if result.is_ok() {
                result = r;
            }
        }
        result
    })
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
}
