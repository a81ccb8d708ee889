//! `tessera merge` (RECORDING.md §9): a single-stream recording's audio and video HLS into one
//! MP4 per user and segment. The plan (which TS slices, which segments by the 15 s gap rule,
//! where each lands on the output timeline) is a pure function of the file names and
//! durations; the render decodes the slices in time order, draws frames at the output rate
//! (black where no video), places audio on the timeline (silence in holes), and encodes H.264 +
//! AAC into the MP4.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tessera_transcode::decode::AacEncoder;
use tessera_transcode::mux::{probe_duration, AudioTrack, Decoded, FileDecoder, TsSegment};
use tessera_transcode::video::{EncoderSettings, H264Encoder};

/// Two slices more than this far apart belong to different segments.
pub const SEGMENT_GAP_MS: i64 = 15_000;

#[derive(Debug, Clone)]
pub struct MergeOptions {
    pub dir: PathBuf,
    /// 0: one file per segment per user; 1: one file per user.
    pub mode: u8,
    /// With mode 1: drop the gaps instead of filling them.
    pub skip_gaps: bool,
    /// 0 main video + audio, 1 main video else aux, 2 aux video + audio.
    pub av: u8,
    pub fps: u32,
    pub size: Option<(u32, u32)>,
    pub out_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slice {
    pub path: PathBuf,
    pub user: String,
    pub media: String,
    pub video: bool,
    pub start_ms: i64,
    pub duration_ms: i64,
}

impl Slice {
    fn end_ms(&self) -> i64 {
        self.start_ms + self.duration_ms
    }
}

/// The TS slices of a task directory, from their names (RECORDING.md §4).
pub fn find_slices(dir: &Path) -> Vec<Slice> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(base) = name.strip_suffix(".ts") else { continue };
        let base = match base.strip_prefix("ha").and_then(|r| r.split_once('_')) {
            Some((n, rest)) if n.parse::<u32>().is_ok() => rest,
            _ => base,
        };
        let Some((_, rest)) = base.split_once("__UserId_s_") else { continue };
        let Some((user_b64, tail)) = rest.split_once("__UserId_e_") else { continue };
        // tail: <media>_<type>_<UTC>
        let mut parts = tail.splitn(3, '_');
        let (Some(media), Some(kind), Some(stamp)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let kind = if kind == "audio" && stamp.starts_with("video_") { "audio_video" } else { kind };
        let stamp = stamp.rsplit('_').next().unwrap_or(stamp);
        let user = decode_id(user_b64);
        let Some(start_ms) = parse_stamp(stamp) else { continue };
        let duration_ms = probe_duration(&e.path()).map(|d| (d * 1000.0) as i64).unwrap_or(0);
        if duration_ms <= 0 {
            continue;
        }
        let both = kind == "audio_video";
        // A muxed slice counts as both a video and an audio slice.
        if kind == "video" || both {
            out.push(Slice { path: e.path(), user: user.clone(), media: media.to_string(), video: true, start_ms, duration_ms });
        }
        if kind == "audio" || both {
            out.push(Slice { path: e.path(), user, media: media.to_string(), video: false, start_ms, duration_ms });
        }
    }
    out.sort_by_key(|s| (s.user.clone(), s.start_ms));
    out
}

fn decode_id(b64: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(b64.replace('-', "/").replace('.', "=")).ok().and_then(|b| String::from_utf8(b).ok()).unwrap_or_default()
}

/// `YYYYMMDDhhmmssSSS` → Unix ms.
pub fn parse_stamp(s: &str) -> Option<i64> {
    if s.len() != 17 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |a: usize, b: usize| s[a..b].parse::<i64>().unwrap_or(0);
    let (y, m, d) = (n(0, 4), n(4, 6), n(6, 8));
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + n(8, 10) * 3600 + n(10, 12) * 60 + n(12, 14)) * 1000 + n(14, 17))
}

/// One output file: its slices and where each lands (ms from the file's start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub user: String,
    /// Unix ms of the first slice: the `<timestamp>` in the name.
    pub start_ms: i64,
    pub duration_ms: i64,
    pub video: Vec<(Slice, i64)>,
    pub audio: Vec<(Slice, i64)>,
}

/// The plan: which slices go to which output, and at what offset (RECORDING.md §9 rules).
pub fn plan(slices: &[Slice], mode: u8, skip_gaps: bool, av: u8) -> Vec<Output> {
    let mut by_user: BTreeMap<&str, Vec<&Slice>> = BTreeMap::new();
    for s in slices {
        by_user.entry(s.user.as_str()).or_default().push(s);
    }
    let mut outputs = Vec::new();
    for (user, all) in by_user {
        let has_main_video = all.iter().any(|s| s.video && s.media == "main");
        let (video_media, audio_media) = match av {
            1 => (if has_main_video { "main" } else { "aux" }, "main"),
            2 => ("aux", "aux"),
            _ => ("main", "main"),
        };
        let mut chosen: Vec<&Slice> = all.into_iter().filter(|s| if s.video { s.media == video_media } else { s.media == audio_media }).collect();
        chosen.sort_by_key(|s| s.start_ms);
        // Segments: a new one after more than 15 s with neither audio nor video.
        let mut segments: Vec<Vec<&Slice>> = Vec::new();
        let mut end = i64::MIN;
        for s in chosen {
            if segments.is_empty() || s.start_ms > end + SEGMENT_GAP_MS {
                segments.push(Vec::new());
            }
            end = end.max(s.end_ms());
            segments.last_mut().expect("pushed").push(s);
        }
        let mut place = |segs: &[Vec<&Slice>]| {
            let Some(first) = segs.first().and_then(|s| s.first()) else { return };
            let origin = first.start_ms;
            let mut out = Output { user: user.to_string(), start_ms: origin, duration_ms: 0, video: Vec::new(), audio: Vec::new() };
            let mut removed = 0i64;
            let mut prev_end: Option<i64> = None;
            for seg in segs {
                let seg_start = seg.iter().map(|s| s.start_ms).min().unwrap_or(origin);
                let seg_end = seg.iter().map(|s| s.end_ms()).max().unwrap_or(seg_start);
                if let (true, Some(pe)) = (skip_gaps, prev_end) {
                    removed += (seg_start - pe).max(0);
                }
                for s in seg {
                    let at = s.start_ms - origin - removed;
                    if s.video {
                        out.video.push(((*s).clone(), at));
                    } else {
                        out.audio.push(((*s).clone(), at));
                    }
                }
                out.duration_ms = seg_end - origin - removed;
                prev_end = Some(seg_end);
            }
            outputs.push(out);
        };
        if mode == 1 {
            place(&segments);
        } else {
            for seg in &segments {
                place(std::slice::from_ref(seg));
            }
        }
    }
    outputs
}

/// Why `tessera merge` stopped.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("{} holds no single-stream recording (no <app>_<room>__UserId_s_… .ts files)", .0.display())]
    NothingToMerge(PathBuf),
    #[error("{}: {source}", .path.display())]
    OutDir { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Media(#[from] tessera_transcode::TranscodeError),
}

/// Renders one planned output; `progress` gets 0..=100.
pub fn render(out: &Output, options: &MergeOptions, progress: &mut dyn FnMut(u32)) -> Result<PathBuf, MergeError> {
    let has_video = !out.video.is_empty();
    let size = match options.size {
        Some(s) => (s.0 & !1, s.1 & !1),
        None => out
            .video
            .iter()
            .filter_map(|(s, _)| FileDecoder::open(&s.path, (16, 16)).ok().and_then(|d| d.video_size()))
            .max_by_key(|(w, h)| w * h)
            .map(|(w, h)| (w & !1, h & !1))
            .unwrap_or((640, 360)),
    };
    let name = if has_video { format!("{}_{}_av.mp4", out.user, out.start_ms) } else { format!("{}_{}.m4a", out.user, out.start_ms) };
    let path = options.out_dir.join(&name);
    let fps = options.fps.clamp(5, 120);
    let mut aac = AacEncoder::new(2, 96)?;
    let has_audio = !out.audio.is_empty();
    let track = AudioTrack { sample_rate: 48_000, channels: 2, asc: aac.audio_specific_config().to_vec() };
    let mut writer = TsSegment::create_mp4(&path, has_video.then_some(size), has_audio.then_some(&track))?;
    let total_frames = if has_video { (out.duration_ms * fps as i64 / 1000).max(1) } else { 0 };
    // Video: frames at the output rate; the newest decoded picture at or before each frame's
    // time, black where no slice covers it.
    if has_video {
        let mut encoder = H264Encoder::new(EncoderSettings {
            width: size.0,
            height: size.1,
            fps,
            kbps: tessera_transcode::video::default_kbps(size.0, size.1),
            gop_frames: fps * 2,
            preset: "veryfast",
        })?;
        let mut black = tessera_transcode::compose::Canvas::new(size.0, size.1);
        black.fill(tessera_transcode::compose::Rect { x: 0, y: 0, width: size.0, height: size.1 }, (0, 0, 0));
        let mut slices = out.video.iter().peekable();
        let mut current: Option<(FileDecoder, i64, i64, Option<i64>)> = None; // decoder, at, end, first pts
        let mut pending: std::collections::VecDeque<(i64, tessera_transcode::ff::frame::Video)> = Default::default();
        let mut shown: Option<tessera_transcode::ff::frame::Video> = None;
        let mut encoded = Vec::new();
        let mut decoded = Vec::new();
        for n in 0..total_frames {
            let t = n * 1000 / fps as i64;
            // Open the slice that covers t.
            while current.as_ref().is_none_or(|c| t >= c.2) {
                match slices.peek() {
                    Some((s, at)) if *at <= t + 1000 / fps as i64 => {
                        let (s, at) = slices.next().expect("peeked");
                        current = FileDecoder::open(&s.path, size).ok().map(|d| (d, *at, *at + s.duration_ms, None));
                        pending.clear();
                        if current.is_none() {
                            continue;
                        }
                    }
                    _ => {
                        current = None;
                        break;
                    }
                }
            }
            if let Some((decoder, at, end, first)) = current.as_mut() {
                // Decode until a frame later than t is queued.
                while pending.back().is_none_or(|(pt, _)| *pt <= t) {
                    decoded.clear();
                    if decoder.next(&mut decoded).is_none() {
                        break;
                    }
                    for d in decoded.drain(..) {
                        if let Decoded::Video { pts_ms, frame } = d {
                            let f = *first.get_or_insert(pts_ms);
                            pending.push_back((*at + pts_ms - f, frame));
                        }
                    }
                }
                while pending.front().is_some_and(|(pt, _)| *pt <= t) {
                    shown = pending.pop_front().map(|(_, f)| f);
                }
                if t >= *end {
                    shown = None;
                }
            } else {
                shown = None;
            }
            encoded.clear();
            match shown.as_mut() {
                Some(frame) => encoder.encode(frame, t, &mut encoded),
                None => encoder.encode(black.frame_mut(), t, &mut encoded),
            }?;
            for e in &encoded {
                writer.write_video(&e.data, e.pts_ms, 0, e.keyframe)?;
            }
            if n % fps as i64 == 0 {
                progress((n * (if has_audio { 70 } else { 100 }) / total_frames) as u32);
            }
        }
    }
    // Audio: each slice's samples at their place on the timeline; silence in between.
    if has_audio {
        let mut cursor = 0i64; // samples written (48 kHz frames)
        let mut frames = Vec::new();
        let total = out.duration_ms * 48;
        for (i, (s, at)) in out.audio.iter().enumerate() {
            let Ok(mut decoder) = FileDecoder::open(&s.path, (16, 16)) else { continue };
            let mut decoded = Vec::new();
            let mut first: Option<i64> = None;
            while decoder.next(&mut decoded).is_some() {
                for d in decoded.drain(..) {
                    let Decoded::Audio { pts_ms, pcm } = d else { continue };
                    let f = *first.get_or_insert(pts_ms);
                    let start = (*at + pts_ms - f) * 48;
                    if start > cursor {
                        let gap = (start - cursor) as usize;
                        aac.push(&vec![0.0; gap * 2], &mut frames)?;
                        cursor = start;
                    }
                    let skip = ((cursor - start).max(0) as usize * 2).min(pcm.len());
                    aac.push(&pcm[skip..], &mut frames)?;
                    cursor += ((pcm.len() - skip) / 2) as i64;
                    for f in frames.drain(..) {
                        writer.write_audio(&f.data, (f.ts48 / 48) as i64)?;
                    }
                }
            }
            progress(70 + (30 * (i + 1) / out.audio.len()) as u32);
        }
        if total > cursor {
            aac.push(&vec![0.0; (total - cursor) as usize * 2], &mut frames)?;
            for f in frames.drain(..) {
                writer.write_audio(&f.data, (f.ts48 / 48) as i64)?;
            }
        }
    }
    writer.finish()?;
    progress(100);
    Ok(path)
}

/// Runs the whole merge; returns the files written.
pub fn run(options: &MergeOptions, progress: &mut dyn FnMut(&str, u32)) -> Result<Vec<PathBuf>, MergeError> {
    let slices = find_slices(&options.dir);
    if slices.is_empty() {
        return Err(MergeError::NothingToMerge(options.dir.clone()));
    }
    std::fs::create_dir_all(&options.out_dir).map_err(|source| MergeError::OutDir { path: options.out_dir.clone(), source })?;
    let outputs = plan(&slices, options.mode, options.skip_gaps, options.av);
    let mut written = Vec::new();
    for o in &outputs {
        let label = format!("{} {}", o.user, o.start_ms);
        written.push(render(o, options, &mut |p| progress(&label, p))?);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(user: &str, media: &str, video: bool, start: i64, dur: i64) -> Slice {
        Slice { path: PathBuf::from(format!("{user}-{start}")), user: user.into(), media: media.into(), video, start_ms: start, duration_ms: dur }
    }

    #[test]
    fn segments_split_after_15_s_of_nothing() {
        let slices = vec![
            slice("a", "main", true, 0, 6000),
            slice("a", "main", false, 0, 6000),
            slice("a", "main", true, 6000, 6000),
            slice("a", "main", true, 12_000 + 20_000, 6000),
            slice("b", "main", false, 1000, 5000),
        ];
        let p = plan(&slices, 0, false, 0);
        assert_eq!(p.iter().map(|o| (o.user.as_str(), o.start_ms, o.duration_ms)).collect::<Vec<_>>(), vec![("a", 0, 12_000), ("a", 32_000, 6000), ("b", 1000, 5000)]);
        let one = plan(&slices, 1, false, 0);
        assert_eq!((one[0].duration_ms, one[0].video[2].1), (38_000, 32_000), "mode 1 keeps the gap");
        let skip = plan(&slices, 1, true, 0);
        assert_eq!((skip[0].duration_ms, skip[0].video[2].1), (18_000, 12_000), "-s drops it");
    }

    #[test]
    fn av_choice_picks_the_streams() {
        let slices = vec![slice("a", "aux", true, 0, 1000), slice("a", "main", false, 0, 1000)];
        assert!(plan(&slices, 0, false, 0)[0].video.is_empty(), "-a 0: main video only");
        assert_eq!(plan(&slices, 0, false, 1)[0].video.len(), 1, "-a 1: aux when there is no main video");
        assert!(plan(&slices, 0, false, 2)[0].audio.is_empty(), "-a 2: aux audio only");
        assert_eq!(parse_stamp("20251122100000101"), Some(1_763_805_600_101));
    }
}
