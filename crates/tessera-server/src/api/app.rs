//! `/v1/app`: the caller's app settings, and secret rotation (PRODUCT.md §4.5, §10).
//! Secrets and webhook keys are never returned, except a new secret once, in its 201.

use super::auth::Caller;
#[allow(unused_imports)]
use super::openapi::ListParams;
use super::AppState;
use crate::error::ErrorBody;
use crate::error::{ApiError, ApiResult};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tessera_model::{App, AutoRecording, RtmpSettings, WebhookSettings};

fn view(app: &App) -> Value {
    let w = &app.webhook;
    json!({
        "id": app.id,
        "created_at": app.created_at,
        "secrets": app.secrets.iter().map(|s| json!({"kid": s.kid, "created_at": s.created_at})).collect::<Vec<_>>(),
        "webhook": {"url": w.url, "urls": w.urls, "groups": w.groups, "key_set": w.key.is_some()},
        "auto_recording": app.auto_recording,
        "default_storage": app.default_storage.redacted(),
        "rtmp": app.rtmp,
    })
}

#[utoipa::path(get, operation_id = "app.get", path = "/v1/app", tag = "app", responses((status = 200, description = "Webhook, auto recording, default storage, secrets' kids (never the secrets)", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn get(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult<Json<Value>> {
    let apps = state.store.snapshot();
    let app = apps.get(&caller.app).ok_or_else(|| ApiError::internal("the key's app vanished"))?;
    Ok(Json(view(app)))
}

/// The settings `PATCH /v1/app` may change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    webhook: WebhookSettings,
    auto_recording: AutoRecording,
    default_storage: tessera_model::StorageRef,
    rtmp: RtmpSettings,
}

/// RFC 7396 JSON merge patch: objects merge key by key, `null` removes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// `PATCH /v1/app` is a JSON merge patch of `webhook`, `auto_recording`, `default_storage` and
/// `rtmp`.
/// A webhook patch that leaves out `key` keeps the current key, since `GET` never shows it.
#[utoipa::path(patch, operation_id = "app.update", path = "/v1/app", tag = "app", request_body(content = Value, content_type = "application/merge-patch+json", description = "JSON merge patch of webhook, auto_recording, default_storage, rtmp"), responses((status = 200, description = "The settings now", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn update(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    super::json::ApiJson(patch): super::json::ApiJson<Map<String, Value>>,
) -> ApiResult<Json<Value>> {
    for k in patch.keys() {
        if !["webhook", "auto_recording", "default_storage", "rtmp"].contains(&k.as_str()) {
            return Err(ApiError::invalid_parameter(k, "is not a setting; use webhook, auto_recording, default_storage or rtmp"));
        }
    }
    let config = &state.config;
    let updated = state.store.update(&caller.app, |app| {
        // A storage given anew replaces the old one whole (the kept one's secret is sealed and
        // never shown, so merging into it would be guesswork).
        let storage_patch = patch.get("default_storage").cloned();
        let mut current = json!({
            "webhook": app.webhook, "auto_recording": app.auto_recording, "default_storage": "local", "rtmp": app.rtmp,
        });
        merge_patch(&mut current, &Value::Object(patch.clone()));
        let settings: Settings = super::json::from_value(current).map_err(api_to_app_error)?;
        settings.webhook.validate()?;
        settings.auto_recording.validate()?;
        settings.rtmp.validate()?;
        let default_storage = match storage_patch {
            None => app.default_storage.clone(),
            Some(Value::Null) => tessera_model::StorageRef::default(),
            Some(_) => crate::storage::accept(settings.default_storage, "default_storage", config, app)?,
        };
        app.webhook = settings.webhook;
        app.auto_recording = settings.auto_recording;
        app.default_storage = default_storage;
        app.rtmp = settings.rtmp;
        Ok(view(app))
    })?;
    Ok(Json(updated))
}

fn api_to_app_error(e: ApiError) -> tessera_model::AppError {
    let field = e.details.as_ref().and_then(|d| d["field"].as_str()).unwrap_or("body").to_owned();
    let reason = e.details.as_ref().and_then(|d| d["reason"].as_str()).unwrap_or(&e.message).to_owned();
    tessera_model::AppError::Invalid { field, reason }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AddSecret {
    kid: Option<String>,
}

/// `POST /v1/app/secrets`, with an optional body `{"kid": "..."}`; the new secret mints tokens
/// from now on and is shown in this answer only.
#[utoipa::path(post, operation_id = "secrets.create", path = "/v1/app/secrets", tag = "app", request_body(content = Value, description = "Optional: {\"kid\": \"...\"}"), responses((status = 201, description = "The new secret, shown only here", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn add_secret(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    // Body errors are JSON like every other (axum's own 413 is plain text).
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            super::json::payload_too_large(super::json::MAX_JSON_BODY)
        } else {
            ApiError::invalid_json(format!("could not read the body: {r}"))
        }
    })?;
    let req: AddSecret = if body.iter().all(u8::is_ascii_whitespace) { AddSecret::default() } else { super::json::parse(&body)? };
    let kid = req.kid.map(|k| tessera_model::Kid::parse(&k).map_err(|e| ApiError::invalid_parameter("kid", e.reason))).transpose()?;
    let now = crate::now_ms();
    let secret = state.store.update(&caller.app, |app| match kid {
        Some(kid) => app.add_secret(kid, tessera_model::random::secret(), now).cloned(),
        None => app.add_generated_secret(now).cloned(),
    })?;
    Ok((StatusCode::CREATED, Json(json!({"kid": secret.kid, "secret": secret.secret, "created_at": secret.created_at}))))
}

#[utoipa::path(delete, operation_id = "secrets.delete", path = "/v1/app/secrets/{kid}", tag = "app", params(("kid" = String, Path, description = "secret id")), responses((status = 200, description = "Removed", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn remove_secret(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(kid): Path<String>) -> ApiResult<Json<Value>> {
    state.store.update(&caller.app, |app| {
        let removed: Vec<(String, String)> = app.secrets.iter().filter(|s| s.kid.as_str() == kid).map(|s| (kid.clone(), s.secret.clone())).collect();
        app.remove_secret(&kid)?;
        crate::storage::reseal(app, &removed);
        Ok::<(), tessera_model::AppError>(())
    })?;
    Ok(Json(json!({"kid": kid, "deleted_at": crate::now_ms()})))
}

#[cfg(test)]
mod tests {
    use super::merge_patch;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7396() {
        let mut t = json!({"webhook": {"url": "a", "key": "k", "groups": [1, 2]}, "default_storage": "local"});
        merge_patch(&mut t, &json!({"webhook": {"url": null, "groups": [3]}}));
        assert_eq!(t, json!({"webhook": {"key": "k", "groups": [3]}, "default_storage": "local"}));
    }
}
