//! `Peer` (`/root/sfu/peers/peer-<n>`): one participant, one `/rtc` socket.
//!
//! Owns: the participant's signaling state and its two peer connections. On the **publisher**
//! connection the client offers and the peer answers; each track that arrives gets a
//! [`Fanout`] and a forwarding task (owned here, so it ends with this incarnation) and is
//! announced to the room. On the **subscriber** connection the peer offers whatever tracks the
//! room says it should receive (`Subscribe`, debounced), one offer at a time, and each
//! subscriber copy goes live in its publisher's fan-out once the client's answer is applied.
//!
//! Negotiation (offers, answers, candidates) is in `negotiation.rs`. webrtc-rs callbacks
//! (`events.rs`) only forward an event to this actor through a weak address
//! tagged with the incarnation's generation: no work, no locks, nothing that keeps the peer
//! alive, and nothing a restarted peer mistakes for its own.
//!
//! Restart (transient): fresh state, so both connections and every forwarding task of the old
//! incarnation are gone (closed by the reaper). The participant stays in its room (membership
//! is in `PeerShared`): the new incarnation re-enters it, the room drops the old tracks and
//! re-sends what to receive, and the client is told `reconnect`: it builds new connections and
//! publishes again.

mod events;
mod negotiation;
mod relay;

use events::{FromConnection, PcEvent};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use actix::prelude::*;
use parking_lot::Mutex;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::PeerConnection;
use webrtc::rtp_transceiver::RtpSender;

use super::cluster::Placement;
use super::media::{Downstream, Fanout, MediaKind, Recycled};
use super::protocol::{self, Candidate, ClientSignal, SignalError, Target};
use super::room::{Join, Leave, MemberInfo, Mute, Publish, TrackRef, Unpublish};
use super::{room_closed, RoomEntry, RoomRefused, SfuCore, Signal};
use crate::socket::Outbound;
use crate::socket::{Disconnected, Inbound, RateLimiter};
use crate::storage::RoomLease;
use crate::supervision::{ActorHandle, SupervisedMessage};
use crate::tasks::OwnedTask;

/// Changes to what a participant receives within this window make one offer.
const SUBSCRIBE_DEBOUNCE: Duration = Duration::from_millis(40);

/// A subscription's key: (publisher participant, track id).
type TrackKey = (String, String);

/// Attempts to reach a moved room (its owner died: the placement holds until its lease expires)
/// before the client is told `unavailable`: 40 × 500 ms.
const MAX_MOVE_ATTEMPTS: u32 = 40;
const MOVE_RETRY: Duration = Duration::from_millis(500);

/// Candidates kept per connection while it cannot take them yet.
const MAX_EARLY_CANDIDATES: usize = 32;

/// Every peer incarnation's generation is unique in the process.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

/// What outlives peer incarnations: identity, the socket, the room the participant is in.
pub struct PeerShared {
    pub participant: String,
    pub user: String,
    pub signal: Arc<Signal>,
    core: Arc<SfuCore>,
    incarnations: AtomicU64,
    handle: OnceLock<ActorHandle<Peer>>,
    membership: Mutex<Option<Arc<RoomEntry>>>,
    /// The user's room slot (`sfu.max_rooms_per_user`) while in a room.
    room_slot: Mutex<Option<super::RoomSlot>>,
    /// A socket another instance opened for a participant of a room placed here
    /// (`/rtc/relay`): served like any, but never relayed on.
    relayed: bool,
    /// The room this participant is in through a relay to its owner instance (`relay.rs`), kept
    /// across incarnations and moves.
    relayed_room: Mutex<Option<String>>,
}

impl PeerShared {
    pub fn new(participant: String, user: String, signal: Arc<Signal>, core: Arc<SfuCore>, relayed: bool) -> Arc<Self> {
        Arc::new(Self {
            participant,
            user,
            signal,
            core,
            incarnations: AtomicU64::new(0),
            handle: OnceLock::new(),
            membership: Mutex::new(None),
            room_slot: Mutex::new(None),
            relayed,
            relayed_room: Mutex::new(None),
        })
    }

    pub fn set_handle(&self, handle: ActorHandle<Peer>) {
        let _ = self.handle.set(handle);
    }

    fn membership(&self) -> Option<Arc<RoomEntry>> {
        self.membership.lock().clone()
    }

    /// Registers in `entry` and sends the room `Join`; `Err(None)` when the room closed first.
    async fn enter(&self, entry: Arc<RoomEntry>) -> Result<Vec<protocol::ParticipantView>, Option<RoomRefused>> {
        let handle =
            self.handle.get().cloned().ok_or_else(|| Some(RoomRefused::Unavailable("peer starting".into())))?;
        entry.peers.lock().insert(self.participant.clone(), handle.clone());
        *self.membership.lock() = Some(entry.clone());
        let join = Join {
            participant: self.participant.clone(),
            user: self.user.clone(),
            peer: handle,
            signal: self.signal.clone(),
        };
        let refused = match entry.room.send(join).await {
            Ok(Ok(participants)) => return Ok(participants),
            Ok(Err(refused)) => Some(refused),
            Err(error) if room_closed(&error) => None,
            Err(error) => Some(RoomRefused::Unavailable(error.to_string())),
        };
        self.forget(&entry);
        Err(refused)
    }

    /// Joins `room` (opening it if needed) after checking access: here, or on the instance the
    /// room is placed on (`sfu.cluster`).
    async fn join(&self, room: String) -> Result<Joined, RoomRefused> {
        let Some(slot) = self.core.rooms_per_user.acquire(&self.user, &room) else {
            crate::telemetry::limit_refused("rooms_per_user");
            return Err(RoomRefused::UserRoomLimit(self.core.rooms_per_user.limit()));
        };
        self.core.may_join(&room, &self.user).await?;
        if let Some(cluster) = &self.core.cluster {
            match cluster.place(&room).await {
                Ok(Placement::Here) => {}
                Ok(Placement::Elsewhere(lease)) => {
                    *self.room_slot.lock() = Some(slot);
                    return Ok(Joined::Elsewhere(lease));
                }
                Err(error) => return Err(RoomRefused::Unavailable(format!("placing the room: {error}"))),
            }
        }
        // A room closing between lookup and join answers `Stopped`: the next lookup opens a new one.
        for _ in 0..3 {
            let entry = self.core.room(&room)?;
            match self.enter(entry).await {
                Ok(participants) => {
                    *self.room_slot.lock() = Some(slot);
                    return Ok(Joined::Here(participants));
                }
                Err(Some(refused)) => return Err(refused),
                Err(None) => continue,
            }
        }
        Err(RoomRefused::Unavailable("the room kept closing; try again".into()))
    }

    fn forget(&self, entry: &Arc<RoomEntry>) {
        entry.peers.lock().remove(&self.participant);
        let mut membership = self.membership.lock();
        if membership.as_ref().is_some_and(|current| Arc::ptr_eq(current, entry)) {
            *membership = None;
        }
    }

    /// Leaves the room, if in one; returns its name.
    fn leave(&self) -> Option<String> {
        drop(self.room_slot.lock().take());
        let entry = self.membership.lock().take()?;
        entry.peers.lock().remove(&self.participant);
        let _ = entry.room.do_send(Leave { participant: self.participant.clone() });
        Some(entry.name.clone())
    }
}

/// Where a join landed.
enum Joined {
    /// In the room here; its members.
    Here(Vec<protocol::ParticipantView>),
    /// The room is placed on another instance.
    Elsewhere(RoomLease),
}

struct Published {
    fanout: Arc<Fanout>,
    _forward: OwnedTask<()>,
}

struct Subscription {
    fanout: Weak<Fanout>,
    downstream: Arc<Downstream>,
    sender: Arc<dyn RtpSender>,
    /// Once the client's answer is in: writing what queued for it (`Downstream::drain`) and
    /// relaying its keyframe requests.
    live: Option<OwnedTask<()>>,
}

/// The subscriber connection's offer/answer state.
#[derive(Default)]
struct Negotiation {
    /// An offer was sent and its answer has not come.
    awaiting_answer: bool,
    /// What to receive changed while an offer was out: offer again after the answer.
    again: bool,
    /// A debounced sync is pending.
    scheduled: bool,
    /// Offer even if nothing changed (the room restarted).
    force: bool,
}

pub struct Peer {
    shared: Arc<PeerShared>,
    generation: u64,
    limiter: RateLimiter,
    publisher: Option<Arc<dyn PeerConnection>>,
    subscriber: Option<Arc<dyn PeerConnection>>,
    published: HashMap<String, Published>,
    subscriptions: HashMap<TrackKey, Subscription>,
    wanted: Vec<TrackRef>,
    negotiation: Negotiation,
    /// SSRCs of ended subscriptions by the index of the transceiver that carried them, reused
    /// by the next ones of the same kind on that same transceiver (see `sync_subscriptions`).
    ssrc_pool: HashMap<MediaKind, BTreeMap<usize, Recycled>>,
    /// Connections with a remote description (they take candidates), and candidates that came
    /// before theirs had one: a client may trickle before its offer arrives, or still trickle
    /// for a connection it is replacing. Applied when the description is set.
    described: HashSet<Target>,
    early: HashMap<Target, Vec<Candidate>>,
    /// Signaling relayed to the room's owner instance, when the room is placed there.
    relay: Option<relay::Relay>,
    /// Tells a relay's end from an older one's.
    relay_epoch: u64,
    /// Attempts so far to reach a room that moved.
    moves: u32,
    /// The moved room being followed (none once joined, left or given up).
    following: Option<String>,
}

impl Peer {
    pub fn new(shared: Arc<PeerShared>) -> Self {
        let config = &shared.core.config;
        let limiter = RateLimiter::new(config.signaling_rate_per_sec, config.signaling_burst);
        Self {
            shared,
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
            limiter,
            publisher: None,
            subscriber: None,
            published: HashMap::new(),
            subscriptions: HashMap::new(),
            wanted: Vec::new(),
            negotiation: Negotiation::default(),
            ssrc_pool: HashMap::new(),
            described: HashSet::new(),
            early: HashMap::new(),
            relay: None,
            relay_epoch: 0,
            moves: 0,
            following: None,
        }
    }

    fn reject(&self, error: SignalError) {
        self.shared.signal.send(error.to_json());
    }

    /// Runs a webrtc-rs step on the media runtime while this peer handles nothing else, then
    /// `then` with its outcome (`Err`: the step panicked or was cancelled).
    fn media_step<F, T>(
        &mut self,
        ctx: &mut Context<Self>,
        name: &'static str,
        step: F,
        then: impl FnOnce(&mut Self, Result<T, String>, &mut Context<Self>) + 'static,
    ) where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let media = self.shared.core.media.clone();
        ctx.wait(
            async move { media.run(name, step).await }
                .into_actor(self)
                .map(move |outcome, peer, ctx| then(peer, outcome, ctx)),
        );
    }

    /// Closes both connections and forgets every track (left the room, or a failed connection).
    fn reset_media(&mut self) {
        let media = &self.shared.core.media;
        for connection in [self.publisher.take(), self.subscriber.take()].into_iter().flatten() {
            media.close(connection);
        }
        // Dropping a publication cancels its forwarding task.
        self.published.clear();
        for ((_, _), subscription) in self.subscriptions.drain() {
            if let Some(fanout) = subscription.fanout.upgrade() {
                fanout.remove(&self.shared.participant);
            }
        }
        self.wanted.clear();
        self.negotiation = Negotiation::default();
        // A new subscriber connection starts from fresh SSRCs.
        self.ssrc_pool.clear();
        self.described.clear();
        self.early.clear();
    }

    fn handle_signal(&mut self, signal: ClientSignal, ctx: &mut Context<Self>) {
        match signal {
            ClientSignal::Ping => self.shared.signal.send(protocol::pong()),
            ClientSignal::Join { room } => self.join(room, ctx),
            ClientSignal::Leave if self.shared.relayed_room.lock().is_some() => {
                let room = self.stop_relay().unwrap_or_default();
                self.shared.signal.send(protocol::left(&room));
            }
            ClientSignal::Leave if self.following.is_some() => {
                let room = self.stop_relay().or(self.following.take()).unwrap_or_default();
                self.shared.signal.send(protocol::left(&room));
            }
            ClientSignal::Leave => match self.shared.leave() {
                Some(room) => {
                    self.reset_media();
                    self.shared.signal.send(protocol::left(&room));
                }
                None => self.reject(SignalError::new("not_joined", "leave: you are not in a room")),
            },
            ClientSignal::Offer { target: Target::Publisher, sdp } => self.publisher_offer(sdp, ctx),
            ClientSignal::Offer { target: Target::Subscriber, .. } => self.reject(SignalError::new(
                "wrong_target",
                "offer: the server offers on the subscriber connection; answer it instead",
            )),
            ClientSignal::Answer { target: Target::Subscriber, sdp } => self.subscriber_answer(sdp, ctx),
            ClientSignal::Answer { target: Target::Publisher, .. } => self.reject(SignalError::new(
                "unexpected_answer",
                "answer: the publisher connection is answered by the server; send an offer",
            )),
            ClientSignal::Candidate { target, candidate } => self.add_candidate(target, candidate, ctx),
            ClientSignal::Mute { track, muted } => self.mute(track, muted),
        }
    }

    fn join(&mut self, room: String, ctx: &mut Context<Self>) {
        if let Some(entry) = self.shared.membership() {
            let message = format!("join: already in room {:?}; leave it first", entry.name);
            return self.reject(SignalError::new("already_joined", message));
        }
        if let (Some(_), Some(current)) = (&self.relay, self.shared.relayed_room.lock().clone()) {
            let message = format!("join: already in room {current:?}; leave it first");
            return self.reject(SignalError::new("already_joined", message));
        }
        let shared = self.shared.clone();
        let name = room.clone();
        ctx.wait(async move { shared.join(room).await }.into_actor(self).map(
            move |outcome, peer, ctx| match outcome {
                Ok(Joined::Here(participants)) => {
                    peer.moves = 0;
                    peer.following = None;
                    *peer.shared.relayed_room.lock() = None;
                    let shared = &peer.shared;
                    let ice_servers =
                        shared.core.turn.as_ref().map(|turn| turn.ice_servers(&shared.participant)).unwrap_or_default();
                    shared.signal.send(protocol::joined(&name, &shared.participant, &participants, &ice_servers));
                }
                // Placed elsewhere while another instance relays to here: that instance places
                // the room again and relays to the owner.
                Ok(Joined::Elsewhere(_)) if peer.shared.relayed => {
                    peer.shared.signal.outbox.close(4409, "the room is placed on another instance");
                    ctx.stop();
                }
                Ok(Joined::Elsewhere(lease)) => peer.start_relay(name, lease, ctx),
                // This instance cannot serve the room now (its store is away, e.g. while it
                // fences the room): not a refusal of the participant. The relaying instance
                // places the room again, as after a move, until another instance takes it.
                Err(RoomRefused::Unavailable(reason)) if peer.shared.relayed => {
                    tracing::info!(room = %name, reason, "a relayed join this instance cannot serve now");
                    peer.shared.signal.outbox.close(4503, "the room is unavailable on this instance");
                    ctx.stop();
                }
                Err(refused) => {
                    if peer.moves > 0 {
                        peer.stop_relay();
                    }
                    peer.reject(SignalError::new(refused.code(), format!("join {name:?}: {refused}")))
                }
            },
        ));
    }

    /// Relays this participant's signaling to `lease`'s owner, which runs the room.
    fn start_relay(&mut self, room: String, lease: RoomLease, ctx: &mut Context<Self>) {
        let Some(cluster) = self.shared.core.cluster.clone() else { return };
        self.relay_epoch += 1;
        let epoch = self.relay_epoch;
        *self.shared.relayed_room.lock() = Some(room.clone());
        crate::action!("sfu", "relaying to the room's instance", room = room, owner = lease.owner);
        let route = relay::Route {
            owner_url: lease.address,
            credential: cluster.sign(&self.shared.user),
            user: self.shared.user.clone(),
            room,
            max_frame_bytes: self.shared.core.config.max_frame_bytes,
        };
        let address = ctx.address();
        self.relay = Some(relay::Relay::start(route, self.shared.signal.clone(), move |event| {
            address.do_send(FromRelay { epoch, event });
        }));
    }

    /// Stops relaying (and following a moved room); the room it was relayed to, if any.
    fn stop_relay(&mut self) -> Option<String> {
        self.relay = None;
        self.relay_epoch += 1;
        self.moves = 0;
        self.following = None;
        drop(self.shared.room_slot.lock().take());
        self.shared.relayed_room.lock().take()
    }

    /// The room moved (its owner died, drained, or lost the placement): the client drops its
    /// connections and waits for the next `joined`, from wherever the room runs now.
    fn follow_room(&mut self, room: String, ctx: &mut Context<Self>) {
        if self.moves == 0 {
            crate::action!("sfu", "room moved", room = room, participant = self.shared.participant);
            self.shared.signal.send(protocol::rejoin("the room moved to another instance"));
        }
        self.moves += 1;
        if self.moves > MAX_MOVE_ATTEMPTS {
            self.moves = 0;
            self.stop_relay();
            let message = format!("join {room:?}: the room's instance went away and no other took it over");
            return self.reject(SignalError::new("unavailable", message));
        }
        let delay = if self.moves == 1 { Duration::ZERO } else { MOVE_RETRY };
        self.following = Some(room.clone());
        ctx.run_later(delay, move |peer, ctx| {
            // Unless the client left (or joined elsewhere) meanwhile.
            if peer.following.as_deref() == Some(room.as_str()) {
                peer.join(room, ctx);
            }
        });
    }

    /// The `target` connection, or (on the media runtime) a new one.
    fn connection(
        &self,
        ctx: &Context<Self>,
        target: Target,
    ) -> impl std::future::Future<Output = Result<Arc<dyn PeerConnection>, String>> + Send + 'static {
        let existing = match target {
            Target::Publisher => self.publisher.clone(),
            Target::Subscriber => self.subscriber.clone(),
        };
        let events = self.events(ctx, target);
        let core = self.shared.core.clone();
        async move {
            match existing {
                Some(connection) => Ok(connection),
                None => core.media.connection(events).await,
            }
        }
    }

    fn mute(&mut self, track: String, muted: bool) {
        let Some(published) = self.published.get(&track) else {
            return self.reject(SignalError::new("unknown_track", format!("mute: you publish no track {track:?}")));
        };
        published.fanout.set_muted(muted);
        if let Some(entry) = self.shared.membership() {
            let _ = entry.room.do_send(Mute { participant: self.shared.participant.clone(), track, muted });
        }
    }

    fn track_arrived(&mut self, remote: Arc<dyn TrackRemote>, ctx: &mut Context<Self>) {
        let participant = self.shared.participant.clone();
        self.media_step(
            ctx,
            "sfu.track",
            async move { Fanout::of(&participant, remote).await },
            |peer, outcome, ctx| {
                let Ok(Some(fanout)) = outcome else { return };
                let Some(entry) = peer.shared.membership() else { return };
                let track = fanout.track.clone();
                let weak = ctx.address().downgrade();
                let generation = peer.generation;
                let forwarding = fanout.clone();
                let ended = track.clone();
                let forward = peer.shared.core.media.spawn("sfu.forward", async move {
                    forwarding.forward().await;
                    if let Some(peer) = weak.upgrade() {
                        peer.do_send(FromConnection {
                            generation,
                            target: Target::Publisher,
                            event: PcEvent::TrackEnded(ended),
                        });
                    }
                });
                let reference = TrackRef {
                    publisher: peer.shared.participant.clone(),
                    track: track.clone(),
                    kind: fanout.kind,
                    muted: false,
                    fanout: Arc::downgrade(&fanout),
                };
                peer.published.insert(track, Published { fanout, _forward: forward });
                let _ = entry.room.do_send(Publish { track: reference });
            },
        );
    }

    fn track_ended(&mut self, track: String) {
        if self.published.remove(&track).is_some() {
            if let Some(entry) = self.shared.membership() {
                let _ = entry.room.do_send(Unpublish { participant: self.shared.participant.clone(), track });
            }
        }
    }

    /// A connection failed for good (ICE consent lost): start over, like after a restart.
    fn connection_failed(&mut self, target: Target) {
        tracing::info!(participant = %self.shared.participant, target = target.as_str(), "peer connection failed; asking the client to reconnect");
        self.start_over("connection failed");
    }

    /// Drops both connections and every published track, asks the client to connect again
    /// (`reason` in the `reconnect` frame) and re-enters the room.
    fn start_over(&mut self, reason: &str) {
        let tracks: Vec<String> = self.published.keys().cloned().collect();
        for track in tracks {
            self.track_ended(track);
        }
        self.reset_media();
        self.shared.signal.send(protocol::reconnect(reason));
        if let Some(entry) = self.shared.membership() {
            self.rejoin(&entry);
        }
    }

    /// Re-enters the room as the same participant; the room answers with `Subscribe`.
    fn rejoin(&self, entry: &Arc<RoomEntry>) {
        let Some(handle) = self.shared.handle.get().cloned() else { return };
        let join = Join {
            participant: self.shared.participant.clone(),
            user: self.shared.user.clone(),
            peer: handle,
            signal: self.shared.signal.clone(),
        };
        if let Err(error) = entry.room.do_send(join) {
            tracing::warn!(%error, room = %entry.name, "could not re-enter the room");
        }
    }
}

impl Actor for Peer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let timeout = self.shared.core.client_timeout;
        ctx.run_interval(self.shared.core.heartbeat_interval, move |peer, ctx| {
            if peer.shared.signal.last_seen.lock().elapsed() > timeout {
                tracing::info!(participant = %peer.shared.participant, "rtc heartbeat timed out");
                peer.shared.signal.outbox.close(1001, "heartbeat timeout");
                ctx.stop();
            } else {
                peer.shared.signal.outbox.push(Outbound::Ping);
            }
        });
        if self.shared.incarnations.fetch_add(1, Ordering::Relaxed) == 0 {
            return;
        }
        // Restarted while relayed: the relay went with the old incarnation; relay again.
        let relayed_room = self.shared.relayed_room.lock().clone();
        if let Some(room) = relayed_room {
            crate::action!("sfu", "peer restarted", participant = self.shared.participant);
            return self.follow_room(room, ctx);
        }
        // Restarted: the old connections are gone; the client builds new ones.
        crate::action!("sfu", "peer restarted", participant = self.shared.participant);
        self.shared.signal.send(protocol::reconnect("the server restarted your connection"));
        if let Some(entry) = self.shared.membership() {
            self.rejoin(&entry);
        }
    }

    fn stopping(&mut self, _ctx: &mut Self::Context) -> Running {
        if let Some(room) = self.shared.leave() {
            // At shutdown the client hears it left, then 1001 (no-ops when the socket closed).
            self.shared.signal.send(protocol::left(&room));
        }
        self.reset_media();
        self.shared.signal.outbox.close(1001, "server going away");
        Running::Stop
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // A crashed incarnation's connections: closed in the background, not leaked.
        self.reset_media();
    }
}

crate::supervised!(Peer);

impl Handler<Inbound> for Peer {
    type Result = ();

    fn handle(&mut self, inbound: Inbound, ctx: &mut Self::Context) {
        let text = match inbound {
            Inbound::Text(text) => text,
            Inbound::Binary => {
                return self
                    .reject(SignalError::new("unsupported_frame", "binary frames are not supported; send JSON text"))
            }
        };
        if !self.limiter.try_take() {
            return self.reject(SignalError::new("rate_limited", "too many signaling frames; slow down"));
        }
        if let Some(relay) = &self.relay {
            // The owner answers everything but `leave`, which ends the relay here.
            if !matches!(protocol::parse(&text), Ok(ClientSignal::Leave)) {
                if !relay.forward(text) {
                    self.reject(SignalError::new("rate_limited", "the room's instance is behind; slow down"));
                }
                return;
            }
        }
        match protocol::parse(&text) {
            Ok(signal) => self.handle_signal(signal, ctx),
            Err(error) => self.reject(error),
        }
    }
}

impl Handler<Disconnected> for Peer {
    type Result = ();

    fn handle(&mut self, _: Disconnected, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// What the relay to the room's owner reports: joined, or ended by itself (the owner refused,
/// closed, died, or was not there).
#[derive(Message)]
#[rtype(result = "()")]
struct FromRelay {
    epoch: u64,
    event: relay::RelayEvent,
}

impl Handler<FromRelay> for Peer {
    type Result = ();

    fn handle(&mut self, message: FromRelay, ctx: &mut Self::Context) {
        if message.epoch != self.relay_epoch {
            return;
        }
        let end = match message.event {
            // In the room through the relay: a later move is a new one.
            relay::RelayEvent::Joined => {
                self.moves = 0;
                self.following = None;
                return;
            }
            relay::RelayEvent::Ended(end) => end,
        };
        self.relay = None;
        let Some(room) = self.shared.relayed_room.lock().clone() else { return };
        match end {
            // The client has the owner's error frame (room full...): not in the room.
            relay::RelayEnd::Refused => {
                self.stop_relay();
            }
            relay::RelayEnd::Lost(reason) => {
                tracing::info!(room, participant = %self.shared.participant, reason, "relay to the room's instance ended");
                self.follow_room(room, ctx);
            }
        }
    }
}

/// From this instance's placement keeper: `room` is no longer placed here.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Moved {
    pub room: String,
}
impl SupervisedMessage for Moved {}

impl Handler<Moved> for Peer {
    type Result = ();

    fn handle(&mut self, moved: Moved, ctx: &mut Self::Context) {
        if self.shared.membership().is_none_or(|entry| entry.name != moved.room) {
            return;
        }
        if self.shared.relayed {
            // Its instance places the room again and relays to the new owner.
            self.shared.signal.outbox.close(4409, "the room moved to another instance");
            return ctx.stop();
        }
        self.shared.leave();
        self.reset_media();
        self.follow_room(moved.room, ctx);
    }
}

/// How a participant's media reaches this instance (`/admin/rooms`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct MediaPath {
    /// The remote end of the selected ICE pair: `host`, `srflx`, `prflx` or `relay` (the client
    /// reaches this instance through a TURN server).
    pub candidate: String,
    /// `udp` or `tcp`.
    pub protocol: String,
}

/// From `/admin/rooms`: this participant's media path and whether its socket is relayed from
/// another instance.
#[derive(Debug, Message)]
#[rtype(result = "(Option<MediaPath>, bool)")]
pub struct Connection;
impl SupervisedMessage for Connection {}

impl Handler<Connection> for Peer {
    type Result = ResponseFuture<(Option<MediaPath>, bool)>;

    fn handle(&mut self, _: Connection, _ctx: &mut Self::Context) -> Self::Result {
        let relayed = self.shared.relayed;
        let Some(connection) = self.publisher.clone().or_else(|| self.subscriber.clone()) else {
            return Box::pin(async move { (None, relayed) });
        };
        let media = self.shared.core.media.clone();
        Box::pin(async move {
            let path = media.run("sfu.stats", async move { media_path(&connection).await }).await.ok().flatten();
            (path, relayed)
        })
    }
}

/// The selected pair's remote candidate, from the connection's stats.
async fn media_path(connection: &Arc<dyn PeerConnection>) -> Option<MediaPath> {
    use rtc::statistics::report::RTCStatsReportEntry;
    let report = connection.get_stats(std::time::Instant::now(), rtc::statistics::StatsSelector::None).await;
    let pair = match report.get(&report.transport()?.selected_candidate_pair_id)? {
        RTCStatsReportEntry::IceCandidatePair(pair) => pair,
        _ => return None,
    };
    // webrtc-rs 0.21 names the candidate entries `RTCRemoteIceCandidate_<id>` while the pair
    // names them `<id>`: either is looked up.
    let candidate = |prefix: &str, id: &str| report.get(id).or_else(|| report.get(&format!("{prefix}_{id}")));
    match candidate("RTCRemoteIceCandidate", &pair.remote_candidate_id) {
        Some(RTCStatsReportEntry::RemoteCandidate(remote)) => {
            Some(MediaPath { candidate: remote.candidate_type.to_string(), protocol: remote.protocol.to_lowercase() })
        }
        // Not a candidate the client signaled: one learned from its checks (peer-reflexive,
        // e.g. the far end of an active ICE-TCP connection); the protocol is our end's.
        _ => match candidate("RTCLocalIceCandidate", &pair.local_candidate_id)? {
            RTCStatsReportEntry::LocalCandidate(local) => {
                Some(MediaPath { candidate: "prflx".into(), protocol: local.protocol.to_lowercase() })
            }
            _ => None,
        },
    }
}

/// From the SFU: the embedded TURN relay restarted and lost every allocation. A participant
/// whose media came through a relay starts over now (its client allocates anew), rather than
/// after ICE gives its connections up (~30 s of silence).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RelayRestarted;
impl SupervisedMessage for RelayRestarted {}

impl Handler<RelayRestarted> for Peer {
    type Result = ();

    fn handle(&mut self, _: RelayRestarted, ctx: &mut Self::Context) {
        let connections: Vec<Arc<dyn PeerConnection>> =
            [self.publisher.clone(), self.subscriber.clone()].into_iter().flatten().collect();
        if connections.is_empty() {
            return;
        }
        let media = self.shared.core.media.clone();
        let checked = connections.clone();
        let relayed = async move {
            for connection in checked {
                let path = media.run("sfu.stats", async move { media_path(&connection).await }).await.ok().flatten();
                if path.is_some_and(|path| path.candidate == "relay") {
                    return true;
                }
            }
            false
        };
        ctx.spawn(relayed.into_actor(self).map(move |relayed, peer, _ctx| {
            // Unless the connections were replaced meanwhile (the client already reconnected).
            let current = [&peer.publisher, &peer.subscriber];
            let same = connections
                .iter()
                .all(|checked| current.iter().any(|now| now.as_ref().is_some_and(|now| Arc::ptr_eq(now, checked))));
            if relayed && same {
                tracing::info!(participant = %peer.shared.participant, "the relay restarted; asking the client to reconnect");
                peer.start_over("the relay restarted");
            }
        }));
    }
}

/// From the room: the tracks this participant should receive now.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    pub tracks: Vec<TrackRef>,
    /// Offer even if nothing changed (the room was rebuilt).
    pub renegotiate: bool,
}
impl SupervisedMessage for Subscribe {}

impl Handler<Subscribe> for Peer {
    type Result = ();

    fn handle(&mut self, subscribe: Subscribe, ctx: &mut Self::Context) {
        self.wanted = subscribe.tracks;
        self.negotiation.force |= subscribe.renegotiate;
        self.schedule_sync(ctx);
    }
}

/// From a restarting room: this participant, if it is in `room`.
#[derive(Debug, Message)]
#[rtype(result = "Option<MemberInfo>")]
pub struct Describe {
    pub room: String,
}
impl SupervisedMessage for Describe {}

impl Handler<Describe> for Peer {
    type Result = Option<MemberInfo>;

    fn handle(&mut self, describe: Describe, _ctx: &mut Self::Context) -> Self::Result {
        let entry = self.shared.membership()?;
        if entry.name != describe.room {
            return None;
        }
        let tracks = self
            .published
            .values()
            .map(|published| TrackRef {
                publisher: self.shared.participant.clone(),
                track: published.fanout.track.clone(),
                kind: published.fanout.kind,
                muted: published.fanout.muted(),
                fanout: Arc::downgrade(&published.fanout),
            })
            .collect();
        Some(MemberInfo {
            participant: self.shared.participant.clone(),
            user: self.shared.user.clone(),
            peer: self.shared.handle.get()?.clone(),
            signal: self.shared.signal.clone(),
            tracks,
        })
    }
}
