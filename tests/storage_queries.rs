//! Every documented query in `sql/queries/` runs against the schema with seeded data
//! and returns the columns its header promises (`-- columns: ...`), with rows, and
//! the answers a user would expect from what was seeded.

mod support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::types::PgInterval;
use sqlx::postgres::PgRow;
use sqlx::{Column, Row};
use support::pg::{heartbeat, TestDb};
use vantage::storage::{self, HeartbeatWriter, WriterConfig};
use vantage::{ErrorKind, ProbeStatus};

async fn seed(db: &TestDb) {
    storage::seed_example(&db.pool).await.unwrap();
    // The monitors have existed longer than the heartbeats seeded below go back: slots
    // before a monitor existed are never counted as missed.
    sqlx::query("UPDATE api_monitors SET created_at = now() - interval '3 days'")
        .execute(&db.pool)
        .await
        .unwrap();
    let assignments: Vec<(i32, i32, String, String)> = sqlx::query_as(
        "SELECT a.monitor_id, a.datacenter_id, m.name, d.code
         FROM monitor_assignments a
         JOIN api_monitors m ON m.id = a.monitor_id
         JOIN datacenters d ON d.id = a.datacenter_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let spool = tempfile::tempdir().unwrap();
    let (tx, writer) = HeartbeatWriter::spawn(
        db.pool.clone(),
        WriterConfig {
            spool_dir: spool.path().to_path_buf(),
            batch_delay: Duration::from_millis(20),
            ..WriterConfig::default()
        },
    )
    .await
    .unwrap();
    // Two hours of minutely heartbeats, ending a minute ago; every tenth one failed.
    // sf never probed example.com for the 5 slots 35..=39 minutes before the end.
    let end = Utc::now() - chrono::Duration::minutes(1);
    let end = end - chrono::Duration::nanoseconds(end.timestamp_subsec_nanos() as i64);
    for (monitor, dc, name, code) in assignments {
        for i in 0..120 {
            if name == "example.com" && code == "sf" && (35..40).contains(&i) {
                continue;
            }
            let mut hb = heartbeat(monitor, dc, end - chrono::Duration::minutes(i));
            hb.report.total_ms += i as f64;
            if i % 10 == 3 {
                hb.report.status = ProbeStatus::Down;
                hb.report.error_kind = Some(ErrorKind::ALL[(i as usize / 10) % 3]);
                hb.report.error_message = Some(format!("failure {i}"));
            }
            tx.send(hb);
        }
    }
    let summary = writer.shutdown().await;
    assert!(summary.stats.inserted_rows > 1000, "{summary:?}");
    sqlx::raw_sql(
        "INSERT INTO agents (datacenter_id, instance_name, hostname, version, role)
             SELECT id, code || '-a', 'host-a', '0.1.0', 'standby' FROM datacenters;
         INSERT INTO agents (datacenter_id, instance_name, hostname, version, role)
             SELECT id, code || '-b', 'host-b', '0.1.0', 'leader' FROM datacenters;
         INSERT INTO leader_terms (datacenter_id, term, agent_id, acquired_at, released_at)
             SELECT a.datacenter_id, 1, a.id, now() - interval '2 hours', now() - interval '1 hour'
             FROM agents a WHERE a.instance_name LIKE '%-a';
         INSERT INTO leader_terms (datacenter_id, term, agent_id, acquired_at)
             SELECT a.datacenter_id, 2, a.id, now() - interval '1 hour'
             FROM agents a WHERE a.instance_name LIKE '%-b';",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    seed_incidents_and_maintenance(db, end).await;
}

/// Incidents (two resolved outages of example.com, 10 and 30 minutes long, one older
/// than 30 days; three open: cloudflare down and acknowledged, syd impaired, iana
/// slow and muted) with their timelines, and two overlapping maintenance windows in
/// lon: example.com from 20.5 to 10.5 minutes before the last heartbeat, and
/// everything tagged `example` from 15.5 to 5.5 minutes before it.
async fn seed_incidents_and_maintenance(db: &TestDb, end: chrono::DateTime<Utc>) {
    sqlx::raw_sql(
        "WITH seeded (kind, severity, monitor, datacenter, opened_at, resolved_at, acknowledged_by, muted, cause, dcs) AS (
             VALUES
             ('monitor_down', 'critical', 'example.com', NULL, now() - interval '40 days',
              now() - interval '40 days' + interval '1 hour', NULL, false, 'example.com down from va, ny (timeout)', '{va,ny}'::text[]),
             ('monitor_down', 'critical', 'example.com', NULL, now() - interval '100 minutes',
              now() - interval '90 minutes', NULL, false, 'example.com down from va, ny (timeout)', '{va,ny}'),
             ('monitor_down', 'critical', 'example.com', NULL, now() - interval '60 minutes',
              now() - interval '30 minutes', 'bob', false, 'example.com down from lon, va (connect_refused)', '{va,lon}'),
             ('monitor_down', 'critical', 'cloudflare dns-over-https', NULL, now() - interval '5 minutes',
              NULL, 'alice', false, 'cloudflare dns-over-https down from lon, va (timeout)', '{va,lon}'),
             ('datacenter_impaired', 'warning', NULL, 'syd', now() - interval '20 minutes',
              NULL, NULL, false, 'datacenter syd impaired: no leader', '{syd}'),
             ('monitor_degraded', 'warning', 'iana.org home', NULL, now() - interval '3 minutes',
              NULL, NULL, true, 'iana.org home slow from lon', '{lon}')
         ),
         opened AS (
             INSERT INTO incidents (kind, severity, monitor_id, datacenter_id, opened_at, resolved_at,
                                    acknowledged_at, acknowledged_by, muted, cause, datacenters)
             SELECT s.kind, s.severity, m.id, d.id, s.opened_at, s.resolved_at,
                    CASE WHEN s.acknowledged_by IS NOT NULL THEN s.opened_at + interval '1 minute' END,
                    s.acknowledged_by, s.muted, s.cause,
                    ARRAY(SELECT c.id FROM datacenters c WHERE c.code = ANY (s.dcs) ORDER BY c.id)
             FROM seeded s
             LEFT JOIN api_monitors m ON m.name = s.monitor
             LEFT JOIN datacenters d ON d.code = s.datacenter
             RETURNING id, opened_at, resolved_at, acknowledged_at, acknowledged_by, datacenters
         )
         INSERT INTO incident_events (incident_id, kind, at, datacenters, detail)
         SELECT id, 'opened', opened_at, datacenters, NULL FROM opened
         UNION ALL
         SELECT id, 'acknowledged', acknowledged_at, '{}', 'acknowledged by ' || acknowledged_by
         FROM opened WHERE acknowledged_at IS NOT NULL
         UNION ALL
         SELECT id, 'resolved', resolved_at, '{}', 'recovered' FROM opened WHERE resolved_at IS NOT NULL;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO maintenance_windows (reason, monitor_ids, tags, datacenter_ids, starts_at, ends_at)
         SELECT 'replacing the load balancer', ARRAY(SELECT id FROM api_monitors WHERE name = 'example.com'),
                '{}'::text[], ARRAY(SELECT id FROM datacenters WHERE code = 'lon'),
                $1 - interval '20 minutes 30 seconds', $1 - interval '10 minutes 30 seconds'
         UNION ALL
         SELECT 'lon network work', '{}', '{example}', ARRAY(SELECT id FROM datacenters WHERE code = 'lon'),
                $1 - interval '15 minutes 30 seconds', $1 - interval '5 minutes 30 seconds'",
    )
    .bind(end)
    .execute(&db.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn every_documented_query_runs_and_returns_its_columns() {
    let db = TestDb::fresh().await;
    seed(&db).await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/queries");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "{files:?}");
    for file in files {
        let sql = std::fs::read_to_string(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            sql.starts_with("-- "),
            "{name} starts with its documentation"
        );
        let promised: Vec<&str> = sql
            .lines()
            .find_map(|l| l.strip_prefix("-- columns:"))
            .unwrap_or_else(|| panic!("{name} has no `-- columns:` line"))
            .split(',')
            .map(str::trim)
            .collect();
        let rows = sqlx::raw_sql(&sql)
            .fetch_all(&db.pool)
            .await
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        assert!(!rows.is_empty(), "{name} returned no rows");
        let columns: Vec<&str> = rows[0].columns().iter().map(|c| c.name()).collect();
        assert_eq!(columns, promised, "{name}");
    }
}

#[tokio::test]
async fn the_queries_answer_correctly() {
    let db = TestDb::fresh().await;
    seed(&db).await;
    let sql = |name: &str| {
        std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("sql/queries")
                .join(name),
        )
        .unwrap()
    };
    // 12 of the 120 heartbeats of each assignment failed; sf missed 5 of example.com's.
    let uptime = sqlx::raw_sql(&sql("uptime.sql"))
        .fetch_all(&db.pool)
        .await
        .unwrap();
    for row in &uptime {
        let checks: i64 = row.get("checks");
        let down: i64 = row.get("down");
        let expected = match (
            text(row, "monitor").as_str(),
            text(row, "datacenter").as_str(),
        ) {
            ("example.com", "sf") => (115, 12),
            _ => (120, 12),
        };
        assert_eq!((checks, down), expected);
    }
    // The latest heartbeat is the newest slot of each of the 13 assignments.
    let latest = sqlx::raw_sql(&sql("latest_heartbeat.sql"))
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(latest.len(), 9 + 2 + 2);
    let totals: Vec<f64> = latest.iter().map(|r| r.get("total_ms")).collect();
    assert!(
        totals.iter().all(|t| (*t - 44.376).abs() < 1e-9),
        "{totals:?}"
    );
    // The certificate of every monitor expires in about 20 days.
    let certs = sqlx::raw_sql(&sql("certificates_expiring.sql"))
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(certs.len(), 3);
    // Two terms per datacenter, the newest first.
    let terms = sqlx::raw_sql(&sql("leadership_history.sql"))
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(terms.len(), 18);
    let first_term: i64 = terms[0].get("term");
    assert_eq!(first_term, 2);
}

fn text(row: &PgRow, column: &str) -> String {
    row.get(column)
}

/// An interval column in whole seconds (the queries round them to the second).
fn seconds(row: &PgRow, column: &str) -> Option<i64> {
    row.get::<Option<PgInterval>, _>(column).map(|i| {
        assert_eq!(i.months, 0, "{column}");
        i64::from(i.days) * 86_400 + i.microseconds / 1_000_000
    })
}

async fn run(db: &TestDb, name: &str) -> Vec<PgRow> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sql/queries")
        .join(name);
    // Prepared, so that intervals arrive in binary (sqlx cannot read them as text).
    sqlx::query(&std::fs::read_to_string(path).unwrap())
        .fetch_all(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[tokio::test]
async fn the_incident_and_maintenance_queries_answer_correctly() {
    let db = TestDb::fresh().await;
    seed(&db).await;

    // Open incidents, newest first, with their subject, datacenters and state.
    let open = run(&db, "open_incidents.sql").await;
    let summary: Vec<String> = open
        .iter()
        .map(|r| {
            let datacenters: Vec<String> = r.get("datacenters");
            let acknowledged_by: Option<String> = r.get("acknowledged_by");
            let muted: bool = r.get("muted");
            format!(
                "{} {} [{}] acknowledged by {} muted {muted}",
                text(r, "subject"),
                text(r, "kind"),
                datacenters.join(","),
                acknowledged_by.as_deref().unwrap_or("nobody"),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            "iana.org home monitor_degraded [lon] acknowledged by nobody muted true",
            "cloudflare dns-over-https monitor_down [lon,va] acknowledged by alice muted false",
            "syd datacenter_impaired [syd] acknowledged by nobody muted false",
        ]
    );
    let syd_open_for = seconds(&open[2], "open_for").unwrap();
    assert!((1200..1260).contains(&syd_open_for), "{syd_open_for}");
    assert_eq!(text(&open[0], "severity"), "warning");
    assert_eq!(text(&open[1], "severity"), "critical");

    // History over 30 days: example.com's two outages (10 and 30 minutes) but not the
    // one 40 days ago; the open ones count, unresolved.
    let history = run(&db, "incident_history.sql").await;
    let example = &history[0];
    assert_eq!(
        (text(example, "subject"), text(example, "kind")),
        ("example.com".to_string(), "monitor_down".to_string())
    );
    let counts: (i64, i64) = (example.get("incidents"), example.get("resolved"));
    assert_eq!(counts, (2, 2));
    assert_eq!(seconds(example, "mean_time_to_resolve"), Some(20 * 60));
    assert_eq!(seconds(example, "longest"), Some(30 * 60));
    assert_eq!(seconds(example, "total_duration"), Some(40 * 60));
    let subjects: Vec<String> = history.iter().map(|r| text(r, "subject")).collect();
    assert_eq!(
        subjects,
        [
            "example.com",
            "syd",
            "cloudflare dns-over-https",
            "iana.org home"
        ]
    );
    let syd = &history[1];
    let syd_counts: (i64, i64) = (syd.get("incidents"), syd.get("resolved"));
    assert_eq!(syd_counts, (1, 0));
    assert_eq!(seconds(syd, "mean_time_to_resolve"), None);

    // Missed slots: in the last 24 hours every minutely assignment misses the 22
    // hours before its first heartbeat; sf also missed the 5 slots of the seeded gap.
    let missed = run(&db, "missed_slots.sql").await;
    let row_of = |dc: &str| {
        missed
            .iter()
            .find(|r| text(r, "monitor") == "example.com" && text(r, "datacenter") == dc)
            .unwrap_or_else(|| panic!("no missed slots for example.com in {dc}"))
    };
    let (ny, sf) = (row_of("ny"), row_of("sf"));
    let ny_counts: (i64, i64) = (ny.get("gaps"), ny.get("missed_slots"));
    let sf_counts: (i64, i64) = (sf.get("gaps"), sf.get("missed_slots"));
    assert_eq!(ny_counts.0, 1);
    assert!((1300..=1320).contains(&ny_counts.1), "{ny_counts:?}");
    assert_eq!(sf_counts, (ny_counts.0 + 1, ny_counts.1 + 5));
    let last_gap: (DateTime<Utc>, DateTime<Utc>) = (sf.get("last_gap_from"), sf.get("last_gap_to"));
    let last_heartbeat: DateTime<Utc> = sqlx::query_scalar(
        "SELECT max(scheduled_at) FROM api_heartbeats h JOIN api_monitors m ON m.id = h.monitor_id
         WHERE m.name = 'example.com'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        last_gap,
        (
            last_heartbeat - chrono::Duration::minutes(39),
            last_heartbeat - chrono::Duration::minutes(35)
        )
    );

    // Uptime without maintenance: in lon, example.com's 15 heartbeats under the two
    // overlapping windows (one of them failed) and the other monitors' 10 under the
    // tag window are left out, each once.
    let uptime = run(&db, "uptime_excluding_maintenance.sql").await;
    let mut left_out = 0;
    for row in &uptime {
        let got: (i64, i64, i64) = (
            row.get("checks"),
            row.get("down"),
            row.get("in_maintenance"),
        );
        let expected = match (
            text(row, "monitor").as_str(),
            text(row, "datacenter").as_str(),
        ) {
            ("example.com", "lon") => (105, 11, 15),
            (_, "lon") => (110, 11, 10),
            ("example.com", "sf") => (115, 12, 0),
            _ => (120, 12, 0),
        };
        assert_eq!(
            got,
            expected,
            "{} {}",
            text(row, "monitor"),
            text(row, "datacenter")
        );
        left_out += got.2;
    }
    assert_eq!(uptime.len(), 13);
    assert_eq!(left_out, 15 + 10 + 10);
    // The same heartbeats as vantage_in_maintenance recognises one by one.
    let one_by_one: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM api_heartbeats h
         WHERE vantage_in_maintenance(h.monitor_id, h.datacenter_id, h.scheduled_at)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(one_by_one, left_out);
}
