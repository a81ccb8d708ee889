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
//! Every simulcast layer of a publisher crosses (the origin's cluster tap takes them all), so an
//! edge's viewers move between layers on their own estimates as the origin's do.
//!
//! Frame: `u32` length (big endian), then `1` (a packet), the user id (`u8` length + bytes), the
//! stream (0 main, 1 aux), the codec (0 Opus, 1 H.264, 2 VP8, 3 H.265, 4 AV1), flags (bit 0
//! marker), the audio level (255: none), the route (0 every viewer, 1 WebRTC viewers only, 2
//! viewers but not mixes, 16 + a codec: the H.264 fallback for that codec), the simulcast layer
//! (`u8` length, 0 for none, up to 8 bytes of rid), `u64` sequence, `u32` RTP timestamp, `i32`
//! composition offset (ms), then the payload.

use crate::sfu::{IngestPacket, PacketRoute, Rid, TapPacket};
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

const ROUTE_FALLBACK: u8 = 16;

fn route_code(r: PacketRoute) -> Option<u8> {
    Some(match r {
        PacketRoute::All => 0,
        PacketRoute::Viewers => 1,
        PacketRoute::AllButMixes => 2,
        PacketRoute::Fallback(c) => ROUTE_FALLBACK + codec_code(c),
        // Not for viewers: a cluster tap never gets them.
        PacketRoute::Outputs | PacketRoute::Pictures => return None,
    })
}

fn route_of(code: u8) -> Option<PacketRoute> {
    Some(match code {
        0 => PacketRoute::All,
        1 => PacketRoute::Viewers,
        2 => PacketRoute::AllButMixes,
        c if c >= ROUTE_FALLBACK => PacketRoute::Fallback(codec_of(c - ROUTE_FALLBACK)?),
        _ => return None,
    })
}

/// The longest rid (str0m's `Rid` holds 8 bytes).
const MAX_RID: usize = 8;

/// A simulcast layer's rid as it crosses between nodes (in a frame or the keyframe call):
/// 1-8 ASCII letters or digits.
pub fn parse_rid(r: &str) -> Option<Rid> {
    ((1..=MAX_RID).contains(&r.len()) && r.bytes().all(|b| b.is_ascii_alphanumeric())).then(|| Rid::from(r))
}

/// A packet as it crosses between nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct RelayPacket {
    pub user: UserId,
    pub stream: StreamKind,
    pub codec: Codec,
    pub marker: bool,
    pub audio_level: Option<u8>,
    pub route: PacketRoute,
    pub rid: Option<Rid>,
    pub seq: u64,
    pub ts: u32,
    pub composition_ms: i32,
    pub payload: Arc<[u8]>,
}

/// Appends the frame of `p` to `out`. Packets no viewer takes (a transcoded publisher's
/// pictures and originals, which only mixes and outputs take) are not relayed: `false`.
pub fn encode(p: &TapPacket, out: &mut Vec<u8>) -> bool {
    let Some(route) = route_code(p.route) else { return false };
    if p.picture.is_some() || p.payload.is_empty() {
        return false;
    }
    let user = p.user.as_str().as_bytes();
    let rid = p.rid.as_ref().map(|r| r.as_bytes()).unwrap_or_default();
    let rid = &rid[..rid.len().min(MAX_RID)];
    let len = 1 + 1 + user.len() + 5 + 1 + rid.len() + 8 + 4 + 4 + p.payload.len();
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
    out.push(route);
    out.push(rid.len() as u8);
    out.extend_from_slice(rid);
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
    if rest.len() < ulen + 6 {
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
    let route = route_of(rest[4]).ok_or(bad("route"))?;
    let rid_len = rest[5] as usize;
    if rid_len > MAX_RID {
        return Err(bad("rid"));
    }
    let rest = &rest[6..];
    if rest.len() < rid_len + 16 {
        return Err(bad("short"));
    }
    let rid = match rid_len {
        0 => None,
        n => Some(std::str::from_utf8(&rest[..n]).ok().and_then(parse_rid).ok_or(bad("rid"))?),
    };
    let rest = &rest[rid_len..];
    let seq = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
    let ts = u32::from_be_bytes(rest[8..12].try_into().expect("4 bytes"));
    let composition_ms = i32::from_be_bytes(rest[12..16].try_into().expect("4 bytes"));
    Ok(RelayPacket { user, stream, codec, marker, audio_level, route, rid, seq, ts, composition_ms, payload: rest[16..].into() })
}

/// One mirrored publisher at the edge.
struct Mirrored {
    /// Its audio's SSRC; each video layer (and codec) takes the next ones.
    ssrc: u32,
    last_packet: Instant,
    /// Video streams by (layer, codec): a re-encoded fallback and its original, or the layers
    /// of a simulcast publisher, are distinct streams with their own sequence numbers.
    video: Vec<MirroredVideo>,
}

struct MirroredVideo {
    rid: Option<Rid>,
    codec: Codec,
    /// Whether a packet of the current access unit started a keyframe.
    keyframe: bool,
}

/// Video streams one mirrored publisher may have (three simulcast layers, or an original and
/// its fallback, fit well within): packets of more are dropped.
const MAX_VIDEO_STREAMS: usize = 8;
/// SSRCs a mirrored publisher takes: its audio and its video streams.
const SSRCS_PER_PUBLISHER: u32 = 1 + MAX_VIDEO_STREAMS as u32;

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
    /// The next publisher's first SSRC (never reused while the mirror lives).
    next_ssrc: u32,
}

/// A publisher silent this long at the origin has gone (video sends several packets a second,
/// audio fifty; a muted track still sends, or the origin's tap would not relay it either).
pub const PUBLISHER_GONE_AFTER: Duration = Duration::from_secs(5);

impl EdgeMirror {
    pub fn on_packet(&mut self, p: RelayPacket, now: Instant) -> Vec<EdgeAction> {
        let mut actions = Vec::new();
        let key = (p.user.clone(), p.stream);
        if !self.publishers.contains_key(&key) {
            let ssrc = 0x7e00_0000u32.wrapping_add(self.next_ssrc);
            self.next_ssrc = self.next_ssrc.wrapping_add(SSRCS_PER_PUBLISHER);
            actions.push(EdgeAction::AddPublisher(key.0.clone(), key.1));
            self.publishers.insert(key.clone(), Mirrored { ssrc, last_packet: now, video: Vec::new() });
        }
        let m = self.publishers.get_mut(&key).expect("just made");
        m.last_packet = now;
        let (ssrc, keyframe) = if p.codec == Codec::Opus {
            (m.ssrc, false)
        } else {
            let i = match m.video.iter().position(|v| v.rid == p.rid && v.codec == p.codec) {
                Some(i) => i,
                None if m.video.len() < MAX_VIDEO_STREAMS => {
                    m.video.push(MirroredVideo { rid: p.rid, codec: p.codec, keyframe: false });
                    m.video.len() - 1
                }
                None => return actions,
            };
            let v = &mut m.video[i];
            v.keyframe |= crate::sfu::payload_starts_keyframe(p.codec, &p.payload);
            let keyframe = v.keyframe;
            if p.marker {
                v.keyframe = false;
            }
            (m.ssrc + 1 + i as u32, keyframe)
        };
        let packet = IngestPacket {
            ssrc,
            seq: p.seq,
            ts: p.ts,
            marker: p.marker,
            keyframe,
            codec: p.codec,
            payload: p.payload,
            audio_level: p.audio_level,
            route: p.route,
            composition_ms: p.composition_ms,
            picture: None,
            rid: p.rid,
        };
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
    /// Video streams (each simulcast layer its own) skipping to their next keyframe.
    waiting_keyframe: std::collections::HashSet<(UserId, StreamKind, Option<Rid>)>,
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
        let key = (p.user.clone(), p.stream, p.rid);
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
            rid: None,
            route: PacketRoute::All,
        }
    }

    fn layer(rid: &str, seq: u64, marker: bool, payload: &[u8]) -> TapPacket {
        TapPacket { rid: Some(Rid::from(rid)), ..tap("cam", Codec::H264, seq, marker, payload) }
    }

    #[test]
    fn every_simulcast_layer_crosses_as_its_own_stream_with_its_own_keyframes() {
        let t0 = Instant::now();
        let mut m = EdgeMirror::default();
        let (idr, delta) = ([0x65u8, 0], [0x41u8, 0]);
        // Layers interleave as a simulcast publisher sends them: "l" starts a keyframe while
        // "h" is in the middle of a delta frame.
        let sent = [layer("h", 10, false, &delta), layer("l", 500, false, &idr), layer("h", 11, true, &delta), layer("l", 501, true, &delta), layer("l", 502, true, &delta)];
        let mut got = Vec::new();
        for p in &sent {
            for a in m.on_packet(decode_of(p), t0) {
                if let EdgeAction::Push(_, _, ps) = a {
                    got.extend(ps);
                }
            }
        }
        let rids: Vec<_> = got.iter().map(|p| p.rid.as_deref().map(str::to_owned)).collect();
        assert_eq!(rids, ["h", "l", "h", "l", "l"].map(|r| Some(r.to_owned())));
        assert_eq!(got.iter().map(|p| p.keyframe).collect::<Vec<_>>(), [false, true, false, true, false], "each layer's keyframe is its own");
        assert_ne!(got[0].ssrc, got[1].ssrc, "each layer is its own stream");
        assert_eq!(got[1].ssrc, got[3].ssrc);
        assert_eq!(got.iter().map(|p| p.seq).collect::<Vec<_>>(), [10, 500, 11, 501, 502], "each layer's own numbering");
        // A second publisher never takes the first one's SSRCs.
        let other = m.on_packet(decode_of(&tap("guest", Codec::H264, 1, true, &idr)), t0);
        let EdgeAction::Push(_, _, o) = &other[1] else { panic!("{other:?}") };
        assert!(got.iter().all(|p| p.ssrc != o[0].ssrc));
    }

    #[test]
    fn routes_cross_as_they_were_and_what_no_viewer_takes_does_not_cross() {
        for route in [PacketRoute::All, PacketRoute::Viewers, PacketRoute::AllButMixes, PacketRoute::Fallback(Codec::Av1), PacketRoute::Fallback(Codec::H265)] {
            let p = TapPacket { route, ..tap("cam", Codec::H264, 1, true, &[0x41]) };
            assert_eq!(decode_of(&p).route, route);
        }
        for route in [PacketRoute::Outputs, PacketRoute::Pictures] {
            assert!(!encode(&TapPacket { route, ..tap("cam", Codec::H264, 1, true, &[0x41]) }, &mut Vec::new()));
        }
    }

    #[test]
    fn a_bad_rid_or_route_is_an_error() {
        let mut good = Vec::new();
        assert!(encode(&layer("m", 1, true, &[0x41, 0]), &mut good));
        // The route byte and the rid follow the user ("cam") and four bytes.
        let route_at = 4 + 1 + 1 + 3 + 4;
        for (at, value) in [(route_at, 3u8), (route_at, 15), (route_at + 1, 9), (route_at + 2, b'-')] {
            let mut bad = good.clone();
            bad[at] = value;
            let mut r = FrameReader::default();
            r.push(&bad);
            assert!(r.next_packet().is_err(), "byte {at} = {value}");
        }
        let mut r = FrameReader::default();
        r.push(&good);
        assert_eq!(r.next_packet().unwrap().unwrap().rid.as_deref(), Some("m"));
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
