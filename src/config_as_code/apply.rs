//! Writing a plan: all of it in one transaction, or none of it.
//!
//! A transaction-level advisory lock serialises applies (the second waits up to its
//! lock timeout, then gives up with [`ApplyError::Locked`]); the plan is computed after
//! the lock is held, so it always compares against what the previous apply committed.
//! Each kind is one bulk statement (upserts in dependency order, then deletes in
//! reverse). When the database rejects a statement, the transaction is rolled back and
//! the objects are replayed one by one in a second, discarded transaction, to name
//! every object the triggers refuse at its file position.

use std::time::Duration;

use sqlx::types::Json;
use sqlx::{Connection, PgConnection, PgPool};

use super::load::{Diagnostic, Loaded, Section};
use super::objects::Statements;
use super::plan::{Plan, State};

/// `hashtext('vantage.config_apply')` would do as well; a constant needs no query.
pub const APPLY_LOCK: i64 = 0x7661_6e74_6167_6501;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("the configuration is not valid ({} problem(s))", .0.len())]
    Invalid(Vec<Diagnostic>),
    #[error(
        "another `vantage apply` has held the configuration lock for {0:?}; gave up \
         (retry, or raise --lock-timeout)"
    )]
    Locked(Duration),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

pub struct Options<'a> {
    pub source: &'a str,
    pub prune: bool,
    pub lock_timeout: Duration,
}

/// Applies the files; the plan that was applied (empty: nothing to do).
pub async fn apply(
    pool: &PgPool,
    loaded: &Loaded,
    options: &Options<'_>,
) -> Result<Plan, ApplyError> {
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    lock(&mut tx, options.lock_timeout).await?;
    let state = State::read(&mut tx).await?;
    let plan =
        Plan::build(loaded, &state, options.source, options.prune).map_err(ApplyError::Invalid)?;
    if plan.is_empty() {
        tx.rollback().await?;
        return Ok(plan);
    }
    match write(&mut tx, &plan, options.source).await {
        Ok(()) => {
            tx.commit().await?;
            Ok(plan)
        }
        Err(err) => {
            tx.rollback().await?;
            let mut tx = conn.begin().await?;
            lock(&mut tx, options.lock_timeout).await?;
            let rejected = diagnose(&mut tx, loaded, &plan, options.source).await?;
            tx.rollback().await?;
            if rejected.is_empty() {
                Err(err.into())
            } else {
                Err(ApplyError::Invalid(rejected))
            }
        }
    }
}

/// The plan against the database as it is now, without writing anything.
pub async fn plan(
    pool: &PgPool,
    loaded: &Loaded,
    source: &str,
    prune: bool,
) -> Result<Plan, ApplyError> {
    let state = snapshot(pool).await?;
    Plan::build(loaded, &state, source, prune).map_err(ApplyError::Invalid)
}

/// Every configurable row, read in one consistent snapshot.
pub async fn snapshot(pool: &PgPool) -> Result<State, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let state = State::read(&mut tx).await?;
    tx.rollback().await?;
    Ok(state)
}

async fn lock(conn: &mut PgConnection, timeout: Duration) -> Result<(), ApplyError> {
    // SET cannot take a parameter; the value is a number we formatted.
    sqlx::query(&format!(
        "SET LOCAL lock_timeout = '{}ms'",
        timeout.as_millis().max(1)
    ))
    .execute(&mut *conn)
    .await?;
    let locked = sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(APPLY_LOCK)
        .execute(&mut *conn)
        .await;
    match locked {
        Err(sqlx::Error::Database(err)) if err.code().as_deref() == Some("55P03") => {
            Err(ApplyError::Locked(timeout))
        }
        other => {
            other?;
            sqlx::query("SET LOCAL lock_timeout = 0")
                .execute(&mut *conn)
                .await?;
            Ok(())
        }
    }
}

async fn upsert(
    conn: &mut PgConnection,
    section: Section,
    rows: &[&serde_json::Value],
    source: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(Statements::of(section).upsert)
        .bind(Json(rows))
        .bind(source)
        .execute(conn)
        .await
        .map(drop)
}

/// Keeps (RELEASE) or undoes (ROLLBACK TO) the savepoint `one` by what was done inside
/// it, and hands that outcome back; the outer error is the connection's own.
async fn end_savepoint(
    conn: &mut PgConnection,
    outcome: Result<(), sqlx::Error>,
) -> Result<Result<(), sqlx::Error>, sqlx::Error> {
    let end = if outcome.is_ok() {
        "RELEASE SAVEPOINT one"
    } else {
        "ROLLBACK TO SAVEPOINT one"
    };
    sqlx::query(end).execute(conn).await?;
    Ok(outcome)
}

async fn delete(
    conn: &mut PgConnection,
    section: Section,
    keys: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query(Statements::of(section).delete)
        .bind(keys)
        .execute(conn)
        .await
        .map(drop)
}

async fn write(conn: &mut PgConnection, plan: &Plan, source: &str) -> Result<(), sqlx::Error> {
    for section in Section::ALL {
        let Some(writes) = plan.writes.get(&section) else {
            continue;
        };
        if !writes.upserts.is_empty() {
            let rows: Vec<&serde_json::Value> = writes.upserts.iter().map(|(_, row)| row).collect();
            upsert(conn, section, &rows, source).await?;
        }
    }
    for section in Section::ALL.into_iter().rev() {
        if let Some(writes) = plan.writes.get(&section).filter(|w| !w.deletes.is_empty()) {
            delete(conn, section, &writes.deletes).await?;
        }
    }
    Ok(())
}

/// Replays the plan object by object, each under a savepoint: every object the
/// database refuses, at its position.
async fn diagnose(
    conn: &mut PgConnection,
    loaded: &Loaded,
    plan: &Plan,
    source: &str,
) -> Result<Vec<Diagnostic>, sqlx::Error> {
    let mut rejected = Vec::new();
    for section in Section::ALL {
        let Some(writes) = plan.writes.get(&section) else {
            continue;
        };
        for (name, row) in &writes.upserts {
            sqlx::query("SAVEPOINT one").execute(&mut *conn).await?;
            let outcome = upsert(conn, section, &[row], source).await;
            if let Err(err) = end_savepoint(conn, outcome).await? {
                rejected.push(rejection(
                    loaded,
                    section,
                    name,
                    &err,
                    "is refused by the database",
                ));
            }
        }
    }
    for section in Section::ALL.into_iter().rev() {
        let Some(writes) = plan.writes.get(&section) else {
            continue;
        };
        for name in &writes.deletes {
            sqlx::query("SAVEPOINT one").execute(&mut *conn).await?;
            let outcome = delete(conn, section, std::slice::from_ref(name)).await;
            if let Err(err) = end_savepoint(conn, outcome).await? {
                rejected.push(rejection(loaded, section, name, &err, "cannot be pruned"));
            }
        }
    }
    Ok(rejected)
}

/// The database's own words (vantage_reject's message and hint), at the field they
/// name when the file has it, else at the object.
fn rejection(
    loaded: &Loaded,
    section: Section,
    name: &str,
    err: &sqlx::Error,
    what: &str,
) -> Diagnostic {
    let (message, column, hint) = match err {
        sqlx::Error::Database(db) => {
            let pg = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>();
            (
                db.message().to_string(),
                pg.and_then(|e| e.column()).map(str::to_string),
                pg.and_then(|e| e.hint())
                    .filter(|h| !h.is_empty())
                    .map(str::to_string),
            )
        }
        other => (crate::storage::redact_error(other), None, None),
    };
    let pos = match column {
        Some(column) => loaded.field(section, name, &[field_of(&column)]),
        None => loaded.object(section, name),
    };
    let hint = hint.map(|h| format!(" ({h})")).unwrap_or_default();
    Diagnostic::at(
        pos,
        format!("{} \"{name}\" {what}: {message}{hint}", section.noun()),
    )
}

/// The file field a column is written as, where the names differ.
fn field_of(column: &str) -> &str {
    match column {
        "interval_seconds" => "interval",
        "timeout_ms" => "timeout",
        "warning_threshold_ms" => "warning_threshold",
        "critical_threshold_ms" => "critical_threshold",
        "schedule_id" => "schedule",
        "region_id" => "region",
        "group_name" => "group",
        "monitor_ids" => "monitors",
        "datacenter_ids" => "datacenters",
        "channel_id" => "channel",
        other => other,
    }
}
