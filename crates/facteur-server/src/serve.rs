//! `facteur serve` from a loaded configuration to the last log line: bind every listener, read
//! the certificate and the passwd-file, give up root, then start the runtime, install the signal
//! handlers and serve until SIGTERM or SIGINT.
//!
//! The order is the point. Binding may need root (ports 110 and 995), and giving root up must
//! happen while the process has one thread (see [`crate::privileges`]), so the listeners are
//! bound with std sockets and the runtime is built only after the switch. Every signal is handled
//! before the log says "listening", so that a SIGTERM or SIGHUP sent as soon as it does is a
//! clean shutdown or a reload, never the default sudden death.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use facteur_auth::penalty::FailedLogins;
use facteur_auth::sql::{SharedPenalties, SharedPenaltiesConfig, SqlUsers};
use facteur_auth::{AuthError, Authenticator, PasswdDb};
use facteur_store::{MaildirStore, MboxStore, Store};
use facteur_tls::{TlsError, TlsFiles, TlsState};

use crate::config::{AuthBackend, Config, LmtpListen, StoreBackend, StoreFormat, StoreSection};
use crate::privileges::{self, PrivilegeError, Target};
use crate::Shared;

/// How long the end of `serve` waits for blocking jobs after the sessions are gone.
const SHUTDOWN_BLOCKING_WAIT: Duration = Duration::from_secs(5);

/// Why `facteur serve` does not start as root.
pub const ROOT_REFUSED: &str =
    "refusing to serve mail as root: set [server] user (and group) to the \
     unprivileged account that owns the maildrops, or start facteur as that account (systemd: \
     User=); [server] allow_root = true forces it, which is dangerous";

/// Why the server could not start (or stopped on its own).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{ROOT_REFUSED}")]
    RootRefused,
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Lmtp(#[from] crate::lmtp::LmtpListenError),
    #[error("cannot serve a listener: {0}")]
    Listener(std::io::Error),
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    KeyLog(#[from] facteur_tls::KeyLogError),
    #[error(transparent)]
    Users(#[from] AuthError),
    /// The passwd-file could not be read after root was given up.
    #[error(
        "{source} (read as {target}, who must be able to read it: it is re-read when it changes)"
    )]
    UsersAs {
        source: Box<AuthError>,
        target: Box<Target>,
    },
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    /// `[oauth]`: a key file, a client secret or the CA file could not be read.
    #[error("{0}")]
    OAuth(String),
    /// The store could not be opened (the database unreachable, or its schema unknown).
    #[error("cannot open the store: {0}")]
    Store(#[from] facteur_store::StoreError),
    /// `[store] backend = "postgresql"` in a build without the feature `postgres`.
    #[error("[store] backend = \"postgresql\": this facteur was built without PostgreSQL")]
    NoPostgres,
    #[error("cannot handle {signal}: {source}")]
    Signal {
        signal: &'static str,
        source: std::io::Error,
    },
}

/// Serves `cfg` until SIGTERM or SIGINT. `dev`: `serve --dev`, which may run as root (with a
/// warning); `banner`: printed on standard output once the listeners are up.
pub fn serve(cfg: Config, dev: bool, banner: Option<String>) -> Result<(), ServeError> {
    let target = run_as(&cfg)?;
    // Refused before binding anything, so that nothing listens for a moment as root.
    let root_now = privileges::current()?.is_root();
    let root_after = target.as_ref().map_or(root_now, |t| t.uid == 0);
    if root_after && !cfg.server.allow_root && !dev {
        return Err(ServeError::RootRefused);
    }
    let plain = bind_all(&cfg.server.listen)?;
    let implicit = bind_all(&cfg.listen_tls())?;
    let pop2 = bind_all(&cfg.server.listen_pop2)?;
    let lmtp = bind_lmtp(&cfg)?;
    let metrics_listener = cfg
        .metrics
        .listen
        .map(|address| bind(address).map_err(|source| ServeError::Listen { address, source }))
        .transpose()?;
    let tls = cfg
        .tls
        .as_ref()
        .map(|t| {
            TlsState::new(TlsFiles {
                certificate: t.certificate.clone(),
                private_key: t.private_key.clone(),
                client_ca: t.client_ca.clone(),
            })
        })
        .transpose()?;
    let dropped = privileges::drop_privileges(target.as_ref())?;
    match &target {
        Some(t) if dropped.switched => {
            tracing::info!("running as {t}, supplementary groups cleared");
            warn_unreadable_tls(&cfg, t);
        }
        Some(t) => tracing::info!("running as {t} already"),
        None => tracing::info!(
            uid = dropped.now.uid[1],
            gid = dropped.now.gid[1],
            "running as the user that started facteur ([server] user is not set)"
        ),
    }
    if dropped.now.is_root() {
        if cfg.server.allow_root {
            tracing::warn!(
                "serving mail as root ([server] allow_root = true): a flaw in the server or a \
                 link planted in a maildrop reaches every file of this system"
            );
        } else if dev {
            tracing::warn!(
                "RUNNING AS ROOT: --dev allows it for a first look at facteur, never for real \
                 mail; `facteur serve --config` refuses root unless [server] user is set"
            );
        } else {
            return Err(ServeError::RootRefused);
        }
    }
    // The key log is opened as the user the server runs as: it must be that user's own file.
    let tls = match (tls, cfg.tls.as_ref().and_then(|t| t.key_log.as_ref())) {
        (Some(tls), Some(path)) => {
            let key_log = facteur_tls::KeyLogWriter::open(path)?;
            tracing::warn!(
                key_log = %path.display(),
                "the TLS key log is ON: the secrets of every TLS session are written to this \
                 file, and whoever reads it can decrypt captures of them, passwords included; \
                 remove [tls] key_log when the analysis is done"
            );
            Some(tls.with_key_log(Arc::new(key_log)))
        }
        (tls, _) => tls,
    };
    // The OAuth key files and client secrets, as the user who will re-read them.
    let oauth = crate::oauth_issuers(&cfg.oauth).map_err(ServeError::OAuth)?;
    // The passwd-file is read now, as the user who will re-read it; SQL users once the
    // runtime their queries run on exists.
    let passwd = match cfg.auth.backend {
        AuthBackend::PasswdFile => Some(
            PasswdDb::open(&cfg.auth.passwd_file)
                .map_err(|source| match &target {
                    Some(t) if dropped.switched => ServeError::UsersAs {
                        source: Box::new(source),
                        target: Box::new(t.clone()),
                    },
                    _ => ServeError::Users(source),
                })?
                .with_verified_cache(cfg.auth.cache_ttl(), cfg.auth.cache_max_entries)
                .with_app_password_last_used(cfg.auth.app_password_last_used_path()),
        ),
        AuthBackend::Sql => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    runtime.block_on(async move {
        let plain = into_tokio(plain)?;
        let implicit = into_tokio(implicit)?;
        let pop2 = into_tokio(pop2)?;
        let lmtp = lmtp_into_tokio(lmtp)?;
        let stls = tls.is_some();
        // The store and the users on one database: one pool for both, made (and its first
        // connection with it) before either.
        let pool = match (cfg.store.backend, cfg.auth.backend) {
            (StoreBackend::Postgresql, AuthBackend::Sql) => {
                let url = cfg.database_url().unwrap_or_default();
                let pool = facteur_store::postgres::connect_pool(url, cfg.store.pool_size).await?;
                tracing::info!(
                    pool_size = cfg.store.pool_size,
                    "the store and the users share one pool of database connections"
                );
                Some(pool)
            }
            _ => None,
        };
        let (auth, shared_penalties) = match passwd {
            Some(db) => (Arc::new(db) as Arc<dyn Authenticator>, None),
            None => {
                let (users, penalties) = open_sql_users(&cfg, pool.clone()).await?;
                (Arc::new(users) as Arc<dyn Authenticator>, Some(penalties))
            }
        };
        let store = open_store(&cfg.store, pool).await?;
        let mut shared = Shared::new(cfg, auth, store).with_oauth(oauth);
        if let Some(penalties) = shared_penalties {
            penalties.spawn_cleaner();
            shared = shared.with_failed_logins(FailedLogins::Shared(penalties));
        }
        if let Some(tls) = tls {
            shared = shared.with_tls(tls);
        }
        let shared = Arc::new(shared);
        crate::reload_tls_on_sighup(shared.clone());
        if let Some(listener) = metrics_listener {
            let listener = into_tokio(vec![listener])?
                .pop()
                .ok_or_else(|| ServeError::Listener(std::io::ErrorKind::NotFound.into()))?;
            if let Ok(a) = listener.local_addr() {
                tracing::info!(metrics = %a, "serving /metrics and /health over HTTP");
            }
            // Ready once the listeners are bound (they are) and the store answers.
            let store = shared.store.clone();
            let health: crate::metrics::HealthCheck = Arc::new(move || {
                let store = store.clone();
                Box::pin(async move {
                    match tokio::task::spawn_blocking(move || store.check_health()).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                })
            });
            // Ends with the runtime.
            tokio::spawn(crate::metrics::serve_http(
                listener,
                shared.metrics.clone(),
                health,
                std::future::pending(),
            ));
        }
        let shutdown = shutdown_signals()?;
        let listeners: Vec<(tokio::net::TcpListener, crate::Protocol)> = plain
            .into_iter()
            .map(|l| (l, crate::Protocol::Pop3))
            .chain(implicit.into_iter().map(|l| (l, crate::Protocol::Pop3s)))
            .chain(pop2.into_iter().map(|l| (l, crate::Protocol::Pop2)))
            .collect();
        for (l, protocol) in &listeners {
            let kind = match protocol {
                crate::Protocol::Pop3 if stls => "pop3 (STLS)",
                crate::Protocol::Pop3 => "pop3",
                crate::Protocol::Pop3s => "pop3s",
                crate::Protocol::Pop2 => "pop2 (no TLS)",
            };
            if let Ok(a) = l.local_addr() {
                tracing::info!(address = %a, kind, "listening");
            }
        }
        for l in &lmtp {
            match l {
                crate::lmtp::LmtpListener::Tcp(l) => {
                    if let Ok(a) = l.local_addr() {
                        tracing::info!(lmtp = %a, "accepting LMTP deliveries");
                    }
                }
                crate::lmtp::LmtpListener::Unix(_) => {}
            }
        }
        for path in cfg_unix_paths(&shared.config) {
            tracing::info!(lmtp = %path.display(), "accepting LMTP deliveries");
        }
        if let Some(b) = banner {
            println!("{b}");
        }
        if lmtp.is_empty() {
            crate::run_listeners(shared, listeners, shutdown).await;
        } else {
            // One signal stops both: the POP3 listeners and the LMTP ones.
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            let pop3 = crate::run_listeners(shared.clone(), listeners, stopped(stop_rx.clone()));
            let lmtp = crate::lmtp::run_lmtp(shared, lmtp, stopped(stop_rx));
            let signal = async move {
                shutdown.await;
                let _ = stop_tx.send(true);
            };
            tokio::join!(pop3, lmtp, signal);
        }
        Ok::<(), ServeError>(())
    })?;
    // Blocking jobs still running (a maildrop being opened or updated) get a bounded time to
    // end; only then is the last line written, so that it is the last thing the process does.
    runtime.shutdown_timeout(SHUTDOWN_BLOCKING_WAIT);
    tracing::info!("stopped");
    Ok(())
}

/// `[auth] backend = "sql"`: the users and the shared failed-login penalties, in the database
/// of [`Config::database_url`], whose schema must be this build's; on `pool` if the store
/// shares it, else on a pool of their own of `[store] pool_size` connections.
async fn open_sql_users(
    cfg: &Config,
    pool: Option<facteur_auth::sql::Pool>,
) -> Result<(SqlUsers, Arc<SharedPenalties>), ServeError> {
    let pool = match pool {
        Some(p) => p,
        None => {
            let url = cfg.database_url().unwrap_or_default();
            facteur_store::postgres::connect_pool(url, cfg.store.pool_size)
                .await
                .map_err(AuthError::from)?
        }
    };
    let users = SqlUsers::open(pool.clone())
        .await?
        .with_verified_cache(cfg.auth.cache_ttl(), cfg.auth.cache_max_entries);
    let l = &cfg.limits;
    let penalties = SharedPenalties::open(
        pool,
        SharedPenaltiesConfig {
            base: l.failed_login_delay(),
            cap: l.max_failed_login_delay(),
            forget_after: l.failed_login_forget(),
            max_rows: cfg.auth.penalty_max_rows,
            clean_every: cfg.auth.penalty_clean_every(),
        },
    )
    .await?;
    tracing::info!("users and failed-login penalties in the database ([auth] backend = \"sql\")");
    Ok((users, Arc::new(penalties)))
}

/// The store `[store]` names. Runs inside the server's runtime: the PostgreSQL store drives its
/// database I/O on it (and checks the schema here, so a server never serves a schema it does not
/// know). `pool`: the pool the store shares with the SQL users, if it does.
pub async fn open_store(
    cfg: &StoreSection,
    pool: Option<facteur_auth::sql::Pool>,
) -> Result<Arc<dyn Store>, ServeError> {
    match cfg.backend {
        StoreBackend::Maildir if cfg.format == StoreFormat::Mbox => {
            Ok(Arc::new(MboxStore::new(cfg.mbox.clone())))
        }
        StoreBackend::Maildir => Ok(Arc::new(
            MaildirStore::new(cfg.maildir.clone())
                .with_uidl(cfg.uidl.into())
                .with_line_ends(cfg.line_ends.into()),
        )),
        #[cfg(feature = "postgres")]
        StoreBackend::Postgresql => {
            use facteur_store::postgres::{PgStore, PgStoreConfig};
            let config = PgStoreConfig {
                url: cfg.url.clone().unwrap_or_default(),
                pool_size: cfg.pool_size,
                lease: cfg.lease(),
                lease_commit: cfg.lease_commit.into(),
            };
            let store = match pool {
                Some(pool) => PgStore::with_pool(pool, &config).await?,
                None => PgStore::connect(&config).await?,
            };
            Ok(Arc::new(store))
        }
        #[cfg(not(feature = "postgres"))]
        StoreBackend::Postgresql => {
            drop(pool);
            Err(ServeError::NoPostgres)
        }
    }
}

/// Resolves at the first SIGTERM or SIGINT; the handlers are installed when this is called
/// (inside the runtime), not when the future is first polled.
fn shutdown_signals() -> Result<impl std::future::Future<Output = ()>, ServeError> {
    use tokio::signal::unix::{signal, SignalKind};
    let handler = |kind: SignalKind, name: &'static str| {
        signal(kind).map_err(|source| ServeError::Signal {
            signal: name,
            source,
        })
    };
    let mut term = handler(SignalKind::terminate(), "SIGTERM")?;
    let mut int = handler(SignalKind::interrupt(), "SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// The account of `[server] user` and `group`, checked against /etc/passwd and /etc/group.
pub fn run_as(cfg: &Config) -> Result<Option<Target>, ServeError> {
    Ok(cfg
        .server
        .user
        .as_deref()
        .map(|u| privileges::resolve(u, cfg.server.group.as_deref()))
        .transpose()?)
}

/// The TLS files were read as root; a SIGHUP reload reads them as `target`. Say now, not at the
/// next renewal, when that will fail (the reload then keeps the certificate it has).
fn warn_unreadable_tls(cfg: &Config, target: &Target) {
    let Some(t) = &cfg.tls else { return };
    for path in [&t.certificate, &t.private_key]
        .into_iter()
        .chain(t.client_ca.as_ref())
    {
        if let Err(e) = std::fs::File::open(path) {
            tracing::warn!(
                path = %path.display(),
                error = %e,
                "{target} cannot read this file: it was read at start, but a SIGHUP reload will \
                 fail and keep the old certificate; make it readable by that user or group \
                 (chgrp, chmod 640), or restart instead of reloading"
            );
        }
    }
}

/// Bind every listen address, with std sockets, before any runtime exists (binding may need
/// root, which is given up before the runtime's threads start). IPv6 sockets are IPv6-only so
/// that `0.0.0.0:110` and `[::]:110` can both be listed.
pub fn bind_all(addrs: &[SocketAddr]) -> Result<Vec<std::net::TcpListener>, ServeError> {
    addrs
        .iter()
        .map(|&address| bind(address).map_err(|source| ServeError::Listen { address, source }))
        .collect()
}

fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// The Unix socket paths of `[server] listen_lmtp`.
fn cfg_unix_paths(cfg: &Config) -> impl Iterator<Item = &std::path::Path> {
    cfg.server.listen_lmtp.iter().filter_map(|l| match l {
        LmtpListen::Unix(p) => Some(p.as_path()),
        LmtpListen::Tcp(_) => None,
    })
}

/// A bound LMTP listener, before the runtime exists.
pub enum BoundLmtp {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

/// Bind every LMTP listener of `[server] listen_lmtp` (as root if need be, before root is
/// given up): TCP as the POP3 listeners, Unix sockets with `[lmtp] socket_mode` and
/// `socket_group`.
pub fn bind_lmtp(cfg: &Config) -> Result<Vec<BoundLmtp>, ServeError> {
    let gid = cfg
        .lmtp
        .socket_group
        .as_deref()
        .map(crate::lmtp::socket_gid)
        .transpose()?;
    cfg.server
        .listen_lmtp
        .iter()
        .map(|l| match l {
            LmtpListen::Tcp(address) => {
                bind(*address)
                    .map(BoundLmtp::Tcp)
                    .map_err(|source| ServeError::Listen {
                        address: *address,
                        source,
                    })
            }
            LmtpListen::Unix(path) => Ok(BoundLmtp::Unix(crate::lmtp::bind_unix(
                path,
                cfg.lmtp.socket_mode,
                gid,
            )?)),
        })
        .collect()
}

fn lmtp_into_tokio(bound: Vec<BoundLmtp>) -> Result<Vec<crate::lmtp::LmtpListener>, ServeError> {
    bound
        .into_iter()
        .map(|b| {
            Ok(match b {
                BoundLmtp::Tcp(l) => {
                    l.set_nonblocking(true)?;
                    crate::lmtp::LmtpListener::Tcp(tokio::net::TcpListener::from_std(l)?)
                }
                BoundLmtp::Unix(l) => {
                    l.set_nonblocking(true)?;
                    crate::lmtp::LmtpListener::Unix(tokio::net::UnixListener::from_std(l)?)
                }
            })
        })
        .collect::<std::io::Result<_>>()
        .map_err(ServeError::Listener)
}

/// Hand listeners from [`bind_all`] to tokio (inside the runtime).
fn into_tokio(
    listeners: Vec<std::net::TcpListener>,
) -> Result<Vec<tokio::net::TcpListener>, ServeError> {
    listeners
        .into_iter()
        .map(|l| {
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l)
        })
        .collect::<std::io::Result<_>>()
        .map_err(ServeError::Listener)
}
