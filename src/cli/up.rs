//! `vantage up`: the whole system on one machine, for a first look. It starts (or reuses)
//! a private PostgreSQL under `./.vantage/`, migrates it, loads the example monitors plus
//! one that works offline (an instance's own `/healthz`), runs real `vantage run` child
//! processes — two instances for each of two datacenters — and prints a live summary:
//! who leads each datacenter and the latest heartbeat of every monitor with its phases.
//! Ctrl-C or SIGTERM stops the children (gracefully) and the database.
//!
//! It only orchestrates: the children are ordinary `vantage run` processes, and the
//! summary is read from the database like any user would.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::migrate::MigrateError;
use sqlx::PgPool;
use tokio::process::{Child, Command};

use crate::embedded_postgres::{EmbeddedPostgres, EmbeddedPostgresError};
use crate::storage::{self, DatabaseError};

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Directory for the private database, spools and instance logs (kept between runs).
    #[arg(long, default_value = ".vantage")]
    pub dir: PathBuf,
    /// Datacenters to run, by code (from the example data).
    #[arg(long, value_delimiter = ',', default_value = "va,lon")]
    pub datacenters: Vec<String>,
    /// Instances per datacenter (one leads, the others stand by).
    #[arg(long, default_value_t = 2)]
    pub instances: u16,
    /// First port of the instances' HTTP endpoints; each instance takes the next one.
    #[arg(long, default_value_t = 9791)]
    pub base_port: u16,
    /// Use this database instead of a private one.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

/// Every offline demo needs one target that answers: the first instance's own health
/// endpoint, probed by every datacenter every 5 seconds.
const SELF_MONITOR: &str = "quickstart-self-healthz";
const REFRESH: Duration = Duration::from_secs(2);

/// Why `vantage up` could not bring the system up (or down).
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("creating {0}")]
    Dir(String, #[source] std::io::Error),
    #[error("starting the private PostgreSQL (set DATABASE_URL to use your own, or run `docker compose up`)")]
    StartDatabase(#[source] EmbeddedPostgresError),
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error("applying database migrations")]
    Migrate(#[source] MigrateError),
    #[error("loading the example monitors")]
    Seed(#[source] sqlx::Error),
    #[error("starting instance {name}")]
    Instance {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("stopping the private PostgreSQL")]
    StopDatabase(#[source] EmbeddedPostgresError),
}

pub async fn execute(args: UpArgs) -> Result<std::process::ExitCode, UpError> {
    // From the start: a SIGTERM that ended this process at once would leave the
    // instances it started running (one held the base port, and the next `vantage up`
    // failed with "Address already in use").
    let stop = crate::services::stop_requested();
    let dir = std::fs::create_dir_all(&args.dir)
        .and_then(|()| args.dir.canonicalize())
        .map_err(|err| UpError::Dir(args.dir.display().to_string(), err))?;

    let mut private_db = None;
    let database_url = match &args.database_url {
        Some(url) => url.clone(),
        None => {
            println!(
                "Starting a private PostgreSQL under {}/postgres ...",
                dir.display()
            );
            let db = EmbeddedPostgres::start_persistent(&dir.join("postgres"))
                .await
                .map_err(UpError::StartDatabase)?;
            let url = db.url("vantage");
            private_db = Some(db);
            url
        }
    };
    storage::ensure_database_exists(&database_url).await?;
    let pool = storage::connect(&database_url).await?;
    storage::migrate(&pool).await.map_err(UpError::Migrate)?;
    storage::seed_example(&pool).await.map_err(UpError::Seed)?;
    add_self_monitor(&pool, args.base_port)
        .await
        .map_err(UpError::Seed)?;

    let mut children = Vec::new();
    let mut port = args.base_port;
    for datacenter in &args.datacenters {
        for n in 1..=args.instances {
            let name = format!("{datacenter}-{n}");
            let child = spawn_instance(&dir, &database_url, datacenter, &name, port)
                .map_err(|source| UpError::Instance { name, source })?;
            children.push(child);
            port += 1;
        }
    }
    print_connection_help(&database_url, &dir, &args);

    summarize_until(stop, &pool, &args.datacenters).await;

    println!("\nStopping {} instances ...", children.len());
    for child in &children {
        if let Some(pid) = child.id() {
            // SAFETY: plain kill(2) on a child we spawned and still own.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
    }
    for mut child in children {
        if tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
    pool.close().await;
    if let Some(db) = private_db {
        println!(
            "Stopping the private PostgreSQL (data kept in {}) ...",
            dir.display()
        );
        db.stop().await.map_err(UpError::StopDatabase)?;
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn add_self_monitor(pool: &PgPool, port: u16) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO schedules (name, interval_seconds, timeout_ms) VALUES ('quickstart-5s', 5, 2000) \
         ON CONFLICT (name) DO NOTHING",
    )
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO api_monitors (name, url, schedule_id, all_datacenters, tags) \
         SELECT $1, $2, id, true, '{quickstart}' FROM schedules WHERE name = 'quickstart-5s' \
         ON CONFLICT (name) DO UPDATE SET url = EXCLUDED.url",
    )
    .bind(SELF_MONITOR)
    .bind(format!("http://127.0.0.1:{port}/healthz"))
    .execute(pool)
    .await?;
    Ok(())
}

fn spawn_instance(
    dir: &Path,
    database_url: &str,
    datacenter: &str,
    name: &str,
    port: u16,
) -> std::io::Result<Child> {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
    Command::new(std::env::current_exe()?)
        .arg("run")
        .env("DATABASE_URL", database_url)
        .env("VANTAGE_DATACENTER", datacenter)
        .env("VANTAGE_INSTANCE_NAME", name)
        .env("VANTAGE_LISTEN", format!("127.0.0.1:{port}"))
        .env("VANTAGE_SPOOL_DIR", dir.join("spool").join(name))
        .env("VANTAGE_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
}

fn print_connection_help(database_url: &str, dir: &Path, args: &UpArgs) {
    println!(
        "Running {} instance(s) in each of: {}. Logs: {}/logs/. Ctrl-C stops everything.",
        args.instances,
        args.datacenters.join(", "),
        dir.display()
    );
    println!("Query the heartbeats yourself:  psql '{database_url}'");
    println!("  e.g. SELECT * FROM api_heartbeats ORDER BY scheduled_at DESC LIMIT 10;\n");
}

async fn summarize_until(
    stop: impl std::future::Future<Output = &'static str>,
    pool: &PgPool,
    datacenters: &[String],
) {
    let clear = std::io::stdout().is_terminal();
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(REFRESH) => {}
        }
        match summary(pool, datacenters).await {
            Ok(text) if clear => print!("\x1b[2J\x1b[H{text}"),
            Ok(text) => println!("{text}"),
            Err(err) => println!("(summary unavailable: {err})"),
        }
    }
}

#[derive(sqlx::FromRow)]
struct LeaderRow {
    code: String,
    term: Option<i64>,
    instance_name: Option<String>,
    /// From the `agent_status` view: `stale` when the leader stopped refreshing its row.
    state: Option<String>,
    unseen_s: Option<f64>,
    live_instances: i64,
}

#[derive(sqlx::FromRow)]
struct LatestRow {
    monitor: String,
    code: String,
    scheduled_at: DateTime<Utc>,
    status: String,
    http_status: Option<i32>,
    dns_ms: Option<f64>,
    connect_ms: Option<f64>,
    tls_ms: Option<f64>,
    ttfb_ms: Option<f64>,
    transfer_ms: Option<f64>,
    total_ms: Option<f64>,
    error_kind: Option<String>,
}

async fn summary(pool: &PgPool, datacenters: &[String]) -> Result<String, sqlx::Error> {
    let leaders: Vec<LeaderRow> = sqlx::query_as(
        "SELECT d.code, t.term, a.instance_name, a.state, \
                extract(epoch FROM now() - a.last_seen_at)::float8 AS unseen_s, \
                (SELECT count(*) FROM agent_status x WHERE x.datacenter_id = d.id \
                   AND x.state IN ('leader', 'standby')) AS live_instances \
         FROM datacenters d \
         LEFT JOIN LATERAL (SELECT term, agent_id FROM leader_terms lt \
                            WHERE lt.datacenter_id = d.id AND lt.released_at IS NULL \
                            ORDER BY term DESC LIMIT 1) t ON true \
         LEFT JOIN agent_status a ON a.id = t.agent_id \
         WHERE d.code = ANY($1) ORDER BY d.code",
    )
    .bind(datacenters)
    .fetch_all(pool)
    .await?;
    let latest: Vec<LatestRow> = sqlx::query_as(
        "SELECT DISTINCT ON (h.monitor_id, h.datacenter_id) \
                m.name AS monitor, d.code, h.scheduled_at, h.status, h.http_status, \
                h.dns_ms, h.connect_ms, h.tls_ms, h.ttfb_ms, h.transfer_ms, h.total_ms, h.error_kind \
         FROM api_heartbeats h \
         JOIN api_monitors m ON m.id = h.monitor_id \
         JOIN datacenters d ON d.id = h.datacenter_id \
         WHERE h.scheduled_at > now() - interval '15 minutes' AND d.code = ANY($1) \
         ORDER BY h.monitor_id, h.datacenter_id, h.scheduled_at DESC",
    )
    .bind(datacenters)
    .fetch_all(pool)
    .await?;

    let mut out = String::new();
    let _ = writeln!(
        out,
        "Vantage quickstart — {}",
        Utc::now().format("%H:%M:%S UTC")
    );
    for l in &leaders {
        let leader = match (&l.instance_name, l.term, l.state.as_deref()) {
            // A killed leader's term stays open until a standby takes over; its row stops
            // being refreshed, which is what tells.
            (Some(name), Some(term), Some("stale")) => format!(
                "no live leader: {name} (term {term}) stale, not seen for {:.0} s",
                l.unseen_s.unwrap_or_default()
            ),
            (Some(name), Some(term), _) => format!("leader {name} (term {term})"),
            _ => "no leader yet".to_string(),
        };
        let _ = writeln!(
            out,
            "  {:<5} {leader}, {} live instance(s)",
            l.code, l.live_instances
        );
    }
    let _ = writeln!(
        out,
        "\n{:<28} {:<5} {:<8} {:>4} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}  SLOT / ERROR",
        "MONITOR", "DC", "STATUS", "HTTP", "DNS", "CONNECT", "TLS", "TTFB", "XFER", "TOTAL"
    );
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
    for r in &latest {
        let _ = writeln!(
            out,
            "{:<28} {:<5} {:<8} {:>4} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}  {} {}",
            truncate(&r.monitor, 28),
            r.code,
            r.status,
            r.http_status.map_or("-".to_string(), |s| s.to_string()),
            ms(r.dns_ms),
            ms(r.connect_ms),
            ms(r.tls_ms),
            ms(r.ttfb_ms),
            ms(r.transfer_ms),
            ms(r.total_ms),
            r.scheduled_at.format("%H:%M:%S"),
            r.error_kind.as_deref().unwrap_or(""),
        );
    }
    if latest.is_empty() {
        let _ = writeln!(
            out,
            "(no heartbeats yet: the first probes run at their next slot)"
        );
    }
    // What the evaluator decided from all of that (offline, the public monitors fail
    // everywhere, so they show up here: that is the system working).
    let open: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT id, kind, cause FROM incidents WHERE resolved_at IS NULL ORDER BY opened_at",
    )
    .fetch_all(pool)
    .await?;
    let _ = writeln!(
        out,
        "\nOpen incidents ({}; `vantage incidents` for more):",
        open.len()
    );
    for (id, kind, cause) in &open {
        let _ = writeln!(out, "  #{id:<4} {kind:<20} {}", truncate(cause, 90));
    }
    let _ = writeln!(out, "\nAll times in ms. Ctrl-C stops everything.");
    Ok(out)
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        s.chars().take(max - 1).chain(['…']).collect()
    }
}
