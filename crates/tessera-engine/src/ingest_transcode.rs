//! An ingest's video re-encoded for WebRTC viewers and mix jobs, for what they cannot take as
//! it is (H.264 with B-frames; HEVC, AV1 and VP9 over Enhanced RTMP): coded frames as RTMP
//! carries them in, H.264 constrained-baseline RTP out. The output keeps the source's size, frame rate and keyframe
//! cadence (an IDR wherever the source has a keyframe, and whenever a viewer asks) at a bitrate
//! close to the source's. A plain value: the driver runs it on a thread of its own, since a
//! 1080p decode and encode take milliseconds per frame.

use crate::sfu::{IngestPacket, PacketRoute, SharedPicture};
use std::sync::Arc;
use tessera_media::h264::{split_annex_b, H264Packetizer};
use tessera_media::Codec;
use tessera_model::TranscodeEncoder;
use tessera_transcode::ff;
use tessera_transcode::video::{EncodedVideo, EncoderKind, TranscodeShape, VideoToH264};
use tessera_transcode::TranscodeError;

const MAX_RTP_PAYLOAD: usize = 1200;
/// The source's bitrate is measured over at least this much of it before the output follows.
const RATE_WINDOW_MS: i64 = 4000;
/// The output's bitrate is re-set when the source's differs from it by more than this share.
const RATE_TOLERANCE: f64 = 0.25;

/// One coded picture as the publisher sent it: `data` in the form of its decoder configuration
/// (length-prefixed NAL units), decoded at `dts_ms`, shown `cts_ms` later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodedFrame {
    pub data: Vec<u8>,
    pub dts_ms: u32,
    pub cts_ms: i32,
    pub keyframe: bool,
}

/// The codec of what is transcoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceVideo {
    /// H.264 with B-frames.
    H264,
    Hevc,
    Av1,
    Vp9,
}

impl SourceVideo {
    fn ff_id(self) -> ff::codec::Id {
        match self {
            SourceVideo::H264 => ff::codec::Id::H264,
            SourceVideo::Hevc => ff::codec::Id::HEVC,
            SourceVideo::Av1 => ff::codec::Id::AV1,
            SourceVideo::Vp9 => ff::codec::Id::VP9,
        }
    }

    /// Why it needs transcoding, for messages and logs.
    pub fn describe(self) -> &'static str {
        match self {
            SourceVideo::H264 => "H.264 with B-frames",
            SourceVideo::Hevc => "HEVC (hvc1)",
            SourceVideo::Av1 => "AV1 (av01)",
            SourceVideo::Vp9 => "VP9 (vp09)",
        }
    }
}

/// What a transcode starts from.
#[derive(Debug, Clone, PartialEq)]
pub struct TranscodeStart {
    pub codec: SourceVideo,
    /// The decoder configuration record (`avcC`, `hvcC`, `av1C`, `vpcC`).
    pub config: Vec<u8>,
    /// What the encoder's `onMetaData` said, if it did.
    pub fps: Option<f32>,
    pub kbps: Option<u32>,
}

/// What a publisher hands its transcoder.
#[derive(Debug, Clone, PartialEq)]
pub enum TranscodeInput {
    /// The publish needs a transcoder: the driver makes one (or refuses the publish).
    Start(TranscodeStart),
    /// A new decoder configuration (the encoder restarted).
    Config(Vec<u8>),
    Frame(CodedFrame),
}

pub struct IngestTranscoder {
    codec: SourceVideo,
    /// Who the output is for: only viewers and mixes when relays and recordings keep an
    /// original they can take, everyone otherwise.
    route: PacketRoute,
    video: VideoToH264,
    encoder: EncoderKind,
    /// Frame rate and bitrate: from the metadata, else measured.
    fps_known: bool,
    kbps_known: bool,
    last_dts: Option<u32>,
    /// Decode-time steps seen, for the frame rate.
    steps_ms: Vec<u32>,
    /// Bytes and the decode-time span they cover, for the bitrate.
    bytes: u64,
    first_dts: Option<u32>,
    kbps: Option<u32>,
    /// Nothing is decoded before the first keyframe.
    started: bool,
    packetizer: H264Packetizer,
    ssrc: u32,
    encoded: Vec<EncodedVideo>,
}

impl IngestTranscoder {
    pub fn new(start: &TranscodeStart, encoder: TranscodeEncoder) -> Result<IngestTranscoder, TranscodeError> {
        let encoder = match encoder {
            TranscodeEncoder::Openh264 => EncoderKind::OpenH264,
            TranscodeEncoder::X264 => EncoderKind::X264("veryfast"),
        };
        let fps = start.fps.filter(|f| f.is_finite() && *f >= 1.0).map(|f| f.round() as u32);
        let kbps = start.kbps.filter(|k| *k > 0).map(|k| k.clamp(100, 20_000));
        let shape = TranscodeShape { encoder, fps: fps.unwrap_or(30), kbps, follow_keyframes: true };
        Ok(IngestTranscoder {
            codec: start.codec,
            route: match start.codec {
                // Relays and recordings keep the original.
                SourceVideo::H264 => PacketRoute::Viewers,
                // Recordings and E-RTMP relay targets keep the original; legacy FLV relay targets
                // take H.264, and so do viewers that did not negotiate AV1.
                SourceVideo::Hevc => PacketRoute::Fallback(Codec::H265),
                SourceVideo::Av1 => PacketRoute::Fallback(Codec::Av1),
                // Not kept: every output takes H.264.
                SourceVideo::Vp9 => PacketRoute::AllButMixes,
            },
            video: Self::decoder(start.codec, &start.config, shape)?,
            encoder,
            fps_known: fps.is_some(),
            kbps_known: kbps.is_some(),
            last_dts: None,
            steps_ms: Vec::new(),
            bytes: 0,
            first_dts: None,
            kbps,
            started: false,
            packetizer: H264Packetizer::new(MAX_RTP_PAYLOAD),
            ssrc: tessera_model::random::ssrc(),
            encoded: Vec::new(),
        })
    }

    /// Mix jobs take the decoded pictures (`PacketRoute::Pictures`) rather than decode the
    /// re-encoding again.
    fn decoder(codec: SourceVideo, config: &[u8], shape: TranscodeShape) -> Result<VideoToH264, TranscodeError> {
        let mut video = VideoToH264::from_config(codec.ff_id(), config, shape)?;
        video.share_pictures();
        Ok(video)
    }

    /// The next picture is encoded as an IDR (a viewer asked).
    pub fn request_keyframe(&mut self) {
        self.video.request_keyframe();
    }

    /// The size being encoded, once the first picture decoded.
    pub fn output_size(&self) -> Option<(u32, u32)> {
        self.video.output_size()
    }

    /// Takes one input and appends the RTP packets of what it completed. A frame that does not
    /// decode is a glitch, not the end of the publish: it is an error the caller may log.
    pub fn push(&mut self, input: TranscodeInput, out: &mut Vec<IngestPacket>) -> Result<(), TranscodeError> {
        let frame = match input {
            TranscodeInput::Start(_) => return Ok(()),
            TranscodeInput::Config(config) => {
                let shape = self.video.shape();
                self.video = Self::decoder(self.codec, &config, shape)?;
                self.started = false;
                return Ok(());
            }
            TranscodeInput::Frame(f) => f,
        };
        if !self.started && !frame.keyframe {
            return Ok(());
        }
        self.started = true;
        self.measure(&frame);
        self.encoded.clear();
        let dts = frame.dts_ms as i64;
        let result = self.video.push(&frame.data, Some(dts + frame.cts_ms.max(0) as i64), Some(dts), &mut self.encoded);
        let mut payloads = Vec::new();
        for e in self.encoded.drain(..) {
            let nalus = split_annex_b(&e.data);
            self.packetizer.push(&nalus, (e.pts_ms as u32).wrapping_mul(90), &mut payloads);
        }
        out.extend(payloads.into_iter().map(|p| IngestPacket {
            ssrc: self.ssrc,
            seq: p.seq,
            ts: p.ts,
            marker: p.marker,
            keyframe: p.keyframe,
            codec: Codec::H264,
            payload: Arc::from(p.payload),
            audio_level: None,
            route: self.route,
            composition_ms: 0,
            picture: None,
            rid: None,
        }));
        out.extend(self.video.take_pictures().into_iter().map(|(pts_ms, picture)| IngestPacket {
            ssrc: self.ssrc,
            seq: 0,
            ts: (pts_ms as u32).wrapping_mul(90),
            marker: true,
            keyframe: false,
            codec: Codec::H264,
            payload: Arc::from(Vec::new()),
            audio_level: None,
            route: PacketRoute::Pictures,
            composition_ms: 0,
            picture: Some(SharedPicture(Arc::new(picture))),
            rid: None,
        }));
        result
    }

    /// Learns the source's frame rate (until the first picture is encoded) and bitrate (re-set at
    /// a source keyframe when it moved by more than a quarter) from what it sends.
    fn measure(&mut self, frame: &CodedFrame) {
        if let Some(last) = self.last_dts {
            let step = frame.dts_ms.wrapping_sub(last);
            if (1..=1000).contains(&step) && self.steps_ms.len() < 64 {
                self.steps_ms.push(step);
            }
        }
        self.last_dts = Some(frame.dts_ms);
        if !self.fps_known && !self.steps_ms.is_empty() {
            let mut steps = self.steps_ms.clone();
            steps.sort_unstable();
            let median = steps[steps.len() / 2].max(1);
            let fps = ((1000.0 / median as f64).round() as u32).clamp(1, 60);
            let shape = self.video.shape();
            if shape.fps != fps {
                self.video.reshape(TranscodeShape { fps, ..shape });
            }
            if self.video.output_size().is_some() {
                self.fps_known = true;
            }
        }
        let first = *self.first_dts.get_or_insert(frame.dts_ms);
        self.bytes += frame.data.len() as u64;
        let span = frame.dts_ms.wrapping_sub(first) as i64;
        if !self.kbps_known && frame.keyframe && span >= RATE_WINDOW_MS {
            let measured = ((self.bytes * 8) as f64 / span as f64).round() as u32;
            let measured = measured.clamp(100, 20_000);
            let off = self.kbps.is_none_or(|k| (measured as f64 - k as f64).abs() / k as f64 > RATE_TOLERANCE);
            if off {
                tracing::debug!(kbps = measured, encoder = ?self.encoder, "transcode follows the source's bitrate");
                self.kbps = Some(measured);
                let shape = self.video.shape();
                self.video.reshape(TranscodeShape { kbps: Some(measured), ..shape });
            }
            // The window starts over: the rate is followed as it changes.
            self.first_dts = Some(frame.dts_ms);
            self.bytes = frame.data.len() as u64;
        }
    }
}

/// A B-frame H.264 source as RTMP would carry it, made with libx264 at `-preset medium` (its
/// 3 B-frames and B-pyramid): for this module's tests and `benches/ingest_transcode.rs`.
#[doc(hidden)]
pub struct X264Source {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub gop: u32,
    pub kbps: Option<u32>,
    /// `x264-params`, e.g. to pin keyframes.
    pub params: &'static str,
}

impl X264Source {
    /// Encodes `frames` pictures that `paint(index, picture)` draws (YUV420P); returns the
    /// `avcC` record and the frames, decode times from 1 s on.
    pub fn encode(&self, frames: i64, mut paint: impl FnMut(i64, &mut ff::frame::Video)) -> (Vec<u8>, Vec<CodedFrame>) {
        use ff::format::Pixel;
        use tessera_media::h264::{nal_type, NAL_PPS, NAL_SPS};
        ff::init().expect("FFmpeg");
        let codec = ff::encoder::find_by_name("libx264").expect("libx264");
        let mut enc = ff::codec::context::Context::new_with_codec(codec).encoder().video().expect("an encoder");
        enc.set_width(self.width);
        enc.set_height(self.height);
        enc.set_format(Pixel::YUV420P);
        enc.set_time_base((1, 1000));
        enc.set_frame_rate(Some((self.fps as i32, 1)));
        enc.set_gop(self.gop);
        enc.set_max_b_frames(3);
        if let Some(kbps) = self.kbps {
            enc.set_bit_rate(kbps as usize * 1000);
        }
        let mut opts = ff::Dictionary::new();
        opts.set("preset", "medium");
        if !self.params.is_empty() {
            opts.set("x264-params", self.params);
        }
        let mut enc = enc.open_as_with(codec, opts).expect("libx264 opens");
        let (mut sps, mut pps, mut out) = (Vec::new(), Vec::new(), Vec::new());
        let mut collect = |enc: &mut ff::encoder::Video, out: &mut Vec<CodedFrame>| {
            let mut packet = ff::Packet::empty();
            while enc.receive_packet(&mut packet).is_ok() {
                let (pts, dts) = (packet.pts().unwrap_or(0), packet.dts().unwrap_or(0));
                let mut data = Vec::new();
                for n in split_annex_b(packet.data().unwrap_or(&[])) {
                    match nal_type(n) {
                        Some(NAL_SPS) => sps = n.to_vec(),
                        Some(NAL_PPS) => pps = n.to_vec(),
                        _ => {}
                    }
                    tessera_media::h264::write_length_prefixed(&[n], &mut data);
                }
                out.push(CodedFrame { data, dts_ms: (dts + 1000) as u32, cts_ms: (pts - dts) as i32, keyframe: packet.is_key() });
            }
        };
        for i in 0..frames {
            let mut f = ff::frame::Video::new(Pixel::YUV420P, self.width, self.height);
            paint(i, &mut f);
            f.set_pts(Some(i * 1000 / self.fps.max(1) as i64));
            enc.send_frame(&f).expect("a frame");
            collect(&mut enc, &mut out);
        }
        enc.send_eof().expect("the end");
        collect(&mut enc, &mut out);
        let header = tessera_rtmp::flv::avc_sequence_header(&sps, &pps);
        (header[5..].to_vec(), out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_media::h264::{depacketize, nal_type, NAL_IDR, NAL_SPS};

    /// libx264 as ffmpeg runs it by default (3 B-frames, B-pyramid): 320x240 at 25 fps with a
    /// keyframe every second, a bar moving over a gray that brightens (every picture differs).
    fn b_frame_stream(frames: i64) -> (Vec<u8>, Vec<CodedFrame>) {
        let source = X264Source { width: 320, height: 240, fps: 25, gop: 25, kbps: None, params: "scenecut=0:keyint=25:min-keyint=25:b-adapt=0" };
        source.encode(frames, |i, f| {
            for (plane, fill) in [(0usize, 60 + i as u8), (1, 128), (2, 128)] {
                let stride = f.stride(plane);
                let rows = if plane == 0 { 240 } else { 120 };
                let data = f.data_mut(plane);
                for y in 0..rows {
                    for x in 0..stride {
                        data[y * stride + x] = if plane == 0 && (x as i64 - i * 4).rem_euclid(320) < 16 { 235 } else { fill };
                    }
                }
            }
        })
    }

    #[test]
    fn a_b_frame_stream_becomes_baseline_rtp_in_presentation_order_with_the_source_keyframes() {
        let (config, frames) = b_frame_stream(75);
        assert!(frames.iter().any(|f| f.cts_ms > 0), "the source has B-frames");
        let mut t = IngestTranscoder::new(&TranscodeStart { codec: SourceVideo::H264, config, fps: None, kbps: None }, TranscodeEncoder::Openh264).unwrap();
        let mut packets = Vec::new();
        for f in frames {
            t.push(TranscodeInput::Frame(f), &mut packets).unwrap();
        }
        // The decoded pictures go to mix jobs; the rest is H.264 for viewers.
        let (pictures, packets): (Vec<_>, Vec<_>) = packets.into_iter().partition(|p| p.route == PacketRoute::Pictures);
        assert!(pictures.iter().all(|p| p.picture.as_ref().is_some_and(|f| f.0.width() == 320)));
        assert!(packets.iter().all(|p| p.route == PacketRoute::Viewers && p.codec == Codec::H264 && p.composition_ms == 0 && p.picture.is_none()));
        assert_eq!(t.output_size(), Some((320, 240)));
        // Whole access units, by marker.
        let mut units: Vec<(u32, Vec<Vec<u8>>)> = Vec::new();
        let mut current = Vec::new();
        for p in &packets {
            current.push(p.payload.to_vec());
            if p.marker {
                units.push((p.ts, depacketize(&std::mem::take(&mut current))));
            }
        }
        // All but the decoder's reordering delay, in presentation order, 40 ms apart.
        assert!(units.len() >= 70, "{} units", units.len());
        assert_eq!(pictures.len(), units.len(), "a picture for each unit encoded");
        let times: Vec<u32> = units.iter().map(|(ts, _)| (ts / 90) - 1000).collect();
        assert!(times.windows(2).all(|w| w[1] == w[0] + 40), "{times:?}");
        assert_eq!(times[0], 0);
        // An IDR exactly where the source has a keyframe (every second), constrained baseline.
        let idrs: Vec<u32> = units.iter().zip(&times).filter(|((_, n), _)| n.iter().any(|n| nal_type(n) == Some(NAL_IDR))).map(|(_, t)| *t).collect();
        assert_eq!(idrs, vec![0, 1000, 2000], "IDRs at {idrs:?} ms");
        let sps = units[0].1.iter().find(|n| nal_type(n) == Some(NAL_SPS)).expect("an SPS with the IDR");
        assert_eq!(sps[1], 66, "profile_idc baseline");
        // A viewer's request: an IDR at the next picture.
        let (config, frames) = b_frame_stream(20);
        let mut t = IngestTranscoder::new(&TranscodeStart { codec: SourceVideo::H264, config, fps: Some(25.0), kbps: Some(500) }, TranscodeEncoder::Openh264).unwrap();
        let mut out = Vec::new();
        let mut idr_at = Vec::new();
        for (i, f) in frames.into_iter().enumerate() {
            if i == 10 {
                t.request_keyframe();
            }
            out.clear();
            t.push(TranscodeInput::Frame(f), &mut out).unwrap();
            if out.iter().any(|p| p.keyframe && p.route == PacketRoute::Viewers) {
                idr_at.push(i);
            }
        }
        assert_eq!(idr_at.len(), 2, "the first picture and the one after the request: {idr_at:?}");
        assert!(idr_at[1] == 10, "{idr_at:?}");
    }
}
