//! The server's TLS stream over TCP, lean while idle: rustls' unbuffered connection driven by
//! buffers of our own, each freed as soon as it is empty.
//!
//! rustls' buffered `ServerConnection` (what tokio-rustls drives) keeps a 4 KiB buffer for the
//! TLS records it reads for as long as the connection lives, and tokio-rustls adds its own
//! state around it. A POP3 session spends most of its life waiting for the next command: this
//! stream waits for the socket to become readable without holding any buffer, reads the TLS
//! records into a buffer it frees once they are decrypted, hands the plaintext over from a
//! buffer it frees once read, and frees the encrypted output once the socket took it. An idle
//! session keeps only rustls' own connection state (keys, the handshake's outcome).
//!
//! Nothing is weakened: every record still goes through rustls' state machine
//! ([`rustls::server::UnbufferedServerConnection`]); alerts rustls queues are sent;
//! `close_notify` is sent on shutdown and a peer's `close_notify` is the end of the stream,
//! while a TCP end without one is an error ([`io::ErrorKind::UnexpectedEof`]), as with rustls'
//! buffered API. Time limits are the caller's: every method here returns `Pending` while the
//! peer is silent, so the caller's deadline applies.

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The first size of the buffer that receives TLS records: a client's command fits, a hello
/// with a post-quantum key share takes one doubling. Small, because a server accepting many
/// sessions at once holds one per session in a handshake or a read, and the allocator keeps
/// that peak.
const READ_CHUNK: usize = 1024;
/// The most TLS input held at once: one handshake message rustls accepts (64 KiB) split over
/// records, with their headers. A peer sending more without completing a message is cut.
const MAX_INCOMING: usize = 0x10000 + 16 * 1024 + 8 * 512;
/// The most plaintext encrypted by one `poll_write`: sixteen full records. A large RETR is
/// written in blocks of 512 KiB: fewer rounds through rustls' state machine and fewer, larger
/// sends than with 64 KiB.
const MAX_WRITE: usize = 16 * 16 * 1024;

/// Output still to send that a write appends to rather than sends first (a TLS 1.3 session
/// ticket is about 250 octets).
const SMALL_PENDING: usize = 4 * 1024;

/// A TLS server stream over TCP (see the module's documentation).
pub struct ServerStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// TLS records received and not yet processed: `incoming[..in_used]`; empty (no
    /// allocation) while nothing is pending.
    incoming: Vec<u8>,
    in_used: usize,
    /// Decrypted application data not yet read: `plain[plain_pos..]`; freed once read.
    plain: Vec<u8>,
    plain_pos: usize,
    /// TLS records to send: `outgoing[out_pos..out_end]`. The rest of its length is room
    /// already initialized: writes one after another reuse it without filling it again. Freed
    /// once sent by anything but a write (a flush, a read, the handshake, the shutdown), so
    /// that a session between commands holds none.
    outgoing: Vec<u8>,
    out_pos: usize,
    out_end: usize,
    /// The peer sent close_notify: the end of its data.
    peer_closed: bool,
    /// We queued our close_notify.
    close_sent: bool,
    /// The TCP stream ended (without close_notify if `peer_closed` is false).
    tcp_eof: bool,
    /// rustls failed on the peer's data: every later call fails the same way.
    failed: Option<rustls::Error>,
}

/// What driving the connection reached.
enum Reached {
    /// The handshake needs more records from the peer.
    Handshaking,
    /// Application data may flow; `usize` is the plaintext encrypted (see [`ServerStream::drive`]).
    Traffic(usize),
    /// Both sides sent close_notify.
    Closed,
}

/// Handshake as the server over `tcp` with `config`; the caller bounds the time it may take.
/// The stream is boxed from the start: the future of a handshake stays small, and so does the
/// task of every session that awaits one.
pub async fn accept(
    config: Arc<rustls::ServerConfig>,
    tcp: TcpStream,
) -> io::Result<Box<ServerStream>> {
    handshake(config, tcp, false).await
}

/// [`accept`], for a caller that writes at once after the handshake (a POP3S greeting): what
/// the server sends after the client's Finished (its TLS 1.3 session ticket) is held and goes
/// out in the same send as that write, one system call and one TCP segment less per session.
/// The caller must write (and flush) before it waits for the peer: until then the stream holds
/// the ticket.
pub async fn accept_then_write(
    config: Arc<rustls::ServerConfig>,
    tcp: TcpStream,
) -> io::Result<Box<ServerStream>> {
    handshake(config, tcp, true).await
}

async fn handshake(
    config: Arc<rustls::ServerConfig>,
    tcp: TcpStream,
    hold_last: bool,
) -> io::Result<Box<ServerStream>> {
    let conn = UnbufferedServerConnection::new(config).map_err(io::Error::other)?;
    let mut s = Box::new(ServerStream {
        tcp,
        conn,
        incoming: Vec::new(),
        in_used: 0,
        plain: Vec::new(),
        plain_pos: 0,
        outgoing: Vec::new(),
        out_pos: 0,
        out_end: 0,
        peer_closed: false,
        close_sent: false,
        tcp_eof: false,
        failed: None,
    });
    loop {
        let reached = s.drive(None, false);
        let done = matches!(reached, Ok(Reached::Traffic(_))) && !s.conn.is_handshaking();
        // Our flight (or the alert that ends the handshake) goes out before anything else;
        // what follows the handshake waits for the caller's first write if it asked so.
        if !(done && hold_last) {
            poll_fn(|cx| s.poll_send(cx, false)).await?;
        }
        match reached? {
            Reached::Traffic(_) if !s.conn.is_handshaking() => return Ok(s),
            Reached::Closed => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection during the TLS handshake",
                ))
            }
            _ => {}
        }
        if poll_fn(|cx| s.poll_fill(cx)).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "tls handshake eof",
            ));
        }
    }
}

fn insufficient(e: InsufficientSizeError) -> usize {
    e.required_size
}

/// `need` octets of room in `buf` from `at`, growing it (zero-filled) only if it is too short.
fn room(buf: &mut Vec<u8>, at: usize, need: usize) -> &mut [u8] {
    if buf.len() < at + need {
        buf.resize(at + need, 0);
    }
    &mut buf[at..at + need]
}

/// Appends the handshake or alert record rustls has ready to `outgoing[..*end]`, sized as
/// rustls asks.
fn encode_into(
    outgoing: &mut Vec<u8>,
    end: &mut usize,
    data: &mut rustls::unbuffered::EncodeTlsData<'_, rustls::server::ServerConnectionData>,
) {
    let need = match data.encode(&mut []) {
        Err(EncodeError::InsufficientSize(e)) => insufficient(e),
        _ => 0,
    };
    *end += data.encode(room(outgoing, *end, need)).unwrap_or(0);
}

impl ServerStream {
    /// The TCP stream under the TLS (for its address and socket options).
    pub fn get_ref(&self) -> &TcpStream {
        &self.tcp
    }

    /// The TLS connection's state: protocol version, cipher suite, peer certificates.
    pub fn connection(&self) -> &rustls::CommonState {
        &self.conn
    }

    /// Bytes held in buffers now (for tests: an idle stream holds none).
    pub fn buffered_capacity(&self) -> usize {
        self.incoming.capacity() + self.plain.capacity() + self.outgoing.capacity()
    }

    /// Until a read may return something (data, the end, an error) without waiting, holding
    /// no buffer meanwhile. Records that carry no data (a ticket, a key update) may make a read
    /// wait after all: the caller's deadline covers the read too.
    pub async fn readable(&self) -> io::Result<()> {
        if self.plain_pos < self.plain.len()
            || self.peer_closed
            || self.tcp_eof
            || self.failed.is_some()
        {
            return Ok(());
        }
        self.tcp.readable().await
    }

    fn fail(&mut self, e: rustls::Error) -> io::Error {
        self.failed = Some(e.clone());
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    /// Process every complete record received: application data to `plain`, rustls' own
    /// records (handshake, tickets, key updates, alerts) to `outgoing`. When application data
    /// may be sent, encrypt `app` (at most [`MAX_WRITE`] of it) and, if `close`, a
    /// close_notify, into `outgoing`.
    fn drive(&mut self, app: Option<&[u8]>, close: bool) -> io::Result<Reached> {
        if let Some(e) = &self.failed {
            return Err(io::Error::new(io::ErrorKind::InvalidData, e.clone()));
        }
        loop {
            let UnbufferedStatus { discard, state } = self
                .conn
                .process_tls_records(&mut self.incoming[..self.in_used]);
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    self.discard(discard);
                    self.queue_alerts();
                    return Err(self.fail(e));
                }
            };
            let result = match state {
                ConnectionState::ReadTraffic(mut records) => {
                    let mut failed = None;
                    while let Some(record) = records.next_record() {
                        match record {
                            Ok(r) => {
                                if self.plain_pos == self.plain.len() {
                                    self.plain.clear();
                                    self.plain_pos = 0;
                                }
                                self.plain.extend_from_slice(r.payload);
                            }
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    failed.map(|e| {
                        self.failed = Some(e.clone());
                        Err(io::Error::new(io::ErrorKind::InvalidData, e))
                    })
                }
                ConnectionState::EncodeTlsData(mut data) => {
                    encode_into(&mut self.outgoing, &mut self.out_end, &mut data);
                    None
                }
                // Queued in `outgoing`, which goes out, in order, before anything queued later.
                ConnectionState::TransmitTlsData(data) => {
                    data.done();
                    None
                }
                ConnectionState::BlockedHandshake => Some(Ok(Reached::Handshaking)),
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    None
                }
                ConnectionState::Closed => {
                    self.peer_closed = true;
                    Some(Ok(Reached::Closed))
                }
                ConnectionState::WriteTraffic(mut traffic) => {
                    let mut taken = 0;
                    let mut result = Ok(());
                    if let Some(app) = app.filter(|a| !a.is_empty()) {
                        let app = &app[..app.len().min(MAX_WRITE)];
                        result = encrypt_into(&mut self.outgoing, &mut self.out_end, |out| {
                            traffic.encrypt(app, out)
                        });
                        taken = app.len();
                    }
                    if result.is_ok() && close && !self.close_sent {
                        result = encrypt_into(&mut self.outgoing, &mut self.out_end, |out| {
                            traffic.queue_close_notify(out)
                        });
                        self.close_sent = true;
                    }
                    Some(result.map(|()| Reached::Traffic(taken)))
                }
                // The configuration accepts no early data; anything else is unknown to us.
                _ => Some(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "unexpected TLS connection state",
                ))),
            };
            self.discard(discard);
            if let Some(result) = result {
                return result;
            }
        }
    }

    /// Drop the first `n` bytes of the input; free the buffer once empty.
    fn discard(&mut self, n: usize) {
        let n = n.min(self.in_used);
        if n == 0 {
            return;
        }
        self.incoming.copy_within(n..self.in_used, 0);
        self.in_used -= n;
        if self.in_used == 0 {
            self.incoming = Vec::new();
        }
    }

    /// After an error, the alert rustls queued (if any) into `outgoing`, best effort. rustls
    /// hands out what it queued before it looks at the input again, and it is asked only while
    /// something is queued (`wants_write`): a failed connection must not deframe its input
    /// twice.
    fn queue_alerts(&mut self) {
        for _ in 0..4 {
            if !self.conn.wants_write() {
                break;
            }
            let UnbufferedStatus { discard, state } = self
                .conn
                .process_tls_records(&mut self.incoming[..self.in_used]);
            let more = match state {
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    encode_into(&mut self.outgoing, &mut self.out_end, &mut data);
                    true
                }
                _ => false,
            };
            self.discard(discard);
            if !more {
                break;
            }
        }
        // A last try to send it now, without waiting.
        while self.out_pos < self.out_end {
            match self
                .tcp
                .try_write(&self.outgoing[self.out_pos..self.out_end])
            {
                Ok(n) if n > 0 => self.out_pos += n,
                _ => break,
            }
        }
    }

    /// Send `outgoing` to the socket. Once sent, the buffer is kept for the next write if
    /// `keep` (a write, more may follow at once), freed otherwise.
    fn poll_send(&mut self, cx: &mut Context<'_>, keep: bool) -> Poll<io::Result<()>> {
        while self.out_pos < self.out_end {
            let pending = &self.outgoing[self.out_pos..self.out_end];
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        self.out_pos = 0;
        self.out_end = 0;
        if !keep {
            self.outgoing = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Read more TLS records from the socket: wait for it to be readable holding no buffer,
    /// then read into one. `Ok(0)`: the TCP stream ended.
    ///
    /// The read goes through the socket's `poll_read`, not `try_read`: a read shorter than the
    /// room given (a command, a handshake flight) tells tokio the socket is drained, so the
    /// next fill waits for readiness instead of first trying a read that fails with EAGAIN,
    /// one system call less per command.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.tcp_eof {
            return Poll::Ready(Ok(0));
        }
        ready!(self.tcp.poll_read_ready(cx))?;
        if self.in_used == self.incoming.len() {
            if self.incoming.len() >= MAX_INCOMING {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS message too large",
                )));
            }
            let grown = (self.incoming.len() * 2).clamp(READ_CHUNK, MAX_INCOMING);
            self.incoming.resize(grown, 0);
        }
        let mut room = ReadBuf::new(&mut self.incoming[self.in_used..]);
        let polled = Pin::new(&mut self.tcp).poll_read(cx, &mut room);
        let n = room.filled().len();
        match polled {
            Poll::Ready(Ok(())) => {
                self.in_used += n;
                if n == 0 {
                    self.tcp_eof = true;
                }
                if self.in_used == 0 {
                    self.incoming = Vec::new();
                }
                Poll::Ready(Ok(n))
            }
            // The readiness was stale: the socket is registered for the next one. No buffer
            // is held while waiting.
            Poll::Pending => {
                if self.in_used == 0 {
                    self.incoming = Vec::new();
                }
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }
}

/// Encrypt with `f` at `out[*end..]`, with the room rustls asks for; `*end` moves past what
/// was written. Room already in `out` is reused as it is: rustls overwrites it.
fn encrypt_into(
    out: &mut Vec<u8>,
    end: &mut usize,
    mut f: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> io::Result<()> {
    let need = match f(&mut []) {
        Ok(_) => return Ok(()),
        Err(EncryptError::InsufficientSize(e)) => insufficient(e),
        Err(e) => return Err(io::Error::other(e)),
    };
    let n = f(room(out, *end, need)).map_err(io::Error::other)?;
    *end += n;
    Ok(())
}

impl AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plain_pos < this.plain.len() {
                let n = buf.remaining().min(this.plain.len() - this.plain_pos);
                buf.put_slice(&this.plain[this.plain_pos..this.plain_pos + n]);
                this.plain_pos += n;
                if this.plain_pos == this.plain.len() {
                    this.plain = Vec::new();
                    this.plain_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            let reached = this.drive(None, false);
            // Records rustls answers by itself (a key update) go out now, if the socket takes
            // them; otherwise with the next write or flush. A buffer a write kept is freed
            // here too: a read may wait long.
            if this.out_pos < this.out_end || this.outgoing.capacity() > 0 {
                if let Poll::Ready(Err(e)) = this.poll_send(cx, false) {
                    return Poll::Ready(Err(e));
                }
            }
            if let Reached::Closed = reached? {
                continue;
            }
            if this.plain_pos < this.plain.len() || this.peer_closed {
                continue;
            }
            if ready!(this.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed connection without sending TLS close_notify",
                )));
            }
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // What was encrypted before goes out first, so that the output never holds more than
        // one write; unless it is small (a ticket held from the handshake, a short answer
        // the socket did not take): then it goes out in the same send as this write.
        if this.out_end - this.out_pos > SMALL_PENDING {
            ready!(this.poll_send(cx, true))?;
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        match this.drive(Some(buf), false)? {
            Reached::Traffic(n) => {
                // Send now what the socket takes; the rest with the next write or flush.
                if let Poll::Ready(Err(e)) = this.poll_send(cx, true) {
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(n))
            }
            Reached::Handshaking | Reached::Closed => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the TLS connection cannot send application data",
            ))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx, false))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent && this.failed.is_none() {
            // Queue close_notify (after whatever is still to send).
            let _ = this.drive(None, true);
            this.close_sent = true;
        }
        ready!(this.poll_send(cx, false))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[cfg(feature = "dev-cert")]
mod tests {
    use super::*;
    use crate::{load, provider, read_certificates, write_self_signed, PROTOCOL_VERSIONS};
    use rustls::pki_types::ServerName;
    use rustls::HandshakeKind;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::time::{timeout, Duration};
    use tokio_rustls::TlsConnector;

    const LIMIT: Duration = Duration::from_secs(10);

    struct Setup {
        _dir: tempfile::TempDir,
        server: Arc<rustls::ServerConfig>,
        roots: rustls::RootCertStore,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let files = write_self_signed(dir.path()).unwrap();
        let server = load(&files).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certificates(&files.certificate).unwrap() {
            roots.add(cert).unwrap();
        }
        Setup {
            _dir: dir,
            server,
            roots,
        }
    }

    fn client_config(
        s: &Setup,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> Arc<rustls::ClientConfig> {
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(s.roots.clone())
                .with_no_client_auth(),
        )
    }

    /// A connected pair: our server stream and a tokio-rustls client, handshake done.
    async fn pair(
        s: &Setup,
        client: &Arc<rustls::ClientConfig>,
    ) -> (
        Box<ServerStream>,
        tokio_rustls::client::TlsStream<TcpStream>,
    ) {
        pair_with(s, client, false).await
    }

    /// [`pair`], the server accepting with [`accept_then_write`] if `then_write`.
    async fn pair_with(
        s: &Setup,
        client: &Arc<rustls::ClientConfig>,
        then_write: bool,
    ) -> (
        Box<ServerStream>,
        tokio_rustls::client::TlsStream<TcpStream>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = s.server.clone();
        let accepting = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            if then_write {
                accept_then_write(server, tcp).await
            } else {
                accept(server, tcp).await
            }
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let connector = TlsConnector::from(client.clone());
        let name = ServerName::try_from("localhost").unwrap();
        let c = timeout(LIMIT, connector.connect(name, tcp))
            .await
            .unwrap()
            .unwrap();
        let srv = timeout(LIMIT, accepting).await.unwrap().unwrap().unwrap();
        (srv, c)
    }

    /// Commands in, answers out, both TLS versions: the stream holds no buffer between
    /// commands, whatever the sizes; close_notify both ways ends the streams cleanly.
    #[tokio::test]
    async fn traffic_leaves_no_buffer_and_closes_cleanly() {
        let s = setup();
        for version in PROTOCOL_VERSIONS {
            let (mut srv, mut c) = pair(&s, &client_config(&s, version)).await;
            assert!(srv.connection().protocol_version().is_some());
            for size in [5usize, 1000, 20_000, 200_000, 1_100_000] {
                let command: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
                c.write_all(&command).await.unwrap();
                c.flush().await.unwrap();
                let mut got = vec![0u8; size];
                timeout(LIMIT, srv.read_exact(&mut got))
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(got, command);
                assert_eq!(srv.buffered_capacity(), 0, "after reading {size} octets");
                let answer: Vec<u8> = command.iter().rev().copied().collect();
                let reader = tokio::spawn(async move {
                    let mut back = vec![0u8; size];
                    c.read_exact(&mut back).await.unwrap();
                    (c, back)
                });
                timeout(LIMIT, srv.write_all(&answer))
                    .await
                    .unwrap()
                    .unwrap();
                timeout(LIMIT, srv.flush()).await.unwrap().unwrap();
                assert_eq!(srv.buffered_capacity(), 0, "after writing {size} octets");
                let (back_c, back) = timeout(LIMIT, reader).await.unwrap().unwrap();
                c = back_c;
                assert_eq!(back, answer);
            }
            // The client's close_notify is the end of the stream; ours ends the client's.
            c.shutdown().await.unwrap();
            let mut rest = Vec::new();
            timeout(LIMIT, srv.read_to_end(&mut rest))
                .await
                .unwrap()
                .unwrap();
            assert!(rest.is_empty());
            timeout(LIMIT, srv.shutdown()).await.unwrap().unwrap();
            let mut rest = Vec::new();
            timeout(LIMIT, c.read_to_end(&mut rest))
                .await
                .unwrap()
                .unwrap();
            assert!(rest.is_empty());
        }
    }

    /// A client's TLS 1.3 key update (asking for ours too) is answered: the traffic goes on
    /// both ways under the new keys.
    #[tokio::test]
    async fn key_updates_are_answered() {
        let s = setup();
        let (mut srv, mut c) = pair(&s, &client_config(&s, &rustls::version::TLS13)).await;
        for round in 0..3u8 {
            c.get_mut().1.refresh_traffic_keys().unwrap();
            c.write_all(&[b'a' + round; 10]).await.unwrap();
            c.flush().await.unwrap();
            let mut got = [0u8; 10];
            timeout(LIMIT, srv.read_exact(&mut got))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got, [b'a' + round; 10]);
            srv.write_all(b"+OK\r\n").await.unwrap();
            srv.flush().await.unwrap();
            let mut ok = [0u8; 5];
            timeout(LIMIT, c.read_exact(&mut ok))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&ok, b"+OK\r\n");
        }
        assert_eq!(srv.buffered_capacity(), 0);
    }

    /// A TCP end without close_notify is an error, not the end of the data (a truncation).
    #[tokio::test]
    async fn tcp_end_without_close_notify_is_an_error() {
        let s = setup();
        let (mut srv, c) = pair(&s, &client_config(&s, &rustls::version::TLS13)).await;
        let (mut tcp, _) = c.into_inner();
        // A FIN (not a drop: unread tickets would make it a reset).
        tcp.shutdown().await.unwrap();
        let mut buf = [0u8; 16];
        let e = timeout(LIMIT, srv.read(&mut buf))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// Garbage instead of a record fails the stream (and every later call), holding nothing.
    #[tokio::test]
    async fn garbage_fails_the_stream() {
        let s = setup();
        let (mut srv, c) = pair(&s, &client_config(&s, &rustls::version::TLS13)).await;
        let (mut tcp, _) = c.into_inner();
        tcp.write_all(&[23, 3, 3, 0, 40]).await.unwrap();
        tcp.write_all(&[0x55; 40]).await.unwrap();
        let mut buf = [0u8; 16];
        let e = timeout(LIMIT, srv.read(&mut buf))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(srv.read(&mut buf).await.is_err());
        assert!(srv.write(b"x").await.is_err());
    }

    /// Plaintext sent before the handshake is not application data: the handshake fails, with
    /// an alert.
    #[tokio::test]
    async fn plaintext_instead_of_a_hello_fails_the_handshake() {
        let s = setup();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = s.server.clone();
        let accepting = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            accept(server, tcp).await.map(|_| ())
        });
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"USER bob\r\nPASS secret\r\n").await.unwrap();
        let r = timeout(LIMIT, accepting).await.unwrap().unwrap();
        assert!(r.is_err());
        // The server said why: a fatal alert record (content type 21), then the end.
        let mut answer = Vec::new();
        timeout(LIMIT, tcp.read_to_end(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer.first(), Some(&21), "{answer:?}");
        assert_eq!(answer.get(5), Some(&2), "a fatal alert: {answer:?}");
    }

    /// Sessions resume through this stream as through rustls' own (tickets for TLS 1.3,
    /// tickets or the cache for TLS 1.2), one after another: the server sends one TLS 1.3
    /// ticket per session, and each resumed session hands over the next one.
    #[tokio::test]
    async fn sessions_resume() {
        let s = setup();
        for version in PROTOCOL_VERSIONS {
            let client = client_config(&s, version);
            for round in 0..3 {
                let (mut srv, mut c) = pair(&s, &client).await;
                let expected = if round == 0 {
                    HandshakeKind::Full
                } else {
                    HandshakeKind::Resumed
                };
                assert_eq!(
                    c.get_ref().1.handshake_kind(),
                    Some(expected),
                    "{version:?}, session {round}"
                );
                // TLS 1.3 tickets arrive after the handshake: read something to take them in.
                srv.write_all(b"+OK\r\n").await.unwrap();
                srv.flush().await.unwrap();
                let mut ok = [0u8; 5];
                timeout(LIMIT, c.read_exact(&mut ok))
                    .await
                    .unwrap()
                    .unwrap();
                c.shutdown().await.unwrap();
            }
        }
    }

    /// accept_then_write holds the TLS 1.3 ticket for the first write: it arrives with the
    /// greeting (the next session resumes with it), and nothing stays held after the flush.
    #[tokio::test]
    async fn a_ticket_held_for_the_greeting_goes_with_it() {
        let s = setup();
        let client = client_config(&s, &rustls::version::TLS13);
        for round in 0..3 {
            let (mut srv, mut c) = pair_with(&s, &client, true).await;
            let expected = if round == 0 {
                HandshakeKind::Full
            } else {
                HandshakeKind::Resumed
            };
            assert_eq!(c.get_ref().1.handshake_kind(), Some(expected), "{round}");
            assert!(srv.buffered_capacity() > 0, "the ticket is held");
            srv.write_all(b"+OK ready\r\n").await.unwrap();
            srv.flush().await.unwrap();
            assert_eq!(srv.buffered_capacity(), 0);
            let mut ok = [0u8; 11];
            timeout(LIMIT, c.read_exact(&mut ok))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&ok, b"+OK ready\r\n");
            c.shutdown().await.unwrap();
        }
    }
}
