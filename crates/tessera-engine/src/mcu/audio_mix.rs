//! Audio mixing (LAYOUTS.md §5) as a plain value: every 20 ms, voices are ranked by their level
//! (the RFC 6464 level their packets carry — what active speakers rank by — else the RMS of the
//! decoded block) smoothed over ~1 s, the loudest `max_voices` are summed (a voice stays selected for 2 s after
//! it last ranked), and a soft limiter keeps the sum under −1 dBFS.

use std::collections::HashMap;
use std::hash::Hash;

/// −1 dBFS.
pub const CEILING: f32 = 0.891;
/// Where the limiter starts bending.
const KNEE: f32 = 0.7;
/// 20 ms steps in 1 s (level smoothing) and in 2 s (selection hold).
const SMOOTH_STEPS: f32 = 50.0;
const HOLD_STEPS: u64 = 100;

/// Soft limiter: linear below the knee, a tanh curve that never exceeds the ceiling above it.
pub fn limit(x: f32) -> f32 {
    let a = x.abs();
    if a <= KNEE {
        return x;
    }
    let range = CEILING - KNEE;
    (KNEE + range * ((a - KNEE) / range).tanh()).copysign(x)
}

#[derive(Debug, Default)]
struct Voice {
    level: f32,
    last_ranked: Option<u64>,
}

/// The mixer's memory: smoothed levels and selection times per voice.
#[derive(Debug)]
pub struct AudioMixer<K> {
    voices: HashMap<K, Voice>,
    step: u64,
    pub max_voices: usize,
}

impl<K: Eq + Hash + Clone + Ord> AudioMixer<K> {
    pub fn new(max_voices: usize) -> AudioMixer<K> {
        AudioMixer { voices: HashMap::new(), step: 0, max_voices: max_voices.clamp(1, 16) }
    }

    /// Mixes one 20 ms frame: `inputs` are interleaved stereo blocks of equal length; `out` gets
    /// their limited sum. Returns the selected voices.
    pub fn mix(&mut self, inputs: &[(K, &[f32])], out: &mut [f32]) -> Vec<K> {
        let with_levels: Vec<(K, &[f32], Option<u8>)> = inputs.iter().map(|(k, pcm)| (k.clone(), *pcm, None)).collect();
        self.mix_with_levels(&with_levels, out)
    }

    /// As `mix`, with each voice's level in dBov (RFC 6464) where its packets carried one.
    pub fn mix_with_levels(&mut self, inputs: &[(K, &[f32], Option<u8>)], out: &mut [f32]) -> Vec<K> {
        self.step += 1;
        self.voices.retain(|k, _| inputs.iter().any(|(i, _, _)| i == k));
        for (k, pcm, dbov) in inputs {
            let rms = match dbov {
                // dBov is −20·log10 of the RMS relative to full scale.
                Some(d) => 10f32.powf(-(*d as f32) / 20.0),
                None if pcm.is_empty() => 0.0,
                None => (pcm.iter().map(|s| s * s).sum::<f32>() / pcm.len() as f32).sqrt(),
            };
            let v = self.voices.entry(k.clone()).or_default();
            v.level += (rms - v.level) / SMOOTH_STEPS;
        }
        let mut ranked: Vec<(&K, f32)> = inputs.iter().map(|(k, _, _)| (k, self.voices[k].level)).collect();
        ranked.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal).then(a.0.cmp(b.0)));
        for (k, _) in ranked.iter().take(self.max_voices) {
            if let Some(v) = self.voices.get_mut(*k) {
                v.last_ranked = Some(self.step);
            }
        }
        // Held voices first (by level), then cut to max_voices.
        let mut selected: Vec<K> = ranked.iter().filter(|(k, _)| self.voices[*k].last_ranked.is_some_and(|t| self.step - t < HOLD_STEPS)).map(|(k, _)| (*k).clone()).collect();
        selected.truncate(self.max_voices);
        out.fill(0.0);
        for (k, pcm, _) in inputs {
            if selected.contains(k) {
                for (o, s) in out.iter_mut().zip(pcm.iter()) {
                    *o += *s;
                }
            }
        }
        for o in out.iter_mut() {
            *o = limit(*o);
        }
        selected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_is_transparent_below_the_knee_and_never_passes_the_ceiling() {
        assert_eq!(limit(0.5), 0.5);
        assert_eq!(limit(-0.3), -0.3);
        for x in [0.8f32, 1.0, 2.0, 10.0, -5.0] {
            assert!(limit(x).abs() <= CEILING + 1e-6, "{x}");
        }
        assert!(limit(0.9) > limit(0.8), "monotonic");
    }

    #[test]
    fn carried_levels_rank_voices_as_active_speakers_do() {
        // Equal blocks, but the packets say b is loud and a quiet: b is chosen.
        let mut m: AudioMixer<&str> = AudioMixer::new(1);
        let pcm = vec![0.1f32; 1920];
        let mut out = vec![0.0; 1920];
        let mut sel = Vec::new();
        for _ in 0..50 {
            sel = m.mix_with_levels(&[("a", &pcm[..], Some(60)), ("b", &pcm[..], Some(10))], &mut out);
        }
        assert_eq!(sel, vec!["b"]);
    }

    #[test]
    fn loudest_voices_are_mixed_and_a_quiet_one_is_held_for_two_seconds() {
        let mut m = AudioMixer::new(2);
        let loud = vec![0.3f32; 1920];
        let mid = vec![0.2f32; 1920];
        let quiet = vec![0.01f32; 1920];
        let mut out = vec![0.0f32; 1920];
        let mut sel = Vec::new();
        for _ in 0..50 {
            sel = m.mix(&[("a", &loud[..]), ("b", &mid[..]), ("c", &quiet[..])], &mut out);
        }
        assert_eq!(sel, vec!["a", "b"]);
        assert!((out[0] - 0.5).abs() < 1e-6, "a + b, under the knee: {}", out[0]);
        // c gets loud: after its smoothed level passes b's it is ranked, b is held a while.
        let louder = vec![0.6f32; 1920];
        let mut steps_until_c = None;
        for i in 0..200 {
            sel = m.mix(&[("a", &loud[..]), ("b", &mid[..]), ("c", &louder[..])], &mut out);
            if steps_until_c.is_none() && sel.contains(&"c") {
                steps_until_c = Some(i);
            }
        }
        assert!(steps_until_c.is_some());
        assert_eq!(sel.len(), 2);
        assert!(sel.contains(&"c") && sel.contains(&"a"), "{sel:?}");
        assert!(out.iter().all(|s| s.abs() <= CEILING + 1e-6));
    }
}
