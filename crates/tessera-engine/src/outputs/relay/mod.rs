//! A relay's logic (RECORDING.md §1) as plain values: `RelayMachine` holds the relay state
//! (WAITING/ACTIVE/STOPPED), the idle timer and every URL's state machine with the spec's retry
//! schedule; `FlvProducer` (`flv.rs`) turns the source's tapped packets into FLV tags. Neither reads the
//! clock, sleeps or touches a socket: the server's driver feeds them time, membership and
//! connection outcomes and carries out what `poll_output` asks (connect, disconnect, start or
//! stop converting media, report event 401, save).

use serde::{Deserialize, Serialize, Serializer};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tessera_rtmp::client::PushTarget;

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
    /// The room was dismissed (LeaveCode 2).
    RoomDismissed,
}

impl StopCause {
    pub fn leave_code(&self) -> u32 {
        match self {
            StopCause::Idle => 99,
            StopCause::Failed(_) => 104,
            StopCause::RoomDismissed => 2,
            StopCause::Request | StopCause::Shutdown => 0,
        }
    }

    fn url_message(&self) -> &'static str {
        match self {
            StopCause::Request => "stopped by request",
            StopCause::Shutdown => "stopped: the server is shutting down",
            StopCause::Idle => "stopped: the source sent no media for max_idle_time",
            StopCause::Failed(_) => "stopped: the relay failed",
            StopCause::RoomDismissed => "stopped: the room was dismissed",
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
            target_error: PushTarget::parse(url).err().map(|e| e.to_string()),
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

#[cfg(test)]
mod tests;
