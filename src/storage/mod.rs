//! Storage: everything between Vantage and Postgres that is not leadership. It owns
//! the schema (`sql/migrations`, embedded and applied by [`migrate`]), the daily
//! partitions of `api_heartbeats` ([`partitions`]), the example data
//! ([`seed_example`]) and the batched heartbeat writer ([`HeartbeatWriter`]) that
//! moves probe results into Postgres without losing any when Postgres is away.
//!
//! Maintenance (partitions, retention, rollups) runs on a pool of its own
//! ([`maintenance_pool`]) under [`TxLimits`], so a stuck lock holder can neither park
//! maintenance forever nor take the writer's connections.
//!
//! It does not decide who probes (leadership) nor what (configuration loading).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

pub mod partitions;
mod spool;
mod writer;

pub use writer::{
    FlushSummary, HeartbeatSender, HeartbeatWriter, WriterConfig, WriterSnapshot, WriterStats,
};

/// The schema, embedded at build time (`build.rs` rebuilds when it changes).
pub static MIGRATOR: Migrator = sqlx::migrate!("sql/migrations");

/// How many days of partitions [`migrate`] creates ahead of today.
pub const PARTITION_DAYS_AHEAD: u32 = 7;

/// Why [`connect`] or [`ensure_database_exists`] failed. No message holds the password.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// The parser's complaint, redacted.
    #[error("DATABASE_URL is not a valid postgres:// URL: {0}")]
    InvalidUrl(String),
    /// `target` as [`describe_target`] gives it; `reason` redacted.
    #[error(
        "cannot connect to Postgres at {target}: {reason}; check that it is running and that \
         DATABASE_URL is right"
    )]
    Unreachable { target: String, reason: String },
    #[error("cannot create database {name:?}")]
    Create {
        name: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("checking whether database {name:?} exists")]
    Lookup {
        name: String,
        #[source]
        source: sqlx::Error,
    },
}

fn parse_url(url: &str) -> Result<PgConnectOptions, DatabaseError> {
    url.parse()
        .map_err(|err| DatabaseError::InvalidUrl(redact_error(&err)))
}

fn unreachable(options: &PgConnectOptions) -> impl FnOnce(sqlx::Error) -> DatabaseError + '_ {
    move |err| DatabaseError::Unreachable {
        target: describe_target(options),
        reason: redact_error(&err),
    }
}

/// Connects a pool to `url` (a `postgres://` URL). The error names the target without
/// its password and says what to check.
pub async fn connect(url: &str) -> Result<PgPool, DatabaseError> {
    let options = parse_url(url)?;
    connect_with(options.clone())
        .await
        .map_err(unreachable(&options))
}

/// Connects the main pool (the writer's, configuration, liveness) with Vantage's
/// settings ([`pool_options`]).
pub async fn connect_with(options: PgConnectOptions) -> Result<PgPool, sqlx::Error> {
    pool_options(10)
        .connect_with(session_options(options, "vantage"))
        .await
}

/// Connections of the maintenance pool: one for the hourly partition run, one for the
/// rollups, which may overlap.
pub const MAINTENANCE_CONNECTIONS: u32 = 2;

/// The pool housekeeping and rollups run on, apart from the writer's: whatever they
/// wait for, they hold at most [`MAINTENANCE_CONNECTIONS`] connections. Connects
/// lazily (the caller has just reached the database through its main pool).
pub fn maintenance_pool(options: PgConnectOptions) -> PgPool {
    pool_options(MAINTENANCE_CONNECTIONS)
        .connect_lazy_with(session_options(options, "vantage-maintenance"))
}

/// Vantage's pool settings: connections are checked before use (so a restarted server
/// is noticed at once) and acquiring one gives up after 5 s instead of hanging while
/// the server is away.
fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(true)
}

fn session_options(options: PgConnectOptions, application_name: &str) -> PgConnectOptions {
    options
        .application_name(application_name)
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(5))
}

/// Turns JIT compilation off for the rest of the transaction on `conn`. Vantage's reads
/// are short, but through `monitor_assignments` (a cross join) and thousands of rows the
/// planner estimates them past `jit_above_cost`, and compiling took longer than running
/// them: 0.33 s of the evaluator's 0.62 s monitor read at 10,000 monitors, ~1 s of
/// `vantage apply`'s read. A transaction's setting, so a transaction pooler keeps it too.
pub async fn jit_off(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SET LOCAL jit = off").execute(conn).await?;
    Ok(())
}

/// Counts each row of `rows` against tokio's cooperative budget, so a task reading
/// thousands of rows yields every so often. Rows already in the connection's buffer
/// never make the task wait: folding 100,000 of them held the thread for a second or
/// two at a leader's start, and the probes due meanwhile then started all at once (on
/// one core, 1,024 connections within two seconds, 30 MB more resident memory).
pub fn yielding<S: Stream + Unpin>(rows: S) -> Yielding<S> {
    Yielding(rows)
}

/// See [`yielding`].
pub struct Yielding<S>(S);

impl<S: Stream + Unpin> Stream for Yielding<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        let row = std::task::ready!(Pin::new(&mut self.0).poll_next(cx));
        coop.made_progress();
        Poll::Ready(row)
    }
}

/// Bounds on one maintenance transaction: how long it may wait for a lock, and how long
/// any of its statements may run. DDL waiting for a lock on `api_heartbeats` would
/// queue every insert behind it, and a lock holder that never lets go would park the
/// waiting connection for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxLimits {
    pub lock_timeout: Duration,
    pub statement_timeout: Duration,
}

impl TxLimits {
    /// Sets the limits for the rest of the transaction `tx` is in (`SET LOCAL`).
    pub async fn apply(&self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query(
            "SELECT set_config('lock_timeout', $1, true), \
                    set_config('statement_timeout', $2, true)",
        )
        .bind(format!("{}ms", self.lock_timeout.as_millis()))
        .bind(format!("{}ms", self.statement_timeout.as_millis()))
        .execute(tx)
        .await?;
        Ok(())
    }
}

/// A listener on `channel` over a connection of its own (LISTEN needs a real session, so
/// it must not go through a transaction pooler), or `None` if Postgres cannot be reached
/// within `timeout`. sqlx's listener reconnects by itself but loses what was notified
/// meanwhile: callers pair it with a periodic reload or bid.
pub async fn listen(
    options: &PgConnectOptions,
    channel: &str,
    timeout: Duration,
) -> Option<PgListener> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(timeout)
        .connect_lazy_with(options.clone());
    let mut listener = PgListener::connect_with(&pool).await.ok()?;
    listener.listen(channel).await.ok()?;
    Some(listener)
}

/// Waits for a notification on a listener from [`listen`]; `false` when the listener is
/// gone or broke (the caller reconnects and reloads). Without a listener it waits
/// forever, so it can stand in a `select!` beside a periodic reload.
pub async fn next_notification(listener: &mut Option<PgListener>) -> bool {
    match listener {
        Some(l) => l.recv().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// `err`'s text with any password in it (URL userinfo or `password=` pairs) masked.
pub fn redact_error(err: &sqlx::Error) -> String {
    redact(&err.to_string())
}

/// "user@host:port/db" for messages: never the password.
pub fn describe_target(options: &PgConnectOptions) -> String {
    let host = match options.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => options.get_host().to_string(),
    };
    format!(
        "{}@{}:{}/{}",
        options.get_username(),
        host,
        options.get_port(),
        options.get_database().unwrap_or(options.get_username())
    )
}

/// Masks `scheme://user:secret@` and `password=secret` in free text.
pub(crate) fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        // userinfo ends at the last '@' before the first '/', whitespace or end.
        let authority_end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..colon]);
                out.push_str(":***");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    // key=value connection strings and query parameters.
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(pos) = rest.to_ascii_lowercase().find("password=") {
        let (head, tail) = rest.split_at(pos + "password=".len());
        result.push_str(head);
        result.push_str("***");
        let end = tail
            .find(|c: char| c == '&' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    result.push_str(rest);
    result
}

/// Applies every pending migration (idempotent; several instances may run it at once:
/// sqlx serializes them with an advisory lock), then makes sure the heartbeat
/// partitions for today and the next [`PARTITION_DAYS_AHEAD`] days exist.
///
/// An up-to-date schema is left alone, so that a login without DDL rights (the
/// `vantage_prober` role) can start with the default `VANTAGE_AUTO_MIGRATE=true`.
pub async fn migrate(pool: &PgPool) -> Result<(), MigrateError> {
    if pending_migrations(pool)
        .await
        .map_err(MigrateError::Execute)?
        > 0
    {
        MIGRATOR.run(pool).await?;
    }
    partitions::ensure_ahead(pool, PARTITION_DAYS_AHEAD)
        .await
        .map_err(MigrateError::Execute)?;
    Ok(())
}

/// How many embedded migrations the database has not applied yet (all of them for an
/// empty database).
pub async fn pending_migrations(pool: &PgPool) -> Result<usize, sqlx::Error> {
    let table: Option<String> = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
        .fetch_one(pool)
        .await?;
    let applied: Vec<i64> = match table {
        Some(_) => {
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(pool)
                .await?
        }
        None => Vec::new(),
    };
    Ok(MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
        .count())
}

/// Creates the database named in `url` when it does not exist yet, connecting to the
/// server's `postgres` database to do so.
pub async fn ensure_database_exists(url: &str) -> Result<(), DatabaseError> {
    let options = parse_url(url)?;
    let name = options
        .get_database()
        .unwrap_or(options.get_username())
        .to_string();
    let admin = options.clone().database("postgres");
    let mut conn = admin.connect().await.map_err(unreachable(&admin))?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await
            .map_err(|source| DatabaseError::Lookup {
                name: name.clone(),
                source,
            })?;
    if !exists {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        match sqlx::raw_sql(&sql).execute(&mut conn).await {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another instance created it first.
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P04") => {}
            Err(source) => return Err(DatabaseError::Create { name, source }),
        }
    }
    conn.close().await.ok();
    Ok(())
}

/// Loads the example configuration (`sql/seed/example.sql`): the nine datacenters of
/// the system Vantage replaces, their regions, a few schedules and monitors. Rows that
/// already exist (by code or name) are left alone, so running it twice is harmless.
pub async fn seed_example(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(include_str!("../../sql/seed/example.sql"))
        .execute(pool)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream whose items are all ready (as rows already in a connection's buffer)
    /// still lets another task run before it ends.
    #[tokio::test(flavor = "current_thread")]
    async fn yielding_lets_other_tasks_run_between_rows() {
        use futures_util::StreamExt as _;
        let other_ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = other_ran.clone();
        tokio::spawn(async move { flag.store(true, std::sync::atomic::Ordering::SeqCst) });
        let mut rows = yielding(futures_util::stream::iter(0..10_000));
        let mut seen_at = None;
        let mut count = 0;
        while let Some(row) = rows.next().await {
            count += 1;
            if seen_at.is_none() && other_ran.load(std::sync::atomic::Ordering::SeqCst) {
                seen_at = Some(row);
            }
        }
        assert_eq!(count, 10_000, "every row is still delivered, in order");
        let at = seen_at.expect("the other task ran while rows were being read");
        assert!(at < 1_000, "the other task waited for {at} rows");
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("error connecting to postgres://bob:s3cret@db:5432/x: refused"),
            "error connecting to postgres://bob:***@db:5432/x: refused"
        );
        assert_eq!(redact("postgres://bob@db/x"), "postgres://bob@db/x");
        assert_eq!(
            redact("host=db password=hunter2 user=x"),
            "host=db password=*** user=x"
        );
        assert_eq!(
            redact("?sslmode=require&password=abc&x=1"),
            "?sslmode=require&password=***&x=1"
        );
    }

    #[test]
    fn describes_target_without_password() {
        let options: PgConnectOptions = "postgres://bob:s3cret@db.example:6543/vantage"
            .parse()
            .unwrap();
        assert_eq!(describe_target(&options), "bob@db.example:6543/vantage");
    }
}
