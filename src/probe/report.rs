//! What one probe measured: the contract between the probe engine and everything
//! downstream of it (the `check` command's output, heartbeats, the writer, SQL).
//!
//! Field names here are the column names of `api_heartbeats` and the keys of
//! `vantage check --json`; users and dashboards depend on them, so they only grow.
//! Phases are per-phase durations in milliseconds with microsecond precision; a phase
//! that did not happen is `None`, never a zero.

use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The verdict of one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeStatus {
    /// Succeeded within the warning threshold.
    Up,
    /// Succeeded, but `total_ms` exceeded the warning threshold.
    Warning,
    /// Succeeded, but `total_ms` exceeded the critical threshold.
    Critical,
    /// Failed; `error_kind` says how.
    Down,
}

impl ProbeStatus {
    pub const ALL: [ProbeStatus; 4] = [Self::Up, Self::Warning, Self::Critical, Self::Down];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Warning => "warning",
            Self::Critical => "critical",
            Self::Down => "down",
        }
    }

    /// A slow answer is still an answer: only `Down` counts against uptime.
    pub fn is_success(self) -> bool {
        self != Self::Down
    }
}

impl fmt::Display for ProbeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a probe failed: a closed set, stored as text in `api_heartbeats.error_kind`
/// (the migration's CHECK constraint lists the same strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The name does not exist (NXDOMAIN) or has no address of the requested family.
    DnsNxdomain,
    /// No DNS server answered in time.
    DnsTimeout,
    /// Any other resolver failure (SERVFAIL, refused, malformed answer).
    DnsError,
    /// The server actively refused the TCP connection (RST).
    ConnectRefused,
    /// The TCP handshake did not complete in time (filtered or black-holed address).
    ConnectTimeout,
    /// Any other connect failure (unreachable network or host).
    ConnectError,
    /// The TLS handshake failed for a reason other than the certificate.
    TlsHandshake,
    /// The server's certificate is untrusted, expired, or for another name.
    TlsCertificate,
    /// The probe's overall deadline passed; the message names the phase it hit.
    Timeout,
    /// The server broke the HTTP protocol or closed the connection mid-exchange.
    HttpProtocol,
    /// The response status is not in the monitor's expected set.
    StatusMismatch,
    /// The response body does not contain the expected text.
    BodyMismatch,
    /// The response body exceeded the monitor's byte cap (`max_body_bytes`).
    BodyTooLarge,
    /// A redirect pointed back to a URL already visited.
    RedirectLoop,
    /// More redirects than the monitor allows.
    TooManyRedirects,
    /// The monitor's redirect policy refused where a redirect led (e.g. from a public
    /// address to a loopback, link-local or private one).
    RedirectBlocked,
    /// The request could not be built (bad URL, header, method or redirect target).
    InvalidRequest,
    /// One of the monitor's assertions (or a kind's own expectation: a TCP banner, DNS
    /// answers) does not hold; the message names it and what was seen.
    AssertionFailed,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 18] = [
        Self::DnsNxdomain,
        Self::DnsTimeout,
        Self::DnsError,
        Self::ConnectRefused,
        Self::ConnectTimeout,
        Self::ConnectError,
        Self::TlsHandshake,
        Self::TlsCertificate,
        Self::Timeout,
        Self::HttpProtocol,
        Self::StatusMismatch,
        Self::BodyMismatch,
        Self::BodyTooLarge,
        Self::RedirectLoop,
        Self::TooManyRedirects,
        Self::RedirectBlocked,
        Self::InvalidRequest,
        Self::AssertionFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::DnsNxdomain => "dns_nxdomain",
            Self::DnsTimeout => "dns_timeout",
            Self::DnsError => "dns_error",
            Self::ConnectRefused => "connect_refused",
            Self::ConnectTimeout => "connect_timeout",
            Self::ConnectError => "connect_error",
            Self::TlsHandshake => "tls_handshake",
            Self::TlsCertificate => "tls_certificate",
            Self::Timeout => "timeout",
            Self::HttpProtocol => "http_protocol",
            Self::StatusMismatch => "status_mismatch",
            Self::BodyMismatch => "body_mismatch",
            Self::BodyTooLarge => "body_too_large",
            Self::RedirectLoop => "redirect_loop",
            Self::TooManyRedirects => "too_many_redirects",
            Self::RedirectBlocked => "redirect_blocked",
            Self::InvalidRequest => "invalid_request",
            Self::AssertionFailed => "assertion_failed",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything one probe observed. Built by a prober, never edited afterwards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    pub status: ProbeStatus,
    pub http_status: Option<u16>,
    /// Name lookup; `None` for an IP-literal host.
    pub dns_ms: Option<f64>,
    /// TCP handshake.
    pub connect_ms: Option<f64>,
    /// TLS handshake; `None` for plain HTTP.
    pub tls_ms: Option<f64>,
    /// From the connection being ready to the response head (request write,
    /// network round trip and server time).
    pub ttfb_ms: Option<f64>,
    /// Reading the body.
    pub transfer_ms: Option<f64>,
    /// The whole probe, from before DNS to the end of the body (or the failure).
    pub total_ms: f64,
    pub response_size_bytes: Option<u64>,
    pub remote_ip: Option<IpAddr>,
    /// `HTTP/1.1` or `HTTP/2`.
    pub http_version: Option<String>,
    /// `TLSv1.2` or `TLSv1.3`.
    pub tls_version: Option<String>,
    /// The leaf certificate's not-after, reported even when verification failed.
    pub tls_cert_expires_at: Option<DateTime<Utc>>,
    pub redirect_count: u32,
    pub error_kind: Option<ErrorKind>,
    pub error_message: Option<String>,
    /// Only when the monitor asked for it, capped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_body: Option<String>,
    /// The final response's `Content-Type` (http).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The final response's `Server` header (http).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The response headers the monitor asked to keep (`capture_headers`), by
    /// lower-case name, when the final response had them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<std::collections::BTreeMap<String, String>>,
    /// What only one kind measures (`api_heartbeats.details`): DNS `rcode` and
    /// `answers`, a TCP `banner`, a TLS certificate's `subject`, `issuer`, `dns_names`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl ProbeReport {
    pub fn success(&self) -> bool {
        self.status.is_success()
    }
}
