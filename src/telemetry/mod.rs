//! Everything rampart reports about itself, as named events in one place.
//!
//! Owns: the log lines and metric updates for supervision, stalls, quarantine and shutdown, so
//! the full list of what an operator can see is readable here (metric families: `metrics.rs`).
//! Must never: block or panic; it is called from actor threads and the watchdog.

pub mod exposition;
mod metrics;
#[cfg(feature = "otel")]
pub mod otel;

use std::time::Duration;

pub use metrics::{
    metrics, ActorLabels, DbLabels, HttpLabels, HttpRouteLabels, KindLabels, LimitLabels, Metrics, NameLabels,
    OutcomeLabels, PanicSource, ReasonLabels, SinkLabels, SourceLabels,
};

use crate::supervision::{short_type_name, FailureCause, JournalDecision, JournalEntry};

/// A supervised actor came into existence: its series start at 0.
pub fn actor_spawned(metric_label: &str) {
    metrics().register_actor(metric_label);
}

/// A supervised actor panicked (contained at its mailbox boundary).
pub fn actor_panicked() {
    metrics().panics.get_or_create(&SourceLabels::of(PanicSource::actor)).inc();
}

/// A supervised actor was restarted with fresh state.
pub fn actor_restarted(metric_label: &str) {
    metrics().actor_restarts.get_or_create(&ActorLabels { actor: metric_label.to_owned() }).inc();
}

pub fn actor_failed(entry: &JournalEntry) {
    let handling = entry.handling.map(short_type_name).unwrap_or("-");
    let cause = match entry.cause {
        FailureCause::Panic => "panic",
        FailureCause::Escalation => "escalation",
        FailureCause::Exit => "exit",
    };
    match &entry.decision {
        JournalDecision::Restart { delay_ms, ceiling_ms } => tracing::warn!(
            actor = %entry.actor,
            cause,
            failure = %entry.message,
            location = entry.location.as_deref().unwrap_or("-"),
            handling,
            restarts = entry.restart_count,
            delay_ms,
            ceiling_ms,
            "actor failed; restarting with fresh state"
        ),
        JournalDecision::Ignore => tracing::info!(
            actor = %entry.actor,
            cause,
            failure = %entry.message,
            "actor failed while a restart was already ordered"
        ),
        decision => tracing::error!(
            actor = %entry.actor,
            cause,
            failure = %entry.message,
            location = entry.location.as_deref().unwrap_or("-"),
            handling,
            decision = ?decision,
            "actor failed; not restarting it"
        ),
    }
}

pub fn sibling_restarted(actor: &str, because_of: &str) {
    tracing::warn!(actor, because_of, "restarting sibling of a failed actor (strategy)");
}

pub fn supervisor_escalated(supervisor: &str, reason: &str) {
    tracing::error!(supervisor, reason, "supervisor gave up; escalating to its parent");
    crate::alerts::supervisor_escalated(supervisor, reason);
}

pub fn fatal(reason: &str) {
    tracing::error!(reason, "FATAL: supervision tree gave up; shutting down");
    crate::alerts::fatal(reason);
}

pub fn message_quarantined(actor: &str, message_type: &str) {
    metrics().actor_quarantined.inc();
    tracing::debug!(actor, message_type, "quarantine threshold reached");
    crate::alerts::message_quarantined(actor, message_type);
}

/// What a stalled actor is stuck on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallKind {
    /// One poll (a handler, a future step, a timer callback) has not returned.
    BlockingThread,
    /// Messages are waiting and none was dequeued (e.g. a `ctx.wait` future holds the mailbox).
    MailboxNotDraining,
}

pub fn actor_stalled(actor: &str, metric_label: &str, stuck_for: Duration, kind: StallKind) {
    metrics().actor_stalls.get_or_create(&ActorLabels { actor: metric_label.to_owned() }).inc();
    tracing::warn!(
        actor,
        stuck_for_ms = stuck_for.as_millis() as u64,
        kind = match kind {
            StallKind::BlockingThread => "blocking_thread",
            StallKind::MailboxNotDraining => "mailbox_not_draining",
        },
        "actor stalled longer than its stall threshold"
    );
    let detail = match kind {
        StallKind::BlockingThread => "a poll has not returned (blocking its thread)",
        StallKind::MailboxNotDraining => "its mailbox is not draining",
    };
    crate::alerts::actor_stalled(actor, &format!("{detail} for {} ms", stuck_for.as_millis()));
}

pub fn actor_recovered_from_stall(actor: &str) {
    tracing::info!(actor, "actor no longer stalled");
}

pub fn child_killed_on_shutdown(actor: &str, timeout: Duration) {
    tracing::warn!(actor, timeout_ms = timeout.as_millis() as u64, "actor did not stop in time; dropped");
}

/// The current trace id (hex), when OpenTelemetry export is compiled in and active.
pub fn current_trace_id() -> Option<String> {
    #[cfg(feature = "otel")]
    {
        otel::current_trace_id()
    }
    #[cfg(not(feature = "otel"))]
    {
        None
    }
}

/// Whether spans are exported (feature `otel` and `OTEL_EXPORTER_OTLP_ENDPOINT` set).
#[inline]
pub fn tracing_exported() -> bool {
    #[cfg(feature = "otel")]
    {
        otel::active()
    }
    #[cfg(not(feature = "otel"))]
    {
        false
    }
}

/// The consumer lag of `group` per partition it owns (from librdkafka statistics); series of
/// partitions it no longer owns are removed.
pub fn kafka_lag(group: &str, lags: &std::collections::HashMap<i32, i64>) {
    use std::collections::{HashMap, HashSet};
    static OWNED: std::sync::LazyLock<parking_lot::Mutex<HashMap<String, HashSet<i32>>>> =
        std::sync::LazyLock::new(Default::default);
    let family = &metrics().kafka_consumer_lag;
    let labels =
        |partition: i32| metrics::PartitionLabels { group: group.to_owned(), partition: partition.to_string() };
    let mut owned = OWNED.lock();
    let previous = owned.entry(group.to_owned()).or_default();
    for gone in previous.iter().filter(|partition| !lags.contains_key(partition)) {
        family.remove(&labels(*gone));
    }
    *previous = lags.keys().copied().collect();
    for (partition, lag) in lags {
        family.get_or_create(&labels(*partition)).set(*lag);
    }
    if group == "writer" {
        metrics().kafka_writer_lag.set(lags.values().sum());
    }
}

/// A record went to dead letters (`message`, `delivery` or `quarantine`).
pub fn dead_lettered(kind: &str) {
    metrics().dead_letters.get_or_create(&KindLabels { kind: kind.to_owned() }).inc();
}

/// A request was refused by the per-user limit `limit` (`ws_connections_per_user`, ...).
pub fn limit_refused(limit: &str) {
    metrics().limits_refused.get_or_create(&LimitLabels { limit: limit.to_owned() }).inc();
}

/// A send was refused with error `code` (`invalid`, `rate_limited`, `unavailable`, ...).
pub fn message_rejected(code: &str) {
    metrics().messages_rejected.get_or_create(&ReasonLabels { reason: code.to_owned() }).inc();
}
