//! Video to H.264 for WebRTC viewers: an H.264 encoder (libx264 through the system FFmpeg,
//! constrained baseline, no B-frames, IDR on request) and `VideoToH264`, which decodes any video
//! FFmpeg can (H.264 with B-frames, HEVC, VP9, ...) and re-encodes it with that encoder.

use crate::{init, TranscodeError};
use ff::format::Pixel;
use ff::software::scaling;
use ffmpeg_next as ff;

/// What the encoder makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderSettings {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub kbps: u32,
    /// Frames between IDRs.
    pub gop_frames: u32,
    /// x264's speed preset: "ultrafast" … "veryfast" (faster = less CPU, more bits for the same
    /// quality; BENCHMARKS.md compares them).
    pub preset: &'static str,
}

/// One encoded access unit in Annex-B form, stamped in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedVideo {
    pub pts_ms: i64,
    pub keyframe: bool,
    pub data: Vec<u8>,
}

/// libx264 in its low-latency shape: one frame in, one access unit out, no lookahead, no
/// B-frames (WebRTC viewers and the SFU's keyframe logic need decode order = display order).
pub struct H264Encoder {
    encoder: ff::encoder::Video,
    packet: ff::Packet,
    pub settings: EncoderSettings,
    keyframe_requested: bool,
}

// SAFETY: as for `AudioToOpus`: the encoder context is owned by this value and used through
// `&mut self` only.
unsafe impl Send for H264Encoder {}

impl H264Encoder {
    pub fn new(settings: EncoderSettings) -> Result<H264Encoder, TranscodeError> {
        init();
        if settings.width < 16 || settings.height < 16 || settings.width % 2 == 1 || settings.height % 2 == 1 {
            return Err(TranscodeError::Unsupported(format!("cannot encode {}x{}: sizes must be even and at least 16", settings.width, settings.height)));
        }
        let codec = ff::encoder::find_by_name("libx264").ok_or(TranscodeError::MissingCodec("libx264 encoder"))?;
        let mut enc = ff::codec::context::Context::new_with_codec(codec).encoder().video()?;
        enc.set_width(settings.width);
        enc.set_height(settings.height);
        enc.set_format(Pixel::YUV420P);
        enc.set_time_base((1, 1000));
        enc.set_frame_rate(Some((settings.fps.max(1) as i32, 1)));
        enc.set_bit_rate(settings.kbps as usize * 1000);
        enc.set_max_bit_rate(settings.kbps as usize * 1500);
        enc.set_gop(settings.gop_frames.max(1));
        enc.set_max_b_frames(0);
        let mut opts = ff::Dictionary::new();
        opts.set("preset", settings.preset);
        opts.set("tune", "zerolatency");
        opts.set("profile", "baseline");
        // A forced I frame is an IDR, so a viewer's PLI gets something it can start from.
        opts.set("forced-idr", "1");
        opts.set("x264-params", &format!("scenecut=0:keyint={0}:min-keyint={0}:bframes=0:vbv-bufsize={1}", settings.gop_frames.max(1), settings.kbps));
        let encoder = enc.open_as_with(codec, opts)?;
        Ok(H264Encoder { encoder, packet: ff::Packet::empty(), settings, keyframe_requested: false })
    }

    /// The next frame is encoded as an IDR.
    pub fn request_keyframe(&mut self) {
        self.keyframe_requested = true;
    }

    /// Encodes one YUV420P frame of the configured size.
    pub fn encode(&mut self, frame: &mut ff::frame::Video, pts_ms: i64, out: &mut Vec<EncodedVideo>) -> Result<(), TranscodeError> {
        frame.set_pts(Some(pts_ms));
        let forced = std::mem::take(&mut self.keyframe_requested);
        frame.set_kind(if forced { ff::picture::Type::I } else { ff::picture::Type::None });
        self.encoder.send_frame(frame)?;
        self.drain(out);
        Ok(())
    }

    fn drain(&mut self, out: &mut Vec<EncodedVideo>) {
        while self.encoder.receive_packet(&mut self.packet).is_ok() {
            if let Some(data) = self.packet.data() {
                out.push(EncodedVideo { pts_ms: self.packet.pts().unwrap_or(0), keyframe: self.packet.is_key(), data: data.to_vec() });
            }
        }
    }
}

/// Cisco's OpenH264 (the spec's default mix encoder): constrained baseline, bitrate rate
/// control, one thread, IDR on request. Annex-B out like `H264Encoder`.
pub struct OpenH264Encoder {
    encoder: openh264::encoder::Encoder,
    pub settings: EncoderSettings,
    keyframe_requested: bool,
}

// SAFETY: the OpenH264 encoder instance is owned by this value and used through `&mut self`.
unsafe impl Send for OpenH264Encoder {}

/// A YUV420P FFmpeg frame as OpenH264 reads it (no copy).
struct FrameSource<'a>(&'a ff::frame::Video);

impl openh264::formats::YUVSource for FrameSource<'_> {
    fn dimensions(&self) -> (usize, usize) {
        (self.0.width() as usize, self.0.height() as usize)
    }
    fn strides(&self) -> (usize, usize, usize) {
        (self.0.stride(0), self.0.stride(1), self.0.stride(2))
    }
    fn y(&self) -> &[u8] {
        self.0.data(0)
    }
    fn u(&self) -> &[u8] {
        self.0.data(1)
    }
    fn v(&self) -> &[u8] {
        self.0.data(2)
    }
}

impl OpenH264Encoder {
    pub fn new(settings: EncoderSettings) -> Result<OpenH264Encoder, TranscodeError> {
        use openh264::encoder::{BitRate, EncoderConfig, FrameRate, IntraFramePeriod, Profile, RateControlMode, UsageType};
        if settings.width < 16 || settings.height < 16 || settings.width % 2 == 1 || settings.height % 2 == 1 {
            return Err(TranscodeError::Unsupported(format!("cannot encode {}x{}: sizes must be even and at least 16", settings.width, settings.height)));
        }
        let config = EncoderConfig::new()
            .bitrate(BitRate::from_bps(settings.kbps * 1000))
            .max_frame_rate(FrameRate::from_hz(settings.fps.max(1) as f32))
            .rate_control_mode(RateControlMode::Bitrate)
            .usage_type(UsageType::CameraVideoRealTime)
            .profile(Profile::Baseline)
            .intra_frame_period(IntraFramePeriod::from_num_frames(settings.gop_frames.max(1)))
            .scene_change_detect(false)
            // A mix must keep its frame rate; rate control lowers quality instead of skipping.
            .skip_frames(false)
            .num_threads(1);
        let encoder =
            openh264::encoder::Encoder::with_api_config(openh264::OpenH264API::from_source(), config).map_err(|e| TranscodeError::Unsupported(format!("OpenH264: {e}")))?;
        Ok(OpenH264Encoder { encoder, settings, keyframe_requested: false })
    }

    pub fn request_keyframe(&mut self) {
        self.keyframe_requested = true;
    }

    pub fn encode(&mut self, frame: &ff::frame::Video, pts_ms: i64, out: &mut Vec<EncodedVideo>) -> Result<(), TranscodeError> {
        if std::mem::take(&mut self.keyframe_requested) {
            self.encoder.force_intra_frame();
        }
        let stream = self
            .encoder
            .encode_at(&FrameSource(frame), openh264::Timestamp::from_millis(pts_ms.max(0) as u64))
            .map_err(|e| TranscodeError::Unsupported(format!("OpenH264: {e}")))?;
        let keyframe = matches!(stream.frame_type(), openh264::encoder::FrameType::IDR);
        let data = stream.to_vec();
        if !data.is_empty() {
            out.push(EncodedVideo { pts_ms, keyframe, data });
        }
        Ok(())
    }
}

/// The mix's encoder: OpenH264 (default) or libx264 (LAYOUTS.md §4). One per mix job, so the
/// size difference of the variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum VideoEncoder {
    OpenH264(OpenH264Encoder),
    X264(H264Encoder),
}

impl VideoEncoder {
    pub fn request_keyframe(&mut self) {
        match self {
            VideoEncoder::OpenH264(e) => e.request_keyframe(),
            VideoEncoder::X264(e) => e.request_keyframe(),
        }
    }

    pub fn encode(&mut self, frame: &mut ff::frame::Video, pts_ms: i64, out: &mut Vec<EncodedVideo>) -> Result<(), TranscodeError> {
        match self {
            VideoEncoder::OpenH264(e) => e.encode(frame, pts_ms, out),
            VideoEncoder::X264(e) => e.encode(frame, pts_ms, out),
        }
    }
}

/// The size a transcode produces: the source's, made even and at most 1920x1080 (aspect kept).
pub fn output_size(width: u32, height: u32) -> (u32, u32) {
    let (mut w, mut h) = (width.max(16) as u64, height.max(16) as u64);
    if w > 1920 || h > 1080 {
        let scale = (1920.0 / w as f64).min(1080.0 / h as f64);
        w = (w as f64 * scale) as u64;
        h = (h as f64 * scale) as u64;
    }
    ((w as u32 & !1).max(16), (h as u32 & !1).max(16))
}

/// A bitrate that looks right for the size at 30 fps: ~1.8 Mbit/s at 720p, ~0.5 at 360p.
pub fn default_kbps(width: u32, height: u32) -> u32 {
    ((width as u64 * height as u64 * 2 / 1000) as u32).clamp(300, 4000)
}

/// Which H.264 encoder a transcode uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderKind {
    OpenH264,
    /// libx264 at this preset.
    X264(&'static str),
}

/// How a transcode shapes its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TranscodeShape {
    pub encoder: EncoderKind,
    pub fps: u32,
    /// The bitrate; `None`: `default_kbps` of the size.
    pub kbps: Option<u32>,
    /// An IDR wherever the source has a keyframe (and no other, unless asked): the output keeps
    /// the source's keyframe cadence. Otherwise one every 2 s.
    pub follow_keyframes: bool,
}

/// Any decodable video in, H.264 constrained baseline out.
pub struct VideoToH264 {
    decoder: ff::decoder::Video,
    decoded: ff::frame::Video,
    scaler: Option<(scaling::Context, ff::frame::Video)>,
    encoder: Option<VideoEncoder>,
    shape: TranscodeShape,
    /// Decoded pictures (references to the decoder's buffers, by presentation time in ms) kept
    /// for `take_pictures`, when asked for.
    pictures: Option<Vec<(i64, ff::frame::Video)>>,
    /// The decoder's timestamps are in the stream's time base; this turns them into ms.
    time_base: ff::Rational,
}

// SAFETY: as above; the decoder, scaler and encoder belong to this value alone.
unsafe impl Send for VideoToH264 {}

impl VideoToH264 {
    /// For a demuxed stream (pull ingest): libx264 veryfast, an IDR every 2 s.
    pub fn from_parameters(parameters: ff::codec::Parameters, time_base: ff::Rational, fps: u32) -> Result<VideoToH264, TranscodeError> {
        init();
        let mut ctx = ff::codec::context::Context::from_parameters(parameters)?;
        ctx.set_time_base(time_base);
        let decoder = ctx.decoder().video()?;
        let shape = TranscodeShape { encoder: EncoderKind::X264("veryfast"), fps, kbps: None, follow_keyframes: false };
        Ok(VideoToH264 {
            decoder,
            decoded: ff::frame::Video::empty(),
            scaler: None,
            encoder: None,
            shape: TranscodeShape { fps: fps.clamp(1, 60), ..shape },
            pictures: None,
            time_base,
        })
    }

    /// For frames as RTMP carries them: `codec` (H.264, HEVC, ...) with its decoder configuration
    /// record (`avcC`, `hvcC`) as extradata, timestamps in milliseconds. One decoding thread:
    /// frame threading would add a frame of delay per thread.
    pub fn from_config(codec: ff::codec::Id, config: &[u8], shape: TranscodeShape) -> Result<VideoToH264, TranscodeError> {
        init();
        ff::decoder::find(codec).ok_or(TranscodeError::MissingCodec("video decoder"))?;
        let mut params = ff::codec::Parameters::new();
        // SAFETY: plain fields of freshly allocated parameters.
        unsafe {
            let p = params.as_mut_ptr();
            (*p).codec_type = ff::ffi::AVMediaType::AVMEDIA_TYPE_VIDEO;
            (*p).codec_id = codec.into();
        }
        crate::mux::set_extradata(&mut params, config);
        let mut ctx = ff::codec::context::Context::from_parameters(params)?;
        ctx.set_threading(ff::threading::Config { kind: ff::threading::Type::Slice, count: 1, ..Default::default() });
        ctx.set_time_base((1, 1000));
        let decoder = ctx.decoder().video()?;
        let shape = TranscodeShape { fps: shape.fps.clamp(1, 60), ..shape };
        Ok(VideoToH264 { decoder, decoded: ff::frame::Video::empty(), scaler: None, encoder: None, shape, pictures: None, time_base: ff::Rational(1, 1000) })
    }

    /// Keeps every decoded picture for `take_pictures` (a mix job composes them without
    /// decoding the stream again).
    pub fn share_pictures(&mut self) {
        self.pictures.get_or_insert_with(Vec::new);
    }

    /// The pictures decoded since the last call, with their presentation times (ms).
    pub fn take_pictures(&mut self) -> Vec<(i64, ff::frame::Video)> {
        self.pictures.as_mut().map(std::mem::take).unwrap_or_default()
    }

    pub fn shape(&self) -> TranscodeShape {
        self.shape
    }

    /// New output settings: the encoder is made again for the next picture (an IDR).
    pub fn reshape(&mut self, shape: TranscodeShape) {
        if shape != self.shape {
            self.shape = TranscodeShape { fps: shape.fps.clamp(1, 60), ..shape };
            self.encoder = None;
        }
    }

    /// The size of the pictures being encoded, once the first one decoded.
    pub fn output_size(&self) -> Option<(u32, u32)> {
        self.encoder.as_ref().map(|e| match e {
            VideoEncoder::OpenH264(e) => (e.settings.width, e.settings.height),
            VideoEncoder::X264(e) => (e.settings.width, e.settings.height),
        })
    }

    pub fn request_keyframe(&mut self) {
        if let Some(e) = self.encoder.as_mut() {
            e.request_keyframe();
        }
    }

    /// Decodes one compressed packet (timestamps in the stream's time base) and appends the
    /// access units that the frames it completes encode to.
    pub fn push(&mut self, data: &[u8], pts: Option<i64>, dts: Option<i64>, out: &mut Vec<EncodedVideo>) -> Result<(), TranscodeError> {
        let mut packet = ff::Packet::copy(data);
        packet.set_pts(pts);
        packet.set_dts(dts);
        self.decoder.send_packet(&packet)?;
        while self.decoder.receive_frame(&mut self.decoded).is_ok() {
            let Some(ts) = self.decoded.timestamp().or(self.decoded.pts()) else { continue };
            let pts_ms = to_ms(ts, self.time_base);
            if let Some(pictures) = self.pictures.as_mut() {
                let mut shared = ff::frame::Video::empty();
                // SAFETY: both frames are valid; the new one takes a reference to the decoded
                // buffers (no copy), released when it is dropped.
                if unsafe { ff::ffi::av_frame_ref(shared.as_mut_ptr(), self.decoded.as_ptr()) } >= 0 {
                    pictures.push((pts_ms, shared));
                }
            }
            let (w, h, format) = (self.decoded.width(), self.decoded.height(), self.decoded.format());
            let (ow, oh) = output_size(w, h);
            let stale = self.output_size().is_some_and(|size| size != (ow, oh));
            if self.encoder.is_none() || stale {
                let s = self.shape;
                // Following the source's keyframes: the encoder's own period is out of the way.
                let gop_frames = if s.follow_keyframes { s.fps * 3600 } else { s.fps * 2 };
                let kbps = s.kbps.unwrap_or_else(|| default_kbps(ow, oh));
                let settings = EncoderSettings { width: ow, height: oh, fps: s.fps, kbps, gop_frames, preset: "veryfast" };
                self.encoder = Some(match s.encoder {
                    EncoderKind::OpenH264 => VideoEncoder::OpenH264(OpenH264Encoder::new(settings)?),
                    EncoderKind::X264(preset) => VideoEncoder::X264(H264Encoder::new(EncoderSettings { preset, ..settings })?),
                });
                self.scaler = None;
            }
            let needs_scaling = (w, h, format) != (ow, oh, Pixel::YUV420P);
            let encoder = self.encoder.as_mut().expect("made above");
            if self.shape.follow_keyframes && self.decoded.is_key() {
                encoder.request_keyframe();
            }
            if needs_scaling {
                if self.scaler.is_none() {
                    let ctx = scaling::Context::get(format, w, h, Pixel::YUV420P, ow, oh, scaling::Flags::BILINEAR)?;
                    self.scaler = Some((ctx, ff::frame::Video::new(Pixel::YUV420P, ow, oh)));
                }
                let (ctx, scaled) = self.scaler.as_mut().expect("made above");
                ctx.run(&self.decoded, scaled)?;
                encoder.encode(scaled, pts_ms, out)?;
            } else {
                encoder.encode(&mut self.decoded, pts_ms, out)?;
            }
        }
        Ok(())
    }
}

/// A timestamp in `time_base` units as milliseconds.
pub fn to_ms(ts: i64, time_base: ff::Rational) -> i64 {
    let (num, den) = (time_base.numerator() as i128, time_base.denominator().max(1) as i128);
    (ts as i128 * num * 1000 / den) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_media::h264::{nal_type, split_annex_b, NAL_IDR, NAL_SPS};

    fn gray(width: u32, height: u32, shade: u8) -> ff::frame::Video {
        let mut f = ff::frame::Video::new(Pixel::YUV420P, width, height);
        for plane in 0..3 {
            f.data_mut(plane).fill(if plane == 0 { shade } else { 128 });
        }
        f
    }

    #[test]
    fn encoder_makes_baseline_annex_b_with_idr_first_and_on_request() {
        let mut e = H264Encoder::new(EncoderSettings { width: 320, height: 180, fps: 30, kbps: 300, gop_frames: 300, preset: "veryfast" }).unwrap();
        let mut out = Vec::new();
        for i in 0..10 {
            if i == 6 {
                e.request_keyframe();
            }
            e.encode(&mut gray(320, 180, (i * 20) as u8), i * 33, &mut out).unwrap();
        }
        assert_eq!(out.len(), 10, "one access unit per frame: no lookahead");
        let idrs: Vec<i64> = out.iter().filter(|o| split_annex_b(&o.data).iter().any(|n| nal_type(n) == Some(NAL_IDR))).map(|o| o.pts_ms).collect();
        assert_eq!(idrs, vec![0, 6 * 33], "an IDR first and one where asked");
        let sps = split_annex_b(&out[0].data).into_iter().find(|n| nal_type(n) == Some(NAL_SPS)).expect("SPS in band");
        assert_eq!(sps[1], 66, "profile_idc 66: baseline");
        assert!(out.iter().zip(out.iter().skip(1)).all(|(a, b)| b.pts_ms > a.pts_ms), "decode order is display order");
        assert!(H264Encoder::new(EncoderSettings { width: 321, height: 180, fps: 30, kbps: 300, gop_frames: 30, preset: "veryfast" }).is_err());
    }

    #[test]
    fn openh264_makes_baseline_with_an_idr_first_and_on_request() {
        let mut e = OpenH264Encoder::new(EncoderSettings { width: 320, height: 180, fps: 30, kbps: 300, gop_frames: 300, preset: "" }).unwrap();
        let mut out = Vec::new();
        for i in 0..10 {
            if i == 6 {
                e.request_keyframe();
            }
            e.encode(&gray(320, 180, (i * 20) as u8), i * 33, &mut out).unwrap();
        }
        assert_eq!(out.len(), 10);
        let idrs: Vec<i64> = out.iter().filter(|o| split_annex_b(&o.data).iter().any(|n| nal_type(n) == Some(NAL_IDR))).map(|o| o.pts_ms).collect();
        assert_eq!(idrs, vec![0, 6 * 33]);
        assert!(out[0].keyframe && out[6].keyframe && !out[1].keyframe);
        let sps = split_annex_b(&out[0].data).into_iter().find(|n| nal_type(n) == Some(NAL_SPS)).expect("SPS in band");
        assert_eq!(sps[1], 66, "baseline");
        // And FFmpeg decodes it.
        let mut d = crate::decode::VideoDecoder::new(crate::decode::VideoCodec::H264).unwrap();
        let mut pictures = 0;
        for o in &out {
            if d.decode(&o.data).unwrap() {
                pictures += 1;
            }
        }
        assert!(pictures >= 9, "{pictures}");
    }

    #[test]
    fn sizes_are_even_and_capped() {
        assert_eq!(output_size(1280, 720), (1280, 720));
        assert_eq!(output_size(3840, 2160), (1920, 1080));
        assert_eq!(output_size(641, 361), (640, 360));
        assert_eq!(output_size(0, 0), (16, 16));
    }
}
