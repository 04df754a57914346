//! A real HAProxy (Debian's package) started by a test with a configuration the test writes,
//! listening on 127.0.0.1 only; killed when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The haproxy binary: on the PATH, or where Debian's package puts it (/usr/sbin, which is not
/// on every user's PATH).
pub fn haproxy_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join("haproxy"))
        .find(|p| p.is_file())
}

/// A haproxy process of this test's, in the foreground (`-db`), its output in a log file.
pub struct HaProxy {
    child: Child,
    log: PathBuf,
}

impl HaProxy {
    /// Writes `config` to `dir/haproxy.cfg` and runs `binary` on it, its stdout and stderr in
    /// `dir/haproxy.log`; returns once something listens on each of `fronts` (bounded).
    pub fn start(binary: &Path, dir: &Path, config: &str, fronts: &[SocketAddr]) -> Self {
        let config_path = dir.join("haproxy.cfg");
        std::fs::write(&config_path, config).expect("write haproxy.cfg");
        let log = dir.join("haproxy.log");
        let log_file = std::fs::File::create(&log).expect("create haproxy.log");
        let child = Command::new(binary)
            .arg("-db")
            .arg("-f")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone the log file"))
            .stderr(log_file)
            .spawn()
            .expect("start haproxy");
        let mut proxy = Self { child, log };
        for &front in fronts {
            proxy.wait_listening(front);
        }
        proxy
    }

    /// What haproxy has written so far (its warnings: servers going DOWN or UP).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait (bounded) until something listens on `addr`.
    fn wait_listening(&mut self, addr: SocketAddr) {
        assert!(addr.ip().is_loopback(), "tests only talk to 127.0.0.1");
        for _ in 0..500 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("haproxy exited ({status}): {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("haproxy never listened on {addr}: {}", self.log());
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
