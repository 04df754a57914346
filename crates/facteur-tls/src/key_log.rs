//! `[tls] key_log`: the secrets of every TLS session, in the NSS key log format that Wireshark
//! and tshark read, so that the administrator can decrypt a capture of POP3S or STLS.
//!
//! Whoever reads the file can decrypt every session it covers, passwords included: it is
//! opened without following a link, must be a regular file owned by the server's user with no
//! access for group or others (a new one is created with mode 0600), and the server says in its
//! log that it is on, at start and at each session.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Why the key log cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyLogError {
    #[error("cannot open the TLS key log {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the TLS key log {path} is {what}: it must be a regular file of the server's user (uid {uid}) with mode 0600 (chmod 600, chown), or a path where facteur creates one")]
    NotPrivate {
        path: PathBuf,
        what: String,
        uid: u32,
    },
}

/// The key log file, shared by every TLS configuration of the process (reloads keep it).
pub struct KeyLogWriter {
    path: PathBuf,
    file: Mutex<File>,
}

impl std::fmt::Debug for KeyLogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyLogWriter")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl KeyLogWriter {
    /// Opens `path` for appending (creating it with mode 0600), without following a link,
    /// and refuses it unless it is a regular file of the effective user, private to it.
    pub fn open(path: &Path) -> Result<Self, KeyLogError> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(
                (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32,
            )
            .open(path)
            .map_err(|source| KeyLogError::Open {
                path: path.to_owned(),
                source,
            })?;
        let meta = file.metadata().map_err(|source| KeyLogError::Open {
            path: path.to_owned(),
            source,
        })?;
        let uid = rustix::process::geteuid().as_raw();
        let refuse = |what: String| KeyLogError::NotPrivate {
            path: path.to_owned(),
            what,
            uid,
        };
        if !meta.file_type().is_file() {
            return Err(refuse("not a regular file".into()));
        }
        if meta.uid() != uid {
            return Err(refuse(format!("owned by uid {}", meta.uid())));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(refuse(format!(
                "open to others (mode {:04o})",
                meta.mode() & 0o7777
            )));
        }
        Ok(Self {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }

    /// The file's path, for the log.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl rustls::KeyLog for KeyLogWriter {
    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        let mut line =
            String::with_capacity(label.len() + 2 * (client_random.len() + secret.len()) + 3);
        line.push_str(label);
        line.push(' ');
        hex(&mut line, client_random);
        line.push(' ');
        hex(&mut line, secret);
        line.push('\n');
        // One write of a whole line on a file opened for appending: lines of concurrent
        // handshakes never interleave. A failure loses a line of the log, never the session.
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file.write_all(line.as_bytes()) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write the TLS key log");
        }
    }
}

fn hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::KeyLog;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn lines_are_in_the_nss_format_and_the_file_is_created_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.log");
        let log = KeyLogWriter::open(&path).unwrap();
        log.log(
            "CLIENT_TRAFFIC_SECRET_0",
            &[0x01, 0xab],
            &[0xff, 0x00, 0x10],
        );
        log.log("SERVER_TRAFFIC_SECRET_0", &[0x02], &[0x03]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "CLIENT_TRAFFIC_SECRET_0 01ab ff0010\nSERVER_TRAFFIC_SECRET_0 02 03\n"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Opened again, it appends.
        drop(log);
        KeyLogWriter::open(&path).unwrap().log("X", &[1], &[2]);
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .ends_with("03\nX 01 02\n"));
    }

    #[test]
    fn a_file_open_to_others_a_link_or_a_fifo_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open.log");
        std::fs::write(&open, "").unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = KeyLogWriter::open(&open).unwrap_err();
        assert!(e.to_string().contains("mode 0640"), "{e}");

        let target = dir.path().join("target.log");
        std::fs::write(&target, "").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("link.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = KeyLogWriter::open(&link).unwrap_err();
        assert!(matches!(e, KeyLogError::Open { .. }), "{e}");

        let fifo = dir.path().join("fifo.log");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        // Refused at once, never waiting for a reader: with no reader the open itself fails
        // (ENXIO, thanks to O_NONBLOCK); with one, the type check refuses it.
        let e = KeyLogWriter::open(&fifo).unwrap_err();
        assert!(
            e.to_string().contains("not a regular file")
                || e.to_string().contains("No such device or address"),
            "{e}"
        );
    }
}
