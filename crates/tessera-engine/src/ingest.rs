//! A pull ingest's logic (PRODUCT.md §6.4, §10.2) as plain values: the task's life
//! STARTING → RUNNING ⇄ RETRYING → STOPPED | FAILED with the retry schedule and the play count
//! (`IngestMachine`), real-time pacing of a source read faster than real time (`Pacer`), and
//! the RTP that outlives one opened source so a reconnect or URL switch is seamless to viewers
//! (`IngestRtp`). The server's worker thread owns the blocking source and feeds these.

use crate::sfu::{IngestPacket, PacketRoute};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_media::h264::H264Packetizer;
use tessera_media::Codec;

/// Retries after a failure, counted from it (PRODUCT.md §10.2).
pub const RETRY_AT: [Duration; 3] = [Duration::ZERO, Duration::from_secs(1), Duration::from_secs(3)];
const MAX_RTP_PAYLOAD: usize = 1200;
/// A source that falls this far behind real time (a stall) is re-anchored instead of being
/// played out in a burst.
pub const MAX_LAG: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IngestState {
    Starting,
    Running,
    Retrying,
    Stopped,
    Failed,
}

impl IngestState {
    pub fn is_final(self) -> bool {
        matches!(self, IngestState::Stopped | IngestState::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IngestState::Starting => "STARTING",
            IngestState::Running => "RUNNING",
            IngestState::Retrying => "RETRYING",
            IngestState::Stopped => "STOPPED",
            IngestState::Failed => "FAILED",
        }
    }
}

/// The retry rule of PRODUCT.md §10.2 as a value: after a failure at `t`, attempts at `t`,
/// `t + 1 s` and `t + 3 s`; a success starts over.
#[derive(Debug, Default)]
pub struct RetrySchedule {
    first_failure: Option<Instant>,
    retries: usize,
}

impl RetrySchedule {
    /// A failure (of an attempt or of a running source) at `now`: when to try next, or `None`
    /// when the retries are used up.
    pub fn on_failure(&mut self, now: Instant) -> Option<Instant> {
        let first = *self.first_failure.get_or_insert(now);
        let at = RETRY_AT.get(self.retries).map(|d| first + *d);
        self.retries += 1;
        at
    }

    pub fn on_success(&mut self) {
        *self = RetrySchedule::default();
    }
}

/// Why a task ended (event 702's `Reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Api,
    SourceEnded,
    SourceFailed,
    /// The room was dismissed (`DELETE /v1/rooms/{room}`).
    RoomDismissed,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Api => "api",
            EndReason::SourceEnded => "source_ended",
            EndReason::SourceFailed => "source_failed",
            EndReason::RoomDismissed => "room_dismissed",
        }
    }
}

/// What the worker must record or report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestEvent {
    /// The task entered `state` (saved; `error` shown).
    State { state: IngestState, error: Option<String> },
    /// Event 701: 0 started, 1 failed for good, 2 about to retry.
    Status(i64),
    /// A file was played to its end once more (saved).
    PlaysDone(u64),
    /// Event 702: the task ended.
    Ended(EndReason),
}

/// The task's life.
pub struct IngestMachine {
    state: IngestState,
    schedule: RetrySchedule,
    /// Times a file is played; -1 loops forever.
    repeat: i64,
    plays_done: u64,
    /// When to open the source next (`None` while one plays, or once the task has ended).
    open_at: Option<Instant>,
    out: VecDeque<IngestEvent>,
}

impl IngestMachine {
    /// A task (new or resumed) in STARTING whose first attempt is due at `now`.
    pub fn new(repeat: i64, plays_done: u64, now: Instant) -> IngestMachine {
        IngestMachine { state: IngestState::Starting, schedule: RetrySchedule::default(), repeat, plays_done, open_at: Some(now), out: VecDeque::new() }
    }

    pub fn state(&self) -> IngestState {
        self.state
    }

    pub fn poll_event(&mut self) -> Option<IngestEvent> {
        self.out.pop_front()
    }

    /// When the worker should open the source (again); `None` while one plays or when done.
    pub fn open_at(&self) -> Option<Instant> {
        self.open_at
    }

    fn enter(&mut self, state: IngestState, error: Option<String>) {
        match state {
            IngestState::Running if self.state != IngestState::Running => self.out.push_back(IngestEvent::Status(0)),
            IngestState::Retrying => self.out.push_back(IngestEvent::Status(2)),
            IngestState::Failed => self.out.push_back(IngestEvent::Status(1)),
            _ => {}
        }
        self.state = state;
        self.out.push_back(IngestEvent::State { state, error });
    }

    fn end(&mut self, state: IngestState, error: Option<String>, reason: EndReason) {
        if self.state.is_final() {
            return;
        }
        self.open_at = None;
        self.enter(state, error);
        self.out.push_back(IngestEvent::Ended(reason));
    }

    /// The source opened and plays.
    pub fn opened(&mut self) {
        if self.state.is_final() {
            return;
        }
        self.open_at = None;
        self.schedule.on_success();
        self.enter(IngestState::Running, None);
    }

    /// The source reached its end: a file counts a play and plays again until `repeat` plays;
    /// a live source ending is a failure.
    pub fn ended(&mut self, live: bool, now: Instant) {
        if self.state.is_final() {
            return;
        }
        if live {
            return self.failed("the source ended".into(), now);
        }
        self.plays_done += 1;
        self.out.push_back(IngestEvent::PlaysDone(self.plays_done));
        if self.repeat >= 0 && self.plays_done >= self.repeat as u64 {
            self.end(IngestState::Stopped, None, EndReason::SourceEnded);
        } else {
            self.open_at = Some(now);
        }
    }

    /// An attempt failed, or a playing source broke: retry on schedule, or fail for good.
    pub fn failed(&mut self, error: String, now: Instant) {
        if self.state.is_final() {
            return;
        }
        match self.schedule.on_failure(now) {
            Some(at) => {
                self.open_at = Some(at);
                self.enter(IngestState::Retrying, Some(error));
            }
            None => self.end(IngestState::Failed, Some(error), EndReason::SourceFailed),
        }
    }

    /// `PATCH url`: the new URL opens at once.
    pub fn switched(&mut self, now: Instant) {
        if !self.state.is_final() {
            self.open_at = Some(now);
        }
    }

    /// `DELETE`.
    pub fn stop(&mut self) {
        self.stop_for(EndReason::Api);
    }

    /// Stopped from outside, saying why (`Api`, `RoomDismissed`).
    pub fn stop_for(&mut self, reason: EndReason) {
        self.end(IngestState::Stopped, None, reason);
    }

    /// The media engine went away: nothing can be published.
    pub fn engine_lost(&mut self) {
        self.end(IngestState::Failed, Some("the media engine stopped".into()), EndReason::SourceFailed);
    }
}

/// Paces media read faster than real time: each item is due at its media time on a wall clock
/// anchored at the first one; a stall of more than `MAX_LAG` re-anchors rather than bursts.
#[derive(Debug, Default)]
pub struct Pacer {
    anchor: Option<(Instant, i64)>,
}

impl Pacer {
    /// When media due at `due_ms` should be sent, given that it is `now`.
    pub fn due(&mut self, due_ms: i64, now: Instant) -> Instant {
        let (wall, media_ms) = *self.anchor.get_or_insert((now, due_ms));
        let target = wall + Duration::from_millis((due_ms - media_ms).max(0) as u64);
        if now > target && now - target > MAX_LAG {
            self.anchor = Some((now, due_ms));
            return now;
        }
        target
    }

    /// A new source starts its own timeline.
    pub fn reset(&mut self) {
        self.anchor = None;
    }
}

/// One source's media for the SFU.
pub enum IngestMedia {
    /// H.264 access unit as NAL units.
    H264 {
        ts_ms: i64,
        nalus: Vec<Vec<u8>>,
    },
    Vp8 {
        ts_ms: i64,
        frame: Vec<u8>,
        keyframe: bool,
    },
    /// Opus frames (48 kHz timestamps, dBov level when measured) due at `due_ms`.
    Opus {
        due_ms: i64,
        frames: Vec<(u32, Vec<u8>, Option<u8>)>,
    },
}

/// RTP state that outlives one opened source: sequence numbers and SSRCs continue across
/// reconnects and URL switches, and the next source starts one frame after the last.
pub struct IngestRtp {
    h264: H264Packetizer,
    video_seq: u64,
    audio_seq: u64,
    video_ssrc: u32,
    audio_ssrc: u32,
    next_base_ms: i64,
}

impl Default for IngestRtp {
    fn default() -> Self {
        IngestRtp {
            h264: H264Packetizer::new(MAX_RTP_PAYLOAD),
            video_seq: 1,
            audio_seq: 1,
            video_ssrc: tessera_model::random::ssrc(),
            audio_ssrc: tessera_model::random::ssrc(),
            next_base_ms: 0,
        }
    }
}

impl IngestRtp {
    /// Where the next opened source's timestamps start (ms).
    pub fn next_base_ms(&self) -> i64 {
        self.next_base_ms
    }

    pub fn packetize(&mut self, media: IngestMedia) -> Vec<IngestPacket> {
        let mut packets = Vec::new();
        match media {
            IngestMedia::H264 { ts_ms, nalus } => {
                self.next_base_ms = self.next_base_ms.max(ts_ms + 40);
                let ts90 = (ts_ms as u64).wrapping_mul(90) as u32;
                let units: Vec<&[u8]> = nalus.iter().map(|n| n.as_slice()).collect();
                let mut payloads = Vec::new();
                self.h264.push(&units, ts90, &mut payloads);
                for p in payloads {
                    packets.push(IngestPacket {
                        ssrc: self.video_ssrc,
                        seq: self.video_seq,
                        ts: p.ts,
                        marker: p.marker,
                        keyframe: p.keyframe,
                        codec: Codec::H264,
                        payload: Arc::from(p.payload),
                        audio_level: None,
                        route: PacketRoute::All,
                        composition_ms: 0,
                        picture: None,
                        rid: None,
                    });
                    self.video_seq += 1;
                }
            }
            IngestMedia::Vp8 { ts_ms, frame, keyframe } => {
                self.next_base_ms = self.next_base_ms.max(ts_ms + 40);
                let ts90 = (ts_ms as u64).wrapping_mul(90) as u32;
                let mut payloads = Vec::new();
                tessera_media::vp8::packetize(&frame, MAX_RTP_PAYLOAD, &mut payloads);
                let n = payloads.len();
                for (i, p) in payloads.into_iter().enumerate() {
                    packets.push(IngestPacket {
                        ssrc: self.video_ssrc,
                        seq: self.video_seq,
                        ts: ts90,
                        marker: i + 1 == n,
                        keyframe,
                        codec: Codec::Vp8,
                        payload: Arc::from(p),
                        audio_level: None,
                        route: PacketRoute::All,
                        composition_ms: 0,
                        picture: None,
                        rid: None,
                    });
                    self.video_seq += 1;
                }
            }
            IngestMedia::Opus { due_ms, frames } => {
                self.next_base_ms = self.next_base_ms.max(due_ms + 20);
                for (ts, data, audio_level) in frames {
                    packets.push(IngestPacket {
                        ssrc: self.audio_ssrc,
                        seq: self.audio_seq,
                        ts,
                        marker: false,
                        keyframe: true,
                        codec: Codec::Opus,
                        payload: Arc::from(data),
                        audio_level,
                        route: PacketRoute::All,
                        composition_ms: 0,
                        picture: None,
                        rid: None,
                    });
                    self.audio_seq += 1;
                }
            }
        }
        packets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn events(m: &mut IngestMachine) -> Vec<IngestEvent> {
        std::iter::from_fn(|| m.poll_event()).collect()
    }

    #[test]
    fn retries_come_at_0_1_and_3_seconds_after_the_failure_then_give_up() {
        let mut s = RetrySchedule::default();
        let t = Instant::now();
        assert_eq!(s.on_failure(t), Some(t));
        assert_eq!(s.on_failure(t + Duration::from_millis(200)), Some(t + Duration::from_secs(1)));
        assert_eq!(s.on_failure(t + Duration::from_millis(1200)), Some(t + Duration::from_secs(3)));
        assert_eq!(s.on_failure(t + Duration::from_millis(3100)), None);
        s.on_success();
        let later = t + Duration::from_secs(60);
        assert_eq!(s.on_failure(later), Some(later), "a success starts the schedule over");
    }

    #[test]
    fn states_serialize_as_the_spec_spells_them() {
        for (s, text) in [(IngestState::Starting, "STARTING"), (IngestState::Retrying, "RETRYING"), (IngestState::Failed, "FAILED")] {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{text}\""));
            assert_eq!(s.as_str(), text);
        }
        assert!(IngestState::Stopped.is_final() && !IngestState::Running.is_final());
    }

    #[test]
    fn a_live_source_that_drops_retries_then_fails_with_701_and_702() {
        let t0 = Instant::now();
        let mut m = IngestMachine::new(-1, 0, t0);
        assert_eq!(m.open_at(), Some(t0));
        m.opened();
        assert_eq!(events(&mut m), vec![IngestEvent::Status(0), IngestEvent::State { state: IngestState::Running, error: None }]);
        m.ended(true, at(t0, 10_000));
        assert_eq!(m.open_at(), Some(at(t0, 10_000)));
        assert_eq!(events(&mut m), vec![IngestEvent::Status(2), IngestEvent::State { state: IngestState::Retrying, error: Some("the source ended".into()) }]);
        m.failed("connection refused".into(), at(t0, 10_050));
        assert_eq!(m.open_at(), Some(at(t0, 11_000)));
        m.failed("connection refused".into(), at(t0, 11_050));
        assert_eq!(m.open_at(), Some(at(t0, 13_000)));
        events(&mut m);
        m.failed("connection refused".into(), at(t0, 13_050));
        assert_eq!(m.open_at(), None);
        assert_eq!(
            events(&mut m),
            vec![IngestEvent::Status(1), IngestEvent::State { state: IngestState::Failed, error: Some("connection refused".into()) }, IngestEvent::Ended(EndReason::SourceFailed)]
        );
        m.stop();
        assert!(events(&mut m).is_empty(), "a final state is final");
    }

    #[test]
    fn a_recovered_source_starts_the_schedule_over_without_a_second_started_event() {
        let t0 = Instant::now();
        let mut m = IngestMachine::new(-1, 0, t0);
        m.opened();
        m.failed("reset".into(), at(t0, 5_000));
        m.opened();
        let e = events(&mut m);
        assert_eq!(e.iter().filter(|e| **e == IngestEvent::Status(0)).count(), 2, "701/0 again after a retry: {e:?}");
        m.failed("reset".into(), at(t0, 60_000));
        assert_eq!(m.open_at(), Some(at(t0, 60_000)), "the schedule started over");
    }

    #[test]
    fn a_file_plays_repeat_times_then_stops_with_source_ended() {
        let t0 = Instant::now();
        let mut m = IngestMachine::new(2, 0, t0);
        m.opened();
        m.ended(false, at(t0, 4_000));
        assert_eq!(m.open_at(), Some(at(t0, 4_000)), "played once: again at once");
        m.opened();
        events(&mut m);
        m.ended(false, at(t0, 8_000));
        assert_eq!(events(&mut m), vec![IngestEvent::PlaysDone(2), IngestEvent::State { state: IngestState::Stopped, error: None }, IngestEvent::Ended(EndReason::SourceEnded)]);
        // A resumed task counts the plays it already made.
        let mut m = IngestMachine::new(2, 1, t0);
        m.opened();
        m.ended(false, at(t0, 4_000));
        assert_eq!(m.state(), IngestState::Stopped);
    }

    #[test]
    fn a_stop_ends_with_api() {
        let t0 = Instant::now();
        let mut m = IngestMachine::new(-1, 0, t0);
        m.stop();
        assert_eq!(events(&mut m), vec![IngestEvent::State { state: IngestState::Stopped, error: None }, IngestEvent::Ended(EndReason::Api)]);
        assert_eq!(m.open_at(), None);
    }

    #[test]
    fn the_pacer_follows_media_time_and_reanchors_after_a_stall() {
        let t0 = Instant::now();
        let mut p = Pacer::default();
        assert_eq!(p.due(1_000, t0), t0);
        assert_eq!(p.due(1_040, at(t0, 5)), at(t0, 40), "read early: wait");
        assert_eq!(p.due(1_080, at(t0, 600)), at(t0, 80), "behind by less than a second: send now, keep the anchor");
        assert_eq!(p.due(1_120, at(t0, 3_000)), at(t0, 3_000), "a stall: re-anchored");
        assert_eq!(p.due(1_160, at(t0, 3_001)), at(t0, 3_040));
    }

    #[test]
    fn rtp_continues_across_sources() {
        let mut rtp = IngestRtp::default();
        let a = rtp.packetize(IngestMedia::H264 { ts_ms: 0, nalus: vec![vec![0x65; 3000]] });
        assert!(a.len() >= 3 && a.last().unwrap().marker);
        assert_eq!(rtp.next_base_ms(), 40);
        let b = rtp.packetize(IngestMedia::Opus { due_ms: 100, frames: vec![(4800, vec![1, 2, 3], Some(30))] });
        assert_eq!((b[0].seq, b[0].ts), (1, 4800));
        assert_eq!(rtp.next_base_ms(), 120);
        let c = rtp.packetize(IngestMedia::H264 { ts_ms: 120, nalus: vec![vec![0x41, 1]] });
        assert_eq!(c[0].seq, a.last().unwrap().seq + 1, "video sequence numbers continue");
        assert_eq!(c[0].ssrc, a[0].ssrc);
    }
}
