//! Subscriptions, and the connection the server offers (room signaling's `sub`, PRODUCT.md §7):
//! one peer that carries any number of other participants' streams, sections added when the
//! client subscribes and stopped when it unsubscribes, by renegotiation. str0m holds at most one
//! offer in flight, so changes asked meanwhile wait and go out together in the next offer.

use super::*;
use tessera_rtc::str0m::change::{SdpAnswer, SdpPendingOffer};
use tessera_rtc::str0m::media::Direction;

/// What a viewer watches: one (user, stream), at a quality, with its video allocation.
#[derive(Debug)]
pub(super) struct Subscription {
    pub(super) source: (UserId, StreamKind),
    pub(super) quality: Quality,
    /// The sections carrying it; empty for a WHEP viewer, whose every section does.
    pub(super) mids: Vec<(Mid, MediaKind)>,
    /// Pause hysteresis for its video.
    pub(super) pause: PauseHold,
}

impl Subscription {
    /// A WHEP viewer's: the whole connection watches one stream.
    pub(super) fn whole(source: (UserId, StreamKind), quality: Quality) -> Subscription {
        Subscription { source, quality, mids: Vec::new(), pause: PauseHold::default() }
    }

    pub(super) fn carries(&self, mid: Mid) -> bool {
        self.mids.is_empty() || self.mids.iter().any(|(m, _)| *m == mid)
    }
}

/// The renegotiation state of a connection the server offers.
#[derive(Default)]
pub(super) struct Offered {
    pending: Option<SdpPendingOffer>,
    /// The offer in flight, to send again when the client's socket comes back (a resume).
    last: Option<SubscriberOffer>,
    queue: Vec<Change>,
}

enum Change {
    Add(SubscribeRequest),
    Remove((UserId, StreamKind)),
}

/// A subscription asked for on a `sub` connection.
#[derive(Debug, Clone)]
pub struct SubscribeRequest {
    pub source: (UserId, StreamKind),
    pub audio: bool,
    pub video: bool,
    pub quality: Quality,
}

/// An offer for the client, with what each of its sending sections carries.
#[derive(Debug, Clone)]
pub struct SubscriberOffer {
    pub sdp: String,
    pub tracks: Vec<OfferedTrack>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedTrack {
    pub mid: String,
    pub user: UserId,
    pub stream: StreamKind,
    pub video: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubscriberError {
    #[error("no such subscriber connection")]
    UnknownSession,
    #[error("no offer is waiting for an answer")]
    NoOfferPending,
    #[error("the answer is not valid SDP: {0}")]
    BadAnswer(String),
}

impl Sfu {
    /// Adds a connection the server offers to (`sub`); `spec.role` is `Play` and names no source.
    /// It has no sections until the first `subscribe`. Returns its id.
    pub fn add_subscriber(&mut self, spec: SessionSpec, now: Instant) -> Result<u64, OfferError> {
        let peer = Peer::offerer(&self.candidates, now)?;
        let id = self.next_id;
        self.next_id += 1;
        self.enter(id, &spec, now);
        let room = self.rooms.entry(spec.room.clone()).or_default();
        room.empty_since = None;
        room.created.get_or_insert(now);
        self.by_sid.insert(spec.sid.clone(), id);
        self.index_ufrag(&peer.local_ufrag, id);
        let span = tracing::info_span!("session", sid = %spec.sid, room = %spec.room.room, user = %spec.user, role = "subscriber");
        tracing::info!(parent: &span, "subscriber connection added");
        let role = Role::viewer(Vec::new(), Some(Box::default()));
        self.insert_session(id, Session::new(spec, peer, role, span, now));
        Ok(id)
    }

    /// Subscribes a `sub` connection to (user, stream). Returns the offer to send now, or none
    /// when one is already waiting for its answer (the change follows in the next one) or
    /// nothing needs negotiating (only the quality changed).
    pub fn subscribe(&mut self, sid: &str, req: SubscribeRequest, now: Instant) -> Result<Option<SubscriberOffer>, SubscriberError> {
        let id = self.offered_id(sid)?;
        let Some(Session { role: Role::Viewer { subscriptions, offered: Some(offered), .. }, .. }) = self.sessions.get_mut(&id) else {
            return Err(SubscriberError::UnknownSession);
        };
        if let Some(sub) = subscriptions.iter_mut().find(|s| s.source == req.source) {
            let kinds = |a: bool, v: bool| [(a, MediaKind::Audio), (v, MediaKind::Video)].into_iter().filter(|(on, _)| *on).map(|(_, k)| k).collect::<Vec<_>>();
            let had: Vec<MediaKind> = sub.mids.iter().map(|(_, k)| *k).collect();
            sub.quality = req.quality;
            if had == kinds(req.audio, req.video) {
                self.allocate(id, now);
                return Ok(None);
            }
            offered.queue.push(Change::Remove(req.source.clone()));
        }
        offered.queue.push(Change::Add(req));
        Ok(self.renegotiate(id, now))
    }

    /// Ends a subscription of a `sub` connection; its sections are stopped by the next offer.
    pub fn unsubscribe(&mut self, sid: &str, source: (UserId, StreamKind), now: Instant) -> Result<Option<SubscriberOffer>, SubscriberError> {
        let id = self.offered_id(sid)?;
        let Some(Session { role: Role::Viewer { offered: Some(offered), .. }, .. }) = self.sessions.get_mut(&id) else { return Err(SubscriberError::UnknownSession) };
        offered.queue.push(Change::Remove(source));
        Ok(self.renegotiate(id, now))
    }

    /// The client's answer to the last offer. Returns the next offer when changes waited.
    pub fn subscriber_answer(&mut self, sid: &str, sdp: &str, now: Instant) -> Result<Option<SubscriberOffer>, SubscriberError> {
        let id = self.offered_id(sid)?;
        let Some(Session { role: Role::Viewer { offered: Some(offered), .. }, peer, span, .. }) = self.sessions.get_mut(&id) else { return Err(SubscriberError::UnknownSession) };
        let pending = offered.pending.take().ok_or(SubscriberError::NoOfferPending)?;
        offered.last = None;
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| SubscriberError::BadAnswer(e.to_string()))?;
        if let Err(e) = peer.rtc.sdp_api().accept_answer(pending, answer) {
            tracing::info!(parent: &*span, "answer refused: {e}");
            return Err(SubscriberError::BadAnswer(e.to_string()));
        }
        // str0m announces sections only of offers it receives (`MediaAdded`); ours are known.
        if let Some(Session { role: Role::Viewer { send_mids, subscriptions, .. }, connected, .. }) = self.sessions.get_mut(&id) {
            for (mid, _) in subscriptions.iter().flat_map(|s| s.mids.iter()) {
                if !send_mids.contains(mid) {
                    send_mids.push(*mid);
                }
            }
            if *connected {
                self.setup_consumers(id);
                self.allocate(id, now);
            }
        }
        self.mark_dirty(id);
        self.drain_all(now);
        Ok(self.renegotiate(id, now))
    }

    /// The offer waiting for its answer, if any (sent again after a resume: the client may
    /// never have got it).
    pub fn pending_offer(&self, sid: &str) -> Option<SubscriberOffer> {
        match self.sessions.get(&self.offered_id(sid).ok()?) {
            Some(Session { role: Role::Viewer { offered: Some(o), .. }, .. }) => o.last.clone(),
            _ => None,
        }
    }

    fn offered_id(&self, sid: &str) -> Result<u64, SubscriberError> {
        let id = *self.by_sid.get(sid).ok_or(SubscriberError::UnknownSession)?;
        match self.sessions.get(&id) {
            Some(Session { role: Role::Viewer { offered: Some(_), .. }, .. }) => Ok(id),
            _ => Err(SubscriberError::UnknownSession),
        }
    }

    /// Applies the waiting changes in one offer, unless an offer is in flight.
    fn renegotiate(&mut self, id: u64, now: Instant) -> Option<SubscriberOffer> {
        let s = self.sessions.get_mut(&id)?;
        let Role::Viewer { consumers, send_mids, subscriptions, offered: Some(offered), .. } = &mut s.role else { return None };
        if offered.pending.is_some() || offered.queue.is_empty() {
            return None;
        }
        let room = self.rooms.entry(s.spec.room.clone()).or_default();
        let mut api = s.peer.rtc.sdp_api();
        for change in offered.queue.drain(..) {
            match change {
                Change::Remove(source) => {
                    let Some(at) = subscriptions.iter().position(|x| x.source == source) else { continue };
                    let sub = subscriptions.remove(at);
                    for (mid, _) in &sub.mids {
                        api.stop_media(*mid);
                    }
                    consumers.retain(|c| !sub.carries(c.mid));
                    send_mids.retain(|m| !sub.carries(*m));
                    room.stop_viewing(&source, id);
                }
                Change::Add(req) => {
                    if subscriptions.iter().any(|x| x.source == req.source) {
                        continue;
                    }
                    // The msid groups a stream's audio and video for the browser's lip sync.
                    let stream_id = format!("{}-{}", req.source.0, req.source.1.as_str());
                    let mut mids = Vec::new();
                    for (on, kind) in [(req.audio, MediaKind::Audio), (req.video, MediaKind::Video)] {
                        if on {
                            let track_id = format!("{stream_id}-{}", if kind == MediaKind::Audio { "audio" } else { "video" });
                            mids.push((api.add_media(kind, Direction::SendOnly, Some(stream_id.clone()), Some(track_id), None), kind));
                        }
                    }
                    if mids.is_empty() {
                        continue;
                    }
                    let viewers = room.viewers.entry(req.source.clone()).or_default();
                    if !viewers.contains(&id) {
                        viewers.push(id);
                    }
                    subscriptions.push(Subscription { source: req.source, quality: req.quality, mids, pause: PauseHold::default() });
                }
            }
        }
        let (offer, pending) = api.apply()?;
        offered.pending = Some(pending);
        let tracks = subscriptions
            .iter()
            .flat_map(|sub| {
                sub.mids.iter().map(|(mid, kind)| OfferedTrack { mid: mid.to_string(), user: sub.source.0.clone(), stream: sub.source.1, video: *kind == MediaKind::Video })
            })
            .collect();
        let offer = SubscriberOffer { sdp: offer.to_sdp_string(), tracks };
        offered.last = Some(offer.clone());
        tracing::debug!(parent: &s.span, "offer for the subscriber connection");
        self.mark_dirty(id);
        self.drain_all(now);
        Some(offer)
    }
}
