//! Audio levels as RFC 6464 carries them: dBov, the level relative to the loudest a signal can
//! be, 0 (full scale) to 127 (silence). Publishers that are WebRTC peers send it in a header
//! extension; for audio Tessera decodes itself (RTMP, pull ingest, mixes) it is measured here.

/// The dBov of a block of 16-bit samples (RMS over the block, RFC 6464 §3).
pub fn dbov_i16(samples: &[i16]) -> u8 {
    if samples.is_empty() {
        return 127;
    }
    let sum: f64 = samples.iter().map(|s| (*s as f64 / 32768.0).powi(2)).sum();
    from_mean_square(sum / samples.len() as f64)
}

/// The dBov of a block of float samples in −1..1.
pub fn dbov_f32(samples: &[f32]) -> u8 {
    if samples.is_empty() {
        return 127;
    }
    let sum: f64 = samples.iter().map(|s| (*s as f64).powi(2)).sum();
    from_mean_square(sum / samples.len() as f64)
}

fn from_mean_square(ms: f64) -> u8 {
    if ms <= 0.0 {
        return 127;
    }
    // 10·log10 of the power is 20·log10 of the RMS.
    (-10.0 * ms.log10()).round().clamp(0.0, 127.0) as u8
}

/// The 0–100 level of PRODUCT.md §7 (`active_speakers`): round(100·(127 − dBov)/127).
pub fn level_percent(dbov: f32) -> u8 {
    (100.0 * (127.0 - dbov.clamp(0.0, 127.0)) / 127.0).round() as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_scale_is_zero_and_silence_is_127() {
        assert_eq!(dbov_i16(&[i16::MAX, i16::MIN, i16::MAX, i16::MIN]), 0);
        assert_eq!(dbov_i16(&[0; 960]), 127);
        assert_eq!(dbov_i16(&[]), 127);
        assert_eq!(level_percent(0.0), 100);
        assert_eq!(level_percent(127.0), 0);
        assert_eq!(level_percent(50.0), 61);
    }

    #[test]
    fn a_full_scale_sine_is_3_dbov_and_a_tenth_of_it_23() {
        let sine = |amp: f32| (0..960).map(|i| amp * (i as f32 * 2.0 * std::f32::consts::PI * 440.0 / 48000.0).sin()).collect::<Vec<f32>>();
        assert_eq!(dbov_f32(&sine(1.0)), 3);
        assert_eq!(dbov_f32(&sine(0.1)), 23);
        let ints: Vec<i16> = sine(0.1).iter().map(|s| (s * 32767.0) as i16).collect();
        assert_eq!(dbov_i16(&ints), 23);
    }
}
