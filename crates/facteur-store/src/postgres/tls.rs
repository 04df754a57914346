//! TLS to the database: libpq's `sslmode`, `sslrootcert`, `sslcert` and `sslkey` on rustls
//! (facteur-tls' provider and protocol versions), as tokio-postgres' `MakeTlsConnect`, with
//! SCRAM channel binding (`tls-server-end-point`, RFC 5929).
//!
//! tokio-postgres knows `sslmode` up to `require` and none of the certificate settings, so the
//! connection string is read here first: these keys are taken out (key=value strings and
//! `postgresql://` URLs alike) and the rest goes to tokio-postgres as it was.
//!
//! The modes, as libpq's:
//! - `disable`: never TLS.
//! - `prefer` (the default, as libpq's): TLS if the server offers it, else in clear.
//! - `require`: TLS or no connection; the certificate is not checked (encryption against a
//!   passive listener only).
//! - `verify-ca`: TLS, and the certificate must chain to `sslrootcert`; its names are not
//!   checked.
//! - `verify-full`: as `verify-ca`, and the certificate must name the host of the connection
//!   string (the only mode that stops an active attacker).
//!
//! With `sslrootcert` set, `prefer` and `require` check the chain too, as libpq does when it finds
//! a root certificate; unlike libpq's `prefer`, a failed check is never retried in clear.
//! `sslrootcert=system` trusts the system's store and needs `verify-full` (libpq's rule: a public
//! CA vouches for names, not for a database). Hosts that are Unix sockets never use TLS (the
//! server offers none there): a connection string naming only sockets connects in clear whatever
//! `sslmode` says, as libpq's does.
//!
//! What this module must never do: connect in clear when the mode demands TLS; accept a
//! certificate that `verify-ca` or `verify-full` refuse; offer a channel binding computed with
//! another hash than the certificate's signature (a wrong one fails the login; none lets the
//! server decide).

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use facteur_tls::PinningVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::CertificateError;
use sha2::{Digest, Sha256, Sha384, Sha512};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            "allow" => {
                return Err(
                    "sslmode=allow is not supported (it tries in clear first): use \
                            prefer, require, verify-ca or verify-full"
                        .into(),
                )
            }
            other => {
                return Err(format!(
                    "sslmode={other}: expected disable, prefer, require, verify-ca or verify-full"
                ))
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the trusted certificates of `sslrootcert` come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of CA certificates.
    File(PathBuf),
    /// `sslrootcert=system`: the system's store (`SSL_CERT_FILE`, `SSL_CERT_DIR` honoured).
    System,
}

impl std::fmt::Display for RootCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "sslrootcert {}", p.display()),
            Self::System => f.write_str("the system's trusted certificates (sslrootcert=system)"),
        }
    }
}

/// The TLS settings of a connection string, taken out of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsParams {
    pub mode: SslMode,
    pub root_cert: Option<RootCert>,
    /// `sslcert` and `sslkey`: a client certificate chain and its key, both PEM.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// Our keys, out of the connection string: what is left for tokio-postgres, and the settings.
pub fn split_params(url: &str) -> Result<(String, TlsParams), String> {
    let (rest, found) = if is_url(url) {
        take_from_url(url)?
    } else {
        take_from_key_values(url)
    };
    let mut mode = None;
    let (mut root, mut cert, mut key) = (None, None, None);
    for (k, v) in found {
        match k.as_str() {
            "sslmode" => mode = Some(SslMode::parse(&v)?),
            "sslrootcert" if v == "system" => root = Some(RootCert::System),
            "sslrootcert" => root = Some(RootCert::File(PathBuf::from(v))),
            "sslcert" => cert = Some(PathBuf::from(v)),
            "sslkey" => key = Some(PathBuf::from(v)),
            _ => {}
        }
    }
    let mode = match (mode, &root) {
        (Some(m), _) => m,
        // libpq 16's rule: the system's store is only worth a checked name.
        (None, Some(RootCert::System)) => SslMode::VerifyFull,
        (None, _) => SslMode::Prefer,
    };
    if root == Some(RootCert::System) && mode != SslMode::VerifyFull {
        return Err(format!(
            "sslrootcert=system needs sslmode=verify-full (sslmode={mode} would trust any \
             certificate a public CA signed, for any name)"
        ));
    }
    if mode >= SslMode::VerifyCa && root.is_none() {
        return Err(format!(
            "sslmode={mode} needs sslrootcert: a PEM file of the CA certificates that sign the \
             server's certificate, or `system`"
        ));
    }
    let client_cert = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        (Some(_), None) => return Err("sslcert is set without sslkey".into()),
        (None, Some(_)) => return Err("sslkey is set without sslcert".into()),
    };
    Ok((
        rest,
        TlsParams {
            mode,
            root_cert: root,
            client_cert,
        },
    ))
}

const OURS: &[&str] = &["sslmode", "sslrootcert", "sslcert", "sslkey"];

fn is_url(s: &str) -> bool {
    let lower = s.trim_start().to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

/// The `key=value` pairs of the query of a URL that are ours (decoded), and the URL without
/// them.
fn take_from_url(url: &str) -> Result<(String, Vec<(String, String)>), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut found = Vec::new();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k_decoded = percent_decode(k)?;
        if OURS.contains(&k_decoded.as_str()) {
            found.push((k_decoded, percent_decode(v)?));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, found))
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                // Two hex digits: at most 255.
                out.push(u8::try_from(h * 16 + l).unwrap_or(u8::MAX));
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s}: not UTF-8 once decoded"))
}

/// The pairs of a key=value connection string that are ours, and the string without them. A
/// string that does not scan is returned whole, for tokio-postgres to say what is wrong with it.
fn take_from_key_values(s: &str) -> (String, Vec<(String, String)>) {
    let Some(pairs) = scan_key_values(s) else {
        return (s.to_string(), Vec::new());
    };
    let mut rest = String::with_capacity(s.len());
    let mut from = 0;
    let mut found = Vec::new();
    for (k, v, range) in pairs {
        if OURS.contains(&k.as_str()) {
            rest.push_str(&s[from..range.start]);
            from = range.end;
            found.push((k, v));
        }
    }
    rest.push_str(&s[from..]);
    (rest, found)
}

/// libpq's key=value syntax: `key = value` pairs apart by white space; a value is quoted with
/// `'` or runs to the next white space; `\` escapes the next character. Each pair with its
/// place in `s`.
fn scan_key_values(s: &str) -> Option<Vec<(String, String, std::ops::Range<usize>)>> {
    let mut it = s.char_indices().peekable();
    let mut out = Vec::new();
    let skip_ws = |it: &mut std::iter::Peekable<std::str::CharIndices>| {
        while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_ws(&mut it);
        let Some(&(start, _)) = it.peek() else {
            return Some(out);
        };
        let mut key = String::new();
        while let Some((_, c)) = it.next_if(|(_, c)| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        skip_ws(&mut it);
        it.next_if(|(_, c)| *c == '=')?;
        skip_ws(&mut it);
        let mut value = String::new();
        let end;
        if it.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match it.next()? {
                    (i, '\'') => {
                        end = i + 1;
                        break;
                    }
                    (_, '\\') => value.push(it.next()?.1),
                    (_, c) => value.push(c),
                }
            }
        } else {
            let mut last = None;
            while let Some((i, c)) = it.next_if(|(_, c)| !c.is_whitespace()) {
                last = Some(i + c.len_utf8());
                if c == '\\' {
                    if let Some((j, c2)) = it.next() {
                        value.push(c2);
                        last = Some(j + c2.len_utf8());
                    }
                } else {
                    value.push(c);
                }
            }
            end = last?;
        }
        out.push((key, value, start..end));
    }
}

/// The TLS of a pool or a connection: tokio-postgres' [`MakeTlsConnect`] on tokio-rustls.
/// Cheap to clone (one rustls configuration shared).
#[derive(Clone)]
pub struct PgTls {
    config: Arc<rustls::ClientConfig>,
    /// What the certificate is checked against, for the messages.
    trust: Option<RootCert>,
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTls").field("trust", &self.trust).finish()
    }
}

impl PgTls {
    /// The rustls configuration `params` call for: the trusted certificates and the client
    /// certificate are read now. The error names the file and the setting.
    pub fn new(params: &TlsParams) -> Result<Self, String> {
        let provider = facteur_tls::provider();
        let verifier = match &params.root_cert {
            None => PinningVerifier::any_certificate(provider.clone()),
            Some(RootCert::File(path)) => {
                let (roots, pinned) =
                    facteur_tls::trusted_file(path).map_err(|e| format!("sslrootcert {e}"))?;
                PinningVerifier::new(
                    roots,
                    pinned,
                    params.mode == SslMode::VerifyFull,
                    provider.clone(),
                )
            }
            Some(RootCert::System) => {
                let roots =
                    facteur_tls::system_roots().map_err(|e| format!("sslrootcert=system: {e}"))?;
                PinningVerifier::new(
                    roots,
                    Vec::new(),
                    params.mode == SslMode::VerifyFull,
                    provider.clone(),
                )
            }
        };
        let builder = facteur_tls::client_builder(provider)
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let mut config = match &params.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("sslcert {}: {e}", cert.display()))?;
                if chain.is_empty() {
                    return Err(format!(
                        "sslcert {}: no CERTIFICATE in the file",
                        cert.display()
                    ));
                }
                let key_der = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("sslkey {}: {e}", key.display()))?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    format!(
                        "sslcert {} and sslkey {}: {e}",
                        cert.display(),
                        key.display()
                    )
                })?
            }
        };
        // What libpq 17 sends, and what a server accepting direct TLS (sslnegotiation=direct)
        // demands.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            trust: params.root_cert.clone(),
        })
    }
}

/// Why a TLS connection to the database failed, for the person who reads the log.
#[derive(Debug, thiserror::Error)]
pub enum PgTlsError {
    #[error("PostgreSQL at {host}: {host:?} is not a host name TLS can check")]
    BadName { host: String },
    #[error("PostgreSQL at {host}: the server's certificate is not trusted by {roots}")]
    Untrusted { host: String, roots: String },
    #[error(
        "PostgreSQL at {host}: the server's certificate is not valid for the name {host} \
         (sslmode=verify-full checks it: connect by a name the certificate holds)"
    )]
    NameMismatch { host: String },
    #[error("PostgreSQL at {host}: the server's certificate has expired")]
    Expired { host: String },
    #[error(
        "PostgreSQL at {host}: the server's certificate is not valid yet (is the clock right?)"
    )]
    NotYetValid { host: String },
    #[error("PostgreSQL at {host}: the TLS handshake failed: {detail}")]
    Handshake { host: String, detail: String },
}

impl PgTlsError {
    fn from_handshake(host: &str, trust: Option<&RootCert>, e: &io::Error) -> Self {
        let host = host.to_string();
        let Some(r) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
            let detail = if matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
            ) {
                format!("the server closed the connection ({e})")
            } else {
                e.to_string()
            };
            return Self::Handshake { host, detail };
        };
        use CertificateError as C;
        match r {
            rustls::Error::InvalidCertificate(c) => match c {
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    Self::NameMismatch { host }
                }
                C::Expired | C::ExpiredContext { .. } => Self::Expired { host },
                C::NotValidYet | C::NotValidYetContext { .. } => Self::NotYetValid { host },
                C::UnknownIssuer | C::BadSignature | C::Other(_) => Self::Untrusted {
                    host,
                    roots: trust
                        .map_or_else(|| "the trusted certificates".into(), |t| t.to_string()),
                },
                other => Self::Handshake {
                    host,
                    detail: format!("the server's certificate: {other:?}"),
                },
            },
            other => Self::Handshake {
                host,
                detail: other.to_string(),
            },
        }
    }
}

impl<S> MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = PgTlsError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<PgTlsConnect, PgTlsError> {
        // An empty or odd name fails only if TLS is actually attempted: tokio-postgres asks
        // for a connector before it knows (a Unix socket has no name).
        Ok(PgTlsConnect {
            tls: self.clone(),
            host: domain.to_string(),
        })
    }
}

/// One TLS handshake to come, with the host name to check.
pub struct PgTlsConnect {
    tls: PgTls,
    host: String,
}

impl<S> TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = PgTlsError;
    type Future = Pin<Box<dyn Future<Output = Result<PgTlsStream<S>, PgTlsError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name =
                ServerName::try_from(self.host.clone()).map_err(|_| PgTlsError::BadName {
                    host: self.host.clone(),
                })?;
            let connector = tokio_rustls::TlsConnector::from(self.tls.config.clone());
            let stream = connector
                .connect(name, stream)
                .await
                .map_err(|e| PgTlsError::from_handshake(&self.host, self.tls.trust.as_ref(), &e))?;
            Ok(PgTlsStream(stream))
        })
    }
}

/// A TLS connection to the database.
pub struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for PgTlsStream<S> {
    /// `tls-server-end-point` (RFC 5929): the hash of the server's certificate, with the hash
    /// of its signature (SHA-256 for MD5 and SHA-1).
    fn channel_binding(&self) -> ChannelBinding {
        let Some(cert) = self
            .0
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
        else {
            return ChannelBinding::none();
        };
        let cert = cert.as_ref();
        match facteur_tls::end_point_hash(cert) {
            Some(facteur_tls::EndPointHash::Sha256) => {
                ChannelBinding::tls_server_end_point(Sha256::digest(cert).to_vec())
            }
            Some(facteur_tls::EndPointHash::Sha384) => {
                ChannelBinding::tls_server_end_point(Sha384::digest(cert).to_vec())
            }
            Some(facteur_tls::EndPointHash::Sha512) => {
                ChannelBinding::tls_server_end_point(Sha512::digest(cert).to_vec())
            }
            None => ChannelBinding::none(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Result<(String, TlsParams), String> {
        split_params(s)
    }

    #[test]
    fn key_values_lose_our_keys_and_keep_the_rest() {
        let (rest, p) = split(
            "host=db.example dbname=mail sslmode=verify-full sslrootcert='/etc/ca dir/ca.pem' \
             user=facteur",
        )
        .unwrap();
        assert_eq!(
            rest.split_whitespace().collect::<Vec<_>>(),
            ["host=db.example", "dbname=mail", "user=facteur"]
        );
        assert_eq!(p.mode, SslMode::VerifyFull);
        assert_eq!(
            p.root_cert,
            Some(RootCert::File("/etc/ca dir/ca.pem".into()))
        );
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_dbname(), Some("mail"));
        // Spaces around '=', escapes, and a password that looks like one of our keys.
        let (rest, p) = split(r"password='sslmode=disable' sslmode = require host=a\ b").unwrap();
        assert_eq!(p.mode, SslMode::Require);
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"sslmode=disable"[..]));
    }

    #[test]
    fn urls_lose_our_keys_and_keep_the_rest() {
        let (rest, p) = split(
            "postgresql://facteur@db.example/mail?sslmode=verify-ca&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgresql://facteur@db.example/mail?application_name=x"
        );
        assert_eq!(p.mode, SslMode::VerifyCa);
        assert_eq!(p.root_cert, Some(RootCert::File("/etc/ca.pem".into())));
        let (rest, p) = split("postgres://db.example/mail?sslmode=disable").unwrap();
        assert_eq!(rest, "postgres://db.example/mail");
        assert_eq!(p.mode, SslMode::Disable);
    }

    #[test]
    fn defaults_and_refusals_follow_libpq() {
        let (_, p) = split("host=db dbname=mail").unwrap();
        assert_eq!((p.mode, p.root_cert), (SslMode::Prefer, None));
        let (_, p) = split("host=db sslrootcert=system").unwrap();
        assert_eq!(p.mode, SslMode::VerifyFull);
        for (s, says) in [
            ("host=db sslmode=verify-full", "needs sslrootcert"),
            ("host=db sslmode=verify-ca", "needs sslrootcert"),
            (
                "host=db sslmode=require sslrootcert=system",
                "needs sslmode=verify-full",
            ),
            ("host=db sslmode=allow", "not supported"),
            ("host=db sslmode=yes", "expected disable, prefer"),
            ("host=db sslcert=/c.pem", "without sslkey"),
            ("host=db sslkey=/k.pem", "without sslcert"),
        ] {
            let e = split(s).unwrap_err();
            assert!(e.contains(says), "{s}: {e}");
        }
    }

    #[test]
    fn a_string_that_does_not_scan_is_left_to_tokio_postgres() {
        let (rest, p) = split("host='unterminated sslmode=verify-full").unwrap();
        assert_eq!(rest, "host='unterminated sslmode=verify-full");
        assert_eq!(p.mode, SslMode::Prefer);
        assert!(rest.parse::<tokio_postgres::Config>().is_err());
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let (_, p) = split(&format!(
            "host=db sslmode=verify-full sslrootcert={}",
            missing.display()
        ))
        .unwrap();
        let e = PgTls::new(&p).unwrap_err();
        assert!(e.contains("sslrootcert") && e.contains("nope.pem"), "{e}");
    }
}
