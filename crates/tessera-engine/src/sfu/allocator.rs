//! Layer choice (a pure function of what the producer sends and what the viewer's link takes):
//! a pinned quality takes its layer; `auto` takes the highest layer whose measured bitrate fits
//! the viewer's bandwidth estimate less an audio reserve, and pauses video when none fits.

use super::types::Quality;
use std::time::{Duration, Instant};
use tessera_rtc::str0m::media::Rid;

/// Video pauses only once the estimate has stayed below the lowest layer this long: a probe
/// that overshoots, or one burst of loss, dips the estimate for a moment.
pub const PAUSE_AFTER: Duration = Duration::from_secs(2);
/// A probe that has not lifted the estimate to its target within this is a failure.
const PROBE_WINDOW: Duration = Duration::from_secs(3);
/// After a failed probe the next waits 5 s, doubling per failure up to a minute.
const PROBE_BACKOFF: Duration = Duration::from_secs(5);
const PROBE_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Bandwidth kept for audio when choosing a video layer, in bit/s.
pub const AUDIO_RESERVE_BPS: f64 = 64_000.0;

/// What a video consumer should forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerChoice {
    Layer(Option<Rid>),
    /// Congestion control paused video: even the lowest layer does not fit.
    Paused,
}

/// One layer as the allocator sees it.
#[derive(Debug, Clone, Copy)]
pub struct LayerRate {
    pub rid: Option<Rid>,
    pub bps: f64,
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

/// The layer a video consumer takes; `estimate_bps` is the viewer's bandwidth estimate, if
/// known yet (until then the top layer).
pub fn choose_layer(layers: &[LayerRate], quality: Quality, estimate_bps: Option<f64>) -> Option<LayerChoice> {
    if layers.len() <= 1 {
        return Some(LayerChoice::Layer(layers.first().and_then(|l| l.rid)));
    }
    let mut layers = layers.to_vec();
    // Ranked by name, others by measured bitrate.
    layers.sort_by(|a, b| rank(a.rid.as_deref()).cmp(&rank(b.rid.as_deref())).then(b.bps.partial_cmp(&a.bps).unwrap_or(std::cmp::Ordering::Equal)));
    let pick = |l: &LayerRate| Some(LayerChoice::Layer(l.rid));
    match quality {
        Quality::High => return pick(layers.first()?),
        Quality::Medium => return pick(layers.get(layers.len() / 2)?),
        Quality::Low => return pick(layers.last()?),
        Quality::Auto => {}
    }
    let Some(estimate) = estimate_bps else { return pick(layers.first()?) };
    let budget = estimate - AUDIO_RESERVE_BPS;
    match layers.iter().find(|l| l.bps <= budget) {
        Some(l) => pick(l),
        None => Some(LayerChoice::Paused),
    }
}

/// The bitrate a viewer's bandwidth estimator should try to discover (str0m probes up to it):
/// the layer it would take with room to spare, its audio, and a tenth for headroom. Without it
/// the estimate never rises above what is being sent, and a viewer started below the top layer
/// stays there.
pub fn desired_bitrate(layers: &[LayerRate], quality: Quality) -> f64 {
    let wanted = match choose_layer(layers, quality, None) {
        Some(LayerChoice::Layer(rid)) => layers.iter().find(|l| l.rid == rid).map_or(0.0, |l| l.bps),
        _ => 0.0,
    };
    (wanted + AUDIO_RESERVE_BPS) * 1.1
}

/// One viewer's allocation over time: when to pause video, and when to ask its estimator to
/// probe for a higher layer (with back-off after probes that find no room).
#[derive(Debug, Default)]
pub struct Allocation {
    below_lowest_since: Option<Instant>,
    /// The bitrate probed for, since when, and the estimate then; how many probes in a row
    /// failed.
    probe: Option<(f64, Instant, f64)>,
    failures: u32,
    next_probe_at: Option<Instant>,
}

impl Allocation {
    /// The video layer to forward: `choose_layer`, except that a pause waits for `PAUSE_AFTER`
    /// of estimates below the lowest layer (the lowest layer is kept meanwhile).
    pub fn choose(&mut self, layers: &[LayerRate], quality: Quality, estimate_bps: Option<f64>, now: Instant) -> Option<LayerChoice> {
        let choice = choose_layer(layers, quality, estimate_bps);
        if choice != Some(LayerChoice::Paused) {
            self.below_lowest_since = None;
            return choice;
        }
        let since = *self.below_lowest_since.get_or_insert(now);
        if now.duration_since(since) >= PAUSE_AFTER {
            return choice;
        }
        choose_layer(layers, Quality::Low, None)
    }

    /// The bitrate to ask the estimator to probe toward now, if any: when the viewer is held
    /// below the layer it would take with room to spare, and no probe is under way or backing
    /// off. `Some(0.0)` withdraws an earlier request.
    pub fn probe(&mut self, layers: &[LayerRate], quality: Quality, estimate_bps: Option<f64>, now: Instant) -> Option<f64> {
        let wanted = desired_bitrate(layers, quality);
        let held_below = layers.len() > 1 && choose_layer(layers, quality, None) != choose_layer(layers, quality, estimate_bps);
        let estimate = estimate_bps.unwrap_or(0.0);
        if let Some((target, at, from)) = self.probe {
            if estimate >= target / 1.1 {
                // Found the room: the layer follows.
                self.probe = None;
                self.failures = 0;
            } else if now.duration_since(at) >= PROBE_WINDOW && estimate >= from * 1.25 {
                // Still climbing (the estimator probes in steps): give it another window.
                self.probe = Some((target, now, estimate));
                return None;
            } else if now.duration_since(at) >= PROBE_WINDOW {
                self.probe = None;
                self.failures += 1;
                let wait = PROBE_BACKOFF.saturating_mul(1 << self.failures.min(4)).min(PROBE_BACKOFF_MAX);
                self.next_probe_at = Some(now + wait);
                return Some(0.0);
            } else {
                return None;
            }
        }
        if !held_below || self.next_probe_at.is_some_and(|t| now < t) {
            return None;
        }
        self.probe = Some((wanted, now, estimate));
        Some(wanted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers() -> Vec<LayerRate> {
        vec![LayerRate { rid: Some("l".into()), bps: 150_000.0 }, LayerRate { rid: Some("h".into()), bps: 1_500_000.0 }, LayerRate { rid: Some("m".into()), bps: 500_000.0 }]
    }

    fn rid(c: Option<LayerChoice>) -> Option<String> {
        match c {
            Some(LayerChoice::Layer(r)) => r.map(|r| r.to_string()),
            _ => None,
        }
    }

    #[test]
    fn auto_takes_the_highest_layer_that_fits_and_pauses_below_the_lowest() {
        assert_eq!(rid(choose_layer(&layers(), Quality::Auto, None)).as_deref(), Some("h"), "no estimate yet: the top");
        assert_eq!(rid(choose_layer(&layers(), Quality::Auto, Some(2_000_000.0))).as_deref(), Some("h"));
        assert_eq!(rid(choose_layer(&layers(), Quality::Auto, Some(1_500_000.0))).as_deref(), Some("m"), "the audio reserve counts");
        assert_eq!(rid(choose_layer(&layers(), Quality::Auto, Some(300_000.0))).as_deref(), Some("l"));
        assert_eq!(choose_layer(&layers(), Quality::Auto, Some(200_000.0)), Some(LayerChoice::Paused));
    }

    #[test]
    fn a_pinned_quality_ignores_the_estimate() {
        assert_eq!(rid(choose_layer(&layers(), Quality::High, Some(100.0))).as_deref(), Some("h"));
        assert_eq!(rid(choose_layer(&layers(), Quality::Medium, Some(100.0))).as_deref(), Some("m"));
        assert_eq!(rid(choose_layer(&layers(), Quality::Low, Some(10_000_000.0))).as_deref(), Some("l"));
    }

    #[test]
    fn one_layer_is_always_taken() {
        let one = [LayerRate { rid: None, bps: 3_000_000.0 }];
        assert_eq!(choose_layer(&one, Quality::Auto, Some(100_000.0)), Some(LayerChoice::Layer(None)), "no simulcast: nothing to fall back to");
        assert_eq!(choose_layer(&[], Quality::Auto, None), Some(LayerChoice::Layer(None)));
    }

    #[test]
    fn the_desired_bitrate_is_the_layer_wanted_with_room_to_spare() {
        let d = desired_bitrate(&layers(), Quality::Auto);
        assert!((d - (1_500_000.0 + AUDIO_RESERVE_BPS) * 1.1).abs() < 1.0, "{d}");
        let d = desired_bitrate(&layers(), Quality::Low);
        assert!((d - (150_000.0 + AUDIO_RESERVE_BPS) * 1.1).abs() < 1.0, "a pinned low quality does not probe for more: {d}");
    }

    #[test]
    fn a_pause_waits_for_two_seconds_of_low_estimates() {
        let t0 = Instant::now();
        let mut a = Allocation::default();
        assert_eq!(rid(a.choose(&layers(), Quality::Auto, Some(100_000.0), t0)).as_deref(), Some("l"), "a dip keeps the lowest layer");
        assert_eq!(rid(a.choose(&layers(), Quality::Auto, Some(100_000.0), t0 + Duration::from_millis(1_900))).as_deref(), Some("l"));
        assert_eq!(a.choose(&layers(), Quality::Auto, Some(100_000.0), t0 + PAUSE_AFTER), Some(LayerChoice::Paused));
        assert_eq!(rid(a.choose(&layers(), Quality::Auto, Some(300_000.0), t0 + Duration::from_secs(3))).as_deref(), Some("l"));
        assert_eq!(rid(a.choose(&layers(), Quality::Auto, Some(100_000.0), t0 + Duration::from_secs(4))).as_deref(), Some("l"), "a new dip waits again");
    }

    #[test]
    fn probes_go_toward_the_wanted_layer_and_back_off_when_they_find_no_room() {
        let t0 = Instant::now();
        let s = |ms: u64| t0 + Duration::from_millis(ms);
        let mut a = Allocation::default();
        let wanted = desired_bitrate(&layers(), Quality::Auto);
        assert_eq!(a.probe(&layers(), Quality::Auto, Some(2_000_000.0), s(0)), None, "on the top layer: nothing to probe for");
        assert_eq!(a.probe(&layers(), Quality::Auto, Some(400_000.0), s(0)), Some(wanted));
        assert_eq!(a.probe(&layers(), Quality::Auto, Some(400_000.0), s(1_000)), None, "under way");
        assert_eq!(a.probe(&layers(), Quality::Auto, Some(450_000.0), s(3_000)), Some(0.0), "failed: withdrawn");
        assert_eq!(a.probe(&layers(), Quality::Auto, Some(450_000.0), s(12_000)), None, "backing off 10 s");
        assert_eq!(a.probe(&layers(), Quality::Auto, Some(450_000.0), s(13_000)), Some(wanted));
        assert_eq!(a.probe(&layers(), Quality::Auto, Some(450_000.0), s(16_000)), Some(0.0));
        assert_eq!(a.probe(&layers(), Quality::Auto, Some(450_000.0), s(30_000)), None, "20 s after the second failure");
        assert_eq!(a.probe(&layers(), Quality::Auto, Some(450_000.0), s(36_000)), Some(wanted));
        assert_eq!(a.probe(&layers(), Quality::Auto, Some(700_000.0), s(39_000)), None, "climbing by steps: another window");
        assert_eq!(a.probe(&layers(), Quality::Auto, Some(1_700_000.0), s(40_000)), None, "found room: done");
        assert_eq!(a.probe(&layers(), Quality::Auto, Some(400_000.0), s(41_000)), Some(wanted), "no back-off after a success");
    }

    #[test]
    fn unnamed_layers_rank_by_bitrate() {
        let l = [LayerRate { rid: Some("a".into()), bps: 100_000.0 }, LayerRate { rid: Some("b".into()), bps: 900_000.0 }];
        assert_eq!(rid(choose_layer(&l, Quality::High, None)).as_deref(), Some("b"));
    }
}
