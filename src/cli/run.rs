//! `vantage run`: the flags and environment variables of one instance. Every number and
//! duration is range-checked while the command line is parsed ([`within`]), so a value
//! out of range stops the process before it connects anywhere, with one line naming
//! the variable, the flag and the accepted range (a zero reload interval once panicked
//! a task and left configuration changes unapplied).
//!
//! It owns the settings' names, defaults and ranges; what an instance does with them
//! is [`crate::runner`]'s, which it does not touch.

use std::ffi::OsStr;
use std::fmt::{Display, Write as _};
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;

use crate::notify::{NotifyConfig, NotifyConfigError};
use crate::probe::Prober;
use crate::{leadership, runner};

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Code of the datacenter this instance serves (a row in `datacenters`), e.g. `va`.
    #[arg(long, env = "VANTAGE_DATACENTER")]
    pub datacenter: String,
    /// PostgreSQL URL. Must reach Postgres directly (not PgBouncer in transaction mode):
    /// the leadership lock and LISTEN need a real session.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Name of this instance in `agents`; default `<hostname>-<pid>`.
    #[arg(long, env = "VANTAGE_INSTANCE_NAME")]
    pub instance_name: Option<String>,
    /// Address of the HTTP endpoints (/healthz, /readyz, /status).
    #[arg(long, env = "VANTAGE_LISTEN", default_value = "0.0.0.0:9790")]
    pub listen: SocketAddr,
    /// Most probes in flight at once. 1 to 100000.
    #[arg(long, env = "VANTAGE_MAX_CONCURRENT_PROBES", default_value_t = 1024,
          value_parser = number::<usize>(1..=100_000))]
    pub max_concurrent_probes: usize,
    /// How long a leader that lost the database keeps probing (and spooling) while it
    /// reconnects. 0 = stop at once; at most 1h.
    #[arg(long, env = "VANTAGE_DB_OUTAGE_GRACE", default_value = "2m",
          value_parser = duration(Duration::ZERO..=HOUR))]
    pub db_outage_grace: Duration,
    /// Where heartbeats are spooled while the database is unreachable.
    #[arg(long, env = "VANTAGE_SPOOL_DIR", default_value = ".vantage/spool")]
    pub spool_dir: PathBuf,
    /// Days of heartbeats kept; older daily partitions are dropped by the leader.
    /// 1 to 3650.
    #[arg(long, env = "VANTAGE_RETENTION_DAYS", default_value_t = 30,
          value_parser = number::<u32>(1..=3650))]
    pub retention_days: u32,
    /// Full configuration reload interval (a safety net behind LISTEN/NOTIFY). 1s to 1day.
    #[arg(long, env = "VANTAGE_CONFIG_RELOAD_INTERVAL", default_value = "30s",
          value_parser = duration(Duration::from_secs(1)..=24 * HOUR))]
    pub config_reload_interval: Duration,
    /// How long shutdown waits for in-flight probes. 0s to 10m.
    #[arg(long, env = "VANTAGE_SHUTDOWN_TIMEOUT", default_value = "10s",
          value_parser = duration(Duration::ZERO..=10 * MINUTE))]
    pub shutdown_timeout: Duration,
    /// Apply pending migrations at start (safe with many instances starting at once).
    /// With `false`, an outdated schema is an error telling you to run `vantage migrate`.
    #[arg(long, env = "VANTAGE_AUTO_MIGRATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_migrate: bool,
    /// Once the database has stored nothing for this long, heartbeats that waited this
    /// long in memory are written to the spool and fsync'd: what a crash during a
    /// database outage can lose. 10ms to 60s.
    #[arg(long, env = "VANTAGE_SPOOL_FLUSH_INTERVAL", default_value = "1s",
          value_parser = duration(Duration::from_millis(10)..=MINUTE))]
    pub spool_flush_interval: Duration,
    /// The most heartbeats held in memory neither stored nor spooled (about 0.7 kB each);
    /// past it, while the spool cannot be written, heartbeats are lost and counted.
    /// 1000 to 10000000.
    #[arg(long, env = "VANTAGE_WRITER_MEMORY_ROWS", default_value_t = 100_000,
          value_parser = number::<usize>(1_000..=10_000_000))]
    pub writer_memory_rows: usize,
    /// How long a standby waits, seeing the leader's lease unrenewed (a hung leader),
    /// before it ends the leader's database session and takes over. 6s to 10m.
    #[arg(long, env = "VANTAGE_LEADER_LEASE", default_value = "10s",
          value_parser = duration(leadership::MIN_LEASE..=10 * MINUTE))]
    pub leader_lease: Duration,
    /// Notification delivery, on the instance that leads the incident evaluator.
    #[command(flatten)]
    pub notify: NotifyArgs,
}

/// Flags of notification delivery; `vantage run` flattens them into its own, and
/// `vantage notify` uses them too.
#[derive(Debug, Clone, clap::Args)]
pub struct NotifyArgs {
    /// Deadline of one delivery attempt. 100ms to 5m.
    #[arg(long, env = "VANTAGE_NOTIFY_ATTEMPT_TIMEOUT", default_value = "10s",
          value_parser = duration(Duration::from_millis(100)..=5 * MINUTE))]
    pub notify_attempt_timeout: Duration,
    /// Delay before the first retry of a failed notification (doubled each time, with
    /// jitter). 100ms to 1h.
    #[arg(long, env = "VANTAGE_NOTIFY_BACKOFF_BASE", default_value = "5s",
          value_parser = duration(Duration::from_millis(100)..=HOUR))]
    pub notify_backoff_base: Duration,
    /// Longest delay between two attempts; at least the base. 1s to 7days.
    #[arg(long, env = "VANTAGE_NOTIFY_BACKOFF_MAX", default_value = "1h",
          value_parser = duration(Duration::from_secs(1)..=7 * 24 * HOUR))]
    pub notify_backoff_max: Duration,
    /// Give a notification up (status failed) when it still fails this long after it
    /// was queued. 1m to 30days.
    #[arg(long, env = "VANTAGE_NOTIFY_GIVE_UP_AFTER", default_value = "24h",
          value_parser = duration(MINUTE..=30 * 24 * HOUR))]
    pub notify_give_up_after: Duration,
    /// Most delivery attempts in flight at once. 1 to 1000.
    #[arg(long, env = "VANTAGE_NOTIFY_CONCURRENCY", default_value_t = 32,
          value_parser = number::<usize>(1..=1000))]
    pub notify_concurrency: usize,
    /// How often reminders (routes with repeat_every) and certificate notices are
    /// queued. 1s to 1h.
    #[arg(long, env = "VANTAGE_NOTIFY_SWEEP_INTERVAL", default_value = "1m",
          value_parser = duration(Duration::from_secs(1)..=HOUR))]
    pub notify_sweep_interval: Duration,
}

impl NotifyArgs {
    /// The configuration, with a prober set up from the environment
    /// (`VANTAGE_CA_FILE`, `VANTAGE_DNS_SERVERS`).
    pub fn config(&self) -> Result<NotifyConfig, NotifyConfigError> {
        if self.notify_backoff_max < self.notify_backoff_base {
            let shown = |d: Duration| humantime::format_duration(d).to_string();
            return Err(NotifyConfigError::BackoffMaxBelowBase {
                base: shown(self.notify_backoff_base),
                max: shown(self.notify_backoff_max),
            });
        }
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
}

pub async fn execute(args: RunArgs) -> anyhow::Result<ExitCode> {
    Ok(runner::execute(args).await?)
}

/// A value parser that accepts only values within a range.
#[derive(Clone)]
struct Within<T> {
    range: RangeInclusive<T>,
    parse: fn(&str) -> Option<T>,
    show: fn(&T) -> String,
    /// What a value must look like, for one that does not parse.
    kind: &'static str,
}

/// A whole number within `range`.
fn number<T>(range: RangeInclusive<T>) -> Within<T>
where
    T: FromStr + Display,
{
    Within {
        range,
        parse: |text| text.parse().ok(),
        show: T::to_string,
        kind: "a whole number",
    }
}

/// A duration (`500ms`, `10s`, `2m`, `1day`) within `range`.
fn duration(range: RangeInclusive<Duration>) -> Within<Duration> {
    Within {
        range,
        parse: |text| humantime::parse_duration(text).ok(),
        show: |d| humantime::format_duration(*d).to_string(),
        kind: "a duration such as 500ms, 10s or 2m",
    }
}

impl<T> TypedValueParser for Within<T>
where
    T: PartialOrd + Clone + Send + Sync + 'static,
{
    type Value = T;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let text = value.to_string_lossy();
        let problem = match (self.parse)(&text) {
            Some(parsed) if self.range.contains(&parsed) => return Ok(parsed),
            Some(_) => "is out of range".to_string(),
            None => format!("is not {}", self.kind),
        };
        // One line, without clap's usage hint: the variable is usually set in a unit
        // file or a manifest, not typed, and the line ends up in a log.
        let message = format!(
            "{} {problem}; use a value from {} to {}\n",
            setting(arg, &text),
            (self.show)(self.range.start()),
            (self.show)(self.range.end()),
        );
        Err(clap::Error::raw(ErrorKind::ValueValidation, message))
    }
}

/// `VARIABLE="value" (--flag)`: whichever of the two the operator used, both are named.
fn setting(arg: Option<&clap::Arg>, value: &str) -> String {
    let mut name = String::new();
    if let Some(env) = arg.and_then(clap::Arg::get_env) {
        let _ = write!(name, "{}=", env.to_string_lossy());
    }
    let _ = write!(name, "{value:?}");
    if let Some(long) = arg.and_then(clap::Arg::get_long) {
        let _ = write!(name, " (--{long})");
    }
    name
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    /// Each parser's value type is the field's (clap checks that only when reading).
    #[test]
    fn the_defaults_parse_into_their_fields() {
        let cli =
            Cli::try_parse_from(["vantage", "--datacenter", "va", "--database-url", "x"]).unwrap();
        assert_eq!(cli.run.max_concurrent_probes, 1024);
        assert_eq!(cli.run.retention_days, 30);
        assert_eq!(cli.run.writer_memory_rows, 100_000);
        assert_eq!(cli.run.leader_lease, Duration::from_secs(10));
        assert!(
            cli.run.notify.config().is_ok(),
            "the defaults must be usable"
        );
    }

    /// A zero sweep interval panicked the notification worker, a zero backoff retried
    /// a failing endpoint in a busy loop, a zero attempt timeout failed every delivery,
    /// a zero concurrency delivered nothing.
    #[test]
    fn notification_settings_out_of_range_are_refused_with_the_variable_and_the_range() {
        let parse = |flags: &[&str]| {
            let mut argv = vec!["vantage", "--datacenter", "va", "--database-url", "x"];
            argv.extend_from_slice(flags);
            Cli::try_parse_from(argv)
        };
        let err = parse(&["--notify-sweep-interval", "0s"]).err().unwrap();
        assert_eq!(
            err.to_string(),
            "error: VANTAGE_NOTIFY_SWEEP_INTERVAL=\"0s\" (--notify-sweep-interval) is out of range; use a value from 1s to 1h\n"
        );
        for flag in [
            "--notify-attempt-timeout",
            "--notify-backoff-base",
            "--notify-give-up-after",
        ] {
            let err = parse(&[flag, "0s"]).err().unwrap().to_string();
            assert!(
                err.contains(&flag[2..]) && err.contains("use a value from"),
                "{err}"
            );
        }
        let err = parse(&["--notify-concurrency", "0"])
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("VANTAGE_NOTIFY_CONCURRENCY") && err.contains("from 1 to 1000"),
            "{err}"
        );
        let cli = parse(&["--notify-backoff-base", "10m", "--notify-backoff-max", "1m"]).unwrap();
        let err = cli.run.notify.config().unwrap_err().to_string();
        assert!(
            err.contains("shorter than VANTAGE_NOTIFY_BACKOFF_BASE"),
            "{err}"
        );
    }
}
