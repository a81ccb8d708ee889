//! libopus's encoder, called directly (the system library FFmpeg links too).
//!
//! FFmpeg's `libopus` wrapper encodes through libopus's multistream API, which sizes its
//! encoders on every call (`opus_encoder_get_size`). In a libopus built with custom modes
//! (Debian's is) that size comes from `opus_custom_mode_create`, which detects the CPU's
//! features first: two `cpuid` instructions per 20 ms frame, and under virtualization each is
//! a trip to the hypervisor. Profiled on an RTMP ingest (10 publishers, BENCHMARKS.md): 17 % of
//! the server's CPU sat on those two instructions. One stream needs one encoder: the plain
//! API, whose `opus_encode` does no such work.

use crate::{TranscodeError, OPUS_FRAME, OPUS_RATE};
use std::ffi::c_int;
use std::ptr::NonNull;

#[repr(C)]
struct RawEncoder {
    _opaque: [u8; 0],
}

#[link(name = "opus")]
extern "C" {
    fn opus_encoder_create(fs: i32, channels: c_int, application: c_int, error: *mut c_int) -> *mut RawEncoder;
    fn opus_encoder_ctl(st: *mut RawEncoder, request: c_int, ...) -> c_int;
    fn opus_encode(st: *mut RawEncoder, pcm: *const i16, frame_size: c_int, data: *mut u8, max_data_bytes: i32) -> i32;
    fn opus_encoder_destroy(st: *mut RawEncoder);
}

// opus_defines.h
const OPUS_OK: c_int = 0;
const OPUS_APPLICATION_AUDIO: c_int = 2049;
const OPUS_SET_BITRATE_REQUEST: c_int = 4002;
const OPUS_SET_VBR_REQUEST: c_int = 4006;
const OPUS_SET_COMPLEXITY_REQUEST: c_int = 4010;
const OPUS_SET_VBR_CONSTRAINT_REQUEST: c_int = 4020;

/// The most one 20 ms packet takes (libopus's recommended bound is 4000 bytes).
const MAX_PACKET: usize = 4000;

/// One Opus encoder: 48 kHz, mono or stereo, 20 ms frames of interleaved 16-bit PCM.
pub(crate) struct Encoder {
    raw: NonNull<RawEncoder>,
    channels: usize,
    packet: Box<[u8; MAX_PACKET]>,
}

// SAFETY: the encoder state is owned by this value alone and used through `&mut self` only;
// libopus keeps no thread-local state.
unsafe impl Send for Encoder {}

impl Encoder {
    /// The settings FFmpeg's wrapper used: the "audio" application, unconstrained VBR at
    /// `bitrate` bit/s; `complexity` 0–10 (libopus's default 10 when None).
    pub(crate) fn new(channels: usize, bitrate: i32, complexity: Option<u8>) -> Result<Encoder, TranscodeError> {
        let channels = channels.clamp(1, 2);
        let mut error: c_int = 0;
        // SAFETY: plain arguments and a valid out-pointer for the error.
        let raw = unsafe { opus_encoder_create(OPUS_RATE as i32, channels as c_int, OPUS_APPLICATION_AUDIO, &mut error) };
        let raw = NonNull::new(raw).filter(|_| error == OPUS_OK).ok_or_else(|| TranscodeError::Unsupported(format!("libopus: cannot make an encoder (error {error})")))?;
        let encoder = Encoder { raw, channels, packet: Box::new([0; MAX_PACKET]) };
        encoder.ctl(OPUS_SET_BITRATE_REQUEST, bitrate)?;
        encoder.ctl(OPUS_SET_VBR_REQUEST, 1)?;
        encoder.ctl(OPUS_SET_VBR_CONSTRAINT_REQUEST, 0)?;
        if let Some(c) = complexity {
            encoder.ctl(OPUS_SET_COMPLEXITY_REQUEST, c.min(10) as i32)?;
        }
        Ok(encoder)
    }

    fn ctl(&self, request: c_int, value: i32) -> Result<(), TranscodeError> {
        // SAFETY: the encoder is live; these requests take one opus_int32 argument.
        let r = unsafe { opus_encoder_ctl(self.raw.as_ptr(), request, value) };
        if r == OPUS_OK {
            Ok(())
        } else {
            Err(TranscodeError::Unsupported(format!("libopus: request {request} = {value} refused (error {r})")))
        }
    }

    /// Encodes one 20 ms frame: `OPUS_FRAME` samples per channel, interleaved.
    pub(crate) fn encode(&mut self, pcm: &[i16]) -> Result<&[u8], TranscodeError> {
        if pcm.len() != OPUS_FRAME * self.channels {
            return Err(TranscodeError::Unsupported(format!("libopus: a 20 ms frame is {} samples, not {}", OPUS_FRAME * self.channels, pcm.len())));
        }
        // SAFETY: `pcm` holds a whole frame for this encoder's channels; the packet buffer is
        // MAX_PACKET bytes long.
        let n = unsafe { opus_encode(self.raw.as_ptr(), pcm.as_ptr(), OPUS_FRAME as c_int, self.packet.as_mut_ptr(), MAX_PACKET as i32) };
        if n < 0 {
            return Err(TranscodeError::Unsupported(format!("libopus: encode failed (error {n})")));
        }
        Ok(&self.packet[..n as usize])
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        // SAFETY: made by opus_encoder_create, destroyed once.
        unsafe { opus_encoder_destroy(self.raw.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_encodes_with_its_channel_count_and_a_short_one_is_refused() {
        for channels in [1usize, 2] {
            let mut e = Encoder::new(channels, 48_000, Some(1)).unwrap();
            assert!(e.encode(&[0; 10]).is_err(), "a partial frame");
            let tone: Vec<i16> = (0..OPUS_FRAME * channels).map(|i| (((i / channels) as f32 * 0.0575).sin() * 8000.0) as i16).collect();
            let packet = e.encode(&tone).unwrap();
            assert!(packet.len() > 10, "{} bytes", packet.len());
            // The TOC byte's stereo flag (RFC 6716 §3.1) and a 20 ms frame (one frame, code 0).
            assert_eq!(packet[0] & 0x04 != 0, channels == 2, "TOC {:#04x}", packet[0]);
            assert_eq!(packet[0] & 0x03, 0, "one frame per packet");
        }
    }
}
