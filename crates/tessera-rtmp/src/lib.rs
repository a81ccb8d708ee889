//! Tessera's RTMP core: sans-IO publish sessions built on rml_rtmp's server session (ingest) and
//! client session (relays to CDNs, `client`), FLV/AVC parsing and building, and H.264
//! packetization for the SFU. The tokio TCP driver lives in the engine; this
//! crate takes bytes in and gives bytes and events out.

pub mod client;
pub mod flv;
pub mod session;
pub mod target;

pub use target::{PublishTarget, TargetError};
