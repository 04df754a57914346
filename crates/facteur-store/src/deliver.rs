//! Delivery into a Maildir: write `tmp/<unique>`, fsync, rename into `new/`, fsync `new/`.
//!
//! A message appears in `new/` whole or not at all (the rename is atomic), and only once its bytes
//! are on disk. Delivery takes no lock: a session holding the maildrop only ever reads `new/` when
//! it opens, so mail delivered during a session waits in `new/` for the next one.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::handle;
use super::name::{CrlfWriter, WireCounter, BLOCK_SIZE, WIRE_FORM_FIELD};
use super::{Delivered, LineEnds, Owner, StoreError};

/// Counts the unique names made by this process, so two deliveries in the same microsecond
/// still differ.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// How many times a unique name is retried if, against all odds, `tmp/` already holds it.
const CREATE_ATTEMPTS: usize = 3;

/// This host's name as it goes into unique names: `/etc/hostname`, or "localhost".
pub fn hostname() -> String {
    let raw = fs::read_to_string("/etc/hostname").unwrap_or_default();
    sanitize_hostname(raw.trim())
}

/// Escapes what a host name must not bring into a Maildir name: '/' (a path separator), ':' (the
/// info separator), ',' (the field separator of `,S=` and `,W=`), '\\' and anything outside
/// 0x21..=0x7E, each written as `\ooo` octal the way Maildir delivery agents do.
pub(crate) fn sanitize_hostname(raw: &str) -> String {
    if raw.is_empty() {
        return "localhost".to_owned();
    }
    let mut out = String::with_capacity(raw.len());
    for &b in raw.as_bytes() {
        if (0x21..=0x7e).contains(&b) && !matches!(b, b'/' | b':' | b',' | b'\\') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\{b:03o}"));
        }
    }
    out
}

/// A Maildir unique name: `<secs>.M<micros>P<pid>Q<counter>R<random>.<host>`. Time, process and
/// counter make it unique on this host; the 64 random bits guard against a reused pid after a
/// clock step backwards; the host name against other machines writing to a shared maildir.
pub fn unique_name(host: &str) -> io::Result<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut random = [0u8; 8];
    getrandom::fill(&mut random)
        .map_err(|e| io::Error::other(format!("no random bytes for a unique name: {e}")))?;
    Ok(format!(
        "{}.M{}P{}Q{}R{:016x}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        u64::from_be_bytes(random),
        host
    ))
}

/// Delivers `message` into the maildir whose top directory is `root` (opened by `open_root`;
/// `dir` is its path, for errors), creating `cur/`, `new/` and `tmp/` if missing. Every file and
/// directory is created relative to a handle, exclusively, never through a link, and given to
/// `owner` when running as root. `line_ends` says whether the message is stored as given or
/// with CRLF line ends (then, if no line starts with '.', its name says it is its own wire
/// form: `,P=1`).
pub(crate) fn deliver_into(
    root: &File,
    dir: &Path,
    host: &str,
    owner: Owner,
    line_ends: LineEnds,
    message: &mut dyn Read,
) -> Result<Delivered, StoreError> {
    let sub = |name: &str| {
        handle::subdir(root, name, owner).map_err(|e| StoreError::io(dir.join(name), e))
    };
    let tmp_dir = sub("tmp")?;
    let new_dir = sub("new")?;
    // Not written to here, but a maildir has all three.
    sub("cur")?;
    let tmp_path = dir.join("tmp");
    let mut attempt = 0;
    let (unique, mut file) = loop {
        let unique = unique_name(host).map_err(|e| StoreError::io(&tmp_path, e))?;
        match handle::create_new(&tmp_dir, OsStr::new(&unique), owner) {
            Ok(file) => break (unique, file),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt + 1 < CREATE_ATTEMPTS => {
                attempt += 1;
            }
            Err(e) => return Err(StoreError::io(tmp_path.join(&unique), e)),
        }
    };
    let tmp_path = tmp_path.join(&unique);

    let written = (|| {
        let mut counter = WireCounter::default();
        let mut crlf = (line_ends == LineEnds::Crlf).then(CrlfWriter::default);
        let mut buf = vec![0u8; BLOCK_SIZE];
        loop {
            let n = match message.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StoreError::Source(e)),
            };
            let block = buf.get(..n).unwrap_or(&buf);
            counter.feed(block);
            let stored = match crlf.as_mut() {
                Some(w) => w.convert(block),
                None => block,
            };
            file.write_all(stored)
                .map_err(|e| StoreError::io(&tmp_path, e))?;
        }
        file.sync_all().map_err(|e| StoreError::io(&tmp_path, e))?;
        // Stored with CRLF, the message is as large as RETR's wire form.
        let size = crlf.as_ref().map_or(counter.size(), CrlfWriter::written);
        let wire_form = crlf.as_ref().is_some_and(CrlfWriter::is_wire_form);
        let final_name = format!(
            "{unique},S={size},W={}{}{}",
            counter.wire_size(),
            if wire_form { "," } else { "" },
            if wire_form { WIRE_FORM_FIELD } else { "" }
        );
        let final_path = dir.join("new").join(&final_name);
        handle::rename_noreplace(
            &tmp_dir,
            OsStr::new(&unique),
            &new_dir,
            OsStr::new(&final_name),
        )
        .map_err(|e| StoreError::io(&final_path, e))?;
        Ok(Delivered {
            path: final_path,
            size,
            wire_size: counter.wire_size(),
        })
    })();
    drop(file);
    let delivered = match written {
        Ok(d) => d,
        Err(e) => {
            // Best effort: a failed delivery leaves nothing behind.
            let _ = handle::unlink(&tmp_dir, OsStr::new(&unique));
            return Err(e);
        }
    };
    // If this fails the message is in new/ but perhaps not durable: report the failure so the
    // sender retries. A duplicate is better than a loss.
    new_dir
        .sync_all()
        .map_err(|e| StoreError::io(dir.join("new"), e))?;
    Ok(delivered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_escaped() {
        assert_eq!(sanitize_hostname(""), "localhost");
        assert_eq!(sanitize_hostname("mail.example.org"), "mail.example.org");
        assert_eq!(sanitize_hostname("a/b:c,d e"), "a\\057b\\072c\\054d\\040e");
    }

    #[test]
    fn unique_names_differ_and_have_no_separators() {
        let a = unique_name("h").unwrap();
        let b = unique_name("h").unwrap();
        assert_ne!(a, b);
        for name in [&a, &b] {
            assert!(!name.contains(['/', ':', ',']), "{name}");
            assert!(name.as_bytes()[0].is_ascii_digit());
            assert!(name.ends_with(".h"));
        }
    }

    #[test]
    fn failed_read_leaves_nothing() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("boom"));
                }
                self.0 -= 1;
                buf[0] = b'x';
                Ok(1)
            }
        }
        let dir = tempfile::tempdir().unwrap();
        for sub in ["tmp", "new", "cur"] {
            fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let root = handle::open_dir_path(dir.path()).unwrap();
        let err = deliver_into(
            &root,
            dir.path(),
            "h",
            Owner::default(),
            LineEnds::Crlf,
            &mut Failing(3),
        )
        .unwrap_err();
        assert!(matches!(err, StoreError::Source(_)), "{err}");
        for sub in ["tmp", "new", "cur"] {
            assert_eq!(
                fs::read_dir(dir.path().join(sub)).unwrap().count(),
                0,
                "{sub}"
            );
        }
    }
}
