//! Pull ingest (PRODUCT.md §6.4, §10.2): a task pulls a URL into a room as a virtual anchor.
//!
//! Each task is a worker thread that owns a `tessera_transcode::source::PullSource` (libavformat
//! blocks on the network, so it cannot live on the async runtime), paces the media to real
//! time, packetizes it to RTP and hands it to the SFU like an RTMP publisher. The state machine
//! STARTING → RUNNING ⇄ RETRYING → STOPPED | FAILED and the retry schedule (0, 1 and 3 s after a
//! failure) are plain values (`RetrySchedule`); the record is saved to `tasks/<id>.json` at every
//! change of state, and a restarted server resumes the tasks that were still live.

use crate::store::write_atomic;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_engine::{IngestPacket, PeerRole, Quality, RoomKey, RtcHandle, SessionSpec};
use tessera_media::h264::H264Packetizer;
use tessera_media::{Codec, StreamKind};
use tessera_model::{AppId, RoomId, UserId};
use tessera_transcode::source::{Interrupt, PullSource, SourceError, SourceMedia, VideoData};

/// Retries after a failure, counted from it (PRODUCT.md §10.2).
pub const RETRY_AT: [Duration; 3] = [Duration::ZERO, Duration::from_secs(1), Duration::from_secs(3)];
const MAX_RTP_PAYLOAD: usize = 1200;
/// A source that falls this far behind real time (a stall) is re-anchored instead of being
/// played out in a burst.
const MAX_LAG: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IngestState {
    Starting,
    Running,
    Retrying,
    Stopped,
    Failed,
}

impl IngestState {
    pub fn is_final(self) -> bool {
        matches!(self, IngestState::Stopped | IngestState::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IngestState::Starting => "STARTING",
            IngestState::Running => "RUNNING",
            IngestState::Retrying => "RETRYING",
            IngestState::Stopped => "STOPPED",
            IngestState::Failed => "FAILED",
        }
    }
}

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

/// The retry rule of PRODUCT.md §10.2 as a value: after a failure at `t`, attempts at `t`,
/// `t + 1 s` and `t + 3 s`; a success starts over.
#[derive(Debug, Default)]
pub struct RetrySchedule {
    first_failure: Option<Instant>,
    retries: usize,
}

impl RetrySchedule {
    /// A failure (of an attempt or of a running source) at `now`: when to try next, or `None`
    /// when the retries are used up.
    pub fn on_failure(&mut self, now: Instant) -> Option<Instant> {
        let first = *self.first_failure.get_or_insert(now);
        let at = RETRY_AT.get(self.retries).map(|d| first + *d);
        self.retries += 1;
        at
    }

    pub fn on_success(&mut self) {
        *self = RetrySchedule::default();
    }
}

pub struct IngestTask {
    record: Mutex<IngestRecord>,
    interrupt: Interrupt,
    /// A URL `PATCH` asked to switch to; the worker picks it up between packets.
    switch_to: Mutex<Option<String>>,
    /// The server is stopping: the worker ends without recording a final state, so the next
    /// start resumes the task.
    shutting_down: std::sync::atomic::AtomicBool,
    tasks_dir: Option<PathBuf>,
    hooks: crate::webhook::Webhooks,
}

impl IngestTask {
    fn new(record: IngestRecord, tasks_dir: Option<PathBuf>, hooks: crate::webhook::Webhooks) -> IngestTask {
        IngestTask { record: Mutex::new(record), interrupt: Interrupt::default(), switch_to: Mutex::new(None), shutting_down: Default::default(), tasks_dir, hooks }
    }

    /// Event 701 (`status`: 0 started, 1 failed for good, 2 about to retry) or 702 (`reason`).
    fn report(&self, code: u16, status: i64, reason: Option<&str>) {
        let r = self.record();
        let info = tessera_model::events::EventInfo {
            task_id: Some(r.id.clone()),
            user_id: Some(r.user.to_string()),
            url: Some(r.url.clone()),
            status: Some(status),
            reason: reason.map(|w| serde_json::Value::String(w.to_string())),
            ..tessera_model::events::EventInfo::room(r.room.as_str())
        };
        self.hooks.emit(&r.app, code, info);
    }

    pub fn record(&self) -> IngestRecord {
        self.record.lock().expect("ingest record").clone()
    }

    fn update(&self, persist: bool, f: impl FnOnce(&mut IngestRecord)) {
        let snapshot = {
            let mut r = self.record.lock().expect("ingest record");
            f(&mut r);
            r.clone()
        };
        if persist {
            save(self.tasks_dir.as_ref(), &snapshot);
        }
    }

    fn set_state(&self, state: IngestState, error: Option<String>) {
        let before = self.record.lock().expect("ingest record").state;
        match state {
            IngestState::Running if before != IngestState::Running => self.report(701, 0, None),
            IngestState::Retrying => self.report(701, 2, None),
            IngestState::Failed => self.report(701, 1, None),
            _ => {}
        }
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

fn save(dir: Option<&PathBuf>, record: &IngestRecord) {
    let Some(dir) = dir else { return };
    let bytes = serde_json::to_vec_pretty(record).expect("a record serializes");
    if let Err(e) = write_atomic(&dir.join(format!("{}.json", record.id)), &bytes, 0o600) {
        tracing::warn!(ingest = %record.id, "cannot save the ingest task: {e}");
    }
}

/// Every ingest of the server.
pub struct Ingests {
    hooks: crate::webhook::Webhooks,
    tasks: DashMap<String, Arc<IngestTask>>,
    tasks_dir: Option<PathBuf>,
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
    pub fn new(tasks_dir: Option<PathBuf>, hooks: crate::webhook::Webhooks) -> Ingests {
        Ingests { tasks: DashMap::new(), tasks_dir, hooks }
    }

    pub fn get(&self, app: &AppId, id: &str) -> Option<Arc<IngestTask>> {
        self.tasks.get(id).map(|t| t.clone()).filter(|t| t.record.lock().expect("ingest record").app == *app)
    }

    pub fn list(&self, app: &AppId) -> Vec<IngestRecord> {
        self.tasks.iter().map(|t| t.record()).filter(|r| r.app == *app).collect()
    }

    /// Every ingest's state, for the metrics.
    pub fn all_states(&self) -> Vec<&'static str> {
        self.tasks.iter().map(|t| t.record().state.as_str()).collect()
    }

    /// Live (not stopped or failed) ingests of an app.
    pub fn live_count(&self, app: &AppId) -> usize {
        self.list(app).iter().filter(|r| !r.state.is_final()).count()
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
        save(self.tasks_dir.as_ref(), &record);
        self.spawn(record.clone(), rtc);
        record
    }

    fn spawn(&self, record: IngestRecord, rtc: RtcHandle) {
        let id = record.id.clone();
        let task = Arc::new(IngestTask::new(record, self.tasks_dir.clone(), self.hooks.clone()));
        self.tasks.insert(id.clone(), task.clone());
        let runtime = tokio::runtime::Handle::current();
        let spawned = std::thread::Builder::new().name(format!("ingest-{id}")).spawn(move || worker(task, rtc, runtime));
        if let Err(e) = spawned {
            tracing::error!(ingest = %id, "cannot start the ingest worker: {e}");
        }
    }

    /// `PATCH {"url"}`: the worker switches at the next packet; viewers keep their sessions and
    /// timestamps continue.
    pub fn switch(&self, task: &IngestTask, url: String) {
        task.update(true, |r| r.url = url.clone());
        *task.switch_to.lock().expect("switch") = Some(url);
    }

    /// `DELETE`: the worker stops within a packet (or its current blocking read is interrupted).
    pub fn stop(&self, task: &IngestTask) {
        task.interrupt.raise();
    }

    /// Stops every worker (server shut-down). Records keep their live state, so the next start
    /// resumes them.
    pub fn shutdown(&self) {
        for t in self.tasks.iter() {
            t.shutting_down.store(true, std::sync::atomic::Ordering::SeqCst);
            t.interrupt.raise();
        }
    }

    /// Resumes the tasks a previous run left live (`tasks/*.json` of kind "ingest").
    pub fn resume(&self, rtc: &RtcHandle) {
        let Some(dir) = &self.tasks_dir else { return };
        for v in crate::task_file::read_all(dir, "ingest") {
            let Ok(mut record) = serde_json::from_value::<IngestRecord>(v) else { continue };
            if record.state.is_final() {
                // Finished tasks stay readable (PRODUCT.md §10: retention).
                self.tasks.insert(
                    record.id.clone(),
                    Arc::new(IngestTask::new(record, self.tasks_dir.clone(), self.hooks.clone())),
                );
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

/// RTP state that outlives one opened source, so a reconnect or switch is seamless to viewers.
struct Output {
    publisher: u64,
    h264: H264Packetizer,
    video_seq: u64,
    audio_seq: u64,
    video_ssrc: u32,
    audio_ssrc: u32,
    /// The next source starts here (ms), one frame after the last one sent.
    next_base_ms: i64,
    bytes: u64,
    window: Instant,
}

fn worker(task: Arc<IngestTask>, rtc: RtcHandle, runtime: tokio::runtime::Handle) {
    let (spec, repeat) = {
        let r = task.record.lock().expect("ingest record");
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
        (spec, r.repeat)
    };
    let mut output: Option<Output> = None;
    let mut schedule = RetrySchedule::default();
    let mut plays_done = task.record().plays_done;
    // 702's Reason: `api` unless the source ended or failed.
    let (state, error, reason) = loop {
        if task.interrupt.is_raised() {
            break (IngestState::Stopped, None, "api");
        }
        let url = task.switch_to.lock().expect("switch").take().unwrap_or_else(|| task.record().url);
        let base_ms = output.as_ref().map(|o| o.next_base_ms).unwrap_or(0);
        let opened = crate::outbound::check_url_blocking(&url).map_err(SourceError::Open).and_then(|()| PullSource::open(&url, base_ms, task.interrupt.clone()));
        let failure = match opened {
            Err(SourceError::Stopped) => break (IngestState::Stopped, None, "api"),
            Err(e) => e.to_string(),
            Ok(mut source) => {
                if output.is_none() {
                    let Ok(publisher) = runtime.block_on(rtc.add_ingest(spec.clone())) else { break (IngestState::Failed, Some("the media engine stopped".into()), "source_failed") };
                    output = Some(Output {
                        publisher,
                        h264: H264Packetizer::new(MAX_RTP_PAYLOAD),
                        video_seq: 1,
                        audio_seq: 1,
                        video_ssrc: tessera_model::random::ssrc(),
                        audio_ssrc: tessera_model::random::ssrc(),
                        next_base_ms: 0,
                        bytes: 0,
                        window: Instant::now(),
                    });
                }
                let out = output.as_mut().expect("made above");
                schedule.on_success();
                let description = source.description.clone();
                task.update(false, |r| r.source = Some(description));
                task.set_state(IngestState::Running, None);
                match play(&task, &mut source, out, &rtc, &runtime) {
                    Outcome::Stopped => break (IngestState::Stopped, None, "api"),
                    Outcome::Switched => continue,
                    Outcome::Ended if !source.live => {
                        plays_done += 1;
                        task.update(true, |r| r.plays_done = plays_done);
                        if repeat >= 0 && plays_done >= repeat as u64 {
                            break (IngestState::Stopped, None, "source_ended");
                        }
                        continue;
                    }
                    Outcome::Ended => "the source ended".to_string(),
                    Outcome::Dropped(e) => e,
                }
            }
        };
        let Some(at) = schedule.on_failure(Instant::now()) else { break (IngestState::Failed, Some(failure), "source_failed") };
        tracing::warn!(ingest = %task.record().id, "ingest source failed: {failure}");
        task.set_state(IngestState::Retrying, Some(failure));
        if !sleep_until(&task.interrupt, at) {
            break (IngestState::Stopped, None, "api");
        }
    };
    if let Some(o) = output {
        let _ = runtime.block_on(rtc.remove_ingest(o.publisher));
    }
    if !task.shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
        task.set_state(state, error);
        task.report(702, 0, Some(reason));
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
fn play(task: &IngestTask, source: &mut PullSource, out: &mut Output, rtc: &RtcHandle, runtime: &tokio::runtime::Handle) -> Outcome {
    let mut media = Vec::new();
    // Wall clock ↔ media time anchor for pacing.
    let mut anchor: Option<(Instant, i64)> = None;
    loop {
        if task.interrupt.is_raised() {
            return Outcome::Stopped;
        }
        if task.switch_to.lock().expect("switch").is_some() {
            return Outcome::Switched;
        }
        match source.read(&mut media) {
            Ok(true) => {}
            Ok(false) => return Outcome::Ended,
            Err(SourceError::Stopped) => return Outcome::Stopped,
            Err(e) => return Outcome::Dropped(e.to_string()),
        }
        if rtc.take_keyframe_request(out.publisher) {
            // Only a transcoding source can make one; a passthrough source has its GOP cached.
            source.request_keyframe();
        }
        for m in media.drain(..) {
            let due = m.due_ms();
            let (wall, media_ms) = *anchor.get_or_insert((Instant::now(), due));
            let target = wall + Duration::from_millis((due - media_ms).max(0) as u64);
            let now = Instant::now();
            if target > now {
                if !sleep_until(&task.interrupt, target) {
                    return Outcome::Stopped;
                }
            } else if now - target > MAX_LAG {
                anchor = Some((now, due));
            }
            let packets = packetize(out, m);
            out.bytes += packets.iter().map(|p| p.payload.len() as u64 + 12).sum::<u64>();
            if !packets.is_empty() && runtime.block_on(rtc.push(out.publisher, packets)).is_err() {
                return Outcome::Stopped;
            }
            let elapsed = out.window.elapsed();
            if elapsed >= Duration::from_secs(1) {
                let kbps = out.bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1000.0;
                task.update(false, |r| r.bitrate_kbps = (kbps * 10.0).round() / 10.0);
                out.bytes = 0;
                out.window = Instant::now();
            }
        }
    }
}

fn packetize(out: &mut Output, media: SourceMedia) -> Vec<IngestPacket> {
    let mut packets = Vec::new();
    match media {
        SourceMedia::Video { ts_ms, data, keyframe, .. } => {
            out.next_base_ms = out.next_base_ms.max(ts_ms + 40);
            let ts90 = (ts_ms as u64).wrapping_mul(90) as u32;
            match data {
                VideoData::H264(nalus) => {
                    let units: Vec<&[u8]> = nalus.iter().map(|n| n.as_slice()).collect();
                    let mut payloads = Vec::new();
                    out.h264.push(&units, ts90, &mut payloads);
                    for p in payloads {
                        packets.push(IngestPacket { ssrc: out.video_ssrc, seq: out.video_seq, ts: p.ts, marker: p.marker, keyframe: p.keyframe, codec: Codec::H264, payload: Arc::from(p.payload) });
                        out.video_seq += 1;
                    }
                }
                VideoData::Vp8(frame) => {
                    let mut payloads = Vec::new();
                    tessera_media::vp8::packetize(&frame, MAX_RTP_PAYLOAD, &mut payloads);
                    let n = payloads.len();
                    for (i, p) in payloads.into_iter().enumerate() {
                        packets.push(IngestPacket { ssrc: out.video_ssrc, seq: out.video_seq, ts: ts90, marker: i + 1 == n, keyframe, codec: Codec::Vp8, payload: Arc::from(p) });
                        out.video_seq += 1;
                    }
                }
            }
        }
        SourceMedia::Audio { frames, due_ms } => {
            out.next_base_ms = out.next_base_ms.max(due_ms + 20);
            for f in frames {
                packets.push(IngestPacket { ssrc: out.audio_ssrc, seq: out.audio_seq, ts: f.ts, marker: false, keyframe: true, codec: Codec::Opus, payload: Arc::from(f.data) });
                out.audio_seq += 1;
            }
        }
    }
    packets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_come_at_0_1_and_3_seconds_after_the_failure_then_give_up() {
        let mut s = RetrySchedule::default();
        let t = Instant::now();
        assert_eq!(s.on_failure(t), Some(t));
        assert_eq!(s.on_failure(t + Duration::from_millis(200)), Some(t + Duration::from_secs(1)));
        assert_eq!(s.on_failure(t + Duration::from_millis(1200)), Some(t + Duration::from_secs(3)));
        assert_eq!(s.on_failure(t + Duration::from_millis(3100)), None);
        s.on_success();
        let later = t + Duration::from_secs(60);
        assert_eq!(s.on_failure(later), Some(later), "a success starts the schedule over");
    }

    #[test]
    fn states_serialize_as_the_spec_spells_them() {
        for (s, text) in [(IngestState::Starting, "STARTING"), (IngestState::Retrying, "RETRYING"), (IngestState::Failed, "FAILED")] {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{text}\""));
            assert_eq!(s.as_str(), text);
        }
        assert!(IngestState::Stopped.is_final() && !IngestState::Running.is_final());
    }
}
