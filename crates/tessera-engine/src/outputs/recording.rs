//! A recording's control logic (RECORDING.md §2–3) as plain values: which tapped packets it
//! records (`Selection`), its task clock that stops while paused (`TaskClock`), and its state
//! and auto-stop rules (`RecordingControl`: LeaveCodes 0, 99, 100, 102, 103, 105). Time and
//! membership come in as values; the server's worker writes the files.

use crate::mcu::Subscribe;
use crate::sfu::{PublisherInfo, TapPacket};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tessera_media::{Codec, StreamKind};
use tessera_model::UserId;

/// No media from any subscribed stream while anchors are present: LeaveCode 100.
pub const NO_MEDIA_STOP: Duration = Duration::from_secs(300);
/// Paused this long: LeaveCode 102.
pub const MAX_PAUSE: Duration = Duration::from_secs(90 * 60);
/// Running this long: LeaveCode 103.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// A mixed recording whose mix job stopped publishing this long: LeaveCode 105.
pub const MIX_GONE_STOP: Duration = Duration::from_secs(3);
/// At most this many user streams are recorded at once (the earliest joined).
pub const MAX_STREAMS: usize = 25;

/// A recording's `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RecordingState {
    Prepared,
    Recording,
    Paused,
    Stopped,
    Finished,
}

impl RecordingState {
    pub fn parse(s: &str) -> Option<RecordingState> {
        Some(match s {
            "PREPARED" => RecordingState::Prepared,
            "RECORDING" => RecordingState::Recording,
            "PAUSED" => RecordingState::Paused,
            "STOPPED" => RecordingState::Stopped,
            "FINISHED" => RecordingState::Finished,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RecordingState::Prepared => "PREPARED",
            RecordingState::Recording => "RECORDING",
            RecordingState::Paused => "PAUSED",
            RecordingState::Stopped => "STOPPED",
            RecordingState::Finished => "FINISHED",
        }
    }

    /// STOPPED or FINISHED: the task no longer records.
    pub fn is_final(self) -> bool {
        matches!(self, RecordingState::Stopped | RecordingState::Finished)
    }
}

impl std::fmt::Display for RecordingState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Single {
        streams: Vec<StreamKind>,
        split: bool,
    },
    /// The mix job's user (`mix_<id>`) and whether the recording owns the job.
    Mixed {
        mix_user: UserId,
        owned_job: Option<String>,
    },
}

/// What a recording records: its mode and subscription (both may change while it runs).
#[derive(Debug, Clone)]
pub struct Selection {
    pub mode: Mode,
    pub subscribe: Subscribe,
}

impl Selection {
    /// Whether `p` is recorded, given the room's publishers now: a mixed recording takes its
    /// mix user; a single-stream one the chosen streams of anchors (never a mix), subscribed
    /// for that track, among the first `MAX_STREAMS` publishers.
    pub fn wants(&self, p: &TapPacket, publishers: &[PublisherInfo]) -> bool {
        match &self.mode {
            Mode::Mixed { mix_user, .. } => p.user == *mix_user,
            Mode::Single { streams, .. } => {
                streams.contains(&p.stream)
                    && !p.user.is_mix()
                    && publishers.iter().filter(|x| !x.user.is_mix()).take(MAX_STREAMS).any(|x| x.user == p.user && x.stream == p.stream)
                    && if p.codec == Codec::Opus { self.subscribe.audio(p.user.as_str()) } else { self.subscribe.video(p.user.as_str()) }
            }
        }
    }
}

/// The task clock (RECORDING.md §3): starts at the first sample, stops while paused; a task
/// resumed after a restart continues from where its clock had got to.
#[derive(Debug, Clone)]
pub struct TaskClock {
    start: Instant,
    paused_total: Duration,
    paused_since: Option<Instant>,
    offset_ms: i64,
}

impl TaskClock {
    pub fn new(start: Instant, offset_ms: i64) -> TaskClock {
        TaskClock { start, paused_total: Duration::ZERO, paused_since: None, offset_ms }
    }

    pub fn now_ms(&self, at: Instant) -> i64 {
        let paused = self.paused_total + self.paused_since.map(|p| at.saturating_duration_since(p)).unwrap_or_default();
        self.offset_ms + (at.saturating_duration_since(self.start).saturating_sub(paused)).as_millis() as i64
    }

    pub fn paused_ms(&self) -> i64 {
        self.paused_total.as_millis() as i64
    }
}

/// What the worker must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordingEvent {
    /// The first sample: the task is RECORDING (`started_at` is now).
    Started,
    /// Paused: every writer cuts its segment at task-clock `at_ms` and marks a discontinuity.
    Paused { at_ms: i64 },
    /// Recording again after `paused_ms` of pauses in all.
    Resumed { paused_ms: i64 },
    /// The task ends with this LeaveCode, its clock at `clock_ms` (TotalTime).
    Stop { code: u32, clock_ms: i64 },
}

/// A recording's state, clock and auto-stop rules.
pub struct RecordingControl {
    max_idle: Duration,
    mix_user: Option<UserId>,
    created: Instant,
    clock: Option<TaskClock>,
    offset_ms: i64,
    /// Since when no anchor publishes (from creation until the first one).
    anchors_absent_since: Option<Instant>,
    mix_gone_since: Option<Instant>,
    paused: bool,
    last_media: Instant,
    stopped: bool,
    out: VecDeque<RecordingEvent>,
}

impl RecordingControl {
    /// `clock_offset_ms` continues a resumed task's clock; `mix_user` is set for a mixed one.
    pub fn new(now: Instant, max_idle: Duration, mix_user: Option<UserId>, clock_offset_ms: i64) -> RecordingControl {
        RecordingControl {
            max_idle,
            mix_user,
            created: now,
            clock: None,
            offset_ms: clock_offset_ms,
            anchors_absent_since: Some(now),
            mix_gone_since: None,
            paused: false,
            last_media: now,
            stopped: false,
            out: VecDeque::new(),
        }
    }

    pub fn poll_event(&mut self) -> Option<RecordingEvent> {
        self.out.pop_front()
    }

    /// The task clock now (TotalTime so far).
    pub fn clock_ms(&self, now: Instant) -> i64 {
        self.clock.as_ref().map_or(self.offset_ms, |c| c.now_ms(now))
    }

    pub fn paused_ms(&self) -> i64 {
        self.clock.as_ref().map_or(0, |c| c.paused_ms())
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// The room's publishers now (the driver asks the SFU every few hundred ms).
    pub fn publishers(&mut self, publishers: &[PublisherInfo], now: Instant) {
        if publishers.iter().any(|p| !p.user.is_mix()) {
            self.anchors_absent_since = None;
        } else {
            self.anchors_absent_since.get_or_insert(now);
        }
        if let Some(mix) = &self.mix_user {
            if publishers.iter().any(|p| &p.user == mix) {
                self.mix_gone_since = None;
            } else if self.clock.is_some() {
                self.mix_gone_since.get_or_insert(now);
            }
        }
        self.handle_timeout(now);
    }

    /// A packet the recording wants arrived: the task-clock time to stamp it with, or `None`
    /// while paused (it is not recorded).
    pub fn sample(&mut self, now: Instant) -> Option<i64> {
        if self.paused || self.stopped {
            return None;
        }
        self.last_media = now;
        if self.clock.is_none() {
            self.clock = Some(TaskClock::new(now, self.offset_ms));
            self.out.push_back(RecordingEvent::Started);
        }
        Some(self.clock_ms(now))
    }

    /// Pause (the API allows it while RECORDING): the clock stops and segments are cut.
    pub fn pause(&mut self, now: Instant) {
        if self.paused || self.stopped {
            return;
        }
        self.paused = true;
        if let Some(c) = self.clock.as_mut() {
            c.paused_since = Some(now);
            let at_ms = c.now_ms(now);
            self.out.push_back(RecordingEvent::Paused { at_ms });
        }
    }

    pub fn resume(&mut self, now: Instant) {
        if !self.paused || self.stopped {
            return;
        }
        self.paused = false;
        if let Some(c) = self.clock.as_mut() {
            if let Some(p) = c.paused_since.take() {
                c.paused_total += now.saturating_duration_since(p);
            }
            let paused_ms = c.paused_ms();
            self.out.push_back(RecordingEvent::Resumed { paused_ms });
        }
    }

    /// Stop by request (LeaveCode 0).
    pub fn stop(&mut self, now: Instant) {
        self.finish(0, now);
    }

    /// Stopped from outside with a LeaveCode (2: the room was dismissed).
    pub fn stop_with(&mut self, code: u32, now: Instant) {
        self.finish(code, now);
    }

    fn finish(&mut self, code: u32, now: Instant) {
        if !self.stopped {
            self.stopped = true;
            let clock_ms = self.clock_ms(now);
            self.out.push_back(RecordingEvent::Stop { code, clock_ms });
        }
    }

    /// The auto-stop rules, in the spec's order of precedence.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.stopped {
            return;
        }
        let paused_since = self.clock.as_ref().and_then(|c| c.paused_since);
        let code = if paused_since.is_some_and(|p| now.saturating_duration_since(p) >= MAX_PAUSE) {
            Some(102)
        } else if now.saturating_duration_since(self.created) >= MAX_DURATION {
            Some(103)
        } else if self.anchors_absent_since.is_none() && !self.paused && now.saturating_duration_since(self.last_media) >= NO_MEDIA_STOP {
            Some(100)
        } else if self.anchors_absent_since.is_some_and(|t| now.saturating_duration_since(t) >= self.max_idle) {
            Some(99)
        } else if self.mix_gone_since.is_some_and(|t| now.saturating_duration_since(t) >= MIX_GONE_STOP) {
            Some(105)
        } else {
            None
        };
        if let Some(code) = code {
            self.finish(code, now);
        }
    }

    /// When the next auto-stop could fire (the worker wakes up then at the latest).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.stopped {
            return None;
        }
        let paused = self.clock.as_ref().and_then(|c| c.paused_since).map(|p| p + MAX_PAUSE);
        let no_media = (self.anchors_absent_since.is_none() && !self.paused).then_some(self.last_media + NO_MEDIA_STOP);
        let idle = self.anchors_absent_since.map(|t| t + self.max_idle);
        let mix = self.mix_gone_since.map(|t| t + MIX_GONE_STOP);
        [paused, Some(self.created + MAX_DURATION), no_media, idle, mix].into_iter().flatten().min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn publisher(user: &str) -> PublisherInfo {
        PublisherInfo { user: UserId::parse(user).unwrap(), stream: StreamKind::Main, join_order: 0, has_audio: true, has_video: true }
    }

    fn events(c: &mut RecordingControl) -> Vec<RecordingEvent> {
        std::iter::from_fn(|| c.poll_event()).collect()
    }

    #[test]
    fn the_clock_starts_at_the_first_sample_and_stops_while_paused() {
        let t0 = Instant::now();
        let mut c = RecordingControl::new(t0, Duration::from_secs(30), None, 0);
        c.publishers(&[publisher("alice")], at(t0, 100));
        assert_eq!(c.sample(at(t0, 1_000)), Some(0));
        assert_eq!(events(&mut c), vec![RecordingEvent::Started]);
        assert_eq!(c.sample(at(t0, 11_000)), Some(10_000));
        c.pause(at(t0, 12_000));
        assert_eq!(events(&mut c), vec![RecordingEvent::Paused { at_ms: 11_000 }]);
        assert_eq!(c.sample(at(t0, 13_000)), None, "nothing is recorded while paused");
        assert_eq!(c.clock_ms(at(t0, 20_000)), 11_000, "the clock stands still");
        c.resume(at(t0, 42_000));
        assert_eq!(events(&mut c), vec![RecordingEvent::Resumed { paused_ms: 30_000 }]);
        assert_eq!(c.sample(at(t0, 43_000)), Some(12_000));
        c.stop(at(t0, 50_000));
        assert_eq!(events(&mut c), vec![RecordingEvent::Stop { code: 0, clock_ms: 19_000 }]);
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn a_resumed_task_continues_its_clock() {
        let t0 = Instant::now();
        let mut c = RecordingControl::new(t0, Duration::from_secs(30), None, 65_000);
        assert_eq!(c.clock_ms(at(t0, 5_000)), 65_000);
        assert_eq!(c.sample(at(t0, 5_000)), Some(65_000));
        assert_eq!(c.sample(at(t0, 6_000)), Some(66_000));
    }

    #[test]
    fn no_anchor_for_max_idle_stops_with_99() {
        let t0 = Instant::now();
        let mut c = RecordingControl::new(t0, Duration::from_secs(30), None, 0);
        assert_eq!(c.poll_timeout(), Some(at(t0, 30_000)));
        c.publishers(&[publisher("mix_job1")], at(t0, 29_999));
        assert!(events(&mut c).is_empty(), "a mix is not an anchor, but 30 s have not passed");
        c.handle_timeout(at(t0, 30_000));
        assert_eq!(events(&mut c), vec![RecordingEvent::Stop { code: 99, clock_ms: 0 }]);
    }

    #[test]
    fn anchors_present_but_no_media_for_300_s_stops_with_100() {
        let t0 = Instant::now();
        let mut c = RecordingControl::new(t0, Duration::from_secs(30), None, 0);
        c.publishers(&[publisher("alice")], at(t0, 0));
        c.sample(at(t0, 10_000));
        assert_eq!(c.poll_timeout(), Some(at(t0, 310_000)));
        c.handle_timeout(at(t0, 309_999));
        c.sample(at(t0, 309_999));
        c.handle_timeout(at(t0, 609_998));
        assert_eq!(events(&mut c), vec![RecordingEvent::Started]);
        c.handle_timeout(at(t0, 609_999));
        assert_eq!(events(&mut c), vec![RecordingEvent::Stop { code: 100, clock_ms: 599_999 }]);
    }

    #[test]
    fn a_pause_does_not_count_as_missing_media_but_90_minutes_of_it_stops_with_102() {
        let t0 = Instant::now();
        let mut c = RecordingControl::new(t0, Duration::from_secs(30), None, 0);
        c.publishers(&[publisher("alice")], t0);
        c.sample(t0);
        c.pause(at(t0, 1_000));
        let ninety = MAX_PAUSE.as_millis() as u64;
        c.handle_timeout(at(t0, 1_000 + ninety - 1));
        assert_eq!(events(&mut c).len(), 2, "started and paused only: no 100 while paused");
        c.handle_timeout(at(t0, 1_000 + ninety));
        assert_eq!(events(&mut c), vec![RecordingEvent::Stop { code: 102, clock_ms: 1_000 }]);
    }

    #[test]
    fn a_day_of_recording_stops_with_103() {
        let t0 = Instant::now();
        let mut c = RecordingControl::new(t0, Duration::from_secs(30), None, 0);
        let day = MAX_DURATION.as_millis() as u64;
        for ms in (0..day).step_by(60_000) {
            c.publishers(&[publisher("alice")], at(t0, ms));
            c.sample(at(t0, ms));
            c.handle_timeout(at(t0, ms));
        }
        assert_eq!(events(&mut c), vec![RecordingEvent::Started]);
        c.handle_timeout(at(t0, day));
        assert_eq!(events(&mut c), vec![RecordingEvent::Stop { code: 103, clock_ms: day as i64 }]);
    }

    #[test]
    fn a_mixed_recording_stops_with_105_three_seconds_after_its_mix_leaves() {
        let t0 = Instant::now();
        let mix = UserId::parse("mix_job1").unwrap();
        let mut c = RecordingControl::new(t0, Duration::from_secs(30), Some(mix), 0);
        c.publishers(&[publisher("alice")], t0);
        assert!(events(&mut c).is_empty(), "no mix before the first sample is not a stop");
        c.publishers(&[publisher("alice"), publisher("mix_job1")], at(t0, 300));
        c.sample(at(t0, 400));
        c.publishers(&[publisher("alice")], at(t0, 10_000));
        c.publishers(&[publisher("alice")], at(t0, 12_999));
        assert_eq!(events(&mut c), vec![RecordingEvent::Started]);
        c.publishers(&[publisher("alice")], at(t0, 13_000));
        assert_eq!(events(&mut c), vec![RecordingEvent::Stop { code: 105, clock_ms: 12_600 }]);
    }

    #[test]
    fn the_selection_follows_mode_streams_subscription_and_the_stream_cap() {
        let packet = |user: &str, stream: StreamKind, codec: Codec| TapPacket {
            user: UserId::parse(user).unwrap(),
            stream,
            codec,
            seq: 1,
            ts: 0,
            marker: true,
            payload: Arc::from(&[][..]),
            audio_level: None,
            composition_ms: 0,
            picture: None,
            fallback_for: None,
            layer_switch: false,
            rid: None,
            route: crate::sfu::PacketRoute::All,
        };
        let mut publishers: Vec<PublisherInfo> = (0..30).map(|i| publisher(&format!("u{i}"))).collect();
        publishers.insert(0, publisher("mix_j"));
        let mut s = Selection { mode: Mode::Single { streams: vec![StreamKind::Main], split: true }, subscribe: Subscribe::everyone() };
        assert!(s.wants(&packet("u0", StreamKind::Main, Codec::H264), &publishers));
        assert!(!s.wants(&packet("u0", StreamKind::Aux, Codec::H264), &publishers), "aux not chosen");
        assert!(s.wants(&packet("u24", StreamKind::Main, Codec::Opus), &publishers));
        assert!(!s.wants(&packet("u25", StreamKind::Main, Codec::Opus), &publishers), "the 26th anchor stream is not recorded");
        assert!(!s.wants(&packet("mix_j", StreamKind::Main, Codec::H264), &publishers));
        s.subscribe.audio_deny = vec!["u1".into()];
        assert!(!s.wants(&packet("u1", StreamKind::Main, Codec::Opus), &publishers));
        assert!(s.wants(&packet("u1", StreamKind::Main, Codec::H264), &publishers));
        s.mode = Mode::Mixed { mix_user: UserId::parse("mix_j").unwrap(), owned_job: None };
        assert!(s.wants(&packet("mix_j", StreamKind::Main, Codec::H264), &publishers));
        assert!(!s.wants(&packet("u0", StreamKind::Main, Codec::H264), &publishers));
    }
}
