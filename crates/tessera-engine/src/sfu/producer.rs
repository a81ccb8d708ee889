//! Producers: a publisher's incoming tracks with their layers' rates and keyframe throttles,
//! the packets on their way to consumers, and an internal publisher's GOP cache.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_media::vp8::Descriptor as Vp8Descriptor;
use tessera_media::{Codec, KeyframeThrottle};
use tessera_rtc::str0m::format::Codec as WireCodec;
use tessera_rtc::str0m::media::{MediaKind, Mid, Rid};
use tessera_rtc::str0m::rtp::ExtensionValues;

use super::types::{PacketRoute, SessionSpec};

/// PLI/FIR reach a producer at most this often (PRODUCT.md §3.5).
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);
/// A simulcast layer with no packet for this long is taken as stopped (a layer runs at 7.5 fps
/// or more, and a browser's simulcast sends every layer it keeps).
pub const LAYER_SILENT_AFTER: Duration = Duration::from_millis(1500);

/// Bytes and frames over a sliding window, for layer bitrates and frame rates.
#[derive(Debug, Clone)]
pub(super) struct RateMeter {
    window_start: Instant,
    pub(super) bytes: u64,
    frames: u32,
    pub(super) bps: f64,
    pub(super) fps: f64,
    /// The highest `bps` lately: it follows a rise at once and decays by `PEAK_DECAY` a window.
    pub(super) peak_bps: f64,
}

/// How fast `RateMeter::peak_bps` forgets a peak: 10 % a window (half in ~3 s).
const PEAK_DECAY: f64 = 0.9;

impl RateMeter {
    pub(super) fn new(now: Instant) -> RateMeter {
        RateMeter { window_start: now, bytes: 0, frames: 0, bps: 0.0, fps: 0.0, peak_bps: 0.0 }
    }
    /// One packet; `frame_end` when it ends a video frame (the RTP marker). True when it
    /// closed a window (the rates moved).
    pub(super) fn add(&mut self, now: Instant, bytes: usize, frame_end: bool) -> bool {
        self.bytes += bytes as u64;
        self.frames += frame_end as u32;
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= Duration::from_millis(500) {
            let secs = elapsed.as_secs_f64();
            let (rate, fps) = (self.bytes as f64 * 8.0 / secs, self.frames as f64 / secs);
            self.bps = if self.bps == 0.0 { rate } else { 0.5 * self.bps + 0.5 * rate };
            self.fps = if self.fps == 0.0 { fps } else { 0.5 * self.fps + 0.5 * fps };
            self.peak_bps = self.bps.max(self.peak_bps * PEAK_DECAY);
            self.bytes = 0;
            self.frames = 0;
            self.window_start = now;
            return true;
        }
        false
    }

    /// The bitrate as of `now`. `bps` moves only when a packet closes a window: a meter
    /// nothing came through for over `STALE_AFTER` (a paused consumer) reads what its open
    /// window holds over its length, falling to zero, not the rate it last had (a paused
    /// viewer's stats said 2.4 Mbit/s received, and the rate it was "sent" counted in its pacing).
    pub(super) fn bps_at(&self, now: Instant) -> f64 {
        let open = now.saturating_duration_since(self.window_start);
        match open > STALE_AFTER {
            true => self.bytes as f64 * 8.0 / open.as_secs_f64(),
            false => self.bps,
        }
    }
}

/// How long a rate meter may go without closing a window before its last rate is stale
/// (`RateMeter::bps_at`): two windows.
const STALE_AFTER: Duration = Duration::from_secs(1);

/// One simulcast layer (or the only encoding) of a producer.
#[derive(Debug, Clone)]
pub(super) struct Layer {
    pub(super) rid: Option<Rid>,
    pub(super) rate: RateMeter,
    pub(super) last_packet: Instant,
    pub(super) keyframe_requests: KeyframeThrottle,
    /// The picture size its last keyframe announced (video).
    pub(super) size: Option<(u32, u32)>,
    /// Its highest temporal layer (VP8's TID; 0 without temporal layers) and when a packet of
    /// it last came.
    pub(super) top_temporal: (u8, Instant),
    /// What it sends without its highest temporal layer (half the frame rate with Chrome's
    /// three): a step between two simulcast layers that needs no keyframe.
    pub(super) base_rate: RateMeter,
    /// Its frames that arrived whole (`WholeFrames`), over the same windows.
    pub(super) whole: WholeFrames,
    /// When its whole frames were last found starved beside its siblings' (`STARVED_HOLD`).
    pub(super) starved_at: Option<Instant>,
}

/// A layer's highest temporal layer counts as gone when none of its packets came for this long.
const TEMPORAL_TOP_SILENT_AFTER: Duration = Duration::from_secs(2);

impl Layer {
    pub(super) fn new(rid: Option<Rid>, now: Instant) -> Layer {
        Layer {
            rid,
            rate: RateMeter::new(now),
            last_packet: now,
            keyframe_requests: KeyframeThrottle::new(KEYFRAME_REQUEST_INTERVAL),
            size: None,
            top_temporal: (0, now),
            base_rate: RateMeter::new(now),
            whole: WholeFrames::new(now),
            starved_at: None,
        }
    }

    /// Whether it is still coming (a packet within `LAYER_SILENT_AFTER`).
    fn coming(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_packet) < LAYER_SILENT_AFTER
    }

    /// Whether it was found starved within `STARVED_HOLD`.
    fn held(&self, now: Instant) -> bool {
        self.starved_at.is_some_and(|at| now.saturating_duration_since(at) < STARVED_HOLD)
    }

    /// The layer without its highest temporal layer, if it has temporal layers: (the highest
    /// temporal layer kept, its bitrate, its frame rate).
    pub(super) fn reduced(&self, now: Instant) -> Option<(u8, f64, f64)> {
        let (top, at) = self.top_temporal;
        (top > 0 && self.base_rate.bps > 0.0 && now.saturating_duration_since(at) < TEMPORAL_TOP_SILENT_AFTER).then(|| (top - 1, self.base_rate.bps, self.base_rate.fps))
    }
}

/// A frame still missing packets is judged this long after its last packet came: time for a
/// retransmission on a working uplink (one round trip and the sender's reaction), not for one
/// stuck behind a full uplink queue (300 ms and more), whose frame a viewer waits for as long.
const WHOLE_FRAME_WAIT: Duration = Duration::from_millis(250);
/// Frames waiting for their judgement (8 at 30 fps in `WHOLE_FRAME_WAIT`); past this the oldest
/// is judged early.
const WHOLE_FRAME_PENDING: usize = 32;

/// A sequence number this far from the open frame's start is a restarted stream, not a frame.
const SEQ_JUMP: u64 = 3000;

/// Counts a layer's frames that arrived whole: every packet from the one after the previous
/// frame's marker to its own marker, counting the retransmissions that came within
/// `WHOLE_FRAME_WAIT`. A publisher's thin uplink drops packets of every layer alike, and each
/// frame of the top layer is several times the packets of the lowest one's: its frames break
/// first, while their markers (what the layer's frame rate counts) still come.
#[derive(Debug, Clone)]
pub(super) struct WholeFrames {
    /// The sequence number the open frame starts at (None until the first marker: the frame
    /// the layer's first packet belongs to has an unknown start).
    next_start: Option<u64>,
    /// Packets of the open frame so far.
    open: u64,
    /// Closed frames waiting for late packets: (first seq, last seq, packets, closed at).
    pending: std::collections::VecDeque<(u64, u64, u64, Instant)>,
    /// Judged frames, whole ones counted as frames (its `fps`).
    pub(super) meter: RateMeter,
    /// Its first packet: its rate means something from `WHOLE_FRAMES_JUDGED_AFTER` on.
    since: Option<Instant>,
}

/// A layer's whole frames are compared with its siblings' once it has come for this long: two
/// of its meter's windows, the first holding only the frames judged after `WHOLE_FRAME_WAIT`
/// (a layer whose first window had not closed read 0 beside a sibling's 15 fps, and was held
/// starved from its start).
const WHOLE_FRAMES_JUDGED_AFTER: Duration = Duration::from_secs(1);

impl WholeFrames {
    pub(super) fn new(now: Instant) -> WholeFrames {
        WholeFrames { next_start: None, open: 0, pending: Default::default(), meter: RateMeter::new(now), since: None }
    }

    /// One packet of the layer (`marker`: it ends a frame). True when its rate moved.
    pub(super) fn add(&mut self, now: Instant, seq: u64, marker: bool) -> bool {
        self.since.get_or_insert(now);
        match self.next_start {
            // A jump no frame spans (a restarted stream): counting starts again at a marker.
            Some(start) if seq.abs_diff(start) > SEQ_JUMP => {
                *self = WholeFrames { meter: self.meter.clone(), since: self.since, ..WholeFrames::new(now) };
                if marker {
                    self.next_start = Some(seq + 1);
                }
            }
            // Late (a retransmission, or reordered): it belongs to a closed frame.
            Some(start) if seq < start => {
                if let Some(f) = self.pending.iter_mut().find(|f| f.0 <= seq && seq <= f.1) {
                    f.2 += 1;
                }
            }
            Some(start) if marker => {
                self.pending.push_back((start, seq, self.open + 1, now));
                self.next_start = Some(seq + 1);
                self.open = 0;
            }
            Some(_) => self.open += 1,
            None if marker => self.next_start = Some(seq + 1),
            None => {}
        }
        self.judge(now)
    }

    /// Judges the frames that waited `WHOLE_FRAME_WAIT` (and keeps the meter's window moving).
    fn judge(&mut self, now: Instant) -> bool {
        let mut moved = false;
        while let Some(&(first, last, packets, at)) = self.pending.front() {
            if now.saturating_duration_since(at) < WHOLE_FRAME_WAIT && self.pending.len() <= WHOLE_FRAME_PENDING {
                break;
            }
            self.pending.pop_front();
            moved |= self.meter.add(now, 0, packets > last - first);
        }
        moved | self.meter.add(now, 0, false)
    }
}

/// An incoming track of a publisher.
#[derive(Debug)]
pub(super) struct Producer {
    pub(super) mid: Mid,
    pub(super) kind: MediaKind,
    pub(super) layers: Vec<Layer>,
    /// Its first packet was reported to `Presence` (events 201/203/205).
    pub(super) announced: bool,
    /// The codec of its last packet.
    pub(super) codec: Option<Codec>,
    /// Audio sent as RED: unwrapped, and losses recovered from it (from its first RED packet).
    pub(super) red: Option<Box<super::red::RedReceiver>>,
}

/// One packet on its way from a producer to consumers.
#[derive(Debug, Clone)]
pub(super) struct FwdPacket {
    pub(super) ssrc: u32,
    pub(super) seq: u64,
    pub(super) ts: u32,
    pub(super) marker: bool,
    pub(super) keyframe: bool,
    pub(super) payload: Arc<[u8]>,
    pub(super) codec: Codec,
    pub(super) kind: MediaKind,
    pub(super) mid: Mid,
    pub(super) rid: Option<Rid>,
    pub(super) ext: ExtensionValues,
    pub(super) arrival: Instant,
    /// Which taps take it (viewers take every packet that reaches `fan_out`).
    pub(super) route: PacketRoute,
    /// VP8's payload descriptor: its temporal layer and picture ID.
    pub(super) vp8: Option<Vp8Descriptor>,
    /// Its temporal layer, where its codec tells one (`temporal_of`).
    pub(super) temporal: Option<Temporal>,
}

/// A video packet's temporal layer: VP8's TID (Chrome's simulcast sends three); for H.264, 1 for
/// a non-reference picture (nothing after it refers to it: the top temporal layer of OpenH264's
/// `L1T2`/`L1T3`, B-frames) and 0 for the rest, so dropping what is above 0 is always safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Temporal {
    pub(super) tid: u8,
    /// A viewer may move up to `tid` at this frame: VP8's layer sync bit; always for H.264,
    /// whose non-reference pictures refer only to reference ones, all of which were sent.
    pub(super) sync: bool,
    /// The packet starts its frame (where a viewer's temporal layer may change).
    pub(super) start: bool,
}

/// The temporal layer of a packet of `codec` (None for audio, AV1, or a payload it cannot read).
pub(super) fn temporal_of(codec: Codec, payload: &[u8], vp8: Option<&Vp8Descriptor>) -> Option<Temporal> {
    match codec {
        Codec::Vp8 => vp8.and_then(|d| d.temporal.map(|(tid, sync)| Temporal { tid, sync, start: d.start })),
        Codec::H264 => Some(match tessera_media::h264::rtp_slice_ref(payload) {
            Some(s) => Temporal { tid: u8::from(s.non_reference), sync: true, start: s.picture_start },
            // A parameter set or an SEI: kept with the reference pictures.
            None => Temporal { tid: 0, sync: true, start: false },
        }),
        _ => None,
    }
}

pub(super) const INTERNAL_AUDIO_MID: &str = "a";
pub(super) const INTERNAL_VIDEO_MID: &str = "v";
/// The cached GOP of an ingest is bounded (PRODUCT.md §6.3).
const GOP_CACHE_BYTES: usize = 8 * 1024 * 1024;
const GOP_CACHE_AGE: Duration = Duration::from_secs(4);

/// A publisher that is not a WebRTC peer: RTMP or pull ingest, or a mix job's output.
pub(super) struct InternalPublisher {
    pub(super) spec: SessionSpec,
    pub(super) keyframe_requests: KeyframeThrottle,
    pub(super) producers: Vec<Producer>,
    pub(super) gop: GopCache,
    /// Set for a stream piped in from the room's worker (`pipes.rs`): it is no participant.
    pub(super) pipe: Option<super::pipes::PipeIn>,
}

/// The video since the last keyframe, so a viewer that starts mid-GOP gets a picture at once
/// (an ingest cannot be asked for a keyframe); at most 4 s or 8 MiB (PRODUCT.md §6.3). An
/// ingest that sends viewers two streams (an AV1 original and its H.264 re-encoding) has a GOP
/// of each: their keyframes do not line up.
#[derive(Debug, Default)]
pub(super) struct GopCache {
    streams: Vec<(Codec, Gop)>,
}

#[derive(Debug, Default)]
struct Gop {
    packets: Vec<FwdPacket>,
    bytes: usize,
    started: Option<Instant>,
}

impl GopCache {
    /// Notes one video packet: a keyframe starts a new GOP; a GOP past the bounds is dropped
    /// (until the next keyframe).
    pub(super) fn push(&mut self, fp: &FwdPacket, now: Instant) {
        let i = match self.streams.iter().position(|(c, _)| *c == fp.codec) {
            Some(i) => i,
            None => {
                self.streams.push((fp.codec, Gop::default()));
                self.streams.len() - 1
            }
        };
        let gop = &mut self.streams[i].1;
        if fp.keyframe && gop.packets.last().is_none_or(|l| !l.keyframe || l.ts != fp.ts) {
            gop.packets.clear();
            gop.bytes = 0;
            gop.started = Some(now);
        }
        if gop.packets.is_empty() && !fp.keyframe {
            return;
        }
        let young = gop.started.is_some_and(|s| now.duration_since(s) <= GOP_CACHE_AGE);
        if gop.bytes + fp.payload.len() <= GOP_CACHE_BYTES && young {
            gop.bytes += fp.payload.len();
            gop.packets.push(fp.clone());
        } else {
            gop.packets.clear();
            gop.bytes = 0;
        }
    }

    /// The cached packets, one stream's GOP after the other's.
    pub(super) fn packets(&self) -> Vec<FwdPacket> {
        self.streams.iter().flat_map(|(_, g)| g.packets.iter().cloned()).collect()
    }
}

/// Counts one packet of a producer's layer; a keyframe's packet that carries the picture size
/// (an SPS, a VP8 keyframe header) updates it.
/// The VP8 payload descriptor of a packet of `codec` (None for other codecs).
pub(super) fn vp8_descriptor(codec: Codec, payload: &[u8]) -> Option<Vp8Descriptor> {
    (codec == Codec::Vp8).then(|| Vp8Descriptor::parse(payload)).flatten()
}

#[allow(clippy::too_many_arguments)]
pub(super) fn note_layer(
    producer: &mut Producer,
    rid: Option<Rid>,
    codec: Codec,
    seq: u64,
    payload: &[u8],
    marker: bool,
    keyframe: bool,
    temporal: Option<Temporal>,
    now: Instant,
) {
    producer.codec = Some(codec);
    let video = producer.kind == MediaKind::Video;
    let i = producer.layers.iter().position(|l| l.rid == rid).unwrap_or_else(|| {
        producer.layers.push(Layer::new(rid, now));
        producer.layers.len() - 1
    });
    let layer = &mut producer.layers[i];
    layer.rate.add(now, payload.len() + 12, marker && video);
    layer.last_packet = now;
    let whole_moved = video && layer.whole.add(now, seq, marker);
    if let Some(Temporal { tid, .. }) = temporal {
        let (top, at) = layer.top_temporal;
        if tid >= top || now.saturating_duration_since(at) >= TEMPORAL_TOP_SILENT_AFTER {
            layer.top_temporal = (tid, now);
        }
        if tid < layer.top_temporal.0 {
            layer.base_rate.add(now, payload.len() + 12, marker);
        } else {
            // Keeps its window moving while only the top layer's packets come.
            layer.base_rate.add(now, 0, false);
        }
    }
    if keyframe {
        if let Some(size) = tessera_media::picture_size::of_packet(codec, payload) {
            layer.size = Some(size);
        }
    }
    if whole_moved {
        producer.judge_starved(now);
    }
}

/// A simulcast layer whose rate of whole frames (`WholeFrames`) is under this share of its best
/// sibling's is starved: its browser is short of uplink for it (with `maintain-resolution` it
/// drops frames first, and a full uplink queue breaks its large frames first), and what arrives
/// of it comes late and patchy.
const STARVED_FPS_SHARE: f64 = 0.6;
/// Layers are compared once the best of them brings this many whole frames a second. Under it
/// (a slide deck's screen share, or every layer stuck behind a full uplink queue) each layer
/// still coming is offered. It was 10 until 2026-12-07: while a thin uplink's queue held every
/// layer under 10 fps, the starved top layer was offered again and the viewer's target flipped
/// back to it.
const MIN_JUDGED_FPS: f64 = 3.0;
/// A layer found starved is not offered again before its whole frames kept up with its
/// siblings' this long: on a thin uplink every layer's readings swing from window to window,
/// and a viewer's target flipped between two layers every 250 ms, each flip asking the full
/// uplink for a keyframe.
const STARVED_HOLD: Duration = Duration::from_secs(2);
/// A held layer's hold is renewed while its whole frames are under this share of its best
/// sibling's (a layer just over `STARVED_FPS_SHARE` swings back under it).
const RECOVERED_FPS_SHARE: f64 = 0.8;

impl Producer {
    /// The layers viewers can rely on: those still coming (a layer with no packet for
    /// `LAYER_SILENT_AFTER` was stopped — browsers drop their top layers first when their
    /// uplink thins) and not starved (`judge_starved`; a starved layer is held off for
    /// `STARVED_HOLD`). Every layer when none is coming, and every layer still coming when all
    /// of those are held.
    pub(super) fn usable_layers(&self, now: Instant) -> smallvec::SmallVec<[&Layer; 4]> {
        let live: smallvec::SmallVec<[&Layer; 4]> = self.layers.iter().filter(|l| l.coming(now)).collect();
        if live.is_empty() {
            return self.layers.iter().collect();
        }
        let fed: smallvec::SmallVec<[&Layer; 4]> = live.iter().copied().filter(|l| !l.held(now)).collect();
        match fed.is_empty() {
            true => live,
            false => fed,
        }
    }

    /// Notes which layers are starved now: their whole frames under `STARVED_FPS_SHARE` of the
    /// best live sibling's (`RECOVERED_FPS_SHARE` for a layer held starved), once that one
    /// brings `MIN_JUDGED_FPS`.
    fn judge_starved(&mut self, now: Instant) {
        if self.layers.len() < 2 {
            return;
        }
        let judged = |l: &Layer| l.coming(now) && l.whole.since.is_some_and(|s| now.saturating_duration_since(s) >= WHOLE_FRAMES_JUDGED_AFTER);
        let best = self.layers.iter().filter(|l| judged(l)).map(|l| l.whole.meter.fps).fold(0.0, f64::max);
        if best < MIN_JUDGED_FPS {
            return;
        }
        for l in self.layers.iter_mut().filter(|l| judged(l)) {
            let held = l.held(now);
            if l.whole.meter.fps >= if held { RECOVERED_FPS_SHARE } else { STARVED_FPS_SHARE } * best {
                continue;
            }
            if !held {
                tracing::debug!(rid = ?l.rid, whole_fps = l.whole.meter.fps, fps = l.rate.fps, best, "simulcast layer starved");
            }
            l.starved_at = Some(now);
        }
    }

    /// Whether a simulcast video's publisher stopped or starved some of its layers while it
    /// still sends others: its uplink is too thin for them. Its viewers are moved to the layers
    /// still usable, and its uplink quality says so.
    pub(super) fn uplink_limited(&self, now: Instant) -> bool {
        // With no layer coming at all every layer is "usable" (a publisher gone quiet, not a
        // thin uplink), so that case counts as not limited here too.
        self.kind == MediaKind::Video && self.layers.len() > 1 && self.usable_layers(now).len() < self.layers.len()
    }
}

pub(super) fn to_codec(c: WireCodec) -> Option<Codec> {
    match c {
        WireCodec::Opus => Some(Codec::Opus),
        WireCodec::H264 => Some(Codec::H264),
        WireCodec::Vp8 => Some(Codec::Vp8),
        // Only a viewer negotiates it (an RTMP publisher's AV1 original); no WebRTC publisher
        // is answered with it.
        WireCodec::Av1 => Some(Codec::Av1),
        _ => None,
    }
}

/// Whether a switch to this publisher's video may start at this packet. For H.264 that is the
/// first packet of an IDR access unit: browsers send SPS/PPS in their own packet (a STAP-A)
/// ahead of the IDR's fragments, and a switch that skipped them would leave the viewer's
/// decoder with the previous layer's parameter sets (the old picture size).
pub(crate) fn is_keyframe(codec: Codec, payload: &[u8]) -> bool {
    use tessera_rtc::str0m::format::{detect_h264_keyframe, detect_h264_nalu};
    match codec {
        Codec::H264 => detect_h264_nalu(payload, tessera_media::h264::NAL_SPS) || detect_h264_keyframe(payload),
        Codec::Vp8 => tessera_rtc::str0m::format::detect_vp8_keyframe(payload),
        Codec::Opus => true,
        // Never forwarded to viewers (a recording's original).
        Codec::H265 => false,
        // N: the packet starts a coded video sequence.
        Codec::Av1 => payload.first().is_some_and(|a| a & 0x08 != 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_meter_nothing_comes_through_reads_its_rate_falling_to_zero() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut m = RateMeter::new(t0);
        // 1000 bytes every 10 ms: 800 kbit/s.
        for i in 0..=100 {
            m.add(at(i * 10), 1000, false);
        }
        assert!((m.bps_at(at(1000)) - 800_000.0).abs() < 20_000.0, "{}", m.bps_at(at(1000)));
        assert_eq!(m.bps_at(at(1900)), m.bps, "a second without a closed window is not stale yet");
        // Paused at 1 s: the window opened then holds nothing.
        assert_eq!(m.bps_at(at(2100)), 0.0);
        assert!(m.bps > 0.0, "the last closed window's rate is still what `bps` says");
    }

    #[test]
    fn a_vp8_layer_with_temporal_layers_is_measured_without_its_top_one_too() {
        let t0 = Instant::now();
        let mut p = Producer { mid: "1".into(), kind: MediaKind::Video, layers: Vec::new(), announced: true, codec: None, red: None };
        // 2 s of L1T3 at 30 fps, one 1000-byte packet a frame: TIDs 0 2 1 2 ...
        for i in 0..60u64 {
            let tid = [0u8, 2, 1, 2][i as usize % 4];
            let mut payload = vec![0x90, 0x20, tid << 6];
            payload.resize(1000, 0);
            let d = Vp8Descriptor::parse(&payload);
            note_layer(&mut p, Some("m".into()), Codec::Vp8, i, &payload, true, false, temporal_of(Codec::Vp8, &payload, d.as_ref()), t0 + Duration::from_millis(i * 33));
        }
        let at = t0 + Duration::from_millis(60 * 33);
        let l = &p.layers[0];
        let (t, bps, fps) = l.reduced(at).expect("temporal layers seen");
        assert_eq!(t, 1, "without TL2");
        assert!((fps - 15.0).abs() < 2.0, "{fps} fps");
        assert!((bps / l.rate.bps - 0.5).abs() < 0.1, "{bps} of {}", l.rate.bps);
        // The top layer gone for 2 s: no reduced step (it would be the layer itself).
        assert_eq!(l.reduced(at + TEMPORAL_TOP_SILENT_AFTER), None);
    }

    #[test]
    fn an_h264_layer_with_non_reference_pictures_is_measured_without_them_too() {
        let t0 = Instant::now();
        let h264 = |l1t3: bool| {
            let mut p = Producer { mid: "2".into(), kind: MediaKind::Video, layers: Vec::new(), announced: true, codec: None, red: None };
            // 2 s at 30 fps, one 1000-byte slice a picture; with OpenH264's L1T3 every other
            // picture (TL2) is a non-reference one.
            for i in 0..60u64 {
                let nri = if l1t3 && i % 2 == 1 { 0 } else { 0x40 };
                let mut payload = vec![nri | 1, 0x88];
                payload.resize(1000, 0);
                note_layer(&mut p, None, Codec::H264, i, &payload, true, false, temporal_of(Codec::H264, &payload, None), t0 + Duration::from_millis(i * 33));
            }
            p
        };
        let at = t0 + Duration::from_millis(60 * 33);
        let p = h264(true);
        let (t, bps, fps) = p.layers[0].reduced(at).expect("non-reference pictures seen");
        assert_eq!(t, 0, "the reference pictures only");
        assert!((fps - 15.0).abs() < 2.0, "{fps} fps");
        assert!((bps / p.layers[0].rate.bps - 0.5).abs() < 0.1);
        // Every picture a reference one (a browser's default L1T1): no step.
        assert_eq!(h264(false).layers[0].reduced(at), None);
    }

    #[test]
    fn a_publisher_that_stopped_its_top_layer_is_uplink_limited() {
        let t0 = Instant::now();
        let mut p = Producer { mid: "1".into(), kind: MediaKind::Video, layers: Vec::new(), announced: true, codec: None, red: None };
        for rid in ["h", "m", "l"] {
            note_layer(&mut p, Some(rid.into()), Codec::H264, 0, &[0x41, 0], true, false, None, t0);
        }
        assert!(!p.uplink_limited(t0 + Duration::from_secs(1)), "every layer coming");
        // Only "m" and "l" from then on.
        let later = t0 + Duration::from_secs(2);
        for rid in ["m", "l"] {
            note_layer(&mut p, Some(rid.into()), Codec::H264, 1, &[0x41, 0], true, false, None, later);
        }
        assert!(p.uplink_limited(later + Duration::from_millis(100)));
        // A layer whose frame rate fell under 60 % of the best layer's is starved.
        let mut starved = Producer { mid: "1".into(), kind: MediaKind::Video, layers: Vec::new(), announced: true, codec: None, red: None };
        for i in 0..60u64 {
            let at = t0 + Duration::from_millis(i * 33);
            note_layer(&mut starved, Some("l".into()), Codec::H264, i, &[0x41, 0], true, false, None, at);
            note_layer(&mut starved, Some("h".into()), Codec::H264, i, &[0x41, 0], i % 3 == 0, false, None, at);
        }
        let at = t0 + Duration::from_millis(60 * 33);
        assert_eq!(starved.usable_layers(at).iter().map(|l| l.rid).collect::<Vec<_>>(), vec![Some("l".into())], "h at a third of l's frame rate");
        assert!(starved.uplink_limited(at));
        // Nothing at all is a publisher gone quiet (disconnected), not a thin uplink.
        assert!(!p.uplink_limited(later + Duration::from_secs(5)));
        // One layer (no simulcast) is never "limited" this way.
        let mut single = Producer { mid: "1".into(), kind: MediaKind::Video, layers: Vec::new(), announced: true, codec: None, red: None };
        note_layer(&mut single, None, Codec::H264, 0, &[0x41, 0], true, false, None, t0);
        assert!(!single.uplink_limited(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn a_layer_whose_frames_arrive_broken_is_starved_though_its_markers_come() {
        // 2 s at 30 fps: "l" one packet a frame, "h" six. A full uplink queue drops a packet of
        // two "h" frames in three: every marker still comes, so "h" reads 30 fps.
        let t0 = Instant::now();
        let mut p = Producer { mid: "1".into(), kind: MediaKind::Video, layers: Vec::new(), announced: true, codec: None, red: None };
        let (mut l_seq, mut h_seq) = (100u64, 5000u64);
        for i in 0..60u64 {
            let at = t0 + Duration::from_millis(i * 33);
            note_layer(&mut p, Some("l".into()), Codec::H264, l_seq, &[0x41, 0], true, false, None, at);
            l_seq += 1;
            for k in 0..6u64 {
                if k != 2 || i % 3 == 0 {
                    note_layer(&mut p, Some("h".into()), Codec::H264, h_seq + k, &[0x41, 0], k == 5, false, None, at);
                }
            }
            h_seq += 6;
        }
        let at = t0 + Duration::from_millis(60 * 33);
        let h = p.layers.iter().find(|l| l.rid == Some("h".into())).expect("h");
        assert!(h.rate.fps > 25.0, "every marker came: {} fps", h.rate.fps);
        assert!(h.whole.meter.fps < 15.0, "{} whole frames a second", h.whole.meter.fps);
        assert_eq!(p.usable_layers(at).iter().map(|l| l.rid).collect::<Vec<_>>(), vec![Some("l".into())]);
        assert!(p.uplink_limited(at));
        // Whole again from then on: offered once it has kept up (`RECOVERED_FPS_SHARE` of its
        // sibling's whole frames, its reading climbing window by window) for `STARVED_HOLD`,
        // not at its first good reading.
        let usable_after = |p: &mut Producer, (l_seq, h_seq): &mut (u64, u64), from: u64, frames: u64| {
            for i in from..from + frames {
                let at = t0 + Duration::from_millis(i * 33);
                note_layer(p, Some("l".into()), Codec::H264, *l_seq, &[0x41, 0], true, false, None, at);
                *l_seq += 1;
                for k in 0..6u64 {
                    note_layer(p, Some("h".into()), Codec::H264, *h_seq + k, &[0x41, 0], k == 5, false, None, at);
                }
                *h_seq += 6;
            }
            p.usable_layers(t0 + Duration::from_millis((from + frames) * 33)).len()
        };
        let mut seqs = (l_seq, h_seq);
        assert_eq!(usable_after(&mut p, &mut seqs, 60, 45), 1, "h whole for 1.5 s: still held");
        assert_eq!(usable_after(&mut p, &mut seqs, 105, 90), 2, "h whole for 4.5 s");
    }

    #[test]
    fn a_frame_repaired_in_time_counts_whole_and_one_repaired_late_does_not() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // Three packets a frame, the middle one of each lost, its retransmission `delay` later.
        let whole = |delay: u64| {
            let mut packets: Vec<(u64, u64, bool)> = (0..60u64).flat_map(|i| [(i * 33, i * 3, false), (i * 33 + 1, i * 3 + 2, true), (i * 33 + delay, i * 3 + 1, false)]).collect();
            packets.sort();
            let mut w = WholeFrames::new(t0);
            for (at, seq, marker) in packets {
                w.add(ms(at), seq, marker);
            }
            w.meter.fps
        };
        assert!(whole(60) > 25.0, "repaired in one round trip: {}", whole(60));
        assert!(whole(400) < 1.0, "repaired behind a full queue: {}", whole(400));
        // A restarted stream (its numbering starts anew) is counted again from its first marker.
        let mut w = WholeFrames::new(t0);
        for i in 0..30u64 {
            w.add(ms(i * 33), 60_000 + i, true);
        }
        for i in 0..60u64 {
            w.add(ms(1000 + i * 33), 10 + i, true);
        }
        assert!(w.meter.fps > 25.0, "{}", w.meter.fps);
    }

    #[test]
    fn h264_switch_points_start_at_the_parameter_sets() {
        // STAP-A (24) of SPS (0x67) and PPS (0x68), as browsers send them ahead of an IDR.
        let stap = [24u8, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xce];
        // FU-A (28) start (S bit) of an IDR (5), and a middle fragment of it.
        let (fu_start, fu_middle) = ([0x7cu8, 0x85, 1, 2], [0x7cu8, 0x05, 3, 4]);
        let p_slice = [0x41u8, 0x9a, 0];
        assert!(is_keyframe(Codec::H264, &stap));
        assert!(is_keyframe(Codec::H264, &fu_start));
        assert!(!is_keyframe(Codec::H264, &fu_middle));
        assert!(!is_keyframe(Codec::H264, &p_slice));
    }

    fn packet(ts: u32, keyframe: bool, len: usize) -> FwdPacket {
        FwdPacket {
            ssrc: 1,
            seq: 0,
            ts,
            marker: true,
            keyframe,
            payload: Arc::from(vec![0u8; len]),
            codec: Codec::H264,
            kind: MediaKind::Video,
            mid: "v".into(),
            rid: None,
            ext: ExtensionValues::default(),
            arrival: Instant::now(),
            route: PacketRoute::All,
            vp8: None,
            temporal: None,
        }
    }

    #[test]
    fn the_gop_cache_holds_from_the_last_keyframe_within_its_bounds() {
        let t0 = Instant::now();
        let mut gop = GopCache::default();
        gop.push(&packet(0, false, 100), t0);
        assert!(gop.packets().is_empty(), "nothing before the first keyframe");
        gop.push(&packet(3000, true, 100), t0);
        gop.push(&packet(3000, true, 100), t0);
        gop.push(&packet(6000, false, 100), t0 + Duration::from_millis(33));
        assert_eq!(gop.packets().len(), 3, "a keyframe of several packets stays one GOP");
        gop.push(&packet(9000, true, 100), t0 + Duration::from_secs(2));
        assert_eq!(gop.packets().len(), 1, "a new keyframe starts over");
        gop.push(&packet(12000, false, 100), t0 + Duration::from_secs(7));
        assert!(gop.packets().is_empty(), "older than 4 s: dropped until the next keyframe");
        gop.push(&packet(15000, true, GOP_CACHE_BYTES + 1), t0 + Duration::from_secs(8));
        assert!(gop.packets().is_empty(), "larger than 8 MiB: not kept");
    }
}
