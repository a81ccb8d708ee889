//! Tessera's media engine, where ingest meets output (docs/architecture.md):
//! rooms (routers) hold participants; a participant's transports carry producers (incoming
//! tracks) and consumers (its copies of other producers); the SFU forwards packets from
//! producers to consumers; `mcu` runs mix jobs on in-process taps of the SFU. The outputs
//! (relays, recordings) join here as they land.
//!
//! `sfu` is the sans-IO core (datagrams and time in, datagrams and answers out); `driver` is the
//! thin tokio task that owns the shared UDP socket, the ICE-TCP listener (`ice_tcp`) and the timer.

pub mod cluster_relay;
pub mod custom;
pub mod driver;
pub mod forward;
mod ice_tcp;
pub mod ingest;
pub mod ingest_transcode;
pub mod mcu;
pub mod outputs;
pub mod presence;
pub mod quality;
pub mod rtmp_publisher;
pub mod sfu;
#[cfg(test)]
mod sfu_harness;
pub mod speakers;
pub mod speedtest;

pub use driver::{FirstMedia, KeyframeRequests, PublisherWatch, RtcHandle, RtcServerError, SignalingMember, DEFAULT_SPREAD_PERMILLE, MAX_WORKERS};
pub use presence::{JoinInfo, ParticipantInfo, RoomEvent, Track};
pub use sfu::{
    ChannelKind, IceRestart, IngestPacket, MemberMessage, OfferedTrack, PacketRoute, PublisherEnd, PublisherInfo, Quality, RoomKey, RoomSummary, SessionInfo, SessionSpec,
    SfuStats, SpeedTestRefusal, SubscribeRequest, SubscriberError, SubscriberOffer, TapKind, TapPacket, TrackStats,
};
pub use tessera_rtc::{OfferError, OfferSummary, PeerRole, SectionKind};
/// The Opus complexity of ingests' audio transcodes (`ingest_opus_complexity`).
pub use tessera_transcode::set_ingest_opus_complexity;
/// The Opus bitrate of ingests' audio transcodes (`ingest_opus_kbps`).
pub use tessera_transcode::set_ingest_opus_kbps;
