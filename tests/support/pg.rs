//! A real PostgreSQL for integration tests.
//!
//! [`TestDb::fresh`] gives each test its own freshly created and migrated database:
//! on the server of `DATABASE_URL` when it is set, otherwise on one throwaway cluster
//! per test binary, started lazily from the machine's PostgreSQL binaries
//! ([`vantage::embedded_postgres`]) and stopped and deleted when the test process
//! exits (its watchdog sees our end of a pipe close, whatever way we exit).
//!
//! [`DedicatedCluster`] is a cluster for one test alone, for tests that stop and start
//! Postgres under a running writer or process.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use tokio::sync::OnceCell;
use vantage::embedded_postgres::EmbeddedPostgres;
use vantage::storage;

/// The server shared by the tests of this binary: an admin URL (to its `postgres`
/// database) and, when we started it, the cluster (kept alive for the process).
struct Shared {
    admin_url: String,
    _cluster: Option<EmbeddedPostgres>,
}

static SHARED: OnceCell<Shared> = OnceCell::const_new();

async fn shared() -> &'static Shared {
    SHARED
        .get_or_init(|| async {
            match std::env::var("DATABASE_URL") {
                Ok(url) if !url.is_empty() => {
                    let mut admin: url::Url = url.parse().expect("DATABASE_URL is a URL");
                    admin.set_path("/postgres");
                    Shared {
                        admin_url: admin.to_string(),
                        _cluster: None,
                    }
                }
                _ => {
                    let cluster = start_cluster().await;
                    Shared {
                        admin_url: cluster.url("postgres"),
                        _cluster: Some(cluster),
                    }
                }
            }
        })
        .await
}

/// A throwaway cluster; a failure panics with the whole chain of causes (the server
/// log's tail is in it).
async fn start_cluster() -> EmbeddedPostgres {
    EmbeddedPostgres::start_temporary()
        .await
        .unwrap_or_else(|err| {
            panic!(
                "cannot start a test PostgreSQL: {:#}",
                anyhow::Error::from(err)
            )
        })
}

/// A database created for one test, migrated, with a pool on it.
pub struct TestDb {
    pub pool: PgPool,
    pub url: String,
    pub name: String,
}

impl TestDb {
    /// A new, migrated database on the shared test server.
    pub async fn fresh() -> TestDb {
        let admin_url = &shared().await.admin_url;
        create_migrated(admin_url).await
    }

    /// A new, empty (not migrated) database on the shared test server.
    pub async fn empty() -> TestDb {
        let admin_url = &shared().await.admin_url;
        create(admin_url).await
    }

    /// host:port of the server.
    pub fn socket_addr(&self) -> SocketAddr {
        let url: url::Url = self.url.parse().expect("URL");
        let host = url.host_str().expect("host");
        let port = url.port().unwrap_or(5432);
        (host, port)
            .to_socket_addrs()
            .expect("resolvable host")
            .next()
            .expect("an address")
    }

    /// The same database and user, reached through another host:port (a proxy).
    pub fn url_via(&self, proxy: SocketAddr) -> String {
        let mut url: url::Url = self.url.parse().expect("URL");
        url.set_host(Some(&proxy.ip().to_string())).expect("host");
        url.set_port(Some(proxy.port())).expect("port");
        url.to_string()
    }

    /// Another pool on this database (e.g. with different settings per test).
    pub async fn connect(&self) -> PgPool {
        storage::connect(&self.url).await.expect("connect")
    }
}

async fn create(admin_url: &str) -> TestDb {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "vantage_test_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        chrono::Utc::now().timestamp_micros() % 1_000_000
    );
    let options: PgConnectOptions = admin_url.parse().expect("admin URL");
    let mut admin = options.connect().await.expect("connect to the test server");
    sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await
        .expect("create the test database");
    admin.close().await.ok();
    let mut url: url::Url = admin_url.parse().expect("URL");
    url.set_path(&format!("/{name}"));
    let url = url.to_string();
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .connect(&url)
        .await
        .expect("connect to the test database");
    TestDb { pool, url, name }
}

async fn create_migrated(admin_url: &str) -> TestDb {
    let db = create(admin_url).await;
    storage::migrate(&db.pool)
        .await
        .expect("migrate the test database");
    db
}

/// A PostgreSQL cluster used by one test only, so it can be stopped and started under
/// running code.
pub struct DedicatedCluster {
    pub pg: EmbeddedPostgres,
}

impl DedicatedCluster {
    pub async fn start() -> DedicatedCluster {
        let pg = start_cluster().await;
        DedicatedCluster { pg }
    }

    /// A new, migrated database on this cluster.
    pub async fn fresh_db(&self) -> TestDb {
        create_migrated(&self.pg.url("postgres")).await
    }

    /// Fast shutdown: sessions are disconnected, the server is gone until started.
    pub async fn stop_server(&self) {
        self.pg.stop().await.expect("stop PostgreSQL");
    }

    pub async fn start_server(&self) {
        self.pg.start().await.expect("start PostgreSQL");
    }

    /// A pool with Vantage's settings on `db_name`.
    pub async fn pool(&self, db_name: &str) -> PgPool {
        storage::connect(&self.pg.url(db_name))
            .await
            .expect("connect")
    }

    pub fn port(&self) -> u16 {
        self.pg.port()
    }
}

/// A plausible successful heartbeat for `slot`, with every optional field set.
pub fn heartbeat(
    monitor_id: i32,
    datacenter_id: i32,
    slot: chrono::DateTime<chrono::Utc>,
) -> vantage::Heartbeat {
    use vantage::{ProbeReport, ProbeStatus};
    vantage::Heartbeat {
        monitor_id,
        datacenter_id,
        scheduled_at: slot,
        executed_at: slot + chrono::Duration::microseconds(1234),
        agent_id: Some(7),
        leader_term: Some(3),
        schedule_lag_ms: 1.234,
        report: ProbeReport {
            status: ProbeStatus::Up,
            http_status: Some(200),
            dns_ms: Some(1.5),
            connect_ms: Some(0.25),
            tls_ms: Some(12.125),
            ttfb_ms: Some(30.001),
            transfer_ms: Some(0.5),
            total_ms: 44.376,
            response_size_bytes: Some(1256),
            remote_ip: Some("192.0.2.10".parse().unwrap()),
            http_version: Some("HTTP/1.1".into()),
            tls_version: Some("TLSv1.3".into()),
            tls_cert_expires_at: Some(slot + chrono::Duration::days(20)),
            redirect_count: 0,
            error_kind: None,
            error_message: None,
            response_body: None,
            content_type: None,
            server: None,
            response_headers: None,
            details: None,
        },
    }
}

/// Rows in `api_heartbeats`.
pub async fn count_heartbeats(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM api_heartbeats")
        .fetch_one(pool)
        .await
        .expect("count heartbeats")
}

/// Inserts a datacenter, a schedule and a monitor; returns (monitor_id, datacenter_id).
pub async fn minimal_config(pool: &PgPool) -> (i32, i32) {
    let dc: i32 = sqlx::query_scalar(
        "INSERT INTO datacenters (code, name) VALUES ('va', 'Virginia') RETURNING id",
    )
    .fetch_one(pool)
    .await
    .expect("datacenter");
    let schedule: i32 = sqlx::query_scalar(
        "INSERT INTO schedules (name, interval_seconds, timeout_ms) VALUES ('10s', 10, 5000) RETURNING id",
    )
    .fetch_one(pool)
    .await
    .expect("schedule");
    let monitor: i32 = sqlx::query_scalar(
        "INSERT INTO api_monitors (name, url, schedule_id, all_datacenters) \
         VALUES ('example', 'https://example.com/', $1, true) RETURNING id",
    )
    .bind(schedule)
    .fetch_one(pool)
    .await
    .expect("monitor");
    (monitor, dc)
}
