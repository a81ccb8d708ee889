//! Media messages of room signaling: `publish`/`unpublish` on the client-offered `pub`
//! connection, `subscribe`/`unsubscribe`/`answer` on the server-offered `sub` connection, and
//! `mute`. Privileges are checked here, per section, as for WHIP and WHEP (PRODUCT.md §4.2).

use super::session::{Joined, Subscriber};
use super::AppState;
use crate::api::whip::{media_privilege, offer_error, quality_param, stream_param};
use crate::error::ApiError;
use axum::http::StatusCode;
use serde_json::{json, Value};
use tessera_engine::{JoinInfo, PeerRole, Quality, SectionKind, SessionSpec, SubscribeRequest, SubscriberError, SubscriberOffer, Track};
use tessera_media::StreamKind;
use tessera_model::{Role, UserId};

/// The message's `stream`: main when absent if `default_main`, else required.
fn stream_of(msg: &Value, default_main: bool) -> Result<StreamKind, ApiError> {
    match msg["stream"].as_str() {
        None if !default_main => Err(ApiError::invalid_parameter("stream", "must be main or aux")),
        s => stream_param(s),
    }
}

fn flag(msg: &Value, name: &str) -> Result<bool, ApiError> {
    match msg.get(name) {
        None | Some(Value::Null) => Ok(true),
        Some(v) => v.as_bool().ok_or_else(|| ApiError::invalid_parameter(name, "must be true or false")),
    }
}

fn subscriber_error(e: SubscriberError) -> ApiError {
    match e {
        SubscriberError::NoOfferPending => ApiError::new(StatusCode::CONFLICT, "no_offer_pending", "there is no offer of the sub connection to answer"),
        SubscriberError::BadAnswer(why) => ApiError::new(StatusCode::BAD_REQUEST, "sdp_invalid", format!("the answer was refused: {why}")),
        SubscriberError::UnknownSession => ApiError::new(StatusCode::CONFLICT, "no_subscriber", "there is no sub connection yet; subscribe first"),
    }
}

/// `offer` for the `sub` connection (with what each section carries), or `ok` when nothing
/// needed negotiating now.
pub(super) fn offer_or_ok(offer: Option<SubscriberOffer>, id: &Value) -> Value {
    match offer {
        None => json!({"type": "ok", "id": id}),
        Some(o) => {
            let tracks: Vec<Value> =
                o.tracks.iter().map(|t| json!({"mid": t.mid, "user": t.user, "stream": t.stream.as_str(), "kind": if t.video { "video" } else { "audio" }})).collect();
            json!({"type": "offer", "id": id, "pc": "sub", "sdp": o.sdp, "tracks": tracks})
        }
    }
}

/// An SFU session of this participant's (a `pub` or the `sub` connection): UserType 1 like
/// its signaling session, so it joins the same participant.
fn session_spec(j: &Joined, sid: &str, role: PeerRole, stream: StreamKind, as_role: Role) -> SessionSpec {
    SessionSpec {
        sid: sid.to_owned(),
        room: j.key.clone(),
        user: j.user().clone(),
        role,
        stream,
        source_user: None,
        rejected_mids: Vec::new(),
        quality: Quality::Auto,
        join: JoinInfo { user_type: 1, terminal_type: 100, role: as_role, info: j.token.info.clone() },
    }
}

/// `publish`: the `pub` connection's offer for one stream, checked like a WHIP offer (§4.2: the
/// privilege of every section; an audience token may not publish), answered by the SFU. A
/// stream published again replaces its older publisher.
pub(super) async fn publish(state: &AppState, j: &mut Joined, msg: &Value) -> Result<String, ApiError> {
    let stream = stream_of(msg, true)?;
    let sdp = msg["sdp"].as_str().ok_or_else(|| ApiError::invalid_parameter("sdp", "the offer of the pub connection is required"))?;
    if j.token.role != Role::Anchor {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "role_not_allowed", "publishing needs the anchor role (20); switch_role first"));
    }
    let summary = tessera_engine::OfferSummary::parse(sdp).map_err(offer_error)?;
    summary.check_publish().map_err(offer_error)?;
    for section in summary.media() {
        let required = media_privilege(PeerRole::Publish, stream, section.kind);
        j.token.privileges.require(required).map_err(|e| crate::entry::privilege_missing(e.required))?;
    }
    let sid = tessera_model::random::session_id();
    let spec = session_spec(j, &sid, PeerRole::Publish, stream, Role::Anchor);
    let answer = state.rtc.add_session(spec, sdp.to_owned()).await?.map_err(offer_error)?;
    // The SFU closed an older publisher of this stream already (the newest wins).
    j.published.retain(|(s, ..)| *s != stream);
    j.published.push((stream, sid, summary.media().map(|m| m.kind).collect()));
    tracing::info!(room = %j.key.room, user = %j.user(), stream = %stream, "room signaling publish");
    Ok(answer)
}

/// `unpublish`: the stream's publisher ends (its tracks' 202/204/206).
pub(super) async fn unpublish(state: &AppState, j: &mut Joined, msg: &Value) -> Result<(), ApiError> {
    let stream = stream_of(msg, false)?;
    let at = j.published.iter().position(|(s, ..)| *s == stream).ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "not_published", format!("'{stream}' is not published")))?;
    let (_, sid, _) = j.published.remove(at);
    let _ = state.rtc.remove_session(&sid).await;
    Ok(())
}

/// The kinds of (user, stream) this token may receive: (audio, video).
fn allowed(j: &Joined, stream: StreamKind) -> (bool, bool) {
    let may = |kind| j.token.privileges.require(media_privilege(PeerRole::Play, stream, kind)).is_ok();
    (may(SectionKind::Audio), may(SectionKind::Video))
}

/// `subscribe`: adds (user, stream) to the `sub` connection, made on the first subscription.
pub(super) async fn subscribe(state: &AppState, j: &mut Joined, msg: &Value) -> Result<Option<SubscriberOffer>, ApiError> {
    let user = msg["user"].as_str().and_then(|u| UserId::parse(u).ok()).ok_or_else(|| ApiError::invalid_parameter("user", "a user id of the room"))?;
    let stream = stream_of(msg, true)?;
    let (audio, video) = (flag(msg, "audio")?, flag(msg, "video")?);
    let quality = quality_param(msg["quality"].as_str())?;
    if !audio && !video {
        return Err(ApiError::invalid_parameter("audio", "subscribe to audio, video or both"));
    }
    for (wanted, kind) in [(audio, SectionKind::Audio), (video, SectionKind::Video)] {
        if wanted {
            j.token.privileges.require(media_privilege(PeerRole::Play, stream, kind)).map_err(|e| crate::entry::privilege_missing(e.required))?;
        }
    }
    if user == *j.user() {
        return Err(ApiError::invalid_parameter("user", "a participant does not subscribe to itself"));
    }
    subscribe_to(state, j, SubscribeRequest { source: (user, stream), audio, video, quality }).await
}

async fn subscribe_to(state: &AppState, j: &mut Joined, req: SubscribeRequest) -> Result<Option<SubscriberOffer>, ApiError> {
    if j.sub.is_none() {
        let sid = tessera_model::random::session_id();
        let spec = session_spec(j, &sid, PeerRole::Play, StreamKind::Main, j.token.role);
        let (_, first_media) = state.rtc.add_subscriber(spec).await?.map_err(offer_error)?;
        j.sub = Some(Subscriber { sid, first_media, subscribed: Vec::new() });
    }
    let sub = j.sub.as_mut().expect("made above");
    let source = req.source.clone();
    let offer = state.rtc.subscribe(&sub.sid, req).await?.map_err(subscriber_error)?;
    if !sub.subscribed.contains(&source) {
        sub.subscribed.push(source);
    }
    Ok(offer)
}

/// `unsubscribe`: the stream's sections stop at the next offer.
pub(super) async fn unsubscribe(state: &AppState, j: &mut Joined, msg: &Value) -> Result<Option<SubscriberOffer>, ApiError> {
    let user = msg["user"].as_str().and_then(|u| UserId::parse(u).ok()).ok_or_else(|| ApiError::invalid_parameter("user", "a user id of the room"))?;
    let stream = stream_of(msg, true)?;
    unsubscribe_from(state, j, (user, stream)).await
}

pub(super) async fn unsubscribe_from(state: &AppState, j: &mut Joined, source: (UserId, StreamKind)) -> Result<Option<SubscriberOffer>, ApiError> {
    let Some(sub) = j.sub.as_mut().filter(|s| s.subscribed.contains(&source)) else {
        return Err(ApiError::new(StatusCode::CONFLICT, "not_subscribed", format!("not subscribed to {}'s {}", source.0, source.1)));
    };
    sub.subscribed.retain(|s| *s != source);
    state.rtc.unsubscribe(&sub.sid, source).await?.map_err(subscriber_error)
}

/// `answer` (pc `sub`): the client's answer to the last offer; changes asked meanwhile come in
/// the next offer.
pub(super) async fn answer(state: &AppState, j: &mut Joined, msg: &Value) -> Result<Option<SubscriberOffer>, ApiError> {
    if msg["pc"] != "sub" {
        return Err(ApiError::invalid_parameter("pc", "only the sub connection is offered by the server"));
    }
    let sdp = msg["sdp"].as_str().ok_or_else(|| ApiError::invalid_parameter("sdp", "the answer is required"))?;
    let sub = j.sub.as_ref().ok_or_else(|| subscriber_error(SubscriberError::NoOfferPending))?;
    state.rtc.subscriber_answer(&sub.sid, sdp.to_owned()).await?.map_err(subscriber_error)
}

/// `mute`: a published track is muted or unmuted (others get `track_muted`; webhooks 202/204/206
/// or 201/203/205). The client stops sending; the server only tells.
pub(super) async fn mute(state: &AppState, j: &mut Joined, msg: &Value) -> Result<(), ApiError> {
    let stream = stream_of(msg, true)?;
    let video = match msg["kind"].as_str() {
        Some("audio") => false,
        Some("video") => true,
        _ => return Err(ApiError::invalid_parameter("kind", "must be audio or video")),
    };
    let muted = msg["muted"].as_bool().ok_or_else(|| ApiError::invalid_parameter("muted", "must be true or false"))?;
    if !state.rtc.mute(j.key.clone(), j.user().clone(), Track::of(stream, video), muted).await? {
        return Err(ApiError::new(StatusCode::CONFLICT, "not_published", "that track is not published (or has sent no media yet)"));
    }
    Ok(())
}

/// Subscribes to a stream with media of someone else, when the session auto-subscribes and may
/// receive something of it. Offers go to `outbox`.
pub(super) async fn auto_subscribe(state: &AppState, j: &mut Joined, user: &UserId, stream: StreamKind, outbox: &mut Vec<Value>) {
    // A mix's output shows the room again: it is subscribed to on request, never by itself.
    if !j.auto_subscribe || user == j.user() || user.is_mix() || j.sub.as_ref().is_some_and(|s| s.subscribed.iter().any(|(u, s)| u == user && *s == stream)) {
        return;
    }
    let (audio, video) = allowed(j, stream);
    if !audio && !video {
        return;
    }
    match subscribe_to(state, j, SubscribeRequest { source: (user.clone(), stream), audio, video, quality: Quality::Auto }).await {
        Ok(Some(offer)) => outbox.push(offer_or_ok(Some(offer), &Value::Null)),
        Ok(None) => {}
        Err(e) => tracing::warn!(user = %user, "auto-subscribe failed: {}", e.message),
    }
}

/// At join, and again at a resume (events may have been missed meanwhile): the streams with
/// media now are subscribed to, and subscriptions to streams gone are dropped.
pub(super) async fn reconcile(state: &AppState, j: &mut Joined, outbox: &mut Vec<Value>) {
    if let Some(sub) = &j.sub {
        if let Ok(Some(offer)) = state.rtc.pending_offer(&sub.sid).await {
            outbox.push(offer_or_ok(Some(offer), &Value::Null));
        }
    }
    let Ok(Some(users)) = state.rtc.room_users(j.key.clone()).await else { return };
    let me = j.user().clone();
    j.live = users.iter().filter(|p| p.user != me).flat_map(|p| p.tracks.iter().map(|t| (p.user.clone(), t.track.stream(), t.track.kind() == "video"))).collect();
    let gone: Vec<(UserId, StreamKind)> =
        j.sub.as_ref().map(|s| s.subscribed.iter().filter(|(u, st)| !j.live.iter().any(|(lu, ls, _)| lu == u && ls == st)).cloned().collect()).unwrap_or_default();
    for source in gone {
        if let Ok(Some(offer)) = unsubscribe_from(state, j, source).await {
            outbox.push(offer_or_ok(Some(offer), &Value::Null));
        }
    }
    let live: Vec<(UserId, StreamKind)> = j.live.iter().map(|(u, s, _)| (u.clone(), *s)).collect();
    for (user, stream) in live {
        auto_subscribe(state, j, &user, stream, outbox).await;
    }
}
