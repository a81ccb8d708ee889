//! Codecs through the system FFmpeg (ffmpeg-next): audio to Opus for RTMP and pull ingest
//! (`audio`), H.264 encoding and any-video-to-H.264 transcoding (`video`), and the pull-ingest
//! demuxer (`source`). The MCU's decoders, scaler and encoders join this crate.
//!
//! `audio` and `video` do no I/O: compressed frames in, compressed frames out. `source` is the
//! one exception: libavformat owns the network reads, so it runs on a worker thread and can be
//! interrupted (see its docs).

pub mod audio;
pub mod compose;
pub mod decode;
pub mod image;
pub mod mux;
mod opus;
pub mod source;
pub mod video;

pub use audio::{aac_tone, set_ingest_opus_complexity, set_ingest_opus_kbps, AacToOpus, AudioToOpus};
/// FFmpeg's types, for callers that hold frames.
pub use ffmpeg_next as ff;

#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    #[error("FFmpeg has no {0} codec")]
    MissingCodec(&'static str),
    #[error("FFmpeg: {0}")]
    Ffmpeg(#[from] ff::Error),
    #[error("the AAC configuration is empty")]
    NoConfig,
    #[error("{0}")]
    Unsupported(String),
}

/// Opus at 48 kHz in 20 ms frames (PRODUCT.md §3.5, §6.3).
pub const OPUS_RATE: u32 = 48_000;
pub const OPUS_FRAME: usize = 960;

/// One encoded Opus frame and its 48 kHz RTP timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpusFrame {
    pub ts: u32,
    pub data: Vec<u8>,
    /// The level of the audio it encodes, in dBov (RFC 6464), when the PCM was at hand.
    pub level: Option<u8>,
}

/// FFmpeg is set up once per process, and only its errors are logged.
pub(crate) fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = ff::init();
        ff::util::log::set_level(ff::util::log::Level::Error);
    });
}
