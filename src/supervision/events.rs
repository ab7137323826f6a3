//! What supervision reports: a log line, a metric and, for what needs a human, an alert.
//!
//! Owns: the wording of every supervision event (failures with their journal entry, escalation,
//! quarantine, stalls, shutdown), so the full list an operator can see is readable here.
//! Must never: block or panic; it is called from actor threads and the watchdog.

use std::time::Duration;

use super::{short_type_name, FailureCause, JournalDecision, JournalEntry};
use crate::telemetry::{metrics, ActorLabels};

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
