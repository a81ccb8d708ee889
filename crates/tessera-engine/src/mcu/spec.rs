//! What a mix job is asked to do (`MixSpec`, replaced in parts by PATCH) and what it reports
//! (`MixStatus`): plain data shared by the job's thread and the API.

use super::layout::{InputKey, LayoutConfig, Rgb};
use crate::sfu::RoomKey;
use std::sync::Arc;
use std::time::Duration;
use tessera_model::UserId;
use tessera_transcode::image::RgbaImage;

/// Whose video and audio a mix (or recording) takes: an allow list (`None`: everyone) minus a
/// deny list, per medium.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Subscribe {
    #[serde(default)]
    pub video_allow: Option<Vec<String>>,
    #[serde(default)]
    pub video_deny: Vec<String>,
    #[serde(default)]
    pub audio_allow: Option<Vec<String>>,
    #[serde(default)]
    pub audio_deny: Vec<String>,
}

impl Subscribe {
    pub fn everyone() -> Subscribe {
        Subscribe { video_allow: None, video_deny: Vec::new(), audio_allow: None, audio_deny: Vec::new() }
    }

    /// Deny beats allow; a `None` allow list means everyone.
    fn allows(allow: &Option<Vec<String>>, deny: &[String], user: &str) -> bool {
        !deny.iter().any(|d| d == user) && allow.as_ref().is_none_or(|a| a.iter().any(|x| x == user))
    }

    pub fn video(&self, user: &str) -> bool {
        Self::allows(&self.video_allow, &self.video_deny, user)
    }

    pub fn audio(&self, user: &str) -> bool {
        Self::allows(&self.audio_allow, &self.audio_deny, user)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioMode {
    All,
    Users(Vec<String>),
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeSettings {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub kbps: u32,
    pub gop_s: u32,
    pub audio_channels: usize,
    pub audio_kbps: u32,
    /// OpenH264 (the default) or libx264.
    pub openh264: bool,
}

/// A watermark: an image scaled to its box, blended above every tile.
#[derive(Debug, Clone)]
pub struct Watermark {
    pub image: Arc<RgbaImage>,
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// The layout's images, already fetched and decoded (LAYOUTS.md §3.5).
#[derive(Debug, Clone, Default)]
pub struct MixImages {
    pub background: Option<Arc<RgbaImage>>,
    pub placeholder: Option<Arc<RgbaImage>>,
    pub watermarks: Vec<Watermark>,
}

impl MixImages {
    /// Identity of the images (to know when scaled copies must be remade).
    pub(crate) fn identity(&self) -> Vec<usize> {
        let mut v: Vec<usize> = [&self.background, &self.placeholder].iter().map(|i| i.as_ref().map(|a| Arc::as_ptr(a) as usize).unwrap_or(0)).collect();
        for w in &self.watermarks {
            v.extend([Arc::as_ptr(&w.image) as usize, w.x as usize, w.y as usize, w.width as usize, w.height as usize]);
        }
        v
    }
}

/// What a job does; `layout`, `audio` and `subscribe` may be replaced while it runs.
#[derive(Debug, Clone)]
pub struct MixSpec {
    pub id: String,
    pub room: RoomKey,
    pub user: UserId,
    pub layout: LayoutConfig,
    pub images: MixImages,
    pub background: Rgb,
    pub include_aux: bool,
    pub subscribe: Subscribe,
    pub audio: AudioMode,
    pub max_voices: usize,
    pub encode: EncodeSettings,
    pub video: bool,
    pub max_idle: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MixState {
    Starting,
    Running,
    Stopped,
}

impl MixState {
    pub fn as_str(self) -> &'static str {
        match self {
            MixState::Starting => "STARTING",
            MixState::Running => "RUNNING",
            MixState::Stopped => "STOPPED",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct InputStatus {
    pub key: InputKey,
    pub join_order: u64,
    pub tile: Option<super::layout::Tile>,
    pub has_video: bool,
    pub has_audio: bool,
    pub voice_selected: bool,
    /// The size of the input's last decoded picture: with simulcast, the layer its tile needs.
    pub decoded: Option<(u32, u32)>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct MixStats {
    pub fps: f64,
    pub decode_ms_p50: f64,
    pub compose_ms_p50: f64,
    pub encode_ms_p50: f64,
    pub dropped_frames: u64,
    pub frames: u64,
    /// Pictures taken as a transcoding ingest decoded them, instead of decoding its stream.
    pub shared_pictures: u64,
    /// CPU of the job's own thread (decode, compose, OpenH264, audio), in cores.
    pub cpu_cores: f64,
}

#[derive(Debug, Clone)]
pub struct MixStatus {
    pub state: MixState,
    pub inputs: Vec<InputStatus>,
    pub stats: MixStats,
    pub stopped_at: Option<i64>,
    pub leave_code: Option<u32>,
    pub error: Option<String>,
}

/// Why a mix job failed (LeaveCode 104, its `error`).
#[derive(Debug, thiserror::Error)]
pub enum MixError {
    #[error(transparent)]
    Engine(#[from] crate::RtcServerError),
    #[error(transparent)]
    Media(#[from] tessera_transcode::TranscodeError),
}
