//! Stall detection: a plain OS thread that notices actors that stopped making progress.
//!
//! Two kinds of stall, both against the actor's stall threshold:
//! - a poll of the actor (a handler, a future step, a timer callback) that has not returned: the
//!   actor is blocking its arbiter thread, and every actor and timer on that thread with it;
//! - a mailbox that is not draining: messages are waiting and the actor has dequeued none of
//!   them, e.g. because a `ctx.wait` future (or an `AtomicResponse`) holds the mailbox.
//!
//! Owns: the coarse clock runners stamp polls with (`now_tick`, milliseconds, advanced by this
//! thread so a runner pays one relaxed load instead of a clock read per poll), and the scan.
//! It must be a separate thread: nothing on a blocked arbiter thread could notice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::events::StallKind;
use super::registry::{ActorRecord, ActorStatus, Registry};

/// How often the clock advances.
const TICK_INTERVAL: Duration = Duration::from_millis(10);
/// How often the registry is scanned for stalls.
const SCAN_EVERY_TICKS: u64 = 10;

static CLOCK_BASE: OnceLock<Instant> = OnceLock::new();
/// Milliseconds since `CLOCK_BASE`, plus one (0 means "not busy" in the actor records).
static TICK: AtomicU64 = AtomicU64::new(1);

/// The current coarse time stamp (never 0).
#[inline]
pub(crate) fn now_tick() -> u64 {
    TICK.load(Ordering::Relaxed)
}

fn advance_clock() -> u64 {
    let base = CLOCK_BASE.get_or_init(Instant::now);
    let now = base.elapsed().as_millis() as u64 + 1;
    TICK.fetch_max(now, Ordering::Relaxed).max(now)
}

/// The running watchdog thread. Dropping it stops and joins the thread.
pub struct Watchdog {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    pub fn start(registry: Arc<Registry>) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        advance_clock();
        let thread = std::thread::Builder::new().name("rampart-watchdog".into()).spawn(move || {
            let mut mailboxes = MailboxProgress::default();
            let mut ticks = 0u64;
            while !thread_stop.load(Ordering::Relaxed) {
                std::thread::sleep(TICK_INTERVAL);
                let now = advance_clock();
                ticks += 1;
                if ticks.is_multiple_of(SCAN_EVERY_TICKS) {
                    scan(&registry, &mut mailboxes, now);
                }
            }
        })?;
        Ok(Self { stop, thread: Some(thread) })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Per actor: the dequeue count last seen with a backlog, and since when it has not moved.
#[derive(Default)]
struct MailboxProgress {
    seen: HashMap<String, (u64, u64)>,
}

impl MailboxProgress {
    /// How long `record`'s mailbox has had waiting messages and no dequeue; `None` if it is
    /// draining (or empty).
    fn stuck_for(&mut self, record: &ActorRecord, now: u64) -> Option<Duration> {
        let dispatched = record.dispatched.load(Ordering::Relaxed);
        if record.backlog() == 0 || record.status() != ActorStatus::Running {
            self.seen.remove(&record.path);
            return None;
        }
        let (last_dispatched, since) = self.seen.entry(record.path.clone()).or_insert((dispatched, now));
        if *last_dispatched != dispatched {
            *last_dispatched = dispatched;
            *since = now;
        }
        Some(Duration::from_millis(now.saturating_sub(*since)))
    }
}

fn scan(registry: &Registry, mailboxes: &mut MailboxProgress, now: u64) {
    let records = registry.snapshot();
    for record in &records {
        let busy = record.busy_since.load(Ordering::Relaxed);
        let busy_for = (busy != 0).then(|| Duration::from_millis(now.saturating_sub(busy)));
        let stuck_for = mailboxes.stuck_for(record, now);
        let stall = match (busy_for, stuck_for) {
            (Some(busy_for), _) if busy_for > record.stall_threshold => Some((StallKind::BlockingThread, busy_for)),
            (_, Some(stuck_for)) if stuck_for > record.stall_threshold => {
                Some((StallKind::MailboxNotDraining, stuck_for))
            }
            _ => None,
        };
        match stall {
            Some((kind, stuck_for)) => {
                if !record.stalled.swap(true, Ordering::Relaxed) {
                    record.stalls.fetch_add(1, Ordering::Relaxed);
                    super::events::actor_stalled(&record.path, &record.metric_label, stuck_for, kind);
                }
            }
            None => {
                if record.stalled.swap(false, Ordering::Relaxed) {
                    super::events::actor_recovered_from_stall(&record.path);
                }
            }
        }
    }
    // Forget actors that left the tree.
    if mailboxes.seen.len() > records.len() {
        let live: std::collections::HashSet<&str> = records.iter().map(|r| r.path.as_str()).collect();
        mailboxes.seen.retain(|path, _| live.contains(path.as_str()));
    }
}
