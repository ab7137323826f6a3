//! Supervisors: actors that decide what happens when a child fails.
//!
//! Owns: `Supervisor` (the actor: strategy, restart intensity, escalation, quarantine counting),
//! `Group` (a supervisor's children, which outlive any incarnation of the supervisor so that every
//! handle stays valid) and `TopLevel` (the root's parent: restart the root or end the process).
//! Spawning under a supervisor and the shutdown walk are in `tree.rs`.
//!
//! Architecture Invariant: a supervisor never touches a child's actor state. It talks to a child's
//! runner through `Control` and `Decision` only, and shutdown walks the `Group`s directly, so it
//! completes even when a supervisor's own runner is parked waiting for its parent.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use actix::{Actor, Addr, Context, Handler, Message};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::watch;

use super::backoff::{BackoffPolicy, BackoffState};
use super::config::SupervisionConfig;
use super::control::ControlSender;
use super::journal::{FailureCause, JournalDecision, JournalEntry, RestartJournal};
use super::quarantine::{QuarantineEvent, QuarantineRecord, QuarantineSink};
use super::registry::{ActorRecord, Registry};
use super::runner::{self, Control, Decision, FailureReport};
use super::short_type_name;
use super::spec::{RestartType, Strategy, SupervisorSpec};

/// The runtime handles every supervisor shares: where records, failures and quarantined
/// messages go. Cheap to clone.
#[derive(Clone)]
pub struct SupervisionContext {
    pub registry: Arc<Registry>,
    pub journal: Arc<RestartJournal>,
    pub quarantine: Arc<dyn QuarantineSink>,
}

impl SupervisionContext {
    /// Fresh in-memory registry, journal and quarantine store.
    pub fn new(quarantine: Arc<dyn QuarantineSink>) -> Self {
        Self { registry: Registry::new(), journal: RestartJournal::new(RestartJournal::DEFAULT_CAPACITY), quarantine }
    }
}

/// Why a child could not be spawned.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("invalid child name {0:?}: use 1-64 characters from [A-Za-z0-9_.:-]")]
    InvalidName(String),
    #[error("an actor named {0} is already running")]
    NameTaken(String),
    #[error("supervisor {0} is shutting down")]
    ShuttingDown(String),
    #[error("the arbiter for {0} is not running")]
    ArbiterGone(String),
}

/// Where a runner sends its failure reports.
#[derive(Clone)]
pub(crate) enum ParentLink {
    Supervisor(Addr<Supervisor>),
    Top(Arc<TopLevel>),
}

impl ParentLink {
    pub(crate) fn report(&self, report: FailureReport) {
        match self {
            // If the supervisor's mailbox is gone the report (and its reply sender) is dropped,
            // and the child ends: there is nobody left to supervise it.
            ParentLink::Supervisor(addr) => addr.do_send(ChildFailed(report)),
            ParentLink::Top(top) => top.handle_failure(report),
        }
    }
}

/// One child slot of a supervisor. Lives as long as the child, across restarts of both.
pub(crate) struct ChildSlot {
    pub(crate) record: Arc<ActorRecord>,
    pub(crate) control: ControlSender,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) backoff_policy: BackoffPolicy,
    pub(crate) backoff: Mutex<BackoffState>,
    /// Set when the child is itself a supervisor: shutdown recurses into it first.
    pub(crate) group: Option<Arc<Group>>,
    /// The child's address, held for as long as the child is in the tree: an actix actor stops
    /// when nothing can send to it any more, and a supervised child (a timer-driven job nobody
    /// else addresses) must not. Dropped with the slot when the child leaves the tree.
    pub(crate) keepalive: OnceLock<Box<dyn std::any::Any + Send + Sync>>,
}

impl ChildSlot {
    /// Orders a restart that supersedes any failure report already in flight from this child.
    fn order_restart(&self) {
        self.record.epoch.fetch_add(1, Ordering::AcqRel);
        if self.control.send(Control::Restart).is_err() {
            tracing::debug!(actor = %self.record.path, "restart ordered for an ended child");
        }
    }
}

/// A supervisor's children and settings; shared by every incarnation of the supervisor actor.
pub(crate) struct Group {
    pub(crate) path: String,
    pub(crate) strategy: Strategy,
    pub(crate) max_restarts: u32,
    pub(crate) within: Duration,
    pub(crate) defaults: SupervisionConfig,
    pub(crate) dynamic: bool,
    pub(crate) context: SupervisionContext,
    pub(crate) children: Mutex<Vec<Arc<ChildSlot>>>,
    /// The supervisor actor's address; set right after it is spawned, before any child.
    pub(crate) addr: OnceLock<Addr<Supervisor>>,
    /// True once the first incarnation started: later starts are restarts and restart the children.
    pub(crate) started_once: AtomicBool,
    pub(crate) shutting_down: AtomicBool,
}

impl Group {
    pub(super) fn new(
        path: String,
        spec: &SupervisorSpec,
        defaults: &SupervisionConfig,
        context: SupervisionContext,
    ) -> Self {
        let defaults = spec.defaults.clone().unwrap_or_else(|| defaults.clone());
        Self {
            path,
            strategy: spec.strategy,
            max_restarts: spec.max_restarts.unwrap_or(defaults.max_restarts),
            within: spec.within.unwrap_or(defaults.within),
            dynamic: spec.dynamic,
            defaults,
            context,
            children: Mutex::new(Vec::new()),
            addr: OnceLock::new(),
            started_once: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
        }
    }

    fn slot_index(&self, record: &Arc<ActorRecord>) -> Option<(usize, Arc<ChildSlot>)> {
        self.children
            .lock()
            .iter()
            .enumerate()
            .find(|(_, slot)| Arc::ptr_eq(&slot.record, record))
            .map(|(index, slot)| (index, slot.clone()))
    }

    pub(super) fn remove_slot(&self, record: &Arc<ActorRecord>) {
        self.children.lock().retain(|slot| !Arc::ptr_eq(&slot.record, record));
        self.context.registry.remove(&record.path);
    }
}

/// A failure report from a child's runner.
pub(crate) struct ChildFailed(pub(crate) FailureReport);

impl Message for ChildFailed {
    type Result = ();
}

/// The supervisor actor. Its state is only the restart-intensity window: children live in the
/// `Group`, so a restarted supervisor finds them all and restarts them.
pub struct Supervisor {
    group: Arc<Group>,
    recent_restarts: VecDeque<Instant>,
    rng: StdRng,
}

impl Supervisor {
    pub(super) fn new(group: Arc<Group>) -> Self {
        Self { group, recent_restarts: VecDeque::new(), rng: StdRng::from_entropy() }
    }

    /// Records one restart in the intensity window; true when the window now holds too many.
    fn intensity_exceeded(&mut self, now: Instant) -> bool {
        self.recent_restarts.push_back(now);
        while self.recent_restarts.front().is_some_and(|at| now.saturating_duration_since(*at) > self.group.within) {
            self.recent_restarts.pop_front();
        }
        self.recent_restarts.len() > self.group.max_restarts as usize
    }

    fn count_poison(&self, report: &FailureReport) {
        let Some(in_flight) = &report.in_flight else {
            return;
        };
        let Some(key) = &in_flight.key else { return };
        let record = &report.record;
        let crashes = record.quarantine.count_crash(in_flight.message_type, key);
        if crashes >= self.group.defaults.quarantine_after && !record.quarantine.contains(in_flight.message_type, key) {
            record.quarantine.insert(in_flight.message_type, key.clone());
            super::events::message_quarantined(&record.path, short_type_name(in_flight.message_type));
            self.group.context.quarantine.accept(QuarantineRecord {
                actor: record.path.clone(),
                message_type: short_type_name(in_flight.message_type).to_owned(),
                key: key.clone(),
                at: SystemTime::now(),
                event: QuarantineEvent::Quarantined {
                    crashes,
                    last_panic: report.panic.message.clone(),
                    location: report.panic.location.clone(),
                },
            });
        }
    }

    fn journal(&self, report: &FailureReport, decision: JournalDecision) {
        record_failure(&self.group.context.journal, report, decision);
    }

    fn decide(&mut self, report: FailureReport) {
        let Some((index, slot)) = self.group.slot_index(&report.record) else {
            let _ = report.reply.send(Decision::Stop);
            return;
        };
        if report.epoch < slot.record.epoch.load(Ordering::Acquire) {
            // A restart ordered after this failure already replaced the failed incarnation.
            self.journal(&report, JournalDecision::Ignore);
            let _ = report.reply.send(Decision::Hold);
            return;
        }
        if self.group.shutting_down.load(Ordering::Acquire) {
            self.journal(&report, JournalDecision::Stop);
            let _ = report.reply.send(Decision::Stop);
            return;
        }
        if report.cause == FailureCause::Panic {
            self.count_poison(&report);
        }
        let restart = !matches!(
            (slot.record.restart, &report.cause),
            (RestartType::Temporary, _) | (RestartType::Transient, FailureCause::Exit)
        );
        if !restart {
            // Thousands of sessions end normally every minute: that is not journal material.
            let routine_exit = self.group.dynamic && report.cause == FailureCause::Exit;
            if !routine_exit {
                self.journal(&report, JournalDecision::Stop);
            }
            // A dynamic child that ended for good leaves the tree, or sessions would pile up.
            if slot.record.restart == RestartType::Temporary || self.group.dynamic {
                self.group.remove_slot(&slot.record);
            }
            let _ = report.reply.send(Decision::Stop);
            return;
        }
        let now = Instant::now();
        if self.intensity_exceeded(now) {
            let reason = format!(
                "restart intensity exceeded in {}: more than {} restarts within {} (last failure: {} in {}: {})",
                self.group.path,
                self.group.max_restarts,
                humantime::format_duration(self.group.within),
                report.cause_label(),
                report.record.path,
                report.panic.message,
            );
            self.journal(&report, JournalDecision::Escalate);
            super::events::supervisor_escalated(&self.group.path, &reason);
            let _ = report.reply.send(Decision::Hold);
            runner::escalate(reason);
            return;
        }
        let backoff = slot.backoff.lock().next(&slot.backoff_policy, now, &mut self.rng);
        self.journal(
            &report,
            JournalDecision::Restart {
                delay_ms: backoff.delay.as_millis() as u64,
                ceiling_ms: backoff.ceiling.as_millis() as u64,
            },
        );
        let _ = report.reply.send(Decision::Restart { delay: backoff.delay });
        let siblings: Vec<Arc<ChildSlot>> = {
            let children = self.group.children.lock();
            match self.group.strategy {
                Strategy::OneForOne => Vec::new(),
                Strategy::OneForAll => {
                    children.iter().enumerate().filter(|(i, _)| *i != index).map(|(_, s)| s.clone()).collect()
                }
                Strategy::RestForOne => children.iter().skip(index + 1).cloned().collect(),
            }
        };
        for sibling in siblings {
            super::events::sibling_restarted(&sibling.record.path, &report.record.path);
            sibling.order_restart();
        }
    }
}

/// Logs a failure and what was decided about it, and appends it to the restart journal.
fn record_failure(journal: &RestartJournal, report: &FailureReport, decision: JournalDecision) {
    let restarting = matches!(decision, JournalDecision::Restart { .. });
    let entry = JournalEntry {
        id: 0,
        actor: report.record.path.clone(),
        at: SystemTime::now(),
        cause: report.cause.clone(),
        message: report.panic.message.clone(),
        location: report.panic.location.clone(),
        thread: report.panic.thread.clone(),
        handling: report.in_flight.as_ref().map(|f| f.message_type),
        message_key: report.in_flight.as_ref().and_then(|f| f.key.clone()),
        backtrace: report.panic.backtrace.clone(),
        restart_count: report.record.restarts() + u64::from(restarting),
        decision,
    };
    super::events::actor_failed(&entry);
    crate::action!("supervisor", "child failed", actor = entry.actor, decision = entry.decision.label());
    journal.record(entry);
}

impl FailureReport {
    fn cause_label(&self) -> &'static str {
        match self.cause {
            FailureCause::Panic => "panic",
            FailureCause::Escalation => "escalation",
            FailureCause::Exit => "exit",
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Context<Self>) {
        if self.group.started_once.swap(true, Ordering::AcqRel) {
            // A restarted supervisor restarts its whole subtree (OTP semantics): whatever made it
            // fail may have corrupted what its children were doing together.
            let children: Vec<Arc<ChildSlot>> = self.group.children.lock().clone();
            for child in children {
                child.order_restart();
            }
        }
    }
}

crate::supervised!(Supervisor);

impl Handler<ChildFailed> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: ChildFailed, _ctx: &mut Context<Self>) {
        self.decide(msg.0);
    }
}

/// The parent of the root supervisor: restarts the root within the root's own intensity, and
/// turns a root escalation into a fatal error (orderly shutdown, non-zero exit).
pub(crate) struct TopLevel {
    pub(super) root_path: String,
    pub(super) max_restarts: u32,
    pub(super) within: Duration,
    pub(super) journal: Arc<RestartJournal>,
    pub(super) recent_restarts: Mutex<VecDeque<Instant>>,
    pub(super) shutting_down: AtomicBool,
    pub(super) fatal: watch::Sender<Option<String>>,
}

impl TopLevel {
    pub(crate) fn handle_failure(&self, report: FailureReport) {
        let decision = if self.shutting_down.load(Ordering::Acquire) {
            Decision::Stop
        } else if report.cause == FailureCause::Escalation {
            self.declare_fatal(report.panic.message.clone());
            Decision::Hold
        } else {
            let now = Instant::now();
            let mut recent = self.recent_restarts.lock();
            recent.push_back(now);
            while recent.front().is_some_and(|at| now.saturating_duration_since(*at) > self.within) {
                recent.pop_front();
            }
            if recent.len() > self.max_restarts as usize {
                drop(recent);
                self.declare_fatal(format!(
                    "root supervisor {} failed more than {} times within {}: {}",
                    self.root_path,
                    self.max_restarts,
                    humantime::format_duration(self.within),
                    report.panic.message
                ));
                Decision::Hold
            } else {
                Decision::Restart { delay: Duration::ZERO }
            }
        };
        let journal_decision = match decision {
            Decision::Restart { .. } => JournalDecision::Restart { delay_ms: 0, ceiling_ms: 0 },
            Decision::Stop => JournalDecision::Stop,
            Decision::Hold => JournalDecision::Escalate,
        };
        record_failure(&self.journal, &report, journal_decision);
        let _ = report.reply.send(decision);
    }

    fn declare_fatal(&self, reason: String) {
        super::events::fatal(&reason);
        self.fatal.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason);
                true
            } else {
                false
            }
        });
    }
}
