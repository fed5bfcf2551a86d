//! The monitor model: what a definition (a database row, `vantage check` flags, a
//! notification channel's request) says, and the validated [`Monitor`] a probe runs.
//!
//! A [`MonitorSpec`] is raw text and numbers; [`Monitor::new`] validates it once,
//! into the settings every kind shares (timeout, assertions, latency grades) and the
//! kind's own validated [`Target`]. Errors are [`InvalidMonitor`]s that name the field
//! and the fix. Nothing here touches the network.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde_json::Value;

use super::kinds::{self, Target};
use crate::assertions::{Assertion, Assertions, BodyCheck, StatusSet};

/// Bodies are read up to this many bytes unless the monitor says otherwise; a longer
/// body fails with `body_too_large`.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// Headers whose values are secret whatever the monitor says.
pub(crate) const ALWAYS_SECRET: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

/// What a monitor probes. Stored as `api_monitors.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Kind {
    /// One HTTP(S) request, redirects followed as configured.
    #[default]
    Http,
    /// A TCP connection; optionally send bytes and expect a banner.
    Tcp,
    /// A TLS handshake on any port (optionally after SMTP STARTTLS).
    Tls,
    /// One DNS query.
    Dns,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Http, Kind::Tcp, Kind::Tls, Kind::Dns];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::Tcp => "tcp",
            Kind::Tls => "tls",
            Kind::Dns => "dns",
        }
    }

    /// The kind a target URL's scheme implies (`https://` is http).
    pub fn of_url(url: &str) -> Option<Kind> {
        let scheme = url.split_once("://")?.0.to_ascii_lowercase();
        match scheme.as_str() {
            "http" | "https" => Some(Kind::Http),
            "tcp" => Some(Kind::Tcp),
            "tls" => Some(Kind::Tls),
            "dns" => Some(Kind::Dns),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = InvalidMonitor;

    fn from_str(text: &str) -> Result<Kind, InvalidMonitor> {
        let text = text.trim().to_ascii_lowercase();
        Kind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| {
                invalid(
                    "kind",
                    format!("{text:?} is not a monitor kind; use http, tcp, tls or dns"),
                )
            })
    }
}

/// Which address family a monitor may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    /// IPv6 first, falling back to IPv4.
    Any,
    V4,
    V6,
}

impl IpFamily {
    pub fn as_str(self) -> &'static str {
        match self {
            IpFamily::Any => "any",
            IpFamily::V4 => "ipv4",
            IpFamily::V6 => "ipv6",
        }
    }

    pub(crate) fn record_names(self) -> &'static str {
        match self {
            IpFamily::Any => "A or AAAA",
            IpFamily::V4 => "A (IPv4)",
            IpFamily::V6 => "AAAA (IPv6)",
        }
    }

    fn parse(text: &str) -> Result<IpFamily, InvalidMonitor> {
        match text.trim().to_ascii_lowercase().as_str() {
            "" | "any" => Ok(IpFamily::Any),
            "ipv4" | "v4" | "4" => Ok(IpFamily::V4),
            "ipv6" | "v6" | "6" => Ok(IpFamily::V6),
            other => Err(invalid(
                "ip_family",
                format!("{other:?} is not an IP family; use any, ipv4 or ipv6"),
            )),
        }
    }
}

/// A raw, unvalidated monitor definition, as it comes from a database row or the
/// command line. [`Monitor::new`] validates it. The HTTP request fields (method,
/// headers, body, redirects, body caps) only apply to the `http` kind; another kind
/// with any of them set is rejected rather than silently ignored.
#[derive(Clone)]
pub struct MonitorSpec {
    pub kind: Kind,
    /// The target in the kind's form: `https://host/path`, `tcp://host:port`,
    /// `tls://host:port`, `dns://name?type=A&server=ip`.
    pub url: String,
    /// `GET`, `HEAD`, `POST`, ...
    pub method: String,
    pub headers: Vec<(String, String)>,
    /// Header names whose values must never be logged or printed. `Authorization`,
    /// `Cookie` and `Proxy-Authorization` are always secret.
    pub secret_headers: Vec<String>,
    pub body: Option<String>,
    /// Overall deadline of one probe.
    pub timeout: Duration,
    /// e.g. `200-299,301`; empty means 200-399. A `status` assertion replaces it.
    pub expected_status: String,
    /// One more `body contains` check, kept from the seed schema.
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
    /// What only this kind takes (`api_monitors.settings`): tcp `send`/`expect`, tls
    /// `starttls`, dns `answers`/`rcode`.
    pub settings: Value,
    /// Checks of the answer, after the kind's own.
    pub assertions: Assertions,
    /// Response headers to keep with every heartbeat (http).
    pub capture_headers: Vec<String>,
}

impl Default for MonitorSpec {
    fn default() -> Self {
        MonitorSpec {
            kind: Kind::Http,
            url: String::new(),
            method: "GET".into(),
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
            settings: Value::Object(Default::default()),
            assertions: Assertions::default(),
            capture_headers: Vec::new(),
        }
    }
}

impl MonitorSpec {
    /// Whether `name` is a header whose value must never be shown.
    pub(crate) fn is_secret_header(&self, name: &str) -> bool {
        ALWAYS_SECRET.iter().any(|s| s.eq_ignore_ascii_case(name))
            || self
                .secret_headers
                .iter()
                .any(|s| s.eq_ignore_ascii_case(name))
    }
}

impl fmt::Debug for MonitorSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(n, v)| {
                let shown = if self.is_secret_header(n) {
                    "<redacted>"
                } else {
                    v.as_str()
                };
                (n.as_str(), shown)
            })
            .collect();
        f.debug_struct("MonitorSpec")
            .field("kind", &self.kind)
            .field("method", &self.method)
            .field("url", &redact_query(&self.url))
            .field("headers", &headers)
            .field("timeout", &self.timeout)
            .field("expected_status", &self.expected_status)
            .field("assertions", &self.assertions)
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

pub(crate) fn invalid(field: &'static str, problem: impl Into<String>) -> InvalidMonitor {
    InvalidMonitor {
        field,
        problem: problem.into(),
    }
}

/// A validated monitor, ready to probe any number of times. `Debug` never shows
/// secrets (header values, query strings).
#[derive(Debug, Clone)]
pub struct Monitor {
    pub(crate) target: Target,
    pub(crate) ip_family: IpFamily,
    pub(crate) verify_tls: bool,
    timeout: Duration,
    assertions: Assertions,
    /// Latency grades; `f32` (exact for whole milliseconds up to 4.6 hours) keeps every
    /// monitor 16 bytes smaller than `f64` did.
    warning_ms: Option<f32>,
    critical_ms: Option<f32>,
}

impl Monitor {
    pub fn new(spec: MonitorSpec) -> Result<Monitor, InvalidMonitor> {
        if spec.timeout.is_zero() {
            return Err(invalid("timeout", "must be longer than zero, e.g. 10s"));
        }
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
        let ip_family = IpFamily::parse(&spec.ip_family)?;
        let assertions = judged_by(&spec)?;
        let target = kinds::Target::new(&spec, ip_family)?;
        // Otherwise the monitor would be down on every probe, for its own configuration.
        if matches!(&target, Target::Http(http) if http.method() == http::Method::HEAD)
            && assertions.needs_body()
        {
            return Err(invalid(
                "method",
                "HEAD gets no response body, so body_contains and body or json assertions could never pass; use GET",
            ));
        }
        Ok(Monitor {
            target,
            ip_family,
            verify_tls: spec.verify_tls,
            timeout: spec.timeout,
            assertions,
            warning_ms: spec.warning_ms.map(|ms| ms as f32),
            critical_ms: spec.critical_ms.map(|ms| ms as f32),
        })
    }

    pub fn kind(&self) -> Kind {
        self.target.kind()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn assertions(&self) -> &Assertions {
        &self.assertions
    }

    /// The target for display: a URL's query string, if any, is `?…`.
    pub fn redacted_target(&self) -> String {
        self.target.redacted()
    }

    /// The HTTP request's headers with secret values replaced by `<redacted>`, for
    /// display; empty for other kinds.
    pub fn redacted_headers(&self) -> Vec<(String, String)> {
        match &self.target {
            Target::Http(http) => http.redacted_headers(),
            _ => Vec::new(),
        }
    }

    /// The HTTP request's URL; `None` for other kinds.
    pub fn http_url(&self) -> Option<&url::Url> {
        match &self.target {
            Target::Http(http) => Some(http.url()),
            _ => None,
        }
    }

    /// The HTTP method, for display; `None` for other kinds.
    pub fn method(&self) -> Option<&http::Method> {
        match &self.target {
            Target::Http(http) => Some(http.method()),
            _ => None,
        }
    }

    /// Up, or slow enough to be a warning or critical, by `total_ms`.
    pub(crate) fn grade(&self, total_ms: f64) -> super::ProbeStatus {
        if self.critical_ms.is_some_and(|c| total_ms > f64::from(c)) {
            super::ProbeStatus::Critical
        } else if self.warning_ms.is_some_and(|w| total_ms > f64::from(w)) {
            super::ProbeStatus::Warning
        } else {
            super::ProbeStatus::Up
        }
    }
}

/// The monitor's checks in the order they run: the status set (the column, unless a
/// `status` assertion replaces it), `body_contains`, then the assertions as listed.
fn judged_by(spec: &MonitorSpec) -> Result<Assertions, InvalidMonitor> {
    spec.assertions
        .check_applicable(spec.kind.as_str())
        .map_err(|err| invalid("assertions", err.to_string()))?;
    let mut all = Vec::new();
    if spec.kind == Kind::Http {
        if !spec.assertions.has_status() {
            let status = StatusSet::parse(&spec.expected_status)
                .map_err(|err| invalid("expected_status", err))?;
            all.push(Assertion::Status(status));
        }
        if let Some(text) = &spec.body_contains {
            if text.is_empty() {
                return Err(invalid("body_contains", "is empty; leave it unset instead"));
            }
            all.push(Assertion::Body(BodyCheck::Contains(text.clone())));
        }
    }
    all.extend(spec.assertions.iter().cloned());
    Ok(all.into())
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
