//! Vantage: a high-availability, multi-datacenter HTTP uptime prober.
//!
//! Data flows one way: configuration (Postgres) -> [`schedule`] -> [`probe`] ->
//! [`heartbeat`] -> [`storage`] writer -> Postgres, with leadership deciding whether
//! this instance's scheduler runs at all.

pub mod agent;
pub mod api;
pub mod assertions;
pub mod cli;
pub mod config_as_code;
pub mod embedded_postgres;
pub mod heartbeat;
pub mod housekeeping;
pub mod incidents;
pub mod leadership;
pub mod metrics;
pub mod monitors;
pub mod notify;
pub mod probe;
pub mod rollup;
pub mod runner;
pub mod schedule;
pub mod services;
pub mod storage;
pub mod telemetry;

pub use heartbeat::Heartbeat;
pub use probe::{ErrorKind, ProbeReport, ProbeStatus};
