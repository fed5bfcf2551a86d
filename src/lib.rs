//! Vantage: a high-availability, multi-datacenter HTTP uptime prober.
//!
//! Data flows one way: configuration (Postgres) -> [`schedule`] -> [`probe`] ->
//! [`heartbeat`] -> [`storage`] writer -> Postgres, with leadership deciding whether
//! this instance's scheduler runs at all.

pub mod check;
pub mod embedded_postgres;
pub mod heartbeat;
pub mod metrics;
pub mod probe;
pub mod rollup;
pub mod schedule;
pub mod storage;
pub mod telemetry;

pub use heartbeat::Heartbeat;
pub use probe::{ErrorKind, ProbeReport, ProbeStatus};
