//! Notifications: from an incident event to a message received, once as far as the
//! receiver can tell.
//!
//! Owns the delivery of the transactional outbox (`notifications`, filled by a trigger
//! in the same transaction as each `incident_events` row, see
//! `sql/migrations/20261130000200_notifications.sql`): the worker ([`spawn`], only on
//! the instance that leads the evaluator), one file per channel kind behind
//! [`channel::ChannelKind`] (as Gatus keeps one provider per folder), the Standard
//! Webhooks signer and secret resolution (the operator commands are in
//! `src/cli/notify.rs`). It does not decide
//! anything about incidents and never writes `incidents` or `incident_events`; the
//! evaluator (`src/incidents/`) in turn knows nothing about channels.
//!
//! Delivery is at least once: an attempt is leased, sent, then recorded; a worker that
//! dies in between leaves the row to be sent again under the same event id
//! (`webhook-id`), which receivers use to drop duplicates.

pub mod channel;
pub mod email;
pub mod outbox;
pub mod pagerduty;
pub mod render;
pub mod secret;
pub mod signature;
pub mod slack;
pub mod telegram;
pub mod webhook;
mod worker;

use std::sync::Arc;
use std::time::Duration;

pub use outbox::{Claimed, Outcome};
pub use worker::{spawn, Deliverer};

use crate::probe::Prober;

/// How the worker delivers. `cli::run::NotifyArgs` fills it from flags and the environment.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// One attempt's deadline (connect, TLS, request, answer; or the SMTP dialogue).
    pub attempt_timeout: Duration,
    /// Delay before the first retry; doubled for each further attempt.
    pub backoff_base: Duration,
    /// Longest delay between two attempts.
    pub backoff_max: Duration,
    /// A notification still failing this long after it was queued fails for good.
    pub give_up_after: Duration,
    /// Most attempts in flight at once.
    pub concurrency: usize,
    /// How often reminders and certificate notices are queued.
    pub sweep_interval: Duration,
    /// The window of `rate_limit_per_minute`: a minute (tests shorten it to see the
    /// window slide within seconds).
    pub rate_window: Duration,
    /// HTTP(S) client of the webhook, Slack, Telegram and PagerDuty kinds: the probe
    /// engine (fresh connection, `VANTAGE_CA_FILE` roots, timeouts that hold).
    pub prober: Arc<Prober>,
}

impl NotifyConfig {
    /// Defaults, with `prober` as the HTTP client.
    pub fn new(prober: Arc<Prober>) -> NotifyConfig {
        NotifyConfig {
            attempt_timeout: Duration::from_secs(10),
            backoff_base: Duration::from_secs(5),
            backoff_max: Duration::from_secs(3600),
            give_up_after: Duration::from_secs(24 * 3600),
            concurrency: 32,
            sweep_interval: Duration::from_secs(60),
            rate_window: Duration::from_secs(60),
            prober,
        }
    }

    /// The delay after failed attempt number `attempt` (from 1): `backoff_base` doubled
    /// per attempt, capped at `backoff_max`, then "equal jitter" (a random point in
    /// its upper half), so receivers coming back are not hit by every retry at once.
    pub fn retry_delay(&self, attempt: i32) -> Duration {
        let doublings = u32::try_from(attempt.saturating_sub(1))
            .unwrap_or(0)
            .min(30);
        let full = self
            .backoff_base
            .saturating_mul(1u32 << doublings)
            .min(self.backoff_max);
        let mut random = [0u8; 4];
        // A failed read only removes the jitter.
        let _ = aws_lc_rs::rand::fill(&mut random);
        let fraction = f64::from(u32::from_le_bytes(random)) / f64::from(u32::MAX);
        full.mul_f64(0.5 + 0.5 * fraction)
    }
}

/// Why the delivery settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NotifyConfigError {
    #[error("VANTAGE_NOTIFY_BACKOFF_MAX ({max}) is shorter than VANTAGE_NOTIFY_BACKOFF_BASE ({base}); raise the first or lower the second")]
    BackoffMaxBelowBase { base: String, max: String },
    /// The HTTP client (`VANTAGE_CA_FILE`, `VANTAGE_DNS_SERVERS`).
    #[error("setting up the HTTP client of notifications")]
    Prober(#[from] crate::probe::ProberError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_with_jitter_up_to_the_cap() {
        let config = NotifyConfig::new(Arc::new(Prober::builder().build().unwrap()));
        for (attempt, full) in [(1, 5), (2, 10), (3, 20), (4, 40), (12, 3600), (40, 3600)] {
            let full = Duration::from_secs(full);
            for _ in 0..20 {
                let delay = config.retry_delay(attempt);
                assert!(
                    delay >= full / 2 && delay <= full,
                    "attempt {attempt}: {delay:?} outside [{:?}, {full:?}]",
                    full / 2
                );
            }
        }
    }
}
