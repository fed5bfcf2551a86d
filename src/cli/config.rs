//! `vantage apply`, `vantage diff`, `vantage export` and `vantage monitors`: argument
//! parsing, output and exit codes (0 applied or nothing to do, 1 invalid — or, for
//! `diff`, something would change —, 2 usage, 3 database unreachable).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;

use crate::config_as_code::apply::{self, ApplyError, Options};
use crate::config_as_code::load::{self, Diagnostic, Loaded};
use crate::config_as_code::{export, quick};
use crate::storage;

const INVALID: u8 = 1;
const USAGE: u8 = 2;
const UNREACHABLE: u8 = 3;

#[derive(Debug, clap::Args)]
pub struct FilesArgs {
    /// postgres://user:password@host:port/database
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// YAML files, or directories of *.yaml / *.yml files (repeatable).
    #[arg(short = 'f', long = "file", required = true, num_args = 1..)]
    files: Vec<PathBuf>,
    /// The name objects from these files are managed under (default: the directory's
    /// or file's name).
    #[arg(long)]
    source: Option<String>,
    /// Delete objects of this source that are no longer in the files.
    #[arg(long)]
    prune: bool,
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    files: FilesArgs,
    /// How long to wait for another apply to finish.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    lock_timeout: Duration,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// postgres://user:password@host:port/database
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        required_unless_present = "schema"
    )]
    database_url: Option<String>,
    /// Only the objects managed by this source.
    #[arg(long)]
    source: Option<String>,
    /// Print the JSON Schema of the file format instead (docs/vantage-config.schema.json).
    #[arg(long, conflicts_with = "source")]
    schema: bool,
}

#[derive(Debug, clap::Args)]
pub struct MonitorsArgs {
    /// postgres://user:password@host:port/database
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[command(subcommand)]
    action: MonitorsAction,
}

#[derive(Debug, clap::Subcommand)]
enum MonitorsAction {
    /// Every monitor with its latest status in each datacenter.
    List {
        /// Only monitors with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Only this datacenter.
        #[arg(long)]
        datacenter: Option<String>,
    },
    /// Stop probing these monitors (enabled = false).
    Pause {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Probe these monitors again (enabled = true).
    Resume {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// The files' objects, or the exit code after printing why not.
struct Prepared {
    loaded: Loaded,
    source: String,
    pool: PgPool,
}

async fn prepare(args: &FilesArgs) -> Result<Prepared, ExitCode> {
    let source = match (&args.source, args.files.as_slice()) {
        (Some(source), _) => source.clone(),
        (None, [only]) => default_source(only).ok_or_else(|| {
            eprintln!(
                "error: cannot name a source after {}; pass --source NAME",
                only.display()
            );
            ExitCode::from(USAGE)
        })?,
        (None, _) => {
            eprintln!("error: several paths given: name their source with --source NAME");
            return Err(ExitCode::from(USAGE));
        }
    };
    let files = load::expand_paths(&args.files).map_err(|err| {
        eprintln!("error: {err}");
        ExitCode::from(USAGE)
    })?;
    let loaded = load::load_files(&files);
    // References are checked against the database too; without one, the mistakes
    // found in the files alone are still worth reporting.
    let pool = match connect(&args.database_url).await {
        Ok(pool) => pool,
        Err(_) if !loaded.errors.is_empty() => return Err(report(&loaded.errors)),
        Err(code) => return Err(code),
    };
    Ok(Prepared {
        loaded,
        source,
        pool,
    })
}

/// A directory's name, or a file's name without its extension.
fn default_source(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let name = if path.is_dir() {
        path.file_name()
    } else {
        path.file_stem()
    };
    name.and_then(|n| n.to_str()).map(str::to_string)
}

async fn connect(url: &str) -> Result<PgPool, ExitCode> {
    storage::connect(url).await.map_err(|err| {
        eprintln!("error: {err:#}");
        ExitCode::from(UNREACHABLE)
    })
}

fn report(errors: &[Diagnostic]) -> ExitCode {
    for error in errors {
        eprintln!("{error}");
    }
    eprintln!("{} problem(s); nothing was changed", errors.len());
    ExitCode::from(INVALID)
}

fn failed(err: ApplyError) -> anyhow::Result<ExitCode> {
    match err {
        ApplyError::Invalid(errors) => Ok(report(&errors)),
        ApplyError::Locked(_) => {
            eprintln!("error: {err}");
            Ok(ExitCode::from(INVALID))
        }
        ApplyError::Database(err) => Err(anyhow::anyhow!(storage::redact_error(&err)))
            .context("the configuration could not be applied; nothing was changed"),
    }
}

pub async fn apply(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let prepared = match prepare(&args.files).await {
        Ok(prepared) => prepared,
        Err(code) => return Ok(code),
    };
    let options = Options {
        source: &prepared.source,
        prune: args.files.prune,
        lock_timeout: args.lock_timeout,
    };
    match apply::apply(&prepared.pool, &prepared.loaded, &options).await {
        Ok(plan) if plan.is_empty() => {
            println!(
                "nothing to do: the database matches the files (source \"{}\")",
                prepared.source
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(plan) => {
            for change in &plan.changes {
                println!("{change}");
            }
            println!(
                "applied {} change(s) (source \"{}\")",
                plan.changes.len(),
                prepared.source
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => failed(err),
    }
}

pub async fn diff(args: FilesArgs) -> anyhow::Result<ExitCode> {
    let prepared = match prepare(&args).await {
        Ok(prepared) => prepared,
        Err(code) => return Ok(code),
    };
    match apply::plan(
        &prepared.pool,
        &prepared.loaded,
        &prepared.source,
        args.prune,
    )
    .await
    {
        Ok(plan) if plan.is_empty() => {
            println!(
                "no changes: the database matches the files (source \"{}\")",
                prepared.source
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(plan) => {
            for change in &plan.changes {
                println!("{change}");
            }
            println!("{} change(s) to apply", plan.changes.len());
            Ok(ExitCode::from(1))
        }
        Err(err) => failed(err),
    }
}

pub async fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let Some(url) = args.database_url.filter(|_| !args.schema) else {
        print!("{}", export::schema());
        return Ok(ExitCode::SUCCESS);
    };
    let pool = match connect(&url).await {
        Ok(pool) => pool,
        Err(code) => return Ok(code),
    };
    let state = apply::snapshot(&pool).await?;
    let (config, warnings) = export::export(&state, args.source.as_deref());
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
    print!("{}", export::to_yaml(&config)?);
    Ok(ExitCode::SUCCESS)
}

pub async fn monitors(args: MonitorsArgs) -> anyhow::Result<ExitCode> {
    let pool = match connect(&args.database_url).await {
        Ok(pool) => pool,
        Err(code) => return Ok(code),
    };
    match args.action {
        MonitorsAction::List { tag, datacenter } => {
            let monitors = quick::list(&pool, tag.as_deref(), datacenter.as_deref()).await?;
            print!("{}", table(&monitors));
            Ok(ExitCode::SUCCESS)
        }
        MonitorsAction::Pause { names } => pause(&pool, &names, false).await,
        MonitorsAction::Resume { names } => pause(&pool, &names, true).await,
    }
}

async fn pause(pool: &PgPool, names: &[String], enabled: bool) -> anyhow::Result<ExitCode> {
    match quick::set_enabled(pool, names, enabled).await {
        Ok(changed) => {
            let verb = if enabled { "resumed" } else { "paused" };
            println!("{verb} {changed} monitor(s)");
            Ok(ExitCode::SUCCESS)
        }
        Err(quick::QuickError::Unknown(unknown)) => {
            eprintln!(
                "error: {}; nothing was changed",
                quick::QuickError::Unknown(unknown)
            );
            Ok(ExitCode::from(INVALID))
        }
        Err(quick::QuickError::Database(err)) => Err(err.into()),
    }
}

/// `NAME KIND TARGET va ny lon` with up/down/warning/critical, or - for no heartbeat
/// yet; blank where the monitor does not run.
fn table(monitors: &[quick::MonitorStatus]) -> String {
    let mut codes: Vec<&String> = monitors.iter().flat_map(|m| m.statuses.keys()).collect();
    codes.sort();
    codes.dedup();
    let mut rows = vec![["NAME", "KIND", "TARGET"]
        .iter()
        .map(|s| s.to_string())
        .chain(codes.iter().map(|c| c.to_string()))
        .collect::<Vec<_>>()];
    for monitor in monitors {
        let name = if monitor.enabled {
            monitor.name.clone()
        } else {
            format!("{} (paused)", monitor.name)
        };
        let mut row = vec![name, monitor.kind.clone(), monitor.target.clone()];
        row.extend(codes.iter().map(|code| match monitor.statuses.get(*code) {
            Some(Some(status)) => status.clone(),
            Some(None) => "-".to_string(),
            None => String::new(),
        }));
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
