//! The schema against a real Postgres: migrations (fresh, repeated, concurrent), the
//! configuration rules and their messages, defaults, the assignment view, change
//! notifications, and the heartbeat constraints matching the Rust enums.

mod support;

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use support::pg::{minimal_config, TestDb};
use vantage::storage;
use vantage::{ErrorKind, ProbeStatus};

#[tokio::test]
async fn migrating_an_empty_database_creates_the_schema_and_partitions() {
    let db = TestDb::empty().await;
    assert!(storage::pending_migrations(&db.pool).await.unwrap() > 0);

    storage::migrate(&db.pool).await.unwrap();

    assert_eq!(storage::pending_migrations(&db.pool).await.unwrap(), 0);
    for table in [
        "regions",
        "datacenters",
        "schedules",
        "api_monitors",
        "datacenter_monitors",
        "monitor_assignments",
        "agents",
        "leader_terms",
        "api_heartbeats",
    ] {
        let found: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(table)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(found.as_deref(), Some(table));
    }
    // Today and the 7 days after it, named by UTC day.
    let partitions = storage::partitions::list(&db.pool).await.unwrap();
    let today = chrono::Utc::now().date_naive();
    let expected: Vec<String> = (0..=7)
        .map(|i| {
            format!(
                "api_heartbeats_{}",
                (today + chrono::Days::new(i)).format("%Y%m%d")
            )
        })
        .collect();
    assert_eq!(partitions, expected);

    // Running it again changes nothing.
    storage::migrate(&db.pool).await.unwrap();
    assert_eq!(storage::partitions::list(&db.pool).await.unwrap(), expected);
}

#[tokio::test]
async fn two_instances_migrating_at_once_both_succeed() {
    let db = TestDb::empty().await;
    let other = db.connect().await;

    let (a, b) = tokio::join!(storage::migrate(&db.pool), storage::migrate(&other));

    a.unwrap();
    b.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(applied as usize, storage::MIGRATOR.iter().count());
}

/// Runs `sql` and returns Postgres's error message.
async fn rejection(pool: &PgPool, sql: &str) -> String {
    match sqlx::raw_sql(sql).execute(pool).await {
        Ok(_) => panic!("accepted: {sql}"),
        Err(sqlx::Error::Database(err)) => err.message().to_string(),
        Err(err) => panic!("unexpected error {err}"),
    }
}

#[tokio::test]
async fn bad_configuration_is_rejected_with_a_message_naming_the_column() {
    let db = TestDb::fresh().await;
    let pool = &db.pool;
    minimal_config(pool).await;
    let monitor = |set: &str| {
        format!(
            "INSERT INTO api_monitors (name, url, schedule_id{}) \
             SELECT 'm-' || random(), {}, id{} FROM schedules LIMIT 1",
            if set.is_empty() {
                "".to_string()
            } else {
                format!(", {}", set.split('=').next().unwrap())
            },
            if set.starts_with("url=") {
                set.trim_start_matches("url=").to_string()
            } else {
                "'https://ok.example/'".to_string()
            },
            if set.is_empty() || set.starts_with("url=") {
                "".to_string()
            } else {
                format!(", {}", set.split_once('=').unwrap().1)
            },
        )
    };
    let cases: Vec<(String, &str)> = vec![
        (
            "INSERT INTO api_monitors (name, url, schedule_id) SELECT 'ftp', 'ftp://x', id FROM schedules LIMIT 1".into(),
            r#"api_monitors.url must use http:// or https:// for an http monitor (got "ftp://x")"#,
        ),
        (monitor("method='FETCH'"), "api_monitors.method must be one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS (got \"FETCH\")"),
        (monitor("expected_status_codes='200-'"), "api_monitors.expected_status_codes must be a comma-separated list"),
        (monitor("expected_status_codes='600'"), "api_monitors.expected_status_codes must be a comma-separated list"),
        (monitor("expected_status_codes='399-200'"), "api_monitors.expected_status_codes has a range whose start is above its end"),
        (monitor("ip_family='ipv5'"), "api_monitors.ip_family must be 'any', 'ipv4' or 'ipv6' (got 'ipv5')"),
        (monitor("max_redirects=-1"), "api_monitors.max_redirects must be between 0 and 50"),
        (monitor("headers='[1]'"), "api_monitors.headers must be a JSON object of strings"),
        (
            "INSERT INTO schedules (name, interval_seconds) VALUES ('zero', 0)".into(),
            "schedules.interval_seconds must be a positive number of seconds (got 0)",
        ),
        (
            "INSERT INTO schedules (name) VALUES ('neither')".into(),
            "schedules.interval_seconds and schedules.cron: set exactly one of them",
        ),
        (
            "INSERT INTO schedules (name, interval_seconds, cron) VALUES ('both', 10, '* * * * * *')".into(),
            "schedules.interval_seconds and schedules.cron: set exactly one of them",
        ),
        (
            "INSERT INTO schedules (name, interval_seconds) VALUES ('default timeout', 10)".into(),
            "schedules.timeout_ms must be shorter than the interval (interval_seconds = 10 allows at most 9999 ms; got 10000)",
        ),
        (
            "INSERT INTO schedules (name, interval_seconds, timeout_ms) VALUES ('neg', 10, 0)".into(),
            "schedules.timeout_ms must be a positive number of milliseconds (got 0)",
        ),
        (
            "INSERT INTO schedules (name, interval_seconds, timeout_ms, warning_threshold_ms, critical_threshold_ms) \
             VALUES ('thresholds', 60, 5000, 900, 500)".into(),
            "schedules.warning_threshold_ms must not exceed critical_threshold_ms (got warning 900 > critical 500)",
        ),
        (
            "INSERT INTO schedules (name, cron) VALUES ('5 fields', '*/5 * * * *')".into(),
            "schedules.cron must be a cron expression with a seconds field",
        ),
        (
            "INSERT INTO datacenters (code, name) VALUES ('LON', 'London')".into(),
            "datacenters.code must be a lowercase slug",
        ),
        (
            "UPDATE api_monitors SET url = 'example.com'".into(),
            r#"api_monitors.url must use http:// or https:// for an http monitor (got "example.com")"#,
        ),
    ];
    for (sql, expected) in cases {
        let message = rejection(pool, &sql).await;
        assert!(
            message.starts_with(expected),
            "{sql}\n  got:      {message}\n  expected: {expected}"
        );
    }
}

#[tokio::test]
async fn good_configuration_is_accepted_with_sensible_defaults() {
    let db = TestDb::fresh().await;
    let pool = &db.pool;
    sqlx::raw_sql(
        "INSERT INTO schedules (name, cron, timeout_ms) VALUES ('cron', '0 */5 * * * *', 20000);
         INSERT INTO schedules (name, interval_seconds, timeout_ms, warning_threshold_ms, critical_threshold_ms)
             VALUES ('1s', 1, 900, 100, 100);
         INSERT INTO api_monitors (name, url, schedule_id) SELECT 'minimal', 'HTTPS://Example.com', id FROM schedules WHERE name = 'cron';
         INSERT INTO api_monitors (name, method, url, schedule_id, expected_status_codes, ip_family, headers)
             SELECT 'full', 'post', 'http://127.0.0.1:8080/x?y', id, '2xx, 301-302,404', 'ipv6', '{\"A\": \"b\"}'
             FROM schedules WHERE name = '1s';",
    )
    .execute(pool)
    .await
    .unwrap();
    let row: (String, String, bool, String, bool, i32, bool, String, bool, Vec<String>) = sqlx::query_as(
        "SELECT method, headers::text, enabled, expected_status_codes, follow_redirects, max_redirects,
                verify_tls, ip_family, all_datacenters, tags
         FROM api_monitors WHERE name = 'minimal'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            "GET".into(),
            "{}".into(),
            true,
            "200-399".into(),
            true,
            5,
            true,
            "any".into(),
            false,
            vec![]
        )
    );
    let method: String = sqlx::query_scalar("SELECT method FROM api_monitors WHERE name = 'full'")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(method, "POST", "methods are stored upper-case");
}

#[tokio::test]
async fn updated_at_follows_updates() {
    let db = TestDb::fresh().await;
    let (monitor, _) = minimal_config(&db.pool).await;
    let (created, updated): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("SELECT created_at, updated_at FROM api_monitors WHERE id = $1")
            .bind(monitor)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(created, updated);
    sqlx::query("UPDATE api_monitors SET enabled = false WHERE id = $1")
        .bind(monitor)
        .execute(&db.pool)
        .await
        .unwrap();
    let later: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT updated_at FROM api_monitors WHERE id = $1")
            .bind(monitor)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(later > updated);
}

#[tokio::test]
async fn monitor_assignments_covers_every_datacenter_or_the_chosen_ones() {
    let db = TestDb::fresh().await;
    storage::seed_example(&db.pool).await.unwrap();
    storage::seed_example(&db.pool).await.unwrap(); // idempotent
    let datacenters: i64 = sqlx::query_scalar("SELECT count(*) FROM datacenters")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(datacenters, 9);
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT m.name, d.code FROM monitor_assignments a
         JOIN api_monitors m ON m.id = a.monitor_id JOIN datacenters d ON d.id = a.datacenter_id
         ORDER BY m.name, d.code",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let codes = |name: &str| -> Vec<&str> {
        rows.iter()
            .filter(|(m, _)| m == name)
            .map(|(_, d)| d.as_str())
            .collect()
    };
    assert_eq!(
        codes("example.com"),
        vec!["chi", "dam", "lon", "ny", "rdn", "sf", "sto", "syd", "va"]
    );
    assert_eq!(codes("iana.org home"), vec!["lon", "va"]);

    // An all-datacenters monitor with an explicit row too is listed once; a new
    // datacenter gets every all-datacenters monitor.
    sqlx::raw_sql(
        "INSERT INTO datacenter_monitors SELECT d.id, m.id FROM datacenters d, api_monitors m
             WHERE d.code = 'va' AND m.name = 'example.com';
         INSERT INTO datacenters (code, name) VALUES ('fra', 'Frankfurt');",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let pairs: Vec<(i32, i32)> = sqlx::query_as(
        "SELECT a.monitor_id, a.datacenter_id FROM monitor_assignments a
         JOIN api_monitors m ON m.id = a.monitor_id WHERE m.name = 'example.com'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(pairs.len(), 10);
}

#[tokio::test]
async fn configuration_changes_are_notified() {
    let db = TestDb::fresh().await;
    let (monitor, _) = minimal_config(&db.pool).await;
    let mut listener = PgListener::connect(&db.url).await.unwrap();
    listener.listen("vantage_config").await.unwrap();
    for sql in [
        format!("UPDATE api_monitors SET url = 'https://changed.example/' WHERE id = {monitor}"),
        "UPDATE schedules SET timeout_ms = 4000".to_string(),
        "INSERT INTO datacenters (code, name) VALUES ('lon', 'London')".to_string(),
        format!("INSERT INTO datacenter_monitors SELECT id, {monitor} FROM datacenters WHERE code = 'lon'"),
        format!("DELETE FROM api_monitors WHERE id = {monitor}"),
    ] {
        sqlx::raw_sql(&sql).execute(&db.pool).await.unwrap();
        let note = tokio::time::timeout(Duration::from_secs(2), listener.recv())
            .await
            .unwrap_or_else(|_| panic!("no notification after {sql}"))
            .unwrap();
        assert_eq!(note.channel(), "vantage_config");
    }
}

#[tokio::test]
async fn heartbeat_constraints_match_the_rust_enums() {
    let db = TestDb::fresh().await;
    let check = |name: &'static str| {
        let pool = db.pool.clone();
        async move {
            let def: String = sqlx::query_scalar(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = $1",
            )
            .bind(name)
            .fetch_one(&pool)
            .await
            .unwrap();
            let mut values: Vec<String> = def
                .split('\'')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect();
            values.sort();
            values
        }
    };
    let mut kinds: Vec<String> = ErrorKind::ALL
        .iter()
        .map(|k| k.as_str().to_string())
        .collect();
    kinds.sort();
    assert_eq!(check("api_heartbeats_error_kind_check").await, kinds);
    let mut statuses: Vec<String> = ProbeStatus::ALL
        .iter()
        .map(|s| s.as_str().to_string())
        .collect();
    statuses.sort();
    assert_eq!(check("api_heartbeats_status_check").await, statuses);
}

#[tokio::test]
async fn agents_register_with_an_upsert() {
    let db = TestDb::fresh().await;
    let (_, dc) = minimal_config(&db.pool).await;
    let upsert = "INSERT INTO agents (datacenter_id, instance_name, hostname, version, pid)
                  VALUES ($1, 'host-1', 'host', '0.1.0', $2)
                  ON CONFLICT (datacenter_id, instance_name)
                  DO UPDATE SET pid = EXCLUDED.pid, last_seen_at = now(), role = 'standby'
                  RETURNING id";
    let first: i64 = sqlx::query_scalar(upsert)
        .bind(dc)
        .bind(100)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let second: i64 = sqlx::query_scalar(upsert)
        .bind(dc)
        .bind(200)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(first, second);
    let message = rejection(&db.pool, "UPDATE agents SET role = 'boss'").await;
    assert!(message.contains("agents_role_check"), "{message}");
}

#[tokio::test]
async fn vantage_migrate_creates_the_database_and_seed_example_loads_it() {
    let db = TestDb::empty().await;
    let mut url: url::Url = db.url.parse().unwrap();
    url.set_path(&format!("/{}_cli", db.name));
    let run = |command: &'static str| {
        let url = url.to_string();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_vantage"))
                .arg(command)
                .env("DATABASE_URL", url)
                .env("VANTAGE_LOG_FORMAT", "text")
                .output()
                .unwrap()
        })
    };
    let out = run("seed-example").await.unwrap();
    assert!(
        !out.status.success(),
        "seeding a database that does not exist fails"
    );

    for _ in 0..2 {
        let out = run("migrate").await.unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = run("seed-example").await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let pool = storage::connect(url.as_str()).await.unwrap();
    assert_eq!(storage::pending_migrations(&pool).await.unwrap(), 0);
    let codes: Vec<String> = sqlx::query_scalar("SELECT code FROM datacenters ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        codes,
        ["va", "ny", "rdn", "chi", "sf", "lon", "dam", "sto", "syd"]
    );
}
