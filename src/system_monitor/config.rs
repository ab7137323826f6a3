//! `[system_monitor]` section.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SystemMonitorConfig {
    /// How often to sample and log, e.g. "30s".
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Warn when resident memory exceeds this many bytes.
    pub rss_warn_bytes: u64,
    /// Warn when more actors than this are alive.
    pub actors_warn: usize,
}

impl Default for SystemMonitorConfig {
    fn default() -> Self {
        Self { interval: Duration::from_secs(30), rss_warn_bytes: 500_000_000, actors_warn: 1000 }
    }
}

impl SystemMonitorConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.interval < Duration::from_millis(100) {
            return Err("system_monitor.interval must be at least 100ms".into());
        }
        Ok(())
    }
}
