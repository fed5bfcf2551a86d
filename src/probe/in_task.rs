//! An executor for hyper's HTTP/2 client that runs what hyper spawns inside the probe's
//! own task.
//!
//! hyper's HTTP/2 client spawns the connection's I/O loop, and a task per request that
//! waits for the response, onto the executor it is given. On tokio's executor every
//! response then crosses two task wake-ups (often two threads) before the probe reads
//! its clock, which showed as +0.46 ms of HTTP/2 ttfb against curl and as CPU spent on
//! the hand-offs; and a probe cut short by its deadline left those tasks running until
//! the socket closed. Here they are queued, then polled by [`WithSpawned`] inside the
//! probe's task alongside the request, and dropped with it.
//!
//! Owns nothing but that queue; it knows nothing of timing or HTTP.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::task::AtomicWaker;

/// Hand to `hyper::client::conn::http2::handshake`; then drive its connection with
/// [`InTaskExecutor::drive`].
#[derive(Clone, Default)]
pub(crate) struct InTaskExecutor {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    queued: Mutex<Vec<BoxFuture<'static, ()>>>,
    /// The task polling [`WithSpawned`], woken when something is queued so that a
    /// future spawned while another was being polled is not left unpolled.
    driver: AtomicWaker,
}

impl<F> hyper::rt::Executor<F> for InTaskExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        self.shared.queued.lock().unwrap().push(Box::pin(fut));
        self.shared.driver.wake();
    }
}

impl InTaskExecutor {
    /// `conn` plus everything spawned on this executor (before or after), resolving
    /// with `conn`'s output once it and every spawned future have finished.
    pub(crate) fn drive<C: Future>(&self, conn: C) -> WithSpawned<C> {
        WithSpawned {
            conn: Box::pin(conn),
            conn_output: None,
            shared: self.shared.clone(),
            running: FuturesUnordered::new(),
        }
    }
}

pub(crate) struct WithSpawned<C: Future> {
    conn: Pin<Box<C>>,
    conn_output: Option<C::Output>,
    shared: Arc<Shared>,
    running: FuturesUnordered<BoxFuture<'static, ()>>,
}

// Nothing is ever pinned in place: `conn` is boxed, the rest is only moved.
impl<C: Future> Unpin for WithSpawned<C> {}

impl<C: Future> Future for WithSpawned<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = Pin::into_inner(self);
        this.shared.driver.register(cx.waker());
        if this.conn_output.is_none() {
            if let Poll::Ready(output) = this.conn.as_mut().poll(cx) {
                this.conn_output = Some(output);
            }
        }
        loop {
            let queued = std::mem::take(&mut *this.shared.queued.lock().unwrap());
            this.running.extend(queued);
            // Polls every spawned future that is ready; stops when all are pending.
            while let Poll::Ready(Some(())) = this.running.poll_next_unpin(cx) {}
            if this.shared.queued.lock().unwrap().is_empty() {
                break;
            }
        }
        match this.conn_output.take() {
            Some(output) if this.running.is_empty() => Poll::Ready(output),
            output => {
                this.conn_output = output;
                Poll::Pending
            }
        }
    }
}
