//! Custom messages between participants (PRODUCT.md §8), routed by the SFU: from room
//! signaling (`send_custom`) or a `pub` connection's data channels `tessera-reliable` and
//! `tessera-lossy`, checked and numbered per sender (`custom::SenderLimit`), and delivered to
//! each receiver on its own channel of the same kind, or over its signaling socket when it has
//! none (`SfuOutput::ToMember`).

use super::*;
use crate::custom::{self, CustomError, Verdict};
use tessera_rtc::str0m::channel::ChannelId;

/// The two data channels a `pub` connection may open, by label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// `tessera-reliable`: ordered and reliable.
    Reliable,
    /// `tessera-lossy`: unordered, no retransmissions.
    Lossy,
}

impl ChannelKind {
    pub fn of_label(label: &str) -> Option<ChannelKind> {
        match label {
            "tessera-reliable" => Some(ChannelKind::Reliable),
            "tessera-lossy" => Some(ChannelKind::Lossy),
            _ => None,
        }
    }
}

/// A custom message on its way in: its `cmd_id` and payload, whom to (`None`: everyone else),
/// and the kind of channel it came on (the socket's is `Reliable`).
#[derive(Debug, Clone, Copy)]
pub struct OutgoingCustom<'a> {
    pub cmd_id: u8,
    pub payload: &'a [u8],
    pub to: Option<&'a [UserId]>,
    pub kind: ChannelKind,
}

/// What the SFU tells a room-signaling session (its socket sends it on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberMessage {
    /// A custom message from another participant.
    Custom { from: UserId, cmd_id: u8, seq: u32, payload: Arc<[u8]> },
    /// A custom message this participant sent on a data channel was refused.
    Refused(CustomError),
}

impl Sfu {
    /// A custom message of `from` (an anchor: the caller checked) to everyone else in the room or
    /// to `to`. `Ok(Some(seq))` when accepted, `Ok(None)` when dropped over the rate limit
    /// without a warning (one a second at most).
    pub fn send_custom(&mut self, room: &RoomKey, from: &UserId, msg: OutgoingCustom<'_>, now: Instant) -> Result<Option<u32>, CustomError> {
        let OutgoingCustom { cmd_id, payload, to, kind } = msg;
        custom::check(cmd_id, payload)?;
        let limit = self.custom_limits.entry((room.clone(), from.clone())).or_default();
        let seq = match limit.offer(payload.len(), now) {
            Verdict::Accept { seq } => seq,
            Verdict::Drop { warn: true } => return Err(CustomError::RateLimited),
            Verdict::Drop { warn: false } => return Ok(None),
        };
        self.counters.custom_messages.fetch_add(1, Ordering::Relaxed);
        let Some(r) = self.rooms.get(room) else { return Ok(Some(seq)) };
        // Receivers: every participant with a way to receive (a channel or a socket).
        let mut receivers: Vec<&UserId> = r.channels.iter().map(|c| &c.0).chain(r.members.iter().filter_map(|m| self.signaling.get(m).map(|(_, u)| u))).collect();
        receivers.sort();
        receivers.dedup();
        let receivers: Vec<UserId> = receivers.into_iter().filter(|u| *u != from && to.is_none_or(|to| to.contains(u))).cloned().collect();
        let payload: Arc<[u8]> = Arc::from(payload);
        let mut frame: Option<Vec<u8>> = None;
        for user in receivers {
            // The receiver's channel of the same kind, else its socket.
            let channel = self.rooms.get(room).and_then(|r| r.channels.iter().find(|c| c.0 == user && c.3 == kind).map(|c| (c.1, c.2)));
            let written = channel.is_some_and(|(sid, ch)| {
                let frame = frame.get_or_insert_with(|| custom::receive_frame(cmd_id, seq, from.as_str(), &payload));
                let Some(s) = self.sessions.get_mut(&sid) else { return false };
                let ok = s.peer.rtc.channel(ch).is_some_and(|mut c| c.write(true, frame).is_ok());
                if ok && !s.dirty {
                    s.dirty = true;
                    self.dirty.push(sid);
                }
                ok
            });
            if written {
                continue;
            }
            for m in self.members_of(room, &user) {
                self.out.push_back(SfuOutput::ToMember(m, MemberMessage::Custom { from: from.clone(), cmd_id, seq, payload: payload.clone() }));
            }
        }
        Ok(Some(seq))
    }

    pub(super) fn channel_opened(&mut self, id: u64, channel: ChannelId, label: &str) {
        let Some(kind) = ChannelKind::of_label(label) else {
            return;
        };
        let Some(s) = self.sessions.get(&id) else { return };
        tracing::debug!(parent: &s.span, label, "data channel open");
        let (room, user) = (s.spec.room.clone(), s.spec.user.clone());
        if let Some(r) = self.rooms.get_mut(&room) {
            r.channels.push((user, id, channel, kind));
        }
    }

    pub(super) fn channel_closed(&mut self, id: u64, channel: ChannelId) {
        let Some(s) = self.sessions.get(&id) else { return };
        if let Some(r) = self.rooms.get_mut(&s.spec.room) {
            r.channels.retain(|c| !(c.1 == id && c.2 == channel));
        }
    }

    /// A frame on one of a session's data channels: a custom message from an anchor's `pub`
    /// connection. What is refused is told over the sender's signaling socket.
    pub(super) fn channel_data(&mut self, id: u64, channel: ChannelId, data: &[u8], now: Instant) {
        let Some(s) = self.sessions.get(&id) else { return };
        let (room, user) = (s.spec.room.clone(), s.spec.user.clone());
        let Some(kind) = self.rooms.get(&room).and_then(|r| r.channels.iter().find(|c| c.1 == id && c.2 == channel)).map(|c| c.3) else { return };
        let result = if s.spec.role != PeerRole::Publish {
            Err(CustomError::NotAnchor)
        } else {
            custom::parse_send_frame(data).and_then(|(cmd_id, payload)| self.send_custom(&room, &user, OutgoingCustom { cmd_id, payload, to: None, kind }, now))
        };
        if let Err(e) = result {
            for m in self.members_of(&room, &user) {
                self.out.push_back(SfuOutput::ToMember(m, MemberMessage::Refused(e.clone())));
            }
        }
    }

    /// The room-signaling sessions of `user` in `room` (one, or none; two for a moment while a
    /// newer login replaces the older).
    fn members_of(&self, room: &RoomKey, user: &UserId) -> Vec<u64> {
        let Some(r) = self.rooms.get(room) else { return Vec::new() };
        r.members.iter().copied().filter(|m| self.signaling.get(m).is_some_and(|(_, u)| u == user)).collect()
    }

    /// Forgets the rate limits of senders no longer in their room.
    pub(super) fn forget_custom_limits(&mut self) {
        let (rooms, signaling, sessions) = (&self.rooms, &self.signaling, &self.sessions);
        self.custom_limits.retain(|(room, user), _| {
            rooms.get(room).is_some_and(|r| r.members.iter().any(|m| signaling.get(m).is_some_and(|(_, u)| u == user)))
                || sessions.values().any(|s| s.spec.room == *room && s.spec.user == *user)
        });
    }
}
