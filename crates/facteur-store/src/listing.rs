//! Listing a maildir read-only, as `facteur migrate` reads it while the old server may still
//! serve it: the same messages, delivery order and unique-ids as the Maildir store's open
//! (`maildir`), from the same name rules (`name`), with no lock and no change of any kind.
//! With `uidl = "dovecot"`, the unique-ids are Dovecot's, from `dovecot-uidlist` (read, never
//! written): a message it has no uid for yet was never served by any POP3 session (both servers
//! record a uid before they show a message), so no client knows it by any unique-id and it gets
//! facteur's own.
//!
//! What it must never do: create, move, rename or write anything in the maildir (no move from
//! `new/`, no index, no renaming of a duplicate), or follow a link.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use facteur_proto::Uidl;

use crate::handle::{self, escaped, Kind, Opened};
use crate::name::{base_name, compare, cur_name_for_new, is_message_name, order_key, uid_for_base};
use crate::uidlist::{self, Uidlist};
use crate::{Owner, StoreError, UidlScheme};

/// Which folder of a maildir a listed message file is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Folder {
    Cur,
    New,
}

impl Folder {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Cur => "cur",
            Self::New => "new",
        }
    }
}

/// One message file of a read-only listing, with the unique-id a server open would give it.
#[derive(Debug)]
pub(crate) struct Listed {
    pub(crate) folder: Folder,
    pub(crate) name: OsString,
    pub(crate) uid: Uidl,
}

/// A maildir listed without the lock and without changing anything in it (no move from `new/`,
/// no index, no rename, no `tmp/` cleaning): what `facteur migrate` reads while the old server
/// may still serve the maildrop.
pub(crate) struct ReadOnlyListing {
    cur: Option<File>,
    new: Option<File>,
    /// In delivery order; each unique-id once, as the server's open would give them.
    pub(crate) messages: Vec<Listed>,
    /// Entries that are not regular files (links, FIFOs, devices, directories): no mail.
    pub(crate) not_regular: Vec<(Folder, OsString)>,
    /// Files whose unique-id an earlier file already has: the server renames them apart at its
    /// next open (a fresh unique-id), so they are left for a later run.
    pub(crate) duplicates: Vec<(Folder, OsString)>,
}

impl ReadOnlyListing {
    /// Lists the maildir `dir` (a missing maildir, `cur/` or `new/` is an empty one). Nothing
    /// is created, moved or written, and no link is followed. As the store's open does, a
    /// maildir that belongs to another uid than `owner`'s (when known) is refused.
    pub(crate) fn list(dir: &Path, owner: Owner, uidl: UidlScheme) -> Result<Self, StoreError> {
        let root = match handle::open_dir_path(dir) {
            Ok(root) => root,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Self {
                    cur: None,
                    new: None,
                    messages: Vec::new(),
                    not_regular: Vec::new(),
                    duplicates: Vec::new(),
                })
            }
            Err(e) => return Err(StoreError::io(dir, e)),
        };
        if let Some(expected) = owner.uid {
            let (found, _) = handle::identity(&root).map_err(|e| StoreError::io(dir, e))?;
            if found != expected {
                return Err(StoreError::WrongOwner {
                    path: dir.to_owned(),
                    expected,
                    found,
                });
            }
        }
        let sub = |name: &str| {
            let flags = rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY;
            match handle::open_at(&root, OsStr::new(name), flags, 0) {
                Ok(fd) => Ok(Some(File::from(fd))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(StoreError::io(dir.join(name), e)),
            }
        };
        let (cur, new) = (sub("cur")?, sub("new")?);
        let mut listing = Self {
            cur,
            new,
            messages: Vec::new(),
            not_regular: Vec::new(),
            duplicates: Vec::new(),
        };
        // new/ before cur/: a file the server moves from new/ to cur/ meanwhile is seen at
        // least once (twice at worst, and the copy in new/ is then dropped below).
        let mut found: Vec<(Folder, OsString)> = Vec::new();
        for folder in [Folder::New, Folder::Cur] {
            let Some(handle) = listing.folder(folder) else {
                continue;
            };
            let path = dir.join(folder.name());
            let entries = handle::list(handle, is_message_name, |name, e| {
                tracing::warn!(dir = %path.display(), file = %escaped(name), error = %e,
                    "cannot tell what a maildrop entry is; skipping it");
            })
            .map_err(|e| StoreError::io(&path, e))?;
            for (name, kind) in entries {
                match kind {
                    Kind::Regular => found.push((folder, name)),
                    Kind::Other => listing.not_regular.push((folder, name)),
                }
            }
        }
        let in_cur: HashSet<OsString> = found
            .iter()
            .filter(|(f, _)| *f == Folder::Cur)
            .map(|(_, n)| n.clone())
            .collect();
        found.retain(|(f, n)| *f == Folder::Cur || !in_cur.contains(&cur_name_for_new(n)));
        // The server's order: the name as it will be in cur/.
        let mut keyed: Vec<(OsString, Folder, OsString)> = found
            .into_iter()
            .map(|(f, n)| {
                let key = match f {
                    Folder::Cur => n.clone(),
                    Folder::New => cur_name_for_new(&n),
                };
                (key, f, n)
            })
            .collect();
        keyed.sort_unstable_by(|a, b| {
            order_key(a.0.as_bytes())
                .cmp(&order_key(b.0.as_bytes()))
                .then_with(|| compare(a.0.as_bytes(), b.0.as_bytes()))
        });
        let dovecot = match uidl {
            UidlScheme::Facteur => None,
            UidlScheme::Dovecot => read_uidlist(&root, dir)?,
        };
        let mut seen = HashSet::with_capacity(keyed.len());
        for (_, folder, name) in keyed {
            let base = base_name(name.as_bytes());
            let uid = dovecot
                .as_ref()
                .and_then(|list| list.uidl_of(list.get(base)?))
                .unwrap_or_else(|| uid_for_base(base));
            if seen.insert(uid.as_bytes().to_vec()) {
                listing.messages.push(Listed { folder, name, uid });
            } else {
                listing.duplicates.push((folder, name));
            }
        }
        Ok(listing)
    }

    /// False when the maildir or its `cur/` does not exist.
    pub(crate) fn exists(&self) -> bool {
        self.cur.is_some()
    }

    fn folder(&self, folder: Folder) -> Option<&File> {
        match folder {
            Folder::Cur => self.cur.as_ref(),
            Folder::New => self.new.as_ref(),
        }
    }

    /// Opens a listed message for reading, never through a link and without waiting on a FIFO.
    /// A file moved meanwhile (from `new/` to `cur/`, or renamed in `cur/` by a flag change) is
    /// found by its base name; `Missing` means it was deleted.
    pub(crate) fn open(&self, message: &Listed) -> io::Result<Opened> {
        if let Some(dir) = self.folder(message.folder) {
            match handle::open_regular(dir, &message.name)? {
                Opened::Missing => {}
                other => return Ok(other),
            }
        }
        let Some(cur) = &self.cur else {
            return Ok(Opened::Missing);
        };
        let base = base_name(message.name.as_bytes());
        let entries = handle::list(cur, is_message_name, |_, _| {})?;
        let current = entries
            .into_iter()
            .find(|(name, kind)| *kind == Kind::Regular && base_name(name.as_bytes()) == base);
        match current {
            Some((name, _)) => handle::open_regular(cur, &name),
            None => Ok(Opened::Missing),
        }
    }
}

/// The maildir's `dovecot-uidlist`, read as the store reads it (never through a link, bounded);
/// `None` if there is none.
fn read_uidlist(root: &File, dir: &Path) -> Result<Option<Uidlist>, StoreError> {
    let unusable = |reason: String| StoreError::DovecotUidlist {
        path: dir.join(uidlist::UIDLIST_FILE),
        reason,
    };
    let Some((file, version)) = uidlist::open(root).map_err(|e| unusable(e.to_string()))? else {
        return Ok(None);
    };
    let bytes = uidlist::read(file, version).map_err(|e| unusable(e.to_string()))?;
    uidlist::parse(&bytes)
        .map(Some)
        .map_err(|e| unusable(e.to_string()))
}
