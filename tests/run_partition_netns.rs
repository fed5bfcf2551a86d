//! A real network partition, no proxy: the leader runs in its own Linux network
//! namespace and reaches Postgres over a veth pair; the test takes the host side of the
//! pair down, so packets vanish both ways and nobody sends a RST or FIN.
//!
//! What this proves that `run_outage.rs` (a TCP proxy) cannot: the cut-off leader fences
//! itself within its check deadline, and Postgres, which sees only silence, drops the
//! leader's session — and with it the advisory lock — because of the lock connection's
//! server-side keepalive settings (`tcp_keepalives_*`, `tcp_user_timeout=9000`, see
//! `leadership::ElectionConfig::lock_connection_options`), so a standby on the host
//! takes over in about ten seconds instead of the kernel default of two hours.
//!
//! Needs root (network namespaces). `VANTAGE_SKIP_NETNS=1` skips it explicitly; as root
//! without that variable it runs, and a namespace that cannot be created fails it.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use support::cluster::{
    agent_id_of, current_leader, heartbeats, seed_datacenters, seed_monitor, serve_target_on,
    Instance, InstanceOptions,
};
use support::eventually::eventually;
use support::pg::DedicatedCluster;

const FENCING: &str = "lost the leadership lock connection; fencing now";
const SCHEDULING_STOPPED: &str = "not leading: scheduling stopped";

#[tokio::test]
async fn a_partitioned_leader_fences_and_postgres_releases_its_lock_by_keepalive() {
    if let Some(reason) = skip_reason() {
        eprintln!("SKIPPED run_partition_netns: {reason}");
        return;
    }

    // Arrange: a namespace for the leader, Postgres and the probe target reachable from it.
    let netns = Netns::create();
    let cluster = DedicatedCluster::start().await;
    listen_also_on(&cluster, netns.host_addr).await;
    let db = cluster.fresh_db().await;
    let target = serve_target_on(netns.host_addr.into()).await;
    let dc = seed_datacenters(&db.pool, &["va"]).await[0];
    let monitor = seed_monitor(&db.pool, "target-ok", &format!("http://{target}/ok"), 1).await;

    let url_from_netns = db.url_via(SocketAddr::new(netns.host_addr.into(), cluster.port()));
    let mut leader = Instance::start_in_netns(
        &netns.name,
        InstanceOptions {
            database_url: &url_from_netns,
            datacenter: "va",
            name: "va-netns",
            extra_env: vec![("VANTAGE_DB_OUTAGE_GRACE", "0s".to_string())],
        },
    );
    leader
        .wait_for_log(
            &["acquired leadership", "\"scope\":\"datacenter:"],
            Duration::from_secs(30),
        )
        .await;
    let old_agent = agent_id_of(&db.pool, "va-netns").await;
    eventually(
        "three successful heartbeats from the leader in the namespace",
        Duration::from_secs(20),
        || async {
            let beats = heartbeats(&db.pool, monitor).await;
            let ok = beats
                .iter()
                .filter(|b| b.agent_id == Some(old_agent) && b.status == "up")
                .count();
            (ok >= 3).then_some(())
        },
    )
    .await;
    let old_session = lock_session_from(&db.pool, dc, netns.ns_addr)
        .await
        .expect("the leader's lock session comes from the namespace address");

    let mut standby = Instance::start(InstanceOptions {
        database_url: &db.url,
        datacenter: "va",
        name: "va-host",
        extra_env: vec![("VANTAGE_DB_OUTAGE_GRACE", "0s".to_string())],
    });
    standby
        .wait_for_log(&["instance registered"], Duration::from_secs(20))
        .await;
    let new_agent = agent_id_of(&db.pool, "va-host").await;
    // Two more slots: the standby is bidding (and losing) before the cut.
    wait_for_heartbeats_after(&db.pool, monitor, old_agent, Utc::now(), 2).await;

    // Act: the partition.
    let cut_at = Utc::now();
    netns.cut();

    // Assert: the old leader fences within its check deadline...
    let fenced_at = logged_at(
        &leader
            .wait_for_log(&[FENCING], Duration::from_secs(6))
            .await,
    );
    let stopped_at = logged_at(
        &leader
            .wait_for_log(&[SCHEDULING_STOPPED], Duration::from_secs(2))
            .await,
    );
    // ...while Postgres, seeing no RST or FIN, still holds its lock: the release below is
    // the keepalive's doing, not a closed socket's.
    let still_held_at = Utc::now();
    assert_eq!(
        lock_session_from(&db.pool, dc, netns.ns_addr).await,
        Some(old_session),
        "Postgres released the lock of the cut-off leader at once: the partition is not silent"
    );

    let released_at = eventually(
        "Postgres drops the cut-off leader's session",
        Duration::from_secs(25),
        || async {
            let held = lock_session_from(&db.pool, dc, netns.ns_addr).await;
            (held != Some(old_session)).then(Utc::now)
        },
    )
    .await;
    let (_, new_term) = eventually("the standby leads", Duration::from_secs(10), || async {
        current_leader(&db.pool, dc)
            .await
            .filter(|(agent, _)| *agent == new_agent)
    })
    .await;
    let acquired_at = term_acquired_at(&db.pool, dc, new_term).await;
    let first_new_beat =
        wait_for_heartbeats_after(&db.pool, monitor, new_agent, acquired_at, 1).await[0];

    // Heal and stop the old leader gracefully (it flushes its writer), so whatever it
    // measured before fencing is in the table: only then does "no heartbeat of the old
    // leader after the new term began" mean something.
    netns.heal();
    wait_for_heartbeats_after(&db.pool, monitor, old_agent, cut_at, 1).await;
    leader.signal(libc::SIGTERM);
    assert_eq!(leader.wait_exit(Duration::from_secs(30)).await, Some(0));
    let old_slots_after_cut: Vec<_> = heartbeats(&db.pool, monitor)
        .await
        .into_iter()
        .filter(|b| b.agent_id == Some(old_agent) && b.scheduled_at > cut_at)
        .map(|b| b.scheduled_at)
        .collect();
    let last_old_beat = *old_slots_after_cut.last().expect("checked above");
    let server_log =
        std::fs::read_to_string(cluster.pg.data_dir().join("server.log")).expect("the server log");

    let since_cut = |t: DateTime<Utc>| (t - cut_at).num_milliseconds() as f64 / 1000.0;
    eprintln!(
        "netns partition (tcp_keepalives_idle=5 interval=2 count=3, tcp_user_timeout=9000): \
         cut -> old leader fenced {:+.2} s, scheduling stopped {:+.2} s, \
         last old slot {:+.2} s ({} slots after the cut); lock still held at {:+.2} s; \
         cut -> server released the old session {:+.2} s (polled every 100 ms), \
         standby acquired (leader_terms.acquired_at) {:+.2} s, \
         standby's first slot {:+.2} s",
        since_cut(fenced_at),
        since_cut(stopped_at),
        since_cut(last_old_beat),
        old_slots_after_cut.len(),
        since_cut(still_held_at),
        since_cut(released_at),
        since_cut(acquired_at),
        since_cut(first_new_beat),
    );

    assert!(
        since_cut(fenced_at) <= 4.0,
        "the cut-off leader fenced only {:.2} s after the cut",
        since_cut(fenced_at)
    );
    assert!(
        last_old_beat <= stopped_at,
        "the old leader dispatched slot {last_old_beat} after it stopped scheduling at {stopped_at}"
    );
    assert!(
        stopped_at < acquired_at && last_old_beat < acquired_at,
        "overlap: the old leader stopped at {stopped_at} (last slot {last_old_beat}), \
         the standby acquired at {acquired_at}"
    );
    assert!(
        (5.0..=15.0).contains(&since_cut(released_at)),
        "Postgres released the lock {:.2} s after the cut; the keepalive settings give ~8-11 s",
        since_cut(released_at)
    );
    assert!(
        since_cut(acquired_at) <= 20.0,
        "the standby took over only {:.2} s after the cut",
        since_cut(acquired_at)
    );
    assert!(
        server_log.contains("could not receive data from client: Connection timed out"),
        "the server log does not show the lock session timing out (keepalive / user timeout)"
    );
    assert_eq!(
        current_leader(&db.pool, dc).await.map(|(agent, _)| agent),
        Some(new_agent),
        "after healing, the old leader stays a standby"
    );
}

/// Why this run cannot build a namespace, when skipping is allowed; `None`: run.
fn skip_reason() -> Option<String> {
    if std::env::var("VANTAGE_SKIP_NETNS").as_deref() == Ok("1") {
        return Some("VANTAGE_SKIP_NETNS=1".into());
    }
    // SAFETY: geteuid(2) has no preconditions.
    let uid = unsafe { libc::geteuid() };
    (uid != 0).then(|| format!("network namespaces need root (euid {uid})"))
}

/// A network namespace joined to the host by a veth pair, `host_addr` <-> `ns_addr` on a
/// /30 derived from our pid (parallel runs do not collide). Deleted on drop, panics
/// included; deleting the host end of the pair deletes both ends.
struct Netns {
    name: String,
    host_if: String,
    host_addr: Ipv4Addr,
    ns_addr: Ipv4Addr,
}

impl Netns {
    fn create() -> Self {
        let pid = std::process::id();
        let subnet = (pid % 256) as u8;
        let netns = Netns {
            name: format!("vantage-pt{pid}"),
            host_if: format!("vpt{pid}h"),
            host_addr: Ipv4Addr::new(10, 213, subnet, 1),
            ns_addr: Ipv4Addr::new(10, 213, subnet, 2),
        };
        // Leftovers of a killed earlier run with the same pid.
        netns.delete();
        let ns_if = format!("vpt{pid}n");
        let (name, host_if) = (netns.name.as_str(), netns.host_if.as_str());
        ip(&["netns", "add", name]);
        ip(&[
            "link", "add", host_if, "type", "veth", "peer", "name", &ns_if, "netns", name,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", netns.host_addr),
            "dev",
            host_if,
        ]);
        ip(&["link", "set", host_if, "up"]);
        let in_ns = |args: &[&str]| ip(&[&["-n", name], args].concat());
        in_ns(&[
            "addr",
            "add",
            &format!("{}/30", netns.ns_addr),
            "dev",
            &ns_if,
        ]);
        in_ns(&["link", "set", &ns_if, "up"]);
        in_ns(&["link", "set", "lo", "up"]);
        netns
    }

    /// Silent partition: frames in either direction are dropped, no RST, no FIN.
    fn cut(&self) {
        ip(&["link", "set", &self.host_if, "down"]);
    }

    fn heal(&self) {
        ip(&["link", "set", &self.host_if, "up"]);
    }

    fn delete(&self) {
        for args in [
            ["link", "del", self.host_if.as_str()],
            ["netns", "del", self.name.as_str()],
        ] {
            let _ = Command::new("ip")
                .args(args)
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.delete();
    }
}

fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

/// Makes the cluster also listen on `addr`, with trust authentication from 10.213/16,
/// and restarts it (listen_addresses needs a restart).
async fn listen_also_on(cluster: &DedicatedCluster, addr: Ipv4Addr) {
    let admin = cluster.pool("postgres").await;
    sqlx::query(&format!(
        "ALTER SYSTEM SET listen_addresses = '127.0.0.1,{addr}'"
    ))
    .execute(&admin)
    .await
    .expect("ALTER SYSTEM SET listen_addresses");
    admin.close().await;
    use std::io::Write;
    let mut hba = std::fs::OpenOptions::new()
        .append(true)
        .open(cluster.pg.data_dir().join("pg_hba.conf"))
        .expect("pg_hba.conf");
    writeln!(hba, "host all all 10.213.0.0/16 trust").expect("write pg_hba.conf");
    cluster.stop_server().await;
    cluster.start_server().await;
}

/// Backend pid of the session from `client` that holds an advisory lock under the
/// leadership connection's application name for `datacenter_id`.
async fn lock_session_from(pool: &PgPool, datacenter_id: i32, client: Ipv4Addr) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT a.pid FROM pg_stat_activity a \
         JOIN pg_locks l ON l.pid = a.pid AND l.locktype = 'advisory' AND l.granted \
         WHERE a.application_name = $1 AND a.client_addr = $2::inet",
    )
    .bind(format!("vantage-leadership-dc{datacenter_id}"))
    .bind(IpAddr::from(client).to_string())
    .fetch_optional(pool)
    .await
    .expect("query pg_locks")
}

async fn term_acquired_at(pool: &PgPool, datacenter_id: i32, term: i64) -> DateTime<Utc> {
    sqlx::query_scalar(
        "SELECT acquired_at FROM leader_terms WHERE datacenter_id = $1 AND term = $2",
    )
    .bind(datacenter_id)
    .bind(term)
    .fetch_one(pool)
    .await
    .expect("the term's row")
}

/// Waits for `count` heartbeats of `agent` scheduled after `after`; returns their slots.
async fn wait_for_heartbeats_after(
    pool: &PgPool,
    monitor: i32,
    agent: i64,
    after: DateTime<Utc>,
    count: usize,
) -> Vec<DateTime<Utc>> {
    eventually(
        &format!("{count} heartbeats of agent {agent} after {after}"),
        Duration::from_secs(30),
        || async {
            let slots: Vec<_> = heartbeats(pool, monitor)
                .await
                .into_iter()
                .filter(|b| b.agent_id == Some(agent) && b.scheduled_at > after)
                .map(|b| b.scheduled_at)
                .collect();
            (slots.len() >= count).then_some(slots)
        },
    )
    .await
}

/// The timestamp of a JSON log line.
fn logged_at(line: &str) -> DateTime<Utc> {
    let value: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
    value["timestamp"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .unwrap_or_else(|| panic!("no timestamp in {line}"))
        .with_timezone(&Utc)
}
