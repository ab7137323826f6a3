//! Child and supervisor specifications: what a supervisor needs to (re)build a child.
//!
//! Owns: the declarative description of a child — name, factory, restart type, timeouts. Specs
//! are inert; `SupervisorHandle::spawn` turns one into a running child.

use std::sync::Arc;
use std::time::Duration;

use actix::ArbiterHandle;
use serde::Serialize;

use super::backoff::BackoffPolicy;
use super::config::SupervisionConfig;

/// When a child is restarted (OTP semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartType {
    /// Always restarted, whether it failed or stopped on its own.
    Permanent,
    /// Restarted only when it failed (panic, escalation); a normal stop is final.
    Transient,
    /// Never restarted; removed from its supervisor when it ends (sessions, peers).
    Temporary,
}

/// Which children restart together when one fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Only the failed child.
    OneForOne,
    /// Every child of the supervisor.
    OneForAll,
    /// The failed child and every child started after it.
    RestForOne,
}

/// Builds a fresh instance of an actor. Called on the actor's own arbiter thread, at first start
/// and at every restart; a panic here counts as a failure of the child.
pub type Factory<A> = Arc<dyn Fn() -> A + Send + Sync + 'static>;

/// How to run one actor under a supervisor.
pub struct ChildSpec<A> {
    pub(crate) name: String,
    pub(crate) factory: Factory<A>,
    pub(crate) restart: RestartType,
    pub(crate) shutdown_timeout: Option<Duration>,
    pub(crate) backoff: Option<BackoffPolicy>,
    pub(crate) stall_threshold: Option<Duration>,
    pub(crate) mailbox_capacity: Option<usize>,
    pub(crate) arbiter: Option<ArbiterHandle>,
}

impl<A> ChildSpec<A> {
    /// A permanent child named `name` (one path segment) built by `factory`.
    pub fn new(name: impl Into<String>, factory: impl Fn() -> A + Send + Sync + 'static) -> Self {
        Self {
            name: name.into(),
            factory: Arc::new(factory),
            restart: RestartType::Permanent,
            shutdown_timeout: None,
            backoff: None,
            stall_threshold: None,
            mailbox_capacity: None,
            arbiter: None,
        }
    }

    pub fn restart(mut self, restart: RestartType) -> Self {
        self.restart = restart;
        self
    }

    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = Some(timeout);
        self
    }

    pub fn backoff(mut self, backoff: BackoffPolicy) -> Self {
        self.backoff = Some(backoff);
        self
    }

    pub fn stall_threshold(mut self, threshold: Duration) -> Self {
        self.stall_threshold = Some(threshold);
        self
    }

    pub fn mailbox_capacity(mut self, capacity: usize) -> Self {
        self.mailbox_capacity = Some(capacity.max(1));
        self
    }

    /// Runs the child on `arbiter` instead of the spawning thread's arbiter.
    pub fn on_arbiter(mut self, arbiter: ArbiterHandle) -> Self {
        self.arbiter = Some(arbiter);
        self
    }
}

/// How a supervisor treats its children.
#[derive(Debug, Clone)]
pub struct SupervisorSpec {
    pub(crate) name: String,
    pub(crate) strategy: Strategy,
    pub(crate) max_restarts: Option<u32>,
    pub(crate) within: Option<Duration>,
    pub(crate) restart: RestartType,
    pub(crate) dynamic: bool,
    pub(crate) defaults: Option<SupervisionConfig>,
}

impl SupervisorSpec {
    /// A one_for_one supervisor named `name` with the configured intensity.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            strategy: Strategy::OneForOne,
            max_restarts: None,
            within: None,
            restart: RestartType::Permanent,
            dynamic: false,
            defaults: None,
        }
    }

    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Restart intensity: more than `max_restarts` within `within` escalates to the parent.
    pub fn intensity(mut self, max_restarts: u32, within: Duration) -> Self {
        self.max_restarts = Some(max_restarts.max(1));
        self.within = Some(within);
        self
    }

    pub fn restart(mut self, restart: RestartType) -> Self {
        self.restart = restart;
        self
    }

    /// Children come and go at run time (sessions, rooms, peers); the admin API summarizes them
    /// when there are many.
    pub fn dynamic(mut self) -> Self {
        self.dynamic = true;
        self
    }

    /// Defaults for this supervisor's children (backoff, stall threshold...) instead of the
    /// parent's.
    pub fn child_defaults(mut self, defaults: SupervisionConfig) -> Self {
        self.defaults = Some(defaults);
        self
    }
}
