//! Backlog replay and catch-up: a connection's undelivered records, read page by page and
//! offered to its outbox paced in bytes (see the module above for why).

use std::sync::Arc;

use actix::prelude::*;

use super::DeliveryHub;
use crate::chat::presence::{Connection, SyncState};
use crate::chat::protocol::message_frame;
use crate::socket::{Outbound, Paced};
use crate::storage::{BacklogPage, ChatStore, Claim, StoredMessage};

/// Delivery records read per replay or catch-up step (what fits of them is queued, paced).
const REPLAY_PAGE: u32 = 256;

impl DeliveryHub {
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
    pub(super) fn sync(&mut self, connection: Arc<Connection>, ctx: &mut Context<Self>) {
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
    pub(super) fn catch_up(&mut self, connection: Arc<Connection>, ctx: &mut Context<Self>) {
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
