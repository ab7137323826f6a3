//! The media plane: the runtime that forwards packets, peer connections built the SFU's way, and
//! the fan-out of each published track to its subscribers.
//!
//! Owns: the media runtime (a multi-threaded tokio runtime of `sfu.media_threads` threads, apart
//! from actix's arbiters, so a busy forwarding loop never delays an HTTP request or an actor);
//! the codecs and interceptors every connection uses; the reaper that closes connections their
//! peers dropped. `fanout.rs`: [`Fanout`], the per-track list of subscribers and the forwarding
//! loop, and each subscriber's copy ([`Downstream`]).
//!
//! Only `media/` and `peer/` know webrtc-rs. Every webrtc-rs call runs on the media runtime
//! (its `TokioRuntime` spawns on the ambient runtime); actors reach it through [`Media::run`].
//!
//! Must never: hold a lock across an `.await` on the packet path, or keep a peer alive (fan-outs
//! hold subscribers' tracks, never their actors or connections).

mod fanout;

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::interceptor::{Attribute, Interceptor, Packet, Slot, StreamInfo, TaggedPacket};
use rtc::peer_connection::configuration::interceptor_registry::{register_default_interceptors, Registry};
use rtc::peer_connection::configuration::media_engine::{MediaEngine, MIME_TYPE_OPUS, MIME_TYPE_VP8};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind};
use rtc::sansio::Protocol;
use webrtc::peer_connection::{PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler};

pub use fanout::{relay_keyframe_requests, Downstream, Fanout, Recycled};

use super::SfuConfig;
use crate::tasks::OwnedTask;

/// Payload types the SFU offers to subscribers (and accepts from publishers, whatever numbers
/// their offers use).
const VP8_PAYLOAD_TYPE: u8 = 96;
const OPUS_PAYLOAD_TYPE: u8 = 111;
/// At most one keyframe request per published track per this long reaches the publisher.
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);
/// How long the reaper gives one connection to close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

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
            .with_tcp_addrs(if self.config.ice_tcp { binds.clone() } else { Vec::new() })
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
