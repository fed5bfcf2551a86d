//! The HTTP exchange of one hop over a fresh connection: DNS (skipped for an IP
//! literal) → TCP connect → TLS (https only) → HTTP/1.1 or HTTP/2 (by ALPN)
//! handshake → request → response head → body, read under a byte cap. The follow
//! loop of the `http` kind calls it once per hop; it knows nothing of redirects beyond
//! vetting a redirected hop's addresses.
//!
//! A body is read up to the monitor's cap (`max_body_bytes`, default 1 MiB); responses
//! that carry no body (to HEAD, 204, 304, 1xx) are never held against it, whatever
//! their Content-Length says. HTTP/1 response heads are parsed as leniently as curl
//! reads them: up to [`MAX_RESPONSE_HEADERS`] header lines and obsolete folded lines.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::header::{HeaderValue, HOST, LOCATION, USER_AGENT};
use http::{Method, Request, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::in_task::InTaskExecutor;
use super::kinds::http::{redirect_blocked, HopRequest, HttpTarget};
use super::observation::Observation;
use super::timings::Phase;
use super::{connect, dns, redact_query, tls, ErrorKind, Failure, Monitor, Prober};

/// Header lines accepted in an HTTP/1 response head (hyper's default is 100; curl and
/// browsers only bound the head's size, which hyper caps at about 400 kB).
pub const MAX_RESPONSE_HEADERS: usize = 1000;

/// One hop of a redirect chain, as the follow loop hands it over.
pub(crate) struct Hop<'a> {
    pub request: &'a HopRequest,
    /// Whether this hop follows a redirect (the redirect policy then vets addresses).
    pub redirected: bool,
    /// Whether the chain's first connection went to a public address (the redirect
    /// policy's starting point); set by the first hop.
    pub first_hop_public: &'a mut Option<bool>,
}

/// What the follow loop needs from a hop's response.
pub(crate) struct HopResponse {
    pub status: StatusCode,
    pub location: Option<String>,
}

/// One hop: resolve, connect, TLS, request, head, body.
pub(crate) async fn exchange(
    prober: &Prober,
    monitor: &Monitor,
    http: &HttpTarget,
    seen: &mut Observation,
    hop: Hop<'_>,
    deadline: Instant,
    keep_body: bool,
) -> Result<HopResponse, Failure> {
    seen.timings.new_hop();
    // The last hop's connection is the one described.
    seen.remote_ip = None;
    seen.http_version = None;
    seen.tls_version = None;
    seen.http_status = None;
    seen.response_size = None;
    seen.headers = None;
    *seen.leaf.lock().unwrap_or_else(|e| e.into_inner()) = None;

    let url = &hop.request.url;
    let https = url.scheme() == "https";
    let port = url
        .port_or_known_default()
        .unwrap_or(if https { 443 } else { 80 });
    let Some(host) = url.host() else {
        return Err(Failure::new(
            ErrorKind::InvalidRequest,
            format!("{} has no host", redact_query(url.as_str())),
        ));
    };
    // The phases' futures are boxed one at a time, so that a probe waiting in one phase
    // holds that phase's state only, not room for the largest of them (the resolver's
    // fallback, the HTTP exchange): the memory of a thousand probes in flight.
    let (addrs, server_name) =
        Box::pin(dns::resolve_host(prober, &host, monitor.ip_family, seen)).await?;

    // Checked on the addresses about to be connected, after DNS: a name that resolves
    // to an internal address is caught like an IP literal.
    let addrs = if hop.redirected {
        http.redirect_policy
            .allowed_addresses(*hop.first_hop_public, addrs, prober.is_public)
            .map_err(|why| redirect_blocked(url, &why))?
    } else {
        addrs
    };

    let tcp = connect::connect_timed(&addrs, port, deadline, seen).await?;
    // The TLS Finished and the HTTP/2 preface wait for the request and leave with it.
    seen.stamps.hold_writes();
    if !hop.redirected {
        *hop.first_hop_public = seen.remote_ip.map(|ip| (prober.is_public)(ip));
    }

    let request = build_request(hop.request)?;
    let limits = BodyRules {
        keep: keep_body,
        expected: request.method() != Method::HEAD,
        cap: http.max_body_bytes,
    };
    if https {
        let stream = prober
            .tls
            .handshake_timed(tcp, server_name, monitor.verify_tls, seen)
            .await?;
        let h2 = tls::negotiated_h2(&stream);
        Box::pin(http_exchange(stream, h2, request, seen, limits)).await
    } else {
        Box::pin(http_exchange(tcp, false, request, seen, limits)).await
    }
}

fn build_request(hop: &HopRequest) -> Result<Request<Full<Bytes>>, Failure> {
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
    seen: &mut Observation,
    rules: BodyRules,
) -> Result<HopResponse, Failure>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    seen.phase = Phase::Head;
    let io = TokioIo::new(io);
    // Each handshake and the HTTP/1.1 connection (which holds the TLS stream) are boxed:
    // inline, this future had room for the largest of them (15.4 kB) and held it for
    // the whole exchange, for every probe in flight (BENCHMARKS.md, "Memory, third
    // round"). A handshake's box is freed once it completes.
    if h2 {
        let executor = InTaskExecutor::default();
        let (mut sender, conn) =
            Box::pin(hyper::client::conn::http2::handshake(executor.clone(), io))
                .await
                .map_err(|e| protocol_error("HTTP/2 handshake failed", e))?;
        let conn = executor.drive(conn);
        round_trip(conn, sender.send_request(request), seen, rules).await
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
        let handshake = hyper::client::conn::http1::Builder::new()
            .max_headers(MAX_RESPONSE_HEADERS)
            .allow_obsolete_multiline_headers_in_responses(true)
            .handshake(io);
        let (mut sender, conn) = Box::pin(handshake)
            .await
            .map_err(|e| protocol_error("HTTP/1.1 handshake failed", e))?;
        round_trip(Box::pin(conn), sender.send_request(request), seen, rules).await
    }
}

/// How a hop treats the response.
#[derive(Debug, Clone, Copy)]
struct BodyRules {
    /// Keep the body's bytes (for body and JSON assertions, or `response_body`).
    keep: bool,
    /// The request can have a response body at all (responses to HEAD carry none,
    /// whatever their Content-Length says).
    expected: bool,
    /// A longer body fails with `body_too_large`.
    cap: usize,
}

/// From a ready connection to the end of the body: the clock for ttfb starts here. The
/// request was only queued by `send`; nothing is written until `conn` is driven.
async fn round_trip<C, F>(
    conn: C,
    send: F,
    seen: &mut Observation,
    rules: BodyRules,
) -> Result<HopResponse, Failure>
where
    C: Future<Output = Result<(), hyper::Error>>,
    F: Future<Output = Result<http::Response<Incoming>, hyper::Error>>,
{
    let mut conn = std::pin::pin!(conn);
    seen.timings.hop().ready = Some(std::time::Instant::now());
    seen.stamps.await_reply();
    let mut done = false;
    let response = driving(send, &mut conn, &mut done)
        .await
        .and_then(|r| r)
        .map_err(|e| protocol_error("no response", e))?;
    read_response(response, seen, rules, &mut conn, &mut done).await
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
    seen: &mut Observation,
    rules: BodyRules,
    conn: &mut Pin<&mut C>,
    conn_done: &mut bool,
) -> Result<HopResponse, Failure>
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    let hop = seen.timings.hop();
    hop.request_sent = seen
        .stamps
        .request_sent()
        .filter(|at| Some(*at) >= hop.ready);
    hop.head = Some(seen.stamps.last_arrival());
    seen.phase = Phase::Body;
    seen.http_status = Some(response.status().as_u16());
    seen.http_version = Some(
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
    let cap = rules.cap;
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
    // The headers are kept whole (moved, not copied): content type, server, captured
    // headers and header assertions all read them.
    let (head, mut body) = response.into_parts();
    seen.headers = Some(head.headers);
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
                seen.response_size = Some(size);
                return Err(too_large(cap, None));
            }
            if let Some(kept) = kept.as_mut() {
                kept.extend_from_slice(&data);
            }
        }
    }
    seen.timings.hop().body_done = Some(std::time::Instant::now());
    seen.response_size = Some(size);
    seen.body = kept;
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
