//! A joined room-signaling session: how it joins (token checks, the participant list), how it
//! waits for a `resume` when its socket drops, and how it leaves.

use super::AppState;
use crate::entry::{check_entry, verify_raw};
use crate::error::ApiError;
use axum::http::StatusCode;
use dashmap::DashMap;
use serde_json::{json, Value};
use std::time::Duration;
use tessera_engine::presence::LeaveReason;
use tessera_engine::{FirstMedia, JoinInfo, PublisherEnd, RoomKey};
use tessera_media::StreamKind;
use tessera_model::{AppId, RoomId, UserId, UserToken};
use tokio::sync::{mpsc, oneshot};

/// A session whose socket dropped keeps its participant, media and subscriptions this long,
/// waiting for a `join` with `resume` (PRODUCT.md §3.4).
pub const RESUME_WINDOW: Duration = Duration::from_secs(15);

/// The live room-signaling session of each participant (a newer login replaces the older), and
/// the sessions waiting for a resume.
#[derive(Default)]
pub struct Signaling {
    sessions: DashMap<(AppId, RoomId, UserId), Live>,
    parked: DashMap<String, (RoomKey, UserId, Claim)>,
}

/// A live session in the registry: its SFU id, and how to tell it a newer login replaced it.
struct Live {
    id: u64,
    replace: oneshot::Sender<()>,
}

/// How a resuming socket takes a parked session: it sends where to hand the session over.
type Claim = oneshot::Sender<oneshot::Sender<Box<Joined>>>;

/// The server-offered `sub` connection of a session.
pub(super) struct Subscriber {
    pub(super) sid: String,
    pub(super) first_media: mpsc::UnboundedReceiver<FirstMedia>,
    /// The (user, stream)s it carries.
    pub(super) subscribed: Vec<(UserId, StreamKind)>,
}

pub(super) struct Joined {
    pub(super) key: RoomKey,
    pub(super) token: UserToken,
    pub(super) session_id: String,
    pub(super) auto_subscribe: bool,
    /// `stats` goes out on each tick (`stats_interval_ms`), if asked for.
    pub(super) stats: Option<tokio::time::Interval>,
    /// Each published stream: its SFU publisher session (the `pub` connection's) and kinds.
    pub(super) published: Vec<(StreamKind, String, Vec<tessera_engine::SectionKind>)>,
    pub(super) sub: Option<Subscriber>,
    /// Others' tracks with media: (user, stream, video). A stream with none left is unsubscribed.
    pub(super) live: Vec<(UserId, StreamKind, bool)>,
    /// The SFU's id of this signaling session.
    id: u64,
    pub(super) ended: oneshot::Receiver<PublisherEnd>,
    pub(super) replaced: oneshot::Receiver<()>,
    /// What the SFU has for this session: custom messages from others, refusals of its own.
    pub(super) inbox: mpsc::UnboundedReceiver<tessera_engine::MemberMessage>,
}

impl Joined {
    pub(super) fn user(&self) -> &UserId {
        &self.token.user
    }

    fn registry_key(&self) -> (AppId, RoomId, UserId) {
        (self.key.app.clone(), self.key.room.clone(), self.token.user.clone())
    }

    /// The participant leaves (`leave`, lost, replaced, removed): its publications and its
    /// `sub` connection end first, so the signaling session's exit is the last (one 104).
    pub(super) async fn leave(&mut self, state: &AppState, reason: LeaveReason) {
        state.signaling.sessions.remove_if(&self.registry_key(), |_, live| live.id == self.id);
        for (_, sid, _) in self.published.drain(..) {
            let _ = state.rtc.remove_session(&sid).await;
        }
        if let Some(sub) = self.sub.take() {
            let _ = state.rtc.remove_session(&sub.sid).await;
        }
        let _ = state.rtc.leave_signaling(self.id, reason).await;
    }

    /// The SFU ended the participant (kick, dismissal): only the registry entry is left.
    pub(super) async fn forget(&mut self, state: &AppState) {
        state.signaling.sessions.remove_if(&self.registry_key(), |_, live| live.id == self.id);
    }
}

/// The next `stats` tick (never, without `stats_interval_ms`).
pub(super) async fn next_stats(stats: &mut Option<tokio::time::Interval>) {
    match stats {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The next first-media notice of a `sub` connection (never, without one).
pub(super) async fn next_first_media(sub: &mut Option<Subscriber>) -> Option<FirstMedia> {
    match sub {
        Some(s) => s.first_media.recv().await,
        None => std::future::pending().await,
    }
}

/// Verifies a `join`, then resumes the parked session it names or joins anew. Returns the
/// session and its `joined` reply.
pub(super) async fn join_or_resume(state: &AppState, msg: &Value, ua: &str) -> Result<(Joined, Value), ApiError> {
    let raw = msg["token"].as_str().ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "token_missing", "join needs a 'token'"))?;
    let token = verify_raw(state, raw, false)?;
    let key = check_entry(state, &token, token.room.as_str(), false).await?;
    if let Some(resume) = msg["resume"].as_str() {
        if let Some(mut j) = Parked::claim(state, resume, &key, &token.user).await {
            // The new token counts from now (a resume is a re-authentication).
            j.token.privileges = token.privileges;
            j.token.exp = token.exp;
            let reply = joined_reply(state, &j, true).await?;
            return Ok((*j, reply));
        }
        // Too late, or unknown: a fresh session (`resumed: false` tells the client to publish
        // and subscribe again).
    }
    let terminal = match msg.get("terminal") {
        None | Some(Value::Null) => JoinInfo::terminal_from_user_agent(ua),
        Some(t) => t.as_u64().filter(|t| [1, 2, 3, 4, 100].contains(t)).map(|t| t as u8).ok_or_else(|| ApiError::invalid_parameter("terminal", "must be 1, 2, 3, 4 or 100"))?,
    };
    let auto_subscribe = match msg.get("auto_subscribe") {
        None | Some(Value::Null) => true,
        Some(v) => v.as_bool().ok_or_else(|| ApiError::invalid_parameter("auto_subscribe", "must be true or false"))?,
    };
    let stats_interval = match msg.get("stats_interval_ms") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(0) => None,
            Some(ms @ 1000..=60_000) => Some(Duration::from_millis(ms)),
            _ => return Err(ApiError::invalid_parameter("stats_interval_ms", "0 (off) or 1000 to 60000")),
        },
    };
    let join = JoinInfo { user_type: 1, terminal_type: terminal, role: token.role, info: token.info.clone() };
    let tessera_engine::SignalingMember { id, ended, inbox } = state.rtc.join_signaling(key.clone(), token.user.clone(), join).await?;
    // A newer login replaces the older (it has joined first, so the participant stays).
    let (replace_tx, replaced) = oneshot::channel();
    let registry_key = (key.app.clone(), key.room.clone(), token.user.clone());
    if let Some((_, older)) = state.signaling.sessions.remove(&registry_key) {
        let _ = older.replace.send(());
    }
    state.signaling.sessions.insert(registry_key, Live { id, replace: replace_tx });
    let j = Joined {
        key,
        token,
        session_id: tessera_model::random::session_id(),
        auto_subscribe,
        stats: stats_interval.map(|every| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        }),
        published: Vec::new(),
        sub: None,
        live: Vec::new(),
        id,
        ended,
        replaced,
        inbox,
    };
    let reply = joined_reply(state, &j, false).await?;
    Ok((j, reply))
}

/// A codec as room signaling names it (the SDP encoding name).
pub(crate) fn codec_name(c: tessera_media::Codec) -> &'static str {
    match c {
        tessera_media::Codec::Opus => "opus",
        tessera_media::Codec::H264 => "H264",
        tessera_media::Codec::Vp8 => "VP8",
        tessera_media::Codec::H265 => "H265",
        tessera_media::Codec::Av1 => "AV1",
    }
}

/// `joined`: who is there with their tracks, and how to connect.
async fn joined_reply(state: &AppState, j: &Joined, resumed: bool) -> Result<Value, ApiError> {
    let users = state.rtc.room_users(j.key.clone()).await?.unwrap_or_default();
    let participants: Vec<Value> = users
        .iter()
        .filter(|p| p.user != *j.user())
        .map(|p| {
            let tracks: Vec<Value> = p
                .tracks
                .iter()
                .map(|t| {
                    let (codec, layers) = t.media.as_ref().map_or((None, Vec::new()), |m| (Some(codec_name(m.codec)), m.layers.clone()));
                    json!({"stream": t.track.stream().as_str(), "kind": t.track.kind(), "codec": codec, "muted": t.muted, "layers": layers})
                })
                .collect();
            json!({"user": p.user, "role": p.role.code(), "user_type": p.user_type, "info": p.info, "tracks": tracks})
        })
        .collect();
    Ok(json!({
        "type": "joined",
        "session_id": j.session_id,
        "resumed": resumed,
        "room": j.key.room,
        "user": j.user(),
        "role": j.token.role.code(),
        "privileges": j.token.privileges.bits(),
        "participants": participants,
        "ice_servers": crate::api::whip::ice_servers_json(state),
        "server_time_ms": crate::now_ms(),
    }))
}

/// A session whose socket dropped, waiting for its client to come back.
pub(super) struct Parked;

impl Parked {
    /// Keeps the session (publications, `sub` connection, subscriptions) for `RESUME_WINDOW`;
    /// then the participant leaves as timed out. A kick or a newer login meanwhile ends it.
    pub(super) fn park(state: AppState, j: Joined) {
        let (claim_tx, mut claim) = oneshot::channel::<oneshot::Sender<Box<Joined>>>();
        state.signaling.parked.insert(j.session_id.clone(), (j.key.clone(), j.user().clone(), claim_tx));
        tracing::info!(room = %j.key.room, user = %j.user(), "room signaling dropped; waiting for a resume");
        let mut j = Box::new(j);
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(RESUME_WINDOW) => {
                    state.signaling.parked.remove(&j.session_id);
                    tracing::info!(room = %j.key.room, user = %j.user(), "room signaling not resumed: the participant timed out");
                    j.leave(&state, LeaveReason::TimedOut).await;
                }
                Ok(back) = &mut claim => {
                    let _ = back.send(j);
                }
                _ = &mut j.ended => {
                    state.signaling.parked.remove(&j.session_id);
                    j.forget(&state).await;
                }
                _ = &mut j.replaced => {
                    state.signaling.parked.remove(&j.session_id);
                    j.leave(&state, LeaveReason::Left).await;
                }
            }
        });
    }

    /// Takes the parked session `session_id` back for the same participant.
    async fn claim(state: &AppState, session_id: &str, key: &RoomKey, user: &UserId) -> Option<Box<Joined>> {
        let (_, (_, _, claim)) = state.signaling.parked.remove_if(session_id, |_, (k, u, _)| k == key && u == user)?;
        let (tx, rx) = oneshot::channel();
        claim.send(tx).ok()?;
        rx.await.ok()
    }
}
