//! An RTMP publisher's media path (PRODUCT.md §6.3), as a value: FLV/AVC video becomes H.264
//! RTP, AAC becomes 20 ms Opus RTP, each checked against the token's privileges. What WebRTC
//! viewers cannot take (B-frames, other codecs, other AAC rates) is a [`Refusal`], which the
//! driver sends as the `onStatus` error before it closes the connection.

use crate::IngestPacket;
use std::sync::Arc;
use tessera_media::{Codec, StreamKind};
use tessera_model::Privileges;
use tessera_rtmp::flv::{AacConfig, AudioTag, AvcToRtp, VideoTag};
use tessera_transcode::AacToOpus;

/// RTP payload size for packetized H.264.
const MAX_RTP_PAYLOAD: usize = 1200;

/// Why a publish is refused: the `onStatus` description, `<code>: <message>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<tessera_rtmp::flv::FlvError> for Refusal {
    fn from(e: tessera_rtmp::flv::FlvError) -> Refusal {
        Refusal(e.to_string())
    }
}

impl Refusal {
    /// The token lacks `required` (the same words as the HTTP API's 403).
    pub fn privilege_missing(required: Privileges) -> Refusal {
        Refusal(format!("privilege_missing: the token lacks privilege {} ({})", required.bits(), tessera_model::privileges::describe(required)))
    }
}

pub struct RtmpPublisher {
    stream: StreamKind,
    privileges: Privileges,
    video: AvcToRtp,
    video_ssrc: u32,
    audio: Option<AacToOpus>,
    audio_ssrc: u32,
    audio_seq: u64,
}

impl RtmpPublisher {
    pub fn new(stream: StreamKind, privileges: Privileges) -> RtmpPublisher {
        RtmpPublisher {
            stream,
            privileges,
            video: AvcToRtp::new(MAX_RTP_PAYLOAD),
            video_ssrc: tessera_model::random::ssrc(),
            audio: None,
            audio_ssrc: tessera_model::random::ssrc(),
            audio_seq: 1,
        }
    }

    fn check(&self, needed_main: Privileges) -> Result<(), Refusal> {
        let needed = if self.stream == StreamKind::Aux { Privileges::PUBLISH_AUX } else { needed_main };
        if self.privileges.contains(needed) {
            Ok(())
        } else {
            Err(Refusal::privilege_missing(needed))
        }
    }

    /// One FLV video message: its H.264 RTP packets (none until a keyframe after the header).
    pub fn on_video(&mut self, data: &[u8], timestamp_ms: u32) -> Result<Vec<IngestPacket>, Refusal> {
        self.check(Privileges::PUBLISH_VIDEO)?;
        let mut out = Vec::new();
        VideoTag::parse(data).and_then(|tag| self.video.on_tag(&tag, timestamp_ms, &mut out))?;
        Ok(out
            .into_iter()
            .map(|o| IngestPacket {
                ssrc: self.video_ssrc,
                seq: o.seq,
                ts: o.ts,
                marker: o.marker,
                keyframe: o.keyframe,
                codec: Codec::H264,
                payload: Arc::from(o.payload),
                audio_level: None,
            })
            .collect())
    }

    /// One FLV audio message: the sequence header sets up the transcoder, frames become 20 ms
    /// Opus RTP packets.
    pub fn on_audio(&mut self, data: &[u8], timestamp_ms: u32) -> Result<Vec<IngestPacket>, Refusal> {
        self.check(Privileges::PUBLISH_AUDIO)?;
        match AudioTag::parse(data)? {
            AudioTag::SequenceHeader(asc) => {
                let config = AacConfig::parse(asc)?;
                if !matches!(config.sample_rate, 44_100 | 48_000) {
                    return Err(Refusal(format!("codec_unsupported: AAC at {} Hz; send 44100 or 48000 Hz", config.sample_rate)));
                }
                self.audio = Some(AacToOpus::new(asc).map_err(|e| Refusal(format!("codec_unsupported: {e}")))?);
                Ok(Vec::new())
            }
            AudioTag::Frame(frame) => {
                let Some(t) = self.audio.as_mut() else { return Ok(Vec::new()) };
                let mut out = Vec::new();
                if let Err(e) = t.push(frame, timestamp_ms, &mut out) {
                    // One undecodable frame is a glitch, not a reason to drop the publisher.
                    tracing::debug!("AAC frame not decoded: {e}");
                }
                Ok(out
                    .into_iter()
                    .map(|f| {
                        let seq = self.audio_seq;
                        self.audio_seq += 1;
                        IngestPacket { ssrc: self.audio_ssrc, seq, ts: f.ts, marker: false, keyframe: true, codec: Codec::Opus, payload: Arc::from(f.data), audio_level: f.level }
                    })
                    .collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_rtmp::flv::{avc_frame, avc_sequence_header};

    const SPS: [u8; 6] = [0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01];
    const PPS: [u8; 4] = [0x68, 0xce, 0x3c, 0x80];

    #[test]
    fn h264_becomes_rtp_with_keyframes_marked() {
        let mut p = RtmpPublisher::new(StreamKind::Main, Privileges::from_bits(Privileges::PUBLISH_VIDEO.bits() | Privileges::PUBLISH_AUDIO.bits()));
        assert!(p.on_video(&avc_sequence_header(&SPS, &PPS), 0).unwrap().is_empty());
        let packets = p.on_video(&avc_frame(&[&[0x65, 1, 2, 3]], true, 0), 40).unwrap();
        assert!(!packets.is_empty());
        assert!(packets.iter().all(|x| x.codec == Codec::H264 && x.keyframe && x.ssrc == packets[0].ssrc));
        assert!(packets.last().unwrap().marker);
        let next = p.on_video(&avc_frame(&[&[0x41, 9, 9]], false, 0), 80).unwrap();
        assert!(next.iter().all(|x| !x.keyframe));
        assert_eq!(next[0].seq, packets.last().unwrap().seq + 1);
    }

    #[test]
    fn what_viewers_cannot_take_or_the_token_forbids_is_refused_with_its_code() {
        // Audio-only token publishing video; a main-stream token publishing aux.
        let mut p = RtmpPublisher::new(StreamKind::Main, Privileges::PUBLISH_AUDIO);
        assert!(p.on_video(&avc_sequence_header(&SPS, &PPS), 0).unwrap_err().0.starts_with("privilege_missing: "));
        let mut p = RtmpPublisher::new(StreamKind::Aux, Privileges::from_bits(Privileges::PUBLISH_VIDEO.bits() | Privileges::PUBLISH_AUDIO.bits()));
        assert!(p.on_audio(&[0xaf, 0, 0x11, 0x90], 0).unwrap_err().0.starts_with("privilege_missing: "));
        let mut p = RtmpPublisher::new(StreamKind::Main, Privileges::from_bits(Privileges::PUBLISH_VIDEO.bits() | Privileges::PUBLISH_AUDIO.bits()));
        // Sorenson H.263 (codec id 2), then AAC at 32 kHz (ASC 0x12 0x90: LC, index 5).
        assert!(p.on_video(&[0x22, 0, 0, 0, 0], 0).unwrap_err().0.starts_with("codec_unsupported: "));
        let e = p.on_audio(&[0xaf, 0, 0x12, 0x90], 0).unwrap_err();
        assert!(e.0.starts_with("codec_unsupported: AAC at 32000 Hz"), "{e}");
        // 48 kHz mono is taken; frames before it are dropped quietly.
        assert!(p.on_audio(&[0xaf, 1, 1, 2, 3], 0).unwrap().is_empty());
        assert!(p.on_audio(&[0xaf, 0, 0x11, 0x88], 0).unwrap().is_empty());
    }
}
