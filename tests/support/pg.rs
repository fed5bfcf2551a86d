//! Test support (placeholder: owned by the storage work).
