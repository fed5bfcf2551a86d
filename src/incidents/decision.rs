//! The decision itself, as plain functions over plain values: no clock, no database.
//!
//! Three layers, each fed by the one before:
//! 1. [`Streak`]: in one datacenter, consecutive bad slots raise a flag after
//!    `failure_threshold`, consecutive good slots lower it after `recovery_threshold`
//!    (hysteresis, so a flapping target does not open and close incidents every slot).
//! 2. [`quorum_needed`]: how many healthy datacenters must raise the flag.
//! 3. [`verdict`]: whether the monitor is down (or degraded), and the slot at which the
//!    quorum was completed.
//!
//! Which datacenters are healthy is decided by the evaluator (it needs the clock and the
//! database); this module only counts.

use chrono::{DateTime, Utc};

/// A monitor's alert policy (`api_monitors` columns of the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub failure_threshold: u32,
    pub recovery_threshold: u32,
    /// `None`: a strict majority of the healthy datacenters.
    pub quorum: Option<u32>,
    pub alert_on_degraded: bool,
}

impl Default for Policy {
    /// The schema's defaults.
    fn default() -> Self {
        Self {
            failure_threshold: 2,
            recovery_threshold: 2,
            quorum: None,
            alert_on_degraded: false,
        }
    }
}

/// What one heartbeat says, for the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `up`: answered within the schedule's thresholds.
    Up,
    /// `warning` or `critical`: answered, but slowly.
    Degraded,
    /// `down`: failed.
    Down,
}

impl Outcome {
    /// From `api_heartbeats.status`.
    pub fn from_status(status: &str) -> Self {
        match status {
            "up" => Self::Up,
            "warning" | "critical" => Self::Degraded,
            _ => Self::Down,
        }
    }
}

/// Consecutive-slot hysteresis of one signal (down, or degraded) in one datacenter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Streak {
    bad: u32,
    good: u32,
    /// The datacenter counts the monitor as failing (or degraded) on this signal.
    pub flagged: bool,
}

impl Streak {
    /// A streak that starts from a stored flag (a new evaluator resuming).
    pub fn resumed(flagged: bool) -> Self {
        Self {
            flagged,
            ..Self::default()
        }
    }

    /// Counts one slot; true when the flag flipped on it.
    pub fn observe(&mut self, bad: bool, policy: &Policy) -> bool {
        if bad {
            self.bad = self.bad.saturating_add(1);
            self.good = 0;
            if !self.flagged && self.bad >= policy.failure_threshold {
                self.flagged = true;
                return true;
            }
        } else {
            self.good = self.good.saturating_add(1);
            self.bad = 0;
            if self.flagged && self.good >= policy.recovery_threshold {
                self.flagged = false;
                return true;
            }
        }
        false
    }
}

/// How many of `healthy` datacenters must count the monitor failing before it is down.
/// `None` when no datacenter is healthy: nothing can be decided from here.
pub fn quorum_needed(policy: &Policy, healthy: usize) -> Option<usize> {
    if healthy == 0 {
        return None;
    }
    Some(match policy.quorum {
        // An explicit k is capped, so that impaired datacenters cannot make an outage
        // undetectable.
        Some(k) => (k as usize).clamp(1, healthy),
        None => healthy / 2 + 1,
    })
}

/// Whether a monitor is down (or degraded) now, given when each healthy datacenter that
/// counts it failing raised its flag. `Some(at)`: the slot that completed the quorum,
/// i.e. the flag raised `quorum`-th in time.
pub fn verdict(
    policy: &Policy,
    healthy: usize,
    mut flagged_since: Vec<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    let needed = quorum_needed(policy, healthy)?;
    if flagged_since.len() < needed {
        return None;
    }
    flagged_since.sort_unstable();
    Some(flagged_since[needed - 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    /// Feeds a run of slots ('x' bad, '.' good) and returns the flag after each.
    fn run(policy: &Policy, slots: &str) -> String {
        let mut streak = Streak::default();
        slots
            .chars()
            .map(|c| {
                streak.observe(c == 'x', policy);
                if streak.flagged {
                    'F'
                } else {
                    '-'
                }
            })
            .collect()
    }

    #[test]
    fn thresholds_and_hysteresis() {
        let default = Policy::default();
        let strict = Policy {
            failure_threshold: 1,
            recovery_threshold: 1,
            ..Policy::default()
        };
        let slow = Policy {
            failure_threshold: 3,
            recovery_threshold: 4,
            ..Policy::default()
        };
        let cases = [
            // (policy, slots, flag after each slot)
            (default, ".x.x.x", "------"),   // single blips never count
            (default, "xx", "-F"),           // two in a row do
            (default, "xx.x.x.", "-FFFFFF"), // a flapping target stays failing
            (default, "xx..", "-FF-"),       // two good slots recover
            (default, "xx.x..", "-FFFF-"),   // a bad slot restarts the recovery count
            (strict, "x.x", "F-F"),          // 1/1: every change counts
            (slow, "xxx...x....", "--FFFFFFFF-"), // 3 to fail, 4 to recover
        ];
        for (policy, slots, expected) in cases {
            assert_eq!(run(&policy, slots), expected, "{policy:?} {slots}");
        }
    }

    #[test]
    fn observe_reports_flips_only() {
        let policy = Policy::default();
        let mut streak = Streak::default();
        let flips: Vec<bool> = [true, true, true, false, false, false]
            .into_iter()
            .map(|bad| streak.observe(bad, &policy))
            .collect();
        assert_eq!(flips, [false, true, false, false, true, false]);
    }

    #[test]
    fn a_resumed_streak_keeps_its_flag_until_recovery() {
        let policy = Policy::default();
        let mut streak = Streak::resumed(true);
        assert!(!streak.observe(false, &policy));
        assert!(streak.flagged, "one good slot is not a recovery");
        assert!(streak.observe(false, &policy));
        assert!(!streak.flagged);
    }

    #[test]
    fn quorum_is_a_strict_majority_of_healthy_datacenters_by_default() {
        let policy = Policy::default();
        let needed: Vec<Option<usize>> = (0..=9).map(|n| quorum_needed(&policy, n)).collect();
        assert_eq!(
            needed,
            [
                None,
                Some(1),
                Some(2),
                Some(2),
                Some(3),
                Some(3),
                Some(4),
                Some(4),
                Some(5),
                Some(5)
            ]
        );
    }

    #[test]
    fn explicit_quorum_is_capped_by_healthy_datacenters() {
        let policy = Policy {
            quorum: Some(3),
            ..Policy::default()
        };
        assert_eq!(quorum_needed(&policy, 9), Some(3));
        assert_eq!(quorum_needed(&policy, 3), Some(3));
        // Two of four datacenters impaired: the remaining two decide.
        assert_eq!(quorum_needed(&policy, 2), Some(2));
        assert_eq!(quorum_needed(&policy, 0), None);
    }

    #[test]
    fn verdict_opens_at_the_slot_that_completed_the_quorum() {
        let policy = Policy::default();
        // Three healthy datacenters, quorum 2: the second flag in time completes it.
        assert_eq!(verdict(&policy, 3, vec![t(30), t(10)]), Some(t(30)));
        assert_eq!(verdict(&policy, 3, vec![t(30), t(10), t(20)]), Some(t(20)));
        assert_eq!(verdict(&policy, 3, vec![t(10)]), None);
        // One of the three impaired: two healthy left, both must fail.
        assert_eq!(verdict(&policy, 2, vec![t(10)]), None);
        assert_eq!(verdict(&policy, 2, vec![t(10), t(12)]), Some(t(12)));
        // Nothing healthy: no decision, whatever the flags say.
        assert_eq!(verdict(&policy, 0, vec![t(10), t(12)]), None);
    }

    #[test]
    fn outcome_from_status() {
        assert_eq!(Outcome::from_status("up"), Outcome::Up);
        assert_eq!(Outcome::from_status("warning"), Outcome::Degraded);
        assert_eq!(Outcome::from_status("critical"), Outcome::Degraded);
        assert_eq!(Outcome::from_status("down"), Outcome::Down);
    }
}
