//! `[supervisor]` section: the defaults every supervisor and child spec starts from.
//!
//! Owns: static configuration only. Runtime handles (registry, journal, quarantine sink) live in
//! `SupervisionContext`, never here.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::backoff::BackoffPolicy;

/// Defaults for supervisors and their children; each spec may override them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisionConfig {
    /// Restart intensity: more than `max_restarts` restarts within `within` makes a supervisor give
    /// up and escalate to its parent (at the root: fatal error, orderly shutdown, exit code 70).
    pub max_restarts: u32,
    /// The sliding window for `max_restarts`, e.g. "60s".
    #[serde(with = "humantime_serde")]
    pub within: Duration,
    /// Delay between consecutive restarts of one child (exponential, full jitter).
    pub backoff: BackoffPolicy,
    /// A single handler step (or a `ctx.wait` future) running longer than this is reported as a
    /// stall: log line, `stalled` flag in `/admin/actors`, stall counter.
    #[serde(with = "humantime_serde")]
    pub stall_threshold: Duration,
    /// A keyed message that crashed the same child this many times is quarantined instead of
    /// being delivered again.
    pub quarantine_after: u32,
    /// How long a child may take to stop on shutdown before it is dropped.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Mailbox capacity: `send().await` waits while this many messages are queued.
    pub mailbox_capacity: usize,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        Self {
            max_restarts: 10,
            within: Duration::from_secs(60),
            backoff: BackoffPolicy::default(),
            stall_threshold: Duration::from_secs(5),
            quarantine_after: 3,
            shutdown_timeout: Duration::from_secs(5),
            mailbox_capacity: 1024,
        }
    }
}

impl SupervisionConfig {
    /// Checks the rules serde cannot express; the message names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_restarts == 0 {
            return Err("supervisor.max_restarts must be at least 1".into());
        }
        if self.within.is_zero() {
            return Err("supervisor.within must be longer than 0s".into());
        }
        if self.quarantine_after == 0 {
            return Err("supervisor.quarantine_after must be at least 1".into());
        }
        if self.mailbox_capacity == 0 {
            return Err("supervisor.mailbox_capacity must be at least 1".into());
        }
        if self.backoff.base > self.backoff.max {
            return Err("supervisor.backoff.base must not exceed supervisor.backoff.max".into());
        }
        if self.stall_threshold < Duration::from_millis(50) {
            return Err("supervisor.stall_threshold must be at least 50ms".into());
        }
        Ok(())
    }
}
