//! The inter-node relay's driver (the protocol is `tessera_engine::cluster_relay`):
//! - at a room's node (the origin), `GET /internal/cluster/relay/{app}/{room}` streams a tap of
//!   the room as relay frames for as long as the asking node reads, and
//!   `POST /internal/cluster/keyframe/{app}/{room}/{user}/{stream}` passes on a keyframe request;
//! - at an edge, `serve_as_edge` starts (once per room) the task that reads that stream into
//!   local ingest publishers, so the edge's viewers are served as if the publishers were there.
//!
//! Both endpoints want the cluster's secret (`x-tessera-cluster-secret`); without cluster mode
//! they do not exist (404).

use crate::api::AppState;
use crate::cluster::{Cluster, FORWARDED};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tessera_cluster::NodeRecord;
use tessera_engine::cluster_relay::{encode, parse_rid, BacklogVerdict, EdgeAction, EdgeMirror, FrameReader, RelayBacklog};
use tessera_engine::presence::user_type;
use tessera_engine::sfu::{Rid, TapKind};
use tessera_engine::{JoinInfo, PeerRole, Quality, RoomKey, SessionSpec};
use tessera_media::StreamKind;
use tessera_model::{AppId, RoomId, UserId};
use tokio::sync::watch;

pub const SECRET_HEADER: &str = "x-tessera-cluster-secret";

/// How long an edge waits for the publisher a viewer asked for before serving the request
/// anyway (it then answers as for a publisher that is not there).
const EDGE_READY_WITHIN: Duration = Duration::from_secs(5);
/// An edge room without viewers for this long stops relaying.
const EDGE_IDLE: Duration = Duration::from_secs(10);

type Mirrored = HashSet<(UserId, StreamKind)>;

/// The rooms this node relays, by (app, room): what each mirrors so far.
#[derive(Default)]
pub struct Edges {
    active: std::sync::Mutex<HashMap<RoomKey, watch::Receiver<Mirrored>>>,
    /// Rooms whose relay ended while this node's copy lingers until its empty-room timeout
    /// dismisses it: that copy is still not a room of this node (listed twice and reported
    /// dismissed by the edge, it was).
    ended: std::sync::Mutex<HashSet<RoomKey>>,
}

impl Edges {
    /// Whether this node only relays the room, or holds what is left of a relay (its events and
    /// listing belong to the room's node).
    pub fn relays(&self, key: &RoomKey) -> bool {
        self.active.lock().expect("edges").contains_key(key) || self.ended.lock().expect("edges").contains(key)
    }

    /// This node's copy of the room was dismissed, or the room is placed here now: what is left
    /// of a relay is forgotten.
    pub fn forget(&self, key: &RoomKey) {
        self.ended.lock().expect("edges").remove(key);
    }

    /// What the relay of `key` mirrors so far, and, when none was under way, the sender of the
    /// one just registered (its caller starts it).
    fn join_or_start(&self, key: &RoomKey) -> (watch::Receiver<Mirrored>, Option<watch::Sender<Mirrored>>) {
        let mut active = self.active.lock().expect("edges");
        if let Some(rx) = active.get(key) {
            return (rx.clone(), None);
        }
        let (tx, rx) = watch::channel(Mirrored::new());
        active.insert(key.clone(), rx.clone());
        self.forget(key);
        (rx, Some(tx))
    }

    /// The relay of `key` ended; this node's copy of the room lingers.
    fn relay_ended(&self, key: &RoomKey) {
        let mut active = self.active.lock().expect("edges");
        active.remove(key);
        self.ended.lock().expect("edges").insert(key.clone());
    }
}

fn authorized(cluster: &Cluster, headers: &HeaderMap) -> bool {
    let given = headers.get(SECRET_HEADER).map(|v| v.as_bytes()).unwrap_or(b"");
    let want = cluster.secret.as_bytes();
    // Constant time: the comparison does not stop at the first difference.
    given.len() == want.len() && given.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn refuse(status: StatusCode, code: &'static str, message: &str) -> Response {
    crate::error::ApiError::new(status, code, message).into_response()
}

pub(crate) fn room_key(app: &str, room: &str) -> Option<RoomKey> {
    Some(RoomKey { app: AppId::parse(app).ok()?, room: RoomId::parse(room).ok()? })
}

/// Removes the origin's tap when the edge stops reading (the response body is dropped).
struct TapGuard {
    rtc: tessera_engine::RtcHandle,
    id: u64,
}

impl Drop for TapGuard {
    fn drop(&mut self) {
        let (rtc, id) = (self.rtc.clone(), self.id);
        tokio::spawn(async move {
            let _ = rtc.remove_tap(id).await;
        });
    }
}

/// `GET /internal/cluster/relay/{app}/{room}` (origin).
pub async fn relay(
    State(state): State<AppState>,
    Path((app, room)): Path<(String, String)>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<crate::listen::PeerAddr>,
    version: axum::http::Version,
    headers: HeaderMap,
) -> Response {
    let Some(cluster) = state.cluster.get() else { return refuse(StatusCode::NOT_FOUND, "cluster_disabled", "not a cluster node") };
    if !authorized(cluster, &headers) {
        return refuse(StatusCode::UNAUTHORIZED, "cluster_secret_invalid", "relay requests need the cluster's secret");
    }
    let Some(key) = room_key(&app, &room) else { return refuse(StatusCode::BAD_REQUEST, "invalid_parameter", "bad app or room id") };
    if !state.rtc.room_exists(key.clone()).await.unwrap_or(false) {
        return refuse(StatusCode::NOT_FOUND, "room_not_found", "the room is not on this node");
    }
    // The tap's server user names the node it relays to.
    let edge = headers.get(FORWARDED).and_then(|v| v.to_str().ok()).unwrap_or("node");
    let name: String = format!("relay_{edge}").chars().filter(|c| c.is_ascii_alphanumeric() || "_-".contains(*c)).take(UserId::MAX_LEN).collect();
    let Ok(owner) = UserId::parse(&name) else { return refuse(StatusCode::BAD_REQUEST, "invalid_parameter", "bad node id") };
    let (id, rx) = match state.rtc.add_output_tap(key.clone(), TapKind::Cluster, owner).await {
        Ok(t) => t,
        Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, "relay_unavailable", &e.to_string()),
    };
    // The connection it came on (every relayed room of one edge shares it).
    tracing::info!(room = %key.room, %edge, from = %peer.0, ?version, "relaying the room to another node");
    let guard = TapGuard { rtc: state.rtc.clone(), id };
    let ctx = (rx, guard, RelayBacklog::default(), key.clone(), edge.to_owned());
    // Packets waiting are written together: one chunk per wake-up, not one per packet. An edge
    // that falls behind is brought back to live (`RelayBacklog`).
    let stream = futures_util::stream::unfold(ctx, |(mut rx, guard, mut backlog, key, edge)| async move {
        let mut out = Vec::with_capacity(2048);
        let mut first = Some(rx.recv().await?);
        while out.len() < 32 * 1024 {
            let p = match first.take() {
                Some(p) => p,
                None => match rx.try_recv() {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            match backlog.admit(&p, rx.len()) {
                BacklogVerdict::Send => {
                    encode(&p, &mut out);
                }
                BacklogVerdict::Drop => {}
                BacklogVerdict::DropAndAskKeyframe => {
                    tracing::warn!(room = %key.room, %edge, user = %p.user, dropped = backlog.dropped, "a relaying node fell behind: its backlog is dropped up to the next keyframe");
                    let (rtc, key) = (guard.rtc.clone(), key.clone());
                    tokio::spawn(async move {
                        let _ = rtc.request_layer_keyframe(key, p.user, p.stream, p.rid).await;
                    });
                }
            }
        }
        Some((Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(out)), (rx, guard, backlog, key, edge)))
    });
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/x-tessera-relay"));
    r
}

#[derive(serde::Deserialize)]
pub struct KeyframeQuery {
    /// The simulcast layer (absent: the stream's top or only one).
    rid: Option<String>,
}

/// `POST /internal/cluster/keyframe/{app}/{room}/{user}/{stream}[?rid=…]` (origin).
pub async fn keyframe(
    State(state): State<AppState>,
    Path((app, room, user, stream)): Path<(String, String, String, String)>,
    axum::extract::Query(q): axum::extract::Query<KeyframeQuery>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<crate::listen::PeerAddr>,
    headers: HeaderMap,
) -> Response {
    let Some(cluster) = state.cluster.get() else { return refuse(StatusCode::NOT_FOUND, "cluster_disabled", "not a cluster node") };
    if !authorized(cluster, &headers) {
        return refuse(StatusCode::UNAUTHORIZED, "cluster_secret_invalid", "relay requests need the cluster's secret");
    }
    let (Some(key), Ok(user), Some(stream)) = (room_key(&app, &room), UserId::parse(&user), StreamKind::parse(&stream)) else {
        return refuse(StatusCode::BAD_REQUEST, "invalid_parameter", "bad app, room, user or stream");
    };
    let rid = match q.rid.as_deref().map(parse_rid) {
        None => None,
        Some(Some(rid)) => Some(rid),
        Some(None) => return refuse(StatusCode::BAD_REQUEST, "invalid_parameter", "rid: 1-8 letters or digits"),
    };
    tracing::debug!(room = %key.room, %user, ?rid, from = %peer.0, "keyframe asked by a relaying node");
    let _ = state.rtc.request_layer_keyframe(key, user, stream, rid).await;
    StatusCode::NO_CONTENT.into_response()
}

/// Makes sure this node relays `room` from `origin` and waits (a little) until it mirrors the
/// publisher `(user, stream)` the viewer asks for.
pub async fn serve_as_edge(state: &AppState, cluster: &Cluster, origin: &NodeRecord, app: AppId, room: &str, user: UserId, stream: StreamKind) {
    let Ok(room) = RoomId::parse(room) else { return };
    let key = RoomKey { app, room };
    let (mut ready, started) = cluster.edges.join_or_start(&key);
    if let Some(tx) = started {
        tokio::spawn(run_edge(state.clone(), origin.clone(), key.clone(), tx));
    }
    let want = (user, stream);
    let _ = tokio::time::timeout(EDGE_READY_WITHIN, ready.wait_for(|m| m.contains(&want))).await;
}

async fn run_edge(state: AppState, origin: NodeRecord, key: RoomKey, mirrored: watch::Sender<Mirrored>) {
    let cluster = state.cluster.get().expect("an edge is a cluster node").clone();
    tracing::info!(room = %key.room, origin = %origin.id, "relaying a room from its node for viewers here");
    if let Err(e) = relay_from(&state, &cluster, &origin, &key, &mirrored).await {
        tracing::warn!(room = %key.room, origin = %origin.id, "the relay from the room's node ended: {e}");
    }
    cluster.edges.relay_ended(&key);
    tracing::info!(room = %key.room, origin = %origin.id, "stopped relaying the room");
}

struct Ingest {
    id: u64,
    keyframes: tessera_engine::KeyframeRequests,
}

async fn relay_from(state: &AppState, cluster: &Cluster, origin: &NodeRecord, key: &RoomKey, mirrored: &watch::Sender<Mirrored>) -> Result<(), String> {
    let url = format!("{}/internal/cluster/relay/{}/{}", origin.url, key.app, key.room);
    let mut req = Request::get(&url).body(Body::empty()).map_err(|e| e.to_string())?;
    req.headers_mut().insert(SECRET_HEADER, HeaderValue::from_str(&cluster.secret).map_err(|e| e.to_string())?);
    req.headers_mut().insert(FORWARDED, HeaderValue::from_str(&cluster.me.0).map_err(|e| e.to_string())?);
    let resp = tokio::time::timeout(Duration::from_secs(5), cluster.relay_client().request(req)).await.map_err(|_| "no answer in 5 s".to_string())?.map_err(|e| e.to_string())?;
    if resp.status() != StatusCode::OK {
        return Err(format!("the room's node answered {}", resp.status()));
    }
    let mut body = resp.into_body();
    let mut reader = FrameReader::default();
    let mut mirror = EdgeMirror::default();
    let mut ingests: HashMap<(UserId, StreamKind), Ingest> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut last_viewer = Instant::now();
    let mut last_check = Instant::now();
    let result = loop {
        tokio::select! {
            frame = body.frame() => {
                let data = match frame {
                    None => break Ok(()),
                    Some(Err(e)) => break Err(e.to_string()),
                    Some(Ok(f)) => match f.into_data() {
                        Ok(d) => d,
                        Err(_) => continue,
                    },
                };
                reader.push(&data);
                loop {
                    let packet = match reader.next_packet() {
                        Ok(Some(p)) => p,
                        Ok(None) => break,
                        Err(e) => return Err(e.to_string()),
                    };
                    for action in mirror.on_packet(packet, Instant::now()) {
                        apply(state, key, action, &mut ingests, mirrored).await;
                    }
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                for action in mirror.poll(now) {
                    apply(state, key, action, &mut ingests, mirrored).await;
                }
                for ((user, stream), ingest) in &ingests {
                    for rid in ingest.keyframes.take_layers() {
                        ask_keyframe(cluster, origin, key, user, *stream, rid);
                    }
                }
                if now.duration_since(last_check) >= Duration::from_secs(1) {
                    last_check = now;
                    let users = state.rtc.room_users(key.clone()).await.ok().flatten().unwrap_or_default();
                    if users.iter().any(|u| u.user_type != user_type::PULL_INGEST) {
                        last_viewer = now;
                    } else if now.duration_since(last_viewer) >= EDGE_IDLE {
                        break Ok(());
                    }
                }
            }
        }
    };
    for (_, ingest) in ingests {
        let _ = state.rtc.remove_ingest(ingest.id).await;
    }
    result
}

async fn apply(state: &AppState, key: &RoomKey, action: EdgeAction, ingests: &mut HashMap<(UserId, StreamKind), Ingest>, mirrored: &watch::Sender<Mirrored>) {
    match action {
        EdgeAction::AddPublisher(user, stream) => {
            let spec = SessionSpec {
                sid: tessera_model::random::session_id(),
                room: key.clone(),
                user: user.clone(),
                role: PeerRole::Publish,
                stream,
                source_user: None,
                rejected_mids: Vec::new(),
                quality: Quality::Auto,
                join: JoinInfo::anchor(user_type::PULL_INGEST),
            };
            match state.rtc.add_ingest_watched(spec).await {
                Ok((id, _replaced, keyframes)) => {
                    ingests.insert((user.clone(), stream), Ingest { id, keyframes });
                    mirrored.send_modify(|m| {
                        m.insert((user, stream));
                    });
                }
                Err(e) => tracing::warn!(room = %key.room, %user, "relay: adding the mirrored publisher failed: {e}"),
            }
        }
        EdgeAction::Push(user, stream, packets) => {
            if let Some(ingest) = ingests.get(&(user, stream)) {
                let _ = state.rtc.push(ingest.id, packets).await;
            }
        }
        EdgeAction::RemovePublisher(user, stream) => {
            if let Some(ingest) = ingests.remove(&(user.clone(), stream)) {
                let _ = state.rtc.remove_ingest(ingest.id).await;
            }
            mirrored.send_modify(|m| {
                m.remove(&(user, stream));
            });
        }
    }
}

/// Passes a viewer's keyframe request (of layer `rid`) at the edge on to the origin (not
/// awaited: the relay goes on meanwhile).
fn ask_keyframe(cluster: &Cluster, origin: &NodeRecord, key: &RoomKey, user: &UserId, stream: StreamKind, rid: Option<Rid>) {
    let mut url = format!("{}/internal/cluster/keyframe/{}/{}/{}/{}", origin.url, key.app, key.room, user, stream);
    if let Some(rid) = rid {
        url.push_str(&format!("?rid={}", &*rid));
    }
    let Ok(mut req) = Request::post(&url).body(Body::empty()) else { return };
    if let Ok(v) = HeaderValue::from_str(&cluster.secret) {
        req.headers_mut().insert(SECRET_HEADER, v);
    }
    let fut = cluster.relay_client().request(req);
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), fut).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_relay_leaves_stays_the_rooms_nodes_until_dismissed_or_placed_here() {
        let edges = Edges::default();
        let key = room_key("app1", "big").unwrap();
        assert!(!edges.relays(&key));
        assert!(edges.join_or_start(&key).1.is_some(), "the first viewer starts the relay");
        assert!(edges.join_or_start(&key).1.is_none(), "the next joins it");
        assert!(edges.relays(&key));
        edges.relay_ended(&key);
        assert!(edges.relays(&key), "the copy left behind is not this node's room");
        edges.forget(&key);
        assert!(!edges.relays(&key), "dismissed (or placed here): forgotten");
        edges.relay_ended(&key);
        assert!(edges.join_or_start(&key).1.is_some(), "a new relay after one ended");
        edges.relay_ended(&key);
        assert!(edges.relays(&key));
    }
}
