//! Every query in the Grafana dashboards runs, against the real schema, and returns
//! what its panel needs.
//!
//! The story: a database with a month of heartbeats for three monitors in three
//! datacenters (some slow, some failing, one over plain HTTP), refreshed rollups,
//! agents and leadership terms, and incidents (open and resolved, of monitors and of
//! a datacenter). For each dashboard under `grafana/` the test expands Grafana's
//! macros the way Grafana's Postgres datasource does, runs every variable query,
//! every annotation query and every panel query over a short range (raw heartbeats)
//! and a 30-day range (rollups), as a login that only has the read-only
//! `vantage_reader` role, and checks the shape: time series have an ascending `time`
//! column and numeric values; tables have the columns the panel refers to by name;
//! annotations have `time`, `timeend`, `text` and `tags`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde_json::Value;
use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::{Column, PgPool, Row, TypeInfo};
use support::pg::TestDb;

#[path = "grafana/macros.rs"]
mod macros;

use macros::{expand, QueryContext};

#[test]
fn macros_expand_like_grafana() {
    let from = DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
        .unwrap()
        .to_utc();
    let ctx = QueryContext {
        from,
        to: from + TimeDelta::hours(6),
        interval: TimeDelta::minutes(5),
        vars: BTreeMap::from([
            ("monitor".to_string(), vec!["3".to_string()]),
            (
                "datacenter".to_string(),
                vec!["1".to_string(), "2".to_string()],
            ),
        ]),
        multi: BTreeSet::from(["datacenter".to_string()]),
    };
    assert_eq!(
        expand("WHERE $__timeFilter(h.scheduled_at)", &ctx),
        "WHERE h.scheduled_at BETWEEN '2026-11-01T00:00:00Z' AND '2026-11-01T06:00:00Z'"
    );
    assert_eq!(
        expand("SELECT $__timeGroupAlias(scheduled_at, $__interval)", &ctx),
        "SELECT floor(extract(epoch from scheduled_at)/300)*300 AS \"time\""
    );
    assert_eq!(
        expand("$__timeGroup(t, '1h') $__interval $__interval_ms", &ctx),
        "floor(extract(epoch from t)/3600)*3600 5m 300000"
    );
    assert_eq!(
        expand(
            "m = $monitor AND d IN ($datacenter) AND d = ANY(ARRAY[${datacenter:csv}])",
            &ctx
        ),
        "m = 3 AND d IN ('1','2') AND d = ANY(ARRAY[1,2])"
    );
}

// ---------------------------------------------------------------------------------
// The database
// ---------------------------------------------------------------------------------

/// Three datacenters, three monitors (one over plain HTTP: no TLS phase, no
/// certificate), heartbeats every 10 minutes for 31 days with slow and failed probes
/// sprinkled in deterministically, every minute for the last 3 hours, leaders and
/// instances, incidents. Returns the database's "now", rounded to the minute.
async fn seed(pool: &PgPool) -> DateTime<Utc> {
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(pool)
        .await
        .unwrap();
    let now = now.duration_trunc(TimeDelta::minutes(1)).unwrap();
    let days: Vec<chrono::NaiveDate> = (0..=32)
        .map(|d| (now - TimeDelta::days(d)).date_naive())
        .collect();
    vantage::storage::partitions::ensure_days(pool, &days)
        .await
        .expect("partitions");
    sqlx::raw_sql(
        r#"
        INSERT INTO datacenters (id, code, name) VALUES
            (1, 'va', 'Virginia'), (2, 'lon', 'London'), (3, 'syd', 'Sydney');
        INSERT INTO schedules (id, name, interval_seconds, timeout_ms) VALUES (1, '1m', 60, 10000);
        INSERT INTO api_monitors (id, name, url, schedule_id, all_datacenters) VALUES
            (1, 'api', 'https://api.example.com/health', 1, true),
            (2, 'shop', 'https://shop.example.com/', 1, true),
            (3, 'legacy', 'http://legacy.example.com/', 1, true);
        INSERT INTO agents (id, datacenter_id, instance_name, role, last_seen_at) VALUES
            (1, 1, 'va-1', 'leader', now()), (2, 1, 'va-2', 'standby', now()),
            (3, 2, 'lon-1', 'leader', now()), (4, 2, 'lon-2', 'standby', now() - interval '10 minutes'),
            (5, 3, 'syd-1', 'stopped', now() - interval '1 hour'), (6, 3, 'syd-2', 'leader', now());
        INSERT INTO leader_terms (datacenter_id, term, agent_id, acquired_at, released_at) VALUES
            (1, 1, 1, now() - interval '2 days', NULL),
            (2, 1, 4, now() - interval '3 days', now() - interval '1 day'),
            (2, 2, 3, now() - interval '1 day', NULL),
            (3, 1, 5, now() - interval '5 days', now() - interval '1 hour'),
            (3, 2, 6, now() - interval '1 hour', NULL);
        "#,
    )
    .execute(pool)
    .await
    .expect("configuration");
    // Probe outcomes from a hash of (monitor, datacenter, slot): ~3% down with a
    // rotating error kind, ~5% slow, the rest up.
    sqlx::query(
        r#"
        INSERT INTO api_heartbeats (
            monitor_id, datacenter_id, scheduled_at, executed_at, agent_id, leader_term,
            status, success, http_status, dns_ms, connect_ms, tls_ms, ttfb_ms, transfer_ms,
            total_ms, schedule_lag_ms, tls_cert_expires_at, error_kind, error_message)
        SELECT m, d, slot, slot + interval '3 ms', d, 1,
               CASE WHEN r < 3 THEN 'down' WHEN r < 5 THEN 'critical' WHEN r < 8 THEN 'warning' ELSE 'up' END,
               r >= 3,
               CASE WHEN r < 3 THEN NULL ELSE 200 END,
               1 + d, 2 + d * 10, CASE WHEN m = 3 THEN NULL ELSE 5 + d * 5 END,
               CASE WHEN r < 3 THEN NULL ELSE 20 + r END,
               CASE WHEN r < 3 THEN NULL ELSE 1.5 END,
               CASE WHEN r < 3 THEN 10000 ELSE 30 + d * 16 + r + CASE WHEN r < 8 THEN 900 ELSE 0 END END,
               (r % 7) * 1.5,
               CASE WHEN m = 3 THEN NULL ELSE $1::timestamptz + (m * 10) * interval '1 day' END,
               CASE WHEN r < 3 THEN (ARRAY['timeout', 'connect_refused', 'status_mismatch'])[1 + (m + d) % 3] END,
               CASE WHEN r < 3 THEN 'seeded failure' END
        FROM (
            SELECT m, d, slot, abs(hashtext(m || '/' || d || '/' || slot)) % 100 AS r
            FROM generate_series(1, 3) m, generate_series(1, 3) d,
                 (SELECT generate_series($1::timestamptz - interval '31 days',
                                         $1::timestamptz - interval '3 hours',
                                         interval '10 minutes') AS slot
                  UNION ALL
                  SELECT generate_series($1::timestamptz - interval '3 hours' + interval '1 minute',
                                         $1::timestamptz, interval '1 minute')) s
        ) x
        "#,
    )
    .bind(now)
    .execute(pool)
    .await
    .expect("heartbeats");
    vantage::rollup::refresh_range(pool, now - TimeDelta::days(32), None, None)
        .await
        .expect("rollups");
    seed_incidents(pool, now).await;
    now
}

/// In the last 6 hours: api down 2 h ago for 10 minutes, api down since 20 minutes
/// (acknowledged), syd impaired 5 h ago for 20 minutes. Ten days ago: shop slow for
/// 15 minutes (muted). 40 days ago, outside every range: legacy down for an hour.
async fn seed_incidents(pool: &PgPool, now: DateTime<Utc>) {
    sqlx::query(
        r#"
        WITH opened AS (
            INSERT INTO incidents (kind, severity, monitor_id, datacenter_id, opened_at, resolved_at,
                                   acknowledged_at, acknowledged_by, muted, cause, datacenters)
            VALUES
            ('monitor_down', 'critical', 1, NULL, $1 - interval '2 hours', $1 - interval '110 minutes',
             NULL, NULL, false, 'api down from lon, va (timeout)', '{1,2}'),
            ('monitor_down', 'critical', 1, NULL, $1 - interval '20 minutes', NULL,
             $1 - interval '15 minutes', 'alice', false, 'api down from lon, syd, va (connect_refused)', '{1,2,3}'),
            ('datacenter_impaired', 'warning', NULL, 3, $1 - interval '5 hours', $1 - interval '280 minutes',
             NULL, NULL, false, 'datacenter syd impaired: no leader', '{3}'),
            ('monitor_degraded', 'warning', 2, NULL, $1 - interval '10 days', $1 - interval '10 days' + interval '15 minutes',
             NULL, NULL, true, 'shop slow from va', '{1}'),
            ('monitor_down', 'critical', 3, NULL, $1 - interval '40 days', $1 - interval '40 days' + interval '1 hour',
             NULL, NULL, false, 'legacy down from lon, syd, va (timeout)', '{1,2,3}')
            RETURNING id, opened_at, resolved_at, datacenters
        )
        INSERT INTO incident_events (incident_id, kind, at, datacenters)
        SELECT id, 'opened', opened_at, datacenters FROM opened
        UNION ALL
        SELECT id, 'resolved', resolved_at, '{}' FROM opened WHERE resolved_at IS NOT NULL
        "#,
    )
    .bind(now)
    .execute(pool)
    .await
    .expect("incidents");
}

/// A login like Grafana's: a member of `vantage_reader`, read-only by default.
async fn reader_pool(db: &TestDb) -> PgPool {
    let role = format!("grafana_{}", db.name);
    sqlx::raw_sql(&format!(
        "CREATE ROLE \"{role}\" LOGIN PASSWORD 'test' IN ROLE vantage_reader;
         ALTER ROLE \"{role}\" SET default_transaction_read_only = on;"
    ))
    .execute(&db.pool)
    .await
    .expect("reader login");
    let mut url: url::Url = db.url.parse().unwrap();
    url.set_username(&role).unwrap();
    url.set_password(Some("test")).unwrap();
    PgPoolOptions::new()
        .max_connections(2)
        .connect(url.as_str())
        .await
        .expect("connect as the reader")
}

// ---------------------------------------------------------------------------------
// The dashboards
// ---------------------------------------------------------------------------------

fn dashboards() -> Vec<(String, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("grafana/dashboards");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .expect("grafana/dashboards")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), json)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn sql_target_texts(panel: &Value) -> Vec<(String, String)> {
    panel["targets"]
        .as_array()
        .map(|targets| {
            targets
                .iter()
                .map(|t| {
                    let sql = t["rawSql"].as_str().expect("every target has rawSql");
                    let format = t["format"].as_str().unwrap_or("time_series");
                    (sql.to_string(), format.to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Column names a panel refers to: transformations, overrides, sorting, reductions.
fn named_columns(panel: &Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for t in panel["transformations"].as_array().into_iter().flatten() {
        for key in ["columnField", "rowField", "valueField"] {
            if let Some(name) = t["options"][key].as_str() {
                names.insert(name.to_string());
            }
        }
    }
    for o in panel["fieldConfig"]["overrides"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if o["matcher"]["id"] == "byName" {
            names.insert(o["matcher"]["options"].as_str().unwrap().to_string());
        }
    }
    for s in panel["options"]["sortBy"].as_array().into_iter().flatten() {
        names.insert(s["displayName"].as_str().unwrap().to_string());
    }
    if let Some(fields) = panel["options"]["reduceOptions"]["fields"].as_str() {
        if let Some(name) = fields.strip_prefix("/^").and_then(|f| f.strip_suffix("$/")) {
            names.insert(name.to_string());
        }
    }
    names
}

/// The SQL of each annotation query a dashboard runs (Grafana's built-in annotations
/// have none), with its name.
fn annotation_queries(dashboard: &Value) -> Vec<(String, String)> {
    dashboard["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["builtIn"].as_i64().unwrap_or(0) == 0)
        .map(|a| {
            let name = a["name"].as_str().expect("annotation name").to_string();
            let sql = a["target"]["rawSql"]
                .as_str()
                .unwrap_or_else(|| panic!("annotation {name} has no target.rawSql"));
            assert_eq!(a["target"]["format"], "table", "annotation {name}");
            (name, sql.to_string())
        })
        .collect()
}

/// What Grafana reads from an annotation query: `time` (and `timeend` for a region)
/// as timestamps, `text` and `tags` (comma-separated) as text, nothing else.
fn check_annotation_shape(rows: &[PgRow]) -> Result<(), String> {
    let columns = column_types(rows);
    let want = [
        ("time", "TIMESTAMPTZ"),
        ("timeend", "TIMESTAMPTZ"),
        ("text", "TEXT"),
        ("tags", "TEXT"),
    ];
    let have: Vec<(&str, &str)> = columns
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    if have != want {
        return Err(format!("columns {have:?}, want {want:?}"));
    }
    for row in rows {
        let (time, end): (DateTime<Utc>, DateTime<Utc>) = (row.get("time"), row.get("timeend"));
        if end < time {
            return Err(format!("timeend {end} before time {time}"));
        }
    }
    Ok(())
}

fn is_numeric(type_name: &str) -> bool {
    matches!(
        type_name,
        "INT2" | "INT4" | "INT8" | "FLOAT4" | "FLOAT8" | "NUMERIC"
    )
}

fn column_types(rows: &[PgRow]) -> Vec<(String, String)> {
    rows.first()
        .map(|r| {
            r.columns()
                .iter()
                .map(|c| (c.name().to_string(), c.type_info().name().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Checks one panel's rows against what its format needs; returns a description of
/// the first problem.
fn check_shape(panel: &Value, format: &str, rows: &[PgRow]) -> Result<(), String> {
    let columns = column_types(rows);
    if format == "time_series" {
        let (_, time_type) = columns
            .iter()
            .find(|(n, _)| n == "time")
            .ok_or("no `time` column")?;
        let times: Vec<f64> = rows
            .iter()
            .map(|r| match time_type.as_str() {
                "TIMESTAMPTZ" => r.get::<DateTime<Utc>, _>("time").timestamp_micros() as f64,
                // $__timeGroup gives epoch seconds.
                "NUMERIC" | "FLOAT8" | "INT8" => r.get::<f64, _>("time"),
                other => panic!("`time` must be a timestamptz or epoch, got {other}"),
            })
            .collect();
        if times.windows(2).any(|w| w[0] > w[1]) {
            return Err("`time` is not ascending".into());
        }
        let has_metric = columns.iter().any(|(n, _)| n == "metric");
        for (name, ty) in &columns {
            if name == "time" || (name == "metric" && ty == "TEXT") {
                continue;
            }
            if !is_numeric(ty) {
                return Err(format!("value column {name} is {ty}, not numeric"));
            }
        }
        if columns.len() < 2 {
            return Err("no value column".into());
        }
        // Long format: (time, metric) must be unique or Grafana cannot pivot it.
        let mut seen = BTreeSet::new();
        for (r, t) in rows.iter().zip(&times) {
            let metric: String = if has_metric {
                r.get("metric")
            } else {
                String::new()
            };
            if !seen.insert((t.to_bits(), metric.clone())) {
                return Err(format!("two rows for time {t} and metric {metric:?}"));
            }
        }
    } else {
        let have: BTreeSet<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
        for name in named_columns(panel) {
            if !have.contains(name.as_str()) {
                return Err(format!("no column {name} (has {have:?})"));
            }
        }
    }
    Ok(())
}

async fn variable_values(
    pool: &PgPool,
    dashboard: &Value,
) -> (BTreeMap<String, Vec<String>>, BTreeSet<String>) {
    let mut vars = BTreeMap::new();
    let mut multi = BTreeSet::new();
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap().to_string();
        match v["type"].as_str().unwrap() {
            "datasource" => {
                assert_eq!(v["query"], "grafana-postgresql-datasource");
                vars.insert(name, vec!["vantage-pg".to_string()]);
            }
            "query" => {
                let sql = v["query"].as_str().expect("SQL variable query");
                let rows = sqlx::query(sql)
                    .fetch_all(pool)
                    .await
                    .unwrap_or_else(|e| panic!("variable {name}: {e}\n{sql}"));
                assert!(!rows.is_empty(), "variable {name} has no values");
                let cols: Vec<String> = column_types(&rows).into_iter().map(|c| c.0).collect();
                assert_eq!(cols, ["__value", "__text"], "variable {name} columns");
                let values: Vec<String> = rows
                    .iter()
                    .map(|r| r.get::<i32, _>("__value").to_string())
                    .collect();
                if v["multi"] == true || v["includeAll"] == true {
                    multi.insert(name.clone());
                    vars.insert(name, values); // "All"
                } else {
                    vars.insert(name, values[..1].to_vec());
                }
            }
            other => panic!("variable type {other} not covered by this test"),
        }
    }
    (vars, multi)
}

#[tokio::test]
async fn every_panel_query_returns_the_shape_its_panel_needs() {
    let db = TestDb::fresh().await;
    let now = seed(&db.pool).await;
    let reader = reader_pool(&db).await;

    // The read-only login can read but not write.
    let err = sqlx::query("DELETE FROM api_monitors")
        .execute(&reader)
        .await
        .expect_err("the reader must not write");
    assert!(format!("{err}").contains("read-only") || format!("{err}").contains("permission"));
    // ... and may call the counts that leave maintenance out (nothing in maintenance
    // here: every probe counts).
    let (series, left_out): (i64, i64) = sqlx::query_as(
        "SELECT count(*), sum(maintenance_probes)::bigint
         FROM vantage_status_counts_excluding_maintenance(now() - interval '1 day', now())",
    )
    .fetch_one(&reader)
    .await
    .expect("the reader calls vantage_status_counts_excluding_maintenance");
    assert_eq!((series, left_out), (9, 0));

    let ranges = [
        ("last 6 hours", TimeDelta::hours(6), TimeDelta::seconds(30)),
        ("last 30 days", TimeDelta::days(30), TimeDelta::hours(1)),
    ];
    let mut checked = 0;
    let mut problems = Vec::new();
    for (file, dashboard) in dashboards() {
        let (vars, multi) = variable_values(&reader, &dashboard).await;
        for (name, sql) in annotation_queries(&dashboard) {
            for (range_name, span, interval) in &ranges {
                let ctx = QueryContext {
                    from: now - *span,
                    to: now,
                    interval: *interval,
                    vars: vars.clone(),
                    multi: multi.clone(),
                };
                let expanded = expand(&sql, &ctx);
                let what = format!("{file} / annotation {name} / {range_name}");
                match sqlx::query(&expanded).fetch_all(&reader).await {
                    Err(e) => problems.push(format!("{what}: {e}\n{expanded}")),
                    Ok(rows) if rows.is_empty() => {
                        problems.push(format!("{what}: no rows\n{expanded}"))
                    }
                    Ok(rows) => {
                        if let Err(why) = check_annotation_shape(&rows) {
                            problems.push(format!("{what}: {why}\n{expanded}"));
                        }
                        checked += 1;
                    }
                }
            }
        }
        for panel in dashboard["panels"].as_array().unwrap() {
            let title = panel["title"].as_str().unwrap_or("?");
            let targets = sql_target_texts(panel);
            assert!(!targets.is_empty(), "{file}: panel {title} has no query");
            for (sql, format) in targets {
                for (range_name, span, interval) in &ranges {
                    let mut ctx = QueryContext {
                        from: now - *span,
                        to: now,
                        interval: *interval,
                        vars: vars.clone(),
                        multi: multi.clone(),
                    };
                    // A repeated panel runs once per value, with that value alone.
                    if let Some(var) = panel["repeat"].as_str() {
                        let first = ctx.vars[var][0].clone();
                        ctx.vars.insert(var.to_string(), vec![first]);
                    }
                    let expanded = expand(&sql, &ctx);
                    let rows = match sqlx::query(&expanded).fetch_all(&reader).await {
                        Ok(rows) => rows,
                        Err(e) => {
                            problems
                                .push(format!("{file} / {title} / {range_name}: {e}\n{expanded}"));
                            continue;
                        }
                    };
                    if rows.is_empty() {
                        problems.push(format!(
                            "{file} / {title} / {range_name}: no rows\n{expanded}"
                        ));
                        continue;
                    }
                    if let Err(why) = check_shape(panel, &format, &rows) {
                        problems.push(format!(
                            "{file} / {title} / {range_name}: {why}\n{expanded}"
                        ));
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    assert!(checked >= 28, "only {checked} queries checked");
    eprintln!("{checked} panel queries checked");
}

/// Runs `sql` of `dashboard` as Grafana would over the last `span` before `now`, with
/// the variables at their defaults ("All", or the first value) except `overrides`.
async fn run_like_grafana(
    reader: &PgPool,
    dashboard: &Value,
    sql: &str,
    now: DateTime<Utc>,
    span: TimeDelta,
    overrides: &[(&str, &[&str])],
) -> Vec<PgRow> {
    let (mut vars, multi) = variable_values(reader, dashboard).await;
    for (name, values) in overrides {
        vars.insert(
            name.to_string(),
            values.iter().map(|v| v.to_string()).collect(),
        );
    }
    let ctx = QueryContext {
        from: now - span,
        to: now,
        interval: TimeDelta::minutes(1),
        vars,
        multi,
    };
    let expanded = expand(sql, &ctx);
    sqlx::query(&expanded)
        .fetch_all(reader)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{expanded}"))
}

fn texts(rows: &[PgRow], column: &str) -> Vec<String> {
    rows.iter().map(|r| r.get::<String, _>(column)).collect()
}

#[tokio::test]
async fn incidents_show_as_regions_and_open_ones_lead_the_incidents_panel() {
    let db = TestDb::fresh().await;
    let now = seed(&db.pool).await;
    let reader = reader_pool(&db).await;
    let dashboards: BTreeMap<String, Value> = dashboards().into_iter().collect();
    let (overview, monitor) = (&dashboards["overview.json"], &dashboards["monitor.json"]);
    let six_hours = TimeDelta::hours(6);
    let month = TimeDelta::days(30);

    // Overview: every incident overlapping the range, oldest first, from opened to
    // resolved; the open one reaches now.
    let (_, annotations) = &annotation_queries(overview)[0];
    let rows = run_like_grafana(&reader, overview, annotations, now, six_hours, &[]).await;
    assert_eq!(
        texts(&rows, "text"),
        [
            "datacenter syd impaired: no leader (resolved after 00:20:00)",
            "api down from lon, va (timeout) (resolved after 00:10:00)",
            "api down from lon, syd, va (connect_refused) (open, acknowledged by alice)",
        ]
    );
    assert_eq!(
        texts(&rows, "tags"),
        [
            "datacenter_impaired,warning,resolved,syd",
            "monitor_down,critical,resolved,api",
            "monitor_down,critical,open,api",
        ]
    );
    let (opened, until): (DateTime<Utc>, DateTime<Utc>) =
        (rows[1].get("time"), rows[1].get("timeend"));
    assert_eq!(
        (opened, until),
        (now - TimeDelta::hours(2), now - TimeDelta::minutes(110))
    );
    let open_until: DateTime<Utc> = rows[2].get("timeend");
    assert!(open_until >= now, "{open_until}");
    let rows = run_like_grafana(&reader, overview, annotations, now, month, &[]).await;
    assert_eq!(
        texts(&rows, "text")[0],
        "shop slow from va (resolved after 00:15:00, muted)"
    );
    assert_eq!(rows.len(), 4, "legacy's outage 40 days ago is out of range");

    // Monitor detail: only this monitor's incidents, and impairments of the selected
    // datacenters that probe it.
    let (_, annotations) = &annotation_queries(monitor)[0];
    let shop = [("monitor", &["2"][..])];
    let rows = run_like_grafana(&reader, monitor, annotations, now, month, &shop).await;
    assert_eq!(
        texts(&rows, "text"),
        [
            "shop slow from va (resolved after 00:15:00, muted)",
            "datacenter syd impaired: no leader (resolved after 00:20:00)",
        ]
    );
    let shop_in_va = [("monitor", &["2"][..]), ("datacenter", &["1"][..])];
    let rows = run_like_grafana(&reader, monitor, annotations, now, month, &shop_in_va).await;
    assert_eq!(rows.len(), 1, "syd is not selected");

    // The incidents panel: open ones first, then the resolved ones, newest first.
    let panel = overview["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["title"] == "Incidents")
        .expect("an Incidents panel on the overview");
    let (sql, _) = &sql_target_texts(panel)[0];
    let rows = run_like_grafana(&reader, overview, sql, now, six_hours, &[]).await;
    let listed: Vec<(String, String)> = texts(&rows, "state")
        .into_iter()
        .zip(texts(&rows, "subject"))
        .collect();
    let expected = [("open", "api"), ("resolved", "api"), ("resolved", "syd")];
    assert_eq!(
        listed,
        expected.map(|(state, subject)| (state.to_string(), subject.to_string()))
    );
    let datacenters: Vec<Option<String>> = rows.iter().map(|r| r.get("datacenters")).collect();
    assert_eq!(datacenters[0].as_deref(), Some("lon, syd, va"));
    let rows = run_like_grafana(&reader, overview, sql, now, month, &[]).await;
    assert_eq!(rows.len(), 4);
}
