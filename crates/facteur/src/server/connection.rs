//! The driver of one POP3 connection: it moves bytes between the socket and the sans-I/O
//! `ServerSession`, and does the work the session asks for (authentication, streaming a
//! message, UPDATE) off the async threads.
//!
//! It must never: run a command before the previous one is answered (pipelining keeps order),
//! hold a whole message in memory, apply deletions without a committed QUIT, or keep any byte
//! received before a TLS handshake.

use super::{CutSignal, Shared};
use crate::auth::AuthOutcome;
use crate::config::defaults;
use crate::store::{Maildrop, StoreError};
use facteur_proto::dot::DotEncoder;
use facteur_proto::line::{Frame, LineFramer};
use facteur_proto::response::{self, Code};
use facteur_proto::server::{AuthResult, Event, ServerSession, State};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Say why a connection is refused, and close it.
pub async fn refuse(mut stream: TcpStream, why: &str) {
    let mut out = Vec::new();
    response::err(&mut out, Some(Code::SysTemp), why);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), stream.write_all(&out)).await;
}

/// How a session ended, for the log line.
#[derive(Debug, Clone, Copy)]
enum End {
    Quit,
    ClientClosed,
    Timeout,
    Shutdown,
    TooManyErrors,
    IoError,
}

/// What one session did, logged once at its end.
#[derive(Default)]
struct Tally {
    retrieved: u64,
    retrieved_octets: u64,
    deleted: usize,
}

/// Serve one connection until it ends.
pub async fn serve(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, cut: CutSignal) {
    let _ = stream.set_nodelay(true);
    let started = Instant::now();
    let mut conn = Connection::new(shared, stream, peer, cut);
    let end = conn.run().await;
    let t = &conn.tally;
    tracing::info!(
        peer = %peer,
        user = conn.session.user().unwrap_or("-"),
        retrieved = t.retrieved,
        retrieved_octets = t.retrieved_octets,
        deleted = t.deleted,
        duration_ms = started.elapsed().as_millis() as u64,
        end = ?end,
        "session ended"
    );
}

struct Connection<S> {
    shared: Arc<Shared>,
    stream: S,
    peer: SocketAddr,
    cut: CutSignal,
    session: ServerSession,
    framer: LineFramer,
    /// Bytes read but not yet framed: `rbuf[rpos..rend]`.
    rbuf: Box<[u8]>,
    rpos: usize,
    rend: usize,
    out: Vec<u8>,
    apop_timestamp: Option<String>,
    maildrop: Option<Box<dyn Maildrop>>,
    tally: Tally,
}

enum Step {
    Continue,
    End(End),
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Connection<S> {
    fn new(shared: Arc<Shared>, stream: S, peer: SocketAddr, cut: CutSignal) -> Self {
        let apop_timestamp = (shared.config.auth.apop && shared.auth.apop_possible())
            .then(|| apop_timestamp(&shared.hostname));
        let session = ServerSession::new(shared.session_config(apop_timestamp.clone()));
        Self {
            shared,
            stream,
            peer,
            cut,
            session,
            framer: LineFramer::new(defaults::MAX_COMMAND_LINE),
            rbuf: vec![0u8; defaults::READ_BUFFER].into_boxed_slice(),
            rpos: 0,
            rend: 0,
            out: Vec::new(),
            apop_timestamp,
            maildrop: None,
            tally: Tally::default(),
        }
    }

    async fn run(&mut self) -> End {
        self.session.greeting(&mut self.out);
        if self.flush().await.is_err() {
            return End::IoError;
        }
        loop {
            // Answer every complete command already received, in order.
            while self.rpos < self.rend {
                let (used, frame) = self.framer.push(&self.rbuf[self.rpos..self.rend]);
                self.rpos += used;
                let before = self.out.len();
                let event = match frame {
                    None => break,
                    Some(Frame::Line(line)) => self.session.handle_line(line, &mut self.out),
                    Some(Frame::TooLong) => self.session.handle_too_long(&mut self.out),
                };
                if let Some(event) = event {
                    match self.handle_event(event, before).await {
                        Step::Continue => {}
                        Step::End(end) => {
                            let _ = self.flush().await;
                            return end;
                        }
                    }
                }
            }
            if self.flush().await.is_err() {
                return End::IoError;
            }
            match self.read_more().await {
                Ok(()) => {}
                Err(end) => return end,
            }
        }
    }

    /// Wait for more input, the idle timeout, or the end of the shutdown grace period.
    async fn read_more(&mut self) -> Result<(), End> {
        self.rpos = 0;
        self.rend = 0;
        let timeout = match self.session.state() {
            State::Authorization => self.shared.config.limits.login_timeout(),
            _ => self.shared.config.limits.idle_timeout(),
        };
        if *self.cut.borrow() {
            return Err(self.say_shutdown().await);
        }
        tokio::select! {
            r = tokio::time::timeout(timeout, self.stream.read(&mut self.rbuf)) => match r {
                Ok(Ok(0)) => Err(End::ClientClosed),
                Ok(Ok(n)) => {
                    self.rend = n;
                    Ok(())
                }
                Ok(Err(_)) => Err(End::IoError),
                Err(_) => {
                    // RFC 1939 section 3: an autologout timer ends the session without UPDATE.
                    response::err(&mut self.out, None, "idle for too long, closing connection");
                    let _ = self.flush().await;
                    Err(End::Timeout)
                }
            },
            _ = self.cut.changed() => Err(self.say_shutdown().await),
        }
    }

    async fn say_shutdown(&mut self) -> End {
        response::err(
            &mut self.out,
            Some(Code::SysTemp),
            "server shutting down, try again later",
        );
        let _ = self.flush().await;
        End::Shutdown
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
            // After a large listing or message, give the memory back: idle sessions stay small.
            if self.out.capacity() > 4 * defaults::READ_BUFFER {
                self.out = Vec::new();
            }
        }
        self.stream.flush().await
    }

    async fn handle_event(&mut self, event: Event, out_before: usize) -> Step {
        match event {
            Event::Authenticate { user, password } => {
                let auth = self.shared.auth.clone();
                let slot = self.shared.login_slots.acquire().await;
                let outcome = tokio::task::spawn_blocking(move || {
                    auth.verify_password(&user, password.expose())
                })
                .await;
                drop(slot);
                self.finish_login(outcome).await;
                Step::Continue
            }
            Event::Apop { user, digest } => {
                let auth = self.shared.auth.clone();
                let ts = self.apop_timestamp.clone().unwrap_or_default();
                let slot = self.shared.login_slots.acquire().await;
                let outcome =
                    tokio::task::spawn_blocking(move || auth.verify_apop(&user, &ts, &digest))
                        .await;
                drop(slot);
                self.finish_login(outcome).await;
                Step::Continue
            }
            Event::Retrieve { index, top_lines } => {
                self.retrieve(index, top_lines, out_before).await
            }
            Event::Listing => {
                while !self
                    .session
                    .fill_listing(&mut self.out, defaults::WRITE_HIGH_WATER)
                {
                    if self.flush().await.is_err() {
                        return Step::End(End::IoError);
                    }
                }
                Step::Continue
            }
            Event::Update { deletions } => self.update(deletions).await,
            Event::StartTls | Event::Sasl { .. } => {
                // Not offered on this connection, so the session never asks for it.
                response::err(&mut self.out, Some(Code::SysPerm), "not available");
                Step::Continue
            }
            Event::Close if self.session.closed_for_errors() => Step::End(End::TooManyErrors),
            Event::Close => Step::End(End::Quit),
        }
    }

    /// Open the maildrop of an authenticated user and report to the session.
    async fn finish_login(&mut self, outcome: Result<AuthOutcome, tokio::task::JoinError>) {
        let result = match outcome {
            Ok(AuthOutcome::Success(account)) => {
                let store = self.shared.store.clone();
                let user = account.user.clone();
                let opened = tokio::task::spawn_blocking(move || {
                    store.open(&account.user, account.home.as_deref())
                })
                .await;
                match opened {
                    Ok(Ok(maildrop)) => {
                        let messages = maildrop.messages().to_vec();
                        self.maildrop = Some(maildrop);
                        AuthResult::Success { user, messages }
                    }
                    Ok(Err(StoreError::InUse)) => AuthResult::InUse,
                    Ok(Err(e)) => {
                        tracing::error!(peer = %self.peer, user, error = %e, "cannot open maildrop");
                        AuthResult::SystemError { permanent: false }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "maildrop task failed");
                        AuthResult::SystemError { permanent: false }
                    }
                }
            }
            Ok(AuthOutcome::Failure) => {
                tracing::info!(peer = %self.peer, "login failed");
                tokio::time::sleep(self.shared.config.limits.failed_login_delay()).await;
                AuthResult::Failed
            }
            Err(e) => {
                tracing::error!(error = %e, "authentication task failed");
                AuthResult::SystemError { permanent: false }
            }
        };
        self.session.auth_result(result, &mut self.out);
    }

    /// Stream one message (RETR) or its top (TOP) through the dot encoder.
    async fn retrieve(&mut self, index: usize, top_lines: Option<u64>, out_before: usize) -> Step {
        let Some(mut maildrop) = self.maildrop.take() else {
            self.out.truncate(out_before);
            response::err(&mut self.out, Some(Code::SysTemp), "maildrop not open");
            return Step::Continue;
        };
        let opened = tokio::task::spawn_blocking(move || {
            let r = maildrop.open_message(index);
            (maildrop, r)
        })
        .await;
        let mut reader = match opened {
            Ok((maildrop, r)) => {
                self.maildrop = Some(maildrop);
                match r {
                    Ok(reader) => reader,
                    Err(e) => {
                        // Nothing of the answer is sent yet: replace the +OK by an error.
                        tracing::warn!(peer = %self.peer, error = %e, "cannot open message");
                        self.out.truncate(out_before);
                        response::err(
                            &mut self.out,
                            Some(Code::SysTemp),
                            "cannot read that message now",
                        );
                        return Step::Continue;
                    }
                }
            }
            Err(_) => return Step::End(End::IoError),
        };
        let mut encoder = DotEncoder::new(top_lines);
        let mut buf = vec![0u8; defaults::MESSAGE_CHUNK];
        let mut sent = 0u64;
        loop {
            let read = tokio::task::spawn_blocking(move || {
                let r = reader.read(&mut buf);
                (reader, buf, r)
            })
            .await;
            let n = match read {
                Ok((r, b, Ok(n))) => {
                    reader = r;
                    buf = b;
                    n
                }
                Ok((_, _, Err(e))) => {
                    // Part of the message is on the wire: the only honest thing is to stop.
                    tracing::error!(peer = %self.peer, error = %e, "read error in the middle of a message");
                    return Step::End(End::IoError);
                }
                Err(_) => return Step::End(End::IoError),
            };
            if n == 0 {
                break;
            }
            sent += n as u64;
            let done = encoder.encode(&buf[..n], &mut self.out);
            if self.out.len() >= defaults::WRITE_HIGH_WATER && self.flush().await.is_err() {
                return Step::End(End::IoError);
            }
            if done {
                break;
            }
        }
        encoder.finish(&mut self.out);
        if top_lines.is_none() {
            self.tally.retrieved += 1;
            self.tally.retrieved_octets += sent;
        }
        Step::Continue
    }

    /// The UPDATE state: apply the deletions, durably, then answer QUIT.
    async fn update(&mut self, deletions: Vec<usize>) -> Step {
        let result = match self.maildrop.take() {
            _ if deletions.is_empty() => Ok(()),
            None => Err(()),
            Some(mut maildrop) => {
                let n = deletions.len();
                let r = tokio::task::spawn_blocking(move || {
                    let r = maildrop.apply_deletions(&deletions);
                    drop(maildrop);
                    r
                })
                .await;
                match r {
                    Ok(Ok(())) => {
                        self.tally.deleted = n;
                        Ok(())
                    }
                    Ok(Err(e)) => {
                        tracing::error!(peer = %self.peer, error = %e, "UPDATE failed");
                        Err(())
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
