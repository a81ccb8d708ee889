//! The source's tapped packets → FLV tags for a relay's connections (RECORDING.md §1).

use super::relay::RelayMedia;
use super::tap_input::{AacUnit, OpusToAac, VideoInput, VideoUnit};
use crate::sfu::TapPacket;
use tessera_media::h264::{nal_type, NAL_PPS, NAL_SPS};
use tessera_media::{Codec, StreamKind};
use tessera_model::UserId;
use tessera_rtmp::flv;

/// Which URLs take a video tag. A source whose original is HEVC or AV1 gives two video
/// streams: the original for Enhanced RTMP URLs, its H.264 re-encoding for legacy ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// H.264 that is the source itself: every URL.
    Both,
    /// H.264 re-encoded from an original: URLs without Enhanced RTMP.
    Legacy,
    /// The HEVC or AV1 original as Enhanced RTMP: URLs that take it.
    Enhanced,
}

impl Lane {
    /// Whether a URL (Enhanced RTMP or not) takes this lane.
    pub fn for_url(self, enhanced: bool) -> bool {
        match self {
            Lane::Both => true,
            Lane::Legacy => !enhanced,
            Lane::Enhanced => enhanced,
        }
    }
}

/// One FLV tag body for the URL connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlvTag {
    VideoHeader {
        body: Vec<u8>,
        lane: Lane,
    },
    AudioHeader(Vec<u8>),
    Video {
        body: Vec<u8>,
        ms: u32,
        keyframe: bool,
        lane: Lane,
    },
    Audio {
        body: Vec<u8>,
        ms: u32,
    },
    /// Video was lost: the source should send a keyframe.
    KeyframeWanted,
}

/// The source's tapped packets → FLV tags: H.264 access units passed through (SPS/PPS as a
/// new sequence header whenever they change, SEI kept), VP8 transcoded, Opus → AAC; an HEVC or
/// AV1 original as Enhanced RTMP tags (its `hvcC`/`av1C` built from the parameter sets or the
/// sequence header ahead of its keyframes) beside its H.264 re-encoding.
pub struct FlvProducer {
    user: UserId,
    stream: StreamKind,
    media: RelayMedia,
    video: VideoInput,
    /// The original's packets (their own numbering).
    original: VideoInput,
    /// The original's last configuration record.
    original_header: Vec<u8>,
    audio: Option<OpusToAac>,
    sps: Vec<u8>,
    pps: Vec<u8>,
    aac: Vec<AacUnit>,
    audio_header_sent: bool,
}

impl FlvProducer {
    pub fn new(user: UserId, stream: StreamKind, media: RelayMedia) -> FlvProducer {
        FlvProducer {
            user,
            stream,
            media,
            video: VideoInput::default(),
            original: VideoInput::default(),
            original_header: Vec::new(),
            audio: None,
            sps: Vec::new(),
            pps: Vec::new(),
            aac: Vec::new(),
            audio_header_sent: false,
        }
    }

    /// An HEVC or AV1 original's access unit → its header when new, then the frame.
    fn push_original(&mut self, p: &TapPacket, arrival_ms: i64, out: &mut Vec<FlvTag>) -> Result<(), tessera_transcode::TranscodeError> {
        let (nalus, keyframe, ms, cts_ms, codec) = match self.original.push(p, arrival_ms)? {
            VideoUnit::Unit { nalus, keyframe, ms, cts_ms, codec } => (nalus, keyframe, ms, cts_ms, codec),
            // The original cannot be asked for a keyframe (an RTMP publisher): its next one comes.
            VideoUnit::Lost | VideoUnit::None => return Ok(()),
        };
        let (enhanced, record) = match codec {
            Codec::H265 => {
                use tessera_media::h265;
                let find = |t: u8| nalus.iter().rev().find(|n| h265::nal_type(n) == Some(t));
                let record = match (find(h265::NAL_VPS), find(h265::NAL_SPS), find(h265::NAL_PPS)) {
                    (Some(v), Some(s), Some(p)) if keyframe => h265::hvcc_record(v, s, p),
                    _ => None,
                };
                (flv::EnhancedCodec::Hevc, record)
            }
            Codec::Av1 => (flv::EnhancedCodec::Av1, keyframe.then(|| tessera_media::av1::av1c_record(&nalus.concat())).flatten()),
            _ => return Ok(()),
        };
        if let Some(record) = record.filter(|r| *r != self.original_header) {
            out.push(FlvTag::VideoHeader { body: flv::enhanced_sequence_start(enhanced, &record), lane: Lane::Enhanced });
            self.original_header = record;
        }
        if self.original_header.is_empty() {
            return Ok(()); // nothing decodes before the first configuration
        }
        let data = match enhanced {
            flv::EnhancedCodec::Hevc => {
                let mut d = Vec::with_capacity(nalus.iter().map(|n| n.len() + 4).sum());
                tessera_media::h264::write_length_prefixed(&nalus, &mut d);
                d
            }
            _ => nalus.concat(),
        };
        out.push(FlvTag::Video { body: flv::enhanced_frame(enhanced, keyframe, cts_ms, &data), ms: ms as u32, keyframe, lane: Lane::Enhanced });
        Ok(())
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
            Codec::H265 | Codec::Av1 if self.media.video() => self.push_original(p, arrival_ms, out)?,
            Codec::H264 | Codec::Vp8 if self.media.video() => {
                let lane = if p.fallback_for.is_some() { Lane::Legacy } else { Lane::Both };
                let (nalus, keyframe, ms, cts_ms) = match self.video.push(p, arrival_ms)? {
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
                    out.push(FlvTag::VideoHeader { body: flv::avc_sequence_header(&self.sps, &self.pps), lane });
                }
                let units: Vec<&[u8]> = nalus.iter().map(|n| n.as_slice()).collect();
                out.push(FlvTag::Video { body: flv::avc_frame(&units, keyframe, cts_ms), ms: ms as u32, keyframe, lane });
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
            layer_switch: false,
            rid: None,
            route: crate::sfu::PacketRoute::All,
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
        assert_eq!(out[0], FlvTag::VideoHeader { body: flv::avc_sequence_header(&[0x67, 1, 2], &[0x68, 3]), lane: Lane::Both });
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

    #[test]
    fn an_hevc_original_goes_to_enhanced_urls_and_its_h264_fallback_to_the_others() {
        let mut p = FlvProducer::new(UserId::parse("alice").unwrap(), StreamKind::Main, RelayMedia::AudioVideo);
        let mut out = Vec::new();
        // libx265's 640x360 SPS, with a VPS and a PPS ahead of an IDR (type 19), as the RTMP
        // publisher hands its HEVC original over: one packet per access unit, Annex-B.
        let sps: &[u8] = &[
            0x42, 0x01, 0x01, 0x01, 0x60, 0x00, 0x00, 0x03, 0x00, 0x90, 0x00, 0x00, 0x03, 0x00, 0x00, 0x03, 0x00, 0x3f, 0xa0, 0x05, 0x02, 0x01, 0x69, 0x65, 0x95, 0x9a, 0x49, 0x32,
            0xbc, 0x05, 0xa0, 0x20, 0x00, 0x00, 0x03, 0x00, 0x20, 0x00, 0x00, 0x03, 0x03, 0xc1,
        ];
        let mut au = Vec::new();
        for n in [&[0x40, 1, 0x0c][..], sps, &[0x44, 1, 0xc1], &[19 << 1, 1, 0xaf]] {
            au.extend_from_slice(&[0, 0, 0, 1]);
            au.extend_from_slice(n);
        }
        let original = TapPacket { codec: Codec::H265, composition_ms: 33, ..h264(1, 9000, true, &au) };
        p.push(&original, 100, &mut out).unwrap();
        assert_eq!(out.len(), 2, "{out:?}");
        let FlvTag::VideoHeader { body, lane: Lane::Enhanced } = &out[0] else { panic!("{:?}", out[0]) };
        let Ok(flv::VideoTag::Enhanced { codec: flv::EnhancedCodec::Hevc, packet: flv::EnhancedPacket::SequenceStart(record) }) = flv::VideoTag::parse(body) else { panic!() };
        assert_eq!(tessera_media::h265::HevcConfig::parse(record).unwrap().parameter_sets.len(), 3);
        let FlvTag::Video { body, keyframe: true, lane: Lane::Enhanced, .. } = &out[1] else { panic!("{:?}", out[1]) };
        let Ok(flv::VideoTag::Enhanced { packet: flv::EnhancedPacket::Frame { keyframe: true, composition_time_ms: 33, data }, .. }) = flv::VideoTag::parse(body) else { panic!() };
        assert_eq!(&data[data.len() - 7..], &[0, 0, 0, 3, 19 << 1, 1, 0xaf], "length-prefixed NAL units");
        // Its H.264 re-encoding is for the other URLs; H.264 that is the source is for all.
        out.clear();
        let fallback = |seq, payload: &[u8]| TapPacket { fallback_for: Some(Codec::H265), ..h264(seq, 9000, seq == 12, payload) };
        p.push(&fallback(10, &[0x67, 1, 2]), 100, &mut out).unwrap();
        p.push(&fallback(11, &[0x68, 3]), 100, &mut out).unwrap();
        p.push(&fallback(12, &[0x65, 4]), 100, &mut out).unwrap();
        assert!(out.len() == 2 && out.iter().all(|t| matches!(t, FlvTag::VideoHeader { lane: Lane::Legacy, .. } | FlvTag::Video { lane: Lane::Legacy, .. })), "{out:?}");
        assert!(Lane::Legacy.for_url(false) && !Lane::Legacy.for_url(true) && Lane::Enhanced.for_url(true) && Lane::Both.for_url(true));
    }
}
