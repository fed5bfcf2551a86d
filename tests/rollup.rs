//! The hourly and daily rollups agree with the raw heartbeats they summarise, refresh
//! idempotently, and pick up heartbeats that arrive late.

mod support;

use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use sqlx::PgPool;
use support::pg::TestDb;
use vantage::rollup;

/// Two monitors in two datacenters, a heartbeat every 5 minutes for the last 3 days
/// (~4% failed, with error kinds), up to `now` rounded down to 5 minutes.
async fn seed(pool: &PgPool) -> DateTime<Utc> {
    let now = Utc::now().duration_trunc(TimeDelta::minutes(5)).unwrap();
    let days: Vec<_> = (0..=4)
        .map(|d| (now - TimeDelta::days(d)).date_naive())
        .collect();
    vantage::storage::partitions::ensure_days(pool, &days)
        .await
        .unwrap();
    sqlx::query(
        r#"
        INSERT INTO api_heartbeats (monitor_id, datacenter_id, scheduled_at, executed_at,
            status, success, dns_ms, connect_ms, tls_ms, ttfb_ms, transfer_ms, total_ms,
            schedule_lag_ms, tls_cert_expires_at, error_kind)
        SELECT m, d, slot, slot,
               CASE WHEN r < 4 THEN 'down' WHEN r < 10 THEN 'warning' ELSE 'up' END, r >= 4,
               1, 2, 3, 10 + r, 0.5, CASE WHEN r < 4 THEN 5000 ELSE 16.5 + r END, r / 10.0,
               slot + interval '30 days',
               CASE WHEN r < 4 THEN (ARRAY['timeout', 'dns_nxdomain'])[1 + r % 2] END
        FROM generate_series(1, 2) m, generate_series(1, 2) d,
             generate_series($1::timestamptz - interval '3 days', $1::timestamptz, interval '5 minutes') slot,
             LATERAL (SELECT abs(hashtext(m || '/' || d || '/' || slot::text)) % 100 AS r) x
        "#,
    )
    .bind(now)
    .execute(pool)
    .await
    .unwrap();
    now
}

#[tokio::test]
async fn hourly_rows_match_the_raw_heartbeats() {
    let db = TestDb::fresh().await;
    let now = seed(&db.pool).await;
    let written = rollup::refresh(&db.pool, Duration::from_secs(4 * 86_400))
        .await
        .unwrap();
    assert!(written > 0);

    // Every (monitor, datacenter, hour): counts, percentiles and errors as computed
    // straight from the raw rows.
    let mismatches: i64 = sqlx::query_scalar(
        r#"
        WITH raw AS (
            SELECT monitor_id, datacenter_id, date_trunc('hour', scheduled_at, 'UTC') AS hour,
                   count(*) AS probes, count(*) FILTER (WHERE success) AS successes,
                   count(*) FILTER (WHERE status = 'down') AS down_count,
                   percentile_cont(0.95) WITHIN GROUP (ORDER BY total_ms) FILTER (WHERE success) AS p95,
                   avg(ttfb_ms) FILTER (WHERE success) AS ttfb_mean,
                   count(*) FILTER (WHERE error_kind = 'timeout') AS timeouts
            FROM api_heartbeats GROUP BY 1, 2, 3
        )
        SELECT count(*)
        FROM raw FULL JOIN api_heartbeats_hourly h USING (monitor_id, datacenter_id, hour)
        WHERE h.probes IS DISTINCT FROM raw.probes::int
           OR h.successes IS DISTINCT FROM raw.successes::int
           OR h.down_count IS DISTINCT FROM raw.down_count::int
           OR h.total_ms_p95 IS DISTINCT FROM raw.p95
           OR abs(h.ttfb_ms_sum / h.ttfb_ms_count - raw.ttfb_mean) > 1e-9
           OR coalesce((h.errors ->> 'timeout')::bigint, 0) <> raw.timeouts
        "#,
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        mismatches, 0,
        "hourly rows differing from the raw heartbeats"
    );

    let daily_mismatches: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (
             SELECT monitor_id, datacenter_id, date_trunc('day', scheduled_at, 'UTC') AS day,
                    count(*)::int AS probes, count(*) FILTER (WHERE success)::int AS successes
             FROM api_heartbeats GROUP BY 1, 2, 3) raw
         FULL JOIN api_heartbeats_daily d USING (monitor_id, datacenter_id, day)
         WHERE (d.probes, d.successes) IS DISTINCT FROM (raw.probes, raw.successes)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        daily_mismatches, 0,
        "daily rows differing from the raw heartbeats"
    );
    let _ = now;
}

/// The window `vantage_status_counts` promises for a range: exact up to a day, whole
/// hours up to a week, whole UTC days beyond.
fn promised_window(from: DateTime<Utc>, to: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let widen = |unit: TimeDelta| {
        let lo = from.duration_trunc(unit).unwrap();
        let hi = to.duration_trunc(unit).unwrap();
        (lo, if hi < to { hi + unit } else { hi })
    };
    if to - from <= TimeDelta::days(1) {
        (from, to)
    } else if to - from <= TimeDelta::days(7) {
        widen(TimeDelta::hours(1))
    } else {
        widen(TimeDelta::days(1))
    }
}

#[tokio::test]
async fn status_counts_match_the_raw_heartbeats_at_the_precision_they_promise() {
    let db = TestDb::fresh().await;
    let now = seed(&db.pool).await;
    rollup::refresh(&db.pool, Duration::from_secs(4 * 86_400))
        .await
        .unwrap();
    let ranges = [
        (now - TimeDelta::minutes(17), now),
        (now - TimeDelta::minutes(150) - TimeDelta::seconds(7), now),
        (
            now - TimeDelta::hours(23) - TimeDelta::minutes(5),
            now - TimeDelta::minutes(3),
        ),
        (
            now - TimeDelta::days(2) - TimeDelta::minutes(133),
            now - TimeDelta::minutes(42),
        ),
        (now - TimeDelta::days(5), now + TimeDelta::hours(1)),
        (now - TimeDelta::days(10) - TimeDelta::minutes(7), now),
    ];
    for (from, to) in ranges {
        let (lo, hi) = promised_window(from, to);
        let (via_rollups, raw): (i64, i64) = sqlx::query_as(
            "SELECT
                 (SELECT coalesce(sum(probes * 1000 + successes), 0)::bigint
                  FROM vantage_status_counts($1, $2)),
                 (SELECT (count(*) * 1000 + count(*) FILTER (WHERE success))::bigint
                  FROM api_heartbeats WHERE scheduled_at >= $3 AND scheduled_at < $4)",
        )
        .bind(from)
        .bind(to)
        .bind(lo)
        .bind(hi)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(
            via_rollups, raw,
            "range {from} .. {to} (promised {lo} .. {hi})"
        );
    }
}

#[tokio::test]
async fn refreshing_again_changes_nothing_until_a_late_heartbeat_arrives() {
    let db = TestDb::fresh().await;
    let now = seed(&db.pool).await;
    let lookback = Duration::from_secs(6 * 3600);
    assert!(rollup::refresh(&db.pool, lookback).await.unwrap() > 0);
    assert_eq!(
        rollup::refresh(&db.pool, lookback).await.unwrap(),
        0,
        "a second refresh rewrites nothing"
    );

    // A heartbeat replayed from a spool, for a slot two hours ago that had none.
    let slot = now - TimeDelta::hours(2) + TimeDelta::seconds(90);
    sqlx::query(
        "INSERT INTO api_heartbeats (monitor_id, datacenter_id, scheduled_at, executed_at,
             status, success, total_ms, error_kind)
         VALUES (1, 1, $1, $1, 'down', false, 10000, 'timeout')",
    )
    .bind(slot)
    .execute(&db.pool)
    .await
    .unwrap();
    // The hour and the day it belongs to.
    assert_eq!(rollup::refresh(&db.pool, lookback).await.unwrap(), 2);
    let (probes, timeouts): (i32, Option<String>) = sqlx::query_as(
        "SELECT probes, errors ->> 'timeout' FROM api_heartbeats_hourly
         WHERE monitor_id = 1 AND datacenter_id = 1 AND hour = date_trunc('hour', $1::timestamptz, 'UTC')",
    )
    .bind(slot)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let raw: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM api_heartbeats WHERE monitor_id = 1 AND datacenter_id = 1
         AND date_trunc('hour', scheduled_at, 'UTC') = date_trunc('hour', $1::timestamptz, 'UTC')",
    )
    .bind(slot)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(probes as i64, raw);
    assert!(timeouts.is_some());
}

#[tokio::test]
async fn a_datacenter_refresh_touches_only_that_datacenter() {
    let db = TestDb::fresh().await;
    seed(&db.pool).await;
    rollup::refresh_datacenter(&db.pool, 2, Duration::from_secs(3600 * 5))
        .await
        .unwrap();
    let dcs: Vec<i32> =
        sqlx::query_scalar("SELECT DISTINCT datacenter_id FROM api_heartbeats_hourly")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(dcs, [2]);
}

/// The monitors and datacenters of `seed` (monitor 2 tagged `db`) and three one-off
/// maintenance windows, relative to `now`: monitor 1 everywhere from 10 h to 8 h ago,
/// datacenter 2 from 9 h to 7 h ago (overlapping the first for monitor 1 in
/// datacenter 2), and `db` in datacenter 1 from 9 h to 8 h 30 min ago.
async fn seed_maintenance(pool: &PgPool, now: DateTime<Utc>) {
    sqlx::raw_sql(
        "INSERT INTO datacenters (id, code, name) VALUES (1, 'va', 'Virginia'), (2, 'lon', 'London');
         INSERT INTO schedules (id, name, interval_seconds, timeout_ms) VALUES (1, '5m', 300, 10000);
         INSERT INTO api_monitors (id, name, url, schedule_id, all_datacenters, tags) VALUES
             (1, 'api', 'https://api.example.com/', 1, true, '{}'),
             (2, 'db', 'https://db.example.com/', 1, true, '{db}');",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO maintenance_windows (reason, monitor_ids, tags, datacenter_ids, starts_at, ends_at) VALUES
             ('api deploy', '{1}', '{}', '{}', $1 - interval '10 hours', $1 - interval '8 hours'),
             ('lon network', '{}', '{}', '{2}', $1 - interval '9 hours', $1 - interval '7 hours'),
             ('db upgrade', '{}', '{db}', '{1}', $1 - interval '9 hours', $1 - interval '8 hours 30 minutes')",
    )
    .bind(now)
    .execute(pool)
    .await
    .unwrap();
}

type Counts = (i32, i32, i64, i64, i64, i64, i64, i64, i64);

async fn counts_excluding_maintenance(
    pool: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<Counts> {
    sqlx::query_as(
        "SELECT monitor_id, datacenter_id, probes, successes, up_count, warning_count,
                critical_count, down_count, maintenance_probes
         FROM vantage_status_counts_excluding_maintenance($1, $2)
         ORDER BY 1, 2",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn status_counts_leave_maintenance_out_once_where_windows_overlap() {
    let db = TestDb::fresh().await;
    let now = seed(&db.pool).await;
    rollup::refresh(&db.pool, Duration::from_secs(4 * 86_400))
        .await
        .unwrap();
    seed_maintenance(&db.pool, now).await;

    // Six hours around the windows: 72 probes per series, of which monitor 1 had 24
    // in maintenance in datacenter 1 and 24 + 24 - 12 in datacenter 2; monitor 2 had
    // 6 (db upgrade) in datacenter 1 and 24 in datacenter 2.
    let counts = counts_excluding_maintenance(
        &db.pool,
        now - TimeDelta::hours(12),
        now - TimeDelta::hours(6),
    )
    .await;
    let probes: Vec<(i32, i32, i64, i64)> = counts.iter().map(|c| (c.0, c.1, c.2, c.8)).collect();
    assert_eq!(
        probes,
        [
            (1, 1, 48, 24),
            (1, 2, 36, 36),
            (2, 1, 66, 6),
            (2, 2, 48, 24)
        ]
    );

    // The periods behind them: disjoint and merged per series.
    let periods: Vec<(i32, i32, DateTime<Utc>, DateTime<Utc>)> =
        sqlx::query_as("SELECT * FROM vantage_maintenance_periods($1, $2) ORDER BY 1, 2, 3")
            .bind(now - TimeDelta::hours(12))
            .bind(now - TimeDelta::hours(6))
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let h = |hours: i64, minutes: i64| now - TimeDelta::hours(hours) - TimeDelta::minutes(minutes);
    assert_eq!(
        periods,
        [
            (1, 1, h(10, 0), h(8, 0)),
            (1, 2, h(10, 0), h(7, 0)),
            (2, 1, h(9, 0), h(8, 30)),
            (2, 2, h(9, 0), h(7, 0)),
        ]
    );

    // Every status against the raw heartbeats, one by one through
    // vantage_in_maintenance, at the precision vantage_status_counts promises: its
    // window for the rollups, [from, to) for what is left out. The fourth range ends
    // inside a window, so the rollups' widened end counts heartbeats in maintenance
    // that the subtraction, exact to the range, leaves in (11 per monitor in
    // datacenter 2, whose window spans that whole hour).
    let inside_lon_window = (now - TimeDelta::hours(8))
        .duration_trunc(TimeDelta::hours(1))
        .unwrap()
        + TimeDelta::minutes(1);
    let ranges = [
        (now - TimeDelta::hours(12), now - TimeDelta::hours(6)),
        (now - TimeDelta::minutes(597), now - TimeDelta::minutes(443)),
        (now - TimeDelta::hours(23), now - TimeDelta::minutes(3)),
        (
            now - TimeDelta::days(2) - TimeDelta::minutes(133),
            inside_lon_window,
        ),
        (now - TimeDelta::days(10) - TimeDelta::minutes(7), now),
    ];
    for (from, to) in ranges {
        let (lo, hi) = promised_window(from, to);
        if to == inside_lon_window {
            let counted_not_left_out: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM api_heartbeats
                 WHERE scheduled_at >= $1 AND scheduled_at < $2 AND datacenter_id = 2
                   AND vantage_in_maintenance(monitor_id, datacenter_id, scheduled_at)",
            )
            .bind(to)
            .bind(hi)
            .fetch_one(&db.pool)
            .await
            .unwrap();
            assert_eq!(counted_not_left_out, 22);
        }
        let expected: Vec<Counts> = sqlx::query_as(
            "SELECT h.monitor_id, h.datacenter_id,
                    count(*) FILTER (WHERE NOT x.left_out),
                    count(*) FILTER (WHERE NOT x.left_out AND h.success),
                    count(*) FILTER (WHERE NOT x.left_out AND h.status = 'up'),
                    count(*) FILTER (WHERE NOT x.left_out AND h.status = 'warning'),
                    count(*) FILTER (WHERE NOT x.left_out AND h.status = 'critical'),
                    count(*) FILTER (WHERE NOT x.left_out AND h.status = 'down'),
                    count(*) FILTER (WHERE x.left_out)
             FROM api_heartbeats h
             CROSS JOIN LATERAL (
                 SELECT h.scheduled_at >= $1 AND h.scheduled_at < $2
                        AND vantage_in_maintenance(h.monitor_id, h.datacenter_id, h.scheduled_at)
                        AS left_out) x
             WHERE h.scheduled_at >= $3 AND h.scheduled_at < $4
             GROUP BY 1, 2
             ORDER BY 1, 2",
        )
        .bind(from)
        .bind(to)
        .bind(lo)
        .bind(hi)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        assert_eq!(
            counts_excluding_maintenance(&db.pool, from, to).await,
            expected,
            "range {from} .. {to} (promised {lo} .. {hi})"
        );
    }
}
