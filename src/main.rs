//! The `vantage` binary: parses the command line and hands each subcommand to the
//! library. Nothing else lives here.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vantage::storage;
use vantage::telemetry::{self, LogFormat};

/// mimalloc instead of glibc's malloc: a probe makes hundreds of short-lived
/// allocations (TLS records, HTTP/2 frames, hyper's buffers), often freed on another
/// worker thread; with mimalloc a probe costs about 10 % less CPU (BENCHMARKS.md,
/// "Probe cost").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "vantage",
    version,
    about = "Multi-datacenter HTTP uptime prober"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        env = "VANTAGE_LOG_FORMAT",
        value_enum,
        default_value = "auto",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Probe one URL once over a fresh connection and print every phase.
    Check(vantage::check::CheckArgs),
    /// Run one instance of a datacenter: elect a leader, probe the datacenter's monitors.
    Run(vantage::runner::RunArgs),
    /// The whole system on this machine: private Postgres, 2 datacenters x 2 instances.
    Up(vantage::up::UpArgs),
    /// Create the database if needed and apply pending migrations (DATABASE_URL).
    Migrate(DatabaseArgs),
    /// Load the example datacenters, schedules and monitors (idempotent; DATABASE_URL).
    SeedExample(DatabaseArgs),
    /// Open incidents (or all since --since 7d); `incidents ack ID` acknowledges one.
    Incidents(vantage::incidents::cli::IncidentsArgs),
    /// Maintenance windows: `add`, `list`, `end`.
    Maintenance(vantage::incidents::cli::MaintenanceArgs),
    /// List the latest notifications, or only those given up (--failed).
    Notifications(vantage::notify::cli::NotificationsArgs),
    /// Notification channels: send a test message, make a webhook secret.
    #[command(subcommand)]
    Notify(vantage::notify::cli::NotifyCommand),
    /// Make the configuration match YAML files (one transaction; --prune deletes what left them).
    Apply(vantage::config_as_code::cli::ApplyArgs),
    /// What `apply` would change; exit 1 when something would.
    Diff(vantage::config_as_code::cli::FilesArgs),
    /// The configuration as YAML that `apply` accepts (--schema: its JSON Schema).
    Export(vantage::config_as_code::cli::ExportArgs),
    /// Monitors by name: `list` with their latest status, `pause`, `resume`.
    Monitors(vantage::config_as_code::cli::MonitorsArgs),
}

#[derive(clap::Args)]
struct DatabaseArgs {
    /// postgres://user:password@host:port/database
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => {
            telemetry::init(cli.log_format, "warn");
            vantage::check::execute(args).await
        }
        Command::Run(args) => {
            telemetry::init(cli.log_format, "info");
            vantage::runner::execute(args).await.map_err(Into::into)
        }
        Command::Up(args) => {
            // The live summary owns the terminal; only problems are logged.
            telemetry::init(cli.log_format, "warn");
            vantage::up::execute(args).await.map_err(Into::into)
        }
        Command::Migrate(args) => {
            telemetry::init(cli.log_format, "info");
            migrate(&args.database_url).await
        }
        Command::SeedExample(args) => {
            telemetry::init(cli.log_format, "info");
            seed_example(&args.database_url).await
        }
        Command::Incidents(args) => {
            telemetry::init(cli.log_format, "warn");
            vantage::incidents::cli::incidents(args).await
        }
        Command::Maintenance(args) => {
            telemetry::init(cli.log_format, "warn");
            vantage::incidents::cli::maintenance(args).await
        }
        Command::Notifications(args) => {
            telemetry::init(cli.log_format, "warn");
            vantage::notify::cli::notifications(args).await
        }
        Command::Notify(command) => {
            telemetry::init(cli.log_format, "info");
            vantage::notify::cli::notify(command).await
        }
        Command::Apply(args) => {
            telemetry::init(cli.log_format, "warn");
            vantage::config_as_code::cli::apply(args).await
        }
        Command::Diff(args) => {
            telemetry::init(cli.log_format, "warn");
            vantage::config_as_code::cli::diff(args).await
        }
        Command::Export(args) => {
            telemetry::init(cli.log_format, "warn");
            vantage::config_as_code::cli::export(args).await
        }
        Command::Monitors(args) => {
            telemetry::init(cli.log_format, "warn");
            vantage::config_as_code::cli::monitors(args).await
        }
    };
    result.unwrap_or_else(|err| {
        eprintln!("error: {err:#}");
        ExitCode::FAILURE
    })
}

async fn migrate(url: &str) -> anyhow::Result<ExitCode> {
    storage::ensure_database_exists(url).await?;
    let pool = storage::connect(url).await?;
    let pending = storage::pending_migrations(&pool).await?;
    storage::migrate(&pool).await?;
    println!("schema up to date ({pending} migration(s) applied)");
    Ok(ExitCode::SUCCESS)
}

async fn seed_example(url: &str) -> anyhow::Result<ExitCode> {
    let pool = storage::connect(url).await?;
    if storage::pending_migrations(&pool).await? > 0 {
        anyhow::bail!("the schema is not up to date: run `vantage migrate` first");
    }
    storage::seed_example(&pool).await?;
    println!("example datacenters, schedules and monitors loaded");
    Ok(ExitCode::SUCCESS)
}
