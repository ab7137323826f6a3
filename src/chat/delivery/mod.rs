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

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::presence::{Connection, Presence, SyncState};
use super::protocol::message_frame;
use super::Directory;
use crate::socket::{Outbound, Paced};
use crate::storage::{BacklogPage, ChatStore, Claim, StoredMessage};
use crate::supervision::SupervisedMessage;

/// Claims and confirmations are written at most this long after they happen.
const FLUSH_DELAY: Duration = Duration::from_millis(10);
/// Delivery records read per replay or catch-up step (what fits of them is queued, paced).
const REPLAY_PAGE: u32 = 256;

/// With `chaos.enabled`, the hub panics while announcing a message whose body contains this
/// (drills of a hub crash with an announcement in hand).
pub const CHAOS_DELIVERY_PANIC_MARKER: &str = "\u{1F4A5}chaos:delivery-panic";

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
    queued: std::sync::atomic::AtomicUsize,
}

/// What one announcement holds of the budget; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<AnnounceBudget>,
    bytes: usize,
}

impl std::fmt::Debug for AnnounceBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AnnounceBudget({} of {})", self.queued.load(std::sync::atomic::Ordering::Relaxed), self.limit)
    }
}

impl AnnounceBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self { limit, queued: std::sync::atomic::AtomicUsize::new(0) })
    }

    /// Room for `messages`, or `None` (counted as unannounced) when the budget is spent.
    pub fn reserve(self: &Arc<Self>, messages: &[Arc<StoredMessage>]) -> Option<Reservation> {
        use std::sync::atomic::Ordering;
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
        self.budget.queued.fetch_sub(self.bytes, std::sync::atomic::Ordering::AcqRel);
    }
}

/// What an announced message counts for beyond its body.
const ANNOUNCED_MESSAGE_OVERHEAD: usize = 256;

/// Bytes of announcements a process holds at most (`AnnounceBudget`).
pub const ANNOUNCE_BUDGET_BYTES: usize = 64 * 1024 * 1024;

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

    /// Offers a replayed or caught-up message (paced: never over the connection's paced share);
    /// claims it when queued.
    fn offer_paced(&mut self, connection: &Connection, message: &StoredMessage) -> Paced {
        let offered = connection.outbox.offer(Outbound::Text(message_frame(message)));
        if offered == Paced::Queued {
            crate::telemetry::metrics().deliveries_pushed.inc();
            self.claims.push(Claim {
                recipient: connection.user.clone(),
                message_id: message.id.clone(),
                seq: message.seq,
            });
        }
        offered
    }

    /// Offers a page's messages in order until one does not fit: what was queued, and where the
    /// next page starts (after the last queued record when one did not fit). `None` when the
    /// connection closed.
    fn offer_page(&mut self, connection: &Connection, page: BacklogPage, after: i64) -> Option<Offered> {
        let mut offered =
            Offered { queued: Vec::with_capacity(page.entries.len()), through: page.through, complete: true };
        let mut last_queued = after;
        for entry in page.entries {
            match self.offer_paced(connection, &entry.message) {
                Paced::Queued => {
                    last_queued = entry.seq;
                    offered.queued.push(entry.message);
                }
                Paced::Full => {
                    // The rest of this page comes with the next one.
                    (offered.through, offered.complete) = (last_queued, false);
                    break;
                }
                Paced::Closed => return None,
            }
        }
        Some(offered)
    }

    /// Replays `connection`'s backlog from the start, then switches it to live.
    fn sync(&mut self, connection: Arc<Connection>, ctx: &mut Context<Self>) {
        self.replay(connection, 0, ctx);
    }

    /// One step of a replay: wait until the client has drained its outbox to half its paced share,
    /// read the next page (records with seq > `after`) and offer it (paced: up to the share).
    /// Continues after what was queued until the last page.
    fn replay(&mut self, connection: Arc<Connection>, after: i64, ctx: &mut Context<Self>) {
        let step = paced_page(self.store.clone(), connection.clone(), after, true);
        ctx.spawn(step.into_actor(self).map(move |loaded, hub, ctx| {
            let page = match loaded {
                Ok(Some(page)) => page,
                // The connection closed: nothing to replay to.
                Ok(None) => return,
                Err(error) => {
                    // Without its backlog the connection would silently miss messages: close it,
                    // the client reconnects and syncs again.
                    tracing::warn!(%error, user = %connection.user, "could not load a backlog page; closing the connection");
                    connection.outbox.close(1011, "backlog unavailable, reconnect");
                    return;
                }
            };
            let last = page.last;
            let Some(offered) = hub.offer_page(&connection, page, after) else { return };
            let (through, mut complete) = (offered.through, offered.complete);
            let offered = offered.queued;
            // Live messages that arrived meanwhile and that no page will return: stored with a
            // seq at or below the cursor (by another process, whose seqs interleave by time).
            let late = match &mut *connection.sync.lock() {
                SyncState::Syncing(buffer) => buffer.after_page(&offered, through),
                SyncState::Live => Vec::new(),
            };
            let mut late = late.into_iter();
            for message in late.by_ref() {
                if hub.offer_paced(&connection, &message) != Paced::Queued {
                    // Kept for after the next page (its seq is at or below the cursor).
                    let mut rest = vec![message];
                    rest.extend(late.by_ref());
                    if let SyncState::Syncing(buffer) = &mut *connection.sync.lock() {
                        buffer.give_back(rest);
                    }
                    complete = false;
                    break;
                }
            }
            hub.schedule_flush(ctx);
            if complete && last {
                hub.go_live(connection, through, ctx);
            } else {
                hub.replay(connection, through, ctx);
            }
        }));
    }

    /// The backlog is replayed up to `cursor`: push what was committed meanwhile and go live,
    /// unless more was committed than the buffer kept, or than fits (then replay on from storage).
    fn go_live(&mut self, connection: Arc<Connection>, cursor: i64, ctx: &mut Context<Self>) {
        let buffered = match &mut *connection.sync.lock() {
            SyncState::Syncing(buffer) if buffer.overflowed => None,
            SyncState::Syncing(buffer) => Some(buffer.take()),
            SyncState::Live => Some(Vec::new()),
        };
        let Some(buffered) = buffered else {
            return self.replay(connection, cursor, ctx);
        };
        // Committed after the last page query started, and not in that page (`after_page`).
        let mut cursor_now = cursor;
        let mut buffered = buffered.into_iter();
        for message in buffered.by_ref() {
            match self.offer_paced(&connection, &message) {
                Paced::Queued => cursor_now = cursor_now.max(message.seq),
                Paced::Full => {
                    // Storage has them: replay on after what was queued.
                    let mut rest = vec![message];
                    rest.extend(buffered.by_ref());
                    if let SyncState::Syncing(buffer) = &mut *connection.sync.lock() {
                        buffer.give_back(rest);
                    }
                    self.schedule_flush(ctx);
                    return self.replay(connection, cursor_now, ctx);
                }
                Paced::Closed => return,
            }
        }
        {
            let mut sync = connection.sync.lock();
            match &mut *sync {
                // Announced between taking the buffer and now: push them too, then go live.
                SyncState::Syncing(buffer) if !buffer.overflowed => {
                    let more = buffer.take();
                    *sync = SyncState::Live;
                    drop(sync);
                    for message in &more {
                        self.push(&connection, message, message_frame(message));
                    }
                }
                SyncState::Syncing(_) => {
                    drop(sync);
                    self.schedule_flush(ctx);
                    return self.replay(connection, cursor_now, ctx);
                }
                SyncState::Live => {}
            }
        }
        self.schedule_flush(ctx);
    }

    /// Starts pushing `connection`'s pending records (never pushed, or put back by the cleanup
    /// job), page by page at the client's pace like a replay, while it stays live. At most one
    /// catch-up per connection runs at a time.
    fn catch_up(&mut self, connection: Arc<Connection>, ctx: &mut Context<Self>) {
        if !matches!(*connection.sync.lock(), SyncState::Live) {
            // Replaying: the replay reads pending records anyway.
            return;
        }
        if self.catching_up.insert(connection.id) {
            self.catch_up_step(connection, 0, ctx);
        }
    }

    fn catch_up_step(&mut self, connection: Arc<Connection>, after: i64, ctx: &mut Context<Self>) {
        let step = paced_page(self.store.clone(), connection.clone(), after, false);
        ctx.spawn(step.into_actor(self).map(move |loaded, hub, ctx| {
            let page = match loaded {
                Ok(Some(page)) if matches!(*connection.sync.lock(), SyncState::Live) => page,
                Ok(_) => {
                    hub.catching_up.remove(&connection.id);
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, user = %connection.user, "could not load pending deliveries; the cleanup job tries again");
                    hub.catching_up.remove(&connection.id);
                    return;
                }
            };
            let last = page.last;
            let offered = hub.offer_page(&connection, page, after);
            let pushed = offered.as_ref().map_or(0, |offered| offered.queued.len());
            crate::telemetry::metrics().deliveries_caught_up.inc_by(pushed as u64);
            hub.schedule_flush(ctx);
            let Some(Offered { through, complete, .. }) = offered else {
                hub.catching_up.remove(&connection.id);
                return;
            };
            if complete && last {
                hub.catching_up.remove(&connection.id);
            } else {
                hub.catch_up_step(connection, through, ctx);
            }
        }));
    }
}

/// What offering a backlog page queued.
struct Offered {
    queued: Vec<StoredMessage>,
    /// Where the next page starts.
    through: i64,
    /// Everything of the page was queued.
    complete: bool,
}

/// One paced step's page: waits until `connection` drained its outbox to half its paced share,
/// then reads the records after `after` (pending ones, and with `include_in_flight` unconfirmed
/// ones too). A replaying connection's buffer first drops what the page will hold. `None` when
/// the connection closed meanwhile.
async fn paced_page(
    store: ChatStore,
    connection: Arc<Connection>,
    after: i64,
    include_in_flight: bool,
) -> Result<Option<BacklogPage>, crate::storage::StorageError> {
    if !connection.outbox.wait_for_room(connection.outbox.paced_share() / 2).await {
        return Ok(None);
    }
    if let SyncState::Syncing(buffer) = &mut *connection.sync.lock() {
        buffer.before_page(after);
    }
    store.undelivered(connection.user.clone(), after, REPLAY_PAGE, include_in_flight).await.map(Some)
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
