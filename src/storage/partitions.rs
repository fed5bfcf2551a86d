//! Daily partitions of `api_heartbeats`: created ahead of time (by `migrate` and the
//! leader's daily housekeeping), created on demand when a heartbeat's day has none
//! (the writer never drops a row for want of a partition), and dropped whole when
//! older than the retention. Days are UTC days; partitions are named
//! `api_heartbeats_YYYYMMDD`. The SQL functions doing the work live in the migration,
//! so that any client (or a DBA's psql) does the same thing.
//!
//! Every call runs in a transaction under [`LIMITS`]: creating or dropping a partition
//! locks `api_heartbeats`, and a DDL statement waiting for that lock would hold up every
//! insert queued behind it.

use std::time::Duration;

use chrono::NaiveDate;
use sqlx::PgPool;

use super::TxLimits;

/// A partition statement waits at most 5 s for its locks (inserts queue behind it
/// meanwhile) and runs at most 30 s; a run that gives up is retried by the next
/// housekeeping or the next insert needing the day.
pub const LIMITS: TxLimits = TxLimits {
    lock_timeout: Duration::from_secs(5),
    statement_timeout: Duration::from_secs(30),
};

/// Runs `sql` (binding `arg`) in a transaction under [`LIMITS`]; returns the names it
/// yields.
async fn names<'q, A>(pool: &PgPool, sql: &'q str, arg: A) -> Result<Vec<String>, sqlx::Error>
where
    A: 'q + Send + sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    let mut tx = pool.begin().await?;
    LIMITS.apply(&mut tx).await?;
    let names = sqlx::query_scalar(sql)
        .bind(arg)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(names)
}

/// Makes sure partitions exist for today and the next `days_ahead` days (UTC, by the
/// database's clock); returns the names it created.
pub async fn ensure_ahead(pool: &PgPool, days_ahead: u32) -> Result<Vec<String>, sqlx::Error> {
    names(
        pool,
        "SELECT 'api_heartbeats_' || to_char(d, 'YYYYMMDD')
         FROM generate_series(0, $1) AS i,
              LATERAL (SELECT (now() AT TIME ZONE 'UTC')::date + i AS d) day
         WHERE vantage_ensure_heartbeat_partition(d)
         ORDER BY d",
        days_ahead as i32,
    )
    .await
}

/// Makes sure partitions exist for each of `days`; returns the names it created.
pub async fn ensure_days(pool: &PgPool, days: &[NaiveDate]) -> Result<Vec<String>, sqlx::Error> {
    names(
        pool,
        "SELECT 'api_heartbeats_' || to_char(d, 'YYYYMMDD')
         FROM unnest($1::date[]) AS d
         WHERE vantage_ensure_heartbeat_partition(d)
         ORDER BY d",
        days,
    )
    .await
}

/// Drops every partition whose whole day lies more than `retention_days` days before
/// today (UTC): with 30, today and the 30 days before it are kept. Returns the names
/// dropped.
pub async fn drop_older_than(
    pool: &PgPool,
    retention_days: u32,
) -> Result<Vec<String>, sqlx::Error> {
    names(
        pool,
        "SELECT vantage_drop_heartbeat_partitions($1)",
        retention_days as i32,
    )
    .await
}

/// The existing partitions, oldest first.
pub async fn list(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT c.relname::text
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'api_heartbeats'::regclass
         ORDER BY c.relname",
    )
    .fetch_all(pool)
    .await
}

/// What one housekeeping run did.
#[derive(Debug, Clone, Default)]
pub struct Housekeeping {
    pub created: Vec<String>,
    pub dropped: Vec<String>,
}

/// The leader's daily housekeeping: partitions for the next
/// [`super::PARTITION_DAYS_AHEAD`] days, and retention.
pub async fn housekeeping(pool: &PgPool, retention_days: u32) -> Result<Housekeeping, sqlx::Error> {
    let created = ensure_ahead(pool, super::PARTITION_DAYS_AHEAD).await?;
    let dropped = drop_older_than(pool, retention_days).await?;
    if !created.is_empty() || !dropped.is_empty() {
        tracing::info!(
            ?created,
            ?dropped,
            retention_days,
            "heartbeat partitions maintained"
        );
    }
    Ok(Housekeeping { created, dropped })
}
