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

/// How the worker delivers. [`NotifyArgs`] fills it from flags and the environment.
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

/// Flags of notification delivery; `vantage run` flattens them into its own.
#[derive(Debug, Clone, clap::Args)]
pub struct NotifyArgs {
    /// Deadline of one delivery attempt.
    #[arg(long, env = "VANTAGE_NOTIFY_ATTEMPT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub notify_attempt_timeout: Duration,
    /// Delay before the first retry of a failed notification (doubled each time, with jitter).
    #[arg(long, env = "VANTAGE_NOTIFY_BACKOFF_BASE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub notify_backoff_base: Duration,
    /// Longest delay between two attempts.
    #[arg(long, env = "VANTAGE_NOTIFY_BACKOFF_MAX", default_value = "1h", value_parser = humantime::parse_duration)]
    pub notify_backoff_max: Duration,
    /// Give a notification up (status failed) when it still fails this long after it was queued.
    #[arg(long, env = "VANTAGE_NOTIFY_GIVE_UP_AFTER", default_value = "24h", value_parser = humantime::parse_duration)]
    pub notify_give_up_after: Duration,
    /// Most delivery attempts in flight at once.
    #[arg(long, env = "VANTAGE_NOTIFY_CONCURRENCY", default_value_t = 32)]
    pub notify_concurrency: usize,
    /// How often reminders (routes with repeat_every) and certificate notices are queued.
    #[arg(long, env = "VANTAGE_NOTIFY_SWEEP_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration)]
    pub notify_sweep_interval: Duration,
}

/// Why the delivery settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NotifyConfigError {
    #[error("VANTAGE_NOTIFY_CONCURRENCY must be at least 1")]
    ZeroConcurrency,
    #[error("{variable} (--{flag}) is {value}; use a value from {min} to {max}")]
    OutOfRange {
        variable: &'static str,
        flag: &'static str,
        value: String,
        min: String,
        max: String,
    },
    #[error("VANTAGE_NOTIFY_BACKOFF_MAX ({max}) is shorter than VANTAGE_NOTIFY_BACKOFF_BASE ({base}); raise the first or lower the second")]
    BackoffMaxBelowBase { base: String, max: String },
    /// The HTTP client (`VANTAGE_CA_FILE`, `VANTAGE_DNS_SERVERS`).
    #[error("setting up the HTTP client of notifications")]
    Prober(#[from] crate::probe::ProberError),
}

impl NotifyArgs {
    /// The configuration, with a prober set up from the environment
    /// (`VANTAGE_CA_FILE`, `VANTAGE_DNS_SERVERS`).
    pub fn config(&self) -> Result<NotifyConfig, NotifyConfigError> {
        if self.notify_concurrency == 0 {
            return Err(NotifyConfigError::ZeroConcurrency);
        }
        self.check_durations()?;
        let prober = Prober::from_env()?;
        let mut config = NotifyConfig::new(Arc::new(prober));
        config.attempt_timeout = self.notify_attempt_timeout;
        config.backoff_base = self.notify_backoff_base;
        config.backoff_max = self.notify_backoff_max;
        config.give_up_after = self.notify_give_up_after;
        config.concurrency = self.notify_concurrency;
        config.sweep_interval = self.notify_sweep_interval;
        Ok(config)
    }

    /// Each duration within what the worker can use: a zero sweep interval stopped the
    /// worker with a panic, a zero backoff retried a failing endpoint in a busy loop,
    /// and a zero attempt timeout failed every delivery.
    fn check_durations(&self) -> Result<(), NotifyConfigError> {
        const SECOND: Duration = Duration::from_secs(1);
        const HOUR: Duration = Duration::from_secs(3600);
        const DAY: Duration = Duration::from_secs(24 * 3600);
        let shown = |d: Duration| humantime::format_duration(d).to_string();
        for (variable, flag, value, min, max) in [
            (
                "VANTAGE_NOTIFY_ATTEMPT_TIMEOUT",
                "notify-attempt-timeout",
                self.notify_attempt_timeout,
                SECOND / 10,
                5 * 60 * SECOND,
            ),
            (
                "VANTAGE_NOTIFY_BACKOFF_BASE",
                "notify-backoff-base",
                self.notify_backoff_base,
                SECOND / 10,
                HOUR,
            ),
            (
                "VANTAGE_NOTIFY_BACKOFF_MAX",
                "notify-backoff-max",
                self.notify_backoff_max,
                SECOND,
                7 * DAY,
            ),
            (
                "VANTAGE_NOTIFY_GIVE_UP_AFTER",
                "notify-give-up-after",
                self.notify_give_up_after,
                60 * SECOND,
                30 * DAY,
            ),
            (
                "VANTAGE_NOTIFY_SWEEP_INTERVAL",
                "notify-sweep-interval",
                self.notify_sweep_interval,
                SECOND,
                HOUR,
            ),
        ] {
            if !(min..=max).contains(&value) {
                return Err(NotifyConfigError::OutOfRange {
                    variable,
                    flag,
                    value: shown(value),
                    min: shown(min),
                    max: shown(max),
                });
            }
        }
        if self.notify_backoff_max < self.notify_backoff_base {
            return Err(NotifyConfigError::BackoffMaxBelowBase {
                base: shown(self.notify_backoff_base),
                max: shown(self.notify_backoff_max),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        notify: NotifyArgs,
    }

    fn config_of(flags: &[&str]) -> Result<NotifyConfig, NotifyConfigError> {
        let mut argv = vec!["vantage"];
        argv.extend_from_slice(flags);
        Flags::try_parse_from(argv).unwrap().notify.config()
    }

    #[test]
    fn durations_out_of_range_are_refused_with_the_variable_and_the_range() {
        assert!(config_of(&[]).is_ok(), "the defaults must be usable");
        let err = config_of(&["--notify-sweep-interval", "0s"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "VANTAGE_NOTIFY_SWEEP_INTERVAL (--notify-sweep-interval) is 0s; use a value from 1s to 1h"
        );
        for flag in [
            "--notify-attempt-timeout",
            "--notify-backoff-base",
            "--notify-give-up-after",
        ] {
            let err = config_of(&[flag, "0s"]).unwrap_err().to_string();
            assert!(
                err.contains(&flag[2..]) && err.contains("use a value from"),
                "{err}"
            );
        }
        let err = config_of(&["--notify-backoff-base", "10m", "--notify-backoff-max", "1m"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("shorter than VANTAGE_NOTIFY_BACKOFF_BASE"),
            "{err}"
        );
    }

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
