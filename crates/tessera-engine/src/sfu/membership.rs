//! Who publishes in a room, for tasks: the list in join order, and watchers told when it
//! changes (a relay waiting for its source, a recording, a mix laying out tiles).

use super::*;

impl Sfu {
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

    /// Follows the room's publishers: the current list now, then every change (checked each
    /// tick, so a publisher's first media shows within 250 ms) as `SfuOutput::Publishers`.
    pub fn watch_publishers(&mut self, room: RoomKey) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let now = self.room_publishers(&room);
        self.out.push_back(SfuOutput::Publishers(id, now.clone()));
        let w = self.watchers.entry(room).or_insert_with(|| (Vec::new(), now));
        w.0.push(id);
        id
    }

    pub fn unwatch_publishers(&mut self, id: u64) {
        self.watchers.retain(|_, (ids, _)| {
            ids.retain(|w| *w != id);
            !ids.is_empty()
        });
    }

    /// Tells watchers whose room's publishers changed.
    pub(super) fn tell_watchers(&mut self) {
        let rooms: Vec<RoomKey> = self.watchers.keys().cloned().collect();
        for room in rooms {
            let now = self.room_publishers(&room);
            let Some((ids, last)) = self.watchers.get_mut(&room) else { continue };
            if *last != now {
                for id in ids.iter() {
                    self.out.push_back(SfuOutput::Publishers(*id, now.clone()));
                }
                *last = now;
            }
        }
    }
}
