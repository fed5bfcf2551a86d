//! The elector in-process against a real Postgres, for both scopes: the first elector
//! acquires, a second one bids and stays standby, and when the leader's token is
//! cancelled it resigns (unlock, close the term, notify) and the standby takes over.
//! Every wait is on the electors' leadership channels (or on the database, for "the
//! standby has bid"), bounded by generous deadlines that only limit a failure.

mod support;

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use support::cluster::seed_datacenters;
use support::eventually::eventually;
use support::pg::TestDb;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use vantage::leadership::{ElectionConfig, Elector, Leadership, LeadershipScope};

/// Bounds a wait for something that takes well under a second when all is well.
const GENEROUS: Duration = Duration::from_secs(20);

struct Running {
    elector: Elector,
    task: JoinHandle<()>,
    shutdown: CancellationToken,
}

fn start(options: &PgConnectOptions, scope: LeadershipScope) -> Running {
    let shutdown = CancellationToken::new();
    // No agents row: terms then name nobody, which the elector allows.
    let (elector, task) = Elector::spawn(
        ElectionConfig::new(options.clone(), scope, 0),
        shutdown.clone(),
    );
    Running {
        elector,
        task,
        shutdown,
    }
}

/// Waits for `leadership` to satisfy `done`; panics after [`GENEROUS`] with the last
/// value seen.
async fn wait_for(
    what: &str,
    leadership: &mut watch::Receiver<Leadership>,
    done: impl FnMut(&Leadership) -> bool,
) -> Leadership {
    let seen = tokio::time::timeout(GENEROUS, async {
        leadership.wait_for(done).await.map(|seen| *seen)
    })
    .await;
    match seen {
        Ok(Ok(seen)) => seen,
        Ok(Err(_)) => panic!("{what}: the elector stopped"),
        Err(_) => panic!(
            "timed out after {GENEROUS:?} waiting for {what}; last observed: {:?}",
            *leadership.borrow()
        ),
    }
}

/// The scope's open terms, newest first, as `(term, released)`.
async fn terms(pool: &PgPool, scope: LeadershipScope) -> Vec<(i64, bool)> {
    let (table, filter) = match scope {
        LeadershipScope::Datacenter(id) => ("leader_terms", format!("datacenter_id = {id}")),
        LeadershipScope::Evaluator => ("evaluator_terms", "TRUE".to_string()),
    };
    sqlx::query_as(&format!(
        "SELECT term, released_at IS NOT NULL FROM {table} WHERE {filter} ORDER BY term DESC"
    ))
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Waits until a lock session of `scope` other than the holder's has run a statement:
/// the standby has made its first bid.
async fn standby_has_bid(pool: &PgPool, scope: LeadershipScope) {
    let application = match scope {
        LeadershipScope::Datacenter(id) => format!("vantage-leadership-dc{id}"),
        LeadershipScope::Evaluator => "vantage-leadership-evaluator".to_string(),
    };
    eventually("the standby's first bid", GENEROUS, || async {
        let sessions: Vec<(i32, bool, String)> = sqlx::query_as(
            "SELECT a.pid, EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid \
                 AND l.locktype = 'advisory' AND l.granted), a.query \
             FROM pg_stat_activity a \
             WHERE a.datname = current_database() AND a.application_name = $1",
        )
        .bind(&application)
        .fetch_all(pool)
        .await
        .unwrap();
        let bid = sessions
            .iter()
            .any(|(_, holds, query)| !holds && !query.is_empty());
        if bid {
            Ok(())
        } else {
            Err(sessions)
        }
    })
    .await
}

async fn hand_over(db: &TestDb, scope: LeadershipScope) {
    let options: PgConnectOptions = db.url.parse().unwrap();

    let first = start(&options, scope);
    let mut first_leadership = first.elector.subscribe();
    let acquired = wait_for("the first elector to lead", &mut first_leadership, |l| {
        l.is_leader()
    })
    .await;
    let first_term = acquired.term().unwrap();

    let second = start(&options, scope);
    let mut second_leadership = second.elector.subscribe();
    standby_has_bid(&db.pool, scope).await;
    assert_eq!(second.elector.current(), Leadership::Standby);
    assert!(
        !second_leadership.has_changed().unwrap(),
        "the standby never led while the leader held the lock"
    );
    assert!(first.elector.current().is_leader());

    // Resign: the task ends once the lock is released, the term closed and the standbys
    // notified.
    first.shutdown.cancel();
    tokio::time::timeout(GENEROUS, first.task)
        .await
        .expect("the leader resigns within the deadline")
        .unwrap();
    assert_eq!(*first_leadership.borrow(), Leadership::Standby);
    // The standby may have opened the next term already: it was notified.
    let after_resign = terms(&db.pool, scope).await;
    assert!(
        after_resign.contains(&(first_term, true)),
        "the resigning leader closed its term: {after_resign:?}"
    );

    let taken = wait_for("the standby to take over", &mut second_leadership, |l| {
        l.is_leader()
    })
    .await;
    let second_term = taken.term().unwrap();
    assert!(second_term > first_term, "a new term: {second_term}");
    assert_eq!(
        terms(&db.pool, scope).await,
        vec![(second_term, false), (first_term, true)]
    );

    second.shutdown.cancel();
    tokio::time::timeout(GENEROUS, second.task)
        .await
        .expect("the second leader resigns within the deadline")
        .unwrap();
    assert_eq!(
        terms(&db.pool, scope).await.first(),
        Some(&(second_term, true))
    );
}

#[tokio::test]
async fn a_datacenter_leader_resigns_on_cancel_and_its_standby_takes_over() {
    let db = TestDb::fresh().await;
    let dc = seed_datacenters(&db.pool, &["va"]).await[0];
    hand_over(&db, LeadershipScope::Datacenter(dc)).await;
}

#[tokio::test]
async fn the_evaluator_leader_resigns_on_cancel_and_its_standby_takes_over() {
    let db = TestDb::fresh().await;
    hand_over(&db, LeadershipScope::Evaluator).await;
}
