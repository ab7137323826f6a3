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
use tokio::sync::mpsc;

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

/// The frames queued for one client. Producers (session, delivery hub, reader task) never wait.
pub struct Outbox {
    sender: mpsc::UnboundedSender<Outbound>,
    /// Frames queued and not yet taken by the socket writer.
    queued: Arc<AtomicUsize>,
    capacity: usize,
    closed: AtomicBool,
}

/// The socket writer's end of an `Outbox`.
pub struct OutboxReceiver {
    receiver: mpsc::UnboundedReceiver<Outbound>,
    queued: Arc<AtomicUsize>,
}

impl OutboxReceiver {
    pub async fn next(&mut self) -> Option<Outbound> {
        let frame = self.receiver.recv().await?;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        Some(frame)
    }
}

impl Outbox {
    pub fn new(capacity: usize) -> (Self, OutboxReceiver) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        (
            Self { sender, queued: queued.clone(), capacity, closed: AtomicBool::new(false) },
            OutboxReceiver { receiver, queued },
        )
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

/// Delivery state of a connection, driven by the delivery hub.
#[derive(Debug)]
pub enum SyncState {
    /// Its backlog of undelivered messages is being loaded; live pushes wait here meanwhile.
    Syncing(Vec<Arc<StoredMessage>>),
    /// Backlog sent; new messages are pushed as they commit.
    Live,
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
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let connection = Arc::new(Connection {
            id,
            user: user.clone(),
            outbox,
            sync: Mutex::new(SyncState::Syncing(Vec::new())),
            last_seen: Mutex::new(Instant::now()),
        });
        self.by_user.write().entry(user).or_default().push(connection.clone());
        crate::telemetry::metrics().ws_connections.inc();
        ConnectionGuard { presence: self.clone(), connection }
    }

    pub fn connections_of(&self, user: &str) -> Vec<Arc<Connection>> {
        self.by_user.read().get(user).cloned().unwrap_or_default()
    }

    /// Connections whose backlog is not loaded yet (a restarted hub picks them up again).
    pub fn syncing(&self) -> Vec<Arc<Connection>> {
        self.by_user
            .read()
            .values()
            .flatten()
            .filter(|connection| matches!(*connection.sync.lock(), SyncState::Syncing(_)))
            .cloned()
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
