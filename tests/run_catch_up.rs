//! After a takeover the new leader probes every slot missed since the last stored
//! heartbeat, not only the latest: a Postgres restart under two instances of a
//! datacenter that both stop probing without the database loses no slot.

mod support;

use std::time::Duration;

use support::cluster::{
    heartbeats, missed_slots, seed_datacenters, seed_monitor, serve_target,
    wait_for_leader_probing, Instance, InstanceOptions,
};
use support::eventually::eventually;
use support::pg::DedicatedCluster;

const ONE_SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn a_takeover_after_a_postgres_restart_replays_every_missed_slot() {
    let cluster = DedicatedCluster::start().await;
    let db = cluster.fresh_db().await;
    let target = serve_target().await;
    let dc = seed_datacenters(&db.pool, &["va"]).await[0];
    let monitor = seed_monitor(&db.pool, "target-ok", &format!("http://{target}/ok"), 1).await;

    // Strict self-fencing: neither instance probes while the database is away, so every
    // slot of the outage has to come from the catch-up of whoever leads next.
    let start = |name| {
        Instance::start(InstanceOptions {
            database_url: &db.url,
            datacenter: "va",
            name,
            extra_env: vec![("VANTAGE_DB_OUTAGE_GRACE", "0s".to_string())],
        })
    };
    let (mut a, mut b) = (start("va-a"), start("va-b"));
    wait_for_leader_probing(&db.pool, dc, monitor, 3).await;

    db.pool.close().await;
    cluster.stop_server().await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    cluster.start_server().await;
    let restarted_at = chrono::Utc::now();
    let pool = cluster.pool(&db.name).await;

    let beats = eventually(
        "the grid whole again, three slots past the restart",
        Duration::from_secs(45),
        || async {
            let beats = heartbeats(&pool, monitor).await;
            let past_restart = beats
                .iter()
                .any(|b| b.scheduled_at > restarted_at + chrono::Duration::seconds(3));
            (past_restart && missed_slots(&beats, ONE_SECOND).is_empty()).then_some(beats)
        },
    )
    .await;
    let spanned = (beats.last().unwrap().scheduled_at - beats[0].scheduled_at).num_seconds();
    assert!(spanned >= 10, "the data spans the outage ({spanned} s)");

    // The outage's slots were replayed late (their lag says so), not probed on time.
    let replayed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM api_heartbeats WHERE monitor_id = $1 AND schedule_lag_ms > 2000",
    )
    .bind(monitor)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(replayed >= 3, "{replayed} slots replayed");
    let said_so = [&mut a, &mut b].into_iter().any(|i| {
        i.logs()
            .iter()
            .any(|l| l.contains("catching up slots missed"))
    });
    assert!(said_so, "the new leader logs its catch-up");
}
