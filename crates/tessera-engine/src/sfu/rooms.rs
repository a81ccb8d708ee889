//! The rooms API's view of the SFU (PRODUCT.md §10): rooms with their counts, participants,
//! and the two removals — a user (every session of theirs ends, 104 Reason 3) and a whole room
//! (every session ends, then 102).

use super::*;
use crate::presence::ParticipantInfo;
use tessera_model::AppId;

impl Sfu {
    /// The app's rooms, by room id.
    pub fn rooms(&self, app: &AppId) -> Vec<RoomSummary> {
        let mut out: Vec<RoomSummary> = self
            .rooms
            .iter()
            .filter(|(k, _)| k.app == *app)
            .map(|(k, r)| RoomSummary {
                room: k.clone(),
                created: r.created.unwrap_or(self.next_tick),
                participants: self.presence.participants(k).len(),
                publishers: if r.satellite { 0 } else { r.publishers.len() },
                worker: self.worker as usize,
                satellite: r.satellite,
                viewer_workers: Vec::new(),
            })
            .collect();
        out.sort_by(|a, b| a.room.room.cmp(&b.room.room));
        out
    }

    /// The room's participants, or `None` when there is no such room.
    pub fn room_users(&self, room: &RoomKey) -> Option<Vec<ParticipantInfo>> {
        self.rooms.contains_key(room).then(|| self.presence.participants(room))
    }

    /// Ends every session of `user` in the room (WHIP, WHEP, RTMP, ingest, mix output) as
    /// removed. Returns whether the user was there.
    pub fn kick(&mut self, room: &RoomKey, user: &UserId, now: Instant) -> bool {
        let found = self.end_sessions(room, Some(user), PublisherEnd::Removed, now);
        self.drain_all(now);
        found
    }

    /// Ends every session in the room as removed, then the room (102). Returns whether the room
    /// existed. The room's tasks are stopped by their owners (LeaveCode 2); their taps go now.
    pub fn dismiss(&mut self, room: &RoomKey, now: Instant) -> bool {
        if self.dismiss_satellite(room, now) {
            // The room itself is dismissed (and reported) on its own worker.
            return false;
        }
        self.pipes.remove(room);
        if !self.rooms.contains_key(room) {
            return false;
        }
        self.end_sessions(room, None, PublisherEnd::RoomDismissed, now);
        self.taps.remove(room);
        self.rooms.remove(room);
        tracing::info!(room = %room.room, "room dismissed");
        self.presence.room_dismissed(room);
        self.drain_all(now);
        true
    }

    /// A room-signaling session (WebSocket, UserType 1) joins: the participant is present from
    /// now on (103 if it is new), and the room lives while it stays. Checks are the caller's.
    pub fn join_signaling(&mut self, room: &RoomKey, user: &UserId, join: &crate::JoinInfo, now: Instant) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        if !self.rooms.contains_key(room) {
            self.presence.room_created(room, user);
        }
        self.presence.joined(id, room, user, join, None, now);
        let r = self.rooms.entry(room.clone()).or_default();
        r.created.get_or_insert(now);
        r.empty_since = None;
        r.members.push(id);
        self.signaling.insert(id, (room.clone(), user.clone()));
        // Whoever joins learns who speaks now (the list goes out again at the next tick).
        if let Some(s) = self.speakers.get_mut(room) {
            s.resend();
        }
        id
    }

    /// A room-signaling session ends (`leave`, a lost WebSocket, a newer one of the same user).
    pub fn leave_signaling(&mut self, id: u64, reason: LeaveReason, now: Instant) {
        let Some((room, _)) = self.signaling.remove(&id) else { return };
        self.presence.left(id, reason, now);
        if let Some(r) = self.rooms.get_mut(&room) {
            r.members.retain(|m| *m != id);
        }
    }

    /// A publisher mutes or unmutes one of its started tracks. Whether that track has started.
    pub fn mute(&mut self, room: &RoomKey, user: &UserId, track: crate::Track, muted: bool) -> bool {
        self.presence.mute(room, user, track, muted)
    }

    /// The participant's role changes (105); to audience, every publication of theirs ends (its
    /// WebRTC publishers close, its RTMP and ingest publishers are told they were removed).
    /// Returns whether the participant is present.
    pub fn switch_role(&mut self, room: &RoomKey, user: &UserId, role: tessera_model::Role, now: Instant) -> bool {
        if !self.presence.set_role(room, user, role) {
            return false;
        }
        if role == tessera_model::Role::Audience {
            let publishes = |spec: &SessionSpec| spec.room == *room && spec.user == *user && spec.role == PeerRole::Publish;
            self.end_media_sessions(publishes, LeaveReason::Left, PublisherEnd::Removed, now);
            self.drain_all(now);
        }
        true
    }

    fn end_sessions(&mut self, room: &RoomKey, user: Option<&UserId>, end: PublisherEnd, now: Instant) -> bool {
        let members: Vec<u64> = self.signaling.iter().filter(|(_, (r, u))| r == room && user.is_none_or(|x| u == x)).map(|(id, _)| *id).collect();
        for id in &members {
            self.leave_signaling(*id, LeaveReason::Removed, now);
            self.out.push_back(SfuOutput::PublisherEnded(*id, end));
        }
        let matches = |spec: &SessionSpec| spec.room == *room && user.is_none_or(|u| spec.user == *u);
        let media = self.end_media_sessions(matches, LeaveReason::Removed, end, now);
        media || !members.is_empty()
    }

    /// Ends the WebRTC sessions and internal publishers whose spec `matches`; the owners of
    /// internal publishers (RTMP, ingest) are told `end`. Whether there were any.
    pub(super) fn end_media_sessions(&mut self, matches: impl Fn(&SessionSpec) -> bool, reason: LeaveReason, end: PublisherEnd, now: Instant) -> bool {
        let sessions: Vec<u64> = self.sessions.iter().filter(|(_, s)| matches(&s.spec)).map(|(id, _)| *id).collect();
        // A piped stream is no participant: it ends with its pipe.
        let internal: Vec<u64> = self.internal.iter().filter(|(_, p)| p.pipe.is_none() && matches(&p.spec)).map(|(id, _)| *id).collect();
        for id in &sessions {
            self.close_session(*id, reason, now);
        }
        for id in &internal {
            if self.end_internal_publisher(*id, reason, now) {
                self.out.push_back(SfuOutput::PublisherEnded(*id, end));
            }
        }
        !sessions.is_empty() || !internal.is_empty()
    }
}
