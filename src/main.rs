//! The `vantage` binary: parses the command line and hands each subcommand to the
//! library. Nothing else lives here.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vantage::telemetry::{self, LogFormat};

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
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => {
            telemetry::init(cli.log_format, "warn");
            vantage::check::execute(args).await
        }
    };
    result.unwrap_or_else(|err| {
        eprintln!("error: {err:#}");
        ExitCode::FAILURE
    })
}
