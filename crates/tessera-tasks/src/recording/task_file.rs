//! A recording's task file, typed: what `tasks/<id>.json` holds and the defaults an older
//! file is read with.

use super::RecordingState;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tessera_media::StreamKind;
use tessera_model::{AppId, RoomId, UserId};

/// A recording's task file (RECORDING.md §8): its spec and its state, rewritten on change.
/// Missing fields take the defaults of the API.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct RecordingFile {
    pub(super) kind: String,
    pub(super) id: String,
    pub(super) app: AppId,
    pub(super) room: RoomId,
    #[serde(default = "defaults::mode")]
    pub(super) mode: String,
    #[serde(default)]
    pub(super) streams: Vec<StreamKind>,
    #[serde(default = "defaults::yes")]
    pub(super) split: bool,
    #[serde(default)]
    pub(super) mix_user: Option<UserId>,
    #[serde(default)]
    pub(super) owned_job: Option<String>,
    #[serde(default = "defaults::content")]
    pub(super) content: String,
    #[serde(default = "defaults::format")]
    pub(super) format: String,
    #[serde(default = "defaults::segment_s")]
    pub(super) segment_s: u32,
    #[serde(default = "defaults::split_minutes")]
    pub(super) split_minutes: u32,
    #[serde(default = "defaults::max_idle_s")]
    pub(super) max_idle_s: u64,
    #[serde(default)]
    pub(super) prefix: String,
    #[serde(default)]
    pub(super) storage: tessera_model::StorageRef,
    #[serde(default = "tessera_engine::mcu::Subscribe::everyone")]
    pub(super) subscribe: tessera_engine::mcu::Subscribe,
    #[serde(default = "defaults::state")]
    pub(super) state: RecordingState,
    #[serde(default)]
    pub(super) created_at: i64,
    #[serde(default)]
    pub(super) started_at: Option<i64>,
    #[serde(default)]
    pub(super) stopped_at: Option<i64>,
    #[serde(default)]
    pub(super) leave_code: Option<u32>,
    #[serde(default)]
    pub(super) restarts: u32,
    #[serde(default)]
    pub(super) skipped_segments: u32,
    #[serde(default)]
    pub(super) clock_ms: i64,
    #[serde(default)]
    pub(super) paused_ms: i64,
    #[serde(default)]
    pub(super) error: Option<String>,
    #[serde(default)]
    pub(super) result: Option<Value>,
}

mod defaults {
    pub fn mode() -> String {
        "single".into()
    }
    pub fn yes() -> bool {
        true
    }
    pub fn content() -> String {
        "audio_video".into()
    }
    pub fn format() -> String {
        "hls".into()
    }
    pub fn segment_s() -> u32 {
        6
    }
    pub fn split_minutes() -> u32 {
        1440
    }
    pub fn max_idle_s() -> u64 {
        30
    }
    pub fn state() -> super::RecordingState {
        super::RecordingState::Prepared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_files_keep_every_field_and_old_files_take_the_defaults() {
        let minimal: RecordingFile = serde_json::from_str(r#"{"kind":"recording","id":"0123456789abcdef","app":"default","room":"r1"}"#).unwrap();
        assert_eq!((minimal.mode.as_str(), minimal.split, minimal.segment_s, minimal.split_minutes, minimal.max_idle_s), ("single", true, 6, 1440, 30));
        assert_eq!((minimal.state, minimal.subscribe), (RecordingState::Prepared, tessera_engine::mcu::Subscribe::everyone()));
        assert!(minimal.storage.is_local(), "files from before storage choices record locally");
        let json = r#"{"kind":"recording","id":"0123456789abcdef","app":"default","room":"r1","mode":"mixed","mix_user":"mix_abc",
            "owned_job":"fedcba9876543210","streams":[],"split":false,"content":"audio","format":"mp4","segment_s":4,"split_minutes":60,
            "max_idle_s":5,"prefix":"p/q","storage":{"s3":{"bucket":"recs","region":"eu-west-1","endpoint":"http://minio:9000","access_key_id":"AK",
            "secret_access_key_sealed":"k1:abc","path_style":true,"key_prefix":"t/"}},"subscribe":{"video_allow":["a"],"video_deny":[],"audio_allow":null,"audio_deny":["b"]},
            "state":"PAUSED","created_at":1,"started_at":2,"stopped_at":null,"leave_code":null,"restarts":1,"skipped_segments":2,
            "clock_ms":3,"paused_ms":4,"error":null,"result":null}"#;
        let full: RecordingFile = serde_json::from_str(json).unwrap();
        let again: serde_json::Value = serde_json::to_value(&full).unwrap();
        assert_eq!(again, serde_json::from_str::<serde_json::Value>(json).unwrap());
        assert_eq!(full.mix_user.as_ref().map(|u| u.as_str()), Some("mix_abc"));
        // A stream kind or user id that is not valid makes the file unreadable, not half-read.
        assert!(serde_json::from_str::<RecordingFile>(&json.replace(r#""streams":[]"#, r#""streams":["side"]"#)).is_err());
    }
}
