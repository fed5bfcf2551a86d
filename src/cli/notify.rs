//! The operator's commands: `vantage notifications [--failed]`, `vantage notify test
//! CHANNEL`, `vantage notify new-secret`, and the hidden `vantage notify deliver` (a
//! worker alone, elected like the evaluator, for crash tests and benchmarks).
//! They send through the worker's own delivery code ([`crate::notify`]) and never
//! write incidents or their events.

use std::process::ExitCode;
use std::str::FromStr;

use anyhow::Context;
use sqlx::postgres::PgConnectOptions;
use tokio_util::sync::CancellationToken;

use crate::agent::{self, AgentIdentity};
use crate::cli::run::NotifyArgs;
use crate::leadership::{ElectionConfig, Elector, LeadershipScope};
use crate::metrics::Metrics;
use crate::notify::outbox::{self, Outcome};
use crate::notify::{signature, Deliverer};
use crate::storage;

#[derive(Debug, clap::Args)]
pub struct NotificationsArgs {
    /// Only the notifications that were given up.
    #[arg(long)]
    pub failed: bool,
    /// How many of the latest to show.
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}

#[derive(Debug, clap::Subcommand)]
pub enum NotifyCommand {
    /// Send a `test` event to CHANNEL through the real delivery path and print the outcome.
    Test {
        /// The channel's name (notification_channels.name).
        channel: String,
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        #[command(flatten)]
        delivery: NotifyArgs,
    },
    /// Print a fresh webhook signing secret (whsec_...).
    NewSecret,
    /// Deliver notifications while elected evaluator leader, until SIGTERM (what
    /// `vantage run` does alongside the evaluator).
    #[command(hide = true)]
    Deliver {
        /// A datacenter code, to register this process in `agents`.
        #[arg(long, env = "VANTAGE_DATACENTER")]
        datacenter: String,
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        #[command(flatten)]
        delivery: NotifyArgs,
    },
}

pub async fn notifications(args: NotificationsArgs) -> anyhow::Result<ExitCode> {
    let pool = storage::connect(&args.database_url).await?;
    let rows = outbox::list(&pool, args.failed, args.limit)
        .await
        .context("reading notifications")?;
    if rows.is_empty() {
        println!(
            "{}",
            if args.failed {
                "no failed notifications"
            } else {
                "no notifications"
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>6}  {:<20}  {:<16}  {:<24}  {:<9}  {:>8}  {:<36}  detail",
        "id", "created (UTC)", "channel", "event", "status", "attempts", "event id"
    );
    for row in rows {
        println!(
            "{:>6}  {:<20}  {:<16}  {:<24}  {:<9}  {:>8}  {:<36}  {}",
            row.id,
            row.created_at.format("%Y-%m-%d %H:%M:%S"),
            row.channel,
            row.event,
            row.status,
            row.attempts,
            row.event_id,
            row.detail.unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn notify(command: NotifyCommand) -> anyhow::Result<ExitCode> {
    match command {
        NotifyCommand::NewSecret => {
            println!("{}", signature::new_secret());
            Ok(ExitCode::SUCCESS)
        }
        NotifyCommand::Test {
            channel,
            database_url,
            delivery,
        } => test(&channel, &database_url, &delivery).await,
        NotifyCommand::Deliver {
            datacenter,
            database_url,
            delivery,
        } => deliver(&datacenter, &database_url, &delivery).await,
    }
}

async fn test(channel: &str, url: &str, delivery: &NotifyArgs) -> anyhow::Result<ExitCode> {
    let pool = storage::connect(url).await?;
    let Some(id) = outbox::queue_test(&pool, channel).await? else {
        let known = outbox::channel_names(&pool).await?;
        anyhow::bail!(
            "no notification channel named {channel:?}; the channels are: {}",
            if known.is_empty() {
                "none (INSERT INTO notification_channels first)".to_string()
            } else {
                known.join(", ")
            }
        );
    };
    let deliverer = Deliverer::new(pool.clone(), delivery.config()?, None);
    let claimed = outbox::claim_one(&pool, id, deliverer.lease(), "vantage notify test")
        .await?
        .context("the test notification vanished before it was sent")?;
    let event_id = claimed.event_id.clone();
    let kind = claimed.kind.clone();
    let started = std::time::Instant::now();
    let outcome = deliverer.deliver(claimed).await?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    match outcome {
        Outcome::Sent { status_code } => {
            println!(
                "sent test event {event_id} to {channel} ({kind}) in {ms:.0} ms{}",
                status_code
                    .map(|c| format!(", status {c}"))
                    .unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Failed { error, .. } => {
            eprintln!("error: test event {event_id} to {channel} ({kind}) failed after {ms:.0} ms: {error}");
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn deliver(datacenter: &str, url: &str, delivery: &NotifyArgs) -> anyhow::Result<ExitCode> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|err| anyhow::anyhow!("DATABASE_URL: {}", storage::redact_error(&err)))?;
    let pool = storage::connect_with(options.clone()).await?;
    let datacenter_id: i32 = sqlx::query_scalar("SELECT id FROM datacenters WHERE code = $1")
        .bind(datacenter)
        .fetch_optional(&pool)
        .await?
        .with_context(|| format!("no datacenter with code {datacenter:?} (VANTAGE_DATACENTER)"))?;
    let identity = AgentIdentity::of_this_process(datacenter_id, None);
    let agent_id = agent::Registration::start(&pool, identity).await?.id();
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    let stop = crate::services::stop_requested();
    tokio::spawn(async move {
        stop.await;
        signal.cancel();
    });
    let (elector, election) = Elector::spawn(
        ElectionConfig::new(options, LeadershipScope::Evaluator, agent_id),
        shutdown.clone(),
    );
    let worker = crate::notify::spawn(
        pool.clone(),
        elector.subscribe(),
        delivery.config()?,
        Metrics::new(),
        shutdown.clone(),
    );
    let _ = worker.await;
    let _ = election.await;
    pool.close().await;
    Ok(ExitCode::SUCCESS)
}
