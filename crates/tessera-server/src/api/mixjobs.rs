//! `/v1/mix-jobs` (LAYOUTS.md §1): start, read, update live and stop MCU mix jobs (the jobs
//! themselves: `crate::mix_jobs`).

use super::auth::Caller;
use super::json::ApiJson;
#[allow(unused_imports)]
use super::openapi::ListParams;
use super::{ApiQuery, AppState, ListQuery, Page};
use crate::error::ApiResult;
use crate::error::ErrorBody;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde_json::Value;
use std::time::Duration;
use tessera_tasks::mix_jobs::{apply_patch, find, start_job, view};

#[utoipa::path(post, operation_id = "mixjobs.start", path = "/v1/mix-jobs", tag = "mix-jobs", request_body(content = Value, description = "A mix job: room, layout, audio, encode, outputs (LAYOUTS.md)"), responses((status = 201, description = "The mix job", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn start(State(state): State<AppState>, Extension(caller): Extension<Caller>, ApiJson(body): ApiJson<Value>) -> ApiResult<(StatusCode, Json<Value>)> {
    let (id, job) = start_job(&state.tasks, &caller.app, body, None).await?;
    Ok((StatusCode::CREATED, Json(view(&id, &job))))
}

#[utoipa::path(get, operation_id = "mixjobs.list", path = "/v1/mix-jobs", tag = "mix-jobs", params(ListParams), responses((status = 200, description = "A page of mix jobs", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>, ApiQuery(q): ApiQuery<ListQuery>) -> ApiResult<Json<Page<Value>>> {
    let items = state.tasks.mix_jobs.list(&caller.app).iter().map(|(id, j)| view(id, j)).collect();
    Ok(Json(q.page(items, |v| v["id"].as_str().unwrap_or(""))?))
}

#[utoipa::path(get, operation_id = "mixjobs.get", path = "/v1/mix-jobs/{id}", tag = "mix-jobs", params(("id" = String, Path, description = "task id (16 lowercase hex)")), responses((status = 200, description = "The mix job", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn get(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let job = find(&state.tasks, &caller.app, &id)?;
    Ok(Json(view(&id, &job)))
}

/// Each section present replaces that section entirely; applied at the job's next frame.
#[utoipa::path(patch, operation_id = "mixjobs.update", path = "/v1/mix-jobs/{id}", tag = "mix-jobs", params(("id" = String, Path, description = "task id (16 lowercase hex)")), request_body(content = Value, description = "layout and/or audio, each replacing its section"), responses((status = 200, description = "The mix job", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn update(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>, ApiJson(body): ApiJson<Value>) -> ApiResult<Json<Value>> {
    Ok(Json(apply_patch(&state.tasks, &caller.app, &id, body).await?))
}

#[utoipa::path(delete, operation_id = "mixjobs.stop", path = "/v1/mix-jobs/{id}", tag = "mix-jobs", params(("id" = String, Path, description = "task id (16 lowercase hex)")), responses((status = 200, description = "The mix job, STOPPED", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn stop(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let job = find(&state.tasks, &caller.app, &id)?;
    tessera_tasks::mix_jobs::stop(&state.tasks, &job);
    tessera_tasks::registry::wait_ended(&*job, Duration::from_secs(3)).await;
    Ok(Json(view(&id, &job)))
}
