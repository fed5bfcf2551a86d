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
//!
//! This file is the handle the rest of the program uses; behind it, `state` is the
//! writer task (memory, spool, retries), `insert` stores one batch (duplicates,
//! missing partitions, invalid rows) and `columns` is the one table of the columns it
//! writes.

mod columns;
mod insert;
mod state;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::spool::SpoolFile;
use crate::metrics::Metrics;
use crate::Heartbeat;
use state::State;

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
        let state = State::new(pool, config, stats.clone(), backlog);
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
