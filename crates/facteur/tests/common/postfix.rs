//! A private Postfix instance for the end-to-end tests (Debian's package, installed by
//! `.ci/run`): its own configuration, queue, data and log in a temporary folder.

use std::path::Path;
use std::process::Command;

use super::run_with_input;

/// A private Postfix instance: its own `config_directory`, queue, data and log in a temporary
/// folder, SMTP on 127.0.0.1:`smtp_port`, local mail for `test.invalid` handed to `transport`.
/// Stopped (`postfix -c DIR stop`) when dropped.
pub struct Postfix {
    dir: tempfile::TempDir,
}

impl Postfix {
    /// None when Postfix cannot run here: not installed (`.ci/run` installs it), or not root
    /// (its master must start as root and switch to the `postfix` user).
    pub fn available() -> Option<&'static str> {
        if !Path::new("/usr/sbin/postfix").exists() {
            return Some("/usr/sbin/postfix is not installed (apt-get install postfix)");
        }
        let uid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
            })
            .unwrap_or_default();
        if uid != "0" {
            return Some("Postfix's master must be started as root");
        }
        None
    }

    pub fn start(smtp_port: u16, transport: &str) -> Self {
        Self::start_with(
            smtp_port,
            &format!("local_transport = {transport}\nvirtual_transport = {transport}\n"),
        )
    }

    /// Postfix's own `local` delivering every local address into mbox files in `spool`
    /// (`mail_spool_directory`), locking them as Debian's default does.
    pub fn start_local(smtp_port: u16, spool: &Path) -> Self {
        Self::start_with(
            smtp_port,
            &format!(
                "local_transport = local\nmail_spool_directory = {}\n\
                 mailbox_delivery_lock = fcntl, dotlock\nhome_mailbox =\nmailbox_command =\n",
                spool.display()
            ),
        )
    }

    /// Starts it with these last lines of `main.cf` (the transport).
    pub fn start_with(smtp_port: u16, delivery: &str) -> Self {
        let dir = tempfile::tempdir().expect("a folder for Postfix");
        let d = dir.path();
        // The postfix user reaches its data directory and the maillog through this folder.
        chmod(d, 0o755);
        for sub in ["etc", "queue", "data"] {
            std::fs::create_dir(d.join(sub)).expect("a Postfix folder");
        }
        let status = Command::new("chown")
            .args(["postfix"])
            .arg(d.join("data"))
            .status()
            .expect("run chown");
        assert!(status.success());
        let d_str = d.display();
        let main_cf = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {d_str}/queue\n\
             data_directory = {d_str}/data\n\
             maillog_file = {d_str}/maillog\n\
             maillog_file_prefixes = {d_str}\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             myhostname = mx.test.invalid\n\
             mydomain = test.invalid\n\
             myorigin = test.invalid\n\
             mydestination = test.invalid\n\
             # Every local address is taken over SMTP: facteur decides who exists, over LMTP.\n\
             local_recipient_maps =\n\
             alias_maps =\n\
             alias_database =\n\
             mynetworks = 127.0.0.0/8\n\
             smtpd_relay_restrictions = permit_mynetworks, reject\n\
             smtp_dns_support_level = disabled\n\
             biff = no\n\
             {delivery}"
        );
        std::fs::write(d.join("etc/main.cf"), main_cf).expect("write main.cf");
        // No chroot (the fifth column): the daemons see the temporary folder as it is.
        let master_cf = format!(
            "127.0.0.1:{smtp_port} inet n - n - - smtpd\n\
             pickup unix n - n 60 1 pickup\n\
             cleanup unix n - n - 0 cleanup\n\
             qmgr unix n - n 300 1 qmgr\n\
             rewrite unix - - n - - trivial-rewrite\n\
             bounce unix - - n - 0 bounce\n\
             defer unix - - n - 0 bounce\n\
             trace unix - - n - 0 bounce\n\
             verify unix - - n - 1 verify\n\
             flush unix n - n 1000? 0 flush\n\
             proxymap unix - - n - - proxymap\n\
             smtp unix - - n - - smtp\n\
             relay unix - - n - - smtp\n\
             showq unix n - n - - showq\n\
             error unix - - n - - error\n\
             retry unix - - n - - error\n\
             discard unix - - n - - discard\n\
             lmtp unix - - n - - lmtp\n\
             local unix - n n - - local\n\
             anvil unix - - n - 1 anvil\n\
             scache unix - - n - 1 scache\n\
             postlog unix-dgram n - n - 1 postlogd\n"
        );
        std::fs::write(d.join("etc/master.cf"), master_cf).expect("write master.cf");
        let postfix = Self { dir };
        let (code, out, err) = postfix.command("start");
        assert_eq!(
            code,
            Some(0),
            "postfix start:\n{out}{err}\n{}",
            postfix.log()
        );
        // Wait (bounded) for smtpd's port.
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", smtp_port)).is_ok() {
                return postfix;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("Postfix never listened on {smtp_port}:\n{}", postfix.log());
    }

    pub fn command(&self, what: &str) -> (Option<i32>, String, String) {
        run_with_input(
            Command::new("/usr/sbin/postfix")
                .arg("-c")
                .arg(self.dir.path().join("etc"))
                .arg(what),
            b"",
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = self.command("stop");
    }
}

pub fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(
        path,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(mode),
    )
    .expect("chmod");
}
