//! The delivery worker: takes due notifications from the outbox, sends each through its
//! channel kind under a deadline, records the outcome, and schedules retries with
//! exponential backoff and jitter. Runs only while this instance leads the evaluator
//! (one sender for the whole system); wakes on the outbox's NOTIFY, when an attempt
//! ends, when the next retry is due, and every few seconds in case a NOTIFY was missed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::channel::{self, Outgoing, Transport};
use super::outbox::{self, Claimed, Outcome};
use super::secret::Redactor;
use super::NotifyConfig;
use crate::leadership::Leadership;
use crate::metrics::Metrics;
use crate::storage;

/// Longest sleep between two looks at the outbox: covers a NOTIFY lost while the
/// listener reconnected.
const MAX_POLL: Duration = Duration::from_secs(5);
/// Shortest: rows due but not takeable (their channel is at its rate limit).
const MIN_POLL: Duration = Duration::from_millis(250);
/// Added to the attempt timeout for the lease, so a live worker always records its
/// outcome before another may take the row.
const LEASE_MARGIN: Duration = Duration::from_secs(2);

/// Sends notifications; shared by the worker's tasks, `vantage notify test` and tests.
pub struct Deliverer {
    pool: PgPool,
    config: NotifyConfig,
    metrics: Option<Arc<Metrics>>,
    transport: Transport,
    worker: String,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer")
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

impl Deliverer {
    pub fn new(pool: PgPool, config: NotifyConfig, metrics: Option<Arc<Metrics>>) -> Deliverer {
        let transport = Transport {
            prober: config.prober.clone(),
            timeout: config.attempt_timeout,
        };
        // `<hostname>-<pid>`, stored with each attempt.
        let worker = crate::agent::AgentIdentity::of_this_process(0, None).instance_name;
        Deliverer {
            pool,
            config,
            metrics,
            transport,
            worker,
        }
    }

    pub fn lease(&self) -> Duration {
        self.config.attempt_timeout + LEASE_MARGIN
    }

    /// Takes up to `capacity` due notifications (see [`outbox::claim_due`]).
    pub async fn claim(&self, capacity: usize) -> Result<Vec<Claimed>, sqlx::Error> {
        let claim = outbox::Claim {
            capacity,
            lease: self.lease(),
            rate_window: self.config.rate_window,
            worker: &self.worker,
        };
        outbox::claim_due(&self.pool, &claim).await
    }

    /// Takes every due notification once, sends them all concurrently (up to the
    /// configured concurrency), and returns their outcomes. The lower-level form of the
    /// worker, for tests and one-shot tools.
    pub async fn deliver_due(&self) -> Result<Vec<Outcome>, sqlx::Error> {
        let claimed = self.claim(self.config.concurrency).await?;
        let outcomes =
            futures_util::future::join_all(claimed.into_iter().map(|c| self.deliver(c))).await;
        outcomes.into_iter().collect()
    }

    /// One attempt of `claimed`, recorded.
    pub async fn deliver(&self, claimed: Claimed) -> Result<Outcome, sqlx::Error> {
        let started = Instant::now();
        let mut redactor = Redactor::default();
        let result = match channel::build(&claimed.kind, &claimed.config, &mut redactor) {
            Err(err) => Err((None, format!("channel {}: {err}", claimed.channel_name))),
            Ok(kind) => {
                let message = Outgoing {
                    event_id: &claimed.event_id,
                    event: &claimed.event,
                    payload: &claimed.payload,
                };
                let send = kind.send(&self.transport, &message);
                match tokio::time::timeout(self.config.attempt_timeout, send).await {
                    Ok(Ok(delivered)) => Ok(delivered.status_code),
                    Ok(Err(failed)) => Err((failed.status_code, redactor.scrub(&failed.message))),
                    Err(_) => Err((
                        None,
                        format!(
                            "no answer within the attempt timeout ({} ms)",
                            self.config.attempt_timeout.as_millis()
                        ),
                    )),
                }
            }
        };
        let took = started.elapsed();
        let delay = self.config.retry_delay(claimed.attempt);
        let outcome = outbox::record(
            &self.pool,
            &claimed,
            result,
            took,
            delay,
            self.config.give_up_after,
        )
        .await?;
        self.report(&claimed, &outcome, took);
        Ok(outcome)
    }

    fn report(&self, claimed: &Claimed, outcome: &Outcome, took: Duration) {
        let result = match outcome {
            Outcome::Sent { status_code } => {
                tracing::debug!(
                    channel = %claimed.channel_name,
                    event = %claimed.event,
                    event_id = %claimed.event_id,
                    attempt = claimed.attempt,
                    status_code,
                    ms = took.as_secs_f64() * 1000.0,
                    "notification sent"
                );
                "sent"
            }
            Outcome::Failed {
                error,
                final_attempt,
                retry_in,
                ..
            } => {
                tracing::warn!(
                    channel = %claimed.channel_name,
                    event = %claimed.event,
                    event_id = %claimed.event_id,
                    attempt = claimed.attempt,
                    error = %error,
                    retry_in_s = retry_in.map(|d| d.as_secs_f64()),
                    "notification attempt failed{}",
                    if *final_attempt { "; giving up" } else { "" }
                );
                if *final_attempt {
                    "failed"
                } else {
                    "retry"
                }
            }
        };
        if let Some(metrics) = &self.metrics {
            metrics.notification_attempted(&claimed.kind, result);
        }
    }

    /// Queues reminders and certificate notices that have come due.
    pub async fn sweep(&self) -> Result<i32, sqlx::Error> {
        outbox::sweep(&self.pool).await
    }
}

/// Delivers notifications while `evaluator` says this instance leads the evaluator,
/// until `shutdown`. In-flight attempts finish (within the attempt timeout) when
/// leadership is lost or at shutdown; a row whose attempt was cut off is retried by the
/// next leader under the same event id.
pub fn spawn(
    pool: PgPool,
    mut evaluator: watch::Receiver<Leadership>,
    config: NotifyConfig,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let deliverer = Arc::new(Deliverer::new(pool, config, Some(metrics)));
        let mut in_flight = JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                led = evaluator.wait_for(|l| l.is_leader()) => if led.is_err() { break },
            }
            tracing::info!("leading the evaluator: delivering notifications");
            deliver_while_leading(&deliverer, &mut evaluator, &mut in_flight, &shutdown).await;
            tracing::info!("not leading the evaluator: notification delivery stopped");
        }
        let deadline = deliverer.lease();
        if tokio::time::timeout(deadline, async {
            while in_flight.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!("notification attempts still running at shutdown were cut off; they are retried with the same event id");
        }
    })
}

async fn deliver_while_leading(
    deliverer: &Arc<Deliverer>,
    evaluator: &mut watch::Receiver<Leadership>,
    in_flight: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) {
    let options = deliverer.pool.connect_options();
    let mut listener = None;
    let mut next_sweep = tokio::time::Instant::now();
    loop {
        if listener.is_none() {
            listener = storage::listen(&options, outbox::CHANNEL, MAX_POLL).await;
        }
        if tokio::time::Instant::now() >= next_sweep {
            if let Err(err) = deliverer.sweep().await {
                tracing::warn!(error = %storage::redact_error(&err), "queueing reminders and certificate notices failed");
            }
            next_sweep = tokio::time::Instant::now() + deliverer.config.sweep_interval;
        }
        let room = deliverer.config.concurrency.saturating_sub(in_flight.len());
        // Whether more may be due than was taken; if not, only a finished attempt (or a
        // NOTIFY) can make work, and the next due time need not be read.
        let mut took_all = true;
        if room > 0 {
            match deliverer.claim(room).await {
                Ok(batch) => {
                    took_all = batch.len() < room;
                    for claimed in batch {
                        let deliverer = deliverer.clone();
                        in_flight.spawn(async move {
                            if let Err(err) = deliverer.deliver(claimed).await {
                                tracing::warn!(error = %storage::redact_error(&err), "recording a notification attempt failed; the row is retried when its lease ends");
                            }
                        });
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %storage::redact_error(&err), "taking due notifications failed")
                }
            }
        }
        let wait = if took_all {
            match outbox::next_due(&deliverer.pool).await {
                Ok(Some(due)) => (due - chrono::Utc::now())
                    .to_std()
                    .unwrap_or_default()
                    .clamp(MIN_POLL, MAX_POLL),
                Ok(None) | Err(_) => MAX_POLL,
            }
        } else {
            MAX_POLL
        };
        let wait = wait.min(next_sweep.saturating_duration_since(tokio::time::Instant::now()));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = evaluator.changed() => {
                if changed.is_err() || !evaluator.borrow().is_leader() {
                    return;
                }
            }
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {
                // Take the room of every attempt that ended, in one claim.
                while in_flight.try_join_next().is_some() {}
            }
            notified = recv(&mut listener) => {
                if !notified {
                    // Reconnected at the next turn; the catch-up read covers the gap.
                    listener = None;
                }
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Waits for a notification; false when the listener is gone (never returns without one).
async fn recv(listener: &mut Option<sqlx::postgres::PgListener>) -> bool {
    match listener {
        Some(l) => l.recv().await.is_ok(),
        None => std::future::pending().await,
    }
}
