//! Incident evaluator benchmark (issue #10): 10,000 monitors x 9 datacenters every 10 s
//! (9,000 heartbeats/s) stored into Postgres while the evaluator runs, with rounds in
//! which some monitors go down everywhere.
//!
//!     cargo bench --bench evaluator
//!     EVAL_MONITORS=10000 EVAL_ROUNDS=2 EVAL_FAILING=200 cargo bench --bench evaluator
//!
//! A round lasts four intervals (40 s): its monitors fail for two slots each, then
//! recover for two.
//!
//! Printed:
//! - evaluator CPU: CPU time of the thread running the evaluator (its own runtime, on
//!   one OS thread: the evaluation, its SQL client and its elector), per second of
//!   heartbeats, as a share of one core;
//! - database load it adds: queries/s and rows read per stored heartbeat, and the CPU of
//!   the Postgres backends serving it (`/proc/<pid>/stat` of the sessions named
//!   `vantage-evaluator`);
//! - detection latency: from the commit of the batch holding the heartbeat that
//!   completes a quorum to `incidents.created_at`, p50/p99 over every incident opened;
//! - takeover: the evaluator's runtime is dropped (its connections close as in a crash)
//!   and a standby evaluator, already bidding, takes over: time until it evaluates.
//!
//! The load generator writes rows straight into `api_heartbeats` (one multi-row INSERT
//! per second per datacenter, as nine leaders' writers would), so that the moment each
//! heartbeat became visible is known exactly. Datacenters are led by real electors.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use vantage::incidents::{self, EvaluatorConfig};
use vantage::leadership::{ElectionConfig, Elector, LeadershipScope};
use vantage::metrics::Metrics;

const DATACENTERS: usize = 9;
const INTERVAL_S: i64 = 10;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// An evaluator on a runtime of its own, on one OS thread whose CPU time we can read.
struct EvaluatorThread {
    tid: i32,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EvaluatorThread {
    fn start(options: PgConnectOptions, agent_id: i64) -> Self {
        let metrics = Metrics::new();
        let shutdown = CancellationToken::new();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let thread = {
            let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
            std::thread::spawn(move || {
                tid_tx.send(unsafe { libc::gettid() }).unwrap();
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let pool = PgPoolOptions::new()
                        .max_connections(4)
                        .connect_with(options.clone().application_name("vantage-evaluator"))
                        .await
                        .unwrap();
                    let mut election =
                        ElectionConfig::new(options.clone(), LeadershipScope::Evaluator, agent_id);
                    election.outage_grace = Duration::ZERO;
                    let (elector, _election) = Elector::spawn(election, shutdown.clone());
                    let task = incidents::spawn(
                        pool,
                        options,
                        elector.subscribe(),
                        EvaluatorConfig::default(),
                        metrics,
                        shutdown.clone(),
                    );
                    shutdown.cancelled().await;
                    // A crash: nothing resigns, the runtime is dropped with the tasks.
                    drop(task);
                });
            })
        };
        Self {
            tid: tid_rx.recv().unwrap(),
            metrics,
            shutdown,
            thread: Some(thread),
        }
    }

    fn cpu(&self) -> Duration {
        support::cpu_time(std::process::id(), Some(self.tid))
    }

    fn evaluating(&self) -> bool {
        self.metrics
            .render()
            .lines()
            .any(|l| l == "vantage_evaluator_leader 1")
    }

    fn heartbeats_read(&self) -> u64 {
        self.metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix("vantage_evaluated_heartbeats_total "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn crash(mut self) {
        self.shutdown.cancel();
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

/// CPU of the Postgres backends serving the evaluator's sessions.
async fn evaluator_backends_cpu(pool: &PgPool) -> Duration {
    let pids: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity \
         WHERE application_name IN ('vantage-evaluator', 'vantage-leadership-evaluator')",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    pids.into_iter()
        .map(|pid| support::cpu_time(pid as u32, None))
        .sum()
}

/// One 10 s schedule and `monitors` monitors on it, everywhere.
async fn seed_monitors(pool: &PgPool, monitors: usize) {
    sqlx::query(
        "INSERT INTO schedules (name, interval_seconds, timeout_ms) VALUES ('every-10s', 10, 5000)",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO api_monitors (name, url, schedule_id, all_datacenters) \
         SELECT 'm' || i, 'https://m' || i || '.example/', (SELECT id FROM schedules), true \
         FROM generate_series(1, $1) AS i",
    )
    .bind(monitors as i32)
    .execute(pool)
    .await
    .unwrap();
}

/// Stores one second's heartbeats: every monitor whose slot falls in this second, in
/// every datacenter; `down` says which monitors fail. Returns when it was committed.
async fn store_second(
    pool: &PgPool,
    dcs: &[i32],
    monitor_ids: &[i32],
    slot: DateTime<Utc>,
    down: &dyn Fn(i32) -> bool,
) -> DateTime<Utc> {
    let second = slot.timestamp().rem_euclid(INTERVAL_S) as i32;
    let due: Vec<i32> = monitor_ids
        .iter()
        .copied()
        .filter(|m| m % INTERVAL_S as i32 == second)
        .collect();
    let mut inserts = Vec::new();
    for dc in dcs {
        let statuses: Vec<&str> = due
            .iter()
            .map(|m| if down(*m) { "down" } else { "up" })
            .collect();
        inserts.push(
            sqlx::query(
                "INSERT INTO api_heartbeats (monitor_id, datacenter_id, scheduled_at, executed_at, \
                                             status, success, total_ms, error_kind, error_message) \
                 SELECT m, $2, $3, $3, s, s = 'up', 12.5, \
                        CASE WHEN s = 'down' THEN 'connect_refused' END, \
                        CASE WHEN s = 'down' THEN 'connection refused' END \
                 FROM unnest($1::int[], $4::text[]) AS x(m, s)",
            )
            .bind(&due)
            .bind(*dc)
            .bind(slot)
            .bind(statuses)
            .execute(pool),
        );
    }
    for result in futures_util::future::join_all(inserts).await {
        result.unwrap();
    }
    Utc::now()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let monitors = env_or("EVAL_MONITORS", 10_000) as usize;
    let rounds = env_or("EVAL_ROUNDS", 2).max(1);
    let per_round = 4 * INTERVAL_S;
    let seconds = rounds * per_round as u64;
    let failing = env_or("EVAL_FAILING", 200) as i32;

    // The evaluator says how its rebuild went (EVAL_LOG=vantage=debug for the parts).
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("EVAL_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let (_cluster, url) = support::bench_database("vantage_eval_bench").await?;
    let options: PgConnectOptions = url.parse()?;
    let pool = PgPoolOptions::new()
        .max_connections(DATACENTERS as u32 + 2)
        .connect_with(options.clone())
        .await?;
    seed_monitors(&pool, monitors).await;
    let monitor_ids: Vec<i32> = sqlx::query_scalar("SELECT id FROM api_monitors ORDER BY id")
        .fetch_all(&pool)
        .await?;
    println!(
        "evaluator benchmark: {monitors} monitors x {DATACENTERS} datacenters every {INTERVAL_S} s = {} heartbeats/s, {seconds} s measured, {rounds} round(s) of {failing} monitors down everywhere",
        monitors * DATACENTERS / INTERVAL_S as usize
    );

    // Real leaders for every datacenter, so none is impaired.
    let leaders = CancellationToken::new();
    let led = support::LedDatacenters::start(&pool, &options, DATACENTERS, &leaders).await?;
    let (dcs, agents) = (&led.ids, &led.agents);
    let evaluator = EvaluatorThread::start(options.clone(), agents[0]);
    let standby = {
        // Bids from the start, as every instance does.
        let next = EvaluatorThread::start(options.clone(), agents[1]);
        while !evaluator.evaluating() && !next.evaluating() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        next
    };
    let (evaluator, standby) = if evaluator.evaluating() {
        (evaluator, standby)
    } else {
        (standby, evaluator)
    };

    // Warm up: two full intervals of heartbeats, all up.
    let mut slot =
        Utc::now().duration_trunc(chrono::Duration::seconds(1))? + chrono::Duration::seconds(1);
    let tick = |slot: DateTime<Utc>| async move {
        let wait = (slot - Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(wait).await;
    };
    for _ in 0..2 * INTERVAL_S {
        tick(slot).await;
        store_second(&pool, dcs, &monitor_ids, slot, &|_| false).await;
        slot += chrono::Duration::seconds(1);
    }

    // Measure.
    let cpu_before = evaluator.cpu();
    let backends_before = evaluator_backends_cpu(&pool).await;
    let read_before = evaluator.heartbeats_read();
    let commits_before: i64 = sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&pool)
    .await?;
    let started = Instant::now();
    let mut stored = 0u64;
    let mut committed: HashMap<(i32, DateTime<Utc>), DateTime<Utc>> = HashMap::new();
    for i in 0..seconds as i64 {
        tick(slot).await;
        // In round r, monitors r*failing+1 ..= (r+1)*failing are down for the first half.
        let round = (i / per_round) as i32;
        let in_first_half = i % per_round < per_round / 2;
        let down = move |m: i32| in_first_half && m > round * failing && m <= (round + 1) * failing;
        let at = store_second(&pool, dcs, &monitor_ids, slot, &down).await;
        let second = slot.timestamp().rem_euclid(INTERVAL_S) as i32;
        for m in monitor_ids
            .iter()
            .filter(|m| *m % INTERVAL_S as i32 == second && down(**m))
        {
            committed.insert((*m, slot), at);
        }
        stored += (monitor_ids.len() / INTERVAL_S as usize * DATACENTERS) as u64;
        slot += chrono::Duration::seconds(1);
    }
    let elapsed = started.elapsed();
    let cpu = evaluator.cpu() - cpu_before;
    let backends = evaluator_backends_cpu(&pool)
        .await
        .saturating_sub(backends_before);
    let read = evaluator.heartbeats_read() - read_before;
    let commits_after: i64 = sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&pool)
    .await?;
    // Everything but the generator's own inserts (DATACENTERS per second).
    let evaluator_transactions =
        (commits_after - commits_before) as f64 - (DATACENTERS as u64 * seconds) as f64;

    let opened: Vec<(i32, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT monitor_id, opened_at, created_at FROM incidents WHERE kind = 'monitor_down'",
    )
    .fetch_all(&pool)
    .await?;
    let mut latencies: Vec<f64> = opened
        .iter()
        .filter_map(|(m, opened_at, created_at)| {
            let at = committed.get(&(*m, *opened_at))?;
            Some((*created_at - *at).num_microseconds()? as f64 / 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let expected = (failing as u64 * rounds) as usize;

    println!(
        "  heartbeats stored: {stored} in {:.1} s ({:.0}/s); read by the evaluator: {read} ({:.3} reads per stored heartbeat)",
        elapsed.as_secs_f64(),
        stored as f64 / elapsed.as_secs_f64(),
        read as f64 / stored as f64
    );
    println!(
        "  evaluator CPU: {:.1} ms per second = {:.1} % of one core",
        cpu.as_secs_f64() * 1000.0 / elapsed.as_secs_f64(),
        cpu.as_secs_f64() * 100.0 / elapsed.as_secs_f64()
    );
    println!(
        "  database load added: {:.1} transactions/s (~7 statements per tick of 250 ms), Postgres backends serving it {:.1} % of one core",
        evaluator_transactions / elapsed.as_secs_f64(),
        backends.as_secs_f64() * 100.0 / elapsed.as_secs_f64()
    );
    println!(
        "  detection latency (batch commit -> incident row) over {} of {expected} incidents: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN)
    );

    // Takeover: crash the evaluator; the standby has been bidding all along.
    let crashed = Instant::now();
    evaluator.crash();
    while !standby.evaluating() {
        if crashed.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("the standby evaluator did not take over within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "  takeover after the evaluator's crash (lock released, standby's bid, rebuild of {} monitor x datacenter streaks): {} ms",
        monitors * DATACENTERS,
        crashed.elapsed().as_millis()
    );
    standby.crash();
    leaders.cancel();
    led.stopped().await;
    Ok(())
}
