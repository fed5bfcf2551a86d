//! Scheduler benchmark (issue #4): 10,000 monitors on a 10 s interval, each slot a real
//! HTTP probe over a fresh connection to a local server running in a separate process.
//! Prints the schedule lag (p50/p99/max), slots skipped, CPU % and peak RSS of this
//! process (scheduler + probes; the target's CPU is not counted).
//!
//!     cargo run --release --example scheduler_lag -- [monitors] [interval_s] [seconds]
//!
//! Defaults: 10000 monitors, 10 s, 60 s (six rounds). The first round is reported too:
//! monitors start at their next slot, so it is as loaded as any other.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vantage::probe::{Monitor, MonitorSpec, Prober};
use vantage::schedule::{Cadence, Fire, ScheduleEntry, Scheduler};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve") {
        return serve();
    }
    let arg = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (monitors, interval_s, seconds) = (arg(1, 10_000), arg(2, 10), arg(3, 60));

    // The target in its own process, so its CPU is not ours.
    let mut target = Command::new(std::env::current_exe()?)
        .arg("serve")
        .stdout(Stdio::piped())
        .spawn()?;
    let mut port = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(target.stdout.take().unwrap()),
        &mut port,
    )?;
    let url = format!("http://127.0.0.1:{}/ok", port.trim());

    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(run(monitors, interval_s, seconds, &url));
    let _ = target.kill();
    result
}

async fn run(monitors: u64, interval_s: u64, seconds: u64, url: &str) -> anyhow::Result<()> {
    let prober = Arc::new(Prober::from_env()?);
    let monitor = Arc::new(Monitor::new(MonitorSpec {
        method: "GET".into(),
        url: url.into(),
        timeout: Duration::from_secs(5),
        follow_redirects: false,
        max_redirects: 0,
        ..MonitorSpec::default()
    })?);
    let fires = Arc::new(Mutex::new(
        Vec::<(chrono::DateTime<Utc>, f64)>::with_capacity(
            (monitors * seconds / interval_s + monitors) as usize,
        ),
    ));
    let failures = Arc::new(AtomicU64::new(0));
    let tracker = TaskTracker::new();
    let scheduler = {
        let (prober, fires, failures) = (prober.clone(), fires.clone(), failures.clone());
        Scheduler::new(1024, tracker.clone(), move |fire: Fire<Monitor>| {
            let (prober, fires, failures) = (prober.clone(), fires.clone(), failures.clone());
            async move {
                fires
                    .lock()
                    .unwrap()
                    .push((fire.slot, fire.lag.as_secs_f64() * 1000.0));
                if !prober.probe(&fire.payload).await.success() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let handle = scheduler.handle();
    let cadence = Cadence::Every {
        seconds: interval_s as u32,
    };
    handle.replace_all(
        (1..=monitors as i32)
            .map(|monitor_id| ScheduleEntry {
                monitor_id,
                cadence: cadence.clone(),
                payload: monitor.clone(),
            })
            .collect(),
    );

    let cpu_before = cpu_seconds();
    let started_wall = Utc::now();
    let started = Instant::now();
    let stop = CancellationToken::new();
    let run = tokio::spawn(scheduler.run(stop.clone()));
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let stopped_wall = Utc::now();
    stop.cancel();
    run.await?;
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    tracker.close();
    tracker.wait().await;

    // Slots inside the window, computed from the same grid. The window ends 100 ms before
    // the stop, so a slot due in the instant of stopping is not counted as skipped.
    let window_end = stopped_wall - chrono::Duration::milliseconds(100);
    let expected: u64 = (1..=monitors as i32)
        .map(|id| {
            let mut count = 0;
            let mut slot = cadence.next_slot_after(id, started_wall).unwrap();
            while slot < window_end {
                count += 1;
                slot = cadence.next_slot_after(id, slot).unwrap();
            }
            count
        })
        .sum();
    let fires = fires.lock().unwrap().clone();
    let fired_in_window = fires.iter().filter(|(slot, _)| *slot < window_end).count();
    let mut lags: Vec<f64> = fires.iter().map(|(_, lag)| *lag).collect();
    lags.sort_by(f64::total_cmp);
    let pct = |p: f64| lags[((lags.len() as f64 * p) as usize).min(lags.len() - 1)];
    let stats = handle.stats();
    println!("scheduler_lag: {monitors} monitors every {interval_s} s for {seconds} s, each slot a fresh-connection HTTP GET to {url} (target in another process)");
    println!(
        "  slots fired {fired_in_window} of {expected} due in the window (skipped late {}, skipped saturated {}), probe failures {}",
        stats.skipped_late.load(Ordering::Relaxed),
        stats.skipped_saturated.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed)
    );
    println!(
        "  schedule lag ms: p50 {:.2}  p99 {:.2}  max {:.2}   (lag = dispatch time - slot, wall clock)",
        pct(0.50),
        pct(0.99),
        lags.last().copied().unwrap_or_default()
    );
    println!(
        "  CPU {:.1}% of one core ({cpu:.2} s user+sys over {wall:.1} s), peak RSS {:.1} MB",
        100.0 * cpu / wall,
        peak_rss_kb() as f64 / 1024.0
    );
    Ok(())
}

fn cpu_seconds() -> f64 {
    let usage = rusage();
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn peak_rss_kb() -> i64 {
    rusage().ru_maxrss
}

fn rusage() -> libc::rusage {
    // SAFETY: getrusage fills the struct it is given; zeroed is a valid rusage.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    }
}

/// The target: answers `ok` on every path. Prints its port on stdout once bound.
fn serve() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?.port());
        let app = axum::Router::new().fallback(|| async { "ok" });
        axum::serve(listener, app).await?;
        Ok(())
    })
}
