//! The `facteur` command line: `serve`, `user`, `deliver`, `hash-password`, `check-config`,
//! `fetch`, `db migrate`, `migrate`.
//!
//! Every failure is a one-line message on stderr and a non-zero exit; passwords are read from a
//! terminal prompt or standard input, never from the command line (where `ps` would show them).

use clap::{Args, Parser, Subcommand};
use facteur_auth::{self as auth, PasswdDb, Scheme};
use facteur_server as server;
use facteur_server::config::{AuthBackend, Config, StoreBackend, StoreFormat, DEFAULT_CONFIG_PATH};
use facteur_server::privileges;
use facteur_store::{Lasting, MaildirStore, MboxStore, Owner, Store, StoreError};
use facteur_tls::{self as tls, TlsFiles, TlsState};
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "facteur",
    version,
    about = "A POP3 server: correct, safe, fast, easy to run"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the POP3 server.
    ///
    /// It binds its listeners and reads its certificate first, then runs as `[server] user`
    /// (every id, group and capability of root given up); started as root without that key it
    /// refuses to run, unless `[server] allow_root = true`.
    Serve(ServeArgs),
    /// Manage the users: of the passwd-file, or of the database with `[auth] backend = "sql"`.
    #[command(subcommand)]
    User(UserCommand),
    /// Deliver one message, read from standard input, to a user's maildrop (for an MTA).
    ///
    /// Exit status follows sysexits. Permanent (the MTA bounces the message): 67 for an unknown
    /// user or a name the maildir template cannot use, 65 for empty input, 77 when the system
    /// refuses (permissions, a read-only file system, a maildrop owned by another uid), 78 for a
    /// configuration error (the template, a missing home, a path through a file or a link).
    /// Temporary: 75 (the MTA keeps the message and tries again: a lock, a full disk, an
    /// unreadable configuration).
    Deliver {
        /// The user, as named in the passwd-file.
        user: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Hash a password for the passwd-file (read from a prompt, or stdin with --password-stdin).
    HashPassword(PasswordArgs),
    /// Check a configuration file and the files it names, then exit.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Fetch mail from POP3 accounts into a Maildir, an mbox or an MDA (the fetcher).
    Fetch(Box<facteur_fetch::FetchArgs>),
    /// The database of the PostgreSQL store (`[store] backend = "postgresql"`).
    #[command(subcommand)]
    Db(DbCommand),
    /// Copy Maildirs into the PostgreSQL store, keeping every message's unique-id.
    ///
    /// Safe while the old server serves: the Maildirs are only read (no lock, no index, no
    /// rename). Safe to run again: what is copied is skipped (checked by SHA-256), what arrived
    /// since is copied, what the old server deleted since is removed, and what a session on
    /// PostgreSQL deleted is never copied again. Each maildrop is verified (counts, SHA-256,
    /// wire sizes). Exits 1 on a conflict, a failed verification or a maildrop it could not read.
    Migrate(MigrateArgs),
}

#[derive(Args, Debug)]
struct MigrateArgs {
    /// The old configuration: its `[store] maildir` template and its passwd-file (the users
    /// and their homes).
    #[arg(long)]
    from_config: PathBuf,
    /// The new configuration, with `[store] backend = "postgresql"` (its schema made by
    /// `facteur db migrate`).
    #[arg(long)]
    to_config: PathBuf,
    /// A user of the passwd-file to migrate; repeat for several.
    #[arg(long = "user", value_name = "NAME", required_unless_present = "all")]
    users: Vec<String>,
    /// Every user of the passwd-file.
    #[arg(long, conflicts_with = "users")]
    all: bool,
    /// Read and compare everything, write nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Subcommand, Debug)]
enum DbCommand {
    /// Create the schema in `[store] url`, or bring it up to this facteur's version. Safe to run
    /// again: a database already up to date is left as it is, and a newer schema is refused.
    Migrate {
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Args, Debug)]
struct ConfigArg {
    /// The configuration file.
    #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// The configuration file.
    #[arg(long, short, conflicts_with = "dev")]
    config: Option<PathBuf>,
    /// First-run mode: create a data folder with a demo user and a welcome message, and
    /// listen on 127.0.0.1 only. Started as root, it runs as root, with a warning: for a first
    /// look only, never for real mail.
    #[arg(long)]
    dev: bool,
    /// The data folder of --dev.
    #[arg(long, default_value = "facteur-dev", requires = "dev")]
    data_dir: PathBuf,
    /// The POP3 port of --dev (with STLS); default 11110. Given, it replaces the one saved in
    /// the data folder.
    #[arg(long, requires = "dev")]
    port: Option<u16>,
    /// The POP3S port of --dev (implicit TLS); default 11995. Given, it replaces the one saved
    /// in the data folder.
    #[arg(long, requires = "dev")]
    tls_port: Option<u16>,
}

#[derive(Args, Debug)]
struct PasswordArgs {
    /// The password scheme: ARGON2ID, SHA512-CRYPT, SHA256-CRYPT, BLF-CRYPT, SCRAM-SHA-256,
    /// CRAM-MD5 or PLAIN.
    #[arg(long, short, default_value = "ARGON2ID")]
    scheme: Scheme,
    /// Read the password from the first line of standard input instead of a prompt.
    #[arg(long)]
    password_stdin: bool,
}

#[derive(Subcommand, Debug)]
enum UserCommand {
    /// Add a user.
    ///
    /// The name must be one the maildir template can turn into a maildrop: with a `%d` in the
    /// template, a `user@domain`; never one with '/', '\', a control character, or that is
    /// "." or "..". A name or password that is not ASCII is stored SASLprep'd (RFC 4013, NFKC),
    /// as the server prepares the ones clients send (RFC 6856).
    Add {
        /// The user name clients log in with (`bob`, or `bob@example.org`).
        name: String,
        #[command(flatten)]
        password: PasswordArgs,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Remove a user (their maildrop is left as it is).
    Del {
        /// The user name, as in the passwd-file.
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List the users.
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Change a user's password.
    Passwd {
        /// The user name, as in the passwd-file.
        name: String,
        #[command(flatten)]
        password: PasswordArgs,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// App passwords: extra passwords of a user, one per device, for POP3's USER/PASS and
    /// SASL PLAIN/LOGIN only (never APOP, CRAM-MD5, SCRAM or POP2), each revocable alone.
    #[command(subcommand)]
    AppPassword(AppPasswordCommand),
}

#[derive(Subcommand, Debug)]
enum AppPasswordCommand {
    /// Generate an app password for a user, print it once, and store only its hash.
    Add {
        /// The user name.
        name: String,
        /// What the password is for ("phone"): unique among the user's app passwords, shown in
        /// `list` and in the server's log of each login made with it.
        #[arg(long)]
        label: String,
        /// The hash scheme: ARGON2ID, SHA512-CRYPT, SHA256-CRYPT or BLF-CRYPT.
        #[arg(long, short, default_value = "ARGON2ID")]
        scheme: Scheme,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List a user's app passwords: label, id, when created, when last used.
    List {
        /// The user name.
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Revoke a user's app password: logins with it fail from the next one on.
    Revoke {
        /// The user name.
        name: String,
        /// The label of the app password.
        label: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// An error for the person at the terminal, with the exit status to use.
#[derive(Debug)]
pub struct CliError {
    message: String,
    status: u8,
}

impl<E: std::fmt::Display> From<E> for CliError {
    fn from(e: E) -> Self {
        Self {
            message: e.to_string(),
            status: 1,
        }
    }
}

fn fail(message: impl Into<String>) -> CliError {
    CliError {
        message: message.into(),
        status: 1,
    }
}

/// sysexits.h values that MTAs understand.
const EX_DATAERR: u8 = 65;
const EX_NOUSER: u8 = 67;
const EX_TEMPFAIL: u8 = 75;
const EX_NOPERM: u8 = 77;
const EX_CONFIG: u8 = 78;

/// The exit status of `facteur deliver` for a store failure: permanent ones make the MTA bounce
/// the message at once instead of retrying it for days.
fn delivery_status(e: &StoreError) -> u8 {
    match e.lasting() {
        Lasting::Temporary => EX_TEMPFAIL,
        Lasting::NoUser => EX_NOUSER,
        Lasting::NoPermission => EX_NOPERM,
        Lasting::Config => EX_CONFIG,
    }
}

/// Parse the command line and run it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("facteur: {}", e.message);
            ExitCode::from(e.status)
        }
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::User(cmd) => user(cmd),
        Command::Deliver { user, config } => deliver(&user, &config.config),
        Command::HashPassword(args) => {
            let hash = hash_from_input(&args)?;
            println!("{hash}");
            Ok(())
        }
        // The fetcher has exit statuses of its own (1 is "nothing new", not an error).
        Command::Fetch(args) => std::process::exit(i32::from(facteur_fetch::run(*args))),
        Command::Db(DbCommand::Migrate { config }) => db_migrate(&config.config),
        Command::Migrate(args) => migrate(&args),
        Command::CheckConfig { config } => {
            let cfg = Config::load(&config.config)?;
            if cfg.auth.backend == AuthBackend::Sql {
                return check_config_sql(&cfg, &config.config);
            }
            let db = PasswdDb::open(&cfg.auth.passwd_file)?;
            let tls = check_tls(&cfg)?;
            let users = db.snapshot().len();
            let (runs_as, server) = check_run_as(&cfg)?;
            let snapshot = db.snapshot();
            let found = match cfg.store.backend {
                // The spool is the MTA's: its permissions are the administrator's to set (see
                // the README); each login and delivery says what is wrong with it.
                StoreBackend::Maildir if cfg.store.format == StoreFormat::Mbox => {
                    facteur_store::check::Findings::default()
                }
                StoreBackend::Maildir => facteur_store::check::check_maildirs(
                    &cfg.store.maildir,
                    snapshot.entries().iter().map(|e| (e.user(), e.home())),
                    server,
                ),
                StoreBackend::Postgresql => {
                    // The server refuses to start on a database it cannot use: say so now.
                    let version = db_check(&cfg)?;
                    println!("store: postgresql, schema version {version}");
                    facteur_store::check::Findings::default()
                }
            };
            for w in &found.warnings {
                eprintln!("warning: {w}");
            }
            let schemes: Vec<Scheme> = snapshot
                .entries()
                .iter()
                .map(|e| e.password().scheme())
                .collect();
            for w in login_method_warnings(&cfg, schemes.iter().map(|&s| (s, 1))) {
                eprintln!("warning: {w}");
            }
            if !found.errors.is_empty() {
                for e in &found.errors {
                    eprintln!("error: {e}");
                }
                return Err(fail(format!(
                    "{}: {} problem{} with the maildirs: deliveries or logins would fail",
                    config.config.display(),
                    found.errors.len(),
                    if found.errors.len() == 1 { "" } else { "s" }
                )));
            }
            let store = match cfg.store.backend {
                StoreBackend::Maildir if cfg.store.format == StoreFormat::Mbox => {
                    format!("mbox {}", cfg.store.mbox)
                }
                StoreBackend::Maildir => format!("maildir {}", cfg.store.maildir),
                StoreBackend::Postgresql => "store postgresql".to_string(),
            };
            println!(
                "{}: OK ({users} user{}, {store}, listening on {}{tls}, {runs_as})",
                config.config.display(),
                if users == 1 { "" } else { "s" },
                join(&cfg.server.listen)
            );
            let trusted = &cfg.server.proxy_protocol;
            if trusted.is_empty() {
                println!("PROXY protocol: off (every peer is the client)");
            } else {
                println!(
                    "PROXY protocol: required from {} (a header within {}s names the client)",
                    trusted
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    cfg.limits.proxy_header_timeout_secs
                );
            }
            println!("{}", lmtp_summary(&cfg)?);
            println!("{}", pop2_summary(&cfg));
            println!("{}", oauth_summary(&cfg)?);
            let needed = server::rlimit::descriptors_needed(cfg.limits.max_connections);
            if let Some(hard) = server::rlimit::hard_open_files().filter(|&h| h < needed) {
                eprintln!(
                    "warning: the open-file limit is {hard}, and max_connections = {} needs \
                     about {needed}: raise the hard limit (systemd: LimitNOFILE={needed}; shell: \
                     ulimit -Hn) or lower max_connections",
                    cfg.limits.max_connections
                );
            }
            // A uid or gid field facteur cannot use: that user's logins and deliveries fail.
            for entry in db.snapshot().entries() {
                if let Err(e) = Owner::from_fields(entry.uid(), entry.gid()) {
                    eprintln!(
                        "warning: {}:{}: user {}: {e}",
                        cfg.auth.passwd_file.display(),
                        entry.line(),
                        entry.user()
                    );
                }
            }
            Ok(())
        }
    }
}

/// check-config: login methods offered to users whose stored scheme can never serve them. A
/// client that picks the strongest method advertised (many do, and do not fall back) then fails
/// every time, is penalised, and may be cut off. (APOP is not advertised when no user can use
/// it; SASL mechanisms are.)
fn login_method_warnings(
    cfg: &Config,
    users: impl Iterator<Item = (Scheme, u64)> + Clone,
) -> Vec<String> {
    let mut methods = cfg.auth.sasl_mechanisms();
    methods.retain(|m| m == "CRAM-MD5" || m == "SCRAM-SHA-256");
    if cfg.auth.apop {
        methods.push("APOP".to_string());
    }
    let total: u64 = users.clone().map(|(_, n)| n).sum();
    let mut warnings = Vec::new();
    for method in methods {
        let mut schemes: std::collections::BTreeMap<&str, u64> = Default::default();
        for (scheme, n) in users.clone() {
            if !scheme.serves(&method) {
                *schemes.entry(scheme.name()).or_default() += n;
            }
        }
        let cannot: u64 = schemes.values().sum();
        if cannot == 0 {
            continue;
        }
        let needs = auth::Scheme::ALL
            .iter()
            .filter(|s| s.serves(&method))
            .map(|s| format!("{{{s}}}"))
            .collect::<Vec<_>>()
            .join(" or ");
        let listed = schemes
            .iter()
            .map(|(s, n)| format!("{n} {s}"))
            .collect::<Vec<_>>()
            .join(", ");
        let setting = if method == "APOP" {
            "set [auth] apop = false".to_string()
        } else {
            format!("remove {method} from [auth] sasl")
        };
        warnings.push(if cannot == total && method == "APOP" {
            format!(
                "APOP is enabled but no user can use it (it needs {needs} passwords; they are \
                 {listed}): it is not offered; {setting}"
            )
        } else {
            format!(
                "{method} is offered, but {cannot} of {total} users cannot log in with it \
                 (stored as {listed}; it needs {needs}): clients that pick the strongest method \
                 advertised fail and are penalised; {setting}, or store those users' passwords \
                 with a scheme it can use"
            )
        });
    }
    warnings
}

/// check-config: who `serve` will run as, and whether it can; fails when `[server] user` or
/// `group` does not exist, or names root without `allow_root`. Only warns about how it is
/// started, since check-config may run as another user than the service.
fn check_run_as(cfg: &Config) -> Result<(String, facteur_store::check::Server), CliError> {
    let now = privileges::current()?;
    // Who will make and write the maildirs: `[server] user`, or whoever starts the server
    // (taken to be who runs this check).
    let server = match server::serve::run_as(cfg)? {
        Some(t) => facteur_store::check::Server {
            uid: t.uid,
            gid: t.gid,
        },
        None => facteur_store::check::Server {
            uid: now.uid[1],
            gid: now.gid[1],
        },
    };
    let text = check_run_as_text(cfg, &now)?;
    Ok((text, server))
}

fn check_run_as_text(cfg: &Config, now: &privileges::ProcessIds) -> Result<String, CliError> {
    match server::serve::run_as(cfg)? {
        Some(t) if t.uid == 0 && !cfg.server.allow_root => Err(fail(server::serve::ROOT_REFUSED)),
        Some(t) => {
            if now.uid[1] != 0 && !now.is(&t) {
                eprintln!(
                    "warning: to switch to {t}, `facteur serve` must be started as root or as \
                     that user and group; this check runs as uid {}",
                    now.uid[1]
                );
            }
            Ok(format!("runs as {t}"))
        }
        None => {
            if now.is_root() && !cfg.server.allow_root {
                eprintln!(
                    "warning: [server] user is not set: `facteur serve` started as root (as \
                     now) will refuse to run; start it as the account that owns the maildrops \
                     (systemd: User=), or set [server] user"
                );
            }
            Ok(if cfg.server.allow_root {
                "runs as the user that starts it, root allowed".to_string()
            } else {
                "runs as the user that starts it, never root".to_string()
            })
        }
    }
}

fn init_logging(log: &server::config::LogSection) {
    let level = log.level.parse().unwrap_or(tracing::Level::INFO);
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_writer(std::io::stderr);
    let _ = match log.format {
        server::config::LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        // The event's fields at the top level of the object, as the text format has them on
        // its line; no span lists (facteur logs events, not spans).
        server::config::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
}

/// `facteur serve`. Everything that may need root happens first, while the process has one
/// thread: bind the listeners, read the certificate, then give up root
/// ([`privileges::drop_privileges`]). Only then are the runtime and its threads created, and the
/// passwd-file opened (as the user who will re-read it when it changes).
fn serve(args: ServeArgs) -> Result<(), CliError> {
    let dev = args.dev;
    // A --dev data folder made by this run, removed again if the run fails before it serves
    // (a port in use): otherwise the retry would find it and reuse what failed.
    let mut fresh_dev_dir = None;
    let (mut cfg, banner) = if dev {
        if !args.data_dir.exists() {
            fresh_dev_dir = Some(args.data_dir.clone());
        }
        let setup = dev_setup(&args.data_dir, args.port, args.tls_port);
        if setup.is_err() {
            remove_fresh_dev_dir(fresh_dev_dir.as_deref());
        }
        setup?
    } else {
        let path = args
            .config
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
        (Config::load(&path)?, None)
    };
    init_logging(&cfg.log);
    if dev {
        // A first look needs few sessions: as many as the machine's open-file limit carries,
        // rather than a warning about a limit nobody asked for.
        let fits = server::rlimit::sessions_within(server::rlimit::hard_open_files());
        cfg.limits.max_connections = cfg.limits.max_connections.min(fits).max(1);
    }
    server::rlimit::prepare_open_files(cfg.limits.max_connections);
    let served = server::serve::serve(cfg, dev, banner).map_err(CliError::from);
    if served.is_err() {
        remove_fresh_dev_dir(fresh_dev_dir.as_deref());
    }
    served
}

/// Removes the --dev data folder this run made, when it failed before serving.
fn remove_fresh_dev_dir(dir: Option<&Path>) {
    if let Some(dir) = dir {
        match std::fs::remove_dir_all(dir) {
            // Not made after all (a setup that failed before writing anything).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("facteur: cannot remove {}: {e}", dir.display()),
            Ok(()) => {}
        }
    }
}

/// Addresses as "a, b, c".
fn join(addresses: &[std::net::SocketAddr]) -> String {
    addresses
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The ports of --dev when none are given.
const DEV_PORT: u16 = 11110;
const DEV_TLS_PORT: u16 = 11995;

/// Create (or reuse) the --dev data folder; returns its configuration and what to print. Ports
/// given on the command line replace those of a folder made before.
fn dev_setup(
    dir: &Path,
    port_arg: Option<u16>,
    tls_port_arg: Option<u16>,
) -> Result<(Config, Option<String>), CliError> {
    let port = port_arg.unwrap_or(DEV_PORT);
    let tls_port = tls_port_arg.unwrap_or(DEV_TLS_PORT);
    let config_path = dir.join("facteur.toml");
    let password_path = dir.join("demo-password");
    if !config_path.exists() && !cfg!(feature = "dev-cert") {
        // Before anything is written: no half-made folder.
        return Err(fail(format!("serve --dev: {}", tls::NO_DEV_CERT)));
    }
    if !config_path.exists() {
        std::fs::create_dir_all(dir)
            .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
        let password = random_password();
        let hash = auth::hash_password(Scheme::Argon2id, password.as_bytes())?;
        auth::add_user(dir.join("users"), "demo", &hash)?;
        write_private(&password_path, format!("{password}\n").as_bytes())?;
        tls::write_self_signed(dir)?;
        std::fs::write(
            &config_path,
            format!(
                "# facteur --dev configuration: loopback only, for a first look.\n\
                 [server]\nlisten = [\"127.0.0.1:{port}\"]\nlisten_tls = [\"127.0.0.1:{tls_port}\"]\n\n\
                 [tls]\ncertificate = \"cert.pem\"\nprivate_key = \"key.pem\"\n\n\
                 [auth]\npasswd_file = \"users\"\n\n\
                 [store]\nmaildir = \"mail/%u/Maildir\"\n"
            ),
        )
        .map_err(|e| fail(format!("cannot write {}: {e}", config_path.display())))?;
        let cfg = Config::load(&config_path)?;
        let store =
            MaildirStore::new(cfg.store.maildir.clone()).with_line_ends(cfg.store.line_ends.into());
        let welcome = format!(
            "From: facteur <postmaster@localhost>\r\nTo: demo@localhost\r\n\
             Subject: Welcome to facteur\r\nMessage-ID: <welcome.{}@localhost>\r\n\r\n\
             Hello!\r\n\r\nThis message was read from the Maildir in {}\r\n\
             by the facteur POP3 server. Add users with `facteur user add`,\r\n\
             deliver mail with `facteur deliver USER < message.eml`.\r\n",
            std::process::id(),
            dir.display()
        );
        store.deliver("demo", None, &mut welcome.as_bytes())?;
    }
    let mut cfg = Config::load(&config_path)?;
    if let Some(p) = port_arg {
        cfg.server.listen = vec![SocketAddr::from(([127, 0, 0, 1], p))];
    }
    if let Some(p) = tls_port_arg {
        cfg.server.listen_tls = Some(vec![SocketAddr::from(([127, 0, 0, 1], p))]);
    }
    let password = std::fs::read_to_string(&password_path)
        .map_err(|e| fail(format!("cannot read {}: {e}", password_path.display())))?;
    let addr = cfg
        .server
        .listen
        .first()
        .copied()
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], port)));
    let tls_addr = cfg
        .listen_tls()
        .first()
        .copied()
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], tls_port)));
    let password = password.trim();
    let cert = dir.join("cert.pem");
    let banner = format!(
        "facteur (dev mode) is serving POP3 on {addr} (with STLS) and POP3S on {tls_addr}\n\
         data in {}\n\
         user: demo   password: {password}\n\
         Read the welcome message with:\n  curl -s --user 'demo:{password}' pop3://{addr}/1\n\
         or over TLS:\n  curl -s --cacert {} --user 'demo:{password}' pop3s://{tls_addr}/1\n\
         Stop with Ctrl-C.",
        dir.display(),
        cert.display(),
    );
    Ok((cfg, Some(banner)))
}

fn random_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No entropy source at all: refuse rather than make a guessable password.
        return String::new();
    }
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), CliError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| fail(format!("cannot write {}: {e}", path.display())))?;
    f.write_all(data)
        .map_err(|e| fail(format!("cannot write {}: {e}", path.display())))
}

/// A user name as the server compares it: SASLprep'd when it is not ASCII (RFC 6856), so that
/// a name typed in NFD is stored as the NFC a client's login is turned into.
fn prepared_name(name: &str) -> Result<String, CliError> {
    match facteur_proto::utf8::prepare(name) {
        Ok(name) => Ok(name.into_owned()),
        Err(e) => Err(fail(format!(
            "the user name {name:?} is refused: it holds {e}"
        ))),
    }
}

fn user(cmd: UserCommand) -> Result<(), CliError> {
    match cmd {
        UserCommand::Add {
            name,
            password,
            config,
        } => {
            let name = prepared_name(&name)?;
            let cfg = Config::load(&config.config)?;
            if cfg.store.backend == StoreBackend::Maildir {
                check_new_user(&cfg, &name)?;
            }
            let hash = hash_from_input(&password)?;
            match SqlAdmin::of(&cfg)? {
                Some(db) => db.run(auth::sql::add_user(&db.pool, &name, &hash))?,
                None => auth::add_user(&cfg.auth.passwd_file, &name, &hash)?,
            }
            println!("added {name}");
        }
        UserCommand::Del { name, config } => {
            let name = prepared_name(&name)?;
            let cfg = Config::load(&config.config)?;
            match SqlAdmin::of(&cfg)? {
                Some(db) => db.run(auth::sql::del_user(&db.pool, &name))?,
                None => auth::del_user(&cfg.auth.passwd_file, &name)?,
            }
            println!("removed {name} (the maildrop is kept)");
        }
        UserCommand::List { config } => {
            let cfg = Config::load(&config.config)?;
            match SqlAdmin::of(&cfg)? {
                Some(db) => db.run(auth::sql::list_users(&db.pool, |u| println!("{u}")))?,
                None => {
                    for u in auth::list_users(&cfg.auth.passwd_file)? {
                        println!("{u}");
                    }
                }
            }
        }
        UserCommand::Passwd {
            name,
            password,
            config,
        } => {
            let name = prepared_name(&name)?;
            let cfg = Config::load(&config.config)?;
            let db = SqlAdmin::of(&cfg)?;
            let hash = hash_from_input(&password)?;
            match db {
                Some(db) => db.run(auth::sql::set_password(&db.pool, &name, &hash))?,
                None => auth::set_password(&cfg.auth.passwd_file, &name, &hash)?,
            }
            println!("changed the password of {name}");
        }
        UserCommand::AppPassword(cmd) => app_password(cmd)?,
    }
    Ok(())
}

fn app_password(cmd: AppPasswordCommand) -> Result<(), CliError> {
    match cmd {
        AppPasswordCommand::Add {
            name,
            label,
            scheme,
            config,
        } => {
            let name = prepared_name(&name)?;
            auth::validate_label(&label)?;
            if !matches!(
                scheme,
                Scheme::Argon2id | Scheme::Sha512Crypt | Scheme::Sha256Crypt | Scheme::BlfCrypt
            ) {
                return Err(fail(format!(
                    "app passwords are stored with a one-way hash: ARGON2ID, SHA512-CRYPT, \
                     SHA256-CRYPT or BLF-CRYPT, not {}",
                    scheme.name()
                )));
            }
            let cfg = Config::load(&config.config)?;
            let db = SqlAdmin::of(&cfg)?;
            let secret = auth::generate_app_password_secret()?;
            let hash = auth::hash_password(scheme, secret.expose().as_bytes())?;
            let id = match db {
                Some(db) => db.run(auth::sql::add_app_password(&db.pool, &name, &label, &hash))?,
                None => auth::add_app_password(&cfg.auth.passwd_file, &name, &label, &hash)?,
            };
            let password = auth::app_password_text(&id, &secret);
            println!(
                "added app password {label:?} (id {id}) for {name}; it is shown this once, \
                 only its hash is kept:"
            );
            println!("{}", password.expose());
        }
        AppPasswordCommand::List { name, config } => {
            let name = prepared_name(&name)?;
            let cfg = Config::load(&config.config)?;
            let list = match SqlAdmin::of(&cfg)? {
                Some(db) => db.run(auth::sql::list_app_passwords(&db.pool, &name))?,
                None => auth::list_app_passwords(
                    &cfg.auth.passwd_file,
                    cfg.auth.app_password_last_used_path(),
                    &name,
                )?,
            };
            let width = list.iter().map(|a| a.label.chars().count()).max();
            let width = width.unwrap_or(0).max("LABEL".len());
            println!("{:width$}  ID    CREATED               LAST USED", "LABEL");
            for a in list {
                let used = a.last_used.map_or("never".to_string(), utc_minute);
                println!(
                    "{:width$}  {}  {}  {used}",
                    a.label,
                    a.id,
                    utc_minute(a.created)
                );
            }
        }
        AppPasswordCommand::Revoke {
            name,
            label,
            config,
        } => {
            let name = prepared_name(&name)?;
            let cfg = Config::load(&config.config)?;
            match SqlAdmin::of(&cfg)? {
                Some(db) => db.run(auth::sql::revoke_app_password(&db.pool, &name, &label))?,
                None => auth::revoke_app_password(&cfg.auth.passwd_file, &name, &label)?,
            }
            println!("revoked app password {label:?} of {name}");
        }
    }
    Ok(())
}

/// Seconds since the Unix epoch as `2026-12-03 15:30 UTC`.
fn utc_minute(secs: i64) -> String {
    let secs = u64::try_from(secs).unwrap_or(0);
    let (y, m, d) = facteur_store::mbox_format::civil_from_days(secs / 86_400);
    let in_day = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        in_day / 3600,
        in_day % 3600 / 60
    )
}

/// The users' database of `[auth] backend = "sql"`, checked for its schema, with a runtime to
/// reach it: what `facteur user` and `deliver` work on instead of the passwd-file.
struct SqlAdmin {
    rt: tokio::runtime::Runtime,
    pool: auth::sql::Pool,
}

impl SqlAdmin {
    /// `None` for the passwd-file backend.
    fn of(cfg: &Config) -> Result<Option<Self>, CliError> {
        if cfg.auth.backend != AuthBackend::Sql {
            return Ok(None);
        }
        let rt = db_runtime()?;
        let pool = rt.block_on(facteur_store::postgres::connect_pool(db_url(cfg)?, 1))?;
        rt.block_on(auth::sql::check_schema(&pool))?;
        Ok(Some(Self { rt, pool }))
    }

    fn run<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, auth::AuthError>>,
    ) -> Result<T, auth::AuthError> {
        self.rt.block_on(f)
    }
}

/// check-config: the certificate and key load as `serve` would load them, or this fails; the
/// words for the summary line.
fn check_tls(cfg: &Config) -> Result<String, CliError> {
    Ok(match &cfg.tls {
        Some(t) => {
            TlsState::new(TlsFiles {
                certificate: t.certificate.clone(),
                private_key: t.private_key.clone(),
                client_ca: t.client_ca.clone(),
            })?;
            format!(", POP3S on {}", join(&cfg.listen_tls()))
        }
        None => ", no TLS".to_string(),
    })
}

/// check-config with `[auth] backend = "sql"`: the TLS files, who the server runs as, and the
/// database (reachable, this facteur's schema, its users counted). The Maildirs are not
/// checked one by one: the users are in a database that may hold millions.
fn check_config_sql(cfg: &Config, path: &Path) -> Result<(), CliError> {
    let tls = check_tls(cfg)?;
    let (runs_as, _) = check_run_as(cfg)?;
    let version = db_check(cfg)?;
    let Some(db) = SqlAdmin::of(cfg)? else {
        return Err(fail("[auth] backend is not sql"));
    };
    let users = db.run(auth::sql::count_users(&db.pool))?;
    let schemes = db.run(auth::sql::count_schemes(&db.pool))?;
    for w in login_method_warnings(cfg, schemes.iter().copied()) {
        eprintln!("warning: {w}");
    }
    let store = match cfg.store.backend {
        StoreBackend::Maildir if cfg.store.format == StoreFormat::Mbox => {
            format!("mbox {}", cfg.store.mbox)
        }
        StoreBackend::Maildir => format!("maildir {}", cfg.store.maildir),
        StoreBackend::Postgresql => "store postgresql".to_string(),
    };
    println!(
        "{}: OK ({users} user{} in the database, schema version {version}, {store}, listening \
         on {}{tls}, {runs_as})",
        path.display(),
        if users == 1 { "" } else { "s" },
        join(&cfg.server.listen)
    );
    println!("{}", lmtp_summary(cfg)?);
    println!("{}", pop2_summary(cfg));
    println!("{}", oauth_summary(cfg)?);
    Ok(())
}

/// check-config: the OAuth issuers, loaded as `serve` loads them (key files, client secrets,
/// the CA file), or this fails. Key sets at URLs are fetched at the first login that needs
/// them, not here.
fn oauth_summary(cfg: &Config) -> Result<String, CliError> {
    let issuers = &cfg.oauth.issuer;
    if facteur_server::oauth_issuers(&cfg.oauth)
        .map_err(fail)?
        .is_none()
    {
        return Ok("OAuth: off (no [[oauth.issuer]])".into());
    }
    let each: Vec<String> = issuers
        .iter()
        .map(|i| {
            let how = match (&i.jwks_file, &i.jwks_url) {
                (Some(f), _) => format!("keys in {}", f.display()),
                (_, Some(u)) => format!("keys at {u}"),
                _ => "introspection".to_string(),
            };
            format!("{} ({how}, user claim {:?})", i.issuer, i.user_claim)
        })
        .collect();
    Ok(format!(
        "OAuth: OAUTHBEARER and XOAUTH2 where PLAIN is offered, for {}",
        each.join("; ")
    ))
}

/// check-config: the POP2 listeners, and who may log in on them (POP2 has no TLS, so the
/// plaintext policy decides).
fn pop2_summary(cfg: &Config) -> String {
    let l = &cfg.server.listen_pop2;
    if l.is_empty() {
        return "POP2: off".to_string();
    }
    let who = match cfg.auth.plaintext_auth {
        server::config::PlaintextAuth::Always => "from any address",
        server::config::PlaintextAuth::Loopback => "from this host only",
        server::config::PlaintextAuth::Never => "from nowhere: every HELO is refused",
    };
    format!(
        "POP2: on {} (no TLS: passwords in clear, logins {who}, as [auth] plaintext_auth says)",
        join(l)
    )
}

/// check-config: the LMTP listeners and how recipients become users; fails when
/// `[lmtp] socket_group` names no group.
fn lmtp_summary(cfg: &Config) -> Result<String, CliError> {
    let l = &cfg.server.listen_lmtp;
    if l.is_empty() {
        return Ok("LMTP: off".to_string());
    }
    let group = match &cfg.lmtp.socket_group {
        Some(g) => {
            let gid = server::lmtp::socket_gid(g).map_err(|e| fail(e.to_string()))?;
            format!(", sockets' group {g} ({gid})")
        }
        None => String::new(),
    };
    let domains = if cfg.lmtp.domains.is_empty() {
        "any domain".to_string()
    } else {
        format!("domains {}", cfg.lmtp.domains.join(", "))
    };
    let user = if cfg.lmtp.full_address {
        "the whole address"
    } else {
        "the local part"
    };
    Ok(format!(
        "LMTP: on {} ({domains}, the user is {user}, sockets' mode {:#o}{group})",
        l.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        cfg.lmtp.socket_mode
    ))
}

/// `user add` refuses a name the maildir template cannot turn into a maildrop (every delivery
/// and login of that user would fail), and says when the template needs a home directory, which
/// `user add` does not write.
fn check_new_user(cfg: &Config, name: &str) -> Result<(), CliError> {
    if cfg.store.backend == StoreBackend::Postgresql {
        // The maildrop is a row named after the user: no path to leave, no template to fit.
        return Ok(());
    }
    if cfg.store.format == StoreFormat::Mbox {
        let store = MboxStore::new(cfg.store.mbox.clone());
        return match store.mbox_path(name, Some("/")) {
            Ok(_) => Ok(()),
            Err(e) => Err(CliError {
                message: format!("{name:?} cannot have an mbox: {e}"),
                status: EX_DATAERR,
            }),
        };
    }
    let store = MaildirStore::new(cfg.store.maildir.clone());
    let checked = match store.maildir_path(name, None) {
        Err(StoreError::NoHome(_)) => {
            eprintln!(
                "note: the maildir template {:?} uses %h: add {name}'s home directory (the 6th \
                 field) to {}, or its deliveries and logins fail",
                cfg.store.maildir,
                match cfg.auth.backend {
                    AuthBackend::PasswdFile => cfg.auth.passwd_file.display().to_string(),
                    AuthBackend::Sql => "the users table (its home column)".to_string(),
                }
            );
            store.maildir_path(name, Some("/"))
        }
        other => other,
    };
    match checked {
        Ok(_) => Ok(()),
        Err(e) => {
            let hint = if matches!(e, StoreError::BadUser(_))
                && cfg.store.maildir.contains("%d")
                && !name.contains(['@', '/', '\\'])
            {
                " (the template uses %d, the domain: names must be user@domain)"
            } else {
                ""
            };
            Err(fail(format!(
                "refusing to add {name:?}: {e}{hint}; the maildir template is {:?}",
                cfg.store.maildir
            )))
        }
    }
}

/// Read a password (prompt twice, or one line of stdin) and hash it, SASLprep'd when it is not
/// ASCII (RFC 6856) as the server prepares the one a client sends.
fn hash_from_input(args: &PasswordArgs) -> Result<String, CliError> {
    let password = if args.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| fail(format!("cannot read the password from stdin: {e}")))?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        let p = rpassword::prompt_password("Password: ").map_err(|e| {
            fail(format!(
                "cannot prompt for a password ({e}); use --password-stdin"
            ))
        })?;
        let again = rpassword::prompt_password("Again: ").map_err(|e| {
            fail(format!(
                "cannot prompt for a password ({e}); use --password-stdin"
            ))
        })?;
        if p != again {
            return Err(fail("the two passwords differ"));
        }
        p
    };
    if password.is_empty() {
        return Err(fail("empty password refused"));
    }
    let password = facteur_proto::utf8::prepare(&password)
        .map_err(|e| fail(format!("the password is refused: it holds {e}")))?;
    Ok(auth::hash_password(args.scheme, password.as_bytes())?)
}

/// A small runtime for the commands that talk to the database and then exit.
fn db_runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(format!("cannot start the runtime: {e}")))
}

/// The database of this configuration (`[store] url`, or `[auth] url` for SQL users with the
/// Maildir store), or why it has none.
fn db_url(cfg: &Config) -> Result<&str, CliError> {
    cfg.database_url().ok_or_else(|| {
        fail(format!(
            "[store] backend is {} and [auth] backend is {}: there is no database to use",
            cfg.store.backend, cfg.auth.backend
        ))
    })
}

/// `facteur db migrate`.
fn db_migrate(config_path: &Path) -> Result<(), CliError> {
    let cfg = Config::load(config_path)?;
    let url = db_url(&cfg)?;
    let done = db_runtime()?.block_on(facteur_store::postgres::migrate_url(url))?;
    if done.from == done.to {
        println!("schema version {}: up to date, nothing to do", done.to);
    } else {
        println!("schema version {} (was {})", done.to, done.from);
    }
    Ok(())
}

/// `facteur migrate`: the logic is `facteur_store::postgres::migrate`; this reads the two
/// configurations, picks the users and prints the reports.
fn migrate(args: &MigrateArgs) -> Result<(), CliError> {
    use facteur_store::postgres::migrate::{MaildropReport, MigrateOptions, Migrator};
    let from = Config::load(&args.from_config)?;
    let to = Config::load(&args.to_config)?;
    if from.store.backend != StoreBackend::Maildir || from.store.format != StoreFormat::Maildir {
        return Err(fail(format!(
            "{}: [store] is not Maildirs (backend {}{}): nothing to migrate from",
            args.from_config.display(),
            from.store.backend,
            if from.store.format == StoreFormat::Mbox {
                ", format mbox"
            } else {
                ""
            }
        )));
    }
    let url = db_url(&to)?;
    let users = PasswdDb::open(&from.auth.passwd_file)?.snapshot();
    let names: Vec<&str> = if args.all {
        users.users().collect()
    } else {
        let mut names = Vec::new();
        for name in &args.users {
            if users.get(name).is_none() {
                return Err(fail(format!(
                    "no such user in {}: {name}",
                    from.auth.passwd_file.display()
                )));
            }
            names.push(name.as_str());
        }
        names
    };
    let maildirs = MaildirStore::new(from.store.maildir.clone());
    let options = MigrateOptions {
        dry_run: args.dry_run,
        // The unique-ids the old server gives, Dovecot's with `uidl = "dovecot"`.
        uidl: from.store.uidl.into(),
    };
    let runtime = db_runtime()?;
    let mut migrator = runtime.block_on(Migrator::connect(url))?;
    let mut total = MaildropReport::default();
    let (mut maildrops, mut failed) = (0u64, 0u64);
    for name in names {
        let entry = users.get(name);
        let home = entry.and_then(|e| e.home());
        let owner = Owner::from_fields(entry.and_then(|e| e.uid()), entry.and_then(|e| e.gid()));
        let report = owner.map_err(StoreError::from).and_then(|owner| {
            let dir = maildirs.maildir_path(name, home)?;
            runtime.block_on(migrator.maildrop(name, &dir, owner, options))
        });
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                failed += 1;
                eprintln!("{name}: not migrated: {e}");
                continue;
            }
        };
        maildrops += 1;
        println!(
            "{name}: {} listed, {} copied ({} octets), {} already there, {} missing, {} removed, \
             {} skipped, {} conflicts{}",
            report.listed,
            report.copied,
            report.octets,
            report.already,
            report.missing,
            report.removed,
            report.skipped.len(),
            report.conflicts.len(),
            match (args.dry_run, report.verify_failures.is_empty()) {
                (true, _) => ": dry run, nothing written",
                (false, true) => ": verified",
                (false, false) => ": VERIFICATION FAILED",
            }
        );
        if report.deleted_in_postgres > 0 {
            println!(
                "  {} deleted on PostgreSQL since they were copied: not copied again",
                report.deleted_in_postgres
            );
        }
        if report.removals_deferred > 0 {
            println!(
                "  {} deleted from the Maildir since they were copied, not removed yet: the \
                 maildrop is in use; run migrate again",
                report.removals_deferred
            );
        }
        let lines = [
            ("skipped", &report.skipped),
            ("conflict", &report.conflicts),
            ("verification", &report.verify_failures),
            ("note", &report.notes),
        ];
        for (label, lines) in lines {
            for line in lines {
                println!("  {label}: {line}");
            }
        }
        total.listed += report.listed;
        total.copied += report.copied;
        total.octets += report.octets;
        total.already += report.already;
        total.missing += report.missing;
        total.removed += report.removed;
        total.skipped.extend(report.skipped);
        total.conflicts.extend(report.conflicts);
        total.verify_failures.extend(report.verify_failures);
    }
    println!(
        "summary: {maildrops} maildrops, {} messages copied, {} already there, {} missing, {} \
         removed, {} skipped, {} conflicts, {} verification failures, {} octets copied{}",
        total.copied,
        total.already,
        total.missing,
        total.removed,
        total.skipped.len(),
        total.conflicts.len(),
        total.verify_failures.len(),
        total.octets,
        if failed > 0 {
            format!(", {failed} maildrops not migrated")
        } else {
            String::new()
        }
    );
    if failed > 0 || !total.ok() {
        return Err(fail(
            "migration incomplete: see the conflicts, verification failures or errors above",
        ));
    }
    Ok(())
}

/// check-config: the database answers and has the schema this facteur knows; says where it is
/// and how the connection is protected.
fn db_check(cfg: &Config) -> Result<i64, CliError> {
    use facteur_store::postgres::SslMode;
    let url = db_url(cfg)?;
    let settings = facteur_store::postgres::settings(url)?;
    println!("database: {}", settings.describe());
    if matches!(settings.mode, SslMode::Prefer | SslMode::Require) {
        eprintln!(
            "warning: the database's certificate is not checked (sslmode={}): on a network you \
             do not trust, use sslmode=verify-full with sslrootcert",
            settings.mode
        );
    }
    Ok(db_runtime()?.block_on(facteur_store::postgres::check_url(url))?)
}

fn deliver(user: &str, config_path: &Path) -> Result<(), CliError> {
    let temp = |e: &dyn std::fmt::Display| CliError {
        message: e.to_string(),
        status: EX_TEMPFAIL,
    };
    let cfg = Config::load(config_path).map_err(|e| temp(&e))?;
    let store_error = |e: StoreError| CliError {
        status: delivery_status(&e),
        message: e.to_string(),
    };
    let no_user = || CliError {
        message: format!("no such user: {user}"),
        status: EX_NOUSER,
    };
    // Run as root (from an MTA), the files are given to the maildrop's owner.
    let (home, owner) = match SqlAdmin::of(&cfg).map_err(|e| temp(&e.message))? {
        Some(db) => {
            let found = db
                .run(auth::sql::find_user(&db.pool, user))
                .map_err(|e| temp(&e))?
                .ok_or_else(no_user)?;
            let owner = Owner {
                uid: found.uid,
                gid: found.gid,
            };
            (found.home, owner)
        }
        None => {
            let db = PasswdDb::open(&cfg.auth.passwd_file).map_err(|e| temp(&e))?;
            let users = db.snapshot();
            let entry = users.get(user).ok_or_else(no_user)?;
            let owner = Owner::from_fields(entry.uid(), entry.gid())
                .map_err(|e| store_error(StoreError::from(e)))?;
            (entry.home().map(str::to_string), owner)
        }
    };
    let mut stdin = std::io::stdin().lock();
    // Nothing at all is no message: refused before any file is made.
    match stdin.fill_buf() {
        Ok([]) => {
            return Err(CliError {
                message: "empty input: no message to deliver".to_string(),
                status: EX_DATAERR,
            })
        }
        Ok(_) => {}
        Err(e) => return Err(temp(&format!("cannot read the message: {e}"))),
    }
    let d = match cfg.store.backend {
        StoreBackend::Maildir if cfg.store.format == StoreFormat::Mbox => {
            MboxStore::new(cfg.store.mbox.clone())
                .deliver_as(user, home.as_deref(), owner, &mut stdin)
                .map_err(store_error)?
        }
        StoreBackend::Maildir => MaildirStore::new(cfg.store.maildir.clone())
            .with_line_ends(cfg.store.line_ends.into())
            .deliver_as(user, home.as_deref(), owner, &mut stdin)
            .map_err(store_error)?,
        StoreBackend::Postgresql => {
            // The store's queries run on this runtime's worker; the delivery itself is called
            // from this thread, off the runtime, as the server calls it from its blocking pool.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .map_err(|e| temp(&format!("cannot start the runtime: {e}")))?;
            let store = runtime
                .block_on(facteur_store::postgres::PgStore::connect(
                    &facteur_store::postgres::PgStoreConfig {
                        url: cfg.store.url.clone().unwrap_or_default(),
                        pool_size: 1,
                        lease: cfg.store.lease(),
                        // A delivery takes no lease: no second connection for them.
                        lease_commit: facteur_store::postgres::LeaseCommit::Synchronous,
                    },
                ))
                .map_err(store_error)?;
            store
                .deliver_as(user, home.as_deref(), owner, &mut stdin)
                .map_err(store_error)?
        }
    };
    eprintln!("delivered {} octets to {}", d.size, d.path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn dev_password_is_strong() {
        let p = random_password();
        assert_eq!(p.len(), 16);
        assert_ne!(p, random_password());
    }

    /// Without the feature, `serve --dev` says why it cannot go on, and writes nothing.
    #[cfg(not(feature = "dev-cert"))]
    #[test]
    fn dev_without_the_dev_cert_feature_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("dev");
        let e = dev_setup(&folder, None, None).unwrap_err();
        assert!(
            e.message.contains("without the dev-cert feature"),
            "{}",
            e.message
        );
        assert!(!folder.exists());
    }
}
