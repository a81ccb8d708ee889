//! Who is in which room (PRODUCT.md §3.3–3.4), as the SFU's sessions come and go: a participant
//! is (room, user) with at least one session (WHIP, WHEP, RTMP, pull ingest, mix output). The
//! SFU tells this state machine about sessions, first packets and dismissed rooms; it answers
//! with the room and media events of webhook groups 1 and 2 (EVENTS.md §5), in causal order.

use crate::RoomKey;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tessera_media::StreamKind;
use tessera_model::{Role, UserId};

/// UserType of a session (PRODUCT.md §3.4).
pub mod user_type {
    pub const WHIP: u8 = 10;
    pub const WHEP: u8 = 11;
    pub const RTMP: u8 = 12;
    pub const PULL_INGEST: u8 = 13;
    pub const MIX: u8 = 14;
}

/// How a session joins, for event 103.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinInfo {
    pub user_type: u8,
    /// 1 Windows, 2 Android, 3 iOS, 4 Linux, 100 other.
    pub terminal_type: u8,
    pub role: Role,
    /// The token's `info` (BusinessInfo).
    pub info: Option<String>,
}

impl JoinInfo {
    /// A publishing session of the server's own kind (RTMP, pull ingest, mix output).
    pub fn anchor(user_type: u8) -> JoinInfo {
        JoinInfo { user_type, terminal_type: 100, role: Role::Anchor, info: None }
    }

    /// TerminalType from a User-Agent (PRODUCT.md §3.4).
    pub fn terminal_from_user_agent(ua: &str) -> u8 {
        let ua = ua.to_ascii_lowercase();
        if ua.contains("android") {
            2
        } else if ua.contains("iphone") || ua.contains("ipad") || ua.contains("ios") {
            3
        } else if ua.contains("windows") {
            1
        } else if ua.contains("linux") || ua.contains("x11") {
            4
        } else {
            100
        }
    }
}

/// The tracks whose start and stop are reported (201–206).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Track {
    MainVideo,
    MainAudio,
    Aux,
}

impl Track {
    pub fn of(stream: StreamKind, video: bool) -> Track {
        match (stream, video) {
            (StreamKind::Aux, _) => Track::Aux,
            (StreamKind::Main, true) => Track::MainVideo,
            (StreamKind::Main, false) => Track::MainAudio,
        }
    }

    /// The start event's code; the stop event's is one more.
    pub fn start_code(self) -> u16 {
        match self {
            Track::MainVideo => 201,
            Track::MainAudio => 203,
            Track::Aux => 205,
        }
    }

    /// "video" or "audio" (an aux stream is reported as its video).
    pub fn kind(self) -> &'static str {
        match self {
            Track::MainAudio => "audio",
            _ => "video",
        }
    }

    pub fn stream(self) -> StreamKind {
        match self {
            Track::Aux => StreamKind::Aux,
            _ => StreamKind::Main,
        }
    }
}

/// What a track carries, as room signaling announces it (`track_published`, `joined`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackMedia {
    pub codec: tessera_media::Codec,
    /// Simulcast layers by rid (`h`, `m`, `l`), empty for a single encoding.
    pub layers: Vec<String>,
}

/// A participant's track with media: what it carries and whether it is muted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackState {
    pub track: Track,
    pub muted: bool,
    pub media: Option<TrackMedia>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RoomEvent {
    RoomCreated {
        room: RoomKey,
        user: UserId,
    },
    RoomDismissed {
        room: RoomKey,
    },
    /// `reason`: 1 normal, 3 back within 60 s of a timeout.
    Entered {
        room: RoomKey,
        user: UserId,
        join: JoinInfo,
        reason: u8,
    },
    /// `reason`: 1 left, 2 timed out, 3 removed.
    Exited {
        room: RoomKey,
        user: UserId,
        role: Role,
        reason: u8,
    },
    RoleChanged {
        room: RoomKey,
        user: UserId,
        role: Role,
    },
    TrackStarted {
        room: RoomKey,
        user: UserId,
        track: Track,
        media: TrackMedia,
    },
    TrackStopped {
        room: RoomKey,
        user: UserId,
        track: Track,
    },
    /// A publisher muted or unmuted a started track (room signaling's `mute`).
    TrackMuted {
        room: RoomKey,
        user: UserId,
        track: Track,
        muted: bool,
    },
    /// Who speaks (room signaling's `active_speakers`, not a webhook): (user, level 0–100),
    /// loudest first, on change, at most every 500 ms.
    ActiveSpeakers {
        room: RoomKey,
        speakers: Vec<(UserId, u8)>,
    },
    /// Every 2 s, each signaling participant's network quality (room signaling's `quality`,
    /// not a webhook).
    Quality {
        room: RoomKey,
        reports: Vec<crate::quality::QualityReport>,
    },
}

impl RoomEvent {
    /// The room it happened in.
    pub fn room(&self) -> &RoomKey {
        match self {
            RoomEvent::RoomCreated { room, .. }
            | RoomEvent::RoomDismissed { room }
            | RoomEvent::Entered { room, .. }
            | RoomEvent::Exited { room, .. }
            | RoomEvent::RoleChanged { room, .. }
            | RoomEvent::TrackStarted { room, .. }
            | RoomEvent::TrackStopped { room, .. }
            | RoomEvent::TrackMuted { room, .. }
            | RoomEvent::ActiveSpeakers { room, .. }
            | RoomEvent::Quality { room, .. } => room,
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    Left = 1,
    TimedOut = 2,
    Removed = 3,
}

const REENTRY_WINDOW: Duration = Duration::from_secs(60);

struct Participant {
    role: Role,
    /// UserType of its first session.
    user_type: u8,
    terminal_type: u8,
    info: Option<String>,
    joined: Instant,
    /// Session id → the stream it publishes, if it does, and the session's UserType.
    sessions: Vec<(u64, Option<StreamKind>, u8)>,
    started: Vec<Track>,
    /// Started tracks its publisher has muted.
    muted: Vec<Track>,
    /// What each started track carries.
    media: Vec<(Track, TrackMedia)>,
}

/// A participant as the rooms API shows it (PRODUCT.md §10: `users.list`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantInfo {
    pub user: UserId,
    pub role: Role,
    pub user_type: u8,
    pub terminal_type: u8,
    pub info: Option<String>,
    pub joined: Instant,
    /// The UserType of each of its sessions, in the order they started.
    pub sessions: Vec<u8>,
    /// The streams it publishes.
    pub streams: Vec<StreamKind>,
    /// Its tracks with media.
    pub tracks: Vec<TrackState>,
}

#[derive(Default)]
pub struct Presence {
    participants: HashMap<(RoomKey, UserId), Participant>,
    by_session: HashMap<u64, (RoomKey, UserId)>,
    /// Participants that timed out, and when: a return within 60 s enters with Reason 3.
    timed_out: HashMap<(RoomKey, UserId), Instant>,
    events: Vec<RoomEvent>,
}

impl Presence {
    pub fn room_created(&mut self, room: &RoomKey, user: &UserId) {
        self.events.push(RoomEvent::RoomCreated { room: room.clone(), user: user.clone() });
    }

    pub fn room_dismissed(&mut self, room: &RoomKey) {
        self.events.push(RoomEvent::RoomDismissed { room: room.clone() });
    }

    /// A session starts. Joining before the session it replaces leaves keeps the participant
    /// present, so a replacement emits no 104/103.
    pub fn joined(&mut self, session: u64, room: &RoomKey, user: &UserId, join: &JoinInfo, publishes: Option<StreamKind>, now: Instant) {
        let key = (room.clone(), user.clone());
        self.by_session.insert(session, key.clone());
        if let Some(p) = self.participants.get_mut(&key) {
            p.sessions.push((session, publishes, join.user_type));
            if publishes.is_some() && p.role == Role::Audience {
                p.role = Role::Anchor;
                self.events.push(RoomEvent::RoleChanged { room: room.clone(), user: user.clone(), role: Role::Anchor });
            }
            return;
        }
        self.timed_out.retain(|_, at| now.saturating_duration_since(*at) < REENTRY_WINDOW);
        let reason = if self.timed_out.remove(&key).is_some() { 3 } else { 1 };
        let role = if publishes.is_some() { Role::Anchor } else { join.role };
        let participant = Participant {
            role,
            user_type: join.user_type,
            terminal_type: join.terminal_type,
            info: join.info.clone(),
            joined: now,
            sessions: vec![(session, publishes, join.user_type)],
            started: Vec::new(),
            muted: Vec::new(),
            media: Vec::new(),
        };
        self.participants.insert(key, participant);
        self.events.push(RoomEvent::Entered { room: room.clone(), user: user.clone(), join: JoinInfo { role, ..join.clone() }, reason });
    }

    /// A session ends. The last one takes the participant out (104, which implies every stop);
    /// otherwise a stream nobody else of the user publishes any more reports its stops.
    pub fn left(&mut self, session: u64, reason: LeaveReason, now: Instant) {
        let Some(key) = self.by_session.remove(&session) else { return };
        let Some(p) = self.participants.get_mut(&key) else { return };
        let published = p.sessions.iter().find(|(s, ..)| *s == session).and_then(|(_, s, _)| *s);
        p.sessions.retain(|(s, ..)| *s != session);
        if p.sessions.is_empty() {
            let role = p.role;
            self.participants.remove(&key);
            if reason == LeaveReason::TimedOut {
                self.timed_out.insert(key.clone(), now);
            }
            self.events.push(RoomEvent::Exited { room: key.0, user: key.1, role, reason: reason as u8 });
            return;
        }
        if let Some(stream) = published {
            if !p.sessions.iter().any(|(_, s, _)| *s == Some(stream)) {
                let stopped: Vec<Track> = p.started.iter().copied().filter(|t| t.stream() == stream).collect();
                p.started.retain(|t| t.stream() != stream);
                p.muted.retain(|t| t.stream() != stream);
                p.media.retain(|(t, _)| t.stream() != stream);
                for track in stopped {
                    self.events.push(RoomEvent::TrackStopped { room: key.0.clone(), user: key.1.clone(), track });
                }
            }
        }
    }

    /// The first packet of a track of `session` (the SFU calls this once per producer).
    pub fn media(&mut self, session: u64, track: Track, media: TrackMedia) {
        let Some(key) = self.by_session.get(&session) else { return };
        let Some(p) = self.participants.get_mut(key) else { return };
        if !p.started.contains(&track) {
            p.started.push(track);
            p.media.retain(|(t, _)| *t != track);
            p.media.push((track, media.clone()));
            self.events.push(RoomEvent::TrackStarted { room: key.0.clone(), user: key.1.clone(), track, media });
        }
    }

    /// A publisher mutes or unmutes a track it has started. Returns whether the track has
    /// started (muting one that has not is refused); an unchanged state emits nothing.
    pub fn mute(&mut self, room: &RoomKey, user: &UserId, track: Track, muted: bool) -> bool {
        let Some(p) = self.participants.get_mut(&(room.clone(), user.clone())) else { return false };
        if !p.started.contains(&track) {
            return false;
        }
        if p.muted.contains(&track) != muted {
            if muted {
                p.muted.push(track);
            } else {
                p.muted.retain(|t| *t != track);
            }
            self.events.push(RoomEvent::TrackMuted { room: room.clone(), user: user.clone(), track, muted });
        }
        true
    }

    /// The participant's role changes (105). An audience has no tracks: they stop with the role
    /// change, which covers them (no 202/204/206, PRODUCT.md §4.4). Returns whether it is present.
    pub fn set_role(&mut self, room: &RoomKey, user: &UserId, role: Role) -> bool {
        let Some(p) = self.participants.get_mut(&(room.clone(), user.clone())) else { return false };
        if p.role != role {
            p.role = role;
            if role == Role::Audience {
                p.started.clear();
                p.muted.clear();
                p.media.clear();
            }
            self.events.push(RoomEvent::RoleChanged { room: room.clone(), user: user.clone(), role });
        }
        true
    }

    /// Participants present, by the UserType of their first session (`tessera_participants`).
    pub fn count_by_user_type(&self) -> Vec<(u8, usize)> {
        let mut counts: Vec<(u8, usize)> = Vec::new();
        for p in self.participants.values() {
            match counts.iter_mut().find(|(t, _)| *t == p.user_type) {
                Some((_, n)) => *n += 1,
                None => counts.push((p.user_type, 1)),
            }
        }
        counts.sort();
        counts
    }

    /// The room's participants, by user id.
    pub fn participants(&self, room: &RoomKey) -> Vec<ParticipantInfo> {
        let mut out: Vec<ParticipantInfo> = self
            .participants
            .iter()
            .filter(|((r, _), _)| r == room)
            .map(|((_, user), p)| {
                let mut streams: Vec<StreamKind> = p.sessions.iter().filter_map(|(_, s, _)| *s).collect();
                streams.sort_by_key(|s| s.as_str());
                streams.dedup();
                ParticipantInfo {
                    user: user.clone(),
                    role: p.role,
                    user_type: p.user_type,
                    terminal_type: p.terminal_type,
                    info: p.info.clone(),
                    joined: p.joined,
                    sessions: p.sessions.iter().map(|(_, _, t)| *t).collect(),
                    streams,
                    tracks: p
                        .started
                        .iter()
                        .map(|t| TrackState { track: *t, muted: p.muted.contains(t), media: p.media.iter().find(|(x, _)| x == t).map(|(_, m)| m.clone()) })
                        .collect(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.user.cmp(&b.user));
        out
    }

    pub fn drain(&mut self) -> Vec<RoomEvent> {
        std::mem::take(&mut self.events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_model::{AppId, RoomId};

    fn room() -> RoomKey {
        RoomKey { app: AppId::default_app(), room: RoomId::parse("r").unwrap() }
    }

    fn h264() -> TrackMedia {
        TrackMedia { codec: tessera_media::Codec::H264, layers: vec!["h".into(), "l".into()] }
    }

    fn user(u: &str) -> UserId {
        UserId::parse(u).unwrap()
    }

    fn codes(events: &[RoomEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                RoomEvent::RoomCreated { .. } => "101".to_string(),
                RoomEvent::RoomDismissed { .. } => "102".to_string(),
                RoomEvent::Entered { reason, .. } => format!("103/{reason}"),
                RoomEvent::Exited { reason, .. } => format!("104/{reason}"),
                RoomEvent::RoleChanged { role, .. } => format!("105/{}", role.code()),
                RoomEvent::TrackStarted { track, .. } => track.start_code().to_string(),
                RoomEvent::TrackStopped { track, .. } => (track.start_code() + 1).to_string(),
                RoomEvent::TrackMuted { track, muted, .. } => format!("{}m", track.start_code() + u16::from(*muted)),
                RoomEvent::ActiveSpeakers { .. } => "speakers".to_string(),
                RoomEvent::Quality { .. } => "quality".to_string(),
            })
            .collect()
    }

    #[test]
    fn muting_reports_a_started_track_once_and_an_audience_switch_stops_tracks_silently() {
        let (mut p, now) = (Presence::default(), Instant::now());
        let ws = JoinInfo { user_type: 1, terminal_type: 100, role: Role::Anchor, info: None };
        p.joined(1, &room(), &user("a"), &ws, None, now);
        p.joined(2, &room(), &user("a"), &ws, Some(StreamKind::Main), now);
        assert!(!p.mute(&room(), &user("a"), Track::MainVideo, true), "no media yet: nothing to mute");
        p.media(2, Track::MainVideo, h264());
        assert!(p.mute(&room(), &user("a"), Track::MainVideo, true));
        assert!(p.mute(&room(), &user("a"), Track::MainVideo, true), "muting twice is no change");
        assert_eq!(p.participants(&room())[0].tracks, vec![TrackState { track: Track::MainVideo, muted: true, media: Some(h264()) }]);
        assert!(p.mute(&room(), &user("a"), Track::MainVideo, false));
        assert!(p.set_role(&room(), &user("a"), Role::Audience));
        // Its publisher leaving now reports no stop: 105 covered it.
        p.left(2, LeaveReason::Left, now);
        assert_eq!(codes(&p.drain()), ["103/1", "201", "202m", "201m", "105/21"]);
        assert!(p.participants(&room())[0].tracks.is_empty());
        assert!(!p.set_role(&room(), &user("b"), Role::Anchor), "not present");
    }

    #[test]
    fn a_publisher_and_a_viewer_of_the_same_user_are_one_participant() {
        let (mut p, now) = (Presence::default(), Instant::now());
        let whip = JoinInfo::anchor(user_type::WHIP);
        let whep = JoinInfo { user_type: user_type::WHEP, terminal_type: 4, role: Role::Audience, info: None };
        p.room_created(&room(), &user("alice"));
        p.joined(1, &room(), &user("alice"), &whep, None, now);
        p.joined(2, &room(), &user("alice"), &whip, Some(StreamKind::Main), now);
        p.media(2, Track::MainVideo, h264());
        p.media(2, Track::MainVideo, h264());
        p.media(2, Track::MainAudio, h264());
        // The publication ends while the viewer stays: the stops are reported.
        p.left(2, LeaveReason::Left, now);
        assert_eq!(p.count_by_user_type(), [(user_type::WHEP, 1)], "one participant, counted by its first session");
        p.left(1, LeaveReason::Left, now);
        assert!(p.count_by_user_type().is_empty());
        p.room_dismissed(&room());
        assert_eq!(codes(&p.drain()), ["101", "103/1", "105/20", "201", "203", "202", "204", "104/1", "102"]);
    }

    #[test]
    fn a_replacement_is_silent_and_an_exit_implies_the_stops() {
        let (mut p, now) = (Presence::default(), Instant::now());
        let rtmp = JoinInfo::anchor(user_type::RTMP);
        p.joined(1, &room(), &user("obs"), &rtmp, Some(StreamKind::Main), now);
        p.media(1, Track::MainVideo, h264());
        // The newer push joins first, then the older one is closed.
        p.joined(2, &room(), &user("obs"), &rtmp, Some(StreamKind::Main), now);
        p.left(1, LeaveReason::Left, now);
        p.media(2, Track::MainVideo, h264());
        p.joined(3, &room(), &user("obs"), &JoinInfo::anchor(user_type::WHIP), Some(StreamKind::Aux), now);
        p.media(3, Track::Aux, h264());
        p.left(3, LeaveReason::Left, now);
        p.left(2, LeaveReason::Left, now);
        assert_eq!(codes(&p.drain()), ["103/1", "201", "205", "206", "104/1"]);
    }

    #[test]
    fn a_return_within_60_s_of_a_timeout_enters_with_reason_3() {
        let (mut p, now) = (Presence::default(), Instant::now());
        let whip = JoinInfo::anchor(user_type::WHIP);
        p.joined(1, &room(), &user("a"), &whip, Some(StreamKind::Main), now);
        p.left(1, LeaveReason::TimedOut, now);
        p.joined(2, &room(), &user("a"), &whip, Some(StreamKind::Main), now + Duration::from_secs(30));
        p.left(2, LeaveReason::TimedOut, now + Duration::from_secs(31));
        p.joined(3, &room(), &user("a"), &whip, Some(StreamKind::Main), now + Duration::from_secs(100));
        assert_eq!(codes(&p.drain()), ["103/1", "104/2", "103/3", "104/2", "103/1"]);
    }

    #[test]
    fn terminal_types_from_user_agents() {
        let cases = [
            ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 HeadlessChrome/120", 4),
            ("Mozilla/5.0 (Windows NT 10.0; Win64; x64)", 1),
            ("Mozilla/5.0 (Linux; Android 14; Pixel 8)", 2),
            ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)", 3),
            ("obs-studio/30", 100),
        ];
        for (ua, t) in cases {
            assert_eq!(JoinInfo::terminal_from_user_agent(ua), t, "{ua}");
        }
    }
}
