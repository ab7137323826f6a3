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
            threads,
            live_actors: self.registry.live_count(),
            mailbox_backlog: self.registry.total_backlog(),
        };
        tracing::info!(
            rss_bytes = sample.rss_bytes,
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
    use super::parse_process_status;

    #[test]
    fn parses_rss_and_threads() {
        let status = "Name:\trampart\nVmRSS:\t   12345 kB\nThreads:\t7\n";
        assert_eq!(parse_process_status(status), (Some(12345 * 1024), Some(7)));
        assert_eq!(parse_process_status("garbage"), (None, None));
    }
}
