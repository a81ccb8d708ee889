//! The tokio task that owns the shared WebRTC UDP socket and drives the sans-IO `Sfu`:
//! datagrams in, the next timeout, commands from the HTTP layer (new WHIP/WHEP sessions), and
//! datagrams out. All SFU state lives on this one task, so it needs no locks. `task.rs` is
//! that task's loop; this module the handle the HTTP side holds.

mod egress;
mod task;

use task::run;

use crate::ice_tcp::TcpEvent;
use crate::presence::ParticipantInfo;
use crate::presence::RoomEvent;
use crate::sfu::{
    IceRestart, IngestPacket, PublisherEnd, PublisherInfo, RoomKey, RoomSummary, SessionInfo, SessionSpec, Sfu, SfuCounters, SfuOutput, SfuStats, SubscribeRequest,
    SubscriberError, SubscriberOffer, TapKind, TapPacket,
};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_rtc::str0m::net::Protocol;
use tessera_rtc::OfferError;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

#[derive(Debug, thiserror::Error)]
pub enum RtcServerError {
    #[error("cannot listen on {addr} for WebRTC (UDP): {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("the media engine has stopped")]
    Stopped,
}

enum Command {
    AddSession {
        spec: SessionSpec,
        offer: String,
        reply: oneshot::Sender<Result<String, OfferError>>,
    },
    RemoveSession {
        sid: String,
        reply: oneshot::Sender<Option<SessionInfo>>,
    },
    SessionInfo {
        sid: String,
        reply: oneshot::Sender<Option<SessionInfo>>,
    },
    RoomExists {
        key: RoomKey,
        reply: oneshot::Sender<bool>,
    },
    IsPublished {
        key: RoomKey,
        user: tessera_model::UserId,
        stream: tessera_media::StreamKind,
        reply: oneshot::Sender<bool>,
    },
    ViewerSessions {
        key: RoomKey,
        user: tessera_model::UserId,
        reply: oneshot::Sender<usize>,
    },
    IceRestart {
        sid: String,
        ufrag: String,
        pwd: String,
        reply: oneshot::Sender<Option<IceRestart>>,
    },
    Stats {
        reply: oneshot::Sender<SfuStats>,
    },
    AddIngest {
        spec: SessionSpec,
        replaced: Option<oneshot::Sender<PublisherEnd>>,
        keyframes: Option<std::sync::mpsc::Sender<()>>,
        reply: oneshot::Sender<u64>,
    },
    Push {
        id: u64,
        packets: Vec<IngestPacket>,
    },
    RemoveIngest {
        id: u64,
    },
    AddTap {
        key: RoomKey,
        kind: TapKind,
        owner: tessera_model::UserId,
        reply: oneshot::Sender<(u64, mpsc::Receiver<TapPacket>)>,
    },
    RemoveTap {
        id: u64,
    },
    WatchPublishers {
        key: RoomKey,
        reply: oneshot::Sender<PublisherWatch>,
    },
    Rooms {
        app: tessera_model::AppId,
        reply: oneshot::Sender<Vec<RoomSummary>>,
    },
    RoomUsers {
        key: RoomKey,
        reply: oneshot::Sender<Option<Vec<ParticipantInfo>>>,
    },
    Kick {
        key: RoomKey,
        user: tessera_model::UserId,
        reply: oneshot::Sender<bool>,
    },
    Dismiss {
        key: RoomKey,
        reply: oneshot::Sender<bool>,
    },
    JoinSignaling {
        key: RoomKey,
        user: tessera_model::UserId,
        join: crate::JoinInfo,
        ended: oneshot::Sender<PublisherEnd>,
        inbox: mpsc::UnboundedSender<crate::sfu::MemberMessage>,
        reply: oneshot::Sender<u64>,
    },
    AddSpeedTest {
        spec: SessionSpec,
        offer: String,
        server_ip: String,
        reply: oneshot::Sender<Result<String, crate::sfu::SpeedTestRefusal>>,
    },
    Custom {
        key: RoomKey,
        from: tessera_model::UserId,
        cmd_id: u8,
        payload: Vec<u8>,
        to: Option<Vec<tessera_model::UserId>>,
        reply: oneshot::Sender<CustomReply>,
    },
    LeaveSignaling {
        id: u64,
        reason: crate::presence::LeaveReason,
    },
    UnwatchPublishers {
        id: u64,
    },
    RoomsWithAnchors {
        reply: oneshot::Sender<Vec<RoomKey>>,
    },
    RequestKeyframe {
        key: RoomKey,
        user: tessera_model::UserId,
        stream: tessera_media::StreamKind,
    },
    AddSubscriber {
        spec: SessionSpec,
        first_media: mpsc::UnboundedSender<FirstMedia>,
        reply: oneshot::Sender<Result<u64, OfferError>>,
    },
    Subscribe {
        sid: String,
        req: SubscribeRequest,
        reply: oneshot::Sender<SubscriberReply>,
    },
    Unsubscribe {
        sid: String,
        source: (tessera_model::UserId, tessera_media::StreamKind),
        reply: oneshot::Sender<SubscriberReply>,
    },
    SubscriberAnswer {
        sid: String,
        sdp: String,
        reply: oneshot::Sender<SubscriberReply>,
    },
    PendingOffer {
        sid: String,
        reply: oneshot::Sender<Option<SubscriberOffer>>,
    },
    UserTracks {
        key: RoomKey,
        user: tessera_model::UserId,
        reply: oneshot::Sender<Vec<crate::sfu::TrackStats>>,
    },
    Mute {
        key: RoomKey,
        user: tessera_model::UserId,
        track: crate::Track,
        muted: bool,
        reply: oneshot::Sender<bool>,
    },
    SwitchRole {
        key: RoomKey,
        user: tessera_model::UserId,
        role: tessera_model::Role,
        reply: oneshot::Sender<bool>,
    },
}

type SubscriberReply = Result<Option<SubscriberOffer>, SubscriberError>;
type CustomReply = Result<Option<u32>, crate::custom::CustomError>;

/// A joined room-signaling session in the SFU: its id, word of its end (kick, dismissal), and
/// what the SFU has for it to send (custom messages, refusals).
pub struct SignalingMember {
    pub id: u64,
    pub ended: oneshot::Receiver<PublisherEnd>,
    pub inbox: mpsc::UnboundedReceiver<crate::sfu::MemberMessage>,
}

/// The first media of a (user, stream) reached a subscriber connection: (user, stream, video).
pub type FirstMedia = (tessera_model::UserId, tessera_media::StreamKind, bool);

/// Packets a tap may have queued before the oldest are dropped (the mixer then asks for a
/// keyframe): about 2 s of a few 360p publishers.
const TAP_QUEUE: usize = 8192;

/// The HTTP side's handle on the media task. Cheap to clone.
#[derive(Clone)]
pub struct RtcHandle {
    tx: mpsc::Sender<Command>,
    pub counters: Arc<SfuCounters>,
    pub local_addr: SocketAddr,
    pub candidates: Vec<SocketAddr>,
    /// Where ICE over TCP is accepted, if it is.
    pub tcp_addr: Option<SocketAddr>,
    /// Room and media events, for whoever takes them (the webhooks).
    room_events: Arc<std::sync::Mutex<Option<mpsc::UnboundedReceiver<RoomEvent>>>>,
}

/// An internal publisher's keyframe requests (its viewers asked, throttled like a PLI): the
/// owner checks between frames and encodes an IDR if it can.
pub struct KeyframeRequests(std::sync::mpsc::Receiver<()>);

impl KeyframeRequests {
    /// Whether a keyframe was asked for since the last call.
    pub fn take(&self) -> bool {
        let mut asked = false;
        while self.0.try_recv().is_ok() {
            asked = true;
        }
        asked
    }
}

/// The host candidates to advertise: `public_ip`, else the bound address, else every
/// interface address (loopback included, for local clients).
pub fn host_candidates(bound: SocketAddr, public_ip: Option<IpAddr>) -> Vec<SocketAddr> {
    let port = bound.port();
    if let Some(ip) = public_ip {
        return vec![SocketAddr::new(ip, port)];
    }
    if !bound.ip().is_unspecified() {
        return vec![bound];
    }
    let mut out: Vec<SocketAddr> =
        if_addrs::get_if_addrs().unwrap_or_default().into_iter().map(|i| i.ip()).filter(|ip| ip.is_ipv4() && !ip.is_loopback()).map(|ip| SocketAddr::new(ip, port)).collect();
    out.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    out
}

fn bind_tcp(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

impl RtcHandle {
    /// Binds the UDP socket (and the ICE-TCP listener) and spawns the media task on the current
    /// tokio runtime. `tcp`: where to accept ICE over TCP; port 0 takes the UDP socket's port
    /// number, and then a port already taken only costs the fallback (a warning), not the start.
    pub fn start(
        bind: SocketAddr,
        tcp: Option<SocketAddr>,
        public_ip: Option<IpAddr>,
        empty_room_timeout: Duration,
        liveness_timeout: Duration,
    ) -> Result<RtcHandle, RtcServerError> {
        let socket = StdUdpSocket::bind(bind).map_err(|source| RtcServerError::Bind { addr: bind, source })?;
        socket.set_nonblocking(true).map_err(|source| RtcServerError::Bind { addr: bind, source })?;
        let local_addr = socket.local_addr().map_err(|source| RtcServerError::Bind { addr: bind, source })?;
        let egress_socket = socket.try_clone().map_err(|source| RtcServerError::Bind { addr: bind, source })?;
        let socket = UdpSocket::from_std(socket).map_err(|source| RtcServerError::Bind { addr: bind, source })?;
        let candidates = host_candidates(local_addr, public_ip);
        let mut sfu = Sfu::new(candidates.clone(), empty_room_timeout, Instant::now());
        sfu.set_liveness_timeout(liveness_timeout);
        let (mut tcp_events, mut tcp_addr) = (None, None);
        if let Some(tcp) = tcp {
            let derived = tcp.port() == 0;
            let addr = if derived { SocketAddr::new(tcp.ip(), local_addr.port()) } else { tcp };
            match bind_tcp(addr) {
                Ok(listener) => {
                    let tcp_local = listener.local_addr().map_err(|source| RtcServerError::Bind { addr, source })?;
                    let tcp_candidates = host_candidates(tcp_local, public_ip);
                    tracing::info!(addr = %tcp_local, candidates = ?tcp_candidates, "WebRTC ICE-TCP listening");
                    sfu.set_tcp_candidates(tcp_candidates);
                    tcp_addr = Some(tcp_local);
                    let (tx, rx) = mpsc::channel(1024);
                    tokio::spawn(crate::ice_tcp::accept(listener, tx));
                    tcp_events = Some(rx);
                }
                Err(source) if derived => tracing::warn!(%addr, "ICE over TCP is off: {source}"),
                Err(source) => return Err(RtcServerError::Bind { addr, source }),
            }
        }
        let counters = sfu.counters.clone();
        let egress = egress::Egress::start(egress_socket, counters.clone()).map_err(|source| RtcServerError::Bind { addr: bind, source })?;
        let (tx, rx) = mpsc::channel(256);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        tokio::spawn(run(task::UdpPort { socket, egress, candidates: candidates.clone() }, tcp_events, rx, tx.downgrade(), sfu, events_tx));
        tracing::info!(addr = %local_addr, candidates = ?candidates, "WebRTC UDP listening");
        Ok(RtcHandle { tx, counters, local_addr, candidates, tcp_addr, room_events: Arc::new(std::sync::Mutex::new(Some(events_rx))) })
    }

    /// The room and media events (participants entering and leaving, tracks starting and
    /// stopping, rooms made and dismissed); the first caller gets them.
    pub fn take_room_events(&self) -> Option<mpsc::UnboundedReceiver<RoomEvent>> {
        self.room_events.lock().expect("room events").take()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, RtcServerError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| RtcServerError::Stopped)?;
        rx.await.map_err(|_| RtcServerError::Stopped)
    }

    pub async fn add_session(&self, spec: SessionSpec, offer: String) -> Result<Result<String, OfferError>, RtcServerError> {
        self.ask(|reply| Command::AddSession { spec, offer, reply }).await
    }

    /// Starts a speed test (PRODUCT.md §9) from the client's offer: the SDP answer.
    pub async fn add_speed_test(&self, spec: SessionSpec, offer: String, server_ip: String) -> Result<Result<String, crate::sfu::SpeedTestRefusal>, RtcServerError> {
        self.ask(|reply| Command::AddSpeedTest { spec, offer, server_ip, reply }).await
    }

    pub async fn remove_session(&self, sid: &str) -> Result<Option<SessionInfo>, RtcServerError> {
        self.ask(|reply| Command::RemoveSession { sid: sid.to_owned(), reply }).await
    }

    pub async fn session_info(&self, sid: &str) -> Result<Option<SessionInfo>, RtcServerError> {
        self.ask(|reply| Command::SessionInfo { sid: sid.to_owned(), reply }).await
    }

    pub async fn ice_restart(&self, sid: &str, ufrag: &str, pwd: &str) -> Result<Option<IceRestart>, RtcServerError> {
        self.ask(|reply| Command::IceRestart { sid: sid.to_owned(), ufrag: ufrag.to_owned(), pwd: pwd.to_owned(), reply }).await
    }

    pub async fn viewer_sessions(&self, key: RoomKey, user: tessera_model::UserId) -> Result<usize, RtcServerError> {
        self.ask(|reply| Command::ViewerSessions { key, user, reply }).await
    }

    pub async fn room_exists(&self, key: RoomKey) -> Result<bool, RtcServerError> {
        self.ask(|reply| Command::RoomExists { key, reply }).await
    }

    pub async fn is_published(&self, key: RoomKey, user: tessera_model::UserId, stream: tessera_media::StreamKind) -> Result<bool, RtcServerError> {
        self.ask(|reply| Command::IsPublished { key, user, stream, reply }).await
    }

    /// Adds a publisher fed by this process (RTMP, pull ingest); returns its id for `push`.
    pub async fn add_ingest(&self, spec: SessionSpec) -> Result<u64, RtcServerError> {
        self.ask(|reply| Command::AddIngest { spec, replaced: None, keyframes: None, reply }).await
    }

    /// `add_ingest`, with a receiver that gets `Ok(())` if a later publisher of the same (user,
    /// stream) replaces this one (the caller closes its connection then); it gets an error when
    /// the ingest is removed otherwise. Viewers' keyframe requests arrive on the
    /// `KeyframeRequests` (an RTMP publish that is transcoded answers them; drop it otherwise).
    pub async fn add_ingest_watched(&self, spec: SessionSpec) -> Result<(u64, oneshot::Receiver<PublisherEnd>, KeyframeRequests), RtcServerError> {
        let (tx, rx) = oneshot::channel();
        let (keyframes_tx, keyframes) = std::sync::mpsc::channel();
        let id = self.ask(|reply| Command::AddIngest { spec, replaced: Some(tx), keyframes: Some(keyframes_tx), reply }).await?;
        Ok((id, rx, KeyframeRequests(keyframes)))
    }

    /// Hands an ingest's packets (one access unit, typically) to the SFU.
    pub async fn push(&self, id: u64, packets: Vec<IngestPacket>) -> Result<(), RtcServerError> {
        self.tx.send(Command::Push { id, packets }).await.map_err(|_| RtcServerError::Stopped)
    }

    pub async fn remove_ingest(&self, id: u64) -> Result<(), RtcServerError> {
        self.tx.send(Command::RemoveIngest { id }).await.map_err(|_| RtcServerError::Stopped)
    }

    /// An in-process subscriber to every publisher of a room (a mix job); `owner` is the task's
    /// server user, which makes the room if it does not exist (event 101). Dropping the
    /// receiver is not enough to stop it: call `remove_tap`.
    pub async fn add_tap(&self, key: RoomKey, owner: tessera_model::UserId) -> Result<(u64, mpsc::Receiver<TapPacket>), RtcServerError> {
        self.ask(|reply| Command::AddTap { key, kind: TapKind::Mix, owner, reply }).await
    }

    /// A relay's or a recording's tap (`kind`): like `add_tap`, with mixes' output too (relays
    /// and recordings of `mix_<id>`) and the publishers' originals the kind keeps.
    pub async fn add_output_tap(&self, key: RoomKey, kind: TapKind, owner: tessera_model::UserId) -> Result<(u64, mpsc::Receiver<TapPacket>), RtcServerError> {
        self.ask(|reply| Command::AddTap { key, kind, owner, reply }).await
    }

    pub async fn remove_tap(&self, id: u64) -> Result<(), RtcServerError> {
        self.tx.send(Command::RemoveTap { id }).await.map_err(|_| RtcServerError::Stopped)
    }

    pub async fn rooms_with_anchors(&self) -> Result<Vec<RoomKey>, RtcServerError> {
        self.ask(|reply| Command::RoomsWithAnchors { reply }).await
    }

    pub async fn request_keyframe(&self, key: RoomKey, user: tessera_model::UserId, stream: tessera_media::StreamKind) -> Result<(), RtcServerError> {
        self.tx.send(Command::RequestKeyframe { key, user, stream }).await.map_err(|_| RtcServerError::Stopped)
    }

    pub async fn stats(&self) -> Result<SfuStats, RtcServerError> {
        self.ask(|reply| Command::Stats { reply }).await
    }
}

/// The calls a worker thread makes (mix jobs and pull ingests do FFmpeg work that must not run
/// on the async workers): they wait on the command channel itself, never on a `block_on` of
/// the runtime. Calling them from async code panics (tokio's rule for blocking sends).
impl RtcHandle {
    /// The app's rooms (`GET /v1/rooms`).
    pub async fn rooms(&self, app: tessera_model::AppId) -> Result<Vec<RoomSummary>, RtcServerError> {
        self.ask(|reply| Command::Rooms { app, reply }).await
    }

    /// The room's participants, or `None` when there is no such room.
    pub async fn room_users(&self, key: RoomKey) -> Result<Option<Vec<ParticipantInfo>>, RtcServerError> {
        self.ask(|reply| Command::RoomUsers { key, reply }).await
    }

    /// Ends every session of the user in the room (104 Reason 3). Whether the user was there.
    pub async fn kick(&self, key: RoomKey, user: tessera_model::UserId) -> Result<bool, RtcServerError> {
        self.ask(|reply| Command::Kick { key, user, reply }).await
    }

    /// A room-signaling session joins; the receiver says why the SFU ended it (a kick, a
    /// dismissed room), if it does.
    pub async fn join_signaling(&self, key: RoomKey, user: tessera_model::UserId, join: crate::JoinInfo) -> Result<SignalingMember, RtcServerError> {
        let (ended, ended_rx) = oneshot::channel();
        let (inbox, inbox_rx) = mpsc::unbounded_channel();
        let id = self.ask(|reply| Command::JoinSignaling { key, user, join, ended, inbox, reply }).await?;
        Ok(SignalingMember { id, ended: ended_rx, inbox: inbox_rx })
    }

    /// A custom message over room signaling (reliable and ordered; PRODUCT.md §8) from an
    /// anchor: its `seq` when accepted, `None` when dropped without a warning.
    pub async fn send_custom(
        &self,
        key: RoomKey,
        from: tessera_model::UserId,
        cmd_id: u8,
        payload: Vec<u8>,
        to: Option<Vec<tessera_model::UserId>>,
    ) -> Result<CustomReply, RtcServerError> {
        self.ask(|reply| Command::Custom { key, from, cmd_id, payload, to, reply }).await
    }

    pub async fn leave_signaling(&self, id: u64, reason: crate::presence::LeaveReason) -> Result<(), RtcServerError> {
        self.tx.send(Command::LeaveSignaling { id, reason }).await.map_err(|_| RtcServerError::Stopped)
    }

    /// Ends every session in the room, then the room (102). Whether the room existed.
    pub async fn dismiss(&self, key: RoomKey) -> Result<bool, RtcServerError> {
        self.ask(|reply| Command::Dismiss { key, reply }).await
    }

    /// Follows the room's publishers: the list now, then each change (a task waiting for its
    /// source, a recording choosing streams, a mix laying out tiles). Dropping the watch ends it.
    pub async fn watch_publishers(&self, key: RoomKey) -> Result<PublisherWatch, RtcServerError> {
        self.ask(|reply| Command::WatchPublishers { key, reply }).await
    }

    /// Adds a connection the server offers to (room signaling's `sub`); the receiver hears of
    /// each stream's first media forwarded on it.
    pub async fn add_subscriber(&self, spec: SessionSpec) -> Result<Result<(u64, mpsc::UnboundedReceiver<FirstMedia>), OfferError>, RtcServerError> {
        let (first_media, rx) = mpsc::unbounded_channel();
        Ok(self.ask(|reply| Command::AddSubscriber { spec, first_media, reply }).await?.map(|id| (id, rx)))
    }

    pub async fn subscribe(&self, sid: &str, req: SubscribeRequest) -> Result<SubscriberReply, RtcServerError> {
        self.ask(|reply| Command::Subscribe { sid: sid.to_owned(), req, reply }).await
    }

    pub async fn unsubscribe(&self, sid: &str, source: (tessera_model::UserId, tessera_media::StreamKind)) -> Result<SubscriberReply, RtcServerError> {
        self.ask(|reply| Command::Unsubscribe { sid: sid.to_owned(), source, reply }).await
    }

    pub async fn subscriber_answer(&self, sid: &str, sdp: String) -> Result<SubscriberReply, RtcServerError> {
        self.ask(|reply| Command::SubscriberAnswer { sid: sid.to_owned(), sdp, reply }).await
    }

    /// The `sub` connection's offer still waiting for an answer.
    pub async fn pending_offer(&self, sid: &str) -> Result<Option<SubscriberOffer>, RtcServerError> {
        self.ask(|reply| Command::PendingOffer { sid: sid.to_owned(), reply }).await
    }

    /// The tracks a user publishes and receives in the room, with their rates.
    pub async fn user_tracks(&self, key: RoomKey, user: tessera_model::UserId) -> Result<Vec<crate::sfu::TrackStats>, RtcServerError> {
        self.ask(|reply| Command::UserTracks { key, user, reply }).await
    }

    /// A publisher mutes or unmutes a started track. Whether that track has started.
    pub async fn mute(&self, key: RoomKey, user: tessera_model::UserId, track: crate::Track, muted: bool) -> Result<bool, RtcServerError> {
        self.ask(|reply| Command::Mute { key, user, track, muted, reply }).await
    }

    /// The participant's role changes; to audience, its publications end. Whether it is present.
    pub async fn switch_role(&self, key: RoomKey, user: tessera_model::UserId, role: tessera_model::Role) -> Result<bool, RtcServerError> {
        self.ask(|reply| Command::SwitchRole { key, user, role, reply }).await
    }

    pub fn watch_publishers_blocking(&self, key: RoomKey) -> Result<PublisherWatch, RtcServerError> {
        self.ask_blocking(|reply| Command::WatchPublishers { key, reply })
    }

    fn ask_blocking<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, RtcServerError> {
        let (reply, rx) = oneshot::channel();
        self.tx.blocking_send(make(reply)).map_err(|_| RtcServerError::Stopped)?;
        rx.blocking_recv().map_err(|_| RtcServerError::Stopped)
    }

    /// Adds an internal publisher that can make keyframes on request (a mix job, a transcoding
    /// pull ingest): its viewers' requests arrive on the returned `KeyframeRequests`.
    pub fn add_ingest_blocking(&self, spec: SessionSpec) -> Result<(u64, KeyframeRequests), RtcServerError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let id = self.ask_blocking(|reply| Command::AddIngest { spec, replaced: None, keyframes: Some(tx), reply })?;
        Ok((id, KeyframeRequests(rx)))
    }

    pub fn push_blocking(&self, id: u64, packets: Vec<IngestPacket>) -> Result<(), RtcServerError> {
        self.tx.blocking_send(Command::Push { id, packets }).map_err(|_| RtcServerError::Stopped)
    }

    pub fn remove_ingest_blocking(&self, id: u64) -> Result<(), RtcServerError> {
        self.tx.blocking_send(Command::RemoveIngest { id }).map_err(|_| RtcServerError::Stopped)
    }

    pub fn add_tap_blocking(&self, key: RoomKey, owner: tessera_model::UserId) -> Result<(u64, mpsc::Receiver<TapPacket>), RtcServerError> {
        self.ask_blocking(|reply| Command::AddTap { key, kind: TapKind::Mix, owner, reply })
    }

    pub fn remove_tap_blocking(&self, id: u64) -> Result<(), RtcServerError> {
        self.tx.blocking_send(Command::RemoveTap { id }).map_err(|_| RtcServerError::Stopped)
    }

    pub fn request_keyframe_blocking(&self, key: RoomKey, user: tessera_model::UserId, stream: tessera_media::StreamKind) -> Result<(), RtcServerError> {
        self.tx.blocking_send(Command::RequestKeyframe { key, user, stream }).map_err(|_| RtcServerError::Stopped)
    }
}

/// A room's publishers as they change (`RtcHandle::watch_publishers`).
pub struct PublisherWatch {
    id: u64,
    /// The current list, sorted by join order; `changed()` wakes on each new one.
    pub list: watch::Receiver<Vec<PublisherInfo>>,
    /// Weak: a watch must not keep the media task alive.
    commands: mpsc::WeakSender<Command>,
}

impl Drop for PublisherWatch {
    fn drop(&mut self) {
        // If the queue is full, the media task notices the closed channel at the next change.
        if let Some(tx) = self.commands.upgrade() {
            let _ = tx.try_send(Command::UnwatchPublishers { id: self.id });
        }
    }
}
