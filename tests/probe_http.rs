//! The HTTP prober against real servers on loopback: phases, deadlines, redirects,
//! status and body checks. Timing assertions use injected delays: strict lower
//! bounds, tolerant upper bounds (the machine is shared).

mod support;

use std::time::{Duration, Instant};

use support::http::{refused_addr, BlackHole, TestServer};
use support::probe::{probe_with, spec};
use vantage::probe::{Monitor, MonitorSpec, Prober};
use vantage::{ErrorKind, ProbeReport, ProbeStatus};

/// Slack for upper bounds on a busy 2-core machine running debug builds.
const SLACK_MS: f64 = 60.0;

async fn probe(spec: MonitorSpec) -> ProbeReport {
    probe_with(&Prober::builder().build().unwrap(), spec).await
}

#[tokio::test]
async fn plain_http_reports_every_phase_that_happened() {
    let server = TestServer::http().await;
    let report = probe(spec(&server.url("/"))).await;

    assert_eq!(report.status, ProbeStatus::Up, "{report:?}");
    assert!(report.success());
    assert_eq!(report.http_status, Some(200));
    assert_eq!(report.http_version.as_deref(), Some("HTTP/1.1"));
    assert_eq!(report.remote_ip, Some("127.0.0.1".parse().unwrap()));
    assert_eq!(report.response_size_bytes, Some(18));
    // IP literal: no DNS; plain HTTP: no TLS. Null, never zero.
    assert_eq!(report.dns_ms, None);
    assert_eq!(report.tls_ms, None);
    assert_eq!(report.tls_version, None);
    let connect = report.connect_ms.unwrap();
    let ttfb = report.ttfb_ms.unwrap();
    let transfer = report.transfer_ms.unwrap();
    assert!(connect > 0.0 && ttfb > 0.0 && transfer >= 0.0, "{report:?}");
    assert!(connect + ttfb + transfer <= report.total_ms, "{report:?}");
    assert_eq!(report.redirect_count, 0);
    assert_eq!(report.error_kind, None);
    assert_eq!(report.response_body, None);
}

#[tokio::test]
async fn delayed_head_shows_in_ttfb() {
    let server = TestServer::http().await;
    let report = probe(spec(&server.url("/delay/150"))).await;
    assert_eq!(report.status, ProbeStatus::Up, "{report:?}");
    let ttfb = report.ttfb_ms.unwrap();
    assert!(ttfb >= 150.0, "ttfb {ttfb} < injected 150 ms");
    assert!(ttfb < 150.0 + SLACK_MS, "ttfb {ttfb}");
    assert!(report.connect_ms.unwrap() < 50.0);
    assert!(report.transfer_ms.unwrap() < 50.0);
}

#[tokio::test]
async fn trickled_body_shows_in_transfer() {
    // Five bytes, 60 ms apart, after the head.
    let server = TestServer::trickle(5, Duration::from_millis(60)).await;
    let report = probe(spec(&server.url("/"))).await;
    assert_eq!(report.status, ProbeStatus::Up, "{report:?}");
    assert_eq!(report.response_size_bytes, Some(5));
    let transfer = report.transfer_ms.unwrap();
    assert!(transfer >= 4.0 * 60.0, "transfer {transfer}");
    assert!(transfer < 5.0 * 60.0 + SLACK_MS, "transfer {transfer}");
    assert!(report.ttfb_ms.unwrap() < 50.0, "{report:?}");
}

/// Runs a probe that must hit its deadline, and checks it did not overrun.
async fn probe_expecting_timeout(spec: MonitorSpec) -> ProbeReport {
    let timeout_ms = spec.timeout.as_secs_f64() * 1000.0;
    let started = Instant::now();
    let report = probe(spec).await;
    let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(report.status, ProbeStatus::Down, "{report:?}");
    assert!(report.total_ms >= timeout_ms, "{report:?}");
    // The deadline is a timer: on a loaded machine (the whole suite running on two
    // cores) it fires late by the scheduler's delay, not by anything the probe waits for.
    assert!(
        report.total_ms < timeout_ms + SLACK_MS,
        "overran: {report:?}"
    );
    assert!(wall_ms < timeout_ms + SLACK_MS, "wall clock {wall_ms} ms");
    report
}

#[tokio::test]
async fn server_that_never_answers_times_out_on_the_head() {
    let server = TestServer::silent().await;
    let mut s = spec(&server.url("/"));
    s.timeout = Duration::from_millis(400);
    let report = probe_expecting_timeout(s).await;
    assert_eq!(report.error_kind, Some(ErrorKind::Timeout));
    assert_eq!(
        report.error_message.as_deref(),
        Some("timed out after 400 ms waiting for the response head")
    );
    assert!(report.connect_ms.is_some());
    assert_eq!(report.ttfb_ms, None);
    assert_eq!(report.transfer_ms, None);
}

#[tokio::test]
async fn endless_trickle_times_out_on_the_body() {
    let server = TestServer::trickle(100_000, Duration::from_millis(20)).await;
    let mut s = spec(&server.url("/"));
    s.timeout = Duration::from_millis(500);
    let report = probe_expecting_timeout(s).await;
    assert_eq!(report.error_kind, Some(ErrorKind::Timeout));
    assert!(
        report
            .error_message
            .as_deref()
            .unwrap()
            .ends_with("waiting for the response body"),
        "{report:?}"
    );
    assert_eq!(report.http_status, Some(200));
    assert!(report.ttfb_ms.is_some());
    assert_eq!(report.transfer_ms, None);
}

#[tokio::test]
async fn black_holed_address_is_a_connect_timeout_within_the_deadline() {
    let hole = BlackHole::new().await;
    let mut s = spec(&format!("http://{}/", hole.addr));
    s.timeout = Duration::from_millis(300);
    let report = probe_expecting_timeout(s).await;
    assert_eq!(
        report.error_kind,
        Some(ErrorKind::ConnectTimeout),
        "{report:?}"
    );
    assert_eq!(report.connect_ms, None);
    assert_eq!(report.remote_ip, None);
}

#[tokio::test]
async fn refused_port_is_connect_refused_with_nothing_after_it() {
    let addr = refused_addr().await;
    let report = probe(spec(&format!("http://{addr}/"))).await;
    assert_eq!(report.status, ProbeStatus::Down);
    assert_eq!(report.error_kind, Some(ErrorKind::ConnectRefused));
    assert!(report.error_message.unwrap().contains(&addr.to_string()));
    assert_eq!(report.connect_ms, None);
    assert_eq!(report.ttfb_ms, None);
    assert_eq!(report.http_status, None);
    assert!(report.total_ms < 100.0);
}

#[tokio::test]
async fn unexpected_status_is_a_mismatch_and_keeps_the_status() {
    let server = TestServer::http().await;
    let report = probe(spec(&server.url("/status/503"))).await;
    assert_eq!(report.status, ProbeStatus::Down);
    assert_eq!(report.error_kind, Some(ErrorKind::StatusMismatch));
    assert_eq!(report.http_status, Some(503));
    assert_eq!(
        report.error_message.as_deref(),
        Some("status 503 is not in the expected set 200-399")
    );
    // The exchange itself completed.
    assert!(report.ttfb_ms.is_some() && report.transfer_ms.is_some());

    let mut s = spec(&server.url("/status/503"));
    s.expected_status = "200-299,503".into();
    assert_eq!(probe(s).await.status, ProbeStatus::Up);
}

#[tokio::test]
async fn body_must_contain_the_expected_text() {
    let server = TestServer::http().await;
    let mut s = spec(&server.url("/"));
    s.body_contains = Some("from vantage".into());
    assert_eq!(probe(s.clone()).await.status, ProbeStatus::Up);

    s.body_contains = Some("maintenance".into());
    let report = probe(s).await;
    assert_eq!(report.error_kind, Some(ErrorKind::BodyMismatch));
    assert_eq!(report.http_status, Some(200));
}

#[tokio::test]
async fn body_capture_is_capped() {
    let server = TestServer::http().await;
    let mut s = spec(&server.url("/"));
    s.capture_body_bytes = Some(5);
    let report = probe(s).await;
    assert_eq!(report.response_body.as_deref(), Some("hello"));
    assert_eq!(report.response_size_bytes, Some(18));
}

#[tokio::test]
async fn oversized_body_fails_at_the_cap() {
    let server = TestServer::http().await;
    // Default cap 1 MiB: one byte more fails, the cap itself passes.
    let report = probe(spec(&server.url(&format!("/bytes/{}", (1 << 20) + 1)))).await;
    assert_eq!(
        report.error_kind,
        Some(ErrorKind::BodyTooLarge),
        "{report:?}"
    );
    let report = probe(spec(&server.url(&format!("/bytes/{}", 1 << 20)))).await;
    assert_eq!(report.status, ProbeStatus::Up, "{report:?}");
    assert_eq!(report.response_size_bytes, Some(1 << 20));

    // A streamed body without Content-Length is cut off while reading.
    let trickle = TestServer::trickle(50, Duration::from_millis(1)).await;
    let prober = Prober::builder().build().unwrap();
    let monitor = Monitor::new(MonitorSpec {
        max_body_bytes: 10,
        ..spec(&trickle.url("/"))
    })
    .unwrap();
    let report = prober.probe(&monitor).await;
    assert_eq!(
        report.error_kind,
        Some(ErrorKind::BodyTooLarge),
        "{report:?}"
    );
}

#[tokio::test]
async fn redirect_chain_is_followed_and_phases_summed() {
    let server = TestServer::http().await;
    let report = probe(spec(&server.url("/redirect/3"))).await;
    assert_eq!(report.status, ProbeStatus::Up, "{report:?}");
    assert_eq!(report.redirect_count, 3);
    assert_eq!(report.http_status, Some(200));
    assert_eq!(report.response_size_bytes, Some(19));

    let mut s = spec(&server.url("/redirect/3"));
    s.follow_redirects = false;
    let report = probe(s).await;
    assert_eq!(report.status, ProbeStatus::Up, "302 is in 200-399");
    assert_eq!(report.http_status, Some(302));
    assert_eq!(report.redirect_count, 0);

    let mut s = spec(&server.url("/redirect/3"));
    s.max_redirects = 2;
    let report = probe(s).await;
    assert_eq!(report.error_kind, Some(ErrorKind::TooManyRedirects));
    assert_eq!(report.redirect_count, 2);
}

#[tokio::test]
async fn redirect_hops_sum_their_phases() {
    // Three hops (two redirects, then the answer), each head delayed 50 ms.
    let server = TestServer::http().await;
    let report = probe(spec(&server.url("/slow-redirect/2"))).await;
    assert_eq!(report.status, ProbeStatus::Up, "{report:?}");
    assert_eq!(report.redirect_count, 2);
    let ttfb = report.ttfb_ms.unwrap();
    assert!(ttfb >= 150.0, "ttfb {ttfb} is not summed over 3 hops");
    assert!(ttfb < 150.0 + SLACK_MS, "ttfb {ttfb}");
    assert!(report.total_ms >= ttfb + report.connect_ms.unwrap());
}

#[tokio::test]
async fn redirect_loop_is_detected() {
    let server = TestServer::http().await;
    let report = probe(spec(&server.url("/loop/a"))).await;
    assert_eq!(report.status, ProbeStatus::Down);
    assert_eq!(
        report.error_kind,
        Some(ErrorKind::RedirectLoop),
        "{report:?}"
    );
    assert_eq!(report.redirect_count, 1);
}

#[tokio::test]
async fn thresholds_turn_a_slow_success_into_warning_or_critical() {
    let server = TestServer::http().await;
    let mut s = spec(&server.url("/delay/80"));
    s.warning_ms = Some(40.0);
    s.critical_ms = Some(5_000.0);
    let report = probe(s.clone()).await;
    assert_eq!(report.status, ProbeStatus::Warning);
    assert!(report.success());
    assert_eq!(report.error_kind, None);

    s.critical_ms = Some(60.0);
    assert_eq!(probe(s.clone()).await.status, ProbeStatus::Critical);

    s.warning_ms = Some(5_000.0);
    s.critical_ms = Some(10_000.0);
    assert_eq!(probe(s).await.status, ProbeStatus::Up);
}

#[tokio::test]
async fn method_headers_and_body_reach_the_server() {
    let server = TestServer::http().await;
    let mut s = spec(&server.url("/echo"));
    s.method = "post".into();
    s.headers = vec![
        ("X-Probe".into(), "yes".into()),
        ("Authorization".into(), "Bearer t0ken".into()),
    ];
    s.body = Some("ping=1".into());
    s.capture_body_bytes = Some(4096);
    let report = probe(s).await;
    let echoed = report.response_body.unwrap();
    assert!(echoed.starts_with("POST HTTP/1.1\n"), "{echoed}");
    assert!(echoed.contains("x-probe: yes"), "{echoed}");
    assert!(echoed.contains("authorization: Bearer t0ken"), "{echoed}");
    assert!(
        echoed.contains(&format!("host: 127.0.0.1:{}", server.port())),
        "{echoed}"
    );
    assert!(echoed.contains("content-length: 6"), "{echoed}");
    assert!(echoed.ends_with("\nping=1"), "{echoed}");
}

#[tokio::test]
async fn one_prober_serves_many_concurrent_probes() {
    let server = TestServer::http().await;
    let prober = std::sync::Arc::new(Prober::builder().build().unwrap());
    let monitor = std::sync::Arc::new(Monitor::new(spec(&server.url("/delay/50"))).unwrap());
    let started = Instant::now();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (prober, monitor) = (prober.clone(), monitor.clone());
            tokio::spawn(async move { prober.probe(&monitor).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().status, ProbeStatus::Up);
    }
    // Concurrent, not serial (20 × 50 ms).
    assert!(started.elapsed() < Duration::from_millis(700));
}

/// A probe waiting on the network holds the state of the phase it is in, not room for
/// every kind's and every phase's: with a thousand probes in flight (a slow or saturated
/// target), that room was most of the process's memory (54 kB each; issue #14).
#[tokio::test]
async fn a_probe_in_flight_holds_a_few_kilobytes_of_state() {
    let prober = Prober::builder().build().unwrap();
    let monitor = Monitor::new(spec("https://127.0.0.1:1/")).unwrap();
    let probe = prober.probe(&monitor);
    let size = std::mem::size_of_val(&probe);
    println!("Prober::probe's future: {size} bytes");
    assert!(size <= 1024, "Prober::probe's future is {size} bytes");
}
