//! Recordings (RECORDING.md §2–5): HLS (MPEG-TS segments + playlists with the TRTC tags) and
//! MP4, single-stream (per user stream, audio and video split or muxed) or mixed (a mix job's
//! output), on a task clock that stops while paused.
//!
//! A recording is a worker thread on an SFU tap. Per recorded stream it reassembles H.264
//! access units (VP8 is transcoded), turns Opus into AAC, and feeds `HlsWriter`s that cut
//! segments at keyframes, write them as `.part` in the spool and rename them into the task's
//! directory, and rewrite the playlist atomically after every segment. At stop, playlists get
//! `#EXT-X-ENDLIST` and, for the MP4 formats, are remuxed (moov first).

use crate::store::write_atomic;
use dashmap::DashMap;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_engine::{PublisherInfo, RoomKey, RtcHandle, TapPacket};
use tessera_media::h264::{self, nal_type};
use tessera_media::{Codec, StreamKind};
use tessera_model::{AppId, RoomId, UserId};
use tessera_transcode::decode::{AacEncoder, OpusDecoder, VideoCodec, VideoDecoder};
use tessera_transcode::mux::{remux_to_mp4, AudioTrack, TsSegment};
use tessera_transcode::video::{EncoderSettings, OpenH264Encoder};

/// RECORDING.md §4: base64 of the UTF-8 bytes, `/` → `-`, `=` → `.`.
pub fn id_in_name(id: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(id.as_bytes()).replace('/', "-").replace('=', ".")
}

/// `YYYYMMDDhhmmssSSS` (UTC) of a Unix ms time.
pub fn utc17(unix_ms: i64) -> String {
    let ms = unix_ms.rem_euclid(1000);
    let secs = unix_ms.div_euclid(1000);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}{:02}{:02}{:02}{ms:03}", sod / 3600, sod % 3600 / 60, sod % 60)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Single { streams: Vec<StreamKind>, split: bool },
    /// The mix job's user (`mix_<id>`) and whether the recording owns the job.
    Mixed { mix_user: UserId, owned_job: Option<String> },
}

#[derive(Debug, Clone)]
pub struct RecordingSpec {
    pub id: String,
    pub app: AppId,
    pub room: RoomId,
    pub mode: Mode,
    /// "audio_video", "audio" or "video".
    pub content: String,
    pub format: String,
    pub subscribe: tessera_engine::mcu::Subscribe,
    pub segment_s: u32,
    pub max_idle: Duration,
    pub prefix: String,
}

impl RecordingSpec {
    fn hls_kept(&self) -> bool {
        self.format.starts_with("hls")
    }
    fn mp4(&self) -> bool {
        self.format.contains("mp4")
    }
    fn wants_video(&self) -> bool {
        self.content != "audio"
    }
    fn wants_audio(&self) -> bool {
        self.content != "video"
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FileInfo {
    pub file_name: String,
    pub user_id: String,
    pub media_id: String,
    pub track_type: String,
    pub begin_ts: i64,
    pub end_ts: i64,
    pub duration_ms: i64,
    pub size: u64,
    pub url: String,
    pub stored: bool,
    /// Task-clock ms of the file's first sample (`VideoPlayTime`).
    #[serde(skip)]
    pub play_time_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecordingStatus {
    pub state: &'static str,
    pub leave_code: Option<u32>,
    pub started_at: Option<i64>,
    pub stopped_at: Option<i64>,
    pub paused_ms: i64,
    pub files: Vec<FileInfo>,
    pub error: Option<String>,
    #[serde(skip)]
    pub result: Option<Value>,
}

pub struct RecordingTask {
    pub spec: Mutex<RecordingSpec>,
    pub status: Mutex<RecordingStatus>,
    stop: AtomicBool,
    /// Set by the API; the worker applies it within a frame.
    paused: AtomicBool,
    pub created_at: i64,
}

impl RecordingTask {
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }
    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[derive(Default)]
pub struct Recordings {
    pub tasks: DashMap<String, Arc<RecordingTask>>,
}

impl Recordings {
    pub fn get(&self, app: &AppId, id: &str) -> Option<Arc<RecordingTask>> {
        self.tasks.get(id).map(|t| t.clone()).filter(|t| t.spec.lock().expect("spec").app == *app)
    }

    pub fn live_count(&self, app: &AppId) -> usize {
        self.tasks.iter().filter(|t| t.spec.lock().expect("spec").app == *app && !matches!(t.status.lock().expect("status").state, "STOPPED" | "FINISHED")).count()
    }

    pub fn start(&self, spec: RecordingSpec, data_dir: PathBuf, rtc: RtcHandle) -> std::io::Result<Arc<RecordingTask>> {
        let task = Arc::new(RecordingTask {
            spec: Mutex::new(spec.clone()),
            status: Mutex::new(RecordingStatus { state: "PREPARED", leave_code: None, started_at: None, stopped_at: None, paused_ms: 0, files: Vec::new(), error: None, result: None }),
            stop: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            created_at: crate::now_ms(),
        });
        self.tasks.insert(spec.id.clone(), task.clone());
        let runtime = tokio::runtime::Handle::current();
        let t = task.clone();
        std::thread::Builder::new().name(format!("rec-{}", spec.id)).spawn(move || worker(t, data_dir, rtc, runtime))?;
        Ok(task)
    }

    pub fn shutdown(&self) {
        for t in self.tasks.iter() {
            t.stop();
        }
    }

    /// The recording a stored file belongs to (by the task id in its path).
    pub fn owner_of(&self, app: &AppId, path: &str) -> Option<Arc<RecordingTask>> {
        path.split('/').find_map(|seg| self.get(app, seg))
    }
}

/// The task clock (RECORDING.md §3): starts at the first sample, stops while paused.
struct TaskClock {
    start: Instant,
    paused_total: Duration,
    paused_since: Option<Instant>,
}

impl TaskClock {
    fn now_ms(&self, at: Instant) -> i64 {
        let paused = self.paused_total + self.paused_since.map(|p| at.saturating_duration_since(p)).unwrap_or_default();
        (at.saturating_duration_since(self.start).saturating_sub(paused)).as_millis() as i64
    }
}

struct Segment {
    ts: TsSegment,
    part: PathBuf,
    name: String,
    first_ms: i64,
    last_ms: i64,
    begin_unix: i64,
    end_unix: i64,
}

/// One playlist: its segments and the one being written.
struct HlsWriter {
    final_dir: PathBuf,
    spool: PathBuf,
    url_base: String,
    playlist: String,
    segment_stem: String,
    user_id: String,
    media_id: String,
    track_type: String,
    segment_ms: i64,
    target: u32,
    video: bool,
    audio: Option<AudioTrack>,
    size: Option<(u32, u32)>,
    start_rec_time: Option<i64>,
    lines: Vec<String>,
    current: Option<Segment>,
    discontinuity: bool,
    files: Vec<FileInfo>,
    first_play_ms: Option<i64>,
    last_ms: i64,
    /// Asked the source for a keyframe for the pending cut.
    keyframe_asked: bool,
    /// Last timestamps written per track: the muxer needs them increasing.
    last_video_ms: i64,
    last_audio_ms: i64,
    write_errors: u64,
}

impl HlsWriter {
    fn playlist_text(&self, end: bool) -> String {
        let mut t = format!("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-ALLOW-CACHE:NO\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-TARGETDURATION:{}\n", self.target);
        if let Some(s) = self.start_rec_time {
            t.push_str(&format!("#EXT-X-TRTC-START-REC-TIME:{s}\n"));
        }
        if let (true, Some((w, h))) = (self.video, self.size) {
            t.push_str(&format!("#EXT-X-TRTC-VIDEO-METADATA:WIDTH:{w} HEIGHT:{h}\n"));
        }
        for l in &self.lines {
            t.push_str(l);
            t.push('\n');
        }
        if end {
            t.push_str("#EXT-X-ENDLIST\n");
        }
        t
    }

    fn open(&mut self, clock_ms: i64, unix_ms: i64) -> Result<(), String> {
        let name = format!("{}_{}.ts", self.segment_stem, utc17(unix_ms));
        let part = self.spool.join(format!("{name}.part"));
        let ts = TsSegment::create(&part, if self.video { self.size } else { None }, self.audio.as_ref()).map_err(|e| e.to_string())?;
        self.start_rec_time.get_or_insert(unix_ms);
        self.first_play_ms.get_or_insert(clock_ms);
        self.current = Some(Segment { ts, part, name, first_ms: clock_ms, last_ms: clock_ms, begin_unix: unix_ms, end_unix: unix_ms });
        Ok(())
    }

    /// Closes the current segment: renamed into place, listed, the playlist rewritten.
    fn cut(&mut self, end_ms: i64) -> Result<(), String> {
        let Some(seg) = self.current.take() else { return Ok(()) };
        seg.ts.finish().map_err(|e| e.to_string())?;
        let dest = self.final_dir.join(&seg.name);
        std::fs::rename(&seg.part, &dest).map_err(|e| format!("storing {}: {e}", seg.name))?;
        let duration_ms = (end_ms - seg.first_ms).max(1);
        if std::mem::take(&mut self.discontinuity) {
            self.lines.push("#EXT-X-DISCONTINUITY".into());
        }
        self.lines.push(format!("#EXTINF:{:.3},", duration_ms as f64 / 1000.0));
        self.lines.push(seg.name.clone());
        let size = std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
        self.files.push(FileInfo {
            file_name: seg.name.clone(),
            user_id: self.user_id.clone(),
            media_id: self.media_id.clone(),
            track_type: self.track_type.clone(),
            begin_ts: seg.begin_unix,
            end_ts: seg.begin_unix + duration_ms,
            duration_ms,
            size,
            url: format!("{}/{}", self.url_base, seg.name),
            stored: true,
            play_time_ms: seg.first_ms,
        });
        let _ = seg.end_unix;
        self.write_playlist(false)
    }

    fn write_playlist(&self, end: bool) -> Result<(), String> {
        write_atomic(&self.final_dir.join(&self.playlist), self.playlist_text(end).as_bytes(), 0o644).map_err(|e| e.to_string())
    }

    /// Whether a video frame at `clock_ms` should start a new segment.
    fn due(&self, clock_ms: i64) -> bool {
        self.current.as_ref().is_some_and(|s| clock_ms - s.first_ms >= self.segment_ms)
    }

    fn video(&mut self, clock_ms: i64, unix_ms: i64, annex_b: &[u8], keyframe: bool) -> Result<(), String> {
        if self.current.is_none() && !keyframe {
            return Ok(());
        }
        let hard = self.current.as_ref().is_some_and(|s| clock_ms - s.first_ms >= self.target as i64 * 1000);
        if (keyframe && self.due(clock_ms)) || hard {
            self.cut(clock_ms)?;
            self.keyframe_asked = false;
        }
        if self.current.is_none() {
            self.open(clock_ms, unix_ms)?;
        }
        let clock_ms = clock_ms.max(self.last_video_ms + 1);
        self.last_video_ms = clock_ms;
        let seg = self.current.as_mut().expect("open");
        if let Err(e) = seg.ts.write_video(annex_b, clock_ms, keyframe) {
            self.write_errors += 1;
            tracing::debug!("video not written: {e}");
        }
        seg.last_ms = clock_ms;
        seg.end_unix = unix_ms;
        self.last_ms = clock_ms + 40;
        Ok(())
    }

    fn audio(&mut self, clock_ms: i64, unix_ms: i64, aac: &[u8]) -> Result<(), String> {
        let clock_ms = clock_ms.max(self.last_audio_ms + 1);
        if self.video {
            // Muxed: audio rides in the video's segments.
            if let Some(seg) = self.current.as_mut() {
                self.last_audio_ms = clock_ms;
                if let Err(e) = seg.ts.write_audio(aac, clock_ms) {
                    self.write_errors += 1;
                    tracing::debug!("audio not written: {e}");
                }
            }
            return Ok(());
        }
        self.last_audio_ms = clock_ms;
        if self.due(clock_ms) {
            self.cut(clock_ms)?;
        }
        if self.current.is_none() {
            self.open(clock_ms, unix_ms)?;
        }
        let seg = self.current.as_mut().expect("open");
        if let Err(e) = seg.ts.write_audio(aac, clock_ms) {
            self.write_errors += 1;
            tracing::debug!("audio not written: {e}");
        }
        seg.last_ms = clock_ms;
        seg.end_unix = unix_ms;
        self.last_ms = clock_ms + 21;
        Ok(())
    }

    fn finish(&mut self) -> Result<(), String> {
        let end = self.last_ms;
        self.cut(end)?;
        if self.start_rec_time.is_some() {
            self.write_playlist(true)?;
        }
        Ok(())
    }
}

/// Everything recorded from one user stream (or the mix).
struct StreamRec {
    video_writer: Option<usize>,
    audio_writer: Option<usize>,
    au: Vec<(u64, Arc<[u8]>)>,
    au_ts: Option<u32>,
    waiting_keyframe: bool,
    probe: Option<VideoDecoder>,
    vp8: Option<(VideoDecoder, Option<OpenH264Encoder>)>,
    opus: Option<OpusDecoder>,
    aac: Option<AacEncoder>,
    aac_base: Option<i64>,
    video_clock: (Option<(u32, i64)>, u32),
    audio_clock: (Option<(u32, i64)>, u32),
    last_keyframe_request: Option<Instant>,
}

fn media_ms(clock: &mut (Option<(u32, i64)>, u32), rtp: u32, arrival: i64) -> i64 {
    if let Some((base_rtp, base_ms)) = clock.0 {
        let t = base_ms + (rtp.wrapping_sub(base_rtp) as i32 as i64) / clock.1 as i64;
        if (t - arrival).abs() <= 1000 {
            return t;
        }
    }
    clock.0 = Some((rtp, arrival));
    arrival
}

struct Worker {
    spec: RecordingSpec,
    final_dir: PathBuf,
    spool: PathBuf,
    url_base: String,
    writers: Vec<HlsWriter>,
    streams: HashMap<(UserId, StreamKind), StreamRec>,
}

impl Worker {
    fn base_name(&self, user: &UserId, stream: StreamKind) -> String {
        let room = id_in_name(self.spec.room.as_str());
        match &self.spec.mode {
            Mode::Mixed { .. } => format!("{}_{room}", self.spec.app),
            Mode::Single { .. } => format!("{}_{room}__UserId_s_{}__UserId_e_{}", self.spec.app, id_in_name(user.as_str()), stream.as_str()),
        }
    }

    fn writer(&mut self, user: &UserId, stream: StreamKind, kind: &str, video: bool, audio: Option<AudioTrack>) -> usize {
        let base = self.base_name(user, stream);
        let (playlist, stem, track_type, user_id, media_id) = match (&self.spec.mode, kind) {
            (Mode::Mixed { .. }, _) => (format!("{base}.m3u8"), base.clone(), "audio_video".to_string(), String::new(), "mix".to_string()),
            (Mode::Single { .. }, k) => (format!("{base}_{k}.m3u8"), format!("{base}_{k}"), k.to_string(), user.to_string(), stream.as_str().to_string()),
        };
        let segment_ms = self.spec.segment_s as i64 * 1000;
        self.writers.push(HlsWriter {
            final_dir: self.final_dir.clone(),
            spool: self.spool.clone(),
            url_base: self.url_base.clone(),
            playlist,
            segment_stem: stem,
            user_id,
            media_id,
            track_type,
            segment_ms,
            target: (3 * self.spec.segment_s).max(1),
            video,
            audio,
            size: None,
            start_rec_time: None,
            lines: Vec::new(),
            current: None,
            discontinuity: false,
            files: Vec::new(),
            first_play_ms: None,
            last_ms: 0,
            keyframe_asked: false,
            last_video_ms: -1,
            last_audio_ms: -1,
            write_errors: 0,
        });
        self.writers.len() - 1
    }
}

fn worker(task: Arc<RecordingTask>, data_dir: PathBuf, rtc: RtcHandle, runtime: tokio::runtime::Handle) {
    let spec = task.spec.lock().expect("spec").clone();
    let mut rel = PathBuf::new();
    if !spec.prefix.is_empty() {
        rel.push(&spec.prefix);
    }
    rel.push(&spec.id);
    let final_dir = data_dir.join("recordings").join(spec.app.as_str()).join(&rel);
    let spool = data_dir.join("spool").join(&spec.id);
    let url_base = format!("/files/{}/{}", spec.app, rel.to_string_lossy());
    let mut w = Worker { spec: spec.clone(), final_dir: final_dir.clone(), spool: spool.clone(), url_base, writers: Vec::new(), streams: HashMap::new() };
    let outcome = (|| -> Result<u32, String> {
        std::fs::create_dir_all(&final_dir).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&spool).map_err(|e| e.to_string())?;
        let room = RoomKey { app: spec.app.clone(), room: spec.room.clone() };
        let (tap, mut packets) = runtime.block_on(rtc.add_tap_all(room.clone())).map_err(|e| e.to_string())?;
        let r = record(&task, &mut w, &room, &mut packets, &rtc, &runtime);
        let _ = runtime.block_on(rtc.remove_tap(tap));
        r
    })();
    let (code, error) = match outcome {
        Ok(c) => (c, None),
        Err(e) => {
            tracing::error!(recording = %spec.id, "recording failed: {e}");
            (104, Some(e))
        }
    };
    // STOPPED: playlists final, then the MP4s, then FINISHED with the result.
    let clock_ms = {
        let mut st = task.status.lock().expect("status");
        st.state = "STOPPED";
        st.stopped_at = Some(crate::now_ms());
        st.leave_code = Some(code);
        st.error = error.clone();
        st.paused_ms
    };
    let _ = clock_ms;
    let mut files: Vec<FileInfo> = Vec::new();
    let mut finals: Vec<(FileInfo, &'static str, u8)> = Vec::new();
    for wr in &mut w.writers {
        if let Err(e) = wr.finish() {
            tracing::warn!("finishing a playlist failed: {e}");
        }
    }
    // Group playlists to MP4: per (user, media) in single mode, the one playlist when mixed.
    let mut groups: Vec<(String, String, Vec<usize>)> = Vec::new();
    for (i, wr) in w.writers.iter().enumerate() {
        if wr.start_rec_time.is_none() {
            continue;
        }
        match groups.iter_mut().find(|g| g.0 == wr.user_id && g.1 == wr.media_id) {
            Some(g) => g.2.push(i),
            None => groups.push((wr.user_id.clone(), wr.media_id.clone(), vec![i])),
        }
    }
    let video_type = |media: &str| match media {
        "main" => 0u8,
        "aux" => 1,
        _ => 2,
    };
    for wr in &w.writers {
        files.extend(wr.files.iter().cloned());
        if wr.start_rec_time.is_some() {
            let path = final_dir.join(&wr.playlist);
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let begin = wr.files.first().map(|f| f.begin_ts).unwrap_or(0);
            let end = wr.files.last().map(|f| f.end_ts).unwrap_or(begin);
            let duration: i64 = wr.files.iter().map(|f| f.duration_ms).sum();
            let info = FileInfo {
                file_name: wr.playlist.clone(),
                user_id: wr.user_id.clone(),
                media_id: wr.media_id.clone(),
                track_type: wr.track_type.clone(),
                begin_ts: begin,
                end_ts: end,
                duration_ms: duration,
                size,
                url: format!("{}/{}", w.url_base, wr.playlist),
                stored: true,
                play_time_ms: wr.first_play_ms.unwrap_or(0),
            };
            files.push(info.clone());
            if !spec.mp4() {
                finals.push((info, "m3u8", video_type(&wr.media_id)));
            }
        }
    }
    if spec.mp4() {
        for (user, media, idx) in &groups {
            let name = match &spec.mode {
                Mode::Mixed { .. } => format!("{}.mp4", w.base_name(&UserId::parse("x").expect("valid"), StreamKind::Main)),
                Mode::Single { .. } => {
                    let u = UserId::parse(user).unwrap_or_else(|_| UserId::parse("x").expect("valid"));
                    format!("{}.mp4", w.base_name(&u, StreamKind::parse(media).unwrap_or(StreamKind::Main)))
                }
            };
            let inputs: Vec<PathBuf> = idx.iter().map(|i| final_dir.join(&w.writers[*i].playlist)).collect();
            let refs: Vec<&Path> = inputs.iter().map(|p| p.as_path()).collect();
            let part = spool.join(format!("{name}.part"));
            match remux_to_mp4(&refs, &part) {
                Ok(seconds) => {
                    let dest = final_dir.join(&name);
                    if std::fs::rename(&part, &dest).is_ok() {
                        let first = idx.iter().filter_map(|i| w.writers[*i].files.first()).map(|f| f.begin_ts).min().unwrap_or(0);
                        let play = idx.iter().filter_map(|i| w.writers[*i].first_play_ms).min().unwrap_or(0);
                        let info = FileInfo {
                            file_name: name.clone(),
                            user_id: user.clone(),
                            media_id: media.clone(),
                            track_type: if idx.len() > 1 { "audio_video".into() } else { w.writers[idx[0]].track_type.clone() },
                            begin_ts: first,
                            end_ts: first + (seconds * 1000.0) as i64,
                            duration_ms: (seconds * 1000.0) as i64,
                            size: std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0),
                            url: format!("{}/{}", w.url_base, name),
                            stored: true,
                            play_time_ms: play,
                        };
                        files.push(info.clone());
                        finals.push((info, "mp4", video_type(media)));
                    }
                }
                Err(e) => tracing::warn!("MP4 remux of {name} failed: {e}"),
            }
        }
        if !spec.hls_kept() {
            // `mp4` alone: the HLS was only the crash-safe intermediate.
            for f in files.iter().filter(|f| !f.file_name.ends_with(".mp4")) {
                let _ = std::fs::remove_file(final_dir.join(&f.file_name));
            }
            files.retain(|f| f.file_name.ends_with(".mp4"));
        }
    }
    let _ = std::fs::remove_dir_all(&spool);
    let mut st = task.status.lock().expect("status");
    st.files = files.clone();
    let total = st.started_at.map(|_| st.result.as_ref().and_then(|r| r["TotalTime"].as_i64()).unwrap_or(0)).unwrap_or(0);
    let _ = total;
    let record_user = format!("rec_{}", spec.id);
    let total_time = st.result.take().and_then(|r| r["TotalTime"].as_i64()).unwrap_or(0);
    let result = json!({
        "TaskId": spec.id, "Status": if error.is_some() { "failed" } else { "ok" }, "RoomId": spec.room, "GroupId": "", "RecordUserId": record_user,
        "RecordStartTime": st.started_at.unwrap_or(task.created_at) / 1000, "RecordStopTime": st.stopped_at.unwrap_or(0) / 1000,
        "TotalTime": total_time, "ReplayUrl": "",
        "VideoInfos": finals.iter().map(|(f, format, vt)| json!({
            "VideoPlayTime": f.play_time_ms, "VideoSize": f.size, "VideoFormat": format, "VideoDuration": f.duration_ms,
            "VideoUrl": f.url, "VideoId": tessera_model::TaskId::generate().as_str(), "VideoType": vt, "UserId": f.user_id,
        })).collect::<Vec<_>>(),
        "Files": files.iter().map(|f| json!({"FileName": f.file_name, "UserId": f.user_id, "MediaId": f.media_id, "TrackType": f.track_type,
            "BeginTimeStamp": f.begin_ts, "EndTimeStamp": f.end_ts, "Size": f.size, "DurationMs": f.duration_ms, "Url": f.url, "Stored": f.stored})).collect::<Vec<_>>(),
    });
    if let Some(e) = &error {
        let mut r = result;
        r["error"] = json!(e);
        st.result = Some(r);
    } else {
        st.result = Some(result);
    }
    st.state = "FINISHED";
    tracing::info!(recording = %spec.id, files = files.len(), "recording finished");
}

/// Records until stopped; returns the LeaveCode.
fn record(task: &RecordingTask, w: &mut Worker, room: &RoomKey, packets: &mut tokio::sync::mpsc::Receiver<TapPacket>, rtc: &RtcHandle, runtime: &tokio::runtime::Handle) -> Result<u32, String> {
    let spec = w.spec.clone();
    let created = Instant::now();
    let mut clock: Option<TaskClock> = None;
    let mut publishers: Vec<PublisherInfo> = Vec::new();
    let mut next_check = created;
    let mut idle_since: Option<Instant> = Some(created);
    let mut paused = false;
    let mut mix_gone_since: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if task.stop.load(Ordering::SeqCst) {
            close_all(task, &clock, now)?;
            return Ok(0);
        }
        // Pause / resume.
        let want_pause = task.paused.load(Ordering::SeqCst);
        if want_pause != paused {
            paused = want_pause;
            if let Some(c) = clock.as_mut() {
                if paused {
                    c.paused_since = Some(now);
                    let at = c.now_ms(now);
                    for wr in &mut w.writers {
                        wr.cut(at.max(wr.last_ms))?;
                        wr.discontinuity = true;
                    }
                    task.status.lock().expect("status").state = "PAUSED";
                } else {
                    if let Some(p) = c.paused_since.take() {
                        c.paused_total += now - p;
                    }
                    let mut st = task.status.lock().expect("status");
                    st.state = "RECORDING";
                    st.paused_ms = c.paused_total.as_millis() as i64;
                }
            }
        }
        if now >= next_check {
            next_check = now + Duration::from_millis(300);
            publishers = runtime.block_on(rtc.room_publishers(room.clone())).map_err(|e| e.to_string())?;
            let anchors = publishers.iter().any(|p| !p.user.as_str().starts_with("mix_"));
            if anchors {
                idle_since = None;
            } else if now - *idle_since.get_or_insert(now) >= spec.max_idle {
                close_all(task, &clock, now)?;
                return Ok(99);
            }
            if let Mode::Mixed { mix_user, .. } = &spec.mode {
                if publishers.iter().any(|p| &p.user == mix_user) {
                    mix_gone_since = None;
                } else if clock.is_some() && now - *mix_gone_since.get_or_insert(now) >= Duration::from_secs(3) {
                    close_all(task, &clock, now)?;
                    return Ok(105);
                }
            }
        }
        let mut got = false;
        while let Ok(p) = packets.try_recv() {
            got = true;
            if paused {
                continue;
            }
            let wanted = match &spec.mode {
                Mode::Mixed { mix_user, .. } => p.user == *mix_user,
                Mode::Single { streams, .. } => {
                    streams.contains(&p.stream)
                        && !p.user.as_str().starts_with("mix_")
                        && publishers.iter().filter(|x| !x.user.as_str().starts_with("mix_")).take(25).any(|x| x.user == p.user && x.stream == p.stream)
                        && if p.codec == Codec::Opus { spec.subscribe.audio(p.user.as_str()) } else { spec.subscribe.video(p.user.as_str()) }
                }
            };
            if !wanted {
                continue;
            }
            let now = Instant::now();
            let c = clock.get_or_insert_with(|| {
                let mut st = task.status.lock().expect("status");
                st.state = "RECORDING";
                st.started_at = Some(crate::now_ms());
                TaskClock { start: now, paused_total: Duration::ZERO, paused_since: None }
            });
            let arrival = c.now_ms(now);
            on_packet(w, &p, arrival, crate::now_ms(), rtc, runtime, room)?;
        }
        if let Some(c) = &clock {
            let mut st = task.status.lock().expect("status");
            st.files = w.writers.iter().flat_map(|wr| wr.files.iter().cloned()).collect();
            st.result = Some(json!({"TotalTime": c.now_ms(Instant::now())}));
        }
        if !got {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Notes the task clock at stop (TotalTime); the writers are finished by the caller.
fn close_all(task: &RecordingTask, clock: &Option<TaskClock>, now: Instant) -> Result<(), String> {
    if let Some(c) = clock {
        task.status.lock().expect("status").result = Some(json!({"TotalTime": c.now_ms(now)}));
    }
    Ok(())
}

fn on_packet(w: &mut Worker, p: &TapPacket, arrival: i64, unix_ms: i64, rtc: &RtcHandle, runtime: &tokio::runtime::Handle, room: &RoomKey) -> Result<(), String> {
    let key = (p.user.clone(), p.stream);
    if !w.streams.contains_key(&key) {
        w.streams.insert(
            key.clone(),
            StreamRec {
                video_writer: None,
                audio_writer: None,
                au: Vec::new(),
                au_ts: None,
                waiting_keyframe: true,
                probe: None,
                vp8: None,
                opus: None,
                aac: None,
                aac_base: None,
                video_clock: (None, 90),
                audio_clock: (None, 48),
                last_keyframe_request: None,
            },
        );
    }
    let split = matches!(w.spec.mode, Mode::Single { split: true, .. });
    match p.codec {
        Codec::Opus if w.spec.wants_audio() => {
            let s = w.streams.get_mut(&key).expect("inserted");
            let ms = media_ms(&mut s.audio_clock, p.ts, arrival);
            if s.opus.is_none() {
                s.opus = OpusDecoder::new().ok();
            }
            let mut pcm = Vec::new();
            if s.opus.as_mut().is_none_or(|d| d.decode(&p.payload, &mut pcm).is_err()) {
                return Ok(());
            }
            if s.aac.is_none() {
                s.aac = Some(AacEncoder::new(2, 96).map_err(|e| e.to_string())?);
                s.aac_base = Some(ms);
            }
            let mut frames = Vec::new();
            s.aac.as_mut().expect("made").push(&pcm, &mut frames).map_err(|e| e.to_string())?;
            let base = s.aac_base.unwrap_or(0);
            let asc = s.aac.as_ref().expect("made").audio_specific_config().to_vec();
            let track = AudioTrack { sample_rate: 48_000, channels: 2, asc };
            // The audio writer: its own playlist (split, audio-only content), or the muxed one.
            let writer = if split || !w.spec.wants_video() {
                match w.streams[&key].audio_writer {
                    Some(i) => i,
                    None => {
                        let i = w.writer(&key.0, key.1, "audio", false, Some(track));
                        w.streams.get_mut(&key).expect("inserted").audio_writer = Some(i);
                        i
                    }
                }
            } else {
                match w.streams[&key].video_writer {
                    Some(i) => i,
                    None => return Ok(()),
                }
            };
            for f in frames {
                let t = base + (f.ts48 / 48) as i64;
                w.writers[writer].audio(t, unix_ms, &f.data)?;
            }
        }
        Codec::H264 | Codec::Vp8 if w.spec.wants_video() => {
            let s = w.streams.get_mut(&key).expect("inserted");
            if s.au_ts.is_some_and(|t| t != p.ts) && !s.au.is_empty() {
                s.au.clear();
                s.waiting_keyframe = true;
            }
            s.au_ts = Some(p.ts);
            s.au.push((p.seq, p.payload.clone()));
            if !p.marker {
                return Ok(());
            }
            let mut unit = std::mem::take(&mut s.au);
            unit.sort_by_key(|(q, _)| *q);
            let ms = media_ms(&mut s.video_clock, p.ts, arrival);
            let ask = |s: &mut StreamRec| {
                if s.last_keyframe_request.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    s.last_keyframe_request = Some(Instant::now());
                    let _ = runtime.block_on(rtc.request_keyframe(room.clone(), key.0.clone(), key.1));
                }
            };
            if !unit.windows(2).all(|x| x[1].0 == x[0].0 + 1) {
                s.waiting_keyframe = true;
                ask(s);
                return Ok(());
            }
            let nalus: Vec<Vec<u8>> = if p.codec == Codec::H264 {
                h264::depacketize(&unit.iter().map(|(_, x)| x.to_vec()).collect::<Vec<_>>())
            } else {
                let mut frame = Vec::new();
                for (_, x) in &unit {
                    if let Some((_, body)) = tessera_media::vp8::depacketize(x) {
                        frame.extend_from_slice(body);
                    }
                }
                let (decoder, encoder) = match s.vp8.as_mut() {
                    Some(v) => v,
                    None => s.vp8.insert((VideoDecoder::new(VideoCodec::Vp8).map_err(|e| e.to_string())?, None)),
                };
                if !matches!(decoder.decode(&frame), Ok(true)) {
                    return Ok(());
                }
                let picture = decoder.picture().expect("decoded");
                let (pw, ph) = (picture.width() & !1, picture.height() & !1);
                if encoder.as_ref().is_none_or(|e| (e.settings.width, e.settings.height) != (pw, ph)) {
                    let kbps = tessera_transcode::video::default_kbps(pw, ph).min(4000);
                    *encoder = Some(OpenH264Encoder::new(EncoderSettings { width: pw, height: ph, fps: 30, kbps, gop_frames: 60, preset: "" }).map_err(|e| e.to_string())?);
                }
                let mut out = Vec::new();
                if encoder.as_mut().expect("made").encode(picture, ms, &mut out).is_err() {
                    return Ok(());
                }
                out.iter().flat_map(|e| h264::split_annex_b(&e.data).into_iter().map(|n| n.to_vec()).collect::<Vec<_>>()).collect()
            };
            let keyframe = nalus.iter().any(|n| nal_type(n) == Some(h264::NAL_IDR));
            if s.waiting_keyframe && !keyframe {
                ask(s);
                return Ok(());
            }
            s.waiting_keyframe = false;
            let annex_b = h264::to_annex_b(&nalus);
            // The picture size, from the first keyframe, for the TS and the playlist.
            let writer = match s.video_writer {
                Some(i) => i,
                None => {
                    let probe = match s.probe.as_mut() {
                        Some(d) => d,
                        None => s.probe.insert(VideoDecoder::new(VideoCodec::H264).map_err(|e| e.to_string())?),
                    };
                    if !matches!(probe.decode(&annex_b), Ok(true)) {
                        return Ok(());
                    }
                    let pic = probe.picture().expect("decoded");
                    let size = (pic.width(), pic.height());
                    s.probe = None;
                    // Muxed layouts carry the audio in the same TS.
                    let audio = if !split && w.spec.wants_audio() {
                        Some(AudioTrack { sample_rate: 48_000, channels: 2, asc: AacEncoder::new(2, 96).map_err(|e| e.to_string())?.audio_specific_config().to_vec() })
                    } else {
                        None
                    };
                    let i = w.writer(&key.0, key.1, if split { "video" } else { "audio_video" }, true, audio);
                    w.writers[i].size = Some(size);
                    w.streams.get_mut(&key).expect("inserted").video_writer = Some(i);
                    i
                }
            };
            let wr = &mut w.writers[writer];
            if !keyframe && wr.due(ms) && !wr.keyframe_asked {
                wr.keyframe_asked = true;
                let _ = runtime.block_on(rtc.request_keyframe(room.clone(), key.0.clone(), key.1));
            }
            wr.video(ms, unix_ms, &annex_b, keyframe)?;
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_in_names_follow_the_spec_examples() {
        assert_eq!(id_in_name("room1"), "cm9vbTE.");
        assert_eq!(id_in_name("class1"), "Y2xhc3Mx");
        assert_eq!(id_in_name("alice"), "YWxpY2U.");
        assert_eq!(id_in_name("teacher"), "dGVhY2hlcg..");
    }

    #[test]
    fn utc_stamps_have_17_digits() {
        assert_eq!(utc17(1_763_805_600_101), "20251122100000101");
        assert_eq!(utc17(0), "19700101000000000");
        assert_eq!(utc17(951_782_400_000), "20000229000000000", "a leap day");
    }
}
