//! The baseline: a bare webrtc-rs forwarder with no actors, no supervision, no registry, no
//! metrics, speaking just enough of `/rtc` for the benchmark's clients (join, the publisher's
//! offer, the server's offers to subscribers, candidates). Its connections are built like
//! rampart's (`src/sfu/media/mod.rs`: same codecs, default interceptors, 127.0.0.1 only, no mDNS,
//! two media threads and a dedicated reactor pool of two), and its forwarding loop does the
//! least any forwarder must: set the subscriber's SSRC and payload type, drop the publisher's
//! header extensions, write. What rampart spends beyond this is the cost of its actors,
//! supervision and bookkeeping.
//!
//! Scope: one room, subscribers join before the publisher (the benchmark's order); the
//! publisher's first two tracks are forwarded to everyone who joined before them.

#![allow(
    clippy::disallowed_methods,
    reason = "the baseline has no owned tasks on purpose: its tasks live until the benchmark kills the process"
)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use parking_lot::Mutex;
use rtc::peer_connection::configuration::interceptor_registry::{register_default_interceptors, Registry};
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use serde_json::{json, Value};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::media_stream::MediaStreamTrack;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceCandidateInit, RTCIceGatheringState,
    RTCSessionDescription,
};

use super::rtc_client;

const MEDIA_THREADS: usize = 2;

/// Serves `/health` and `/rtc` on `address` until the process is killed.
pub fn serve(address: SocketAddr) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(MEDIA_THREADS)
        .thread_name("bare-media")
        .enable_all()
        .build()
        .expect("media runtime");
    let forwarder = web::Data::new(Forwarder {
        media: runtime.handle().clone(),
        webrtc: webrtc::runtime::default_runtime().expect("webrtc runtime"),
        next_participant: AtomicU64::new(1),
        subscribers: Mutex::new(Vec::new()),
    });
    let served = actix_rt::System::new().block_on(async move {
        HttpServer::new(move || {
            App::new()
                .app_data(forwarder.clone())
                .route("/health", web::get().to(HttpResponse::Ok))
                .route("/rtc", web::get().to(signaling))
        })
        .workers(1)
        .bind(address)?
        .run()
        .await
    });
    if let Err(error) = served {
        eprintln!("bare forwarder failed: {error}");
    }
    runtime.shutdown_background();
}

struct Forwarder {
    media: tokio::runtime::Handle,
    webrtc: Arc<dyn webrtc::runtime::Runtime>,
    next_participant: AtomicU64,
    /// Everyone who joined, in order: the publisher's tracks go to all of them but itself.
    subscribers: Mutex<Vec<Arc<Participant>>>,
}

struct Participant {
    id: String,
    /// Frames to the client, written by a task on the socket's arbiter.
    outbound: tokio::sync::mpsc::UnboundedSender<String>,
    publisher: Mutex<Option<Arc<dyn PeerConnection>>>,
    subscriber: Mutex<Option<Arc<dyn PeerConnection>>>,
}

impl Participant {
    fn send(&self, frame: Value) {
        let _ = self.outbound.send(frame.to_string());
    }
}

/// Connection events: remote tracks (publisher connections) and the end of ICE gathering. The
/// server answers and offers with every candidate in the SDP, so it never trickles.
struct Events {
    tracks: Option<tokio::sync::mpsc::UnboundedSender<Arc<dyn TrackRemote>>>,
    gathered: tokio::sync::watch::Sender<bool>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(true);
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        if let Some(tracks) = &self.tracks {
            let _ = tracks.send(track);
        }
    }
}

impl Forwarder {
    /// A connection built like rampart's, with its gathering signal. Runs on the media runtime.
    async fn connection(
        &self,
        tracks: Option<tokio::sync::mpsc::UnboundedSender<Arc<dyn TrackRemote>>>,
    ) -> (Arc<dyn PeerConnection>, tokio::sync::watch::Receiver<bool>) {
        let mut media_engine = MediaEngine::default();
        for (kind, payload_type, rtp_kind) in
            [("video", 96u8, RtpCodecKind::Video), ("audio", 111, RtpCodecKind::Audio)]
        {
            media_engine
                .register_codec(RTCRtpCodecParameters { rtp_codec: rtc_client::codec(kind), payload_type }, rtp_kind)
                .expect("codec");
        }
        let registry = register_default_interceptors(Registry::new(), &mut media_engine).expect("interceptors");
        let settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
            .with_include_loopback_candidate(true)
            .build();
        let (gathered_tx, gathered) = tokio::sync::watch::channel(false);
        let connection = PeerConnectionBuilder::new()
            .with_setting_engine(settings)
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .with_handler(Arc::new(Events { tracks, gathered: gathered_tx }))
            .with_runtime(self.webrtc.clone())
            .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
            .with_dedicated_reactor_pool_size(MEDIA_THREADS)
            .build()
            .await
            .expect("peer connection");
        (Arc::new(connection), gathered)
    }
}

/// The local description once gathering completed, so it carries every candidate.
async fn gathered_sdp(
    connection: &Arc<dyn PeerConnection>,
    mut gathered: tokio::sync::watch::Receiver<bool>,
) -> String {
    let _ = tokio::time::timeout(Duration::from_secs(5), gathered.wait_for(|done| *done)).await;
    connection.local_description().await.expect("local description").sdp
}

async fn signaling(
    request: HttpRequest,
    body: web::Payload,
    forwarder: web::Data<Forwarder>,
) -> actix_web::Result<HttpResponse> {
    let (response, mut session, mut stream) = actix_ws::handle(&request, body)?;
    let id = format!("bare-{}", forwarder.next_participant.fetch_add(1, Ordering::Relaxed));
    let (outbound, mut frames) = tokio::sync::mpsc::unbounded_channel::<String>();
    actix_rt::spawn(async move {
        while let Some(frame) = frames.recv().await {
            if session.text(frame).await.is_err() {
                break;
            }
        }
    });
    let participant = Arc::new(Participant { id, outbound, publisher: Mutex::new(None), subscriber: Mutex::new(None) });
    let forwarder = forwarder.into_inner();
    actix_rt::spawn(async move {
        // One frame at a time: a candidate never overtakes the offer before it.
        while let Some(Ok(message)) = stream.recv().await {
            match message {
                actix_ws::Message::Text(text) => {
                    let Ok(frame) = serde_json::from_str::<Value>(&text) else { continue };
                    let forwarder = forwarder.clone();
                    let participant = participant.clone();
                    let handled = forwarder.media.clone().spawn(handle(forwarder, participant, frame));
                    let _ = handled.await;
                }
                actix_ws::Message::Close(_) => break,
                _ => {}
            }
        }
        let connections = [participant.publisher.lock().take(), participant.subscriber.lock().take()];
        forwarder.media.spawn(async move {
            for connection in connections.into_iter().flatten() {
                let _ = connection.close().await;
            }
        });
    });
    Ok(response)
}

/// One signaling frame, on the media runtime.
async fn handle(forwarder: Arc<Forwarder>, participant: Arc<Participant>, frame: Value) {
    let target = frame["target"].as_str().unwrap_or_default();
    match frame["type"].as_str().unwrap_or_default() {
        "join" => {
            let room = frame["room"].as_str().unwrap_or_default();
            participant.send(json!({
                "type": "joined", "room": room, "participant": participant.id, "participants": [],
            }));
            forwarder.subscribers.lock().push(participant.clone());
        }
        "offer" if target == "publisher" => {
            let Some(sdp) = frame["sdp"].as_str() else { return };
            let (tracks_tx, tracks) = tokio::sync::mpsc::unbounded_channel();
            let (connection, gathered) = forwarder.connection(Some(tracks_tx)).await;
            let offer = RTCSessionDescription::offer(sdp.to_owned()).expect("offer sdp");
            connection.set_remote_description(offer).await.expect("publisher offer");
            let answer = connection.create_answer(None).await.expect("answer");
            connection.set_local_description(answer).await.expect("set answer");
            let sdp = gathered_sdp(&connection, gathered).await;
            *participant.publisher.lock() = Some(connection);
            participant.send(json!({"type": "answer", "target": "publisher", "sdp": sdp}));
            tokio::spawn(fan_out(forwarder, participant, tracks));
        }
        "answer" if target == "subscriber" => {
            let connection = participant.subscriber.lock().clone();
            if let (Some(connection), Some(sdp)) = (connection, frame["sdp"].as_str()) {
                let answer = RTCSessionDescription::answer(sdp.to_owned()).expect("answer sdp");
                connection.set_remote_description(answer).await.expect("subscriber answer");
            }
        }
        "candidate" => {
            let connection = match target {
                "publisher" => participant.publisher.lock().clone(),
                _ => participant.subscriber.lock().clone(),
            };
            let candidate = serde_json::from_value::<RTCIceCandidateInit>(frame["candidate"].clone());
            if let (Some(connection), Ok(candidate)) = (connection, candidate) {
                let _ = connection.add_ice_candidate(candidate).await;
            }
        }
        _ => {}
    }
}

/// A subscriber's copy of a track: its track, SSRC and payload type.
struct Copy {
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    payload_type: u8,
}

/// Waits for the publisher's audio and video, offers both to everyone else, and forwards them.
async fn fan_out(
    forwarder: Arc<Forwarder>,
    publisher: Arc<Participant>,
    mut tracks: tokio::sync::mpsc::UnboundedReceiver<Arc<dyn TrackRemote>>,
) {
    let mut remotes = Vec::new();
    while remotes.len() < 2 {
        match tracks.recv().await {
            Some(track) => remotes.push(track),
            None => return,
        }
    }
    let subscribers: Vec<Arc<Participant>> =
        forwarder.subscribers.lock().iter().filter(|s| s.id != publisher.id).cloned().collect();
    let mut copies: Vec<Vec<Copy>> = (0..remotes.len()).map(|_| Vec::new()).collect();
    for subscriber in subscribers {
        let (connection, gathered) = forwarder.connection(None).await;
        for (remote, copies) in remotes.iter().zip(copies.iter_mut()) {
            let rtp_kind = remote.kind().await;
            let (kind, payload_type) = if rtp_kind == RtpCodecKind::Video { ("video", 96) } else { ("audio", 111) };
            let ssrc = rand::random::<u32>() | 1;
            let id = remote.track_id().await;
            let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                publisher.id.clone(),
                id.clone(),
                id,
                rtp_kind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
                    codec: rtc_client::codec(kind),
                    ..Default::default()
                }],
            )));
            connection.add_track(track.clone() as Arc<dyn TrackLocal>).await.expect("add track");
            copies.push(Copy { track, ssrc, payload_type });
        }
        let offer = connection.create_offer(None).await.expect("offer");
        connection.set_local_description(offer).await.expect("set offer");
        let sdp = gathered_sdp(&connection, gathered).await;
        *subscriber.subscriber.lock() = Some(connection);
        subscriber.send(json!({"type": "offer", "target": "subscriber", "sdp": sdp}));
    }
    for (remote, copies) in remotes.into_iter().zip(copies) {
        tokio::spawn(forward(remote, copies));
    }
}

/// The forwarding loop: the least a forwarder does per packet and subscriber.
async fn forward(remote: Arc<dyn TrackRemote>, copies: Vec<Copy>) {
    while let Some(event) = remote.poll().await {
        match event {
            TrackRemoteEvent::OnRtpPacket(packet) => {
                for copy in &copies {
                    let mut out = packet.clone();
                    out.header.ssrc = copy.ssrc;
                    out.header.payload_type = copy.payload_type;
                    out.header.extension = false;
                    out.header.extension_profile = 0;
                    out.header.extensions.clear();
                    let _ = copy.track.write_rtp(out).await;
                }
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
}
