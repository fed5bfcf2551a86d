//! Heartbeat ingest benchmark (issue #3): heartbeats per second through the
//! `HeartbeatWriter` into a local Postgres, and in the same run the rate of single-row
//! INSERTs for comparison.
//!
//!     cargo bench --bench ingest                # a temporary cluster of its own
//!     DATABASE_URL=postgres://... cargo bench --bench ingest   # an existing server
//!     INGEST_ROWS=1000000 INGEST_BATCH_ROWS=5000 INGEST_MAX_INFLIGHT=2 cargo bench --bench ingest
//!
//! The temporary cluster runs with durable settings and PostgreSQL's default buffers
//! (`support::bench_database`). Both measurements write the same rows to `api_heartbeats`.

mod support;

use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::PgPool;
use vantage::storage::{self, HeartbeatWriter, WriterConfig};
use vantage::{Heartbeat, ProbeReport, ProbeStatus};

fn heartbeat(i: u64) -> Heartbeat {
    let base = Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    let slot = base + chrono::Duration::seconds((i / 10_000) as i64);
    Heartbeat {
        monitor_id: (i % 10_000) as i32 + 1,
        datacenter_id: 1,
        scheduled_at: slot,
        executed_at: slot + chrono::Duration::microseconds(1_500),
        agent_id: Some(1),
        leader_term: Some(1),
        schedule_lag_ms: 1.5,
        report: ProbeReport {
            status: ProbeStatus::Up,
            http_status: Some(200),
            dns_ms: Some(1.204),
            connect_ms: Some(0.331),
            tls_ms: Some(8.97),
            ttfb_ms: Some(21.5),
            transfer_ms: Some(0.12),
            total_ms: 32.125,
            response_size_bytes: Some(1256),
            remote_ip: Some("192.0.2.10".parse().unwrap()),
            http_version: Some("HTTP/1.1".into()),
            tls_version: Some("TLSv1.3".into()),
            tls_cert_expires_at: Some(slot + chrono::Duration::days(40)),
            redirect_count: 0,
            error_kind: None,
            error_message: None,
            response_body: None,
            content_type: None,
            server: None,
            response_headers: None,
            details: None,
        },
    }
}

async fn single_row_inserts(pool: &PgPool, from: u64, n: u64) -> anyhow::Result<Duration> {
    let mut conn = pool.acquire().await?;
    let started = Instant::now();
    for i in from..from + n {
        let h = heartbeat(i);
        let r = &h.report;
        sqlx::query(
            "INSERT INTO api_heartbeats (monitor_id, datacenter_id, scheduled_at, executed_at,
                agent_id, leader_term, status, success, http_status, dns_ms, connect_ms, tls_ms,
                ttfb_ms, transfer_ms, total_ms, schedule_lag_ms, response_size_bytes, remote_ip,
                http_version, tls_version, tls_cert_expires_at, redirect_count)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                $18::inet, $19, $20, $21, $22)
             ON CONFLICT DO NOTHING",
        )
        .bind(h.monitor_id)
        .bind(h.datacenter_id)
        .bind(h.scheduled_at)
        .bind(h.executed_at)
        .bind(h.agent_id)
        .bind(h.leader_term)
        .bind(r.status.as_str())
        .bind(r.success())
        .bind(r.http_status.map(i32::from))
        .bind(r.dns_ms)
        .bind(r.connect_ms)
        .bind(r.tls_ms)
        .bind(r.ttfb_ms)
        .bind(r.transfer_ms)
        .bind(r.total_ms)
        .bind(h.schedule_lag_ms)
        .bind(r.response_size_bytes.map(|b| b as i64))
        .bind(r.remote_ip.map(|ip| ip.to_string()))
        .bind(&r.http_version)
        .bind(&r.tls_version)
        .bind(r.tls_cert_expires_at)
        .bind(r.redirect_count as i32)
        .execute(&mut *conn)
        .await?;
    }
    Ok(started.elapsed())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rows: u64 = std::env::var("INGEST_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    let single_rows: u64 = std::env::var("INGEST_SINGLE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);

    let (_cluster, url) = support::bench_database("vantage_bench").await?;
    let pool = storage::connect(&url).await?;
    sqlx::query("TRUNCATE api_heartbeats")
        .execute(&pool)
        .await?;
    let settings: (String, String, String) =
        sqlx::query_as("SELECT current_setting('fsync'), current_setting('synchronous_commit') || ', shared_buffers=' || current_setting('shared_buffers'), current_setting('server_version')")
            .fetch_one(&pool)
            .await?;
    println!(
        "ingest benchmark: PostgreSQL {} (fsync={}, synchronous_commit={}), {} rows through the writer, {} single-row INSERTs",
        settings.2, settings.0, settings.1, rows, single_rows
    );

    // 1. Through the writer: send as fast as possible, stop the clock when all are stored.
    let spool = std::env::temp_dir().join(format!("vantage-bench-spool-{}", std::process::id()));
    // The producer outruns any database, so let the memory buffer hold the whole run:
    // this measures the insert path, not the spill to disk (which `INGEST_MEMORY_ROWS`
    // can bring in).
    let memory_rows = std::env::var("INGEST_MEMORY_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(rows as usize);
    let batch_rows = std::env::var("INGEST_BATCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let defaults = WriterConfig::default();
    let max_inflight = std::env::var("INGEST_MAX_INFLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(defaults.max_inflight);
    let config = WriterConfig {
        spool_dir: spool.clone(),
        memory_rows,
        batch_rows,
        max_inflight,
        ..defaults
    };
    let (batch_rows, batch_delay) = (config.batch_rows, config.batch_delay);
    let (tx, writer) = HeartbeatWriter::spawn(pool.clone(), config).await?;
    let stats = writer.stats();
    let started = Instant::now();
    let producer = tokio::spawn(async move {
        for i in 0..rows {
            tx.send(heartbeat(i));
            if i % 10_000 == 9_999 {
                tokio::task::yield_now().await;
            }
        }
    });
    let mut peak_during_send = 0;
    while !producer.is_finished() {
        peak_during_send = peak_during_send.max(stats.snapshot().buffered_rows);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    producer.await?;
    let sent = started.elapsed();
    let mut peak_buffered = peak_during_send;
    let mut last_report = Instant::now();
    loop {
        let s = stats.snapshot();
        if std::env::var_os("INGEST_VERBOSE").is_some()
            && last_report.elapsed() >= Duration::from_secs(1)
        {
            last_report = Instant::now();
            eprintln!("  {:>6.2} s  {s:?}", started.elapsed().as_secs_f64());
        }
        peak_buffered = peak_buffered.max(s.buffered_rows);
        if s.inserted_rows + s.duplicate_rows >= rows {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let summary = writer.shutdown().await;
    let _ = std::fs::remove_dir_all(&spool);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM api_heartbeats")
        .fetch_one(&pool)
        .await?;
    assert_eq!(stored as u64, rows, "every heartbeat stored");
    let writer_rate = rows as f64 / elapsed.as_secs_f64();
    println!(
        "writer:      {rows} heartbeats in {:.2} s = {:.0} heartbeats/s (batches of up to {batch_rows} rows or {} ms; {} batches; all sent after {:.2} s; peak buffered {}; spooled {})",
        elapsed.as_secs_f64(),
        writer_rate,
        batch_delay.as_millis(),
        summary.stats.batches,
        sent.as_secs_f64(),
        peak_buffered,
        summary.stats.spooled_rows + summary.spooled_rows,
    );

    // 2. Single-row INSERTs on one connection, same columns, new rows.
    let took = single_row_inserts(&pool, rows, single_rows).await?;
    let single_rate = single_rows as f64 / took.as_secs_f64();
    println!(
        "single-row:  {single_rows} INSERTs in {:.2} s = {:.0} rows/s (one connection, autocommit)",
        took.as_secs_f64(),
        single_rate
    );
    println!("speed-up:    {:.1}x", writer_rate / single_rate);
    pool.close().await;
    Ok(())
}
