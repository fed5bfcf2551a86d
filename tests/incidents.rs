//! Incidents decided from several datacenters, end to end: real `vantage run` processes
//! (one or more per datacenter, one of them the elected evaluator), a real Postgres, and
//! real HTTP targets on loopback that the test breaks on purpose.
//!
//! What a user would see is what is asserted: rows in `incidents` and
//! `incident_events`, and the output of `vantage incidents`.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use support::cluster::{seed_datacenters, seed_monitor, Instance, InstanceOptions};
use support::dns::DnsServer;
use support::eventually::eventually;
use support::pg::TestDb;

const DATACENTERS: [&str; 3] = ["va", "ny", "lon"];

/// A target whose `/health` answers 200 or 503 as the test says.
struct Target {
    addr: SocketAddr,
    healthy: Arc<AtomicBool>,
}

impl Target {
    async fn start() -> Target {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .0
    }

    /// Serves on `addr`; returns the task so that the listener can be closed.
    async fn start_on(addr: SocketAddr) -> (Target, tokio::task::JoinHandle<()>) {
        Self::serve(addr, Arc::new(AtomicBool::new(true))).await
    }

    async fn serve(
        addr: SocketAddr,
        healthy: Arc<AtomicBool>,
    ) -> (Target, tokio::task::JoinHandle<()>) {
        use axum::http::StatusCode;
        let flag = healthy.clone();
        let app = axum::Router::new().route(
            "/health",
            axum::routing::get(move || {
                let flag = flag.clone();
                async move {
                    if flag.load(Ordering::SeqCst) {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "down for the test")
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (Target { addr, healthy }, task)
    }

    fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }
}

fn start(db: &TestDb, datacenter: &str, name: &str, extra_env: Vec<(&str, String)>) -> Instance {
    Instance::start(InstanceOptions {
        database_url: &db.url,
        datacenter,
        name,
        extra_env,
    })
}

#[derive(Debug, sqlx::FromRow)]
struct IncidentRow {
    id: i64,
    kind: String,
    monitor_id: Option<i32>,
    datacenter_id: Option<i32>,
    opened_at: DateTime<Utc>,
    resolved_at: Option<DateTime<Utc>>,
    datacenters: Vec<i32>,
    cause: String,
}

async fn incidents(pool: &PgPool) -> Vec<IncidentRow> {
    sqlx::query_as(
        "SELECT id, kind, monitor_id, datacenter_id, opened_at, resolved_at, datacenters, cause \
         FROM incidents ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn events(pool: &PgPool, incident: i64) -> Vec<String> {
    sqlx::query_scalar("SELECT kind FROM incident_events WHERE incident_id = $1 ORDER BY id")
        .bind(incident)
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Waits until every datacenter has stored `beats` heartbeats of `monitor`.
async fn wait_for_beats_everywhere(pool: &PgPool, monitor: i32, beats: i64) {
    eventually(
        "heartbeats from every datacenter",
        Duration::from_secs(40),
        || async {
            let counts: Vec<i64> = sqlx::query_scalar(
                "SELECT count(h.*) FROM datacenters d \
                 LEFT JOIN api_heartbeats h ON h.datacenter_id = d.id AND h.monitor_id = $1 \
                 GROUP BY d.id",
            )
            .bind(monitor)
            .fetch_all(pool)
            .await
            .unwrap();
            (counts.len() == DATACENTERS.len() && counts.iter().all(|c| *c >= beats)).then_some(())
        },
    )
    .await;
}

async fn wait_for_incident(pool: &PgPool, what: &str, kind: &str, resolved: bool) -> IncidentRow {
    eventually(what, Duration::from_secs(40), || async {
        incidents(pool)
            .await
            .into_iter()
            .find(|i| i.kind == kind && i.resolved_at.is_some() == resolved)
    })
    .await
}

/// The evaluator's instance name, once one is elected.
async fn evaluator(pool: &PgPool) -> String {
    eventually("an elected evaluator", Duration::from_secs(30), || async {
        sqlx::query_scalar(
            "SELECT a.instance_name FROM evaluator_terms t JOIN agents a ON a.id = t.agent_id \
             WHERE t.released_at IS NULL ORDER BY t.term DESC LIMIT 1",
        )
        .fetch_optional(pool)
        .await
        .unwrap()
    })
    .await
}

/// The common scene: three datacenters with one instance each, all probing the monitor
/// "shop" (the target's `/health`) every second, each having stored `beats` heartbeats.
struct Scene {
    db: TestDb,
    target: Target,
    dcs: Vec<i32>,
    monitor: i32,
    instances: Vec<Instance>,
}

async fn shop_everywhere(beats: i64) -> Scene {
    let db = TestDb::fresh().await;
    let target = Target::start().await;
    let dcs = seed_datacenters(&db.pool, &DATACENTERS).await;
    let url = format!("http://{}/health", target.addr);
    let monitor = seed_monitor(&db.pool, "shop", &url, 1).await;
    let instances = DATACENTERS
        .iter()
        .map(|dc| start(&db, dc, &format!("{dc}-1"), Vec::new()))
        .collect();
    wait_for_beats_everywhere(&db.pool, monitor, beats).await;
    Scene {
        db,
        target,
        dcs,
        monitor,
        instances,
    }
}

/// Flags of monitors and datacenters deleted meanwhile are removed when an evaluation
/// starts (and hourly); the flags of existing pairs stay.
#[tokio::test]
async fn the_evaluator_removes_flags_of_deleted_monitors_and_datacenters() {
    let db = TestDb::fresh().await;
    let target = Target::start().await;
    let dcs = seed_datacenters(&db.pool, &["va"]).await;
    let url = format!("http://{}/health", target.addr);
    let monitor = seed_monitor(&db.pool, "shop", &url, 1).await;
    let deleted_monitor = seed_monitor(&db.pool, "gone", &url, 1).await;
    let deleted_dc = seed_datacenters(&db.pool, &["old"]).await[0];
    let pairs = [
        (monitor, dcs[0]),
        (deleted_monitor, dcs[0]),
        (monitor, deleted_dc),
    ];
    for (m, d) in pairs {
        sqlx::query(
            "INSERT INTO monitor_dc_state (monitor_id, datacenter_id, failing, changed_at) \
             VALUES ($1, $2, false, now())",
        )
        .bind(m)
        .bind(d)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    sqlx::raw_sql(&format!(
        "DELETE FROM api_monitors WHERE id = {deleted_monitor}; \
         DELETE FROM datacenters WHERE id = {deleted_dc}"
    ))
    .execute(&db.pool)
    .await
    .unwrap();

    let _instance = start(&db, "va", "va-1", Vec::new());
    evaluator(&db.pool).await;
    let left = eventually(
        "only the existing pair's flags",
        Duration::from_secs(30),
        || async {
            let left: Vec<(i32, i32)> = sqlx::query_as(
                "SELECT monitor_id, datacenter_id FROM monitor_dc_state ORDER BY 1, 2",
            )
            .fetch_all(&db.pool)
            .await
            .unwrap();
            (left.len() == 1).then_some(left)
        },
    )
    .await;
    assert_eq!(left, vec![(monitor, dcs[0])]);
}

#[tokio::test]
async fn a_target_down_everywhere_opens_one_incident_and_resolves_it_once() {
    let Scene {
        db,
        target,
        dcs,
        monitor,
        instances: _instances,
    } = shop_everywhere(3).await;
    assert!(incidents(&db.pool).await.is_empty(), "all up: no incident");

    target.set_healthy(false);
    let open = wait_for_incident(&db.pool, "the target's incident", "monitor_down", false).await;
    assert_eq!(open.monitor_id, Some(monitor));
    assert!(open.cause.contains("shop down from"), "{}", open.cause);
    // opened_at is the slot whose heartbeat completed the quorum: a stored, failed slot.
    let completing: Vec<String> = sqlx::query_scalar(
        "SELECT status FROM api_heartbeats WHERE monitor_id = $1 AND scheduled_at = $2",
    )
    .bind(monitor)
    .bind(open.opened_at)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        !completing.is_empty() && completing.iter().any(|s| s == "down"),
        "opened_at {} is not a failed slot: {completing:?}",
        open.opened_at
    );
    // Every datacenter ends up in the failing set (the third joins if it was later).
    eventually("all three failing", Duration::from_secs(20), || async {
        let now = incidents(&db.pool)
            .await
            .into_iter()
            .find(|i| i.id == open.id)?;
        (now.datacenters.len() == 3).then_some(())
    })
    .await;

    target.set_healthy(true);
    let resolved = wait_for_incident(&db.pool, "the resolution", "monitor_down", true).await;
    assert_eq!(resolved.id, open.id);
    assert!(resolved.resolved_at.unwrap() >= open.opened_at);
    let all = incidents(&db.pool).await;
    assert_eq!(all.len(), 1, "exactly one incident: {all:?}");
    let timeline = events(&db.pool, open.id).await;
    assert_eq!(timeline.first().map(String::as_str), Some("opened"));
    assert_eq!(timeline.last().map(String::as_str), Some("resolved"));
    assert_eq!(
        timeline.iter().filter(|k| *k == "opened").count(),
        1,
        "{timeline:?}"
    );
    assert_eq!(
        timeline.iter().filter(|k| *k == "resolved").count(),
        1,
        "{timeline:?}"
    );
    assert!(
        timeline
            .iter()
            .all(|k| ["opened", "datacenter_joined", "resolved"].contains(&k.as_str())),
        "{timeline:?}"
    );
    assert!(dcs.iter().all(|dc| resolved.datacenters.contains(dc)));

    // What an operator types.
    let listed = vantage(&db.url, &["incidents", "--since", "1h"]);
    assert!(
        listed.contains("monitor_down") && listed.contains("shop"),
        "{listed}"
    );
    assert!(listed.contains("resolved"), "{listed}");
}

/// Serves the same target on 127.0.0.2 as well, on the same port, so that one
/// datacenter (whose DNS says 127.0.0.2) can lose its path alone: aborting that listener
/// refuses its connections while the others still reach 127.0.0.1.
#[tokio::test]
async fn one_datacenter_losing_its_path_is_impaired_not_the_targets() {
    let db = TestDb::fresh().await;
    let (target, _) = Target::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await;
    let port = target.addr.port();
    let lon_ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let (_, lon_path) = Target::serve(SocketAddr::new(lon_ip, port), target.healthy.clone()).await;
    let dns_everyone = DnsServer::builder()
        .a("shop.vantage.test", &[Ipv4Addr::LOCALHOST])
        .start()
        .await;
    let dns_lon = DnsServer::builder()
        .a("shop.vantage.test", &[Ipv4Addr::new(127, 0, 0, 2)])
        .start()
        .await;
    let dcs = seed_datacenters(&db.pool, &DATACENTERS).await;
    let lon = dcs[2];
    let mut monitors = Vec::new();
    for name in ["shop-home", "shop-cart", "shop-api"] {
        let url = format!("http://shop.vantage.test:{port}/health?{name}");
        monitors.push(seed_monitor(&db.pool, name, &url, 1).await);
    }
    let _instances: Vec<Instance> = DATACENTERS
        .iter()
        .map(|dc| {
            let dns = if *dc == "lon" {
                &dns_lon
            } else {
                &dns_everyone
            };
            start(
                &db,
                dc,
                &format!("{dc}-1"),
                vec![("VANTAGE_DNS_SERVERS", dns.addr.to_string())],
            )
        })
        .collect();
    for monitor in &monitors {
        wait_for_beats_everywhere(&db.pool, *monitor, 2).await;
    }

    lon_path.abort();
    let impaired = wait_for_incident(&db.pool, "lon impaired", "datacenter_impaired", false).await;
    assert_eq!(impaired.datacenter_id, Some(lon));
    assert!(
        impaired.cause.contains("its own network"),
        "{}",
        impaired.cause
    );
    // lon really failed, alone: at least two monitors, twice each (failure_threshold).
    let lon_failures: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM api_heartbeats WHERE datacenter_id = $1 AND status = 'down'",
    )
    .bind(lon)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(lon_failures >= 4, "lon's probes failed: {lon_failures}");

    let (_, _healed) = Target::serve(SocketAddr::new(lon_ip, port), target.healthy.clone()).await;
    let resolved = wait_for_incident(&db.pool, "lon healed", "datacenter_impaired", true).await;
    assert_eq!(resolved.id, impaired.id);
    let all = incidents(&db.pool).await;
    assert!(
        all.iter().all(|i| i.kind == "datacenter_impaired"),
        "the targets were never down: {all:?}"
    );
}

#[tokio::test]
async fn a_datacenter_without_leaders_is_impaired_and_its_silence_is_no_failure() {
    let Scene {
        db,
        target,
        dcs,
        mut instances,
        ..
    } = shop_everywhere(3).await;

    let lon = instances.pop().unwrap();
    lon.signal(libc::SIGKILL);
    let impaired = wait_for_incident(&db.pool, "lon impaired", "datacenter_impaired", false).await;
    assert_eq!(impaired.datacenter_id, Some(dcs[2]));
    assert!(
        impaired.cause.contains("no leader") || impaired.cause.contains("no heartbeats"),
        "{}",
        impaired.cause
    );
    // Silence is a gap, not a failure: no monitor incident, and SQL lists the gap.
    assert!(incidents(&db.pool)
        .await
        .iter()
        .all(|i| i.kind == "datacenter_impaired"));
    let missed: i64 = eventually("lon's missed slots", Duration::from_secs(20), || async {
        let missed: Option<i64> = sqlx::query_scalar(
            "SELECT sum(missed) FROM vantage_missed_slots(now() - interval '10 minutes') \
             WHERE datacenter_id = $1",
        )
        .bind(dcs[2])
        .fetch_one(&db.pool)
        .await
        .unwrap();
        missed.filter(|m| *m >= 3)
    })
    .await;
    assert!(missed >= 3);

    // With lon out of the quorum, va and ny still decide: 2 of 2.
    target.set_healthy(false);
    let down = wait_for_incident(&db.pool, "down from va and ny", "monitor_down", false).await;
    assert_eq!(down.datacenters, vec![dcs[0], dcs[1]]);
}

#[tokio::test]
async fn the_evaluator_killed_while_failing_and_while_recovering_loses_and_repeats_nothing() {
    let Scene {
        db,
        target,
        mut instances,
        ..
    } = shop_everywhere(3).await;

    // Kill the evaluator the moment the target fails, and bring its instance back the
    // way a container restarts: same datacenter, same name.
    for healthy in [false, true] {
        let name = evaluator(&db.pool).await;
        target.set_healthy(healthy);
        let at = instances.iter().position(|i| i.name == name).unwrap();
        let killed = instances.remove(at);
        let killed_at = Utc::now();
        killed.signal(libc::SIGKILL);
        drop(killed);
        let dc = name.trim_end_matches("-1").to_string();
        instances.push(start(&db, &dc, &name, Vec::new()));
        let taken_over: DateTime<Utc> =
            eventually("a new evaluator term", Duration::from_secs(20), || async {
                sqlx::query_scalar(
                    "SELECT acquired_at FROM evaluator_terms \
                     WHERE released_at IS NULL AND acquired_at > $1",
                )
                .bind(killed_at)
                .fetch_optional(&db.pool)
                .await
                .unwrap()
            })
            .await;
        println!(
            "evaluator takeover after SIGKILL: {} ms",
            (taken_over - killed_at).num_milliseconds()
        );
        // Failing: wait for it to open; recovering: for it to resolve.
        wait_for_incident(&db.pool, "the transition", "monitor_down", healthy).await;
    }

    let all: Vec<IncidentRow> = incidents(&db.pool)
        .await
        .into_iter()
        .filter(|i| i.kind == "monitor_down")
        .collect();
    assert_eq!(all.len(), 1, "one incident, opened once: {all:?}");
    assert!(all[0].resolved_at.is_some(), "and resolved: {all:?}");
    let timeline = events(&db.pool, all[0].id).await;
    assert_eq!(
        timeline.iter().filter(|k| *k == "opened").count(),
        1,
        "{timeline:?}"
    );
    assert_eq!(
        timeline.iter().filter(|k| *k == "resolved").count(),
        1,
        "{timeline:?}"
    );
}

#[tokio::test]
async fn maintenance_and_acknowledgement_from_the_command_line() {
    let Scene {
        db,
        target,
        monitor: shop,
        instances: _instances,
        ..
    } = shop_everywhere(2).await;

    let added = vantage(
        &db.url,
        &[
            "maintenance",
            "add",
            "--monitor",
            "shop",
            "--duration",
            "1h",
            "--reason",
            "database upgrade",
        ],
    );
    assert!(added.contains("maintenance window 1 added"), "{added}");
    assert!(vantage(&db.url, &["maintenance", "list"]).contains("database upgrade"));
    let bad = vantage_fails(
        &db.url,
        &[
            "maintenance",
            "add",
            "--monitor",
            "nope",
            "--duration",
            "1h",
            "--reason",
            "x",
        ],
    );
    assert!(bad.contains("unknown monitor(s): [\"nope\"]"), "{bad}");

    // Down inside the window: heartbeats say so, no incident opens.
    target.set_healthy(false);
    eventually(
        "failed heartbeats in maintenance",
        Duration::from_secs(20),
        || async {
            let in_window: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM api_heartbeats h WHERE h.monitor_id = $1 AND h.status = 'down' \
               AND vantage_in_maintenance(h.monitor_id, h.datacenter_id, h.scheduled_at)",
        )
        .bind(shop)
        .fetch_one(&db.pool)
        .await
        .unwrap();
            (in_window >= 9).then_some(())
        },
    )
    .await;
    assert!(
        incidents(&db.pool).await.is_empty(),
        "no incident inside the window"
    );

    // The work overruns: ending the window while it is still down opens the incident.
    assert!(vantage(&db.url, &["maintenance", "end", "1"]).contains("ended"));
    let open = wait_for_incident(
        &db.pool,
        "incident after maintenance",
        "monitor_down",
        false,
    )
    .await;
    let acked = vantage(
        &db.url,
        &["incidents", "ack", &open.id.to_string(), "--by", "alice"],
    );
    assert!(acked.contains("acknowledged by alice"), "{acked}");
    let listed = vantage(&db.url, &["incidents"]);
    assert!(listed.contains("acked (alice)"), "{listed}");
    assert_eq!(
        events(&db.pool, open.id).await,
        ["opened", "acknowledged"],
        "the acknowledgement is in the timeline"
    );
}

fn run_vantage(url: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_vantage"))
        .args(args)
        .env("DATABASE_URL", url)
        .output()
        .unwrap()
}

fn vantage(url: &str, args: &[&str]) -> String {
    let output = run_vantage(url, args);
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "vantage {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn vantage_fails(url: &str, args: &[&str]) -> String {
    let output = run_vantage(url, args);
    assert!(!output.status.success(), "vantage {args:?} should fail");
    String::from_utf8_lossy(&output.stderr).to_string()
}
