//! RTMP ingest (PRODUCT.md §6.3): the TCP driver around `tessera_rtmp::RtmpPublishSession`.
//! Each connection is a task: it authenticates the publish from the stream key, adds an ingest
//! publisher to the SFU and feeds the engine's `RtmpPublisher` (FLV → RTP, AAC → Opus); what
//! that refuses (other codecs, a missing privilege, B-frames where the app refuses them) goes
//! back as an `onStatus` error, then the connection closes. A publish with B-frames is
//! transcoded for viewers on a thread of its own (`rtmp_transcode`).

use crate::api::AppState;
use crate::entry::{check_entry, privilege_missing, verify_raw};
use crate::error::ApiError;
use crate::rtmp_transcode::TranscodeWorker;
use std::time::Duration;
use tessera_engine::ingest_transcode::{SourceVideo, TranscodeInput};
use tessera_engine::rtmp_publisher::RtmpPublisher;
use tessera_engine::{PeerRole, PublisherEnd, Quality, SessionSpec};
use tessera_media::StreamKind;
use tessera_model::Privileges;
use tessera_rtmp::client::{PushTarget, RtmpPushSession};
use tessera_rtmp::session::{RtmpEvent, RtmpPublishSession};
use tessera_rtmp::PublishTarget;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A connection that sends nothing for this long is closed (PRODUCT.md §3.4).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a refused connection stays open so the client can read why.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

pub async fn serve(listener: TcpListener, state: AppState) {
    // RTMP connections time out on their own (no data for 30 s); the listener caps and backs off.
    let mut listener = crate::listen::GuardedListener::new(listener, state.config.limits.rtmp_max_connections as usize);
    loop {
        let (stream, peer, slot) = listener.accept_guarded().await;
        let state = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = stream.set_nodelay(true);
            if let Err(e) = connection(stream, &state).await {
                tracing::info!(%peer, "RTMP connection ended: {e}");
            }
        });
    }
}

/// What the publish was refused for, as the `onStatus` description `<code>: <message>`.
fn description(e: &ApiError) -> String {
    format!("{}: {}", e.code, e.message)
}

async fn authorize(state: &AppState, app: &str, stream_key: &str) -> Result<(SessionSpec, Privileges), ApiError> {
    let target = PublishTarget::parse(app, stream_key, None).map_err(|e| ApiError::invalid_parameter("stream key", e.to_string()))?;
    // RTMP carries the token in the stream key, not in a header (issue 10, defect 18).
    let raw = target
        .token
        .as_deref()
        .ok_or_else(|| ApiError::new(axum::http::StatusCode::UNAUTHORIZED, "token_missing", "no token was given; add it to the stream key as '<user>?token=<token>'"))?;
    let token = verify_raw(state, raw, false)?;
    if let Some(sdk_app) = &target.app {
        if sdk_app != token.app.as_str() {
            return Err(ApiError::new(axum::http::StatusCode::FORBIDDEN, "token_app_mismatch", format!("sdkappid '{sdk_app}' is not the token's app")));
        }
    }
    if target.user != token.user {
        return Err(ApiError::new(axum::http::StatusCode::FORBIDDEN, "token_user_mismatch", format!("the stream key names user '{}', the token '{}'", target.user, token.user)));
    }
    // RTMP sessions are anchor sessions: the token must be able to publish something.
    if !token.privileges.intersects(Privileges::ANY_PUBLISH) {
        return Err(privilege_missing(Privileges::PUBLISH_VIDEO));
    }
    if target.stream == StreamKind::Aux && !token.privileges.contains(Privileges::PUBLISH_AUX) {
        return Err(privilege_missing(Privileges::PUBLISH_AUX));
    }
    let room = check_entry(state, &token, target.room.as_str(), false).await?;
    let spec = SessionSpec {
        sid: tessera_model::random::session_id(),
        room,
        user: token.user.clone(),
        role: PeerRole::Publish,
        stream: target.stream,
        source_user: None,
        rejected_mids: Vec::new(),
        quality: Quality::Auto,
        join: tessera_engine::JoinInfo { info: token.info.clone(), ..tessera_engine::JoinInfo::anchor(tessera_engine::presence::user_type::RTMP) },
    };
    Ok((spec, token.privileges))
}

/// Cluster mode: the node a publish belongs on, if not this one (a stream key whose token does
/// not verify is refused here, by `authorize`).
async fn cluster_route(state: &AppState, app: &str, stream_key: &str) -> Option<tessera_cluster::NodeRecord> {
    let cluster = state.cluster.get()?;
    let target = PublishTarget::parse(app, stream_key, None).ok()?;
    let token = cluster.verify_token(state, target.token.as_deref()?).await?;
    match cluster.route(token.app.as_str(), target.room.as_str(), tessera_cluster::RoomIntent::Create).await {
        crate::cluster::Route::Local => None,
        crate::cluster::Route::Remote(node) => Some(node),
    }
}

/// A publish carried to the room's node: this node is an RTMP client of that node's ingest,
/// sending it the encoder's tags as they come (RTMP cannot redirect an encoder).
struct Forwarding {
    upstream: TcpStream,
    push: RtmpPushSession,
    node: tessera_cluster::NodeId,
}

impl Forwarding {
    /// Connects and publishes the same app and stream key on `node`; its refusal is the error.
    async fn start(node: &tessera_cluster::NodeRecord, app: &str, stream_key: &str) -> Result<Forwarding, String> {
        let (host, port) =
            node.rtmp.rsplit_once(':').and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?))).ok_or_else(|| format!("node {} has no RTMP address", node.id))?;
        let target = PushTarget { tls: false, tc_url: format!("rtmp://{}/{app}", node.rtmp), host: host.clone(), port, app: app.to_owned(), stream_key: stream_key.to_owned() };
        let started = async {
            let mut upstream = TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("node_unreachable: {e}"))?;
            let _ = upstream.set_nodelay(true);
            let mut push = RtmpPushSession::new(target).map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                if !push.outbound.is_empty() {
                    upstream.write_all(&push.outbound).await.map_err(|e| format!("node_unreachable: {e}"))?;
                    push.outbound.clear();
                }
                if push.is_publishing() {
                    return Ok(Forwarding { upstream, push, node: node.id.clone() });
                }
                let n = upstream.read(&mut buf).await.map_err(|e| format!("node_unreachable: {e}"))?;
                if n == 0 {
                    return Err("node_unreachable: the room's node closed the connection".into());
                }
                // The room's node refuses with an onStatus error whose text is `code: message`.
                push.feed(&buf[..n]).map_err(|e| match e {
                    tessera_rtmp::client::PushError::Publish(reason) => reason,
                    tessera_rtmp::client::PushError::Connect(why) => format!("node_unreachable: {why}"),
                })?;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), started).await.map_err(|_| "node_unreachable: the room's node did not answer in 5 s".to_string())?
    }

    async fn send(&mut self, event: &RtmpEvent) -> std::io::Result<()> {
        let sent = match event {
            RtmpEvent::Video { data, timestamp_ms } => self.push.send_video(data, *timestamp_ms),
            RtmpEvent::Audio { data, timestamp_ms } => self.push.send_audio(data, *timestamp_ms),
            _ => Ok(()),
        };
        sent.map_err(|e| std::io::Error::other(e.to_string()))?;
        if !self.push.outbound.is_empty() {
            self.upstream.write_all(&self.push.outbound).await?;
            self.push.outbound.clear();
        }
        Ok(())
    }
}

/// Why an RTMP connection ended (logged).
#[derive(Debug, thiserror::Error)]
enum ConnectionEnd {
    #[error("no data for 30 s")]
    Idle,
    #[error("refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Rtmp(#[from] tessera_rtmp::session::RtmpError),
    #[error(transparent)]
    Engine(#[from] tessera_engine::RtcServerError),
}

struct Publishing {
    id: u64,
    media: RtmpPublisher,
    settings: tessera_model::RtmpSettings,
    /// Viewers' keyframe requests: the transcoder's once there is one; drained unheard before.
    keyframes: Option<tessera_engine::KeyframeRequests>,
    transcode: Option<TranscodeWorker>,
}

impl Publishing {
    /// Hands what the publisher has for a transcoder to it, starting one on the first input.
    fn feed_transcoder(&mut self, state: &AppState, app: &tessera_model::AppId) -> Result<(), String> {
        while let Some(input) = self.media.poll_transcode() {
            if let TranscodeInput::Start(start) = &input {
                let max = self.settings.max_transcodes;
                let what = start.codec.describe();
                let slot = state.rtmp_transcodes.take(app, max).ok_or_else(|| {
                    let instead = if start.codec == SourceVideo::H264 { "send without B-frames (x264 bframes=0)" } else { "send H.264" };
                    format!("limit_exceeded: {what} is transcoded for WebRTC viewers, and this app already transcodes {max} RTMP publishes (rtmp.max_transcodes); {instead} or try later")
                })?;
                let keyframes = self.keyframes.take().expect("one transcode per publish");
                let worker = TranscodeWorker::start(start, self.settings.encoder, state.rtc.clone(), self.id, keyframes, slot)
                    .map_err(|e| format!("codec_unsupported: the {what} stream cannot be decoded for transcoding: {e}"))?;
                tracing::info!(encoder = ?self.settings.encoder, "RTMP publish of {what}: transcoding to H.264 for WebRTC viewers");
                self.transcode = Some(worker);
                continue;
            }
            if let Some(t) = self.transcode.as_mut() {
                t.send(input);
            }
        }
        if let Some(k) = &self.keyframes {
            // Not transcoding: the GOP cache answers viewers.
            k.take();
        }
        Ok(())
    }
}

async fn connection(mut stream: TcpStream, state: &AppState) -> Result<(), ConnectionEnd> {
    let mut session = RtmpPublishSession::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut publishing: Option<Publishing> = None;
    let mut forwarding: Option<Forwarding> = None;
    let mut upstream_buf = vec![0u8; 16 * 1024];
    let mut app_id: Option<tessera_model::AppId> = None;
    // Set while publishing: tells why the SFU ended the publisher, if it did.
    let mut ended_by_sfu: Option<tokio::sync::oneshot::Receiver<PublisherEnd>> = None;
    let result = async {
        loop {
            let ended = async {
                match ended_by_sfu.as_mut() {
                    Some(rx) => rx.await.ok(),
                    None => std::future::pending().await,
                }
            };
            let mut close_after_write = None;
            // What the room's node sends back while forwarding (acknowledgements, pings): fed to
            // the client session there; its closing ends this connection.
            let upstream = async {
                match forwarding.as_mut() {
                    Some(f) => f.upstream.read(&mut upstream_buf).await,
                    None => std::future::pending().await,
                }
            };
            let read = tokio::select! {
                r = tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut buf)) => Ok(r),
                r = upstream => {
                    let f = forwarding.as_mut().expect("reading upstream");
                    match r {
                        Ok(n) if n > 0 => {
                            if let Err(e) = f.push.feed(&upstream_buf[..n]) {
                                tracing::info!(node = %f.node, "forwarded RTMP publish ended by the room's node: {e}");
                                return Ok(());
                            }
                            if !f.push.outbound.is_empty() {
                                f.upstream.write_all(&f.push.outbound).await?;
                                f.push.outbound.clear();
                            }
                            continue;
                        }
                        _ => {
                            tracing::info!(node = %f.node, "the room's node closed the forwarded RTMP publish");
                            return Ok(());
                        }
                    }
                }
                end = ended => {
                    // A receiver is polled to completion once only.
                    ended_by_sfu = None;
                    match end {
                        Some(end) => Err(end),
                        None => continue,
                    }
                }
            };
            let events = match read {
                // A newer publish of the same user and stream took over (issue 10, defect 12),
                // the user was removed or the room dismissed: the publish ends with a status that
                // says so.
                Err(end) => {
                    publishing = None;
                    let reason = match end {
                        PublisherEnd::Replaced => "publish_replaced: a newer publish of the same user and stream took over",
                        PublisherEnd::Removed => "removed: the user was removed from the room",
                        PublisherEnd::RoomDismissed => "room_dismissed: the room was dismissed",
                    };
                    match end {
                        PublisherEnd::Replaced => tracing::info!("RTMP publish replaced by a newer one; closing the old connection"),
                        _ => tracing::info!("RTMP publish ended by the server ({reason}); closing the connection"),
                    }
                    session.reject_after_start(reason)?;
                    close_after_write = Some(reason.to_string());
                    Vec::new()
                }
                Ok(Err(_)) => return Err(ConnectionEnd::Idle),
                Ok(Ok(Err(e))) => return Err(e.into()),
                Ok(Ok(Ok(0))) => return Ok(()),
                Ok(Ok(Ok(n))) => session.feed(&buf[..n])?,
            };
            for event in events {
                if let Some(f) = forwarding.as_mut() {
                    if matches!(event, RtmpEvent::PublishFinished) {
                        return Ok(());
                    }
                    f.send(&event).await?;
                    continue;
                }
                if let RtmpEvent::PublishRequested { request_id, app, stream_key } = &event {
                    if let Some(node) = cluster_route(state, app, stream_key).await {
                        match Forwarding::start(&node, app, stream_key).await {
                            Ok(f) => {
                                session.accept_publish(*request_id)?;
                                state.metrics.cluster_routed.get_or_create(&crate::metrics::ResultLabel { result: "rtmp" }).inc();
                                tracing::info!(node = %node.id, "RTMP publish forwarded to the room's node");
                                forwarding = Some(f);
                            }
                            Err(reason) => {
                                tracing::warn!(node = %node.id, "RTMP publish refused by the room's node: {reason}");
                                session.reject_publish(*request_id, &reason)?;
                                close_after_write = Some(reason);
                            }
                        }
                        continue;
                    }
                }
                match event {
                    RtmpEvent::PublishRequested { request_id, app, stream_key } => match authorize(state, &app, &stream_key).await {
                        Ok((spec, privileges)) => {
                            let (stream_kind, user, room) = (spec.stream, spec.user.clone(), spec.room.room.clone());
                            let settings = state.store.snapshot().get(&spec.room.app).map(|a| a.rtmp.clone()).unwrap_or_default();
                            app_id = Some(spec.room.app.clone());
                            let (id, replaced, keyframes) = state.rtc.add_ingest_watched(spec).await?;
                            ended_by_sfu = Some(replaced);
                            session.accept_publish(request_id)?;
                            tracing::info!(%room, %user, stream = %stream_kind, "RTMP publish started");
                            let media = RtmpPublisher::new(stream_kind, privileges, settings.b_frames);
                            publishing = Some(Publishing { id, media, settings, keyframes: Some(keyframes), transcode: None });
                        }
                        Err(e) => {
                            tracing::warn!(code = e.code, "RTMP publish refused: {}", e.message);
                            session.reject_publish(request_id, &description(&e))?;
                            close_after_write = Some(description(&e));
                        }
                    },
                    RtmpEvent::Metadata { video_fps, video_kbps } => {
                        if let Some(p) = publishing.as_mut() {
                            p.media.on_metadata(video_fps, video_kbps);
                        }
                    }
                    media @ (RtmpEvent::Video { .. } | RtmpEvent::Audio { .. }) => {
                        let Some(p) = publishing.as_mut() else { continue };
                        let packets = match media {
                            RtmpEvent::Video { data, timestamp_ms } => p.media.on_video(&data, timestamp_ms).and_then(|packets| {
                                let app = app_id.as_ref().expect("set with publishing");
                                p.feed_transcoder(state, app).map_err(tessera_engine::rtmp_publisher::Refusal)?;
                                Ok(packets)
                            }),
                            RtmpEvent::Audio { data, timestamp_ms } => p.media.on_audio(&data, timestamp_ms),
                            _ => continue,
                        };
                        match packets {
                            Ok(packets) if !packets.is_empty() => state.rtc.push(p.id, packets).await?,
                            Ok(_) => {}
                            Err(refusal) => {
                                tracing::warn!("RTMP publish refused: {refusal}");
                                session.reject_after_start(&refusal.0)?;
                                close_after_write = Some(refusal.0);
                                break;
                            }
                        }
                    }
                    RtmpEvent::PublishFinished => {
                        if let Some(p) = publishing.take() {
                            let _ = state.rtc.remove_ingest(p.id).await;
                        }
                    }
                }
            }
            if !session.outbound.is_empty() {
                stream.write_all(&session.outbound).await?;
                session.outbound.clear();
            }
            if let Some(reason) = close_after_write {
                // Give the client a moment to read the onStatus error (an encoder that is still
                // writing would otherwise see only a broken pipe), then close: within 1 s in all
                // (PRODUCT.md §6.3). What it sends meanwhile is discarded.
                let linger = tokio::time::sleep(REFUSAL_LINGER);
                tokio::pin!(linger);
                loop {
                    tokio::select! {
                        _ = &mut linger => break,
                        r = stream.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { break },
                    }
                }
                let _ = stream.shutdown().await;
                return Err(ConnectionEnd::Refused(reason));
            }
        }
    }
    .await;
    if let Some(p) = publishing {
        let _ = state.rtc.remove_ingest(p.id).await;
    }
    result
}
