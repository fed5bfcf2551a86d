//! The `http` kind: one HTTP(S) request over fresh connections, redirects followed
//! as the monitor allows ([`HttpTarget`] is the validated request). One hop's exchange
//! (DNS, connect, TLS, request, response) is in [`super::super::exchange`].
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

use std::collections::HashSet;
use std::fmt;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use tokio::time::Instant;
use url::{Host, Url};

use crate::probe::exchange;
use crate::probe::monitor::{invalid, redact_query, MonitorSpec, ALWAYS_SECRET};
use crate::probe::observation::Observation;
use crate::probe::redirect_policy::RedirectPolicy;
use crate::probe::{ErrorKind, Failure, InvalidMonitor, IpFamily, Monitor, Prober};

/// A validated, pre-parsed HTTP request. `Debug` never shows secret header values.
#[derive(Clone)]
pub(crate) struct HttpTarget {
    method: Method,
    url: Url,
    follow_redirects: bool,
    max_redirects: u32,
    pub(crate) max_body_bytes: usize,
    pub(crate) redirect_policy: RedirectPolicy,
    /// `None` when the monitor sets none of them, as most do: every monitor is held for
    /// good, and inline these fields cost 96 bytes each (BENCHMARKS.md, "Memory, third
    /// round").
    extras: Option<Box<RequestExtras>>,
}

/// The parts of a request most monitors leave empty.
#[derive(Clone)]
struct RequestExtras {
    /// In the order given; a slice, not a `HeaderMap`, which is 96 bytes even when empty.
    headers: Box<[(HeaderName, HeaderValue)]>,
    /// Secret header names beyond [`ALWAYS_SECRET`].
    secret: Box<[HeaderName]>,
    body: Option<Bytes>,
    capture_body_bytes: Option<usize>,
    /// Response headers kept with the heartbeat, lower-case.
    capture_headers: Box<[String]>,
}

impl RequestExtras {
    fn is_empty(&self) -> bool {
        self.headers.is_empty()
            && self.secret.is_empty()
            && self.body.is_none()
            && self.capture_body_bytes.is_none()
            && self.capture_headers.is_empty()
    }
}

impl fmt::Debug for HttpTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, String)> = self
            .headers()
            .iter()
            .map(|(name, value)| {
                let shown = if self.is_secret(name) {
                    "<redacted>".to_string()
                } else {
                    String::from_utf8_lossy(value.as_bytes()).into_owned()
                };
                (name.as_str(), shown)
            })
            .collect();
        f.debug_struct("HttpTarget")
            .field("method", &self.method)
            .field("url", &redact_query(self.url.as_str()))
            .field("headers", &headers)
            .field("body_bytes", &self.body().map(Bytes::len))
            .field("follow_redirects", &self.follow_redirects)
            .field("max_redirects", &self.max_redirects)
            .field("capture_body_bytes", &self.capture_body_bytes())
            .field("max_body_bytes", &self.max_body_bytes)
            .field("redirect_policy", &self.redirect_policy)
            .field("capture_headers", &self.capture_headers())
            .finish()
    }
}

impl HttpTarget {
    pub(crate) fn new(
        spec: &MonitorSpec,
        ip_family: IpFamily,
    ) -> Result<HttpTarget, InvalidMonitor> {
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

        let mut secret: Vec<HeaderName> = Vec::new();
        for name in &spec.secret_headers {
            let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                invalid(
                    "secret_headers",
                    format!("{name:?} is not a valid header name"),
                )
            })?;
            if !ALWAYS_SECRET.contains(&name.as_str()) && !secret.contains(&name) {
                secret.push(name);
            }
        }
        let mut headers = Vec::with_capacity(spec.headers.len());
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
            if is_secret(&secret, &header) {
                header_value.set_sensitive(true);
            }
            headers.push((header, header_value));
        }

        check_ip_family(&url, ip_family).map_err(|p| invalid("url", p))?;
        if spec.max_body_bytes == 0 {
            return Err(invalid(
                "max_body_bytes",
                "must be at least 1 byte, e.g. 1048576 (1 MiB)",
            ));
        }
        let redirect_policy = RedirectPolicy::parse(&spec.redirect_policy)
            .map_err(|p| invalid("redirect_policy", p))?;
        let mut capture_headers = Vec::with_capacity(spec.capture_headers.len());
        for name in &spec.capture_headers {
            let header = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                invalid(
                    "capture_headers",
                    format!("{name:?} is not a valid header name"),
                )
            })?;
            capture_headers.push(header.as_str().to_string());
        }

        let extras = RequestExtras {
            headers: headers.into(),
            secret: secret.into(),
            body: spec.body.clone().map(Bytes::from),
            capture_body_bytes: spec.capture_body_bytes,
            capture_headers: capture_headers.into(),
        };
        Ok(HttpTarget {
            method,
            url,
            follow_redirects: spec.follow_redirects,
            max_redirects: spec.max_redirects,
            max_body_bytes: spec.max_body_bytes,
            redirect_policy,
            extras: (!extras.is_empty()).then(|| Box::new(extras)),
        })
    }

    fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        self.extras.as_ref().map_or(&[], |extras| &extras.headers)
    }

    /// Secret header names beyond [`ALWAYS_SECRET`].
    fn secret(&self) -> &[HeaderName] {
        self.extras.as_ref().map_or(&[], |extras| &extras.secret)
    }

    fn body(&self) -> Option<&Bytes> {
        self.extras.as_ref()?.body.as_ref()
    }

    /// Response bytes kept in the report's `response_body`, when asked for.
    pub(crate) fn capture_body_bytes(&self) -> Option<usize> {
        self.extras.as_ref()?.capture_body_bytes
    }

    /// Response headers kept with the heartbeat, lower-case.
    pub(crate) fn capture_headers(&self) -> &[String] {
        self.extras
            .as_ref()
            .map_or(&[], |extras| &extras.capture_headers)
    }

    fn is_secret(&self, name: &HeaderName) -> bool {
        is_secret(self.secret(), name)
    }

    pub(crate) fn method(&self) -> &Method {
        &self.method
    }

    pub(crate) fn url(&self) -> &Url {
        &self.url
    }

    /// The URL for display: its query string, if any, is `?…`.
    pub(crate) fn redacted_url(&self) -> String {
        redact_query(self.url.as_str())
    }

    /// The request headers with secret values replaced by `<redacted>`, for display.
    pub(crate) fn redacted_headers(&self) -> Vec<(String, String)> {
        self.headers()
            .iter()
            .map(|(name, value)| {
                let shown = if self.is_secret(name) {
                    "<redacted>".to_string()
                } else {
                    String::from_utf8_lossy(value.as_bytes()).into_owned()
                };
                (name.as_str().to_string(), shown)
            })
            .collect()
    }
}

/// Whether `name` is always secret or one of `extra`.
fn is_secret(extra: &[HeaderName], name: &HeaderName) -> bool {
    ALWAYS_SECRET.contains(&name.as_str()) || extra.contains(name)
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

/// The request of one hop; redirects change it.
pub(crate) struct HopRequest {
    pub url: Url,
    pub method: Method,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
}

/// Runs hops until a final response; the monitor's assertions judge it afterwards.
pub(crate) async fn probe(
    prober: &Prober,
    monitor: &Monitor,
    http: &HttpTarget,
    seen: &mut Observation,
    deadline: Instant,
) -> Result<(), Failure> {
    let mut hop = HopRequest {
        url: http.url.clone(),
        method: http.method.clone(),
        headers: http.headers().iter().cloned().collect(),
        body: http.body().cloned(),
    };
    let mut visited: HashSet<String> = HashSet::new();
    visited.insert(hop.url.as_str().to_string());
    let keep_body = monitor.assertions().needs_body() || http.capture_body_bytes().is_some();
    let mut first_hop_public = None;
    loop {
        let hop_seen = exchange::Hop {
            request: &hop,
            redirected: seen.redirect_count > 0,
            first_hop_public: &mut first_hop_public,
        };
        let response =
            exchange::exchange(prober, monitor, http, seen, hop_seen, deadline, keep_body).await?;
        let location = response
            .location
            .filter(|_| http.follow_redirects && is_redirect(response.status));
        let Some(location) = location else {
            return Ok(());
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
        http.redirect_policy
            .check_target(&http.url, &next)
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
        if seen.redirect_count >= http.max_redirects {
            return Err(Failure::new(
                ErrorKind::TooManyRedirects,
                format!("more than {} redirects (next: {shown})", http.max_redirects),
            ));
        }
        seen.redirect_count += 1;
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
            for name in ALWAYS_SECRET {
                hop.headers.remove(name);
            }
            for name in http.secret() {
                hop.headers.remove(name);
            }
        }
        hop.url = next;
    }
}

pub(crate) fn redirect_blocked(next: &Url, why: &str) -> Failure {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(url: &str) -> MonitorSpec {
        MonitorSpec {
            url: url.into(),
            ..MonitorSpec::default()
        }
    }

    #[test]
    fn invalid_fields_are_named_with_a_fix() {
        let err = Monitor::new(spec("ftp://example.com/")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "url: scheme \"ftp\" is not supported; use http:// or https://"
        );
        let err = Monitor::new(spec("example.com")).unwrap_err();
        assert!(err.to_string().contains("include the scheme"), "{err}");
        let mut s = spec("http://example.com/");
        s.headers = vec![("Bad Header".into(), "x".into())];
        assert_eq!(Monitor::new(s).unwrap_err().field, "headers");
        let mut s = spec("http://example.com/");
        s.ip_family = "ipv5".into();
        assert_eq!(Monitor::new(s).unwrap_err().field, "ip_family");
        let mut s = spec("http://127.0.0.1/");
        s.ip_family = "ipv6".into();
        assert_eq!(Monitor::new(s).unwrap_err().field, "url");
    }

    #[test]
    fn head_with_a_check_of_the_body_is_refused() {
        let head = |body_contains: Option<&str>, assertions: &[&str]| {
            let mut s = spec("http://example.com/");
            s.method = "head".into();
            s.body_contains = body_contains.map(str::to_string);
            s.assertions = crate::assertions::Assertions::from_texts(assertions).unwrap();
            Monitor::new(s)
        };
        for refused in [
            head(Some("ok"), &[]),
            head(None, &["body:contains ok"]),
            head(None, &["json:$.status == \"ok\""]),
        ] {
            let err = refused.unwrap_err();
            assert_eq!(err.field, "method");
            assert!(err.to_string().contains("use GET"), "{err}");
        }
        assert!(head(None, &["status:200", "header:etag exists"]).is_ok());
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
        let monitor = Monitor::new(spec("https://a.example/p?token=abc")).unwrap();
        assert_eq!(monitor.redacted_target(), "https://a.example/p?…");
        assert!(!format!("{monitor:?}").contains("token"));
        let err = Monitor::new(spec("https://?token=abc")).unwrap_err();
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
        let printed = format!("{:?} {:?}", s, Monitor::new(s.clone()).unwrap());
        assert!(
            !printed.contains("hunter2") && !printed.contains("k-12345"),
            "{printed}"
        );
        assert!(printed.contains("text/html"));
    }
}
