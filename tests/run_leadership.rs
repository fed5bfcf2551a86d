//! `vantage run` as real processes against a real Postgres: one leader per datacenter,
//! failover after SIGKILL, hand-over on SIGTERM, a Postgres restart under a running
//! leader, and a leader cut off from Postgres.

mod support;

use std::time::Duration;

use support::cluster::{
    agent_id_of, current_leader, heartbeats, leader_first, missed_slots, seed_datacenters,
    seed_monitor, serve_target, wait_for_beats_by, wait_for_leader_probing, Instance,
    InstanceOptions,
};
use support::eventually::eventually;
use support::pg::TestDb;

const ONE_SECOND: Duration = Duration::from_secs(1);

fn instance(db_url: &str, name: &str) -> Instance {
    instance_with(db_url, name, Vec::new())
}

fn instance_with(db_url: &str, name: &str, extra_env: Vec<(&str, String)>) -> Instance {
    Instance::start(InstanceOptions {
        database_url: db_url,
        datacenter: "va",
        name,
        extra_env,
    })
}

#[tokio::test]
async fn two_instances_of_a_datacenter_elect_exactly_one_prober() {
    let db = TestDb::fresh().await;
    let target = serve_target().await;
    let dc = seed_datacenters(&db.pool, &["va"]).await[0];
    let monitor = seed_monitor(&db.pool, "target-ok", &format!("http://{target}/ok"), 1).await;

    let mut a = instance(&db.url, "va-a");
    let mut b = instance(&db.url, "va-b");
    a.wait_for_log(&["instance registered"], Duration::from_secs(30))
        .await;
    b.wait_for_log(&["instance registered"], Duration::from_secs(30))
        .await;

    let beats = eventually("five heartbeats", Duration::from_secs(20), || async {
        let beats = heartbeats(&db.pool, monitor).await;
        (beats.len() >= 5).then_some(beats)
    })
    .await;

    let (leader_agent, term) = current_leader(&db.pool, dc).await.expect("a leader");
    assert!(
        beats.iter().all(|b| b.agent_id == Some(leader_agent)),
        "only the leader probes: {beats:?}"
    );
    assert!(beats.iter().all(|b| b.leader_term == Some(term)));
    assert!(beats
        .iter()
        .all(|b| b.status == "up" && b.http_status == Some(200)));
    assert!(
        missed_slots(&beats, ONE_SECOND).is_empty(),
        "no gaps in steady state"
    );

    let roles: Vec<(String, String)> =
        sqlx::query_as("SELECT instance_name, role FROM agents ORDER BY instance_name")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let leaders = roles.iter().filter(|(_, role)| role == "leader").count();
    let standbys = roles.iter().filter(|(_, role)| role == "standby").count();
    assert_eq!((leaders, standbys), (1, 1), "agents: {roles:?}");

    let status_a = a.status().await.unwrap();
    let status_b = b.status().await.unwrap();
    let mut seen_roles = [
        status_a["role"].as_str().unwrap(),
        status_b["role"].as_str().unwrap(),
    ];
    seen_roles.sort();
    assert_eq!(seen_roles, ["leader", "standby"]);
    assert_eq!(status_a["datacenter"], "va");

    // Prometheus sees the same: one leader, and its probes counted by status.
    let (leader, standby) = if status_a["role"] == "leader" {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let leader_metrics = leader.metrics().await.unwrap();
    assert!(
        leader_metrics.contains("vantage_leader{datacenter=\"va\"} 1"),
        "{leader_metrics}"
    );
    assert!(
        leader_metrics
            .contains("vantage_probes_total{datacenter=\"va\",status=\"up\",error_kind=\"none\"}"),
        "{leader_metrics}"
    );
    assert!(leader_metrics.contains("vantage_schedule_lag_seconds_bucket"));
    let standby_metrics = standby.metrics().await.unwrap();
    assert!(
        standby_metrics.contains("vantage_leader{datacenter=\"va\"} 0"),
        "{standby_metrics}"
    );
}

#[tokio::test]
async fn sigkill_of_the_leader_hands_over_within_a_slot() {
    let db = TestDb::fresh().await;
    let target = serve_target().await;
    let dc = seed_datacenters(&db.pool, &["va"]).await[0];
    let monitor = seed_monitor(&db.pool, "target-ok", &format!("http://{target}/ok"), 1).await;

    let (a, b) = (instance(&db.url, "va-a"), instance(&db.url, "va-b"));
    let (leader_agent, first_term) = wait_for_leader_probing(&db.pool, dc, monitor, 3).await;
    let (mut leader, standby) = leader_first(&db.pool, a, b, leader_agent).await;

    let killed_at = chrono::Utc::now();
    leader.signal(libc::SIGKILL);
    leader.wait_exit(Duration::from_secs(5)).await;

    let standby_agent = agent_id_of(&db.pool, &standby.name).await;
    let new_term = eventually(
        "the standby leads and probes",
        Duration::from_secs(10),
        || async {
            let (agent, term) = current_leader(&db.pool, dc).await?;
            let beats = heartbeats(&db.pool, monitor).await;
            (agent == standby_agent && beats.iter().any(|b| b.agent_id == Some(standby_agent)))
                .then_some(term)
        },
    )
    .await;
    assert!(new_term > first_term, "each acquisition opens a new term");

    // Let the new leader run a few slots, then check the grid.
    wait_for_beats_by(&db.pool, monitor, standby_agent, 3).await;
    let beats = heartbeats(&db.pool, monitor).await;
    let first_new = beats
        .iter()
        .find(|b| b.agent_id == Some(standby_agent))
        .unwrap();
    let takeover = (first_new.scheduled_at - killed_at).num_milliseconds();
    assert!(
        takeover <= 2_000,
        "first slot of the new leader {takeover} ms after the kill"
    );
    let gaps = missed_slots(&beats, ONE_SECOND);
    assert!(
        gaps.iter()
            .all(|(a, b)| (*b - *a).num_milliseconds() <= 2_000),
        "at most one slot missed: {gaps:?}"
    );
    drop(standby);
}

#[tokio::test]
async fn sigterm_hands_over_without_missing_a_slot() {
    let db = TestDb::fresh().await;
    let target = serve_target().await;
    let dc = seed_datacenters(&db.pool, &["va"]).await[0];
    let monitor = seed_monitor(&db.pool, "target-ok", &format!("http://{target}/ok"), 1).await;

    let (a, b) = (instance(&db.url, "va-a"), instance(&db.url, "va-b"));
    let (leader_agent, _) = wait_for_leader_probing(&db.pool, dc, monitor, 3).await;
    let (mut leader, standby) = leader_first(&db.pool, a, b, leader_agent).await;
    let standby_agent = agent_id_of(&db.pool, &standby.name).await;

    leader.signal(libc::SIGTERM);
    leader
        .wait_for_log(&["resigned leadership"], Duration::from_secs(10))
        .await;
    assert_eq!(
        leader.wait_exit(Duration::from_secs(15)).await,
        Some(0),
        "clean exit"
    );

    wait_for_beats_by(&db.pool, monitor, standby_agent, 3).await;
    let beats = heartbeats(&db.pool, monitor).await;
    assert_eq!(
        missed_slots(&beats, ONE_SECOND),
        vec![],
        "no slot missed across the hand-over"
    );

    let released: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT released_at FROM leader_terms WHERE agent_id = $1 ORDER BY term DESC LIMIT 1",
    )
    .bind(leader_agent)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(released.is_some(), "the resigning leader closed its term");
    let role: String = sqlx::query_scalar("SELECT role FROM agents WHERE id = $1")
        .bind(leader_agent)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(role, "stopped");
    drop(standby);
}
