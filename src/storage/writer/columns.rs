//! The columns of `api_heartbeats` as the batch insert writes them: one table
//! ([`COLUMNS`]) from which the statement's column list, its `unnest($n::type[])`
//! select list and the per-column array parameters are all derived. Adding a column is
//! one entry here.
//!
//! It owns the SQL text of the insert and how a heartbeat field becomes a Postgres
//! value (NUL removed from text, JSON serialized for `jsonb`); it does not run the
//! statement, retry it or decide what to do when it fails (that is `insert`).

use std::sync::LazyLock;

use serde::Serialize;
use sqlx::postgres::{PgArguments, PgHasArrayType};
use sqlx::query::Query;
use sqlx::{Encode, Postgres, Type};

use crate::Heartbeat;

type PgQuery<'q> = Query<'q, Postgres, PgArguments>;

/// One column of `api_heartbeats`, written as one array parameter.
struct Column {
    name: &'static str,
    /// The element type of the array parameter: `unnest($n::<array_of>[])`.
    array_of: &'static str,
    /// Applied to each element after `unnest`, for column types sent as text
    /// (`inet`, `jsonb`).
    cast: Option<&'static str>,
    values: &'static dyn BindValues,
}

const fn column(
    name: &'static str,
    array_of: &'static str,
    values: &'static dyn BindValues,
) -> Column {
    Column {
        name,
        array_of,
        cast: None,
        values,
    }
}

impl Column {
    const fn cast(self, to: &'static str) -> Column {
        Column {
            cast: Some(to),
            ..self
        }
    }
}

/// A column's value in each heartbeat; bound as one array per batch.
struct Values<T>(fn(&Heartbeat) -> T);

/// [`Values`] of any element type, so that the columns fit in one table.
trait BindValues: Sync {
    fn bind<'q>(&self, query: PgQuery<'q>, batch: &[Heartbeat]) -> PgQuery<'q>;
}

impl<T> BindValues for Values<T>
where
    T: for<'q> Encode<'q, Postgres> + Type<Postgres> + PgHasArrayType + Send + 'static,
{
    fn bind<'q>(&self, query: PgQuery<'q>, batch: &[Heartbeat]) -> PgQuery<'q> {
        query.bind(batch.iter().map(self.0).collect::<Vec<T>>())
    }
}

/// Every column the writer stores, in the statement's order.
#[rustfmt::skip]
const COLUMNS: &[Column] = &[
    column("monitor_id",          "int4",        &Values(|h| h.monitor_id)),
    column("datacenter_id",       "int4",        &Values(|h| h.datacenter_id)),
    column("scheduled_at",        "timestamptz", &Values(|h| h.scheduled_at)),
    column("executed_at",         "timestamptz", &Values(|h| h.executed_at)),
    column("agent_id",            "int8",        &Values(|h| h.agent_id)),
    column("leader_term",         "int8",        &Values(|h| h.leader_term)),
    column("status",              "text",        &Values(|h| h.report.status.as_str())),
    column("success",             "bool",        &Values(|h| h.report.success())),
    column("http_status",         "int4",        &Values(|h| h.report.http_status.map(i32::from))),
    column("dns_ms",              "float8",      &Values(|h| h.report.dns_ms)),
    column("connect_ms",          "float8",      &Values(|h| h.report.connect_ms)),
    column("tls_ms",              "float8",      &Values(|h| h.report.tls_ms)),
    column("ttfb_ms",             "float8",      &Values(|h| h.report.ttfb_ms)),
    column("transfer_ms",         "float8",      &Values(|h| h.report.transfer_ms)),
    column("total_ms",            "float8",      &Values(|h| h.report.total_ms)),
    column("schedule_lag_ms",     "float8",      &Values(|h| h.schedule_lag_ms)),
    column("response_size_bytes", "int8",        &Values(|h| h.report.response_size_bytes.map(int8))),
    column("remote_ip",           "text",        &Values(|h| h.report.remote_ip.map(|ip| ip.to_string())))
        .cast("inet"),
    column("http_version",        "text",        &Values(|h| text(&h.report.http_version))),
    column("tls_version",         "text",        &Values(|h| text(&h.report.tls_version))),
    column("tls_cert_expires_at", "timestamptz", &Values(|h| h.report.tls_cert_expires_at)),
    column("redirect_count",      "int4",        &Values(|h| int4(h.report.redirect_count))),
    column("error_kind",          "text",        &Values(|h| h.report.error_kind.map(|k| k.as_str()))),
    column("error_message",       "text",        &Values(|h| text(&h.report.error_message))),
    column("response_body",       "text",        &Values(|h| text(&h.report.response_body))),
    column("content_type",        "text",        &Values(|h| text(&h.report.content_type))),
    column("server",              "text",        &Values(|h| text(&h.report.server))),
    column("response_headers",    "text",        &Values(|h| json(&h.report.response_headers)))
        .cast("jsonb"),
    column("details",             "text",        &Values(|h| json(&h.report.details)))
        .cast("jsonb"),
];

/// Counts past the column's range are stored as its largest value, not refused.
fn int8(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn int4(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Postgres text cannot hold NUL; a probe may have read one from a hostile server.
fn text(value: &Option<String>) -> Option<String> {
    value.as_deref().map(without_nul)
}

fn without_nul(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

/// JSON for a `jsonb` column. jsonb cannot hold NUL either (`\u0000` is refused), and
/// a TCP banner may carry one: every string in the value is cleaned like text.
fn json(value: &Option<impl Serialize>) -> Option<String> {
    let text = serde_json::to_string(value.as_ref()?).ok()?;
    if !text.contains("\\u0000") {
        return Some(text);
    }
    let mut value = serde_json::from_str(&text).ok()?;
    clean_json(&mut value);
    Some(value.to_string())
}

fn clean_json(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::String(s) => *s = without_nul(s),
        Value::Array(items) => items.iter_mut().for_each(clean_json),
        Value::Object(map) => {
            *map = std::mem::take(map)
                .into_iter()
                .map(|(key, mut item)| {
                    clean_json(&mut item);
                    (without_nul(&key), item)
                })
                .collect();
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// What the insert does with a row whose key is stored already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnConflict {
    /// Fail the whole statement: the fast plain insert, for batches expected to be new.
    Fail,
    /// Skip the row (`ON CONFLICT DO NOTHING`).
    Skip,
}

/// The whole batch in one statement, each column one array parameter. The `unnest`s
/// sit in the select list (a ProjectSet node streaming rows) rather than in `FROM
/// UNNEST(...)`, which first copies every row into a tuplestore: 100k against 82k
/// heartbeats/s in the ingest bench, both with `ON CONFLICT` (BENCHMARKS.md).
fn insert_sql(on_conflict: OnConflict) -> String {
    let names: Vec<&str> = COLUMNS.iter().map(|c| c.name).collect();
    let values: Vec<String> = COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let cast = c.cast.map(|to| format!("::{to}")).unwrap_or_default();
            format!("unnest(${}::{}[]){cast}", i + 1, c.array_of)
        })
        .collect();
    let conflict = match on_conflict {
        OnConflict::Fail => "",
        OnConflict::Skip => "\nON CONFLICT DO NOTHING",
    };
    format!(
        "INSERT INTO api_heartbeats ({})\nSELECT {}{conflict}",
        names.join(", "),
        values.join(", ")
    )
}

/// The insert statement for `batch`, every column bound. The SQL text is built once
/// per variant, so sqlx prepares it once per connection.
pub(super) fn insert(on_conflict: OnConflict, batch: &[Heartbeat]) -> PgQuery<'static> {
    static PLAIN: LazyLock<String> = LazyLock::new(|| insert_sql(OnConflict::Fail));
    static SKIPPING: LazyLock<String> = LazyLock::new(|| insert_sql(OnConflict::Skip));
    let sql: &'static str = match on_conflict {
        OnConflict::Fail => &PLAIN,
        OnConflict::Skip => &SKIPPING,
    };
    COLUMNS.iter().fold(sqlx::query(sql), |query, column| {
        column.values.bind(query, batch)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_column_is_one_placeholder_in_order() {
        let sql = insert_sql(OnConflict::Skip);
        assert!(sql.starts_with("INSERT INTO api_heartbeats (monitor_id, datacenter_id, "));
        assert!(sql.contains(" unnest($18::text[])::inet, "), "{sql}");
        assert!(
            sql.ends_with("unnest($29::text[])::jsonb\nON CONFLICT DO NOTHING"),
            "{sql}"
        );
        assert_eq!(sql.matches("unnest(").count(), COLUMNS.len());
    }

    #[test]
    fn nul_never_reaches_text_or_jsonb() {
        assert_eq!(text(&Some("a\0b".into())).as_deref(), Some("a\u{FFFD}b"));
        let details = Some(serde_json::json!({"banner\0": ["220\0 hi", 1, null]}));
        assert_eq!(
            json(&details).as_deref(),
            Some(r#"{"banner�":["220� hi",1,null]}"#)
        );
        assert_eq!(json(&None::<serde_json::Value>), None);
    }
}
