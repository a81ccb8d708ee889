//! FLV tag bodies as RTMP audio and video messages carry them (FLV spec v10 §E.4.2–E.4.3):
//! H.264 (AVC) video with its sequence header and composition time, AAC audio with its
//! AudioSpecificConfig; and Enhanced RTMP video (veovera E-RTMP v2: the FourCC header OBS 30+
//! and FFmpeg 6.1+ send for HEVC, AV1 and VP9, single- or multitrack). Anything else is refused
//! with the code RTMP rejections use.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoTag<'a> {
    /// AVCDecoderConfigurationRecord: SPS, PPS and the NAL length size.
    SequenceHeader(&'a [u8]),
    /// One access unit of length-prefixed NAL units.
    Frame {
        keyframe: bool,
        composition_time_ms: i32,
        data: &'a [u8],
    },
    EndOfSequence,
    /// HEVC, AV1 or VP9 over Enhanced RTMP (H.264 in the enhanced header comes as the variants
    /// above).
    Enhanced {
        codec: EnhancedCodec,
        packet: EnhancedPacket<'a>,
    },
    /// Nothing to decode: metadata, a command frame, an extension this parser skips.
    Ignored,
}

/// The codecs Enhanced RTMP adds (FourCC `hvc1`, `av01`, `vp09`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnhancedCodec {
    Hevc,
    Av1,
    Vp9,
}

impl EnhancedCodec {
    pub fn fourcc(self) -> &'static [u8; 4] {
        match self {
            EnhancedCodec::Hevc => b"hvc1",
            EnhancedCodec::Av1 => b"av01",
            EnhancedCodec::Vp9 => b"vp09",
        }
    }

    /// What error messages and logs call it.
    pub fn name(self) -> &'static str {
        match self {
            EnhancedCodec::Hevc => "HEVC (hvc1)",
            EnhancedCodec::Av1 => "AV1 (av01)",
            EnhancedCodec::Vp9 => "VP9 (vp09)",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnhancedPacket<'a> {
    /// The decoder configuration record (`hvcC`, `av1C`, `vpcC`).
    SequenceStart(&'a [u8]),
    /// One picture: HEVC as length-prefixed NAL units, AV1 as low-overhead OBUs, VP9 as a frame.
    Frame {
        keyframe: bool,
        composition_time_ms: i32,
        data: &'a [u8],
    },
    SequenceEnd,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioTag<'a> {
    /// AudioSpecificConfig.
    SequenceHeader(&'a [u8]),
    /// One raw AAC frame.
    Frame(&'a [u8]),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlvError {
    #[error("codec_unsupported: video codec id {0} is not H.264 (AVC, id 7); send H.264, or HEVC or AV1 over Enhanced RTMP")]
    VideoCodec(u8),
    #[error("codec_unsupported: codec '{}' over Enhanced RTMP is not supported; send H.264, HEVC (hvc1), AV1 (av01) or VP9 (vp09)", String::from_utf8_lossy(.0).escape_default())]
    EnhancedVideo([u8; 4]),
    #[error("codec_unsupported: audio format {0} is not AAC (id 10); send AAC")]
    AudioCodec(u8),
    #[error("codec_unsupported: AAC with {0} channels is not supported; send mono or stereo AAC")]
    AudioChannels(u8),
    #[error("b_frames_unsupported: B-frames are not supported; set bframes=0 (OBS: x264 options \"bframes=0\" or profile baseline; ffmpeg: -bf 0)")]
    BFrames,
    #[error("invalid_parameter: a truncated or malformed FLV {0} tag")]
    Malformed(&'static str),
}

impl FlvError {
    /// The code of PRODUCT.md §6.3 rejections.
    pub fn code(&self) -> &'static str {
        match self {
            FlvError::VideoCodec(_) | FlvError::EnhancedVideo(_) | FlvError::AudioCodec(_) | FlvError::AudioChannels(_) => "codec_unsupported",
            FlvError::BFrames => "b_frames_unsupported",
            FlvError::Malformed(_) => "invalid_parameter",
        }
    }
}

const CODEC_AVC: u8 = 7;
const SOUND_AAC: u8 = 10;

impl<'a> VideoTag<'a> {
    /// Parses a video message. A frame with a composition-time offset other than 0 means the
    /// encoder sends B-frames, which WebRTC viewers cannot take in order: the caller decides
    /// (`FlvError::BFrames` is its refusal).
    pub fn parse(data: &'a [u8]) -> Result<VideoTag<'a>, FlvError> {
        let (&first, rest) = data.split_first().ok_or(FlvError::Malformed("video"))?;
        let frame_type = first >> 4;
        let codec = first & 0x0f;
        // Enhanced RTMP: the high bit says a FourCC follows instead of a codec id.
        if first & 0x80 != 0 {
            return parse_enhanced((first >> 4) & 0x07, first & 0x0f, rest);
        }
        if codec != CODEC_AVC {
            return Err(FlvError::VideoCodec(codec));
        }
        if rest.len() < 4 {
            return Err(FlvError::Malformed("video"));
        }
        let packet_type = rest[0];
        // Composition time: signed 24 bits.
        let cts = i32::from_be_bytes([if rest[1] & 0x80 != 0 { 0xff } else { 0 }, rest[1], rest[2], rest[3]]);
        let body = &rest[4..];
        match packet_type {
            0 => Ok(VideoTag::SequenceHeader(body)),
            1 => Ok(VideoTag::Frame { keyframe: frame_type == 1, composition_time_ms: cts, data: body }),
            2 => Ok(VideoTag::EndOfSequence),
            _ => Err(FlvError::Malformed("video")),
        }
    }
}

const ENHANCED_SEQUENCE_START: u8 = 0;
const ENHANCED_CODED_FRAMES: u8 = 1;
const ENHANCED_SEQUENCE_END: u8 = 2;
const ENHANCED_CODED_FRAMES_X: u8 = 3;
const ENHANCED_MULTITRACK: u8 = 6;
const FRAME_TYPE_COMMAND: u8 = 5;

fn fourcc(data: &[u8]) -> Result<[u8; 4], FlvError> {
    let f = data.get(..4).ok_or(FlvError::Malformed("video"))?;
    Ok([f[0], f[1], f[2], f[3]])
}

/// The rest of an enhanced video tag after its first byte. A multitrack tag gives its first
/// track (the others are renditions of the same picture; Tessera takes one).
fn parse_enhanced(frame_type: u8, packet_type: u8, rest: &[u8]) -> Result<VideoTag<'_>, FlvError> {
    if frame_type == FRAME_TYPE_COMMAND {
        return Ok(VideoTag::Ignored);
    }
    let (packet_type, fourcc, body) = if packet_type == ENHANCED_MULTITRACK {
        let (&kind, rest) = rest.split_first().ok_or(FlvError::Malformed("video"))?;
        let (multitrack, packet_type) = (kind >> 4, kind & 0x0f);
        let size24 = |b: &[u8]| b.get(..3).map(|s| u32::from_be_bytes([0, s[0], s[1], s[2]]) as usize).ok_or(FlvError::Malformed("video"));
        match multitrack {
            // One track: FourCC, track id, the body.
            0 => (packet_type, fourcc(rest)?, rest.get(5..).ok_or(FlvError::Malformed("video"))?),
            // Many tracks of one codec: FourCC, then (track id, size, body) each; many tracks of
            // many codecs: (FourCC, track id, size, body) each. The first track reads the same.
            1 | 2 => {
                let f = fourcc(rest)?;
                let size = size24(rest.get(5..).ok_or(FlvError::Malformed("video"))?)?;
                (packet_type, f, rest.get(8..8 + size).ok_or(FlvError::Malformed("video"))?)
            }
            _ => return Err(FlvError::Malformed("video")),
        }
    } else {
        (packet_type, fourcc(rest)?, &rest[4..])
    };
    let codec = match &fourcc {
        b"hvc1" => Some(EnhancedCodec::Hevc),
        b"av01" => Some(EnhancedCodec::Av1),
        b"vp09" => Some(EnhancedCodec::Vp9),
        b"avc1" => None,
        _ => return Err(FlvError::EnhancedVideo(fourcc)),
    };
    let keyframe = frame_type == 1;
    // HEVC and AVC coded frames carry a composition time (SI24); the X form and the others not.
    let (cts, data) = match packet_type {
        ENHANCED_CODED_FRAMES if matches!(&fourcc, b"hvc1" | b"avc1") => {
            let c = body.get(..3).ok_or(FlvError::Malformed("video"))?;
            (i32::from_be_bytes([if c[0] & 0x80 != 0 { 0xff } else { 0 }, c[0], c[1], c[2]]), &body[3..])
        }
        _ => (0, body),
    };
    Ok(match (codec, packet_type) {
        (None, ENHANCED_SEQUENCE_START) => VideoTag::SequenceHeader(body),
        (None, ENHANCED_CODED_FRAMES | ENHANCED_CODED_FRAMES_X) => VideoTag::Frame { keyframe, composition_time_ms: cts, data },
        (None, ENHANCED_SEQUENCE_END) => VideoTag::EndOfSequence,
        (Some(codec), ENHANCED_SEQUENCE_START) => VideoTag::Enhanced { codec, packet: EnhancedPacket::SequenceStart(body) },
        (Some(codec), ENHANCED_CODED_FRAMES | ENHANCED_CODED_FRAMES_X) => VideoTag::Enhanced { codec, packet: EnhancedPacket::Frame { keyframe, composition_time_ms: cts, data } },
        (Some(codec), ENHANCED_SEQUENCE_END) => VideoTag::Enhanced { codec, packet: EnhancedPacket::SequenceEnd },
        // Metadata (HDR colour info), MPEG-2 TS sequence start, ModEx: nothing to decode.
        _ => VideoTag::Ignored,
    })
}

impl<'a> AudioTag<'a> {
    pub fn parse(data: &'a [u8]) -> Result<AudioTag<'a>, FlvError> {
        let (&first, rest) = data.split_first().ok_or(FlvError::Malformed("audio"))?;
        let format = first >> 4;
        if format != SOUND_AAC {
            return Err(FlvError::AudioCodec(format));
        }
        let (&packet_type, body) = rest.split_first().ok_or(FlvError::Malformed("audio"))?;
        match packet_type {
            0 => Ok(AudioTag::SequenceHeader(body)),
            1 => Ok(AudioTag::Frame(body)),
            _ => Err(FlvError::Malformed("audio")),
        }
    }
}

/// What an AudioSpecificConfig says (ISO/IEC 14496-3 §1.6.2.1), enough to set up a decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AacConfig {
    pub object_type: u8,
    pub sample_rate: u32,
    pub channels: u8,
}

const AAC_RATES: [u32; 13] = [96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350];

impl AacConfig {
    pub fn parse(asc: &[u8]) -> Result<AacConfig, FlvError> {
        if asc.len() < 2 {
            return Err(FlvError::Malformed("audio"));
        }
        let object_type = asc[0] >> 3;
        let freq_index = ((asc[0] & 0x07) << 1) | (asc[1] >> 7);
        let channels = (asc[1] >> 3) & 0x0f;
        let sample_rate = *AAC_RATES.get(freq_index as usize).ok_or(FlvError::Malformed("audio"))?;
        if object_type == 0 {
            return Err(FlvError::Malformed("audio"));
        }
        // 0 is "defined in the program config element", 7 is 7.1: all beyond stereo.
        if channels == 0 || channels > 2 {
            return Err(FlvError::AudioChannels(if channels == 0 { 0 } else { [0, 1, 2, 3, 4, 5, 6, 8][channels as usize % 8] }));
        }
        Ok(AacConfig { object_type, sample_rate, channels })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_tags() {
        assert_eq!(VideoTag::parse(&[0x17, 0, 0, 0, 0, 1, 2]).unwrap(), VideoTag::SequenceHeader(&[1, 2]));
        assert_eq!(VideoTag::parse(&[0x17, 1, 0, 0, 0, 9]).unwrap(), VideoTag::Frame { keyframe: true, composition_time_ms: 0, data: &[9] });
        assert_eq!(VideoTag::parse(&[0x27, 1, 0, 0, 0]).unwrap(), VideoTag::Frame { keyframe: false, composition_time_ms: 0, data: &[] });
        assert_eq!(VideoTag::parse(&[0x27, 2, 0, 0, 0]).unwrap(), VideoTag::EndOfSequence);
    }

    #[test]
    fn composition_times_are_read_and_other_codecs_are_refused_with_their_codes() {
        // Composition time 40 ms (and a negative one): B-frames.
        assert_eq!(VideoTag::parse(&[0x27, 1, 0, 0, 40, 1]).unwrap(), VideoTag::Frame { keyframe: false, composition_time_ms: 40, data: &[1] });
        assert_eq!(VideoTag::parse(&[0x27, 1, 0xff, 0xff, 0xd8, 1]).unwrap(), VideoTag::Frame { keyframe: false, composition_time_ms: -40, data: &[1] });
        let e = FlvError::BFrames;
        assert_eq!(e.code(), "b_frames_unsupported");
        assert!(e.to_string().contains("bframes=0") && e.to_string().contains("-bf 0"), "{e}");
        // VP6 (4), HEVC over enhanced RTMP (the codec nibble 12).
        assert_eq!(VideoTag::parse(&[0x14, 1, 0, 0, 0]).unwrap_err().code(), "codec_unsupported");
        assert_eq!(VideoTag::parse(&[0x1c, 1, 0, 0, 0]).unwrap_err(), FlvError::VideoCodec(12));
        // MP3 audio (2).
        assert_eq!(AudioTag::parse(&[0x2f, 1, 0]).unwrap_err(), FlvError::AudioCodec(2));
    }

    #[test]
    fn enhanced_rtmp_tags() {
        // HEVC: sequence start, coded frames with a composition time, the X form without.
        assert_eq!(VideoTag::parse(b"\x90hvc1\x01\x02").unwrap(), VideoTag::Enhanced { codec: EnhancedCodec::Hevc, packet: EnhancedPacket::SequenceStart(&[1, 2]) });
        assert_eq!(
            VideoTag::parse(b"\x91hvc1\x00\x00\x42\x09").unwrap(),
            VideoTag::Enhanced { codec: EnhancedCodec::Hevc, packet: EnhancedPacket::Frame { keyframe: true, composition_time_ms: 66, data: &[9] } }
        );
        assert_eq!(
            VideoTag::parse(b"\xa3hvc1\x09").unwrap(),
            VideoTag::Enhanced { codec: EnhancedCodec::Hevc, packet: EnhancedPacket::Frame { keyframe: false, composition_time_ms: 0, data: &[9] } }
        );
        // AV1 coded frames have no composition time; its sequence end.
        assert_eq!(
            VideoTag::parse(b"\x91av01\x0a\x0b").unwrap(),
            VideoTag::Enhanced { codec: EnhancedCodec::Av1, packet: EnhancedPacket::Frame { keyframe: true, composition_time_ms: 0, data: &[10, 11] } }
        );
        assert_eq!(VideoTag::parse(b"\x92av01").unwrap(), VideoTag::Enhanced { codec: EnhancedCodec::Av1, packet: EnhancedPacket::SequenceEnd });
        // H.264 in the enhanced header is plain AVC.
        assert_eq!(VideoTag::parse(b"\x90avc1\x01").unwrap(), VideoTag::SequenceHeader(&[1]));
        assert_eq!(VideoTag::parse(b"\x91avc1\x00\x00\x00\x05").unwrap(), VideoTag::Frame { keyframe: true, composition_time_ms: 0, data: &[5] });
        // Multitrack: one track (FourCC, track 0, body), many tracks (track 0 of its size).
        assert_eq!(
            VideoTag::parse(b"\x96\x01hvc1\x00\x00\x00\x00\x07").unwrap(),
            VideoTag::Enhanced { codec: EnhancedCodec::Hevc, packet: EnhancedPacket::Frame { keyframe: true, composition_time_ms: 0, data: &[7] } }
        );
        assert_eq!(
            VideoTag::parse(b"\x96\x13av01\x00\x00\x00\x02\x07\x08\x01\x00\x00\x01\x09").unwrap(),
            VideoTag::Enhanced { codec: EnhancedCodec::Av1, packet: EnhancedPacket::Frame { keyframe: true, composition_time_ms: 0, data: &[7, 8] } }
        );
        // Metadata and command frames are skipped; unknown FourCCs and truncations refused.
        assert_eq!(VideoTag::parse(b"\x94hvc1\x02").unwrap(), VideoTag::Ignored);
        assert_eq!(VideoTag::parse(b"\xd0hvc1").unwrap(), VideoTag::Ignored);
        let e = VideoTag::parse(b"\x91xyz1\x00").unwrap_err();
        assert!(e.to_string().starts_with("codec_unsupported: codec 'xyz1'"), "{e}");
        assert_eq!(VideoTag::parse(b"\x91hv").unwrap_err().code(), "invalid_parameter");
        assert_eq!(VideoTag::parse(b"\x96\x13av01\x00\x00\x00\x09\x07").unwrap_err().code(), "invalid_parameter");
    }

    #[test]
    fn audio_tags_and_config() {
        assert_eq!(AudioTag::parse(&[0xaf, 0, 0x12, 0x10]).unwrap(), AudioTag::SequenceHeader(&[0x12, 0x10]));
        assert_eq!(AudioTag::parse(&[0xaf, 1, 7]).unwrap(), AudioTag::Frame(&[7]));
        // AAC-LC, 44.1 kHz, stereo: 0x12 0x10.
        assert_eq!(AacConfig::parse(&[0x12, 0x10]).unwrap(), AacConfig { object_type: 2, sample_rate: 44100, channels: 2 });
        // AAC-LC, 48 kHz, mono: 0x11 0x88.
        assert_eq!(AacConfig::parse(&[0x11, 0x88]).unwrap(), AacConfig { object_type: 2, sample_rate: 48000, channels: 1 });
        assert!(AacConfig::parse(&[0x12]).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0xdead_beef_cafe_f00du64;
        for len in 0..200 {
            let mut v = vec![0u8; len];
            for b in &mut v {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            if let Some(b) = v.first_mut() {
                *b = (*b & 0xf0) | if len % 2 == 0 { 7 } else { 0 };
            }
            let _ = VideoTag::parse(&v);
            let _ = AudioTag::parse(&v);
            let _ = AacConfig::parse(&v);
        }
    }
}

/// Turns FLV/AVC video tags into H.264 RTP payloads (RFC 6184) with 90 kHz timestamps, and
/// puts SPS/PPS ahead of every IDR so a viewer can start at any keyframe.
pub struct AvcToRtp {
    length_size: Option<usize>,
    packetizer: tessera_media::h264::H264Packetizer,
}

pub use tessera_media::h264::RtpPayload;

impl AvcToRtp {
    pub fn new(max_payload: usize) -> AvcToRtp {
        AvcToRtp { length_size: None, packetizer: tessera_media::h264::H264Packetizer::new(max_payload) }
    }

    pub fn on_tag(&mut self, tag: &VideoTag<'_>, timestamp_ms: u32, out: &mut Vec<RtpPayload>) -> Result<(), FlvError> {
        use tessera_media::h264::{self, AvcConfig};
        match tag {
            VideoTag::SequenceHeader(record) => {
                let config = AvcConfig::parse(record).map_err(|_| FlvError::Malformed("video"))?;
                self.length_size = Some(config.length_size);
                self.packetizer.set_parameter_sets(config.sps, config.pps);
                Ok(())
            }
            VideoTag::EndOfSequence | VideoTag::Ignored | VideoTag::Enhanced { .. } => Ok(()),
            VideoTag::Frame { data, .. } => {
                // Frames before the sequence header cannot be decoded: skipped.
                let Some(length_size) = self.length_size else { return Ok(()) };
                let nalus = h264::split_length_prefixed(data, length_size).map_err(|_| FlvError::Malformed("video"))?;
                self.packetizer.push(&nalus, timestamp_ms.wrapping_mul(90), out);
                Ok(())
            }
        }
    }
}

/// FLV video tag body: the AVC sequence header (an AVCDecoderConfigurationRecord with 4-byte
/// NAL lengths) for these parameter sets.
pub fn avc_sequence_header(sps: &[u8], pps: &[u8]) -> Vec<u8> {
    let mut out = vec![0x17, 0, 0, 0, 0, 1, *sps.get(1).unwrap_or(&66), *sps.get(2).unwrap_or(&0), *sps.get(3).unwrap_or(&31), 0xff, 0xe1];
    out.extend_from_slice(&(sps.len() as u16).to_be_bytes());
    out.extend_from_slice(sps);
    out.push(1);
    out.extend_from_slice(&(pps.len() as u16).to_be_bytes());
    out.extend_from_slice(pps);
    out
}

/// FLV video tag body: one access unit as 4-byte length-prefixed NAL units.
pub fn avc_frame(nalus: &[&[u8]], keyframe: bool, composition_time_ms: i32) -> Vec<u8> {
    let cts = composition_time_ms.to_be_bytes();
    let mut out = Vec::with_capacity(5 + nalus.iter().map(|n| n.len() + 4).sum::<usize>());
    out.extend_from_slice(&[if keyframe { 0x17 } else { 0x27 }, 1, cts[1], cts[2], cts[3]]);
    tessera_media::h264::write_length_prefixed(nalus, &mut out);
    out
}

/// Enhanced RTMP video tag body: the sequence start (the `hvcC`/`av1C`/`vpcC` record).
pub fn enhanced_sequence_start(codec: EnhancedCodec, record: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + record.len());
    out.push(0x80 | (1 << 4) | ENHANCED_SEQUENCE_START);
    out.extend_from_slice(codec.fourcc());
    out.extend_from_slice(record);
    out
}

/// Enhanced RTMP video tag body: one picture (HEVC as 4-byte length-prefixed NAL units, AV1 as
/// low-overhead OBUs). HEVC carries its composition time (CodedFrames), or none when it is 0
/// (CodedFramesX); AV1 has none.
pub fn enhanced_frame(codec: EnhancedCodec, keyframe: bool, composition_time_ms: i32, data: &[u8]) -> Vec<u8> {
    let frame_type = if keyframe { 1 } else { 2 };
    let with_cts = codec == EnhancedCodec::Hevc && composition_time_ms != 0;
    let mut out = Vec::with_capacity(8 + data.len());
    let packet_type = if codec == EnhancedCodec::Hevc && !with_cts { ENHANCED_CODED_FRAMES_X } else { ENHANCED_CODED_FRAMES };
    out.push(0x80 | (frame_type << 4) | packet_type);
    out.extend_from_slice(codec.fourcc());
    if with_cts {
        out.extend_from_slice(&composition_time_ms.to_be_bytes()[1..]);
    }
    out.extend_from_slice(data);
    out
}

/// FLV audio tag body: the AAC sequence header (AudioSpecificConfig).
pub fn aac_sequence_header(asc: &[u8]) -> Vec<u8> {
    let mut out = vec![0xaf, 0];
    out.extend_from_slice(asc);
    out
}

/// FLV audio tag body: one raw AAC frame.
pub fn aac_frame(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 2);
    out.extend_from_slice(&[0xaf, 1]);
    out.extend_from_slice(raw);
    out
}

#[cfg(test)]
mod muxer_tests {
    use super::*;

    #[test]
    fn built_tags_parse_back() {
        let (sps, pps) = ([0x67, 0x42, 0xc0, 0x1f, 0xda], [0x68, 0xce, 0x3c]);
        let header = avc_sequence_header(&sps, &pps);
        let VideoTag::SequenceHeader(record) = VideoTag::parse(&header).unwrap() else { panic!("not a sequence header") };
        let config = tessera_media::h264::AvcConfig::parse(record).unwrap();
        assert_eq!((config.sps[0].as_slice(), config.pps[0].as_slice(), config.length_size), (&sps[..], &pps[..], 4));
        let frame = avc_frame(&[&[0x65, 1, 2], &[0x06, 5]], true, 0);
        match VideoTag::parse(&frame).unwrap() {
            VideoTag::Frame { keyframe: true, data, .. } => {
                assert_eq!(tessera_media::h264::split_length_prefixed(data, 4).unwrap(), vec![&[0x65, 1, 2][..], &[0x06, 5][..]]);
            }
            _ => panic!("not a keyframe"),
        }
        assert!(matches!(AudioTag::parse(&aac_sequence_header(&[0x11, 0x90])).unwrap(), AudioTag::SequenceHeader(&[0x11, 0x90])));
        assert!(matches!(AudioTag::parse(&aac_frame(&[1, 2, 3])).unwrap(), AudioTag::Frame(&[1, 2, 3])));
    }

    #[test]
    fn enhanced_tags_written_read_back() {
        let start = enhanced_sequence_start(EnhancedCodec::Hevc, &[1, 2, 3]);
        assert_eq!(VideoTag::parse(&start).unwrap(), VideoTag::Enhanced { codec: EnhancedCodec::Hevc, packet: EnhancedPacket::SequenceStart(&[1, 2, 3]) });
        for (codec, keyframe, cts) in
            [(EnhancedCodec::Hevc, true, 0), (EnhancedCodec::Hevc, false, -33), (EnhancedCodec::Hevc, false, 66), (EnhancedCodec::Av1, true, 0), (EnhancedCodec::Av1, false, 0)]
        {
            let tag = enhanced_frame(codec, keyframe, cts, &[9, 8, 7]);
            let want = VideoTag::Enhanced { codec, packet: EnhancedPacket::Frame { keyframe, composition_time_ms: cts, data: &[9, 8, 7] } };
            assert_eq!(VideoTag::parse(&tag).unwrap(), want, "{codec:?} {keyframe} {cts}");
        }
    }
}

#[cfg(test)]
mod packetizer_tests {
    use super::*;

    #[test]
    fn idr_frames_carry_sps_and_pps_and_timestamps_are_90khz() {
        let sps = [0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01];
        let pps = [0x68, 0xce, 0x3c, 0x80];
        let mut record = vec![1, 0x42, 0xc0, 0x1f, 0xff, 0xe1, 0, sps.len() as u8];
        record.extend_from_slice(&sps);
        record.extend_from_slice(&[1, 0, pps.len() as u8]);
        record.extend_from_slice(&pps);
        let mut p = AvcToRtp::new(1200);
        let mut out = Vec::new();
        // A frame before the sequence header is skipped.
        p.on_tag(&VideoTag::Frame { keyframe: true, composition_time_ms: 0, data: &[0, 0, 0, 1, 0x65] }, 0, &mut out).unwrap();
        assert!(out.is_empty());
        p.on_tag(&VideoTag::SequenceHeader(&record), 0, &mut out).unwrap();
        let mut idr = vec![0, 0, 0x0b, 0xb9, 0x65];
        idr.extend(std::iter::repeat_n(7u8, 3000));
        p.on_tag(&VideoTag::Frame { keyframe: true, composition_time_ms: 0, data: &idr }, 1000, &mut out).unwrap();
        assert_eq!(out[0].payload, sps);
        assert_eq!(out[1].payload, pps);
        assert!(out.iter().all(|o| o.ts == 90_000 && o.keyframe && o.payload.len() <= 1200));
        assert!(out.last().unwrap().marker && out.iter().filter(|o| o.marker).count() == 1);
        assert_eq!(out.iter().map(|o| o.seq).collect::<Vec<_>>(), (1..=out.len() as u64).collect::<Vec<_>>());
        out.clear();
        p.on_tag(&VideoTag::Frame { keyframe: false, composition_time_ms: 0, data: &[0, 0, 0, 2, 0x41, 1] }, 1033, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].ts, out[0].keyframe, out[0].payload.clone()), (1033 * 90, false, vec![0x41, 1]));
        assert!(p.on_tag(&VideoTag::Frame { keyframe: false, composition_time_ms: 0, data: &[0, 0, 9] }, 0, &mut out).is_err());
    }

    /// Issue 10, defect 18: HEVC over Enhanced RTMP was "codec id 0"; AAC 5.1 was "malformed".
    /// (Issue 18: HEVC and AV1 are now taken.)
    #[test]
    fn enhanced_rtmp_and_multichannel_aac_say_what_they_are() {
        // ExVideoTagHeader: IsExHeader | FrameType 1 | PacketType 0 (sequence start), "hvc1".
        let tag = VideoTag::parse(&[0x90, b'h', b'v', b'c', b'1', 1, 2, 3]).unwrap();
        assert_eq!(tag, VideoTag::Enhanced { codec: EnhancedCodec::Hevc, packet: EnhancedPacket::SequenceStart(&[1, 2, 3]) });
        assert_eq!(EnhancedCodec::Av1.name(), "AV1 (av01)");
        // AAC LC, 48 kHz, channel configuration 6 (5.1).
        let e = AacConfig::parse(&[0x11, 0xb0]).unwrap_err();
        assert_eq!(e.code(), "codec_unsupported");
        assert!(e.to_string().contains("6 channels"), "{e}");
    }
}
