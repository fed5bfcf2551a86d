//! The HTTP(S) prober: a monitor definition ([`HttpMonitorSpec`] validated into an
//! [`HttpMonitor`]) and one probe of it over fresh connections.
//!
//! One hop is: DNS (skipped for an IP literal) → TCP connect → TLS (https only) →
//! HTTP/1.1 or HTTP/2 (by ALPN) handshake → request → response head → body, read
//! under a byte cap. Each hop uses a new connection.
//!
//! With redirects followed, the phase durations (`dns_ms` … `transfer_ms`) are summed
//! over all hops, as curl and blackbox_exporter do, and `redirect_count` says how many
//! redirects were followed; `http_status`, `http_version`, `remote_ip`, `tls_version`,
//! `tls_cert_expires_at` and `response_size_bytes` describe the last hop. A phase that
//! no hop completed is `None`.
//!
//! Redirects go where the monitor's [`RedirectPolicy`] allows (by default a chain that
//! started on a public address stays on public ones). Query strings never appear in
//! error messages or `Debug` output (`?…`): they often carry tokens.
//!
//! A body is read up to the monitor's cap (`max_body_bytes`, default 1 MiB); responses
//! that carry no body (to HEAD, 204, 304, 1xx) are never held against it, whatever
//! their Content-Length says. HTTP/1 response heads are parsed as leniently as curl
//! reads them: up to [`MAX_RESPONSE_HEADERS`] header lines and obsolete folded lines.
//!
//! The whole probe runs under one `timeout_at` deadline, so a server that never
//! answers or trickles its body costs at most the monitor's timeout; the phase in
//! progress names the timeout (`dns_timeout`, `connect_timeout`, otherwise `timeout`
//! with "waiting for the response head/body/TLS handshake" in the message).

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::header::{HeaderMap, HeaderName, HeaderValue, HOST, LOCATION, USER_AGENT};
use http::{Method, Request, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use url::{Host, Url};

use super::in_task::InTaskExecutor;
use super::redirect_policy::RedirectPolicy;
use super::timings::{Phase, Timings};
use super::{connect, dns, tls, Failure, IpFamily, Prober};
use crate::probe::{ErrorKind, ProbeReport, ProbeStatus};

/// Bodies are read up to this many bytes unless the monitor says otherwise; a longer
/// body fails with `body_too_large`.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// Header lines accepted in an HTTP/1 response head (hyper's default is 100; curl and
/// browsers only bound the head's size, which hyper caps at about 400 kB).
pub const MAX_RESPONSE_HEADERS: usize = 1000;

/// Headers whose values are secret whatever the monitor says.
const ALWAYS_SECRET: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

/// A raw, unvalidated HTTP monitor definition, as it comes from a database row or the
/// command line. [`HttpMonitor::new`] validates it.
#[derive(Clone)]
pub struct HttpMonitorSpec {
    /// `GET`, `HEAD`, `POST`, ...
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// Header names whose values must never be logged or printed. `Authorization`,
    /// `Cookie` and `Proxy-Authorization` are always secret.
    pub secret_headers: Vec<String>,
    pub body: Option<String>,
    /// Overall deadline of one probe.
    pub timeout: Duration,
    /// e.g. `200-299,301`; empty means 200-399.
    pub expected_status: String,
    pub body_contains: Option<String>,
    pub follow_redirects: bool,
    pub max_redirects: u32,
    pub verify_tls: bool,
    /// `any`, `ipv4` or `ipv6`.
    pub ip_family: String,
    /// Keep up to this many bytes of the body in `ProbeReport::response_body`.
    pub capture_body_bytes: Option<usize>,
    /// A longer body fails with `body_too_large` (default 1 MiB).
    pub max_body_bytes: usize,
    /// `safe`, `same-host` or `any`; empty means `safe`.
    pub redirect_policy: String,
    pub warning_ms: Option<f64>,
    pub critical_ms: Option<f64>,
}

impl Default for HttpMonitorSpec {
    fn default() -> Self {
        HttpMonitorSpec {
            method: "GET".into(),
            url: String::new(),
            headers: Vec::new(),
            secret_headers: Vec::new(),
            body: None,
            timeout: Duration::from_secs(10),
            expected_status: String::new(),
            body_contains: None,
            follow_redirects: true,
            max_redirects: 10,
            verify_tls: true,
            ip_family: "any".into(),
            capture_body_bytes: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            redirect_policy: String::new(),
            warning_ms: None,
            critical_ms: None,
        }
    }
}

impl fmt::Debug for HttpMonitorSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = |name: &str| {
            ALWAYS_SECRET.iter().any(|s| s.eq_ignore_ascii_case(name))
                || self
                    .secret_headers
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(name))
        };
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str(),
                    if secret(n) { "<redacted>" } else { v.as_str() },
                )
            })
            .collect();
        f.debug_struct("HttpMonitorSpec")
            .field("method", &self.method)
            .field("url", &redact_query(&self.url))
            .field("headers", &headers)
            .field("timeout", &self.timeout)
            .field("expected_status", &self.expected_status)
            .finish_non_exhaustive()
    }
}

/// A monitor definition that cannot be probed; the message names the field and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidMonitor {
    pub field: &'static str,
    pub problem: String,
}

fn invalid(field: &'static str, problem: impl Into<String>) -> InvalidMonitor {
    InvalidMonitor {
        field,
        problem: problem.into(),
    }
}

/// A set of acceptable status codes such as `200-299,301`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSet {
    ranges: Vec<(u16, u16)>,
}

impl StatusSet {
    pub fn parse(text: &str) -> Result<StatusSet, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(StatusSet {
                ranges: vec![(200, 399)],
            });
        }
        let code = |s: &str| -> Result<u16, String> {
            let s = s.trim();
            match s.parse::<u16>() {
                Ok(c) if (100..=599).contains(&c) => Ok(c),
                _ => Err(format!(
                    "{s:?} is not a status code between 100 and 599; write e.g. \"200-299,301\""
                )),
            }
        };
        let mut ranges = Vec::new();
        for part in text.split(',') {
            // `2xx` is a class, as the database's check accepts it.
            let class = part.trim().to_ascii_lowercase();
            if let Some(digit) = class.strip_suffix("xx").and_then(|d| d.parse::<u16>().ok()) {
                if (1..=5).contains(&digit) {
                    ranges.push((digit * 100, digit * 100 + 99));
                    continue;
                }
            }
            let range = match part.split_once('-') {
                Some((lo, hi)) => (code(lo)?, code(hi)?),
                None => {
                    let c = code(part)?;
                    (c, c)
                }
            };
            if range.0 > range.1 {
                return Err(format!("range {part:?} is backwards; write low-high"));
            }
            ranges.push(range);
        }
        Ok(StatusSet { ranges })
    }

    pub fn contains(&self, code: u16) -> bool {
        self.ranges
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&code))
    }
}

impl fmt::Display for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (lo, hi)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

/// A validated, pre-parsed HTTP monitor. `Debug` never shows secret header values.
#[derive(Clone)]
pub struct HttpMonitor {
    method: Method,
    url: Url,
    headers: HeaderMap,
    secret: HashSet<HeaderName>,
    body: Option<Bytes>,
    timeout: Duration,
    expected: StatusSet,
    body_contains: Option<Vec<u8>>,
    follow_redirects: bool,
    max_redirects: u32,
    verify_tls: bool,
    ip_family: IpFamily,
    capture_body_bytes: Option<usize>,
    max_body_bytes: usize,
    redirect_policy: RedirectPolicy,
    warning_ms: Option<f64>,
    critical_ms: Option<f64>,
}

impl fmt::Debug for HttpMonitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, String)> = self
            .headers
            .iter()
            .map(|(name, value)| {
                let shown = if self.secret.contains(name) {
                    "<redacted>".to_string()
                } else {
                    String::from_utf8_lossy(value.as_bytes()).into_owned()
                };
                (name.as_str(), shown)
            })
            .collect();
        f.debug_struct("HttpMonitor")
            .field("method", &self.method)
            .field("url", &redact_query(self.url.as_str()))
            .field("headers", &headers)
            .field("body_bytes", &self.body.as_ref().map(Bytes::len))
            .field("timeout", &self.timeout)
            .field("expected_status", &self.expected.to_string())
            .field("body_contains", &self.body_contains.is_some())
            .field("follow_redirects", &self.follow_redirects)
            .field("max_redirects", &self.max_redirects)
            .field("verify_tls", &self.verify_tls)
            .field("ip_family", &self.ip_family)
            .field("capture_body_bytes", &self.capture_body_bytes)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("redirect_policy", &self.redirect_policy)
            .field("warning_ms", &self.warning_ms)
            .field("critical_ms", &self.critical_ms)
            .finish()
    }
}

impl HttpMonitor {
    pub fn new(spec: HttpMonitorSpec) -> Result<HttpMonitor, InvalidMonitor> {
        let method_text = spec.method.trim().to_ascii_uppercase();
        let method = Method::from_bytes(method_text.as_bytes()).map_err(|_| {
            invalid(
                "method",
                format!(
                    "{:?} is not an HTTP method; use e.g. GET, HEAD or POST",
                    spec.method
                ),
            )
        })?;

        let url = parse_url(spec.url.trim())?;

        let mut secret: HashSet<HeaderName> = ALWAYS_SECRET
            .iter()
            .map(|n| HeaderName::from_static(n))
            .collect();
        for name in &spec.secret_headers {
            let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                invalid(
                    "secret_headers",
                    format!("{name:?} is not a valid header name"),
                )
            })?;
            secret.insert(name);
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &spec.headers {
            let header = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                invalid(
                    "headers",
                    format!("{name:?} is not a valid header name (letters, digits and -_ only)"),
                )
            })?;
            let mut header_value = HeaderValue::from_str(value.trim()).map_err(|_| {
                invalid(
                    "headers",
                    format!("the value of {name:?} contains characters not allowed in a header (e.g. a newline)"),
                )
            })?;
            if secret.contains(&header) {
                header_value.set_sensitive(true);
            }
            headers.append(header, header_value);
        }

        if spec.timeout.is_zero() {
            return Err(invalid("timeout", "must be longer than zero, e.g. 10s"));
        }
        let expected =
            StatusSet::parse(&spec.expected_status).map_err(|p| invalid("expected_status", p))?;
        let ip_family = match spec.ip_family.trim().to_ascii_lowercase().as_str() {
            "" | "any" => IpFamily::Any,
            "ipv4" | "v4" | "4" => IpFamily::V4,
            "ipv6" | "v6" | "6" => IpFamily::V6,
            other => {
                return Err(invalid(
                    "ip_family",
                    format!("{other:?} is not an IP family; use any, ipv4 or ipv6"),
                ))
            }
        };
        check_ip_family(&url, ip_family).map_err(|p| invalid("url", p))?;
        for (field, value) in [
            ("warning_ms", spec.warning_ms),
            ("critical_ms", spec.critical_ms),
        ] {
            if let Some(v) = value {
                if !v.is_finite() || v < 0.0 {
                    return Err(invalid(
                        field,
                        format!("{v} is not a number of milliseconds >= 0"),
                    ));
                }
            }
        }
        if let Some(text) = &spec.body_contains {
            if text.is_empty() {
                return Err(invalid("body_contains", "is empty; leave it unset instead"));
            }
        }
        if spec.max_body_bytes == 0 {
            return Err(invalid(
                "max_body_bytes",
                "must be at least 1 byte, e.g. 1048576 (1 MiB)",
            ));
        }
        let redirect_policy = RedirectPolicy::parse(&spec.redirect_policy)
            .map_err(|p| invalid("redirect_policy", p))?;

        Ok(HttpMonitor {
            method,
            url,
            headers,
            secret,
            body: spec.body.map(Bytes::from),
            timeout: spec.timeout,
            expected,
            body_contains: spec.body_contains.map(String::into_bytes),
            follow_redirects: spec.follow_redirects,
            max_redirects: spec.max_redirects,
            verify_tls: spec.verify_tls,
            ip_family,
            capture_body_bytes: spec.capture_body_bytes,
            max_body_bytes: spec.max_body_bytes,
            redirect_policy,
            warning_ms: spec.warning_ms,
            critical_ms: spec.critical_ms,
        })
    }

    /// Changes the body cap (default [`DEFAULT_MAX_BODY_BYTES`]).
    pub fn with_max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    pub fn method(&self) -> &Method {
        &self.method
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The URL for display: its query string, if any, is `?…`.
    pub fn redacted_url(&self) -> String {
        redact_query(self.url.as_str())
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The request headers with secret values replaced by `<redacted>`, for display.
    pub fn redacted_headers(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .map(|(name, value)| {
                let shown = if self.secret.contains(name) {
                    "<redacted>".to_string()
                } else {
                    String::from_utf8_lossy(value.as_bytes()).into_owned()
                };
                (name.as_str().to_string(), shown)
            })
            .collect()
    }
}

fn parse_url(text: &str) -> Result<Url, InvalidMonitor> {
    let mut url = Url::parse(text).map_err(|err| {
        let hint = if err == url::ParseError::RelativeUrlWithoutBase {
            "; include the scheme, e.g. https://example.com/".to_string()
        } else {
            String::new()
        };
        invalid(
            "url",
            format!("{:?} is not a valid URL: {err}{hint}", redact_query(text)),
        )
    })?;
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(invalid(
                "url",
                format!("scheme {other:?} is not supported; use http:// or https://"),
            ))
        }
    }
    if url.host().is_none() {
        return Err(invalid(
            "url",
            format!("{:?} has no host", redact_query(text)),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "url",
            "credentials in the URL are not supported; send an Authorization header instead",
        ));
    }
    // Fragments are never sent.
    url.set_fragment(None);
    Ok(url)
}

/// `text` (a URL, or a relative reference from a `Location` header) with its query
/// string replaced by `?…` and its fragment dropped: queries often carry tokens, and
/// what is shown ends up in logs, heartbeats and JSON.
pub fn redact_query(text: &str) -> String {
    match text.find(['?', '#']) {
        Some(at) if text[at..].starts_with('?') && text.len() > at + 1 => {
            format!("{}?…", &text[..at])
        }
        Some(at) => text[..at].to_string(),
        None => text.to_string(),
    }
}

fn check_ip_family(url: &Url, family: IpFamily) -> Result<(), String> {
    match (url.host(), family) {
        (Some(Host::Ipv4(ip)), IpFamily::V6) => {
            Err(format!("host {ip} is IPv4 but the monitor is IPv6-only"))
        }
        (Some(Host::Ipv6(ip)), IpFamily::V4) => {
            Err(format!("host {ip} is IPv6 but the monitor is IPv4-only"))
        }
        _ => Ok(()),
    }
}

/// What a probe has learned so far; survives the deadline cutting the probe short.
struct Run {
    timings: Timings,
    phase: Phase,
    http_status: Option<u16>,
    response_size: Option<u64>,
    remote_ip: Option<IpAddr>,
    http_version: Option<String>,
    tls_version: Option<String>,
    leaf_not_after: Arc<Mutex<Option<DateTime<Utc>>>>,
    redirect_count: u32,
    /// Whether the chain's first connection went to a public address (the redirect
    /// policy's starting point).
    first_hop_public: Option<bool>,
    body: Option<Vec<u8>>,
}

pub(crate) async fn probe(prober: &Prober, monitor: &HttpMonitor) -> ProbeReport {
    let mut run = Run {
        timings: Timings::start_now(),
        phase: Phase::Dns,
        http_status: None,
        response_size: None,
        remote_ip: None,
        http_version: None,
        tls_version: None,
        leaf_not_after: Arc::new(Mutex::new(None)),
        redirect_count: 0,
        first_hop_public: None,
        body: None,
    };
    let deadline = Instant::from_std(run.timings.start) + monitor.timeout;
    let outcome =
        tokio::time::timeout_at(deadline, follow(prober, monitor, &mut run, deadline)).await;
    let end = std::time::Instant::now();
    let result = outcome.unwrap_or_else(|_| Err(timeout_failure(&run, monitor.timeout)));
    report(monitor, run, result, end)
}

fn timeout_failure(run: &Run, timeout: Duration) -> Failure {
    let kind = match run.phase {
        Phase::Dns => ErrorKind::DnsTimeout,
        Phase::Connect => ErrorKind::ConnectTimeout,
        _ => ErrorKind::Timeout,
    };
    let hop = if run.redirect_count > 0 {
        format!(" (after {} redirects)", run.redirect_count)
    } else {
        String::new()
    };
    Failure::new(
        kind,
        format!(
            "timed out after {} ms waiting for {}{hop}",
            timeout.as_millis(),
            run.phase.waiting_for()
        ),
    )
}

fn report(
    monitor: &HttpMonitor,
    run: Run,
    result: Result<(), Failure>,
    end: std::time::Instant,
) -> ProbeReport {
    let phases = run.timings.phases();
    let total_ms = run.timings.total_ms(end);
    let (status, error_kind, error_message) = match result {
        Ok(()) => {
            let status = if monitor.critical_ms.is_some_and(|c| total_ms > c) {
                ProbeStatus::Critical
            } else if monitor.warning_ms.is_some_and(|w| total_ms > w) {
                ProbeStatus::Warning
            } else {
                ProbeStatus::Up
            };
            (status, None, None)
        }
        Err(failure) => (ProbeStatus::Down, Some(failure.kind), Some(failure.message)),
    };
    let response_body = match (monitor.capture_body_bytes, &run.body) {
        (Some(cap), Some(body)) => {
            Some(String::from_utf8_lossy(&body[..body.len().min(cap)]).into_owned())
        }
        _ => None,
    };
    let tls_cert_expires_at = *run.leaf_not_after.lock().unwrap_or_else(|e| e.into_inner());
    ProbeReport {
        status,
        http_status: run.http_status,
        dns_ms: phases.dns_ms,
        connect_ms: phases.connect_ms,
        tls_ms: phases.tls_ms,
        ttfb_ms: phases.ttfb_ms,
        transfer_ms: phases.transfer_ms,
        total_ms,
        response_size_bytes: run.response_size,
        remote_ip: run.remote_ip,
        http_version: run.http_version,
        tls_version: run.tls_version,
        tls_cert_expires_at,
        redirect_count: run.redirect_count,
        error_kind,
        error_message,
        response_body,
        content_type: None,
        server: None,
        response_headers: None,
        details: None,
    }
}

/// The request of one hop; redirects change it.
struct Hop {
    url: Url,
    method: Method,
    headers: HeaderMap,
    body: Option<Bytes>,
}

/// Runs hops until a final response, then checks it against the monitor.
async fn follow(
    prober: &Prober,
    monitor: &HttpMonitor,
    run: &mut Run,
    deadline: Instant,
) -> Result<(), Failure> {
    let mut hop = Hop {
        url: monitor.url.clone(),
        method: monitor.method.clone(),
        headers: monitor.headers.clone(),
        body: monitor.body.clone(),
    };
    let mut visited: HashSet<String> = HashSet::new();
    visited.insert(hop.url.as_str().to_string());
    let keep_body = monitor.body_contains.is_some() || monitor.capture_body_bytes.is_some();
    loop {
        let response = exchange(prober, monitor, run, &hop, deadline, keep_body).await?;
        let location = response
            .location
            .filter(|_| monitor.follow_redirects && is_redirect(response.status));
        let Some(location) = location else {
            return check(monitor, run, response.status);
        };
        let next = hop.url.join(&location).map_err(|err| {
            Failure::new(
                ErrorKind::InvalidRequest,
                format!(
                    "redirect to {:?} is not a valid URL: {err}",
                    redact_query(&location)
                ),
            )
        })?;
        let shown = redact_query(next.as_str());
        if !matches!(next.scheme(), "http" | "https") || next.host().is_none() {
            return Err(Failure::new(
                ErrorKind::InvalidRequest,
                format!("redirect to {shown} is not an http(s) URL"),
            ));
        }
        check_ip_family(&next, monitor.ip_family).map_err(|p| {
            Failure::new(
                ErrorKind::InvalidRequest,
                format!("redirect to {shown}: {p}"),
            )
        })?;
        monitor
            .redirect_policy
            .check_target(&monitor.url, &next)
            .map_err(|why| redirect_blocked(&next, &why))?;
        if !visited.insert(next.as_str().to_string()) {
            return Err(Failure::new(
                ErrorKind::RedirectLoop,
                format!(
                    "redirect loop: {} redirects back to {shown}",
                    redact_query(hop.url.as_str())
                ),
            ));
        }
        if run.redirect_count >= monitor.max_redirects {
            return Err(Failure::new(
                ErrorKind::TooManyRedirects,
                format!(
                    "more than {} redirects (next: {shown})",
                    monitor.max_redirects
                ),
            ));
        }
        run.redirect_count += 1;
        // 303, and 301/302 after a POST, turn into a GET without body (as browsers and
        // curl do); 307/308 repeat the request as it was.
        let status = response.status;
        if status == StatusCode::SEE_OTHER && hop.method != Method::HEAD
            || (status == StatusCode::MOVED_PERMANENTLY || status == StatusCode::FOUND)
                && hop.method == Method::POST
        {
            hop.method = Method::GET;
            hop.body = None;
            hop.headers.remove(http::header::CONTENT_TYPE);
            hop.headers.remove(http::header::CONTENT_LENGTH);
        }
        // Credentials are for the origin they were configured for.
        if origin(&next) != origin(&hop.url) {
            for name in &monitor.secret {
                hop.headers.remove(name);
            }
        }
        hop.url = next;
    }
}

fn redirect_blocked(next: &Url, why: &str) -> Failure {
    Failure::new(
        ErrorKind::RedirectBlocked,
        format!("redirect to {} refused: {why}", redact_query(next.as_str())),
    )
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

fn origin(url: &Url) -> (String, Option<String>, Option<u16>) {
    (
        url.scheme().to_string(),
        url.host_str().map(str::to_string),
        url.port_or_known_default(),
    )
}

fn check(monitor: &HttpMonitor, run: &Run, status: StatusCode) -> Result<(), Failure> {
    if !monitor.expected.contains(status.as_u16()) {
        return Err(Failure::new(
            ErrorKind::StatusMismatch,
            format!(
                "status {} is not in the expected set {}",
                status.as_u16(),
                monitor.expected
            ),
        ));
    }
    if let Some(needle) = &monitor.body_contains {
        let body = run.body.as_deref().unwrap_or_default();
        if !body.windows(needle.len()).any(|w| w == needle.as_slice()) {
            return Err(Failure::new(
                ErrorKind::BodyMismatch,
                format!(
                    "response body ({} bytes) does not contain {:?}",
                    body.len(),
                    String::from_utf8_lossy(needle)
                ),
            ));
        }
    }
    Ok(())
}

/// What the follow loop needs from a hop's response.
struct HopResponse {
    status: StatusCode,
    location: Option<String>,
}

/// One hop: resolve, connect, TLS, request, head, body.
async fn exchange(
    prober: &Prober,
    monitor: &HttpMonitor,
    run: &mut Run,
    hop: &Hop,
    deadline: Instant,
    keep_body: bool,
) -> Result<HopResponse, Failure> {
    run.timings.new_hop();
    // The last hop's connection is the one described.
    run.remote_ip = None;
    run.http_version = None;
    run.tls_version = None;
    run.http_status = None;
    run.response_size = None;
    *run.leaf_not_after.lock().unwrap_or_else(|e| e.into_inner()) = None;

    let url = &hop.url;
    let https = url.scheme() == "https";
    let port = url
        .port_or_known_default()
        .unwrap_or(if https { 443 } else { 80 });
    let (addrs, server_name) = match url.host() {
        Some(Host::Ipv4(ip)) => (
            vec![IpAddr::V4(ip)],
            ServerName::IpAddress(IpAddr::V4(ip).into()),
        ),
        Some(Host::Ipv6(ip)) => (
            vec![IpAddr::V6(ip)],
            ServerName::IpAddress(IpAddr::V6(ip).into()),
        ),
        Some(Host::Domain(name)) => {
            let server_name = ServerName::try_from(name.trim_end_matches('.').to_string())
                .map_err(|_| {
                    Failure::new(
                        ErrorKind::InvalidRequest,
                        format!("{name:?} is not a valid host name"),
                    )
                })?;
            let fqdn = if name.ends_with('.') {
                name.to_string()
            } else {
                format!("{name}.")
            };
            run.phase = Phase::Dns;
            run.timings.hop().dns_start = Some(std::time::Instant::now());
            let addrs = dns::resolve(&prober.resolver, &fqdn, monitor.ip_family).await?;
            run.timings.hop().dns_done = Some(std::time::Instant::now());
            (addrs, server_name)
        }
        None => {
            return Err(Failure::new(
                ErrorKind::InvalidRequest,
                format!("{} has no host", redact_query(url.as_str())),
            ))
        }
    };

    // Checked on the addresses about to be connected, after DNS: a name that resolves
    // to an internal address is caught like an IP literal.
    let addrs = if run.redirect_count > 0 {
        monitor
            .redirect_policy
            .allowed_addresses(run.first_hop_public, addrs, prober.is_public)
            .map_err(|why| redirect_blocked(url, &why))?
    } else {
        addrs
    };

    run.phase = Phase::Connect;
    run.timings.hop().connect_start = Some(std::time::Instant::now());
    let (tcp, addr) = connect::connect(&addrs, port, deadline).await?;
    run.timings.hop().connected = Some(std::time::Instant::now());
    run.remote_ip = Some(addr.ip());
    if run.redirect_count == 0 {
        run.first_hop_public = Some((prober.is_public)(addr.ip()));
    }

    let request = build_request(hop)?;
    if https {
        run.phase = Phase::Tls;
        let stream = prober
            .tls
            .handshake(tcp, server_name, monitor.verify_tls, &run.leaf_not_after)
            .await?;
        run.timings.hop().tls_done = Some(std::time::Instant::now());
        run.tls_version = tls::version_name(&stream);
        let h2 = tls::negotiated_h2(&stream);
        http_exchange(stream, h2, request, monitor, run, keep_body).await
    } else {
        http_exchange(tcp, false, request, monitor, run, keep_body).await
    }
}

fn build_request(hop: &Hop) -> Result<Request<Full<Bytes>>, Failure> {
    let url = &hop.url;
    let mut headers = hop.headers.clone();
    if !headers.contains_key(USER_AGENT) {
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("vantage/", env!("CARGO_PKG_VERSION"))),
        );
    }
    if !headers.contains_key(http::header::ACCEPT) {
        headers.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
    }
    let uri: Uri = url.as_str().parse().map_err(|err| {
        Failure::new(
            ErrorKind::InvalidRequest,
            format!("{} cannot be requested: {err}", redact_query(url.as_str())),
        )
    })?;
    let mut request = Request::new(Full::new(hop.body.clone().unwrap_or_default()));
    *request.method_mut() = hop.method.clone();
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Ok(request)
}

/// Polls `fut` while also driving the connection `conn` in this same task, so that no
/// cross-task wake-up sits between the bytes arriving and the clock being read (and
/// nothing is left running when the probe is cut short: dropping stops everything).
async fn driving<F, C>(
    fut: F,
    conn: &mut Pin<&mut C>,
    conn_done: &mut bool,
) -> Result<F::Output, hyper::Error>
where
    F: Future,
    C: Future<Output = Result<(), hyper::Error>>,
{
    let mut fut = std::pin::pin!(fut);
    loop {
        tokio::select! {
            biased;
            out = &mut fut => return Ok(out),
            // Once the connection ends, `fut` resolves too (with an error or the end of
            // the body); the deadline bounds it either way.
            res = conn.as_mut(), if !*conn_done => {
                *conn_done = true;
                res?;
            }
        }
    }
}

async fn http_exchange<S>(
    io: S,
    h2: bool,
    mut request: Request<Full<Bytes>>,
    monitor: &HttpMonitor,
    run: &mut Run,
    keep_body: bool,
) -> Result<HopResponse, Failure>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    run.phase = Phase::Head;
    let io = TokioIo::new(io);
    // Responses to HEAD carry no body whatever their Content-Length says.
    let rules = BodyRules {
        keep: keep_body,
        expected: request.method() != Method::HEAD,
    };
    if h2 {
        let executor = InTaskExecutor::default();
        let (mut sender, conn) = hyper::client::conn::http2::handshake(executor.clone(), io)
            .await
            .map_err(|e| protocol_error("HTTP/2 handshake failed", e))?;
        let conn = executor.drive(conn);
        round_trip(conn, sender.send_request(request), monitor, run, rules).await
    } else {
        // HTTP/1.1 wants origin-form and a Host header.
        let url_host = host_header(request.uri());
        let path = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        *request.uri_mut() = path.parse().expect("a path and query from a valid URI");
        if !request.headers().contains_key(HOST) {
            if let Ok(value) = HeaderValue::from_str(&url_host) {
                request.headers_mut().insert(HOST, value);
            }
        }
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .max_headers(MAX_RESPONSE_HEADERS)
            .allow_obsolete_multiline_headers_in_responses(true)
            .handshake(io)
            .await
            .map_err(|e| protocol_error("HTTP/1.1 handshake failed", e))?;
        round_trip(conn, sender.send_request(request), monitor, run, rules).await
    }
}

/// How a hop treats the response body.
#[derive(Debug, Clone, Copy)]
struct BodyRules {
    /// Keep the bytes (for `body_contains` or `response_body`).
    keep: bool,
    /// The request can have a response body at all (not HEAD).
    expected: bool,
}

/// From a ready connection to the end of the body: the clock for ttfb starts here. The
/// request was only queued by `send`; nothing is written until `conn` is driven.
async fn round_trip<C, F>(
    conn: C,
    send: F,
    monitor: &HttpMonitor,
    run: &mut Run,
    rules: BodyRules,
) -> Result<HopResponse, Failure>
where
    C: Future<Output = Result<(), hyper::Error>>,
    F: Future<Output = Result<http::Response<Incoming>, hyper::Error>>,
{
    let mut conn = std::pin::pin!(conn);
    run.timings.hop().ready = Some(std::time::Instant::now());
    let mut done = false;
    let response = driving(send, &mut conn, &mut done)
        .await
        .and_then(|r| r)
        .map_err(|e| protocol_error("no response", e))?;
    read_response(response, monitor, run, rules, &mut conn, &mut done).await
}

/// A failed exchange: a TLS error surfacing on the established connection (in TLS 1.3
/// a server that wants a client certificate says so only after the handshake, with an
/// alert) is a TLS failure; anything else broke HTTP.
fn protocol_error(what: &str, err: hyper::Error) -> Failure {
    if let Some(tls) = tls::failure_in(&err) {
        return tls;
    }
    Failure::new(
        ErrorKind::HttpProtocol,
        format!("{what}: {}", describe_hyper(&err)),
    )
}

/// Records the head, then reads the body under the cap.
async fn read_response<C>(
    response: http::Response<Incoming>,
    monitor: &HttpMonitor,
    run: &mut Run,
    rules: BodyRules,
    conn: &mut Pin<&mut C>,
    conn_done: &mut bool,
) -> Result<HopResponse, Failure>
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    run.timings.hop().head = Some(std::time::Instant::now());
    run.phase = Phase::Body;
    run.http_status = Some(response.status().as_u16());
    run.http_version = Some(
        match response.version() {
            Version::HTTP_2 => "HTTP/2",
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_09 => "HTTP/0.9",
            Version::HTTP_3 => "HTTP/3",
            _ => "HTTP/1.1",
        }
        .to_string(),
    );
    let status = response.status();
    let location = response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let cap = monitor.max_body_bytes;
    // 204, 304 and 1xx never have a body (RFC 9110 6.4.1); their Content-Length, like
    // a HEAD response's, describes the resource, not bytes that will be sent.
    let body_expected = rules.expected && !matches!(status.as_u16(), 100..=199 | 204 | 304);
    let announced = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = announced.filter(|_| body_expected) {
        if len > cap as u64 {
            return Err(too_large(cap, Some(len)));
        }
    }
    let mut body: Incoming = response.into_body();
    let mut size: u64 = 0;
    let mut kept = rules.keep.then(Vec::new);
    loop {
        let frame = driving(body.frame(), conn, conn_done)
            .await
            .map_err(|e| protocol_error("reading the response body failed", e))?;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| protocol_error("reading the response body failed", e))?;
        if let Ok(data) = frame.into_data() {
            size += data.len() as u64;
            if size > cap as u64 {
                run.response_size = Some(size);
                return Err(too_large(cap, None));
            }
            if let Some(kept) = kept.as_mut() {
                kept.extend_from_slice(&data);
            }
        }
    }
    run.timings.hop().body_done = Some(std::time::Instant::now());
    run.response_size = Some(size);
    run.body = kept;
    Ok(HopResponse { status, location })
}

fn too_large(cap: usize, announced: Option<u64>) -> Failure {
    let detail = match announced {
        Some(len) => format!("Content-Length {len}"),
        None => "more was sent".to_string(),
    };
    Failure::new(
        ErrorKind::BodyTooLarge,
        format!(
            "response body exceeds the monitor's cap of {cap} bytes{} ({detail}); \
             raise max_body_bytes to accept it",
            human_bytes(cap)
        ),
    )
}

/// ` (1 MiB)` for a whole number of KiB or MiB, else nothing.
fn human_bytes(bytes: usize) -> String {
    const KIB: usize = 1 << 10;
    const MIB: usize = 1 << 20;
    if bytes >= MIB && bytes % MIB == 0 {
        format!(" ({} MiB)", bytes / MIB)
    } else if bytes >= KIB && bytes % KIB == 0 {
        format!(" ({} KiB)", bytes / KIB)
    } else {
        String::new()
    }
}

fn host_header(uri: &Uri) -> String {
    // `authority` never carries userinfo here (rejected at validation), and `url`
    // already dropped a default port.
    uri.authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default()
}

fn describe_hyper(err: &hyper::Error) -> String {
    use std::error::Error as _;
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if err.is_incomplete_message() {
        text.push_str(" (the server closed the connection early)");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(url: &str) -> HttpMonitorSpec {
        HttpMonitorSpec {
            url: url.into(),
            ..HttpMonitorSpec::default()
        }
    }

    #[test]
    fn status_sets() {
        let set = StatusSet::parse("200-299, 301").unwrap();
        assert!(set.contains(204) && set.contains(301) && !set.contains(302));
        assert_eq!(set.to_string(), "200-299,301");
        let default = StatusSet::parse("").unwrap();
        assert!(default.contains(200) && default.contains(399) && !default.contains(400));
        let classes = StatusSet::parse("2XX,304").unwrap();
        assert!(classes.contains(200) && classes.contains(299) && classes.contains(304));
        assert!(!classes.contains(300));
        assert!(StatusSet::parse("9xx").is_err());
        assert!(StatusSet::parse("299-200").is_err());
        assert!(StatusSet::parse("600").is_err());
    }

    #[test]
    fn invalid_fields_are_named_with_a_fix() {
        let err = HttpMonitor::new(spec("ftp://example.com/")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "url: scheme \"ftp\" is not supported; use http:// or https://"
        );
        let err = HttpMonitor::new(spec("example.com")).unwrap_err();
        assert!(err.to_string().contains("include the scheme"), "{err}");
        let mut s = spec("http://example.com/");
        s.headers = vec![("Bad Header".into(), "x".into())];
        assert_eq!(HttpMonitor::new(s).unwrap_err().field, "headers");
        let mut s = spec("http://example.com/");
        s.ip_family = "ipv5".into();
        assert_eq!(HttpMonitor::new(s).unwrap_err().field, "ip_family");
        let mut s = spec("http://127.0.0.1/");
        s.ip_family = "ipv6".into();
        assert_eq!(HttpMonitor::new(s).unwrap_err().field, "url");
    }

    #[test]
    fn query_strings_are_redacted() {
        assert_eq!(
            redact_query("https://a.example/p?token=abc#frag"),
            "https://a.example/p?…"
        );
        assert_eq!(redact_query("/relative?x=1"), "/relative?…");
        assert_eq!(
            redact_query("https://a.example/p#frag"),
            "https://a.example/p"
        );
        assert_eq!(redact_query("https://a.example/p?"), "https://a.example/p");
        assert_eq!(redact_query("https://a.example/"), "https://a.example/");
        let monitor = HttpMonitor::new(spec("https://a.example/p?token=abc")).unwrap();
        assert_eq!(monitor.redacted_url(), "https://a.example/p?…");
        assert!(!format!("{monitor:?}").contains("token"));
        let err = HttpMonitor::new(spec("https://?token=abc")).unwrap_err();
        assert!(!err.to_string().contains("token"), "{err}");
    }

    #[test]
    fn debug_redacts_secret_headers() {
        let mut s = spec("https://example.com/");
        s.headers = vec![
            ("Authorization".into(), "Bearer hunter2".into()),
            ("X-Api-Key".into(), "k-12345".into()),
            ("Accept".into(), "text/html".into()),
        ];
        s.secret_headers = vec!["x-api-key".into()];
        let printed = format!("{:?} {:?}", s, HttpMonitor::new(s.clone()).unwrap());
        assert!(
            !printed.contains("hunter2") && !printed.contains("k-12345"),
            "{printed}"
        );
        assert!(printed.contains("text/html"));
    }
}
