//! The tokio task that owns the shared WebRTC UDP socket and drives the sans-IO `Sfu`:
//! datagrams in, the next timeout, commands from the HTTP layer (new WHIP/WHEP sessions), and
//! datagrams out. All SFU state lives on this one task, so it needs no locks.

use crate::ice_tcp::TcpEvent;
use crate::presence::ParticipantInfo;
use crate::presence::RoomEvent;
use crate::sfu::{
    IceRestart, IngestPacket, PublisherEnd, PublisherInfo, RoomKey, RoomSummary, SessionInfo, SessionSpec, Sfu, SfuCounters, SfuOutput, SfuStats, SubscribeRequest,
    SubscriberError, SubscriberOffer, TapPacket,
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
    AddSession { spec: SessionSpec, offer: String, reply: oneshot::Sender<Result<String, OfferError>> },
    RemoveSession { sid: String, reply: oneshot::Sender<Option<SessionInfo>> },
    SessionInfo { sid: String, reply: oneshot::Sender<Option<SessionInfo>> },
    RoomExists { key: RoomKey, reply: oneshot::Sender<bool> },
    IsPublished { key: RoomKey, user: tessera_model::UserId, stream: tessera_media::StreamKind, reply: oneshot::Sender<bool> },
    ViewerSessions { key: RoomKey, user: tessera_model::UserId, reply: oneshot::Sender<usize> },
    IceRestart { sid: String, ufrag: String, pwd: String, reply: oneshot::Sender<Option<IceRestart>> },
    Stats { reply: oneshot::Sender<SfuStats> },
    AddIngest { spec: SessionSpec, replaced: Option<oneshot::Sender<PublisherEnd>>, keyframes: Option<std::sync::mpsc::Sender<()>>, reply: oneshot::Sender<u64> },
    Push { id: u64, packets: Vec<IngestPacket> },
    RemoveIngest { id: u64 },
    AddTap { key: RoomKey, with_mixes: bool, owner: tessera_model::UserId, reply: oneshot::Sender<(u64, mpsc::Receiver<TapPacket>)> },
    RemoveTap { id: u64 },
    WatchPublishers { key: RoomKey, reply: oneshot::Sender<PublisherWatch> },
    Rooms { app: tessera_model::AppId, reply: oneshot::Sender<Vec<RoomSummary>> },
    RoomUsers { key: RoomKey, reply: oneshot::Sender<Option<Vec<ParticipantInfo>>> },
    Kick { key: RoomKey, user: tessera_model::UserId, reply: oneshot::Sender<bool> },
    Dismiss { key: RoomKey, reply: oneshot::Sender<bool> },
    JoinSignaling { key: RoomKey, user: tessera_model::UserId, join: crate::JoinInfo, ended: oneshot::Sender<PublisherEnd>, reply: oneshot::Sender<u64> },
    LeaveSignaling { id: u64, reason: crate::presence::LeaveReason },
    UnwatchPublishers { id: u64 },
    RoomsWithAnchors { reply: oneshot::Sender<Vec<RoomKey>> },
    RequestKeyframe { key: RoomKey, user: tessera_model::UserId, stream: tessera_media::StreamKind },
    AddSubscriber { spec: SessionSpec, first_media: mpsc::UnboundedSender<FirstMedia>, reply: oneshot::Sender<Result<u64, OfferError>> },
    Subscribe { sid: String, req: SubscribeRequest, reply: oneshot::Sender<SubscriberReply> },
    Unsubscribe { sid: String, source: (tessera_model::UserId, tessera_media::StreamKind), reply: oneshot::Sender<SubscriberReply> },
    SubscriberAnswer { sid: String, sdp: String, reply: oneshot::Sender<SubscriberReply> },
    PendingOffer { sid: String, reply: oneshot::Sender<Option<SubscriberOffer>> },
    UserTracks { key: RoomKey, user: tessera_model::UserId, reply: oneshot::Sender<Vec<crate::sfu::TrackStats>> },
    Mute { key: RoomKey, user: tessera_model::UserId, track: crate::Track, muted: bool, reply: oneshot::Sender<bool> },
    SwitchRole { key: RoomKey, user: tessera_model::UserId, role: tessera_model::Role, reply: oneshot::Sender<bool> },
}

type SubscriberReply = Result<Option<SubscriberOffer>, SubscriberError>;

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

/// The next ICE-TCP event (never, without a listener).
async fn next_tcp(rx: &mut Option<mpsc::Receiver<TcpEvent>>) -> Option<TcpEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Which of our addresses a datagram from `source` was most likely sent to. Exact for a single
/// candidate; with several, loopback talks to loopback and everyone else to the first
/// interface address.
fn destination_for(candidates: &[SocketAddr], source: SocketAddr) -> SocketAddr {
    if let Some(c) = candidates.iter().find(|c| c.ip() == source.ip()) {
        return *c;
    }
    candidates.iter().find(|c| c.ip().is_loopback() == source.ip().is_loopback()).or(candidates.first()).copied().unwrap_or(source)
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
        let (tx, rx) = mpsc::channel(256);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        tokio::spawn(run(socket, tcp_events, rx, tx.downgrade(), sfu, candidates.clone(), events_tx));
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
    /// the ingest is removed otherwise.
    pub async fn add_ingest_watched(&self, spec: SessionSpec) -> Result<(u64, oneshot::Receiver<PublisherEnd>), RtcServerError> {
        let (tx, rx) = oneshot::channel();
        let id = self.ask(|reply| Command::AddIngest { spec, replaced: Some(tx), keyframes: None, reply }).await?;
        Ok((id, rx))
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
        self.ask(|reply| Command::AddTap { key, with_mixes: false, owner, reply }).await
    }

    /// Like `add_tap`, and mixes' output too (relays and recordings of `mix_<id>`).
    pub async fn add_tap_all(&self, key: RoomKey, owner: tessera_model::UserId) -> Result<(u64, mpsc::Receiver<TapPacket>), RtcServerError> {
        self.ask(|reply| Command::AddTap { key, with_mixes: true, owner, reply }).await
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
    pub async fn join_signaling(&self, key: RoomKey, user: tessera_model::UserId, join: crate::JoinInfo) -> Result<(u64, oneshot::Receiver<PublisherEnd>), RtcServerError> {
        let (ended, rx) = oneshot::channel();
        let id = self.ask(|reply| Command::JoinSignaling { key, user, join, ended, reply }).await?;
        Ok((id, rx))
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
        self.ask_blocking(|reply| Command::AddTap { key, with_mixes: false, owner, reply })
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

/// Datagrams read per wake-up before timers and commands get a turn.
const RECV_BATCH: usize = 64;

async fn run(
    socket: UdpSocket,
    mut tcp_events: Option<mpsc::Receiver<TcpEvent>>,
    mut commands: mpsc::Receiver<Command>,
    command_tx: mpsc::WeakSender<Command>,
    mut sfu: Sfu,
    candidates: Vec<SocketAddr>,
    room_events: mpsc::UnboundedSender<RoomEvent>,
) {
    let mut buf = vec![0u8; 2048];
    let mut taps: std::collections::HashMap<u64, mpsc::Sender<TapPacket>> = std::collections::HashMap::new();
    let mut publisher_watches: std::collections::HashMap<u64, watch::Sender<Vec<PublisherInfo>>> = std::collections::HashMap::new();
    // Internal publishers whose owner wants to hear that a newer one replaced them.
    let mut replaced_watchers: std::collections::HashMap<u64, oneshot::Sender<PublisherEnd>> = std::collections::HashMap::new();
    // Internal publishers that make keyframes on request, and where to tell them.
    let mut keyframe_owners: std::collections::HashMap<u64, std::sync::mpsc::Sender<()>> = std::collections::HashMap::new();
    let mut first_media: std::collections::HashMap<u64, mpsc::UnboundedSender<FirstMedia>> = std::collections::HashMap::new();
    // ICE-TCP connections by the client's address.
    let mut tcp_writers: std::collections::HashMap<SocketAddr, mpsc::Sender<Vec<u8>>> = std::collections::HashMap::new();
    loop {
        let deadline = sfu.next_timeout();
        tokio::select! {
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { break };
                let now = Instant::now();
                match cmd {
                    Command::AddSession { spec, offer, reply } => {
                        let _ = reply.send(sfu.add_session(spec, &offer, now));
                    }
                    Command::RemoveSession { sid, reply } => {
                        let _ = reply.send(sfu.remove_session(&sid, now));
                    }
                    Command::SessionInfo { sid, reply } => {
                        let _ = reply.send(sfu.session_info(&sid));
                    }
                    Command::IceRestart { sid, ufrag, pwd, reply } => {
                        let _ = reply.send(sfu.ice_restart(&sid, &ufrag, &pwd, now));
                    }
                    Command::ViewerSessions { key, user, reply } => {
                        let _ = reply.send(sfu.viewer_sessions(&key, &user));
                    }
                    Command::RoomExists { key, reply } => {
                        let _ = reply.send(sfu.room_exists(&key));
                    }
                    Command::IsPublished { key, user, stream, reply } => {
                        let _ = reply.send(sfu.is_published(&key, &user, stream));
                    }
                    Command::Stats { reply } => {
                        let _ = reply.send(sfu.stats());
                    }
                    Command::AddIngest { spec, replaced, keyframes, reply } => {
                        let (id, old) = sfu.add_internal_publisher(spec, now);
                        if let Some(tx) = old.and_then(|old| replaced_watchers.remove(&old)) {
                            let _ = tx.send(PublisherEnd::Replaced);
                        }
                        if let Some(tx) = replaced {
                            replaced_watchers.insert(id, tx);
                        }
                        if let Some(tx) = keyframes {
                            keyframe_owners.insert(id, tx);
                        }
                        let _ = reply.send(id);
                    }
                    Command::Push { id, packets } => {
                        for p in packets {
                            sfu.push_packet(id, p, now);
                        }
                        sfu.flush(now);
                    }
                    Command::RemoveIngest { id } => {
                        replaced_watchers.remove(&id);
                        sfu.remove_internal_publisher(id, now);
                        keyframe_owners.remove(&id);
                    }
                    Command::AddTap { key, with_mixes, owner, reply } => {
                        let id = sfu.add_tap(key, with_mixes, &owner, now);
                        let (tx, rx) = mpsc::channel(TAP_QUEUE);
                        taps.insert(id, tx);
                        let _ = reply.send((id, rx));
                    }
                    Command::RemoveTap { id } => {
                        sfu.remove_tap(id);
                        taps.remove(&id);
                    }
                    Command::WatchPublishers { key, reply } => {
                        let id = sfu.watch_publishers(key);
                        let (tx, list) = watch::channel(Vec::new());
                        publisher_watches.insert(id, tx);
                        let _ = reply.send(PublisherWatch { id, list, commands: command_tx.clone() });
                    }
                    Command::Rooms { app, reply } => {
                        let _ = reply.send(sfu.rooms(&app));
                    }
                    Command::RoomUsers { key, reply } => {
                        let _ = reply.send(sfu.room_users(&key));
                    }
                    Command::Kick { key, user, reply } => {
                        let _ = reply.send(sfu.kick(&key, &user, now));
                    }
                    Command::Dismiss { key, reply } => {
                        let _ = reply.send(sfu.dismiss(&key, now));
                    }
                    Command::JoinSignaling { key, user, join, ended, reply } => {
                        let id = sfu.join_signaling(&key, &user, &join, now);
                        replaced_watchers.insert(id, ended);
                        let _ = reply.send(id);
                    }
                    Command::LeaveSignaling { id, reason } => {
                        replaced_watchers.remove(&id);
                        sfu.leave_signaling(id, reason, now);
                    }
                    Command::UnwatchPublishers { id } => {
                        sfu.unwatch_publishers(id);
                        publisher_watches.remove(&id);
                    }
                    Command::RoomsWithAnchors { reply } => {
                        let _ = reply.send(sfu.rooms_with_anchors());
                    }
                    Command::RequestKeyframe { key, user, stream } => {
                        sfu.request_keyframe_of(&key, &user, stream, now);
                        sfu.flush(now);
                    }
                    Command::AddSubscriber { spec, first_media: tx, reply } => {
                        // Listeners of ended connections go when the next one comes.
                        first_media.retain(|_, tx| !tx.is_closed());
                        let added = sfu.add_subscriber(spec, now);
                        if let Ok(id) = added {
                            first_media.insert(id, tx);
                        }
                        let _ = reply.send(added);
                    }
                    Command::Subscribe { sid, req, reply } => {
                        let _ = reply.send(sfu.subscribe(&sid, req, now));
                    }
                    Command::Unsubscribe { sid, source, reply } => {
                        let _ = reply.send(sfu.unsubscribe(&sid, source, now));
                    }
                    Command::SubscriberAnswer { sid, sdp, reply } => {
                        let _ = reply.send(sfu.subscriber_answer(&sid, &sdp, now));
                    }
                    Command::PendingOffer { sid, reply } => {
                        let _ = reply.send(sfu.pending_offer(&sid));
                    }
                    Command::UserTracks { key, user, reply } => {
                        let _ = reply.send(sfu.user_tracks(&key, &user));
                    }
                    Command::Mute { key, user, track, muted, reply } => {
                        let _ = reply.send(sfu.mute(&key, &user, track, muted));
                    }
                    Command::SwitchRole { key, user, role, reply } => {
                        let _ = reply.send(sfu.switch_role(&key, &user, role, now));
                    }
                }
            }
            r = socket.recv_from(&mut buf) => {
                if let Ok((n, source)) = r {
                    let now = Instant::now();
                    sfu.handle_datagram(now, source, destination_for(&candidates, source), &buf[..n]);
                    // Drain what else is queued without going back through the scheduler.
                    for _ in 0..RECV_BATCH {
                        match socket.try_recv_from(&mut buf) {
                            Ok((n, source)) => sfu.handle_datagram(now, source, destination_for(&candidates, source), &buf[..n]),
                            Err(_) => break,
                        }
                    }
                    sfu.flush(now);
                }
            }
            Some(event) = next_tcp(&mut tcp_events) => match event {
                TcpEvent::Opened { remote, writer } => {
                    tcp_writers.insert(remote, writer);
                }
                TcpEvent::Frame { remote, local, data } => {
                    let now = Instant::now();
                    sfu.handle_tcp_frame(now, remote, local, &data);
                    sfu.flush(now);
                }
                TcpEvent::Closed { remote } => {
                    tcp_writers.remove(&remote);
                }
            },
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
        // Due timeouts run now, not after the next timer tick (tokio's timer has 1 ms
        // granularity): str0m's pacer asks for one right after media is written.
        for _ in 0..4 {
            let now = Instant::now();
            if sfu.next_timeout() > now {
                break;
            }
            sfu.handle_timeout(now);
        }
        while let Some(output) = sfu.poll_output() {
            match output {
                SfuOutput::Transmit(t) if t.proto == Protocol::Tcp => {
                    if let (Some(w), Some(framed)) = (tcp_writers.get(&t.destination), crate::ice_tcp::frame(&t.contents)) {
                        let _ = w.try_send(framed);
                    }
                }
                SfuOutput::Transmit(t) => match socket.try_send_to(&t.contents, t.destination) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        let _ = socket.send_to(&t.contents, t.destination).await;
                    }
                    Err(e) => tracing::debug!(to = %t.destination, "send failed: {e}"),
                },
                // A full queue means the task is behind: the packet is dropped (it will ask for a
                // keyframe) rather than the media task waiting on it.
                SfuOutput::Tap(tap, packet) => {
                    if let Some(tx) = taps.get(&tap) {
                        let _ = tx.try_send(packet);
                    }
                }
                SfuOutput::Publishers(id, list) => {
                    if publisher_watches.get(&id).is_some_and(|tx| tx.send(list).is_err()) {
                        // The watch was dropped.
                        publisher_watches.remove(&id);
                        sfu.unwatch_publishers(id);
                    }
                }
                SfuOutput::PublisherEnded(id, end) => {
                    if let Some(tx) = replaced_watchers.remove(&id) {
                        let _ = tx.send(end);
                    }
                    keyframe_owners.remove(&id);
                }
                SfuOutput::Room(event) => {
                    let _ = room_events.send(event);
                }
                SfuOutput::FirstMedia { session, user, stream, video } => {
                    if first_media.get(&session).is_some_and(|tx| tx.send((user, stream, video)).is_err()) {
                        first_media.remove(&session);
                    }
                }
                SfuOutput::KeyframeWanted(id) => {
                    if let Some(tx) = keyframe_owners.get(&id) {
                        let _ = tx.send(());
                    }
                }
            }
        }
    }
}
