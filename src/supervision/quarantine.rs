//! Poison-message quarantine: where messages go that crashed their actor too often.
//!
//! Owns: the `QuarantineSink` seam and the default in-memory store behind `/admin/quarantine`.
//! The pipeline plugs a dead-letter store in behind the same trait. A sink must never block: it
//! is called from actor threads.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::Serialize;

/// One quarantine event.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct QuarantineRecord {
    pub actor: String,
    pub message_type: String,
    pub key: String,
    /// RFC 3339.
    #[serde(serialize_with = "crate::rfc3339::serialize")]
    #[schema(value_type = String)]
    pub at: SystemTime,
    pub event: QuarantineEvent,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum QuarantineEvent {
    /// The key crashed the actor `crashes` times and is now refused.
    Quarantined { crashes: u32, last_panic: String, location: Option<String> },
    /// A message with a quarantined key arrived and was diverted here instead of delivered.
    Diverted { payload: String },
}

/// Receives quarantined messages. Implementations must return quickly and never panic.
pub trait QuarantineSink: Send + Sync + 'static {
    fn accept(&self, record: QuarantineRecord);
}

/// Keeps the most recent quarantine events in memory and logs each one.
pub struct QuarantineStore {
    capacity: usize,
    records: Mutex<VecDeque<QuarantineRecord>>,
    total: AtomicU64,
}

impl QuarantineStore {
    pub const DEFAULT_CAPACITY: usize = 1000;

    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self { capacity: capacity.max(1), records: Mutex::new(VecDeque::new()), total: AtomicU64::new(0) })
    }

    pub fn records(&self) -> Vec<QuarantineRecord> {
        self.records.lock().iter().cloned().collect()
    }

    /// Quarantine events since start, including those no longer kept.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

impl QuarantineSink for QuarantineStore {
    fn accept(&self, record: QuarantineRecord) {
        match &record.event {
            QuarantineEvent::Quarantined { crashes, last_panic, .. } => tracing::error!(
                actor = %record.actor,
                message_type = %record.message_type,
                key = %record.key,
                crashes,
                last_panic = %last_panic,
                "message quarantined: it crashed the actor repeatedly and will not be delivered again"
            ),
            QuarantineEvent::Diverted { .. } => tracing::warn!(
                actor = %record.actor,
                message_type = %record.message_type,
                key = %record.key,
                "quarantined message diverted instead of delivered"
            ),
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut records = self.records.lock();
        if records.len() == self.capacity {
            records.pop_front();
        }
        records.push_back(record);
    }
}
