//! The source's tapped packets → FLV tags for a relay's connections (RECORDING.md §1).

use super::relay::RelayMedia;
use super::tap_input::{AacUnit, OpusToAac, VideoInput, VideoUnit};
use crate::sfu::TapPacket;
use tessera_media::h264::{nal_type, NAL_PPS, NAL_SPS};
use tessera_media::{Codec, StreamKind};
use tessera_model::UserId;
use tessera_rtmp::flv;

/// One FLV tag body for the URL connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlvTag {
    VideoHeader(Vec<u8>),
    AudioHeader(Vec<u8>),
    Video {
        body: Vec<u8>,
        ms: u32,
        keyframe: bool,
    },
    Audio {
        body: Vec<u8>,
        ms: u32,
    },
    /// Video was lost: the source should send a keyframe.
    KeyframeWanted,
}

/// The source's tapped packets → FLV tags: H.264 access units passed through (SPS/PPS as a
/// new sequence header whenever they change, SEI kept), VP8 transcoded, Opus → AAC.
pub struct FlvProducer {
    user: UserId,
    stream: StreamKind,
    media: RelayMedia,
    video: VideoInput,
    audio: Option<OpusToAac>,
    sps: Vec<u8>,
    pps: Vec<u8>,
    aac: Vec<AacUnit>,
    audio_header_sent: bool,
}

impl FlvProducer {
    pub fn new(user: UserId, stream: StreamKind, media: RelayMedia) -> FlvProducer {
        FlvProducer { user, stream, media, video: VideoInput::default(), audio: None, sps: Vec::new(), pps: Vec::new(), aac: Vec::new(), audio_header_sent: false }
    }

    /// One packet of the room (others than the source's are ignored), arrived at `arrival_ms`
    /// on the relay's clock.
    pub fn push(&mut self, p: &TapPacket, arrival_ms: i64, out: &mut Vec<FlvTag>) -> Result<(), tessera_transcode::TranscodeError> {
        if p.user != self.user || p.stream != self.stream {
            return Ok(());
        }
        match p.codec {
            Codec::Opus if self.media.audio() => {
                let audio = match self.audio.as_mut() {
                    Some(a) => a,
                    None => self.audio.insert(OpusToAac::new()?),
                };
                self.aac.clear();
                audio.push(p.ts, &p.payload, arrival_ms, &mut self.aac)?;
                // The header once, as soon as the encoder exists (the first decoded packet).
                if let Some(asc) = audio.audio_specific_config().filter(|_| !self.audio_header_sent) {
                    self.audio_header_sent = true;
                    out.push(FlvTag::AudioHeader(flv::aac_sequence_header(asc)));
                }
                out.extend(self.aac.drain(..).map(|f| FlvTag::Audio { body: flv::aac_frame(&f.data), ms: f.ms as u32 }));
            }
            Codec::H264 | Codec::Vp8 if self.media.video() => {
                let (nalus, keyframe, ms, cts_ms) = match self.video.push(p, arrival_ms)? {
                    // Relays take H.264 only (`TapKind::Relay`).
                    VideoUnit::Unit { codec: Codec::H265 | Codec::Av1, .. } => return Ok(()),
                    VideoUnit::Unit { nalus, keyframe, ms, cts_ms, .. } => (nalus, keyframe, ms, cts_ms),
                    VideoUnit::Lost => {
                        out.push(FlvTag::KeyframeWanted);
                        return Ok(());
                    }
                    VideoUnit::None => return Ok(()),
                };
                let mut header_changed = false;
                for n in &nalus {
                    match nal_type(n) {
                        Some(NAL_SPS) if *n != self.sps => self.sps = n.clone(),
                        Some(NAL_PPS) if *n != self.pps => self.pps = n.clone(),
                        _ => continue,
                    }
                    header_changed = true;
                }
                if header_changed && !self.sps.is_empty() && !self.pps.is_empty() {
                    out.push(FlvTag::VideoHeader(flv::avc_sequence_header(&self.sps, &self.pps)));
                }
                let units: Vec<&[u8]> = nalus.iter().map(|n| n.as_slice()).collect();
                out.push(FlvTag::Video { body: flv::avc_frame(&units, keyframe, cts_ms), ms: ms as u32, keyframe });
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn h264(seq: u64, ts: u32, marker: bool, payload: &[u8]) -> TapPacket {
        TapPacket {
            user: UserId::parse("alice").unwrap(),
            stream: StreamKind::Main,
            codec: Codec::H264,
            seq,
            ts,
            marker,
            payload: Arc::from(payload),
            audio_level: None,
            composition_ms: 0,
            picture: None,
            fallback_for: None,
        }
    }

    #[test]
    fn flv_producer_sends_a_header_before_the_first_keyframe_and_asks_for_one_after_loss() {
        let mut p = FlvProducer::new(UserId::parse("alice").unwrap(), StreamKind::Main, RelayMedia::AudioVideo);
        let mut out = Vec::new();
        p.push(&h264(1, 0, true, &[0x41, 9]), 0, &mut out).unwrap();
        assert_eq!(out, vec![FlvTag::KeyframeWanted], "a delta frame first: wait for a keyframe");
        out.clear();
        p.push(&h264(2, 3000, false, &[0x67, 1, 2]), 33, &mut out).unwrap();
        p.push(&h264(3, 3000, false, &[0x68, 3]), 33, &mut out).unwrap();
        p.push(&h264(4, 3000, true, &[0x65, 4]), 34, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], FlvTag::VideoHeader(flv::avc_sequence_header(&[0x67, 1, 2], &[0x68, 3])));
        assert!(matches!(&out[1], FlvTag::Video { keyframe: true, ms: 33, .. }));
        out.clear();
        // The same SPS/PPS again: no new header. Another user's packets: ignored.
        p.push(&h264(5, 6000, false, &[0x67, 1, 2]), 67, &mut out).unwrap();
        p.push(&h264(6, 6000, true, &[0x65, 5]), 67, &mut out).unwrap();
        let mut other = h264(1, 0, true, &[0x65, 1]);
        other.user = UserId::parse("bob").unwrap();
        p.push(&other, 68, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert!(matches!(&out[0], FlvTag::Video { keyframe: true, ms: 66, .. }));
    }

    #[test]
    fn flv_producer_turns_opus_into_aac_with_one_header() {
        let mut enc = tessera_transcode::decode::OpusEncoder::new(2, 64).unwrap();
        let pcm: Vec<f32> = (0..48_000 * 2).map(|i| ((i / 2) as f32 * 440.0 * std::f32::consts::TAU / 48_000.0).sin() * 0.3).collect();
        let mut opus = Vec::new();
        for frame in pcm.chunks(960 * 2) {
            enc.encode(frame, &mut opus).unwrap();
        }
        let mut p = FlvProducer::new(UserId::parse("alice").unwrap(), StreamKind::Main, RelayMedia::Audio);
        let mut out = Vec::new();
        for (i, f) in opus.iter().enumerate() {
            let packet = TapPacket { codec: Codec::Opus, seq: i as u64, ts: f.ts, marker: true, payload: Arc::from(f.data.as_slice()), ..h264(0, 0, true, &[]) };
            p.push(&packet, 20 * i as i64, &mut out).unwrap();
        }
        let headers = out.iter().filter(|t| matches!(t, FlvTag::AudioHeader(_))).count();
        let frames: Vec<u32> = out.iter().filter_map(|t| if let FlvTag::Audio { ms, .. } = t { Some(*ms) } else { None }).collect();
        assert_eq!(headers, 1);
        assert!(matches!(out[0], FlvTag::AudioHeader(_)), "the header comes first");
        // A second of audio is ≈ 46 AAC frames, 21.3 ms apart.
        assert!((44..=47).contains(&frames.len()), "{} frames", frames.len());
        assert!(frames.windows(2).all(|w| (21..=22).contains(&(w[1] - w[0]))), "{frames:?}");
    }
}
