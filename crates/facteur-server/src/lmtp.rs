//! LMTP delivery (RFC 2033): the listeners of `[server] listen_lmtp` (TCP and Unix sockets) and
//! the connection driver that runs facteur-proto's [`LmtpSession`] over them.
//!
//! Each body is decoded as it arrives into a spool file (unlinked, in the temporary folder), so
//! memory stays bounded whatever the size; once the body is complete it is delivered from the
//! spool to each recipient's maildrop through [`Store::deliver_as`](facteur_store::Store), with a
//! `Return-Path:` and a `Delivered-To:` line in front. Each recipient's reply goes out only once
//! its copy is durable (the store syncs before it returns), and a failure of one maildrop is that
//! recipient's `451 4.3.0` alone.
//!
//! What this module must never do: wait on a peer without a deadline, hold a body in memory,
//! answer `250` for a copy that is not durable, or follow a link where the socket should be.

use std::future::Future;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use facteur_auth::{Account, FailureReason};
use facteur_proto::line::LineFramer;
use facteur_proto::lmtp::{
    Address, DataProgress, Delivery, LmtpConfig, LmtpSession, Reply, Step, Verdict, MAX_LMTP_LINE,
};
use facteur_store::{Lasting, Owner};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::config::LmtpSection;
use crate::Shared;

/// Octets read from the peer at a time: a block of a message body.
const READ_BLOCK: usize = 64 * 1024;

/// Decoded body octets gathered before they are written to the spool, in one trip to the
/// blocking pool: few trips per message, and at most this much held per connection.
const SPOOL_BLOCK: usize = 256 * 1024;

/// An LMTP listener, bound.
pub enum LmtpListener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Why an LMTP listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LmtpListenError {
    #[error("LMTP socket {}: {what}", path.display())]
    Refused { path: PathBuf, what: &'static str },
    #[error("LMTP socket {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Creates the Unix socket `path` with permissions `mode` (and group `gid`), before anything
/// can connect: the socket is bound, given its mode and group, and only then listens. A socket
/// left by an earlier run is removed first; anything else at the path (a link, a file, a
/// folder) is refused, never removed.
pub fn bind_unix(
    path: &Path,
    mode: u32,
    gid: Option<u32>,
) -> Result<std::os::unix::net::UnixListener, LmtpListenError> {
    let io = |source| LmtpListenError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(LmtpListenError::Refused {
                path: path.to_owned(),
                what: "is a symbolic link: refused",
            })
        }
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(io)?,
        Ok(_) => {
            return Err(LmtpListenError::Refused {
                path: path.to_owned(),
                what: "exists and is not a socket: refused (remove it if it is not needed)",
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    use socket2::{Domain, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(io)?;
    socket
        .bind(&SockAddr::unix(path).map_err(io)?)
        .map_err(io)?;
    let made = (|| {
        if let Some(gid) = gid {
            std::os::unix::fs::chown(path, None, Some(gid))?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        socket.listen(128)?;
        Ok(socket)
    })();
    match made {
        Ok(socket) => Ok(socket.into()),
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(io(e))
        }
    }
}

/// The gid of `[lmtp] socket_group`: a number, or a name from /etc/group.
pub fn socket_gid(group: &str) -> Result<u32, LmtpListenError> {
    let refused = |what| LmtpListenError::Refused {
        path: PathBuf::from("/etc/group"),
        what,
    };
    if !group.is_empty() && group.bytes().all(|b| b.is_ascii_digit()) {
        return group
            .parse()
            .map_err(|_| refused("[lmtp] socket_group: the gid is out of range"));
    }
    let text = std::fs::read_to_string("/etc/group").map_err(|source| LmtpListenError::Io {
        path: PathBuf::from("/etc/group"),
        source,
    })?;
    crate::privileges::parse_group(&text)
        .into_iter()
        .find(|e| e.name == group)
        .map(|e| e.gid)
        .ok_or_else(|| refused("has no group named as [lmtp] socket_group"))
}

/// Serve LMTP on `listeners` until `shutdown` completes; then stop accepting, give the
/// connections `shutdown_grace_secs` to end, and cut the rest (a message not yet answered is
/// not acknowledged, so the MTA sends it again).
pub async fn run_lmtp(
    shared: Arc<Shared>,
    listeners: Vec<LmtpListener>,
    shutdown: impl Future<Output = ()>,
) {
    let limits = &shared.config.limits;
    let slots = Arc::new(Semaphore::new(limits.max_lmtp_connections));
    let (cut_tx, cut_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let (stop_tx, _) = watch::channel(false);
    let mut accept_tasks = Vec::new();
    for listener in listeners {
        let shared = shared.clone();
        let slots = slots.clone();
        let cut = cut_rx.clone();
        let done = done_tx.clone();
        let mut stop = stop_tx.subscribe();
        accept_tasks.push(tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    r = accept(&listener) => r,
                    _ = stop.changed() => break,
                };
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "LMTP accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let permit = slots.clone().try_acquire_owned().ok();
                let shared = shared.clone();
                let cut = cut.clone();
                let done = done.clone();
                tokio::spawn(async move {
                    let _done = done;
                    let timeout = shared.config.limits.lmtp_timeout();
                    let mut stream = stream;
                    let Some(_permit) = permit else {
                        tracing::warn!(%peer, "LMTP connection refused: too many connections");
                        let mut out = Vec::new();
                        Reply::new(
                            421,
                            facteur_proto::lmtp::Enhanced(4, 3, 2),
                            "too many connections, try again later",
                        )
                        .encode(&mut out);
                        let _ = tokio::time::timeout(timeout, stream.write_all(&out)).await;
                        return;
                    };
                    let outcome = serve_connection(&shared, &mut stream, &peer, cut).await;
                    tracing::info!(%peer, end = %outcome, "LMTP session ended");
                });
            }
        }));
    }
    drop(done_tx);
    shutdown.await;
    let _ = stop_tx.send(true);
    for t in accept_tasks {
        let _ = t.await;
    }
    if tokio::time::timeout(limits.shutdown_grace(), done_rx.recv())
        .await
        .is_err()
    {
        let _ = cut_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), done_rx.recv()).await;
    }
}

/// A stream of either kind of listener.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

async fn accept(listener: &LmtpListener) -> std::io::Result<(Box<dyn Stream>, String)> {
    match listener {
        LmtpListener::Tcp(l) => {
            let (s, peer) = l.accept().await?;
            let _ = s.set_nodelay(true);
            Ok((Box::new(s), peer.to_string()))
        }
        LmtpListener::Unix(l) => {
            let (s, _) = l.accept().await?;
            Ok((Box::new(s), "unix".to_string()))
        }
    }
}

/// How a session ended, for its log line.
#[derive(Debug)]
enum End {
    Quit,
    ClientClosed,
    Timeout,
    Shutdown,
    TooManyErrors,
    Io(std::io::Error),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Quit => f.write_str("quit"),
            End::ClientClosed => f.write_str("client closed"),
            End::Timeout => f.write_str("timeout"),
            End::Shutdown => f.write_str("shutdown"),
            End::TooManyErrors => f.write_str("too many errors"),
            End::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

/// The connection's input: a buffer of what was read and not yet handled.
struct Input {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Input {
    fn pending(&self) -> &[u8] {
        self.buf.get(self.start..self.end).unwrap_or_default()
    }
    fn consume(&mut self, n: usize) {
        self.start = self.start.saturating_add(n).min(self.end);
    }
}

/// Everything one connection needs to talk.
struct Conn<'a> {
    stream: &'a mut Box<dyn Stream>,
    timeout: Duration,
    cut: watch::Receiver<bool>,
    out: Vec<u8>,
    input: Input,
}

impl Conn<'_> {
    async fn flush(&mut self) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(self.timeout, self.stream.write_all(&self.out)).await {
            Ok(Ok(())) => {
                self.out.clear();
                Ok(())
            }
            Ok(Err(e)) => Err(End::Io(e)),
            Err(_) => Err(End::Timeout),
        }
    }

    /// Sends what is queued, then reads more input (within the deadline).
    async fn fill(&mut self) -> Result<(), End> {
        self.flush().await?;
        if *self.cut.borrow() {
            return Err(End::Shutdown);
        }
        self.input.start = 0;
        self.input.end = 0;
        let read = tokio::select! {
            r = tokio::time::timeout(self.timeout, self.stream.read(&mut self.input.buf)) => r,
            _ = self.cut.changed() => return Err(End::Shutdown),
        };
        match read {
            Ok(Ok(0)) => Err(End::ClientClosed),
            Ok(Ok(n)) => {
                self.input.end = n;
                Ok(())
            }
            Ok(Err(e)) => Err(End::Io(e)),
            Err(_) => Err(End::Timeout),
        }
    }
}

async fn serve_connection(
    shared: &Arc<Shared>,
    stream: &mut Box<dyn Stream>,
    peer: &str,
    cut: watch::Receiver<bool>,
) -> End {
    let limits = &shared.config.limits;
    let mut session = LmtpSession::new(LmtpConfig {
        hostname: shared.hostname.clone(),
        max_message_size: limits.max_message_size,
        max_recipients: limits.max_lmtp_recipients,
        max_bad_commands: limits.max_bad_commands,
    });
    let mut conn = Conn {
        stream,
        timeout: limits.lmtp_timeout(),
        cut,
        out: Vec::new(),
        input: Input {
            buf: vec![0; READ_BLOCK],
            start: 0,
            end: 0,
        },
    };
    session.greeting().encode(&mut conn.out);
    match drive(shared, &mut session, &mut conn, peer).await {
        Ok(end) | Err(end) => end,
    }
}

async fn drive(
    shared: &Arc<Shared>,
    session: &mut LmtpSession,
    conn: &mut Conn<'_>,
    peer: &str,
) -> Result<End, End> {
    let mut framer = LineFramer::new(MAX_LMTP_LINE);
    // The accounts of the accepted recipients, in the session's order.
    let mut accounts: Vec<Account> = Vec::new();
    loop {
        if conn.input.pending().is_empty() {
            // Replies to pipelined commands go out together, once the input is used up.
            conn.fill().await?;
        }
        let (n, frame) = framer.push(conn.input.pending());
        conn.input.consume(n);
        let Some(frame) = frame else { continue };
        let step = session.command(frame);
        match step {
            Step::Reply(r) => r.encode(&mut conn.out),
            Step::Close(r) => {
                r.encode(&mut conn.out);
                conn.flush().await?;
                return Ok(if r.code == 221 {
                    End::Quit
                } else {
                    End::TooManyErrors
                });
            }
            Step::CheckRecipient(address) => {
                let (verdict, account) = check_recipient(shared, &address).await;
                if verdict == Verdict::TempFail {
                    tracing::warn!(%peer, recipient = %address, "LMTP: cannot look the recipient up now");
                }
                session.recipient_checked(verdict).encode(&mut conn.out);
                accounts.extend(account.filter(|_| verdict == Verdict::Accepted));
            }
            Step::ReceiveData(r) => {
                r.encode(&mut conn.out);
                conn.flush().await?;
                receive_and_deliver(shared, session, conn, &accounts, peer).await?;
            }
        }
        // RSET, LHLO, MAIL and the end of a transaction clear the session's recipients.
        accounts.truncate(session.recipients().len());
    }
}

/// The user name of a recipient, or why it is refused, by `[lmtp]`.
pub fn user_for(cfg: &LmtpSection, address: &Address) -> Result<String, Verdict> {
    let domain = address.domain.as_deref().map(str::to_ascii_lowercase);
    if let Some(d) = &domain {
        if !cfg.domains.is_empty() && !cfg.domains.iter().any(|a| a.eq_ignore_ascii_case(d)) {
            return Err(Verdict::OtherDomain);
        }
    }
    Ok(match (cfg.full_address, domain) {
        (true, Some(d)) => format!("{}@{d}", address.local),
        _ => address.local.clone(),
    })
}

async fn check_recipient(shared: &Arc<Shared>, address: &Address) -> (Verdict, Option<Account>) {
    let user = match user_for(&shared.config.lmtp, address) {
        Ok(u) => u,
        Err(v) => return (v, None),
    };
    let auth = shared.auth.clone();
    match tokio::task::spawn_blocking(move || auth.recipient(&user)).await {
        Ok(Ok(Some(account))) => (Verdict::Accepted, Some(account)),
        Ok(Ok(None)) => (Verdict::Unknown, None),
        Ok(Err(FailureReason::Unavailable)) | Ok(Err(_)) | Err(_) => (Verdict::TempFail, None),
    }
}

/// The spool file a body is written to, off the async threads, in blocks of [`SPOOL_BLOCK`].
/// Once a write fails the file is dropped and the rest of the body only read.
struct Spool {
    file: Option<std::fs::File>,
    pending: Vec<u8>,
}

impl Spool {
    fn new() -> Self {
        // If no spool can be made, the body is still read to its end (the protocol needs it),
        // and every recipient is told to try again later.
        let file = match tempfile::tempfile() {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::error!(error = %e, "LMTP: cannot create a spool file in the temporary folder");
                None
            }
        };
        Self {
            file,
            pending: Vec::new(),
        }
    }

    async fn write(&mut self, data: &[u8]) {
        if self.file.is_none() {
            return;
        }
        self.pending.extend_from_slice(data);
        if self.pending.len() >= SPOOL_BLOCK {
            self.flush().await;
        }
    }

    async fn flush(&mut self) {
        let Some(mut file) = self.file.take() else {
            return;
        };
        let mut pending = std::mem::take(&mut self.pending);
        let written = tokio::task::spawn_blocking(move || {
            let r = file.write_all(&pending);
            pending.clear();
            (file, pending, r)
        })
        .await;
        match written {
            Ok((file, pending, Ok(()))) => {
                self.file = Some(file);
                self.pending = pending;
            }
            Ok((_, _, Err(e))) => tracing::error!(error = %e, "LMTP: cannot write the spool file"),
            Err(e) => tracing::error!(error = %e, "LMTP: the spool write did not finish"),
        }
    }
}

/// Reads the body into a spool file, then delivers it to each recipient and queues one reply
/// per recipient.
async fn receive_and_deliver(
    shared: &Arc<Shared>,
    session: &mut LmtpSession,
    conn: &mut Conn<'_>,
    accounts: &[Account],
    peer: &str,
) -> Result<(), End> {
    let mut spool = Spool::new();
    let mut body = Vec::with_capacity(READ_BLOCK + 1);
    let mut replies = Vec::new();
    let size = loop {
        if conn.input.pending().is_empty() {
            conn.fill().await?;
        }
        body.clear();
        let (n, progress) = session.data(conn.input.pending(), &mut body, &mut replies);
        conn.input.consume(n);
        spool.write(&body).await;
        match progress {
            DataProgress::More => {}
            DataProgress::Refused => {
                tracing::info!(%peer, "LMTP: message refused, larger than max_message_size");
                for r in replies.drain(..) {
                    r.encode(&mut conn.out);
                }
                return Ok(());
            }
            DataProgress::Deliver { size } => break size,
        }
    };
    spool.flush().await;
    let sender = session
        .sender()
        .map(ToString::to_string)
        .unwrap_or_default();
    let recipients: Vec<(String, Account)> = session
        .recipients()
        .iter()
        .map(ToString::to_string)
        .zip(accounts.iter().cloned())
        .collect();
    let outcomes = match spool.file {
        None => vec![Delivery::TempFail; session.recipients().len()],
        Some(spool) => {
            let store = shared.store.clone();
            let metrics = shared.metrics.clone();
            let peer = peer.to_owned();
            let job = tokio::task::spawn_blocking(move || {
                deliver_all(&*store, &metrics, spool, &sender, &recipients, &peer, size)
            });
            job.await
                .unwrap_or_else(|_| vec![Delivery::TempFail; session.recipients().len()])
        }
    };
    for i in 0..session.recipients().len() {
        let outcome = outcomes.get(i).copied().unwrap_or(Delivery::TempFail);
        shared.metrics.delivery(
            "lmtp",
            match outcome {
                Delivery::Stored => "ok",
                Delivery::NoMailbox => "unknown_user",
                Delivery::TempFail => "temporary",
                Delivery::PermFail => "permanent",
            },
        );
        session.delivered(outcome).encode(&mut conn.out);
    }
    Ok(())
}

/// Delivers the spooled body to each recipient, in order; blocking.
fn deliver_all(
    store: &dyn facteur_store::Store,
    metrics: &crate::metrics::Metrics,
    mut spool: std::fs::File,
    sender: &str,
    recipients: &[(String, Account)],
    peer: &str,
    size: u64,
) -> Vec<Delivery> {
    recipients
        .iter()
        .map(|(address, account)| {
            let owner = match &account.owner {
                Ok(o) => *o,
                Err(e) => {
                    tracing::error!(user = %account.user, error = %e, "LMTP: not delivered");
                    return Delivery::TempFail;
                }
            };
            if let Err(e) = spool.rewind() {
                tracing::error!(error = %e, "LMTP: cannot read the spool file");
                return Delivery::TempFail;
            }
            let head = format!("Return-Path: <{sender}>\nDelivered-To: {address}\n");
            let mut message =
                Read::chain(std::io::Cursor::new(head), std::io::BufReader::new(&spool));
            let began = std::time::Instant::now();
            let delivered = deliver_one(
                store,
                &account.user,
                account.home.as_deref(),
                owner,
                &mut message,
                peer,
                size,
            );
            metrics.store_operation("deliver", began.elapsed());
            delivered
        })
        .collect()
}

fn deliver_one(
    store: &dyn facteur_store::Store,
    user: &str,
    home: Option<&str>,
    owner: Owner,
    message: &mut dyn Read,
    peer: &str,
    size: u64,
) -> Delivery {
    match store.deliver_as(user, home, owner, message) {
        Ok(d) => {
            tracing::info!(%peer, %user, size, path = %d.path.display(), "LMTP: delivered");
            Delivery::Stored
        }
        Err(e) => {
            let lasting = e.lasting();
            tracing::error!(%peer, %user, error = %e, ?lasting, "LMTP: not delivered");
            match lasting {
                Lasting::NoUser => Delivery::NoMailbox,
                // Permissions and configuration are the administrator's to fix: the MTA keeps
                // the message and tries again, rather than bounce it for a server fault.
                Lasting::Temporary | Lasting::NoPermission | Lasting::Config => Delivery::TempFail,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(local: &str, domain: Option<&str>) -> Address {
        Address {
            local: local.into(),
            domain: domain.map(Into::into),
        }
    }

    #[test]
    fn recipients_map_to_users() {
        let mut cfg = LmtpSection::default();
        assert_eq!(
            user_for(&cfg, &addr("Alice", Some("Example.ORG"))),
            Ok("Alice".into())
        );
        cfg.full_address = true;
        assert_eq!(
            user_for(&cfg, &addr("Alice", Some("Example.ORG"))),
            Ok("Alice@example.org".into())
        );
        assert_eq!(
            user_for(&cfg, &addr("postmaster", None)),
            Ok("postmaster".into())
        );
        cfg.domains = vec!["example.org".into()];
        assert_eq!(
            user_for(&cfg, &addr("a", Some("EXAMPLE.org"))),
            Ok("a@example.org".into())
        );
        assert_eq!(
            user_for(&cfg, &addr("a", Some("example.net"))),
            Err(Verdict::OtherDomain)
        );
    }

    #[test]
    fn the_socket_replaces_a_stale_socket_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lmtp");
        let l = bind_unix(&path, 0o600, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(l);
        // The socket left behind is replaced.
        let _l = bind_unix(&path, 0o660, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        // A link or a file is never removed.
        let link = dir.path().join("link");
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = bind_unix(&link, 0o660, None).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let e = bind_unix(&target, 0o660, None).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }
}
