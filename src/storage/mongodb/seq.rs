//! `SeqClock`: message seqs for a store shared by several processes without a shared counter.
//!
//! Layout of a seq (63 bits, always positive): milliseconds since 2025-01-01 (41 bits, enough
//! until 2094) · node (10 bits, random per process) · counter (12 bits, per millisecond). Seqs
//! of one process strictly increase; seqs of two processes order by time to the millisecond and
//! differ unless both drew the same node and stamped the same millisecond and counter.

use parking_lot::Mutex;

/// 2025-01-01T00:00:00Z in Unix milliseconds.
const EPOCH_MS: i64 = 1_735_689_600_000;
const NODE_BITS: u32 = 10;
const COUNTER_BITS: u32 = 12;
const TIME_SHIFT: u32 = NODE_BITS + COUNTER_BITS;

pub struct SeqClock {
    node: i64,
    /// (millisecond of the last seq, counter within it).
    last: Mutex<(i64, i64)>,
}

impl Default for SeqClock {
    fn default() -> Self {
        Self::new()
    }
}

impl SeqClock {
    pub fn new() -> Self {
        Self::with_node(rand::random::<u16>() as i64 & ((1 << NODE_BITS) - 1))
    }

    fn with_node(node: i64) -> Self {
        Self { node, last: Mutex::new((0, 0)) }
    }

    /// The next seq, stamped now.
    pub fn next(&self) -> i64 {
        self.next_at(crate::storage::now_ms())
    }

    fn next_at(&self, now_ms: i64) -> i64 {
        let mut last = self.last.lock();
        let millis = (now_ms - EPOCH_MS).max(0);
        if millis > last.0 {
            *last = (millis, 0);
        } else {
            // Same millisecond, or the wall clock stepped back: stay monotonic, and borrow the
            // next millisecond once this one's counter is used up.
            last.1 += 1;
            if last.1 >> COUNTER_BITS != 0 {
                *last = (last.0 + 1, 0);
            }
        }
        (last.0 << TIME_SHIFT) | (self.node << COUNTER_BITS) | last.1
    }

    /// The lowest seq any process can stamp at `at_ms` (Unix milliseconds).
    pub fn floor_of(at_ms: i64) -> i64 {
        (at_ms - EPOCH_MS).max(0) << TIME_SHIFT
    }

    /// The Unix milliseconds a seq was stamped at.
    pub fn time_of(seq: i64) -> i64 {
        (seq >> TIME_SHIFT) + EPOCH_MS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_increase_within_a_millisecond_and_across_a_clock_step_back() {
        let clock = SeqClock::with_node(5);
        let now = EPOCH_MS + 1_000;
        let mut previous = 0;
        for _ in 0..10_000 {
            let seq = clock.next_at(now);
            assert!(seq > previous);
            previous = seq;
        }
        let after_step_back = clock.next_at(now - 500);
        assert!(after_step_back > previous);
        assert!(SeqClock::time_of(after_step_back) >= now, "counters borrow forward, never back");
    }

    #[test]
    fn floors_order_seqs_of_every_node_by_time() {
        let (a, b) = (SeqClock::with_node(0), SeqClock::with_node(1023));
        let now = EPOCH_MS + 86_400_000;
        let late_b = b.next_at(now);
        assert!(SeqClock::floor_of(now) <= late_b);
        assert!(a.next_at(now + 1) > late_b);
        assert!(SeqClock::floor_of(now + 1) > late_b);
        assert_eq!(SeqClock::time_of(late_b), now);
        assert!(a.next_at(now + 10) > 0);
    }
}
