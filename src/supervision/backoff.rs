//! Exponential backoff with full jitter between consecutive restarts of one child.
//!
//! Owns: the arithmetic only. The per-child counters live in the supervisor's slot; this module
//! never sleeps and never touches the clock itself (callers pass `now`), so it is unit-testable.

use std::time::{Duration, Instant};

use rand::Rng;
use serde::{Deserialize, Serialize};

/// How long to wait before restarting a child that keeps failing.
///
/// The first failure after a quiet period restarts at once (so an isolated panic costs
/// microseconds, not milliseconds); the n-th consecutive failure waits a uniformly random time in
/// `[0, min(max, base * 2^(n-2))]` ("full jitter"), which spreads restarts of many children that
/// failed together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffPolicy {
    /// Ceiling of the first delayed restart (the second consecutive failure).
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    /// Upper bound of any delay.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// A child that ran this long without failing starts counting from zero again.
    #[serde(with = "humantime_serde")]
    pub reset_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self { base: Duration::from_millis(10), max: Duration::from_secs(5), reset_after: Duration::from_secs(30) }
    }
}

impl BackoffPolicy {
    /// No delay ever: every restart is immediate. Benchmarks and tests of restart latency use it.
    pub const IMMEDIATE: Self = Self { base: Duration::ZERO, max: Duration::ZERO, reset_after: Duration::ZERO };

    /// Ceiling for the `consecutive`-th failure in a row (1-based).
    pub fn ceiling(&self, consecutive: u32) -> Duration {
        if consecutive <= 1 {
            return Duration::ZERO;
        }
        let doublings = (consecutive - 2).min(31);
        self.base.saturating_mul(1u32 << doublings).min(self.max)
    }
}

/// Per-child backoff counters, owned by the supervisor's slot for that child.
#[derive(Debug, Default)]
pub struct BackoffState {
    consecutive: u32,
    last_failure: Option<Instant>,
}

/// The supervisor's choice for one failure: when to restart, and the ceiling it drew from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffDecision {
    pub delay: Duration,
    pub ceiling: Duration,
    pub consecutive: u32,
}

impl BackoffState {
    /// Records a failure at `now` and draws the delay before the restart.
    pub fn next(&mut self, policy: &BackoffPolicy, now: Instant, rng: &mut impl Rng) -> BackoffDecision {
        let quiet = self.last_failure.is_none_or(|last| now.saturating_duration_since(last) >= policy.reset_after);
        self.consecutive = if quiet { 1 } else { self.consecutive.saturating_add(1) };
        self.last_failure = Some(now);
        let ceiling = policy.ceiling(self.consecutive);
        let delay = if ceiling.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_nanos(rng.gen_range(0..=ceiling.as_nanos().min(u64::MAX as u128) as u64))
        };
        BackoffDecision { delay, ceiling, consecutive: self.consecutive }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn policy() -> BackoffPolicy {
        BackoffPolicy {
            base: Duration::from_millis(10),
            max: Duration::from_millis(100),
            reset_after: Duration::from_secs(1),
        }
    }

    #[test]
    fn first_failure_restarts_immediately_then_ceiling_doubles_up_to_max() {
        let policy = policy();
        let mut state = BackoffState::default();
        let mut rng = StdRng::seed_from_u64(7);
        let start = Instant::now();
        let ceilings: Vec<u64> = (0..7)
            .map(|i| {
                let decision = state.next(&policy, start + Duration::from_millis(i), &mut rng);
                assert!(decision.delay <= decision.ceiling);
                decision.ceiling.as_millis() as u64
            })
            .collect();
        assert_eq!(ceilings, vec![0, 10, 20, 40, 80, 100, 100]);
    }

    #[test]
    fn quiet_period_resets_the_count() {
        let policy = policy();
        let mut state = BackoffState::default();
        let mut rng = StdRng::seed_from_u64(1);
        let start = Instant::now();
        state.next(&policy, start, &mut rng);
        assert_eq!(state.next(&policy, start, &mut rng).consecutive, 2);
        let later = start + policy.reset_after;
        let decision = state.next(&policy, later, &mut rng);
        assert_eq!(decision.consecutive, 1);
        assert_eq!(decision.delay, Duration::ZERO);
    }

    #[test]
    fn jitter_spreads_over_the_whole_range() {
        let policy = policy();
        let mut rng = StdRng::seed_from_u64(3);
        let start = Instant::now();
        let delays: Vec<Duration> = (0..200)
            .map(|_| {
                let mut state = BackoffState { consecutive: 4, last_failure: Some(start) };
                state.next(&policy, start, &mut rng).delay
            })
            .collect();
        let ceiling = policy.ceiling(5);
        assert!(delays.iter().all(|d| *d <= ceiling));
        assert!(delays.iter().any(|d| *d < ceiling / 4), "full jitter reaches low values");
        assert!(delays.iter().any(|d| *d > ceiling * 3 / 4), "full jitter reaches high values");
    }

    #[test]
    fn immediate_policy_never_waits() {
        let mut state = BackoffState::default();
        let mut rng = StdRng::seed_from_u64(9);
        let now = Instant::now();
        for _ in 0..10 {
            assert_eq!(state.next(&BackoffPolicy::IMMEDIATE, now, &mut rng).delay, Duration::ZERO);
        }
    }
}
