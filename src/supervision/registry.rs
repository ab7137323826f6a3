//! Per-actor records and the registry that indexes them by path.
//!
//! Owns: `ActorRecord`, the state of one child slot that outlives every incarnation of the actor
//! (status, restart count, last failure, stall flags, quarantined keys, the chaos trigger), and
//! `Registry`, the path index the admin API and the system monitor read.
//!
//! Architecture Invariant: records are written by the child's runner and its supervisor only;
//! readers (HTTP handlers, the monitor, the watchdog) take short locks and never hold one across
//! an `.await`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio::sync::watch;

use super::quarantine::QuarantineSink;
use super::spec::RestartType;

/// Lifecycle of one child slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorStatus {
    /// Spawned, waiting for its first poll.
    Starting,
    Running,
    /// Failed; waiting for its supervisor's decision or for the backoff delay.
    Restarting,
    /// Ended for good (normal stop of a transient/temporary child, shutdown, or given up on).
    Stopped,
}

impl ActorStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorStatus::Starting | ActorStatus::Running => "running",
            ActorStatus::Restarting => "restarting",
            ActorStatus::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    Worker,
    Supervisor,
}

/// The latest failure of an actor, as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FailureSummary {
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    pub at: SystemTime,
    pub message: String,
    pub location: Option<String>,
    /// Short type name of the message in flight, when the failure happened inside a handler.
    pub handling: Option<String>,
}

/// Fires a `ChaosPanic` into the actor's own mailbox. Returns false when the mailbox is closed.
pub(crate) type ChaosTrigger = Box<dyn Fn() -> bool + Send + Sync>;

/// Everything about one child slot that survives restarts of the actor in it.
pub struct ActorRecord {
    pub path: String,
    pub kind: ActorKind,
    pub restart: RestartType,
    /// Path of the supervisor; `None` for the root.
    pub parent: Option<String>,
    /// The `actor` label of this actor's metrics: its path, or `<group>/*` for members of a
    /// dynamic group (one series per group, not per session).
    pub metric_label: String,
    /// Written by the runner; `watch` so shutdown can wait for `Stopped`.
    pub(crate) status: watch::Sender<ActorStatus>,
    pub(crate) restarts: AtomicU64,
    pub(crate) started_at: Mutex<SystemTime>,
    pub(crate) last_failure: Mutex<Option<FailureSummary>>,
    /// Messages sent through a handle (senders add; a locked add is unavoidable with many
    /// senders).
    pub(crate) sent: AtomicU64,
    /// Tracked messages the runner dequeued. Only the runner writes it, with a plain store once
    /// per poll, so the actor side pays no locked instruction per message.
    pub(crate) dispatched: AtomicU64,
    /// Watchdog tick at which the current poll started; 0 while idle.
    pub(crate) busy_since: AtomicU64,
    pub(crate) stall_threshold: Duration,
    pub(crate) stalled: AtomicBool,
    pub(crate) stalls: AtomicU64,
    /// Bumped by the supervisor each time it orders a restart; failure reports carrying an older
    /// epoch are stale (the restart they would ask for already happened).
    pub(crate) epoch: AtomicU64,
    pub(crate) quarantine: Quarantined,
    pub(crate) sink: Arc<dyn QuarantineSink>,
    pub(crate) chaos: OnceLock<ChaosTrigger>,
}

/// Keyed messages this actor no longer receives, and how often each key crashed it.
#[derive(Default)]
pub(crate) struct Quarantined {
    /// Fast path: senders skip the lock while nothing is quarantined.
    pub(crate) any: AtomicBool,
    pub(crate) keys: RwLock<HashSet<(&'static str, String)>>,
    pub(crate) crash_counts: Mutex<HashMap<(&'static str, String), u32>>,
}

/// Beyond this many distinct crashing keys the counts are reset: a child crashing on thousands of
/// different keys is not suffering from one poison message, and memory must stay bounded.
const MAX_TRACKED_CRASH_KEYS: usize = 1024;

impl Quarantined {
    pub(crate) fn contains(&self, message_type: &'static str, key: &str) -> bool {
        self.any.load(Ordering::Acquire) && self.keys.read().contains(&(message_type, key.to_owned()))
    }

    /// Counts one crash of `key`; returns the new count.
    pub(crate) fn count_crash(&self, message_type: &'static str, key: &str) -> u32 {
        let mut counts = self.crash_counts.lock();
        if counts.len() >= MAX_TRACKED_CRASH_KEYS && !counts.contains_key(&(message_type, key.to_owned())) {
            counts.clear();
        }
        let count = counts.entry((message_type, key.to_owned())).or_insert(0);
        *count += 1;
        *count
    }

    pub(crate) fn insert(&self, message_type: &'static str, key: String) {
        self.keys.write().insert((message_type, key));
        self.any.store(true, Ordering::Release);
    }

    pub fn len(&self) -> usize {
        self.keys.read().len()
    }
}

impl ActorRecord {
    pub(crate) fn new(
        path: String,
        kind: ActorKind,
        restart: RestartType,
        parent: Option<String>,
        dynamic_member: bool,
        stall_threshold: Duration,
        sink: Arc<dyn QuarantineSink>,
    ) -> Self {
        let metric_label = match (&parent, dynamic_member) {
            (Some(parent), true) => format!("{parent}/*"),
            _ => path.clone(),
        };
        crate::telemetry::actor_spawned(&metric_label);
        Self {
            path,
            kind,
            restart,
            parent,
            metric_label,
            status: watch::Sender::new(ActorStatus::Starting),
            restarts: AtomicU64::new(0),
            started_at: Mutex::new(SystemTime::now()),
            last_failure: Mutex::new(None),
            sent: AtomicU64::new(0),
            dispatched: AtomicU64::new(0),
            busy_since: AtomicU64::new(0),
            stall_threshold,
            stalled: AtomicBool::new(false),
            stalls: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            quarantine: Quarantined::default(),
            sink,
            chaos: OnceLock::new(),
        }
    }

    pub fn status(&self) -> ActorStatus {
        *self.status.borrow()
    }

    pub(crate) fn set_status(&self, status: ActorStatus) {
        self.status.send_replace(status);
    }

    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    pub fn stalls(&self) -> u64 {
        self.stalls.load(Ordering::Relaxed)
    }

    pub fn is_stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }

    pub fn started_at(&self) -> SystemTime {
        *self.started_at.lock()
    }

    pub fn last_failure(&self) -> Option<FailureSummary> {
        self.last_failure.lock().clone()
    }

    /// Messages waiting in the mailbox (sent through a handle, not yet dequeued).
    pub fn backlog(&self) -> u64 {
        // Approximate by design: read without a lock, and a sender may count just after the
        // runner dequeued.
        self.sent.load(Ordering::Relaxed).saturating_sub(self.dispatched.load(Ordering::Relaxed))
    }

    pub fn quarantined_keys(&self) -> usize {
        self.quarantine.len()
    }

    /// Makes the actor panic inside its own handler (the chaos endpoint). False when the actor is
    /// not reachable any more.
    pub fn trigger_chaos_panic(&self) -> bool {
        self.chaos.get().is_some_and(|trigger| trigger())
    }

    /// Waits until the runner reports `Stopped`, at most `timeout`. True if it stopped.
    pub(crate) async fn wait_stopped(&self, timeout: Duration) -> bool {
        let mut status = self.status.subscribe();
        tokio::time::timeout(timeout, status.wait_for(|s| *s == ActorStatus::Stopped)).await.is_ok_and(|r| r.is_ok())
    }
}

/// One row of [`Registry::listing`].
pub enum ListingRow {
    Actor(Arc<ActorRecord>),
    Group(GroupSummary),
}

/// The children of one large dynamic group, counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupSummary {
    /// `<supervisor path>/*`
    pub path: String,
    pub count: usize,
    pub running: usize,
    pub restarting: usize,
    pub stopped: usize,
    pub restarts: u64,
}

impl GroupSummary {
    fn new(supervisor: &str) -> Self {
        Self { path: format!("{supervisor}/*"), count: 0, running: 0, restarting: 0, stopped: 0, restarts: 0 }
    }

    fn add(&mut self, record: &ActorRecord) {
        self.count += 1;
        self.restarts += record.restarts();
        match record.status() {
            ActorStatus::Starting | ActorStatus::Running => self.running += 1,
            ActorStatus::Restarting => self.restarting += 1,
            ActorStatus::Stopped => self.stopped += 1,
        }
    }
}

/// Every actor of the tree, by path.
#[derive(Default)]
pub struct Registry {
    actors: RwLock<BTreeMap<String, Arc<ActorRecord>>>,
    /// Supervisors whose children are dynamic (sessions, peers): listed as a summary when large.
    dynamic_groups: RwLock<HashSet<String>>,
}

impl Registry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds a record; false if the path is taken by a live actor.
    pub(crate) fn insert(&self, record: Arc<ActorRecord>) -> bool {
        let mut actors = self.actors.write();
        match actors.get(&record.path) {
            Some(existing) if existing.status() != ActorStatus::Stopped => false,
            _ => {
                actors.insert(record.path.clone(), record);
                true
            }
        }
    }

    pub(crate) fn remove(&self, path: &str) {
        self.actors.write().remove(path);
    }

    pub(crate) fn mark_dynamic(&self, supervisor_path: &str) {
        self.dynamic_groups.write().insert(supervisor_path.to_owned());
    }

    pub fn is_dynamic_group(&self, supervisor_path: &str) -> bool {
        self.dynamic_groups.read().contains(supervisor_path)
    }

    pub fn get(&self, path: &str) -> Option<Arc<ActorRecord>> {
        self.actors.read().get(path).cloned()
    }

    /// A snapshot of every record, in path order.
    pub fn snapshot(&self) -> Vec<Arc<ActorRecord>> {
        self.actors.read().values().cloned().collect()
    }

    /// Every actor for an operator's listing, in path order. The children of a dynamic group
    /// (sessions, peers) with more than `expand_limit` members are folded into one summary row,
    /// so the listing stays readable with thousands of connections.
    pub fn listing(&self, expand_limit: usize) -> Vec<ListingRow> {
        let records = self.snapshot();
        let dynamic = self.dynamic_groups.read().clone();
        let mut groups: BTreeMap<&str, GroupSummary> = BTreeMap::new();
        for record in &records {
            if let Some(parent) = record.parent.as_deref().filter(|parent| dynamic.contains(*parent)) {
                groups.entry(parent).or_insert_with(|| GroupSummary::new(parent)).add(record);
            }
        }
        groups.retain(|_, summary| summary.count > expand_limit);
        let mut rows: Vec<ListingRow> = records
            .iter()
            .filter(|record| !record.parent.as_deref().is_some_and(|parent| groups.contains_key(parent)))
            .map(|record| ListingRow::Actor(record.clone()))
            .collect();
        rows.extend(groups.into_values().map(ListingRow::Group));
        rows
    }

    /// Actors not stopped.
    pub fn live_count(&self) -> usize {
        self.actors.read().values().filter(|record| record.status() != ActorStatus::Stopped).count()
    }

    /// Sum of every actor's mailbox backlog.
    pub fn total_backlog(&self) -> u64 {
        self.actors.read().values().map(|record| record.backlog()).sum()
    }
}
