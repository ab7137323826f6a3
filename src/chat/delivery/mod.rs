//! `DeliveryHub` (`/root/chat/delivery`): pushes committed messages to their recipients' open
//! connections and keeps the per-recipient delivery records moving (pending → in_flight →
//! delivered).
//!
//! Owns: the write-behind buffers of claims (pushed: in_flight, claimed now) and confirmations
//! (delivered), flushed to storage every `FLUSH_DELAY`. A reconnecting recipient first gets
//! everything undelivered, in commit order, then goes live without gaps or duplicates.
//!
//! Backlog replay is flow-controlled in bytes: replayed frames are offered to the connection's
//! outbox only up to its paced share (half its budget `ws.outbound_bytes`, at most 256 KiB), and
//! the next page is read from storage once the client has drained it to half the share. A client
//! reading a backlog of any size at any speed is therefore never cut off as "too slow" (that rule
//! is for live traffic it cannot keep up with, which has the rest of the budget), and a replaying
//! connection holds at most its share of frames plus its bounded `SyncBuffer` in memory.
//!
//! Live pushes come from commit announcements (`Committed`), which can be lost between the commit
//! and this hub (a crash, a full mailbox, a lost Kafka feed event, another process storing it).
//! What was lost stays pending in storage, and a *catch-up* pushes a live connection's pending
//! records the same paced way as a replay: for every live connection when the hub restarts, for
//! the recipients the cleanup job finds with pending records older than `delivery.stale_after`
//! (the backstop), and for recipients whose stale claims it put back. So every stored message
//! reaches every connected member within `stale_after` plus one cleanup interval at worst.
//!
//! On a crash: the buffers are lost, which only leaves records pending or in flight — pushed
//! again by the restarted hub's catch-up, on reconnect or by the cleanup job (delivery is at
//! least once; clients dedupe by message id). Connections live in `Presence`, not here.

mod announce;
mod backlog;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::presence::{Connection, Presence, SyncState};
use super::protocol::message_frame;
use super::Directory;
use crate::storage::{ChatStore, Claim, StoredMessage};
use crate::supervision::SupervisedMessage;
pub use announce::{AnnounceBudget, Committed, Reservation, ANNOUNCE_BUDGET_BYTES};

/// Claims and confirmations are written at most this long after they happen.
const FLUSH_DELAY: Duration = Duration::from_millis(10);

/// With `chaos.enabled`, the hub panics while announcing a message whose body contains this
/// (drills of a hub crash with an announcement in hand).
pub const CHAOS_DELIVERY_PANIC_MARKER: &str = "\u{1F4A5}chaos:delivery-panic";

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

/// These recipients have pending records that were not pushed (the cleanup job's backstop and
/// requeues, a dead-letter retry): catch their live connections up.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Redeliver(pub Vec<String>);
impl SupervisedMessage for Redeliver {}

pub struct DeliveryHub {
    store: ChatStore,
    directory: Arc<Directory>,
    presence: Arc<Presence>,
    claims: Vec<Claim>,
    confirmations: Vec<(String, String)>,
    flush_scheduled: bool,
    /// Flushes whose writes have not returned: shutdown waits for them.
    flushing: usize,
    /// Asked to stop: the last claims and confirmations are written first.
    stopping: bool,
    /// Connections (by id) with a catch-up running, so two never run side by side.
    catching_up: HashSet<u64>,
    /// `chaos.enabled`: see `CHAOS_DELIVERY_PANIC_MARKER`.
    chaos: bool,
}

impl DeliveryHub {
    pub fn new(store: ChatStore, directory: Arc<Directory>, presence: Arc<Presence>, chaos: bool) -> Self {
        Self {
            store,
            directory,
            presence,
            claims: Vec::new(),
            confirmations: Vec::new(),
            flush_scheduled: false,
            flushing: 0,
            stopping: false,
            catching_up: HashSet::new(),
            chaos,
        }
    }

    /// Pushes `frame` to `connection` if it is live, buffers it while it syncs. Records a claim
    /// when the frame was queued.
    fn offer(&mut self, connection: &Connection, message: &Arc<StoredMessage>, frame: &str) {
        {
            let mut sync = connection.sync.lock();
            if let SyncState::Syncing(buffer) = &mut *sync {
                buffer.keep(message.clone());
                return;
            }
        }
        self.push(connection, message, frame.to_owned());
    }

    /// Queues `frame` for `connection`; `true` when it was queued (and is claimed).
    fn push(&mut self, connection: &Connection, message: &StoredMessage, frame: String) -> bool {
        if !connection.outbox.text(frame) {
            return false;
        }
        crate::telemetry::metrics().deliveries_pushed.inc();
        self.claims.push(Claim {
            recipient: connection.user.clone(),
            message_id: message.id.clone(),
            seq: message.seq,
        });
        true
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
        if self.claims.is_empty() && self.confirmations.is_empty() {
            return;
        }
        let claims = std::mem::take(&mut self.claims);
        let confirmations = std::mem::take(&mut self.confirmations);
        let store = self.store.clone();
        self.flushing += 1;
        let write = async move {
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
        };
        ctx.spawn(write.into_actor(self).map(|(), hub, ctx| {
            hub.flushing -= 1;
            if hub.stopping {
                // What came in while stopping is written too; then the hub stops.
                hub.flush(ctx);
                if hub.flushing == 0 {
                    ctx.stop();
                }
            }
        }));
    }
}

impl Actor for DeliveryHub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // After a restart: the previous incarnation may have lost announcements it had in hand
        // (their records are pending) and replays it had not finished. Live connections catch
        // up on their pending records; syncing ones replay from their beginning.
        for connection in self.presence.all() {
            if matches!(*connection.sync.lock(), SyncState::Live) {
                self.catch_up(connection, ctx);
            } else {
                self.sync(connection, ctx);
            }
        }
    }

    fn stopping(&mut self, ctx: &mut Self::Context) -> Running {
        if self.flushing == 0 && self.claims.is_empty() && self.confirmations.is_empty() {
            return Running::Stop;
        }
        // Write the last claims and confirmations before going (bounded by the shutdown
        // timeout): unwritten, they would be pushed or confirmed again later. The flush stops
        // the hub once its writes returned.
        if !self.stopping {
            self.stopping = true;
            self.flush(ctx);
        }
        Running::Continue
    }
}

crate::supervised!(DeliveryHub);

impl Handler<Committed> for DeliveryHub {
    type Result = ();

    fn handle(&mut self, committed: Committed, ctx: &mut Self::Context) {
        // The reservation goes with the handling: whatever the hub keeps (sync buffers) is
        // bounded on its own.
        let messages = committed.messages;
        let uncached: std::collections::HashSet<String> = messages
            .iter()
            .filter(|message| self.directory.cached_members(&message.conversation).is_none())
            .map(|message| message.conversation.clone())
            .collect();
        if uncached.is_empty() {
            self.push_committed(&messages, ctx);
            return;
        }
        // Stored by another process (the Kafka transport): look the members up first. The hub
        // waits meanwhile, so later commits are not pushed ahead of these.
        let directory = self.directory.clone();
        let lookup = async move {
            for conversation in uncached {
                if let Err(error) = directory.members(&conversation).await {
                    tracing::warn!(%error, conversation, "looking up members failed; those messages stay pending");
                }
            }
        };
        ctx.wait(lookup.into_actor(self).map(move |(), hub, ctx| hub.push_committed(&messages, ctx)));
    }
}

impl DeliveryHub {
    /// Offers each message to its recipients' connections on this process.
    fn push_committed(&mut self, messages: &[Arc<StoredMessage>], ctx: &mut Context<Self>) {
        for message in messages {
            if self.chaos && message.body.contains(CHAOS_DELIVERY_PANIC_MARKER) {
                panic!("chaos: delivery panicked announcing message {}", message.id);
            }
            let Some(members) = self.directory.cached_members(&message.conversation) else {
                // Not found: the records stay pending for reconnects and the backstop.
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
            for connection in self.presence.connections_of(&user) {
                self.catch_up(connection, ctx);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{CommitOutcome, NewMessage, SqliteChat, WalPolicy};

    /// What the supervision runner does at shutdown: `ctx.stop()`.
    #[derive(Message)]
    #[rtype(result = "()")]
    struct StopNow;

    impl Handler<StopNow> for DeliveryHub {
        type Result = ();

        fn handle(&mut self, _: StopNow, ctx: &mut Self::Context) {
            ctx.stop();
        }
    }

    #[actix_rt::test]
    async fn a_stopping_hub_writes_its_last_confirmations_before_it_stops() {
        // Regression: `stopping()` spawned its last flush and returned `Stop`, so the flush never
        // ran: confirmations (and claims) of the last 10 ms before a shutdown were lost.
        let dir = tempfile::tempdir().unwrap();
        let sqlite = SqliteChat::open(dir.path(), 1, WalPolicy::default()).unwrap();
        let store: ChatStore = Arc::new(sqlite.clone());
        for user in ["alice", "bob"] {
            store.create_user(user.into(), user.into(), 1).await.unwrap();
        }
        let members = vec!["alice".to_owned(), "bob".to_owned()];
        store.create_conversation("c".into(), "t".into(), "alice".into(), members, 1).await.unwrap().unwrap();
        let message = crate::chat::new_message("alice".into(), "c".into(), "1".into(), "hi".into());
        let batch: Arc<[NewMessage]> = vec![message].into();
        let committed = sqlite.commit_batch(batch, 10).await.unwrap();
        let CommitOutcome::Stored { message, .. } = &committed[0] else { panic!("not stored") };
        let hub = DeliveryHub::new(store.clone(), Directory::new(store.clone()), Presence::new(), false).start();
        hub.send(Confirm { user: "bob".into(), id: message.id.clone() }).await.unwrap();
        // Stopped before its 10 ms flush timer fires.
        hub.send(StopNow).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !store.undelivered("bob".into(), 0, 10, true).await.unwrap().entries.is_empty() {
            assert!(std::time::Instant::now() < deadline, "the confirmation was never written");
            tokio::time::sleep(Duration::from_millis(5)).await; // poll interval, deadline above
        }
    }
}
