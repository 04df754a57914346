//! # facteur-server: the POP3 server
//!
//! It drives facteur-proto's state machines over sockets and calls facteur-auth and
//! facteur-store for logins and maildrops: no POP3 rule is written here.
//!
//! One tokio task per connection. A global semaphore and a per-IP counter cap connections;
//! refused connections get one `-ERR [SYS/TEMP]` line, and are logged as [`log::RefusalLog`]
//! says: the first of a burst at once, the rest summed up. A connection from a load balancer
//! listed in `[server] proxy_protocol` is counted against the per-IP cap of the client its
//! PROXY header names, once the header is read ([`proxy`]). On shutdown the listeners stop at
//! once; sessions get `limits.shutdown_grace_secs` to finish, then are cut without their
//! deletions.
//!
//! ## Layout
//! - this file: [`Shared`] (what every connection shares) and the accept loops ([`run`],
//!   [`run_with_tls`]), the SIGHUP certificate reload.
//! - [`connection`]: the per-connection driver: deadlines, STLS, SASL, streaming, UPDATE.
//! - [`config`]: the configuration file, with every limit and default, its unit and its reason.
//! - [`lmtp`]: LMTP delivery (RFC 2033) on `[server] listen_lmtp`, TCP or Unix sockets: the
//!   driver of facteur-proto's LMTP session, the spool, delivery through the store.
//! - [`pop2`]: the POP2 (RFC 937) driver on `[server] listen_pop2`: the same store, lock,
//!   authentication, plaintext policy, caps and PROXY handling as POP3, through facteur-proto's
//!   POP2 session.
//! - [`serve`]: the whole of `facteur serve` from a loaded configuration: bind, give up root,
//!   start the runtime, handle signals.
//! - [`proxy`]: connections from a trusted load balancer: the PROXY header read first, then the
//!   session served as the client it names.
//! - [`https`]: the small HTTPS client that fetches the OAuth issuers' key sets and asks their
//!   introspection endpoints; [`oauth_issuers`] makes `[[oauth.issuer]]` facteur-auth's
//!   [`facteur_auth::oauth::OAuth`].
//! - [`privileges`]: giving up root on the one thread there is; refusing to serve as root.
//! - `limits` (the per-source cap), `auth_pool` (the threads that check passwords), [`log`]
//!   (login lines, refusal summaries), [`rlimit`] (the open-file limit), [`transport`] (plain or
//!   TLS, one type).
//!
//! ## What this crate must never do
//! - wait on a peer without a deadline, or let one session hold a lock, a thread or memory that
//!   grows with what the peer sends;
//! - apply a deletion outside a committed UPDATE, or answer `+OK` to QUIT before it is durable;
//! - accept a password in clear on a connection the policy says must be protected;
//! - panic on anything a client sends.

/// The size of the future an async fn returns, without calling it: `future_size!(f; A, B)`
/// for a function of two arguments. Defined before the modules so that their tests see it.
#[cfg(test)]
macro_rules! future_size {
    ($f:expr; $($arg:ident),*) => {{
        fn size<F, $($arg,)* Fut>(_: &F) -> usize
        where
            F: FnOnce($($arg),*) -> Fut,
        {
            std::mem::size_of::<Fut>()
        }
        size(&$f)
    }};
}

mod auth_pool;
pub mod config;
pub mod connection;
pub mod https;
mod limits;
pub mod lmtp;
pub mod log;
pub mod metrics;
pub mod pop2;
pub mod privileges;
pub mod proxy;
pub mod rlimit;
pub mod serve;
pub mod transport;

use crate::config::{Config, PlaintextAuth};
use facteur_auth::Authenticator;
use facteur_proto::server::ServerConfig;
use facteur_store::Store;
use facteur_tls::TlsState;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};

pub use limits::PerIpLimiter;

/// Everything a connection needs, shared by all of them.
pub struct Shared {
    pub config: Config,
    pub auth: Arc<dyn Authenticator>,
    pub store: Arc<dyn Store>,
    /// The host name for APOP timestamps.
    pub hostname: String,
    /// The threads that check passwords (`limits.max_concurrent_logins` of them).
    pub auth_pool: auth_pool::AuthPool,
    /// Failed-login delays per source and user name: in this process, or shared by the nodes
    /// in the database (`[auth] backend = "sql"`).
    pub penalties: facteur_auth::penalty::FailedLogins,
    /// The certificate for STLS and POP3S, if configured.
    pub tls: Option<TlsState>,
    /// What the server counts (`[metrics]` serves it; counted whether or not it is served).
    pub metrics: Arc<metrics::Metrics>,
    /// The issuers whose bearer tokens are accepted (`[[oauth.issuer]]`): OAUTHBEARER and
    /// XOAUTH2 are offered only with them.
    pub oauth: Option<Arc<facteur_auth::oauth::OAuth>>,
    /// What every session's settings share, made for the first session that needs it (the
    /// fields above are set by then): CAPA's IMPLEMENTATION and the greeting,
    texts: OnceLock<(Arc<str>, Option<Arc<str>>)>,
    /// and the SASL mechanisms offered, by (TLS, plaintext allowed, client certificate).
    offers: [OnceLock<Arc<[String]>>; 8],
}

/// `[oauth]`'s issuers as facteur-auth judges them, with the HTTPS client their URLs need;
/// `None` without any. Reads the client secrets, and the key files (so that a bad one is told
/// at start, not at a login).
pub fn oauth_issuers(
    section: &config::OAuthSection,
) -> Result<Option<Arc<facteur_auth::oauth::OAuth>>, String> {
    use facteur_auth::oauth::{HttpsClient, Issuer, OAuth, Verification};
    use std::io::Read as _;
    use std::time::Duration;
    if section.issuer.is_empty() {
        return Ok(None);
    }
    let mut issuers = Vec::new();
    let mut needs_https = false;
    for i in &section.issuer {
        let verification = if let Some(path) = &i.jwks_file {
            Verification::JwksFile(path.clone())
        } else if let Some(url) = &i.jwks_url {
            needs_https = true;
            Verification::JwksUrl(url.clone())
        } else {
            needs_https = true;
            let url = i.introspection_url.clone().unwrap_or_default();
            let path = i.client_secret_file.clone().unwrap_or_default();
            let mut text = String::new();
            std::fs::File::open(&path)
                .and_then(|f| f.take(4096).read_to_string(&mut text))
                .map_err(|e| {
                    format!(
                        "[[oauth.issuer]] client_secret_file {}: {e}",
                        path.display()
                    )
                })?;
            let secret = text.lines().next().unwrap_or_default().trim().to_string();
            text.clear();
            if secret.is_empty() {
                return Err(format!(
                    "[[oauth.issuer]] client_secret_file {}: the first line is empty",
                    path.display()
                ));
            }
            Verification::Introspection {
                url,
                client_id: i.client_id.clone().unwrap_or_default(),
                client_secret: facteur_proto::Secret::new(secret),
            }
        };
        issuers.push(Issuer {
            issuer: i.issuer.clone(),
            audience: i.audience.clone(),
            verification,
            user_claim: i.user_claim.clone(),
            leeway: Duration::from_secs(i.leeway_secs),
            refresh: Duration::from_secs(i.jwks_refresh_secs),
            introspection_cache: Duration::from_secs(i.introspection_cache_secs),
        });
    }
    let https = if needs_https {
        let client = https::Https::new(
            section.ca_file.as_deref(),
            Duration::from_secs(section.http_timeout_secs),
        )
        .map_err(|e| format!("[oauth] ca_file: {e}"))?;
        Some(Arc::new(client) as Arc<dyn HttpsClient>)
    } else {
        None
    };
    let oauth = OAuth::new(issuers, https);
    oauth
        .load_key_files()
        .map_err(|e| format!("[[oauth.issuer]] jwks_file {e}"))?;
    Ok(Some(Arc::new(oauth)))
}

impl Shared {
    pub fn new(config: Config, auth: Arc<dyn Authenticator>, store: Arc<dyn Store>) -> Self {
        let l = &config.limits;
        Self {
            hostname: config.hostname(),
            auth_pool: auth_pool::AuthPool::new(l.max_concurrent_logins),
            penalties: facteur_auth::penalty::FailedLogins::Local(
                facteur_auth::penalty::Penalties::new(
                    l.failed_login_delay(),
                    l.max_failed_login_delay(),
                    l.failed_login_forget(),
                ),
            ),
            tls: None,
            metrics: Arc::new(metrics::Metrics::new()),
            oauth: None,
            texts: OnceLock::new(),
            offers: Default::default(),
            config,
            auth,
            store,
        }
    }

    /// Count failed logins with `penalties` instead of this process's own table.
    pub fn with_failed_logins(mut self, penalties: facteur_auth::penalty::FailedLogins) -> Self {
        self.penalties = penalties;
        self
    }

    /// Accept the bearer tokens of these issuers (SASL OAUTHBEARER and XOAUTH2).
    pub fn with_oauth(mut self, oauth: Option<Arc<facteur_auth::oauth::OAuth>>) -> Self {
        self.oauth = oauth;
        self
    }

    /// Add the TLS state (needed for STLS and POP3S listeners).
    pub fn with_tls(mut self, tls: TlsState) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Whether `ip` is a load balancer trusted to send a PROXY header (`[server]
    /// proxy_protocol`); its connections must start with one.
    pub fn trusts_proxy(&self, ip: std::net::IpAddr) -> bool {
        self.config
            .server
            .proxy_protocol
            .iter()
            .any(|block| block.contains(ip))
    }

    /// Whether passwords may be sent on this connection (the plaintext policy). `peer` is the
    /// client (behind a trusted proxy, the one its header names): `loopback` allows clear text
    /// only when the client itself is on this host, so a remote client relayed by a proxy on
    /// this host is not.
    pub fn plaintext_allowed(&self, tls: bool, peer: &SocketAddr) -> bool {
        tls || match self.config.auth.plaintext_auth {
            PlaintextAuth::Always => true,
            PlaintextAuth::Loopback => peer.ip().to_canonical().is_loopback(),
            PlaintextAuth::Never => false,
        }
    }

    /// The SASL mechanisms to offer on a connection in this state.
    pub fn sasl_mechanisms(
        &self,
        tls: bool,
        peer: &SocketAddr,
        client_cert: bool,
    ) -> Arc<[String]> {
        let plaintext = self.plaintext_allowed(tls, peer);
        let slot = usize::from(tls) | usize::from(plaintext) << 1 | usize::from(client_cert) << 2;
        self.offers[slot]
            .get_or_init(|| self.offered_mechanisms(tls, plaintext, client_cert).into())
            .clone()
    }

    fn offered_mechanisms(&self, tls: bool, plaintext: bool, client_cert: bool) -> Vec<String> {
        let mut offered: Vec<String> = self
            .config
            .auth
            .sasl_mechanisms()
            .into_iter()
            .filter(|m| match m.as_str() {
                "PLAIN" | "LOGIN" => plaintext,
                "EXTERNAL" => tls && client_cert,
                _ => true,
            })
            .collect();
        // A bearer token is as good as a password to whoever reads it: where PLAIN would be.
        if self.oauth.is_some() && plaintext {
            offered.extend(["OAUTHBEARER".to_string(), "XOAUTH2".to_string()]);
        }
        offered
    }

    /// The protocol settings of a new connection.
    pub fn session_config(
        &self,
        apop_timestamp: Option<String>,
        tls: bool,
        peer: &SocketAddr,
        client_cert: bool,
    ) -> ServerConfig {
        let (implementation, greeting) = self.texts.get_or_init(|| {
            (
                Arc::from(format!("facteur {}", env!("CARGO_PKG_VERSION"))),
                self.config.server.greeting.as_deref().map(Arc::from),
            )
        });
        ServerConfig {
            implementation: implementation.clone(),
            greeting: greeting.clone(),
            language: self.config.server.default_language(),
            apop_timestamp,
            user_pass_allowed: self.plaintext_allowed(tls, peer),
            stls_available: !tls && self.tls.is_some(),
            sasl_mechanisms: self.sasl_mechanisms(tls, peer, client_cert),
            enable_last: self.config.server.enable_last,
            max_bad_commands: self.config.limits.max_bad_commands,
            max_auth_attempts: self.config.limits.max_auth_attempts,
            policy: self.config.policy.policy(),
            policy_per_user: self.auth.policy_per_user(),
        }
    }
}

/// What tells sessions about shutdown: `false` while serving, `true` once the grace period is
/// over and sessions must close now.
pub type CutSignal = watch::Receiver<bool>;

/// Serve plain POP3 on `listeners` until `shutdown` completes (see [`run_with_tls`]).
pub async fn run(
    shared: Arc<Shared>,
    listeners: Vec<TcpListener>,
    shutdown: impl Future<Output = ()>,
) {
    run_with_tls(shared, listeners, Vec::new(), shutdown).await
}

/// What a session holds until it ends: its place among the server's connections and among its
/// address's, and a sender whose drop tells a stopping server that the session is over.
pub struct Slots {
    _done: mpsc::Sender<()>,
    _permit: tokio::sync::OwnedSemaphorePermit,
    _ip: limits::IpGuard,
}

/// What a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// POP3 in clear, with STLS when TLS is set up.
    Pop3,
    /// POP3S: implicit TLS (RFC 8314).
    Pop3s,
    /// POP2 (RFC 937), `[server] listen_pop2`: no TLS.
    Pop2,
}

impl Protocol {
    /// Say why a connection is refused, in this protocol's words, and close it.
    /// POP2 has no LANG: its refusal is in the server's default language too.
    pub(crate) async fn refuse(
        self,
        stream: tokio::net::TcpStream,
        why: facteur_proto::text::Msg,
        lang: facteur_proto::Lang,
    ) {
        match self {
            Protocol::Pop2 => {
                let text = lang.render(why, &[]).to_string();
                pop2::refuse(stream, &text).await
            }
            Protocol::Pop3 | Protocol::Pop3s => connection::refuse(stream, why, lang).await,
        }
    }

    /// Serve one connection of this protocol, in a task of its own, until it ends. The task
    /// is made for the session, with nothing around it: an idle session's memory is its
    /// task's size.
    pub(crate) fn start(
        self,
        shared: Arc<Shared>,
        stream: tokio::net::TcpStream,
        peer: connection::Peer,
        cut: CutSignal,
        accepted: tokio::time::Instant,
        slots: Slots,
    ) {
        match self {
            Protocol::Pop2 => {
                tokio::spawn(pop2::serve(shared, stream, peer, cut, accepted, slots));
            }
            Protocol::Pop3 => connection::start(shared, stream, peer, false, cut, accepted, slots),
            Protocol::Pop3s => connection::start(shared, stream, peer, true, cut, accepted, slots),
        }
    }
}

/// Serve plain POP3 (with STLS when TLS is set up) on `plain` and POP3S on `implicit_tls`
/// until `shutdown` completes, then drain sessions for the grace period.
pub async fn run_with_tls(
    shared: Arc<Shared>,
    plain: Vec<TcpListener>,
    implicit_tls: Vec<TcpListener>,
    shutdown: impl Future<Output = ()>,
) {
    let listeners = plain
        .into_iter()
        .map(|l| (l, Protocol::Pop3))
        .chain(implicit_tls.into_iter().map(|l| (l, Protocol::Pop3s)))
        .collect();
    run_listeners(shared, listeners, shutdown).await
}

/// Serve each listener in the protocol it is paired with until `shutdown` completes, then
/// drain sessions for the grace period. Every listener shares one connection cap, one
/// per-address cap and one shutdown: a POP2 session counts as a POP3 one does.
pub async fn run_listeners(
    shared: Arc<Shared>,
    listeners: Vec<(TcpListener, Protocol)>,
    shutdown: impl Future<Output = ()>,
) {
    let limits = &shared.config.limits;
    let global = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip = Arc::new(PerIpLimiter::new(limits.max_connections_per_ip));
    let refusals = log::RefusalLog::new(std::time::Duration::from_secs(
        shared.config.log.refusal_summary_secs,
    ));
    let (cut_tx, cut_rx) = watch::channel(false);
    // Each session holds a clone of `done_tx`; `done_rx.recv()` returns None once all are gone.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);

    let (stop_tx, _) = watch::channel(false);
    let mut accept_tasks = Vec::new();
    for (listener, protocol) in listeners {
        // Once here rather than at each accepted connection, which inherits them.
        connection::tune_socket(socket2::SockRef::from(&listener), limits.write_timeout());
        let shared = shared.clone();
        let global = global.clone();
        let per_ip = per_ip.clone();
        let refusals = refusals.clone();
        let cut_rx = cut_rx.clone();
        let done_tx = done_tx.clone();
        let mut stop = stop_tx.subscribe();
        accept_tasks.push(tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    r = listener.accept() => r,
                    _ = stop.changed() => break,
                };
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: wait a little instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let accepted = tokio::time::Instant::now();
                let permit = global.clone().try_acquire_owned().ok();
                let shared = shared.clone();
                let cut = cut_rx.clone();
                let done = done_tx.clone();
                let permit = match permit {
                    Some(permit) if shared.trusts_proxy(peer.ip()) => {
                        // A trusted load balancer: the per-address cap is for the client its
                        // header names, read by the session's task.
                        let per_ip = per_ip.clone();
                        let refusals = refusals.clone();
                        tokio::spawn(proxy::serve_relayed(
                            shared, stream, peer, protocol, cut, per_ip, refusals, done, permit,
                        ));
                        continue;
                    }
                    permit => permit,
                };
                let ip_guard = per_ip.try_acquire(peer.ip());
                let (permit, ip_guard) = match (permit, ip_guard) {
                    (Some(permit), Some(ip_guard)) => (permit, ip_guard),
                    (permit, ip_guard) => {
                        let refusal = if permit.is_none() {
                            log::Refusal::ServerFull
                        } else {
                            log::Refusal::AddressFull(peer.ip())
                        };
                        refusals.refused(connection::Peer::direct(peer), refusal);
                        let language = shared.config.server.default_language();
                        shared.metrics.refused(match refusal {
                            log::Refusal::ServerFull => "server_full",
                            log::Refusal::AddressFull(_) => "address_full",
                        });
                        tokio::spawn(async move {
                            // Held while the answer goes out, as a session's would be.
                            let _held = (done, permit, ip_guard);
                            protocol.refuse(stream, refusal.answer(), language).await;
                        });
                        continue;
                    }
                };
                let slots = Slots {
                    _done: done,
                    _permit: permit,
                    _ip: ip_guard,
                };
                let peer = connection::Peer::direct(peer);
                protocol.start(shared, stream, peer, cut, accepted, slots);
            }
        }));
    }
    drop(done_tx);

    shutdown.await;
    tracing::info!(
        "shutting down: no new connections; sessions get {:?} to finish",
        limits.shutdown_grace()
    );
    let _ = stop_tx.send(true);
    for t in accept_tasks {
        let _ = t.await;
    }
    // No refusal comes after this: what is counted goes to the log now.
    refusals.flush();
    if tokio::time::timeout(limits.shutdown_grace(), done_rx.recv())
        .await
        .is_err()
    {
        tracing::info!("grace period over: closing the remaining sessions");
        let _ = cut_tx.send(true);
        // Sessions close within one write; a stuck peer is given a few more seconds at most.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), done_rx.recv()).await;
    }
    // `facteur serve` logs "stopped" once the process is about to exit.
    tracing::info!("all sessions closed");
}

/// Reload the TLS certificate on every SIGHUP, for as long as the process runs.
pub fn reload_tls_on_sighup(shared: Arc<Shared>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: the certificate will not be reloaded");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if let Some(tls) = &shared.tls {
                match tls.reload() {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: TLS certificate NOT reloaded, keeping the old one")
                    }
                }
            }
        }
    });
}

/// Resolve when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod task_size {
    use super::*;

    /// A session's task is allocated for as long as the session lives, idle or not: its size is
    /// that of the largest state it can wait in. The rare big ones (a TLS handshake, a login, a
    /// RETR, a SASL exchange, the UPDATE) are boxed, so an idle session pays for none of them.
    /// A POP3 session's task is measured in `connection`'s tests; here, POP2's, and the tasks
    /// that come before a session's: a PROXY header's, a POP3S handshake's.
    #[test]
    fn an_idle_session_task_stays_small() {
        let sizes = [
            ("POP2", future_size!(pop2::serve; A, B, C, D, E, G)),
            (
                "relayed",
                future_size!(proxy::serve_relayed; A, B, C, D, E, G, H, I, J),
            ),
            ("handshake", connection::handshake_future_size()),
        ];
        eprintln!("session futures, in bytes: {sizes:?}");
        for (what, size) in sizes {
            let most = 2048;
            assert!(size <= most, "a {what} session's future is {size} bytes");
        }
    }
}
