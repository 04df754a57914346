//! # facteur-tls: TLS for every facteur endpoint
//!
//! What the server, the fetcher and the load generator share, so that their TLS can never drift
//! apart: the crypto provider (aws-lc-rs), the protocol versions (TLS 1.2 and 1.3 only), reading
//! a PEM file of certificates. And the server's side: loading the certificate chain and key from
//! PEM files, the rustls server configuration, reloading on SIGHUP, the identity a client
//! certificate names (SASL EXTERNAL), and the self-signed certificate of `--dev` (feature
//! `dev-cert`).
//!
//! It is a crate of its own because the server and the fetcher both need it and neither may
//! depend on the other.
//!
//! A reload builds a whole new configuration first and swaps it in only if it loaded: a bad
//! file on disk never takes the server down, and sessions already under TLS keep theirs.
//!
//! ## Layout
//! lib.rs: the shared policy ([`provider`], [`PROTOCOL_VERSIONS`], [`client_builder`],
//! [`read_certificates`]); the server's configuration ([`load`], [`TlsState`] and its reload);
//! [`client_identity`], the user a verified client certificate names; [`verify`], the clients'
//! check of a server's certificate (WebPKI, and pinned self-signed certificates); [`end_point_hash`], the
//! hash a certificate binds a channel with (SCRAM's `tls-server-end-point`); [`write_self_signed`].
//!
//! ## What this crate must never do
//! Offer a protocol version older than TLS 1.2; accept a certificate file that holds no
//! certificate; write a private key readable by others.
#![forbid(unsafe_code)]

pub mod key_log;
pub mod stream;
pub mod verify;
pub use key_log::{KeyLogError, KeyLogWriter};
pub use verify::{system_roots, trusted_file, PinningVerifier, TrustError};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio_rustls::TlsAcceptor;

/// Why a TLS configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate chain {path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("cannot read the private key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("cannot read the client CA file {path}: {reason}")]
    ClientCa { path: PathBuf, reason: String },
    #[error(
        "the private key {} does not match the certificate {}: the key must be the pair of the \
         first certificate of the chain (the server's own, before any intermediate)",
        key.display(), certificate.display()
    )]
    Mismatch { certificate: PathBuf, key: PathBuf },
    #[error("invalid TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot create a self-signed certificate: {0}")]
    SelfSigned(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// TLS 1.3 and 1.2, nothing older, for every TLS endpoint of facteur.
pub const PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The crypto provider of every TLS endpoint of facteur: aws-lc-rs.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The provider of facteur's TLS servers: [`provider`], its cipher suites in the order the
/// server picks them (it ignores the client's order). AES-128-GCM first, with SHA-256 for the
/// handshake: 128-bit keys are well beyond any attack in sight (the suite every TLS 1.3 stack
/// must implement, and the one browsers prefer), and the suite costs less per octet than
/// AES-256 (10 rounds of AES, not 14) and per handshake (SHA-256 has CPU instructions of its
/// own on today's x86 and ARM processors; SHA-384 has none). Then AES-256-GCM and
/// ChaCha20-Poly1305, in each protocol version. No suite is added or removed.
pub fn server_provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.sort_by_key(|suite| {
        use rustls::CipherSuite as S;
        match suite.suite() {
            S::TLS13_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
            S::TLS13_AES_256_GCM_SHA384
            | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 1,
            _ => 2,
        }
    });
    Arc::new(provider)
}

/// Where every rustls client configuration of facteur starts: `provider`, [`PROTOCOL_VERSIONS`].
/// The caller chooses how server certificates are verified.
pub fn client_builder(
    provider: Arc<CryptoProvider>,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, rustls::Error> {
    rustls::ClientConfig::builder_with_provider(provider).with_protocol_versions(PROTOCOL_VERSIONS)
}

/// The certificates of a PEM file of trusted certificates (a CA file), in order. The error is
/// the reason only: the caller names the file and the setting.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no CERTIFICATE in the file (a PEM file is expected)".into());
    }
    Ok(certs)
}

/// The files of a TLS setup.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// Client certificates signed by these CAs are requested (not required) and verified;
    /// a verified one allows SASL EXTERNAL.
    pub client_ca: Option<PathBuf>,
}

/// TLS 1.2 sessions remembered for resumption by session id, at most (a few hundred octets
/// each; TLS 1.3 and ticket-aware TLS 1.2 clients resume from stateless tickets instead).
pub const SESSION_CACHE: usize = 4096;

/// Build the rustls configuration from PEM files.
pub fn load(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.certificate)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificate {
            path: files.certificate.clone(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        let swapped = holds(&files.certificate, "PRIVATE KEY-----");
        return Err(TlsError::Certificate {
            path: files.certificate.clone(),
            reason: if swapped {
                "no CERTIFICATE in the file, which holds a private key (are certificate and \
                 private_key swapped?)"
            } else {
                "no CERTIFICATE in the file"
            }
            .into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&files.private_key).map_err(|e| TlsError::Key {
        path: files.private_key.clone(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound
                if holds(&files.private_key, "BEGIN CERTIFICATE-----") =>
            {
                "no PRIVATE KEY in the file, which holds a certificate (are certificate and \
                 private_key swapped?)"
                    .into()
            }
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PRIVATE KEY in the file (expected a PEM block \
                 -----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)"
                    .into()
            }
            e => e.to_string(),
        },
    })?;
    let provider = server_provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(PROTOCOL_VERSIONS)?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let ca_error = |reason: String| TlsError::ClientCa {
                path: ca.clone(),
                reason,
            };
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certificates(ca).map_err(ca_error)? {
                roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| ca_error(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::Mismatch {
            certificate: files.certificate.clone(),
            key: files.private_key.clone(),
        },
        e => TlsError::Rustls(e),
    })?;
    // The server's order of cipher suites, strongest first, not whatever a client lists first:
    // a client (or someone who tampers with its hello, for TLS 1.2) cannot steer the session to
    // the weakest suite both sides accept.
    config.ignore_client_order = true;
    // POP3 has no ALPN identifier of its own in common use; accept clients that send none.
    config.alpn_protocols = Vec::new();
    // A client that reconnects (a phone polling every few minutes) resumes its session from a
    // ticket instead of a full handshake: no certificate signature, a fraction of the CPU.
    // Stateless tickets (sealed with keys that rotate every few hours and never leave this
    // process; new keys at each reload) cost no memory per client; the cache serves TLS 1.2
    // clients that resume by session id.
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    // One ticket per session, not rustls' default two (meant for browsers opening connections
    // in parallel): a mail client reconnects one session after another, and each resumed
    // session hands it the next ticket. One ticket sealed and sent less per session.
    config.send_tls13_tickets = 1;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
    Ok(Arc::new(config))
}

/// `config` writing its sessions' secrets to `key_log`.
fn with_key_log(
    config: Arc<rustls::ServerConfig>,
    key_log: &Arc<KeyLogWriter>,
) -> Arc<rustls::ServerConfig> {
    let mut config = Arc::unwrap_or_clone(config);
    config.key_log = key_log.clone();
    Arc::new(config)
}

/// True if the file at `path` holds `marker` (to explain a file that parsed to nothing).
fn holds(path: &Path, marker: &str) -> bool {
    std::fs::read(path).is_ok_and(|b| b.windows(marker.len()).any(|w| w == marker.as_bytes()))
}

/// The current TLS configuration, replaceable while the server runs (SIGHUP).
pub struct TlsState {
    files: TlsFiles,
    current: RwLock<Arc<rustls::ServerConfig>>,
    key_log: Option<Arc<KeyLogWriter>>,
}

impl TlsState {
    pub fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let config = load(&files)?;
        Ok(Self {
            files,
            current: RwLock::new(config),
            key_log: None,
        })
    }

    /// Every session's secrets written to `key_log` from now on, reloads included.
    pub fn with_key_log(mut self, key_log: Arc<KeyLogWriter>) -> Self {
        let current = self.current.get_mut().unwrap_or_else(|p| p.into_inner());
        *current = with_key_log(current.clone(), &key_log);
        self.key_log = Some(key_log);
        self
    }

    /// The key log in use, if any (the server warns at each session while it is on).
    pub fn key_log(&self) -> Option<&KeyLogWriter> {
        self.key_log.as_deref()
    }

    /// An acceptor with the configuration in force now.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        TlsAcceptor::from(config)
    }

    /// The configuration in force now (for [`stream::accept`]).
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether a client CA is configured (so EXTERNAL can be offered under TLS).
    pub fn has_client_ca(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// Load the files again; keep the old configuration if they do not load.
    pub fn reload(&self) -> Result<(), TlsError> {
        let mut config = load(&self.files)?;
        if let Some(key_log) = &self.key_log {
            config = with_key_log(config, key_log);
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
    }
}

/// Why [`write_self_signed`] cannot work in a build without the `dev-cert` feature.
pub const NO_DEV_CERT: &str = "this facteur was built without the dev-cert feature, so it cannot \
     make the self-signed certificate of --dev: build it with default features, or run `serve` \
     with a configuration that names a certificate and a private key";

/// Write a self-signed certificate for `localhost`, 127.0.0.1 and ::1 into `dir` (for `--dev`
/// and tests); returns the files. The key file is created with mode 0600. Without the
/// `dev-cert` feature, always [`TlsError::SelfSigned`] with [`NO_DEV_CERT`].
#[cfg(not(feature = "dev-cert"))]
pub fn write_self_signed(_dir: &Path) -> Result<TlsFiles, TlsError> {
    Err(TlsError::SelfSigned(NO_DEV_CERT.into()))
}

/// Write a self-signed certificate for `localhost`, 127.0.0.1 and ::1 into `dir` (for `--dev`
/// and tests); returns the files. The key file is created with mode 0600.
#[cfg(feature = "dev-cert")]
pub fn write_self_signed(dir: &Path) -> Result<TlsFiles, TlsError> {
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let ck = rcgen::generate_simple_self_signed(names)
        .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
    let certificate = dir.join("cert.pem");
    let private_key = dir.join("key.pem");
    write_file(&certificate, ck.cert.pem().as_bytes(), 0o644)?;
    write_file(
        &private_key,
        ck.signing_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    Ok(TlsFiles {
        certificate,
        private_key,
        client_ca: None,
    })
}

#[cfg(feature = "dev-cert")]
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)
}

/// The identity a verified client certificate asserts, for SASL EXTERNAL: its first
/// subjectAltName rfc822Name (an e-mail address) if any, else its subject's commonName.
///
/// A minimal DER walk of the few fields needed; anything unexpected gives `None` (and so no
/// EXTERNAL), never a panic. The certificate itself was already verified by rustls.
pub fn client_identity(cert_der: &[u8]) -> Option<String> {
    let (_, cert, _) = der_read(cert_der)?; // Certificate ::= SEQUENCE
    let (_, mut tbs, _) = der_read(cert)?; // TBSCertificate ::= SEQUENCE
    let mut fields = Vec::new();
    while !tbs.is_empty() {
        let (tag, value, rest) = der_read(tbs)?;
        fields.push((tag, value));
        tbs = rest;
    }
    // Skip the optional [0] version; then serial, signature, issuer, validity, subject.
    let start = usize::from(fields.first()?.0 == 0xa0);
    let subject = fields.get(start + 4)?.1;
    let san = fields
        .iter()
        .find(|(tag, _)| *tag == 0xa3)
        .and_then(|(_, exts)| subject_alt_email(exts));
    san.or_else(|| common_name(subject))
}

/// OID 2.5.29.17, subjectAltName.
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];
/// OID 2.5.4.3, commonName.
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];

fn subject_alt_email(explicit: &[u8]) -> Option<String> {
    let (_, mut exts, _) = der_read(explicit)?; // Extensions ::= SEQUENCE OF Extension
    while !exts.is_empty() {
        let (_, ext, rest) = der_read(exts)?;
        exts = rest;
        let (_, oid, mut tail) = der_read(ext)?;
        if oid != OID_SAN {
            continue;
        }
        let (mut tag, mut value, after) = der_read(tail)?;
        if tag == 0x01 {
            // The optional `critical` BOOLEAN.
            tail = after;
            (tag, value, _) = der_read(tail)?;
        }
        if tag != 0x04 {
            return None;
        }
        let (_, mut names, _) = der_read(value)?; // GeneralNames ::= SEQUENCE OF GeneralName
        while !names.is_empty() {
            let (tag, name, rest) = der_read(names)?;
            names = rest;
            if tag == 0x81 {
                return printable(name);
            }
        }
    }
    None
}

fn common_name(mut name: &[u8]) -> Option<String> {
    while !name.is_empty() {
        let (_, mut set, rest) = der_read(name)?; // RelativeDistinguishedName ::= SET
        name = rest;
        while !set.is_empty() {
            let (_, atv, rest) = der_read(set)?;
            set = rest;
            let (_, oid, tail) = der_read(atv)?;
            if oid == OID_CN {
                let (_, value, _) = der_read(tail)?;
                return printable(value);
            }
        }
    }
    None
}

fn printable(b: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(b).ok()?;
    (!s.is_empty() && s.chars().all(|c| !c.is_control())).then(|| s.to_string())
}

/// The hash function of a certificate's signature, as `tls-server-end-point` channel binding
/// (RFC 5929 section 4.1) uses it: MD5 and SHA-1 signatures bind with SHA-256.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndPointHash {
    Sha256,
    Sha384,
    Sha512,
}

/// The `tls-server-end-point` hash of a certificate: from its signatureAlgorithm, for RSA
/// PKCS#1 v1.5 and ECDSA signatures. `None` for any other algorithm (RSA-PSS, whose hash is in
/// its parameters; Ed25519, for which RFC 5929 defines none; SHA-224) or a certificate that
/// does not parse: the caller then offers no channel binding, never a wrong one.
pub fn end_point_hash(cert_der: &[u8]) -> Option<EndPointHash> {
    // 1.2.840.113549.1.1.x (PKCS #1) and 1.2.840.10045.4.x (ECDSA), DER-encoded.
    const PKCS1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    let (_, cert, _) = der_read(cert_der)?; // Certificate ::= SEQUENCE
    let (_, _tbs, rest) = der_read(cert)?;
    let (_, algorithm, _) = der_read(rest)?; // AlgorithmIdentifier ::= SEQUENCE
    let (tag, oid, _) = der_read(algorithm)?;
    if tag != 0x06 {
        return None;
    }
    if let Some(arc) = oid.strip_prefix(PKCS1) {
        return match arc {
            // md5WithRSAEncryption, sha1WithRSAEncryption, sha256WithRSAEncryption
            [0x04] | [0x05] | [0x0b] => Some(EndPointHash::Sha256),
            [0x0c] => Some(EndPointHash::Sha384),
            [0x0d] => Some(EndPointHash::Sha512),
            _ => None,
        };
    }
    match oid.strip_prefix(ECDSA)? {
        // ecdsa-with-SHA1, ecdsa-with-SHA256, -SHA384, -SHA512
        [0x01] | [0x03, 0x02] => Some(EndPointHash::Sha256),
        [0x03, 0x03] => Some(EndPointHash::Sha384),
        [0x03, 0x04] => Some(EndPointHash::Sha512),
        _ => None,
    }
}

/// Read one DER TLV: (tag, value, rest). Only single-byte tags, which is all X.509 uses here.
fn der_read(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, mut b) = b.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let (len_bytes, rest) = b.split_at(n);
        b = rest;
        len_bytes
            .iter()
            .fold(0usize, |acc, &x| (acc << 8) | usize::from(x))
    };
    if b.len() < len {
        return None;
    }
    let (value, rest) = b.split_at(len);
    Some((tag, value, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "dev-cert")]
    #[test]
    fn self_signed_loads_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_self_signed(dir.path()).unwrap();
        let state = TlsState::new(files.clone()).unwrap();
        let before = Arc::as_ptr(&state.current.read().unwrap().clone());
        state.reload().unwrap();
        assert_ne!(before, Arc::as_ptr(&state.current.read().unwrap().clone()));
        // A broken file on reload keeps the old configuration.
        std::fs::write(&files.certificate, "garbage").unwrap();
        let kept = Arc::as_ptr(&state.current.read().unwrap().clone());
        assert!(state.reload().is_err());
        assert_eq!(kept, Arc::as_ptr(&state.current.read().unwrap().clone()));
    }

    /// Runs a handshake between `client` and `server` in memory, then lets the client read
    /// what the server sends after it (TLS 1.3 tickets).
    fn handshake(client: &mut rustls::ClientConnection, server: &mut rustls::ServerConnection) {
        for _ in 0..20 {
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                server.read_tls(&mut &buf[..]).unwrap();
                server.process_new_packets().unwrap();
            }
            let mut buf = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                client.read_tls(&mut &buf[..]).unwrap();
                client.process_new_packets().unwrap();
            }
            if !client.is_handshaking() && !server.is_handshaking() && !server.wants_write() {
                return;
            }
        }
        panic!("the handshake did not finish");
    }

    /// Clients that reconnect resume their sessions, and more of them than rustls's default
    /// server cache (256 sessions) holds: the first of 300 clients still resumes after the
    /// other 299 came, with TLS 1.3 (stateless tickets) and TLS 1.2 (tickets, or the cache).
    #[cfg(feature = "dev-cert")]
    #[test]
    fn clients_that_reconnect_resume_their_sessions() {
        use rustls::HandshakeKind;
        let dir = tempfile::tempdir().unwrap();
        let files = write_self_signed(dir.path()).unwrap();
        let server_config = load(&files).unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        for version in PROTOCOL_VERSIONS {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certificates(&files.certificate).unwrap() {
                roots.add(cert).unwrap();
            }
            // Each client its own configuration: its own store of sessions.
            let clients: Vec<Arc<rustls::ClientConfig>> = (0..300)
                .map(|_| {
                    Arc::new(
                        rustls::ClientConfig::builder_with_provider(provider())
                            .with_protocol_versions(&[version])
                            .unwrap()
                            .with_root_certificates(roots.clone())
                            .with_no_client_auth(),
                    )
                })
                .collect();
            let connect = |config: &Arc<rustls::ClientConfig>| {
                let mut client =
                    rustls::ClientConnection::new(config.clone(), name.clone()).unwrap();
                let mut server = rustls::ServerConnection::new(server_config.clone()).unwrap();
                handshake(&mut client, &mut server);
                (client.handshake_kind(), server.handshake_kind())
            };
            let full = Some(HandshakeKind::Full);
            let resumed = Some(HandshakeKind::Resumed);
            for config in &clients {
                assert_eq!(connect(config), (full, full), "{version:?}");
            }
            for (i, config) in clients.iter().enumerate() {
                assert_eq!(
                    connect(config),
                    (resumed, resumed),
                    "{version:?}, client {i}"
                );
            }
        }
    }

    fn cert_with(cn: &str, emails: &[&str]) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.subject_alt_names = emails
            .iter()
            .map(|e| rcgen::SanType::Rfc822Name((*e).try_into().unwrap()))
            .collect();
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn client_identity_prefers_san_email_then_cn() {
        assert_eq!(
            client_identity(&cert_with("Alice", &["alice@example.org"])).as_deref(),
            Some("alice@example.org")
        );
        assert_eq!(
            client_identity(&cert_with("bob", &[])).as_deref(),
            Some("bob")
        );
    }

    #[test]
    fn end_point_hash_follows_the_signature_algorithm() {
        let sign = |alg: &'static rcgen::SignatureAlgorithm| {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let params = rcgen::CertificateParams::new(vec!["db.example".to_string()]).unwrap();
            params.self_signed(&key).unwrap().der().to_vec()
        };
        assert_eq!(
            end_point_hash(&sign(&rcgen::PKCS_ECDSA_P256_SHA256)),
            Some(EndPointHash::Sha256)
        );
        assert_eq!(
            end_point_hash(&sign(&rcgen::PKCS_ECDSA_P384_SHA384)),
            Some(EndPointHash::Sha384)
        );
        // RFC 5929 defines no hash for Ed25519: no channel binding rather than a wrong one.
        assert_eq!(end_point_hash(&sign(&rcgen::PKCS_ED25519)), None);
        let good = sign(&rcgen::PKCS_ECDSA_P256_SHA256);
        for cut in 0..good.len() {
            let _ = end_point_hash(&good[..cut]);
        }
        assert_eq!(end_point_hash(&[]), None);
    }

    #[test]
    fn client_identity_never_panics_on_garbage() {
        let good = cert_with("carol", &["c@example.org"]);
        for cut in 0..good.len() {
            let _ = client_identity(&good[..cut]);
        }
        let mut flipped = good.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0xff;
            let _ = client_identity(&flipped);
            flipped[i] ^= 0xff;
        }
        assert_eq!(client_identity(&[]), None);
    }

    /// A client that lists the server's least preferred suite first still gets the server's
    /// first choice.
    #[cfg(feature = "dev-cert")]
    #[test]
    fn the_server_chooses_the_cipher_suite() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_self_signed(dir.path()).unwrap();
        let server_config = load(&files).unwrap();
        let ours: Vec<_> = server_config
            .crypto_provider()
            .cipher_suites
            .iter()
            .copied()
            .filter(|s| s.version() == &rustls::version::TLS13)
            .collect();
        assert!(ours.len() >= 2, "{ours:?}");
        let mut reversed = ours.clone();
        reversed.reverse();
        let provider = rustls::crypto::CryptoProvider {
            cipher_suites: reversed,
            ..rustls::crypto::aws_lc_rs::default_provider()
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&files.certificate).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = rustls::Connection::Client(
            rustls::ClientConnection::new(Arc::new(client_config), name).unwrap(),
        );
        let mut server =
            rustls::Connection::Server(rustls::ServerConnection::new(server_config).unwrap());
        fn transfer(from: &mut rustls::Connection, to: &mut rustls::Connection) {
            let mut wire = Vec::new();
            while from.wants_write() {
                from.write_tls(&mut wire).unwrap();
            }
            let mut rest = &wire[..];
            while !rest.is_empty() {
                to.read_tls(&mut rest).unwrap();
                to.process_new_packets().unwrap();
            }
        }
        for _ in 0..10 {
            transfer(&mut client, &mut server);
            transfer(&mut server, &mut client);
        }
        assert!(!client.is_handshaking() && !server.is_handshaking());
        let chosen = server.negotiated_cipher_suite().unwrap().suite();
        assert_eq!(chosen, ours[0].suite());
        // The server's first choice: AES-128-GCM (see `server_provider`); every suite of the
        // default provider is still offered.
        assert_eq!(chosen, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        assert_eq!(ours.len(), {
            let all = &crate::provider().cipher_suites;
            all.iter()
                .filter(|s| s.version() == &rustls::version::TLS13)
                .count()
        });
        assert_eq!(client.negotiated_cipher_suite().unwrap().suite(), chosen);
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            certificate: dir.path().join("missing.pem"),
            private_key: dir.path().join("key.pem"),
            client_ca: None,
        };
        let e = load(&files).unwrap_err().to_string();
        assert!(e.contains("missing.pem"), "{e}");
        std::fs::write(dir.path().join("empty.pem"), "").unwrap();
        let files = TlsFiles {
            certificate: dir.path().join("empty.pem"),
            ..files
        };
        let e = load(&files).unwrap_err().to_string();
        assert!(e.contains("no CERTIFICATE"), "{e}");
    }

    #[cfg(feature = "dev-cert")]
    #[test]
    fn a_key_of_another_certificate_or_swapped_files_are_named() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let fa = write_self_signed(a.path()).unwrap();
        let fb = write_self_signed(b.path()).unwrap();
        let mismatched = TlsFiles {
            certificate: fa.certificate.clone(),
            private_key: fb.private_key.clone(),
            client_ca: None,
        };
        let e = load(&mismatched).unwrap_err().to_string();
        assert!(e.contains("does not match"), "{e}");
        assert!(e.contains(&*fa.certificate.to_string_lossy()), "{e}");
        assert!(e.contains(&*fb.private_key.to_string_lossy()), "{e}");
        let swapped = TlsFiles {
            certificate: fa.certificate.clone(),
            private_key: fa.certificate.clone(),
            client_ca: None,
        };
        let e = load(&swapped).unwrap_err().to_string();
        assert!(e.contains("holds a certificate"), "{e}");
        let swapped = TlsFiles {
            certificate: fa.private_key.clone(),
            private_key: fa.private_key.clone(),
            client_ca: None,
        };
        let e = load(&swapped).unwrap_err().to_string();
        assert!(e.contains("holds a private key"), "{e}");
        assert!(load(&fa).is_ok());
    }
}
