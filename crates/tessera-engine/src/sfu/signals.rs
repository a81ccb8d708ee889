//! What the SFU measures for room signaling (PRODUCT.md §7, §9): who is speaking (audio levels
//! per packet into `speakers::RoomSpeakers`), each participant's network quality per direction
//! (from str0m's stats: TWCC loss and RTT, RTCP receiver reports), and live per-track stats.

use super::*;
use crate::presence::RoomEvent;
use crate::quality::{score, QualityReport, DISCONNECTED_AFTER, QUALITY_INTERVAL};
use tessera_rtc::str0m::stats::{MediaEgressStats, MediaIngressStats, PeerStats};

/// Loss above which what a viewer receives bounds its estimate: a link in collapse (a layer
/// far above what it carries), not a lossy one.
const LOSSY: f32 = 0.2;
/// An RTT this far above the lowest seen means the link queues (the server's RTT comes from
/// transport feedback and wanders by ~40 ms on a quiet link).
const QUEUEING_RTT_RISE: Duration = Duration::from_millis(50);
/// How long a collapsed estimate counts as a congested link (`NetStats::congested`): until
/// the next stats' RTT can say so.
const THINNED_HOLD: Duration = Duration::from_millis(1500);
/// How long after a link thinned no probe looks for more (`NetStats::just_thinned`).
const THINNED_QUIET: Duration = Duration::from_secs(4);
/// How often a viewer's feedback may re-choose its layers between ticks (`thinning_seen`).
const THINNING_CHECK: Duration = Duration::from_millis(100);
/// How long str0m's loss controller may hold the estimate down on a link that neither loses
/// nor queues before its estimator is restarted (`NetStats::loss_hold_stale`).
const LOSS_HOLD_STALE: Duration = Duration::from_secs(4);
/// The longest a thinned link's measurement caps the estimate (`NetStats::thinned_cap`) when
/// neither the estimate comes down nor a probe finds more (4 s was too short: str0m's estimate
/// stays where it was while the viewer receives its lowest layer, and the middle one taken then
/// froze it again).
const THINNED_CAP_MAX: Duration = Duration::from_secs(20);
/// What a link carried cleanly, in the stats' bytes, against what the allocator counts for the
/// same layers (their payload rates with `allocator::OVERHEAD`): a cap raised to the first
/// alone still held the viewer's layers a few per cent over its estimate (`carried_clean`).
const CARRIED_MARGIN: f64 = 1.1;
/// How long after the link last thinned layers are chosen within what it carried then
/// (`NetStats::draining_cap`), and after a viewer was moved down its pacer stays under it
/// (`NetStats::pacing_ceiling`): the drain hold and the lower layer's keyframe.
const PACING_CEILING_HOLD: Duration = Duration::from_secs(1);
/// While the link holds a deep queue the pacer sends this share of what it delivers: the
/// queue drains by the rest.
const DEEP_QUEUE_SHARE: f64 = 0.9;
/// Nor under the media the plan sends, with this headroom (a ceiling under it would grow the
/// pacer's queue until it is cut).
const MEDIA_HEADROOM: f64 = 1.05;

/// Loss over the last 2 s (PRODUCT.md §9's window) from str0m's 1 s samples: the mean of the
/// latest two when they are adjacent. One 1 s window holds ~70 packets of a small stream, too
/// few to tell 5 % loss from 1 %.
#[derive(Debug, Default, Clone, Copy)]
struct LossWindow {
    last: Option<(f32, Instant)>,
    before: Option<f32>,
}

impl LossWindow {
    fn note(&mut self, loss: Option<f32>, at: Instant) {
        let Some(loss) = loss else {
            *self = LossWindow::default();
            return;
        };
        // Samples come every second; an older one is from before a gap, not the last 2 s.
        self.before = self.last.filter(|(_, t)| at.saturating_duration_since(*t) <= Duration::from_millis(1500)).map(|(l, _)| l);
        self.last = Some((loss, at));
    }

    fn fraction(&self) -> Option<f32> {
        let (last, _) = self.last?;
        Some(self.before.map_or(last, |b| (b + last) / 2.0))
    }
}

/// What a viewer's latest transport-wide feedback says of its link, read at any time (the
/// stats come once a second).
#[derive(Debug, Clone, Copy)]
pub(super) struct LinkSigns {
    /// How long the latest acknowledged packet queued (its one-way delay over the least seen).
    pub(super) queued: Option<Duration>,
    /// It queued `QUEUEING_RISE`.
    pub(super) queueing: bool,
    /// Queueing, and a tenth of the packets lost: a keyframe's burst also queues a moment,
    /// without loss.
    pub(super) losing: bool,
    /// It queued `DEEP_QUEUE`: the loss is still on its way (a 300 ms drop-tail queue reports
    /// its first losses ~0.25 s after its delay rose).
    pub(super) deep: bool,
}

impl LinkSigns {
    pub(super) fn read(rtc: &tessera_rtc::str0m::Rtc) -> LinkSigns {
        let queued = rtc.bwe_queue_delay_now();
        let queueing = queued.is_some_and(|q| q > QUEUEING_RISE);
        LinkSigns { queued, queueing, losing: queueing && rtc.bwe_loss_now().is_some_and(|l| l >= THINNING_LOSS), deep: queued.is_some_and(|q| q > DEEP_QUEUE) }
    }

    /// The link thinned: losing, or deep.
    pub(super) fn thinning(&self) -> bool {
        self.losing || self.deep
    }

    /// The link thinned, told a feedback or two before its queue is deep: the latest packet
    /// queued `THINNING_QUEUE` and what arrived over `THINNED_WINDOW` (`delivered`: packets
    /// that queued leave the link back to back, at its rate) was under `THINNED_SHARE` of the
    /// estimate. Rate-step: 96-143 ms queued and 350-370 kbit/s received ~100 ms before the
    /// queue read 150 ms; each 100 ms more of the old layer is that much more of the
    /// overflowing queue the viewer then waits through.
    pub(super) fn thinned_by(&self, delivered: Option<f64>, estimate: Option<f64>) -> bool {
        self.queued.is_some_and(|q| q >= THINNING_QUEUE) && matches!((delivered, estimate), (Some(d), Some(e)) if d < e * THINNED_SHARE)
    }
}

/// A peer's latest network measurements (str0m reports them every second).
#[derive(Debug, Default)]
pub(super) struct NetStats {
    /// TWCC's round trip (a viewer), else the receiver reports'.
    pub(super) rtt: Option<Duration>,
    /// Fractions 0–1: of what the server sent (a viewer) and of what it received (a publisher),
    /// over the last two of str0m's 1 s windows.
    egress_loss: LossWindow,
    ingress_loss: LossWindow,
    at: Option<Instant>,
    /// Bytes sent to the peer and when, at its last stats: the rate sent since.
    tx_mark: Option<(u64, Instant)>,
    /// The lowest RTT seen: the path without queues.
    min_rtt: Option<Duration>,
    /// Per incoming (mid, rid): loss fraction and jitter in ms.
    ingress: Vec<(Mid, Option<Rid>, Option<f32>, f64)>,
    /// Per outgoing mid: loss fraction and the viewer's jitter in ms.
    egress: Vec<(Mid, Option<f32>, f64)>,
    /// When the estimate last collapsed (`allocator::measured` took the raw value): the link
    /// thinned, known within a tick where the RTT of `queueing` waits for the next stats.
    pub(super) thinned_at: Option<Instant>,
    /// What a thinned link was measured to carry (since `thinned_at`): str0m's averaged
    /// estimate takes seconds to come down to it (2.7 Mbit/s → 585 kbit/s a second after a step
    /// to 400 kbit/s, which moved the viewer back up to a layer that froze it again).
    thinned_to: Option<f64>,
    /// Until when what the viewer receives is of video held for the link to drain (its own
    /// silence), not of what the link carries: `thinned` does not lower its cap by it.
    pub(super) quiet_until: Option<Instant>,
    /// Since when every allocation found the latest acknowledged packet queued `DEEP_QUEUE`
    /// (`standing`).
    deep_since: Option<Instant>,
    /// When an allocation last found the link queueing (`pacing_floor`).
    pub(super) queued_at: Option<Instant>,
    /// When `thinning_seen` last said yes.
    thinning_seen_at: Option<Instant>,
    /// Since when every allocation found str0m's loss controller holding the estimate down on
    /// a link that neither lost nor queued (`loss_hold_stale`).
    loss_held_since: Option<Instant>,
    /// The pacer's ceiling as last set (`pacing_ceiling`).
    paced_ceiling: Option<f64>,
    /// The ceiling a deep queue sets, and when the link last held one (`pacing_ceiling`).
    deep_cap: Option<(f64, Instant)>,
    /// What a thinned link carried, for a second after (`draining_cap`).
    drain_cap: Option<f64>,
    /// When a video consumer was last moved down to hold for the link to drain (`held`).
    held_at: Option<Instant>,
}

impl NetStats {
    /// Keeps the lowest RTT seen, after `rtt` changed.
    fn note_rtt(&mut self) {
        if let Some(r) = self.rtt {
            self.min_rtt = Some(self.min_rtt.map_or(r, |m| m.min(r)));
        }
    }

    /// Whether the peer's link queues now: its RTT well above the lowest seen.
    pub(super) fn queueing(&self) -> bool {
        self.rtt.is_some_and(|r| self.queues_at(r))
    }

    /// How far `rtt` is above the lowest RTT seen: what the link's queue holds.
    pub(super) fn rise(&self, rtt: Duration) -> Option<Duration> {
        self.min_rtt.map(|m| rtt.saturating_sub(m))
    }

    /// Whether a link with this RTT queues (`rtt` a later one than the stats').
    pub(super) fn queues_at(&self, rtt: Duration) -> bool {
        self.rise(rtt).is_some_and(|r| r > QUEUEING_RTT_RISE)
    }

    /// Whether the link queues, or thinned within the last `THINNED_HOLD` (a layer switched
    /// then drops the old layer's backlog rather than draining it at the new rate).
    pub(super) fn congested(&self, now: Instant) -> bool {
        self.queueing() || self.thinned_at.is_some_and(|t| now.saturating_duration_since(t) < THINNED_HOLD)
    }

    /// Whether the viewer's latest feedback (just received) shows its link thinning
    /// (`LinkSigns::thinning`). The layers are then re-chosen at once rather than at the next
    /// tick (up to 250 ms on a link whose queue is filling); at most once per `THINNING_CHECK`,
    /// and not again just after the link was found thinned.
    pub(super) fn thinning_seen(&mut self, rtc: &tessera_rtc::str0m::Rtc, now: Instant) -> bool {
        let recent = |t: Option<Instant>| t.is_some_and(|t| now.saturating_duration_since(t) < THINNING_CHECK);
        if recent(self.thinning_seen_at) || recent(self.thinned_at) {
            return false;
        }
        let seen = LinkSigns::read(rtc).thinning();
        if seen {
            self.thinning_seen_at = Some(now);
        }
        seen
    }

    /// Notes that the link thinned to `bps` now (`thinned_cap` holds it): lowered by a lower
    /// measure, except while video is held for the link to drain (`quiet_until`): then what
    /// arrives is the hold's own silence and the lower layer's keyframe, paced under the link
    /// (a deep queue's measure then read 158 kbit/s of a 400 kbit/s link, held the viewer's
    /// estimate under its lowest layer, and no probe looked for more for 20 s). What it holds
    /// as the link's rate now.
    pub(super) fn thinned(&mut self, bps: f64, now: Instant) -> f64 {
        let quiet = self.quiet_until.is_some_and(|t| now < t);
        let held = self.thinned_to.filter(|b| *b < bps || quiet).unwrap_or(bps);
        self.thinned_to = Some(held);
        self.thinned_at = Some(now);
        held
    }

    /// What the link carried since the last stats, without loss or queue: a cap whose share
    /// (`CAPPED_SHARE`, what `thinned_cap` lets through) is below it was a measure to forget,
    /// and is raised so that its share covers it. Kept below what the viewer's own layers
    /// carry cleanly, the cap held it over its estimate, where no probe runs, until the cap's
    /// `THINNED_CAP_MAX` (harness, rate step: a probe's overshoot read as 145 kbit/s of a 400
    /// kbit/s link, the lowest layer carried cleanly at ~130, the climb back 17 s after the
    /// link came back).
    pub(super) fn carried_clean(&mut self, bps: f64) {
        let covered = bps * CARRIED_MARGIN;
        if let Some(cap) = self.thinned_to.filter(|c| c * CAPPED_SHARE < covered) {
            tracing::debug!(cap, carried = bps, "a thinned link's cap raised to what it carried cleanly");
            self.thinned_to = Some(covered / CAPPED_SHARE);
        }
    }

    /// `measured`, capped by a share (`CAPPED_SHARE`) of what a thinned link was measured to
    /// carry until str0m's estimate (`averaged`) has come down to that measure, a probe found
    /// more (`uncap`), or `THINNED_CAP_MAX` passed. The share: the measure is the link's whole
    /// rate, and layers that fill it leave no room for a keyframe (VP8 rate-step: the middle
    /// layer's 15 fps taken 2 s after the step on 370 kbit/s of a 400 kbit/s link, left 0.7 s
    /// later, the lowest layer's first frames lost in the full queue, 3.3 s frozen until the
    /// viewer's keyframe request).
    pub(super) fn thinned_cap(&mut self, averaged: Option<f64>, measured: Option<f64>, now: Instant) -> Option<f64> {
        let m = measured?;
        let since = |t: Option<Instant>| t.map_or(Duration::MAX, |t| now.saturating_duration_since(t));
        match (self.thinned_to, averaged) {
            (Some(cap), Some(e)) if e > cap && since(self.thinned_at) < THINNED_CAP_MAX => Some(m.min(cap * CAPPED_SHARE)),
            (Some(_), _) => {
                self.thinned_to = None;
                Some(m)
            }
            (None, _) => Some(m),
        }
    }

    /// A probe found the link carries more than it was measured to when it thinned.
    pub(super) fn uncap(&mut self) {
        self.thinned_to = None;
    }

    /// Whether a thinned link's measurement caps the estimate now.
    pub(super) fn capped(&self) -> bool {
        self.thinned_to.is_some()
    }

    /// What a thinned link was measured to carry, until `PACING_CEILING_HOLD` after it last
    /// thinned, and not lowered within that: later measures read the drain hold's own silence
    /// or a dip of the raw estimate (as low as 175 kbit/s on a 400 kbit/s link). Layers are
    /// chosen within a share of it, and the pacer kept under it (`pacing_ceiling`).
    pub(super) fn draining_cap(&mut self, now: Instant) -> Option<f64> {
        let recent = self.thinned_at.is_some_and(|t| now.saturating_duration_since(t) < PACING_CEILING_HOLD);
        self.drain_cap = match (self.drain_cap, self.thinned_to.filter(|_| recent)) {
            (Some(c), Some(w)) => Some(c.max(w)),
            (_, w) => w,
        };
        self.drain_cap
    }

    /// Notes that a video consumer was moved down a layer and holds for the link to drain;
    /// what the viewer receives is its own silence for `quiet` (`quiet_until`).
    pub(super) fn held(&mut self, now: Instant, quiet: Duration) {
        self.held_at = Some(now);
        self.quiet_until = Some(now + quiet);
    }

    /// The pacer's new ceiling in bit/s if it changed (`Some(None)`: none).
    /// - A share (`DRAINING_SHARE`) of `draining_cap` while a consumer's drain hold began within
    ///   `PACING_CEILING_HOLD`. str0m paces media at 1.1 × its averaged estimate, which stays
    ///   above the link's rate for seconds after it thinned: the lower layer's keyframe, the
    ///   first large frame sent into the link then, went in at several times the rate the link
    ///   drains. Only for a viewer moved down: one whose stream has no lower layer would only be
    ///   paced below its media. Not for longer: held at the (lower, later) measures for the
    ///   seconds the estimate's cap stands, the pacer cut the lowest layer again and again and
    ///   kept probes from finding the link's room when it came back.
    /// - While the link holds a deep queue (`deep`), and `PACING_CEILING_HOLD` after: a share
    ///   (`DEEP_QUEUE_SHARE`) of what it delivers (`delivered`, as of now), never under the
    ///   media the plan sends (`media_bps`). With a backlog to send (a GOP replayed to a viewer
    ///   that joins an ingest, a large keyframe), 1.1 × an estimate that is about the link's
    ///   rate kept the link's queue growing until it overflowed (harness, `ingest_thin`: a 2.4
    ///   Mbit/s ingest on a 3 Mbit/s link, 26-65 packets dropped at the link, gaps up to 1.5 s);
    ///   under the link's rate the backlog waits in the pacer, where audio and resends pass it.
    pub(super) fn pacing_ceiling(&mut self, delivered: Option<f64>, media_bps: f64, now: Instant) -> Option<Option<f64>> {
        let held = self.held_at.is_some_and(|t| now.saturating_duration_since(t) < PACING_CEILING_HOLD);
        let drain = self.drain_cap.filter(|_| held).map(|c| c * DRAINING_SHARE);
        if let (true, Some(d)) = (self.deep(), delivered) {
            let cap = (d * DEEP_QUEUE_SHARE).max(media_bps * MEDIA_HEADROOM);
            // Not moved for every feedback's measure: a change under a tenth keeps the last.
            let cap = self.deep_cap.map_or(cap, |(c, _)| if (c - cap).abs() < 0.1 * c { c } else { cap });
            self.deep_cap = Some((cap, now));
        }
        self.deep_cap = self.deep_cap.filter(|(_, at)| self.deep() || now.saturating_duration_since(*at) < PACING_CEILING_HOLD);
        let want = super::allocator::lower_ceiling(drain, self.deep_cap.map(|(c, _)| c));
        (self.paced_ceiling != want).then(|| {
            self.paced_ceiling = want;
            want
        })
    }

    /// Notes whether the latest acknowledged packet queued `DEEP_QUEUE` (read by `standing`).
    pub(super) fn note_deep(&mut self, deep: bool, now: Instant) {
        match deep {
            true => _ = self.deep_since.get_or_insert(now),
            false => self.deep_since = None,
        }
    }

    /// Whether the latest acknowledged packet (as of the last allocation) queued `DEEP_QUEUE`.
    pub(super) fn deep(&self) -> bool {
        self.deep_since.is_some()
    }

    /// Whether the link has held a deep queue (`DEEP_QUEUE`) for `STANDING_QUEUE`: what is sent
    /// exceeds what it carries by a little, for good (the middle layer and audio on a 600
    /// kbit/s link: the queue grew ~7 % a second at zero loss). No loss says so until a
    /// drop-tail queue overflows, and the estimate stays near the link: a layer kept by the
    /// allocator's hysteresis then sat in the full queue (measured: RTT 310 ms, 7 % loss,
    /// 9.5 s of freeze in 25 s). A keyframe's burst queues for moments, not a second.
    pub(super) fn standing(&self, now: Instant) -> bool {
        self.deep_since.is_some_and(|t| now.saturating_duration_since(t) >= STANDING_QUEUE)
    }

    /// Whether the link thinned within `THINNED_QUIET`: no probe yet (it would only fail, and
    /// each failure doubles the wait for the next, which then comes long after the link is
    /// back). Whether its cap still stands or not: once str0m's average came down to the cap
    /// (within a second or two) the link is as thin as before, and a probe then failed, doubled
    /// its back-off and held the climb back 14.5 s after the link came back (rate-step).
    pub(super) fn just_thinned(&self, now: Instant) -> bool {
        self.thinned_at.is_some_and(|t| now.saturating_duration_since(t) < THINNED_QUIET)
    }

    /// Whether str0m's estimator is to be restarted: its loss controller has held the estimate
    /// down (`loss_limited`; str0m sends no probe then, as libwebrtc does not) for
    /// `LOSS_HOLD_STALE` while the link lost nothing and did not queue (`clean`), and the
    /// viewer wants more (`wants_more`: its plan has a next step). The controller leaves that
    /// state only once what is sent, without probes, shows the link carries more, and a viewer
    /// moved to its lowest layer by a rate step sends too little for that: it stayed on that
    /// layer for the rest of the run, the estimate fixed at 331 kbit/s on a 3 Mbit/s link and
    /// every probe of the SFU's failing (their padding is capped by that estimate).
    pub(super) fn loss_hold_stale(&mut self, loss_limited: bool, clean: bool, wants_more: bool, now: Instant) -> bool {
        if !(loss_limited && clean) {
            self.loss_held_since = None;
            return false;
        }
        let since = *self.loss_held_since.get_or_insert(now);
        if wants_more && now.saturating_duration_since(since) >= LOSS_HOLD_STALE {
            self.loss_held_since = None;
            return true;
        }
        false
    }

    /// The loss a viewer reports on one of its tracks (a fraction).
    pub(super) fn egress_loss_of(&self, mid: Mid) -> Option<f32> {
        self.egress.iter().find(|(m, _, _)| *m == mid).and_then(|(_, loss, _)| *loss)
    }

    /// Measurements older than the quality window do not count.
    fn fresh(&self, now: Instant) -> bool {
        self.at.is_some_and(|t| now.saturating_duration_since(t) <= QUALITY_INTERVAL + Duration::from_millis(500))
    }
}

/// Whether str0m's recent transport-wide loss (`loss`) leaves a link clean: under
/// `CLEAN_LOSS`, or under `REORDER_LOSS` where the receiver reports every packet of every
/// track arrived (`receiver_lossless`). There str0m's "loss" is reordering: a packet missing
/// from one feedback counts as lost though the next acknowledges it (harness, meeting on
/// 1.2 Mbit/s with 3 ms of jitter: 1 packet in 15, and the estimate held by str0m's loss
/// controller at 42-57 kbit/s, under the audio alone, for the rest of the run).
pub(super) fn twcc_clean(loss: Option<f64>, receiver_lossless: bool) -> bool {
    loss.is_none_or(|l| l < CLEAN_LOSS || (receiver_lossless && l < REORDER_LOSS))
}

fn jitter_ms(units: u32, kind: MediaKind) -> f64 {
    units as f64 * 1000.0 / if kind == MediaKind::Audio { 48_000.0 } else { 90_000.0 }
}

/// The larger of two measurements, either of which may be missing.
fn worse<T: PartialOrd>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b > a { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// What one user's peers in a room measure: (loss fraction, RTT ms) per direction, and whether
/// each direction is disconnected.
#[derive(Debug, Default)]
struct UserNet {
    publishing: bool,
    up_loss: Option<f32>,
    up_rtt: Option<f64>,
    up_heard: bool,
    receiving: bool,
    down_loss: Option<f32>,
    down_rtt: Option<f64>,
    down_heard: bool,
    video_paused: bool,
    /// A simulcast publisher whose browser stopped some layers, or whose uplink starves them
    /// (`Producer::uplink_limited`).
    up_limited: bool,
}

impl Sfu {
    /// One audio packet's level (RFC 6464) for the room's active speakers.
    pub(super) fn note_audio_level(&mut self, room: &RoomKey, user: &UserId, stream: StreamKind, level: i8, now: Instant) {
        let dbov = level.unsigned_abs().min(127);
        match self.speakers.get_mut(room) {
            Some(r) => r.note(user, stream, dbov, now),
            None => self.speakers.entry(room.clone()).or_default().note(user, stream, dbov, now),
        }
    }

    pub(super) fn note_peer_stats(&mut self, id: u64, s: PeerStats, now: Instant) {
        let Some(session) = self.sessions.get_mut(&id) else { return };
        let net = &mut session.net;
        net.rtt = s.rtt.or(net.rtt);
        net.note_rtt();
        if let Role::Viewer { raw_estimate_bps, .. } = &mut session.role {
            let mut raw = s.bwe_tx.map(|b| b.as_f64()).or(*raw_estimate_bps);
            // What was sent since the last stats (bit/s) and over how long.
            let sent = net.tx_mark.map(|(bytes, at)| {
                let secs = s.timestamp.saturating_duration_since(at).as_secs_f64();
                (s.bytes_tx.saturating_sub(bytes) as f64 * 8.0 / secs, secs)
            });
            let queueing = s.rtt.is_some() && net.queueing();
            match (s.egress_loss_fraction, sent) {
                // A link that suddenly thins loses most of what is sent long before the
                // estimator (delay-based, then loss-based) comes down: what got through bounds
                // the estimate. Only with its queue full (the RTT up): bursts of loss on a link
                // with room are not a lack of bandwidth.
                (Some(loss), Some((bps, secs))) if queueing && loss > LOSSY && secs >= 0.2 => {
                    let delivered = bps * (1.0 - loss as f64);
                    raw = Some(raw.map_or(delivered, |r| r.min(delivered)));
                }
                // Neither lost nor queued: the link carried at least that (`carried_clean`).
                (Some(0.0), Some((bps, secs))) if s.rtt.is_some() && !queueing && secs >= 0.5 => net.carried_clean(bps),
                _ => {}
            }
            net.tx_mark = Some((s.bytes_tx, s.timestamp));
            *raw_estimate_bps = raw;
        }
        tracing::debug!(session = id, egress_loss = ?s.egress_loss_fraction, rtt = ?s.rtt, bytes_tx = s.bytes_tx, bwe = ?s.bwe_tx, "peer stats");
        net.egress_loss.note(s.egress_loss_fraction, s.timestamp);
        net.ingress_loss.note(s.ingress_loss_fraction, s.timestamp);
        net.at = Some(now);
    }

    pub(super) fn note_ingress_stats(&mut self, id: u64, s: MediaIngressStats) {
        let Some(session) = self.sessions.get_mut(&id) else { return };
        let Role::Publisher { producers } = &session.role else { return };
        let kind = producers.iter().find(|p| p.mid == s.mid).map_or(MediaKind::Video, |p| p.kind);
        let net = &mut session.net;
        net.ingress.retain(|(m, r, _, _)| !(*m == s.mid && *r == s.rid));
        net.ingress.push((s.mid, s.rid, s.loss, jitter_ms(s.jitter, kind)));
        if net.rtt.is_none() {
            net.rtt = s.rtt;
            net.note_rtt();
        }
    }

    pub(super) fn note_egress_stats(&mut self, id: u64, s: MediaEgressStats) {
        let Some(session) = self.sessions.get_mut(&id) else { return };
        let Role::Viewer { consumers, .. } = &session.role else { return };
        let kind = consumers.iter().find(|c| c.mid == s.mid).map_or(MediaKind::Video, |c| c.kind);
        let net = &mut session.net;
        // An event with no receiver report since the last one (browsers report about once a
        // second, as often as str0m's events come) keeps the loss last reported, rather than
        // showing none.
        let previous = net.egress.iter().find(|x| x.0 == s.mid).and_then(|x| x.1);
        net.egress.retain(|(m, _, _)| *m != s.mid);
        net.egress.push((s.mid, s.loss.or(previous), s.remote.map_or(0.0, |r| jitter_ms(r.jitter, kind))));
        if s.rtt.is_some() {
            net.rtt = net.rtt.or(s.rtt);
            net.note_rtt();
        }
    }

    /// Every tick: active speakers that changed; every 2 s: each room's quality reports.
    pub(super) fn signals_tick(&mut self, now: Instant) {
        let rooms = &self.rooms;
        self.speakers.retain(|room, s| rooms.contains_key(room) && !s.is_idle());
        for (room, s) in self.speakers.iter_mut() {
            if let Some(speakers) = s.poll(now) {
                self.out.push_back(SfuOutput::Room(RoomEvent::ActiveSpeakers { room: room.clone(), speakers }));
            }
        }
        if now < self.next_quality {
            return;
        }
        // A fixed cadence: counted from the tick that noticed, the reports drifted to every
        // ~2.3 s on a loaded machine, and the third after an impairment came after 6.4 s.
        self.next_quality += QUALITY_INTERVAL;
        if self.next_quality <= now {
            self.next_quality = now + QUALITY_INTERVAL;
        }
        self.forget_custom_limits();
        let mut by_room: HashMap<&RoomKey, Vec<&UserId>> = HashMap::new();
        for (room, user) in self.signaling.values() {
            let users = by_room.entry(room).or_default();
            if !users.contains(&user) {
                users.push(user);
            }
        }
        let mut events = Vec::new();
        for (room, users) in by_room {
            let reports = users.into_iter().map(|u| self.quality_of(room, u, now)).collect();
            events.push(RoomEvent::Quality { room: room.clone(), reports });
        }
        self.out.extend(events.into_iter().map(SfuOutput::Room));
    }

    fn user_net(&self, room: &RoomKey, user: &UserId, now: Instant) -> UserNet {
        let mut n = UserNet::default();
        for s in self.sessions.values().filter(|s| s.spec.room == *room && s.spec.user == *user && s.connected) {
            let heard = now.saturating_duration_since(s.last_heard) < DISCONNECTED_AFTER;
            let fresh = s.net.fresh(now);
            let rtt = s.net.rtt.filter(|_| fresh).map(|r| r.as_secs_f64() * 1000.0);
            match &s.role {
                Role::SpeedTest(_) => {}
                Role::Publisher { producers } => {
                    n.publishing = true;
                    n.up_heard |= heard;
                    n.up_limited |= producers.iter().any(|p| p.uplink_limited(now));
                    if fresh {
                        let streams = s.net.ingress.iter().filter_map(|x| x.2).reduce(f32::max);
                        n.up_loss = worse(n.up_loss, s.net.ingress_loss.fraction().or(streams));
                        n.up_rtt = n.up_rtt.or(rtt);
                    }
                }
                Role::Viewer { consumers, .. } => {
                    n.receiving = true;
                    n.down_heard |= heard;
                    n.video_paused |= consumers.iter().any(Consumer::paused);
                    if fresh {
                        let streams = s.net.egress.iter().filter_map(|x| x.1).reduce(f32::max);
                        n.down_loss = worse(n.down_loss, s.net.egress_loss.fraction().or(streams));
                        n.down_rtt = worse(n.down_rtt, rtt);
                    }
                }
            }
        }
        n
    }

    /// A participant's quality (PRODUCT.md §9). The path is one both ways, so an uplink with no
    /// round trip of its own (a publisher's peer sends no media to measure it on) takes the
    /// downlink's.
    pub(super) fn quality_of(&self, room: &RoomKey, user: &UserId, now: Instant) -> QualityReport {
        let n = self.user_net(room, user, now);
        let up_rtt = n.up_rtt.or(n.down_rtt);
        let uplink = match (n.publishing, n.up_heard) {
            (false, _) => 0,
            (true, false) => 6,
            // A browser that dropped layers for want of bandwidth has a limited uplink, however
            // clean what it still sends arrives.
            (true, true) => match score(n.up_loss.map(|l| l as f64 * 100.0), up_rtt) {
                s if n.up_limited => s.max(3),
                s => s,
            },
        };
        let downlink = match (n.receiving, n.down_heard) {
            (false, _) => 0,
            (true, false) => 6,
            (true, true) => {
                let s = score(n.down_loss.map(|l| l as f64 * 100.0), n.down_rtt);
                if n.video_paused {
                    s.max(4)
                } else {
                    s
                }
            }
        };
        QualityReport {
            user: user.clone(),
            uplink,
            downlink,
            uplink_rtt: up_rtt.filter(|_| n.publishing),
            uplink_loss: n.up_loss.map(|l| l as f64 * 100.0),
            downlink_rtt: n.down_rtt,
            downlink_loss: n.down_loss.map(|l| l as f64 * 100.0),
        }
    }

    /// The tracks `user` publishes and receives in the room, with their live stats.
    pub fn user_tracks(&self, room: &RoomKey, user: &UserId) -> Vec<TrackStats> {
        let mut out = Vec::new();
        let now = self.next_tick;
        let published = |stream: StreamKind, producers: &[Producer], net: Option<&NetStats>, out: &mut Vec<TrackStats>| {
            for p in producers {
                let layers: Vec<(Option<String>, f64)> = p.layers.iter().map(|l| (l.rid.map(|r| r.to_string()), l.rate.bps / 1000.0)).collect();
                let kbps = layers.iter().map(|(_, k)| k).sum();
                // The highest layer being sent stands for the track.
                let top = p.layers.iter().filter(|l| l.rate.bps > 0.0).min_by_key(|l| allocator::rank(l.rid.as_deref())).or(p.layers.first());
                let ingress = net.map(|n| n.ingress.iter().filter(|x| x.0 == p.mid).collect::<Vec<_>>()).unwrap_or_default();
                out.push(TrackStats {
                    direction: "publish",
                    source: None,
                    stream,
                    video: p.kind == MediaKind::Video,
                    codec: p.codec,
                    kbps,
                    layers,
                    layer: top.and_then(|l| l.rid).map(|r| r.to_string()),
                    fps: top.filter(|_| p.kind == MediaKind::Video).map(|l| l.rate.fps),
                    size: top.and_then(|l| l.size),
                    loss_pct: ingress.iter().filter_map(|x| x.2).reduce(f32::max).map(|l| l as f64 * 100.0),
                    jitter_ms: ingress.iter().map(|x| x.3).reduce(f64::max),
                    rtt_ms: net.and_then(|n| n.rtt).map(|r| r.as_secs_f64() * 1000.0),
                    paused: false,
                });
            }
        };
        let mine = |spec: &SessionSpec| spec.room == *room && spec.user == *user;
        let downlink_rtt = self.user_net(room, user, now).down_rtt;
        for s in self.sessions.values().filter(|s| mine(&s.spec)) {
            match &s.role {
                Role::SpeedTest(_) => {}
                Role::Publisher { producers } => {
                    let before = out.len();
                    published(s.spec.stream, producers, Some(&s.net), &mut out);
                    for t in &mut out[before..] {
                        t.rtt_ms = t.rtt_ms.or(downlink_rtt);
                    }
                }
                Role::Viewer { consumers, .. } => {
                    for c in consumers {
                        let layer = c.current.map(|(_, rid)| rid.map(|r| r.to_string()));
                        let sent = c.sent.as_ref();
                        let kbps = sent.map_or(0.0, |r| r.bps_at(now) / 1000.0);
                        // The picture size is the forwarded layer's, as its publisher announced it.
                        let size = c.current.and_then(|(pub_id, rid)| {
                            let producers = match (self.sessions.get(&pub_id), self.internal.get(&pub_id)) {
                                (Some(Session { role: Role::Publisher { producers }, .. }), _) => producers,
                                (_, Some(p)) => &p.producers,
                                _ => return None,
                            };
                            producers.iter().find(|p| p.kind == MediaKind::Video && c.kind == MediaKind::Video)?.layers.iter().find(|l| l.rid == rid)?.size
                        });
                        let egress = s.net.egress.iter().find(|x| x.0 == c.mid);
                        out.push(TrackStats {
                            direction: "receive",
                            source: Some(c.source.0.clone()),
                            stream: c.source.1,
                            video: c.kind == MediaKind::Video,
                            codec: c.codec,
                            kbps,
                            layers: layer.clone().map(|l| vec![(l, kbps)]).unwrap_or_default(),
                            layer: layer.flatten(),
                            fps: sent.filter(|_| c.kind == MediaKind::Video).map(|r| r.fps),
                            size,
                            loss_pct: egress.and_then(|x| x.1).map(|l| l as f64 * 100.0),
                            jitter_ms: egress.map(|x| x.2),
                            rtt_ms: s.net.rtt.map(|r| r.as_secs_f64() * 1000.0),
                            paused: c.paused(),
                        });
                    }
                }
            }
        }
        for p in self.internal.values().filter(|p| mine(&p.spec)) {
            published(p.spec.stream, &p.producers, None, &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loss_hold_on_a_link_that_no_longer_loses_restarts_the_estimator_after_4_s() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut net = NetStats::default();
        assert!(!net.loss_hold_stale(true, true, true, at(0)));
        assert!(!net.loss_hold_stale(true, true, true, at(3_900)));
        assert!(net.loss_hold_stale(true, true, true, at(4_000)));
        assert!(!net.loss_hold_stale(true, true, true, at(4_250)), "once, then another 4 s");
        assert!(net.loss_hold_stale(true, true, true, at(8_250)));
        // A loss or a queue on the way starts the wait again; so does the hold ending.
        let mut net = NetStats::default();
        net.loss_hold_stale(true, true, true, at(0));
        assert!(!net.loss_hold_stale(true, false, true, at(2_000)));
        assert!(!net.loss_hold_stale(true, true, true, at(4_000)));
        assert!(!net.loss_hold_stale(true, true, true, at(7_900)));
        assert!(net.loss_hold_stale(true, true, true, at(8_000)));
        let mut net = NetStats::default();
        net.loss_hold_stale(true, true, true, at(0));
        assert!(!net.loss_hold_stale(false, true, true, at(2_000)));
        assert!(!net.loss_hold_stale(true, true, true, at(4_000)));
        assert!(net.loss_hold_stale(true, true, true, at(8_000)));
        // A viewer that wants nothing more keeps the estimator as it is.
        let mut net = NetStats::default();
        net.loss_hold_stale(true, true, false, at(0));
        assert!(!net.loss_hold_stale(true, true, false, at(10_000)));
        assert!(net.loss_hold_stale(true, true, true, at(10_250)));
    }

    #[test]
    fn transport_wide_loss_the_receiver_does_not_report_is_reordering() {
        assert!(twcc_clean(None, false));
        assert!(twcc_clean(Some(0.001), false));
        assert!(!twcc_clean(Some(0.06), false), "loss the receiver did not report on");
        assert!(twcc_clean(Some(0.06), true), "1 in 15 missing from one feedback, every packet arrived");
        assert!(!twcc_clean(Some(0.3), true), "past reordering");
    }

    #[test]
    fn a_link_queues_when_its_rtt_is_50_ms_over_the_lowest_seen() {
        let mut net = NetStats::default();
        assert!(!net.queueing(), "no RTT yet");
        for ms in [60, 40, 80] {
            net.rtt = Some(Duration::from_millis(ms));
            net.note_rtt();
        }
        assert!(!net.queueing(), "80 ms over a lowest of 40");
        net.rtt = Some(Duration::from_millis(100));
        net.note_rtt();
        assert!(net.queueing());
    }

    #[test]
    fn a_queue_that_delivers_far_under_the_estimate_is_a_thinned_link_before_it_is_deep() {
        let signs = |ms: u64| LinkSigns { queued: Some(Duration::from_millis(ms)), queueing: ms > 50, losing: false, deep: ms > 150 };
        // Rate-step's first feedbacks after 3 Mbit/s → 400 kbit/s.
        assert!(signs(100).thinned_by(Some(346_000.0), Some(2_530_000.0)));
        assert!(!signs(100).thinning(), "not deep yet, not losing");
        // Too shallow: the window held packets that had not queued (227 kbit/s read of 400).
        assert!(!signs(53).thinned_by(Some(227_000.0), Some(2_380_000.0)));
        // A probe's overshoot on a 1.2 Mbit/s link, a keyframe's burst queued with gaps.
        assert!(!signs(131).thinned_by(Some(908_000.0), Some(1_350_000.0)));
        assert!(!signs(131).thinned_by(None, Some(1_350_000.0)), "nothing measured");
        assert!(!signs(131).thinned_by(Some(300_000.0), None), "no estimate");
    }

    #[test]
    fn a_thinned_link_caps_the_estimate_until_it_comes_down_or_a_probe_finds_more() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut net = NetStats::default();
        assert_eq!(net.thinned_cap(Some(2_500_000.0), Some(2_500_000.0), t0), Some(2_500_000.0), "nothing thinned");
        net.thinned(370_000.0, t0);
        assert!(net.just_thinned(ms(3_900)) && !net.just_thinned(ms(4_000)), "no probe for 4 s");
        // str0m's average still reads far above what got through: the cap (a share of it) stands.
        assert_eq!(net.thinned_cap(Some(1_800_000.0), Some(1_800_000.0), ms(1_000)), Some(370_000.0 * CAPPED_SHARE));
        assert_eq!(net.thinned_cap(Some(618_000.0), Some(618_000.0), ms(6_000)), Some(370_000.0 * CAPPED_SHARE), "past 4 s too");
        // A lower measure lowers it, unless taken while video was held for the link to drain
        // (the viewer's own silence).
        net.thinned(340_000.0, ms(6_100));
        assert_eq!(net.thinned_cap(Some(618_000.0), Some(618_000.0), ms(6_200)), Some(340_000.0 * CAPPED_SHARE));
        net.quiet_until = Some(ms(6_340));
        net.thinned(150_000.0, ms(6_300));
        assert_eq!(net.thinned_cap(Some(618_000.0), Some(618_000.0), ms(6_400)), Some(340_000.0 * CAPPED_SHARE));
        net.thinned(300_000.0, ms(6_350));
        assert_eq!(net.thinned_cap(Some(618_000.0), Some(618_000.0), ms(6_400)), Some(300_000.0 * CAPPED_SHARE));
        // What it carried cleanly since the last stats raises a cap whose share is below it
        // (with `CARRIED_MARGIN`), so that the share covers it; it never lowers one.
        net.carried_clean(220_000.0);
        assert_eq!(net.thinned_cap(Some(618_000.0), Some(618_000.0), ms(6_450)), Some(300_000.0 * CAPPED_SHARE));
        net.carried_clean(250_000.0);
        let cap = net.thinned_cap(Some(618_000.0), Some(618_000.0), ms(6_450)).unwrap();
        assert!((cap - 275_000.0).abs() < 1.0, "{cap}");
        net.carried_clean(200_000.0);
        let cap = net.thinned_cap(Some(618_000.0), Some(618_000.0), ms(6_450)).unwrap();
        assert!((cap - 275_000.0).abs() < 1.0, "{cap}");
        // The average come down to it: no cap.
        assert!(net.thinned_cap(Some(380_000.0), Some(380_000.0), ms(6_900)).is_some_and(|c| c < 276_000.0), "not yet");
        assert_eq!(net.thinned_cap(Some(320_000.0), Some(320_000.0), ms(7_000)), Some(320_000.0));
        assert!(net.just_thinned(ms(7_000)), "no probe for 4 s, cap or none");
        assert!(!net.capped());
        // Or a probe found more.
        net.thinned(370_000.0, ms(8_000));
        net.uncap();
        assert_eq!(net.thinned_cap(Some(1_500_000.0), Some(1_500_000.0), ms(8_100)), Some(1_500_000.0));
    }

    #[test]
    fn the_pacer_stays_within_what_a_thinned_link_carried_for_a_second_not_lowered_and_under_what_a_deep_queue_delivers() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut net = NetStats::default();
        assert_eq!((net.draining_cap(t0), net.pacing_ceiling(None, 0.0, t0)), (None, None), "nothing thinned, nothing to change");
        net.thinned(360_000.0, t0);
        assert_eq!(net.draining_cap(t0), Some(360_000.0));
        assert_eq!(net.pacing_ceiling(None, 0.0, t0), None, "no viewer moved down: its media is not paced below");
        net.held(ms(10), Duration::ZERO);
        assert_eq!(net.pacing_ceiling(None, 0.0, ms(10)), Some(Some(288_000.0)));
        assert_eq!(net.pacing_ceiling(None, 0.0, ms(100)), None, "set once");
        // A later, lower measure (a dip, the hold's own silence) does not lower it, and keeps it.
        net.thinned(175_000.0, ms(400));
        assert_eq!(net.draining_cap(ms(500)), Some(360_000.0));
        assert_eq!(net.pacing_ceiling(None, 0.0, ms(500)), None);
        assert_eq!(net.draining_cap(ms(1_300)), Some(360_000.0), "a second after the last thinning");
        assert_eq!(net.draining_cap(ms(1_400)), None, "then none, while the estimate's cap may stand");
        assert_eq!(net.pacing_ceiling(None, 0.0, ms(1_400)), Some(None));
        assert!(net.capped());
        // A new thinning sets it again, at what the link carries then.
        net.thinned(150_000.0, ms(3_000));
        net.held(ms(3_000), Duration::ZERO);
        assert_eq!(net.draining_cap(ms(3_000)), Some(150_000.0));
        assert_eq!(net.pacing_ceiling(None, 0.0, ms(3_000)), Some(Some(120_000.0)));
        // A deep queue: nine tenths of what the link delivers, never under the media with its
        // headroom; a measure within a tenth moves nothing; held a second after the queue.
        let mut net = NetStats::default();
        net.note_deep(true, t0);
        assert_eq!(net.pacing_ceiling(None, 2_000_000.0, t0), None, "no measure, no ceiling");
        assert_eq!(net.pacing_ceiling(Some(3_000_000.0), 2_000_000.0, t0), Some(Some(2_700_000.0)));
        assert_eq!(net.pacing_ceiling(Some(2_900_000.0), 2_000_000.0, ms(50)), None);
        assert_eq!(net.pacing_ceiling(Some(2_000_000.0), 2_000_000.0, ms(100)), Some(Some(2_100_000.0)));
        net.note_deep(false, ms(200));
        assert_eq!(net.pacing_ceiling(None, 2_000_000.0, ms(1_050)), None);
        assert_eq!(net.pacing_ceiling(None, 2_000_000.0, ms(1_150)), Some(None));
        // Both: the lower.
        net.note_deep(true, ms(2_000));
        assert_eq!(net.pacing_ceiling(Some(3_000_000.0), 0.0, ms(2_000)), Some(Some(2_700_000.0)));
        net.thinned(2_000_000.0, ms(2_000));
        net.draining_cap(ms(2_000));
        net.held(ms(2_000), Duration::ZERO);
        assert_eq!(net.pacing_ceiling(Some(3_000_000.0), 0.0, ms(2_010)), Some(Some(1_600_000.0)));
    }

    #[test]
    fn loss_is_the_mean_of_the_last_two_seconds() {
        let t0 = Instant::now();
        let mut w = LossWindow::default();
        assert_eq!(w.fraction(), None);
        w.note(Some(0.02), t0);
        assert_eq!(w.fraction(), Some(0.02));
        w.note(Some(0.06), t0 + Duration::from_secs(1));
        assert_eq!(w.fraction(), Some(0.04));
        // After a gap in the samples, only the latest is recent.
        w.note(Some(0.08), t0 + Duration::from_secs(4));
        assert_eq!(w.fraction(), Some(0.08));
        w.note(None, t0 + Duration::from_secs(5));
        assert_eq!(w.fraction(), None);
    }
}
