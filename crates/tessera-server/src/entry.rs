//! Who may enter: user tokens verified against the apps' secrets, and the room-entry checks
//! every media entry point makes (WHIP, WHEP, RTMP, `/files`), in the order of PRODUCT.md §5.

use crate::api::AppState;
use crate::error::{ApiError, ApiResult};
use axum::http::StatusCode;
use serde_json::json;
use tessera_engine::RoomKey;
use tessera_model::privileges::Privileges;
use tessera_model::token::{self, TokenError, UserToken};
use tessera_model::{Role, RoomId};

/// Verifies a user token against the apps' secrets (shared with RTMP, whose token comes in the
/// stream key).
pub fn verify_raw(state: &AppState, raw: &str, allow_expired: bool) -> ApiResult<UserToken> {
    let apps = state.store.snapshot();
    let now_s = crate::now_ms() / 1000;
    let lookup = |now: i64| token::verify(raw, now, |app| apps.get(app).map(|a| a.secrets.as_slice()));
    match lookup(now_s) {
        Ok(t) => Ok(t),
        // DELETE accepts an expired token (PRODUCT.md §6.1): check everything else at its expiry.
        Err(TokenError::Expired { exp }) if allow_expired => Ok(lookup(exp)?),
        Err(e) => Err(e.into()),
    }
}

pub fn privilege_missing(required: Privileges) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "privilege_missing", format!("the token lacks privilege {} ({})", required.bits(), tessera_model::privileges::describe(required)))
        .with_details(json!({"required": required.bits()}))
}

/// Binding, role, user and enter/create checks shared by WHIP, WHEP and RTMP.
pub async fn check_entry(state: &AppState, token: &UserToken, room: &str, must_publish: bool) -> ApiResult<RoomKey> {
    if token.room.as_str() != room {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "token_room_mismatch", format!("the token is for room '{}', not '{room}'", token.room)));
    }
    if token.user.is_reserved() {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "user_id_reserved", format!("user id '{}' belongs to the server", token.user)));
    }
    if must_publish && token.role != Role::Anchor {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "role_not_allowed", "publishing needs an anchor token (role 20)"));
    }
    token.privileges.require(Privileges::ENTER_ROOM).map_err(|e| privilege_missing(e.required))?;
    let key = RoomKey { app: token.app.clone(), room: RoomId::parse(room).map_err(|e| ApiError::invalid_parameter("room", e.reason))? };
    let exists = state.rtc.room_exists(key.clone()).await.map_err(|e| ApiError::internal(e.to_string()))?;
    if !exists && !token.privileges.contains(Privileges::CREATE_ROOM) {
        return Err(ApiError::not_found("room_not_found", format!("room '{room}' does not exist and the token may not create it (privilege 1)")));
    }
    Ok(key)
}
