//! The instance's HTTP endpoints on `VANTAGE_LISTEN`: `/healthz` (the process is alive),
//! `/readyz` (the database answers), `/status` (what this instance is doing, as JSON),
//! `/metrics` (Prometheus).
//! Read-only views of state owned elsewhere; nothing here changes that state.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::agent::Registration;
use crate::leadership::Leadership;
use crate::metrics::{self, Metrics};
use crate::storage::WriterStats;

/// How long `/readyz` waits for the database before answering 503.
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything the endpoints read. Cheap to clone.
#[derive(Clone)]
pub struct InstanceView {
    pub datacenter: String,
    pub instance_name: String,
    pub agent: Registration,
    pub leadership: watch::Receiver<Leadership>,
    pub monitors_scheduled: Arc<AtomicUsize>,
    pub writer: Arc<WriterStats>,
    pub metrics: Arc<Metrics>,
    pub pool: PgPool,
}

#[derive(Debug, Serialize)]
pub struct StatusBody {
    pub datacenter: String,
    pub instance_name: String,
    pub agent_id: i64,
    /// `leader` or `standby`.
    pub role: &'static str,
    pub term: Option<i64>,
    /// False while a leader rides out a database outage without its lock connection.
    pub lock_confirmed: bool,
    pub monitors_scheduled: usize,
    pub writer_buffered_rows: u64,
    pub writer_spooled_rows: u64,
    pub writer_spool_bytes: u64,
    pub version: &'static str,
}

impl InstanceView {
    pub fn status(&self) -> StatusBody {
        let leadership = *self.leadership.borrow();
        let writer = self.writer.snapshot();
        StatusBody {
            datacenter: self.datacenter.clone(),
            instance_name: self.instance_name.clone(),
            agent_id: self.agent.id(),
            role: leadership.role_name(),
            term: leadership.term(),
            lock_confirmed: matches!(
                leadership,
                Leadership::Leader {
                    lock_confirmed: true,
                    ..
                }
            ),
            monitors_scheduled: self.monitors_scheduled.load(Ordering::Relaxed),
            writer_buffered_rows: writer.buffered_rows,
            writer_spooled_rows: writer.spooled_rows,
            writer_spool_bytes: writer.spool_bytes,
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

pub fn router(view: InstanceView) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(prometheus))
        .with_state(view)
}

/// Binds `addr` and serves until `shutdown`. Binding errors are returned to the caller
/// so a taken port is a clear start-up failure, not a silent missing endpoint.
pub async fn spawn(
    addr: SocketAddr,
    view: InstanceView,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    let app = router(view);
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(err) = served {
            tracing::error!(error = %err, "HTTP endpoints stopped");
        }
    }))
}

async fn readyz(State(view): State<InstanceView>) -> impl IntoResponse {
    let ping = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&view.pool);
    match tokio::time::timeout(READINESS_TIMEOUT, ping).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n"),
    }
}

async fn status(State(view): State<InstanceView>) -> Json<StatusBody> {
    Json(view.status())
}

/// Gauges owned elsewhere (leadership, writer backlog) are read at scrape time, so they
/// are never stale and need no task of their own.
async fn prometheus(State(view): State<InstanceView>) -> impl IntoResponse {
    let leadership = *view.leadership.borrow();
    view.metrics
        .set_leader(&view.datacenter, leadership.is_leader(), leadership.term());
    let writer = view.writer.snapshot();
    view.metrics
        .set_writer_backlog(writer.buffered_rows, writer.spooled_rows);
    (
        [(axum::http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        view.metrics.render(),
    )
}
