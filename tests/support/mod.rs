//! Shared test support: real servers on loopback (HTTP, HTTPS, DNS) and a real
//! PostgreSQL. Every integration test includes this with `mod support;`.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod cluster;
pub mod disk;
pub mod dns;
pub mod eventually;
pub mod http;
pub mod notify;
pub mod pg;
pub mod probe;
pub mod proxy;
pub mod smtp;
pub mod tls;
pub mod wire;
