//! TLS for probes: the shared rustls client configurations (verifying and insecure),
//! the handshake, and the certificate-recording verifier.
//!
//! Crypto is aws-lc-rs (see [`probe_crypto_provider`] for why). Roots are webpki-roots
//! (compiled in, so the container's CA bundle does not matter) plus any extra PEM
//! roots; chains webpki accepted are remembered for a while (`verified_chains`).
//! Session resumption is off so every probe measures a full handshake. ALPN offers `h2`
//! then `http/1.1`.
//!
//! Failures are told in one sentence an operator can act on ("expired on 2021-01-01
//! 00:00:00 UTC", "not valid for 127.0.0.1 (it names other.example)", "the server
//! requires a client certificate"), never as a debug dump of the library's error.
//!
//! The leaf certificate's not-after must be reported even when verification fails, and
//! a failed handshake leaves nothing to ask afterwards. So each handshake gets its own
//! copy of the (cheap, `Arc`-filled) `ClientConfig` whose verifier records the leaf
//! into a slot of that probe before delegating to webpki.

use std::sync::{Arc, Mutex};

use chrono::DateTime;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::certificate::{forward_handshake_signatures, LeafFacts};
use super::observation::Observation;
use super::timings::Phase;
use super::verified_chains::RememberingVerifier;
use super::wire_clock::StampedTcp;
use super::{Failure, ProberError};
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
    ) -> Result<TlsConfigs, ProberError> {
        let provider = Arc::new(probe_crypto_provider());
        // aws-lc seeds its random generator on first use, from CPU jitter: ~50 ms of CPU
        // once per process. Do it now, or the first probe's TLS phase would carry it.
        aws_lc_rs::rand::fill(&mut [0u8; 1]).map_err(|_| ProberError::Random)?;
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for cert in extra_roots {
            roots
                .add(cert.clone())
                .map_err(|err| ProberError::ExtraRoot(err.to_string()))?;
        }
        let validating = Arc::new(RememberingVerifier::new(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|err| ProberError::Tls(err.to_string()))?,
            chain_cache_capacity,
        ));
        let base =
            |verifier: Arc<dyn ServerCertVerifier>| -> Result<Arc<ClientConfig>, ProberError> {
                let mut config = ClientConfig::builder_with_provider(provider.clone())
                    .with_safe_default_protocol_versions()
                    .map_err(|err| ProberError::Tls(err.to_string()))?
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

    /// Runs the handshake; `leaf` receives the leaf certificate's facts whenever the
    /// server presented a parseable certificate, whatever the outcome.
    pub(crate) async fn handshake(
        &self,
        tcp: StampedTcp,
        server_name: ServerName<'static>,
        verify: bool,
        leaf: &Arc<Mutex<Option<LeafFacts>>>,
    ) -> Result<TlsStream<StampedTcp>, Failure> {
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
                leaf: leaf.clone(),
            }));
        let host = format!("{server_name:?}");
        TlsConnector::from(Arc::new(config))
            .connect(server_name, tcp)
            .await
            .map_err(|err| classify(&host, err))
    }

    /// [`TlsConfigs::handshake`] as a probe's TLS phase: timed, with the negotiated
    /// version and the leaf certificate recorded.
    pub(crate) async fn handshake_timed(
        &self,
        tcp: StampedTcp,
        server_name: ServerName<'static>,
        verify: bool,
        seen: &mut Observation,
    ) -> Result<TlsStream<StampedTcp>, Failure> {
        seen.phase = Phase::Tls;
        seen.stamps.restart();
        let stream = self.handshake(tcp, server_name, verify, &seen.leaf).await?;
        // From the ClientHello leaving to the server's last handshake flight arriving,
        // as the wire shows it (see `wire_clock`).
        let hop = seen.timings.hop();
        if let Some(hello) = seen.stamps.first_write() {
            hop.tls_start = Some(hello);
        }
        hop.tls_done = Some(seen.stamps.last_arrival());
        seen.tls_version = version_name(&stream);
        Ok(stream)
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
    match err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls_err) => describe(tls_err),
        None => Failure::new(
            ErrorKind::TlsHandshake,
            format!("TLS handshake with {host} failed: {err}"),
        ),
    }
}

/// A TLS error found anywhere in `err`'s chain of causes (an exchange that failed on an
/// established TLS connection), as a TLS failure.
pub(crate) fn failure_in(err: &(dyn std::error::Error + 'static)) -> Option<Failure> {
    let mut cause = Some(err);
    while let Some(current) = cause {
        if let Some(tls_err) = current.downcast_ref::<rustls::Error>() {
            return Some(describe(tls_err));
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            // An I/O error's `source()` skips the error it wraps: look inside.
            if let Some(tls_err) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                return Some(describe(tls_err));
            }
            // HTTP/2 keeps only the kind and text of an I/O error, so the alert a TLS
            // 1.3 server sends when it wants a client certificate is recognised by
            // rustls's own wording of it.
            let wanted =
                rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
            if io.to_string() == wanted.to_string() {
                return Some(describe(&wanted));
            }
        }
        cause = current.source();
    }
    None
}

fn describe(err: &rustls::Error) -> Failure {
    use rustls::AlertDescription as Alert;
    match err {
        rustls::Error::InvalidCertificate(cert_err) => Failure::new(
            ErrorKind::TlsCertificate,
            format!(
                "TLS certificate rejected: {}",
                describe_cert_error(cert_err)
            ),
        ),
        rustls::Error::AlertReceived(Alert::CertificateRequired) => Failure::new(
            ErrorKind::TlsHandshake,
            "TLS handshake failed: the server requires a client certificate, and probes \
             present none (TLS alert certificate_required)",
        ),
        rustls::Error::AlertReceived(alert) => Failure::new(
            ErrorKind::TlsHandshake,
            format!(
                "TLS handshake failed: the server refused it with the TLS alert {}",
                alert_name(*alert)
            ),
        ),
        other => Failure::new(
            ErrorKind::TlsHandshake,
            format!("TLS handshake failed: {other}"),
        ),
    }
}

/// `handshake_failure` for `HandshakeFailure`: the alert's name as the RFCs spell it.
fn alert_name(alert: rustls::AlertDescription) -> String {
    let debug = format!("{alert:?}");
    let mut name = String::with_capacity(debug.len() + 4);
    for (i, c) in debug.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_lowercase());
    }
    name
}

/// What is wrong with the certificate, as the end of "TLS certificate rejected: ...".
fn describe_cert_error(err: &rustls::CertificateError) -> String {
    use rustls::CertificateError as E;
    match err {
        E::ExpiredContext { not_after, .. } => format!("it expired on {}", date(*not_after)),
        E::Expired => "it has expired".into(),
        E::NotValidYetContext { not_before, .. } => {
            format!("it is not valid before {}", date(*not_before))
        }
        E::NotValidYet => "it is not valid yet".into(),
        E::UnknownIssuer => "it is issued by an unknown authority (not among the trusted \
                             roots; add the CA with --ca-file or VANTAGE_CA_FILE)"
            .into(),
        E::NotValidForNameContext {
            expected,
            presented,
        } => {
            let names: Vec<&str> = presented.iter().map(|p| presented_name(p)).collect();
            let names = if names.is_empty() {
                "no name".to_string()
            } else {
                names.join(", ")
            };
            format!(
                "it is not valid for {} (it names {names})",
                server_name(expected)
            )
        }
        E::NotValidForName => "it is not valid for this host name".into(),
        E::InvalidPurpose | E::InvalidPurposeContext { .. } => {
            "it is not meant for TLS servers (extended key usage)".into()
        }
        E::Revoked => "it has been revoked".into(),
        E::BadSignature => "its signature does not verify".into(),
        E::BadEncoding => "it is malformed".into(),
        E::UnsupportedSignatureAlgorithmContext {
            signature_algorithm_id,
            ..
        }
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext {
            signature_algorithm_id,
            ..
        } => signature_algorithm(signature_algorithm_id),
        E::Other(other) => match other.0.downcast_ref::<webpki::Error>() {
            Some(webpki::Error::CaUsedAsEndEntity) => {
                "it is a CA certificate used as a server certificate; the server must \
                 present a leaf certificate issued by that CA"
                    .into()
            }
            Some(webpki::Error::EndEntityUsedAsCa) => {
                "its chain uses a server certificate as a CA".into()
            }
            Some(webpki::Error::CertDistrusted) => "its authority is distrusted".into(),
            Some(webpki::Error::PathLenConstraintViolated) => {
                "its chain is longer than a CA allows (path length constraint)".into()
            }
            Some(webpki::Error::NameConstraintViolation) => {
                "it names a host its CA may not issue for (name constraints)".into()
            }
            Some(webpki::Error::UnsupportedCriticalExtension) => {
                "it has a critical extension that is not understood".into()
            }
            Some(other) => format!("it fails validation ({other:?})"),
            None => format!("it fails validation ({other})"),
        },
        #[allow(deprecated)]
        E::UnsupportedSignatureAlgorithm => "it is signed with an unsupported algorithm".into(),
        other => format!("it fails validation ({other})"),
    }
}

fn date(time: UnixTime) -> String {
    i64::try_from(time.as_secs())
        .ok()
        .and_then(|secs| DateTime::from_timestamp(secs, 0))
        .map_or_else(
            || "an unreadable date".to_string(),
            |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        )
}

fn server_name(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(dns) => dns.as_ref().to_string(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

/// webpki lists presented names as `DnsName("example.com")` or `IpAddress(192.0.2.1)`.
fn presented_name(text: &str) -> &str {
    let inner = text
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or(text);
    inner.trim_matches('"')
}

/// The algorithm of a signature webpki does not accept, named (SHA-1 and MD5 are
/// refused on purpose, as browsers do).
fn signature_algorithm(algorithm_id: &[u8]) -> String {
    // DER of the OIDs: sha1WithRSAEncryption, ecdsa-with-SHA1, dsa-with-sha1,
    // md5WithRSAEncryption.
    const SHA1_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05];
    const SHA1_ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    const SHA1_DSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x03];
    const MD5_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x04];
    let has = |oid: &[u8]| algorithm_id.windows(oid.len()).any(|w| w == oid);
    if has(SHA1_RSA) || has(SHA1_ECDSA) || has(SHA1_DSA) {
        "it is signed with SHA-1, which is not accepted (reissue it with SHA-256)".into()
    } else if has(MD5_RSA) {
        "it is signed with MD5, which is not accepted (reissue it with SHA-256)".into()
    } else {
        "it is signed with an algorithm that is not accepted".into()
    }
}

/// Records the leaf's facts, then lets `inner` decide.
#[derive(Debug)]
struct RecordingVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    leaf: Arc<Mutex<Option<LeafFacts>>>,
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
        if let Some(facts) = LeafFacts::read(end_entity) {
            *self.leaf.lock().unwrap_or_else(|e| e.into_inner()) = Some(facts);
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

/// `TLSv1.3` / `TLSv1.2`, as reported.
pub(crate) fn version_name(stream: &TlsStream<StampedTcp>) -> Option<String> {
    let (_, conn) = stream.get_ref();
    conn.protocol_version().map(|v| match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
        other => format!("{other:?}"),
    })
}

/// Whether ALPN settled on HTTP/2.
pub(crate) fn negotiated_h2(stream: &TlsStream<StampedTcp>) -> bool {
    stream.get_ref().1.alpn_protocol() == Some(b"h2")
}

/// Reads PEM certificates from `path` for use as extra roots.
pub(crate) fn read_pem_roots(
    path: &std::path::Path,
) -> Result<Vec<CertificateDer<'static>>, ProberError> {
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| ca_file(path, err))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| ca_file(path, err))?;
    if certs.is_empty() {
        return Err(ca_file(path, "no PEM certificate found"));
    }
    Ok(certs)
}

fn ca_file(path: &std::path::Path, problem: impl std::fmt::Display) -> ProberError {
    ProberError::CaFile {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    }
}
