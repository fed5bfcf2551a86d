//! Every documented query in `sql/queries/` runs against the schema with seeded data
//! and returns the columns its header promises (`-- columns: ...`), with rows.

mod support;

use std::time::Duration;

use chrono::Utc;
use sqlx::{Column, Row};
use support::pg::{heartbeat, TestDb};
use vantage::storage::{self, HeartbeatWriter, WriterConfig};
use vantage::{ErrorKind, ProbeStatus};

async fn seed(db: &TestDb) {
    storage::seed_example(&db.pool).await.unwrap();
    let assignments: Vec<(i32, i32)> =
        sqlx::query_as("SELECT monitor_id, datacenter_id FROM monitor_assignments")
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
    let end = Utc::now() - chrono::Duration::minutes(1);
    let end = end - chrono::Duration::nanoseconds(end.timestamp_subsec_nanos() as i64);
    for (monitor, dc) in assignments {
        for i in 0..120 {
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
    assert!(files.len() >= 6, "{files:?}");
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
    // 12 of the 120 heartbeats of each assignment failed.
    let uptime = sqlx::raw_sql(&sql("uptime.sql"))
        .fetch_all(&db.pool)
        .await
        .unwrap();
    for row in &uptime {
        let checks: i64 = row.get("checks");
        let down: i64 = row.get("down");
        assert_eq!((checks, down), (120, 12));
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
