//! One RTMP publishing connection, sans-IO: bytes in (`feed`), bytes and events out. It wraps
//! rml_rtmp's handshake and server session; what to allow is the caller's decision
//! (`accept_publish` / `reject_publish`), and `reject_after_start` refuses a stream that is
//! already flowing (B-frames, an unsupported codec) with an `onStatus` error.

use rml_amf0::Amf0Value;
use rml_rtmp::chunk_io::{ChunkSerializationError, ChunkSerializer};
use rml_rtmp::handshake::{Handshake, HandshakeError, HandshakeProcessResult, PeerType};
use rml_rtmp::messages::{MessageSerializationError, RtmpMessage};
use rml_rtmp::sessions::{ServerSession, ServerSessionConfig, ServerSessionError, ServerSessionEvent, ServerSessionResult};
use rml_rtmp::time::RtmpTimestamp;
use std::collections::HashMap;

/// What happened on the connection.
#[derive(Debug)]
pub enum RtmpEvent {
    /// The client asks to publish: answer with `accept_publish` or `reject_publish`.
    PublishRequested {
        request_id: u32,
        app: String,
        stream_key: String,
    },
    Video {
        data: Vec<u8>,
        timestamp_ms: u32,
    },
    Audio {
        data: Vec<u8>,
        timestamp_ms: u32,
    },
    /// The encoder's `onMetaData`: what it says of its video, when it says it.
    Metadata {
        video_fps: Option<f32>,
        video_kbps: Option<u32>,
    },
    PublishFinished,
}

/// Why a publishing connection cannot go on. rml_rtmp's errors are kept as they are.
#[derive(Debug, thiserror::Error)]
pub enum RtmpError {
    #[error("RTMP handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("RTMP protocol error: {0}")]
    Session(#[from] ServerSessionError),
    #[error("RTMP protocol error: {0}")]
    Message(#[from] MessageSerializationError),
    #[error("RTMP protocol error: {0}")]
    Chunk(#[from] ChunkSerializationError),
    #[error("RTMP protocol error: a publish answered before the session started")]
    NoSession,
}

pub struct RtmpPublishSession {
    handshake: Option<Handshake>,
    session: Option<ServerSession>,
    chunk_size: u32,
    /// Bytes to send to the client, in order.
    pub outbound: Vec<u8>,
}

impl Default for RtmpPublishSession {
    fn default() -> Self {
        Self::new()
    }
}

impl RtmpPublishSession {
    pub fn new() -> RtmpPublishSession {
        RtmpPublishSession { handshake: Some(Handshake::new(PeerType::Server)), session: None, chunk_size: 4096, outbound: Vec::new() }
    }

    /// Feeds received bytes; returns the events they complete. Outbound bytes accumulate in
    /// `outbound`.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<RtmpEvent>, RtmpError> {
        let mut events = Vec::new();
        let mut data = bytes.to_vec();
        if let Some(hs) = self.handshake.as_mut() {
            match hs.process_bytes(&data)? {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    self.outbound.extend_from_slice(&response_bytes);
                    return Ok(events);
                }
                HandshakeProcessResult::Completed { response_bytes, remaining_bytes } => {
                    self.outbound.extend_from_slice(&response_bytes);
                    self.handshake = None;
                    let mut config = ServerSessionConfig::new();
                    config.chunk_size = self.chunk_size;
                    let (session, results) = ServerSession::new(config)?;
                    self.session = Some(session);
                    self.take(results, &mut events)?;
                    data = remaining_bytes;
                }
            }
        }
        if data.is_empty() {
            return Ok(events);
        }
        let session = self.session.as_mut().expect("the handshake completed");
        let results = session.handle_input(&data)?;
        self.take(results, &mut events)?;
        Ok(events)
    }

    fn take(&mut self, results: Vec<ServerSessionResult>, events: &mut Vec<RtmpEvent>) -> Result<(), RtmpError> {
        for r in results {
            match r {
                ServerSessionResult::OutboundResponse(p) => self.outbound.extend_from_slice(&p.bytes),
                ServerSessionResult::RaisedEvent(e) => match e {
                    ServerSessionEvent::ConnectionRequested { request_id, .. } => {
                        // Any app name connects; the publish path decides (PRODUCT.md §6.3).
                        let more = self.session.as_mut().expect("session").accept_request(request_id)?;
                        self.take(more, events)?;
                    }
                    ServerSessionEvent::PublishStreamRequested { request_id, app_name, stream_key, .. } => {
                        events.push(RtmpEvent::PublishRequested { request_id, app: app_name, stream_key });
                    }
                    ServerSessionEvent::VideoDataReceived { data, timestamp, .. } => {
                        events.push(RtmpEvent::Video { data: data.to_vec(), timestamp_ms: timestamp.value });
                    }
                    ServerSessionEvent::AudioDataReceived { data, timestamp, .. } => {
                        events.push(RtmpEvent::Audio { data: data.to_vec(), timestamp_ms: timestamp.value });
                    }
                    ServerSessionEvent::PublishStreamFinished { .. } => events.push(RtmpEvent::PublishFinished),
                    ServerSessionEvent::StreamMetadataChanged { metadata, .. } => {
                        events.push(RtmpEvent::Metadata { video_fps: metadata.video_frame_rate, video_kbps: metadata.video_bitrate_kbps });
                    }
                    _ => {}
                },
                ServerSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        Ok(())
    }

    pub fn accept_publish(&mut self, request_id: u32) -> Result<(), RtmpError> {
        let results = self.session.as_mut().ok_or(RtmpError::NoSession)?.accept_request(request_id)?;
        let mut ignored = Vec::new();
        self.take(results, &mut ignored)
    }

    /// Refuses a publish request: `onStatus` error `NetStream.Publish.Rejected` with
    /// `<code>: <message>` (PRODUCT.md §6.3). rml_rtmp would answer with an `_error` command,
    /// which ffmpeg prints but librtmp-based encoders (OBS) do not log; an `onStatus` error both
    /// show. The session forgets the request all the same.
    pub fn reject_publish(&mut self, request_id: u32, description: &str) -> Result<(), RtmpError> {
        let _error_reply = self.session.as_mut().ok_or(RtmpError::NoSession)?.reject_request(request_id, "NetStream.Publish.Rejected", description)?;
        self.reject_after_start(description)
    }

    /// Refuses a stream that was accepted and is flowing, with the same `onStatus` error. The
    /// message goes on publish stream 1 (the one encoders create) through a fresh serializer
    /// with full chunk headers, so it does not depend on the session's header compression.
    pub fn reject_after_start(&mut self, description: &str) -> Result<(), RtmpError> {
        let mut status = HashMap::new();
        status.insert("level".to_string(), Amf0Value::Utf8String("error".into()));
        status.insert("code".to_string(), Amf0Value::Utf8String("NetStream.Publish.Rejected".into()));
        status.insert("description".to_string(), Amf0Value::Utf8String(description.into()));
        let message = RtmpMessage::Amf0Command {
            command_name: "onStatus".into(),
            transaction_id: 0.0,
            command_object: Amf0Value::Null,
            additional_arguments: vec![Amf0Value::Object(status)],
        };
        let payload = message.into_message_payload(RtmpTimestamp::new(0), 1)?;
        let mut serializer = ChunkSerializer::new();
        serializer.set_max_chunk_size(self.chunk_size, RtmpTimestamp::new(0))?;
        let packet = serializer.serialize(&payload, true, false)?;
        self.outbound.extend_from_slice(&packet.bytes);
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn garbage_fails_the_handshake_without_panicking() {
        let mut seed = 0x0123_4567_89ab_cdefu64;
        for len in [1usize, 10, 1537, 3073, 5000] {
            let mut s = RtmpPublishSession::new();
            let mut v = vec![0u8; len];
            for b in &mut v {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            // Whatever the outcome, it is an error or a (partial) handshake, never a panic.
            let _ = s.feed(&v);
            let _ = s.feed(&v);
        }
        // A wrong version byte is refused at once.
        let mut s = RtmpPublishSession::new();
        assert!(s.feed(&[0x06; 1537]).is_err());
    }

    /// A real client handshake, then garbage chunks: the chunk and AMF parsers say no without a
    /// panic, whatever the bytes.
    #[test]
    fn garbage_chunks_after_a_handshake_never_panic() {
        let mut seed = 0xfeed_face_dead_beefu64;
        for round in 0..200 {
            let mut server = RtmpPublishSession::new();
            let mut client = Handshake::new(PeerType::Client);
            let c0c1 = client.generate_outbound_p0_and_p1().unwrap();
            server.feed(&c0c1).unwrap();
            let s0s1s2 = std::mem::take(&mut server.outbound);
            let HandshakeProcessResult::Completed { response_bytes, .. } = client.process_bytes(&s0s1s2).unwrap() else {
                panic!("the client handshake completes on S0+S1+S2");
            };
            assert!(server.feed(&response_bytes).unwrap().is_empty());
            let mut junk = vec![0u8; 16 + round * 7];
            for b in &mut junk {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            // Chunk basic headers for the command stream (3) and type 0 headers, then noise.
            junk[0] = [0x03, 0x43, 0x83, 0xc3, 0x02][round % 5];
            let _ = server.feed(&junk);
            let _ = server.feed(&junk);
        }
    }

    /// The server side of a completed handshake with a real client handshake.
    pub(crate) fn handshaken_server() -> RtmpPublishSession {
        let mut server = RtmpPublishSession::new();
        let mut client = Handshake::new(PeerType::Client);
        server.feed(&client.generate_outbound_p0_and_p1().unwrap()).unwrap();
        let s0s1s2 = std::mem::take(&mut server.outbound);
        let HandshakeProcessResult::Completed { response_bytes, .. } = client.process_bytes(&s0s1s2).unwrap() else {
            panic!("the client handshake completes on S0+S1+S2");
        };
        server.feed(&response_bytes).unwrap();
        server.outbound.clear();
        server
    }

    /// One RTMP message (type 20: AMF0 command, 18: AMF0 data) in 128-byte chunks on stream `sid`.
    pub(crate) fn chunked(type_id: u8, sid: u32, amf0: &[u8]) -> Vec<u8> {
        use rml_rtmp::messages::MessagePayload;
        let payload = MessagePayload { timestamp: RtmpTimestamp::new(0), type_id, message_stream_id: sid, data: bytes::Bytes::copy_from_slice(amf0) };
        ChunkSerializer::new().serialize(&payload, true, false).unwrap().bytes
    }

    /// AMF0: a string, then `depth` objects nested in each other (each with one property "a").
    pub(crate) fn deeply_nested(name: &str, depth: usize) -> Vec<u8> {
        let mut v = vec![0x02];
        v.extend_from_slice(&(name.len() as u16).to_be_bytes());
        v.extend_from_slice(name.as_bytes());
        v.push(0x00);
        v.extend_from_slice(&1.0f64.to_be_bytes());
        for _ in 0..depth {
            v.extend_from_slice(&[0x03, 0, 1, b'a']);
        }
        v.push(0x05);
        for _ in 0..depth {
            v.extend_from_slice(&[0, 0, 0x09]);
        }
        v
    }

    /// Issue 10, defect 1: a `connect` nesting objects 5,000 deep (≈20 KB) overflowed the stack
    /// and aborted the process. Now it is a protocol error, and so is 100,000 deep.
    #[test]
    fn deeply_nested_connect_is_an_error_not_a_crash() {
        for depth in [5_000, 100_000] {
            let mut server = handshaken_server();
            let bytes = chunked(20, 0, &deeply_nested("connect", depth));
            let err = server.feed(&bytes).expect_err("nesting beyond the bound is refused");
            assert!(matches!(err, RtmpError::Session(_)) && err.to_string().contains("nest deeper than 32"), "{err}");
        }
        // Metadata (@setDataFrame, AMF0 data) goes through the same bounded decoder.
        let mut server = handshaken_server();
        assert!(server.feed(&chunked(18, 1, &deeply_nested("@setDataFrame", 5_000))).is_err());
    }

    /// Issue 10, defect 2: an AMF0 command with fewer than three values panicked
    /// (`range end index 3 out of range`); an empty `@setDataFrame` indexed an empty vector.
    #[test]
    fn short_commands_and_empty_metadata_are_refused_without_panic() {
        // "connect", 1.0 and nothing else.
        let two_values = [0x02, 0, 7, b'c', b'o', b'n', b'n', b'e', b'c', b't', 0x00, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0];
        for values in [&two_values[..], &two_values[..10]] {
            let mut server = handshaken_server();
            let r = server.feed(&chunked(20, 0, values));
            assert!(r.is_err(), "{} bytes: {r:?}", values.len());
        }
        // "@setDataFrame" alone: nothing to apply, the session goes on.
        let mut server = handshaken_server();
        let mut only_name = vec![0x02, 0, 13];
        only_name.extend_from_slice(b"@setDataFrame");
        assert!(server.feed(&chunked(18, 1, &only_name)).unwrap().is_empty());
    }

    /// A message longer than the fork's bound is refused before anything is buffered for it.
    #[test]
    fn oversized_messages_are_refused() {
        let mut server = handshaken_server();
        // Type 0 header on csid 3: timestamp 0, length 0xffffff, type 9, stream 1, then one byte.
        let header = [0x03, 0, 0, 0, 0xff, 0xff, 0xff, 9, 1, 0, 0, 0, 0x17];
        let err = server.feed(&header).expect_err("16 MiB message refused");
        assert!(matches!(err, RtmpError::Session(_)) && err.to_string().contains("larger than the limit"), "{err}");
    }
}
