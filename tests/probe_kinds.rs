//! The tcp, tls and dns kinds against real servers on loopback: a TCP banner server
//! and an echo server, TLS servers with certificates made at test time (implicit TLS
//! and SMTP STARTTLS), the UDP DNS responder. And the database's side of kinds: rows
//! of every kind load into runnable monitors, bad ones are rejected by name.

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use support::cluster::{seed_datacenters, seed_monitor, Instance, InstanceOptions};
use support::dns::DnsServer;
use support::eventually::eventually;
use support::http::{refused_addr, TestServer};
use support::pg::TestDb;
use support::probe::trusting;
use support::smtp::SmtpServer;
use support::tls::{server_config, TestCa};
use vantage::probe::{Kind, Monitor, MonitorSpec, Prober};
use vantage::{ErrorKind, ProbeReport, ProbeStatus};

fn kind_spec(kind: Kind, url: &str, settings: Value) -> MonitorSpec {
    MonitorSpec {
        kind,
        url: url.to_string(),
        settings,
        timeout: Duration::from_secs(3),
        ..MonitorSpec::default()
    }
}

async fn probe(prober: &Prober, spec: MonitorSpec) -> ProbeReport {
    prober.probe(&Monitor::new(spec).unwrap()).await
}

fn plain() -> Prober {
    Prober::builder().build().unwrap()
}

/// A TCP server that sends `banner` on connect, then answers each line it reads with
/// `reply` (if any).
async fn tcp_server(banner: &'static str, reply: Option<&'static str>) -> (u16, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.write_all(banner.as_bytes()).await;
                let mut buf = [0u8; 512];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    if let Some(reply) = reply {
                        let _ = stream.write_all(reply.as_bytes()).await;
                    }
                }
            });
        }
    });
    (port, task)
}

#[tokio::test]
async fn tcp_connects_and_reads_the_banner() {
    let (port, _server) = tcp_server("SSH-2.0-OpenSSH_9.6\r\n", None).await;
    let url = format!("tcp://127.0.0.1:{port}");

    let report = probe(&plain(), kind_spec(Kind::Tcp, &url, json!({}))).await;
    assert_eq!(report.status, ProbeStatus::Up, "{report:?}");
    assert!(report.connect_ms.is_some());
    assert_eq!(
        (report.dns_ms, report.tls_ms, report.http_status),
        (None, None, None)
    );
    assert_eq!(report.remote_ip, Some(Ipv4Addr::LOCALHOST.into()));

    let report = probe(
        &plain(),
        kind_spec(Kind::Tcp, &url, json!({"expect": "SSH-2.0"})),
    )
    .await;
    assert_eq!(report.status, ProbeStatus::Up, "{report:?}");
    assert!(report.ttfb_ms.is_some(), "{report:?}");
    assert_eq!(
        report.details,
        Some(json!({"banner": "SSH-2.0-OpenSSH_9.6\r\n"}))
    );

    // The server keeps the connection open: the deadline ends the wait and says so,
    // and what the server did say is kept.
    let mut smtp = kind_spec(Kind::Tcp, &url, json!({"expect": "220 "}));
    smtp.timeout = Duration::from_millis(300);
    let report = probe(&plain(), smtp).await;
    assert_eq!(report.error_kind, Some(ErrorKind::Timeout), "{report:?}");
    assert_eq!(
        report.error_message.as_deref(),
        Some("timed out after 300 ms waiting for the server's reply")
    );
    assert_eq!(
        report.details,
        Some(json!({"banner": "SSH-2.0-OpenSSH_9.6\r\n"}))
    );
}

#[tokio::test]
async fn tcp_sends_and_expects_a_reply() {
    let (port, _server) = tcp_server("", Some("+PONG\r\n")).await;
    let url = format!("tcp://127.0.0.1:{port}");
    let ping = |expect: &str| {
        kind_spec(
            Kind::Tcp,
            &url,
            json!({"send": "PING\r\n", "expect": expect}),
        )
    };

    let report = probe(&plain(), ping("+PONG")).await;
    assert_eq!(report.status, ProbeStatus::Up, "{report:?}");
    assert_eq!(report.details, Some(json!({"banner": "+PONG\r\n"})));

    let (port, _closing) = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream.write_all(b"-ERR unknown command\r\n").await;
            }
        });
        (port, task)
    };
    let url = format!("tcp://127.0.0.1:{port}");
    let report = probe(
        &plain(),
        kind_spec(
            Kind::Tcp,
            &url,
            json!({"send": "PING\r\n", "expect": "+PONG"}),
        ),
    )
    .await;
    assert_eq!(
        report.error_kind,
        Some(ErrorKind::AssertionFailed),
        "{report:?}"
    );
    assert_eq!(
        report.error_message.as_deref(),
        Some("reply: expected \"+PONG\" before the connection closed, got \"-ERR unknown command\\r\\n\"")
    );

    let refused = refused_addr().await;
    let report = probe(
        &plain(),
        kind_spec(Kind::Tcp, &format!("tcp://{refused}"), json!({})),
    )
    .await;
    assert_eq!(
        report.error_kind,
        Some(ErrorKind::ConnectRefused),
        "{report:?}"
    );
}

#[tokio::test]
async fn tls_reports_the_certificate_and_judges_it() {
    let ca = TestCa::new();
    let server = TestServer::https(server_config(&ca.leaf(&["127.0.0.1"]), &[])).await;
    let url = format!("tls://127.0.0.1:{}", server.port());
    let trusting = trusting(&ca);

    let report = probe(&trusting, kind_spec(Kind::Tls, &url, json!({}))).await;
    assert_eq!(report.status, ProbeStatus::Up, "{report:?}");
    assert!(report.connect_ms.is_some() && report.tls_ms.is_some());
    assert_eq!(report.tls_version.as_deref(), Some("TLSv1.3"));
    assert_eq!(
        report.tls_cert_expires_at.map(|t| t.timestamp()),
        Some(4102444800),
        "the leaf's not-after, 2100-01-01"
    );
    let details = report.details.expect("certificate details");
    assert_eq!(details["issuer"], json!("CN=Vantage Test CA"));

    // Not trusted by default: the public roots do not know the test CA.
    let report = probe(&plain(), kind_spec(Kind::Tls, &url, json!({}))).await;
    assert_eq!(
        report.error_kind,
        Some(ErrorKind::TlsCertificate),
        "{report:?}"
    );
    assert!(
        report.tls_cert_expires_at.is_some(),
        "reported even when refused"
    );

    // Unless the monitor turns verification off.
    let mut insecure = kind_spec(Kind::Tls, &url, json!({}));
    insecure.verify_tls = false;
    assert_eq!(probe(&plain(), insecure).await.status, ProbeStatus::Up);

    let expired = TestServer::https(server_config(&ca.expired_leaf(&["127.0.0.1"]), &[])).await;
    let report = probe(
        &trusting,
        kind_spec(
            Kind::Tls,
            &format!("tls://127.0.0.1:{}", expired.port()),
            json!({}),
        ),
    )
    .await;
    assert_eq!(
        report.error_kind,
        Some(ErrorKind::TlsCertificate),
        "{report:?}"
    );
}

#[tokio::test]
async fn tls_upgrades_smtp_with_starttls() {
    let ca = TestCa::new();
    let smtp = SmtpServer::start(
        server_config(&ca.leaf(&["127.0.0.1"]), &[]),
        false,
        "u",
        "p",
    )
    .await;
    let url = format!("tls://127.0.0.1:{}", smtp.addr.port());
    let trusting = trusting(&ca);

    let report = probe(
        &trusting,
        kind_spec(Kind::Tls, &url, json!({"starttls": "smtp"})),
    )
    .await;
    assert_eq!(report.status, ProbeStatus::Up, "{report:?}");
    assert!(
        report.ttfb_ms.is_some(),
        "the greeting is timed: {report:?}"
    );
    assert!(report.tls_ms.is_some() && report.tls_cert_expires_at.is_some());

    // Without STARTTLS the server's plain-text greeting is no TLS handshake.
    let report = probe(&trusting, kind_spec(Kind::Tls, &url, json!({}))).await;
    assert_eq!(
        report.error_kind,
        Some(ErrorKind::TlsHandshake),
        "{report:?}"
    );
}

#[tokio::test]
async fn dns_queries_a_server_and_checks_answers() {
    let dns = DnsServer::builder()
        .a("app.test", &[Ipv4Addr::new(192, 0, 2, 7)])
        .mx("mail.test", &[(10, "mx1.mail.test"), (20, "mx2.mail.test")])
        .txt("mail.test", &["v=spf1 -all"])
        .never("slow.test")
        .start()
        .await;
    let at = |name: &str, rtype: &str| format!("dns://{name}?type={rtype}&server={}", dns.addr);
    let prober = plain();

    let report = probe(
        &prober,
        kind_spec(
            Kind::Dns,
            &at("app.test", "A"),
            json!({"answers": ["192.0.2.7"]}),
        ),
    )
    .await;
    assert_eq!(report.status, ProbeStatus::Up, "{report:?}");
    assert!(report.dns_ms.is_some());
    assert_eq!((report.connect_ms, report.ttfb_ms), (None, None));
    assert_eq!(
        report.details,
        Some(json!({"rcode": "NOERROR", "answers": ["192.0.2.7"]}))
    );
    assert_eq!(report.remote_ip, Some(dns.addr.ip()));

    let report = probe(
        &prober,
        kind_spec(
            Kind::Dns,
            &at("app.test", "A"),
            json!({"answers": ["192.0.2.8"]}),
        ),
    )
    .await;
    assert_eq!(
        report.error_kind,
        Some(ErrorKind::AssertionFailed),
        "{report:?}"
    );
    assert_eq!(
        report.error_message.as_deref(),
        Some("answers: expected [\"192.0.2.8\"] among the A answers, got [\"192.0.2.7\"]")
    );

    let report = probe(
        &prober,
        kind_spec(
            Kind::Dns,
            &at("mail.test", "MX"),
            json!({"answers": ["10 MX1.mail.test"]}),
        ),
    )
    .await;
    assert_eq!(report.status, ProbeStatus::Up, "{report:?}");
    assert_eq!(
        report.details.unwrap()["answers"],
        json!(["10 mx1.mail.test.", "20 mx2.mail.test."])
    );
    let report = probe(
        &prober,
        kind_spec(Kind::Dns, &at("mail.test", "TXT"), json!({})),
    )
    .await;
    assert_eq!(report.details.unwrap()["answers"], json!(["v=spf1 -all"]));

    // A name that must not exist, and one that must.
    let gone = kind_spec(
        Kind::Dns,
        &at("gone.test", "A"),
        json!({"rcode": "NXDOMAIN"}),
    );
    assert_eq!(probe(&prober, gone).await.status, ProbeStatus::Up);
    let report = probe(
        &prober,
        kind_spec(Kind::Dns, &at("gone.test", "A"), json!({})),
    )
    .await;
    assert_eq!(
        report.error_kind,
        Some(ErrorKind::DnsNxdomain),
        "{report:?}"
    );
    let report = probe(
        &prober,
        kind_spec(
            Kind::Dns,
            &at("app.test", "A"),
            json!({"rcode": "NXDOMAIN"}),
        ),
    )
    .await;
    assert_eq!(
        report.error_kind,
        Some(ErrorKind::AssertionFailed),
        "{report:?}"
    );

    // A known name without records of the type asked.
    let report = probe(
        &prober,
        kind_spec(Kind::Dns, &at("app.test", "MX"), json!({})),
    )
    .await;
    assert_eq!(
        report.error_kind,
        Some(ErrorKind::DnsNxdomain),
        "{report:?}"
    );
    assert_eq!(
        report.error_message.as_deref(),
        Some("app.test: no MX records")
    );

    let mut silent = kind_spec(Kind::Dns, &at("slow.test", "A"), json!({}));
    silent.timeout = Duration::from_millis(500);
    let report = probe(&prober, silent).await;
    assert_eq!(report.error_kind, Some(ErrorKind::DnsTimeout), "{report:?}");
}

#[test]
fn a_target_of_another_kind_is_named() {
    let err = Monitor::new(kind_spec(Kind::Http, "tcp://db:5432", json!({}))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "url: tcp://db:5432 is a tcp target but the monitor's kind is http; make them agree"
    );
    let mut with_headers = kind_spec(Kind::Tcp, "tcp://db:5432", json!({}));
    with_headers.headers = vec![("Accept".into(), "*/*".into())];
    assert_eq!(
        Monitor::new(with_headers).unwrap_err().to_string(),
        "headers: a tcp monitor sends no HTTP request; leave headers at its default"
    );
}

#[tokio::test]
async fn rows_of_every_kind_load_and_bad_ones_are_refused_by_name() {
    let db = TestDb::fresh().await;
    sqlx::raw_sql(
        "INSERT INTO regions (code, name) VALUES ('us', 'US');
         INSERT INTO datacenters (code, name, region_id) SELECT 'va', 'Virginia', id FROM regions;
         INSERT INTO schedules (name, interval_seconds, timeout_ms) VALUES ('s', 10, 5000);
         INSERT INTO api_monitors (name, kind, url, settings, schedule_id, all_datacenters)
         SELECT n, k, u, s::jsonb, (SELECT id FROM schedules), true FROM (VALUES
             ('web', 'http', 'https://example.com/', '{}'),
             ('db', 'tcp', 'tcp://db.example.com:5432', '{\"expect\": \"x\"}'),
             ('mail', 'tls', 'tls://mail.example.com:587', '{\"starttls\": \"smtp\"}'),
             ('mx', 'dns', 'dns://example.com?type=MX', '{\"answers\": [\"10 mx.example.com\"]}')
         ) AS rows(n, k, u, s);",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let dc: i32 = sqlx::query_scalar("SELECT id FROM datacenters WHERE code = 'va'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let (runnable, rejected) = vantage::monitors::load(&db.pool, dc).await.unwrap();
    assert!(rejected.is_empty(), "{rejected:?}");
    let kinds: Vec<(String, Kind)> = runnable
        .iter()
        .map(|m| (m.name.to_string(), m.monitor.kind()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("web".to_string(), Kind::Http),
            ("db".to_string(), Kind::Tcp),
            ("mail".to_string(), Kind::Tls),
            ("mx".to_string(), Kind::Dns),
        ]
    );

    for (kind, url, settings, expected) in [
        (
            "smtp",
            "tcp://h:25",
            "{}",
            "api_monitors.kind must be one of http, tcp, tls, dns",
        ),
        (
            "tcp",
            "tcp://h",
            "{}",
            "api_monitors.url must be tcp://host:port",
        ),
        (
            "http",
            "tcp://h:1",
            "{}",
            "api_monitors.url must use http:// or https://",
        ),
        (
            "tcp",
            "tcp://h:1",
            "{\"sned\": 1}",
            "api_monitors.settings has sned, which a tcp monitor does not take",
        ),
        ("dns", "dns://h", "{}", "ok"),
    ] {
        let result = sqlx::query(
            "INSERT INTO api_monitors (name, kind, url, settings, schedule_id)
             VALUES ($1, $2, $3, $4::jsonb, (SELECT id FROM schedules))",
        )
        .bind(format!("bad-{kind}-{url}-{settings}"))
        .bind(kind)
        .bind(url)
        .bind(settings)
        .execute(&db.pool)
        .await;
        match result {
            Ok(_) => assert_eq!(expected, "ok", "{kind} {url} {settings} was accepted"),
            Err(err) => assert!(
                err.to_string().contains(expected),
                "{kind} {url} {settings}: {err}"
            ),
        }
    }
    let err = sqlx::query(
        "UPDATE api_monitors SET assertions = '[{\"type\": \"header\", \"name\": \"x\", \"op\": \"exists\"}]' WHERE name = 'db'",
    )
    .execute(&db.pool)
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("a header assertion needs an http monitor; this one is tcp"),
        "{err}"
    );
}

#[tokio::test]
async fn every_kind_runs_under_vantage_run_and_its_facts_are_stored() {
    let db = TestDb::fresh().await;
    seed_datacenters(&db.pool, &["va"]).await;
    let http = TestServer::http().await;
    let (port, _banner) = tcp_server("220 mail.test ESMTP\r\n", None).await;
    let dns = DnsServer::builder()
        .a("app.test", &[Ipv4Addr::new(192, 0, 2, 7)])
        .start()
        .await;
    let web = seed_monitor(&db.pool, "web", &http.url("/json/ok"), 1).await;
    let mail = seed_monitor(&db.pool, "mail", "https://placeholder.invalid/", 1).await;
    let name = seed_monitor(&db.pool, "name", "https://placeholder.invalid/", 1).await;
    sqlx::query(
        "UPDATE api_monitors SET capture_headers = '{x-cache}',
                assertions = '[{\"type\": \"json\", \"path\": \"$.status\", \"op\": \"==\", \"value\": \"ok\"}]'
         WHERE id = $1",
    )
    .bind(web)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE api_monitors SET kind = 'tcp', url = $2, settings = '{\"expect\": \"220 \"}' WHERE id = $1")
        .bind(mail)
        .bind(format!("tcp://127.0.0.1:{port}"))
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE api_monitors SET kind = 'dns', url = $2 WHERE id = $1")
        .bind(name)
        .bind(format!("dns://app.test?server={}", dns.addr))
        .execute(&db.pool)
        .await
        .unwrap();
    let _runner = Instance::start(InstanceOptions {
        database_url: &db.url,
        datacenter: "va",
        name: "va-a",
        extra_env: vec![],
    });

    type Stored = (
        String,
        Option<String>,
        Option<String>,
        Option<Value>,
        Option<Value>,
    );
    let stored = |monitor: i32| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_as::<_, Stored>(
                "SELECT status, content_type, server, response_headers, details
                 FROM api_heartbeats WHERE monitor_id = $1 ORDER BY scheduled_at LIMIT 1",
            )
            .bind(monitor)
            .fetch_optional(&pool)
            .await
            .unwrap()
        }
    };
    let within = Duration::from_secs(30);
    let (status, content_type, server, headers, _) =
        eventually("the web monitor's heartbeat", within, || stored(web)).await;
    assert_eq!(status, "up");
    assert_eq!(
        content_type.as_deref(),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(server.as_deref(), Some("vantage-test/1.0"));
    assert_eq!(headers, Some(json!({"x-cache": "HIT"})));

    let (status, _, _, _, details) =
        eventually("the tcp monitor's heartbeat", within, || stored(mail)).await;
    assert_eq!(status, "up");
    assert_eq!(details, Some(json!({"banner": "220 mail.test ESMTP\r\n"})));

    let (status, _, _, _, details) =
        eventually("the dns monitor's heartbeat", within, || stored(name)).await;
    assert_eq!(status, "up");
    assert_eq!(
        details,
        Some(json!({"rcode": "NOERROR", "answers": ["192.0.2.7"]}))
    );
}
