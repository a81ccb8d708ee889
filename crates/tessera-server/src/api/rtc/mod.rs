//! Room signaling, `GET /v1/rtc` (PRODUCT.md §7): a WebSocket per participant session.
//!
//! `mod.rs` is the socket: framing and limits, the first `join` (or `resume`), then one loop
//! that reads client messages, relays room events, and ends the session (leave, lost, kicked,
//! replaced). `session.rs` holds what a joined session is and how it joins, parks for a resume
//! and leaves; `media.rs` the messages about media (publish, subscribe, answer, mute);
//! `roles.rs` role switches and token updates; `events.rs` room events as messages.

mod events;
mod media;
mod roles;
mod session;

use super::AppState;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{json, Value};
use session::{Joined, Parked};
use std::time::Duration;
use tessera_engine::presence::LeaveReason;
use tessera_engine::PublisherEnd;
use tokio::sync::broadcast;

pub(crate) use session::codec_name;
pub use session::Signaling;

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

pub async fn signaling(State(state): State<AppState>, headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    let ua = headers.get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let forwarded = headers.contains_key(crate::cluster::FORWARDED);
    ws.max_message_size(MAX_READ).max_frame_size(MAX_READ).on_upgrade(move |socket| run(socket, state, ua, forwarded))
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

/// How the session loop ended.
enum End {
    /// The session is over; its participant has left (or was removed).
    Done,
    /// The socket went away without `leave`: the session waits for a `resume`.
    Lost,
}

/// `forwarded`: another cluster node carries this session (it is served here).
async fn run(mut socket: WebSocket, state: AppState, ua: String, forwarded: bool) {
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
    // Cluster mode: a room another node holds is served there, through this socket.
    if !forwarded {
        if let Some(node) = crate::cluster::signaling_route(&state, &first).await {
            state.metrics.cluster_routed.get_or_create(&crate::metrics::ResultLabel { result: "signaling" }).inc();
            let cluster = state.cluster.get().expect("routed by the cluster").clone();
            return cluster.proxy_signaling(socket, &node, &first, &ua).await;
        }
    }
    let (mut joined, mut reply) = match session::join_or_resume(&state, &first, &ua).await {
        Ok(j) => j,
        Err(e) => {
            let _ = send(&mut socket, &error_msg(&msg_id, e.code, e.message)).await;
            return close(&mut socket, CLOSE_AUTH, e.code).await;
        }
    };
    reply["id"] = msg_id;
    // Subscribe to room events before the snapshot is sent, so nothing falls between them.
    let mut events = state.room_events.subscribe();
    let mut outbox = Vec::new();
    if send(&mut socket, &reply).await {
        media::reconcile(&state, &mut joined, &mut outbox).await;
        tracing::info!(room = %joined.key.room, user = %joined.user(), resumed = %reply["resumed"], "room signaling joined");
        match serve(&mut socket, &state, &mut joined, &mut events, outbox).await {
            End::Done => return,
            End::Lost => {}
        }
    }
    Parked::park(state, joined);
}

/// Sends what is queued for the client, written out together (one flush, not one per
/// message: a busy room's custom messages come in bursts). False when the socket is gone.
async fn flush(socket: &mut WebSocket, outbox: &mut Vec<Value>) -> bool {
    use futures_util::SinkExt;
    if outbox.is_empty() {
        return true;
    }
    for m in outbox.drain(..) {
        if socket.feed(Message::Text(Utf8Bytes::from(m.to_string()))).await.is_err() {
            return false;
        }
    }
    socket.flush().await.is_ok()
}

async fn serve(socket: &mut WebSocket, state: &AppState, joined: &mut Joined, events: &mut broadcast::Receiver<tessera_engine::RoomEvent>, mut outbox: Vec<Value>) -> End {
    loop {
        if !flush(socket, &mut outbox).await {
            return End::Lost;
        }
        tokio::select! {
            r = tokio::time::timeout(LIVENESS, read(socket)) => match r {
                Err(_) => {
                    tracing::info!(room = %joined.key.room, user = %joined.user(), "room signaling lost (no message for 15 s)");
                    joined.leave(state, LeaveReason::TimedOut).await;
                    close(socket, 1001, "no message for 15 s").await;
                    return End::Done;
                }
                Ok(Read::Closed) => return End::Lost,
                Ok(Read::TooBig) => {
                    joined.leave(state, LeaveReason::Left).await;
                    close(socket, CLOSE_TOO_BIG, "message larger than 64 KiB").await;
                    return End::Done;
                }
                Ok(Read::Bad(why)) => outbox.push(error_msg(&Value::Null, "bad_message", why)),
                Ok(Read::Json(v)) => {
                    let id = id_of(&v);
                    match handle(state, joined, &v, &id, &mut outbox).await {
                        Flow::Continue => {}
                        Flow::Left => {
                            joined.leave(state, LeaveReason::Left).await;
                            let _ = send(socket, &json!({"type": "ok", "id": id})).await;
                            close(socket, 1000, "left").await;
                            return End::Done;
                        }
                        Flow::Kicked(reason) => {
                            joined.leave(state, LeaveReason::Removed).await;
                            let _ = flush(socket, &mut outbox).await;
                            let _ = send(socket, &json!({"type": "kicked", "reason": reason})).await;
                            close(socket, CLOSE_KICKED, reason).await;
                            return End::Done;
                        }
                    }
                }
            },
            e = events.recv() => match e {
                Ok(e) => events::on_room_event(state, joined, &e, &mut outbox).await,
                Err(broadcast::error::RecvError::Lagged(n)) => tracing::warn!(missed = n, "room signaling fell behind the room's events"),
                Err(broadcast::error::RecvError::Closed) => {
                    close(socket, 1001, "the server is stopping").await;
                    return End::Done;
                }
            },
            Some(msg) = joined.inbox.recv() => {
                outbox.push(member_message(msg));
                while let Ok(msg) = joined.inbox.try_recv() {
                    outbox.push(member_message(msg));
                }
            }
            () = session::next_stats(&mut joined.stats) => {
                if let Ok(tracks) = state.rtc.user_tracks(joined.key.clone(), joined.user().clone()).await {
                    let tracks: Vec<Value> = tracks.iter().map(|t| super::rooms::track_stats(joined.user(), t)).collect();
                    outbox.push(json!({"type": "stats", "tracks": tracks}));
                }
            }
            Some((user, stream, video)) = session::next_first_media(&mut joined.sub) => {
                outbox.push(json!({"type": "first_media", "user": user, "stream": stream.as_str(), "kind": if video { "video" } else { "audio" }}));
            }
            end = &mut joined.ended => {
                let reason = match end {
                    Ok(PublisherEnd::RoomDismissed) => "room_dismissed",
                    Ok(_) => "removed",
                    Err(_) => {
                        close(socket, 1001, "the server is stopping").await;
                        return End::Done;
                    }
                };
                // The SFU has ended the participant's sessions; what is left is ours to close.
                joined.forget(state).await;
                let _ = send(socket, &json!({"type": "kicked", "reason": reason})).await;
                close(socket, CLOSE_KICKED, reason).await;
                return End::Done;
            }
            _ = &mut joined.replaced => {
                // A newer login of the same participant took over; it is present already, so
                // leaving here emits no 104.
                joined.leave(state, LeaveReason::Left).await;
                let _ = send(socket, &json!({"type": "kicked", "reason": "duplicate_login"})).await;
                close(socket, CLOSE_KICKED, "duplicate_login").await;
                return End::Done;
            }
        }
    }
}

/// `custom` over the socket (PRODUCT.md §8: reliable and ordered): anchors only, `cmd_id` 1–10,
/// at most 1000 bytes decoded, the sender's rate limit (shared with its data channels);
/// delivered by the SFU to everyone else in the room or to the `to` list, with the sender's
/// `seq` (the sender gets `ok` with it). A message over the limit is dropped without a reply;
/// `custom_rate_limited` comes at most once a second.
async fn custom(state: &AppState, j: &mut Joined, v: &Value) -> Result<Option<u32>, crate::error::ApiError> {
    use crate::error::ApiError;
    use base64::Engine;
    use tessera_engine::custom::CustomError;
    if j.token.role != tessera_model::Role::Anchor {
        return Err(custom_error(CustomError::NotAnchor));
    }
    let cmd_id = v["cmd_id"].as_u64().filter(|c| *c <= 255).ok_or_else(|| custom_error(CustomError::BadCmdId))? as u8;
    let data = v["data"].as_str().ok_or_else(|| ApiError::invalid_parameter("data", "base64 of the payload"))?;
    let payload = base64::engine::general_purpose::STANDARD.decode(data).map_err(|_| ApiError::invalid_parameter("data", "not base64"))?;
    let to: Option<Vec<tessera_model::UserId>> = match v.get("to") {
        None | Some(Value::Null) => None,
        Some(list) => Some(
            list.as_array()
                .ok_or_else(|| ApiError::invalid_parameter("to", "a list of user ids"))?
                .iter()
                .map(|u| u.as_str().and_then(|u| tessera_model::UserId::parse(u).ok()))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| ApiError::invalid_parameter("to", "a list of user ids"))?,
        ),
    };
    state.rtc.send_custom(j.key.clone(), j.user().clone(), cmd_id, payload, to).await?.map_err(custom_error)
}

/// A refused custom message as the API error of its code.
fn custom_error(e: tessera_engine::custom::CustomError) -> crate::error::ApiError {
    use axum::http::StatusCode;
    use tessera_engine::custom::CustomError;
    let status = match e {
        CustomError::NotAnchor => StatusCode::FORBIDDEN,
        CustomError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        CustomError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        CustomError::BadCmdId | CustomError::Malformed => StatusCode::BAD_REQUEST,
    };
    crate::error::ApiError::new(status, e.code(), e.message())
}

/// What the SFU has for the session, as a message.
fn member_message(m: tessera_engine::MemberMessage) -> Value {
    use base64::Engine;
    match m {
        tessera_engine::MemberMessage::Custom { from, cmd_id, seq, payload } => {
            json!({"type": "custom", "from": from, "cmd_id": cmd_id, "seq": seq, "data": base64::engine::general_purpose::STANDARD.encode(&payload)})
        }
        tessera_engine::MemberMessage::Refused(e) => error_msg(&Value::Null, e.code(), e.message()),
    }
}

/// What a client message does to the session.
enum Flow {
    Continue,
    Left,
    Kicked(&'static str),
}

/// One client message after `join`: its reply (and any follow-up) goes to `outbox`.
async fn handle(state: &AppState, j: &mut Joined, v: &Value, id: &Value, outbox: &mut Vec<Value>) -> Flow {
    let ok = || json!({"type": "ok", "id": id});
    let result: Result<Option<Value>, crate::error::ApiError> = match v["type"].as_str().unwrap_or("") {
        "ping" => Ok(Some(json!({"type": "pong", "id": id}))),
        "leave" => return Flow::Left,
        "join" => Ok(Some(error_msg(id, "already_joined", "this session has joined already"))),
        "publish" => media::publish(state, j, v).await.map(|sdp| Some(json!({"type": "answer", "id": id, "pc": "pub", "sdp": sdp}))),
        "unpublish" => media::unpublish(state, j, v).await.map(|()| Some(ok())),
        "subscribe" => media::subscribe(state, j, v).await.map(|offer| Some(media::offer_or_ok(offer, id))),
        "unsubscribe" => media::unsubscribe(state, j, v).await.map(|offer| Some(media::offer_or_ok(offer, id))),
        "answer" => media::answer(state, j, v).await.map(|next| {
            outbox.push(ok());
            next.map(|o| media::offer_or_ok(Some(o), &Value::Null))
        }),
        // ICE-lite: the server learns the client's addresses from its checks.
        "candidate" => match v["pc"].as_str() {
            Some("pub" | "sub") => Ok(Some(ok())),
            _ => Err(crate::error::ApiError::invalid_parameter("pc", "must be pub or sub")),
        },
        "mute" => media::mute(state, j, v).await.map(|()| Some(ok())),
        "switch_role" => match roles::switch_role(state, j, v).await {
            Ok(roles::Switched::Done) => Ok(Some(ok())),
            Ok(roles::Switched::TokenExpired) => return Flow::Kicked("token_expired"),
            Err(e) => Err(e),
        },
        "update_token" => roles::update_token(state, j, v, outbox).await.map(|()| Some(ok())),
        "custom" => custom(state, j, v).await.map(|seq| seq.map(|seq| json!({"type": "ok", "id": id, "seq": seq}))),
        t => Ok(Some(error_msg(id, "bad_message", format!("unknown message type '{t}'")))),
    };
    match result {
        Ok(Some(reply)) => outbox.push(reply),
        Ok(None) => {}
        Err(e) => outbox.push(error_msg(id, e.code, e.message)),
    }
    Flow::Continue
}
