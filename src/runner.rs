//! `vantage run`: one instance of one datacenter.
//!
//! Wires the parts together and owns their lifecycles; it holds no logic of its own
//! beyond ordering. Start: wait for the database, bring the schema up to date, resolve
//! the datacenter, register the instance, start the heartbeat writer (which replays any
//! spool left by an earlier process), the elector, the monitor-config watcher, the
//! housekeeping and the HTTP endpoints. While this instance leads, a scheduler fires the
//! datacenter's monitors and hands every report to the writer; it starts a probe only
//! while the elector's lease is valid, and after each takeover it replays the slots
//! missed since the last stored heartbeats. Its settings ([`RunArgs`]) come range-checked
//! from the command line.
//!
//! Every background service is started the same way, with the one shutdown token, and
//! its task recorded by name ([`crate::services`]); only the writer has a stop of its own,
//! because it must outlive everything that produces heartbeats.
//!
//! Shutdown (SIGTERM/SIGINT), in the order that loses nothing and leaves no slot
//! unprobed: stop scheduling, resign (unlock + notify, so a standby bids at once), let
//! in-flight probes finish within a bound, flush the writer (or spool what cannot be
//! written), then join the other services (the instance is marked stopped), each step
//! within its budget (`SHUTDOWN_*`).

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::migrate::MigrateError;
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::agent::{self, AgentIdentity, Registration};
use crate::api::{self, InstanceView};
use crate::cli::run::RunArgs;
use crate::heartbeat::Heartbeat;
use crate::housekeeping::{self, HousekeepingError};
use crate::incidents::{self, EvaluatorConfig};
use crate::leadership::{ElectionConfig, Elector, Leadership, LeadershipScope};
use crate::metrics::Metrics;
use crate::monitors::{self, MonitorSet, RunnableMonitor};
use crate::notify::{self, NotifyConfigError};
use crate::probe::Prober;
use crate::schedule::{CatchUpBound, DispatchGate, Fire, ScheduleEntry, Scheduler};
use crate::services::Services;
use crate::storage::{self, HeartbeatSender, HeartbeatWriter, WriterConfig};

/// A new leader still probes a slot that passed at most this long ago (see
/// `Scheduler::with_catch_up`): it covers the time a hand-over takes, so a graceful
/// hand-over misses no slot. It needs no database read, so it is planned at once; the
/// slots are replayed spread like a catch-up's, within `MAX_REPLAY_SPACING`.
const HANDOVER_CATCH_UP: Duration = Duration::from_secs(1);

/// Deeper catch-up after any takeover: every slot missed since each monitor's last stored
/// heartbeat in this datacenter, at most this far back and this many per monitor (a
/// one-second monitor: its last minute), replayed spread out (see `schedule`).
const TAKEOVER_CATCH_UP: CatchUpBound = CatchUpBound {
    window: Duration::from_secs(10 * 60),
    max_slots: 60,
};

/// How far back a new leader looks for a monitor's last stored heartbeat; a monitor with
/// none that recent is new or long idle, and nothing is replayed for it.
const LAST_STORED_LOOKBACK_S: f64 = 24.0 * 3600.0;

/// How often start-up says it is still waiting for the database.
const DATABASE_WAIT_LOG_EVERY: Duration = Duration::from_secs(10);

/// The shutdown budget, step by step (README, "Guarantees under faults"): resigning
/// leadership, then in-flight probes (`VANTAGE_SHUTDOWN_TIMEOUT`), then storing what the
/// writer holds (the rest is spooled, which takes milliseconds), then the remaining
/// tasks and the pools. With the default 10 s for probes the whole is at most 17 s,
/// under the 20 s stop grace of the compose file and the Kubernetes example.
const SHUTDOWN_RESIGN: Duration = Duration::from_secs(3);
const SHUTDOWN_WRITER_FLUSH: Duration = Duration::from_secs(3);
const SHUTDOWN_TEARDOWN: Duration = Duration::from_secs(1);

/// Why `vantage run` could not start. Each variant's message says what was being done;
/// its source, what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The URL's text is redacted (no password).
    #[error("DATABASE_URL is not a valid PostgreSQL URL ({0}); expected postgres://user:password@host:port/database")]
    DatabaseUrl(String),
    #[error("applying database migrations")]
    Migrate(#[source] MigrateError),
    #[error("checking the database schema")]
    SchemaCheck(#[source] sqlx::Error),
    #[error(
        "the database schema is {0} migration(s) behind this version of vantage; \
         run `vantage migrate` (or set VANTAGE_AUTO_MIGRATE=true)"
    )]
    SchemaBehind(usize),
    #[error("looking up the datacenter")]
    DatacenterLookup(#[source] sqlx::Error),
    #[error(
        "unknown datacenter {0:?}: the datacenters table is empty; insert it \
         (INSERT INTO datacenters (code, name) VALUES ('{0}', '...')) or load the \
         examples with `vantage seed-example`"
    )]
    NoDatacenters(String),
    #[error("unknown datacenter {code:?}; known codes: {known} (set VANTAGE_DATACENTER to one of them or insert a row into datacenters)")]
    UnknownDatacenter { code: String, known: String },
    #[error("registering this instance in agents")]
    Register(#[source] sqlx::Error),
    #[error("starting the heartbeat writer")]
    Writer(#[source] std::io::Error),
    #[error("setting up notification delivery")]
    Notify(#[source] NotifyConfigError),
    #[error("loading monitor configuration")]
    Monitors(#[source] sqlx::Error),
    #[error(transparent)]
    Housekeeping(#[from] HousekeepingError),
    #[error("binding VANTAGE_LISTEN={addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up the prober")]
    Prober(#[from] crate::probe::ProberError),
}

pub async fn execute(args: RunArgs) -> Result<std::process::ExitCode, RunError> {
    let connect_options = PgConnectOptions::from_str(&args.database_url)
        .map_err(|err| RunError::DatabaseUrl(storage::redact_error(&err)))?;
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());

    let Some(pool) = wait_for_database(&connect_options, &shutdown).await else {
        return Ok(std::process::ExitCode::SUCCESS);
    };
    prepare_schema(&pool, args.auto_migrate).await?;
    let datacenter_id = resolve_datacenter(&pool, &args.datacenter).await?;
    let identity = AgentIdentity::of_this_process(datacenter_id, args.instance_name.clone());
    let registration = Registration::start(&pool, identity)
        .await
        .map_err(RunError::Register)?;
    let instance_name = registration.identity().instance_name.clone();
    tracing::info!(
        datacenter = %args.datacenter,
        instance = %instance_name,
        agent_id = registration.id(),
        "instance registered"
    );

    let metrics = Metrics::new();
    // The writer is not stopped by `shutdown`: it stores the probes still in flight
    // after everything else has stopped, and is flushed last.
    let (heartbeats, writer) = HeartbeatWriter::spawn(
        pool.clone(),
        WriterConfig {
            spool_dir: args.spool_dir.clone(),
            spool_flush_interval: args.spool_flush_interval,
            memory_rows: args.writer_memory_rows,
            shutdown_timeout: SHUTDOWN_WRITER_FLUSH,
            metrics: Some(metrics.clone()),
            ..WriterConfig::default()
        },
    )
    .await
    .map_err(RunError::Writer)?;

    // Stopped first at shutdown, within SHUTDOWN_RESIGN: the scheduler and the electors.
    let mut leading = Services::new();
    // Stopped last, within SHUTDOWN_TEARDOWN, after the writer has flushed.
    let mut services = Services::new();

    // Both elections of this instance share its registration and the lease setting.
    let election_of = |scope, outage_grace| {
        let mut config = ElectionConfig::new(connect_options.clone(), scope, registration.id())
            .with_registration(registration.clone());
        config.outage_grace = outage_grace;
        config.lease = args.leader_lease;
        config
    };
    let (elector, election) = Elector::spawn(
        election_of(
            LeadershipScope::Datacenter(datacenter_id),
            args.db_outage_grace,
        ),
        shutdown.clone(),
    );
    leading.add("datacenter elector", election);
    // Every instance bids for the one system-wide evaluator too; a dead database leaves
    // nothing to evaluate, so it fences at once instead of riding out an outage.
    let (evaluator_elector, evaluator_election) = Elector::spawn(
        election_of(LeadershipScope::Evaluator, Duration::ZERO),
        shutdown.clone(),
    );
    leading.add("evaluator elector", evaluator_election);
    services.add(
        "incident evaluator",
        incidents::spawn(
            pool.clone(),
            connect_options.clone(),
            evaluator_elector.subscribe(),
            EvaluatorConfig::default(),
            metrics.clone(),
            shutdown.clone(),
        ),
    );
    // Notifications go out from the evaluator's instance too: the outbox rows it (or an
    // acknowledgement) writes are delivered where the incidents are decided.
    services.add(
        "notification worker",
        notify::spawn(
            pool.clone(),
            evaluator_elector.subscribe(),
            args.notify.config().map_err(RunError::Notify)?,
            metrics.clone(),
            shutdown.clone(),
        ),
    );

    let (monitor_set, watcher) = monitors::watch_monitors(
        pool.clone(),
        connect_options.clone(),
        datacenter_id,
        args.config_reload_interval,
        metrics.clone(),
        shutdown.clone(),
    )
    .await
    .map_err(RunError::Monitors)?;
    services.add("monitor watcher", watcher);

    services.add(
        "liveness",
        agent::spawn_liveness(
            pool.clone(),
            registration.clone(),
            elector.subscribe(),
            shutdown.clone(),
        ),
    );
    // Maintenance gets connections of its own: whatever it waits for, the writer's
    // pool stays free.
    let maintenance_pool = storage::maintenance_pool(connect_options.clone());
    services.add(
        "housekeeping",
        housekeeping::spawn(
            maintenance_pool.clone(),
            datacenter_id,
            elector.subscribe(),
            args.retention_days,
            shutdown.clone(),
        )
        .await?,
    );

    let monitors_scheduled = Arc::new(AtomicUsize::new(0));
    let view = InstanceView {
        datacenter: args.datacenter.clone(),
        instance_name,
        agent: registration.clone(),
        leadership: elector.subscribe(),
        monitors_scheduled: monitors_scheduled.clone(),
        writer: writer.stats(),
        metrics: metrics.clone(),
        pool: pool.clone(),
    };
    let endpoints = api::spawn(args.listen, view, shutdown.clone())
        .await
        .map_err(|source| RunError::Listen {
            addr: args.listen,
            source,
        })?;
    services.add("endpoints", endpoints);
    tracing::info!(listen = %args.listen, "endpoints listening");

    let probing = Probing {
        prober: Prober::from_env()?,
        heartbeats,
        datacenter: args.datacenter.clone(),
        datacenter_id,
        agent: registration,
        leadership: elector.subscribe(),
        metrics,
        pool: pool.clone(),
    };
    let in_flight = TaskTracker::new();
    let scheduling = Scheduling {
        probing,
        leadership: elector.subscribe(),
        gate: DispatchGate::new(elector.lease_until()),
        monitor_set,
        monitors_scheduled,
        max_concurrent: args.max_concurrent_probes,
        in_flight: in_flight.clone(),
    };
    leading.add("scheduler", scheduling.spawn(shutdown.clone()));

    shutdown.cancelled().await;
    // Shutdown, in order, each step within its budget (SHUTDOWN_*). Every service saw the
    // cancelled token at once: the scheduler stops dispatching (and the electors step
    // down before they unlock, which closes the dispatch gate), the electors resign.
    let resigned_by = Instant::now() + SHUTDOWN_RESIGN;
    if !leading.join(resigned_by).await.is_empty() {
        tracing::warn!("resigning leadership took too long; the lock goes with the connection");
    }
    in_flight.close();
    if tokio::time::timeout(args.shutdown_timeout, in_flight.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            still_running = in_flight.len(),
            "in-flight probes did not finish within VANTAGE_SHUTDOWN_TIMEOUT; their results are lost"
        );
    }
    let flushed = writer.shutdown().await;
    tracing::info!(?flushed, "heartbeat writer stopped");
    let teardown_by = Instant::now() + SHUTDOWN_TEARDOWN;
    let overran = services.join(teardown_by).await;
    let pools = async { tokio::join!(pool.close(), maintenance_pool.close()) };
    if !overran.is_empty() || tokio::time::timeout_at(teardown_by, pools).await.is_err() {
        tracing::warn!("background tasks did not stop in time; exiting anyway");
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// What a fired slot needs to become a heartbeat.
struct Probing {
    prober: Prober,
    heartbeats: HeartbeatSender,
    datacenter: String,
    datacenter_id: i32,
    agent: Registration,
    leadership: watch::Receiver<Leadership>,
    metrics: Arc<Metrics>,
    /// For the takeover catch-up's read of the last stored heartbeats.
    pool: PgPool,
}

impl Probing {
    async fn probe(&self, fire: Fire<RunnableMonitor>) {
        // The term under which this probe was dispatched: it may change mid-probe when a
        // leader re-takes its lock after an outage, and the heartbeat belongs to the old one.
        let leader_term = self.leadership.borrow().term();
        let report = self.prober.probe(&fire.payload.monitor).await;
        // A replayed slot's lag is the gap it fills, not the scheduler's punctuality.
        if !fire.catch_up {
            self.metrics.observe_lag(fire.lag);
        }
        self.metrics.observe_probe(&self.datacenter, &report);
        self.heartbeats.send(Heartbeat {
            monitor_id: fire.monitor_id,
            datacenter_id: self.datacenter_id,
            scheduled_at: fire.slot,
            executed_at: fire.started_at,
            agent_id: Some(self.agent.id()),
            leader_term,
            schedule_lag_ms: fire.lag.as_secs_f64() * 1000.0,
            report,
        });
    }
}

/// The scheduler service: runs a scheduler whenever this instance leads and stops it
/// the moment it does not, until shutdown.
struct Scheduling {
    probing: Probing,
    leadership: watch::Receiver<Leadership>,
    gate: DispatchGate,
    monitor_set: watch::Receiver<MonitorSet>,
    monitors_scheduled: Arc<AtomicUsize>,
    max_concurrent: usize,
    /// Every probe it dispatches: shutdown waits for them after the scheduler stopped.
    in_flight: TaskTracker,
}

impl Scheduling {
    fn spawn(self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(self.run(shutdown))
    }

    async fn run(self, shutdown: CancellationToken) {
        let Self {
            probing,
            mut leadership,
            gate,
            mut monitor_set,
            monitors_scheduled,
            max_concurrent,
            in_flight,
        } = self;
        let probing = Arc::new(probing);
        loop {
            // Standby: wait to be elected.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = leadership.wait_for(|l| l.is_leader()) => {}
            }
            let term = leadership.borrow().term();
            tracing::info!(?term, "leading: scheduling monitors");
            let stop = shutdown.child_token();
            let scheduler = {
                let probing = probing.clone();
                Scheduler::new(max_concurrent, in_flight.clone(), move |fire| {
                    let probing = probing.clone();
                    async move { probing.probe(fire).await }
                })
                .with_catch_up(HANDOVER_CATCH_UP)
                .with_gate(gate.clone())
            };
            let entries = entries_of(&monitor_set.borrow_and_update());
            monitors_scheduled.store(entries.len(), Ordering::Relaxed);
            let monitor_ids: Vec<i32> = entries.iter().map(|e| e.monitor_id).collect();
            let handle = scheduler.handle();
            probing.metrics.watch_scheduler(handle.stats());
            handle.replace_all(entries);
            let run = tokio::spawn(scheduler.run(stop.clone()));
            // The deeper catch-up needs a database read; the scheduler is already running
            // meanwhile, so the read never delays the first slots.
            let catch_up = {
                let (pool, handle, datacenter_id) =
                    (probing.pool.clone(), handle.clone(), probing.datacenter_id);
                tokio::spawn(async move {
                    match last_stored_slots(&pool, datacenter_id, &monitor_ids).await {
                        Ok(last) => handle.catch_up(last, TAKEOVER_CATCH_UP),
                        Err(err) => tracing::warn!(
                            error = %storage::redact_error(&err),
                            "could not read the last stored heartbeats; only the latest missed slot is caught up"
                        ),
                    }
                })
            };
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    changed = leadership.changed() => {
                        if changed.is_err() || !leadership.borrow().is_leader() {
                            break;
                        }
                    }
                    changed = monitor_set.changed() => {
                        if changed.is_ok() {
                            let entries = entries_of(&monitor_set.borrow_and_update());
                            monitors_scheduled.store(entries.len(), Ordering::Relaxed);
                            handle.replace_all(entries);
                        }
                    }
                }
            }
            // Self-fence: no new probe starts after this line.
            stop.cancel();
            catch_up.abort();
            let _ = run.await;
            monitors_scheduled.store(0, Ordering::Relaxed);
            tracing::info!("not leading: scheduling stopped");
        }
    }
}

/// Each monitor's last stored slot in this datacenter (monitors with none in the
/// lookback are left out).
async fn last_stored_slots(
    pool: &PgPool,
    datacenter_id: i32,
    monitor_ids: &[i32],
) -> Result<Vec<(i32, chrono::DateTime<chrono::Utc>)>, sqlx::Error> {
    // One primary-key lookup per monitor, not a scan of the datacenter's recent rows.
    sqlx::query_as(
        "SELECT m.id, last.scheduled_at FROM unnest($2::int4[]) AS m(id) \
         CROSS JOIN LATERAL (SELECT h.scheduled_at FROM api_heartbeats h \
             WHERE h.monitor_id = m.id AND h.datacenter_id = $1 \
               AND h.scheduled_at > now() - make_interval(secs => $3) \
             ORDER BY h.scheduled_at DESC LIMIT 1) last",
    )
    .bind(datacenter_id)
    .bind(monitor_ids)
    .bind(LAST_STORED_LOOKBACK_S)
    .fetch_all(pool)
    .await
}

fn entries_of(set: &MonitorSet) -> Vec<ScheduleEntry<RunnableMonitor>> {
    set.iter()
        .map(|monitor| ScheduleEntry {
            monitor_id: monitor.id,
            cadence: monitor.cadence.clone(),
            payload: monitor.clone(),
        })
        .collect()
}

fn spawn_signal_handler(shutdown: CancellationToken) {
    let stop = crate::services::stop_requested();
    tokio::spawn(async move {
        let signal = stop.await;
        tracing::info!("{signal}: shutting down");
        shutdown.cancel();
    });
}

/// A database that is down at start is waited for, not fatal: containers start in any
/// order. Returns `None` if shutdown was requested while waiting.
async fn wait_for_database(
    options: &PgConnectOptions,
    shutdown: &CancellationToken,
) -> Option<PgPool> {
    let started = tokio::time::Instant::now();
    let mut last_log = None::<tokio::time::Instant>;
    loop {
        match storage::connect_with(options.clone()).await {
            Ok(pool) => return Some(pool),
            Err(err) => {
                if last_log.is_none_or(|at| at.elapsed() >= DATABASE_WAIT_LOG_EVERY) {
                    tracing::warn!(
                        database = %storage::describe_target(options),
                        error = %storage::redact_error(&err),
                        waited_s = started.elapsed().as_secs(),
                        "database unreachable; waiting for it (check DATABASE_URL and that Postgres is up)"
                    );
                    last_log = Some(tokio::time::Instant::now());
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn prepare_schema(pool: &PgPool, auto_migrate: bool) -> Result<(), RunError> {
    if auto_migrate {
        return storage::migrate(pool).await.map_err(RunError::Migrate);
    }
    let pending = storage::pending_migrations(pool)
        .await
        .map_err(RunError::SchemaCheck)?;
    if pending > 0 {
        return Err(RunError::SchemaBehind(pending));
    }
    Ok(())
}

async fn resolve_datacenter(pool: &PgPool, code: &str) -> Result<i32, RunError> {
    let id: Option<i32> = sqlx::query_scalar("SELECT id FROM datacenters WHERE code = $1")
        .bind(code)
        .fetch_optional(pool)
        .await
        .map_err(RunError::DatacenterLookup)?;
    if let Some(id) = id {
        return Ok(id);
    }
    let known: Vec<String> = sqlx::query_scalar("SELECT code FROM datacenters ORDER BY code")
        .fetch_all(pool)
        .await
        .unwrap_or_default();
    if known.is_empty() {
        return Err(RunError::NoDatacenters(code.to_string()));
    }
    Err(RunError::UnknownDatacenter {
        code: code.to_string(),
        known: known.join(", "),
    })
}
