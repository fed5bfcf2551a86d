//! The subcommands of the `vantage` binary, one file each: its flags (a clap `Args`)
//! and the function that runs it and returns the process's exit code (`incidents.rs`
//! and `notify.rs` hold two related commands each). This is the program's edge: errors
//! here are `anyhow` and end as one `error:` line in `main`; the library modules they
//! call keep typed errors. A command only parses, calls the library and prints; it
//! holds no logic the running system needs.

pub mod check;
pub mod config;
pub mod incidents;
pub mod migrate;
pub mod notify;
pub mod run;
pub mod seed_example;
pub mod up;

/// The database a one-shot command works on.
#[derive(Debug, clap::Args)]
pub struct DatabaseArgs {
    /// postgres://user:password@host:port/database
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}
