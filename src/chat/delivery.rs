//! `DeliveryHub` (`/root/chat/delivery`): pushes committed messages to their recipients' open
//! connections and keeps the per-recipient delivery records moving (pending → in_flight →
//! delivered).
//!
//! Owns: the write-behind buffers of claims (pushed: in_flight, claimed now) and confirmations
//! (delivered), flushed to storage every `FLUSH_DELAY`. A reconnecting recipient first gets
//! everything undelivered, in commit order; messages committed meanwhile wait in the
//! connection's `Syncing` buffer and follow without duplicates.
//!
//! On a crash: the buffers are lost, which only leaves records pending or in flight — they are
//! pushed again on reconnect or by the cleanup job (delivery is at least once; clients dedupe
//! by message id). Connections live in `Presence`, not here, and a restarted hub resumes the
//! backlog of every connection still syncing.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::presence::{Connection, Presence, SyncState};
use super::protocol::message_frame;
use super::Directory;
use crate::storage::{ChatStore, StoredMessage};
use crate::supervision::SupervisedMessage;

/// Claims and confirmations are written at most this long after they happen.
const FLUSH_DELAY: Duration = Duration::from_millis(10);
/// Backlog rows read per query when a connection syncs.
const BACKLOG_PAGE: u32 = 500;

/// New messages, in commit order (from the batch writer).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Committed(pub Vec<Arc<StoredMessage>>);
impl SupervisedMessage for Committed {}

/// A connection opened: send its backlog, then go live.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Attach(pub Arc<Connection>);
impl SupervisedMessage for Attach {}

impl std::fmt::Debug for Attach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Attach(connection {} of {})", self.0.id, self.0.user)
    }
}

/// The client confirmed a message.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Confirm {
    pub user: String,
    pub id: String,
}
impl SupervisedMessage for Confirm {}

/// These recipients have records back in pending (cleanup, dead-letter retry): push them.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Redeliver(pub Vec<String>);
impl SupervisedMessage for Redeliver {}

pub struct DeliveryHub {
    store: ChatStore,
    directory: Arc<Directory>,
    presence: Arc<Presence>,
    claims: Vec<(String, i64)>,
    confirmations: Vec<(String, String)>,
    flush_scheduled: bool,
}

impl DeliveryHub {
    pub fn new(store: ChatStore, directory: Arc<Directory>, presence: Arc<Presence>) -> Self {
        Self { store, directory, presence, claims: Vec::new(), confirmations: Vec::new(), flush_scheduled: false }
    }

    /// Pushes `frame` to `connection` if it is live, buffers it while it syncs. Records a claim
    /// when the frame was queued.
    fn offer(&mut self, connection: &Connection, message: &Arc<StoredMessage>, frame: &str) {
        {
            let mut sync = connection.sync.lock();
            if let SyncState::Syncing(buffer) = &mut *sync {
                buffer.push(message.clone());
                return;
            }
        }
        self.push(connection, message, frame.to_owned());
    }

    fn push(&mut self, connection: &Connection, message: &StoredMessage, frame: String) {
        if connection.outbox.text(frame) {
            crate::telemetry::metrics().deliveries_pushed.inc();
            self.claims.push((connection.user.clone(), message.seq));
        }
    }

    fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        if self.flush_scheduled {
            return;
        }
        self.flush_scheduled = true;
        ctx.run_later(FLUSH_DELAY, |hub, ctx| hub.flush(ctx));
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        self.flush_scheduled = false;
        let claims = std::mem::take(&mut self.claims);
        let confirmations = std::mem::take(&mut self.confirmations);
        let store = self.store.clone();
        ctx.spawn(
            async move {
                if !claims.is_empty() {
                    if let Err(error) = store.mark_in_flight(claims, crate::storage::now_ms()).await {
                        tracing::warn!(%error, "could not mark deliveries in flight; they stay pending");
                    }
                }
                if !confirmations.is_empty() {
                    if let Err(error) = store.mark_delivered(confirmations).await {
                        tracing::warn!(%error, "could not mark deliveries delivered; they will be sent again");
                    }
                }
            }
            .into_actor(self),
        );
    }

    /// Loads `connection`'s backlog and switches it to live.
    fn sync(&mut self, connection: Arc<Connection>, ctx: &mut Context<Self>) {
        let store = self.store.clone();
        let user = connection.user.clone();
        let load = async move {
            let mut backlog = Vec::new();
            let mut after = 0;
            loop {
                let page = store.undelivered(user.clone(), after, BACKLOG_PAGE, true).await?;
                let full = page.len() == BACKLOG_PAGE as usize;
                after = page.last().map_or(after, |message| message.seq);
                backlog.extend(page);
                if !full {
                    return Ok::<_, crate::storage::StorageError>(backlog);
                }
            }
        };
        ctx.spawn(load.into_actor(self).map(move |loaded, hub, ctx| {
            let backlog = match loaded {
                Ok(backlog) => backlog,
                Err(error) => {
                    // Without its backlog the connection would silently miss messages: close it,
                    // the client reconnects and syncs again.
                    tracing::warn!(%error, user = %connection.user, "could not load a backlog; closing the connection");
                    connection.outbox.close(1011, "backlog unavailable, reconnect");
                    return;
                }
            };
            let buffered = match std::mem::replace(&mut *connection.sync.lock(), SyncState::Live) {
                SyncState::Syncing(buffered) => buffered,
                SyncState::Live => Vec::new(),
            };
            let sent: HashSet<i64> = backlog.iter().map(|message| message.seq).collect();
            for message in &backlog {
                hub.push(&connection, message, message_frame(message));
            }
            for message in buffered.iter().filter(|message| !sent.contains(&message.seq)) {
                hub.push(&connection, message, message_frame(message));
            }
            hub.schedule_flush(ctx);
        }));
    }
}

impl Actor for DeliveryHub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // After a restart: connections whose sync the previous incarnation did not finish.
        for connection in self.presence.syncing() {
            self.sync(connection, ctx);
        }
    }

    fn stopping(&mut self, ctx: &mut Self::Context) -> Running {
        if !self.claims.is_empty() || !self.confirmations.is_empty() {
            self.flush(ctx);
        }
        Running::Stop
    }
}

crate::supervised!(DeliveryHub);

impl Handler<Committed> for DeliveryHub {
    type Result = ();

    fn handle(&mut self, Committed(messages): Committed, ctx: &mut Self::Context) {
        for message in &messages {
            let Some(members) = self.directory.cached_members(&message.conversation) else {
                // Not cached means nobody validated a message for it in this process: impossible
                // for a fresh commit; the records stay pending for reconnects and cleanup.
                continue;
            };
            let mut frame = None;
            for recipient in members.iter().filter(|member| **member != message.sender) {
                for connection in self.presence.connections_of(recipient) {
                    let frame = frame.get_or_insert_with(|| message_frame(message));
                    self.offer(&connection, message, frame);
                }
            }
        }
        self.schedule_flush(ctx);
    }
}

impl Handler<Attach> for DeliveryHub {
    type Result = ();

    fn handle(&mut self, Attach(connection): Attach, ctx: &mut Self::Context) {
        self.sync(connection, ctx);
    }
}

impl Handler<Confirm> for DeliveryHub {
    type Result = ();

    fn handle(&mut self, confirm: Confirm, ctx: &mut Self::Context) {
        self.confirmations.push((confirm.user, confirm.id));
        self.schedule_flush(ctx);
    }
}

impl Handler<Redeliver> for DeliveryHub {
    type Result = ();

    fn handle(&mut self, Redeliver(users): Redeliver, ctx: &mut Self::Context) {
        for user in users {
            let connections = self.presence.connections_of(&user);
            if connections.is_empty() {
                continue;
            }
            let store = self.store.clone();
            let load = async move { store.undelivered(user, 0, BACKLOG_PAGE, false).await };
            ctx.spawn(load.into_actor(self).map(move |loaded, hub, ctx| {
                let Ok(pending) = loaded else { return };
                for message in &pending {
                    let frame = message_frame(message);
                    for connection in &connections {
                        if matches!(*connection.sync.lock(), SyncState::Live) {
                            hub.push(connection, message, frame.clone());
                        }
                    }
                }
                hub.schedule_flush(ctx);
            }));
        }
    }
}
