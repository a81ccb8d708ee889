//! One WebRTC peer: a str0m `Rtc` in ICE-lite and RTP mode, created from a client's offer.
//! The engine feeds it datagrams and time and drains its output; nothing here does I/O.

use crate::offer::OfferError;
use std::net::SocketAddr;
use std::time::Instant;
use str0m::bwe::Bitrate;
use str0m::change::SdpOffer;
use str0m::net::TcpType;
use str0m::rtp::Extension;
use str0m::{Candidate, Rtc};
use tessera_media::Codec;

/// What the remote side does: publish into the server (WHIP) or play from it (WHEP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    Publish,
    Play,
}

/// H.264 payload types Tessera offers, all packetization-mode 1 (PRODUCT.md §3.5):
/// (pt, rtx pt, profile-level-id) for constrained baseline, baseline, main and high.
const H264_PROFILES: [(u8, u8, u32); 4] = [(108, 109, 0x42e01f), (127, 121, 0x42001f), (123, 119, 0x4d001f), (114, 115, 0x64001f)];

/// What a peer's data channels may hold unsent or unacknowledged.
const SCTP_MAX_BUFFERED: usize = 1024 * 1024;

/// How often str0m reports a peer's stats.
pub const STATS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Starting estimate for subscribers' bandwidth estimation: a viewer starts on a layer that
/// most links carry (720p's 1.5 Mbit/s into a thinner link fills its queue before the estimator
/// has measured anything, and the queue then hides the link's real RTT), and str0m's initial
/// probes lift it within a second or two where there is room.
const INITIAL_BWE_KBPS: u64 = 800;

/// Our id for the playout-delay header extension when the server offers (a `sub` connection);
/// an answer takes the offer's.
const PLAYOUT_DELAY_EXT_ID: u8 = 12;

/// The server's host candidates: UDP on the shared port, and passive TCP (RFC 6544, framed as
/// RFC 4571) for clients whose UDP is blocked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostCandidates {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
}

pub struct Peer {
    pub rtc: Rtc,
    /// Our ICE ufrag: STUN binding requests of this peer carry it first in USERNAME.
    pub local_ufrag: String,
}

impl Peer {
    /// Negotiates `offer` and returns the peer with the SDP answer. `candidates` are the
    /// server's host candidates (all on the shared UDP port).
    /// `first_video` is the video codec the offer lists first: the answer prefers it, since the
    /// answerer's order decides what a publisher sends (PRODUCT.md §6.1).
    pub fn from_offer(role: PeerRole, offer: &str, candidates: &HostCandidates, first_video: Option<Codec>, now: Instant) -> Result<(Peer, String), OfferError> {
        let offer = SdpOffer::from_sdp_string(offer).map_err(|e| OfferError::Invalid(format!("the SDP could not be parsed: {e}")))?;
        let mut rtc = build(role, candidates, first_video != Some(Codec::Vp8), now)?;
        let mut answer = rtc.sdp_api().accept_offer(offer).map_err(|e| OfferError::Invalid(format!("the offer could not be negotiated: {e}")))?.to_sdp_string();
        if role == PeerRole::Publish {
            answer = prefer_red(&answer);
        }
        let local_ufrag =
            answer.lines().find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:")).map(str::to_owned).ok_or_else(|| OfferError::Invalid("the answer has no ICE ufrag".into()))?;
        Ok((Peer { rtc, local_ufrag }, answer))
    }

    /// A peer the server offers to (room signaling's `sub` connection, PRODUCT.md §7): it
    /// plays to the client, and its sections are added and stopped by renegotiation.
    pub fn offerer(candidates: &HostCandidates, now: Instant) -> Result<Peer, OfferError> {
        let mut rtc = build(PeerRole::Play, candidates, true, now)?;
        let local_ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        Ok(Peer { rtc, local_ufrag })
    }
}

/// The str0m peer Tessera runs: ICE-lite, RTP mode, Opus and H.264 (or VP8 first when the
/// client prefers it), with AV1 and bandwidth estimation when it plays to the client.
fn build(role: PeerRole, candidates: &HostCandidates, h264_first: bool, now: Instant) -> Result<Rtc, OfferError> {
    let mut config = Rtc::builder().set_crypto_provider(crate::dtls::crypto_provider()).set_ice_lite(true).set_rtp_mode(true).clear_codecs().enable_opus(true, true);
    if let Some(cert) = crate::dtls::process_certificate() {
        config = config.set_dtls_cert(cert);
    }
    if !h264_first {
        config = config.enable_vp8(true);
    }
    for (pt, rtx, profile) in H264_PROFILES {
        config.codec_config().add_h264(pt.into(), Some(rtx.into()), true, profile);
    }
    if h264_first {
        config = config.enable_vp8(true);
    }
    if role == PeerRole::Play {
        // Only for peers the server sends to: a viewer that negotiates AV1 gets an RTMP
        // publisher's AV1 original as it is (no WebRTC publisher is answered with AV1).
        config = config.enable_av1(true);
        // Transport-wide congestion control drives the simulcast layer of each viewer. A viewer
        // that offers none is paced all the same (unpaced keyframe bursts cost such clients,
        // aiortc, whole frames under load), after its media: the SFU resets this estimate
        // (`unmeasured_pacing`).
        config = config.enable_bwe(Some(Bitrate::kbps(INITIAL_BWE_KBPS)));
        // A lossy viewer's browser is asked for a jitter buffer long enough for a retransmission.
        config = config.set_extension(PLAYOUT_DELAY_EXT_ID, Extension::PlayoutDelay);
    }
    // Loss, round trip and jitter once a second: network quality and live stats (§9). Data
    // channels may hold 1 MiB unsent or unacknowledged (str0m's default, 128 KiB, caps a speed
    // test's downlink well below a few Mbit/s when the browser acknowledges late).
    let mut rtc = config.set_stats_interval(Some(STATS_INTERVAL)).set_sctp_max_buffered_amount(SCTP_MAX_BUFFERED).build(now);
    for addr in &candidates.udp {
        let c = Candidate::host(*addr, "udp").map_err(|e| OfferError::Invalid(format!("bad host candidate {addr}: {e}")))?;
        rtc.add_local_candidate(c);
    }
    for addr in &candidates.tcp {
        let c = Candidate::builder().tcp().host(*addr).tcptype(TcpType::Passive).build().map_err(|e| OfferError::Invalid(format!("bad TCP host candidate {addr}: {e}")))?;
        rtc.add_local_candidate(c);
    }
    Ok(rtc)
}

/// Lists RED first in an answer's audio sections: a browser sends RED (each Opus packet with
/// the one before it, so a single loss on its uplink is filled) only when the answer prefers it
/// to plain Opus. Tessera unwraps it on arrival (`tessera-engine`'s `sfu/red.rs`).
pub fn prefer_red(answer: &str) -> String {
    let red_pts: Vec<&str> = answer
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("a=rtpmap:"))
        .filter_map(|r| r.split_once(' '))
        .filter(|(_, c)| c.to_ascii_lowercase().starts_with("red/48000"))
        .map(|(pt, _)| pt)
        .collect();
    if red_pts.is_empty() {
        return answer.to_owned();
    }
    let mut out = String::with_capacity(answer.len());
    for line in answer.lines() {
        let line = line.trim_end_matches(['\r', '\n']);
        match line.strip_prefix("m=audio ") {
            Some(rest) => {
                // m=audio <port> <proto> <fmt>...
                let parts: Vec<&str> = rest.split(' ').collect();
                let (head, fmts) = parts.split_at(2.min(parts.len()));
                let reds = fmts.iter().filter(|f| red_pts.contains(f));
                let others = fmts.iter().filter(|f| !red_pts.contains(f));
                let fmts: Vec<&str> = reds.chain(others).copied().collect();
                out.push_str("m=audio ");
                out.push_str(&head.iter().chain(fmts.iter()).copied().collect::<Vec<_>>().join(" "));
            }
            None => out.push_str(line),
        }
        out.push_str("\r\n");
    }
    out
}

/// Marks the m-sections whose mid is in `mids` as rejected (port 0) in an SDP answer, for
/// sections a viewer lacks the privilege for (PRODUCT.md §4.2).
pub fn reject_sections(answer: &str, mids: &[String]) -> String {
    if mids.is_empty() {
        return answer.to_owned();
    }
    // Split into sections, find each section's mid, rewrite its m= line port.
    let mut out = String::with_capacity(answer.len());
    let mut section: Vec<&str> = Vec::new();
    let flush = |section: &mut Vec<&str>, out: &mut String| {
        let mid = section.iter().find_map(|l| l.trim_end().strip_prefix("a=mid:"));
        let reject = section.first().is_some_and(|l| l.starts_with("m=")) && mid.is_some_and(|m| mids.iter().any(|x| x == m));
        for (i, line) in section.iter().enumerate() {
            if i == 0 && reject {
                let mut parts: Vec<&str> = line.trim_end().split(' ').collect();
                if parts.len() > 1 {
                    parts[1] = "0";
                }
                out.push_str(&parts.join(" "));
                out.push_str("\r\n");
            } else {
                out.push_str(line.trim_end_matches(['\r', '\n']));
                out.push_str("\r\n");
            }
        }
        section.clear();
    };
    for line in answer.lines() {
        if line.starts_with("m=") {
            flush(&mut section, &mut out);
        }
        section.push(line);
    }
    flush(&mut section, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn red_goes_first_in_audio_sections_only() {
        let answer =
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 63\r\n";
        let out = prefer_red(answer);
        assert!(out.contains("m=audio 9 UDP/TLS/RTP/SAVPF 63 111\r\n"), "{out}");
        assert!(out.contains("m=video 9 UDP/TLS/RTP/SAVPF 96 63\r\n"));
        assert_eq!(out.lines().count(), answer.lines().count());
        let plain = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
        assert_eq!(prefer_red(plain), plain);
    }

    #[test]
    fn rejecting_sections_sets_port_zero() {
        let answer = "v=0\r\ns=-\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n";
        let out = reject_sections(answer, &["1".to_owned()]);
        assert!(out.contains("m=audio 9 UDP"));
        assert!(out.contains("m=video 0 UDP"));
        assert_eq!(reject_sections(answer, &[]), answer);
    }
}
