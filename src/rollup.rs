//! Hourly and daily rollups of `api_heartbeats`, for dashboards and queries over long
//! ranges (the tables and the functions that read them are in
//! `sql/migrations/20261125000200_heartbeat_rollups.sql`).
//!
//! [`refresh`] recomputes every UTC hour that a lookback window touches, from the raw
//! heartbeats, and then every UTC day those hours belong to, from the hourly rows. It
//! is idempotent (`INSERT ... ON CONFLICT DO UPDATE`), so running it again, or from two
//! leaders at once, is harmless; and because it recomputes whole hours rather than
//! appending, heartbeats that arrive late (replayed from a writer's spool after a
//! database outage) are counted by the next refresh whose window still covers their
//! slot. Pick a lookback longer than the longest outage the spool rides out.
//!
//! This module owns the two rollup tables and nothing else: it reads `api_heartbeats`
//! and never writes it. Scheduling is the caller's (the leader's housekeeping).

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use sqlx::PgPool;

use crate::storage::TxLimits;

/// A lookback that covers the hour that just ended plus a couple of hours of late rows.
pub const DEFAULT_LOOKBACK: Duration = Duration::from_secs(3 * 3600);

/// Bounds on a periodic refresh ([`refresh`], [`refresh_datacenter`]): the leaders of
/// all datacenters queue on one lock, so the wait is generous; the worst case (60 s of
/// waiting plus two statements of 90 s) stays under the five minutes between runs.
pub const LIMITS: TxLimits = TxLimits {
    lock_timeout: Duration::from_secs(60),
    statement_timeout: Duration::from_secs(90),
};

/// Recomputes the rollups of every datacenter for the hours touched by the last
/// `lookback` (rounded down to the start of its UTC hour) up to now. Returns how many
/// hourly and daily rows were inserted or changed; hours whose heartbeats did not
/// change since the last refresh are not rewritten.
pub async fn refresh(pool: &PgPool, lookback: Duration) -> Result<u64, sqlx::Error> {
    refresh_within(pool, since(lookback), None, None, Some(LIMITS)).await
}

/// [`refresh`] for one datacenter's heartbeats only: lets each datacenter's leader
/// roll up its own rows instead of every leader doing all of them.
pub async fn refresh_datacenter(
    pool: &PgPool,
    datacenter_id: i32,
    lookback: Duration,
) -> Result<u64, sqlx::Error> {
    refresh_within(
        pool,
        since(lookback),
        None,
        Some(datacenter_id),
        Some(LIMITS),
    )
    .await
}

/// Recomputes the rollups for the hours overlapping `[from, to)` (`to = None`: up to
/// the newest heartbeat), for one datacenter or all. Use it to backfill after an
/// upgrade or a long outage, e.g. `refresh_range(pool, now - 30 days, None, None)`.
/// A backfill may take long: it runs without [`LIMITS`].
pub async fn refresh_range(
    pool: &PgPool,
    from: DateTime<Utc>,
    to: Option<DateTime<Utc>>,
    datacenter_id: Option<i32>,
) -> Result<u64, sqlx::Error> {
    refresh_within(pool, from, to, datacenter_id, None).await
}

async fn refresh_within(
    pool: &PgPool,
    from: DateTime<Utc>,
    to: Option<DateTime<Utc>>,
    datacenter_id: Option<i32>,
    limits: Option<TxLimits>,
) -> Result<u64, sqlx::Error> {
    let from = floor_hour(from);
    let to = to.map(ceil_hour);
    let mut tx = pool.begin().await?;
    if let Some(limits) = limits {
        limits.apply(&mut tx).await?;
    }
    // One refresh at a time: two leaders upserting the same rows in different orders
    // could deadlock; the second one waits and then finds little left to change.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('vantage.rollups'))")
        .execute(&mut *tx)
        .await?;
    let hourly = sqlx::query(&REFRESH_HOURLY)
        .bind(from)
        .bind(to)
        .bind(datacenter_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let daily = sqlx::query(REFRESH_DAILY)
        .bind(floor_day(from))
        .bind(to)
        .bind(datacenter_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    tracing::debug!(%from, ?to, ?datacenter_id, hourly, daily, "rollups refreshed");
    Ok(hourly + daily)
}

fn since(lookback: Duration) -> DateTime<Utc> {
    let lookback = TimeDelta::from_std(lookback).unwrap_or(TimeDelta::MAX);
    Utc::now()
        .checked_sub_signed(lookback)
        .unwrap_or(DateTime::UNIX_EPOCH)
        .max(DateTime::UNIX_EPOCH)
}

fn floor_hour(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(TimeDelta::hours(1)).unwrap_or(t)
}

fn ceil_hour(t: DateTime<Utc>) -> DateTime<Utc> {
    let floor = floor_hour(t);
    if floor == t {
        t
    } else {
        floor + TimeDelta::hours(1)
    }
}

fn floor_day(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(TimeDelta::days(1)).unwrap_or(t)
}

/// The phases with per-hour statistics, as column prefixes (`<phase>_ms_*`).
const PHASES: [&str; 6] = ["dns", "connect", "tls", "ttfb", "transfer", "total"];

/// `$1` window start (an hour), `$2` window end (an hour, or NULL for open), `$3`
/// datacenter id or NULL. Built once from [`PHASES`]: six phases times seven
/// statistics are easier to check as one template than as 42 hand-written lines.
static REFRESH_HOURLY: LazyLock<String> = LazyLock::new(|| {
    let mut select = String::new();
    let mut columns = String::new();
    let mut update = String::new();
    for phase in PHASES {
        let c = format!("h.{phase}_ms");
        select.push_str(&format!(
            "count({c}) FILTER (WHERE h.success)::int,\n\
             sum({c}) FILTER (WHERE h.success), min({c}) FILTER (WHERE h.success),\n\
             max({c}) FILTER (WHERE h.success),\n\
             percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY {c})\n\
             FILTER (WHERE h.success) AS {phase}_p,\n"
        ));
        for stat in ["count", "sum", "min", "max"] {
            columns.push_str(&format!("{phase}_ms_{stat}, "));
        }
        columns.push_str(&format!("{phase}_ms_p50, {phase}_ms_p95, {phase}_ms_p99, "));
        for stat in ["count", "sum", "min", "max", "p50", "p95", "p99"] {
            update.push_str(&format!("{phase}_ms_{stat} = EXCLUDED.{phase}_ms_{stat}, "));
        }
    }
    // The percentile arrays are unpacked in the outer SELECT: one sort per phase.
    let unpack: String = PHASES
        .iter()
        .map(|p| {
            format!(
                "a.{p}_ms_count, a.{p}_ms_sum, a.{p}_ms_min, a.{p}_ms_max, \
                 a.{p}_p[1], a.{p}_p[2], a.{p}_p[3], "
            )
        })
        .collect();
    let named: String = PHASES
        .iter()
        .map(|p| format!("{p}_ms_count, {p}_ms_sum, {p}_ms_min, {p}_ms_max, {p}_p, "))
        .collect();
    format!(
        r#"
WITH window_rows AS (
    SELECT * FROM api_heartbeats h
    WHERE h.scheduled_at >= $1
      AND ($2::timestamptz IS NULL OR h.scheduled_at < $2)
      AND ($3::int IS NULL OR h.datacenter_id = $3)
),
agg AS (
    SELECT h.monitor_id, h.datacenter_id, date_trunc('hour', h.scheduled_at, 'UTC') AS hour,
           count(*)::int AS probes,
           count(*) FILTER (WHERE h.success)::int AS successes,
           count(*) FILTER (WHERE h.status = 'up')::int AS up_count,
           count(*) FILTER (WHERE h.status = 'warning')::int AS warning_count,
           count(*) FILTER (WHERE h.status = 'critical')::int AS critical_count,
           count(*) FILTER (WHERE h.status = 'down')::int AS down_count,
           {select}
           count(h.schedule_lag_ms)::int AS schedule_lag_ms_count,
           sum(h.schedule_lag_ms) AS schedule_lag_ms_sum,
           max(h.schedule_lag_ms) AS schedule_lag_ms_max,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY h.schedule_lag_ms) AS schedule_lag_ms_p95,
           (array_agg(h.tls_cert_expires_at ORDER BY h.scheduled_at DESC)
                FILTER (WHERE h.tls_cert_expires_at IS NOT NULL))[1] AS tls_cert_expires_at
    FROM window_rows h
    GROUP BY 1, 2, 3
),
agg_named (monitor_id, datacenter_id, hour, probes, successes,
           up_count, warning_count, critical_count, down_count,
           {named}
           schedule_lag_ms_count, schedule_lag_ms_sum, schedule_lag_ms_max,
           schedule_lag_ms_p95, tls_cert_expires_at) AS (SELECT * FROM agg),
errs AS (
    SELECT e.monitor_id, e.datacenter_id, e.hour, jsonb_object_agg(e.error_kind, e.n) AS errors
    FROM (
        SELECT h.monitor_id, h.datacenter_id, date_trunc('hour', h.scheduled_at, 'UTC') AS hour,
               h.error_kind, count(*) AS n
        FROM window_rows h
        WHERE h.error_kind IS NOT NULL
        GROUP BY 1, 2, 3, 4
    ) e
    GROUP BY 1, 2, 3
)
INSERT INTO api_heartbeats_hourly AS t (
    monitor_id, datacenter_id, hour, probes, successes,
    up_count, warning_count, critical_count, down_count, errors,
    {columns}
    schedule_lag_ms_count, schedule_lag_ms_sum, schedule_lag_ms_max, schedule_lag_ms_p95,
    tls_cert_expires_at, refreshed_at)
SELECT a.monitor_id, a.datacenter_id, a.hour, a.probes, a.successes,
       a.up_count, a.warning_count, a.critical_count, a.down_count,
       coalesce(e.errors, '{{}}'::jsonb),
       {unpack}
       a.schedule_lag_ms_count, a.schedule_lag_ms_sum, a.schedule_lag_ms_max,
       a.schedule_lag_ms_p95, a.tls_cert_expires_at, now()
FROM agg_named a
LEFT JOIN errs e USING (monitor_id, datacenter_id, hour)
ON CONFLICT (monitor_id, datacenter_id, hour) DO UPDATE SET
    probes = EXCLUDED.probes, successes = EXCLUDED.successes,
    up_count = EXCLUDED.up_count, warning_count = EXCLUDED.warning_count,
    critical_count = EXCLUDED.critical_count, down_count = EXCLUDED.down_count,
    errors = EXCLUDED.errors,
    {update}
    schedule_lag_ms_count = EXCLUDED.schedule_lag_ms_count,
    schedule_lag_ms_sum = EXCLUDED.schedule_lag_ms_sum,
    schedule_lag_ms_max = EXCLUDED.schedule_lag_ms_max,
    schedule_lag_ms_p95 = EXCLUDED.schedule_lag_ms_p95,
    tls_cert_expires_at = EXCLUDED.tls_cert_expires_at,
    refreshed_at = EXCLUDED.refreshed_at
-- Heartbeats are only ever inserted (never updated), so an hour whose counts are
-- unchanged is unchanged: skip rewriting it (no dead tuples, and the row count means
-- "changed"). Counts, not float sums: those may differ in the last bit with the order
-- in which a plan adds them up.
WHERE (t.probes, t.successes, t.up_count, t.warning_count, t.critical_count, t.down_count)
      IS DISTINCT FROM
      (EXCLUDED.probes, EXCLUDED.successes, EXCLUDED.up_count, EXCLUDED.warning_count,
       EXCLUDED.critical_count, EXCLUDED.down_count)
"#
    )
});

/// `$1` first day (a UTC midnight), `$2` window end or NULL, `$3` datacenter or NULL.
/// Days are summed from the hourly rows just refreshed.
const REFRESH_DAILY: &str = r#"
INSERT INTO api_heartbeats_daily AS t (
    monitor_id, datacenter_id, day, probes, successes,
    up_count, warning_count, critical_count, down_count, refreshed_at)
SELECT h.monitor_id, h.datacenter_id, date_trunc('day', h.hour, 'UTC'),
       sum(h.probes), sum(h.successes),
       sum(h.up_count), sum(h.warning_count), sum(h.critical_count), sum(h.down_count), now()
FROM api_heartbeats_hourly h
WHERE h.hour >= $1
  AND ($2::timestamptz IS NULL OR h.hour < $2)
  AND ($3::int IS NULL OR h.datacenter_id = $3)
GROUP BY 1, 2, 3
ON CONFLICT (monitor_id, datacenter_id, day) DO UPDATE SET
    probes = EXCLUDED.probes, successes = EXCLUDED.successes,
    up_count = EXCLUDED.up_count, warning_count = EXCLUDED.warning_count,
    critical_count = EXCLUDED.critical_count, down_count = EXCLUDED.down_count,
    refreshed_at = EXCLUDED.refreshed_at
WHERE (t.probes, t.successes, t.up_count, t.warning_count, t.critical_count, t.down_count)
      IS DISTINCT FROM
      (EXCLUDED.probes, EXCLUDED.successes, EXCLUDED.up_count, EXCLUDED.warning_count,
       EXCLUDED.critical_count, EXCLUDED.down_count)
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn windows_are_whole_hours_and_days() {
        let t = Utc.with_ymd_and_hms(2026, 11, 25, 13, 42, 7).unwrap();
        assert_eq!(
            floor_hour(t),
            Utc.with_ymd_and_hms(2026, 11, 25, 13, 0, 0).unwrap()
        );
        assert_eq!(
            ceil_hour(t),
            Utc.with_ymd_and_hms(2026, 11, 25, 14, 0, 0).unwrap()
        );
        let h = Utc.with_ymd_and_hms(2026, 11, 25, 13, 0, 0).unwrap();
        assert_eq!(ceil_hour(h), h);
        assert_eq!(
            floor_day(t),
            Utc.with_ymd_and_hms(2026, 11, 25, 0, 0, 0).unwrap()
        );
    }

    #[test]
    fn a_huge_lookback_does_not_overflow() {
        assert_eq!(since(Duration::MAX), DateTime::UNIX_EPOCH);
    }

    #[test]
    fn the_hourly_statement_names_every_phase_column() {
        for phase in PHASES {
            for stat in ["count", "sum", "min", "max", "p50", "p95", "p99"] {
                let col = format!("{phase}_ms_{stat}");
                assert!(REFRESH_HOURLY.contains(&col), "{col} missing");
            }
        }
    }
}
