//! Webhook events (EVENTS.md): the envelope and `EventInfo` in the TRTC callback shape, the
//! `Sign` header, the per-room `EventMsTs` clock and the retry schedule. Plain data and
//! functions; the server's delivery task does the I/O.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use std::collections::HashMap;

/// Event groups (EVENTS.md §1) with their names in `webhook.urls`.
pub const GROUP_ROOM: u8 = 1;
pub const GROUP_MEDIA: u8 = 2;
pub const GROUP_RECORDING: u8 = 3;
pub const GROUP_RELAY: u8 = 4;
pub const GROUP_INGEST: u8 = 7;
pub const GROUP_MIX: u8 = 8;

pub fn group_of(code: u16) -> u8 {
    (code / 100) as u8
}

/// `EventInfo`. Field order follows the spec's examples; absent fields are left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EventInfo {
    pub room_id: String,
    pub room_type: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_ts: Option<i64>,
    pub event_ms_ts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terminal_type: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_type: Option<u8>,
    /// A number for groups 1 and 2, a word for 702.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub business_info: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

impl EventInfo {
    /// An `EventInfo` for a task's event: its room, its server user and its id.
    pub fn task(room: &str, user: String, task_id: &str) -> EventInfo {
        EventInfo { room_id: room.to_string(), room_type: 1, user_id: Some(user), task_id: Some(task_id.to_string()), ..Default::default() }
    }

    pub fn room(room: &str) -> EventInfo {
        EventInfo { room_id: room.to_string(), room_type: 1, ..Default::default() }
    }

    pub fn with_payload(mut self, payload: Value) -> EventInfo {
        self.payload = Some(payload);
        self
    }
}

/// A task's event (EVENTS.md §5, groups 3, 4, 7 and 8), typed: `code()` is its number and
/// `into_info` puts it into the task's `EventInfo` (most as `Payload`, ingest events as fields).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged, rename_all_fields = "PascalCase")]
pub enum TaskEvent {
    /// 301 (306 when `restarted`: resumed after a server restart).
    RecordingStarted {
        status: i64,
        #[serde(skip)]
        restarted: bool,
    },
    /// 302.
    RecordingStopped { leave_code: u32 },
    /// 303.
    StorageReady { status: i64 },
    /// 304: a playlist's first segment is stored.
    PlaylistStored { file_list: Vec<String> },
    /// 305: `Status` and `LeaveCode` carry the same value.
    UploadStopped { status: i64, leave_code: i64 },
    /// 307: a playlist's first segment is cut.
    SegmentCut { file_name: String, user_id: String, track_type: String, media_id: String, begin_time_stamp: i64 },
    /// 308.
    StorageError { code: String, message: String },
    /// 309 (recordings and mix jobs).
    ImageError { url: String },
    /// 310.
    Mp4Stopped { status: i64, file_list: Vec<String>, file_message: Vec<FileMessage> },
    /// 311: one final file committed.
    FileCommitted { status: i64, errmsg: String, file_info: CommittedFile },
    /// 312: the task is FINISHED; `Result` is RECORDING.md §5's document.
    RecordingFinished { status: i64, result: Value },
    /// 401.
    RelayUrlStatus { url: String, status: u8, error_code: u32, error_msg: String },
    /// 701: `Status` 0 started, 1 failed for good, 2 about to retry.
    IngestStarted {
        #[serde(skip)]
        url: String,
        #[serde(skip)]
        status: i64,
    },
    /// 702 with its `Reason` word.
    IngestStopped {
        #[serde(skip)]
        url: String,
        #[serde(skip)]
        reason: String,
    },
    /// 801.
    MixStarted { status: i64, error_msg: String },
    /// 802.
    MixStopped { leave_code: u32 },
}

/// One entry of 310's `FileMessage`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct FileMessage {
    pub file_name: String,
    pub user_id: String,
    pub track_type: String,
    pub media_id: String,
    pub start_time_stamp: i64,
    pub end_time_stamp: i64,
}

/// 311's `FileInfo`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CommittedFile {
    pub file_name: String,
    pub user_id: String,
    pub track_type: String,
    pub media_id: String,
    pub url: String,
    pub size: u64,
    pub start_time_stamp: i64,
    pub end_time_stamp: i64,
}

impl TaskEvent {
    pub fn code(&self) -> u16 {
        match self {
            TaskEvent::RecordingStarted { restarted: false, .. } => 301,
            TaskEvent::RecordingStarted { restarted: true, .. } => 306,
            TaskEvent::RecordingStopped { .. } => 302,
            TaskEvent::StorageReady { .. } => 303,
            TaskEvent::PlaylistStored { .. } => 304,
            TaskEvent::UploadStopped { .. } => 305,
            TaskEvent::SegmentCut { .. } => 307,
            TaskEvent::StorageError { .. } => 308,
            TaskEvent::ImageError { .. } => 309,
            TaskEvent::Mp4Stopped { .. } => 310,
            TaskEvent::FileCommitted { .. } => 311,
            TaskEvent::RecordingFinished { .. } => 312,
            TaskEvent::RelayUrlStatus { .. } => 401,
            TaskEvent::IngestStarted { .. } => 701,
            TaskEvent::IngestStopped { .. } => 702,
            TaskEvent::MixStarted { .. } => 801,
            TaskEvent::MixStopped { .. } => 802,
        }
    }

    /// The event's `EventInfo` from the task's own (`EventInfo::task`).
    pub fn into_info(self, task: EventInfo) -> EventInfo {
        match self {
            TaskEvent::IngestStarted { url, status } => EventInfo { url: Some(url), status: Some(status), ..task },
            TaskEvent::IngestStopped { url, reason } => EventInfo { url: Some(url), status: Some(0), reason: Some(Value::String(reason)), ..task },
            payload => {
                let payload = serde_json::to_value(&payload).unwrap_or(Value::Null);
                task.with_payload(payload)
            }
        }
    }
}

/// One event as it waits in the outbox: everything but the per-attempt `CallbackTs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// 16 hex digits, the `Tessera-Event-Id` header: the same on every attempt.
    pub id: String,
    pub app: String,
    pub code: u16,
    /// Creation time T (Unix ms), from which the retry schedule counts.
    pub created_ms: i64,
    pub info: EventInfo,
    /// Attempts made so far (kept in the outbox, so a restart continues the count).
    #[serde(default)]
    pub attempts: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Envelope<'a> {
    event_group_id: u8,
    event_type: u16,
    callback_ts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    callback_ms_ts: Option<i64>,
    event_info: &'a EventInfo,
}

impl Event {
    pub fn group(&self) -> u8 {
        group_of(self.code)
    }

    /// The body of one attempt sent at `callback_ms`: serialized once, then signed as is.
    pub fn body(&self, callback_ms: i64) -> Vec<u8> {
        let group = self.group();
        let envelope = Envelope {
            event_group_id: group,
            event_type: self.code,
            callback_ts: callback_ms,
            callback_ms_ts: (group == GROUP_INGEST).then_some(callback_ms),
            event_info: &self.info,
        };
        serde_json::to_vec(&envelope).expect("an event serializes")
    }
}

/// `Sign` = base64(HMAC-SHA256(key, body)) (EVENTS.md §3).
pub fn sign(key: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC accepts any key length");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// No attempt starts once an event is older than this.
pub const MAX_EVENT_AGE_MS: i64 = 60_000;
/// An attempt that has no 2xx within this is a failure.
pub const ATTEMPT_TIMEOUT_MS: u64 = 5_000;

/// When attempt `k` (1-based) may start, given creation time `created_ms` and the end of attempt
/// k−1 at `previous_end_ms`; `None` once the event is too old (EVENTS.md §2): 1 at T, 2 at once
/// after 1 fails, k ≥ 3 at T + 10·(k−2) s or when k−1 ended if later.
pub fn attempt_start(k: u32, created_ms: i64, previous_end_ms: i64) -> Option<i64> {
    let at = match k {
        0 | 1 => created_ms,
        2 => previous_end_ms,
        k => (created_ms + 10_000 * (k as i64 - 2)).max(previous_end_ms),
    };
    (at - created_ms <= MAX_EVENT_AGE_MS).then_some(at)
}

/// `EventMsTs` is strictly increasing within one room: a tie or a step back is bumped to the
/// last value + 1 ms, so receivers recover causal order by sorting.
#[derive(Debug, Default)]
pub struct RoomClocks {
    last: HashMap<(String, String), i64>,
}

impl RoomClocks {
    pub fn stamp(&mut self, app: &str, room: &str, now_ms: i64) -> i64 {
        let last = self.last.entry((app.to_string(), room.to_string())).or_insert(i64::MIN);
        let ms = now_ms.max(last.saturating_add(1));
        *last = ms;
        // Forget rooms idle for ten minutes: nothing in them can tie any more.
        if self.last.len() > 1024 {
            self.last.retain(|_, t| *t > now_ms - 600_000);
        }
        ms
    }

    /// The room's next stamp comes after `floor` (the last one another node gave the room,
    /// in a cluster).
    pub fn raise(&mut self, app: &str, room: &str, floor: i64) {
        let last = self.last.entry((app.to_string(), room.to_string())).or_insert(i64::MIN);
        *last = (*last).max(floor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_raised_clock_stamps_after_the_floor() {
        let mut c = RoomClocks::default();
        c.raise("a", "r", 5_000);
        assert_eq!(c.stamp("a", "r", 1_000), 5_001);
        assert_eq!(c.stamp("a", "r", 9_000), 9_000);
        c.raise("a", "r", 100);
        assert_eq!(c.stamp("a", "r", 9_000), 9_001, "a lower floor changes nothing");
    }

    #[test]
    fn task_events_have_the_spec_shapes() {
        let task = || EventInfo::task("r1", "rec_ab".into(), "ab");
        let e = TaskEvent::RecordingStarted { status: 0, restarted: true };
        assert_eq!(e.code(), 306);
        assert_eq!(e.into_info(task()).payload, Some(json!({"Status": 0})));
        let e = TaskEvent::UploadStopped { status: 2, leave_code: 2 };
        assert_eq!(e.into_info(task()).payload, Some(json!({"Status": 2, "LeaveCode": 2})));
        let file = CommittedFile {
            file_name: "a.mp4".into(),
            user_id: "u".into(),
            track_type: "audio_video".into(),
            media_id: "main".into(),
            url: "/files/a.mp4".into(),
            size: 9,
            start_time_stamp: 1,
            end_time_stamp: 2,
        };
        let e = TaskEvent::FileCommitted { status: 0, errmsg: String::new(), file_info: file };
        assert_eq!(e.code(), 311);
        assert_eq!(
            e.into_info(task()).payload,
            Some(json!({"Status": 0, "Errmsg": "", "FileInfo": {"FileName": "a.mp4", "UserId": "u", "TrackType": "audio_video", "MediaId": "main",
                "Url": "/files/a.mp4", "Size": 9, "StartTimeStamp": 1, "EndTimeStamp": 2}}))
        );
        let e = TaskEvent::RelayUrlStatus { url: "rtmp://x/a/b".into(), status: 4, error_code: 1, error_msg: "refused".into() };
        assert_eq!(e.into_info(task()).payload, Some(json!({"Url": "rtmp://x/a/b", "Status": 4, "ErrorCode": 1, "ErrorMsg": "refused"})));
        // Ingest events carry their fields in EventInfo itself.
        let info = TaskEvent::IngestStopped { url: "rtmp://s/a".into(), reason: "api".into() }.into_info(task());
        assert_eq!((info.url.as_deref(), info.status, info.reason, info.payload), (Some("rtmp://s/a"), Some(0), Some(json!("api")), None));
    }

    #[test]
    fn signature_test_vector() {
        let info = EventInfo {
            room_id: "room1".into(),
            room_type: 1,
            event_ts: Some(1763805600),
            event_ms_ts: 1763805600101,
            user_id: Some("alice".into()),
            role: Some(20),
            terminal_type: Some(4),
            user_type: Some(1),
            reason: Some(json!(1)),
            ..Default::default()
        };
        let event = Event { id: "0123456789abcdef".into(), app: "default".into(), code: 103, created_ms: 1763805600101, info, attempts: 0 };
        let body = event.body(1763805600123);
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"EventGroupId":1,"EventType":103,"CallbackTs":1763805600123,"EventInfo":{"RoomId":"room1","RoomType":1,"EventTs":1763805600,"EventMsTs":1763805600101,"UserId":"alice","Role":20,"TerminalType":4,"UserType":1,"Reason":1}}"#
        );
        assert_eq!(sign("123654", &body), "AcqHeuIltMzRXusIALKD2RfOYDHvCHyHFbvR0OJChwg=");
    }

    #[test]
    fn ingest_envelopes_carry_callback_ms_ts() {
        let event = Event { id: "0".into(), app: "a".into(), code: 701, created_ms: 5, info: EventInfo::room("r"), attempts: 0 };
        let v: Value = serde_json::from_slice(&event.body(7)).unwrap();
        assert_eq!(v["CallbackMsTs"], 7);
        assert_eq!(v["EventGroupId"], 7);
        let event = Event { code: 401, ..event };
        let v: Value = serde_json::from_slice(&event.body(7)).unwrap();
        assert!(v.get("CallbackMsTs").is_none());
    }

    #[test]
    fn retry_schedule_gives_at_most_eight_attempts_within_60_s() {
        let t = 1_000_000;
        assert_eq!(attempt_start(1, t, t), Some(t));
        // Attempt 2 follows a failed first attempt at once.
        assert_eq!(attempt_start(2, t, t + 300), Some(t + 300));
        assert_eq!(attempt_start(3, t, t + 400), Some(t + 10_000));
        // A slow attempt pushes the next one back.
        assert_eq!(attempt_start(4, t, t + 25_000), Some(t + 25_000));
        assert_eq!(attempt_start(8, t, t + 51_000), Some(t + 60_000));
        assert_eq!(attempt_start(9, t, t + 61_000), None);
        assert_eq!(attempt_start(5, t, t + 60_001), None);
        // Fast failures: count every attempt that may start.
        let (mut k, mut end, mut n) = (1, t, 0);
        while let Some(at) = attempt_start(k, t, end) {
            n += 1;
            end = at + 10;
            k += 1;
        }
        assert_eq!(n, 8);
    }

    #[test]
    fn room_clock_is_strictly_increasing_per_room() {
        let mut c = RoomClocks::default();
        assert_eq!(c.stamp("a", "r", 100), 100);
        assert_eq!(c.stamp("a", "r", 100), 101);
        assert_eq!(c.stamp("a", "r", 99), 102);
        assert_eq!(c.stamp("a", "other", 100), 100);
        assert_eq!(c.stamp("b", "r", 100), 100);
        assert_eq!(c.stamp("a", "r", 200), 200);
    }
}
