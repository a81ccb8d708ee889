//! The inter-node relay of a cluster, sans-IO: a room's node (the origin) sends what a tap of the
//! room gets to another node (an edge) that serves viewers the origin has no room for. This is
//! mediasoup's pipe transport between routers, as one HTTP/2 stream per relayed room, all of a
//! node pair's rooms (and the keyframe requests back) multiplexed on one TCP connection: TCP does
//! the retransmission between nodes, so only keyframe requests travel back (the edge's own
//! viewers' NACKs are answered from the edge's packet history).
//!
//! - [`encode`] frames a tap packet; [`FrameReader`] cuts a byte stream back into frames.
//! - [`EdgeMirror`] is the edge's state: which publishers of the origin's room it mirrors, the
//!   packets to hand each one's local ingest, and when a publisher went quiet (gone at the origin).
//!
//! Frame: `u32` length (big endian), then `1` (a packet), the user id (`u8` length + bytes), the
//! stream (0 main, 1 aux), the codec (0 Opus, 1 H.264, 2 VP8, 3 H.265, 4 AV1), flags (bit 0
//! marker), the audio level (255: none), `u64` sequence, `u32` RTP timestamp, `i32`
//! composition offset (ms), then the payload.

use crate::sfu::{IngestPacket, PacketRoute, TapPacket};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_media::{Codec, StreamKind};
use tessera_model::UserId;

/// The largest frame a reader accepts: an RTP payload is far smaller; more is a broken stream.
pub const MAX_FRAME: usize = 64 * 1024;

const KIND_PACKET: u8 = 1;

fn codec_code(c: Codec) -> u8 {
    match c {
        Codec::Opus => 0,
        Codec::H264 => 1,
        Codec::Vp8 => 2,
        Codec::H265 => 3,
        Codec::Av1 => 4,
    }
}

fn codec_of(code: u8) -> Option<Codec> {
    Some(match code {
        0 => Codec::Opus,
        1 => Codec::H264,
        2 => Codec::Vp8,
        3 => Codec::H265,
        4 => Codec::Av1,
        _ => return None,
    })
}

/// A packet as it crosses between nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct RelayPacket {
    pub user: UserId,
    pub stream: StreamKind,
    pub codec: Codec,
    pub marker: bool,
    pub audio_level: Option<u8>,
    pub seq: u64,
    pub ts: u32,
    pub composition_ms: i32,
    pub payload: Arc<[u8]>,
}

/// Appends the frame of `p` to `out`. Packets without a payload (a transcoded publisher's
/// pictures, which only mixes take) are not relayed: `false`.
pub fn encode(p: &TapPacket, out: &mut Vec<u8>) -> bool {
    if p.picture.is_some() || p.payload.is_empty() {
        return false;
    }
    let user = p.user.as_str().as_bytes();
    let len = 1 + 1 + user.len() + 4 + 8 + 4 + 4 + p.payload.len();
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.push(KIND_PACKET);
    out.push(user.len() as u8);
    out.extend_from_slice(user);
    out.push(match p.stream {
        StreamKind::Main => 0,
        StreamKind::Aux => 1,
    });
    out.push(codec_code(p.codec));
    out.push(u8::from(p.marker));
    out.push(p.audio_level.unwrap_or(255));
    out.extend_from_slice(&p.seq.to_be_bytes());
    out.extend_from_slice(&p.ts.to_be_bytes());
    out.extend_from_slice(&p.composition_ms.to_be_bytes());
    out.extend_from_slice(&p.payload);
    true
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    #[error("relay frame of {0} bytes is larger than {MAX_FRAME}")]
    TooLarge(usize),
    #[error("relay frame is malformed: {0}")]
    Malformed(&'static str),
}

/// Cuts a byte stream into frames (bytes in any pieces).
#[derive(Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame's packet, `Ok(None)` when more bytes are needed. An error ends the
    /// stream (the reader cannot find the next frame after it).
    pub fn next_packet(&mut self) -> Result<Option<RelayPacket>, RelayError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(RelayError::TooLarge(len));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let frame: Vec<u8> = self.buf.drain(..4 + len).skip(4).collect();
        decode(&frame).map(Some)
    }
}

fn decode(f: &[u8]) -> Result<RelayPacket, RelayError> {
    let bad = RelayError::Malformed;
    let (&kind, rest) = f.split_first().ok_or(bad("empty"))?;
    if kind != KIND_PACKET {
        return Err(bad("unknown kind"));
    }
    let (&ulen, rest) = rest.split_first().ok_or(bad("no user"))?;
    let ulen = ulen as usize;
    if rest.len() < ulen + 4 + 16 {
        return Err(bad("short"));
    }
    let user = std::str::from_utf8(&rest[..ulen]).ok().and_then(|u| UserId::parse(u).ok()).ok_or(bad("user id"))?;
    let rest = &rest[ulen..];
    let stream = match rest[0] {
        0 => StreamKind::Main,
        1 => StreamKind::Aux,
        _ => return Err(bad("stream")),
    };
    let codec = codec_of(rest[1]).ok_or(bad("codec"))?;
    let marker = rest[2] & 1 == 1;
    let audio_level = (rest[3] != 255).then_some(rest[3]);
    let rest = &rest[4..];
    let seq = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
    let ts = u32::from_be_bytes(rest[8..12].try_into().expect("4 bytes"));
    let composition_ms = i32::from_be_bytes(rest[12..16].try_into().expect("4 bytes"));
    Ok(RelayPacket { user, stream, codec, marker, audio_level, seq, ts, composition_ms, payload: rest[16..].into() })
}

/// One mirrored publisher at the edge.
struct Mirrored {
    ssrc: u32,
    last_packet: Instant,
    /// Whether a packet of the current access unit started a keyframe.
    keyframe: bool,
}

/// What the edge driver should do.
#[derive(Debug, Clone)]
pub enum EdgeAction {
    /// Add a local ingest publisher for this (user, stream), then push its packets.
    AddPublisher(UserId, StreamKind),
    /// Hand these packets to the (user, stream)'s ingest.
    Push(UserId, StreamKind, Vec<IngestPacket>),
    /// Nothing came from this publisher for a while: it left the origin's room.
    RemovePublisher(UserId, StreamKind),
}

/// The edge's view of a relayed room.
#[derive(Default)]
pub struct EdgeMirror {
    publishers: HashMap<(UserId, StreamKind), Mirrored>,
}

/// A publisher silent this long at the origin has gone (video sends several packets a second,
/// audio fifty; a muted track still sends, or the origin's tap would not relay it either).
pub const PUBLISHER_GONE_AFTER: Duration = Duration::from_secs(5);

impl EdgeMirror {
    pub fn on_packet(&mut self, p: RelayPacket, now: Instant) -> Vec<EdgeAction> {
        let mut actions = Vec::new();
        let key = (p.user.clone(), p.stream);
        let next_ssrc = 0x7e00_0000 + self.publishers.len() as u32 * 4;
        let m = self.publishers.entry(key.clone()).or_insert_with(|| {
            actions.push(EdgeAction::AddPublisher(key.0.clone(), key.1));
            Mirrored { ssrc: next_ssrc, last_packet: now, keyframe: false }
        });
        m.last_packet = now;
        let video = p.codec != Codec::Opus;
        let starts_keyframe = video && crate::sfu::payload_starts_keyframe(p.codec, &p.payload);
        m.keyframe |= starts_keyframe;
        // Audio and video of one publisher get their own SSRCs, as the origin's producer has.
        let ssrc = m.ssrc + u32::from(video);
        let packet = IngestPacket {
            ssrc,
            seq: p.seq,
            ts: p.ts,
            marker: p.marker,
            keyframe: m.keyframe,
            codec: p.codec,
            payload: p.payload,
            audio_level: p.audio_level,
            route: PacketRoute::All,
            composition_ms: p.composition_ms,
            picture: None,
        };
        if p.marker && video {
            m.keyframe = false;
        }
        actions.push(EdgeAction::Push(key.0, key.1, vec![packet]));
        actions
    }

    /// Publishers that went quiet.
    pub fn poll(&mut self, now: Instant) -> Vec<EdgeAction> {
        let gone: Vec<_> = self.publishers.iter().filter(|(_, m)| now.duration_since(m.last_packet) >= PUBLISHER_GONE_AFTER).map(|(k, _)| k.clone()).collect();
        gone.into_iter()
            .map(|k| {
                self.publishers.remove(&k);
                EdgeAction::RemovePublisher(k.0, k.1)
            })
            .collect()
    }

    pub fn mirrors(&self, user: &UserId, stream: StreamKind) -> bool {
        self.publishers.contains_key(&(user.clone(), stream))
    }
}

/// Packets waiting for an edge beyond which the origin catches up: at 1.5 Mbit/s (~150 packets
/// a second) about a second and a half.
pub const BACKLOG_CATCH_UP: usize = 256;

/// The origin's side of an edge that cannot keep up (a slow link, a busy node): a backlog past
/// `BACKLOG_CATCH_UP` is dropped rather than delivered late — audio while it lasts, each
/// video stream until its next keyframe (which it asks for) — so an edge's viewers fall back to
/// live instead of seconds behind.
#[derive(Default)]
pub struct RelayBacklog {
    /// Video streams skipping to their next keyframe.
    waiting_keyframe: std::collections::HashSet<(UserId, StreamKind)>,
    /// Packets dropped so far.
    pub dropped: u64,
}

/// What to do with a packet taken from the tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BacklogVerdict {
    Send,
    Drop,
    /// Drop it, and ask the publisher for a keyframe (the first drop of a video stream).
    DropAndAskKeyframe,
}

impl RelayBacklog {
    /// `backlog`: packets still waiting behind this one.
    pub fn admit(&mut self, p: &TapPacket, backlog: usize) -> BacklogVerdict {
        let video = p.codec != Codec::Opus;
        let key = (p.user.clone(), p.stream);
        if video && self.waiting_keyframe.contains(&key) {
            if crate::sfu::payload_starts_keyframe(p.codec, &p.payload) && backlog <= BACKLOG_CATCH_UP / 2 {
                self.waiting_keyframe.remove(&key);
                return BacklogVerdict::Send;
            }
            self.dropped += 1;
            return BacklogVerdict::Drop;
        }
        if backlog <= BACKLOG_CATCH_UP {
            return BacklogVerdict::Send;
        }
        self.dropped += 1;
        if video {
            self.waiting_keyframe.insert(key);
            return BacklogVerdict::DropAndAskKeyframe;
        }
        BacklogVerdict::Drop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edge_that_falls_behind_skips_to_live_and_a_keyframe() {
        let mut b = RelayBacklog::default();
        let key = [0x65u8, 0x88, 0x80];
        let delta = [0x41u8, 0x9a];
        assert_eq!(b.admit(&tap("cam", Codec::H264, 1, false, &delta), 10), BacklogVerdict::Send);
        assert_eq!(b.admit(&tap("cam", Codec::Opus, 1, true, &[1]), BACKLOG_CATCH_UP + 1), BacklogVerdict::Drop, "late audio goes");
        assert_eq!(b.admit(&tap("cam", Codec::H264, 2, false, &delta), BACKLOG_CATCH_UP + 1), BacklogVerdict::DropAndAskKeyframe);
        assert_eq!(b.admit(&tap("cam", Codec::H264, 3, false, &delta), 5), BacklogVerdict::Drop, "video waits for a keyframe even once caught up");
        assert_eq!(b.admit(&tap("cam", Codec::H264, 4, false, &key), BACKLOG_CATCH_UP), BacklogVerdict::Drop, "a keyframe while still behind goes too");
        assert_eq!(b.admit(&tap("cam", Codec::Opus, 2, true, &[1]), 5), BacklogVerdict::Send, "audio flows once caught up");
        assert_eq!(b.admit(&tap("cam", Codec::H264, 5, false, &key), 5), BacklogVerdict::Send, "the keyframe resumes the video");
        assert_eq!(b.admit(&tap("cam", Codec::H264, 6, false, &delta), 5), BacklogVerdict::Send);
        assert_eq!(b.dropped, 4);
    }

    fn tap(user: &str, codec: Codec, seq: u64, marker: bool, payload: &[u8]) -> TapPacket {
        TapPacket {
            user: UserId::parse(user).unwrap(),
            stream: StreamKind::Main,
            codec,
            seq,
            ts: seq as u32 * 3000,
            marker,
            payload: payload.into(),
            audio_level: (codec == Codec::Opus).then_some(30),
            composition_ms: 0,
            picture: None,
            fallback_for: None,
            layer_switch: false,
        }
    }

    #[test]
    fn frames_survive_any_cut_of_the_stream() {
        let packets = [tap("cam", Codec::H264, 7, false, &[0x65, 1, 2, 3]), tap("cam", Codec::Opus, 8, true, &[9; 100]), tap("screen", Codec::Vp8, 1 << 40, true, &[1])];
        let mut bytes = Vec::new();
        for p in &packets {
            assert!(encode(p, &mut bytes));
        }
        for cut in [1, 3, 7, bytes.len()] {
            let mut r = FrameReader::default();
            let mut got = Vec::new();
            for chunk in bytes.chunks(cut) {
                r.push(chunk);
                while let Some(p) = r.next_packet().unwrap() {
                    got.push(p);
                }
            }
            assert_eq!(got.len(), 3, "cut {cut}");
            assert_eq!(got[1].audio_level, Some(30));
            assert_eq!(got[2].seq, 1 << 40);
            assert_eq!(&got[0].payload[..], &[0x65, 1, 2, 3]);
            assert_eq!((got[0].user.as_str(), got[2].codec, got[1].marker), ("cam", Codec::Vp8, true));
        }
    }

    #[test]
    fn a_broken_stream_is_an_error_not_a_panic() {
        let mut r = FrameReader::default();
        r.push(&(MAX_FRAME as u32 + 1).to_be_bytes());
        assert!(matches!(r.next_packet(), Err(RelayError::TooLarge(_))));
        for junk in [&[0u8, 0, 0, 1, 1][..], &[0, 0, 0, 3, 1, 200, 0], &[0, 0, 0, 2, 9, 0]] {
            let mut r = FrameReader::default();
            r.push(junk);
            assert!(r.next_packet().is_err(), "{junk:?}");
        }
    }

    #[test]
    fn pictures_are_not_relayed() {
        let mut p = tap("cam", Codec::H264, 1, true, &[]);
        assert!(!encode(&p, &mut Vec::new()));
        p.payload = vec![1u8].into();
        assert!(encode(&p, &mut Vec::new()));
    }

    #[test]
    fn the_edge_adds_a_publisher_once_marks_keyframes_and_drops_the_quiet() {
        let t0 = Instant::now();
        let mut m = EdgeMirror::default();
        // An IDR (NAL type 5) in a single-NAL packet, then its last packet, then a P frame.
        let a = m.on_packet(decode_of(&tap("cam", Codec::H264, 1, false, &[0x65, 0])), t0);
        assert!(matches!(&a[0], EdgeAction::AddPublisher(u, StreamKind::Main) if u.as_str() == "cam"), "{a:?}");
        let EdgeAction::Push(_, _, first) = &a[1] else { panic!("{a:?}") };
        assert!(first[0].keyframe);
        let b = m.on_packet(decode_of(&tap("cam", Codec::H264, 2, true, &[0x41, 0])), t0);
        assert_eq!(b.len(), 1, "no second AddPublisher");
        let EdgeAction::Push(_, _, second) = &b[0] else { panic!("{b:?}") };
        assert!(second[0].keyframe, "the keyframe's last packet");
        let c = m.on_packet(decode_of(&tap("cam", Codec::H264, 3, true, &[0x41, 0])), t0);
        let EdgeAction::Push(_, _, third) = &c[0] else { panic!("{c:?}") };
        assert!(!third[0].keyframe);
        let audio = m.on_packet(decode_of(&tap("cam", Codec::Opus, 1, true, &[1])), t0);
        let EdgeAction::Push(_, _, audio) = &audio[0] else { panic!() };
        assert_ne!(audio[0].ssrc, third[0].ssrc);
        assert!(m.poll(t0 + Duration::from_secs(1)).is_empty());
        let gone = m.poll(t0 + PUBLISHER_GONE_AFTER);
        assert!(matches!(&gone[..], [EdgeAction::RemovePublisher(u, StreamKind::Main)] if u.as_str() == "cam"), "{gone:?}");
        assert!(!m.mirrors(&UserId::parse("cam").unwrap(), StreamKind::Main));
    }

    fn decode_of(p: &TapPacket) -> RelayPacket {
        let mut bytes = Vec::new();
        encode(p, &mut bytes);
        decode(&bytes[4..]).unwrap()
    }
}
