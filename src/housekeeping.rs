//! The leader's housekeeping: daily heartbeat partitions created ahead of time and
//! partitions past retention dropped. Only the datacenter's leader runs it, once right
//! after it is elected (a new leader catches up at once) and then hourly on
//! tokio-cron-scheduler, whose coarse timing is fine for this. Monitor slots are *not*
//! scheduled here (see `schedule`). It calls into `storage`; it owns no SQL itself.

use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;

use crate::leadership::Leadership;
use crate::storage::partitions;

/// Days of partitions kept ready beyond today, so inserts never wait on DDL.
pub const PARTITION_DAYS_AHEAD: u32 = 7;

/// Hourly, at minute 7: idempotent, so running more often than daily only narrows the
/// window in which a failed run matters.
const HOUSEKEEPING_CRON: &str = "0 7 * * * *";

/// One pass. Safe to run from several instances at once.
pub async fn run_once(pool: &PgPool, retention_days: u32) -> Result<(), sqlx::Error> {
    let created = partitions::ensure_ahead(pool, PARTITION_DAYS_AHEAD).await?;
    let dropped = partitions::drop_older_than(pool, retention_days).await?;
    if !created.is_empty() || !dropped.is_empty() {
        tracing::info!(?created, ?dropped, "housekeeping: partitions updated");
    }
    Ok(())
}

pub async fn spawn(
    pool: PgPool,
    mut leadership: watch::Receiver<Leadership>,
    retention_days: u32,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let mut scheduler = JobScheduler::new().await?;
    let job_pool = pool.clone();
    let job_leadership = leadership.clone();
    scheduler
        .add(Job::new_async(HOUSEKEEPING_CRON, move |_, _| {
            let pool = job_pool.clone();
            let leading = job_leadership.borrow().is_leader();
            Box::pin(async move {
                if leading {
                    report(run_once(&pool, retention_days).await);
                }
            })
        })?)
        .await?;
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
            report(run_once(&pool, retention_days).await);
            // Wait for this term to end before catching up again.
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = leadership.wait_for(|l| !l.is_leader()) => {}
            }
        }
        let _ = scheduler.shutdown().await;
    }))
}

fn report(result: Result<(), sqlx::Error>) {
    if let Err(err) = result {
        tracing::warn!(error = %err, "housekeeping failed; it runs again within the hour");
    }
}
