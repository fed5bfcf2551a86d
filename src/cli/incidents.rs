//! `vantage incidents` and `vantage maintenance`: what operators type to see incidents,
//! acknowledge them, and plan maintenance. Thin: each command is one or two statements
//! against the incident tables (and, for recurring windows, [`maintenance`]'s
//! expansion, so a new window is known before any evaluator picks it up). It writes
//! only what the operator asks for (an acknowledgement, a window); opening and
//! resolving incidents stays the evaluator's.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::incidents::maintenance;
use crate::storage;

#[derive(Debug, clap::Args)]
pub struct IncidentsArgs {
    /// postgres://user:password@host:port/database
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// List incidents opened within this long as well as the open ones (e.g. 7d).
    #[arg(long, value_parser = humantime::parse_duration)]
    since: Option<Duration>,
    #[command(subcommand)]
    action: Option<IncidentsAction>,
}

#[derive(Debug, clap::Subcommand)]
enum IncidentsAction {
    /// Acknowledge an incident: someone is on it (recorded in its timeline).
    Ack {
        /// The incident's id (first column of `vantage incidents`).
        id: i64,
        /// Who acknowledges it.
        #[arg(long, env = "USER")]
        by: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct MaintenanceArgs {
    /// postgres://user:password@host:port/database
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[command(subcommand)]
    action: MaintenanceAction,
}

#[derive(Debug, clap::Subcommand)]
enum MaintenanceAction {
    /// Plan a window: no incident opens for what it covers while it lasts.
    Add(AddWindow),
    /// Windows that are active or still to come (`--all`: every window).
    List {
        #[arg(long)]
        all: bool,
    },
    /// End a window now (one that has not started yet is cancelled).
    End {
        /// The window's id (first column of `vantage maintenance list`).
        id: i32,
    },
}

#[derive(Debug, clap::Args)]
struct AddWindow {
    /// Why: shown with every incident and heartbeat query that meets the window.
    #[arg(long)]
    reason: String,
    /// A monitor it covers, by name (repeatable).
    #[arg(long = "monitor")]
    monitors: Vec<String>,
    /// Monitors with this tag (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// A datacenter it covers, by code (repeatable): its results are left out.
    #[arg(long = "datacenter")]
    datacenters: Vec<String>,
    /// Start (RFC 3339, e.g. 2026-12-06T03:00:00Z); default now. For a recurring window,
    /// when the series begins.
    #[arg(long)]
    starts_at: Option<DateTime<Utc>>,
    /// Length of the window (or of each occurrence, with --cron), e.g. 2h.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// End (RFC 3339) instead of --duration; with --cron, when the series ends.
    #[arg(long)]
    until: Option<DateTime<Utc>>,
    /// Recurring: the start of every occurrence, 5 cron fields in UTC (e.g. '0 3 * * SUN').
    #[arg(long)]
    cron: Option<String>,
}

pub async fn incidents(args: IncidentsArgs) -> anyhow::Result<ExitCode> {
    let pool = storage::connect(&args.database_url).await?;
    match args.action {
        None => list_incidents(&pool, args.since).await,
        Some(IncidentsAction::Ack { id, by }) => acknowledge(&pool, id, by).await,
    }
}

pub async fn maintenance(args: MaintenanceArgs) -> anyhow::Result<ExitCode> {
    let pool = storage::connect(&args.database_url).await?;
    match args.action {
        MaintenanceAction::Add(window) => add_window(&pool, window).await,
        MaintenanceAction::List { all } => list_windows(&pool, all).await,
        MaintenanceAction::End { id } => end_window(&pool, id).await,
    }
}

#[derive(sqlx::FromRow)]
struct IncidentLine {
    id: i64,
    kind: String,
    subject: String,
    opened_at: DateTime<Utc>,
    resolved_at: Option<DateTime<Utc>>,
    acknowledged_by: Option<String>,
    acknowledged: bool,
    muted: bool,
    datacenters: Vec<String>,
    cause: String,
}

async fn list_incidents(pool: &PgPool, since: Option<Duration>) -> anyhow::Result<ExitCode> {
    let lines: Vec<IncidentLine> = sqlx::query_as(
        "SELECT i.id, i.kind, coalesce(m.name, d.code, '#' || coalesce(i.monitor_id, i.datacenter_id)) AS subject, \
                i.opened_at, i.resolved_at, i.acknowledged_by, i.acknowledged_at IS NOT NULL AS acknowledged, \
                i.muted, i.cause, \
                ARRAY(SELECT c.code FROM datacenters c WHERE c.id = ANY (i.datacenters) ORDER BY c.code) AS datacenters \
         FROM incidents i \
         LEFT JOIN api_monitors m ON m.id = i.monitor_id \
         LEFT JOIN datacenters d ON d.id = i.datacenter_id \
         WHERE i.resolved_at IS NULL \
            OR ($1::float8 IS NOT NULL AND i.opened_at > now() - make_interval(secs => $1)) \
         ORDER BY i.opened_at DESC, i.id DESC",
    )
    .bind(since.map(|d| d.as_secs_f64()))
    .fetch_all(pool)
    .await
    .context("reading incidents")?;
    if lines.is_empty() {
        println!("no {}incidents", if since.is_some() { "" } else { "open " });
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>6}  {:<20}  {:<24}  {:<20}  {:<14}  {:<14}  cause",
        "id", "kind", "subject", "opened (UTC)", "state", "datacenters"
    );
    let now = Utc::now();
    for line in lines {
        let state = match line.resolved_at {
            Some(resolved) => format!("resolved {}", short(resolved - line.opened_at)),
            None if line.acknowledged => format!(
                "acked{}",
                line.acknowledged_by
                    .map(|by| format!(" ({by})"))
                    .unwrap_or_default()
            ),
            None => format!("open {}", short(now - line.opened_at)),
        };
        let muted = if line.muted { " [muted]" } else { "" };
        println!(
            "{:>6}  {:<20}  {:<24}  {:<20}  {:<14}  {:<14}  {}{muted}",
            line.id,
            line.kind,
            line.subject,
            line.opened_at.format("%Y-%m-%d %H:%M:%S"),
            state,
            line.datacenters.join(","),
            line.cause
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// "3m12s", "2h5m", "4d1h": how long, to the two largest units.
fn short(d: chrono::Duration) -> String {
    let secs = d.num_seconds().max(0);
    let (days, hours, mins, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (days, hours, mins) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m{s}s"),
        (0, h, m) => format!("{h}h{m}m"),
        (d, h, _) => format!("{d}d{h}h"),
    }
}

async fn acknowledge(pool: &PgPool, id: i64, by: Option<String>) -> anyhow::Result<ExitCode> {
    let mut tx = pool.begin().await?;
    type Stamp = Option<DateTime<Utc>>;
    let found: Option<(Stamp, Stamp)> = sqlx::query_as(
        "SELECT acknowledged_at, resolved_at FROM incidents WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    match found {
        None => bail!("no incident {id}; `vantage incidents --since 7d` lists recent ones"),
        Some((Some(at), _)) => {
            println!("incident {id} was already acknowledged at {at}");
            return Ok(ExitCode::SUCCESS);
        }
        Some((None, Some(_))) => bail!("incident {id} is resolved already; nothing to acknowledge"),
        Some((None, None)) => {}
    }
    sqlx::query("UPDATE incidents SET acknowledged_at = now(), acknowledged_by = $2 WHERE id = $1")
        .bind(id)
        .bind(&by)
        .execute(&mut *tx)
        .await?;
    let detail = match &by {
        Some(by) => format!("acknowledged by {by}"),
        None => "acknowledged".to_string(),
    };
    sqlx::query(
        "INSERT INTO incident_events (incident_id, kind, at, detail) VALUES ($1, 'acknowledged', now(), $2)",
    )
    .bind(id)
    .bind(&detail)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    println!("incident {id} {detail}");
    Ok(ExitCode::SUCCESS)
}

/// Looks names up in `table`, naming every unknown one and the known ones.
async fn ids_of(
    pool: &PgPool,
    what: &str,
    query: &str,
    names: &[String],
) -> anyhow::Result<Vec<i32>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let found: Vec<(String, i32)> = sqlx::query_as(query).bind(names).fetch_all(pool).await?;
    let unknown: Vec<&String> = names
        .iter()
        .filter(|name| !found.iter().any(|(n, _)| n == *name))
        .collect();
    if !unknown.is_empty() {
        bail!("unknown {what}: {unknown:?}; check the spelling (names are case-sensitive)");
    }
    Ok(found.into_iter().map(|(_, id)| id).collect())
}

async fn add_window(pool: &PgPool, window: AddWindow) -> anyhow::Result<ExitCode> {
    let monitor_ids = ids_of(
        pool,
        "monitor(s)",
        "SELECT name, id FROM api_monitors WHERE name = ANY ($1)",
        &window.monitors,
    )
    .await?;
    let datacenter_ids = ids_of(
        pool,
        "datacenter code(s)",
        "SELECT code, id FROM datacenters WHERE code = ANY ($1)",
        &window.datacenters,
    )
    .await?;
    if monitor_ids.is_empty() && window.tags.is_empty() && datacenter_ids.is_empty() {
        bail!("say what the window covers: --monitor NAME, --tag TAG and/or --datacenter CODE");
    }
    let starts_at = window.starts_at.unwrap_or_else(Utc::now);
    let (ends_at, duration) = match (&window.cron, window.duration, window.until) {
        (None, Some(_), Some(_)) => bail!("give --duration or --until, not both"),
        (None, Some(d), None) => (Some(starts_at + chrono::Duration::from_std(d)?), None),
        (None, None, Some(until)) => (Some(until), None),
        (None, None, None) => bail!("say how long: --duration 2h or --until 2026-12-06T05:00:00Z"),
        (Some(_), None, _) => {
            bail!("a recurring window needs --duration, the length of each occurrence")
        }
        (Some(cron), Some(d), until) => {
            maintenance::parse_cron(cron)
                .map_err(|reason| anyhow::anyhow!("--cron {cron:?} is invalid: {reason}; use 5 fields in UTC such as '0 3 * * SUN'"))?;
            (until, Some(d))
        }
    };
    let id: i32 = sqlx::query_scalar(
        "INSERT INTO maintenance_windows (reason, monitor_ids, tags, datacenter_ids, starts_at, ends_at, \
                                          cron, duration, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, make_interval(secs => $8), $9) RETURNING id",
    )
    .bind(&window.reason)
    .bind(&monitor_ids)
    .bind(&window.tags)
    .bind(&datacenter_ids)
    .bind(starts_at)
    .bind(ends_at)
    .bind(&window.cron)
    .bind(duration.map(|d| d.as_secs_f64()))
    .bind(std::env::var("USER").ok())
    .fetch_one(pool)
    .await
    .context("adding the maintenance window")?;
    if window.cron.is_some() {
        maintenance::expand_recurring(pool, Utc::now()).await?;
    }
    println!("maintenance window {id} added");
    list_windows_matching(pool, Some(id), true).await?;
    Ok(ExitCode::SUCCESS)
}

async fn list_windows(pool: &PgPool, all: bool) -> anyhow::Result<ExitCode> {
    if list_windows_matching(pool, None, all).await? == 0 {
        println!(
            "no maintenance windows{}",
            if all { "" } else { " active or planned" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(sqlx::FromRow)]
struct WindowLine {
    id: i32,
    reason: String,
    scope: String,
    schedule: String,
    next: Option<String>,
}

/// Prints window `id` (or every window; with `all`, past ones too); returns how many.
async fn list_windows_matching(pool: &PgPool, id: Option<i32>, all: bool) -> anyhow::Result<usize> {
    let lines: Vec<WindowLine> = sqlx::query_as(
        "SELECT w.id, w.reason, \
                concat_ws(' ', \
                  CASE WHEN cardinality(w.monitor_ids) > 0 THEN 'monitors=' || \
                    (SELECT string_agg(m.name, ',' ORDER BY m.name) FROM api_monitors m WHERE m.id = ANY (w.monitor_ids)) END, \
                  CASE WHEN cardinality(w.tags) > 0 THEN 'tags=' || array_to_string(w.tags, ',') END, \
                  CASE WHEN cardinality(w.datacenter_ids) > 0 THEN 'datacenters=' || \
                    (SELECT string_agg(d.code, ',' ORDER BY d.code) FROM datacenters d WHERE d.id = ANY (w.datacenter_ids)) END) AS scope, \
                CASE WHEN w.cron IS NULL \
                     THEN to_char(w.starts_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') || ' .. ' || \
                          to_char(w.ends_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') \
                     ELSE 'cron ''' || w.cron || ''' for ' || w.duration::text || \
                          coalesce(' until ' || to_char(w.ends_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'), '') END AS schedule, \
                (SELECT CASE WHEN o.starts_at <= now() THEN 'active until ' ELSE 'next ' END || \
                        to_char(CASE WHEN o.starts_at <= now() THEN o.ends_at ELSE o.starts_at END AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') \
                 FROM maintenance_occurrences o WHERE o.window_id = w.id AND o.ends_at > now() \
                 ORDER BY o.starts_at LIMIT 1) AS next \
         FROM maintenance_windows w \
         WHERE ($1::int IS NOT NULL AND w.id = $1) \
            OR ($1 IS NULL AND ($2 OR w.ends_at IS NULL OR w.ends_at > now())) \
         ORDER BY w.id",
    )
    .bind(id)
    .bind(all)
    .fetch_all(pool)
    .await
    .context("reading maintenance windows")?;
    for line in &lines {
        println!(
            "{:>5}  {:<40}  {:<38}  {:<28}  {}",
            line.id,
            line.scope,
            line.schedule,
            line.next.as_deref().unwrap_or("over"),
            line.reason
        );
    }
    Ok(lines.len())
}

async fn end_window(pool: &PgPool, id: i32) -> anyhow::Result<ExitCode> {
    let cancelled =
        sqlx::query("DELETE FROM maintenance_windows WHERE id = $1 AND starts_at > now()")
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected();
    if cancelled > 0 {
        println!("maintenance window {id} had not started: cancelled");
        return Ok(ExitCode::SUCCESS);
    }
    let ended = sqlx::query(
        "UPDATE maintenance_windows SET ends_at = now() \
         WHERE id = $1 AND (ends_at IS NULL OR ends_at > now())",
    )
    .bind(id)
    .execute(pool)
    .await?
    .rows_affected();
    if ended == 0 {
        bail!("no active or planned maintenance window {id}; `vantage maintenance list --all` shows them all");
    }
    println!("maintenance window {id} ended");
    Ok(ExitCode::SUCCESS)
}
