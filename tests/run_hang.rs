//! A hung leader (SIGSTOP: the process stops but the kernel keeps its database session
//! alive, so its advisory lock never frees by itself) loses its datacenter within the
//! lease, and once resumed it fences itself without probing again.

mod support;

use std::time::Duration;

use support::cluster::{current_leader, heartbeats, missed_slots, start_pair, Pair};
use support::eventually::eventually;
use support::pg::TestDb;

const ONE_SECOND: Duration = Duration::from_secs(1);
/// The default `VANTAGE_LEADER_LEASE`.
const LEASE: Duration = Duration::from_secs(10);
/// How long the leader stays stopped: twice the lease.
const HANG: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_stopped_leader_is_replaced_within_the_lease_and_never_probes_after_resuming() {
    let db = TestDb::fresh().await;
    let Pair {
        datacenter_id: dc,
        monitor_id: monitor,
        mut leader,
        mut standby,
        leader_agent,
        standby_agent,
        term: first_term,
    } = start_pair(&db.pool, &db.url, &[]).await;

    let stopped = tokio::time::Instant::now();
    let stopped_at = chrono::Utc::now();
    leader.signal(libc::SIGSTOP);

    // Each instance also runs the evaluator's election; this is the datacenter's.
    let datacenter_scope = format!("\"scope\":\"datacenter:{dc}\"");
    standby
        .wait_for_log(
            &["the leader has not renewed its lease", &datacenter_scope],
            LEASE + Duration::from_secs(8),
        )
        .await;
    standby
        .wait_for_log(
            &["acquired leadership", &datacenter_scope],
            Duration::from_secs(5),
        )
        .await;
    let takeover = stopped.elapsed();
    eprintln!(
        "takeover after SIGSTOP: {:.2} s (lease {LEASE:?})",
        takeover.as_secs_f64()
    );
    assert!(
        takeover <= LEASE + Duration::from_secs(4),
        "the standby took over {takeover:?} after the leader stopped"
    );
    let (agent, term) = current_leader(&db.pool, dc).await.expect("a leader");
    assert_eq!(agent, standby_agent, "the standby leads");
    assert!(term > first_term, "under a new term");

    // The leader stays stopped for the rest of the hang, then resumes: every timer it has
    // fires at once, and none of them may start a probe.
    tokio::time::sleep_until(stopped + HANG).await;
    let resumed_at = chrono::Utc::now();
    leader.signal(libc::SIGCONT);
    leader
        .wait_for_log(
            &["stalled past its lease", "fencing now"],
            Duration::from_secs(10),
        )
        .await;
    eventually(
        "the resumed leader reports itself standby",
        Duration::from_secs(10),
        || async { (leader.status().await?["role"] == "standby").then_some(()) },
    )
    .await;

    // A few slots after the resume, and once the new leader's catch-up has replayed the
    // slots of the hang: the grid is whole, and nothing after the stop is the old leader's.
    let beats = eventually(
        "three slots after the resume, and no hole left",
        Duration::from_secs(30),
        || async {
            let beats = heartbeats(&db.pool, monitor).await;
            let settled = beats
                .iter()
                .any(|b| b.scheduled_at > resumed_at + chrono::Duration::seconds(3));
            (settled && missed_slots(&beats, ONE_SECOND).is_empty()).then_some(beats)
        },
    )
    .await;
    let late: Vec<_> = beats
        .iter()
        .filter(|b| b.agent_id == Some(leader_agent) && b.scheduled_at > stopped_at)
        .collect();
    assert!(
        late.is_empty(),
        "the hung leader probed slots after it was stopped: {late:?}"
    );
    let after_resume = beats
        .iter()
        .filter(|b| b.scheduled_at > resumed_at)
        .all(|b| b.agent_id == Some(standby_agent));
    assert!(after_resume, "only the new leader probes after the resume");
    assert_eq!(
        current_leader(&db.pool, dc).await.map(|(agent, _)| agent),
        Some(standby_agent),
        "the resumed leader did not take the datacenter back"
    );
}
