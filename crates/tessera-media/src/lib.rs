//! Media primitives shared by the protocol cores (WebRTC, RTMP) and the engine: the names of
//! streams and tracks and the codecs Tessera carries (PRODUCT.md §3.5). Packetizers, the
//! jitter buffer and codec bitstream helpers join this crate as the SFU and MCU land.

pub mod audio_level;
pub mod av1;
pub mod h264;
pub mod h265;
pub mod picture_size;
pub mod rtp;
pub mod throttle;
pub mod vp8;

pub use throttle::KeyframeThrottle;

use serde::{Deserialize, Serialize};
use std::fmt;

/// A user's two streams: camera + mic, and screen share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    Main,
    Aux,
}

impl StreamKind {
    pub fn parse(s: &str) -> Option<StreamKind> {
        match s {
            "main" => Some(StreamKind::Main),
            "aux" => Some(StreamKind::Aux),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Main => "main",
            StreamKind::Aux => "aux",
        }
    }
}

impl fmt::Display for StreamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    Audio,
    Video,
}

/// The codecs Tessera forwards. H.265 is never on the wire to a WebRTC peer: it is an RTMP
/// publisher's original, kept for recordings and E-RTMP relays while viewers get H.264. AV1 is
/// an RTMP publisher's original too, which viewers that negotiated AV1 also get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    Opus,
    H264,
    Vp8,
    H265,
    Av1,
}

impl Codec {
    /// From an SDP `a=rtpmap` encoding name. Case-insensitive: OBS writes `OPUS`.
    pub fn from_sdp_name(name: &str) -> Option<Codec> {
        if name.eq_ignore_ascii_case("opus") {
            Some(Codec::Opus)
        } else if name.eq_ignore_ascii_case("h264") {
            Some(Codec::H264)
        } else if name.eq_ignore_ascii_case("vp8") {
            Some(Codec::Vp8)
        } else {
            None
        }
    }

    pub fn kind(self) -> MediaKind {
        match self {
            Codec::Opus => MediaKind::Audio,
            Codec::H264 | Codec::Vp8 | Codec::H265 | Codec::Av1 => MediaKind::Video,
        }
    }

    /// RTP clock rate in Hz.
    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Opus => 48_000,
            Codec::H264 | Codec::Vp8 | Codec::H265 | Codec::Av1 => 90_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_names_are_case_insensitive() {
        assert_eq!(Codec::from_sdp_name("OPUS"), Some(Codec::Opus));
        assert_eq!(Codec::from_sdp_name("opus"), Some(Codec::Opus));
        assert_eq!(Codec::from_sdp_name("H264"), Some(Codec::H264));
        assert_eq!(Codec::from_sdp_name("VP8"), Some(Codec::Vp8));
        assert_eq!(Codec::from_sdp_name("VP9"), None);
        assert_eq!(Codec::Opus.kind(), MediaKind::Audio);
        assert_eq!(Codec::H264.clock_rate(), 90_000);
    }

    #[test]
    fn stream_kinds() {
        assert_eq!(StreamKind::parse("aux"), Some(StreamKind::Aux));
        assert_eq!(StreamKind::parse("Main"), None);
        assert_eq!(StreamKind::Main.to_string(), "main");
    }
}
