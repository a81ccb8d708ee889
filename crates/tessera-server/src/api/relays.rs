//! `/v1/relays` (RECORDING.md §1): push one user's stream or a mix job's output to CDNs.

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
use tessera_media::StreamKind;
use tessera_model::{RoomId, UserId};
use tessera_tasks::relay::{check_urls, NewRelay, RelayMedia, RelayRecord, RelayState, SourceRef};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceReq {
    user: String,
    #[serde(default)]
    stream: Option<String>,
}

/// A URL to push to: its text, or `{"url", "enhanced_rtmp"}` for a CDN that takes Enhanced
/// RTMP (an HEVC or AV1 source then goes to it as it came, not as its H.264 re-encoding).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum UrlEntry {
    Plain(String),
    Options(UrlOptions),
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UrlOptions {
    url: String,
    #[serde(default)]
    enhanced_rtmp: bool,
}

/// The URLs, and those of them that take Enhanced RTMP.
fn split_urls(entries: Vec<UrlEntry>) -> (Vec<String>, Vec<String>) {
    let mut urls = Vec::with_capacity(entries.len());
    let mut enhanced = Vec::new();
    for e in entries {
        match e {
            UrlEntry::Plain(u) => urls.push(u),
            UrlEntry::Options(o) => {
                if o.enhanced_rtmp {
                    enhanced.push(o.url.clone());
                }
                urls.push(o.url);
            }
        }
    }
    (urls, enhanced)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRelay {
    room: String,
    source: SourceReq,
    #[serde(default)]
    media: Option<String>,
    urls: Vec<UrlEntry>,
    #[serde(default)]
    max_idle_time: Option<u64>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRelay {
    #[serde(default)]
    urls: Option<Vec<UrlEntry>>,
    #[serde(default)]
    source: Option<SourceReq>,
    #[serde(default)]
    media: Option<String>,
}

fn source(s: &SourceReq) -> ApiResult<SourceRef> {
    let user = UserId::parse(&s.user).map_err(|e| ApiError::invalid_parameter("source.user", e.reason))?;
    let stream = match s.stream.as_deref() {
        None => StreamKind::Main,
        Some(x) => StreamKind::parse(x).ok_or_else(|| ApiError::invalid_parameter("source.stream", "must be 'main' or 'aux'"))?,
    };
    Ok(SourceRef { user, stream })
}

pub fn view(r: &RelayRecord) -> Value {
    let mut urls = json!(r.urls);
    for u in urls.as_array_mut().into_iter().flatten() {
        let enhanced = u["url"].as_str().is_some_and(|x| r.enhanced_rtmp_urls.iter().any(|e| e == x));
        u["enhanced_rtmp"] = json!(enhanced);
    }
    json!({
        "id": r.id, "room": r.room, "source": r.source, "media": r.media, "state": r.state,
        "urls": urls, "created_at": r.created_at, "leave_code": r.leave_code, "owner": r.owner,
    })
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found("task_not_found", format!("the app has no relay with id '{id}'"))
}

fn url_in_use(url: &str) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "url_in_use", format!("another relay already pushes to {}", url.rsplit_once('/').map(|(a, _)| a).unwrap_or(url)))
}

#[utoipa::path(post, operation_id = "relays.start", path = "/v1/relays", tag = "relays", request_body = StartRelay, responses((status = 201, description = "The relay", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn start(State(state): State<AppState>, Extension(caller): Extension<Caller>, ApiJson(req): ApiJson<StartRelay>) -> ApiResult<(StatusCode, Json<Value>)> {
    let room = RoomId::parse(&req.room).map_err(|e| ApiError::invalid_parameter("room", e.reason))?;
    let source = source(&req.source)?;
    let media = match req.media.as_deref() {
        None => RelayMedia::AudioVideo,
        Some(m) => RelayMedia::parse(m).ok_or_else(|| ApiError::invalid_parameter("media", "must be audio_video, audio or video"))?,
    };
    let (urls, enhanced_rtmp_urls) = split_urls(req.urls);
    check_urls(&urls)?;
    let idle = req.max_idle_time.unwrap_or(30);
    if !(1..=86_400).contains(&idle) {
        return Err(ApiError::invalid_parameter("max_idle_time", "must be 1 to 86400 seconds"));
    }
    if let Some(u) = urls.iter().find(|u| state.tasks.relays.url_in_use(u, None)) {
        return Err(url_in_use(u));
    }
    // Each relay costs a worker thread and a connection per URL (issue 10, defect 15).
    let limit = state.config.limits.concurrent_relays_per_app as usize;
    if state.tasks.relays.live_count(&caller.app) >= limit {
        return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "limit_exceeded", format!("at most {limit} relays may run at once per app")).with_details(json!({"limit": limit})));
    }
    let record = state.tasks.relays.start(
        NewRelay { resumed: None, app: caller.app.clone(), room, source, media, urls, enhanced_rtmp_urls, max_idle: Duration::from_secs(idle), owner: None },
        state.rtc.clone(),
    )?;
    Ok((StatusCode::CREATED, Json(view(&record))))
}

#[utoipa::path(get, operation_id = "relays.list", path = "/v1/relays", tag = "relays", params(ListParams), responses((status = 200, description = "A page of relays", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>, ApiQuery(q): ApiQuery<ListQuery>) -> ApiResult<Json<Page<Value>>> {
    let items = state.tasks.relays.list(&caller.app).iter().map(view).collect();
    Ok(Json(q.page(items, |v| v["id"].as_str().unwrap_or(""))?))
}

#[utoipa::path(get, operation_id = "relays.get", path = "/v1/relays/{id}", tag = "relays", params(("id" = String, Path, description = "task id (16 lowercase hex)")), responses((status = 200, description = "The relay", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn get(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let task = state.tasks.relays.get(&caller.app, &id).ok_or_else(|| not_found(&id))?;
    Ok(Json(view(&task.record())))
}

#[utoipa::path(patch, operation_id = "relays.update", path = "/v1/relays/{id}", tag = "relays", params(("id" = String, Path, description = "task id (16 lowercase hex)")), request_body = UpdateRelay, responses((status = 200, description = "The relay", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn update(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>, ApiJson(req): ApiJson<UpdateRelay>) -> ApiResult<Json<Value>> {
    let task = state.tasks.relays.get(&caller.app, &id).ok_or_else(|| not_found(&id))?;
    let record = task.record();
    if record.state == RelayState::Stopped {
        return Err(ApiError::new(StatusCode::CONFLICT, "invalid_state", "the relay has stopped").with_details(json!({"state": "STOPPED"})));
    }
    if req.media.as_ref().is_some_and(|m| *m != record.media.as_str()) {
        return Err(ApiError::new(StatusCode::CONFLICT, "media_fixed", "a relay's media is fixed for its life"));
    }
    let new_source = req.source.as_ref().map(source).transpose()?;
    let new_urls = req.urls.map(split_urls);
    if let Some((urls, _)) = &new_urls {
        check_urls(urls)?;
        if let Some(u) = urls.iter().find(|u| state.tasks.relays.url_in_use(u, Some(&id))) {
            return Err(url_in_use(u));
        }
    }
    if let Some(s) = new_source {
        state.tasks.relays.set_source(&task, s).await;
    }
    if let Some((urls, enhanced)) = new_urls {
        state.tasks.relays.set_urls(&task, urls, enhanced).await;
    }
    Ok(Json(view(&task.record())))
}

/// Stops the relay: every URL goes 5 → 0; answers once that is done (at most ~3 s).
#[utoipa::path(delete, operation_id = "relays.stop", path = "/v1/relays/{id}", tag = "relays", params(("id" = String, Path, description = "task id (16 lowercase hex)")), responses((status = 200, description = "The relay, stopping", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn stop(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let task = state.tasks.relays.get(&caller.app, &id).ok_or_else(|| not_found(&id))?;
    state.tasks.relays.stop(&task);
    tessera_tasks::registry::wait_ended(&*task, Duration::from_secs(4)).await;
    Ok(Json(view(&task.record())))
}
