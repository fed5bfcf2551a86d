//! The probe engine. (Placeholder: owned by the probe work, issue #2.)

mod report;

pub use report::{ErrorKind, ProbeReport, ProbeStatus};
