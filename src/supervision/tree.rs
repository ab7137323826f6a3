//! The tree: `SupervisorHandle` (spawning children, static or dynamic, under a supervisor),
//! starting a child's runner, the shutdown walk, and `SupervisionTree` (the root and its
//! `TopLevel` parent).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix::dev::channel;
use actix::Addr;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::backoff::BackoffState;
use super::config::SupervisionConfig;
use super::control::{control_channel, ControlReceiver};
use super::handle::{ActorHandle, ChaosPanic, SupervisedActor, Tracked};
use super::registry::{ActorKind, ActorRecord, ActorStatus};
use super::runner::{Control, Runner};
use super::spec::{ChildSpec, RestartType, SupervisorSpec};
use super::supervisor::{ChildSlot, Group, ParentLink, SpawnError, SupervisionContext, Supervisor, TopLevel};
use super::watchdog::Watchdog;

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
