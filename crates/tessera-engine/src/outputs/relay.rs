//! A relay's logic (RECORDING.md §1) as plain values: `RelayMachine` holds the relay state
//! (WAITING/ACTIVE/STOPPED), the idle timer and every URL's state machine with the spec's retry
//! schedule; `FlvProducer` turns the source's tapped packets into FLV tags. Neither reads the
//! clock, sleeps or touches a socket: the server's driver feeds them time, membership and
//! connection outcomes and carries out what `poll_output` asks (connect, disconnect, start or
//! stop converting media, report event 401, save).

use super::tap_input::{AacUnit, OpusToAac, VideoInput, VideoUnit};
use crate::sfu::TapPacket;
use serde::{Deserialize, Serialize, Serializer};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tessera_media::h264::{nal_type, NAL_PPS, NAL_SPS};
use tessera_media::{Codec, StreamKind};
use tessera_model::UserId;
use tessera_rtmp::client::PushTarget;
use tessera_rtmp::flv;

/// At most this many URLs per relay.
pub const MAX_URLS: usize = 10;
/// A URL that has not reached RUNNING this long after its series started gives up.
pub const GIVE_UP: Duration = Duration::from_secs(60);
/// Event 401 repeats this often while a URL is CONNECTING or RECOVERING.
pub const REPORT_EVERY: Duration = Duration::from_secs(5);
/// How long a stopping relay waits for its connections to close before it says STOPPED.
pub const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// A URL's `status` (RECORDING.md §1.1), serialized as its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum UrlStatus {
    Idle = 0,
    Connecting = 1,
    Running = 2,
    Recovering = 3,
    Failure = 4,
    Disconnecting = 5,
}

impl UrlStatus {
    pub fn code(self) -> u8 {
        self as u8
    }

    /// States reported again every 5 s and bounded by the 60 s give-up.
    fn waiting(self) -> bool {
        matches!(self, UrlStatus::Connecting | UrlStatus::Recovering)
    }
}

impl Serialize for UrlStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.code())
    }
}

/// The relay's `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RelayState {
    Waiting,
    Active,
    Stopped,
}

/// The tracks a relay carries (fixed for its life).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayMedia {
    AudioVideo,
    Audio,
    Video,
}

impl RelayMedia {
    pub fn parse(s: &str) -> Option<RelayMedia> {
        match s {
            "audio_video" => Some(RelayMedia::AudioVideo),
            "audio" => Some(RelayMedia::Audio),
            "video" => Some(RelayMedia::Video),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RelayMedia::AudioVideo => "audio_video",
            RelayMedia::Audio => "audio",
            RelayMedia::Video => "video",
        }
    }

    pub fn video(self) -> bool {
        self != RelayMedia::Audio
    }

    pub fn audio(self) -> bool {
        self != RelayMedia::Video
    }
}

/// Attempts at 0, 1, 2 and 4 s after a series starts, then every 8 s; `None` once 60 s have
/// passed (RECORDING.md §1.1).
#[derive(Debug, Clone)]
pub struct UrlRetry {
    series_start: Instant,
    attempts: u32,
}

impl UrlRetry {
    pub fn new(now: Instant) -> UrlRetry {
        UrlRetry { series_start: now, attempts: 0 }
    }

    /// When to make the next attempt, or `None` to give up.
    pub fn next_attempt(&mut self) -> Option<Instant> {
        let offset = match self.attempts {
            0 => 0,
            1 => 1,
            2 => 2,
            3 => 4,
            n => 4 + 8 * (n as u64 - 3),
        };
        self.attempts += 1;
        let offset = Duration::from_secs(offset);
        (offset < GIVE_UP).then_some(self.series_start + offset)
    }

    pub fn given_up(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.series_start) >= GIVE_UP
    }
}

/// What `GET /v1/relays/{id}` shows of one URL.
#[derive(Debug, Clone, Serialize)]
pub struct UrlView {
    pub url: String,
    pub status: UrlStatus,
    pub error_code: u32,
    pub error_msg: String,
    pub since: i64,
    /// Every status entered, in order, with its time (ms), as event 401 reported it.
    pub history: Vec<(UrlStatus, i64)>,
}

/// Why a relay stops, and the URLs' `error_msg` for it (issue 10, defect 18).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopCause {
    Request,
    /// The server is shutting down: the relay resumes at the next start.
    Shutdown,
    /// The source was absent for `max_idle_time` (LeaveCode 99).
    Idle,
    /// The media path failed (LeaveCode 104).
    Failed(String),
}

impl StopCause {
    pub fn leave_code(&self) -> u32 {
        match self {
            StopCause::Idle => 99,
            StopCause::Failed(_) => 104,
            StopCause::Request | StopCause::Shutdown => 0,
        }
    }

    fn url_message(&self) -> &'static str {
        match self {
            StopCause::Request => "stopped by request",
            StopCause::Shutdown => "stopped: the server is shutting down",
            StopCause::Idle => "stopped: the source sent no media for max_idle_time",
            StopCause::Failed(_) => "stopped: the relay failed",
        }
    }
}

/// How one connection attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptEnd {
    /// Closed because the driver was told to (`RelayOutput::Disconnect`).
    Closed,
    /// Failed with the spec's `error_code` and a message; `was_running` once it had reached
    /// RUNNING (a transient break: a new 60 s series in RECOVERING).
    Failed { code: u32, msg: String, was_running: bool },
}

/// What the driver must do or report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayOutput {
    /// Event 401 for one URL (a change of status, or the 5 s repeat while waiting).
    UrlStatus { url: String, status: UrlStatus, code: u32, msg: String },
    /// Open a connection to `url` and push; report with `url_running` and `url_ended`.
    Connect { url: String },
    /// Close `url`'s connection; it reports `url_ended(Closed)`.
    Disconnect { url: String },
    /// Convert the source's media (it publishes).
    MediaStart,
    /// Stop converting (the source left or changed, or the relay stops).
    MediaStop,
    /// The record changed in what is saved (URL list, source, state).
    Save,
    /// The relay has stopped with this leave code.
    Stopped { leave_code: u32 },
}

#[derive(Debug)]
struct UrlMachine {
    view: UrlView,
    /// A bad URL fails at once (error 1) without attempts.
    target_error: Option<String>,
    retry: UrlRetry,
    next_attempt: Option<Instant>,
    /// A connection attempt is under way (the driver owns it).
    attempting: bool,
    reported_at: Instant,
    /// Closing: the stop message, and when to give up waiting for the connection.
    closing: Option<(&'static str, Instant)>,
}

/// The relay: its state, its source's presence and idle timer, and its URLs.
pub struct RelayMachine {
    state: RelayState,
    urls: Vec<UrlMachine>,
    /// URLs removed by PATCH, winding down 5 → 0 outside the record.
    leaving: Vec<UrlMachine>,
    max_idle: Duration,
    absent_since: Option<Instant>,
    media_running: bool,
    stopping: Option<StopCause>,
    leave_code: Option<u32>,
    /// The wall clock at `epoch.0`, so times shown in ms follow the injected monotonic time.
    epoch: (Instant, i64),
    out: VecDeque<RelayOutput>,
}

impl RelayMachine {
    /// A relay in WAITING with its URLs in 0; `unix_ms` is the wall clock at `now`.
    pub fn new(urls: &[String], max_idle: Duration, now: Instant, unix_ms: i64) -> RelayMachine {
        let mut m = RelayMachine {
            state: RelayState::Waiting,
            urls: Vec::new(),
            leaving: Vec::new(),
            max_idle,
            absent_since: Some(now),
            media_running: false,
            stopping: None,
            leave_code: None,
            epoch: (now, unix_ms),
            out: VecDeque::new(),
        };
        m.urls = urls.iter().map(|u| m.url_machine(u, now)).collect();
        m
    }

    fn ms(&self, now: Instant) -> i64 {
        self.epoch.1 + now.saturating_duration_since(self.epoch.0).as_millis() as i64
    }

    fn url_machine(&self, url: &str, now: Instant) -> UrlMachine {
        let ms = self.ms(now);
        UrlMachine {
            view: UrlView { url: url.to_string(), status: UrlStatus::Idle, error_code: 0, error_msg: String::new(), since: ms, history: vec![(UrlStatus::Idle, ms)] },
            target_error: PushTarget::parse(url).err(),
            retry: UrlRetry::new(now),
            next_attempt: None,
            attempting: false,
            reported_at: now,
            closing: None,
        }
    }

    pub fn state(&self) -> RelayState {
        self.state
    }

    pub fn leave_code(&self) -> Option<u32> {
        self.leave_code
    }

    pub fn urls(&self) -> Vec<UrlView> {
        self.urls.iter().map(|u| u.view.clone()).collect()
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.is_some()
    }

    pub fn poll_output(&mut self) -> Option<RelayOutput> {
        self.out.pop_front()
    }

    /// The next time `handle_timeout` has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == RelayState::Stopped {
            return None;
        }
        let urls = self.urls.iter().chain(&self.leaving);
        let url_times = urls.flat_map(|u| {
            let attempt = u.next_attempt.filter(|_| !u.attempting && u.closing.is_none());
            let report = u.view.status.waiting().then(|| u.reported_at + REPORT_EVERY);
            let close = u.closing.map(|(_, deadline)| deadline);
            [attempt, report, close]
        });
        let idle = if self.stopping.is_none() { self.absent_since.map(|t| t + self.max_idle) } else { None };
        url_times.chain([idle]).flatten().min()
    }

    /// Whether the source publishes now (the driver asks the SFU; the answer may repeat).
    pub fn source_present(&mut self, present: bool, now: Instant) {
        if self.stopping.is_some() {
            return;
        }
        if present {
            self.absent_since = None;
            if self.state == RelayState::Waiting {
                // URLs start connecting when the source first publishes.
                self.state = RelayState::Active;
                self.out.push_back(RelayOutput::Save);
                for i in 0..self.urls.len() {
                    self.start_url(i, now);
                }
            }
            if !self.media_running {
                self.media_running = true;
                self.out.push_back(RelayOutput::MediaStart);
            }
        } else {
            // Open connections are kept, carrying no data, until max_idle_time.
            self.absent_since.get_or_insert(now);
            self.media_stop();
        }
    }

    /// `PATCH source`: the converter restarts on the new source once it publishes (a new
    /// sequence header; timestamps stay on the relay's clock).
    pub fn source_changed(&mut self) {
        self.out.push_back(RelayOutput::Save);
        self.media_stop();
    }

    /// The media path failed (e.g. an encoder could not be made): the relay stops with 104.
    pub fn media_failed(&mut self, msg: String, now: Instant) {
        self.media_running = false;
        self.stop(StopCause::Failed(msg), now);
    }

    fn media_stop(&mut self) {
        if self.media_running {
            self.media_running = false;
            self.out.push_back(RelayOutput::MediaStop);
        }
    }

    /// `PATCH urls`: added URLs start, removed ones go 5 → 0, listed ones in 0 or 4 restart
    /// (added and restarted ones once the relay is ACTIVE).
    pub fn set_urls(&mut self, urls: &[String], now: Instant) {
        if self.stopping.is_some() {
            return;
        }
        let (kept, removed): (Vec<UrlMachine>, Vec<UrlMachine>) = std::mem::take(&mut self.urls).into_iter().partition(|u| urls.contains(&u.view.url));
        self.urls = kept;
        for u in urls {
            if !self.urls.iter().any(|x| &x.view.url == u) {
                let m = self.url_machine(u, now);
                self.urls.push(m);
            }
        }
        let ms = self.ms(now);
        for mut u in removed {
            close_url(&mut u, StopCause::Request.url_message(), ms, now, &mut self.out);
            self.leaving.push(u);
        }
        self.leaving.retain(|u| u.view.status != UrlStatus::Idle);
        if self.state == RelayState::Active {
            for i in 0..self.urls.len() {
                if matches!(self.urls[i].view.status, UrlStatus::Idle | UrlStatus::Failure) && !self.urls[i].attempting {
                    self.start_url(i, now);
                }
            }
        }
        self.out.push_back(RelayOutput::Save);
    }

    /// Stops the relay: every URL goes 5 → 0 (its connection closed), then STOPPED.
    pub fn stop(&mut self, cause: StopCause, now: Instant) {
        if self.stopping.is_some() || self.state == RelayState::Stopped {
            return;
        }
        self.media_stop();
        let msg = cause.url_message();
        let ms = self.ms(now);
        self.stopping = Some(cause);
        for u in &mut self.urls {
            close_url(u, msg, ms, now, &mut self.out);
        }
        self.finish_stop_if_done();
    }

    /// A connection reached RUNNING (publish accepted, first keyframe sent).
    pub fn url_running(&mut self, url: &str, now: Instant) {
        let ms = self.ms(now);
        if let Some(u) = self.urls.iter_mut().find(|u| u.view.url == url && u.closing.is_none()) {
            set_status(u, UrlStatus::Running, None, ms, now, &mut self.out);
        }
    }

    /// A connection attempt ended.
    pub fn url_ended(&mut self, url: &str, end: AttemptEnd, now: Instant) {
        let ms = self.ms(now);
        let Some(u) = self.urls.iter_mut().chain(self.leaving.iter_mut()).find(|u| u.view.url == url && u.attempting) else { return };
        u.attempting = false;
        if u.closing.is_some() {
            set_status(u, UrlStatus::Idle, None, ms, now, &mut self.out);
            u.closing = None;
        } else {
            let (code, msg, was_running) = match end {
                AttemptEnd::Failed { code, msg, was_running } => (code, msg, was_running),
                // Closed without being asked: the same as a broken connection.
                AttemptEnd::Closed => (4, "the connection ended".to_string(), u.view.status == UrlStatus::Running),
            };
            if was_running {
                u.retry = UrlRetry::new(now);
                set_status(u, UrlStatus::Recovering, Some((code, msg)), ms, now, &mut self.out);
            } else {
                // Still CONNECTING (or RECOVERING): the error shows, no new event.
                u.view.error_code = code;
                u.view.error_msg = msg;
            }
            match u.retry.next_attempt() {
                Some(at) if !u.retry.given_up(now) => u.next_attempt = Some(at),
                _ => give_up(u, ms, now, &mut self.out),
            }
        }
        self.leaving.retain(|u| u.view.status != UrlStatus::Idle);
        self.finish_stop_if_done();
    }

    /// Due attempts, 5 s repeats of event 401, close deadlines and the idle stop.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == RelayState::Stopped {
            return;
        }
        let ms = self.ms(now);
        for u in self.urls.iter_mut().chain(self.leaving.iter_mut()) {
            if let Some((_, deadline)) = u.closing {
                if now >= deadline {
                    // The connection did not close in time: it is dropped all the same.
                    u.closing = None;
                    u.attempting = false;
                    set_status(u, UrlStatus::Idle, None, ms, now, &mut self.out);
                }
                continue;
            }
            if u.view.status.waiting() && now >= u.reported_at + REPORT_EVERY {
                u.reported_at = now;
                self.out.push_back(RelayOutput::UrlStatus { url: u.view.url.clone(), status: u.view.status, code: u.view.error_code, msg: u.view.error_msg.clone() });
            }
            if u.next_attempt.is_some_and(|at| now >= at) && !u.attempting {
                u.next_attempt = None;
                u.attempting = true;
                self.out.push_back(RelayOutput::Connect { url: u.view.url.clone() });
            }
        }
        self.leaving.retain(|u| u.view.status != UrlStatus::Idle);
        if self.stopping.is_none() && self.absent_since.is_some_and(|t| now >= t + self.max_idle) {
            self.stop(StopCause::Idle, now);
        }
        self.finish_stop_if_done();
    }

    fn start_url(&mut self, i: usize, now: Instant) {
        let ms = self.ms(now);
        let u = &mut self.urls[i];
        if let Some(e) = u.target_error.clone() {
            set_status(u, UrlStatus::Failure, Some((1, e)), ms, now, &mut self.out);
            set_status(u, UrlStatus::Idle, None, ms, now, &mut self.out);
            return;
        }
        u.retry = UrlRetry::new(now);
        u.next_attempt = u.retry.next_attempt();
        set_status(u, UrlStatus::Connecting, None, ms, now, &mut self.out);
        // The first attempt is due at once.
        if u.next_attempt.is_some_and(|at| at <= now) {
            u.next_attempt = None;
            u.attempting = true;
            self.out.push_back(RelayOutput::Connect { url: u.view.url.clone() });
        }
    }

    fn finish_stop_if_done(&mut self) {
        let Some(cause) = &self.stopping else { return };
        if self.state == RelayState::Stopped || self.urls.iter().chain(&self.leaving).any(|u| u.view.status != UrlStatus::Idle) {
            return;
        }
        let code = cause.leave_code();
        self.state = RelayState::Stopped;
        self.leave_code = Some(code);
        self.out.push_back(RelayOutput::Stopped { leave_code: code });
    }
}

/// Enters `status` (an event when it changes); `error` replaces the error, RUNNING clears it.
fn set_status(u: &mut UrlMachine, status: UrlStatus, error: Option<(u32, String)>, ms: i64, now: Instant, out: &mut VecDeque<RelayOutput>) {
    let changed = u.view.status != status;
    if let Some((code, msg)) = error {
        u.view.error_code = code;
        u.view.error_msg = msg;
    } else if status == UrlStatus::Running {
        u.view.error_code = 0;
        u.view.error_msg.clear();
    }
    if changed {
        u.view.status = status;
        u.view.since = ms;
        u.view.history.push((status, ms));
        u.reported_at = now;
        out.push_back(RelayOutput::UrlStatus { url: u.view.url.clone(), status, code: u.view.error_code, msg: u.view.error_msg.clone() });
    }
}

/// 60 s without success: 4 → 0, until a PATCH lists the URL again.
fn give_up(u: &mut UrlMachine, ms: i64, now: Instant, out: &mut VecDeque<RelayOutput>) {
    u.next_attempt = None;
    set_status(u, UrlStatus::Failure, None, ms, now, out);
    set_status(u, UrlStatus::Idle, None, ms, now, out);
}

/// 5 (with error 6 and the reason), then 0 once its connection is closed.
fn close_url(u: &mut UrlMachine, msg: &'static str, ms: i64, now: Instant, out: &mut VecDeque<RelayOutput>) {
    if u.view.status == UrlStatus::Idle && !u.attempting {
        return;
    }
    u.next_attempt = None;
    set_status(u, UrlStatus::Disconnecting, Some((6, msg.to_string())), ms, now, out);
    if u.attempting {
        u.closing = Some((msg, now + CLOSE_GRACE));
        out.push_back(RelayOutput::Disconnect { url: u.view.url.clone() });
    } else {
        set_status(u, UrlStatus::Idle, None, ms, now, out);
    }
}

/// One FLV tag body for the URL connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlvTag {
    VideoHeader(Vec<u8>),
    AudioHeader(Vec<u8>),
    Video {
        body: Vec<u8>,
        ms: u32,
        keyframe: bool,
    },
    Audio {
        body: Vec<u8>,
        ms: u32,
    },
    /// Video was lost: the source should send a keyframe.
    KeyframeWanted,
}

/// The source's tapped packets → FLV tags: H.264 access units passed through (SPS/PPS as a
/// new sequence header whenever they change, SEI kept), VP8 transcoded, Opus → AAC.
pub struct FlvProducer {
    user: UserId,
    stream: StreamKind,
    media: RelayMedia,
    video: VideoInput,
    audio: Option<OpusToAac>,
    sps: Vec<u8>,
    pps: Vec<u8>,
    aac: Vec<AacUnit>,
    audio_header_sent: bool,
}

impl FlvProducer {
    pub fn new(user: UserId, stream: StreamKind, media: RelayMedia) -> FlvProducer {
        FlvProducer { user, stream, media, video: VideoInput::default(), audio: None, sps: Vec::new(), pps: Vec::new(), aac: Vec::new(), audio_header_sent: false }
    }

    /// One packet of the room (others than the source's are ignored), arrived at `arrival_ms`
    /// on the relay's clock.
    pub fn push(&mut self, p: &TapPacket, arrival_ms: i64, out: &mut Vec<FlvTag>) -> Result<(), String> {
        if p.user != self.user || p.stream != self.stream {
            return Ok(());
        }
        match p.codec {
            Codec::Opus if self.media.audio() => {
                let audio = match self.audio.as_mut() {
                    Some(a) => a,
                    None => self.audio.insert(OpusToAac::new().map_err(|e| e.to_string())?),
                };
                self.aac.clear();
                audio.push(p.ts, &p.payload, arrival_ms, &mut self.aac).map_err(|e| e.to_string())?;
                // The header once, as soon as the encoder exists (the first decoded packet).
                if let Some(asc) = audio.audio_specific_config().filter(|_| !self.audio_header_sent) {
                    self.audio_header_sent = true;
                    out.push(FlvTag::AudioHeader(flv::aac_sequence_header(asc)));
                }
                out.extend(self.aac.drain(..).map(|f| FlvTag::Audio { body: flv::aac_frame(&f.data), ms: f.ms as u32 }));
            }
            Codec::H264 | Codec::Vp8 if self.media.video() => {
                let (nalus, keyframe, ms) = match self.video.push(p, arrival_ms)? {
                    VideoUnit::Unit { nalus, keyframe, ms } => (nalus, keyframe, ms),
                    VideoUnit::Lost => {
                        out.push(FlvTag::KeyframeWanted);
                        return Ok(());
                    }
                    VideoUnit::None => return Ok(()),
                };
                let mut header_changed = false;
                for n in &nalus {
                    match nal_type(n) {
                        Some(NAL_SPS) if *n != self.sps => self.sps = n.clone(),
                        Some(NAL_PPS) if *n != self.pps => self.pps = n.clone(),
                        _ => continue,
                    }
                    header_changed = true;
                }
                if header_changed && !self.sps.is_empty() && !self.pps.is_empty() {
                    out.push(FlvTag::VideoHeader(flv::avc_sequence_header(&self.sps, &self.pps)));
                }
                let units: Vec<&[u8]> = nalus.iter().map(|n| n.as_slice()).collect();
                out.push(FlvTag::Video { body: flv::avc_frame(&units, keyframe, 0), ms: ms as u32, keyframe });
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn drain(m: &mut RelayMachine) -> Vec<RelayOutput> {
        std::iter::from_fn(|| m.poll_output()).collect()
    }

    fn statuses(out: &[RelayOutput]) -> Vec<u8> {
        out.iter().filter_map(|o| if let RelayOutput::UrlStatus { status, .. } = o { Some(status.code()) } else { None }).collect()
    }

    const URL: &str = "rtmp://cdn.example/live/key";

    /// Runs the machine until `until`, failing every attempt that `fail` says fails; returns
    /// every output with its time.
    fn run(m: &mut RelayMachine, t0: Instant, until_ms: u64, mut on_connect: impl FnMut(&str, u64) -> Option<AttemptEnd>) -> Vec<(u64, RelayOutput)> {
        let mut log = Vec::new();
        let mut now = t0;
        loop {
            while let Some(o) = m.poll_output() {
                let at = now.duration_since(t0).as_millis() as u64;
                if let RelayOutput::Connect { url } = &o {
                    if let Some(end) = on_connect(url, at) {
                        log.push((at, o.clone()));
                        m.url_ended(url, end, now);
                        continue;
                    }
                }
                log.push((at, o));
            }
            let Some(next) = m.poll_timeout() else { break };
            if next > ms(t0, until_ms) {
                break;
            }
            now = next.max(now);
            m.handle_timeout(now);
        }
        log
    }

    #[test]
    fn retries_at_0_1_2_4_then_every_8_seconds_for_60() {
        let t = Instant::now();
        let mut r = UrlRetry::new(t);
        let offsets: Vec<u64> = std::iter::from_fn(|| r.next_attempt()).map(|at| (at - t).as_secs()).collect();
        assert_eq!(offsets, vec![0, 1, 2, 4, 12, 20, 28, 36, 44, 52]);
        assert!(!r.given_up(t + Duration::from_secs(59)) && r.given_up(t + Duration::from_secs(60)));
    }

    #[test]
    fn a_url_that_never_connects_gives_up_after_60_s_reporting_every_5_s() {
        let t0 = Instant::now();
        let mut m = RelayMachine::new(&[URL.into()], Duration::from_secs(600), t0, 1_000_000);
        assert_eq!(m.state(), RelayState::Waiting);
        assert!(drain(&mut m).is_empty(), "nothing happens before the source publishes");
        m.source_present(true, t0);
        let log = run(&mut m, t0, 120_000, |_, _| Some(AttemptEnd::Failed { code: 1, msg: "cannot connect to cdn.example:1935".into(), was_running: false }));
        let attempts: Vec<u64> = log.iter().filter(|(_, o)| matches!(o, RelayOutput::Connect { .. })).map(|(t, _)| *t).collect();
        assert_eq!(attempts, vec![0, 1_000, 2_000, 4_000, 12_000, 20_000, 28_000, 36_000, 44_000, 52_000]);
        let reports: Vec<(u64, u8)> = log.iter().filter_map(|(t, o)| if let RelayOutput::UrlStatus { status, .. } = o { Some((*t, status.code())) } else { None }).collect();
        let mut expected = vec![(0, 1)];
        expected.extend((1..=10).map(|i| (i * 5_000, 1)).take_while(|(t, _)| *t <= 52_000));
        expected.extend([(52_000, 4), (52_000, 0)]);
        assert_eq!(reports, expected, "1 on entry and every 5 s, then 4 → 0 when the last attempt fails");
        let u = &m.urls()[0];
        assert_eq!((u.status, u.error_code), (UrlStatus::Idle, 1));
        assert_eq!(u.history.iter().map(|h| (h.0.code(), h.1 - 1_000_000)).collect::<Vec<_>>(), vec![(0, 0), (1, 0), (4, 52_000), (0, 52_000)]);
        assert_eq!(m.state(), RelayState::Active, "a failed URL does not stop the relay");
    }

    #[test]
    fn a_break_while_running_recovers_in_a_new_series_and_stop_goes_5_then_0() {
        let t0 = Instant::now();
        let mut m = RelayMachine::new(&[URL.into()], Duration::from_secs(30), t0, 0);
        m.source_present(true, t0);
        assert_eq!(
            drain(&mut m),
            vec![
                RelayOutput::Save,
                RelayOutput::UrlStatus { url: URL.into(), status: UrlStatus::Connecting, code: 0, msg: String::new() },
                RelayOutput::Connect { url: URL.into() },
                RelayOutput::MediaStart
            ]
        );
        m.url_running(URL, ms(t0, 300));
        // 100 s later the CDN drops the connection: 3 with its error, reconnect at once.
        m.url_ended(URL, AttemptEnd::Failed { code: 4, msg: "the server closed the connection".into(), was_running: true }, ms(t0, 100_000));
        m.handle_timeout(ms(t0, 100_000));
        let out = drain(&mut m);
        assert_eq!(statuses(&out), vec![2, 3]);
        assert!(out.contains(&RelayOutput::Connect { url: URL.into() }));
        assert_eq!(m.urls()[0].error_code, 4);
        // The new attempt succeeds: 2 again, the error cleared.
        m.url_running(URL, ms(t0, 100_500));
        assert_eq!((m.urls()[0].status, m.urls()[0].error_code), (UrlStatus::Running, 0));
        m.stop(StopCause::Request, ms(t0, 200_000));
        let out = drain(&mut m);
        assert_eq!(statuses(&out), vec![2, 5]);
        assert!(out.contains(&RelayOutput::Disconnect { url: URL.into() }) && out.contains(&RelayOutput::MediaStop));
        assert_eq!(m.state(), RelayState::Active, "STOPPED only once the URL is 0");
        m.url_ended(URL, AttemptEnd::Closed, ms(t0, 200_040));
        assert_eq!(
            drain(&mut m),
            vec![RelayOutput::UrlStatus { url: URL.into(), status: UrlStatus::Idle, code: 6, msg: "stopped by request".into() }, RelayOutput::Stopped { leave_code: 0 }]
        );
        let history: Vec<u8> = m.urls()[0].history.iter().map(|h| h.0.code()).collect();
        assert_eq!(history, vec![0, 1, 2, 3, 2, 5, 0]);
    }

    #[test]
    fn an_absent_source_stops_the_relay_after_max_idle_with_99() {
        let t0 = Instant::now();
        let mut m = RelayMachine::new(&[URL.into()], Duration::from_secs(30), t0, 0);
        m.source_present(true, ms(t0, 1_000));
        m.url_running(URL, ms(t0, 1_200));
        m.source_present(false, ms(t0, 10_000));
        assert!(drain(&mut m).contains(&RelayOutput::MediaStop));
        m.source_present(false, ms(t0, 10_300));
        assert_eq!(m.poll_timeout(), Some(ms(t0, 40_000)), "absent since 10 s, idle limit 30 s");
        m.handle_timeout(ms(t0, 39_999));
        assert!(drain(&mut m).is_empty(), "the connection stays open while the source is away");
        m.handle_timeout(ms(t0, 40_000));
        assert_eq!(statuses(&drain(&mut m)), vec![5]);
        assert_eq!(m.urls()[0].error_msg, "stopped: the source sent no media for max_idle_time");
        // The connection never answers the close: STOPPED after the grace period anyway.
        m.handle_timeout(ms(t0, 40_000) + CLOSE_GRACE);
        assert_eq!(drain(&mut m).last(), Some(&RelayOutput::Stopped { leave_code: 99 }));
        assert_eq!(m.poll_timeout(), None);
    }

    #[test]
    fn a_relay_whose_source_never_comes_stops_after_max_idle() {
        let t0 = Instant::now();
        let mut m = RelayMachine::new(&[URL.into()], Duration::from_secs(5), t0, 0);
        m.handle_timeout(ms(t0, 5_000));
        assert_eq!(drain(&mut m), vec![RelayOutput::Stopped { leave_code: 99 }], "URLs in 0 stay silent");
        assert_eq!(m.urls()[0].history.len(), 1);
    }

    #[test]
    fn patching_urls_adds_removes_and_restarts() {
        let t0 = Instant::now();
        let (a, b, c) = ("rtmp://a.example/live/1".to_string(), "rtmp://b.example/live/2".to_string(), "rtmp://c.example/live/3".to_string());
        let mut m = RelayMachine::new(&[a.clone(), b.clone()], Duration::from_secs(30), t0, 0);
        m.source_present(true, t0);
        drain(&mut m);
        m.url_running(&a, ms(t0, 100));
        // b fails for 60 s: 4 → 0.
        let rejected = || AttemptEnd::Failed { code: 2, msg: "rejected".into(), was_running: false };
        m.url_ended(&b, rejected(), ms(t0, 100));
        let _ = run(&mut m, t0, 70_000, |url, _| (url == b).then(rejected));
        assert_eq!(m.urls()[1].status, UrlStatus::Idle);
        drain(&mut m);
        // PATCH [b, c]: a goes 5 → 0 (outside the record), b restarts, c starts.
        m.set_urls(&[b.clone(), c.clone()], ms(t0, 80_000));
        let out = drain(&mut m);
        let events: Vec<(String, u8)> =
            out.iter().filter_map(|o| if let RelayOutput::UrlStatus { url, status, .. } = o { Some((url.clone(), status.code())) } else { None }).collect();
        assert_eq!(events, vec![(a.clone(), 5), (b.clone(), 1), (c.clone(), 1)]);
        assert!(out.contains(&RelayOutput::Disconnect { url: a.clone() }));
        assert_eq!(m.urls().iter().map(|u| u.url.clone()).collect::<Vec<_>>(), vec![b.clone(), c.clone()]);
        m.url_ended(&a, AttemptEnd::Closed, ms(t0, 80_010));
        assert_eq!(statuses(&drain(&mut m)), vec![0]);
    }

    #[test]
    fn a_bad_url_fails_at_once() {
        let t0 = Instant::now();
        let mut m = RelayMachine::new(&["http://x/y".into()], Duration::from_secs(30), t0, 0);
        m.source_present(true, t0);
        assert_eq!(statuses(&drain(&mut m)), vec![4, 0]);
        assert_eq!(m.urls()[0].error_code, 1);
    }

    fn h264(seq: u64, ts: u32, marker: bool, payload: &[u8]) -> TapPacket {
        TapPacket { user: UserId::parse("alice").unwrap(), stream: StreamKind::Main, codec: Codec::H264, seq, ts, marker, payload: Arc::from(payload) }
    }

    #[test]
    fn flv_producer_sends_a_header_before_the_first_keyframe_and_asks_for_one_after_loss() {
        let mut p = FlvProducer::new(UserId::parse("alice").unwrap(), StreamKind::Main, RelayMedia::AudioVideo);
        let mut out = Vec::new();
        p.push(&h264(1, 0, true, &[0x41, 9]), 0, &mut out).unwrap();
        assert_eq!(out, vec![FlvTag::KeyframeWanted], "a delta frame first: wait for a keyframe");
        out.clear();
        p.push(&h264(2, 3000, false, &[0x67, 1, 2]), 33, &mut out).unwrap();
        p.push(&h264(3, 3000, false, &[0x68, 3]), 33, &mut out).unwrap();
        p.push(&h264(4, 3000, true, &[0x65, 4]), 34, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], FlvTag::VideoHeader(flv::avc_sequence_header(&[0x67, 1, 2], &[0x68, 3])));
        assert!(matches!(&out[1], FlvTag::Video { keyframe: true, ms: 33, .. }));
        out.clear();
        // The same SPS/PPS again: no new header. Another user's packets: ignored.
        p.push(&h264(5, 6000, false, &[0x67, 1, 2]), 67, &mut out).unwrap();
        p.push(&h264(6, 6000, true, &[0x65, 5]), 67, &mut out).unwrap();
        let mut other = h264(1, 0, true, &[0x65, 1]);
        other.user = UserId::parse("bob").unwrap();
        p.push(&other, 68, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert!(matches!(&out[0], FlvTag::Video { keyframe: true, ms: 66, .. }));
    }

    #[test]
    fn flv_producer_turns_opus_into_aac_with_one_header() {
        let mut enc = tessera_transcode::decode::OpusEncoder::new(2, 64).unwrap();
        let pcm: Vec<f32> = (0..48_000 * 2).map(|i| ((i / 2) as f32 * 440.0 * std::f32::consts::TAU / 48_000.0).sin() * 0.3).collect();
        let mut opus = Vec::new();
        for frame in pcm.chunks(960 * 2) {
            enc.encode(frame, &mut opus).unwrap();
        }
        let mut p = FlvProducer::new(UserId::parse("alice").unwrap(), StreamKind::Main, RelayMedia::Audio);
        let mut out = Vec::new();
        for (i, f) in opus.iter().enumerate() {
            let packet = TapPacket { codec: Codec::Opus, seq: i as u64, ts: f.ts, marker: true, payload: Arc::from(f.data.as_slice()), ..h264(0, 0, true, &[]) };
            p.push(&packet, 20 * i as i64, &mut out).unwrap();
        }
        let headers = out.iter().filter(|t| matches!(t, FlvTag::AudioHeader(_))).count();
        let frames: Vec<u32> = out.iter().filter_map(|t| if let FlvTag::Audio { ms, .. } = t { Some(*ms) } else { None }).collect();
        assert_eq!(headers, 1);
        assert!(matches!(out[0], FlvTag::AudioHeader(_)), "the header comes first");
        // A second of audio is ≈ 46 AAC frames, 21.3 ms apart.
        assert!((44..=47).contains(&frames.len()), "{} frames", frames.len());
        assert!(frames.windows(2).all(|w| (21..=22).contains(&(w[1] - w[0]))), "{frames:?}");
    }
}
