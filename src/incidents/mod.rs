//! Incidents: deciding once, for the whole system and from several datacenters, that a
//! target is really down (or slow), and keeping the record of it.
//!
//! - [`decision`]: the rules, as pure functions (thresholds, hysteresis, quorum).
//! - [`state`]: the evaluator's picture and the reconciliation that turns it into
//!   incident changes; no I/O.
//! - [`evaluator`]: the service that runs on the one instance holding the evaluator
//!   lock: reads new heartbeats once, persists changes with a fencing check.
//! - [`maintenance`]: expands recurring maintenance windows into occurrences.
//! - `vantage incidents` and `vantage maintenance` live in `src/cli/incidents.rs`.
//!
//! It reads heartbeats and configuration and writes only the incident tables; it knows
//! nothing of how anybody is told (notifications read `incident_events`).

pub mod decision;
pub mod evaluator;
pub mod maintenance;
pub mod state;

pub use evaluator::{spawn, EvaluatorConfig};
