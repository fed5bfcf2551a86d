//! Certificates made at test time with rcgen (ECDSA P-256): a private CA and leaves it
//! signs (valid, expired, for another host), a self-signed leaf, and rustls server
//! configurations for them.

use std::io::Write as _;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;

/// What a TLS server presents: its chain and key, plus the leaf's not-after (Unix s).
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub not_after_unix: i64,
}

/// A private certificate authority for one test.
pub struct TestCa {
    pub cert_der: CertificateDer<'static>,
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "Vantage Test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names` (DNS names or IP addresses), valid from 2020 to 2100.
    pub fn leaf(&self, names: &[&str]) -> Identity {
        self.leaf_valid(names, (2020, 1, 1), (2100, 1, 1))
    }

    /// A leaf that expired on 2021-01-01.
    pub fn expired_leaf(&self, names: &[&str]) -> Identity {
        self.leaf_valid(names, (2020, 1, 1), (2021, 1, 1))
    }

    fn leaf_valid(&self, names: &[&str], from: (i32, u8, u8), to: (i32, u8, u8)) -> Identity {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let params = leaf_params(names, from, to);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Identity {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_after_unix: params.not_after.unix_timestamp(),
        }
    }

    /// The CA certificate written to a PEM file (for `--ca-file` / `VANTAGE_CA_FILE`).
    pub fn pem_file(&self) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(self.cert_pem.as_bytes()).unwrap();
        file.flush().unwrap();
        file
    }
}

fn leaf_params(names: &[&str], from: (i32, u8, u8), to: (i32, u8, u8)) -> CertificateParams {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
    params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
    params.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params
}

/// A self-signed leaf for `names`: no CA vouches for it.
pub fn self_signed(names: &[&str]) -> Identity {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let params = leaf_params(names, (2020, 1, 1), (2100, 1, 1));
    let cert = params.self_signed(&key).unwrap();
    Identity {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        not_after_unix: params.not_after.unix_timestamp(),
    }
}

/// A rustls server configuration presenting `identity`, offering `alpn` (e.g.
/// `&[b"h2", b"http/1.1"]`).
pub fn server_config(identity: &Identity, alpn: &[&[u8]]) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}
