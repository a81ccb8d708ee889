//! Pull ingest (PRODUCT.md §6.4, §10.2): a task pulls a URL into a room as a virtual anchor.
//!
//! Each task is a worker thread that owns a `tessera_transcode::source::PullSource` (libavformat
//! blocks on the network, so it cannot live on the async runtime) and hands its media to the
//! SFU like an RTMP publisher. The logic is the engine's (`tessera_engine::ingest`): the state
//! machine STARTING → RUNNING ⇄ RETRYING → STOPPED | FAILED with the retry schedule (0, 1 and
//! 3 s after a failure), real-time pacing and the RTP that continues across sources. Here: the
//! registry, the record saved to `tasks/<id>.json` at every change of state (a restarted server
//! resumes the tasks that were still live), events 701/702, and the blocking source.

use crate::lock;
use crate::registry::{Registry, Task, TaskFiles};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_engine::ingest::{EndReason, IngestEvent, IngestMachine, IngestMedia, IngestRtp, Pacer};
use tessera_engine::{PeerRole, Quality, RoomKey, RtcHandle, SessionSpec};
use tessera_media::StreamKind;
use tessera_model::events::TaskEvent;
use tessera_model::{AppId, RoomId, UserId};
use tessera_transcode::source::{Interrupt, PullSource, SourceError, SourceMedia, VideoData};

pub use tessera_engine::ingest::IngestState;

/// What `GET /v1/ingests/{id}` shows and `tasks/<id>.json` keeps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IngestRecord {
    pub kind: String,
    pub id: String,
    pub app: AppId,
    pub room: RoomId,
    pub user: UserId,
    pub stream: StreamKind,
    pub url: String,
    /// Times a file is played; -1 loops forever.
    pub repeat: i64,
    pub state: IngestState,
    pub created_at: i64,
    /// When the current state began.
    pub since: i64,
    pub error: Option<String>,
    pub plays_done: u64,
    /// How the source is handled, e.g. "h264 passthrough, aac→opus".
    pub source: Option<String>,
    #[serde(default)]
    pub bitrate_kbps: f64,
}

pub struct IngestTask {
    record: Mutex<IngestRecord>,
    interrupt: Interrupt,
    /// A URL `PATCH` asked to switch to; the worker picks it up between packets.
    switch_to: Mutex<Option<String>>,
    /// Why the task was asked to stop (the 702 `Reason`), when not by the API.
    stop_reason: Mutex<Option<EndReason>>,
    /// The server is stopping: the worker ends without recording a final state, so the next
    /// start resumes the task.
    shutting_down: std::sync::atomic::AtomicBool,
    files: TaskFiles,
    hooks: crate::Events,
}

impl Task for IngestTask {
    const KIND: &'static str = "ingest";
    fn app(&self) -> AppId {
        lock(&self.record).app.clone()
    }
    fn is_live(&self) -> bool {
        !lock(&self.record).state.is_final()
    }
}

impl IngestTask {
    fn new(record: IngestRecord, files: TaskFiles, hooks: crate::Events) -> IngestTask {
        IngestTask {
            record: Mutex::new(record),
            interrupt: Interrupt::default(),
            switch_to: Mutex::new(None),
            stop_reason: Mutex::new(None),
            shutting_down: Default::default(),
            files,
            hooks,
        }
    }

    /// Event 701 (`status`: 0 started, 1 failed for good, 2 about to retry) or 702 (`reason`).
    fn report(&self, event: impl FnOnce(String) -> TaskEvent) {
        let r = self.record();
        self.hooks.task(&r.app, &r.room, r.user.to_string(), &r.id, event(r.url.clone()));
    }

    pub fn record(&self) -> IngestRecord {
        lock(&self.record).clone()
    }

    fn update(&self, persist: bool, f: impl FnOnce(&mut IngestRecord)) {
        let snapshot = {
            let mut r = lock(&self.record);
            f(&mut r);
            r.clone()
        };
        if persist {
            let _ = self.files.save(&snapshot.id, &snapshot);
        }
    }

    fn set_state(&self, state: IngestState, error: Option<String>) {
        self.update(true, |r| {
            if r.state != state {
                r.since = crate::now_ms();
            }
            tracing::info!(ingest = %r.id, room = %r.room, user = %r.user, state = state.as_str(), error = error.as_deref().unwrap_or(""), "ingest state");
            r.state = state;
            r.error = error;
            if state.is_final() {
                r.bitrate_kbps = 0.0;
            }
        });
    }
}

/// Every ingest of the server.
pub struct Ingests {
    hooks: crate::Events,
    tasks: Registry<IngestTask>,
}

pub struct NewIngest {
    pub app: AppId,
    pub room: RoomId,
    pub user: UserId,
    pub stream: StreamKind,
    pub url: String,
    pub repeat: i64,
}

impl Ingests {
    pub fn new(tasks_dir: Option<PathBuf>, hooks: crate::Events) -> Ingests {
        Ingests { tasks: Registry::new(tasks_dir), hooks }
    }

    pub fn get(&self, app: &AppId, id: &str) -> Option<Arc<IngestTask>> {
        self.tasks.get(app, id)
    }

    pub fn list(&self, app: &AppId) -> Vec<IngestRecord> {
        self.tasks.of_app(app).iter().map(|(_, t)| t.record()).collect()
    }

    /// Every ingest, in every app.
    pub fn all(&self) -> Vec<Arc<IngestTask>> {
        self.tasks.all()
    }

    /// Every ingest's state, for the metrics.
    pub fn all_states(&self) -> Vec<&'static str> {
        self.tasks.all().iter().map(|t| t.record().state.as_str()).collect()
    }

    /// Live (not stopped or failed) ingests of an app.
    pub fn live_count(&self, app: &AppId) -> usize {
        self.tasks.live_count(Some(app))
    }

    /// Whether a live ingest of this app already publishes (room, user, stream).
    pub fn publishes(&self, app: &AppId, room: &RoomId, user: &UserId, stream: StreamKind) -> bool {
        self.list(app).iter().any(|r| !r.state.is_final() && r.room == *room && r.user == *user && r.stream == stream)
    }

    pub fn start(&self, new: NewIngest, rtc: RtcHandle) -> IngestRecord {
        let now = crate::now_ms();
        let record = IngestRecord {
            kind: "ingest".into(),
            id: tessera_model::TaskId::generate().as_str().to_owned(),
            app: new.app,
            room: new.room,
            user: new.user,
            stream: new.stream,
            url: new.url,
            repeat: new.repeat,
            state: IngestState::Starting,
            created_at: now,
            since: now,
            error: None,
            plays_done: 0,
            source: None,
            bitrate_kbps: 0.0,
        };
        let _ = self.tasks.files().save(&record.id, &record);
        self.spawn(record.clone(), rtc);
        record
    }

    fn spawn(&self, record: IngestRecord, rtc: RtcHandle) {
        let id = record.id.clone();
        let task = Arc::new(IngestTask::new(record, self.tasks.files().clone(), self.hooks.clone()));
        self.tasks.insert(&id, task.clone());
        let span = {
            let r = task.record();
            tracing::info_span!("ingest", id = %id, room = %r.room, user = %r.user)
        };
        let spawned = std::thread::Builder::new().name(format!("ingest-{id}")).spawn(move || span.in_scope(|| worker(task, rtc)));
        if let Err(e) = spawned {
            tracing::error!(ingest = %id, "cannot start the ingest worker: {e}");
        }
    }

    /// `PATCH {"url"}`: the worker switches at the next packet; viewers keep their sessions and
    /// timestamps continue.
    pub fn switch(&self, task: &IngestTask, url: String) {
        task.update(true, |r| r.url = url.clone());
        *lock(&task.switch_to) = Some(url);
    }

    /// `DELETE`: the worker stops within a packet (or its current blocking read is interrupted).
    pub fn stop(&self, task: &IngestTask) {
        task.interrupt.raise();
    }

    /// Stops the task for `reason` (a dismissed room).
    pub fn stop_for(&self, task: &IngestTask, reason: EndReason) {
        *lock(&task.stop_reason) = Some(reason);
        task.interrupt.raise();
    }

    /// Stops every worker (server shut-down). Records keep their live state, so the next start
    /// resumes them.
    pub fn shutdown(&self) {
        for t in self.tasks.all() {
            t.shutting_down.store(true, std::sync::atomic::Ordering::SeqCst);
            t.interrupt.raise();
        }
    }

    /// Resumes the tasks a previous run left live (`tasks/*.json` of kind "ingest").
    pub fn resume(&self, rtc: &RtcHandle) {
        self.resume_from(rtc, self.tasks.files().saved());
    }

    /// `resume` of these records (a cluster node taking over another's tasks).
    pub fn resume_from(&self, rtc: &RtcHandle, records: Vec<serde_json::Value>) {
        for v in records {
            let Ok(mut record) = serde_json::from_value::<IngestRecord>(v) else { continue };
            if record.state.is_final() {
                // Finished tasks stay readable (PRODUCT.md §10: retention).
                let id = record.id.clone();
                self.tasks.insert(&id, Arc::new(IngestTask::new(record, self.tasks.files().clone(), self.hooks.clone())));
                continue;
            }
            tracing::info!(ingest = %record.id, url = %record.url, "resuming the ingest");
            record.state = IngestState::Starting;
            record.since = crate::now_ms();
            self.spawn(record, rtc.clone());
        }
    }
}

/// Why one played source ended.
enum Outcome {
    Ended,
    Dropped(String),
    Stopped,
    Switched,
}

/// The worker thread: libavformat blocks on the network, so the source cannot live on the async
/// runtime. It runs the engine's `IngestMachine` and talks to the SFU with its blocking calls.
fn worker(task: Arc<IngestTask>, rtc: RtcHandle) {
    let (spec, repeat, plays_done) = {
        let r = task.record();
        let spec = SessionSpec {
            sid: tessera_model::random::session_id(),
            room: RoomKey { app: r.app.clone(), room: r.room.clone() },
            user: r.user.clone(),
            role: PeerRole::Publish,
            stream: r.stream,
            source_user: None,
            rejected_mids: Vec::new(),
            quality: Quality::Auto,
            join: tessera_engine::JoinInfo::anchor(tessera_engine::presence::user_type::PULL_INGEST),
        };
        (spec, r.repeat, r.plays_done)
    };
    let mut machine = IngestMachine::new(repeat, plays_done, Instant::now());
    let mut publisher: Option<(u64, tessera_engine::KeyframeRequests)> = None;
    let mut rtp = IngestRtp::default();
    while let Some(at) = machine.open_at() {
        apply(&task, &mut machine);
        if !sleep_until(&task.interrupt, at) {
            machine.stop_for(lock(&task.stop_reason).unwrap_or(EndReason::Api));
            break;
        }
        let url = lock(&task.switch_to).take().unwrap_or_else(|| task.record().url);
        let opened = crate::outbound::check_url_blocking(&url)
            .map_err(|e| SourceError::Open(e.to_string()))
            .and_then(|()| PullSource::open(&url, rtp.next_base_ms(), task.interrupt.clone()));
        let mut source = match opened {
            Err(SourceError::Stopped) => {
                machine.stop_for(lock(&task.stop_reason).unwrap_or(EndReason::Api));
                break;
            }
            Err(e) => {
                machine.failed(e.to_string(), Instant::now());
                continue;
            }
            Ok(source) => source,
        };
        let (id, keyframes) = match &publisher {
            Some((id, keyframes)) => (*id, keyframes),
            None => match rtc.add_ingest_blocking(spec.clone()) {
                Ok(added) => {
                    let (id, keyframes) = publisher.insert(added);
                    (*id, &*keyframes)
                }
                Err(_) => {
                    machine.engine_lost();
                    break;
                }
            },
        };
        let description = source.description.clone();
        task.update(false, |r| r.source = Some(description));
        let live = source.live;
        machine.opened();
        apply(&task, &mut machine);
        match play(&task, &mut source, id, keyframes, &mut rtp, &rtc) {
            Outcome::Stopped => machine.stop_for(lock(&task.stop_reason).unwrap_or(EndReason::Api)),
            Outcome::Switched => machine.switched(Instant::now()),
            Outcome::Ended => machine.ended(live, Instant::now()),
            Outcome::Dropped(e) => machine.failed(e, Instant::now()),
        }
    }
    if let Some((id, _)) = publisher {
        let _ = rtc.remove_ingest_blocking(id);
    }
    // A server shutting down leaves the task live (no final state, no 702): the next start
    // resumes it.
    if !task.shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
        apply(&task, &mut machine);
    }
}

/// The machine's events: states saved, 701/702 reported.
fn apply(task: &IngestTask, machine: &mut IngestMachine) {
    while let Some(event) = machine.poll_event() {
        match event {
            IngestEvent::State { state, error } => {
                if state == IngestState::Retrying {
                    tracing::warn!(ingest = %task.record().id, "ingest source failed: {}", error.as_deref().unwrap_or(""));
                }
                task.set_state(state, error);
            }
            IngestEvent::Status(status) => task.report(|url| TaskEvent::IngestStarted { url, status }),
            IngestEvent::PlaysDone(n) => task.update(true, |r| r.plays_done = n),
            IngestEvent::Ended(reason) => task.report(|url| TaskEvent::IngestStopped { url, reason: reason.as_str().to_string() }),
        }
    }
}

/// Sleeps until `at` unless the task is stopped first (returns false then).
fn sleep_until(interrupt: &Interrupt, at: Instant) -> bool {
    loop {
        if interrupt.is_raised() {
            return false;
        }
        let now = Instant::now();
        if now >= at {
            return true;
        }
        std::thread::sleep((at - now).min(Duration::from_millis(50)));
    }
}

/// Plays one opened source into the room at real time.
fn play(task: &IngestTask, source: &mut PullSource, publisher: u64, keyframes: &tessera_engine::KeyframeRequests, rtp: &mut IngestRtp, rtc: &RtcHandle) -> Outcome {
    let mut media = Vec::new();
    let mut pacer = Pacer::default();
    let (mut bytes, mut window) = (0u64, Instant::now());
    loop {
        if task.interrupt.is_raised() {
            return Outcome::Stopped;
        }
        if lock(&task.switch_to).is_some() {
            return Outcome::Switched;
        }
        match source.read(&mut media) {
            Ok(true) => {}
            Ok(false) => return Outcome::Ended,
            Err(SourceError::Stopped) => return Outcome::Stopped,
            Err(e) => return Outcome::Dropped(e.to_string()),
        }
        if keyframes.take() {
            // Only a transcoding source can make one; a passthrough source has its GOP cached.
            source.request_keyframe();
        }
        for m in media.drain(..) {
            if !sleep_until(&task.interrupt, pacer.due(m.due_ms(), Instant::now())) {
                return Outcome::Stopped;
            }
            let packets = rtp.packetize(match m {
                SourceMedia::Video { ts_ms, data: VideoData::H264(nalus), .. } => IngestMedia::H264 { ts_ms, nalus },
                SourceMedia::Video { ts_ms, data: VideoData::Vp8(frame), keyframe, .. } => IngestMedia::Vp8 { ts_ms, frame, keyframe },
                SourceMedia::Audio { frames, due_ms } => IngestMedia::Opus { due_ms, frames: frames.into_iter().map(|f| (f.ts, f.data, f.level)).collect() },
            });
            bytes += packets.iter().map(|p| p.payload.len() as u64 + 12).sum::<u64>();
            if !packets.is_empty() && rtc.push_blocking(publisher, packets).is_err() {
                return Outcome::Stopped;
            }
            let elapsed = window.elapsed();
            if elapsed >= Duration::from_secs(1) {
                let kbps = bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1000.0;
                task.update(false, |r| r.bitrate_kbps = (kbps * 10.0).round() / 10.0);
                (bytes, window) = (0, Instant::now());
            }
        }
    }
}
