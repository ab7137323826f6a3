//! Dead letters from the supervision layer: messages quarantined for crashing an actor
//! repeatedly are written to the dead-letter table, next to the messages and deliveries the
//! pipeline itself gave up on.
//!
//! Owns: `DeadLetterSink` (the process's `QuarantineSink`: keeps the in-memory quarantine view
//! and enqueues without blocking) and `DeadLetterWriter` (`/root/chat/dead_letters`), which
//! drains that queue into storage. The queue outlives the writer, so a restart loses nothing
//! queued; a storage failure puts the record back and retries on the next wake-up or tick.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::queue::WakeQueue;
use crate::storage::{ChatStore, DeadLetterKind, NewDeadLetter};
use crate::supervision::{QuarantineEvent, QuarantineRecord, QuarantineSink, QuarantineStore};

/// Quarantine records waiting for the writer; beyond this they are only in `/admin/quarantine`.
pub const QUEUE_CAPACITY: usize = 10_000;
/// Retry period after a failed write.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// The quarantine sink: memory (for `/admin/quarantine`) plus the dead-letter queue.
pub struct DeadLetterSink {
    pub memory: Arc<QuarantineStore>,
    pub queue: &'static WakeQueue<QuarantineRecord>,
}

impl QuarantineSink for DeadLetterSink {
    fn accept(&self, record: QuarantineRecord) {
        if matches!(record.event, QuarantineEvent::Diverted { .. }) && !self.queue.try_push(record.clone()) {
            tracing::error!(key = %record.key, "dead-letter queue full; the quarantined message is only in /admin/quarantine");
        }
        self.memory.accept(record);
    }
}

pub struct DeadLetterWriter {
    store: ChatStore,
    queue: &'static WakeQueue<QuarantineRecord>,
    writing: bool,
}

impl DeadLetterWriter {
    pub fn new(store: ChatStore, queue: &'static WakeQueue<QuarantineRecord>) -> Self {
        Self { store, queue, writing: false }
    }

    fn drain(&mut self, ctx: &mut Context<Self>) {
        if self.writing {
            return;
        }
        let Some(record) = self.queue.try_pop() else { return };
        self.writing = true;
        let payload = match &record.event {
            QuarantineEvent::Diverted { payload } => {
                serde_json::from_str(payload).unwrap_or_else(|_| serde_json::Value::String(payload.clone()))
            }
            QuarantineEvent::Quarantined { .. } => serde_json::Value::Null,
        };
        let letter = NewDeadLetter {
            kind: DeadLetterKind::Quarantine,
            reason: format!("quarantined by {} ({}, key {})", record.actor, record.message_type, record.key),
            attempts: 0,
            payload,
        };
        let store = self.store.clone();
        let write = async move { store.add_dead_letter(letter, crate::storage::now_ms()).await };
        ctx.spawn(write.into_actor(self).map(move |result, writer, ctx| {
            writer.writing = false;
            match result {
                Ok(_) => {
                    crate::telemetry::dead_lettered("quarantine");
                    writer.drain(ctx);
                }
                Err(error) => {
                    tracing::warn!(%error, "could not write a dead letter; retrying");
                    if !writer.queue.try_push(record) {
                        tracing::error!("dead-letter queue full; a quarantined message is only in /admin/quarantine");
                    }
                }
            }
        }));
    }
}

impl Actor for DeadLetterWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.add_stream(self.queue.wakeups());
        ctx.run_interval(RETRY_INTERVAL, |writer, ctx| writer.drain(ctx));
        self.drain(ctx);
    }
}

crate::supervised!(DeadLetterWriter);

impl StreamHandler<()> for DeadLetterWriter {
    fn handle(&mut self, (): (), ctx: &mut Self::Context) {
        self.drain(ctx);
    }
}
