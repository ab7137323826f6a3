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

/// Every breaker of the process, for `/ready` (`warn` while one is open) and the admin API.
#[derive(Default)]
pub struct CircuitBreakers {
    breakers: RwLock<Vec<Arc<CircuitBreaker>>>,
}

impl CircuitBreakers {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Creates a breaker and keeps it listed.
    pub fn create(&self, name: impl Into<String>, config: CircuitBreakerConfig) -> Arc<CircuitBreaker> {
        let breaker = CircuitBreaker::new(name, config);
        self.breakers.write().push(breaker.clone());
        breaker
    }

    pub fn all(&self) -> Vec<Arc<CircuitBreaker>> {
        self.breakers.read().clone()
    }
}
