//! Recordings (RECORDING.md §2–5): HLS (MPEG-TS segments + playlists with the TRTC tags) and
//! MP4, single-stream (per user stream, audio and video split or muxed) or mixed (a mix job's
//! output), on a task clock that stops while paused.
//!
//! The control logic is the engine's (`tessera_engine::outputs::recording`: what is recorded,
//! the task clock, pause, the auto-stop rules) and so is the media path (`tap_input`). Here:
//! the registry and its task files (this module), a tokio driver per task that taps the room,
//! follows its publishers and forwards packets and commands to the task's worker thread
//! (`worker`), which feeds `HlsWriter`s (`hls`) that cut segments at keyframes, write them as
//! `.part` in the spool, rename them into the task's directory and rewrite the playlist
//! atomically after every segment. At stop, playlists get `#EXT-X-ENDLIST` and, for the MP4
//! formats, are remuxed (`files`).

mod files;
mod task_file;
use task_file::RecordingFile;
mod hls;
pub mod s3;
mod worker;

pub use files::playlists;
pub use hls::{id_in_name, utc17, LocalStorage, Storage};
pub use tessera_engine::outputs::recording::{Mode, RecordingState};

use crate::registry::{Registry, Task, TaskFiles};
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tessera_engine::outputs::recording::Selection;
use tessera_engine::{RoomKey, RtcHandle};
use tessera_media::StreamKind;
use tessera_model::events::TaskEvent;
use tessera_model::{AppId, RoomId};
use worker::Input;

pub use crate::lock;

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
    /// Where the files go: local, a configured storage, or an inline bucket (its secret
    /// sealed or named by env, never plain here).
    pub storage: tessera_model::StorageRef,
}

/// Turns a storage choice into a bucket and its opened secret (`None`: local storage); the
/// server sets it, since it knows the configured storages and the apps' secrets.
pub type StorageResolver = Arc<dyn Fn(&AppId, &tessera_model::StorageRef) -> Result<Option<(tessera_model::S3Settings, String)>, String> + Send + Sync>;

static RESOLVER: std::sync::RwLock<Option<StorageResolver>> = std::sync::RwLock::new(None);

/// Sets how storage choices are resolved (the server's, replacing an earlier one).
pub fn resolve_storage_with(f: StorageResolver) {
    *RESOLVER.write().unwrap_or_else(|e| e.into_inner()) = Some(f);
}

/// The bucket of a storage choice: `Ok(None)` for local storage.
pub fn resolve_storage(app: &AppId, storage: &tessera_model::StorageRef) -> Result<Option<(tessera_model::S3Settings, String)>, String> {
    if storage.is_local() {
        return Ok(None);
    }
    let resolver = RESOLVER.read().unwrap_or_else(|e| e.into_inner()).clone();
    match resolver {
        Some(f) => f(app, storage),
        None => Err("no storage but local is configured".into()),
    }
}

impl RecordingSpec {
    /// Where the task's files go (RECORDING.md §7), its spool, and their URL prefix.
    /// For a bucket, the files' working copy is `spool/<task>/files/` (removed once all are
    /// uploaded).
    pub fn places(&self, data_dir: &Path) -> (PathBuf, PathBuf, String) {
        let rel = self.rel_dir();
        let url_base = format!("/files/{}/{rel}", self.app);
        let spool = data_dir.join("spool").join(&self.id);
        if self.storage.is_local() {
            (data_dir.join("recordings").join(self.app.as_str()).join(rel), spool, url_base)
        } else {
            (spool.join("files"), spool, url_base)
        }
    }

    /// `<Prefix>/<TaskId>` (`<TaskId>` alone without a prefix).
    pub fn rel_dir(&self) -> String {
        if self.prefix.is_empty() {
            self.id.clone()
        } else {
            format!("{}/{}", self.prefix.trim_end_matches('/'), self.id)
        }
    }

    /// The task's storage, opened: local, or the bucket with its uploads registered.
    pub(crate) fn open_storage(&self, data_dir: &Path, events: &TaskEvents, task: &Arc<RecordingTask>) -> Result<Arc<dyn Storage>, String> {
        let (final_dir, _, url_base) = self.places(data_dir);
        let Some((settings, secret)) = resolve_storage(&self.app, &self.storage)? else {
            return Ok(Arc::new(LocalStorage { dir: final_dir, url_base }));
        };
        let client = Arc::new(s3::S3Client::new(&settings, &secret).map_err(|e| e.to_string())?);
        let rel = format!("{}/", self.rel_dir());
        let weak = Arc::downgrade(task);
        let on_stored: Arc<dyn Fn(&str) + Send + Sync> = Arc::new(move |name: &str| {
            if let Some(task) = weak.upgrade() {
                for f in lock(&task.status).files.iter_mut().filter(|f| f.file_name == name) {
                    f.stored = true;
                }
            }
        });
        s3::uploads().open(&self.id, client.clone(), final_dir.clone(), rel.clone(), self.hls_kept(), events.clone(), on_stored);
        Ok(Arc::new(s3::S3Storage { task: self.id.clone(), dir: final_dir, client, rel, upload_hls: self.hls_kept() }))
    }

    pub fn hls_kept(&self) -> bool {
        self.format.starts_with("hls")
    }
    pub fn mp4(&self) -> bool {
        self.format.contains("mp4")
    }
    pub fn aac(&self) -> bool {
        self.format.contains("aac")
    }
    pub fn wants_video(&self) -> bool {
        self.content != "audio"
    }
    pub fn wants_audio(&self) -> bool {
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
    pub state: RecordingState,
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

/// Why a file was not written, or why a recording failed (its `error`, LeaveCode 104).
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// The storage refused a file.
    #[error("storing {name}: {reason}")]
    Storage { name: String, reason: String },
    /// Files were refused for longer than the storage limit (RECORDING.md §7).
    #[error("storage failing for {seconds} s: {last}")]
    StorageFailing { seconds: i64, last: Box<RecordingError> },
    #[error(transparent)]
    Media(#[from] tessera_transcode::TranscodeError),
    #[error("cannot make the recording's folders: {0}")]
    Folders(std::io::Error),
    /// The room's tap could not be made, or the driver feeding the worker ended.
    #[error("{0}")]
    Tap(String),
}

pub struct RecordingTask {
    pub spec: Mutex<RecordingSpec>,
    pub status: Mutex<RecordingStatus>,
    /// The worker's input: commands (pause, resume, stop, a new selection) ride the same
    /// channel as the media, in order.
    inputs: Mutex<Option<std::sync::mpsc::Sender<Input>>>,
    pub created_at: i64,
    /// Its worker thread is running.
    working: AtomicBool,
    files: TaskFiles,
}

impl Task for RecordingTask {
    const KIND: &'static str = "recording";
    fn app(&self) -> AppId {
        lock(&self.spec).app.clone()
    }
    fn is_live(&self) -> bool {
        !self.state().is_final()
    }
}

impl RecordingTask {
    /// Whether a file this task wrote carries video: `.aac` files and tasks of content "audio"
    /// never do; otherwise the track type the file's name encodes (RECORDING.md §4: the field
    /// after `__UserId_e_<media>_`, parsed, not searched for) decides, and mixed files carry
    /// video unless the task records audio only.
    pub fn file_has_video(&self, file_name: &str) -> bool {
        let spec = lock(&self.spec);
        if !spec.wants_video() || file_name.ends_with(".aac") {
            return false;
        }
        let stem = file_name.rsplit_once('.').map_or(file_name, |(stem, _)| stem);
        match &spec.mode {
            Mode::Mixed { .. } => true,
            Mode::Single { .. } => {
                // "audio", "audio_video", "video", each maybe followed by a segment's `_<UTC17>`.
                let kind = files::identify(stem).2;
                let audio_only = kind == "audio" || kind.strip_prefix("audio_").is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()));
                !audio_only
            }
        }
    }

    fn send(&self, input: Input) {
        if let Some(tx) = lock(&self.inputs).as_ref() {
            let _ = tx.send(input);
        }
    }

    pub fn pause(&self) {
        self.send(Input::Pause);
    }
    pub fn resume(&self) {
        self.send(Input::Resume);
    }
    pub fn stop(&self) {
        self.send(Input::Stop);
    }

    /// Stops with a LeaveCode (2 when its room is dismissed).
    pub fn stop_with(&self, code: u32) {
        self.send(Input::StopWith(code));
    }

    /// `PATCH` changed the streams or the subscription: the worker records the new selection.
    pub fn selection_changed(&self) {
        let spec = lock(&self.spec);
        let selection = Selection { mode: spec.mode.clone(), subscribe: spec.subscribe.clone() };
        drop(spec);
        self.send(Input::Select(selection));
    }

    pub fn state(&self) -> RecordingState {
        lock(&self.status).state
    }
}

pub struct Recordings {
    hooks: crate::Events,
    tasks: Registry<RecordingTask>,
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
    /// Recordings are always saved (`tasks_dir`): their files outlive the process.
    pub fn new(hooks: crate::Events, tasks_dir: PathBuf) -> Recordings {
        Recordings { hooks, tasks: Registry::new(Some(tasks_dir)), auto: Mutex::default() }
    }

    pub fn get(&self, app: &AppId, id: &str) -> Option<Arc<RecordingTask>> {
        self.tasks.get(app, id)
    }

    /// Every recording, in every app.
    pub fn all(&self) -> Vec<Arc<RecordingTask>> {
        self.tasks.all()
    }

    /// The app's recordings with their ids.
    pub fn list(&self, app: &AppId) -> Vec<(String, Arc<RecordingTask>)> {
        self.tasks.of_app(app)
    }

    /// Every recording's state, for the metrics.
    pub fn all_states(&self) -> Vec<RecordingState> {
        self.tasks.all().iter().map(|t| t.state()).collect()
    }

    /// Mix jobs owned by recordings that have stopped, for whatever reason: they stop too
    /// (LeaveCode 105).
    pub fn ended_owned_jobs(&self) -> Vec<(AppId, String)> {
        self.tasks
            .all()
            .iter()
            .filter(|t| t.state().is_final())
            .filter_map(|t| {
                let spec = lock(&t.spec);
                match &spec.mode {
                    Mode::Mixed { owned_job: Some(job), .. } => Some((spec.app.clone(), job.clone())),
                    _ => None,
                }
            })
            .collect()
    }

    pub fn live_count(&self, app: &AppId) -> usize {
        self.tasks.live_count(Some(app))
    }

    pub fn start(&self, spec: RecordingSpec, data_dir: PathBuf, rtc: RtcHandle) -> crate::TaskResult<Arc<RecordingTask>> {
        let task = Arc::new(RecordingTask {
            spec: Mutex::new(spec.clone()),
            status: Mutex::new(RecordingStatus {
                state: RecordingState::Prepared,
                leave_code: None,
                started_at: None,
                stopped_at: None,
                paused_ms: 0,
                files: Vec::new(),
                error: None,
                result: None,
                clock_ms: 0,
                restarts: 0,
                skipped_segments: 0,
            }),
            inputs: Mutex::new(None),
            created_at: crate::now_ms(),
            working: AtomicBool::new(false),
            files: self.tasks.files().clone(),
        });
        save(&task)?;
        self.tasks.insert(&spec.id, task.clone());
        worker::spawn(task.clone(), data_dir, rtc, TaskEvents::new(&self.hooks, &spec));
        Ok(task)
    }

    /// Server shut-down: every worker closes its playlists and leaves its task live for the
    /// next start; waits (at most 5 s) for them.
    pub async fn shutdown(&self) {
        let tasks = self.tasks.all();
        for t in &tasks {
            t.send(Input::Shutdown);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tasks.iter().any(|t| t.working.load(Ordering::SeqCst)) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One pass of auto recording: a room of an app with `auto_recording.enabled` whose anchors
    /// start publishing gets a single-stream recording with the app's settings; the task's
    /// `max_idle_time` is `resume_wait_s`, so a short interruption keeps one task.
    pub fn auto_pass(&self, apps: &std::collections::BTreeMap<AppId, tessera_model::App>, rooms: &[RoomKey], data_dir: &Path, rtc: &RtcHandle) {
        let mut auto = lock(&self.auto);
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
                let live = auto.tasks.get(key).and_then(|id| self.tasks.get(app_id, id)).is_some_and(|t| t.is_live());
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
                    storage: tessera_model::StorageRef::Named(settings.storage.clone()),
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
fn save(task: &RecordingTask) -> crate::TaskResult<()> {
    let spec = lock(&task.spec).clone();
    let st = lock(&task.status).clone();
    let (mode, streams, split, mix_user, owned_job) = match &spec.mode {
        Mode::Single { streams, split } => ("single", streams.clone(), *split, None, None),
        Mode::Mixed { mix_user, owned_job } => ("mixed", Vec::new(), false, Some(mix_user.clone()), owned_job.clone()),
    };
    let file = RecordingFile {
        kind: RecordingTask::KIND.into(),
        id: spec.id.clone(),
        app: spec.app,
        room: spec.room,
        mode: mode.into(),
        streams,
        split,
        mix_user,
        owned_job,
        content: spec.content,
        format: spec.format,
        segment_s: spec.segment_s,
        split_minutes: spec.split_minutes,
        max_idle_s: spec.max_idle.as_secs(),
        prefix: spec.prefix,
        storage: spec.storage,
        subscribe: spec.subscribe,
        state: st.state,
        created_at: task.created_at,
        started_at: st.started_at,
        stopped_at: st.stopped_at,
        leave_code: st.leave_code,
        restarts: st.restarts,
        skipped_segments: st.skipped_segments,
        clock_ms: st.clock_ms,
        paused_ms: st.paused_ms,
        error: st.error,
        result: st.result,
    };
    task.files.save(&spec.id, &file)
}

/// The most restarts a recording survives (RECORDING.md §8).
const MAX_RESTARTS: u32 = 3;

impl Recordings {
    /// Picks up the recordings a previous run left (RECORDING.md §8): finished ones stay
    /// readable; live ones recover their interrupted segment, close their playlists and go on
    /// in `ha<N>_` files; a 4th crash ends the task as failed with every file listed; a
    /// stopped one redoes its conversion.
    pub fn resume(&self, data_dir: &Path, rtc: &RtcHandle) {
        self.resume_from(data_dir, rtc, self.tasks.files().saved());
    }

    /// `resume` of these records (a cluster node taking over another's tasks).
    pub fn resume_from(&self, data_dir: &Path, rtc: &RtcHandle, records: Vec<serde_json::Value>) {
        for v in records {
            let f = match serde_json::from_value::<RecordingFile>(v) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!("recording task file skipped: {e}");
                    continue;
                }
            };
            let mode = match (f.mode.as_str(), f.mix_user) {
                ("mixed", Some(mix_user)) => Mode::Mixed { mix_user, owned_job: f.owned_job },
                ("mixed", None) => continue,
                _ => Mode::Single { streams: f.streams, split: f.split },
            };
            let spec = RecordingSpec {
                id: f.id,
                app: f.app,
                room: f.room,
                mode,
                content: f.content,
                format: f.format,
                subscribe: f.subscribe,
                segment_s: f.segment_s,
                split_minutes: f.split_minutes,
                max_idle: Duration::from_secs(f.max_idle_s),
                prefix: f.prefix,
                storage: f.storage,
            };
            let state = f.state;
            let status = RecordingStatus {
                state,
                leave_code: f.leave_code,
                started_at: f.started_at,
                stopped_at: f.stopped_at,
                paused_ms: f.paused_ms,
                files: Vec::new(),
                error: f.error,
                result: f.result,
                clock_ms: f.clock_ms,
                restarts: f.restarts,
                skipped_segments: f.skipped_segments,
            };
            let task = Arc::new(RecordingTask {
                spec: Mutex::new(spec.clone()),
                status: Mutex::new(status),
                inputs: Mutex::new(None),
                created_at: f.created_at,
                working: AtomicBool::new(false),
                files: self.tasks.files().clone(),
            });
            self.tasks.insert(&spec.id, task.clone());
            let (final_dir, spool, url_base) = spec.places(data_dir);
            if state == RecordingState::Finished {
                if !spec.storage.is_local() && final_dir.is_dir() {
                    // Files a previous run left in the spool: uploaded now.
                    let events = TaskEvents::new(&self.hooks, &spec);
                    // Opening it queues what the manifest does not list as stored.
                    match spec.open_storage(data_dir, &events, &task) {
                        Ok(_) => {
                            s3::uploads().end(&spec.id);
                        }
                        Err(e) => tracing::warn!(recording = %spec.id, "files left in the spool cannot be uploaded: {e}"),
                    }
                }
                continue;
            }
            files::recover_segments(&final_dir, &spool);
            let restarts = lock(&task.status).restarts;
            if state == RecordingState::Stopped || restarts >= MAX_RESTARTS {
                {
                    let mut st = lock(&task.status);
                    if state != RecordingState::Stopped {
                        st.state = RecordingState::Stopped;
                        st.leave_code = Some(104);
                        st.stopped_at = Some(crate::now_ms());
                        st.error = Some(format!("the server stopped unexpectedly {} times", restarts + 1));
                    }
                }
                tracing::warn!(recording = %spec.id, "recording ended after a restart; its files are kept");
                let events = TaskEvents::new(&self.hooks, &spec);
                if state != RecordingState::Stopped {
                    events.emit(TaskEvent::RecordingStopped { leave_code: 104 });
                }
                let storage: Arc<dyn Storage> = spec.open_storage(data_dir, &events, &task).unwrap_or_else(|e| {
                    tracing::warn!(recording = %spec.id, "its storage cannot be opened ({e}); files stay in the spool");
                    Arc::new(LocalStorage { dir: final_dir.clone(), url_base: url_base.clone() })
                });
                files::finish_task(&task, &spec, &final_dir, &spool, storage.as_ref(), None, &events);
                let _ = save(&task);
                continue;
            }
            // A PAUSED task resumes paused (its worker reads the state).
            lock(&task.status).restarts += 1;
            tracing::info!(recording = %spec.id, restart = restarts + 1, "resuming the recording");
            let _ = save(&task);
            worker::spawn(task.clone(), data_dir.to_path_buf(), rtc.clone(), TaskEvents::new(&self.hooks, &spec));
        }
    }
}

/// A recording's events (EVENTS.md group 3): its room, user `rec_<id>` and task id.
#[derive(Clone)]
pub struct TaskEvents {
    hooks: crate::Events,
    app: AppId,
    room: RoomId,
    id: String,
}

impl TaskEvents {
    pub fn new(hooks: &crate::Events, spec: &RecordingSpec) -> TaskEvents {
        TaskEvents { hooks: hooks.clone(), app: spec.app.clone(), room: spec.room.clone(), id: spec.id.clone() }
    }

    pub fn emit(&self, event: TaskEvent) {
        self.hooks.task(&self.app, &self.room, format!("rec_{}", self.id), &self.id, event);
    }

    /// 308: the storage refused a file.
    pub fn storage_error(&self, message: &str) {
        self.emit(TaskEvent::StorageError { code: "StorageWriteFailed".into(), message: message.into() });
    }
}
