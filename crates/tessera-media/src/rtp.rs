//! Access units out of an RTP stream: packets of one timestamp, collected until the marker bit,
//! in sequence order. A unit with a sequence gap, or one that never saw its marker, is dropped;
//! the caller then waits for (and asks for) a keyframe.

use std::sync::Arc;

/// What one packet completed.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    /// The unit is not complete yet.
    Pending,
    /// The unit was complete but had a sequence gap: dropped.
    Gap,
    /// A whole unit: its payloads in sequence order.
    Unit(Vec<Arc<[u8]>>),
}

#[derive(Debug, Default)]
pub struct AuAssembler {
    ts: Option<u32>,
    packets: Vec<(u64, Arc<[u8]>)>,
    abandoned: bool,
}

impl AuAssembler {
    pub fn push(&mut self, seq: u64, ts: u32, marker: bool, payload: Arc<[u8]>) -> Push {
        if self.ts.is_some_and(|t| t != ts) && !self.packets.is_empty() {
            // The previous unit never saw its marker.
            self.packets.clear();
            self.abandoned = true;
        }
        self.ts = Some(ts);
        self.packets.push((seq, payload));
        if !marker {
            return Push::Pending;
        }
        let mut unit = std::mem::take(&mut self.packets);
        unit.sort_by_key(|(s, _)| *s);
        if !unit.windows(2).all(|w| w[1].0 == w[0].0 + 1) {
            return Push::Gap;
        }
        Push::Unit(unit.into_iter().map(|(_, p)| p).collect())
    }

    /// Whether a unit was dropped for want of its marker since the last call.
    pub fn take_abandoned(&mut self) -> bool {
        std::mem::take(&mut self.abandoned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(b: u8) -> Arc<[u8]> {
        Arc::from(&[b][..])
    }

    #[test]
    fn units_complete_on_the_marker_in_order_and_gaps_or_lost_markers_drop_them() {
        let mut a = AuAssembler::default();
        assert_eq!(a.push(2, 100, false, p(2)), Push::Pending);
        assert_eq!(a.push(1, 100, false, p(1)), Push::Pending);
        assert_eq!(a.push(3, 100, true, p(3)), Push::Unit(vec![p(1), p(2), p(3)]));
        assert!(!a.take_abandoned());
        assert_eq!(a.push(4, 200, false, p(4)), Push::Pending);
        assert_eq!(a.push(6, 300, true, p(6)), Push::Unit(vec![p(6)]), "a new timestamp starts a new unit");
        assert!(a.take_abandoned(), "the unit at 200 never saw its marker");
        assert!(!a.take_abandoned());
        assert_eq!(a.push(7, 400, false, p(7)), Push::Pending);
        assert_eq!(a.push(9, 400, true, p(9)), Push::Gap);
    }
}
