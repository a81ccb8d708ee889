//! Rooms and users (PRODUCT.md §10): list and read rooms and their participants, remove a user
//! (every session ends, 104 Reason 3) or dismiss a room (sessions end, tasks stop with
//! LeaveCode 2, then 102). The SFU owns sessions, `tessera-tasks` the tasks.

use super::auth::Caller;
#[allow(unused_imports)]
use super::openapi::ListParams;
use super::{ApiQuery, AppState, ListQuery, Page};
use crate::error::ErrorBody;
use crate::error::{ApiError, ApiResult};
use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde_json::{json, Value};
use std::time::Instant;
use tessera_engine::presence::user_type;
use tessera_engine::{ParticipantInfo, RoomKey, RoomSummary};
use tessera_model::{RoomId, UserId};

fn room_key(caller: &Caller, room: &str) -> ApiResult<RoomKey> {
    let room = RoomId::parse(room).map_err(|e| ApiError::invalid_parameter("room", e.reason))?;
    Ok(RoomKey { app: caller.app.clone(), room })
}

fn room_not_found(room: &RoomKey) -> ApiError {
    ApiError::not_found("room_not_found", format!("room '{}' does not exist", room.room))
}

/// An engine `Instant` as Unix ms.
fn unix_ms(at: Instant) -> i64 {
    crate::now_ms() - Instant::now().saturating_duration_since(at).as_millis() as i64
}

/// The session kinds of PRODUCT.md §10 `sessions`, from their UserType.
fn session_kind(t: u8) -> &'static str {
    match t {
        1 => "ws",
        user_type::WHIP => "whip",
        user_type::WHEP => "whep",
        user_type::RTMP => "rtmp",
        user_type::PULL_INGEST => "ingest",
        user_type::MIX => "mix",
        _ => "other",
    }
}

fn room_view(state: &AppState, r: &RoomSummary) -> Value {
    let mut v = json!({
        "room": r.room.room,
        "created_at": unix_ms(r.created),
        "participants": r.participants,
        "publishers": r.publishers,
        "tasks": state.tasks.live_in_room(&r.room),
        "media_worker": r.worker,
        "viewer_workers": r.viewer_workers,
    });
    if let Some(cluster) = state.cluster.get() {
        v["node"] = json!(cluster.me);
    }
    v
}

fn user_view(p: &ParticipantInfo) -> Value {
    json!({
        "user": p.user,
        "role": p.role.code(),
        "user_type": p.user_type,
        "terminal_type": p.terminal_type,
        "info": p.info,
        "joined_at": unix_ms(p.joined),
        "sessions": p.sessions.iter().map(|t| session_kind(*t)).collect::<Vec<_>>(),
        "streams": p.streams.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
    })
}

#[utoipa::path(get, operation_id = "rooms.list", path = "/v1/rooms", tag = "rooms", params(ListParams), responses((status = 200, description = "A page of rooms with participant, publisher and task counts", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: axum::http::HeaderMap,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<Value>>> {
    let rooms = state.rtc.rooms(caller.app.clone()).await?;
    // Cluster mode: rooms this node only relays are listed by their node.
    let relayed = |r: &&RoomSummary| state.cluster.get().is_some_and(|c| c.edges.relays(&r.room));
    let mut items: Vec<Value> = rooms.iter().filter(|r| !relayed(r)).map(|r| room_view(&state, r)).collect();
    // Cluster mode: every node's rooms (each room lives on one node).
    if let Some(cluster) = state.cluster.get().filter(|_| !headers.contains_key(crate::cluster::FORWARDED)) {
        for page in cluster.gather("/v1/rooms?limit=1000", headers.get(axum::http::header::AUTHORIZATION)).await {
            items.extend(page["items"].as_array().cloned().unwrap_or_default());
        }
    }
    Ok(Json(q.page(items, |v| v["room"].as_str().unwrap_or(""))?))
}

#[utoipa::path(get, operation_id = "rooms.get", path = "/v1/rooms/{room}", tag = "rooms", params(("room" = String, Path, description = "room id")), responses((status = 200, description = "The room with a users summary", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn get(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(room): Path<String>) -> ApiResult<Json<Value>> {
    let key = room_key(&caller, &room)?;
    let rooms = state.rtc.rooms(caller.app.clone()).await?;
    let summary = rooms.iter().find(|r| r.room == key).ok_or_else(|| room_not_found(&key))?;
    let users = state.rtc.room_users(key.clone()).await?.unwrap_or_default();
    let mut v = room_view(&state, summary);
    v["users"] = users.iter().map(|p| json!({"user": p.user, "role": p.role.code(), "user_type": p.user_type})).collect();
    Ok(Json(v))
}

/// Dismisses the room: its tasks stop (LeaveCode 2), every session ends (104 Reason 3), 102.
#[utoipa::path(delete, operation_id = "rooms.dismiss", path = "/v1/rooms/{room}", tag = "rooms", params(("room" = String, Path, description = "room id")), responses((status = 200, description = "Dismissed: every session ends, tasks stop", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn dismiss(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path(room): Path<String>) -> ApiResult<Json<Value>> {
    let key = room_key(&caller, &room)?;
    if state.rtc.room_users(key.clone()).await?.is_none() {
        return Err(room_not_found(&key));
    }
    state.tasks.dismiss_room(&key);
    state.rtc.dismiss(key.clone()).await?;
    Ok(Json(json!({"room": key.room, "dismissed_at": crate::now_ms()})))
}

#[utoipa::path(get, operation_id = "users.list", path = "/v1/rooms/{room}/users", tag = "rooms", params(("room" = String, Path, description = "room id"), ListParams), responses((status = 200, description = "A page of participants", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn users(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(room): Path<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<Value>>> {
    let key = room_key(&caller, &room)?;
    let users = state.rtc.room_users(key.clone()).await?.ok_or_else(|| room_not_found(&key))?;
    let items = users.iter().map(user_view).collect();
    Ok(Json(q.page(items, |v| v["user"].as_str().unwrap_or(""))?))
}

fn user_in(users: Vec<ParticipantInfo>, user: &str) -> ApiResult<ParticipantInfo> {
    users.into_iter().find(|p| p.user.as_str() == user).ok_or_else(|| ApiError::not_found("user_not_found", format!("user '{user}' is not in the room")))
}

#[utoipa::path(get, operation_id = "users.get", path = "/v1/rooms/{room}/users/{user}", tag = "rooms", params(("room" = String, Path, description = "room id"), ("user" = String, Path, description = "user id")), responses((status = 200, description = "The participant with per-track stats", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn user(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path((room, user)): Path<(String, String)>) -> ApiResult<Json<Value>> {
    let key = room_key(&caller, &room)?;
    let users = state.rtc.room_users(key.clone()).await?.ok_or_else(|| room_not_found(&key))?;
    let p = user_in(users, &user)?;
    let mut v = user_view(&p);
    let tracks = state.rtc.user_tracks(key, p.user.clone()).await?;
    let muted = |stream: tessera_media::StreamKind, video: bool| p.tracks.iter().any(|t| t.muted && t.track == tessera_engine::Track::of(stream, video));
    v["tracks"] = tracks
        .iter()
        .map(|t| {
            let layers: Vec<Value> = t.layers.iter().map(|(rid, kbps)| json!({"rid": rid, "kbps": kbps.round()})).collect();
            let mut track = track_stats(&p.user, t);
            track["kbps"] = json!(t.kbps.round());
            track["layers"] = json!(layers);
            if t.source.is_none() {
                track["muted"] = json!(muted(t.stream, t.video));
            }
            track
        })
        .collect();
    Ok(Json(v))
}

/// One track's live stats as room signaling's `stats` message and `users.get` show them
/// (PRODUCT.md §7, §9). `owner` is the participant: a published track's user.
pub(crate) fn track_stats(owner: &UserId, t: &tessera_engine::TrackStats) -> Value {
    let round1 = |x: Option<f64>| x.map(|v| (v * 10.0).round() / 10.0);
    let audio = t.codec == Some(tessera_media::Codec::Opus);
    json!({
        "direction": t.direction,
        "user": t.source.as_ref().unwrap_or(owner),
        "stream": t.stream.as_str(),
        "kind": if t.video { "video" } else { "audio" },
        "codec": t.codec.map(super::rtc::codec_name),
        "bitrate_kbps": t.kbps.round(),
        "fps": round1(t.fps),
        "width": t.size.map(|s| s.0),
        "height": t.size.map(|s| s.1),
        "layer": t.layer,
        "loss_pct": round1(t.loss_pct),
        "jitter_ms": round1(t.jitter_ms),
        "rtt_ms": round1(t.rtt_ms),
        // Beyond the spec's fields: a received video the viewer's link cannot carry now.
        "paused": (t.direction == "receive" && t.video).then_some(t.paused),
        // Opus is 48 kHz, and Tessera negotiates it stereo.
        "sample_rate": audio.then_some(48_000),
        "channels": audio.then_some(2),
    })
}

/// Removes the user: every session of theirs ends (104 Reason 3); an RTMP encoder is told
/// `removed` and disconnected, an ingest publishing as the user stops.
#[utoipa::path(delete, operation_id = "users.kick", path = "/v1/rooms/{room}/users/{user}", tag = "rooms", params(("room" = String, Path, description = "room id"), ("user" = String, Path, description = "user id")), responses((status = 200, description = "Removed: every session of the user ends", body = Value), (status = "4XX", description = "Refused: the JSON error (code, message, request_id, details)", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("api_key" = [])))]
pub async fn kick(State(state): State<AppState>, Extension(caller): Extension<Caller>, Path((room, user)): Path<(String, String)>) -> ApiResult<Json<Value>> {
    let key = room_key(&caller, &room)?;
    let users = state.rtc.room_users(key.clone()).await?.ok_or_else(|| room_not_found(&key))?;
    let p = user_in(users, &user)?;
    let user: UserId = p.user;
    state.tasks.remove_user(&key, &user);
    state.rtc.kick(key.clone(), user.clone()).await?;
    Ok(Json(json!({"room": key.room, "user": user, "removed_at": crate::now_ms()})))
}
