//! Storage. (Placeholder: owned by the storage work, issue #3.)
