//! One outgoing RTMP publish (a relay to a CDN), sans-IO: rml_rtmp's client handshake and
//! session; bytes in (`feed`), bytes out (`outbound`), and FLV tag bodies to send once
//! `is_publishing`. The caller owns the socket and the timeouts.

use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult, PublishRequestType};
use rml_rtmp::time::RtmpTimestamp;

/// Where to push: `rtmp[s]://host[:port]/app[/more]/stream_key[?query]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTarget {
    /// rtmps: the caller wraps the TCP connection in TLS (the session is the same).
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub app: String,
    pub stream_key: String,
    pub tc_url: String,
}

/// Why a URL cannot be pushed to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushUrlError {
    #[error("only rtmp:// and rtmps:// URLs can be pushed")]
    Scheme,
    #[error("the URL needs an app and a stream key: rtmp://host/app/key")]
    NoAppOrKey,
    #[error("bad port '{0}'")]
    Port(String),
    #[error("the URL has no host")]
    NoHost,
}

impl PushTarget {
    pub fn parse(url: &str) -> Result<PushTarget, PushUrlError> {
        let (scheme, rest, default_port) = if let Some(r) = url.strip_prefix("rtmp://") {
            ("rtmp", r, 1935)
        } else if let Some(r) = url.strip_prefix("rtmps://") {
            ("rtmps", r, 443)
        } else {
            return Err(PushUrlError::Scheme);
        };
        let (authority, path) = rest.split_once('/').ok_or(PushUrlError::NoAppOrKey)?;
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse::<u16>().map_err(|_| PushUrlError::Port(p.to_owned()))?),
            None => (authority.to_string(), default_port),
        };
        if host.is_empty() {
            return Err(PushUrlError::NoHost);
        }
        // The stream key is the last path segment (with its query); the app is what precedes it.
        let (app, stream_key) = path.rsplit_once('/').ok_or(PushUrlError::NoAppOrKey)?;
        if app.is_empty() || stream_key.is_empty() {
            return Err(PushUrlError::NoAppOrKey);
        }
        Ok(PushTarget { tls: scheme == "rtmps", tc_url: format!("{scheme}://{authority}/{app}"), host, port, app: app.to_string(), stream_key: stream_key.to_string() })
    }
}

/// Why a push did not start (RECORDING.md §1.1 error codes 2 and 3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("RTMP handshake or connect failed: {0}")]
    Connect(String),
    #[error("publish rejected: {0}")]
    Publish(String),
}

impl PushError {
    pub fn code(&self) -> u32 {
        match self {
            PushError::Connect(_) => 2,
            PushError::Publish(_) => 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Handshake,
    Connecting,
    RequestingPublish,
    Publishing,
}

pub struct RtmpPushSession {
    target: PushTarget,
    handshake: Handshake,
    session: Option<ClientSession>,
    phase: Phase,
    /// Bytes to write to the server, in order.
    pub outbound: Vec<u8>,
}

impl RtmpPushSession {
    /// Starts the handshake (C0+C1 are in `outbound`).
    pub fn new(target: PushTarget) -> Result<RtmpPushSession, PushError> {
        let mut handshake = Handshake::new(PeerType::Client);
        let c0c1 = handshake.generate_outbound_p0_and_p1().map_err(|e| PushError::Connect(format!("{e:?}")))?;
        Ok(RtmpPushSession { target, handshake, session: None, phase: Phase::Handshake, outbound: c0c1 })
    }

    pub fn is_publishing(&self) -> bool {
        self.phase == Phase::Publishing
    }

    /// Feeds bytes from the server. Returns true once publishing has started (the first time).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<bool, PushError> {
        let mut data = bytes.to_vec();
        if self.phase == Phase::Handshake {
            match self.handshake.process_bytes(&data).map_err(|e| PushError::Connect(format!("handshake: {e:?}")))? {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    self.outbound.extend_from_slice(&response_bytes);
                    return Ok(false);
                }
                HandshakeProcessResult::Completed { response_bytes, remaining_bytes } => {
                    self.outbound.extend_from_slice(&response_bytes);
                    let mut config = ClientSessionConfig::new();
                    config.tc_url = Some(self.target.tc_url.clone());
                    let (mut session, results) = ClientSession::new(config).map_err(|e| PushError::Connect(format!("{e:?}")))?;
                    self.handle(results)?;
                    let r = session.request_connection(self.target.app.clone()).map_err(|e| PushError::Connect(format!("{e:?}")))?;
                    self.session = Some(session);
                    self.handle(vec![r])?;
                    self.phase = Phase::Connecting;
                    data = remaining_bytes;
                }
            }
        }
        if data.is_empty() {
            return Ok(false);
        }
        let was = self.phase;
        let results = self.session.as_mut().expect("after the handshake").handle_input(&data).map_err(|e| PushError::Connect(format!("{e:?}")))?;
        self.handle(results)?;
        Ok(was != Phase::Publishing && self.phase == Phase::Publishing)
    }

    fn handle(&mut self, results: Vec<ClientSessionResult>) -> Result<(), PushError> {
        for r in results {
            match r {
                ClientSessionResult::OutboundResponse(p) => self.outbound.extend_from_slice(&p.bytes),
                ClientSessionResult::RaisedEvent(e) => match e {
                    ClientSessionEvent::ConnectionRequestAccepted => {
                        let session = self.session.as_mut().expect("connected");
                        let r = session.request_publishing(self.target.stream_key.clone(), PublishRequestType::Live).map_err(|e| PushError::Publish(format!("{e:?}")))?;
                        self.phase = Phase::RequestingPublish;
                        self.handle(vec![r])?;
                    }
                    ClientSessionEvent::ConnectionRequestRejected { description } => return Err(PushError::Connect(description)),
                    ClientSessionEvent::PublishRequestAccepted => self.phase = Phase::Publishing,
                    ClientSessionEvent::UnhandleableOnStatusCode { code } if self.phase == Phase::RequestingPublish => return Err(PushError::Publish(code)),
                    // A refusal comes as an onStatus/_error whose object says why.
                    ClientSessionEvent::UnknownTransactionResultReceived { additional_values, .. } | ClientSessionEvent::UnhandleableAmf0Command { additional_values, .. }
                        if self.phase == Phase::RequestingPublish =>
                    {
                        if let Some(reason) = refusal(&additional_values) {
                            return Err(PushError::Publish(reason));
                        }
                    }
                    _ => {}
                },
                ClientSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        Ok(())
    }

    /// Queues an FLV video tag body (see `flv::avc_*`) at `timestamp_ms`.
    pub fn send_video(&mut self, tag: &[u8], timestamp_ms: u32) -> Result<(), PushError> {
        let session = self.session.as_mut().ok_or_else(|| PushError::Publish("not publishing".into()))?;
        let r = session.publish_video_data(bytes::Bytes::copy_from_slice(tag), RtmpTimestamp::new(timestamp_ms), false).map_err(|e| PushError::Publish(format!("{e:?}")))?;
        self.handle(vec![r])
    }

    /// Queues an FLV audio tag body (see `flv::aac_*`) at `timestamp_ms`.
    pub fn send_audio(&mut self, tag: &[u8], timestamp_ms: u32) -> Result<(), PushError> {
        let session = self.session.as_mut().ok_or_else(|| PushError::Publish("not publishing".into()))?;
        let r = session.publish_audio_data(bytes::Bytes::copy_from_slice(tag), RtmpTimestamp::new(timestamp_ms), false).map_err(|e| PushError::Publish(format!("{e:?}")))?;
        self.handle(vec![r])
    }
}

/// `code: description` of an error status object, if the values carry one.
fn refusal(values: &[rml_amf0::Amf0Value]) -> Option<String> {
    use rml_amf0::Amf0Value;
    values.iter().find_map(|v| match v {
        Amf0Value::Object(o) => {
            let text = |k: &str| match o.get(k) {
                Some(Amf0Value::Utf8String(s)) => Some(s.clone()),
                _ => None,
            };
            let level = text("level").unwrap_or_default();
            let code = text("code").unwrap_or_default();
            (level.contains("error") || code.contains("Rejected") || code.contains("BadName") || code.contains("Failed"))
                .then(|| format!("{code}: {}", text("description").unwrap_or_default()))
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{RtmpEvent, RtmpPublishSession};

    #[test]
    fn urls_split_into_app_and_stream_key() {
        let t = PushTarget::parse("rtmp://cdn.example.com/live/abc?k=1").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.app.as_str(), t.stream_key.as_str()), ("cdn.example.com", 1935, "live", "abc?k=1"));
        assert_eq!(t.tc_url, "rtmp://cdn.example.com/live");
        let t = PushTarget::parse("rtmp://10.0.0.1:1936/a/b/key").unwrap();
        assert_eq!((t.port, t.app.as_str(), t.stream_key.as_str(), t.tls), (1936, "a/b", "key", false));
        // rtmps (Facebook, YouTube): TLS, port 443 unless given.
        let t = PushTarget::parse("rtmps://live-api-s.facebook.com/rtmp/FB-1").unwrap();
        assert_eq!((t.tls, t.port, t.app.as_str(), t.tc_url.as_str()), (true, 443, "rtmp", "rtmps://live-api-s.facebook.com/rtmp"));
        for bad in ["http://x/a/b", "rtmp://x", "rtmp://x/key", "rtmp:///a/b", "rtmp://x:99999/a/b", "rtmpt://x/a/b"] {
            assert!(PushTarget::parse(bad).is_err(), "{bad}");
        }
    }

    /// Random URLs and random server bytes: errors, never a panic.
    #[test]
    fn garbage_urls_and_server_bytes_never_panic() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"rtmps:/?&=.-_0123456789abcXYZ:/@[]%\xff";
        for len in 0..300 {
            let prefix = ["rtmp://", "rtmps://", "", "rtmp://h:", "rtmps://h/a/"][len % 5];
            let tail: String = (0..len % 40).map(|_| alphabet[next() as usize % alphabet.len()] as char).collect();
            if let Ok(t) = PushTarget::parse(&format!("{prefix}{tail}")) {
                assert!(!t.host.is_empty() && !t.app.is_empty() && !t.stream_key.is_empty());
            }
            let mut session = RtmpPushSession::new(PushTarget::parse("rtmp://h/live/key").unwrap()).unwrap();
            let bytes: Vec<u8> = (0..len * 7).map(|_| next() as u8).collect();
            for chunk in bytes.chunks(97) {
                if session.feed(chunk).is_err() {
                    break;
                }
            }
        }
    }

    /// Our push client against our own server session: connect, publish, media arrives.
    #[test]
    fn pushes_to_an_rtmp_server_session() {
        let mut client = RtmpPushSession::new(PushTarget::parse("rtmp://h/push/room1/alice?token=x").unwrap()).unwrap();
        let mut server = RtmpPublishSession::new();
        let mut seen = Vec::new();
        let mut started = false;
        for _ in 0..20 {
            let to_server = std::mem::take(&mut client.outbound);
            for e in server.feed(&to_server).unwrap() {
                match e {
                    RtmpEvent::PublishRequested { request_id, app, stream_key } => {
                        assert_eq!((app.as_str(), stream_key.as_str()), ("push/room1", "alice?token=x"));
                        server.accept_publish(request_id).unwrap();
                    }
                    other => seen.push(other),
                }
            }
            let to_client = std::mem::take(&mut server.outbound);
            started |= client.feed(&to_client).unwrap();
            if started {
                break;
            }
        }
        assert!(started && client.is_publishing());
        client.send_video(&[0x17, 0, 0, 0, 0, 1, 2], 40).unwrap();
        client.send_audio(&[0xaf, 1, 9], 41).unwrap();
        let events = server.feed(&std::mem::take(&mut client.outbound)).unwrap();
        assert!(events.iter().any(|e| matches!(e, RtmpEvent::Video { data, timestamp_ms: 40 } if data == &[0x17, 0, 0, 0, 0, 1, 2])), "{events:?}");
        assert!(events.iter().any(|e| matches!(e, RtmpEvent::Audio { timestamp_ms: 41, .. })), "{events:?}");
    }

    #[test]
    fn a_rejected_publish_is_an_error_with_code_3() {
        let mut client = RtmpPushSession::new(PushTarget::parse("rtmp://h/push/room1/alice").unwrap()).unwrap();
        let mut server = RtmpPublishSession::new();
        let mut result = Ok(false);
        for _ in 0..20 {
            for e in server.feed(&std::mem::take(&mut client.outbound)).unwrap() {
                if let RtmpEvent::PublishRequested { request_id, .. } = e {
                    server.reject_publish(request_id, "token_missing: no").unwrap();
                }
            }
            result = client.feed(&std::mem::take(&mut server.outbound));
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result.unwrap_err().code(), 3);
    }

    /// Issue 10, defect 1 on the client side: a relay target (a hostile CDN) that answers
    /// `connect` with objects nested 5,000 deep crashed the server on every restart; now the
    /// push fails with a connect error.
    #[test]
    fn a_deeply_nested_answer_from_the_target_is_an_error() {
        use crate::session::tests::{chunked, deeply_nested};
        let mut client = RtmpPushSession::new(PushTarget::parse("rtmp://h/live/key").unwrap()).unwrap();
        let mut target = Handshake::new(PeerType::Server);
        let HandshakeProcessResult::InProgress { response_bytes } = target.process_bytes(&std::mem::take(&mut client.outbound)).unwrap() else {
            panic!("S0+S1+S2 after C0+C1");
        };
        assert!(!client.feed(&response_bytes).unwrap());
        let err = client.feed(&chunked(20, 0, &deeply_nested("_result", 5_000))).expect_err("refused");
        assert!(err.code() == 2 && err.to_string().contains("TooDeep"), "{err:?}");
        // And a short `_result` (name only) is refused too, not a panic.
        let mut client = RtmpPushSession::new(PushTarget::parse("rtmp://h/live/key").unwrap()).unwrap();
        let mut target = Handshake::new(PeerType::Server);
        let HandshakeProcessResult::InProgress { response_bytes } = target.process_bytes(&std::mem::take(&mut client.outbound)).unwrap() else {
            panic!("S0+S1+S2 after C0+C1");
        };
        client.feed(&response_bytes).unwrap();
        assert!(client.feed(&chunked(20, 0, &[0x02, 0, 7, b'_', b'r', b'e', b's', b'u', b'l', b't'])).is_err());
    }
}
