//! What one probe has seen so far, whatever its kind: clock readings, the connection's
//! facts, the answer. Kinds fill it in as they go; because it lives outside the
//! probe's future, it survives the deadline cutting a probe short, so a timeout still
//! reports the phases that completed and names the one that did not.
//!
//! [`Observation::into_report`] is the one place a [`ProbeReport`] is built.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use http::HeaderMap;

use super::certificate::LeafFacts;
use super::timings::{Phase, Timings};
use super::wire_clock::StreamStamps;
use super::{ErrorKind, Failure, ProbeReport, ProbeStatus};

/// Bytes kept of each captured response header's value.
const CAPTURED_HEADER_BYTES: usize = 256;

#[derive(Debug)]
pub(crate) struct Observation {
    pub timings: Timings,
    /// Where the probe is; names a timeout.
    pub phase: Phase,
    pub remote_ip: Option<IpAddr>,
    pub tls_version: Option<String>,
    /// The server's leaf certificate, recorded by the verifier during the handshake
    /// (shared with it, hence the lock), even when verification then fails.
    pub leaf: Arc<Mutex<Option<LeafFacts>>>,
    pub http_status: Option<u16>,
    pub http_version: Option<String>,
    pub response_size: Option<u64>,
    /// The final response's headers.
    pub headers: Option<HeaderMap>,
    /// The final response's body, kept only when something needs it.
    pub body: Option<Vec<u8>>,
    pub redirect_count: u32,
    /// What only this kind measures (`api_heartbeats.details`).
    pub details: Option<serde_json::Value>,
    /// What the current connection's socket saw (`wire_clock`): where the TLS, ttfb
    /// and transfer boundaries are read from.
    pub stamps: StreamStamps,
}

impl Observation {
    pub fn start_now() -> Observation {
        Observation {
            timings: Timings::start_now(),
            phase: Phase::Dns,
            remote_ip: None,
            tls_version: None,
            leaf: Arc::new(Mutex::new(None)),
            http_status: None,
            http_version: None,
            response_size: None,
            headers: None,
            body: None,
            redirect_count: 0,
            details: None,
            stamps: StreamStamps::default(),
        }
    }

    /// When the server's leaf certificate expires, if one was presented.
    pub fn cert_not_after(&self) -> Option<DateTime<Utc>> {
        self.leaf_facts(|leaf| leaf.not_after)
    }

    /// `read` applied to the recorded leaf certificate, without copying it.
    pub fn leaf_facts<T>(&self, read: impl FnOnce(&LeafFacts) -> T) -> Option<T> {
        self.leaf
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(read)
    }

    /// The failure of a probe whose deadline passed in the current phase.
    pub fn timeout_failure(&self, timeout: Duration) -> Failure {
        let kind = match self.phase {
            Phase::Dns => ErrorKind::DnsTimeout,
            Phase::Connect => ErrorKind::ConnectTimeout,
            _ => ErrorKind::Timeout,
        };
        let hop = if self.redirect_count > 0 {
            format!(" (after {} redirects)", self.redirect_count)
        } else {
            String::new()
        };
        Failure::new(
            kind,
            format!(
                "timed out after {} ms waiting for {}{hop}",
                timeout.as_millis(),
                self.phase.waiting_for()
            ),
        )
    }

    /// The report of this probe: `status` is the verdict (`Up`, a latency grade, or
    /// `Down` with the failure).
    pub fn into_report(
        self,
        status: Result<ProbeStatus, Failure>,
        total_ms: f64,
        keep_body_bytes: Option<usize>,
        capture_headers: &[String],
    ) -> ProbeReport {
        let phases = self.timings.phases();
        let (status, error_kind, error_message) = match status {
            Ok(status) => (status, None, None),
            Err(failure) => (ProbeStatus::Down, Some(failure.kind), Some(failure.message)),
        };
        let response_body = match (keep_body_bytes, &self.body) {
            (Some(cap), Some(body)) => {
                Some(String::from_utf8_lossy(&body[..body.len().min(cap)]).into_owned())
            }
            _ => None,
        };
        let header = |name: http::HeaderName| {
            self.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| capped(&String::from_utf8_lossy(v.as_bytes())))
        };
        let content_type = header(http::header::CONTENT_TYPE);
        let server = header(http::header::SERVER);
        let response_headers = self.headers.as_ref().and_then(|headers| {
            let kept: BTreeMap<String, String> = capture_headers
                .iter()
                .filter_map(|name| {
                    let values: Vec<String> = headers
                        .get_all(name.as_str())
                        .iter()
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .collect();
                    (!values.is_empty()).then(|| (name.clone(), capped(&values.join(", "))))
                })
                .collect();
            (!kept.is_empty()).then_some(kept)
        });
        let tls_cert_expires_at = self.cert_not_after();
        ProbeReport {
            status,
            http_status: self.http_status,
            dns_ms: phases.dns_ms,
            connect_ms: phases.connect_ms,
            tls_ms: phases.tls_ms,
            ttfb_ms: phases.ttfb_ms,
            transfer_ms: phases.transfer_ms,
            total_ms,
            response_size_bytes: self.response_size,
            remote_ip: self.remote_ip,
            http_version: self.http_version,
            tls_version: self.tls_version,
            tls_cert_expires_at,
            redirect_count: self.redirect_count,
            error_kind,
            error_message,
            response_body,
            content_type,
            server,
            response_headers,
            details: self.details,
        }
    }
}

/// `text` cut to [`CAPTURED_HEADER_BYTES`] on a character boundary.
fn capped(text: &str) -> String {
    let mut end = text.len().min(CAPTURED_HEADER_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}
