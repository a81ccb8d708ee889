//! Per-consumer rewriting of sequence numbers and timestamps (LiveKit's "downtrack" munging),
//! so a viewer sees one continuous stream while the source behind it changes: a publisher
//! replaced by a new session, or a simulcast layer switch.

/// Identifies one incoming RTP stream: (publisher session, SSRC).
pub type SourceId = (u64, u32);

#[derive(Debug, Default)]
pub struct SeqTsRewriter {
    source: Option<SourceId>,
    seq_delta: i64,
    ts_delta: u32,
    /// Next outgoing sequence number (extended).
    next_seq: u64,
    last_ts: u32,
    started: bool,
}

/// Packets older than this (in sequence numbers) behind the newest sent are dropped: they are
/// from before a switch, or too late to matter.
const MAX_BACKWARDS: u64 = 1_000;

impl SeqTsRewriter {
    pub fn source(&self) -> Option<SourceId> {
        self.source
    }

    /// Maps an incoming (extended seq, timestamp) to outgoing ones, or `None` to drop it.
    /// `gap_ticks` is how far the timestamp advances across a source change (the time since the
    /// last packet sent, in clock ticks, at least 1).
    pub fn rewrite(&mut self, source: SourceId, seq: u64, ts: u32, gap_ticks: u32) -> Option<(u64, u32)> {
        if self.source != Some(source) {
            // Start the new source right after what was sent; viewers see a continuous stream.
            let next = if self.started { self.next_seq } else { 1 };
            self.seq_delta = next as i64 - seq as i64;
            let first_ts = if self.started { self.last_ts.wrapping_add(gap_ticks.max(1)) } else { ts };
            self.ts_delta = first_ts.wrapping_sub(ts);
            self.source = Some(source);
        }
        let out = seq as i64 + self.seq_delta;
        if out < 1 {
            return None;
        }
        let out = out as u64;
        if self.started && out + MAX_BACKWARDS < self.next_seq {
            return None;
        }
        let ts_out = ts.wrapping_add(self.ts_delta);
        if !self.started || out >= self.next_seq {
            self.next_seq = out + 1;
            self.last_ts = ts_out;
        }
        self.started = true;
        Some((out, ts_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuous_across_source_switch() {
        let mut r = SeqTsRewriter::default();
        assert_eq!(r.rewrite((1, 10), 5000, 90_000, 0), Some((1, 90_000)));
        assert_eq!(r.rewrite((1, 10), 5001, 93_000, 0), Some((2, 93_000)));
        // Reordered packet from the same source keeps its place.
        assert_eq!(r.rewrite((1, 10), 5003, 99_000, 0), Some((4, 99_000)));
        assert_eq!(r.rewrite((1, 10), 5002, 96_000, 0), Some((3, 96_000)));
        // A new source continues right after the newest sent, timestamp advanced by the gap.
        assert_eq!(r.rewrite((2, 20), 10_100, 7_000, 3_000), Some((5, 102_000)));
        assert_eq!(r.rewrite((2, 20), 10_101, 10_000, 3_000), Some((6, 105_000)));
        // A packet from far before the switch maps to before the stream began: dropped.
        assert_eq!(r.rewrite((2, 20), 10_100 - 2_000, 0, 0), None);
        // One that maps more than 1000 behind the newest sent is dropped too.
        for seq in 10_102..12_200 {
            r.rewrite((2, 20), seq, 0, 0);
        }
        assert_eq!(r.rewrite((2, 20), 10_500, 0, 0), None);
        assert!(r.rewrite((2, 20), 11_500, 0, 0).is_some());
    }

    #[test]
    fn timestamps_wrap() {
        let mut r = SeqTsRewriter::default();
        assert_eq!(r.rewrite((1, 1), 1, u32::MAX - 10, 0), Some((1, u32::MAX - 10)));
        assert_eq!(r.rewrite((2, 2), 1, 500, 20), Some((2, 9)));
    }
}
