//! The fan-out of a published track: the forwarding loop that copies each packet to every
//! subscriber ([`Fanout`]), and a subscriber's copy with its own SSRC, rewritten sequence numbers
//! and timestamps, and a backlog for a connection momentarily full ([`Downstream`]).
//!
//! Must never: hold a lock across an `.await` on the packet path, or keep a peer alive (fan-outs
//! hold subscribers' tracks, never their actors or connections).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use futures_util::FutureExt as _;
use parking_lot::{Mutex, RwLock};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp::packet::Packet as RtpPacket;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodingParameters, RTCRtpEncodingParameters};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::media_stream::MediaStreamTrack;

use super::{is_keyframe_request, MediaKind, KEYFRAME_REQUEST_INTERVAL};
use crate::telemetry::{metrics, OutcomeLabels};

/// Packets a subscriber's copy of a track holds while its connection is not taking writes
/// (about a quarter second of 1,000 packets/s video); beyond that the oldest are dropped.
const BACKLOG_PACKETS: usize = 256;

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
