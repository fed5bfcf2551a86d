//! The wire-accuracy table of issue #14: `stored − wire` per phase (median, p10, p90),
//! idle and with a busy loop on every core but one, for vantage's `Prober` and, in the
//! same run against the same servers, for curl. The scene is `tests/support/wire.rs`
//! (the one `tests/wire_timings.rs` asserts on).
//!
//! `cargo bench --bench wire_accuracy [-- RUNS]` (default 30 probes per target and
//! run). Needs root, `ip`, `tcpdump`, `curl` and `/dev/net/tun`.

#[allow(dead_code)]
#[path = "../tests/support/dns.rs"]
mod dns;
#[allow(dead_code)]
#[path = "../tests/support/http.rs"]
mod http;
#[allow(dead_code)]
#[path = "../tests/support/tls.rs"]
mod tls;
#[allow(dead_code)]
#[path = "../tests/support/wire.rs"]
mod wire;

fn main() {
    if let Some(reason) = wire::skip_reason() {
        eprintln!("wire_accuracy cannot run: {reason}");
        std::process::exit(2);
    }
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(30);
    let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "machine: {} vCPU; load before: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load().trim()
    );
    let lab = wire::Lab::start();
    let idle = wire::measure(&lab, runs);
    let hogs = wire::CpuHogs::start();
    let busy = wire::measure(&lab, runs);
    let hog_count = hogs.count();
    drop(hogs);
    println!(
        "{runs} probes per target and run, RTT {} ms (user-space delay line), busy: {hog_count} busy loop(s); load after: {}",
        2 * wire::ONE_WAY_DELAY.as_millis(),
        load().trim()
    );
    print!(
        "{}{}{}",
        wire::TABLE_HEAD,
        idle.table("idle"),
        busy.table("busy")
    );
}
