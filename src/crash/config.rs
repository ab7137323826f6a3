//! The `[crash]` section: how much each crash record carries and how many are kept.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrashConfig {
    /// Size of the recent-actions ring snapshotted into every crash record.
    pub recent_actions: usize,
    /// Crash records kept (in memory and as files under `<data_dir>/crashes`); oldest pruned.
    pub keep: usize,
}

impl Default for CrashConfig {
    fn default() -> Self {
        Self { recent_actions: 50, keep: 100 }
    }
}
