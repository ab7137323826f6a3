//! The system monitor: samples process health on a timer and warns above thresholds.
//!
//! Owns: the latest `Sample` (RSS, threads, live actors, mailbox backlog). Restart type:
//! permanent; a restart loses only the latest sample, and the next tick takes a new one.
//! Must never: block its arbiter — it reads `/proc/self/status` (a procfs read served from
//! kernel memory, never from disk) and the registry's atomics, nothing else.

mod config;

use std::sync::Arc;
use std::time::SystemTime;

use actix::prelude::*;
use serde::Serialize;

pub use config::SystemMonitorConfig;

use crate::supervision::{Registry, SupervisedMessage};

/// One observation of the process.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Sample {
    /// RFC 3339.
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    #[schema(value_type = String)]
    pub at: SystemTime,
    /// Resident set size; `None` where the platform does not tell (non-Linux).
    pub rss_bytes: Option<u64>,
    /// Bytes allocated and not yet freed (the live heap, with what threads keep cached for their
    /// next allocations but without the allocator's retained pages); `None` where the allocator
    /// does not tell. RSS far above it is fragmentation or pages not yet returned; a live heap
    /// that grows is a leak or a queue.
    pub heap_allocated_bytes: Option<u64>,
    /// OS threads of the process; `None` where the platform does not tell.
    pub threads: Option<u64>,
    pub live_actors: usize,
    pub mailbox_backlog: u64,
}

pub struct SystemMonitor {
    config: SystemMonitorConfig,
    registry: Arc<Registry>,
    latest: Option<Sample>,
}

impl SystemMonitor {
    pub fn new(config: SystemMonitorConfig, registry: Arc<Registry>) -> Self {
        Self { config, registry, latest: None }
    }

    fn sample(&mut self) -> Sample {
        let (rss_bytes, threads) = read_process_status();
        let sample = Sample {
            at: SystemTime::now(),
            rss_bytes,
            heap_allocated_bytes: read_heap_allocated(),
            threads,
            live_actors: self.registry.live_count(),
            mailbox_backlog: self.registry.total_backlog(),
        };
        tracing::info!(
            rss_bytes = sample.rss_bytes,
            heap_allocated_bytes = sample.heap_allocated_bytes,
            threads = sample.threads,
            live_actors = sample.live_actors,
            mailbox_backlog = sample.mailbox_backlog,
            "system sample"
        );
        if sample.rss_bytes.is_some_and(|rss| rss > self.config.rss_warn_bytes) {
            tracing::warn!(
                rss_bytes = sample.rss_bytes,
                threshold = self.config.rss_warn_bytes,
                "resident memory above threshold"
            );
        }
        if sample.live_actors > self.config.actors_warn {
            tracing::warn!(
                live_actors = sample.live_actors,
                threshold = self.config.actors_warn,
                "live actor count above threshold"
            );
        }
        let metrics = crate::telemetry::metrics();
        metrics.resident_memory.set(sample.rss_bytes.map_or(0, |rss| rss as i64));
        metrics.heap_allocated.set(sample.heap_allocated_bytes.map_or(0, |bytes| bytes as i64));
        metrics.threads.set(sample.threads.map_or(0, |threads| threads as i64));
        metrics.live_actors.set(sample.live_actors as i64);
        metrics.mailbox_backlog.set(sample.mailbox_backlog as i64);
        self.latest = Some(sample.clone());
        sample
    }
}

impl Actor for SystemMonitor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Sample at once so the gauges are meaningful from the start, not after one interval.
        self.sample();
        ctx.run_interval(self.config.interval, |monitor, _| {
            monitor.sample();
        });
    }
}

crate::supervised!(SystemMonitor);

/// The most recent sample, taking one now if none was taken since the last (re)start.
#[derive(Debug, Message)]
#[rtype(result = "Sample")]
pub struct GetSample;

impl SupervisedMessage for GetSample {}

impl Handler<GetSample> for SystemMonitor {
    type Result = MessageResult<GetSample>;

    fn handle(&mut self, _: GetSample, _: &mut Context<Self>) -> Self::Result {
        let sample = match &self.latest {
            Some(sample) => sample.clone(),
            None => self.sample(),
        };
        MessageResult(sample)
    }
}

/// Has jemalloc return freed memory to the OS from background threads (about 10 s after it was
/// freed) instead of only when the same arena allocates again, so RSS comes back down after a
/// burst on an otherwise idle server. Called once at startup, before logging; an error is only
/// worth a line on stderr.
#[cfg(not(target_env = "msvc"))]
pub fn return_freed_memory_in_background() -> Result<(), String> {
    tikv_jemalloc_ctl::background_thread::write(true).map_err(|error| error.to_string())
}

#[cfg(target_env = "msvc")]
pub fn return_freed_memory_in_background() -> Result<(), String> {
    Ok(())
}

/// The live heap from jemalloc's statistics, refreshed first (they are cached per epoch).
#[cfg(not(target_env = "msvc"))]
fn read_heap_allocated() -> Option<u64> {
    tikv_jemalloc_ctl::epoch::advance().ok()?;
    tikv_jemalloc_ctl::stats::allocated::read().ok().map(|bytes| bytes as u64)
}

#[cfg(target_env = "msvc")]
fn read_heap_allocated() -> Option<u64> {
    None
}

/// RSS and thread count from `/proc/self/status`.
#[cfg(target_os = "linux")]
fn read_process_status() -> (Option<u64>, Option<u64>) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return (None, None);
    };
    parse_process_status(&status)
}

#[cfg(not(target_os = "linux"))]
fn read_process_status() -> (Option<u64>, Option<u64>) {
    (None, None)
}

fn parse_process_status(status: &str) -> (Option<u64>, Option<u64>) {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse::<u64>().ok())
    };
    (field("VmRSS:").map(|kib| kib * 1024), field("Threads:"))
}

#[cfg(test)]
mod tests {
    use super::{parse_process_status, read_heap_allocated};

    #[test]
    fn parses_rss_and_threads() {
        let status = "Name:\trampart\nVmRSS:\t   12345 kB\nThreads:\t7\n";
        assert_eq!(parse_process_status(status), (Some(12345 * 1024), Some(7)));
        assert_eq!(parse_process_status("garbage"), (None, None));
    }

    #[cfg(not(target_env = "msvc"))]
    #[test]
    fn the_live_heap_follows_allocations() {
        // Other tests allocate concurrently, so the 64 MiB only has to show up, not exactly.
        let before = read_heap_allocated().unwrap_or(0);
        let block = vec![1u8; 64 << 20];
        let during = read_heap_allocated().unwrap_or(0);
        assert!(during >= before + (48 << 20), "{before} -> {during}");
        drop(std::hint::black_box(block));
    }
}
