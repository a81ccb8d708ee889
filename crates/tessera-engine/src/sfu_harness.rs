//! The SFU in-process, in the style of str0m's own tests: str0m peers and the `Sfu` in one
//! thread, time injected (a test of seconds runs in milliseconds), and a network emulator
//! between them (loss, delay, jitter that reorders, a bandwidth cap with a bounded queue).
//! The end-to-end tests with Chromium, aiortc and FFmpeg stay; these pin the forwarding
//! logic down where it can be stepped and measured.

use crate::presence::JoinInfo;
use crate::sfu::{Quality, RoomKey, SessionSpec, Sfu};
use crate::PeerRole;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tessera_media::StreamKind;
use tessera_model::{AppId, RoomId, UserId};
use tessera_rtc::str0m::change::{SdpAnswer, SdpOffer};
use tessera_rtc::str0m::format::Codec as WireCodec;
use tessera_rtc::str0m::media::{Direction, KeyframeRequestKind, MediaKind, MediaTime, Mid, Rid, Simulcast, SimulcastLayer};
use tessera_rtc::str0m::net::{recycle_datagram, Protocol, Receive};
use tessera_rtc::str0m::{Candidate, Event, Input, Output, Rtc};

const SFU_ADDR: &str = "10.0.0.1:3478";

/// One direction of a peer's access link.
#[derive(Debug, Clone)]
pub struct Link {
    pub loss: f64,
    pub delay: Duration,
    /// Extra delay drawn uniformly from 0..jitter per packet: packets overtake each other.
    pub jitter: Duration,
    /// Bits per second; packets queue behind each other and are dropped past `queue`.
    pub bps: Option<u64>,
    pub queue: Duration,
    busy_until: Option<Instant>,
    seed: u64,
    pub sent: u64,
    pub lost: u64,
}

impl Link {
    pub fn clean() -> Link {
        Link {
            loss: 0.0,
            delay: Duration::from_millis(10),
            jitter: Duration::ZERO,
            bps: None,
            queue: Duration::from_millis(200),
            busy_until: None,
            seed: 0x2545F4914F6CDD1D,
            sent: 0,
            lost: 0,
        }
    }

    fn random(&mut self) -> f64 {
        // xorshift64*: deterministic, so every run of a test sees the same losses.
        self.seed ^= self.seed >> 12;
        self.seed ^= self.seed << 25;
        self.seed ^= self.seed >> 27;
        (self.seed.wrapping_mul(0x2545F4914F6CDD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// How long a packet sent at `now` would wait in the link's queue, in seconds.
    pub fn queued(&self, now: Instant) -> f64 {
        self.busy_until.map_or(0.0, |b| b.saturating_duration_since(now).as_secs_f64())
    }

    /// When a packet of `len` bytes sent at `now` arrives, or `None` if it is lost.
    fn carry(&mut self, now: Instant, len: usize) -> Option<Instant> {
        self.sent += 1;
        let mut leaves = now;
        if let Some(bps) = self.bps {
            let start = self.busy_until.map_or(now, |b| b.max(now));
            if start - now > self.queue {
                self.lost += 1;
                return None;
            }
            leaves = start + Duration::from_nanos(len as u64 * 8 * 1_000_000_000 / bps);
            self.busy_until = Some(leaves);
        }
        if self.random() < self.loss {
            self.lost += 1;
            return None;
        }
        let jitter = self.jitter.mul_f64(self.random());
        Some(leaves + self.delay + jitter)
    }
}

/// A str0m peer on its own address.
pub struct Client {
    pub rtc: Rtc,
    pub addr: SocketAddr,
    pub up: Link,
    pub down: Link,
    pub events: Vec<(Instant, Event)>,
    pub video_mid: Option<Mid>,
    /// A publisher's audio section.
    pub audio_mid: Option<Mid>,
    /// A `sub` connection's sections: whose stream each carries (`subscribe`).
    pub tracks: Vec<(Mid, UserId)>,
    /// When the SFU handed each datagram for this client to the network, and its size.
    pub sent_by_sfu: Vec<(Instant, usize)>,
    next_timeout: Instant,
    /// Which SFU it talks to: 0 the room's (`World::sfu`), 1 the satellite.
    on: usize,
}

impl Client {
    fn new(rtc: Rtc, addr: SocketAddr, up: Link, down: Link, on: usize, now: Instant) -> Client {
        Client { rtc, addr, up, down, events: Vec::new(), video_mid: None, audio_mid: None, tracks: Vec::new(), sent_by_sfu: Vec::new(), next_timeout: now, on }
    }
}

enum To {
    /// The SFU of client `0`.
    Sfu(usize),
    Client(usize),
}

struct Flight {
    at: Instant,
    order: u64,
    to: To,
    source: SocketAddr,
    destination: SocketAddr,
    data: Vec<u8>,
}

impl PartialEq for Flight {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Flight {}
impl PartialOrd for Flight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Flight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

/// The SFU, its peers and the network between them.
pub struct World {
    pub now: Instant,
    pub sfu: Sfu,
    /// A second worker holding satellite copies of rooms (viewers spread to it), wired to `sfu`
    /// by pipes as the driver wires workers (`join_spread`).
    pub satellite: Sfu,
    /// Heap allocations made inside the SFU's calls (not the peers' or the emulator's), counted
    /// while set.
    pub sfu_allocations: Option<u64>,
    pub clients: Vec<Client>,
    flights: BinaryHeap<Reverse<Flight>>,
    order: u64,
    /// Packets the room's SFU wrote into pipes.
    pub pipe_packets: u64,
    /// What taps (mix jobs, relays, recordings) were given.
    pub tap_packets: Vec<(u64, crate::sfu::TapPacket)>,
    /// The satellite as another cluster node's copy of the room (`relay_to_edge`).
    edge: Option<Edge>,
    /// While set, `step` leaves the SFUs' timeouts for the test to run.
    hold_sfu_timeouts: bool,
}

/// A cluster relay from `sfu` (the room's node) to `satellite` (an edge), as
/// `tessera-server/src/cluster_relay.rs` drives one: the room's cluster tap, framed and read
/// back, mirrored into an ingest publisher; keyframe requests back to the room's node.
struct Edge {
    tap: u64,
    ingest: u64,
    reader: crate::cluster_relay::FrameReader,
    mirror: crate::cluster_relay::EdgeMirror,
}

pub fn room() -> RoomKey {
    RoomKey { app: AppId::default_app(), room: RoomId::parse("harness").unwrap() }
}

impl World {
    pub fn new() -> World {
        let now = Instant::now();
        World {
            now,
            sfu: Sfu::new(vec![SFU_ADDR.parse().unwrap()], Duration::from_secs(10), now),
            satellite: Sfu::new(vec![SFU_ADDR.parse().unwrap()], Duration::from_secs(10), now).into_worker(1, Default::default(), Default::default()),
            hold_sfu_timeouts: false,
            sfu_allocations: None,
            clients: Vec::new(),
            flights: BinaryHeap::new(),
            order: 0,
            pipe_packets: 0,
            tap_packets: Vec::new(),
            edge: None,
        }
    }

    /// Makes the satellite an edge that relays alice's main stream from the room's SFU (every
    /// layer, as a cluster relay does); viewers joined with `join_edge` watch it there.
    pub fn relay_to_edge(&mut self) {
        let owner = UserId::parse("relay_edge").unwrap();
        let tap = self.sfu.add_tap(room(), crate::sfu::TapKind::Cluster, &owner, self.now);
        let mut spec = self.spec_of("mirror", "alice", PeerRole::Publish);
        spec.join = JoinInfo::anchor(crate::presence::user_type::PULL_INGEST);
        let (ingest, _) = self.satellite.add_internal_publisher(spec, self.now);
        self.edge = Some(Edge { tap, ingest, reader: Default::default(), mirror: Default::default() });
    }

    /// A viewer of alice's main stream on the edge (`relay_to_edge`).
    pub fn join_edge(&mut self, down: Link) -> usize {
        self.join_on(1, "alice", PeerRole::Play, &[], Link::clean(), down)
    }

    fn spec_of(&self, sid: &str, user: &str, role: PeerRole) -> SessionSpec {
        SessionSpec {
            sid: sid.into(),
            room: room(),
            user: UserId::parse(if role == PeerRole::Publish { user } else { "viewer" }).unwrap(),
            role,
            stream: StreamKind::Main,
            source_user: (role == PeerRole::Play).then(|| UserId::parse(user).unwrap()),
            rejected_mids: Vec::new(),
            quality: Quality::Auto,
            join: JoinInfo::anchor(crate::presence::user_type::WHIP),
        }
    }

    /// A peer publishing (H.264 + Opus) as `user`, or viewing `user`'s main stream.
    pub fn join(&mut self, user: &str, role: PeerRole, up: Link, down: Link) -> usize {
        self.join_with(user, role, &[], up, down)
    }

    /// A publisher sending simulcast layers `rids` (e.g. "h", "l"), or any peer (no rids).
    pub fn join_with(&mut self, user: &str, role: PeerRole, rids: &[&str], up: Link, down: Link) -> usize {
        self.join_on(0, user, role, rids, up, down)
    }

    /// A viewer of `user`'s main stream placed on the satellite (its room lives on `sfu`).
    pub fn join_spread(&mut self, user: &str, up: Link, down: Link) -> usize {
        self.join_on(1, user, PeerRole::Play, &[], up, down)
    }

    fn join_on(&mut self, on: usize, user: &str, role: PeerRole, rids: &[&str], up: Link, down: Link) -> usize {
        let n = self.clients.len();
        let (mut rtc, addr) = self.peer(n);
        let dir = if role == PeerRole::Publish { Direction::SendOnly } else { Direction::RecvOnly };
        let mut change = rtc.sdp_api();
        let audio_mid = change.add_media(MediaKind::Audio, dir, None, None, None);
        let simulcast = (!rids.is_empty()).then(|| {
            let mut s = Simulcast::new();
            for r in rids {
                s.add_send_layer(SimulcastLayer::new(r));
            }
            s
        });
        let video_mid = change.add_media(MediaKind::Video, dir, None, None, simulcast);
        let (offer, pending) = change.apply().expect("an offer");
        let spec = self.spec_of(&format!("s{n}"), user, role);
        let answer = match on {
            0 => self.sfu.add_session(spec, &offer.to_sdp_string(), self.now),
            // On an edge the room is the satellite's own copy (no pipe), else a satellite room.
            _ if self.edge.is_some() => self.satellite.add_session(spec, &offer.to_sdp_string(), self.now),
            _ => self.satellite.add_spread_viewer(spec, &offer.to_sdp_string(), self.now),
        }
        .expect("the SFU answers");
        rtc.sdp_api().accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap()).expect("the answer is accepted");
        self.clients.push(Client { video_mid: Some(video_mid), audio_mid: Some(audio_mid), ..Client::new(rtc, addr, up, down, on, self.now) });
        self.drain_client(n);
        self.drain_sfu();
        n
    }

    /// Peer `n`'s str0m instance on its own address, with the SFU's candidate.
    fn peer(&self, n: usize) -> (Rtc, SocketAddr) {
        let addr: SocketAddr = format!("10.0.1.{}:{}", n + 2, 5000 + n).parse().unwrap();
        let mut rtc = Rtc::builder().clear_codecs().enable_h264(true).enable_opus(true, false).build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        rtc.add_remote_candidate(Candidate::host(SFU_ADDR.parse().unwrap(), "udp").unwrap());
        (rtc, addr)
    }

    /// A room member's `sub` connection (room signaling, PRODUCT.md §7): one peer whose
    /// sections the SFU offers as the member subscribes (`subscribe`).
    pub fn join_subscriber(&mut self, up: Link, down: Link) -> usize {
        let n = self.clients.len();
        let (rtc, addr) = self.peer(n);
        let spec = SessionSpec { source_user: None, ..self.spec_of(&format!("s{n}"), "viewer", PeerRole::Play) };
        self.sfu.add_subscriber(spec, self.now).expect("a subscriber connection");
        self.clients.push(Client::new(rtc, addr, up, down, 0, self.now));
        n
    }

    /// Subscribes `sub` connection `i` to `user`'s main stream (audio and video), answering
    /// the SFU's offers as a client does.
    pub fn subscribe(&mut self, i: usize, user: &str) {
        let sid = format!("s{i}");
        let source = (UserId::parse(user).unwrap(), StreamKind::Main);
        let req = crate::sfu::SubscribeRequest { source, audio: true, video: true, quality: Quality::Auto };
        let mut offer = self.sfu.subscribe(&sid, req, self.now).expect("subscribed");
        while let Some(o) = offer {
            let c = &mut self.clients[i];
            c.tracks = o.tracks.iter().map(|t| (Mid::from(t.mid.as_str()), t.user.clone())).collect();
            let answer = c.rtc.sdp_api().accept_offer(SdpOffer::from_sdp_string(&o.sdp).unwrap()).expect("the offer is accepted");
            offer = self.sfu.subscriber_answer(&sid, &answer.to_sdp_string(), self.now).expect("the answer is accepted");
        }
        self.drain_client(i);
        self.drain_sfu();
    }

    fn send(&mut self, to: To, link_of: usize, up: bool, source: SocketAddr, destination: SocketAddr, data: Vec<u8>) {
        let c = &mut self.clients[link_of];
        let link = if up { &mut c.up } else { &mut c.down };
        if let Some(at) = link.carry(self.now, data.len()) {
            self.order += 1;
            self.flights.push(Reverse(Flight { at, order: self.order, to, source, destination, data }));
        }
    }

    fn drain_client(&mut self, i: usize) {
        loop {
            let out = match self.clients[i].rtc.poll_output() {
                Ok(o) => o,
                Err(e) => panic!("client {i}: {e}"),
            };
            match out {
                Output::Timeout(t) => {
                    self.clients[i].next_timeout = t;
                    break;
                }
                Output::Transmit(t) => {
                    let (source, destination, data) = (t.source, t.destination, t.contents.into());
                    let on = self.clients[i].on;
                    self.send(To::Sfu(on), i, true, source, destination, data);
                }
                Output::Event(e) => {
                    let now = self.now;
                    self.clients[i].events.push((now, e));
                }
            }
        }
    }

    /// Runs an SFU call, counting its allocations if asked to.
    fn in_sfu<T>(&mut self, call: impl FnOnce(&mut Sfu) -> T) -> T {
        self.in_sfu_of(0, call)
    }

    fn in_sfu_of<T>(&mut self, on: usize, call: impl FnOnce(&mut Sfu) -> T) -> T {
        if on == 1 {
            return call(&mut self.satellite);
        }
        let Some(count) = self.sfu_allocations else { return call(&mut self.sfu) };
        let mut out = None;
        let info = allocation_counter::measure(|| out = Some(call(&mut self.sfu)));
        self.sfu_allocations = Some(count + info.count_total);
        out.expect("the call ran")
    }

    /// Delivers both SFUs' output: datagrams onto the links, pipe traffic to the other SFU at
    /// once (workers share a process), until neither has anything left.
    fn drain_sfu(&mut self) {
        use crate::sfu::SfuOutput;
        loop {
            let mut any = false;
            for on in 0..2 {
                while let Some(out) = self.in_sfu_of(on, |sfu| sfu.poll_output()) {
                    any = true;
                    let now = self.now;
                    match out {
                        SfuOutput::Transmit(t) => {
                            let Some(i) = self.clients.iter().position(|c| c.addr == t.destination) else { continue };
                            self.clients[i].sent_by_sfu.push((now, t.contents.len()));
                            self.send(To::Client(i), i, false, t.source, t.destination, t.contents.into());
                        }
                        SfuOutput::Piped(pipe, packet) => {
                            self.pipe_packets += 1;
                            self.satellite.push_piped(pipe, packet, now);
                            self.satellite.flush(now);
                        }
                        SfuOutput::PipeWanted { pipe, room, source } => self.in_sfu(|sfu| {
                            sfu.open_pipe(&room, source, pipe, now);
                            sfu.flush(now);
                        }),
                        SfuOutput::Tap(tap, packet) if self.edge.as_ref().is_some_and(|e| e.tap == tap) => self.relay(&packet),
                        SfuOutput::Tap(tap, packet) => self.tap_packets.push((tap, packet)),
                        SfuOutput::KeyframeWanted(id, rid) if on == 1 && self.edge.as_ref().is_some_and(|e| e.ingest == id) => self.in_sfu(|sfu| {
                            let source = (UserId::parse("alice").unwrap(), StreamKind::Main);
                            match rid {
                                Some(_) => sfu.request_layer_keyframe(&room(), &source, rid, now),
                                None => sfu.request_keyframe_of(&room(), &source.0, source.1, now),
                            }
                            sfu.flush(now);
                        }),
                        SfuOutput::PipeClosed { pipe, room } => self.in_sfu(|sfu| sfu.close_pipe(&room, pipe)),
                        SfuOutput::PipeKeyframeWanted { room, source, rid } => self.in_sfu(|sfu| {
                            sfu.request_layer_keyframe(&room, &source, rid, now);
                            sfu.flush(now);
                        }),
                        _ => {}
                    }
                }
            }
            if !any {
                break;
            }
        }
    }

    /// One packet of the room's cluster tap through the relay's framing into the edge.
    fn relay(&mut self, packet: &crate::sfu::TapPacket) {
        let now = self.now;
        let Some(edge) = self.edge.as_mut() else { return };
        let mut bytes = Vec::new();
        crate::cluster_relay::encode(packet, &mut bytes);
        edge.reader.push(&bytes);
        while let Some(p) = edge.reader.next_packet().expect("the relay's own frames read back") {
            for action in edge.mirror.on_packet(p, now) {
                if let crate::cluster_relay::EdgeAction::Push(_, _, packets) = action {
                    for p in packets {
                        self.satellite.push_packet(edge.ingest, p, now);
                    }
                }
            }
        }
        self.satellite.flush(now);
    }

    /// Advances to the next thing that happens, no later than `limit`.
    fn step(&mut self, limit: Instant) {
        let flight = self.flights.peek().map(|f| f.0.at);
        let client = self.clients.iter().map(|c| c.next_timeout).min();
        let sfus = (!self.hold_sfu_timeouts).then(|| self.sfu.next_timeout().min(self.satellite.next_timeout()));
        let next = [flight, client, sfus].into_iter().flatten().min().unwrap_or(limit).min(limit);
        self.now = self.now.max(next);
        while self.flights.peek().is_some_and(|f| f.0.at <= self.now) {
            let Reverse(f) = self.flights.pop().expect("peeked");
            match f.to {
                To::Sfu(on) => {
                    let now = self.now;
                    self.in_sfu_of(on, |sfu| {
                        sfu.handle_datagram(now, f.source, f.destination, &f.data);
                        sfu.flush(now);
                    });
                }
                To::Client(i) => {
                    let input =
                        Input::Receive(self.now, Receive { proto: Protocol::Udp, source: f.source, destination: f.destination, contents: f.data.as_slice().try_into().unwrap() });
                    if self.clients[i].rtc.handle_input(input).is_ok() {
                        self.drain_client(i);
                    }
                }
            }
            // Received, its buffer is reused as the egress's are (str0m's datagram pool).
            recycle_datagram(f.data);
            self.drain_sfu();
        }
        for i in 0..self.clients.len() {
            if self.clients[i].next_timeout <= self.now {
                self.clients[i].rtc.handle_input(Input::Timeout(self.now)).expect("a timeout");
                self.drain_client(i);
            }
        }
        let timeouts_of = if self.hold_sfu_timeouts { 0 } else { 2 };
        for on in 0..timeouts_of {
            let now = self.now;
            if self.in_sfu_of(on, |sfu| sfu.next_timeout() <= now) {
                self.in_sfu_of(on, |sfu| sfu.handle_timeout(now));
                self.drain_sfu();
            }
        }
    }

    /// Runs the world for `d`, calling `tick` every `every` (the app's media clock).
    pub fn run(&mut self, d: Duration, every: Duration, mut tick: impl FnMut(&mut World)) {
        let end = self.now + d;
        let mut next_tick = self.now;
        while self.now < end {
            if self.now >= next_tick {
                tick(self);
                next_tick += every;
            }
            self.step(next_tick.min(end));
        }
    }

    pub fn connected(&self, i: usize) -> bool {
        self.clients[i].rtc.is_connected()
    }

    /// Writes one H.264 access unit (Annex B) on the publisher's video.
    pub fn write_video(&mut self, i: usize, frame: &[u8], rtp_90k: u64) {
        self.write_layer(i, None, frame, rtp_90k);
    }

    /// Writes one access unit on one simulcast layer (`None`: the only one).
    pub fn write_layer(&mut self, i: usize, rid: Option<&str>, frame: &[u8], rtp_90k: u64) {
        let now = self.now;
        let c = &mut self.clients[i];
        let Some(mid) = c.video_mid else { return };
        let Some(writer) = c.rtc.writer(mid) else { return };
        let Some(pt) = writer.payload_params().find(|p| p.spec().codec == WireCodec::H264).map(|p| p.pt()) else { return };
        let writer = match rid {
            Some(r) => writer.rid(Rid::from(r)),
            None => writer,
        };
        let _ = writer.write(pt, now, MediaTime::from_90khz(rtp_90k), frame.to_vec());
        self.drain_client(i);
    }

    /// One Opus packet (20 ms) on the publisher's audio, with its level (RFC 6464: 0 dBov the
    /// loudest, -127 silence) for the room's active speaker.
    pub fn write_audio(&mut self, i: usize, level: i8, rtp_48k: u64) {
        let now = self.now;
        let c = &mut self.clients[i];
        let Some(mid) = c.audio_mid else { return };
        let Some(writer) = c.rtc.writer(mid) else { return };
        let Some(pt) = writer.payload_params().find(|p| p.spec().codec == WireCodec::Opus).map(|p| p.pt()) else { return };
        let _ = writer.audio_level(level, level > -50).write(pt, now, MediaTime::new(rtp_48k, tessera_rtc::str0m::media::Frequency::FORTY_EIGHT_KHZ), vec![0x78; 80]);
        self.drain_client(i);
    }

    /// Sizes (bytes) of the video frames a viewer received whole, in order.
    pub fn frame_sizes(&self, i: usize) -> Vec<usize> {
        self.clients[i]
            .events
            .iter()
            .filter_map(|(_, e)| if let Event::MediaData(m) = e { (m.params.spec().codec == WireCodec::H264).then(|| m.data.len()) } else { None })
            .collect()
    }

    /// The viewer asks for a keyframe (as a browser's decoder does after loss).
    pub fn request_keyframe(&mut self, i: usize) {
        let c = &mut self.clients[i];
        let Some(mid) = c.video_mid else { return };
        if let Some(mut writer) = c.rtc.writer(mid) {
            let _ = writer.request_keyframe(None, KeyframeRequestKind::Pli);
        }
        self.drain_client(i);
    }

    /// Pushes one H.264 access unit (frame `n`, 90 kHz at 30 fps) of ingest `ingest` to the SFU
    /// as an RTMP ingest's packetizer makes it: NAL units of up to 1,100 bytes whole, larger
    /// ones in FU-A fragments. `seq` counts the packets.
    pub fn push_ingest_frame(&mut self, ingest: u64, au: &[u8], n: u32, keyframe: bool, seq: &mut u64) {
        let starts: Vec<usize> = (0..au.len() - 3).filter(|&i| au[i..i + 4] == [0, 0, 0, 1]).chain([au.len()]).collect();
        let nals: Vec<&[u8]> = starts.windows(2).map(|r| &au[r[0] + 4..r[1]]).collect();
        let mut payloads = Vec::new();
        tessera_media::h264::packetize(nals, 1100, &mut payloads);
        let count = payloads.len();
        for (k, payload) in payloads.into_iter().enumerate() {
            *seq += 1;
            let packet = crate::sfu::IngestPacket {
                ssrc: 7,
                seq: *seq,
                ts: n * 3000,
                marker: k + 1 == count,
                keyframe,
                codec: tessera_media::Codec::H264,
                payload: payload.into(),
                audio_level: None,
                route: crate::sfu::PacketRoute::All,
                composition_ms: 0,
                picture: None,
                rid: None,
            };
            self.sfu.push_packet(ingest, packet, self.now);
        }
        self.drain_sfu();
    }

    /// How late each video frame a viewer received whole arrived, in seconds, against the
    /// first one: its arrival's distance from the first frame's, less its RTP time's (90 kHz).
    pub fn frame_lateness(&self, i: usize) -> Vec<f64> {
        let frames: Vec<(Instant, u64)> = self.clients[i]
            .events
            .iter()
            .filter_map(|(t, e)| if let Event::MediaData(m) = e { (m.params.spec().codec == WireCodec::H264).then(|| (*t, m.time.numer())) } else { None })
            .collect();
        let Some(&(t0, ts0)) = frames.first() else { return Vec::new() };
        frames.iter().map(|(t, ts)| t.duration_since(t0).as_secs_f64() - (ts.wrapping_sub(ts0) as f64 / 90_000.0)).collect()
    }

    /// Video frames a viewer received whole, with their RTP times.
    pub fn frames_received(&self, i: usize) -> Vec<u64> {
        self.clients[i]
            .events
            .iter()
            .filter_map(|(_, e)| if let Event::MediaData(m) = e { (m.params.spec().codec == WireCodec::H264).then(|| m.time.numer()) } else { None })
            .collect()
    }

    /// Keyframe requests that reached a publisher, with their times.
    pub fn keyframe_requests(&self, i: usize) -> Vec<Instant> {
        self.clients[i].events.iter().filter_map(|(t, e)| matches!(e, Event::KeyframeRequest(_)).then_some(*t)).collect()
    }
}

/// The value at share `p` (0..=1) of `sorted` (NaN when empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted.get(((sorted.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(f64::NAN)
}

/// An H.264 access unit: SPS + PPS + IDR for a keyframe, one P slice otherwise; `size` bytes
/// of slice data (split by the packetizer into several RTP packets when large).
pub fn h264_frame(keyframe: bool, size: usize, n: u32) -> Vec<u8> {
    frame_with_sps(keyframe, size, n, &[0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0x16, 0xe8])
}

/// `h264_frame` with every other picture a non-reference one (the slice's nal_ref_idc 0), as
/// OpenH264 encodes with two or three temporal layers.
pub fn h264_frame_t2(keyframe: bool, size: usize, n: u32) -> Vec<u8> {
    let mut f = h264_frame(keyframe, size, n);
    if !keyframe && n % 2 == 1 {
        f[4] = 0x01;
    }
    f
}

fn frame_with_sps(keyframe: bool, size: usize, n: u32, sps: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if keyframe {
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(sps);
        out.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xce, 0x0f, 0x2c, 0x80]);
        out.extend_from_slice(&[0, 0, 0, 1, 0x65, 0x88]);
    } else {
        out.extend_from_slice(&[0, 0, 0, 1, 0x41, 0x9a]);
    }
    // Slice data without start-code emulation: bytes 0x10..0xef.
    out.extend((0..size).map(|k| 0x10 + ((k as u32 + n) % 0xe0) as u8));
    out
}

/// A baseline SPS for a `w`x`h` picture (multiples of 16), as an encoder of that size sends.
pub fn h264_sps(w: u32, h: u32) -> Vec<u8> {
    let mut bits: Vec<bool> = Vec::new();
    let put = |v: u32, n: u32, bits: &mut Vec<bool>| (0..n).rev().for_each(|i| bits.push(v >> i & 1 == 1));
    let ue = |v: u32, bits: &mut Vec<bool>| {
        let x = v + 1;
        let len = 32 - x.leading_zeros();
        (0..len - 1).for_each(|_| bits.push(false));
        (0..len).rev().for_each(|i| bits.push(x >> i & 1 == 1));
    };
    put(66, 8, &mut bits); // profile_idc: baseline
    put(0xc0, 8, &mut bits); // constraint flags
    put(31, 8, &mut bits); // level 3.1
    ue(0, &mut bits); // seq_parameter_set_id
    ue(0, &mut bits); // log2_max_frame_num_minus4
    ue(2, &mut bits); // pic_order_cnt_type
    ue(1, &mut bits); // max_num_ref_frames
    put(0, 1, &mut bits); // gaps_in_frame_num_allowed
    ue(w / 16 - 1, &mut bits);
    ue(h / 16 - 1, &mut bits);
    put(0b1100, 4, &mut bits); // frame_mbs_only, direct_8x8, no cropping, no VUI
    bits.push(true); // rbsp stop bit
    while !bits.len().is_multiple_of(8) {
        bits.push(false);
    }
    let mut out = vec![0x67];
    let mut zeros = 0;
    for byte in bits.chunks(8).map(|c| c.iter().fold(0u8, |a, b| a << 1 | *b as u8)) {
        if zeros >= 2 && byte <= 3 {
            out.push(3);
            zeros = 0;
        }
        zeros = if byte == 0 { zeros + 1 } else { 0 };
        out.push(byte);
    }
    out
}

/// `h264_frame` whose keyframe announces a `w`x`h` picture.
pub fn h264_frame_sized(keyframe: bool, size: usize, n: u32, (w, h): (u32, u32)) -> Vec<u8> {
    frame_with_sps(keyframe, size, n, &h264_sps(w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_harness_sps_announces_its_size() {
        for (w, h) in [(1280, 720), (320, 192), (640, 352)] {
            assert_eq!(tessera_media::picture_size::sps_size(&h264_sps(w, h)), Some((w, h)));
        }
    }

    /// A mix's tap follows its tile size: the top layer by default; the small layer once the
    /// tile is small (switching at a keyframe of it, asked for at once, and saying so); the top
    /// one again when the tile grows.
    #[test]
    fn a_mix_tap_takes_the_smallest_layer_that_covers_its_tile() {
        let mut world = World::new();
        let publisher = world.join_with("alice", PeerRole::Publish, &["h", "l"], Link::clean(), Link::clean());
        connect(&mut world);
        let owner = UserId::parse("mixer").unwrap();
        let tap = world.sfu.add_tap(room(), crate::sfu::TapKind::Mix, &owner, world.now);
        let mut n = 0u32;
        let mut answered = world.keyframe_requests(publisher).len();
        let mut frames = |w: &mut World, seconds: u64| {
            w.run(Duration::from_secs(seconds), Duration::from_millis(33), |w| {
                let asked = w.keyframe_requests(publisher).len();
                // Keyframes every 10 s, or when asked: a switch waits for a requested one.
                let keyframe = n.is_multiple_of(300) || asked > answered;
                answered = asked;
                w.write_layer(publisher, Some("h"), &h264_frame_sized(keyframe, 6000, n, (1280, 720)), n as u64 * 3000);
                w.write_layer(publisher, Some("l"), &h264_frame_sized(keyframe, 500, n, (320, 192)), n as u64 * 3000);
                n += 1;
            });
        };
        frames(&mut world, 2);
        // (frames, bytes per frame) the tap got from packet `from` on.
        let taken = |w: &World, from: usize| -> (usize, usize) {
            let mine = || w.tap_packets[from..].iter().filter(|(t, _)| *t == tap).map(|(_, p)| p);
            let frames = mine().filter(|p| p.marker).count();
            (frames, mine().map(|p| p.payload.len()).sum::<usize>() / frames.max(1))
        };
        let (frames_in, per_frame) = taken(&world, 0);
        assert!(frames_in > 50 && per_frame > 5000, "the top layer by default: {frames_in} frames of {per_frame} bytes");
        // A 300x170 tile: the 320x192 layer covers it.
        let source = (UserId::parse("alice").unwrap(), StreamKind::Main);
        let mark = world.tap_packets.len();
        world.sfu.set_tap_sizes(tap, &room(), vec![(source.clone(), (300, 170))], world.now);
        frames(&mut world, 1);
        let switch = world.tap_packets[mark..].iter().position(|(t, p)| *t == tap && p.layer_switch).expect("the tap switched layers");
        let (_, first) = &world.tap_packets[mark + switch];
        assert!(first.payload.windows(2).any(|w| w == [0x67, 0x42]), "it switched at the new layer's SPS");
        assert!(switch < 40, "within a few frames (a keyframe asked for at once): packet {switch}");
        frames(&mut world, 2);
        let (frames_in, per_frame) = taken(&world, mark + switch);
        assert!(frames_in > 50 && per_frame < 700, "then only the small layer: {frames_in} frames of {per_frame} bytes");
        // A 640x360 tile: only the top layer covers it.
        let mark = world.tap_packets.len();
        world.sfu.set_tap_sizes(tap, &room(), vec![(source, (640, 360))], world.now);
        frames(&mut world, 2);
        let switch = world.tap_packets[mark..].iter().position(|(t, p)| *t == tap && p.layer_switch).expect("back to the top layer");
        let (frames_in, per_frame) = taken(&world, mark + switch);
        assert!(frames_in > 50 && per_frame > 5000, "then only the top layer: {frames_in} frames of {per_frame} bytes");
    }

    /// Another cluster node's copy of the room gets every layer of a simulcast publisher (a mix's
    /// tap only the top one), each with its rid, and the edge's mirror keeps them apart.
    #[test]
    fn a_cluster_tap_carries_every_layer_to_the_edge() {
        let mut world = World::new();
        let publisher = world.join_with("alice", PeerRole::Publish, &["h", "l"], Link::clean(), Link::clean());
        connect(&mut world);
        let owner = UserId::parse("relay_node-b").unwrap();
        let cluster = world.sfu.add_tap(room(), crate::sfu::TapKind::Cluster, &owner, world.now);
        let mix = world.sfu.add_tap(room(), crate::sfu::TapKind::Mix, &owner, world.now);
        let mut n = 0u32;
        world.run(Duration::from_secs(2), Duration::from_millis(33), |w| {
            w.write_layer(publisher, Some("h"), &h264_frame_sized(n == 0, 6000, n, (1280, 720)), n as u64 * 3000);
            w.write_layer(publisher, Some("l"), &h264_frame_sized(n == 0, 500, n, (320, 192)), n as u64 * 3000);
            n += 1;
        });
        let rids = |tap: u64| {
            let mut r: Vec<Option<String>> =
                world.tap_packets.iter().filter(|(t, p)| *t == tap && p.codec == tessera_media::Codec::H264).map(|(_, p)| p.rid.as_deref().map(str::to_owned)).collect();
            r.sort();
            r.dedup();
            r
        };
        assert_eq!(rids(cluster), [Some("h".to_owned()), Some("l".to_owned())], "the cluster tap takes both layers");
        assert_eq!(rids(mix), [Some("h".to_owned())], "a mix's tap the top one");
        // Across the relay: each layer its own stream at the edge, with its own keyframe.
        let mut bytes = Vec::new();
        for (_, p) in world.tap_packets.iter().filter(|(t, _)| *t == cluster) {
            crate::cluster_relay::encode(p, &mut bytes);
        }
        let mut reader = crate::cluster_relay::FrameReader::default();
        reader.push(&bytes);
        let mut mirror = crate::cluster_relay::EdgeMirror::default();
        let mut streams: std::collections::HashMap<u32, (Option<String>, usize, bool)> = std::collections::HashMap::new();
        while let Some(p) = reader.next_packet().unwrap() {
            for a in mirror.on_packet(p, world.now) {
                if let crate::cluster_relay::EdgeAction::Push(_, _, ps) = a {
                    for p in ps.into_iter().filter(|p| p.codec == tessera_media::Codec::H264) {
                        let e = streams.entry(p.ssrc).or_insert((p.rid.as_deref().map(str::to_owned), 0, false));
                        assert_eq!(e.0, p.rid.as_deref().map(str::to_owned), "one layer per SSRC");
                        e.1 += usize::from(p.marker);
                        e.2 |= p.keyframe;
                    }
                }
            }
        }
        assert_eq!(streams.len(), 2, "{streams:?}");
        assert!(streams.values().all(|(_, frames, keyframe)| *frames >= 50 && *keyframe), "{streams:?}");
    }

    /// A publisher at 30 fps with a keyframe every `gop` frames, for `seconds`; like a real
    /// encoder it answers a keyframe request with a keyframe.
    fn publish(world: &mut World, publisher: usize, seconds: u64, gop: u32, size: usize) -> u32 {
        let mut n = 0u32;
        let mut answered = world.keyframe_requests(publisher).len();
        world.run(Duration::from_secs(seconds), Duration::from_millis(33), |w| {
            if w.connected(publisher) {
                let asked = w.keyframe_requests(publisher).len();
                let keyframe = n.is_multiple_of(gop) || asked > answered;
                answered = asked;
                w.write_video(publisher, &h264_frame(keyframe, size, n), n as u64 * 3000);
                n += 1;
            }
        });
        n
    }

    fn connect(world: &mut World) {
        world.run(Duration::from_secs(2), Duration::from_millis(50), |_| {});
        assert!(world.clients.iter().enumerate().all(|(i, _)| world.connected(i)), "every peer connects (ICE + DTLS) in 2 s of emulated time");
    }

    /// A viewer that joins an ingest (an RTMP publish) mid-GOP gets the cached GOP at once,
    /// its frames stamped as the pacer sends them, and the live frames follow on. With the
    /// source's stamps the replay's frames arrived up to 2.6 s ahead of them (Chromium held
    /// such frames for seconds).
    #[test]
    fn a_viewer_joining_an_ingest_mid_gop_gets_the_gop_at_once_and_its_frames_near_their_stamps() {
        let mut world = World::new();
        let spec = SessionSpec { join: JoinInfo::anchor(crate::presence::user_type::RTMP), ..world.spec_of("rtmp", "alice", PeerRole::Publish) };
        let (ingest, _) = world.sfu.add_internal_publisher(spec, world.now);
        let (mut n, mut seq) = (0u32, 0u64);
        // 30 fps, a keyframe every 4 s; each NAL unit of the access unit one RTP packet.
        let mut frames = |w: &mut World, d: Duration| {
            w.run(d, Duration::from_millis(33), |w| {
                let keyframe = n.is_multiple_of(120);
                w.push_ingest_frame(ingest, &h264_frame(keyframe, 300, n), n, keyframe, &mut seq);
                n += 1;
            });
        };
        frames(&mut world, Duration::from_millis(2500));
        let joined = world.now;
        let viewer = world.join("alice", PeerRole::Play, Link::clean(), Link::clean());
        frames(&mut world, Duration::from_secs(3));
        let got = world.frames_received(viewer);
        let first = world.clients[viewer].events.iter().find(|(_, e)| matches!(e, Event::MediaData(_))).map(|(t, _)| *t).expect("video");
        assert!(first.duration_since(joined) < Duration::from_secs(1), "a picture at once: {:?} after joining", first.duration_since(joined));
        // The whole GOP from its keyframe, then every live frame.
        assert!(got.len() as u32 >= n - 3, "{} frames of {n}", got.len());
        assert!(got.windows(2).all(|w| w[1] > w[0]), "in order");
        // No frame arrives far ahead of its stamp (with the source's: 2.6 s ahead) or after it.
        // The replay asks the estimator for room to leave within a second: without, str0m's
        // first feedback set the estimate from the stream's own rate (200-280 kbit/s), the
        // replay left at that and its frames came up to 0.75 s after their stamps, 23 frames
        // still queued at the end.
        let lateness = world.frame_lateness(viewer);
        let (early, late) = lateness.iter().fold((0.0f64, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        assert!(early > -0.4 && late < 0.25, "frames from {:.2} s ahead of their stamps to {late:.2} s after", -early);
    }

    #[test]
    fn a_viewer_receives_every_frame_on_a_clean_network() {
        let started = Instant::now();
        let mut world = World::new();
        let publisher = world.join("alice", PeerRole::Publish, Link::clean(), Link::clean());
        let viewer = world.join("alice", PeerRole::Play, Link::clean(), Link::clean());
        connect(&mut world);
        let sent = publish(&mut world, publisher, 5, 30, 3000);
        let got = world.frames_received(viewer);
        assert!(sent >= 140, "{sent} frames sent");
        // The viewer starts at a keyframe; allow the frames in flight at the end.
        assert!(got.len() as u32 >= sent - 3, "{} of {sent} frames arrived", got.len());
        assert!(got.windows(2).all(|w| w[1] > w[0]), "in order");
        assert!(started.elapsed() < Duration::from_secs(5), "7 s of media in {:?}", started.elapsed());
    }

    /// A panic in one viewer's WebRTC stack (a defect a peer's bytes reach) closes that viewer
    /// alone: the worker goes on, and the other viewer of the same publisher misses no frame.
    #[test]
    fn a_panic_in_one_peers_webrtc_stack_closes_that_peer_and_no_other() {
        let mut world = World::new();
        let publisher = world.join("alice", PeerRole::Publish, Link::clean(), Link::clean());
        let (doomed, other) = (world.join("alice", PeerRole::Play, Link::clean(), Link::clean()), world.join("alice", PeerRole::Play, Link::clean(), Link::clean()));
        connect(&mut world);
        let (doomed_sid, mut n, mut doomed_before) = (format!("s{doomed}"), 0u32, 0);
        world.run(Duration::from_secs(5), Duration::from_millis(33), |w| {
            if n == 60 {
                doomed_before = w.frames_received(doomed).len();
                w.sfu.panic_on_next_input(&doomed_sid);
            }
            w.write_video(publisher, &h264_frame(n.is_multiple_of(30), 3000, n), n as u64 * 3000);
            n += 1;
        });
        assert_eq!(world.sfu.counters.peer_panics.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(!world.sfu.has_session(&doomed_sid), "the viewer whose stack panicked is closed");
        assert!(world.sfu.has_session(&format!("s{other}")) && world.sfu.has_session(&format!("s{publisher}")));
        assert!(doomed_before >= 55, "{doomed_before} frames before the panic");
        assert!(world.frames_received(doomed).len() <= doomed_before + 2, "nothing more for the closed viewer");
        let got = world.frames_received(other);
        assert!(got.len() as u32 >= n - 3, "{} of {n} frames reached the other viewer", got.len());
        assert!(got.windows(2).all(|w| w[1] > w[0]), "in order");
    }

    #[test]
    fn a_frames_packets_leave_together_within_the_pacing_burst_and_a_keyframe_is_spread() {
        let mut world = World::new();
        let publisher = world.join("alice", PeerRole::Publish, Link::clean(), Link::clean());
        let viewer = world.join("alice", PeerRole::Play, Link::clean(), Link::clean());
        connect(&mut world);
        // 3 packets a frame (~600 kbit/s), a 20 kB keyframe every 30 frames.
        let mut n = 0u32;
        world.run(Duration::from_secs(4), Duration::from_millis(33), |w| {
            let keyframe = n.is_multiple_of(30);
            w.write_video(publisher, &h264_frame(keyframe, if keyframe { 20_000 } else { 2_400 }, n), n as u64 * 3000);
            n += 1;
        });
        // The media the viewer was sent (the probes' padding and RTCP are smaller).
        let sent: Vec<(Instant, usize)> = world.clients[viewer].sent_by_sfu.iter().copied().filter(|&(_, len)| len > 150).collect();
        let frames = world.frames_received(viewer).len();
        let mut instants: Vec<(Instant, usize)> = Vec::new();
        for &(at, len) in &sent {
            match instants.last_mut() {
                Some((t, bytes)) if *t == at => *bytes += len,
                _ => instants.push((at, len)),
            }
        }
        let largest = instants.iter().map(|(_, b)| *b).max().unwrap_or(0);
        eprintln!("{} datagrams to the viewer at {} instants for {frames} frames; at most {largest} bytes at once", sent.len(), instants.len());
        assert!(frames >= 100 && sent.len() >= 3 * frames, "{} datagrams for {frames} frames", sent.len());
        // str0m's pacer released one packet per timeout (as many instants as datagrams); a
        // frame now goes in one burst: about one instant a frame (keyframes and RTCP a few more).
        assert!(instants.len() <= frames * 3 / 2, "{} send instants for {frames} frames", instants.len());
        // The burst is bounded by the pacing rate (40 ms of it): a keyframe is not sent at once.
        assert!(largest < 20_000, "{largest} bytes left the SFU at one instant");
    }

    #[test]
    fn due_viewers_are_served_in_parts_each_parts_datagrams_taken_before_the_next() {
        let mut world = World::new();
        let publisher = world.join("alice", PeerRole::Publish, Link::clean(), Link::clean());
        let viewers: Vec<usize> = (0..3).map(|_| world.join("alice", PeerRole::Play, Link::clean(), Link::clean())).collect();
        connect(&mut world);
        let n = publish(&mut world, publisher, 1, 30, 2400);
        let received: Vec<usize> = viewers.iter().map(|&v| world.frames_received(v).len()).collect();
        assert!(received.iter().all(|&r| r > 20), "every viewer receives: {received:?}");
        // The next frame reaches the SFU; its viewers' timeouts are left due.
        world.hold_sfu_timeouts = true;
        world.write_video(publisher, &h264_frame(false, 2400, n), n as u64 * 3000);
        world.run(Duration::from_millis(30), Duration::from_millis(30), |_| {});
        let now = world.now;
        let mut parts = Vec::new();
        loop {
            let more = world.sfu.handle_timeout_some(now, 1);
            let mut to = Vec::new();
            world.sfu.take_udp_transmits(|t| to.push(t.destination));
            parts.push(to);
            if !more {
                break;
            }
        }
        while world.sfu.poll_output().is_some() {}
        let addrs: Vec<SocketAddr> = viewers.iter().map(|&v| world.clients[v].addr).collect();
        // Each part is one peer's (or none: a stale timer), and each viewer got the frame in its own part.
        assert!(parts.iter().all(|p| p.windows(2).all(|w| w[0] == w[1])), "one destination per part: {parts:?}");
        for a in &addrs {
            assert_eq!(parts.iter().filter(|p| p.first() == Some(a)).count(), 1, "{a} in one part of {parts:?}");
        }
    }

    /// Heap allocations inside the SFU per forwarded packet, str0m included, with one viewer and
    /// with `viewers`: (allocations, packets in, copies out).
    fn allocations_per_packet(viewers: usize) -> (f64, u64, u64) {
        let mut world = World::new();
        let publisher = world.join("alice", PeerRole::Publish, Link::clean(), Link::clean());
        for _ in 0..viewers {
            world.join("alice", PeerRole::Play, Link::clean(), Link::clean());
        }
        connect(&mut world);
        publish(&mut world, publisher, 2, 30, 3000);
        let forwarded = world.sfu.counters.packets_forwarded.load(std::sync::atomic::Ordering::Relaxed);
        let received = world.sfu.counters.packets_received.load(std::sync::atomic::Ordering::Relaxed);
        world.sfu_allocations = Some(0);
        publish(&mut world, publisher, 3, 30, 3000);
        let allocations = world.sfu_allocations.unwrap();
        let forwarded = world.sfu.counters.packets_forwarded.load(std::sync::atomic::Ordering::Relaxed) - forwarded;
        let received = world.sfu.counters.packets_received.load(std::sync::atomic::Ordering::Relaxed) - received;
        (allocations as f64, received, forwarded)
    }

    #[test]
    fn forwarding_allocates_a_bounded_amount_per_copy() {
        let (a1, r1, f1) = allocations_per_packet(1);
        let (a16, r16, f16) = allocations_per_packet(16);
        assert!(f16 > 15 * f1 && r1 > 300 && r16 > 300, "forwarded {f1} and {f16} of {r1} and {r16}");
        // What each extra viewer's copies cost, and what is left per incoming packet.
        let per_copy = (a16 - a1) / (f16 - f1) as f64;
        let per_packet_in = (a1 - per_copy * f1 as f64) / r1 as f64;
        eprintln!("allocations in the SFU: {per_copy:.2} per forwarded copy, {per_packet_in:.2} per packet received ({a1} with 1 viewer, {a16} with 16)");
        // Measured 0.17 per copy and 0.90 per packet received (2026-12-07; 2.22 and 3.20
        // before, 3.46 before that), none of them in the forwarding itself once its queues have
        // grown to size (valgrind's DHAT: what is left under `poll_packet` is that growth in a
        // stream's first seconds and the pool's first buffers). str0m encrypts each copy into a
        // buffer the harness (like the egress) hands back (`recycle_datagram`). A viewer's
        // transport-wide feedback is read without allocating (the estimator walks its records
        // in place, reports' queues and the parsed items reuse buffers) and so is the
        // allocator's plan per viewer per tick (on the stack). What is left per copy comes once
        // a second per stream: the sender reports and SDES str0m builds, the receiver reports'
        // SDES and XR it parses. Per packet received: str0m's copy of the payload, which every
        // consumer then shares. A bound just above: any allocation added per copy or per packet
        // fails here.
        assert!(per_copy <= 0.25, "{per_copy:.2} allocations per forwarded copy (0.17 measured)");
        assert!(per_packet_in <= 1.1, "{per_packet_in:.2} allocations per packet received (0.90 measured)");
    }

    #[test]
    fn nack_and_rtx_repair_ten_percent_loss_on_both_legs() {
        let lossy = || Link { loss: 0.10, jitter: Duration::from_millis(5), ..Link::clean() };
        let mut world = World::new();
        let publisher = world.join("alice", PeerRole::Publish, lossy(), Link::clean());
        let viewer = world.join("alice", PeerRole::Play, Link::clean(), lossy());
        connect(&mut world);
        let sent = publish(&mut world, publisher, 6, 60, 2500);
        let got = world.frames_received(viewer);
        let lost = world.clients[publisher].up.lost + world.clients[viewer].down.lost;
        assert!(lost > 100, "the links dropped {lost} packets");
        // Without retransmission about a third of these multi-packet frames would break.
        assert!(got.len() as f64 >= sent as f64 * 0.9, "{} of {sent} frames arrived whole through 10 % loss each way", got.len());
    }

    /// A simulcast publisher: "h" frames of 6 kB (≈ 1.4 Mbit/s) and "l" frames of 500 B
    /// (≈ 120 kbit/s) at 30 fps, keyframes every 2 s and on request (per layer).
    fn publish_simulcast(world: &mut World, publisher: usize, seconds: u64) -> u32 {
        publish_simulcast_with(world, publisher, seconds, false, 6000)
    }

    /// `publish_simulcast` with `top`-byte pictures in the top layer; with `t2`, every other
    /// picture of each layer a non-reference one (NRI 0), as OpenH264 encodes with two or three
    /// temporal layers.
    fn publish_simulcast_with(world: &mut World, publisher: usize, seconds: u64, t2: bool, top: usize) -> u32 {
        let frame = if t2 { h264_frame_t2 } else { h264_frame };
        let mut n = 0u32;
        let mut answered = world.keyframe_requests(publisher).len();
        world.run(Duration::from_secs(seconds), Duration::from_millis(33), |w| {
            if w.connected(publisher) {
                let asked = w.keyframe_requests(publisher).len();
                let keyframe = n.is_multiple_of(60) || asked > answered;
                answered = asked;
                w.write_layer(publisher, Some("h"), &frame(keyframe, top, n), n as u64 * 3000);
                w.write_layer(publisher, Some("l"), &frame(keyframe, 500, n), n as u64 * 3000);
                n += 1;
            }
        });
        n
    }

    /// A simulcast publisher for 20 s, a viewer with room and one behind 600 kbit/s, both on the
    /// room's SFU or (`spread`) on the satellite: (frames sent, the capped viewer's frame sizes).
    /// The viewer with room ends on the top layer.
    fn roomy_and_capped(spread: bool) -> (u32, Vec<usize>, Vec<f64>, Vec<u64>) {
        let mut world = World::new();
        let publisher = world.join_with("alice", PeerRole::Publish, &["h", "l"], Link::clean(), Link::clean());
        let capped_link = Link { bps: Some(600_000), queue: Duration::from_millis(300), ..Link::clean() };
        let (roomy, capped) = match spread {
            false => (world.join("alice", PeerRole::Play, Link::clean(), Link::clean()), world.join("alice", PeerRole::Play, Link::clean(), capped_link)),
            true => (world.join_spread("alice", Link::clean(), Link::clean()), world.join_spread("alice", Link::clean(), capped_link)),
        };
        connect(&mut world);
        let sent = publish_simulcast(&mut world, publisher, 20);
        let roomy_sizes = world.frame_sizes(roomy);
        let last = &roomy_sizes[roomy_sizes.len().saturating_sub(150)..];
        assert!(big(last) >= 140, "the viewer with room gets the top layer: {} of the last {} frames", big(last), last.len());
        (sent, world.frame_sizes(capped), world.frame_lateness(capped), world.frames_received(capped))
    }

    /// The capped viewer's first low-layer frame is one of the first 4 s sent (RTP times at
    /// 3,000 per frame), and from it on at most 2.5 s of frames are missing (the top layer's
    /// backlog, still in the pacer, can cut the low layer once more after its grace).
    fn low_layer_soon_and_whole(sent: u32, sizes: &[usize], times: &[u64]) {
        let first = sizes.iter().position(|s| *s < 3000).expect("a low-layer frame");
        let n = (times[first] - times[0]) / 3000;
        assert!(n <= 120, "the low layer starts {n} frames in");
        let after = sizes.len() - first;
        assert!(after as u64 + n + 75 >= sent as u64, "{after} frames of the {} sent from the low layer's first on", sent as u64 - n);
    }

    /// Frames of the top layer ("h": 6 kB) among these.
    fn big(sizes: &[usize]) -> usize {
        sizes.iter().filter(|s| **s > 3000).count()
    }

    #[test]
    fn a_viewer_gets_the_top_layer_and_falls_to_the_low_one_under_a_bandwidth_cap() {
        let (sent, capped_sizes, lateness, times) = roomy_and_capped(false);
        // It starts on the top layer (no estimate yet) and switches down within seconds, at a
        // keyframe of the low layer (asked for at once).
        assert!(big(&capped_sizes[..60]) > 0, "the capped viewer starts on the top layer");
        // The top layer's frames that would wait past 600 ms (300 ms once the allocator has
        // chosen the low layer) are dropped, not delivered seconds late: the link carries
        // 600 kbit/s of a 1.4 Mbit/s layer until the estimate is in.
        low_layer_soon_and_whole(sent, &capped_sizes, &times);
        let late = lateness[lateness.len().saturating_sub(150)..].iter().copied().fold(0.0, f64::max);
        assert!(late < 0.5, "no standing queue once on the low layer: its last frames arrive {late:.2} s late");
        let last = &capped_sizes[capped_sizes.len().saturating_sub(150)..];
        assert!(last.len() >= 140, "the capped viewer keeps getting video: {} frames in its last 5 s", last.len());
        assert_eq!(big(last), 0, "the capped viewer ends on the low layer");
    }

    /// A cluster edge's viewers move between layers as the room node's do: the relay carries
    /// every layer, the viewer with room ends on the top one, the one behind 600 kbit/s on the
    /// low one, each started by a keyframe of its layer asked of the publisher across the relay.
    #[test]
    fn an_edges_viewers_move_between_the_relayed_layers() {
        let mut world = World::new();
        let publisher = world.join_with("alice", PeerRole::Publish, &["h", "l"], Link::clean(), Link::clean());
        world.relay_to_edge();
        let roomy = world.join_edge(Link::clean());
        let capped = world.join_edge(Link { bps: Some(600_000), queue: Duration::from_millis(300), ..Link::clean() });
        connect(&mut world);
        let sent = publish_simulcast(&mut world, publisher, 20);
        let roomy_sizes = world.frame_sizes(roomy);
        let last = &roomy_sizes[roomy_sizes.len().saturating_sub(150)..];
        assert!(big(last) >= 140, "the edge's viewer with room gets the top layer: {} of the last {} frames", big(last), last.len());
        let capped_sizes = world.frame_sizes(capped);
        low_layer_soon_and_whole(sent, &capped_sizes, &world.frames_received(capped));
        let last = &capped_sizes[capped_sizes.len().saturating_sub(150)..];
        assert!(last.len() >= 140 && big(last) == 0, "the capped one ends on the low layer: {} frames, {} of the top one", last.len(), big(last));
    }

    /// A saturated worker moves its viewers below their top layer whatever their estimates
    /// (the low layer costs a sixth of the packets), and back once it has had room for 5 s.
    #[test]
    fn a_saturated_worker_sheds_its_viewers_to_a_lower_layer_and_takes_them_back() {
        let mut world = World::new();
        let publisher = world.join_with("alice", PeerRole::Publish, &["h", "l"], Link::clean(), Link::clean());
        let viewer = world.join("alice", PeerRole::Play, Link::clean(), Link::clean());
        connect(&mut world);
        publish_simulcast(&mut world, publisher, 5);
        let n = world.frame_sizes(viewer).len();
        assert!(big(&world.frame_sizes(viewer)[n - 30..]) >= 28, "on the top layer with room");
        let now = world.now;
        world.sfu.set_busy_permille(950, now);
        assert_eq!(world.sfu.shed_layers(), 1);
        publish_simulcast(&mut world, publisher, 5);
        let sizes = world.frame_sizes(viewer);
        assert_eq!(big(&sizes[sizes.len() - 60..]), 0, "held on the low layer while saturated");
        assert!(sizes.len() - n >= 130, "and still served: {} frames in 5 s", sizes.len() - n);
        let now = world.now;
        world.sfu.set_busy_permille(200, now);
        assert_eq!(world.sfu.shed_layers(), 0, "5 s later with room: no longer held");
        publish_simulcast(&mut world, publisher, 5);
        let sizes = world.frame_sizes(viewer);
        assert!(big(&sizes[sizes.len() - 60..]) >= 55, "back on the top layer");
        assert!(world.sfu.counters.layer_sheds.load(std::sync::atomic::Ordering::Relaxed) == 1);
    }

    /// H.264 with non-reference pictures (OpenH264's temporal layers): a viewer whose link
    /// carries the top layer's reference pictures but not all of it gets those (half the frame
    /// rate at the top layer's size) rather than the low layer. It starts there too: the start
    /// estimate (800 kbit/s) would allow the whole layer (~620 kbit/s).
    #[test]
    fn a_viewer_short_of_a_layer_gets_its_reference_pictures_only() {
        let mut world = World::new();
        let publisher = world.join_with("alice", PeerRole::Publish, &["h", "l"], Link::clean(), Link::clean());
        connect(&mut world);
        publish_simulcast_with(&mut world, publisher, 3, true, 2500);
        // It connects while the publisher sends.
        let viewer = world.join("alice", PeerRole::Play, Link::clean(), Link { bps: Some(500_000), queue: Duration::from_millis(300), ..Link::clean() });
        publish_simulcast_with(&mut world, publisher, 22, true, 2500);
        assert!(world.connected(viewer));
        let sizes = world.frame_sizes(viewer);
        let times = world.frames_received(viewer);
        let top = |s: &usize| *s > 2000;
        // Its first 2 s: none of the top layer's non-reference pictures (odd frames that are not
        // keyframes, which carry their parameter sets: 22 bytes more).
        let start = times.iter().take_while(|&&t| t.wrapping_sub(times[0]) < 2 * 90_000).count();
        let non_reference = |k: usize| top(&sizes[k]) && (times[k] / 3000) % 2 == 1 && sizes[k] < 2520;
        assert!(start >= 25, "{start} frames in its first 2 s");
        assert_eq!((0..start).filter(|&k| non_reference(k)).count(), 0, "started reduced: {:?} {:?}", &sizes[..start], &times[..start]);
        // Its last 5 s: the top layer's reference pictures, 15 a second.
        let from = times.len() - times.iter().rev().take_while(|&&t| times.last().unwrap() - t < 5 * 90_000).count();
        let last = &sizes[from..];
        assert!(last.iter().all(top), "the top layer only at the end: {} small frames", last.iter().filter(|s| !top(s)).count());
        assert!((65..=80).contains(&last.len()), "at half its frame rate: {} frames in 5 s", last.len());
        assert!((from..times.len()).all(|k| !non_reference(k)), "none of its non-reference pictures");
        assert!(times[from..].windows(2).all(|w| w[1] - w[0] <= 6000), "and every reference picture");
    }

    #[test]
    fn a_viewer_climbs_back_to_the_top_layer_when_its_link_clears() {
        let mut world = World::new();
        let publisher = world.join_with("alice", PeerRole::Publish, &["h", "l"], Link::clean(), Link::clean());
        let viewer = world.join("alice", PeerRole::Play, Link::clean(), Link { bps: Some(600_000), queue: Duration::from_millis(300), ..Link::clean() });
        connect(&mut world);
        publish_simulcast(&mut world, publisher, 10);
        let capped = world.frame_sizes(viewer).len();
        assert_eq!(big(&world.frame_sizes(viewer)[capped - 60..]), 0, "on the low layer while capped");
        // The link clears: the estimator probes toward the top layer and the viewer climbs.
        world.clients[viewer].down.bps = None;
        publish_simulcast(&mut world, publisher, 20);
        let sizes = world.frame_sizes(viewer);
        assert!(big(&sizes[sizes.len() - 150..]) >= 140, "back on the top layer: {} of the last 150 frames", big(&sizes[sizes.len() - 150..]));
    }

    /// The publisher's uplink thins and its browser stops the top layer: a viewer that took it
    /// is moved to the layer still coming instead of waiting for the top one.
    #[test]
    fn a_layer_the_publisher_stops_is_not_waited_for() {
        let mut world = World::new();
        let publisher = world.join_with("alice", PeerRole::Publish, &["h", "l"], Link::clean(), Link::clean());
        let viewer = world.join("alice", PeerRole::Play, Link::clean(), Link::clean());
        connect(&mut world);
        let start = publish_simulcast(&mut world, publisher, 6);
        let before = world.frame_sizes(viewer);
        assert!(big(&before[before.len() - 60..]) >= 55, "on the top layer first");
        // Only "l" from now on (keyframes every 2 s and on request).
        let mut n = 0u32;
        let mut answered = world.keyframe_requests(publisher).len();
        world.run(Duration::from_secs(6), Duration::from_millis(33), |w| {
            let asked = w.keyframe_requests(publisher).len();
            let keyframe = n.is_multiple_of(60) || asked > answered;
            answered = asked;
            w.write_layer(publisher, Some("l"), &h264_frame(keyframe, 500, start + n), (start + n) as u64 * 3000);
            n += 1;
        });
        let after = &world.frame_sizes(viewer)[before.len()..];
        // The layer counts as stopped after 1.5 s; its keyframe comes at once on request.
        assert!(after.len() >= 120, "the low layer within 2 s: {} of {n} frames", after.len());
        assert_eq!(big(after), 0);
    }

    /// A publisher on the top layer, then 8 s through an uplink with `loss` and `delay`:
    /// (the viewer's moves between the layers, its frames of the 240 sent, and how many of its
    /// last 45 came from the top layer).
    fn through_broken_uplink(loss: f64, delay: Duration) -> (usize, usize, usize) {
        let mut world = World::new();
        let publisher = world.join_with("alice", PeerRole::Publish, &["h", "l"], Link::clean(), Link::clean());
        let viewer = world.join("alice", PeerRole::Play, Link::clean(), Link::clean());
        connect(&mut world);
        publish_simulcast(&mut world, publisher, 6);
        let before = world.frame_sizes(viewer).len();
        assert!(big(&world.frame_sizes(viewer)[before - 60..]) >= 55, "on the top layer first");
        let up = &mut world.clients[publisher].up;
        (up.loss, up.delay) = (loss, delay);
        publish_simulcast(&mut world, publisher, 8);
        let after = &world.frame_sizes(viewer)[before..];
        let moves = after.windows(2).filter(|w| (w[0] >= 3000) != (w[1] >= 3000)).count();
        (moves, after.len(), big(&after[after.len().saturating_sub(45)..]))
    }

    /// A publisher's uplink that loses a fifth of its packets: most of the top layer's frames
    /// (six packets) come broken while their markers, what the layer's frame rate counts, mostly
    /// come. With 150 ms of delay their repairs come 300 ms or more later (its frame rate read
    /// 28 fps beside the lowest layer's 30; whole, 9 against 21); with 20 ms about half are
    /// repaired in time, near the line between starved and not. The viewer is moved to the
    /// lowest layer (one packet a frame) once, and stays. With 5 or 10 % loss and 150 ms, or
    /// 15 % and 20 ms, the top layer's frames are repaired in time and the viewer stays on it
    /// (measured; not asserted).
    #[test]
    fn a_viewer_leaves_a_layer_whose_frames_arrive_broken() {
        // Kept on the top layer (its frame rate read by markers), the viewer got 117-125 frames
        // of the 240 sent; moved, 153-166.
        let (moves, frames, top) = through_broken_uplink(0.2, Duration::from_millis(150));
        assert!(moves == 1 && top == 0 && frames >= 140, "150 ms: {moves} moves, {frames} frames, {top} of the last 45 from the top layer");
        // Without `RECOVERED_FPS_SHARE`, three moves and 173 frames; with it, one and 195.
        let (moves, frames, top) = through_broken_uplink(0.2, Duration::from_millis(20));
        assert!(moves == 1 && top == 0 && frames >= 180, "20 ms: {moves} moves, {frames} frames, {top} of the last 45 from the top layer");
    }

    #[test]
    fn keyframe_requests_from_viewers_are_throttled_to_one_per_500_ms() {
        let mut world = World::new();
        let publisher = world.join("alice", PeerRole::Publish, Link::clean(), Link::clean());
        let viewers: Vec<usize> = (0..3).map(|_| world.join("alice", PeerRole::Play, Link::clean(), Link::clean())).collect();
        connect(&mut world);
        let before = world.keyframe_requests(publisher).len();
        let mut n = 0u32;
        // Three viewers each ask every 100 ms for 3 s: 90 requests.
        world.run(Duration::from_secs(3), Duration::from_millis(100), |w| {
            w.write_video(publisher, &h264_frame(n == 0, 1000, n), n as u64 * 9000);
            n += 1;
            for &v in &viewers {
                w.request_keyframe(v);
            }
        });
        let asked = world.keyframe_requests(publisher).len() - before;
        assert!((3..=8).contains(&asked), "the publisher was asked {asked} times in 3 s");
        let times = world.keyframe_requests(publisher);
        assert!(times[before..].windows(2).all(|w| w[1] - w[0] >= Duration::from_millis(450)), "never two within 500 ms");
    }

    /// A room's viewers spread to a second worker: each gets every frame, and the room's worker
    /// sends each packet into the pipe once, however many viewers the satellite serves.
    #[test]
    fn viewers_on_another_worker_get_every_frame_through_one_pipe() {
        let mut world = World::new();
        let publisher = world.join("alice", PeerRole::Publish, Link::clean(), Link::clean());
        let local = world.join("alice", PeerRole::Play, Link::clean(), Link::clean());
        let spread: Vec<usize> = (0..3).map(|_| world.join_spread("alice", Link::clean(), Link::clean())).collect();
        assert!(world.satellite.is_satellite(&room()) && !world.sfu.is_satellite(&room()));
        connect(&mut world);
        let sent = publish(&mut world, publisher, 5, 30, 3000);
        for &v in spread.iter().chain([&local]) {
            let got = world.frames_received(v);
            assert!(got.len() as u32 >= sent - 3, "viewer {v}: {} of {sent} frames", got.len());
            assert!(got.windows(2).all(|w| w[1] > w[0]), "in order");
        }
        let copies = world.satellite.counters.packets_forwarded.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            world.pipe_packets > 400 && copies >= 3 * world.pipe_packets - 50,
            "one pipe copy per packet for three viewers: {} piped, {copies} forwarded there",
            world.pipe_packets
        );
        // A late viewer there starts at once from the satellite's cached GOP (no keyframe for 10 s).
        let late = world.join_spread("alice", Link::clean(), Link::clean());
        let mut n = sent;
        world.run(Duration::from_secs(2), Duration::from_millis(33), |w| {
            w.write_video(publisher, &h264_frame(false, 3000, n), n as u64 * 3000);
            n += 1;
        });
        assert!(world.frames_received(late).len() >= 50, "the late viewer plays from the cached GOP: {} frames", world.frames_received(late).len());
        // The last viewer there leaves: the satellite room and the pipe go, the room stays.
        for v in spread.iter().chain([&late]) {
            world.satellite.remove_session(&format!("s{v}"), world.now);
        }
        world.run(Duration::from_secs(1), Duration::from_millis(100), |_| {});
        let piped = world.pipe_packets;
        publish(&mut world, publisher, 1, 30, 3000);
        assert_eq!(world.pipe_packets, piped, "nothing is piped once nobody watches there");
        assert!(!world.satellite.is_satellite(&room()) && !world.satellite.holds_room(&room()));
        assert!(world.sfu.room_exists(&room()));
    }

    /// Simulcast through a pipe: every layer crosses, each viewer on the other worker gets its
    /// own layer from its own estimate, and the keyframe a switch needs is asked of the
    /// publisher's layer across the pipe.
    #[test]
    fn spread_viewers_choose_their_simulcast_layers_through_the_pipe() {
        let (sent, capped_sizes, lateness, times) = roomy_and_capped(true);
        low_layer_soon_and_whole(sent, &capped_sizes, &times);
        let late = lateness[lateness.len().saturating_sub(150)..].iter().copied().fold(0.0, f64::max);
        assert!(late < 0.5, "no standing queue once on the low layer: its last frames arrive {late:.2} s late");
        let last = &capped_sizes[capped_sizes.len().saturating_sub(150)..];
        assert!(last.len() >= 140 && big(last) == 0, "the capped viewer ends on the low layer: {} frames, {} big", last.len(), big(last));
    }
}

/// The rate step (issue 17's: 3 Mbit/s → 400 kbit/s for 10 s → 3 Mbit/s) over links that differ
/// in delay, jitter and their random draws, emulated faster than real time: where a rare stall
/// of the climb back shows in seconds instead of in one Chromium run of twenty.
/// `SEED=n` runs one link, `SEEDS=n` the first n; `SEED_LOG=<filter>` (e.g. `tessera_engine::sfu=debug`) prints the
/// SFU's logs stamped with the emulated time in ms since the publisher started.
#[cfg(test)]
mod rate_step {
    use super::*;

    pub(super) static SIM_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    struct SimTime;
    impl tracing_subscriber::fmt::time::FormatTime for SimTime {
        fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
            write!(w, "{:>6}", SIM_MS.load(std::sync::atomic::Ordering::Relaxed))
        }
    }

    /// Link `seed` of a set: `bps` with a 300 ms drop-tail queue, a delay of 20-47 ms and a
    /// jitter of 0-3 ms by seed, and its own random draws.
    pub(super) fn varied_link(bps: u64, seed: u64) -> Link {
        let mut link =
            Link { bps: Some(bps), queue: Duration::from_millis(300), delay: Duration::from_millis(20 + 3 * seed % 30), jitter: Duration::from_millis(seed % 4), ..Link::clean() };
        link.seed ^= seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        link
    }

    /// The links to run: `SEED=n` one, `SEEDS=n` the first n, else the first ten; with
    /// `SEED_LOG=<filter>` the SFU's log, stamped with the emulated time (`SIM_MS`).
    pub(super) fn seeds_from_env() -> Vec<u64> {
        seeds_from_env_or(10)
    }

    /// `seeds_from_env`, the first `default` links unless `SEED`/`SEEDS` say otherwise.
    pub(super) fn seeds_from_env_or(default: u64) -> Vec<u64> {
        if let Ok(filter) = std::env::var("SEED_LOG") {
            let _ = tracing_subscriber::fmt().with_env_filter(filter).with_timer(SimTime).with_ansi(false).try_init();
        }
        let only: Option<u64> = std::env::var("SEED").ok().and_then(|s| s.parse().ok());
        let count: u64 = std::env::var("SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
        only.map_or((0..count).collect(), |s| vec![s])
    }

    /// What a viewer of a two-layer publisher (≈ 1.4 Mbit/s and 120 kbit/s) saw over one rate
    /// step on link `seed`: top-layer frames in the 2 s before the step, seconds from the step
    /// to its first low-layer frame, and from the step up until the top layer for good (58 of
    /// the next 60 frames).
    fn rate_step(seed: u64) -> (usize, Option<f64>, Option<f64>) {
        let mut world = World::new();
        let publisher = world.join_with("alice", PeerRole::Publish, &["h", "l"], Link::clean(), Link::clean());
        let viewer = world.join("alice", PeerRole::Play, Link::clean(), varied_link(3_000_000, seed));
        world.run(Duration::from_secs(2), Duration::from_millis(50), |_| {});
        let t0 = world.now;
        let mut n = 0u32;
        let mut answered = world.keyframe_requests(publisher).len();
        world.run(Duration::from_secs(40), Duration::from_millis(33), |w| {
            let at = w.now.duration_since(t0).as_secs_f64();
            SIM_MS.store((at * 1000.0) as u64, std::sync::atomic::Ordering::Relaxed);
            w.clients[viewer].down.bps = Some(if (10.0..20.0).contains(&at) { 400_000 } else { 3_000_000 });
            let asked = w.keyframe_requests(publisher).len();
            let keyframe = n.is_multiple_of(60) || asked > answered;
            answered = asked;
            w.write_layer(publisher, Some("h"), &h264_frame(keyframe, 6000, n), n as u64 * 3000);
            w.write_layer(publisher, Some("l"), &h264_frame(keyframe, 500, n), n as u64 * 3000);
            n += 1;
        });
        let frames: Vec<(f64, bool)> = world.clients[viewer]
            .events
            .iter()
            .filter_map(|(t, e)| match e {
                Event::MediaData(m) if m.params.spec().codec == WireCodec::H264 => Some((t.saturating_duration_since(t0).as_secs_f64(), m.data.len() > 3000)),
                _ => None,
            })
            .collect();
        let top_before = frames.iter().filter(|(t, top)| (8.0..10.0).contains(t) && *top).count();
        let down_after = frames.iter().find(|(t, top)| *t > 10.0 && !top).map(|(t, _)| t - 10.0);
        let up_after = (0..frames.len()).find(|&k| frames[k].0 > 20.0 && frames[k..].iter().take(60).filter(|(_, top)| *top).count() >= 58).map(|k| frames[k].0 - 20.0);
        (top_before, down_after, up_after)
    }

    /// Over ten links, each viewer is on the top layer before the step, on the low one within
    /// 2 s of it, and back on the top within 10 s of the step up on nine of them (issue 17's
    /// goal) and within 15 s on all. Before the fixes this guards, three of these ten took 11,
    /// 13.5 and 17 s: a probe's own overshoot read as the link thinning (a cap under the lowest
    /// layer, no probe for the cap's 20 s), a probe judged by str0m's 3 s average while its
    /// raw value climbed (a failure, and the back-off doubled), and a cap that stayed under what
    /// the link carried cleanly.
    #[test]
    fn a_viewer_climbs_back_to_the_top_layer_after_a_rate_step_on_every_link() {
        let mut within_10 = 0;
        let seeds = seeds_from_env();
        for &seed in &seeds {
            let (top_before, down_after, up_after) = rate_step(seed);
            println!("link {seed}: top-layer frames in the 2 s before the step {top_before}, low layer after {down_after:?} s, top again after {up_after:?} s");
            assert!(top_before >= 55, "link {seed}: on the top layer before the step ({top_before} of 60 frames)");
            assert!(down_after.is_some_and(|d| d <= 2.0), "link {seed}: on the low layer {down_after:?} s after the step");
            assert!(up_after.is_some_and(|u| u <= 15.0), "link {seed}: back on the top layer {up_after:?} s after the step up");
            within_10 += up_after.is_some_and(|u| u <= 10.0) as usize;
        }
        assert!(within_10 * 10 >= seeds.len() * 9, "back within 10 s on {within_10} of {} links", seeds.len());
    }
}

/// Issue 17's capped viewer: a three-layer publisher (≈ 1.45 Mbit/s, 530 and 120 kbit/s) whose
/// pictures alternate reference and non-reference ones (OpenH264's temporal layers), a viewer
/// behind 600 kbit/s with a 300 ms queue, where the whole middle layer with its packets'
/// overhead does not quite fit and its reference pictures do: the network test bed's capped-600
/// scenario over thirty links in a minute.
#[cfg(test)]
mod capped_600 {
    use super::*;

    /// What the viewer of link `seed` saw from 10 s on: (frames per second, the share of its
    /// frames from the middle layer, the link's queue delay sampled every frame: median and
    /// p95 in seconds, layer moves).
    fn capped(seed: u64) -> (f64, f64, f64, f64, usize) {
        let mut world = World::new();
        let publisher = world.join_with("alice", PeerRole::Publish, &["h", "m", "l"], Link::clean(), Link::clean());
        let viewer = world.join("alice", PeerRole::Play, Link::clean(), super::rate_step::varied_link(600_000, seed));
        world.run(Duration::from_secs(2), Duration::from_millis(50), |_| {});
        let t0 = world.now;
        let mut n = 0u32;
        let mut answered = world.keyframe_requests(publisher).len();
        let mut queued = Vec::new();
        world.run(Duration::from_secs(30), Duration::from_millis(33), |w| {
            let at = w.now.duration_since(t0).as_secs_f64();
            super::rate_step::SIM_MS.store((at * 1000.0) as u64, std::sync::atomic::Ordering::Relaxed);
            if at >= 10.0 {
                queued.push(w.clients[viewer].down.queued(w.now));
            }
            let asked = w.keyframe_requests(publisher).len();
            let keyframe = n.is_multiple_of(60) || asked > answered;
            answered = asked;
            w.write_layer(publisher, Some("h"), &h264_frame_t2(keyframe, 6000, n), n as u64 * 3000);
            w.write_layer(publisher, Some("m"), &h264_frame_t2(keyframe, 2200, n), n as u64 * 3000);
            w.write_layer(publisher, Some("l"), &h264_frame_t2(keyframe, 500, n), n as u64 * 3000);
            n += 1;
        });
        let lateness = world.frame_lateness(viewer);
        let frames: Vec<(f64, usize, f64)> = world.clients[viewer]
            .events
            .iter()
            .filter_map(|(t, e)| match e {
                Event::MediaData(m) if m.params.spec().codec == WireCodec::H264 => Some((t.saturating_duration_since(t0).as_secs_f64(), m.data.len())),
                _ => None,
            })
            .zip(lateness)
            .map(|((t, s), l)| (t, s, l))
            .collect();
        let least = frames.iter().map(|f| f.2).fold(f64::MAX, f64::min);
        let late: Vec<&(f64, usize, f64)> = frames.iter().filter(|f| f.0 >= 10.0).collect();
        let mut lat: Vec<f64> = late.iter().map(|f| f.2 - least).collect();
        lat.sort_by(f64::total_cmp);
        queued.sort_by(f64::total_cmp);
        let q = |p: f64| percentile(&queued, p);
        let layer = |s: usize| {
            if s > 5000 {
                2
            } else if s > 1500 {
                1
            } else {
                0
            }
        };
        let middle = late.iter().filter(|f| layer(f.1) == 1).count() as f64 / late.len().max(1) as f64;
        let moves = late.windows(2).filter(|w| layer(w[0].1) != layer(w[1].1)).count();
        (late.len() as f64 / 20.0, middle, q(0.5), q(0.95), moves)
    }

    /// Over twenty links, the viewer gets 12 fps or more from 10 s on, the link's median queue
    /// stays under 25 ms, and the middle layer (its reference pictures at least) is held 90 %
    /// of the time on seven in ten of them or more. Before the fixes this guards, seven links
    /// in ten fell to the lowest layer for 2-7 s at a time (29-87 % kept): a probe that read room
    /// on str0m's raw value overshot the link, and its queue was read as the link thinning
    /// (a cap under the middle layer), or str0m's estimate fell with it and took the layer
    /// down, or the room the probe claimed took the whole layer seconds later and its queue
    /// was cut, or str0m set its estimate to one of its own small probe clusters' results,
    /// ~200 kbit/s read behind a frame's packets in the link's queue (now limited to 0.85 of
    /// the acknowledged rate, as libwebrtc does: docs/decisions.md). One link in ninety, about,
    /// still falls for a while (2 of 180); a harness run is not exactly repeatable (str0m's
    /// random handshakes shift the timing), so which link it is varies. Same
    /// `SEED`/`SEEDS`/`SEED_LOG` as the rate step.
    #[test]
    fn a_viewer_capped_at_600_kbits_keeps_the_middle_layers_reference_pictures_without_a_queue() {
        // Twenty links unless `SEED`/`SEEDS` say otherwise: before the probe limit one in twelve
        // fell for a while (15 of 180), and over ten links four did in one CI run.
        let seeds = super::rate_step::seeds_from_env_or(20);
        let mut kept = 0;
        for &seed in &seeds {
            let (fps, middle, p50, p95, moves) = capped(seed);
            println!("link {seed}: from 10 s {fps:.1} fps, middle layer {middle:.2}, link queue p50 {:.0} ms p95 {:.0} ms, {moves} layer moves", p50 * 1000.0, p95 * 1000.0);
            assert!(fps >= 12.0, "link {seed}: {fps:.1} fps from 10 s");
            assert!(p50 <= 0.025, "link {seed}: no standing queue (median {:.0} ms)", p50 * 1000.0);
            kept += (middle >= 0.9) as usize;
        }
        assert!(kept * 10 >= seeds.len() * 7, "the middle layer kept 90 % of the time on {kept} of {} links", seeds.len());
    }
}

/// Issue 17's meeting: one member's `sub` connection carries four publishers' main streams
/// (three layers each, ≈ 1.4 Mbit/s, 350 and 150 kbit/s at 15 fps, and their audio; the first
/// speaking) over a 1.2 Mbit/s link with a 300 ms queue. The speaker's middle layer fits beside
/// the others' lowest; its top does not. The network test bed's meeting-1200, over thirty links.
#[cfg(test)]
mod meeting_1200 {
    use super::*;

    const PUBLISHERS: [&str; 4] = ["cam0", "cam1", "cam2", "cam3"];

    /// What the member of link `seed` saw from 10 s on: the share of the speaker's frames from
    /// its middle layer or above, the share of 250 ms samples in which another track stood above
    /// the speaker, the fewest frames any track got in a 5 s window, and the link's queue delay
    /// sampled every 20 ms (median, p95; seconds).
    fn meeting(seed: u64, join_after: Duration) -> (f64, f64, usize, f64, f64) {
        let mut world = World::new();
        let publishers: Vec<usize> = PUBLISHERS.iter().map(|p| world.join_with(p, PeerRole::Publish, &["h", "m", "l"], Link::clean(), Link::clean())).collect();
        let member = world.join_subscriber(Link::clean(), super::rate_step::varied_link(1_200_000, seed));
        world.run(Duration::from_secs(2), Duration::from_millis(50), |_| {});
        // The member subscribes once the publishers have sent for `join_after`; its time counts
        // from then.
        let mut t0 = world.now + join_after;
        let mut k = 0u64;
        let mut answered: Vec<usize> = publishers.iter().map(|&p| world.keyframe_requests(p).len()).collect();
        let mut queued = Vec::new();
        let mut subscribed = false;
        world.run(Duration::from_secs(40) + join_after, Duration::from_millis(10), |w| {
            if !subscribed && w.now >= t0 {
                for p in PUBLISHERS {
                    w.subscribe(member, p);
                }
                (subscribed, t0) = (true, w.now);
            }
            let at = w.now.saturating_duration_since(t0).as_secs_f64();
            super::rate_step::SIM_MS.store((at * 1000.0) as u64, std::sync::atomic::Ordering::Relaxed);
            if at >= 10.0 && k.is_multiple_of(2) {
                queued.push(w.clients[member].down.queued(w.now));
            }
            // Audio every 20 ms, the speaker's loud; video at 15 fps, publisher j's frame n due at
            // n × 66.7 + j × 17 ms (their cameras are not in step).
            for (j, &p) in publishers.iter().enumerate() {
                if k.is_multiple_of(2) {
                    w.write_audio(p, if j == 0 { -20 } else { -127 }, k / 2 * 960);
                }
                let Some(t) = (k * 10).checked_sub(j as u64 * 17) else { continue };
                let n = t * 3 / 200;
                if t >= 10 && (t - 10) * 3 / 200 == n {
                    continue;
                }
                let n = n as u32;
                let asked = w.keyframe_requests(p).len();
                let keyframe = n.is_multiple_of(60) || asked > answered[j];
                answered[j] = asked;
                for (rid, size) in [("h", 11_600), ("m", 2_900), ("l", 1_250)] {
                    w.write_layer(p, Some(rid), &h264_frame_t2(keyframe, size, n), n as u64 * 6000);
                }
            }
            k += 1;
        });
        let c = &world.clients[member];
        let owner = |mid: Mid| c.tracks.iter().find(|(m, _)| *m == mid).and_then(|(_, u)| PUBLISHERS.iter().position(|p| *p == u.as_str()));
        // (seconds from t0, track, layer: 0 lowest .. 2 top)
        let frames: Vec<(f64, usize, usize)> = c
            .events
            .iter()
            .filter_map(|(t, e)| match e {
                Event::MediaData(m) if m.params.spec().codec == WireCodec::H264 => {
                    let layer = if m.data.len() > 5000 { 2 } else { (m.data.len() > 2000) as usize };
                    Some((t.saturating_duration_since(t0).as_secs_f64(), owner(m.mid)?, layer))
                }
                _ => None,
            })
            .filter(|f| f.0 >= 10.0)
            .collect();
        let speaker: Vec<&(f64, usize, usize)> = frames.iter().filter(|f| f.1 == 0).collect();
        let speaker_middle = speaker.iter().filter(|f| f.2 >= 1).count() as f64 / speaker.len().max(1) as f64;
        // Each track's layer at each 250 ms sample: that of its last frame.
        let mut above = 0;
        let samples = 120;
        for s in 0..samples {
            let at = 10.0 + s as f64 * 0.25;
            let layer_of = |j: usize| frames.iter().rfind(|f| f.1 == j && f.0 <= at).map_or(0, |f| f.2);
            above += (1..4).any(|j| layer_of(j) > layer_of(0)) as usize;
        }
        let fewest = (0..6)
            .flat_map(|win| {
                let from = 10.0 + win as f64 * 5.0;
                let frames = &frames;
                (0..4).map(move |j| frames.iter().filter(|f| f.1 == j && (from..from + 5.0).contains(&f.0)).count())
            })
            .min()
            .unwrap_or(0);
        queued.sort_by(f64::total_cmp);
        let q = |p: f64| percentile(&queued, p);
        (speaker_middle, above as f64 / samples as f64, fewest, q(0.5), q(0.95))
    }

    /// Over ten links each: every track at its reduced frame rate or better in every 5 s from
    /// 10 s on, nobody above the speaker, no standing queue (median under 50 ms: the four
    /// streams fill ~85 % of the link, so frames queue behind each other), and the speaker on
    /// its middle layer 90 % of the time on seven or more.
    fn four_on_1200(join_after: Duration) {
        let seeds = super::rate_step::seeds_from_env();
        let mut kept = 0;
        let mut failed = Vec::new();
        for &seed in &seeds {
            let (middle, above, fewest, p50, p95) = meeting(seed, join_after);
            println!(
                "link {seed}: from 10 s the speaker's middle layer {middle:.2}, another above it {above:.2}, fewest frames in 5 s {fewest}, link queue p50 {:.0} ms p95 {:.0} ms",
                p50 * 1000.0,
                p95 * 1000.0
            );
            if fewest < 35 || above > 0.1 || p50 > 0.05 {
                failed.push(seed);
            }
            kept += (middle >= 0.9) as usize;
        }
        assert!(failed.is_empty(), "links {failed:?}: a track starved, another stood above the speaker or the link queued");
        assert!(kept * 10 >= seeds.len() * 7, "the speaker's middle layer kept 90 % of the time on {kept} of {} links", seeds.len());
    }

    /// A member joining a meeting under way (the publishers' layer rates known).
    #[test]
    fn a_member_watching_four_on_1200_kbits_sees_the_speaker_on_its_middle_layer_and_nobody_starve() {
        four_on_1200(Duration::from_secs(3));
    }

    /// A member in the meeting from its start: subscribed before the publishers' first media,
    /// when their layers' rates read 0. Before the fixes this guards every track took its top
    /// layer at once (four keyframes of 11.6 kB into the link's 300 ms queue, a fifth of the
    /// packets lost); with the publishers' frames in step (this harness's first form), link 7's
    /// estimate then stayed at 42-57 kbit/s, under the audio alone, for the whole run, in three
    /// runs of three: str0m's loss controller held it, reading the 3 ms jitter's reordered
    /// packets as lost, and the estimator was never restarted. With the frames staggered the
    /// old code kept the speaker's middle layer on 6 of these ten links (8 of 30 under 90 %,
    /// the worst 31 %); one run each, and runs are not exactly repeatable.
    #[test]
    fn a_member_in_the_meeting_from_its_start_sees_the_speaker_on_its_middle_layer_and_nobody_starve() {
        four_on_1200(Duration::ZERO);
    }
}

/// A viewer joining an ingest (an RTMP publish) mid-GOP over a thin link.
#[cfg(test)]
mod ingest_thin {
    use super::*;

    /// What the viewer of link `seed` (capped at `bps`) saw joining a `kbps` ingest 2.5 s into
    /// its 4 s GOP: (first picture after joining, frames received of those due, the largest
    /// lateness against the stamps and its value over the last second, link drops, the
    /// longest gap between frames once one came; seconds).
    pub(super) fn joined(seed: u64, bps: u64, frame_bytes: usize) -> (f64, f64, f64, f64, u64, f64) {
        let mut world = World::new();
        let spec = SessionSpec { join: JoinInfo::anchor(crate::presence::user_type::RTMP), ..world.spec_of("rtmp", "alice", PeerRole::Publish) };
        let (ingest, _) = world.sfu.add_internal_publisher(spec, world.now);
        let count_frames = std::cell::Cell::new(0u32);
        let started = world.now;
        let mut seq = 0u64;
        let mut frames = |w: &mut World, d: Duration| {
            w.run(d, Duration::from_millis(33), |w| {
                super::rate_step::SIM_MS.store(w.now.duration_since(started).as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
                let n = count_frames.get();
                let keyframe = n.is_multiple_of(120);
                w.push_ingest_frame(ingest, &h264_frame(keyframe, frame_bytes, n), n, keyframe, &mut seq);
                count_frames.set(n + 1);
            });
        };
        frames(&mut world, Duration::from_millis(2500));
        let joined = world.now;
        let viewer = world.join("alice", PeerRole::Play, Link::clean(), super::rate_step::varied_link(bps, seed));
        frames(&mut world, Duration::from_secs(8));
        let got = world.frames_received(viewer);
        let arrivals: Vec<f64> = world.clients[viewer]
            .events
            .iter()
            .filter(|(_, e)| matches!(e, Event::MediaData(m) if m.params.spec().codec == WireCodec::H264))
            .map(|(t, _)| t.duration_since(joined).as_secs_f64())
            .collect();
        let first = arrivals.first().copied().unwrap_or(f64::NAN);
        let gap = arrivals.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
        let lateness = world.frame_lateness(viewer);
        let least = lateness.iter().copied().fold(f64::MAX, f64::min);
        let worst = lateness.iter().map(|l| l - least).fold(0.0, f64::max);
        let tail: Vec<f64> = lateness.iter().zip(&arrivals).filter(|(_, a)| **a > 7.0).map(|(l, _)| l - least).collect();
        let end = tail.iter().sum::<f64>() / tail.len().max(1) as f64;
        // The whole GOP from its keyframe (frame 0) is due.
        let due = count_frames.get() as f64;
        (first, got.len() as f64 / due, worst, end, world.clients[viewer].down.lost, gap)
    }

    /// A viewer joining an ingest on a link with little room beyond the stream gets its first
    /// picture at once, and the replayed GOP waits in the pacer rather than overflowing the
    /// link's queue: a 2.4 Mbit/s ingest on a 3 Mbit/s link and a 380 kbit/s one on 600
    /// kbit/s, four links each. Before the pacer kept under what a deep queue delivers, every
    /// 3 Mbit/s link dropped 26-65 packets (gaps up to 1.5 s), and with the replay's request
    /// for room three 600 kbit/s links in four dropped 5-10. Same `SEED`/`SEEDS`/`SEED_LOG` as
    /// the rate step (four links unless said).
    #[test]
    fn a_viewer_joining_an_ingest_on_a_link_with_little_room_gets_the_gop_without_overflowing_it() {
        let seeds = if std::env::var("SEED").is_ok() || std::env::var("SEEDS").is_ok() { super::rate_step::seeds_from_env() } else { (0..4).collect() };
        for (bps, frame_bytes) in [(3_000_000, 10_000), (600_000, 1_500)] {
            for &seed in &seeds {
                let (first, share, worst, end, lost, gap) = joined(seed, bps, frame_bytes);
                println!("{} kbit/s link {seed}: first picture {first:.2} s, {:.0} % of frames, latest {worst:.2} s, over the last second {end:.2} s, {lost} dropped at the link, longest gap {gap:.2} s", bps / 1000, share * 100.0);
                assert!(first < 0.5, "{bps} link {seed}: first picture {first:.2} s after joining");
                assert_eq!(lost, 0, "{bps} link {seed}: packets dropped at the link's queue");
                assert!(end < 0.3, "{bps} link {seed}: {end:.2} s behind the stamps at the end");
            }
        }
    }
}

/// One encoding (OBS over WHIP) over the rate step: a 2.4 Mbit/s H.264 stream with audio, its
/// viewer's link 3 Mbit/s → 400 kbit/s at 10 s → 3 Mbit/s at 20 s. The network test bed's
/// single-layer scenario over many links in seconds.
#[cfg(test)]
mod single_step {
    use super::*;

    /// What the viewer of link `seed` got: video frames in 12-20 s (the thin link), the share
    /// of audio received in 11-20 s, and seconds from the step up until video for good (50 of
    /// the next 60 frames' 2 s).
    pub(super) fn stepped(seed: u64) -> (usize, f64, Option<f64>) {
        let (thin, audio, back, _, _) = stepped_to(seed, 3_000_000);
        (thin, audio, back)
    }

    /// `stepped`, the link coming back to `back_bps`; also the share of audio received after
    /// the step up and the video frames then (21-45 s, 720 sent). `PER_SECOND=1` prints the
    /// frames received each second from 18 s.
    pub(super) fn stepped_to(seed: u64, back_bps: u64) -> (usize, f64, Option<f64>, f64, usize) {
        let mut world = World::new();
        let publisher = world.join("alice", PeerRole::Publish, Link::clean(), Link::clean());
        let viewer = world.join("alice", PeerRole::Play, Link::clean(), super::rate_step::varied_link(3_000_000, seed));
        world.run(Duration::from_secs(2), Duration::from_millis(50), |_| {});
        let t0 = world.now;
        let (mut k, mut written) = (0u64, None);
        let mut answered = world.keyframe_requests(publisher).len();
        world.run(Duration::from_secs(45), Duration::from_millis(10), |w| {
            let at = w.now.duration_since(t0).as_secs_f64();
            super::rate_step::SIM_MS.store((at * 1000.0) as u64, std::sync::atomic::Ordering::Relaxed);
            w.clients[viewer].down.bps = Some(match at {
                _ if at < 10.0 => 3_000_000,
                _ if at < 20.0 => 400_000,
                _ => back_bps,
            });
            if k.is_multiple_of(2) {
                w.write_audio(publisher, -20, k / 2 * 960);
            }
            let n = (k * 3 / 10) as u32;
            if written != Some(n) {
                written = Some(n);
                let asked = w.keyframe_requests(publisher).len();
                let keyframe = n.is_multiple_of(120) || asked > answered;
                answered = asked;
                w.write_video(publisher, &h264_frame(keyframe, 10_000, n), n as u64 * 3000);
            }
            k += 1;
        });
        let at = |t: &Instant| t.saturating_duration_since(t0).as_secs_f64();
        let events = &world.clients[viewer].events;
        let video: Vec<f64> = events.iter().filter(|(_, e)| matches!(e, Event::MediaData(m) if m.params.spec().codec == WireCodec::H264)).map(|(t, _)| at(t)).collect();
        let audio_in = |from: f64, to: f64| {
            events.iter().filter(|(t, e)| (from..to).contains(&at(t)) && matches!(e, Event::MediaData(m) if m.params.spec().codec == WireCodec::Opus)).count() as f64
                / ((to - from) * 50.0)
        };
        let thin = video.iter().filter(|t| (12.0..20.0).contains(*t)).count();
        if std::env::var_os("PER_SECOND").is_some() {
            println!("per second: {:?}", (18..45).map(|s| video.iter().filter(|t| (s as f64..s as f64 + 1.0).contains(*t)).count()).collect::<Vec<_>>());
        }
        let back = (0..video.len()).find(|&i| video[i] > 20.0 && video[i..].iter().take_while(|t| **t < video[i] + 2.0).count() >= 50).map(|i| video[i] - 20.0);
        let after = video.iter().filter(|t| (21.0..45.0).contains(*t)).count();
        (thin, audio_in(11.0, 20.0), back, audio_in(21.0, 45.0), after)
    }

    /// Over ten links the video pauses while the link is thin, the audio keeps flowing, and
    /// the video comes back within 10 s of the link. Before a probe near its goal counted for a
    /// paused track (`allocator::RESUME_NEAR`), three of these ten took 12-13.6 s. Same
    /// `SEED`/`SEEDS`/`SEED_LOG` as the rate step.
    #[test]
    fn one_encoding_pauses_on_a_thin_link_keeps_its_audio_and_comes_back_with_the_link() {
        for seed in super::rate_step::seeds_from_env() {
            let (thin, audio, back) = stepped(seed);
            println!("link {seed}: video frames while thin {thin}, audio received {:.1} %, video back after {back:?} s", audio * 100.0);
            assert!(thin < 30, "link {seed}: {thin} frames on the thin link");
            assert!(audio > 0.9, "link {seed}: {:.1} % of the audio while thin", audio * 100.0);
            assert!(back.is_some_and(|b| b <= 10.0), "link {seed}: video back after {back:?} s");
        }
    }

    /// A link that comes back too thin for the encoding (2.2 Mbit/s under its 2.5 with
    /// headers): a resume tried on a probe that came near its goal pauses again at once, and
    /// the tries back off, so the audio keeps flowing.
    #[test]
    fn one_encoding_on_a_link_that_comes_back_too_thin_keeps_its_audio() {
        for seed in super::rate_step::seeds_from_env().into_iter().take(5) {
            let (_, _, _, audio, frames) = stepped_to(seed, 2_200_000);
            println!("link {seed}: back to 2.2 Mbit/s, video frames received 21-45 s {frames} of 720, audio {:.1} %", audio * 100.0);
            assert!(audio > 0.95, "link {seed}: {:.1} % of the audio after the link came back", audio * 100.0);
        }
    }
}
