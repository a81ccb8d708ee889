//! Custom messages between participants (PRODUCT.md §8), the part that is not transport: what a
//! sender may send and the per-sender sliding-window rate limit with its `seq` numbering. Plain
//! values with injected time; room signaling (and, later, data channels) carries the messages.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// `cmd_id` is 1–10.
pub const CMD_IDS: std::ops::RangeInclusive<u8> = 1..=10;
/// Payload bytes, decoded.
pub const MAX_PAYLOAD: usize = 1000;
/// Per sender, in any sliding window of `WINDOW`: at most this many messages and bytes.
pub const MAX_MESSAGES: usize = 30;
pub const MAX_BYTES: usize = 8192;
pub const WINDOW: Duration = Duration::from_millis(1000);
/// `custom_rate_limited` goes to a sender at most this often.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// What happens to one message offered by a sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it with this `seq` (per sender, from 1, over accepted messages).
    Accept { seq: u32 },
    /// Over a limit: dropped; `warn` when the sender is to get `custom_rate_limited` now.
    Drop { warn: bool },
}

/// One sender's window of accepted messages and its numbering.
#[derive(Debug, Default)]
pub struct SenderLimit {
    accepted: VecDeque<(Instant, usize)>,
    bytes: usize,
    last_warned: Option<Instant>,
    seq: u32,
}

impl SenderLimit {
    pub fn offer(&mut self, bytes: usize, now: Instant) -> Verdict {
        while let Some(&(at, n)) = self.accepted.front() {
            if now.saturating_duration_since(at) < WINDOW {
                break;
            }
            self.accepted.pop_front();
            self.bytes -= n;
        }
        if self.accepted.len() >= MAX_MESSAGES || self.bytes + bytes > MAX_BYTES {
            let warn = self.last_warned.is_none_or(|t| now.saturating_duration_since(t) >= WARN_EVERY);
            if warn {
                self.last_warned = Some(now);
            }
            return Verdict::Drop { warn };
        }
        self.accepted.push_back((now, bytes));
        self.bytes += bytes;
        self.seq += 1;
        Verdict::Accept { seq: self.seq }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forty_messages_in_a_second_give_thirty_and_one_warning() {
        let (mut l, t0) = (SenderLimit::default(), Instant::now());
        let verdicts: Vec<Verdict> = (0..40).map(|i| l.offer(10, t0 + Duration::from_millis(i * 25))).collect();
        let seqs: Vec<u32> = verdicts.iter().filter_map(|v| if let Verdict::Accept { seq } = v { Some(*seq) } else { None }).collect();
        assert_eq!(seqs, (1..=30).collect::<Vec<_>>());
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Drop { warn: true }).count(), 1);
        // The window slides: a second after the first message, room again; numbering goes on.
        assert_eq!(l.offer(10, t0 + Duration::from_millis(1001)), Verdict::Accept { seq: 31 });
    }

    #[test]
    fn bytes_are_limited_too() {
        let (mut l, t0) = (SenderLimit::default(), Instant::now());
        for i in 0..8 {
            assert_eq!(l.offer(1000, t0), Verdict::Accept { seq: i + 1 });
        }
        assert_eq!(l.offer(1000, t0), Verdict::Drop { warn: true });
        assert_eq!(l.offer(100, t0), Verdict::Accept { seq: 9 }, "a small one still fits under 8192");
        assert_eq!(l.offer(1000, t0 + Duration::from_millis(500)), Verdict::Drop { warn: false }, "one warning a second");
    }
}
