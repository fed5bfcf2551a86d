//! Secrets stay secret: the database password and secret header values never appear in
//! an instance's logs (at debug level, through start-up, probing, a failing monitor and a
//! database that cannot be reached), in `/status` or in `/metrics`.

mod support;

use std::time::Duration;

use support::cluster::{heartbeats, seed_datacenters, serve_target, Instance, InstanceOptions};
use support::eventually::eventually;
use support::pg::TestDb;

const DB_PASSWORD: &str = "db-pa55word-never-logged";
const BEARER: &str = "bearer-value-never-logged";
const API_KEY: &str = "api-key-value-never-logged";
// Notification channel secrets (delivered by the instance that leads the evaluator).
const WEBHOOK_SECRET: &str = "whsec_d2ViaG9vay1zZWNyZXQtbmV2ZXItbG9nZ2Vk";
const BOT_TOKEN: &str = "4242:bot-token-never-logged";

/// `postgres://user@host/db` -> `postgres://user:PASSWORD@host/db`. The test cluster
/// trusts loopback, so the password is accepted and never checked.
fn with_password(url: &str) -> String {
    url.replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{DB_PASSWORD}@"),
        1,
    )
}

fn assert_clean(what: &str, text: &str) {
    for secret in [DB_PASSWORD, BEARER, API_KEY, WEBHOOK_SECRET, BOT_TOKEN] {
        assert!(!text.contains(secret), "{what} leaks {secret:?}:\n{text}");
    }
}

#[tokio::test]
async fn passwords_and_secret_headers_never_reach_logs_status_or_metrics() {
    let db = TestDb::fresh().await;
    assert!(
        db.url.starts_with("postgres://postgres@"),
        "unexpected test URL {}",
        db.url
    );
    let target = serve_target().await;
    seed_datacenters(&db.pool, &["va"]).await;
    sqlx::query("INSERT INTO schedules (name, interval_seconds, timeout_ms) VALUES ('1s', 1, 500)")
        .execute(&db.pool)
        .await
        .unwrap();
    // One monitor that succeeds and one that fails, both sending secrets: Authorization
    // is always secret, X-Api-Key because the row says so.
    let mut monitors = Vec::new();
    for (name, path) in [("ok", "/ok"), ("failing", "/fail")] {
        let id: i32 = sqlx::query_scalar(
            "INSERT INTO api_monitors (name, url, schedule_id, all_datacenters, headers, secret_headers) \
             SELECT $1, $2, id, true, $3, '{X-Api-Key}' FROM schedules WHERE name = '1s' RETURNING id",
        )
        .bind(name)
        .bind(format!("http://{target}{path}"))
        .bind(serde_json::json!({"Authorization": format!("Bearer {BEARER}"), "X-Api-Key": API_KEY}))
        .fetch_one(&db.pool)
        .await
        .unwrap();
        monitors.push(id);
    }

    // Channels told about every incident, each failing (the target answers /fail with 500).
    sqlx::query(
        "WITH c AS (INSERT INTO notification_channels (name, kind, config) VALUES \
             ('hook', 'webhook', jsonb_build_object('url', $1::text, 'secret', $2::text)), \
             ('bot', 'telegram', jsonb_build_object('bot_token', $3::text, 'chat_id', 1, 'api_base', $4::text)) \
             RETURNING id) \
         INSERT INTO notification_routes (channel_id) SELECT id FROM c",
    )
    .bind(format!("http://{target}/fail"))
    .bind(WEBHOOK_SECRET)
    .bind(BOT_TOKEN)
    .bind(format!("http://{target}/fail"))
    .execute(&db.pool)
    .await
    .unwrap();

    let mut instance = Instance::start(InstanceOptions {
        database_url: &with_password(&db.url),
        datacenter: "va",
        name: "va-a",
        extra_env: vec![("RUST_LOG", "debug".to_string())],
    });
    for id in &monitors {
        eventually(
            "heartbeats of both monitors",
            Duration::from_secs(30),
            || async { (heartbeats(&db.pool, *id).await.len() >= 2).then_some(()) },
        )
        .await;
    }
    let status = instance.status().await.expect("/status answers");
    assert_eq!(status["role"], "leader");
    assert_clean("/status", &status.to_string());
    assert_clean(
        "/metrics",
        &instance.metrics().await.expect("/metrics answers"),
    );
    let failing = heartbeats(&db.pool, monitors[1]).await;
    assert_eq!(failing[0].error_kind.as_deref(), Some("status_mismatch"));
    let logs = instance.logs().join("\n");
    assert!(
        logs.contains("instance registered"),
        "the logs were read: {logs}"
    );
    assert_clean("the instance's logs", &logs);
    drop(instance);

    // A database that cannot be reached at start: the waiting line names the target,
    // not the password.
    let unreachable = format!("postgres://postgres:{DB_PASSWORD}@127.0.0.1:1/vantage");
    let mut waiting = Instance::start(InstanceOptions {
        database_url: &unreachable,
        datacenter: "va",
        name: "va-b",
        extra_env: vec![("RUST_LOG", "debug".to_string())],
    });
    let line = waiting
        .wait_for_log(&["database unreachable"], Duration::from_secs(20))
        .await;
    assert!(line.contains("127.0.0.1:1"), "the line says where: {line}");
    assert_clean("the waiting instance's logs", &waiting.logs().join("\n"));

    // `vantage check` prints the request headers it sent, redacted.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_vantage"))
        .args(["check", "-H", &format!("Authorization: Bearer {BEARER}")])
        .args([
            "-H",
            &format!("X-Api-Key: {API_KEY}"),
            "--secret-header",
            "X-Api-Key",
        ])
        .arg(format!("http://{target}/fail"))
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "the check is down");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.matches("<redacted>").count() >= 2,
        "both headers are shown, redacted: {stdout}"
    );
    assert_clean("vantage check", &String::from_utf8_lossy(&output.stdout));
    assert_clean("vantage check", &String::from_utf8_lossy(&output.stderr));
}
