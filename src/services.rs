//! How the background services of `vantage run` are started and stopped, all the same
//! way. A service is started by a function `spawn(.., shutdown: CancellationToken) ->
//! JoinHandle<()>`: it runs until the token is cancelled, then does its own ending
//! (an elector resigns and notifies, the liveness task marks the instance stopped) and
//! returns. A service that publishes something (the elector its leadership, the
//! configuration watcher the monitor set) returns that beside its handle; one whose
//! start can fail (binding a port) returns a `Result` before anything runs.
//!
//! The runner records the handles in [`Services`], named, and joins each group at its
//! step of the shutdown within that step's budget. It owns no service and knows nothing
//! of what they do.

use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Takes over SIGTERM (`docker stop`, systemd, `kill`) and SIGINT (Ctrl-C) from now on:
/// instead of ending the process, they complete the returned future, with the signal's
/// name for the log. Must be called inside the runtime.
pub fn stop_requested() -> impl std::future::Future<Output = &'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        }
    }
}

/// Running services by name, joined together at shutdown.
#[derive(Default)]
pub struct Services {
    running: Vec<(&'static str, JoinHandle<()>)>,
}

impl Services {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a started service under `name` (as logs name it).
    pub fn add(&mut self, name: &'static str, task: JoinHandle<()>) {
        self.running.push((name, task));
    }

    /// Waits until every service has ended (their token must be cancelled already), or
    /// until `deadline`. A service still running then is aborted: the process is on its
    /// way out, and what it held (a lock, a connection) goes with its connections.
    /// Returns the names of the ones aborted; they, and any that panicked, are logged.
    pub async fn join(self, deadline: Instant) -> Vec<&'static str> {
        let mut overran = Vec::new();
        // One after the other against one deadline: they all stop at once anyway, so
        // the wait is that of the slowest.
        for (name, mut task) in self.running {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) if err.is_panic() => {
                    tracing::error!(service = name, "service panicked");
                }
                Ok(Err(_)) => {}
                Err(_) => {
                    task.abort();
                    tracing::warn!(service = name, "service did not stop in time; aborted");
                    overran.push(name);
                }
            }
        }
        overran
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn services_that_overrun_the_deadline_are_named_and_aborted() {
        let shutdown = CancellationToken::new();
        let mut services = Services::new();
        let prompt = shutdown.clone();
        services.add(
            "prompt",
            tokio::spawn(async move { prompt.cancelled().await }),
        );
        let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
        services.add(
            "stuck",
            tokio::spawn(async move {
                // Dropped (so the sender closes) when the task is aborted.
                let _dropped = dropped_tx;
                std::future::pending::<()>().await;
            }),
        );
        services.add("panicking", tokio::spawn(async { panic!("on purpose") }));

        shutdown.cancel();
        let overran = services.join(Instant::now() + Duration::from_secs(1)).await;
        assert_eq!(overran, ["stuck"]);
        assert!(dropped_rx.await.is_err(), "the stuck service was aborted");
    }
}
