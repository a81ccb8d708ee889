//! `/v1/ingests`: pull an online stream into a room as a virtual anchor (PRODUCT.md §6.4, §10.2).

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
use tessera_engine::RoomKey;
use tessera_media::StreamKind;
use tessera_model::{RoomId, UserId};
use tessera_tasks::ingest::{IngestRecord, NewIngest};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartIngest {
    room: String,
    user: String,
    #[serde(default)]
    stream: Option<String>,
    url: String,
    #[serde(default)]
    repeat: Option<i64>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateIngest {
    url: String,
}

const MAX_URL_LEN: usize = 2048;

/// The spec's sources: http(s) (files, HTTP-FLV, HLS) and rtmp. Nothing local.
fn check_url(url: &str) -> ApiResult<()> {
    if url.len() > MAX_URL_LEN {
        return Err(ApiError::invalid_parameter("url", format!("must be at most {MAX_URL_LEN} characters")));
    }
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("http" | "https" | "rtmp" | "rtmps") if url.split_once("://").is_some_and(|(_, rest)| !rest.is_empty()) => Ok(()),
        _ => Err(ApiError::invalid_parameter("url", "must be an http://, https:// or rtmp:// URL")),
    }
}

fn view(r: &IngestRecord) -> Value {
    json!({
        "id": r.id,
        "room": r.room,
        "user": r.user,
        "stream": r.stream,
        "url": r.url,
        "repeat": r.repeat,
        "state": r.state,
        "created_at": r.created_at,
        "since": r.since,
        "bitrate_kbps": r.bitrate_kbps,
        "error": r.error,
        "plays_done": r.plays_done,
        "source": r.source,
    })
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found("task_not_found", format!("the app has no ingest with id '{id}'"))
}

#[utoipa::path(post, operation_id = "ingests.start", path = "/v1/ingests", tag = "ingests", request_body = StartIngest, responses((status = 201, description = "The ingest, STARTING", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn start(State(state): State<AppState>, Extension(caller): Extension<Caller>, ApiJson(req): ApiJson<StartIngest>) -> ApiResult<(StatusCode, Json<Value>)> {
    let room = RoomId::parse(&req.room).map_err(|e| ApiError::invalid_parameter("room", e.reason))?;
    let user = UserId::parse(&req.user).map_err(|e| ApiError::invalid_parameter("user", e.reason))?;
    if user.is_reserved() {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "user_id_reserved", format!("user id '{user}' belongs to the server")));
    }
    let stream = match req.stream.as_deref() {
        None => StreamKind::Main,
        Some(s) => StreamKind::parse(s).ok_or_else(|| ApiError::invalid_parameter("stream", "must be 'main' or 'aux'"))?,
    };
    check_url(&req.url)?;
    let repeat = req.repeat.unwrap_or(1);
    if repeat == 0 || repeat < -1 {
        return Err(ApiError::invalid_parameter("repeat", "must be -1 (loop forever) or at least 1"));
    }
    // PRODUCT.md §12: concurrent ingests per app (`limits.concurrent_ingests_per_app`).
    let limit = state.config.limits.concurrent_ingests_per_app as usize;
    if state.tasks.ingests.live_count(&caller.app) >= limit {
        return Err(
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "limit_exceeded", format!("at most {limit} ingests may run at once per app")).with_details(json!({"limit": limit}))
        );
    }
    let key = RoomKey { app: caller.app.clone(), room: room.clone() };
    let busy = state.tasks.ingests.publishes(&caller.app, &room, &user, stream)
        || state.rtc.is_published(key, user.clone(), stream).await.map_err(|e| ApiError::internal(e.to_string()))?;
    if busy {
        return Err(ApiError::new(StatusCode::CONFLICT, "stream_busy", format!("user '{user}' already publishes its {stream} stream in room '{room}'")));
    }
    let record = state.tasks.ingests.start(NewIngest { app: caller.app.clone(), room, user, stream, url: req.url, repeat }, state.rtc.clone());
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"id": record.id, "room": record.room, "user": record.user, "stream": record.stream, "url": record.url, "state": record.state, "created_at": record.created_at}),
        ),
    ))
}

#[utoipa::path(get, operation_id = "ingests.list", path = "/v1/ingests", tag = "ingests", params(ListParams), responses((status = 200, description = "A page of ingests", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>, ApiQuery(q): ApiQuery<ListQuery>) -> ApiResult<Json<Page<Value>>> {
    let items = state.tasks.ingests.list(&caller.app).iter().map(view).collect();
    Ok(Json(q.page(items, |v| v["id"].as_str().unwrap_or(""))?))
}

#[utoipa::path(get, operation_id = "ingests.get", path = "/v1/ingests/{id}", tag = "ingests", params(("id" = String, Path, description = "task id (16 lowercase hex)")), responses((status = 200, description = "The ingest", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn get(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let task = state.tasks.ingests.get(&caller.app, &id).ok_or_else(|| not_found(&id))?;
    Ok(Json(view(&task.record())))
}

#[utoipa::path(patch, operation_id = "ingests.update", path = "/v1/ingests/{id}", tag = "ingests", params(("id" = String, Path, description = "task id (16 lowercase hex)")), request_body = UpdateIngest, responses((status = 200, description = "The ingest, switching source", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn update(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>, ApiJson(req): ApiJson<UpdateIngest>) -> ApiResult<Json<Value>> {
    let task = state.tasks.ingests.get(&caller.app, &id).ok_or_else(|| not_found(&id))?;
    check_url(&req.url)?;
    let current = task.record();
    if current.state.is_final() {
        return Err(ApiError::new(StatusCode::CONFLICT, "invalid_state", format!("the ingest is {}", current.state.as_str())).with_details(json!({"state": current.state})));
    }
    state.tasks.ingests.switch(&task, req.url);
    Ok(Json(view(&task.record())))
}

/// Stops the ingest and answers once the worker has let go of the room (at most ~2 s: its
/// blocking read is interrupted).
#[utoipa::path(delete, operation_id = "ingests.stop", path = "/v1/ingests/{id}", tag = "ingests", params(("id" = String, Path, description = "task id (16 lowercase hex)")), responses((status = 200, description = "The ingest, STOPPED", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn stop(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let task = state.tasks.ingests.get(&caller.app, &id).ok_or_else(|| not_found(&id))?;
    state.tasks.ingests.stop(&task);
    tessera_tasks::registry::wait_ended(&*task, std::time::Duration::from_secs(3)).await;
    Ok(Json(view(&task.record())))
}
