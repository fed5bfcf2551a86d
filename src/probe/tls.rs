//! TLS for probes: the shared rustls client configurations (verifying and insecure),
//! the handshake, and the certificate-recording verifier.
//!
//! Crypto is aws-lc-rs (see [`probe_crypto_provider`] for why). Roots are webpki-roots
//! (compiled in, so the container's CA bundle does not matter) plus any extra PEM
//! roots; chains webpki accepted are remembered for a while (`verified_chains`).
//! Session resumption is off so every probe measures a full handshake. ALPN offers `h2`
//! then `http/1.1`.
//!
//! The leaf certificate's not-after must be reported even when verification fails, and
//! a failed handshake leaves nothing to ask afterwards. So each handshake gets its own
//! copy of the (cheap, `Arc`-filled) `ClientConfig` whose verifier records the leaf
//! into a slot of that probe before delegating to webpki.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::verified_chains::RememberingVerifier;
use super::Failure;
use crate::probe::ErrorKind;

/// The shared TLS pieces of a [`super::Prober`].
#[derive(Debug, Clone)]
pub(crate) struct TlsConfigs {
    verifying: Arc<ClientConfig>,
    insecure: Arc<ClientConfig>,
    validating: Arc<RememberingVerifier>,
    provider: Arc<CryptoProvider>,
}

impl TlsConfigs {
    /// `chain_cache_capacity`: how many accepted chains to remember (0: none).
    pub(crate) fn new(
        extra_roots: &[CertificateDer<'static>],
        chain_cache_capacity: usize,
    ) -> anyhow::Result<TlsConfigs> {
        let provider = Arc::new(probe_crypto_provider());
        // aws-lc seeds its random generator on first use, from CPU jitter: ~50 ms of CPU
        // once per process. Do it now, or the first probe's TLS phase would carry it.
        aws_lc_rs::rand::fill(&mut [0u8; 1])
            .map_err(|_| anyhow::anyhow!("the system random generator is not available"))?;
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for cert in extra_roots {
            roots
                .add(cert.clone())
                .map_err(|err| anyhow::anyhow!("extra CA certificate rejected: {err}"))?;
        }
        let validating = Arc::new(RememberingVerifier::new(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()?,
            chain_cache_capacity,
        ));
        let base = |verifier: Arc<dyn ServerCertVerifier>| -> anyhow::Result<Arc<ClientConfig>> {
            let mut config = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            config.resumption = Resumption::disabled();
            Ok(Arc::new(config))
        };
        let verifying = base(validating.clone())?;
        let insecure = base(Arc::new(AcceptAnything(provider.clone())))?;
        Ok(TlsConfigs {
            verifying,
            insecure,
            validating,
            provider,
        })
    }

    /// Runs the handshake; `leaf_not_after` receives the leaf's expiry whenever the
    /// server presented a parseable certificate, whatever the outcome.
    pub(crate) async fn handshake(
        &self,
        tcp: TcpStream,
        server_name: ServerName<'static>,
        verify: bool,
        leaf_not_after: &Arc<Mutex<Option<DateTime<Utc>>>>,
    ) -> Result<TlsStream<TcpStream>, Failure> {
        let base = if verify {
            &self.verifying
        } else {
            &self.insecure
        };
        let mut config = ClientConfig::clone(base);
        let inner: Arc<dyn ServerCertVerifier> = if verify {
            self.validating.clone()
        } else {
            Arc::new(AcceptAnything(self.provider.clone()))
        };
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(RecordingVerifier {
                inner,
                leaf_not_after: leaf_not_after.clone(),
            }));
        let host = format!("{server_name:?}");
        TlsConnector::from(Arc::new(config))
            .connect(server_name, tcp)
            .await
            .map_err(|err| classify(&host, err))
    }
}

/// The client handshake is most of a probe's CPU, so the provider is chosen for it:
/// aws-lc-rs's X25519 key exchange costs about half of ring's (62 against 115 µs on the
/// bench machine), and AES-128-GCM-SHA256 goes first among the TLS 1.3 suites (as in
/// browsers) because its transcript hash and key schedule use SHA-256, which runs on the
/// CPU's SHA extensions, where SHA-384 does not (3.4 against 11.8 µs per 4 KiB).
/// Key-exchange groups stay the provider's defaults without `prefer-post-quantum`:
/// X25519 first (the one key share sent), then P-256, P-384 and the X25519MLKEM768
/// hybrid.
fn probe_crypto_provider() -> CryptoProvider {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    provider
}

fn classify(host: &str, err: std::io::Error) -> Failure {
    let tls_err = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls_err {
        Some(rustls::Error::InvalidCertificate(cert_err)) => Failure::new(
            ErrorKind::TlsCertificate,
            format!(
                "TLS certificate rejected: {}",
                describe_cert_error(cert_err)
            ),
        ),
        Some(other) => Failure::new(
            ErrorKind::TlsHandshake,
            format!("TLS handshake failed: {other}"),
        ),
        None => Failure::new(
            ErrorKind::TlsHandshake,
            format!("TLS handshake with {host} failed: {err}"),
        ),
    }
}

fn describe_cert_error(err: &rustls::CertificateError) -> String {
    use rustls::CertificateError as E;
    match err {
        E::UnknownIssuer => "issued by an untrusted CA (unknown issuer)".into(),
        E::Expired | E::ExpiredContext { .. } => format!("expired ({err})"),
        E::NotValidForName | E::NotValidForNameContext { .. } => {
            format!("not valid for this host name ({err})")
        }
        other => other.to_string(),
    }
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

/// Records the leaf's not-after, then lets `inner` decide.
#[derive(Debug)]
struct RecordingVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    leaf_not_after: Arc<Mutex<Option<DateTime<Utc>>>>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(not_after) = leaf_not_after(end_entity) {
            *self
                .leaf_not_after
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(not_after);
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    forward_handshake_signatures!(inner);
}

/// `--insecure`: any certificate is accepted, but the handshake signatures are still
/// checked against it (the connection is to *someone* holding that key).
#[derive(Debug)]
struct AcceptAnything(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn leaf_not_after(der: &CertificateDer<'_>) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(validity(der)?.1, 0)
}

/// A certificate's not-before and not-after, in Unix seconds; `None` when it does not
/// parse.
pub(crate) fn validity(der: &CertificateDer<'_>) -> Option<(i64, i64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let validity = cert.validity();
    Some((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

/// `TLSv1.3` / `TLSv1.2`, as reported.
pub(crate) fn version_name(stream: &TlsStream<TcpStream>) -> Option<String> {
    let (_, conn) = stream.get_ref();
    conn.protocol_version().map(|v| match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
        other => format!("{other:?}"),
    })
}

/// Whether ALPN settled on HTTP/2.
pub(crate) fn negotiated_h2(stream: &TlsStream<TcpStream>) -> bool {
    stream.get_ref().1.alpn_protocol() == Some(b"h2")
}

/// Reads PEM certificates from `path` for use as extra roots.
pub(crate) fn read_pem_roots(
    path: &std::path::Path,
) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| anyhow::anyhow!("CA file {}: {err}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| anyhow::anyhow!("CA file {}: {err}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("CA file {}: no PEM certificate found", path.display());
    }
    Ok(certs)
}
