//! The runner: the task that drives one supervised actor and contains its panics.
//!
//! Owns: the actor's `ContextFut` (so its mailbox, and with it every `Addr`, outlives each
//! incarnation), the factory for fresh state, and the thread-locals that let the mailbox boundary
//! know what was in flight when a panic happened.
//!
//! How a panic is contained: every poll of the actor's `ContextFut` runs inside
//! `panic_capture::contain`. A panic anywhere inside that poll — a handler, a future spawned with
//! `ctx.spawn`/`ctx.wait`, a `ResponseActFuture`, a stream item, a `run_interval`/`run_later`/
//! `notify` callback, or `started()` — unwinds to here. The message being handled is dropped
//! during the unwind, which drops its reply sender: the caller gets an error instead of hanging.
//! The runner then reports to its parent and waits for a decision; meanwhile the mailbox keeps
//! accepting messages. On restart it builds a fresh actor from the factory and calls actix's
//! `ContextFut::restart`, which cancels the old incarnation's futures and timers and calls
//! `Supervised::restarting`, where the `supervised!` macro swaps the fresh state in. Queued
//! messages are then served by the new incarnation.
//!
//! Must never: let an unwind escape `poll` (tokio would drop the task and silently close the
//! mailbox), or drop the `ContextFut` outside `contain` (its `Drop` runs actor code).

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime};

use actix::dev::channel::AddressReceiver;
use actix::dev::ContextFut;
use actix::{ActorContext, Context};
use tokio::sync::oneshot;
use tokio::time::Sleep;

use super::control::ControlReceiver;
use super::journal::FailureCause;
use super::panic_capture::contain;
use super::registry::{ActorRecord, ActorStatus, FailureSummary};
use super::spec::Factory;
use super::supervisor::ParentLink;
use super::watchdog;
use super::{short_type_name, SupervisedActor};
use crate::crash::CapturedPanic;

/// What a supervisor can tell a running child at any time.
#[derive(Debug)]
pub(crate) enum Control {
    /// Replace the current incarnation with fresh state now (one_for_all / rest_for_one siblings,
    /// or the supervisor's own restart).
    Restart,
    /// Stop gracefully (`stopping`/`stopped` run), then end the runner.
    Stop,
    /// End now, without waiting for the actor.
    Kill,
}

/// A supervisor's answer to a failure report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Restart {
        delay: Duration,
    },
    Stop,
    /// Wait for a `Control` (the supervisor escalated; its own restart will restart this child).
    Hold,
}

/// The message that was being handled when a failure happened.
#[derive(Debug, Clone)]
pub struct InFlight {
    pub message_type: &'static str,
    pub key: Option<String>,
}

/// Everything a parent needs to decide about a failed child.
pub(crate) struct FailureReport {
    pub record: Arc<ActorRecord>,
    pub epoch: u64,
    pub cause: FailureCause,
    pub panic: CapturedPanic,
    pub in_flight: Option<InFlight>,
    pub reply: oneshot::Sender<Decision>,
}

// Per-thread state shared by the runner polling on this thread and the code it polls.
//
// The hot-path ones are `Cell`s of types without `Drop`: such thread-locals compile to a plain
// TLS load/store, while one holding a `Drop` type pays a lazy-destructor check on every access
// (about 50 instructions — measured with callgrind, a fifth of the supervision overhead per
// message before this split). Values that own memory sit in separate, rarely touched slots.
thread_local! {
    /// Type of the tracked message whose handler's synchronous part is running (set by `dispatch`).
    static IN_FLIGHT_TYPE: Cell<Option<&'static str>> = const { Cell::new(None) };
    /// Whether `IN_FLIGHT_KEY` belongs to the message in `IN_FLIGHT_TYPE`.
    static IN_FLIGHT_HAS_KEY: Cell<bool> = const { Cell::new(false) };
    /// The key of a keyed in-flight message (the rare, already allocating case).
    static IN_FLIGHT_KEY: RefCell<Option<String>> = const { RefCell::new(None) };
    /// Tracked messages dequeued during the current poll; the runner takes them off the backlog.
    static DISPATCHED: Cell<u64> = const { Cell::new(0) };
    /// Set by a supervisor that gives up; the reason is in `ESCALATION_REASON`.
    static ESCALATION_REQUESTED: Cell<bool> = const { Cell::new(false) };
    static ESCALATION_REASON: RefCell<Option<String>> = const { RefCell::new(None) };
    /// Fresh state handed from the runner to `Supervised::restarting`.
    static FRESH_STATE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// Records that a tracked message is being handled (called by `dispatch`).
#[inline]
pub(crate) fn begin_dispatch(message_type: &'static str, key: Option<String>) {
    DISPATCHED.set(DISPATCHED.get() + 1);
    IN_FLIGHT_TYPE.set(Some(message_type));
    if key.is_some() {
        IN_FLIGHT_KEY.with(|slot| *slot.borrow_mut() = key);
        IN_FLIGHT_HAS_KEY.set(true);
    } else if IN_FLIGHT_HAS_KEY.get() {
        IN_FLIGHT_HAS_KEY.set(false);
    }
}

/// Counts a dequeued message that was not handled (diverted to quarantine).
pub(crate) fn count_dispatched() {
    DISPATCHED.set(DISPATCHED.get() + 1);
}

/// The handler's synchronous part returned: nothing is in flight any more.
#[inline]
pub(crate) fn end_dispatch() {
    IN_FLIGHT_TYPE.set(None);
}

fn take_in_flight() -> Option<InFlight> {
    let message_type = IN_FLIGHT_TYPE.take()?;
    let key = if IN_FLIGHT_HAS_KEY.replace(false) { IN_FLIGHT_KEY.with(|slot| slot.borrow_mut().take()) } else { None };
    Some(InFlight { message_type, key })
}

/// Called from `Supervised::restarting` (generated by `supervised!`): replaces the old state with
/// the fresh one the runner prepared. The old state is dropped here.
#[doc(hidden)]
pub fn install_fresh_state<A: 'static>(actor: &mut A) {
    let fresh = FRESH_STATE.with(|slot| slot.borrow_mut().take());
    match fresh.map(|fresh| fresh.downcast::<A>()) {
        Some(Ok(fresh)) => *actor = *fresh,
        // Not ours: put it back so the runner sees the state was not installed.
        Some(Err(other)) => FRESH_STATE.with(|slot| *slot.borrow_mut() = Some(other)),
        None => {}
    }
}

/// Makes the calling actor's runner report a failure of its own after the current poll: the
/// supervisor that calls it gives up and hands the problem to its parent.
pub(crate) fn escalate(reason: String) {
    ESCALATION_REASON.with(|slot| *slot.borrow_mut() = Some(reason));
    ESCALATION_REQUESTED.set(true);
}

/// Marks `record`'s actor busy for the watchdog for the duration of one poll, and publishes how
/// many messages the runner has dequeued so far (its private running total).
struct PollScope<'a> {
    record: &'a ActorRecord,
    dispatched_total: &'a mut u64,
}

impl<'a> PollScope<'a> {
    #[inline]
    fn enter(record: &'a ActorRecord, dispatched_total: &'a mut u64) -> Self {
        // DISPATCHED is already 0: every scope's `drop` resets it, panics included (the scope
        // lives outside the containment boundary).
        record.busy_since.store(watchdog::now_tick(), Ordering::Relaxed);
        Self { record, dispatched_total }
    }
}

impl Drop for PollScope<'_> {
    #[inline]
    fn drop(&mut self) {
        self.record.busy_since.store(0, Ordering::Relaxed);
        let dispatched = DISPATCHED.replace(0);
        if dispatched != 0 {
            *self.dispatched_total += dispatched;
            self.record.dispatched.store(*self.dispatched_total, Ordering::Relaxed);
        }
    }
}

enum Phase {
    Running,
    /// Graceful stop requested: keep polling until the actor finishes stopping.
    Stopping,
    AwaitingDecision(oneshot::Receiver<Decision>),
    Backoff(Pin<Box<Sleep>>),
    Held,
    Done,
}

enum Step {
    Pending,
    Exited,
    Failed { cause: FailureCause, panic: CapturedPanic, in_flight: Option<InFlight> },
}

pub(crate) struct Runner<A: SupervisedActor> {
    /// The actor's context before its first successful build (the factory may panic).
    unbuilt: Option<Context<A>>,
    /// The live incarnation. `None` before the first build and after the end.
    instance: Option<ContextFut<A, Context<A>>>,
    factory: Factory<A>,
    record: Arc<ActorRecord>,
    control: ControlReceiver,
    parent: ParentLink,
    phase: Phase,
    /// Messages this runner dequeued since it was spawned; published to the record per poll.
    dispatched_total: u64,
    /// Whether the record already says `Running` for the first incarnation (checked per poll,
    /// so kept here rather than read back from the record's `watch`).
    announced_running: bool,
}

impl<A: SupervisedActor> Runner<A> {
    pub(crate) fn new(
        receiver: AddressReceiver<A>,
        factory: Factory<A>,
        record: Arc<ActorRecord>,
        control: ControlReceiver,
        parent: ParentLink,
    ) -> Self {
        Self {
            unbuilt: Some(Context::with_receiver(receiver)),
            instance: None,
            factory,
            record,
            control,
            parent,
            phase: Phase::Running,
            announced_running: false,
            dispatched_total: 0,
        }
    }

    fn apply_control(&mut self, control: Option<Control>) {
        match control {
            Some(Control::Restart) => {
                if !matches!(self.phase, Phase::Done | Phase::Stopping) {
                    self.restart_now();
                }
            }
            Some(Control::Stop) => self.begin_stop(),
            // A closed control channel means the supervisor's slot is gone: nobody owns us.
            Some(Control::Kill) | None => self.finish(),
        }
    }

    fn begin_stop(&mut self) {
        if matches!(self.phase, Phase::Stopping | Phase::Done) {
            return;
        }
        // Let `stopping`/`stopped` run; the runner ends when the actor does. An actor that is not
        // running (never built, failed, backing off, held) has nothing to stop gracefully.
        let stopping = match (&self.phase, self.instance.as_mut()) {
            (Phase::Running, Some(instance)) => contain(|| instance.ctx().stop()).is_ok(),
            _ => false,
        };
        if stopping {
            self.phase = Phase::Stopping;
        } else {
            self.finish();
        }
    }

    /// Ends the runner: drops the incarnation (its `Drop` may run actor code, so contained) and
    /// with it the mailbox; senders from now on get `Stopped`.
    fn finish(&mut self) {
        if let Some(instance) = self.instance.take() {
            let _ = contain(move || drop(instance));
        }
        if let Some(unbuilt) = self.unbuilt.take() {
            let _ = contain(move || drop(unbuilt));
        }
        // Whatever is still queued is dropped with the mailbox.
        self.dispatched_total = self.record.sent.load(Ordering::Relaxed);
        self.record.dispatched.store(self.dispatched_total, Ordering::Relaxed);
        self.record.set_status(ActorStatus::Stopped);
        self.phase = Phase::Done;
    }

    /// Builds fresh state and swaps it in, keeping the mailbox.
    fn restart_now(&mut self) {
        let factory = self.factory.clone();
        let fresh = match contain(move || factory()) {
            Ok(fresh) => fresh,
            Err(panic) => {
                self.report(FailureCause::Panic, panic, None);
                return;
            }
        };
        match self.instance.as_mut() {
            None => match self.unbuilt.take() {
                Some(context) => self.instance = Some(context.into_future(fresh)),
                None => return self.finish(),
            },
            Some(instance) => {
                FRESH_STATE.with(|slot| *slot.borrow_mut() = Some(Box::new(fresh)));
                let restarted = {
                    let _scope = PollScope::enter(&self.record, &mut self.dispatched_total);
                    contain(|| instance.restart())
                };
                let not_installed = FRESH_STATE.with(|slot| slot.borrow_mut().take()).is_some();
                match restarted {
                    Ok(true) if !not_installed => {}
                    Ok(true) => {
                        // Only reachable if someone implemented `Supervised` by hand instead of
                        // through `supervised!`: the old state would silently live on.
                        tracing::error!(actor = %self.record.path, "actor does not install fresh state on restart; implement it with rampart::supervised!");
                    }
                    // Every sender is gone: nobody can talk to this actor any more.
                    Ok(false) => return self.finish(),
                    Err(panic) => {
                        // Dropping the old state panicked. The new state is in place or the old one
                        // is; either way report it and let the supervisor decide again.
                        self.report(FailureCause::Panic, panic, None);
                        return;
                    }
                }
            }
        }
        self.record.restarts.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::actor_restarted(&self.record.metric_label);
        *self.record.started_at.lock() = SystemTime::now();
        self.record.set_status(ActorStatus::Running);
        self.phase = Phase::Running;
    }

    fn report(&mut self, cause: FailureCause, panic: CapturedPanic, in_flight: Option<InFlight>) {
        if cause == FailureCause::Panic {
            crate::telemetry::actor_panicked();
            let mut crash = crate::crash::CrashRecord::new(crate::telemetry::PanicSource::actor, &panic);
            crash.actor = Some(self.record.path.clone());
            crash.handling = in_flight.as_ref().map(|f| short_type_name(f.message_type).to_owned());
            crate::alerts::report_crash(crash);
        }
        self.record.set_status(ActorStatus::Restarting);
        *self.record.last_failure.lock() = Some(FailureSummary {
            at: SystemTime::now(),
            message: panic.message.clone(),
            location: panic.location.clone(),
            handling: in_flight.as_ref().map(|f| short_type_name(f.message_type).to_owned()),
        });
        let (reply, decision) = oneshot::channel();
        self.parent.report(FailureReport {
            record: self.record.clone(),
            epoch: self.record.epoch.load(Ordering::Acquire),
            cause,
            panic,
            in_flight,
            reply,
        });
        self.phase = Phase::AwaitingDecision(decision);
    }

    /// Polls the live incarnation once, inside the containment boundary.
    fn poll_instance(&mut self, cx: &mut TaskContext<'_>) -> Step {
        if self.instance.is_none() {
            let factory = self.factory.clone();
            match contain(move || factory()) {
                Ok(actor) => match self.unbuilt.take() {
                    Some(context) => self.instance = Some(context.into_future(actor)),
                    None => return Step::Exited,
                },
                Err(panic) => return Step::Failed { cause: FailureCause::Panic, panic, in_flight: None },
            }
        }
        let Some(instance) = self.instance.as_mut() else {
            return Step::Exited;
        };
        if !self.announced_running {
            self.announced_running = true;
            self.record.set_status(ActorStatus::Running);
        }
        let scope = PollScope::enter(&self.record, &mut self.dispatched_total);
        let outcome = contain(|| Pin::new(&mut *instance).poll(cx));
        drop(scope);
        let in_flight = if outcome.is_err() { take_in_flight() } else { None };
        let escalation = if ESCALATION_REQUESTED.get() {
            ESCALATION_REQUESTED.set(false);
            ESCALATION_REASON.with(|slot| slot.borrow_mut().take())
        } else {
            None
        };
        match outcome {
            Err(panic) => Step::Failed { cause: FailureCause::Panic, panic, in_flight },
            Ok(_) if escalation.is_some() => Step::Failed {
                cause: FailureCause::Escalation,
                panic: CapturedPanic::without_panic(escalation.unwrap_or_default()),
                in_flight: None,
            },
            Ok(Poll::Ready(())) => Step::Exited,
            Ok(Poll::Pending) => Step::Pending,
        }
    }
}

impl<A: SupervisedActor> Future for Runner<A> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            while !matches!(this.phase, Phase::Done) {
                match this.control.poll_recv(cx) {
                    Poll::Ready(control) => this.apply_control(control),
                    Poll::Pending => break,
                }
            }
            match &mut this.phase {
                Phase::Done => return Poll::Ready(()),
                Phase::Held => return Poll::Pending,
                Phase::Backoff(delay) => match delay.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => this.restart_now(),
                },
                Phase::AwaitingDecision(decision) => match Pin::new(decision).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(Decision::Restart { delay })) if delay.is_zero() => this.restart_now(),
                    Poll::Ready(Ok(Decision::Restart { delay })) => {
                        this.phase = Phase::Backoff(Box::pin(tokio::time::sleep(delay)));
                    }
                    Poll::Ready(Ok(Decision::Hold)) => this.phase = Phase::Held,
                    // Stop, or the parent vanished without deciding.
                    Poll::Ready(Ok(Decision::Stop) | Err(_)) => this.finish(),
                },
                Phase::Running | Phase::Stopping => {
                    let stopping = matches!(this.phase, Phase::Stopping);
                    match this.poll_instance(cx) {
                        Step::Pending => return Poll::Pending,
                        Step::Exited if stopping => this.finish(),
                        Step::Exited => {
                            this.report(FailureCause::Exit, CapturedPanic::without_panic("actor stopped".into()), None)
                        }
                        // A failure while stopping ends the actor: nothing to restart for.
                        Step::Failed { .. } if stopping => this.finish(),
                        Step::Failed { cause, panic, in_flight } => this.report(cause, panic, in_flight),
                    }
                }
            }
        }
    }
}

impl<A: SupervisedActor> Drop for Runner<A> {
    fn drop(&mut self) {
        // The arbiter is going away with this task still alive: end cleanly, contained.
        if !matches!(self.phase, Phase::Done) {
            self.finish();
        }
    }
}
