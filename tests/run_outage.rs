//! Database trouble under a running leader: a Postgres restart loses no heartbeat, and a
//! leader cut off from Postgres stops dispatching after its grace while a standby takes
//! over — and once the partition heals, the old leader's spooled heartbeats fill in.

mod support;

use std::time::Duration;

use support::cluster::{
    agent_id_of, current_leader, heartbeats, missed_slots, seed_datacenters, seed_monitor,
    serve_target, wait_for_beats_by, Instance, InstanceOptions,
};
use support::eventually::eventually;
use support::pg::{DedicatedCluster, TestDb};
use support::proxy::PartitionProxy;

const ONE_SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn a_postgres_restart_under_a_running_leader_loses_no_heartbeat() {
    let cluster = DedicatedCluster::start().await;
    let db = cluster.fresh_db().await;
    let target = serve_target().await;
    let dc = seed_datacenters(&db.pool, &["va"]).await[0];
    let monitor = seed_monitor(&db.pool, "target-ok", &format!("http://{target}/ok"), 1).await;

    let mut leader = Instance::start(InstanceOptions {
        database_url: &db.url,
        datacenter: "va",
        name: "va-a",
        extra_env: vec![],
    });
    let (_, first_term) = eventually(
        "a leader and three heartbeats",
        Duration::from_secs(30),
        || async {
            let leader = current_leader(&db.pool, dc).await?;
            (heartbeats(&db.pool, monitor).await.len() >= 3).then_some(leader)
        },
    )
    .await;

    db.pool.close().await;
    cluster.stop_server().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.start_server().await;
    let pool = cluster.pool(&db.name).await;

    leader
        .wait_for_log(
            &["acquired leadership", "\"scope\":\"datacenter:"],
            Duration::from_secs(30),
        )
        .await;
    let (_, new_term) = eventually(
        "leadership re-established",
        Duration::from_secs(20),
        || async {
            current_leader(&pool, dc)
                .await
                .filter(|(_, term)| *term > first_term)
        },
    )
    .await;
    assert!(new_term > first_term);

    // Five slots after the restart, everything measured during the outage has arrived.
    let beats = eventually(
        "five heartbeats of the new term",
        Duration::from_secs(20),
        || async {
            let beats = heartbeats(&pool, monitor).await;
            let of_new_term = beats
                .iter()
                .filter(|b| b.leader_term == Some(new_term))
                .count();
            if of_new_term >= 5 {
                Ok(beats)
            } else {
                Err(format!("{of_new_term} heartbeats of term {new_term}"))
            }
        },
    )
    .await;
    assert_eq!(
        missed_slots(&beats, ONE_SECOND),
        vec![],
        "no hole across the restart"
    );
    let spanned = (beats.last().unwrap().scheduled_at - beats[0].scheduled_at).num_seconds();
    assert!(spanned >= 10, "the data spans the outage ({spanned} s)");
}

#[tokio::test]
async fn a_leader_cut_off_from_postgres_stops_and_a_standby_takes_over() {
    let db = TestDb::fresh().await;
    let target = serve_target().await;
    let dc = seed_datacenters(&db.pool, &["va"]).await[0];
    let monitor = seed_monitor(&db.pool, "target-ok", &format!("http://{target}/ok"), 1).await;

    // The leader reaches Postgres through a proxy we can cut; the standby directly.
    let proxy = PartitionProxy::start(db.socket_addr(), Duration::from_secs(2)).await;
    let proxied_url = db.url_via(proxy.addr);
    let grace = Duration::from_secs(3);
    let mut leader = Instance::start(InstanceOptions {
        database_url: &proxied_url,
        datacenter: "va",
        name: "va-a",
        extra_env: vec![("VANTAGE_DB_OUTAGE_GRACE", "3s".to_string())],
    });
    leader
        .wait_for_log(
            &["acquired leadership", "\"scope\":\"datacenter:"],
            Duration::from_secs(30),
        )
        .await;
    let standby = Instance::start(InstanceOptions {
        database_url: &db.url,
        datacenter: "va",
        name: "va-b",
        extra_env: vec![],
    });
    let old_agent = agent_id_of(&db.pool, "va-a").await;
    wait_for_beats_by(&db.pool, monitor, old_agent, 3).await;
    let standby_agent = eventually(
        "the standby registered",
        Duration::from_secs(20),
        || async {
            sqlx::query_scalar::<_, i64>("SELECT id FROM agents WHERE instance_name = 'va-b'")
                .fetch_optional(&db.pool)
                .await
                .unwrap()
        },
    )
    .await;

    let cut_at = chrono::Utc::now();
    proxy.cut();

    leader
        .wait_for_log(
            &["lost the leadership lock connection"],
            Duration::from_secs(5),
        )
        .await;
    leader
        .wait_for_log(&["stopping probes"], grace + Duration::from_secs(5))
        .await;
    let status = leader
        .status()
        .await
        .expect("/status answers during the partition");
    assert_eq!(
        status["role"], "standby",
        "the cut-off leader stopped dispatching"
    );

    let (agent, _) = eventually("the standby leads", Duration::from_secs(15), || async {
        current_leader(&db.pool, dc)
            .await
            .filter(|(agent, _)| *agent == standby_agent)
    })
    .await;
    assert_eq!(agent, standby_agent);
    wait_for_beats_by(&db.pool, monitor, standby_agent, 2).await;

    // Heal: the old leader's spooled heartbeats arrive; overlapping slots stay single rows.
    proxy.heal();
    eventually(
        "no hole once the old leader's spool is replayed",
        Duration::from_secs(20),
        || async {
            let beats = heartbeats(&db.pool, monitor).await;
            missed_slots(&beats, ONE_SECOND).is_empty().then_some(())
        },
    )
    .await;
    let beats = heartbeats(&db.pool, monitor).await;
    let last_old = beats
        .iter()
        .filter(|b| b.agent_id == Some(old_agent))
        .map(|b| b.scheduled_at)
        .max()
        .unwrap();
    let stopped_after = (last_old - cut_at).num_milliseconds();
    assert!(
        stopped_after <= (grace.as_millis() as i64) + 2_500,
        "the cut-off leader probed {stopped_after} ms past the cut (grace {grace:?})"
    );
    drop(standby);
}
