//! Who is online: every open WebSocket connection, its outbound queue and its delivery sync state.
//!
//! Owns: `Connection` (created by the `/ws` handler at upgrade, removed by the `ConnectionGuard`
//! when the socket ends — not by the session actor, whose incarnations come and go while the
//! socket stays open), with its `Outbox` (`crate::socket`: the frames waiting to be written to
//! the client) and the user's connection slot (`ws.max_connections_per_user`).
//!
//! Lives outside the delivery hub and the sessions on purpose: a restarted hub or session gets
//! fresh state but finds every connection still here.
//!
//! Must never: block on a slow client. A client more than `ws.outbound_bytes` behind is
//! disconnected; what it did not confirm stays pending in storage.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};

use crate::socket::{Outbox, PerUserSlot};
use crate::storage::StoredMessage;

/// Delivery state of a connection, driven by the delivery hub.
#[derive(Debug)]
pub enum SyncState {
    /// Its backlog of undelivered messages is being replayed, page by page as the client reads;
    /// messages committed since the latest page query wait here (see `SyncBuffer`).
    Syncing(SyncBuffer),
    /// Backlog sent; new messages are pushed as they commit.
    Live,
}

/// Live messages that arrived while a connection replays its backlog. Before each page query it
/// drops what that query will return (seq above the cursor: everything announced is in storage
/// already), so it holds what was committed since, plus what no query returns: messages stored
/// late with a seq at or below the cursor (another process's, whose seqs interleave by time).
/// Bounded in bytes: beyond `limit` bytes of bodies messages are not kept and `overflowed` says
/// so; the replay then queries again instead of going live, and anything late it lost is left
/// to the backstop.
#[derive(Debug, Default)]
pub struct SyncBuffer {
    pub messages: Vec<Arc<StoredMessage>>,
    pub overflowed: bool,
    /// Bytes of the kept messages (bodies plus a frame's overhead each).
    bytes: usize,
    limit: usize,
}

/// What a kept message counts for in a `SyncBuffer` beyond its body.
const KEPT_MESSAGE_OVERHEAD: usize = 256;

impl SyncBuffer {
    pub fn new(limit: usize) -> Self {
        Self { messages: Vec::new(), overflowed: false, bytes: 0, limit }
    }

    pub fn keep(&mut self, message: Arc<StoredMessage>) {
        let cost = message.body.len() + KEPT_MESSAGE_OVERHEAD;
        if self.bytes + cost <= self.limit {
            self.bytes += cost;
            self.messages.push(message);
        } else {
            self.overflowed = true;
        }
    }

    fn recount(&mut self) {
        self.bytes = self.messages.iter().map(|message| message.body.len() + KEPT_MESSAGE_OVERHEAD).sum();
    }

    /// Before querying the page after `cursor`: what that query returns is dropped here.
    pub fn before_page(&mut self, cursor: i64) {
        self.messages.retain(|message| message.seq <= cursor);
        self.overflowed = false;
        self.recount();
    }

    /// Takes every kept message, oldest seq first.
    pub fn take(&mut self) -> Vec<Arc<StoredMessage>> {
        let mut messages = std::mem::take(&mut self.messages);
        self.bytes = 0;
        messages.sort_by_key(|message| message.seq);
        messages
    }

    /// Gives back messages taken and not pushed (no room): kept again, ahead of newer ones.
    pub fn give_back(&mut self, mut messages: Vec<Arc<StoredMessage>>) {
        messages.append(&mut self.messages);
        self.messages = messages;
        self.recount();
    }

    /// After a page up to `through` was pushed: drops what the page held, and returns, in seq
    /// order, what no page will return (seq at or below `through`), to push now. What stays is
    /// newer than the page.
    pub fn after_page(&mut self, page: &[StoredMessage], through: i64) -> Vec<Arc<StoredMessage>> {
        let in_page: std::collections::HashSet<&str> = page.iter().map(|message| message.id.as_str()).collect();
        self.messages.retain(|message| !in_page.contains(message.id.as_str()));
        let (mut late, newer): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.messages).into_iter().partition(|message| message.seq <= through);
        self.messages = newer;
        self.recount();
        late.sort_by_key(|message| message.seq);
        late
    }
}

/// One open WebSocket connection.
pub struct Connection {
    pub id: u64,
    pub user: String,
    pub outbox: Outbox,
    pub sync: Mutex<SyncState>,
    /// Last time any frame arrived from the client (heartbeat).
    pub last_seen: Mutex<Instant>,
    /// The user's connection slot (`ws.max_connections_per_user`), given back with the connection.
    _slot: Option<PerUserSlot>,
}

/// Every open connection by user.
#[derive(Default)]
pub struct Presence {
    by_user: RwLock<HashMap<String, Vec<Arc<Connection>>>>,
    next_id: AtomicU64,
}

impl Presence {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Registers a new connection in `Syncing` state; `slot` is the user's connection slot.
    pub fn connect(self: &Arc<Self>, user: String, outbox: Outbox, slot: Option<PerUserSlot>) -> ConnectionGuard {
        let budget = outbox.budget();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let connection = Arc::new(Connection {
            id,
            user: user.clone(),
            outbox,
            sync: Mutex::new(SyncState::Syncing(SyncBuffer::new(sync_buffer_limit(budget)))),
            last_seen: Mutex::new(Instant::now()),
            _slot: slot,
        });
        self.by_user.write().entry(user).or_default().push(connection.clone());
        crate::telemetry::metrics().ws_connections.inc();
        ConnectionGuard { presence: self.clone(), connection }
    }

    pub fn connections_of(&self, user: &str) -> Vec<Arc<Connection>> {
        self.by_user.read().get(user).cloned().unwrap_or_default()
    }

    /// Every open connection (a restarted hub picks them all up again).
    pub fn all(&self) -> Vec<Arc<Connection>> {
        self.by_user.read().values().flatten().cloned().collect()
    }

    /// Users with at least one live connection here (backlog sent): whom the delivery backstop
    /// looks after.
    pub fn live_users(&self) -> Vec<String> {
        self.by_user
            .read()
            .iter()
            .filter(|(_, connections)| {
                connections.iter().any(|connection| matches!(*connection.sync.lock(), SyncState::Live))
            })
            .map(|(user, _)| user.clone())
            .collect()
    }

    pub fn count(&self) -> usize {
        self.by_user.read().values().map(Vec::len).sum()
    }

    fn disconnect(&self, connection: &Arc<Connection>) {
        let mut by_user = self.by_user.write();
        if let Some(list) = by_user.get_mut(&connection.user) {
            list.retain(|other| !Arc::ptr_eq(other, connection));
            if list.is_empty() {
                by_user.remove(&connection.user);
            }
        }
        crate::telemetry::metrics().ws_connections.dec();
    }
}

/// Bytes of live messages kept per replaying connection: a quarter of its outbox budget, at most
/// 256 KiB (beyond, the replay reads on from storage, which has them).
pub fn sync_buffer_limit(outbound_bytes: usize) -> usize {
    (outbound_bytes / 4).clamp(KEPT_MESSAGE_OVERHEAD, 256 * 1024)
}

/// Unregisters its connection when dropped (the socket ended).
pub struct ConnectionGuard {
    presence: Arc<Presence>,
    pub connection: Arc<Connection>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.connection.outbox.close(1001, "going away");
        self.presence.disconnect(&self.connection);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: &str, seq: i64) -> StoredMessage {
        StoredMessage {
            seq,
            id: id.into(),
            conversation: "c".into(),
            sender: "alice".into(),
            client_msg_id: id.into(),
            body: "hi".into(),
            created_at_ms: seq,
        }
    }

    #[test]
    fn a_message_stored_late_with_a_lower_seq_is_pushed_after_the_page_that_passed_it() {
        // Another process stamped seq 15 before this page's query but stored it after: the page
        // (records up to seq 20) cannot hold it, and no later page (seq > 20) returns it.
        let mut buffer = SyncBuffer::new(1 << 20);
        buffer.before_page(10);
        let page = vec![message("a", 12), message("b", 20)];
        buffer.keep(Arc::new(message("b", 20))); // announced during the query: in the page too
        buffer.keep(Arc::new(message("late", 15)));
        buffer.keep(Arc::new(message("newer", 25)));
        let late = buffer.after_page(&page, 20);
        assert_eq!(late.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), vec!["late"]);
        assert_eq!(buffer.messages.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), vec!["newer"]);
        // A late one announced between this page and the next query is kept for after it.
        buffer.keep(Arc::new(message("late2", 18)));
        buffer.before_page(20);
        assert_eq!(buffer.messages.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), vec!["late2"]);
        assert_eq!(buffer.after_page(&[], 20).len(), 1);
    }
}
