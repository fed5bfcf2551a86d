//! Facts read from a server's certificate (validity, subject, issuer, names) and the
//! part of a certificate verifier that wrappers share. A leaf module (it imports
//! nothing else of the probe), so the TLS handshake and the verified-chain memory can
//! both use it without importing each other.

use chrono::{DateTime, Utc};
use rustls::pki_types::CertificateDer;
use serde_json::json;

/// The server's leaf certificate as a probe recorded it: its expiry, read during every
/// handshake, and the certificate itself, read further only by the kinds that report
/// more (`to_details`), so an https probe pays for one field, not for formatting names.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LeafFacts {
    pub not_after: DateTime<Utc>,
    der: CertificateDer<'static>,
}

impl LeafFacts {
    /// `None` when the certificate does not parse.
    pub fn read(der: &CertificateDer<'_>) -> Option<LeafFacts> {
        let not_after = DateTime::from_timestamp(validity(der)?.1, 0)?;
        Some(LeafFacts {
            not_after,
            der: der.clone().into_owned(),
        })
    }

    /// The `details` of a `tls` heartbeat: subject, issuer and the subjectAltName's
    /// DNS names.
    pub fn to_details(&self) -> Option<serde_json::Value> {
        let (_, cert) = x509_parser::parse_x509_certificate(self.der.as_ref()).ok()?;
        let dns_names: Vec<String> = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|name| match name {
                        x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(json!({
            "subject": cert.subject().to_string(),
            "issuer": cert.issuer().to_string(),
            "dns_names": dns_names,
        }))
    }
}

/// A certificate's not-before and not-after, in Unix seconds; `None` when it does not
/// parse. Read on every handshake: the extensions are only split, not decoded (decoding
/// them was most of the cost of reading a certificate).
pub(crate) fn validity(der: &CertificateDer<'_>) -> Option<(i64, i64)> {
    use x509_parser::nom::Parser as _;
    let (_, cert) = x509_parser::certificate::X509CertificateParser::new()
        .with_deep_parse_extensions(false)
        .parse(der.as_ref())
        .ok()?;
    let validity = cert.validity();
    Some((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

/// The part of [`ServerCertVerifier`] that wrappers about certificates leave alone:
/// checking the server's handshake signature, handed on to the verifier in `$inner`.
macro_rules! forward_handshake_signatures {
    ($inner:ident) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.$inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.$inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.$inner.supported_verify_schemes()
        }
    };
}
pub(crate) use forward_handshake_signatures;
