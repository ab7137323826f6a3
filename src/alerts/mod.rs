//! Alerting: tell a human when something broke, once, with a count — never a flood.
//!
//! Owns: the alert queue (anyone → `AlertSender`), alert grouping (`grouping.rs`), and the
//! delivery to sinks (`sender.rs`): the log (always), a Slack incoming webhook
//! (`alerts.slack_webhook_url`) and a generic JSON webhook (`alerts.webhook_url`).
//!
//! Must never: block the caller. [`raise`] is one `try_send` into a bounded queue; when it is full
//! the alert is dropped and counted in `rampart_alerts_dropped_total`. It is called from the
//! panic path, so it takes no lock and does no I/O.
//!
//! Grouping (by fingerprint = source + location + route/actor/task): the first occurrence is
//! notified at once and opens a group of `alerts.group_window`; occurrences inside it are only
//! counted. When the window closes with new occurrences, one notification carries their count and
//! the next window lasts `alerts.repeat_interval`; a window that closes quietly ends the group.
//! So a storm of 1000 identical panics is two notifications: "1" then "999 more".

mod config;
mod grouping;
mod sender;

use std::sync::LazyLock;
use std::time::SystemTime;

use serde::Serialize;

pub use config::AlertsConfig;
pub use grouping::{Grouper, Notification};
pub use sender::AlertSender;

use crate::crash::CrashRecord;
use crate::queue::WakeQueue;
use crate::telemetry::{metrics, PanicSource, ReasonLabels};

/// Alerts waiting for the sender; beyond this they are dropped and counted.
const QUEUE_CAPACITY: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Critical,
    Error,
    Warning,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Critical => "critical",
            Level::Error => "error",
            Level::Warning => "warning",
        }
    }
}

/// One occurrence of something an operator should hear about.
#[derive(Debug, Clone)]
pub struct Alert {
    pub level: Level,
    /// What kind of event: `panic`, `quarantine`, `escalation`, `fatal`, `stall`.
    pub source: &'static str,
    /// Occurrences with the same fingerprint are grouped into one notification.
    pub fingerprint: String,
    /// One line for humans.
    pub summary: String,
    /// Where and what: `actor`, `route`, `location`, `crash_id`, …
    pub labels: Vec<(&'static str, String)>,
    pub at: SystemTime,
}

static QUEUE: LazyLock<WakeQueue<Alert>> = LazyLock::new(|| WakeQueue::new(QUEUE_CAPACITY));

/// Queues an alert for the sender. Never blocks; drops (and counts) when the queue is full.
pub fn raise(alert: Alert) {
    if !QUEUE.try_push(alert) {
        metrics().alerts_dropped.get_or_create(&ReasonLabels { reason: "queue_full".into() }).inc();
    }
}

pub(crate) fn queue() -> &'static WakeQueue<Alert> {
    &QUEUE
}

/// A panic was caught somewhere: raises its alert and hands the record to the crash recorder.
/// Called by every boundary that contains panics (actor runner, HTTP boundary, owned tasks) and
/// by the panic hook for the ones nothing contained.
pub fn report_crash(record: crate::crash::CrashRecord) {
    panic_caught(&record);
    crate::crash::report(record);
}

fn panic_caught(record: &CrashRecord) {
    let (level, place) = match record.source {
        PanicSource::actor => (Level::Error, record.actor.clone()),
        PanicSource::http => (Level::Error, record.route.clone()),
        PanicSource::task => (Level::Error, record.task.clone()),
        // Nothing contained it: that thread is gone.
        PanicSource::thread => (Level::Critical, record.thread.clone()),
    };
    let source = format!("{:?}", record.source);
    let place = place.unwrap_or_else(|| "-".into());
    let location = record.location.clone().unwrap_or_else(|| "-".into());
    let mut labels =
        vec![("panic_source", source.clone()), ("location", location.clone()), ("crash_id", record.id.clone())];
    if let Some(request_id) = &record.request_id {
        labels.push(("request_id", request_id.clone()));
    }
    labels.push((place_label(record.source), place.clone()));
    raise(Alert {
        level,
        source: "panic",
        fingerprint: format!("panic|{source}|{place}|{location}"),
        summary: format!("{source} panic in {place} at {location}: {}", record.message),
        labels,
        at: record.at,
    });
}

fn place_label(source: PanicSource) -> &'static str {
    match source {
        PanicSource::actor => "actor",
        PanicSource::http => "route",
        PanicSource::task => "task",
        PanicSource::thread => "thread",
    }
}

/// A keyed message was quarantined after crashing its actor repeatedly.
pub fn message_quarantined(actor: &str, message_type: &str) {
    raise(Alert {
        level: Level::Error,
        source: "quarantine",
        fingerprint: format!("quarantine|{actor}|{message_type}"),
        summary: format!("poison message quarantined at {actor} ({message_type})"),
        labels: vec![("actor", actor.to_owned()), ("message_type", message_type.to_owned())],
        at: SystemTime::now(),
    });
}

/// A supervisor exceeded its restart intensity and escalated.
pub fn supervisor_escalated(supervisor: &str, reason: &str) {
    raise(Alert {
        level: Level::Critical,
        source: "escalation",
        fingerprint: format!("escalation|{supervisor}"),
        summary: format!("supervisor {supervisor} gave up and escalated: {reason}"),
        labels: vec![("actor", supervisor.to_owned())],
        at: SystemTime::now(),
    });
}

/// The supervision tree gave up; the process is shutting down.
pub fn fatal(reason: &str) {
    raise(Alert {
        level: Level::Critical,
        source: "fatal",
        fingerprint: "fatal".into(),
        summary: format!("FATAL: supervision tree gave up, rampart is exiting: {reason}"),
        labels: Vec::new(),
        at: SystemTime::now(),
    });
}

/// An actor stalled (blocked its thread, or its mailbox is not draining).
pub fn actor_stalled(actor: &str, detail: &str) {
    raise(Alert {
        level: Level::Warning,
        source: "stall",
        fingerprint: format!("stall|{actor}"),
        summary: format!("actor {actor} stalled: {detail}"),
        labels: vec![("actor", actor.to_owned())],
        at: SystemTime::now(),
    });
}
