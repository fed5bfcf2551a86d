//! What the benchmarks (and `examples/notify_bench`) share: a PostgreSQL to measure
//! against, datacenters led by real electors, and CPU time read from `/proc`.

// Each benchmark uses a different subset of these helpers.
#![allow(dead_code)]

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use vantage::embedded_postgres::EmbeddedPostgres;
use vantage::leadership::{ElectionConfig, Elector, LeadershipScope};
use vantage::storage;

/// The database `name` on `DATABASE_URL`'s server when it is set, otherwise on a
/// temporary cluster of our own (returned, so it lives as long as the caller keeps it).
/// The temporary cluster is switched to durable settings (fsync, synchronous_commit,
/// full_page_writes on) and PostgreSQL's default shared_buffers (128 MB) and
/// max_wal_size (1 GB) before measuring, so figures are neither flattered nor starved by
/// the test tuning. The schema is migrated.
pub async fn bench_database(name: &str) -> anyhow::Result<(Option<EmbeddedPostgres>, String)> {
    let (cluster, url) = match std::env::var("DATABASE_URL") {
        Ok(base) if !base.is_empty() => {
            let mut url: url::Url = base.parse()?;
            url.set_path(&format!("/{name}_{}", std::process::id()));
            (None, url.to_string())
        }
        _ => {
            let pg = EmbeddedPostgres::start_temporary().await?;
            let admin = storage::connect(&pg.url("postgres")).await?;
            for sql in [
                "ALTER SYSTEM SET fsync = on",
                "ALTER SYSTEM SET synchronous_commit = on",
                "ALTER SYSTEM SET full_page_writes = on",
                // PostgreSQL's own defaults, not the test clusters' tiny ones.
                "ALTER SYSTEM SET shared_buffers = '128MB'",
                "ALTER SYSTEM SET max_wal_size = '1GB'",
            ] {
                sqlx::raw_sql(sql).execute(&admin).await?;
            }
            admin.close().await;
            // shared_buffers needs a restart.
            pg.stop().await?;
            pg.start().await?;
            let url = pg.url(name);
            (Some(pg), url)
        }
    };
    storage::ensure_database_exists(&url).await?;
    let pool = storage::connect(&url).await?;
    storage::migrate(&pool).await?;
    pool.close().await;
    Ok((cluster, url))
}

/// `count` datacenters (`dc0`, `dc1`, ...), each with a registered instance and a real
/// elector holding its leadership lock until `shutdown`, so the evaluator sees every
/// one of them led and none impaired.
pub struct LedDatacenters {
    pub ids: Vec<i32>,
    pub agents: Vec<i64>,
    /// The electors' tasks; they resign once `shutdown` is cancelled.
    pub electors: Vec<JoinHandle<()>>,
}

impl LedDatacenters {
    pub async fn start(
        pool: &PgPool,
        options: &PgConnectOptions,
        count: usize,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let mut led = Self {
            ids: Vec::new(),
            agents: Vec::new(),
            electors: Vec::new(),
        };
        for i in 0..count {
            let dc: i32 = sqlx::query_scalar(
                "INSERT INTO datacenters (code, name) VALUES ($1, $1) RETURNING id",
            )
            .bind(format!("dc{i}"))
            .fetch_one(pool)
            .await?;
            let agent: i64 = sqlx::query_scalar(
                "INSERT INTO agents (datacenter_id, instance_name) VALUES ($1, 'bench') RETURNING id",
            )
            .bind(dc)
            .fetch_one(pool)
            .await?;
            let (_, election) = Elector::spawn(
                ElectionConfig::new(options.clone(), LeadershipScope::Datacenter(dc), agent),
                shutdown.clone(),
            );
            led.electors.push(election);
            led.ids.push(dc);
            led.agents.push(agent);
        }
        Ok(led)
    }

    /// Resigns every datacenter's leadership (after `shutdown` was cancelled).
    pub async fn stopped(self) {
        for election in self.electors {
            let _ = election.await;
        }
    }
}

/// User + system CPU time of process `pid`, or of its thread `tid`, from `/proc`
/// (clock-tick resolution); zero once it is gone.
pub fn cpu_time(pid: u32, tid: Option<i32>) -> Duration {
    let path = match tid {
        Some(tid) => format!("/proc/{pid}/task/{tid}/stat"),
        None => format!("/proc/{pid}/stat"),
    };
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}
