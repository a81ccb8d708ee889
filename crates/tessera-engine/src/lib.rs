//! Tessera's media engine, where ingest meets output (docs/architecture.md):
//! rooms (routers) hold participants; a participant's transports carry producers (incoming
//! tracks) and consumers (its copies of other producers); the SFU forwards packets from
//! producers to consumers, the MCU decodes, composites and re-encodes, and outputs relay and
//! record. The tokio drivers of the protocol cores (the shared UDP socket, RTMP TCP sessions)
//! live here too, thin around the sans-IO state machines.
//!
//! Today the engine holds no rooms yet: the WebRTC SFU (issue 3) is the first part to land.
