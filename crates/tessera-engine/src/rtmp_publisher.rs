//! An RTMP publisher's media path (PRODUCT.md §6.3), as a value: FLV/AVC video becomes H.264
//! RTP, AAC becomes 20 ms Opus RTP, each checked against the token's privileges. What cannot be
//! taken (other codecs, other AAC rates, B-frames when the app refuses them) is a [`Refusal`],
//! which the driver sends as the `onStatus` error before it closes the connection.
//!
//! B-frames (OBS's and ffmpeg's x264 defaults), when the app transcodes them: from the first
//! frame with a composition time, the original goes on as RTP for relays and recordings only
//! (`PacketRoute::Outputs`, decode-time stamps and the composition time beside them), and the
//! coded frames come out of `poll_transcode` for an `IngestTranscoder`, whose re-encoding is
//! what viewers and mix jobs get.

use crate::ingest_transcode::{CodedFrame, SourceVideo, TranscodeInput, TranscodeStart};
use crate::{IngestPacket, PacketRoute};
use std::collections::VecDeque;
use std::sync::Arc;
use tessera_media::{Codec, StreamKind};
use tessera_model::{BFramePolicy, Privileges};
use tessera_rtmp::flv::{AacConfig, AudioTag, AvcToRtp, EnhancedCodec, EnhancedPacket, VideoTag};
use tessera_transcode::AacToOpus;

/// RTP payload size for packetized H.264.
const MAX_RTP_PAYLOAD: usize = 1200;

/// Why a publish is refused: the `onStatus` description, `<code>: <message>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<tessera_rtmp::flv::FlvError> for Refusal {
    fn from(e: tessera_rtmp::flv::FlvError) -> Refusal {
        Refusal(e.to_string())
    }
}

impl Refusal {
    /// The token lacks `required` (the same words as the HTTP API's 403).
    pub fn privilege_missing(required: Privileges) -> Refusal {
        Refusal(format!("privilege_missing: the token lacks privilege {} ({})", required.bits(), tessera_model::privileges::describe(required)))
    }
}

pub struct RtmpPublisher {
    stream: StreamKind,
    privileges: Privileges,
    b_frames: BFramePolicy,
    video: AvcToRtp,
    video_ssrc: u32,
    /// The last AVC sequence header, for a transcoder.
    avc_config: Option<Vec<u8>>,
    /// The last Enhanced RTMP sequence start (HEVC, AV1, VP9) and its codec.
    enhanced_config: Option<(EnhancedCodec, Vec<u8>)>,
    /// An HEVC publish's original, kept for recordings: its configuration and RTP numbering.
    hevc_original: Option<(tessera_media::h265::HevcConfig, u64)>,
    /// An AV1 publish's original, for viewers that negotiated AV1 and for outputs.
    av1_original: Option<Av1Original>,
    /// What `onMetaData` said of the video (frame rate, kbit/s).
    metadata: (Option<f32>, Option<u32>),
    /// B-frames seen and transcoded: the original is for relays and recordings only.
    transcoding: bool,
    transcode: VecDeque<TranscodeInput>,
    audio: Option<AacToOpus>,
    audio_ssrc: u32,
    audio_seq: u64,
}

impl RtmpPublisher {
    pub fn new(stream: StreamKind, privileges: Privileges, b_frames: BFramePolicy) -> RtmpPublisher {
        RtmpPublisher {
            stream,
            privileges,
            b_frames,
            video: AvcToRtp::new(MAX_RTP_PAYLOAD),
            video_ssrc: tessera_model::random::ssrc(),
            avc_config: None,
            enhanced_config: None,
            hevc_original: None,
            av1_original: None,
            metadata: (None, None),
            transcoding: false,
            transcode: VecDeque::new(),
            audio: None,
            audio_ssrc: tessera_model::random::ssrc(),
            audio_seq: 1,
        }
    }

    fn check(&self, needed_main: Privileges) -> Result<(), Refusal> {
        let needed = if self.stream == StreamKind::Aux { Privileges::PUBLISH_AUX } else { needed_main };
        if self.privileges.contains(needed) {
            Ok(())
        } else {
            Err(Refusal::privilege_missing(needed))
        }
    }

    /// The encoder's `onMetaData`: a transcode's first guess at frame rate and bitrate.
    pub fn on_metadata(&mut self, video_fps: Option<f32>, video_kbps: Option<u32>) {
        self.metadata = (video_fps.or(self.metadata.0), video_kbps.or(self.metadata.1));
    }

    /// Whether B-frames were seen and are being transcoded.
    pub fn is_transcoding(&self) -> bool {
        self.transcoding
    }

    /// What the transcoder should take next (`TranscodeInput::Start` first).
    pub fn poll_transcode(&mut self) -> Option<TranscodeInput> {
        self.transcode.pop_front()
    }

    /// One FLV video message: its H.264 RTP packets (none until a keyframe after the header).
    pub fn on_video(&mut self, data: &[u8], timestamp_ms: u32) -> Result<Vec<IngestPacket>, Refusal> {
        self.check(Privileges::PUBLISH_VIDEO)?;
        let tag = VideoTag::parse(data)?;
        let mut composition_ms = 0;
        match &tag {
            VideoTag::SequenceHeader(record) => {
                self.avc_config = Some(record.to_vec());
                if self.transcoding {
                    self.transcode.push_back(TranscodeInput::Config(record.to_vec()));
                }
            }
            VideoTag::Frame { keyframe, composition_time_ms, data } => {
                composition_ms = *composition_time_ms;
                if composition_ms != 0 && !self.transcoding {
                    if self.b_frames == BFramePolicy::Refuse {
                        return Err(tessera_rtmp::flv::FlvError::BFrames.into());
                    }
                    // Frames before the sequence header are skipped anyway.
                    if let Some(config) = self.avc_config.clone() {
                        self.start_transcode(SourceVideo::H264, config);
                    }
                }
                if self.transcoding {
                    self.transcode.push_back(TranscodeInput::Frame(CodedFrame { data: data.to_vec(), dts_ms: timestamp_ms, cts_ms: composition_ms, keyframe: *keyframe }));
                }
            }
            VideoTag::Enhanced { codec, packet } => return self.on_enhanced(*codec, packet, timestamp_ms),
            VideoTag::EndOfSequence | VideoTag::Ignored => {}
        }
        let mut out = Vec::new();
        self.video.on_tag(&tag, timestamp_ms, &mut out)?;
        let route = if self.transcoding { PacketRoute::Outputs } else { PacketRoute::All };
        Ok(out
            .into_iter()
            .map(|o| IngestPacket {
                ssrc: self.video_ssrc,
                seq: o.seq,
                ts: o.ts,
                marker: o.marker,
                keyframe: o.keyframe,
                codec: Codec::H264,
                payload: Arc::from(o.payload),
                audio_level: None,
                route,
                composition_ms,
                picture: None,
                rid: None,
            })
            .collect())
    }

    fn start_transcode(&mut self, codec: SourceVideo, config: Vec<u8>) {
        self.transcoding = true;
        let (fps, kbps) = self.metadata;
        self.transcode.push_back(TranscodeInput::Start(TranscodeStart { codec, config, fps, kbps }));
    }

    /// HEVC, AV1 or VP9 over Enhanced RTMP: WebRTC viewers get it transcoded to H.264 (whatever
    /// the app's B-frame policy), and AV1 as it is where they negotiated AV1. Recordings and
    /// E-RTMP relay targets keep an HEVC or AV1 original (one packet per access unit, parameter
    /// sets or the sequence header ahead of each keyframe, `PacketRoute::Outputs`); VP9 is
    /// recorded and relayed as the H.264 re-encoding.
    fn on_enhanced(&mut self, codec: EnhancedCodec, packet: &EnhancedPacket<'_>, timestamp_ms: u32) -> Result<Vec<IngestPacket>, Refusal> {
        let source = match codec {
            EnhancedCodec::Hevc => SourceVideo::Hevc,
            EnhancedCodec::Av1 => SourceVideo::Av1,
            EnhancedCodec::Vp9 => SourceVideo::Vp9,
        };
        match packet {
            EnhancedPacket::SequenceStart(record) => {
                if codec == EnhancedCodec::Av1 {
                    let original = self.av1_original.get_or_insert_with(Av1Original::default);
                    original.sequence_header = tessera_media::av1::sequence_header_of_config(record);
                }
                if codec == EnhancedCodec::Hevc {
                    let config = tessera_media::h265::HevcConfig::parse(record)
                        .ok_or_else(|| Refusal("codec_unsupported: the HEVC (hvc1) decoder configuration record cannot be read".into()))?;
                    let seq = self.hevc_original.as_ref().map_or(1, |(_, s)| *s);
                    self.hevc_original = Some((config, seq));
                }
                let known = self.enhanced_config.as_ref().map(|(c, _)| *c);
                self.enhanced_config = Some((codec, record.to_vec()));
                if self.transcoding && known == Some(codec) {
                    self.transcode.push_back(TranscodeInput::Config(record.to_vec()));
                }
            }
            EnhancedPacket::Frame { keyframe, composition_time_ms, data } => {
                if !self.transcoding {
                    // Frames before the sequence start cannot be decoded: skipped.
                    match self.enhanced_config.clone() {
                        Some((c, config)) if c == codec => self.start_transcode(source, config),
                        _ => return Ok(Vec::new()),
                    }
                }
                self.transcode.push_back(TranscodeInput::Frame(CodedFrame { data: data.to_vec(), dts_ms: timestamp_ms, cts_ms: *composition_time_ms, keyframe: *keyframe }));
                if let (EnhancedCodec::Av1, Some(original)) = (codec, self.av1_original.as_mut()) {
                    let pts_ms = timestamp_ms.wrapping_add_signed(*composition_time_ms);
                    return original
                        .packets(data, *keyframe, pts_ms, self.video_ssrc)
                        .ok_or_else(|| Refusal("codec_unsupported: an AV1 (av01) frame's OBUs cannot be read".into()));
                }
                if let (EnhancedCodec::Hevc, Some((config, seq))) = (codec, self.hevc_original.as_mut()) {
                    use tessera_media::h265;
                    let nalus = tessera_media::h264::split_length_prefixed(data, config.length_size).map_err(|_| tessera_rtmp::flv::FlvError::Malformed("video"))?;
                    let irap = nalus.iter().any(|n| h265::is_irap(n));
                    let has_sps = nalus.iter().any(|n| h265::nal_type(n) == Some(h265::NAL_SPS));
                    let mut annex_b = Vec::with_capacity(data.len() + 64);
                    let sets = if irap && !has_sps { &config.parameter_sets[..] } else { &[] };
                    for n in sets.iter().map(|s| s.as_slice()).chain(nalus.iter().copied()) {
                        annex_b.extend_from_slice(&[0, 0, 0, 1]);
                        annex_b.extend_from_slice(n);
                    }
                    let packet = IngestPacket {
                        ssrc: self.video_ssrc,
                        seq: *seq,
                        ts: timestamp_ms.wrapping_mul(90),
                        marker: true,
                        keyframe: irap,
                        codec: Codec::H265,
                        payload: Arc::from(annex_b),
                        audio_level: None,
                        route: PacketRoute::Outputs,
                        composition_ms: *composition_time_ms,
                        picture: None,
                        rid: None,
                    };
                    *seq += 1;
                    return Ok(vec![packet]);
                }
            }
            EnhancedPacket::SequenceEnd => {}
        }
        Ok(Vec::new())
    }

    /// One FLV audio message: the sequence header sets up the transcoder, frames become 20 ms
    /// Opus RTP packets.
    pub fn on_audio(&mut self, data: &[u8], timestamp_ms: u32) -> Result<Vec<IngestPacket>, Refusal> {
        self.check(Privileges::PUBLISH_AUDIO)?;
        match AudioTag::parse(data)? {
            AudioTag::SequenceHeader(asc) => {
                let config = AacConfig::parse(asc)?;
                if !matches!(config.sample_rate, 44_100 | 48_000) {
                    return Err(Refusal(format!("codec_unsupported: AAC at {} Hz; send 44100 or 48000 Hz", config.sample_rate)));
                }
                self.audio = Some(AacToOpus::new(asc).map_err(|e| Refusal(format!("codec_unsupported: {e}")))?);
                Ok(Vec::new())
            }
            AudioTag::Frame(frame) => {
                let Some(t) = self.audio.as_mut() else { return Ok(Vec::new()) };
                let mut out = Vec::new();
                if let Err(e) = t.push(frame, timestamp_ms, &mut out) {
                    // One undecodable frame is a glitch, not a reason to drop the publisher.
                    tracing::debug!("AAC frame not decoded: {e}");
                }
                Ok(out
                    .into_iter()
                    .map(|f| {
                        let seq = self.audio_seq;
                        self.audio_seq += 1;
                        IngestPacket {
                            ssrc: self.audio_ssrc,
                            seq,
                            ts: f.ts,
                            marker: false,
                            keyframe: true,
                            codec: Codec::Opus,
                            payload: Arc::from(f.data),
                            audio_level: f.level,
                            route: PacketRoute::All,
                            composition_ms: 0,
                            picture: None,
                            rid: None,
                        }
                    })
                    .collect())
            }
        }
    }
}

/// An AV1 original: the sequence header from the `av1C` record (put ahead of keyframes that
/// lack one, so every keyframe starts a decodable sequence) and the numbering of its two
/// forms.
#[derive(Debug, Default)]
struct Av1Original {
    sequence_header: Option<Vec<u8>>,
    rtp_seq: u64,
    outputs_seq: u64,
}

impl Av1Original {
    /// One temporal unit: RTP for viewers that negotiated AV1, and the whole unit (no temporal
    /// delimiter, sizes on every OBU) for relays and recordings. `None`: the OBUs do not parse.
    fn packets(&mut self, data: &[u8], keyframe: bool, pts_ms: u32, ssrc: u32) -> Option<Vec<IngestPacket>> {
        use tessera_media::av1;
        let obus = av1::split_obus(data)?;
        let mut unit = Vec::with_capacity(data.len() + 32);
        if keyframe && !obus.iter().any(|o| o.obu_type() == av1::OBU_SEQUENCE_HEADER) {
            unit.extend_from_slice(self.sequence_header.as_deref().unwrap_or_default());
        }
        for o in obus.iter().filter(|o| o.obu_type() != av1::OBU_TEMPORAL_DELIMITER) {
            o.write_sized(&mut unit);
        }
        if unit.is_empty() {
            return Some(Vec::new());
        }
        let ts = pts_ms.wrapping_mul(90);
        let mut payloads = Vec::new();
        av1::packetize(&unit, keyframe, MAX_RTP_PAYLOAD, &mut payloads)?;
        let count = payloads.len();
        let mut out: Vec<IngestPacket> = payloads
            .into_iter()
            .enumerate()
            .map(|(i, payload)| {
                self.rtp_seq += 1;
                IngestPacket {
                    ssrc,
                    seq: self.rtp_seq,
                    ts,
                    marker: i + 1 == count,
                    keyframe,
                    codec: Codec::Av1,
                    payload: Arc::from(payload),
                    audio_level: None,
                    route: PacketRoute::Viewers,
                    composition_ms: 0,
                    picture: None,
                    rid: None,
                }
            })
            .collect();
        self.outputs_seq += 1;
        out.push(IngestPacket {
            ssrc,
            seq: self.outputs_seq,
            ts,
            marker: true,
            keyframe,
            codec: Codec::Av1,
            payload: Arc::from(unit),
            audio_level: None,
            route: PacketRoute::Outputs,
            composition_ms: 0,
            picture: None,
            rid: None,
        });
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_rtmp::flv::{avc_frame, avc_sequence_header};

    const SPS: [u8; 6] = [0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01];
    const PPS: [u8; 4] = [0x68, 0xce, 0x3c, 0x80];

    #[test]
    fn h264_becomes_rtp_with_keyframes_marked() {
        let mut p = RtmpPublisher::new(StreamKind::Main, Privileges::from_bits(Privileges::PUBLISH_VIDEO.bits() | Privileges::PUBLISH_AUDIO.bits()), BFramePolicy::Transcode);
        assert!(p.on_video(&avc_sequence_header(&SPS, &PPS), 0).unwrap().is_empty());
        let packets = p.on_video(&avc_frame(&[&[0x65, 1, 2, 3]], true, 0), 40).unwrap();
        assert!(!packets.is_empty());
        assert!(packets.iter().all(|x| x.codec == Codec::H264 && x.keyframe && x.ssrc == packets[0].ssrc));
        assert!(packets.last().unwrap().marker);
        let next = p.on_video(&avc_frame(&[&[0x41, 9, 9]], false, 0), 80).unwrap();
        assert!(next.iter().all(|x| !x.keyframe));
        assert_eq!(next[0].seq, packets.last().unwrap().seq + 1);
    }

    #[test]
    fn what_viewers_cannot_take_or_the_token_forbids_is_refused_with_its_code() {
        // Audio-only token publishing video; a main-stream token publishing aux.
        let mut p = RtmpPublisher::new(StreamKind::Main, Privileges::PUBLISH_AUDIO, BFramePolicy::Transcode);
        assert!(p.on_video(&avc_sequence_header(&SPS, &PPS), 0).unwrap_err().0.starts_with("privilege_missing: "));
        let mut p = RtmpPublisher::new(StreamKind::Aux, Privileges::from_bits(Privileges::PUBLISH_VIDEO.bits() | Privileges::PUBLISH_AUDIO.bits()), BFramePolicy::Transcode);
        assert!(p.on_audio(&[0xaf, 0, 0x11, 0x90], 0).unwrap_err().0.starts_with("privilege_missing: "));
        let mut p = RtmpPublisher::new(StreamKind::Main, Privileges::from_bits(Privileges::PUBLISH_VIDEO.bits() | Privileges::PUBLISH_AUDIO.bits()), BFramePolicy::Transcode);
        // Sorenson H.263 (codec id 2), then AAC at 32 kHz (ASC 0x12 0x90: LC, index 5).
        assert!(p.on_video(&[0x22, 0, 0, 0, 0], 0).unwrap_err().0.starts_with("codec_unsupported: "));
        let e = p.on_audio(&[0xaf, 0, 0x12, 0x90], 0).unwrap_err();
        assert!(e.0.starts_with("codec_unsupported: AAC at 32000 Hz"), "{e}");
        // 48 kHz mono is taken; frames before it are dropped quietly.
        assert!(p.on_audio(&[0xaf, 1, 1, 2, 3], 0).unwrap().is_empty());
        assert!(p.on_audio(&[0xaf, 0, 0x11, 0x88], 0).unwrap().is_empty());
    }

    #[test]
    fn b_frames_are_refused_or_handed_to_a_transcoder_with_the_original_kept_for_outputs() {
        let both = Privileges::from_bits(Privileges::PUBLISH_VIDEO.bits() | Privileges::PUBLISH_AUDIO.bits());
        let header = avc_sequence_header(&SPS, &PPS);
        // Refused where the app says so, with the spec's message.
        let mut p = RtmpPublisher::new(StreamKind::Main, both, BFramePolicy::Refuse);
        p.on_video(&header, 0).unwrap();
        let e = p.on_video(&avc_frame(&[&[0x65, 1]], true, 66), 0).unwrap_err();
        assert!(e.0.starts_with("b_frames_unsupported: ") && e.0.contains("bframes=0"), "{e}");
        // Transcoded: a frame without a composition time passes as before ...
        let mut p = RtmpPublisher::new(StreamKind::Main, both, BFramePolicy::Transcode);
        p.on_metadata(Some(30.0), None);
        p.on_video(&header, 0).unwrap();
        let plain = p.on_video(&avc_frame(&[&[0x65, 1]], true, 0), 0).unwrap();
        assert!(plain.iter().all(|x| x.route == PacketRoute::All) && p.poll_transcode().is_none() && !p.is_transcoding());
        // ... and from the first one with it, the original is for relays and recordings only
        // (decode-time stamps, the composition time beside them) and the transcoder gets it all.
        let b = p.on_video(&avc_frame(&[&[0x41, 2]], false, 66), 33).unwrap();
        assert!(!b.is_empty() && b.iter().all(|x| x.route == PacketRoute::Outputs && x.composition_ms == 66 && x.ts == 33 * 90), "{b:?}");
        assert_eq!(b[0].seq, plain.last().unwrap().seq + 1, "the original's sequence goes on");
        assert_eq!(p.poll_transcode(), Some(TranscodeInput::Start(TranscodeStart { codec: SourceVideo::H264, config: header[5..].to_vec(), fps: Some(30.0), kbps: None })));
        assert_eq!(
            p.poll_transcode(),
            Some(TranscodeInput::Frame(CodedFrame { data: avc_frame(&[&[0x41, 2]], false, 66)[5..].to_vec(), dts_ms: 33, cts_ms: 66, keyframe: false }))
        );
        assert!(p.poll_transcode().is_none() && p.is_transcoding());
        // A new sequence header reaches the transcoder too; audio is untouched.
        p.on_video(&header, 40).unwrap();
        assert!(matches!(p.poll_transcode(), Some(TranscodeInput::Config(_))));
        let later = p.on_video(&avc_frame(&[&[0x41, 3]], false, 0), 66).unwrap();
        assert!(later.iter().all(|x| x.route == PacketRoute::Outputs && x.composition_ms == 0));
        assert!(matches!(p.poll_transcode(), Some(TranscodeInput::Frame(f)) if f.dts_ms == 66));
    }

    #[test]
    fn hevc_over_enhanced_rtmp_is_transcoded_for_viewers_and_kept_for_recordings() {
        let both = Privileges::from_bits(Privileges::PUBLISH_VIDEO.bits() | Privileges::PUBLISH_AUDIO.bits());
        // Refusing B-frames does not refuse HEVC: it has to be transcoded either way.
        let mut p = RtmpPublisher::new(StreamKind::Main, both, BFramePolicy::Refuse);
        // hvcC: 22 bytes of fields (4-byte lengths), one array holding a VPS and an SPS.
        let mut record = vec![1u8];
        record.extend_from_slice(&[0; 20]);
        record.extend_from_slice(&[0xf3, 1, 0x20, 0, 2, 0, 2, 0x40, 1, 0, 2, 0x42, 1]);
        let mut start = vec![0x90];
        start.extend_from_slice(b"hvc1");
        start.extend_from_slice(&record);
        assert!(p.on_video(&start, 0).unwrap().is_empty());
        // An IDR (type 19) with a composition time of 33 ms.
        let mut idr = vec![0x91];
        idr.extend_from_slice(b"hvc1");
        idr.extend_from_slice(&[0, 0, 33, 0, 0, 0, 3, 19 << 1, 1, 7]);
        let out = p.on_video(&idr, 40).unwrap();
        assert_eq!(out.len(), 1, "one packet per access unit");
        let o = &out[0];
        assert_eq!((o.codec, o.route, o.keyframe, o.marker, o.ts, o.composition_ms), (Codec::H265, PacketRoute::Outputs, true, true, 40 * 90, 33));
        assert_eq!(&o.payload[..], &[0, 0, 0, 1, 0x40, 1, 0, 0, 0, 1, 0x42, 1, 0, 0, 0, 1, 19 << 1, 1, 7], "parameter sets ahead of the IDR, Annex-B");
        assert!(matches!(p.poll_transcode(), Some(TranscodeInput::Start(TranscodeStart { codec: SourceVideo::Hevc, .. }))));
        assert!(matches!(p.poll_transcode(), Some(TranscodeInput::Frame(f)) if f.cts_ms == 33 && f.keyframe));
        // A broken record is refused, naming the codec.
        let mut p = RtmpPublisher::new(StreamKind::Main, both, BFramePolicy::Transcode);
        let e = p.on_video(b"\x90hvc1\x01\x02", 0).unwrap_err();
        assert!(e.0.starts_with("codec_unsupported: the HEVC (hvc1)"), "{e}");
    }

    #[test]
    fn av1_goes_to_av1_viewers_as_rtp_and_to_outputs_whole_with_its_sequence_header() {
        let both = Privileges::from_bits(Privileges::PUBLISH_VIDEO.bits() | Privileges::PUBLISH_AUDIO.bits());
        let mut p = RtmpPublisher::new(StreamKind::Main, both, BFramePolicy::Transcode);
        // av1C with a sequence header OBU (type 1, sized).
        let seq = [0x0a, 3, 0, 0, 0];
        let mut start = b"\x90av01\x81\x08\x0c\x00".to_vec();
        start.extend_from_slice(&seq);
        assert!(p.on_video(&start, 0).unwrap().is_empty());
        // A keyframe without a sequence header: a temporal delimiter, then a 3000-byte frame
        // OBU (type 6) without a size field.
        let mut key = b"\x91av01\x12\x00\x30".to_vec();
        key.extend_from_slice(&[7; 3000]);
        let out = p.on_video(&key, 40).unwrap();
        let (rtp, outputs): (Vec<_>, Vec<_>) = out.iter().partition(|x| x.route == PacketRoute::Viewers);
        assert!(rtp.len() >= 3 && rtp.iter().all(|x| x.codec == Codec::Av1 && x.ts == 40 * 90 && x.keyframe));
        assert!(rtp[0].payload[0] & 0x08 != 0 && rtp.last().unwrap().marker && !rtp[0].marker);
        assert_eq!(tessera_media::picture_size::of_packet(Codec::Av1, &rtp[0].payload), None, "this header is too short for a size");
        assert_eq!(outputs.len(), 1);
        let mut expected = seq.to_vec();
        expected.extend_from_slice(&[0x32, 0xb8, 0x17]);
        expected.extend_from_slice(&[7; 3000]);
        assert!(outputs[0].payload[..] == expected[..], "sequence header first, no delimiter, sizes on every OBU");
        let payloads: Vec<&[u8]> = rtp.iter().map(|x| &x.payload[..]).collect();
        assert!(tessera_media::av1::depacketize(&payloads).unwrap()[2..] == expected[..]);
        assert!(matches!(p.poll_transcode(), Some(TranscodeInput::Start(TranscodeStart { codec: SourceVideo::Av1, .. }))));
        // The next frame continues both numberings; broken OBUs are refused, naming the codec.
        let next = p.on_video(b"\xa1av01\x32\x01\x05", 73).unwrap();
        assert_eq!(next.iter().map(|x| (x.seq, x.keyframe)).collect::<Vec<_>>(), vec![(rtp.last().unwrap().seq + 1, false), (2, false)]);
        let e = p.on_video(b"\xa1av01\x32\x09\x05", 106).unwrap_err();
        assert!(e.0.contains("AV1 (av01)") || e.0.contains("AV1"), "{e}");
    }
}
