//! Stall detection: a plain OS thread that notices actors stuck inside one poll.
//!
//! Owns: the coarse clock runners stamp polls with (`now_tick`, milliseconds, advanced by this
//! thread so a runner pays one relaxed load instead of a clock read per poll), and the scan that
//! flags actors busy or blocked on a `ctx.wait` future for longer than their stall threshold.
//!
//! It must be a separate thread: a handler that blocks its arbiter thread also blocks every
//! actor and timer on that thread, so nothing on it could notice.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::registry::Registry;
use crate::telemetry;

/// How often the clock advances.
const TICK_INTERVAL: Duration = Duration::from_millis(10);
/// How often the registry is scanned for stalls.
const SCAN_EVERY_TICKS: u64 = 10;

static CLOCK_BASE: OnceLock<Instant> = OnceLock::new();
/// Milliseconds since `CLOCK_BASE`, plus one (0 means "not busy" in the actor records).
static TICK: AtomicU64 = AtomicU64::new(1);

/// The current coarse time stamp (never 0).
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
        let thread = std::thread::Builder::new()
            .name("rampart-watchdog".into())
            .spawn(move || {
                let mut ticks = 0u64;
                while !thread_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK_INTERVAL);
                    let now = advance_clock();
                    ticks += 1;
                    if ticks.is_multiple_of(SCAN_EVERY_TICKS) {
                        scan(&registry, now);
                    }
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
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

fn scan(registry: &Registry, now: u64) {
    for record in registry.snapshot() {
        let busy = record.busy_since.load(Ordering::Relaxed);
        let waiting = record.waiting_since.load(Ordering::Relaxed);
        let since = match (busy, waiting) {
            (0, 0) => None,
            (0, w) => Some(w),
            (b, 0) => Some(b),
            (b, w) => Some(b.min(w)),
        };
        let stuck_for = since.map(|since| Duration::from_millis(now.saturating_sub(since)));
        match stuck_for {
            Some(stuck_for) if stuck_for > record.stall_threshold => {
                if !record.stalled.swap(true, Ordering::Relaxed) {
                    record.stalls.fetch_add(1, Ordering::Relaxed);
                    telemetry::actor_stalled(&record.path, stuck_for, busy != 0);
                }
            }
            _ => {
                if record.stalled.swap(false, Ordering::Relaxed) {
                    telemetry::actor_recovered_from_stall(&record.path);
                }
            }
        }
    }
}
