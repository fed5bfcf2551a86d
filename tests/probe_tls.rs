//! HTTPS probes against loopback servers with certificates made at test time:
//! a trusted chain (HTTP/2 and HTTP/1.1 by ALPN), expired, self-signed and
//! wrong-host certificates, a server that never completes the handshake, and one
//! that does not speak TLS at all.

mod support;

use std::time::Duration;

use support::http::TestServer;
use support::probe::{probe_with, spec, trusting, H2_AND_H1};
use support::tls::{self_signed, server_config, Identity, TestCa};
use vantage::probe::Prober;
use vantage::{ErrorKind, ProbeReport, ProbeStatus};

async fn https_server(identity: &Identity, alpn: &[&[u8]]) -> TestServer {
    TestServer::https(server_config(identity, alpn)).await
}

fn expiry_unix(report: &ProbeReport) -> i64 {
    report
        .tls_cert_expires_at
        .expect("certificate expiry reported")
        .timestamp()
}

#[tokio::test]
async fn trusted_certificate_over_http2() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["127.0.0.1", "localhost"]);
    let server = https_server(&leaf, H2_AND_H1).await;

    let report = probe_with(&trusting(&ca), spec(&server.https_url("/"))).await;
    assert_eq!(report.status, ProbeStatus::Up, "{report:?}");
    assert_eq!(report.http_version.as_deref(), Some("HTTP/2"));
    assert_eq!(report.tls_version.as_deref(), Some("TLSv1.3"));
    assert_eq!(expiry_unix(&report), leaf.not_after_unix);
    let tls = report.tls_ms.unwrap();
    assert!(tls > 0.0 && tls < 200.0, "{report:?}");
    assert!(report.connect_ms.unwrap() + tls + report.ttfb_ms.unwrap() <= report.total_ms);
    assert_eq!(report.dns_ms, None);
}

#[tokio::test]
async fn http1_when_the_server_only_offers_http1() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["127.0.0.1"]);
    let server = https_server(&leaf, &[b"http/1.1"]).await;
    let report = probe_with(&trusting(&ca), spec(&server.https_url("/echo"))).await;
    assert_eq!(report.status, ProbeStatus::Up, "{report:?}");
    assert_eq!(report.http_version.as_deref(), Some("HTTP/1.1"));
}

#[tokio::test]
async fn ca_file_adds_trusted_roots() {
    let ca = TestCa::new();
    let server = https_server(&ca.leaf(&["127.0.0.1"]), H2_AND_H1).await;
    let file = ca.pem_file();
    let prober = Prober::builder().ca_file(file.path()).build().unwrap();
    let report = probe_with(&prober, spec(&server.https_url("/"))).await;
    assert_eq!(report.status, ProbeStatus::Up, "{report:?}");

    // Without it, the private CA is unknown: public roots only.
    let report = probe_with(
        &Prober::builder().build().unwrap(),
        spec(&server.https_url("/")),
    )
    .await;
    assert_eq!(
        report.error_kind,
        Some(ErrorKind::TlsCertificate),
        "{report:?}"
    );
}

#[tokio::test]
async fn expired_certificate_is_rejected_and_its_expiry_reported() {
    let ca = TestCa::new();
    let leaf = ca.expired_leaf(&["127.0.0.1"]);
    let server = https_server(&leaf, H2_AND_H1).await;
    let report = probe_with(&trusting(&ca), spec(&server.https_url("/"))).await;
    assert_eq!(report.status, ProbeStatus::Down);
    assert_eq!(
        report.error_kind,
        Some(ErrorKind::TlsCertificate),
        "{report:?}"
    );
    assert!(
        report.error_message.as_deref().unwrap().contains("expired"),
        "{report:?}"
    );
    assert_eq!(expiry_unix(&report), leaf.not_after_unix);
    // The handshake failed: no TLS phase, nothing after it.
    assert_eq!(report.tls_ms, None);
    assert_eq!(report.ttfb_ms, None);
    assert!(report.connect_ms.is_some());
}

#[tokio::test]
async fn self_signed_certificate_is_untrusted_unless_insecure() {
    let leaf = self_signed(&["127.0.0.1"]);
    let server = https_server(&leaf, H2_AND_H1).await;
    let prober = Prober::builder().build().unwrap();

    let report = probe_with(&prober, spec(&server.https_url("/"))).await;
    assert_eq!(
        report.error_kind,
        Some(ErrorKind::TlsCertificate),
        "{report:?}"
    );
    assert!(
        report
            .error_message
            .as_deref()
            .unwrap()
            .contains("unknown authority"),
        "{report:?}"
    );
    assert_eq!(expiry_unix(&report), leaf.not_after_unix);

    let mut s = spec(&server.https_url("/"));
    s.verify_tls = false;
    let report = probe_with(&prober, s).await;
    assert_eq!(report.status, ProbeStatus::Up, "{report:?}");
    assert!(report.tls_ms.is_some());
    assert_eq!(expiry_unix(&report), leaf.not_after_unix);
}

#[tokio::test]
async fn certificate_for_another_host_is_rejected() {
    let ca = TestCa::new();
    let server = https_server(&ca.leaf(&["other.example"]), H2_AND_H1).await;
    let report = probe_with(&trusting(&ca), spec(&server.https_url("/"))).await;
    assert_eq!(
        report.error_kind,
        Some(ErrorKind::TlsCertificate),
        "{report:?}"
    );
    assert!(
        report
            .error_message
            .as_deref()
            .unwrap()
            .contains("not valid for"),
        "{report:?}"
    );
}

#[tokio::test]
async fn handshake_that_never_completes_times_out_naming_tls() {
    let server = TestServer::silent().await;
    let mut s = spec(&server.https_url("/"));
    s.timeout = Duration::from_millis(300);
    let report = probe_with(&Prober::builder().build().unwrap(), s).await;
    assert_eq!(report.error_kind, Some(ErrorKind::Timeout));
    assert_eq!(
        report.error_message.as_deref(),
        Some("timed out after 300 ms waiting for the TLS handshake")
    );
    assert!(
        report.total_ms >= 300.0 && report.total_ms < 320.0,
        "{report:?}"
    );
}

#[tokio::test]
async fn plain_http_server_on_an_https_url_is_a_handshake_error() {
    let server = TestServer::http().await;
    let report = probe_with(
        &Prober::builder().build().unwrap(),
        spec(&server.https_url("/")),
    )
    .await;
    assert_eq!(report.status, ProbeStatus::Down);
    assert_eq!(
        report.error_kind,
        Some(ErrorKind::TlsHandshake),
        "{report:?}"
    );
    assert_eq!(report.tls_cert_expires_at, None);
}

#[tokio::test]
async fn every_probe_is_a_full_handshake() {
    // Resumption is off: the second probe's handshake is not a resumed one, so it
    // reports the same certificate (a resumed TLS 1.3 handshake sends none).
    let ca = TestCa::new();
    let leaf = ca.leaf(&["127.0.0.1"]);
    let server = https_server(&leaf, H2_AND_H1).await;
    let prober = trusting(&ca);
    for _ in 0..3 {
        let report = probe_with(&prober, spec(&server.https_url("/"))).await;
        assert_eq!(report.status, ProbeStatus::Up, "{report:?}");
        assert_eq!(expiry_unix(&report), leaf.not_after_unix);
    }
}
