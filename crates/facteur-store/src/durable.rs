//! Making changes to the file system durable: the one helper that the password-file editor and
//! the fetcher's state and destinations share. (The store syncs through the directory handles it
//! already holds, never by path.)

use std::fs::File;
use std::io;
use std::path::Path;

/// fsync a folder, so that the names created or renamed in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
