//! Room signaling, `GET /v1/rtc` (PRODUCT.md §7): a WebSocket per participant session. Built so
//! far: presence — `join` (token checks, room creation), `joined` with who is there,
//! `participant_joined/left`, `track_published/unpublished`, `role_changed`, `ping`, `leave`,
//! `kicked` (removed, room dismissed, a newer login) — the spec's framing, limits and errors, and
//! publishing on the `pub` peer connection (`publish`/`unpublish`; the server is ICE-lite, so
//! trickled candidates need no answer). Subscribing (the server-offered `sub` connection) is not
//! built yet and is refused with `not_supported`, as are the other media messages.

use super::AppState;
use crate::entry::{check_entry, verify_raw};
use crate::error::ApiError;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use dashmap::DashMap;
use serde_json::{json, Value};
use std::time::Duration;
use tessera_engine::presence::LeaveReason;
use tessera_engine::{JoinInfo, PeerRole, PublisherEnd, Quality, RoomEvent, RoomKey, SessionSpec};
use tessera_media::StreamKind;
use tessera_model::{AppId, RoomId, UserId};
use tokio::sync::{broadcast, oneshot};

/// Text frames of at most this size; larger closes with 1009.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Frames up to this size are read (to answer 1009 rather than drop the connection).
const MAX_READ: usize = 4 * 1024 * 1024;
/// The first message must be `join` within this (else close 4002).
const JOIN_WITHIN: Duration = Duration::from_secs(10);
/// A session silent this long is lost (clients `ping` every 5 s).
const LIVENESS: Duration = Duration::from_secs(15);

const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_AUTH: u16 = 4001;
const CLOSE_NO_JOIN: u16 = 4002;
const CLOSE_KICKED: u16 = 4003;

/// The live room-signaling session of each participant: a newer login replaces the older.
#[derive(Default)]
pub struct Signaling {
    sessions: DashMap<(AppId, RoomId, UserId), (u64, oneshot::Sender<()>)>,
}

pub async fn signaling(State(state): State<AppState>, headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    let ua = headers.get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    ws.max_message_size(MAX_READ).max_frame_size(MAX_READ).on_upgrade(move |socket| session(socket, state, ua))
}

fn error_msg(id: &Value, code: &str, message: impl Into<String>) -> Value {
    json!({"type": "error", "id": id, "code": code, "message": message.into()})
}

async fn send(socket: &mut WebSocket, v: &Value) -> bool {
    socket.send(Message::Text(Utf8Bytes::from(v.to_string()))).await.is_ok()
}

async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from(reason) }))).await;
}

/// One message read: a JSON object, or why not.
enum Read {
    Json(Value),
    Bad(&'static str),
    TooBig,
    Closed,
}

async fn read(socket: &mut WebSocket) -> Read {
    loop {
        return match socket.recv().await {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => Read::Closed,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Binary(_))) => Read::Bad("binary frames are not accepted; send JSON text"),
            Some(Ok(Message::Text(t))) if t.len() > MAX_MESSAGE => Read::TooBig,
            Some(Ok(Message::Text(t))) => match serde_json::from_str::<Value>(t.as_str()) {
                Ok(v) if v.is_object() && v["type"].is_string() => Read::Json(v),
                Ok(_) => Read::Bad("a message is a JSON object with a string 'type'"),
                Err(_) => Read::Bad("the message is not JSON"),
            },
        };
    }
}

/// The correlation id to echo: a string of at most 64 characters, else none.
fn id_of(v: &Value) -> Value {
    match v.get("id").and_then(Value::as_str) {
        Some(s) if s.len() <= 64 => Value::String(s.to_owned()),
        _ => Value::Null,
    }
}

struct Joined {
    key: RoomKey,
    user: UserId,
    token: tessera_model::UserToken,
    /// The SFU publisher session of each published stream (the `pub` connection's).
    published: Vec<(StreamKind, String)>,
    id: u64,
    ended: oneshot::Receiver<PublisherEnd>,
    replaced: oneshot::Receiver<()>,
}

async fn session(mut socket: WebSocket, state: AppState, ua: String) {
    // The first message: `join`, within 10 s.
    let first = match tokio::time::timeout(JOIN_WITHIN, read(&mut socket)).await {
        Err(_) => return close(&mut socket, CLOSE_NO_JOIN, "no join within 10 s").await,
        Ok(Read::Closed) => return,
        Ok(Read::TooBig) => return close(&mut socket, CLOSE_TOO_BIG, "message larger than 64 KiB").await,
        Ok(Read::Bad(why)) => {
            let _ = send(&mut socket, &error_msg(&Value::Null, "bad_message", why)).await;
            return close(&mut socket, CLOSE_NO_JOIN, "the first message must be join").await;
        }
        Ok(Read::Json(v)) => v,
    };
    let msg_id = id_of(&first);
    if first["type"] != "join" {
        let _ = send(&mut socket, &error_msg(&msg_id, "join_first", "the first message must be join")).await;
        return close(&mut socket, CLOSE_NO_JOIN, "the first message must be join").await;
    }
    let mut joined = match join(&state, &first, &ua).await {
        Ok((j, reply)) => {
            let mut reply = reply;
            reply["id"] = msg_id;
            if !send(&mut socket, &reply).await {
                leave(&state, &j, LeaveReason::Left).await;
                return;
            }
            j
        }
        Err(e) => {
            let _ = send(&mut socket, &error_msg(&msg_id, e.code, e.message)).await;
            return close(&mut socket, CLOSE_AUTH, e.code).await;
        }
    };
    let mut events = state.room_events.subscribe();
    tracing::info!(room = %joined.key.room, user = %joined.user, "room signaling joined");
    loop {
        tokio::select! {
            r = tokio::time::timeout(LIVENESS, read(&mut socket)) => match r {
                Err(_) => {
                    tracing::info!(room = %joined.key.room, user = %joined.user, "room signaling lost (no message for 15 s)");
                    leave(&state, &joined, LeaveReason::TimedOut).await;
                    return close(&mut socket, 1001, "no message for 15 s").await;
                }
                Ok(Read::Closed) => {
                    // The socket went away without `leave`: the session is lost (PRODUCT.md §3.4).
                    return leave(&state, &joined, LeaveReason::TimedOut).await;
                }
                Ok(Read::TooBig) => {
                    leave(&state, &joined, LeaveReason::Left).await;
                    return close(&mut socket, CLOSE_TOO_BIG, "message larger than 64 KiB").await;
                }
                Ok(Read::Bad(why)) => {
                    if !send(&mut socket, &error_msg(&Value::Null, "bad_message", why)).await {
                        return leave(&state, &joined, LeaveReason::TimedOut).await;
                    }
                }
                Ok(Read::Json(v)) => {
                    let id = id_of(&v);
                    let reply = match v["type"].as_str().unwrap_or("") {
                        "ping" => json!({"type": "pong", "id": id}),
                        "leave" => {
                            leave(&state, &joined, LeaveReason::Left).await;
                            let _ = send(&mut socket, &json!({"type": "ok", "id": id})).await;
                            return close(&mut socket, 1000, "left").await;
                        }
                        "join" => error_msg(&id, "already_joined", "this session has joined already"),
                        "publish" => match publish(&state, &mut joined, &v).await {
                            Ok(answer) => json!({"type": "answer", "id": id, "pc": "pub", "sdp": answer}),
                            Err(e) => error_msg(&id, e.code, e.message),
                        },
                        "unpublish" => match unpublish(&state, &mut joined, &v).await {
                            Ok(()) => json!({"type": "ok", "id": id}),
                            Err(e) => error_msg(&id, e.code, e.message),
                        },
                        // ICE-lite: the server learns the client's addresses from its checks.
                        "candidate" if v["pc"] == "pub" => json!({"type": "ok", "id": id}),
                        t @ ("subscribe" | "unsubscribe" | "answer" | "candidate" | "mute" | "switch_role" | "update_token" | "custom") => {
                            error_msg(&id, "not_supported", format!("'{t}' is not supported yet by this server"))
                        }
                        t => error_msg(&id, "bad_message", format!("unknown message type '{t}'")),
                    };
                    if !send(&mut socket, &reply).await {
                        return leave(&state, &joined, LeaveReason::TimedOut).await;
                    }
                }
            },
            e = events.recv() => match e {
                Ok(e) => {
                    if let Some(msg) = event_message(&joined, &e) {
                        if !send(&mut socket, &msg).await {
                            return leave(&state, &joined, LeaveReason::TimedOut).await;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => tracing::warn!(missed = n, "room signaling fell behind the room's events"),
                Err(broadcast::error::RecvError::Closed) => return close(&mut socket, 1001, "the server is stopping").await,
            },
            end = &mut joined.ended => {
                let reason = match end {
                    Ok(PublisherEnd::RoomDismissed) => "room_dismissed",
                    Ok(_) => "removed",
                    Err(_) => return close(&mut socket, 1001, "the server is stopping").await,
                };
                state.signaling.sessions.remove_if(&(joined.key.app.clone(), joined.key.room.clone(), joined.user.clone()), |_, (id, _)| *id == joined.id);
                let _ = send(&mut socket, &json!({"type": "kicked", "reason": reason})).await;
                return close(&mut socket, CLOSE_KICKED, reason).await;
            }
            _ = &mut joined.replaced => {
                // A newer login of the same participant took over; it is present already, so
                // leaving here emits no 104.
                leave(&state, &joined, LeaveReason::Left).await;
                let _ = send(&mut socket, &json!({"type": "kicked", "reason": "duplicate_login"})).await;
                return close(&mut socket, CLOSE_KICKED, "duplicate_login").await;
            }
        }
    }
}

/// Checks the token (§4.1–4.3), enters the room and answers `joined`.
async fn join(state: &AppState, msg: &Value, ua: &str) -> Result<(Joined, Value), ApiError> {
    let raw = msg["token"].as_str().ok_or_else(|| ApiError::new(axum::http::StatusCode::UNAUTHORIZED, "token_missing", "join needs a 'token'"))?;
    let token = verify_raw(state, raw, false)?;
    let key = check_entry(state, &token, token.room.as_str(), false).await?;
    let terminal = match msg.get("terminal") {
        None | Some(Value::Null) => JoinInfo::terminal_from_user_agent(ua),
        Some(t) => t.as_u64().filter(|t| [1, 2, 3, 4, 100].contains(t)).map(|t| t as u8).ok_or_else(|| ApiError::invalid_parameter("terminal", "must be 1, 2, 3, 4 or 100"))?,
    };
    let join = JoinInfo { user_type: 1, terminal_type: terminal, role: token.role, info: token.info.clone() };
    let engine = |e: tessera_engine::RtcServerError| ApiError::internal(e.to_string());
    let (id, ended) = state.rtc.join_signaling(key.clone(), token.user.clone(), join).await.map_err(engine)?;
    // A newer login replaces the older (it has joined first, so the participant stays).
    let (replace_tx, replaced) = oneshot::channel();
    if let Some((_, (_, older))) = state.signaling.sessions.remove(&(key.app.clone(), key.room.clone(), token.user.clone())) {
        let _ = older.send(());
    }
    state.signaling.sessions.insert((key.app.clone(), key.room.clone(), token.user.clone()), (id, replace_tx));
    let users = state.rtc.room_users(key.clone()).await.map_err(engine)?.unwrap_or_default();
    let participants: Vec<Value> = users
        .iter()
        .filter(|p| p.user != token.user)
        .map(|p| json!({"user": p.user, "role": p.role.code(), "user_type": p.user_type, "info": p.info, "streams": p.streams.iter().map(|s| s.as_str()).collect::<Vec<_>>()}))
        .collect();
    let reply = json!({
        "type": "joined",
        "session_id": tessera_model::random::session_id(),
        "room": key.room,
        "user": token.user,
        "role": token.role.code(),
        "privileges": token.privileges.bits(),
        "participants": participants,
        "ice_servers": super::whip::ice_servers_json(state),
        "server_time_ms": crate::now_ms(),
    });
    Ok((Joined { key, user: token.user.clone(), token, published: Vec::new(), id, ended, replaced }, reply))
}

async fn leave(state: &AppState, j: &Joined, reason: LeaveReason) {
    state.signaling.sessions.remove_if(&(j.key.app.clone(), j.key.room.clone(), j.user.clone()), |_, (id, _)| *id == j.id);
    // Its publications end with it (the signaling session leaves last, so one 104 covers all).
    for (_, sid) in &j.published {
        let _ = state.rtc.remove_session(sid).await;
    }
    let _ = state.rtc.leave_signaling(j.id, reason).await;
}

/// `publish`: the `pub` connection's offer for one stream, checked like a WHIP offer (§4.2: the
/// privilege of every section; an audience token may not publish), answered by the SFU. A
/// stream published again replaces its older publisher.
async fn publish(state: &AppState, j: &mut Joined, msg: &Value) -> Result<String, ApiError> {
    let stream = match msg["stream"].as_str() {
        None => StreamKind::Main,
        Some(s) => StreamKind::parse(s).ok_or_else(|| ApiError::invalid_parameter("stream", "must be main or aux"))?,
    };
    let sdp = msg["sdp"].as_str().ok_or_else(|| ApiError::invalid_parameter("sdp", "the offer of the pub connection is required"))?;
    if j.token.role != tessera_model::Role::Anchor {
        return Err(ApiError::new(axum::http::StatusCode::FORBIDDEN, "role_not_allowed", "publishing needs the anchor role (20)"));
    }
    let summary = tessera_engine::OfferSummary::parse(sdp).map_err(super::whip::offer_error)?;
    summary.check_publish().map_err(super::whip::offer_error)?;
    for section in summary.media() {
        let required = super::whip::media_privilege(PeerRole::Publish, stream, section.kind);
        j.token.privileges.require(required).map_err(|e| crate::entry::privilege_missing(e.required))?;
    }
    let sid = tessera_model::random::session_id();
    let spec = SessionSpec {
        sid: sid.clone(),
        room: j.key.clone(),
        user: j.user.clone(),
        role: PeerRole::Publish,
        stream,
        source_user: None,
        rejected_mids: Vec::new(),
        quality: Quality::Auto,
        join: JoinInfo { user_type: 1, terminal_type: 100, role: tessera_model::Role::Anchor, info: j.token.info.clone() },
    };
    let answer = state.rtc.add_session(spec, sdp.to_owned()).await.map_err(|e| ApiError::internal(e.to_string()))?.map_err(super::whip::offer_error)?;
    if let Some(old) = j.published.iter().position(|(s, _)| *s == stream) {
        // The SFU closed the older publisher of this stream already (the newest wins).
        j.published.remove(old);
    }
    j.published.push((stream, sid));
    tracing::info!(room = %j.key.room, user = %j.user, stream = %stream, "room signaling publish");
    Ok(answer)
}

/// `unpublish`: the stream's publisher ends (its tracks' 202/204/206).
async fn unpublish(state: &AppState, j: &mut Joined, msg: &Value) -> Result<(), ApiError> {
    let stream = msg["stream"].as_str().and_then(StreamKind::parse).ok_or_else(|| ApiError::invalid_parameter("stream", "must be main or aux"))?;
    let at = j
        .published
        .iter()
        .position(|(s, _)| *s == stream)
        .ok_or_else(|| ApiError::new(axum::http::StatusCode::CONFLICT, "not_published", format!("'{stream}' is not published")))?;
    let (_, sid) = j.published.remove(at);
    let _ = state.rtc.remove_session(&sid).await;
    Ok(())
}

/// A room event as this session's message, if it is about its room and someone else.
fn event_message(j: &Joined, e: &RoomEvent) -> Option<Value> {
    let mine = |room: &RoomKey, user: &UserId| *room == j.key && *user != j.user;
    Some(match e {
        RoomEvent::Entered { room, user, join, .. } if mine(room, user) => {
            json!({"type": "participant_joined", "user": user, "role": join.role.code(), "user_type": join.user_type})
        }
        RoomEvent::Exited { room, user, reason, .. } if mine(room, user) => {
            let reason = match reason {
                2 => "timeout",
                3 => "removed",
                _ => "left",
            };
            json!({"type": "participant_left", "user": user, "reason": reason})
        }
        RoomEvent::TrackStarted { room, user, track } if mine(room, user) => {
            json!({"type": "track_published", "user": user, "stream": track.stream().as_str(), "kind": track.kind()})
        }
        RoomEvent::TrackStopped { room, user, track } if mine(room, user) => {
            json!({"type": "track_unpublished", "user": user, "stream": track.stream().as_str(), "kind": track.kind(), "reason": "unpublished"})
        }
        RoomEvent::RoleChanged { room, user, role } if mine(room, user) => json!({"type": "role_changed", "user": user, "role": role.code()}),
        _ => return None,
    })
}
