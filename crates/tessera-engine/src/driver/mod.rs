//! The media workers: tokio tasks that each drive one sans-IO `Sfu` — datagrams in, the next
//! timeout, commands from the HTTP layer (new WHIP/WHEP sessions), datagrams out. A room lives
//! on one worker (the least loaded when it was made: `placement.rs`), so a worker's state needs
//! no locks, and rooms spread over the cores. With more than one worker, a dispatcher reads the one shared UDP port
//! and routes each flow to its peer's worker (`dispatch.rs`); each worker has an egress thread
//! of its own. `task.rs` is a worker's loop; this module the handle the HTTP side holds, which
//! sends each command to the worker of its room (or of its id, or asks them all).

mod dispatch;
mod egress;
mod placement;
mod task;

use task::run;

use crate::ice_tcp::TcpEvent;
use crate::presence::ParticipantInfo;
use crate::presence::RoomEvent;
use crate::sfu::{
    IceRestart, IngestPacket, PublisherEnd, PublisherInfo, Rid, RoomKey, RoomSummary, SessionInfo, SessionSpec, Sfu, SfuCounters, SfuOutput, SfuStats, SubscribeRequest,
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

impl Command {
    /// The room a command acts for, if it names one: it runs on that room's worker.
    fn room(&self) -> Option<&RoomKey> {
        match self {
            Command::AddSession { spec, .. } | Command::AddIngest { spec, .. } | Command::AddSubscriber { spec, .. } => Some(&spec.room),
            Command::ViewerSessions { key, .. }
            | Command::RoomExists { key, .. }
            | Command::IsPublished { key, .. }
            | Command::AddTap { key, .. }
            | Command::WatchPublishers { key, .. }
            | Command::RoomUsers { key, .. }
            | Command::Kick { key, .. }
            | Command::Dismiss { key, .. }
            | Command::JoinSignaling { key, .. }
            | Command::Custom { key, .. }
            | Command::RequestKeyframe { key, .. }
            | Command::UserTracks { key, .. }
            | Command::Mute { key, .. }
            | Command::SwitchRole { key, .. }
            | Command::OpenPipe { key, .. }
            | Command::ClosePipe { key, .. }
            | Command::PipeKeyframe { key, .. }
            | Command::SetTapSizes { key, .. } => Some(key),
            _ => None,
        }
    }
}

enum Command {
    /// Tests: the worker panics, as a defect in its own code would make it.
    #[cfg(test)]
    Panic,
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
    HasSession {
        sid: String,
        reply: oneshot::Sender<bool>,
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
        keyframes: Option<std::sync::mpsc::Sender<Option<Rid>>>,
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
    /// A WHEP viewer for a satellite copy of its room on this worker (`sfu/pipes.rs`); names
    /// no room, so the worker does not claim it.
    AddSpreadViewer {
        spec: SessionSpec,
        offer: String,
        reply: oneshot::Sender<Result<String, OfferError>>,
    },
    /// To the room's worker: a satellite wants `source` through pipe `pipe`.
    OpenPipe {
        key: RoomKey,
        source: (tessera_model::UserId, tessera_media::StreamKind),
        pipe: u64,
    },
    ClosePipe {
        key: RoomKey,
        pipe: u64,
    },
    PipeKeyframe {
        key: RoomKey,
        source: (tessera_model::UserId, tessera_media::StreamKind),
        rid: Option<tessera_rtc::str0m::media::Rid>,
    },
    /// A mix's tile size per source: its tap takes the layer that covers each.
    SetTapSizes {
        key: RoomKey,
        tap: u64,
        sizes: Vec<((tessera_model::UserId, tessera_media::StreamKind), (u32, u32))>,
    },
    /// To a satellite: what its pipe carried since the last batch.
    PipePackets {
        pipe: u64,
        packets: Vec<crate::sfu::PipedPacket>,
    },
    /// To every other worker after the room's own: the satellite copies' part.
    SatelliteUsers {
        key: RoomKey,
        reply: oneshot::Sender<Option<Vec<ParticipantInfo>>>,
    },
    SatelliteKick {
        key: RoomKey,
        user: tessera_model::UserId,
        reply: oneshot::Sender<bool>,
    },
    SatelliteDismiss {
        key: RoomKey,
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

/// The HTTP side's handle on the media workers. Cheap to clone.
#[derive(Clone)]
pub struct RtcHandle {
    /// Each worker's command channel, by worker index.
    workers: Arc<[mpsc::Sender<Command>]>,
    /// Each worker's busy share of the last second (‰).
    worker_busy: Arc<[std::sync::atomic::AtomicU64]>,
    placement: Arc<placement::Placement>,
    /// From which busy share (‰) of its room's worker a new WHEP viewer goes to another,
    /// less busy worker (`set_spread_viewers_above`).
    spread_above: Arc<std::sync::atomic::AtomicU64>,
    /// Totals over every worker; `busy_permille` is the busiest worker's.
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
pub struct KeyframeRequests(std::sync::mpsc::Receiver<Option<Rid>>);

impl KeyframeRequests {
    /// Whether a keyframe was asked for since the last call.
    pub fn take(&self) -> bool {
        !self.take_layers().is_empty()
    }

    /// The simulcast layers keyframes were asked of since the last call (`None`: the only
    /// one), each once: a publisher that sends layers (a cluster relay's mirror) asks for each.
    pub fn take_layers(&self) -> Vec<Option<Rid>> {
        let mut asked = Vec::new();
        while let Ok(rid) = self.0.try_recv() {
            if !asked.contains(&rid) {
                asked.push(rid);
            }
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
        workers: usize,
        udp_gso: bool,
    ) -> Result<RtcHandle, RtcServerError> {
        let workers = workers.clamp(1, MAX_WORKERS);
        let bind_err = |source| RtcServerError::Bind { addr: bind, source };
        let socket = StdUdpSocket::bind(bind).map_err(bind_err)?;
        socket.set_nonblocking(true).map_err(bind_err)?;
        let local_addr = socket.local_addr().map_err(bind_err)?;
        let candidates = host_candidates(local_addr, public_ip);
        let mut tcp_hosts = None;
        let (mut tcp_events, mut tcp_addr) = (None, None);
        if let Some(tcp) = tcp {
            let derived = tcp.port() == 0;
            let addr = if derived { SocketAddr::new(tcp.ip(), local_addr.port()) } else { tcp };
            match bind_tcp(addr) {
                Ok(listener) => {
                    let tcp_local = listener.local_addr().map_err(|source| RtcServerError::Bind { addr, source })?;
                    let tcp_candidates = host_candidates(tcp_local, public_ip);
                    tracing::info!(addr = %tcp_local, candidates = ?tcp_candidates, "WebRTC ICE-TCP listening");
                    tcp_hosts = Some(tcp_candidates);
                    tcp_addr = Some(tcp_local);
                    let (tx, rx) = mpsc::channel(1024);
                    tokio::spawn(crate::ice_tcp::accept(listener, tx));
                    tcp_events = Some(rx);
                }
                Err(source) if derived => tracing::warn!(%addr, "ICE over TCP is off: {source}"),
                Err(source) => return Err(RtcServerError::Bind { addr, source }),
            }
        }
        let counters = Arc::new(SfuCounters::default());
        let worker_busy: Arc<[std::sync::atomic::AtomicU64]> = (0..workers).map(|_| std::sync::atomic::AtomicU64::new(0)).collect();
        let ufrags = crate::sfu::UfragIndex::default();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        // One worker reads the socket itself; several get their datagrams from the dispatcher.
        let mut ingress: Vec<task::Ingress> = Vec::new();
        let mut worker_tcp: Vec<Option<mpsc::Receiver<TcpEvent>>> = Vec::new();
        if workers == 1 {
            ingress.push(task::Ingress::Socket(UdpSocket::from_std(socket.try_clone().map_err(bind_err)?).map_err(bind_err)?));
            worker_tcp.push(tcp_events.take());
        } else {
            let (senders, inboxes, recycled) = dispatch::worker_inboxes(workers);
            let mut tcp_senders = Vec::new();
            for inbox in inboxes {
                ingress.push(task::Ingress::Dispatched(inbox));
                let (tx, rx) = mpsc::channel(1024);
                tcp_senders.push(tx);
                worker_tcp.push(tcp_events.is_some().then_some(rx));
            }
            let reader = UdpSocket::from_std(socket.try_clone().map_err(bind_err)?).map_err(bind_err)?;
            tokio::spawn(dispatch::run(reader, tcp_events.take(), senders, tcp_senders, recycled, ufrags.clone(), counters.clone()));
        }
        // Every worker's command channel first: a worker forwards a command that reached it for
        // a room placed elsewhere (weakly held, so the handle alone keeps workers running).
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..workers).map(|_| mpsc::channel::<Command>(256)).unzip();
        let peers: Arc<[mpsc::WeakSender<Command>]> = senders.iter().map(|tx| tx.downgrade()).collect();
        let placement = Arc::new(placement::Placement::default());
        for (index, ((ingress, tcp), rx)) in ingress.into_iter().zip(worker_tcp).zip(receivers).enumerate() {
            let mut sfu = Sfu::new(candidates.clone(), empty_room_timeout, Instant::now()).into_worker(index as u16, counters.clone(), ufrags.clone());
            sfu.set_liveness_timeout(liveness_timeout);
            if let Some(c) = &tcp_hosts {
                sfu.set_tcp_candidates(c.clone());
            }
            let egress = egress::Egress::start(socket.try_clone().map_err(bind_err)?, counters.clone(), udp_gso).map_err(bind_err)?;
            let port = task::UdpPort { ingress, egress, candidates: candidates.clone() };
            let worker = task::WorkerPlace { index, busy: worker_busy.clone(), placement: placement.clone(), peers: peers.clone() };
            let task = tokio::spawn(run(port, tcp, rx, sfu, events_tx.clone(), worker));
            // A worker ends only by a panic in its own code (a peer's WebRTC stack panicking is
            // caught per peer). Its rooms are gone with it; `/healthz` then answers 503
            // (`failed_workers`) so that the process is restarted, and the log says why.
            tokio::spawn(async move {
                if let Err(e) = task.await {
                    let what = e.try_into_panic().map_or_else(|_| "cancelled".into(), |p| crate::sfu::panic_message(&*p));
                    tracing::error!(worker = index, "media worker ended: {what}; its rooms are gone and /healthz answers 503");
                }
            });
        }
        tracing::info!(addr = %local_addr, candidates = ?candidates, workers, "WebRTC UDP listening");
        let spread_above = Arc::new(std::sync::atomic::AtomicU64::new(DEFAULT_SPREAD_PERMILLE));
        Ok(RtcHandle {
            workers: senders.into(),
            worker_busy,
            placement,
            spread_above,
            counters,
            local_addr,
            candidates,
            tcp_addr,
            room_events: Arc::new(std::sync::Mutex::new(Some(events_rx))),
        })
    }

    /// How many media workers there are.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// How many media workers have ended (a panic in their own code): their rooms are gone and
    /// the process should be restarted.
    pub fn failed_workers(&self) -> usize {
        self.workers.iter().filter(|w| w.is_closed()).count()
    }

    /// Each worker's busy share of the last second (0–1).
    pub fn worker_busy_ratios(&self) -> Vec<f64> {
        self.worker_busy.iter().map(|b| b.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1000.0).collect()
    }

    /// Whether a new viewer of the room may join: the worker it would go to is not saturated.
    pub fn admits_viewers(&self, key: &RoomKey) -> bool {
        let w = self.spread_worker(key).unwrap_or_else(|| self.room_worker(key));
        crate::sfu::admits_viewers(self.worker_busy[w].load(std::sync::atomic::Ordering::Relaxed))
    }

    /// From which busy ratio (0–1) of its room's worker a new WHEP viewer is placed on another
    /// worker that is not busier (in 10 % steps), its stream piped there. 0 spreads every
    /// viewer (tests, benchmarks); above 1, never.
    pub fn set_spread_viewers_above(&self, ratio: f64) {
        let permille = if ratio > 1.0 { u64::MAX } else { (ratio.max(0.0) * 1000.0).round() as u64 };
        self.spread_above.store(permille, std::sync::atomic::Ordering::Relaxed);
    }

    /// The worker a new viewer of the room should go to instead of the room's own, if any.
    fn spread_worker(&self, key: &RoomKey) -> Option<usize> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.workers.len() == 1 {
            return None;
        }
        let owner = self.room_worker(key);
        let owner_busy = self.worker_busy[owner].load(Relaxed);
        if owner_busy < self.spread_above.load(Relaxed) {
            return None;
        }
        let step = |w: usize| self.worker_busy[w].load(Relaxed) / 100;
        let w = (0..self.workers.len()).filter(|w| *w != owner).min_by_key(|w| (step(*w), *w))?;
        (step(w) <= owner_busy / 100).then_some(w)
    }

    /// The worker a room lives on (placed now if it is new).
    fn room_worker(&self, key: &RoomKey) -> usize {
        if self.workers.len() == 1 {
            return 0;
        }
        self.placement.place(key, &self.worker_busy)
    }

    fn to_room(&self, key: &RoomKey) -> &mpsc::Sender<Command> {
        &self.workers[self.room_worker(key)]
    }

    fn to_id(&self, id: u64) -> &mpsc::Sender<Command> {
        &self.workers[crate::sfu::worker_of_id(id).min(self.workers.len() - 1)]
    }

    /// The worker holding the session `sid`, if any (sids come from the HTTP side and name no
    /// worker; with one worker there is nothing to ask).
    async fn locate(&self, sid: &str) -> Result<Option<&mpsc::Sender<Command>>, RtcServerError> {
        if self.workers.len() == 1 {
            return Ok(Some(&self.workers[0]));
        }
        for tx in self.workers.iter() {
            if ask_via(tx, |reply| Command::HasSession { sid: sid.to_owned(), reply }).await? {
                return Ok(Some(tx));
            }
        }
        Ok(None)
    }

    /// Asks every worker, in index order.
    async fn ask_all<T>(&self, make: impl Fn(oneshot::Sender<T>) -> Command) -> Result<Vec<T>, RtcServerError> {
        let mut out = Vec::with_capacity(self.workers.len());
        for tx in self.workers.iter() {
            out.push(ask_via(tx, &make).await?);
        }
        Ok(out)
    }

    /// The room and media events (participants entering and leaving, tracks starting and
    /// stopping, rooms made and dismissed); the first caller gets them.
    pub fn take_room_events(&self) -> Option<mpsc::UnboundedReceiver<RoomEvent>> {
        self.room_events.lock().expect("room events").take()
    }

    pub async fn add_session(&self, spec: SessionSpec, offer: String) -> Result<Result<String, OfferError>, RtcServerError> {
        // A viewer of a room whose worker is busy goes to a less busy one, if the room is there
        // to pipe from.
        if spec.role == crate::PeerRole::Play {
            if let Some(w) = self.spread_worker(&spec.room) {
                let key = spec.room.clone();
                if ask_via(self.to_room(&key), |reply| Command::RoomExists { key, reply }).await? {
                    return ask_via(&self.workers[w], |reply| Command::AddSpreadViewer { spec, offer, reply }).await;
                }
            }
        }
        ask_via(self.to_room(&spec.room), |reply| Command::AddSession { spec, offer, reply }).await
    }

    /// Every worker but the room's own (where satellite copies of it may be).
    fn other_workers(&self, key: &RoomKey) -> impl Iterator<Item = &mpsc::Sender<Command>> {
        let owner = if self.workers.len() == 1 { 0 } else { self.room_worker(key) };
        self.workers.iter().enumerate().filter(move |(w, _)| *w != owner).map(|(_, tx)| tx)
    }

    /// Starts a speed test (PRODUCT.md §9) from the client's offer: the SDP answer. An app's
    /// speed tests share one worker, where their per-app limit is counted.
    pub async fn add_speed_test(&self, spec: SessionSpec, offer: String, server_ip: String) -> Result<Result<String, crate::sfu::SpeedTestRefusal>, RtcServerError> {
        let tx = &self.workers[place(&spec.room.app, self.workers.len())];
        ask_via(tx, |reply| Command::AddSpeedTest { spec, offer, server_ip, reply }).await
    }

    pub async fn remove_session(&self, sid: &str) -> Result<Option<SessionInfo>, RtcServerError> {
        let Some(tx) = self.locate(sid).await? else { return Ok(None) };
        ask_via(tx, |reply| Command::RemoveSession { sid: sid.to_owned(), reply }).await
    }

    pub async fn session_info(&self, sid: &str) -> Result<Option<SessionInfo>, RtcServerError> {
        let Some(tx) = self.locate(sid).await? else { return Ok(None) };
        ask_via(tx, |reply| Command::SessionInfo { sid: sid.to_owned(), reply }).await
    }

    pub async fn ice_restart(&self, sid: &str, ufrag: &str, pwd: &str) -> Result<Option<IceRestart>, RtcServerError> {
        let Some(tx) = self.locate(sid).await? else { return Ok(None) };
        ask_via(tx, |reply| Command::IceRestart { sid: sid.to_owned(), ufrag: ufrag.to_owned(), pwd: pwd.to_owned(), reply }).await
    }

    pub async fn viewer_sessions(&self, key: RoomKey, user: tessera_model::UserId) -> Result<usize, RtcServerError> {
        ask_via(self.to_room(&key), |reply| Command::ViewerSessions { key, user, reply }).await
    }

    pub async fn room_exists(&self, key: RoomKey) -> Result<bool, RtcServerError> {
        ask_via(self.to_room(&key), |reply| Command::RoomExists { key, reply }).await
    }

    pub async fn is_published(&self, key: RoomKey, user: tessera_model::UserId, stream: tessera_media::StreamKind) -> Result<bool, RtcServerError> {
        ask_via(self.to_room(&key), |reply| Command::IsPublished { key, user, stream, reply }).await
    }

    /// Adds a publisher fed by this process (RTMP, pull ingest); returns its id for `push`.
    pub async fn add_ingest(&self, spec: SessionSpec) -> Result<u64, RtcServerError> {
        ask_via(self.to_room(&spec.room), |reply| Command::AddIngest { spec, replaced: None, keyframes: None, reply }).await
    }

    /// `add_ingest`, with a receiver that gets `Ok(())` if a later publisher of the same (user,
    /// stream) replaces this one (the caller closes its connection then); it gets an error when
    /// the ingest is removed otherwise. Viewers' keyframe requests arrive on the
    /// `KeyframeRequests` (an RTMP publish that is transcoded answers them; drop it otherwise).
    pub async fn add_ingest_watched(&self, spec: SessionSpec) -> Result<(u64, oneshot::Receiver<PublisherEnd>, KeyframeRequests), RtcServerError> {
        let (tx, rx) = oneshot::channel();
        let (keyframes_tx, keyframes) = std::sync::mpsc::channel();
        let id = ask_via(self.to_room(&spec.room), |reply| Command::AddIngest { spec, replaced: Some(tx), keyframes: Some(keyframes_tx), reply }).await?;
        Ok((id, rx, KeyframeRequests(keyframes)))
    }

    /// Hands an ingest's packets (one access unit, typically) to the SFU.
    pub async fn push(&self, id: u64, packets: Vec<IngestPacket>) -> Result<(), RtcServerError> {
        self.to_id(id).send(Command::Push { id, packets }).await.map_err(|_| RtcServerError::Stopped)
    }

    pub async fn remove_ingest(&self, id: u64) -> Result<(), RtcServerError> {
        self.to_id(id).send(Command::RemoveIngest { id }).await.map_err(|_| RtcServerError::Stopped)
    }

    /// An in-process subscriber to every publisher of a room (a mix job); `owner` is the task's
    /// server user, which makes the room if it does not exist (event 101). Dropping the
    /// receiver is not enough to stop it: call `remove_tap`.
    pub async fn add_tap(&self, key: RoomKey, owner: tessera_model::UserId) -> Result<(u64, mpsc::Receiver<TapPacket>), RtcServerError> {
        ask_via(self.to_room(&key), |reply| Command::AddTap { key, kind: TapKind::Mix, owner, reply }).await
    }

    /// A relay's or a recording's tap (`kind`): like `add_tap`, with mixes' output too (relays
    /// and recordings of `mix_<id>`) and the publishers' originals the kind keeps.
    pub async fn add_output_tap(&self, key: RoomKey, kind: TapKind, owner: tessera_model::UserId) -> Result<(u64, mpsc::Receiver<TapPacket>), RtcServerError> {
        ask_via(self.to_room(&key), |reply| Command::AddTap { key, kind, owner, reply }).await
    }

    pub async fn remove_tap(&self, id: u64) -> Result<(), RtcServerError> {
        self.to_id(id).send(Command::RemoveTap { id }).await.map_err(|_| RtcServerError::Stopped)
    }

    pub async fn rooms_with_anchors(&self) -> Result<Vec<RoomKey>, RtcServerError> {
        Ok(self.ask_all(|reply| Command::RoomsWithAnchors { reply }).await?.into_iter().flatten().collect())
    }

    pub async fn request_keyframe(&self, key: RoomKey, user: tessera_model::UserId, stream: tessera_media::StreamKind) -> Result<(), RtcServerError> {
        self.to_room(&key).send(Command::RequestKeyframe { key, user, stream }).await.map_err(|_| RtcServerError::Stopped)
    }

    /// A keyframe of one simulcast layer of (user, stream) (a cluster edge's viewers watch it),
    /// or, without a layer, as `request_keyframe`.
    pub async fn request_layer_keyframe(&self, key: RoomKey, user: tessera_model::UserId, stream: tessera_media::StreamKind, rid: Option<Rid>) -> Result<(), RtcServerError> {
        let command = match rid {
            Some(rid) => Command::PipeKeyframe { key: key.clone(), source: (user, stream), rid: Some(rid) },
            None => Command::RequestKeyframe { key: key.clone(), user, stream },
        };
        self.to_room(&key).send(command).await.map_err(|_| RtcServerError::Stopped)
    }

    pub async fn stats(&self) -> Result<SfuStats, RtcServerError> {
        let mut total = SfuStats::default();
        for s in self.ask_all(|reply| Command::Stats { reply }).await? {
            total.add(&s);
        }
        Ok(total)
    }
}

/// The calls a worker thread makes (mix jobs and pull ingests do FFmpeg work that must not run
/// on the async workers): they wait on the command channel itself, never on a `block_on` of
/// the runtime. Calling them from async code panics (tokio's rule for blocking sends).
impl RtcHandle {
    /// The app's rooms (`GET /v1/rooms`).
    pub async fn rooms(&self, app: tessera_model::AppId) -> Result<Vec<RoomSummary>, RtcServerError> {
        let all: Vec<RoomSummary> = self.ask_all(|reply| Command::Rooms { app: app.clone(), reply }).await?.into_iter().flatten().collect();
        let (satellites, mut rooms): (Vec<RoomSummary>, Vec<RoomSummary>) = all.into_iter().partition(|r| r.satellite);
        // A satellite's viewers are the room's participants; the room is listed once.
        for s in satellites {
            if let Some(r) = rooms.iter_mut().find(|r| r.room == s.room) {
                r.participants += s.participants;
                r.viewer_workers.push(s.worker);
                r.viewer_workers.sort_unstable();
            }
        }
        rooms.sort_by(|a, b| a.room.room.cmp(&b.room.room));
        Ok(rooms)
    }

    /// The room's participants, or `None` when there is no such room.
    pub async fn room_users(&self, key: RoomKey) -> Result<Option<Vec<ParticipantInfo>>, RtcServerError> {
        let k = key.clone();
        let Some(mut users) = ask_via(self.to_room(&key), |reply| Command::RoomUsers { key: k, reply }).await? else { return Ok(None) };
        // Viewers spread to other workers are the room's participants too, once each.
        for tx in self.other_workers(&key) {
            let k = key.clone();
            for p in ask_via(tx, |reply| Command::SatelliteUsers { key: k, reply }).await?.unwrap_or_default() {
                match users.iter_mut().find(|u| u.user == p.user) {
                    Some(u) => u.sessions.extend(p.sessions),
                    None => users.push(p),
                }
            }
        }
        users.sort_by(|a, b| a.user.cmp(&b.user));
        Ok(Some(users))
    }

    /// Ends every session of the user in the room (104 Reason 3). Whether the user was there.
    pub async fn kick(&self, key: RoomKey, user: tessera_model::UserId) -> Result<bool, RtcServerError> {
        let (k, u) = (key.clone(), user.clone());
        let mut found = ask_via(self.to_room(&key), |reply| Command::Kick { key: k, user: u, reply }).await?;
        for tx in self.other_workers(&key) {
            let (k, u) = (key.clone(), user.clone());
            found |= ask_via(tx, |reply| Command::SatelliteKick { key: k, user: u, reply }).await?;
        }
        Ok(found)
    }

    /// A room-signaling session joins; the receiver says why the SFU ended it (a kick, a
    /// dismissed room), if it does.
    pub async fn join_signaling(&self, key: RoomKey, user: tessera_model::UserId, join: crate::JoinInfo) -> Result<SignalingMember, RtcServerError> {
        let (ended, ended_rx) = oneshot::channel();
        let (inbox, inbox_rx) = mpsc::unbounded_channel();
        let id = ask_via(self.to_room(&key), |reply| Command::JoinSignaling { key, user, join, ended, inbox, reply }).await?;
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
        ask_via(self.to_room(&key), |reply| Command::Custom { key, from, cmd_id, payload, to, reply }).await
    }

    pub async fn leave_signaling(&self, id: u64, reason: crate::presence::LeaveReason) -> Result<(), RtcServerError> {
        self.to_id(id).send(Command::LeaveSignaling { id, reason }).await.map_err(|_| RtcServerError::Stopped)
    }

    /// Ends every session in the room, then the room (102). Whether the room existed.
    pub async fn dismiss(&self, key: RoomKey) -> Result<bool, RtcServerError> {
        let k = key.clone();
        let existed = ask_via(self.to_room(&key), |reply| Command::Dismiss { key: k, reply }).await?;
        for tx in self.other_workers(&key) {
            let k = key.clone();
            ask_via(tx, |reply| Command::SatelliteDismiss { key: k, reply }).await?;
        }
        Ok(existed)
    }

    /// Follows the room's publishers: the list now, then each change (a task waiting for its
    /// source, a recording choosing streams, a mix laying out tiles). Dropping the watch ends it.
    pub async fn watch_publishers(&self, key: RoomKey) -> Result<PublisherWatch, RtcServerError> {
        ask_via(self.to_room(&key), |reply| Command::WatchPublishers { key, reply }).await
    }

    /// Adds a connection the server offers to (room signaling's `sub`); the receiver hears of
    /// each stream's first media forwarded on it.
    pub async fn add_subscriber(&self, spec: SessionSpec) -> Result<Result<(u64, mpsc::UnboundedReceiver<FirstMedia>), OfferError>, RtcServerError> {
        let (first_media, rx) = mpsc::unbounded_channel();
        Ok(ask_via(self.to_room(&spec.room), |reply| Command::AddSubscriber { spec, first_media, reply }).await?.map(|id| (id, rx)))
    }

    pub async fn subscribe(&self, sid: &str, req: SubscribeRequest) -> Result<SubscriberReply, RtcServerError> {
        let Some(tx) = self.locate(sid).await? else { return Ok(Err(SubscriberError::UnknownSession)) };
        ask_via(tx, |reply| Command::Subscribe { sid: sid.to_owned(), req, reply }).await
    }

    pub async fn unsubscribe(&self, sid: &str, source: (tessera_model::UserId, tessera_media::StreamKind)) -> Result<SubscriberReply, RtcServerError> {
        let Some(tx) = self.locate(sid).await? else { return Ok(Err(SubscriberError::UnknownSession)) };
        ask_via(tx, |reply| Command::Unsubscribe { sid: sid.to_owned(), source, reply }).await
    }

    pub async fn subscriber_answer(&self, sid: &str, sdp: String) -> Result<SubscriberReply, RtcServerError> {
        let Some(tx) = self.locate(sid).await? else { return Ok(Err(SubscriberError::UnknownSession)) };
        ask_via(tx, |reply| Command::SubscriberAnswer { sid: sid.to_owned(), sdp, reply }).await
    }

    /// The `sub` connection's offer still waiting for an answer.
    pub async fn pending_offer(&self, sid: &str) -> Result<Option<SubscriberOffer>, RtcServerError> {
        let Some(tx) = self.locate(sid).await? else { return Ok(None) };
        ask_via(tx, |reply| Command::PendingOffer { sid: sid.to_owned(), reply }).await
    }

    /// The tracks a user publishes and receives in the room, with their rates.
    pub async fn user_tracks(&self, key: RoomKey, user: tessera_model::UserId) -> Result<Vec<crate::sfu::TrackStats>, RtcServerError> {
        ask_via(self.to_room(&key), |reply| Command::UserTracks { key, user, reply }).await
    }

    /// A publisher mutes or unmutes a started track. Whether that track has started.
    pub async fn mute(&self, key: RoomKey, user: tessera_model::UserId, track: crate::Track, muted: bool) -> Result<bool, RtcServerError> {
        ask_via(self.to_room(&key), |reply| Command::Mute { key, user, track, muted, reply }).await
    }

    /// The participant's role changes; to audience, its publications end. Whether it is present.
    pub async fn switch_role(&self, key: RoomKey, user: tessera_model::UserId, role: tessera_model::Role) -> Result<bool, RtcServerError> {
        ask_via(self.to_room(&key), |reply| Command::SwitchRole { key, user, role, reply }).await
    }

    pub fn watch_publishers_blocking(&self, key: RoomKey) -> Result<PublisherWatch, RtcServerError> {
        ask_blocking_via(self.to_room(&key), |reply| Command::WatchPublishers { key, reply })
    }

    /// Adds an internal publisher that can make keyframes on request (a mix job, a transcoding
    /// pull ingest): its viewers' requests arrive on the returned `KeyframeRequests`.
    pub fn add_ingest_blocking(&self, spec: SessionSpec) -> Result<(u64, KeyframeRequests), RtcServerError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let id = ask_blocking_via(self.to_room(&spec.room), |reply| Command::AddIngest { spec, replaced: None, keyframes: Some(tx), reply })?;
        Ok((id, KeyframeRequests(rx)))
    }

    pub fn push_blocking(&self, id: u64, packets: Vec<IngestPacket>) -> Result<(), RtcServerError> {
        self.to_id(id).blocking_send(Command::Push { id, packets }).map_err(|_| RtcServerError::Stopped)
    }

    pub fn remove_ingest_blocking(&self, id: u64) -> Result<(), RtcServerError> {
        self.to_id(id).blocking_send(Command::RemoveIngest { id }).map_err(|_| RtcServerError::Stopped)
    }

    pub fn add_tap_blocking(&self, key: RoomKey, owner: tessera_model::UserId) -> Result<(u64, mpsc::Receiver<TapPacket>), RtcServerError> {
        ask_blocking_via(self.to_room(&key), |reply| Command::AddTap { key, kind: TapKind::Mix, owner, reply })
    }

    /// A mix job's tile sizes: its tap takes, of each simulcast source, the smallest layer that
    /// covers the tile (the top layer for sources not named).
    pub fn set_tap_sizes_blocking(&self, key: RoomKey, tap: u64, sizes: Vec<((tessera_model::UserId, tessera_media::StreamKind), (u32, u32))>) -> Result<(), RtcServerError> {
        self.to_room(&key).blocking_send(Command::SetTapSizes { key, tap, sizes }).map_err(|_| RtcServerError::Stopped)
    }

    pub fn remove_tap_blocking(&self, id: u64) -> Result<(), RtcServerError> {
        self.to_id(id).blocking_send(Command::RemoveTap { id }).map_err(|_| RtcServerError::Stopped)
    }

    pub fn request_keyframe_blocking(&self, key: RoomKey, user: tessera_model::UserId, stream: tessera_media::StreamKind) -> Result<(), RtcServerError> {
        self.to_room(&key).blocking_send(Command::RequestKeyframe { key, user, stream }).map_err(|_| RtcServerError::Stopped)
    }
}

/// Most media workers a server runs (ids carry the index in 24 bits; far above any core count
/// a single UDP port is worth spreading over).
pub const MAX_WORKERS: usize = 64;

/// A room's worker this busy (‰) sends new WHEP viewers to a less busy worker. Low, because
/// the busy ratio is a 1 s measure that lags a room filling up: at 0.6 one room of 600 viewers
/// split 0.88/0.21 over two workers, at 0.3 0.70/0.55, with no extra CPU (BENCHMARKS.md).
pub const DEFAULT_SPREAD_PERMILLE: u64 = 300;

/// Which of `n` workers an app's speed tests run on (they keep no room state, but their limit
/// is per app).
fn place(key: &impl std::hash::Hash, n: usize) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    (BuildHasherDefault::<DefaultHasher>::default().hash_one(key) % n as u64) as usize
}

async fn ask_via<T>(tx: &mpsc::Sender<Command>, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, RtcServerError> {
    let (reply, rx) = oneshot::channel();
    tx.send(make(reply)).await.map_err(|_| RtcServerError::Stopped)?;
    rx.await.map_err(|_| RtcServerError::Stopped)
}

fn ask_blocking_via<T>(tx: &mpsc::Sender<Command>, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, RtcServerError> {
    let (reply, rx) = oneshot::channel();
    tx.blocking_send(make(reply)).map_err(|_| RtcServerError::Stopped)?;
    rx.blocking_recv().map_err(|_| RtcServerError::Stopped)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A media worker that panics (a defect in its own code) is reported failed, so that
    /// `/healthz` can say so; the other worker goes on answering.
    #[tokio::test]
    async fn a_media_worker_that_panics_is_reported_failed_and_the_others_go_on() {
        let rtc = RtcHandle::start("127.0.0.1:0".parse().unwrap(), None, None, Duration::from_secs(10), Duration::from_secs(15), 2, false).unwrap();
        assert_eq!(rtc.failed_workers(), 0);
        rtc.workers[1].send(Command::Panic).await.unwrap();
        let started = std::time::Instant::now();
        while rtc.failed_workers() == 0 && started.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(rtc.failed_workers(), 1);
        assert!(rtc.workers[1].is_closed() && !rtc.workers[0].is_closed());
        let (reply, answer) = oneshot::channel();
        rtc.workers[0].send(Command::Stats { reply }).await.unwrap();
        assert!(answer.await.is_ok(), "the other worker still answers");
    }
}
