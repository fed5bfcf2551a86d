//! Name resolution through a real UDP DNS responder on loopback: answers, NXDOMAIN,
//! silence, slow answers, families, and proof that no answer is cached.

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use support::dns::DnsServer;
use support::http::TestServer;
use support::probe::{probe_with as probe, spec};
use support::tls::{server_config, TestCa};
use vantage::probe::{Monitor, Prober};
use vantage::{ErrorKind, ProbeStatus};

const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;

fn prober_using(dns: &DnsServer) -> Prober {
    Prober::builder()
        .dns_servers(vec![dns.addr])
        .build()
        .unwrap()
}

/// Also the "any" family (the default) with an empty AAAA answer: the A record must
/// still connect.
#[tokio::test]
async fn name_is_resolved_and_timed() {
    let dns = DnsServer::builder()
        .a("web.vantage.test", &[LOCAL])
        .start()
        .await;
    let server = TestServer::http().await;
    let report = probe(
        &prober_using(&dns),
        spec(&server.url_with_host("http", "web.vantage.test", "/")),
    )
    .await;
    assert_eq!(report.status, ProbeStatus::Up, "{report:?}");
    assert_eq!(report.remote_ip, Some(LOCAL.into()));
    let dns_ms = report.dns_ms.expect("a lookup happened");
    assert!(dns_ms > 0.0 && dns_ms < 100.0, "{report:?}");
}

#[tokio::test]
async fn slow_answer_shows_in_dns_ms() {
    let dns = DnsServer::builder()
        .slow_a("slow.vantage.test", &[LOCAL], Duration::from_millis(120))
        .start()
        .await;
    let server = TestServer::http().await;
    let mut s = spec(&server.url_with_host("http", "slow.vantage.test", "/"));
    s.ip_family = "ipv4".into();
    let report = probe(&prober_using(&dns), s).await;
    assert_eq!(report.status, ProbeStatus::Up, "{report:?}");
    let dns_ms = report.dns_ms.unwrap();
    assert!(dns_ms >= 120.0, "dns_ms {dns_ms} < injected 120 ms");
    assert!(dns_ms < 200.0, "dns_ms {dns_ms}");
}

#[tokio::test]
async fn every_probe_performs_a_real_lookup() {
    let dns = DnsServer::builder()
        .a("web.vantage.test", &[LOCAL])
        .start()
        .await;
    let server = TestServer::http().await;
    let prober = prober_using(&dns);
    let mut s = spec(&server.url_with_host("http", "web.vantage.test", "/"));
    s.ip_family = "ipv4".into();
    let monitor = Monitor::new(s).unwrap();
    for expected in 1..=3 {
        let report = prober.probe(&monitor).await;
        assert_eq!(report.status, ProbeStatus::Up, "{report:?}");
        // One A query per probe: nothing answered from a cache.
        assert_eq!(dns.queries(), expected);
    }
}

#[tokio::test]
async fn unknown_name_is_nxdomain_with_nothing_after_it() {
    let dns = DnsServer::builder().start().await;
    let report = probe(&prober_using(&dns), spec("http://missing.vantage.test/")).await;
    assert_eq!(report.status, ProbeStatus::Down);
    assert_eq!(
        report.error_kind,
        Some(ErrorKind::DnsNxdomain),
        "{report:?}"
    );
    assert!(report
        .error_message
        .unwrap()
        .contains("missing.vantage.test"));
    assert_eq!(report.dns_ms, None);
    assert_eq!(report.connect_ms, None);
    assert_eq!(report.remote_ip, None);
}

#[tokio::test]
async fn name_without_the_requested_family_is_nxdomain() {
    let dns = DnsServer::builder()
        .a("v4only.vantage.test", &[LOCAL])
        .start()
        .await;
    let mut s = spec("http://v4only.vantage.test/");
    s.ip_family = "ipv6".into();
    let report = probe(&prober_using(&dns), s).await;
    assert_eq!(
        report.error_kind,
        Some(ErrorKind::DnsNxdomain),
        "{report:?}"
    );
}

#[tokio::test]
async fn silent_dns_server_is_a_dns_timeout_within_the_deadline() {
    let dns = DnsServer::builder()
        .never("void.vantage.test")
        .start()
        .await;
    let mut s = spec("http://void.vantage.test/");
    s.timeout = Duration::from_millis(400);
    let report = probe(&prober_using(&dns), s).await;
    assert_eq!(report.status, ProbeStatus::Down);
    assert_eq!(report.error_kind, Some(ErrorKind::DnsTimeout), "{report:?}");
    assert_eq!(
        report.error_message.as_deref(),
        Some("timed out after 400 ms waiting for the DNS answer")
    );
    assert!(
        report.total_ms >= 400.0 && report.total_ms < 420.0,
        "{report:?}"
    );
    assert!(dns.queries() >= 1);
}

#[tokio::test]
async fn https_by_name_sends_sni_and_verifies_the_name() {
    let dns = DnsServer::builder()
        .a("secure.vantage.test", &[LOCAL])
        .start()
        .await;
    let ca = TestCa::new();
    let server =
        TestServer::https(server_config(&ca.leaf(&["secure.vantage.test"]), &[b"h2"])).await;
    let prober = Prober::builder()
        .dns_servers(vec![dns.addr])
        .extra_roots(vec![ca.cert_der.clone()])
        .build()
        .unwrap();
    let report = probe(
        &prober,
        spec(&server.url_with_host("https", "secure.vantage.test", "/")),
    )
    .await;
    assert_eq!(report.status, ProbeStatus::Up, "{report:?}");
    assert!(report.dns_ms.is_some() && report.tls_ms.is_some());
    assert_eq!(report.http_version.as_deref(), Some("HTTP/2"));
}
