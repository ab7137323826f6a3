//! Announcements of new messages to the hub (`Committed`), held in a byte budget per process.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix::prelude::*;

use crate::storage::StoredMessage;
use crate::supervision::SupervisedMessage;

/// New messages, in commit order (from the batch writer, or the Kafka feed). Holds its bytes of
/// the process's `AnnounceBudget` until handled or dropped.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Committed {
    pub messages: Vec<Arc<StoredMessage>>,
    _reserved: Reservation,
}
impl SupervisedMessage for Committed {}

/// Bytes of announced messages not yet handled (in the hub's mailbox, or the Kafka feed's): a
/// mailbox bounded in messages could otherwise hold a thousand batches of a mebibyte each while
/// the hub is slow. Over `limit`, announcements are dropped and counted
/// (`rampart_deliveries_unannounced_total`): the backstop pushes what they carried.
pub struct AnnounceBudget {
    limit: usize,
    queued: AtomicUsize,
}

/// What one announcement holds of the budget; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<AnnounceBudget>,
    bytes: usize,
}

impl std::fmt::Debug for AnnounceBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AnnounceBudget({} of {})", self.queued.load(Ordering::Relaxed), self.limit)
    }
}

impl AnnounceBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self { limit, queued: AtomicUsize::new(0) })
    }

    /// Room for `messages`, or `None` (counted as unannounced) when the budget is spent.
    pub fn reserve(self: &Arc<Self>, messages: &[Arc<StoredMessage>]) -> Option<Reservation> {
        let bytes: usize = messages.iter().map(|message| message.body.len() + ANNOUNCED_MESSAGE_OVERHEAD).sum();
        let taken = self.queued.fetch_add(bytes, Ordering::AcqRel);
        if taken.saturating_add(bytes) > self.limit {
            self.queued.fetch_sub(bytes, Ordering::AcqRel);
            crate::telemetry::metrics().deliveries_unannounced.inc();
            return None;
        }
        Some(Reservation { budget: self.clone(), bytes })
    }

    /// `messages` for the hub, if the budget has room for them.
    pub fn committed(self: &Arc<Self>, messages: Vec<Arc<StoredMessage>>) -> Option<Committed> {
        let reserved = self.reserve(&messages)?;
        Some(Committed { messages, _reserved: reserved })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.queued.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// What an announced message counts for beyond its body.
const ANNOUNCED_MESSAGE_OVERHEAD: usize = 256;

/// Bytes of announcements a process holds at most (`AnnounceBudget`).
pub const ANNOUNCE_BUDGET_BYTES: usize = 64 * 1024 * 1024;
