//! Consumers: a viewer's outgoing tracks. Each decides, per producer packet, whether it goes
//! out (`Consumer::route`): only the layer the allocator chose, a switch only at a keyframe,
//! whole frames dropped when the viewer's queue is long, sequence numbers and timestamps
//! rewritten so the viewer sees one continuous stream.

use super::allocator::LayerChoice;
use super::producer::{FwdPacket, Temporal};
use super::types::PacketRoute;
use crate::forward::{FrameGate, Gate, PictureIds, SeqTsRewriter};
use std::time::{Duration, Instant};
use tessera_media::{Codec, StreamKind};
use tessera_model::UserId;
use tessera_rtc::str0m::media::{MediaKind, Mid, Pt, Rid};

/// Packets a viewer track may have waiting to be sent before new ones are dropped (about 2 s
/// of 1.5 Mbit/s video).
pub const MAX_QUEUED_PACKETS: usize = 400;
/// A frame already started may grow a viewer's queue to this before it is cut.
pub const HARD_QUEUED_PACKETS: usize = 800;
/// While the media task is saturated, or the allocator is moving a viewer off the layer being
/// sent, how long a viewer track's oldest queued packet may wait before the queue counts as
/// full: past capacity latency stays bounded — whole frames are dropped up to the next
/// keyframe instead of every viewer falling seconds behind.
pub const MAX_QUEUE_DELAY: Duration = Duration::from_millis(300);
/// Otherwise (a viewer's own link): str0m's pacer holds up to 2 s of what the estimate does
/// not carry, and a link that just became thinner would deliver the next layer's keyframe
/// seconds late (measured: a 3 Mbit/s → 400 kbit/s step froze the picture 4–6 s). Twice the
/// above leaves room for a keyframe's burst.
pub const MAX_LINK_QUEUE_DELAY: Duration = Duration::from_millis(600);

/// The longest a switch's grace lasts (see `Consumer::grace_until`).
const MAX_SWITCH_GRACE: Duration = Duration::from_secs(3);
/// After its queue forced a cut, a simulcast layer is not chosen again for this long: the link
/// no longer carries it (a link that thinned, before the estimator says so), and restarting it
/// at a keyframe — the biggest frame there is — would clog the queue again. Not in a viewer's
/// first `CUT_HOLD`: that is its start ramping up (str0m's pacer from its start estimate, its
/// initial probes, the first keyframe), and the layer is restarted as before.
pub(super) const CUT_HOLD: Duration = Duration::from_secs(4);

/// How fast a viewer track's pacer queue actually empties, measured between str0m's queue
/// samples: what left = what was there + what was written since − what is there now. Only
/// while the queue stays backlogged (an idle queue says nothing of the link). Unlike the
/// estimate the viewer's stats report each second, this follows the pacer at once when a link
/// thins.
#[derive(Debug, Default)]
pub(super) struct DepartureMeter {
    /// The last sample: when str0m took it, and the bytes queued then.
    last: Option<(Instant, usize)>,
    /// Bytes written since that sample.
    written: usize,
    /// Smoothed departure rate, in bit/s.
    bps: Option<f64>,
}

impl DepartureMeter {
    /// A queue sample (str0m's `queue_info`: taken at `at`, `bytes` queued).
    pub(super) fn sample(&mut self, at: Instant, bytes: usize) {
        match self.last {
            Some((t, _)) if t == at => return,
            Some((t, before)) if before > 0 && bytes > 0 => {
                let secs = at.saturating_duration_since(t).as_secs_f64();
                if secs > 0.0 {
                    let left = (before + self.written).saturating_sub(bytes) as f64 * 8.0 / secs;
                    self.bps = Some(self.bps.map_or(left, |b| 0.7 * b + 0.3 * left));
                }
            }
            // An empty queue: the link took everything; what it took before is stale.
            _ if bytes == 0 => self.bps = None,
            _ => {}
        }
        self.last = Some((at, bytes));
        self.written = 0;
    }

    /// The queue was emptied without sending: the next sample starts afresh (the rate
    /// measured still holds).
    pub(super) fn cleared(&mut self) {
        self.last = None;
        self.written = 0;
    }

    pub(super) fn wrote(&mut self, bytes: usize) {
        self.written += bytes;
    }

    /// How long `bytes` take to leave at the measured rate, if measured.
    pub(super) fn drain(&self, bytes: usize) -> Option<Duration> {
        self.bps.filter(|b| *b > 1.0).map(|b| Duration::from_secs_f64(bytes as f64 * 8.0 / b))
    }
}

/// A viewer track's send queue (str0m's pacer queue), as sampled for the frame gate.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Queued {
    pub(super) packets: usize,
    pub(super) oldest: Option<Instant>,
    /// How long its bytes take to leave at the viewer's estimate: a link that just thinned
    /// shows here before any packet has waited long.
    pub(super) drain: Option<Duration>,
    /// The media task is saturated.
    pub(super) saturated: bool,
    /// The viewer's link queues (its RTT well above the lowest seen).
    pub(super) link_queues: bool,
    /// The link's queue still holds what was sent before a drain hold (the first packet sent
    /// after the hold began has not yet waited out its reported delay); read only for a
    /// consumer in one.
    pub(super) link_full: bool,
}

impl Queued {
    #[cfg(test)]
    pub(super) fn packets(packets: usize) -> Queued {
        Queued { packets, oldest: None, drain: None, saturated: false, link_queues: false, link_full: false }
    }
}

/// A viewer queue's length as the frame gate sees it: its packets, and at least the soft
/// limit once its `delay` (how long it holds a packet) reaches `max_delay` (the hard one at
/// twice that, which cuts a frame already started).
pub(super) fn queue_load(packets: usize, delay: Option<Duration>, max_delay: Duration) -> usize {
    match delay {
        Some(age) if age >= 2 * max_delay => packets.max(HARD_QUEUED_PACKETS),
        Some(age) if age >= max_delay => packets.max(MAX_QUEUED_PACKETS),
        _ => packets,
    }
}

/// An internal publisher's GOP is replayed to one consumer at most this often.
const GOP_REPLAY_INTERVAL: Duration = Duration::from_secs(1);

/// An outgoing track of a viewer.
#[derive(Debug)]
pub(super) struct Consumer {
    pub(super) mid: Mid,
    /// Whose stream it carries: (user, stream).
    pub(super) source: (UserId, StreamKind),
    pub(super) kind: MediaKind,
    pub(super) allowed: bool,
    rewriter: SeqTsRewriter,
    /// (publisher session, layer) being forwarded.
    pub(super) current: Option<(u64, Option<Rid>)>,
    /// (publisher session, layer) to forward next, as chosen by the allocator.
    pub(super) target: Option<(u64, LayerChoice)>,
    last_sent: Option<Instant>,
    /// The (publisher session, layer) of the last packet sent.
    sent_layer: Option<(u64, Option<Rid>)>,
    /// Payload type per codec, as negotiated with this viewer.
    pts: Vec<(Codec, Pt)>,
    /// Whole-frame dropping when the viewer's queue is long (per source: publisher, layer).
    gate: FrameGate<(u64, Option<Rid>)>,
    /// When an internal publisher's GOP was last replayed to this consumer (at most once a
    /// second: under overload each replay would be dropped again, packet by packet).
    gop_replayed_at: Option<Instant>,
    /// Inside the first frame of a start (a switch, or a restart after a cut): admitted
    /// whatever the queue.
    switch_frame: bool,
    /// How fast its queue empties.
    pub(super) departure: DepartureMeter,
    /// Until when the queue's age and size are not held against the layer just switched to:
    /// the old layer's backlog drains first (its drain time at the switch, plus what the link
    /// may hold, at most `MAX_SWITCH_GRACE`). Cutting the new layer meanwhile would only
    /// restart it at another keyframe, behind the same backlog.
    grace_until: Option<Instant>,
    /// What it sends (for the rooms API's per-track stats).
    pub(super) sent: Option<super::producer::RateMeter>,
    /// The codec it last sent.
    pub(super) codec: Option<Codec>,
    /// Audio to a viewer that negotiated RED: sent wrapped, each packet carrying the one before.
    pub(super) red: Option<super::red::RedSender>,
    /// Video: how many times each packet its viewer NACKs is resent (2 on a link that loses
    /// at random, `forwarding::resend_copies`).
    pub(super) resend_copies: u8,
    /// The simulcast layer its queue last forced a cut of, and when, and whether it was sent
    /// whole (`cut_layer`); and when it first sent.
    cut: Option<(Instant, u64, Rid, bool)>,
    first_sent_at: Option<Instant>,
    /// Video sends nothing while a link that just thinned drains its own queue (what was sent
    /// at the old rate) before the lower layer's keyframe goes into it.
    drain_hold: Option<DrainHold>,
    /// The highest temporal layer it forwards now (None: all); it follows the target's at frame
    /// starts: down at any, up at a layer sync frame of the layer above (one that refers only
    /// to the base layer) or a keyframe.
    temporal: Option<u8>,
    /// VP8 picture IDs and TL0PICIDX kept continuous over the frames it drops and across
    /// sources.
    pictures: PictureIds,
}

/// How long into a drain hold the target layer's keyframe is asked for (and taken if it comes
/// sooner): what was sent just before the hold still joins the link's queue for a while.
const HOLD_KEYFRAME_AFTER: Duration = Duration::from_millis(80);

/// A video consumer's wait for its link's queue to drain (`Consumer::hold_for_drain`).
#[derive(Debug, Clone, Copy)]
struct DrainHold {
    /// It began at `since`, waits at least until `min` and at most until `max`; between,
    /// until the link's feedback shows its queue drained.
    since: Instant,
    min: Instant,
    max: Instant,
    /// Whether this consumer's send queue was emptied for it.
    cleared: bool,
    /// Whether the target layer's keyframe was asked for during it.
    asked: bool,
}

/// What one producer packet does at one consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    /// Not this consumer's: another layer, paused video, a codec it did not negotiate, or too
    /// old to rewrite.
    Skip,
    /// Waiting for a keyframe to start (or resume) at: the producer should send one.
    WaitKeyframe,
    /// Waiting, and the internal publisher's cached GOP should be replayed to it.
    ReplayGop,
    /// Dropped by the overload gate; `broken` when video must now wait for a keyframe.
    Dropped { broken: bool },
    /// Write it with this payload type, sequence number and timestamp (and this VP8 picture
    /// ID and TL0PICIDX, where they differ from the packet's).
    Send { pt: Pt, seq: u64, ts: u32, picture_id: Option<(u16, Option<u8>)> },
}

impl Consumer {
    pub(super) fn new(mid: Mid, source: (UserId, StreamKind), kind: MediaKind, allowed: bool, pts: Vec<(Codec, Pt)>) -> Consumer {
        Consumer {
            mid,
            source,
            kind,
            allowed,
            rewriter: SeqTsRewriter::default(),
            current: None,
            target: None,
            last_sent: None,
            sent_layer: None,
            pts,
            gate: FrameGate::default(),
            gop_replayed_at: None,
            switch_frame: false,
            grace_until: None,
            drain_hold: None,
            departure: DepartureMeter::default(),
            sent: None,
            codec: None,
            red: None,
            resend_copies: 1,
            cut: None,
            first_sent_at: None,
            temporal: None,
            pictures: PictureIds::default(),
        }
    }

    /// Sends no video until the link's queue drained (`Queued::link_full` clear; at least `min`,
    /// at most `max` from `now`), dropping what waits in its send queue, then starts again
    /// at its target layer's next keyframe: the viewer's link thinned and this consumer moves
    /// down. Sent at once, that keyframe would join the tail of the link's own queue (full of
    /// the old rate's packets, draining at the little the new estimate leaves it), and the
    /// part lost there waits on NACKs or on the browser's keyframe request seconds later. A
    /// fixed wait (the RTT's rise when the hold began) was too short when the queue was still
    /// filling: the keyframe lost, a 3.3 s freeze.
    pub(super) fn hold_for_drain(&mut self, now: Instant, min: Duration, max: Duration) {
        self.drain_hold = Some(DrainHold { since: now, min: now + min, max: now + max, cleared: false, asked: false });
        self.current = None;
    }

    /// Since when video waits for the link to drain (`hold_for_drain`).
    pub(super) fn draining_since(&self) -> Option<Instant> {
        self.drain_hold.map(|h| h.since)
    }

    /// Drops what waits in the send queue, its sequence numbers reused by the next packet
    /// sent (the viewer sees no gap); how many packets it held.
    fn drop_queued(&mut self, clear_queue: &mut dyn FnMut() -> usize) -> usize {
        let n = clear_queue();
        self.rewriter.unsend(n);
        self.departure.cleared();
        n
    }

    /// Whether the allocator paused it (video only: even the lowest layer does not fit).
    pub(super) fn paused(&self) -> bool {
        matches!(self.target, Some((_, LayerChoice::Paused)))
    }

    /// Whether a full queue cut a layer within the last second (the link overfilled: a probe
    /// under way fails).
    pub(super) fn just_cut(&self, now: Instant) -> bool {
        self.cut.is_some_and(|(at, _, _, _)| now.saturating_duration_since(at) < Duration::from_secs(1))
    }

    /// The simulcast layer of publisher `pub_id` that a full queue cut within `CUT_HOLD`, and
    /// whether it was being sent whole (not without its top temporal layer).
    pub(super) fn cut_layer(&self, pub_id: u64, now: Instant) -> Option<(Rid, bool)> {
        self.cut.filter(|(at, p, _, _)| *p == pub_id && now.saturating_duration_since(*at) < CUT_HOLD).map(|(_, _, r, whole)| (r, whole))
    }

    /// Decides for one packet of publisher `pub_id` (`internal`: an ingest or a mix, which
    /// cannot be asked for a keyframe but has a GOP cache; `replay_due`: the packet comes from
    /// that cache, due so many clock ticks after the replay's first), given the packets waiting
    /// in this consumer's send queue.
    /// `clear_queue` drops what waits in the send queue and says how many packets it held.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn route(
        &mut self,
        fp: &FwdPacket,
        pub_id: u64,
        internal: bool,
        replay_due: Option<u32>,
        mut queued: Queued,
        clear_queue: &mut dyn FnMut() -> usize,
        now: Instant,
    ) -> Route {
        let Some(pt) = self.pt_for(fp) else { return Route::Skip };
        let video = self.kind == MediaKind::Video;
        let this = (pub_id, fp.rid);
        if let Some(mut hold) = self.drain_hold.filter(|_| video) {
            // The layer moved to is asked for its keyframe early in the hold, and the keyframe
            // goes in when it comes, the queue half drained or not: it takes the publisher a
            // round trip and an encode (~80 ms), and asked for only once the link had drained
            // it came that much later (rate-step: 400 ms of hold, 80 ms more for the keyframe).
            // The pacer then sends at most 0.8 × what the thinned link carried (`NetStats::
            // pacing_ceiling`), so it does not overflow the queue it joins.
            let target = matches!(self.target, Some((p, c)) if p == pub_id && c.rid() == Some(fp.rid));
            let asking = now >= hold.since + HOLD_KEYFRAME_AFTER;
            let early = target && asking && fp.keyframe && self.gate.may_start(this);
            if !early && (now < hold.min || (now < hold.max && queued.link_full)) {
                if !hold.cleared {
                    hold.cleared = true;
                    let n = self.drop_queued(clear_queue);
                    tracing::debug!(mid = %self.mid, dropped = n, "video held while the link drains");
                }
                let ask = target && asking && !hold.asked;
                hold.asked |= ask;
                self.drain_hold = Some(hold);
                return if ask { Route::WaitKeyframe } else { Route::Skip };
            }
            tracing::debug!(mid = %self.mid, drained = !queued.link_full, early, "video resumes after the drain hold");
            self.drain_hold = None;
        }
        // How long the queue holds a packet: its oldest one's wait, or its bytes' drain time.
        let delay = queued.oldest.map(|o| now.saturating_duration_since(o)).max(queued.drain);
        if self.current != Some(this) {
            // Switch only to the target layer of this publisher, and for video only on a keyframe.
            let wanted = match self.target {
                // (Paused: no layer.)
                Some((p, c)) if p == pub_id => c.rid() == Some(fp.rid),
                // No choice made for this publisher yet: the first layer seen is taken.
                _ => true,
            };
            if !wanted {
                return Route::Skip;
            }
            // A switch starts at the first packet of a keyframe, never inside one.
            if video && (!fp.keyframe || !self.gate.may_start(this)) {
                self.gate.skipped(this, fp.marker);
                if internal && replay_due.is_none() {
                    if self.gop_replayed_at.is_none_or(|t| now.duration_since(t) >= GOP_REPLAY_INTERVAL) {
                        self.gop_replayed_at = Some(now);
                        return Route::ReplayGop;
                    }
                    return Route::Skip;
                }
                return Route::WaitKeyframe;
            }
            if video {
                // What still waits of another layer is of no use once this keyframe goes if the
                // link queues (it just thinned): sent, it would only lengthen the link's queue
                // and hold the keyframe back by seconds. It is dropped, and its numbers are
                // reused. Not where the link does not queue (an estimate lowered by loss), nor
                // at a restart of the same layer after a cut: there the queued frames still
                // arrive and are shown while the keyframe comes, and a browser whose jitter
                // buffer grew with the backlog holds the keyframe about as long as the frames
                // dropped would have played (measured on 10 % burst loss: longest freeze
                // 0.6 → 1.5-1.9 s when dropped).
                let dropped = match queued.link_queues && self.sent_layer.is_some_and(|l| l != this) {
                    true => {
                        queued = Queued::default();
                        self.drop_queued(clear_queue)
                    }
                    false => 0,
                };
                tracing::debug!(mid = %self.mid, rid = ?fp.rid, dropped, "layer switch");
                // The keyframe goes in whatever else is queued (it is what the viewer needs
                // next), and the layer has a grace while it drains: as long as the backlog
                // would have needed, dropped or not. The link is as thin as it drained, and the
                // keyframe — the biggest frame there is — must leave whole (measured with a
                // shorter grace while every switch dropped the backlog: the next frames' wait
                // cut the layer again before its keyframe was out, and a viewer on a bursty
                // lossy link decoded 87 frames in 25 s).
                self.grace_until = Some(now + (delay.unwrap_or_default() + MAX_LINK_QUEUE_DELAY).min(MAX_SWITCH_GRACE));
            }
            self.current = Some(this);
            self.first_sent_at.get_or_insert(now);
            self.switch_frame = video;
        } else if matches!(self.target, Some((p, LayerChoice::Paused)) if p == pub_id) {
            return Route::Skip; // paused by congestion control
        }
        // Frames above the temporal layer it takes are dropped whole (each packet of a VP8
        // frame carries its TID, each of an H.264 picture its reference flag), taking no
        // sequence number and no VP8 picture ID.
        if let Some(Temporal { tid, sync, start }) = fp.temporal.filter(|_| video) {
            if start {
                let want = self.target.filter(|(p, _)| *p == pub_id).and_then(|(_, c)| c.temporal());
                self.temporal = match (self.temporal, want) {
                    _ if fp.keyframe => want,
                    (None, w) => w,
                    (Some(now), Some(w)) if w < now => Some(w),
                    // One layer at a time: a layer between might refer to its own frames dropped.
                    (Some(now), w) if tid == now + 1 && sync && w.is_none_or(|w| tid <= w) => Some(tid),
                    (t, _) => t,
                };
            }
            if self.temporal.is_some_and(|m| tid > m) {
                self.rewriter.skip((pub_id, fp.ssrc), fp.seq);
                if let Some(d) = &fp.vp8 {
                    self.pictures.drop_frame((pub_id, fp.ssrc), d);
                }
                return Route::Skip;
            }
        }
        // A viewer whose link (or pacer) cannot drain its queue loses whole frames here rather
        // than making the server hold them without bound; video then waits for a keyframe.
        // Dropped packets take no outgoing sequence numbers, so the viewer sees a clean cut,
        // not loss to NACK.
        // The queue's age counts, the more strictly while the media task is saturated or the
        // allocator moves this viewer off the layer being sent (the link is too thin for it,
        // and its backlog must not hold back the new layer's keyframe — which always goes in).
        let leaving = match self.target {
            Some((p, c)) => p != pub_id || c.rid() != Some(fp.rid),
            None => false,
        };
        let limit = if queued.saturated || leaving { MAX_QUEUE_DELAY } else { MAX_LINK_QUEUE_DELAY };
        let load = match self.switch_frame || self.grace_until.is_some_and(|t| now < t) {
            true => queued.packets,
            false => queue_load(queued.packets, delay, limit),
        };
        self.switch_frame &= !fp.marker;
        match self.gate.admit(this, video, fp.marker, load, MAX_QUEUED_PACKETS, HARD_QUEUED_PACKETS) {
            Gate::Send => {}
            Gate::Drop => {
                self.rewriter.cut();
                return Route::Dropped { broken: false };
            }
            Gate::DropUntilKeyframe => {
                self.current = None;
                self.rewriter.cut();
                // The link thinned, not a start ramping up: the consumer had sent for a while
                // (in a viewer's first seconds str0m's initial probes and a layer's first
                // keyframe fill the queue and raise the RTT of a link that carries the layer).
                let steady = self.first_sent_at.is_some_and(|t| now.saturating_duration_since(t) >= CUT_HOLD);
                if let Some(rid) = fp.rid.filter(|_| video && steady) {
                    tracing::debug!(mid = %self.mid, ?rid, queued = queued.packets, ?delay, "queue cut");
                    let whole = matches!(self.target, Some((_, LayerChoice::Layer(_))));
                    self.cut = Some((now, pub_id, rid, whole));
                }
                return Route::Dropped { broken: true };
            }
        }
        let gap_ticks = self.last_sent.map(|t| (now.saturating_duration_since(t).as_secs_f64() * fp.codec.clock_rate() as f64) as u32).unwrap_or(1);
        let rewritten = match replay_due {
            Some(due) => self.rewriter.rewrite_replayed((pub_id, fp.ssrc), fp.seq, fp.ts, gap_ticks, due),
            None => self.rewriter.rewrite((pub_id, fp.ssrc), fp.seq, fp.ts, gap_ticks),
        };
        let Some((seq, ts)) = rewritten else { return Route::Skip };
        self.last_sent = Some(now);
        self.sent_layer = Some(this);
        self.sent.get_or_insert_with(|| super::producer::RateMeter::new(now)).add(now, fp.payload.len() + 12, fp.marker && fp.kind == MediaKind::Video);
        self.codec = Some(fp.codec);
        let picture_id = fp.vp8.as_ref().filter(|_| video).and_then(|d| self.pictures.map((pub_id, fp.ssrc), d));
        Route::Send { pt, seq, ts, picture_id }
    }

    /// When it first sent media.
    pub(super) fn sending_since(&self) -> Option<Instant> {
        self.first_sent_at
    }

    /// Whether nothing has been sent yet (the next `Send` is its first media).
    pub(super) fn unstarted(&self) -> bool {
        self.last_sent.is_none()
    }

    /// Whether it has forwarded video before (a start after that is a restart).
    pub(super) fn has_sent(&self) -> bool {
        self.sent_layer.is_some()
    }

    /// The payload type this viewer takes `fp` with, or `None` if it does not take that codec.
    pub(super) fn pt_for(&self, fp: &FwdPacket) -> Option<Pt> {
        let pt = self.pts.iter().find(|(x, _)| *x == fp.codec).map(|(_, p)| *p)?;
        // A viewer that takes the original (AV1) does not also take its H.264 re-encoding.
        match fp.route {
            PacketRoute::Fallback(original) if self.pts.iter().any(|(x, _)| *x == original) => None,
            _ => Some(pt),
        }
    }

    /// A GOP replay starts clean, at its keyframe, whatever the live packets did before.
    pub(super) fn reset_gate(&mut self) {
        self.gate = FrameGate::default();
        self.rewriter.begin_replay();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use tessera_rtc::str0m::rtp::ExtensionValues;

    #[test]
    fn the_departure_meter_measures_what_leaves_a_backlogged_queue() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut d = DepartureMeter::default();
        d.sample(ms(0), 0);
        d.wrote(10_000);
        d.sample(ms(100), 10_000);
        assert_eq!(d.drain(1), None, "an idle queue before: no measure");
        d.wrote(20_000);
        d.sample(ms(200), 25_000);
        // 5,000 bytes left in 100 ms: 400 kbit/s; 25,000 bytes take half a second.
        assert_eq!(d.drain(25_000), Some(Duration::from_millis(500)));
        d.sample(ms(200), 1);
        assert_eq!(d.drain(25_000), Some(Duration::from_millis(500)), "the same sample again changes nothing");
        d.sample(ms(300), 0);
        assert_eq!(d.drain(25_000), None, "emptied: the measure is stale");
    }

    #[test]
    fn an_old_queue_counts_as_full_sooner_when_saturated_or_leaving_the_layer() {
        let now = Instant::now();
        let m = MAX_QUEUE_DELAY;
        assert_eq!(queue_load(10, None, m), 10);
        assert_eq!(queue_load(10, Some(Duration::from_millis(50)), m), 10);
        assert_eq!(queue_load(10, Some(m), m), MAX_QUEUED_PACKETS);
        assert_eq!(queue_load(10, Some(2 * m), m), HARD_QUEUED_PACKETS);
        assert_eq!(queue_load(900, Some(m), m), 900);
        // Through a consumer: 400 ms of queue on a viewer's own link passes...
        let aged = |ms: u64, saturated: bool| Queued { packets: 10, oldest: Some(now - Duration::from_millis(ms)), drain: None, saturated, link_queues: true, link_full: false };
        let mut c = video();
        c.target = Some((1, LayerChoice::Layer(Some("h".into()))));
        let started = now - Duration::from_secs(5);
        assert!(matches!(c.route(&packet(1, true, true, Some("h")), 1, false, None, Queued::default(), &mut || 0, started), Route::Send { .. }));
        assert!(matches!(c.route(&packet(2, false, true, Some("h")), 1, false, None, aged(400, false), &mut || 0, now), Route::Send { .. }));
        // ...but not on a saturated server,
        assert!(matches!(c.route(&packet(3, false, true, Some("h")), 1, false, None, aged(400, true), &mut || 0, now), Route::Dropped { .. }));
        // nor when the allocator moves the viewer to another layer, whose keyframe goes in whole
        // however old the queue.
        let mut c = video();
        c.target = Some((1, LayerChoice::Layer(Some("h".into()))));
        assert!(matches!(c.route(&packet(1, true, true, Some("h")), 1, false, None, Queued::default(), &mut || 0, started), Route::Send { .. }));
        c.target = Some((1, LayerChoice::Layer(Some("l".into()))));
        assert!(matches!(c.route(&packet(4, false, true, Some("h")), 1, false, None, aged(400, false), &mut || 0, now), Route::Dropped { .. }));
        let later = now + Duration::from_secs(1);
        let mut cleared = 0;
        assert!(matches!(
            c.route(
                &packet(10, true, false, Some("l")),
                1,
                false,
                None,
                aged(1_500, false),
                &mut || {
                    cleared += 1;
                    0
                },
                later
            ),
            Route::Send { .. }
        ));
        assert_eq!(cleared, 1, "what waits of the old layer is dropped at the switch (the link queues)");
        assert!(matches!(c.route(&packet(11, true, true, Some("l")), 1, false, None, aged(1_900, false), &mut || 0, later), Route::Send { .. }));
        // Then the link's limit, once the switch's grace is over: as long as the backlog (2.5 s
        // old at the switch) would have needed, at most 3 s; the keyframe leaves whole meanwhile.
        let after = |ms: u64| later + Duration::from_millis(ms);
        assert!(matches!(c.route(&packet(12, false, true, Some("l")), 1, false, None, aged(2_000, false), &mut || 0, after(2_900)), Route::Send { .. }));
        assert!(matches!(c.route(&packet(13, false, true, Some("l")), 1, false, None, aged(2_000, false), &mut || 0, after(3_100)), Route::Dropped { .. }));
        // A queue that takes long to drain at the viewer's estimate is full however fresh its
        // packets (a link that just thinned), except right after a switch.
        let mut c = video();
        assert!(matches!(c.route(&packet(1, true, true, None), 1, false, None, Queued::default(), &mut || 0, started), Route::Send { .. }));
        let slow = Queued { packets: 10, oldest: Some(now), drain: Some(Duration::from_millis(900)), saturated: false, link_queues: false, link_full: false };
        assert!(matches!(c.route(&packet(2, false, true, None), 1, false, None, slow, &mut || 0, now), Route::Dropped { .. }));
        let mut c = video();
        assert!(matches!(c.route(&packet(1, true, true, None), 1, false, None, Queued::default(), &mut || 0, now), Route::Send { .. }));
        assert!(matches!(c.route(&packet(2, false, true, None), 1, false, None, slow, &mut || 0, now + Duration::from_millis(100)), Route::Send { .. }));
    }

    fn packet(seq: u64, keyframe: bool, marker: bool, rid: Option<&str>) -> FwdPacket {
        FwdPacket {
            // Each simulcast layer has its own SSRC.
            ssrc: if rid == Some("l") { 8 } else { 7 },
            seq,
            ts: seq as u32 * 3000,
            marker,
            keyframe,
            payload: Arc::from(&[1u8, 2, 3][..]),
            codec: Codec::H264,
            kind: MediaKind::Video,
            mid: "1".into(),
            rid: rid.map(Rid::from),
            ext: ExtensionValues::default(),
            arrival: Instant::now(),
            route: crate::PacketRoute::All,
            vp8: None,
            temporal: None,
        }
    }

    #[test]
    fn a_consumer_held_for_a_thinned_link_drops_its_queue_sends_nothing_then_starts_at_a_keyframe() {
        let t0 = Instant::now();
        let mut c = video();
        c.target = Some((1, LayerChoice::Layer(Some("h".into()))));
        let mut cleared = 0;
        let mut route = |c: &mut Consumer, p: FwdPacket, now: Instant, link_full: bool| {
            c.route(
                &p,
                1,
                false,
                None,
                Queued { link_full, ..Queued::default() },
                &mut || {
                    cleared += 1;
                    4
                },
                now,
            )
        };
        assert!(matches!(route(&mut c, packet(1, true, true, Some("h")), t0, false), Route::Send { seq: 1, .. }));
        c.target = Some((1, LayerChoice::Layer(Some("l".into()))));
        c.hold_for_drain(t0, Duration::from_millis(100), Duration::from_millis(600));
        // Nothing of either layer while the link drains; the new layer's keyframe is asked for
        // at its first packet `HOLD_KEYFRAME_AFTER` into the hold (once).
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let ask = HOLD_KEYFRAME_AFTER.as_millis() as u64;
        assert_eq!(route(&mut c, packet(2, false, true, Some("h")), ms(10), false), Route::Skip, "the least wait");
        assert_eq!(route(&mut c, packet(20, false, true, Some("l")), ms(10), true), Route::Skip, "what was sent before the hold still joins the link's queue");
        assert_eq!(route(&mut c, packet(21, true, true, Some("l")), ms(ask - 10), true), Route::Skip, "nor a keyframe then");
        assert_eq!(route(&mut c, packet(22, false, true, Some("l")), ms(ask), true), Route::WaitKeyframe, "asked for");
        assert_eq!(route(&mut c, packet(23, false, true, Some("l")), ms(ask + 30), true), Route::Skip, "asked once");
        assert_eq!(route(&mut c, packet(4, true, true, Some("h")), ms(ask + 40), true), Route::Skip, "the old layer's keyframe is not taken");
        // Its keyframe goes in when it comes, the link full or not.
        assert!(matches!(route(&mut c, packet(30, true, true, Some("l")), ms(ask + 60), true), Route::Send { .. }), "the new layer's keyframe ends the hold");
        assert!(matches!(route(&mut c, packet(31, false, true, Some("l")), ms(ask + 90), true), Route::Send { .. }));
        // A hold whose keyframe comes only once the link drained: the old layer no more, and
        // the new one from its next keyframe.
        c.target = Some((1, LayerChoice::Layer(Some("m".into()))));
        c.hold_for_drain(t0 + Duration::from_millis(150), Duration::from_millis(100), Duration::from_millis(600));
        let after = t0 + Duration::from_millis(450);
        assert_eq!(route(&mut c, packet(32, false, true, Some("l")), after, false), Route::Skip);
        assert_eq!(route(&mut c, packet(50, false, true, Some("m")), after, false), Route::WaitKeyframe);
        assert!(matches!(route(&mut c, packet(51, true, true, Some("m")), after, false), Route::Send { .. }));
        // A link that never shows drained: the hold ends at its longest.
        c.target = Some((1, LayerChoice::Layer(Some("l".into()))));
        c.hold_for_drain(after, Duration::ZERO, Duration::from_millis(500));
        assert_eq!(route(&mut c, packet(33, false, true, Some("l")), after + HOLD_KEYFRAME_AFTER, true), Route::WaitKeyframe);
        assert_eq!(route(&mut c, packet(34, false, true, Some("l")), after + Duration::from_millis(499), true), Route::Skip);
        assert_eq!(route(&mut c, packet(35, false, true, Some("l")), after + Duration::from_millis(500), true), Route::WaitKeyframe, "no keyframe came");
        assert!(matches!(route(&mut c, packet(36, true, true, Some("l")), after + Duration::from_millis(510), true), Route::Send { .. }));
        assert_eq!(cleared, 2, "the send queue emptied once per hold that held a packet");
    }

    #[test]
    fn the_old_layers_backlog_is_dropped_only_at_a_change_of_layer_on_a_queueing_link() {
        let now = Instant::now();
        let queueing = Queued { packets: 30, link_queues: true, ..Default::default() };
        let calm = Queued { link_queues: false, ..queueing };
        // Routes one packet; the queue holds `held` packets: (route, packets dropped from it).
        let send = |c: &mut Consumer, p: FwdPacket, q: Queued, held: usize| {
            let mut dropped = 0;
            let route = c.route(
                &p,
                1,
                false,
                None,
                q,
                &mut || {
                    dropped = held;
                    held
                },
                now,
            );
            (route, dropped)
        };
        let mut c = video();
        c.target = Some((1, LayerChoice::Layer(Some("h".into()))));
        assert_eq!(send(&mut c, packet(1, true, true, Some("h")), queueing, 5), (Route::Send { pt: 102.into(), seq: 1, ts: 3_000, picture_id: None }, 0), "nothing sent before");
        // A restart of the same layer after a cut keeps its backlog (it is still shown).
        assert_eq!(send(&mut c, packet(2, false, false, Some("h")), Queued::packets(MAX_QUEUED_PACKETS), 5).0, Route::Dropped { broken: true });
        assert_eq!(send(&mut c, packet(3, false, true, Some("h")), queueing, 5).0, Route::WaitKeyframe);
        assert!(matches!(send(&mut c, packet(4, true, true, Some("h")), queueing, 5), (Route::Send { seq: 2, .. }, 0)));
        // Another layer on a link that does not queue keeps it too...
        c.target = Some((1, LayerChoice::Layer(Some("l".into()))));
        assert!(matches!(send(&mut c, packet(20, true, true, Some("l")), calm, 5), (Route::Send { seq: 3, .. }, 0)));
        // ...and where the link queues it is dropped, the keyframe taking the first number
        // dropped (here the one packet of l still queued).
        c.target = Some((1, LayerChoice::Layer(Some("h".into()))));
        let sent = send(&mut c, packet(5, true, true, Some("h")), queueing, 1);
        assert!(matches!(sent, (Route::Send { seq: 3, .. }, 1)), "{sent:?}");
    }

    fn video() -> Consumer {
        Consumer::new("0".into(), (UserId::parse("u").unwrap(), StreamKind::Main), MediaKind::Video, true, vec![(Codec::H264, 102.into())])
    }

    /// One-packet VP8 frame `n` of an L1T3 stream (TIDs 0 2 1 2 ...), picture ID 1000 + n,
    /// layer sync on the first TL1 and TL2 frame after each TL0 frame.
    fn vp8_frame(n: u64, keyframe: bool) -> FwdPacket {
        let tid = [0u8, 2, 1, 2][n as usize % 4];
        let sync = matches!(n % 4, 1 | 2);
        let pid = 1000 + n as u16;
        let payload = vec![0x90, 0xa0, 0x80 | (pid >> 8) as u8, pid as u8, (tid << 6) | if sync { 0x20 } else { 0 }, if keyframe { 0 } else { 1 }];
        let vp8 = tessera_media::vp8::Descriptor::parse(&payload);
        let temporal = super::super::producer::temporal_of(Codec::Vp8, &payload, vp8.as_ref());
        FwdPacket { codec: Codec::Vp8, payload: Arc::from(payload), vp8, temporal, ..packet(n, keyframe, true, Some("h")) }
    }

    /// Packet `n` of an H.264 stream from OpenH264 with L1T3, two packets a picture (FU-A
    /// fragments): pictures 0 2 1 2 ... of TL2 are non-reference ones (NRI 0).
    fn h264_packet(n: u64) -> FwdPacket {
        let (picture, first) = (n / 2, n.is_multiple_of(2));
        let nri = if picture % 2 == 1 { 0 } else { 0x60 };
        let nal_type = if picture == 0 { 5 } else { 1 };
        let payload = vec![nri | 28, if first { 0x80 } else { 0x40 } | nal_type, 0x88, 0];
        let temporal = super::super::producer::temporal_of(Codec::H264, &payload, None);
        FwdPacket { payload: Arc::from(payload), temporal, ..packet(n, picture == 0 && first, !first, Some("h")) }
    }

    #[test]
    fn an_h264_temporal_target_drops_the_non_reference_pictures_with_no_gap_in_numbers() {
        let now = Instant::now();
        let mut c = video();
        let send = |c: &mut Consumer, n: u64| match c.route(&h264_packet(n), 1, false, None, Queued::default(), &mut || 0, now) {
            Route::Send { seq, .. } => Some(seq),
            _ => None,
        };
        c.target = Some((1, LayerChoice::Layer(Some("h".into()))));
        assert_eq!((0..4).map(|n| send(&mut c, n)).collect::<Vec<_>>(), [Some(1), Some(2), Some(3), Some(4)]);
        // Without its top temporal layer: both packets of each odd picture go, the rest close up.
        c.target = Some((1, LayerChoice::Temporal(Some("h".into()), 0)));
        let sent: Vec<_> = (4..12).map(|n| send(&mut c, n)).collect();
        assert_eq!(sent, [Some(5), Some(6), None, None, Some(7), Some(8), None, None]);
        // Whole again from the next non-reference picture's first packet, never mid-picture:
        // the target changes between the two packets of picture 7 (14 and 15).
        assert_eq!([12, 13, 14].map(|n| send(&mut c, n)), [Some(9), Some(10), None]);
        c.target = Some((1, LayerChoice::Layer(Some("h".into()))));
        assert_eq!(send(&mut c, 15), None, "the rest of a picture whose start was dropped");
        let sent: Vec<_> = (16..20).map(|n| send(&mut c, n)).collect();
        assert_eq!(sent, [Some(11), Some(12), Some(13), Some(14)]);
    }

    #[test]
    fn a_temporal_target_drops_the_frames_above_it_with_no_gap_in_numbers_or_picture_ids() {
        let now = Instant::now();
        let mut c = Consumer::new("0".into(), (UserId::parse("u").unwrap(), StreamKind::Main), MediaKind::Video, true, vec![(Codec::Vp8, 96.into())]);
        let send = |c: &mut Consumer, n: u64| match c.route(&vp8_frame(n, n == 0), 1, false, None, Queued::default(), &mut || 0, now) {
            Route::Send { seq, picture_id, .. } => Some((seq, picture_id.map_or(1000 + n as u16, |p| p.0))),
            _ => None,
        };
        c.target = Some((1, LayerChoice::Layer(Some("h".into()))));
        assert_eq!((0..4).map(|n| send(&mut c, n)).collect::<Vec<_>>(), [Some((1, 1000)), Some((2, 1001)), Some((3, 1002)), Some((4, 1003))]);
        // Half the frame rate: the TL2 frames (odd n) are dropped at once, the others close up.
        c.target = Some((1, LayerChoice::Temporal(Some("h".into()), 1)));
        let sent: Vec<_> = (4..12).map(|n| send(&mut c, n)).collect();
        assert_eq!(sent, [Some((5, 1004)), None, Some((6, 1005)), None, Some((7, 1006)), None, Some((8, 1007)), None]);
        // Only TL0 (a quarter): TL1 goes too.
        c.target = Some((1, LayerChoice::Temporal(Some("h".into()), 0)));
        let sent: Vec<_> = (12..16).map(|n| send(&mut c, n)).collect();
        assert_eq!(sent, [Some((9, 1008)), None, None, None]);
        // Back to all: one layer up at a time, each from its next layer sync frame: not at 17 (a
        // TL2 sync, but TL1 is not taken yet), TL1 at 18, TL2 at 21 (19 is not a sync frame).
        c.target = Some((1, LayerChoice::Layer(Some("h".into()))));
        let sent: Vec<_> = (16..24).map(|n| send(&mut c, n)).collect();
        assert_eq!(sent, [Some((10, 1009)), None, Some((11, 1010)), None, Some((12, 1011)), Some((13, 1012)), Some((14, 1013)), Some((15, 1014))]);
    }

    #[test]
    fn video_starts_at_a_keyframe_and_numbers_from_one() {
        let now = Instant::now();
        let mut c = video();
        assert_eq!(c.route(&packet(100, false, true, None), 1, false, None, Queued::default(), &mut || 0, now), Route::WaitKeyframe);
        assert!(matches!(c.route(&packet(101, true, true, None), 1, false, None, Queued::default(), &mut || 0, now), Route::Send { seq: 1, .. }));
        assert!(matches!(c.route(&packet(102, false, true, None), 1, false, None, Queued::default(), &mut || 0, now), Route::Send { seq: 2, .. }));
    }

    #[test]
    fn only_the_target_layer_goes_out_and_a_switch_waits_for_its_keyframe() {
        let now = Instant::now();
        let mut c = video();
        c.target = Some((1, LayerChoice::Layer(Some("h".into()))));
        assert_eq!(c.route(&packet(1, true, true, Some("l")), 1, false, None, Queued::default(), &mut || 0, now), Route::Skip);
        assert!(matches!(c.route(&packet(1, true, true, Some("h")), 1, false, None, Queued::default(), &mut || 0, now), Route::Send { seq: 1, .. }));
        c.target = Some((1, LayerChoice::Layer(Some("l".into()))));
        assert!(matches!(c.route(&packet(2, false, true, Some("h")), 1, false, None, Queued::default(), &mut || 0, now), Route::Send { seq: 2, .. }), "h until l's keyframe");
        assert_eq!(c.route(&packet(50, false, true, Some("l")), 1, false, None, Queued::default(), &mut || 0, now), Route::WaitKeyframe);
        assert!(
            matches!(c.route(&packet(51, true, true, Some("l")), 1, false, None, Queued::default(), &mut || 0, now), Route::Send { seq: 3, .. }),
            "continuous numbering across the switch"
        );
        assert_eq!(c.route(&packet(3, false, true, Some("h")), 1, false, None, Queued::default(), &mut || 0, now), Route::Skip, "h is no longer sent");
        c.target = Some((1, LayerChoice::Paused));
        assert_eq!(c.route(&packet(52, false, true, Some("l")), 1, false, None, Queued::default(), &mut || 0, now), Route::Skip);
    }

    #[test]
    fn a_long_queue_drops_whole_frames_then_waits_for_a_keyframe() {
        let now = Instant::now();
        let mut c = video();
        assert!(matches!(c.route(&packet(1, true, true, None), 1, false, None, Queued::default(), &mut || 0, now), Route::Send { .. }));
        assert_eq!(c.route(&packet(2, false, false, None), 1, false, None, Queued::packets(MAX_QUEUED_PACKETS), &mut || 0, now), Route::Dropped { broken: true });
        assert_eq!(c.route(&packet(3, false, true, None), 1, false, None, Queued::default(), &mut || 0, now), Route::WaitKeyframe, "the rest of the picture waits");
        assert!(matches!(c.route(&packet(4, true, true, None), 1, false, None, Queued::default(), &mut || 0, now), Route::Send { seq: 2, .. }), "no hole in the numbering");
    }

    #[test]
    fn an_internal_publisher_replays_its_gop_at_most_once_a_second() {
        let now = Instant::now();
        let mut c = video();
        assert_eq!(c.route(&packet(5, false, true, None), 9, true, None, Queued::default(), &mut || 0, now), Route::ReplayGop);
        assert_eq!(c.route(&packet(6, false, true, None), 9, true, None, Queued::default(), &mut || 0, now + Duration::from_millis(500)), Route::Skip);
        assert_eq!(c.route(&packet(7, false, true, None), 9, true, None, Queued::default(), &mut || 0, now + Duration::from_secs(1)), Route::ReplayGop);
        c.reset_gate();
        assert!(matches!(c.route(&packet(1, true, true, None), 9, true, Some(0), Queued::default(), &mut || 0, now), Route::Send { .. }), "the replay starts at its keyframe");
    }

    #[test]
    fn a_codec_the_viewer_did_not_negotiate_is_skipped() {
        let now = Instant::now();
        let mut c = video();
        let mut p = packet(1, true, true, None);
        p.codec = Codec::Vp8;
        assert_eq!(c.route(&p, 1, false, None, Queued::default(), &mut || 0, now), Route::Skip);
    }

    #[test]
    fn a_viewer_that_negotiated_av1_takes_the_original_and_not_its_h264_re_encoding() {
        let now = Instant::now();
        let source = (UserId::parse("u").unwrap(), StreamKind::Main);
        let fallback = |seq| FwdPacket { route: PacketRoute::Fallback(Codec::Av1), ssrc: 9, ..packet(seq, true, true, None) };
        let original = |seq| FwdPacket { route: PacketRoute::Viewers, codec: Codec::Av1, ..packet(seq, true, true, None) };
        let mut both = Consumer::new("0".into(), source.clone(), MediaKind::Video, true, vec![(Codec::H264, 102.into()), (Codec::Av1, 45.into())]);
        assert_eq!(both.route(&fallback(1), 1, true, None, Queued::default(), &mut || 0, now), Route::Skip);
        assert!(matches!(both.route(&original(1), 1, true, None, Queued::default(), &mut || 0, now), Route::Send { pt, seq: 1, .. } if pt == 45.into()));
        let mut h264 = video();
        assert!(matches!(h264.route(&fallback(1), 1, true, None, Queued::default(), &mut || 0, now), Route::Send { pt, seq: 1, .. } if pt == 102.into()));
        assert_eq!(h264.route(&original(2), 1, true, None, Queued::default(), &mut || 0, now), Route::Skip);
    }
}
