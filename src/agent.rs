//! This instance's row in `agents`: registered at start, kept alive (last_seen_at and
//! role) every few seconds and on every leadership change, marked `stopped` at a clean
//! exit. A row lost while running (`DELETE FROM agents`) is re-created under a new id at
//! the next refresh, and [`Registration::id`] follows it, so heartbeats and terms never
//! name an agent that does not exist. It reads leadership but never changes it, and
//! touches no other table.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::{PgExecutor, PgPool};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::leadership::Leadership;

/// How often `agents.last_seen_at` is refreshed; dashboards treat an instance as gone
/// after a few missed refreshes.
pub const LIVENESS_INTERVAL: Duration = Duration::from_secs(5);

/// What identifies one running instance.
#[derive(Debug, Clone)]
pub struct AgentIdentity {
    pub datacenter_id: i32,
    pub instance_name: String,
    pub hostname: String,
    pub version: String,
    pub pid: u32,
}

impl AgentIdentity {
    /// The identity of this process; `instance_name` defaults to `<hostname>-<pid>`, unique
    /// per host and process.
    pub fn of_this_process(datacenter_id: i32, instance_name: Option<String>) -> Self {
        let hostname = hostname();
        let pid = std::process::id();
        Self {
            datacenter_id,
            instance_name: instance_name.unwrap_or_else(|| format!("{hostname}-{pid}")),
            hostname,
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid,
        }
    }
}

/// One statement for both registering at start (`restarting`: a new `started_at`) and
/// refreshing while running: a refresh of a row that was deleted re-creates it, under a
/// new id. `role: None` keeps the row's role (a new row starts as `standby`).
async fn upsert<'c>(
    executor: impl PgExecutor<'c>,
    identity: &AgentIdentity,
    role: Option<&str>,
    restarting: bool,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO agents (datacenter_id, instance_name, hostname, version, pid, role) \
         VALUES ($1, $2, $3, $4, $5, COALESCE($6, 'standby')) \
         ON CONFLICT (datacenter_id, instance_name) DO UPDATE SET \
           hostname = EXCLUDED.hostname, version = EXCLUDED.version, pid = EXCLUDED.pid, \
           started_at = CASE WHEN $7 THEN now() ELSE agents.started_at END, \
           last_seen_at = now(), role = COALESCE($6, agents.role) \
         RETURNING id",
    )
    .bind(identity.datacenter_id)
    .bind(&identity.instance_name)
    .bind(&identity.hostname)
    .bind(&identity.version)
    .bind(i32::try_from(identity.pid).unwrap_or(i32::MAX))
    .bind(role)
    .bind(restarting)
    .fetch_one(executor)
    .await
}

/// This instance's registration: who it is and its current `agents.id`. Cheap to clone;
/// every clone sees a re-registration.
#[derive(Debug, Clone)]
pub struct Registration {
    identity: Arc<AgentIdentity>,
    id: Arc<AtomicI64>,
}

impl Registration {
    /// Inserts or refreshes this instance's row at start. An instance restarted under the
    /// same name keeps its id.
    pub async fn start(pool: &PgPool, identity: AgentIdentity) -> Result<Self, sqlx::Error> {
        let id = upsert(pool, &identity, Some("standby"), true).await?;
        Ok(Self {
            identity: Arc::new(identity),
            id: Arc::new(AtomicI64::new(id)),
        })
    }

    /// The id of the row as last seen; changes only when the row was lost and re-created.
    pub fn id(&self) -> i64 {
        self.id.load(Ordering::Relaxed)
    }

    pub fn identity(&self) -> &AgentIdentity {
        &self.identity
    }

    /// Refreshes `last_seen_at` (and `role`, when given), re-creating the row if it is
    /// missing; returns the (possibly new) id. Any part of the process about to write this
    /// id somewhere (the elector, into a term) calls it first.
    pub async fn refresh<'c>(
        &self,
        executor: impl PgExecutor<'c>,
        role: Option<&str>,
    ) -> Result<i64, sqlx::Error> {
        let id = upsert(executor, &self.identity, role, false).await?;
        let previous = self.id.swap(id, Ordering::Relaxed);
        if previous != id {
            tracing::warn!(
                previous_agent_id = previous,
                agent_id = id,
                "this instance's agents row was missing; registered it again"
            );
        }
        Ok(id)
    }
}

/// Keeps the row current until `shutdown`, then marks it `stopped`.
pub fn spawn_liveness(
    pool: PgPool,
    registration: Registration,
    mut leadership: watch::Receiver<Leadership>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(LIVENESS_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
                changed = leadership.changed() => if changed.is_err() { break },
            }
            let role = leadership.borrow().role_name();
            // A database outage is reported by the writer and the elector; here a failed
            // refresh only means the row is a little stale.
            if let Err(err) = registration.refresh(&pool, Some(role)).await {
                tracing::debug!(error = %err, "could not refresh agents.last_seen_at");
            }
        }
        if let Err(err) = registration.refresh(&pool, Some("stopped")).await {
            tracing::warn!(error = %err, "could not mark this instance stopped in agents");
        }
    })
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length, and gethostname NUL-terminates
    // within it on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown-host".to_string();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
