//! `POST /v1/tokens`: mint a user token with the app's newest secret (PRODUCT.md §10.1).

use super::auth::Caller;
use super::json::ApiJson;
#[allow(unused_imports)]
use super::openapi::ListParams;
use super::AppState;
use crate::error::ErrorBody;
use crate::error::{ApiError, ApiResult};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use tessera_model::token::{self, TokenClaims, MAX_INFO_BYTES};
use tessera_model::{Privileges, Role, RoomId, UserId};

pub const DEFAULT_TTL_S: i64 = 6 * 3600;
pub const MAX_TTL_S: i64 = 30 * 24 * 3600;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    room: String,
    user: String,
    role: Option<i64>,
    privileges: Option<i64>,
    ttl_s: Option<i64>,
    info: Option<String>,
}

/// Checks the request and builds the claims; shared with the CLI through the same rules.
pub fn claims_for(req: &CreateToken, app: &str, now_s: i64) -> ApiResult<TokenClaims> {
    let room = RoomId::parse(&req.room).map_err(|e| ApiError::invalid_parameter("room", e.reason))?;
    let user = UserId::parse(&req.user).map_err(|e| ApiError::invalid_parameter("user", e.reason))?;
    if user.is_reserved() {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "user_id_reserved", format!("user ids starting with mix_, rec_ or relay_ belong to the server ('{user}')")));
    }
    let role = match req.role {
        None => Role::Anchor,
        Some(r) => Role::from_code(r).ok_or_else(|| ApiError::invalid_parameter("role", "must be 20 (anchor) or 21 (audience)"))?,
    };
    let privileges = match req.privileges {
        None => role.default_privileges(),
        Some(p) => Privileges::from_int(p).ok_or_else(|| ApiError::invalid_parameter("privileges", "must be 0-255"))?,
    };
    let ttl = req.ttl_s.unwrap_or(DEFAULT_TTL_S);
    if !(1..=MAX_TTL_S).contains(&ttl) {
        return Err(ApiError::invalid_parameter("ttl_s", format!("must be 1-{MAX_TTL_S}")));
    }
    if req.info.as_ref().is_some_and(|i| i.len() > MAX_INFO_BYTES) {
        return Err(ApiError::invalid_parameter("info", format!("must be at most {MAX_INFO_BYTES} bytes")));
    }
    Ok(TokenClaims {
        app: app.to_owned(),
        room: room.to_string(),
        user: user.to_string(),
        role: Some(role.code()),
        privileges: Some(privileges.bits() as i64),
        nbf: None,
        exp: now_s + ttl,
        info: req.info.clone().filter(|i| !i.is_empty()),
    })
}

/// `POST /dev/token {"room","user"}` when the server runs with `--dev` (config `dev = true`):
/// a 6-hour anchor token of the app `default`, for room.html's "join with a name", and only for
/// clients on this machine (a loopback peer address). Without dev mode the route does not exist.
pub async fn dev_token(axum::extract::State(state): axum::extract::State<AppState>, req: axum::extract::Request) -> ApiResult<(StatusCode, Json<Value>)> {
    if !state.config.dev {
        return Err(ApiError::not_found("route_not_found", "no route for POST /dev/token (start the server with --dev)"));
    }
    let peer = req.extensions().get::<axum::extract::ConnectInfo<crate::listen::PeerAddr>>().map(|c| c.0 .0);
    if !peer.is_some_and(|p| p.ip().is_loopback()) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "dev_only_local", "dev tokens are minted for clients on this machine only"));
    }
    let body = axum::body::to_bytes(req.into_body(), 4096).await.map_err(|_| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "at most 4 KiB"))?;
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct DevToken {
        room: String,
        user: String,
    }
    let asked: DevToken = serde_json::from_slice(&body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("expected {{\"room\",\"user\"}}: {e}")))?;
    let req = CreateToken { room: asked.room, user: asked.user, role: None, privileges: None, ttl_s: None, info: None };
    let app = tessera_model::AppId::default_app();
    let claims = claims_for(&req, app.as_str(), crate::now_ms() / 1000)?;
    let apps = state.store.snapshot();
    let app = apps.get(&app).ok_or_else(|| ApiError::internal("the default app is missing"))?;
    let secret = app.newest_secret();
    let token = token::mint(&claims, &secret.kid, &secret.secret);
    tracing::info!(room = %req.room, user = %req.user, "dev token minted");
    Ok((StatusCode::CREATED, Json(json!({"token": token, "expires_at": claims.exp * 1000}))))
}

#[utoipa::path(post, operation_id = "tokens.create", path = "/v1/tokens", tag = "tokens", request_body = CreateToken, responses((status = 201, description = "{token, expires_at}", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn create(
    axum::extract::State(state): axum::extract::State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<CreateToken>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let now_s = crate::now_ms() / 1000;
    let claims = claims_for(&req, caller.app.as_str(), now_s)?;
    let apps = state.store.snapshot();
    let app = apps.get(&caller.app).ok_or_else(|| ApiError::internal("the key's app vanished"))?;
    let secret = app.newest_secret();
    let token = token::mint(&claims, &secret.kid, &secret.secret);
    Ok((StatusCode::CREATED, Json(json!({"token": token, "expires_at": claims.exp * 1000}))))
}
