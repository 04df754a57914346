//! An MDA destination.
//!
//! A command (`sh -c`) per message, fed the message on its standard input; delivered when it
//! exits 0, and only then recorded. This cannot be made exactly-once: a crash between the
//! command's exit and the `D` line means the message is delivered again by the next run
//! (at-least-once), and so does a command that delivered but then failed.

use super::{CrlfToLf, DestError, Staged, Writer, WriterKind};
use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};

#[derive(Debug)]
pub struct MdaDest {
    command: String,
}

impl MdaDest {
    pub(super) fn open(command: &str) -> Self {
        MdaDest {
            command: command.to_string(),
        }
    }

    /// Start the command for a message.
    pub(super) fn begin(&self) -> Result<Writer<'_>, DestError> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| DestError::Mda {
                command: self.command.clone(),
                reason: format!("cannot be started: {e}"),
            })?;
        let stdin = child.stdin.take();
        Ok(Writer {
            lf: CrlfToLf::default(),
            scratch: Vec::new(),
            kind: WriterKind::Mda(MdaWriter {
                command: &self.command,
                child: Some(child),
                stdin,
            }),
        })
    }
}

/// A message being fed to the command.
pub(super) struct MdaWriter<'a> {
    command: &'a str,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
}

impl MdaWriter<'_> {
    pub(super) fn put(&mut self, data: &[u8]) -> Result<(), DestError> {
        let MdaWriter {
            command,
            child,
            stdin,
        } = self;
        let Some(s) = stdin else {
            return Ok(());
        };
        if let Err(e) = s.write_all(data) {
            *stdin = None;
            let status = child
                .take()
                .and_then(|mut c| c.wait().ok())
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown status".into());
            return Err(DestError::Mda {
                command: command.to_string(),
                reason: format!("stopped reading the message ({e}; {status})"),
            });
        }
        Ok(())
    }

    /// Wait for the command, which must exit 0.
    pub(super) fn finish(self) -> Result<Staged, DestError> {
        let MdaWriter {
            command,
            mut child,
            stdin,
        } = self;
        drop(stdin);
        let status = child
            .take()
            .map(|mut c| c.wait())
            .transpose()
            .map_err(|e| DestError::Mda {
                command: command.to_string(),
                reason: format!("could not be waited for: {e}"),
            })?;
        match status {
            Some(s) if s.success() => Ok(Staged::Delivered),
            Some(s) => Err(DestError::Mda {
                command: command.to_string(),
                reason: format!("failed ({s}); the message stays on the server"),
            }),
            None => Err(DestError::Mda {
                command: command.to_string(),
                reason: "failed; the message stays on the server".into(),
            }),
        }
    }

    /// A message given up half-way: the command is not left running or as a zombie (it is
    /// killed: its input was only part of a message).
    pub(super) fn abandon(&mut self) {
        self.stdin = None;
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{read_all, Destination};
    use super::*;
    use crate::config::DestinationSpec;

    #[test]
    fn an_mda_that_fails_is_an_error_and_one_that_succeeds_gets_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let spool = dir.path().join("spool");
        let ok = DestinationSpec::Mda(format!("cat > '{}'", out.display()));
        let mut d = Destination::open(&ok, &spool, "t").unwrap();
        let mut w = d.begin().unwrap();
        w.write(b"Subject: m\r\n\r\nhi\r\n").unwrap();
        assert!(matches!(w.finish().unwrap(), Staged::Delivered));
        assert_eq!(read_all(&out), b"Subject: m\n\nhi\n");

        let mut d = Destination::open(
            &DestinationSpec::Mda("cat >/dev/null; exit 75".into()),
            &spool,
            "t",
        )
        .unwrap();
        let mut w = d.begin().unwrap();
        w.write(b"x\r\n").unwrap();
        let e = w.finish().unwrap_err().to_string();
        assert!(e.contains("75") && e.contains("stays on the server"), "{e}");
    }
}
