//! The writer's guarantees during a database outage, held by real `vantage run`
//! processes against a real Postgres that the test stops and starts:
//!
//! - a leader killed (SIGKILL) during an outage loses at most the spool flush interval
//!   (1 s) of heartbeats: the next instance replays the rest from the spool;
//! - with the spool on a full disk, memory stays bounded, the loss is counted (metric,
//!   exit summary) and logged once with its number, never reported as spooled; no spool
//!   file churns; heartbeats flow again as soon as Postgres is back;
//! - waiting for the database costs next to no CPU (no busy loop).

mod support;

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use support::cluster::{
    agent_id_of, current_leader, heartbeats, missed_slots, seed_datacenters, seed_monitor,
    serve_target, Instance, InstanceOptions,
};
use support::disk::SmallDisk;
use support::eventually::eventually;
use support::pg::{DedicatedCluster, TestDb};

const ONE_SECOND: Duration = Duration::from_secs(1);

/// README, "Guarantees under faults": `VANTAGE_SHUTDOWN_TIMEOUT` (10 s) + 7 s.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(17);

/// How long into the outage the leader is killed; `VANTAGE_TEST_OUTAGE_SECS` makes it
/// longer for the benchmark (BENCHMARKS.md).
fn outage_before_kill() -> Duration {
    let secs = std::env::var("VANTAGE_TEST_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    Duration::from_secs(secs)
}

/// `n` monitors probing `url` every second; returns their ids.
async fn seed_monitors(pool: &PgPool, url: &str, n: i32) -> Vec<i32> {
    let first = seed_monitor(pool, "m-0", url, 1).await;
    let mut ids = vec![first];
    let rest: Vec<i32> = sqlx::query_scalar(
        "INSERT INTO api_monitors (name, url, schedule_id, all_datacenters) \
         SELECT 'm-' || i, url, schedule_id, true FROM api_monitors, generate_series(1, $2 - 1) i \
         WHERE id = $1 RETURNING id",
    )
    .bind(first)
    .bind(n)
    .fetch_all(pool)
    .await
    .unwrap();
    ids.extend(rest);
    ids
}

fn instance<'a>(url: &'a str, name: &'a str, spool: &Path, env: &[(&'a str, &str)]) -> Instance {
    let mut extra_env = vec![("VANTAGE_SPOOL_DIR", spool.display().to_string())];
    extra_env.extend(env.iter().map(|(k, v)| (*k, v.to_string())));
    Instance::start(InstanceOptions {
        database_url: url,
        datacenter: "va",
        name,
        extra_env,
    })
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at field 3, `state`.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

/// Resident memory of `pid`, in kB.
fn rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A sample value of `/metrics` (the first line starting with `name`).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A `field: <number>` of the writer's exit summary (logged in Debug form).
fn summary_field(line: &str, field: &str) -> u64 {
    let at = line
        .find(&format!("{field}: "))
        .unwrap_or_else(|| panic!("no {field} in {line}"));
    line[at + field.len() + 2..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap()
}

/// One datacenter whose leader probes `n` local monitors every second, on a Postgres
/// the test stops and starts.
struct Scene {
    cluster: DedicatedCluster,
    db: TestDb,
    monitors: Vec<i32>,
    leader: Instance,
}

impl Scene {
    /// Returns once the leader's heartbeats are stored.
    async fn start(n: i32, spool: &Path, env: &[(&str, &str)]) -> Scene {
        let cluster = DedicatedCluster::start().await;
        let db = cluster.fresh_db().await;
        let target = serve_target().await;
        let dc = seed_datacenters(&db.pool, &["va"]).await[0];
        let monitors = seed_monitors(&db.pool, &format!("http://{target}/ok"), n).await;
        let leader = instance(&db.url, "va-a", spool, env);
        eventually("a leader probing", Duration::from_secs(30), || async {
            current_leader(&db.pool, dc).await?;
            (heartbeats(&db.pool, monitors[0]).await.len() >= 2).then_some(())
        })
        .await;
        Scene {
            cluster,
            db,
            monitors,
            leader,
        }
    }

    /// Stops Postgres; returns when it stopped, once the leader's writer noticed.
    async fn outage(&mut self) -> tokio::time::Instant {
        self.db.pool.close().await;
        self.cluster.stop_server().await;
        let stopped_at = tokio::time::Instant::now();
        self.leader
            .wait_for_log(
                &["cannot store heartbeats in Postgres"],
                Duration::from_secs(20),
            )
            .await;
        stopped_at
    }

    /// Starts Postgres again; returns a pool on the test's database.
    async fn recover(&self) -> PgPool {
        self.cluster.start_server().await;
        self.cluster.pool(&self.db.name).await
    }
}

#[tokio::test]
async fn a_leader_killed_during_an_outage_loses_at_most_the_flush_interval() {
    let spool = tempfile::tempdir().unwrap();
    let mut scene = Scene::start(5, spool.path(), &[]).await;
    let killed_agent = agent_id_of(&scene.db.pool, "va-a").await;

    // The outage itself is the scenario: the leader probes on, its writer spools.
    let stopped_at = scene.outage().await;
    tokio::time::sleep_until(stopped_at + outage_before_kill()).await;
    let killed_at = Utc::now();
    scene.leader.signal(libc::SIGKILL);
    scene.leader.wait_exit(Duration::from_secs(10)).await;

    let pool = scene.recover().await;
    let _next = instance(&scene.db.url, "va-b", spool.path(), &[]);

    // Every heartbeat the killed leader had for a second (the flush interval) was on
    // disk: on a one-second grid, its last stored slot is less than two slots before the
    // kill; a third second covers the probe, the fsync and a loaded CI machine. Only its
    // own heartbeats count: a new leader catching up on missed slots must not hide a
    // loss.
    let bound = chrono::Duration::milliseconds(3_000);
    let safe_until = killed_at - bound;
    let outage = outage_before_kill();
    for &monitor in &scene.monitors {
        let before_kill = eventually(
            "the spooled heartbeats replayed",
            Duration::from_secs(30),
            || async {
                let beats: Vec<_> = heartbeats(&pool, monitor)
                    .await
                    .into_iter()
                    .filter(|b| b.agent_id == Some(killed_agent))
                    .collect();
                beats
                    .iter()
                    .any(|b| b.scheduled_at >= safe_until)
                    .then_some(beats)
            },
        )
        .await;
        let last: DateTime<Utc> = before_kill.last().unwrap().scheduled_at;
        let lost = (killed_at - last).num_seconds();
        eprintln!(
            "monitor {monitor}: outage of {outage:?} before SIGKILL; last stored slot {} ms \
             before the kill: {lost} slot(s) lost",
            (killed_at - last).num_milliseconds()
        );
        assert_eq!(
            missed_slots(&before_kill, ONE_SECOND),
            vec![],
            "monitor {monitor}: every slot of the outage up to the last stored one is there"
        );
        assert!(
            last >= safe_until,
            "monitor {monitor}: the last stored slot {last} is more than {bound} before the \
             kill at {killed_at}: the outage's heartbeats were lost"
        );
    }
}

#[tokio::test]
async fn a_full_spool_disk_loses_heartbeats_counted_and_logged_and_recovers_at_once() {
    let Some(disk) = SmallDisk::mount("64k") else {
        return;
    };
    // 200 heartbeats a second, ~600 bytes each on disk: 64 kB is full in half a second.
    let memory_rows = 1_000;
    let mut scene = Scene::start(200, disk.path(), &[("VANTAGE_WRITER_MEMORY_ROWS", "1000")]).await;
    let rss_before = rss_kb(scene.leader.pid());
    scene.outage().await;
    let leader = &mut scene.leader;
    leader
        .wait_for_log(
            &["cannot write the heartbeat spool"],
            Duration::from_secs(20),
        )
        .await;
    let files = disk.spool_files();
    assert_eq!(files.len(), 1, "one spool file: {files:?}");

    // Memory fills up to the bound, then heartbeats are lost and counted.
    let dropped = eventually(
        "heartbeats counted as lost",
        Duration::from_secs(30),
        || async {
            let text = leader.metrics().await?;
            metric(&text, "vantage_writer_dropped_rows_total").filter(|&n| n >= 200.0)
        },
    )
    .await;
    let status = leader.status().await.unwrap();
    let buffered = status["writer_buffered_rows"].as_u64().unwrap();
    // At most the bound, plus what arrived since the writer last looked (a second's worth).
    assert!(
        buffered <= memory_rows + 200,
        "{buffered} heartbeats in memory, bound {memory_rows}"
    );
    let rss_growth_kb = rss_kb(leader.pid()).saturating_sub(rss_before);
    eprintln!("{dropped} heartbeats lost so far; {buffered} in memory; RSS +{rss_growth_kb} kB");
    assert!(
        rss_growth_kb < 64 * 1024,
        "RSS grew by {rss_growth_kb} kB during the outage"
    );
    assert_eq!(
        disk.spool_files(),
        files,
        "the spool file is reused, not created and deleted per attempt"
    );

    // Postgres returns: what memory holds goes straight in, new heartbeats follow.
    let back_at = Utc::now();
    let pool = scene.recover().await;
    let leader = &mut scene.leader;
    eventually(
        "heartbeats stored within a few seconds of Postgres returning",
        Duration::from_secs(10),
        || async {
            let beats = heartbeats(&pool, scene.monitors[0]).await;
            beats
                .iter()
                .any(|b| b.scheduled_at >= back_at)
                .then_some(())
        },
    )
    .await;
    let lost_line = leader
        .wait_for_log(
            &["heartbeats were lost while the spool could not be written"],
            Duration::from_secs(20),
        )
        .await;
    // Drained: the spool is empty and memory holds no more than the heartbeats of the
    // last couple of seconds (200 a second keep arriving, so "none" is a race).
    eventually("the writer drained", Duration::from_secs(30), || async {
        let status = leader.status().await?;
        let buffered = status["writer_buffered_rows"].as_u64()?;
        (buffered < 400 && status["writer_spooled_rows"] == 0).then_some(())
    })
    .await;

    leader.signal(libc::SIGTERM);
    let summary = leader
        .wait_for_log(&["heartbeat writer stopped"], Duration::from_secs(20))
        .await;
    leader.wait_exit(Duration::from_secs(20)).await;
    let logs = leader.logs().to_vec();
    let count = |needle: &str| logs.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(count("cannot write the heartbeat spool"), 1, "logged once");
    assert_eq!(
        count("heartbeats were lost while the spool"),
        1,
        "logged once"
    );

    let lost: serde_json::Value = serde_json::from_str(&lost_line).unwrap();
    let lost_rows = lost["lost_rows"].as_u64().unwrap();
    let received = summary_field(&summary, "received_rows");
    let dropped_rows = summary_field(&summary, "dropped_rows");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM api_heartbeats")
        .fetch_one(&pool)
        .await
        .unwrap();
    let duplicates = summary_field(&summary, "duplicate_rows");
    eprintln!("received {received}, stored {stored}, lost {dropped_rows}, duplicates {duplicates}");
    assert_eq!(
        lost_rows, dropped_rows,
        "the log says what the counter says"
    );
    assert!(lost_rows >= dropped as u64);
    assert_eq!(summary_field(&summary, "spooled_rows"), 0, "{summary}");
    assert_eq!(summary_field(&summary, "lost_rows"), 0, "{summary}");
    // Each heartbeat was stored, met a stored copy of its slot, or was counted lost.
    assert!(
        stored as u64 + duplicates + dropped_rows >= received,
        "heartbeats vanished without being counted: {summary}"
    );
}

#[tokio::test]
async fn waiting_for_the_database_costs_next_to_no_cpu() {
    let spool = tempfile::tempdir().unwrap();
    let mut scene = Scene::start(5, spool.path(), &[]).await;
    scene.outage().await;
    let leader = &scene.leader;
    let window = Duration::from_secs(5);
    let (cpu_before, started) = (cpu_seconds(leader.pid()), std::time::Instant::now());
    tokio::time::sleep(window).await;
    let share = (cpu_seconds(leader.pid()) - cpu_before) / started.elapsed().as_secs_f64();
    eprintln!(
        "CPU during the outage: {:.1} % of a core over {window:?}",
        share * 100.0
    );
    // Five probes a second and their spooling cost about 1 %; a busy loop costs ~100 %.
    assert!(
        share < 0.20,
        "the leader used {:.0} % of a core while the database was away",
        share * 100.0
    );
}

#[tokio::test]
async fn sigterm_during_an_outage_exits_within_the_shutdown_budget_and_spools() {
    let spool = tempfile::tempdir().unwrap();
    let mut scene = Scene::start(5, spool.path(), &[]).await;
    scene.outage().await;
    let leader = &mut scene.leader;
    let asked = std::time::Instant::now();
    leader.signal(libc::SIGTERM);
    let summary = leader
        .wait_for_log(&["heartbeat writer stopped"], Duration::from_secs(30))
        .await;
    leader.wait_exit(Duration::from_secs(30)).await;
    let took = asked.elapsed();
    eprintln!("SIGTERM during an outage: exited after {took:.2?}");
    assert!(took < SHUTDOWN_BUDGET, "exited after {took:?}");
    assert_eq!(summary_field(&summary, "lost_rows"), 0, "{summary}");
    assert!(
        summary_field(&summary, "rows_left_in_spool") > 0,
        "{summary}"
    );
}

#[test]
fn out_of_range_writer_settings_are_one_line_errors_naming_the_variable() {
    for (variable, value) in [
        ("VANTAGE_SPOOL_FLUSH_INTERVAL", "0s"),
        ("VANTAGE_SPOOL_FLUSH_INTERVAL", "2m"),
        ("VANTAGE_SPOOL_FLUSH_INTERVAL", "soon"),
        ("VANTAGE_WRITER_MEMORY_ROWS", "10"),
        ("VANTAGE_WRITER_MEMORY_ROWS", "lots"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vantage"))
            .arg("run")
            .env(
                "DATABASE_URL",
                "postgres://vantage:secret@127.0.0.1:1/vantage",
            )
            .env("VANTAGE_DATACENTER", "va")
            .env(variable, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{variable}={value}: {stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.contains(&format!("{variable}=\"{value}\"")),
            "{variable}={value}: {stderr}"
        );
        assert!(!stderr.contains("secret"), "{stderr}");
    }
}

#[test]
fn the_compose_and_kubernetes_stop_graces_agree_and_cover_the_shutdown_budget() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let seconds_after = |file: &str, key: &str| -> u64 {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let at = text
            .find(key)
            .unwrap_or_else(|| panic!("no {key} in {file}"))
            + key.len();
        text[at..]
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .unwrap_or_else(|_| panic!("{key} in {file} is not a number of seconds"))
    };
    let compose = seconds_after("docker-compose.yml", "stop_grace_period:");
    let kubernetes = seconds_after("docs/deployment.md", "terminationGracePeriodSeconds:");
    assert_eq!(
        compose, kubernetes,
        "compose and Kubernetes give the same grace"
    );
    assert!(
        Duration::from_secs(compose) > SHUTDOWN_BUDGET,
        "a {compose} s grace does not cover the {SHUTDOWN_BUDGET:?} shutdown budget"
    );
}
