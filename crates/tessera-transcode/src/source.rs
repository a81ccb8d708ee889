//! Pull-ingest sources (PRODUCT.md §6.4): libavformat opens an RTMP, HTTP-FLV, HLS or file URL
//! (FLV, MP4/MOV, MPEG-TS, MKV, MP3, M4A) and `PullSource::read` turns its packets into what a
//! room takes: H.264 access units as NAL units (passed through when the stream has no B-frames,
//! otherwise transcoded to baseline), VP8 frames as they are, and Opus frames (Opus passes
//! through, any other audio is transcoded).
//!
//! libavformat does its own network I/O, so this is the one blocking part of the crate: a worker
//! thread owns a `PullSource`. Every blocking call is bounded: the interrupt callback gives up
//! when the `Interrupt` is raised (task stopped) or the current call's deadline passes (a source
//! that stops sending), and `rw_timeout` bounds each read.

use crate::audio::AudioToOpus;
use crate::video::{to_ms, VideoToH264};
use crate::{init, OpusFrame, TranscodeError, OPUS_RATE};
use ffmpeg_next as ff;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tessera_media::h264::{split_annex_b, split_length_prefixed, AvcConfig};

/// How long one open or one read may block before the source counts as dropped.
pub const IO_TIMEOUT: Duration = Duration::from_secs(8);

/// Shared between a worker and whoever may stop it.
#[derive(Debug, Clone, Default)]
pub struct Interrupt {
    stop: Arc<AtomicBool>,
    /// Unix ms after which the current blocking call is abandoned; 0 = none.
    deadline_ms: Arc<AtomicU64>,
}

impl Interrupt {
    pub fn raise(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn is_raised(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn arm(&self, within: Duration) {
        self.deadline_ms.store(unix_ms() + within.as_millis() as u64, Ordering::SeqCst);
    }

    fn should_abort(&self) -> bool {
        let deadline = self.deadline_ms.load(Ordering::SeqCst);
        self.is_raised() || (deadline != 0 && unix_ms() > deadline)
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Video as a room takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoData {
    /// The NAL units of one access unit.
    H264(Vec<Vec<u8>>),
    Vp8(Vec<u8>),
}

/// One unit of media out of a source. Times are milliseconds from the source's first packet plus
/// the `base_ms` the source was opened with; `due_ms` is when it should be sent (decode order,
/// for pacing), `ts_ms` its presentation time (the RTP timestamp).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceMedia {
    Video { due_ms: i64, ts_ms: i64, keyframe: bool, data: VideoData },
    Audio { due_ms: i64, frames: Vec<OpusFrame> },
}

impl SourceMedia {
    pub fn due_ms(&self) -> i64 {
        match self {
            SourceMedia::Video { due_ms, .. } | SourceMedia::Audio { due_ms, .. } => *due_ms,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot open the source: {0}")]
    Open(String),
    #[error("the source has neither H.264/VP8-transcodable video nor audio")]
    NoMedia,
    #[error("reading the source failed: {0}")]
    Read(String),
    #[error("stopped")]
    Stopped,
    #[error(transparent)]
    Transcode(#[from] TranscodeError),
}

enum VideoPath {
    /// H.264 passed through; `length_size` is None for Annex-B (MPEG-TS, raw H.264).
    H264 {
        length_size: Option<usize>,
    },
    Vp8,
    Transcode(Box<VideoToH264>),
}

struct VideoTrack {
    index: usize,
    time_base: ff::Rational,
    path: VideoPath,
    parameters: ff::codec::Parameters,
    fps: u32,
    last_pts: Option<i64>,
    /// SPS/PPS from the container's extradata, to send ahead of the first IDR.
    parameter_sets: Vec<Vec<u8>>,
}

enum AudioPath {
    Opus,
    Transcode(Box<AudioToOpus>),
}

struct AudioTrack {
    index: usize,
    time_base: ff::Rational,
    path: AudioPath,
}

/// An opened source.
pub struct PullSource {
    input: ff::format::context::Input,
    interrupt: Interrupt,
    video: Option<VideoTrack>,
    audio: Option<AudioTrack>,
    /// The first packet's time (ms, source clock); everything is rebased on it.
    origin_ms: Option<i64>,
    base_ms: i64,
    /// A live source (RTMP, live HLS) has no duration; a file ends and may be repeated.
    pub live: bool,
    /// "h264 passthrough + aac→opus" and the like, for logs and the API.
    pub description: String,
    packet: ff::Packet,
}

// SAFETY: the format context and codecs belong to this value alone and are used through
// `&mut self`; it moves to its worker thread once.
unsafe impl Send for PullSource {}

fn codec_name(id: ff::codec::Id) -> String {
    format!("{id:?}").to_lowercase()
}

impl PullSource {
    /// Opens `url` (blocking, at most `IO_TIMEOUT` plus the probe). Timestamps out start at
    /// `base_ms`, so a reopened or switched source continues where the last one ended.
    pub fn open(url: &str, base_ms: i64, interrupt: Interrupt) -> Result<PullSource, SourceError> {
        init();
        let mut options = ff::Dictionary::new();
        options.set("rw_timeout", &IO_TIMEOUT.as_micros().to_string());
        // A live HLS playlist should start near its live edge, not replay its whole window.
        options.set("live_start_index", "-3");
        // Only the protocols the spec allows; nothing local (file:, pipe:) can be read by URL.
        options.set("protocol_whitelist", "http,https,tcp,tls,rtmp,rtmps,crypto,hls");
        interrupt.arm(IO_TIMEOUT);
        let check = interrupt.clone();
        let input = ff::format::input_with_interrupt_and_dictionary(url, move || check.should_abort(), options);
        interrupt.arm(Duration::ZERO);
        let input = match input {
            Ok(i) => i,
            Err(_) if interrupt.is_raised() => return Err(SourceError::Stopped),
            Err(e) => return Err(SourceError::Open(describe_open_error(&e))),
        };
        let live = input.duration() <= 0;
        let mut description = Vec::new();
        let video = match input.streams().best(ff::media::Type::Video) {
            None => None,
            Some(stream) => {
                let parameters = stream.parameters();
                let id = parameters.id();
                // SAFETY: reading plain fields of the stream's codec parameters.
                let (extradata, delay) = unsafe {
                    let p = parameters.as_ptr();
                    let extra = if (*p).extradata.is_null() || (*p).extradata_size <= 0 {
                        Vec::new()
                    } else {
                        std::slice::from_raw_parts((*p).extradata, (*p).extradata_size as usize).to_vec()
                    };
                    (extra, (*p).video_delay)
                };
                let rate = stream.avg_frame_rate();
                let fps = if rate.denominator() > 0 && rate.numerator() > 0 { (rate.numerator() as f64 / rate.denominator() as f64).round() as u32 } else { 30 };
                let mut parameter_sets = Vec::new();
                let path = match id {
                    ff::codec::Id::H264 if delay == 0 => {
                        let length_size = if extradata.first() == Some(&1) {
                            let config = AvcConfig::parse(&extradata).map_err(|e| SourceError::Open(format!("bad H.264 configuration: {e}")))?;
                            parameter_sets.extend(config.sps.iter().chain(&config.pps).cloned());
                            Some(config.length_size)
                        } else {
                            parameter_sets.extend(split_annex_b(&extradata).into_iter().map(|n| n.to_vec()));
                            None
                        };
                        description.push("h264 passthrough".to_string());
                        VideoPath::H264 { length_size }
                    }
                    ff::codec::Id::VP8 => {
                        description.push("vp8 passthrough".to_string());
                        VideoPath::Vp8
                    }
                    other => {
                        let why = if other == ff::codec::Id::H264 { "h264 with b-frames".to_string() } else { codec_name(other) };
                        description.push(format!("{why}→h264"));
                        VideoPath::Transcode(Box::new(VideoToH264::from_parameters(parameters.clone(), stream.time_base(), fps)?))
                    }
                };
                Some(VideoTrack { index: stream.index(), time_base: stream.time_base(), path, parameters, fps, last_pts: None, parameter_sets })
            }
        };
        let audio = match input.streams().best(ff::media::Type::Audio) {
            None => None,
            Some(stream) => {
                let parameters = stream.parameters();
                let path = if parameters.id() == ff::codec::Id::OPUS {
                    description.push("opus passthrough".to_string());
                    AudioPath::Opus
                } else {
                    description.push(format!("{}→opus", codec_name(parameters.id())));
                    AudioPath::Transcode(Box::new(AudioToOpus::from_parameters(parameters)?))
                };
                Some(AudioTrack { index: stream.index(), time_base: stream.time_base(), path })
            }
        };
        if video.is_none() && audio.is_none() {
            return Err(SourceError::NoMedia);
        }
        Ok(PullSource { input, interrupt, video, audio, origin_ms: None, base_ms, live, description: description.join(", "), packet: ff::Packet::empty() })
    }

    /// Reads the next packet (blocking) and appends what it gives. `Ok(false)` at the end of the
    /// source.
    pub fn read(&mut self, out: &mut Vec<SourceMedia>) -> Result<bool, SourceError> {
        self.interrupt.arm(IO_TIMEOUT);
        let r = self.packet.read(&mut self.input);
        self.interrupt.arm(Duration::ZERO);
        match r {
            Ok(()) => {}
            Err(ff::Error::Eof) => return Ok(false),
            Err(_) if self.interrupt.is_raised() => return Err(SourceError::Stopped),
            Err(e) => return Err(SourceError::Read(e.to_string())),
        }
        let index = self.packet.stream();
        let Some(data) = self.packet.data() else { return Ok(true) };
        if let Some(v) = self.video.as_mut().filter(|v| v.index == index) {
            let (pts, dts) = (self.packet.pts(), self.packet.dts());
            let Some(dts_ms) = dts.or(pts).map(|t| to_ms(t, v.time_base)) else { return Ok(true) };
            let origin = *self.origin_ms.get_or_insert(dts_ms);
            let due_ms = (dts_ms - origin).max(0) + self.base_ms;
            let ts_ms = pts.map(|t| (to_ms(t, v.time_base) - origin).max(0) + self.base_ms).unwrap_or(due_ms);
            // A passthrough stream that turns out to reorder frames after all (B-frames the
            // container did not announce) is transcoded from here on.
            if let (VideoPath::H264 { .. }, Some(last)) = (&v.path, v.last_pts) {
                if ts_ms < last {
                    tracing::info!("the source's H.264 has B-frames: transcoding to baseline from now on");
                    v.path = VideoPath::Transcode(Box::new(VideoToH264::from_parameters(v.parameters.clone(), v.time_base, v.fps)?));
                    self.description = self.description.replace("h264 passthrough", "h264 with b-frames→h264");
                }
            }
            v.last_pts = Some(ts_ms);
            let keyframe = self.packet.is_key();
            match &mut v.path {
                VideoPath::H264 { length_size } => {
                    let nalus = match length_size {
                        Some(n) => split_length_prefixed(data, *n).map_err(|e| SourceError::Read(format!("H.264: {e}")))?,
                        None => split_annex_b(data),
                    };
                    let mut units: Vec<Vec<u8>> = Vec::with_capacity(nalus.len() + 2);
                    if keyframe && !v.parameter_sets.is_empty() {
                        // The container's parameter sets first; the packetizer learns them.
                        units.append(&mut v.parameter_sets);
                    }
                    units.extend(nalus.into_iter().map(|n| n.to_vec()));
                    out.push(SourceMedia::Video { due_ms, ts_ms, keyframe, data: VideoData::H264(units) });
                }
                VideoPath::Vp8 => {
                    out.push(SourceMedia::Video { due_ms, ts_ms, keyframe, data: VideoData::Vp8(data.to_vec()) });
                }
                VideoPath::Transcode(t) => {
                    let mut encoded = Vec::new();
                    // A frame that does not decode is a glitch, not the end of the source.
                    if let Err(e) = t.push(data, pts, dts, &mut encoded) {
                        tracing::debug!("video frame not transcoded: {e}");
                    }
                    for e in encoded {
                        let ts = (e.pts_ms - origin).max(0) + self.base_ms;
                        let nalus = split_annex_b(&e.data).into_iter().map(|n| n.to_vec()).collect();
                        out.push(SourceMedia::Video { due_ms: due_ms.max(ts), ts_ms: ts, keyframe: e.keyframe, data: VideoData::H264(nalus) });
                    }
                }
            }
        } else if let Some(a) = self.audio.as_mut().filter(|a| a.index == index) {
            let Some(t) = self.packet.pts().or(self.packet.dts()).map(|t| to_ms(t, a.time_base)) else { return Ok(true) };
            let origin = *self.origin_ms.get_or_insert(t);
            let due_ms = (t - origin).max(0) + self.base_ms;
            let mut frames = Vec::new();
            match &mut a.path {
                AudioPath::Opus => frames.push(OpusFrame { ts: (due_ms as u64 * (OPUS_RATE as u64 / 1000)) as u32, data: data.to_vec(), level: None }),
                AudioPath::Transcode(t) => {
                    if let Err(e) = t.push(data, due_ms as u32, &mut frames) {
                        tracing::debug!("audio frame not transcoded: {e}");
                    }
                }
            }
            if !frames.is_empty() {
                out.push(SourceMedia::Audio { due_ms, frames });
            }
        }
        Ok(true)
    }

    /// Asks a transcoding video path for an IDR (a passthrough source has its own GOP).
    pub fn request_keyframe(&mut self) {
        if let Some(VideoTrack { path: VideoPath::Transcode(t), .. }) = self.video.as_mut() {
            t.request_keyframe();
        }
    }
}

/// FFmpeg's open errors say little ("Input/output error"); name the common causes.
fn describe_open_error(e: &ff::Error) -> String {
    let text = e.to_string();
    match e {
        ff::Error::Exit => "timed out".to_string(),
        ff::Error::HttpNotFound => "HTTP 404 Not Found".to_string(),
        ff::Error::HttpForbidden => "HTTP 403 Forbidden".to_string(),
        ff::Error::HttpUnauthorized => "HTTP 401 Unauthorized".to_string(),
        ff::Error::InvalidData => "not a media stream FFmpeg can read (invalid data)".to_string(),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_files_and_unreachable_hosts_are_open_errors() {
        for url in ["file:///etc/passwd", "/etc/passwd", "http://127.0.0.1:9/nothing.mp4", "rtmp://127.0.0.1:9/live/x"] {
            match PullSource::open(url, 0, Interrupt::default()) {
                Err(SourceError::Open(reason)) => assert!(!reason.is_empty(), "{url}"),
                Err(e) => panic!("{url}: {e}"),
                Ok(_) => panic!("{url} opened"),
            }
        }
    }

    #[test]
    fn a_raised_interrupt_stops_an_open() {
        let i = Interrupt::default();
        i.raise();
        assert!(matches!(PullSource::open("http://127.0.0.1:9/x.flv", 0, i), Err(SourceError::Stopped)));
    }
}
