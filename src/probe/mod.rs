//! The probe engine: one probe of one monitor over fresh connections, every phase
//! timed, the answer judged.
//!
//! A [`Prober`] holds what probes share (one DNS resolver without a cache, the rustls
//! configurations, extra CA roots); it is `Send + Sync` and meant to sit behind an
//! `Arc` used by many tasks. [`Prober::probe`] is the one seam every kind goes
//! through: the kind's probe (in `kinds/`, one file per kind) runs under the monitor's
//! deadline and fills in an `Observation`; then, in one place for all kinds, a
//! timeout is named by the phase it hit, the monitor's assertions judge the answer
//! and latency is graded.
//!
//! The steps the kinds share live in their own files: `dns` (the resolver),
//! `connect` (TCP), `tls` (the handshake; `certificate` reads certificates), and
//! `exchange` (one HTTP request and response). Steps are recorded as clock readings
//! in a `Timings` value and converted to milliseconds once, when the [`ProbeReport`]
//! is built. The module owns measuring; it knows nothing about schedules, heartbeats
//! or storage.

pub mod dns;
mod dns_query;
pub mod redirect_policy;

mod certificate;
mod connect;
mod exchange;
mod in_task;
mod kinds;
mod monitor;
mod observation;
mod report;
mod timings;
mod tls;
mod verified_chains;
mod wire_clock;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;

use crate::assertions::Response;
pub use exchange::MAX_RESPONSE_HEADERS;
pub use monitor::{
    redact_query, InvalidMonitor, IpFamily, Kind, Monitor, MonitorSpec, DEFAULT_MAX_BODY_BYTES,
};
use observation::Observation;
pub use redirect_policy::RedirectPolicy;
pub use report::{ErrorKind, ProbeReport, ProbeStatus};
pub use timings::Phase;

/// Why a [`Prober`] could not be built; each names the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum ProberError {
    #[error("VANTAGE_DNS_SERVERS: {0}")]
    DnsServers(String),
    #[error(
        "reading the system DNS configuration (/etc/resolv.conf): {0}; set VANTAGE_DNS_SERVERS"
    )]
    SystemDns(String),
    #[error("building the DNS resolver: {0}")]
    Resolver(String),
    #[error("CA file {path}: {problem}")]
    CaFile { path: PathBuf, problem: String },
    #[error("extra CA certificate rejected: {0}")]
    ExtraRoot(String),
    #[error("the system random generator is not available")]
    Random,
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// Why a probe step failed: becomes `error_kind` and `error_message`.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub kind: ErrorKind,
    pub message: String,
}

impl Failure {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
        }
    }
}

/// What all probes of this process share. Cheap to use from many tasks at once.
pub struct Prober {
    resolver: dns::Resolver,
    tls: tls::TlsConfigs,
    is_public: redirect_policy::PublicTest,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober").finish_non_exhaustive()
    }
}

impl Prober {
    /// A prober configured from the environment: `VANTAGE_DNS_SERVERS` (comma list
    /// of `ip` or `ip:port`) replaces the system resolver configuration,
    /// `VANTAGE_CA_FILE` adds PEM roots to the compiled-in public ones.
    pub fn from_env() -> Result<Prober, ProberError> {
        Self::builder().env()?.build()
    }

    pub fn builder() -> ProberBuilder {
        ProberBuilder::default()
    }

    /// Probes `monitor` once. Never panics and never exceeds the monitor's timeout by
    /// more than timer granularity (about a millisecond); failures are in the report.
    pub async fn probe(&self, monitor: &Monitor) -> ProbeReport {
        let mut seen = Observation::start_now();
        let deadline = tokio::time::Instant::from_std(seen.timings.start) + monitor.timeout();
        let outcome = tokio::time::timeout_at(
            deadline,
            monitor.target.probe(self, monitor, &mut seen, deadline),
        )
        .await;
        let end = std::time::Instant::now();
        let total_ms = seen.timings.total_ms(end);
        let verdict = outcome
            .unwrap_or_else(|_| Err(seen.timeout_failure(monitor.timeout())))
            .and_then(|()| judge(monitor, &seen, total_ms))
            .map(|()| monitor.grade(total_ms));
        let keep_body_bytes = monitor.target.keep_body_bytes();
        seen.into_report(
            verdict,
            total_ms,
            keep_body_bytes,
            monitor.target.capture_headers(),
        )
    }
}

/// The monitor's assertions on what the probe saw.
fn judge(monitor: &Monitor, seen: &Observation, total_ms: f64) -> Result<(), Failure> {
    if monitor.assertions().is_empty() {
        return Ok(());
    }
    let response = Response {
        status: seen.http_status,
        headers: seen.headers.as_ref(),
        body: seen.body.as_deref(),
        total_ms,
        ttfb_ms: seen.timings.phases().ttfb_ms,
        cert_expires_at: seen.cert_not_after(),
        now: chrono::Utc::now(),
    };
    monitor
        .assertions()
        .check(&response)
        .map_err(|failed| Failure::new(failed.kind, failed.message))
}

/// Builds a [`Prober`]; see [`Prober::builder`].
#[derive(Debug)]
pub struct ProberBuilder {
    dns_servers: Option<Vec<SocketAddr>>,
    ca_files: Vec<PathBuf>,
    extra_roots: Vec<CertificateDer<'static>>,
    verified_chain_capacity: usize,
    is_public: redirect_policy::PublicTest,
}

impl Default for ProberBuilder {
    fn default() -> Self {
        ProberBuilder {
            dns_servers: None,
            ca_files: Vec::new(),
            extra_roots: Vec::new(),
            verified_chain_capacity: verified_chains::DEFAULT_CAPACITY,
            is_public: redirect_policy::is_public,
        }
    }
}

impl ProberBuilder {
    /// Use these DNS servers instead of the system configuration.
    pub fn dns_servers(mut self, servers: Vec<SocketAddr>) -> Self {
        self.dns_servers = Some(servers);
        self
    }

    /// Trust the PEM certificates in `path` in addition to the public roots.
    pub fn ca_file(mut self, path: impl AsRef<Path>) -> Self {
        self.ca_files.push(path.as_ref().to_path_buf());
        self
    }

    /// Trust these DER certificates in addition to the public roots.
    pub fn extra_roots(mut self, roots: Vec<CertificateDer<'static>>) -> Self {
        self.extra_roots.extend(roots);
        self
    }

    /// How many accepted certificate chains to remember, so that a host probed again
    /// within the hour is not validated again (its handshake signature always is);
    /// 0 validates every chain on every handshake. Default 10,000.
    pub fn verified_chain_capacity(mut self, capacity: usize) -> Self {
        self.verified_chain_capacity = capacity;
        self
    }

    /// What counts as a public address for the redirect policy (default
    /// [`redirect_policy::is_public`]). Tests use it to let a loopback address stand in
    /// for the internet.
    pub fn public_addresses(mut self, is_public: redirect_policy::PublicTest) -> Self {
        self.is_public = is_public;
        self
    }

    /// Applies `VANTAGE_DNS_SERVERS` and `VANTAGE_CA_FILE` when set and not empty.
    pub fn env(self) -> Result<Self, ProberError> {
        let mut builder = self.dns_servers_from_env()?;
        if let Some(path) = non_empty_env("VANTAGE_CA_FILE") {
            builder = builder.ca_file(path);
        }
        Ok(builder)
    }

    /// Applies `VANTAGE_DNS_SERVERS` (comma list of `ip` or `ip:port`) when set.
    pub fn dns_servers_from_env(mut self) -> Result<Self, ProberError> {
        if let Some(text) = non_empty_env("VANTAGE_DNS_SERVERS") {
            let servers = dns::parse_dns_servers(&text).map_err(ProberError::DnsServers)?;
            self = self.dns_servers(servers);
        }
        Ok(self)
    }

    pub fn build(self) -> Result<Prober, ProberError> {
        let mut roots = self.extra_roots;
        for path in &self.ca_files {
            roots.extend(tls::read_pem_roots(path)?);
        }
        Ok(Prober {
            resolver: dns::Resolver::new(self.dns_servers.as_deref())?,
            tls: tls::TlsConfigs::new(&roots, self.verified_chain_capacity)?,
            is_public: self.is_public,
        })
    }
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn prober_is_shareable() {
        assert_send_sync::<Prober>();
        assert_send_sync::<Monitor>();
    }
}
