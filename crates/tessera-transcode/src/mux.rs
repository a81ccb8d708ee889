//! Recording containers through libavformat: MPEG-TS segments (H.264 on PID 256, AAC on 257,
//! RECORDING.md §4.1) written packet by packet, and the MP4 remux of finished playlists
//! (`moov` first).

use crate::{init, TranscodeError};
use ffmpeg_next as ff;
use std::path::Path;

/// An audio track's shape: AAC-LC with this AudioSpecificConfig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioTrack {
    pub sample_rate: u32,
    pub channels: u32,
    pub asc: Vec<u8>,
}

/// One MPEG-TS file being written.
pub struct TsSegment {
    output: ff::format::context::Output,
    video: Option<(usize, ff::Rational)>,
    audio: Option<(usize, ff::Rational)>,
}

// SAFETY: the format context is owned by this value and used through `&mut self`.
unsafe impl Send for TsSegment {}

pub(crate) fn set_extradata(params: &mut ff::codec::Parameters, data: &[u8]) {
    // SAFETY: extradata is allocated with FFmpeg's allocator (and padding), owned by the
    // parameters, which free it.
    unsafe {
        let p = params.as_mut_ptr();
        let buf = ff::ffi::av_mallocz(data.len() + ff::ffi::AV_INPUT_BUFFER_PADDING_SIZE as usize) as *mut u8;
        std::ptr::copy_nonoverlapping(data.as_ptr(), buf, data.len());
        (*p).extradata = buf;
        (*p).extradata_size = data.len() as i32;
    }
}

impl TsSegment {
    /// Creates `path` (any name; the format is MPEG-TS) with a video track of this size and/or an
    /// AAC track. An audio-only file puts its track on PID 257, as it would be next to video.
    pub fn create(path: &Path, video: Option<(u32, u32)>, audio: Option<&AudioTrack>) -> Result<TsSegment, TranscodeError> {
        Self::create_as(path, "mpegts", ff::codec::Id::H264, video, audio)
    }

    /// The same with H.265 video (an HEVC publisher's original).
    pub fn create_hevc(path: &Path, video: Option<(u32, u32)>, audio: Option<&AudioTrack>) -> Result<TsSegment, TranscodeError> {
        Self::create_as(path, "mpegts", ff::codec::Id::HEVC, video, audio)
    }

    /// A self-initializing fragmented MP4 segment with AV1 video (an AV1 publisher's original,
    /// which MPEG-TS cannot carry): `ftyp` and `moov`, then a fragment per keyframe, decode
    /// times on the task clock (`tfdt`), so segments play one after another in an HLS playlist
    /// that names each one's own init section (`fmp4_init_len`). `sequence_header` is the AV1
    /// sequence header OBU, from which the `av1C` box is built.
    pub fn create_av1_fmp4(path: &Path, video: (u32, u32), sequence_header: &[u8], audio: Option<&AudioTrack>) -> Result<TsSegment, TranscodeError> {
        Self::create_with(path, "mp4", ff::codec::Id::AV1, Some(video), Some(sequence_header), audio)
    }

    /// The same for an MP4 (`moov` first): `tessera merge`'s output.
    pub fn create_mp4(path: &Path, video: Option<(u32, u32)>, audio: Option<&AudioTrack>) -> Result<TsSegment, TranscodeError> {
        Self::create_as(path, "mp4", ff::codec::Id::H264, video, audio)
    }

    fn create_as(path: &Path, format: &str, video_codec: ff::codec::Id, video: Option<(u32, u32)>, audio: Option<&AudioTrack>) -> Result<TsSegment, TranscodeError> {
        Self::create_with(path, format, video_codec, video, None, audio)
    }

    fn create_with(
        path: &Path,
        format: &str,
        video_codec: ff::codec::Id,
        video: Option<(u32, u32)>,
        extradata: Option<&[u8]>,
        audio: Option<&AudioTrack>,
    ) -> Result<TsSegment, TranscodeError> {
        init();
        let mut output = ff::format::output_as(path, format)?;
        let mut video_index = None;
        let mut audio_index = None;
        if let Some((w, h)) = video {
            let mut s = output.add_stream(ff::encoder::find(video_codec))?;
            let mut params = ff::codec::Parameters::new();
            // SAFETY: plain fields of freshly allocated parameters.
            unsafe {
                let p = params.as_mut_ptr();
                (*p).codec_type = ff::ffi::AVMediaType::AVMEDIA_TYPE_VIDEO;
                (*p).codec_id = video_codec.into();
                (*p).width = w as i32;
                (*p).height = h as i32;
            }
            if let Some(e) = extradata {
                set_extradata(&mut params, e);
            }
            s.set_parameters(params);
            s.set_time_base((1, 90_000));
            video_index = Some(s.index());
        }
        if let Some(a) = audio {
            let mut s = output.add_stream(ff::encoder::find(ff::codec::Id::AAC))?;
            let mut params = ff::codec::Parameters::new();
            // SAFETY: as above.
            unsafe {
                let p = params.as_mut_ptr();
                (*p).codec_type = ff::ffi::AVMediaType::AVMEDIA_TYPE_AUDIO;
                (*p).codec_id = ff::ffi::AVCodecID::AV_CODEC_ID_AAC;
                (*p).sample_rate = a.sample_rate as i32;
                ff::ffi::av_channel_layout_default(&mut (*p).ch_layout, a.channels as i32);
                (*p).frame_size = 1024;
            }
            set_extradata(&mut params, &a.asc);
            s.set_parameters(params);
            s.set_time_base((1, 90_000));
            audio_index = Some(s.index());
        }
        let mut opts = ff::Dictionary::new();
        if format == "mpegts" {
            opts.set("mpegts_start_pid", if video.is_none() { "257" } else { "256" });
        } else if extradata.is_some() {
            // The first fragment's tfdt is its packets' time, not zero: fragmented output would
            // otherwise shift the segment to start at zero (avoid_negative_ts make_zero).
            opts.set("movflags", "+frag_keyframe+empty_moov+default_base_moof+frag_discont");
            opts.set("avoid_negative_ts", "make_non_negative");
        } else {
            opts.set("movflags", "+faststart");
        }
        output.write_header_with(opts)?;
        let tb = |i: Option<usize>, o: &ff::format::context::Output| i.map(|i| (i, o.stream(i).map(|s| s.time_base()).unwrap_or(ff::Rational(1, 90_000))));
        let (video, audio) = (tb(video_index, &output), tb(audio_index, &output));
        Ok(TsSegment { output, video, audio })
    }

    fn write(&mut self, track: Option<(usize, ff::Rational)>, data: &[u8], dts_ms: i64, cts_ms: i32, key: bool) -> Result<(), TranscodeError> {
        let Some((index, tb)) = track else { return Ok(()) };
        let mut packet = ff::Packet::copy(data);
        let ticks = |ms: i64| ms * tb.denominator() as i64 / (1000 * tb.numerator().max(1) as i64);
        packet.set_pts(Some(ticks(dts_ms + cts_ms.max(0) as i64)));
        packet.set_dts(Some(ticks(dts_ms)));
        packet.set_stream(index);
        if key {
            packet.set_flags(ff::packet::Flags::KEY);
        }
        packet.write_interleaved(&mut self.output)?;
        Ok(())
    }

    /// One H.264 access unit in Annex-B form, decoded at `dts_ms` (the task clock) and shown
    /// `cts_ms` later (B-frames; 0 without).
    pub fn write_video(&mut self, annex_b: &[u8], dts_ms: i64, cts_ms: i32, keyframe: bool) -> Result<(), TranscodeError> {
        self.write(self.video, annex_b, dts_ms, cts_ms, keyframe)
    }

    /// One raw AAC frame (the muxer adds the ADTS header).
    pub fn write_audio(&mut self, aac: &[u8], pts_ms: i64) -> Result<(), TranscodeError> {
        self.write(self.audio, aac, pts_ms, 0, true)
    }

    pub fn finish(mut self) -> Result<(), TranscodeError> {
        self.output.write_trailer()?;
        Ok(())
    }
}

/// The length of a fragmented MP4's init section (its leading `ftyp` and `moov` boxes), for
/// `#EXT-X-MAP:BYTERANGE`; `None` when the file does not start with them.
pub fn fmp4_init_len(path: &Path) -> Option<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let mut at = 0u64;
    let mut seen_moov = false;
    loop {
        let mut header = [0u8; 8];
        f.seek(SeekFrom::Start(at)).ok()?;
        if f.read_exact(&mut header).is_err() {
            break;
        }
        let size = u32::from_be_bytes(header[..4].try_into().ok()?) as u64;
        match &header[4..] {
            b"ftyp" | b"moov" if size >= 8 => {
                seen_moov |= &header[4..] == b"moov";
                at += size;
            }
            _ => break,
        }
    }
    seen_moov.then_some(at)
}

/// Remuxes playlists (or any inputs) into one MP4 with `moov` first: every stream of every input
/// is copied, interleaved by time. Returns the output's duration in seconds.
pub fn remux_to_mp4(inputs: &[&Path], out: &Path) -> Result<f64, TranscodeError> {
    let parts = remux_split(inputs, "mp4", &|_| out.to_path_buf(), f64::INFINITY, u64::MAX)?;
    Ok(parts.first().map(|(_, d)| *d).unwrap_or(0.0))
}

/// Copies every audio and video stream of `inputs`, interleaved by time and shifted so the
/// earliest packet is at 0, into `format` ("mp4", moov first, or "adts"). A new part (from
/// `part(n)`, n from 1) starts at the first keyframe (any packet without video) once the part
/// is `max_seconds` long or `max_bytes` big. Returns each part with its duration.
pub fn remux_split(
    inputs: &[&Path],
    format: &str,
    part: &dyn Fn(usize) -> std::path::PathBuf,
    max_seconds: f64,
    max_bytes: u64,
) -> Result<Vec<(std::path::PathBuf, f64)>, TranscodeError> {
    init();
    let mut ins: Vec<ff::format::context::Input> = inputs.iter().map(ff::format::input).collect::<Result<_, _>>()?;
    // (input, input stream) → output stream index, input time base, parameters.
    let mut map: Vec<Vec<Option<(usize, ff::Rational)>>> = Vec::new();
    let mut params: Vec<ff::codec::Parameters> = Vec::new();
    let mut has_video = false;
    for input in &ins {
        let mut m = Vec::new();
        for s in input.streams() {
            let medium = s.parameters().medium();
            let keep = match format {
                "adts" => medium == ff::media::Type::Audio,
                _ => medium == ff::media::Type::Video || medium == ff::media::Type::Audio,
            };
            if !keep {
                m.push(None);
                continue;
            }
            has_video |= medium == ff::media::Type::Video;
            m.push(Some((params.len(), s.time_base())));
            params.push(s.parameters());
        }
        map.push(m);
    }
    let open = |path: &Path| -> Result<(ff::format::context::Output, Vec<ff::Rational>), TranscodeError> {
        let mut output = ff::format::output_as(path, format)?;
        for p in &params {
            let mut o = output.add_stream(ff::encoder::find(ff::codec::Id::None))?;
            o.set_parameters(p.clone());
            // SAFETY: the container picks its own codec tag.
            unsafe {
                (*o.parameters().as_mut_ptr()).codec_tag = 0;
            }
        }
        let mut opts = ff::Dictionary::new();
        if format == "mp4" {
            opts.set("movflags", "+faststart");
        }
        output.write_header_with(opts)?;
        let tbs = output.streams().map(|s| s.time_base()).collect();
        Ok((output, tbs))
    };
    let mut parts = vec![(part(1), 0f64)];
    let (mut output, mut out_tbs) = open(&parts[0].0)?;
    // The next packet of each input; always write the earliest.
    let mut next: Vec<Option<ff::Packet>> = ins.iter_mut().map(read_one).collect();
    // Every stream is shifted by the same amount (the part's earliest packet time), so audio
    // and video stay aligned as recorded.
    let mut base_s: Option<f64> = None;
    let mut bytes = 0u64;
    // Joined playlists are not one clock: a restarted recording continues its task clock where
    // it stopped (so a frame can overlap), and after a discontinuity an input may start over.
    // A stream that jumps back by more than a second is shifted to continue where it ended
    // (per stream: a TS demuxer hands out one stream's first packet after the jump before the
    // other's last one before it); smaller overlaps are nudged one tick forward. Muxers refuse a
    // dts that goes back.
    let mut shift_s = vec![0f64; params.len()];
    let mut stream_end_s: Vec<Option<f64>> = vec![None; params.len()];
    let mut last_dts: Vec<Option<i64>> = vec![None; params.len()];
    loop {
        let pick = next
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (i, p)))
            .min_by(|(ia, a), (ib, b)| shifted(a, &map[*ia], &shift_s).partial_cmp(&shifted(b, &map[*ib], &shift_s)).unwrap_or(std::cmp::Ordering::Equal))
            .map(|(i, _)| i);
        let Some(i) = pick else { break };
        let mut packet = next[i].take().expect("picked");
        next[i] = read_one(&mut ins[i]);
        let Some((oi, in_tb)) = map[i].get(packet.stream()).copied().flatten() else { continue };
        let mut t = seconds(&packet, &map[i]) + shift_s[oi];
        if let Some(end) = stream_end_s[oi] {
            if t + 1.0 < end {
                shift_s[oi] += end - t;
                t = end;
            }
        }
        stream_end_s[oi] = Some(t + packet.duration().max(0) as f64 * in_tb.numerator() as f64 / in_tb.denominator().max(1) as f64);
        let is_video = params[oi].medium() == ff::media::Type::Video;
        let boundary = !has_video || (is_video && packet.is_key());
        if let Some(b) = base_s {
            if boundary && (t - b >= max_seconds || bytes >= max_bytes) {
                output.write_trailer()?;
                parts.push((part(parts.len() + 1), 0.0));
                (output, out_tbs) = open(&parts.last().expect("pushed").0)?;
                base_s = None;
                bytes = 0;
                last_dts.iter_mut().for_each(|d| *d = None);
            }
        }
        let base_s = *base_s.get_or_insert(t);
        packet.rescale_ts(in_tb, out_tbs[oi]);
        let tb = out_tbs[oi];
        let ticks = |s: f64| (s * tb.denominator() as f64 / tb.numerator().max(1) as f64).round() as i64;
        let offset = ticks(shift_s[oi]) - ticks(base_s);
        let mut dts = packet.dts().map(|t| (t + offset).max(0));
        let mut pts = packet.pts().map(|t| (t + offset).max(0));
        if let (Some(d), Some(last)) = (dts, last_dts[oi]) {
            if d <= last {
                dts = Some(last + 1);
                pts = pts.map(|p| p.max(last + 1));
            }
        }
        last_dts[oi] = dts.or(last_dts[oi]);
        packet.set_pts(pts);
        packet.set_dts(dts);
        let end = packet.pts().unwrap_or(0) + packet.duration();
        let last = parts.last_mut().expect("a part");
        last.1 = last.1.max(end as f64 * tb.numerator() as f64 / tb.denominator().max(1) as f64);
        bytes += packet.size() as u64;
        packet.set_stream(oi);
        packet.set_position(-1);
        packet.write_interleaved(&mut output)?;
    }
    output.write_trailer()?;
    Ok(parts)
}

/// Decodes a media file: video frames scaled to one size (YUV420P) and audio as 48 kHz stereo
/// `f32`, each with its time in ms (the file's own clock).
pub struct FileDecoder {
    input: ff::format::context::Input,
    video: Option<(usize, ff::decoder::Video, ff::Rational)>,
    audio: Option<(usize, ff::decoder::Audio, ff::Rational)>,
    scaler: Option<(ff::software::scaling::Context, (u32, u32, ff::format::Pixel))>,
    resampler: Option<ff::software::resampling::Context>,
    size: (u32, u32),
}

// SAFETY: all contexts are owned by this value and used through `&mut self`.
unsafe impl Send for FileDecoder {}

pub enum Decoded {
    Video { pts_ms: i64, frame: ff::frame::Video },
    Audio { pts_ms: i64, pcm: Vec<f32> },
}

impl FileDecoder {
    pub fn open(path: &Path, size: (u32, u32)) -> Result<FileDecoder, TranscodeError> {
        init();
        let input = ff::format::input(path)?;
        let video = match input.streams().best(ff::media::Type::Video) {
            Some(s) => Some((s.index(), ff::codec::context::Context::from_parameters(s.parameters())?.decoder().video()?, s.time_base())),
            None => None,
        };
        let audio = match input.streams().best(ff::media::Type::Audio) {
            Some(s) => Some((s.index(), ff::codec::context::Context::from_parameters(s.parameters())?.decoder().audio()?, s.time_base())),
            None => None,
        };
        Ok(FileDecoder { input, video, audio, scaler: None, resampler: None, size })
    }

    /// The video's own size, if the file has video.
    pub fn video_size(&self) -> Option<(u32, u32)> {
        self.video.as_ref().map(|(_, d, _)| (d.width(), d.height()))
    }

    /// Decodes the next packet; `None` at the end.
    pub fn next(&mut self, out: &mut Vec<Decoded>) -> Option<()> {
        let mut packet = ff::Packet::empty();
        loop {
            match packet.read(&mut self.input) {
                Ok(()) => break,
                Err(ff::Error::Eof) => return None,
                Err(_) => continue,
            }
        }
        let index = packet.stream();
        if let Some((_, decoder, tb)) = self.video.as_mut().filter(|(i, ..)| *i == index) {
            let tb = *tb;
            if decoder.send_packet(&packet).is_ok() {
                let mut frame = ff::frame::Video::empty();
                while decoder.receive_frame(&mut frame).is_ok() {
                    let pts = frame.timestamp().or(frame.pts()).unwrap_or(0);
                    let key = (frame.width(), frame.height(), frame.format());
                    if self.scaler.as_ref().is_none_or(|(_, k)| *k != key) {
                        match ff::software::scaling::Context::get(key.2, key.0, key.1, ff::format::Pixel::YUV420P, self.size.0, self.size.1, ff::software::scaling::Flags::BILINEAR)
                        {
                            Ok(c) => self.scaler = Some((c, key)),
                            Err(_) => continue,
                        }
                    }
                    let mut scaled = ff::frame::Video::new(ff::format::Pixel::YUV420P, self.size.0, self.size.1);
                    if self.scaler.as_mut().expect("made").0.run(&frame, &mut scaled).is_ok() {
                        out.push(Decoded::Video { pts_ms: crate::video::to_ms(pts, tb), frame: scaled });
                    }
                }
            }
        } else if let Some((_, decoder, tb)) = self.audio.as_mut().filter(|(i, ..)| *i == index) {
            let tb = *tb;
            if decoder.send_packet(&packet).is_ok() {
                let mut frame = ff::frame::Audio::empty();
                while decoder.receive_frame(&mut frame).is_ok() {
                    let pts = frame.timestamp().or(frame.pts()).unwrap_or(0);
                    if self.resampler.is_none() {
                        let layout = if frame.channels() >= 2 { ff::ChannelLayout::STEREO } else { ff::ChannelLayout::MONO };
                        match ff::software::resampling::Context::get(
                            frame.format(),
                            layout,
                            frame.rate(),
                            ff::format::Sample::F32(ff::format::sample::Type::Packed),
                            ff::ChannelLayout::STEREO,
                            48_000,
                        ) {
                            Ok(r) => self.resampler = Some(r),
                            Err(_) => continue,
                        }
                    }
                    let mut resampled = ff::frame::Audio::empty();
                    if self.resampler.as_mut().expect("made").run(&frame, &mut resampled).is_ok() {
                        let n = resampled.samples() * 2;
                        let data = resampled.plane::<f32>(0);
                        out.push(Decoded::Audio { pts_ms: crate::video::to_ms(pts, tb), pcm: data[..n.min(data.len())].to_vec() });
                    }
                }
            }
        }
        Some(())
    }
}

/// The duration (s) libavformat finds in a media file, if any.
pub fn probe_duration(path: &Path) -> Option<f64> {
    init();
    let input = ff::format::input(path).ok()?;
    let d = input.duration();
    (d > 0).then(|| d as f64 / ff::ffi::AV_TIME_BASE as f64)
}

fn read_one(input: &mut ff::format::context::Input) -> Option<ff::Packet> {
    let mut p = ff::Packet::empty();
    loop {
        match p.read(input) {
            Ok(()) => return Some(p),
            Err(ff::Error::Eof) => return None,
            Err(_) => continue,
        }
    }
}

fn shifted(p: &ff::Packet, map: &[Option<(usize, ff::Rational)>], shift_s: &[f64]) -> f64 {
    seconds(p, map) + map.get(p.stream()).copied().flatten().map(|(oi, _)| shift_s[oi]).unwrap_or(0.0)
}

fn seconds(p: &ff::Packet, map: &[Option<(usize, ff::Rational)>]) -> f64 {
    let tb = map.get(p.stream()).copied().flatten().map(|(_, tb)| tb).unwrap_or(ff::Rational(1, 90_000));
    p.dts().or(p.pts()).unwrap_or(0) as f64 * tb.numerator() as f64 / tb.denominator().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::AacEncoder;
    use crate::video::{EncoderSettings, H264Encoder};

    #[test]
    fn ts_segments_probe_and_remux_to_mp4() {
        let dir = std::env::temp_dir().join(format!("tessera-mux-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut enc = H264Encoder::new(EncoderSettings { width: 320, height: 180, fps: 25, kbps: 300, gop_frames: 25, preset: "ultrafast" }).unwrap();
        let mut aac = AacEncoder::new(2, 96).unwrap();
        let track = AudioTrack { sample_rate: 48_000, channels: 2, asc: aac.audio_specific_config().to_vec() };
        let ts = dir.join("a.ts");
        let mut seg = TsSegment::create(&ts, Some((320, 180)), Some(&track)).unwrap();
        let mut frame = ff::frame::Video::new(ff::format::Pixel::YUV420P, 320, 180);
        let mut out = Vec::new();
        let mut audio = Vec::new();
        for i in 0..50i64 {
            for p in 0..3 {
                frame.data_mut(p).fill((i * 3) as u8);
            }
            out.clear();
            enc.encode(&mut frame, i * 40, &mut out).unwrap();
            for e in &out {
                seg.write_video(&e.data, e.pts_ms, 0, e.keyframe).unwrap();
            }
            audio.clear();
            aac.push(&vec![0.1f32; 1920 * 2], &mut audio).unwrap();
            for f in &audio {
                seg.write_audio(&f.data, (f.ts48 / 48) as i64).unwrap();
            }
        }
        seg.finish().unwrap();
        let input = ff::format::input(&ts).unwrap();
        let codecs: Vec<ff::codec::Id> = input.streams().map(|s| s.parameters().id()).collect();
        assert_eq!(codecs, vec![ff::codec::Id::H264, ff::codec::Id::AAC]);
        let ids: Vec<i32> = input.streams().map(|s| s.id()).collect();
        assert_eq!(ids, vec![256, 257], "PIDs");
        let mp4 = dir.join("a.mp4");
        let duration = remux_to_mp4(&[&ts], &mp4).unwrap();
        assert!((duration - 2.0).abs() < 0.2, "{duration}");
        let input = ff::format::input(&mp4).unwrap();
        assert_eq!(input.streams().count(), 2);
        // Split at 1 s (keyframes every second): two parts, each about a second, both A/V.
        let parts = remux_split(&[&ts], "mp4", &|n| dir.join(format!("p_{n}.mp4")), 1.0, u64::MAX).unwrap();
        assert_eq!(parts.len(), 2, "{parts:?}");
        assert!(parts.iter().all(|(p, d)| (0.8..1.3).contains(d) && ff::format::input(p).unwrap().streams().count() == 2), "{parts:?}");
        // The audio alone as ADTS.
        let aac = remux_split(&[&ts], "adts", &|_| dir.join("a.aac"), f64::INFINITY, u64::MAX).unwrap();
        assert!((aac[0].1 - 2.0).abs() < 0.2, "{aac:?}");
        assert_eq!(ff::format::input(&aac[0].0).unwrap().streams().best(ff::media::Type::Audio).unwrap().parameters().id(), ff::codec::Id::AAC);
        // Audio-only TS: PID 257.
        let audio_ts = dir.join("b.ts");
        let seg = TsSegment::create(&audio_ts, None, Some(&track)).unwrap();
        seg.finish().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A 2 s A/V segment whose clock starts at `start_ms`.
    fn segment(path: &Path, start_ms: i64) {
        let mut enc = H264Encoder::new(EncoderSettings { width: 160, height: 96, fps: 25, kbps: 200, gop_frames: 25, preset: "ultrafast" }).unwrap();
        let mut aac = AacEncoder::new(2, 96).unwrap();
        let track = AudioTrack { sample_rate: 48_000, channels: 2, asc: aac.audio_specific_config().to_vec() };
        let mut seg = TsSegment::create(path, Some((160, 96)), Some(&track)).unwrap();
        let mut frame = ff::frame::Video::new(ff::format::Pixel::YUV420P, 160, 96);
        let (mut out, mut audio) = (Vec::new(), Vec::new());
        for i in 0..50i64 {
            out.clear();
            enc.encode(&mut frame, i * 40, &mut out).unwrap();
            for e in &out {
                seg.write_video(&e.data, start_ms + e.pts_ms, 0, e.keyframe).unwrap();
            }
            audio.clear();
            aac.push(&vec![0.1f32; 1920 * 2], &mut audio).unwrap();
            for f in &audio {
                seg.write_audio(&f.data, start_ms + (f.ts48 / 48) as i64).unwrap();
            }
        }
        seg.finish().unwrap();
    }

    #[test]
    fn joined_playlists_that_overlap_or_start_over_still_remux() {
        let dir = std::env::temp_dir().join(format!("tessera-mux-join-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // As a restarted recording writes them: the second part continues the task clock where
        // the first stopped (its first frames overlap the first's last); the third starts over.
        let starts = [0i64, 1_960, 0];
        let mut playlist = String::from("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-TARGETDURATION:3\n");
        for (n, start) in starts.iter().enumerate() {
            let ts = dir.join(format!("s{n}.ts"));
            segment(&ts, *start);
            if n > 0 {
                playlist.push_str("#EXT-X-DISCONTINUITY\n");
            }
            playlist.push_str(&format!("#EXTINF:2.000,\n{}\n", ts.display()));
        }
        playlist.push_str("#EXT-X-ENDLIST\n");
        let m3u8 = dir.join("joined.m3u8");
        std::fs::write(&m3u8, playlist).unwrap();
        let mp4 = dir.join("joined.mp4");
        let duration = remux_to_mp4(&[&m3u8], &mp4).unwrap();
        assert!((5.5..6.5).contains(&duration), "{duration}");
        // Every packet arrived, each stream's dts strictly rising.
        let mut input = ff::format::input(&mp4).unwrap();
        let video = input.streams().best(ff::media::Type::Video).unwrap().index();
        let mut last = [i64::MIN; 2];
        let mut frames = 0;
        while let Some(p) = read_one(&mut input) {
            let d = p.dts().unwrap();
            assert!(d > last[p.stream()], "stream {} dts {d} after {}", p.stream(), last[p.stream()]);
            last[p.stream()] = d;
            frames += usize::from(p.stream() == video);
        }
        assert_eq!(frames, 150);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// AV1 packets of a clip the ffmpeg CLI encodes (SVT-AV1), with their keyframe flags.
    fn av1_clip(dir: &Path) -> Vec<(Vec<u8>, bool)> {
        let clip = dir.join("clip.mkv");
        let made = std::process::Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x180:rate=25", "-t", "4", "-c:v", "libsvtav1", "-g", "25", "-preset", "12"])
            .arg(&clip)
            .status()
            .unwrap();
        assert!(made.success());
        let mut input = ff::format::input(&clip).unwrap();
        let mut out = Vec::new();
        while let Some(p) = read_one(&mut input) {
            out.push((p.data().unwrap().to_vec(), p.is_key()));
        }
        out
    }

    #[test]
    fn av1_fragmented_segments_keep_their_time_and_join_through_an_hls_playlist() {
        let dir = std::env::temp_dir().join(format!("tessera-mux-av1-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let packets = av1_clip(&dir);
        assert_eq!(packets.len(), 100);
        let seq = {
            let key = &packets[0].0;
            // The sequence header OBU (type 1) with its size field, as the recording takes it.
            let at = (0..key.len()).find(|&i| key[i] >> 3 & 0x0f == 1 && key[i] & 0x02 != 0).unwrap();
            let len = key[at + 1] as usize;
            key[at..at + 2 + len].to_vec()
        };
        let mut playlist = String::from("#EXTM3U\n#EXT-X-VERSION:6\n#EXT-X-TARGETDURATION:3\n");
        for (n, chunk) in packets.chunks(50).enumerate() {
            let path = dir.join(format!("s{n}.m4s"));
            let mut seg = TsSegment::create_av1_fmp4(&path, (320, 180), &seq, None).unwrap();
            for (i, (data, key)) in chunk.iter().enumerate() {
                seg.write_video(data, 5_000 + (n * 50 + i) as i64 * 40, 0, *key).unwrap();
            }
            seg.finish().unwrap();
            let init = fmp4_init_len(&path).unwrap();
            let len = std::fs::metadata(&path).unwrap().len();
            // Each segment alone is an MP4 whose time goes on from the last one's.
            let mut input = ff::format::input(&path).unwrap();
            let first = read_one(&mut input).unwrap();
            let tb = input.stream(0).unwrap().time_base();
            let start = first.dts().unwrap() as f64 * tb.numerator() as f64 / tb.denominator() as f64;
            assert!((start - (5.0 + n as f64 * 2.0)).abs() < 0.05, "segment {n} starts at {start}");
            playlist.push_str(&format!("#EXT-X-MAP:URI=\"s{n}.m4s\",BYTERANGE=\"{init}@0\"\n#EXT-X-BYTERANGE:{}@{init}\n#EXTINF:2.000,\ns{n}.m4s\n", len - init));
        }
        playlist.push_str("#EXT-X-ENDLIST\n");
        let m3u8 = dir.join("a.m3u8");
        std::fs::write(&m3u8, playlist).unwrap();
        let mp4 = dir.join("a.mp4");
        let duration = remux_to_mp4(&[&m3u8], &mp4).unwrap();
        assert!((duration - 4.0).abs() < 0.1, "{duration}");
        let mut input = ff::format::input(&mp4).unwrap();
        assert_eq!(input.streams().best(ff::media::Type::Video).unwrap().parameters().id(), ff::codec::Id::AV1);
        let mut count = 0;
        while read_one(&mut input).is_some() {
            count += 1;
        }
        assert_eq!(count, 100);
        assert_eq!(fmp4_init_len(&m3u8), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
