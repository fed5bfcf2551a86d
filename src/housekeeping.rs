//! The leader's housekeeping: daily heartbeat partitions created ahead of time,
//! partitions past retention dropped, and this datacenter's hourly/daily rollups kept
//! current (late heartbeats included, through the rollup's lookback). Only the
//! datacenter's leader runs it, once right after it is elected (a new leader catches up
//! at once) and then on tokio-cron-scheduler, whose coarse timing is fine for this.
//! Monitor slots are *not* scheduled here (see `schedule`). It calls into `storage` and
//! `rollup`; it owns no SQL itself.
//!
//! It runs on the maintenance pool (`storage::maintenance_pool`), never the writer's,
//! and every transaction it starts has lock and statement timeouts (`partitions::LIMITS`,
//! `rollup::LIMITS`), so a stuck lock holder costs it a failed run, not connections.
//! Shutdown does not wait for a chore in progress: it is abandoned (its transaction
//! rolls back) and the next leader's catch-up redoes it.

use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use tokio_util::sync::CancellationToken;

use crate::leadership::Leadership;
use crate::rollup;
use crate::storage::partitions;

/// Hourly, at minute 7: idempotent, so running more often than daily only narrows the
/// window in which a failed run matters.
const PARTITIONS_CRON: &str = "0 7 * * * *";

/// Every five minutes: dashboards over long ranges read the rollups, so they lag the
/// raw heartbeats by at most this much.
const ROLLUPS_CRON: &str = "30 */5 * * * *";

/// The chores' timer could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("starting the housekeeping scheduler")]
pub struct HousekeepingError(#[from] JobSchedulerError);

/// What one leader looks after.
#[derive(Clone)]
struct Chores {
    pool: PgPool,
    datacenter_id: i32,
    retention_days: u32,
}

impl Chores {
    async fn partitions(&self) {
        // `housekeeping` logs what it created and dropped.
        if let Err(err) = partitions::housekeeping(&self.pool, self.retention_days).await {
            tracing::warn!(error = %err, "partition housekeeping failed; it runs again within the hour");
        }
    }

    async fn rollups(&self) {
        let refreshed =
            rollup::refresh_datacenter(&self.pool, self.datacenter_id, rollup::DEFAULT_LOOKBACK)
                .await;
        match refreshed {
            Ok(rows) => tracing::debug!(rows, "housekeeping: rollups refreshed"),
            Err(err) => {
                tracing::warn!(error = %err, "rollup refresh failed; it runs again within five minutes")
            }
        }
    }
}

/// Runs the chores while this instance leads, until `shutdown`. `pool` should be the
/// maintenance pool. The timer is set up before this returns, so a failure is a
/// start-up error.
pub async fn spawn(
    pool: PgPool,
    datacenter_id: i32,
    mut leadership: watch::Receiver<Leadership>,
    retention_days: u32,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, HousekeepingError> {
    let chores = Chores {
        pool,
        datacenter_id,
        retention_days,
    };
    let mut scheduler = JobScheduler::new().await?;
    for (cron, rollups) in [(PARTITIONS_CRON, false), (ROLLUPS_CRON, true)] {
        let chores = chores.clone();
        let leadership = leadership.clone();
        scheduler
            .add(Job::new_async(cron, move |_, _| {
                let chores = chores.clone();
                let leading = leadership.borrow().is_leader();
                Box::pin(async move {
                    match (leading, rollups) {
                        (false, _) => {}
                        (true, false) => chores.partitions().await,
                        (true, true) => chores.rollups().await,
                    }
                })
            })?)
            .await?;
    }
    scheduler.start().await?;
    Ok(tokio::spawn(async move {
        loop {
            // The guards `wait_for` returns must not live across an await: map them away.
            let elected = tokio::select! {
                _ = shutdown.cancelled() => break,
                elected = leadership.wait_for(|l| l.is_leader()) => elected.is_ok(),
            };
            if !elected {
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = async {
                    chores.partitions().await;
                    chores.rollups().await;
                } => {}
            }
            // Wait for this term to end before catching up again.
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = leadership.wait_for(|l| !l.is_leader()) => {}
            }
        }
        let _ = scheduler.shutdown().await;
    }))
}
