//! Supervisors: actors that decide what happens when a child fails.
//!
//! Owns: `Supervisor` (the actor: strategy, restart intensity, escalation, quarantine counting),
//! `Group` (a supervisor's children, which outlive any incarnation of the supervisor so that every
//! handle stays valid), `SupervisorHandle` (spawning children, static or dynamic), `TopLevel` (the
//! root's parent: restart the root or end the process) and the shutdown walk.
//!
//! Architecture Invariant: a supervisor never touches a child's actor state. It talks to a child's
//! runner through `Control` and `Decision` only, and shutdown walks the `Group`s directly, so it
//! completes even when a supervisor's own runner is parked waiting for its parent.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use actix::dev::channel;
use actix::{Actor, Addr, Context, Handler, Message};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::watch;

use super::backoff::{BackoffPolicy, BackoffState};
use super::config::SupervisionConfig;
use super::control::{control_channel, ControlReceiver, ControlSender};
use super::handle::{ActorHandle, ChaosPanic, SupervisedActor, Tracked};
use super::journal::{FailureCause, JournalDecision, JournalEntry, RestartJournal};
use super::quarantine::{QuarantineEvent, QuarantineRecord, QuarantineSink};
use super::registry::{ActorKind, ActorRecord, ActorStatus, Registry};
use super::runner::{self, Control, Decision, FailureReport, Runner};
use super::spec::{ChildSpec, RestartType, Strategy, SupervisorSpec};
use super::{short_type_name, watchdog::Watchdog};

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
    fn new(path: String, spec: &SupervisorSpec, defaults: &SupervisionConfig, context: SupervisionContext) -> Self {
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

    fn remove_slot(&self, record: &Arc<ActorRecord>) {
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
    fn new(group: Arc<Group>) -> Self {
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
    root_path: String,
    max_restarts: u32,
    within: Duration,
    journal: Arc<RestartJournal>,
    recent_restarts: Mutex<VecDeque<Instant>>,
    shutting_down: AtomicBool,
    fatal: watch::Sender<Option<String>>,
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

/// A running supervisor: spawn children under it, or shut it down.
#[derive(Clone)]
pub struct SupervisorHandle {
    group: Arc<Group>,
    actor: ActorHandle<Supervisor>,
}

impl SupervisorHandle {
    pub fn path(&self) -> &str {
        &self.group.path
    }

    /// The supervisor actor itself (its record, its chaos trigger).
    pub fn actor(&self) -> &ActorHandle<Supervisor> {
        &self.actor
    }

    /// Number of children currently in this supervisor.
    pub fn child_count(&self) -> usize {
        self.group.children.lock().len()
    }

    /// Starts `spec` as the last child of this supervisor and returns its stable handle.
    pub fn spawn<A: SupervisedActor>(&self, spec: ChildSpec<A>) -> Result<ActorHandle<A>, SpawnError> {
        let parent = ParentLink::Supervisor(self.supervisor_addr());
        spawn_child(&self.group, parent, spec, None)
    }

    /// Starts a child supervisor (a subtree) as the last child of this one.
    pub fn spawn_supervisor(&self, spec: SupervisorSpec) -> Result<SupervisorHandle, SpawnError> {
        let parent = ParentLink::Supervisor(self.supervisor_addr());
        spawn_supervisor_under(&self.group, parent, spec)
    }

    /// Stops every child in reverse start order (children of child supervisors first), each
    /// within its shutdown timeout; children that do not stop in time are dropped.
    pub async fn shutdown(&self) {
        shutdown_group(self.group.clone()).await;
    }

    fn supervisor_addr(&self) -> Addr<Supervisor> {
        self.actor.addr.clone()
    }
}

fn validate_name(name: &str) -> Result<(), SpawnError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'));
    if valid {
        Ok(())
    } else {
        Err(SpawnError::InvalidName(name.to_owned()))
    }
}

fn spawn_supervisor_under(
    parent_group: &Arc<Group>,
    parent: ParentLink,
    spec: SupervisorSpec,
) -> Result<SupervisorHandle, SpawnError> {
    validate_name(&spec.name)?;
    let path = format!("{}/{}", parent_group.path, spec.name);
    let group = Arc::new(Group::new(path, &spec, &parent_group.defaults, parent_group.context.clone()));
    let factory_group = group.clone();
    let child_spec = ChildSpec::new(spec.name.clone(), move || Supervisor::new(factory_group.clone()))
        .restart(spec.restart)
        .backoff(parent_group.defaults.backoff);
    let actor = spawn_child(parent_group, parent, child_spec, Some(group.clone()))?;
    let _ = group.addr.set(actor.addr.clone());
    if group.dynamic {
        group.context.registry.mark_dynamic(&group.path);
    }
    Ok(SupervisorHandle { group, actor })
}

/// Creates the slot, record, mailbox and runner of one child. `group` is set when the child is a
/// supervisor.
fn spawn_child<A: SupervisedActor>(
    parent_group: &Arc<Group>,
    parent: ParentLink,
    spec: ChildSpec<A>,
    group: Option<Arc<Group>>,
) -> Result<ActorHandle<A>, SpawnError> {
    validate_name(&spec.name)?;
    let path = format!("{}/{}", parent_group.path, spec.name);
    if parent_group.shutting_down.load(Ordering::Acquire) {
        return Err(SpawnError::ShuttingDown(parent_group.path.clone()));
    }
    let defaults = &parent_group.defaults;
    let kind = if group.is_some() { ActorKind::Supervisor } else { ActorKind::Worker };
    let record = Arc::new(ActorRecord::new(
        path.clone(),
        kind,
        spec.restart,
        Some(parent_group.path.clone()),
        parent_group.dynamic,
        spec.stall_threshold.unwrap_or(defaults.stall_threshold),
        parent_group.context.quarantine.clone(),
    ));
    if !parent_group.context.registry.insert(record.clone()) {
        return Err(SpawnError::NameTaken(path));
    }
    let (control, control_receiver) = control_channel();
    let slot = Arc::new(ChildSlot {
        record: record.clone(),
        control,
        shutdown_timeout: spec.shutdown_timeout.unwrap_or(defaults.shutdown_timeout),
        backoff_policy: spec.backoff.unwrap_or(defaults.backoff),
        backoff: Mutex::new(BackoffState::default()),
        group,
        keepalive: OnceLock::new(),
    });
    // The slot must exist before the runner starts: a child on another arbiter can fail at once,
    // and its supervisor must find the slot to restart it.
    parent_group.children.lock().push(slot.clone());
    let handle =
        start_runner(spec, record.clone(), control_receiver, parent, defaults.mailbox_capacity).inspect_err(|_| {
            parent_group.remove_slot(&record);
        })?;
    let _ = slot.keepalive.set(Box::new(handle.addr.clone()));
    Ok(handle)
}

fn start_runner<A: SupervisedActor>(
    spec: ChildSpec<A>,
    record: Arc<ActorRecord>,
    control_receiver: ControlReceiver,
    parent: ParentLink,
    default_capacity: usize,
) -> Result<ActorHandle<A>, SpawnError> {
    let capacity = spec.mailbox_capacity.unwrap_or(default_capacity);
    let (sender, receiver) = channel::channel::<A>(capacity);
    let addr = Addr::new(sender);
    // Weak: the trigger lives in the record, and a strong reference to it from there would keep
    // every record (and the mailbox behind `chaos_addr`) alive after its actor left the tree.
    let chaos_addr = addr.downgrade();
    let chaos_record = Arc::downgrade(&record);
    let _ = record.chaos.set(Box::new(move || {
        let (Some(addr), Some(record)) = (chaos_addr.upgrade(), chaos_record.upgrade()) else {
            return false;
        };
        if !addr.connected() {
            return false;
        }
        record.sent.fetch_add(1, Ordering::Relaxed);
        addr.do_send(Tracked::new(ChaosPanic, None, &record));
        true
    }));
    let factory = spec.factory.clone();
    let runner_record = record.clone();
    let make_runner = move || Runner::new(receiver, factory, runner_record, control_receiver, parent);
    // Not fire-and-forget: the runner is owned through its control channel (stop, kill) and
    // reports its own end to the parent; it contains every panic of the actor it runs.
    #[allow(clippy::disallowed_methods, reason = "runners are owned by the supervision tree")]
    let start = move || drop(actix_rt::spawn(make_runner()));
    match spec.arbiter {
        None => start(),
        Some(arbiter) => {
            if !arbiter.spawn_fn(start) {
                return Err(SpawnError::ArbiterGone(record.path.clone()));
            }
        }
    }
    Ok(ActorHandle { addr, record })
}

/// Stops a group's children in reverse start order. Boxed: it recurses into child supervisors.
fn shutdown_group(group: Arc<Group>) -> Pin<Box<dyn Future<Output = ()>>> {
    Box::pin(async move {
        group.shutting_down.store(true, Ordering::Release);
        let children: Vec<Arc<ChildSlot>> = group.children.lock().iter().rev().cloned().collect();
        for child in children {
            if let Some(child_group) = &child.group {
                shutdown_group(child_group.clone()).await;
            }
            stop_child(&child).await;
        }
    })
}

async fn stop_child(child: &ChildSlot) {
    /// After a kill, how long to wait for the runner to confirm.
    const KILL_GRACE: Duration = Duration::from_secs(1);
    if child.record.status() == ActorStatus::Stopped {
        return;
    }
    let _ = child.control.send(Control::Stop);
    if child.record.wait_stopped(child.shutdown_timeout).await {
        return;
    }
    super::events::child_killed_on_shutdown(&child.record.path, child.shutdown_timeout);
    let _ = child.control.send(Control::Kill);
    child.record.wait_stopped(KILL_GRACE).await;
}

/// The whole supervision tree: the root supervisor, its parent, and the stall watchdog.
pub struct SupervisionTree {
    root: SupervisorHandle,
    root_slot: Arc<ChildSlot>,
    top: Arc<TopLevel>,
    fatal: watch::Receiver<Option<String>>,
    context: SupervisionContext,
    _watchdog: Watchdog,
}

impl SupervisionTree {
    /// Starts the root supervisor (`/root`, one_for_one) on the current arbiter.
    pub fn start(config: &SupervisionConfig, context: SupervisionContext) -> std::io::Result<Self> {
        super::install_panic_hook();
        let watchdog = Watchdog::start(context.registry.clone())?;
        let (fatal_sender, fatal) = watch::channel(None);
        let spec = SupervisorSpec::new("root");
        let group = Arc::new(Group::new("/root".to_owned(), &spec, config, context.clone()));
        let top = Arc::new(TopLevel {
            root_path: group.path.clone(),
            max_restarts: group.max_restarts,
            within: group.within,
            journal: context.journal.clone(),
            recent_restarts: Mutex::new(VecDeque::new()),
            shutting_down: AtomicBool::new(false),
            fatal: fatal_sender,
        });
        let record = Arc::new(ActorRecord::new(
            group.path.clone(),
            ActorKind::Supervisor,
            RestartType::Permanent,
            None,
            false,
            config.stall_threshold,
            context.quarantine.clone(),
        ));
        context.registry.insert(record.clone());
        let (control, control_receiver) = control_channel();
        let factory_group = group.clone();
        let child_spec = ChildSpec::new("root", move || Supervisor::new(factory_group.clone()));
        let actor = start_runner(
            child_spec,
            record.clone(),
            control_receiver,
            ParentLink::Top(top.clone()),
            config.mailbox_capacity,
        )
        .map_err(|error| std::io::Error::other(error.to_string()))?;
        let _ = group.addr.set(actor.addr.clone());
        let root_slot = Arc::new(ChildSlot {
            record,
            control,
            shutdown_timeout: config.shutdown_timeout,
            backoff_policy: config.backoff,
            backoff: Mutex::new(BackoffState::default()),
            group: Some(group.clone()),
            keepalive: OnceLock::new(),
        });
        let _ = root_slot.keepalive.set(Box::new(actor.addr.clone()));
        Ok(Self { root: SupervisorHandle { group, actor }, root_slot, top, fatal, context, _watchdog: watchdog })
    }

    pub fn root(&self) -> &SupervisorHandle {
        &self.root
    }

    pub fn context(&self) -> &SupervisionContext {
        &self.context
    }

    /// Resolves with the reason once the tree gave up (root escalation or root restart storm).
    pub fn fatal(&self) -> impl Future<Output = String> + 'static {
        let mut fatal = self.fatal.clone();
        async move {
            match fatal.wait_for(Option::is_some).await {
                Ok(reason) => reason.clone().unwrap_or_default(),
                // The sender lives in `TopLevel`, owned by the tree: gone means the tree is gone.
                Err(_) => std::future::pending().await,
            }
        }
    }

    /// Stops the whole tree: children in reverse start order, then the root itself.
    pub async fn shutdown(&self) {
        self.top.shutting_down.store(true, Ordering::Release);
        self.root.shutdown().await;
        stop_child(&self.root_slot).await;
    }
}
