//! The `vantage` binary: parses the command line, starts logging and hands each
//! subcommand to its module under `src/cli/`. Nothing else lives here.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vantage::cli::{self, check, config, incidents, migrate, notify, run, seed_example, up};
use vantage::telemetry::{self, LogFormat};

/// mimalloc instead of glibc's malloc: a probe makes hundreds of short-lived
/// allocations (TLS records, HTTP/2 frames, hyper's buffers), often freed on another
/// worker thread; with mimalloc a probe costs about 10 % less CPU (BENCHMARKS.md,
/// "Probe cost"). Built without transparent huge pages (`no_thp`, and the process opts
/// out in `main`): mimalloc would advise huge pages for its arenas, and each touched
/// 2 MiB then counts whole in RSS — 24 of 57 MB with 10,000 monitors (BENCHMARKS.md,
/// "Where the memory goes").
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
    Check(check::CheckArgs),
    /// Run one instance of a datacenter: elect a leader, probe the datacenter's monitors.
    Run(run::RunArgs),
    /// The whole system on this machine: private Postgres, 2 datacenters x 2 instances.
    Up(up::UpArgs),
    /// Create the database if needed and apply pending migrations (DATABASE_URL).
    Migrate(cli::DatabaseArgs),
    /// Load the example datacenters, schedules and monitors (idempotent; DATABASE_URL).
    SeedExample(cli::DatabaseArgs),
    /// Open incidents (or all since --since 7d); `incidents ack ID` acknowledges one.
    Incidents(incidents::IncidentsArgs),
    /// Maintenance windows: `add`, `list`, `end`.
    Maintenance(incidents::MaintenanceArgs),
    /// List the latest notifications, or only those given up (--failed).
    Notifications(notify::NotificationsArgs),
    /// Notification channels: send a test message, make a webhook secret.
    #[command(subcommand)]
    Notify(notify::NotifyCommand),
    /// Make the configuration match YAML files (one transaction; --prune deletes what left them).
    Apply(config::ApplyArgs),
    /// What `apply` would change; exit 1 when something would.
    Diff(config::FilesArgs),
    /// The configuration as YAML that `apply` accepts (--schema: its JSON Schema).
    Export(config::ExportArgs),
    /// Monitors by name: `list` with their latest status, `pause`, `resume`.
    Monitors(config::MonitorsArgs),
}

impl Command {
    /// Commands whose output is for a person (a probe's phases, a live summary, a
    /// table) log only problems; the others log their progress.
    fn default_log_level(&self) -> &'static str {
        match self {
            Command::Check(_)
            | Command::Up(_)
            | Command::Incidents(_)
            | Command::Maintenance(_)
            | Command::Notifications(_)
            | Command::Apply(_)
            | Command::Diff(_)
            | Command::Export(_)
            | Command::Monitors(_) => "warn",
            Command::Run(_)
            | Command::Migrate(_)
            | Command::SeedExample(_)
            | Command::Notify(_) => "info",
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // Also on hosts whose THP setting is `always` (not only `madvise`): a small heap
    // spread over huge pages costs megabytes of RSS and saves nothing measurable.
    // SAFETY: prctl with integer arguments only; failure leaves the host's setting.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    let cli = Cli::parse();
    telemetry::init(cli.log_format, cli.command.default_log_level());
    let result = match cli.command {
        Command::Check(args) => check::execute(args).await,
        Command::Run(args) => run::execute(args).await,
        Command::Up(args) => up::execute(args).await.map_err(Into::into),
        Command::Migrate(args) => migrate::execute(args).await,
        Command::SeedExample(args) => seed_example::execute(args).await,
        Command::Incidents(args) => incidents::incidents(args).await,
        Command::Maintenance(args) => incidents::maintenance(args).await,
        Command::Notifications(args) => notify::notifications(args).await,
        Command::Notify(command) => notify::notify(command).await,
        Command::Apply(args) => config::apply(args).await,
        Command::Diff(args) => config::diff(args).await,
        Command::Export(args) => config::export(args).await,
        Command::Monitors(args) => config::monitors(args).await,
    };
    result.unwrap_or_else(|err| {
        eprintln!("error: {err:#}");
        ExitCode::FAILURE
    })
}
