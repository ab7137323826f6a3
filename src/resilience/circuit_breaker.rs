//! A circuit breaker with resilience4j's semantics, for calls to storage, search and Kafka.
//!
//! Owns: the breaker state machine and its count-based sliding window. Must never: block (one
//! short uncontended lock per call) or sleep; waiting in `Open` is measured, not slept.
//!
//! Rules (resilience4j, count-based window):
//! - `Closed`: calls pass. Outcomes fill a window of the last `window_size` calls. Once at least
//!   `minimum_calls` are recorded, a failure rate ≥ `failure_rate_threshold` or a slow-call rate
//!   (calls slower than `slow_call_duration`) ≥ `slow_call_rate_threshold` opens the breaker.
//! - `Open`: calls are rejected (`CallNotPermitted`; the fallback runs) until `wait_in_open` has
//!   passed; the next call attempt moves to `HalfOpen`.
//! - `HalfOpen`: only `permitted_calls_in_half_open` calls pass. When all of them have completed,
//!   their failure and slow rates decide: at or above a threshold → `Open` again, below →
//!   `Closed` with an empty window. Further calls are rejected meanwhile.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::telemetry::{self, NameLabels};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerConfig {
    /// Percentage (0-100] of failed calls in the window that opens the breaker.
    pub failure_rate_threshold: f64,
    /// Percentage (0-100] of slow calls in the window that opens the breaker.
    pub slow_call_rate_threshold: f64,
    /// A call slower than this counts as slow (whether it succeeded or not).
    #[serde(with = "humantime_serde")]
    pub slow_call_duration: Duration,
    /// How many recent calls the window holds.
    pub window_size: usize,
    /// Rates are not evaluated before this many calls are in the window.
    pub minimum_calls: usize,
    /// How long the breaker stays open before letting trial calls through.
    #[serde(with = "humantime_serde")]
    pub wait_in_open: Duration,
    /// Trial calls allowed in half-open.
    pub permitted_calls_in_half_open: usize,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 100.0,
            slow_call_duration: Duration::from_secs(2),
            window_size: 100,
            minimum_calls: 10,
            wait_in_open: Duration::from_secs(30),
            permitted_calls_in_half_open: 5,
        }
    }
}

impl CircuitBreakerConfig {
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        let rate_ok = |rate: f64| rate > 0.0 && rate <= 100.0;
        if !rate_ok(self.failure_rate_threshold) || !rate_ok(self.slow_call_rate_threshold) {
            return Err(format!("{prefix}: rate thresholds must be in (0, 100]"));
        }
        if self.window_size == 0 || self.minimum_calls == 0 || self.permitted_calls_in_half_open == 0 {
            return Err(format!(
                "{prefix}: window_size, minimum_calls and permitted_calls_in_half_open must be at least 1"
            ));
        }
        Ok(())
    }
}

/// Where the breaker is. The metric `rampart_circuit_state{name}` exports it as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    Closed,
    HalfOpen,
    Open,
}

impl CircuitState {
    fn metric_value(self) -> i64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::HalfOpen => 1,
            CircuitState::Open => 2,
        }
    }
}

/// The breaker refused the call; retry after `retry_after` at the earliest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circuit {name} is open; calls are not permitted for {retry_after:?}")]
pub struct CallNotPermitted {
    pub name: String,
    pub retry_after: Duration,
}

/// What a guarded call ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

#[derive(Debug, Clone, Copy)]
struct Recorded {
    failed: bool,
    slow: bool,
}

/// The last `capacity` outcomes with running totals.
#[derive(Debug)]
struct Window {
    capacity: usize,
    outcomes: VecDeque<Recorded>,
    failures: usize,
    slow: usize,
}

impl Window {
    fn new(capacity: usize) -> Self {
        Self { capacity, outcomes: VecDeque::with_capacity(capacity), failures: 0, slow: 0 }
    }

    fn push(&mut self, recorded: Recorded) {
        if self.outcomes.len() == self.capacity {
            if let Some(old) = self.outcomes.pop_front() {
                self.failures -= usize::from(old.failed);
                self.slow -= usize::from(old.slow);
            }
        }
        self.failures += usize::from(recorded.failed);
        self.slow += usize::from(recorded.slow);
        self.outcomes.push_back(recorded);
    }

    /// (failure %, slow %) of what is in the window.
    fn rates(&self) -> (f64, f64) {
        let n = self.outcomes.len().max(1) as f64;
        (self.failures as f64 * 100.0 / n, self.slow as f64 * 100.0 / n)
    }

    fn len(&self) -> usize {
        self.outcomes.len()
    }
}

#[derive(Debug)]
enum Inner {
    Closed { window: Window },
    Open { since: Instant },
    HalfOpen { permitted: usize, window: Window },
}

/// A named circuit breaker. Cheap to share (`Arc`); every method takes one short lock.
#[derive(Debug)]
pub struct CircuitBreaker {
    name: String,
    config: CircuitBreakerConfig,
    inner: Mutex<Inner>,
}

/// Permission for one call; report how it went with [`CircuitBreaker::record`].
#[derive(Debug)]
#[must_use = "report the call's outcome, or the breaker cannot learn from it"]
pub struct Permit {
    /// When the call started; a call outlived by a state change is recorded into the current
    /// state's window all the same (resilience4j does likewise).
    started: Instant,
}

impl CircuitBreaker {
    pub fn new(name: impl Into<String>, config: CircuitBreakerConfig) -> Arc<Self> {
        let name = name.into();
        let breaker =
            Self { inner: Mutex::new(Inner::Closed { window: Window::new(config.window_size) }), name, config };
        breaker.export(CircuitState::Closed);
        Arc::new(breaker)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn state(&self) -> CircuitState {
        match &*self.inner.lock() {
            Inner::Closed { .. } => CircuitState::Closed,
            Inner::Open { .. } => CircuitState::Open,
            Inner::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// Asks to make a call now.
    pub fn try_acquire(&self) -> Result<Permit, CallNotPermitted> {
        self.try_acquire_at(Instant::now())
    }

    /// Reports a call's outcome now.
    pub fn record(&self, permit: Permit, outcome: Outcome) {
        self.record_at(permit, outcome, Instant::now());
    }

    /// Runs `call` through the breaker: rejected calls and failures are answered by `fallback`.
    /// `is_failure` decides which errors count against the circuit (e.g. not a 404).
    pub async fn call<T, E, Fut>(
        &self,
        call: impl FnOnce() -> Fut,
        is_failure: impl Fn(&E) -> bool,
        fallback: impl FnOnce(Fallback<E>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let permit = match self.try_acquire() {
            Ok(permit) => permit,
            Err(rejected) => return fallback(Fallback::NotPermitted(rejected)),
        };
        match call().await {
            Ok(value) => {
                self.record(permit, Outcome::Success);
                Ok(value)
            }
            Err(error) => {
                let outcome = if is_failure(&error) { Outcome::Failure } else { Outcome::Success };
                self.record(permit, outcome);
                fallback(Fallback::Failed(error))
            }
        }
    }

    fn try_acquire_at(&self, now: Instant) -> Result<Permit, CallNotPermitted> {
        let mut inner = self.inner.lock();
        if let Inner::Open { since } = &*inner {
            let waited = now.saturating_duration_since(*since);
            if waited < self.config.wait_in_open {
                return Err(CallNotPermitted {
                    name: self.name.clone(),
                    retry_after: self.config.wait_in_open - waited,
                });
            }
            *inner = Inner::HalfOpen { permitted: 0, window: Window::new(self.config.permitted_calls_in_half_open) };
            self.transition(CircuitState::HalfOpen);
        }
        match &mut *inner {
            Inner::Closed { .. } => Ok(Permit { started: now }),
            Inner::HalfOpen { permitted, .. } if *permitted < self.config.permitted_calls_in_half_open => {
                *permitted += 1;
                Ok(Permit { started: now })
            }
            // Half-open with every trial call out, or (unreachable) still open.
            _ => Err(CallNotPermitted { name: self.name.clone(), retry_after: Duration::ZERO }),
        }
    }

    fn record_at(&self, permit: Permit, outcome: Outcome, now: Instant) {
        let recorded = Recorded {
            failed: outcome == Outcome::Failure,
            slow: now.saturating_duration_since(permit.started) >= self.config.slow_call_duration,
        };
        let mut inner = self.inner.lock();
        let next = match &mut *inner {
            Inner::Closed { window } => {
                window.push(recorded);
                (window.len() >= self.config.minimum_calls && self.exceeds(window)).then_some(CircuitState::Open)
            }
            Inner::HalfOpen { window, .. } => {
                window.push(recorded);
                (window.len() >= self.config.permitted_calls_in_half_open).then(|| {
                    if self.exceeds(window) {
                        CircuitState::Open
                    } else {
                        CircuitState::Closed
                    }
                })
            }
            // A call permitted before the breaker opened: it changes nothing now.
            Inner::Open { .. } => None,
        };
        match next {
            Some(CircuitState::Open) => *inner = Inner::Open { since: now },
            Some(CircuitState::Closed) => *inner = Inner::Closed { window: Window::new(self.config.window_size) },
            _ => return,
        }
        drop(inner);
        if let Some(state) = next {
            self.transition(state);
        }
    }

    fn exceeds(&self, window: &Window) -> bool {
        let (failure_rate, slow_rate) = window.rates();
        failure_rate >= self.config.failure_rate_threshold || slow_rate >= self.config.slow_call_rate_threshold
    }

    fn transition(&self, state: CircuitState) {
        tracing::warn!(circuit = %self.name, state = ?state, "circuit breaker changed state");
        self.export(state);
    }

    fn export(&self, state: CircuitState) {
        telemetry::metrics()
            .circuit_state
            .get_or_create(&NameLabels { name: self.name.clone() })
            .set(state.metric_value());
    }
}

/// Why the fallback runs.
#[derive(Debug)]
pub enum Fallback<E> {
    NotPermitted(CallNotPermitted),
    Failed(E),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CircuitBreakerConfig {
        CircuitBreakerConfig {
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 50.0,
            slow_call_duration: Duration::from_millis(100),
            window_size: 10,
            minimum_calls: 4,
            wait_in_open: Duration::from_secs(5),
            permitted_calls_in_half_open: 2,
        }
    }

    /// Makes one call at `at` lasting `took`, reporting `outcome`.
    fn call(breaker: &CircuitBreaker, at: Instant, took: Duration, outcome: Outcome) -> Result<(), CallNotPermitted> {
        let permit = breaker.try_acquire_at(at)?;
        breaker.record_at(permit, outcome, at + took);
        Ok(())
    }

    const FAST: Duration = Duration::from_millis(1);

    #[test]
    fn stays_closed_below_minimum_calls_even_if_all_fail() {
        let breaker = CircuitBreaker::new("t-min", config());
        let t = Instant::now();
        for _ in 0..3 {
            call(&breaker, t, FAST, Outcome::Failure).unwrap();
        }
        assert_eq!(breaker.state(), CircuitState::Closed);
        call(&breaker, t, FAST, Outcome::Failure).unwrap();
        assert_eq!(breaker.state(), CircuitState::Open, "the 4th call reaches minimum_calls");
    }

    #[test]
    fn opens_at_the_failure_rate_threshold_not_below() {
        let breaker = CircuitBreaker::new("t-rate", config());
        let t = Instant::now();
        for outcome in [Outcome::Success, Outcome::Success, Outcome::Success, Outcome::Failure] {
            call(&breaker, t, FAST, outcome).unwrap();
        }
        assert_eq!(breaker.state(), CircuitState::Closed, "25% < 50%");
        call(&breaker, t, FAST, Outcome::Failure).unwrap();
        assert_eq!(breaker.state(), CircuitState::Closed, "40% < 50%");
        call(&breaker, t, FAST, Outcome::Failure).unwrap();
        assert_eq!(breaker.state(), CircuitState::Open, "3 of 6 = 50% ≥ 50%");
    }

    #[test]
    fn opens_on_slow_calls_even_when_they_succeed() {
        let breaker = CircuitBreaker::new("t-slow", config());
        let t = Instant::now();
        let slow = Duration::from_millis(150);
        for took in [FAST, FAST, slow, slow] {
            call(&breaker, t, took, Outcome::Success).unwrap();
        }
        assert_eq!(breaker.state(), CircuitState::Open);
    }

    #[test]
    fn the_window_forgets_calls_older_than_its_size() {
        let breaker = CircuitBreaker::new("t-window", CircuitBreakerConfig { minimum_calls: 10, ..config() });
        let t = Instant::now();
        for _ in 0..4 {
            call(&breaker, t, FAST, Outcome::Failure).unwrap();
        }
        for _ in 0..10 {
            call(&breaker, t, FAST, Outcome::Success).unwrap();
        }
        // The failures slid out; 4 more failures are 40% of the window.
        for _ in 0..4 {
            call(&breaker, t, FAST, Outcome::Failure).unwrap();
        }
        assert_eq!(breaker.state(), CircuitState::Closed);
        call(&breaker, t, FAST, Outcome::Failure).unwrap();
        assert_eq!(breaker.state(), CircuitState::Open, "5 of the last 10");
    }

    /// A breaker that just opened, and the instant it opened.
    fn opened(name: &str) -> (Arc<CircuitBreaker>, Instant) {
        let breaker = CircuitBreaker::new(name, config());
        let t = Instant::now();
        for _ in 0..4 {
            call(&breaker, t, FAST, Outcome::Failure).unwrap();
        }
        assert_eq!(breaker.state(), CircuitState::Open);
        // It opened when the last failing call completed.
        (breaker, t + FAST)
    }

    #[test]
    fn open_rejects_until_the_wait_has_passed_then_half_opens() {
        let (breaker, t) = opened("t-open");
        let rejected = breaker.try_acquire_at(t + Duration::from_secs(2)).unwrap_err();
        assert_eq!(rejected.retry_after, Duration::from_secs(3));
        assert_eq!(breaker.state(), CircuitState::Open);
        let _trial = breaker.try_acquire_at(t + Duration::from_secs(5)).unwrap();
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
    }

    #[test]
    fn half_open_permits_only_the_configured_trial_calls() {
        let (breaker, t) = opened("t-trials");
        let later = t + Duration::from_secs(5);
        let first = breaker.try_acquire_at(later).unwrap();
        let second = breaker.try_acquire_at(later).unwrap();
        assert!(breaker.try_acquire_at(later).is_err(), "third trial call rejected");
        breaker.record_at(first, Outcome::Success, later);
        assert_eq!(breaker.state(), CircuitState::HalfOpen, "decided only when all trials completed");
        breaker.record_at(second, Outcome::Success, later);
        assert_eq!(breaker.state(), CircuitState::Closed);
    }

    #[test]
    fn half_open_reopens_when_trials_fail() {
        let (breaker, t) = opened("t-reopen");
        let later = t + Duration::from_secs(5);
        call(&breaker, later, FAST, Outcome::Success).unwrap();
        call(&breaker, later, FAST, Outcome::Failure).unwrap();
        assert_eq!(breaker.state(), CircuitState::Open, "1 of 2 = 50% ≥ 50%");
        assert!(breaker.try_acquire_at(later + Duration::from_secs(1)).is_err(), "a fresh wait started");
    }

    #[test]
    fn closing_starts_with_an_empty_window() {
        let (breaker, t) = opened("t-fresh");
        let later = t + Duration::from_secs(5);
        call(&breaker, later, FAST, Outcome::Success).unwrap();
        call(&breaker, later, FAST, Outcome::Success).unwrap();
        assert_eq!(breaker.state(), CircuitState::Closed);
        for _ in 0..3 {
            call(&breaker, later, FAST, Outcome::Failure).unwrap();
        }
        assert_eq!(breaker.state(), CircuitState::Closed, "below minimum_calls again");
    }

    #[test]
    fn state_is_exported_as_a_metric() {
        let (breaker, _) = opened("t-metric");
        let text = telemetry::metrics().render();
        assert!(text.contains("rampart_circuit_state{name=\"t-metric\"} 2"), "{text}");
        drop(breaker);
    }

    #[actix_rt::test]
    async fn call_runs_the_fallback_for_failures_and_rejections() {
        let breaker = CircuitBreaker::new("t-call", CircuitBreakerConfig { minimum_calls: 1, ..config() });
        let failing = breaker
            .call(
                || async { Err::<u32, &str>("down") },
                |_| true,
                |why| match why {
                    Fallback::Failed(error) => Err(error),
                    Fallback::NotPermitted(_) => Ok(0),
                },
            )
            .await;
        assert_eq!(failing, Err("down"));
        assert_eq!(breaker.state(), CircuitState::Open);
        let answered = breaker
            .call(
                || async { Ok::<u32, &str>(7) },
                |_| true,
                |why| match why {
                    Fallback::NotPermitted(_) => Ok(42),
                    Fallback::Failed(error) => Err(error),
                },
            )
            .await;
        assert_eq!(answered, Ok(42), "rejected while open: the fallback answered");
        // Errors the caller does not count (e.g. not found) do not open a breaker.
        let lenient = CircuitBreaker::new("t-lenient", CircuitBreakerConfig { minimum_calls: 1, ..config() });
        let _ = lenient.call(|| async { Err::<u32, &str>("not found") }, |_| false, |_| Ok(0)).await;
        assert_eq!(lenient.state(), CircuitState::Closed);
    }
}
