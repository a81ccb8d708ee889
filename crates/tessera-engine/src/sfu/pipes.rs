//! Pipes: a room's viewers spread over several workers (mediasoup's pipe-to-router). A room
//! lives on one worker, its publishers' packets arrive there; when that worker is busy, new
//! WHEP viewers are placed on another worker, in a *satellite* copy of the room. The satellite
//! holds one *piped* publisher per watched stream — an internal publisher fed not by an ingest
//! but by the room's worker, which writes every packet of the stream (every simulcast layer)
//! into the pipe once, however many viewers the satellite serves. Keyframe requests go back
//! the other way, per layer.
//!
//! Both ends are plain calls and outputs of `Sfu`; the driver carries `SfuOutput::Piped`,
//! `PipeWanted`, `PipeClosed` and `PipeKeyframeWanted` between workers.
//!
//! A satellite room is no room of its own: it makes no room events (its viewers' entries and
//! exits are real and are reported), `rooms()` marks it so the handle counts it into the room's
//! worker's entry, and it goes as soon as its last viewer does.

use super::*;

/// A satellite whose pipe has carried nothing for this long asks the room's worker again (the
/// request was lost, or the room was not there yet).
const PIPE_RETRY: Duration = Duration::from_secs(2);

/// The satellite end of a pipe (`InternalPublisher::pipe`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PipeIn {
    /// When it was made: its layers' rates are measured from then, as a WebRTC publisher's are
    /// from its negotiation (a first window of only a keyframe burst would overstate a layer).
    since: Instant,
    /// When the room's worker was last asked to open it.
    asked: Instant,
    /// When its last packet came.
    heard: Option<Instant>,
}

/// The room's-worker end: stream `source` goes to pipe `id` (the satellite's piped publisher).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PipeOut {
    pub(super) id: u64,
    pub(super) source: (UserId, StreamKind),
}

/// One packet on its way through a pipe, as the room's worker forwarded it.
#[derive(Debug, Clone)]
pub struct PipedPacket(pub(super) FwdPacket);

impl Sfu {
    /// A WHEP viewer placed on this worker although its room lives on another (that one is
    /// busy): the viewer joins a satellite copy of the room, fed through a pipe.
    pub fn add_spread_viewer(&mut self, spec: SessionSpec, offer: &str, now: Instant) -> Result<String, OfferError> {
        let room = spec.room.clone();
        let source = spec.source_user.clone().map(|u| (u, spec.stream));
        let made = !self.rooms.contains_key(&room);
        if made {
            self.rooms.insert(room.clone(), Room { created: Some(now), satellite: true, ..Room::default() });
        }
        let answer = match self.add_session(spec, offer, now) {
            Ok(a) => a,
            Err(e) => {
                if made {
                    self.rooms.remove(&room);
                }
                return Err(e);
            }
        };
        // A room that became this worker's own meanwhile needs no pipe.
        if let Some(source) = source.filter(|_| self.rooms.get(&room).is_some_and(|r| r.satellite)) {
            self.ensure_piped(&room, source, now);
        }
        Ok(answer)
    }

    /// The piped publisher of `source` in a satellite room, asked for if it is new.
    fn ensure_piped(&mut self, room: &RoomKey, source: (UserId, StreamKind), now: Instant) {
        if self.publisher_in(room, &source).is_some() {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let producers = [(INTERNAL_AUDIO_MID, MediaKind::Audio), (INTERNAL_VIDEO_MID, MediaKind::Video)]
            .into_iter()
            // Layers appear as their packets do; no presence to announce them to.
            .map(|(mid, kind)| Producer { mid: mid.into(), kind, layers: Vec::new(), announced: true, codec: None, red: None })
            .collect();
        let spec = SessionSpec {
            sid: String::new(),
            room: room.clone(),
            user: source.0.clone(),
            role: PeerRole::Publish,
            stream: source.1,
            source_user: None,
            rejected_mids: Vec::new(),
            quality: Quality::Auto,
            join: crate::presence::JoinInfo::anchor(0),
        };
        let pipe = PipeIn { since: now, asked: now, heard: None };
        self.internal
            .insert(id, InternalPublisher { spec, keyframe_requests: KeyframeThrottle::new(KEYFRAME_REQUEST_INTERVAL), producers, gop: GopCache::default(), pipe: Some(pipe) });
        if let Some(r) = self.rooms.get_mut(room) {
            r.publishers.insert(source.clone(), id);
        }
        tracing::info!(room = %room.room, user = %source.0, stream = source.1.as_str(), pipe = id, "viewers here: stream piped from the room's worker");
        self.out.push_back(SfuOutput::PipeWanted { pipe: id, room: room.clone(), source });
    }

    /// One packet through pipe `pipe` (from the room's worker): forwarded to this worker's
    /// viewers of the stream as if its publisher were here.
    pub fn push_piped(&mut self, pipe: u64, packet: PipedPacket, now: Instant) {
        let Some(p) = self.internal.get_mut(&pipe) else { return };
        let Some(state) = p.pipe.as_mut() else { return };
        state.heard = Some(now);
        let mut fp = packet.0;
        let mid = if fp.kind == MediaKind::Audio { INTERNAL_AUDIO_MID } else { INTERNAL_VIDEO_MID };
        fp.mid = mid.into();
        fp.arrival = now;
        let since = state.since;
        if let Some(producer) = p.producers.iter_mut().find(|x| x.kind == fp.kind) {
            if !producer.layers.iter().any(|l| l.rid == fp.rid) {
                producer.layers.push(Layer::new(fp.rid, since));
            }
            note_layer(producer, fp.rid, fp.codec, fp.seq, &fp.payload, fp.marker, fp.keyframe, fp.temporal, now);
        }
        // A single encoding is cached from its keyframe, as an ingest's is: a viewer joining
        // here mid-GOP starts at once. Simulcast layers ask the publisher instead.
        if fp.kind == MediaKind::Video && fp.rid.is_none() {
            p.gop.push(&fp, now);
        }
        let (room, key) = (p.spec.room.clone(), (p.spec.user.clone(), p.spec.stream));
        self.fan_out(pipe, &room, &key, &fp, now, None);
    }

    /// Asks the room's worker for a keyframe of a piped stream's layer (throttled per layer, as
    /// a PLI is).
    pub(super) fn request_piped_keyframe(&mut self, pipe: u64, rid: Option<Rid>, now: Instant) {
        let Some(p) = self.internal.get_mut(&pipe) else { return };
        let throttle = match p.producers.iter_mut().find(|x| x.kind == MediaKind::Video).and_then(|v| v.layers.iter_mut().find(|l| l.rid == rid)) {
            Some(layer) => &mut layer.keyframe_requests,
            None => &mut p.keyframe_requests,
        };
        if throttle.try_request(now) {
            self.out.push_back(SfuOutput::PipeKeyframeWanted { room: p.spec.room.clone(), source: (p.spec.user.clone(), p.spec.stream), rid });
        }
    }

    /// The room's worker: stream `source` of the room is wanted in pipe `pipe` (a satellite's
    /// viewers watch it). Idempotent; the stream starts at a picture (the cached GOP of an
    /// ingest, else a keyframe asked of every layer).
    pub fn open_pipe(&mut self, room: &RoomKey, source: (UserId, StreamKind), pipe: u64, now: Instant) {
        if !self.rooms.contains_key(room) {
            // Gone, or not made yet: the satellite asks again.
            return;
        }
        let pipes = self.pipes.entry(room.clone()).or_default();
        if pipes.iter().any(|p| p.id == pipe) {
            return;
        }
        pipes.push(PipeOut { id: pipe, source: source.clone() });
        tracing::info!(room = %room.room, user = %source.0, stream = source.1.as_str(), pipe, "pipe opened to another worker");
        let Some(pub_id) = self.publisher_in(room, &source) else { return };
        if let Some(p) = self.internal.get(&pub_id) {
            for fp in p.gop.packets() {
                self.out.push_back(SfuOutput::Piped(pipe, PipedPacket(fp)));
            }
            return;
        }
        let rids: Vec<Option<Rid>> = match self.sessions.get(&pub_id) {
            Some(Session { role: Role::Publisher { producers }, .. }) => {
                producers.iter().filter(|p| p.kind == MediaKind::Video).flat_map(|p| p.layers.iter().map(|l| l.rid)).collect()
            }
            _ => Vec::new(),
        };
        for rid in rids {
            self.request_layer_keyframe(room, &source, rid, now);
        }
    }

    /// The room's worker: nobody watches through pipe `pipe` any more.
    pub fn close_pipe(&mut self, room: &RoomKey, pipe: u64) {
        if let Some(pipes) = self.pipes.get_mut(room) {
            pipes.retain(|p| p.id != pipe);
            if pipes.is_empty() {
                self.pipes.remove(room);
            }
            tracing::info!(room = %room.room, pipe, "pipe closed");
        }
    }

    /// The room's worker: a keyframe of one layer of (user, stream), for a satellite's viewers.
    pub fn request_layer_keyframe(&mut self, room: &RoomKey, source: &(UserId, StreamKind), rid: Option<Rid>, now: Instant) {
        let Some(pub_id) = self.publisher_in(room, source) else { return };
        // An ingest or a mix makes one for the whole stream; one that sends layers (a cluster
        // relay's mirror) is asked for the layer.
        if self.internal.contains_key(&pub_id) && rid.is_none() {
            self.request_keyframe_of(room, &source.0, source.1, now);
            return;
        }
        self.request_video_keyframe(pub_id, rid, now);
    }

    /// Writes a packet the room's worker forwarded into the pipes that carry its stream.
    pub(super) fn pipe_out(&mut self, room: &RoomKey, key: &(UserId, StreamKind), fp: &FwdPacket) {
        let Some(pipes) = self.pipes.get(room) else { return };
        for p in pipes.iter().filter(|p| p.source == *key) {
            self.out.push_back(SfuOutput::Piped(p.id, PipedPacket(fp.clone())));
        }
    }

    /// Satellite upkeep (each tick): a piped stream nobody here watches any more is closed; one
    /// that has carried nothing for a while is asked for again; an empty satellite room goes,
    /// without a room event (the room lives on its own worker).
    pub(super) fn pipes_tick(&mut self, now: Instant) {
        let piped: Vec<u64> = self.internal.iter().filter(|(_, p)| p.pipe.is_some()).map(|(id, _)| *id).collect();
        for id in piped {
            let Some(p) = self.internal.get(&id) else { continue };
            let (room, source) = (p.spec.room.clone(), (p.spec.user.clone(), p.spec.stream));
            let watched = self.rooms.get(&room).is_some_and(|r| r.viewers.contains_key(&source));
            if !watched {
                self.drop_piped(id);
                continue;
            }
            let Some(p) = self.internal.get_mut(&id) else { continue };
            let Some(state) = p.pipe.as_mut() else { continue };
            let quiet = state.heard.is_none_or(|h| now.duration_since(h) >= PIPE_RETRY);
            if quiet && now.duration_since(state.asked) >= PIPE_RETRY {
                state.asked = now;
                self.out.push_back(SfuOutput::PipeWanted { pipe: id, room, source });
            }
        }
        let speakers = &mut self.speakers;
        self.rooms.retain(|key, r| {
            let keep = !r.satellite || !r.viewers.is_empty() || !r.publishers.is_empty();
            if !keep {
                speakers.remove(key);
            }
            keep
        });
    }

    /// Ends a piped publisher and tells the room's worker to close its pipe.
    fn drop_piped(&mut self, id: u64) {
        let Some(p) = self.internal.remove(&id) else { return };
        let (room, source) = (p.spec.room, (p.spec.user, p.spec.stream));
        if let Some(r) = self.rooms.get_mut(&room) {
            if r.publishers.get(&source) == Some(&id) {
                r.publishers.remove(&source);
            }
        }
        self.out.push_back(SfuOutput::PipeClosed { pipe: id, room });
    }

    /// Ends a satellite room now (the room was dismissed on its worker): its viewers' sessions
    /// end as removed, its pipes close. Whether it was one.
    pub fn dismiss_satellite(&mut self, room: &RoomKey, now: Instant) -> bool {
        if !self.rooms.get(room).is_some_and(|r| r.satellite) {
            return false;
        }
        let piped: Vec<u64> = self.internal.iter().filter(|(_, p)| p.pipe.is_some() && p.spec.room == *room).map(|(id, _)| *id).collect();
        for id in piped {
            self.drop_piped(id);
        }
        let matches = |spec: &SessionSpec| spec.room == *room;
        self.end_media_sessions(matches, LeaveReason::Removed, PublisherEnd::RoomDismissed, now);
        self.rooms.remove(room);
        self.speakers.remove(room);
        self.drain_all(now);
        true
    }

    /// Whether this room here is a satellite (its viewers' room lives on another worker).
    pub fn is_satellite(&self, room: &RoomKey) -> bool {
        self.rooms.get(room).is_some_and(|r| r.satellite)
    }
}
