//! What webrtc-rs reports about a peer's connections: its callbacks ([`Events`]) only forward
//! each event to the peer through a weak address tagged with the incarnation's generation, and
//! the peer handles it ([`FromConnection`]) in its own mailbox.

use std::sync::Arc;

use actix::prelude::*;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{PeerConnectionEventHandler, RTCPeerConnectionIceEvent, RTCPeerConnectionState};

use super::super::protocol::{self, Candidate, Target};
use super::Peer;

impl Peer {
    /// The callbacks for this incarnation's `target` connection.
    pub(super) fn events(&self, ctx: &Context<Self>, target: Target) -> Arc<dyn PeerConnectionEventHandler> {
        Arc::new(Events { peer: ctx.address().downgrade(), generation: self.generation, target })
    }
}

/// Something one of this peer's connections reported (see [`Events`]).
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct FromConnection {
    pub(super) generation: u64,
    pub(super) target: Target,
    pub(super) event: PcEvent,
}

pub(super) enum PcEvent {
    Candidate(Candidate),
    State(RTCPeerConnectionState),
    Track(Arc<dyn TrackRemote>),
    TrackEnded(String),
}

impl Handler<FromConnection> for Peer {
    type Result = ();

    fn handle(&mut self, message: FromConnection, ctx: &mut Self::Context) {
        if message.generation != self.generation {
            return; // A previous incarnation's connection, closing.
        }
        match message.event {
            PcEvent::Candidate(candidate) => {
                self.shared.signal.send(protocol::candidate(message.target, &candidate));
            }
            PcEvent::State(RTCPeerConnectionState::Failed) => self.connection_failed(message.target),
            PcEvent::State(state) => {
                crate::action!(
                    "sfu",
                    "connection state",
                    participant = self.shared.participant,
                    target = message.target.as_str(),
                    state = state
                );
            }
            PcEvent::Track(remote) if message.target == Target::Publisher => self.track_arrived(remote, ctx),
            PcEvent::Track(_) => {}
            PcEvent::TrackEnded(track) => self.track_ended(track),
        }
    }
}

/// The webrtc-rs callbacks of one connection: each only forwards its event.
struct Events {
    peer: actix::WeakAddr<Peer>,
    generation: u64,
    target: Target,
}

impl Events {
    fn emit(&self, event: PcEvent) {
        if let Some(peer) = self.peer.upgrade() {
            peer.do_send(FromConnection { generation: self.generation, target: self.target, event });
        }
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            self.emit(PcEvent::Candidate(Candidate {
                candidate: init.candidate,
                sdp_mid: init.sdp_mid,
                sdp_mline_index: init.sdp_mline_index,
                username_fragment: init.username_fragment,
            }));
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.emit(PcEvent::State(state));
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        self.emit(PcEvent::Track(track));
    }
}
