//! Monitor slots: when each monitor is due, and firing it on time.
//!
//! Owns the slot grid and the timer loop. A monitor's slots are deterministic, so every
//! instance that ever leads a datacenter computes the same ones and a new leader simply
//! continues the grid: an interval monitor fires at `epoch + offset + k × interval`, where
//! the offset is a stable hash of the monitor id that spreads monitors evenly across their
//! interval (no thundering herd at :00); a cron monitor fires at the cron's fire times.
//! The slot is also the heartbeat's key, so two instances probing the same slot store one
//! row.
//!
//! One task sleeps until the earliest due slot (`sleep_until`, millisecond timer) and
//! dispatches each due monitor into its own task; probes never run on the timer task, so a
//! slow target cannot delay anybody else's slot. Slots that passed while nothing could fire
//! them (a stall) are skipped, never replayed in a burst. Concurrency is bounded by a
//! semaphore; a slot that cannot get a permit before its monitor's next slot is skipped
//! and counted.
//!
//! Three things the caller can add. A [`DispatchGate`]: nothing starts unless the gate is
//! open at that instant (a leader's lease), so a process resumed after a stall, whose
//! timers all fire at once, starts nothing until the gate is renewed. A catch-up
//! ([`SchedulerHandle::catch_up`]): slots a new leader finds missing since the last stored
//! heartbeat are replayed oldest first, one per monitor per `min(its interval,
//! `[`MAX_REPLAY_SPACING`]`)`, each monitor starting at its own offset, so a monitor is
//! probed at most twice as often as usual while it catches up, never in a burst. And
//! wall-clock steps are detected (the wall clock compared with the monotonic one at
//! least every [`CLOCK_CHECK_EVERY`]), logged, and every monitor re-planned from the new
//! time, instead of pausing for the size of a backward step.
//!
//! The wall clock is read through a [`WallClock`] ([`SystemClock`] unless the caller
//! gives another): slots are wall-clock times while timers are monotonic, and a test
//! that can move both (tokio's paused clock plus a clock that follows it) runs minutes
//! of slots, and wall-clock steps, without waiting.
//!
//! tokio-cron-scheduler is deliberately not used here: it ticks every 500 ms, keeps fire
//! times in whole seconds and drops fires at scale (see DESIGN.md). It runs only the
//! leader's housekeeping. This module knows nothing about probes, Postgres or leadership:
//! it calls the dispatch function it was given and stops when its token is cancelled.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use croner::parser::{CronParser, Seconds};
use croner::Cron;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often a monitor is due.
#[derive(Debug, Clone, PartialEq)]
pub enum Cadence {
    /// Every so many whole seconds, on the monitor's offset of the epoch grid.
    Every { seconds: u32 },
    /// At the fire times of a cron expression with a seconds field (UTC).
    Cron(Box<Cron>),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CadenceError {
    #[error("schedule has neither interval_seconds nor cron; set exactly one")]
    Missing,
    #[error("schedule has both interval_seconds and cron; set exactly one")]
    Both,
    #[error("interval_seconds must be positive (got {0})")]
    NonPositiveInterval(i32),
    #[error("cron {pattern:?} is invalid: {reason}; use six fields with seconds first, e.g. \"0 */5 * * * *\"")]
    InvalidCron { pattern: String, reason: String },
    #[error("cron {0:?} never fires; pick a pattern that matches future times")]
    NeverFires(String),
}

impl Cadence {
    /// Builds a cadence from a `schedules` row's two columns, exactly one of which is set.
    pub fn from_parts(
        interval_seconds: Option<i32>,
        cron: Option<&str>,
    ) -> Result<Self, CadenceError> {
        match (interval_seconds, cron) {
            (Some(_), Some(_)) => Err(CadenceError::Both),
            (None, None) => Err(CadenceError::Missing),
            (Some(seconds), None) => u32::try_from(seconds)
                .ok()
                .filter(|s| *s > 0)
                .map(|seconds| Self::Every { seconds })
                .ok_or(CadenceError::NonPositiveInterval(seconds)),
            (None, Some(pattern)) => Self::cron(pattern),
        }
    }

    pub fn cron(pattern: &str) -> Result<Self, CadenceError> {
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .build()
            .parse(pattern)
            .map_err(|err| CadenceError::InvalidCron {
                pattern: pattern.to_string(),
                reason: err.to_string(),
            })?;
        if cron.find_next_occurrence(&Utc::now(), false).is_err() {
            return Err(CadenceError::NeverFires(pattern.to_string()));
        }
        Ok(Self::Cron(Box::new(cron)))
    }

    /// The first slot strictly after `t`.
    pub fn next_slot_after(&self, monitor_id: i32, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Every { seconds } => {
                let (period, offset) = interval_grid(monitor_id, *seconds);
                let k = (micros(t) - offset).div_euclid(period) + 1;
                Some(from_micros(offset + k * period))
            }
            Self::Cron(cron) => cron.find_next_occurrence(&whole_second(t), false).ok(),
        }
    }

    /// The last slot at or before `t`.
    pub fn last_slot_at_or_before(
        &self,
        monitor_id: i32,
        t: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        match self {
            Self::Every { seconds } => {
                let (period, offset) = interval_grid(monitor_id, *seconds);
                let k = (micros(t) - offset).div_euclid(period);
                Some(from_micros(offset + k * period))
            }
            Self::Cron(cron) => cron.find_previous_occurrence(&whole_second(t), true).ok(),
        }
    }
}

/// Period and per-monitor offset of an interval grid, in microseconds since the epoch. The
/// offset is whole milliseconds so slots print cleanly.
fn interval_grid(monitor_id: i32, seconds: u32) -> (i64, i64) {
    let period_ms = i64::from(seconds) * 1000;
    let offset_ms = (spread(monitor_id) % period_ms as u64) as i64;
    (period_ms * 1000, offset_ms * 1000)
}

/// A fixed integer mixer (splitmix64's finaliser): the same offset for the same id in
/// every process and every version, which a std hasher does not promise.
fn spread(monitor_id: i32) -> u64 {
    let mut z = (monitor_id as u32 as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Cron fire times are whole seconds; croner would carry `t`'s fraction into its answer.
fn whole_second(t: DateTime<Utc>) -> DateTime<Utc> {
    from_micros(t.timestamp() * 1_000_000)
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us)
        .single()
        .expect("slot within chrono's range")
}

/// One monitor as the scheduler sees it: an id, a cadence and whatever the dispatch
/// function needs to probe it.
pub struct ScheduleEntry<T> {
    pub monitor_id: i32,
    pub cadence: Cadence,
    pub payload: Arc<T>,
}

/// A due slot handed to the dispatch function.
pub struct Fire<T> {
    pub monitor_id: i32,
    /// The slot on the monitor's grid (the heartbeat's key).
    pub slot: DateTime<Utc>,
    /// When the dispatch function was called.
    pub started_at: DateTime<Utc>,
    /// `started_at - slot`: timer lateness plus any wait for a concurrency permit.
    pub lag: Duration,
    /// A missed slot replayed by a catch-up: its lag is the gap, not timer lateness.
    pub catch_up: bool,
    pub payload: Arc<T>,
}

/// Counters a metrics endpoint or a benchmark can read.
#[derive(Debug, Default)]
pub struct SchedulerStats {
    /// Slots handed to the dispatch function.
    pub fired: AtomicU64,
    /// Slots that passed without being fired (the loop was late by a whole period).
    pub skipped_late: AtomicU64,
    /// Slots dropped because no concurrency permit freed up before the next slot.
    pub skipped_saturated: AtomicU64,
    /// Slots not started because the dispatch gate was closed when they were due.
    pub skipped_gated: AtomicU64,
    /// Missed slots queued for replay by a catch-up.
    pub catch_up_planned: AtomicU64,
    /// Wall-clock steps detected (each re-planned every monitor).
    pub clock_steps: AtomicU64,
}

/// Replays are spaced by a monitor's interval, but never further apart than this, so a
/// slow monitor's missed slot is not replayed hours late.
pub const MAX_REPLAY_SPACING: Duration = Duration::from_secs(10);

/// How often, at least, the wall clock is compared with the monotonic clock.
pub const CLOCK_CHECK_EVERY: Duration = Duration::from_secs(1);

/// A disagreement between the two clocks larger than this is a step, not timer jitter.
const CLOCK_STEP_THRESHOLD: Duration = Duration::from_millis(500);

/// Where the scheduler reads the wall clock (the monotonic one is tokio's).
pub trait WallClock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The system's wall clock.
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Permission to start probes until an instant, published by whoever decides (the
/// leader's lease). `None`: closed. Consulted right before every start, not only on
/// changes, because a stalled process's instant passes without any change.
#[derive(Clone)]
pub struct DispatchGate(watch::Receiver<Option<Instant>>);

impl DispatchGate {
    pub fn new(until: watch::Receiver<Option<Instant>>) -> Self {
        Self(until)
    }

    fn is_open(&self) -> bool {
        self.0.borrow().is_some_and(|until| Instant::now() < until)
    }

    /// Waits until the gate is open; forever if its publisher is gone.
    async fn opened(&mut self) {
        loop {
            if self
                .0
                .borrow_and_update()
                .is_some_and(|until| Instant::now() < until)
            {
                return;
            }
            if self.0.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// How far back a catch-up reaches.
#[derive(Debug, Clone, Copy)]
pub struct CatchUpBound {
    /// Slots older than this are not replayed.
    pub window: Duration,
    /// At most this many (the most recent) slots per monitor.
    pub max_slots: usize,
}

enum Update<T> {
    Replace(Vec<ScheduleEntry<T>>),
    CatchUp(Vec<(i32, DateTime<Utc>)>, CatchUpBound),
}

/// Replaces the scheduled set while the scheduler runs.
pub struct SchedulerHandle<T> {
    updates: mpsc::UnboundedSender<Update<T>>,
    stats: Arc<SchedulerStats>,
}

impl<T> Clone for SchedulerHandle<T> {
    fn clone(&self) -> Self {
        Self {
            updates: self.updates.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<T> SchedulerHandle<T> {
    /// The new complete set. Monitors whose cadence is unchanged keep their next slot and
    /// pick up the new payload at it; new or re-timed monitors start at their next slot.
    pub fn replace_all(&self, entries: Vec<ScheduleEntry<T>>) {
        // The receiver only goes away when the scheduler stopped; nothing to update then.
        let _ = self.updates.send(Update::Replace(entries));
    }

    /// Replays the slots each listed monitor missed after its last stored slot and
    /// before the first slot this scheduler planned for it, within `bound`. Monitors not
    /// (or no longer) scheduled are ignored.
    pub fn catch_up(&self, last_stored: Vec<(i32, DateTime<Utc>)>, bound: CatchUpBound) {
        let _ = self.updates.send(Update::CatchUp(last_stored, bound));
    }

    pub fn stats(&self) -> Arc<SchedulerStats> {
        self.stats.clone()
    }
}

pub struct Scheduler<T, F> {
    dispatch: Arc<F>,
    clock: Arc<dyn WallClock>,
    catch_up: Duration,
    gate: Option<DispatchGate>,
    permits: Arc<Semaphore>,
    in_flight: TaskTracker,
    handle: SchedulerHandle<T>,
    updates: mpsc::UnboundedReceiver<Update<T>>,
}

/// A monitor's place in the loop. `generation` invalidates queue entries left over from
/// before its cadence changed or it was removed.
struct Planned<T> {
    cadence: Cadence,
    payload: Arc<T>,
    generation: u64,
    /// The first slot this scheduler planned for the monitor: a catch-up ends before it.
    first_slot: Option<DateTime<Utc>>,
}

/// Due slots, earliest first: `(slot, monitor_id, generation)`.
type DueQueue = BinaryHeap<Reverse<(DateTime<Utc>, i32, u64)>>;

/// Replays of missed slots, earliest first: `(fire at, slot, monitor_id, generation)`.
type ReplayQueue = BinaryHeap<Reverse<(Instant, DateTime<Utc>, i32, u64)>>;

impl<T, F, Fut> Scheduler<T, F>
where
    T: Send + Sync + 'static,
    F: Fn(Fire<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    /// `in_flight` tracks every dispatched probe, so the caller can wait for them at
    /// shutdown after the scheduler itself has stopped.
    pub fn new(max_concurrent: usize, in_flight: TaskTracker, dispatch: F) -> Self {
        let (updates_tx, updates) = mpsc::unbounded_channel();
        Self {
            dispatch: Arc::new(dispatch),
            clock: Arc::new(SystemClock),
            catch_up: Duration::ZERO,
            gate: None,
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            in_flight,
            handle: SchedulerHandle {
                updates: updates_tx,
                stats: Arc::default(),
            },
            updates,
        }
    }

    /// When the scheduler starts, a slot that passed at most `window` ago is still fired,
    /// as a replay (its lag is the gap, not punctuality), instead of waiting for the next
    /// one. This closes the gap of a leader hand-over: the slot that fell between the old
    /// leader's last dispatch and the new leader's first is probed once more by the new
    /// leader; heartbeats are keyed by slot, so if the old leader did probe it, the second
    /// row is ignored. These replays are spread like a catch-up's (at each monitor's own
    /// offset within `min(its interval, `[`MAX_REPLAY_SPACING`]`)`): a new leader of
    /// 10,000 monitors every 10 s fires the second's worth of slots it inherits over the
    /// next 10 s, instead of together, which doubled the rate the targets saw and, while
    /// they queued, the probes (and buffers) in flight.
    pub fn with_catch_up(mut self, window: Duration) -> Self {
        self.catch_up = window;
        self
    }

    /// Reads the wall clock from `clock` instead of the system's.
    pub fn with_clock(mut self, clock: Arc<dyn WallClock>) -> Self {
        self.clock = clock;
        self
    }

    /// Starts nothing unless `gate` is open at that instant.
    pub fn with_gate(mut self, gate: DispatchGate) -> Self {
        self.gate = Some(gate);
        self
    }

    pub fn handle(&self) -> SchedulerHandle<T> {
        self.handle.clone()
    }

    /// Fires slots until `stop` is cancelled. After it returns no new probe starts, not
    /// even one that was waiting for a permit: that is the leader's self-fence.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut monitors: HashMap<i32, Planned<T>> = HashMap::new();
        let mut due = DueQueue::new();
        let mut replays = ReplayQueue::new();
        let mut generation = 0u64;
        let mut catch_up = self.catch_up;
        let mut clock = ClockWatch::now(&*self.clock);
        let mut gate = self.gate.clone();
        loop {
            let next_due = due
                .peek()
                .map(|Reverse((slot, _, _))| instant_of(&*self.clock, *slot));
            let next_replay = replays.peek().map(|Reverse((at, ..))| *at);
            let clock_check = Instant::now() + CLOCK_CHECK_EVERY;
            let wake_at = [next_due, next_replay]
                .into_iter()
                .flatten()
                .fold(clock_check, Instant::min);
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                update = self.updates.recv() => match update {
                    None => return,
                    Some(Update::Replace(entries)) => {
                        generation += 1;
                        let queues = (&mut due, &mut replays);
                        self.apply(entries, generation, catch_up, &mut monitors, queues);
                        // Only the set the scheduler starts with catches up; monitors added
                        // later begin at their next slot.
                        catch_up = Duration::ZERO;
                    }
                    Some(Update::CatchUp(last_stored, bound)) => {
                        self.plan_replays(&last_stored, bound, &monitors, &mut replays);
                    }
                },
                _ = tokio::time::sleep_until(wake_at) => {
                    if let Some(step) = clock.step(&*self.clock) {
                        self.handle.stats.clock_steps.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            step_s = step,
                            "the wall clock stepped; re-planning every monitor from the new time"
                        );
                        generation += 1;
                        replan(self.clock.now(), generation, &mut monitors, &mut due);
                    }
                    if let Some(gate) = gate.as_mut().filter(|g| !g.is_open()) {
                        // A stall or a lost lease: due slots wait (and the latest is
                        // fired) until the gate opens again, or the scheduler is stopped.
                        tracing::warn!("dispatch paused: the leadership lease is not confirmed");
                        tokio::select! {
                            biased;
                            _ = stop.cancelled() => return,
                            _ = gate.opened() => {}
                        }
                        continue;
                    }
                    self.fire_due(&monitors, &mut due, &stop);
                    self.fire_replays(&monitors, &mut replays, &stop);
                }
            }
        }
    }

    /// Queues the slots each monitor missed (see [`SchedulerHandle::catch_up`]).
    fn plan_replays(
        &self,
        last_stored: &[(i32, DateTime<Utc>)],
        bound: CatchUpBound,
        monitors: &HashMap<i32, Planned<T>>,
        replays: &mut ReplayQueue,
    ) {
        let now = self.clock.now();
        let start = Instant::now();
        let window_start = now - chrono::Duration::from_std(bound.window).unwrap_or_default();
        let mut planned = 0u64;
        for &(monitor_id, stored) in last_stored {
            let Some(monitor) = monitors.get(&monitor_id) else {
                continue;
            };
            let Some(until) = monitor.first_slot else {
                continue;
            };
            let mut missed = std::collections::VecDeque::new();
            let mut slot = monitor.cadence.next_slot_after(
                monitor_id,
                stored.max(window_start - chrono::Duration::microseconds(1)),
            );
            while let Some(s) = slot.filter(|s| *s < until) {
                missed.push_back(s);
                if missed.len() > bound.max_slots {
                    missed.pop_front();
                }
                slot = monitor.cadence.next_slot_after(monitor_id, s);
            }
            let Some(&first) = missed.front() else {
                continue;
            };
            let (phase, spacing) = replay_spacing(monitor_id, &monitor.cadence, first);
            for (k, slot) in missed.into_iter().enumerate() {
                let at = start + phase + spacing * u32::try_from(k).unwrap_or(u32::MAX);
                replays.push(Reverse((at, slot, monitor_id, monitor.generation)));
                planned += 1;
            }
        }
        if planned > 0 {
            self.handle
                .stats
                .catch_up_planned
                .fetch_add(planned, Ordering::Relaxed);
            tracing::info!(
                slots = planned,
                window_s = bound.window.as_secs(),
                "catching up slots missed since the last stored heartbeats"
            );
        }
    }

    fn fire_replays(
        &self,
        monitors: &HashMap<i32, Planned<T>>,
        replays: &mut ReplayQueue,
        stop: &CancellationToken,
    ) {
        let now = Instant::now();
        while let Some(Reverse((at, slot, monitor_id, generation))) = replays.peek().copied() {
            if at > now {
                break;
            }
            replays.pop();
            // A monitor removed or re-timed since is not replayed.
            if let Some(planned) = monitors
                .get(&monitor_id)
                .filter(|m| m.generation == generation)
            {
                self.dispatch(monitor_id, slot, None, true, planned.payload.clone(), stop);
            }
        }
    }

    /// Brings the plan in line with `entries`, in place: a second map of every monitor
    /// would double the scheduler's memory at every reload. A monitor whose cadence is
    /// unchanged keeps its place in the queues; a new or re-timed one is planned afresh.
    fn apply(
        &self,
        entries: Vec<ScheduleEntry<T>>,
        generation: u64,
        catch_up: Duration,
        monitors: &mut HashMap<i32, Planned<T>>,
        (due, replays): (&mut DueQueue, &mut ReplayQueue),
    ) {
        let now = self.clock.now();
        let started = Instant::now();
        let listed: HashSet<i32> = entries.iter().map(|entry| entry.monitor_id).collect();
        monitors.retain(|monitor_id, _| listed.contains(monitor_id));
        drop(listed);
        // Sized once for the whole set: grown by doubling, the first load of 100,000
        // monitors would hold the old and the new table at once several times over.
        let added = entries.len().saturating_sub(monitors.len());
        monitors.reserve(added);
        due.reserve(added);
        for ScheduleEntry {
            monitor_id,
            cadence,
            payload,
        } in entries
        {
            if let Some(kept) = monitors
                .get_mut(&monitor_id)
                .filter(|old| old.cadence == cadence)
            {
                kept.payload = payload;
                continue;
            }
            let recent = cadence
                .last_slot_at_or_before(monitor_id, now)
                .filter(|slot| (now - *slot).to_std().is_ok_and(|ago| ago <= catch_up));
            if let Some(slot) = recent {
                let (phase, _) = replay_spacing(monitor_id, &cadence, slot);
                replays.push(Reverse((started + phase, slot, monitor_id, generation)));
            }
            let next = cadence.next_slot_after(monitor_id, now);
            if let Some(next) = next {
                due.push(Reverse((next, monitor_id, generation)));
            }
            let planned = Planned {
                cadence,
                payload,
                generation,
                first_slot: recent.or(next),
            };
            monitors.insert(monitor_id, planned);
        }
        // Removed and re-timed monitors leave stale queue entries behind; they are dropped
        // when they surface. Rebuild only when they would dominate the queue.
        if due.len() > 2 * monitors.len() + 64 {
            due.retain(|Reverse((_, id, generation))| {
                monitors
                    .get(id)
                    .is_some_and(|m| m.generation == *generation)
            });
        }
    }

    fn fire_due(
        &self,
        monitors: &HashMap<i32, Planned<T>>,
        due: &mut DueQueue,
        stop: &CancellationToken,
    ) {
        let now = self.clock.now();
        while let Some(Reverse((slot, monitor_id, generation))) = due.peek().copied() {
            if slot > now {
                break;
            }
            due.pop();
            let Some(planned) = monitors
                .get(&monitor_id)
                .filter(|m| m.generation == generation)
            else {
                continue;
            };
            // Woken late by a whole period or more: fire only the latest slot.
            let latest = planned
                .cadence
                .last_slot_at_or_before(monitor_id, now)
                .filter(|latest| *latest >= slot)
                .unwrap_or(slot);
            if latest > slot {
                self.handle
                    .stats
                    .skipped_late
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(monitor_id, %slot, %latest, "scheduler fell behind; skipping missed slots");
            }
            let next = planned.cadence.next_slot_after(monitor_id, latest);
            if let Some(next) = next {
                due.push(Reverse((next, monitor_id, generation)));
            }
            self.dispatch(
                monitor_id,
                latest,
                next,
                false,
                planned.payload.clone(),
                stop,
            );
        }
    }

    /// Starts the probe of one slot in its own task, once it has a permit. A slot without
    /// a `next_slot` (a replay) waits for a permit as long as it takes.
    fn dispatch(
        &self,
        monitor_id: i32,
        slot: DateTime<Utc>,
        next_slot: Option<DateTime<Utc>>,
        catch_up: bool,
        payload: Arc<T>,
        stop: &CancellationToken,
    ) {
        let permits = self.permits.clone();
        let dispatch = self.dispatch.clone();
        let stats = self.handle.stats.clone();
        let stop = stop.clone();
        let gate = self.gate.clone();
        let clock = self.clock.clone();
        self.in_flight.spawn(async move {
            let give_up = next_slot.map(|next| instant_of(&*clock, next));
            let permit = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                permit = permits.acquire_owned() => permit.expect("the semaphore is never closed"),
                _ = sleep_until_or_forever(give_up) => {
                    stats.skipped_saturated.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(monitor_id, %slot, "no free probe slot before the next slot; skipping (raise VANTAGE_MAX_CONCURRENT_PROBES)");
                    return;
                }
            };
            // The last moment to notice a stall that began after the slot was queued.
            if gate.as_ref().is_some_and(|g| !g.is_open()) {
                stats.skipped_gated.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let started_at = clock.now();
            stats.fired.fetch_add(1, Ordering::Relaxed);
            // Boxed, so that a task still waiting for its permit holds a pointer instead
            // of room for the whole probe's state: with thousands of slots queued behind
            // a saturated limit, that room was most of the process's memory
            // (BENCHMARKS.md, "Footprint next to blackbox_exporter").
            Box::pin(dispatch(Fire {
                monitor_id,
                slot,
                started_at,
                lag: (started_at - slot).to_std().unwrap_or_default(),
                catch_up,
                payload,
            }))
            .await;
            drop(permit);
        });
    }
}

/// How replays of a monitor's missed slots are spaced: one per `min(its interval,`
/// [`MAX_REPLAY_SPACING`]`)`, the first at the monitor's own offset within one spacing,
/// so that replays spread over time like regular slots do instead of starting together.
fn replay_spacing(
    monitor_id: i32,
    cadence: &Cadence,
    first: DateTime<Utc>,
) -> (Duration, Duration) {
    let spacing = cadence
        .next_slot_after(monitor_id, first)
        .and_then(|next| (next - first).to_std().ok())
        .unwrap_or(MAX_REPLAY_SPACING)
        .min(MAX_REPLAY_SPACING);
    let spacing_ms = u64::try_from(spacing.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    (
        Duration::from_millis(spread(monitor_id) % spacing_ms),
        spacing,
    )
}

/// After a wall-clock step, every monitor starts again at its next slot from the new
/// time; queue entries of the old plan are invalidated by the new generation.
fn replan<T>(
    now: DateTime<Utc>,
    generation: u64,
    monitors: &mut HashMap<i32, Planned<T>>,
    due: &mut DueQueue,
) {
    due.clear();
    for (&monitor_id, planned) in monitors.iter_mut() {
        planned.generation = generation;
        if let Some(next) = planned.cadence.next_slot_after(monitor_id, now) {
            due.push(Reverse((next, monitor_id, generation)));
        }
    }
}

/// Compares how far the wall clock and the monotonic clock moved since the last look.
struct ClockWatch {
    wall: DateTime<Utc>,
    mono: Instant,
}

impl ClockWatch {
    fn now(clock: &dyn WallClock) -> Self {
        Self {
            wall: clock.now(),
            mono: Instant::now(),
        }
    }

    /// The wall clock's step since the last call, in seconds (negative: backwards), if
    /// it is larger than jitter.
    fn step(&mut self, clock: &dyn WallClock) -> Option<f64> {
        let last = std::mem::replace(self, Self::now(clock));
        let wall = (self.wall - last.wall).num_microseconds()? as f64 / 1e6;
        let mono = (self.mono - last.mono).as_secs_f64();
        let step = wall - mono;
        (step.abs() > CLOCK_STEP_THRESHOLD.as_secs_f64()).then_some(step)
    }
}

/// The monotonic instant at which the wall clock reads `at` (now, if that has passed).
fn instant_of(clock: &dyn WallClock, at: DateTime<Utc>) -> Instant {
    let ahead = (at - clock.now()).to_std().unwrap_or_default();
    Instant::now() + ahead
}

async fn sleep_until_or_forever(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn interval_slots_sit_on_a_stable_per_monitor_grid() {
        let every = Cadence::Every { seconds: 60 };
        let t = at("2026-11-25T10:00:30Z");
        let next = every.next_slot_after(7, t).unwrap();
        let last = every.last_slot_at_or_before(7, t).unwrap();
        assert_eq!(next - last, chrono::Duration::seconds(60));
        assert!(last <= t && t < next);
        // The same monitor lands on the same grid from any starting point.
        let later = every.next_slot_after(7, next).unwrap();
        assert_eq!(later - next, chrono::Duration::seconds(60));
        assert_eq!(every.last_slot_at_or_before(7, next), Some(next));
        // Offsets are whole milliseconds and differ between monitors.
        assert_eq!(next.timestamp_subsec_micros() % 1000, 0);
        assert_ne!(
            every.next_slot_after(8, t),
            Some(next),
            "different monitors spread out"
        );
    }

    #[test]
    fn offsets_spread_monitors_across_the_interval() {
        let every = Cadence::Every { seconds: 10 };
        let t = at("2026-11-25T10:00:00Z");
        let mut per_second = [0u32; 10];
        for id in 1..=10_000 {
            let slot = every.next_slot_after(id, t).unwrap();
            per_second[((slot - t).num_milliseconds() / 1000) as usize % 10] += 1;
        }
        for count in per_second {
            assert!(
                (800..1200).contains(&count),
                "uneven spread: {per_second:?}"
            );
        }
    }

    #[test]
    fn cron_slots_are_its_fire_times() {
        let cron = Cadence::cron("*/15 * * * * *").unwrap();
        let t = at("2026-11-25T10:00:16.500Z");
        assert_eq!(cron.next_slot_after(1, t), Some(at("2026-11-25T10:00:30Z")));
        assert_eq!(
            cron.last_slot_at_or_before(1, t),
            Some(at("2026-11-25T10:00:15Z"))
        );
        assert_eq!(
            cron.next_slot_after(1, at("2026-11-25T10:00:30Z")),
            Some(at("2026-11-25T10:00:45Z")),
            "strictly after"
        );
    }

    #[test]
    fn bad_schedules_are_rejected_with_the_fix() {
        assert_eq!(Cadence::from_parts(None, None), Err(CadenceError::Missing));
        assert_eq!(
            Cadence::from_parts(Some(5), Some("* * * * * *")),
            Err(CadenceError::Both)
        );
        assert_eq!(
            Cadence::from_parts(Some(0), None),
            Err(CadenceError::NonPositiveInterval(0))
        );
        let err = Cadence::from_parts(None, Some("every minute")).unwrap_err();
        assert!(err.to_string().contains("seconds first"), "{err}");
        let five_fields = Cadence::cron("*/5 * * * *").unwrap_err();
        assert!(
            matches!(five_fields, CadenceError::InvalidCron { .. }),
            "{five_fields:?}"
        );
    }

    /// A wall clock that follows tokio's clock (paused in these tests, so it only moves
    /// when the runtime advances it) from a fixed start, plus the steps a test applies.
    struct TestClock {
        start_wall: DateTime<Utc>,
        start: Instant,
        stepped: Mutex<chrono::Duration>,
    }

    impl TestClock {
        fn starting_at(wall: &str) -> Arc<Self> {
            Arc::new(Self {
                start_wall: at(wall),
                start: Instant::now(),
                stepped: Mutex::new(chrono::Duration::zero()),
            })
        }

        /// Steps the wall clock (an NTP correction, an operator's `date -s`).
        fn step(&self, by: chrono::Duration) {
            *self.stepped.lock().unwrap() += by;
        }
    }

    impl WallClock for TestClock {
        fn now(&self) -> DateTime<Utc> {
            let elapsed = chrono::Duration::from_std(self.start.elapsed()).unwrap();
            self.start_wall + elapsed + *self.stepped.lock().unwrap()
        }
    }

    const START: &str = "2026-11-25T10:00:00.250Z";

    fn every_second(monitor_id: i32) -> ScheduleEntry<()> {
        ScheduleEntry {
            monitor_id,
            cadence: Cadence::Every { seconds: 1 },
            payload: Arc::new(()),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fires_each_slot_once_on_time_and_applies_updates() {
        let fires = Arc::new(Mutex::new(Vec::new()));
        let recorded = fires.clone();
        let scheduler = Scheduler::new(16, TaskTracker::new(), move |fire: Fire<&'static str>| {
            let recorded = recorded.clone();
            async move {
                recorded.lock().unwrap().push((
                    fire.monitor_id,
                    fire.slot,
                    fire.lag,
                    *fire.payload,
                ));
            }
        })
        .with_clock(TestClock::starting_at(START));
        let handle = scheduler.handle();
        let entry = |id, payload| ScheduleEntry {
            monitor_id: id,
            cadence: Cadence::Every { seconds: 1 },
            payload: Arc::new(payload),
        };
        handle.replace_all(vec![entry(1, "v1"), entry(2, "v1")]);
        let stop = CancellationToken::new();
        let run = tokio::spawn(scheduler.run(stop.clone()));
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        handle.replace_all(vec![entry(1, "v2")]);
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        stop.cancel();
        run.await.unwrap();

        let fires = fires.lock().unwrap().clone();
        let of = |id| fires.iter().filter(|f| f.0 == id).collect::<Vec<_>>();
        let (one, two) = (of(1), of(2));
        assert!(
            (3..=4).contains(&one.len()),
            "monitor 1 fired {} times",
            one.len()
        );
        assert!(
            (2..=3).contains(&two.len()),
            "monitor 2 fired {} times",
            two.len()
        );
        for pair in one.windows(2) {
            assert_eq!(
                pair[1].1 - pair[0].1,
                chrono::Duration::seconds(1),
                "one slot per second, none skipped"
            );
        }
        assert_eq!(
            one.last().unwrap().3,
            "v2",
            "the update reached the next slot"
        );
        // tokio's timers have millisecond resolution.
        for fire in &fires {
            assert!(fire.2 <= Duration::from_millis(1), "late by {:?}", fire.2);
        }
        assert_eq!(
            handle.stats().fired.load(Ordering::Relaxed),
            fires.len() as u64
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_starting_scheduler_catches_up_the_slot_that_just_passed() {
        let fires = Arc::new(Mutex::new(Vec::new()));
        let recorded = fires.clone();
        let clock = TestClock::starting_at(START);
        let scheduler = Scheduler::new(4, TaskTracker::new(), move |fire: Fire<()>| {
            let recorded = recorded.clone();
            async move {
                recorded
                    .lock()
                    .unwrap()
                    .push((fire.slot, fire.lag, fire.catch_up))
            }
        })
        .with_catch_up(Duration::from_secs(10))
        .with_clock(clock.clone());
        let cadence = Cadence::Every { seconds: 10 };
        scheduler.handle().replace_all(vec![ScheduleEntry {
            monitor_id: 42,
            cadence: cadence.clone(),
            payload: Arc::new(()),
        }]);
        let started = clock.now();
        let stop = CancellationToken::new();
        let run = tokio::spawn(scheduler.run(stop.clone()));
        tokio::time::sleep(Duration::from_millis(10_200)).await;
        stop.cancel();
        run.await.unwrap();

        let passed = cadence.last_slot_at_or_before(42, started).unwrap();
        let next = cadence.next_slot_after(42, started).unwrap();
        let mut fires = fires.lock().unwrap().clone();
        // Either may come first: the replay at the monitor's offset, the next on time.
        fires.sort_by_key(|(slot, ..)| *slot);
        assert_eq!(
            fires.len(),
            2,
            "the slot that passed, and the next: {fires:?}"
        );
        let (slot, lag, catch_up) = fires[0];
        assert_eq!(slot, passed, "the slot that just passed: {fires:?}");
        assert!(catch_up, "fired as a replay: {fires:?}");
        let (phase, spacing) = replay_spacing(42, &cadence, passed);
        assert!(phase < spacing && spacing == Duration::from_secs(10));
        let expected = (started - passed).to_std().unwrap() + phase;
        assert!(
            lag >= expected && lag < expected + Duration::from_millis(50),
            "fired at the monitor's replay offset, and its lag says so: {lag:?}"
        );
        assert_eq!(fires[1].0, next, "the next slot on its own time: {fires:?}");
        assert!(!fires[1].2, "{fires:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_slots_a_starting_scheduler_catches_up_keep_their_spacing() {
        let fired_at = Arc::new(Mutex::new(Vec::new()));
        let recorded = fired_at.clone();
        let scheduler = Scheduler::new(1024, TaskTracker::new(), move |fire: Fire<()>| {
            if fire.catch_up {
                recorded.lock().unwrap().push(Instant::now());
            }
            std::future::ready(())
        })
        .with_catch_up(Duration::from_secs(1))
        .with_clock(TestClock::starting_at(START));
        // 1,000 monitors every second: each one's last slot passed within the window.
        scheduler
            .handle()
            .replace_all((1..=1_000).map(every_second).collect());
        let started = Instant::now();
        let stop = CancellationToken::new();
        let run = tokio::spawn(scheduler.run(stop.clone()));
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        stop.cancel();
        run.await.unwrap();

        let fired_at = fired_at.lock().unwrap().clone();
        assert_eq!(fired_at.len(), 1_000, "every slot that passed is replayed");
        // At once, they would all start in the first tick; spread like their slots, each
        // tenth of the second holds about a tenth of them.
        for tenth in 0..10u32 {
            let from = started + Duration::from_millis(100) * tenth;
            let to = from + Duration::from_millis(100);
            let in_tenth = fired_at
                .iter()
                .filter(|at| **at >= from && **at < to)
                .count();
            assert!(
                (50..=150).contains(&in_tenth),
                "{in_tenth} replays in tenth {tenth} of the window"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopped_scheduler_starts_nothing_waiting_for_a_permit() {
        let started = Arc::new(AtomicU64::new(0));
        let counter = started.clone();
        let tracker = TaskTracker::new();
        // One permit, held by a probe that outlives the stop: later slots must not start.
        let scheduler = Scheduler::new(1, tracker.clone(), move |_fire: Fire<()>| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        })
        .with_clock(TestClock::starting_at(START));
        let handle = scheduler.handle();
        handle.replace_all((1..=3).map(every_second).collect());
        let stop = CancellationToken::new();
        let run = tokio::spawn(scheduler.run(stop.clone()));
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        stop.cancel();
        run.await.unwrap();
        tracker.close();
        tracker.wait().await;
        assert_eq!(
            started.load(Ordering::SeqCst),
            1,
            "only the probe holding the permit ran"
        );
    }

    /// `(slot, catch_up)` of one fire.
    type Fired = (DateTime<Utc>, bool);

    /// A running scheduler of one monitor every second on a [`TestClock`], recording
    /// every fire.
    struct Recording {
        handle: SchedulerHandle<()>,
        clock: Arc<TestClock>,
        fires: Arc<Mutex<Vec<Fired>>>,
        stop: CancellationToken,
        run: tokio::task::JoinHandle<()>,
    }

    impl Recording {
        fn start(gate: Option<DispatchGate>) -> Self {
            let fires = Arc::new(Mutex::new(Vec::new()));
            let recorded = fires.clone();
            let clock = TestClock::starting_at(START);
            let mut scheduler = Scheduler::new(8, TaskTracker::new(), move |fire: Fire<()>| {
                recorded.lock().unwrap().push((fire.slot, fire.catch_up));
                std::future::ready(())
            })
            .with_clock(clock.clone());
            if let Some(gate) = gate {
                scheduler = scheduler.with_gate(gate);
            }
            let handle = scheduler.handle();
            handle.replace_all(vec![every_second(7)]);
            let stop = CancellationToken::new();
            let run = tokio::spawn(scheduler.run(stop.clone()));
            Self {
                handle,
                clock,
                fires,
                stop,
                run,
            }
        }

        fn fires(&self) -> Vec<Fired> {
            self.fires.lock().unwrap().clone()
        }

        async fn stop(self) -> Vec<Fired> {
            self.stop.cancel();
            self.run.await.unwrap();
            let fires = self.fires.lock().unwrap().clone();
            fires
        }
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_starts_while_the_gate_has_expired_until_it_is_renewed() {
        // A lease that ran out while the process was stopped: in the past, unchanged.
        let (lease, until) = watch::channel(Some(Instant::now()));
        let recording = Recording::start(Some(DispatchGate::new(until)));
        tokio::time::sleep(Duration::from_millis(2_200)).await;
        assert!(
            recording.fires().is_empty(),
            "fired through an expired gate"
        );

        lease.send_replace(Some(Instant::now() + Duration::from_secs(60)));
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        assert!(
            !recording.stop().await.is_empty(),
            "the renewed gate lets slots start again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_waiting_for_a_permit_when_the_gate_closes_is_counted_gated() {
        let (lease, until) = watch::channel(Some(Instant::now() + Duration::from_secs(3600)));
        // The first probe holds the only permit until the test lets it go.
        let release = Arc::new(Semaphore::new(0));
        let held = release.clone();
        let scheduler = Scheduler::new(1, TaskTracker::new(), move |_fire: Fire<()>| {
            let held = held.clone();
            async move {
                let _ = held.acquire().await;
            }
        })
        .with_clock(TestClock::starting_at(START))
        .with_gate(DispatchGate::new(until));
        let handle = scheduler.handle();
        // Both first slots fall within the next ten seconds, their second ones after.
        handle.replace_all(
            [1, 2]
                .map(|monitor_id| ScheduleEntry {
                    monitor_id,
                    cadence: Cadence::Every { seconds: 10 },
                    payload: Arc::new(()),
                })
                .into(),
        );
        let stop = CancellationToken::new();
        let run = tokio::spawn(scheduler.run(stop.clone()));
        tokio::time::sleep(Duration::from_secs(10)).await;
        // Fenced while the second slot waits for the permit: it must not start.
        lease.send_replace(None);
        release.add_permits(1);
        tokio::time::sleep(Duration::from_millis(1)).await;
        stop.cancel();
        run.await.unwrap();

        let stats = handle.stats();
        assert_eq!(stats.fired.load(Ordering::Relaxed), 1);
        assert_eq!(stats.skipped_gated.load(Ordering::Relaxed), 1);
        assert_eq!(stats.skipped_saturated.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_catch_up_replays_missed_slots_one_interval_apart_oldest_first() {
        let recording = Recording::start(None);
        let cadence = Cadence::Every { seconds: 1 };
        let last_stored = cadence
            .last_slot_at_or_before(7, recording.clock.now())
            .unwrap()
            - chrono::Duration::seconds(4);
        // Bounded to the three most recent missed slots.
        let bound = CatchUpBound {
            window: Duration::from_secs(60),
            max_slots: 3,
        };
        recording.handle.catch_up(vec![(7, last_stored)], bound);
        let stats = recording.handle.stats();
        // Three replays one second apart, the first within a second.
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        let fires = recording.stop().await;

        let replayed: Vec<DateTime<Utc>> = fires
            .iter()
            .filter(|(_, c)| *c)
            .map(|(slot, _)| *slot)
            .collect();
        let expected: Vec<DateTime<Utc>> = (2..=4)
            .map(|k| last_stored + chrono::Duration::seconds(k))
            .collect();
        assert_eq!(
            replayed, expected,
            "the most recent missed slots, oldest first"
        );
        assert_eq!(stats.catch_up_planned.load(Ordering::Relaxed), 3);
        // Not replayed twice: no slot appears both replayed and on time.
        let on_time: Vec<_> = fires.iter().filter(|(_, c)| !*c).map(|(s, _)| s).collect();
        assert!(replayed.iter().all(|s| !on_time.contains(&s)), "{fires:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_backward_wall_clock_step_is_counted_and_slots_go_on_from_the_new_time() {
        let recording = Recording::start(None);
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let before = recording.fires().len();
        assert!(before >= 2, "{:?}", recording.fires());
        recording.clock.step(-chrono::Duration::hours(1));
        let stepped_at = recording.clock.now();
        tokio::time::sleep(Duration::from_millis(3_000)).await;
        let stats = recording.handle.stats();
        let fires = recording.stop().await;

        assert_eq!(stats.clock_steps.load(Ordering::Relaxed), 1);
        // Re-planned from the new time: a slot every second again, not a pause of an
        // hour until the old plan's next slot comes round.
        let after: Vec<_> = fires[before..].iter().map(|(slot, _)| *slot).collect();
        assert!((2..=3).contains(&after.len()), "{after:?}");
        assert!(after.iter().all(|slot| *slot > stepped_at), "{after:?}");
        for pair in after.windows(2) {
            assert_eq!(pair[1] - pair[0], chrono::Duration::seconds(1), "{after:?}");
        }
    }
}
