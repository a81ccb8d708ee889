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
use tessera_media::h264;
use tessera_media::{Codec, StreamKind};
use tessera_model::{AppId, RoomId, UserId};
use tessera_transcode::decode::{AacEncoder, OpusDecoder, VideoCodec, VideoDecoder};
use tessera_transcode::mux::{AudioTrack, TsSegment};
use tessera_engine::outputs::tap_input::{TrackClock, VideoInput, VideoUnit};

/// Where a recording's finished files go (RECORDING.md §7). Files are written to the spool
/// first and handed over whole; an S3 backend implements the same calls (upload with retries).
pub trait Storage: Send + Sync {
    /// Moves a finished file out of the spool to `name` in the task's place.
    fn store(&self, spooled: &Path, name: &str) -> Result<(), String>;
    /// Replaces a small object (a playlist) in one step.
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), String>;
    fn remove(&self, name: &str);
    /// The URL players fetch `name` at.
    fn url(&self, name: &str) -> String;
}

/// `recordings/<app>/<prefix>/<task>/` under the data dir, served at `/files/<app>/…`.
pub struct LocalStorage {
    pub dir: PathBuf,
    pub url_base: String,
}

impl Storage for LocalStorage {
    fn store(&self, spooled: &Path, name: &str) -> Result<(), String> {
        std::fs::rename(spooled, self.dir.join(name)).map_err(|e| format!("storing {name}: {e}"))
    }
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), String> {
        write_atomic(&self.dir.join(name), bytes, 0o644).map_err(|e| format!("storing {name}: {e}"))
    }
    fn remove(&self, name: &str) {
        let _ = std::fs::remove_file(self.dir.join(name));
    }
    fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.url_base)
    }
}

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
    /// MP4 parts are cut at this length (RECORDING.md §4.2).
    pub split_minutes: u32,
    pub max_idle: Duration,
    pub prefix: String,
}

/// MP4 parts are also cut before 2 GiB.
const MAX_FILE_BYTES: u64 = 2 * 1024 * 1024 * 1024;

impl RecordingSpec {
    /// Where the task's files go (RECORDING.md §7), its spool, and their URL prefix.
    fn places(&self, data_dir: &Path) -> (PathBuf, PathBuf, String) {
        let mut rel = PathBuf::new();
        if !self.prefix.is_empty() {
            rel.push(&self.prefix);
        }
        rel.push(&self.id);
        let url_base = format!("/files/{}/{}", self.app, rel.to_string_lossy());
        (data_dir.join("recordings").join(self.app.as_str()).join(rel), data_dir.join("spool").join(&self.id), url_base)
    }

    fn hls_kept(&self) -> bool {
        self.format.starts_with("hls")
    }
    fn mp4(&self) -> bool {
        self.format.contains("mp4")
    }
    fn aac(&self) -> bool {
        self.format.contains("aac")
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
    /// The task clock (ms): TotalTime.
    pub clock_ms: i64,
    /// Crash restarts so far (the `ha<N>_` of the newest files).
    pub restarts: u32,
    /// Segments the storage refused (skipped; the recording went on).
    pub skipped_segments: u32,
}

pub struct RecordingTask {
    pub spec: Mutex<RecordingSpec>,
    pub status: Mutex<RecordingStatus>,
    stop: AtomicBool,
    /// Set by the API; the worker applies it within a frame.
    paused: AtomicBool,
    pub created_at: i64,
    /// The server is stopping: the worker closes its playlists and leaves the task live, so
    /// the next start continues it (`ha<N>_`), as after a crash.
    shutting_down: AtomicBool,
    /// Its worker thread is running.
    working: AtomicBool,
}

impl RecordingTask {
    /// Whether a file this task wrote carries video: `.aac` files and tasks of content "audio"
    /// never do; otherwise the track type the file's name encodes (RECORDING.md §4: the field
    /// after `__UserId_e_<media>_`, parsed, not searched for) decides, and mixed files carry
    /// video unless the task records audio only.
    pub fn file_has_video(&self, file_name: &str) -> bool {
        let spec = self.spec.lock().expect("spec");
        if !spec.wants_video() || file_name.ends_with(".aac") {
            return false;
        }
        let stem = file_name.rsplit_once('.').map_or(file_name, |(stem, _)| stem);
        match &spec.mode {
            Mode::Mixed { .. } => true,
            Mode::Single { .. } => {
                // "audio", "audio_video", "video", each maybe followed by a segment's `_<UTC17>`.
                let kind = identify(stem).2;
                let audio_only = kind == "audio" || kind.strip_prefix("audio_").is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()));
                !audio_only
            }
        }
    }

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

pub struct Recordings {
    hooks: crate::webhook::Webhooks,
    pub tasks: DashMap<String, Arc<RecordingTask>>,
    /// Auto recording (RECORDING.md §6): the live auto task of each room, and the rooms that
    /// were already publishing when the setting was found on (they are not recorded).
    auto: Mutex<AutoState>,
}

#[derive(Default)]
struct AutoState {
    tasks: HashMap<RoomKey, String>,
    enabled: std::collections::HashSet<AppId>,
    excluded: std::collections::HashSet<RoomKey>,
}

impl Recordings {
    pub fn new(hooks: crate::webhook::Webhooks) -> Recordings {
        Recordings { hooks, tasks: DashMap::new(), auto: Mutex::default() }
    }

    pub fn get(&self, app: &AppId, id: &str) -> Option<Arc<RecordingTask>> {
        self.tasks.get(id).map(|t| t.clone()).filter(|t| t.spec.lock().expect("spec").app == *app)
    }

    /// Mix jobs owned by recordings that have stopped, for whatever reason: they stop too
    /// (LeaveCode 105).
    pub fn ended_owned_jobs(&self) -> Vec<(AppId, String)> {
        self.tasks
            .iter()
            .filter(|t| matches!(t.status.lock().expect("status").state, "STOPPED" | "FINISHED"))
            .filter_map(|t| {
                let spec = t.spec.lock().expect("spec");
                match &spec.mode {
                    Mode::Mixed { owned_job: Some(job), .. } => Some((spec.app.clone(), job.clone())),
                    _ => None,
                }
            })
            .collect()
    }

    pub fn live_count(&self, app: &AppId) -> usize {
        self.tasks.iter().filter(|t| t.spec.lock().expect("spec").app == *app && !matches!(t.status.lock().expect("status").state, "STOPPED" | "FINISHED")).count()
    }

    pub fn start(&self, spec: RecordingSpec, data_dir: PathBuf, rtc: RtcHandle) -> std::io::Result<Arc<RecordingTask>> {
        let task = Arc::new(RecordingTask {
            spec: Mutex::new(spec.clone()),
            status: Mutex::new(RecordingStatus { state: "PREPARED", leave_code: None, started_at: None, stopped_at: None, paused_ms: 0, files: Vec::new(), error: None, result: None, clock_ms: 0, restarts: 0, skipped_segments: 0 }),
            stop: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            created_at: crate::now_ms(),
            shutting_down: AtomicBool::new(false),
            working: AtomicBool::new(true),
        });
        save(&task, &data_dir)?;
        self.tasks.insert(spec.id.clone(), task.clone());
        let runtime = tokio::runtime::Handle::current();
        let t = task.clone();
        let events = TaskEvents::new(&self.hooks, &spec);
        std::thread::Builder::new().name(format!("rec-{}", spec.id)).spawn(move || worker(t, data_dir, rtc, runtime, events))?;
        Ok(task)
    }

    /// Server shut-down: every worker closes its playlists and leaves its task live for the
    /// next start; waits (at most 5 s) for them.
    pub async fn shutdown(&self) {
        for t in self.tasks.iter() {
            t.shutting_down.store(true, Ordering::SeqCst);
            t.stop();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.tasks.iter().any(|t| t.working.load(Ordering::SeqCst)) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One pass of auto recording: a room of an app with `auto_recording.enabled` whose anchors
    /// start publishing gets a single-stream recording with the app's settings; the task's
    /// `max_idle_time` is `resume_wait_s`, so a short interruption keeps one task.
    pub fn auto_pass(&self, apps: &crate::store::Apps, rooms: &[RoomKey], data_dir: &Path, rtc: &RtcHandle) {
        let mut auto = self.auto.lock().expect("auto");
        for (app_id, app) in apps.iter() {
            let settings = &app.auto_recording;
            if !settings.enabled {
                if auto.enabled.remove(app_id) {
                    auto.excluded.retain(|k| k.app != *app_id);
                }
                continue;
            }
            if auto.enabled.insert(app_id.clone()) {
                // Just enabled: rooms already publishing are left alone.
                let now_live: Vec<RoomKey> = rooms.iter().filter(|k| k.app == *app_id).cloned().collect();
                auto.excluded.extend(now_live);
                continue;
            }
            for key in rooms.iter().filter(|k| k.app == *app_id) {
                if auto.excluded.contains(key) {
                    continue;
                }
                let live = auto.tasks.get(key).and_then(|id| self.tasks.get(id)).is_some_and(|t| !matches!(t.status.lock().expect("status").state, "STOPPED" | "FINISHED"));
                if live {
                    continue;
                }
                let spec = RecordingSpec {
                    id: tessera_model::TaskId::generate().as_str().to_owned(),
                    app: app_id.clone(),
                    room: key.room.clone(),
                    mode: Mode::Single { streams: vec![StreamKind::Main, StreamKind::Aux], split: true },
                    content: settings.content.clone(),
                    format: settings.format.clone(),
                    subscribe: tessera_engine::mcu::Subscribe::everyone(),
                    segment_s: 6,
                    split_minutes: settings.mp4_split_minutes,
                    max_idle: Duration::from_secs(settings.resume_wait_s.into()),
                    prefix: settings.prefix.clone(),
                };
                let id = spec.id.clone();
                match self.start(spec, data_dir.to_path_buf(), rtc.clone()) {
                    Ok(_) => {
                        tracing::info!(recording = %id, room = %key.room, "auto recording started");
                        auto.tasks.insert(key.clone(), id);
                    }
                    Err(e) => tracing::warn!("auto recording not started: {e}"),
                }
            }
        }
        // Rooms that emptied are no longer excluded: their next publication is recorded.
        auto.excluded.retain(|k| rooms.contains(k));
    }

    /// The recording a stored file belongs to (by the task id in its path).
    pub fn owner_of(&self, app: &AppId, path: &str) -> Option<Arc<RecordingTask>> {
        path.split('/').find_map(|seg| self.get(app, seg))
    }
}

/// Saves the task's spec and state to `tasks/<id>.json` (RECORDING.md §8: fsync'd on change).
fn save(task: &RecordingTask, data_dir: &Path) -> Result<(), crate::store::StoreError> {
    let spec = task.spec.lock().expect("spec").clone();
    let st = task.status.lock().expect("status").clone();
    let (mode, streams, split, mix_user, owned_job) = match &spec.mode {
        Mode::Single { streams, split } => ("single", streams.iter().map(|s| s.as_str()).collect::<Vec<_>>(), *split, None, None),
        Mode::Mixed { mix_user, owned_job } => ("mixed", Vec::new(), false, Some(mix_user.to_string()), owned_job.clone()),
    };
    let record = json!({
        "kind": "recording", "id": spec.id, "app": spec.app, "room": spec.room, "mode": mode, "streams": streams, "split": split, "mix_user": mix_user, "owned_job": owned_job,
        "content": spec.content, "format": spec.format, "segment_s": spec.segment_s, "split_minutes": spec.split_minutes, "max_idle_s": spec.max_idle.as_secs(), "prefix": spec.prefix,
        "subscribe": {"video_allow": spec.subscribe.video_allow, "video_deny": spec.subscribe.video_deny, "audio_allow": spec.subscribe.audio_allow, "audio_deny": spec.subscribe.audio_deny},
        "state": st.state, "created_at": task.created_at, "started_at": st.started_at, "stopped_at": st.stopped_at, "leave_code": st.leave_code,
        "restarts": st.restarts, "skipped_segments": st.skipped_segments, "clock_ms": st.clock_ms, "paused_ms": st.paused_ms, "error": st.error, "result": st.result,
    });
    let path = data_dir.join("tasks").join(format!("{}.json", spec.id));
    write_atomic(&path, &serde_json::to_vec_pretty(&record).unwrap_or_default(), 0o600)
        .inspect_err(|e| tracing::warn!(recording = %spec.id, "cannot save the recording task: {e}"))
}

/// Auto-stop rules (RECORDING.md §3): no media from any subscribed stream while anchors are
/// present, too long paused, too long in all.
const NO_MEDIA_STOP: Duration = Duration::from_secs(300);
const MAX_PAUSE: Duration = Duration::from_secs(90 * 60);
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// The most restarts a recording survives (RECORDING.md §8).
const MAX_RESTARTS: u32 = 3;

fn users_of(v: &Value) -> Option<Vec<String>> {
    v.as_array().map(|a| a.iter().filter_map(|u| u.as_str().map(str::to_owned)).collect())
}

impl Recordings {
    /// Picks up the recordings a previous run left (RECORDING.md §8): finished ones stay
    /// readable; live ones recover their interrupted segment, close their playlists and go on
    /// in `ha<N>_` files; a 4th crash ends the task as failed with every file listed; a
    /// stopped one redoes its conversion.
    pub fn resume(&self, data_dir: &Path, rtc: &RtcHandle) {
        for v in crate::task_file::read_all(&data_dir.join("tasks"), "recording") {
            let (Some(id), Ok(app), Ok(room)) = (v["id"].as_str(), AppId::parse(v["app"].as_str().unwrap_or("")), RoomId::parse(v["room"].as_str().unwrap_or(""))) else { continue };
            let mode = if v["mode"] == "mixed" {
                let Ok(mix_user) = UserId::parse(v["mix_user"].as_str().unwrap_or("")) else { continue };
                Mode::Mixed { mix_user, owned_job: v["owned_job"].as_str().map(str::to_owned) }
            } else {
                let streams = v["streams"].as_array().map(|a| a.iter().filter_map(|s| s.as_str().and_then(StreamKind::parse)).collect()).unwrap_or_default();
                Mode::Single { streams, split: v["split"].as_bool().unwrap_or(true) }
            };
            let spec = RecordingSpec {
                id: id.to_string(),
                app,
                room,
                mode,
                content: v["content"].as_str().unwrap_or("audio_video").to_string(),
                format: v["format"].as_str().unwrap_or("hls").to_string(),
                subscribe: tessera_engine::mcu::Subscribe {
                    video_allow: users_of(&v["subscribe"]["video_allow"]),
                    video_deny: users_of(&v["subscribe"]["video_deny"]).unwrap_or_default(),
                    audio_allow: users_of(&v["subscribe"]["audio_allow"]),
                    audio_deny: users_of(&v["subscribe"]["audio_deny"]).unwrap_or_default(),
                },
                segment_s: v["segment_s"].as_u64().unwrap_or(6) as u32,
                split_minutes: v["split_minutes"].as_u64().unwrap_or(1440) as u32,
                max_idle: Duration::from_secs(v["max_idle_s"].as_u64().unwrap_or(30)),
                prefix: v["prefix"].as_str().unwrap_or("").to_string(),
            };
            let state: &'static str = match v["state"].as_str().unwrap_or("") {
                "FINISHED" => "FINISHED",
                "STOPPED" => "STOPPED",
                "PAUSED" => "PAUSED",
                "RECORDING" => "RECORDING",
                _ => "PREPARED",
            };
            let status = RecordingStatus {
                state,
                leave_code: v["leave_code"].as_u64().map(|c| c as u32),
                started_at: v["started_at"].as_i64(),
                stopped_at: v["stopped_at"].as_i64(),
                paused_ms: v["paused_ms"].as_i64().unwrap_or(0),
                files: Vec::new(),
                error: v["error"].as_str().map(str::to_owned),
                result: (!v["result"].is_null()).then(|| v["result"].clone()),
                clock_ms: v["clock_ms"].as_i64().unwrap_or(0),
                restarts: v["restarts"].as_u64().unwrap_or(0) as u32,
                skipped_segments: v["skipped_segments"].as_u64().unwrap_or(0) as u32,
            };
            let task = Arc::new(RecordingTask { spec: Mutex::new(spec.clone()), status: Mutex::new(status), stop: AtomicBool::new(false), paused: AtomicBool::new(false), created_at: v["created_at"].as_i64().unwrap_or(0), shutting_down: AtomicBool::new(false), working: AtomicBool::new(false) });
            self.tasks.insert(spec.id.clone(), task.clone());
            if state == "FINISHED" {
                continue;
            }
            let (final_dir, spool, url_base) = spec.places(data_dir);
            recover_segments(&final_dir, &spool);
            let restarts = task.status.lock().expect("status").restarts;
            if state == "STOPPED" || restarts >= MAX_RESTARTS {
                {
                    let mut st = task.status.lock().expect("status");
                    if state != "STOPPED" {
                        st.state = "STOPPED";
                        st.leave_code = Some(104);
                        st.stopped_at = Some(crate::now_ms());
                        st.error = Some(format!("the server stopped unexpectedly {} times", restarts + 1));
                    }
                }
                tracing::warn!(recording = %spec.id, "recording ended after a restart; its files are kept");
                let events = TaskEvents::new(&self.hooks, &spec);
                if state != "STOPPED" {
                    events.emit(302, json!({"LeaveCode": 104}));
                }
                finish_task(&task, &spec, &final_dir, &spool, &url_base, None, &events);
                let _ = save(&task, data_dir);
                continue;
            }
            {
                let mut st = task.status.lock().expect("status");
                st.restarts += 1;
                if st.state == "PAUSED" {
                    task.paused.store(true, Ordering::SeqCst);
                }
            }
            tracing::info!(recording = %spec.id, restart = restarts + 1, "resuming the recording");
            let _ = save(&task, data_dir);
            task.working.store(true, Ordering::SeqCst);
            let runtime = tokio::runtime::Handle::current();
            let (t, dir, rtc, events) = (task.clone(), data_dir.to_path_buf(), rtc.clone(), TaskEvents::new(&self.hooks, &spec));
            if let Err(e) = std::thread::Builder::new().name(format!("rec-{}", spec.id)).spawn(move || worker(t, dir, rtc, runtime, events)) {
                tracing::error!("cannot resume the recording: {e}");
            }
        }
    }
}

/// After a crash: each interrupted `.part` segment is cut to whole 188-byte TS packets and kept
/// (appended to its playlist) if it holds media, else deleted; every playlist gets
/// `#EXT-X-ENDLIST` (RECORDING.md §8).
fn recover_segments(final_dir: &Path, spool: &Path) {
    if let Ok(entries) = std::fs::read_dir(spool) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(segment) = name.strip_suffix(".part").filter(|n| n.ends_with(".ts")) else {
                let _ = std::fs::remove_file(e.path());
                continue;
            };
            let len = std::fs::metadata(e.path()).map(|m| m.len()).unwrap_or(0);
            let whole = len - len % 188;
            let duration = if whole >= 188 * 8 {
                let _ = std::fs::OpenOptions::new().write(true).open(e.path()).and_then(|f| f.set_len(whole));
                tessera_transcode::mux::probe_duration(&e.path()).filter(|d| *d > 0.0)
            } else {
                None
            };
            let playlist = segment.rsplit_once('_').map(|(stem, _)| final_dir.join(format!("{stem}.m3u8")));
            match (duration, playlist) {
                (Some(d), Some(pl)) if std::fs::rename(e.path(), final_dir.join(segment)).is_ok() => {
                    let mut text = std::fs::read_to_string(&pl).unwrap_or_default();
                    if text.is_empty() {
                        continue;
                    }
                    text = text.replace("#EXT-X-ENDLIST\n", "");
                    text.push_str(&format!("#EXTINF:{d:.3},\n{segment}\n"));
                    let _ = write_atomic(&pl, text.as_bytes(), 0o644);
                }
                _ => {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    for pl in scan_playlists(final_dir) {
        let path = final_dir.join(&pl.name);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if !text.contains("#EXT-X-ENDLIST") {
            let _ = write_atomic(&path, format!("{text}#EXT-X-ENDLIST\n").as_bytes(), 0o644);
        }
    }
}

/// A recording's events (EVENTS.md group 3): its room, user `rec_<id>` and task id.
#[derive(Clone)]
pub struct TaskEvents {
    hooks: crate::webhook::Webhooks,
    app: AppId,
    room: RoomId,
    id: String,
}

impl TaskEvents {
    fn new(hooks: &crate::webhook::Webhooks, spec: &RecordingSpec) -> TaskEvents {
        TaskEvents { hooks: hooks.clone(), app: spec.app.clone(), room: spec.room.clone(), id: spec.id.clone() }
    }

    fn emit(&self, code: u16, payload: Value) {
        let info = tessera_model::events::EventInfo::task(self.room.as_str(), format!("rec_{}", self.id), &self.id).with_payload(payload);
        self.hooks.emit(&self.app, code, info);
    }

    /// 308: the storage refused a file.
    fn storage_error(&self, message: &str) {
        self.emit(308, json!({"Code": "StorageWriteFailed", "Message": message}));
    }
}

/// The task clock (RECORDING.md §3): starts at the first sample, stops while paused.
struct TaskClock {
    start: Instant,
    paused_total: Duration,
    paused_since: Option<Instant>,
    /// Where a resumed task's clock had got to before the crash.
    offset_ms: i64,
}

impl TaskClock {
    fn now_ms(&self, at: Instant) -> i64 {
        let paused = self.paused_total + self.paused_since.map(|p| at.saturating_duration_since(p)).unwrap_or_default();
        self.offset_ms + (at.saturating_duration_since(self.start).saturating_sub(paused)).as_millis() as i64
    }
}

struct Segment {
    ts: TsSegment,
    part: PathBuf,
    name: String,
    first_ms: i64,
    begin_unix: i64,
}

/// One playlist: its segments and the one being written.
struct HlsWriter {
    events: TaskEvents,
    storage: Arc<dyn Storage>,
    spool: PathBuf,
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
    /// Since when (task clock) the storage has refused this writer's files, if it does now.
    failing_since: Option<i64>,
    /// When 308 was last sent for this writer (one a few seconds is enough to say it).
    reported_ms: Option<i64>,
    /// Segments lost to storage failures.
    skipped: u32,
    /// After a segment could not be opened, the next attempt waits a segment's length (so one
    /// lost segment counts once, not once per frame).
    open_retry_at: Option<i64>,
}

/// How long storage may keep failing before the recording ends (PRODUCT.md: a storage failure
/// is reported with 308 and retried for up to 10 minutes).
const STORAGE_RETRY_MS: i64 = 10 * 60 * 1000;
/// 308 at most this often per writer while the storage keeps failing.
const STORAGE_REPORT_MS: i64 = 5_000;

/// A sample the muxer refused is dropped, not the recording: logged, and the next one goes on.
fn not_written(track: &str, r: Result<(), tessera_transcode::TranscodeError>) {
    if let Err(e) = r {
        tracing::debug!("{track} not written: {e}");
    }
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

    /// A file the storage refused (issue 10, defect 13): reported with 308 (at most every few
    /// seconds), the segment skipped and counted, a discontinuity marked; only after
    /// `STORAGE_RETRY_MS` of failures does the recording end.
    fn storage_trouble(&mut self, error: String, clock_ms: i64) -> Result<(), String> {
        let since = *self.failing_since.get_or_insert(clock_ms);
        if self.reported_ms.is_none_or(|t| clock_ms - t >= STORAGE_REPORT_MS) {
            self.reported_ms = Some(clock_ms);
            self.events.storage_error(&error);
        }
        self.discontinuity = true;
        if clock_ms - since >= STORAGE_RETRY_MS {
            return Err(format!("storage failing for {} s: {error}", STORAGE_RETRY_MS / 1000));
        }
        tracing::warn!(playlist = %self.playlist, "storage refused a segment; retrying with the next one: {error}");
        Ok(())
    }

    fn storage_ok(&mut self) {
        if self.failing_since.take().is_some() {
            tracing::info!(playlist = %self.playlist, skipped = self.skipped, "storage works again");
        }
    }

    /// Opens the next segment; a storage failure leaves none open (the samples until the next
    /// attempt are skipped).
    fn open(&mut self, clock_ms: i64, unix_ms: i64) -> Result<(), String> {
        if self.open_retry_at.is_some_and(|at| clock_ms < at) {
            return Ok(());
        }
        match self.open_segment(clock_ms, unix_ms) {
            Ok(()) => {
                self.open_retry_at = None;
                Ok(())
            }
            Err(e) => {
                self.skipped += 1;
                self.open_retry_at = Some(clock_ms + self.segment_ms);
                self.storage_trouble(e, clock_ms)
            }
        }
    }

    fn open_segment(&mut self, clock_ms: i64, unix_ms: i64) -> Result<(), String> {
        let name = format!("{}_{}.ts", self.segment_stem, utc17(unix_ms));
        let part = self.spool.join(format!("{name}.part"));
        let ts = TsSegment::create(&part, if self.video { self.size } else { None }, self.audio.as_ref()).map_err(|e| e.to_string())?;
        self.start_rec_time.get_or_insert(unix_ms);
        self.first_play_ms.get_or_insert(clock_ms);
        self.current = Some(Segment { ts, part, name, first_ms: clock_ms, begin_unix: unix_ms });
        Ok(())
    }

    /// Closes the current segment: renamed into place, listed, the playlist rewritten. A segment
    /// the storage refuses is skipped (see `storage_trouble`).
    fn cut(&mut self, end_ms: i64) -> Result<(), String> {
        let Some(part) = self.current.as_ref().map(|s| s.part.clone()) else { return Ok(()) };
        match self.cut_segment(end_ms) {
            Ok(()) => {
                self.storage_ok();
                Ok(())
            }
            Err(e) => {
                // What was not stored frees its space at once.
                let _ = std::fs::remove_file(&part);
                self.skipped += 1;
                self.storage_trouble(e, end_ms)
            }
        }
    }

    fn cut_segment(&mut self, end_ms: i64) -> Result<(), String> {
        let Some(seg) = self.current.take() else { return Ok(()) };
        seg.ts.finish().map_err(|e| e.to_string())?;
        let size = std::fs::metadata(&seg.part).map(|m| m.len()).unwrap_or(0);
        self.storage.store(&seg.part, &seg.name)?;
        let duration_ms = (end_ms - seg.first_ms).max(1);
        if std::mem::take(&mut self.discontinuity) {
            self.lines.push("#EXT-X-DISCONTINUITY".into());
        }
        self.lines.push(format!("#EXTINF:{:.3},", duration_ms as f64 / 1000.0));
        self.lines.push(seg.name.clone());
        self.files.push(FileInfo {
            file_name: seg.name.clone(),
            user_id: self.user_id.clone(),
            media_id: self.media_id.clone(),
            track_type: self.track_type.clone(),
            begin_ts: seg.begin_unix,
            end_ts: seg.begin_unix + duration_ms,
            duration_ms,
            size,
            url: self.storage.url(&seg.name),
            stored: true,
            play_time_ms: seg.first_ms,
        });
        if let Err(e) = self.write_playlist(false) {
            // The segment is stored and listed; the next playlist write will name it.
            return self.storage_trouble(e, end_ms);
        }
        if self.files.len() == 1 {
            // The playlist's first segment is stored: 307 names it, 304 the playlist.
            self.events.emit(307, json!({"FileName": seg.name, "UserId": self.user_id, "TrackType": self.track_type, "MediaId": self.media_id, "BeginTimeStamp": self.start_rec_time.unwrap_or(seg.begin_unix)}));
            self.events.emit(304, json!({"FileList": [self.playlist]}));
        }
        Ok(())
    }

    fn write_playlist(&self, end: bool) -> Result<(), String> {
        self.storage.put(&self.playlist, self.playlist_text(end).as_bytes())
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
        let Some(seg) = self.current.as_mut() else { return Ok(()) }; // storage refused it
        not_written("video", seg.ts.write_video(annex_b, clock_ms, keyframe));
        self.last_ms = clock_ms + 40;
        Ok(())
    }

    fn audio(&mut self, clock_ms: i64, unix_ms: i64, aac: &[u8]) -> Result<(), String> {
        let clock_ms = clock_ms.max(self.last_audio_ms + 1);
        if self.video {
            // Muxed: audio rides in the video's segments.
            if let Some(seg) = self.current.as_mut() {
                self.last_audio_ms = clock_ms;
                not_written("audio", seg.ts.write_audio(aac, clock_ms));
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
        let Some(seg) = self.current.as_mut() else { return Ok(()) }; // storage refused it
        not_written("audio", seg.ts.write_audio(aac, clock_ms));
        self.last_ms = clock_ms + 21;
        Ok(())
    }

    fn finish(&mut self) -> Result<(), String> {
        let end = self.last_ms;
        self.cut(end)?;
        if self.start_rec_time.is_some() {
            self.write_playlist(true).inspect_err(|e| self.events.storage_error(e))?;
        }
        Ok(())
    }
}

/// Everything recorded from one user stream (or the mix).
struct StreamRec {
    video_writer: Option<usize>,
    audio_writer: Option<usize>,
    video: VideoInput,
    probe: Option<VideoDecoder>,
    opus: Option<OpusDecoder>,
    aac: Option<AacEncoder>,
    aac_base: Option<i64>,
    audio_clock: TrackClock,
    last_keyframe_request: Option<Instant>,
}

struct Worker {
    spec: RecordingSpec,
    events: TaskEvents,
    /// `ha<N>_` after the N-th crash restart.
    ha: String,
    storage: Arc<dyn Storage>,
    spool: PathBuf,
    writers: Vec<HlsWriter>,
    streams: HashMap<(UserId, StreamKind), StreamRec>,
    /// Files of earlier runs (before a crash or restart), listed ahead of this run's.
    earlier: Vec<FileInfo>,
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
        let ha = &self.ha;
        let (playlist, stem, track_type, user_id, media_id) = match (&self.spec.mode, kind) {
            (Mode::Mixed { .. }, _) => (format!("{ha}{base}.m3u8"), format!("{ha}{base}"), "audio_video".to_string(), String::new(), "mix".to_string()),
            (Mode::Single { .. }, k) => (format!("{ha}{base}_{k}.m3u8"), format!("{ha}{base}_{k}"), k.to_string(), user.to_string(), stream.as_str().to_string()),
        };
        let segment_ms = self.spec.segment_s as i64 * 1000;
        self.writers.push(HlsWriter {
            events: self.events.clone(),
            storage: self.storage.clone(),
            spool: self.spool.clone(),
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
            failing_since: None,
            reported_ms: None,
            skipped: 0,
            open_retry_at: None,
        });
        self.writers.len() - 1
    }
}

fn worker(task: Arc<RecordingTask>, data_dir: PathBuf, rtc: RtcHandle, runtime: tokio::runtime::Handle, events: TaskEvents) {
    let spec = task.spec.lock().expect("spec").clone();
    let (final_dir, spool, url_base) = spec.places(&data_dir);
    let restarts = task.status.lock().expect("status").restarts;
    let ha = if restarts > 0 { format!("ha{restarts}_") } else { String::new() };
    let storage: Arc<dyn Storage> = Arc::new(LocalStorage { dir: final_dir.clone(), url_base: url_base.clone() });
    // A resumed task lists what earlier runs wrote from the start, not only once it finishes.
    let earlier: Vec<FileInfo> = if restarts > 0 {
        let start_unix = task.status.lock().expect("status").started_at.unwrap_or(0);
        listed_files(&scan_playlists(&final_dir), &final_dir, &url_base, start_unix).into_iter().flatten().collect()
    } else {
        Vec::new()
    };
    task.status.lock().expect("status").files = earlier.clone();
    let mut w = Worker { spec: spec.clone(), events: events.clone(), ha, storage, spool: spool.clone(), writers: Vec::new(), streams: HashMap::new(), earlier };
    let outcome = (|| -> Result<u32, String> {
        let ready = std::fs::create_dir_all(&final_dir).and_then(|_| std::fs::create_dir_all(&spool));
        let room = RoomKey { app: spec.app.clone(), room: spec.room.clone() };
        let tap = match &ready {
            Ok(()) => match UserId::parse(&format!("rec_{}", spec.id)) {
                Ok(owner) => runtime.block_on(rtc.add_tap_all(room.clone(), owner)).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        // 301 (or 306 after a crash restart), then 303 for the storage.
        if restarts > 0 {
            events.emit(306, json!({"Status": if tap.is_ok() { 0 } else { 1 }}));
        } else {
            events.emit(301, json!({"Status": if tap.is_ok() { 0 } else { 1 }}));
        }
        events.emit(303, json!({"Status": if ready.is_ok() { 0 } else { 1 }}));
        let (tap, mut packets) = tap?;
        let r = record(&task, &mut w, &room, &mut packets, &rtc, &runtime, &data_dir);
        let _ = runtime.block_on(rtc.remove_tap(tap));
        r
    })();
    let mut all_stored = true;
    for wr in &mut w.writers {
        if let Err(e) = wr.finish() {
            all_stored = false;
            tracing::warn!("finishing a playlist failed: {e}");
        }
    }
    if task.shutting_down.load(Ordering::SeqCst) {
        // Closed, not stopped: the state stays RECORDING/PAUSED and the next start resumes.
        let _ = save(&task, &data_dir);
        task.working.store(false, Ordering::SeqCst);
        tracing::info!(recording = %spec.id, "recording closed for the server's stop; it continues at the next start");
        return;
    }
    let (code, error) = match outcome {
        Ok(c) => (c, None),
        Err(e) => {
            tracing::error!(recording = %spec.id, "recording failed: {e}");
            (104, Some(e))
        }
    };
    {
        let mut st = task.status.lock().expect("status");
        st.state = "STOPPED";
        st.stopped_at = Some(crate::now_ms());
        st.leave_code = Some(code);
        st.error = error.clone();
    }
    let _ = save(&task, &data_dir);
    events.emit(302, json!({"LeaveCode": code}));
    let stored = if all_stored { 0 } else { 1 };
    events.emit(305, json!({"Status": stored, "LeaveCode": stored}));
    finish_task(&task, &spec, &final_dir, &spool, &url_base, error, &events);
    let _ = save(&task, &data_dir);
    task.working.store(false, Ordering::SeqCst);
}

/// A playlist found in the task's directory.
struct PlaylistInfo {
    name: String,
    /// The name without `ha<N>_` and without `.m3u8`: the same for a playlist and its
    /// continuations after crashes.
    stem: String,
    restart: u32,
    segments: Vec<(String, f64)>,
}

fn split_ha(name: &str) -> (u32, &str) {
    if let Some(rest) = name.strip_prefix("ha") {
        if let Some((n, tail)) = rest.split_once('_') {
            if let Ok(n) = n.parse::<u32>() {
                return (n, tail);
            }
        }
    }
    (0, name)
}

fn scan_playlists(dir: &Path) -> Vec<PlaylistInfo> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(base) = name.strip_suffix(".m3u8") else { continue };
        let (restart, stem) = split_ha(base);
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let mut segments = Vec::new();
        let mut duration = None;
        for l in text.lines() {
            if let Some(d) = l.strip_prefix("#EXTINF:") {
                duration = d.trim_end_matches(',').parse::<f64>().ok();
            } else if !l.starts_with('#') && !l.is_empty() {
                segments.push((l.to_string(), duration.take().unwrap_or(0.0)));
            }
        }
        out.push(PlaylistInfo { name: name.clone(), stem: stem.to_string(), restart, segments });
    }
    out.sort_by(|a, b| (a.stem.as_str(), a.restart).cmp(&(b.stem.as_str(), b.restart)));
    out
}

/// (user id, media id, track type) from a stem (RECORDING.md §4; ids are decoded back).
fn identify(stem: &str) -> (String, String, String) {
    use base64::Engine as _;
    let Some((_, rest)) = stem.split_once("__UserId_s_") else { return (String::new(), "mix".into(), "audio_video".into()) };
    let (user_b64, tail) = rest.split_once("__UserId_e_").unwrap_or((rest, "main"));
    let user = base64::engine::general_purpose::STANDARD
        .decode(user_b64.replace('-', "/").replace('.', "="))
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default();
    let (media, kind) = tail.split_once('_').unwrap_or((tail, "audio_video"));
    (user, media.to_string(), kind.to_string())
}

fn begin_of(segment: &str) -> i64 {
    // `..._<YYYYMMDDhhmmssSSS>.ts` → Unix ms.
    crate::merge::parse_stamp(segment.trim_end_matches(".ts").rsplit('_').next().unwrap_or("")).unwrap_or(0)
}

/// What each playlist in `final_dir` lists: its segments, then the playlist itself (with the
/// span and size of all its segments). The file list of a finished task, and of a resumed one
/// from the moment it resumes (issue 10, defect 14).
fn listed_files(playlists: &[PlaylistInfo], final_dir: &Path, url_base: &str, start_unix: i64) -> Vec<Vec<FileInfo>> {
    let mut out = Vec::new();
    for pl in playlists {
        let mut files = Vec::new();
        let (user, media, kind) = identify(&pl.stem);
        let mut first_begin = None;
        let mut total = 0f64;
        for (seg, dur) in &pl.segments {
            let begin = begin_of(seg);
            first_begin.get_or_insert(begin);
            total += dur;
            files.push(FileInfo {
                file_name: seg.clone(),
                user_id: user.clone(),
                media_id: media.clone(),
                track_type: kind.clone(),
                begin_ts: begin,
                end_ts: begin + (dur * 1000.0) as i64,
                duration_ms: (dur * 1000.0) as i64,
                size: std::fs::metadata(final_dir.join(seg)).map(|m| m.len()).unwrap_or(0),
                url: format!("{url_base}/{seg}"),
                stored: true,
                play_time_ms: 0,
            });
        }
        let begin = first_begin.unwrap_or(0);
        files.push(FileInfo {
            file_name: pl.name.clone(),
            user_id: user.clone(),
            media_id: media.clone(),
            track_type: kind.clone(),
            begin_ts: begin,
            end_ts: begin + (total * 1000.0) as i64,
            duration_ms: (total * 1000.0) as i64,
            size: std::fs::metadata(final_dir.join(&pl.name)).map(|m| m.len()).unwrap_or(0),
            url: format!("{url_base}/{}", pl.name),
            stored: true,
            play_time_ms: (begin - start_unix).max(0),
        });
        out.push(files);
    }
    out
}

/// STOPPED → FINISHED: MP4s from the playlists (each with its `ha<N>_` continuations), the file
/// list from what is stored, and the result (RECORDING.md §4.2, §5).
fn finish_task(task: &RecordingTask, spec: &RecordingSpec, final_dir: &Path, spool: &Path, url_base: &str, error: Option<String>, events: &TaskEvents) {
    let _ = std::fs::create_dir_all(spool);
    let storage = LocalStorage { dir: final_dir.to_path_buf(), url_base: url_base.to_string() };
    let playlists = scan_playlists(final_dir);
    let mut files: Vec<FileInfo> = Vec::new();
    let mut finals: Vec<(FileInfo, &'static str, u8)> = Vec::new();
    let video_type = |media: &str| match media {
        "main" => 0u8,
        "aux" => 1,
        _ => 2,
    };
    let start_unix = task.status.lock().expect("status").started_at.unwrap_or(0);
    for (pl, listed) in playlists.iter().zip(listed_files(&playlists, final_dir, url_base, start_unix)) {
        let (_, media, _) = identify(&pl.stem);
        let info = listed.last().cloned().expect("a playlist's own entry comes last");
        files.extend(listed);
        if !spec.mp4() && !spec.aac() {
            finals.push((info, "m3u8", video_type(&media)));
        }
    }
    let mut remux_failed: Option<String> = None;
    if spec.mp4() || spec.aac() {
        // One MP4 (or ADTS .aac) per user stream or for the mix: each track's playlists joined,
        // split at split_minutes or 2 GiB (then every part is `_<Index>`).
        let (format, ext, kind) = if spec.mp4() { ("mp4", "mp4", "mp4") } else { ("adts", "aac", "aac") };
        let mut groups: Vec<(String, Vec<&PlaylistInfo>)> = Vec::new();
        for pl in &playlists {
            let (user, media, _) = identify(&pl.stem);
            let key = format!("{user}\u{0}{media}");
            match groups.iter_mut().find(|g| g.0 == key) {
                Some(g) => g.1.push(pl),
                None => groups.push((key, vec![pl])),
            }
        }
        for (_, pls) in &groups {
            let (user, media, _) = identify(&pls[0].stem);
            let base = match pls[0].stem.rsplit_once('_') {
                Some((b, "video" | "audio" | "audio_video")) if !user.is_empty() => b.to_string(),
                _ => pls[0].stem.clone(),
            };
            // Per track (stem): its playlists in restart order, as one playlist in the spool.
            let mut inputs = Vec::new();
            let mut stems: Vec<&str> = pls.iter().map(|p| p.stem.as_str()).collect();
            stems.dedup();
            for stem in stems {
                let mut text = String::from("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-TARGETDURATION:60\n");
                for (k, pl) in pls.iter().filter(|p| p.stem == stem).enumerate() {
                    if k > 0 {
                        text.push_str("#EXT-X-DISCONTINUITY\n");
                    }
                    for (seg, dur) in &pl.segments {
                        text.push_str(&format!("#EXTINF:{dur:.3},\n{}\n", final_dir.join(seg).display()));
                    }
                }
                text.push_str("#EXT-X-ENDLIST\n");
                let path = spool.join(format!("{stem}.joined.m3u8"));
                if std::fs::write(&path, text).is_ok() {
                    inputs.push(path);
                }
            }
            let refs: Vec<&Path> = inputs.iter().map(|p| p.as_path()).collect();
            let part_path = |n: usize| spool.join(format!("{base}_{n}.{ext}.part"));
            let max_s = spec.split_minutes as f64 * 60.0;
            match tessera_transcode::mux::remux_split(&refs, format, &part_path, max_s, MAX_FILE_BYTES) {
                Ok(parts) => {
                    let single = parts.len() == 1;
                    let mut offset_ms = 0i64;
                    for (n, (path, seconds)) in parts.iter().enumerate() {
                        let name = if single { format!("{base}.{ext}") } else { format!("{base}_{}.{ext}", n + 1) };
                        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                        if storage.store(path, &name).is_err() {
                            continue;
                        }
                        let first = files.iter().filter(|f| f.user_id == user && f.media_id == media && f.file_name.ends_with(".ts")).map(|f| f.begin_ts).min().unwrap_or(0) + offset_ms;
                        let duration_ms = (seconds * 1000.0) as i64;
                        offset_ms += duration_ms;
                        let info = FileInfo {
                            file_name: name.clone(),
                            user_id: user.clone(),
                            media_id: media.clone(),
                            track_type: if format == "adts" { "audio".into() } else if inputs.len() > 1 { "audio_video".into() } else { identify(&pls[0].stem).2 },
                            begin_ts: first,
                            end_ts: first + duration_ms,
                            duration_ms,
                            size,
                            url: storage.url(&name),
                            stored: true,
                            play_time_ms: (first - start_unix).max(0),
                        };
                        files.push(info.clone());
                        finals.push((info, kind, video_type(&media)));
                    }
                }
                Err(e) => {
                    tracing::warn!("{ext} remux of {base} failed: {e}");
                    remux_failed.get_or_insert(format!("{ext} remux of {base} failed: {e}"));
                }
            }
        }
        // 310: the MP4 (or .aac) files, each with its user, track and time span.
        let made: Vec<&FileInfo> = finals.iter().map(|(f, ..)| f).filter(|f| !f.file_name.ends_with(".m3u8")).collect();
        let status = if made.is_empty() && !playlists.is_empty() { 2 } else if remux_failed.is_some() { 1 } else { 0 };
        events.emit(310, json!({
            "Status": status,
            "FileList": made.iter().map(|f| f.file_name.clone()).collect::<Vec<_>>(),
            "FileMessage": made.iter().map(|f| json!({"FileName": f.file_name, "UserId": f.user_id, "TrackType": f.track_type, "MediaId": f.media_id,
                "StartTimeStamp": f.begin_ts, "EndTimeStamp": f.end_ts})).collect::<Vec<_>>(),
        }));
        if !spec.hls_kept() {
            // `mp4` or `aac` alone: the HLS was only the crash-safe intermediate.
            let keep = |n: &str| n.ends_with(".mp4") || n.ends_with(".aac");
            for f in files.iter().filter(|f| !keep(&f.file_name)) {
                storage.remove(&f.file_name);
            }
            files.retain(|f| keep(&f.file_name));
        }
    }
    let _ = std::fs::remove_dir_all(spool);
    let mut st = task.status.lock().expect("status");
    st.files = files.clone();
    let total_time = st.clock_ms;
    // A conversion that failed is the task's failure, never a silent success (issue 10, defect 6).
    let error = error.or(remux_failed);
    let failed = error.is_some() || st.leave_code == Some(104);
    let mut result = json!({
        "TaskId": spec.id, "Status": if failed { "failed" } else { "ok" }, "RoomId": spec.room, "GroupId": "", "RecordUserId": format!("rec_{}", spec.id),
        "RecordStartTime": st.started_at.unwrap_or(task.created_at) / 1000, "RecordStopTime": st.stopped_at.unwrap_or(0) / 1000,
        "TotalTime": total_time, "ReplayUrl": "",
        "VideoInfos": finals.iter().map(|(f, format, vt)| json!({
            "VideoPlayTime": f.play_time_ms, "VideoSize": f.size, "VideoFormat": format, "VideoDuration": f.duration_ms,
            "VideoUrl": f.url, "VideoId": tessera_model::TaskId::generate().as_str(), "VideoType": vt, "UserId": f.user_id,
        })).collect::<Vec<_>>(),
        "Files": files.iter().map(|f| json!({"FileName": f.file_name, "UserId": f.user_id, "MediaId": f.media_id, "TrackType": f.track_type,
            "BeginTimeStamp": f.begin_ts, "EndTimeStamp": f.end_ts, "Size": f.size, "DurationMs": f.duration_ms, "Url": f.url, "Stored": f.stored})).collect::<Vec<_>>(),
    });
    if let Some(e) = error.clone().or_else(|| st.error.clone()) {
        result["error"] = json!(e);
    }
    if let Some(e) = error {
        st.error = Some(e);
    }
    st.result = Some(result.clone());
    st.state = "FINISHED";
    drop(st);
    // 311 commits each final file, 312 closes the task.
    for (f, ..) in &finals {
        events.emit(311, json!({"Status": 0, "Errmsg": "", "FileInfo": {"FileName": f.file_name, "UserId": f.user_id, "TrackType": f.track_type,
            "MediaId": f.media_id, "Url": f.url, "Size": f.size, "StartTimeStamp": f.begin_ts, "EndTimeStamp": f.end_ts}}));
    }
    events.emit(312, json!({"Status": if failed { 1 } else { 0 }, "Result": result}));
    tracing::info!(recording = %spec.id, files = files.len(), "recording finished");
}

/// Records until stopped; returns the LeaveCode.
fn record(
    task: &RecordingTask,
    w: &mut Worker,
    room: &RoomKey,
    packets: &mut tokio::sync::mpsc::Receiver<TapPacket>,
    rtc: &RtcHandle,
    runtime: &tokio::runtime::Handle,
    data_dir: &Path,
) -> Result<u32, String> {
    let spec = w.spec.clone();
    let created = Instant::now();
    let mut clock: Option<TaskClock> = None;
    let mut publishers: Vec<PublisherInfo> = Vec::new();
    let mut next_check = created;
    let mut idle_since: Option<Instant> = Some(created);
    let mut paused = false;
    let mut mix_gone_since: Option<Instant> = None;
    let mut last_media = created;
    loop {
        let now = Instant::now();
        if task.stop.load(Ordering::SeqCst) {
            note_clock(task, &clock, now);
            return Ok(0);
        }
        let stop_for = if clock.as_ref().is_some_and(|c| c.paused_since.is_some_and(|p| now - p >= MAX_PAUSE)) {
            Some(102)
        } else if now - created >= MAX_DURATION {
            Some(103)
        } else if idle_since.is_none() && !paused && now - last_media >= NO_MEDIA_STOP {
            Some(100)
        } else {
            None
        };
        if let Some(code) = stop_for {
            note_clock(task, &clock, now);
            return Ok(code);
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
                    let _ = save(task, data_dir);
                } else {
                    if let Some(p) = c.paused_since.take() {
                        c.paused_total += now - p;
                    }
                    let mut st = task.status.lock().expect("status");
                    st.state = "RECORDING";
                    st.paused_ms = c.paused_total.as_millis() as i64;
                    drop(st);
                    let _ = save(task, data_dir);
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
                note_clock(task, &clock, now);
                return Ok(99);
            }
            if let Mode::Mixed { mix_user, .. } = &spec.mode {
                if publishers.iter().any(|p| &p.user == mix_user) {
                    mix_gone_since = None;
                } else if clock.is_some() && now - *mix_gone_since.get_or_insert(now) >= Duration::from_secs(3) {
                    note_clock(task, &clock, now);
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
            last_media = now;
            let c = clock.get_or_insert_with(|| {
                let mut st = task.status.lock().expect("status");
                st.state = "RECORDING";
                st.started_at.get_or_insert(crate::now_ms());
                TaskClock { start: now, paused_total: Duration::ZERO, paused_since: None, offset_ms: st.clock_ms }
            });
            let arrival = c.now_ms(now);
            on_packet(w, &p, arrival, crate::now_ms(), rtc, runtime, room)?;
        }
        if let Some(c) = &clock {
            let mut st = task.status.lock().expect("status");
            let fresh: Vec<FileInfo> = w.earlier.iter().cloned().chain(w.writers.iter().flat_map(|wr| wr.files.iter().cloned())).collect();
            st.skipped_segments = w.writers.iter().map(|wr| wr.skipped).sum();
            if fresh.len() != st.files.len() {
                st.files = fresh;
                drop(st);
                // Every new segment is on record before the next one starts.
                let _ = save(task, data_dir);
                st = task.status.lock().expect("status");
            }
            st.clock_ms = c.now_ms(Instant::now());
        }
        if !got {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Notes the task clock at stop (TotalTime); the writers are finished by the caller.
fn note_clock(task: &RecordingTask, clock: &Option<TaskClock>, now: Instant) {
    if let Some(c) = clock {
        task.status.lock().expect("status").clock_ms = c.now_ms(now);
    }
}

fn on_packet(w: &mut Worker, p: &TapPacket, arrival: i64, unix_ms: i64, rtc: &RtcHandle, runtime: &tokio::runtime::Handle, room: &RoomKey) -> Result<(), String> {
    let key = (p.user.clone(), p.stream);
    if !w.streams.contains_key(&key) {
        w.streams.insert(
            key.clone(),
            StreamRec {
                video_writer: None,
                audio_writer: None,
                video: VideoInput::default(),
                probe: None,
                opus: None,
                aac: None,
                aac_base: None,
                audio_clock: TrackClock::audio(),
                last_keyframe_request: None,
            },
        );
    }
    let split = matches!(w.spec.mode, Mode::Single { split: true, .. });
    match p.codec {
        Codec::Opus if w.spec.wants_audio() => {
            let s = w.streams.get_mut(&key).expect("inserted");
            let ms = s.audio_clock.ms(p.ts, arrival);
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
            let (nalus, keyframe, ms) = match s.video.push(p, arrival)? {
                VideoUnit::Unit { nalus, keyframe, ms } => (nalus, keyframe, ms),
                VideoUnit::Lost => {
                    if s.last_keyframe_request.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        s.last_keyframe_request = Some(Instant::now());
                        let _ = runtime.block_on(rtc.request_keyframe(room.clone(), key.0.clone(), key.1));
                    }
                    return Ok(());
                }
                VideoUnit::None => return Ok(()),
            };
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
