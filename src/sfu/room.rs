//! `Room` (`/root/sfu/rooms/room-<n>`): who is in one room and which tracks they publish.
//!
//! Owns: membership (participant → user, peer, socket, published tracks) and the fan-out of
//! room events to members' sockets (`participant_joined`, `track_published`...). Whenever the
//! set of tracks a member should receive changes, it tells that member's peer (`Subscribe`);
//! the peer negotiates. No media passes through here.
//!
//! Membership is a view of the live peers: a restarted room asks every peer registered in its
//! registry entry what it publishes (`Describe`) and rebuilds from the answers, then has every
//! subscriber re-offered. A peer that stopped is not in the registry, so no ghost survives.
//! Closes (a normal stop: transient, not restarted) after `sfu.empty_timeout` without members.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use actix::prelude::*;

use super::media::{Fanout, MediaKind};
use super::peer::{Describe, Peer, Subscribe};
use super::protocol::{self, ParticipantView, TrackView};
use super::{ParticipantAdminView, RoomEntry, RoomRefused, SfuCore, Signal, TrackAdminView};
use crate::supervision::{ActorHandle, SupervisedMessage};

/// A published track as rooms and subscribers know it: never a strong reference to the
/// publisher's fan-out, which lives as long as the publisher's connection.
#[derive(Clone)]
pub struct TrackRef {
    pub publisher: String,
    pub track: String,
    pub kind: MediaKind,
    pub muted: bool,
    pub fanout: Weak<Fanout>,
}

impl std::fmt::Debug for TrackRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} ({})", self.publisher, self.track, self.kind.as_str())
    }
}

impl TrackRef {
    fn view(&self) -> TrackView {
        TrackView { track: self.track.clone(), kind: self.kind.as_str(), muted: self.muted }
    }
}

/// What a peer tells a (re)starting room about itself.
pub struct MemberInfo {
    pub participant: String,
    pub user: String,
    pub peer: ActorHandle<Peer>,
    pub signal: Arc<Signal>,
    pub tracks: Vec<TrackRef>,
}

struct Member {
    user: String,
    peer: ActorHandle<Peer>,
    signal: Arc<Signal>,
    tracks: BTreeMap<String, TrackRef>,
}

/// What outlives room incarnations: the name, the registry entry, the SFU.
pub struct RoomShared {
    name: String,
    core: Arc<SfuCore>,
    entry: OnceLock<Weak<RoomEntry>>,
    incarnations: AtomicU64,
}

impl RoomShared {
    pub fn new(name: String, core: Arc<SfuCore>) -> Arc<Self> {
        Arc::new(Self { name, core, entry: OnceLock::new(), incarnations: AtomicU64::new(0) })
    }

    pub fn set_entry(&self, entry: &Arc<RoomEntry>) {
        let _ = self.entry.set(Arc::downgrade(entry));
    }

    fn entry(&self) -> Option<Arc<RoomEntry>> {
        self.entry.get().and_then(Weak::upgrade)
    }
}

pub struct Room {
    shared: Arc<RoomShared>,
    members: BTreeMap<String, Member>,
    close_timer: Option<SpawnHandle>,
}

impl Room {
    pub fn new(shared: Arc<RoomShared>) -> Self {
        Self { shared, members: BTreeMap::new(), close_timer: None }
    }

    fn broadcast(&self, except: &str, frame: &str) {
        for (participant, member) in &self.members {
            if participant != except {
                member.signal.send(frame.to_owned());
            }
        }
    }

    /// Tells `participant`'s peer every track of the others.
    fn subscribe(&self, participant: &str, renegotiate: bool) {
        let Some(member) = self.members.get(participant) else { return };
        let tracks: Vec<TrackRef> = self
            .members
            .iter()
            .filter(|(other, _)| other.as_str() != participant)
            .flat_map(|(_, other)| other.tracks.values().cloned())
            .collect();
        if let Err(error) = member.peer.do_send(Subscribe { tracks, renegotiate }) {
            tracing::debug!(%error, participant, "peer gone before its subscriptions were updated");
        }
    }

    fn subscribe_all_but(&self, except: &str) {
        for participant in self.members.keys() {
            if participant != except {
                self.subscribe(participant, false);
            }
        }
    }

    fn participants(&self) -> Vec<ParticipantView> {
        self.members
            .iter()
            .map(|(participant, member)| ParticipantView {
                participant: participant.clone(),
                user: member.user.clone(),
                tracks: member.tracks.values().map(TrackRef::view).collect(),
            })
            .collect()
    }

    /// Publishes the counts and arms (or disarms) the empty-room timer.
    fn changed(&mut self, ctx: &mut Context<Self>) {
        if let Some(entry) = self.shared.entry() {
            let tracks = self.members.values().map(|member| member.tracks.len()).sum();
            *entry.counts.lock() = (self.members.len(), tracks);
        }
        self.shared.core.refresh_metrics();
        if !self.members.is_empty() {
            if let Some(timer) = self.close_timer.take() {
                ctx.cancel_future(timer);
            }
        } else if self.close_timer.is_none() {
            let timeout = self.shared.core.config.empty_timeout;
            self.close_timer = Some(ctx.run_later(timeout, |room, ctx| {
                room.close_timer = None;
                room.close_if_empty(ctx);
            }));
        }
    }

    fn close_if_empty(&mut self, ctx: &mut Context<Self>) {
        let Some(entry) = self.shared.entry() else {
            ctx.stop();
            return;
        };
        // A peer registers itself before it joins: one on its way in keeps the room open.
        if !self.members.is_empty() || !entry.peers.lock().is_empty() {
            return;
        }
        self.shared.core.remove_room(&entry);
        ctx.stop();
    }

    /// Removes `participant`'s tracks, telling the others.
    fn drop_tracks(&mut self, participant: &str) {
        let Some(member) = self.members.get_mut(participant) else { return };
        let tracks = std::mem::take(&mut member.tracks);
        for track in tracks.keys() {
            self.broadcast(participant, &protocol::track_unpublished(participant, track));
        }
    }
}

impl Actor for Room {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let incarnation = self.shared.incarnations.fetch_add(1, Ordering::Relaxed);
        if incarnation == 0 {
            self.changed(ctx);
            return;
        }
        // Restarted: membership is whatever the live peers say it is.
        let Some(entry) = self.shared.entry() else { return };
        let peers: Vec<ActorHandle<Peer>> = entry.peers.lock().values().cloned().collect();
        let name = self.shared.name.clone();
        crate::action!("sfu", "room rebuilding", room = name, peers = peers.len());
        ctx.wait(
            async move {
                let mut members = Vec::with_capacity(peers.len());
                for peer in peers {
                    if let Ok(Some(info)) = peer.send_timeout(Describe { room: name.clone() }, DESCRIBE_TIMEOUT).await {
                        members.push(info);
                    }
                }
                members
            }
            .into_actor(self)
            .map(|members, room, ctx| {
                for info in members {
                    let tracks = info.tracks.into_iter().map(|track| (track.track.clone(), track)).collect();
                    room.members.insert(
                        info.participant,
                        Member { user: info.user, peer: info.peer, signal: info.signal, tracks },
                    );
                }
                for participant in room.members.keys() {
                    room.subscribe(participant, true);
                }
                room.changed(ctx);
            }),
        );
    }
}

crate::supervised!(Room);

/// How long a restarting room waits for each peer's description.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A participant enters (or, after its peer restarted, re-enters) the room.
#[derive(Message)]
#[rtype(result = "Result<Vec<ParticipantView>, RoomRefused>")]
pub struct Join {
    pub participant: String,
    pub user: String,
    pub peer: ActorHandle<Peer>,
    pub signal: Arc<Signal>,
}
impl SupervisedMessage for Join {}

impl std::fmt::Debug for Join {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Join").field("participant", &self.participant).field("user", &self.user).finish()
    }
}

impl Handler<Join> for Room {
    type Result = Result<Vec<ParticipantView>, RoomRefused>;

    fn handle(&mut self, join: Join, ctx: &mut Self::Context) -> Self::Result {
        let name = self.shared.name.clone();
        if self.members.contains_key(&join.participant) {
            // The same participant with a fresh peer: its old tracks are gone with the old one.
            self.drop_tracks(&join.participant);
            if let Some(member) = self.members.get_mut(&join.participant) {
                member.peer = join.peer;
                member.signal = join.signal;
            }
            crate::action!("sfu", "rejoined", room = name, participant = join.participant);
        } else {
            let max = self.shared.core.config.max_participants;
            if self.members.len() >= max {
                return Err(RoomRefused::Full(max));
            }
            self.broadcast(&join.participant, &protocol::participant_joined(&join.participant, &join.user));
            crate::action!("sfu", "joined", room = name, participant = join.participant, user = join.user);
            self.members.insert(
                join.participant.clone(),
                Member { user: join.user, peer: join.peer, signal: join.signal, tracks: BTreeMap::new() },
            );
        }
        let participants =
            self.participants().into_iter().filter(|view| view.participant != join.participant).collect();
        self.subscribe(&join.participant, true);
        self.subscribe_all_but(&join.participant);
        self.changed(ctx);
        Ok(participants)
    }
}

/// A participant leaves (its `leave`, its socket closed, its peer stopped).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Leave {
    pub participant: String,
}
impl SupervisedMessage for Leave {}

impl Handler<Leave> for Room {
    type Result = ();

    fn handle(&mut self, leave: Leave, ctx: &mut Self::Context) {
        if self.members.remove(&leave.participant).is_some() {
            crate::action!("sfu", "left", room = self.shared.name, participant = leave.participant);
            self.broadcast(&leave.participant, &protocol::participant_left(&leave.participant));
            self.subscribe_all_but(&leave.participant);
        }
        self.changed(ctx);
    }
}

/// A participant's track started arriving.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Publish {
    pub track: TrackRef,
}
impl SupervisedMessage for Publish {}

impl Handler<Publish> for Room {
    type Result = ();

    fn handle(&mut self, Publish { track }: Publish, ctx: &mut Self::Context) {
        let publisher = track.publisher.clone();
        let Some(member) = self.members.get_mut(&publisher) else { return };
        crate::action!("sfu", "track published", room = self.shared.name, participant = publisher, track = track.track);
        let frame = protocol::track_published(&publisher, &track.view());
        member.tracks.insert(track.track.clone(), track);
        self.broadcast(&publisher, &frame);
        self.subscribe_all_but(&publisher);
        self.changed(ctx);
    }
}

/// A participant's track ended.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Unpublish {
    pub participant: String,
    pub track: String,
}
impl SupervisedMessage for Unpublish {}

impl Handler<Unpublish> for Room {
    type Result = ();

    fn handle(&mut self, unpublish: Unpublish, ctx: &mut Self::Context) {
        let Some(member) = self.members.get_mut(&unpublish.participant) else { return };
        if member.tracks.remove(&unpublish.track).is_none() {
            return;
        }
        crate::action!(
            "sfu",
            "track unpublished",
            room = self.shared.name,
            participant = unpublish.participant,
            track = unpublish.track
        );
        self.broadcast(&unpublish.participant, &protocol::track_unpublished(&unpublish.participant, &unpublish.track));
        self.subscribe_all_but(&unpublish.participant);
        self.changed(ctx);
    }
}

/// A publisher muted or unmuted one of its tracks.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Mute {
    pub participant: String,
    pub track: String,
    pub muted: bool,
}
impl SupervisedMessage for Mute {}

impl Handler<Mute> for Room {
    type Result = ();

    fn handle(&mut self, mute: Mute, _ctx: &mut Self::Context) {
        let Some(track) = self.members.get_mut(&mute.participant).and_then(|m| m.tracks.get_mut(&mute.track)) else {
            return;
        };
        track.muted = mute.muted;
        self.broadcast(&mute.participant, &protocol::track_muted(&mute.participant, &mute.track, mute.muted));
    }
}

/// Membership for `GET /admin/rooms`.
#[derive(Debug, Message)]
#[rtype(result = "Vec<ParticipantAdminView>")]
pub struct Snapshot;
impl SupervisedMessage for Snapshot {}

impl Handler<Snapshot> for Room {
    type Result = Vec<ParticipantAdminView>;

    fn handle(&mut self, _: Snapshot, _ctx: &mut Self::Context) -> Self::Result {
        self.members
            .iter()
            .map(|(participant, member)| ParticipantAdminView {
                participant: participant.clone(),
                user: member.user.clone(),
                path: member.peer.path().to_owned(),
                media_path: None,
                signaling_relayed: false,
                peer: Some(member.peer.clone()),
                tracks: member
                    .tracks
                    .values()
                    .map(|track| {
                        let fanout = track.fanout.upgrade();
                        TrackAdminView {
                            track: track.track.clone(),
                            kind: track.kind.as_str(),
                            muted: track.muted,
                            subscribers: fanout.as_ref().map_or(0, |f| f.subscribers()),
                            forwarded_packets: fanout.as_ref().map_or(0, |f| f.forwarded()),
                        }
                    })
                    .collect(),
            })
            .collect()
    }
}
