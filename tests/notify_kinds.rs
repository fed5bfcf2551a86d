//! Each channel kind against a local stand-in of its service: Slack's incoming webhook,
//! Telegram's Bot API and PagerDuty's Events API v2 as real HTTP servers checking
//! method, path, headers and JSON; e-mail against a real SMTP server speaking STARTTLS
//! and implicit TLS with a generated certificate. Then `vantage notify test` and
//! `vantage notify new-secret` as an operator runs them.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::cluster::{seed_datacenters, seed_monitor};
use support::notify::{channel, open_incident, outbox, resolve_incident, route, Receiver};
use support::pg::TestDb;
use support::smtp::SmtpServer;
use support::tls::{server_config, TestCa};
use vantage::notify::{Deliverer, NotifyConfig, Outcome};
use vantage::probe::Prober;

fn deliverer(db: &TestDb) -> Deliverer {
    let mut config = NotifyConfig::new(Arc::new(Prober::builder().build().unwrap()));
    config.attempt_timeout = Duration::from_secs(5);
    Deliverer::new(db.pool.clone(), config, None)
}

/// Opens and resolves one incident of a monitor "checkout" seen down from va and lon,
/// delivering after each step (so each channel sees the two events in order).
async fn incident_lifecycle(db: &TestDb, deliverer: &Deliverer) -> i64 {
    let dcs = seed_datacenters(&db.pool, &["va", "lon"]).await;
    let monitor = seed_monitor(&db.pool, "checkout", "https://shop.example/health", 10).await;
    let incident = open_incident(&db.pool, monitor, &dcs).await;
    for outcome in deliverer.deliver_due().await.unwrap() {
        assert!(matches!(outcome, Outcome::Sent { .. }), "{outcome:?}");
    }
    resolve_incident(&db.pool, incident).await;
    for outcome in deliverer.deliver_due().await.unwrap() {
        assert!(matches!(outcome, Outcome::Sent { .. }), "{outcome:?}");
    }
    incident
}

#[tokio::test]
async fn slack_telegram_and_pagerduty_get_their_own_formats() {
    let db = TestDb::fresh().await;
    let api = Receiver::start().await;
    let slack = channel(
        &db.pool,
        "slack",
        "slack",
        json!({"url": api.url("/services/T000/B000/XXXX")}),
    )
    .await;
    let telegram = channel(
        &db.pool,
        "telegram",
        "telegram",
        json!({"bot_token": "123456:ABC-token", "chat_id": -1001234, "api_base": api.url("")}),
    )
    .await;
    let pagerduty = channel(
        &db.pool,
        "pagerduty",
        "pagerduty",
        json!({"routing_key": "R0UT1NGKEY0123456789", "api_base": api.url("/")}),
    )
    .await;
    for id in [slack, telegram, pagerduty] {
        route(&db.pool, id, None).await;
    }
    let incident = incident_lifecycle(&db, &deliverer(&db)).await;

    let received = api.received();
    assert_eq!(received.len(), 6);
    for request in &received {
        assert_eq!(request.method, "POST", "{}", request.path);
        assert_eq!(request.header("content-type"), "application/json");
        assert!(request.header("user-agent").starts_with("vantage/"));
    }
    let at = |path: &str| -> Vec<serde_json::Value> {
        received
            .iter()
            .filter(|r| r.path == path)
            .map(|r| r.json())
            .collect()
    };

    let slack = at("/services/T000/B000/XXXX");
    assert_eq!(slack.len(), 2);
    assert_eq!(slack[0]["text"], "DOWN: checkout");
    assert_eq!(slack[0]["blocks"][0]["type"], "header");
    assert_eq!(slack[0]["blocks"][0]["text"]["text"], "DOWN: checkout");
    let fields: Vec<&str> = slack[0]["blocks"][1]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["text"].as_str().unwrap())
        .collect();
    assert!(fields.contains(&"*Datacenters*\nva, lon"), "{fields:?}");
    assert!(
        fields.contains(&"*First error*\nconnection refused"),
        "{fields:?}"
    );
    assert_eq!(slack[1]["text"], "RESOLVED: checkout");
    assert!(slack[1].to_string().contains("*Duration*"), "{}", slack[1]);

    let telegram = at("/bot123456:ABC-token/sendMessage");
    assert_eq!(telegram.len(), 2);
    assert_eq!(telegram[0]["chat_id"], -1001234);
    assert!(telegram[0]["text"].as_str().unwrap().starts_with(
        "DOWN: checkout\nMonitor: checkout (https://shop.example/health)\nDatacenters: va, lon"
    ));
    assert!(telegram[1]["text"]
        .as_str()
        .unwrap()
        .starts_with("RESOLVED: checkout"));

    let pagerduty = at("/v2/enqueue");
    assert_eq!(pagerduty.len(), 2);
    assert_eq!(pagerduty[0]["routing_key"], "R0UT1NGKEY0123456789");
    assert_eq!(pagerduty[0]["event_action"], "trigger");
    assert_eq!(pagerduty[0]["dedup_key"], incident.to_string());
    assert_eq!(pagerduty[0]["payload"]["summary"], "DOWN: checkout");
    assert_eq!(pagerduty[0]["payload"]["severity"], "critical");
    assert_eq!(
        pagerduty[0]["payload"]["source"],
        "https://shop.example/health"
    );
    assert_eq!(
        pagerduty[0]["payload"]["custom_details"]["incident"]["id"],
        incident
    );
    assert_eq!(pagerduty[1]["event_action"], "resolve");
    assert_eq!(pagerduty[1]["dedup_key"], incident.to_string());
}

async fn email_over(implicit: bool) {
    let db = TestDb::fresh().await;
    let ca = TestCa::new();
    let ca_file = ca.pem_file();
    let server = SmtpServer::start(
        server_config(&ca.leaf(&["localhost"]), &[]),
        implicit,
        "vantage",
        "smtp-pa55",
    )
    .await;
    std::env::set_var("VANTAGE_TEST_SMTP_PASSWORD", "smtp-pa55");
    let id = channel(
        &db.pool,
        "mail",
        "email",
        json!({
            "host": "localhost",
            "port": server.addr.port(),
            "tls": if implicit { "implicit" } else { "starttls" },
            "from": "Vantage <vantage@example.com>",
            "to": ["ops@example.com", "oncall@example.com"],
            "username": "vantage",
            "password": "env:VANTAGE_TEST_SMTP_PASSWORD",
            "ca_file": ca_file.path(),
        }),
    )
    .await;
    route(&db.pool, id, None).await;
    incident_lifecycle(&db, &deliverer(&db)).await;

    let mails = server.mails();
    assert_eq!(mails.len(), 2);
    for mail in &mails {
        assert_eq!(mail.user.as_deref(), Some("vantage"));
        assert_eq!(mail.from, "vantage@example.com");
        assert_eq!(mail.to, ["ops@example.com", "oncall@example.com"]);
        assert!(
            mail.data.contains("Content-Type: text/plain"),
            "{}",
            mail.data
        );
    }
    assert!(
        mails[0].data.contains("Subject: [vantage] DOWN: checkout"),
        "{}",
        mails[0].data
    );
    assert!(
        mails[0].data.contains("Datacenters: va, lon"),
        "{}",
        mails[0].data
    );
    assert!(
        mails[1]
            .data
            .contains("Subject: [vantage] RESOLVED: checkout"),
        "{}",
        mails[1].data
    );
    let codes: Vec<Option<i32>> =
        sqlx::query_scalar("SELECT status_code FROM notification_attempts ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        codes,
        [Some(250), Some(250)],
        "the SMTP reply code is recorded"
    );
}

#[tokio::test]
async fn email_goes_out_over_starttls() {
    email_over(false).await;
}

#[tokio::test]
async fn email_goes_out_over_implicit_tls() {
    email_over(true).await;
}

#[tokio::test]
async fn email_to_a_server_with_an_untrusted_certificate_fails_and_is_retried() {
    let db = TestDb::fresh().await;
    let server = SmtpServer::start(
        server_config(&TestCa::new().leaf(&["localhost"]), &[]),
        false,
        "vantage",
        "smtp-pa55",
    )
    .await;
    let id = channel(
        &db.pool,
        "mail",
        "email",
        json!({"host": "localhost", "port": server.addr.port(), "from": "v@example.com", "to": ["ops@example.com"]}),
    )
    .await;
    route(&db.pool, id, None).await;
    let dcs = seed_datacenters(&db.pool, &["va"]).await;
    let monitor = seed_monitor(&db.pool, "checkout", "https://shop.example/", 10).await;
    open_incident(&db.pool, monitor, &dcs).await;

    let outcomes = deliverer(&db).deliver_due().await.unwrap();
    let [Outcome::Failed {
        error,
        final_attempt: false,
        ..
    }] = outcomes.as_slice()
    else {
        panic!("{outcomes:?}");
    };
    assert!(
        error.starts_with(&format!("SMTP localhost:{}:", server.addr.port())),
        "{error}"
    );
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    assert!(server.mails().is_empty());
    assert_eq!(outbox(&db.pool, id).await[0].1, "pending");
}

fn vantage(args: &[&str], database_url: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vantage"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .env_remove("RUST_LOG")
        .output()
        .expect("running vantage")
}

#[tokio::test]
async fn notify_test_sends_through_the_real_path_and_says_how_it_went() {
    let db = TestDb::fresh().await;
    let receiver = Receiver::start().await;
    receiver.respond_with(|r| {
        if r.path == "/down" {
            (503, Duration::ZERO)
        } else {
            (200, Duration::ZERO)
        }
    });
    let secret = String::from_utf8(vantage(&["notify", "new-secret"], &db.url).stdout).unwrap();
    let secret = secret.trim();
    assert!(secret.starts_with("whsec_"), "{secret}");
    channel(
        &db.pool,
        "ops",
        "webhook",
        json!({"url": receiver.url("/up"), "secret": secret}),
    )
    .await;
    channel(
        &db.pool,
        "broken",
        "slack",
        json!({"url": receiver.url("/down")}),
    )
    .await;

    let url = db.url.clone();
    let ok = tokio::task::spawn_blocking(move || vantage(&["notify", "test", "ops"], &url))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.starts_with("sent test event "), "{stdout}");
    assert!(stdout.contains(" to ops (webhook) in "), "{stdout}");
    assert!(stdout.trim_end().ends_with(", status 200"), "{stdout}");
    let request = &receiver.received()[0];
    assert_eq!(request.json()["event"], "test");
    assert!(
        stdout.contains(request.header("webhook-id")),
        "the printed id is the webhook-id"
    );
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(&request.body, &request.headers)
        .unwrap();

    let url = db.url.clone();
    let failed = tokio::task::spawn_blocking(move || vantage(&["notify", "test", "broken"], &url))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("to broken (slack) failed after "),
        "{stderr}"
    );
    assert!(
        stderr.trim_end().ends_with(": HTTP 503: receiver says 503"),
        "{stderr}"
    );
    let statuses: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.name, n.status FROM notifications n JOIN notification_channels c ON c.id = n.channel_id ORDER BY n.id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        statuses,
        [
            ("ops".into(), "sent".into()),
            ("broken".into(), "failed".into())
        ],
        "a failed test is not retried"
    );

    let url = db.url.clone();
    let unknown = tokio::task::spawn_blocking(move || vantage(&["notify", "test", "nope"], &url))
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&unknown.stderr).trim(),
        "error: no notification channel named \"nope\"; the channels are: broken, ops"
    );

    let url = db.url.clone();
    let listed = tokio::task::spawn_blocking(move || vantage(&["notifications", "--failed"], &url))
        .await
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    assert!(
        lines[1].contains("broken")
            && lines[1].contains("failed")
            && lines[1].ends_with("HTTP 503: receiver says 503"),
        "{listed}"
    );
}

/// The Python verifier shown in README.md, run on a real delivery: it accepts it with
/// the channel's secret and rejects it with another one or with a stale timestamp.
#[tokio::test]
async fn the_readme_python_verifier_accepts_a_real_delivery() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let snippet = readme
        .split("```python\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap())
        .find(|block| block.contains("def verify("))
        .expect("README shows a Python verify()");
    let db = TestDb::fresh().await;
    let receiver = Receiver::start().await;
    let secret = vantage::notify::signature::new_secret();
    channel(
        &db.pool,
        "ops",
        "webhook",
        json!({"url": receiver.url("/hook"), "secret": secret}),
    )
    .await;
    let url = db.url.clone();
    let sent = tokio::task::spawn_blocking(move || vantage(&["notify", "test", "ops"], &url))
        .await
        .unwrap();
    assert!(sent.status.success());
    let request = &receiver.received()[0];
    let headers: serde_json::Map<String, serde_json::Value> =
        ["webhook-id", "webhook-timestamp", "webhook-signature"]
            .iter()
            .map(|h| (h.to_string(), request.header(h).into()))
            .collect();
    let case = json!({
        "headers": headers,
        "body": String::from_utf8(request.body.to_vec()).unwrap(),
        "secret": secret,
        "other": vantage::notify::signature::new_secret(),
    });
    let program = format!(
        "{snippet}\nimport json, sys\nc = json.load(sys.stdin)\nh, b = c['headers'], c['body'].encode()\n\
         stale = dict(h, **{{'webhook-timestamp': str(int(h['webhook-timestamp']) - 301)}})\n\
         print(verify(c['secret'], h, b), verify(c['other'], h, b), verify(c['secret'], stale, b))\n"
    );
    let output = tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut child = Command::new("python3")
            .args(["-c", &program])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("python3 is installed");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(case.to_string().as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "True False False",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
