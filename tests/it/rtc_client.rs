//! A WebRTC client of rampart's SFU built on webrtc-rs, like an app would build one: signaling
//! over `/rtc`, a publisher connection sending synthetic VP8 and Opus RTP with known payloads,
//! a subscriber connection answering the server's offers, and counters for what arrived.
//!
//! Threads: the signaling socket runs on an actix system of its own (awc needs one); the
//! connections and the client's logic ("brain") run on a shared multi-threaded tokio runtime,
//! because webrtc-rs spawns on the ambient runtime. Everything binds 127.0.0.1 only.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use parking_lot::Mutex;
use rtc::interceptor::Slot;
use rtc::peer_connection::configuration::interceptor_registry::{register_default_interceptors, Registry};
use rtc::peer_connection::configuration::media_engine::{MediaEngine, MIME_TYPE_OPUS, MIME_TYPE_VP8};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::{RTCConfigurationBuilder, RTCIceServer, RTCIceTransportPolicy};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use serde_json::{json, Value};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::media_stream::{MediaStreamTrack, Track as _};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceCandidateInit, RTCIceGatheringState,
    RTCPeerConnectionIceEvent, RTCSessionDescription,
};

/// One multi-threaded runtime for every client of a test.
pub fn media_runtime() -> Arc<MediaRuntime> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("test-webrtc")
        .enable_all()
        .build()
        .expect("webrtc test runtime");
    Arc::new(MediaRuntime(Some(runtime)))
}

/// A runtime that may be dropped from async code (tests end inside actix's runtime).
pub struct MediaRuntime(Option<tokio::runtime::Runtime>);

impl MediaRuntime {
    pub fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0.as_ref().expect("runtime until dropped").spawn(future)
    }
}

impl Drop for MediaRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Where send times in payloads count from (senders and receivers share the process).
static EPOCH: std::sync::LazyLock<std::time::Instant> = std::sync::LazyLock::new(std::time::Instant::now);

/// Nanoseconds since `EPOCH`.
fn now_nanos() -> u64 {
    EPOCH.elapsed().as_nanos() as u64
}

/// The payload of packet `n` of `kind` sent by `tag` (room and participant) at `sent` (ns since
/// `EPOCH`): a readable head and a body derived from `n`, so any corruption or mix-up is visible
/// at the receiver.
pub fn payload(tag: &str, kind: &str, n: u32, sent: u64) -> Bytes {
    let mut bytes = format!("rampart|{tag}|{kind}|{n}|{sent}|").into_bytes();
    let size = if kind == "video" { 900 } else { 120 };
    bytes.extend((0..size).map(|i| ((n as usize + i) % 251) as u8));
    Bytes::from(bytes)
}

/// A payload parsed back when it is intact.
pub struct Parsed {
    pub tag: String,
    pub kind: String,
    pub n: u32,
    pub sent: u64,
}

/// Parses a payload back, `None` unless it is intact. Tags are `room|participant`.
pub fn parse_payload(bytes: &[u8]) -> Option<Parsed> {
    let head_end = bytes.iter().enumerate().filter(|(_, b)| **b == b'|').nth(5)?.0;
    let head = std::str::from_utf8(&bytes[..head_end]).ok()?;
    let parts: Vec<&str> = head.split('|').collect();
    let [_, room, participant, kind, n, sent] = parts[..] else { return None };
    let tag = format!("{room}|{participant}");
    let (n, sent): (u32, u64) = (n.parse().ok()?, sent.parse().ok()?);
    (bytes == &payload(&tag, kind, n, sent)[..]).then(|| Parsed { tag, kind: kind.to_owned(), n, sent })
}

/// What arrived on one received track.
#[derive(Debug, Default, Clone)]
pub struct Received {
    pub packets: u64,
    pub intact: u64,
    pub corrupt: u64,
    pub out_of_order: u64,
    /// Send-to-receive times in nanoseconds (with `Options::record_latency`).
    pub latencies: Vec<u64>,
    /// The sender tags seen (room|participant): one, unless media crossed rooms.
    pub tags: BTreeMap<String, u64>,
    last_n: Option<u32>,
}

#[derive(Default)]
pub struct ClientState {
    pub participant: Mutex<Option<String>>,
    /// By (publisher participant from the stream id, kind).
    pub received: Mutex<HashMap<(String, String), Received>>,
    /// Keyframe requests that reached this client's published video.
    pub keyframe_requests: AtomicU64,
    pub reconnects: AtomicU64,
    /// `joined` frames received (a moved room sends another).
    pub joins: AtomicU64,
    pub sent_packets: AtomicU64,
    /// Media sections in the latest subscriber offer (grows only if transceivers are not reused).
    pub offered_sections: AtomicU64,
    pub errors: Mutex<Vec<Value>>,
    /// Every candidate line the server trickled or put in its SDP.
    pub server_candidates: Mutex<Vec<String>>,
    /// What happened to remote tracks, in order (for failure reports).
    pub track_events: Mutex<Vec<String>>,
    /// Subscriber offers received so far, the latest one, and the connection they were for.
    pub subscriber_offers: AtomicU64,
    last_subscriber_offer: Mutex<String>,
    subscriber: Mutex<Option<Arc<dyn PeerConnection>>>,
    /// While true, subscriber offers wait unanswered (what changes meanwhile is offered at once).
    answers_held: tokio::sync::watch::Sender<bool>,
    remote_tracks: Mutex<Vec<Arc<dyn TrackRemote>>>,
}

impl ClientState {
    pub fn received(&self, publisher: &str, kind: &str) -> Received {
        self.received.lock().get(&(publisher.to_owned(), kind.to_owned())).cloned().unwrap_or_default()
    }

    /// Where packets sent by `publisher` were counted, and the latest track events: what a
    /// failure report needs to tell a lost track from a misrouted one.
    pub fn report(&self, publisher: &str) -> String {
        let suffix = format!("|{publisher}");
        let received = self.received.lock();
        let counted: Vec<String> = received
            .iter()
            .flat_map(|(key, r)| r.tags.iter().map(move |(tag, n)| (key, tag, n)))
            .filter(|(_, tag, _)| tag.ends_with(&suffix))
            .map(|(key, tag, n)| format!("{tag} under {key:?}: {n}"))
            .collect();
        let events = self.track_events.lock();
        let recent = &events[events.len().saturating_sub(40)..];
        format!("packets from {publisher} counted as {counted:?}; latest track events: {recent:?}")
    }

    /// Holds (true) or releases (false) the answers to subscriber offers.
    pub fn hold_subscriber_answers(&self, hold: bool) {
        self.answers_held.send_replace(hold);
    }

    /// What the latest subscriber offer says of `publisher`'s tracks (their media sections and
    /// SSRCs, and any other section naming those SSRCs) and what the connection received on
    /// them: tells a track never offered from one offered but never started.
    pub async fn diagnose(&self, publisher: &str) -> String {
        let offer = self.last_subscriber_offer.lock().clone();
        let sections: Vec<&str> = offer.split("\r\nm=").skip(1).collect();
        let section_ssrcs = |section: &str| -> Vec<u32> {
            section
                .lines()
                .filter_map(|l| l.trim().strip_prefix("a=ssrc:"))
                .filter_map(|l| l.split_whitespace().next()?.parse().ok())
                .collect()
        };
        let summary = |section: &str| -> String {
            section
                .lines()
                .filter(|l| {
                    l.starts_with("a=mid:")
                        || l.starts_with("a=msid:")
                        || l.starts_with("a=ssrc:") && l.contains("msid")
                        || ["a=sendonly", "a=recvonly", "a=inactive", "a=sendrecv"].contains(&l.trim())
                })
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mine: Vec<&str> =
            sections.iter().copied().filter(|s| s.contains(&format!("a=msid:{publisher} "))).collect();
        let ssrcs: Vec<u32> = mine.iter().flat_map(|s| section_ssrcs(s)).collect();
        let sharing: Vec<String> = sections
            .iter()
            .filter(|s| !s.contains(&format!("a=msid:{publisher} ")))
            .filter(|s| section_ssrcs(s).iter().any(|ssrc| ssrcs.contains(ssrc)))
            .map(|s| summary(s))
            .collect();
        // Packets received on those SSRCs, a second apart: growing means they arrive and decrypt.
        let connection = self.subscriber.lock().clone();
        let mut received = Vec::new();
        if let Some(pc) = connection {
            for _ in 0..2 {
                let report =
                    pc.get_stats(std::time::Instant::now(), webrtc::peer_connection::StatsSelector::None).await;
                for stream in report.inbound_rtp_streams() {
                    let stats = serde_json::to_value(stream).unwrap_or_default();
                    if stats["ssrc"].as_u64().is_some_and(|ssrc| ssrcs.iter().any(|mine| u64::from(*mine) == ssrc)) {
                        received.push(format!(
                            "ssrc {} mid {} track {} packets {} discarded {}",
                            stats["ssrc"],
                            stats["mid"],
                            stats["trackIdentifier"],
                            stats["packetsReceived"],
                            stats["packetsDiscarded"]
                        ));
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await; // The second sample's interval.
            }
        }
        received.push(webrtc_log_about(&ssrcs));
        format!(
            "offer #{}: {publisher}'s sections {:?}; other sections with its SSRCs {sharing:?}; inbound streams {received:?}",
            self.subscriber_offers.load(Ordering::Relaxed),
            mine.iter().map(|s| summary(s)).collect::<Vec<_>>()
        )
    }

    /// Every sender tag seen on any track.
    pub fn tags(&self) -> BTreeMap<String, u64> {
        let mut all = BTreeMap::new();
        for received in self.received.lock().values() {
            for (tag, count) in &received.tags {
                *all.entry(tag.clone()).or_default() += count;
            }
        }
        all
    }
}

#[derive(Clone)]
pub struct Options {
    /// Publish audio and video after joining.
    pub publish: bool,
    /// Send candidates in trickle frames (true) or only inside the SDP (false).
    pub trickle: bool,
    /// Packets per track every 20 ms (1: 50 packets/s per track).
    pub packets_per_tick: u32,
    /// Keep every received packet's latency (benchmarks).
    pub record_latency: bool,
    /// Use only relay candidates, through the TURN servers of the `joined` frame's
    /// `ice_servers` (a client whose network lets nothing else through).
    pub relay_only: bool,
    /// Gather and use TCP candidates only (ICE-TCP; a network that drops UDP).
    pub tcp_only: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            publish: false,
            trickle: true,
            packets_per_tick: 1,
            record_latency: false,
            relay_only: false,
            tcp_only: false,
        }
    }
}

pub struct RtcClient {
    pub state: Arc<ClientState>,
    outbound: tokio::sync::mpsc::UnboundedSender<String>,
    events: tokio::sync::mpsc::UnboundedReceiver<Value>,
    brain: tokio::task::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    signal: Option<std::thread::JoinHandle<()>>,
}

impl RtcClient {
    /// Connects to `url` (`ws://.../rtc`) with `token`.
    pub async fn connect(runtime: &Arc<MediaRuntime>, url: &str, token: &str, options: Options) -> Self {
        let (outbound, outbound_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let (inbound_tx, inbound) = tokio::sync::mpsc::unbounded_channel::<Value>();
        let (connected_tx, connected) = tokio::sync::oneshot::channel::<Result<(), String>>();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let url = url.to_owned();
        let token = token.to_owned();
        let signal = std::thread::Builder::new()
            .name("test-rtc-signal".into())
            .spawn(move || signaling(url, token, outbound_rx, inbound_tx, connected_tx, stop_rx))
            .expect("signaling thread");
        connected.await.expect("signaling thread answered").expect("connect to /rtc");
        let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
        let state = Arc::new(ClientState::default());
        let brain = Brain {
            runtime: runtime.clone(),
            state: state.clone(),
            outbound: outbound.clone(),
            events: events_tx,
            publish: options.publish,
            trickle: options.trickle,
            packets_per_tick: options.packets_per_tick.max(1),
            record_latency: options.record_latency,
            relay: options.relay_only.then(Vec::new),
            tcp_only: options.tcp_only,
            room: String::new(),
            publisher: None,
            subscriber: None,
            sending: None,
        };
        let brain = runtime.spawn(brain.run(inbound));
        Self { state, outbound, events, brain, stop: Some(stop), signal: Some(signal) }
    }

    pub fn send(&self, frame: Value) {
        let _ = self.outbound.send(frame.to_string());
    }

    pub fn send_text(&self, text: String) {
        let _ = self.outbound.send(text);
    }

    /// The next frame the client logic did not consume that matches `predicate`, skipping others.
    pub async fn wait_for(&mut self, what: &str, predicate: impl Fn(&Value) -> bool) -> Value {
        let deadline = Duration::from_secs(20);
        let found = tokio::time::timeout(deadline, async {
            while let Some(frame) = self.events.recv().await {
                if predicate(&frame) {
                    return Some(frame);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(frame)) => frame,
            _ => panic!("no {what} frame within {deadline:?}"),
        }
    }

    /// The next frame the client logic did not consume.
    pub async fn next_event(&mut self) -> Option<Value> {
        self.events.recv().await
    }

    /// Joins `room` and returns the `joined` frame (or the `error` frame).
    pub async fn join(&mut self, room: &str) -> Value {
        self.send(json!({"type": "join", "room": room}));
        self.wait_for("joined or error", |frame| frame["type"] == "joined" || frame["type"] == "error").await
    }

    pub fn participant(&self) -> String {
        self.state.participant.lock().clone().unwrap_or_default()
    }

    /// Sends `count` keyframe requests on every received video track, `every` apart.
    pub async fn request_keyframes(&self, count: u32, every: Duration) {
        for _ in 0..count {
            let tracks = self.state.remote_tracks.lock().clone();
            for track in tracks {
                if track.kind().await == RtpCodecKind::Video {
                    if let Some(ssrc) = track.ssrcs().await.first().copied() {
                        let _ = track
                            .write_rtcp(vec![Box::new(PictureLossIndication { sender_ssrc: 0, media_ssrc: ssrc })])
                            .await;
                    }
                }
            }
            tokio::time::sleep(every).await; // Pacing between requests, part of the scenario.
        }
    }
}

impl Drop for RtcClient {
    fn drop(&mut self) {
        self.brain.abort();
        // The signaling thread closes the socket and ends.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(signal) = self.signal.take() {
            let _ = signal.join();
        }
    }
}

/// The signaling socket: frames from `outbound` to the server, frames from the server to `inbound`.
fn signaling(
    url: String,
    token: String,
    mut outbound: tokio::sync::mpsc::UnboundedReceiver<String>,
    inbound: tokio::sync::mpsc::UnboundedSender<Value>,
    connected: tokio::sync::oneshot::Sender<Result<(), String>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let system = actix_rt::System::new();
    system.block_on(async move {
        let client = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
        let connecting = client.ws(format!("{url}?token={token}")).max_frame_size(1 << 20).connect().await;
        let mut framed = match connecting {
            Ok((_, framed)) => {
                let _ = connected.send(Ok(()));
                framed
            }
            Err(error) => {
                let _ = connected.send(Err(error.to_string()));
                return;
            }
        };
        loop {
            tokio::select! {
                _ = &mut stop => {
                    let _ = framed.send(awc::ws::Message::Close(None)).await;
                    break;
                }
                next = outbound.recv() => match next {
                    Some(text) => {
                        if framed.send(awc::ws::Message::Text(text.into())).await.is_err() {
                            break;
                        }
                    }
                    None => {
                        let _ = framed.send(awc::ws::Message::Close(None)).await;
                        break;
                    }
                },
                frame = framed.next() => match frame {
                    Some(Ok(awc::ws::Frame::Text(bytes))) => {
                        if let Ok(value) = serde_json::from_slice::<Value>(&bytes) {
                            let _ = inbound.send(value);
                        }
                    }
                    Some(Ok(awc::ws::Frame::Ping(payload))) => {
                        let _ = framed.send(awc::ws::Message::Pong(payload)).await;
                    }
                    Some(Ok(awc::ws::Frame::Close(reason))) => {
                        let _ = inbound.send(json!({"type": "closed", "reason": format!("{reason:?}")}));
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        let _ = inbound.send(json!({"type": "closed"}));
                        break;
                    }
                },
            }
        }
    });
}

/// The client logic: reacts to signaling, owns the connections.
struct Brain {
    runtime: Arc<MediaRuntime>,
    state: Arc<ClientState>,
    outbound: tokio::sync::mpsc::UnboundedSender<String>,
    events: tokio::sync::mpsc::UnboundedSender<Value>,
    publish: bool,
    trickle: bool,
    packets_per_tick: u32,
    record_latency: bool,
    /// Relay-only clients: the TURN servers from `joined`.
    relay: Option<Vec<RTCIceServer>>,
    tcp_only: bool,
    room: String,
    publisher: Option<Arc<dyn PeerConnection>>,
    subscriber: Option<Arc<dyn PeerConnection>>,
    sending: Option<tokio::task::JoinHandle<()>>,
}

impl Brain {
    async fn run(mut self, mut inbound: tokio::sync::mpsc::UnboundedReceiver<Value>) {
        while let Some(frame) = inbound.recv().await {
            let kind = frame["type"].as_str().unwrap_or_default().to_owned();
            let target = frame["target"].as_str().unwrap_or_default().to_owned();
            match (kind.as_str(), target.as_str()) {
                ("joined", _) => {
                    self.close_connections().await;
                    self.state.joins.fetch_add(1, Ordering::Relaxed);
                    *self.state.participant.lock() = frame["participant"].as_str().map(str::to_owned);
                    self.room = frame["room"].as_str().unwrap_or_default().to_owned();
                    if let Some(relay) = &mut self.relay {
                        *relay = frame["ice_servers"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|server| RTCIceServer {
                                urls: server["urls"]
                                    .as_array()
                                    .into_iter()
                                    .flatten()
                                    .filter_map(Value::as_str)
                                    // webrtc-rs relays over UDP only.
                                    .filter(|url| url.ends_with("transport=udp"))
                                    .map(str::to_owned)
                                    .collect(),
                                username: server["username"].as_str().unwrap_or_default().to_owned(),
                                credential: server["credential"].as_str().unwrap_or_default().to_owned(),
                            })
                            .collect();
                    }
                    let _ = self.events.send(frame.clone());
                    if self.publish {
                        self.start_publishing().await;
                    }
                }
                ("answer", "publisher") => {
                    if let (Some(pc), Some(sdp)) = (&self.publisher, frame["sdp"].as_str()) {
                        let answer = RTCSessionDescription::answer(sdp.to_owned()).expect("answer sdp");
                        if let Err(error) = pc.set_remote_description(answer).await {
                            self.client_error(format!("publisher answer: {error}"));
                        }
                    }
                }
                ("offer", "subscriber") => {
                    if let Some(sdp) = frame["sdp"].as_str() {
                        self.answer_subscriber(sdp.to_owned()).await;
                    }
                }
                ("candidate", _) => {
                    let line = frame["candidate"]["candidate"].as_str().unwrap_or_default().to_owned();
                    self.state.server_candidates.lock().push(line);
                    let pc = if target == "publisher" { &self.publisher } else { &self.subscriber };
                    if let Some(pc) = pc {
                        let init: RTCIceCandidateInit =
                            serde_json::from_value(frame["candidate"].clone()).expect("candidate frame");
                        let _ = pc.add_ice_candidate(init).await;
                    }
                }
                ("reconnect", _) => {
                    self.state.reconnects.fetch_add(1, Ordering::Relaxed);
                    self.close_connections().await;
                    let _ = self.events.send(frame.clone());
                    // `rejoin`: the room moved; publish once its next `joined` comes.
                    if self.publish && frame["rejoin"] != true {
                        self.start_publishing().await;
                    }
                }
                ("error", _) => {
                    self.state.errors.lock().push(frame.clone());
                    let _ = self.events.send(frame);
                }
                _ => {
                    let _ = self.events.send(frame);
                }
            }
        }
        self.close_connections().await;
    }

    async fn close_connections(&mut self) {
        if let Some(sending) = self.sending.take() {
            sending.abort();
        }
        for pc in [self.publisher.take(), self.subscriber.take()].into_iter().flatten() {
            let _ = pc.close().await;
        }
        self.state.remote_tracks.lock().clear();
    }

    fn send(&self, frame: Value) {
        let _ = self.outbound.send(frame.to_string());
    }

    /// Something this client could not do: kept with the server's error frames.
    fn client_error(&self, message: String) {
        let frame = json!({"type": "client_error", "message": message});
        self.state.errors.lock().push(frame.clone());
        let _ = self.events.send(frame);
    }

    async fn connection(&self, target: &'static str) -> (Arc<dyn PeerConnection>, tokio::sync::watch::Receiver<bool>) {
        let (gathered_tx, gathered) = tokio::sync::watch::channel(false);
        let handler = Arc::new(Handler {
            target,
            record_latency: self.record_latency,
            trickle: self.trickle,
            outbound: self.outbound.clone(),
            state: self.state.clone(),
            runtime: self.runtime.clone(),
            gathered: gathered_tx,
        });
        let network = match (&self.relay, self.tcp_only) {
            (Some(servers), _) => Network::Relay(servers.clone()),
            (None, true) => Network::TcpOnly,
            (None, false) => Network::Direct,
        };
        (client_connection_with(handler, network).await, gathered)
    }

    /// Non-trickling clients wait for gathering so the SDP carries every candidate.
    async fn local_sdp(
        &self,
        pc: &Arc<dyn PeerConnection>,
        mut gathered: tokio::sync::watch::Receiver<bool>,
    ) -> String {
        if !self.trickle {
            let _ = tokio::time::timeout(Duration::from_secs(5), gathered.wait_for(|done| *done)).await;
        }
        pc.local_description().await.expect("local description").sdp
    }

    async fn start_publishing(&mut self) {
        let (pc, gathered) = self.connection("publisher").await;
        let participant = self.state.participant.lock().clone().unwrap_or_default();
        let tag = format!("{}|{participant}", self.room);
        let video = local_track(&participant, "video", 0x1000_0000 | rand::random::<u16>() as u32);
        let audio = local_track(&participant, "audio", 0x2000_0000 | rand::random::<u16>() as u32);
        pc.add_track(video.clone() as Arc<dyn TrackLocal>).await.expect("add video");
        pc.add_track(audio.clone() as Arc<dyn TrackLocal>).await.expect("add audio");
        let offer = pc.create_offer(None).await.expect("offer");
        pc.set_local_description(offer).await.expect("set offer");
        let sdp = self.local_sdp(&pc, gathered).await;
        self.send(json!({"type": "offer", "target": "publisher", "sdp": sdp}));
        self.publisher = Some(pc);
        let state = self.state.clone();
        let requests = video.clone();
        let counter = self.state.clone();
        self.runtime.spawn(async move {
            while let Some(event) = requests.poll().await {
                if let TrackLocalEvent::OnRtcpPacket(packets) = event {
                    let n = packets.iter().filter(|p| rampart::sfu::is_keyframe_request(p.as_ref())).count();
                    counter.keyframe_requests.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        });
        let per_tick = self.packets_per_tick;
        self.sending = Some(self.runtime.spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(20));
            let video_ssrc = video.ssrcs().await.first().copied().unwrap_or_default();
            let audio_ssrc = audio.ssrcs().await.first().copied().unwrap_or_default();
            for tick in 0u32.. {
                ticker.tick().await;
                for n in tick * per_tick..(tick + 1) * per_tick {
                    for (track, ssrc, kind, pt, step) in
                        [(&video, video_ssrc, "video", 96u8, 3000u32), (&audio, audio_ssrc, "audio", 111u8, 960u32)]
                    {
                        let packet = rtc::rtp::packet::Packet {
                            header: rtc::rtp::header::Header {
                                version: 2,
                                marker: kind == "video",
                                payload_type: pt,
                                sequence_number: n as u16,
                                timestamp: n.wrapping_mul(step),
                                ssrc,
                                ..Default::default()
                            },
                            payload: payload(&tag, kind, n, now_nanos()),
                        };
                        if track.write_rtp(packet).await.is_ok() {
                            state.sent_packets.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }));
    }

    async fn answer_subscriber(&mut self, sdp: String) {
        self.state.subscriber_offers.fetch_add(1, Ordering::Relaxed);
        self.state.last_subscriber_offer.lock().clone_from(&sdp);
        let _ = self.state.answers_held.subscribe().wait_for(|held| !*held).await;
        let sections = sdp.lines().filter(|line| line.starts_with("m=")).count();
        self.state.server_candidates.lock().extend(
            sdp.lines()
                .filter_map(|line| line.strip_prefix("a="))
                .filter(|l| l.starts_with("candidate:"))
                .map(str::to_owned),
        );
        self.state.offered_sections.store(sections as u64, Ordering::Relaxed);
        let (pc, gathered) = match &self.subscriber {
            Some(pc) => {
                let (_, gathered) = tokio::sync::watch::channel(true);
                (pc.clone(), gathered)
            }
            None => self.connection("subscriber").await,
        };
        let offer = RTCSessionDescription::offer(sdp).expect("offer sdp");
        if let Err(error) = pc.set_remote_description(offer).await {
            self.client_error(format!("subscriber offer: {error}"));
            return;
        }
        let answer = pc.create_answer(None).await.expect("answer");
        pc.set_local_description(answer).await.expect("set answer");
        let sdp = self.local_sdp(&pc, gathered).await;
        self.send(json!({"type": "answer", "target": "subscriber", "sdp": sdp}));
        *self.state.subscriber.lock() = Some(pc.clone());
        self.subscriber = Some(pc);
    }
}

pub fn codec(kind: &str) -> RTCRtpCodec {
    if kind == "video" {
        RTCRtpCodec {
            mime_type: MIME_TYPE_VP8.to_owned(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: vec![
                RTCPFeedback { typ: "nack".into(), parameter: String::new() },
                RTCPFeedback { typ: "nack".into(), parameter: "pli".into() },
            ],
        }
    } else {
        RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
            rtcp_feedback: Vec::new(),
        }
    }
}

fn local_track(participant: &str, kind: &str, ssrc: u32) -> Arc<TrackLocalStaticRTP> {
    let rtp_kind = if kind == "video" { RtpCodecKind::Video } else { RtpCodecKind::Audio };
    Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        format!("{participant}-stream"),
        format!("{participant}-{kind}"),
        format!("{participant}-{kind}"),
        rtp_kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
            codec: codec(kind),
            ..Default::default()
        }],
    )))
}

/// A connection like a loopback-only app would build: VP8 and Opus, default interceptors plus
/// keyframe-request delivery, sockets on 127.0.0.1, no mDNS.
pub async fn client_connection(handler: Arc<dyn PeerConnectionEventHandler>) -> Arc<dyn PeerConnection> {
    client_connection_with(handler, Network::Direct).await
}

/// Which paths a client's connection may use.
pub enum Network {
    /// UDP host candidates on 127.0.0.1.
    Direct,
    /// TCP host candidates only (active and passive), as behind a firewall that drops UDP.
    TcpOnly,
    /// Relay candidates only, from these TURN servers.
    Relay(Vec<RTCIceServer>),
}

pub async fn client_connection_with(
    handler: Arc<dyn PeerConnectionEventHandler>,
    network: Network,
) -> Arc<dyn PeerConnection> {
    let mut media_engine = MediaEngine::default();
    for (kind, pt) in [("video", 96u8), ("audio", 111u8)] {
        let rtp_kind = if kind == "video" { RtpCodecKind::Video } else { RtpCodecKind::Audio };
        media_engine
            .register_codec(RTCRtpCodecParameters { rtp_codec: codec(kind), payload_type: pt }, rtp_kind)
            .expect("codec");
    }
    let registry = register_default_interceptors(Registry::new(), &mut media_engine)
        .expect("interceptors")
        .with(Slot::from(14_000), rampart::sfu::KeyframeRequests::default());
    let settings = SettingEngineBuilder::new()
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
        .with_include_loopback_candidate(true)
        .build();
    let runtime = webrtc::runtime::default_runtime().expect("webrtc runtime");
    let mut builder = PeerConnectionBuilder::new();
    let (udp, tcp) = match &network {
        Network::TcpOnly => (vec![], vec!["127.0.0.1:0".to_owned()]),
        Network::Direct | Network::Relay(_) => (vec!["127.0.0.1:0".to_owned()], vec![]),
    };
    if let Network::Relay(servers) = network {
        builder = builder.with_configuration(
            RTCConfigurationBuilder::new()
                .with_ice_servers(servers)
                .with_ice_transport_policy(RTCIceTransportPolicy::Relay)
                .build(),
        );
    }
    let pc = builder
        .with_setting_engine(settings)
        .with_media_engine(media_engine)
        .with_interceptor_registry(registry)
        .with_handler(handler)
        .with_runtime(runtime)
        .with_udp_addrs(udp)
        .with_tcp_addrs(tcp)
        .build()
        .await
        .expect("client peer connection");
    Arc::new(pc)
}

struct Handler {
    target: &'static str,
    record_latency: bool,
    trickle: bool,
    outbound: tokio::sync::mpsc::UnboundedSender<String>,
    state: Arc<ClientState>,
    runtime: Arc<MediaRuntime>,
    gathered: tokio::sync::watch::Sender<bool>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if !self.trickle {
            return;
        }
        if let Ok(init) = event.candidate.to_json() {
            let frame = json!({"type": "candidate", "target": self.target, "candidate": init});
            let _ = self.outbound.send(frame.to_string());
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(true);
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        self.state.remote_tracks.lock().push(track.clone());
        let state = self.state.clone();
        let publisher = track.stream_id().await;
        let kind = if track.kind().await == RtpCodecKind::Video { "video" } else { "audio" };
        let key = (publisher, kind.to_owned());
        self.state.track_events.lock().push(format!("track {} {kind}", key.0));
        let record_latency = self.record_latency;
        self.runtime.spawn(async move {
            while let Some(event) = track.poll().await {
                if let TrackRemoteEvent::OnEnded = event {
                    state.track_events.lock().push(format!("ended {} {}", key.0, key.1));
                    // Negotiated away (its publisher left): forget it, or a long-lived client
                    // keeps one task and one track for every track it was ever sent.
                    state.remote_tracks.lock().retain(|known| !Arc::ptr_eq(known, &track));
                    break;
                }
                if let TrackRemoteEvent::OnRtpPacket(packet) = event {
                    let mut received = state.received.lock();
                    let entry = received.entry(key.clone()).or_default();
                    entry.packets += 1;
                    match parse_payload(&packet.payload) {
                        Some(parsed) if parsed.kind == key.1 => {
                            entry.intact += 1;
                            *entry.tags.entry(parsed.tag).or_default() += 1;
                            if entry.last_n.is_some_and(|last| parsed.n <= last) {
                                entry.out_of_order += 1;
                            }
                            entry.last_n = Some(parsed.n);
                            if record_latency {
                                entry.latencies.push(now_nanos().saturating_sub(parsed.sent));
                            }
                        }
                        _ => entry.corrupt += 1,
                    }
                }
            }
        });
    }
}

/// A real publisher offer (audio and video, its host candidate) from a throwaway connection.
pub async fn sample_offer(runtime: &Arc<MediaRuntime>) -> String {
    runtime
        .spawn(async {
            struct Gathering(tokio::sync::watch::Sender<bool>);
            #[async_trait::async_trait]
            impl PeerConnectionEventHandler for Gathering {
                async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
                    if state == RTCIceGatheringState::Complete {
                        let _ = self.0.send(true);
                    }
                }
            }
            let (gathered_tx, mut gathered) = tokio::sync::watch::channel(false);
            let pc = client_connection(Arc::new(Gathering(gathered_tx))).await;
            for kind in ["video", "audio"] {
                pc.add_track(local_track("sample", kind, rand::random::<u32>() | 1) as Arc<dyn TrackLocal>)
                    .await
                    .expect("track");
            }
            let offer = pc.create_offer(None).await.expect("offer");
            pc.set_local_description(offer).await.expect("set offer");
            tokio::time::timeout(Duration::from_secs(5), gathered.wait_for(|done| *done))
                .await
                .expect("gathering completes")
                .expect("gathering state");
            let sdp = pc.local_description().await.expect("offer").sdp;
            let _ = pc.close().await;
            sdp
        })
        .await
        .expect("sample offer")
}

/// What webrtc-rs logged in this process (its `log` records), kept for failure reports: the last
/// warnings and errors (SRTP refusals name their SSRC).
pub struct WebrtcLog {
    recent: Mutex<std::collections::VecDeque<String>>,
}

static WEBRTC_LOG: std::sync::LazyLock<WebrtcLog> =
    std::sync::LazyLock::new(|| WebrtcLog { recent: Mutex::new(std::collections::VecDeque::new()) });

impl log::Log for WebrtcLog {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.target().starts_with("rtc") || metadata.target().starts_with("webrtc")
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if record.level() <= log::Level::Warn {
            let mut recent = self.recent.lock();
            if recent.len() >= 200 {
                recent.pop_front();
            }
            recent.push_back(format!("{} {}: {}", record.level(), record.target(), record.args()));
        }
    }

    fn flush(&self) {}
}

/// Starts keeping webrtc-rs' log records (once per process).
pub fn keep_webrtc_log() {
    if log::set_logger(&*WEBRTC_LOG).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}

/// The kept records that mention one of `ssrcs`, and the latest ones.
pub fn webrtc_log_about(ssrcs: &[u32]) -> String {
    let names: Vec<String> = ssrcs.iter().map(u32::to_string).collect();
    let recent: Vec<String> = WEBRTC_LOG
        .recent
        .lock()
        .iter()
        .filter(|line| names.iter().any(|n| line.contains(n.as_str())))
        .cloned()
        .collect();
    let last: Vec<String> = WEBRTC_LOG.recent.lock().iter().rev().take(5).cloned().collect();
    format!("webrtc-rs on these SSRCs: {recent:?}; its last warnings: {last:?}")
}
