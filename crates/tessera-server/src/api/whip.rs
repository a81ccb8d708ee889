//! WHIP (RFC 9725) publish and WHEP play (PRODUCT.md §6.1–6.2): the HTTP half. Checks run in
//! the order of §5: credential, token binding/role/enter and create privileges, content type
//! and size, SDP, media privileges, then existence. The media half is the engine's SFU.

use super::auth::bearer;
use super::ApiQuery;
use super::AppState;
use crate::entry::{check_entry, privilege_missing, verify_raw};
use crate::error::ErrorBody;
use crate::error::{ApiError, ApiResult};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tessera_engine::presence::{user_type, JoinInfo};
use tessera_engine::{OfferSummary, PeerRole, Quality, SectionKind, SessionSpec};
use tessera_media::StreamKind;
use tessera_model::privileges::Privileges;
use tessera_model::token::{TokenError, UserToken};
use tessera_model::{Role, UserId};

/// WHEP sessions one user may have open in a room (PRODUCT.md §3.4, §12).
pub const MAX_WHEP_PER_USER: usize = 10;

/// Largest SDP body accepted (PRODUCT.md §12).
pub const MAX_SDP_BODY: usize = 64 * 1024;

fn verify_token(state: &AppState, headers: &HeaderMap, allow_expired: bool) -> ApiResult<UserToken> {
    let raw = bearer(headers).ok_or(TokenError::Missing)?;
    verify_raw(state, raw, allow_expired)
}

/// The privilege a media section needs (PRODUCT.md §4.2): aux has one bit per direction, main
/// one per kind and direction.
pub(super) fn media_privilege(role: PeerRole, stream: StreamKind, kind: SectionKind) -> Privileges {
    match (role, stream, kind) {
        (PeerRole::Publish, StreamKind::Aux, _) => Privileges::PUBLISH_AUX,
        (PeerRole::Publish, StreamKind::Main, SectionKind::Audio) => Privileges::PUBLISH_AUDIO,
        (PeerRole::Publish, StreamKind::Main, _) => Privileges::PUBLISH_VIDEO,
        (PeerRole::Play, StreamKind::Aux, _) => Privileges::SUBSCRIBE_AUX,
        (PeerRole::Play, StreamKind::Main, SectionKind::Audio) => Privileges::SUBSCRIBE_AUDIO,
        (PeerRole::Play, StreamKind::Main, _) => Privileges::SUBSCRIBE_VIDEO,
    }
}

/// Content type and size, then the SDP text.
fn read_offer(headers: &HeaderMap, body: &Result<Bytes, BytesRejection>) -> ApiResult<(String, OfferSummary)> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/sdp") {
        return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", format!("expected Content-Type application/sdp, got '{ct}'")));
    }
    let body = sdp_body(body)?;
    let text = std::str::from_utf8(body).map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "sdp_invalid", "the SDP is not UTF-8"))?;
    let summary = OfferSummary::parse(text).map_err(offer_error)?;
    Ok((text.to_owned(), summary))
}

/// The body within the SDP size limit (the route's body limit is a little larger, so that an
/// oversized body reaches this check after authentication).
fn sdp_body(body: &Result<Bytes, BytesRejection>) -> ApiResult<&Bytes> {
    match body {
        Ok(b) if b.len() <= MAX_SDP_BODY => Ok(b),
        Ok(_) => Err(super::json::payload_too_large(MAX_SDP_BODY)),
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(super::json::payload_too_large(MAX_SDP_BODY)),
        Err(r) => Err(ApiError::new(StatusCode::BAD_REQUEST, "sdp_invalid", format!("could not read the body: {r}"))),
    }
}

pub(super) fn offer_error(e: tessera_engine::OfferError) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, e.code(), e.to_string())
}

pub(super) fn stream_param(s: Option<&str>) -> ApiResult<StreamKind> {
    match s {
        None => Ok(StreamKind::Main),
        Some(s) => StreamKind::parse(s).ok_or_else(|| ApiError::invalid_parameter("stream", "must be main or aux")),
    }
}

/// `quality=auto|h|m|l` (WHEP) or a subscription's `quality`; absent means auto.
pub(super) fn quality_param(q: Option<&str>) -> ApiResult<Quality> {
    match q {
        None => Ok(Quality::Auto),
        Some(s) => Quality::parse(s).ok_or_else(|| ApiError::invalid_parameter("quality", "must be auto, h, m or l")),
    }
}

/// The configured ICE servers in the RTCIceServer shape (`joined.ice_servers`).
pub fn ice_servers_json(state: &AppState) -> serde_json::Value {
    use crate::config::IceServer;
    state
        .config
        .ice_servers
        .iter()
        .map(|server| match server {
            IceServer::Url(u) => serde_json::json!({"urls": [u]}),
            IceServer::Full { urls, username, credential } => serde_json::json!({"urls": urls, "username": username, "credential": credential}),
        })
        .collect()
}

fn link_headers(state: &AppState) -> Vec<HeaderValue> {
    use crate::config::IceServer;
    let mut out = Vec::new();
    for server in &state.config.ice_servers {
        let (urls, user, cred) = match server {
            IceServer::Url(u) => (vec![u.clone()], None, None),
            IceServer::Full { urls, username, credential } => (urls.clone(), username.clone(), credential.clone()),
        };
        for u in urls {
            let mut v = format!("<{u}>; rel=\"ice-server\"");
            if let (Some(user), Some(cred)) = (&user, &cred) {
                v.push_str(&format!("; username=\"{user}\"; credential=\"{cred}\"; credential-type=\"password\""));
            }
            if let Ok(h) = HeaderValue::from_str(&v) {
                out.push(h);
            }
        }
    }
    out
}

fn created(state: &AppState, kind: &str, sid: &str, answer: String) -> Response {
    let ufrag = answer.lines().find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:")).unwrap_or("").to_owned();
    let mut resp = (StatusCode::CREATED, [(header::CONTENT_TYPE, "application/sdp")], answer).into_response();
    let h = resp.headers_mut();
    h.insert(header::LOCATION, HeaderValue::from_str(&format!("/{kind}/session/{sid}")).expect("sid is ASCII"));
    if let Ok(v) = HeaderValue::from_str(&format!("\"{ufrag}\"")) {
        h.insert(header::ETAG, v);
    }
    h.insert("accept-patch", HeaderValue::from_static("application/trickle-ice-sdpfrag"));
    for l in link_headers(state) {
        h.append(header::LINK, l);
    }
    resp
}

#[derive(Debug, Deserialize)]
pub struct WhipQuery {
    stream: Option<String>,
}

/// `POST /whip/{room}[?stream=main|aux]`
#[utoipa::path(post, operation_id = "whip.publish", path = "/whip/{room}", tag = "whip-whep", params(("room" = String, Path, description = "room id"), ("stream" = Option<String>, Query, description = "main (default) or aux")), request_body(content = String, content_type = "application/sdp", description = "The SDP offer"),
    responses((status = 201, description = "The SDP answer; Location, ETag, Accept-Patch and one Link per ICE server", content_type = "application/sdp", body = String), (status = "4XX", description = "Refused: the JSON error", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("user_token" = [])))]
pub async fn publish(
    State(state): State<AppState>,
    Path(room): Path<String>,
    ApiQuery(q): ApiQuery<WhipQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let token = verify_token(&state, &headers, false)?;
    let key = check_entry(&state, &token, &room, true).await?;
    let (offer, summary) = read_offer(&headers, &body)?;
    let stream = stream_param(q.stream.as_deref())?;
    summary.check_publish().map_err(offer_error)?;
    for section in summary.media() {
        let required = media_privilege(PeerRole::Publish, stream, section.kind);
        token.privileges.require(required).map_err(|e| privilege_missing(e.required))?;
    }
    let sid = tessera_model::random::session_id();
    let spec = SessionSpec {
        sid: sid.clone(),
        room: key,
        user: token.user.clone(),
        role: PeerRole::Publish,
        stream,
        source_user: None,
        rejected_mids: Vec::new(),
        quality: Quality::Auto,
        join: join_info(&token, &headers, user_type::WHIP),
    };
    let answer = state.rtc.add_session(spec, offer).await.map_err(|e| ApiError::internal(e.to_string()))?.map_err(offer_error)?;
    tracing::info!(sid = %sid, user = %token.user, room = %token.room, "WHIP session created");
    Ok(created(&state, "whip", &sid, answer))
}

/// `POST /v1/speedtest` (PRODUCT.md §9): a user token of the app with privilege 2 (its room
/// claim is ignored) and an SDP offer whose only section is the data channels' (the client opens
/// `speedtest-ctl` and `speedtest-data`); answered like WHIP. At most 20 run at once per app.
#[utoipa::path(post, operation_id = "speedtest.start", path = "/v1/speedtest", tag = "whip-whep", request_body(content = String, content_type = "application/sdp", description = "The SDP offer (data channels only)"),
    responses((status = 201, description = "The SDP answer; the test runs on the data channels", content_type = "application/sdp", body = String), (status = "4XX", description = "Refused: the JSON error", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("user_token" = [])))]
pub async fn speed_test(State(state): State<AppState>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> ApiResult<Response> {
    let token = verify_token(&state, &headers, false)?;
    token.privileges.require(Privileges::ENTER_ROOM).map_err(|e| privilege_missing(e.required))?;
    let (offer, summary) = read_offer(&headers, &body)?;
    if !summary.has(SectionKind::Application) || summary.has(SectionKind::Audio) || summary.has(SectionKind::Video) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "sdp_invalid", "a speed-test offer has the data channels' section and no media"));
    }
    let sid = tessera_model::random::session_id();
    let spec = SessionSpec {
        sid: sid.clone(),
        room: tessera_engine::RoomKey { app: token.app.clone(), room: token.room.clone() },
        user: token.user.clone(),
        role: PeerRole::Publish,
        stream: StreamKind::Main,
        source_user: None,
        rejected_mids: Vec::new(),
        quality: Quality::Auto,
        join: join_info(&token, &headers, user_type::WHIP),
    };
    let server_ip = state.rtc.candidates.first().map(|a| a.ip().to_string()).unwrap_or_default();
    let answer = match state.rtc.add_speed_test(spec, offer, server_ip).await? {
        Ok(answer) => answer,
        Err(tessera_engine::SpeedTestRefusal::Offer(e)) => return Err(offer_error(e)),
        Err(tessera_engine::SpeedTestRefusal::Limit) => {
            let limit = tessera_engine::sfu::MAX_SPEED_TESTS_PER_APP;
            return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "limit_exceeded", format!("{limit} speed tests already run for this app; try again shortly"))
                .with_details(json!({"limit": limit})));
        }
    };
    tracing::info!(sid = %sid, user = %token.user, "speed test started");
    let mut resp = (StatusCode::CREATED, [(header::CONTENT_TYPE, "application/sdp")], answer).into_response();
    for l in link_headers(&state) {
        resp.headers_mut().append(header::LINK, l);
    }
    Ok(resp)
}

/// Event 103's view of a WHIP/WHEP session: UserType, TerminalType from the User-Agent, the
/// token's role (a WHIP session is an anchor's) and `info`.
fn join_info(token: &UserToken, headers: &HeaderMap, kind: u8) -> JoinInfo {
    let ua = headers.get(axum::http::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let role = if kind == user_type::WHIP { Role::Anchor } else { token.role };
    JoinInfo { user_type: kind, terminal_type: JoinInfo::terminal_from_user_agent(ua), role, info: token.info.clone() }
}

#[derive(Debug, Deserialize)]
pub struct WhepQuery {
    quality: Option<String>,
}

/// `POST /whep/{room}/{user}/{stream}[?quality=auto|h|m|l]`
#[utoipa::path(post, operation_id = "whep.play", path = "/whep/{room}/{user}/{stream}", tag = "whip-whep",
    params(("room" = String, Path, description = "room id"), ("user" = String, Path, description = "whose stream"), ("stream" = String, Path, description = "main or aux"), ("quality" = Option<String>, Query, description = "auto (default), h, m or l")), request_body(content = String, content_type = "application/sdp", description = "The SDP offer"),
    responses((status = 201, description = "The SDP answer (sections the token may not receive are rejected)", content_type = "application/sdp", body = String), (status = "4XX", description = "Refused: the JSON error", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("user_token" = [])))]
pub async fn play(
    State(state): State<AppState>,
    Path((room, user, stream)): Path<(String, String, String)>,
    ApiQuery(q): ApiQuery<WhepQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let token = verify_token(&state, &headers, false)?;
    let key = check_entry(&state, &token, &room, false).await?;
    let (offer, summary) = read_offer(&headers, &body)?;
    let stream = StreamKind::parse(&stream).ok_or_else(|| ApiError::invalid_parameter("stream", "must be main or aux"))?;
    let source = UserId::parse(&user).map_err(|e| ApiError::invalid_parameter("user", e.reason))?;
    let quality = quality_param(q.quality.as_deref())?;
    summary.check_play().map_err(offer_error)?;
    // Sections the token may not receive are rejected in the answer; only when none is left
    // is the request refused.
    let mut rejected = Vec::new();
    let mut first_missing = None;
    let mut kept = 0;
    for section in summary.media() {
        let required = media_privilege(PeerRole::Play, stream, section.kind);
        if token.privileges.contains(required) {
            kept += 1;
        } else {
            first_missing.get_or_insert(required);
            if let Some(mid) = &section.mid {
                rejected.push(mid.clone());
            }
        }
    }
    if kept == 0 {
        return Err(privilege_missing(first_missing.unwrap_or(Privileges::SUBSCRIBE_VIDEO)));
    }
    // Before anything asks the media task: when it is saturated, refuse at once.
    if !state.rtc.admits_viewers(&key) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "capacity_exceeded",
            "the media worker is saturated (busy over 98 % of the last second); try again shortly or another server",
        )
        .with_retry_after(5));
    }
    let open = state.rtc.viewer_sessions(key.clone(), token.user.clone()).await.map_err(|e| ApiError::internal(e.to_string()))?;
    if open >= MAX_WHEP_PER_USER {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "limit_exceeded",
            format!("user '{}' already has {MAX_WHEP_PER_USER} WHEP sessions in this room; DELETE one first", token.user),
        )
        .with_details(json!({"limit": MAX_WHEP_PER_USER})));
    }
    let sid = tessera_model::random::session_id();
    let spec = SessionSpec {
        sid: sid.clone(),
        room: key,
        user: token.user.clone(),
        role: PeerRole::Play,
        stream,
        source_user: Some(source),
        rejected_mids: rejected,
        quality,
        join: join_info(&token, &headers, user_type::WHEP),
    };
    let answer = state.rtc.add_session(spec, offer).await.map_err(|e| ApiError::internal(e.to_string()))?.map_err(offer_error)?;
    tracing::info!(sid = %sid, viewer = %token.user, source = %user, "WHEP session created");
    Ok(created(&state, "whep", &sid, answer))
}

fn session_not_found(sid: &str) -> ApiError {
    ApiError::not_found("session_not_found", format!("no session '{sid}'"))
}

/// The session, if it belongs to the token's app, room and user.
async fn owned_session(state: &AppState, token: &UserToken, sid: &str) -> ApiResult<tessera_engine::SessionInfo> {
    let info = state.rtc.session_info(sid).await.map_err(|e| ApiError::internal(e.to_string()))?.ok_or_else(|| session_not_found(sid))?;
    if info.room.app != token.app || info.room.room != token.room || info.user != token.user {
        return Err(session_not_found(sid));
    }
    Ok(info)
}

/// `PATCH /whip/session/{sid}` and `/whep/session/{sid}` (RFC 9725 §4.3). Trickled candidates
/// → 204: Tessera is ICE-lite and learns the client's address from its checks. A new ufrag and
/// pwd is an ICE restart: it needs `If-Match` with the session's ETag (else 412) and is answered
/// 200 with the server's new credentials and candidates, and a new ETag.
#[utoipa::path(patch, operation_id = "whip.patch", path = "/whip/session/{sid}", tag = "whip-whep", params(("sid" = String, Path, description = "session id (the Location)"), ("If-Match" = Option<String>, Header, description = "the ETag, for an ICE restart")),
    request_body(content = String, content_type = "application/trickle-ice-sdpfrag"), responses((status = 204, description = "Trickled candidates taken (ICE-lite: nothing to do)"), (status = 200, description = "ICE restart: the server's new credentials and candidates; a new ETag", content_type = "application/trickle-ice-sdpfrag", body = String), (status = "4XX", description = "Refused: the JSON error", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("user_token" = [])))]
pub async fn patch(State(state): State<AppState>, Path(sid): Path<String>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> ApiResult<Response> {
    let token = verify_token(&state, &headers, false)?;
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/trickle-ice-sdpfrag") {
        return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", format!("expected Content-Type application/trickle-ice-sdpfrag, got '{ct}'")));
    }
    let body = sdp_body(&body)?;
    let text = std::str::from_utf8(body).map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "sdp_invalid", "the sdpfrag is not UTF-8"))?;
    let info = owned_session(&state, &token, &sid).await?;
    let attr = |name: &str| text.lines().find_map(|l| l.trim().strip_prefix(name)).map(str::trim).filter(|v| !v.is_empty());
    let (ufrag, pwd) = (attr("a=ice-ufrag:"), attr("a=ice-pwd:"));
    if ufrag.is_none() && pwd.is_none() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let (Some(ufrag), Some(pwd)) = (ufrag, pwd) else {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "sdp_invalid", "an ICE restart needs both a=ice-ufrag and a=ice-pwd"));
    };
    let etag = format!("\"{}\"", info.ufrag);
    let if_match = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()).map(str::trim);
    if if_match != Some(etag.as_str()) && if_match != Some("*") {
        return Err(ApiError::new(StatusCode::PRECONDITION_FAILED, "precondition_failed", format!("an ICE restart needs If-Match: {etag} (the session's ETag)")));
    }
    let restart = state.rtc.ice_restart(&sid, ufrag, pwd).await.map_err(|e| ApiError::internal(e.to_string()))?.ok_or_else(|| session_not_found(&sid))?;
    let mut frag = format!("a=ice-lite\r\na=ice-ufrag:{}\r\na=ice-pwd:{}\r\n", restart.ufrag, restart.pwd);
    for (i, c) in restart.candidates.iter().enumerate() {
        frag.push_str(&format!("a=candidate:{} 1 udp {} {} {} typ host\r\n", i + 1, 2_130_706_431u32 - i as u32, c.ip(), c.port()));
    }
    frag.push_str("a=end-of-candidates\r\n");
    let mut resp = (StatusCode::OK, [(header::CONTENT_TYPE, "application/trickle-ice-sdpfrag")], frag).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", restart.ufrag)) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    Ok(resp)
}

/// `DELETE /whip/session/{sid}` and `/whep/session/{sid}`; an expired token is accepted.
#[utoipa::path(delete, operation_id = "whip.delete", path = "/whip/session/{sid}", tag = "whip-whep", params(("sid" = String, Path, description = "session id")), responses((status = 200, description = "Ended"), (status = "4XX", description = "Refused: the JSON error", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("user_token" = [])))]
pub async fn delete(State(state): State<AppState>, Path(sid): Path<String>, headers: HeaderMap) -> ApiResult<StatusCode> {
    let token = verify_token(&state, &headers, true)?;
    owned_session(&state, &token, &sid).await?;
    state.rtc.remove_session(&sid).await.map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(StatusCode::OK)
}

/// `PATCH /whep/session/{sid}`: as for WHIP.
#[utoipa::path(patch, operation_id = "whep.patch", path = "/whep/session/{sid}", tag = "whip-whep", params(("sid" = String, Path, description = "session id (the Location)"), ("If-Match" = Option<String>, Header, description = "the ETag, for an ICE restart")),
    request_body(content = String, content_type = "application/trickle-ice-sdpfrag"), responses((status = 204, description = "Trickled candidates taken (ICE-lite: nothing to do)"), (status = 200, description = "ICE restart: the server's new credentials and candidates; a new ETag", content_type = "application/trickle-ice-sdpfrag", body = String), (status = "4XX", description = "Refused: the JSON error", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("user_token" = [])))]
pub async fn whep_patch(state: State<AppState>, sid: Path<String>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> ApiResult<Response> {
    patch(state, sid, headers, body).await
}

/// `DELETE /whep/session/{sid}`: as for WHIP.
#[utoipa::path(delete, operation_id = "whep.delete", path = "/whep/session/{sid}", tag = "whip-whep", params(("sid" = String, Path, description = "session id")), responses((status = 200, description = "Ended"), (status = "4XX", description = "Refused: the JSON error", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("user_token" = [])))]
pub async fn whep_delete(state: State<AppState>, sid: Path<String>, headers: HeaderMap) -> ApiResult<StatusCode> {
    delete(state, sid, headers).await
}

/// `GET /whep/session/{sid}`: what the viewer is waiting for. A WHEP session for a stream nobody
/// publishes yet succeeds and waits (PRODUCT.md §6.2); players poll this to say "waiting for
/// <user> to publish" instead of showing a black picture as if it played.
#[utoipa::path(get, operation_id = "whep.status", path = "/whep/session/{sid}", tag = "whip-whep", params(("sid" = String, Path, description = "session id (the Location)")),
    responses((status = 200, description = "`{\"sid\", \"room\", \"user\", \"source\": {\"user\", \"stream\"}, \"publisher\": \"live\" | \"absent\"}`", body = serde_json::Value), (status = "4XX", description = "Refused: the JSON error", body = ErrorBody), (status = "5XX", description = "Server error", body = ErrorBody)), security(("user_token" = [])))]
pub async fn whep_status(State(state): State<AppState>, Path(sid): Path<String>, headers: HeaderMap) -> ApiResult<Response> {
    let token = verify_token(&state, &headers, false)?;
    let info = owned_session(&state, &token, &sid).await?;
    let Some((source, stream)) = info.source.clone() else {
        return Err(session_not_found(&sid));
    };
    let live = state.rtc.is_published(info.room.clone(), source.clone(), stream).await.map_err(|e| ApiError::internal(e.to_string()))?;
    let body = json!({
        "sid": sid,
        "room": info.room.room.to_string(),
        "user": info.user.to_string(),
        "source": {"user": source.to_string(), "stream": stream.as_str()},
        "publisher": if live { "live" } else { "absent" },
    });
    Ok(axum::Json(body).into_response())
}

/// `OPTIONS` on every WHIP/WHEP path.
pub async fn options() -> Response {
    (StatusCode::NO_CONTENT, [("accept-post", "application/sdp")]).into_response()
}
