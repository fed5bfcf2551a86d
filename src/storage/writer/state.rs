//! The writer task's state machine: heartbeats in memory, spool files (this process's
//! and those left by earlier ones), batches in flight, retries and their back-off, and
//! the deadlines that move rows from memory to the spool. It decides what is stored
//! when and where a row waits meanwhile, and books every row in [`WriterStats`].
//!
//! It does not know the SQL (`insert` stores one batch, `columns` says how) nor the
//! spool's file format (`spool`); it never blocks a [`super::HeartbeatSender`].

use std::collections::{HashMap, VecDeque};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::insert::{insert_batch, Inserted};
use super::{FlushSummary, WriterConfig, WriterStats};
use crate::storage::redact_error;
use crate::storage::spool::SpoolFile;
use crate::Heartbeat;

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

/// A period during which the spool could not be written.
struct SpoolTrouble {
    since: Instant,
    /// No spool write is tried before this: one attempt per flush interval, not one
    /// per heartbeat.
    retry_at: Instant,
    /// Heartbeats lost during this period.
    lost_rows: u64,
}

pub(super) struct State {
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
    /// A writer that replays `backlog` (spool files adopted from earlier processes)
    /// before anything newer.
    pub(super) fn new(
        pool: PgPool,
        config: WriterConfig,
        stats: Arc<WriterStats>,
        backlog: VecDeque<SpoolFile>,
    ) -> State {
        State {
            pool,
            stats,
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
        }
    }

    /// Runs until `shutdown`, then stores or spools what is left (within
    /// [`WriterConfig::shutdown_timeout`]).
    pub(super) async fn run(
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
