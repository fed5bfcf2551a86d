//! Notification delivery figures (issue #11):
//!
//! 1. Outbox throughput: `BENCH_NOTIFICATIONS` (default 2,000) incident events queued
//!    while no worker runs, then one worker (concurrency `BENCH_CONCURRENCY`, default
//!    32) delivers them to a local webhook receiver that answers each request after
//!    50 ms. Figure: notifications per second from the worker's start to the last one
//!    recorded as sent.
//! 2. Outbox latency: with the worker idle, `BENCH_SAMPLES` (default 200) incidents
//!    opened one at a time, 50 ms apart, each in its own transaction as the evaluator
//!    does; latency = the webhook request fully arrived at the receiver minus the
//!    moment the transaction's COMMIT returned. This is the notification half of
//!    "heartbeat to webhook"; the evaluator adds heartbeat-to-incident (issue #10).
//!
//!     cargo run --release --example notify_bench
//!
//! Starts a throwaway PostgreSQL from the machine's binaries, or uses `DATABASE_URL`
//! (an empty database it may fill).

#[allow(dead_code)]
#[path = "../tests/support/notify.rs"]
mod receiver;

use std::sync::Arc;
use std::time::{Duration, Instant};

use receiver::{open_incident, webhook_channel, Receiver};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vantage::embedded_postgres::EmbeddedPostgres;
use vantage::leadership::Leadership;
use vantage::metrics::Metrics;
use vantage::notify::{self, signature, NotifyConfig};
use vantage::probe::Prober;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let count: usize = env_or("BENCH_NOTIFICATIONS", 2000);
    let concurrency: usize = env_or("BENCH_CONCURRENCY", 32);
    let samples: usize = env_or("BENCH_SAMPLES", 200);

    let (_cluster, url) = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => (None, url),
        _ => {
            let pg = EmbeddedPostgres::start_temporary().await?;
            let url = pg.url("postgres");
            (Some(pg), url)
        }
    };
    let pool = vantage::storage::connect(&url).await?;
    vantage::storage::migrate(&pool).await?;
    let datacenter: i32 = sqlx::query_scalar(
        "INSERT INTO datacenters (code, name) VALUES ('va', 'Virginia') RETURNING id",
    )
    .fetch_one(&pool)
    .await?;
    let monitors: Vec<i32> = sqlx::query_scalar(
        "WITH s AS (INSERT INTO schedules (name, interval_seconds, timeout_ms) VALUES ('10s', 10, 5000) RETURNING id) \
         INSERT INTO api_monitors (name, url, schedule_id, all_datacenters) \
         SELECT 'm' || g, 'https://m' || g || '.example/', s.id, true FROM s, generate_series(1, $1) g RETURNING id",
    )
    .bind((count + samples) as i32)
    .fetch_all(&pool)
    .await?;

    let receiver = Receiver::start().await;
    receiver.respond_with(|_| (200, Duration::from_millis(50)));
    let channel = webhook_channel(
        &pool,
        "bench",
        &receiver.url("/hook"),
        &signature::new_secret(),
        None,
    )
    .await;
    // The benchmark measures delivery, not the rate limit.
    sqlx::query("UPDATE notification_channels SET rate_limit_per_minute = 1000000 WHERE id = $1")
        .bind(channel)
        .execute(&pool)
        .await?;

    // 1. Throughput.
    let queue_started = Instant::now();
    for monitor in &monitors[..count] {
        open_incident(&pool, *monitor, &[datacenter]).await;
    }
    let queued_in = queue_started.elapsed();
    let mut config = NotifyConfig::new(Arc::new(Prober::builder().build()?));
    config.concurrency = concurrency;
    let (_leader, evaluator) = watch::channel(Leadership::Leader {
        term: 1,
        lock_confirmed: true,
    });
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let worker = notify::spawn(
        pool.clone(),
        evaluator,
        config,
        Metrics::new(),
        shutdown.clone(),
    );
    loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM notifications WHERE status <> 'sent'")
                .fetch_one(&pool)
                .await?;
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    println!(
        "outbox throughput: {count} notifications in {:.2} s = {:.0} notifications/s \
         (receiver answers in 50 ms, concurrency {concurrency}; queueing them took {:.2} s = {:.0} incident transactions/s)",
        took.as_secs_f64(),
        count as f64 / took.as_secs_f64(),
        queued_in.as_secs_f64(),
        count as f64 / queued_in.as_secs_f64(),
    );

    // 2. Latency, worker idle and listening.
    let before = receiver.received().len();
    let mut committed = Vec::with_capacity(samples);
    for monitor in &monitors[count..] {
        let incident = open_incident(&pool, *monitor, &[datacenter]).await;
        committed.push((incident, Instant::now()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all = receiver
        .wait_until("every sample delivered", Duration::from_secs(60), |r| {
            r.len() >= before + samples
        })
        .await;
    let mut latencies: Vec<f64> = committed
        .iter()
        .map(|(incident, at)| {
            let request = all[before..]
                .iter()
                .find(|r| r.json()["incident"]["id"] == *incident)
                .expect("every sample delivered");
            request.at.duration_since(*at).as_secs_f64() * 1000.0
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    println!(
        "outbox latency (incident event COMMIT -> webhook request received, {samples} samples, receiver answers in 50 ms): \
         p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().unwrap()
    );
    shutdown.cancel();
    worker.await?;
    Ok(())
}
