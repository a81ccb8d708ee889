//! `switch_role` and `update_token` (PRODUCT.md §4.4): the token is checked again inside the
//! session, and what it no longer allows stops.

use super::media;
use super::session::Joined;
use super::AppState;
use crate::api::whip::media_privilege;
use crate::entry::{privilege_missing, verify_raw};
use crate::error::ApiError;
use axum::http::StatusCode;
use serde_json::{json, Value};
use tessera_engine::{PeerRole, SectionKind};
use tessera_media::StreamKind;
use tessera_model::{Privileges, Role};

pub(super) enum Switched {
    Done,
    /// The token expired: the session is kicked (`token_expired`, 104 Reason 3).
    TokenExpired,
}

/// `switch_role`: to anchor needs an unexpired token with a publish privilege; to audience
/// ends every publication of the participant (105 covers them).
pub(super) async fn switch_role(state: &AppState, j: &mut Joined, msg: &Value) -> Result<Switched, ApiError> {
    let role = match msg["role"].as_u64() {
        Some(20) => Role::Anchor,
        Some(21) => Role::Audience,
        _ => return Err(ApiError::invalid_parameter("role", "must be 20 (anchor) or 21 (audience)")),
    };
    if role == Role::Anchor {
        if j.token.exp + tessera_model::token::LEEWAY_S < crate::now_ms() / 1000 {
            return Ok(Switched::TokenExpired);
        }
        if j.token.privileges.bits() & Privileges::ANY_PUBLISH.bits() == 0 {
            return Err(privilege_missing(Privileges::PUBLISH_VIDEO));
        }
    }
    state.rtc.switch_role(j.key.clone(), j.user().clone(), role).await?;
    j.token.role = role;
    if role == Role::Audience {
        // The SFU has closed them.
        j.published.clear();
    }
    Ok(Switched::Done)
}

/// `update_token`: the new token (same app, room and user) replaces privileges and expiry;
/// publications and subscriptions it no longer allows stop with reason `privilege_revoked`.
pub(super) async fn update_token(state: &AppState, j: &mut Joined, msg: &Value, outbox: &mut Vec<Value>) -> Result<(), ApiError> {
    let raw = msg["token"].as_str().ok_or_else(|| ApiError::invalid_parameter("token", "the new token is required"))?;
    let token = verify_raw(state, raw, false)?;
    if token.app != j.token.app || token.room != j.token.room || token.user != j.token.user {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "token_mismatch", "the new token must name the same app, room and user"));
    }
    j.token.privileges = token.privileges;
    j.token.exp = token.exp;
    let may = |role, stream, kind| token.privileges.require(media_privilege(role, stream, kind)).is_ok();
    // A publication with a kind no longer allowed stops whole (its sections share one connection).
    let revoked: Vec<(StreamKind, String)> =
        j.published.iter().filter(|(stream, _, kinds)| kinds.iter().any(|k| !may(PeerRole::Publish, *stream, *k))).map(|(s, sid, _)| (*s, sid.clone())).collect();
    for (stream, sid) in revoked {
        j.published.retain(|(_, s, _)| *s != sid);
        let _ = state.rtc.remove_session(&sid).await;
        outbox.push(json!({"type": "track_unpublished", "user": j.user(), "stream": stream.as_str(), "kind": null, "reason": "privilege_revoked"}));
    }
    let subscribed: Vec<_> = j.sub.as_ref().map(|s| s.subscribed.clone()).unwrap_or_default();
    for (user, stream) in subscribed {
        if !may(PeerRole::Play, stream, SectionKind::Audio) && !may(PeerRole::Play, stream, SectionKind::Video) {
            if let Ok(offer) = media::unsubscribe_from(state, j, (user.clone(), stream)).await {
                outbox.push(json!({"type": "track_unpublished", "user": user, "stream": stream.as_str(), "kind": null, "reason": "privilege_revoked"}));
                if let Some(o) = offer {
                    outbox.push(media::offer_or_ok(Some(o), &Value::Null));
                }
            }
        }
    }
    Ok(())
}
