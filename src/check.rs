//! `vantage check`. (Placeholder: owned by the probe work, issue #2.)

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    pub url: String,
}

pub async fn execute(_args: CheckArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
