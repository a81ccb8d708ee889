//! The MCU (LAYOUTS.md): mix jobs that decode a room's streams, composite one canvas, mix the
//! audio, encode, and publish the result into the room as the virtual user `mix_<id>`.
//!
//! - `layout`: the pure layout engine (geometry of every template, the slot list).
//! - `audio_mix`: voice selection, summing and the limiter, as a plain value.
//! - `spec`: what a job is asked to do and what it reports, as plain data.
//! - `job`: one thread per job. It takes the room's packets from an SFU tap (in-process, no
//!   WebRTC loop), depacketizes and decodes them, and on an output clock composes (swscale into
//!   a reused canvas), encodes (libx264) and mixes (20 ms Opus), then pushes RTP into the SFU.

pub mod audio_mix;
pub mod job;
pub mod layout;
pub mod spec;

pub use job::MixHandle;
pub use layout::{FillMode, InputKey, LayoutConfig, Region, Rgb, Template, Tile};
pub use spec::{AudioMode, EncodeSettings, InputStatus, MixImages, MixSpec, MixState, MixStats, MixStatus, Subscribe, Watermark};
