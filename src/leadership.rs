//! Leadership: which instance runs a job that must run exactly once. Two scopes use it
//! ([`LeadershipScope`]): each datacenter elects the instance that runs its monitors, and
//! the whole system elects the one instance that evaluates incidents.
//!
//! Owns the scope's Postgres advisory lock, the dedicated connection that holds it, and
//! the term rows (`leader_terms` or `evaluator_terms`). It publishes the current
//! [`Leadership`] on a `watch` channel; the runner reacts to changes (starts or stops its
//! scheduler or evaluator). It does not schedule, probe, evaluate or write heartbeats.
//!
//! The loop, in the manner of river's elector: *bid* (standby: `pg_try_advisory_lock`
//! every [`ElectionConfig::bid_interval`], or at once when a resigning leader notifies),
//! *keep* (leader: check the lock connection every [`ElectionConfig::check_interval`]
//! under [`ElectionConfig::check_timeout`]), *resign* (on shutdown: unlock, close the
//! term, notify the standbys so they bid immediately).
//!
//! Why a dedicated connection: a session advisory lock belongs to one server session. A
//! pooled connection can be handed to other code or reaped by the pool, and the lock then
//! vanishes silently (two leaders). So the lock lives on a `PgConnection` nobody else
//! touches, with server-side TCP keepalives short enough that Postgres releases a dead
//! client's lock in about ten seconds instead of the default two hours.
//!
//! When the lock connection fails, the leader does not stop at once: a Postgres restart or
//! failover would otherwise leave a hole in the data. It keeps leading, with its old term,
//! for up to [`ElectionConfig::outage_grace`] while trying to reconnect (its heartbeats are
//! spooled by the writer meanwhile). It steps down as soon as it learns that another
//! instance holds the lock, or when the grace runs out. A standby that took over in the
//! meantime probes the same deterministic slots, and heartbeats are keyed by slot, so the
//! overlap cannot create duplicate rows. Set the grace to zero for strict self-fencing.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

use crate::storage;

/// First key of our two-key advisory locks (ASCII "VANT"); the second names the scope
/// ([`LeadershipScope::lock_key`]). The two-key form keeps other applications' one-key
/// locks from colliding with ours.
const LOCK_NAMESPACE: i32 = 0x5641_4e54;

/// Channel on which a resigning leader tells standbys to bid now; payload:
/// [`LeadershipScope::channel_payload`].
pub const LEADERSHIP_CHANNEL: &str = "vantage_leadership";

/// What a lock elects a leader of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeadershipScope {
    /// The instance that probes this datacenter's monitors; terms in `leader_terms`.
    Datacenter(i32),
    /// The one instance of the whole system that evaluates incidents; terms in
    /// `evaluator_terms`.
    Evaluator,
}

impl LeadershipScope {
    /// Second key of the advisory lock. Datacenter ids are serial (from 1), so 0 is free
    /// for the evaluator.
    fn lock_key(self) -> i32 {
        match self {
            Self::Datacenter(id) => id,
            Self::Evaluator => 0,
        }
    }

    fn channel_payload(self) -> String {
        match self {
            Self::Datacenter(id) => id.to_string(),
            Self::Evaluator => "evaluator".to_string(),
        }
    }

    fn application_name(self) -> String {
        match self {
            Self::Datacenter(id) => format!("vantage-leadership-dc{id}"),
            Self::Evaluator => "vantage-leadership-evaluator".to_string(),
        }
    }
}

/// This instance's part in its datacenter, as published to the rest of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leadership {
    /// Not leading: do not dispatch probes.
    Standby,
    /// Leading under `term`. `lock_confirmed` is false while the lock connection is lost
    /// and the instance is riding out a database outage within its grace period.
    Leader { term: i64, lock_confirmed: bool },
}

impl Leadership {
    pub fn is_leader(self) -> bool {
        matches!(self, Self::Leader { .. })
    }

    pub fn term(self) -> Option<i64> {
        match self {
            Self::Leader { term, .. } => Some(term),
            Self::Standby => None,
        }
    }

    pub fn role_name(self) -> &'static str {
        match self {
            Self::Leader { .. } => "leader",
            Self::Standby => "standby",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ElectionConfig {
    /// Where the lock connection goes: straight to Postgres, never through a transaction
    /// pooler (PgBouncer in transaction mode breaks session locks and LISTEN).
    pub connect_options: PgConnectOptions,
    pub scope: LeadershipScope,
    pub agent_id: i64,
    /// How often a standby tries to take the lock.
    pub bid_interval: Duration,
    /// How often the leader confirms it still holds the lock.
    pub check_interval: Duration,
    /// How long one confirmation may take before the connection counts as lost.
    pub check_timeout: Duration,
    /// How long a leader that lost its lock connection keeps leading while reconnecting.
    pub outage_grace: Duration,
}

impl ElectionConfig {
    pub fn new(connect_options: PgConnectOptions, scope: LeadershipScope, agent_id: i64) -> Self {
        Self {
            connect_options,
            scope,
            agent_id,
            bid_interval: Duration::from_millis(500),
            check_interval: Duration::from_secs(1),
            check_timeout: Duration::from_secs(2),
            outage_grace: Duration::from_secs(120),
        }
    }

    /// Session settings that make the *server* notice a vanished client quickly, so a
    /// crashed or partitioned leader's lock is released within ~10 s (sqlx sets no client
    /// keepalive, and the server default would keep the lock for over two hours).
    fn lock_connection_options(&self) -> PgConnectOptions {
        self.connect_options
            .clone()
            .application_name(&self.scope.application_name())
            .options([
                ("tcp_keepalives_idle", "5"),
                ("tcp_keepalives_interval", "2"),
                ("tcp_keepalives_count", "3"),
                ("tcp_user_timeout", "9000"),
            ])
            .disable_statement_logging()
    }
}

/// A running election for one instance. Dropping it does not resign: cancel the token
/// given to [`Elector::start`] and await [`Elector::stopped`].
pub struct Elector {
    leadership: watch::Receiver<Leadership>,
    task: JoinHandle<()>,
}

impl Elector {
    /// Starts bidding. On `shutdown` the elector resigns (if leading) and its task ends.
    pub fn start(config: ElectionConfig, shutdown: CancellationToken) -> Self {
        let (publish, leadership) = watch::channel(Leadership::Standby);
        let task = tokio::spawn(
            Election {
                config,
                publish,
                shutdown,
                listener: None,
            }
            .run(),
        );
        Self { leadership, task }
    }

    pub fn subscribe(&self) -> watch::Receiver<Leadership> {
        self.leadership.clone()
    }

    pub fn current(&self) -> Leadership {
        *self.leadership.borrow()
    }

    /// Waits until the elector has resigned and closed its connections.
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

struct Election {
    config: ElectionConfig,
    publish: watch::Sender<Leadership>,
    shutdown: CancellationToken,
    listener: Option<PgListener>,
}

/// Why a period of leadership ended.
enum LeadEnd {
    Shutdown,
    /// The lock connection failed; still leader (within the grace) under this term.
    ConnectionLost {
        term: i64,
    },
}

#[derive(Debug, thiserror::Error)]
enum BidError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

/// How an attempt to recover leadership after losing the lock connection ended.
enum Recovery {
    Regained(PgConnection, i64),
    LostToAnother,
    GraceExpired,
    Shutdown,
}

impl Election {
    async fn run(mut self) {
        loop {
            let Some((lock_conn, term)) = self.bid_until_leader().await else {
                return;
            };
            // Only standbys need resignation notices; a leader's would just pile up.
            self.listener = None;
            let (mut conn, mut term) = (lock_conn, term);
            loop {
                match self.lead(&mut conn, term).await {
                    LeadEnd::Shutdown => {
                        self.resign(conn, term).await;
                        return;
                    }
                    LeadEnd::ConnectionLost { term: old_term } => {
                        drop(conn);
                        match self.recover(old_term).await {
                            Recovery::Regained(new_conn, new_term) => {
                                conn = new_conn;
                                term = new_term;
                            }
                            Recovery::LostToAnother | Recovery::GraceExpired => {
                                self.set(Leadership::Standby);
                                break;
                            }
                            Recovery::Shutdown => {
                                self.set(Leadership::Standby);
                                return;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Standby loop: returns the lock connection and the new term once the lock is ours,
    /// or `None` on shutdown.
    async fn bid_until_leader(&mut self) -> Option<(PgConnection, i64)> {
        let mut conn: Option<PgConnection> = None;
        loop {
            if self.shutdown.is_cancelled() {
                return None;
            }
            if conn.is_none() {
                conn = self.connect().await;
            }
            if let Some(c) = conn.as_mut() {
                match self.try_acquire(c).await {
                    Ok(Some(term)) => return conn.map(|c| (c, term)),
                    Ok(None) => {}
                    Err(err) => {
                        tracing::warn!(error = %err, "leadership bid failed; reconnecting");
                        conn = None;
                    }
                }
            }
            self.wait_for_bid_chance().await;
        }
    }

    /// Sleeps one bid interval, or less when a resigning leader notifies us.
    async fn wait_for_bid_chance(&mut self) {
        let interval = self.config.bid_interval;
        if self.listener.is_none() {
            self.listener = storage::listen(
                &self.config.connect_options,
                LEADERSHIP_CHANNEL,
                self.config.check_timeout,
            )
            .await;
        }
        let Some(listener) = self.listener.as_mut() else {
            tokio::select! {
                _ = sleep(interval) => {}
                _ = self.shutdown.cancelled() => {}
            }
            return;
        };
        let payload = self.config.scope.channel_payload();
        let deadline = Instant::now() + interval;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = self.shutdown.cancelled() => return,
                notification = listener.recv() => match notification {
                    Ok(n) if n.payload() == payload => return,
                    Ok(_) => continue,
                    Err(_) => {
                        // The listener reconnects lazily; notifications sent meanwhile are
                        // lost, which the periodic bid covers.
                        self.listener = None;
                        return;
                    }
                },
            }
        }
    }

    async fn connect(&self) -> Option<PgConnection> {
        let options = self.config.lock_connection_options();
        match timeout(self.config.check_timeout * 2, options.connect()).await {
            Ok(Ok(conn)) => Some(conn),
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "lock connection failed");
                None
            }
            Err(_) => {
                tracing::debug!("lock connection timed out");
                None
            }
        }
    }

    /// One bid. `Ok(Some(term))` when this instance became leader.
    async fn try_acquire(&self, conn: &mut PgConnection) -> Result<Option<i64>, BidError> {
        let acquire = async {
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                .bind(LOCK_NAMESPACE)
                .bind(self.config.scope.lock_key())
                .fetch_one(&mut *conn)
                .await?;
            if !locked {
                return Ok(None);
            }
            let term = open_term(conn, self.config.scope, self.config.agent_id).await?;
            Ok::<_, sqlx::Error>(Some(term))
        };
        let acquired = timeout(self.config.check_timeout, acquire)
            .await
            .map_err(|_| BidError::TimedOut(self.config.check_timeout))??;
        if let Some(term) = acquired {
            tracing::info!(term, "acquired leadership");
            self.set(Leadership::Leader {
                term,
                lock_confirmed: true,
            });
        }
        Ok(acquired)
    }

    /// Leader loop: confirms the lock every check interval until shutdown or failure.
    async fn lead(&mut self, conn: &mut PgConnection, term: i64) -> LeadEnd {
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return LeadEnd::Shutdown,
                _ = sleep(self.config.check_interval) => {}
            }
            let check = timeout(self.config.check_timeout, self.holds_lock(conn)).await;
            let failure = match check {
                Ok(Ok(true)) => continue,
                Ok(Ok(false)) => "the lock is no longer held by this session".to_string(),
                Ok(Err(err)) => err.to_string(),
                Err(_) => format!(
                    "no answer within {} ms",
                    self.config.check_timeout.as_millis()
                ),
            };
            if self.config.outage_grace.is_zero() {
                tracing::error!(term, reason = %failure, "lost the leadership lock connection; fencing now");
                self.set(Leadership::Standby);
            } else {
                tracing::warn!(
                    term,
                    reason = %failure,
                    grace_s = self.config.outage_grace.as_secs_f64(),
                    "lost the leadership lock connection; still probing while reconnecting"
                );
                self.set(Leadership::Leader {
                    term,
                    lock_confirmed: false,
                });
            }
            return LeadEnd::ConnectionLost { term };
        }
    }

    /// After losing the lock connection: reconnect and re-take the lock within the grace.
    async fn recover(&mut self, old_term: i64) -> Recovery {
        if self.config.outage_grace.is_zero() {
            return Recovery::GraceExpired;
        }
        let give_up_at = Instant::now() + self.config.outage_grace;
        loop {
            if Instant::now() >= give_up_at {
                tracing::error!(
                    term = old_term,
                    "database unreachable past the outage grace; stopping probes"
                );
                return Recovery::GraceExpired;
            }
            if let Some(mut conn) = self.connect().await {
                match self.try_acquire(&mut conn).await {
                    Ok(Some(term)) => return Recovery::Regained(conn, term),
                    Ok(None) => {
                        tracing::warn!(
                            term = old_term,
                            "another instance holds the leadership lock; stepping down"
                        );
                        return Recovery::LostToAnother;
                    }
                    Err(err) => tracing::debug!(error = %err, "re-taking the lock failed"),
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return Recovery::Shutdown,
                _ = sleep(self.config.bid_interval) => {}
            }
        }
    }

    async fn holds_lock(&self, conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks \
             WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid() \
               AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 2)",
        )
        .bind(i64::from(LOCK_NAMESPACE))
        .bind(i64::from(self.config.scope.lock_key()))
        .fetch_one(conn)
        .await
    }

    /// Graceful hand-over: stop probing first, then release, so standbys never see a lock
    /// free while this instance still dispatches.
    async fn resign(&mut self, mut conn: PgConnection, term: i64) {
        self.set(Leadership::Standby);
        let scope = self.config.scope;
        let release = async {
            sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                .bind(LOCK_NAMESPACE)
                .bind(scope.lock_key())
                .execute(&mut conn)
                .await?;
            close_term(&mut conn, scope, term).await?;
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(LEADERSHIP_CHANNEL)
                .bind(scope.channel_payload())
                .execute(&mut conn)
                .await?;
            conn.close().await
        };
        match timeout(self.config.check_timeout, release).await {
            Ok(Ok(())) => tracing::info!(term, "resigned leadership"),
            // Closing the session releases the lock anyway; standbys then find it at their
            // next bid instead of at once.
            Ok(Err(err)) => tracing::warn!(term, error = %err, "resigning failed"),
            Err(_) => tracing::warn!(term, "resigning timed out"),
        }
    }

    fn set(&self, leadership: Leadership) {
        self.publish.send_if_modified(|current| {
            let changed = *current != leadership;
            *current = leadership;
            changed
        });
    }
}

/// Opens the next term of the scope. Runs on the lock connection while holding the lock,
/// so terms are strictly increasing. Terms left open by a crashed leader are closed.
async fn open_term(
    conn: &mut PgConnection,
    scope: LeadershipScope,
    agent_id: i64,
) -> Result<i64, sqlx::Error> {
    let mut tx = conn.begin().await?;
    let term = match scope {
        LeadershipScope::Datacenter(datacenter_id) => {
            sqlx::query(
                "UPDATE leader_terms SET released_at = now() \
                 WHERE datacenter_id = $1 AND released_at IS NULL",
            )
            .bind(datacenter_id)
            .execute(&mut *tx)
            .await?;
            sqlx::query_scalar(
                "INSERT INTO leader_terms (datacenter_id, term, agent_id) \
                 SELECT $1, COALESCE(MAX(term), 0) + 1, $2 FROM leader_terms WHERE datacenter_id = $1 \
                 RETURNING term",
            )
            .bind(datacenter_id)
            .bind(agent_id)
            .fetch_one(&mut *tx)
            .await?
        }
        LeadershipScope::Evaluator => {
            sqlx::query("UPDATE evaluator_terms SET released_at = now() WHERE released_at IS NULL")
                .execute(&mut *tx)
                .await?;
            sqlx::query_scalar(
                "INSERT INTO evaluator_terms (term, agent_id) \
                 SELECT COALESCE(MAX(term), 0) + 1, $1 FROM evaluator_terms RETURNING term",
            )
            .bind(agent_id)
            .fetch_one(&mut *tx)
            .await?
        }
    };
    tx.commit().await?;
    Ok(term)
}

async fn close_term(
    conn: &mut PgConnection,
    scope: LeadershipScope,
    term: i64,
) -> Result<(), sqlx::Error> {
    match scope {
        LeadershipScope::Datacenter(datacenter_id) => {
            sqlx::query(
                "UPDATE leader_terms SET released_at = now() \
                 WHERE datacenter_id = $1 AND term = $2 AND released_at IS NULL",
            )
            .bind(datacenter_id)
            .bind(term)
            .execute(conn)
            .await?
        }
        LeadershipScope::Evaluator => {
            sqlx::query(
                "UPDATE evaluator_terms SET released_at = now() \
                 WHERE term = $1 AND released_at IS NULL",
            )
            .bind(term)
            .execute(conn)
            .await?
        }
    };
    Ok(())
}

/// The datacenters whose leadership lock is held right now, in this database (a test
/// cluster holds many). The lock is the truth; `agents.role` may lag behind it.
pub async fn datacenters_with_leader(pool: &sqlx::PgPool) -> Result<HashSet<i32>, sqlx::Error> {
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT objid::bigint FROM pg_locks \
         WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid::bigint = $1 \
           AND objid::bigint <> $2 \
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .bind(i64::from(LOCK_NAMESPACE))
    .bind(i64::from(LeadershipScope::Evaluator.lock_key()))
    .fetch_all(pool)
    .await?;
    Ok(ids
        .into_iter()
        .filter_map(|id| i32::try_from(id).ok())
        .collect())
}
