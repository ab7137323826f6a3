//! `Outbox`: the frames waiting to be written to one client, bounded in bytes.
//!
//! Owns: each connection's queue of outbound frames and the process-wide `OutboxBudget` they all
//! draw from. Producers (sessions, peers, the delivery hub, the pipeline's acks, the socket's own
//! reader) never wait: a frame that would take a connection over `ws.outbound_bytes` closes it
//! as too slow (1008), and one that would take the process over `ws.outbound_total_bytes` first
//! cuts the connections holding the most (the largest queues go first). A cut drops the
//! connection's queued frames at once, so memory comes back even while the client reads nothing;
//! what it never confirmed stays pending in storage and comes again when it reconnects. Only
//! paced producers (backlog replay, catch-up) wait for room; they fill at most half of a
//! connection's budget (and at most 256 KiB) and never trip the limit.
//!
//! Must never: block a producer, or hold more than the budgets (plus one frame in flight per
//! connection) in memory.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// One frame to write to a client.
#[derive(Debug)]
pub enum Outbound {
    Text(String),
    Ping,
    Pong(bytes::Bytes),
    /// Written last: the stream ends after it.
    Close(u16, String),
}

impl Outbound {
    /// What the frame costs while queued: its payload plus its share of the queue's own memory.
    fn cost(&self) -> usize {
        FRAME_OVERHEAD
            + match self {
                Outbound::Text(text) => text.len(),
                Outbound::Pong(payload) => payload.len(),
                Outbound::Close(_, reason) => reason.len(),
                Outbound::Ping => 0,
            }
    }
}

/// Bytes a queued frame costs beyond its payload (the queue slot, the string's header).
const FRAME_OVERHEAD: usize = 64;
/// Most bytes paced producers (replays) keep in one outbox: a replay needs only enough to keep
/// the client busy, and fifty replaying clients must not cost fifty budgets.
const PACED_SHARE_MAX: usize = 256 * 1024;
/// Longest a paced producer waits for room before looking again (a missed wake-up's cost).
const ROOM_RECHECK: Duration = Duration::from_millis(250);

const OPEN: u8 = 0;
/// A close frame is queued after the frames before it; nothing more is taken.
const CLOSING: u8 = 1;
/// Cut: the queue was dropped, only a close frame remains, and the writer gives up on a client
/// that does not take it.
const CUT: u8 = 2;

/// What a paced producer's offer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paced {
    Queued,
    /// No room within the connection's (or the process's) budget: wait and offer again.
    Full,
    Closed,
}

/// The process-wide budget every outbox draws from (`ws.outbound_total_bytes`), and the
/// per-connection one (`ws.outbound_bytes`). Created once by the application.
pub struct OutboxBudget {
    per_connection: usize,
    limit: usize,
    queued: AtomicUsize,
    /// Every live outbox, for cutting the largest when the process is over its budget.
    members: Mutex<HashMap<u64, Weak<Shared>>>,
    next_id: AtomicU64,
}

impl OutboxBudget {
    pub fn new(per_connection: usize, limit: usize) -> Arc<Self> {
        crate::telemetry::metrics().ws_outbound_budget_bytes.set(limit as i64);
        Arc::new(Self {
            per_connection,
            limit,
            queued: AtomicUsize::new(0),
            members: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        })
    }

    /// A new connection's outbox and its writer's end.
    pub fn outbox(self: &Arc<Self>) -> (Outbox, OutboxReceiver) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            id,
            budget: self.clone(),
            queue: Mutex::new(VecDeque::new()),
            bytes: AtomicUsize::new(0),
            frames: AtomicUsize::new(0),
            state: AtomicU8::new(OPEN),
            ready: Notify::new(),
            drained: Notify::new(),
            cut: Notify::new(),
            closed: Notify::new(),
        });
        self.members.lock().insert(id, Arc::downgrade(&shared));
        (Outbox { shared: shared.clone() }, OutboxReceiver { shared })
    }

    /// Bytes queued in every outbox.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// The per-connection budget (`ws.outbound_bytes`).
    pub fn per_connection(&self) -> usize {
        self.per_connection
    }

    /// Counts `bytes` more. Called under the queue's lock before the frame is queued, so the
    /// writer's `sub` for that frame can never come first (the total never goes below zero).
    fn add(&self, bytes: usize) {
        let total = self.queued.fetch_add(bytes, Ordering::AcqRel).saturating_add(bytes);
        crate::telemetry::metrics().ws_outbound_bytes.set(total as i64);
    }

    fn sub(&self, bytes: usize) {
        let total = self.queued.fetch_sub(bytes, Ordering::AcqRel).saturating_sub(bytes);
        crate::telemetry::metrics().ws_outbound_bytes.set(total as i64);
    }

    /// Cuts the connections holding the most until `needed` more bytes fit in the budget.
    fn reclaim(&self, needed: usize) {
        let mut largest: Vec<(usize, Arc<Shared>)> = self
            .members
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .map(|shared| (shared.bytes.load(Ordering::Acquire), shared))
            .filter(|(bytes, _)| *bytes > 0)
            .collect();
        largest.sort_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
        for (_, shared) in largest {
            if self.queued().saturating_add(needed) <= self.limit {
                return;
            }
            crate::telemetry::metrics().ws_outbox_reclaimed.inc();
            shared.cut(1008, "client too slow: the server's outbound memory is full");
        }
    }
}

struct Shared {
    id: u64,
    budget: Arc<OutboxBudget>,
    /// Frames with their cost.
    queue: Mutex<VecDeque<(Outbound, usize)>>,
    bytes: AtomicUsize,
    frames: AtomicUsize,
    state: AtomicU8,
    /// A frame was queued, or the outbox closed (the writer).
    ready: Notify,
    /// The writer took a frame (paced producers waiting for room).
    drained: Notify,
    /// The outbox was cut (a writer stuck on a client that does not read gives up).
    cut: Notify,
    /// The outbox stopped taking frames (closing or cut).
    closed: Notify,
}

impl Shared {
    fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    /// Drops every queued frame and queues `Close(code)` alone.
    fn cut(&self, code: u16, reason: &str) {
        let dropped = {
            let mut queue = self.queue.lock();
            if self.state() == CUT {
                return;
            }
            self.state.store(CUT, Ordering::Release);
            let dropped: usize = queue.drain(..).map(|(_, cost)| cost).sum();
            self.bytes.store(0, Ordering::Release);
            self.frames.store(1, Ordering::Release);
            queue.push_back((Outbound::Close(code, reason.to_owned()), 0));
            dropped
        };
        self.budget.sub(dropped);
        self.ready.notify_one();
        self.drained.notify_waiters();
        self.cut.notify_waiters();
        self.closed.notify_waiters();
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.budget.members.lock().remove(&self.id);
        let left = self.bytes.load(Ordering::Acquire);
        if left > 0 {
            self.budget.sub(left);
        }
    }
}

/// The producers' end of one connection's queue. Dropping it closes the connection (1001).
pub struct Outbox {
    shared: Arc<Shared>,
}

impl Outbox {
    /// Queues a frame; `false` when the connection is closed, or was just closed for being too
    /// far behind (its budget, or the process's: 1008).
    pub fn push(&self, frame: Outbound) -> bool {
        let shared = &self.shared;
        let cost = frame.cost();
        let budget = &shared.budget;
        if shared.state() != OPEN {
            return false;
        }
        if shared.bytes.load(Ordering::Acquire).saturating_add(cost) > budget.per_connection {
            crate::telemetry::metrics().ws_slow_clients.inc();
            shared.cut(1008, "client too slow: outbound queue full");
            return false;
        }
        if budget.queued().saturating_add(cost) > budget.limit {
            budget.reclaim(cost);
        }
        self.enqueue(frame, cost)
    }

    /// A paced producer's frame (backlog replay, catch-up): queued only while the connection
    /// holds less than its paced share (half its budget, at most `PACED_SHARE_MAX`: live traffic
    /// keeps the rest) and the process is within its own budget; never closes the connection.
    pub fn offer(&self, frame: Outbound) -> Paced {
        let shared = &self.shared;
        let cost = frame.cost();
        let budget = &shared.budget;
        if shared.state() != OPEN {
            return Paced::Closed;
        }
        let over_share = shared.bytes.load(Ordering::Acquire).saturating_add(cost) > self.paced_share();
        if over_share || budget.queued().saturating_add(cost) > budget.limit {
            return Paced::Full;
        }
        if self.enqueue(frame, cost) {
            Paced::Queued
        } else {
            Paced::Closed
        }
    }

    fn enqueue(&self, frame: Outbound, cost: usize) -> bool {
        let shared = &self.shared;
        {
            let mut queue = shared.queue.lock();
            if shared.state() != OPEN {
                return false;
            }
            shared.budget.add(cost);
            shared.bytes.fetch_add(cost, Ordering::AcqRel);
            shared.frames.fetch_add(1, Ordering::AcqRel);
            queue.push_back((frame, cost));
        }
        shared.ready.notify_one();
        true
    }

    pub fn text(&self, text: String) -> bool {
        self.push(Outbound::Text(text))
    }

    /// Queues a close frame after what is queued (once); nothing is queued after it.
    pub fn close(&self, code: u16, reason: &str) {
        let shared = &self.shared;
        {
            let mut queue = shared.queue.lock();
            if shared.state() != OPEN {
                return;
            }
            shared.state.store(CLOSING, Ordering::Release);
            queue.push_back((Outbound::Close(code, reason.to_owned()), 0));
            shared.frames.fetch_add(1, Ordering::AcqRel);
        }
        shared.ready.notify_one();
        shared.drained.notify_waiters();
        shared.closed.notify_waiters();
    }

    /// Drops what is queued and closes at once (a client that must not wait behind its backlog).
    pub fn cut(&self, code: u16, reason: &str) {
        self.shared.cut(code, reason);
    }

    pub fn is_closed(&self) -> bool {
        self.shared.state() != OPEN
    }

    /// Bytes queued for the socket writer.
    pub fn queued_bytes(&self) -> usize {
        self.shared.bytes.load(Ordering::Acquire)
    }

    /// The per-connection budget.
    pub fn budget(&self) -> usize {
        self.shared.budget.per_connection
    }

    /// What paced producers fill a connection's outbox to, at most.
    pub fn paced_share(&self) -> usize {
        (self.shared.budget.per_connection / 2).min(PACED_SHARE_MAX)
    }

    /// Waits until at most `level` bytes are queued; `false` if the connection closed first.
    pub async fn wait_for_room(&self, level: usize) -> bool {
        let shared = &self.shared;
        loop {
            let drained = shared.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.is_closed() {
                return false;
            }
            if self.queued_bytes() <= level {
                return true;
            }
            let _ = tokio::time::timeout(ROOM_RECHECK, drained).await;
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.close(1001, "going away");
    }
}

/// The socket writer's end of an `Outbox`. Dropping it (the socket is gone) drops what is queued.
pub struct OutboxReceiver {
    shared: Arc<Shared>,
}

impl OutboxReceiver {
    /// The next frame, waiting for one; `None` once the close frame was taken.
    pub async fn next(&mut self) -> Option<Outbound> {
        let shared = self.shared.clone();
        loop {
            let ready = shared.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            if let Some(frame) = self.try_next() {
                return Some(frame);
            }
            if shared.state() != OPEN && shared.frames.load(Ordering::Acquire) == 0 {
                return None;
            }
            ready.await;
        }
    }

    /// The next frame if one is queued.
    pub fn try_next(&mut self) -> Option<Outbound> {
        let shared = &self.shared;
        let (frame, cost) = {
            let mut queue = shared.queue.lock();
            let (frame, cost) = queue.pop_front()?;
            shared.bytes.fetch_sub(cost, Ordering::AcqRel);
            shared.frames.fetch_sub(1, Ordering::AcqRel);
            (frame, cost)
        };
        if cost > 0 {
            shared.budget.sub(cost);
        }
        shared.drained.notify_waiters();
        Some(frame)
    }

    /// Resolves once the outbox is cut (the writer stops waiting on a client that reads nothing).
    pub async fn cut(&self) {
        let shared = &self.shared;
        loop {
            let cut = shared.cut.notified();
            tokio::pin!(cut);
            cut.as_mut().enable();
            if shared.state() == CUT {
                return;
            }
            cut.await;
        }
    }

    /// Resolves once the outbox stopped taking frames (closing or cut).
    pub async fn closing(&self) {
        let shared = &self.shared;
        loop {
            let closed = shared.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if shared.state() != OPEN {
                return;
            }
            closed.await;
        }
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        // Nobody writes to this client any more: free what waits, refuse what comes.
        self.shared.cut(1001, "going away");
        let left = {
            let mut queue = self.shared.queue.lock();
            queue.clear();
            self.shared.frames.store(0, Ordering::Release);
            self.shared.bytes.swap(0, Ordering::AcqRel)
        };
        if left > 0 {
            self.shared.budget.sub(left);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: usize) -> Outbound {
        Outbound::Text("x".repeat(bytes))
    }

    #[test]
    fn a_connection_over_its_budget_is_cut_and_its_memory_freed() {
        let budget = OutboxBudget::new(10_000, 1 << 30);
        let (outbox, mut receiver) = budget.outbox();
        assert!(outbox.push(text(4_000)));
        assert!(outbox.push(text(4_000)));
        assert_eq!(budget.queued(), 8_000 + 2 * FRAME_OVERHEAD);
        assert!(!outbox.push(text(4_000)), "over 10,000 bytes: cut");
        assert_eq!(budget.queued(), 0, "the queue was dropped at once");
        assert!(matches!(receiver.try_next(), Some(Outbound::Close(1008, _))));
        assert!(receiver.try_next().is_none());
        assert!(!outbox.push(text(1)), "nothing after the cut");
    }

    #[test]
    fn the_process_budget_cuts_the_largest_queues_first() {
        let budget = OutboxBudget::new(100_000, 50_000);
        let (slow, _slow_writer) = budget.outbox();
        let (busy, _busy_writer) = budget.outbox();
        let (fresh, mut fresh_writer) = budget.outbox();
        assert!(slow.push(text(30_000)));
        assert!(busy.push(text(15_000)));
        // 45 KB queued: 10 KB more does not fit in 50 KB; the largest queue (slow) goes.
        assert!(fresh.push(text(10_000)));
        assert!(slow.is_closed() && !busy.is_closed() && !fresh.is_closed());
        assert!(budget.queued() <= 50_000);
        assert!(matches!(fresh_writer.try_next(), Some(Outbound::Text(_))));
    }

    #[test]
    fn paced_offers_never_cut_and_say_when_full() {
        let budget = OutboxBudget::new(10_000, 1 << 30);
        let (outbox, mut receiver) = budget.outbox();
        assert_eq!(outbox.offer(text(3_000)), Paced::Queued);
        assert_eq!(outbox.offer(text(3_000)), Paced::Full, "paced offers fill half the budget");
        assert!(outbox.push(text(4_000)), "live traffic has the other half");
        assert!(!outbox.is_closed());
        receiver.try_next();
        receiver.try_next();
        assert_eq!(outbox.offer(text(3_000)), Paced::Queued);
    }

    #[test]
    fn a_graceful_close_keeps_what_is_queued_and_a_gone_writer_frees_it() {
        let budget = OutboxBudget::new(10_000, 1 << 30);
        let (outbox, mut receiver) = budget.outbox();
        assert!(outbox.push(text(100)));
        outbox.close(1001, "bye");
        assert!(!outbox.push(text(100)));
        assert!(matches!(receiver.try_next(), Some(Outbound::Text(_))));
        assert!(matches!(receiver.try_next(), Some(Outbound::Close(1001, _))));
        let (other, other_writer) = budget.outbox();
        assert!(other.push(text(500)));
        drop(other_writer);
        assert_eq!(budget.queued(), 0);
        assert!(!other.push(text(1)));
    }
}
