//! Waiting for something a test cannot be told about directly (rows in Postgres, a
//! process's state): look, and look again, until it holds or a deadline passes. The
//! deadline is generous and only bounds a failure; a passing test waits as long as the
//! event takes, not a fixed time.
//!
//! Where an event can be awaited (a `watch` channel, a log line), a test awaits it
//! instead.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

/// How often [`eventually`] looks.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// What one look found: done (with the value the test goes on with), or not yet.
pub trait Look {
    type Value;
    /// The value, or what was seen instead (for the failure message).
    fn done(self) -> Result<Self::Value, String>;
}

/// `Some(value)`: done. `None` says nothing about what was seen; return a `Result`
/// whose error is the observation for a failure that says more.
impl<T> Look for Option<T> {
    type Value = T;
    fn done(self) -> Result<T, String> {
        self.ok_or_else(|| "nothing yet".to_string())
    }
}

/// `Ok(value)`: done. `Err(observed)`: not yet, and this is what was seen.
impl<T, O: Debug> Look for Result<T, O> {
    type Value = T;
    fn done(self) -> Result<T, String> {
        self.map_err(|observed| format!("{observed:?}"))
    }
}

/// Looks with `check` until it is done, and returns its value; panics after `within`,
/// naming `what` was awaited and the last thing seen.
pub async fn eventually<L, F, Fut>(what: &str, within: Duration, mut check: F) -> L::Value
where
    L: Look,
    F: FnMut() -> Fut,
    Fut: Future<Output = L>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let last = match check().await.done() {
            Ok(value) => return value,
            Err(last) => last,
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}; last observed: {last}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}
