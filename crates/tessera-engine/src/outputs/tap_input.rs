//! What relays and recordings do with a tapped stream before their own container: RTP packets
//! → whole H.264 access units (VP8 decoded and re-encoded with OpenH264, RECORDING.md §1),
//! keyframe-gated after any loss; Opus → AAC-LC; RTP time → milliseconds on the task's clock.
//! These are the only implementations of keyframe gating and Opus→AAC for the outputs.

use crate::sfu::TapPacket;
use std::sync::Arc;
use tessera_media::h264::{self, nal_type};
use tessera_media::rtp::{AuAssembler, Push};
use tessera_media::Codec;
use tessera_transcode::decode::{AacEncoder, AacFrame, OpusDecoder, VideoCodec, VideoDecoder};
use tessera_transcode::video::{default_kbps, EncoderSettings, OpenH264Encoder};
use tessera_transcode::TranscodeError;

/// RTP time → milliseconds on the caller's clock: anchored at the first packet's arrival, then
/// following the RTP clock; re-anchored when the two drift more than a second apart (a source
/// switch, a publisher restart, a pause).
#[derive(Debug, Clone)]
pub struct TrackClock {
    khz: u32,
    anchor: Option<(u32, i64)>,
}

impl TrackClock {
    pub fn video() -> TrackClock {
        TrackClock { khz: 90, anchor: None }
    }

    pub fn audio() -> TrackClock {
        TrackClock { khz: 48, anchor: None }
    }

    pub fn ms(&mut self, rtp: u32, arrival_ms: i64) -> i64 {
        if let Some((base_rtp, base_ms)) = self.anchor {
            let t = base_ms + (rtp.wrapping_sub(base_rtp) as i32 as i64) / self.khz as i64;
            if (t - arrival_ms).abs() <= 1000 {
                return t;
            }
        }
        self.anchor = Some((rtp, arrival_ms));
        arrival_ms
    }
}

/// What one packet gave.
pub enum VideoUnit {
    /// Nothing yet (mid-unit, or skipped while waiting for a keyframe).
    None,
    /// A unit was lost or undecodable: ask the source for a keyframe.
    Lost,
    /// A whole access unit as NAL units, stamped `ms` (its decode time), shown `cts_ms` later
    /// (B-frame originals; 0 otherwise). H.264, or H.265 (an original kept for recordings).
    Unit { nalus: Vec<Vec<u8>>, keyframe: bool, ms: i64, cts_ms: i32, codec: Codec },
}

/// Access-unit reassembly and, for VP8, the transcode to H.264.
pub struct VideoInput {
    clock: TrackClock,
    au: AuAssembler,
    waiting_keyframe: bool,
    vp8: Option<(VideoDecoder, Option<OpenH264Encoder>)>,
}

impl Default for VideoInput {
    fn default() -> Self {
        VideoInput { clock: TrackClock::video(), au: AuAssembler::default(), waiting_keyframe: true, vp8: None }
    }
}

impl VideoInput {
    pub fn push(&mut self, p: &TapPacket, arrival_ms: i64) -> Result<VideoUnit, TranscodeError> {
        let push = self.au.push(p.seq, p.ts, p.marker, p.payload.clone());
        if self.au.take_abandoned() {
            self.waiting_keyframe = true;
        }
        let unit = match push {
            Push::Pending => return Ok(VideoUnit::None),
            Push::Gap => {
                // The clock still follows this unit's timestamp.
                self.clock.ms(p.ts, arrival_ms);
                self.waiting_keyframe = true;
                return Ok(VideoUnit::Lost);
            }
            Push::Unit(unit) => unit,
        };
        let ms = self.clock.ms(p.ts, arrival_ms);
        let nalus = match p.codec {
            Codec::H264 => h264::depacketize(&unit.iter().map(|x| x.to_vec()).collect::<Vec<_>>()),
            Codec::Vp8 => match self.vp8_to_h264(&unit, ms)? {
                Some(n) => n,
                None => return Ok(VideoUnit::None),
            },
            // An H.265 original comes as whole access units in Annex-B form.
            Codec::H265 => unit.iter().flat_map(|x| h264::split_annex_b(x).into_iter().map(|n| n.to_vec()).collect::<Vec<_>>()).collect(),
            // So does an AV1 original: one temporal unit, OBUs with size fields.
            Codec::Av1 => unit.iter().map(|x| x.to_vec()).collect(),
            Codec::Opus => return Ok(VideoUnit::None),
        };
        if nalus.is_empty() {
            return Ok(VideoUnit::None);
        }
        let keyframe = match p.codec {
            Codec::H265 => nalus.iter().any(|n| tessera_media::h265::is_irap(n)),
            // The publisher puts the sequence header ahead of every keyframe.
            Codec::Av1 => nalus.iter().any(|n| tessera_media::av1::has_sequence_header(n)),
            _ => nalus.iter().any(|n| nal_type(n) == Some(h264::NAL_IDR)),
        };
        if self.waiting_keyframe && !keyframe {
            return Ok(VideoUnit::Lost);
        }
        self.waiting_keyframe = false;
        Ok(VideoUnit::Unit { nalus, keyframe, ms, cts_ms: p.composition_ms.max(0), codec: if p.codec == Codec::Vp8 { Codec::H264 } else { p.codec } })
    }

    /// VP8 is decoded and re-encoded at its own size, at most 4 Mbit/s.
    fn vp8_to_h264(&mut self, unit: &[Arc<[u8]>], ms: i64) -> Result<Option<Vec<Vec<u8>>>, TranscodeError> {
        let mut frame = Vec::new();
        for x in unit {
            if let Some((_, body)) = tessera_media::vp8::depacketize(x) {
                frame.extend_from_slice(body);
            }
        }
        let (decoder, encoder) = match self.vp8.as_mut() {
            Some(v) => v,
            None => self.vp8.insert((VideoDecoder::new(VideoCodec::Vp8)?, None)),
        };
        if !matches!(decoder.decode(&frame), Ok(true)) {
            return Ok(None);
        }
        let picture = decoder.picture().expect("decoded");
        let (w, h) = (picture.width() & !1, picture.height() & !1);
        if encoder.as_ref().is_none_or(|e| (e.settings.width, e.settings.height) != (w, h)) {
            let settings = EncoderSettings { width: w, height: h, fps: 30, kbps: default_kbps(w, h).min(4000), gop_frames: 60, preset: "" };
            *encoder = Some(OpenH264Encoder::new(settings)?);
        }
        let mut out = Vec::new();
        if encoder.as_mut().expect("made").encode(picture, ms, &mut out).is_err() {
            return Ok(None);
        }
        Ok(Some(out.iter().flat_map(|e| h264::split_annex_b(&e.data).into_iter().map(|n| n.to_vec()).collect::<Vec<_>>()).collect()))
    }
}

/// Opus packets → AAC-LC 48 kHz stereo 96 kbit/s frames (RECORDING.md §1), stamped on the
/// track's clock: the first frame takes the first packet's time, later ones follow the sample
/// count, so AAC's own framing (1024 samples) never drifts from the source.
pub struct OpusToAac {
    clock: TrackClock,
    opus: OpusDecoder,
    aac: Option<(AacEncoder, i64)>,
    pcm: Vec<f32>,
    frames: Vec<AacFrame>,
    /// Stereo AAC whatever the Opus carries (a muxed TS whose audio track was declared first).
    force_stereo: bool,
}

/// One AAC frame (raw, no ADTS) at `ms`.
#[derive(Debug, Clone)]
pub struct AacUnit {
    pub ms: i64,
    pub data: Vec<u8>,
}

impl OpusToAac {
    /// AAC-LC 48 kHz, 64 kbit/s mono or 96 kbit/s stereo as the Opus stream is (RECORDING.md
    /// §1: the stereo flag of its first packet's TOC byte; browsers' microphones and speech
    /// mixes are mono).
    pub fn new() -> Result<OpusToAac, TranscodeError> {
        Ok(OpusToAac { clock: TrackClock::audio(), opus: OpusDecoder::new()?, aac: None, pcm: Vec::new(), frames: Vec::new(), force_stereo: false })
    }

    /// Always 96 kbit/s stereo: for a container whose audio track is declared before the first
    /// Opus packet arrives.
    pub fn stereo() -> Result<OpusToAac, TranscodeError> {
        Ok(OpusToAac { force_stereo: true, ..OpusToAac::new()? })
    }

    /// The AAC channel count, once the encoder exists.
    pub fn channels(&self) -> Option<usize> {
        self.aac.as_ref().map(|(e, _)| e.channels())
    }

    /// The AAC AudioSpecificConfig, once the encoder exists (after the first decoded packet).
    pub fn audio_specific_config(&self) -> Option<&[u8]> {
        self.aac.as_ref().map(|(e, _)| e.audio_specific_config())
    }

    /// Decodes one Opus packet and appends the AAC frames it completed. An undecodable packet
    /// is skipped (the next one decodes on its own); an encoder failure is an error.
    pub fn push(&mut self, rtp_ts: u32, payload: &[u8], arrival_ms: i64, out: &mut Vec<AacUnit>) -> Result<(), TranscodeError> {
        let ms = self.clock.ms(rtp_ts, arrival_ms);
        self.pcm.clear();
        if self.opus.decode(payload, &mut self.pcm).is_err() {
            return Ok(());
        }
        let (encoder, base_ms) = match self.aac.as_mut() {
            Some(a) => a,
            None => {
                // TOC byte: bit 2 is the stereo flag (RFC 6716 §3.1).
                let stereo = self.force_stereo || payload.first().is_some_and(|toc| toc & 0x04 != 0);
                let encoder = if stereo { AacEncoder::new(2, 96)? } else { AacEncoder::new(1, 64)? };
                self.aac.insert((encoder, ms))
            }
        };
        self.frames.clear();
        encoder.push(&self.pcm, &mut self.frames)?;
        out.extend(self.frames.drain(..).map(|f| AacUnit { ms: *base_ms + (f.ts48 / 48) as i64, data: f.data }));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_model::UserId;

    fn packet(seq: u64, ts: u32, marker: bool, payload: &[u8]) -> TapPacket {
        TapPacket {
            user: UserId::parse("a").unwrap(),
            stream: tessera_media::StreamKind::Main,
            codec: Codec::H264,
            seq,
            ts,
            marker,
            payload: Arc::from(payload),
            audio_level: None,
            composition_ms: 0,
            picture: None,
            fallback_for: None,
            layer_switch: false,
            rid: None,
            route: crate::sfu::PacketRoute::All,
        }
    }

    #[test]
    fn units_need_a_keyframe_first_and_after_a_gap() {
        let mut v = VideoInput::default();
        assert!(matches!(v.push(&packet(1, 0, true, &[0x41, 1]), 0).unwrap(), VideoUnit::Lost), "no keyframe yet");
        assert!(matches!(v.push(&packet(2, 3000, false, &[0x67, 1]), 33).unwrap(), VideoUnit::None));
        match v.push(&packet(3, 3000, true, &[0x65, 2]), 34).unwrap() {
            VideoUnit::Unit { nalus, keyframe: true, .. } => assert_eq!(nalus.len(), 2),
            _ => panic!("a keyframe unit"),
        }
        assert!(matches!(v.push(&packet(4, 6000, true, &[0x41, 3]), 67).unwrap(), VideoUnit::Unit { keyframe: false, .. }));
        // Sequence 5 is lost: the unit is dropped and the next ones wait for a keyframe.
        assert!(matches!(v.push(&packet(6, 9000, false, &[0x41, 4]), 100).unwrap(), VideoUnit::None));
        assert!(matches!(v.push(&packet(8, 9000, true, &[0x41, 5]), 100).unwrap(), VideoUnit::Lost));
        assert!(matches!(v.push(&packet(9, 12000, true, &[0x41, 6]), 133).unwrap(), VideoUnit::Lost));
    }

    #[test]
    fn track_clock_follows_rtp_and_reanchors_on_jumps() {
        let mut c = TrackClock::video();
        assert_eq!(c.ms(1000, 500), 500);
        assert_eq!(c.ms(1000 + 90 * 40, 545), 540, "RTP time, not arrival jitter");
        assert_eq!(c.ms(1000u32.wrapping_sub(90 * 10), 600), 490, "small steps back follow the RTP clock");
        assert_eq!(c.ms(5_000_000, 700), 700, "a jump re-anchors at arrival");
    }
}
