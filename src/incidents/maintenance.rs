//! Maintenance windows: turning recurring windows (cron + duration) into concrete rows
//! of `maintenance_occurrences`, which is what SQL, dashboards and the evaluator read.
//!
//! One-off windows need none of this (a trigger keeps their single occurrence). This
//! module writes only `maintenance_occurrences`; the windows themselves are written by
//! people (SQL or `vantage maintenance`).

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use croner::parser::{CronParser, Seconds};
use croner::Cron;
use sqlx::PgPool;

/// How far ahead recurring windows are expanded, so that a window starting soon is
/// known before it starts even if no evaluator runs for a while.
pub const EXPAND_AHEAD: ChronoDuration = ChronoDuration::days(7);

/// Most occurrences expanded per window and call: a window every minute for a week is
/// 10,080; more than that is a misconfiguration, not a plan.
const MAX_OCCURRENCES: usize = 20_000;

#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    #[error("maintenance window {id}: cron {pattern:?} is invalid ({reason}); use 5 fields such as '0 3 * * SUN' (UTC), or 6 with seconds first")]
    InvalidCron {
        id: i32,
        pattern: String,
        reason: String,
    },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Parses a window's cron: 5 fields, or 6 with seconds first, UTC.
pub fn parse_cron(pattern: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(pattern)
        .map_err(|err| err.to_string())
}

/// Start times of `cron` with an occurrence of `duration` overlapping [from, until).
pub fn occurrences(
    cron: &Cron,
    duration: ChronoDuration,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let mut found = Vec::new();
    // An occurrence that started up to one duration before `from` still overlaps it.
    let mut cursor = from - duration;
    while found.len() < MAX_OCCURRENCES {
        let Ok(start) = cron.find_next_occurrence(&cursor, false) else {
            break;
        };
        if start >= until {
            break;
        }
        found.push((start, start + duration));
        cursor = start;
    }
    found
}

#[derive(sqlx::FromRow)]
struct RecurringWindow {
    id: i32,
    cron: String,
    duration_us: i64,
    starts_at: DateTime<Utc>,
    ends_at: Option<DateTime<Utc>>,
}

/// Expands every recurring window from now to [`EXPAND_AHEAD`]; idempotent. Returns
/// the occurrences added. A window whose cron cannot be parsed is reported and skipped
/// (the others are still expanded).
pub async fn expand_recurring(
    pool: &PgPool,
    now: DateTime<Utc>,
) -> Result<(u64, Vec<MaintenanceError>), sqlx::Error> {
    let windows: Vec<RecurringWindow> = sqlx::query_as(
        "SELECT id, cron, (extract(epoch FROM duration) * 1000000)::bigint AS duration_us, \
                starts_at, ends_at \
         FROM maintenance_windows \
         WHERE cron IS NOT NULL AND (ends_at IS NULL OR ends_at > $1)",
    )
    .bind(now)
    .fetch_all(pool)
    .await?;
    let mut added = 0;
    let mut invalid = Vec::new();
    for window in windows {
        let cron = match parse_cron(&window.cron) {
            Ok(cron) => cron,
            Err(reason) => {
                invalid.push(MaintenanceError::InvalidCron {
                    id: window.id,
                    pattern: window.cron,
                    reason,
                });
                continue;
            }
        };
        let duration = ChronoDuration::microseconds(window.duration_us);
        let until = window
            .ends_at
            .unwrap_or(now + EXPAND_AHEAD)
            .min(now + EXPAND_AHEAD);
        let (starts, ends): (Vec<_>, Vec<_>) =
            occurrences(&cron, duration, now.max(window.starts_at), until)
                .into_iter()
                .filter(|(start, _)| *start >= window.starts_at)
                .map(|(start, end)| (start, window.ends_at.map_or(end, |e| end.min(e))))
                .unzip();
        added += sqlx::query(
            "INSERT INTO maintenance_occurrences (window_id, starts_at, ends_at) \
             SELECT $1, s, e FROM unnest($2::timestamptz[], $3::timestamptz[]) AS o(s, e) \
             ON CONFLICT (window_id, starts_at) DO NOTHING",
        )
        .bind(window.id)
        .bind(&starts)
        .bind(&ends)
        .execute(pool)
        .await?
        .rows_affected();
    }
    Ok((added, invalid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Timelike};

    #[test]
    fn weekly_window_occurrences() {
        let cron = parse_cron("0 3 * * SUN").unwrap();
        // Monday 2026-11-30 00:00 UTC .. two weeks later.
        let from = Utc.with_ymd_and_hms(2026, 11, 30, 0, 0, 0).unwrap();
        let found = occurrences(
            &cron,
            ChronoDuration::hours(2),
            from,
            from + ChronoDuration::days(14),
        );
        let starts: Vec<String> = found.iter().map(|(s, _)| s.to_rfc3339()).collect();
        assert_eq!(
            starts,
            ["2026-12-06T03:00:00+00:00", "2026-12-13T03:00:00+00:00"]
        );
        assert_eq!(found[0].1 - found[0].0, ChronoDuration::hours(2));
    }

    #[test]
    fn an_occurrence_in_progress_is_included() {
        let cron = parse_cron("0 0 * * * *").unwrap(); // 6 fields: every hour
        let from = Utc.with_ymd_and_hms(2026, 11, 30, 10, 30, 0).unwrap();
        let found = occurrences(
            &cron,
            ChronoDuration::hours(1),
            from,
            from + ChronoDuration::hours(1),
        );
        let starts: Vec<u32> = found.iter().map(|(s, _)| s.hour()).collect();
        assert_eq!(starts, [10, 11]);
    }

    #[test]
    fn invalid_cron_says_why() {
        assert!(parse_cron("61 * * * *").is_err());
        assert!(parse_cron("every sunday").is_err());
    }
}
