//! Mix jobs (LAYOUTS.md §1): the server's registry of MCU jobs, their task files and events,
//! and the mixed relay a job owns. A request is checked completely (`request`) and turned into
//! a `MixSpec` before anything starts, so no job is left half-started; the job itself is the
//! engine's (`tessera_engine::mcu`).

mod request;

use crate::lock;
use crate::registry::{Registry, Task, TaskFiles};
use crate::Tasks;
use crate::{ErrorKind, TaskError, TaskResult};
use request::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tessera_engine::mcu::{AudioMode, MixHandle, MixSpec, MixState};
use tessera_engine::RoomKey;
use tessera_model::events::TaskEvent;
use tessera_model::{AppId, RoomId, UserId};

pub use request::parse_encode_template;

/// Every mix job of the server.
pub struct MixJobs {
    jobs: Registry<MixJob>,
}

pub struct MixJob {
    pub app: AppId,
    /// Set at server shut-down: the job ends without recording STOPPED, so it resumes.
    shutting_down: Arc<std::sync::atomic::AtomicBool>,
    created_at: i64,
    /// The normalized request (defaults filled), replaced section by section by PATCH.
    pub request: Mutex<Value>,
    /// Images that could not be fetched or decoded (the job runs on without them).
    image_errors: Mutex<Vec<Value>>,
    pub handle: Arc<MixHandle>,
}

impl Task for MixJob {
    const KIND: &'static str = "mix_job";
    fn app(&self) -> AppId {
        self.app.clone()
    }
    fn is_live(&self) -> bool {
        self.handle.status().state != MixState::Stopped
    }
}

impl MixJobs {
    /// Mix jobs are always saved (`tasks_dir`) and resumed at the next start.
    pub fn new(tasks_dir: PathBuf) -> MixJobs {
        MixJobs { jobs: Registry::new(Some(tasks_dir)) }
    }

    /// Stops a job because its owning recording stopped (LeaveCode 105).
    pub fn stop_owned(&self, app: &AppId, id: &str) {
        if let Some(j) = self.jobs.get(app, id) {
            j.handle.stop_with(105);
        }
    }

    pub fn exists(&self, app: &AppId, id: &str) -> bool {
        self.jobs.get(app, id).is_some()
    }

    /// The app's jobs with their ids.
    pub fn list(&self, app: &AppId) -> Vec<(String, Arc<MixJob>)> {
        self.jobs.of_app(app)
    }

    /// Every job, in every app.
    pub fn all(&self) -> Vec<Arc<MixJob>> {
        self.jobs.all()
    }

    /// Jobs running, in every app (the server-wide cap counts these).
    pub fn running(&self) -> usize {
        self.jobs.live_count(None)
    }

    /// Stops every job (server shut-down).
    pub fn shutdown(&self) {
        for j in self.jobs.all() {
            j.shutting_down.store(true, std::sync::atomic::Ordering::SeqCst);
            j.handle.stop();
        }
    }
}

pub fn view(id: &str, job: &MixJob) -> Value {
    let mut v = lock(&job.request).clone();
    let status = job.handle.status();
    let spec = job.handle.spec();
    v["id"] = json!(id);
    v["user"] = json!(spec.user);
    v["state"] = json!(status.state.as_str());
    v["created_at"] = json!(job.created_at);
    v["whep_url"] = json!(format!("/whep/{}/{}/main", spec.room.room, spec.user));
    v["inputs"] = status
        .inputs
        .iter()
        .map(|i| {
            json!({"user": i.key.user, "stream": i.key.stream, "join_order": i.join_order,
                "tile": i.tile.map(|t| json!({"x": t.x, "y": t.y, "width": t.width, "height": t.height, "z_order": t.z_order, "fill_mode": t.fill_mode.as_str()})),
                "has_video": i.has_video, "has_audio": i.has_audio, "voice_selected": i.voice_selected,
                "decoded": i.decoded.map(|(w, h)| json!({"width": w, "height": h}))})
        })
        .collect();
    let s = &status.stats;
    v["stats"] = json!({"fps": s.fps, "decode_ms_p50": s.decode_ms_p50, "compose_ms_p50": s.compose_ms_p50, "encode_ms_p50": s.encode_ms_p50, "dropped_frames": s.dropped_frames, "frames": s.frames, "shared_pictures": s.shared_pictures, "cpu_cores": s.cpu_cores});
    v["stopped_at"] = json!(status.stopped_at);
    v["leave_code"] = json!(status.leave_code);
    v["error"] = json!(status.error);
    v["image_errors"] = json!(*lock(&job.image_errors));
    v
}

/// Saves the job's request and state to `tasks/<id>.json` (RECORDING.md §8).
fn save(files: &TaskFiles, app: &AppId, id: &str, created_at: i64, request: &Value, state: MixState) {
    let file = MixJobFile { kind: MixJob::KIND.into(), id: id.into(), app: app.clone(), created_at, request: request.clone(), state: state.as_str().into() };
    let _ = files.save(id, &file);
}

/// A mix job's task file: its normalized request (checked again by `start_job` on resume).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct MixJobFile {
    kind: String,
    id: String,
    app: AppId,
    #[serde(default)]
    created_at: i64,
    request: Value,
    state: String,
}

/// Restarts the jobs a previous run left running, with the same ids and `mix_<id>` users.
pub async fn resume(tasks: &Tasks) {
    resume_from(tasks, tasks.mix_jobs.jobs.files().saved()).await
}

/// `resume` of these records (a cluster node taking over another's tasks).
pub async fn resume_from(tasks: &Tasks, records: Vec<Value>) {
    for v in records {
        let f = match serde_json::from_value::<MixJobFile>(v) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("mix job task file skipped: {e}");
                continue;
            }
        };
        if f.state == MixState::Stopped.as_str() {
            continue;
        }
        let (id, app) = (f.id.as_str(), &f.app);
        let mut body = f.request.clone();
        // The owned relay is made again from its URLs.
        body["outputs"] = json!({"rtmp_urls": body["outputs"]["rtmp_urls"].clone()});
        if let Some(e) = body["encode"].as_object_mut() {
            e.remove("effective");
        }
        match start_job(tasks, app, body, Some((id.to_string(), f.created_at))).await {
            Ok(_) => tracing::info!(job = %id, "mix job resumed"),
            Err(e) => tracing::warn!(job = %id, "mix job not resumed: {}", e.message),
        }
    }
}

/// Checks a request and starts the job (and its relay); `resumed` keeps the id of a job from
/// before a restart.
/// The checks `start_job` makes of a body before anything starts (the `json_bodies` fuzz target).
pub fn check_body(body: &Value) -> TaskResult<()> {
    let top = body.as_object().ok_or_else(|| TaskError::invalid_json("the body must be a JSON object"))?;
    if let Some(room) = top.get("room").and_then(|r| r.as_str()) {
        RoomId::parse(room).map_err(|e| field("room", e.reason))?;
    }
    let (encode, _) = parse_encode(obj(body, "encode")?)?;
    parse_layout(obj(body, "layout")?, encode.width, encode.height)?;
    parse_subscribe(obj(body, "subscribe")?)?;
    parse_audio(obj(body, "audio")?)?;
    max_idle(body)?;
    check_outputs(body)?;
    Ok(())
}

pub async fn start_job(tasks: &Tasks, app: &AppId, body: Value, resumed: Option<(String, i64)>) -> TaskResult<(String, Arc<MixJob>)> {
    let caller_app = app;
    if !body.is_object() {
        return Err(TaskError::invalid_json("the body must be a JSON object"));
    }
    let top = body.as_object().expect("checked");
    known(top, "body", &["room", "layout", "subscribe", "audio", "encode", "video", "max_idle_time", "outputs"]).map_err(|_| {
        let k = top.keys().find(|k| !["room", "layout", "subscribe", "audio", "encode", "video", "max_idle_time", "outputs"].contains(&k.as_str())).cloned().unwrap_or_default();
        field(&k, "unknown field")
    })?;
    let room = body.get("room").and_then(|r| r.as_str()).ok_or_else(|| field("room", "is required"))?;
    let room = RoomId::parse(room).map_err(|e| field("room", e.reason))?;
    let (encode, encode_json) = parse_encode(obj(&body, "encode")?)?;
    let (layout, background, include_aux, layout_json, image_refs) = parse_layout(obj(&body, "layout")?, encode.width, encode.height)?;
    let (subscribe, subscribe_json) = parse_subscribe(obj(&body, "subscribe")?)?;
    let (audio, max_voices, audio_json) = parse_audio(obj(&body, "audio")?)?;
    let video = match body.get("video") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(field("video", "must be true or false")),
    };
    if !video && audio == AudioMode::None {
        return Err(field("audio.mode", "an audio-only job (video: false) needs audio"));
    }
    let idle = max_idle(&body)?;
    let rtmp_urls = check_outputs(&body)?;
    if let Some(u) = rtmp_urls.iter().find(|u| tasks.relays.url_in_use(u, None)) {
        return Err(TaskError::new(ErrorKind::Conflict, "url_in_use", format!("another relay already pushes to {}", u.rsplit_once('/').map(|(a, _)| a).unwrap_or(u))));
    }
    let limit = tasks.max_mix_jobs.map(|n| n as usize).unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    if tasks.mix_jobs.running() >= limit {
        return Err(TaskError::new(ErrorKind::Unavailable, "capacity_exceeded", format!("this server runs at most {limit} mix jobs at once")).with_details(json!({"limit": limit})));
    }
    let (images, image_errors) = load_images(&image_refs).await;
    let (id, created_at) = resumed.unwrap_or_else(|| (tessera_model::TaskId::generate().as_str().to_owned(), crate::now_ms()));
    let user = UserId::parse(&format!("mix_{id}")).map_err(|e| TaskError::internal(e.reason))?;
    let spec = MixSpec {
        id: id.clone(),
        room: RoomKey { app: caller_app.clone(), room: room.clone() },
        user,
        layout,
        images,
        background,
        include_aux,
        subscribe,
        audio,
        max_voices,
        encode,
        video,
        max_idle: Duration::from_secs(idle),
    };
    let mix_user = spec.user.clone();
    let relay_media = if !video {
        crate::relay::RelayMedia::Audio
    } else if spec.audio == AudioMode::None {
        crate::relay::RelayMedia::Video
    } else {
        crate::relay::RelayMedia::AudioVideo
    };
    let files = tasks.mix_jobs.jobs.files().clone();
    let saved_request: Arc<Mutex<Value>> = Arc::new(Mutex::new(Value::Null));
    let shutting_down: Arc<std::sync::atomic::AtomicBool> = Arc::default();
    let on_stop: Box<dyn FnOnce(u32) + Send> = {
        let (files, app, id, room, request, shutting, hooks) =
            (files.clone(), caller_app.clone(), id.clone(), room.clone(), saved_request.clone(), shutting_down.clone(), tasks.events.clone());
        Box::new(move |code| {
            // A job ended by the server's shut-down resumes with the next start: not a stop.
            if !shutting.load(std::sync::atomic::Ordering::SeqCst) {
                save(&files, &app, &id, created_at, &lock(&request), MixState::Stopped);
                mix_event(&hooks, &app, &room, &id, TaskEvent::MixStopped { leave_code: code });
            }
        })
    };
    let handle = match MixHandle::start(spec, tasks.rtc.clone(), on_stop) {
        Ok(h) => h,
        Err(e) => {
            mix_event(&tasks.events, caller_app, &room, &id, TaskEvent::MixStarted { status: 1, error_msg: e.to_string() });
            return Err(TaskError::internal(format!("cannot start the mix job: {e}")));
        }
    };
    mix_event(&tasks.events, caller_app, &room, &id, TaskEvent::MixStarted { status: 0, error_msg: String::new() });
    report_image_errors(tasks, caller_app, &room, &id, &image_errors);
    // Mixed relay: the job's own relay of `mix_<id>`, stopped with it (RECORDING.md §1).
    let relay_id = if rtmp_urls.is_empty() {
        None
    } else {
        let new = crate::relay::NewRelay {
            resumed: None,
            app: caller_app.clone(),
            room: room.clone(),
            source: crate::relay::SourceRef { user: mix_user, stream: tessera_media::StreamKind::Main },
            media: relay_media,
            urls: rtmp_urls.clone(),
            // A mix's output is H.264: every URL takes the same.
            enhanced_rtmp_urls: Vec::new(),
            max_idle: Duration::from_secs(idle + 5),
            owner: Some(id.clone()),
        };
        match tasks.relays.start(new, tasks.rtc.clone()) {
            Ok(r) => Some(r.id),
            Err(e) => {
                handle.stop();
                return Err(TaskError::internal(format!("cannot start the mix job's relay: {e}")));
            }
        }
    };
    let outputs = json!({"rtmp_urls": rtmp_urls, "recording": null, "relay_id": relay_id, "recording_id": null});
    let request = json!({"room": room, "layout": layout_json, "subscribe": subscribe_json, "audio": audio_json, "encode": encode_json, "video": video, "max_idle_time": idle, "outputs": outputs});
    *lock(&saved_request) = request.clone();
    save(&files, caller_app, &id, created_at, &request, MixState::Running);
    let job = Arc::new(MixJob { app: caller_app.clone(), shutting_down, created_at, request: Mutex::new(request), image_errors: Mutex::new(image_errors), handle });
    tasks.mix_jobs.jobs.insert(&id, job.clone());
    tracing::info!(job = %id, room = %room, "mix job started");
    Ok((id, job))
}

/// `DELETE`: the job stops, and its own relay with it.
pub fn stop(tasks: &Tasks, job: &MixJob) {
    job.handle.stop();
    let relay_id = lock(&job.request)["outputs"]["relay_id"].as_str().map(str::to_owned);
    if let Some(relay) = relay_id.and_then(|r| tasks.relays.get(&job.app, &r)) {
        tasks.relays.stop(&relay);
    }
}

/// A mix job's event: its room, user `mix_<id>` and task id.
fn mix_event(events: &crate::Events, app: &AppId, room: &RoomId, id: &str, event: TaskEvent) {
    events.task(app, room, format!("mix_{id}"), id, event);
}

/// Event 309 for each layout image that could not be loaded (EVENTS.md §5, group 3).
fn report_image_errors(tasks: &Tasks, app: &AppId, room: &RoomId, id: &str, errors: &[Value]) {
    for e in errors {
        let url = e["url"].as_str().unwrap_or_default().to_string();
        mix_event(&tasks.events, app, room, id, TaskEvent::ImageError { url });
    }
}

pub fn find(tasks: &Tasks, app: &AppId, id: &str) -> TaskResult<Arc<MixJob>> {
    tasks.mix_jobs.jobs.get(app, id).ok_or_else(|| TaskError::not_found("task_not_found", format!("the app has no mix job with id '{id}'")))
}

/// A PATCH of a job (its own route, or a recording's owned `mix`).
pub async fn apply_patch(tasks: &Tasks, app: &AppId, id: &str, body: Value) -> TaskResult<Value> {
    let (tasks, id) = (tasks.clone(), id.to_owned());
    let job = find(&tasks, app, &id)?;
    let top = body.as_object().ok_or_else(|| TaskError::invalid_json("the body must be a JSON object"))?;
    if let Some(k) = top.keys().find(|k| !["layout", "subscribe", "audio", "encode", "video", "outputs"].contains(&k.as_str())) {
        return Err(field(k, "cannot be changed by PATCH"));
    }
    if job.handle.status().state == MixState::Stopped {
        return Err(TaskError::new(ErrorKind::Conflict, "invalid_state", "the mix job has stopped").with_details(json!({"state": MixState::Stopped.as_str()})));
    }
    let spec = job.handle.spec();
    if top.contains_key("encode") {
        return Err(TaskError::new(ErrorKind::Conflict, "encode_immutable", "a running job's encoding cannot change"));
    }
    if top.get("video").is_some_and(|v| v.as_bool() != Some(spec.video)) {
        return Err(TaskError::new(ErrorKind::Conflict, "media_fixed", "a running job cannot switch video on or off"));
    }
    let layout = match obj(&body, "layout")? {
        Some(m) => Some(parse_layout(Some(m), spec.encode.width, spec.encode.height)?),
        None => None,
    };
    let images = match &layout {
        Some((.., refs)) => Some(load_images(refs).await),
        None => None,
    };
    let subscribe = if top.contains_key("subscribe") { Some(parse_subscribe(obj(&body, "subscribe")?)?) } else { None };
    let audio = if top.contains_key("audio") { Some(parse_audio(obj(&body, "audio")?)?) } else { None };
    if let Some((mode, _, _)) = &audio {
        if (*mode == AudioMode::None) != (spec.audio == AudioMode::None) {
            return Err(TaskError::new(ErrorKind::Conflict, "media_fixed", "a running job cannot switch its audio to or from 'none'"));
        }
    }
    let new_urls = if top.contains_key("outputs") { Some(check_outputs(&body)?) } else { None };
    if let Some(urls) = &new_urls {
        let relay_id = lock(&job.request)["outputs"]["relay_id"].as_str().map(str::to_owned);
        match (relay_id.and_then(|r| tasks.relays.get(app, &r)), urls.is_empty()) {
            (Some(relay), false) => {
                if let Some(u) = urls.iter().find(|u| tasks.relays.url_in_use(u, Some(&relay.record().id))) {
                    return Err(TaskError::new(ErrorKind::Conflict, "url_in_use", format!("another relay already pushes to {u}")));
                }
                tasks.relays.set_urls(&relay, urls.clone(), Vec::new()).await;
            }
            (Some(relay), true) => tasks.relays.stop(&relay),
            (None, false) => return Err(field("outputs.rtmp_urls", "add RTMP outputs when starting the job")),
            (None, true) => {}
        }
        lock(&job.request)["outputs"]["rtmp_urls"] = json!(urls);
    }
    let mut request = lock(&job.request);
    job.handle.update(|s| {
        if let Some((l, bg, aux, j, _)) = layout {
            s.layout = l;
            s.background = bg;
            s.include_aux = aux;
            request["layout"] = j;
        }
        if let Some((images, errors)) = images {
            s.images = images;
            report_image_errors(&tasks, app, &s.room.room, &id, &errors);
            *lock(&job.image_errors) = errors;
        }
        if let Some((sub, j)) = subscribe {
            s.subscribe = sub;
            request["subscribe"] = j;
        }
        if let Some((mode, voices, j)) = audio {
            s.audio = mode;
            s.max_voices = voices;
            request["audio"] = j;
        }
    });
    save(tasks.mix_jobs.jobs.files(), app, &id, job.created_at, &request, MixState::Running);
    drop(request);
    Ok(view(&id, &job))
}
