//! `/v1/recordings` (RECORDING.md §2–5) and `GET /files/{app}/{path}` (PRODUCT.md §11).

use super::auth::Caller;
use super::json::ApiJson;
#[allow(unused_imports)]
use super::openapi::ListParams;
use super::{ApiQuery, AppState, ListQuery, Page};
use crate::error::ErrorBody;
use crate::error::{ApiError, ApiResult};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;
use tessera_engine::mcu::Subscribe;
use tessera_media::StreamKind;
use tessera_model::{RoomId, UserId};
use tessera_tasks::recording::{Mode, RecordingSpec, RecordingState, RecordingTask};

#[derive(Debug, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscribeReq {
    #[serde(default)]
    video_allow: Option<Vec<String>>,
    #[serde(default)]
    video_deny: Vec<String>,
    #[serde(default)]
    audio_allow: Option<Vec<String>>,
    #[serde(default)]
    audio_deny: Vec<String>,
}

#[derive(Debug, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HlsReq {
    #[serde(default)]
    segment_s: Option<u32>,
}

#[derive(Debug, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Mp4Req {
    #[serde(default)]
    split_minutes: Option<u32>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRecording {
    room: String,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    streams: Option<Vec<String>>,
    #[serde(default)]
    track_layout: Option<String>,
    #[serde(default)]
    subscribe: Option<SubscribeReq>,
    #[serde(default)]
    hls: Option<HlsReq>,
    #[serde(default)]
    mp4: Option<Mp4Req>,
    #[serde(default)]
    max_idle_time: Option<u64>,
    #[serde(default)]
    storage: Option<Value>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    mix_job_id: Option<String>,
    #[serde(default)]
    mix: Option<Value>,
}

fn bad(field: &str, reason: &str) -> ApiError {
    ApiError::invalid_parameter(field, reason)
}

fn users(list: Option<Vec<String>>, field: &str) -> ApiResult<Option<Vec<String>>> {
    list.map(|l| l.into_iter().map(|u| UserId::parse(&u).map(|u| u.as_str().to_owned()).map_err(|e| bad(field, &e.reason))).collect()).transpose()
}

fn view(id: &str, task: &RecordingTask, data_dir: &std::path::Path) -> Value {
    let spec = task.spec.lock().expect("spec").clone();
    let (final_dir, _, url_base) = spec.places(data_dir);
    let playlists = tessera_tasks::recording::playlists(&final_dir, &url_base);
    let st = task.status.lock().expect("status").clone();
    let (mode, mix_user, mix_job_id) = match &spec.mode {
        Mode::Single { .. } => ("single", None, None),
        Mode::Mixed { mix_user, owned_job } => ("mixed", Some(mix_user.clone()), owned_job.clone()),
    };
    json!({
        "id": id, "room": spec.room, "mode": mode, "content": spec.content, "format": spec.format, "state": st.state,
        "created_at": task.created_at, "started_at": st.started_at, "stopped_at": st.stopped_at, "paused_ms": st.paused_ms,
        "leave_code": st.leave_code, "error": st.error, "files": st.files, "segment_s": spec.segment_s, "mix_user": mix_user,
        "record_user": format!("rec_{id}"), "mix_job_id": mix_job_id, "skipped_segments": st.skipped_segments,
        "playlists": playlists,
    })
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found("task_not_found", format!("the app has no recording with id '{id}'"))
}

#[utoipa::path(post, operation_id = "recordings.start", path = "/v1/recordings", tag = "recordings", request_body = StartRecording, responses((status = 201, description = "The recording", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn start(State(state): State<AppState>, Extension(caller): Extension<Caller>, ApiJson(req): ApiJson<StartRecording>) -> ApiResult<(StatusCode, Json<Value>)> {
    let room = RoomId::parse(&req.room).map_err(|e| bad("room", &e.reason))?;
    let req_mix = req.mix.clone();
    let content = req.content.unwrap_or_else(|| "audio_video".into());
    if !matches!(content.as_str(), "audio_video" | "audio" | "video") {
        return Err(bad("content", "must be audio_video, audio or video"));
    }
    let format = req.format.unwrap_or_else(|| "hls".into());
    match format.as_str() {
        "hls" | "hls+mp4" | "mp4" => {}
        "hls+aac" | "aac" if content == "audio" => {}
        "hls+aac" | "aac" => return Err(bad("format", "the aac formats need content 'audio'")),
        _ => return Err(bad("format", "must be hls, hls+mp4, mp4, hls+aac or aac")),
    }
    let segment_s = req.hls.and_then(|h| h.segment_s).unwrap_or(6);
    if !(1..=60).contains(&segment_s) {
        return Err(bad("hls.segment_s", "must be 1 to 60"));
    }
    let split_minutes = req.mp4.and_then(|m| m.split_minutes).unwrap_or(1440);
    if !(1..=1440).contains(&split_minutes) {
        return Err(bad("mp4.split_minutes", "must be 1 to 1440"));
    }
    let idle = req.max_idle_time.unwrap_or(30);
    if !(1..=86_400).contains(&idle) {
        return Err(bad("max_idle_time", "must be 1 to 86400 seconds"));
    }
    let storage = match req.storage {
        None | Some(Value::Null) => {
            let apps = state.store.snapshot();
            apps.get(&caller.app).map(|a| a.default_storage.clone()).unwrap_or_default()
        }
        Some(Value::Object(o)) if o.contains_key("local") && o.contains_key("s3") => {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "storage_conflict", "give either 'local' or 's3', not both"));
        }
        Some(v) => {
            let choice: tessera_model::StorageRef =
                super::json::from_value(v).map_err(|_| bad("storage", "must be 'local', a configured storage's name, or {\"local\": {}} or {\"s3\": {...}}"))?;
            let apps = state.store.snapshot();
            let app = apps.get(&caller.app).ok_or_else(|| ApiError::internal("the key's app vanished"))?;
            crate::storage::accept(choice, "storage", &state.config, app)?
        }
    };
    let prefix = req.prefix.unwrap_or_default();
    if prefix.len() > 256 || prefix.starts_with('/') || prefix.contains("..") || !prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"_/-".contains(&b)) {
        return Err(bad("prefix", "must match [A-Za-z0-9_/-]{0,256}, with no leading '/' and no '..'"));
    }
    let sub = req.subscribe.unwrap_or_default();
    let subscribe = Subscribe {
        video_allow: users(sub.video_allow, "subscribe.video_allow")?,
        video_deny: users(Some(sub.video_deny), "subscribe.video_deny")?.unwrap_or_default(),
        audio_allow: users(sub.audio_allow, "subscribe.audio_allow")?,
        audio_deny: users(Some(sub.audio_deny), "subscribe.audio_deny")?.unwrap_or_default(),
    };
    let mode = match req.mode.as_deref().unwrap_or("single") {
        "single" => {
            if req.mix_job_id.is_some() || req.mix.is_some() {
                return Err(bad("mode", "mix_job_id and mix belong to mode 'mixed'"));
            }
            let streams = match req.streams {
                None => vec![StreamKind::Main, StreamKind::Aux],
                Some(s) if !s.is_empty() => s.iter().map(|x| StreamKind::parse(x).ok_or_else(|| bad("streams", "each must be 'main' or 'aux'"))).collect::<ApiResult<_>>()?,
                Some(_) => return Err(bad("streams", "name at least one stream")),
            };
            let split = match req.track_layout.as_deref().unwrap_or("split") {
                "split" => true,
                "muxed" => false,
                _ => return Err(bad("track_layout", "must be 'split' or 'muxed'")),
            };
            Mode::Single { streams, split }
        }
        "mixed" => match (req.mix_job_id, req.mix.clone()) {
            (Some(job), None) => {
                let user = UserId::parse(&format!("mix_{job}")).map_err(|e| bad("mix_job_id", &e.reason))?;
                if !state.tasks.mix_jobs.exists(&caller.app, &job) {
                    return Err(ApiError::not_found("task_not_found", format!("the app has no mix job with id '{job}'")));
                }
                Mode::Mixed { mix_user: user, owned_job: None }
            }
            (None, Some(mix)) => {
                let m = mix.as_object().ok_or_else(|| bad("mix", "must be an object"))?;
                if let Some(k) = m.keys().find(|k| !["layout", "subscribe", "audio", "encode"].contains(&k.as_str())) {
                    return Err(bad(&format!("mix.{k}"), "unknown field"));
                }
                // The job is started below, once everything else is checked.
                Mode::Mixed { mix_user: UserId::parse("mix_pending").expect("valid"), owned_job: Some(String::new()) }
            }
            _ => return Err(bad("mix_job_id", "mode 'mixed' needs exactly one of mix_job_id or mix")),
        },
        _ => return Err(bad("mode", "must be 'single' or 'mixed'")),
    };
    let limit = state.config.limits.concurrent_recordings_per_app as usize;
    if state.tasks.recordings.live_count(&caller.app) >= limit {
        return Err(
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "limit_exceeded", format!("at most {limit} recordings may run at once per app")).with_details(json!({"limit": limit}))
        );
    }
    let mode = match mode {
        Mode::Mixed { owned_job: Some(_), .. } => {
            let mut body = req_mix.unwrap_or_default();
            body["room"] = json!(room);
            let (job_id, _) = tessera_tasks::mix_jobs::start_job(&state.tasks, &caller.app, body, None).await?;
            Mode::Mixed { mix_user: UserId::parse(&format!("mix_{job_id}")).map_err(|e| ApiError::internal(e.reason))?, owned_job: Some(job_id) }
        }
        other => other,
    };
    let id = tessera_model::TaskId::generate().as_str().to_owned();
    let spec = RecordingSpec {
        id: id.clone(),
        app: caller.app.clone(),
        room,
        mode,
        content,
        format,
        subscribe,
        segment_s,
        split_minutes,
        max_idle: Duration::from_secs(idle),
        prefix,
        storage,
    };
    let task = state.tasks.recordings.start(spec, state.config.data_dir.clone(), state.rtc.clone())?;
    Ok((StatusCode::CREATED, Json(view(&id, &task, &state.config.data_dir))))
}

#[utoipa::path(get, operation_id = "recordings.list", path = "/v1/recordings", tag = "recordings", params(ListParams), responses((status = 200, description = "A page of recordings", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>, ApiQuery(q): ApiQuery<ListQuery>) -> ApiResult<Json<Page<Value>>> {
    let items = state.tasks.recordings.list(&caller.app).iter().map(|(id, t)| view(id, t, &state.config.data_dir)).collect();
    Ok(Json(q.page(items, |v| v["id"].as_str().unwrap_or(""))?))
}

#[utoipa::path(get, operation_id = "recordings.get", path = "/v1/recordings/{id}", tag = "recordings", params(("id" = String, Path, description = "task id (16 lowercase hex)")), responses((status = 200, description = "The recording", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn get(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let task = state.tasks.recordings.get(&caller.app, &id).ok_or_else(|| not_found(&id))?;
    Ok(Json(view(&id, &task, &state.config.data_dir)))
}

#[utoipa::path(get, operation_id = "recordings.result", path = "/v1/recordings/{id}/result", tag = "recordings", params(("id" = String, Path, description = "task id (16 lowercase hex)")), responses((status = 200, description = "The result JSON (RECORDING.md §5)", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn result(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let task = state.tasks.recordings.get(&caller.app, &id).ok_or_else(|| not_found(&id))?;
    let st = task.status.lock().expect("status").clone();
    if st.state != RecordingState::Finished {
        return Err(
            ApiError::new(StatusCode::CONFLICT, "invalid_state", format!("the recording is {}; the result comes at FINISHED", st.state)).with_details(json!({"state": st.state}))
        );
    }
    Ok(Json(st.result.unwrap_or(Value::Null)))
}

fn invalid_state(state: RecordingState) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "invalid_state", format!("the recording is {state}")).with_details(json!({"state": state}))
}

async fn wait_for(task: &RecordingTask, states: &[RecordingState]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !states.contains(&task.state()) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[utoipa::path(post, operation_id = "recordings.pause", path = "/v1/recordings/{id}/pause", tag = "recordings", params(("id" = String, Path, description = "task id (16 lowercase hex)")), responses((status = 200, description = "The recording, PAUSED", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn pause(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let task = state.tasks.recordings.get(&caller.app, &id).ok_or_else(|| not_found(&id))?;
    let current = task.status.lock().expect("status").state;
    if current != RecordingState::Recording {
        return Err(invalid_state(current));
    }
    task.pause();
    wait_for(&task, &[RecordingState::Paused]).await;
    Ok(Json(view(&id, &task, &state.config.data_dir)))
}

#[utoipa::path(post, operation_id = "recordings.resume", path = "/v1/recordings/{id}/resume", tag = "recordings", params(("id" = String, Path, description = "task id (16 lowercase hex)")), responses((status = 200, description = "The recording, RECORDING", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn resume(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let task = state.tasks.recordings.get(&caller.app, &id).ok_or_else(|| not_found(&id))?;
    let current = task.status.lock().expect("status").state;
    if current != RecordingState::Paused {
        return Err(invalid_state(current));
    }
    task.resume();
    wait_for(&task, &[RecordingState::Recording]).await;
    Ok(Json(view(&id, &task, &state.config.data_dir)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRecording {
    #[serde(default)]
    subscribe: Option<SubscribeReq>,
    #[serde(default)]
    streams: Option<Vec<String>>,
    /// For an owned mix job: `layout` and/or `audio`, each replacing its section.
    #[serde(default)]
    mix: Option<Value>,
}

#[utoipa::path(patch, operation_id = "recordings.update", path = "/v1/recordings/{id}", tag = "recordings", params(("id" = String, Path, description = "task id (16 lowercase hex)")), request_body = UpdateRecording, responses((status = 200, description = "The recording", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn update(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>, ApiJson(req): ApiJson<UpdateRecording>) -> ApiResult<Json<Value>> {
    let task = state.tasks.recordings.get(&caller.app, &id).ok_or_else(|| not_found(&id))?;
    let current = task.status.lock().expect("status").state;
    if current.is_final() {
        return Err(invalid_state(current));
    }
    if let Some(mix) = req.mix {
        let owned = match &task.spec.lock().expect("spec").mode {
            Mode::Mixed { owned_job: Some(job), .. } => job.clone(),
            _ => return Err(bad("mix", "only a recording that owns its mix job can change it")),
        };
        let m = mix.as_object().ok_or_else(|| bad("mix", "must be an object"))?;
        if let Some(k) = m.keys().find(|k| !["layout", "audio"].contains(&k.as_str())) {
            return Err(bad(&format!("mix.{k}"), "only layout and audio can change"));
        }
        tessera_tasks::mix_jobs::apply_patch(&state.tasks, &caller.app, &owned, mix).await?;
    }
    let mut spec = task.spec.lock().expect("spec");
    if let Some(sub) = req.subscribe {
        spec.subscribe = Subscribe {
            video_allow: users(sub.video_allow, "subscribe.video_allow")?,
            video_deny: users(Some(sub.video_deny), "subscribe.video_deny")?.unwrap_or_default(),
            audio_allow: users(sub.audio_allow, "subscribe.audio_allow")?,
            audio_deny: users(Some(sub.audio_deny), "subscribe.audio_deny")?.unwrap_or_default(),
        };
    }
    if let Some(streams) = req.streams {
        let Mode::Single { split, .. } = spec.mode else { return Err(bad("streams", "only single-stream recordings choose streams")) };
        let streams = streams.iter().map(|x| StreamKind::parse(x).ok_or_else(|| bad("streams", "each must be 'main' or 'aux'"))).collect::<ApiResult<Vec<_>>>()?;
        spec.mode = Mode::Single { streams, split };
    }
    drop(spec);
    // The worker records the new selection from its next packet on.
    task.selection_changed();
    Ok(Json(view(&id, &task, &state.config.data_dir)))
}

#[utoipa::path(delete, operation_id = "recordings.stop", path = "/v1/recordings/{id}", tag = "recordings", params(("id" = String, Path, description = "task id (16 lowercase hex)")), responses((status = 200, description = "The recording, stopping", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn stop(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let task = state.tasks.recordings.get(&caller.app, &id).ok_or_else(|| not_found(&id))?;
    task.stop();
    // An owned mix job stops with its recording (RECORDING.md §2).
    let owned = match &task.spec.lock().expect("spec").mode {
        Mode::Mixed { owned_job: Some(job), .. } => Some(job.clone()),
        _ => None,
    };
    if let Some(job) = owned {
        state.tasks.mix_jobs.stop_owned(&caller.app, &job);
    }
    wait_for(&task, &[RecordingState::Stopped, RecordingState::Finished]).await;
    Ok(Json(view(&id, &task, &state.config.data_dir)))
}
