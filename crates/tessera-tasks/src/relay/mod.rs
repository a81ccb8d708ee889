//! Relays (RECORDING.md §1): the driver of `tessera_engine::outputs::relay`.
//!
//! One tokio task per relay runs its `RelayMachine` (state, idle timer, URL state machines) and
//! carries out what it asks; one tokio task per connection attempt pushes FLV over RTMP with an
//! `RtmpPushSession` (sans-IO, `tessera-rtmp`). Only while the source publishes does a thread
//! run its `FlvProducer` (FFmpeg/OpenH264 work stays off the async workers): a relay that is
//! only waiting holds no thread (issue 10, defect 15).

mod push;

use crate::registry::{Registry, Task, TaskFiles};
use push::Attempt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_engine::outputs::flv::{FlvProducer, FlvTag, Lane};
use tessera_engine::outputs::relay::{AttemptEnd, RelayMachine, RelayOutput, StopCause};
use tessera_engine::{RoomKey, RtcHandle, TapPacket};
use tessera_media::StreamKind;
use tessera_model::events::TaskEvent;
use tessera_model::{AppId, RoomId, UserId};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

pub use tessera_engine::outputs::relay::{RelayMedia, RelayState, UrlStatus, UrlView, MAX_URLS};

#[derive(Debug, Clone, Serialize)]
pub struct RelayRecord {
    pub id: String,
    #[serde(skip)]
    pub app: AppId,
    pub room: RoomId,
    pub source: SourceRef,
    pub media: RelayMedia,
    pub state: RelayState,
    pub urls: Vec<UrlView>,
    /// The URLs that take Enhanced RTMP: an HEVC or AV1 source goes to them as it came.
    pub enhanced_rtmp_urls: Vec<String>,
    pub created_at: i64,
    pub leave_code: Option<u32>,
    /// Set for a mix job's own relay (`outputs.rtmp_urls`).
    pub owner: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRef {
    pub user: UserId,
    pub stream: StreamKind,
}

/// One FLV tag for the connections.
#[derive(Debug, Clone)]
enum Tag {
    Video { body: Arc<[u8]>, ts: u32, keyframe: bool, lane: Lane },
    Audio { body: Arc<[u8]>, ts: u32 },
}

/// What the converter thread hands the connections: tags as they come, and the latest
/// sequence headers for connections that (re)connect mid-stream.
struct Feed {
    media: RelayMedia,
    tags: broadcast::Sender<Tag>,
    /// The video sequence header of legacy URLs, and of Enhanced RTMP URLs.
    video_header: Mutex<Option<Arc<[u8]>>>,
    enhanced_video_header: Mutex<Option<Arc<[u8]>>>,
    audio_header: Mutex<Option<Arc<[u8]>>>,
}

/// Requests to a relay's task (its only input besides time, membership and connections).
enum Command {
    Stop(StopCause),
    SetUrls(Vec<String>, Vec<String>, oneshot::Sender<()>),
    SetSource(SourceRef, oneshot::Sender<()>),
}

pub struct RelayTask {
    /// What the relay's task last published of its state (GET answers from here).
    record: Mutex<RelayRecord>,
    commands: mpsc::UnboundedSender<Command>,
}

impl RelayTask {
    pub fn record(&self) -> RelayRecord {
        lock(&self.record).clone()
    }
}

impl Task for RelayTask {
    const KIND: &'static str = "relay";
    fn app(&self) -> AppId {
        lock(&self.record).app.clone()
    }
    fn is_live(&self) -> bool {
        lock(&self.record).state != RelayState::Stopped
    }
}

use crate::lock;

/// A URL with its stream key cut, for logs.
fn short(url: &str) -> String {
    url.rsplit_once('/').map(|(a, _)| format!("{a}/…")).unwrap_or_else(|| url.to_string())
}

/// RECORDING.md §1: rtmp:// or rtmps://, ≤ 1024 chars, ≤ 10.
pub fn check_urls(urls: &[String]) -> crate::TaskResult<()> {
    if urls.is_empty() || urls.len() > MAX_URLS {
        return Err(crate::TaskError::invalid_parameter("urls", format!("give 1 to {MAX_URLS} URLs")));
    }
    for (i, u) in urls.iter().enumerate() {
        if u.len() > 1024 {
            return Err(crate::TaskError::invalid_parameter(&format!("urls[{i}]"), "must be at most 1024 characters"));
        }
        tessera_rtmp::client::PushTarget::parse(u).map_err(|e| crate::TaskError::invalid_parameter(&format!("urls[{i}]"), e.to_string()))?;
        if urls[..i].contains(u) {
            return Err(crate::TaskError::invalid_parameter(&format!("urls[{i}]"), "listed twice"));
        }
    }
    Ok(())
}

pub struct Relays {
    tls: Arc<rustls::ClientConfig>,
    /// Saved to `tasks/` of the data dir and resumed after a restart.
    tasks: Registry<RelayTask>,
    hooks: crate::Events,
}

/// A relay's task file (`tasks/<id>.json`): what it needs to start again.
#[derive(Debug, Serialize, Deserialize)]
struct RelayFile {
    kind: String,
    id: String,
    app: AppId,
    room: RoomId,
    source: SourceRef,
    #[serde(default = "RelayFile::default_media")]
    media: RelayMedia,
    state: RelayState,
    #[serde(default)]
    urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    enhanced_rtmp_urls: Vec<String>,
    #[serde(default)]
    created_at: i64,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default = "RelayFile::default_idle")]
    max_idle_s: u64,
}

impl RelayFile {
    fn default_media() -> RelayMedia {
        RelayMedia::AudioVideo
    }
    fn default_idle() -> u64 {
        30
    }
}

fn save(files: &TaskFiles, r: &RelayRecord, max_idle: Duration) -> crate::TaskResult<()> {
    let file = RelayFile {
        kind: RelayTask::KIND.into(),
        id: r.id.clone(),
        app: r.app.clone(),
        room: r.room.clone(),
        source: r.source.clone(),
        media: r.media,
        state: r.state,
        urls: r.urls.iter().map(|u| u.url.clone()).collect(),
        enhanced_rtmp_urls: r.enhanced_rtmp_urls.clone(),
        created_at: r.created_at,
        owner: r.owner.clone(),
        max_idle_s: max_idle.as_secs(),
    };
    files.save(&r.id, &file)
}

pub struct NewRelay {
    /// A relay from before a restart keeps its id and creation time.
    pub resumed: Option<(String, i64)>,
    pub app: AppId,
    pub room: RoomId,
    pub source: SourceRef,
    pub media: RelayMedia,
    pub urls: Vec<String>,
    /// Those of `urls` that take Enhanced RTMP.
    pub enhanced_rtmp_urls: Vec<String>,
    pub max_idle: Duration,
    pub owner: Option<String>,
}

impl Relays {
    pub fn new(tasks_dir: Option<std::path::PathBuf>, hooks: crate::Events, tls: Arc<rustls::ClientConfig>) -> Relays {
        Relays { tls, tasks: Registry::new(tasks_dir), hooks }
    }

    /// Restarts the relays a previous run left live (a mix job's own relay comes back with the
    /// job). Their URLs connect again (state 1) when the source publishes.
    pub fn resume(&self, rtc: &RtcHandle) {
        self.resume_from(rtc, self.tasks.files().saved());
    }

    /// `resume` of these records (a cluster node taking over another's tasks).
    pub fn resume_from(&self, rtc: &RtcHandle, records: Vec<serde_json::Value>) {
        for v in records {
            let f = match serde_json::from_value::<RelayFile>(v) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!("relay task file skipped: {e}");
                    continue;
                }
            };
            // A mix job's own relay comes back with its job.
            if f.state == RelayState::Stopped || f.owner.is_some() {
                continue;
            }
            let id = f.id.clone();
            let new = NewRelay {
                resumed: Some((f.id, f.created_at)),
                app: f.app,
                room: f.room,
                source: f.source,
                media: f.media,
                urls: f.urls,
                enhanced_rtmp_urls: f.enhanced_rtmp_urls,
                max_idle: Duration::from_secs(f.max_idle_s),
                owner: None,
            };
            match self.start(new, rtc.clone()) {
                Ok(_) => tracing::info!(relay = %id, "relay resumed"),
                Err(e) => tracing::warn!(relay = %id, "relay not resumed: {e}"),
            }
        }
    }

    pub fn get(&self, app: &AppId, id: &str) -> Option<Arc<RelayTask>> {
        self.tasks.get(app, id)
    }

    /// Every URL's status, for the metrics.
    pub fn all_url_states(&self) -> Vec<u8> {
        self.tasks.all().iter().flat_map(|t| lock(&t.record).urls.iter().map(|u| u.status.code()).collect::<Vec<_>>()).collect()
    }

    pub fn list(&self, app: &AppId) -> Vec<RelayRecord> {
        self.tasks.of_app(app).iter().map(|(_, t)| t.record()).collect()
    }

    /// Relays of the app that are not stopped (the per-app cap counts these).
    pub fn live_count(&self, app: &AppId) -> usize {
        self.tasks.live_count(Some(app))
    }

    /// A URL listed by another relay that has not stopped (RECORDING.md §1: 409 `url_in_use`).
    pub fn url_in_use(&self, url: &str, except: Option<&str>) -> bool {
        self.tasks.all().iter().any(|t| {
            let r = lock(&t.record);
            r.state != RelayState::Stopped && Some(r.id.as_str()) != except && r.urls.iter().any(|u| u.url == url)
        })
    }

    pub fn start(&self, new: NewRelay, rtc: RtcHandle) -> crate::TaskResult<RelayRecord> {
        let now_ms = crate::now_ms();
        let (id, created_at) = new.resumed.clone().unwrap_or_else(|| (tessera_model::TaskId::generate().as_str().to_owned(), now_ms));
        let machine = RelayMachine::new(&new.urls, new.max_idle, Instant::now(), now_ms);
        let record = RelayRecord {
            id: id.clone(),
            app: new.app.clone(),
            room: new.room.clone(),
            source: new.source.clone(),
            media: new.media,
            state: machine.state(),
            urls: machine.urls(),
            enhanced_rtmp_urls: new.enhanced_rtmp_urls.clone(),
            created_at,
            leave_code: None,
            owner: new.owner.clone(),
        };
        save(self.tasks.files(), &record, new.max_idle)?;
        let (commands, rx) = mpsc::unbounded_channel();
        let task = Arc::new(RelayTask { record: Mutex::new(record.clone()), commands });
        self.tasks.insert(&id, task.clone());
        let driver = Driver {
            task,
            machine,
            room: RoomKey { app: new.app, room: new.room },
            source: new.source,
            feed: Arc::new(Feed {
                media: new.media,
                tags: broadcast::channel(1024).0,
                video_header: Mutex::new(None),
                enhanced_video_header: Mutex::new(None),
                audio_header: Mutex::new(None),
            }),
            max_idle: new.max_idle,
            rtc,
            tls: self.tls.clone(),
            hooks: self.hooks.clone(),
            files: self.tasks.files().clone(),
        };
        let span = tracing::info_span!("relay", id = %id);
        tokio::spawn(tracing::Instrument::instrument(driver.run(rx), span));
        Ok(record)
    }

    /// `PATCH urls`: added URLs start, removed ones go 5 → 0, listed ones in 0 or 4 restart.
    /// `enhanced_rtmp_urls` (those of `urls` that take Enhanced RTMP) apply from each URL's next
    /// connection. Returns once the relay's record shows the new list.
    pub async fn set_urls(&self, task: &RelayTask, urls: Vec<String>, enhanced_rtmp_urls: Vec<String>) {
        apply(task, |done| Command::SetUrls(urls, enhanced_rtmp_urls, done)).await;
    }

    pub async fn set_source(&self, task: &RelayTask, source: SourceRef) {
        apply(task, |done| Command::SetSource(source, done)).await;
    }

    pub fn stop(&self, task: &RelayTask) {
        self.stop_for(task, StopCause::Request);
    }

    /// Stops the relay for `cause` (a dismissed room: LeaveCode 2).
    pub fn stop_for(&self, task: &RelayTask, cause: StopCause) {
        let _ = task.commands.send(Command::Stop(cause));
    }

    /// Every relay, in every app.
    pub fn all(&self) -> Vec<Arc<RelayTask>> {
        self.tasks.all()
    }

    /// Stops every relay's connections but leaves its saved state live, so the next start
    /// resumes it.
    pub fn shutdown(&self) {
        for t in self.tasks.all() {
            let _ = t.commands.send(Command::Stop(StopCause::Shutdown));
        }
    }
}

/// Sends a change to the relay's task and waits until its record shows it.
async fn apply(task: &RelayTask, command: impl FnOnce(oneshot::Sender<()>) -> Command) {
    let (done, applied) = oneshot::channel();
    if task.commands.send(command(done)).is_ok() {
        let _ = applied.await;
    }
}

/// How a connection attempt reports to its relay's task.
enum AttemptReport {
    Running,
    Ended(AttemptEnd),
}

/// What the converter thread reports.
enum MediaReport {
    KeyframeWanted,
    Failed(RelayError),
}

/// Why a relay's media path failed (the relay ends with LeaveCode 104 and this as `error`).
#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("cannot tap the room: {0}")]
    Tap(String),
    #[error("cannot start the relay's converter: {0}")]
    Converter(std::io::Error),
    #[error(transparent)]
    Media(#[from] tessera_transcode::TranscodeError),
}

/// A relay's task: its machine, and everything the machine asks for.
struct Driver {
    task: Arc<RelayTask>,
    machine: RelayMachine,
    room: RoomKey,
    source: SourceRef,
    feed: Arc<Feed>,
    max_idle: Duration,
    rtc: RtcHandle,
    tls: Arc<rustls::ClientConfig>,
    hooks: crate::Events,
    files: TaskFiles,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let (attempt_tx, mut attempts) = mpsc::unbounded_channel::<(String, u64, AttemptReport)>();
        let (media_tx, mut media_reports) = mpsc::unbounded_channel::<MediaReport>();
        // URL → (attempt number, its close signal).
        let mut connections: HashMap<String, (u64, watch::Sender<bool>)> = HashMap::new();
        let mut next_attempt_id = 0u64;
        let mut tap: Option<u64> = None;
        let mut shutting_down = false;
        // The relay's media clock: arrival times are counted from here for every source.
        let epoch = Instant::now();
        // Whether the source publishes: the room's publishers as they change.
        let mut publishers = match self.rtc.watch_publishers(self.room.clone()).await {
            Ok(w) => Some(w),
            Err(e) => {
                self.machine.media_failed(e.to_string(), Instant::now());
                None
            }
        };
        let mut replies: Vec<oneshot::Sender<()>> = Vec::new();
        loop {
            while let Some(output) = self.machine.poll_output() {
                match output {
                    RelayOutput::UrlStatus { url, status, code, msg } => {
                        tracing::info!(url = %short(&url), status = status.code(), "relay URL status");
                        let (app, room, id) = {
                            let r = lock(&self.task.record);
                            (r.app.clone(), r.room.clone(), r.id.clone())
                        };
                        let event = TaskEvent::RelayUrlStatus { url, status: status.code(), error_code: code, error_msg: msg };
                        self.hooks.task(&app, &room, format!("relay_{id}"), &id, event);
                    }
                    RelayOutput::Connect { url } => {
                        next_attempt_id += 1;
                        let (close, closed) = watch::channel(false);
                        if let Some((_, old)) = connections.insert(url.clone(), (next_attempt_id, close)) {
                            let _ = old.send(true);
                        }
                        let enhanced = lock(&self.task.record).enhanced_rtmp_urls.contains(&url);
                        let attempt = Attempt { url, id: next_attempt_id, enhanced, feed: self.feed.clone(), tls: self.tls.clone(), reports: attempt_tx.clone() };
                        tokio::spawn(attempt.run(self.feed.tags.subscribe(), closed));
                    }
                    RelayOutput::Disconnect { url } => {
                        if let Some((_, close)) = connections.get(&url) {
                            let _ = close.send(true);
                        }
                    }
                    RelayOutput::MediaStart => match self.start_media(epoch, media_tx.clone()).await {
                        Ok(id) => tap = Some(id),
                        Err(e) => self.machine.media_failed(e.to_string(), Instant::now()),
                    },
                    RelayOutput::MediaStop => {
                        // Removing the tap ends the converter thread (its channel closes).
                        if let Some(id) = tap.take() {
                            let _ = self.rtc.remove_tap(id).await;
                        }
                    }
                    RelayOutput::Save => {
                        self.publish();
                        let _ = save(&self.files, &self.task.record(), self.max_idle);
                    }
                    RelayOutput::Stopped { leave_code } => tracing::info!(leave_code, "relay stopped"),
                }
            }
            self.publish();
            for r in replies.drain(..) {
                let _ = r.send(());
            }
            if self.machine.state() == RelayState::Stopped {
                break;
            }
            let wake = self.machine.poll_timeout().map(tokio::time::Instant::from_std);
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Stop(cause)) => {
                        shutting_down |= cause == StopCause::Shutdown;
                        self.machine.stop(cause, Instant::now());
                    }
                    Some(Command::SetUrls(urls, enhanced, done)) => {
                        lock(&self.task.record).enhanced_rtmp_urls = enhanced;
                        self.machine.set_urls(&urls, Instant::now());
                        replies.push(done);
                    }
                    Some(Command::SetSource(source, done)) => {
                        self.source = source.clone();
                        lock(&self.task.record).source = source;
                        self.machine.source_changed();
                        if let Some(w) = &publishers {
                            let present = self.source_publishes(&w.list.borrow());
                            self.machine.source_present(present, Instant::now());
                        }
                        replies.push(done);
                    }
                    // Every handle is gone (the server is going away).
                    None => self.machine.stop(StopCause::Shutdown, Instant::now()),
                },
                changed = async { publishers.as_mut()?.list.changed().await.ok() }, if publishers.is_some() => match changed {
                    Some(()) => {
                        let present = self.source_publishes(&publishers.as_mut().expect("watched").list.borrow_and_update());
                        self.machine.source_present(present, Instant::now());
                    }
                    None => {
                        publishers = None;
                        self.machine.media_failed(tessera_engine::RtcServerError::Stopped.to_string(), Instant::now());
                    }
                },
                Some((url, id, report)) = attempts.recv() => {
                    // Reports of an attempt that was replaced are stale.
                    if connections.get(&url).is_some_and(|(current, _)| *current == id) {
                        match report {
                            AttemptReport::Running => self.machine.url_running(&url, Instant::now()),
                            AttemptReport::Ended(end) => {
                                connections.remove(&url);
                                self.machine.url_ended(&url, end, Instant::now());
                            }
                        }
                    }
                }
                Some(report) = media_reports.recv() => match report {
                    MediaReport::KeyframeWanted => {
                        let _ = self.rtc.request_keyframe(self.room.clone(), self.source.user.clone(), self.source.stream).await;
                    }
                    MediaReport::Failed(e) => {
                        tracing::error!("relay failed: {e}");
                        self.machine.media_failed(e.to_string(), Instant::now());
                    }
                },
                _ = sleep_until(wake) => self.machine.handle_timeout(Instant::now()),
            }
        }
        for (_, (_, close)) in connections {
            let _ = close.send(true);
        }
        if let Some(id) = tap {
            let _ = self.rtc.remove_tap(id).await;
        }
        // A server shutting down leaves the saved state live, so the next start resumes it.
        if !shutting_down {
            let _ = save(&self.files, &self.task.record(), self.max_idle);
        }
    }

    /// The machine's view → the shared record.
    fn publish(&self) {
        let mut r = lock(&self.task.record);
        r.state = self.machine.state();
        r.urls = self.machine.urls();
        r.leave_code = self.machine.leave_code();
    }

    fn source_publishes(&self, publishers: &[tessera_engine::PublisherInfo]) -> bool {
        publishers.iter().any(|p| p.user == self.source.user && p.stream == self.source.stream)
    }

    /// Taps the room and starts the converter thread on the source's packets.
    async fn start_media(&self, epoch: Instant, reports: mpsc::UnboundedSender<MediaReport>) -> Result<u64, RelayError> {
        let owner = UserId::parse(&format!("relay_{}", lock(&self.task.record).id)).map_err(|e| RelayError::Tap(e.to_string()))?;
        let (tap, packets) = self.rtc.add_output_tap(self.room.clone(), tessera_engine::TapKind::Relay, owner).await.map_err(|e| RelayError::Tap(e.to_string()))?;
        let producer = FlvProducer::new(self.source.user.clone(), self.source.stream, self.feed.media);
        let feed = self.feed.clone();
        let name = format!("relay-{}", lock(&self.task.record).id);
        if let Err(e) = std::thread::Builder::new().name(name).spawn(move || convert(producer, packets, epoch, feed, reports)) {
            let _ = self.rtc.remove_tap(tap).await;
            return Err(RelayError::Converter(e));
        }
        Ok(tap)
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The converter thread: the source's packets → FLV tags, until the tap is removed.
fn convert(mut producer: FlvProducer, mut packets: mpsc::Receiver<TapPacket>, epoch: Instant, feed: Arc<Feed>, reports: mpsc::UnboundedSender<MediaReport>) {
    let mut out = Vec::new();
    while let Some(p) = packets.blocking_recv() {
        if let Err(e) = producer.push(&p, epoch.elapsed().as_millis() as i64, &mut out) {
            let _ = reports.send(MediaReport::Failed(e.into()));
            return;
        }
        for tag in out.drain(..) {
            match tag {
                FlvTag::VideoHeader { body, lane } => {
                    let h: Arc<[u8]> = Arc::from(body);
                    if lane.for_url(false) {
                        *lock(&feed.video_header) = Some(h.clone());
                    }
                    if lane.for_url(true) {
                        *lock(&feed.enhanced_video_header) = Some(h);
                    }
                }
                FlvTag::AudioHeader(h) => *lock(&feed.audio_header) = Some(Arc::from(h)),
                FlvTag::Video { body, ms, keyframe, lane } => drop(feed.tags.send(Tag::Video { body: Arc::from(body), ts: ms, keyframe, lane })),
                FlvTag::Audio { body, ms } => drop(feed.tags.send(Tag::Audio { body: Arc::from(body), ts: ms })),
                FlvTag::KeyframeWanted => drop(reports.send(MediaReport::KeyframeWanted)),
            }
        }
    }
}
