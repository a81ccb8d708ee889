//! The SFU core, sans-IO: sessions (one str0m peer each) in rooms, the routing of datagrams on
//! the shared UDP port, and forwarding from producers (publishers' tracks: WebRTC peers, or
//! internal publishers such as RTMP, pull ingests and mixes) to consumers (viewers' tracks) and
//! taps (in-process subscribers). Time and datagrams come in through `handle_*`; everything
//! that goes out — datagrams, tap packets, room events, keyframe requests for internal
//! publishers — comes out of one `poll_output`, in order.
//!
//! `producer` holds what comes in (layers, rates, the GOP cache), `consumer` what goes out (the
//! per-packet routing decision), `allocator` the layer choice; this module the sessions, rooms
//! and routing between them.

mod allocator;
mod consumer;
mod events;
mod forwarding;
mod membership;
mod messages;
mod pipes;
mod producer;
pub mod red;
mod rooms;
mod signals;
mod speed;
mod subscriber;
mod tap_layers;
mod types;

pub use allocator::{plan, LayerChoice, LayerRate, PauseHold, Plan, Priority, Prober, TrackDemand};
pub use messages::{ChannelKind, MemberMessage, OutgoingCustom};
pub use pipes::PipedPacket;
pub use producer::KEYFRAME_REQUEST_INTERVAL;
/// Whether an RTP payload of `codec` may start a keyframe (the first packet of an IDR access
/// unit, its SPS, a VP8 key frame).
pub fn payload_starts_keyframe(codec: tessera_media::Codec, payload: &[u8]) -> bool {
    producer::is_keyframe(codec, payload)
}
pub use speed::{SpeedTestRefusal, MAX_SPEED_TESTS_PER_APP};
pub use subscriber::{OfferedTrack, SubscribeRequest, SubscriberError, SubscriberOffer};
pub use types::*;

use crate::presence::{LeaveReason, Presence, Track};
use consumer::{Consumer, Queued, Route, MAX_QUEUED_PACKETS};
use producer::{is_keyframe, note_layer, temporal_of, to_codec, vp8_descriptor, FwdPacket, GopCache, InternalPublisher, Layer, Producer, INTERNAL_AUDIO_MID, INTERNAL_VIDEO_MID};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use subscriber::{Offered, Subscription};
use tessera_media::{KeyframeThrottle, StreamKind};
use tessera_model::UserId;
use tessera_rtc::str0m::bwe::{Bitrate, BweKind};
/// A simulcast layer's RTP stream id (str0m's), as packets, taps and keyframe requests name it.
pub use tessera_rtc::str0m::media::Rid;
use tessera_rtc::str0m::media::{KeyframeRequestKind, MediaKind, Mid};
use tessera_rtc::str0m::net::{Protocol, Receive};
use tessera_rtc::str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite};
use tessera_rtc::str0m::{Event, Input, Output};
use tessera_rtc::{demux, OfferError, Peer, PeerRole};

/// A session whose ICE has not connected by then is dropped.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often layers are re-chosen and rooms and sessions are checked.
const TICK: Duration = Duration::from_millis(250);
/// How long a connected WebRTC peer may be silent before its session ends (issue 10, defect 5).
pub const DEFAULT_LIVENESS_TIMEOUT: Duration = Duration::from_secs(15);
/// Packets kept per consumer track for retransmission, and for how long until the viewer's RTT
/// is known (then `rtx_cache_age`).
pub const RTX_CACHE_PACKETS: usize = 2048;
pub const RTX_CACHE_AGE: Duration = Duration::from_secs(1);

/// How old a packet may be and still be resent to a viewer with this RTT. A packet is cached
/// when written, before it waits in the pacer (up to `MAX_LINK_QUEUE_DELAY`); its NACK comes
/// about an RTT after it leaves, and the resend needs another RTT to arrive, while a browser's
/// jitter buffer gives up on a frame after about a second. Older packets only add load to a
/// link that is already losing them. Within 0.8–2 s.
fn rtx_cache_age(rtt: Duration) -> Duration {
    (rtt * 3 + consumer::MAX_LINK_QUEUE_DELAY + Duration::from_millis(200)).clamp(Duration::from_millis(800), Duration::from_secs(2))
}
/// The least playout delay a viewer's browser is asked for (RTP's playout-delay extension) on a
/// link that loses packets: a frame missing a packet is complete only after a NACK and its
/// retransmission (an RTT, and the time to notice), and a browser whose jitter buffer is
/// shorter shows the frame late, as a freeze, each time. Asked for from a second with 1 % of
/// the viewer's video lost until `PLAYOUT_HOLD` without; never on a clean link (no added
/// latency). At most 400 ms. Held while the link loses, and moved only by 20 ms or more from
/// `current`: each change moves the browser's playout, and per-second loss and RTT are noisy.
/// RTT + 120 ms: the resend of a lost packet comes an RTT after the gap is seen, and a second
/// one (the first or its NACK lost) 100 ms later, when the browser asks again (its retry timer
/// without an RTT of its own); RTT + 60 ms covered only the first (measured, 5 % loss each
/// way, with `resend_copies`: a freeze after the first 5 s in 3 of 11 runs, 6 freezes, against
/// 1 of 6 runs, 1 freeze).
fn playout_delay(current: Option<Duration>, lossy_at: Option<Instant>, rtt: Option<Duration>, now: Instant) -> Option<Duration> {
    let (at, rtt) = lossy_at.zip(rtt)?;
    if now.saturating_duration_since(at) >= PLAYOUT_HOLD {
        return None;
    }
    let wanted = (rtt + Duration::from_millis(120)).min(Duration::from_millis(400));
    match current {
        Some(old) if old.abs_diff(wanted) < Duration::from_millis(20) => Some(old),
        _ => Some(wanted),
    }
}
/// The share of what a thinned link was measured to carry that its pacer sends media at, and
/// its layers are chosen within, for a while (`NetStats::pacing_ceiling`): what is left drains
/// the queue that overflowed.
const DRAINING_SHARE: f64 = 0.8;
/// str0m's recent transport-wide loss (`Rtc::bwe_loss_now`) under which a viewer's link counts
/// as not losing (`NetStats::loss_hold_stale`'s clean link): a lost packet in a few hundred.
const CLEAN_LOSS: f64 = 0.002;
/// str0m's recent transport-wide loss under which a link whose receiver reports no loss counts
/// as clean too: what str0m reads as lost there was reordered (`allocate`'s `receiver_lossless`).
const REORDER_LOSS: f64 = 0.15;
/// The share of a thinned link's measured rate its layers are chosen within while that
/// measure caps the estimate (`NetStats::thinned_cap`).
const CAPPED_SHARE: f64 = 0.85;
/// Bounds of `Consumer::hold_for_drain` (between, until the link's feedback shows its queue
/// drained).
const DRAIN_HOLD_MIN: Duration = Duration::from_millis(100);
const DRAIN_HOLD_MAX: Duration = Duration::from_millis(700);
/// The share of packets lost, over the last feedbacks, from which a link whose RTT rose is
/// thinning (not just queueing a keyframe's burst).
const THINNING_LOSS: f64 = 0.1;
/// A packet that queued this long on its way to a viewer says the viewer's link queues.
const QUEUEING_RISE: Duration = Duration::from_millis(50);
/// A packet that queued this long says the link thinned before its losses are reported.
const DEEP_QUEUE: Duration = Duration::from_millis(150);
/// A packet that queued this long, while the link delivered well under the estimate, says it
/// thinned (shallower, what arrived over `THINNED_WINDOW` included packets that had not
/// queued: 227 kbit/s read at 53 ms of a 400 kbit/s link).
const THINNING_QUEUE: Duration = Duration::from_millis(80);
/// ...and what arrived over `THINNED_WINDOW` under this share of the estimate (a rate step
/// 3 Mbit/s → 400 kbit/s: 0.15; a probe's overshoot on a 1.2 Mbit/s link, a keyframe's burst
/// queued with gaps between: 0.67, not a thinned link).
const THINNED_SHARE: f64 = 0.5;
/// A deep queue held this long stands (`NetStats::standing`).
const STANDING_QUEUE: Duration = Duration::from_secs(1);
/// What a queueing link's receiver got over this last span is what it carries now (a longer
/// span reaches back before the step: 150 ms read 480-700 kbit/s of a 400 kbit/s link at the
/// first queue, 60 ms 350-370).
const THINNED_WINDOW: Duration = Duration::from_millis(60);
const PLAYOUT_LOSSY: f32 = 0.01;
const PLAYOUT_HOLD: Duration = Duration::from_secs(10);

/// The pacing base of a viewer that sends no transport-wide feedback (aiortc, simple WHEP
/// players, the load tool): str0m has no estimate for it and would pace it at its start
/// estimate (800 kbit/s) for good, so a stream above that queues until its frames are cut.
/// Its pacer follows what it is sent instead: this many times its media rate (a keyframe goes
/// out within a few frame intervals, not as one burst: unpaced, bursts lost keyframes at
/// aiortc viewers), never below the start estimate, reset when that moves by a quarter.
fn unmeasured_pacing(current: Option<f64>, media_bps: f64) -> Option<f64> {
    let wanted = (media_bps * UNMEASURED_PACING_FACTOR).max(UNMEASURED_PACING_MIN);
    match current {
        Some(c) if (wanted - c).abs() < c * 0.25 => None,
        _ => Some(wanted),
    }
}
const UNMEASURED_PACING_FACTOR: f64 = 3.0;
const UNMEASURED_AFTER: Duration = Duration::from_secs(1);
const UNMEASURED_PACING_MIN: f64 = 800_000.0;

/// A restart's GOP replay (video cut on a congested link, then resumed) must have caught up
/// with the live stream within this, or it is not made and the viewer waits for the source's
/// next keyframe.
const REPLAY_CATCH_UP: Duration = Duration::from_secs(1);

/// Whether replaying `gop` (from its keyframe to now) to a viewer with this estimate catches
/// up with the live stream within `REPLAY_CATCH_UP`: the replay leaves at what the estimate
/// has above the GOP's own rate. Without an estimate, it does. A replay that cannot leave in
/// time is cut at the queue limit, asked for again, and feeds a thin link bursts of old video
/// (measured: an RTMP stream of ~290 kbit/s on a 300 kbit/s link with 5 % loss, a replay each
/// second, 50 % loss and a 500 ms RTT until the link was repaired).
fn replay_fits(gop: &[producer::FwdPacket], estimate_bps: Option<f64>, now: Instant) -> bool {
    let (Some(estimate), Some((bits, rate))) = (estimate_bps, gop_bits_and_rate(gop, now)) else { return true };
    let spare = estimate - rate;
    spare > 0.0 && bits / spare <= REPLAY_CATCH_UP.as_secs_f64()
}

/// A cached GOP's bits on the wire, and its own rate (from its keyframe to now); `None` when
/// empty.
fn gop_bits_and_rate(gop: &[producer::FwdPacket], now: Instant) -> Option<(f64, f64)> {
    let first = gop.first()?;
    let bits = gop.iter().map(wire_bits).sum::<f64>();
    Some((bits, bits / now.saturating_duration_since(first.arrival).as_secs_f64().max(0.1)))
}

/// One packet's bits on the wire (`RTP_OVERHEAD_BYTES` besides its payload).
fn wire_bits(p: &producer::FwdPacket) -> f64 {
    (p.payload.len() + RTP_OVERHEAD_BYTES) as f64 * 8.0
}

/// What a viewer's pacer sends at: 1.1 × its estimate (the raw one where known), or its floor.
fn pacing_bps(estimate_bps: Option<f64>, raw_estimate_bps: Option<f64>, floor_bps: f64) -> Option<f64> {
    raw_estimate_bps.or(estimate_bps).map(|e| (e * 1.1).max(floor_bps))
}
/// Per packet on the wire besides its payload: IP, UDP, RTP header and extensions, SRTP tag.
const RTP_OVERHEAD_BYTES: usize = 60;

/// Resends stop when retransmissions exceed this share of the bytes a stream sent in the last
/// second (str0m's cap): at most half, on a link with room for them.
pub const RTX_RATIO_CAP: f32 = 0.5;
/// The least share resends keep on a link that media already fills, so random loss is still
/// repaired.
const RTX_RATIO_MIN: f32 = 0.1;

/// The share of a viewer's bytes that resends may take: `RTX_RATIO_MIN` while its link queues
/// (its RTT well above the lowest: the link is full), else `RTX_RATIO_CAP`. Resends on top of
/// media that fills a link are lost in turn, asked for again, and turn loss into collapse. Not
/// from the estimate: it follows what is sent, and a loss-based estimate falls on a lossy link
/// that has room, where a burst of loss needs its resends (measured, 10 % burst loss, with the
/// least cap also below an estimate under the media: freezes 2.6–4.2 s of 25; a cap scaled by
/// the estimate's margin over the media: 3.6 s).
fn rtx_ratio_cap(queueing: bool) -> f32 {
    if queueing {
        RTX_RATIO_MIN
    } else {
        RTX_RATIO_CAP
    }
}

/// The least its pacer sends at, for a viewer whose media goes out at `sent_bps` (what its
/// consumers hand over): 1.3 × that (room for resends, RED and a keyframe's burst) while its
/// video loses (`lossy`: `PLAYOUT_LOSSY` or more within `PLAYOUT_HOLD`; a 2 s window of burst
/// loss reads under 1 % now and then, and each time the pacer fell back and the queue was cut)
/// and its link has shown no queue for `UNQUEUED_FOR` (`quiet`), else nothing (str0m paces at 1.1 × its estimate). The
/// estimate's loss-based part falls on loss that is not congestion (10 % burst loss: 170-300
/// kbit/s for the lowest layer's ~230), and paced below its media the viewer's send queue grew
/// to 0.6-1.7 s and was cut, each cut a freeze. Not on a link without loss: near a rate cap
/// (600-700 kbit/s) a floor over the estimate filled the link's queue (RTT p50 56 → 88 ms).
fn pacing_floor(sent_bps: f64, lossy: bool, quiet: bool) -> f64 {
    if lossy && quiet {
        sent_bps * 1.3
    } else {
        0.0
    }
}

/// How long a viewer's link must have shown no queue for `pacing_floor`.
const UNQUEUED_FOR: Duration = Duration::from_secs(5);

/// How many times a video packet a viewer NACKs is resent: twice while its video loses (as
/// for the playout delay: from a second with `PLAYOUT_LOSSY`, held `PLAYOUT_HOLD`) no more than
/// `RESEND_TWICE_MAX_LOSS` and its link does not queue, else once. A lost resend, or a lost
/// NACK, costs a receive-only browser another NACK round (its retry timer is its default RTT,
/// 100 ms: it has no RTT measure of its own), and with a third round the frame misses even the
/// playout delay asked for: a freeze. With two copies a lost resend takes both lost (measured,
/// 5 % loss each way, playout RTT + 120 ms: a freeze after the first 5 s in 1 of 6 runs, 1
/// freeze, against 2 of 6 runs, 4 freezes, with one copy). The copy costs the loss rate's share of bytes again: not where loss is that high
/// (str0m's loss-based estimate then already holds the pacer below the media) or comes from
/// congestion.
fn resend_copies(lossy_at: Option<Instant>, loss: f32, queueing: bool, now: Instant) -> u8 {
    match lossy_at {
        Some(at) if !queueing && loss <= RESEND_TWICE_MAX_LOSS && now.saturating_duration_since(at) < PLAYOUT_HOLD => 2,
        _ => 1,
    }
}
const RESEND_TWICE_MAX_LOSS: f32 = 0.1;

/// Runs one call into a peer's WebRTC state. A panic there (a peer's bytes reaching a defect in
/// str0m that the fuzz targets have not found: stop 61 found one that any peer could trigger with
/// one RTCP packet) closes that peer alone: unwinding out of the media worker would end every
/// room placed on it. The peer's state after the panic is not trusted: it is disconnected at
/// once and dropped at the next tick.
fn guarded<T>(s: &mut Session, counters: &SfuCounters, call: impl FnOnce(&mut Session) -> T) -> Option<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call(s))) {
        Ok(v) => Some(v),
        Err(panic) => {
            tracing::error!(parent: &s.span, "peer closed: its WebRTC stack panicked: {}", panic_message(&*panic));
            counters.peer_panics.fetch_add(1, Ordering::Relaxed);
            s.peer.rtc.disconnect();
            None
        }
    }
}

/// The message a panic was raised with (`panic!` with a literal or a formatted one), or "".
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic.downcast_ref::<&str>().map(|m| m.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_default()
}

enum Role {
    Publisher {
        producers: Vec<Producer>,
    },
    Viewer {
        consumers: Vec<Consumer>,
        /// Its estimator's output as str0m emits it: averaged over 3 s (steady, but a link
        /// that suddenly thins shows only seconds later).
        estimate_bps: Option<f64>,
        /// The estimator's latest raw value (each second, with the peer's stats): a falling
        /// link shows at once.
        raw_estimate_bps: Option<f64>,
        /// Probing for the next step of its allocation.
        prober: Box<Prober>,
        /// The age its video consumers' retransmission caches keep (`rtx_cache_age`).
        rtx_age: Duration,
        /// The share of bytes its resends may take (`rtx_ratio_cap`).
        rtx_cap: f32,
        /// The playout delay its video asks of the browser (`playout_delay`) on a lossy link,
        /// and when the link last lost.
        playout_min: Option<Duration>,
        lossy_at: Option<Instant>,
        /// When any of its tracks last reported a loss (`red::levels`).
        red_lost_at: Option<Instant>,
        /// For a viewer without transport-wide feedback: the rate its pacer was last set to
        /// (`unmeasured_pacing`).
        paced_bps: Option<f64>,
        /// The rate its pacer does not go below (`pacing_floor`), as last set.
        pacing_floor: f64,
        send_mids: Vec<Mid>,
        /// What it watches: one (user, stream) for WHEP, any number on a `sub` connection.
        subscriptions: Vec<Subscription>,
        /// A connection the server offers to (room signaling's `sub`): its renegotiation.
        offered: Option<Box<Offered>>,
    },
    /// A speed test (`POST /v1/speedtest`): data channels only, in no room.
    SpeedTest(Box<speed::SpeedRun>),
}

impl Role {
    /// A viewer watching `subscriptions`; `offered` for a connection the server offers to.
    fn viewer(subscriptions: Vec<Subscription>, offered: Option<Box<Offered>>) -> Role {
        Role::Viewer {
            consumers: Vec::new(),
            estimate_bps: None,
            raw_estimate_bps: None,
            prober: Box::default(),
            rtx_age: RTX_CACHE_AGE,
            rtx_cap: RTX_RATIO_CAP,
            playout_min: None,
            lossy_at: None,
            red_lost_at: None,
            paced_bps: None,
            pacing_floor: 0.0,
            send_mids: Vec::new(),
            subscriptions,
            offered,
        }
    }
}

struct Session {
    spec: SessionSpec,
    peer: Peer,
    role: Role,
    /// When it is next due: the time of its live entry in `Sfu::timers` (None while it is being
    /// handled; draining it queues the next).
    queued_at: Option<Instant>,
    connected: bool,
    created: Instant,
    /// When a datagram of this peer last arrived (consent freshness, RFC 7675: browsers check
    /// consent every 5 s and send RTCP every second, so silence means the peer is gone).
    last_heard: Instant,
    addrs: Vec<SocketAddr>,
    /// Its latest network measurements (quality, stats).
    net: signals::NetStats,
    /// Queued in `Sfu::dirty` for draining (so it is queued once, however many packets it got).
    dirty: bool,
    /// The session's span (sid, room, user, role): its log lines name it. Entered only where
    /// something is logged, never per packet.
    span: tracing::Span,
    /// Tests: the next datagram from this peer panics inside `guarded`, as a defect in str0m would.
    #[cfg(test)]
    panic_on_input: bool,
}

#[derive(Default)]
struct Room {
    publishers: HashMap<(UserId, StreamKind), u64>,
    /// When each publishing user joined (the SFU's counter): the MCU's join order.
    joined: HashMap<UserId, u64>,
    viewers: HashMap<(UserId, StreamKind), Vec<u64>>,
    empty_since: Option<Instant>,
    created: Option<Instant>,
    /// Room-signaling sessions (WebSocket) present in the room.
    members: Vec<u64>,
    /// Open custom-message data channels: (user, session, channel, kind).
    channels: Vec<(UserId, u64, tessera_rtc::str0m::channel::ChannelId, ChannelKind)>,
    /// A copy of a room that lives on another worker, for viewers spread here (`pipes.rs`).
    satellite: bool,
}

impl Room {
    fn stop_viewing(&mut self, source: &(UserId, StreamKind), id: u64) {
        if let Some(v) = self.viewers.get_mut(source) {
            v.retain(|x| *x != id);
            if v.is_empty() {
                self.viewers.remove(source);
            }
        }
    }

    fn forget_if_gone(&mut self, user: &UserId) {
        if !self.publishers.keys().any(|(u, _)| u == user) {
            self.joined.remove(user);
        }
    }
}

/// A map keyed by the ids this SFU hands out (sessions, internal publishers): looked up several
/// times per forwarded copy, so hashed with FxHash, not SipHash (whose resistance to chosen keys
/// buys nothing for ids the server makes).
type IdMap<V> = HashMap<u64, V, rustc_hash::FxBuildHasher>;

pub struct Sfu {
    candidates: tessera_rtc::HostCandidates,
    sessions: IdMap<Session>,
    internal: IdMap<InternalPublisher>,
    by_sid: HashMap<String, u64>,
    by_ufrag: HashMap<String, u64>,
    by_addr: HashMap<SocketAddr, u64>,
    rooms: HashMap<RoomKey, Room>,
    next_id: u64,
    /// The next join order number (`Room::joined`).
    next_join: u64,
    /// What `poll_output` gives out, in order.
    out: VecDeque<SfuOutput>,
    /// `take_udp_transmits`'s second queue (its allocation kept).
    out_scratch: VecDeque<SfuOutput>,
    events: Vec<(u64, Event)>,
    /// `handle_events`' second buffer.
    spare_events: Vec<(u64, Event)>,
    dirty: Vec<u64>,
    scratch_ids: Vec<u64>,
    /// `allocate_all`'s list of viewers, kept for its capacity.
    scratch_viewers: Vec<u64>,
    /// Every session's next timeout, soonest first: finding the due peers costs O(log n) per
    /// due peer instead of a scan of all sessions per wake-up (the media task wakes thousands
    /// of times a second for the pacers). An entry is live while its session's `queued_at`
    /// names its time; others are stale and skipped.
    timers: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, u64)>>,
    next_tick: Instant,
    empty_room_timeout: Duration,
    /// A connected peer not heard from for this long is gone (tab closed, machine off).
    liveness_timeout: Duration,
    pub counters: Arc<SfuCounters>,
    /// In-process subscribers (mix jobs, relays, recordings) per room:
    /// (tap, whether it also takes mixes' output).
    taps: HashMap<RoomKey, Vec<(u64, TapKind)>>,
    /// Room-signaling sessions: their room and user.
    signaling: IdMap<(RoomKey, UserId)>,
    /// Who follows a room's publishers (tasks waiting for or recording a source), and the list
    /// they were last told. Watching does not keep a room alive; a tap does.
    watchers: HashMap<RoomKey, (Vec<u64>, Vec<PublisherInfo>)>,
    /// Participants and their tracks: the room and media events.
    presence: Presence,
    /// Each room's voices, for active speakers.
    speakers: HashMap<RoomKey, crate::speakers::RoomSpeakers>,
    /// When quality reports are due next.
    next_quality: Instant,
    /// Custom-message senders' rate limits and numbering, per (room, user).
    custom_limits: HashMap<(RoomKey, UserId), crate::custom::SenderLimit>,
    /// Speed-test sessions.
    speed_tests: Vec<u64>,
    /// This SFU's busy share of the last second (‰), as its driver measured it: viewer queues
    /// are also bounded by age from `SATURATED_PERMILLE`.
    busy_permille: u64,
    /// Layers every viewer's simulcast video is held below its top while this worker is
    /// saturated (`allocator::Shed`).
    shed: allocator::Shed,
    /// Where a datagram for one of our ufrags goes, when several SFUs (workers) share a port.
    ufrags: Option<UfragIndex>,
    worker: u16,
    /// Streams of rooms here that satellites on other workers take (`pipes.rs`).
    pipes: HashMap<RoomKey, Vec<pipes::PipeOut>>,
    /// Mix taps' layer per source, by tile size (`tap_layers.rs`): tap → (room, sources).
    tap_layers: HashMap<u64, (RoomKey, Vec<tap_layers::TapLayer>)>,
}

/// Which worker holds the peer with a given local ICE ufrag: the UDP dispatcher reads a STUN
/// binding request's USERNAME and sends the datagram to that worker (then learns its source
/// address). Written when a peer is made, restarted or dropped; read once per new flow.
pub type UfragIndex = Arc<std::sync::RwLock<HashMap<String, u16>>>;

/// Ids a worker hands out carry its index above this bit, so a command naming an id (an
/// ingest, a tap, a signaling member) finds its worker without a table. Below 2^53: they stay
/// exact in JSON.
pub const WORKER_ID_SHIFT: u32 = 40;

/// The worker that made an id.
pub fn worker_of_id(id: u64) -> usize {
    (id >> WORKER_ID_SHIFT) as usize
}

impl Session {
    /// A session whose peer has not connected yet.
    fn new(spec: SessionSpec, peer: Peer, role: Role, span: tracing::Span, now: Instant) -> Session {
        Session {
            spec,
            peer,
            role,
            queued_at: None,
            connected: false,
            created: now,
            last_heard: now,
            addrs: Vec::new(),
            net: Default::default(),
            dirty: false,
            span,
            #[cfg(test)]
            panic_on_input: false,
        }
    }
}

impl Sfu {
    /// Sets how long a connected peer may be silent before its session ends as timed out.
    pub fn set_liveness_timeout(&mut self, timeout: Duration) {
        self.liveness_timeout = timeout;
    }

    pub fn new(candidates: Vec<SocketAddr>, empty_room_timeout: Duration, now: Instant) -> Sfu {
        Sfu {
            candidates: tessera_rtc::HostCandidates { udp: candidates, tcp: Vec::new() },
            sessions: IdMap::default(),
            internal: IdMap::default(),
            by_sid: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            rooms: HashMap::new(),
            next_id: 1,
            next_join: 1,
            out: VecDeque::new(),
            out_scratch: VecDeque::new(),
            events: Vec::new(),
            spare_events: Vec::new(),
            dirty: Vec::new(),
            scratch_ids: Vec::new(),
            scratch_viewers: Vec::new(),
            timers: std::collections::BinaryHeap::new(),
            next_tick: now + TICK,
            empty_room_timeout,
            liveness_timeout: DEFAULT_LIVENESS_TIMEOUT,
            counters: Arc::new(SfuCounters::default()),
            taps: HashMap::new(),
            watchers: HashMap::new(),
            signaling: IdMap::default(),
            presence: Presence::default(),
            speakers: HashMap::new(),
            next_quality: now + crate::quality::QUALITY_INTERVAL,
            custom_limits: HashMap::new(),
            speed_tests: Vec::new(),
            busy_permille: 0,
            shed: allocator::Shed::default(),
            ufrags: None,
            worker: 0,
            pipes: HashMap::new(),
            tap_layers: HashMap::new(),
        }
    }

    /// Makes this SFU worker `index` of several sharing one UDP port: its ids carry the index,
    /// its counters are the shared ones, and its ufrags are published for the dispatcher.
    pub fn into_worker(mut self, index: u16, counters: Arc<SfuCounters>, ufrags: UfragIndex) -> Sfu {
        self.worker = index;
        self.next_id = ((index as u64) << WORKER_ID_SHIFT) + 1;
        self.counters = counters;
        self.ufrags = Some(ufrags);
        self
    }

    /// The driver's measure of how busy this SFU's task is (‰ of the last second), once a
    /// second: past saturation its viewers are shed to lower simulcast layers, and brought back
    /// when it has room again (`allocator::Shed`).
    pub fn set_busy_permille(&mut self, permille: u64, now: Instant) {
        self.busy_permille = permille;
        if self.shed.update(permille, now) {
            let layers = self.shed.layers();
            if layers > 0 {
                self.counters.layer_sheds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(worker = self.worker, busy = permille, layers, "media worker saturated: viewers held below their top simulcast layer");
            } else {
                tracing::info!(worker = self.worker, busy = permille, "media worker has room again: viewers' layers no longer held");
            }
            self.allocate_all(now);
        }
    }

    /// Re-chooses every viewer's layers (`allocate`).
    fn allocate_all(&mut self, now: Instant) {
        let mut viewers = std::mem::take(&mut self.scratch_viewers);
        viewers.clear();
        viewers.extend(self.sessions.iter().filter(|(_, s)| matches!(s.role, Role::Viewer { .. })).map(|(id, _)| *id));
        for &id in &viewers {
            self.allocate(id, now);
        }
        self.scratch_viewers = viewers;
    }

    /// Layers this worker's viewers are held below their top (0 unless saturated).
    pub fn shed_layers(&self) -> usize {
        self.shed.layers()
    }

    fn index_ufrag(&mut self, ufrag: &str, id: u64) {
        self.by_ufrag.insert(ufrag.to_owned(), id);
        if let Some(index) = &self.ufrags {
            index.write().unwrap_or_else(|e| e.into_inner()).insert(ufrag.to_owned(), self.worker);
        }
    }

    fn unindex_ufrag(&mut self, ufrag: &str) {
        self.by_ufrag.remove(ufrag);
        if let Some(index) = &self.ufrags {
            index.write().unwrap_or_else(|e| e.into_inner()).remove(ufrag);
        }
    }

    /// WHEP sessions a user has open in a room (at most 10 are allowed: PRODUCT.md §3.4).
    pub fn viewer_sessions(&self, room: &RoomKey, user: &UserId) -> usize {
        self.sessions.values().filter(|s| s.spec.role == PeerRole::Play && s.spec.room == *room && s.spec.user == *user).count()
    }

    /// Adds an in-process subscriber to every publisher of a room; its packets come out of
    /// `poll_tap`. A task started on a room that does not exist makes it, in `owner`'s name.
    pub fn add_tap(&mut self, room: RoomKey, kind: TapKind, owner: &UserId, now: Instant) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        if !self.rooms.contains_key(&room) {
            self.presence.room_created(&room, owner);
            self.rooms.insert(room.clone(), Room { created: Some(now), ..Room::default() });
        }
        self.taps.entry(room).or_default().push((id, kind));
        id
    }

    pub fn remove_tap(&mut self, id: u64) {
        self.tap_layers.remove(&id);
        self.taps.retain(|_, v| {
            v.retain(|(t, _)| *t != id);
            !v.is_empty()
        });
    }

    /// The next thing to send or tell: datagrams, tap packets, room events and keyframe
    /// requests for internal publishers, in the order they arose (room events join the queue
    /// when it is polled).
    pub fn poll_output(&mut self) -> Option<SfuOutput> {
        for e in self.presence.drain() {
            self.out.push_back(SfuOutput::Room(e));
        }
        self.out.pop_front()
    }

    fn take_join_order(&mut self) -> u64 {
        self.next_join += 1;
        self.next_join - 1
    }

    /// Rooms where someone other than a mix publishes.
    pub fn rooms_with_anchors(&self) -> Vec<RoomKey> {
        self.rooms.iter().filter(|(_, r)| !r.satellite && r.publishers.keys().any(|(u, _)| !u.is_mix())).map(|(k, _)| k.clone()).collect()
    }

    /// Whether someone publishes this (user, stream) in the room.
    pub fn is_published(&self, room: &RoomKey, user: &UserId, stream: StreamKind) -> bool {
        self.rooms.get(room).is_some_and(|r| r.publishers.contains_key(&(user.clone(), stream)))
    }

    /// Whether this SFU holds anything of the room: the room itself, or taps or watchers waiting
    /// for it (its worker placement must stay while it does).
    pub fn holds_room(&self, key: &RoomKey) -> bool {
        self.rooms.contains_key(key)
            || self.taps.contains_key(key)
            || self.watchers.contains_key(key)
            || self.pipes.contains_key(key)
            || self.signaling.values().any(|(k, _)| k == key)
    }

    pub fn room_exists(&self, key: &RoomKey) -> bool {
        self.rooms.contains_key(key)
    }

    pub fn stats(&self) -> SfuStats {
        // Satellite rooms and piped streams are counted where their room lives.
        let rooms = self.rooms.values().filter(|r| !r.satellite).count();
        let publishers = self.internal.values().filter(|p| p.pipe.is_none()).count();
        let mut s = SfuStats { rooms, publishers, participants: self.presence.count_by_user_type(), ..Default::default() };
        for session in self.sessions.values() {
            match session.role {
                Role::Publisher { .. } => s.publishers += 1,
                Role::Viewer { .. } => s.viewers += 1,
                Role::SpeedTest(_) => s.speed_tests += 1,
            }
        }
        s
    }

    /// Tests: the next datagram from session `sid` panics in its WebRTC stack.
    #[cfg(test)]
    pub(crate) fn panic_on_next_input(&mut self, sid: &str) {
        let id = self.by_sid[sid];
        self.sessions.get_mut(&id).expect("a session").panic_on_input = true;
    }

    /// Whether a session (WHIP/WHEP, subscriber, speed test, internal publisher) has this sid.
    pub fn has_session(&self, sid: &str) -> bool {
        self.by_sid.contains_key(sid)
    }

    pub fn session_info(&self, sid: &str) -> Option<SessionInfo> {
        let id = self.by_sid.get(sid)?;
        if let Some(p) = self.internal.get(id) {
            return Some(SessionInfo { room: p.spec.room.clone(), user: p.spec.user.clone(), role: PeerRole::Publish, ufrag: String::new(), source: None });
        }
        let s = self.sessions.get(id)?;
        let source = s.spec.source_user.clone().map(|u| (u, s.spec.stream));
        Some(SessionInfo { room: s.spec.room.clone(), user: s.spec.user.clone(), role: s.spec.role, ufrag: s.peer.local_ufrag.clone(), source })
    }

    /// An ICE restart asked by the client (WHIP/WHEP PATCH with a new ufrag and pwd): the peer
    /// takes the client's new credentials and gets new ones of its own; media continues on the
    /// same DTLS association once the new checks succeed.
    pub fn ice_restart(&mut self, sid: &str, remote_ufrag: &str, remote_pwd: &str, now: Instant) -> Option<IceRestart> {
        let id = *self.by_sid.get(sid)?;
        let s = self.sessions.get_mut(&id)?;
        let local = tessera_rtc::str0m::IceCreds::new();
        {
            let mut api = s.peer.rtc.direct_api();
            api.set_remote_ice_credentials(tessera_rtc::str0m::IceCreds { ufrag: remote_ufrag.to_owned(), pass: remote_pwd.to_owned() });
            api.set_local_ice_credentials(local.clone());
        }
        let old = std::mem::replace(&mut s.peer.local_ufrag, local.ufrag.clone());
        tracing::info!(parent: &s.span, "ICE restart");
        self.unindex_ufrag(&old);
        self.index_ufrag(&local.ufrag, id);
        self.mark_dirty(id);
        self.drain_all(now);
        Some(IceRestart { ufrag: local.ufrag, pwd: local.pass, candidates: self.candidates.udp.clone() })
    }

    /// Negotiates the offer and adds the session; returns the SDP answer.
    pub fn add_session(&mut self, spec: SessionSpec, offer: &str, now: Instant) -> Result<String, OfferError> {
        let first_video =
            tessera_rtc::OfferSummary::parse(offer).ok().and_then(|s| s.media().find(|m| m.kind == tessera_rtc::SectionKind::Video).and_then(|m| m.codecs.first().copied()));
        let (peer, answer) = Peer::from_offer(spec.role, offer, &self.candidates, first_video, now)?;
        let answer = tessera_rtc::reject_sections(&answer, &spec.rejected_mids);
        let id = self.next_id;
        self.next_id += 1;
        let role = match spec.role {
            PeerRole::Publish => Role::Publisher { producers: Vec::new() },
            PeerRole::Play => {
                let source = spec.source_user.clone().expect("a viewer names its source");
                Role::viewer(vec![Subscription::whole((source, spec.stream), spec.quality)], None)
            }
        };
        self.enter(id, &spec, now);
        let join = self.take_join_order();
        let room = self.rooms.entry(spec.room.clone()).or_default();
        room.empty_since = None;
        room.created.get_or_insert(now);
        match spec.role {
            PeerRole::Publish => {
                // The newest publisher of a (user, stream) wins; the older one is closed.
                if !room.joined.contains_key(&spec.user) {
                    room.joined.insert(spec.user.clone(), join);
                }
                if let Some(old) = room.publishers.insert((spec.user.clone(), spec.stream), id) {
                    tracing::info!(room = %spec.room.room, user = %spec.user, "publisher replaced by a new session");
                    self.close_session(old, LeaveReason::Left, now);
                    self.remove_internal_publisher(old, now);
                }
            }
            PeerRole::Play => {
                let source = spec.source_user.clone().expect("a viewer names its source");
                self.rooms.get_mut(&spec.room).expect("just made").viewers.entry((source, spec.stream)).or_default().push(id);
            }
        }
        self.by_sid.insert(spec.sid.clone(), id);
        self.index_ufrag(&peer.local_ufrag, id);
        let span = tracing::info_span!("session", sid = %spec.sid, room = %spec.room.room, user = %spec.user, role = ?spec.role);
        tracing::info!(parent: &span, "session added");
        self.insert_session(id, Session::new(spec, peer, role, span, now));
        self.mark_dirty(id);
        self.drain_all(now);
        Ok(answer)
    }

    /// Ends a session (WHIP/WHEP DELETE). Returns what it was.
    pub fn remove_session(&mut self, sid: &str, now: Instant) -> Option<SessionInfo> {
        let id = *self.by_sid.get(sid)?;
        let info = self.session_info(sid);
        if !self.remove_internal_publisher(id, now) {
            self.close_session(id, LeaveReason::Left, now);
        }
        info
    }

    /// A session joins its room's presence (after a 101 if it makes the room). It joins
    /// before any session it replaces leaves, so the participant stays present.
    fn enter(&mut self, id: u64, spec: &SessionSpec, now: Instant) {
        if !self.rooms.contains_key(&spec.room) {
            self.presence.room_created(&spec.room, &spec.user);
        }
        let publishes = matches!(spec.role, PeerRole::Publish).then_some(spec.stream);
        self.presence.joined(id, &spec.room, &spec.user, &spec.join, publishes, now);
    }

    fn close_session(&mut self, id: u64, reason: LeaveReason, now: Instant) {
        let Some(mut s) = self.sessions.remove(&id) else { return };
        self.presence.left(id, reason, now);
        s.peer.rtc.disconnect();
        // What the peer says on the way out (a DTLS close alert) is still sent.
        while let Ok(Output::Transmit(t)) = s.peer.rtc.poll_output() {
            self.out.push_back(SfuOutput::Transmit(t));
        }
        self.by_sid.remove(&s.spec.sid);
        self.unindex_ufrag(&s.peer.local_ufrag);
        for a in &s.addrs {
            if self.by_addr.get(a) == Some(&id) {
                self.by_addr.remove(a);
            }
        }
        if let Some(room) = self.rooms.get_mut(&s.spec.room) {
            room.channels.retain(|c| c.1 != id);
            match s.spec.role {
                PeerRole::Publish => {
                    let key = (s.spec.user.clone(), s.spec.stream);
                    if room.publishers.get(&key) == Some(&id) {
                        room.publishers.remove(&key);
                        room.forget_if_gone(&key.0);
                    }
                }
                PeerRole::Play => {
                    if let Role::Viewer { subscriptions, .. } = &s.role {
                        for sub in subscriptions {
                            room.stop_viewing(&sub.source, id);
                        }
                    }
                }
            }
        }
        tracing::info!(parent: &s.span, "session closed");
    }

    /// Also offers passive TCP host candidates (ICE over TCP, for clients whose UDP is blocked).
    pub fn set_tcp_candidates(&mut self, tcp: Vec<SocketAddr>) {
        self.candidates.tcp = tcp;
    }

    /// A datagram arrived on the shared port.
    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, destination: SocketAddr, data: &[u8]) {
        self.receive(now, Protocol::Udp, source, destination, data);
    }

    /// A frame arrived on an ICE-TCP connection (RFC 4571: the length prefix already taken off).
    pub fn handle_tcp_frame(&mut self, now: Instant, source: SocketAddr, destination: SocketAddr, data: &[u8]) {
        self.receive(now, Protocol::Tcp, source, destination, data);
    }

    fn receive(&mut self, now: Instant, proto: Protocol, source: SocketAddr, destination: SocketAddr, data: &[u8]) {
        self.counters.packets_received.fetch_add(1, Ordering::Relaxed);
        // A binding request names its peer by ufrag; it also (re)binds the source address.
        let id = match demux::binding_request_local_ufrag(data).and_then(|u| self.by_ufrag.get(u).copied()) {
            Some(id) => {
                if self.by_addr.insert(source, id) != Some(id) {
                    if let Some(s) = self.sessions.get_mut(&id) {
                        s.addrs.push(source);
                    }
                }
                id
            }
            None => match self.by_addr.get(&source) {
                Some(id) => *id,
                None => return,
            },
        };
        let Ok(contents) = data.try_into() else { return };
        let Some(session) = self.sessions.get_mut(&id) else { return };
        let input = Input::Receive(now, Receive { proto, source, destination, contents });
        let handled = guarded(session, &self.counters, |s| {
            #[cfg(test)]
            assert!(!s.panic_on_input, "a panic in the peer's WebRTC stack (test)");
            s.peer.rtc.handle_input(input)
        });
        match handled {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                tracing::debug!(parent: &session.span, "bad input: {e}");
                return;
            }
            None => return,
        }
        session.last_heard = now;
        let thinning = matches!(session.role, Role::Viewer { .. }) && session.net.thinning_seen(&session.peer.rtc, now);
        // Only this peer is drained now (its packets are forwarded at once); the consumers it
        // wrote to are drained by `flush`, once per batch of datagrams rather than per packet.
        self.drain_one(id, now);
        self.handle_events(now);
        if thinning {
            self.allocate(id, now);
        }
    }

    /// Drains every peer with pending output. The driver calls it after each batch of datagrams.
    pub fn flush(&mut self, now: Instant) {
        self.drain_all(now);
    }

    fn mark_dirty(&mut self, id: u64) {
        if let Some(s) = self.sessions.get_mut(&id) {
            if !s.dirty {
                s.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    /// When `handle_timeout` wants to be called next.
    pub fn next_timeout(&self) -> Instant {
        // The soonest entry may be stale: that costs one early wake-up, which drops it.
        let peers = self.timers.peek().map_or(self.next_tick, |e| e.0 .0.min(self.next_tick));
        self.speed_test_timeout().map_or(peers, |t| t.min(peers))
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.handle_timeout_some(now, usize::MAX);
    }

    /// `handle_timeout` for at most `max` of the peers that are due; the rest stay due. Returns
    /// whether any peer is still due at `now`. A driver hands each part's datagrams over
    /// (`take_udp_transmits`) before the next, so the first viewers' packets are on their way
    /// while the SFU builds the last ones' (with hundreds of viewers due at once, one part of
    /// 500 was ~15 ms of work before any of it left).
    pub fn handle_timeout_some(&mut self, now: Instant, max: usize) -> bool {
        let mut due = std::mem::take(&mut self.scratch_ids);
        due.clear();
        while let Some(&std::cmp::Reverse((t, id))) = self.timers.peek() {
            if t > now || due.len() >= max {
                break;
            }
            self.timers.pop();
            if let Some(s) = self.sessions.get_mut(&id).filter(|s| s.queued_at == Some(t)) {
                // Draining it (below) queues its next timeout.
                s.queued_at = None;
                due.push(id);
            }
        }
        for id in &due {
            if let Some(s) = self.sessions.get_mut(id) {
                if let Some(Err(e)) = guarded(s, &self.counters, |s| s.peer.rtc.handle_input(Input::Timeout(now))) {
                    tracing::debug!(parent: &s.span, "timeout handling failed: {e}");
                }
                if !s.dirty {
                    s.dirty = true;
                    self.dirty.push(*id);
                }
            }
        }
        self.scratch_ids = due;
        if !self.speed_tests.is_empty() {
            self.speed_tests_timeout(now);
        }
        self.drain_all(now);
        if now >= self.next_tick {
            self.next_tick = now + TICK;
            self.tick(now);
        }
        self.timers.peek().is_some_and(|e| e.0 .0 <= now)
    }

    /// Takes the UDP datagrams queued so far out of the output, in order; the other outputs
    /// stay queued for `poll_output`.
    pub fn take_udp_transmits(&mut self, mut each: impl FnMut(tessera_rtc::str0m::net::Transmit)) {
        if !self.out.iter().any(|o| matches!(o, SfuOutput::Transmit(t) if t.proto == Protocol::Udp)) {
            return;
        }
        self.take_out(|o| match o {
            SfuOutput::Transmit(t) if t.proto == Protocol::Udp => {
                each(t);
                None
            }
            o => Some(o),
        });
    }

    /// Takes the packets queued for pipes to other workers out of the output, in order; the
    /// other outputs stay queued. The driver hands them over before it builds this worker's own
    /// viewers' datagrams, so the other worker fans out at the same time instead of after.
    pub fn take_piped(&mut self, mut each: impl FnMut(u64, PipedPacket)) {
        if self.pipes.is_empty() || !self.out.iter().any(|o| matches!(o, SfuOutput::Piped(..))) {
            return;
        }
        self.take_out(|o| match o {
            SfuOutput::Piped(pipe, packet) => {
                each(pipe, packet);
                None
            }
            o => Some(o),
        });
    }

    /// Hands every queued output to `take`, which keeps it (`None`) or gives it back to stay
    /// queued in order.
    fn take_out(&mut self, mut take: impl FnMut(SfuOutput) -> Option<SfuOutput>) {
        let mut rest = std::mem::take(&mut self.out_scratch);
        rest.extend(self.out.drain(..).filter_map(&mut take));
        std::mem::swap(&mut self.out, &mut rest);
        self.out_scratch = rest;
    }

    /// Periodic work: drop dead sessions and empty rooms, re-choose layers.
    fn tick(&mut self, now: Instant) {
        let dead: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                !s.peer.rtc.is_alive()
                    || (!s.connected && now.duration_since(s.created) > CONNECT_TIMEOUT)
                    || (s.connected && now.duration_since(s.last_heard) > self.liveness_timeout)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.close_session(id, LeaveReason::TimedOut, now);
        }
        self.pipes_tick(now);
        let timeout = self.empty_room_timeout;
        let (taps, pipes, presence) = (&self.taps, &self.pipes, &mut self.presence);
        self.rooms.retain(|key, room| {
            if room.satellite {
                // Goes with its last viewer (`pipes_tick`), silently.
                return true;
            }
            // A room lives while it has a participant other than a mix's output (viewers on
            // other workers included: its pipes), or a task (mix job, relay, recording) on it
            // (PRODUCT.md §3.3).
            let participants = room.publishers.keys().any(|(u, _)| !u.is_mix()) || !room.viewers.is_empty() || !room.members.is_empty() || pipes.contains_key(key);
            let tasks = taps.get(key).is_some_and(|t| !t.is_empty());
            if !participants && !tasks {
                let since = *room.empty_since.get_or_insert(now);
                if now.duration_since(since) >= timeout {
                    tracing::info!(room = %key.room, "empty room dismissed");
                    presence.room_dismissed(key);
                    return false;
                }
            } else {
                room.empty_since = None;
            }
            true
        });
        self.allocate_all(now);
        self.choose_tap_layers(now);
        self.tell_watchers();
        self.signals_tick(now);
    }

    /// Polls one peer until it names its next timeout; its events are queued.
    fn drain_one(&mut self, id: u64, now: Instant) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        s.dirty = false;
        let (out, events) = (&mut self.out, &mut self.events);
        let polled = guarded(s, &self.counters, |s| loop {
            match s.peer.rtc.poll_output() {
                Ok(Output::Timeout(t)) => break t,
                Ok(Output::Transmit(t)) => out.push_back(SfuOutput::Transmit(t)),
                Ok(Output::Event(e)) => events.push((id, e)),
                Err(e) => {
                    tracing::warn!(parent: &s.span, "peer failed: {e}");
                    s.peer.rtc.disconnect();
                    break now;
                }
            }
        });
        let next = polled.unwrap_or(now);
        if s.queued_at != Some(next) {
            s.queued_at = Some(next);
            self.timers.push(std::cmp::Reverse((next, id)));
        }
    }

    /// Adds a session, due at once (when it was made).
    fn insert_session(&mut self, id: u64, mut session: Session) {
        session.queued_at = Some(session.created);
        self.timers.push(std::cmp::Reverse((session.created, id)));
        self.sessions.insert(id, session);
    }

    fn handle_events(&mut self, now: Instant) {
        while !self.events.is_empty() {
            // Two buffers swapped (events handled may queue more), each keeping its capacity.
            let mut events = std::mem::replace(&mut self.events, std::mem::take(&mut self.spare_events));
            for (id, e) in events.drain(..) {
                self.handle_event(id, e, now);
            }
            self.spare_events = events;
        }
    }

    /// Drains every dirty peer's output and handles the events, until nothing is left.
    fn drain_all(&mut self, now: Instant) {
        loop {
            while let Some(id) = self.dirty.pop() {
                self.drain_one(id, now);
            }
            if self.events.is_empty() {
                break;
            }
            self.handle_events(now);
        }
    }
}

#[cfg(test)]
mod tests;
