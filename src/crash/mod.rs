//! Crash records: every panic, wherever it happened, as a record an operator can read later.
//!
//! Owns: the recent-actions ring (`actions`), the queue from the place a panic was caught to the
//! `CrashRecorder` actor (`recorder.rs`), and the in-memory index `/admin/crashes` reads.
//!
//! Flow: the panic hook captures message, location, thread, backtrace (unresolved) and a snapshot
//! of the recent actions. The boundary that caught the panic — actor runner, HTTP boundary, owned
//! task — adds where it happened (actor path, route and request id, task name) and calls
//! [`report`]; a panic no boundary catches is reported by the hook itself with source `thread`.
//! `report` only enqueues (never blocks, never locks); the recorder symbolizes the backtrace,
//! writes `<data_dir>/crashes/<id>.json` (oldest pruned beyond `crash.keep`) and indexes it.

pub mod actions;
mod config;
mod recorder;

use std::backtrace::Backtrace;
use std::sync::{Arc, LazyLock};
use std::time::SystemTime;

pub use actions::Action;
pub use config::CrashConfig;
pub use recorder::{CrashRecorder, CrashStore, StoredCrash};

use crate::queue::WakeQueue;
use crate::telemetry::PanicSource;

/// Records waiting for the recorder; beyond this a storm of panics drops records (never blocks).
const QUEUE_CAPACITY: usize = 256;

/// What the hook captured about one panic.
#[derive(Debug, Clone)]
pub struct CapturedPanic {
    /// The panic payload rendered as text (`"<non-string panic payload>"` when it is neither
    /// `&str` nor `String`).
    pub message: String,
    /// `file:line` of the `panic!` (or failed assertion / `unwrap`) site.
    pub location: Option<String>,
    /// Name of the thread that panicked, when it has one.
    pub thread: Option<String>,
    /// Captured unresolved; resolving symbols is slow and happens only when someone renders it.
    pub backtrace: Arc<Backtrace>,
    /// The action log at the moment of the panic, oldest first.
    pub recent_actions: Arc<[Action]>,
    /// The trace the panicking code was part of, when tracing export is on.
    pub trace_id: Option<String>,
}

impl CapturedPanic {
    /// A failure report for something that was not a panic (an escalation, a normal stop).
    pub fn without_panic(message: String) -> Self {
        Self {
            message,
            location: None,
            thread: std::thread::current().name().map(str::to_owned),
            backtrace: Arc::new(Backtrace::disabled()),
            recent_actions: Arc::from([]),
            trace_id: None,
        }
    }
}

/// One panic, as captured; rendered to a [`StoredCrash`] by the recorder.
#[derive(Debug, Clone)]
pub struct CrashRecord {
    pub id: String,
    pub at: SystemTime,
    pub source: PanicSource,
    /// Actor path (`source = actor`).
    pub actor: Option<String>,
    /// Route template (`source = http`).
    pub route: Option<String>,
    /// HTTP method (`source = http`).
    pub method: Option<String>,
    /// Owned task name (`source = task`).
    pub task: Option<String>,
    /// Type of the message being handled when an actor panicked, if known.
    pub handling: Option<String>,
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    pub message: String,
    pub location: Option<String>,
    pub thread: Option<String>,
    pub backtrace: Arc<Backtrace>,
    pub recent_actions: Arc<[Action]>,
}

impl CrashRecord {
    /// A record of `panic` caught at `source`; the caller fills in where.
    pub fn new(source: PanicSource, panic: &CapturedPanic) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            at: SystemTime::now(),
            source,
            actor: None,
            route: None,
            method: None,
            task: None,
            handling: None,
            request_id: None,
            trace_id: panic.trace_id.clone(),
            message: panic.message.clone(),
            location: panic.location.clone(),
            thread: panic.thread.clone(),
            backtrace: panic.backtrace.clone(),
            recent_actions: panic.recent_actions.clone(),
        }
    }
}

static QUEUE: LazyLock<WakeQueue<CrashRecord>> = LazyLock::new(|| WakeQueue::new(QUEUE_CAPACITY));

/// Hands a record to the recorder (`alerts::report_crash` also raises its alert). Never blocks:
/// if the queue is full (a storm of panics faster than files can be written) the record is
/// dropped; the panic itself is still logged, counted and alerted.
pub fn report(record: CrashRecord) {
    QUEUE.try_push(record);
}

pub(crate) fn queue() -> &'static WakeQueue<CrashRecord> {
    &QUEUE
}
