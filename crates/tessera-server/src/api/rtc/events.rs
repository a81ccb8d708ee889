//! Room events as room-signaling messages, and what they do to the session's subscriptions:
//! a stream that gets media is subscribed to (with `auto_subscribe`), one whose media all
//! stopped is unsubscribed (its sections stop at the next offer).

use super::media;
use super::session::Joined;
use super::AppState;
use serde_json::{json, Value};
use tessera_engine::{RoomEvent, RoomKey};
use tessera_media::StreamKind;
use tessera_model::{Role, UserId};

pub(super) async fn on_room_event(state: &AppState, j: &mut Joined, e: &RoomEvent, outbox: &mut Vec<Value>) {
    let Some(msg) = message(j, e) else { return };
    outbox.push(msg);
    match e {
        RoomEvent::TrackStarted { user, track, .. } => {
            let entry = (user.clone(), track.stream(), track.kind() == "video");
            if !j.live.contains(&entry) {
                j.live.push(entry);
            }
            media::auto_subscribe(state, j, user, track.stream(), outbox).await;
        }
        RoomEvent::TrackStopped { user, track, .. } => {
            j.live.retain(|(u, s, v)| !(u == user && *s == track.stream() && *v == (track.kind() == "video")));
            if !j.live.iter().any(|(u, s, _)| u == user && *s == track.stream()) {
                drop_subscription(state, j, user, Some(track.stream()), outbox).await;
            }
        }
        RoomEvent::Exited { user, .. } | RoomEvent::RoleChanged { user, role: Role::Audience, .. } => {
            j.live.retain(|(u, ..)| u != user);
            drop_subscription(state, j, user, None, outbox).await;
        }
        _ => {}
    }
}

/// Ends the subscriptions to `user`'s `stream` (or all its streams) that are still held.
async fn drop_subscription(state: &AppState, j: &mut Joined, user: &UserId, stream: Option<StreamKind>, outbox: &mut Vec<Value>) {
    let held: Vec<(UserId, StreamKind)> =
        j.sub.as_ref().map(|s| s.subscribed.iter().filter(|(u, s)| u == user && stream.is_none_or(|x| x == *s)).cloned().collect()).unwrap_or_default();
    for source in held {
        match media::unsubscribe_from(state, j, source).await {
            Ok(Some(offer)) => outbox.push(media::offer_or_ok(Some(offer), &Value::Null)),
            Ok(None) => {}
            Err(e) => tracing::debug!("unsubscribing a gone stream: {}", e.message),
        }
    }
}

/// A room event as this session's message, if it is about its room and someone else.
fn message(j: &Joined, e: &RoomEvent) -> Option<Value> {
    let mine = |room: &RoomKey, user: &UserId| *room == j.key && user != j.user();
    Some(match e {
        RoomEvent::Entered { room, user, join, .. } if mine(room, user) => {
            json!({"type": "participant_joined", "user": user, "role": join.role.code(), "user_type": join.user_type, "info": join.info})
        }
        RoomEvent::Exited { room, user, reason, .. } if mine(room, user) => {
            let reason = match reason {
                2 => "timeout",
                3 => "removed",
                _ => "left",
            };
            json!({"type": "participant_left", "user": user, "reason": reason})
        }
        RoomEvent::TrackStarted { room, user, track, media } if mine(room, user) => {
            json!({"type": "track_published", "user": user, "stream": track.stream().as_str(), "kind": track.kind(), "codec": super::session::codec_name(media.codec), "layers": media.layers})
        }
        RoomEvent::TrackStopped { room, user, track } if mine(room, user) => {
            json!({"type": "track_unpublished", "user": user, "stream": track.stream().as_str(), "kind": track.kind(), "reason": "unpublished"})
        }
        RoomEvent::TrackMuted { room, user, track, muted } if mine(room, user) => {
            json!({"type": "track_muted", "user": user, "stream": track.stream().as_str(), "kind": track.kind(), "muted": muted})
        }
        RoomEvent::RoleChanged { room, user, role } if mine(room, user) => json!({"type": "role_changed", "user": user, "role": role.code()}),
        RoomEvent::ActiveSpeakers { room, speakers } if *room == j.key => {
            let speakers: Vec<Value> = speakers.iter().map(|(user, level)| json!({"user": user, "level": level})).collect();
            json!({"type": "active_speakers", "speakers": speakers})
        }
        RoomEvent::Quality { room, reports } if *room == j.key => {
            let round = |x: Option<f64>| x.map(|v| (v * 10.0).round() / 10.0);
            let local = reports.iter().find(|r| r.user == *j.user())?;
            let remote: Vec<Value> = reports.iter().filter(|r| r.user != *j.user()).map(|r| json!({"user": r.user, "uplink": r.uplink})).collect();
            json!({"type": "quality", "local": {
                "uplink": local.uplink, "downlink": local.downlink,
                "uplink_rtt": round(local.uplink_rtt), "uplink_loss": round(local.uplink_loss),
                "downlink_rtt": round(local.downlink_rtt), "downlink_loss": round(local.downlink_loss),
            }, "remote": remote})
        }
        _ => return None,
    })
}
