//! `vantage apply` at scale (issue #16): how long applying 10,000 monitors across 3
//! datacenters takes on an empty database, and how long a re-apply that changes nothing
//! takes, measured end to end as the command does it (read and validate the files,
//! lock, read the database, plan, write, commit).
//!
//!     cargo run --release --example config_apply_bench
//!
//! Starts a throwaway PostgreSQL from the machine's binaries, or uses `DATABASE_URL`
//! (a database it may fill: it must have no monitors). `BENCH_MONITORS` (default
//! 10000) scales it. The files are generated into a temporary directory: one file of
//! datacenters and schedules, and the monitors split over ten files.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use vantage::config_as_code::apply::{self, Options};
use vantage::config_as_code::load;
use vantage::config_as_code::plan::Plan;
use vantage::embedded_postgres::EmbeddedPostgres;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let monitors: usize = std::env::var("BENCH_MONITORS")
        .ok()
        .map(|v| v.parse().context("BENCH_MONITORS"))
        .transpose()?
        .unwrap_or(10_000);
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
    let existing: i64 = sqlx::query_scalar("SELECT count(*) FROM api_monitors")
        .fetch_one(&pool)
        .await?;
    if existing > 0 {
        bail!("the database already has {existing} monitors; use an empty one");
    }

    let dir = tempfile::tempdir()?;
    let files = generate(dir.path(), monitors)?;
    let options = Options {
        source: "bench",
        prune: true,
        lock_timeout: Duration::from_secs(30),
    };

    let started = Instant::now();
    let loaded = load::load_files(&files);
    if !loaded.errors.is_empty() {
        bail!("generated files are invalid: {}", loaded.errors[0]);
    }
    let parsed = started.elapsed();
    let plan = apply::apply(&pool, &loaded, &options).await?;
    let empty = started.elapsed();
    println!(
        "apply on an empty database: {:.2} s for {} changes ({monitors} monitors, 3 datacenters; reading the files {:.2} s)",
        empty.as_secs_f64(),
        plan.changes.len(),
        parsed.as_secs_f64()
    );

    let started = Instant::now();
    let loaded = load::load_files(&files);
    let plan = apply::apply(&pool, &loaded, &options).await?;
    let noop = started.elapsed();
    if !plan.is_empty() {
        bail!("the re-apply changed {} objects", plan.changes.len());
    }
    println!("re-apply, nothing to do:    {:.2} s", noop.as_secs_f64());
    // Where a no-op goes: reading the files, reading the database, comparing.
    let started = Instant::now();
    let loaded = load::load_files(&files);
    let read_files = started.elapsed();
    let state = apply::snapshot(&pool).await?;
    let read_db = started.elapsed() - read_files;
    Plan::build(&loaded, &state, "bench", true)
        .map_err(|errors| anyhow::anyhow!("{}", errors[0]))?;
    let compare = started.elapsed() - read_files - read_db;
    println!(
        "  of which: reading the files {:.2} s, reading the database {:.2} s, comparing {:.2} s",
        read_files.as_secs_f64(),
        read_db.as_secs_f64(),
        compare.as_secs_f64()
    );
    let assignments: i64 = sqlx::query_scalar("SELECT count(*) FROM monitor_assignments")
        .fetch_one(&pool)
        .await?;
    println!("({assignments} monitor assignments in the database)");
    Ok(())
}

/// Writes the files and returns their paths. Every third monitor runs everywhere, the
/// others in one or two datacenters; a tenth carry headers and assertions.
fn generate(dir: &std::path::Path, monitors: usize) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let base = dir.join("base.yaml");
    std::fs::write(
        &base,
        "regions:\n  us-east: {name: US East}\n  europe: {name: Europe}\n\
         datacenters:\n  va: {name: Virginia, region: us-east}\n  ny: {name: New York, region: us-east}\n  lon: {name: London, region: europe}\n\
         schedules:\n  every-30s: {interval: 30s, timeout: 10s}\n  every-minute: {interval: 1m, timeout: 20s}\n",
    )?;
    let mut paths = vec![base];
    let per_file = monitors.div_ceil(10);
    for file in 0..10 {
        let mut text = String::from("monitors:\n");
        for i in (file * per_file)..((file + 1) * per_file).min(monitors) {
            let datacenters = match i % 3 {
                0 => "all",
                1 => "[va, lon]",
                _ => "[ny]",
            };
            let schedule = if i % 2 == 0 {
                "every-30s"
            } else {
                "every-minute"
            };
            write!(
                text,
                "  service-{i:05}:\n    url: https://service-{i}.example.com/health\n    schedule: {schedule}\n    datacenters: {datacenters}\n    tags: [bench, team-{}]\n",
                i % 20
            )?;
            if i % 10 == 0 {
                text.push_str(
                    "    headers: {Accept: application/json}\n    assertions:\n      - {type: json, path: $.status, op: \"==\", value: ok}\n",
                );
            }
        }
        let path = dir.join(format!("monitors-{file}.yaml"));
        std::fs::write(&path, text)?;
        paths.push(path);
    }
    Ok(paths)
}
