//! Test support (placeholder: owned by the probe work).
