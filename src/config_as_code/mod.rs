//! Configuration as code: YAML files that say what the configuration tables hold
//! (regions, datacenters, schedules, monitors, notification channels and routes,
//! maintenance windows), and the commands that compare (`vantage diff`), apply
//! (`vantage apply`) and write them back (`vantage export`).
//!
//! Data flows one way: [`load`] reads files into [`model`] types with positions;
//! [`objects`] turns each object into the row the database holds; [`plan`] compares
//! rows with the database's; [`apply`] writes the plan in one transaction. [`export`]
//! goes the other way, rows to model to YAML. The database's triggers stay the final
//! judge of a value; this module only reports their verdict at the right line.

pub mod apply;
pub mod export;
pub mod load;
pub mod model;
pub mod objects;
pub mod plan;
pub mod quick;

pub use load::{Diagnostic, Loaded, Pos};
pub use model::ConfigFile;
