//! The check of a server's certificate that facteur's clients share (the fetcher, the
//! PostgreSQL store): WebPKI against trusted certificates, with one allowance that libpq and
//! curl make too: a self-signed server certificate marked as a CA (as `openssl req -x509`
//! makes by default) is accepted when it is one of the trusted certificates, byte for byte.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

/// The trusted certificates of a PEM file, and the same certificates as they are in the file
/// (for [`PinningVerifier`]). The error names the file and the certificate.
pub fn trusted_file(
    path: &Path,
) -> Result<(RootCertStore, Vec<CertificateDer<'static>>), TrustError> {
    let certs = crate::read_certificates(path).map_err(|reason| TrustError::File {
        path: path.display().to_string(),
        reason,
    })?;
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        roots
            .add(cert.clone())
            .map_err(|source| TrustError::Untrusted {
                path: path.display().to_string(),
                index: i + 1,
                source,
            })?;
    }
    Ok((roots, certs))
}

/// The system's trusted certificates (`SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured).
pub fn system_roots() -> Result<RootCertStore, TrustError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(TrustError::NoSystemRoots(
            found.errors.first().map(|e| e.to_string()),
        ));
    }
    Ok(roots)
}

/// Why trusted certificates could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("{path}: certificate {index} cannot be trusted: {source}")]
    Untrusted {
        path: String,
        index: usize,
        source: rustls::Error,
    },
    #[error("no trusted certificate in the system's store{}", .0.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    NoSystemRoots(Option<String>),
}

/// A server certificate check: none at all ([`PinningVerifier::any_certificate`], libpq's
/// `sslmode=require` without a root certificate), its chain, or its chain and its name. The
/// handshake's signatures are always checked.
#[derive(Debug)]
pub struct PinningVerifier {
    /// The trusted certificates, and the same as they are in their file.
    trust: Option<(Arc<RootCertStore>, Vec<CertificateDer<'static>>)>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl PinningVerifier {
    /// Checks the chain against `roots`, and the name when `check_name`; a self-signed
    /// certificate marked as a CA passes when it is one of `pinned`.
    pub fn new(
        roots: RootCertStore,
        pinned: Vec<CertificateDer<'static>>,
        check_name: bool,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        Self {
            trust: Some((Arc::new(roots), pinned)),
            check_name,
            provider,
        }
    }

    /// Accepts any certificate: encryption without authentication of the server.
    pub fn any_certificate(provider: Arc<CryptoProvider>) -> Self {
        Self {
            trust: None,
            check_name: false,
            provider,
        }
    }
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some((roots, pinned)) = &self.trust else {
            return Ok(ServerCertVerified::assertion());
        };
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        match rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        ) {
            Ok(()) => {}
            // WebPKI checks the validity period before the basic constraints: reaching
            // CaUsedAsEndEntity means the period was fine (a test holds webpki to that); the
            // name is checked below.
            Err(e)
                if is_ca_used_as_end_entity(&e)
                    && pinned.iter().any(|p| p.as_ref() == end_entity.as_ref()) => {}
            Err(e) => return Err(e),
        }
        if self.check_name {
            rustls::client::verify_server_name(&parsed, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Whether `e` is WebPKI's "a CA certificate used as an end entity", which rustls passes on
/// as an opaque error.
pub fn is_ca_used_as_end_entity(e: &rustls::Error) -> bool {
    matches!(e, rustls::Error::InvalidCertificate(CertificateError::Other(other))
        if matches!(other.0.downcast_ref::<webpki::Error>(), Some(webpki::Error::CaUsedAsEndEntity)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

    /// A self-signed certificate for `name`, marked as a CA when `ca` (as `openssl req -x509`
    /// makes), valid from `from` to `to` (years).
    fn self_signed(name: &str, ca: bool, from: i32, to: i32) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        if ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(to, 1, 1);
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    fn verify(
        verifier: &PinningVerifier,
        cert: &CertificateDer<'static>,
        name: &str,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_800_000_000));
        let name = ServerName::try_from(name.to_owned()).unwrap();
        verifier.verify_server_cert(cert, &[], &name, &[], now)
    }

    fn pinning(certs: &[&CertificateDer<'static>], check_name: bool) -> PinningVerifier {
        let mut roots = RootCertStore::empty();
        for c in certs {
            roots.add((*c).clone()).unwrap();
        }
        let pinned = certs.iter().map(|c| (*c).clone()).collect();
        PinningVerifier::new(roots, pinned, check_name, crate::provider())
    }

    #[test]
    fn a_pinned_self_signed_ca_certificate_passes_with_its_name_only() {
        let cert = self_signed("db.example", true, 2020, 2040);
        let v = pinning(&[&cert], true);
        verify(&v, &cert, "db.example").unwrap();
        let e = verify(&v, &cert, "other.example").unwrap_err();
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
                    | rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForNameContext { .. }
                    )
            ),
            "{e:?}"
        );
        // Without the name check (verify-ca), any name.
        verify(&pinning(&[&cert], false), &cert, "other.example").unwrap();
    }

    #[test]
    fn a_ca_certificate_that_is_not_pinned_is_refused() {
        let trusted = self_signed("db.example", true, 2020, 2040);
        let other = self_signed("db.example", true, 2020, 2040);
        let e = verify(&pinning(&[&trusted], true), &other, "db.example").unwrap_err();
        assert!(matches!(e, rustls::Error::InvalidCertificate(_)), "{e:?}");
    }

    #[test]
    fn an_expired_pinned_certificate_is_refused() {
        let cert = self_signed("db.example", true, 2000, 2010);
        let e = verify(&pinning(&[&cert], true), &cert, "db.example").unwrap_err();
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(CertificateError::Expired)
                    | rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
            ),
            "{e:?}"
        );
    }

    #[test]
    fn any_certificate_still_checks_nothing_but_signatures() {
        let cert = self_signed("db.example", false, 2000, 2010);
        let v = PinningVerifier::any_certificate(crate::provider());
        verify(&v, &cert, "anything.example").unwrap();
        assert!(!v.supported_verify_schemes().is_empty());
    }
}
