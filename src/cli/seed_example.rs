//! `vantage seed-example`: loads the example datacenters, schedules and monitors
//! (idempotent). It refuses an outdated schema rather than migrating it: the schema is
//! `vantage migrate`'s.

use std::process::ExitCode;

use super::DatabaseArgs;
use crate::storage;

pub async fn execute(args: DatabaseArgs) -> anyhow::Result<ExitCode> {
    let pool = storage::connect(&args.database_url).await?;
    if storage::pending_migrations(&pool).await? > 0 {
        anyhow::bail!("the schema is not up to date: run `vantage migrate` first");
    }
    storage::seed_example(&pool).await?;
    println!("example datacenters, schedules and monitors loaded");
    Ok(ExitCode::SUCCESS)
}
