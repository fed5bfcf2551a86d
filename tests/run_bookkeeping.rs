//! Bookkeeping rows lost while instances run (`DELETE FROM agents`, `DELETE FROM
//! leader_terms`) are written again, and a hand-over still happens; instances that stop
//! refreshing their row read as stale, not as leaders.

mod support;

use std::time::Duration;

use support::cluster::{heartbeats, missed_slots, open_term, seed_datacenters, start_pair, Pair};
use support::eventually::eventually;
use support::pg::TestDb;

const ONE_SECOND: Duration = Duration::from_secs(1);

async fn agent_id_named(pool: &sqlx::PgPool, name: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT id FROM agents WHERE instance_name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn deleted_agents_and_terms_do_not_stop_the_hand_over() {
    let db = TestDb::fresh().await;
    let Pair {
        datacenter_id: dc,
        monitor_id: monitor,
        mut leader,
        standby,
        leader_agent,
        ..
    } = start_pair(&db.pool, &db.url, &[]).await;

    sqlx::query("DELETE FROM leader_terms")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM agents")
        .execute(&db.pool)
        .await
        .unwrap();

    // The running leader writes its term again at its next renewal.
    let (_, term) = eventually(
        "the leader's term row is back",
        Duration::from_secs(5),
        || open_term(&db.pool, dc),
    )
    .await;

    // Hand over at once, before the standby's liveness refresh has necessarily run: the
    // standby must register again to open its term (it used to fail on the foreign key
    // forever).
    leader.signal(libc::SIGTERM);
    assert_eq!(leader.wait_exit(Duration::from_secs(15)).await, Some(0));

    let new_agent = eventually(
        "the standby leads under a registered agent id",
        Duration::from_secs(15),
        || async {
            let id = agent_id_named(&db.pool, &standby.name).await?;
            let (agent, new_term) = open_term(&db.pool, dc).await?;
            (agent == Some(id) && new_term > term).then_some(id)
        },
    )
    .await;
    assert_ne!(
        new_agent, leader_agent,
        "a re-created row gets a new id (and the old one is gone)"
    );
    let beats = eventually(
        "three heartbeats from the new leader, under its new id",
        Duration::from_secs(15),
        || async {
            let beats = heartbeats(&db.pool, monitor).await;
            let by_new = beats
                .iter()
                .filter(|b| b.agent_id == Some(new_agent))
                .count();
            (by_new >= 3).then_some(beats)
        },
    )
    .await;
    assert_eq!(
        missed_slots(&beats, ONE_SECOND),
        vec![],
        "no slot lost across the hand-over"
    );
    // The stopped leader registered again too, to say it stopped.
    let roles: Vec<(String, String)> =
        sqlx::query_as("SELECT instance_name, role FROM agents ORDER BY instance_name")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let mut expected = vec![
        (leader.name.clone(), "stopped".to_string()),
        (standby.name.clone(), "leader".to_string()),
    ];
    expected.sort();
    assert_eq!(roles, expected);
}

#[tokio::test]
async fn an_instance_that_stopped_refreshing_reads_as_stale() {
    let db = TestDb::fresh().await;
    let dc = seed_datacenters(&db.pool, &["va"]).await[0];
    sqlx::query(
        "INSERT INTO agents (datacenter_id, instance_name, role, last_seen_at) VALUES \
         ($1, 'killed-leader', 'leader', now() - interval '1 minute'), \
         ($1, 'live-standby', 'standby', now()), \
         ($1, 'gone', 'stopped', now() - interval '1 day')",
    )
    .bind(dc)
    .execute(&db.pool)
    .await
    .unwrap();
    let states: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT instance_name, role, state FROM agent_status ORDER BY instance_name",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let expect = |name: &str, role: &str, state: &str| {
        (name.to_string(), role.to_string(), state.to_string())
    };
    assert_eq!(
        states,
        vec![
            expect("gone", "stopped", "stopped"),
            expect("killed-leader", "leader", "stale"),
            expect("live-standby", "standby", "standby"),
        ]
    );
}
