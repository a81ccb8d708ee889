//! Layer choice (a pure function of what the producer sends and what the viewer's link takes):
//! a pinned quality takes its layer; `auto` takes the highest layer whose measured bitrate fits
//! the viewer's bandwidth estimate less an audio reserve, and pauses video when none fits.

use super::types::Quality;
use tessera_rtc::str0m::media::Rid;

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
fn rank(rid: Option<&str>) -> u8 {
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
    fn unnamed_layers_rank_by_bitrate() {
        let l = [LayerRate { rid: Some("a".into()), bps: 100_000.0 }, LayerRate { rid: Some("b".into()), bps: 900_000.0 }];
        assert_eq!(rid(choose_layer(&l, Quality::High, None)).as_deref(), Some("b"));
    }
}
