//! HTTP test servers on 127.0.0.1, each on its own random port (or on a given address:
//! `http_at`, `https_at`), stopped when dropped.
//!
//! [`TestServer::http`] / [`TestServer::https`] serve real HTTP/1.1 and HTTP/2 (by
//! ALPN) with hyper and these routes:
//! - `/` → 200 `hello from vantage`
//! - `/status/{code}` → that status
//! - `/delay/{ms}` → waits, then 200 (delays the response head)
//! - `/bytes/{n}` → 200 with `n` bytes of `x`
//! - `/redirect/{n}` → 302 to `/redirect/{n-1}`, `/redirect/0` → 200
//! - `/slow-redirect/{n}` → like `/redirect/{n}`, each hop's head delayed 50 ms
//! - `/loop/a` ↔ `/loop/b` → 302 to each other
//! - `/echo` → 200, body lists method, version, headers and the request body
//!
//! Misbehaving servers speak raw TCP: [`TestServer::silent`] accepts and never
//! answers, [`TestServer::trickle`] sends a head and then one body byte per interval;
//! [`refused_addr`] and [`BlackHole`] give addresses that refuse or drop connections.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

const LOOPBACK_ANY_PORT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

pub struct TestServer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    /// `http://127.0.0.1:port{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `https://127.0.0.1:port{path}`
    pub fn https_url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// `{scheme}://{host}:port{path}` for a name resolved elsewhere (DNS tests).
    pub fn url_with_host(&self, scheme: &str, host: &str, path: &str) -> String {
        format!("{scheme}://{host}:{}{path}", self.addr.port())
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Plain HTTP/1.1.
    pub async fn http() -> TestServer {
        Self::http_at(LOOPBACK_ANY_PORT).await
    }

    /// Plain HTTP/1.1 on `addr` (port 0: a random one).
    pub async fn http_at(addr: SocketAddr) -> TestServer {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve_http1(stream));
            }
        });
        TestServer { addr, task }
    }

    /// HTTPS with `config`; HTTP/2 when ALPN picks `h2`, else HTTP/1.1.
    pub async fn https(config: Arc<ServerConfig>) -> TestServer {
        Self::https_at(LOOPBACK_ANY_PORT, config).await
    }

    /// HTTPS with `config` on `addr` (port 0: a random one).
    pub async fn https_at(addr: SocketAddr, config: Arc<ServerConfig>) -> TestServer {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    let io = TokioIo::new(tls);
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service_fn(handle))
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service_fn(handle))
                            .await;
                    }
                });
            }
        });
        TestServer { addr, task }
    }

    /// Accepts connections and never sends a byte (nor closes them).
    pub async fn silent() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        TestServer { addr, task }
    }

    /// Answers every request with a head announcing `total` body bytes, then sends
    /// them one byte per `interval`.
    pub async fn trickle(total: usize, interval: Duration) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    if read_head(&mut stream).await.is_none() {
                        return;
                    }
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {total}\r\n\r\n"
                    );
                    if stream.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    for _ in 0..total {
                        tokio::time::sleep(interval).await;
                        if stream.write_all(b"x").await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        TestServer { addr, task }
    }
}

/// An address on which nothing listens: connecting is refused (RST).
pub async fn refused_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// A loopback address whose SYNs are dropped: a listener with a full accept queue
/// that never accepts, so a new connect hangs like one to a black-holed address.
pub struct BlackHole {
    pub addr: SocketAddr,
    _listener: TcpListener,
    _fillers: Vec<TcpStream>,
}

impl BlackHole {
    pub async fn new() -> BlackHole {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        // Fill the (tiny) accept queue; further SYNs are silently dropped.
        let mut fillers = Vec::new();
        for _ in 0..4 {
            match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => fillers.push(stream),
                _ => break,
            }
        }
        BlackHole {
            addr,
            _listener: listener,
            _fillers: fillers,
        }
    }
}

async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(buf)
}

async fn serve_http1(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service_fn(handle))
        .await;
}

async fn handle(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let response = match segments.as_slice() {
        [""] => text(StatusCode::OK, "hello from vantage"),
        ["status", code] => {
            let code = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok());
            match code {
                Some(code) => text(code, &format!("status {}", code.as_u16())),
                None => text(StatusCode::BAD_REQUEST, "bad status"),
            }
        }
        ["delay", ms] => {
            let ms: u64 = ms.parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            text(StatusCode::OK, &format!("delayed {ms} ms"))
        }
        ["bytes", n] => {
            let n: usize = n.parse().unwrap_or(0);
            Response::new(Full::new(Bytes::from(vec![b'x'; n])))
        }
        ["redirect", n] => {
            let n: u32 = n.parse().unwrap_or(0);
            if n == 0 {
                text(StatusCode::OK, "redirect chain done")
            } else {
                redirect(&format!("/redirect/{}", n - 1))
            }
        }
        ["slow-redirect", n] => {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let n: u32 = n.parse().unwrap_or(0);
            if n == 0 {
                text(StatusCode::OK, "redirect chain done")
            } else {
                redirect(&format!("/slow-redirect/{}", n - 1))
            }
        }
        // An API health document, with the headers a CDN would add.
        ["json", status] => {
            let body = format!(
                r#"{{"status": "{status}", "count": 3, "checks": [{{"name": "db", "ok": true}}, {{"name": "cache", "ok": {}}}]}}"#,
                *status == "ok"
            );
            let mut response = text(StatusCode::OK, &body);
            let headers = response.headers_mut();
            headers.insert(
                http::header::CONTENT_TYPE,
                "application/json; charset=utf-8".parse().unwrap(),
            );
            headers.insert(http::header::SERVER, "vantage-test/1.0".parse().unwrap());
            headers.append("x-cache", "HIT".parse().unwrap());
            response
        }
        ["loop", "a"] => redirect("/loop/b"),
        ["loop", "b"] => redirect("/loop/a"),
        ["echo"] => {
            let mut out = format!("{} {:?}\n", request.method(), request.version());
            for (name, value) in request.headers() {
                out.push_str(&format!("{}: {}\n", name, value.to_str().unwrap_or("?")));
            }
            let body = request.into_body().collect().await.map(|b| b.to_bytes());
            out.push('\n');
            out.push_str(&String::from_utf8_lossy(&body.unwrap_or_default()));
            text(StatusCode::OK, &out)
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    };
    Ok(response)
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
}

fn redirect(location: &str) -> Response<Full<Bytes>> {
    let mut response = text(StatusCode::FOUND, "redirecting");
    response
        .headers_mut()
        .insert(http::header::LOCATION, location.parse().unwrap());
    response
}
