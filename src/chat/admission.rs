//! Admission control: refuse sends early and cheaply while the pipeline is behind.
//!
//! Owns: the pipeline's in-flight limit. Every send a session or HTTP handler passes on takes a
//! `Ticket` (a slot of the limit) and gives it back when its sender is answered; a send that
//! finds no slot is answered `unavailable` ("overloaded") at once, before it costs the validator,
//! the batch writer or storage anything.
//!
//! The limit adapts to what storage can do now (additive increase, multiplicative decrease,
//! like TCP's congestion window): after every committed batch the batch writer reports how long
//! its oldest message waited since it was taken. Over `pipeline.max_queue_delay` the limit drops
//! to what storage committed in the last budget's worth of time (measured commit rate × budget)
//! or by a fifth, whichever is lower (at most once per `max_queue_delay / 4`, so one slow burst
//! is one signal); under half of it the limit grows by the batch's size. By Little's law an
//! admitted message then waits about limit / commit rate, which the feedback keeps near the
//! budget whatever the disk's speed, and the queue never holds more than the limit.
//!
//! What was admitted before the limit came down can still wait longer: while more than one
//! batch is in flight, a message that has waited twice the budget when its batch is formed is
//! answered `unavailable` instead of being stored late (`expired`). So an `ack` never comes later than about twice the budget plus one
//! commit, and a sender who hears `unavailable` knows the message was not stored.
//!
//! Why not a fixed queue length: the length a latency budget allows depends on how fast storage
//! is right now (a slow disk divides it); why not shed on the oldest message's age alone: that
//! signal arrives a whole budget late, and everything admitted meanwhile (offered rate × budget)
//! waits far longer than the budget (measured: p99 3.9 s with a 500 ms budget at 3× overload).
//!
//! Must never: refuse a message it already admitted (those are answered by the pipeline), block,
//! or leak a slot (a `Ticket` returns it on drop, whatever happened to its submission).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::SendError;

pub struct Admission {
    budget: Duration,
    /// Lowest and highest limit: one batch, and `pipeline.queue_capacity`.
    floor: usize,
    ceiling: usize,
    limit: AtomicUsize,
    in_flight: AtomicUsize,
    /// The latest reported wait of a committed batch's oldest message, in microseconds.
    queue_delay_us: AtomicU64,
    last_decrease: Mutex<Option<Instant>>,
    rate: Mutex<CommitRate>,
}

/// The commit rate, sampled every `RATE_WINDOW` and smoothed.
struct CommitRate {
    since: Instant,
    committed: usize,
    per_second: f64,
}

/// How often the commit rate is sampled.
const RATE_WINDOW: Duration = Duration::from_millis(100);

/// A slot of the in-flight limit, held by an admitted submission until it is answered.
pub struct Ticket(Arc<Admission>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ticket")
    }
}

impl Admission {
    /// `floor`: one full batch (`pipeline.batch_max_messages`); `ceiling`: `queue_capacity`.
    pub fn new(budget: Duration, floor: usize, ceiling: usize) -> Arc<Self> {
        let floor = floor.clamp(1, ceiling.max(1));
        let admission = Arc::new(Self {
            budget,
            floor,
            ceiling: ceiling.max(floor),
            limit: AtomicUsize::new(ceiling.max(floor)),
            in_flight: AtomicUsize::new(0),
            queue_delay_us: AtomicU64::new(0),
            last_decrease: Mutex::new(None),
            rate: Mutex::new(CommitRate { since: Instant::now(), committed: 0, per_second: 0.0 }),
        });
        crate::telemetry::metrics().pipeline_admission_limit.set(admission.limit() as i64);
        admission
    }

    /// A slot for one new send, or its refusal.
    pub fn admit(self: &Arc<Self>) -> Result<Ticket, SendError> {
        let limit = self.limit.load(Ordering::Relaxed);
        let taken = self.in_flight.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |in_flight| {
            (in_flight < limit).then_some(in_flight + 1)
        });
        match taken {
            Ok(_) => Ok(Ticket(self.clone())),
            Err(in_flight) => {
                crate::telemetry::metrics().messages_shed.inc();
                let waited = Duration::from_micros(self.queue_delay_us.load(Ordering::Relaxed));
                Err(SendError::Unavailable(format!(
                    "overloaded: {in_flight} messages are waiting to be stored (the latest waited {} ms; budget {} ms); send it again later",
                    waited.as_millis(),
                    self.budget.as_millis()
                )))
            }
        }
    }

    /// The batch writer's report after a committed batch: its oldest message waited `delay`
    /// since it was taken, and the batch held `size` messages.
    pub fn committed(&self, delay: Duration, size: usize) {
        let rate = {
            let mut rate = self.rate.lock();
            rate.committed += size;
            let elapsed = rate.since.elapsed();
            if elapsed >= RATE_WINDOW {
                let sample = rate.committed as f64 / elapsed.as_secs_f64();
                // Smoothed, so one stalled window (a checkpoint) does not halve the limit.
                rate.per_second = if rate.per_second == 0.0 { sample } else { 0.5 * rate.per_second + 0.5 * sample };
                rate.since = Instant::now();
                rate.committed = 0;
            }
            rate.per_second
        };
        self.queue_delay_us.store(u64::try_from(delay.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
        let metrics = crate::telemetry::metrics();
        metrics.pipeline_queue_delay.set(delay.as_secs_f64());
        metrics.pipeline_in_flight.set(self.in_flight() as i64);
        let limit = self.limit.load(Ordering::Relaxed);
        let next = if delay > self.budget {
            let mut last = self.last_decrease.lock();
            if last.is_some_and(|at| at.elapsed() < self.budget / 4) {
                return;
            }
            *last = Some(Instant::now());
            let sustainable = (rate * self.budget.as_secs_f64()) as usize;
            let decreased = limit - limit / 5;
            (if sustainable > 0 { decreased.min(sustainable) } else { decreased }).max(self.floor)
        } else if delay < self.budget / 2 {
            limit.saturating_add(size).min(self.ceiling)
        } else {
            return;
        };
        if next != limit {
            self.limit.store(next, Ordering::Relaxed);
            metrics.pipeline_admission_limit.set(next as i64);
            if next < limit && next == self.floor {
                tracing::warn!(
                    waited_ms = delay.as_millis() as u64,
                    limit = next,
                    "the pipeline is overloaded: admitting at most one batch at a time"
                );
            }
        }
    }

    /// Whether a message that waited `waited` for its batch is too late to be stored: only
    /// while more than one batch is in flight (overload). A light load behind a disk that
    /// stalls for a moment waits for it (bounded by `storage_timeout`) rather than being refused.
    pub fn expired(&self, waited: Duration) -> bool {
        waited > self.budget * 2 && self.in_flight() > self.floor
    }

    /// The answer to an expired message.
    pub fn expired_error(&self, waited: Duration) -> SendError {
        crate::telemetry::metrics().messages_shed.inc();
        SendError::Unavailable(format!(
            "overloaded: not stored after waiting {} ms (twice the {} ms budget); send it again later",
            waited.as_millis(),
            self.budget.as_millis()
        ))
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_and_a_dropped_ticket_frees_its_slot() {
        let admission = Admission::new(Duration::from_millis(100), 2, 3);
        let tickets: Vec<Ticket> = (0..3).map(|_| admission.admit().unwrap()).collect();
        let refused = admission.admit().unwrap_err();
        assert_eq!(refused.code(), "unavailable");
        assert!(refused.to_string().contains("overloaded"), "{refused}");
        drop(tickets);
        assert_eq!(admission.in_flight(), 0);
        assert!(admission.admit().is_ok());
    }

    #[test]
    fn the_limit_shrinks_past_the_budget_and_grows_back_under_half_of_it() {
        let admission = Admission::new(Duration::from_millis(100), 10, 1000);
        admission.committed(Duration::from_millis(150), 10);
        assert_eq!(admission.limit(), 800);
        // At most one decrease per budget / 4: a burst of slow batches is one signal.
        admission.committed(Duration::from_millis(150), 10);
        assert_eq!(admission.limit(), 800);
        std::thread::sleep(Duration::from_millis(30)); // past budget / 4 (a unit test of a clock rule)
        admission.committed(Duration::from_millis(150), 10);
        assert_eq!(admission.limit(), 640);
        // Between half the budget and the budget: hold.
        admission.committed(Duration::from_millis(70), 10);
        assert_eq!(admission.limit(), 640);
        admission.committed(Duration::from_millis(10), 50);
        assert_eq!(admission.limit(), 690);
        for _ in 0..100 {
            admission.committed(Duration::ZERO, 50);
        }
        assert_eq!(admission.limit(), 1000, "never above the ceiling");
    }

    #[test]
    fn past_the_budget_the_limit_drops_to_what_storage_commits_in_a_budget() {
        let admission = Admission::new(Duration::from_millis(100), 10, 100_000);
        // 1,000 messages committed in ~100 ms: ~10,000/s, so ~1,000 fit a 100 ms budget.
        admission.committed(Duration::ZERO, 0);
        std::thread::sleep(Duration::from_millis(100)); // a unit test of a clock rule
        admission.committed(Duration::from_millis(200), 1000);
        let limit = admission.limit();
        assert!((500..=1000).contains(&limit), "{limit}");
    }

    #[test]
    fn only_an_overloaded_pipeline_refuses_late_messages() {
        let admission = Admission::new(Duration::from_millis(100), 2, 100);
        let mut tickets: Vec<Ticket> = (0..2).map(|_| admission.admit().unwrap()).collect();
        assert!(!admission.expired(Duration::from_secs(5)), "one batch in flight: a stall is waited out");
        tickets.push(admission.admit().unwrap());
        assert!(admission.expired(Duration::from_millis(201)));
        assert!(!admission.expired(Duration::from_millis(200)));
    }

    #[test]
    fn never_below_one_batch() {
        let admission = Admission::new(Duration::from_millis(1), 10, 20);
        for _ in 0..50 {
            admission.committed(Duration::from_secs(1), 10);
            std::thread::sleep(Duration::from_millis(1)); // past budget / 4
        }
        assert_eq!(admission.limit(), 10);
    }
}
