//! Prometheus metrics of one `vantage run` instance, served as text on `/metrics`.
//!
//! One [`Metrics`] value per process holds every family; the parts of the program
//! report into it through small methods (a probe finished, leadership changed, the
//! writer flushed a batch, the configuration was reloaded) and the HTTP route renders
//! it with [`Metrics::render`]. Names follow Prometheus conventions: a `vantage_`
//! prefix, base units (seconds), `_total` on counters.
//!
//! Latency histograms cover successful probes only, like the rollups: a failed probe's
//! duration is the time until it failed (often the timeout) and would drown the
//! latency of the answers; failures are counted in `vantage_probes_total` by
//! `error_kind`.
//!
//! The exposition is OpenMetrics text ([`CONTENT_TYPE`]), which Prometheus scrapes
//! natively. `prometheus-client` has no TLS or HTTP dependencies, so it adds no second
//! rustls crypto provider to the binary.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::probe::ProbeReport;
use crate::schedule::SchedulerStats;
use crate::storage::WriterStats;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    datacenter: String,
    status: &'static str,
    /// `none` for a successful probe.
    error_kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    datacenter: String,
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DatacenterLabels {
    datacenter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IncidentKindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SkipLabels {
    /// `late` (the loop fell a whole period behind) or `saturated` (no probe permit).
    reason: &'static str,
}

/// Counters kept by other parts (the writer, the current term's scheduler), copied
/// into the families at scrape time.
#[derive(Default)]
struct Sources {
    writer: Option<Arc<WriterStats>>,
    scheduler: Option<Arc<SchedulerStats>>,
    /// What the schedulers of earlier terms counted.
    earlier: SchedulerTotals,
}

impl Sources {
    /// Every term's scheduler counts together: each term starts a new scheduler, and
    /// the exported counters must never go down.
    fn scheduler_totals(&self) -> SchedulerTotals {
        let current = self
            .scheduler
            .as_deref()
            .map(SchedulerTotals::of)
            .unwrap_or_default();
        self.earlier.plus(current)
    }
}

/// The exported counts of [`SchedulerStats`].
#[derive(Debug, Default, Clone, Copy)]
struct SchedulerTotals {
    skipped_late: u64,
    skipped_saturated: u64,
    skipped_gated: u64,
    catch_up_planned: u64,
    clock_steps: u64,
}

impl SchedulerTotals {
    fn of(stats: &SchedulerStats) -> Self {
        Self {
            skipped_late: stats.skipped_late.load(Ordering::Relaxed),
            skipped_saturated: stats.skipped_saturated.load(Ordering::Relaxed),
            skipped_gated: stats.skipped_gated.load(Ordering::Relaxed),
            catch_up_planned: stats.catch_up_planned.load(Ordering::Relaxed),
            clock_steps: stats.clock_steps.load(Ordering::Relaxed),
        }
    }

    fn plus(self, other: Self) -> Self {
        Self {
            skipped_late: self.skipped_late + other.skipped_late,
            skipped_saturated: self.skipped_saturated + other.skipped_saturated,
            skipped_gated: self.skipped_gated + other.skipped_gated,
            catch_up_planned: self.catch_up_planned + other.catch_up_planned,
            clock_steps: self.clock_steps + other.clock_steps,
        }
    }
}

/// Moves a counter up to `total` (a cumulative count kept elsewhere).
fn advance(counter: &Counter, total: u64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}

fn gauge_value(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotificationLabels {
    channel_kind: String,
    /// sent, retry (failed, to be tried again) or failed (given up).
    result: &'static str,
}

/// How a configuration reload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    /// Loaded and applied (changed or not).
    Ok,
    /// The database could not be read or a row was rejected; the old config stays.
    Error,
}

impl ReloadResult {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
        }
    }
}

/// 1 ms .. ~33 s in powers of two: DNS on a LAN to a probe hitting its timeout.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Every metric family of the process.
pub struct Metrics {
    registry: Registry,
    probes: Family<ProbeLabels, Counter>,
    phase_duration: Family<PhaseLabels, Histogram, fn() -> Histogram>,
    schedule_lag: Histogram,
    leader: Family<DatacenterLabels, Gauge>,
    leader_term: Family<DatacenterLabels, Gauge>,
    writer_batch_rows: Histogram,
    writer_insert_duration: Histogram,
    writer_buffered_rows: Gauge,
    writer_spooled_rows: Gauge,
    writer_spool_bytes: Gauge,
    writer_insert_failures: Counter,
    writer_spool_write_failures: Counter,
    writer_dropped_rows: Counter,
    schedule_skipped: Family<SkipLabels, Counter>,
    scheduler_gated_slots: Counter,
    scheduler_catch_up_slots: Counter,
    scheduler_clock_steps: Counter,
    config_reloads: Family<ResultLabels, Counter>,
    evaluator_leader: Gauge,
    incidents_open: Family<IncidentKindLabels, Gauge>,
    evaluation_duration: Histogram,
    evaluated_heartbeats: Counter,
    /// Also serialises the copying at scrape time, so two scrapes cannot both add
    /// the same increment.
    sources: Mutex<Sources>,
    notification_attempts: Family<NotificationLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::default();

        let probes = Family::<ProbeLabels, Counter>::default();
        registry.register(
            "vantage_probes",
            "Probes finished, by datacenter, status (up, warning, critical, down) and error kind",
            probes.clone(),
        );
        let phase_duration =
            Family::<PhaseLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        registry.register_with_unit(
            "vantage_probe_phase_duration",
            "Duration of each phase (dns, connect, tls, ttfb, transfer, total) of successful probes",
            Unit::Seconds,
            phase_duration.clone(),
        );
        let schedule_lag = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register_with_unit(
            "vantage_schedule_lag",
            "How late probes started after their scheduled slot",
            Unit::Seconds,
            schedule_lag.clone(),
        );
        let leader = Family::<DatacenterLabels, Gauge>::default();
        registry.register(
            "vantage_leader",
            "1 while this instance leads its datacenter (holds the advisory lock), else 0",
            leader.clone(),
        );
        let leader_term = Family::<DatacenterLabels, Gauge>::default();
        registry.register(
            "vantage_leader_term",
            "The leadership term (fencing token) this instance last acquired",
            leader_term.clone(),
        );
        let writer_batch_rows = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        registry.register(
            "vantage_writer_batch_rows",
            "Heartbeats per batch the writer inserted",
            writer_batch_rows.clone(),
        );
        let writer_insert_duration = duration_histogram();
        registry.register_with_unit(
            "vantage_writer_insert_duration",
            "Time to insert one batch of heartbeats",
            Unit::Seconds,
            writer_insert_duration.clone(),
        );
        let writer_buffered_rows = Gauge::default();
        registry.register(
            "vantage_writer_buffered_rows",
            "Heartbeats waiting in memory for the next insert",
            writer_buffered_rows.clone(),
        );
        let writer_spooled_rows = Gauge::default();
        registry.register(
            "vantage_writer_spooled_rows",
            "Heartbeats in the on-disk spool, waiting for the database to come back",
            writer_spooled_rows.clone(),
        );
        let writer_spool_bytes = Gauge::default();
        registry.register(
            "vantage_writer_spool_bytes",
            "Bytes of on-disk spool not replayed into the database yet",
            writer_spool_bytes.clone(),
        );
        let writer_insert_failures = Counter::default();
        registry.register(
            "vantage_writer_insert_failures",
            "Failed heartbeat insert attempts (each is retried; the rows are kept)",
            writer_insert_failures.clone(),
        );
        let writer_spool_write_failures = Counter::default();
        registry.register(
            "vantage_writer_spool_write_failures",
            "Failed attempts to write the spool (disk full, read-only); retried once per flush interval",
            writer_spool_write_failures.clone(),
        );
        let writer_dropped_rows = Counter::default();
        registry.register(
            "vantage_writer_dropped_rows",
            "Heartbeats lost: neither stored nor spooled (memory full while the spool could not be written)",
            writer_dropped_rows.clone(),
        );
        let schedule_skipped = Family::<SkipLabels, Counter>::default();
        registry.register(
            "vantage_schedule_skipped_slots",
            "Slots not probed, by reason: late (the scheduler fell a whole period behind) or saturated (no free probe permit)",
            schedule_skipped.clone(),
        );
        let scheduler_gated_slots = Counter::default();
        registry.register(
            "vantage_scheduler_gated_slots",
            "Slots not started because the leadership lease was not confirmed when they were due to start (not leading, or fenced)",
            scheduler_gated_slots.clone(),
        );
        let scheduler_catch_up_slots = Counter::default();
        registry.register(
            "vantage_scheduler_catch_up_slots",
            "Missed slots queued for replay after a takeover (since the last stored heartbeats)",
            scheduler_catch_up_slots.clone(),
        );
        let scheduler_clock_steps = Counter::default();
        registry.register(
            "vantage_scheduler_clock_steps",
            "Wall-clock steps the scheduler detected (each re-planned every monitor)",
            scheduler_clock_steps.clone(),
        );
        let config_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "vantage_config_reloads",
            "Configuration reloads from the database, by result (ok, error)",
            config_reloads.clone(),
        );

        let evaluator_leader = Gauge::default();
        registry.register(
            "vantage_evaluator_leader",
            "1 while this instance is the system-wide incident evaluator, else 0",
            evaluator_leader.clone(),
        );
        let incidents_open = Family::<IncidentKindLabels, Gauge>::default();
        registry.register(
            "vantage_incidents_open",
            "Open incidents by kind, as seen by the evaluator (reported by the evaluating instance only)",
            incidents_open.clone(),
        );
        let evaluation_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register_with_unit(
            "vantage_evaluation_duration",
            "Time of one evaluation tick: reading new heartbeats, deciding, writing incidents",
            Unit::Seconds,
            evaluation_duration.clone(),
        );
        let evaluated_heartbeats = Counter::default();
        registry.register(
            "vantage_evaluated_heartbeats",
            "Heartbeats read by the incident evaluator",
            evaluated_heartbeats.clone(),
        );
        let notification_attempts = Family::<NotificationLabels, Counter>::default();
        registry.register(
            "vantage_notification_attempts",
            "Notification delivery attempts, by channel kind and result (sent, retry, failed = given up)",
            notification_attempts.clone(),
        );

        Arc::new(Metrics {
            registry,
            probes,
            phase_duration,
            schedule_lag,
            leader,
            leader_term,
            writer_batch_rows,
            writer_insert_duration,
            writer_buffered_rows,
            writer_spooled_rows,
            writer_spool_bytes,
            writer_insert_failures,
            writer_spool_write_failures,
            writer_dropped_rows,
            schedule_skipped,
            scheduler_gated_slots,
            scheduler_catch_up_slots,
            scheduler_clock_steps,
            config_reloads,
            evaluator_leader,
            incidents_open,
            evaluation_duration,
            evaluated_heartbeats,
            sources: Mutex::default(),
            notification_attempts,
        })
    }

    /// Counts a finished probe and, when it succeeded, records its phases.
    pub fn observe_probe(&self, datacenter: &str, report: &ProbeReport) {
        self.probes
            .get_or_create(&ProbeLabels {
                datacenter: datacenter.to_string(),
                status: report.status.as_str(),
                error_kind: report.error_kind.map_or("none", |k| k.as_str()),
            })
            .inc();
        if !report.success() {
            return;
        }
        let phases = [
            ("dns", report.dns_ms),
            ("connect", report.connect_ms),
            ("tls", report.tls_ms),
            ("ttfb", report.ttfb_ms),
            ("transfer", report.transfer_ms),
            ("total", Some(report.total_ms)),
        ];
        for (phase, ms) in phases {
            // A phase that did not happen (no TLS over http://) is not a zero.
            if let Some(ms) = ms {
                self.phase_duration
                    .get_or_create(&PhaseLabels {
                        datacenter: datacenter.to_string(),
                        phase,
                    })
                    .observe(ms / 1000.0);
            }
        }
    }

    /// Records how late a probe started after its slot.
    pub fn observe_lag(&self, lag: Duration) {
        self.schedule_lag.observe(lag.as_secs_f64());
    }

    /// Leadership changed: `term` is the term just acquired (kept when leadership is
    /// lost, so the last term stays visible). Call it once at start with `false` too:
    /// a labelled family appears in the output only once it has a value, and "no
    /// leader here" is worth seeing.
    pub fn set_leader(&self, datacenter: &str, is_leader: bool, term: Option<i64>) {
        let labels = DatacenterLabels {
            datacenter: datacenter.to_string(),
        };
        self.leader.get_or_create(&labels).set(i64::from(is_leader));
        if let Some(term) = term {
            self.leader_term.get_or_create(&labels).set(term);
        }
    }

    /// The writer inserted a batch of `rows` heartbeats in `took`.
    pub fn observe_writer_batch(&self, rows: usize, took: Duration) {
        self.writer_batch_rows.observe(rows as f64);
        self.writer_insert_duration.observe(took.as_secs_f64());
    }

    /// The writer's backlog: rows in memory and rows in the on-disk spool.
    pub fn set_writer_backlog(&self, buffered: u64, spooled: u64) {
        self.writer_buffered_rows.set(gauge_value(buffered));
        self.writer_spooled_rows.set(gauge_value(spooled));
    }

    /// The writer whose failures, losses and spool size are exported.
    pub fn watch_writer(&self, stats: Arc<WriterStats>) {
        self.lock_sources().writer = Some(stats);
    }

    /// The scheduler of the term that just began: its counts are exported, on top of
    /// those of earlier terms.
    pub fn watch_scheduler(&self, stats: Arc<SchedulerStats>) {
        let mut sources = self.lock_sources();
        sources.earlier = sources.scheduler_totals();
        sources.scheduler = Some(stats);
    }

    fn lock_sources(&self) -> std::sync::MutexGuard<'_, Sources> {
        // The data is plain counters: a panic elsewhere cannot leave it inconsistent.
        self.sources.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Copies the counters kept elsewhere into their families.
    fn collect_sources(&self) {
        let sources = self.lock_sources();
        if let Some(writer) = &sources.writer {
            let w = writer.snapshot();
            self.writer_spool_bytes.set(gauge_value(w.spool_bytes));
            advance(&self.writer_insert_failures, w.insert_failures);
            advance(&self.writer_spool_write_failures, w.spool_write_failures);
            advance(&self.writer_dropped_rows, w.dropped_rows);
        }
        let scheduler = sources.scheduler_totals();
        for (reason, total) in [
            ("late", scheduler.skipped_late),
            ("saturated", scheduler.skipped_saturated),
        ] {
            advance(
                &self.schedule_skipped.get_or_create(&SkipLabels { reason }),
                total,
            );
        }
        advance(&self.scheduler_gated_slots, scheduler.skipped_gated);
        advance(&self.scheduler_catch_up_slots, scheduler.catch_up_planned);
        advance(&self.scheduler_clock_steps, scheduler.clock_steps);
    }

    pub fn config_reloaded(&self, result: ReloadResult) {
        self.config_reloads
            .get_or_create(&ResultLabels {
                result: result.as_str(),
            })
            .inc();
    }

    pub fn set_evaluator_leader(&self, is_leader: bool) {
        self.evaluator_leader.set(i64::from(is_leader));
    }

    /// Open incidents by kind; kinds not given read 0.
    pub fn set_open_incidents(&self, open: &std::collections::HashMap<&'static str, i64>) {
        for kind in ["monitor_down", "monitor_degraded", "datacenter_impaired"] {
            self.incidents_open
                .get_or_create(&IncidentKindLabels { kind })
                .set(open.get(kind).copied().unwrap_or(0));
        }
    }

    /// One evaluation tick read `heartbeats` and took `took`.
    pub fn observe_evaluation(&self, heartbeats: usize, took: Duration) {
        self.evaluation_duration.observe(took.as_secs_f64());
        self.evaluated_heartbeats.inc_by(heartbeats as u64);
    }

    /// A notification attempt ended: `result` is sent, retry or failed (given up).
    pub fn notification_attempted(&self, channel_kind: &str, result: &'static str) {
        self.notification_attempts
            .get_or_create(&NotificationLabels {
                channel_kind: channel_kind.to_string(),
                result,
            })
            .inc();
    }

    /// The exposition, in OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        self.collect_sources();
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding into a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{ErrorKind, ProbeStatus};

    fn report(status: ProbeStatus, error_kind: Option<ErrorKind>) -> ProbeReport {
        ProbeReport {
            status,
            http_status: Some(200),
            dns_ms: Some(1.5),
            connect_ms: Some(10.0),
            tls_ms: None,
            ttfb_ms: Some(40.0),
            transfer_ms: Some(2.0),
            total_ms: 53.5,
            response_size_bytes: None,
            remote_ip: None,
            http_version: None,
            tls_version: None,
            tls_cert_expires_at: None,
            redirect_count: 0,
            error_kind,
            error_message: None,
            response_body: None,
            content_type: None,
            server: None,
            response_headers: None,
            details: None,
        }
    }

    fn assert_has(text: &str, expected: &[&str]) {
        for expected in expected {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn probes_are_counted_by_datacenter_status_and_error_kind() {
        let m = Metrics::new();
        m.observe_probe("va", &report(ProbeStatus::Up, None));
        m.observe_probe("va", &report(ProbeStatus::Up, None));
        m.observe_probe(
            "va",
            &report(ProbeStatus::Down, Some(ErrorKind::ConnectRefused)),
        );
        let text = m.render();
        assert!(text.contains("# TYPE vantage_probes counter"), "{text}");
        assert_eq!(
            line(
                &text,
                r#"vantage_probes_total{datacenter="va",status="up",error_kind="none"}"#
            ),
            Some(r#"vantage_probes_total{datacenter="va",status="up",error_kind="none"} 2"#)
        );
        assert!(text.contains(
            r#"vantage_probes_total{datacenter="va",status="down",error_kind="connect_refused"} 1"#
        ));
    }

    #[test]
    fn phases_of_successful_probes_are_seconds_and_missing_phases_are_absent() {
        let m = Metrics::new();
        m.observe_probe("lon", &report(ProbeStatus::Up, None));
        // A failure adds nothing to the latency histograms.
        m.observe_probe("lon", &report(ProbeStatus::Down, Some(ErrorKind::Timeout)));
        let text = m.render();
        assert!(text.contains("# TYPE vantage_probe_phase_duration_seconds histogram"));
        assert!(text.contains("# UNIT vantage_probe_phase_duration_seconds seconds"));
        assert!(text.contains(
            r#"vantage_probe_phase_duration_seconds_sum{datacenter="lon",phase="ttfb"} 0.04"#
        ));
        assert!(text.contains(
            r#"vantage_probe_phase_duration_seconds_count{datacenter="lon",phase="total"} 1"#
        ));
        // 53.5 ms falls in the 64 ms bucket, not the 32 ms one.
        assert!(text.contains(
            r#"vantage_probe_phase_duration_seconds_bucket{le="0.032",datacenter="lon",phase="total"} 0"#
        ));
        assert!(text.contains(
            r#"vantage_probe_phase_duration_seconds_bucket{le="0.064",datacenter="lon",phase="total"} 1"#
        ));
        assert!(!text.contains(r#"phase="tls""#), "no TLS over http://");
    }

    #[test]
    fn leadership_lag_writer_and_reloads_are_exposed() {
        let m = Metrics::new();
        m.set_leader("syd", true, Some(7));
        m.set_leader("syd", false, None);
        m.observe_lag(Duration::from_millis(12));
        m.observe_writer_batch(500, Duration::from_millis(8));
        m.set_writer_backlog(42, 1000);
        m.config_reloaded(ReloadResult::Ok);
        m.config_reloaded(ReloadResult::Error);
        m.config_reloaded(ReloadResult::Ok);
        let text = m.render();
        assert_has(
            &text,
            &[
                r#"vantage_leader{datacenter="syd"} 0"#,
                r#"vantage_leader_term{datacenter="syd"} 7"#,
                "vantage_schedule_lag_seconds_count 1",
                "vantage_writer_batch_rows_sum 500.0",
                "vantage_writer_insert_duration_seconds_count 1",
                "vantage_writer_buffered_rows 42",
                "vantage_writer_spooled_rows 1000",
                r#"vantage_config_reloads_total{result="ok"} 2"#,
                r#"vantage_config_reloads_total{result="error"} 1"#,
            ],
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn scheduler_counts_add_up_across_terms_and_writer_counters_are_exported() {
        let m = Metrics::new();
        m.watch_writer(Arc::new(WriterStats::default()));
        assert_has(
            &m.render(),
            &[
                "vantage_scheduler_gated_slots_total 0",
                "vantage_scheduler_catch_up_slots_total 0",
                "vantage_scheduler_clock_steps_total 0",
            ],
        );
        let first = Arc::new(SchedulerStats::default());
        m.watch_scheduler(first.clone());
        first.skipped_late.fetch_add(2, Ordering::Relaxed);
        first.skipped_saturated.fetch_add(1, Ordering::Relaxed);
        first.skipped_gated.fetch_add(4, Ordering::Relaxed);
        first.catch_up_planned.fetch_add(60, Ordering::Relaxed);
        first.clock_steps.fetch_add(1, Ordering::Relaxed);
        // A new term, a new scheduler: the counts go on from where they were.
        let second = Arc::new(SchedulerStats::default());
        m.watch_scheduler(second.clone());
        second.skipped_late.fetch_add(3, Ordering::Relaxed);
        second.skipped_gated.fetch_add(1, Ordering::Relaxed);
        second.catch_up_planned.fetch_add(2, Ordering::Relaxed);
        for _ in 0..2 {
            // Scraping twice adds nothing twice.
            assert_has(
                &m.render(),
                &[
                    r#"vantage_schedule_skipped_slots_total{reason="late"} 5"#,
                    r#"vantage_schedule_skipped_slots_total{reason="saturated"} 1"#,
                    "vantage_scheduler_gated_slots_total 5",
                    "vantage_scheduler_catch_up_slots_total 62",
                    "vantage_scheduler_clock_steps_total 1",
                    "vantage_writer_insert_failures_total 0",
                    "vantage_writer_spool_write_failures_total 0",
                    "vantage_writer_dropped_rows_total 0",
                    "vantage_writer_spool_bytes 0",
                ],
            );
        }
    }

    #[test]
    fn every_family_follows_the_naming_conventions() {
        let m = Metrics::new();
        // A labelled family shows up once it has a child.
        m.observe_probe("va", &report(ProbeStatus::Up, None));
        m.set_leader("va", true, Some(1));
        m.config_reloaded(ReloadResult::Ok);
        m.set_open_incidents(&std::collections::HashMap::new());
        let text = m.render();
        let families: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split_once(' ').unwrap())
            .collect();
        assert_eq!(families.len(), 22, "{families:?}");
        for (name, kind) in families {
            assert!(name.starts_with("vantage_"), "{name}");
            assert!(
                !name.contains("_ms") && !name.contains("millis"),
                "{name}: base units"
            );
            if name.contains("duration") || name.contains("lag") {
                assert!(name.ends_with("_seconds"), "{name}: seconds");
            }
            // OpenMetrics names counter families without _total; samples carry it.
            if kind == "counter" {
                let sample = format!("\n{name}_total");
                assert!(
                    text.contains(&format!("{sample}{{")) || text.contains(&format!("{sample} ")),
                    "{name}_total"
                );
            }
        }
    }
}
