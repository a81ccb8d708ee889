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

/// Why a custom message was refused (PRODUCT.md §5 codes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomError {
    NotAnchor,
    BadCmdId,
    TooLarge(usize),
    RateLimited,
    /// A data-channel frame with no `cmd_id` byte.
    Malformed,
}

impl CustomError {
    pub fn code(&self) -> &'static str {
        match self {
            CustomError::NotAnchor => "not_anchor",
            CustomError::BadCmdId => "custom_bad_cmd_id",
            CustomError::TooLarge(_) => "custom_too_large",
            CustomError::RateLimited => "custom_rate_limited",
            CustomError::Malformed => "bad_message",
        }
    }

    pub fn message(&self) -> String {
        match self {
            CustomError::NotAnchor => "only anchors send custom messages".into(),
            CustomError::BadCmdId => "cmd_id is 1 to 10".into(),
            CustomError::TooLarge(n) => format!("{n} bytes; at most {MAX_PAYLOAD}"),
            CustomError::RateLimited => "over 30 messages or 8192 bytes in a second; dropped".into(),
            CustomError::Malformed => "a data-channel frame is one cmd_id byte, then the payload".into(),
        }
    }
}

/// Checks what any sender may send: `cmd_id` 1–10 and at most 1000 bytes.
pub fn check(cmd_id: u8, payload: &[u8]) -> Result<(), CustomError> {
    if !CMD_IDS.contains(&cmd_id) {
        return Err(CustomError::BadCmdId);
    }
    if payload.len() > MAX_PAYLOAD {
        return Err(CustomError::TooLarge(payload.len()));
    }
    Ok(())
}

/// A data-channel send frame (§8): `cmd_id` (1 byte), then the payload.
pub fn parse_send_frame(frame: &[u8]) -> Result<(u8, &[u8]), CustomError> {
    let (&cmd_id, payload) = frame.split_first().ok_or(CustomError::Malformed)?;
    check(cmd_id, payload)?;
    Ok((cmd_id, payload))
}

/// A data-channel receive frame (§8): `cmd_id` (1 B), `seq` (u32 BE), the sender's user-id
/// length (1 B) and id, then the payload.
pub fn receive_frame(cmd_id: u8, seq: u32, from: &str, payload: &[u8]) -> Vec<u8> {
    let id = &from.as_bytes()[..from.len().min(255)];
    let mut out = Vec::with_capacity(6 + id.len() + payload.len());
    out.push(cmd_id);
    out.extend_from_slice(&seq.to_be_bytes());
    out.push(id.len() as u8);
    out.extend_from_slice(id);
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn frames_are_checked_and_built_as_the_spec_says() {
        assert_eq!(parse_send_frame(&[3, b'h', b'i']), Ok((3, &b"hi"[..])));
        assert_eq!(parse_send_frame(&[]), Err(CustomError::Malformed));
        assert_eq!(parse_send_frame(&[0, 1]), Err(CustomError::BadCmdId));
        assert_eq!(parse_send_frame(&[11]), Err(CustomError::BadCmdId));
        let mut big = vec![1u8];
        big.extend(std::iter::repeat_n(0u8, 1001));
        assert_eq!(parse_send_frame(&big), Err(CustomError::TooLarge(1001)));
        assert_eq!(parse_send_frame(&big[..1001]).map(|(_, p)| p.len()), Ok(1000));
        assert_eq!(receive_frame(2, 258, "ann", b"x"), vec![2, 0, 0, 1, 2, 3, b'a', b'n', b'n', b'x']);
    }

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
