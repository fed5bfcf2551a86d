//! The outbox's SQL: taking due notifications (with each channel's rate limit and the
//! coalescing of its excess), recording how each attempt ended, queueing test messages,
//! and listing what was sent or failed.
//!
//! Taking a row is a lease: its `next_attempt_at` moves past the attempt's deadline and
//! an attempt row is written, in one transaction. A worker that dies mid-attempt leaves
//! the row due again when the lease ends, to be sent again under the same event id
//! (at least once; receivers drop duplicates by `webhook-id`).
//!
//! Order: a channel gets an incident's events in the order they happened. A row waits
//! while an earlier row of the same incident and channel is pending (being retried or
//! in flight), so "resolved" never overtakes "opened".

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::types::PgInterval;
use sqlx::{PgPool, Postgres, Transaction};

/// The NOTIFY channel the incident_events trigger (and the certificate check) signal.
pub const CHANNEL: &str = "vantage_notifications";

/// Most rows taken from one channel in one go.
const MAX_ROWS_PER_CHANNEL: i64 = 500;

/// A notification taken for one attempt.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub id: i64,
    pub event_id: String,
    pub event: String,
    pub payload: Value,
    /// This attempt's number, from 1.
    pub attempt: i32,
    pub attempt_id: i64,
    pub channel_id: i32,
    pub channel_name: String,
    pub kind: String,
    pub config: Value,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Sent {
        status_code: Option<i32>,
    },
    Failed {
        status_code: Option<i32>,
        error: String,
        /// No more attempts (a test message, or the row is older than the give-up age).
        final_attempt: bool,
        /// When the next attempt is due, if any.
        retry_in: Option<Duration>,
    },
}

pub fn interval(d: Duration) -> PgInterval {
    PgInterval {
        months: 0,
        days: 0,
        microseconds: i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
    }
}

/// How notifications are taken: how many, for how long, by whom.
#[derive(Debug, Clone)]
pub struct Claim<'a> {
    /// Most rows taken.
    pub capacity: usize,
    /// How long a taken row is left alone (the attempt's deadline and a margin).
    pub lease: Duration,
    /// The window of channels' rate limits (a minute: `rate_limit_per_minute`).
    pub rate_window: Duration,
    /// Names this process in `notification_attempts.worker`.
    pub worker: &'a str,
}

/// Takes the due notifications of every enabled channel, leasing them. Over a
/// channel's rate limit, the excess is coalesced into one summary notification, which
/// is taken too.
pub async fn claim_due(pool: &PgPool, claim: &Claim<'_>) -> Result<Vec<Claimed>, sqlx::Error> {
    let channels: Vec<i32> = sqlx::query_scalar(
        "SELECT DISTINCT n.channel_id FROM notifications n \
         JOIN notification_channels c ON c.id = n.channel_id AND c.enabled \
         WHERE n.status = 'pending' AND n.next_attempt_at <= now()",
    )
    .fetch_all(pool)
    .await?;
    let mut claimed = Vec::new();
    for channel in channels {
        if claimed.len() >= claim.capacity {
            break;
        }
        let room = claim.capacity - claimed.len();
        claimed.extend(claim_channel(pool, channel, room, claim).await?);
    }
    Ok(claimed)
}

async fn claim_channel(
    pool: &PgPool,
    channel_id: i32,
    room: usize,
    claim: &Claim<'_>,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Serialises rate-limit decisions per channel between workers.
    let limit: Option<i32> = sqlx::query_scalar(
        "SELECT rate_limit_per_minute FROM notification_channels WHERE id = $1 AND enabled FOR UPDATE",
    )
    .bind(channel_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(limit) = limit else {
        return Ok(Vec::new());
    };
    // Counting stops at the limit: nothing beyond it changes the decision.
    let used: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM notification_attempts \
         WHERE channel_id = $1 AND started_at > now() - $3 LIMIT $2) t",
    )
    .bind(channel_id)
    .bind(limit)
    .bind(interval(claim.rate_window))
    .fetch_one(&mut *tx)
    .await?;
    let budget = i64::from(limit) - used;
    if budget <= 0 {
        return Ok(Vec::new());
    }
    let room = i64::try_from(room).unwrap_or(i64::MAX);
    // With more budget than room, no coalescing can be needed now: read only what fits.
    // Otherwise read every due row, to know whether they exceed the budget.
    let rows = if budget > room {
        room
    } else {
        MAX_ROWS_PER_CHANNEL
    };
    // Due rows in order; `blocked`: an earlier row of the same incident is pending.
    let due: Vec<(i64, bool)> = sqlx::query_as(
        "SELECT n.id, EXISTS ( \
             SELECT 1 FROM notifications p \
             WHERE p.channel_id = n.channel_id AND p.incident_id = n.incident_id \
               AND p.status = 'pending' AND p.id < n.id) \
         FROM notifications n \
         WHERE n.channel_id = $1 AND n.status = 'pending' AND n.next_attempt_at <= now() \
         ORDER BY n.id LIMIT $2 FOR UPDATE OF n SKIP LOCKED",
    )
    .bind(channel_id)
    .bind(rows)
    .fetch_all(&mut *tx)
    .await?;
    let unblocked = due
        .iter()
        .filter(|(_, blocked)| !blocked)
        .map(|(id, _)| *id);
    let mut ids: Vec<i64>;
    if due.len() as i64 <= budget {
        ids = unblocked.take(room as usize).collect();
    } else {
        // More than the limit allows: the first budget-1 go alone, one summary carries
        // the rest. Nothing is dropped: every coalesced row names its summary.
        ids = unblocked.take((budget - 1).min(room) as usize).collect();
        let rest: Vec<i64> = due
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| !ids.contains(id))
            .collect();
        ids.push(coalesce(&mut tx, channel_id, &rest).await?);
    }
    let claimed = lease_rows(&mut tx, &ids, claim.lease, claim.worker).await?;
    tx.commit().await?;
    Ok(claimed)
}

/// Writes the summary of `ids` and marks them coalesced into it; returns its id.
async fn coalesce(
    tx: &mut Transaction<'_, Postgres>,
    channel_id: i32,
    ids: &[i64],
) -> Result<i64, sqlx::Error> {
    let summary: i64 = sqlx::query_scalar(
        "INSERT INTO notifications (event, channel_id, payload) \
         SELECT 'notifications.coalesced', $1, jsonb_build_object( \
             'event', 'notifications.coalesced', \
             'occurred_at', now(), \
             'count', count(*), \
             'events', jsonb_agg(n.payload || jsonb_build_object( \
                 'id', n.event_id, \
                 'subject', coalesce(n.payload #>> '{monitor,name}', n.payload #>> '{datacenter,code}')) \
                 ORDER BY n.id)) \
         FROM notifications n WHERE n.id = ANY ($2) \
         RETURNING id",
    )
    .bind(channel_id)
    .bind(ids)
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE notifications SET status = 'coalesced', coalesced_into = $1 WHERE id = ANY ($2)",
    )
    .bind(summary)
    .bind(ids)
    .execute(&mut **tx)
    .await?;
    tracing::info!(
        channel_id,
        coalesced = ids.len(),
        summary,
        "channel rate limit reached: notifications coalesced into one summary"
    );
    Ok(summary)
}

/// Takes `ids` for one attempt each: counts the attempt, writes its row, and moves
/// `next_attempt_at` to the end of the lease.
async fn lease_rows(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[i64],
    lease: Duration,
    worker: &str,
) -> Result<Vec<Claimed>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(
        "WITH taken AS ( \
             UPDATE notifications SET attempts = attempts + 1, next_attempt_at = now() + $2 \
             WHERE id = ANY ($1) AND status = 'pending' \
             RETURNING id, event_id, event, payload, attempts, channel_id), \
         tried AS ( \
             INSERT INTO notification_attempts (notification_id, channel_id, attempt, started_at, worker) \
             SELECT id, channel_id, attempts, clock_timestamp(), $3 FROM taken \
             RETURNING id, notification_id) \
         SELECT t.id, t.event_id::text AS event_id, t.event, t.payload, t.attempts AS attempt, \
                a.id AS attempt_id, t.channel_id, c.name AS channel_name, c.kind, c.config \
         FROM taken t \
         JOIN tried a ON a.notification_id = t.id \
         JOIN notification_channels c ON c.id = t.channel_id \
         ORDER BY t.id",
    )
    .bind(ids)
    .bind(interval(lease))
    .bind(worker)
    .fetch_all(&mut **tx)
    .await
}

/// Takes one notification by id (for `vantage notify test`), whatever its due time.
pub async fn claim_one(
    pool: &PgPool,
    id: i64,
    lease: Duration,
    worker: &str,
) -> Result<Option<Claimed>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let claimed = lease_rows(&mut tx, &[id], lease, worker).await?;
    tx.commit().await?;
    Ok(claimed.into_iter().next())
}

/// Records how the attempt `claimed` ended. `retry_delay`: when to try again after a
/// failure; the row fails for good when that would be past `give_up_after` from its
/// creation, or when it is a test message.
pub async fn record(
    pool: &PgPool,
    claimed: &Claimed,
    result: Result<Option<i32>, (Option<i32>, String)>,
    took: Duration,
    retry_delay: Duration,
    give_up_after: Duration,
) -> Result<Outcome, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let (status_code, error) = match &result {
        Ok(code) => (*code, None),
        Err((code, error)) => (*code, Some(error.as_str())),
    };
    sqlx::query(
        "UPDATE notification_attempts SET duration_ms = $2, status_code = $3, error = $4 WHERE id = $1",
    )
    .bind(claimed.attempt_id)
    .bind(took.as_secs_f64() * 1000.0)
    .bind(status_code)
    .bind(error)
    .execute(&mut *tx)
    .await?;
    let outcome = match result {
        Ok(status_code) => {
            sqlx::query(
                "UPDATE notifications SET status = 'sent', sent_at = now(), last_error = NULL WHERE id = $1",
            )
            .bind(claimed.id)
            .execute(&mut *tx)
            .await?;
            Outcome::Sent { status_code }
        }
        Err((status_code, error)) => {
            let status: String = sqlx::query_scalar(
                "UPDATE notifications SET last_error = $2, next_attempt_at = now() + $3, \
                   status = CASE WHEN event = 'test' OR created_at + $4 <= now() + $3 \
                                 THEN 'failed' ELSE 'pending' END \
                 WHERE id = $1 RETURNING status",
            )
            .bind(claimed.id)
            .bind(&error)
            .bind(interval(retry_delay))
            .bind(interval(give_up_after))
            .fetch_one(&mut *tx)
            .await?;
            let final_attempt = status == "failed";
            Outcome::Failed {
                status_code,
                error,
                final_attempt,
                retry_in: (!final_attempt).then_some(retry_delay),
            }
        }
    };
    tx.commit().await?;
    Ok(outcome)
}

/// When the next notification that could be taken is due (rows waiting behind an
/// earlier one of their incident are not counted: that one's outcome wakes the worker).
pub async fn next_due(pool: &PgPool) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT min(n.next_attempt_at) FROM notifications n \
         JOIN notification_channels c ON c.id = n.channel_id AND c.enabled \
         WHERE n.status = 'pending' AND NOT EXISTS ( \
             SELECT 1 FROM notifications p \
             WHERE p.channel_id = n.channel_id AND p.incident_id = n.incident_id \
               AND p.status = 'pending' AND p.id < n.id)",
    )
    .fetch_one(pool)
    .await
}

/// Queues a `test` notification to the channel named `channel`, not yet due (the
/// caller sends it at once through [`claim_one`]). `None` when no such channel exists.
pub async fn queue_test(pool: &PgPool, channel: &str) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO notifications (event, channel_id, payload, next_attempt_at) \
         SELECT 'test', id, jsonb_build_object('event', 'test', 'occurred_at', now(), 'channel', name), \
                now() + interval '1 hour' \
         FROM notification_channels WHERE name = $1 \
         RETURNING id",
    )
    .bind(channel)
    .fetch_optional(pool)
    .await
}

pub async fn channel_names(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT name FROM notification_channels ORDER BY name")
        .fetch_all(pool)
        .await
}

/// Queues reminders and certificate notices that have come due; returns how many.
pub async fn sweep(pool: &PgPool) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT vantage_queue_reminders() + vantage_queue_certificate_notices()")
        .fetch_one(pool)
        .await
}

/// One line of `vantage notifications`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Listed {
    pub id: i64,
    pub created_at: DateTime<Utc>,
    pub channel: String,
    pub event: String,
    pub status: String,
    pub attempts: i32,
    pub event_id: String,
    pub detail: Option<String>,
}

/// The latest notifications (only failed ones with `failed_only`), newest first.
pub async fn list(
    pool: &PgPool,
    failed_only: bool,
    limit: i64,
) -> Result<Vec<Listed>, sqlx::Error> {
    sqlx::query_as(
        "SELECT n.id, n.created_at, c.name AS channel, n.event, n.status, n.attempts, \
                n.event_id::text AS event_id, \
                CASE n.status \
                    WHEN 'coalesced' THEN 'in summary #' || n.coalesced_into \
                    WHEN 'pending' THEN concat_ws('; ', 'next attempt ' || to_char(n.next_attempt_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC', n.last_error) \
                    ELSE n.last_error END AS detail \
         FROM notifications n JOIN notification_channels c ON c.id = n.channel_id \
         WHERE NOT $1 OR n.status = 'failed' \
         ORDER BY n.id DESC LIMIT $2",
    )
    .bind(failed_only)
    .bind(limit)
    .fetch_all(pool)
    .await
}
