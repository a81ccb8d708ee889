//! `/v1/mix-jobs` (LAYOUTS.md §1): start, read, update live and stop MCU mix jobs (the jobs
//! themselves: `crate::mix_jobs`).

use super::auth::Caller;
use super::json::ApiJson;
use super::{ApiQuery, AppState, ListQuery, Page};
use crate::error::ApiResult;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde_json::Value;
use std::time::Duration;
use tessera_tasks::mix_jobs::{apply_patch, find, start_job, view};

pub async fn start(State(state): State<AppState>, Extension(caller): Extension<Caller>, ApiJson(body): ApiJson<Value>) -> ApiResult<(StatusCode, Json<Value>)> {
    let (id, job) = start_job(&state.tasks, &caller.app, body, None).await?;
    Ok((StatusCode::CREATED, Json(view(&id, &job))))
}

pub async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>, ApiQuery(q): ApiQuery<ListQuery>) -> ApiResult<Json<Page<Value>>> {
    let items = state.tasks.mix_jobs.list(&caller.app).iter().map(|(id, j)| view(id, j)).collect();
    Ok(Json(q.page(items, |v| v["id"].as_str().unwrap_or(""))?))
}

pub async fn get(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let job = find(&state.tasks, &caller.app, &id)?;
    Ok(Json(view(&id, &job)))
}

/// Each section present replaces that section entirely; applied at the job's next frame.
pub async fn update(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>, ApiJson(body): ApiJson<Value>) -> ApiResult<Json<Value>> {
    Ok(Json(apply_patch(&state.tasks, &caller.app, &id, body).await?))
}

pub async fn stop(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let job = find(&state.tasks, &caller.app, &id)?;
    tessera_tasks::mix_jobs::stop(&state.tasks, &job);
    tessera_tasks::registry::wait_ended(&*job, Duration::from_secs(3)).await;
    Ok(Json(view(&id, &job)))
}
