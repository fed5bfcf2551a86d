//! What the evaluator knows between two ticks, and the one pure function that turns it
//! into the incidents that should exist ([`State::reconcile`]).
//!
//! Owns the in-memory picture: configuration (monitors, datacenters, active maintenance),
//! per monitor and datacenter streaks, datacenter liveness, and a mirror of what is
//! stored (flags and open incidents). It performs no I/O: the evaluator loads it, feeds
//! it heartbeats and the clock, persists the [`Changes`] it returns, and then calls
//! [`State::applied`] so the mirror matches the database again.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::decision::{verdict, Outcome, Policy, Streak};
use crate::schedule::Cadence;

/// A datacenter whose newest heartbeat (or leader) is older than two of its shortest
/// intervals plus this much is impaired: it covers the probe's own duration and the
/// writer's batching delay.
const SILENCE_SLACK: Duration = Duration::from_secs(3);

/// A datacenter is impaired by its own network when at least this many monitors fail
/// there alone (and more than half of those it shares with other datacenters).
const MIN_FAILING_ALONE: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IncidentKind {
    MonitorDown,
    MonitorDegraded,
    DatacenterImpaired,
}

impl IncidentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MonitorDown => "monitor_down",
            Self::MonitorDegraded => "monitor_degraded",
            Self::DatacenterImpaired => "datacenter_impaired",
        }
    }

    pub fn parse(kind: &str) -> Option<Self> {
        [
            Self::MonitorDown,
            Self::MonitorDegraded,
            Self::DatacenterImpaired,
        ]
        .into_iter()
        .find(|k| k.as_str() == kind)
    }

    pub fn severity(self) -> &'static str {
        match self {
            Self::MonitorDown => "critical",
            Self::MonitorDegraded | Self::DatacenterImpaired => "warning",
        }
    }
}

/// What an open incident is about; at most one open incident per key (the database's
/// partial unique indexes say the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IncidentKey {
    Monitor(IncidentKind, i32),
    Datacenter(i32),
}

impl IncidentKey {
    pub fn kind(self) -> IncidentKind {
        match self {
            Self::Monitor(kind, _) => kind,
            Self::Datacenter(_) => IncidentKind::DatacenterImpaired,
        }
    }
}

#[derive(Debug, Clone)]
pub struct MonitorConfig {
    pub id: i32,
    pub name: Box<str>,
    pub policy: Policy,
    /// Time between two slots (for cron, between the next two at load time).
    pub period: Duration,
    /// Usually none, and then no allocation.
    pub tags: Box<[String]>,
    pub mute_until: Option<DateTime<Utc>>,
    /// Datacenters it is assigned to.
    pub datacenters: Box<[i32]>,
}

impl MonitorConfig {
    /// Time between two slots of `cadence` (for cron, between the next two after `now`).
    pub fn period_of(cadence: &Cadence, monitor_id: i32, now: DateTime<Utc>) -> Duration {
        let first = cadence.next_slot_after(monitor_id, now);
        let second = first.and_then(|t| cadence.next_slot_after(monitor_id, t));
        match (first, second) {
            (Some(a), Some(b)) => (b - a).to_std().unwrap_or(Duration::from_secs(60)),
            _ => Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DatacenterInfo {
    pub code: String,
    /// Has ever registered an instance (a row in `agents`). Datacenters nobody runs are
    /// neither counted in quorums nor reported impaired.
    pub deployed: bool,
}

/// One active (or imminent) occurrence of a maintenance window, with its scope.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Maintenance {
    pub monitor_ids: Vec<i32>,
    pub tags: Vec<String>,
    pub datacenter_ids: Vec<i32>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
}

impl Maintenance {
    fn active(&self, at: DateTime<Utc>) -> bool {
        self.starts_at <= at && at < self.ends_at
    }

    /// Monitor scope only (true when the window names no monitors and no tags).
    fn covers_monitor(&self, monitor: &MonitorConfig) -> bool {
        (self.monitor_ids.is_empty() || self.monitor_ids.contains(&monitor.id))
            && (self.tags.is_empty() || self.tags.iter().any(|t| monitor.tags.contains(t)))
    }

    fn unscoped_by_monitor(&self) -> bool {
        self.monitor_ids.is_empty() && self.tags.is_empty()
    }
}

/// One heartbeat, as much of it as the decision needs.
#[derive(Debug, Clone)]
pub struct Observation {
    pub monitor_id: i32,
    pub datacenter_id: i32,
    pub slot: DateTime<Utc>,
    pub outcome: Outcome,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
}

/// One monitor in one datacenter.
#[derive(Debug, Clone, Default)]
pub struct Pair {
    pub down: Streak,
    pub degraded: Streak,
    /// Slots at which the flags were last raised / lowered.
    pub down_since: Option<DateTime<Utc>>,
    pub degraded_since: Option<DateTime<Utc>>,
    pub recovered_at: Option<DateTime<Utc>>,
    pub last_slot: Option<DateTime<Utc>>,
    /// The latest failure's; `None` until the pair has failed (boxed: a pair is kept for
    /// every monitor in every datacenter, and most never fail).
    pub last_error: Option<Box<LastError>>,
}

/// What a pair's latest failed heartbeat said.
#[derive(Debug, Clone)]
pub struct LastError {
    pub kind: Option<Box<str>>,
    pub message: Option<Box<str>>,
}

/// The flags as stored in `monitor_dc_state`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredFlags {
    pub failing: bool,
    pub degraded: bool,
    pub changed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct OpenIncident {
    pub id: i64,
    pub opened_at: DateTime<Utc>,
    pub datacenters: BTreeSet<i32>,
}

/// Why a datacenter is impaired.
#[derive(Debug, Clone, PartialEq)]
pub enum Trouble {
    NoLeader { since: DateTime<Utc> },
    Silent { since: DateTime<Utc> },
    FailingAlone { failing: usize, compared: usize },
}

impl Trouble {
    fn began(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Self::NoLeader { since } | Self::Silent { since } => *since,
            Self::FailingAlone { .. } => now,
        }
    }

    fn describe(&self, now: DateTime<Utc>) -> String {
        let secs = |since: &DateTime<Utc>| (now - *since).num_seconds().max(0);
        match self {
            Self::NoLeader { since } => format!("no leader for {} s", secs(since)),
            Self::Silent { since } => format!("no heartbeats for {} s", secs(since)),
            Self::FailingAlone { failing, compared } => format!(
                "its own network: {failing} of {compared} monitors fail only here while other datacenters see them up"
            ),
        }
    }
}

/// Rows to write, in one transaction, for one tick.
#[derive(Debug, Default)]
pub struct Changes {
    pub flags: Vec<FlagChange>,
    pub opened: Vec<Opened>,
    pub updated: Vec<Updated>,
    pub resolved: Vec<Resolved>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
            && self.opened.is_empty()
            && self.updated.is_empty()
            && self.resolved.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct FlagChange {
    pub monitor_id: i32,
    pub datacenter_id: i32,
    pub flags: StoredFlags,
    pub last_error_kind: Option<String>,
    pub last_error_message: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Opened {
    pub key: IncidentKey,
    pub opened_at: DateTime<Utc>,
    pub muted: bool,
    pub cause: String,
    pub datacenters: BTreeSet<i32>,
    pub error_kinds: Vec<String>,
    pub sample_error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Updated {
    pub id: i64,
    pub key: IncidentKey,
    pub at: DateTime<Utc>,
    pub joined: Vec<i32>,
    pub left: Vec<i32>,
    /// Why the ones that left did (recovered, impaired, in maintenance).
    pub left_detail: String,
    pub datacenters: BTreeSet<i32>,
    pub error_kinds: Vec<String>,
    pub sample_error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Resolved {
    pub id: i64,
    pub key: IncidentKey,
    pub at: DateTime<Utc>,
    pub remaining: BTreeSet<i32>,
    pub detail: String,
}

/// The evaluator's whole picture.
#[derive(Debug, Default)]
pub struct State {
    pub monitors: HashMap<i32, MonitorConfig>,
    pub datacenters: HashMap<i32, DatacenterInfo>,
    pub maintenance: Vec<Maintenance>,
    pub pairs: HashMap<(i32, i32), Pair>,
    /// Newest slot stored by each datacenter.
    pub last_slot: HashMap<i32, DateTime<Utc>>,
    /// Since when each datacenter has had no leader (absent: it has one).
    pub leaderless_since: HashMap<i32, DateTime<Utc>>,
    /// When this evaluator started: a datacenter never heard from counts as silent
    /// from then, not from the beginning of time.
    pub started_at: Option<DateTime<Utc>>,
    pub stored: HashMap<(i32, i32), StoredFlags>,
    pub open: HashMap<IncidentKey, OpenIncident>,
    /// Impaired datacenters as of the last full decision.
    troubles: HashMap<i32, Trouble>,
    /// Monitors whose flags flipped since the last decision.
    dirty: HashSet<i32>,
}

impl State {
    /// An evaluator starting at `now`: datacenters never heard from count as silent from
    /// then on.
    pub fn starting(now: DateTime<Utc>) -> Self {
        Self {
            started_at: Some(now),
            ..Self::default()
        }
    }

    /// Folds one heartbeat into its pair's streaks. Heartbeats must come in slot order
    /// per pair; an older or repeated slot (read twice, or replayed from a spool after
    /// newer ones) is ignored: it cannot change what happened since.
    pub fn observe(&mut self, observation: Observation) {
        let Some(monitor) = self.monitors.get(&observation.monitor_id) else {
            return;
        };
        let policy = monitor.policy;
        let slot = observation.slot;
        let last = self
            .last_slot
            .entry(observation.datacenter_id)
            .or_insert(slot);
        *last = (*last).max(slot);
        let pair = self
            .pairs
            .entry((observation.monitor_id, observation.datacenter_id))
            .or_insert_with(|| {
                let stored = self
                    .stored
                    .get(&(observation.monitor_id, observation.datacenter_id))
                    .copied()
                    .unwrap_or_default();
                Pair {
                    down: Streak::resumed(stored.failing),
                    degraded: Streak::resumed(stored.degraded),
                    down_since: stored.failing.then_some(stored.changed_at).flatten(),
                    degraded_since: stored.degraded.then_some(stored.changed_at).flatten(),
                    ..Pair::default()
                }
            });
        if pair.last_slot.is_some_and(|last| slot <= last) {
            return;
        }
        pair.last_slot = Some(slot);
        if observation.outcome == Outcome::Down {
            pair.last_error = Some(Box::new(LastError {
                kind: observation.error_kind.map(String::into_boxed_str),
                message: observation.error_message.map(String::into_boxed_str),
            }));
        }
        let mut flipped = false;
        if pair
            .down
            .observe(observation.outcome == Outcome::Down, &policy)
        {
            flipped = true;
            if pair.down.flagged {
                pair.down_since = Some(slot);
            } else {
                pair.down_since = None;
                pair.recovered_at = Some(slot);
            }
        }
        // A failed probe says nothing about slowness: it neither extends nor breaks a
        // degraded streak.
        if policy.alert_on_degraded
            && observation.outcome != Outcome::Down
            && pair
                .degraded
                .observe(observation.outcome == Outcome::Degraded, &policy)
        {
            flipped = true;
            pair.degraded_since = pair.degraded.flagged.then_some(slot);
            if !pair.degraded.flagged {
                pair.recovered_at = Some(slot);
            }
        }
        if flipped {
            self.dirty.insert(observation.monitor_id);
        }
    }

    /// Records which datacenters hold a leader now.
    pub fn observe_leaders(&mut self, led: &HashSet<i32>, now: DateTime<Utc>) {
        for id in self.datacenters.keys() {
            if led.contains(id) {
                self.leaderless_since.remove(id);
            } else {
                self.leaderless_since.entry(*id).or_insert(now);
            }
        }
    }

    /// Records which datacenters have registered an instance.
    pub fn observe_deployed(&mut self, deployed: &[i32]) {
        for (id, info) in self.datacenters.iter_mut() {
            info.deployed = deployed.contains(id);
        }
    }

    fn in_maintenance(&self, now: DateTime<Utc>, matches: impl Fn(&Maintenance) -> bool) -> bool {
        self.maintenance
            .iter()
            .any(|window| window.active(now) && matches(window))
    }

    /// No incident opens for this monitor now (a window on it, in every datacenter).
    fn monitor_paused(&self, monitor: &MonitorConfig, now: DateTime<Utc>) -> bool {
        self.in_maintenance(now, |w| {
            w.datacenter_ids.is_empty() && !w.unscoped_by_monitor() && w.covers_monitor(monitor)
        })
    }

    /// This datacenter's results for this monitor are left out (a window on the
    /// datacenter, for this monitor or for everything there).
    fn pair_paused(&self, monitor: &MonitorConfig, datacenter: i32, now: DateTime<Utc>) -> bool {
        self.in_maintenance(now, |w| {
            w.datacenter_ids.contains(&datacenter) && w.covers_monitor(monitor)
        })
    }

    fn datacenter_paused(&self, datacenter: i32, now: DateTime<Utc>) -> bool {
        self.in_maintenance(now, |w| {
            w.datacenter_ids.contains(&datacenter) && w.unscoped_by_monitor()
        })
    }

    /// Shortest period among the monitors each datacenter runs.
    fn shortest_period(&self) -> HashMap<i32, Duration> {
        let mut shortest: HashMap<i32, Duration> = HashMap::new();
        for monitor in self.monitors.values() {
            for dc in &monitor.datacenters {
                shortest
                    .entry(*dc)
                    .and_modify(|p| *p = (*p).min(monitor.period))
                    .or_insert(monitor.period);
            }
        }
        shortest
    }

    /// Why each troubled datacenter is impaired now.
    fn compute_troubles(&self, now: DateTime<Utc>) -> HashMap<i32, Trouble> {
        let started = self.started_at.unwrap_or(now);
        let mut troubles = HashMap::new();
        for (dc, period) in self.shortest_period() {
            let Some(info) = self.datacenters.get(&dc) else {
                continue;
            };
            if !info.deployed || self.datacenter_paused(dc, now) {
                continue;
            }
            let allowance = chrono::Duration::from_std(period * 2 + SILENCE_SLACK)
                .unwrap_or(chrono::Duration::MAX);
            if let Some(since) = self.leaderless_since.get(&dc) {
                if now - *since > allowance {
                    troubles.insert(dc, Trouble::NoLeader { since: *since });
                    continue;
                }
            }
            let last = self.last_slot.get(&dc).copied().unwrap_or(started);
            if now - last > allowance {
                troubles.insert(dc, Trouble::Silent { since: last });
            }
        }
        // Failing alone, compared with the datacenters that are fine so far.
        let mut failing_alone: HashMap<i32, usize> = HashMap::new();
        let mut compared: HashMap<i32, usize> = HashMap::new();
        for monitor in self.monitors.values() {
            let seen: Vec<(i32, bool)> = monitor
                .datacenters
                .iter()
                .filter(|dc| self.counts(**dc) && !troubles.contains_key(dc))
                .filter_map(|dc| {
                    let pair = self.pairs.get(&(monitor.id, *dc))?;
                    pair.last_slot.map(|_| (*dc, pair.down.flagged))
                })
                .collect();
            if seen.len() < 2 {
                continue;
            }
            let flagged = seen.iter().filter(|(_, f)| *f).count();
            for (dc, is_flagged) in &seen {
                *compared.entry(*dc).or_default() += 1;
                if *is_flagged && flagged == 1 {
                    *failing_alone.entry(*dc).or_default() += 1;
                }
            }
        }
        for (dc, failing) in failing_alone {
            let compared = compared[&dc];
            if failing >= MIN_FAILING_ALONE && failing * 2 > compared {
                troubles.insert(dc, Trouble::FailingAlone { failing, compared });
            }
        }
        troubles
    }

    /// A datacenter whose results may count at all.
    fn counts(&self, dc: i32) -> bool {
        self.datacenters.get(&dc).is_some_and(|info| info.deployed)
    }

    fn code(&self, dc: i32) -> &str {
        self.datacenters
            .get(&dc)
            .map_or("?", |info| info.code.as_str())
    }

    fn codes(&self, dcs: &BTreeSet<i32>) -> String {
        let mut codes: Vec<&str> = dcs.iter().map(|dc| self.code(*dc)).collect();
        codes.sort_unstable();
        codes.join(", ")
    }

    /// What must change in the database so that it says what the state says. A `full`
    /// decision looks at every monitor, pair and datacenter (and re-judges datacenter
    /// health, which depends on the clock); the others only at the monitors whose flags
    /// flipped since the last decision, which is all that can have changed in between.
    pub fn decide(&mut self, now: DateTime<Utc>, full: bool) -> Changes {
        if full {
            self.troubles = self.compute_troubles(now);
        }
        let dirty = std::mem::take(&mut self.dirty);
        self.reconcile(now, (!full).then_some(&dirty))
    }

    /// A flag that differs from the stored one, to be written.
    fn flag_change(&self, monitor_id: i32, dc: i32, pair: &Pair) -> Option<FlagChange> {
        let (failing, degraded) = (pair.down.flagged, pair.degraded.flagged);
        let stored = self.stored.get(&(monitor_id, dc));
        if stored.is_some_and(|s| (s.failing, s.degraded) == (failing, degraded)) {
            return None;
        }
        let changed_at = [pair.down_since, pair.degraded_since, pair.recovered_at]
            .into_iter()
            .flatten()
            .max()
            .or(pair.last_slot);
        Some(FlagChange {
            monitor_id,
            datacenter_id: dc,
            flags: StoredFlags {
                failing,
                degraded,
                changed_at,
            },
            last_error_kind: pair
                .last_error
                .as_deref()
                .and_then(|e| e.kind.as_deref().map(String::from)),
            last_error_message: pair
                .last_error
                .as_deref()
                .and_then(|e| e.message.as_deref().map(String::from)),
        })
    }

    /// `only`: the monitors to look at; `None` for everything.
    fn reconcile(&self, now: DateTime<Utc>, only: Option<&HashSet<i32>>) -> Changes {
        let mut changes = Changes::default();
        let monitors: Vec<&MonitorConfig> = match only {
            None => self.monitors.values().collect(),
            Some(ids) => ids.iter().filter_map(|id| self.monitors.get(id)).collect(),
        };
        match only {
            None => changes.flags.extend(
                self.pairs
                    .iter()
                    .filter_map(|((m, dc), pair)| self.flag_change(*m, *dc, pair)),
            ),
            Some(_) => {
                for monitor in &monitors {
                    for dc in &monitor.datacenters {
                        if let Some(pair) = self.pairs.get(&(monitor.id, *dc)) {
                            changes
                                .flags
                                .extend(self.flag_change(monitor.id, *dc, pair));
                        }
                    }
                }
            }
        }

        let troubles = &self.troubles;
        let mut seen = HashSet::new();
        for (dc, trouble) in troubles.iter().filter(|_| only.is_none()) {
            let key = IncidentKey::Datacenter(*dc);
            if !self.open.contains_key(&key) {
                changes.opened.push(Opened {
                    key,
                    opened_at: trouble.began(now).min(now),
                    muted: false,
                    cause: format!(
                        "datacenter {} impaired: {}",
                        self.code(*dc),
                        trouble.describe(now)
                    ),
                    datacenters: BTreeSet::from([*dc]),
                    error_kinds: Vec::new(),
                    sample_error: None,
                });
            }
        }

        for monitor in monitors {
            let healthy: Vec<i32> = monitor
                .datacenters
                .iter()
                .copied()
                .filter(|dc| {
                    self.counts(*dc)
                        && !troubles.contains_key(dc)
                        && !self.pair_paused(monitor, *dc, now)
                })
                .collect();
            for kind in [IncidentKind::MonitorDown, IncidentKind::MonitorDegraded] {
                let key = IncidentKey::Monitor(kind, monitor.id);
                if kind == IncidentKind::MonitorDegraded && !monitor.policy.alert_on_degraded {
                    continue;
                }
                seen.insert(key);
                let flagged: BTreeSet<i32> = healthy
                    .iter()
                    .copied()
                    .filter(|dc| self.flag_of(kind, monitor.id, *dc).is_some())
                    .collect();
                let since = flagged
                    .iter()
                    .filter_map(|dc| self.flag_of(kind, monitor.id, *dc))
                    .collect();
                let decided = verdict(&monitor.policy, healthy.len(), since);
                self.reconcile_monitor(&mut changes, key, monitor, decided, flagged, troubles, now);
            }
        }

        // Open incidents nothing above vouches for any more: a deleted or disabled
        // monitor, a healed datacenter, alerting on slowness turned off.
        for (key, incident) in self.open.iter().filter(|_| only.is_none()) {
            let vouched = match key {
                IncidentKey::Datacenter(dc) => troubles.contains_key(dc),
                IncidentKey::Monitor(..) => seen.contains(key),
            };
            if vouched {
                continue;
            }
            let detail = match key {
                IncidentKey::Datacenter(_) => "datacenter healthy again",
                IncidentKey::Monitor(IncidentKind::MonitorDegraded, id)
                    if self.monitors.contains_key(id) =>
                {
                    "alerting on degraded turned off"
                }
                IncidentKey::Monitor(..) => "monitor deleted or disabled",
            };
            changes.resolved.push(Resolved {
                id: incident.id,
                key: *key,
                at: now.max(incident.opened_at),
                remaining: BTreeSet::new(),
                detail: detail.to_string(),
            });
        }
        changes
    }

    /// The slot since which `dc` counts the monitor as failing (or degraded).
    fn flag_of(&self, kind: IncidentKind, monitor: i32, dc: i32) -> Option<DateTime<Utc>> {
        let pair = self.pairs.get(&(monitor, dc))?;
        let (streak, since) = match kind {
            IncidentKind::MonitorDegraded => (pair.degraded, pair.degraded_since),
            _ => (pair.down, pair.down_since),
        };
        streak.flagged.then(|| since.or(pair.last_slot)).flatten()
    }

    #[allow(clippy::too_many_arguments)]
    fn reconcile_monitor(
        &self,
        changes: &mut Changes,
        key: IncidentKey,
        monitor: &MonitorConfig,
        decided: Option<DateTime<Utc>>,
        flagged: BTreeSet<i32>,
        troubles: &HashMap<i32, Trouble>,
        now: DateTime<Utc>,
    ) {
        let (error_kinds, sample_error) = self.errors_of(monitor.id, &flagged);
        match (self.open.get(&key), decided) {
            (None, None) => {}
            (None, Some(at)) => {
                if self.monitor_paused(monitor, now) {
                    return;
                }
                // Completed inside a window that has ended since: the incident begins
                // now, when it stopped being planned.
                let opened_at = if self.monitor_paused(monitor, at) {
                    now
                } else {
                    at
                };
                let what = match key.kind() {
                    IncidentKind::MonitorDegraded => "slow",
                    _ => "down",
                };
                let mut cause = format!("{} {what} from {}", monitor.name, self.codes(&flagged));
                if !error_kinds.is_empty() {
                    cause.push_str(&format!(" ({})", error_kinds.join(", ")));
                }
                changes.opened.push(Opened {
                    key,
                    opened_at,
                    muted: monitor.mute_until.is_some_and(|until| until > now),
                    cause,
                    datacenters: flagged,
                    error_kinds,
                    sample_error,
                });
            }
            (Some(open), None) => {
                let at = open
                    .datacenters
                    .iter()
                    .filter_map(|dc| self.pairs.get(&(monitor.id, *dc))?.recovered_at)
                    .max()
                    .unwrap_or(now)
                    .max(open.opened_at);
                changes.resolved.push(Resolved {
                    id: open.id,
                    key,
                    at,
                    remaining: flagged,
                    detail: "recovered".to_string(),
                });
            }
            (Some(open), Some(_)) => {
                let joined: Vec<i32> = flagged.difference(&open.datacenters).copied().collect();
                let left: Vec<i32> = open.datacenters.difference(&flagged).copied().collect();
                if joined.is_empty() && left.is_empty() {
                    return;
                }
                let left_detail = left
                    .iter()
                    .map(|dc| {
                        let why = if troubles.contains_key(dc) {
                            "impaired"
                        } else if self.pair_paused(monitor, *dc, now) {
                            "in maintenance"
                        } else {
                            "recovered"
                        };
                        format!("{}: {why}", self.code(*dc))
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                let at = joined
                    .iter()
                    .filter_map(|dc| self.flag_of(key.kind(), monitor.id, *dc))
                    .chain(
                        left.iter()
                            .filter_map(|dc| self.pairs.get(&(monitor.id, *dc))?.recovered_at),
                    )
                    .max()
                    .unwrap_or(now)
                    .max(open.opened_at);
                changes.updated.push(Updated {
                    id: open.id,
                    key,
                    at,
                    joined,
                    left,
                    left_detail,
                    datacenters: flagged,
                    error_kinds,
                    sample_error,
                });
            }
        }
    }

    /// Distinct error kinds across the failing datacenters, and one message to show.
    fn errors_of(&self, monitor: i32, dcs: &BTreeSet<i32>) -> (Vec<String>, Option<String>) {
        let mut kinds = BTreeSet::new();
        let mut sample = None;
        for dc in dcs {
            let Some(pair) = self.pairs.get(&(monitor, *dc)) else {
                continue;
            };
            let Some(error) = pair.last_error.as_deref() else {
                continue;
            };
            if let Some(kind) = error.kind.as_deref() {
                kinds.insert(kind);
            }
            if sample.is_none() {
                sample = error
                    .message
                    .as_ref()
                    .map(|m| format!("{}: {m}", self.code(*dc)));
            }
        }
        (kinds.into_iter().map(String::from).collect(), sample)
    }

    /// Makes the mirror match the database after `changes` were committed; `opened_ids`
    /// are the ids the database gave the opened incidents, in order.
    pub fn applied(&mut self, changes: &Changes, opened_ids: &[i64]) {
        for change in &changes.flags {
            self.stored
                .insert((change.monitor_id, change.datacenter_id), change.flags);
        }
        for (opened, id) in changes.opened.iter().zip(opened_ids) {
            self.open.insert(
                opened.key,
                OpenIncident {
                    id: *id,
                    opened_at: opened.opened_at,
                    datacenters: opened.datacenters.clone(),
                },
            );
        }
        for updated in &changes.updated {
            if let Some(open) = self.open.get_mut(&updated.key) {
                open.datacenters = updated.datacenters.clone();
            }
        }
        for resolved in &changes.resolved {
            self.open.remove(&resolved.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    const VA: i32 = 1;
    const NY: i32 = 2;
    const LON: i32 = 3;

    /// Three deployed datacenters with leaders, and `monitors` monitors every second in
    /// all of them.
    fn state(monitors: i32, policy: Policy) -> State {
        let mut state = State::starting(t(0));
        for (id, code) in [(VA, "va"), (NY, "ny"), (LON, "lon")] {
            state.datacenters.insert(
                id,
                DatacenterInfo {
                    code: code.into(),
                    deployed: true,
                },
            );
        }
        for id in 1..=monitors {
            state.monitors.insert(
                id,
                MonitorConfig {
                    id,
                    name: format!("m{id}").into(),
                    policy,
                    period: Duration::from_secs(1),
                    tags: Box::new(["web".into()]),
                    mute_until: None,
                    datacenters: Box::new([VA, NY, LON]),
                },
            );
        }
        state
    }

    /// Feeds one slot per second: `outcomes` per datacenter ('.' up, 'x' down, 's'
    /// slow, ' ' no heartbeat) for monitor `m`, then reconciles after each second and
    /// applies the changes as if the database accepted them. Returns every change.
    fn play(state: &mut State, from: i64, m: i32, per_dc: &[(i32, &str)]) -> Vec<Changes> {
        let len = per_dc.iter().map(|(_, s)| s.len()).max().unwrap_or(0);
        let mut all = Vec::new();
        for i in 0..len {
            let slot = t(from + i as i64);
            for (dc, outcomes) in per_dc {
                let outcome = match outcomes.as_bytes().get(i) {
                    Some(b'.') => Outcome::Up,
                    Some(b'x') => Outcome::Down,
                    Some(b's') => Outcome::Degraded,
                    _ => continue,
                };
                state.observe(Observation {
                    monitor_id: m,
                    datacenter_id: *dc,
                    slot,
                    outcome,
                    error_kind: (outcome == Outcome::Down).then(|| "connect_refused".into()),
                    error_message: (outcome == Outcome::Down).then(|| "connection refused".into()),
                });
            }
            all.push(apply(state, slot));
        }
        all
    }

    fn apply(state: &mut State, now: DateTime<Utc>) -> Changes {
        let changes = state.decide(now, true);
        let ids: Vec<i64> = (0..changes.opened.len())
            .map(|i| 100 + state.open.len() as i64 + i as i64)
            .collect();
        state.applied(&changes, &ids);
        changes
    }

    fn opened(changes: &[Changes]) -> Vec<(IncidentKey, DateTime<Utc>)> {
        changes
            .iter()
            .flat_map(|c| c.opened.iter().map(|o| (o.key, o.opened_at)))
            .collect()
    }

    fn resolved(changes: &[Changes]) -> Vec<(IncidentKey, DateTime<Utc>)> {
        changes
            .iter()
            .flat_map(|c| c.resolved.iter().map(|r| (r.key, r.at)))
            .collect()
    }

    fn all_leaders(state: &mut State, now: DateTime<Utc>) {
        state.observe_leaders(&HashSet::from([VA, NY, LON]), now);
    }

    #[test]
    fn quorum_of_two_failing_datacenters_opens_once_and_resolves_once() {
        let mut s = state(1, Policy::default());
        all_leaders(&mut s, t(0));
        let changes = play(
            &mut s,
            0,
            1,
            &[(VA, "..xxxxx..."), (NY, "...xxxx..."), (LON, "..........")],
        );
        let down = IncidentKey::Monitor(IncidentKind::MonitorDown, 1);
        // va raises its flag at slot 3, ny at slot 4: the quorum (2 of 3) completes at 4.
        assert_eq!(opened(&changes), [(down, t(4))]);
        // Both recover at slot 8 (second good slot); below quorum from then.
        assert_eq!(resolved(&changes), [(down, t(8))]);
        let first = changes.iter().find(|c| !c.opened.is_empty()).unwrap();
        assert_eq!(first.opened[0].datacenters, BTreeSet::from([VA, NY]));
        assert_eq!(first.opened[0].error_kinds, ["connect_refused"]);
        assert!(first.opened[0].cause.contains("down from ny, va"));
    }

    #[test]
    fn decisions_between_full_ones_see_the_monitors_that_flipped() {
        let mut s = state(2, Policy::default());
        all_leaders(&mut s, t(0));
        assert!(s.decide(t(0), true).is_empty());
        for (m, outcome) in [(1, Outcome::Down), (2, Outcome::Up)] {
            for slot in [1, 2] {
                for dc in [VA, NY, LON] {
                    s.observe(Observation {
                        monitor_id: m,
                        datacenter_id: dc,
                        slot: t(slot),
                        outcome,
                        error_kind: None,
                        error_message: None,
                    });
                }
            }
        }
        let changes = s.decide(t(2), false);
        assert_eq!(
            opened(&[changes]),
            [(IncidentKey::Monitor(IncidentKind::MonitorDown, 1), t(2))]
        );
        // Nothing flipped since: the next partial decision looks at nothing.
        assert!(s.decide(t(2), false).flags.is_empty());
    }

    #[test]
    fn one_failing_datacenter_is_not_an_outage() {
        let mut s = state(1, Policy::default());
        all_leaders(&mut s, t(0));
        let changes = play(
            &mut s,
            0,
            1,
            &[(VA, "xxxxxxxx"), (NY, "........"), (LON, "........")],
        );
        assert!(opened(&changes).is_empty());
        // But it is remembered as that datacenter's view.
        assert!(changes.iter().any(|c| c
            .flags
            .iter()
            .any(|f| f.datacenter_id == VA && f.flags.failing)));
    }

    #[test]
    fn a_flapping_target_opens_one_incident() {
        let mut s = state(1, Policy::default());
        all_leaders(&mut s, t(0));
        let changes = play(
            &mut s,
            0,
            1,
            &[(VA, "xx.x.x.x.x"), (NY, "xx.x.x.x.x"), (LON, "xx.x.x.x.x")],
        );
        assert_eq!(opened(&changes).len(), 1);
        assert!(
            resolved(&changes).is_empty(),
            "never two good slots in a row"
        );
    }

    #[test]
    fn datacenters_joining_and_leaving_are_events_of_the_same_incident() {
        let mut s = state(1, Policy::default());
        all_leaders(&mut s, t(0));
        let changes = play(
            &mut s,
            0,
            1,
            &[(VA, "xxxxxxxxx"), (NY, "xxxxxxxxx"), (LON, "...xxx...")],
        );
        assert_eq!(opened(&changes).len(), 1);
        let updates: Vec<(Vec<i32>, Vec<i32>)> = changes
            .iter()
            .flat_map(|c| c.updated.iter().map(|u| (u.joined.clone(), u.left.clone())))
            .collect();
        assert_eq!(updates, [(vec![LON], vec![]), (vec![], vec![LON])]);
        assert!(resolved(&changes).is_empty());
    }

    #[test]
    fn explicit_quorum_and_thresholds() {
        let policy = Policy {
            failure_threshold: 3,
            recovery_threshold: 1,
            quorum: Some(3),
            alert_on_degraded: false,
        };
        let mut s = state(1, policy);
        all_leaders(&mut s, t(0));
        let changes = play(
            &mut s,
            0,
            1,
            &[(VA, "xxxxx."), (NY, "xxxxx."), (LON, "..xxx.")],
        );
        let down = IncidentKey::Monitor(IncidentKind::MonitorDown, 1);
        // Three failures in a row everywhere: va and ny at 2, lon at 4.
        assert_eq!(opened(&changes), [(down, t(4))]);
        assert_eq!(resolved(&changes), [(down, t(5))]);
    }

    #[test]
    fn a_silent_datacenter_is_impaired_and_left_out_of_the_quorum() {
        let mut s = state(1, Policy::default());
        all_leaders(&mut s, t(0));
        // lon stops sending heartbeats after slot 1 (its leader died); va fails.
        let changes = play(
            &mut s,
            0,
            1,
            &[(VA, "..xxxxxxxxxx"), (NY, "............"), (LON, "..")],
        );
        let impaired = IncidentKey::Datacenter(LON);
        let opened = opened(&changes);
        assert_eq!(opened.len(), 1, "{opened:?}");
        assert_eq!(opened[0].0, impaired);
        assert_eq!(
            opened[0].1,
            t(1),
            "its trouble began with its last heartbeat"
        );
        // Two healthy datacenters remain: va alone is not a majority of two.
        assert!(!s
            .open
            .contains_key(&IncidentKey::Monitor(IncidentKind::MonitorDown, 1)));
        // ny fails too: now both healthy datacenters agree.
        let more = play(&mut s, 12, 1, &[(VA, "xx"), (NY, "xx")]);
        assert_eq!(
            super::tests::opened(&more),
            [(IncidentKey::Monitor(IncidentKind::MonitorDown, 1), t(13))]
        );
        // lon comes back: the datacenter incident resolves.
        s.observe(Observation {
            monitor_id: 1,
            datacenter_id: LON,
            slot: t(14),
            outcome: Outcome::Up,
            error_kind: None,
            error_message: None,
        });
        let back = apply(&mut s, t(14));
        assert_eq!(resolved(&[back]), [(impaired, t(14))]);
    }

    #[test]
    fn no_leader_for_long_enough_is_impaired() {
        let mut s = state(1, Policy::default());
        all_leaders(&mut s, t(0));
        play(&mut s, 0, 1, &[(VA, "...."), (NY, "...."), (LON, "....")]);
        s.observe_leaders(&HashSet::from([VA, NY]), t(4));
        // A hand-over takes a moment: not impaired yet.
        assert!(apply(&mut s, t(5)).opened.is_empty());
        play(
            &mut s,
            4,
            1,
            &[(VA, "....."), (NY, "....."), (LON, ".....")],
        );
        let changes = apply(&mut s, t(10));
        assert_eq!(opened(&[changes]), [(IncidentKey::Datacenter(LON), t(4))]);
    }

    #[test]
    fn a_datacenter_failing_alone_on_most_monitors_is_impaired_not_the_targets() {
        let mut s = state(3, Policy::default());
        all_leaders(&mut s, t(0));
        let mut changes = Vec::new();
        for m in 1..=3 {
            s.last_slot.clear();
            changes.extend(play(
                &mut s,
                0,
                m,
                &[(VA, "....."), (NY, "....."), (LON, "..xxx")],
            ));
        }
        let opened = opened(&changes);
        assert_eq!(opened.len(), 1, "{opened:?}");
        assert_eq!(opened[0].0, IncidentKey::Datacenter(LON));
        assert!(changes
            .iter()
            .flat_map(|c| &c.opened)
            .all(|o| o.cause.contains("its own network")));
    }

    #[test]
    fn an_undeployed_datacenter_counts_for_nothing() {
        let mut s = state(1, Policy::default());
        s.datacenters.get_mut(&LON).unwrap().deployed = false;
        s.observe_leaders(&HashSet::from([VA, NY]), t(0));
        let changes = play(&mut s, 0, 1, &[(VA, "xxx"), (NY, "xxx")]);
        // Not impaired although silent, and the quorum is 2 of the 2 deployed.
        assert_eq!(
            opened(&changes),
            [(IncidentKey::Monitor(IncidentKind::MonitorDown, 1), t(1))]
        );
    }

    #[test]
    fn maintenance_prevents_opening_but_not_resolving() {
        let mut s = state(2, Policy::default());
        all_leaders(&mut s, t(0));
        s.maintenance.push(Maintenance {
            monitor_ids: vec![1],
            tags: vec![],
            datacenter_ids: vec![],
            starts_at: t(0),
            ends_at: t(5),
        });
        let during = play(&mut s, 0, 1, &[(VA, "xxxx"), (NY, "xxxx"), (LON, "xxxx")]);
        assert!(opened(&during).is_empty(), "inside the window");
        // Still down after the window: it opens then, not back at the failing slot.
        let after = play(&mut s, 4, 1, &[(VA, "xx"), (NY, "xx"), (LON, "xx")]);
        assert_eq!(
            opened(&after),
            [(IncidentKey::Monitor(IncidentKind::MonitorDown, 1), t(5))]
        );
        // A window starting mid-incident leaves it open; recovery resolves it.
        s.maintenance.push(Maintenance {
            monitor_ids: vec![],
            tags: vec!["web".into()],
            datacenter_ids: vec![],
            starts_at: t(6),
            ends_at: t(60),
        });
        let still = play(&mut s, 6, 1, &[(VA, "x.."), (NY, "x.."), (LON, "x..")]);
        assert!(opened(&still).is_empty());
        assert_eq!(
            resolved(&still),
            [(IncidentKey::Monitor(IncidentKind::MonitorDown, 1), t(8))]
        );
        // Monitor 2 shares the tag: nothing opens for it in the window.
        let other = play(&mut s, 9, 2, &[(VA, "xxx"), (NY, "xxx"), (LON, "xxx")]);
        assert!(opened(&other).is_empty());
    }

    #[test]
    fn a_datacenter_in_maintenance_is_neither_counted_nor_impaired() {
        let mut s = state(1, Policy::default());
        s.observe_leaders(&HashSet::from([VA, NY]), t(0));
        s.maintenance.push(Maintenance {
            monitor_ids: vec![],
            tags: vec![],
            datacenter_ids: vec![LON],
            starts_at: t(0),
            ends_at: t(100),
        });
        let changes = play(&mut s, 0, 1, &[(VA, "xxxxxxxxx"), (NY, "xxxxxxxxx")]);
        // No impaired lon although it is silent and leaderless; 2 of 2 healthy fail.
        assert_eq!(
            opened(&changes),
            [(IncidentKey::Monitor(IncidentKind::MonitorDown, 1), t(1))]
        );
    }

    #[test]
    fn muted_monitors_still_record_incidents() {
        let mut s = state(1, Policy::default());
        s.monitors.get_mut(&1).unwrap().mute_until = Some(t(1000));
        all_leaders(&mut s, t(0));
        let changes = play(&mut s, 0, 1, &[(VA, "xx"), (NY, "xx"), (LON, "xx")]);
        let opened: Vec<&Opened> = changes.iter().flat_map(|c| &c.opened).collect();
        assert_eq!(opened.len(), 1);
        assert!(opened[0].muted);
    }

    #[test]
    fn degraded_incidents_are_opt_in_and_separate() {
        let mut s = state(
            2,
            Policy {
                alert_on_degraded: true,
                ..Policy::default()
            },
        );
        s.monitors.get_mut(&2).unwrap().policy.alert_on_degraded = false;
        all_leaders(&mut s, t(0));
        let one = play(
            &mut s,
            0,
            1,
            &[(VA, "sss.."), (NY, "sss.."), (LON, "sss..")],
        );
        assert_eq!(
            opened(&one),
            [(IncidentKey::Monitor(IncidentKind::MonitorDegraded, 1), t(1))]
        );
        assert_eq!(
            resolved(&one),
            [(IncidentKey::Monitor(IncidentKind::MonitorDegraded, 1), t(4))]
        );
        s.last_slot.clear();
        let two = play(&mut s, 0, 2, &[(VA, "sss"), (NY, "sss"), (LON, "sss")]);
        assert!(opened(&two).is_empty());
    }

    #[test]
    fn incidents_of_deleted_monitors_are_resolved() {
        let mut s = state(1, Policy::default());
        all_leaders(&mut s, t(0));
        play(&mut s, 0, 1, &[(VA, "xx"), (NY, "xx"), (LON, "xx")]);
        s.monitors.clear();
        let changes = apply(&mut s, t(5));
        assert_eq!(
            resolved(&[changes]),
            [(IncidentKey::Monitor(IncidentKind::MonitorDown, 1), t(5))]
        );
    }

    #[test]
    fn repeated_and_stale_slots_are_ignored() {
        let mut s = state(1, Policy::default());
        all_leaders(&mut s, t(0));
        for _ in 0..3 {
            s.observe(Observation {
                monitor_id: 1,
                datacenter_id: VA,
                slot: t(1),
                outcome: Outcome::Down,
                error_kind: None,
                error_message: None,
            });
        }
        assert!(
            !s.pairs[&(1, VA)].down.flagged,
            "one slot read three times is one failure"
        );
    }

    #[test]
    fn resuming_from_stored_flags_opens_only_what_is_missing() {
        let mut s = state(1, Policy::default());
        all_leaders(&mut s, t(0));
        let first = play(&mut s, 0, 1, &[(VA, "xx"), (NY, "xx"), (LON, "..")]);
        assert_eq!(opened(&first).len(), 1);
        // A new evaluator: same stored flags and open incidents, streaks rebuilt from
        // the same heartbeats.
        let mut resumed = state(1, Policy::default());
        resumed.stored = s.stored.clone();
        resumed.open = s.open.clone();
        all_leaders(&mut resumed, t(0));
        let again = play(&mut resumed, 0, 1, &[(VA, "xx"), (NY, "xx"), (LON, "..")]);
        assert!(again.iter().all(Changes::is_empty), "{again:?}");
    }
}
