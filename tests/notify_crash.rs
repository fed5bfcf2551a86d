//! The process that delivers is SIGKILLed mid-way: some notifications sent and recorded,
//! one sent but not recorded (the receiver still holds it), others written to the outbox
//! and never taken. A second process, elected evaluator after the first one's lock died
//! with it, delivers the rest: every event arrives at least once, a duplicate carries
//! the same event id, nothing is lost. And secrets never appear in a delivering
//! process's debug logs, in stored errors or in `vantage notifications`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use support::cluster::{seed_datacenters, seed_monitor};
use support::eventually::eventually;
use support::notify::{channel, open_incident, route, webhook_channel, Receiver};
use support::pg::TestDb;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use vantage::notify::signature;

/// A `vantage notify deliver` process: what `vantage run` does next to the evaluator.
struct DeliveryProcess {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
}

impl DeliveryProcess {
    fn start(database_url: &str, env: &[(&str, &str)]) -> DeliveryProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_vantage"));
        command
            .args(["notify", "deliver"])
            .env("DATABASE_URL", database_url)
            .env("VANTAGE_DATACENTER", "va")
            .env("VANTAGE_LOG_FORMAT", "json")
            .env("RUST_LOG", "debug")
            .env("VANTAGE_NOTIFY_ATTEMPT_TIMEOUT", "3s")
            .env("VANTAGE_NOTIFY_BACKOFF_BASE", "200ms")
            .env("VANTAGE_NOTIFY_BACKOFF_MAX", "1s")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawning vantage notify deliver");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        DeliveryProcess { child, logs }
    }

    fn kill(&mut self) {
        let pid = self.child.id().expect("running") as i32;
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    }

    async fn stop(mut self) -> String {
        let pid = self.child.id().expect("running") as i32;
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("exits on SIGTERM")
            .unwrap();
        self.logs.lock().unwrap().join("\n")
    }
}

#[tokio::test]
async fn a_delivering_process_killed_mid_way_loses_nothing_and_duplicates_keep_their_id() {
    let db = TestDb::fresh().await;
    let dcs = seed_datacenters(&db.pool, &["va"]).await;
    let mut monitors = Vec::new();
    for i in 0..10 {
        monitors.push(
            seed_monitor(
                &db.pool,
                &format!("m{i}"),
                &format!("https://m{i}.example/"),
                10,
            )
            .await,
        );
    }
    let receiver = Receiver::start().await;
    let secret = signature::new_secret();
    webhook_channel(&db.pool, "ops", &receiver.url("/hook"), &secret, None).await;
    // The first request is held past the kill: sent, never recorded as sent.
    let first = Mutex::new(true);
    receiver.respond_with(move |_| {
        if std::mem::replace(&mut *first.lock().unwrap(), false) {
            (200, Duration::from_secs(30))
        } else {
            (200, Duration::from_millis(100))
        }
    });

    let mut a = DeliveryProcess::start(&db.url, &[("VANTAGE_NOTIFY_CONCURRENCY", "2")]);
    for monitor in &monitors[..6] {
        open_incident(&db.pool, *monitor, &dcs).await;
    }
    receiver
        .wait_until(
            "a few deliveries by the first process",
            Duration::from_secs(20),
            |r| r.len() >= 3,
        )
        .await;
    a.kill();
    let at_kill = receiver.received().len();
    // Written while nobody delivers.
    for monitor in &monitors[6..] {
        open_incident(&db.pool, *monitor, &dcs).await;
    }
    let b = DeliveryProcess::start(&db.url, &[]);
    eventually(
        "every notification sent by the second process",
        Duration::from_secs(40),
        || async {
            let pending: i64 =
                sqlx::query_scalar("SELECT count(*) FROM notifications WHERE status <> 'sent'")
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
            (pending == 0).then_some(())
        },
    )
    .await;
    b.stop().await;

    let queued: BTreeSet<String> = sqlx::query_scalar("SELECT event_id::text FROM notifications")
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(queued.len(), 10);
    let mut deliveries: BTreeMap<String, usize> = BTreeMap::new();
    for request in receiver.received() {
        standardwebhooks::Webhook::new(&secret)
            .unwrap()
            .verify(&request.body, &request.headers)
            .unwrap();
        assert_eq!(request.json()["id"], request.header("webhook-id"));
        *deliveries
            .entry(request.header("webhook-id").to_string())
            .or_default() += 1;
    }
    let delivered: BTreeSet<String> = deliveries.keys().cloned().collect();
    assert_eq!(delivered, queued, "every event delivered, no unknown id");
    let duplicated: Vec<&String> = deliveries
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    assert!(
        !duplicated.is_empty(),
        "the held request is sent again after the crash"
    );
    assert!(
        deliveries.values().sum::<usize>() <= 10 + at_kill,
        "only what the first process had in flight is duplicated: {deliveries:?}"
    );
    eprintln!(
        "crash test: 10 events, {} deliveries ({at_kill} before the kill), {} delivered twice with the same id",
        deliveries.values().sum::<usize>(),
        duplicated.len()
    );
    // The story in SQL: an attempt cut off by the kill (no outcome), then a successful
    // one by another process, for the same row.
    let interrupted: Vec<(String, i64)> = sqlx::query_as(
        "SELECT n.event_id::text, count(*) FROM notification_attempts a JOIN notifications n ON n.id = a.notification_id \
         WHERE a.duration_ms IS NULL GROUP BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(!interrupted.is_empty());
    for (event_id, _) in &interrupted {
        let workers: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT a.worker) FROM notification_attempts a JOIN notifications n ON n.id = a.notification_id \
             WHERE n.event_id::text = $1",
        )
        .bind(event_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(
            workers, 2,
            "{event_id}: cut off in one process, finished by the other"
        );
    }
}

#[tokio::test]
async fn secrets_stay_out_of_debug_logs_stored_errors_and_the_cli() {
    const WEBHOOK_KEY: &str = "whsec_bmV2ZXItbG9nLXRoaXMtd2ViaG9vay1rZXk=";
    const BOT_TOKEN: &str = "987654:bot-token-never-logged";
    const SLACK_PATH: &str = "/services/TSECRET/BSECRET/slack-hook-never-logged";
    const ROUTING_KEY: &str = "pagerduty-routing-key-never-logged";
    let db = TestDb::fresh().await;
    let dcs = seed_datacenters(&db.pool, &["va"]).await;
    let monitor = seed_monitor(&db.pool, "api", "https://api.example/", 10).await;
    let receiver = Receiver::start().await;
    // Every receiver fails, so every error path runs and is logged.
    receiver.respond_with(|_| (500, Duration::ZERO));
    let slack_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(slack_file.path(), format!("{}\n", receiver.url(SLACK_PATH))).unwrap();
    for (name, kind, config) in [
        (
            "hook",
            "webhook",
            json!({"url": receiver.url("/hook"), "secret": WEBHOOK_KEY}),
        ),
        (
            "tg",
            "telegram",
            json!({"bot_token": "env:VANTAGE_TEST_BOT_TOKEN", "chat_id": 1, "api_base": receiver.url("")}),
        ),
        (
            "tg-refused",
            "telegram",
            json!({"bot_token": BOT_TOKEN, "chat_id": 1, "api_base": "http://127.0.0.1:9"}),
        ),
        (
            "slack",
            "slack",
            json!({"url": format!("file:{}", slack_file.path().display())}),
        ),
        (
            "pd",
            "pagerduty",
            json!({"routing_key": ROUTING_KEY, "api_base": receiver.url("")}),
        ),
        (
            "unset",
            "pagerduty",
            json!({"routing_key": "env:VANTAGE_TEST_UNSET_KEY"}),
        ),
    ] {
        let id = channel(&db.pool, name, kind, config).await;
        route(&db.pool, id, None).await;
    }
    let process = DeliveryProcess::start(&db.url, &[("VANTAGE_TEST_BOT_TOKEN", BOT_TOKEN)]);
    open_incident(&db.pool, monitor, &dcs).await;
    eventually("every channel tried at least twice", Duration::from_secs(30), || async {
        let tried: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT channel_id FROM notification_attempts WHERE duration_ms IS NOT NULL \
             GROUP BY 1 HAVING count(*) >= 2) t",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        (tried == 6).then_some(())
    })
    .await;
    let logs = process.stop().await;

    let errors: Vec<String> =
        sqlx::query_scalar("SELECT error FROM notification_attempts WHERE error IS NOT NULL")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let url = db.url.clone();
    let listed = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_vantage"))
            .arg("notifications")
            .env("DATABASE_URL", url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let stored = errors.join("\n");
    assert!(stored.contains("HTTP 500: receiver says 500"), "{stored}");
    assert!(
        stored.contains("channel unset: config.routing_key the environment variable VANTAGE_TEST_UNSET_KEY named by \"env:VANTAGE_TEST_UNSET_KEY\" is not set"),
        "{stored}"
    );
    assert!(
        logs.contains("notification attempt failed"),
        "the failures are logged"
    );
    assert!(listed.contains("tg-refused"), "{listed}");
    for (what, text) in [
        ("debug logs", &logs),
        ("stored errors", &stored),
        ("vantage notifications", &listed),
    ] {
        for secret in [
            WEBHOOK_KEY,
            "bmV2ZXItbG9nLXRoaXMtd2ViaG9vay1rZXk",
            BOT_TOKEN,
            SLACK_PATH,
            ROUTING_KEY,
        ] {
            assert!(!text.contains(secret), "{what} leak {secret:?}:\n{text}");
        }
    }
}
