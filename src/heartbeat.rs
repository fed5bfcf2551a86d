//! A heartbeat: one probe's report placed on the schedule grid of one monitor in one
//! datacenter. This is the row of `api_heartbeats`, the unit the writer batches and
//! spools; it knows nothing about how it is measured or stored.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::probe::ProbeReport;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub monitor_id: i32,
    pub datacenter_id: i32,
    /// The deterministic slot this probe belongs to; with the two ids above it is the
    /// row's key, so a slot probed twice (overlapping leaders) is stored once.
    pub scheduled_at: DateTime<Utc>,
    /// When the probe actually started.
    pub executed_at: DateTime<Utc>,
    pub agent_id: Option<i64>,
    /// The leadership term (fencing token) under which the probe ran.
    pub leader_term: Option<i64>,
    /// How late the probe started relative to its slot.
    pub schedule_lag_ms: f64,
    pub report: ProbeReport,
}
