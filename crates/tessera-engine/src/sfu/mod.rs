//! The SFU core, sans-IO: sessions (one str0m peer each) in rooms, the routing of datagrams on
//! the shared UDP port, and forwarding from producers (publishers' tracks: WebRTC peers, or
//! internal publishers such as RTMP, pull ingests and mixes) to consumers (viewers' tracks) and
//! taps (in-process subscribers). Time and datagrams come in through `handle_*`; everything
//! that goes out — datagrams, tap packets, room events, keyframe requests for internal
//! publishers — comes out of one `poll_output`, in order.
//!
//! `producer` holds what comes in (layers, rates, the GOP cache), `consumer` what goes out (the
//! per-packet routing decision), `allocator` the layer choice; this module the sessions, rooms
//! and routing between them.

mod allocator;
mod consumer;
mod producer;
mod types;

pub use allocator::{choose_layer, desired_bitrate, Allocation, LayerChoice, LayerRate, AUDIO_RESERVE_BPS};
pub use producer::KEYFRAME_REQUEST_INTERVAL;
pub use types::*;

use crate::presence::{LeaveReason, Presence, Track};
use consumer::{Consumer, Route, MAX_QUEUED_PACKETS};
use producer::{is_keyframe, note_layer, to_codec, FwdPacket, GopCache, InternalPublisher, Layer, Producer, INTERNAL_AUDIO_MID, INTERNAL_VIDEO_MID};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_media::{KeyframeThrottle, StreamKind};
use tessera_model::UserId;
use tessera_rtc::str0m::bwe::{Bitrate, BweKind};
use tessera_rtc::str0m::media::{KeyframeRequestKind, MediaKind, Mid, Rid};
use tessera_rtc::str0m::net::{Protocol, Receive};
use tessera_rtc::str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite};
use tessera_rtc::str0m::{Event, Input, Output};
use tessera_rtc::{demux, OfferError, Peer, PeerRole};

/// A session whose ICE has not connected by then is dropped.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often layers are re-chosen and rooms and sessions are checked.
const TICK: Duration = Duration::from_millis(250);
/// How long a connected WebRTC peer may be silent before its session ends (issue 10, defect 5).
pub const DEFAULT_LIVENESS_TIMEOUT: Duration = Duration::from_secs(15);
/// Packets kept per consumer track for retransmission, and for how long.
const RTX_CACHE_PACKETS: usize = 2048;
const RTX_CACHE_AGE: Duration = Duration::from_secs(3);
/// Resends stop when retransmissions exceed this share of the bytes sent (a link so bad that
/// resending makes it worse).
const RTX_RATIO_CAP: f32 = 0.5;

enum Role {
    Publisher {
        producers: Vec<Producer>,
    },
    Viewer {
        consumers: Vec<Consumer>,
        estimate_bps: Option<f64>,
        send_mids: Vec<Mid>,
        /// Pause hysteresis and probing for its video.
        allocation: Allocation,
    },
}

struct Session {
    spec: SessionSpec,
    peer: Peer,
    role: Role,
    next_timeout: Instant,
    connected: bool,
    created: Instant,
    /// When a datagram of this peer last arrived (consent freshness, RFC 7675: browsers check
    /// consent every 5 s and send RTCP every second, so silence means the peer is gone).
    last_heard: Instant,
    addrs: Vec<SocketAddr>,
    /// Queued in `Sfu::dirty` for draining (so it is queued once, however many packets it got).
    dirty: bool,
}

#[derive(Default)]
struct Room {
    publishers: HashMap<(UserId, StreamKind), u64>,
    /// When each publishing user joined (the SFU's counter): the MCU's join order.
    joined: HashMap<UserId, u64>,
    viewers: HashMap<(UserId, StreamKind), Vec<u64>>,
    empty_since: Option<Instant>,
}

impl Room {
    fn forget_if_gone(&mut self, user: &UserId) {
        if !self.publishers.keys().any(|(u, _)| u == user) {
            self.joined.remove(user);
        }
    }
}

pub struct Sfu {
    candidates: Vec<SocketAddr>,
    sessions: HashMap<u64, Session>,
    internal: HashMap<u64, InternalPublisher>,
    by_sid: HashMap<String, u64>,
    by_ufrag: HashMap<String, u64>,
    by_addr: HashMap<SocketAddr, u64>,
    rooms: HashMap<RoomKey, Room>,
    next_id: u64,
    /// The next join order number (`Room::joined`).
    next_join: u64,
    /// What `poll_output` gives out, in order.
    out: VecDeque<SfuOutput>,
    events: Vec<(u64, Event)>,
    dirty: Vec<u64>,
    scratch_ids: Vec<u64>,
    next_tick: Instant,
    empty_room_timeout: Duration,
    /// A connected peer not heard from for this long is gone (tab closed, machine off).
    liveness_timeout: Duration,
    pub counters: Arc<SfuCounters>,
    /// In-process subscribers (mix jobs, relays, recordings) per room:
    /// (tap, whether it also takes mixes' output).
    taps: HashMap<RoomKey, Vec<(u64, bool)>>,
    /// Participants and their tracks: the room and media events.
    presence: Presence,
}

impl Sfu {
    /// Sets how long a connected peer may be silent before its session ends as timed out.
    pub fn set_liveness_timeout(&mut self, timeout: Duration) {
        self.liveness_timeout = timeout;
    }

    pub fn new(candidates: Vec<SocketAddr>, empty_room_timeout: Duration, now: Instant) -> Sfu {
        Sfu {
            candidates,
            sessions: HashMap::new(),
            internal: HashMap::new(),
            by_sid: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            rooms: HashMap::new(),
            next_id: 1,
            next_join: 1,
            out: VecDeque::new(),
            events: Vec::new(),
            dirty: Vec::new(),
            scratch_ids: Vec::new(),
            next_tick: now + TICK,
            empty_room_timeout,
            liveness_timeout: DEFAULT_LIVENESS_TIMEOUT,
            counters: Arc::new(SfuCounters::default()),
            taps: HashMap::new(),
            presence: Presence::default(),
        }
    }

    /// WHEP sessions a user has open in a room (at most 10 are allowed: PRODUCT.md §3.4).
    pub fn viewer_sessions(&self, room: &RoomKey, user: &UserId) -> usize {
        self.sessions.values().filter(|s| s.spec.role == PeerRole::Play && s.spec.room == *room && s.spec.user == *user).count()
    }

    /// Adds an in-process subscriber to every publisher of a room; its packets come out of
    /// `poll_tap`. A task started on a room that does not exist makes it, in `owner`'s name.
    pub fn add_tap(&mut self, room: RoomKey, with_mixes: bool, owner: &UserId) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        if !self.rooms.contains_key(&room) {
            self.presence.room_created(&room, owner);
            self.rooms.insert(room.clone(), Room::default());
        }
        self.taps.entry(room).or_default().push((id, with_mixes));
        id
    }

    pub fn remove_tap(&mut self, id: u64) {
        self.taps.retain(|_, v| {
            v.retain(|(t, _)| *t != id);
            !v.is_empty()
        });
    }

    /// The next thing to send or tell: datagrams, tap packets, room events and keyframe
    /// requests for internal publishers, in the order they arose (room events join the queue
    /// when it is polled).
    pub fn poll_output(&mut self) -> Option<SfuOutput> {
        for e in self.presence.drain() {
            self.out.push_back(SfuOutput::Room(e));
        }
        self.out.pop_front()
    }

    fn take_join_order(&mut self) -> u64 {
        self.next_join += 1;
        self.next_join - 1
    }

    /// The room's publishers with their join order (PRODUCT.md §3.3, LAYOUTS.md §2).
    pub fn room_publishers(&self, room: &RoomKey) -> Vec<PublisherInfo> {
        let Some(r) = self.rooms.get(room) else { return Vec::new() };
        let mut out: Vec<PublisherInfo> = r
            .publishers
            .iter()
            .map(|((user, stream), id)| {
                let producers: &[Producer] = match (self.sessions.get(id), self.internal.get(id)) {
                    (Some(Session { role: Role::Publisher { producers }, .. }), _) => producers,
                    (_, Some(p)) => &p.producers,
                    _ => &[],
                };
                // A producer counts once it has sent something.
                let sent = |kind| producers.iter().any(|p| p.kind == kind && p.layers.iter().any(|l| l.rate.bps > 0.0 || l.rate.bytes > 0));
                PublisherInfo {
                    user: user.clone(),
                    stream: *stream,
                    join_order: r.joined.get(user).copied().unwrap_or(u64::MAX),
                    has_audio: sent(MediaKind::Audio),
                    has_video: sent(MediaKind::Video),
                }
            })
            .collect();
        out.sort_by(|a, b| (a.join_order, &a.user, a.stream.as_str()).cmp(&(b.join_order, &b.user, b.stream.as_str())));
        out
    }

    /// Asks a publisher for a keyframe (throttled like a viewer's PLI); an internal publisher's
    /// owner is told (`SfuOutput::KeyframeWanted`).
    pub fn request_keyframe_of(&mut self, room: &RoomKey, user: &UserId, stream: StreamKind, now: Instant) {
        let Some(&pub_id) = self.rooms.get(room).and_then(|r| r.publishers.get(&(user.clone(), stream))) else { return };
        if let Some(p) = self.internal.get_mut(&pub_id) {
            // A mix (or a transcoding ingest) makes one on request.
            if p.keyframe_requests.try_request(now) {
                self.out.push_back(SfuOutput::KeyframeWanted(pub_id));
            }
            return;
        }
        let Some(Session { role: Role::Publisher { producers }, .. }) = self.sessions.get(&pub_id) else { return };
        let Some(p) = producers.iter().find(|p| p.kind == MediaKind::Video) else { return };
        let (mid, rid) = (p.mid, p.layers.iter().find(|l| l.rid.as_deref() == Some("h")).or(p.layers.first()).and_then(|l| l.rid));
        self.request_keyframe(pub_id, mid, rid, now);
    }

    /// Rooms where someone other than a mix publishes.
    pub fn rooms_with_anchors(&self) -> Vec<RoomKey> {
        self.rooms.iter().filter(|(_, r)| r.publishers.keys().any(|(u, _)| !u.is_mix())).map(|(k, _)| k.clone()).collect()
    }

    /// Whether someone publishes this (user, stream) in the room.
    pub fn is_published(&self, room: &RoomKey, user: &UserId, stream: StreamKind) -> bool {
        self.rooms.get(room).is_some_and(|r| r.publishers.contains_key(&(user.clone(), stream)))
    }

    pub fn room_exists(&self, key: &RoomKey) -> bool {
        self.rooms.contains_key(key)
    }

    pub fn stats(&self) -> SfuStats {
        let mut s = SfuStats { rooms: self.rooms.len(), publishers: self.internal.len(), participants: self.presence.count_by_user_type(), ..Default::default() };
        for session in self.sessions.values() {
            match session.role {
                Role::Publisher { .. } => s.publishers += 1,
                Role::Viewer { .. } => s.viewers += 1,
            }
        }
        s
    }

    pub fn session_info(&self, sid: &str) -> Option<SessionInfo> {
        let id = self.by_sid.get(sid)?;
        if let Some(p) = self.internal.get(id) {
            return Some(SessionInfo { room: p.spec.room.clone(), user: p.spec.user.clone(), role: PeerRole::Publish, ufrag: String::new() });
        }
        let s = self.sessions.get(id)?;
        Some(SessionInfo { room: s.spec.room.clone(), user: s.spec.user.clone(), role: s.spec.role, ufrag: s.peer.local_ufrag.clone() })
    }

    /// An ICE restart asked by the client (WHIP/WHEP PATCH with a new ufrag and pwd): the peer
    /// takes the client's new credentials and gets new ones of its own; media continues on the
    /// same DTLS association once the new checks succeed.
    pub fn ice_restart(&mut self, sid: &str, remote_ufrag: &str, remote_pwd: &str, now: Instant) -> Option<IceRestart> {
        let id = *self.by_sid.get(sid)?;
        let s = self.sessions.get_mut(&id)?;
        let local = tessera_rtc::str0m::IceCreds::new();
        {
            let mut api = s.peer.rtc.direct_api();
            api.set_remote_ice_credentials(tessera_rtc::str0m::IceCreds { ufrag: remote_ufrag.to_owned(), pass: remote_pwd.to_owned() });
            api.set_local_ice_credentials(local.clone());
        }
        self.by_ufrag.remove(&s.peer.local_ufrag);
        s.peer.local_ufrag = local.ufrag.clone();
        self.by_ufrag.insert(local.ufrag.clone(), id);
        tracing::info!(sid = %sid, "ICE restart");
        self.mark_dirty(id);
        self.drain_all(now);
        Some(IceRestart { ufrag: local.ufrag, pwd: local.pass, candidates: self.candidates.clone() })
    }

    /// Negotiates the offer and adds the session; returns the SDP answer.
    pub fn add_session(&mut self, spec: SessionSpec, offer: &str, now: Instant) -> Result<String, OfferError> {
        let first_video =
            tessera_rtc::OfferSummary::parse(offer).ok().and_then(|s| s.media().find(|m| m.kind == tessera_rtc::SectionKind::Video).and_then(|m| m.codecs.first().copied()));
        let (peer, answer) = Peer::from_offer(spec.role, offer, &self.candidates, first_video, now)?;
        let answer = tessera_rtc::reject_sections(&answer, &spec.rejected_mids);
        let id = self.next_id;
        self.next_id += 1;
        let role = match spec.role {
            PeerRole::Publish => Role::Publisher { producers: Vec::new() },
            PeerRole::Play => Role::Viewer { consumers: Vec::new(), estimate_bps: None, send_mids: Vec::new(), allocation: Allocation::default() },
        };
        self.enter(id, &spec, now);
        let join = self.take_join_order();
        let room = self.rooms.entry(spec.room.clone()).or_default();
        room.empty_since = None;
        match spec.role {
            PeerRole::Publish => {
                // The newest publisher of a (user, stream) wins; the older one is closed.
                if !room.joined.contains_key(&spec.user) {
                    room.joined.insert(spec.user.clone(), join);
                }
                if let Some(old) = room.publishers.insert((spec.user.clone(), spec.stream), id) {
                    tracing::info!(room = %spec.room.room, user = %spec.user, "publisher replaced by a new session");
                    self.close_session(old, LeaveReason::Left, now);
                    self.remove_internal_publisher(old, now);
                }
            }
            PeerRole::Play => {
                let source = spec.source_user.clone().expect("a viewer names its source");
                self.rooms.get_mut(&spec.room).expect("just made").viewers.entry((source, spec.stream)).or_default().push(id);
            }
        }
        self.by_sid.insert(spec.sid.clone(), id);
        self.by_ufrag.insert(peer.local_ufrag.clone(), id);
        tracing::info!(sid = %spec.sid, room = %spec.room.room, user = %spec.user, role = ?spec.role, "session added");
        self.sessions.insert(id, Session { spec, peer, role, next_timeout: now, connected: false, created: now, last_heard: now, addrs: Vec::new(), dirty: false });
        self.mark_dirty(id);
        self.drain_all(now);
        Ok(answer)
    }

    /// Ends a session (WHIP/WHEP DELETE). Returns what it was.
    pub fn remove_session(&mut self, sid: &str, now: Instant) -> Option<SessionInfo> {
        let id = *self.by_sid.get(sid)?;
        let info = self.session_info(sid);
        if !self.remove_internal_publisher(id, now) {
            self.close_session(id, LeaveReason::Left, now);
        }
        info
    }

    /// A session joins its room's presence (after a 101 if it makes the room). It joins
    /// before any session it replaces leaves, so the participant stays present.
    fn enter(&mut self, id: u64, spec: &SessionSpec, now: Instant) {
        if !self.rooms.contains_key(&spec.room) {
            self.presence.room_created(&spec.room, &spec.user);
        }
        let publishes = matches!(spec.role, PeerRole::Publish).then_some(spec.stream);
        self.presence.joined(id, &spec.room, &spec.user, &spec.join, publishes, now);
    }

    fn close_session(&mut self, id: u64, reason: LeaveReason, now: Instant) {
        let Some(mut s) = self.sessions.remove(&id) else { return };
        self.presence.left(id, reason, now);
        s.peer.rtc.disconnect();
        // What the peer says on the way out (a DTLS close alert) is still sent.
        while let Ok(Output::Transmit(t)) = s.peer.rtc.poll_output() {
            self.out.push_back(SfuOutput::Transmit(t));
        }
        self.by_sid.remove(&s.spec.sid);
        self.by_ufrag.remove(&s.peer.local_ufrag);
        for a in &s.addrs {
            if self.by_addr.get(a) == Some(&id) {
                self.by_addr.remove(a);
            }
        }
        if let Some(room) = self.rooms.get_mut(&s.spec.room) {
            match s.spec.role {
                PeerRole::Publish => {
                    let key = (s.spec.user.clone(), s.spec.stream);
                    if room.publishers.get(&key) == Some(&id) {
                        room.publishers.remove(&key);
                        room.forget_if_gone(&key.0);
                    }
                }
                PeerRole::Play => {
                    if let Some(source) = &s.spec.source_user {
                        let key = (source.clone(), s.spec.stream);
                        if let Some(v) = room.viewers.get_mut(&key) {
                            v.retain(|x| *x != id);
                            if v.is_empty() {
                                room.viewers.remove(&key);
                            }
                        }
                    }
                }
            }
        }
        tracing::info!(sid = %s.spec.sid, room = %s.spec.room.room, user = %s.spec.user, "session closed");
    }

    /// A datagram arrived on the shared port.
    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, destination: SocketAddr, data: &[u8]) {
        self.counters.packets_received.fetch_add(1, Ordering::Relaxed);
        // A binding request names its peer by ufrag; it also (re)binds the source address.
        let id = match demux::binding_request_local_ufrag(data).and_then(|u| self.by_ufrag.get(u).copied()) {
            Some(id) => {
                if self.by_addr.insert(source, id) != Some(id) {
                    if let Some(s) = self.sessions.get_mut(&id) {
                        s.addrs.push(source);
                    }
                }
                id
            }
            None => match self.by_addr.get(&source) {
                Some(id) => *id,
                None => return,
            },
        };
        let Ok(contents) = data.try_into() else { return };
        let Some(session) = self.sessions.get_mut(&id) else { return };
        let input = Input::Receive(now, Receive { proto: Protocol::Udp, source, destination, contents });
        if let Err(e) = session.peer.rtc.handle_input(input) {
            tracing::debug!(sid = %session.spec.sid, "bad input: {e}");
            return;
        }
        session.last_heard = now;
        // Only this peer is drained now (its packets are forwarded at once); the consumers it
        // wrote to are drained by `flush`, once per batch of datagrams rather than per packet.
        self.drain_one(id, now);
        self.handle_events(now);
    }

    /// Drains every peer with pending output. The driver calls it after each batch of datagrams.
    pub fn flush(&mut self, now: Instant) {
        self.drain_all(now);
    }

    fn mark_dirty(&mut self, id: u64) {
        if let Some(s) = self.sessions.get_mut(&id) {
            if !s.dirty {
                s.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    /// When `handle_timeout` wants to be called next.
    pub fn next_timeout(&self) -> Instant {
        self.sessions.values().map(|s| s.next_timeout).fold(self.next_tick, Instant::min)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let mut due = std::mem::take(&mut self.scratch_ids);
        due.clear();
        due.extend(self.sessions.iter().filter(|(_, s)| s.next_timeout <= now).map(|(id, _)| *id));
        for id in &due {
            if let Some(s) = self.sessions.get_mut(id) {
                if let Err(e) = s.peer.rtc.handle_input(Input::Timeout(now)) {
                    tracing::debug!(sid = %s.spec.sid, "timeout handling failed: {e}");
                }
                if !s.dirty {
                    s.dirty = true;
                    self.dirty.push(*id);
                }
            }
        }
        self.scratch_ids = due;
        self.drain_all(now);
        if now >= self.next_tick {
            self.next_tick = now + TICK;
            self.tick(now);
        }
    }

    /// Periodic work: drop dead sessions and empty rooms, re-choose layers.
    fn tick(&mut self, now: Instant) {
        let dead: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                !s.peer.rtc.is_alive()
                    || (!s.connected && now.duration_since(s.created) > CONNECT_TIMEOUT)
                    || (s.connected && now.duration_since(s.last_heard) > self.liveness_timeout)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.close_session(id, LeaveReason::TimedOut, now);
        }
        let timeout = self.empty_room_timeout;
        let (taps, presence) = (&self.taps, &mut self.presence);
        self.rooms.retain(|key, room| {
            // A room lives while it has a participant other than a mix's output, or a task
            // (mix job, relay, recording) on it (PRODUCT.md §3.3).
            let participants = room.publishers.keys().any(|(u, _)| !u.is_mix()) || !room.viewers.is_empty();
            let tasks = taps.get(key).is_some_and(|t| !t.is_empty());
            if !participants && !tasks {
                let since = *room.empty_since.get_or_insert(now);
                if now.duration_since(since) >= timeout {
                    tracing::info!(room = %key.room, "empty room dismissed");
                    presence.room_dismissed(key);
                    return false;
                }
            } else {
                room.empty_since = None;
            }
            true
        });
        let viewers: Vec<u64> = self.sessions.iter().filter(|(_, s)| matches!(s.role, Role::Viewer { .. })).map(|(id, _)| *id).collect();
        for v in viewers {
            self.allocate(v, now);
        }
    }

    /// Polls one peer until it names its next timeout; its events are queued.
    fn drain_one(&mut self, id: u64, now: Instant) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        s.dirty = false;
        loop {
            match s.peer.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    s.next_timeout = t;
                    break;
                }
                Ok(Output::Transmit(t)) => self.out.push_back(SfuOutput::Transmit(t)),
                Ok(Output::Event(e)) => self.events.push((id, e)),
                Err(e) => {
                    tracing::warn!(sid = %s.spec.sid, "peer failed: {e}");
                    s.peer.rtc.disconnect();
                    s.next_timeout = now;
                    break;
                }
            }
        }
    }

    fn handle_events(&mut self, now: Instant) {
        while !self.events.is_empty() {
            let events = std::mem::take(&mut self.events);
            for (id, e) in events {
                self.handle_event(id, e, now);
            }
        }
    }

    /// Drains every dirty peer's output and handles the events, until nothing is left.
    fn drain_all(&mut self, now: Instant) {
        loop {
            while let Some(id) = self.dirty.pop() {
                self.drain_one(id, now);
            }
            if self.events.is_empty() {
                break;
            }
            self.handle_events(now);
        }
    }

    fn handle_event(&mut self, id: u64, event: Event, now: Instant) {
        match event {
            Event::Connected => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.connected = true;
                    tracing::info!(sid = %s.spec.sid, "connected");
                    if matches!(s.role, Role::Viewer { .. }) {
                        self.setup_consumers(id);
                        self.allocate(id, now);
                    }
                }
            }
            Event::MediaAdded(m) => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    if let Role::Viewer { send_mids, .. } = &mut s.role {
                        send_mids.push(m.mid);
                        // Sections can be reported after the connection is up.
                        if s.connected {
                            self.setup_consumers(id);
                            self.allocate(id, now);
                        }
                        return;
                    }
                    if let Role::Publisher { producers } = &mut s.role {
                        let layers = match &m.simulcast {
                            Some(sim) => sim.recv.iter().map(|l| Layer::new(Some(l.rid), now)).collect(),
                            None => vec![Layer::new(None, now)],
                        };
                        producers.push(Producer { mid: m.mid, kind: m.kind, layers, announced: false });
                    }
                }
            }
            Event::RtpPacket(pkt) => self.forward(id, pkt, now),
            Event::KeyframeRequest(req) => self.keyframe_request_from_viewer(id, req.mid, now),
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                if let Some(Session { role: Role::Viewer { estimate_bps, .. }, .. }) = self.sessions.get_mut(&id) {
                    *estimate_bps = Some(estimate.as_f64());
                }
            }
            _ => {}
        }
    }

    /// Creates a consumer for each negotiated send section of a viewer that has none yet.
    fn setup_consumers(&mut self, id: u64) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        let Role::Viewer { consumers, send_mids, .. } = &mut s.role else { return };
        if consumers.len() == send_mids.len() {
            return;
        }
        let rtc = &mut s.peer.rtc;
        let params: Vec<_> = rtc.codec_config().params().to_vec();
        let mids: Vec<Mid> = {
            let mut api = rtc.direct_api();
            // Every section we answered as a sender has a tx stream.
            let mut mids = Vec::new();
            for &mid in send_mids.iter().filter(|m| !consumers.iter().any(|c| c.mid == **m)) {
                if let Some(tx) = api.stream_tx_by_mid(mid, None) {
                    // str0m's default stops resending above 15 % retransmitted bytes; bursts of loss
                    // on a 10 %-loss link pass that, and viewers would see holes.
                    tx.set_rtx_cache(RTX_CACHE_PACKETS, RTX_CACHE_AGE, Some(RTX_RATIO_CAP));
                    mids.push(mid);
                }
            }
            mids
        };
        for mid in mids {
            let Some(media) = rtc.media(mid) else { continue };
            let kind = media.kind();
            let remote = media.remote_pts().to_vec();
            let mut pts = Vec::new();
            for p in params.iter().filter(|p| remote.contains(&p.pt())) {
                if let Some(c) = to_codec(p.spec().codec) {
                    if !pts.iter().any(|(x, _)| *x == c) {
                        pts.push((c, p.pt()));
                    }
                }
            }
            let allowed = !s.spec.rejected_mids.iter().any(|m| **m == *mid);
            consumers.push(Consumer::new(mid, kind, allowed, pts));
        }
    }

    fn publisher_of(&self, viewer: &Session) -> Option<u64> {
        let room = self.rooms.get(&viewer.spec.room)?;
        room.publishers.get(&(viewer.spec.source_user.clone()?, viewer.spec.stream)).copied()
    }

    /// Chooses each video consumer's layer from the viewer's bandwidth estimate (or its pinned
    /// quality); pauses video when even the lowest layer does not fit.
    fn allocate(&mut self, viewer_id: u64, now: Instant) {
        let Some(viewer) = self.sessions.get(&viewer_id) else { return };
        let Some(pub_id) = self.publisher_of(viewer) else { return };
        let quality = viewer.spec.quality;
        let producers = match (self.sessions.get(&pub_id), self.internal.get(&pub_id)) {
            (Some(Session { role: Role::Publisher { producers }, .. }), _) => producers,
            (_, Some(p)) => &p.producers,
            _ => return,
        };
        let audio_layer = producers.iter().find(|p| p.kind == MediaKind::Audio).map(|p| LayerChoice::Layer(p.layers.first().and_then(|l| l.rid)));
        let video_layers: Option<Vec<LayerRate>> =
            producers.iter().find(|p| p.kind == MediaKind::Video).map(|p| p.layers.iter().map(|l| LayerRate { rid: l.rid, bps: l.rate.bps }).collect());
        let Some(Session { role: Role::Viewer { consumers, estimate_bps, allocation, .. }, peer, .. }) = self.sessions.get_mut(&viewer_id) else { return };
        let estimate = *estimate_bps;
        let video = video_layers.as_ref().and_then(|l| allocation.choose(l, quality, estimate, now));
        // A viewer held below the layer it would take with room to spare has its estimator probe
        // toward that layer, or it could never climb back: the estimate does not rise above what
        // is sent. A probe that finds no room is withdrawn and the next one waits longer.
        if let Some(rate) = video_layers.as_ref().and_then(|l| allocation.probe(l, quality, estimate, now)) {
            peer.rtc.bwe().set_bitrate(Bitrate::ZERO, Bitrate::bps(rate as u64));
        }
        let targets: Vec<Option<LayerChoice>> = consumers.iter().map(|c| if c.kind == MediaKind::Audio { audio_layer } else { video }).collect();
        for (c, t) in consumers.iter_mut().zip(targets) {
            let new = t.map(|t| (pub_id, t));
            if c.target != new {
                tracing::debug!(mid = %c.mid, target = ?t, "layer target changed");
                c.target = new;
            }
        }
    }

    fn forward(&mut self, pub_id: u64, pkt: RtpPacket, now: Instant) {
        let Some(publisher) = self.sessions.get_mut(&pub_id) else { return };
        let ssrc = pkt.header.ssrc;
        let Some((mid, rid)) = publisher.peer.rtc.direct_api().stream_rx(&ssrc).map(|s| (s.mid(), s.rid())) else { return };
        let pt = pkt.header.payload_type;
        let Some(codec) = publisher.peer.rtc.codec_config().params().iter().find(|p| p.pt() == pt).and_then(|p| to_codec(p.spec().codec)) else {
            return;
        };
        let Role::Publisher { producers } = &mut publisher.role else { return };
        let Some(producer) = producers.iter_mut().find(|p| p.mid == mid) else { return };
        let kind = producer.kind;
        note_layer(producer, rid, pkt.payload.len() + 12, now);
        if !std::mem::replace(&mut producer.announced, true) {
            self.presence.media(pub_id, Track::of(publisher.spec.stream, kind == MediaKind::Video));
        }
        let ext = ExtensionValues {
            audio_level: pkt.header.ext_vals.audio_level,
            voice_activity: pkt.header.ext_vals.voice_activity,
            video_orientation: pkt.header.ext_vals.video_orientation,
            ..Default::default()
        };
        let fp = FwdPacket {
            ssrc: *ssrc,
            seq: *pkt.seq_no,
            ts: pkt.header.timestamp,
            marker: pkt.header.marker,
            keyframe: kind == MediaKind::Video && is_keyframe(codec, &pkt.payload),
            payload: pkt.payload,
            codec,
            kind,
            mid,
            rid,
            ext,
            arrival: pkt.timestamp,
        };
        let (room, key) = (publisher.spec.room.clone(), (publisher.spec.user.clone(), publisher.spec.stream));
        self.fan_out(pub_id, &room, &key, &fp, now, None);
    }

    /// Writes one producer packet to the consumers watching (user, stream) in `room`, or only to
    /// `only`. Returns nothing; viewers written to are marked dirty.
    fn fan_out(&mut self, pub_id: u64, room: &RoomKey, key: &(UserId, StreamKind), fp: &FwdPacket, now: Instant, only: Option<u64>) {
        // Taps take one layer (the top one, or the only one); a mix job's tap skips mixes.
        if only.is_none() && (fp.rid.is_none() || fp.rid.as_deref() == Some("h")) {
            let is_mix = key.0.is_mix();
            if let Some(taps) = self.taps.get(room) {
                for (t, with_mixes) in taps {
                    if is_mix && !with_mixes {
                        continue;
                    }
                    self.out.push_back(SfuOutput::Tap(
                        *t,
                        TapPacket { user: key.0.clone(), stream: key.1, codec: fp.codec, seq: fp.seq, ts: fp.ts, marker: fp.marker, payload: fp.payload.clone() },
                    ));
                }
            }
        }
        let Some(viewers) = self.rooms.get(room).and_then(|r| r.viewers.get(key)) else { return };
        let mut ids = std::mem::take(&mut self.scratch_ids);
        ids.clear();
        match only {
            Some(v) => ids.push(v),
            None => ids.extend_from_slice(viewers),
        }
        let (kind, rid) = (fp.kind, fp.rid);
        let mut want_keyframe = false;
        let mut need_gop: Vec<u64> = Vec::new();
        let internal = self.internal.contains_key(&pub_id);
        for vid in &ids {
            let Some(viewer) = self.sessions.get_mut(vid) else { continue };
            if !viewer.connected {
                continue;
            }
            let Role::Viewer { consumers, .. } = &mut viewer.role else { continue };
            let Some(c) = consumers.iter_mut().find(|c| c.kind == kind && c.allowed) else { continue };
            let mut api = viewer.peer.rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(c.mid, None) else { continue };
            let queued = tx.queue_info().map_or(0, |q| q.packet_count());
            match c.route(fp, pub_id, internal, only.is_some(), queued, now) {
                Route::Skip => continue,
                Route::WaitKeyframe => {
                    want_keyframe = true;
                    continue;
                }
                Route::ReplayGop => {
                    need_gop.push(*vid);
                    continue;
                }
                Route::Dropped { broken } => {
                    self.counters.packets_dropped.fetch_add(1, Ordering::Relaxed);
                    want_keyframe |= broken && !internal;
                    continue;
                }
                Route::Send { pt, seq, ts } => {
                    tx.write_rtp(RtpWrite::new(pt, seq.into(), ts, fp.arrival, fp.payload.clone()).marker(fp.marker).ext_vals(fp.ext.clone()).nackable(kind == MediaKind::Video));
                }
            }
            self.counters.packets_forwarded.fetch_add(1, Ordering::Relaxed);
            if !viewer.dirty {
                viewer.dirty = true;
                self.dirty.push(*vid);
            }
        }
        self.scratch_ids = ids;
        if want_keyframe {
            self.request_keyframe(pub_id, fp.mid, rid, now);
        }
        for vid in need_gop {
            let gop: Vec<FwdPacket> = self.internal.get(&pub_id).map(|p| p.gop.packets().to_vec()).unwrap_or_default();
            // The GOP starts with a keyframe: the replay begins at a frame, whatever the live
            // packets did before. A viewer whose queue has no room for a keyframe waits for the
            // source's next one instead; a GOP longer than the queue allows is cut at a frame.
            let Some(viewer) = self.sessions.get_mut(&vid) else { continue };
            let Role::Viewer { consumers, .. } = &mut viewer.role else { continue };
            let Some(c) = consumers.iter_mut().find(|c| c.kind == MediaKind::Video && c.allowed) else { continue };
            let mid = c.mid;
            c.reset_gate();
            let queued = viewer.peer.rtc.direct_api().stream_tx_by_mid(mid, None).and_then(|tx| tx.queue_info()).map_or(0, |q| q.packet_count());
            if queued >= MAX_QUEUED_PACKETS / 2 {
                continue;
            }
            for cached in &gop {
                self.fan_out(pub_id, room, key, cached, now, Some(vid));
            }
        }
    }

    /// Adds a publisher that is not a WebRTC peer (an RTMP publish or a pull ingest): its media
    /// arrives through `push_packet`. Replaces an earlier publisher of the same (user, stream),
    /// and returns the id of the internal publisher it replaced, whose connection the caller
    /// should close (issue 10, defect 12).
    pub fn add_internal_publisher(&mut self, spec: SessionSpec, now: Instant) -> (u64, Option<u64>) {
        let id = self.next_id;
        self.next_id += 1;
        self.enter(id, &spec, now);
        let join = self.take_join_order();
        let room = self.rooms.entry(spec.room.clone()).or_default();
        room.empty_since = None;
        room.joined.entry(spec.user.clone()).or_insert(join);
        let mut replaced = None;
        if let Some(old) = room.publishers.insert((spec.user.clone(), spec.stream), id) {
            tracing::info!(room = %spec.room.room, user = %spec.user, "publisher replaced by a new session");
            self.close_session(old, LeaveReason::Left, now);
            if self.remove_internal_publisher(old, now) {
                replaced = Some(old);
            }
        }
        let producers = [(INTERNAL_AUDIO_MID, MediaKind::Audio), (INTERNAL_VIDEO_MID, MediaKind::Video)]
            .into_iter()
            .map(|(mid, kind)| Producer { mid: mid.into(), kind, layers: vec![Layer::new(None, now)], announced: false })
            .collect();
        tracing::info!(sid = %spec.sid, room = %spec.room.room, user = %spec.user, "internal publisher added");
        self.by_sid.insert(spec.sid.clone(), id);
        self.internal.insert(id, InternalPublisher { spec, keyframe_requests: KeyframeThrottle::new(KEYFRAME_REQUEST_INTERVAL), producers, gop: GopCache::default() });
        (id, replaced)
    }

    pub fn remove_internal_publisher(&mut self, id: u64, now: Instant) -> bool {
        let Some(p) = self.internal.remove(&id) else { return false };
        self.presence.left(id, LeaveReason::Left, now);
        self.by_sid.remove(&p.spec.sid);
        if let Some(room) = self.rooms.get_mut(&p.spec.room) {
            let key = (p.spec.user.clone(), p.spec.stream);
            if room.publishers.get(&key) == Some(&id) {
                room.publishers.remove(&key);
                room.forget_if_gone(&key.0);
            }
        }
        tracing::info!(sid = %p.spec.sid, "internal publisher removed");
        true
    }

    /// One RTP packet from an internal publisher. Video is cached from its last keyframe (at
    /// most 4 s or 8 MiB) so a viewer that starts mid-GOP gets a picture at once.
    pub fn push_packet(&mut self, id: u64, packet: IngestPacket, now: Instant) {
        let Some(p) = self.internal.get_mut(&id) else { return };
        let (kind, mid) = match packet.codec.kind() {
            tessera_media::MediaKind::Audio => (MediaKind::Audio, INTERNAL_AUDIO_MID),
            tessera_media::MediaKind::Video => (MediaKind::Video, INTERNAL_VIDEO_MID),
        };
        if let Some(producer) = p.producers.iter_mut().find(|x| x.kind == kind) {
            note_layer(producer, None, packet.payload.len() + 12, now);
            if !std::mem::replace(&mut producer.announced, true) {
                self.presence.media(id, Track::of(p.spec.stream, kind == MediaKind::Video));
            }
        }
        let fp = FwdPacket {
            ssrc: packet.ssrc,
            seq: packet.seq,
            ts: packet.ts,
            marker: packet.marker,
            keyframe: kind == MediaKind::Video && packet.keyframe,
            payload: packet.payload,
            codec: packet.codec,
            kind,
            mid: mid.into(),
            rid: None,
            ext: ExtensionValues::default(),
            arrival: now,
        };
        if kind == MediaKind::Video {
            p.gop.push(&fp, now);
        }
        let (room, key) = (p.spec.room.clone(), (p.spec.user.clone(), p.spec.stream));
        self.fan_out(id, &room, &key, &fp, now, None);
    }

    fn keyframe_request_from_viewer(&mut self, viewer_id: u64, mid: Mid, now: Instant) {
        let Some(viewer) = self.sessions.get(&viewer_id) else { return };
        let Some(pub_id) = self.publisher_of(viewer) else { return };
        let Role::Viewer { consumers, .. } = &viewer.role else { return };
        let Some(c) = consumers.iter().find(|c| c.mid == mid) else { return };
        let rid = match c.current {
            Some((p, rid)) if p == pub_id => rid,
            _ => None,
        };
        if let Some(p) = self.internal.get_mut(&pub_id) {
            // An ingest or a mix: its owner is told (a mix encodes an IDR, PRODUCT.md §3.5).
            if p.keyframe_requests.try_request(now) {
                self.out.push_back(SfuOutput::KeyframeWanted(pub_id));
            }
            return;
        }
        let pub_mid = match self.sessions.get(&pub_id) {
            Some(Session { role: Role::Publisher { producers }, .. }) => producers.iter().find(|p| p.kind == MediaKind::Video).map(|p| p.mid),
            _ => None,
        };
        if let Some(pub_mid) = pub_mid {
            self.request_keyframe(pub_id, pub_mid, rid, now);
        }
    }

    /// Asks a producer for a keyframe, at most once per 500 ms per layer.
    fn request_keyframe(&mut self, pub_id: u64, mid: Mid, rid: Option<Rid>, now: Instant) {
        let Some(s) = self.sessions.get_mut(&pub_id) else { return };
        let Role::Publisher { producers } = &mut s.role else { return };
        let Some(layer) = producers.iter_mut().find(|p| p.mid == mid).and_then(|p| p.layers.iter_mut().find(|l| l.rid == rid)) else { return };
        if !layer.keyframe_requests.try_request(now) {
            return;
        }
        if let Some(rx) = s.peer.rtc.direct_api().stream_rx_by_mid(mid, rid) {
            rx.request_keyframe(KeyframeRequestKind::Pli);
            self.counters.keyframe_requests.fetch_add(1, Ordering::Relaxed);
            if !s.dirty {
                s.dirty = true;
                self.dirty.push(pub_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::{JoinInfo, RoomEvent};
    use tessera_model::{AppId, RoomId};
    use tessera_rtc::str0m::media::Direction;

    fn offer(dir: Direction, now: Instant) -> String {
        let mut rtc = tessera_rtc::str0m::Rtc::builder().build(now);
        let mut change = rtc.sdp_api();
        change.add_media(MediaKind::Audio, dir, None, None, None);
        change.add_media(MediaKind::Video, dir, None, None, None);
        change.apply().expect("an offer").0.to_sdp_string()
    }

    fn key() -> RoomKey {
        RoomKey { app: AppId::default_app(), room: RoomId::parse("r1").unwrap() }
    }

    fn spec(sid: &str, role: PeerRole) -> SessionSpec {
        SessionSpec {
            sid: sid.into(),
            room: key(),
            user: UserId::parse("alice").unwrap(),
            role,
            stream: StreamKind::Main,
            source_user: (role == PeerRole::Play).then(|| UserId::parse("alice").unwrap()),
            rejected_mids: Vec::new(),
            quality: Quality::Auto,
            join: match role {
                PeerRole::Publish => JoinInfo::anchor(crate::presence::user_type::WHIP),
                PeerRole::Play => JoinInfo { user_type: crate::presence::user_type::WHEP, terminal_type: 4, role: tessera_model::Role::Audience, info: None },
            },
        }
    }

    fn sfu(now: Instant) -> Sfu {
        Sfu::new(vec!["127.0.0.1:9".parse().unwrap()], Duration::from_secs(10), now)
    }

    #[test]
    fn rooms_live_while_sessions_do_and_are_dismissed_after_the_empty_timeout() {
        let t0 = Instant::now();
        let mut sfu = sfu(t0);
        let answer = sfu.add_session(spec("pub", PeerRole::Publish), &offer(Direction::SendOnly, t0), t0).unwrap();
        assert!(answer.contains("a=ice-lite") && answer.contains("a=candidate"), "{answer}");
        assert!(sfu.room_exists(&key()));
        assert_eq!(sfu.stats(), SfuStats { rooms: 1, publishers: 1, viewers: 0, participants: vec![(crate::presence::user_type::WHIP, 1)] });
        // A second publisher of the same (user, stream) replaces the first.
        sfu.add_session(spec("pub2", PeerRole::Publish), &offer(Direction::SendOnly, t0), t0).unwrap();
        assert_eq!(sfu.stats().publishers, 1);
        assert!(sfu.session_info("pub").is_none());
        sfu.add_session(spec("view", PeerRole::Play), &offer(Direction::RecvOnly, t0), t0).unwrap();
        assert_eq!(sfu.stats().viewers, 1);
        assert!(sfu.remove_session("pub2", t0).is_some());
        assert!(sfu.remove_session("view", t0).is_some());
        assert!(sfu.remove_session("view", t0).is_none());
        // Empty now; dismissed once the empty timeout has passed (time is injected, no waiting).
        let mut t = t0;
        while t < t0 + Duration::from_secs(9) {
            t += Duration::from_millis(500);
            sfu.handle_timeout(t);
        }
        assert!(sfu.room_exists(&key()), "kept during the first 10 s");
        while t < t0 + Duration::from_secs(11) {
            t += Duration::from_millis(500);
            sfu.handle_timeout(t);
        }
        assert!(!sfu.room_exists(&key()));
        // One participant (alice: two publishers in turn and a viewer), one room: the
        // replacement and the overlapping sessions make no events of their own.
        let events: Vec<RoomEvent> = std::iter::from_fn(|| sfu.poll_output()).filter_map(|o| if let SfuOutput::Room(e) = o { Some(e) } else { None }).collect();
        assert!(
            matches!(
                &events[..],
                [
                    RoomEvent::RoomCreated { .. },
                    RoomEvent::Entered { reason: 1, .. },
                    RoomEvent::Exited { reason: 1, role: tessera_model::Role::Anchor, .. },
                    RoomEvent::RoomDismissed { .. }
                ]
            ),
            "{events:?}"
        );
    }

    #[test]
    fn viewer_sessions_are_counted_per_user_and_room() {
        let t0 = Instant::now();
        let mut sfu = sfu(t0);
        for i in 0..3 {
            sfu.add_session(spec(&format!("v{i}"), PeerRole::Play), &offer(Direction::RecvOnly, t0), t0).unwrap();
        }
        sfu.add_session(spec("p", PeerRole::Publish), &offer(Direction::SendOnly, t0), t0).unwrap();
        let alice = UserId::parse("alice").unwrap();
        assert_eq!(sfu.viewer_sessions(&key(), &alice), 3);
        assert_eq!(sfu.viewer_sessions(&key(), &UserId::parse("bob").unwrap()), 0);
        sfu.remove_session("v1", t0);
        assert_eq!(sfu.viewer_sessions(&key(), &alice), 2);
    }

    #[test]
    fn sessions_that_never_connect_are_dropped() {
        let t0 = Instant::now();
        let mut sfu = sfu(t0);
        sfu.add_session(spec("pub", PeerRole::Publish), &offer(Direction::SendOnly, t0), t0).unwrap();
        let mut t = t0;
        while t < t0 + CONNECT_TIMEOUT + Duration::from_secs(1) {
            t += Duration::from_millis(250);
            sfu.handle_timeout(t);
        }
        assert_eq!(sfu.stats().publishers, 0);
    }

    #[test]
    fn garbage_datagrams_are_dropped_without_harm() {
        let t0 = Instant::now();
        let mut sfu = sfu(t0);
        sfu.add_session(spec("pub", PeerRole::Publish), &offer(Direction::SendOnly, t0), t0).unwrap();
        let mut seed = 0x9E3779B97F4A7C15u64;
        for i in 0..2000u32 {
            let mut buf = vec![0u8; (i % 300) as usize];
            for b in &mut buf {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            // Some look like STUN, RTP or DTLS by their first byte.
            if let Some(b) = buf.first_mut() {
                *b = [0u8, 1, 22, 128, 200][i as usize % 5];
            }
            let src: SocketAddr = format!("10.0.0.{}:{}", i % 250 + 1, 1000 + i).parse().unwrap();
            sfu.handle_datagram(t0, src, "127.0.0.1:9".parse().unwrap(), &buf);
        }
        sfu.flush(t0);
        assert_eq!(sfu.stats().publishers, 1, "the session is untouched");
        assert_eq!(sfu.counters.packets_forwarded.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn offers_that_cannot_be_negotiated_are_refused() {
        let t0 = Instant::now();
        let mut sfu = sfu(t0);
        for bad in ["v=0\r\n", "garbage", "v=0\r\nm=audio 9 RTP/AVP 0\r\n"] {
            let e = sfu.add_session(spec("x", PeerRole::Publish), bad, t0).unwrap_err();
            assert_eq!(e.code(), "sdp_invalid", "{bad}");
        }
        assert_eq!(sfu.stats(), SfuStats::default());
    }
}
