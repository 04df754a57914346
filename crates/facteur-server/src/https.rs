//! A small HTTPS client for the OAuth issuers: `GET` of a key set, `POST` of an introspection
//! form. HTTP/1.1 over tokio-rustls, one connection per request (`Connection: close`).
//!
//! Bounded everywhere: one deadline for the whole request (name lookup, connection, handshake,
//! writing, reading); a response head of at most [`MAX_HEAD`] octets; a body of at most the
//! caller's `max_len`, by `Content-Length`, chunked transfer coding, or up to the end of the
//! connection. Anything but `200` is an error. Redirections are not followed.
//!
//! The calls are blocking (the login threads make them): each runs on a small runtime of its
//! own, so no async thread ever waits on an issuer.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use facteur_auth::oauth::HttpsClient;
use facteur_proto::Secret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;

/// The longest response head (status line and header fields) read, in octets.
pub const MAX_HEAD: usize = 16 * 1024;

/// An HTTPS client trusting the certificates of a file, or the system's.
pub struct Https {
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

impl Https {
    pub fn new(ca_file: Option<&Path>, timeout: Duration) -> Result<Self, String> {
        let (roots, pinned) = match ca_file {
            Some(path) => facteur_tls::trusted_file(path).map_err(|e| e.to_string())?,
            None => (
                facteur_tls::system_roots().map_err(|e| e.to_string())?,
                Vec::new(),
            ),
        };
        let provider = facteur_tls::provider();
        let verifier = facteur_tls::PinningVerifier::new(roots, pinned, true, provider.clone());
        let tls = facteur_tls::client_builder(provider)
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(Self {
            tls: Arc::new(tls),
            timeout,
        })
    }

    /// One request, blocking, within the deadline.
    fn blocking(
        &self,
        url: &str,
        method: &str,
        extra_head: &str,
        body: &[u8],
        max_len: usize,
    ) -> Result<Vec<u8>, String> {
        let target = Target::parse(url)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))?;
        let request = self.request(&target, method, extra_head, body, max_len);
        let result = rt.block_on(async {
            tokio::time::timeout(self.timeout, request)
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)))
        });
        // A name lookup still running on a blocking thread is left behind, not waited for.
        rt.shutdown_background();
        result.map_err(|e| format!("{}: {e}", target.redacted()))
    }

    async fn request(
        &self,
        target: &Target,
        method: &str,
        extra_head: &str,
        body: &[u8],
        max_len: usize,
    ) -> Result<Vec<u8>, String> {
        let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let name = ServerName::try_from(target.host.clone())
            .map_err(|_| format!("{:?} is no host name", target.host))?;
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let host = if target.default_port {
            target.host_text.clone()
        } else {
            format!("{}:{}", target.host_text, target.port)
        };
        let head = format!(
            "{method} {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: facteur/{}\r\n\
             Accept: application/json\r\nConnection: close\r\n{extra_head}\r\n",
            target.path,
            env!("CARGO_PKG_VERSION"),
        );
        // The head may hold the client's credentials: wiped once sent.
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        let request = Secret::new(request);
        tls.write_all(request.expose())
            .await
            .map_err(|e| format!("cannot send: {e}"))?;
        tls.flush().await.map_err(|e| format!("cannot send: {e}"))?;
        read_response(&mut tls, max_len).await
    }
}

impl HttpsClient for Https {
    fn get(&self, url: &str, max_len: usize) -> Result<Vec<u8>, String> {
        self.blocking(url, "GET", "", &[], max_len)
    }

    fn post_form(
        &self,
        url: &str,
        basic: (&str, &Secret<String>),
        form: &Secret<String>,
        max_len: usize,
    ) -> Result<Vec<u8>, String> {
        let credentials = Secret::new(format!("{}:{}", basic.0, basic.1.expose()));
        let head = Secret::new(format!(
            "Authorization: Basic {}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\n",
            BASE64.encode(credentials.expose()),
            form.expose().len()
        ));
        self.blocking(
            url,
            "POST",
            head.expose(),
            form.expose().as_bytes(),
            max_len,
        )
    }
}

/// An `https://` URL, split.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    /// The host to connect to and to name in TLS (an IPv6 address without brackets).
    host: String,
    /// The host as in the URL (IPv6 in brackets), for `Host:`.
    host_text: String,
    port: u16,
    default_port: bool,
    /// The path and query, `/` at least.
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| format!("{url:?} is no https:// URL"))?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        let path = path.split('#').next().unwrap_or("/").to_string();
        if authority.contains('@') {
            return Err("credentials in a URL are not supported".into());
        }
        let (host_text, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (addr, after) = v6.split_once(']').ok_or("unclosed [ in the URL")?;
            let port = after.strip_prefix(':');
            (format!("[{addr}]"), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| format!("bad port in {url:?}"))?,
            None => 443,
        };
        let host = host_text.trim_start_matches('[').trim_end_matches(']');
        let well_formed = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
            && path.bytes().all(|b| b.is_ascii_graphic());
        if !well_formed {
            return Err(format!("{url:?} is not a URL facteur can use"));
        }
        Ok(Target {
            host: host.to_string(),
            default_port: port == 443,
            host_text,
            port,
            path,
        })
    }

    /// The URL without its query (which might hold something secret), for error messages.
    fn redacted(&self) -> String {
        let path = self.path.split('?').next().unwrap_or("/");
        format!("https://{}:{}{path}", self.host_text, self.port)
    }
}

/// Reads a response: the status must be 200; the body comes by `Content-Length`, chunked, or to
/// the end of the connection, and is at most `max_len` octets.
async fn read_response<R: tokio::io::AsyncRead + Unpin>(
    stream: &mut R,
    max_len: usize,
) -> Result<Vec<u8>, String> {
    // What may be read in all: the head, the body, and the chunked coding's own lines.
    let cap = MAX_HEAD + max_len + max_len / 2 + 1024;
    let mut buf = Vec::new();
    let mut block = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = find(&buf, b"\r\n\r\n") {
            if at > MAX_HEAD {
                return Err("the response head is too long".into());
            }
            break at;
        }
        if buf.len() > MAX_HEAD + 3 {
            return Err("the response head is too long".into());
        }
        let n = read_some(stream, &mut block).await?;
        if n == 0 {
            return Err("the connection closed before the response head ended".into());
        }
        buf.extend_from_slice(&block[..n]);
    };
    let head =
        std::str::from_utf8(&buf[..head_end]).map_err(|_| "the response head is not text")?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let mut parts = status.splitn(3, ' ');
    let (version, code) = (parts.next(), parts.next());
    if !version.is_some_and(|v| v == "HTTP/1.1" || v == "HTTP/1.0") {
        return Err(format!("not an HTTP/1 response: {:?}", cut(status)));
    }
    if code != Some("200") {
        return Err(format!("the server answered {:?}", cut(status)));
    }
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err("a malformed header field".into());
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .ok()
                .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                .ok_or("a malformed Content-Length")?;
            if length.is_some_and(|l| l != n) {
                return Err("two different Content-Length fields".into());
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if !value.eq_ignore_ascii_case("chunked") {
                return Err(format!("unsupported Transfer-Encoding {:?}", cut(value)));
            }
            chunked = true;
        }
    }
    let mut body = buf.split_off(head_end + 4);
    if chunked {
        // RFC 9112 section 6.3: chunked wins over Content-Length.
        loop {
            match dechunk(&body, max_len)? {
                Some(done) => return Ok(done),
                None if body.len() >= cap => return Err("the response is too large".into()),
                None => {}
            }
            let n = read_some(stream, &mut block).await?;
            if n == 0 {
                return Err("the connection closed inside the chunked body".into());
            }
            body.extend_from_slice(&block[..n]);
        }
    }
    if let Some(length) = length {
        if length > max_len {
            return Err(format!("the body is larger than {max_len} octets"));
        }
        while body.len() < length {
            let n = read_some(stream, &mut block).await?;
            if n == 0 {
                return Err("the connection closed before the body ended".into());
            }
            body.extend_from_slice(&block[..n]);
        }
        body.truncate(length);
        return Ok(body);
    }
    loop {
        if body.len() > max_len {
            return Err(format!("the body is larger than {max_len} octets"));
        }
        match stream.read(&mut block).await {
            Ok(0) => return Ok(body),
            Ok(n) => body.extend_from_slice(&block[..n]),
            // A server that closes without TLS's close_notify: the end of the body, which the
            // JSON parse then judges.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(body),
            Err(e) => return Err(format!("cannot read: {e}")),
        }
    }
}

async fn read_some<R: tokio::io::AsyncRead + Unpin>(
    stream: &mut R,
    block: &mut [u8],
) -> Result<usize, String> {
    match stream.read(block).await {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
        Err(e) => Err(format!("cannot read: {e}")),
    }
}

/// The body of a complete chunked coding, `None` if more is needed.
fn dechunk(raw: &[u8], max_len: usize) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let Some(eol) = find(&raw[at..], b"\r\n") else {
            if raw.len() - at > 1024 {
                return Err("a malformed chunk size line".into());
            }
            return Ok(None);
        };
        let line = std::str::from_utf8(&raw[at..at + eol]).map_err(|_| "a malformed chunk")?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        if size_text.is_empty() || size_text.len() > 8 {
            return Err("a malformed chunk size".into());
        }
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "a malformed chunk size")?;
        at += eol + 2;
        if size == 0 {
            // The trailer fields, if any, then the final empty line.
            return match find(&raw[at..], b"\r\n") {
                Some(0) => Ok(Some(out)),
                Some(_) => match find(&raw[at..], b"\r\n\r\n") {
                    Some(_) => Ok(Some(out)),
                    None => Ok(None),
                },
                None => Ok(None),
            };
        }
        if out.len() + size > max_len {
            return Err(format!("the body is larger than {max_len} octets"));
        }
        if raw.len() < at + size + 2 {
            return Ok(None);
        }
        if &raw[at + size..at + size + 2] != b"\r\n" {
            return Err("a chunk does not end with CRLF".into());
        }
        out.extend_from_slice(&raw[at..at + size]);
        at += size + 2;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// At most 100 characters of a server's text, for an error message.
fn cut(s: &str) -> String {
    s.chars()
        .take(100)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(raw: &[u8], max_len: usize) -> Result<Vec<u8>, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            // Every split of the input into two reads gives the same answer.
            let whole = read_response(&mut &raw[..], max_len).await;
            // (Short inputs only: each split reads the whole input again.)
            for split in 1..raw.len().min(512) {
                let mut r = tokio_test_reader(&raw[..split], &raw[split..]);
                assert_eq!(
                    read_response(&mut r, max_len).await,
                    whole,
                    "split at {split}"
                );
            }
            whole
        })
    }

    fn tokio_test_reader<'a>(a: &'a [u8], b: &'a [u8]) -> impl tokio::io::AsyncRead + Unpin + 'a {
        tokio::io::AsyncReadExt::chain(a, b)
    }

    #[test]
    fn responses() {
        let ok = |raw: &str| read(raw.as_bytes(), 100);
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello, and more"),
            Ok(b"hello".to_vec())
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\n\r\nto the end"),
            Ok(b"to the end".to_vec())
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;x=y\r\n, w\r\n0\r\n\r\n"),
            Ok(b"hello, w".to_vec())
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n2\r\nab\r\n0\r\nX-T: 1\r\n\r\n"),
            Ok(b"ab".to_vec())
        );
        for bad in [
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 301 Moved\r\nLocation: https://x/\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            "HTTP/1.1 200 OK\r\n",
        ] {
            assert!(ok(bad).is_err(), "{bad:?}");
        }
        let long_body = format!("HTTP/1.1 200 OK\r\n\r\n{}", "x".repeat(101));
        assert!(ok(&long_body).is_err());
        let long_head = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "x".repeat(MAX_HEAD));
        assert_eq!(
            read(long_head.as_bytes(), 100).map_err(|e| e.contains("too long")),
            Err(true)
        );
    }

    #[test]
    fn urls() {
        let t = Target::parse("https://issuer.test/realms/mail/certs?x=1#f").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str(), t.default_port),
            ("issuer.test", 443, "/realms/mail/certs?x=1", true)
        );
        assert_eq!(t.redacted(), "https://issuer.test:443/realms/mail/certs");
        let t = Target::parse("https://127.0.0.1:8443").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 8443, "/")
        );
        let t = Target::parse("https://[::1]:9/jwks").unwrap();
        assert_eq!(
            (t.host.as_str(), t.host_text.as_str(), t.port),
            ("::1", "[::1]", 9)
        );
        for bad in [
            "http://issuer.test/",
            "https://user:pw@issuer.test/",
            "https://issuer.test:99999/",
            "https:///path",
            "https://issuer test/",
            "https://issuer.test/a b",
            "https://[::1/",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
