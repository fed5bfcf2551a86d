//! Real `vantage run` processes against a test database, and the queries the leadership
//! tests use to see what a user would see: terms, agents and heartbeats.

use std::net::{SocketAddr, TcpListener};
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::eventually::eventually;

/// One `vantage run` child process whose log lines the test can read.
pub struct Instance {
    pub name: String,
    pub listen: SocketAddr,
    child: Child,
    logs: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
    _spool: tempfile::TempDir,
}

pub struct InstanceOptions<'a> {
    pub database_url: &'a str,
    pub datacenter: &'a str,
    pub name: &'a str,
    pub extra_env: Vec<(&'a str, String)>,
}

impl Instance {
    pub fn start(options: InstanceOptions<'_>) -> Self {
        Self::spawn(Command::new(env!("CARGO_BIN_EXE_vantage")), options)
    }

    /// Like [`Instance::start`], but inside the network namespace `netns` (through
    /// `ip netns exec`, which execs the binary: the child is `vantage` itself). Its
    /// `listen` address is on the namespace's own loopback.
    pub fn start_in_netns(netns: &str, options: InstanceOptions<'_>) -> Self {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", netns, env!("CARGO_BIN_EXE_vantage")]);
        Self::spawn(command, options)
    }

    fn spawn(mut command: Command, options: InstanceOptions<'_>) -> Self {
        let listen = free_port();
        let spool = tempfile::tempdir().unwrap();
        command
            .arg("run")
            .env_remove("RUST_LOG")
            .env("DATABASE_URL", options.database_url)
            .env("VANTAGE_DATACENTER", options.datacenter)
            .env("VANTAGE_INSTANCE_NAME", options.name)
            .env("VANTAGE_LISTEN", listen.to_string())
            .env("VANTAGE_SPOOL_DIR", spool.path())
            .env("VANTAGE_LOG_FORMAT", "json")
            .env("RUST_LOG", "info,vantage=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, value) in options.extra_env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawning vantage run");
        let stderr = child.stderr.take().unwrap();
        let (tx, logs) = mpsc::unbounded_channel();
        let name = options.name.to_string();
        let prefix = name.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if std::env::var_os("VANTAGE_TEST_ECHO_LOGS").is_some() {
                    eprintln!("[{prefix}] {line}");
                }
                let _ = tx.send(line);
            }
        });
        Self {
            name,
            listen,
            child,
            logs,
            seen: Vec::new(),
            _spool: spool,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id().expect("child still running") as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child process.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid());
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        tokio::time::timeout(within, self.child.wait())
            .await
            .expect("instance did not exit in time")
            .expect("waiting for instance")
            .code()
    }

    /// Waits until a log line containing every one of `needles` appears.
    pub async fn wait_for_log(&mut self, needles: &[&str], within: Duration) -> String {
        let matches = |line: &String| needles.iter().all(|n| line.contains(n));
        if let Some(line) = self.seen.iter().find(|l| matches(l)) {
            return line.clone();
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let line = tokio::time::timeout_at(deadline, self.logs.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{}: no log line with {needles:?} within {within:?}; last lines:\n{}",
                        self.name,
                        self.seen
                            .iter()
                            .rev()
                            .take(15)
                            .rev()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join("\n")
                    )
                })
                .unwrap_or_else(|| panic!("{}: process closed stderr", self.name));
            self.seen.push(line.clone());
            if matches(&line) {
                return line;
            }
        }
    }

    /// All log lines read so far (drains what is buffered).
    pub fn logs(&mut self) -> &[String] {
        while let Ok(line) = self.logs.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }

    /// The Prometheus exposition of `/metrics`.
    pub async fn metrics(&self) -> Option<String> {
        http_get(self.listen, "/metrics").await
    }

    pub async fn status(&self) -> Option<serde_json::Value> {
        let body = http_get(self.listen, "/status").await?;
        serde_json::from_str(&body).ok()
    }
}

/// A minimal GET over plain TCP, so the tests need no HTTP client of their own.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let (_, body) = response.split_once("\r\n\r\n")?;
    Some(body.to_string())
}

pub fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Seeds one region, the given datacenters, and returns their ids in order.
pub async fn seed_datacenters(pool: &PgPool, codes: &[&str]) -> Vec<i32> {
    sqlx::query(
        "INSERT INTO regions (code, name) VALUES ('test', 'Test region') ON CONFLICT DO NOTHING",
    )
    .execute(pool)
    .await
    .unwrap();
    let mut ids = Vec::new();
    for code in codes {
        let id: i32 = sqlx::query_scalar(
            "INSERT INTO datacenters (code, name, region_id) \
             SELECT $1, upper($1), id FROM regions WHERE code = 'test' RETURNING id",
        )
        .bind(code)
        .fetch_one(pool)
        .await
        .unwrap();
        ids.push(id);
    }
    ids
}

/// Creates an interval schedule and a monitor on it for every datacenter; returns the
/// monitor id.
pub async fn seed_monitor(pool: &PgPool, name: &str, url: &str, interval_seconds: i32) -> i32 {
    let schedule_id: i32 = sqlx::query_scalar(
        "INSERT INTO schedules (name, interval_seconds, timeout_ms) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE SET interval_seconds = EXCLUDED.interval_seconds RETURNING id",
    )
    .bind(format!("every-{interval_seconds}s"))
    .bind(interval_seconds)
    .bind(interval_seconds * 1000 / 2)
    .fetch_one(pool)
    .await
    .unwrap();
    sqlx::query_scalar(
        "INSERT INTO api_monitors (name, url, schedule_id, all_datacenters) VALUES ($1, $2, $3, true) RETURNING id",
    )
    .bind(name)
    .bind(url)
    .bind(schedule_id)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Beat {
    pub scheduled_at: DateTime<Utc>,
    pub agent_id: Option<i64>,
    pub leader_term: Option<i64>,
    pub status: String,
    pub error_kind: Option<String>,
    pub http_status: Option<i32>,
}

pub async fn heartbeats(pool: &PgPool, monitor_id: i32) -> Vec<Beat> {
    sqlx::query_as(
        "SELECT scheduled_at, agent_id, leader_term, status, error_kind, http_status \
         FROM api_heartbeats WHERE monitor_id = $1 ORDER BY scheduled_at",
    )
    .bind(monitor_id)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The agent currently holding an open term in the datacenter, with the term.
pub async fn current_leader(pool: &PgPool, datacenter_id: i32) -> Option<(i64, i64)> {
    let (agent, term) = open_term(pool, datacenter_id).await?;
    Some((agent?, term))
}

/// The datacenter's open term and the agent it names, if any (a lost `agents` row leaves
/// a term naming nobody for a moment).
pub async fn open_term(pool: &PgPool, datacenter_id: i32) -> Option<(Option<i64>, i64)> {
    sqlx::query_as(
        "SELECT agent_id, term FROM leader_terms \
         WHERE datacenter_id = $1 AND released_at IS NULL ORDER BY term DESC LIMIT 1",
    )
    .bind(datacenter_id)
    .fetch_optional(pool)
    .await
    .unwrap()
}

/// Datacenter `va` with a 1 s monitor on a local target, led by one of two instances.
pub struct Pair {
    pub datacenter_id: i32,
    pub monitor_id: i32,
    pub leader: Instance,
    pub standby: Instance,
    pub leader_agent: i64,
    pub standby_agent: i64,
    pub term: i64,
}

/// Seeds `va` and its monitor, starts `va-a` and `va-b` with `extra_env`, and returns
/// once the leader has probed three times and both instances are registered.
pub async fn start_pair(pool: &PgPool, database_url: &str, extra_env: &[(&str, &str)]) -> Pair {
    let target = serve_target().await;
    let datacenter_id = seed_datacenters(pool, &["va"]).await[0];
    let monitor_id = seed_monitor(pool, "target-ok", &format!("http://{target}/ok"), 1).await;
    let start = |name| {
        Instance::start(InstanceOptions {
            database_url,
            datacenter: "va",
            name,
            extra_env: extra_env.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        })
    };
    let (a, b) = (start("va-a"), start("va-b"));
    let (leader_agent, term) = wait_for_leader_probing(pool, datacenter_id, monitor_id, 3).await;
    let registered = |name: &'static str| async move {
        sqlx::query_scalar::<_, i64>("SELECT id FROM agents WHERE instance_name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await
            .unwrap()
    };
    eventually(
        "both instances registered",
        Duration::from_secs(20),
        || async {
            registered("va-a").await?;
            registered("va-b").await
        },
    )
    .await;
    let (leader, standby) = leader_first(pool, a, b, leader_agent).await;
    let standby_agent = agent_id_of(pool, &standby.name).await;
    Pair {
        datacenter_id,
        monitor_id,
        leader,
        standby,
        leader_agent,
        standby_agent,
        term,
    }
}

/// Waits until the datacenter has a leader and `monitor` has at least `beats`
/// heartbeats; returns the leader's `(agent_id, term)`.
pub async fn wait_for_leader_probing(
    pool: &PgPool,
    datacenter_id: i32,
    monitor_id: i32,
    beats: usize,
) -> (i64, i64) {
    eventually(
        &format!("a leader and {beats} heartbeats"),
        Duration::from_secs(30),
        || async {
            let leader = current_leader(pool, datacenter_id).await;
            let stored = heartbeats(pool, monitor_id).await.len();
            match leader {
                Some(leader) if stored >= beats => Ok(leader),
                _ => Err(format!(
                    "leader (agent, term) {leader:?}, {stored} heartbeats"
                )),
            }
        },
    )
    .await
}

/// Orders two instances of one datacenter as `(leader, standby)`.
pub async fn leader_first(
    pool: &PgPool,
    a: Instance,
    b: Instance,
    leader_agent: i64,
) -> (Instance, Instance) {
    if agent_id_of(pool, &a.name).await == leader_agent {
        (a, b)
    } else {
        (b, a)
    }
}

/// Waits until `agent` has probed `monitor` at least `beats` times.
pub async fn wait_for_beats_by(pool: &PgPool, monitor_id: i32, agent_id: i64, beats: usize) {
    eventually(
        &format!("{beats} heartbeats from agent {agent_id}"),
        Duration::from_secs(20),
        || async {
            let by_agent = heartbeats(pool, monitor_id)
                .await
                .iter()
                .filter(|b| b.agent_id == Some(agent_id))
                .count();
            if by_agent >= beats {
                Ok(())
            } else {
                Err(format!("{by_agent} heartbeats from agent {agent_id}"))
            }
        },
    )
    .await
}

pub async fn agent_id_of(pool: &PgPool, instance_name: &str) -> i64 {
    sqlx::query_scalar("SELECT id FROM agents WHERE instance_name = $1")
        .bind(instance_name)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Slots missing between consecutive heartbeats of a monitor on a fixed interval grid.
pub fn missed_slots(beats: &[Beat], interval: Duration) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let step = chrono::Duration::from_std(interval).unwrap();
    beats
        .windows(2)
        .filter(|w| w[1].scheduled_at - w[0].scheduled_at > step)
        .map(|w| (w[0].scheduled_at, w[1].scheduled_at))
        .collect()
}

/// A target for the probes: `/ok` answers 200, `/fail` answers 500.
pub async fn serve_target() -> SocketAddr {
    serve_target_on(std::net::Ipv4Addr::LOCALHOST.into()).await
}

/// [`serve_target`] on another local address (e.g. the host side of a veth pair).
pub async fn serve_target_on(ip: std::net::IpAddr) -> SocketAddr {
    use axum::http::StatusCode;
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route(
            "/fail",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "fail") }),
        );
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}
