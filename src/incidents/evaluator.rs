//! The evaluator service: while this instance holds the system-wide evaluator lock
//! ([`LeadershipScope::Evaluator`](crate::leadership::LeadershipScope)), it reads every
//! new heartbeat once, folds it into the [`State`], and writes the incidents that
//! follow, in one transaction per tick.
//!
//! Resuming is rebuilding: a new evaluator reads the stored flags and open incidents,
//! replays the last few heartbeats of every monitor and datacenter, and writes only what
//! differs — so a crash between deciding and writing loses no transition, and one
//! between writing and acknowledging repeats none. Every write first checks, under a row
//! lock, that this evaluator's term is still the current one (a fencing token), so an
//! evaluator that lost its lock cannot write after its successor started.
//!
//! Reads `api_heartbeats`, configuration, `agents` and `pg_locks`; writes only
//! `monitor_dc_state`, `incidents`, `incident_events` and `maintenance_occurrences`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Acquire, Connection, PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::decision::{Outcome, Policy};
use super::maintenance;
use super::state::{
    Changes, DatacenterInfo, IncidentKey, IncidentKind, MonitorConfig, Observation, OpenIncident,
    State, StoredFlags,
};
use crate::leadership::{self, Leadership};
use crate::metrics::Metrics;
use crate::schedule::Cadence;
use crate::storage;

#[derive(Debug, Clone)]
pub struct EvaluatorConfig {
    /// How often new heartbeats are read and decided on; bounds detection latency.
    pub tick: Duration,
    /// How often monitors, datacenters and maintenance windows are reloaded.
    pub config_reload: Duration,
}

impl Default for EvaluatorConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(250),
            // Changes arrive by NOTIFY at once; this is the net under lost notifications.
            config_reload: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum EvaluationError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("evaluator term {0} is no longer current: another instance evaluates now")]
    Fenced(i64),
}

/// Channel on which `maintenance_windows` changes are announced (its trigger).
const MAINTENANCE_CHANNEL: &str = "vantage_maintenance";

/// Evaluates while `leadership` says this instance leads the evaluator scope.
/// `listen_options` reach Postgres directly, for LISTEN: configuration and maintenance
/// changes are picked up at once, not only at the periodic reload.
pub fn spawn(
    pool: PgPool,
    listen_options: PgConnectOptions,
    mut leadership: watch::Receiver<Leadership>,
    config: EvaluatorConfig,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = leadership.wait_for(|l| l.is_leader()) => if changed.is_err() { return },
            }
            let Some(term) = leadership.borrow().term() else {
                continue;
            };
            let stop = shutdown.child_token();
            let watch_leadership = {
                let stop = stop.clone();
                let mut leadership = leadership.clone();
                async move {
                    let _ = leadership.wait_for(|l| l.term() != Some(term)).await;
                    stop.cancel();
                }
            };
            tokio::select! {
                _ = watch_leadership => {}
                ended = evaluate(&pool, &listen_options, term, &config, &metrics, &stop) => {
                    if let Err(err) = ended {
                        tracing::warn!(term, error = %err, "incident evaluation stopped; resuming from the database");
                        tokio::select! {
                            _ = shutdown.cancelled() => {}
                            _ = tokio::time::sleep(config.tick * 4) => {}
                        }
                    }
                }
            }
            metrics.set_evaluator_leader(false);
            metrics.set_open_incidents(&HashMap::new());
        }
    })
}

/// One period of evaluation under `term`, until `stop` or an error.
async fn evaluate(
    pool: &PgPool,
    listen_options: &PgConnectOptions,
    term: i64,
    config: &EvaluatorConfig,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> Result<(), EvaluationError> {
    let started = Instant::now();
    let mut evaluation = Evaluation::resume(pool.clone(), term).await?;
    metrics.set_evaluator_leader(true);
    tracing::info!(
        term,
        monitors = evaluation.state.monitors.len(),
        open_incidents = evaluation.state.open.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "evaluating incidents"
    );
    let mut ticks = tokio::time::interval(config.tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut config_loaded = Instant::now();
    let mut config_changed = false;
    let mut expanded = Instant::now();
    let mut pruned: Option<Instant> = None;
    let mut listener = None;
    loop {
        if listener.is_none() {
            listener = listen(listen_options).await;
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = ticks.tick() => {}
            notified = storage::next_notification(&mut listener) => {
                if !notified {
                    // Whatever changed while disconnected is unknown: reload anyway.
                    listener = None;
                }
                config_changed = true;
                continue;
            }
        }
        let tick_started = Instant::now();
        if config_changed || config_loaded.elapsed() >= config.config_reload {
            config_changed = false;
            evaluation.reload_config().await?;
            config_loaded = Instant::now();
        }
        if expanded.elapsed() >= Duration::from_secs(60) {
            evaluation.expand_maintenance().await;
            expanded = Instant::now();
        }
        if pruned.is_none_or(|at| at.elapsed() >= ORPHAN_PRUNE_EVERY) {
            prune_orphaned_flags(pool).await;
            pruned = Some(Instant::now());
        }
        let read = evaluation.tick().await?;
        metrics.observe_evaluation(read, tick_started.elapsed());
        metrics.set_open_incidents(&evaluation.open_by_kind());
    }
}

/// How often flags of deleted monitors and datacenters are removed (and once when an
/// evaluation starts). Nothing else removes them: `monitor_dc_state` has no foreign keys,
/// so that a flag written while its monitor is being deleted cannot fail the tick's
/// transaction; the row it leaves goes at the next prune.
const ORPHAN_PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Deletes the `monitor_dc_state` rows whose monitor or datacenter no longer exists, so
/// that a configuration that adds and removes monitors (`vantage apply` of changing
/// files) does not grow the table, and each resume's read of it, for ever. A failure is
/// logged and retried at the next prune; it never stops the evaluation.
async fn prune_orphaned_flags(pool: &PgPool) {
    let pruned = sqlx::query(
        "DELETE FROM monitor_dc_state s \
         WHERE NOT EXISTS (SELECT 1 FROM api_monitors m WHERE m.id = s.monitor_id) \
            OR NOT EXISTS (SELECT 1 FROM datacenters d WHERE d.id = s.datacenter_id)",
    )
    .execute(pool)
    .await;
    match pruned {
        Ok(done) if done.rows_affected() > 0 => tracing::info!(
            rows = done.rows_affected(),
            "removed the failing/degraded flags of deleted monitors and datacenters"
        ),
        Ok(_) => {}
        Err(err) => {
            tracing::warn!(error = %err, "removing flags of deleted monitors failed; retried within the hour")
        }
    }
}

/// One listener for configuration and maintenance changes.
async fn listen(options: &PgConnectOptions) -> Option<sqlx::postgres::PgListener> {
    let mut listener = storage::listen(
        options,
        crate::monitors::CONFIG_CHANNEL,
        Duration::from_secs(5),
    )
    .await?;
    listener.listen(MAINTENANCE_CHANNEL).await.ok()?;
    Some(listener)
}

/// Which heartbeats have been read: those of every transaction the last snapshot saw
/// committed. Still to read: transactions at or after `xmax`, and those in progress.
#[derive(Debug, Clone)]
struct Horizon {
    xmax: i64,
    in_progress: Vec<i64>,
}

struct Evaluation {
    pool: PgPool,
    term: i64,
    state: State,
    horizon: Horizon,
    /// When every monitor and datacenter was last looked at (the ticks in between look
    /// only at monitors whose flags flipped).
    decided_fully: Option<Instant>,
}

/// How often a tick looks at everything: datacenter health depends on the clock (a
/// silence grows without any heartbeat arriving), and maintenance windows start and end.
const FULL_DECISION_EVERY: Duration = Duration::from_secs(1);

#[derive(sqlx::FromRow)]
struct HeartbeatRow {
    monitor_id: i32,
    datacenter_id: i32,
    scheduled_at: DateTime<Utc>,
    status: String,
    error_kind: Option<String>,
    error_message: Option<String>,
}

impl From<HeartbeatRow> for Observation {
    fn from(row: HeartbeatRow) -> Self {
        Self {
            monitor_id: row.monitor_id,
            datacenter_id: row.datacenter_id,
            slot: row.scheduled_at,
            outcome: Outcome::from_status(&row.status),
            error_kind: row.error_kind,
            error_message: row.error_message,
        }
    }
}

/// Long error messages are cut: an incident shows one sample, not a response body.
const HEARTBEAT_COLUMNS: &str =
    "monitor_id, datacenter_id, scheduled_at, status, error_kind, left(error_message, 300) AS error_message";

impl Evaluation {
    /// Loads everything under one snapshot, so that the heartbeats replayed and the
    /// horizon for the next read agree.
    async fn resume(pool: PgPool, term: i64) -> Result<Self, EvaluationError> {
        let now = Utc::now();
        let started = Instant::now();
        let mut state = State::starting(now);
        load_config(&pool, &mut state, now).await?;
        let config_loaded = started.elapsed();
        // A connection keeps the capacity of its largest message for life, and the
        // replay's (arrays of thousands of pairs) and the stored flags' (a row for every
        // pair) are the largest the evaluator sends and reads: this one is closed after
        // the replay instead of going back to the pool.
        let mut replay_conn = pool.acquire().await?.detach();
        let mut tx = begin_snapshot(&mut replay_conn).await?;
        storage::jit_off(&mut tx).await?;
        let horizon = snapshot_horizon(&mut tx).await?;
        state.stored = load_stored_flags(&mut tx).await?;
        state.open = load_open_incidents(&mut tx).await?;
        let heartbeats = replay_recent(&mut tx, &mut state, now).await?;
        tx.commit().await?;
        replay_conn.close().await?;
        tracing::debug!(
            config_ms = config_loaded.as_millis() as u64,
            replay_ms = (started.elapsed() - config_loaded).as_millis() as u64,
            heartbeats,
            "evaluation state rebuilt"
        );
        observe_datacenters(&pool, &mut state, now).await?;
        let evaluation = Self {
            pool,
            term,
            state,
            horizon,
            decided_fully: None,
        };
        evaluation.expand_maintenance().await;
        Ok(evaluation)
    }

    async fn reload_config(&mut self) -> Result<(), EvaluationError> {
        load_config(&self.pool, &mut self.state, Utc::now()).await?;
        Ok(())
    }

    async fn expand_maintenance(&self) {
        match maintenance::expand_recurring(&self.pool, Utc::now()).await {
            Ok((_, invalid)) => {
                for err in invalid {
                    tracing::error!(error = %err, "maintenance window skipped");
                }
            }
            Err(err) => tracing::warn!(error = %err, "expanding maintenance windows failed"),
        }
    }

    /// Reads what is new, decides, writes. Returns how many heartbeats were read.
    async fn tick(&mut self) -> Result<usize, EvaluationError> {
        let mut tx = begin_snapshot(&self.pool).await?;
        let next = snapshot_horizon(&mut tx).await?;
        let query = format!(
            "SELECT {HEARTBEAT_COLUMNS} FROM api_heartbeats \
             WHERE ingest_xid >= $1 OR ingest_xid = ANY($2) ORDER BY scheduled_at"
        );
        // Folded in as they arrive: an error midway ends this evaluation, and the next
        // one rebuilds its state from the database, so half a read is never decided on.
        let rows = sqlx::query_as::<_, HeartbeatRow>(&query)
            .bind(self.horizon.xmax)
            .bind(&self.horizon.in_progress)
            .fetch(&mut *tx);
        let read = observe_all(&mut self.state, rows).await?;
        tx.commit().await?;
        self.horizon = next;
        let now = Utc::now();
        let full = self
            .decided_fully
            .is_none_or(|at| at.elapsed() >= FULL_DECISION_EVERY);
        if full {
            // Leaders and instances only matter to datacenter health, judged in full.
            observe_datacenters(&self.pool, &mut self.state, now).await?;
            self.decided_fully = Some(Instant::now());
        }
        let changes = self.state.decide(now, full);
        if !changes.is_empty() {
            let opened_ids = persist(&self.pool, self.term, &changes).await?;
            self.state.applied(&changes, &opened_ids);
            log_changes(&self.state, &changes);
        }
        Ok(read)
    }

    fn open_by_kind(&self) -> HashMap<&'static str, i64> {
        let mut counts = HashMap::new();
        for key in self.state.open.keys() {
            *counts.entry(key.kind().as_str()).or_default() += 1;
        }
        counts
    }
}

fn log_changes(state: &State, changes: &Changes) {
    for opened in &changes.opened {
        tracing::warn!(kind = opened.key.kind().as_str(), cause = %opened.cause, opened_at = %opened.opened_at, muted = opened.muted, "incident opened");
    }
    for resolved in &changes.resolved {
        tracing::info!(kind = resolved.key.kind().as_str(), incident = resolved.id, detail = %resolved.detail, "incident resolved");
    }
    tracing::debug!(
        flags = changes.flags.len(),
        updated = changes.updated.len(),
        open = state.open.len(),
        "evaluation changes written"
    );
}

/// Which datacenters are led now, and which have ever registered an instance (one
/// that starts after the evaluator must count at once, not at the next reload).
async fn observe_datacenters(
    pool: &PgPool,
    state: &mut State,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    state.observe_leaders(&leadership::datacenters_with_leader(pool).await?, now);
    let deployed: Vec<i32> = sqlx::query_scalar("SELECT DISTINCT datacenter_id FROM agents")
        .fetch_all(pool)
        .await?;
    state.observe_deployed(&deployed);
    Ok(())
}

async fn begin_snapshot<'c>(
    conn: impl Acquire<'c, Database = Postgres>,
) -> Result<Transaction<'c, Postgres>, sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

async fn snapshot_horizon(conn: &mut PgConnection) -> Result<Horizon, sqlx::Error> {
    let (xmax, in_progress): (i64, Vec<i64>) = sqlx::query_as(
        "SELECT pg_snapshot_xmax(s)::text::bigint, \
                ARRAY(SELECT x::text::bigint FROM pg_snapshot_xip(s) AS x) \
         FROM pg_current_snapshot() AS s",
    )
    .fetch_one(conn)
    .await?;
    Ok(Horizon { xmax, in_progress })
}

#[derive(sqlx::FromRow)]
struct MonitorRow {
    id: i32,
    name: String,
    failure_threshold: i32,
    recovery_threshold: i32,
    quorum: Option<i32>,
    alert_on_degraded: bool,
    mute_until: Option<DateTime<Utc>>,
    tags: Vec<String>,
    interval_seconds: Option<i32>,
    cron: Option<String>,
    datacenters: Vec<i32>,
}

/// One period per schedule shape: interval grids differ per monitor only by their
/// offset, cron not at all.
type Periods = HashMap<(Option<i32>, Option<String>), Duration>;

impl MonitorRow {
    /// `None` for a schedule the runners cannot use (they skip and log it too).
    fn into_config(self, periods: &mut Periods, now: DateTime<Utc>) -> Option<MonitorConfig> {
        let period = match periods.get(&(self.interval_seconds, self.cron.clone())) {
            Some(period) => *period,
            None => {
                let cadence =
                    Cadence::from_parts(self.interval_seconds, self.cron.as_deref()).ok()?;
                let period = MonitorConfig::period_of(&cadence, self.id, now);
                periods.insert((self.interval_seconds, self.cron), period);
                period
            }
        };
        let to_u32 = |v: i32| u32::try_from(v).unwrap_or(1).max(1);
        Some(MonitorConfig {
            id: self.id,
            name: self.name.into_boxed_str(),
            policy: Policy {
                failure_threshold: to_u32(self.failure_threshold),
                recovery_threshold: to_u32(self.recovery_threshold),
                quorum: self.quorum.map(to_u32),
                alert_on_degraded: self.alert_on_degraded,
            },
            period,
            tags: self.tags.into_boxed_slice(),
            mute_until: self.mute_until,
            datacenters: self.datacenters.into_boxed_slice(),
        })
    }
}

/// Monitors (enabled, with a usable schedule), their assignments, datacenters and the
/// maintenance that is active or starts before the next reload.
async fn load_config(
    pool: &PgPool,
    state: &mut State,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    load_monitors(pool, &mut state.monitors, now).await?;
    let datacenters: Vec<(i32, String)> = sqlx::query_as("SELECT id, code FROM datacenters")
        .fetch_all(pool)
        .await?;
    let deployed: HashMap<i32, bool> = state
        .datacenters
        .iter()
        .map(|(id, info)| (*id, info.deployed))
        .collect();
    state.datacenters = datacenters
        .into_iter()
        .map(|(id, code)| {
            let deployed = deployed.get(&id).copied().unwrap_or(false);
            (id, DatacenterInfo { code, deployed })
        })
        .collect();
    state.maintenance = sqlx::query_as(
        "SELECT w.monitor_ids, w.tags, w.datacenter_ids, o.starts_at, o.ends_at \
         FROM maintenance_occurrences o JOIN maintenance_windows w ON w.id = o.window_id \
         WHERE o.ends_at > $1 AND o.starts_at < $1 + interval '1 hour'",
    )
    .bind(now)
    .fetch_all(pool)
    .await?;
    Ok(())
}

/// Updates `monitors` in place from one streamed query (assignments folded in), so a
/// reload holds the map and one row, not every row and a second map beside the first.
/// An error midway leaves the map half updated; the evaluation then stops and the next
/// one rebuilds its state from scratch.
async fn load_monitors(
    pool: &PgPool,
    monitors: &mut HashMap<i32, MonitorConfig>,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    storage::jit_off(&mut tx).await?;
    let rows = sqlx::query_as::<_, MonitorRow>(
        "SELECT m.id, m.name, m.failure_threshold, m.recovery_threshold, m.quorum, \
                m.alert_on_degraded, m.mute_until, m.tags, s.interval_seconds, s.cron, \
                coalesce(a.datacenters, '{}') AS datacenters \
         FROM api_monitors m JOIN schedules s ON s.id = m.schedule_id \
         LEFT JOIN (SELECT monitor_id, array_agg(datacenter_id) AS datacenters \
                    FROM monitor_assignments GROUP BY monitor_id) a ON a.monitor_id = m.id \
         WHERE m.enabled",
    )
    .fetch(&mut *tx);
    let mut rows = storage::yielding(rows);
    let mut periods = Periods::new();
    let mut seen = Vec::with_capacity(monitors.len());
    while let Some(row) = rows.try_next().await? {
        if let Some(monitor) = row.into_config(&mut periods, now) {
            seen.push(monitor.id);
            monitors.insert(monitor.id, monitor);
        }
    }
    drop(rows);
    tx.commit().await?;
    seen.sort_unstable();
    monitors.retain(|id, _| seen.binary_search(id).is_ok());
    Ok(())
}

async fn load_stored_flags(
    conn: &mut PgConnection,
) -> Result<HashMap<(i32, i32), StoredFlags>, sqlx::Error> {
    let rows = sqlx::query_as(
        // Rows of monitors deleted since the last prune would only take room here.
        "SELECT s.monitor_id, s.datacenter_id, s.failing, s.degraded, s.changed_at \
         FROM monitor_dc_state s WHERE EXISTS (SELECT 1 FROM api_monitors m WHERE m.id = s.monitor_id)",
    )
    .fetch(conn);
    storage::yielding(rows)
        .map_ok(
            |(monitor, dc, failing, degraded, changed_at): (
                i32,
                i32,
                bool,
                bool,
                DateTime<Utc>,
            )| {
                (
                    (monitor, dc),
                    StoredFlags {
                        failing,
                        degraded,
                        changed_at: Some(changed_at),
                    },
                )
            },
        )
        .try_collect()
        .await
}

async fn load_open_incidents(
    conn: &mut PgConnection,
) -> Result<HashMap<IncidentKey, OpenIncident>, sqlx::Error> {
    let rows: Vec<OpenIncidentRow> = sqlx::query_as(
        "SELECT id, kind, monitor_id, datacenter_id, opened_at, datacenters \
         FROM incidents WHERE resolved_at IS NULL",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let key = match (
                IncidentKind::parse(&row.kind)?,
                row.monitor_id,
                row.datacenter_id,
            ) {
                (IncidentKind::DatacenterImpaired, _, Some(dc)) => IncidentKey::Datacenter(dc),
                (kind, Some(monitor), _) => IncidentKey::Monitor(kind, monitor),
                _ => return None,
            };
            let open = OpenIncident {
                id: row.id,
                opened_at: row.opened_at,
                datacenters: row.datacenters.into_iter().collect(),
            };
            Some((key, open))
        })
        .collect())
}

#[derive(sqlx::FromRow)]
struct OpenIncidentRow {
    id: i64,
    kind: String,
    monitor_id: Option<i32>,
    datacenter_id: Option<i32>,
    opened_at: DateTime<Utc>,
    datacenters: Vec<i32>,
}

/// Pairs looked up by one replay query. All of them in one query bound four arrays of
/// 100,000 elements, and encoding and sending them took 38 MB at once, the largest
/// allocation of a leader's start (BENCHMARKS.md, "Memory, third round").
const REPLAY_PAIRS_PER_QUERY: usize = 5_000;

/// The last few heartbeats of every monitor in every datacenter it runs in: enough to
/// rebuild each streak on top of its stored flag. The larger threshold covers a flag
/// raised and not yet stored (flags are stored within a tick, 250 ms, of the heartbeat
/// that raised them, far less than a slot); one more slot is the margin. Read a few
/// thousand pairs at a time, each pair's oldest first, folded into `state` as they
/// arrive (a pair's streak depends only on its own heartbeats, and a datacenter's
/// latest slot is a maximum, so the order between pairs does not matter). Returns how
/// many were replayed.
async fn replay_recent(
    conn: &mut PgConnection,
    state: &mut State,
    now: DateTime<Utc>,
) -> Result<usize, sqlx::Error> {
    let pairs = state.monitors.values().map(|m| m.datacenters.len()).sum();
    let mut monitors = Vec::with_capacity(pairs);
    let mut datacenters = Vec::with_capacity(pairs);
    let mut limits = Vec::with_capacity(pairs);
    let mut since = Vec::with_capacity(pairs);
    for monitor in state.monitors.values() {
        let slots = monitor
            .policy
            .failure_threshold
            .max(monitor.policy.recovery_threshold)
            + 1;
        let window = monitor.period * (slots + 2) + Duration::from_secs(60);
        let from = now - chrono::Duration::from_std(window).unwrap_or(chrono::Duration::days(1));
        for dc in &monitor.datacenters {
            monitors.push(monitor.id);
            datacenters.push(*dc);
            limits.push(slots as i32);
            since.push(from);
        }
    }
    let query = format!(
        "SELECT {HEARTBEAT_COLUMNS} FROM ( \
           SELECT h.* FROM unnest($1::int[], $2::int[], $3::int[], $4::timestamptz[]) \
                AS a(monitor_id, datacenter_id, slots, since) \
           CROSS JOIN LATERAL ( \
             SELECT h.monitor_id, h.datacenter_id, h.scheduled_at, h.status, h.error_kind, h.error_message \
             FROM api_heartbeats h \
             WHERE h.monitor_id = a.monitor_id AND h.datacenter_id = a.datacenter_id \
               AND h.scheduled_at > a.since AND h.scheduled_at <= $5 \
             ORDER BY h.scheduled_at DESC LIMIT a.slots) h \
         ) recent ORDER BY scheduled_at"
    );
    let mut replayed = 0;
    for start in (0..pairs).step_by(REPLAY_PAIRS_PER_QUERY) {
        let chunk = start..pairs.min(start + REPLAY_PAIRS_PER_QUERY);
        let rows = sqlx::query_as::<_, HeartbeatRow>(&query)
            .bind(&monitors[chunk.clone()])
            .bind(&datacenters[chunk.clone()])
            .bind(&limits[chunk.clone()])
            .bind(&since[chunk])
            // An upper bound too, so each lookup prunes the partitions created ahead
            // (slots are never in the future).
            .bind(now + chrono::Duration::minutes(1))
            .fetch(&mut *conn);
        replayed += observe_all(state, rows).await?;
    }
    Ok(replayed)
}

/// Folds heartbeats into `state` as they arrive, in the order read; returns how many.
async fn observe_all(
    state: &mut State,
    rows: impl futures_util::Stream<Item = Result<HeartbeatRow, sqlx::Error>> + Unpin,
) -> Result<usize, sqlx::Error> {
    let mut rows = storage::yielding(rows);
    let mut observed = 0;
    while let Some(row) = rows.try_next().await? {
        state.observe(row.into());
        observed += 1;
    }
    Ok(observed)
}

/// Writes one tick's changes atomically, under the fencing check. Returns the ids of
/// the opened incidents, in order.
async fn persist(pool: &PgPool, term: i64, changes: &Changes) -> Result<Vec<i64>, EvaluationError> {
    let mut tx = pool.begin().await?;
    let current: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM evaluator_terms WHERE term = $1 AND released_at IS NULL FOR SHARE",
    )
    .bind(term)
    .fetch_optional(&mut *tx)
    .await?;
    if current.is_none() {
        return Err(EvaluationError::Fenced(term));
    }
    write_flags(&mut tx, changes).await?;
    let mut opened_ids = Vec::with_capacity(changes.opened.len());
    for opened in &changes.opened {
        let (monitor, dc) = subject(opened.key);
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO incidents (kind, severity, monitor_id, datacenter_id, opened_at, muted, \
                                    cause, datacenters, error_kinds, evaluator_term) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
        )
        .bind(opened.key.kind().as_str())
        .bind(opened.key.kind().severity())
        .bind(monitor)
        .bind(dc)
        .bind(opened.opened_at)
        .bind(opened.muted)
        .bind(&opened.cause)
        .bind(ids(&opened.datacenters))
        .bind(&opened.error_kinds)
        .bind(term)
        .fetch_one(&mut *tx)
        .await?;
        let event = Event {
            kind: "opened",
            at: opened.opened_at,
            datacenters: ids(&opened.datacenters),
            error_kinds: &opened.error_kinds,
            sample_error: opened.sample_error.as_deref(),
            detail: &opened.cause,
        };
        event.insert(&mut tx, id).await?;
        opened_ids.push(id);
    }
    for updated in &changes.updated {
        sqlx::query("UPDATE incidents SET datacenters = $2, error_kinds = $3 WHERE id = $1")
            .bind(updated.id)
            .bind(ids(&updated.datacenters))
            .bind(&updated.error_kinds)
            .execute(&mut *tx)
            .await?;
        for (kind, dcs, detail) in [
            ("datacenter_joined", &updated.joined, "failing"),
            (
                "datacenter_left",
                &updated.left,
                updated.left_detail.as_str(),
            ),
        ] {
            if dcs.is_empty() {
                continue;
            }
            Event {
                kind,
                at: updated.at,
                datacenters: dcs.clone(),
                error_kinds: &updated.error_kinds,
                sample_error: updated.sample_error.as_deref(),
                detail,
            }
            .insert(&mut tx, updated.id)
            .await?;
        }
    }
    for resolved in &changes.resolved {
        sqlx::query("UPDATE incidents SET resolved_at = $2 WHERE id = $1 AND resolved_at IS NULL")
            .bind(resolved.id)
            .bind(resolved.at)
            .execute(&mut *tx)
            .await?;
        Event {
            kind: "resolved",
            at: resolved.at,
            datacenters: ids(&resolved.remaining),
            error_kinds: &[],
            sample_error: None,
            detail: &resolved.detail,
        }
        .insert(&mut tx, resolved.id)
        .await?;
    }
    tx.commit().await?;
    Ok(opened_ids)
}

fn subject(key: IncidentKey) -> (Option<i32>, Option<i32>) {
    match key {
        IncidentKey::Monitor(_, monitor) => (Some(monitor), None),
        IncidentKey::Datacenter(dc) => (None, Some(dc)),
    }
}

fn ids(set: &BTreeSet<i32>) -> Vec<i32> {
    set.iter().copied().collect()
}

async fn write_flags(
    tx: &mut Transaction<'_, Postgres>,
    changes: &Changes,
) -> Result<(), sqlx::Error> {
    if changes.flags.is_empty() {
        return Ok(());
    }
    let monitors: Vec<i32> = changes.flags.iter().map(|c| c.monitor_id).collect();
    let datacenters: Vec<i32> = changes.flags.iter().map(|c| c.datacenter_id).collect();
    let failing: Vec<bool> = changes.flags.iter().map(|c| c.flags.failing).collect();
    let degraded: Vec<bool> = changes.flags.iter().map(|c| c.flags.degraded).collect();
    let changed_at: Vec<Option<DateTime<Utc>>> =
        changes.flags.iter().map(|c| c.flags.changed_at).collect();
    let kinds: Vec<Option<String>> = changes
        .flags
        .iter()
        .map(|c| c.last_error_kind.clone())
        .collect();
    let messages: Vec<Option<String>> = changes
        .flags
        .iter()
        .map(|c| c.last_error_message.clone())
        .collect();
    sqlx::query(
        "INSERT INTO monitor_dc_state AS s (monitor_id, datacenter_id, failing, degraded, changed_at, \
                                           last_error_kind, last_error_message) \
         SELECT m, d, f, g, coalesce(c, now()), k, e \
         FROM unnest($1::int[], $2::int[], $3::bool[], $4::bool[], $5::timestamptz[], $6::text[], $7::text[]) \
              AS x(m, d, f, g, c, k, e) \
         ON CONFLICT (monitor_id, datacenter_id) DO UPDATE SET \
           failing = EXCLUDED.failing, degraded = EXCLUDED.degraded, changed_at = EXCLUDED.changed_at, \
           last_error_kind = EXCLUDED.last_error_kind, last_error_message = EXCLUDED.last_error_message, \
           updated_at = now()",
    )
    .bind(&monitors)
    .bind(&datacenters)
    .bind(&failing)
    .bind(&degraded)
    .bind(&changed_at)
    .bind(&kinds)
    .bind(&messages)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// One row of an incident's timeline.
struct Event<'a> {
    kind: &'static str,
    at: DateTime<Utc>,
    datacenters: Vec<i32>,
    error_kinds: &'a [String],
    sample_error: Option<&'a str>,
    detail: &'a str,
}

impl Event<'_> {
    async fn insert(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        incident: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO incident_events (incident_id, kind, at, datacenters, error_kinds, sample_error, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(incident)
        .bind(self.kind)
        .bind(self.at)
        .bind(&self.datacenters)
        .bind(self.error_kinds)
        .bind(self.sample_error)
        .bind(self.detail)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}
