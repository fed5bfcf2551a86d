//! Cost of a fresh HTTPS probe: CPU time per probe and probes per second at saturation.
//!
//! `cargo bench --bench probe_cost` (optionally `-- N SECONDS CONCURRENCY`). The target
//! runs in a child process (this same binary re-executed as the server: HTTPS with an
//! ECDSA P-256 leaf signed by a private CA, TLS 1.3, ALPN h2 + http/1.1, plus the UDP DNS
//! responder), so the client's CPU is measured with `getrusage(RUSAGE_SELF)` and the
//! server's separately from `/proc/<pid>/stat`. Every probe is a full probe through
//! `Prober::probe` with certificate verification on, a new TCP connection and a full
//! (not resumed) handshake; any probe that is not `up` is counted and reported. The
//! prober remembers the chains it validated, as in production (the server's handshake
//! signature is still checked every time); a last run validates the chain on every
//! handshake, for the cost of a host seen for the first time.

#[allow(dead_code)]
#[path = "../tests/support/dns.rs"]
mod dns;
#[allow(dead_code)]
#[path = "../tests/support/http.rs"]
mod http;
#[allow(dead_code)]
#[path = "../tests/support/tls.rs"]
mod tls;

mod support;

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vantage::probe::{Monitor, MonitorSpec, Prober};
use vantage::ProbeStatus;

/// The allocator of the `vantage` binary (src/main.rs), so the figures are its own.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NAME: &str = "bench.vantage.test";
const SERVER_ENV: &str = "VANTAGE_PROBE_COST_SERVER";

fn main() {
    if std::env::var_os(SERVER_ENV).is_some() {
        return serve();
    }
    // `cargo bench` passes `--bench`; numbers are positional.
    let nums: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sequential = nums.first().copied().unwrap_or(3000);
    let seconds = nums.get(1).copied().unwrap_or(5);
    let concurrency = nums.get(2).copied().unwrap_or(64) as usize;

    let mut server = Command::new(std::env::current_exe().unwrap())
        .env(SERVER_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the server process");
    let mut vars = std::collections::HashMap::new();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    while let Some(Ok(line)) = lines.next() {
        if let Some((k, v)) = line.split_once('=') {
            vars.insert(k.to_string(), v.to_string());
        }
        if line.starts_with("NAME=") {
            break;
        }
    }
    let port = &vars["HTTPS_PORT"];
    let dns_addr = vars["DNS_ADDR"].parse().unwrap();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let builder = || {
            Prober::builder()
                .ca_file(&vars["CA_FILE"])
                .dns_servers(vec![dns_addr])
        };
        let prober = Arc::new(builder().build().unwrap());
        let by_ip = Arc::new(monitor(&format!("https://127.0.0.1:{port}/")));
        let by_name = Arc::new(monitor(&format!("https://{NAME}:{port}/")));

        let first = prober.probe(&by_ip).await;
        assert_eq!(first.status, ProbeStatus::Up, "{first:?}");
        println!(
            "target: {} {} over loopback, ECDSA P-256 leaf signed by a P-256 CA, verification on",
            first.http_version.as_deref().unwrap_or("?"),
            first.tls_version.as_deref().unwrap_or("?")
        );
        println!(
            "machine: {} vCPU; client: tokio multi-thread (2 workers), mimalloc; server: separate process on the same cores\n",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
        );
        // Warm-up: allocator, page faults, lazy statics.
        run(&prober, &by_ip, 200, 1, None, &server).await;

        let m = run(&prober, &by_ip, sequential, 1, None, &server).await;
        m.print(&format!("sequential, by IP, {sequential} probes"));
        let m_name = run(&prober, &by_name, sequential / 3, 1, None, &server).await;
        m_name.print(&format!("sequential, by name (+DNS lookup), {} probes", sequential / 3));
        let verify_us = p256_verify_us();
        println!(
            "reference: one P-256 ECDSA verification (aws-lc, one thread) takes {verify_us:.1} us on this machine now"
        );
        let saturate = |prober| {
            run(
                prober,
                &by_ip,
                u64::MAX,
                concurrency,
                Some(Duration::from_secs(seconds)),
                &server,
            )
        };
        let sat = saturate(&prober).await;
        sat.print(&format!("saturation, by IP, {concurrency} concurrent, {seconds} s"));
        let cold = saturate(&Arc::new(
            builder().verified_chain_capacity(0).build().unwrap(),
        ))
        .await;
        cold.print(&format!(
            "saturation, chain validated on every handshake (verified_chain_capacity 0), {concurrency} concurrent, {seconds} s"
        ));

        // CPU per probe is read at saturation, where the client is never idle; one probe
        // at a time also pays for the process sleeping and waking at each of a probe's
        // round trips, which is the cost of being idle, not of probing.
        println!(
            "\ntargets: <= 250 us client CPU per HTTPS probe at saturation: {} ({:.0} us); >= 3000 probes/s: {} ({:.0}/s)",
            verdict(sat.client_cpu_us() <= 250.0),
            sat.client_cpu_us(),
            verdict(sat.rate() >= 3000.0),
            sat.rate()
        );
        println!(
            "client CPU per probe = {:.2} P-256 verifications (machine-independent-ish: the host's load moves both)",
            sat.client_cpu_us() / verify_us
        );
    });
    let _ = server.stdin.take().map(|mut s| s.write_all(b"q"));
    let _ = server.kill();
    let _ = server.wait();
}

/// CPU time of one P-256 ECDSA signature verification, the largest single cost of a
/// probe's handshake: a yardstick for how fast this (shared, virtual) machine is while
/// the bench runs.
fn p256_verify_us() -> f64 {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey};
    let rng = SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref())
        .unwrap();
    let message = b"vantage probe cost reference";
    let sig = key.sign(&rng, message).unwrap();
    let public = UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, key.public_key());
    const ROUNDS: u32 = 2000;
    let cpu0 = self_cpu();
    for _ in 0..ROUNDS {
        public.verify(message, sig.as_ref()).unwrap();
    }
    (self_cpu() - cpu0).as_secs_f64() * 1e6 / f64::from(ROUNDS)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

fn monitor(url: &str) -> Monitor {
    Monitor::new(MonitorSpec {
        url: url.into(),
        timeout: Duration::from_secs(10),
        ip_family: "ipv4".into(),
        ..MonitorSpec::default()
    })
    .unwrap()
}

struct Measured {
    probes: u64,
    failed: u64,
    wall: Duration,
    client_cpu: Duration,
    server_cpu: Duration,
    sum_tls_ms: f64,
    sum_total_ms: f64,
}

impl Measured {
    fn client_cpu_us(&self) -> f64 {
        self.client_cpu.as_secs_f64() * 1e6 / self.probes as f64
    }
    fn rate(&self) -> f64 {
        self.probes as f64 / self.wall.as_secs_f64()
    }
    fn print(&self, what: &str) {
        println!("{what}:");
        println!(
            "  probes {} (not up: {}), wall {:.2} s, {:.0} probes/s",
            self.probes,
            self.failed,
            self.wall.as_secs_f64(),
            self.rate()
        );
        println!(
            "  CPU per probe: client {:.0} us (getrusage), server {:.0} us (/proc, 10 ms ticks)",
            self.client_cpu_us(),
            self.server_cpu.as_secs_f64() * 1e6 / self.probes as f64
        );
        println!(
            "  mean tls_ms {:.3}, mean total_ms {:.3}",
            self.sum_tls_ms / self.probes as f64,
            self.sum_total_ms / self.probes as f64
        );
    }
}

async fn run(
    prober: &Arc<Prober>,
    monitor: &Arc<Monitor>,
    count: u64,
    concurrency: usize,
    duration: Option<Duration>,
    server: &Child,
) -> Measured {
    let issued = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let tls_us = Arc::new(AtomicU64::new(0));
    let total_us = Arc::new(AtomicU64::new(0));
    let stop_at = duration.map(|d| Instant::now() + d);
    let (client0, server0, wall0) = (
        self_cpu(),
        support::cpu_time(server.id(), None),
        Instant::now(),
    );
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (prober, monitor) = (prober.clone(), monitor.clone());
            let (issued, failed, done) = (issued.clone(), failed.clone(), done.clone());
            let (tls_us, total_us) = (tls_us.clone(), total_us.clone());
            tokio::spawn(async move {
                while issued.fetch_add(1, Ordering::Relaxed) < count
                    && stop_at.is_none_or(|t| Instant::now() < t)
                {
                    let report = prober.probe(&monitor).await;
                    if report.status != ProbeStatus::Up {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    tls_us.fetch_add(
                        (report.tls_ms.unwrap_or(0.0) * 1000.0) as u64,
                        Ordering::Relaxed,
                    );
                    total_us.fetch_add((report.total_ms * 1000.0) as u64, Ordering::Relaxed);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let wall = wall0.elapsed();
    Measured {
        probes: done.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        wall,
        client_cpu: self_cpu() - client0,
        server_cpu: support::cpu_time(server.id(), None).saturating_sub(server0),
        sum_tls_ms: tls_us.load(Ordering::Relaxed) as f64 / 1000.0,
        sum_total_ms: total_us.load(Ordering::Relaxed) as f64 / 1000.0,
    }
}

/// User + system CPU time of this process.
fn self_cpu() -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// The server process: HTTPS target + DNS responder until stdin closes.
fn serve() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dns = dns::DnsServer::builder()
            .a(NAME, &[std::net::Ipv4Addr::LOCALHOST])
            .start()
            .await;
        let ca = tls::TestCa::new();
        let ca_path =
            std::env::temp_dir().join(format!("vantage-probe-cost-{}.pem", std::process::id()));
        std::fs::write(&ca_path, &ca.cert_pem).unwrap();
        let identity = ca.leaf(&[NAME, "127.0.0.1"]);
        let https =
            http::TestServer::https(tls::server_config(&identity, &[b"h2", b"http/1.1"])).await;
        println!("HTTPS_PORT={}", https.port());
        println!("DNS_ADDR={}", dns.addr);
        println!("CA_FILE={}", ca_path.display());
        println!("NAME={NAME}");
        std::io::stdout().flush().unwrap();
        // Serve until the parent closes our stdin (or kills us).
        let _ = tokio::task::spawn_blocking(|| {
            let mut buf = [0u8; 1];
            let _ = std::io::Read::read(&mut std::io::stdin(), &mut buf);
        })
        .await;
        let _ = std::fs::remove_file(&ca_path);
    });
}
