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
//!
//! A *hung* leader is another matter: a stopped process (SIGSTOP, a frozen VM) keeps its
//! TCP session, so the lock never frees by itself. Hence a lease. The leader renews its
//! term row (`renewed_at`) at every check; a standby that sees the holder's backend and
//! lease unchanged for [`ElectionConfig::lease`] ends that backend
//! (`pg_terminate_backend`) and bids. The leader, for its part, may start work only
//! within half a lease of its last confirmation ([`Elector::lease_until`]): a resumed
//! leader's timers all fire at once, but that instant lies in the past, so nothing is
//! dispatched until the elector has confirmed the lock again; when it finds its session
//! gone it fences at once, without the outage grace (the lease had run out, so a standby
//! may already lead). During a database outage the grace keeps extending the lease as
//! long as the elector itself keeps running on time.
//!
//! Lost bookkeeping is re-created rather than fatal: a deleted term row is re-inserted at
//! the next renewal, and a deleted `agents` row is re-registered before a term names it
//! ([`ElectionConfig::with_registration`]).

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::agent::Registration;
use crate::storage;

/// First key of our two-key advisory locks (ASCII "VANT"); the second names the scope
/// ([`LeadershipScope::lock_key`]). The two-key form keeps other applications' one-key
/// locks from colliding with ours.
const LOCK_NAMESPACE: i32 = 0x5641_4e54;

const CHECK_INTERVAL: Duration = Duration::from_secs(1);
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The shortest lease the default check settings allow (see [`ElectionConfig::lease`]).
pub const MIN_LEASE: Duration = CHECK_INTERVAL
    .saturating_add(CHECK_TIMEOUT)
    .saturating_mul(2);

/// [`ElectionConfig::lease`] unless configured: a hung leader is replaced about this long
/// after it stopped renewing.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

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

/// `datacenter:<id>` or `evaluator`, as logs name the scope.
impl std::fmt::Display for LeadershipScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Datacenter(id) => write!(f, "datacenter:{id}"),
            Self::Evaluator => f.write_str("evaluator"),
        }
    }
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

    fn terms(self) -> Terms {
        match self {
            Self::Datacenter(id) => Terms {
                table: "leader_terms",
                key: Some(("datacenter_id", id)),
            },
            Self::Evaluator => Terms {
                table: "evaluator_terms",
                key: None,
            },
        }
    }
}

/// Where a scope's terms live: a table, and the column naming the scope in it (the
/// evaluator's table holds one scope). Only these constants and our own integer ids are
/// formatted into SQL.
struct Terms {
    table: &'static str,
    key: Option<(&'static str, i32)>,
}

impl Terms {
    /// The condition selecting this scope's rows.
    fn filter(&self) -> String {
        match self.key {
            Some((column, id)) => format!("{column} = {id}"),
            None => "TRUE".to_string(),
        }
    }

    /// The scope's column and value, each followed by a comma, to put before `term` in an
    /// INSERT (empty for a single-scope table).
    fn key_column_and_value(&self) -> (String, String) {
        match self.key {
            Some((column, id)) => (format!("{column}, "), format!("{id}, ")),
            None => (String::new(), String::new()),
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
    /// How long a standby waits, seeing the holder's lease unrenewed, before it ends the
    /// holder's session and takes over. The leader starts work only within half of it
    /// since its last confirmation, so it has stopped well before a standby acts. Half of
    /// it must cover one check interval plus a check that takes its whole timeout (see
    /// [`MIN_LEASE`]), or a healthy leader would pause between confirmations.
    pub lease: Duration,
    /// This instance's `agents` registration, re-created before a term names it if the
    /// row was lost. Without it, terms name `agent_id` (or nobody, if that row is gone).
    pub registration: Option<Registration>,
}

impl ElectionConfig {
    pub fn new(connect_options: PgConnectOptions, scope: LeadershipScope, agent_id: i64) -> Self {
        Self {
            connect_options,
            scope,
            agent_id,
            bid_interval: Duration::from_millis(500),
            check_interval: CHECK_INTERVAL,
            check_timeout: CHECK_TIMEOUT,
            outage_grace: Duration::from_secs(120),
            lease: DEFAULT_LEASE,
            registration: None,
        }
    }

    pub fn with_registration(mut self, registration: Registration) -> Self {
        self.registration = Some(registration);
        self
    }

    /// How long after a confirmation the leader may still start work.
    fn dispatch_validity(&self) -> Duration {
        self.lease / 2
    }

    fn agent_id(&self) -> i64 {
        self.registration
            .as_ref()
            .map_or(self.agent_id, Registration::id)
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

/// What a running election publishes: this instance's leadership and its lease.
/// Dropping it stops nothing: cancel the token given to [`Elector::spawn`] and await the
/// task it returned.
pub struct Elector {
    leadership: watch::Receiver<Leadership>,
    lease_until: watch::Receiver<Option<Instant>>,
}

impl Elector {
    /// Starts bidding. On `shutdown` the elector resigns (if leading: unlock, close the
    /// term, notify the standbys) and the returned task ends once it has.
    pub fn spawn(config: ElectionConfig, shutdown: CancellationToken) -> (Self, JoinHandle<()>) {
        let (publish, leadership) = watch::channel(Leadership::Standby);
        let (lease, lease_until) = watch::channel(None);
        // Two elections run in one process (its datacenter's and the evaluator's): every
        // line they log says which.
        let span = tracing::info_span!("election", scope = %config.scope);
        let task = tokio::spawn(
            Election {
                config,
                publish,
                lease,
                shutdown,
                listener: None,
                observed: None,
            }
            .run()
            .instrument(span),
        );
        (
            Self {
                leadership,
                lease_until,
            },
            task,
        )
    }

    /// Until when this instance may start leader work (dispatch probes): `None` while not
    /// leading. Consult it right before starting work, not only on changes: after a stall
    /// the instant lies in the past although nothing has changed yet.
    pub fn lease_until(&self) -> watch::Receiver<Option<Instant>> {
        self.lease_until.clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Leadership> {
        self.leadership.clone()
    }

    pub fn current(&self) -> Leadership {
        *self.leadership.borrow()
    }
}

struct Election {
    config: ElectionConfig,
    publish: watch::Sender<Leadership>,
    lease: watch::Sender<Option<Instant>>,
    shutdown: CancellationToken,
    listener: Option<PgListener>,
    /// A standby's last view of the holder's lease.
    observed: Option<ObservedLease>,
}

/// The lock holder as a standby saw it: its backend and the lease it last renewed, and
/// since when (on the standby's own clock) neither has changed. Judging on the
/// standby's clock needs no agreement between the machines' clocks.
#[derive(Debug, Clone, Copy)]
struct ObservedLease {
    pid: i32,
    renewed_at: Option<DateTime<Utc>>,
    since: Instant,
}

/// Why a period of leadership ended.
enum LeadEnd {
    Shutdown,
    /// The lock connection failed; still leader (within the grace) under this term.
    ConnectionLost {
        term: i64,
    },
    /// Fenced: the lock is lost, or the lease ran out before the failure was seen.
    Fenced,
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
    /// The elector itself was stalled past its lease while riding out the outage.
    Stalled,
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
                    LeadEnd::Fenced => break,
                    LeadEnd::ConnectionLost { term: old_term } => {
                        drop(conn);
                        match self.recover(old_term).await {
                            Recovery::Regained(new_conn, new_term) => {
                                conn = new_conn;
                                term = new_term;
                            }
                            Recovery::LostToAnother
                            | Recovery::GraceExpired
                            | Recovery::Stalled => {
                                self.step_down();
                                break;
                            }
                            Recovery::Shutdown => {
                                self.step_down();
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
                    Ok(None) => match self.end_stale_holder(c).await {
                        // Its lock is free now: bid again at once.
                        Ok(true) => continue,
                        Ok(false) => {}
                        Err(err) => {
                            tracing::warn!(error = %err, "reading the leader's lease failed; reconnecting");
                            conn = None;
                        }
                    },
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
        let sent = Instant::now();
        let acquire = async {
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                .bind(LOCK_NAMESPACE)
                .bind(self.config.scope.lock_key())
                .fetch_one(&mut *conn)
                .await?;
            if !locked {
                return Ok(None);
            }
            let agent_id = match &self.config.registration {
                Some(registration) => registration.refresh(&mut *conn, None).await?,
                None => self.config.agent_id,
            };
            let term = open_term(conn, self.config.scope, agent_id).await?;
            Ok::<_, sqlx::Error>(Some(term))
        };
        let acquired = timeout(self.config.check_timeout, acquire)
            .await
            .map_err(|_| BidError::TimedOut(self.config.check_timeout))??;
        if let Some(term) = acquired {
            tracing::info!(term, "acquired leadership");
            self.confirmed(term, sent);
        }
        Ok(acquired)
    }

    /// Leader loop: renews the lease every check interval until shutdown or failure.
    async fn lead(&mut self, conn: &mut PgConnection, term: i64) -> LeadEnd {
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return LeadEnd::Shutdown,
                _ = sleep(self.config.check_interval) => {}
            }
            let sent = Instant::now();
            let check = timeout(self.config.check_timeout, self.renew(conn, term)).await;
            let failure = match check {
                Ok(Ok(true)) => {
                    self.confirmed(term, sent);
                    continue;
                }
                Ok(Ok(false)) => "the lock is no longer held by this session".to_string(),
                Ok(Err(err)) => err.to_string(),
                Err(_) => format!(
                    "no answer within {} ms",
                    self.config.check_timeout.as_millis()
                ),
            };
            if !self.lease_valid() {
                // Stalled (stopped process, frozen VM, starved runtime) until the lease ran
                // out: a standby may have ended this session and taken over, so riding out
                // an "outage" would mean probing beside it.
                tracing::error!(term, reason = %failure, "lost the leadership lock after this instance was stalled past its lease; fencing now");
                self.step_down();
                return LeadEnd::Fenced;
            }
            if self.config.outage_grace.is_zero() {
                tracing::error!(term, reason = %failure, "lost the leadership lock connection; fencing now");
                self.step_down();
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
    /// Meanwhile the lease is extended for as long as this loop itself runs on time.
    async fn recover(&mut self, old_term: i64) -> Recovery {
        if self.config.outage_grace.is_zero() {
            return Recovery::GraceExpired;
        }
        let give_up_at = Instant::now() + self.config.outage_grace;
        let attempts = async {
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
        };
        // Connecting may take longer than the lease's validity; the extension runs beside
        // it, so only a stall of the whole process lets the lease run out.
        let mut keep_alive = tokio::time::interval(self.config.bid_interval);
        tokio::pin!(attempts);
        loop {
            tokio::select! {
                recovery = &mut attempts => return recovery,
                _ = keep_alive.tick() => {
                    if !self.extend_unconfirmed() {
                        tracing::error!(term = old_term, "stalled past the lease while the database was unreachable; fencing now");
                        return Recovery::Stalled;
                    }
                }
            }
        }
    }

    /// Confirms the lock and renews the lease; re-creates the term row if it was lost.
    /// `Ok(false)`: this session no longer holds the lock.
    async fn renew(&self, conn: &mut PgConnection, term: i64) -> Result<bool, sqlx::Error> {
        let terms = self.config.scope.terms();
        let agent_id = self.config.agent_id();
        let (held, renewed): (bool, bool) = sqlx::query_as(&format!(
            "WITH held AS (SELECT EXISTS (SELECT 1 FROM pg_locks \
               WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid() \
                 AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 2) AS held), \
             renewed AS (UPDATE {table} SET renewed_at = clock_timestamp(), \
                   agent_id = (SELECT id FROM agents WHERE id = $4) \
               WHERE {filter} AND term = $3 AND released_at IS NULL AND (SELECT held FROM held) \
               RETURNING 1) \
             SELECT (SELECT held FROM held), EXISTS (SELECT 1 FROM renewed)",
            table = terms.table,
            filter = terms.filter(),
        ))
        .bind(i64::from(LOCK_NAMESPACE))
        .bind(i64::from(self.config.scope.lock_key()))
        .bind(term)
        .bind(agent_id)
        .fetch_one(&mut *conn)
        .await?;
        if held && !renewed {
            tracing::warn!(
                term,
                table = terms.table,
                "this leader's term row was missing or closed; writing it again"
            );
            let (key_column, key_value) = terms.key_column_and_value();
            sqlx::query(&format!(
                "INSERT INTO {table} ({key_column}term, agent_id, renewed_at) \
                 VALUES ({key_value}$1, (SELECT id FROM agents WHERE id = $2), clock_timestamp()) \
                 ON CONFLICT ({key_column}term) DO UPDATE SET released_at = NULL, \
                   renewed_at = EXCLUDED.renewed_at, agent_id = EXCLUDED.agent_id",
                table = terms.table,
            ))
            .bind(term)
            .bind(agent_id)
            .execute(&mut *conn)
            .await?;
        }
        Ok(held)
    }

    /// Standby: if the lock holder's lease has not moved for a whole lease, ends the
    /// holder's backend. `Ok(true)` when it did, so the lock is free to bid for.
    async fn end_stale_holder(&mut self, conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
        let terms = self.config.scope.terms();
        // Advisory locks are per database, and one cluster serves many: only this
        // database's holder counts.
        let holder: Option<(i32, Option<DateTime<Utc>>)> = sqlx::query_as(&format!(
            "SELECT l.pid, t.renewed_at FROM pg_locks l \
             LEFT JOIN LATERAL (SELECT renewed_at FROM {table} \
                 WHERE {filter} AND released_at IS NULL ORDER BY term DESC LIMIT 1) t ON true \
             WHERE l.locktype = 'advisory' AND l.granted \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND l.classid::bigint = $1 AND l.objid::bigint = $2 AND l.objsubid = 2",
            table = terms.table,
            filter = terms.filter(),
        ))
        .bind(i64::from(LOCK_NAMESPACE))
        .bind(i64::from(self.config.scope.lock_key()))
        .fetch_optional(&mut *conn)
        .await?;
        let Some((pid, renewed_at)) = holder else {
            self.observed = None;
            return Ok(false);
        };
        let since = match self.observed {
            Some(seen) if seen.pid == pid && seen.renewed_at == renewed_at => seen.since,
            _ => {
                self.observed = Some(ObservedLease {
                    pid,
                    renewed_at,
                    since: Instant::now(),
                });
                return Ok(false);
            }
        };
        let stale_for = since.elapsed();
        if stale_for < self.config.lease {
            return Ok(false);
        }
        self.observed = None;
        tracing::warn!(
            holder_pid = pid,
            ?renewed_at,
            stale_s = stale_for.as_secs_f64(),
            "the leader has not renewed its lease; ending its session to take over"
        );
        // Waits (up to the check timeout) for the backend to exit, so the lock is free
        // when this returns true.
        let ended = sqlx::query_scalar::<_, bool>("SELECT pg_terminate_backend($1, $2)")
            .bind(pid)
            .bind(i64::try_from(self.config.check_timeout.as_millis()).unwrap_or(i64::MAX))
            .fetch_one(&mut *conn)
            .await;
        match ended {
            Ok(true) => Ok(true),
            Ok(false) => {
                tracing::warn!(
                    holder_pid = pid,
                    "the stale leader's session did not end in time; trying again after another lease"
                );
                Ok(false)
            }
            // Said once a lease, not at every bid: the observation starts over.
            Err(sqlx::Error::Database(err)) => {
                tracing::error!(
                    holder_pid = pid,
                    error = %err,
                    "cannot end the stale leader's session: run every instance as the same database login, or GRANT pg_signal_backend to this one"
                );
                Ok(false)
            }
            Err(err) => Err(err),
        }
    }

    /// Graceful hand-over: stop probing first, then release, so standbys never see a lock
    /// free while this instance still dispatches.
    async fn resign(&mut self, mut conn: PgConnection, term: i64) {
        self.step_down();
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

    /// The lock is ours under `term`, as confirmed by a statement sent at `sent`: leader
    /// work may start until half a lease after that.
    fn confirmed(&self, term: i64, sent: Instant) {
        // The lease first: whoever reacts to the new leadership finds it valid.
        self.lease
            .send_replace(Some(sent + self.config.dispatch_validity()));
        self.set(Leadership::Leader {
            term,
            lock_confirmed: true,
        });
    }

    fn lease_valid(&self) -> bool {
        self.lease
            .borrow()
            .is_some_and(|until| Instant::now() < until)
    }

    /// Extends the lease without a confirmation (riding out an outage), unless it has run
    /// out already: then this process was stalled and must not resume on its own word.
    fn extend_unconfirmed(&self) -> bool {
        if !self.lease_valid() {
            return false;
        }
        self.lease
            .send_replace(Some(Instant::now() + self.config.dispatch_validity()));
        true
    }

    /// Not leading: no lease, standby.
    fn step_down(&self) {
        self.lease.send_replace(None);
        self.set(Leadership::Standby);
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
/// so terms are strictly increasing. Terms left open by a crashed leader are closed. A
/// term whose agent row is gone names nobody rather than failing on the foreign key.
async fn open_term(
    conn: &mut PgConnection,
    scope: LeadershipScope,
    agent_id: i64,
) -> Result<i64, sqlx::Error> {
    let terms = scope.terms();
    let (key_column, key_value) = terms.key_column_and_value();
    let mut tx = conn.begin().await?;
    sqlx::query(&format!(
        "UPDATE {table} SET released_at = now() WHERE {filter} AND released_at IS NULL",
        table = terms.table,
        filter = terms.filter(),
    ))
    .execute(&mut *tx)
    .await?;
    let term = sqlx::query_scalar(&format!(
        "INSERT INTO {table} ({key_column}term, agent_id) \
         SELECT {key_value}COALESCE(MAX(term), 0) + 1, (SELECT id FROM agents WHERE id = $1) \
         FROM {table} WHERE {filter} \
         RETURNING term",
        table = terms.table,
        filter = terms.filter(),
    ))
    .bind(agent_id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(term)
}

async fn close_term(
    conn: &mut PgConnection,
    scope: LeadershipScope,
    term: i64,
) -> Result<(), sqlx::Error> {
    let terms = scope.terms();
    sqlx::query(&format!(
        "UPDATE {table} SET released_at = now() \
         WHERE {filter} AND term = $1 AND released_at IS NULL",
        table = terms.table,
        filter = terms.filter(),
    ))
    .bind(term)
    .execute(conn)
    .await?;
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
