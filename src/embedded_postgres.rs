//! A private PostgreSQL cluster. (Placeholder: owned by the storage work, issue #3.)
