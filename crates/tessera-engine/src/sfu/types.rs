//! The SFU's public values: what sessions are, what it tells and counts.

use crate::presence::{JoinInfo, RoomEvent};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tessera_media::{Codec, StreamKind};
use tessera_model::{AppId, RoomId, UserId};
use tessera_rtc::str0m::net::Transmit;
use tessera_rtc::PeerRole;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoomKey {
    pub app: AppId,
    pub room: RoomId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    Auto,
    High,
    Medium,
    Low,
}

impl Quality {
    pub fn parse(s: &str) -> Option<Quality> {
        Some(match s {
            "auto" => Quality::Auto,
            "h" => Quality::High,
            "m" => Quality::Medium,
            "l" => Quality::Low,
            _ => return None,
        })
    }
}

/// What a new session is.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    pub sid: String,
    pub room: RoomKey,
    /// The token's user: the publisher (WHIP) or the viewer (WHEP).
    pub user: UserId,
    pub role: PeerRole,
    /// WHIP: the stream published. WHEP: the stream watched.
    pub stream: StreamKind,
    /// WHEP: whose stream is watched.
    pub source_user: Option<UserId>,
    /// WHEP: mids the viewer may not receive (rejected in the answer).
    pub rejected_mids: Vec<String>,
    pub quality: Quality,
    /// How the user joins the room (UserType, TerminalType, role), for events 103/105.
    pub join: JoinInfo,
}

/// Counters shared with the metrics endpoint.
#[derive(Debug, Default)]
pub struct SfuCounters {
    pub packets_forwarded: AtomicU64,
    /// RTP payload bytes of the forwarded packets.
    pub bytes_forwarded: AtomicU64,
    /// The media task's busy share of the last second, in ‰ (1000: it never waited).
    pub busy_permille: AtomicU64,
    pub packets_received: AtomicU64,
    pub keyframe_requests: AtomicU64,
    /// Packets not written to a viewer because its send queue was full.
    pub packets_dropped: AtomicU64,
    /// Audio packets lost on a publisher's uplink and recovered from its RED redundancy.
    pub red_recovered: AtomicU64,
    /// Custom messages accepted (PRODUCT.md §8).
    pub custom_messages: AtomicU64,
    /// UDP datagrams written by the egress thread, in how many `sendmmsg` calls, and datagrams
    /// the kernel refused (an unreachable destination, a send buffer full for over 10 ms).
    pub datagrams_sent: AtomicU64,
    pub send_calls: AtomicU64,
    pub datagrams_dropped: AtomicU64,
    /// Messages that carried several of those datagrams as UDP GSO segments.
    pub gso_messages: AtomicU64,
    /// Steps by which a saturated worker held its viewers one simulcast layer lower.
    pub layer_sheds: AtomicU64,
    /// Datagrams read but dropped because the worker they were for had 256 batches waiting
    /// (several workers only).
    pub ingress_dropped: AtomicU64,
    /// Peers closed because their WebRTC stack (str0m) panicked on what they sent (`guarded`).
    pub peer_panics: AtomicU64,
}

/// The media task's busy share (‰ of the last second) from which it counts as saturated: viewer
/// queues are then also bounded by age (`consumer::MAX_QUEUE_DELAY`), and `/healthz` says `busy`.
pub const SATURATED_PERMILLE: u64 = 900;

/// The media task's busy share (‰ of the last second) at which new WHEP viewers are refused
/// (503 `capacity_exceeded`): past it a viewer more would take from the viewers already served
/// (their latency and loss), so the next one is better sent to another server or told to retry.
pub const REFUSE_VIEWERS_BUSY_PERMILLE: u64 = 980;

/// Whether a media worker this busy (‰ of the last second) takes a new viewer.
pub fn admits_viewers(busy_permille: u64) -> bool {
    busy_permille < REFUSE_VIEWERS_BUSY_PERMILLE
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SfuStats {
    pub rooms: usize,
    pub publishers: usize,
    pub viewers: usize,
    /// Speed tests running.
    pub speed_tests: usize,
    /// Participants by the UserType of their first session.
    pub participants: Vec<(u8, usize)>,
}

impl SfuStats {
    /// Adds another worker's counts.
    pub fn add(&mut self, other: &SfuStats) {
        self.rooms += other.rooms;
        self.publishers += other.publishers;
        self.viewers += other.viewers;
        self.speed_tests += other.speed_tests;
        for &(kind, n) in &other.participants {
            match self.participants.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, total)) => *total += n,
                None => self.participants.push((kind, n)),
            }
        }
        self.participants.sort();
    }
}

/// Who an internal publisher's packet is for. A publisher whose video WebRTC cannot take as it
/// is (H.264 with B-frames, HEVC, AV1, VP9) sends several streams under one name: a re-encoded
/// one for viewers, its decoded pictures for mix jobs (which need not decode it again), and its
/// original for the outputs (and the viewers) that can take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PacketRoute {
    /// Viewers and every tap.
    #[default]
    All,
    /// WebRTC viewers only: H.264 re-encoded from B-frames (relays and recordings keep the
    /// original, mixes take the pictures), or an AV1 original as RTP (only viewers that
    /// negotiated AV1 take it).
    Viewers,
    /// H.264 re-encoded from an original in this codec (HEVC, AV1): for viewers that did not
    /// negotiate that codec, and for relay targets that cannot take it (legacy FLV).
    Fallback(Codec),
    /// Viewers, relays and recordings (H.264 re-encoded from VP9, whose original is not kept).
    AllButMixes,
    /// Relays and recordings: the original of a transcoded publisher (H.264 with B-frames, or an
    /// HEVC or AV1 access unit, which only E-RTMP relay targets take).
    Outputs,
    /// Mix jobs only: a decoded picture (`IngestPacket::picture`).
    Pictures,
}

impl PacketRoute {
    /// Whether viewers (and the GOP cache) get it.
    pub(crate) fn to_viewers(self) -> bool {
        matches!(self, PacketRoute::All | PacketRoute::Viewers | PacketRoute::Fallback(_) | PacketRoute::AllButMixes)
    }
}

/// What a tap is for: which of a publisher's streams it takes (`PacketRoute`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapKind {
    /// A mix job: what viewers get, or the pictures of what is transcoded; never another mix's
    /// output.
    Mix,
    /// A relay: keeps an original (H.264 with B-frames; HEVC and AV1 for E-RTMP targets, the
    /// H.264 fallback for the others), mixes' output included.
    Relay,
    /// A recording: keeps the original (H.264 with B-frames, HEVC, AV1), mixes' output included.
    Recording,
    /// Another cluster node's copy of the room (`cluster_relay`): what viewers get — every
    /// simulcast layer, mixes' output included — so that node's viewers are served as here.
    Cluster,
}

impl TapKind {
    pub(crate) fn takes(self, route: PacketRoute, from_mix: bool) -> bool {
        use PacketRoute::*;
        match self {
            TapKind::Mix => !from_mix && matches!(route, All | Pictures),
            TapKind::Relay => matches!(route, All | Outputs | Fallback(_) | AllButMixes),
            TapKind::Recording => matches!(route, All | Outputs | AllButMixes),
            TapKind::Cluster => route.to_viewers(),
        }
    }
}

/// A decoded picture an ingest's transcoder shares with mix jobs (a reference to the decoder's
/// buffer, not a copy).
#[derive(Clone)]
pub struct SharedPicture(pub Arc<tessera_transcode::ff::frame::Video>);

impl std::fmt::Debug for SharedPicture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedPicture({}x{})", self.0.width(), self.0.height())
    }
}

/// An RTP packet from an ingest (RTMP publish, pull ingest) for `Sfu::push_packet`.
#[derive(Debug, Clone)]
pub struct IngestPacket {
    pub ssrc: u32,
    /// Extended sequence number.
    pub seq: u64,
    pub ts: u32,
    pub marker: bool,
    /// The access unit this packet belongs to starts with an IDR (video).
    pub keyframe: bool,
    pub codec: Codec,
    pub payload: Arc<[u8]>,
    /// Audio: its level in dBov (RFC 6464), measured where the audio was decoded; WebRTC
    /// viewers get it in the header extension, and it feeds active speakers.
    pub audio_level: Option<u8>,
    pub route: PacketRoute,
    /// Video with B-frames (`PacketRoute::Outputs`): presentation minus decode time in ms; the
    /// RTP timestamp is then the decode time. 0 otherwise.
    pub composition_ms: i32,
    /// `PacketRoute::Pictures`: the picture (no payload).
    pub picture: Option<SharedPicture>,
    /// The simulcast layer it belongs to (a cluster relay's mirror of a simulcast publisher);
    /// `None` for a single encoding.
    pub rid: Option<super::Rid>,
}

/// A publisher as the MCU sees it (`Sfu::room_publishers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherInfo {
    pub user: UserId,
    pub stream: StreamKind,
    /// Smaller joined earlier.
    pub join_order: u64,
    pub has_audio: bool,
    pub has_video: bool,
}

/// One packet for an in-process subscriber (a mix job): the MCU depacketizes it itself.
#[derive(Debug, Clone)]
pub struct TapPacket {
    pub user: UserId,
    pub stream: StreamKind,
    pub codec: Codec,
    pub seq: u64,
    pub ts: u32,
    pub marker: bool,
    pub payload: Arc<[u8]>,
    /// Audio: the level (dBov, RFC 6464) the packet carried.
    pub audio_level: Option<u8>,
    /// As `IngestPacket::composition_ms`: the ts is the decode time, this is added for the
    /// presentation time (B-frame originals for relays and recordings).
    pub composition_ms: i32,
    /// A transcoded publisher's decoded picture, for mix jobs (no payload then).
    pub picture: Option<SharedPicture>,
    /// H.264 re-encoded from an original in this codec, which the tap also gets: a relay
    /// target that takes the original skips it.
    pub fallback_for: Option<Codec>,
    /// The first packet (a keyframe's) of another simulcast layer of this source: what came
    /// before belongs to the old layer (a mix's tap follows its tile size, `Sfu::set_tap_sizes`).
    pub layer_switch: bool,
    /// Its simulcast layer (`None`: a single encoding). Only a cluster tap gets more than one
    /// layer of a source.
    pub rid: Option<super::Rid>,
    /// Who the publisher meant it for: a cluster tap hands it on to another node's viewers as
    /// they would get it here.
    pub route: PacketRoute,
}

/// What the HTTP layer learns about a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub room: RoomKey,
    pub user: UserId,
    pub role: PeerRole,
    /// The server's current ICE ufrag: the session's ETag.
    pub ufrag: String,
    /// What a viewer watches: (user, stream).
    pub source: Option<(UserId, tessera_media::StreamKind)>,
}

/// The server's side of an ICE restart: new credentials and the candidates to use them with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceRestart {
    pub ufrag: String,
    pub pwd: String,
    pub candidates: Vec<SocketAddr>,
}

/// What the SFU gives out, in order, through `Sfu::poll_output` (the one funnel a driver drains).
#[derive(Debug)]
pub enum SfuOutput {
    /// A datagram to send on the shared port.
    Transmit(Transmit),
    /// A packet for an in-process subscriber (a tap: mix job, relay, recording).
    Tap(u64, TapPacket),
    /// A room's publishers, for a watcher (`watch_publishers`): at once, then on change.
    Publishers(u64, Vec<PublisherInfo>),
    /// The SFU ended an internal publisher its owner did not remove (a kick, a dismissed room):
    /// the owner closes its side (an RTMP connection says why).
    PublisherEnded(u64, PublisherEnd),
    /// A room or media event (webhook groups 1 and 2), in causal order.
    Room(RoomEvent),
    /// A viewer of this internal publisher (an ingest or a mix) wants a keyframe (of a layer,
    /// where the publisher sends layers); its owner makes one if it can (throttled like a PLI).
    KeyframeWanted(u64, Option<super::Rid>),
    /// The first media of (user, stream) went out to viewer session `session` (a keyframe's
    /// first packet for video): room signaling's `first_media`.
    FirstMedia { session: u64, user: UserId, stream: StreamKind, video: bool },
    /// Something for room-signaling session `member` to send on (a custom message to it, or a
    /// refusal of one it sent on a data channel).
    ToMember(u64, super::MemberMessage),
    /// A packet for pipe `0` (a satellite's piped publisher, on the worker its id names).
    Piped(u64, super::PipedPacket),
    /// Viewers here watch `source` of a room that lives on another worker: that worker is to
    /// open pipe `pipe` (`Sfu::open_pipe`); asked again while nothing comes through.
    PipeWanted { pipe: u64, room: RoomKey, source: (UserId, StreamKind) },
    /// Nobody here watches through pipe `pipe` any more (`Sfu::close_pipe` on the room's worker).
    PipeClosed { pipe: u64, room: RoomKey },
    /// A viewer here needs a keyframe of a piped stream's layer (`Sfu::request_layer_keyframe`
    /// on the room's worker).
    PipeKeyframeWanted { room: RoomKey, source: (UserId, StreamKind), rid: Option<tessera_rtc::str0m::media::Rid> },
}

/// Why an internal publisher was ended by someone other than its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublisherEnd {
    /// A newer publisher of the same user and stream took over.
    Replaced,
    /// The user was removed from the room (`DELETE /v1/rooms/{room}/users/{user}`).
    Removed,
    /// The room was dismissed (`DELETE /v1/rooms/{room}`).
    RoomDismissed,
}

/// A room as `GET /v1/rooms` shows it (tasks are counted by their registries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSummary {
    pub room: RoomKey,
    pub created: std::time::Instant,
    pub participants: usize,
    pub publishers: usize,
    /// The media worker the room lives on.
    pub worker: usize,
    /// A satellite copy (viewers spread to this worker): the handle adds it into the room's own
    /// entry (`viewer_workers`).
    pub satellite: bool,
    /// Other workers serving some of the room's viewers (through pipes).
    pub viewer_workers: Vec<usize>,
}

/// One track of a participant as the rooms API shows it (`users.get`): what it publishes, and
/// what it receives (over WHEP or room signaling's `sub` connection).
#[derive(Debug, Clone, PartialEq)]
pub struct TrackStats {
    /// `publish` or `receive`.
    pub direction: &'static str,
    /// Receive: whose track.
    pub source: Option<UserId>,
    pub stream: StreamKind,
    pub video: bool,
    pub codec: Option<Codec>,
    /// Measured over the last second or so.
    pub kbps: f64,
    /// Publish: each simulcast layer (`None` for a single encoding) and its rate. Receive: the
    /// layer being forwarded.
    pub layers: Vec<(Option<String>, f64)>,
    /// Publish: the highest layer being sent; receive: the layer forwarded.
    pub layer: Option<String>,
    /// Video: frames per second, and the picture size of the layer's last keyframe.
    pub fps: Option<f64>,
    pub size: Option<(u32, u32)>,
    /// Publish: loss and jitter the server sees; receive: what the viewer reports.
    pub loss_pct: Option<f64>,
    pub jitter_ms: Option<f64>,
    pub rtt_ms: Option<f64>,
    /// Receive (video): congestion control paused it (even its lowest layer does not fit the
    /// viewer's link); audio goes on.
    pub paused: bool,
}

#[cfg(test)]
mod admission_tests {
    use super::*;

    #[test]
    fn a_saturated_media_task_refuses_viewers() {
        assert!(admits_viewers(0));
        assert!(admits_viewers(REFUSE_VIEWERS_BUSY_PERMILLE - 1));
        assert!(!admits_viewers(REFUSE_VIEWERS_BUSY_PERMILLE));
        assert!(!admits_viewers(1000));
    }
}
