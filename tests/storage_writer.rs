//! The heartbeat writer against a real Postgres: every column round-trips, duplicate
//! slots are harmless, a missing partition is created rather than a row dropped,
//! retention drops whole days, and nothing is lost when Postgres restarts under it or
//! when the writer itself is restarted with heartbeats spooled on disk.

mod support;

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::PgPool;
use support::eventually::eventually;
use support::pg::{count_heartbeats, heartbeat, DedicatedCluster, TestDb};
use vantage::storage::{self, HeartbeatWriter, WriterConfig, WriterStats};
use vantage::{ErrorKind, Heartbeat, ProbeStatus};

fn config(spool_dir: &std::path::Path) -> WriterConfig {
    WriterConfig {
        spool_dir: spool_dir.to_path_buf(),
        batch_delay: Duration::from_millis(50),
        shutdown_timeout: Duration::from_secs(3),
        max_retry_delay: Duration::from_millis(500),
        ..WriterConfig::default()
    }
}

/// Waits until `pool` holds `n` heartbeats (or panics after `within`).
async fn wait_for_rows(pool: &PgPool, n: i64, within: Duration) {
    eventually(&format!("{n} stored rows"), within, || async {
        let count = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM api_heartbeats")
            .fetch_one(pool)
            .await;
        match count {
            Ok(count) if count == n => Ok(()),
            other => Err(other.map(|count| format!("{count} rows"))),
        }
    })
    .await
}

async fn wait_until(
    stats: &WriterStats,
    what: &str,
    cond: impl Fn(&storage::WriterSnapshot) -> bool,
) {
    eventually(what, Duration::from_secs(30), || async {
        let snapshot = stats.snapshot();
        if cond(&snapshot) {
            Ok(())
        } else {
            Err(snapshot)
        }
    })
    .await
}

fn slot(i: i64) -> DateTime<Utc> {
    // Today, on a 1 s grid, so the partitions created by migrate hold them.
    let midnight = Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    midnight + chrono::Duration::seconds(i)
}

#[tokio::test]
async fn every_column_round_trips() {
    let db = TestDb::fresh().await;
    let spool = tempfile::tempdir().unwrap();
    let (tx, writer) = HeartbeatWriter::spawn(db.pool.clone(), config(spool.path()))
        .await
        .unwrap();

    let full = heartbeat(1, 1, slot(10));
    let mut failed = heartbeat(1, 2, slot(10));
    failed.agent_id = None;
    failed.leader_term = None;
    failed.report = vantage::ProbeReport {
        status: ProbeStatus::Down,
        http_status: None,
        dns_ms: Some(0.001),
        connect_ms: None,
        tls_ms: None,
        ttfb_ms: None,
        transfer_ms: None,
        total_ms: 5000.000001,
        response_size_bytes: None,
        remote_ip: Some("2001:db8::1".parse().unwrap()),
        http_version: None,
        tls_version: None,
        tls_cert_expires_at: None,
        redirect_count: 2,
        error_kind: Some(ErrorKind::ConnectTimeout),
        error_message: Some("connect timed out after 5 s \u{0} (nul)".into()),
        response_body: Some("<html>é</html>".into()),
        content_type: None,
        server: None,
        response_headers: None,
        details: None,
    };
    let mut every_kind = Vec::new();
    for (i, kind) in ErrorKind::ALL.iter().enumerate() {
        let mut hb = heartbeat(2, 1, slot(i as i64));
        hb.report.status = ProbeStatus::Down;
        hb.report.error_kind = Some(*kind);
        every_kind.push(hb);
    }
    tx.send(full.clone());
    tx.send(failed.clone());
    for hb in &every_kind {
        tx.send(hb.clone());
    }
    let summary = writer.shutdown().await;
    assert_eq!(
        summary.stats.inserted_rows,
        2 + ErrorKind::ALL.len() as u64,
        "{summary:?}"
    );

    let read = |monitor: i32, dc: i32| {
        let pool = db.pool.clone();
        async move { read_heartbeat(&pool, monitor, dc).await }
    };
    assert_eq!(read(1, 1).await, full);
    let mut expected = failed.clone();
    expected.report.error_message = Some("connect timed out after 5 s \u{FFFD} (nul)".into());
    assert_eq!(read(1, 2).await, expected);
    let kinds: Vec<String> = sqlx::query_scalar(
        "SELECT error_kind FROM api_heartbeats WHERE monitor_id = 2 ORDER BY scheduled_at",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        kinds,
        ErrorKind::ALL
            .iter()
            .map(|k| k.as_str().to_string())
            .collect::<Vec<_>>()
    );
}

/// Reads a heartbeat back into the Rust type, column by column.
async fn read_heartbeat(pool: &PgPool, monitor_id: i32, datacenter_id: i32) -> Heartbeat {
    use sqlx::Row;
    let row = sqlx::query(
        "SELECT scheduled_at, executed_at, agent_id, leader_term, status, success, http_status,
                dns_ms, connect_ms, tls_ms, ttfb_ms, transfer_ms, total_ms, schedule_lag_ms,
                response_size_bytes, host(remote_ip) AS remote_ip, http_version, tls_version,
                tls_cert_expires_at, redirect_count, error_kind, error_message, response_body
         FROM api_heartbeats WHERE monitor_id = $1 AND datacenter_id = $2",
    )
    .bind(monitor_id)
    .bind(datacenter_id)
    .fetch_one(pool)
    .await
    .unwrap();
    let status: String = row.get("status");
    let status = *ProbeStatus::ALL
        .iter()
        .find(|s| s.as_str() == status)
        .unwrap();
    let success: bool = row.get("success");
    assert_eq!(success, status.is_success());
    let kind: Option<String> = row.get("error_kind");
    Heartbeat {
        monitor_id,
        datacenter_id,
        scheduled_at: row.get("scheduled_at"),
        executed_at: row.get("executed_at"),
        agent_id: row.get("agent_id"),
        leader_term: row.get("leader_term"),
        schedule_lag_ms: row.get("schedule_lag_ms"),
        report: vantage::ProbeReport {
            status,
            http_status: row.get::<Option<i32>, _>("http_status").map(|s| s as u16),
            dns_ms: row.get("dns_ms"),
            connect_ms: row.get("connect_ms"),
            tls_ms: row.get("tls_ms"),
            ttfb_ms: row.get("ttfb_ms"),
            transfer_ms: row.get("transfer_ms"),
            total_ms: row.get("total_ms"),
            response_size_bytes: row
                .get::<Option<i64>, _>("response_size_bytes")
                .map(|b| b as u64),
            remote_ip: row
                .get::<Option<String>, _>("remote_ip")
                .map(|ip| ip.parse().unwrap()),
            http_version: row.get("http_version"),
            tls_version: row.get("tls_version"),
            tls_cert_expires_at: row.get("tls_cert_expires_at"),
            redirect_count: row.get::<i32, _>("redirect_count") as u32,
            error_kind: kind.map(|k| *ErrorKind::ALL.iter().find(|e| e.as_str() == k).unwrap()),
            error_message: row.get("error_message"),
            response_body: row.get("response_body"),
            content_type: None,
            server: None,
            response_headers: None,
            details: None,
        },
    }
}

#[tokio::test]
async fn duplicate_slots_are_ignored() {
    let db = TestDb::fresh().await;
    let spool = tempfile::tempdir().unwrap();
    let (tx, writer) = HeartbeatWriter::spawn(db.pool.clone(), config(spool.path()))
        .await
        .unwrap();
    let first = heartbeat(1, 1, slot(0));
    let mut second = first.clone();
    second.agent_id = Some(99); // another leader probed the same slot
    tx.send(first);
    tx.send(second);
    tx.send(heartbeat(1, 1, slot(1)));
    let summary = writer.shutdown().await;
    assert_eq!(summary.stats.inserted_rows, 2);
    assert_eq!(summary.stats.duplicate_rows, 1);
    assert_eq!(count_heartbeats(&db.pool).await, 2);
    let agent: i64 =
        sqlx::query_scalar("SELECT agent_id FROM api_heartbeats WHERE scheduled_at = $1")
            .bind(slot(0))
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(agent, 7, "the first write of a slot wins");
}

#[tokio::test]
async fn a_batch_meeting_stored_keys_still_stores_its_new_rows() {
    let db = TestDb::fresh().await;
    let spool = tempfile::tempdir().unwrap();
    let (tx, writer) = HeartbeatWriter::spawn(db.pool.clone(), config(spool.path()))
        .await
        .unwrap();
    tx.send(heartbeat(1, 1, slot(0)));
    tx.send(heartbeat(2, 1, slot(0)));
    writer.shutdown().await;

    // A replay (or an overlapping leader) sends two stored slots among new ones.
    let (tx, writer) = HeartbeatWriter::spawn(db.pool.clone(), config(spool.path()))
        .await
        .unwrap();
    for h in [
        heartbeat(1, 1, slot(1)),
        heartbeat(1, 1, slot(0)),
        heartbeat(2, 1, slot(1)),
        heartbeat(2, 1, slot(0)),
    ] {
        tx.send(h);
    }
    let summary = writer.shutdown().await;
    assert_eq!(summary.stats.inserted_rows, 2, "{summary:?}");
    assert_eq!(summary.stats.duplicate_rows, 2, "{summary:?}");
    assert_eq!(summary.stats.rejected_rows, 0, "{summary:?}");
    assert_eq!(count_heartbeats(&db.pool).await, 4);
}

#[tokio::test]
async fn a_heartbeat_whose_day_has_no_partition_creates_it() {
    let db = TestDb::fresh().await;
    let spool = tempfile::tempdir().unwrap();
    let (tx, writer) = HeartbeatWriter::spawn(db.pool.clone(), config(spool.path()))
        .await
        .unwrap();
    let far = Utc.with_ymd_and_hms(2031, 3, 4, 23, 59, 59).unwrap();
    let past = Utc.with_ymd_and_hms(2020, 1, 2, 0, 0, 0).unwrap();
    tx.send(heartbeat(1, 1, far));
    tx.send(heartbeat(1, 1, past));
    tx.send(heartbeat(1, 1, slot(0)));
    let summary = writer.shutdown().await;
    assert_eq!(summary.stats.inserted_rows, 3, "{summary:?}");
    assert_eq!(summary.stats.partitions_created, 2);
    let partitions = storage::partitions::list(&db.pool).await.unwrap();
    assert!(partitions.contains(&"api_heartbeats_20310304".to_string()));
    assert!(partitions.contains(&"api_heartbeats_20200102".to_string()));
    let at: DateTime<Utc> = sqlx::query_scalar("SELECT scheduled_at FROM api_heartbeats_20310304")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(at, far, "partition bounds are UTC days");
}

#[tokio::test]
async fn partitions_are_kept_ahead_and_dropped_after_retention() {
    let db = TestDb::fresh().await;
    let today = Utc::now().date_naive();
    let day = |offset: i64| today + chrono::Duration::days(offset);
    let name = |d: chrono::NaiveDate| format!("api_heartbeats_{}", d.format("%Y%m%d"));
    storage::partitions::ensure_days(&db.pool, &[day(-40), day(-31), day(-30), day(-29)])
        .await
        .unwrap();

    let created = storage::partitions::ensure_ahead(&db.pool, 10)
        .await
        .unwrap();
    assert_eq!(created, vec![name(day(8)), name(day(9)), name(day(10))]);
    assert!(storage::partitions::ensure_ahead(&db.pool, 10)
        .await
        .unwrap()
        .is_empty());

    let dropped = storage::partitions::drop_older_than(&db.pool, 30)
        .await
        .unwrap();
    assert_eq!(dropped, vec![name(day(-40)), name(day(-31))]);
    let left = storage::partitions::list(&db.pool).await.unwrap();
    assert_eq!(left.first(), Some(&name(day(-30))));
    assert_eq!(left.len(), 2 + 11);
    assert!(storage::partitions::drop_older_than(&db.pool, 30)
        .await
        .unwrap()
        .is_empty());

    // The leader's daily run does both.
    let done = storage::partitions::housekeeping(&db.pool, 0)
        .await
        .unwrap();
    assert!(done.created.is_empty(), "{done:?}");
    assert_eq!(done.dropped, vec![name(day(-30)), name(day(-29))]);
}

#[tokio::test]
async fn a_postgres_restart_while_writing_10000_heartbeats_loses_none() {
    let cluster = DedicatedCluster::start().await;
    let db = cluster.fresh_db().await;
    let pool = cluster.pool(&db.name).await;
    let spool = tempfile::tempdir().unwrap();
    let (tx, writer) = HeartbeatWriter::spawn(pool.clone(), config(spool.path()))
        .await
        .unwrap();
    let stats = writer.stats();

    let producer = tokio::spawn(async move {
        for i in 0..10_000 {
            tx.send(heartbeat(1 + (i % 100) as i32, 1, slot(i / 100)));
            if i % 100 == 99 {
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
    });
    wait_until(&stats, "some rows stored", |s| s.inserted_rows >= 1000).await;
    cluster.stop_server().await;
    wait_until(&stats, "the writer noticing", |s| s.degraded).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.start_server().await;
    producer.await.unwrap();
    wait_until(&stats, "recovery", |s| {
        !s.degraded && s.buffered_rows == 0 && s.spooled_rows == 0
    })
    .await;
    let summary = writer.shutdown().await;

    assert_eq!(count_heartbeats(&pool).await, 10_000, "{summary:?}");
    assert!(summary.stats.insert_failures >= 1, "{summary:?}");
    assert_eq!(summary.stats.inserted_rows, 10_000, "{summary:?}");
    assert_eq!(summary.rows_left_in_spool, 0);
}

#[tokio::test]
async fn heartbeats_spooled_by_a_stopped_writer_are_replayed_by_the_next() {
    let cluster = DedicatedCluster::start().await;
    let db = cluster.fresh_db().await;
    let pool = cluster.pool(&db.name).await;
    let spool = tempfile::tempdir().unwrap();
    let cfg = WriterConfig {
        memory_rows: 100, // spill to disk early
        shutdown_timeout: Duration::from_secs(1),
        ..config(spool.path())
    };

    cluster.stop_server().await;
    let (tx, writer) = HeartbeatWriter::spawn(pool.clone(), cfg.clone())
        .await
        .unwrap();
    let stats = writer.stats();
    for i in 0..2_500 {
        tx.send(heartbeat(1, 1, slot(i)));
    }
    wait_until(&stats, "spooling", |s| s.spooled_rows > 0 && s.degraded).await;
    let summary = writer.shutdown().await;
    assert_eq!(summary.rows_left_in_spool, 2_500, "{summary:?}");
    assert_eq!(summary.spool_files.len(), 1);

    cluster.start_server().await;
    let (tx, writer) = HeartbeatWriter::spawn(pool.clone(), cfg).await.unwrap();
    assert_eq!(writer.stats().snapshot().spooled_rows, 2_500);
    tx.send(heartbeat(1, 1, slot(5_000)));
    wait_for_rows(&pool, 2_501, Duration::from_secs(30)).await;
    let summary = writer.shutdown().await;
    assert_eq!(summary.rows_left_in_spool, 0, "{summary:?}");
    assert_eq!(summary.stats.spooled_rows, 0);
    assert_eq!(summary.stats.spool_bytes, 0);
    let files: Vec<_> = std::fs::read_dir(spool.path()).unwrap().collect();
    assert!(
        files.is_empty(),
        "replayed spool files are deleted: {files:?}"
    );
}

#[tokio::test]
async fn concurrent_writers_never_share_a_spool_file() {
    let cluster = DedicatedCluster::start().await;
    let db = cluster.fresh_db().await;
    let pool = cluster.pool(&db.name).await;
    let spool = tempfile::tempdir().unwrap();
    let cfg = WriterConfig {
        memory_rows: 10,
        shutdown_timeout: Duration::from_secs(1),
        ..config(spool.path())
    };
    cluster.stop_server().await;
    let (tx_a, a) = HeartbeatWriter::spawn(pool.clone(), cfg.clone())
        .await
        .unwrap();
    let (tx_b, b) = HeartbeatWriter::spawn(pool.clone(), cfg.clone())
        .await
        .unwrap();
    for i in 0..100 {
        tx_a.send(heartbeat(1, 1, slot(i)));
        tx_b.send(heartbeat(2, 1, slot(i)));
    }
    wait_until(&a.stats(), "a spooling", |s| s.spooled_rows > 0).await;
    wait_until(&b.stats(), "b spooling", |s| s.spooled_rows > 0).await;
    // A third writer starting now must not adopt the live writers' files.
    let (_tx_c, c) = HeartbeatWriter::spawn(pool.clone(), cfg.clone())
        .await
        .unwrap();
    assert_eq!(c.stats().snapshot().spooled_rows, 0);
    let (sa, sb) = tokio::join!(a.shutdown(), b.shutdown());
    assert_ne!(sa.spool_files, sb.spool_files);
    assert_eq!(sa.rows_left_in_spool + sb.rows_left_in_spool, 200);
    c.shutdown().await;

    cluster.start_server().await;
    let (_tx, d) = HeartbeatWriter::spawn(pool.clone(), cfg).await.unwrap();
    wait_for_rows(&pool, 200, Duration::from_secs(30)).await;
    d.shutdown().await;
}

#[tokio::test]
async fn a_spooled_outage_drains_at_full_speed_while_new_heartbeats_keep_coming() {
    let cluster = DedicatedCluster::start().await;
    let db = cluster.fresh_db().await;
    let pool = cluster.pool(&db.name).await;
    let spool = tempfile::tempdir().unwrap();
    cluster.stop_server().await;
    let (tx, writer) = HeartbeatWriter::spawn(pool.clone(), config(spool.path()))
        .await
        .unwrap();
    let stats = writer.stats();
    let outage_rows = 50_000;
    for i in 0..outage_rows {
        tx.send(heartbeat(1 + (i % 100) as i32, 1, slot(i / 100)));
    }
    wait_until(&stats, "the outage's heartbeats on disk", |s| {
        s.spooled_rows == outage_rows as u64 && s.buffered_rows == 0
    })
    .await;

    cluster.start_server().await;
    // Probing goes on during the drain: 1,000 heartbeats a second.
    let producer = tokio::spawn(async move {
        for i in 0..2_000 {
            tx.send(heartbeat(1 + (i % 100) as i32, 1, slot(1_000 + i / 100)));
            if i % 100 == 99 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    // The clock starts with the first insert that lands (reconnecting is not draining).
    wait_until(&stats, "Postgres back", |s| s.inserted_rows > 0).await;
    let started = tokio::time::Instant::now();
    wait_until(&stats, "the spool drained", |s| s.spooled_rows == 0).await;
    let drained = started.elapsed();
    producer.await.unwrap();
    wait_for_rows(&pool, outage_rows + 2_000, Duration::from_secs(30)).await;
    let rate = outage_rows as f64 / drained.as_secs_f64();
    eprintln!("drained {outage_rows} spooled heartbeats in {drained:.2?}: {rate:.0} rows/s");
    let summary = writer.shutdown().await;
    assert_eq!(summary.stats.dropped_rows, 0, "{summary:?}");
    // A generous floor for a debug build on a busy shared machine (BENCHMARKS.md has
    // figures); a stall would be seconds per batch.
    assert!(rate > 2_000.0, "{rate:.0} rows/s");
}

#[tokio::test]
async fn partition_maintenance_gives_up_on_a_stuck_lock_holder() {
    let db = TestDb::fresh().await;
    // A session that took a lock on the heartbeat table and never lets go.
    let mut holder = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE api_heartbeats IN SHARE UPDATE EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let far = Utc
        .with_ymd_and_hms(2032, 1, 1, 0, 0, 0)
        .unwrap()
        .date_naive();
    let err = storage::partitions::ensure_days(&db.pool, &[far])
        .await
        .expect_err("creating a partition cannot take its lock");
    let waited = started.elapsed();
    let code = match &err {
        sqlx::Error::Database(e) => e.code().map(|c| c.into_owned()),
        _ => None,
    };
    assert_eq!(code.as_deref(), Some("55P03"), "lock_not_available: {err}");
    assert!(
        waited >= storage::partitions::LIMITS.lock_timeout && waited < Duration::from_secs(15),
        "gave up after {waited:?}"
    );
    holder.rollback().await.unwrap();
    // Once the holder is gone, the same call succeeds.
    assert_eq!(
        storage::partitions::ensure_days(&db.pool, &[far])
            .await
            .unwrap(),
        vec!["api_heartbeats_20320101".to_string()]
    );
}

#[tokio::test]
async fn heartbeats_that_cannot_be_spooled_at_shutdown_are_reported_lost_not_spooled() {
    let Some(disk) = support::disk::SmallDisk::mount("64k") else {
        return;
    };
    let cluster = DedicatedCluster::start().await;
    let db = cluster.fresh_db().await;
    let pool = cluster.pool(&db.name).await;
    cluster.stop_server().await;
    // Spooled 50 rows (~30 kB) per write: two writes fit, the third fills the disk
    // halfway through and must leave no torn line behind.
    let cfg = WriterConfig {
        batch_rows: 50,
        ..config(disk.path())
    };
    let (tx, writer) = HeartbeatWriter::spawn(pool.clone(), cfg.clone())
        .await
        .unwrap();
    for i in 0..500 {
        tx.send(heartbeat(1, 1, slot(i)));
    }
    let summary = writer.shutdown().await;
    eprintln!(
        "spooled {}, lost {}",
        summary.spooled_rows, summary.lost_rows
    );
    assert!(summary.lost_rows >= 300, "{summary:?}");
    assert!(summary.spooled_rows > 0, "{summary:?}");
    assert_eq!(
        summary.spooled_rows + summary.lost_rows,
        500,
        "each heartbeat is spooled or lost: {summary:?}"
    );
    assert_eq!(
        summary.rows_left_in_spool, summary.spooled_rows,
        "{summary:?}"
    );
    assert_eq!(summary.stats.dropped_rows, summary.lost_rows, "{summary:?}");
    assert_eq!(summary.stats.buffered_rows, 0, "{summary:?}");
    assert!(summary.stats.spool_write_failures >= 1, "{summary:?}");
    // The spool holds whole lines only: the next writer replays exactly what was saved.
    cluster.start_server().await;
    let (_tx, next) = HeartbeatWriter::spawn(pool.clone(), cfg).await.unwrap();
    wait_for_rows(&pool, summary.spooled_rows as i64, Duration::from_secs(30)).await;
    let replayed = next.shutdown().await;
    assert_eq!(
        replayed.stats.inserted_rows, summary.spooled_rows,
        "{replayed:?}"
    );
}
