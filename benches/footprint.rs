//! Footprint of `vantage run` next to Debian's prometheus-blackbox-exporter (issue #14):
//! CPU time per probe and peak resident memory, both probing the same nginx.
//!
//!     cargo bench --bench footprint                  # everything (about 8 minutes)
//!     cargo bench --bench footprint -- cpu           # the side-by-side table only
//!     cargo bench --bench footprint -- rss           # the two memory runs only
//!     cargo bench --bench footprint -- breakdown     # where the memory goes (not in "all")
//!     FOOTPRINT_WINDOW_S=30 (steady-state window), FOOTPRINT_RATES=200,1000 (skip the
//!     blackbox_exporter rate search and compare at these rates), FOOTPRINT_VANTAGE=path
//!     (another `vantage` binary, e.g. a copy of the one before a change)
//!
//! The target is a loopback nginx serving HTTPS with an ECDSA P-256 leaf signed by a
//! private CA (the test suite's `TestCa`), TLS 1.3 only, HTTP/2 offered by ALPN, with
//! `ssl_session_cache off; ssl_session_tickets off;` so every probe is one full
//! handshake. nginx, a private PostgreSQL (`support::bench_database`) and this process
//! (the load generator) run on core 1; the measured process runs alone on core 0
//! (`taskset -c 0`). nginx and blackbox_exporter are installed with apt-get when missing.
//!
//! Vantage: a real `vantage run` leader of a datacenter whose monitors (`https://`
//! to nginx by IP, the CA given by `VANTAGE_CA_FILE`) are all on one interval, so the
//! rate is monitors / interval; it schedules, probes and writes every heartbeat to
//! Postgres (Postgres's own CPU is not counted). CPU per probe is the process's
//! utime + stime (`/proc/PID/stat`) over a steady-state window divided by the heartbeats
//! stored in that window; peak RSS is `VmHWM` (`/proc/PID/status`).
//!
//! blackbox_exporter: the same nginx through a module doing TLS with the same CA, driven
//! by this process: `/probe?target=...&module=...` requests at a fixed rate over
//! keep-alive connections (at most [`SCRAPERS`] in flight, as a Prometheus with that
//! many targets would). CPU per probe is its utime + stime over the window divided by
//! the scrapes that answered `probe_success 1`. Its saturation rate is found by stepping
//! the offered rate until the achieved rate stops rising.

#[allow(dead_code)]
#[path = "../tests/support/tls.rs"]
mod tls;

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use sqlx::PgPool;
use tokio::sync::Semaphore;

/// Scrapes of blackbox_exporter in flight at most (each on its own keep-alive connection).
const SCRAPERS: usize = 512;

/// Every vantage run in the CPU table probes each monitor this often; the rate is set by
/// the number of monitors.
const CPU_INTERVAL_S: u32 = 10;

fn main() -> anyhow::Result<()> {
    // This process, and everything it starts (nginx, PostgreSQL), stays on core 1; the
    // measured processes are started with `taskset -c 0`.
    pin_to_core(1);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let want = |what: &str| {
        !args
            .iter()
            .any(|a| ["cpu", "rss", "breakdown"].contains(&a.as_str()))
            && what != "breakdown"
            || args.iter().any(|a| a == what)
    };
    let window = Duration::from_secs(env_u64("FOOTPRINT_WINDOW_S", 30));
    ensure_installed()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let dir = tempfile::tempdir()?;
        let nginx = Nginx::start(dir.path())?;
        let (_cluster, url) = support::bench_database("footprint").await?;
        let pool = vantage::storage::connect(&url).await?;
        println!("footprint: {}", machine());
        println!("target: nginx {} on 127.0.0.1:{}, TLS 1.3 full handshakes (no session cache, no tickets), ECDSA P-256 leaf from a private CA", nginx.version, nginx.port);
        println!("command: cargo bench --bench footprint -- {}\n", args.join(" "));
        if want("cpu") {
            cpu_table(&nginx, &pool, &url, dir.path(), window).await?;
        }
        if want("rss") {
            for (monitors, interval, run_for) in [(10_000, 10, 45), (100_000, 60, 100)] {
                let run = Vantage::start(&pool, &url, dir.path(), &nginx, monitors, interval, &[]).await?;
                let m = run.measure(&pool, Duration::from_secs(run_for / 2), Duration::from_secs(run_for / 2)).await?;
                println!(
                    "vantage run, {monitors} monitors every {interval} s ({:.0} probes/s offered): achieved {:.0}/s, not up {}, CPU {:.0} us/probe, peak RSS (VmHWM) {:.1} MB, RSS at the end {:.1} MB  [{}]",
                    f64::from(monitors) / f64::from(interval),
                    m.rate(),
                    m.not_up,
                    m.cpu_us_per_probe(),
                    m.hwm_kb as f64 / 1024.0,
                    m.rss_kb as f64 / 1024.0,
                    load()
                );
                run.stop();
            }
        }
        if want("breakdown") {
            breakdown(&nginx, &pool, &url, dir.path()).await?;
        }
        pool.close().await;
        drop(nginx);
        Ok(())
    })
}

/// One steady-state window of a measured process.
struct Window {
    probes: u64,
    not_up: u64,
    cpu: Duration,
    wall: Duration,
    hwm_kb: u64,
    rss_kb: u64,
}

impl Window {
    fn rate(&self) -> f64 {
        self.probes as f64 / self.wall.as_secs_f64()
    }
    fn cpu_us_per_probe(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.probes.max(1) as f64
    }
}

/// The side by side: blackbox_exporter's saturation rate, then both at 200/s and at it.
async fn cpu_table(
    nginx: &Nginx,
    pool: &PgPool,
    url: &str,
    dir: &Path,
    window: Duration,
) -> anyhow::Result<()> {
    let blackbox = Blackbox::start(dir, nginx)?;
    let sample = scrape(&mut None, blackbox.port, &blackbox.path())
        .await
        .unwrap_or_default();
    let facts: Vec<&str> = sample
        .lines()
        .filter(|l| {
            l.starts_with("probe_success")
                || l.starts_with("probe_http_version")
                || l.starts_with("probe_tls_version_info")
        })
        .collect();
    println!("blackbox_exporter's first probe: {}", facts.join(", "));
    let mut rows: Vec<(f64, Window)> = Vec::new();
    let rates: Vec<f64> = match std::env::var("FOOTPRINT_RATES") {
        Ok(list) => list
            .split(',')
            .filter_map(|r| r.trim().parse().ok())
            .collect(),
        Err(_) => {
            // Step the offered rate until the achieved one stops rising (< 5 % more).
            let mut best = 0.0f64;
            let mut offered = 200.0;
            loop {
                let w = blackbox
                    .measure(offered, Duration::from_secs(3), Duration::from_secs(10))
                    .await;
                println!("  blackbox_exporter offered {offered:.0}/s: achieved {:.0}/s (not up {}), {:.0} us/probe  [{}]", w.rate(), w.not_up, w.cpu_us_per_probe(), load());
                let rising = w.rate() > best * 1.05;
                best = best.max(w.rate());
                if !rising || w.rate() < 0.9 * offered {
                    break;
                }
                offered += 200.0;
            }
            vec![200.0, (best / 10.0).round() * 10.0]
        }
    };
    for &rate in &rates {
        rows.push((
            rate,
            blackbox.measure(rate, Duration::from_secs(5), window).await,
        ));
    }
    let hwm_blackbox = status_kb(blackbox.child.id(), "VmHWM");
    drop(blackbox);
    let mut vantage_rows = Vec::new();
    for &rate in &rates {
        let monitors = (rate * f64::from(CPU_INTERVAL_S)).round() as u32;
        let run = Vantage::start(pool, url, dir, nginx, monitors, CPU_INTERVAL_S, &[]).await?;
        // One whole interval first: every monitor has fired once and the writer is warm.
        let w = run
            .measure(
                pool,
                Duration::from_secs(u64::from(CPU_INTERVAL_S) + 5),
                window,
            )
            .await?;
        run.stop();
        vantage_rows.push(w);
    }
    println!("\n| offered probes/s | blackbox_exporter achieved/s | blackbox_exporter CPU µs/probe | vantage run achieved/s | vantage run CPU µs/probe | ratio |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for ((rate, b), v) in rows.iter().zip(&vantage_rows) {
        println!(
            "| {rate:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1}x |",
            b.rate(),
            b.cpu_us_per_probe(),
            v.rate(),
            v.cpu_us_per_probe(),
            b.cpu_us_per_probe() / v.cpu_us_per_probe()
        );
    }
    let failed: u64 = rows.iter().map(|(_, w)| w.not_up).sum::<u64>()
        + vantage_rows.iter().map(|w| w.not_up).sum::<u64>();
    println!(
        "peak RSS (VmHWM): blackbox_exporter {:.1} MB, vantage run {:.1} MB (largest of the runs); probes not up: {failed}  [{}]\n",
        hwm_blackbox as f64 / 1024.0,
        vantage_rows.iter().map(|w| w.hwm_kb).max().unwrap_or(0) as f64 / 1024.0,
        load()
    );
    Ok(())
}

/// Memory by cause: the same process with no monitors, with monitors it holds but
/// (nearly) never probes (a daily interval; reloads every 5 s, so a reload's second
/// copy is in the peak), and probing them.
async fn breakdown(nginx: &Nginx, pool: &PgPool, url: &str, dir: &Path) -> anyhow::Result<()> {
    println!(
        "size_of: RunnableMonitor {} B, Monitor {} B, Heartbeat {} B (heap parts not included)",
        std::mem::size_of::<vantage::monitors::RunnableMonitor>(),
        std::mem::size_of::<vantage::probe::Monitor>(),
        std::mem::size_of::<vantage::Heartbeat>(),
    );
    for (monitors, interval) in [
        (0, 86_400),
        (10_000, 86_400),
        (100_000, 86_400),
        (10_000, 10),
    ] {
        let run = Vantage::start(
            pool,
            url,
            dir,
            nginx,
            monitors,
            interval,
            &[("VANTAGE_CONFIG_RELOAD_INTERVAL", "5s")],
        )
        .await?;
        let w = run
            .measure(pool, Duration::from_secs(25), Duration::from_secs(10))
            .await?;
        let smaps = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", run.child.id()))
            .unwrap_or_default();
        let anon = smaps
            .lines()
            .find(|l| l.starts_with("Anonymous:"))
            .unwrap_or("")
            .split_whitespace()
            .nth(1)
            .unwrap_or("?")
            .to_string();
        let threads = std::fs::read_dir(format!("/proc/{}/task", run.child.id()))
            .map(|d| d.count())
            .unwrap_or(0);
        println!(
            "  {monitors:>6} monitors every {interval:>5} s: VmHWM {:.1} MB, VmRSS {:.1} MB (anonymous {anon} kB), {threads} threads, {:.0} probes/s  [{}]",
            w.hwm_kb as f64 / 1024.0,
            w.rss_kb as f64 / 1024.0,
            w.rate(),
            load()
        );
        run.stop();
    }
    Ok(())
}

/// A loopback nginx on core 1, until dropped.
struct Nginx {
    child: Child,
    port: u16,
    ca_file: PathBuf,
    version: String,
}

impl Nginx {
    fn start(dir: &Path) -> anyhow::Result<Nginx> {
        let ca = tls::TestCa::new();
        let identity = ca.leaf(&["127.0.0.1"]);
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &ca.cert_pem)?;
        std::fs::write(dir.join("leaf.pem"), pem("CERTIFICATE", &identity.chain[0]))?;
        std::fs::write(
            dir.join("leaf.key"),
            pem("PRIVATE KEY", identity.key.secret_der()),
        )?;
        let port = free_port()?;
        let conf = format!(
            "worker_processes 1;\n\
             daemon off;\n\
             pid {dir}/nginx.pid;\n\
             error_log {dir}/nginx-error.log warn;\n\
             events {{ worker_connections 8192; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {dir};\n\
               server {{\n\
                 listen 127.0.0.1:{port} ssl http2 backlog=4096;\n\
                 ssl_certificate {dir}/leaf.pem;\n\
                 ssl_certificate_key {dir}/leaf.key;\n\
                 ssl_protocols TLSv1.3;\n\
                 ssl_session_cache off;\n\
                 ssl_session_tickets off;\n\
                 location / {{ return 200 \"ok\\n\"; }}\n\
               }}\n\
             }}\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("nginx.conf"), conf)?;
        let version = String::from_utf8_lossy(&Command::new("nginx").arg("-v").output()?.stderr)
            .trim()
            .trim_start_matches("nginx version: nginx/")
            .to_string();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("nginx-error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .spawn()?;
        wait_for_port(port)?;
        Ok(Nginx {
            child,
            port,
            ca_file,
            version,
        })
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A `vantage run` leader on core 0 probing `monitors` monitors of a datacenter of its own.
struct Vantage {
    child: Child,
    started: Instant,
}

impl Vantage {
    async fn start(
        pool: &PgPool,
        url: &str,
        dir: &Path,
        nginx: &Nginx,
        monitors: u32,
        interval_s: u32,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Vantage> {
        // A fresh configuration: one datacenter (so the incident evaluator, which every
        // `vantage run` hosts, follows these monitors in one datacenter only), only this
        // run's monitors enabled, no heartbeats yet.
        let code = format!("fp{monitors}x{interval_s}");
        sqlx::raw_sql(
            "TRUNCATE api_heartbeats; UPDATE api_monitors SET enabled = false; \
             INSERT INTO datacenters (code, name) VALUES ('fp', 'footprint') ON CONFLICT DO NOTHING",
        )
        .execute(pool)
        .await?;
        sqlx::query(
            "WITH s AS (INSERT INTO schedules (name, interval_seconds, timeout_ms) VALUES ($4, $2, 5000) RETURNING id) \
             INSERT INTO api_monitors (name, url, schedule_id, all_datacenters) \
             SELECT $4 || '-' || g, $3, s.id, true FROM generate_series(1, $1) g, s",
        )
        .bind(monitors as i32)
        .bind(interval_s as i32)
        .bind(nginx.url())
        .bind(&code)
        .execute(pool)
        .await?;
        let log = std::fs::File::create(dir.join(format!("vantage-{code}.log")))?;
        let child = Command::new("taskset")
            .args(["-c", "0", &vantage_bin(), "run"])
            .env("DATABASE_URL", url)
            .env("VANTAGE_DATACENTER", "fp")
            .env("VANTAGE_INSTANCE_NAME", &code)
            .env("VANTAGE_LISTEN", format!("127.0.0.1:{}", free_port()?))
            .env("VANTAGE_SPOOL_DIR", dir.join(format!("spool-{code}")))
            .env("VANTAGE_CA_FILE", &nginx.ca_file)
            .env("VANTAGE_LOG_FORMAT", "json")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        Ok(Vantage {
            child,
            started: Instant::now(),
        })
    }

    /// Waits `warm_up` from the start, then measures over `window`.
    async fn measure(
        &self,
        pool: &PgPool,
        warm_up: Duration,
        window: Duration,
    ) -> anyhow::Result<Window> {
        tokio::time::sleep_until((self.started + warm_up).into()).await;
        let pid = self.child.id();
        let stored = || async {
            sqlx::query_as::<_, (i64, i64)>(
                "SELECT count(*), count(*) FILTER (WHERE status <> 'up') FROM api_heartbeats",
            )
            .fetch_one(pool)
            .await
        };
        let (rows0, down0) = stored().await?;
        let (cpu0, wall0) = (support::cpu_time(pid, None), Instant::now());
        tokio::time::sleep(window).await;
        let (cpu1, wall) = (support::cpu_time(pid, None), wall0.elapsed());
        let (rows1, down1) = stored().await?;
        anyhow::ensure!(
            cpu1 > Duration::ZERO,
            "vantage run exited; see its log in {}",
            std::env::temp_dir().display()
        );
        Ok(Window {
            probes: (rows1 - rows0) as u64,
            not_up: (down1 - down0) as u64,
            cpu: cpu1 - cpu0,
            wall,
            hwm_kb: status_kb(pid, "VmHWM"),
            rss_kb: status_kb(pid, "VmRSS"),
        })
    }

    fn stop(mut self) {
        stop(&mut self.child);
    }
}

/// prometheus-blackbox-exporter on core 0 with a module for the nginx target, until dropped.
struct Blackbox {
    child: Child,
    port: u16,
    target: String,
}

impl Blackbox {
    fn start(dir: &Path, nginx: &Nginx) -> anyhow::Result<Blackbox> {
        let config = dir.join("blackbox.yml");
        std::fs::write(
            &config,
            format!(
                "modules:\n  https_test_ca:\n    prober: http\n    timeout: 5s\n    http:\n      preferred_ip_protocol: ip4\n      ip_protocol_fallback: false\n      tls_config:\n        ca_file: {}\n",
                nginx.ca_file.display()
            ),
        )?;
        let port = free_port()?;
        let child = Command::new("taskset")
            .args(["-c", "0", "prometheus-blackbox-exporter"])
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("blackbox.log"))?)
            .spawn()?;
        wait_for_port(port)?;
        Ok(Blackbox {
            child,
            port,
            target: nginx.url(),
        })
    }

    fn path(&self) -> String {
        format!("/probe?module=https_test_ca&target={}", self.target)
    }

    /// Offers `rate` scrapes/s for `warm_up + window`; measures the window.
    async fn measure(&self, rate: f64, warm_up: Duration, window: Duration) -> Window {
        let path = self.path();
        let tokens = Arc::new(Semaphore::new(0));
        let (ok, not_up) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut scrapers = tokio::task::JoinSet::new();
        for _ in 0..SCRAPERS {
            let (tokens, ok, not_up, path, port) = (
                tokens.clone(),
                ok.clone(),
                not_up.clone(),
                path.clone(),
                self.port,
            );
            scrapers.spawn(async move {
                let mut conn = None;
                loop {
                    let Ok(permit) = tokens.acquire().await else {
                        return;
                    };
                    permit.forget();
                    match scrape(&mut conn, port, &path).await {
                        Some(body) if body.contains("\nprobe_success 1") => {
                            ok.fetch_add(1, Ordering::Relaxed)
                        }
                        _ => not_up.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
        // The pacer: `rate` tokens a second; a backlog of more than a second's worth is
        // not offered (as a Prometheus skips a scrape still running).
        let pacer = {
            let tokens = tokens.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let mut issued = 0u64;
                let mut tick = tokio::time::interval(Duration::from_millis(2));
                loop {
                    tick.tick().await;
                    let due = (start.elapsed().as_secs_f64() * rate) as u64;
                    if tokens.available_permits() < rate as usize {
                        tokens.add_permits((due - issued) as usize);
                    }
                    issued = due;
                }
            })
        };
        tokio::time::sleep(warm_up).await;
        let pid = self.child.id();
        let (cpu0, ok0, down0, wall0) = (
            support::cpu_time(pid, None),
            ok.load(Ordering::Relaxed),
            not_up.load(Ordering::Relaxed),
            Instant::now(),
        );
        tokio::time::sleep(window).await;
        let (cpu1, ok1, down1, wall) = (
            support::cpu_time(pid, None),
            ok.load(Ordering::Relaxed),
            not_up.load(Ordering::Relaxed),
            wall0.elapsed(),
        );
        pacer.abort();
        tokens.close();
        scrapers.shutdown().await;
        // Let what the aborted scrapes left running inside the exporter finish.
        tokio::time::sleep(Duration::from_secs(2)).await;
        Window {
            probes: ok1 - ok0,
            not_up: down1 - down0,
            cpu: cpu1 - cpu0,
            wall,
            hwm_kb: status_kb(pid, "VmHWM"),
            rss_kb: status_kb(pid, "VmRSS"),
        }
    }
}

impl Drop for Blackbox {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

type Conn = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// One GET over a kept-alive HTTP/1.1 connection (made on first use or after an error).
async fn scrape(conn: &mut Option<Conn>, port: u16, path: &str) -> Option<String> {
    if conn.as_ref().is_none_or(|c| c.is_closed()) {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let (send, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .ok()?;
        tokio::spawn(connection);
        *conn = Some(send);
    }
    let send = conn.as_mut()?;
    send.ready().await.ok()?;
    let request = hyper::Request::get(path)
        .header("host", "127.0.0.1")
        .body(Empty::new())
        .ok()?;
    let result = async {
        let response = send.send_request(request).await.ok()?;
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some(String::from_utf8_lossy(&body).into_owned())
    }
    .await;
    if result.is_none() {
        *conn = None;
    }
    result
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A `/proc/PID/status` field in kB (`VmHWM`, `VmRSS`); 0 when gone.
fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .strip_prefix(':')?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn stop(child: &mut Child) {
    // SIGTERM, so vantage flushes its writer and nginx's master takes its worker along.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "nothing listens on 127.0.0.1:{port} after 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn pin_to_core(core: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity only touch it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// nginx and blackbox_exporter from Debian, installed on first use.
fn ensure_installed() -> anyhow::Result<()> {
    let missing: Vec<&str> = [
        ("nginx", "nginx-light"),
        (
            "prometheus-blackbox-exporter",
            "prometheus-blackbox-exporter",
        ),
    ]
    .into_iter()
    .filter(|(bin, _)| {
        Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .stdout(Stdio::null())
            .status()
            .map_or(true, |s| !s.success())
    })
    .map(|(_, package)| package)
    .collect();
    if !missing.is_empty() {
        println!("installing {} (apt-get)", missing.join(" "));
        let status = Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .status()?;
        anyhow::ensure!(
            status.success(),
            "apt-get install {} failed",
            missing.join(" ")
        );
    }
    Ok(())
}

fn vantage_bin() -> String {
    std::env::var("FOOTPRINT_VANTAGE").unwrap_or_else(|_| env!("CARGO_BIN_EXE_vantage").into())
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_default();
    let blackbox = Command::new("prometheus-blackbox-exporter")
        .arg("--version")
        .output()
        .ok()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            text.lines().next().unwrap_or_default().to_string()
        });
    format!(
        "{} vCPU {cpu}; {}; {}",
        std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count(),
        blackbox.unwrap_or_default(),
        load()
    )
}

/// The load average now: the host is shared, so every figure carries it.
fn load() -> String {
    let avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "load {}",
        avg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    )
}
