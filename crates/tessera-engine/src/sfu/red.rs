//! RFC 2198 redundancy (RED) for Opus, at both ends of the SFU.
//!
//! Audio is not retransmitted (a NACK round trip is longer than the jitter buffer waits for
//! audio), so a lost Opus packet is concealed. With RED each packet also carries the one before
//! it, and a single loss is filled from the next packet.
//! - A publisher that sends RED (browsers do when the answer prefers it) is unwrapped on arrival:
//!   producers carry plain Opus (taps, mixes and viewers without RED need nothing else), and a
//!   packet lost on the uplink is recovered from the redundancy of the one after it.
//! - A viewer that negotiated RED gets it re-made per consumer, over the sequence numbers it
//!   is sent (a layer or publisher switch breaks the chain; a redundant block is only added
//!   for the packet sent right before).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_rtc::str0m::format::PayloadParams;
use tessera_rtc::str0m::media::Pt;
use tessera_rtc::str0m::rtp::{RedDecoder, RedEncoder, RedundantBlock};

/// At most this many earlier packets ride along each packet sent to a viewer.
pub const MAX_RED_LEVELS: usize = 2;

/// A viewer's loss (fraction of its audio) from which RED carries `MAX_RED_LEVELS` packets.
pub const LOSSY: f32 = 0.05;

/// How long after the last loss a viewer's link showed RED keeps one earlier packet.
pub const LOSS_HOLD: Duration = Duration::from_secs(10);

/// How many earlier packets ride along each audio packet to a viewer: none while its link has
/// lost nothing for `LOSS_HOLD` (the copy is a third of an Opus stream's bytes on the wire, and
/// on a link near its capacity those bytes are what the next video layer lacks), one where it
/// lost lately or nothing is measured yet, `MAX_RED_LEVELS` where `loss` (its latest second)
/// is `LOSSY` or more at random — not on a link that queues or while a probe overfills it:
/// loss from congestion is not helped by sending more.
pub fn levels(loss: Option<f32>, lost_at: Option<Instant>, queueing: bool, probing: bool, now: Instant) -> usize {
    match loss {
        None => 1,
        Some(l) if l >= LOSSY && !queueing && !probing => MAX_RED_LEVELS,
        Some(_) if lost_at.is_some_and(|t| now.saturating_duration_since(t) < LOSS_HOLD) => 1,
        Some(_) => 0,
    }
}

/// One Opus packet out of a RED payload: (extended sequence number, RTP timestamp, payload).
pub type Unwrapped = (u64, u32, Arc<[u8]>);

/// A publisher's RED stream, unwrapped: which sequence numbers were already handed on (so a
/// recovered packet is never a duplicate of one that arrived, and an arrived one is not
/// repeated after its recovery).
#[derive(Debug, Default)]
pub struct RedReceiver {
    /// The highest sequence number handed on, and a bit per number below it (bit k: highest - k).
    highest: Option<u64>,
    seen: u64,
}

impl RedReceiver {
    /// Whether `seq` was handed on already; marks it handed on.
    fn note(&mut self, seq: u64) -> bool {
        let Some(h) = self.highest else {
            self.highest = Some(seq);
            self.seen = 1;
            return false;
        };
        if seq > h {
            let shift = seq - h;
            self.seen = if shift >= 64 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.highest = Some(seq);
            return false;
        }
        let back = h - seq;
        if back >= 64 {
            // Far older than anything tracked: a reordering this deep is not recovered from,
            // and forwarding it twice is harmless next to dropping it.
            return false;
        }
        let bit = 1u64 << back;
        let had = self.seen & bit != 0;
        self.seen |= bit;
        had
    }

    /// A plain (non-RED) packet of the same stream: handed on as it is.
    pub fn plain(&mut self, seq: u64) -> bool {
        !self.note(seq)
    }

    /// The Opus packets of one RED payload that were not handed on yet, oldest first: packets
    /// recovered from its redundant blocks, then its primary. Redundant blocks are taken as the
    /// packets right before the primary in order (one block: `seq - 1`; two: `seq - 2, seq - 1`),
    /// as libwebrtc sends them; a block of another payload type, or whose timestamp does not
    /// fall between its neighbours', is skipped. `None` for a malformed payload.
    pub fn unwrap(&mut self, seq: u64, ts: u32, payload: &[u8], primary_pt: u8) -> Option<Vec<Unwrapped>> {
        let blocks = RedDecoder::decode(payload).ok()?;
        let (primary, redundant) = blocks.split_last()?;
        if !primary.is_primary || primary.pt != primary_pt {
            return None;
        }
        let mut out = Vec::with_capacity(blocks.len());
        let n = redundant.len() as u64;
        let mut last_offset = u32::MAX;
        for (i, b) in redundant.iter().enumerate() {
            let back = n - i as u64;
            // Offsets shrink toward the primary; a zero offset is the primary's own time.
            let sane = b.pt == primary_pt && b.timestamp_offset > 0 && b.timestamp_offset < last_offset && !b.payload.is_empty();
            last_offset = b.timestamp_offset;
            if !sane || back > seq {
                continue;
            }
            let rseq = seq - back;
            // Only a hole is filled: a packet more than 64 behind the newest is not tracked.
            if self.highest.is_some_and(|h| h >= 64 && rseq < h - 63) {
                continue;
            }
            if !self.note(rseq) {
                out.push((rseq, ts.wrapping_sub(b.timestamp_offset), Arc::from(b.payload)));
            }
        }
        if !self.note(seq) {
            out.push((seq, ts, Arc::from(primary.payload)));
        }
        Some(out)
    }
}

/// RED made for one viewer's audio consumer: the packets it sent last, to carry along.
#[derive(Debug)]
pub struct RedSender {
    /// The viewer's RED payload type.
    pub pt: Pt,
    /// How many earlier packets each carries (`levels`).
    pub levels: usize,
    /// The last packets sent: (sequence number as sent, timestamp as sent, payload).
    history: VecDeque<(u64, u32, Arc<[u8]>)>,
}

impl RedSender {
    pub fn new(pt: Pt) -> RedSender {
        RedSender { pt, levels: 1, history: VecDeque::with_capacity(MAX_RED_LEVELS + 1) }
    }

    /// The RED payload for a packet sent as (`seq`, `ts`): earlier packets with the sequence
    /// numbers right before it, then it. Blocks that RED cannot describe (an offset over 14
    /// bits, a payload over 1,023 bytes) are left out.
    pub fn wrap(&mut self, seq: u64, ts: u32, payload: &Arc<[u8]>, primary_pt: u8) -> Vec<u8> {
        let redundant: Vec<RedundantBlock> = self
            .history
            .iter()
            .filter(|(s, t, p)| *s < seq && seq - s <= self.levels as u64 && ts.wrapping_sub(*t) > 0 && ts.wrapping_sub(*t) < 1 << 14 && !p.is_empty())
            .map(|(_, t, p)| RedundantBlock { pt: primary_pt, timestamp_offset: ts.wrapping_sub(*t), payload: p.to_vec() })
            .collect();
        let out = RedEncoder::encode(primary_pt, payload, &redundant);
        if self.history.len() == MAX_RED_LEVELS {
            self.history.pop_front();
        }
        self.history.push_back((seq, ts, payload.clone()));
        out
    }
}

/// The length of a RED payload's primary block (its last bytes), for rates: a RED publisher's
/// audio is counted as the Opus it carries, since each viewer is sent RED of its own.
pub fn primary_len(payload: &[u8]) -> Option<usize> {
    RedDecoder::decode(payload).ok()?.last().map(|b| b.payload.len())
}

/// The RED payload type negotiated over an Opus payload type, if any.
pub(super) fn red_pt_of(params: &[PayloadParams], opus_pt: Pt) -> Option<Pt> {
    params.iter().find(|p| p.pt() == opus_pt).and_then(|p| p.red())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPUS: u8 = 111;

    fn red(payload: &[u8], earlier: &[(u32, &[u8])]) -> Vec<u8> {
        let blocks: Vec<RedundantBlock> = earlier.iter().map(|(off, p)| RedundantBlock { pt: OPUS, timestamp_offset: *off, payload: p.to_vec() }).collect();
        RedEncoder::encode(OPUS, payload, &blocks)
    }

    #[test]
    fn a_lost_packet_is_recovered_from_the_next_one_once() {
        let mut r = RedReceiver::default();
        let got = r.unwrap(10, 9600, &red(b"ten", &[(960, b"nine")]), OPUS).unwrap();
        // The first packet's redundancy fills nothing that was missed... but 9 was never seen:
        // it is handed on (a viewer joining mid-stream gets it, harmlessly).
        assert_eq!(got.iter().map(|p| p.0).collect::<Vec<_>>(), vec![9, 10]);
        // 11 is lost; 12 carries it.
        let got = r.unwrap(12, 11520, &red(b"twelve", &[(960, b"eleven")]), OPUS).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].0, got[0].1, &*got[0].2), (11, 10560, &b"eleven"[..]));
        assert_eq!((got[1].0, got[1].1, &*got[1].2), (12, 11520, &b"twelve"[..]));
        // 11 arriving late (reordered) is not handed on twice, and 13's copy of 12 neither.
        assert!(r.unwrap(11, 10560, &red(b"eleven", &[(960, b"ten")]), OPUS).unwrap().is_empty());
        let got = r.unwrap(13, 12480, &red(b"thirteen", &[(960, b"twelve")]), OPUS).unwrap();
        assert_eq!(got.iter().map(|p| p.0).collect::<Vec<_>>(), vec![13]);
    }

    #[test]
    fn two_levels_fill_two_losses_in_order() {
        let mut r = RedReceiver::default();
        r.unwrap(1, 960, &red(b"1", &[]), OPUS).unwrap();
        let got = r.unwrap(4, 3840, &red(b"4", &[(1920, b"2"), (960, b"3")]), OPUS).unwrap();
        assert_eq!(got.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>(), vec![(2, 1920), (3, 2880), (4, 3840)]);
    }

    #[test]
    fn blocks_that_make_no_sense_are_not_recovered_and_bad_payloads_are_refused() {
        let mut r = RedReceiver::default();
        r.unwrap(1, 960, &red(b"1", &[]), OPUS).unwrap();
        // Offsets that grow toward the primary, a zero offset: skipped, the primary stands.
        let got = r.unwrap(4, 3840, &red(b"4", &[(960, b"2"), (1920, b"3")]), OPUS).unwrap();
        assert_eq!(got.iter().map(|p| p.0).collect::<Vec<_>>(), vec![2, 4]);
        // Another codec as the primary, a truncated payload, nothing at all.
        let foreign = RedEncoder::encode(0, b"pcmu", &[]);
        assert!(r.unwrap(5, 4800, &foreign, OPUS).is_none());
        assert!(r.unwrap(5, 4800, &[0x80 | OPUS, 0, 0], OPUS).is_none());
        assert!(r.unwrap(5, 4800, &[], OPUS).is_none());
        // Sequence numbers near zero do not underflow.
        let mut r = RedReceiver::default();
        assert_eq!(r.unwrap(0, 0, &red(b"0", &[(960, b"-1")]), OPUS).unwrap().len(), 1);
    }

    #[test]
    fn plain_packets_count_as_seen() {
        let mut r = RedReceiver::default();
        assert!(r.plain(5));
        assert!(r.plain(7));
        assert!(!r.plain(7));
        let got = r.unwrap(8, 7680, &red(b"8", &[(1920, b"6"), (960, b"7")]), OPUS).unwrap();
        assert_eq!(got.iter().map(|p| p.0).collect::<Vec<_>>(), vec![6, 8]);
    }

    #[test]
    fn redundancy_follows_the_viewers_loss() {
        let t0 = Instant::now();
        let later = t0 + LOSS_HOLD;
        assert_eq!(levels(None, None, false, false, t0), 1, "nothing measured yet");
        assert_eq!(levels(Some(0.0), None, false, false, t0), 0, "a link that never lost");
        assert_eq!(levels(Some(0.0), Some(t0), false, false, t0 + Duration::from_secs(3)), 1, "lost lately");
        assert_eq!(levels(Some(0.0), Some(t0), false, false, later), 0, "nothing lost for the hold");
        assert_eq!(levels(Some(0.02), Some(t0), false, false, t0), 1);
        assert_eq!(levels(Some(0.06), Some(t0), false, false, t0), MAX_RED_LEVELS, "random loss");
        assert_eq!(levels(Some(0.06), Some(t0), true, false, t0), 1, "congestion");
        assert_eq!(levels(Some(0.06), Some(t0), false, true, t0), 1, "a probe's overshoot");
    }

    #[test]
    fn a_viewer_gets_the_packet_before_as_redundancy_and_it_decodes() {
        let mut s = RedSender::new(63.into());
        let a: Arc<[u8]> = Arc::from(&b"first"[..]);
        let b: Arc<[u8]> = Arc::from(&b"second"[..]);
        let c: Arc<[u8]> = Arc::from(&b"third"[..]);
        let first = s.wrap(100, 48_000, &a, OPUS);
        let blocks = RedDecoder::decode(&first).unwrap();
        assert_eq!(blocks.len(), 1, "nothing before the first");
        let second = s.wrap(101, 48_960, &b, OPUS);
        let blocks = RedDecoder::decode(&second).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(primary_len(&second), Some(6));
        assert!(second.ends_with(b"second"));
        assert_eq!((blocks[0].timestamp_offset, blocks[0].payload), (960, &b"first"[..]));
        assert_eq!(blocks[1].payload, b"second");
        // A gap in what was sent (a switch): no block for a packet not right before.
        let third = s.wrap(105, 52_800, &c, OPUS);
        assert_eq!(RedDecoder::decode(&third).unwrap().len(), 1);
        // No redundancy on a link that does not lose: the primary alone.
        s.levels = 0;
        let plain: Arc<[u8]> = Arc::from(&b"plain"[..]);
        let alone = s.wrap(106, 53_760, &plain, OPUS);
        assert_eq!(RedDecoder::decode(&alone).unwrap().len(), 1);
        assert_eq!(alone.len(), 1 + plain.len());
        // Two levels on a lossier link; the viewer's receiver recovers both.
        s.levels = 2;
        let d: Arc<[u8]> = Arc::from(&b"fourth"[..]);
        let e: Arc<[u8]> = Arc::from(&b"fifth"[..]);
        s.wrap(107, 54_720, &d, OPUS);
        let fifth = s.wrap(108, 55_680, &e, OPUS);
        let mut r = RedReceiver::default();
        r.plain(105);
        let got = r.unwrap(108, 55_680, &fifth, OPUS).unwrap();
        assert_eq!(got.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>(), vec![(106, 53_760), (107, 54_720), (108, 55_680)]);
    }
}
