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
//! 3. End to end: three datacenters led by real electors store a heartbeat for each of
//!    `BENCH_E2E_MONITORS` (default 60) monitors every second (1 s schedule), one
//!    INSERT per second for the three, as their writers would; two monitors at a time
//!    go down everywhere. The incident evaluator (its own election) and the worker run
//!    in this process, as in `vantage run`. Latency = the webhook request received
//!    minus the COMMIT of the heartbeats of the slot that completed the quorum
//!    (`incidents.opened_at`).
//!
//!     cargo run --release --example notify_bench
//!
//! Starts a throwaway PostgreSQL from the machine's binaries, or uses `DATABASE_URL`
//! (an empty database it may fill).

#[allow(dead_code)]
#[path = "../tests/support/notify.rs"]
mod receiver;
#[path = "../benches/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, Utc};

use receiver::{open_incident, webhook_channel, Receiver};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vantage::embedded_postgres::EmbeddedPostgres;
use vantage::incidents::{self, EvaluatorConfig};
use vantage::leadership::{ElectionConfig, Elector, Leadership, LeadershipScope};
use vantage::metrics::Metrics;
use vantage::notify::{self, signature, NotifyConfig};
use vantage::probe::Prober;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `count` monitors on a schedule of `interval_seconds`, in every datacenter.
async fn seed_monitors(
    pool: &sqlx::PgPool,
    count: usize,
    interval_seconds: i32,
) -> anyhow::Result<Vec<i32>> {
    Ok(sqlx::query_scalar(
        "WITH s AS (INSERT INTO schedules (name, interval_seconds, timeout_ms) VALUES ($2 || 's', $2, $2 * 500) RETURNING id) \
         INSERT INTO api_monitors (name, url, schedule_id, all_datacenters) \
         SELECT 'm' || g, 'https://m' || g || '.example/', s.id, true FROM s, generate_series(1, $1) g RETURNING id",
    )
    .bind(count as i32)
    .bind(interval_seconds)
    .fetch_all(pool)
    .await?)
}

/// A receiver answering in 50 ms, and a webhook channel `name` routed every incident
/// to it, without a rate limit in the way (the benchmark measures delivery).
async fn receiver_channel(pool: &sqlx::PgPool, name: &str) -> anyhow::Result<Receiver> {
    let receiver = Receiver::start().await;
    receiver.respond_with(|_| (200, Duration::from_millis(50)));
    let channel = webhook_channel(
        pool,
        name,
        &receiver.url("/hook"),
        &signature::new_secret(),
        None,
    )
    .await;
    sqlx::query("UPDATE notification_channels SET rate_limit_per_minute = 1000000 WHERE id = $1")
        .bind(channel)
        .execute(pool)
        .await?;
    Ok(receiver)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
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
    let monitors = seed_monitors(&pool, count + samples, 10).await?;

    let receiver = receiver_channel(&pool, "bench").await?;

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

    end_to_end(&url, env_or("BENCH_E2E_MONITORS", 60)).await
}

/// Phase 3, on a database of its own.
async fn end_to_end(url: &str, monitors: usize) -> anyhow::Result<()> {
    const DATACENTERS: usize = 3;
    let admin = vantage::storage::connect(url).await?;
    // One statement each: DROP/CREATE DATABASE refuse a (multi-statement) transaction.
    for statement in [
        "DROP DATABASE IF EXISTS notify_bench_e2e",
        "CREATE DATABASE notify_bench_e2e",
    ] {
        sqlx::raw_sql(statement).execute(&admin).await?;
    }
    let mut e2e_url: url::Url = url.parse()?;
    e2e_url.set_path("/notify_bench_e2e");
    let options: sqlx::postgres::PgConnectOptions = e2e_url.as_str().parse()?;
    let pool = vantage::storage::connect_with(options.clone()).await?;
    vantage::storage::migrate(&pool).await?;
    let monitor_ids = seed_monitors(&pool, monitors, 1).await?;
    let receiver = receiver_channel(&pool, "e2e").await?;

    let shutdown = CancellationToken::new();
    let led = support::LedDatacenters::start(&pool, &options, DATACENTERS, &shutdown).await?;
    let (dcs, agents) = (&led.ids, &led.agents);
    let (evaluator_elector, evaluator_election) = Elector::spawn(
        ElectionConfig::new(options.clone(), LeadershipScope::Evaluator, agents[0]),
        shutdown.clone(),
    );
    let metrics = Metrics::new();
    let evaluator = incidents::spawn(
        pool.clone(),
        options.clone(),
        evaluator_elector.subscribe(),
        EvaluatorConfig::default(),
        metrics.clone(),
        shutdown.clone(),
    );
    let notifier = notify::spawn(
        pool.clone(),
        evaluator_elector.subscribe(),
        NotifyConfig::new(Arc::new(Prober::builder().build()?)),
        metrics,
        shutdown.clone(),
    );

    // Warm-up of 5 s, then monitors 2k and 2k+1 fail from second 5 + k for 3 slots.
    let warm_up = 5;
    let seconds = warm_up + monitors / 2 + 6;
    let mut slot =
        Utc::now().duration_trunc(chrono::Duration::seconds(1))? + chrono::Duration::seconds(1);
    let mut committed: HashMap<DateTime<Utc>, Instant> = HashMap::new();
    for second in 0..seconds {
        tokio::time::sleep((slot - Utc::now()).to_std().unwrap_or_default()).await;
        let down: Vec<bool> = (0..monitors)
            .map(|i| {
                let start = warm_up + i / 2;
                second >= start && second < start + 3
            })
            .collect();
        let (mut m, mut d, mut s) = (Vec::new(), Vec::new(), Vec::new());
        for dc in dcs {
            for (i, id) in monitor_ids.iter().enumerate() {
                m.push(*id);
                d.push(*dc);
                s.push(if down[i] { "down" } else { "up" });
            }
        }
        sqlx::query(
            "INSERT INTO api_heartbeats (monitor_id, datacenter_id, scheduled_at, executed_at, status, success, total_ms, error_kind, error_message) \
             SELECT m, d, $4, $4, s, s = 'up', 12.5, CASE WHEN s = 'down' THEN 'connect_refused' END, \
                    CASE WHEN s = 'down' THEN 'connection refused' END \
             FROM unnest($1::int[], $2::int[], $3::text[]) AS x(m, d, s)",
        )
        .bind(&m)
        .bind(&d)
        .bind(&s)
        .bind(slot)
        .execute(&pool)
        .await?;
        committed.insert(slot, Instant::now());
        slot += chrono::Duration::seconds(1);
    }
    let received = receiver
        .wait_until("every incident notified", Duration::from_secs(30), |r| {
            r.iter()
                .filter(|r| r.json()["event"] == "incident.opened")
                .count()
                >= monitors
        })
        .await;
    let opened: Vec<(i64, DateTime<Utc>)> =
        sqlx::query_as("SELECT id, opened_at FROM incidents WHERE kind = 'monitor_down'")
            .fetch_all(&pool)
            .await?;
    let mut latencies = Vec::new();
    for (incident, opened_at) in &opened {
        let arrived = received
            .iter()
            .find(|r| {
                r.json()["event"] == "incident.opened" && r.json()["incident"]["id"] == *incident
            })
            .map(|r| r.at);
        if let (Some(arrived), Some(commit)) = (arrived, committed.get(opened_at)) {
            latencies.push(arrived.duration_since(*commit).as_secs_f64() * 1000.0);
        }
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "end to end (COMMIT of the heartbeats completing the quorum -> webhook received; {DATACENTERS} datacenters, \
         evaluator tick {} ms, {} of {monitors} incidents): p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms",
        EvaluatorConfig::default().tick.as_millis(),
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    shutdown.cancel();
    let _ = tokio::join!(evaluator, notifier);
    led.stopped().await;
    let _ = evaluator_election.await;
    Ok(())
}
