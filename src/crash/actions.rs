//! The action log: a small fixed ring of what the process did last, for crash analysis.
//!
//! Owns: `crash.recent_actions` slots (default 50), written round-robin from any thread.
//!
//! Must never: block or grow. Recording takes one atomic increment and a `try_lock` on one slot;
//! if that slot is busy (another thread writing it, or a snapshot reading it) the action is
//! skipped rather than waited for. The panic hook snapshots the ring the same way.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::{Serialize, Serializer};

/// Slots used when [`configure`] was not called (unit tests, tools).
pub const DEFAULT_CAPACITY: usize = 50;

/// One recorded action.
#[derive(Debug, Clone, Serialize)]
pub struct Action {
    /// Position in the sequence of all actions recorded since start.
    pub seq: u64,
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    pub at: SystemTime,
    /// `http`, `ws`, `supervisor`, `batch_writer`, …
    pub component: &'static str,
    pub action: Cow<'static, str>,
    /// Identifiers involved: `client`, `room`, `conversation`, `request`, `actor`, …
    #[serde(serialize_with = "serialize_ids")]
    pub ids: Vec<(&'static str, String)>,
    #[serde(serialize_with = "serialize_thread")]
    pub thread: std::thread::Thread,
}

fn serialize_ids<S: Serializer>(ids: &[(&'static str, String)], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_map(ids.iter().map(|(key, value)| (key, value)))
}

fn serialize_thread<S: Serializer>(thread: &std::thread::Thread, serializer: S) -> Result<S::Ok, S::Error> {
    match thread.name() {
        Some(name) => serializer.serialize_str(name),
        None => serializer.serialize_str(&format!("{:?}", thread.id())),
    }
}

struct Ring {
    slots: Box<[Mutex<Option<Action>>]>,
    next: AtomicU64,
}

static RING: OnceLock<Ring> = OnceLock::new();

fn ring() -> &'static Ring {
    RING.get_or_init(|| Ring::new(DEFAULT_CAPACITY))
}

impl Ring {
    fn new(capacity: usize) -> Self {
        Self { slots: (0..capacity.max(1)).map(|_| Mutex::new(None)).collect(), next: AtomicU64::new(0) }
    }
}

/// Sets the ring's size; only the first call (before anything is recorded) has an effect.
pub fn configure(capacity: usize) {
    let _ = RING.set(Ring::new(capacity));
}

/// Records one action. Never blocks; see the module docs for when it skips.
pub fn record(component: &'static str, action: impl Into<Cow<'static, str>>, ids: Vec<(&'static str, String)>) {
    let ring = ring();
    let seq = ring.next.fetch_add(1, Ordering::Relaxed);
    let index = (seq % ring.slots.len() as u64) as usize;
    if let Some(mut slot) = ring.slots[index].try_lock() {
        let entry = Action {
            seq,
            at: SystemTime::now(),
            component,
            action: action.into(),
            ids,
            thread: std::thread::current(),
        };
        // The replaced action is dropped after the slot is released.
        let _old = slot.replace(entry);
        drop(slot);
    }
}

/// The recorded actions, oldest first. Never blocks: a slot being written is left out.
pub fn snapshot() -> Vec<Action> {
    let ring = ring();
    let mut actions: Vec<Action> =
        ring.slots.iter().filter_map(|slot| slot.try_lock().and_then(|slot| slot.clone())).collect();
    actions.sort_by_key(|action| action.seq);
    actions
}

/// Records an action: `action!("ws", "send", client = user_id, conversation = id)`.
#[macro_export]
macro_rules! action {
    ($component:expr, $action:expr $(, $key:ident = $value:expr)* $(,)?) => {
        $crate::crash::actions::record(
            $component,
            $action,
            ::std::vec![$((::std::stringify!($key), ::std::string::ToString::to_string(&$value))),*],
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_latest_actions_in_order_and_never_grows() {
        let ring = Ring::new(3);
        for n in 0..5u64 {
            let index = (ring.next.fetch_add(1, Ordering::Relaxed) % 3) as usize;
            *ring.slots[index].lock() = Some(Action {
                seq: n,
                at: SystemTime::now(),
                component: "test",
                action: format!("a{n}").into(),
                ids: vec![("request", n.to_string())],
                thread: std::thread::current(),
            });
        }
        let mut kept: Vec<_> = ring.slots.iter().filter_map(|slot| slot.lock().clone()).collect();
        kept.sort_by_key(|action| action.seq);
        let names: Vec<_> = kept.iter().map(|action| action.action.to_string()).collect();
        assert_eq!(names, ["a2", "a3", "a4"]);
    }

    #[test]
    fn the_macro_records_ids_and_the_snapshot_serializes_them() {
        crate::action!("test", "macro works", request = "r-1", room = 7);
        let recorded = snapshot().into_iter().rev().find(|action| action.action == "macro works").unwrap();
        let json = serde_json::to_value(&recorded).unwrap();
        assert_eq!(json["component"], "test");
        assert_eq!(json["ids"]["request"], "r-1");
        assert_eq!(json["ids"]["room"], "7");
        assert!(json["thread"].is_string());
    }
}
