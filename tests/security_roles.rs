//! Least privilege, tried as each role through a real non-superuser login (the test
//! harness is a superuser, and superusers bypass every grant):
//!
//! - the reader (Grafana's role) cannot read header values, request bodies or channel
//!   secrets, cannot write, cannot call the partition functions, and cannot take
//!   advisory locks (so it cannot hold a datacenter's leadership away from the
//!   probers); every documented query still runs as the reader (the dashboards' SQL is
//!   run as the reader by tests/grafana_dashboards.rs);
//! - the prober runs a real `vantage run` (leadership, heartbeats, partitions) while it
//!   cannot change the configuration or rewrite history;
//! - the owner owns the schema, and a database owner that is no superuser (managed
//!   PostgreSQL) can still migrate.

mod support;

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgConnection, PgPool};
use support::cluster::{
    heartbeats, seed_datacenters, seed_monitor, serve_target, Instance, InstanceOptions,
};
use support::eventually::eventually;
use support::pg::TestDb;
use vantage::storage;

/// A login (LOGIN, not superuser) that is a member of `group`; returns its URL.
async fn login(db: &TestDb, group: &str) -> String {
    let role = format!("{group}_{}", db.name);
    sqlx::raw_sql(&format!(
        "CREATE ROLE \"{role}\" LOGIN NOSUPERUSER PASSWORD 'test' IN ROLE {group}"
    ))
    .execute(&db.pool)
    .await
    .expect("create the login");
    let mut url: url::Url = db.url.parse().unwrap();
    url.set_username(&role).unwrap();
    url.set_password(Some("test")).unwrap();
    url.to_string()
}

async fn connect(url: &str) -> PgConnection {
    let options: PgConnectOptions = url.parse().unwrap();
    options.connect().await.expect("connect as the login")
}

/// Runs `sql` and returns the database error's SQLSTATE, or `None` when it succeeded.
async fn sqlstate(conn: &mut PgConnection, sql: &str) -> Option<String> {
    match sqlx::raw_sql(sql).execute(&mut *conn).await {
        Ok(_) => None,
        Err(sqlx::Error::Database(err)) => Some(err.code().unwrap_or_default().to_string()),
        Err(other) => panic!("{sql}: {other}"),
    }
}

const PERMISSION_DENIED: &str = "42501";

async fn assert_denied(conn: &mut PgConnection, sql: &str) {
    assert_eq!(
        sqlstate(conn, sql).await.as_deref(),
        Some(PERMISSION_DENIED),
        "expected permission denied for: {sql}"
    );
}

async fn assert_allowed(conn: &mut PgConnection, sql: &str) {
    assert_eq!(sqlstate(conn, sql).await, None, "expected allowed: {sql}");
}

async fn seed_secret_monitor(pool: &PgPool) {
    storage::seed_example(pool).await.unwrap();
    sqlx::raw_sql(
        "INSERT INTO api_monitors (name, url, schedule_id, headers, secret_headers, body)
         SELECT 'with-token', 'https://api.example.com/', id,
                '{\"Authorization\": \"Bearer s3cr3t-t0ken\"}', '{Authorization}', 'password=hunter2'
         FROM schedules LIMIT 1",
    )
    .execute(pool)
    .await
    .unwrap();
}

const LOCK_CALLS: [&str; 16] = [
    "SELECT pg_advisory_lock(42)",
    "SELECT pg_advisory_lock(4, 2)",
    "SELECT pg_advisory_lock_shared(42)",
    "SELECT pg_advisory_lock_shared(4, 2)",
    "SELECT pg_try_advisory_lock(42)",
    "SELECT pg_try_advisory_lock(4, 2)",
    "SELECT pg_try_advisory_lock_shared(42)",
    "SELECT pg_try_advisory_lock_shared(4, 2)",
    "SELECT pg_advisory_xact_lock(42)",
    "SELECT pg_advisory_xact_lock(4, 2)",
    "SELECT pg_advisory_xact_lock_shared(42)",
    "SELECT pg_advisory_xact_lock_shared(4, 2)",
    "SELECT pg_try_advisory_xact_lock(42)",
    "SELECT pg_try_advisory_xact_lock(4, 2)",
    "SELECT pg_try_advisory_xact_lock_shared(42)",
    "SELECT pg_try_advisory_xact_lock_shared(4, 2)",
];

#[tokio::test]
async fn the_reader_cannot_read_secrets_write_or_take_locks() {
    let db = TestDb::fresh().await;
    seed_secret_monitor(&db.pool).await;
    let mut reader = connect(&login(&db, "vantage_reader").await).await;

    // Secrets: not by name, not through *, not through a row value.
    for sql in [
        "SELECT headers FROM api_monitors",
        "SELECT body FROM api_monitors",
        "SELECT * FROM api_monitors",
        "SELECT m FROM api_monitors m",
        "SELECT count(*) FROM api_monitors WHERE headers::text LIKE '%Bearer%'",
    ] {
        assert_denied(&mut reader, sql).await;
    }
    // What dashboards use of the same table.
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM api_monitors WHERE 'Authorization' = ANY (secret_headers)",
    )
    .fetch_all(&mut reader)
    .await
    .unwrap();
    assert_eq!(names, ["with-token"]);

    // The leadership locks, and every other advisory lock function.
    for sql in LOCK_CALLS {
        assert_denied(&mut reader, sql).await;
    }

    // No writes, not even when it turns read-only transactions off.
    assert_allowed(&mut reader, "SET default_transaction_read_only = off").await;
    for sql in [
        "INSERT INTO api_heartbeats (monitor_id, datacenter_id, scheduled_at, executed_at, status, success, total_ms)
         VALUES (1, 1, now(), now(), 'up', true, 1)",
        "UPDATE api_monitors SET url = 'http://169.254.169.254/' WHERE true",
        "DELETE FROM agents",
        "DELETE FROM leader_terms",
        "INSERT INTO datacenters (code, name) VALUES ('evil', 'Evil')",
        "TRUNCATE api_heartbeats",
        "DROP TABLE api_heartbeats_daily",
        "CREATE TABLE mine (x int)",
        "SELECT vantage_drop_heartbeat_partitions(0)",
        "SELECT vantage_ensure_heartbeat_partition(current_date + 400)",
        "SELECT version FROM _sqlx_migrations",
    ] {
        assert_denied(&mut reader, sql).await;
    }
}

#[tokio::test]
async fn the_reader_cannot_read_notification_channel_secrets() {
    // The channel table comes from another migration; when this migration runs after
    // it, `config` must be closed to the reader. Apply every migration before the roles
    // one, make sure a `notification_channels` with a `config` exists (the real one
    // when it is merged, a stand-in before), then apply the rest.
    let db = TestDb::empty().await;
    let roles_version = 20261130000900;
    let before = sqlx::migrate::Migrator {
        migrations: storage::MIGRATOR
            .iter()
            .filter(|m| m.version < roles_version)
            .cloned()
            .collect::<Vec<_>>()
            .into(),
        ignore_missing: true,
        locking: true,
        no_tx: false,
    };
    before
        .run(&db.pool)
        .await
        .expect("migrations before the roles");
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS notification_channels (
             id serial PRIMARY KEY, name text NOT NULL, kind text NOT NULL DEFAULT 'webhook',
             config jsonb NOT NULL DEFAULT '{}');
         INSERT INTO notification_channels (name, kind, config)
         SELECT 'ops', 'webhook', '{\"url\": \"https://hooks.example.com/T0/B0/xyz\", \"secret\": \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"}'
         WHERE NOT EXISTS (SELECT FROM notification_channels);",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    storage::migrate(&db.pool)
        .await
        .expect("the remaining migrations");

    let mut reader = connect(&login(&db, "vantage_reader").await).await;
    assert_denied(&mut reader, "SELECT config FROM notification_channels").await;
    assert_denied(&mut reader, "SELECT * FROM notification_channels").await;
    assert_allowed(&mut reader, "SELECT id, name FROM notification_channels").await;
}

#[tokio::test]
async fn every_documented_query_runs_as_the_reader() {
    let db = TestDb::fresh().await;
    seed_secret_monitor(&db.pool).await;
    sqlx::raw_sql(
        "INSERT INTO api_heartbeats (monitor_id, datacenter_id, scheduled_at, executed_at,
                                     status, success, total_ms, tls_cert_expires_at, error_kind)
         SELECT a.monitor_id, a.datacenter_id, now() - k * interval '1 minute', now(),
                CASE WHEN k = 1 THEN 'down' ELSE 'up' END, k <> 1,
                12.5, now() + interval '3 days', CASE WHEN k = 1 THEN 'timeout' END
         FROM monitor_assignments a, generate_series(1, 2) AS k;
         INSERT INTO agents (datacenter_id, instance_name) SELECT id, code || '-1' FROM datacenters;
         INSERT INTO leader_terms (datacenter_id, term, agent_id) SELECT datacenter_id, 1, id FROM agents;
         -- Monitors older than their heartbeats (so the missed slots before show), one
         -- open incident and one resolved.
         UPDATE api_monitors SET created_at = now() - interval '1 hour';
         INSERT INTO incidents (kind, severity, monitor_id, opened_at, resolved_at, cause)
         SELECT 'monitor_down', 'critical', id, now() - k * interval '10 minutes',
                CASE WHEN k = 2 THEN now() - interval '15 minutes' END, 'seeded'
         FROM api_monitors, generate_series(1, 2) AS k;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut reader = connect(&login(&db, "vantage_reader").await).await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/queries");
    let mut ran = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "sql") {
            let sql = std::fs::read_to_string(&path).unwrap();
            let rows = sqlx::raw_sql(&sql)
                .fetch_all(&mut reader)
                .await
                .unwrap_or_else(|err| panic!("{} as the reader: {err}", path.display()));
            assert!(!rows.is_empty(), "{} returned no rows", path.display());
            ran += 1;
        }
    }
    assert!(ran >= 6, "only {ran} queries found");
}

/// Runs `deploy/postgres-init/{script}` as the postgres image would (as the schema
/// owner, on `db`) with `env`, and returns the URL of `db` for `user` / `password`.
async fn init_script(db: &TestDb, script: &str, user: &str, password: &str) -> String {
    let url: url::Url = db.url.parse().unwrap();
    let bin_dir = vantage::embedded_postgres::find_bin_dir().expect("PostgreSQL binaries");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let password_var = format!("{}_DB_PASSWORD", user.to_ascii_uppercase());
    let out = tokio::process::Command::new("sh")
        .arg(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("deploy/postgres-init")
                .join(script),
        )
        .env("PATH", path)
        .env("PGHOST", url.host_str().unwrap())
        .env("PGPORT", url.port().unwrap_or(5432).to_string())
        .env("PGPASSWORD", url.password().unwrap_or_default())
        .env("POSTGRES_USER", url.username())
        .env("POSTGRES_DB", &db.name)
        .env(&password_var, password)
        .output()
        .await
        .expect("run the init script");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut login: url::Url = db.url.parse().unwrap();
    login.set_username(user).unwrap();
    login.set_password(Some(password)).unwrap();
    login.to_string()
}

#[tokio::test]
async fn compose_grafana_login_is_a_reader() {
    let db = TestDb::fresh().await;
    let url = init_script(&db, "10-grafana-reader.sh", "grafana", "g-pass").await;
    let mut grafana = connect(&url).await;
    assert_denied(&mut grafana, "SELECT headers FROM api_monitors").await;
    assert_denied(&mut grafana, "SELECT pg_try_advisory_lock(1, 1)").await;
    assert_allowed(&mut grafana, "SELECT id, name FROM api_monitors").await;
}

#[tokio::test]
async fn the_prober_runs_vantage_but_cannot_change_configuration_or_history() {
    let db = TestDb::fresh().await;
    let target = serve_target().await;
    let dc = seed_datacenters(&db.pool, &["va"]).await[0];
    let monitor = seed_monitor(&db.pool, "target-ok", &format!("http://{target}/ok"), 1).await;
    // The login docker compose gives the probers.
    let prober_url = init_script(&db, "20-prober.sh", "prober", "p-pass").await;

    // A real instance as the prober, with the default VANTAGE_AUTO_MIGRATE=true (an
    // up-to-date schema needs no DDL): registers, leads, probes, writes heartbeats and
    // keeps partitions (housekeeping runs when it takes the lead).
    let mut instance = Instance::start(InstanceOptions {
        database_url: &prober_url,
        datacenter: "va",
        name: "va-prober",
        extra_env: Vec::new(),
    });
    eventually(
        "heartbeats written by the prober",
        Duration::from_secs(30),
        || async {
            let beats = heartbeats(&db.pool, monitor).await;
            (beats.len() >= 2 && beats.iter().all(|b| b.status == "up")).then_some(())
        },
    )
    .await;
    let term: Option<i64> = sqlx::query_scalar(
        "SELECT term FROM leader_terms WHERE datacenter_id = $1 AND released_at IS NULL",
    )
    .bind(dc)
    .fetch_optional(&db.pool)
    .await
    .unwrap();
    assert!(term.is_some(), "the prober took leadership");
    instance.signal(libc::SIGTERM);
    assert_eq!(instance.wait_exit(Duration::from_secs(20)).await, Some(0));
    let logs = instance.logs().join("\n");
    assert!(
        !logs.contains("permission denied"),
        "the prober lacked a privilege:\n{logs}"
    );

    let mut prober = connect(&prober_url).await;
    // What it needs, directly.
    for sql in [
        "SELECT headers, body FROM api_monitors",
        "SELECT pg_try_advisory_lock(4, 2)",
        "SELECT pg_advisory_xact_lock(42)",
        "SELECT vantage_ensure_heartbeat_partition(current_date + 400)",
        "SELECT vantage_drop_heartbeat_partitions(3650)",
        "UPDATE agents SET last_seen_at = now()",
        "INSERT INTO api_heartbeats (monitor_id, datacenter_id, scheduled_at, executed_at, status, success, total_ms)
         VALUES (1, 1, now(), now(), 'up', true, 1) ON CONFLICT DO NOTHING",
    ] {
        assert_allowed(&mut prober, sql).await;
    }
    // What it must not do.
    for sql in [
        "UPDATE api_monitors SET url = 'http://169.254.169.254/'",
        "INSERT INTO datacenters (code, name) VALUES ('evil', 'Evil')",
        "DELETE FROM schedules",
        "UPDATE api_heartbeats SET status = 'up'",
        "DELETE FROM api_heartbeats",
        "TRUNCATE leader_terms",
        "DROP TABLE api_heartbeats_daily",
        "ALTER TABLE api_monitors ADD COLUMN x int",
        "CREATE TABLE mine (x int)",
    ] {
        assert_denied(&mut prober, sql).await;
    }
}

#[tokio::test]
async fn the_owner_role_owns_the_schema() {
    let db = TestDb::fresh().await;
    let not_owned: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c
         WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v')
           AND c.relname <> '_sqlx_migrations'
           AND pg_get_userbyid(c.relowner) <> 'vantage_owner'
         UNION ALL
         SELECT p.proname::text FROM pg_proc p
         WHERE p.pronamespace = 'public'::regnamespace
           AND pg_get_userbyid(p.proowner) <> 'vantage_owner'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        not_owned.is_empty(),
        "not owned by vantage_owner: {not_owned:?}"
    );
    // Partitions made later, whoever asks, belong to the owner too.
    sqlx::query("SELECT vantage_ensure_heartbeat_partition(current_date + 500)")
        .execute(&db.pool)
        .await
        .unwrap();
    let owner: String = sqlx::query_scalar(
        "SELECT pg_get_userbyid(relowner)::text FROM pg_class
         WHERE relname = 'api_heartbeats_' || to_char(current_date + 500, 'YYYYMMDD')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(owner, "vantage_owner");
}

#[tokio::test]
async fn a_database_owner_that_is_not_a_superuser_can_migrate() {
    // Managed PostgreSQL: the migrating login owns the database and may create roles,
    // but is no superuser. Migrations succeed; it becomes a member of vantage_owner;
    // only the lock functions stay open (a warning says what a superuser must run).
    let db = TestDb::empty().await;
    let owner = format!("dbo_{}", db.name);
    sqlx::raw_sql(&format!(
        "CREATE ROLE \"{owner}\" LOGIN CREATEROLE NOSUPERUSER PASSWORD 'test';
         ALTER DATABASE \"{}\" OWNER TO \"{owner}\";",
        db.name
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let mut url: url::Url = db.url.parse().unwrap();
    url.set_username(&owner).unwrap();
    url.set_password(Some("test")).unwrap();
    let pool = storage::connect(url.as_str()).await.unwrap();
    storage::migrate(&pool)
        .await
        .expect("migrate as the database owner");

    let member: bool = sqlx::query_scalar("SELECT pg_has_role($1, 'vantage_owner', 'MEMBER')")
        .bind(&owner)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(member);
    let mut reader = connect(&login(&db, "vantage_reader").await).await;
    assert_denied(&mut reader, "SELECT headers FROM api_monitors").await;
    // Migrating again (nothing pending) and a new partition work as that login.
    storage::migrate(&pool).await.expect("migrate again");
    sqlx::query("SELECT vantage_ensure_heartbeat_partition(current_date + 600)")
        .execute(&pool)
        .await
        .unwrap();
}
