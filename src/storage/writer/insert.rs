//! How one batch reaches Postgres: a plain insert first, again skipping stored keys
//! if it meets one, creating a missing daily partition, and setting aside rows
//! Postgres refuses as invalid so they cannot block the rest. Every failure left is
//! one to retry later; the caller ([`super::state`]) decides when.
//!
//! It owns no state between batches; the statement itself comes from `columns`.

use chrono::NaiveDate;
use futures_util::future::BoxFuture;
use sqlx::PgPool;

use super::columns::{self, OnConflict};
use crate::storage::{partitions, redact_error};
use crate::Heartbeat;

/// What storing one batch did.
#[derive(Default)]
pub(super) struct Inserted {
    /// How long the statement(s) took.
    pub took: std::time::Duration,
    pub inserted: u64,
    pub duplicates: u64,
    pub partitions: Vec<String>,
    pub rejected: Vec<(Heartbeat, String)>,
}

/// Inserts `rows`, creating missing partitions, and isolating rows Postgres refuses as
/// invalid (so one bad row cannot block the others forever). An error means the batch
/// should be retried later (Postgres unreachable, overloaded, schema missing).
pub(super) fn insert_batch<'a>(
    pool: &'a PgPool,
    rows: &'a [Heartbeat],
) -> BoxFuture<'a, Result<Inserted, sqlx::Error>> {
    Box::pin(async move {
        match insert_creating_partitions(pool, rows).await {
            Ok((inserted, partitions)) => Ok(Inserted {
                inserted,
                duplicates: rows.len() as u64 - inserted,
                partitions,
                ..Inserted::default()
            }),
            Err(err) if is_invalid_data(&err) && rows.len() == 1 => Ok(Inserted {
                rejected: vec![(rows[0].clone(), redact_error(&err))],
                ..Inserted::default()
            }),
            Err(err) if is_invalid_data(&err) => {
                let (left, right) = rows.split_at(rows.len() / 2);
                let mut a = insert_batch(pool, left).await?;
                let b = insert_batch(pool, right).await?;
                a.inserted += b.inserted;
                a.duplicates += b.duplicates;
                a.partitions.extend(b.partitions);
                a.rejected.extend(b.rejected);
                Ok(a)
            }
            Err(err) => Err(err),
        }
    })
}

/// Tries a plain INSERT first: almost every batch is new, and `ON CONFLICT DO NOTHING`
/// costs every row a speculative insertion (an extra primary-key probe), which cut
/// ingest by a quarter (BENCHMARKS.md). A batch that meets a stored key (a leader
/// overlap, a replay after an insert whose answer was lost) fails as a whole, storing
/// nothing, and goes again skipping the duplicates.
async fn insert_creating_partitions(
    pool: &PgPool,
    rows: &[Heartbeat],
) -> Result<(u64, Vec<String>), sqlx::Error> {
    let mut created = Vec::new();
    let mut attempt = 0;
    let mut on_conflict = OnConflict::Fail;
    loop {
        match columns::insert(on_conflict, rows).execute(pool).await {
            Ok(done) => return Ok((done.rows_affected(), created)),
            Err(err) if is_duplicate_key(&err) && on_conflict == OnConflict::Fail => {
                on_conflict = OnConflict::Skip;
            }
            Err(err) if is_missing_partition(&err) && attempt < 3 => {
                attempt += 1;
                let mut days: Vec<NaiveDate> =
                    rows.iter().map(|r| r.scheduled_at.date_naive()).collect();
                days.sort();
                days.dedup();
                created.extend(partitions::ensure_days(pool, &days).await?);
            }
            Err(err) => return Err(err),
        }
    }
}

fn is_missing_partition(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db)
        if db.code().as_deref() == Some("23514") && db.message().contains("no partition"))
}

fn is_duplicate_key(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

/// Data exceptions (22xxx) and integrity violations (23xxx): retrying cannot help.
fn is_invalid_data(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            (code.starts_with("22") || code.starts_with("23")) && !is_missing_partition(err)
        }
        sqlx::Error::Encode(_) => true,
        _ => false,
    }
}
