//! Helpers shared by the scenario files: condition polling, test actors, the binary under test.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `condition` every few milliseconds until it holds or `deadline` passes.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if condition().await {
            return;
        }
        if started.elapsed() > deadline {
            panic!("condition not met within {deadline:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Synchronous variant for conditions that need no runtime.
pub fn eventually_sync(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        if started.elapsed() > deadline {
            panic!("condition not met within {deadline:?}: {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
