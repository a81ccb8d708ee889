//! The outputs' logic as sans-IO values (docs/architecture.md): what relays and recordings do
//! with tapped media, and their state machines. Drivers in the server own sockets, files,
//! threads and the clock.

pub mod flv;
pub mod hls;
pub mod recording;
pub mod relay;
pub mod tap_input;
pub mod upload;
