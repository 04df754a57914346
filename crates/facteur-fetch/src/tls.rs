//! The fetcher's side of TLS: which server certificates it trusts, and what it tells the person
//! running it when it refuses one (what is wrong, and what to do), instead of rustls' internals.
//!
//! Trust: the certificates of `ca_file`, or the system's store, checked by rustls' WebPKI
//! verifier (chain, validity period, name, key usage). One addition, as curl and OpenSSL do:
//! a certificate that is itself in `ca_file`, byte for byte, is accepted as the server's own
//! even when it says `CA:TRUE` (what `openssl req -x509` makes by default), provided it is
//! valid now and names the host connected to. Such a pin is as strong as trust can be (the
//! server proves it holds that very certificate's key), and the name is still checked because
//! a `ca_file` may hold the certificates of several servers.
//!
//! What this module must never do: accept a certificate that is neither pinned nor chained to
//! a trusted one, or skip the name or the validity period of a pinned one.

use super::{Pop3Error, Security, Target};
use facteur_tls::{client_builder, PinningVerifier, TrustError};
use rustls::pki_types::UnixTime;
use rustls::CertificateError;
use std::path::Path;
use std::sync::Arc;

/// A rustls client configuration: TLS 1.2 and 1.3 with aws-lc-rs, trusting the certificates
/// of `ca_file` (and pinning each of them, see the module documentation), or the system's
/// store (`SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured).
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, Pop3Error> {
    let (roots, pinned) = match ca_file {
        Some(path) => facteur_tls::trusted_file(path).map_err(|e| match e {
            TrustError::Untrusted {
                path,
                index,
                source,
            } => Pop3Error::Tls(format!(
                "{path}: certificate {index} cannot be trusted: {}",
                explain_rustls(&source, None)
            )),
            e => Pop3Error::Tls(e.to_string()),
        })?,
        None => (
            facteur_tls::system_roots().map_err(|e| {
                Pop3Error::Tls(format!(
                    "{e}; give a CA file (--ca-file, or ca_file in the configuration)"
                ))
            })?,
            Vec::new(),
        ),
    };
    let provider = facteur_tls::provider();
    let verifier = PinningVerifier::new(roots, pinned, true, provider.clone());
    let mut config = client_builder(provider)
        .map_err(|e| Pop3Error::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // The session secrets go to the file SSLKEYLOGFILE names, when it is set, as curl and
    // browsers do: Wireshark then decrypts a capture (nothing is written when it is unset).
    config.key_log = Arc::new(rustls::KeyLogFile::new());
    Ok(Arc::new(config))
}

/// What went wrong in a TLS handshake with `target`, for a person: what is wrong and what to
/// do about it.
pub fn explain(e: &std::io::Error, target: &Target) -> String {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(r) => explain_rustls(r, Some(target)),
        None if matches!(
            e.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        ) =>
        {
            "the server closed the connection during the TLS handshake (it may not like TLS 1.2/1.3 or the name asked for; its log says why)".into()
        }
        None => format!("network error during the TLS handshake: {e}"),
    }
}

/// [`explain`] for a rustls error; `target` is `None` for a certificate of `ca_file`.
fn explain_rustls(e: &rustls::Error, target: Option<&Target>) -> String {
    let whose = match target {
        Some(t) => format!("the certificate of {}", super::bracket(&t.host)),
        None => "it".into(),
    };
    let trusted = match target.and_then(|t| t.ca_file.as_deref()) {
        Some(ca) => format!("the certificates in {}", ca.display()),
        None => "the system's certificate store".into(),
    };
    let check = match target {
        Some(t) => format!(
            "openssl s_client -connect {}:{}{} -showcerts",
            super::bracket(&t.host),
            t.port,
            if t.security == Security::Starttls {
                " -starttls pop3"
            } else {
                ""
            }
        ),
        None => "openssl x509 -text -noout -in FILE".into(),
    };
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => format!(
                "{whose} is not signed by an authority facteur trusts ({trusted}). If the server uses a self-signed certificate or an authority of its own, check it ({check}) and give it, in PEM, with --ca-file (ca_file in the configuration)"
            ),
            CertificateError::NotValidForNameContext { expected, presented } => {
                let names = if presented.is_empty() {
                    "it names no host at all (no subjectAltName)".to_string()
                } else {
                    let names: Vec<String> = presented.iter().map(|p| presented_name(p)).collect();
                    format!("it is for {}", names.join(", "))
                };
                format!(
                    "{whose} is not valid for the name {}: {names}. Connect with one of its names, or have the certificate made for this one",
                    expected.to_str()
                )
            }
            CertificateError::NotValidForName => format!(
                "{whose} is not valid for this host name; connect with a name it holds ({check})"
            ),
            CertificateError::ExpiredContext { time, not_after } => format!(
                "{whose} expired on {} ({} ago); the server's administrator must renew it (or this machine's clock is wrong: it says {})",
                utc(*not_after),
                ago(time.as_secs().saturating_sub(not_after.as_secs())),
                utc(*time)
            ),
            CertificateError::Expired => format!("{whose} has expired; the server's administrator must renew it"),
            CertificateError::NotValidYetContext { time, not_before } => format!(
                "{whose} is not valid before {}; this machine's clock says {}: check the clock",
                utc(*not_before),
                utc(*time)
            ),
            CertificateError::NotValidYet => format!("{whose} is not valid yet: check this machine's clock"),
            CertificateError::Revoked => format!("{whose} has been revoked by its authority: do not connect"),
            CertificateError::BadSignature => format!(
                "the signature of {whose} does not verify with the key of its issuer as found in {trusted}: it was signed by another certificate of the same name, or it is damaged or forged. Look at it ({check}) and give the right certificate with --ca-file (ca_file)"
            ),
            CertificateError::UnsupportedSignatureAlgorithmContext {
                signature_algorithm_id, ..
            } => format!(
                "{whose} is signed with {}, which facteur does not accept (it accepts RSA with SHA-256/384/512, RSA-PSS, ECDSA P-256/P-384/P-521 with SHA-256/384, and Ed25519); the certificate must be made again with one of those",
                algorithm(signature_algorithm_id)
            ),
            CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext {
                signature_algorithm_id,
                public_key_algorithm_id,
            } => format!(
                "{whose} is signed with {} (key: {}), a pair facteur does not accept (ECDSA P-256 and P-384 keys sign with SHA-256 or SHA-384); the certificate must be made again with one of those (with openssl: -sha256)",
                algorithm(signature_algorithm_id),
                algorithm(public_key_algorithm_id)
            ),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => format!(
                "{whose} is not for a TLS server (its extendedKeyUsage lacks serverAuth)"
            ),
            CertificateError::BadEncoding => format!("{whose} is malformed (not valid DER)"),
            CertificateError::Other(other)
                if matches!(other.0.downcast_ref::<webpki::Error>(), Some(webpki::Error::CaUsedAsEndEntity)) =>
            {
                match target.and_then(|t| t.ca_file.as_deref()) {
                    Some(ca) => format!(
                        "{whose} is an authority's (CA:TRUE), not a server's, and it is not in {}: facteur accepts such a certificate only pinned, that is when this very certificate is in the CA file. Check it ({check}) and put it in the file given with --ca-file (ca_file)",
                        ca.display()
                    ),
                    None => format!(
                        "{whose} is an authority's (CA:TRUE), not a server's: facteur accepts such a certificate only pinned. Check it ({check}), save it in PEM and give it with --ca-file (ca_file in the configuration)"
                    ),
                }
            }
            CertificateError::Other(other) => match other.0.downcast_ref::<webpki::Error>() {
                Some(w) => format!("{whose} was refused: {}", webpki_words(w)),
                None => format!("{whose} was refused: {other}"),
            },
            other => format!("{whose} was refused: {other}"),
        },
        rustls::Error::InvalidMessage(_) => match target {
            Some(t) if t.security == Security::Tls => format!(
                "the server at port {} did not answer in TLS: is it a POP3S port? (for a plain POP3 port, with STLS, use pop3:// instead of pop3s://)",
                t.port
            ),
            _ => "the server did not speak TLS after accepting STLS".into(),
        },
        rustls::Error::NoCertificatesPresented => "the server presented no certificate".into(),
        rustls::Error::AlertReceived(alert) => format!(
            "the server ended the TLS handshake ({alert:?} alert): it may accept neither TLS 1.2 nor TLS 1.3, or none of facteur's ciphers"
        ),
        rustls::Error::PeerIncompatible(why) => format!(
            "the server's TLS and facteur's have nothing in common ({why:?}): facteur speaks TLS 1.2 and 1.3 with modern ciphers only"
        ),
        other => other.to_string(),
    }
}

/// A name of a certificate as WebPKI reports it (`DnsName("a.example")`, `IpAddress(1.2.3.4)`),
/// as a person writes it.
fn presented_name(p: &str) -> String {
    if let Some(dns) = p
        .strip_prefix("DnsName(\"")
        .and_then(|r| r.strip_suffix("\")"))
    {
        return dns.to_string();
    }
    if let Some(ip) = p
        .strip_prefix("IpAddress(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return ip.to_string();
    }
    if let Some(uri) = p
        .strip_prefix("UniformResourceIdentifier(\"")
        .and_then(|r| r.strip_suffix("\")"))
    {
        return format!("the URI {uri}");
    }
    p.to_string()
}

/// Words for the WebPKI errors that rustls passes on as they are.
fn webpki_words(e: &webpki::Error) -> String {
    match e {
        webpki::Error::EndEntityUsedAsCa => {
            "a server's certificate (CA:FALSE) was used to sign another".into()
        }
        webpki::Error::PathLenConstraintViolated => {
            "the chain is longer than an authority allows".into()
        }
        webpki::Error::NameConstraintViolation => {
            "the name is outside what the authority may sign for".into()
        }
        webpki::Error::MaximumPathBuildCallsExceeded
        | webpki::Error::MaximumPathDepthExceeded
        | webpki::Error::MaximumSignatureChecksExceeded => {
            "the chain of certificates is too long or tangled".into()
        }
        other => format!("{other:?}"),
    }
}

/// An algorithm identifier (DER, from its OID on) by name, or its dotted OID.
fn algorithm(der: &[u8]) -> String {
    let Some(oid) = oid_of(der) else {
        return "an unknown algorithm".into();
    };
    let name = match oid.as_str() {
        "1.2.840.113549.1.1.1" => "RSA",
        "1.2.840.113549.1.1.5" => "RSA with SHA-1",
        "1.2.840.113549.1.1.10" => "RSA-PSS",
        "1.2.840.113549.1.1.11" => "RSA with SHA-256",
        "1.2.840.113549.1.1.12" => "RSA with SHA-384",
        "1.2.840.113549.1.1.13" => "RSA with SHA-512",
        "1.2.840.10045.2.1" => {
            // id-ecPublicKey: the curve follows.
            let curve = der
                .get(usize::from(der.get(1).copied().unwrap_or(0)) + 2..)
                .and_then(oid_of);
            return match curve.as_deref() {
                Some("1.2.840.10045.3.1.7") => "ECDSA P-256".into(),
                Some("1.3.132.0.34") => "ECDSA P-384".into(),
                Some("1.3.132.0.35") => "ECDSA P-521".into(),
                Some(c) => format!("ECDSA (curve {c})"),
                None => "ECDSA".into(),
            };
        }
        "1.2.840.10045.4.1" => "ECDSA with SHA-1",
        "1.2.840.10045.4.3.2" => "ECDSA with SHA-256",
        "1.2.840.10045.4.3.3" => "ECDSA with SHA-384",
        "1.2.840.10045.4.3.4" => "ECDSA with SHA-512",
        "1.3.101.112" => "Ed25519",
        "1.3.101.113" => "Ed448",
        _ => return format!("the algorithm {oid}"),
    };
    name.into()
}

/// The dotted form of the OID at the start of `der` (tag 6, short length).
fn oid_of(der: &[u8]) -> Option<String> {
    let (&tag, rest) = der.split_first()?;
    let (&len, rest) = rest.split_first()?;
    if tag != 6 || len >= 0x80 {
        return None;
    }
    let body = rest.get(..usize::from(len))?;
    let (&first, body) = body.split_first()?;
    let mut arcs = vec![u64::from(first / 40).min(2), 0];
    arcs[1] = u64::from(first) - arcs[0] * 40;
    let mut v = 0u64;
    for &b in body {
        v = v.checked_mul(128)? | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            arcs.push(v);
            v = 0;
        }
    }
    Some(
        arcs.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join("."),
    )
}

/// `2026-12-02 16:00 UTC`.
fn utc(t: UnixTime) -> String {
    let secs = t.as_secs();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = crate::date::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// `3 days`, `5 hours`, `1 minute`.
fn ago(secs: u64) -> String {
    let (n, unit) = match secs {
        s if s >= 2 * 86_400 => (s / 86_400, "day"),
        s if s >= 2 * 3600 => (s / 3600, "hour"),
        s => (s / 60, "minute"),
    };
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_oids_for_people() {
        assert_eq!(
            utc(UnixTime::since_unix_epoch(std::time::Duration::ZERO)),
            "1970-01-01 00:00 UTC"
        );
        assert_eq!(
            utc(UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                1_709_210_096
            ))),
            "2024-02-29 12:34 UTC"
        );
        assert_eq!(ago(90), "1 minute");
        assert_eq!(ago(3 * 86_400 + 5), "3 days");
        // ecdsa-with-SHA512, as rustls reports it.
        let sha512 = [6, 8, 42, 134, 72, 206, 61, 4, 3, 4];
        assert_eq!(algorithm(&sha512), "ECDSA with SHA-512");
        let p256 = [
            6, 7, 42, 134, 72, 206, 61, 2, 1, 6, 8, 42, 134, 72, 206, 61, 3, 1, 7,
        ];
        assert_eq!(algorithm(&p256), "ECDSA P-256");
        assert_eq!(algorithm(&[6, 3, 43, 6, 1]), "the algorithm 1.3.6.1");
        assert_eq!(presented_name("DnsName(\"a.example\")"), "a.example");
        assert_eq!(presented_name("IpAddress(10.0.0.1)"), "10.0.0.1");
        assert_eq!(presented_name("DirectoryName"), "DirectoryName");
        for junk in [&[][..], &[6], &[6, 9, 1], &[6, 0x81, 1], &[5, 0]] {
            let _ = algorithm(junk);
        }
    }
}
