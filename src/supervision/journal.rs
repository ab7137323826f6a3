//! The restart journal: a bounded, in-memory history of every failure in the tree.
//!
//! Owns: failure entries (who, when, what, where, which message, backtrace, what was decided).
//! Written by supervisors from their own actor thread — never by the panicking thread, which only
//! leaves its capture in a thread-local for the runner. Bounded: the oldest entries are dropped.

use std::backtrace::Backtrace;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::Serialize;

/// Why a child ended up in front of its supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FailureCause {
    /// A panic caught at the mailbox boundary.
    Panic,
    /// A supervisor gave up (restart intensity exceeded) and handed the problem up.
    Escalation,
    /// The actor stopped on its own (ctx.stop()) — a failure only for permanent children.
    Exit,
}

/// What the supervisor decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum JournalDecision {
    Restart {
        delay_ms: u64,
        ceiling_ms: u64,
    },
    Stop,
    /// Restart intensity exceeded: the supervisor escalated; the child waits for the supervisor's
    /// own restart.
    Escalate,
    /// The failure was superseded by a restart already under way.
    Ignore,
}

impl JournalDecision {
    pub fn label(&self) -> &'static str {
        match self {
            JournalDecision::Restart { .. } => "restart",
            JournalDecision::Stop => "stop",
            JournalDecision::Escalate => "escalate",
            JournalDecision::Ignore => "ignore",
        }
    }
}

#[derive(Debug, Clone)]
pub struct JournalEntry {
    pub id: u64,
    pub actor: String,
    pub at: SystemTime,
    pub cause: FailureCause,
    pub message: String,
    pub location: Option<String>,
    pub thread: Option<String>,
    /// Full type name of the message in flight, if the failure happened inside a handler.
    pub handling: Option<&'static str>,
    pub message_key: Option<String>,
    pub backtrace: Arc<Backtrace>,
    /// Restarts of this actor including the one this entry decided.
    pub restart_count: u64,
    pub decision: JournalDecision,
}

/// Bounded history of failures, newest last.
pub struct RestartJournal {
    capacity: usize,
    inner: Mutex<JournalInner>,
}

struct JournalInner {
    next_id: u64,
    entries: VecDeque<JournalEntry>,
}

impl RestartJournal {
    pub const DEFAULT_CAPACITY: usize = 512;

    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity: capacity.max(1),
            inner: Mutex::new(JournalInner { next_id: 1, entries: VecDeque::new() }),
        })
    }

    /// Appends an entry (its `id` is assigned here) and returns the id.
    pub fn record(&self, mut entry: JournalEntry) -> u64 {
        let mut inner = self.inner.lock();
        entry.id = inner.next_id;
        inner.next_id += 1;
        if inner.entries.len() == self.capacity {
            inner.entries.pop_front();
        }
        let id = entry.id;
        inner.entries.push_back(entry);
        id
    }

    /// Entries, oldest first, optionally only one actor's.
    pub fn entries(&self, actor: Option<&str>) -> Vec<JournalEntry> {
        self.inner.lock().entries.iter().filter(|entry| actor.is_none_or(|path| entry.actor == path)).cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(actor: &str) -> JournalEntry {
        JournalEntry {
            id: 0,
            actor: actor.into(),
            at: SystemTime::now(),
            cause: FailureCause::Panic,
            message: "boom".into(),
            location: None,
            thread: None,
            handling: None,
            message_key: None,
            backtrace: Arc::new(Backtrace::disabled()),
            restart_count: 1,
            decision: JournalDecision::Stop,
        }
    }

    #[test]
    fn bounded_and_ordered() {
        let journal = RestartJournal::new(3);
        for i in 0..5 {
            journal.record(entry(&format!("/root/{i}")));
        }
        let entries = journal.entries(None);
        assert_eq!(entries.len(), 3);
        assert_eq!(entries.iter().map(|e| e.id).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(journal.entries(Some("/root/4")).len(), 1);
    }
}
