//! Audio to Opus: AAC from RTMP (AudioSpecificConfig), or whatever a pulled source carries
//! (AAC, MP3, ...), decoded, resampled to 48 kHz stereo and encoded as 20 ms Opus frames.

use crate::{init, OpusFrame, TranscodeError, OPUS_FRAME, OPUS_RATE};
use ff::format::sample::{Sample, Type};
use ff::ChannelLayout;
use ffmpeg_next as ff;

/// Compressed audio frames in, Opus frames out.
pub struct AudioToOpus {
    decoder: ff::decoder::Audio,
    resampler: Option<ff::software::resampling::Context>,
    encoder: crate::opus::Encoder,
    decoded: ff::frame::Audio,
    resampled: ff::frame::Audio,
    /// Interleaved stereo samples waiting for a full 20 ms frame.
    pending: Vec<i16>,
    /// 48 kHz timestamp of the first pending sample.
    next_ts: Option<u32>,
    /// Timestamp of the next Opus packet out. The encoder's own pts carry its pre-skip; RTP
    /// wants one 20 ms step per packet from the stream's first sample.
    out_ts: Option<u32>,
}

// SAFETY: the FFmpeg contexts inside are owned by this value alone and used through `&mut self`
// only, so moving it to another thread (an async task migrating between workers) is sound;
// FFmpeg codec contexts have no thread affinity.
unsafe impl Send for AudioToOpus {}

/// The RTMP name: AAC from an AudioSpecificConfig (`AudioToOpus::new`).
pub type AacToOpus = AudioToOpus;

/// The Opus encoder complexity (0–10) of ingest transcodes: the process's setting
/// (`set_ingest_opus_complexity`), libopus's default 10 unless set.
static INGEST_OPUS_COMPLEXITY: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(10);

/// The Opus bitrate (kbit/s) of ingest transcodes (`set_ingest_opus_kbps`), 64 unless set.
static INGEST_OPUS_KBPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(64);

/// Sets the Opus bitrate of transcodes made from now on (RTMP and pull ingests' audio), 16–256
/// kbit/s: 64 carries stereo music well; fewer bits cost less to encode (SRS encodes at 48).
pub fn set_ingest_opus_kbps(kbps: u16) {
    INGEST_OPUS_KBPS.store(kbps.clamp(16, 256) as usize, std::sync::atomic::Ordering::Relaxed);
}

/// Sets the Opus complexity of transcodes made from now on (RTMP and pull ingests' audio).
/// Lower is cheaper: the encode is the largest cost of an RTMP publish, and SRS runs it at 1;
/// 10 buys music quality.
pub fn set_ingest_opus_complexity(complexity: u8) {
    INGEST_OPUS_COMPLEXITY.store(complexity.min(10) as usize, std::sync::atomic::Ordering::Relaxed);
}

impl AudioToOpus {
    /// From the AudioSpecificConfig of the stream's AAC sequence header.
    pub fn new(audio_specific_config: &[u8]) -> Result<AudioToOpus, TranscodeError> {
        init();
        if audio_specific_config.is_empty() {
            return Err(TranscodeError::NoConfig);
        }
        let codec = ff::decoder::find(ff::codec::Id::AAC).ok_or(TranscodeError::MissingCodec("AAC decoder"))?;
        let mut ctx = ff::codec::context::Context::new_with_codec(codec);
        // The decoder learns rate and channels from the AudioSpecificConfig in extradata.
        unsafe {
            let raw = ctx.as_mut_ptr();
            let len = audio_specific_config.len();
            let buf = ff::ffi::av_mallocz(len + ff::ffi::AV_INPUT_BUFFER_PADDING_SIZE as usize) as *mut u8;
            std::ptr::copy_nonoverlapping(audio_specific_config.as_ptr(), buf, len);
            (*raw).extradata = buf;
            (*raw).extradata_size = len as i32;
        }
        let decoder = ctx.decoder().audio()?;
        AudioToOpus::with_decoder(decoder)
    }

    /// From a demuxed stream's codec parameters (any codec FFmpeg decodes).
    pub fn from_parameters(parameters: ff::codec::Parameters) -> Result<AudioToOpus, TranscodeError> {
        init();
        let decoder = ff::codec::context::Context::from_parameters(parameters)?.decoder().audio()?;
        AudioToOpus::with_decoder(decoder)
    }

    fn with_decoder(decoder: ff::decoder::Audio) -> Result<AudioToOpus, TranscodeError> {
        let complexity = INGEST_OPUS_COMPLEXITY.load(std::sync::atomic::Ordering::Relaxed) as u8;
        let bitrate = INGEST_OPUS_KBPS.load(std::sync::atomic::Ordering::Relaxed) as i32 * 1000;
        let encoder = crate::opus::Encoder::new(2, bitrate, Some(complexity))?;
        Ok(AudioToOpus {
            decoder,
            resampler: None,
            encoder,
            decoded: ff::frame::Audio::empty(),
            resampled: ff::frame::Audio::empty(),
            pending: Vec::with_capacity(OPUS_FRAME * 4),
            next_ts: None,
            out_ts: None,
        })
    }

    /// Decodes one compressed frame stamped `timestamp_ms` (the stream's clock) and appends every Opus
    /// frame that completes. Opus timestamps run continuously from the first frame's time, so
    /// they stay on the same clock as the video (lip sync).
    pub fn push(&mut self, aac: &[u8], timestamp_ms: u32, out: &mut Vec<OpusFrame>) -> Result<(), TranscodeError> {
        if self.next_ts.is_none() {
            self.next_ts = Some(timestamp_ms.wrapping_mul(OPUS_RATE / 1000));
        }
        let packet = ff::Packet::copy(aac);
        self.decoder.send_packet(&packet)?;
        while self.decoder.receive_frame(&mut self.decoded).is_ok() {
            if self.resampler.is_none() {
                let layout = if self.decoded.channels() >= 2 { ChannelLayout::STEREO } else { ChannelLayout::MONO };
                self.resampler =
                    Some(ff::software::resampling::Context::get(self.decoded.format(), layout, self.decoded.rate(), Sample::I16(Type::Packed), ChannelLayout::STEREO, OPUS_RATE)?);
            }
            let resampler = self.resampler.as_mut().expect("just made");
            resampler.run(&self.decoded, &mut self.resampled)?;
            let n = self.resampled.samples() * 2;
            self.pending.extend_from_slice(&self.resampled.plane::<i16>(0)[..n.min(self.resampled.plane::<i16>(0).len())]);
            self.encode_ready(out)?;
        }
        Ok(())
    }

    fn encode_ready(&mut self, out: &mut Vec<OpusFrame>) -> Result<(), TranscodeError> {
        while self.pending.len() >= OPUS_FRAME * 2 {
            let ts = self.next_ts.unwrap_or(0);
            let frame = &self.pending[..OPUS_FRAME * 2];
            let level = tessera_media::audio_level::dbov_i16(frame);
            let data = self.encoder.encode(frame)?.to_vec();
            self.pending.drain(..OPUS_FRAME * 2);
            let out_ts = *self.out_ts.get_or_insert(ts);
            out.push(OpusFrame { ts: out_ts, data, level: Some(level) });
            self.out_ts = Some(out_ts.wrapping_add(OPUS_FRAME as u32));
            self.next_ts = Some(ts.wrapping_add(OPUS_FRAME as u32));
        }
        Ok(())
    }
}

/// A test signal for load generation and tests: `frames` AAC-LC frames (1024 samples each) of a
/// 440 Hz tone, and their AudioSpecificConfig, made with FFmpeg's own AAC encoder.
pub fn aac_tone(rate: u32, channels: u16, frames: usize) -> Result<(Vec<u8>, Vec<Vec<u8>>), TranscodeError> {
    init();
    let codec = ff::encoder::find(ff::codec::Id::AAC).ok_or(TranscodeError::MissingCodec("AAC encoder"))?;
    let mut enc = ff::codec::context::Context::new_with_codec(codec).encoder().audio()?;
    let layout = if channels == 2 { ChannelLayout::STEREO } else { ChannelLayout::MONO };
    enc.set_rate(rate as i32);
    enc.set_channel_layout(layout);
    enc.set_format(Sample::F32(Type::Planar));
    enc.set_bit_rate(128_000);
    enc.set_time_base((1, rate as i32));
    unsafe {
        (*enc.as_mut_ptr()).flags |= ff::ffi::AV_CODEC_FLAG_GLOBAL_HEADER as i32;
    }
    let mut enc = enc.open_as(codec)?;
    let asc = unsafe {
        let raw = enc.as_ptr();
        std::slice::from_raw_parts((*raw).extradata, (*raw).extradata_size as usize).to_vec()
    };
    let mut out = Vec::new();
    let mut packet = ff::Packet::empty();
    for i in 0..frames {
        let mut f = ff::frame::Audio::new(Sample::F32(Type::Planar), 1024, layout);
        f.set_rate(rate);
        f.set_pts(Some((i * 1024) as i64));
        for ch in 0..channels as usize {
            for (j, s) in f.plane_mut::<f32>(ch).iter_mut().enumerate() {
                let t = (i * 1024 + j) as f32 / rate as f32;
                *s = (t * 440.0 * std::f32::consts::TAU).sin() * 0.3;
            }
        }
        enc.send_frame(&f)?;
        while enc.receive_packet(&mut packet).is_ok() {
            if let Some(d) = packet.data() {
                out.push(d.to_vec());
            }
        }
    }
    Ok((asc, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aac_44k_stereo_and_48k_mono_become_20ms_opus_frames() {
        for (rate, channels) in [(44_100u32, 2u16), (48_000, 1)] {
            let (asc, frames) = aac_tone(rate, channels, 100).unwrap();
            let mut t = AacToOpus::new(&asc).unwrap();
            let mut out = Vec::new();
            for (i, f) in frames.iter().enumerate() {
                let ms = (i as u64 * 1024 * 1000 / rate as u64) as u32 + 1000;
                t.push(f, ms, &mut out).unwrap();
            }
            // ~100 AAC frames of 1024 samples ≈ 2.1-2.3 s ≈ 100+ Opus frames of 20 ms.
            assert!(out.len() >= 95, "{rate}/{channels}: {} Opus frames", out.len());
            assert_eq!(out[0].ts, 1000 * 48, "starts at the stream's clock");
            assert!(out.windows(2).all(|w| w[1].ts.wrapping_sub(w[0].ts) == OPUS_FRAME as u32), "continuous 20 ms steps");
            assert!(out.iter().all(|f| !f.data.is_empty()));
        }
    }

    /// The complexity setting reaches the encoder: the same tone encodes differently at 0 and 10
    /// (a lower complexity analyses less).
    #[test]
    fn the_ingest_opus_complexity_reaches_the_encoder() {
        let (asc, frames) = aac_tone(48_000, 2, 200).unwrap();
        let encode = |complexity: u8| {
            set_ingest_opus_complexity(complexity);
            let mut t = AacToOpus::new(&asc).unwrap();
            set_ingest_opus_complexity(10);
            let mut out = Vec::new();
            for (i, f) in frames.iter().enumerate() {
                t.push(f, (i as u64 * 1024 * 1000 / 48_000) as u32, &mut out).unwrap();
            }
            out.into_iter().map(|f| f.data).collect::<Vec<_>>()
        };
        let (low, high) = (encode(0), encode(10));
        assert_eq!(low.len(), high.len());
        assert_ne!(low, high, "complexity 0 and 10 made the same Opus packets");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(AacToOpus::new(&[]).is_err());
        let (asc, _) = aac_tone(48_000, 2, 1).unwrap();
        let mut t = AacToOpus::new(&asc).unwrap();
        let mut out = Vec::new();
        for len in [1usize, 7, 100, 2000] {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37) as u8).collect();
            let _ = t.push(&junk, 0, &mut out);
        }
    }
}
