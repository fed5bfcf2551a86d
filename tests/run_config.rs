//! Hot configuration: changes to monitors take effect without a restart, and a monitor
//! the runner cannot use is skipped with one log line while the others keep running.
//! Settings out of range stop `vantage run` at start with one line naming the variable.

mod support;

use std::time::Duration;

use support::cluster::{
    heartbeats, seed_datacenters, seed_monitor, serve_target, Instance, InstanceOptions,
};
use support::eventually::eventually;
use support::pg::TestDb;

fn start(db_url: &str) -> Instance {
    Instance::start(InstanceOptions {
        database_url: db_url,
        datacenter: "va",
        name: "va-a",
        // Prove the reaction comes from LISTEN/NOTIFY, not from the periodic reload.
        extra_env: vec![("VANTAGE_CONFIG_RELOAD_INTERVAL", "1h".to_string())],
    })
}

#[tokio::test]
async fn monitor_changes_take_effect_within_two_seconds() {
    let db = TestDb::fresh().await;
    let target = serve_target().await;
    seed_datacenters(&db.pool, &["va"]).await;
    let monitor = seed_monitor(&db.pool, "target", &format!("http://{target}/ok"), 1).await;
    let mut runner = start(&db.url);
    runner
        .wait_for_log(&["leading: scheduling monitors"], Duration::from_secs(30))
        .await;
    eventually("first heartbeat", Duration::from_secs(10), || async {
        (!heartbeats(&db.pool, monitor).await.is_empty()).then_some(())
    })
    .await;

    // A changed URL of an existing monitor is picked up.
    let changed_at = chrono::Utc::now();
    sqlx::query("UPDATE api_monitors SET url = $1 WHERE id = $2")
        .bind(format!("http://{target}/fail"))
        .bind(monitor)
        .execute(&db.pool)
        .await
        .unwrap();
    let first_failure = eventually(
        "a heartbeat of the new URL",
        Duration::from_secs(10),
        || async {
            heartbeats(&db.pool, monitor)
                .await
                .into_iter()
                .find(|b| b.http_status == Some(500))
        },
    )
    .await;
    assert_eq!(first_failure.error_kind.as_deref(), Some("status_mismatch"));
    let delay = (first_failure.scheduled_at - changed_at).num_milliseconds();
    assert!(
        delay <= 2_000 + 1_000,
        "new URL probed {delay} ms after the change (≤ 2 s + one slot)"
    );

    // A new monitor starts, a disabled one stops.
    let added = seed_monitor(&db.pool, "added", &format!("http://{target}/ok"), 1).await;
    let added_at = chrono::Utc::now();
    let first = eventually(
        "the new monitor's first heartbeat",
        Duration::from_secs(10),
        || async { heartbeats(&db.pool, added).await.into_iter().next() },
    )
    .await;
    assert!((first.scheduled_at - added_at).num_milliseconds() <= 3_000);

    sqlx::query("UPDATE api_monitors SET enabled = false WHERE id = $1")
        .bind(added)
        .execute(&db.pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let count_after_disable = heartbeats(&db.pool, added).await.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        heartbeats(&db.pool, added).await.len(),
        count_after_disable,
        "disabled monitor stopped"
    );
    drop(runner);
}

#[tokio::test]
async fn an_unusable_monitor_is_skipped_and_the_others_keep_running() {
    let db = TestDb::fresh().await;
    let target = serve_target().await;
    seed_datacenters(&db.pool, &["va"]).await;
    let good = seed_monitor(&db.pool, "good", &format!("http://{target}/ok"), 1).await;
    // Six fields pass the database's shape check; second 61 does not exist.
    sqlx::query("INSERT INTO schedules (name, cron, timeout_ms) VALUES ('broken-cron', '61 * * * * *', 1000)")
        .execute(&db.pool)
        .await
        .unwrap();
    let bad: i32 = sqlx::query_scalar(
        "INSERT INTO api_monitors (name, url, schedule_id, all_datacenters) \
         SELECT 'bad', 'http://127.0.0.1:1/', id, true FROM schedules WHERE name = 'broken-cron' RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();

    let mut runner = start(&db.url);
    let line = runner
        .wait_for_log(
            &["skipping monitor", &format!("\"monitor_id\":{bad}")],
            Duration::from_secs(30),
        )
        .await;
    assert!(line.contains("cron"), "the log line says why: {line}");
    eventually(
        "the good monitor keeps probing",
        Duration::from_secs(10),
        || async { (heartbeats(&db.pool, good).await.len() >= 3).then_some(()) },
    )
    .await;
    assert!(heartbeats(&db.pool, bad).await.is_empty());

    // Another change reloads the configuration; the broken row is not reported again.
    sqlx::query("UPDATE api_monitors SET tags = '{touched}' WHERE id = $1")
        .bind(good)
        .execute(&db.pool)
        .await
        .unwrap();
    runner
        .wait_for_log(&["monitor configuration reloaded"], Duration::from_secs(10))
        .await;
    let mentions = runner
        .logs()
        .iter()
        .filter(|l| l.contains("skipping monitor") && l.contains(&format!("\"monitor_id\":{bad}")))
        .count();
    assert_eq!(mentions, 1, "logged once, not on every reload");
}

#[tokio::test]
async fn out_of_range_settings_are_refused_at_start_naming_the_variable() {
    // Refused before any connection is tried: the database need not exist.
    let unreachable = "postgres://vantage@127.0.0.1:1/vantage";
    let cases = [
        ("VANTAGE_CONFIG_RELOAD_INTERVAL", "0s", "1s"),
        ("VANTAGE_MAX_CONCURRENT_PROBES", "0", "100000"),
        ("VANTAGE_RETENTION_DAYS", "0", "3650"),
        ("VANTAGE_DB_OUTAGE_GRACE", "2h", "1h"),
        ("VANTAGE_SHUTDOWN_TIMEOUT", "1h", "10m"),
        ("VANTAGE_LEADER_LEASE", "1s", "6s"),
    ];
    for (variable, value, bound) in cases {
        let out = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::process::Command::new(env!("CARGO_BIN_EXE_vantage"))
                .arg("run")
                .env_remove("RUST_LOG")
                .env("DATABASE_URL", unreachable)
                .env("VANTAGE_DATACENTER", "va")
                .env(variable, value)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("{variable}={value}: vantage run did not exit"))
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{variable}={value}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{variable}={value}: one line: {stderr}");
        let line = lines[0];
        assert!(
            line.contains(&format!("{variable}={value}"))
                && line.contains("out of range")
                && line.contains(bound),
            "{variable}={value}: names the variable and the accepted range: {line}"
        );
        assert!(!line.contains("panicked"), "{line}");
    }
}
