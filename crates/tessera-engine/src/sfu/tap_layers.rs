//! Which simulcast layer a mix job's tap takes of each source: the smallest whose picture
//! covers the tile it is drawn into (a nine-grid tile of a 720p mix is 426x240, which the
//! 640x360 layer covers: a quarter of the top layer's decoding). Without sizes a tap takes the
//! top layer, as relays and recordings always do. A switch happens at a keyframe of the new
//! layer, asked for when the target changes; the tap is told (`TapPacket::layer_switch`).

use super::*;

/// A layer that has sent nothing for this long is not chosen (its publisher dropped it).
const LAYER_STALE: Duration = Duration::from_secs(1);

/// One source of a mix's tap: the tile size it is drawn at, and its layers.
#[derive(Debug, Clone)]
pub(super) struct TapLayer {
    source: (UserId, StreamKind),
    size: (u32, u32),
    /// The layer wanted, once the source's layer sizes are known.
    target: Option<Rid>,
    /// The layer forwarded (the top one until a switch).
    current: Rid,
}

/// The top layer's rid: what taps take by default.
fn top() -> Rid {
    Rid::from("h")
}

impl Sfu {
    /// A mix job's tile sizes per source: its tap takes the layer that covers each (sources not
    /// named go back to the top layer).
    pub fn set_tap_sizes(&mut self, tap: u64, room: &RoomKey, sizes: Vec<((UserId, StreamKind), (u32, u32))>, now: Instant) {
        let old = self.tap_layers.remove(&tap).map(|(_, l)| l).unwrap_or_default();
        let layers: Vec<TapLayer> = sizes
            .into_iter()
            .map(|(source, size)| match old.iter().find(|l| l.source == source) {
                Some(l) => TapLayer { size, ..l.clone() },
                None => TapLayer { source, size, target: None, current: top() },
            })
            .collect();
        if !layers.is_empty() && self.taps.get(room).is_some_and(|t| t.iter().any(|(id, _)| *id == tap)) {
            self.tap_layers.insert(tap, (room.clone(), layers));
        }
        self.choose_tap_layers(now);
    }

    /// Whether tap `tap` takes this packet of `source` (layer `rid`), and whether it is the
    /// first of a new layer.
    pub(super) fn tap_takes_layer(
        tap_layers: &mut HashMap<u64, (RoomKey, Vec<TapLayer>)>,
        tap: u64,
        source: &(UserId, StreamKind),
        rid: Option<Rid>,
        keyframe: bool,
    ) -> (bool, bool) {
        let Some(rid) = rid else { return (true, false) };
        let Some(l) = tap_layers.get_mut(&tap).and_then(|(_, ls)| ls.iter_mut().find(|l| l.source == *source)) else { return (rid == top(), false) };
        if l.target == Some(rid) && l.current != rid && keyframe {
            l.current = rid;
            return (true, true);
        }
        (l.current == rid, false)
    }

    /// The layers of `source` that mix taps take other than the top one (a keyframe request
    /// from a mix is for the layer it decodes).
    pub(super) fn tap_layer_rids(&self, room: &RoomKey, source: &(UserId, StreamKind)) -> Vec<Rid> {
        let mut rids: Vec<Rid> =
            self.tap_layers.values().filter(|(r, _)| r == room).flat_map(|(_, ls)| ls.iter().filter(|l| l.source == *source && l.current != top()).map(|l| l.current)).collect();
        rids.dedup();
        rids
    }

    /// Re-chooses each tap source's layer from its tile size and the layers' sizes (each tick);
    /// a target other than the current layer asks for its keyframe.
    pub(super) fn choose_tap_layers(&mut self, now: Instant) {
        if self.tap_layers.is_empty() {
            return;
        }
        let mut wanted: Vec<(RoomKey, (UserId, StreamKind), Rid)> = Vec::new();
        for (room, layers) in self.tap_layers.values_mut() {
            for l in layers.iter_mut() {
                let Some(pub_id) = self.rooms.get(room).and_then(|r| r.publishers.get(&l.source)).copied() else { continue };
                let producers: &[Producer] = match (self.sessions.get(&pub_id), self.internal.get(&pub_id)) {
                    (Some(Session { role: Role::Publisher { producers }, .. }), _) => producers,
                    (_, Some(p)) => &p.producers,
                    _ => &[],
                };
                let Some(video) = producers.iter().find(|p| p.kind == MediaKind::Video) else { continue };
                let mut sized: Vec<(Rid, (u32, u32))> =
                    video.layers.iter().filter(|x| now.saturating_duration_since(x.last_packet) < LAYER_STALE).filter_map(|x| Some((x.rid?, x.size?))).collect();
                // One layer left live (its publisher, short of CPU or uplink, dropped the others):
                // that one, rather than waiting on a layer that no longer comes (a black tile).
                if sized.is_empty() {
                    continue;
                }
                sized.sort_by_key(|(_, (w, h))| w * h);
                // Within 5 %: a layer a few pixels short is scaled up unseen.
                let covers = sized.iter().find(|(_, (w, h))| w * 100 >= l.size.0 * 95 && h * 100 >= l.size.1 * 95);
                let Some((rid, _)) = covers.or(sized.last()) else { continue };
                l.target = Some(*rid);
                if *rid != l.current {
                    wanted.push((room.clone(), l.source.clone(), *rid));
                }
            }
        }
        for (room, source, rid) in wanted {
            self.request_layer_keyframe(&room, &source, Some(rid), now);
        }
    }
}
