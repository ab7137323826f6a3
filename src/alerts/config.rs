//! The `[alerts]` section: where alerts go and how they are grouped.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Slack incoming-webhook URL; empty: no Slack notifications. A secret: prefer
    /// `RAMPART__ALERTS__SLACK_WEBHOOK_URL`.
    pub slack_webhook_url: String,
    /// Generic JSON webhook URL (POST `{"service":"rampart","alert":{…}}`); empty: none.
    pub webhook_url: String,
    /// The first occurrence of an alert is sent at once; identical ones within this window are
    /// counted and sent as one summary when it closes.
    #[serde(with = "humantime_serde")]
    pub group_window: Duration,
    /// While the same alert keeps occurring, at most one notification per this interval.
    #[serde(with = "humantime_serde")]
    pub repeat_interval: Duration,
    /// At most one request per this interval to each sink (Slack allows about one per second).
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
    /// Per-request timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Delivery attempts per notification before it is dropped (429s are waited out instead).
    pub max_attempts: u32,
    /// Notifications waiting per sink; beyond this they are dropped and counted.
    pub outbox_capacity: usize,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            slack_webhook_url: String::new(),
            webhook_url: String::new(),
            group_window: Duration::from_secs(60),
            repeat_interval: Duration::from_secs(15 * 60),
            min_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            max_attempts: 3,
            outbox_capacity: 100,
        }
    }
}
