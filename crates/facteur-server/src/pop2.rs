//! The driver of one POP2 connection (RFC 937, `[server] listen_pop2`): it moves bytes between
//! the socket and facteur-proto's sans-I/O [`Pop2Session`], and does the work the session asks
//! for with what POP3 uses: the same authenticator (its dummy hash for unknown users), the same
//! failed-login penalties, the same store and maildrop lock (a POP3 session and a POP2 session
//! on one maildrop exclude each other), the same plaintext policy, deadlines and caps.
//!
//! POP2 has no TLS, so a password always comes in clear: HELO is refused, before any check, on
//! a connection from a client the plaintext policy does not trust with one (`[auth]
//! plaintext_auth`, as POP3's USER/PASS over a connection without TLS from that client).
//!
//! It must never: apply a deletion without a clean QUIT (ACKD only marks; a dropped
//! connection deletes nothing), send a message whose octets differ from the count told by
//! `=n` (the count is all the client has to find the message's end: on a mismatch the
//! connection is cut), hold a whole message in memory, or wait on the peer without a deadline.
//!
//! ## Deadlines
//! As POP3's: before login, one deadline from the accept (`limits.login_timeout_secs`) covers
//! the PROXY header and every read; after it, each read waits at most
//! `limits.idle_timeout_secs`; each write at most `limits.write_timeout_secs`.

use super::connection::{self, cut_now, fill, open_on_success, within, Peer, Verdict};
use super::log::Sanitized;
use super::transport::Transport;
use super::{CutSignal, Shared};
use crate::config::defaults;
use facteur_auth::FailureReason;
use facteur_proto::pop2::{BodyEncoder, Event, LoginResult, Pop2Config, Pop2Session, Reply, State};
use facteur_store::{Maildrop, StoreError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Say why a connection is refused (`- why`), and close it.
pub async fn refuse(mut stream: TcpStream, why: &str) {
    let mut out = Vec::new();
    Reply::Err(why.into()).encode(&mut out);
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&out)).await;
}

/// How a session ended, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Quit,
    ClientClosed,
    /// Idle for too long after login.
    Timeout,
    /// Not logged in by the login deadline.
    LoginTimeout,
    WriteTimeout,
    Shutdown,
    TooManyErrors,
    /// HELO failed (bad credentials, maildrop locked or unavailable, plaintext refused):
    /// RFC 937 ends the session there.
    LoginRefused,
    /// A message's octets did not match its count: the client could not find its end.
    SizeMismatch,
    IoError,
}

/// What one session did, logged once at its end.
#[derive(Default)]
struct Tally {
    retrieved: u64,
    retrieved_octets: u64,
    deleted: usize,
}

enum Step {
    Continue,
    /// Handle this event next (the session answered a result with it).
    Then(Event),
    End(End),
}

/// Serve one POP2 connection until it ends. `accepted` is when the connection was accepted:
/// the login deadline counts from it.
pub async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: Peer,
    cut: CutSignal,
    accepted: tokio::time::Instant,
    _slots: crate::Slots,
) {
    // TCP options: from the listening socket (`connection::tune_socket`).
    let started = Instant::now();
    let config = Pop2Config {
        greeting: format!("POP2 {} server ready", shared.hostname),
        plaintext_allowed: shared.plaintext_allowed(false, &peer.client),
        max_bad_commands: shared.config.limits.max_bad_commands,
    };
    let mut conn = Connection {
        login_deadline: accepted + shared.config.limits.login_timeout(),
        write_timeout: shared.config.limits.write_timeout(),
        shared,
        stream: Transport::Plain(stream),
        peer: peer.client,
        via: peer.proxy,
        cut,
        session: Pop2Session::new(config),
        rbuf: vec![0u8; defaults::READ_BUFFER].into_boxed_slice(),
        rpos: 0,
        rend: 0,
        out: Vec::new(),
        maildrop: None,
        tally: Tally::default(),
    };
    let end = conn.run().await;
    // Whatever happens on the socket from here, the maildrop is unlocked now (without UPDATE,
    // unless QUIT already applied it).
    conn.maildrop = None;
    let grace = match end {
        End::WriteTimeout | End::Shutdown | End::IoError => Duration::from_secs(1),
        _ => Duration::from_secs(5),
    };
    let _ = tokio::time::timeout(grace, conn.stream.shutdown()).await;
    let t = &conn.tally;
    tracing::info!(
        peer = %conn.peer,
        proxy = conn.via.map(tracing::field::display),
        protocol = "pop2",
        user = conn.session.user().unwrap_or("-"),
        retrieved = t.retrieved,
        retrieved_octets = t.retrieved_octets,
        deleted = t.deleted,
        duration_ms = started.elapsed().as_millis() as u64,
        end = ?end,
        "session ended"
    );
}

struct Connection {
    shared: Arc<Shared>,
    stream: Transport,
    /// The client (see [`Peer::client`]).
    peer: SocketAddr,
    /// The trusted proxy it came through, for the logs.
    via: Option<SocketAddr>,
    cut: CutSignal,
    login_deadline: tokio::time::Instant,
    write_timeout: Duration,
    session: Pop2Session,
    /// Bytes read but not yet taken by the session: `rbuf[rpos..rend]`.
    rbuf: Box<[u8]>,
    rpos: usize,
    rend: usize,
    out: Vec<u8>,
    maildrop: Option<Box<dyn Maildrop>>,
    tally: Tally,
}

impl Connection {
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
                let (used, event) = self
                    .session
                    .handle_input(&self.rbuf[self.rpos..self.rend], &mut self.out);
                self.rpos += used;
                let mut next = event;
                while let Some(event) = next.take() {
                    match Box::pin(self.handle_event(event)).await {
                        Step::Continue => {}
                        Step::Then(event) => next = Some(event),
                        Step::End(end) => {
                            // The last answer goes out, unless the socket is what failed.
                            if matches!(
                                end,
                                End::Quit
                                    | End::TooManyErrors
                                    | End::LoginRefused
                                    | End::SizeMismatch
                            ) {
                                let _ = self.flush().await;
                            }
                            return end;
                        }
                    }
                }
                if used == 0 {
                    break;
                }
            }
            if self.session.state() == State::Done {
                let _ = self.flush().await;
                return End::Quit;
            }
            if let Err(end) = self.flush().await {
                return end;
            }
            if let Err(end) = self.read_more().await {
                return end;
            }
        }
    }

    /// Wait for more input until the login deadline (before login) or the idle timeout (after),
    /// or until the server cuts sessions.
    async fn read_more(&mut self) -> Result<(), End> {
        self.rpos = 0;
        self.rend = 0;
        let (deadline, end, why) = match self.session.state() {
            State::Auth => (
                self.login_deadline,
                End::LoginTimeout,
                "login took too long, closing connection",
            ),
            _ => (
                tokio::time::Instant::now() + self.shared.config.limits.idle_timeout(),
                End::Timeout,
                "idle for too long, closing connection",
            ),
        };
        if *self.cut.borrow() {
            return Err(self.say_shutdown().await);
        }
        let read = tokio::time::timeout_at(deadline, self.stream.read(&mut self.rbuf));
        tokio::select! {
            r = read => match r {
                Ok(Ok(0)) => Err(End::ClientClosed),
                Ok(Ok(n)) => {
                    self.rend = n;
                    Ok(())
                }
                Ok(Err(_)) => Err(End::IoError),
                Err(_) => {
                    Reply::Err(why.into()).encode(&mut self.out);
                    let _ = self.flush().await;
                    Err(end)
                }
            },
            () = cut_now(&mut self.cut) => Err(self.say_shutdown().await),
        }
    }

    /// The last word to a session the server cuts: one try, for a second at most.
    async fn say_shutdown(&mut self) -> End {
        Reply::Err("server shutting down, try again later".into()).encode(&mut self.out);
        let send = async {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), send).await;
        self.out.clear();
        End::Shutdown
    }

    /// Writes the output buffer out, within the write deadline, keeping its memory.
    async fn send_out(&mut self) -> Result<(), End> {
        within(
            self.stream.write_all(&self.out),
            self.write_timeout,
            &mut self.cut,
        )
        .await
        .map_err(convert_end)?;
        self.out.clear();
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), End> {
        if !self.out.is_empty() {
            self.send_out().await?;
            if self.out.capacity() > 4 * defaults::READ_BUFFER {
                self.out = Vec::new();
            }
        }
        within(self.stream.flush(), self.write_timeout, &mut self.cut)
            .await
            .map_err(convert_end)
    }

    async fn handle_event(&mut self, event: Event) -> Step {
        match event {
            Event::Authenticate { user, password } => self.login(user, password).await,
            Event::Retrieve { index, size } => self.retrieve(index, size).await,
            Event::Update { deletions } => self.update(deletions).await,
            Event::Close if self.session.closed_for_errors() => Step::End(End::TooManyErrors),
            Event::Close if self.session.login_refused() => Step::End(End::LoginRefused),
            Event::Close => Step::End(End::Quit),
        }
    }

    /// HELO: the password checked as POP3's USER/PASS is (same authenticator, same penalties),
    /// the maildrop locked and opened, and every size learnt (POP2 tells one with nearly every
    /// reply).
    async fn login(&mut self, user: String, password: facteur_proto::Secret<Vec<u8>>) -> Step {
        let auth = self.shared.auth.clone();
        let store = self.shared.store.clone();
        let name = user.clone();
        // LOGIN-DELAY and EXPIRE N hold for POP2 logins as for POP3's: checked and applied
        // when the maildrop opens.
        let policy = self.shared.config.policy.policy();
        let metrics = self.shared.metrics.clone();
        let outcome = self
            .shared
            .auth_pool
            .run(move || {
                // App passwords are for POP3 only: POP2 has no TLS and no capability to
                // tell a client anything, and a device given an app password is a POP3 one.
                let checked = auth
                    .check_password(&name, password.expose())
                    .and_then(|account| match account.app_password {
                        Some(_) => Err(FailureReason::AppPasswordRefused),
                        None => Ok(account),
                    });
                open_on_success(store.as_ref(), &metrics, checked, policy)
            })
            .await;
        // Counted beside POP3's logins, as method "POP2/HELO".
        let counted = match &outcome {
            Ok(Verdict::Opened {
                maildrop: Ok(_), ..
            }) => "ok",
            Ok(Verdict::Opened {
                maildrop: Err(StoreError::InUse),
                ..
            }) => "in_use",
            Ok(Verdict::Opened { .. }) => "store_error",
            Ok(Verdict::Failure(Some(FailureReason::Unavailable))) | Err(_) => "unavailable",
            Ok(_) => "failed",
        };
        self.shared.metrics.login("POP2/HELO", counted);
        let result = match outcome {
            Ok(Verdict::Opened { user, maildrop, .. }) => {
                self.shared.penalties.success(&user).await;
                match maildrop {
                    Ok(maildrop) => self.opened(user, maildrop).await,
                    Err(StoreError::InUse) => {
                        self.log_failed_login(&user, "maildrop in use", Duration::ZERO);
                        LoginResult::InUse
                    }
                    Err(StoreError::LoginDelay) => {
                        self.log_failed_login(&user, "sooner than LOGIN-DELAY", Duration::ZERO);
                        LoginResult::LoginDelay
                    }
                    Err(e) => {
                        tracing::error!(
                            peer = %self.peer, proxy = self.proxy(), user, error = %e,
                            "cannot open maildrop"
                        );
                        self.log_failed_login(
                            &user,
                            "maildrop could not be opened",
                            Duration::ZERO,
                        );
                        LoginResult::SystemError
                    }
                }
            }
            Ok(Verdict::Failure(Some(FailureReason::Unavailable))) => {
                // The user database did not answer: no failed login is counted.
                self.log_failed_login(
                    &user,
                    &FailureReason::Unavailable.to_string(),
                    Duration::ZERO,
                );
                LoginResult::SystemError
            }
            Ok(failure) => {
                let reason = match failure {
                    Verdict::Failure(Some(reason)) => reason.to_string(),
                    Verdict::Refused(text) | Verdict::Aborted(text) => text.to_string(),
                    Verdict::Failure(None) | Verdict::Opened { .. } => {
                        "the authentication task failed".to_string()
                    }
                };
                let delay = self
                    .shared
                    .penalties
                    .failure(self.peer.ip(), Some(&user))
                    .await;
                self.log_failed_login(&user, &reason, delay);
                tokio::time::sleep(delay).await;
                LoginResult::Failed
            }
            Err(e) => {
                tracing::error!(error = %e, "authentication task failed");
                LoginResult::SystemError
            }
        };
        match self.session.login_result(result, &mut self.out) {
            Some(event) => Step::Then(event),
            None => Step::Continue,
        }
    }

    /// The maildrop is open: take its snapshot with every size known.
    async fn opened(&mut self, user: String, mut maildrop: Box<dyn Maildrop>) -> LoginResult {
        let sized = if maildrop.sizes_known() {
            Ok((maildrop, None))
        } else {
            tokio::task::spawn_blocking(move || {
                let sizes = maildrop.compute_sizes();
                (maildrop, Some(sizes))
            })
            .await
        };
        let (mut maildrop, sizes) = match sized {
            Ok(x) => x,
            Err(_) => return LoginResult::SystemError,
        };
        // POP2's session owns its list (the sizes are filled in here): copied only if the
        // store's cache of snapshots shares it.
        let mut messages = Arc::unwrap_or_clone(maildrop.take_messages());
        match sizes {
            None => {}
            Some(Ok(sizes)) if sizes.len() == messages.len() => {
                for (m, size) in messages.iter_mut().zip(sizes) {
                    m.size = size;
                }
            }
            Some(result) => {
                if let Err(e) = result {
                    tracing::warn!(peer = %self.peer, error = %e, "cannot size the messages");
                }
                return LoginResult::SystemError;
            }
        }
        tracing::info!(
            peer = %self.peer, proxy = self.proxy(),
            user = %Sanitized(&user),
            method = %"POP2/HELO",
            outcome = %"ok",
            "login"
        );
        self.maildrop = Some(maildrop);
        LoginResult::Success { user, messages }
    }

    fn log_failed_login(&self, user: &str, reason: &str, delay: Duration) {
        tracing::info!(
            peer = %self.peer, proxy = self.proxy(),
            user = %Sanitized(user),
            method = %"POP2/HELO",
            outcome = %"failed",
            reason,
            delay_ms = delay.as_millis() as u64,
            "login"
        );
    }

    /// RETR: the message, exactly `size` octets with CRLF line ends, read and sent in blocks.
    /// Whatever goes wrong once the count was told (the file cannot be read, it is not the
    /// size its count says), the client cannot find the message's end: the connection is cut,
    /// and nothing is deleted.
    async fn retrieve(&mut self, index: usize, size: u64) -> Step {
        let Some(mut maildrop) = self.maildrop.take() else {
            return Step::End(End::IoError);
        };
        let len = usize::try_from(size.saturating_add(1))
            .map_or(defaults::MESSAGE_CHUNK, |s| s.min(defaults::MESSAGE_CHUNK));
        let buf = vec![0u8; len];
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
                        tracing::warn!(
                            peer = %self.peer, proxy = self.proxy(), error = %e,
                            "cannot open message: POP2 has no way to say so once its size was told"
                        );
                        return Step::End(End::IoError);
                    }
                }
            }
            Err(_) => return Step::End(End::IoError),
        };
        let mut encoder = BodyEncoder::new(size);
        let mut buf = buf;
        // Where the message starts in the output (replies before it may still be there).
        let mut start = self.out.len();
        loop {
            let job = tokio::task::spawn_blocking(move || {
                let filled = fill(reader.as_mut(), &mut buf);
                (reader, buf, filled)
            })
            .await;
            let (r, b, filled) = match job {
                Ok(x) => x,
                Err(_) => return Step::End(End::IoError),
            };
            reader = r;
            buf = b;
            let (n, eof) = match filled {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(peer = %self.peer, error = %e, "read error in a message");
                    return Step::End(End::IoError);
                }
            };
            if let Err(e) = encoder.encode(buf.get(..n).unwrap_or_default(), &mut self.out) {
                return self.mismatch(index, start, e);
            }
            if eof {
                break;
            }
            if let Err(end) = self.send_out().await {
                return Step::End(end);
            }
            start = 0;
        }
        if let Err(e) = encoder.finish() {
            return self.mismatch(index, start, e);
        }
        self.tally.retrieved += 1;
        self.tally.retrieved_octets += size;
        Step::Continue
    }

    /// The message is not the size told: what is still unsent of it (from `start` in the
    /// output) is dropped, so that a message cut short never looks whole, and the session ends.
    fn mismatch(
        &mut self,
        index: usize,
        start: usize,
        e: facteur_proto::pop2::SizeMismatch,
    ) -> Step {
        self.out.truncate(start);
        tracing::error!(
            peer = %self.peer, proxy = self.proxy(),
            user = self.session.user().unwrap_or("-"),
            message = index + 1,
            error = %e,
            "a message is not the size the store gives it: POP2 session cut"
        );
        Step::End(End::SizeMismatch)
    }

    /// QUIT: apply the deletions, durably, in one UPDATE, release the maildrop's lock, then
    /// answer. As POP3's UPDATE state.
    async fn update(&mut self, deletions: Vec<usize>) -> Step {
        let n = deletions.len();
        let result = match self.maildrop.take() {
            None if deletions.is_empty() => Ok(()),
            None => Err(()),
            Some(maildrop) if deletions.is_empty() && !maildrop.release_blocks() => {
                drop(maildrop);
                Ok(())
            }
            Some(mut maildrop) => {
                let r = tokio::task::spawn_blocking(move || {
                    let applied = if deletions.is_empty() {
                        Ok(())
                    } else {
                        maildrop.apply_deletions(&deletions)
                    };
                    let released = maildrop.release();
                    drop(maildrop);
                    (applied, released)
                })
                .await;
                match r {
                    Ok((applied, released)) => {
                        if let Err(e) = released {
                            tracing::warn!(
                                peer = %self.peer, proxy = self.proxy(), error = %e,
                                "cannot release the maildrop's lock"
                            );
                        }
                        applied.map_err(|e| {
                            tracing::error!(
                                peer = %self.peer, proxy = self.proxy(), error = %e,
                                "UPDATE failed"
                            );
                        })
                    }
                    Err(_) => Err(()),
                }
            }
        };
        if result.is_ok() {
            self.tally.deleted = n;
        }
        self.maildrop = None;
        self.session.update_result(result, &mut self.out);
        Step::End(End::Quit)
    }
}

/// A failed write, as this module's end.
fn convert_end(end: connection::WriteEnd) -> End {
    match end {
        connection::WriteEnd::Timeout => End::WriteTimeout,
        connection::WriteEnd::Shutdown => End::Shutdown,
        connection::WriteEnd::Io => End::IoError,
    }
}
