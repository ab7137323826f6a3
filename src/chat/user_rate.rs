//! `UserRate`: a token bucket per user (conversations created per minute).
//!
//! Owns: one bucket per user who spent something recently. Buckets that filled up again are
//! dropped whenever the map grows past `PRUNE_ABOVE`, so memory follows the users active in the
//! last refill period, not every user ever seen. Per process: several instances behind one
//! address each allow the rate.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Buckets kept before full ones are dropped.
const PRUNE_ABOVE: usize = 10_000;

pub struct UserRate {
    per_minute: u32,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl UserRate {
    /// `per_minute` a minute, and as many at once.
    pub fn per_minute(per_minute: u32) -> Self {
        Self { per_minute, buckets: Mutex::new(HashMap::new()) }
    }

    /// Spends one of `user`'s, or says how long until one is back.
    pub fn try_take(&self, user: &str) -> Result<(), Duration> {
        self.try_take_at(user, Instant::now())
    }

    fn try_take_at(&self, user: &str, now: Instant) -> Result<(), Duration> {
        let capacity = f64::from(self.per_minute);
        let per_second = capacity / 60.0;
        let mut buckets = self.buckets.lock();
        if buckets.len() > PRUNE_ABOVE {
            buckets.retain(|_, bucket| {
                bucket.tokens + now.duration_since(bucket.refilled).as_secs_f64() * per_second < capacity
            });
        }
        let bucket = buckets.entry(user.to_owned()).or_insert(Bucket { tokens: capacity, refilled: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.refilled).as_secs_f64() * per_second).min(capacity);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_gets_the_rate_and_a_burst_of_it_and_waits_for_more() {
        let rate = UserRate::per_minute(3);
        let start = Instant::now();
        for _ in 0..3 {
            assert!(rate.try_take_at("alice", start).is_ok());
        }
        let wait = rate.try_take_at("alice", start).unwrap_err();
        assert!((19.0..=20.5).contains(&wait.as_secs_f64()), "{wait:?}");
        assert!(rate.try_take_at("bob", start).is_ok(), "per user");
        assert!(rate.try_take_at("alice", start + Duration::from_secs(21)).is_ok());
    }
}
