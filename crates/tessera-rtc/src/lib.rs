//! Tessera's WebRTC core. Every peer is a sans-IO state machine (str0m in RTP mode) and all
//! peers share one UDP socket: a datagram is routed to its peer by the STUN username of the
//! first binding request of a flow, then by source address. The tokio driver that owns the
//! socket and the timers lives in the engine; this crate never touches I/O or the clock.

pub mod demux;
pub mod dtls;
pub mod offer;
pub mod peer;

pub use offer::{OfferError, OfferSection, OfferSummary, SectionKind};
pub use peer::{reject_sections, HostCandidates, Peer, PeerRole};
/// The engine works with str0m's packet and event types directly.
pub use str0m;
