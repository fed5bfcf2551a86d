//! The heartbeat writer: probes hand heartbeats to a [`HeartbeatSender`], which never
//! blocks and never waits on the database; one writer task batches them (by size and by
//! time) and stores each batch with a single `INSERT ... SELECT unnest($1), unnest($2),
//! ...`, one array parameter per column; duplicate keys are harmless (a batch that
//! meets one is stored again with `ON CONFLICT DO NOTHING`).
//!
//! Durability, and its bounds (README, "Guarantees under faults"): once Postgres has
//! stored nothing for [`WriterConfig::spool_flush_interval`] (it is away, or hung), a
//! heartbeat it has not stored within that interval of its arrival is appended to a
//! spool file under [`WriterConfig::spool_dir`] and fsync'd, so a crash during an
//! outage loses about that interval of heartbeats. A batch whose insert is still in
//! flight is spooled too; if the insert lands after all, the replayed copy is a
//! harmless duplicate. While inserts keep landing, a backlog in memory is not spooled:
//! it drains faster from memory than through the disk. The writer then stores from the
//! spool (several batches in flight, committed in order) and new heartbeats follow
//! through it until it is drained. A spool left by a stopped or crashed process is
//! replayed when the next writer starts. A missing daily partition is created and the
//! batch retried. Shutdown flushes what it can within a deadline and spools the rest.
//!
//! Memory holds at most [`WriterConfig::memory_rows`] heartbeats that are neither
//! stored nor spooled; reaching it spools them at once. Only while the spool cannot be
//! written (disk full, read-only) can it stay full: heartbeats arriving then are lost,
//! counted in `dropped_rows`, logged once per episode with their number, and never
//! reported as spooled. The spool is retried once per flush interval meanwhile, and
//! rows still in memory go straight to Postgres when it answers.
//!
//! Order of storage: heartbeats spooled by earlier processes, then this process's
//! spool, then memory (oldest first); while this process's spool holds unstored rows,
//! new heartbeats queue behind it, so they never overtake older ones.
//!
//! The task sleeps until its next deadline (a batch due, a retry, a spool flush) or an
//! event (a heartbeat, an insert finished); while Postgres is away it does not poll.
//!
//! It owns the spool directory's files and nothing else on disk; it does not decide
//! what is probed nor touch leadership.

use std::collections::{HashMap, VecDeque};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use futures_util::future::BoxFuture;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::{Id, JoinError, JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::spool::SpoolFile;
use super::{partitions, redact_error};
use crate::metrics::Metrics;
use crate::Heartbeat;

/// Tuning of the writer. The spool directory comes from the caller (`vantage run` reads
/// `VANTAGE_SPOOL_DIR`); the default is `.vantage/spool`.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Where spool files live; keep it on a persistent volume.
    pub spool_dir: PathBuf,
    /// A batch is written when this many heartbeats are waiting...
    pub batch_rows: usize,
    /// ...or when the oldest waiting one is this old.
    pub batch_delay: Duration,
    /// Once Postgres has stored nothing for this long, heartbeats that have waited this
    /// long in memory are written to the spool and fsync'd: what a crash during an
    /// outage can lose.
    pub spool_flush_interval: Duration,
    /// The most heartbeats held in memory neither stored nor spooled. Reaching it spools
    /// them at once; when the spool cannot be written, later heartbeats are lost (and
    /// counted) until it can, or until Postgres stores what memory holds.
    pub memory_rows: usize,
    /// An insert taking longer than this counts as failed (and is retried). It also bounds
    /// how long a connection silently cut by a network partition (no RST, no keepalive on
    /// the client side) can hold the writer up once the network heals.
    pub insert_timeout: Duration,
    /// The longest wait between retries while Postgres is away.
    pub max_retry_delay: Duration,
    /// How long [`HeartbeatWriter::shutdown`] tries to store buffered heartbeats
    /// before spooling them.
    pub shutdown_timeout: Duration,
    /// Batches from memory written concurrently (pipelining hides commit latency and
    /// uses several server processes); spool replay pipelines as many.
    pub max_inflight: usize,
    /// Where batch sizes and insert latencies are reported, if anywhere.
    pub metrics: Option<Arc<Metrics>>,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            spool_dir: PathBuf::from(".vantage/spool"),
            batch_rows: 1000,
            batch_delay: Duration::from_millis(250),
            spool_flush_interval: Duration::from_secs(1),
            memory_rows: 100_000,
            insert_timeout: Duration::from_secs(10),
            max_retry_delay: Duration::from_secs(2),
            shutdown_timeout: Duration::from_secs(10),
            max_inflight: 4,
            metrics: None,
        }
    }
}

/// Counters and gauges of the writer, updated as it works (export them as metrics).
#[derive(Debug, Default)]
pub struct WriterStats {
    received_rows: AtomicU64,
    buffered_rows: AtomicU64,
    spooled_rows: AtomicU64,
    spool_bytes: AtomicU64,
    inserted_rows: AtomicU64,
    duplicate_rows: AtomicU64,
    batches: AtomicU64,
    insert_failures: AtomicU64,
    spool_write_failures: AtomicU64,
    partitions_created: AtomicU64,
    rejected_rows: AtomicU64,
    dropped_rows: AtomicU64,
    degraded: AtomicBool,
}

/// A point-in-time copy of [`WriterStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct WriterSnapshot {
    /// Heartbeats handed to a sender since start.
    pub received_rows: u64,
    /// In memory only (queued, batched or in flight), neither stored nor spooled (gauge).
    pub buffered_rows: u64,
    /// In spool files, not replayed yet (gauge).
    pub spooled_rows: u64,
    /// Bytes of spool not yet replayed (gauge).
    pub spool_bytes: u64,
    /// Rows Postgres inserted.
    pub inserted_rows: u64,
    /// Rows Postgres already had (same slot written twice, a spooled copy of a batch
    /// that landed after all): harmless.
    pub duplicate_rows: u64,
    /// Successful insert statements.
    pub batches: u64,
    /// Failed insert attempts (each is retried).
    pub insert_failures: u64,
    /// Failed attempts to write the spool (disk full, read-only); retried once per
    /// flush interval.
    pub spool_write_failures: u64,
    /// Partitions created because a heartbeat's day had none.
    pub partitions_created: u64,
    /// Rows Postgres refused as invalid, kept in `rejected-*.jsonl` in the spool dir.
    pub rejected_rows: u64,
    /// Rows lost: neither stored nor spooled (memory full while the spool could not be
    /// written, or the spool unwritable at shutdown), or sent after shutdown.
    pub dropped_rows: u64,
    /// Postgres is currently unreachable for the writer.
    pub degraded: bool,
}

impl WriterStats {
    pub fn snapshot(&self) -> WriterSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WriterSnapshot {
            received_rows: get(&self.received_rows),
            buffered_rows: get(&self.buffered_rows),
            spooled_rows: get(&self.spooled_rows),
            spool_bytes: get(&self.spool_bytes),
            inserted_rows: get(&self.inserted_rows),
            duplicate_rows: get(&self.duplicate_rows),
            batches: get(&self.batches),
            insert_failures: get(&self.insert_failures),
            spool_write_failures: get(&self.spool_write_failures),
            partitions_created: get(&self.partitions_created),
            rejected_rows: get(&self.rejected_rows),
            dropped_rows: get(&self.dropped_rows),
            degraded: self.degraded.load(Ordering::Relaxed),
        }
    }
}

/// The probes' end of the writer. Cheap to clone.
#[derive(Clone)]
pub struct HeartbeatSender {
    tx: mpsc::UnboundedSender<Heartbeat>,
    stats: Arc<WriterStats>,
}

impl std::fmt::Debug for HeartbeatSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeartbeatSender").finish_non_exhaustive()
    }
}

impl HeartbeatSender {
    /// Queues a heartbeat. Never blocks: the queue is drained continuously by the
    /// writer task, which moves rows to disk rather than letting memory grow without
    /// bound while Postgres is away.
    pub fn send(&self, heartbeat: Heartbeat) {
        self.stats.received_rows.fetch_add(1, Ordering::Relaxed);
        self.stats.buffered_rows.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(heartbeat).is_err() {
            self.stats.buffered_rows.fetch_sub(1, Ordering::Relaxed);
            let before = self.stats.dropped_rows.fetch_add(1, Ordering::Relaxed);
            if before == 0 {
                tracing::error!("a heartbeat was sent after the writer shut down and is lost");
            }
        }
    }
}

/// What [`HeartbeatWriter::shutdown`] did with the heartbeats it still had.
#[derive(Debug, Clone)]
pub struct FlushSummary {
    /// Rows stored during shutdown.
    pub flushed_rows: u64,
    /// Rows written to the spool (and fsync'd) during shutdown.
    pub spooled_rows: u64,
    /// Rows that could be neither stored nor spooled during shutdown: lost.
    pub lost_rows: u64,
    /// Spool files left for the next start, and the rows in them.
    pub spool_files: Vec<PathBuf>,
    pub rows_left_in_spool: u64,
    pub elapsed: Duration,
    /// The counters at the end.
    pub stats: WriterSnapshot,
}

/// The writer task's handle.
pub struct HeartbeatWriter {
    stats: Arc<WriterStats>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<FlushSummary>>,
}

impl HeartbeatWriter {
    /// Starts the writer. Spool files left in `config.spool_dir` by earlier processes
    /// are adopted and replayed (in order, in the background) before newer heartbeats.
    pub async fn spawn(
        pool: PgPool,
        config: WriterConfig,
    ) -> Result<(HeartbeatSender, HeartbeatWriter), std::io::Error> {
        std::fs::create_dir_all(&config.spool_dir)?;
        let backlog: VecDeque<SpoolFile> = SpoolFile::adopt_orphans(&config.spool_dir)?.into();
        let stats = Arc::new(WriterStats::default());
        let rows: u64 = backlog.iter().map(|f| f.unread_rows()).sum();
        let bytes: u64 = backlog.iter().map(|f| f.unread_bytes()).sum();
        stats.spooled_rows.store(rows, Ordering::Relaxed);
        stats.spool_bytes.store(bytes, Ordering::Relaxed);
        if !backlog.is_empty() {
            tracing::info!(
                rows,
                files = backlog.len(),
                dir = %config.spool_dir.display(),
                "replaying heartbeats spooled by an earlier process"
            );
        }
        if let Some(metrics) = &config.metrics {
            metrics.watch_writer(stats.clone());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let state = State {
            pool,
            stats: stats.clone(),
            memory: VecDeque::new(),
            backlog,
            own: None,
            inflight: JoinSet::new(),
            batches: HashMap::new(),
            next_seq: 0,
            retry_at: None,
            backoff: Duration::ZERO,
            last_stored: Instant::now(),
            spool_trouble: None,
            spooling_logged: false,
            config,
        };
        let task = tokio::spawn(state.run(rx, shutdown.clone()));
        Ok((
            HeartbeatSender {
                tx,
                stats: stats.clone(),
            },
            HeartbeatWriter {
                stats,
                shutdown,
                task: Some(task),
            },
        ))
    }

    pub fn stats(&self) -> Arc<WriterStats> {
        self.stats.clone()
    }

    /// Stops accepting heartbeats, stores what is buffered while Postgres answers
    /// (within `shutdown_timeout`) and spools the rest for the next start.
    pub async fn shutdown(mut self) -> FlushSummary {
        self.shutdown.cancel();
        let task = self.task.take().expect("shutdown once");
        match task.await {
            Ok(summary) => summary,
            Err(err) => std::panic::resume_unwind(err.into_panic()),
        }
    }
}

impl Drop for HeartbeatWriter {
    fn drop(&mut self) {
        // Dropped without shutdown(): the task still flushes or spools on its own as
        // long as the runtime runs.
        self.shutdown.cancel();
    }
}

/// Where the rows of an insert came from, so success and failure can be booked.
enum Source {
    Memory,
    /// This byte range of an earlier process's spool (the front of the backlog).
    Backlog(u64, u64),
    /// This byte range of this process's spool.
    Own(u64, u64),
}

/// Which spool file a replay reads.
#[derive(Clone, Copy)]
enum Replay {
    Backlog,
    Own,
}

impl Replay {
    fn is_source_of(self, batch: &Batch) -> bool {
        matches!(
            (self, &batch.source),
            (Replay::Backlog, Source::Backlog(..)) | (Replay::Own, Source::Own(..))
        )
    }
}

/// A batch being inserted; its rows stay here so a failed (or panicked) insert loses
/// nothing.
struct Batch {
    source: Source,
    rows: Arc<Vec<Heartbeat>>,
    /// Batches are numbered as taken, so spooling the ones in flight keeps their order.
    seq: u64,
    /// When the oldest row of a memory batch arrived.
    arrived: Instant,
    /// A memory batch whose rows were also spooled while its insert was in flight: its
    /// rows are no longer at risk and are not taken back into memory if it fails.
    spooled: bool,
}

type InsertDone = (Id, Result<Result<Inserted, sqlx::Error>, JoinError>);

#[derive(Default)]
struct Inserted {
    /// How long the statement(s) took.
    took: Duration,
    inserted: u64,
    duplicates: u64,
    partitions: Vec<String>,
    rejected: Vec<(Heartbeat, String)>,
}

/// A period during which the spool could not be written.
struct SpoolTrouble {
    since: Instant,
    /// No spool write is tried before this: one attempt per flush interval, not one
    /// per heartbeat.
    retry_at: Instant,
    /// Heartbeats lost during this period.
    lost_rows: u64,
}

struct State {
    pool: PgPool,
    config: WriterConfig,
    stats: Arc<WriterStats>,
    /// Heartbeats neither stored nor spooled, oldest first, with their arrival time.
    memory: VecDeque<(Instant, Heartbeat)>,
    /// Spool files of earlier processes, oldest first.
    backlog: VecDeque<SpoolFile>,
    /// This process's spool file while it holds unstored rows; kept (empty) while the
    /// spool is in trouble, so a full disk does not see a file created and deleted per
    /// attempt.
    own: Option<SpoolFile>,
    inflight: JoinSet<Result<Inserted, sqlx::Error>>,
    batches: HashMap<Id, Batch>,
    next_seq: u64,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// When an insert last succeeded (or the writer started).
    last_stored: Instant,
    spool_trouble: Option<SpoolTrouble>,
    /// "Spooling" was said for the current spell, so it is said once.
    spooling_logged: bool,
}

impl State {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Heartbeat>,
        shutdown: CancellationToken,
    ) -> FlushSummary {
        let mut incoming = Vec::with_capacity(self.config.batch_rows);
        let mut channel_open = true;
        loop {
            self.spool_due(Instant::now());
            self.start_inserts(false);
            let wakeup = self.next_wakeup();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(done) = self.inflight.join_next_with_id(), if !self.inflight.is_empty() => {
                    self.finish_insert(split(done));
                }
                n = rx.recv_many(&mut incoming, self.config.batch_rows), if channel_open => {
                    // 0: every sender is gone; keep storing what we have until shutdown.
                    channel_open = n > 0;
                    let now = Instant::now();
                    for heartbeat in incoming.drain(..) {
                        self.accept(now, heartbeat);
                    }
                }
                _ = sleep_until(wakeup) => {}
            }
        }
        self.shutdown(rx).await
    }

    /// Takes a heartbeat into memory; when memory is full, spools it first, and when
    /// the spool cannot take it either, loses the heartbeat (counted).
    fn accept(&mut self, now: Instant, heartbeat: Heartbeat) {
        if self.rows_at_risk() >= self.config.memory_rows {
            self.spool_memory(now);
            if self.rows_at_risk() >= self.config.memory_rows {
                self.lose(1);
                return;
            }
        }
        self.memory.push_back((now, heartbeat));
    }

    fn lose(&mut self, rows: u64) {
        self.stats.buffered_rows.fetch_sub(rows, Ordering::Relaxed);
        self.stats.dropped_rows.fetch_add(rows, Ordering::Relaxed);
        if let Some(trouble) = &mut self.spool_trouble {
            trouble.lost_rows += rows;
        }
    }

    /// Memory batches in flight whose rows exist nowhere else.
    fn unspooled_batches(&self) -> impl Iterator<Item = &Batch> {
        self.batches
            .values()
            .filter(|b| matches!(b.source, Source::Memory) && !b.spooled)
    }

    /// Heartbeats a crash would lose: in memory only, queued or in flight.
    fn rows_at_risk(&self) -> usize {
        self.memory.len()
            + self
                .unspooled_batches()
                .map(|b| b.rows.len())
                .sum::<usize>()
    }

    fn oldest_at_risk(&self) -> Option<Instant> {
        self.unspooled_batches()
            .map(|b| b.arrived)
            .chain(self.memory.front().map(|(at, _)| *at))
            .min()
    }

    /// The own spool holds rows not stored yet: new heartbeats queue behind them.
    fn replaying_own(&self) -> bool {
        self.own.as_ref().is_some_and(|f| !f.is_drained())
    }

    /// When heartbeats at risk must go to the spool: once the oldest has waited the
    /// flush interval while Postgres stored nothing for as long.
    fn spool_deadline(&self) -> Option<Instant> {
        let interval = self.config.spool_flush_interval;
        self.oldest_at_risk()
            .map(|at| (at + interval).max(self.last_stored + interval))
    }

    /// Spools what must not wait in memory any longer: heartbeats past the
    /// [`State::spool_deadline`], and, while the own spool is replayed (new rows queue
    /// behind it anyway), every full batch.
    fn spool_due(&mut self, now: Instant) {
        let aged = self.spool_deadline().is_some_and(|at| now >= at);
        let queued = self.replaying_own() && self.memory.len() >= self.config.batch_rows;
        if aged || queued {
            self.spool_memory(now);
        }
        if self.spool_trouble.is_some() && self.rows_at_risk() == 0 {
            self.end_spool_trouble("nothing is left at risk: Postgres stored it");
        }
    }

    /// Appends every heartbeat at risk to the own spool, oldest first: memory batches in
    /// flight (they stay in flight: if the insert lands, the spooled copy is a harmless
    /// duplicate), then memory. Stops at the first failure; while the spool is in
    /// trouble, tries at most once per flush interval.
    fn spool_memory(&mut self, now: Instant) {
        if self
            .spool_trouble
            .as_ref()
            .is_some_and(|t| now < t.retry_at)
        {
            return;
        }
        let mut in_flight: Vec<(u64, Id)> = self
            .batches
            .iter()
            .filter(|(_, b)| matches!(b.source, Source::Memory) && !b.spooled)
            .map(|(id, b)| (b.seq, *id))
            .collect();
        in_flight.sort_unstable();
        for (_, id) in in_flight {
            let rows = self.batches[&id].rows.clone();
            if !self.append_own(now, rows.iter()) {
                return;
            }
            self.batches.get_mut(&id).expect("batch").spooled = true;
        }
        while !self.memory.is_empty() {
            // One batch per write: a nearly full disk still takes part of the memory.
            let n = self.memory.len().min(self.config.batch_rows);
            let memory = std::mem::take(&mut self.memory);
            let written = self.append_own(now, memory.iter().take(n).map(|(_, h)| h));
            self.memory = memory;
            if !written {
                return;
            }
            self.memory.drain(..n);
        }
    }

    /// Appends `rows` to the own spool file (created on first use) and fsyncs them.
    /// False if the disk refused them.
    fn append_own<'a>(&mut self, now: Instant, rows: impl Iterator<Item = &'a Heartbeat>) -> bool {
        if self.own.is_none() {
            match SpoolFile::create(&self.config.spool_dir) {
                Ok(file) => self.own = Some(file),
                Err(err) => {
                    self.spool_failed(now, &err);
                    return false;
                }
            }
        }
        match self.own.as_mut().expect("own").append(rows) {
            Ok((rows, bytes)) => {
                self.stats.buffered_rows.fetch_sub(rows, Ordering::Relaxed);
                self.stats.spooled_rows.fetch_add(rows, Ordering::Relaxed);
                self.stats.spool_bytes.fetch_add(bytes, Ordering::Relaxed);
                if !self.spooling_logged {
                    tracing::warn!(
                        dir = %self.config.spool_dir.display(),
                        flush_interval_ms = self.config.spool_flush_interval.as_millis() as u64,
                        "Postgres has not stored heartbeats in time; writing them to the spool until it catches up"
                    );
                    self.spooling_logged = true;
                }
                self.end_spool_trouble("the spool can be written again");
                true
            }
            Err(err) => {
                self.spool_failed(now, &err);
                false
            }
        }
    }

    /// Starts (and logs) or extends a period of spool trouble.
    fn spool_failed(&mut self, now: Instant, err: &std::io::Error) {
        self.stats
            .spool_write_failures
            .fetch_add(1, Ordering::Relaxed);
        let retry_at = now + self.config.spool_flush_interval;
        match &mut self.spool_trouble {
            Some(trouble) => trouble.retry_at = retry_at,
            None => {
                tracing::error!(
                    dir = %self.config.spool_dir.display(),
                    error = %err,
                    memory_rows = self.config.memory_rows,
                    "cannot write the heartbeat spool; holding heartbeats in memory up to \
                     memory_rows, later ones are lost until the spool can be written or \
                     Postgres stores them"
                );
                self.spool_trouble = Some(SpoolTrouble {
                    since: now,
                    retry_at,
                    lost_rows: 0,
                });
            }
        }
    }

    /// Ends a period of spool trouble, saying how many heartbeats it cost.
    fn end_spool_trouble(&mut self, why: &str) {
        let Some(trouble) = self.spool_trouble.take() else {
            return;
        };
        let lasted_s = trouble.since.elapsed().as_secs();
        if trouble.lost_rows > 0 {
            tracing::error!(
                lost_rows = trouble.lost_rows,
                lasted_s,
                dir = %self.config.spool_dir.display(),
                "heartbeats were lost while the spool could not be written and memory was full ({why})"
            );
        } else {
            tracing::info!(
                lasted_s,
                "heartbeat spool trouble over, no heartbeat lost ({why})"
            );
        }
    }

    /// Starts inserts while some are due and the limits allow.
    fn start_inserts(&mut self, shutting_down: bool) {
        while self.start_insert(shutting_down) {}
    }

    /// Inserts in flight at once: `max_inflight` (pipelining hides commit latency), or
    /// one while Postgres is failing (probing it, not piling up failures).
    fn insert_limit(&self) -> usize {
        if self.stats.degraded.load(Ordering::Relaxed) {
            1
        } else {
            self.config.max_inflight.max(1)
        }
    }

    fn spool_in_flight(&self) -> bool {
        self.batches
            .values()
            .any(|b| !matches!(b.source, Source::Memory))
    }

    /// Starts the next insert if one is due; true if it did. Spool batches and memory
    /// batches never fly together: a spool file's offset commits in order, and memory
    /// waits behind the own spool anyway.
    fn start_insert(&mut self, shutting_down: bool) -> bool {
        if self.batches.len() >= self.insert_limit()
            || self.retry_at.is_some_and(|t| Instant::now() < t)
        {
            return false;
        }
        let retrying = self.retry_at.take().is_some();
        let memory_in_flight = self
            .batches
            .values()
            .any(|b| matches!(b.source, Source::Memory));
        if !shutting_down && !memory_in_flight {
            if let Some(started) = self.start_spool_insert() {
                return started;
            }
        }
        if self.spool_in_flight() || (self.replaying_own() && !shutting_down) {
            return false;
        }
        self.retire_own();
        let Some(&(arrived, _)) = self.memory.front() else {
            return false;
        };
        let due = arrived.elapsed() >= self.config.batch_delay;
        if !(shutting_down || retrying || due || self.memory.len() >= self.config.batch_rows) {
            return false;
        }
        let n = self.memory.len().min(self.config.batch_rows);
        let rows: Vec<Heartbeat> = self.memory.drain(..n).map(|(_, h)| h).collect();
        self.spawn_insert(Source::Memory, rows, arrived);
        true
    }

    /// Replays the spool: the oldest file of earlier processes first, then the own
    /// file. `None` when no spool waits; otherwise whether an insert started.
    fn start_spool_insert(&mut self) -> Option<bool> {
        while let Some(file) = self.backlog.front() {
            // A drained file has nothing in flight: every batch of it is committed.
            if !file.is_drained() {
                return Some(self.start_replay(Replay::Backlog));
            }
            let file = self.backlog.pop_front().expect("front");
            self.remove_spool(file);
        }
        if self.replaying_own() {
            return Some(self.start_replay(Replay::Own));
        }
        None
    }

    /// Hands out the next batch of a spool file for inserting, alongside the ones in
    /// flight; true if an insert started (or unreadable lines were passed over).
    fn start_replay(&mut self, which: Replay) -> bool {
        let busy = self.batches.values().any(|b| which.is_source_of(b));
        let file = match which {
            Replay::Backlog => self.backlog.front_mut(),
            Replay::Own => self.own.as_mut(),
        }
        .expect("a file to replay");
        if !busy {
            // Nothing in flight: read on from what is committed (after a failure, what
            // was handed out after it is read again).
            file.rewind();
        }
        if file.all_dispatched() {
            return false;
        }
        match file.read_next(self.config.batch_rows) {
            Ok((rows, start, end)) if rows.is_empty() => {
                // Only unreadable lines: nothing to insert, step over them.
                let (bytes, _) = file.land(start, end, 0);
                self.stats.spool_bytes.fetch_sub(bytes, Ordering::Relaxed);
                true
            }
            Ok((rows, start, end)) => {
                let source = match which {
                    Replay::Backlog => Source::Backlog(start, end),
                    Replay::Own => Source::Own(start, end),
                };
                self.spawn_insert(source, rows, Instant::now());
                true
            }
            // Leave the file once its batches in flight are back.
            Err(_) if busy => false,
            Err(err) => {
                let file = match which {
                    Replay::Backlog => self.backlog.pop_front(),
                    Replay::Own => self.own.take(),
                }
                .expect("the file just read");
                self.leave_spool(file, &err);
                true
            }
        }
    }

    /// Deletes the own spool once everything in it is stored, unless the spool is in
    /// trouble (then the empty file is reused by the next attempt).
    fn retire_own(&mut self) {
        let drained = self.own.as_ref().is_some_and(|f| f.is_drained());
        let replaying = self.batches.values().any(|b| Replay::Own.is_source_of(b));
        if !drained || replaying || self.spool_trouble.is_some() {
            return;
        }
        let own = self.own.take().expect("own");
        if self.spooling_logged {
            tracing::info!("heartbeat spool replayed; back to writing from memory");
            self.spooling_logged = false;
        }
        self.remove_spool(own);
    }

    fn spawn_insert(&mut self, source: Source, rows: Vec<Heartbeat>, arrived: Instant) {
        let rows = Arc::new(rows);
        let pool = self.pool.clone();
        let timeout = self.config.insert_timeout;
        let task_rows = rows.clone();
        let handle = self.inflight.spawn(async move {
            let started = Instant::now();
            match tokio::time::timeout(timeout, insert_batch(&pool, &task_rows)).await {
                Ok(result) => result.map(|inserted| Inserted {
                    took: started.elapsed(),
                    ..inserted
                }),
                Err(_) => Err(sqlx::Error::PoolTimedOut),
            }
        });
        let seq = self.next_seq;
        self.next_seq += 1;
        self.batches.insert(
            handle.id(),
            Batch {
                source,
                rows,
                seq,
                arrived,
                spooled: false,
            },
        );
    }

    fn finish_insert(&mut self, (id, done): InsertDone) {
        let inflight = self.batches.remove(&id).expect("a batch per insert task");
        let n = inflight.rows.len() as u64;
        let result = match done {
            Ok(result) => result,
            Err(err) => Err(sqlx::Error::Protocol(format!("insert task failed: {err}"))),
        };
        match result {
            Ok(inserted) => {
                if let Some(metrics) = &self.config.metrics {
                    metrics.observe_writer_batch(inflight.rows.len(), inserted.took);
                }
                let stats = self.stats.clone();
                stats.batches.fetch_add(1, Ordering::Relaxed);
                stats
                    .inserted_rows
                    .fetch_add(inserted.inserted, Ordering::Relaxed);
                stats
                    .duplicate_rows
                    .fetch_add(inserted.duplicates, Ordering::Relaxed);
                stats
                    .partitions_created
                    .fetch_add(inserted.partitions.len() as u64, Ordering::Relaxed);
                if !inserted.partitions.is_empty() {
                    tracing::info!(partitions = ?inserted.partitions, "created missing heartbeat partitions");
                }
                if !inserted.rejected.is_empty() {
                    self.keep_rejected(&inserted.rejected);
                }
                match inflight.source {
                    // A spooled batch left memory when it was spooled.
                    Source::Memory if inflight.spooled => {}
                    Source::Memory => {
                        stats.buffered_rows.fetch_sub(n, Ordering::Relaxed);
                    }
                    Source::Backlog(start, end) | Source::Own(start, end) => {
                        let file = match inflight.source {
                            Source::Backlog(..) => self.backlog.front_mut(),
                            _ => self.own.as_mut(),
                        };
                        if let Some(file) = file {
                            let (bytes, rows) = file.land(start, end, n);
                            stats.spool_bytes.fetch_sub(bytes, Ordering::Relaxed);
                            stats.spooled_rows.fetch_sub(rows, Ordering::Relaxed);
                        }
                    }
                }
                self.backoff = Duration::ZERO;
                self.last_stored = Instant::now();
                if self.stats.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        buffered = self.rows_at_risk(),
                        spooled = self.stats.spooled_rows.load(Ordering::Relaxed),
                        "Postgres is reachable again; storing buffered heartbeats"
                    );
                }
            }
            Err(err) => {
                self.stats.insert_failures.fetch_add(1, Ordering::Relaxed);
                if !self.stats.degraded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %redact_error(&err),
                        spool_dir = %self.config.spool_dir.display(),
                        "cannot store heartbeats in Postgres; spooling them until it is back"
                    );
                } else {
                    tracing::debug!(error = %redact_error(&err), "heartbeat insert failed again");
                }
                self.requeue(inflight);
                self.backoff = (self.backoff * 2)
                    .max(Duration::from_millis(100))
                    .min(self.config.max_retry_delay);
                self.retry_at = Some(Instant::now() + self.backoff);
            }
        }
    }

    /// Rows Postgres refuses as invalid would block the queue forever if retried: keep
    /// them on disk, with the reason, for an operator.
    fn keep_rejected(&self, rejected: &[(Heartbeat, String)]) {
        self.stats
            .rejected_rows
            .fetch_add(rejected.len() as u64, Ordering::Relaxed);
        let path = self
            .config
            .spool_dir
            .join(format!("rejected-{}.jsonl", std::process::id()));
        let written = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| {
                for (row, reason) in rejected {
                    let line = serde_json::json!({ "error": reason, "heartbeat": row });
                    writeln!(file, "{line}")?;
                }
                file.sync_data()
            });
        tracing::error!(
            rows = rejected.len(),
            file = %path.display(),
            reason = %rejected[0].1,
            saved = written.is_ok(),
            "Postgres rejected heartbeats as invalid; they are kept in the file"
        );
    }

    /// Forgets a spool file that cannot be read: it stays on disk for an operator (the
    /// next start adopts it again), and the writer goes on with the rest.
    fn leave_spool(&mut self, file: SpoolFile, err: &std::io::Error) {
        tracing::error!(file = %file.path().display(), error = %err,
            "cannot read a heartbeat spool file; leaving it in place");
        self.uncount_spool(&file);
    }

    fn remove_spool(&mut self, file: SpoolFile) {
        self.uncount_spool(&file);
        let path = file.path().to_path_buf();
        if let Err(err) = file.remove() {
            tracing::warn!(file = %path.display(), error = %err, "cannot delete a replayed spool file");
        }
    }

    fn uncount_spool(&self, file: &SpoolFile) {
        self.stats
            .spool_bytes
            .fetch_sub(file.unread_bytes(), Ordering::Relaxed);
        // Lines skipped as unreadable were counted when the file was adopted.
        self.stats
            .spooled_rows
            .fetch_sub(file.unread_rows(), Ordering::Relaxed);
    }

    /// Puts a failed batch from memory back at the front of the memory buffer (spool
    /// batches stay in their file: their offset was not committed; a spooled memory
    /// batch is in the spool already).
    fn requeue(&mut self, batch: Batch) {
        if matches!(batch.source, Source::Memory) && !batch.spooled {
            for row in batch.rows.iter().rev() {
                self.memory.push_front((batch.arrived, row.clone()));
            }
        }
    }

    /// The next moment something is due. Only deadlines that lead to work count: an
    /// insert that the limits would not let start is not waited for (its in-flight
    /// predecessor's completion wakes the loop instead), so the task never spins.
    fn next_wakeup(&self) -> Option<Instant> {
        let spool_at = self.spool_deadline().map(|due| {
            self.spool_trouble
                .as_ref()
                .map_or(due, |t| due.max(t.retry_at))
        });
        let insert_at = if self.batches.len() >= self.insert_limit() {
            None
        } else if let Some(retry_at) = self.retry_at {
            Some(retry_at)
        } else if self.replaying_own() || self.spool_in_flight() {
            // Spool batches start as soon as the limits allow, not at a deadline.
            None
        } else {
            self.memory
                .front()
                .map(|(at, _)| *at + self.config.batch_delay)
        };
        spool_at.into_iter().chain(insert_at).min()
    }

    async fn shutdown(mut self, mut rx: mpsc::UnboundedReceiver<Heartbeat>) -> FlushSummary {
        let started = Instant::now();
        let deadline = started + self.config.shutdown_timeout;
        rx.close();
        while let Ok(heartbeat) = rx.try_recv() {
            self.accept(started, heartbeat);
        }
        let inserted_before = self.stats.inserted_rows.load(Ordering::Relaxed)
            + self.stats.duplicate_rows.load(Ordering::Relaxed);
        // Store what is in memory while Postgres answers; stop at the first failure.
        self.retry_at = None;
        let mut failed = false;
        loop {
            if !failed {
                self.start_inserts(true);
            }
            if self.inflight.is_empty() {
                break;
            }
            match tokio::time::timeout_at(deadline, self.inflight.join_next_with_id()).await {
                Ok(Some(done)) => {
                    let done = split(done);
                    failed |= !matches!(done.1, Ok(Ok(_)));
                    self.finish_insert(done);
                }
                Ok(None) => break,
                Err(_) => {
                    // Too slow: the rows go to the spool. If an insert lands after all,
                    // replaying its rows later is harmless.
                    self.inflight.abort_all();
                    let mut batches: Vec<Batch> = self.batches.drain().map(|(_, b)| b).collect();
                    // Newest first, each pushed to the front: memory ends up oldest first.
                    batches.sort_unstable_by_key(|b| std::cmp::Reverse(b.seq));
                    for batch in batches {
                        self.requeue(batch);
                    }
                    break;
                }
            }
        }
        let flushed_rows = self.stats.inserted_rows.load(Ordering::Relaxed)
            + self.stats.duplicate_rows.load(Ordering::Relaxed)
            - inserted_before;
        // Everything left in memory goes to the spool, whatever the disk said before.
        let spooled_before = self.stats.spooled_rows.load(Ordering::Relaxed);
        let now = Instant::now();
        if let Some(trouble) = &mut self.spool_trouble {
            trouble.retry_at = now;
        }
        self.spool_memory(now);
        let spooled_rows = self.stats.spooled_rows.load(Ordering::Relaxed) - spooled_before;
        let lost_rows = self.memory.len() as u64;
        if lost_rows > 0 {
            self.memory.clear();
            self.lose(lost_rows);
            tracing::error!(
                rows = lost_rows,
                dir = %self.config.spool_dir.display(),
                "cannot spool heartbeats at shutdown; they are lost"
            );
        }
        self.end_spool_trouble("shutting down");
        let mut spool_files: Vec<PathBuf> = self
            .backlog
            .iter()
            .map(|f| f.path().to_path_buf())
            .collect();
        let mut rows_left: u64 = self.backlog.iter().map(|f| f.unread_rows()).sum();
        if let Some(own) = self.own.take() {
            if own.is_drained() {
                self.remove_spool(own);
            } else {
                rows_left += own.unread_rows();
                spool_files.push(own.path().to_path_buf());
            }
        }
        if rows_left > 0 {
            tracing::warn!(
                rows = rows_left,
                files = spool_files.len(),
                "heartbeats left in the spool; the next start replays them"
            );
        }
        FlushSummary {
            flushed_rows,
            spooled_rows,
            lost_rows,
            spool_files,
            rows_left_in_spool: rows_left,
            elapsed: started.elapsed(),
            stats: self.stats.snapshot(),
        }
    }
}

fn split(done: Result<(Id, Result<Inserted, sqlx::Error>), JoinError>) -> InsertDone {
    match done {
        Ok((id, result)) => (id, Ok(result)),
        Err(err) => (err.id(), Err(err)),
    }
}

async fn sleep_until(wakeup: Option<Instant>) {
    match wakeup {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Inserts `rows`, creating missing partitions, and isolating rows Postgres refuses as
/// invalid (so one bad row cannot block the others forever). An error means the batch
/// should be retried later (Postgres unreachable, overloaded, schema missing).
fn insert_batch<'a>(
    pool: &'a PgPool,
    rows: &'a [Heartbeat],
) -> BoxFuture<'a, Result<Inserted, sqlx::Error>> {
    Box::pin(async move {
        match insert_creating_partitions(pool, rows).await {
            Ok((inserted, partitions)) => Ok(Inserted {
                inserted,
                duplicates: rows.len() as u64 - inserted,
                partitions,
                ..Inserted::default()
            }),
            Err(err) if is_invalid_data(&err) && rows.len() == 1 => Ok(Inserted {
                rejected: vec![(rows[0].clone(), redact_error(&err))],
                ..Inserted::default()
            }),
            Err(err) if is_invalid_data(&err) => {
                let (left, right) = rows.split_at(rows.len() / 2);
                let mut a = insert_batch(pool, left).await?;
                let b = insert_batch(pool, right).await?;
                a.inserted += b.inserted;
                a.duplicates += b.duplicates;
                a.partitions.extend(b.partitions);
                a.rejected.extend(b.rejected);
                Ok(a)
            }
            Err(err) => Err(err),
        }
    })
}

/// Tries a plain INSERT first: almost every batch is new, and `ON CONFLICT DO NOTHING`
/// costs every row a speculative insertion (an extra primary-key probe), which cut
/// ingest by a quarter (BENCHMARKS.md). A batch that meets a stored key (a leader
/// overlap, a replay after an insert whose answer was lost) fails as a whole, storing
/// nothing, and goes again skipping the duplicates.
async fn insert_creating_partitions(
    pool: &PgPool,
    rows: &[Heartbeat],
) -> Result<(u64, Vec<String>), sqlx::Error> {
    let mut created = Vec::new();
    let mut attempt = 0;
    let mut sql = INSERT_SQL;
    loop {
        match insert_rows(pool, sql, rows).await {
            Ok(n) => return Ok((n, created)),
            Err(err) if is_duplicate_key(&err) && sql == INSERT_SQL => {
                sql = INSERT_SKIPPING_DUPLICATES_SQL;
            }
            Err(err) if is_missing_partition(&err) && attempt < 3 => {
                attempt += 1;
                let mut days: Vec<NaiveDate> =
                    rows.iter().map(|r| r.scheduled_at.date_naive()).collect();
                days.sort();
                days.dedup();
                created.extend(partitions::ensure_days(pool, &days).await?);
            }
            Err(err) => return Err(err),
        }
    }
}

fn is_missing_partition(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db)
        if db.code().as_deref() == Some("23514") && db.message().contains("no partition"))
}

fn is_duplicate_key(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

/// Data exceptions (22xxx) and integrity violations (23xxx): retrying cannot help.
fn is_invalid_data(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            (code.starts_with("22") || code.starts_with("23")) && !is_missing_partition(err)
        }
        sqlx::Error::Encode(_) => true,
        _ => false,
    }
}

/// The whole batch in one statement, each column one array parameter. The `unnest`s
/// sit in the select list (a ProjectSet node streaming rows) rather than in `FROM
/// UNNEST(...)`, which first copies every row into a tuplestore: 100k against 82k
/// heartbeats/s in the ingest bench, both with `ON CONFLICT` (BENCHMARKS.md).
macro_rules! insert_sql {
    ($on_conflict:literal) => {
        concat!(
            "
INSERT INTO api_heartbeats (
    monitor_id, datacenter_id, scheduled_at, executed_at, agent_id, leader_term,
    status, success, http_status, dns_ms, connect_ms, tls_ms, ttfb_ms, transfer_ms,
    total_ms, schedule_lag_ms, response_size_bytes, remote_ip, http_version,
    tls_version, tls_cert_expires_at, redirect_count, error_kind, error_message,
    response_body)
SELECT
    unnest($1::int4[]), unnest($2::int4[]), unnest($3::timestamptz[]),
    unnest($4::timestamptz[]), unnest($5::int8[]), unnest($6::int8[]),
    unnest($7::text[]), unnest($8::bool[]), unnest($9::int4[]), unnest($10::float8[]),
    unnest($11::float8[]), unnest($12::float8[]), unnest($13::float8[]),
    unnest($14::float8[]), unnest($15::float8[]), unnest($16::float8[]),
    unnest($17::int8[]), unnest($18::text[])::inet, unnest($19::text[]),
    unnest($20::text[]), unnest($21::timestamptz[]), unnest($22::int4[]),
    unnest($23::text[]), unnest($24::text[]), unnest($25::text[])
",
            $on_conflict
        )
    };
}
const INSERT_SQL: &str = insert_sql!("");
const INSERT_SKIPPING_DUPLICATES_SQL: &str = insert_sql!("ON CONFLICT DO NOTHING");

/// Postgres text cannot hold NUL; a probe may have read one from a hostile server.
fn clean(text: &Option<String>) -> Option<String> {
    text.as_ref().map(|s| {
        if s.contains('\0') {
            s.replace('\0', "\u{FFFD}")
        } else {
            s.clone()
        }
    })
}

/// One statement for the whole batch: each column travels as one array parameter.
async fn insert_rows(pool: &PgPool, sql: &str, rows: &[Heartbeat]) -> Result<u64, sqlx::Error> {
    let n = rows.len();
    let mut monitor_id = Vec::with_capacity(n);
    let mut datacenter_id = Vec::with_capacity(n);
    let mut scheduled_at = Vec::with_capacity(n);
    let mut executed_at = Vec::with_capacity(n);
    let mut agent_id = Vec::with_capacity(n);
    let mut leader_term = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut success = Vec::with_capacity(n);
    let mut http_status = Vec::with_capacity(n);
    let mut dns_ms = Vec::with_capacity(n);
    let mut connect_ms = Vec::with_capacity(n);
    let mut tls_ms = Vec::with_capacity(n);
    let mut ttfb_ms = Vec::with_capacity(n);
    let mut transfer_ms = Vec::with_capacity(n);
    let mut total_ms = Vec::with_capacity(n);
    let mut schedule_lag_ms = Vec::with_capacity(n);
    let mut response_size_bytes = Vec::with_capacity(n);
    let mut remote_ip = Vec::with_capacity(n);
    let mut http_version = Vec::with_capacity(n);
    let mut tls_version = Vec::with_capacity(n);
    let mut tls_cert_expires_at = Vec::with_capacity(n);
    let mut redirect_count = Vec::with_capacity(n);
    let mut error_kind = Vec::with_capacity(n);
    let mut error_message = Vec::with_capacity(n);
    let mut response_body = Vec::with_capacity(n);
    for h in rows {
        let r = &h.report;
        monitor_id.push(h.monitor_id);
        datacenter_id.push(h.datacenter_id);
        scheduled_at.push(h.scheduled_at);
        executed_at.push(h.executed_at);
        agent_id.push(h.agent_id);
        leader_term.push(h.leader_term);
        status.push(r.status.as_str());
        success.push(r.success());
        http_status.push(r.http_status.map(i32::from));
        dns_ms.push(r.dns_ms);
        connect_ms.push(r.connect_ms);
        tls_ms.push(r.tls_ms);
        ttfb_ms.push(r.ttfb_ms);
        transfer_ms.push(r.transfer_ms);
        total_ms.push(r.total_ms);
        schedule_lag_ms.push(h.schedule_lag_ms);
        response_size_bytes.push(
            r.response_size_bytes
                .map(|b| i64::try_from(b).unwrap_or(i64::MAX)),
        );
        remote_ip.push(r.remote_ip.map(|ip| ip.to_string()));
        http_version.push(clean(&r.http_version));
        tls_version.push(clean(&r.tls_version));
        tls_cert_expires_at.push(r.tls_cert_expires_at);
        redirect_count.push(i32::try_from(r.redirect_count).unwrap_or(i32::MAX));
        error_kind.push(r.error_kind.map(|k| k.as_str()));
        error_message.push(clean(&r.error_message));
        response_body.push(clean(&r.response_body));
    }
    let result = sqlx::query(sql)
        .bind(monitor_id)
        .bind(datacenter_id)
        .bind(scheduled_at)
        .bind(executed_at)
        .bind(agent_id)
        .bind(leader_term)
        .bind(status)
        .bind(success)
        .bind(http_status)
        .bind(dns_ms)
        .bind(connect_ms)
        .bind(tls_ms)
        .bind(ttfb_ms)
        .bind(transfer_ms)
        .bind(total_ms)
        .bind(schedule_lag_ms)
        .bind(response_size_bytes)
        .bind(remote_ip)
        .bind(http_version)
        .bind(tls_version)
        .bind(tls_cert_expires_at)
        .bind(redirect_count)
        .bind(error_kind)
        .bind(error_message)
        .bind(response_body)
        .execute(pool)
        .await?;
    Ok(result.rows_affected())
}
