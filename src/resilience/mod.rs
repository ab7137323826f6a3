//! Protecting rampart from its dependencies: circuit breakers (and, with the pipeline, retries
//! with backoff) around storage, search and Kafka calls.
//!
//! Architecture Invariant: nothing here knows a concrete dependency; breakers guard closures.

mod circuit_breaker;

use std::sync::Arc;

use parking_lot::RwLock;

pub use circuit_breaker::{
    CallNotPermitted, CircuitBreaker, CircuitBreakerConfig, CircuitState, Fallback, Outcome, Permit,
};

/// What a dependency is to this instance, which decides what its open breaker does to `/ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    /// Local to this instance and needed to serve (the embedded store on its own disk): while
    /// its breaker is open this instance can do nothing useful, so readiness fails and a load
    /// balancer sends traffic to instances that can serve.
    LocalRequired,
    /// Shared by every instance (MongoDB, Kafka, OpenSearch), or optional (search): readiness
    /// warns. Failing it would take every instance out of rotation at once for an outage that
    /// none of them can route around.
    SharedOrOptional,
}

/// Every breaker of the process, for `/ready` and the admin API.
#[derive(Default)]
pub struct CircuitBreakers {
    breakers: RwLock<Vec<(Arc<CircuitBreaker>, Dependency)>>,
}

impl CircuitBreakers {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Creates a breaker for `dependency` and keeps it listed.
    pub fn create(
        &self,
        name: impl Into<String>,
        config: CircuitBreakerConfig,
        dependency: Dependency,
    ) -> Arc<CircuitBreaker> {
        let breaker = CircuitBreaker::new(name, config);
        self.breakers.write().push((breaker.clone(), dependency));
        breaker
    }

    pub fn all(&self) -> Vec<(Arc<CircuitBreaker>, Dependency)> {
        self.breakers.read().clone()
    }
}
