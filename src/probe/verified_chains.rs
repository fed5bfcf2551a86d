//! Remembers the certificate chains webpki has accepted, so that probing the same host
//! every few seconds does not validate the same chain again each time.
//!
//! Why: validating a chain (building the path to a root and checking one signature per
//! link) is a pure function of the presented certificates, the host name, the trusted
//! roots and the time, and it is the largest single CPU cost of a verified handshake:
//! about 75 µs per P-256 signature on the bench machine, several times that for the
//! P-384 and RSA-4096 links of public chains. A prober sees the same chain from the same
//! host on every probe; browsers keep such a cache for the same reason.
//!
//! What stays on every handshake: the server's signature over the handshake
//! (CertificateVerify), which proves it holds the key now, is checked by
//! [`ServerCertVerifier::verify_tls13_signature`] and is never remembered. Only
//! successes are remembered, keyed by a SHA-256 over the host name and the exact bytes
//! of every presented certificate, so a renewed or different certificate is validated
//! afresh. An entry is used only while `now` is inside the validity of every presented
//! certificate and for at most [`REVALIDATE_AFTER`]; the roots do not change while the
//! process runs, and the verifier checks no revocation lists, so nothing else can turn
//! a remembered answer wrong.
//!
//! Owns the cache and nothing else; it knows nothing of probes or timing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::certificate::{forward_handshake_signatures, validity};

/// How long an accepted chain is trusted without validating it again.
pub(crate) const REVALIDATE_AFTER: Duration = Duration::from_secs(3600);

/// Default bound on remembered chains: one per (host name, chain) probed within
/// [`REVALIDATE_AFTER`]; an entry is under 100 bytes.
pub(crate) const DEFAULT_CAPACITY: usize = 10_000;

type ChainKey = [u8; 32];

/// A webpki verifier that remembers the chains it accepted.
#[derive(Debug)]
pub(crate) struct RememberingVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    capacity: usize,
    accepted: Mutex<HashMap<ChainKey, Accepted>>,
}

#[derive(Debug, Clone, Copy)]
struct Accepted {
    /// The latest not-before and earliest not-after of the presented certificates.
    valid_from: u64,
    valid_until: u64,
    validated_at: Instant,
}

impl RememberingVerifier {
    /// `capacity` 0 remembers nothing: every handshake validates its chain.
    pub(crate) fn new(webpki: Arc<WebPkiServerVerifier>, capacity: usize) -> Self {
        RememberingVerifier {
            webpki,
            capacity,
            accepted: Mutex::new(HashMap::new()),
        }
    }

    fn lookup(&self, key: &ChainKey, now: UnixTime) -> bool {
        let accepted = self.accepted.lock().unwrap_or_else(|e| e.into_inner());
        accepted.get(key).is_some_and(|entry| {
            let now = now.as_secs();
            entry.valid_from <= now
                && now <= entry.valid_until
                && entry.validated_at.elapsed() < REVALIDATE_AFTER
        })
    }

    fn remember(&self, key: ChainKey, entry: Accepted) {
        let mut accepted = self.accepted.lock().unwrap_or_else(|e| e.into_inner());
        if accepted.len() >= self.capacity && !accepted.contains_key(&key) {
            accepted.retain(|_, e| e.validated_at.elapsed() < REVALIDATE_AFTER);
            if accepted.len() >= self.capacity {
                // More distinct chains within the hour than the bound: forget the oldest.
                let oldest = accepted
                    .iter()
                    .min_by_key(|(_, e)| e.validated_at)
                    .map(|(k, _)| *k);
                if let Some(oldest) = oldest {
                    accepted.remove(&oldest);
                }
            }
        }
        accepted.insert(key, entry);
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }
}

impl ServerCertVerifier for RememberingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let key = (self.capacity > 0).then(|| chain_key(server_name, end_entity, intermediates));
        if key.is_some_and(|key| self.lookup(&key, now)) {
            return Ok(ServerCertVerified::assertion());
        }
        let verified = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let window = || common_validity(std::iter::once(end_entity).chain(intermediates));
        if let Some((key, (valid_from, valid_until))) = key.and_then(|key| Some((key, window()?))) {
            self.remember(
                key,
                Accepted {
                    valid_from,
                    valid_until,
                    validated_at: Instant::now(),
                },
            );
        }
        Ok(verified)
    }

    // Checked on every handshake, never remembered.
    forward_handshake_signatures!(webpki);
}

/// SHA-256 over the host name and every certificate, each length-prefixed so that no
/// two different inputs run together into the same bytes.
fn chain_key(
    server_name: &ServerName<'_>,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> ChainKey {
    let mut hash = digest::Context::new(&digest::SHA256);
    let mut add = |bytes: &[u8]| {
        hash.update(&(bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    };
    add(server_name.to_str().as_bytes());
    add(end_entity.as_ref());
    for cert in intermediates {
        add(cert.as_ref());
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(hash.finish().as_ref());
    key
}

/// The window in which every certificate is valid, in Unix seconds; `None` when one
/// does not parse (then nothing is remembered).
fn common_validity<'a>(certs: impl Iterator<Item = &'a CertificateDer<'a>>) -> Option<(u64, u64)> {
    let mut window = (0u64, u64::MAX);
    for der in certs {
        let (from, until) = validity(der)?;
        let from = u64::try_from(from).unwrap_or(0);
        let until = u64::try_from(until).ok()?;
        window = (window.0.max(from), window.1.min(until));
    }
    Some(window)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls::RootCertStore;

    /// A private CA (rcgen's defaults: ECDSA P-256, valid until 4096).
    struct Ca {
        der: CertificateDer<'static>,
        issuer: Issuer<'static, KeyPair>,
    }

    impl Ca {
        fn new() -> Ca {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let cert = params.self_signed(&key).unwrap();
            Ca {
                der: cert.der().clone(),
                issuer: Issuer::new(params, key),
            }
        }

        fn leaf(&self, name: &str) -> CertificateDer<'static> {
            let params = CertificateParams::new(vec![name.to_string()]).unwrap();
            let key = KeyPair::generate().unwrap();
            params.signed_by(&key, &self.issuer).unwrap().der().clone()
        }

        fn verifier(&self, capacity: usize) -> RememberingVerifier {
            let mut roots = RootCertStore::empty();
            roots.add(self.der.clone()).unwrap();
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            RememberingVerifier::new(webpki, capacity)
        }
    }

    fn verify_at(
        v: &RememberingVerifier,
        leaf: &CertificateDer<'_>,
        name: &str,
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = ServerName::try_from(name.to_string()).unwrap();
        v.verify_server_cert(leaf, &[], &name, &[], now)
    }

    fn verify(
        v: &RememberingVerifier,
        leaf: &CertificateDer<'_>,
        name: &str,
    ) -> Result<ServerCertVerified, rustls::Error> {
        verify_at(v, leaf, name, UnixTime::now())
    }

    #[test]
    fn an_accepted_chain_is_remembered_for_its_host_name_only() {
        let ca = Ca::new();
        let leaf = ca.leaf("a.vantage.test");
        let v = ca.verifier(16);
        verify(&v, &leaf, "a.vantage.test").unwrap();
        verify(&v, &leaf, "a.vantage.test").unwrap();
        assert_eq!(v.remembered(), 1);
        // The same chain presented for another name is validated again, and refused.
        let err = verify(&v, &leaf, "b.vantage.test").unwrap_err();
        assert!(format!("{err:?}").contains("NotValidForName"), "{err:?}");
        assert_eq!(v.remembered(), 1);
    }

    #[test]
    fn a_refused_chain_is_never_remembered() {
        let trusted = Ca::new();
        let stranger = Ca::new().leaf("a.vantage.test");
        let v = trusted.verifier(16);
        // Both CAs carry rcgen's default name, so the stranger's leaf names the trusted CA
        // as its issuer and only the signature gives it away.
        for _ in 0..2 {
            let err = verify(&v, &stranger, "a.vantage.test").unwrap_err();
            assert!(
                matches!(
                    err,
                    rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature)
                ),
                "{err:?}"
            );
        }
        assert_eq!(v.remembered(), 0);
    }

    #[test]
    fn a_remembered_chain_is_validated_again_once_it_has_expired() {
        let ca = Ca::new();
        let leaf = ca.leaf("a.vantage.test");
        let v = ca.verifier(16);
        verify(&v, &leaf, "a.vantage.test").unwrap();
        let name = ServerName::try_from("a.vantage.test").unwrap();
        let key = chain_key(&name, &leaf, &[]);
        let until = v.accepted.lock().unwrap()[&key].valid_until;
        let at = |secs| UnixTime::since_unix_epoch(Duration::from_secs(secs));
        assert!(v.lookup(&key, at(until)));
        assert!(!v.lookup(&key, at(until + 1)));
        // ... and webpki then gives the answer: expired.
        let err = verify_at(&v, &leaf, "a.vantage.test", at(until + 1)).unwrap_err();
        assert!(format!("{err:?}").contains("Expired"), "{err:?}");
    }

    #[test]
    fn the_capacity_bounds_what_is_remembered_and_zero_remembers_nothing() {
        let ca = Ca::new();
        let names = ["a.vantage.test", "b.vantage.test", "c.vantage.test"];
        let leaves: Vec<_> = names.iter().map(|n| ca.leaf(n)).collect();
        for (capacity, expected) in [(2, 2), (0, 0)] {
            let v = ca.verifier(capacity);
            for (leaf, name) in leaves.iter().zip(names) {
                verify(&v, leaf, name).unwrap();
            }
            assert_eq!(v.remembered(), expected, "capacity {capacity}");
        }
    }
}
