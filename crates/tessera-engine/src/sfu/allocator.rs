//! The stream allocator (pure values, as LiveKit's): how a viewer's bandwidth estimate is shared
//! among the video tracks it receives, and when its estimator probes for more.
//!
//! `plan` gives every track its lowest layer first, in priority order (screen share, then the
//! active speaker, then the others), pausing the tracks that no longer fit; what is left raises
//! tracks one at a time in the same order, each to the highest layer that fits. So no track
//! starves while another holds more than its lowest layer, and the track that matters most gets
//! the best picture. A pinned quality takes its layer whatever the estimate.
//!
//! `Prober` moves a viewer up: the estimate does not rise above what is sent, so to find room
//! for the next step of the plan it asks the estimator for that rate: str0m's allocation probe
//! (short clusters of padding above the goal, whose arrival rate measures the link) and padding
//! that sustains the goal, capped by the estimate (so the estimator, which grows only with what
//! is acknowledged, can climb; measured: clusters alone left a 700 kbit/s viewer at 480 kbit/s
//! estimates). A probe ends as soon as the estimate reaches the goal (the plan then takes the
//! layer), or falls, or the RTT rises well above the lowest seen (the link queues), or the
//! estimate stops climbing; a failed probe backs off (5 s, doubling to a minute).

use super::types::{Quality, SATURATED_PERMILLE};
use smallvec::SmallVec;
use std::time::{Duration, Instant};
use tessera_rtc::str0m::media::Rid;

/// A track's layers (three simulcast layers, each whole and without its top temporal layer),
/// on the stack: the allocator runs for every viewer four times a second.
pub type Layers = SmallVec<[LayerRate; 6]>;
/// Per track of one viewer (spilling to the heap past four).
pub type PerTrack<T> = SmallVec<[T; 4]>;

/// Video pauses only once the estimate has stayed below the lowest layer this long: a probe
/// that overshoots, or one burst of loss, dips the estimate for a moment.
pub const PAUSE_AFTER: Duration = Duration::from_secs(2);
/// A probe that has neither reached its goal nor kept climbing within this has failed.
const PROBE_WINDOW: Duration = Duration::from_secs(3);
/// After a failed probe the next waits 5 s, doubling per failure up to a minute.
const PROBE_BACKOFF: Duration = Duration::from_secs(5);
const PROBE_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// After a failed probe to resume a paused track, the next waits this long rather than
/// `PROBE_BACKOFF`: a viewer without video is the worst state to stay in, and on the thin link
/// such a probe costs little (its padding is capped by the estimate; no audio was concealed
/// under it). With 5 s the cycle was 8 s, and a probe that failed on the link just back held
/// the video paused 17 s after the link (Chromium, CI).
const RESUME_RETRY: Duration = Duration::from_secs(2);
/// A probe whose goal is within this factor of the estimate is a small step (see `fail`).
const SMALL_STEP: f64 = 1.5;
/// After a probe found its room, the next waits this long: the layer just taken starts with a
/// keyframe that must leave the queue first. (3 s delayed a viewer's climb back to the top after
/// a rate step to 9.5 s; a failed probe's back-off, not this, is what spaces probes that fail.)
const PROBE_AFTER_SUCCESS: Duration = Duration::from_secs(1);
/// No probe in a viewer's first seconds: the estimate is still the configured start, not a
/// measurement, and padding up to it could flood a thin link.
const PROBE_SETTLE: Duration = Duration::from_secs(3);
/// An estimate this far below the probe's start, with the link's queue delay at least
/// `PROBE_OVERUSE_DELAY`, means the probe overloads the link; so does a link that queues (its
/// RTT well above the lowest seen).
const PROBE_OVERUSE: f64 = 0.85;
const PROBE_OVERUSE_DELAY: Duration = Duration::from_millis(20);
/// RTP headers and extensions on top of a layer's measured payload rate (the estimate counts
/// RTP packets).
pub const OVERHEAD: f64 = 1.04;
/// A layer being sent is kept until the budget falls below this share of its rate: an estimate
/// hovering at a layer's rate (a link it nearly fills: the estimator backs off 15 % on each
/// sign of queueing) must not switch it back and forth, each switch a keyframe.
const KEEP: f64 = 0.75;
/// A layer is taken whole again from itself without its top temporal layer, or a higher
/// simulcast layer taken, only where its need is within this share of the estimate (`plan`).
const WHOLE_FROM_REDUCED: f64 = 0.9;
/// A probe for room to resume a paused track of one encoding has found it once the estimate
/// is this share of its goal on a link that does not queue under it (docs/decisions.md, "A
/// paused track comes back on a probe that came near its goal"). A probe is padding, at most
/// 255 bytes a packet: on the test bed's 3 Mbit/s link, which had carried the 2.5 Mbit/s
/// encoding, probes read 1.8-2.2 Mbit/s (0.69-0.85 of the 2.6-2.7 Mbit/s goal with audio and
/// headers), and str0m's estimate does not rise above what they read while only padding and
/// audio flow. Waiting for the whole goal held the video paused 4-27 s after the link came
/// back (median 10), and once more than 32 s. Taken on a link that does not carry it after
/// all, the queue it builds pauses it again and the probe counts as failed (`disprove`). A
/// simulcast track's lowest layer is small enough for a probe to read whole.
const RESUME_NEAR: f64 = 0.65;
/// The encoding a probe found room to resume is still taken while its rate reads up to this
/// much more than the room found.
pub const PROVEN_SLACK: f64 = 1.1;
/// Probe clusters look this far above the goal: a probe sent at exactly the goal measures a
/// little less than it, and would never find it.
const PROBE_HEADROOM: f64 = 1.25;
/// A whole layer's rate the link refused (a deep queue took it to its reduced step: `relieved`)
/// is not taken again on the estimate: the budget stays under this share of it until a probe
/// finds it on a link that stays clean under it for `REFUSED_CLEAN_FOR` (`Prober::refused`).
/// str0m's estimate reads above a nearly full link (600 kbit/s link: 620-810 kbit/s while it
/// queued 100-160 ms), and the whole middle layer taken on it a second after each relief kept
/// the queue deep (Chromium, H.264: link queue p50 57 ms, RTT p50 112 ms).
/// Only a relief's rate: the reduced step below it stays within the budget. A disproved
/// probe's goal can be a step up from the lowest layer or a paused encoding's resume; refusing
/// those too, one `make test` run held a 700 kbit/s viewer on the lowest layer for 7 s and
/// resumed an encoding 16 s after its link came back (their logs not kept: the likely path,
/// not a proven one).
const REFUSED_BUDGET: f64 = 0.95;
const REFUSED_CLEAN_FOR: Duration = Duration::from_millis(1500);

/// What a video consumer should forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerChoice {
    Layer(Option<Rid>),
    /// A simulcast layer's temporal layers up to this one only (VP8's TID): the same picture at
    /// a lower frame rate, taken and left without a keyframe.
    Temporal(Option<Rid>, u8),
    /// Congestion control paused video: even the lowest layer does not fit.
    Paused,
}

impl LayerChoice {
    /// The simulcast layer it forwards (None: paused).
    pub fn rid(self) -> Option<Option<Rid>> {
        match self {
            LayerChoice::Layer(r) | LayerChoice::Temporal(r, _) => Some(r),
            LayerChoice::Paused => None,
        }
    }

    /// The highest temporal layer it forwards (None: all).
    pub fn temporal(self) -> Option<u8> {
        match self {
            LayerChoice::Temporal(_, t) => Some(t),
            _ => None,
        }
    }
}

/// One step of a track's ladder as the allocator sees it: a simulcast layer, whole or without
/// its highest temporal layer.
#[derive(Debug, Clone, Copy)]
pub struct LayerRate {
    pub rid: Option<Rid>,
    pub bps: f64,
    /// Temporal layers up to this one only (None: all of them).
    pub temporal: Option<u8>,
}

impl LayerRate {
    /// A whole simulcast layer.
    pub fn whole(rid: Option<Rid>, bps: f64) -> LayerRate {
        LayerRate { rid, bps, temporal: None }
    }

    pub fn choice(&self) -> LayerChoice {
        match self.temporal {
            Some(t) => LayerChoice::Temporal(self.rid, t),
            None => LayerChoice::Layer(self.rid),
        }
    }
}

/// Whose picture matters most when the estimate is short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    Other,
    Speaker,
    ScreenShare,
}

/// One video track a viewer receives.
#[derive(Debug, Clone)]
pub struct TrackDemand {
    pub layers: Layers,
    pub quality: Quality,
    pub priority: Priority,
    /// What it forwards now (for hysteresis).
    pub current: Option<LayerChoice>,
    /// Layers at or above this rate are not taken for now (the link just failed to carry one:
    /// `CUT_HOLD`); the lowest layer always may be. The track still ranks: below its top, it
    /// caps the tracks of lower priority.
    pub ceiling_bps: Option<f64>,
    /// One encoding may be paused too: the link was measured not to carry what the viewer
    /// receives (its estimate capped where it thinned, a standing queue), or it is paused now.
    /// Otherwise one encoding is always taken (on a start estimate or a dip a WHEP player
    /// would wait seconds for a probe to see its picture).
    pub single_may_pause: bool,
}

/// The lower of two ceilings, either of which may be absent.
pub fn lower_ceiling(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The ceiling (`TrackDemand::ceiling_bps`) that keeps a track at or below the layer it
/// forwards: the rate of the next layer up, if there is one.
pub fn up_ceiling(current: Option<LayerChoice>, layers: &[LayerRate]) -> Option<f64> {
    let current = current.filter(|c| *c != LayerChoice::Paused)?;
    let now = layers.iter().find(|l| l.choice() == current)?.bps;
    layers.iter().map(|l| l.bps).filter(|b| *b > now).min_by(f64::total_cmp)
}

/// The ceiling (`TrackDemand::ceiling_bps`) after a full send queue cut layer `rid` (held
/// `consumer::CUT_HOLD`): below that layer, or, where it was sent whole (`whole`) and has a
/// reduced step, below the whole layer only. The reduced step is the same picture at about half
/// the frame rate and ~60 % of the rate (Chromium VP8 on 600 kbit/s: the whole middle layer,
/// taken on a probe that read the raw estimate's overshoot, was cut and the viewer held on its
/// lowest layer for 4 s).
pub fn cut_ceiling(rid: Rid, whole: bool, layers: &[LayerRate]) -> Option<f64> {
    // Sent whole: the relief's ceiling (the whole layer's rate, where it has a reduced step).
    let relief = whole.then(|| relief_ceiling(Some(LayerChoice::Layer(Some(rid))), layers)).flatten();
    relief.or_else(|| layers.iter().filter(|l| l.rid == Some(rid)).map(|l| l.bps).min_by(f64::total_cmp))
}

/// The ceiling (`TrackDemand::ceiling_bps`) that takes a track sending a whole layer down to
/// that layer without its top temporal layer, where it has that step: its link queues deep, and
/// the step costs no keyframe and takes ~40 % of the rate off (measured: the middle layer's
/// start at the configured 800 kbit/s on a 600 kbit/s link queued 730 ms and was cut, 3.8 s
/// of freeze).
pub fn relief_ceiling(current: Option<LayerChoice>, layers: &[LayerRate]) -> Option<f64> {
    let Some(LayerChoice::Layer(rid)) = current else { return None };
    layers.iter().any(|l| l.rid == rid && l.temporal.is_some()).then(|| layers.iter().find(|l| l.rid == rid && l.temporal.is_none()).map(|l| l.bps)).flatten()
}

/// What a viewer's estimate buys.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Per track, in the order given.
    pub choices: PerTrack<LayerChoice>,
    /// The bitrate the choices need (headers included), audio included.
    pub used_bps: f64,
    /// The bitrate the next step up needs (the first track in priority order below its top
    /// layer, one layer up), if any: what a probe looks for.
    pub next_bps: Option<f64>,
    /// Whether that step resumes a paused track of one encoding (`RESUME_NEAR`).
    pub next_resumes: bool,
}

/// Rank of a simulcast layer by its rid: the spec's names first (h, m, l, l2: PRODUCT.md
/// §3.5), highest first.
pub(super) fn rank(rid: Option<&str>) -> u8 {
    match rid {
        Some("h") => 0,
        Some("m") => 1,
        Some("l") => 2,
        Some("l2") => 3,
        _ => 4,
    }
}

/// Whether a simulcast layer (its rank and rate) reads under a lower one of `siblings`: its
/// publisher is starting it or cannot keep it up (Chromium on a loaded machine: the top layer
/// at 2 fps and ~30 kbit/s beside the lowest's 150), not a cheap layer. Taken on that rate, the
/// top layer's keyframe flooded a 600 kbit/s link and the viewer sat on the lowest layer 4 s.
pub fn reads_under_a_lower_layer(rank: u8, bps: f64, siblings: impl IntoIterator<Item = (u8, f64)>) -> bool {
    siblings.into_iter().any(|(r, b)| r > rank && b > bps)
}

/// Layers from the lowest to the highest: by name, unnamed ones by measured bitrate; a layer
/// without its top temporal layer just below it whole.
fn ascending(layers: &[LayerRate]) -> Layers {
    let mut l = Layers::from_slice(layers);
    l.sort_by(|a, b| rank(b.rid.as_deref()).cmp(&rank(a.rid.as_deref())).then(a.bps.total_cmp(&b.bps)));
    l
}

fn need(l: &LayerRate) -> f64 {
    l.bps * OVERHEAD
}

/// The layer a pinned quality takes, from ascending layers: a whole simulcast layer.
fn pinned(layers: &[LayerRate], quality: Quality) -> Option<usize> {
    let whole = || (0..layers.len()).filter(|&k| layers[k].temporal.is_none());
    let n = whole().count();
    let nth = match quality {
        Quality::High => n.saturating_sub(1),
        Quality::Medium => n / 2,
        Quality::Low => 0,
        Quality::Auto => return None,
    };
    Some(whole().nth(nth).unwrap_or(0))
}

/// Layers every viewer's simulcast video is held below its top while its worker is saturated
/// (issue 14's graceful overload): forwarding costs per packet, and a lower layer has far fewer
/// packets per frame (the low layer ~1 against the top's ~6 at 1.5 Mbit/s), so shedding layers
/// relieves a worker before whole frames have to be dropped. One layer more for each saturated
/// reading (one a second, `SATURATED_PERMILLE`) once the last step has had `SHED_SETTLE` to take
/// effect (a move waits for the lower layer's keyframe), at most `MAX_SHED_LAYERS`; one layer back
/// after `LIFT_AFTER` below `LIFT_BELOW_PERMILLE` since the last change, so a lift that
/// saturates the worker again comes back at most every few seconds, not every second.
#[derive(Debug, Default)]
pub struct Shed {
    layers: usize,
    changed_at: Option<Instant>,
}

pub const MAX_SHED_LAYERS: usize = 2;
const SHED_SETTLE: Duration = Duration::from_secs(2);
const LIFT_BELOW_PERMILLE: u64 = 600;
const LIFT_AFTER: Duration = Duration::from_secs(5);

impl Shed {
    /// Takes the worker's busy share of the last second (‰); true when the level changed.
    pub fn update(&mut self, busy_permille: u64, now: Instant) -> bool {
        let since = |d: Duration| self.changed_at.is_none_or(|t| now.saturating_duration_since(t) >= d);
        let before = self.layers;
        if busy_permille >= SATURATED_PERMILLE && self.layers < MAX_SHED_LAYERS && (self.layers == 0 || since(SHED_SETTLE)) {
            self.layers += 1;
        } else if busy_permille < LIFT_BELOW_PERMILLE && self.layers > 0 && since(LIFT_AFTER) {
            self.layers -= 1;
        }
        if self.layers != before {
            self.changed_at = Some(now);
        }
        self.layers != before
    }

    /// Layers below the top a track is held (0: none).
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// The ceiling (`TrackDemand::ceiling_bps`) that holds a track with these layers `layers()`
    /// below its top; its lowest layer stays allowed. None when nothing is shed.
    pub fn ceiling(&self, layers: &[LayerRate]) -> Option<f64> {
        // Checked first: the allocator asks for every track at every allocation.
        if self.layers == 0 || layers.len() < 2 {
            return None;
        }
        // Counted in whole simulcast layers; a layer without its top temporal layer stays
        // allowed under the ceiling of the one above (fewer packets still).
        let sorted: Layers = ascending(layers).into_iter().filter(|l| l.temporal.is_none()).collect();
        if sorted.len() < 2 {
            return None;
        }
        let allowed = sorted.len().saturating_sub(1 + self.layers);
        Some(sorted[allowed + 1].bps)
    }
}

/// Shares `estimate_bps` among `tracks`, after `audio_bps` for the audio it receives. Until
/// the viewer's estimator has a measurement (None), the first track in priority order gets
/// its top layer and the others their lowest: the bet a viewer of one track makes (its top
/// at once, corrected within a second of feedback), not that bet once per track (measured:
/// four tracks' top layers into a 1.2 Mbit/s link lost 13-28 % and froze for seconds).
pub fn plan(tracks: &[TrackDemand], audio_bps: f64, estimate_bps: Option<f64>) -> Plan {
    let sorted: PerTrack<Layers> = tracks.iter().map(|t| ascending(&t.layers)).collect();
    // Chosen level per track (index into its ascending layers); None = paused.
    let mut level: PerTrack<Option<usize>> = smallvec::smallvec![None; tracks.len()];
    let mut free: PerTrack<bool> = smallvec::smallvec![false; tracks.len()];
    let mut used = audio_bps;
    for (i, t) in tracks.iter().enumerate() {
        let l = &sorted[i];
        if l.is_empty() {
            continue;
        }
        // One layer has nothing to fall back to (its temporal layers are not used alone: a
        // viewer of one encoding is a WHEP player, not a meeting) unless the link is known not
        // to carry it: then it is paused, its audio kept (Chromium behind a link thinned to 400
        // kbit/s under one 2.5 Mbit/s encoding: 2,300 packets dropped at the link in 10 s and
        // 46 % of its audio concealed). A pinned quality ignores the estimate.
        let single = one_encoding(l);
        match if single && !t.single_may_pause { pinned(l, Quality::High) } else { pinned(l, t.quality) } {
            Some(k) => {
                level[i] = Some(k);
                used += need(&l[k]);
            }
            None => free[i] = true,
        }
    }
    let mut order: PerTrack<usize> = (0..tracks.len()).filter(|&i| free[i]).collect();
    // Among equals, the track already higher first: the budget keeps what it carries rather
    // than moving one track up and another down (Chromium, meeting-1200: two others swapped the
    // middle layer on a rise of the estimate, two keyframes at once queued the link 230 ms, and
    // the cut that followed held every track on its lowest layer, the speaker's too).
    let current_rank = |i: usize| tracks[i].current.and_then(LayerChoice::rid).map_or(u8::MAX, |r| rank(r.as_deref()));
    order.sort_by(|&a, &b| tracks[b].priority.cmp(&tracks[a].priority).then(current_rank(a).cmp(&current_rank(b))));
    // The bet stands whatever the layers' rates: before a publisher's first media they read 0,
    // and every track "fit" its top (a member subscribed to four as the meeting started took
    // all four top layers, lost a fifth of its packets and its estimate fell to 42 kbit/s).
    let betting = estimate_bps.is_none();
    let estimate_bps = estimate_bps.or_else(|| {
        let top = order.first().map_or(0.0, |&i| need(sorted[i].last().expect("layers")));
        Some(used + top + order.iter().skip(1).map(|&i| need(&sorted[i][0])).sum::<f64>())
    });
    let held = |i: usize, k: usize| tracks[i].current == Some(sorted[i][k].choice());
    // The highest level a track may take: its top, or the last under its ceiling.
    let allowed = |i: usize| match tracks[i].ceiling_bps {
        Some(c) => sorted[i].iter().rposition(|x| x.bps < c).unwrap_or(0),
        None => sorted[i].len().saturating_sub(1),
    };
    // A layer taken back whole from itself without its top temporal layer needs a margin: the
    // step costs no keyframe either way, so nothing else stops an estimate that hovers at the
    // layer's rate from moving it back and forth, each move up refilling the link's queue
    // (measured on 600 kbit/s: the middle layer whole "fit" estimates of 540-590 kbit/s and
    // queued 200-260 ms each time).
    // A move up to another simulcast layer costs a keyframe, and one the link then does not
    // carry comes back down with a freeze: it needs the same margin (measured in rate-step: on
    // the 400 kbit/s link the middle layer's reduced step, 393 kbit/s with audio, was taken on
    // a 390 kbit/s estimate, queued, and was cut back with 0.6 s of freeze).
    let up_switch = |i: usize, l: &LayerRate| tracks[i].current.and_then(LayerChoice::rid).flatten().is_some_and(|r| rank(l.rid.as_deref()) < rank(Some(&r)));
    let cost = |i: usize, k: usize| {
        let l = &sorted[i][k];
        let from_reduced = matches!(tracks[i].current, Some(LayerChoice::Temporal(r, _)) if r == l.rid && l.temporal.is_none());
        match (held(i, k), from_reduced || up_switch(i, l)) {
            (true, _) => need(l) * KEEP,
            (false, true) => need(l) / WHOLE_FROM_REDUCED,
            (false, false) => need(l),
        }
    };
    let fits = |i: usize, k: usize, extra: f64, used: f64| used + cost(i, k) - extra <= estimate_bps.unwrap_or(f64::MAX);
    // Everyone's lowest layer first (whole; without its top temporal layer only where whole
    // it does not fit: a frame rate halved is a last resort before a pause, not what every
    // track starts from — measured in a meeting of four: the others at 7.5 fps, and the budget
    // that freed moved one of them up and down between layers, 6 s of freeze)...
    for &i in &order {
        let whole = sorted[i].iter().position(|l| l.temporal.is_none()).unwrap_or(0);
        if let Some(k) = [whole, 0].into_iter().find(|&k| fits(i, k, 0.0, used)) {
            level[i] = Some(k);
            used += need(&sorted[i][k]);
        }
    }
    // ...then one track at a time, as high as it fits; a track below its top caps the tracks of
    // lower priority under its simulcast layer. (Without the cap a speaker's layer that did not
    // fit by a keyframe's worth went to another track, and back a moment later: each move a
    // keyframe, and the speaker's picture no better than the others'. Capped at the speaker's
    // layer rather than under it, the others took the middle layer beside the speaker's on
    // str0m's estimate of 1.2-1.4 Mbit/s for a 1.2 Mbit/s link, and their queue was read as the
    // link thinning: every track on its lowest layer for seconds.)
    let mut cap: Option<(Priority, u8)> = None;
    // The first track in priority order that could still go up (None: paused), for the probe.
    let mut next: Option<(usize, Option<usize>)> = None;
    for &i in &order {
        let Some(k) = level[i] else {
            next.get_or_insert((i, None));
            continue;
        };
        let highest = match cap {
            _ if betting && order.first() != Some(&i) => k,
            Some((p, r)) if tracks[i].priority < p => sorted[i].iter().rposition(|l| rank(l.rid.as_deref()) > r).unwrap_or(0).max(k).min(allowed(i)),
            _ => allowed(i),
        };
        let base = need(&sorted[i][k]);
        if let Some(up) = (k + 1..=highest).rev().find(|&j| fits(i, j, base, used)) {
            used += need(&sorted[i][up]) - base;
            level[i] = Some(up);
        }
        let at = level[i].unwrap_or(k);
        if at < highest {
            next.get_or_insert((i, Some(at)));
        }
        if cap.is_none() && at + 1 < sorted[i].len() {
            cap = Some((tracks[i].priority, rank(sorted[i][at].rid.as_deref())));
        }
    }
    let next_bps = next.map(|(i, at)| match at {
        None => used + need(&sorted[i][0]),
        Some(k) => used + cost(i, k + 1) - need(&sorted[i][k]),
    });
    let choices = (0..tracks.len())
        .map(|i| match level[i] {
            Some(k) => sorted[i][k].choice(),
            None if sorted[i].is_empty() => LayerChoice::Layer(None),
            None => LayerChoice::Paused,
        })
        .collect();
    Plan { choices, used_bps: used, next_bps, next_resumes: matches!(next, Some((i, None)) if one_encoding(&sorted[i])) }
}

/// A raw estimate this far below the averaged one is a link that thinned, not a dip.
const COLLAPSE: f64 = 0.7;

/// The viewer's estimate: str0m's (a 3 s average: steady), or, when that has fallen far
/// below it (a link that thinned: down at once, not seconds later), the lesser of its raw value
/// and what the viewer received over the last moments (`delivered`, given only while the link
/// shows it thinned): the raw value comes down in steps over a second or more (0.85 of an
/// acknowledged rate that is itself averaged), and a layer chosen on its first step can be one
/// the link does not carry either.
pub fn measured(averaged: Option<f64>, raw: Option<f64>, delivered: Option<f64>) -> Option<f64> {
    let e = averaged?;
    Some(match raw.into_iter().chain(delivered).reduce(f64::min) {
        Some(m) if m < e * COLLAPSE => m,
        _ => e,
    })
}

/// What the allocator shares: the measured estimate, except that while a probe runs, and for
/// `PROBE_WINDOW` after one fails, the estimate from before it (`Prober::held`) stands unless
/// the link collapses: a probe's own overshoot must not move layers down. `calm`: the link
/// neither queues nor loses now, or the probe's overshoot still drains (`Prober::overshooting`):
/// then the estimate before it stands even so. str0m's delay-based estimate falls far after a
/// probe's queue and stays down for seconds after it drained (600 kbit/s link: 180-200 kbit/s
/// read after each probe for 625), and the viewer went down to its lowest layer for 5 s each
/// time. A link that did collapse queues, or loses, once the overshoot has drained.
pub fn budget(measured: Option<f64>, held: Option<f64>, calm: bool) -> Option<f64> {
    let e = measured?;
    Some(match held {
        Some(before) if calm || e >= before * COLLAPSE => e.max(before),
        _ => e,
    })
}

/// Whether a track's layers are one encoding (with its temporal steps, if any): no simulcast.
pub fn one_encoding(layers: &[LayerRate]) -> bool {
    layers.iter().filter(|x| x.temporal.is_none()).count() <= 1
}

/// A track's pause hysteresis: a planned pause waits for `PAUSE_AFTER` of estimates below the
/// lowest layer (the lowest layer is kept meanwhile).
#[derive(Debug, Default)]
pub struct PauseHold {
    below_lowest_since: Option<Instant>,
}

impl PauseHold {
    /// `keep`: the lowest layer is kept however long the estimate stays below it (a link that
    /// loses without queueing: see `sfu::pacing_floor`).
    pub fn hold(&mut self, planned: LayerChoice, layers: &[LayerRate], keep: bool, now: Instant) -> LayerChoice {
        if planned != LayerChoice::Paused {
            self.below_lowest_since = None;
            return planned;
        }
        let since = *self.below_lowest_since.get_or_insert(now);
        match ascending(layers).first() {
            Some(lowest) if keep || now.duration_since(since) < PAUSE_AFTER => lowest.choice(),
            _ => planned,
        }
    }
}

/// A probe under way: its goal, when it started or last climbed, and the estimate then.
#[derive(Debug, Clone, Copy)]
struct Probe {
    goal: f64,
    since: Instant,
    from: f64,
    /// It looks for room to resume a paused track of one encoding (`RESUME_NEAR`).
    resumes: bool,
    /// str0m's raw estimate when it started.
    raw_from: Option<f64>,
    /// The link queued (or its latest packet did) at some step of it.
    dirty: bool,
}

/// One viewer's probing for the next step of its plan.
#[derive(Debug, Default)]
pub struct Prober {
    /// The viewer's first estimate (the configured start) and when it came.
    start: Option<(Instant, f64)>,
    probe: Option<Probe>,
    failures: u32,
    next_at: Option<Instant>,
    /// The estimate before the last failed probe, and until when it stands.
    failed_from: Option<(f64, Instant)>,
    /// The goal of the last failed probe: only reaching it clears the back-off (a smaller
    /// step found does not make the bigger one likelier).
    failed_goal: Option<f64>,
    /// The (minimum, desired) last given to the estimator.
    set: Option<(f64, f64)>,
    /// The goal of the probe that last found its room, and until when it stands in for an
    /// averaged estimate still climbing to it (`proven`).
    proven: Option<(f64, Instant)>,
    /// The goal of the probe that last found its room, when, and the estimate it started from
    /// (`disprove`).
    found: Option<(f64, Instant, f64)>,
    /// The goal of a probe disproved: finding it again does not clear the back-off, holding
    /// it for `DISPROVE_WITHIN` does.
    disproved: Option<f64>,
    /// What the link carried when it last thinned (`thinned`).
    carried: Option<f64>,
    /// Until when a queue is the last probe's overshoot draining (`overshooting`).
    overshoot_until: Option<Instant>,
    /// A burst above the stream and what was set before it (`burst`).
    burst: Option<Burst>,
    /// When a deep queue last took a whole layer to its reduced step (`relieved`).
    relieved_at: Option<Instant>,
    /// The least whole-layer rate a relief refused since a probe last found it (`refused`).
    refused: Option<f64>,
}

/// A burst above the stream: until when it wants `desired`, and the (minimum, desired) set
/// before it, given back when it ends.
#[derive(Debug, Clone, Copy)]
struct Burst {
    until: Instant,
    desired: f64,
    before: Option<(f64, f64)>,
}

/// The wait before the next probe after `failures` failed ones: 5 s, doubling to a minute.
fn backoff(failures: u32) -> Duration {
    PROBE_BACKOFF.saturating_mul(1 << failures.saturating_sub(1).min(4)).min(PROBE_BACKOFF_MAX)
}

/// How long after a probe failed a queue is still its overshoot draining (`overshooting`): the
/// link's queue (up to ~300 ms) and a feedback's round trip.
const OVERSHOOT_DRAIN: Duration = Duration::from_secs(1);
/// A standing queue this soon after a probe found its room says the room was not there.
const DISPROVE_WITHIN: Duration = Duration::from_secs(15);
/// Under this share of a probe's goal, what a queueing link carries says the link changed
/// since the probe, not that the probe was wrong (`Prober::disprove`).
const LINK_CHANGED: f64 = 0.5;

impl Prober {
    /// What to give the viewer's estimator now, if it changed: `(minimum, desired)` in bit/s
    /// (str0m's `set_bitrate`: padding sustains the minimum, capped by the estimate; a rising
    /// desired rate is probed for). `queueing`: the viewer's link queues now (its RTT well
    /// above the lowest seen).
    #[cfg(test)]
    pub fn step(&mut self, plan: &Plan, estimate_bps: Option<f64>, queueing: bool, now: Instant) -> Option<(f64, f64)> {
        self.step_with_raw(plan, estimate_bps, None, queueing, None, now)
    }

    /// `step`, where str0m's raw estimate as of now (`raw_bps`) also tells a probe that found
    /// its room: the averaged estimate follows it seconds later (measured after a rate step
    /// back up: raw 1.37 Mbit/s while the average still read 340 kbit/s, the probe failed on
    /// the average and the back-off held the viewer on its lowest layer for 10 s more).
    /// `queue_delay`: how long the latest acknowledged packet queued (`LinkSigns::queued`).
    pub fn step_with_raw(
        &mut self,
        plan: &Plan,
        estimate_bps: Option<f64>,
        raw_bps: Option<f64>,
        queueing: bool,
        queue_delay: Option<Duration>,
        now: Instant,
    ) -> Option<(f64, f64)> {
        let estimate = estimate_bps?;
        // A burst that ended gives back what was set before it, said again.
        let burst_ended = self.burst.is_some_and(|b| now >= b.until);
        if burst_ended {
            self.set = self.burst.take().and_then(|b| b.before);
        }
        if let Some((goal, _, _)) = self.found.filter(|(_, at, _)| now.saturating_duration_since(*at) >= DISPROVE_WITHIN) {
            self.found = None;
            if self.disproved.is_some_and(|d| goal >= d * 0.9) {
                self.disproved = None;
                self.failures = 0;
            }
        }
        let settled = now.duration_since(self.start.get_or_insert((now, estimate)).0) >= PROBE_SETTLE;
        // The raw value counts once it rose during the probe: one stale from before it (left
        // high by a link that thinned while little was sent) proves nothing.
        let found = match (self.probe, raw_bps) {
            (Some(p), Some(r)) if !queueing && p.raw_from.is_some_and(|f| r > f * 1.05) => r.max(estimate),
            _ => estimate,
        };
        // A link that does not queue under the probe's padding is clean (`RESUME_NEAR`).
        let clean = !queueing && queue_delay.is_none_or(|d| d < PROBE_OVERUSE_DELAY);
        if let Some(p) = self.probe.as_mut() {
            p.dirty |= !clean;
        }
        // A rate the link refused is found only by a probe it carried clean for a while.
        let refused = |p: &Probe| self.refuses(p.goal);
        let found_clean = |p: &Probe| !p.dirty && now.duration_since(p.since) >= REFUSED_CLEAN_FOR;
        let want = match self.probe {
            Some(p) if (found >= p.goal && (!refused(&p) || found_clean(&p))) || (p.resumes && clean && found >= p.goal * RESUME_NEAR) => {
                if refused(&p) {
                    self.refused = None;
                }
                self.proven = Some((p.goal, now + PROBE_WINDOW));
                self.found = Some((p.goal, now, p.from));
                self.overshoot_until = Some(now + OVERSHOOT_DRAIN);
                // Found the room: the plan takes the layer, media replaces the padding.
                self.probe = None;
                if self.failed_goal.is_none_or(|g| p.goal >= g * 0.9) && self.disproved.is_none_or(|d| p.goal < d * 0.9) {
                    self.failures = 0;
                    self.failed_goal = None;
                }
                let after = now + PROBE_AFTER_SUCCESS;
                self.next_at = Some(self.next_at.map_or(after, |t| t.max(after)));
                (0.0, p.goal)
            }
            // A link that queues ends it; its estimate falling ends it only with the link's
            // queue delay rising too. str0m's delay detector sees a nearly full link's queue
            // grow before the RTT is 50 ms over, but a cluster it measured wrong lowers the
            // estimate on a link with room and no queue (harness, rate step: 141 kbit/s read on
            // 3 Mbit/s; failed then, the doubled back-off held the viewer on its lowest layer
            // 11 s after the link came back).
            Some(p) if queueing || (estimate < p.from * PROBE_OVERUSE && queue_delay.is_some_and(|d| d >= PROBE_OVERUSE_DELAY)) => self.fail(plan, now),
            Some(p) if now.duration_since(p.since) >= PROBE_WINDOW => {
                // By the raw value once it rose during the probe: the average trails it by
                // seconds (harness, rate step: str0m's probes took 3 s to start climbing, the
                // raw value read 695 kbit/s at the window's end, the average 195, and the
                // failure's doubled back-off held the viewer on its lowest layer 10 s more).
                if found >= p.from * 1.1 {
                    // Still climbing (the estimator grows by steps): another window.
                    self.probe = Some(Probe { since: now, from: estimate, dirty: false, ..p });
                    (p.goal, p.goal * PROBE_HEADROOM)
                } else {
                    self.fail(plan, now)
                }
            }
            Some(p) => (p.goal, p.goal * PROBE_HEADROOM),
            None => match plan.next_bps {
                // Only with the plan within the estimate: a viewer over it (a layer kept by
                // hysteresis) has no room to look for more. Within the budget, that is: a
                // refused rate is probed for though the estimate reads over it.
                Some(goal) if settled && !queueing && goal > self.budget(estimate) && plan.used_bps <= estimate && self.next_at.is_none_or(|t| now >= t) => {
                    self.probe = Some(Probe { goal, since: now, from: estimate, raw_from: raw_bps, resumes: plan.next_resumes, dirty: false });
                    (goal, goal * PROBE_HEADROOM)
                }
                _ => (0.0, self.set.map_or(plan.used_bps, |s| s.1)),
            },
        };
        let want = match self.burst {
            Some(b) => (want.0, want.1.max(b.desired)),
            None => want,
        };
        (self.set != Some(want) || burst_ended).then(|| {
            self.set = Some(want);
            want
        })
    }

    /// A burst above the stream (a GOP replayed to a viewer that joins an ingest) wants
    /// `desired` until `until`: the (minimum, desired) to give the estimator now, which looks
    /// for it; the usual goal comes back after.
    pub fn burst(&mut self, desired: f64, until: Instant) -> (f64, f64) {
        let before = self.burst.map_or(self.set, |b| b.before);
        self.burst = Some(Burst { until, desired, before });
        let want = self.set.map_or((0.0, desired), |(min, d)| (min, d.max(desired)));
        self.set = Some(want);
        want
    }

    fn fail(&mut self, plan: &Plan, now: Instant) -> (f64, f64) {
        if let Some(p) = self.probe {
            // Nor does the room an earlier probe found stand: a link that refuses this goal
            // refuses one as big (600 kbit/s link: 623 kbit/s found on a raw estimate's
            // overshoot, a probe for 625 queued to 113 ms a second later, and the floor the first
            // left took the whole middle layer after the failure; its queue was cut at 680 ms).
            if self.proven.is_some_and(|(goal, _)| goal >= p.goal * 0.95) {
                self.proven = None;
            }
            self.overshoot_until = Some(now + OVERSHOOT_DRAIN);
            self.failed_from = Some((p.from, now + PROBE_WINDOW));
            self.failed_goal = Some(p.goal);
        }
        // Only a big step (its goal over 1.5 × the estimate it started from) backs off more
        // with each failure: a small one costs little overshoot, and on a link that thinned for
        // a while its back-off would otherwise have grown by the time the link came back
        // (measured: a rate step's climb back took 10-12 s instead of 5).
        // A step is measured from what the link last carried when it thinned, if more than
        // the estimate: on the lowest layer after a rate step down str0m's estimate followed
        // what was sent (190-270 kbit/s on a 400 kbit/s link that carried 360), the probe for
        // the middle layer's base counted as big, and its back-off, doubled to 10 s, held the
        // viewer on the lowest layer for 10-13 s after the link came back (5 s otherwise).
        // Nor does a failed probe to resume one paused encoding: on the thin link it fails
        // every time, and the back-off it had grown to 10 s held the video paused 8-10 s after
        // the link came back (Chromium). A resume taken on it that the link then does not carry
        // still backs off more (`disprove`).
        // A rate the link refused backs off as a big step: each probe for it queues the link.
        let big = self.probe.is_none_or(|p| !p.resumes && (p.goal > p.from.max(self.carried.unwrap_or(0.0)) * SMALL_STEP || self.refuses(p.goal)));
        let resumes = self.probe.is_some_and(|p| p.resumes);
        self.probe = None;
        self.failures += big as u32;
        // A paused track looks again sooner (`RESUME_RETRY`), unless a resume the link did not
        // carry (`disprove`) has backed it off.
        let wait = if resumes && self.failures == 0 { RESUME_RETRY } else { backoff(self.failures) };
        self.next_at = Some(now + wait);
        (0.0, plan.used_bps)
    }

    /// The link holds a standing queue (`NetStats::standing`), or a deep one that takes a layer
    /// down to itself without its top temporal layer: if a probe found its room
    /// within `DISPROVE_WITHIN`, it counts as failed after all, with its back-off. A link
    /// nearly full can let the estimate reach a goal it does not carry (a 600 kbit/s link and
    /// Chrome's middle layer with audio: found at 553 kbit/s, the queue then grew ~7 % a
    /// second): taken again a second after each move down, the layer kept the queue full.
    /// Whether it did. Not where the link now carries (`carried_bps`, measured as it queues)
    /// far less than the goal found: the link changed (a rate step down to a fifth of the top
    /// layer's room counted as a failure, and the back-off it added held the viewer on its
    /// lowest layer for 10-20 s after the link came back).
    pub fn disprove(&mut self, carried_bps: Option<f64>, now: Instant) -> bool {
        let Some((goal, _, from)) = self.found.filter(|(_, at, _)| now.saturating_duration_since(*at) < DISPROVE_WITHIN) else { return false };
        self.found = None;
        self.proven = None;
        if carried_bps.is_some_and(|c| c < goal * LINK_CHANGED) {
            return false;
        }
        self.disproved = Some(goal);
        // As a failed probe: the estimate from before it stands a while (`held`).
        self.failed_from = Some((from, now + PROBE_WINDOW));
        self.count_failure(now);
        true
    }

    /// One more failure found after the fact (`disprove`, `relieved`): the next probe waits
    /// its doubled back-off, and no less than it already waited for.
    fn count_failure(&mut self, now: Instant) {
        self.failures += 1;
        let wait = backoff(self.failures);
        self.next_at = Some(self.next_at.map_or(now + wait, |t| t.max(now + wait)));
    }

    /// A deep queue took a whole layer (`whole_bps`) to its reduced step, and no probe had just
    /// found its room (`disprove`): the layer was taken on an estimate that read over the link
    /// (600 kbit/s link, H.264's middle layer with audio needs ~607 kbit/s: taken whole on 623,
    /// the queue was deep 3 s later). That counts as a failed probe for that rate, with its
    /// back-off: before, a probe 1.2 s after found it again on the raw estimate's overshoot and
    /// the queue was deep again 3.5 s later (Chromium's median RTT over its 90 ms bound in 2-4 of
    /// 10 runs). Not where the link now carries (`carried_bps`) far less than the layer: it
    /// changed. Once per deep queue (`OVERSHOOT_DRAIN` apart). Whether it counted.
    pub fn relieved(&mut self, whole_bps: f64, carried_bps: Option<f64>, now: Instant) -> bool {
        let short = carried_bps.is_some_and(|c| (whole_bps * LINK_CHANGED..whole_bps).contains(&c));
        if !short || self.relieved_at.is_some_and(|t| now.saturating_duration_since(t) < OVERSHOOT_DRAIN) {
            return false;
        }
        self.relieved_at = Some(now);
        self.failed_goal = Some(self.failed_goal.map_or(whole_bps, |g| g.min(whole_bps)));
        self.refuse(whole_bps);
        self.count_failure(now);
        true
    }

    fn refuse(&mut self, bps: f64) {
        self.refused = Some(self.refused.map_or(bps, |r| r.min(bps)));
    }

    /// Whether a probe for `goal` looks for a rate the link refused (or near it).
    fn refuses(&self, goal: f64) -> bool {
        self.refused.is_some_and(|r| goal >= r * 0.9)
    }

    /// The budget from `estimate`: under a rate the link refused (`REFUSED_BUDGET`).
    pub fn budget(&self, estimate: f64) -> f64 {
        self.refused.map_or(estimate, |r| estimate.min(r * REFUSED_BUDGET))
    }

    /// What the budget does not fall below in a viewer's first `PROBE_SETTLE`: the start
    /// estimate. str0m's estimate first follows what has been acknowledged, the first frames
    /// rather than the link (measured on a 700 kbit/s link that carries the middle layer: from
    /// 800 to 390-460 kbit/s within 0.6 s, then back up; whether the middle layer survived the
    /// dip was luck, and a viewer moved down waited 5-10 s for a probe to bring it back). The
    /// caller drops the floor as soon as the link queues: a thin link shows in the RTT.
    pub fn start_floor(&self, now: Instant) -> Option<f64> {
        self.start.filter(|(at, _)| now.duration_since(*at) < PROBE_SETTLE).map(|(_, e)| e)
    }

    /// Whether the viewer's estimate is still its start (no allocation had one yet, or within
    /// `PROBE_SETTLE` of the first that did).
    pub fn starting(&self, now: Instant) -> bool {
        self.start.is_none_or(|(at, _)| now.duration_since(at) < PROBE_SETTLE)
    }

    /// What a probe just proved the link carries (its goal), for `PROBE_WINDOW` after.
    pub fn proven(&self, now: Instant) -> Option<f64> {
        self.proven.filter(|(_, until)| now < *until).map(|(goal, _)| goal)
    }

    /// The link queued: the room the last probe found no longer stands in for the estimate.
    pub fn forget_proven(&mut self) {
        self.proven = None;
    }

    /// The link thinned to carry `carried_bps`: the room the last probe found is gone.
    pub fn thinned(&mut self, carried_bps: f64) {
        self.proven = None;
        self.carried = Some(carried_bps);
    }

    pub fn probing(&self) -> bool {
        self.probe.is_some()
    }

    /// Whether a queue on the link now is this viewer's own probe's: a probe runs, or one ended
    /// within `OVERSHOOT_DRAIN` (its padding stopped; what it queued is still draining). Ended
    /// found too: a probe can read room the link does not have (600 kbit/s link, the middle
    /// layer's 625 kbit/s found on str0m's raw estimate), and its queue read as the link
    /// thinning capped the estimate under the middle layer's reference pictures for 20 s.
    pub fn overshooting(&self, now: Instant) -> bool {
        self.probing() || self.overshoot_until.is_some_and(|until| now < until)
    }

    /// The estimate from before the probe under way (or one failed moments ago).
    pub fn held(&self, now: Instant) -> Option<f64> {
        match (self.probe, self.failed_from) {
            (Some(p), _) => Some(p.from),
            (None, Some((from, until))) if now < until => Some(from),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers() -> Vec<LayerRate> {
        vec![LayerRate::whole(Some("l".into()), 150_000.0), LayerRate::whole(Some("h".into()), 1_500_000.0), LayerRate::whole(Some("m".into()), 500_000.0)]
    }

    fn track(priority: Priority) -> TrackDemand {
        TrackDemand { layers: layers().into(), quality: Quality::Auto, priority, current: None, ceiling_bps: None, single_may_pause: false }
    }

    fn rid(c: LayerChoice) -> String {
        match c {
            LayerChoice::Layer(r) => r.map(|r| r.to_string()).unwrap_or_default(),
            LayerChoice::Temporal(r, t) => format!("{}/T{t}", r.map(|r| r.to_string()).unwrap_or_default()),
            LayerChoice::Paused => "paused".into(),
        }
    }

    fn one(estimate: Option<f64>) -> String {
        rid(plan(&[track(Priority::Other)], 40_000.0, estimate).choices[0])
    }

    #[test]
    fn auto_takes_the_highest_layer_that_fits_and_pauses_below_the_lowest() {
        assert_eq!(one(None), "h", "no estimate yet: the top");
        assert_eq!(one(Some(2_000_000.0)), "h");
        assert_eq!(one(Some(1_580_000.0)), "m", "headers and audio count");
        assert_eq!(one(Some(600_000.0)), "m", "a 600 kbit/s link carries the middle layer");
        assert_eq!(one(Some(300_000.0)), "l");
        assert_eq!(one(Some(150_000.0)), "paused");
    }

    #[test]
    fn a_layer_being_sent_is_kept_until_the_estimate_is_well_below_it() {
        let mut t = track(Priority::Other);
        t.current = Some(LayerChoice::Layer(Some("m".into())));
        assert_eq!(rid(plan(&[t.clone()], 40_000.0, Some(540_000.0)).choices[0]), "m", "75 % of its rate is enough to keep it");
        assert_eq!(rid(plan(&[t.clone()], 40_000.0, Some(460_000.0)).choices[0]), "m");
        assert_eq!(rid(plan(&[t], 40_000.0, Some(400_000.0)).choices[0]), "l");
        assert_eq!(one(Some(540_000.0)), "l", "but not to take it");
    }

    #[test]
    fn a_pinned_quality_ignores_the_estimate() {
        for (q, want) in [(Quality::High, "h"), (Quality::Medium, "m"), (Quality::Low, "l")] {
            let t = TrackDemand { quality: q, ..track(Priority::Other) };
            assert_eq!(rid(plan(std::slice::from_ref(&t), 0.0, Some(100.0)).choices[0]), want);
            assert_eq!(rid(plan(&[t], 0.0, Some(1e9)).choices[0]), want);
        }
    }

    #[test]
    fn a_layer_without_its_top_temporal_layer_is_a_step_below_it() {
        // Chrome's VP8 simulcast: each layer also without TL2 (half the frames, ~60 % of the rate).
        let mut l = layers();
        l.extend([("l", 90_000.0), ("m", 300_000.0), ("h", 900_000.0)].map(|(r, bps)| LayerRate { rid: Some(r.into()), bps, temporal: Some(1) }));
        let t = TrackDemand { layers: l.clone().into(), ..track(Priority::Other) };
        let one = |e: f64| rid(plan(std::slice::from_ref(&t), 40_000.0, Some(e)).choices[0]);
        // A 600 kbit/s link with audio: the middle layer at half its frame rate, not the lowest.
        assert_eq!(one(540_000.0), "m/T1");
        assert_eq!(one(600_000.0), "m");
        assert_eq!(one(1_000_000.0), "h/T1");
        assert_eq!(one(200_000.0), "l");
        assert_eq!(one(140_000.0), "l/T1");
        // A pinned quality takes whole layers; shedding counts whole layers.
        let pinned = |q| rid(plan(&[TrackDemand { quality: q, ..t.clone() }], 0.0, Some(100_000.0)).choices[0]);
        assert_eq!([pinned(Quality::Low), pinned(Quality::Medium), pinned(Quality::High)], ["l", "m", "h"]);
        let mut shed = Shed::default();
        shed.update(1000, Instant::now());
        assert_eq!(shed.ceiling(&l), Some(1_500_000.0), "h/T1 stays allowed under a shed top layer");
        // The ceiling above the layer sent is the next step up: m/T1 -> m.
        assert_eq!(up_ceiling(Some(LayerChoice::Temporal(Some("m".into()), 1)), &l), Some(500_000.0));
        // A deep queue's ceiling takes the whole middle layer to its reduced step; nothing to
        // take from a reduced step, nor from a layer without temporal layers.
        assert_eq!(relief_ceiling(Some(LayerChoice::Layer(Some("m".into()))), &l), Some(500_000.0));
        assert_eq!(relief_ceiling(Some(LayerChoice::Temporal(Some("m".into()), 1)), &l), None);
        assert_eq!(relief_ceiling(Some(LayerChoice::Layer(Some("m".into()))), &layers()), None);
        // A cut of the whole middle layer leaves its reduced step; a cut of that step, or of a
        // layer without temporal layers, takes the track below the layer.
        let cut = |whole: bool, l: &[LayerRate]| {
            let t = TrackDemand { layers: Layers::from_slice(l), ceiling_bps: cut_ceiling("m".into(), whole, l), ..track(Priority::Other) };
            rid(plan(std::slice::from_ref(&t), 40_000.0, Some(1_000_000.0)).choices[0])
        };
        assert_eq!(cut(true, &l), "m/T1");
        assert_eq!(cut(false, &l), "l");
        assert_eq!(cut(true, &layers()), "l");
        // Four tracks whose lowest layers fit whole: each gets its lowest layer whole, none
        // starts from its reduced step.
        let others: Vec<TrackDemand> = (0..3).map(|_| TrackDemand { layers: l.clone().into(), ..track(Priority::Other) }).collect();
        let mut four = vec![TrackDemand { layers: l.clone().into(), ..track(Priority::Speaker) }];
        four.extend(others);
        let choices: Vec<String> = plan(&four, 0.0, Some(700_000.0)).choices.into_iter().map(rid).collect();
        assert_eq!(choices, ["l", "l", "l", "l"]);
        // Where they do not, the reduced step before a pause.
        let choices: Vec<String> = plan(&four, 0.0, Some(570_000.0)).choices.into_iter().map(rid).collect();
        assert_eq!(choices, ["l", "l", "l", "l/T1"]);
        // From the lowest layer, the next layer up needs a margin (a keyframe, and a freeze if
        // the link does not carry it): m/T1 with audio needs 352 kbit/s, taken on 400 only with
        // the margin's 386.
        let from_low = |e: f64| rid(plan(&[TrackDemand { current: Some(LayerChoice::Layer(Some("l".into()))), ..t.clone() }], 40_000.0, Some(e)).choices[0]);
        assert_eq!(from_low(370_000.0), "l", "on the lowest layer: not without the margin");
        assert_eq!(from_low(400_000.0), "m/T1");
        assert_eq!(one(370_000.0), "m/T1", "with nothing sent yet: no margin");
        // One encoding with temporal layers is taken whole (nothing to fall back to).
        let single = TrackDemand { layers: vec![LayerRate::whole(None, 800_000.0), LayerRate { rid: None, bps: 480_000.0, temporal: Some(1) }].into(), ..track(Priority::Other) };
        assert_eq!(plan(&[single], 0.0, Some(100_000.0)).choices.to_vec(), [LayerChoice::Layer(None)]);
    }

    #[test]
    fn one_layer_is_taken_unless_the_link_was_measured_not_to_carry_it() {
        let one = TrackDemand { layers: vec![LayerRate::whole(None, 3_000_000.0)].into(), ..track(Priority::Other) };
        let p = plan(std::slice::from_ref(&one), 0.0, Some(100_000.0));
        assert_eq!(p.choices.to_vec(), vec![LayerChoice::Layer(None)], "no simulcast: nothing to fall back to");
        // A link measured to have thinned under it (or the track paused): paused, and the
        // next step (what a probe looks for) is the encoding.
        let thin = TrackDemand { single_may_pause: true, ..one.clone() };
        let p = plan(std::slice::from_ref(&thin), 40_000.0, Some(100_000.0));
        assert_eq!(p.choices.to_vec(), vec![LayerChoice::Paused]);
        assert!(p.next_bps.is_some_and(|b| b > 3_000_000.0), "{p:?}");
        assert_eq!(plan(&[thin], 40_000.0, Some(3_500_000.0)).choices.to_vec(), vec![LayerChoice::Layer(None)], "taken again where it fits");
        let none = TrackDemand { layers: vec![].into(), ..track(Priority::Other) };
        assert_eq!(plan(&[none], 0.0, None).choices.to_vec(), vec![LayerChoice::Layer(None)]);
    }

    #[test]
    fn a_whole_layer_relieved_on_a_link_short_of_it_backs_the_next_probe_off() {
        let t0 = Instant::now();
        let s = |ms: u64| t0 + PROBE_SETTLE + Duration::from_millis(ms);
        let tracks = [track(Priority::Other)];
        let mid = plan(&tracks, 40_000.0, Some(620_000.0));
        assert!(mid.next_bps.is_some());
        let whole = 610_000.0;
        // Relieved where the link carried 540 kbit/s of the layer's 610: no probe for 5 s,
        // then for 10 s after a second relief (once per deep queue: the same one a moment later
        // does not count again).
        let mut p = Prober::default();
        p.step(&mid, Some(620_000.0), false, t0);
        assert!(p.relieved(whole, Some(540_000.0), s(0)));
        assert!(!p.relieved(whole, Some(540_000.0), s(300)), "the same deep queue");
        assert_eq!(p.step(&mid, Some(620_000.0), false, s(4_900)), None);
        assert!(p.step(&mid, Some(620_000.0), false, s(5_000)).is_some());
        let mut p = Prober::default();
        p.step(&mid, Some(620_000.0), false, t0);
        assert!(p.relieved(whole, Some(540_000.0), s(0)));
        assert!(p.relieved(whole, Some(540_000.0), s(2_000)));
        assert_eq!(p.step(&mid, Some(620_000.0), false, s(11_900)), None);
        assert!(p.step(&mid, Some(620_000.0), false, s(12_000)).is_some());
        // Not where the link carried the layer (the queue was others' or a keyframe's), nor
        // where it carried under half of it (it changed), nor unmeasured.
        for carried in [Some(650_000.0), Some(250_000.0), None] {
            let mut p = Prober::default();
            p.step(&mid, Some(620_000.0), false, t0);
            assert!(!p.relieved(whole, carried, s(0)), "{carried:?}");
            assert!(p.step(&mid, Some(620_000.0), false, s(0)).is_some(), "{carried:?}");
        }
    }

    #[test]
    fn a_layer_reading_under_a_lower_one_is_not_trusted() {
        let siblings = [(0, 30_000.0), (1, 0.0), (2, 150_000.0)];
        assert!(reads_under_a_lower_layer(0, 30_000.0, siblings), "the top layer under the lowest");
        assert!(!reads_under_a_lower_layer(2, 150_000.0, siblings), "the lowest has none below it");
        assert!(!reads_under_a_lower_layer(1, 500_000.0, [(0, 1_500_000.0), (1, 500_000.0), (2, 150_000.0)]));
        assert!(!reads_under_a_lower_layer(0, 0.0, [(0, 0.0), (1, 0.0), (2, 0.0)]), "none measured yet: all alike");
        assert!(!reads_under_a_lower_layer(4, 100.0, [(4, 900.0)]), "unnamed layers are not compared");
    }

    #[test]
    fn a_rate_the_link_refused_is_taken_again_only_once_a_probe_carried_it_clean() {
        let t0 = Instant::now();
        let s = |ms: u64| t0 + PROBE_SETTLE + Duration::from_millis(ms);
        // On the middle layer's reduced step; the whole layer's goal (630 kbit/s) reads under
        // str0m's estimate (680), as on a 600 kbit/s link.
        let reduced = Plan { choices: Default::default(), used_bps: 450_000.0, next_bps: Some(630_000.0), next_resumes: false };
        let clean = Some(Duration::from_millis(5));
        let queued = Some(Duration::from_millis(30));
        let refused = || {
            let mut p = Prober::default();
            p.step(&reduced, Some(680_000.0), false, t0);
            assert_eq!(p.budget(680_000.0), 680_000.0);
            assert!(p.relieved(600_000.0, Some(540_000.0), s(0)));
            assert_eq!(p.budget(680_000.0), 600_000.0 * REFUSED_BUDGET, "the budget stays under the refused rate");
            assert_eq!(p.budget(400_000.0), 400_000.0);
            assert_eq!(p.step_with_raw(&reduced, Some(680_000.0), None, false, clean, s(4_900)), None, "backed off");
            // Probed for after the back-off though the estimate reads over the goal.
            assert_eq!(p.step_with_raw(&reduced, Some(680_000.0), None, false, clean, s(5_000)), Some((630_000.0, 630_000.0 * PROBE_HEADROOM)));
            p
        };
        // Carried clean for 1.5 s: found, and the budget is the estimate again.
        let mut p = refused();
        assert_eq!(p.step_with_raw(&reduced, Some(680_000.0), None, false, clean, s(6_000)), None, "not yet: clean for 1 s");
        assert_eq!(p.step_with_raw(&reduced, Some(680_000.0), None, false, clean, s(6_500)), Some((0.0, 630_000.0)));
        assert_eq!(p.budget(680_000.0), 680_000.0);
        // The link queued under it once: not found on the estimate; failed at the window's end,
        // with a doubled back-off (each probe for it queues the link).
        let mut p = refused();
        assert_eq!(p.step_with_raw(&reduced, Some(680_000.0), None, false, queued, s(5_500)), None);
        assert_eq!(p.step_with_raw(&reduced, Some(680_000.0), None, false, clean, s(7_000)), None, "dirty: not found");
        assert!(p.step_with_raw(&reduced, Some(680_000.0), None, false, clean, s(8_000)).is_some_and(|(min, _)| min == 0.0), "failed");
        assert_eq!(p.budget(680_000.0), 600_000.0 * REFUSED_BUDGET);
        assert_eq!(p.step_with_raw(&reduced, Some(680_000.0), None, false, clean, s(17_900)), None, "10 s back-off");
        assert!(p.step_with_raw(&reduced, Some(680_000.0), None, false, clean, s(18_000)).is_some_and(|(min, _)| min == 630_000.0));
    }

    /// One 2.4 Mbit/s encoding paused on a 100 kbit/s estimate.
    fn one_encoding_paused() -> Plan {
        let thin = TrackDemand { layers: vec![LayerRate::whole(None, 2_400_000.0)].into(), single_may_pause: true, ..track(Priority::Other) };
        plan(std::slice::from_ref(&thin), 40_000.0, Some(100_000.0))
    }

    #[test]
    fn a_paused_encoding_looks_for_room_again_two_seconds_after_a_failed_probe_until_a_resume_is_disproved() {
        let t0 = Instant::now();
        let s = |ms: u64| t0 + PROBE_SETTLE + Duration::from_millis(ms);
        let paused = one_encoding_paused();
        let mut p = Prober::default();
        p.step(&paused, Some(100_000.0), false, t0);
        let probing = |p: &mut Prober, at: Instant| p.step(&paused, Some(100_000.0), false, at).is_some_and(|(min, _)| min > 0.0);
        // On the thin link each probe fails at its window's end; the next starts 2 s later,
        // every time (not 5 s, not doubling).
        let mut at = 0;
        for _ in 0..3 {
            assert!(probing(&mut p, s(at)), "a probe at {at} ms");
            assert!(!probing(&mut p, s(at) + PROBE_WINDOW), "failed at its window's end");
            assert!(!probing(&mut p, s(at) + PROBE_WINDOW + RESUME_RETRY - Duration::from_millis(100)));
            at += (PROBE_WINDOW + RESUME_RETRY).as_millis() as u64;
        }
        // A resume the link did not carry backs the next off as any failed probe.
        let mut p = Prober::default();
        p.step(&paused, Some(100_000.0), false, t0);
        assert!(probing(&mut p, s(0)));
        let goal = paused.next_bps.unwrap();
        assert_eq!(p.step_with_raw(&paused, Some(goal), None, false, None, s(500)), Some((0.0, goal)));
        assert!(p.disprove(Some(goal), s(1500)));
        assert!(!probing(&mut p, s(1500) + RESUME_RETRY + Duration::from_millis(100)));
        assert!(probing(&mut p, s(1500) + PROBE_BACKOFF));
    }

    #[test]
    fn a_probe_to_resume_one_paused_encoding_finds_its_room_near_its_goal_on_a_link_that_does_not_queue() {
        let t0 = Instant::now();
        let s = |ms: u64| t0 + PROBE_SETTLE + Duration::from_millis(ms);
        let paused = one_encoding_paused();
        assert!(paused.next_resumes);
        let goal = paused.next_bps.unwrap();
        let near = goal * 0.7;
        let started = |p: &mut Prober, plan: &Plan| {
            p.step(plan, Some(100_000.0), false, t0);
            assert!(p.step(plan, Some(100_000.0), false, s(0)).is_some());
        };
        // str0m's estimate stops short of the goal where it sends nothing but padding (small
        // packets): near it, on a link that does not queue, the room is there.
        let mut p = Prober::default();
        started(&mut p, &paused);
        assert_eq!(p.step_with_raw(&paused, Some(near), None, false, Some(Duration::from_millis(5)), s(800)), Some((0.0, goal)));
        assert_eq!(p.proven(s(800)), Some(goal));
        // Not while the link queues, nor with the latest packet's queue delay rising.
        let mut p = Prober::default();
        started(&mut p, &paused);
        p.step_with_raw(&paused, Some(near), None, true, None, s(800));
        assert_eq!(p.proven(s(800)), None);
        let mut p = Prober::default();
        started(&mut p, &paused);
        p.step_with_raw(&paused, Some(near), None, false, Some(PROBE_OVERUSE_DELAY), s(800));
        assert_eq!(p.proven(s(800)), None);
        // A step up from a layer already sent needs its whole goal (a nearly full link would
        // take a layer it does not carry), and so does a paused simulcast track's lowest layer.
        assert!(!plan(&[track(Priority::Other)], 40_000.0, Some(100_000.0)).next_resumes);
        let low = plan(&[track(Priority::Other)], 40_000.0, Some(300_000.0));
        assert!(!low.next_resumes);
        let mut p = Prober::default();
        p.step(&low, Some(300_000.0), false, t0);
        assert!(p.step(&low, Some(300_000.0), false, s(0)).is_some());
        p.step_with_raw(&low, Some(low.next_bps.unwrap() * 0.9), None, false, None, s(800));
        assert!(p.probing() && p.proven(s(800)).is_none());
    }

    #[test]
    fn the_estimate_goes_to_everyones_lowest_layer_first_then_by_priority() {
        // Four publishers on a 1.2 Mbit/s link: the speaker gets the middle layer, the others
        // the lowest; nobody starves.
        let tracks = [track(Priority::Other), track(Priority::Speaker), track(Priority::Other), track(Priority::Other)];
        let p = plan(&tracks, 4.0 * 40_000.0, Some(1_200_000.0));
        let got: Vec<String> = p.choices.iter().map(|c| rid(*c)).collect();
        assert_eq!(got, ["l", "m", "l", "l"], "{p:?}");
        assert!(p.used_bps <= 1_200_000.0);
        // The next step is the speaker's top layer.
        assert!((p.next_bps.unwrap() - (p.used_bps + (1_500_000.0 - 500_000.0) * OVERHEAD)).abs() < 1.0, "{p:?}");
        // With room for another's middle layer beside the speaker's (but not for the speaker's
        // top), the others stay under the speaker's layer.
        let p = plan(&tracks, 4.0 * 40_000.0, Some(1_600_000.0));
        assert_eq!(p.choices.iter().map(|c| rid(*c)).collect::<Vec<_>>(), ["l", "m", "l", "l"], "{p:?}");
        // Among equals, the one already on the middle layer keeps it.
        let held = TrackDemand { current: Some(LayerChoice::Layer(Some("m".into()))), ..track(Priority::Other) };
        let p = plan(&[track(Priority::Other), held], 0.0, Some(800_000.0));
        assert_eq!(p.choices.iter().map(|c| rid(*c)).collect::<Vec<_>>(), ["l", "m"], "{p:?}");
        // Short of the speaker's middle layer, nobody else gets one.
        let p = plan(&tracks, 4.0 * 40_000.0, Some(1_000_000.0));
        let got: Vec<String> = p.choices.iter().map(|c| rid(*c)).collect();
        assert_eq!(got, ["l", "l", "l", "l"], "{p:?}");
        let mut costly = tracks.clone();
        costly[1].layers[2].bps = 600_000.0; // its "m"
        let got: Vec<String> = plan(&costly, 4.0 * 40_000.0, Some(1_150_000.0)).choices.iter().map(|c| rid(*c)).collect();
        assert_eq!(got, ["l", "l", "l", "l"], "another's cheaper middle layer would fit; it waits for the speaker's");
        // The speaker's middle layer was just cut (the link did not carry it): nobody else's
        // is tried meanwhile, and no probe looks for it.
        let mut cut = tracks.clone();
        cut[1].ceiling_bps = Some(500_000.0);
        let p = plan(&cut, 4.0 * 40_000.0, Some(1_200_000.0));
        assert_eq!(p.choices.iter().map(|c| rid(*c)).collect::<Vec<_>>(), ["l", "l", "l", "l"], "{p:?}");
        assert_eq!(p.next_bps, None);
        // A screen share outranks the speaker.
        let tracks = [track(Priority::Speaker), track(Priority::ScreenShare)];
        let got: Vec<String> = plan(&tracks, 0.0, Some(2_000_000.0)).choices.iter().map(|c| rid(*c)).collect();
        assert_eq!(got, ["l", "h"]);
        // Too little for everyone's lowest layer: the lowest priorities pause.
        let tracks = [track(Priority::Other), track(Priority::ScreenShare)];
        let got: Vec<String> = plan(&tracks, 0.0, Some(250_000.0)).choices.iter().map(|c| rid(*c)).collect();
        assert_eq!(got, ["paused", "l"]);
    }

    #[test]
    fn before_an_estimate_only_the_first_in_priority_takes_its_top_layer() {
        let tracks = [track(Priority::Other), track(Priority::Speaker), track(Priority::Other), track(Priority::Other)];
        let got: Vec<String> = plan(&tracks, 4.0 * 40_000.0, None).choices.iter().map(|c| rid(*c)).collect();
        assert_eq!(got, ["l", "h", "l", "l"]);
        let pinned = TrackDemand { quality: Quality::Medium, ..track(Priority::Other) };
        let got: Vec<String> = plan(&[pinned, track(Priority::Other)], 0.0, None).choices.iter().map(|c| rid(*c)).collect();
        assert_eq!(got, ["m", "h"], "a pinned quality is its own");
        // Before the publishers' first media their layers' rates read 0: the bet stands.
        let unmeasured = |priority| TrackDemand { layers: layers().iter().map(|l| LayerRate { bps: 0.0, ..*l }).collect(), ..track(priority) };
        let tracks = [unmeasured(Priority::Other), unmeasured(Priority::Speaker), unmeasured(Priority::Other), unmeasured(Priority::Other)];
        let got: Vec<String> = plan(&tracks, 0.0, None).choices.iter().map(|c| rid(*c)).collect();
        assert_eq!(got, ["l", "h", "l", "l"], "not every track's top layer");
    }

    /// A saturated worker sheds one layer per saturated second once the last step settled, at
    /// most two; it lifts one layer only after 5 s below 60 % since the last change.
    #[test]
    fn a_saturated_worker_sheds_layers_and_lifts_them_slowly() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut shed = Shed::default();
        assert!(!shed.update(500, at(0)));
        assert_eq!(shed.ceiling(&layers()), None, "nothing held with room");
        assert!(shed.update(950, at(1)));
        assert_eq!(shed.layers(), 1);
        let p = plan(&[TrackDemand { ceiling_bps: shed.ceiling(&layers()), ..track(Priority::Speaker) }], 0.0, Some(10_000_000.0));
        assert_eq!(rid(p.choices[0]), "m", "one below the top although the estimate fits it");
        assert!(!shed.update(950, at(2)), "the step settles first");
        assert!(shed.update(950, at(3)));
        assert!(!shed.update(1000, at(5)), "at most two layers");
        assert_eq!(shed.ceiling(&layers()), Some(500_000.0), "the lowest layer stays allowed");
        assert!(!shed.update(300, at(7)), "not lifted before 5 s since the change");
        assert!(!shed.update(700, at(20)), "not lifted between 60 and 90 %");
        assert!(shed.update(300, at(21)));
        assert_eq!(shed.layers(), 1);
        assert!(!shed.update(300, at(22)));
        assert!(shed.update(300, at(26)));
        assert_eq!(shed.layers(), 0);
        let one = [LayerRate::whole(None, 1_500_000.0)];
        assert!(shed.update(950, at(27)));
        assert_eq!(shed.ceiling(&one), None, "a single layer has nothing to shed to");
    }

    #[test]
    fn a_track_held_from_moving_up_keeps_its_layer_or_goes_down() {
        let layers =
            vec![LayerRate::whole(Some(Rid::from("l")), 150_000.0), LayerRate::whole(Some(Rid::from("m")), 350_000.0), LayerRate::whole(Some(Rid::from("h")), 1_400_000.0)];
        let on = |r: &str| Some(LayerChoice::Layer(Some(Rid::from(r))));
        assert_eq!(up_ceiling(on("l"), &layers), Some(350_000.0));
        assert_eq!(up_ceiling(on("h"), &layers), None, "nothing above the top");
        assert_eq!(up_ceiling(Some(LayerChoice::Paused), &layers), None, "the lowest layer is always allowed");
        // With plenty of estimate, the held track stays on "l" and the other is free to go up.
        let track = |current| TrackDemand {
            layers: layers.clone().into(),
            quality: Quality::Auto,
            priority: Priority::Other,
            current,
            ceiling_bps: up_ceiling(current, &layers),
            single_may_pause: false,
        };
        let p = plan(&[track(on("l")), TrackDemand { ceiling_bps: None, ..track(on("m")) }], 0.0, Some(5_000_000.0));
        assert_eq!(p.choices.to_vec(), [LayerChoice::Layer(Some(Rid::from("l"))), LayerChoice::Layer(Some(Rid::from("h")))]);
        // A held track still goes down when the estimate falls.
        let p = plan(&[track(on("m"))], 0.0, Some(200_000.0));
        assert_eq!(p.choices.to_vec(), [LayerChoice::Layer(Some(Rid::from("l")))]);
    }

    #[test]
    fn on_the_top_layer_there_is_nothing_to_probe_for() {
        let p = plan(&[track(Priority::Other)], 0.0, Some(5_000_000.0));
        assert_eq!(p.next_bps, None);
        let p = plan(&[track(Priority::Other)], 0.0, Some(300_000.0));
        assert!((p.next_bps.unwrap() - 500_000.0 * OVERHEAD).abs() < 1.0, "the middle layer, not the top: {p:?}");
    }

    #[test]
    fn a_probe_finds_its_room_by_the_raw_estimate_once_that_rose_during_it() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + PROBE_SETTLE + Duration::from_millis(ms);
        let low = plan(&[track(Priority::Other)], 40_000.0, Some(340_000.0));
        // A raw value stale from before the probe (the link thinned while little was sent)
        // proves nothing.
        let mut p = Prober::default();
        p.step_with_raw(&low, Some(340_000.0), Some(618_000.0), false, None, t0);
        p.step_with_raw(&low, Some(340_000.0), Some(618_000.0), false, None, at(0));
        assert!(p.probing());
        p.step_with_raw(&low, Some(340_000.0), Some(620_000.0), false, None, at(250));
        assert!(p.probing() && p.proven(at(250)).is_none());
        // One that rose during it does, while the average still lags.
        let mut p = Prober::default();
        p.step_with_raw(&low, Some(340_000.0), Some(350_000.0), false, None, t0);
        p.step_with_raw(&low, Some(340_000.0), Some(350_000.0), false, None, at(0));
        let goal = low.next_bps.unwrap();
        assert!(p.probing());
        p.step_with_raw(&low, Some(340_000.0), Some(1_300_000.0), true, None, at(200));
        assert!(p.proven(at(200)).is_none(), "not while the link queues");
        let mut p = Prober::default();
        p.step_with_raw(&low, Some(340_000.0), Some(350_000.0), false, None, t0);
        p.step_with_raw(&low, Some(340_000.0), Some(350_000.0), false, None, at(0));
        p.step_with_raw(&low, Some(340_000.0), Some(1_300_000.0), false, None, at(250));
        assert_eq!(p.proven(at(250)), Some(goal));
        assert_eq!(p.proven(at(250) + PROBE_WINDOW), None, "for a while");
        p.thinned(300_000.0);
        assert_eq!(p.proven(at(250)), None, "or until the link thins");
    }

    #[test]
    fn the_budget_follows_the_average_the_raw_value_on_a_collapse_and_ignores_a_probes_overshoot() {
        let t0 = Instant::now();
        assert_eq!(measured(None, Some(1e6), None), None);
        assert_eq!(measured(Some(600_000.0), Some(500_000.0), None), Some(600_000.0), "a dip of the raw value");
        assert_eq!(measured(Some(2_000_000.0), Some(1_900_000.0), Some(410_000.0)), Some(410_000.0), "what got through fell first");
        assert_eq!(measured(Some(1_500_000.0), Some(400_000.0), None), Some(400_000.0), "a link that thinned");
        assert_eq!(measured(Some(2_000_000.0), Some(770_000.0), Some(410_000.0)), Some(410_000.0), "no more than got through");
        assert_eq!(measured(Some(2_000_000.0), Some(770_000.0), Some(900_000.0)), Some(770_000.0));
        // A probe from 620 kbit/s: its overshoot dips the estimate; the layers stay.
        let tracks = [track(Priority::Other)];
        let mid = plan(&tracks, 40_000.0, Some(620_000.0));
        let mut p = Prober::default();
        p.step(&mid, Some(620_000.0), false, t0);
        p.step(&mid, Some(620_000.0), false, t0 + PROBE_SETTLE);
        assert!(p.probing());
        assert_eq!(budget(Some(560_000.0), p.held(t0 + PROBE_SETTLE), false), Some(620_000.0));
        assert_eq!(budget(Some(300_000.0), p.held(t0 + PROBE_SETTLE), false), Some(300_000.0), "unless it collapses");
        // Failed when the link queues: the estimate from before stands a moment longer.
        let later = t0 + PROBE_SETTLE + Duration::from_millis(500);
        p.step(&mid, Some(500_000.0), false, later);
        assert!(p.probing(), "a dip alone does not end it");
        p.step(&mid, Some(500_000.0), true, later);
        assert!(!p.probing());
        assert_eq!(budget(Some(500_000.0), p.held(later), false), Some(620_000.0));
        assert_eq!(budget(Some(500_000.0), p.held(later + PROBE_WINDOW), false), Some(500_000.0));
        // A collapse while its overshoot drains, or on a calm link, is the estimator's reaction
        // to the probe: the estimate from before still stands.
        assert!(p.overshooting(later + OVERSHOOT_DRAIN / 2) && !p.overshooting(later + OVERSHOOT_DRAIN));
        assert_eq!(budget(Some(200_000.0), p.held(later), false), Some(200_000.0));
        assert_eq!(budget(Some(200_000.0), p.held(later), true), Some(620_000.0));
    }

    /// A probe that found its room leaves a floor, ended by any queue; its overshoot drains a
    /// moment (no thinned link is read then); and a later probe that fails ends it too.
    #[test]
    fn the_room_a_probe_found_stands_until_the_link_queues_or_a_probe_for_as_much_fails() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + PROBE_SETTLE + Duration::from_millis(ms);
        let low = plan(&[track(Priority::Other)], 40_000.0, Some(340_000.0));
        let goal = low.next_bps.unwrap();
        let found = |p: &mut Prober| {
            p.step(&low, Some(340_000.0), false, t0);
            p.step(&low, Some(340_000.0), false, at(0));
            p.step(&low, Some(goal), false, at(250));
            assert_eq!(p.proven(at(250)), Some(goal));
        };
        let mut p = Prober::default();
        found(&mut p);
        assert!(p.overshooting(at(250)) && !p.overshooting(at(250) + OVERSHOOT_DRAIN));
        p.forget_proven();
        assert_eq!(p.proven(at(300)), None);
        // A probe for as much, failed (the plan's step not taken yet), ends the floor.
        let mut p = Prober::default();
        found(&mut p);
        let after = at(250) + PROBE_AFTER_SUCCESS;
        p.step(&low, Some(340_000.0), false, after);
        assert!(p.probing());
        p.step(&low, Some(340_000.0), true, after + Duration::from_millis(200));
        assert!(!p.probing());
        assert_eq!(p.proven(after + Duration::from_millis(200)), None);
    }

    #[test]
    fn a_pause_waits_for_two_seconds_of_low_estimates() {
        let t0 = Instant::now();
        let mut h = PauseHold::default();
        let l = layers();
        assert_eq!(rid(h.hold(LayerChoice::Paused, &l, false, t0)), "l", "a dip keeps the lowest layer");
        assert_eq!(rid(h.hold(LayerChoice::Paused, &l, false, t0 + Duration::from_millis(1_900))), "l");
        assert_eq!(h.hold(LayerChoice::Paused, &l, false, t0 + PAUSE_AFTER), LayerChoice::Paused);
        assert_eq!(rid(h.hold(LayerChoice::Layer(Some("l".into())), &l, false, t0 + Duration::from_secs(3))), "l");
        assert_eq!(rid(h.hold(LayerChoice::Paused, &l, false, t0 + Duration::from_secs(4))), "l", "a new dip waits again");
        assert_eq!(rid(h.hold(LayerChoice::Paused, &l, true, t0 + Duration::from_secs(4) + PAUSE_AFTER)), "l", "kept on a link losing without a queue");
    }

    #[test]
    fn the_start_estimate_is_a_floor_until_the_estimate_settles() {
        let t0 = Instant::now();
        let mut p = Prober::default();
        assert_eq!(p.start_floor(t0), None, "no estimate yet");
        let plan = plan(&[track(Priority::Other)], 50_000.0, Some(800_000.0));
        p.step(&plan, Some(800_000.0), false, t0);
        assert_eq!(p.start_floor(t0 + Duration::from_millis(600)), Some(800_000.0));
        p.step(&plan, Some(400_000.0), false, t0 + Duration::from_millis(600));
        assert_eq!(p.start_floor(t0 + Duration::from_millis(700)), Some(800_000.0), "the first estimate, not a later one");
        assert_eq!(p.start_floor(t0 + PROBE_SETTLE), None, "settled: the estimate alone");
    }

    #[test]
    fn a_standing_queue_soon_after_a_probe_found_its_room_backs_the_next_probe_off() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut t = track(Priority::Other);
        t.current = Some(LayerChoice::Layer(Some("l".into())));
        let mut p = Prober::default();
        // The plan wants the middle layer: 150 + 500 (with headers) over a 400 kbit/s estimate.
        let plan = |e: f64| super::plan(std::slice::from_ref(&t), 0.0, Some(e));
        let found_at = |p: &mut Prober, from: u64| {
            p.step(&plan(400_000.0), Some(400_000.0), false, at(from));
            assert!(p.probing(), "a probe starts at {from} ms");
            p.step(&plan(700_000.0), Some(700_000.0), false, at(from + 500));
            assert!(!p.probing(), "and finds its room");
            assert_eq!(p.refused, None, "a disproved goal is not refused");
        };
        p.step(&plan(400_000.0), Some(400_000.0), false, at(0));
        found_at(&mut p, 3_000);
        // 5 s later the link holds a standing queue: the probe failed after all; the next waits 5 s.
        assert!(p.disprove(Some(600_000.0), at(8_500)));
        assert!(!p.disprove(Some(600_000.0), at(8_600)), "once");
        p.step(&plan(400_000.0), Some(400_000.0), false, at(12_000));
        assert!(!p.probing(), "backed off");
        found_at(&mut p, 13_600);
        // Found again and disproved again: the back-off doubles (not reset by finding the same
        // goal).
        assert!(p.disprove(None, at(16_000)));
        p.step(&plan(400_000.0), Some(400_000.0), false, at(24_000));
        assert!(!p.probing(), "10 s now");
        found_at(&mut p, 26_100);
        // Held for 15 s: the back-off is cleared; no standing queue that late disproves it.
        p.step(&plan(700_000.0), Some(700_000.0), false, at(41_700));
        assert!(!p.disprove(Some(600_000.0), at(41_800)));
        // A link that now carries far less than the goal found changed since: no failure.
        let mut p = Prober::default();
        p.step(&plan(400_000.0), Some(400_000.0), false, at(0));
        found_at(&mut p, 3_000);
        let goal = plan(400_000.0).next_bps.unwrap();
        assert!(!p.disprove(Some(goal * 0.3), at(5_000)));
        assert_eq!((p.failures, p.proven(at(5_000))), (0, None), "the room found is forgotten all the same");
    }

    #[test]
    fn a_probe_looks_for_the_next_step_and_ends_on_success_overuse_or_stall_and_a_burst_is_asked_for_while_it_lasts() {
        let t0 = Instant::now();
        let tracks = [track(Priority::Other)];
        let mut p = Prober::default();
        // On the lowest layer at 300 kbit/s: probe for the middle layer, once the estimate is a
        // measurement.
        let low = plan(&tracks, 40_000.0, Some(300_000.0));
        let goal = low.next_bps.unwrap();
        assert_eq!(p.step(&low, Some(300_000.0), false, t0), Some((0.0, low.used_bps)), "too early");
        let s = |ms: u64| t0 + PROBE_SETTLE + Duration::from_millis(ms);
        assert_eq!(p.step(&low, Some(300_000.0), false, s(0)), Some((goal, goal * PROBE_HEADROOM)));
        assert_eq!(p.step(&low, Some(400_000.0), false, s(1_000)), None, "under way, nothing new to say");
        // Reached: the plan takes the layer.
        assert_eq!(p.step(&low, Some(goal + 1.0), false, s(1_500)), Some((0.0, goal)));
        assert!(!p.probing());
        // The next step waits for the layer just taken to settle.
        let mid = plan(&tracks, 40_000.0, Some(620_000.0));
        let goal = mid.next_bps.unwrap();
        assert_eq!(p.step(&mid, Some(620_000.0), false, s(2_000)), None);
        assert!(!p.probing());
        // A probe whose link queues stops at once and backs off 5 s; an estimate that falls
        // without a queue (str0m measured a cluster wrong) does not stop it.
        let s = |ms: u64| t0 + PROBE_SETTLE + PROBE_AFTER_SUCCESS + Duration::from_millis(ms);
        assert_eq!(p.step(&mid, Some(620_000.0), false, s(2_000)), Some((goal, goal * PROBE_HEADROOM)));
        assert_eq!(p.step(&mid, Some(450_000.0), false, s(2_300)), None, "a dip alone");
        assert_eq!(p.step_with_raw(&mid, Some(450_000.0), None, false, Some(Duration::from_millis(10)), s(2_400)), None, "a dip and no queue to speak of");
        assert_eq!(p.step(&mid, Some(500_000.0), true, s(2_500)), Some((0.0, mid.used_bps)), "overuse");
        let mut q = Prober::default();
        q.step(&mid, Some(620_000.0), false, t0);
        assert!(q.step(&mid, Some(620_000.0), false, s(0)).is_some());
        assert_eq!(q.step_with_raw(&mid, Some(500_000.0), None, false, Some(PROBE_OVERUSE_DELAY), s(300)), Some((0.0, mid.used_bps)), "a dip while the queue delay rises");
        assert_eq!(p.step(&mid, Some(620_000.0), false, s(7_000)), None, "backing off");
        assert_eq!(p.step(&mid, Some(620_000.0), false, s(7_600)), Some((goal, goal * PROBE_HEADROOM)));
        // Climbing slowly gets another window; a stall fails, and the back-off doubles.
        assert_eq!(p.step(&mid, Some(700_000.0), false, s(10_600)), None, "climbing: another window");
        assert_eq!(p.step(&mid, Some(710_000.0), false, s(13_700)), Some((0.0, mid.used_bps)), "stalled");
        assert_eq!(p.step(&mid, Some(710_000.0), false, s(23_000)), None, "10 s after the second failure");
        assert!(p.step(&mid, Some(710_000.0), false, s(23_800)).is_some());
        // A link that queues ends it too, and no probe starts while it does.
        assert_eq!(p.step(&mid, Some(710_000.0), true, s(24_000)), Some((0.0, mid.used_bps)), "queueing");
        assert_eq!(p.step(&mid, Some(710_000.0), true, s(60_000)), None, "still queueing");
        assert!(p.step(&mid, Some(710_000.0), false, s(61_000)).is_some());
        // A smaller step found does not clear the back-off of the bigger one that failed.
        let mut p = Prober::default();
        p.step(&mid, Some(620_000.0), false, t0);
        assert!(p.step(&mid, Some(620_000.0), false, t0 + PROBE_SETTLE).is_some());
        p.step(&mid, Some(500_000.0), true, t0 + PROBE_SETTLE + Duration::from_millis(500));
        let low = plan(&tracks, 40_000.0, Some(300_000.0));
        let t = t0 + PROBE_SETTLE + PROBE_BACKOFF + Duration::from_secs(1);
        assert!(p.step(&low, Some(300_000.0), false, t).is_some());
        p.step(&low, Some(low.next_bps.unwrap()), false, t + Duration::from_secs(1));
        p.step(&mid, Some(620_000.0), false, t + Duration::from_secs(5));
        p.step(&mid, Some(500_000.0), true, t + Duration::from_millis(5_500));
        assert_eq!(p.step(&mid, Some(620_000.0), false, t + Duration::from_secs(14)), None, "the second failure of the top: 10 s");
        // A small step that fails backs off 5 s every time.
        let mut p = Prober::default();
        let low = plan(&tracks, 40_000.0, Some(400_000.0));
        let goal = low.next_bps.unwrap();
        assert!(goal <= 400_000.0 * SMALL_STEP, "{low:?}");
        p.step(&low, Some(400_000.0), false, t0);
        let mut t = t0 + PROBE_SETTLE;
        for _ in 0..3 {
            assert_eq!(p.step(&low, Some(400_000.0), false, t), Some((goal, goal * PROBE_HEADROOM)));
            assert_eq!(p.step(&low, Some(300_000.0), true, t + Duration::from_millis(300)), Some((0.0, low.used_bps)));
            t += Duration::from_millis(300) + PROBE_BACKOFF;
        }
        // After the link thinned to carry 400 kbit/s, a probe from a lower estimate to the
        // next layer is a small step by what the link carried: each failure waits 5 s, none
        // doubles it (before, the second one waited 10 s).
        let mut p = Prober::default();
        let low = plan(&tracks, 40_000.0, Some(300_000.0));
        let goal = low.next_bps.unwrap();
        assert!(goal > 300_000.0 * SMALL_STEP && goal <= 400_000.0 * SMALL_STEP, "{low:?}");
        p.step(&low, Some(300_000.0), false, t0);
        let mut t = t0 + PROBE_SETTLE;
        for thinned in [false, true, true, true] {
            if thinned {
                p.thinned(400_000.0);
            }
            assert_eq!(p.step(&low, Some(300_000.0), false, t), Some((goal, goal * PROBE_HEADROOM)), "the link thinned first: {thinned}");
            assert_eq!(p.step(&low, Some(200_000.0), true, t + Duration::from_millis(300)), Some((0.0, low.used_bps)));
            t += Duration::from_millis(300) + PROBE_BACKOFF;
        }
        // A viewer over its estimate (a layer kept by hysteresis) does not probe.
        let mut p = Prober::default();
        let mut t = track(Priority::Other);
        t.current = Some(LayerChoice::Layer(Some("m".into())));
        let over = plan(&[t], 40_000.0, Some(500_000.0));
        assert_eq!(rid(over.choices[0]), "m");
        p.step(&over, Some(500_000.0), false, t0);
        assert_eq!(p.step(&over, Some(500_000.0), false, s(0)), None);
        // A burst (a GOP replay of 2 Mbit beside the stream) is asked for at once and held
        // while it lasts; then the plan's own goal is said again.
        let mut p = Prober::default();
        let low = plan(&tracks, 40_000.0, Some(300_000.0));
        assert_eq!(p.step(&low, Some(300_000.0), false, t0), Some((0.0, low.used_bps)));
        assert_eq!(p.burst(2_100_000.0, t0 + Duration::from_secs(1)), (0.0, 2_100_000.0));
        assert_eq!(p.step(&low, Some(300_000.0), false, t0 + Duration::from_millis(500)), None);
        assert_eq!(p.step(&low, Some(300_000.0), false, t0 + Duration::from_secs(1)), Some((0.0, low.used_bps)), "over: the plan's own");
    }
}
