//! What the notification tests share: a recording HTTP receiver on loopback whose
//! answers the test decides, incident rows written the way the evaluator writes them
//! (incident and event in one transaction), and channels and routes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the request was complete (for latency figures).
    pub at: std::time::Instant,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

/// How the receiver answers a request: a status, after an optional delay.
pub type Responder = Box<dyn Fn(&Received) -> (u16, Duration) + Send + Sync>;

/// An HTTP/1.1 server on 127.0.0.1 that records every request before answering it.
pub struct Receiver {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    arrived: Arc<Notify>,
    respond: Arc<Mutex<Responder>>,
    task: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// Answers 200 to everything until told otherwise.
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let respond: Arc<Mutex<Responder>> =
            Arc::new(Mutex::new(Box::new(|_| (200, Duration::ZERO))));
        let task = {
            let (received, arrived, respond) = (received.clone(), arrived.clone(), respond.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (received, arrived, respond) =
                        (received.clone(), arrived.clone(), respond.clone());
                    tokio::spawn(async move {
                        let service = service_fn(move |request: Request<Incoming>| {
                            let (received, arrived, respond) =
                                (received.clone(), arrived.clone(), respond.clone());
                            async move {
                                let (parts, body) = request.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let request = Received {
                                    method: parts.method.to_string(),
                                    path: parts.uri.path().to_string(),
                                    headers: parts.headers,
                                    body,
                                    at: std::time::Instant::now(),
                                };
                                let (status, delay) = (respond.lock().unwrap())(&request);
                                received.lock().unwrap().push(request);
                                arrived.notify_waiters();
                                tokio::time::sleep(delay).await;
                                let mut response = Response::new(Full::new(Bytes::from(format!(
                                    "receiver says {status}"
                                ))));
                                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                                Ok::<_, Infallible>(response)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        Receiver {
            addr,
            received,
            arrived,
            respond,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn respond_with(
        &self,
        responder: impl Fn(&Received) -> (u16, Duration) + Send + Sync + 'static,
    ) {
        *self.respond.lock().unwrap() = Box::new(responder);
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `check` holds for the requests received so far.
    pub async fn wait_until(
        &self,
        what: &str,
        within: Duration,
        check: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let arrived = self.arrived.notified();
            let now = self.received();
            if check(&now) {
                return now;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!(
                    "timed out after {within:?} waiting for {what}; received {} requests",
                    now.len()
                );
            }
        }
    }
}

/// A webhook channel to `url` signed with `secret`, routed every incident (or only
/// `monitor`'s); returns the channel id.
pub async fn webhook_channel(
    pool: &PgPool,
    name: &str,
    url: &str,
    secret: &str,
    monitor: Option<i32>,
) -> i32 {
    let channel = channel(
        pool,
        name,
        "webhook",
        serde_json::json!({"url": url, "secret": secret}),
    )
    .await;
    route(pool, channel, monitor).await;
    channel
}

pub async fn channel(pool: &PgPool, name: &str, kind: &str, config: Value) -> i32 {
    sqlx::query_scalar(
        "INSERT INTO notification_channels (name, kind, config) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(name)
    .bind(kind)
    .bind(config)
    .fetch_one(pool)
    .await
    .unwrap()
}

pub async fn route(pool: &PgPool, channel: i32, monitor: Option<i32>) {
    sqlx::query("INSERT INTO notification_routes (channel_id, monitor_ids) VALUES ($1, $2)")
        .bind(channel)
        .bind(monitor.map(|m| vec![m]))
        .execute(pool)
        .await
        .unwrap();
}

/// Opens a monitor_down incident the way the evaluator does: the incident and its
/// `opened` event in one transaction. Returns the incident id.
pub async fn open_incident(pool: &PgPool, monitor: i32, datacenters: &[i32]) -> i64 {
    let mut tx = pool.begin().await.unwrap();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO incidents (kind, severity, monitor_id, opened_at, cause, datacenters, error_kinds) \
         VALUES ('monitor_down', 'critical', $1, now(), 'down from every datacenter: connect_refused', $2, '{connect_refused}') \
         RETURNING id",
    )
    .bind(monitor)
    .bind(datacenters)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO incident_events (incident_id, kind, at, datacenters, error_kinds, sample_error) \
         VALUES ($1, 'opened', now(), $2, '{connect_refused}', 'connection refused')",
    )
    .bind(id)
    .bind(datacenters)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    id
}

/// Resolves `incident` as the evaluator does: event first, then the incident row, in
/// one transaction (the outbox trigger runs at commit and sees both).
pub async fn resolve_incident(pool: &PgPool, incident: i64) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO incident_events (incident_id, kind, at, detail) VALUES ($1, 'resolved', now(), 'recovered')",
    )
    .bind(incident)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("UPDATE incidents SET resolved_at = now() WHERE id = $1")
        .bind(incident)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// (event, status, attempts) of every notification of `channel`, oldest first.
pub async fn outbox(pool: &PgPool, channel: i32) -> Vec<(String, String, i32)> {
    sqlx::query_as(
        "SELECT event, status, attempts FROM notifications WHERE channel_id = $1 ORDER BY id",
    )
    .bind(channel)
    .fetch_all(pool)
    .await
    .unwrap()
}
