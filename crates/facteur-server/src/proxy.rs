//! Connections from a trusted load balancer (`[server] proxy_protocol`): the PROXY protocol
//! header is read first, then the connection is served as the client it names.
//!
//! The header is parsed by [`facteur_proto::proxy`]; this module only reads it from the socket,
//! within a deadline, at most as many octets at a time as the parser says are still part of
//! the header, so that no octet of what follows (the client's first command, a TLS ClientHello)
//! is ever taken. Then the per-address cap is applied to the client, and the connection goes to
//! `connection::start` (or, for a POP2 listener, [`crate::pop2::serve`]) with the
//! client as its peer and the proxy beside it for the logs.
//!
//! What this module must never do: serve a trusted peer's connection without a valid header
//! (it is dropped, with a log line), wait for a header past its deadline, or buffer more than
//! [`defaults::MAX_PROXY_HEADER`] octets.

use crate::config::defaults;
use crate::connection::Peer;
use crate::log::{Refusal, RefusalLog};
use crate::{CutSignal, PerIpLimiter, Protocol, Shared};
use facteur_proto::proxy::{self, Parse};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Why a trusted peer's connection had no usable header.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("no complete PROXY header within the deadline")]
    Timeout,
    #[error("the connection closed before a complete PROXY header")]
    Closed,
    #[error("reading the PROXY header failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid PROXY header: {0}")]
    Invalid(#[from] proxy::Invalid),
}

/// Read one PROXY header (v1 or v2) from `stream` by `deadline`, and nothing after it: the
/// client it names (`None` for a header that names none: v2 LOCAL, v1 UNKNOWN).
pub async fn read_header(
    stream: &mut TcpStream,
    deadline: Instant,
) -> Result<Option<SocketAddr>, HeaderError> {
    let mut buf = [0u8; defaults::MAX_PROXY_HEADER];
    let mut have = 0;
    let read = async {
        loop {
            match proxy::parse(buf.get(..have).unwrap_or_default()) {
                Parse::Done { source, .. } => return Ok(source),
                Parse::Invalid(why) => return Err(HeaderError::Invalid(why)),
                Parse::NeedMore(n) => {
                    // `parse` never asks past the header, and no header is longer than the
                    // buffer; the bound is kept here all the same.
                    let end = have.saturating_add(n).min(buf.len());
                    let Some(room) = buf.get_mut(have..end).filter(|r| !r.is_empty()) else {
                        return Err(HeaderError::Invalid(proxy::Invalid::V2TooLong));
                    };
                    match stream.read(room).await? {
                        0 => return Err(HeaderError::Closed),
                        k => have += k,
                    }
                }
            }
        }
    };
    tokio::time::timeout_at(deadline, read)
        .await
        .unwrap_or(Err(HeaderError::Timeout))
}

/// Serve a connection accepted from a trusted proxy at `proxy_addr`: read its header, cap the
/// client's connections, then serve the session as the client's. `accepted` is when the
/// connection was accepted: the header's deadline and the login deadline count from it.
/// `done` and `permit` go to the session's [`crate::Slots`], with the client's per-address slot.
#[allow(clippy::too_many_arguments)] // reason: the slots the session will hold come in apart.
pub(crate) async fn serve_relayed(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    proxy_addr: SocketAddr,
    protocol: Protocol,
    cut: CutSignal,
    per_ip: Arc<PerIpLimiter>,
    refusals: Arc<RefusalLog>,
    done: tokio::sync::mpsc::Sender<()>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let accepted = Instant::now();
    let limits = &shared.config.limits;
    let deadline = accepted + limits.proxy_header_timeout().min(limits.login_timeout());
    let client = match Box::pin(read_header(&mut stream, deadline)).await {
        // LOCAL (a health check) and UNKNOWN: the proxy is the client.
        Ok(named) => named.unwrap_or(proxy_addr),
        Err(error) => {
            tracing::info!(
                proxy = %proxy_addr,
                %error,
                "a trusted proxy sent no valid PROXY header: connection dropped"
            );
            return;
        }
    };
    let peer = Peer {
        client,
        proxy: Some(proxy_addr),
    };
    // The cap counts the client the header names, not the proxy, which carries many.
    let Some(ip) = per_ip.try_acquire(client.ip()) else {
        let refusal = Refusal::AddressFull(client.ip());
        refusals.refused(peer, refusal);
        let language = shared.config.server.default_language();
        Box::pin(protocol.refuse(stream, refusal.answer(), language)).await;
        return;
    };
    let slots = crate::Slots {
        _done: done,
        _permit: permit,
        _ip: ip,
    };
    protocol.start(shared, stream, peer, cut, accepted, slots);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A connected pair of sockets on 127.0.0.1: (the client's end, the server's end).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    fn soon() -> Instant {
        Instant::now() + std::time::Duration::from_secs(10)
    }

    #[tokio::test]
    async fn reads_the_header_and_not_one_octet_more() {
        let header = proxy::encode_v1(
            "203.0.113.7:4000".parse().unwrap(),
            "192.0.2.1:110".parse().unwrap(),
        );
        for (data, named) in [
            (header.into_bytes(), Some("203.0.113.7:4000")),
            (
                proxy::encode_v2(
                    Some((
                        "[2001:db8::7]:4000".parse().unwrap(),
                        "[2001:db8::1]:110".parse().unwrap(),
                    )),
                    &[0x04, 0, 2, 0, 0],
                ),
                Some("[2001:db8::7]:4000"),
            ),
            (proxy::encode_v2(None, &[]), None),
        ] {
            let (mut client, mut server) = pair().await;
            // The header and a command in one write: the read must stop at the header.
            let mut sent = data.clone();
            sent.extend_from_slice(b"CAPA\r\n");
            client.write_all(&sent).await.unwrap();
            let got = read_header(&mut server, soon()).await.unwrap();
            assert_eq!(got, named.map(|s| s.parse().unwrap()));
            let mut rest = [0u8; 6];
            server.read_exact(&mut rest).await.unwrap();
            assert_eq!(&rest, b"CAPA\r\n");
        }
    }

    #[tokio::test]
    async fn a_header_in_pieces_is_read_whole() {
        let (mut client, mut server) = pair().await;
        let header = b"PROXY TCP4 198.51.100.2 192.0.2.1 1234 995\r\n";
        let reader = tokio::spawn(async move { read_header(&mut server, soon()).await });
        for piece in header.chunks(5) {
            client.write_all(piece).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let got = reader.await.unwrap().unwrap();
        assert_eq!(got, Some("198.51.100.2:1234".parse().unwrap()));
    }

    #[tokio::test]
    async fn no_header_invalid_header_closed_and_slow_peers_fail() {
        let (mut client, mut server) = pair().await;
        client.write_all(b"USER alice\r\n").await.unwrap();
        let e = read_header(&mut server, soon()).await.unwrap_err();
        assert!(
            matches!(e, HeaderError::Invalid(proxy::Invalid::NotProxy)),
            "{e}"
        );

        let (mut client, mut server) = pair().await;
        client.write_all(b"PROXY TCP4 1.2.3.4").await.unwrap();
        drop(client);
        let e = read_header(&mut server, soon()).await.unwrap_err();
        assert!(matches!(e, HeaderError::Closed), "{e}");

        let (mut client, mut server) = pair().await;
        client.write_all(b"PROXY TCP4 1.2.3.4").await.unwrap();
        let deadline = Instant::now() + std::time::Duration::from_millis(200);
        let e = read_header(&mut server, deadline).await.unwrap_err();
        assert!(matches!(e, HeaderError::Timeout), "{e}");
        drop(client);
    }
}
