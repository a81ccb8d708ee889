//! The MCU's decoders and its audio encoder: H.264 (Annex-B access units) and VP8 frames to
//! pictures, Opus to 48 kHz stereo float, and 48 kHz PCM back to Opus.

use crate::{init, OpusFrame, TranscodeError, OPUS_FRAME, OPUS_RATE};
use ff::format::sample::{Sample, Type};
use ff::ChannelLayout;
use ffmpeg_next as ff;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    H264,
    Vp8,
}

/// Compressed pictures in, the latest decoded picture kept.
pub struct VideoDecoder {
    decoder: ff::decoder::Video,
    frame: ff::frame::Video,
    latest: ff::frame::Video,
    has_picture: bool,
}

// SAFETY: the codec context and frames belong to this value and are used through `&mut self`.
unsafe impl Send for VideoDecoder {}

impl VideoDecoder {
    pub fn new(codec: VideoCodec) -> Result<VideoDecoder, TranscodeError> {
        init();
        let id = match codec {
            VideoCodec::H264 => ff::codec::Id::H264,
            VideoCodec::Vp8 => ff::codec::Id::VP8,
        };
        let c = ff::decoder::find(id).ok_or(TranscodeError::MissingCodec("video decoder"))?;
        let mut ctx = ff::codec::context::Context::new_with_codec(c);
        // One thread: tiles are small, and frame threading would add a frame of delay.
        ctx.set_threading(ff::threading::Config { kind: ff::threading::Type::Slice, count: 1, ..Default::default() });
        let decoder = ctx.decoder().video()?;
        Ok(VideoDecoder { decoder, frame: ff::frame::Video::empty(), latest: ff::frame::Video::empty(), has_picture: false })
    }

    /// Decodes one access unit (H.264 in Annex-B form, or a whole VP8 frame). Returns whether a
    /// new picture came out.
    pub fn decode(&mut self, data: &[u8]) -> Result<bool, TranscodeError> {
        let packet = ff::Packet::copy(data);
        self.decoder.send_packet(&packet)?;
        let mut got = false;
        while self.decoder.receive_frame(&mut self.frame).is_ok() {
            std::mem::swap(&mut self.frame, &mut self.latest);
            self.has_picture = true;
            got = true;
        }
        Ok(got)
    }

    /// The last picture decoded, if any.
    pub fn picture(&self) -> Option<&ff::frame::Video> {
        self.has_picture.then_some(&self.latest)
    }
}

/// Opus packets in, 48 kHz interleaved stereo `f32` out.
pub struct OpusDecoder {
    decoder: ff::decoder::Audio,
    frame: ff::frame::Audio,
}

// SAFETY: as above.
unsafe impl Send for OpusDecoder {}

impl OpusDecoder {
    pub fn new() -> Result<OpusDecoder, TranscodeError> {
        init();
        let c = ff::decoder::find(ff::codec::Id::OPUS).ok_or(TranscodeError::MissingCodec("Opus decoder"))?;
        let mut ctx = ff::codec::context::Context::new_with_codec(c);
        // SAFETY: plain fields of a context not yet opened.
        unsafe {
            let raw = ctx.as_mut_ptr();
            (*raw).sample_rate = OPUS_RATE as i32;
            (*raw).ch_layout = std::mem::zeroed();
            ff::ffi::av_channel_layout_default(&mut (*raw).ch_layout, 2);
        }
        let decoder = ctx.decoder().audio()?;
        Ok(OpusDecoder { decoder, frame: ff::frame::Audio::empty() })
    }

    /// Appends the packet's samples (interleaved stereo) to `out`.
    pub fn decode(&mut self, packet: &[u8], out: &mut Vec<f32>) -> Result<(), TranscodeError> {
        self.decoder.send_packet(&ff::Packet::copy(packet))?;
        while self.decoder.receive_frame(&mut self.frame).is_ok() {
            let n = self.frame.samples();
            let channels = self.frame.channels().max(1) as usize;
            match self.frame.format() {
                Sample::F32(Type::Planar) => {
                    let l = &self.frame.plane::<f32>(0)[..n];
                    let r = if channels > 1 { &self.frame.plane::<f32>(1)[..n] } else { l };
                    for i in 0..n {
                        out.push(l[i]);
                        out.push(r[i]);
                    }
                }
                Sample::F32(Type::Packed) => {
                    let data = self.frame.plane::<f32>(0);
                    for i in 0..n {
                        let l = data[i * channels];
                        out.push(l);
                        out.push(if channels > 1 { data[i * channels + 1] } else { l });
                    }
                }
                Sample::I16(Type::Packed) => {
                    let data = self.frame.plane::<i16>(0);
                    for i in 0..n {
                        let l = data[i * channels] as f32 / 32768.0;
                        out.push(l);
                        out.push(if channels > 1 { data[i * channels + 1] as f32 / 32768.0 } else { l });
                    }
                }
                other => return Err(TranscodeError::Unsupported(format!("Opus decoder gave {other:?}"))),
            }
        }
        Ok(())
    }
}

/// 20 ms frames of 48 kHz PCM in, Opus out (mono or stereo, a set bitrate).
pub struct OpusEncoder {
    encoder: crate::opus::Encoder,
    channels: usize,
    /// One frame's interleaved samples, reused.
    pcm: Vec<i16>,
    next_ts: u32,
}

impl OpusEncoder {
    pub fn new(channels: usize, kbps: u32) -> Result<OpusEncoder, TranscodeError> {
        let channels = channels.clamp(1, 2);
        let encoder = crate::opus::Encoder::new(channels, kbps as i32 * 1000, None)?;
        Ok(OpusEncoder { encoder, channels, pcm: vec![0; OPUS_FRAME * channels], next_ts: 0 })
    }

    /// Encodes one 20 ms frame: `OPUS_FRAME` interleaved stereo samples in [-1, 1] (mixed down
    /// to mono when the encoder is mono).
    pub fn encode(&mut self, stereo: &[f32], out: &mut Vec<OpusFrame>) -> Result<(), TranscodeError> {
        let plane = &mut self.pcm;
        for i in 0..OPUS_FRAME {
            let (l, r) = (stereo.get(2 * i).copied().unwrap_or(0.0), stereo.get(2 * i + 1).copied().unwrap_or(0.0));
            if self.channels == 1 {
                plane[i] = (((l + r) * 0.5).clamp(-1.0, 1.0) * 32767.0) as i16;
            } else {
                plane[2 * i] = (l.clamp(-1.0, 1.0) * 32767.0) as i16;
                plane[2 * i + 1] = (r.clamp(-1.0, 1.0) * 32767.0) as i16;
            }
        }
        let level = tessera_media::audio_level::dbov_f32(stereo);
        let data = self.encoder.encode(&self.pcm)?.to_vec();
        out.push(OpusFrame { ts: self.next_ts, data, level: Some(level) });
        self.next_ts = self.next_ts.wrapping_add(OPUS_FRAME as u32);
        Ok(())
    }
}

/// 48 kHz PCM in, AAC-LC out (relays and recordings: FLV and MPEG-TS carry AAC, not Opus).
pub struct AacEncoder {
    encoder: ff::encoder::Audio,
    channels: usize,
    frame: ff::frame::Audio,
    packet: ff::Packet,
    /// Interleaved stereo samples waiting for a whole 1024-sample frame.
    pending: Vec<f32>,
    next_ts: u64,
    frames_out: u64,
    asc: Vec<u8>,
}

// SAFETY: as above.
unsafe impl Send for AacEncoder {}

/// Samples per AAC-LC frame.
pub const AAC_FRAME: usize = 1024;

/// One AAC frame and its time in 48 kHz samples from the encoder's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AacFrame {
    pub ts48: u64,
    pub data: Vec<u8>,
}

impl AacEncoder {
    pub fn new(channels: usize, kbps: u32) -> Result<AacEncoder, TranscodeError> {
        init();
        let codec = ff::encoder::find(ff::codec::Id::AAC).ok_or(TranscodeError::MissingCodec("AAC encoder"))?;
        let layout = if channels == 1 { ChannelLayout::MONO } else { ChannelLayout::STEREO };
        let mut enc = ff::codec::context::Context::new_with_codec(codec).encoder().audio()?;
        enc.set_rate(OPUS_RATE as i32);
        enc.set_channel_layout(layout);
        enc.set_format(Sample::F32(Type::Planar));
        enc.set_bit_rate(kbps as usize * 1000);
        enc.set_time_base((1, OPUS_RATE as i32));
        // The AudioSpecificConfig goes in extradata (the FLV/MP4 sequence header), not ADTS.
        unsafe {
            (*enc.as_mut_ptr()).flags |= ff::ffi::AV_CODEC_FLAG_GLOBAL_HEADER as i32;
        }
        let encoder = enc.open_as(codec)?;
        let asc = unsafe {
            let raw = encoder.as_ptr();
            std::slice::from_raw_parts((*raw).extradata, (*raw).extradata_size.max(0) as usize).to_vec()
        };
        let mut frame = ff::frame::Audio::new(Sample::F32(Type::Planar), AAC_FRAME, layout);
        frame.set_rate(OPUS_RATE);
        Ok(AacEncoder { encoder, channels: channels.clamp(1, 2), frame, packet: ff::Packet::empty(), pending: Vec::new(), next_ts: 0, frames_out: 0, asc })
    }

    /// The AudioSpecificConfig.
    pub fn audio_specific_config(&self) -> &[u8] {
        &self.asc
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Adds interleaved stereo samples; appends every AAC frame that completes.
    pub fn push(&mut self, stereo: &[f32], out: &mut Vec<AacFrame>) -> Result<(), TranscodeError> {
        self.pending.extend_from_slice(stereo);
        while self.pending.len() >= AAC_FRAME * 2 {
            for i in 0..AAC_FRAME {
                let (l, r) = (self.pending[2 * i], self.pending[2 * i + 1]);
                if self.channels == 1 {
                    self.frame.plane_mut::<f32>(0)[i] = (l + r) * 0.5;
                } else {
                    self.frame.plane_mut::<f32>(0)[i] = l;
                    self.frame.plane_mut::<f32>(1)[i] = r;
                }
            }
            self.pending.drain(..AAC_FRAME * 2);
            self.frame.set_pts(Some(self.next_ts as i64));
            self.next_ts += AAC_FRAME as u64;
            self.encoder.send_frame(&self.frame)?;
            while self.encoder.receive_packet(&mut self.packet).is_ok() {
                if let Some(d) = self.packet.data() {
                    // One frame after another from 0: the encoder's own pts start negative
                    // (priming), which containers would see as repeated timestamps.
                    out.push(AacFrame { ts48: self.frames_out * AAC_FRAME as u64, data: d.to_vec() });
                    self.frames_out += 1;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opus_round_trip_keeps_a_tone() {
        let mut enc = OpusEncoder::new(2, 64).unwrap();
        let mut dec = OpusDecoder::new().unwrap();
        let mut packets = Vec::new();
        for f in 0..50 {
            let pcm: Vec<f32> = (0..OPUS_FRAME * 2).map(|i| ((f * OPUS_FRAME + i / 2) as f32 * 440.0 * std::f32::consts::TAU / 48_000.0).sin() * 0.5).collect();
            enc.encode(&pcm, &mut packets).unwrap();
        }
        assert!(packets.len() >= 45);
        let mut out = Vec::new();
        for p in &packets {
            dec.decode(&p.data, &mut out).unwrap();
        }
        let rms = (out.iter().map(|s| s * s).sum::<f32>() / out.len() as f32).sqrt();
        assert!(rms > 0.2, "rms {rms}");
        // And on to AAC, which FFmpeg's decoder (via AudioToOpus) takes back.
        let mut aac = AacEncoder::new(2, 96).unwrap();
        let mut frames = Vec::new();
        aac.push(&out, &mut frames).unwrap();
        assert!(frames.len() >= 40, "{}", frames.len());
        assert_eq!(&aac.audio_specific_config()[..2], &[0x11, 0x90], "AudioSpecificConfig: AAC-LC, 48 kHz, stereo");
        let mut back = crate::AudioToOpus::new(aac.audio_specific_config()).unwrap();
        let mut opus = Vec::new();
        for f in &frames {
            back.push(&f.data, (f.ts48 / 48) as u32, &mut opus).unwrap();
        }
        assert!(opus.len() >= 40, "about a second of 20 ms frames: {}", opus.len());
    }
}
