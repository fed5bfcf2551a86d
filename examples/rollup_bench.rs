//! Dashboard queries over 30 days (issue #5): how long the overview's uptime query and
//! the monitor detail's latency query take on a realistic volume, run exactly as
//! Grafana sends them (the SQL is read from `grafana/dashboards/*.json` and its macros
//! expanded like Grafana does).
//!
//! Data: 1,000 monitors x 9 datacenters; 30 days of hourly rollups (6.48 M rows) and
//! their daily sums, plus the last day of raw 1-minute heartbeats (12.96 M rows).
//!
//!     cargo run --release --example rollup_bench
//!
//! Starts a throwaway PostgreSQL from the machine's binaries (raised to
//! shared_buffers = 1 GB, as a production server would have), or uses `DATABASE_URL`
//! (a database it may fill: it must be empty). `BENCH_MONITORS` (default 1000) and
//! `BENCH_RUNS` (default 9) scale it. Prints the median of the runs after one warm-up.

#[path = "../tests/grafana/macros.rs"]
mod macros;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use macros::{expand, QueryContext};
use serde_json::Value;
use sqlx::PgPool;
use vantage::embedded_postgres::EmbeddedPostgres;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let monitors: i32 = env_or("BENCH_MONITORS", 1000);
    let runs: usize = env_or("BENCH_RUNS", 9);

    let (_cluster, url) = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => (None, url),
        _ => {
            let pg = EmbeddedPostgres::start_temporary().await?;
            let admin = vantage::storage::connect(&pg.url("postgres")).await?;
            // The test cluster is tuned small; give it a production-like cache.
            for setting in [
                "shared_buffers = '1GB'",
                "work_mem = '64MB'",
                "max_wal_size = '4GB'",
                "autovacuum = on",
            ] {
                // ALTER SYSTEM refuses to run in a (multi-statement) transaction.
                sqlx::raw_sql(&format!("ALTER SYSTEM SET {setting}"))
                    .execute(&admin)
                    .await?;
            }
            admin.close().await;
            pg.stop().await?;
            pg.start().await?;
            let url = pg.url("postgres");
            (Some(pg), url)
        }
    };
    let pool = vantage::storage::connect(&url).await?;
    vantage::storage::migrate(&pool).await?;
    let existing: i64 = sqlx::query_scalar("SELECT count(*) FROM api_monitors")
        .fetch_one(&pool)
        .await?;
    if existing > 0 {
        bail!("the database already has monitors: point DATABASE_URL at an empty database");
    }

    let now = Utc::now().duration_trunc(TimeDelta::minutes(1))?;
    println!("seeding {monitors} monitors x 9 datacenters ...");
    let t = Instant::now();
    seed_config(&pool, monitors).await?;
    seed_hourly(&pool, now).await?;
    println!("  30 days of hourly + daily rollups: {:.1} s", secs(t));
    let t = Instant::now();
    let raw = seed_raw(&pool, now).await?;
    println!(
        "  {raw} raw heartbeats (last 24 h, 1-minute slots): {:.1} s",
        secs(t)
    );
    sqlx::raw_sql("VACUUM ANALYZE").execute(&pool).await?;

    // What the leader's housekeeping does every few minutes: refresh the last 3 hours.
    let t = Instant::now();
    let changed = vantage::rollup::refresh(&pool, vantage::rollup::DEFAULT_LOOKBACK).await?;
    println!(
        "  rollup::refresh(lookback 3 h) over {} raw rows: {:.2} s ({changed} rollup rows written)",
        9 * monitors * 180,
        secs(t)
    );

    let dashboards = load_dashboards()?;
    let all_monitors: Vec<String> = (1..=monitors).map(|m| m.to_string()).collect();
    let all_dcs: Vec<String> = (1..=9).map(|d| d.to_string()).collect();
    let ctx = QueryContext {
        from: now - TimeDelta::days(30),
        to: now,
        // 30 days on a ~1,400 px wide panel: Grafana picks 30m.
        interval: TimeDelta::minutes(30),
        vars: BTreeMap::from([
            ("ds".to_string(), vec!["vantage-pg".to_string()]),
            ("datacenter".to_string(), all_dcs),
        ]),
        multi: BTreeSet::from(["datacenter".to_string(), "monitor".to_string()]),
    };

    println!("\ndashboard queries over the last 30 days, median of {runs} runs after a warm-up:");
    println!(
        "{:<10} {:<45} {:>10} {:>8}",
        "dashboard", "panel", "median", "rows"
    );
    let mut targets = Vec::new();
    for (file, dashboard) in &dashboards {
        for panel in dashboard["panels"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?").to_string();
            for target in panel["targets"].as_array().into_iter().flatten() {
                let sql = target["rawSql"].as_str().unwrap_or_default().to_string();
                targets.push((file.clone(), title.clone(), sql));
            }
        }
    }
    let mut headline = Vec::new();
    for (file, title, sql) in targets {
        let mut ctx = QueryContext {
            vars: ctx.vars.clone(),
            multi: ctx.multi.clone(),
            ..ctx
        };
        // The overview shows every monitor; the detail one monitor.
        let monitor_values = if file.starts_with("overview") {
            all_monitors.clone()
        } else {
            vec!["1".to_string()]
        };
        ctx.vars.insert("monitor".to_string(), monitor_values);
        if file.starts_with("monitor") {
            ctx.multi.remove("monitor");
        }
        if title.starts_with("Phases") {
            // A repeated panel: one datacenter per copy.
            ctx.vars
                .insert("datacenter".to_string(), vec!["1".to_string()]);
        }
        let expanded = expand(&sql, &ctx);
        let (median, rows) = time_query(&pool, &expanded, runs).await?;
        println!(
            "{:<10} {:<45} {:>7.1} ms {:>8}",
            file.trim_end_matches(".json"),
            title,
            ms(median),
            rows
        );
        if title.starts_with("Uptime % per monitor") || title.starts_with("Total latency") {
            headline.push((title, median, rows));
        }
    }
    println!("\ntarget: <= 200 ms each");
    for (title, median, rows) in &headline {
        let verdict = if ms(*median) <= 200.0 { "ok" } else { "OVER" };
        println!("  {title}: {:.1} ms ({rows} rows) {verdict}", ms(*median));
    }
    Ok(())
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn load_dashboards() -> anyhow::Result<Vec<(String, Value)>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/dashboards");
    let mut out = Vec::new();
    for name in ["overview.json", "monitor.json"] {
        let text = std::fs::read_to_string(dir.join(name)).with_context(|| name.to_string())?;
        out.push((name.to_string(), serde_json::from_str(&text)?));
    }
    Ok(out)
}

async fn time_query(pool: &PgPool, sql: &str, runs: usize) -> anyhow::Result<(Duration, usize)> {
    let mut rows = 0;
    let mut times = Vec::with_capacity(runs);
    for i in 0..=runs {
        let t = Instant::now();
        // A simple-protocol query, like Grafana's driver sends a raw SQL panel.
        let result = sqlx::raw_sql(sql).fetch_all(pool).await?;
        if i > 0 {
            times.push(t.elapsed());
        }
        rows = result.len();
    }
    times.sort();
    Ok((times[times.len() / 2], rows))
}

async fn seed_config(pool: &PgPool, monitors: i32) -> anyhow::Result<()> {
    sqlx::raw_sql(
        "INSERT INTO datacenters (code, name) VALUES
             ('va', 'Virginia'), ('ny', 'New York'), ('rdn', 'Reading'), ('chi', 'Chicago'),
             ('sf', 'San Francisco'), ('lon', 'London'), ('dam', 'Amsterdam'),
             ('sto', 'Stockholm'), ('syd', 'Sydney');
         INSERT INTO schedules (name, interval_seconds, timeout_ms) VALUES ('1m', 60, 10000);",
    )
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO api_monitors (name, url, schedule_id, all_datacenters)
         SELECT 'monitor-' || lpad(i::text, 4, '0'), 'https://m' || i || '.example.com/health',
                (SELECT id FROM schedules), true
         FROM generate_series(1, $1) i",
    )
    .bind(monitors)
    .execute(pool)
    .await?;
    Ok(())
}

/// 30 days of hourly rows (what `rollup::refresh` would have written from a month of
/// 1-minute probes), then the daily sums of those hours.
async fn seed_hourly(pool: &PgPool, now: DateTime<Utc>) -> anyhow::Result<()> {
    let phases = ["dns", "connect", "tls", "ttfb", "transfer", "total"];
    let base = [2.0, 10.0, 20.0, 40.0, 1.0, 73.0];
    let mut cols = String::new();
    let mut vals = String::new();
    for (p, b) in phases.iter().zip(base) {
        cols.push_str(&format!(
            "{p}_ms_count, {p}_ms_sum, {p}_ms_min, {p}_ms_max, {p}_ms_p50, {p}_ms_p95, {p}_ms_p99, "
        ));
        vals.push_str(&format!(
            "60 - f, (60 - f) * ({b} + j), {b} * 0.8, {b} * 3 + j, {b} + j, {b} * 1.6 + j, {b} * 2.2 + j, "
        ));
    }
    let sql = format!(
        "INSERT INTO api_heartbeats_hourly (monitor_id, datacenter_id, hour, probes, successes,
             up_count, warning_count, critical_count, down_count, errors, {cols}
             schedule_lag_ms_count, schedule_lag_ms_sum, schedule_lag_ms_max, schedule_lag_ms_p95,
             tls_cert_expires_at)
         SELECT m, d, hour, 60, 60 - f, 58 - f, 1, 1, f,
                CASE WHEN f > 0 THEN jsonb_build_object('timeout', f) ELSE '{{}}' END,
                {vals}
                60, 60 * 2.5, 15 + j, 6, $1::timestamptz + (m % 90) * interval '1 day'
         FROM generate_series(1, (SELECT max(id) FROM api_monitors)) m,
              generate_series(1, 9) d,
              generate_series($1::timestamptz - interval '30 days', $1::timestamptz - interval '1 hour',
                              interval '1 hour') hour,
              LATERAL (SELECT (m * 7919 + d * 104729 + (extract(epoch FROM hour) / 3600)::bigint * 31) % 1000 AS r) x,
              LATERAL (SELECT CASE WHEN x.r < 10 THEN 1 + x.r % 3 ELSE 0 END AS f,
                              (x.r % 20)::float8 AS j) y"
    );
    let hour_now = now.duration_trunc(TimeDelta::hours(1))?;
    sqlx::query(&sql).bind(hour_now).execute(pool).await?;
    sqlx::query(
        "INSERT INTO api_heartbeats_daily (monitor_id, datacenter_id, day, probes, successes,
             up_count, warning_count, critical_count, down_count)
         SELECT monitor_id, datacenter_id, date_trunc('day', hour, 'UTC'), sum(probes), sum(successes),
                sum(up_count), sum(warning_count), sum(critical_count), sum(down_count)
         FROM api_heartbeats_hourly GROUP BY 1, 2, 3",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The last 24 hours of 1-minute heartbeats, one statement per hour.
async fn seed_raw(pool: &PgPool, now: DateTime<Utc>) -> anyhow::Result<u64> {
    let days: Vec<_> = (0..=2)
        .map(|d| (now - TimeDelta::days(d)).date_naive())
        .collect();
    vantage::storage::partitions::ensure_days(pool, &days).await?;
    let mut total = 0;
    for h in (0..24).rev() {
        let end = now - TimeDelta::hours(h);
        total += sqlx::query(
            "INSERT INTO api_heartbeats (monitor_id, datacenter_id, scheduled_at, executed_at,
                 agent_id, leader_term, status, success, http_status, dns_ms, connect_ms, tls_ms,
                 ttfb_ms, transfer_ms, total_ms, schedule_lag_ms, tls_cert_expires_at, error_kind)
             SELECT m, d, slot, slot + interval '4 ms', d, 1,
                    CASE WHEN r < 3 THEN 'down' WHEN r < 10 THEN 'warning' ELSE 'up' END, r >= 3,
                    CASE WHEN r < 3 THEN NULL ELSE 200 END,
                    2 + r % 5, 10 + d, 20 + r % 7, 40 + r % 30, 1.0,
                    CASE WHEN r < 3 THEN 10000 ELSE 73 + r % 50 END, (r % 9) * 0.7,
                    $2::timestamptz + (m % 90) * interval '1 day',
                    CASE WHEN r < 3 THEN 'timeout' END
             FROM generate_series(1, (SELECT max(id) FROM api_monitors)) m,
                  generate_series(1, 9) d,
                  generate_series($1::timestamptz - interval '59 minutes', $1::timestamptz,
                                  interval '1 minute') slot,
                  LATERAL (SELECT (m * 7919 + d * 104729 + (extract(epoch FROM slot) / 60)::bigint * 31) % 1000 AS r) x",
        )
        .bind(end)
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected();
    }
    Ok(total)
}
