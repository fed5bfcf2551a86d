//! This instance's row in `agents`: registered at start, kept alive (last_seen_at and
//! role) every few seconds and on every leadership change, marked `stopped` at a clean
//! exit. It reads leadership but never changes it, and touches no other table.

use std::time::Duration;

use sqlx::PgPool;
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

/// Inserts or refreshes this instance's row and returns its id. An instance restarted
/// under the same name keeps its id.
pub async fn register(pool: &PgPool, identity: &AgentIdentity) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO agents (datacenter_id, instance_name, hostname, version, pid, role) \
         VALUES ($1, $2, $3, $4, $5, 'standby') \
         ON CONFLICT (datacenter_id, instance_name) DO UPDATE SET \
           hostname = EXCLUDED.hostname, version = EXCLUDED.version, pid = EXCLUDED.pid, \
           started_at = now(), last_seen_at = now(), role = 'standby' \
         RETURNING id",
    )
    .bind(identity.datacenter_id)
    .bind(&identity.instance_name)
    .bind(&identity.hostname)
    .bind(&identity.version)
    .bind(i32::try_from(identity.pid).unwrap_or(i32::MAX))
    .fetch_one(pool)
    .await
}

async fn touch(pool: &PgPool, agent_id: i64, role: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE agents SET last_seen_at = now(), role = $2 WHERE id = $1")
        .bind(agent_id)
        .bind(role)
        .execute(pool)
        .await
        .map(drop)
}

/// Keeps the row current until `shutdown`, then marks it `stopped`.
pub fn spawn_liveness(
    pool: PgPool,
    agent_id: i64,
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
            if let Err(err) = touch(&pool, agent_id, role).await {
                tracing::debug!(error = %err, "could not refresh agents.last_seen_at");
            }
        }
        if let Err(err) = touch(&pool, agent_id, "stopped").await {
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
