//! A real PostgreSQL for the tests: never a mock.
//!
//! With `FACTEUR_TEST_DATABASE_URL` set (a key=value string or a `postgresql://` URL naming a
//! role that may create databases), each test gets a fresh database on that server, dropped when
//! the test's [`TestDb`] goes. Otherwise the first test of the process starts a throwaway cluster
//! (Debian's `initdb` and `pg_ctl`, found under `/usr/lib/postgresql/*/bin`) listening on a Unix
//! socket only, in a temporary folder; every test of the process shares it, each in a fresh
//! database. Run as root, the cluster runs as `nobody` (initdb refuses root).
//!
//! A test that needs server settings of its own (TLS, pg_hba.conf, a TCP port on 127.0.0.1)
//! starts a [`Cluster`] of its own, whatever `FACTEUR_TEST_DATABASE_URL` says.
//!
//! Cleanup survives a killed test process: a reaper shell in its own session (`setsid`) waits for
//! this process to end, however it ends, then stops the cluster (`pg_ctl stop -m immediate`) and
//! removes the folder.

#![allow(
    dead_code,
    reason = "several test binaries include this file, each using its own part (a Cluster of its own, or not)"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable naming an existing server to test against.
pub const URL_VAR: &str = "FACTEUR_TEST_DATABASE_URL";

/// Where the tests' databases are created.
enum Server {
    /// An existing server, from [`URL_VAR`].
    External(String),
    /// The throwaway cluster of this process: its socket folder.
    Throwaway { socket_dir: PathBuf },
}

static SERVER: OnceLock<Server> = OnceLock::new();
static NEXT_DB: AtomicU64 = AtomicU64::new(0);

/// One fresh database, empty, for one test.
pub struct TestDb {
    /// The connection string of the database (key=value or URL, as tokio-postgres reads it).
    pub url: String,
    name: String,
    admin_url: Option<String>,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // The throwaway cluster goes whole with its reaper; an external server keeps nothing.
        if let Some(admin) = &self.admin_url {
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            let _ = run_sql(admin, &sql);
        }
    }
}

/// A fresh, empty database for one test.
pub fn fresh_database() -> TestDb {
    let server = SERVER.get_or_init(|| match std::env::var(URL_VAR) {
        Ok(url) if !url.trim().is_empty() => Server::External(url),
        _ => Server::Throwaway {
            socket_dir: start_cluster(),
        },
    });
    let name = format!(
        "facteur_test_{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::Relaxed)
    );
    let (admin, keep_admin) = match server {
        Server::External(url) => (url.clone(), true),
        Server::Throwaway { socket_dir } => (
            format!(
                "host={} user=postgres dbname=postgres",
                socket_dir.display()
            ),
            false,
        ),
    };
    run_sql(&admin, &format!("DROP DATABASE IF EXISTS {name}"))
        .and_then(|()| run_sql(&admin, &format!("CREATE DATABASE {name}")))
        .unwrap_or_else(|e| panic!("cannot create the test database {name}: {e}"));
    TestDb {
        url: with_dbname(&admin, &name),
        name,
        admin_url: keep_admin.then_some(admin),
    }
}

/// `url` naming database `name` instead of its own.
fn with_dbname(url: &str, name: &str) -> String {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (url, None),
        };
        let scheme_end = base.find("://").map_or(0, |i| i + 3);
        let authority_end = base[scheme_end..]
            .find('/')
            .map_or(base.len(), |i| scheme_end + i);
        let mut out = format!("{}/{name}", &base[..authority_end]);
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        out
    } else {
        // key=value: a later key wins.
        format!("{url} dbname={name}")
    }
}

/// Runs one statement on its own connection, with a small runtime of its own.
fn run_sql(url: &str, sql: &str) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("connect to {url}: {e}"))?;
        let conn = tokio::spawn(connection);
        let r = client.batch_execute(sql).await.map_err(|e| e.to_string());
        drop(client);
        let _ = conn.await;
        r
    })
}

/// The folder holding Debian's PostgreSQL programs (the newest version installed).
fn pg_bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "no PostgreSQL found under /usr/lib/postgresql/*/bin: install Debian's postgresql \
             package, or set {URL_VAR}"
        ),
    }
}

/// `nobody`'s uid and gid, from /etc/passwd.
fn nobody() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.first() == Some(&"nobody")).then(|| {
                (
                    f.get(2).and_then(|v| v.parse().ok()).expect("nobody's uid"),
                    f.get(3).and_then(|v| v.parse().ok()).expect("nobody's gid"),
                )
            })
        })
        .expect("no user nobody in /etc/passwd")
}

/// A command that runs `program` as the cluster's owner: `nobody` when we are root, else us.
fn as_owner(program: &Path, drop_to: Option<(u32, u32)>) -> Command {
    match drop_to {
        Some((uid, gid)) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Starts this process's cluster and its reaper; returns the socket folder.
fn start_cluster() -> PathBuf {
    start_cluster_with(&Setup::default(), None)
}

/// What a test's own cluster needs besides the defaults (see [`Cluster::start`]).
#[derive(Default)]
pub struct Setup {
    /// Lines added to postgresql.conf (`ssl = on`, `ssl_cert_file = 'server.crt'`, ...).
    pub conf: Vec<String>,
    /// The lines of pg_hba.conf after `local all all trust` (which the harness needs); none:
    /// initdb's.
    pub hba: Vec<String>,
    /// Files written into the data folder before the start, owned by the cluster's owner with
    /// mode 0600 (a key file PostgreSQL accepts): (name, contents).
    pub files: Vec<(String, Vec<u8>)>,
}

/// A throwaway cluster of one test's own, listening on 127.0.0.1 (TCP, a port of its own) as
/// well as on its socket: for the tests that need server settings of their own (TLS,
/// pg_hba.conf). Stopped and removed when dropped (and by its reaper if the test dies).
pub struct Cluster {
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    socket_dir: PathBuf,
    bin: PathBuf,
    drop_to: Option<(u32, u32)>,
}

impl Cluster {
    /// Starts a cluster with `setup`, on a free port of 127.0.0.1.
    pub fn start(setup: &Setup) -> Self {
        // PostgreSQL cannot listen on port 0: take a free port, and try another if someone
        // took it meanwhile.
        let mut last = String::new();
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("find a free port")
                .port();
            match std::panic::catch_unwind(|| start_cluster_with(setup, Some(port))) {
                Ok(socket_dir) => {
                    return Self {
                        port,
                        socket_dir,
                        bin: pg_bin_dir(),
                        drop_to: rustix::process::geteuid().is_root().then(nobody),
                    }
                }
                Err(e) => {
                    last = e
                        .downcast_ref::<String>()
                        .cloned()
                        .unwrap_or_else(|| "the cluster did not start".into())
                }
            }
        }
        panic!("{last}");
    }

    /// The superuser's connection string to database `dbname`, through the socket.
    pub fn admin_url(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={dbname}",
            self.socket_dir.display(),
            self.port
        )
    }

    /// Runs `sql` as the superuser in database `dbname`, through the socket.
    pub fn sql(&self, dbname: &str, sql: &str) {
        run_sql(&self.admin_url(dbname), sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// A fresh database of this cluster; its [`TestDb::url`] is through the socket.
    pub fn fresh_database(&self) -> TestDb {
        let name = format!(
            "facteur_test_{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        self.sql("postgres", &format!("CREATE DATABASE {name}"));
        TestDb {
            url: self.admin_url(&name),
            name,
            admin_url: None,
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_owner(&self.bin.join("pg_ctl"), self.drop_to)
            .arg("-D")
            .arg(self.socket_dir.join("data"))
            .args(["stop", "-m", "immediate"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.socket_dir);
    }
}

/// Starts a cluster with `setup` (on 127.0.0.1:`port` too, if given) and its reaper; returns
/// its folder, which holds its socket.
fn start_cluster_with(setup: &Setup, port: Option<u16>) -> PathBuf {
    let bin = pg_bin_dir();
    let drop_to = rustix::process::geteuid().is_root().then(nobody);
    // Under /tmp whatever TMPDIR says: `nobody` must reach it, and a Unix socket path must stay
    // under 108 octets.
    let dir = tempfile::Builder::new()
        .prefix("facteur-pg-")
        .tempdir_in("/tmp")
        .expect("make the cluster's folder")
        .keep();
    if let Some((uid, gid)) = drop_to {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("give the folder to nobody");
    }
    let data = dir.join("data");
    // The reaper first, so that even a failed start leaves nothing behind.
    let owner = match drop_to {
        Some((uid, gid)) => format!("setpriv --reuid={uid} --regid={gid} --clear-groups "),
        None => String::new(),
    };
    let stop = format!(
        "{owner}{} -D {} stop -m immediate",
        shell_quote(&bin.join("pg_ctl")),
        shell_quote(&data)
    );
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
         if [ -f {data}/postmaster.pid ]; then {stop} >/dev/null 2>&1; fi; rm -rf {dir}",
        pid = std::process::id(),
        data = shell_quote(&data),
        dir = shell_quote(&dir),
    );
    // `--fork`: setsid returns at once (no zombie of ours), the reaper lives on in its session.
    let started = Command::new("setsid")
        .args(["--fork", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("start the cluster's reaper (setsid sh)");
    assert!(started.success(), "setsid failed: {started}");
    let out = as_owner(&bin.join("initdb"), drop_to)
        .arg("-D")
        .arg(&data)
        .args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ])
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let write = |path: &Path, contents: &[u8]| {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        std::io::Write::write_all(&mut f, contents).expect("write a cluster file");
        if let Some((uid, gid)) = drop_to {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("give the file to nobody");
        }
    };
    for (name, contents) in &setup.files {
        write(&data.join(name), contents);
    }
    if !setup.conf.is_empty() {
        let mut conf =
            std::fs::read_to_string(data.join("postgresql.conf")).expect("read postgresql.conf");
        for line in &setup.conf {
            conf.push('\n');
            conf.push_str(line);
        }
        conf.push('\n');
        write(&data.join("postgresql.conf"), conf.as_bytes());
    }
    if !setup.hba.is_empty() {
        let hba = format!("local all all trust\n{}\n", setup.hba.join("\n"));
        write(&data.join("pg_hba.conf"), hba.as_bytes());
    }
    let listen = match port {
        Some(p) => format!("-c listen_addresses='127.0.0.1' -p {p}"),
        None => "-c listen_addresses=''".to_string(),
    };
    let options = format!(
        "-k {} {listen} -c fsync=off -c synchronous_commit=off \
         -c full_page_writes=off -c max_connections=200 -c shared_buffers=16MB",
        dir.display()
    );
    let out = as_owner(&bin.join("pg_ctl"), drop_to)
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(dir.join("log"))
        .args(["-o", &options, "-w", "-t", "60", "start"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run pg_ctl start");
    let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "pg_ctl start failed: {}\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}
