//! The registry of monitor kinds: one file per kind, one arm per kind here. A kind
//! validates its own target and settings and runs one probe, filling in an
//! [`Observation`]; timing out, judging the answer with assertions and grading latency
//! happen once for every kind, in [`super::Prober::probe`].
//!
//! Adding a kind: a new file next to `http.rs` with a validated target type and a
//! `probe` function, a variant here and in [`super::Kind`], and the kind's name in
//! the database's check of `api_monitors.kind`.

pub(crate) mod dns;
pub(crate) mod http;
pub(crate) mod tcp;
pub(crate) mod tls;

use serde::de::DeserializeOwned;
use tokio::time::Instant;
use url::{Host, Url};

use super::monitor::{invalid, redact_query, Kind, MonitorSpec, DEFAULT_MAX_BODY_BYTES};
use super::observation::Observation;
use super::{Failure, InvalidMonitor, IpFamily, Monitor, Prober};

/// What a monitor probes, validated.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    Http(http::HttpTarget),
    Tcp(tcp::TcpTarget),
    Tls(tls::TlsTarget),
    Dns(dns::DnsTarget),
}

impl Target {
    pub fn new(spec: &MonitorSpec, ip_family: IpFamily) -> Result<Target, InvalidMonitor> {
        if let Some(implied) = Kind::of_url(spec.url.trim()) {
            if implied != spec.kind {
                return Err(invalid(
                    "url",
                    format!(
                        "{} is a {implied} target but the monitor's kind is {}; make them agree",
                        redact_query(spec.url.trim()),
                        spec.kind
                    ),
                ));
            }
        }
        if spec.kind != Kind::Http {
            no_http_request(spec)?;
        }
        Ok(match spec.kind {
            Kind::Http => {
                settings_of::<NoSettings>(spec)?;
                Target::Http(http::HttpTarget::new(spec, ip_family)?)
            }
            Kind::Tcp => Target::Tcp(tcp::TcpTarget::new(spec)?),
            Kind::Tls => Target::Tls(tls::TlsTarget::new(spec)?),
            Kind::Dns => Target::Dns(dns::DnsTarget::new(spec)?),
        })
    }

    pub fn kind(&self) -> Kind {
        match self {
            Target::Http(_) => Kind::Http,
            Target::Tcp(_) => Kind::Tcp,
            Target::Tls(_) => Kind::Tls,
            Target::Dns(_) => Kind::Dns,
        }
    }

    /// For display: no secrets (query strings of HTTP URLs are `?…`).
    pub fn redacted(&self) -> String {
        match self {
            Target::Http(http) => http.redacted_url(),
            Target::Tcp(tcp) => tcp.url().to_string(),
            Target::Tls(tls) => tls.url().to_string(),
            Target::Dns(dns) => dns.url().to_string(),
        }
    }

    /// Response bytes kept in the report's `response_body`, when asked for.
    pub fn keep_body_bytes(&self) -> Option<usize> {
        match self {
            Target::Http(http) => http.capture_body_bytes(),
            _ => None,
        }
    }

    /// Response headers kept in the report's `response_headers`.
    pub fn capture_headers(&self) -> &[String] {
        match self {
            Target::Http(http) => http.capture_headers(),
            _ => &[],
        }
    }

    pub async fn probe(
        &self,
        prober: &Prober,
        monitor: &Monitor,
        seen: &mut Observation,
        deadline: Instant,
    ) -> Result<(), Failure> {
        // Each kind's future is boxed: inline, every probe in flight would hold room for
        // the largest kind's state (a resolver lookup's, tens of kilobytes) whatever its
        // own kind, for as long as it waits on the network.
        match self {
            Target::Http(http) => {
                Box::pin(http::probe(prober, monitor, http, seen, deadline)).await
            }
            Target::Tcp(tcp) => Box::pin(tcp::probe(prober, monitor, tcp, seen, deadline)).await,
            Target::Tls(tls) => Box::pin(tls::probe(prober, monitor, tls, seen, deadline)).await,
            Target::Dns(dns) => Box::pin(dns::probe(prober, dns, seen)).await,
        }
    }
}

/// The settings of a kind that has none (http keeps everything in columns).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NoSettings {}

/// The kind's `settings` object, with unknown keys rejected by name.
fn settings_of<T: DeserializeOwned>(spec: &MonitorSpec) -> Result<T, InvalidMonitor> {
    let value = match &spec.settings {
        serde_json::Value::Null => serde_json::Value::Object(Default::default()),
        other => other.clone(),
    };
    serde_json::from_value(value)
        .map_err(|err| invalid("settings", format!("{err} (for a {} monitor)", spec.kind)))
}

/// A `scheme://host:port` target: the URL, its host and its port.
fn host_and_port(
    spec: &MonitorSpec,
    scheme: &str,
    example: &str,
) -> Result<(Url, Host, u16), InvalidMonitor> {
    let text = spec.url.trim();
    let url = Url::parse(text).map_err(|err| {
        invalid(
            "url",
            format!("{text:?} is not a valid {scheme} target: {err}; write e.g. {example}"),
        )
    })?;
    // Only http(s) URLs get their hosts parsed by `url` (others are opaque), so an
    // IP literal is told from a name here.
    let host = match url.host_str().filter(|h| !h.is_empty()).map(Host::parse) {
        Some(Ok(host)) => host,
        Some(Err(err)) => {
            return Err(invalid(
                "url",
                format!("{text}: the host is not valid: {err}"),
            ))
        }
        None => {
            return Err(invalid(
                "url",
                format!("{text} has no host; write e.g. {example}"),
            ))
        }
    };
    let Some(port) = url.port() else {
        return Err(invalid(
            "url",
            format!("{text} has no port; write e.g. {example}"),
        ));
    };
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            "url",
            format!("{text} has a path or query, which a {scheme} monitor does not use; write e.g. {example}"),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("url", "credentials in the URL are not supported"));
    }
    Ok((url, host, port))
}

/// Another kind sends no HTTP request: HTTP settings that differ from their defaults
/// are a mistake worth saying, not something to ignore.
fn no_http_request(spec: &MonitorSpec) -> Result<(), InvalidMonitor> {
    let set = [
        ("method", !spec.method.trim().eq_ignore_ascii_case("GET")),
        ("headers", !spec.headers.is_empty()),
        ("body", spec.body.is_some()),
        ("body_contains", spec.body_contains.is_some()),
        ("capture_headers", !spec.capture_headers.is_empty()),
        (
            "max_body_bytes",
            spec.max_body_bytes != DEFAULT_MAX_BODY_BYTES,
        ),
        (
            "redirect_policy",
            !matches!(spec.redirect_policy.trim(), "" | "safe"),
        ),
        (
            "expected_status",
            !matches!(spec.expected_status.trim(), "" | "200-399"),
        ),
        // Redirects are followed by default.
        ("follow_redirects", !spec.follow_redirects),
    ];
    match set.iter().find(|(_, differs)| *differs) {
        Some((field, _)) => Err(invalid(
            field,
            format!(
                "a {} monitor sends no HTTP request; leave {field} at its default",
                spec.kind
            ),
        )),
        None => Ok(()),
    }
}
