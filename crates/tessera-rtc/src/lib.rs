//! Tessera's WebRTC core. Every peer is a sans-IO state machine (str0m in RTP mode) and all
//! peers share one UDP socket: a datagram is routed to its peer by the STUN username of the
//! first binding request of a flow, then by source address. The tokio driver that owns the
//! socket and the timers lives in the engine; this crate never touches I/O or the clock.

pub mod demux;
