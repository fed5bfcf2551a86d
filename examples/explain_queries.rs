//! How the queries in `sql/queries/` run on a realistic table (issue #3, item 1: "indexes
//! that serve the queries, measured with EXPLAIN"). Seeds 200 monitors x 9 datacenters
//! with one heartbeat a minute for the last 3 days (7.8 M rows, 1 % failures), runs
//! `ANALYZE`, then `EXPLAIN (ANALYZE, BUFFERS)` of every file and prints its execution
//! time and the plan nodes that touch `api_heartbeats` (index or sequential scans,
//! partitions pruned).
//!
//!     cargo run --release --example explain_queries            # a temporary cluster
//!     DATABASE_URL=postgres://... cargo run --release --example explain_queries
//!
//! The temporary cluster runs with PostgreSQL's default shared_buffers (128 MB).

use std::path::Path;
use std::time::Instant;

use chrono::{Duration, Utc};
use vantage::embedded_postgres::EmbeddedPostgres;
use vantage::storage::{self, partitions};

const MONITORS: i32 = 200;
const DAYS: i64 = 3;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (_cluster, url) = match std::env::var("DATABASE_URL") {
        Ok(base) if !base.is_empty() => {
            let mut url: url::Url = base.parse()?;
            url.set_path(&format!("/vantage_explain_{}", std::process::id()));
            (None, url.to_string())
        }
        _ => {
            let pg = EmbeddedPostgres::start_temporary().await?;
            let admin = storage::connect(&pg.url("postgres")).await?;
            for sql in [
                "ALTER SYSTEM SET shared_buffers = '128MB'",
                "ALTER SYSTEM SET max_wal_size = '4GB'",
            ] {
                sqlx::raw_sql(sql).execute(&admin).await?;
            }
            admin.close().await;
            pg.stop().await?;
            pg.start().await?;
            let url = pg.url("vantage_explain");
            (Some(pg), url)
        }
    };
    storage::ensure_database_exists(&url).await?;
    let pool = storage::connect(&url).await?;
    storage::migrate(&pool).await?;
    storage::seed_example(&pool).await?;

    let seeding = Instant::now();
    let today = Utc::now().date_naive();
    let days: Vec<_> = (0..=DAYS).map(|d| today - Duration::days(d)).collect();
    partitions::ensure_days(&pool, &days).await?;
    sqlx::raw_sql(&format!(
        "INSERT INTO schedules (name, interval_seconds, timeout_ms) VALUES ('explain-1m', 60, 10000)
             ON CONFLICT (name) DO NOTHING;
         INSERT INTO api_monitors (name, url, schedule_id, all_datacenters)
             SELECT 'explain-' || n, 'https://example.com/' || n, s.id, true
             FROM generate_series(1, {MONITORS}) n, schedules s WHERE s.name = 'explain-1m'
             ON CONFLICT (name) DO NOTHING;
         INSERT INTO api_heartbeats (monitor_id, datacenter_id, scheduled_at, executed_at,
                 status, success, http_status, dns_ms, connect_ms, tls_ms, ttfb_ms,
                 transfer_ms, total_ms, schedule_lag_ms, tls_cert_expires_at, error_kind,
                 error_message)
             SELECT m.id, d.id, t, t + interval '2 ms',
                    CASE WHEN fail THEN 'down' ELSE 'up' END, NOT fail,
                    CASE WHEN fail THEN NULL ELSE 200 END,
                    1 + random(), 2 + random(), CASE WHEN fail THEN NULL ELSE 5 + random() END,
                    CASE WHEN fail THEN NULL ELSE 20 + 10 * random() END,
                    CASE WHEN fail THEN NULL ELSE random() END, 30 + 10 * random(), random(),
                    now() + (m.id % 90) * interval '1 day',
                    CASE WHEN fail THEN 'timeout' END,
                    CASE WHEN fail THEN 'timed out after 10000 ms waiting for the response head' END
             FROM api_monitors m
             CROSS JOIN datacenters d
             CROSS JOIN generate_series(date_trunc('minute', now()) - interval '{DAYS} days',
                                        now(), interval '1 minute') t
             CROSS JOIN LATERAL (SELECT random() < 0.01 AS fail) f
             WHERE m.name LIKE 'explain-%'
             ON CONFLICT DO NOTHING;
         ANALYZE;"
    ))
    .execute(&pool)
    .await?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM api_heartbeats")
        .fetch_one(&pool)
        .await?;
    println!(
        "explain_queries: {rows} heartbeats ({MONITORS} monitors x 9 datacenters, 1/min, {DAYS} days) seeded in {:.0} s",
        seeding.elapsed().as_secs_f64()
    );

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/queries");
    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    for file in files {
        let sql = std::fs::read_to_string(&file)?;
        // Warm the cache once, as a dashboard refreshing every few seconds would.
        sqlx::raw_sql(&sql).execute(&pool).await?;
        let plan: Vec<String> =
            sqlx::query_scalar(&format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT TEXT) {sql}"))
                .fetch_all(&pool)
                .await?;
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let time = plan
            .iter()
            .find(|l| l.starts_with("Execution Time"))
            .cloned()
            .unwrap_or_default();
        println!("\n{name}: {time}");
        if let Some(pruned) = plan.iter().find(|l| l.contains("Subplans Removed")) {
            println!("  partitions pruned at run time: {}", pruned.trim());
        }
        // The scans that did the work: most rows read first (empty future partitions last).
        let mut scans: Vec<(u64, &str)> = plan
            .iter()
            .filter(|l| l.contains("Scan") && l.contains("api_heartbeats"))
            .map(|l| (actual_rows(l), l.trim()))
            .collect();
        scans.sort_by_key(|s| std::cmp::Reverse(s.0));
        for (_, line) in scans.iter().take(3) {
            println!("  {line}");
        }
        if scans.len() > 3 {
            println!(
                "  ... {} more scan nodes on api_heartbeats",
                scans.len() - 3
            );
        }
    }
    Ok(())
}

/// Rows a plan node produced in total: `rows=N loops=L` of its "actual" part.
fn actual_rows(line: &str) -> u64 {
    let Some(actual) = line.split("(actual").nth(1) else {
        return 0;
    };
    let number = |key: &str| -> u64 {
        actual
            .split(key)
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    number("rows=") * number("loops=").max(1)
}
