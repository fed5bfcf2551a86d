//! The wire-accuracy scene of issue #14, shared by `tests/wire_timings.rs` and
//! `benches/wire_accuracy.rs`: probes whose stored phases are compared, probe by probe,
//! with the packets on the prober's own interface.
//!
//! Two network namespaces, "client" and "server", each with a TUN interface; a
//! user-space delay line (threads in this process) carries every IP packet from one
//! TUN to the other after [`ONE_WAY_DELAY`], so the link has a real round-trip time of
//! twice that. (The kernels we run on have no `sch_netem`, and a delay queued in the
//! client's own egress qdisc would sit *before* the capture point and move the "sent"
//! instants.) The server namespace runs the test DNS responder on port 53 (`wire.test`
//! → the server), plain HTTP/1.1 on port 80 and HTTPS (HTTP/1.1 only, no TLS 1.3
//! session tickets: see [`wire_phases`]) on port 443, all from `support::{dns, http,
//! tls}`. `tcpdump` captures the client TUN; the capture is the reference.
//!
//! Probing happens on threads that entered the client namespace (`setns`), through a
//! multi-threaded tokio runtime whose workers all live there, as in `vantage run`; curl
//! runs there too (`ip netns exec`, with `/etc/netns/<name>/resolv.conf` pointing at the
//! responder) so the report can say where curl itself differs from the wire.
//!
//! Needs root, `ip`, `tcpdump` and `/dev/net/tun`; [`skip_reason`] says what is missing.
//! Everything is removed on drop (namespaces, the resolv.conf, the capture file,
//! threads, CPU hogs).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::dns::DnsServer;
use super::http::TestServer;
use super::tls::{server_config, TestCa};

/// Each direction of the link; the round-trip time is twice this.
pub const ONE_WAY_DELAY: Duration = Duration::from_millis(10);
/// The name the responder answers, with the server's address.
pub const HOST: &str = "wire.test";

/// Why this run cannot build the scene; `None`: it can.
pub fn skip_reason() -> Option<String> {
    if std::env::var("VANTAGE_SKIP_NETNS").as_deref() == Ok("1") {
        return Some("VANTAGE_SKIP_NETNS=1".into());
    }
    // SAFETY: geteuid(2) has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid != 0 {
        return Some(format!("network namespaces need root (euid {uid})"));
    }
    for (tool, arg) in [("ip", "-V"), ("tcpdump", "--version")] {
        let found = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("`{tool}` is not installed (.ci/run installs it)"));
        }
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing".into());
    }
    None
}

/// The two namespaces, the delay line between them and the servers.
pub struct Lab {
    pub client_ns: String,
    pub client_if: String,
    pub client_ip: Ipv4Addr,
    pub server_ip: Ipv4Addr,
    /// The CA that signed the HTTPS server's certificate (for `wire.test`).
    pub ca: TestCa,
    pub ca_file: tempfile::NamedTempFile,
    server_ns: String,
    resolv_dir: PathBuf,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    servers: Option<(tokio::sync::oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Lab {
    pub fn start() -> Lab {
        let pid = std::process::id();
        let subnet = (pid % 256) as u8;
        let client_ns = format!("vantage-wc{pid}");
        let server_ns = format!("vantage-ws{pid}");
        let client_ip = Ipv4Addr::new(10, 214, subnet, 1);
        let server_ip = Ipv4Addr::new(10, 214, subnet, 2);
        let ca = TestCa::new();
        let ca_file = ca.pem_file();
        let mut lab = Lab {
            client_if: format!("wc{pid}"),
            client_ns,
            client_ip,
            server_ip,
            ca,
            ca_file,
            server_ns,
            resolv_dir: PathBuf::new(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            servers: None,
        };
        lab.resolv_dir = PathBuf::from(format!("/etc/netns/{}", lab.client_ns));
        // Leftovers of a killed earlier run with the same pid.
        lab.delete_namespaces();
        ip(&["netns", "add", &lab.client_ns]);
        ip(&["netns", "add", &lab.server_ns]);
        let client_tun = Arc::new(open_tun(
            &lab.client_ns,
            &lab.client_if,
            client_ip,
            server_ip,
        ));
        let server_tun = Arc::new(open_tun(
            &lab.server_ns,
            &format!("ws{pid}"),
            server_ip,
            client_ip,
        ));
        for (from, to) in [
            (client_tun.clone(), server_tun.clone()),
            (server_tun, client_tun),
        ] {
            lab.threads
                .extend(delay_line(from, to, ONE_WAY_DELAY, lab.stop.clone()));
        }
        // `ip netns exec` bind-mounts this over /etc/resolv.conf (curl's resolver).
        std::fs::create_dir_all(&lab.resolv_dir).expect("create /etc/netns/<name>");
        std::fs::write(
            lab.resolv_dir.join("resolv.conf"),
            format!("nameserver {server_ip}\n"),
        )
        .expect("write the namespace's resolv.conf");
        lab.servers = Some(start_servers(&lab.server_ns, server_ip, &lab.ca));
        lab
    }

    /// The DNS server the prober must use (the responder in the server namespace).
    pub fn dns_server(&self) -> SocketAddr {
        SocketAddr::from((self.server_ip, 53))
    }

    pub fn http_url(&self) -> String {
        format!("http://{HOST}/")
    }

    pub fn https_url(&self) -> String {
        format!("https://{HOST}/")
    }

    /// Runs `f` on a fresh thread inside the client namespace, with a multi-threaded
    /// tokio runtime whose workers (and blocking threads) are in that namespace too.
    pub fn in_client<T: Send + 'static>(
        &self,
        f: impl FnOnce(&tokio::runtime::Runtime) -> T + Send + 'static,
    ) -> T {
        let ns = self.client_ns.clone();
        std::thread::spawn(move || {
            enter_netns(&ns);
            let for_workers = ns.clone();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .on_thread_start(move || enter_netns(&for_workers))
                .build()
                .expect("a runtime in the client namespace");
            f(&runtime)
        })
        .join()
        .expect("the client thread")
    }

    /// Starts `tcpdump` on the client interface; returns once it is capturing.
    /// `--immediate-mode`: without it packets wait in the capture ring for a block
    /// timeout, and those of the last probes were lost when the capture stopped.
    pub fn capture(&self) -> Capture {
        let file = tempfile::Builder::new()
            .suffix(".pcap")
            .tempfile()
            .expect("a capture file");
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.client_ns,
                "tcpdump",
                "-n",
                "-U",
                "--immediate-mode",
                "-i",
            ])
            .arg(&self.client_if)
            .arg("-w")
            .arg(file.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tcpdump");
        let mut stderr = BufReader::new(child.stderr.take().expect("piped"));
        let mut line = String::new();
        while !line.contains("listening on") {
            line.clear();
            let n = stderr.read_line(&mut line).expect("tcpdump's stderr");
            assert!(n > 0, "tcpdump exited before capturing");
        }
        Capture {
            child,
            file,
            _stderr: stderr,
        }
    }

    /// `curl` run from the client namespace, `-w` timers as JSON (cumulative seconds).
    pub fn curl(&self, url: &str) -> Phases {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.client_ns, "curl", "-s", "-o", "/dev/null"])
            .arg("--cacert")
            .arg(self.ca_file.path())
            .args([
                "-w",
                "%{time_namelookup} %{time_connect} %{time_appconnect} %{time_pretransfer} %{time_starttransfer}",
                url,
            ])
            .output()
            .expect("run curl");
        assert!(output.status.success(), "curl {url}: {output:?}");
        let text = String::from_utf8_lossy(&output.stdout);
        let t: Vec<f64> = text
            .split_whitespace()
            .map(|v| v.parse::<f64>().expect("a curl timer") * 1000.0)
            .collect();
        let [namelookup, connect, appconnect, pretransfer, starttransfer] = t[..] else {
            panic!("curl printed {text:?}");
        };
        Phases {
            dns: Some(namelookup),
            connect: Some(connect - namelookup),
            tls: (appconnect > 0.0).then_some(appconnect - connect),
            ttfb: Some(starttransfer - pretransfer),
        }
    }

    /// `vantage check --json` in a fresh process in the client namespace (DNS from the
    /// namespace's resolv.conf, as a deployment reads it).
    pub fn check(&self, url: &str) -> Phases {
        let output = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.client_ns,
                env!("CARGO_BIN_EXE_vantage"),
            ])
            .args(["check", "--json", "--ca-file"])
            .arg(self.ca_file.path())
            .arg(url)
            .env_remove("VANTAGE_DNS_SERVERS")
            .output()
            .expect("run vantage check");
        assert!(output.status.success(), "vantage check {url}: {output:?}");
        let report: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("vantage check's JSON");
        let ms = |key: &str| report[key].as_f64();
        Phases {
            dns: ms("dns_ms"),
            connect: ms("connect_ms"),
            tls: ms("tls_ms"),
            ttfb: ms("ttfb_ms"),
        }
    }

    fn delete_namespaces(&self) {
        for ns in [&self.client_ns, &self.server_ns] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.resolv_dir);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.servers.take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        self.delete_namespaces();
    }
}

/// The measured phases of one probe (ms); `None`: the phase did not happen.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phases {
    pub dns: Option<f64>,
    pub connect: Option<f64>,
    pub tls: Option<f64>,
    pub ttfb: Option<f64>,
}

impl Phases {
    pub const NAMES: [&'static str; 4] = ["dns", "connect", "tls", "ttfb"];

    pub fn get(&self, name: &str) -> Option<f64> {
        match name {
            "dns" => self.dns,
            "connect" => self.connect,
            "tls" => self.tls,
            "ttfb" => self.ttfb,
            _ => unreachable!("no phase {name}"),
        }
    }
}

/// A running `tcpdump`; [`Capture::finish`] stops it and reads the packets.
pub struct Capture {
    child: Child,
    file: tempfile::NamedTempFile,
    _stderr: BufReader<std::process::ChildStderr>,
}

impl Capture {
    /// Stops the capture (SIGINT: tcpdump writes what it holds) and parses it.
    pub fn finish(mut self, client_ip: Ipv4Addr) -> Vec<Packet> {
        // Packets still on their way into the capture file.
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let status = self.child.wait().expect("wait for tcpdump");
        assert!(
            status.success() || status.code().is_none(),
            "tcpdump: {status}"
        );
        let mut bytes = Vec::new();
        File::open(self.file.path())
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .expect("read the capture");
        parse_pcap(&bytes, client_ip)
    }
}

/// One captured IPv4 packet, as far as the phases need it.
#[derive(Debug, Clone, Copy)]
pub struct Packet {
    /// Capture time, seconds since the Unix epoch (CLOCK_REALTIME, µs resolution).
    pub at: f64,
    /// Sent by the client (the prober); otherwise received by it.
    pub out: bool,
    pub udp: bool,
    /// The client's port (source when `out`, destination otherwise).
    pub client_port: u16,
    pub syn: bool,
    pub ack: bool,
    pub payload: usize,
}

/// Reads a classic pcap file (what `tcpdump -w` writes; a TUN captures as raw IP).
pub fn parse_pcap(bytes: &[u8], client_ip: Ipv4Addr) -> Vec<Packet> {
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    assert!(bytes.len() >= 24, "no pcap header");
    let magic = u32_at(bytes, 0);
    let nanos = match magic {
        0xa1b2_c3d4 => false,
        0xa1b2_3c4d => true,
        other => panic!("pcap magic {other:#x}: not a little-endian classic pcap"),
    };
    let link = u32_at(bytes, 20);
    let link_header = match link {
        101 | 12 | 228 => 0, // raw IP (a TUN)
        1 => 14,             // Ethernet
        113 => 16,           // Linux cooked
        other => panic!("pcap link type {other} not handled"),
    };
    let mut packets = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let secs = u32_at(bytes, at) as f64;
        let frac = u32_at(bytes, at + 4) as f64;
        let caplen = u32_at(bytes, at + 8) as usize;
        let data = &bytes[at + 16..(at + 16 + caplen).min(bytes.len())];
        at += 16 + caplen;
        let time = secs + frac / if nanos { 1e9 } else { 1e6 };
        if let Some(packet) = parse_ipv4(data.get(link_header..).unwrap_or(&[]), time, client_ip) {
            packets.push(packet);
        }
    }
    packets
}

fn parse_ipv4(ip: &[u8], at: f64, client_ip: Ipv4Addr) -> Option<Packet> {
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return None;
    }
    let ihl = (ip[0] & 0x0f) as usize * 4;
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let out = src == client_ip;
    let l4 = ip.get(ihl..total.min(ip.len()))?;
    let port = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
    match ip[9] {
        17 if l4.len() >= 8 => Some(Packet {
            at,
            out,
            udp: true,
            client_port: if out { port(0) } else { port(2) },
            syn: false,
            ack: false,
            payload: l4.len() - 8,
        }),
        6 if l4.len() >= 20 => {
            let header = (l4[12] >> 4) as usize * 4;
            let flags = l4[13];
            Some(Packet {
                at,
                out,
                udp: false,
                client_port: if out { port(0) } else { port(2) },
                syn: flags & 0x02 != 0,
                ack: flags & 0x10 != 0,
                payload: (total - ihl).saturating_sub(header),
            })
        }
        _ => None,
    }
}

/// The phases of one probe as the wire shows them, from the packets captured while it
/// ran (ms):
/// - dns: the first query leaving → the last answer arriving (A and AAAA are asked
///   in parallel);
/// - connect: the SYN leaving → the SYN/ACK arriving;
/// - tls: the ClientHello (the client's first data segment) leaving → the last server
///   data segment arriving before the client's next data segment (its Finished). The
///   server sends no TLS 1.3 session tickets, which would otherwise arrive after the
///   client's Finished and could be taken for the response;
/// - ttfb: the request's last data segment leaving → the first response data segment
///   arriving (for https: the client data from its Finished on; a client may send the
///   request in the Finished's segment, as browsers and vantage do).
pub fn wire_phases(packets: &[Packet], https: bool) -> Phases {
    let ms = |a: f64, b: f64| (b - a) * 1000.0;
    let queries: Vec<&Packet> = packets.iter().filter(|p| p.udp && p.out).collect();
    let answers: Vec<&Packet> = packets.iter().filter(|p| p.udp && !p.out).collect();
    let dns = match (queries.first(), answers.last()) {
        (Some(q), Some(a)) => Some(ms(q.at, a.at)),
        _ => None,
    };
    let Some(syn) = packets.iter().find(|p| !p.udp && p.out && p.syn && !p.ack) else {
        return Phases {
            dns,
            ..Phases::default()
        };
    };
    let conn: Vec<&Packet> = packets
        .iter()
        .filter(|p| !p.udp && p.client_port == syn.client_port)
        .collect();
    let connect = conn
        .iter()
        .find(|p| !p.out && p.syn && p.ack)
        .map(|synack| ms(syn.at, synack.at));
    let data: Vec<&&Packet> = conn.iter().filter(|p| p.payload > 0).collect();
    // Index of the first data segment in direction `out` at or after `from`.
    let next = |from: usize, out: bool| (from..data.len()).find(|&i| data[i].out == out);
    let mut tls = None;
    let mut request_from = 0;
    if https {
        let Some(hello) = next(0, true) else {
            return Phases {
                dns,
                connect,
                ..Phases::default()
            };
        };
        let Some(finished) = next(hello + 1, true) else {
            return Phases {
                dns,
                connect,
                ..Phases::default()
            };
        };
        let last_server = (hello + 1..finished).rev().find(|&i| !data[i].out);
        tls = last_server.map(|i| ms(data[hello].at, data[i].at));
        request_from = finished;
    }
    let response = next(request_from, false);
    let ttfb = response.and_then(|r| {
        let last_request = (request_from..r).rev().find(|&i| data[i].out)?;
        Some(ms(data[last_request].at, data[r].at))
    });
    Phases {
        dns,
        connect,
        tls,
        ttfb,
    }
}

/// `stored` and `wire` phases of each probe, by target and tool.
#[derive(Debug, Default)]
pub struct Results {
    pub vantage_http: Vec<(Phases, Phases)>,
    pub vantage_https: Vec<(Phases, Phases)>,
    /// The `dns` kind (`dns://HOST?type=A`): a query and nothing else.
    pub vantage_dns_kind: Vec<(Phases, Phases)>,
    /// The `tcp` kind sending an HTTP/1.1 request by hand to the HTTP server and
    /// expecting its status line.
    pub vantage_tcp_kind: Vec<(Phases, Phases)>,
    /// `vantage check`, a fresh process per probe.
    pub check_http: Vec<(Phases, Phases)>,
    pub check_https: Vec<(Phases, Phases)>,
    pub curl_http: Vec<(Phases, Phases)>,
    pub curl_https: Vec<(Phases, Phases)>,
}

impl Results {
    /// The table of `stored − wire` (markdown), `label` naming the run.
    pub fn table(&self, label: &str) -> String {
        let mut out = String::new();
        for (what, pairs) in [
            ("vantage http", &self.vantage_http),
            ("vantage https", &self.vantage_https),
            ("vantage dns kind", &self.vantage_dns_kind),
            ("vantage tcp kind", &self.vantage_tcp_kind),
            ("vantage check http", &self.check_http),
            ("vantage check https", &self.check_https),
            ("curl http", &self.curl_http),
            ("curl https", &self.curl_https),
        ] {
            out.push_str(&table_rows(&format!("{label}, {what}"), pairs));
        }
        out
    }
}

/// Probes the lab's HTTP and HTTPS targets `runs` times each with a vantage `Prober`
/// (in the client namespace, one unmeasured warm-up per target first), then as many
/// times with `vantage check` (fresh processes, no warm-up: first-use costs must stay
/// outside the phases) and with curl, alternating targets, and pairs every probe with
/// its wire phases.
pub fn measure(lab: &Lab, runs: usize) -> Results {
    let capture = lab.capture();
    let (dns, ca) = (lab.dns_server(), lab.ca.cert_der.clone());
    let urls = [lab.http_url(), lab.https_url()];
    let (probes, dns_kind, tcp_kind): (Vec<Timed>, Vec<Timed>, Vec<Timed>) =
        lab.in_client(move |runtime| {
            runtime.block_on(async move {
                let prober = vantage::probe::Prober::builder()
                    .dns_servers(vec![dns])
                    .extra_roots(vec![ca])
                    .build()
                    .expect("a prober");
                let monitors: Vec<_> = urls
                    .iter()
                    .map(|url| {
                        vantage::probe::Monitor::new(vantage::probe::MonitorSpec {
                            url: url.clone(),
                            timeout: Duration::from_secs(5),
                            ..Default::default()
                        })
                        .expect("a valid monitor")
                    })
                    .collect();
                let dns_monitor = vantage::probe::Monitor::new(vantage::probe::MonitorSpec {
                    kind: vantage::probe::Kind::Dns,
                    url: format!("dns://{HOST}?type=A"),
                    timeout: Duration::from_secs(5),
                    ..Default::default()
                })
                .expect("a valid dns monitor");
                // An HTTP/1.1 request sent by hand: the tcp kind's reply phases on the wire.
                let request =
                    format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
                let tcp_monitor = vantage::probe::Monitor::new(vantage::probe::MonitorSpec {
                    kind: vantage::probe::Kind::Tcp,
                    url: format!("tcp://{HOST}:80"),
                    settings: serde_json::json!({ "send": request, "expect": "HTTP/1.1 200" }),
                    timeout: Duration::from_secs(5),
                    ..Default::default()
                })
                .expect("a valid tcp monitor");
                for monitor in monitors.iter().chain([&dns_monitor, &tcp_monitor]) {
                    prober.probe(monitor).await;
                }
                let mut out = Vec::new();
                let mut dns_out = Vec::new();
                let mut tcp_out = Vec::new();
                for _ in 0..runs {
                    dns_out.push(timed_probe(&prober, &dns_monitor, false, "dns kind").await);
                    tcp_out.push(timed_probe(&prober, &tcp_monitor, false, "tcp kind").await);
                    for (i, monitor) in monitors.iter().enumerate() {
                        out.push(timed_probe(&prober, monitor, i == 1, &urls[i]).await);
                    }
                }
                (out, dns_out, tcp_out)
            })
        });
    let external = |tool: &dyn Fn(&str) -> Phases| {
        let mut timed: Vec<Timed> = Vec::new();
        for _ in 0..runs {
            for (https, url) in [(false, lab.http_url()), (true, lab.https_url())] {
                let from = unix_now();
                let phases = tool(&url);
                timed.push((https, from, unix_now(), phases));
                std::thread::sleep(Duration::from_millis(30));
            }
        }
        timed
    };
    let checks = external(&|url| lab.check(url));
    let curls = external(&|url| lab.curl(url));
    let packets = capture.finish(lab.client_ip);
    let pair = |timed: &[Timed], https: bool| -> Vec<(Phases, Phases)> {
        timed
            .iter()
            .filter(|t| t.0 == https)
            .map(|&(https, from, to, stored)| {
                (stored, wire_phases(&window(&packets, from, to), https))
            })
            .collect()
    };
    Results {
        vantage_http: pair(&probes, false),
        vantage_https: pair(&probes, true),
        vantage_dns_kind: pair(&dns_kind, false),
        vantage_tcp_kind: pair(&tcp_kind, false),
        check_http: pair(&checks, false),
        check_https: pair(&checks, true),
        curl_http: pair(&curls, false),
        curl_https: pair(&curls, true),
    }
}

/// The packets captured between `from` and `to` (Unix seconds).
pub fn window(packets: &[Packet], from: f64, to: f64) -> Vec<Packet> {
    packets
        .iter()
        .filter(|p| p.at >= from && p.at <= to)
        .copied()
        .collect()
}

/// One probe as measured: HTTPS or not, the wall clock before and after it (Unix
/// seconds, to find its packets), and the phases it reported.
type Timed = (bool, f64, f64, Phases);

/// One probe by the in-process `Prober`, which must come back up, with the wall clock
/// around it (to find its packets) and the phases it stored.
async fn timed_probe(
    prober: &vantage::probe::Prober,
    monitor: &vantage::probe::Monitor,
    https: bool,
    what: &str,
) -> Timed {
    let from = unix_now();
    let report = prober.probe(monitor).await;
    let to = unix_now();
    assert_eq!(
        report.status,
        vantage::ProbeStatus::Up,
        "probe of {what}: {:?}",
        report.error_message
    );
    let stored = Phases {
        dns: report.dns_ms,
        connect: report.connect_ms,
        tls: report.tls_ms,
        ttfb: report.ttfb_ms,
    };
    // Let the connection's closing packets pass before the next window.
    tokio::time::sleep(Duration::from_millis(30)).await;
    (https, from, to, stored)
}

/// Now, in Unix seconds (the capture's clock).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// Busy loops on every core but one (separate processes, as a neighbour would be);
/// killed on drop.
pub struct CpuHogs(Vec<Child>);

impl CpuHogs {
    pub fn start() -> CpuHogs {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        CpuHogs(
            (0..cores.saturating_sub(1).max(1))
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .expect("start a CPU hog")
                })
                .collect(),
        )
    }

    pub fn count(&self) -> usize {
        self.0.len()
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        for hog in &mut self.0 {
            let _ = hog.kill();
            let _ = hog.wait();
        }
    }
}

/// `stored − wire` of one phase over many probes.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub n: usize,
    pub median: f64,
    pub p90: f64,
    pub p10: f64,
}

impl Spread {
    pub fn of(mut diffs: Vec<f64>) -> Option<Spread> {
        if diffs.is_empty() {
            return None;
        }
        diffs.sort_by(f64::total_cmp);
        let at = |q: f64| diffs[((diffs.len() - 1) as f64 * q).round() as usize];
        Some(Spread {
            n: diffs.len(),
            median: at(0.5),
            p90: at(0.9),
            p10: at(0.1),
        })
    }
}

/// Per phase, the spread of `stored − wire` over `pairs`.
pub fn spreads(pairs: &[(Phases, Phases)]) -> Vec<(&'static str, Option<Spread>)> {
    Phases::NAMES
        .iter()
        .map(|&name| {
            let diffs = pairs
                .iter()
                .filter_map(|(stored, wire)| Some(stored.get(name)? - wire.get(name)?))
                .collect();
            (name, Spread::of(diffs))
        })
        .collect()
}

/// One table row per phase: "| what | phase | n | median | p10 | p90 |".
pub fn table_rows(what: &str, pairs: &[(Phases, Phases)]) -> String {
    let mut out = String::new();
    for (name, spread) in spreads(pairs) {
        if let Some(s) = spread {
            out.push_str(&format!(
                "| {what} | {name} | {} | {:+.3} | {:+.3} | {:+.3} |\n",
                s.n, s.median, s.p10, s.p90
            ));
        }
    }
    out
}

pub const TABLE_HEAD: &str =
    "| run | phase | n | median ms | p10 ms | p90 ms |\n|---|---|---:|---:|---:|---:|\n";

/// Moves the calling thread into the named network namespace.
pub fn enter_netns(name: &str) {
    let file = File::open(format!("/var/run/netns/{name}"))
        .unwrap_or_else(|err| panic!("open network namespace {name}: {err}"));
    // SAFETY: setns(2) with a valid namespace fd; CLONE_NEWNET only changes this
    // thread's network namespace, which is what we want.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {name}: {}", std::io::Error::last_os_error());
}

/// Creates TUN `name` inside namespace `ns` (from a thread that entered it), addressed
/// `local` peer `peer`, up.
fn open_tun(ns: &str, name: &str, local: Ipv4Addr, peer: Ipv4Addr) -> File {
    let (ns_owned, name_owned) = (ns.to_string(), name.to_string());
    let tun = std::thread::spawn(move || {
        enter_netns(&ns_owned);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .expect("open /dev/net/tun");
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (slot, byte) in req.ifr_name.iter_mut().zip(name_owned.bytes()) {
            *slot = byte as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads an ifreq we own and that outlives the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
        file
    })
    .join()
    .expect("the TUN thread");
    let in_ns = |args: &[&str]| ip(&[&["-n", ns], args].concat());
    in_ns(&[
        "addr",
        "add",
        &local.to_string(),
        "peer",
        &format!("{peer}/32"),
        "dev",
        name,
    ]);
    in_ns(&["link", "set", name, "up"]);
    in_ns(&["link", "set", "lo", "up"]);
    tun
}

/// Carries packets read from `from` to `to`, each `delay` after it was read: a reader
/// thread stamps and queues, a writer thread sleeps until each packet is due.
fn delay_line(
    from: Arc<File>,
    to: Arc<File>,
    delay: Duration,
    stop: Arc<AtomicBool>,
) -> [JoinHandle<()>; 2] {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let reader_stop = stop.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while !reader_stop.load(Ordering::SeqCst) {
            let mut poll = libc::pollfd {
                fd: from.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call. The timeout lets
            // the thread notice `stop`.
            let ready = unsafe { libc::poll(&mut poll, 1, 50) };
            if ready <= 0 {
                continue;
            }
            match (&*from).read(&mut buf) {
                Ok(n) if n > 0 => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
                _ => return,
            }
        }
    });
    let writer = std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let Ok((due, packet)) = rx.recv_timeout(Duration::from_millis(50)) else {
                continue;
            };
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            // A packet the other side cannot take is a lost packet, as on a real link.
            let _ = (&*to).write(&packet);
        }
    });
    [reader, writer]
}

/// Starts the DNS responder, HTTP and HTTPS servers on a thread inside `ns`; they run
/// until the returned sender fires.
fn start_servers(
    ns: &str,
    ip: Ipv4Addr,
    ca: &TestCa,
) -> (tokio::sync::oneshot::Sender<()>, JoinHandle<()>) {
    let identity = ca.leaf(&[HOST]);
    let mut config = (*server_config(&identity, &[b"http/1.1"])).clone();
    // Tickets arrive after the client's Finished and would blur where the response
    // starts on the wire; probes never resume anyway.
    config.send_tls13_tickets = 0;
    let config = Arc::new(config);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let ns = ns.to_string();
    let thread = std::thread::spawn(move || {
        enter_netns(&ns);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("the servers' runtime");
        runtime.block_on(async move {
            let _dns: DnsServer = DnsServer::builder()
                .a(HOST, &[ip])
                .start_at(SocketAddr::from((ip, 53)))
                .await;
            let _http = TestServer::http_at(SocketAddr::from((ip, 80))).await;
            let _https = TestServer::https_at(SocketAddr::from((ip, 443)), config).await;
            let _ = ready_tx.send(());
            let _ = stop_rx.await;
        });
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the servers started");
    (stop_tx, thread)
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
