//! Failover timing after SIGKILL of the leader (issue #4, benchmark b). Printed, not
//! asserted (`run_leadership` asserts the bound); ignored by a plain `cargo test`. Run:
//!
//!     cargo test --release --test failover_bench -- --ignored --nocapture
//!
//! Each round: a fresh database, a 1 s monitor against a local target, two `vantage run`
//! processes of one datacenter. The figure is the time from the kill to the moment the
//! new leader's first probe started (`executed_at` of its first heartbeat).
//!
//! The other failover figure, a leader cut off from Postgres, comes from a real network
//! partition and is printed by `tests/run_partition_netns.rs`.

mod support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use support::cluster::{
    agent_id_of, leader_first, seed_datacenters, seed_monitor, serve_target,
    wait_for_leader_probing, Instance, InstanceOptions,
};
use support::eventually::eventually;
use support::pg::TestDb;

const ROUNDS: usize = 5;

async fn first_probe_by(db: &TestDb, monitor: i32, agent: i64) -> DateTime<Utc> {
    eventually(
        "the new leader's first heartbeat",
        Duration::from_secs(30),
        || async {
            sqlx::query_scalar::<_, Option<DateTime<Utc>>>(
            "SELECT min(executed_at) FROM api_heartbeats WHERE monitor_id = $1 AND agent_id = $2",
        )
        .bind(monitor)
        .bind(agent)
        .fetch_one(&db.pool)
        .await
        .unwrap()
        },
    )
    .await
}

fn report(what: &str, mut millis: Vec<i64>) {
    millis.sort();
    println!(
        "{what}: median {} ms, min {} ms, max {} ms over {} rounds: {millis:?}",
        millis[millis.len() / 2],
        millis[0],
        millis[millis.len() - 1],
        millis.len()
    );
}

fn instance(url: &str, name: &str, extra_env: Vec<(&str, String)>) -> Instance {
    Instance::start(InstanceOptions {
        database_url: url,
        datacenter: "va",
        name,
        extra_env,
    })
}

#[tokio::test]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn failover_after_sigkill_of_the_leader() {
    let target = serve_target().await;
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        let db = TestDb::fresh().await;
        let dc = seed_datacenters(&db.pool, &["va"]).await[0];
        let monitor = seed_monitor(&db.pool, "m", &format!("http://{target}/ok"), 1).await;
        let a = instance(&db.url, "va-a", vec![]);
        let b = instance(&db.url, "va-b", vec![]);
        let (leader_agent, _) = wait_for_leader_probing(&db.pool, dc, monitor, 2).await;
        let (mut leader, standby) = leader_first(&db.pool, a, b, leader_agent).await;
        let standby_agent = agent_id_of(&db.pool, &standby.name).await;
        let killed_at = Utc::now();
        leader.signal(libc::SIGKILL);
        leader.wait_exit(Duration::from_secs(5)).await;
        let first = first_probe_by(&db, monitor, standby_agent).await;
        rounds.push((first - killed_at).num_milliseconds());
    }
    report(
        "SIGKILL of the leader -> first probe of the new leader",
        rounds,
    );
}
