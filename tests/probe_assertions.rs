//! Assertions judged by the probe on real responses: JSON values, headers, response
//! time, the certificate's remaining days, the status set; what a failed one says; the
//! response facts a heartbeat keeps (content type, server, captured headers).

mod support;

use std::time::Duration;

use serde_json::json;
use support::http::TestServer;
use support::probe::{spec, trusting};
use support::tls::{server_config, TestCa};
use vantage::assertions::Assertions;
use vantage::probe::{Monitor, MonitorSpec, Prober};
use vantage::{ErrorKind, ProbeReport, ProbeStatus};

async fn judged(prober: &Prober, url: &str, texts: &[&str]) -> ProbeReport {
    let spec = MonitorSpec {
        assertions: Assertions::from_texts(texts).unwrap(),
        ..spec(url)
    };
    prober.probe(&Monitor::new(spec).unwrap()).await
}

fn plain() -> Prober {
    Prober::builder().build().unwrap()
}

#[tokio::test]
async fn json_and_header_assertions_pass_and_fail_with_what_was_seen() {
    let server = TestServer::http().await;
    let ok = server.url("/json/ok");
    let degraded = server.url("/json/degraded");
    let prober = plain();

    let all = [
        r#"json:$.status == "ok""#,
        "json:$.count >= 3",
        "json:/checks/0/name == db",
        "json:$.checks[?@.ok == false] !exists",
        "header:content-type ~ json",
        "header:x-cache == HIT",
        "header:etag !exists",
        "body:!contains error",
    ];
    let report = judged(&prober, &ok, &all).await;
    assert_eq!(report.status, ProbeStatus::Up, "{report:?}");

    let report = judged(&prober, &degraded, &all).await;
    assert_eq!(report.error_kind, Some(ErrorKind::AssertionFailed));
    assert_eq!(
        report.error_message.as_deref(),
        Some(r#"$.status: expected "ok", got "degraded""#)
    );
    let report = judged(
        &prober,
        &degraded,
        &["json:$.checks[?@.ok == false] !exists"],
    )
    .await;
    assert_eq!(
        report.error_kind,
        Some(ErrorKind::AssertionFailed),
        "{report:?}"
    );

    let report = judged(&prober, &ok, &["header:x-cache == MISS"]).await;
    assert_eq!(
        report.error_message.as_deref(),
        Some(r#"header x-cache: expected "MISS", got "HIT""#)
    );
    // A body that is not JSON says so.
    let report = judged(&prober, &server.url("/"), &[r#"json:$.status == "ok""#]).await;
    let message = report.error_message.unwrap();
    assert!(
        message.starts_with("$.status: the response body is not JSON"),
        "{message}"
    );
}

#[tokio::test]
async fn status_assertions_replace_the_status_set_and_run_first() {
    let server = TestServer::http().await;
    let prober = plain();
    // 503 is outside the default 200-399: a status assertion that accepts it wins.
    let report = judged(&prober, &server.url("/status/503"), &["status:500-599"]).await;
    assert_eq!(report.status, ProbeStatus::Up, "{report:?}");
    // Without one, the default set fails first, as status_mismatch, before the body
    // assertion could say the body is not JSON.
    let report = judged(&prober, &server.url("/status/503"), &["json:$.a exists"]).await;
    assert_eq!(
        report.error_kind,
        Some(ErrorKind::StatusMismatch),
        "{report:?}"
    );
    // Assertions judge the final response of a redirect chain.
    let report = judged(
        &prober,
        &server.url("/redirect/2"),
        &["body:contains chain done"],
    )
    .await;
    assert_eq!(
        (report.status, report.redirect_count),
        (ProbeStatus::Up, 2),
        "{report:?}"
    );
}

#[tokio::test]
async fn time_and_certificate_assertions() {
    let server = TestServer::http().await;
    let report = judged(&plain(), &server.url("/delay/120"), &["time:total < 50"]).await;
    assert_eq!(
        report.error_kind,
        Some(ErrorKind::AssertionFailed),
        "{report:?}"
    );
    let message = report.error_message.unwrap();
    assert!(
        message.starts_with("total ") && message.ends_with(" ms exceeds 50 ms"),
        "{message}"
    );
    let report = judged(&plain(), &server.url("/"), &["time:ttfb < 5s"]).await;
    assert_eq!(report.status, ProbeStatus::Up, "{report:?}");

    // The test leaf is valid until 2100: more than 14 days, fewer than 100,000.
    let ca = TestCa::new();
    let https = TestServer::https(server_config(&ca.leaf(&["127.0.0.1"]), &[])).await;
    let trusting = trusting(&ca);
    let url = https.https_url("/");
    let report = judged(&trusting, &url, &["cert:expires > 14d"]).await;
    assert_eq!(report.status, ProbeStatus::Up, "{report:?}");
    let report = judged(&trusting, &url, &["cert:expires > 100000d"]).await;
    assert_eq!(
        report.error_kind,
        Some(ErrorKind::AssertionFailed),
        "{report:?}"
    );
    let message = report.error_message.unwrap();
    assert!(
        message.contains("2100-01-01") && message.ends_with("less than 100000"),
        "{message}"
    );
}

#[tokio::test]
async fn response_facts_are_kept() {
    let server = TestServer::http().await;
    let capturing = MonitorSpec {
        capture_headers: vec!["X-Cache".into(), "x-absent".into()],
        ..spec(&server.url("/json/ok"))
    };
    let report = plain().probe(&Monitor::new(capturing).unwrap()).await;
    assert_eq!(
        report.content_type.as_deref(),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(report.server.as_deref(), Some("vantage-test/1.0"));
    assert_eq!(
        serde_json::to_value(&report.response_headers).unwrap(),
        json!({"x-cache": "HIT"})
    );

    let bad = MonitorSpec {
        capture_headers: vec!["bad header".into()],
        ..spec(&server.url("/"))
    };
    assert_eq!(Monitor::new(bad).unwrap_err().field, "capture_headers");
    let wrong_kind = MonitorSpec {
        assertions: Assertions::from_texts(&["header:x exists"]).unwrap(),
        kind: vantage::probe::Kind::Tcp,
        url: "tcp://h:1".into(),
        timeout: Duration::from_secs(1),
        ..MonitorSpec::default()
    };
    assert_eq!(Monitor::new(wrong_kind).unwrap_err().field, "assertions");
}
