//! Who is online: every open WebSocket connection, its outbound queue and its delivery sync state.
//!
//! Owns: `Connection` (created by the `/ws` handler at upgrade, removed by the `ConnectionGuard`
//! when the socket ends — not by the session actor, whose incarnations come and go while the
//! socket stays open) and `Outbox` (the frames waiting to be written to one client).
//!
//! Lives outside the delivery hub and the sessions on purpose: a restarted hub or session gets
//! fresh state but finds every connection still here.
//!
//! Must never: block on a slow client. A client more than `ws.outbound_capacity` frames behind is
//! disconnected; what it did not confirm stays pending in storage.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, Notify};

use crate::storage::StoredMessage;

/// One frame to write to a client.
#[derive(Debug)]
pub enum Outbound {
    Text(String),
    Ping,
    Pong(bytes::Bytes),
    /// Written last: the stream ends after it.
    Close(u16, String),
}

/// The frames queued for one client. Producers (session, delivery hub, reader task) never wait;
/// only the backlog replay waits for room (`wait_for_room`), so a client reading its backlog is
/// never cut off for being slow.
pub struct Outbox {
    sender: mpsc::UnboundedSender<Outbound>,
    /// Frames queued and not yet taken by the socket writer.
    queued: Arc<AtomicUsize>,
    /// Signalled by the socket writer each time it takes a frame.
    drained: Arc<Notify>,
    capacity: usize,
    closed: AtomicBool,
}

/// The socket writer's end of an `Outbox`.
pub struct OutboxReceiver {
    receiver: mpsc::UnboundedReceiver<Outbound>,
    queued: Arc<AtomicUsize>,
    drained: Arc<Notify>,
}

impl OutboxReceiver {
    pub async fn next(&mut self) -> Option<Outbound> {
        let frame = self.receiver.recv().await?;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        // One stored permit at most: a waiter re-checks the level, so extra wake-ups are harmless.
        self.drained.notify_one();
        Some(frame)
    }
}

impl Outbox {
    pub fn new(capacity: usize) -> (Self, OutboxReceiver) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let drained = Arc::new(Notify::new());
        (
            Self { sender, queued: queued.clone(), drained: drained.clone(), capacity, closed: AtomicBool::new(false) },
            OutboxReceiver { receiver, queued, drained },
        )
    }

    /// Frames waiting for the socket writer.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// The slow-client limit (`ws.outbound_capacity`).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Waits until at most `level` frames are queued; `false` if the connection closed first.
    pub async fn wait_for_room(&self, level: usize) -> bool {
        loop {
            if self.is_closed() {
                return false;
            }
            if self.queued() <= level {
                return true;
            }
            // A close queues a frame the writer then takes, which wakes this too; the timeout
            // only bounds how long a missed wake-up could cost.
            let _ = tokio::time::timeout(ROOM_RECHECK, self.drained.notified()).await;
        }
    }

    /// Queues a frame; `false` when the connection is closed or was just closed for being too
    /// far behind (1008).
    pub fn push(&self, frame: Outbound) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        if self.queued.load(Ordering::Acquire) >= self.capacity {
            crate::telemetry::metrics().ws_slow_clients.inc();
            self.close(1008, "client too slow: outbound queue full");
            return false;
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.sender.send(frame).is_ok()
    }

    pub fn text(&self, text: String) -> bool {
        self.push(Outbound::Text(text))
    }

    /// Queues a close frame (once); nothing is queued after it.
    pub fn close(&self, code: u16, reason: &str) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.queued.fetch_add(1, Ordering::AcqRel);
            let _ = self.sender.send(Outbound::Close(code, reason.to_owned()));
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// Longest a backlog replay waits for room before looking again.
const ROOM_RECHECK: std::time::Duration = std::time::Duration::from_millis(250);

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
/// Bounded: beyond `limit` messages are not kept and `overflowed` says so; the replay then
/// queries again instead of going live, and anything late it lost is left to the backstop.
#[derive(Debug, Default)]
pub struct SyncBuffer {
    pub messages: Vec<Arc<StoredMessage>>,
    pub overflowed: bool,
    pub limit: usize,
}

impl SyncBuffer {
    pub fn new(limit: usize) -> Self {
        Self { messages: Vec::new(), overflowed: false, limit }
    }

    pub fn keep(&mut self, message: Arc<StoredMessage>) {
        if self.messages.len() < self.limit {
            self.messages.push(message);
        } else {
            self.overflowed = true;
        }
    }

    /// Before querying the page after `cursor`: what that query returns is dropped here.
    pub fn before_page(&mut self, cursor: i64) {
        self.messages.retain(|message| message.seq <= cursor);
        self.overflowed = false;
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

    /// Registers a new connection in `Syncing` state.
    pub fn connect(self: &Arc<Self>, user: String, outbox: Outbox) -> ConnectionGuard {
        let capacity = outbox.capacity();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let connection = Arc::new(Connection {
            id,
            user: user.clone(),
            outbox,
            sync: Mutex::new(SyncState::Syncing(SyncBuffer::new(sync_buffer_limit(capacity)))),
            last_seen: Mutex::new(Instant::now()),
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

/// Live messages kept per replaying connection: a quarter of its outbox, so going live (the
/// buffer pushed at once) never comes near the slow-client limit.
pub fn sync_buffer_limit(outbound_capacity: usize) -> usize {
    (outbound_capacity / 4).max(1)
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
        let mut buffer = SyncBuffer::new(16);
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
