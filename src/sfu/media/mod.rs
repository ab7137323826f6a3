//! The media plane: the runtime that forwards packets, peer connections built the SFU's way, and
//! the fan-out of each published track to its subscribers.
//!
//! Owns: the media runtime (a multi-threaded tokio runtime of `sfu.media_threads` threads, apart
//! from actix's arbiters, so a busy forwarding loop never delays an HTTP request or an actor);
//! the codecs and interceptors every connection uses; the reaper that closes connections their
//! peers dropped; [`Fanout`], the per-track list of subscribers and the forwarding loop.
//!
//! Only this file and `peer.rs` know webrtc-rs. Every webrtc-rs call runs on the media runtime
//! (its `TokioRuntime` spawns on the ambient runtime); actors reach it through [`Media::run`].
//!
//! Must never: hold a lock across an `.await` on the packet path, or keep a peer alive (fan-outs
//! hold subscribers' tracks, never their actors or connections).

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use parking_lot::{Mutex, RwLock};
use rtc::interceptor::{Attribute, Interceptor, Packet, Slot, StreamInfo, TaggedPacket};
use rtc::peer_connection::configuration::interceptor_registry::{register_default_interceptors, Registry};
use rtc::peer_connection::configuration::media_engine::{MediaEngine, MIME_TYPE_OPUS, MIME_TYPE_VP8};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp::packet::Packet as RtpPacket;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::media_stream::MediaStreamTrack;
use webrtc::peer_connection::{PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler};

use super::SfuConfig;
use crate::tasks::OwnedTask;
use crate::telemetry::{metrics, OutcomeLabels};

/// Payload types the SFU offers to subscribers (and accepts from publishers, whatever numbers
/// their offers use).
const VP8_PAYLOAD_TYPE: u8 = 96;
const OPUS_PAYLOAD_TYPE: u8 = 111;
/// At most one keyframe request per published track per this long reaches the publisher.
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);
/// How long the reaper gives one connection to close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Packets a subscriber's copy of a track holds while its connection is not taking writes
/// (about a quarter second of 1,000 packets/s video); beyond that the oldest are dropped.
const BACKLOG_PACKETS: usize = 256;

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    Audio,
    Video,
}

impl MediaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
        }
    }

    fn codec(self) -> RTCRtpCodec {
        match self {
            MediaKind::Video => RTCRtpCodec {
                mime_type: MIME_TYPE_VP8.to_owned(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: String::new(),
                rtcp_feedback: ["goog-remb:", "ccm:fir", "nack:", "nack:pli"]
                    .iter()
                    .filter_map(|pair| pair.split_once(':'))
                    .map(|(typ, parameter)| RTCPFeedback { typ: typ.to_owned(), parameter: parameter.to_owned() })
                    .collect(),
            },
            MediaKind::Audio => RTCRtpCodec {
                mime_type: MIME_TYPE_OPUS.to_owned(),
                clock_rate: 48_000,
                channels: 2,
                sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
                rtcp_feedback: Vec::new(),
            },
        }
    }

    fn payload_type(self) -> u8 {
        match self {
            MediaKind::Video => VP8_PAYLOAD_TYPE,
            MediaKind::Audio => OPUS_PAYLOAD_TYPE,
        }
    }

    fn rtp_kind(self) -> RtpCodecKind {
        match self {
            MediaKind::Video => RtpCodecKind::Video,
            MediaKind::Audio => RtpCodecKind::Audio,
        }
    }

    pub fn of(kind: RtpCodecKind) -> Option<Self> {
        match kind {
            RtpCodecKind::Video => Some(MediaKind::Video),
            RtpCodecKind::Audio => Some(MediaKind::Audio),
            _ => None,
        }
    }
}

/// The media runtime and what every peer connection is built from.
pub struct Media {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    webrtc: Arc<dyn webrtc::runtime::Runtime>,
    config: SfuConfig,
    next_port: AtomicU32,
    reaper: tokio::sync::mpsc::UnboundedSender<Arc<dyn PeerConnection>>,
    _reaper_task: OwnedTask<()>,
}

impl Media {
    pub fn start(config: &SfuConfig) -> anyhow::Result<Arc<Self>> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.media_threads)
            .thread_name("sfu-media")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let webrtc = webrtc::runtime::default_runtime()
            .ok_or_else(|| anyhow::anyhow!("webrtc-rs was built without a runtime"))?;
        let (reaper, closing) = tokio::sync::mpsc::unbounded_channel();
        let reaper_task = crate::tasks::spawn_owned_on(&handle, "sfu.reaper", reap(closing));
        Ok(Arc::new(Self {
            runtime: Some(runtime),
            handle,
            webrtc,
            config: config.clone(),
            next_port: AtomicU32::new(0),
            reaper,
            _reaper_task: reaper_task,
        }))
    }

    /// Runs `future` on the media runtime and waits for it (from an actor or a handler).
    pub async fn run<F>(&self, name: &'static str, future: F) -> Result<F::Output, String>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn(name, future).await.map_err(|error| error.to_string())
    }

    /// Starts an owned task on the media runtime (dropping the handle cancels it).
    pub fn spawn<F>(&self, name: &'static str, future: F) -> OwnedTask<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        crate::tasks::spawn_owned_on(&self.handle, name, future)
    }

    /// Tasks alive on the media runtime (forwarding loops, keyframe relays, peer connections'
    /// own tasks): what a leak would grow.
    pub fn tasks(&self) -> usize {
        self.handle.metrics().num_alive_tasks()
    }

    /// Closes `connection` in the background: peers drop theirs when they stop or crash.
    pub fn close(&self, connection: Arc<dyn PeerConnection>) {
        let _ = self.reaper.send(connection);
    }

    /// A peer connection bound per `sfu.bind_addresses` / `ice_loopback_only`, with the SFU's
    /// codecs and interceptors. Must run on the media runtime (see [`Media::run`]).
    pub async fn connection(
        &self,
        handler: Arc<dyn PeerConnectionEventHandler>,
    ) -> Result<Arc<dyn PeerConnection>, String> {
        let addresses = self.config.effective_bind_addresses();
        let range = (self.config.port_min != 0).then_some((self.config.port_min, self.config.port_max));
        let attempts = range.map_or(1, |(min, max)| u32::from(max - min).min(63) + 1);
        let mut last_error = String::new();
        for _ in 0..attempts {
            let port = match range {
                Some((min, max)) => {
                    let span = u32::from(max - min) + 1;
                    min + (self.next_port.fetch_add(1, Ordering::Relaxed) % span) as u16
                }
                None => 0,
            };
            let binds: Vec<String> = addresses.iter().map(|ip| SocketAddr::new(*ip, port).to_string()).collect();
            match self.build(handler.clone(), binds).await {
                Ok(connection) => return Ok(connection),
                Err(error) => last_error = error,
            }
        }
        Err(format!("no media socket could be bound: {last_error}"))
    }

    async fn build(
        &self,
        handler: Arc<dyn PeerConnectionEventHandler>,
        binds: Vec<String>,
    ) -> Result<Arc<dyn PeerConnection>, String> {
        let mut media_engine = MediaEngine::default();
        for kind in [MediaKind::Video, MediaKind::Audio] {
            media_engine
                .register_codec(
                    RTCRtpCodecParameters { rtp_codec: kind.codec(), payload_type: kind.payload_type() },
                    kind.rtp_kind(),
                )
                .map_err(|error| format!("registering {}: {error}", kind.as_str()))?;
        }
        let registry = register_default_interceptors(Registry::new(), &mut media_engine)
            .map_err(|error| format!("interceptors: {error}"))?
            // Last in the chain, so every interceptor has seen the RTCP before it is narrowed.
            .with(Slot::from(14_000), KeyframeRequests::default());
        let mut settings = SettingEngineBuilder::new();
        if self.config.ice_loopback_only {
            settings = settings
                .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
                .with_include_loopback_candidate(true);
        } else if !self.config.public_ips.is_empty() {
            let ips = self.config.public_ips.iter().map(ToString::to_string).collect();
            settings = settings.with_nat_1to1_ips(ips, rtc::peer_connection::transport::RTCIceCandidateType::Host);
        }
        let connection = PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_setting_engine(settings.build())
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .with_handler(handler)
            .with_runtime(self.webrtc.clone())
            .with_udp_addrs(binds)
            // Drivers on a bounded pool of reactor threads: a connection dropped without
            // `close` (its peer crashed) stops its driver instead of leaving it running.
            .with_dedicated_reactor_pool_size(self.config.media_threads)
            .build()
            .await
            .map_err(|error| error.to_string())?;
        Ok(Arc::new(connection))
    }
}

impl Drop for Media {
    fn drop(&mut self) {
        // Dropping a runtime from async code would panic; let its threads wind down alone.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Closes connections handed to [`Media::close`], several at a time, each within
/// `CLOSE_TIMEOUT`.
async fn reap(mut closing: tokio::sync::mpsc::UnboundedReceiver<Arc<dyn PeerConnection>>) {
    let mut running = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            next = closing.recv() => match next {
                Some(connection) => {
                    running.spawn(crate::supervision::contain_future(async move {
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close()).await;
                    }));
                }
                None => break,
            },
            Some(_) = running.join_next(), if !running.is_empty() => {}
        }
    }
    while running.join_next().await.is_some() {}
}

/// Marks inbound keyframe requests (PLI, FIR) for the application and lets the rest of the
/// inbound RTCP end where it always does, with the interceptors that act on it. webrtc-rs 0.21
/// hands inbound RTCP to the application only when an interceptor marks it so. Goes last in the
/// chain (`Slot::from(14_000)`). Public for clients built on webrtc-rs (tests, benchmarks).
#[derive(Default)]
pub struct KeyframeRequests {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

/// Whether an RTCP packet asks for a keyframe (PLI or FIR).
pub fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequests {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut message: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &message.message.packet {
            let requests: Vec<Box<dyn rtc::rtcp::Packet>> =
                packets.iter().filter(|packet| is_keyframe_request(packet.as_ref())).cloned().collect();
            if requests.is_empty() {
                return Ok(());
            }
            message.message.packet = Packet::Rtcp(requests);
            message.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(message);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, message: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(message);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
}

impl Interceptor for KeyframeRequests {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// An SSRC a subscriber connection used before, and where its sequence numbers and timestamps
/// go on. webrtc-rs 0.21 keeps per-SSRC state (statistics, SRTP contexts) for a connection's
/// whole life, so a participant who stays while others come and go would grow with every SSRC
/// it was ever sent; reusing them bounds that by the most tracks it received at once.
#[derive(Debug, Clone, Copy)]
pub struct Recycled {
    ssrc: u32,
    next_seq: u16,
    next_ts: u32,
}

/// No packet forwarded yet.
const UNSET: u64 = u64::MAX;

fn pack(seq: u16, ts: u32) -> u64 {
    (u64::from(seq) << 32) | u64::from(ts)
}

fn unpack(packed: u64) -> (u16, u32) {
    ((packed >> 32) as u16, packed as u32)
}

/// Maps a publisher's sequence numbers and timestamps onto an SSRC's own, continuing from
/// where the SSRC left off. Written by one forwarding loop, read when the SSRC is recycled.
struct Sequencer {
    seq_start: u16,
    ts_start: u32,
    /// The first forwarded packet's (sequence number, timestamp) from the publisher, packed.
    base: AtomicU64,
    /// The newest (sequence number, timestamp) written, packed: a retransmission of an older
    /// packet does not move it back.
    newest: AtomicU64,
}

impl Sequencer {
    fn new(next_seq: u16, next_ts: u32) -> Self {
        Self { seq_start: next_seq, ts_start: next_ts, base: AtomicU64::new(UNSET), newest: AtomicU64::new(UNSET) }
    }

    fn rewrite(&self, seq: u16, ts: u32) -> (u16, u32) {
        let mut base = self.base.load(Ordering::Relaxed);
        if base == UNSET {
            base = pack(seq, ts);
            self.base.store(base, Ordering::Relaxed);
        }
        let (base_seq, base_ts) = unpack(base);
        let out = (
            self.seq_start.wrapping_add(seq.wrapping_sub(base_seq)),
            self.ts_start.wrapping_add(ts.wrapping_sub(base_ts)),
        );
        // Only this forwarding loop writes: load-compare-store is enough. Newer in sequence-number
        // order (RFC 3550's wrap-around comparison), not later in arrival.
        let newest = self.newest.load(Ordering::Relaxed);
        if newest == UNSET || (out.0.wrapping_sub(unpack(newest).0) as i16) > 0 {
            self.newest.store(pack(out.0, out.1), Ordering::Relaxed);
        }
        out
    }

    /// The sequence number after the newest written, and a timestamp `gap` ticks after its.
    fn next(&self, gap: u32) -> (u16, u32) {
        let (seq, ts) = match self.newest.load(Ordering::Relaxed) {
            UNSET => (self.seq_start.wrapping_sub(1), self.ts_start.wrapping_sub(gap)),
            newest => unpack(newest),
        };
        (seq.wrapping_add(1), ts.wrapping_add(gap))
    }
}

/// What became of a packet offered to a [`Backlog`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offered {
    /// Written straight away; `false` if the writer refused it.
    Written(bool),
    /// Queued behind packets the writer has not taken yet.
    Queued,
    /// Queued, and the oldest queued packet dropped to make room.
    QueuedDroppingOldest,
}

/// An order-keeping hand-off between one producer (a fan-out's forwarding loop) and a writer
/// that may be momentarily full (a subscriber connection's driver queue): packets are written
/// directly while the writer takes them; once it does not, they queue (up to `capacity`, then
/// the oldest go) and a drain task writes them, waiting on the writer, until the queue is empty.
/// So one slow subscriber costs the forwarding loop nothing and the others never wait for it.
struct Backlog<P> {
    state: Mutex<BacklogState<P>>,
    wake: tokio::sync::Notify,
    capacity: usize,
}

struct BacklogState<P> {
    packets: VecDeque<P>,
    /// The drain task owns the order: the producer only queues until the queue is empty again.
    draining: bool,
}

impl<P: Clone> Backlog<P> {
    fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(BacklogState { packets: VecDeque::new(), draining: false }),
            wake: tokio::sync::Notify::new(),
            capacity: capacity.max(1),
        }
    }

    /// Writes `packet` with `write_now` (which answers `None` when the writer would have to
    /// wait) unless packets are already queued, in which case it queues behind them.
    fn offer(&self, packet: P, write_now: impl FnOnce(P) -> Option<bool>) -> Offered {
        {
            let mut state = self.state.lock();
            if state.draining {
                return self.enqueue(&mut state, packet);
            }
        }
        match write_now(packet.clone()) {
            Some(written) => Offered::Written(written),
            None => {
                let offered = {
                    let mut state = self.state.lock();
                    state.draining = true;
                    self.enqueue(&mut state, packet)
                };
                self.wake.notify_one();
                offered
            }
        }
    }

    fn enqueue(&self, state: &mut BacklogState<P>, packet: P) -> Offered {
        let dropped = state.packets.len() >= self.capacity && state.packets.pop_front().is_some();
        state.packets.push_back(packet);
        if dropped {
            Offered::QueuedDroppingOldest
        } else {
            Offered::Queued
        }
    }

    /// The drain task: whenever packets queue, writes them in order with `write` (which may
    /// wait), then hands direct writing back to the producer. Runs until cancelled.
    async fn drain<F, W>(&self, mut write: W)
    where
        W: FnMut(P) -> F,
        F: Future<Output = ()>,
    {
        loop {
            self.wake.notified().await;
            loop {
                let next = {
                    let mut state = self.state.lock();
                    match state.packets.pop_front() {
                        Some(packet) => packet,
                        None => {
                            state.draining = false;
                            break;
                        }
                    }
                };
                write(next).await;
            }
        }
    }
}

/// One subscriber's copy of a published track: its own SSRC, and sequence numbers and
/// timestamps that continue from whatever the SSRC carried before (the publisher's are offset).
pub struct Downstream {
    pub subscriber: String,
    pub track: Arc<TrackLocalStaticRTP>,
    pub kind: MediaKind,
    ssrc: u32,
    payload_type: u8,
    sequencer: Sequencer,
    backlog: Backlog<RtpPacket>,
    /// The fan-out's count of packets written to subscribers (shared with every copy).
    forwarded: Arc<AtomicU64>,
}

impl Downstream {
    /// A local track for `subscriber` carrying `fanout`'s media, on a `recycled` SSRC or a new
    /// one, with the SFU's payload type and the publisher's participant id as stream id (so a
    /// browser groups a participant's audio and video in one `MediaStream`).
    pub fn new(subscriber: &str, fanout: &Fanout, recycled: Option<Recycled>) -> Arc<Self> {
        let recycled = recycled.unwrap_or_else(|| Recycled {
            ssrc: rand::random::<u32>() | 1,
            next_seq: rand::random(),
            next_ts: rand::random(),
        });
        let track = TrackLocalStaticRTP::new(MediaStreamTrack::new(
            fanout.publisher.clone(),
            fanout.track.clone(),
            fanout.track.clone(),
            fanout.kind.rtp_kind(),
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(recycled.ssrc), ..Default::default() },
                codec: fanout.kind.codec(),
                ..Default::default()
            }],
        ));
        Arc::new(Self {
            subscriber: subscriber.to_owned(),
            track: Arc::new(track),
            kind: fanout.kind,
            ssrc: recycled.ssrc,
            payload_type: fanout.kind.payload_type(),
            sequencer: Sequencer::new(recycled.next_seq, recycled.next_ts),
            backlog: Backlog::new(BACKLOG_PACKETS),
            forwarded: fanout.forwarded.clone(),
        })
    }

    /// Hands one packet (already rewritten for this copy) to the subscriber's connection: written
    /// now if its queue has room, else queued for [`Downstream::drain`].
    fn offer(&self, packet: RtpPacket) {
        let offered =
            self.backlog.offer(packet, |packet| self.track.write_rtp(packet).now_or_never().map(|r| r.is_ok()));
        match offered {
            Offered::Written(true) => self.written(),
            Offered::Written(false) => {
                metrics().sfu_write_errors.inc();
            }
            Offered::Queued => {}
            Offered::QueuedDroppingOldest => {
                metrics().sfu_dropped_packets.inc();
            }
        }
    }

    fn written(&self) {
        metrics().sfu_forwarded_packets.inc();
        self.forwarded.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes what queued while the connection was not taking packets, waiting on it; an owned
    /// task of the subscriber for as long as the copy is forwarded to.
    pub async fn drain(&self) {
        self.backlog
            .drain(|packet| async move {
                match self.track.write_rtp(packet).await {
                    Ok(()) => self.written(),
                    Err(_) => {
                        metrics().sfu_write_errors.inc();
                    }
                }
            })
            .await;
    }

    pub fn as_track_local(&self) -> Arc<dyn TrackLocal> {
        self.track.clone()
    }

    /// This copy's SSRC, to be reused: the next sequence number, and a timestamp a second on.
    pub fn recycle(&self) -> Recycled {
        let second = match self.kind {
            MediaKind::Video => 90_000,
            MediaKind::Audio => 48_000,
        };
        let (next_seq, next_ts) = self.sequencer.next(second);
        Recycled { ssrc: self.ssrc, next_seq, next_ts }
    }
}

/// A published track and the subscribers it is forwarded to.
pub struct Fanout {
    pub publisher: String,
    pub track: String,
    pub kind: MediaKind,
    remote: Arc<dyn TrackRemote>,
    media_ssrc: u32,
    downstream: RwLock<Arc<[Arc<Downstream>]>>,
    muted: AtomicBool,
    last_keyframe_request: Mutex<Option<Instant>>,
    forwarded: Arc<AtomicU64>,
}

impl Fanout {
    /// The fan-out of a track a publisher just started sending; `None` for a track without an
    /// SSRC or of a kind the SFU does not forward.
    pub async fn of(publisher: &str, remote: Arc<dyn TrackRemote>) -> Option<Arc<Self>> {
        let media_ssrc = remote.ssrcs().await.first().copied()?;
        let kind = MediaKind::of(remote.kind().await)?;
        let track = remote.track_id().await;
        Some(Arc::new(Self {
            publisher: publisher.to_owned(),
            track,
            kind,
            remote,
            media_ssrc,
            downstream: RwLock::new(Arc::from(Vec::new())),
            muted: AtomicBool::new(false),
            last_keyframe_request: Mutex::new(None),
            forwarded: Arc::new(AtomicU64::new(0)),
        }))
    }

    pub fn add(&self, downstream: Arc<Downstream>) {
        let mut list = self.downstream.write();
        let mut next: Vec<_> = list.iter().filter(|d| d.subscriber != downstream.subscriber).cloned().collect();
        next.push(downstream);
        *list = Arc::from(next);
    }

    pub fn remove(&self, subscriber: &str) {
        let mut list = self.downstream.write();
        let next: Vec<_> = list.iter().filter(|d| d.subscriber != subscriber).cloned().collect();
        *list = Arc::from(next);
    }

    pub fn subscribers(&self) -> usize {
        self.downstream.read().len()
    }

    pub fn set_muted(&self, muted: bool) {
        self.muted.store(muted, Ordering::Relaxed);
    }

    pub fn muted(&self) -> bool {
        self.muted.load(Ordering::Relaxed)
    }

    /// Packets written to subscribers so far.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    /// Asks the publisher for a keyframe (PLI), at most once per `KEYFRAME_REQUEST_INTERVAL`.
    pub async fn request_keyframe(&self) {
        if self.kind != MediaKind::Video {
            return;
        }
        {
            let mut last = self.last_keyframe_request.lock();
            if last.is_some_and(|at| at.elapsed() < KEYFRAME_REQUEST_INTERVAL) {
                metrics().sfu_keyframe_requests.get_or_create(&OutcomeLabels::of("throttled")).inc();
                return;
            }
            *last = Some(Instant::now());
        }
        metrics().sfu_keyframe_requests.get_or_create(&OutcomeLabels::of("sent")).inc();
        let request = PictureLossIndication { sender_ssrc: 0, media_ssrc: self.media_ssrc };
        if let Err(error) = self.remote.write_rtcp(vec![Box::new(request)]).await {
            tracing::debug!(%error, track = %self.track, "keyframe request not sent");
        }
    }

    /// Reads the publisher's packets until the track ends, handing each to every subscriber's
    /// copy with the subscriber's SSRC, sequence numbers, timestamps and payload type and without
    /// the publisher's header extensions (their ids are the publisher's negotiation, not the
    /// subscriber's). Never waits on a subscriber (see [`Backlog`]).
    pub async fn forward(self: Arc<Self>) {
        while let Some(event) = self.remote.poll().await {
            match event {
                TrackRemoteEvent::OnRtpPacket(packet) => {
                    if self.muted.load(Ordering::Relaxed) {
                        continue;
                    }
                    let targets = self.downstream.read().clone();
                    for target in targets.iter() {
                        let mut copy = packet.clone();
                        let (seq, ts) =
                            target.sequencer.rewrite(packet.header.sequence_number, packet.header.timestamp);
                        copy.header.sequence_number = seq;
                        copy.header.timestamp = ts;
                        copy.header.ssrc = target.ssrc;
                        copy.header.payload_type = target.payload_type;
                        copy.header.extension = false;
                        copy.header.extension_profile = 0;
                        copy.header.extensions.clear();
                        target.offer(copy);
                    }
                }
                TrackRemoteEvent::OnEnded => break,
                _ => {}
            }
        }
    }
}

/// Relays a subscriber's keyframe requests for `track` to the publisher until the track is
/// unbound (negotiated away, connection closed) or the publisher is gone.
pub async fn relay_keyframe_requests(downstream: Arc<Downstream>, fanout: Weak<Fanout>) {
    while let Some(event) = downstream.track.poll().await {
        if let TrackLocalEvent::OnRtcpPacket(packets) = event {
            if packets.iter().any(|packet| is_keyframe_request(packet.as_ref())) {
                match fanout.upgrade() {
                    Some(fanout) => fanout.request_keyframe().await,
                    None => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use parking_lot::Mutex;

    use super::{Backlog, Offered, Sequencer};

    #[actix_rt::test]
    async fn a_subscriber_that_falls_behind_gets_its_packets_in_order_and_loses_only_the_oldest() {
        // Regression: a fan-out used to await each subscriber's write one after another, so one
        // subscriber whose connection queue was full held up the track for everyone.
        let backlog = Arc::new(Backlog::<u32>::new(4));
        let written = Arc::new(Mutex::new(Vec::new()));
        let write_now = |packet| {
            written.lock().push(packet);
            Some(true)
        };
        assert_eq!(backlog.offer(1, write_now), Offered::Written(true));
        assert_eq!(backlog.offer(2, write_now), Offered::Written(true));
        assert_eq!(backlog.offer(3, |_| None), Offered::Queued, "a full connection: the packet queues");
        let never = |_| -> Option<bool> { panic!("a packet must not overtake the queued ones") };
        for packet in 4..=6 {
            assert_eq!(backlog.offer(packet, never), Offered::Queued);
        }
        assert_eq!(backlog.offer(7, never), Offered::QueuedDroppingOldest, "capacity 4: packet 3 goes");
        assert_eq!(backlog.offer(8, never), Offered::QueuedDroppingOldest, "then packet 4");

        let drained = written.clone();
        let draining = backlog.clone();
        let _drain = crate::tasks::spawn_owned("test.drain", async move {
            draining
                .drain(|packet| {
                    let drained = drained.clone();
                    async move {
                        tokio::task::yield_now().await; // A writer that makes the drain wait.
                        drained.lock().push(packet);
                    }
                })
                .await;
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while backlog.state.lock().draining {
            assert!(Instant::now() < deadline, "the backlog never drained");
            tokio::time::sleep(Duration::from_millis(5)).await; // Poll for the drain task.
        }
        assert_eq!(*written.lock(), vec![1, 2, 5, 6, 7, 8]);
        assert_eq!(backlog.offer(9, write_now), Offered::Written(true), "drained: direct writes again");
        assert_eq!(backlog.offer(10, |_| Some(false)), Offered::Written(false), "a refusal is reported");
        assert_eq!(*written.lock(), vec![1, 2, 5, 6, 7, 8, 9]);
    }

    #[test]
    fn a_recycled_ssrc_continues_its_sequence_numbers_and_timestamps() {
        // Regression: a new SSRC per subscription grew webrtc-rs's per-SSRC state forever; a
        // reused SSRC must look like one continuous stream to SRTP and to the receiver.
        let first = Sequencer::new(65_530, 1_000);
        assert_eq!(first.rewrite(100, 50_000), (65_530, 1_000));
        assert_eq!(first.rewrite(101, 53_000), (65_531, 4_000));
        assert_eq!(first.rewrite(110, 80_000), (4, 31_000), "sequence numbers wrap");
        let (next_seq, next_ts) = first.next(90_000);
        assert_eq!((next_seq, next_ts), (5, 121_000));

        // The next publisher on the same SSRC starts wherever its own numbering is.
        let second = Sequencer::new(next_seq, next_ts);
        assert_eq!(second.rewrite(7, 9), (5, 121_000));
        assert_eq!(second.rewrite(8, 3_009), (6, 124_000));
        // Never forwarded: the SSRC goes on right where it was handed over.
        assert_eq!(Sequencer::new(42, 7).next(100), (42, 7));
    }

    #[test]
    fn a_retransmitted_packet_does_not_set_a_recycled_ssrc_back() {
        // Regression: the SSRC went on from the last packet written, and a publisher's
        // retransmission (an answer to the SFU's NACK) is an old one. The next subscription on
        // that SSRC then started up to hundreds of sequence numbers behind what the subscriber
        // had received, and SRTP's replay protection dropped all of it ("duplicated") until it
        // caught up: under load, an observer got nothing of a newcomer for 20 s and more.
        let sequencer = Sequencer::new(65_000, 0);
        for n in 0..600u16 {
            sequencer.rewrite(1_000 + n, u32::from(n) * 960);
        }
        // 65_000 + 599 wrapped: the newest written is 63; then packet 1_050 comes again.
        assert_eq!(sequencer.rewrite(1_050, 50 * 960), (65_050, 48_000));
        assert_eq!(sequencer.next(48_000), (64, 599 * 960 + 48_000), "after the newest, not after the retransmission");
    }
}
