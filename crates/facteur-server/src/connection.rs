//! The driver of one POP3 connection: it moves bytes between the socket and the sans-I/O
//! `ServerSession`, and does the work the session asks for (authentication, streaming a
//! message, UPDATE) off the async threads.
//!
//! It must never: run a command before the previous one is answered (pipelining keeps order),
//! hold a whole message in memory, apply deletions without a committed QUIT, keep any byte
//! received before a TLS handshake, or wait on the peer without a deadline.
//!
//! ## Deadlines
//! - Before login, one deadline from the accept (`limits.login_timeout_secs`) covers the PROXY
//!   header of a trusted load balancer (see [`crate::proxy`]), the TLS handshake, STLS and every
//!   read: bytes trickled in do not extend it.
//! - After login, each read waits at most `limits.idle_timeout_secs` (RFC 1939's autologout).
//! - Each write waits at most `limits.write_timeout_secs` for the peer to read, and no longer
//!   than the server's shutdown cut. A session cut that way ends without UPDATE, and its
//!   maildrop lock is released before anything else is tried on the socket.
//! - TCP keepalive and TCP_USER_TIMEOUT find peers that vanished without a word.
//!
//! ## Logs
//! Every line names the client as `peer` (behind a trusted load balancer, the client its PROXY
//! header names) and, for such a connection only, the balancer as `proxy`.
//! One `login` line per login attempt that named a user: peer, user (escaped and cut, see
//! [`super::log::Sanitized`]), method, outcome, and for a failure the reason and the delay
//! applied. The reason is the administrator's only: the client's answer is the same for all.
//! One `session ended` line per session.

use super::log::Sanitized;
use super::transport::Transport;
use super::{CutSignal, Shared, Slots};
use crate::config::defaults;
use crate::metrics::Metrics;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use facteur_auth::{
    BearerErrorInfo, Checked, FailureReason, Mechanism, Nonces, SaslContext, SaslExchange,
    SaslOutcome, SaslStep, ServerVerifier, MAX_SASL_LINE,
};
use facteur_proto::dot::DotEncoder;
use facteur_proto::line::{Frame, LineFramer};
use facteur_proto::policy::{Expire, Policy};
use facteur_proto::response::{self, Code};
use facteur_proto::server::{AuthResult, Event, ServerSession, State};
use facteur_proto::{Lang, Msg, Secret};
use facteur_store::{Maildrop, Store, StoreError};
use facteur_tls as tls;
use std::future::Future;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Say why a connection is refused (in the server's default language: no LANG could be sent
/// yet), and close it.
pub async fn refuse(mut stream: TcpStream, why: Msg, lang: Lang) {
    let mut out = Vec::new();
    response::err(&mut out, Some(Code::SysTemp), lang.render(why, &[]));
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), stream.write_all(&out)).await;
}

/// Fresh nonces for a SASL exchange (the CRAM-MD5 challenge, the SCRAM server nonce), or none
/// if the operating system gives no random bytes: the exchange then fails rather than send a
/// guessable challenge (`FailureReason::NoRandomness`), and this says why in the log.
fn sasl_nonces() -> Option<Nonces> {
    let mut random = [0u8; Nonces::RANDOM_LEN];
    if let Err(error) = getrandom::fill(&mut random) {
        tracing::error!(%error, "cannot get random bytes for a SASL challenge");
        return None;
    }
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Some(Nonces::new(random, seconds))
}

/// Hands as much of `out` to the kernel as it takes at once, with `MSG_MORE`: held back until
/// the next send without it, the shutdown, or the close. What was taken leaves `out`; nothing
/// is taken when the socket is not ready. Never waits.
fn offer_held(tcp: &TcpStream, out: &mut Vec<u8>) {
    if out.is_empty() {
        return;
    }
    let sent = tcp.try_io(tokio::io::Interest::WRITABLE, || {
        rustix::net::send(tcp, out, rustix::net::SendFlags::MORE).map_err(std::io::Error::from)
    });
    if let Ok(n) = sent {
        out.drain(..n.min(out.len()));
    }
}

/// How a session ended, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Quit,
    ClientClosed,
    /// Idle for too long after login (RFC 1939's autologout timer).
    Timeout,
    /// Not logged in by the login deadline.
    LoginTimeout,
    /// The client did not read what was sent to it within the write deadline.
    WriteTimeout,
    Shutdown,
    TooManyErrors,
    TooManyFailedLogins,
    TlsHandshakeFailed,
    IoError,
}

impl End {
    /// The `end` label of `facteur_sessions_ended_total`.
    fn name(self) -> &'static str {
        match self {
            End::Quit => "quit",
            End::ClientClosed => "client_closed",
            End::Timeout => "idle_timeout",
            End::LoginTimeout => "login_timeout",
            End::WriteTimeout => "write_timeout",
            End::Shutdown => "shutdown",
            End::TooManyErrors => "too_many_errors",
            End::TooManyFailedLogins => "too_many_failed_logins",
            End::TlsHandshakeFailed => "tls_handshake_failed",
            End::IoError => "io_error",
        }
    }
}

/// What one session did, logged once at its end.
#[derive(Default)]
struct Tally {
    retrieved: u64,
    retrieved_octets: u64,
    /// Of the messages retrieved, those that went out by `sendfile`.
    retrieved_by_sendfile: u64,
    /// RETRs that sent the file as it was stored, its own wire form: by `sendfile`, or
    /// through TLS with no dot-stuffing pass.
    retrieved_as_stored: u64,
    deleted: usize,
}

/// Who is at the other end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The client: the TCP peer, or the client a trusted proxy's PROXY header names. Caps,
    /// penalties, the plaintext policy and the logs are about this address.
    pub client: SocketAddr,
    /// The trusted proxy the connection came through (`[server] proxy_protocol`), if any.
    pub proxy: Option<SocketAddr>,
}

impl Peer {
    /// A client connected directly.
    pub fn direct(client: SocketAddr) -> Self {
        Self {
            client,
            proxy: None,
        }
    }
}

/// Serve one connection, in a task of its own, until it ends; `implicit_tls` for a POP3S
/// listener (RFC 8314). `accepted` is when the connection was accepted: the login deadline
/// counts from it. A POP3S handshake runs in a task of its own first, which then starts the
/// session's: the session's task holds the session and nothing else, for as long as it lives.
pub(crate) fn start(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: Peer,
    implicit_tls: bool,
    cut: CutSignal,
    accepted: tokio::time::Instant,
    slots: Slots,
) {
    // TCP_NODELAY, keepalive and TCP_USER_TIMEOUT come from the listening socket
    // (`tune_socket`): six system calls fewer per session.
    let started = Instant::now();
    let login_deadline = accepted + shared.config.limits.login_timeout();
    shared.metrics.session_started();
    if implicit_tls {
        tokio::spawn(handshake(
            shared,
            stream,
            peer,
            cut,
            (started, login_deadline),
            slots,
        ));
    } else {
        let start = Start {
            peer,
            cut,
            started,
            login_deadline,
            slots,
        };
        tokio::spawn(Connection::new(shared, Transport::Plain(stream), start).serve());
    }
}

/// The POP3S handshake, then the session in a new task. `times`: when the session started,
/// and its login deadline.
async fn handshake(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: Peer,
    cut: CutSignal,
    times: (Instant, tokio::time::Instant),
    slots: Slots,
) {
    let (started, login_deadline) = times;
    let client = peer.client;
    let proxy = peer.proxy.map(tracing::field::display);
    let metrics = &shared.metrics;
    let Some(tls) = &shared.tls else {
        metrics.session_ended(End::IoError.name(), started.elapsed());
        return;
    };
    // Boxed: only the handshake needs its room. The greeting is written at once: the session
    // ticket goes out with it.
    let handshake = Box::pin(facteur_tls::stream::accept_then_write(tls.config(), stream));
    let stream = match tokio::time::timeout_at(login_deadline, handshake).await {
        Ok(Ok(s)) => {
            metrics.tls_handshake("pop3s", true);
            warn_key_log(tls, &client);
            s
        }
        Ok(Err(e)) => {
            metrics.tls_handshake("pop3s", false);
            metrics.session_ended(End::TlsHandshakeFailed.name(), started.elapsed());
            tracing::info!(peer = %client, proxy, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            metrics.tls_handshake("pop3s", false);
            metrics.session_ended(End::LoginTimeout.name(), started.elapsed());
            tracing::info!(peer = %client, proxy, "TLS handshake timed out");
            return;
        }
    };
    let start = Start {
        peer,
        cut,
        started,
        login_deadline,
        slots,
    };
    tokio::spawn(Connection::new(shared, Transport::Tls(stream), start).serve());
}

/// The size of [`handshake`]'s future, for the tests of the crate's tasks.
#[cfg(test)]
pub(crate) fn handshake_future_size() -> usize {
    future_size!(handshake; A, B, C, D, E, G)
}

/// What a session starts with, besides the server and the stream.
struct Start {
    peer: Peer,
    cut: CutSignal,
    started: Instant,
    login_deadline: tokio::time::Instant,
    slots: Slots,
}

struct Connection {
    shared: Arc<Shared>,
    /// When the connection was accepted, for the session's duration.
    started: Instant,
    /// Held until the session ends (see [`Slots`]).
    _slots: Slots,
    stream: Transport,
    /// The client (see [`Peer::client`]).
    peer: SocketAddr,
    /// The trusted proxy it came through, for the logs.
    via: Option<SocketAddr>,
    cut: CutSignal,
    /// The end of the AUTHORIZATION state's time, counted from the accept.
    login_deadline: tokio::time::Instant,
    session: ServerSession,
    framer: LineFramer,
    /// Bytes read but not yet framed: `rbuf[rpos..rend]`.
    rbuf: Box<[u8]>,
    rpos: usize,
    rend: usize,
    out: Vec<u8>,
    maildrop: Option<Box<dyn Maildrop>>,
    tally: Tally,
    /// Failed logins in this connection, against `limits.max_failed_logins`.
    failed_logins: u32,
}

enum Step {
    Continue,
    /// Handle this event next (the session answered a deferred command with it); the `usize` is
    /// the length of the output before that answer.
    Then(Event, usize),
    End(End),
}

impl Connection {
    fn new(shared: Arc<Shared>, stream: Transport, start: Start) -> Self {
        let Start {
            peer,
            cut,
            started,
            login_deadline,
            slots,
        } = start;
        let apop_timestamp = (shared.config.auth.apop && shared.auth.apop_possible())
            .then(|| apop_timestamp(&shared.hostname));
        let session = ServerSession::new(shared.session_config(
            apop_timestamp,
            stream.is_tls(),
            &peer.client,
            stream.client_certificate().is_some(),
        ));
        // See `command_line_max`.
        let command_line_max = if shared.oauth.is_some() {
            facteur_proto::server::MAX_AUTH_LINE
        } else {
            defaults::MAX_COMMAND_LINE
        };
        Self {
            shared,
            started,
            _slots: slots,
            stream,
            peer: peer.client,
            via: peer.proxy,
            cut,
            login_deadline,
            session,
            framer: LineFramer::new(command_line_max),
            rbuf: vec![0u8; defaults::READ_BUFFER].into_boxed_slice(),
            rpos: 0,
            rend: 0,
            out: Vec::new(),
            maildrop: None,
            tally: Tally::default(),
            failed_logins: 0,
        }
    }

    /// Serve the session until it ends: the task of a session is this future. Not an `async
    /// fn`: that would copy `self` into its body and keep both, one of them dead, for the
    /// whole session; the `async move` block works on the one it captured.
    #[allow(clippy::manual_async_fn)] // reason: an `async fn` would hold `self` twice (above).
    fn serve(mut self) -> impl Future<Output = ()> + Send {
        async move {
            let end = self.run().await;
            // Whatever happens on the socket from here, the maildrop is unlocked now (without
            // UPDATE, unless QUIT already applied it).
            self.maildrop = None;
            // A TLS session ends with close_notify, so the client can tell a complete answer from
            // a truncated one; a plain one with a FIN. A peer that stopped reading gets a second.
            let grace = match end {
                End::WriteTimeout | End::Shutdown | End::IoError => Duration::from_secs(1),
                _ => Duration::from_secs(5),
            };
            let _ = tokio::time::timeout(grace, self.stream.shutdown()).await;
            let t = &self.tally;
            let metrics = &self.shared.metrics;
            metrics.retrieved(t.retrieved, t.retrieved_octets);
            metrics.deleted(t.deleted as u64);
            metrics.session_ended(end.name(), self.started.elapsed());
            tracing::info!(
                peer = %self.peer,
                proxy = self.proxy(),
                user = self.session.user().unwrap_or("-"),
                retrieved = t.retrieved,
                retrieved_octets = t.retrieved_octets,
                retrieved_by_sendfile = t.retrieved_by_sendfile,
                retrieved_as_stored = t.retrieved_as_stored,
                deleted = t.deleted,
                tls = self.stream.tls_summary().as_deref().unwrap_or("none"),
                duration_ms = self.started.elapsed().as_millis() as u64,
                end = ?end,
                "session ended"
            );
        }
    }

    /// The proxy's address as a log field (absent from the line when there is none).
    fn proxy(&self) -> Option<tracing::field::DisplayValue<SocketAddr>> {
        self.via.map(tracing::field::display)
    }

    async fn run(&mut self) -> End {
        self.session.greeting(&mut self.out);
        if let Err(end) = self.flush().await {
            return end;
        }
        loop {
            // Answer every complete command already received, in order.
            while self.rpos < self.rend {
                let (used, frame) = self.framer.push(&self.rbuf[self.rpos..self.rend]);
                self.rpos += used;
                if self.rpos == self.rend {
                    // Every byte read is taken: the read buffer goes now rather than at the
                    // next read, so that a command that waits (a login queued for its password
                    // check, behind a thousand others) does not hold it. Freed while many
                    // sessions wait, such buffers would leave holes among the allocations of
                    // the sessions that finished meanwhile: memory the allocator keeps.
                    self.rbuf = Box::default();
                    self.rpos = 0;
                    self.rend = 0;
                }
                let before = self.out.len();
                // Boxed: the futures of a login, a RETR, a SASL exchange or the UPDATE are the
                // largest states of a session, and an idle session (waiting in `read_more`)
                // should not carry room for them, nor for the event they started from (which
                // is why the event's binding ends before the wait).
                let handling = match frame {
                    None => break,
                    Some(frame) => {
                        let event = match frame {
                            Frame::Line(line) => self.session.handle_line(line, &mut self.out),
                            Frame::TooLong => self.session.handle_too_long(&mut self.out),
                        };
                        match event {
                            Some(event) => Box::pin(self.handle_events(event, before)),
                            None => continue,
                        }
                    }
                };
                if let Err(end) = handling.await {
                    // The last answer (QUIT's, or why the session is closed) goes out, unless
                    // the socket is what failed.
                    if matches!(
                        end,
                        End::Quit | End::TooManyErrors | End::TooManyFailedLogins
                    ) {
                        let _ = self.flush_last().await;
                    }
                    return end;
                }
            }
            if let Err(end) = self.flush().await {
                return end;
            }
            match self.read_more().await {
                Ok(()) => {}
                Err(end) => return end,
            }
        }
    }

    /// Handle an event, and the events the session answers it with, until one ends the
    /// session (`Err`) or none is left.
    async fn handle_events(&mut self, event: Event, before: usize) -> Result<(), End> {
        let mut next = Some((event, before));
        while let Some((event, before)) = next.take() {
            match self.handle_event(event, before).await {
                Step::Continue => {}
                Step::Then(event, before) => next = Some((event, before)),
                Step::End(end) => return Err(end),
            }
        }
        Ok(())
    }

    /// Wait for more input until the login deadline (before login) or the idle timeout (after),
    /// or until the server cuts sessions.
    async fn read_more(&mut self) -> Result<(), End> {
        self.rpos = 0;
        self.rend = 0;
        let (deadline, end, why) = match self.session.state() {
            State::Authorization => (self.login_deadline, End::LoginTimeout, Msg::LoginTimeout),
            // RFC 1939 section 3: an autologout timer ends the session without UPDATE.
            _ => (
                tokio::time::Instant::now() + self.shared.config.limits.idle_timeout(),
                End::Timeout,
                Msg::IdleTimeout,
            ),
        };
        if *self.cut.borrow() {
            return Err(self.say_shutdown().await);
        }
        // Every byte read was taken by the framer: while the client is silent, hold no buffer
        // (an idle session's memory), and take one back once there is something to read.
        self.rbuf = Box::default();
        self.framer.release_idle();
        if self.out.is_empty() {
            self.out = Vec::new();
        }
        let (stream, rbuf) = (&mut self.stream, &mut self.rbuf);
        let read = tokio::time::timeout_at(deadline, async move {
            stream.readable().await?;
            *rbuf = vec![0u8; defaults::READ_BUFFER].into_boxed_slice();
            stream.read(rbuf).await
        });
        tokio::select! {
            r = read => match r {
                Ok(Ok(0)) => Err(End::ClientClosed),
                Ok(Ok(n)) => {
                    self.rend = n;
                    Ok(())
                }
                Ok(Err(_)) => Err(End::IoError),
                Err(_) => {
                    self.session.write_err(&mut self.out, None, why);
                    let _ = self.flush().await;
                    Err(end)
                }
            },
            () = cut_now(&mut self.cut) => Err(self.say_shutdown().await),
        }
    }

    /// The last word to a session the server cuts: one try, for a second at most (the server is
    /// stopping, and this peer may be one that does not read).
    async fn say_shutdown(&mut self) -> End {
        self.session
            .write_err(&mut self.out, Some(Code::SysTemp), Msg::ShuttingDown);
        let send = async {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), send).await;
        self.out.clear();
        End::Shutdown
    }

    /// Writes the output buffer out, keeping its memory for more (a message being streamed),
    /// within the write deadline.
    async fn send_out(&mut self) -> Result<(), End> {
        within(
            self.stream.write_all(&self.out),
            self.shared.config.limits.write_timeout(),
            &mut self.cut,
        )
        .await?;
        self.out.clear();
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), End> {
        if !self.out.is_empty() {
            self.send_out().await?;
            // After a large listing or message, give the memory back: idle sessions stay small.
            if self.out.capacity() > 4 * defaults::READ_BUFFER {
                self.out = Vec::new();
            }
        }
        within(
            self.stream.flush(),
            self.shared.config.limits.write_timeout(),
            &mut self.cut,
        )
        .await
        .map_err(End::from)
    }

    /// [`Self::flush`] of the session's last answer, which the FIN follows at once (the
    /// caller shuts the socket down next, or drops it). Over plain TCP it is first offered to
    /// the kernel with `MSG_MORE`, which holds it back until the shutdown: the answer and the
    /// FIN then go in one segment, one packet and one wake-up of the client fewer. Whatever is
    /// not taken at once (a full send buffer) goes the ordinary way, which pushes the held
    /// part out too; a socket that is dropped without the shutdown sends what it holds
    /// before its FIN as well.
    ///
    /// Over TLS the answer's record and the close_notify that the shutdown adds are written
    /// apart: the socket is corked (`TCP_CORK`) for them, and the shutdown's FIN pushes both
    /// out with it, in one segment too. A socket dropped without the shutdown sends what it
    /// holds with its FIN as well, and the kernel sends corked data after 200 ms at most.
    async fn flush_last(&mut self) -> Result<(), End> {
        match &self.stream {
            Transport::Plain(tcp) => offer_held(tcp, &mut self.out),
            Transport::Tls(tls) => {
                let _ = rustix::net::sockopt::set_tcp_cork(tls.get_ref(), true);
            }
            Transport::Detached => {}
        }
        self.flush().await
    }

    /// USER/PASS right here on the async thread, when it costs less than the trip to the
    /// password-check threads (two thread wake-ups and a hand-over each way) and cannot wait:
    /// a success the authenticator remembers ([`Authenticator::check_password_now`]), and a
    /// maildrop opened from memory ([`Store::open_as_now`]), with no LOGIN-DELAY or EXPIRE to
    /// apply (they write to the maildrop). The verdict is the one the pool's job would give.
    /// `None`: nothing was done, and the job on the pool decides.
    fn login_now(&self, user: &str, password: &[u8]) -> Option<Verdict> {
        let account = self.shared.auth.check_password_now(user, password)?.ok()?;
        let own = account.policy.as_ref().ok()?;
        let policy = self.shared.config.policy.policy().for_user(*own);
        if policy.login_delay > 0 || matches!(policy.expire, Expire::Days(_)) {
            return None;
        }
        let owner = *account.owner.as_ref().ok()?;
        let began = Instant::now();
        let maildrop =
            self.shared
                .store
                .open_as_now(&account.user, account.home.as_deref(), owner)?;
        self.shared.metrics.store_operation("open", began.elapsed());
        Some(Verdict::Opened {
            maildrop: Ok(maildrop),
            policy,
            user: account.user,
            app_password: account.app_password,
        })
    }

    async fn handle_event(&mut self, event: Event, out_before: usize) -> Step {
        match event {
            Event::Authenticate { user, password } => {
                if let Some(verdict) = self.login_now(&user, password.expose()) {
                    return self
                        .finish_login(Ok(verdict), LoginMethod::UserPass, Some(&user))
                        .await;
                }
                let auth = self.shared.auth.clone();
                let name = user.clone();
                let store = self.shared.store.clone();
                let policy = self.shared.config.policy.policy();
                let metrics = self.shared.metrics.clone();
                let outcome = self
                    .shared
                    .auth_pool
                    .run(move || {
                        open_on_success(
                            store.as_ref(),
                            &metrics,
                            auth.check_password(&name, password.expose()),
                            policy,
                        )
                    })
                    .await;
                self.finish_login(outcome, LoginMethod::UserPass, Some(&user))
                    .await
            }
            Event::Apop { user, digest } => {
                let auth = self.shared.auth.clone();
                let ts = self.session.apop_timestamp().unwrap_or_default().to_owned();
                let name = user.clone();
                let store = self.shared.store.clone();
                let policy = self.shared.config.policy.policy();
                let metrics = self.shared.metrics.clone();
                let outcome = self
                    .shared
                    .auth_pool
                    .run(move || {
                        open_on_success(
                            store.as_ref(),
                            &metrics,
                            auth.check_apop(&name, &ts, &digest),
                            policy,
                        )
                    })
                    .await;
                self.finish_login(outcome, LoginMethod::Apop, Some(&user))
                    .await
            }
            Event::StartTls => self.start_tls().await,
            Event::Retrieve { index, top_lines } => {
                self.retrieve(index, top_lines, out_before).await
            }
            Event::MessageSizes => self.message_sizes().await,
            Event::Listing => {
                while !self
                    .session
                    .fill_listing(&mut self.out, defaults::WRITE_HIGH_WATER)
                {
                    if let Err(end) = self.flush().await {
                        return Step::End(end);
                    }
                }
                Step::Continue
            }
            Event::Update {
                deletions,
                retrieved,
            } => self.update(deletions, retrieved).await,
            Event::Sasl {
                mechanism,
                initial_response,
            } => {
                let max_line = mechanism
                    .parse::<Mechanism>()
                    .map_or(MAX_SASL_LINE, Mechanism::max_line);
                self.framer.set_max_len(max_line);
                // Boxed: an exchange's state (SCRAM's among them) is the largest of all, and
                // a USER/PASS login should not wait in room made for it.
                let step = Box::pin(self.sasl(&mechanism, initial_response)).await;
                self.framer.set_max_len(self.command_line_max());
                step
            }
            Event::Close if self.session.closed_for_errors() => Step::End(End::TooManyErrors),
            Event::Close => Step::End(End::Quit),
        }
    }

    /// The longest command line framed: 255 octets, or, where bearer tokens are accepted, an
    /// AUTH line with a token as its initial response (the session holds every other command
    /// to 255).
    fn command_line_max(&self) -> usize {
        if self.shared.oauth.is_some() {
            facteur_proto::server::MAX_AUTH_LINE
        } else {
            defaults::MAX_COMMAND_LINE
        }
    }

    /// A SASL exchange (RFC 5034): each challenge goes out as `+ base64`, each client line
    /// comes back to the mechanism, until a verdict; `*` cancels. An exchange that ends without
    /// a verdict (cancelled, malformed) is a bad command for the session, and a failed login
    /// too once the client gave a user name.
    async fn sasl(&mut self, mechanism: &str, initial: Option<Secret<String>>) -> Step {
        let Ok(mechanism) = mechanism.parse::<Mechanism>() else {
            let aborted = Verdict::Aborted(Msg::UnsupportedSasl);
            return self
                .finish_login(Ok(aborted), LoginMethod::Sasl(None), None)
                .await;
        };
        let method = LoginMethod::Sasl(Some(mechanism));
        let hostname = self.shared.hostname.clone();
        let tls_client_identity = self
            .stream
            .client_certificate()
            .and_then(tls::client_identity);
        let auth = self.shared.auth.clone();
        let oauth = self.shared.oauth.clone();
        let bearer_error = BearerErrorInfo {
            scope: self.shared.config.oauth.scope.clone(),
            openid_configuration: self.shared.config.oauth.openid_configuration.clone(),
        };
        let started = self
            .shared
            .auth_pool
            .run(move || {
                let ctx = SaslContext {
                    hostname,
                    tls_client_identity,
                    nonces: mechanism.needs_nonces().then(sasl_nonces).flatten(),
                    bearer_error,
                };
                let initial = initial.as_ref().map(|s| s.expose().as_str());
                let verifier = ServerVerifier {
                    users: auth.as_ref(),
                    oauth: oauth.as_deref(),
                };
                SaslExchange::start(mechanism, ctx, initial, &verifier)
            })
            .await;
        let Ok((mut exchange, mut step)) = started else {
            return self
                .finish_login(Ok(Verdict::Failure(None)), method, None)
                .await;
        };
        loop {
            match step {
                SaslStep::Done(outcome) => {
                    let claimed = exchange.claimed_user().map(str::to_owned);
                    let checked = match outcome {
                        SaslOutcome::Success(account) => Ok(account),
                        SaslOutcome::Failure => Err(exchange
                            .failure_reason()
                            .unwrap_or(FailureReason::Unspecified)),
                    };
                    let verdict = open_verdict(
                        self.shared.store.clone(),
                        self.shared.metrics.clone(),
                        checked,
                        self.shared.config.policy.policy(),
                    )
                    .await;
                    return self
                        .finish_login(Ok(verdict), method, claimed.as_deref())
                        .await;
                }
                SaslStep::Malformed(text) => {
                    return self.abort_sasl(Verdict::Aborted(text), &exchange).await;
                }
                SaslStep::Refused(text) => {
                    return self.abort_sasl(Verdict::Refused(text), &exchange).await;
                }
                SaslStep::Challenge(data) => {
                    self.out.extend_from_slice(b"+ ");
                    self.out.extend_from_slice(BASE64.encode(data).as_bytes());
                    self.out.extend_from_slice(b"\r\n");
                    if let Err(end) = self.flush().await {
                        return Step::End(end);
                    }
                    let line = match self.next_line().await {
                        Ok(Some(line)) => line,
                        Ok(None) => {
                            let aborted = Verdict::Aborted(Msg::SaslResponseTooLong);
                            return self.abort_sasl(aborted, &exchange).await;
                        }
                        Err(end) => return Step::End(end),
                    };
                    if line == b"*" {
                        let aborted = Verdict::Aborted(Msg::SaslCancelled);
                        return self.abort_sasl(aborted, &exchange).await;
                    }
                    let Ok(line) = String::from_utf8(line) else {
                        let aborted = Verdict::Aborted(Msg::SaslNotBase64);
                        return self.abort_sasl(aborted, &exchange).await;
                    };
                    let auth = self.shared.auth.clone();
                    let oauth = self.shared.oauth.clone();
                    let stepped = self
                        .shared
                        .auth_pool
                        .run(move || {
                            let verifier = ServerVerifier {
                                users: auth.as_ref(),
                                oauth: oauth.as_deref(),
                            };
                            let step = exchange.step(&line, &verifier);
                            (exchange, step)
                        })
                        .await;
                    let Ok((e, s)) = stepped else {
                        return self
                            .finish_login(Ok(Verdict::Failure(None)), method, None)
                            .await;
                    };
                    exchange = e;
                    step = s;
                }
            }
        }
    }

    /// End a SASL exchange without a verdict (cancelled, malformed) or with its credentials
    /// refused: a failed login if the client gave a user name, else only a bad command.
    async fn abort_sasl(&mut self, verdict: Verdict, exchange: &SaslExchange) -> Step {
        let claimed = exchange.claimed_user().map(str::to_owned);
        let method = LoginMethod::Sasl(Some(exchange.mechanism()));
        self.finish_login(Ok(verdict), method, claimed.as_deref())
            .await
    }

    /// The next complete line from the client (owned), reading as needed; `Ok(None)` for a
    /// line over the framer's limit.
    async fn next_line(&mut self) -> Result<Option<Vec<u8>>, End> {
        loop {
            if self.rpos < self.rend {
                // The framer takes bytes up to the end of a line, or all of them.
                let (used, frame) = self.framer.push(&self.rbuf[self.rpos..self.rend]);
                self.rpos += used;
                match frame {
                    None => {}
                    Some(Frame::Line(line)) => return Ok(Some(line.to_vec())),
                    Some(Frame::TooLong) => return Ok(None),
                }
            }
            self.read_more().await?;
        }
    }

    /// STLS (RFC 2595): the `+OK` is queued. Send it, forget every byte received after the
    /// STLS line (a client cannot have sent them legitimately: CVE-2011-0411), and handshake.
    async fn start_tls(&mut self) -> Step {
        self.rpos = self.rend;
        self.framer.clear();
        if let Err(end) = self.flush().await {
            return Step::End(end);
        }
        let Some(tls) = &self.shared.tls else {
            return Step::End(End::IoError);
        };
        let config = tls.config();
        let Transport::Plain(tcp) = std::mem::replace(&mut self.stream, Transport::Detached) else {
            return Step::End(End::IoError);
        };
        match tokio::time::timeout_at(
            self.login_deadline,
            facteur_tls::stream::accept(config, tcp),
        )
        .await
        {
            Ok(Ok(tls)) => {
                self.shared.metrics.tls_handshake("stls", true);
                if let Some(state) = &self.shared.tls {
                    warn_key_log(state, &self.peer);
                }
                self.stream = Transport::Tls(tls);
                let client_cert = self.stream.client_certificate().is_some();
                let mechanisms = self.shared.sasl_mechanisms(true, &self.peer, client_cert);
                self.session.set_tls_active(true, mechanisms);
                Step::Continue
            }
            Ok(Err(e)) => {
                self.shared.metrics.tls_handshake("stls", false);
                tracing::info!(
                    peer = %self.peer,
                    proxy = self.proxy(),
                    error = %e,
                    "STLS handshake failed"
                );
                Step::End(End::TlsHandshakeFailed)
            }
            Err(_) => {
                self.shared.metrics.tls_handshake("stls", false);
                Step::End(End::TlsHandshakeFailed)
            }
        }
    }

    /// Report a login to the session: the maildrop opened, or a failure (after its penalty).
    /// `tried` is the user name the client gave, for the failed-login penalty; an exchange
    /// aborted before any was given is no failed login.
    ///
    /// Each login is logged in one line with the peer, the user, the method and the outcome; a
    /// failure with its reason and the delay applied. The client's answer never depends on the
    /// reason.
    async fn finish_login(
        &mut self,
        outcome: Result<Verdict, super::auth_pool::PoolGone>,
        method: LoginMethod,
        tried: Option<&str>,
    ) -> Step {
        let result = match outcome {
            Ok(Verdict::Opened {
                user,
                policy,
                maildrop,
                app_password,
            }) => {
                self.shared.penalties.success(&user).await;
                match maildrop {
                    Ok(mut maildrop) => {
                        self.session.set_policy(policy);
                        // The label of the app password used, never the password.
                        let app_password = app_password.as_deref().map(Sanitized);
                        tracing::info!(
                            peer = %self.peer, proxy = self.proxy(),
                            user = %Sanitized(&user),
                            method = %method,
                            app_password = app_password.as_ref().map(tracing::field::display),
                            outcome = %"ok",
                            "login"
                        );
                        self.shared.metrics.login(method.name(), "ok");
                        let messages = maildrop.take_messages();
                        let sizes_known = maildrop.sizes_known();
                        self.maildrop = Some(maildrop);
                        AuthResult::Success {
                            user,
                            messages,
                            sizes_known,
                        }
                    }
                    Err(StoreError::InUse) => {
                        self.log_failed_login(
                            method,
                            Some(&user),
                            "maildrop in use",
                            Duration::ZERO,
                        );
                        self.shared.metrics.login(method.name(), "in_use");
                        AuthResult::InUse
                    }
                    // Good credentials, too soon: no failed login, no penalty.
                    Err(StoreError::LoginDelay) => {
                        self.log_failed_login(method, Some(&user), "login delay", Duration::ZERO);
                        AuthResult::LoginDelay
                    }
                    Err(e) => {
                        tracing::error!(
                            peer = %self.peer,
                            proxy = self.proxy(),
                            user,
                            error = %e,
                            "cannot open maildrop"
                        );
                        self.log_failed_login(
                            method,
                            Some(&user),
                            "maildrop could not be opened",
                            Duration::ZERO,
                        );
                        self.shared.metrics.login(method.name(), "store_error");
                        // RFC 3206: [SYS/PERM] when trying again cannot help.
                        AuthResult::SystemError {
                            permanent: e.is_permanent(),
                        }
                    }
                }
            }
            Ok(Verdict::Aborted(text)) if tried.is_none() => {
                // A bad command, not a login: no user name was given.
                tracing::debug!(
                    peer = %self.peer,
                    proxy = self.proxy(),
                    method = %method,
                    why = %text,
                    "SASL exchange aborted"
                );
                AuthResult::Aborted(text)
            }
            Ok(Verdict::Failure(Some(FailureReason::Unavailable))) => {
                // The user database did not answer: the client's credentials were not judged,
                // so no failed login is counted (RFC 3206: [SYS/TEMP], try again later).
                self.log_failed_login(
                    method,
                    tried,
                    &FailureReason::Unavailable.to_string(),
                    Duration::ZERO,
                );
                self.shared.metrics.login(method.name(), "unavailable");
                AuthResult::SystemError { permanent: false }
            }
            Ok(failure) => {
                let (reason, result) = match failure {
                    Verdict::Aborted(text) => (
                        format!("exchange aborted: {text}"),
                        AuthResult::Aborted(text),
                    ),
                    Verdict::Refused(text) => (
                        format!("credentials too long: {text}"),
                        AuthResult::Refused(text),
                    ),
                    Verdict::Failure(Some(reason)) => (reason.to_string(), AuthResult::Failed),
                    Verdict::Failure(None) | Verdict::Opened { .. } => (
                        "the authentication task failed".to_string(),
                        AuthResult::Failed,
                    ),
                };
                self.failed_logins += 1;
                let delay = self.shared.penalties.failure(self.peer.ip(), tried).await;
                self.log_failed_login(method, tried, &reason, delay);
                self.shared.metrics.login(method.name(), "failed");
                if !delay.is_zero() {
                    self.shared.metrics.penalty();
                }
                tokio::time::sleep(delay).await;
                result
            }
            Err(e) => {
                tracing::error!(error = %e, "authentication task failed");
                AuthResult::SystemError { permanent: false }
            }
        };
        let closing = self.session.auth_result(result, &mut self.out);
        if self.failed_logins >= self.shared.config.limits.max_failed_logins {
            return Step::End(End::TooManyFailedLogins);
        }
        match closing {
            Some(event) => Step::Then(event, self.out.len()),
            None => Step::Continue,
        }
    }

    /// The log line of a failed login: for the administrator, who may see the reason the
    /// client is never told.
    fn log_failed_login(
        &self,
        method: LoginMethod,
        user: Option<&str>,
        reason: &str,
        delay: Duration,
    ) {
        let user = user.map(Sanitized);
        tracing::info!(
            peer = %self.peer, proxy = self.proxy(),
            user = %DisplayOr(user.as_ref(), "-"),
            method = %method,
            outcome = %"failed",
            reason,
            delay_ms = delay.as_millis() as u64,
            "login"
        );
    }

    /// STAT, LIST or RETR needs the sizes the open deferred: read the files (off the async
    /// threads), then let the session answer the command.
    async fn message_sizes(&mut self) -> Step {
        let before = self.out.len();
        let sizes = match self.maildrop.take() {
            None => None,
            Some(mut maildrop) => {
                let peer = self.peer;
                let done = tokio::task::spawn_blocking(move || {
                    let sizes = maildrop.compute_sizes().map_err(|e| {
                        tracing::warn!(peer = %peer, error = %e, "cannot size the messages");
                    });
                    (maildrop, sizes.ok())
                })
                .await;
                match done {
                    Ok((maildrop, sizes)) => {
                        self.maildrop = Some(maildrop);
                        sizes
                    }
                    Err(_) => return Step::End(End::IoError),
                }
            }
        };
        match self.session.sizes_result(sizes, &mut self.out) {
            Some(event) => Step::Then(event, before),
            None => Step::Continue,
        }
    }

    /// Stream one message (RETR) or its top (TOP) through the dot encoder.
    async fn retrieve(&mut self, index: usize, top_lines: Option<u64>, out_before: usize) -> Step {
        let Some(mut maildrop) = self.maildrop.take() else {
            self.out.truncate(out_before);
            self.session
                .write_err(&mut self.out, Some(Code::SysTemp), Msg::MaildropNotOpen);
            return Step::Continue;
        };
        // A buffer just large enough for a small message to be read (and its end seen) in one
        // call; large messages get larger blocks, so that fewer trips to the blocking pool
        // move them.
        // A size not known yet (TOP on a maildrop whose sizes are deferred): ordinary blocks.
        let size = maildrop.size(index);
        if top_lines.is_none() && size.is_some_and(|s| s > defaults::LARGE_MESSAGE) {
            self.maildrop = Some(maildrop);
            if let Some(step) = self.retrieve_wire_form(index).await {
                return step;
            }
            let Some(m) = self.maildrop.take() else {
                return Step::End(End::IoError);
            };
            maildrop = m;
        }
        let chunk = if size.is_some_and(|s| s > defaults::LARGE_MESSAGE) {
            defaults::LARGE_MESSAGE_CHUNK
        } else {
            defaults::MESSAGE_CHUNK
        };
        let len = size.map_or(chunk, |size| {
            usize::try_from(size.saturating_add(1)).map_or(chunk, |s| s.min(chunk))
        });
        let mut buf = vec![0u8; len];
        // A small message whose name and content the kernel has cached is read here at once:
        // a trip to the blocking pool (two thread wake-ups) costs more than such a read.
        // Otherwise opening the file and reading its first block make one trip there.
        let opened = match maildrop.read_cached(index, &mut buf) {
            Some(n) => {
                let whole: Box<dyn Read + Send> = Box::new(std::io::empty());
                Ok((maildrop, Ok((whole, buf, Ok((n, true))))))
            }
            None => {
                tokio::task::spawn_blocking(move || {
                    let r = maildrop.open_message(index).map(|mut reader| {
                        let mut buf = buf;
                        let filled = fill(reader.as_mut(), &mut buf);
                        (reader, buf, filled)
                    });
                    (maildrop, r)
                })
                .await
            }
        };
        let (mut reader, mut buf, filled) = match opened {
            Ok((maildrop, r)) => {
                self.maildrop = Some(maildrop);
                match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Nothing of the answer is sent yet: replace the +OK by an error.
                        tracing::warn!(
                            peer = %self.peer,
                            proxy = self.proxy(),
                            error = %e,
                            "cannot open message"
                        );
                        self.out.truncate(out_before);
                        self.session.write_err(
                            &mut self.out,
                            Some(Code::SysTemp),
                            Msg::CannotReadMessage,
                        );
                        return Step::Continue;
                    }
                }
            }
            Err(_) => return Step::End(End::IoError),
        };
        let mut encoder = DotEncoder::new(top_lines);
        let read_error = |peer: SocketAddr, e: std::io::Error| {
            // Part of the message may be on the wire: the only honest thing is to stop.
            tracing::error!(peer = %peer, error = %e, "read error in a message");
            Step::End(End::IoError)
        };
        // The first block, read with the open, goes after the +OK line.
        let (n, eof) = match filled {
            Ok(x) => x,
            Err(e) => return read_error(self.peer, e),
        };
        let mut sent = n as u64;
        let mut done = encoder.encode(buf.get(..n).unwrap_or_default(), &mut self.out) || eof;
        // A larger message: each next block is read and dot-encoded on the blocking pool while
        // the one before goes out, so that reading, encoding and sending overlap. Two output
        // buffers take turns.
        let mut spare = Vec::new();
        while !done {
            let mut wire: Vec<u8> = std::mem::take(&mut spare);
            let job = tokio::task::spawn_blocking(move || {
                let filled = fill(reader.as_mut(), &mut buf);
                let step = filled.map(|(n, eof)| {
                    let done = encoder.encode(buf.get(..n).unwrap_or_default(), &mut wire);
                    (n, done || eof)
                });
                (reader, buf, encoder, wire, step)
            });
            if let Err(end) = self.send_out().await {
                return Step::End(end);
            }
            let (n, last) = match job.await {
                Ok((r, b, e, w, step)) => {
                    reader = r;
                    buf = b;
                    encoder = e;
                    // The sent buffer (empty now) is the next block's.
                    spare = std::mem::replace(&mut self.out, w);
                    match step {
                        Ok(x) => x,
                        Err(e) => return read_error(self.peer, e),
                    }
                }
                Err(_) => return Step::End(End::IoError),
            };
            sent += n as u64;
            done = last;
        }
        encoder.finish(&mut self.out);
        if top_lines.is_none() {
            self.session.retrieval_complete();
            self.tally.retrieved += 1;
            self.tally.retrieved_octets += sent;
        }
        Step::Continue
    }

    /// RETR of a message stored as its own wire form (see `Maildrop::open_wire_form`), over
    /// plain TCP: the file goes to the socket by `sendfile`, from the page cache, never through
    /// this process's memory; then the terminating line. `None` when the message is not stored
    /// so (or cannot be opened: the usual path then says why), with nothing sent.
    async fn retrieve_wire_form(&mut self, index: usize) -> Option<Step> {
        let mut maildrop = self.maildrop.take()?;
        let opened = tokio::task::spawn_blocking(move || {
            let r = maildrop.open_wire_form(index);
            if let Ok(Some((file, len))) = &r {
                // Start reading it in now, so that sendfile seldom waits for the disk.
                let _ = rustix::fs::fadvise(
                    file,
                    0,
                    std::num::NonZeroU64::new(*len),
                    rustix::fs::Advice::WillNeed,
                );
            }
            (maildrop, r)
        })
        .await;
        let (file, len) = match opened {
            Ok((maildrop, r)) => {
                self.maildrop = Some(maildrop);
                r.ok().flatten()?
            }
            Err(_) => return Some(Step::End(End::IoError)),
        };
        // The +OK line (and any answer before it) goes first.
        if let Err(end) = self.send_out().await {
            return Some(Step::End(end));
        }
        let Transport::Plain(tcp) = &self.stream else {
            // TLS: the file's blocks are encrypted as they are, with no dot-stuffing pass.
            return Some(self.send_file_copied(file, len).await);
        };
        let mut offset = 0u64;
        while offset < len {
            let chunk =
                usize::try_from((len - offset).min(defaults::SENDFILE_CHUNK)).unwrap_or(usize::MAX);
            let send = async {
                loop {
                    tcp.writable().await?;
                    let sent = tcp.try_io(tokio::io::Interest::WRITABLE, || {
                        let mut at = offset;
                        rustix::fs::sendfile(tcp, &file, Some(&mut at), chunk)
                            .map_err(std::io::Error::from)
                    });
                    match sent {
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        r => return r,
                    }
                }
            };
            match within(
                send,
                self.shared.config.limits.write_timeout(),
                &mut self.cut,
            )
            .await
            {
                Ok(0) => {
                    // The file is shorter than when it was opened: part of the message is on
                    // the wire, so the only honest thing is to stop.
                    tracing::error!(
                        peer = %self.peer,
                        sent = offset,
                        expected = len,
                        "a message file shrank while it was being sent"
                    );
                    return Some(Step::End(End::IoError));
                }
                Ok(n) => offset += n as u64,
                Err(end) => return Some(Step::End(end.into())),
            }
        }
        self.out.extend_from_slice(facteur_proto::dot::TERMINATOR);
        self.session.retrieval_complete();
        self.tally.retrieved += 1;
        self.tally.retrieved_octets += len;
        self.tally.retrieved_by_sendfile += 1;
        self.tally.retrieved_as_stored += 1;
        Some(Step::Continue)
    }

    /// The rest of a RETR whose file is its own wire form (`len` octets, checked), over a
    /// stream that cannot take `sendfile` (TLS): each block is read on the blocking pool while
    /// the one before is encrypted and sent, and goes out as it was read: no dot-stuffing pass
    /// and no copy besides the TLS record's. Then the terminating line.
    async fn send_file_copied(&mut self, file: std::fs::File, len: u64) -> Step {
        let block = defaults::LARGE_MESSAGE_CHUNK;
        // Each buffer keeps its length from one block to the next: `resize` then only cuts
        // it (the last block) and never fills it with zeros again before the read overwrites
        // it. Only the first use of each of the two buffers is zero-filled.
        let read_block = |file: std::fs::File, mut buf: Vec<u8>, offset: u64| {
            tokio::task::spawn_blocking(move || {
                let want = usize::try_from((len - offset).min(block as u64)).unwrap_or(block);
                buf.resize(want, 0);
                let r = fill_at(&file, &mut buf, offset);
                (file, buf, r)
            })
        };
        let mut offset = 0u64;
        let mut spare = Vec::new();
        let mut job = Some(read_block(file, Vec::new(), 0));
        while let Some(reading) = job.take() {
            let (file, buf, read) = match reading.await {
                Ok(x) => x,
                Err(_) => return Step::End(End::IoError),
            };
            match read {
                Ok(n) if n == buf.len() => {}
                Ok(_) => {
                    // Shorter than when it was opened: part of the message is on the wire,
                    // so the only honest thing is to stop.
                    tracing::error!(
                        peer = %self.peer,
                        sent = offset,
                        expected = len,
                        "a message file shrank while it was being sent"
                    );
                    return Step::End(End::IoError);
                }
                Err(e) => {
                    tracing::error!(peer = %self.peer, error = %e, "read error in a message");
                    return Step::End(End::IoError);
                }
            }
            offset += buf.len() as u64;
            // The block just read goes out; the next one is read meanwhile into the buffer
            // sent before. Written from `buf` itself, not through `out`, which clears what it
            // sent.
            if offset < len {
                job = Some(read_block(file, std::mem::take(&mut spare), offset));
            }
            if let Err(end) = within(
                self.stream.write_all(&buf),
                self.shared.config.limits.write_timeout(),
                &mut self.cut,
            )
            .await
            {
                return Step::End(end.into());
            }
            spare = buf;
        }
        drop(spare);
        self.out = Vec::new();
        self.out.extend_from_slice(facteur_proto::dot::TERMINATOR);
        self.session.retrieval_complete();
        self.tally.retrieved += 1;
        self.tally.retrieved_octets += len;
        self.tally.retrieved_as_stored += 1;
        Step::Continue
    }

    /// The UPDATE state: apply the deletions, durably, release the maildrop's lock, then
    /// answer QUIT. The lock goes before the answer so that a client that logs in again at once
    /// (on this node or, with a shared store, another) finds the maildrop free.
    async fn update(&mut self, deletions: Vec<usize>, retrieved: Vec<usize>) -> Step {
        let result = match self.maildrop.take() {
            None if deletions.is_empty() => Ok(()),
            None => Err(()),
            // Nothing to delete or record and a lock that dropping releases at once (Maildir's
            // flock): no trip to the blocking pool.
            Some(maildrop)
                if deletions.is_empty() && retrieved.is_empty() && !maildrop.release_blocks() =>
            {
                drop(maildrop);
                Ok(())
            }
            Some(mut maildrop) => {
                let n = deletions.len();
                let began = Instant::now();
                // Off the runtime's workers: the stores block (fsync, or a database round trip).
                let r = tokio::task::spawn_blocking(move || {
                    let applied = if deletions.is_empty() {
                        Ok(())
                    } else {
                        maildrop.apply_deletions(&deletions)
                    };
                    // EXPIRE counts from the first retrieval, recorded only by a QUIT whose
                    // deletions went through.
                    let recorded = match &applied {
                        Ok(()) => maildrop.record_retrievals(&retrieved),
                        Err(_) => Ok(()),
                    };
                    let released = maildrop.release();
                    drop(maildrop);
                    (applied, recorded, released)
                })
                .await;
                self.shared
                    .metrics
                    .store_operation("update", began.elapsed());
                match r {
                    Ok((applied, recorded, released)) => {
                        if let Err(e) = recorded {
                            // Nothing is lost: those messages expire later than they could.
                            tracing::warn!(
                                peer = %self.peer,
                                proxy = self.proxy(),
                                error = %e,
                                "cannot record the retrieval times"
                            );
                        }
                        if let Err(e) = released {
                            // The deletions stand; the lock expires by itself.
                            tracing::warn!(
                                peer = %self.peer,
                                proxy = self.proxy(),
                                error = %e,
                                "cannot release the maildrop's lock"
                            );
                        }
                        match applied {
                            Ok(()) => {
                                self.tally.deleted = n;
                                Ok(())
                            }
                            Err(e) => {
                                tracing::error!(
                                    peer = %self.peer,
                                    proxy = self.proxy(),
                                    error = %e,
                                    "UPDATE failed"
                                );
                                Err(())
                            }
                        }
                    }
                    Err(_) => Err(()),
                }
            }
        };
        // The lock is released here at the latest (the maildrop is dropped).
        self.maildrop = None;
        self.session.update_result(result, &mut self.out);
        Step::End(End::Quit)
    }
}

/// How a client tried to log in, for the log line: `USER/PASS`, `APOP`, `SASL/PLAIN`,
/// `SASL/SCRAM-SHA-256`... (`SASL/?` for a mechanism facteur does not know).
#[derive(Clone, Copy, Debug)]
enum LoginMethod {
    UserPass,
    Apop,
    Sasl(Option<Mechanism>),
}

impl LoginMethod {
    /// The `method` label of `facteur_logins_total`: the same words as the log.
    fn name(self) -> &'static str {
        match self {
            LoginMethod::UserPass => "USER/PASS",
            LoginMethod::Apop => "APOP",
            LoginMethod::Sasl(Some(Mechanism::Plain)) => "SASL/PLAIN",
            LoginMethod::Sasl(Some(Mechanism::Login)) => "SASL/LOGIN",
            LoginMethod::Sasl(Some(Mechanism::CramMd5)) => "SASL/CRAM-MD5",
            LoginMethod::Sasl(Some(Mechanism::ScramSha256)) => "SASL/SCRAM-SHA-256",
            LoginMethod::Sasl(Some(Mechanism::External)) => "SASL/EXTERNAL",
            LoginMethod::Sasl(Some(Mechanism::OAuthBearer)) => "SASL/OAUTHBEARER",
            LoginMethod::Sasl(Some(Mechanism::XOAuth2)) => "SASL/XOAUTH2",
            LoginMethod::Sasl(None) => "SASL/?",
        }
    }
}

impl std::fmt::Display for LoginMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoginMethod::UserPass => f.write_str("USER/PASS"),
            LoginMethod::Apop => f.write_str("APOP"),
            LoginMethod::Sasl(Some(m)) => write!(f, "SASL/{m}"),
            LoginMethod::Sasl(None) => f.write_str("SASL/?"),
        }
    }
}

/// A value, or a placeholder when there is none.
struct DisplayOr<'a, T>(Option<&'a T>, &'static str);

impl<T: std::fmt::Display> std::fmt::Display for DisplayOr<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(value) => value.fmt(f),
            None => f.write_str(self.1),
        }
    }
}

/// A login's verdict, with the maildrop already opened on success.
pub(crate) enum Verdict {
    /// Wrong credentials, with the authenticator's reason (`None`: the check itself failed).
    Failure(Option<FailureReason>),
    /// A SASL exchange ended without a verdict (cancelled, malformed): `-ERR` with this text.
    Aborted(Msg),
    /// Credentials refused for their shape before any check (too long, or a character SASLprep
    /// prohibits): `-ERR [AUTH]` (`[UTF8]`).
    Refused(Msg),
    Opened {
        user: String,
        /// The user's LOGIN-DELAY and EXPIRE (the server's where the user has none).
        policy: Policy,
        maildrop: Result<Box<dyn Maildrop>, StoreError>,
        /// The label of the app password the user logged in with.
        app_password: Option<String>,
    },
}

/// Lock and open the maildrop of an authenticated user, in the same blocking job as the
/// check: one trip off the async threads per login instead of two. `server` is the server-wide
/// policy, which the user's own values replace.
pub(crate) fn open_on_success(
    store: &dyn Store,
    metrics: &Metrics,
    checked: Checked,
    server: Policy,
) -> Verdict {
    match checked {
        Ok(account) => {
            let policy = match &account.policy {
                Ok(own) => server.for_user(*own),
                Err(_) => server,
            };
            let opened = (|| {
                let owner = account.owner?;
                account.policy.clone()?;
                let began = Instant::now();
                let opened = store.open_as(&account.user, account.home.as_deref(), owner);
                metrics.store_operation("open", began.elapsed());
                let mut maildrop = opened?;
                apply_policy(maildrop.as_mut(), &account.user, policy)?;
                Ok(maildrop)
            })();
            Verdict::Opened {
                maildrop: opened,
                policy,
                user: account.user,
                app_password: account.app_password,
            }
        }
        Err(reason) => Verdict::Failure(Some(reason)),
    }
}

/// What RFC 2449's policies ask of a maildrop just opened, under its lock, the credentials
/// verified: LOGIN-DELAY first (a refused login changes nothing), then EXPIRE N for the
/// messages whose time has come, so that no session ever serves one. EXPIRE 0 needs nothing
/// here: the session deletes what it retrieved at its QUIT.
fn apply_policy(maildrop: &mut dyn Maildrop, user: &str, policy: Policy) -> Result<(), StoreError> {
    if policy.login_delay > 0 {
        maildrop.check_login_delay(Duration::from_secs(u64::from(policy.login_delay)))?;
    }
    if let Expire::Days(days) = policy.expire {
        let after = Duration::from_secs(u64::from(days) * 86_400);
        let expired = maildrop.expire(after)?;
        if expired > 0 {
            tracing::info!(user = %Sanitized(user), expired, days, "expired messages removed");
        }
    }
    Ok(())
}

/// Open the maildrop after a SASL success (password checks open it in their own job).
async fn open_verdict(
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    checked: Checked,
    server: Policy,
) -> Verdict {
    tokio::task::spawn_blocking(move || open_on_success(store.as_ref(), &metrics, checked, server))
        .await
        .unwrap_or(Verdict::Failure(None))
}

/// Why a write to the peer did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteEnd {
    /// The peer did not read within the write deadline.
    Timeout,
    /// The server cut its sessions.
    Shutdown,
    Io,
}

/// Run one write (or flush) to the peer within `limit`, and no longer than the server's cut.
pub(crate) async fn within<T>(
    write: impl Future<Output = std::io::Result<T>>,
    limit: Duration,
    cut: &mut CutSignal,
) -> Result<T, WriteEnd> {
    tokio::select! {
        r = tokio::time::timeout(limit, write) => match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(WriteEnd::Io),
            Err(_) => Err(WriteEnd::Timeout),
        },
        () = cut_now(cut) => Err(WriteEnd::Shutdown),
    }
}

impl From<WriteEnd> for End {
    fn from(e: WriteEnd) -> Self {
        match e {
            WriteEnd::Timeout => End::WriteTimeout,
            WriteEnd::Shutdown => End::Shutdown,
            WriteEnd::Io => End::IoError,
        }
    }
}

/// Resolves once the server cuts its sessions (at once if it already has); never if the server
/// is gone without cutting.
pub(crate) async fn cut_now(cut: &mut CutSignal) {
    loop {
        if *cut.borrow_and_update() {
            return;
        }
        if cut.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Keepalive probes after a minute of silence, and TCP_USER_TIMEOUT at the write deadline: a
/// peer that vanished (power cut, NAT forgot it) is found by the kernel, even while a write is
/// waiting on it. Best effort: a socket that refuses an option is served all the same.
/// While `[tls] key_log` is on, each TLS session says so in the log: the secrets of this one
/// are in the file.
fn warn_key_log(tls: &facteur_tls::TlsState, peer: &SocketAddr) {
    if let Some(key_log) = tls.key_log() {
        tracing::warn!(
            peer = %peer,
            key_log = %key_log.path().display(),
            "TLS key log on: this session's secrets are written to the key log"
        );
    }
}

/// The TCP options of every session: no Nagle delay, keepalive probes and TCP_USER_TIMEOUT
/// (so that a peer that vanished without a word is found). Set on each listening socket, once:
/// Linux gives a listener's options to every connection it accepts.
pub fn tune_socket(sock: socket2::SockRef<'_>, write_timeout: Duration) {
    let _ = sock.set_tcp_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(defaults::KEEPALIVE_IDLE)
        .with_interval(defaults::KEEPALIVE_INTERVAL)
        .with_retries(defaults::KEEPALIVE_PROBES);
    let _ = sock.set_tcp_keepalive(&keepalive);
    let _ = sock.set_tcp_user_timeout(Some(write_timeout));
}

/// Read `buf.len()` octets of `file` from `offset`, fewer only at its end: octets read.
fn fill_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(buf.get_mut(n..).unwrap_or_default(), offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Read until `buf` is full or the end of the message: (octets read, end reached).
pub(crate) fn fill(
    reader: &mut (dyn Read + Send),
    buf: &mut [u8],
) -> std::io::Result<(usize, bool)> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(buf.get_mut(n..).unwrap_or_default()) {
            Ok(0) => return Ok((n, true)),
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((n, false))
}

/// A fresh APOP timestamp, `<pid.random@host>` (RFC 1939 section 7).
fn apop_timestamp(host: &str) -> String {
    let mut r = [0u8; 8];
    let random = match getrandom::fill(&mut r) {
        Ok(()) => u64::from_le_bytes(r),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    };
    format!("<{}.{random}@{host}>", std::process::id())
}
#[cfg(test)]
mod future_sizes {
    use super::*;

    /// What a session holds while its login waits for the password check (boxed, one per
    /// session, all at once when many clients log in together): room for a USER/PASS login, a
    /// RETR or the UPDATE, not for a SASL exchange (boxed apart) nor a database's penalty
    /// round trip (boxed by facteur-auth).
    #[test]
    fn a_waiting_login_stays_small() {
        let event = future_size!(Connection::handle_events; A, B, C);
        let login = future_size!(Connection::finish_login; A, B, C, D);
        eprintln!("handle_events: {event} bytes, finish_login: {login} bytes");
        assert!(event <= 1600, "handle_events' future is {event} bytes");
        assert!(login <= 1024, "finish_login's future is {login} bytes");
    }

    /// A session's task is its `serve` future, allocated for as long as the session lives,
    /// idle or not: the session's fields (a TLS stream is boxed apart) and the room of the
    /// largest state it can wait in. The rare big ones (a TLS handshake, a login, a RETR, a
    /// SASL exchange, the UPDATE) are boxed or in tasks of their own, so an idle session pays
    /// for none of them, and the task holds no copy of what the session was started with.
    #[test]
    fn a_session_task_is_the_session() {
        let task = future_size!(Connection::serve; A);
        let fields = std::mem::size_of::<Connection>();
        let run = future_size!(Connection::run; A);
        eprintln!("session task: {task} bytes (fields {fields}, run {run})");
        assert!(task <= 1280, "a POP3 session's future is {task} bytes");
        assert!(
            task <= fields + run + 64,
            "a POP3 session's future ({task} bytes) holds more than its fields ({fields}) and its \
             largest state ({run})"
        );
    }
}

#[cfg(test)]
mod last_answer {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (accepted.unwrap().0, client.unwrap())
    }

    /// The last answer, held back with MSG_MORE, goes out with the FIN in one segment; the
    /// client reads it whole, then the end of the stream.
    #[tokio::test]
    async fn the_last_answer_arrives_whole_then_the_end() {
        let (mut server, mut client) = pair().await;
        server.writable().await.unwrap();
        let mut out = b"+OK bye\r\n".to_vec();
        offer_held(&server, &mut out);
        assert!(out.is_empty(), "a small answer is taken at once");
        server.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"+OK bye\r\n");
    }

    /// A send buffer that takes only part of the answer (a client that does not read): the
    /// rest stays in `out` for the ordinary write, and nothing is lost or sent twice.
    #[tokio::test]
    async fn an_answer_taken_in_part_or_not_at_all_loses_nothing() {
        let (mut server, mut client) = pair().await;
        // Fill the way to the client until the kernel takes no more.
        let block = vec![b'x'; 65536];
        let mut filled = 0usize;
        loop {
            server.writable().await.unwrap();
            match server.try_write(&block) {
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        let answer: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut out = answer.clone();
        offer_held(&server, &mut out);
        let held = answer.len() - out.len();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        // The ordinary path sends the rest, then the FIN.
        server.write_all(&out).await.unwrap();
        server.shutdown().await.unwrap();
        let got = reader.await.unwrap();
        assert_eq!(got.len(), filled + answer.len(), "held {held}");
        assert!(got[..filled].iter().all(|&b| b == b'x'));
        assert_eq!(&got[filled..], &answer[..]);
    }
}
