//! `/v1/api-keys`: create, list, get and delete the caller's app's API keys (PRODUCT.md §10.1).

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
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tessera_model::apikey::MAX_NAME_LEN;
use tessera_model::{ApiKeyRecord, Policy};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    #[serde(default)]
    name: String,
    preset: Option<String>,
    #[schema(value_type = Option<Object>)]
    policy: Option<Policy>,
}

/// A key as the API shows it: never its hash or plaintext.
#[derive(Debug, Serialize)]
pub struct KeyView {
    id: String,
    name: String,
    policy: Policy,
    created_at: i64,
    last_used_at: Option<i64>,
}

impl KeyView {
    fn new(state: &AppState, r: &ApiKeyRecord) -> KeyView {
        KeyView { id: r.id.clone(), name: r.name.clone(), policy: r.policy.clone(), created_at: r.created_at, last_used_at: state.store.last_used(&r.id).or(r.last_used_at) }
    }
}

/// The policy a create request asks for: exactly one of a preset or an explicit policy.
pub fn requested_policy(preset: Option<&str>, policy: Option<Policy>) -> ApiResult<Policy> {
    match (preset, policy) {
        (Some(_), Some(_)) => Err(ApiError::invalid_parameter("policy", "give either 'preset' or 'policy', not both")),
        (None, None) => Err(ApiError::invalid_parameter("preset", "give a 'preset' (full-access or read-only) or a 'policy'")),
        (Some(name), None) => Policy::preset(name).ok_or_else(|| ApiError::invalid_parameter("preset", "must be full-access or read-only")),
        (None, Some(p)) => {
            p.validate().map_err(|reason| ApiError::invalid_parameter("policy", reason.to_string()))?;
            Ok(p)
        }
    }
}

#[utoipa::path(post, operation_id = "apikeys.create", path = "/v1/api-keys", tag = "api-keys", request_body = CreateKey, responses((status = 201, description = "The key (shown only here) with its policy", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn create(State(state): State<AppState>, Extension(caller): Extension<Caller>, ApiJson(req): ApiJson<CreateKey>) -> ApiResult<(StatusCode, Json<Value>)> {
    if req.name.len() > MAX_NAME_LEN {
        return Err(ApiError::invalid_parameter("name", format!("must be at most {MAX_NAME_LEN} characters")));
    }
    let policy = requested_policy(req.preset.as_deref(), req.policy)?;
    let issued = state.store.create_api_key(&caller.app, &req.name, policy, crate::now_ms())?;
    let r = issued.record;
    Ok((StatusCode::CREATED, Json(json!({"id": r.id, "key": issued.key, "name": r.name, "policy": r.policy, "created_at": r.created_at}))))
}

#[utoipa::path(get, operation_id = "apikeys.list", path = "/v1/api-keys", tag = "api-keys", params(ListParams), responses((status = 200, description = "A page of keys", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>, ApiQuery(q): ApiQuery<ListQuery>) -> ApiResult<Json<Page<KeyView>>> {
    let apps = state.store.snapshot();
    let keys = apps.get(&caller.app).map(|a| a.api_keys.iter().map(|r| KeyView::new(&state, r)).collect()).unwrap_or_default();
    Ok(Json(q.page(keys, |k| &k.id)?))
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found("api_key_not_found", format!("the app has no API key with id '{id}'"))
}

#[utoipa::path(get, operation_id = "apikeys.get", path = "/v1/api-keys/{id}", tag = "api-keys", params(("id" = String, Path, description = "key id")), responses((status = 200, description = "The key (never its secret)", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn get(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Json<KeyView>> {
    let apps = state.store.snapshot();
    let record = apps.get(&caller.app).and_then(|a| a.api_key(&id)).ok_or_else(|| not_found(&id))?;
    Ok(Json(KeyView::new(&state, record)))
}

#[utoipa::path(delete, operation_id = "apikeys.delete", path = "/v1/api-keys/{id}", tag = "api-keys", params(("id" = String, Path, description = "key id")), responses((status = 200, description = "Deleted", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn delete(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    state.store.update(&caller.app, |a| a.remove_api_key(&id))?;
    Ok(Json(json!({"id": id, "deleted_at": crate::now_ms()})))
}
