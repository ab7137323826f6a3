//! The peer's negotiations: the publisher connection's offer/answer (the client offers), the
//! subscriber connection's (the peer offers what the room says to receive, one offer at a time,
//! debounced), and ICE candidates, kept while their connection cannot take them yet.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};

use actix::prelude::*;
use webrtc::peer_connection::{PeerConnection, RTCIceCandidateInit, RTCSessionDescription};
use webrtc::rtp_transceiver::RtpSender;

use super::super::media::{relay_keyframe_requests, Downstream, Fanout};
use super::super::protocol::{self, Candidate, SignalError, Target};
use super::{Peer, Subscription, TrackKey, MAX_EARLY_CANDIDATES, SUBSCRIBE_DEBOUNCE};

impl Peer {
    pub(super) fn publisher_offer(&mut self, sdp: String, ctx: &mut Context<Self>) {
        if self.shared.membership().is_none() {
            return self.reject(SignalError::new("not_joined", "offer: join a room first"));
        }
        let connection = self.connection(ctx, Target::Publisher);
        crate::action!("sfu", "offer", participant = self.shared.participant, target = "publisher");
        self.media_step(
            ctx,
            "sfu.negotiate",
            async move {
                let connection = match connection.await {
                    Ok(connection) => connection,
                    Err(error) => return (None, Err(SignalError::new("unavailable", error))),
                };
                let answer = answer(&*connection, sdp).await;
                (Some(connection), answer)
            },
            |peer, outcome, ctx| match outcome {
                Ok((connection, answer)) => {
                    if peer.publisher.is_none() {
                        peer.publisher = connection;
                    }
                    match answer {
                        Ok(sdp) => {
                            crate::action!(
                                "sfu",
                                "answer",
                                participant = peer.shared.participant,
                                target = "publisher"
                            );
                            peer.shared.signal.send(protocol::sdp("answer", Target::Publisher, &sdp));
                            peer.described(Target::Publisher, ctx);
                        }
                        Err(error) => peer.reject(error),
                    }
                }
                Err(error) => peer.reject(SignalError::new("internal", format!("offer: {error}"))),
            },
        );
    }

    pub(super) fn subscriber_answer(&mut self, sdp: String, ctx: &mut Context<Self>) {
        let (true, Some(connection)) = (self.negotiation.awaiting_answer, self.subscriber.clone()) else {
            return self
                .reject(SignalError::new("unexpected_answer", "answer: no subscriber offer is waiting for one"));
        };
        crate::action!("sfu", "answer", participant = self.shared.participant, target = "subscriber");
        self.media_step(
            ctx,
            "sfu.negotiate",
            async move {
                let description = RTCSessionDescription::answer(sdp)
                    .map_err(|error| SignalError::new("invalid_sdp", format!("answer: {error}")))?;
                connection
                    .set_remote_description(description)
                    .await
                    .map_err(|error| SignalError::new("invalid_sdp", format!("answer: {error}")))
            },
            |peer, outcome, ctx| {
                peer.negotiation.awaiting_answer = false;
                match outcome {
                    Ok(Ok(())) => {
                        peer.subscriptions_live();
                        peer.described(Target::Subscriber, ctx);
                    }
                    Ok(Err(error)) => {
                        peer.reject(error);
                        // The offer is still pending on our side: offer again.
                        peer.negotiation.force = true;
                        peer.negotiation.again = true;
                    }
                    Err(error) => peer.reject(SignalError::new("internal", format!("answer: {error}"))),
                }
                if std::mem::take(&mut peer.negotiation.again) {
                    peer.schedule_sync(ctx);
                }
            },
        );
    }

    /// After an applied answer: new subscriber copies join their fan-outs, and their publishers
    /// are asked for a keyframe so the new subscriber can start decoding.
    pub(super) fn subscriptions_live(&mut self) {
        let media = self.shared.core.media.clone();
        for subscription in self.subscriptions.values_mut().filter(|s| s.live.is_none()) {
            let Some(fanout) = subscription.fanout.upgrade() else { continue };
            fanout.add(subscription.downstream.clone());
            let downstream = subscription.downstream.clone();
            let weak = subscription.fanout.clone();
            subscription.live = Some(media.spawn("sfu.subscription", async move {
                let relay = async {
                    fanout.request_keyframe().await;
                    drop(fanout);
                    relay_keyframe_requests(downstream.clone(), weak).await;
                };
                tokio::join!(relay, downstream.drain());
            }));
        }
    }

    pub(super) fn add_candidate(&mut self, target: Target, candidate: Candidate, ctx: &mut Context<Self>) {
        if candidate.candidate.trim().is_empty() {
            return; // End of candidates.
        }
        if self.described.contains(&target) {
            return self.apply_candidates(target, vec![candidate], true, ctx);
        }
        // The server makes the subscriber connection: a candidate for it before any offer is wrong.
        if target == Target::Subscriber && self.subscriber.is_none() {
            let message = "candidate: there is no subscriber connection yet".to_owned();
            return self.reject(SignalError::new("no_connection", message));
        }
        let early = self.early.entry(target).or_default();
        if early.len() >= MAX_EARLY_CANDIDATES {
            let message = format!("candidate: more than {MAX_EARLY_CANDIDATES} before the {} offer", target.as_str());
            return self.reject(SignalError::new("no_connection", message));
        }
        early.push(candidate);
    }

    /// `target` has a remote description now: it takes the candidates that waited for it.
    pub(super) fn described(&mut self, target: Target, ctx: &mut Context<Self>) {
        self.described.insert(target);
        if let Some(early) = self.early.remove(&target) {
            // Some may belong to a connection the client replaced: not worth an error frame.
            self.apply_candidates(target, early, false, ctx);
        }
    }

    pub(super) fn apply_candidates(
        &mut self,
        target: Target,
        candidates: Vec<Candidate>,
        report: bool,
        ctx: &mut Context<Self>,
    ) {
        let connection = match target {
            Target::Publisher => self.publisher.clone(),
            Target::Subscriber => self.subscriber.clone(),
        };
        let Some(connection) = connection else { return };
        self.media_step(
            ctx,
            "sfu.candidate",
            async move {
                for candidate in candidates {
                    let init = RTCIceCandidateInit {
                        candidate: candidate.candidate,
                        sdp_mid: candidate.sdp_mid,
                        sdp_mline_index: candidate.sdp_mline_index,
                        username_fragment: candidate.username_fragment,
                        ..Default::default()
                    };
                    connection.add_ice_candidate(init).await.map_err(|error| error.to_string())?;
                }
                Ok(())
            },
            move |peer, outcome, _ctx| {
                let error = match outcome {
                    Ok(Ok(())) => return,
                    Ok(Err(error)) | Err(error) => error,
                };
                if report {
                    peer.reject(SignalError::new("invalid_candidate", format!("candidate: {error}")));
                } else {
                    tracing::debug!(participant = %peer.shared.participant, %error, "an early candidate did not apply");
                }
            },
        );
    }

    pub(super) fn schedule_sync(&mut self, ctx: &mut Context<Self>) {
        if !self.negotiation.scheduled {
            self.negotiation.scheduled = true;
            ctx.run_later(SUBSCRIBE_DEBOUNCE, |peer, ctx| {
                peer.negotiation.scheduled = false;
                peer.sync_subscriptions(ctx);
            });
        }
    }

    /// Makes the subscriber connection carry exactly the wanted tracks, and offers it.
    pub(super) fn sync_subscriptions(&mut self, ctx: &mut Context<Self>) {
        if self.negotiation.awaiting_answer {
            self.negotiation.again = true;
            return;
        }
        if self.shared.membership().is_none() {
            return;
        }
        let wanted: HashMap<TrackKey, Arc<Fanout>> = self
            .wanted
            .iter()
            .filter_map(|track| {
                let fanout = track.fanout.upgrade()?;
                Some(((track.publisher.clone(), track.track.clone()), fanout))
            })
            .collect();
        let stale: Vec<TrackKey> = self
            .subscriptions
            .iter()
            .filter(|(key, subscription)| match (wanted.get(*key), subscription.fanout.upgrade()) {
                (Some(wanted), Some(current)) => !Arc::ptr_eq(wanted, &current),
                _ => true,
            })
            .map(|(key, _)| key.clone())
            .collect();
        let mut removed = Vec::with_capacity(stale.len());
        for key in stale {
            if let Some(subscription) = self.subscriptions.remove(&key) {
                if let Some(fanout) = subscription.fanout.upgrade() {
                    fanout.remove(&self.shared.participant);
                }
                let downstream = &subscription.downstream;
                let slot = usize::from(subscription.sender.id());
                self.ssrc_pool.entry(downstream.kind).or_default().insert(slot, downstream.recycle());
                removed.push(subscription.sender);
            }
        }
        let added: Vec<(TrackKey, Arc<Fanout>)> =
            wanted.into_iter().filter(|(key, _)| !self.subscriptions.contains_key(key)).collect();
        let force = std::mem::take(&mut self.negotiation.force);
        if removed.is_empty() && added.is_empty() && !(force && self.subscriber.is_some()) {
            return;
        }
        if self.subscriber.is_none() && added.is_empty() {
            return;
        }
        let participant = self.shared.participant.clone();
        // webrtc-rs puts an added track on the first free transceiver of its kind, and the free
        // ones are exactly those in the pool: taking the lowest-indexed freed SSRC first keeps
        // every SSRC on the transceiver it was first negotiated on. Moved to another, it would be
        // described on two transceivers at once (the old one inactive), and a webrtc-rs client
        // files an SSRC's packets under the first transceiver that lists it.
        let mut slots = Vec::with_capacity(added.len());
        let added: Vec<(TrackKey, Weak<Fanout>, Arc<Downstream>)> = added
            .into_iter()
            .map(|(key, fanout)| {
                let recycled = self.ssrc_pool.get_mut(&fanout.kind).and_then(BTreeMap::pop_first);
                slots.push(recycled.as_ref().map(|(slot, _)| *slot));
                let downstream = Downstream::new(&participant, &fanout, recycled.map(|(_, recycled)| recycled));
                (key, Arc::downgrade(&fanout), downstream)
            })
            .collect();
        let tracks: Vec<_> =
            added.iter().zip(slots).map(|((_, _, downstream), slot)| (downstream.as_track_local(), slot)).collect();
        let connection = self.connection(ctx, Target::Subscriber);
        self.negotiation.awaiting_answer = true;
        self.media_step(
            ctx,
            "sfu.negotiate",
            async move {
                let connection = match connection.await {
                    Ok(connection) => connection,
                    Err(error) => return (None, Err(error)),
                };
                let offer = offer(&*connection, removed, tracks).await;
                (Some(connection), offer)
            },
            move |peer, outcome, _ctx| {
                let (connection, offer) = match outcome {
                    Ok(done) => done,
                    Err(error) => (None, Err(error)),
                };
                if peer.subscriber.is_none() {
                    peer.subscriber = connection;
                }
                match offer {
                    Ok((senders, sdp)) => {
                        for ((key, fanout, downstream), sender) in added.into_iter().zip(senders) {
                            peer.subscriptions.insert(key, Subscription { fanout, downstream, sender, live: None });
                        }
                        crate::action!("sfu", "offer", participant = peer.shared.participant, target = "subscriber");
                        peer.shared.signal.send(protocol::sdp("offer", Target::Subscriber, &sdp));
                    }
                    Err(error) => {
                        tracing::warn!(participant = %peer.shared.participant, %error, "subscriber offer failed");
                        peer.negotiation.awaiting_answer = false;
                        peer.reject(SignalError::new("negotiation_failed", format!("subscriber offer: {error}")));
                    }
                }
            },
        );
    }
}

/// Applies a client's offer and produces the answer's SDP.
async fn answer(connection: &dyn PeerConnection, sdp: String) -> Result<String, SignalError> {
    let invalid = |error: webrtc::error::Error| SignalError::new("invalid_sdp", format!("offer: {error}"));
    let description = RTCSessionDescription::offer(sdp).map_err(invalid)?;
    connection.set_remote_description(description).await.map_err(invalid)?;
    let failed = |error: webrtc::error::Error| SignalError::new("negotiation_failed", format!("answer: {error}"));
    let answer = connection.create_answer(None).await.map_err(failed)?;
    connection.set_local_description(answer).await.map_err(failed)?;
    let local = connection
        .local_description()
        .await
        .ok_or_else(|| SignalError::new("negotiation_failed", "answer: no local description"))?;
    Ok(local.sdp)
}

/// Removes and adds subscriber tracks and produces the offer's SDP.
async fn offer(
    connection: &dyn PeerConnection,
    removed: Vec<Arc<dyn RtpSender>>,
    added: Vec<(Arc<dyn webrtc::media_stream::track_local::TrackLocal>, Option<usize>)>,
) -> Result<(Vec<Arc<dyn RtpSender>>, String), String> {
    for sender in &removed {
        if let Err(error) = connection.remove_track(sender).await {
            tracing::debug!(%error, "removing a subscriber track");
        }
    }
    let mut senders = Vec::with_capacity(added.len());
    for (track, slot) in added {
        let sender = connection.add_track(track).await.map_err(|error| format!("add_track: {error}"))?;
        let used = usize::from(sender.id());
        if slot.is_some_and(|slot| slot != used) {
            // The pool's picture of the free transceivers is wrong: the SSRC moved.
            tracing::warn!(expected = ?slot, used, "a recycled SSRC went to another transceiver");
        }
        senders.push(sender);
    }
    let offer = connection.create_offer(None).await.map_err(|error| format!("create_offer: {error}"))?;
    connection.set_local_description(offer).await.map_err(|error| format!("set_local_description: {error}"))?;
    let local = connection.local_description().await.ok_or("no local description")?;
    Ok((senders, local.sdp))
}
