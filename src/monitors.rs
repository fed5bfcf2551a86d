//! Monitor configuration for one datacenter: reads the enabled monitors assigned to it
//! (with their schedules) from Postgres, turns each row into a [`RunnableMonitor`] the
//! scheduler and the probe can use, and keeps that set current — on every `vantage_config`
//! notification and, because notifications sent while the listener was disconnected are
//! lost, on a periodic full reload as well.
//!
//! A row it cannot use (bad URL, invalid cron, ...) is logged once per id and reason and
//! skipped; all other monitors keep running. Read-only on the database.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use serde_json::Value;
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::assertions::Assertions;
use crate::metrics::{Metrics, ReloadResult};
use crate::probe::{Monitor, MonitorSpec};
use crate::schedule::Cadence;
use crate::storage;

/// Channel on which the schema's triggers announce configuration changes.
pub const CONFIG_CHANNEL: &str = "vantage_config";

/// How long connecting the listener may take before the next reload tries again.
const LISTEN_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a burst of change notifications must be quiet before reloading.
const NOTIFY_SETTLE: Duration = Duration::from_millis(100);

/// One monitor, validated and ready to schedule.
#[derive(Debug)]
pub struct RunnableMonitor {
    pub id: i32,
    pub name: Box<str>,
    pub cadence: Cadence,
    pub monitor: Monitor,
    /// A hash of every column of the row it was built from: a reload that reads the same
    /// row again keeps this monitor instead of validating (and holding) a second copy.
    fingerprint: u64,
}

/// The current set, shared with the scheduler; replaced whole on every reload.
pub type MonitorSet = Arc<Vec<Arc<RunnableMonitor>>>;

#[derive(Debug, sqlx::FromRow)]
struct MonitorRow {
    id: i32,
    name: String,
    kind: String,
    method: String,
    url: String,
    headers: Value,
    secret_headers: Vec<String>,
    body: Option<String>,
    expected_status_codes: String,
    body_contains: Option<String>,
    follow_redirects: bool,
    max_redirects: i32,
    verify_tls: bool,
    ip_family: String,
    max_body_bytes: i32,
    redirect_policy: String,
    interval_seconds: Option<i32>,
    cron: Option<String>,
    timeout_ms: i32,
    warning_threshold_ms: Option<i32>,
    critical_threshold_ms: Option<i32>,
    include_response_body: bool,
    settings: Value,
    assertions: Value,
    capture_headers: Vec<String>,
}

/// Bytes of response body kept when a schedule asks for bodies.
const CAPTURED_BODY_BYTES: usize = 64 * 1024;

impl MonitorRow {
    /// Every column, so that any change to the row changes it. 64 bits of SipHash: the
    /// chance that an edit leaves it unchanged is negligible.
    fn fingerprint(&self) -> u64 {
        // Destructured, so a new column cannot be forgotten here.
        let MonitorRow {
            id,
            name,
            kind,
            method,
            url,
            headers,
            secret_headers,
            body,
            expected_status_codes,
            body_contains,
            follow_redirects,
            max_redirects,
            verify_tls,
            ip_family,
            max_body_bytes,
            redirect_policy,
            interval_seconds,
            cron,
            timeout_ms,
            warning_threshold_ms,
            critical_threshold_ms,
            include_response_body,
            settings,
            assertions,
            capture_headers,
        } = self;
        let mut hasher = DefaultHasher::new();
        (id, name, kind, method, url, secret_headers, body).hash(&mut hasher);
        (
            expected_status_codes,
            body_contains,
            follow_redirects,
            max_redirects,
        )
            .hash(&mut hasher);
        (verify_tls, ip_family, max_body_bytes, redirect_policy).hash(&mut hasher);
        (interval_seconds, cron, timeout_ms, warning_threshold_ms).hash(&mut hasher);
        (
            critical_threshold_ms,
            include_response_body,
            capture_headers,
        )
            .hash(&mut hasher);
        // JSON values have no Hash; their text is canonical (object keys sorted).
        for value in [headers, settings, assertions] {
            value.to_string().hash(&mut hasher);
        }
        hasher.finish()
    }

    fn into_runnable(self, fingerprint: u64) -> Result<RunnableMonitor, String> {
        let cadence = Cadence::from_parts(self.interval_seconds, self.cron.as_deref())
            .map_err(|err| err.to_string())?;
        let headers = match self.headers {
            Value::Object(map) => map
                .into_iter()
                .map(|(name, value)| match value {
                    Value::String(value) => Ok((name, value)),
                    other => Err(format!(
                        "header {name:?} must be a JSON string, found {other}; quote the value"
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
            other => return Err(format!("headers must be a JSON object, found {other}")),
        };
        let assertions =
            Assertions::from_json(&self.assertions).map_err(|err| format!("assertions: {err}"))?;
        let spec = MonitorSpec {
            kind: self.kind.parse().map_err(|err| format!("{err}"))?,
            method: self.method,
            url: self.url,
            headers,
            secret_headers: self.secret_headers,
            body: self.body,
            timeout: Duration::from_millis(u64::try_from(self.timeout_ms).unwrap_or(0)),
            expected_status: self.expected_status_codes,
            body_contains: self.body_contains,
            follow_redirects: self.follow_redirects,
            max_redirects: u32::try_from(self.max_redirects).unwrap_or(0),
            verify_tls: self.verify_tls,
            ip_family: self.ip_family,
            capture_body_bytes: self.include_response_body.then_some(CAPTURED_BODY_BYTES),
            max_body_bytes: usize::try_from(self.max_body_bytes).unwrap_or(0),
            redirect_policy: self.redirect_policy,
            warning_ms: self.warning_threshold_ms.map(|ms| ms as f64),
            critical_ms: self.critical_threshold_ms.map(|ms| ms as f64),
            settings: self.settings,
            assertions,
            capture_headers: self.capture_headers,
        };
        let monitor = Monitor::new(spec).map_err(|err| err.to_string())?;
        Ok(RunnableMonitor {
            id: self.id,
            name: self.name.into_boxed_str(),
            cadence,
            monitor,
            fingerprint,
        })
    }
}

/// Monitors loaded, and the rows that could not be used as `(id, name, reason)`.
type Loaded = (Vec<Arc<RunnableMonitor>>, Vec<(i32, String, String)>);

/// Loads the enabled monitors assigned to `datacenter_id`. Unusable rows come back
/// separately as `(id, name, reason)`.
pub async fn load(pool: &PgPool, datacenter_id: i32) -> Result<Loaded, sqlx::Error> {
    reload(pool, datacenter_id, &[]).await
}

/// [`load`], keeping each monitor of `current` (ordered by id) whose row is unchanged.
/// Rows are converted as they arrive, never all held at once: at 100,000 monitors the
/// rows, a second validated copy of every monitor and the list of them, all alive at
/// the same moment, were most of the process's peak memory (BENCHMARKS.md, "Footprint").
async fn reload(
    pool: &PgPool,
    datacenter_id: i32,
    current: &[Arc<RunnableMonitor>],
) -> Result<Loaded, sqlx::Error> {
    let rows = sqlx::query_as::<_, MonitorRow>(
        "SELECT m.id, m.name, m.kind, m.method, m.url, m.headers, m.secret_headers, m.body, \
                m.expected_status_codes, m.body_contains, m.follow_redirects, m.max_redirects, \
                m.verify_tls, m.ip_family, m.max_body_bytes, m.redirect_policy, s.interval_seconds, s.cron, s.timeout_ms, \
                s.warning_threshold_ms, s.critical_threshold_ms, s.include_response_body, \
                m.settings, m.assertions, m.capture_headers \
         FROM api_monitors m \
         JOIN schedules s ON s.id = m.schedule_id \
         JOIN monitor_assignments a ON a.monitor_id = m.id \
         WHERE a.datacenter_id = $1 AND m.enabled \
         ORDER BY m.id",
    )
    .bind(datacenter_id)
    .fetch(pool);
    let mut rows = crate::storage::yielding(rows);
    let mut runnable = Vec::with_capacity(current.len());
    let mut rejected = Vec::new();
    // Both are ordered by id: walk them side by side.
    let mut previous = current.iter().peekable();
    while let Some(row) = rows.try_next().await? {
        let fingerprint = row.fingerprint();
        while previous.next_if(|m| m.id < row.id).is_some() {}
        if let Some(same) = previous.next_if(|m| m.id == row.id && m.fingerprint == fingerprint) {
            runnable.push(same.clone());
            continue;
        }
        let (id, name) = (row.id, row.name.clone());
        match row.into_runnable(fingerprint) {
            Ok(monitor) => runnable.push(Arc::new(monitor)),
            Err(reason) => rejected.push((id, name, reason)),
        }
    }
    Ok((runnable, rejected))
}

/// Keeps a [`MonitorSet`] current until `shutdown`; returns it with the watcher's task.
/// The first load happens before this returns, so the caller starts with the real set
/// (or an error it can report).
pub async fn watch_monitors(
    pool: PgPool,
    listen_options: PgConnectOptions,
    datacenter_id: i32,
    full_reload_every: Duration,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(watch::Receiver<MonitorSet>, JoinHandle<()>), sqlx::Error> {
    let mut reporter = RejectionReporter::default();
    let (monitors, rejected) = load(&pool, datacenter_id).await?;
    reporter.report(&rejected);
    tracing::info!(monitors = monitors.len(), "monitor configuration loaded");
    let (publish, subscribe) = watch::channel(Arc::new(monitors));

    let task = tokio::spawn(async move {
        let mut listener = None;
        let mut tick = tokio::time::interval(full_reload_every);
        tick.reset();
        loop {
            if listener.is_none() {
                listener =
                    storage::listen(&listen_options, CONFIG_CHANNEL, LISTEN_CONNECT_TIMEOUT).await;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
                notified = storage::next_notification(&mut listener) => {
                    if notified {
                        // Several statements in a row (a script editing monitors) arrive
                        // as a burst: reload once, after it settles.
                        while tokio::time::timeout(NOTIFY_SETTLE, storage::next_notification(&mut listener)).await == Ok(true) {}
                    } else {
                        // Whatever changed while disconnected is unknown: reload anyway.
                        listener = None;
                    }
                }
            }
            let current = publish.borrow().clone();
            match reload(&pool, datacenter_id, &current).await {
                Ok((monitors, rejected)) => {
                    metrics.config_reloaded(ReloadResult::Ok);
                    reporter.report(&rejected);
                    let count = monitors.len();
                    publish.send_replace(Arc::new(monitors));
                    tracing::debug!(monitors = count, "monitor configuration reloaded");
                }
                // Keep probing the last known configuration through a database outage.
                Err(err) => {
                    metrics.config_reloaded(ReloadResult::Error);
                    tracing::warn!(error = %err, "monitor configuration reload failed");
                }
            }
        }
    });
    Ok((subscribe, task))
}

/// Logs each unusable row once per distinct reason, not on every reload.
#[derive(Default)]
struct RejectionReporter {
    reported: HashMap<i32, String>,
}

impl RejectionReporter {
    fn report(&mut self, rejected: &[(i32, String, String)]) {
        let current: HashMap<i32, String> = rejected
            .iter()
            .map(|(id, _, reason)| (*id, reason.clone()))
            .collect();
        for (id, name, reason) in rejected {
            if self.reported.get(id) != Some(reason) {
                tracing::error!(
                    monitor_id = id,
                    monitor = %name,
                    reason = %reason,
                    "skipping monitor: its configuration cannot be used; fix the row to run it"
                );
            }
        }
        self.reported = current;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every monitor is held for the process's life in an `Arc` (16 bytes of counts
    /// before it), and mimalloc rounds each allocation up to its size class: at 240
    /// bytes or less the pair fits the 256-byte class, above it the 320-byte one, 6.4 MB
    /// more at 100,000 monitors (BENCHMARKS.md, "Footprint"). A field that pushes it over
    /// belongs behind a pointer, as the rare parts of each kind are.
    #[test]
    fn a_monitor_fits_the_256_byte_allocation_class() {
        let size = std::mem::size_of::<RunnableMonitor>();
        assert!(
            size <= 240,
            "RunnableMonitor is {size} bytes; keep it <= 240"
        );
    }
}
