//! `vantage migrate`: creates the database if needed and applies pending migrations,
//! as the schema owner, once per release. Only the schema: it loads no data and starts
//! nothing.

use std::process::ExitCode;

use super::DatabaseArgs;
use crate::storage;

pub async fn execute(args: DatabaseArgs) -> anyhow::Result<ExitCode> {
    let url = &args.database_url;
    storage::ensure_database_exists(url).await?;
    let pool = storage::connect(url).await?;
    let pending = storage::pending_migrations(&pool).await?;
    storage::migrate(&pool).await?;
    println!("schema up to date ({pending} migration(s) applied)");
    Ok(ExitCode::SUCCESS)
}
