//! Tessera's fuzz targets: one function per parser that takes bytes from a remote peer (or
//! from disk at start). `fuzz_targets/*.rs` hand them to libFuzzer (`fuzz/run.sh`); the test
//! below replays every input kept in `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`,
//! so `make test` checks the whole corpus on every run.
//!
//! Each function must never panic, whatever `data` is; a panic is a bug in the parser.

use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use std::sync::Arc;
use tessera_rtmp::client::{PushTarget, RtmpPushSession};
use tessera_rtmp::flv::{AacConfig, AudioTag, AvcToRtp, VideoTag};
use tessera_rtmp::session::{RtmpEvent, RtmpPublishSession};

/// Splits `data` into pieces whose lengths come from the first byte (1..=256), so one input
/// arrives in several reads, as from a socket.
fn pieces(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let (step, rest) = match data.split_first() {
        Some((b, rest)) => (*b as usize + 1, rest),
        None => (1, data),
    };
    rest.chunks(step)
}

/// AMF0 values (commands, metadata): decode, and encode what decoded.
pub fn amf0(data: &[u8]) {
    if let Ok(values) = rml_amf0::deserialize(&mut std::io::Cursor::new(data)) {
        let _ = rml_amf0::serialize(&values);
    }
}

fn handshaken_server() -> RtmpPublishSession {
    let mut server = RtmpPublishSession::new();
    let mut client = Handshake::new(PeerType::Client);
    let c0c1 = client.generate_outbound_p0_and_p1().expect("client handshake");
    server.feed(&c0c1).expect("server takes C0+C1");
    let s0s1s2 = std::mem::take(&mut server.outbound);
    if let Ok(HandshakeProcessResult::Completed { response_bytes, .. }) = client.process_bytes(&s0s1s2) {
        server.feed(&response_bytes).expect("server takes C2");
    }
    server.outbound.clear();
    server
}

/// What an encoder sends after the handshake (chunk stream, AMF0 commands, FLV tags), as the
/// RTMP server handles it: publishes are accepted and media goes through the FLV/AVC parser.
pub fn rtmp_server(data: &[u8]) {
    let mut server = handshaken_server();
    let mut avc = AvcToRtp::new(1200);
    let mut out = Vec::new();
    for piece in pieces(data) {
        let Ok(events) = server.feed(piece) else { return };
        for e in events {
            match e {
                RtmpEvent::PublishRequested { request_id, app, stream_key } => {
                    let _ = tessera_rtmp::PublishTarget::parse(&app, &stream_key, None);
                    let _ = server.accept_publish(request_id);
                }
                RtmpEvent::Video { data, timestamp_ms } => {
                    if let Ok(tag) = VideoTag::parse(&data) {
                        let _ = avc.on_tag(&tag, timestamp_ms, &mut out);
                    }
                }
                RtmpEvent::Audio { data, .. } => {
                    if let Ok(AudioTag::SequenceHeader(asc)) = AudioTag::parse(&data) {
                        let _ = AacConfig::parse(asc);
                    }
                }
                RtmpEvent::PublishFinished | RtmpEvent::Metadata { .. } => {}
            }
        }
        out.clear();
        server.outbound.clear();
    }
}

/// What a relay target (a CDN we push to) answers after the handshake.
pub fn rtmp_client(data: &[u8]) {
    let Ok(target) = PushTarget::parse("rtmp://cdn.example/live/key") else { return };
    let Ok(mut client) = RtmpPushSession::new(target) else { return };
    let mut cdn = Handshake::new(PeerType::Server);
    let Ok(HandshakeProcessResult::InProgress { response_bytes }) = cdn.process_bytes(&std::mem::take(&mut client.outbound)) else { return };
    if client.feed(&response_bytes).is_err() {
        return;
    }
    for piece in pieces(data) {
        match client.feed(piece) {
            Ok(_) if client.is_publishing() => {
                let _ = client.send_video(&[0x17, 1, 0, 0, 0, 0, 0, 0, 1, 0x65], 0);
            }
            Ok(_) => {}
            Err(_) => return,
        }
        client.outbound.clear();
    }
}

/// FLV tag bodies and the codec configuration records inside them.
pub fn flv(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 8 {
        0 => {
            let mut avc = AvcToRtp::new(1200);
            let mut out = Vec::new();
            for piece in pieces(rest) {
                if let Ok(tag) = VideoTag::parse(piece) {
                    let _ = avc.on_tag(&tag, 0, &mut out);
                }
            }
        }
        // Video messages through an RTMP publisher whose app transcodes B-frames: AVC, Enhanced
        // RTMP (HEVC with its hvcC and originals for recordings, AV1, VP9, multitrack), and what
        // it hands a transcoder.
        6 => {
            let privileges = tessera_model::Privileges::from_bits(255);
            let mut publisher = tessera_engine::rtmp_publisher::RtmpPublisher::new(tessera_media::StreamKind::Main, privileges, tessera_model::BFramePolicy::Transcode);
            for (i, piece) in pieces(rest).enumerate() {
                let _ = publisher.on_video(piece, i as u32 * 33);
                while publisher.poll_transcode().is_some() {}
            }
        }
        7 => drop(tessera_media::h265::HevcConfig::parse(rest)),
        1 => {
            if let Ok(AudioTag::SequenceHeader(asc)) = AudioTag::parse(rest) {
                let _ = AacConfig::parse(asc);
            }
        }
        2 => drop(AacConfig::parse(rest)),
        3 => drop(tessera_media::h264::AvcConfig::parse(rest)),
        4 => drop(tessera_media::h264::split_length_prefixed(rest, 1 + (rest.len() % 4))),
        _ => drop(tessera_media::h264::split_annex_b(rest)),
    }
}

/// RTP payloads: H.264 and VP8 depacketizers and the access-unit assembler.
pub fn rtp(data: &[u8]) {
    let payloads: Vec<Vec<u8>> = pieces(data).map(<[u8]>::to_vec).collect();
    // Audio redundancy (RFC 2198) from a publisher: unwrapped, losses recovered, and made again
    // for a viewer; what is made must parse.
    let mut red = tessera_engine::sfu::red::RedReceiver::default();
    let mut sender = tessera_engine::sfu::red::RedSender::new(63.into());
    sender.levels = 1 + data.len() % 2;
    for (i, p) in payloads.iter().enumerate() {
        let seq = i as u64 * 2 + p.len() as u64 % 3;
        for (seq, ts, payload) in red.unwrap(seq, (seq as u32).wrapping_mul(960), p, 111).unwrap_or_default() {
            let made = sender.wrap(seq, ts, &payload, 111);
            assert!(payload.is_empty() || tessera_rtc::str0m::rtp::RedDecoder::decode(&made).is_ok(), "RED made for a viewer must parse");
        }
        let _ = tessera_engine::sfu::red::primary_len(p);
    }
    let nalus = tessera_media::h264::depacketize(&payloads);
    let _ = tessera_media::h264::to_annex_b(&nalus);
    // A VP8 publisher's descriptors (two sources, as a simulcast switch makes): temporal layers
    // dropped for a viewer, its picture IDs and TL0PICIDX kept continuous and written back;
    // what is written parses to the same descriptor but for them.
    let mut pictures = tessera_engine::forward::PictureIds::default();
    let mut rewriter = tessera_engine::forward::SeqTsRewriter::default();
    for (i, p) in payloads.iter().enumerate() {
        let Some(d) = tessera_media::vp8::Descriptor::parse(p) else { continue };
        let (seq, source) = (i as u64 + p.len() as u64 % 3, (1, 7 + (p.len() % 2) as u32));
        if d.temporal.is_some_and(|(tid, _)| tid > 0) {
            pictures.drop_frame(source, &d);
            rewriter.skip(source, seq);
            continue;
        }
        let _ = rewriter.rewrite(source, seq, 0, 1);
        if let Some((pid, tl0)) = pictures.map(source, &d) {
            let mut copy = p.clone();
            d.set_picture_id(&mut copy, pid);
            if let Some(tl0) = tl0 {
                d.set_tl0_pic_idx(&mut copy, tl0);
            }
            let again = tessera_media::vp8::Descriptor::parse(&copy).expect("a rewritten descriptor parses");
            let width = d.picture_id_modulus();
            assert_eq!(again.picture_id.map(|x| x.1), d.picture_id.map(|x| x.1));
            assert!(again.picture_id.is_none_or(|x| u32::from(x.0) == u32::from(pid) % width));
            assert_eq!((again.temporal, again.tl0_pic_idx.is_some()), (d.temporal, d.tl0_pic_idx.is_some()));
        }
    }
    for p in &payloads {
        // An H.264 packet's reference flag and picture start (a viewer's temporal step); a
        // non-reference picture never contains an IDR.
        if let Some(r) = tessera_media::h264::rtp_slice_ref(p) {
            let idr = match p.as_slice() {
                [b, ..] if b & 0x1f == tessera_media::h264::NAL_IDR => true,
                [b, fu, ..] if b & 0x1f == 28 => fu & 0x1f == tessera_media::h264::NAL_IDR,
                _ => false,
            };
            assert!(!(r.non_reference && idr), "an IDR slice is never read as droppable");
        }
        let _ = tessera_media::vp8::depacketize(p);
        let _ = tessera_media::vp8::is_keyframe(p);
        // The picture size live stats read from keyframes (an SPS, a VP8 keyframe header).
        let _ = tessera_media::picture_size::of_packet(tessera_media::Codec::H264, p);
        let _ = tessera_media::picture_size::of_packet(tessera_media::Codec::Vp8, p);
        let _ = tessera_media::picture_size::sps_size(p);
        let _ = tessera_media::picture_size::of_packet(tessera_media::Codec::H265, p);
        let _ = tessera_media::picture_size::hevc_sps_size(p);
        // AV1: an RTP payload's sequence header, and a temporal unit as the RTMP publisher
        // takes it (OBUs, the sequence header, packetized again).
        let _ = tessera_media::picture_size::of_packet(tessera_media::Codec::Av1, p);
        let _ = tessera_media::picture_size::av1_sequence_size(p);
        let _ = tessera_media::av1::sequence_header_obu(p);
        let _ = tessera_media::av1::sequence_header_of_config(p);
        // The records an Enhanced RTMP relay builds from in-band parameter sets and headers.
        let _ = tessera_media::av1::av1c_record(p);
        let _ = tessera_media::picture_size::av1_sequence_info(p);
        let _ = tessera_media::h265::hvcc_record(p, p, p);
        let mut av1 = Vec::new();
        if tessera_media::av1::packetize(p, true, 64 + p.len() % 1200, &mut av1).is_some() {
            let back: Vec<&[u8]> = av1.iter().map(Vec::as_slice).collect();
            assert!(tessera_media::av1::depacketize(&back).is_some(), "what was packetized depacketizes");
        }
    }
    let av1: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    let _ = tessera_media::av1::depacketize(&av1);
    // Sequence numbers, timestamps and markers from the payloads' first bytes.
    let mut assembler = tessera_media::rtp::AuAssembler::default();
    for p in &payloads {
        let (seq, ts, marker) = match p.as_slice() {
            [a, b, c, ..] => (*a as u64, *b as u32 / 4, c & 1 == 1),
            _ => (0, 0, true),
        };
        let _ = assembler.push(seq, ts, marker, Arc::from(p.as_slice()));
        let _ = assembler.take_abandoned();
    }
}

/// UDP datagrams on the media port: the demux that routes STUN/DTLS/RTP, the ufrag lookup that
/// picks a session, and the STUN parser behind it.
pub fn stun(data: &[u8]) {
    let _ = tessera_rtc::demux::classify(data);
    let _ = tessera_rtc::demux::binding_request_local_ufrag(data);
    let _ = tessera_rtc::str0m::ice::StunMessage::parse(data);
}

/// A peer's RTCP as SRTCP decrypts it (any viewer or publisher can write it): str0m's compound
/// parse, its feedback conversion, and each TWCC report applied to a send register and the
/// bandwidth estimator behind it.
pub fn rtcp(data: &[u8]) {
    tessera_rtc::str0m::tessera_fuzz::rtcp(data);
}

/// A peer's RTP headers, one after another: str0m's header and extension parse (MID, RID, RRID,
/// transport-wide sequence numbers, levels, timing) with the extension map Tessera negotiates,
/// and the receive register that turns the sequence numbers into feedback.
pub fn rtp_headers(data: &[u8]) {
    tessera_rtc::str0m::tessera_fuzz::rtp_headers(data);
}

/// A connected peer's packets after SRTP decryption, in a whole str0m session built as Tessera
/// builds a viewer's (`Peer::offerer`), its send streams set up as the SFU sets a viewer's (the
/// retransmission cache, two copies per resend): RTCP answered from the cache (NACKs),
/// keyframe requests, reports, TWCC into the estimator and pacer; RTP into simulcast receive
/// streams with repair packets and the NACKs and feedback they cause; media sent and time
/// passing in between.
pub fn session(data: &[u8]) {
    let _ = session_run(data);
}

fn session_run(data: &[u8]) -> Option<tessera_rtc::str0m::tessera_fuzz::SessionSummary> {
    use tessera_engine::sfu::{RTX_CACHE_AGE, RTX_CACHE_PACKETS, RTX_RATIO_CAP};
    let now = std::time::Instant::now();
    let rtc = session_peer(now)?;
    Some(tessera_rtc::str0m::tessera_fuzz::session(rtc, now, data, |tx| {
        tx.set_rtx_cache(RTX_CACHE_PACKETS, RTX_CACHE_AGE, Some(RTX_RATIO_CAP));
        tx.set_resend_copies(2);
    }))
}

fn session_peer(now: std::time::Instant) -> Option<tessera_rtc::str0m::Rtc> {
    let candidates = tessera_rtc::HostCandidates { udp: vec!["10.0.0.1:5000".parse().ok()?], tcp: Vec::new() };
    Some(tessera_rtc::Peer::offerer(&candidates, now).ok()?.rtc)
}

/// A peer's DTLS records before anything but ICE has checked it: the handshake of every WebRTC
/// connection (dimpl, DTLS 1.2 as str0m runs it, with Tessera's certificate verifier), as the
/// server (the first byte even) or as the client (odd: Tessera answers `setup:active` to a
/// WHIP encoder that offers `actpass`). The rest is datagrams, each prefixed by a two-byte
/// length, with time passing between them so retransmission timers run. The first byte's bit 1
/// also hands the first three datagrams to the certificate verifier (P-224 certificates parsed
/// by x509-cert) as a certificate, signed data and a signature.
pub fn dtls(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let datagrams: Vec<&[u8]> = length_prefixed(rest).collect();
    if mode & 2 != 0 {
        if let [cert, signed, signature, ..] = datagrams.as_slice() {
            let _ = tessera_rtc::dtls::verify_ecdsa_sha256(cert, signed, signature);
        }
    }
    let _ = dtls_run(mode & 1 == 1, &datagrams);
}

/// Runs a DTLS instance as Tessera's peers do, fed `datagrams`; returns what it sent and whether
/// it connected.
fn dtls_run(active: bool, datagrams: &[&[u8]]) -> Option<(Vec<Vec<u8>>, bool)> {
    use tessera_rtc::str0m::crypto::dtls::{DtlsOutput, DtlsVersion};
    let start = std::time::Instant::now();
    let provider = tessera_rtc::dtls::crypto_provider();
    let cert = tessera_rtc::dtls::process_certificate()?;
    let mut dtls = provider.dtls_provider.new_dtls(&cert, start, DtlsVersion::Dtls12, None).ok()?;
    dtls.set_active(active);
    let (mut sent, mut connected) = (Vec::new(), false);
    // Larger than any record (2^14 bytes of plaintext and its expansion).
    let mut buf = vec![0u8; 1 << 16];
    let mut now = start;
    let mut drain = |dtls: &mut Box<dyn tessera_rtc::str0m::crypto::dtls::DtlsInstance>, sent: &mut Vec<Vec<u8>>| loop {
        match dtls.poll_output(&mut buf) {
            DtlsOutput::Packet(p) => sent.push(p.to_vec()),
            DtlsOutput::Connected => connected = true,
            DtlsOutput::Timeout(_) => return,
            DtlsOutput::BufferTooSmall { .. } => return,
            _ => {}
        }
    };
    dtls.handle_timeout(now).ok()?;
    drain(&mut dtls, &mut sent);
    for datagram in datagrams {
        // An error ends the connection, as str0m then closes the peer.
        dtls.handle_packet(datagram).ok()?;
        drain(&mut dtls, &mut sent);
        now += std::time::Duration::from_millis(300);
        dtls.handle_timeout(now).ok()?;
        drain(&mut dtls, &mut sent);
    }
    Some((sent, connected))
}

/// Splits `data` into pieces each prefixed by a two-byte big-endian length.
fn length_prefixed(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (len, rest) = match data {
            [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]) as usize, rest),
            _ => return None,
        };
        let (piece, rest) = rest.split_at(len.min(rest.len()));
        data = rest;
        Some(piece)
    })
}

/// WHIP/WHEP offers: Tessera's offer reader and str0m's SDP parser.
pub fn sdp_offer(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(summary) = tessera_rtc::OfferSummary::parse(text) {
        let _ = summary.check_publish();
        let _ = summary.check_play();
    }
    let _ = tessera_rtc::str0m::change::SdpOffer::from_sdp_string(text);
}

/// Room signaling's `answer` on the server-offered `sub` connection: str0m's SDP parser and its
/// answer checks against a pending offer of an audio and a video section.
pub fn sdp_answer(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(answer) = tessera_rtc::str0m::change::SdpAnswer::from_sdp_string(text) else { return };
    let (mut peer, pending) = offering_peer();
    let _ = peer.rtc.sdp_api().accept_answer(pending, answer);
}

/// A `sub` connection with an offer of audio and video waiting for its answer.
fn offering_peer() -> (tessera_rtc::Peer, tessera_rtc::str0m::change::SdpPendingOffer) {
    use tessera_rtc::str0m::media::{Direction, MediaKind};
    let candidates = tessera_rtc::HostCandidates { udp: vec!["127.0.0.1:9".parse().expect("addr")], tcp: vec!["127.0.0.1:9".parse().expect("addr")] };
    let mut peer = tessera_rtc::Peer::offerer(&candidates, std::time::Instant::now()).expect("a peer");
    let mut api = peer.rtc.sdp_api();
    api.add_media(MediaKind::Audio, Direction::SendOnly, Some("u-main".into()), Some("u-main-audio".into()), None);
    api.add_media(MediaKind::Video, Direction::SendOnly, Some("u-main".into()), Some("u-main-video".into()), None);
    let (_, pending) = api.apply().expect("an offer");
    (peer, pending)
}

/// What participants send besides media: a data-channel custom-message frame (PRODUCT.md §8),
/// and a speed test's control messages and data frames (§9), one per line, fed to its state
/// machine a phase's worth of time apart.
pub fn room_data(data: &[u8]) {
    use std::time::{Duration, Instant};
    let _ = tessera_engine::custom::parse_send_frame(data);
    let t0 = Instant::now();
    let mut test = tessera_engine::speedtest::SpeedTest::new("10.0.0.1".into(), t0);
    for (i, piece) in data.split(|b| *b == b'\n').enumerate() {
        let now = t0 + Duration::from_millis(i as u64 * 700);
        if piece.first() == Some(&b'{') {
            test.handle_control(&String::from_utf8_lossy(piece), now);
        } else {
            test.handle_data(piece, now);
        }
        test.handle_timeout(now, piece.len() * 64);
        while test.poll_output().is_some() {}
    }
}

/// User tokens (HS256 JWT) as they arrive in `Authorization`, `?token=` and the WS join.
pub fn jwt(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let secrets = [tessera_model::AppSecret { kid: tessera_model::Kid::parse("k1").expect("kid"), secret: "s3cret-s3cret-s3cret".into(), created_at: 0 }];
    let _ = tessera_model::token::verify(text, 1_700_000_000, |_| Some(&secrets[..]));
}

/// `tasks/<id>.json` as read at start.
pub fn task_file(data: &[u8]) {
    let kind = tessera_tasks::task_file::KINDS[data.first().map_or(0, |b| *b as usize % 4)];
    let _ = tessera_tasks::task_file::parse(data.get(1..).unwrap_or(&[]), "0123456789abcdef", kind);
}

/// The API's JSON request bodies (first byte picks the request).
pub fn json_bodies(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else { return };
    tessera_server::api::fuzzing::body(which, body);
}

/// The inter-node relay's byte stream (another cluster node's tap of a room), cut into pieces of
/// the first byte's size: frames decoded and fed to an edge's mirror, then its quiet check.
pub fn relay_frames(data: &[u8]) {
    let Some((&cut, rest)) = data.split_first() else { return };
    let mut reader = tessera_engine::cluster_relay::FrameReader::default();
    let mut mirror = tessera_engine::cluster_relay::EdgeMirror::default();
    let now = std::time::Instant::now();
    for piece in rest.chunks(cut.max(1) as usize) {
        reader.push(piece);
        loop {
            match reader.next_packet() {
                Ok(Some(p)) => {
                    let _ = mirror.on_packet(p, now);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = mirror.poll(now + std::time::Duration::from_secs(10));
}

/// What an S3-compatible bucket answers (first byte picks): an error document, a multipart
/// upload's creation answer (rusty-s3's XML), or a sealed secret as kept in apps.json.
pub fn s3_answers(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    match which % 3 {
        0 => {
            let _ = tessera_tasks::recording::s3::error_of_response(403, &text);
        }
        1 => {
            let _ = tessera_tasks::recording::s3::parse_created_upload(&text);
        }
        _ => {
            let _ = tessera_tasks::recording::s3::unseal(&text, &[("k1".to_string(), "app-secret-0123456789".to_string())]);
        }
    }
}

/// A fuzz target: the name of its folder under `fuzz/corpus/`, and the function run on each input.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: [Target; 18] = [
    ("amf0", amf0),
    ("rtmp_server", rtmp_server),
    ("rtmp_client", rtmp_client),
    ("flv", flv),
    ("rtp", rtp),
    ("stun", stun),
    ("rtcp", rtcp),
    ("rtp_headers", rtp_headers),
    ("session", session),
    ("dtls", dtls),
    ("sdp_offer", sdp_offer),
    ("sdp_answer", sdp_answer),
    ("jwt", jwt),
    ("task_file", task_file),
    ("json_bodies", json_bodies),
    ("room_data", room_data),
    ("relay_frames", relay_frames),
    ("s3_answers", s3_answers),
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Replays every kept input of every target (the corpora the fuzzer grew and the inputs of
    /// bugs it found). A panic here is a regression.
    #[test]
    fn corpora_replay_without_panics() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut total = 0;
        for (name, target) in TARGETS {
            let mut n = 0;
            for dir in [root.join("corpus").join(name), root.join("regressions").join(name)] {
                let Ok(entries) = std::fs::read_dir(&dir) else { continue };
                for e in entries.flatten() {
                    let bytes = std::fs::read(e.path()).expect("corpus file");
                    let started = std::time::Instant::now();
                    let r = std::panic::catch_unwind(|| target(&bytes));
                    assert!(r.is_ok(), "{name}: {} panics", e.path().display());
                    // A hang is a bug too (libFuzzer reports inputs over 10 s as timeouts); the
                    // bound is loose for unoptimized builds on a busy machine.
                    let took = started.elapsed();
                    assert!(took < std::time::Duration::from_secs(5), "{name}: {} took {took:?}", e.path().display());
                    n += 1;
                }
            }
            assert!(n > 0, "{name} has no corpus in fuzz/corpus/{name}");
            total += n;
        }
        eprintln!("replayed {total} inputs");
    }

    /// The fork's fix to str0m's TWCC parser (a run of large deltas advanced one byte per delta
    /// instead of two, and the chunks after it read their deltas from its middle): a report
    /// read back carries the receive times it was written from.
    #[test]
    fn a_twcc_report_reads_back_the_receive_times_it_was_written_from() {
        tessera_rtc::str0m::tessera_fuzz::twcc_round_trip().unwrap();
    }

    /// Runs one input of one target, to debug it: `FUZZ_TARGET=session FUZZ_INPUT=path cargo
    /// test -p tessera-fuzz -- --ignored --nocapture replay_one`.
    #[test]
    #[ignore]
    fn replay_one() {
        let name = std::env::var("FUZZ_TARGET").expect("FUZZ_TARGET");
        let input = std::fs::read(std::env::var("FUZZ_INPUT").expect("FUZZ_INPUT")).unwrap();
        let (_, target) = TARGETS.iter().find(|(n, _)| *n == name).expect("a target of that name");
        target(&input);
    }

    /// The `session` target reaches what it is for: the seed inputs, run through it, show the
    /// session answering its viewer's NACKs from the retransmission cache (a packet lost alone
    /// twice, as the SFU sets a lossy viewer), its keyframe requests reaching the application, and its
    /// publisher's lost packets NACKed and the repaired one delivered, as the peer reads the
    /// datagrams the session sent.
    #[test]
    fn a_fuzzed_session_resends_what_its_viewer_nacks_and_nacks_what_its_publisher_lost() {
        let peer = session_peer(std::time::Instant::now()).unwrap();
        let seeds: std::collections::HashMap<_, _> = tessera_rtc::str0m::tessera_fuzz::session_seeds(&peer).into_iter().collect();
        let viewer = session_run(&seeds["viewer"]).unwrap();
        let mut resent = viewer.resent.clone();
        resent.sort();
        // 3, 4 and 6 NACKed; only 6 lost alone (neither neighbour NACKed) is sent twice.
        assert_eq!(resent, [3, 4, 6, 6], "{viewer:?}");
        assert_eq!(viewer.sent_media, 32, "30 video packets and two audio: {viewer:?}");
        assert_eq!(viewer.keyframe_requests, 2, "a PLI and a FIR: {viewer:?}");

        let publisher = session_run(&seeds["publisher"]).unwrap();
        let h = 0x3001;
        for seq in [8, 20] {
            assert!(publisher.nacked.contains(&(h, seq)), "{seq} lost, not NACKed: {:?}", publisher.nacked);
            assert!(!publisher.received.contains(&(h, seq as u64)), "{seq} was never sent");
        }
        assert!(publisher.received.contains(&(h, 7)), "the repair packet of 7 unwrapped: {:?}", publisher.received);
        assert_eq!(publisher.received.len(), 37 + 18 + 1 + 1, "two layers, the repair and the audio: {:?}", publisher.received);
        assert!(publisher.twcc_reports > 0, "transport-wide feedback sent: {publisher:?}");
    }

    /// A DTLS handshake between two instances built as `dtls_run` builds its own: the
    /// datagrams each side sent (the `dtls` target's seeds), and whether both connected.
    fn dtls_handshake() -> (Vec<Vec<u8>>, Vec<Vec<u8>>, bool) {
        use tessera_rtc::str0m::crypto::dtls::{DtlsOutput, DtlsVersion};
        let now = std::time::Instant::now();
        let provider = tessera_rtc::dtls::crypto_provider();
        let cert = tessera_rtc::dtls::process_certificate().unwrap();
        let mut sides: Vec<_> = [true, false]
            .into_iter()
            .map(|active| {
                let mut d = provider.dtls_provider.new_dtls(&cert, now, DtlsVersion::Dtls12, None).unwrap();
                d.set_active(active);
                d.handle_timeout(now).unwrap();
                d
            })
            .collect();
        let (mut sent, mut connected) = ([Vec::new(), Vec::new()], [false, false]);
        let mut buf = vec![0u8; 4_096];
        for _ in 0..10 {
            for from in 0..2 {
                let mut out = Vec::new();
                loop {
                    match sides[from].poll_output(&mut buf) {
                        DtlsOutput::Packet(p) => out.push(p.to_vec()),
                        DtlsOutput::Connected => connected[from] = true,
                        DtlsOutput::Timeout(_) => break,
                        _ => {}
                    }
                }
                for p in &out {
                    sides[1 - from].handle_packet(p).unwrap();
                }
                sent[from].extend(out);
            }
        }
        let [client, server] = sent;
        (client, server, connected == [true, true])
    }

    /// The `dtls` target runs a real handshake's flights: what a client sends reaches a
    /// server built as the target builds it, which answers with its flight (ServerHello to
    /// ServerHelloDone); both ends built so connect.
    #[test]
    fn the_dtls_target_answers_a_client_hello_with_a_server_flight() {
        let (client, server, connected) = dtls_handshake();
        assert!(connected, "the two instances complete a handshake");
        assert!(client.len() >= 2 && server.len() >= 2, "{} and {} datagrams", client.len(), server.len());
        let (answered, _) = dtls_run(false, &[client[0].as_slice()]).unwrap();
        // A handshake record (22) of DTLS 1.2 (0xfefd) carrying a ServerHello (2).
        let first = answered.first().expect("the server answers the ClientHello");
        assert_eq!((first[0], first[1], first[2], first[13]), (22, 0xfe, 0xfd, 2), "{first:02x?}");
    }

    /// Writes the hand-made seed inputs the corpora started from (`cargo test -p tessera-fuzz
    /// -- --ignored write_seeds`); the fuzzer grew the rest.
    #[test]
    #[ignore]
    fn write_seeds() {
        use tessera_rtmp::flv::{aac_frame, aac_sequence_header, avc_frame, avc_sequence_header};
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        let put = |target: &str, name: &str, bytes: &[u8]| {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
        };
        let sps = [0x67, 0x42, 0xc0, 0x1e, 0xd9, 0x00, 0xa0, 0x47, 0xfe, 0xc8];
        let pps = [0x68, 0xce, 0x3c, 0x80];
        let idr: Vec<u8> = [0x65, 0x88, 0x84, 0x00].iter().copied().chain((0..3000).map(|i| i as u8)).collect();
        let video_header = avc_sequence_header(&sps, &pps);
        let video_frame = avc_frame(&[&sps, &pps, &idr], true, 0);
        let asc = [0x12, 0x10];
        // A full publish conversation: our push client against our server session.
        let mut client = RtmpPushSession::new(PushTarget::parse("rtmp://h/push/room1/alice?token=x").unwrap()).unwrap();
        let mut server = RtmpPublishSession::new();
        let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
        let mut handshake_done = (false, false);
        for _ in 0..20 {
            let bytes = std::mem::take(&mut client.outbound);
            if handshake_done.0 {
                to_server.extend_from_slice(&bytes);
            }
            for e in server.feed(&bytes).unwrap() {
                if let RtmpEvent::PublishRequested { request_id, .. } = e {
                    server.accept_publish(request_id).unwrap();
                }
            }
            handshake_done.0 = true;
            let bytes = std::mem::take(&mut server.outbound);
            if handshake_done.1 {
                to_client.extend_from_slice(&bytes);
            }
            handshake_done.1 = true;
            if client.feed(&bytes).unwrap() {
                break;
            }
        }
        // The first client write after C0+C1 is C2 + connect; skip the 1536-byte C2.
        let to_server = to_server.get(1536..).unwrap_or_default().to_vec();
        client.send_video(&video_header, 0).unwrap();
        client.send_video(&video_frame, 33).unwrap();
        client.send_audio(&aac_sequence_header(&asc), 0).unwrap();
        client.send_audio(&aac_frame(&[0x21, 0x10, 0x04]), 23).unwrap();
        let media = std::mem::take(&mut client.outbound);
        put("rtmp_server", "publish", &[[0xff].as_slice(), &to_server, &media].concat());
        put("rtmp_server", "publish-small-reads", &[[0x07].as_slice(), &to_server, &media].concat());
        put("rtmp_client", "connect-publish", &[[0xff].as_slice(), &to_client].concat());
        put(
            "amf0",
            "connect",
            &rml_amf0::serialize(&vec![
                rml_amf0::Amf0Value::Utf8String("connect".into()),
                rml_amf0::Amf0Value::Number(1.0),
                rml_amf0::Amf0Value::Object(
                    [
                        ("app".to_string(), rml_amf0::Amf0Value::Utf8String("push/r".into())),
                        ("flashVer".to_string(), rml_amf0::Amf0Value::StrictArray(vec![rml_amf0::Amf0Value::Boolean(true), rml_amf0::Amf0Value::Null])),
                    ]
                    .into_iter()
                    .collect(),
                ),
            ])
            .unwrap(),
        );
        put("flv", "avc-header", &[[0u8, 0xff].as_slice(), &video_header].concat());
        put("flv", "avc-frame", &[[0u8, 0xff].as_slice(), &video_frame].concat());
        put("flv", "aac-header", &[[1u8].as_slice(), &aac_sequence_header(&asc)].concat());
        put("flv", "avc-config", &[[3u8].as_slice(), &video_header[5..]].concat());
        let mut fu = Vec::new();
        tessera_media::h264::packetize([&sps[..], &pps[..], &idr[..]], 1200, &mut fu);
        put("rtp", "h264-fua", &[[199u8].as_slice(), &fu.concat()].concat());
        put("rtp", "vp8", &[[20u8].as_slice(), &[0x90, 0x80, 0x01, 0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]].concat());
        let mut stun = vec![0x00, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xa4, 0x42];
        stun.extend_from_slice(&[7; 12]);
        stun.extend_from_slice(&[0x00, 0x06, 0x00, 0x08]);
        stun.extend_from_slice(b"abcd:efg");
        put("stun", "binding-request", &stun);
        put("stun", "rtp", &[0x80, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2]);
        put("stun", "dtls", &[22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let (client, server, _) = dtls_handshake();
        for (mode, name, flights) in [(0u8, "as-server", &client), (1, "as-client", &server)] {
            let mut input = vec![mode];
            for p in flights {
                input.extend_from_slice(&(p.len() as u16).to_be_bytes());
                input.extend_from_slice(p);
            }
            put("dtls", name, &input);
        }
        let testdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/tessera-rtc/testdata");
        let mut verify = vec![2u8];
        for f in ["ffmpeg8-p224-cert.der", "ffmpeg8-p224-ske-signed.bin", "ffmpeg8-p224-ske-signature.der"] {
            let bytes = std::fs::read(testdata.join(f)).unwrap();
            verify.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
            verify.extend_from_slice(&bytes);
        }
        put("dtls", "p224-verify", &verify);
        let peer = session_peer(std::time::Instant::now()).unwrap();
        for (name, bytes) in tessera_rtc::str0m::tessera_fuzz::session_seeds(&peer) {
            put("session", name, &bytes);
        }
        for (i, (name, bytes)) in tessera_rtc::str0m::tessera_fuzz::rtcp_seeds().into_iter().enumerate() {
            put("rtcp", &format!("{name}-{i}"), &bytes);
        }
        put("rtp_headers", "video-repair-audio", &tessera_rtc::str0m::tessera_fuzz::rtp_header_seed());
        let offer = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=ice-options:trickle\r\n\
a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\na=setup:actpass\r\na=mid:0\r\na=sendonly\r\na=msid:- a\r\na=rtcp-mux\r\n\
a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\na=ssrc:1 cname:x\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\na=setup:actpass\r\na=mid:1\r\na=sendonly\r\na=msid:- b\r\na=rtcp-mux\r\na=rtcp-rsize\r\n\
a=rtpmap:96 H264/90000\r\na=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\na=fmtp:96 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\na=rid:h send\r\na=rid:l send\r\na=simulcast:send h;l\r\n";
        put("sdp_offer", "publish", offer.as_bytes());
        {
            // A speed test: start, pings (with an echo's time), uplink frames, the report.
            let mut t = br#"{"type":"start","up_kbps":100,"down_kbps":100}"#.to_vec();
            let mut ping = vec![1u8, 0, 0, 0, 1, 0, 0, 0, 20, 0, 0, 0, 2, 0, 0, 0, 1];
            ping.resize(100, 0);
            let mut up = vec![3u8, 0, 0, 0, 1];
            up.resize(1000, 0);
            for part in [&ping[..], &ping[..], &up[..], &up[..], br#"{"type":"down_report","received":5,"bytes":5000}"#] {
                t.push(b'\n');
                t.extend_from_slice(part);
            }
            put("room_data", "speedtest", &t);
            put("room_data", "custom", &[3, b'h', b'i']);
        }
        // What a browser-like answerer (str0m) answers to the `sub` connection's offer.
        {
            use tessera_rtc::str0m::media::{Direction, MediaKind};
            let mut server =
                tessera_rtc::Peer::offerer(&tessera_rtc::HostCandidates { udp: vec!["127.0.0.1:9".parse().unwrap()], tcp: vec![] }, std::time::Instant::now()).unwrap();
            let mut api = server.rtc.sdp_api();
            api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
            api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
            let (offer, _) = api.apply().unwrap();
            let mut client = tessera_rtc::str0m::Rtc::builder().build(std::time::Instant::now());
            client.add_local_candidate(tessera_rtc::str0m::Candidate::host("127.0.0.1:10".parse().unwrap(), "udp").unwrap());
            let answer = client.sdp_api().accept_offer(offer).unwrap();
            put("sdp_answer", "answer", answer.to_sdp_string().as_bytes());
        }
        let claims = tessera_model::token::TokenClaims {
            app: "default".into(),
            room: "r".into(),
            user: "u".into(),
            role: Some(20),
            privileges: Some(255),
            nbf: None,
            exp: 1_800_000_000,
            info: None,
        };
        put("jwt", "valid", tessera_model::token::mint(&claims, &tessera_model::Kid::parse("k1").unwrap(), "s3cret-s3cret-s3cret").as_bytes());
        put("s3_answers", "error", b"\0<?xml version=\"1.0\"?><Error><Code>InvalidAccessKeyId</Code><Message>no</Message></Error>");
        put(
            "s3_answers",
            "created",
            b"\x01<?xml version=\"1.0\" encoding=\"UTF-8\"?><InitiateMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Bucket>b</Bucket><Key>k</Key><UploadId>abc</UploadId></InitiateMultipartUploadResult>",
        );
        put("s3_answers", "sealed", &[[2u8].as_slice(), tessera_tasks::recording::s3::seal("secret", "k1", "app-secret-0123456789").as_bytes()].concat());
        put("task_file", "recording", &[[0u8].as_slice(), br#"{"kind":"recording","id":"0123456789abcdef","app":"default","room":"r","mode":"single","streams":["main"],"prefix":"a/b","state":"RECORDING","owned_job":null}"#].concat());
        put(
            "task_file",
            "relay",
            &[
                [1u8].as_slice(),
                br#"{"kind":"relay","id":"0123456789abcdef","app":"default","room":"r","source":{"user":"u","stream":"main"},"urls":["rtmp://h/a/b"],"state":"RUNNING"}"#,
            ]
            .concat(),
        );
        for (i, body) in [
            r#"{"name":"ci","policy":"read-only"}"#,
            r#"{"room":"r","user":"u","role":"anchor","ttl":"1h","privileges":255}"#,
            r#"{"room":"r","user":"u","url":"rtmp://127.0.0.1/a/b","stream":"main","repeat":1}"#,
            r#"{"url":"https://h/x.m3u8"}"#,
            r#"{"room":"r","format":"hls+mp4","hls":{"segment_s":2},"max_idle_time":60,"streams":[{"user":"u","stream":"main"}],"subscribe":{"video_allow":["u"]}}"#,
            r#"{"layout":{"template":"nine-grid"}}"#,
            r#"{"room":"r","source":{"user":"u","stream":"aux"},"urls":["rtmp://h/a/b","rtmps://h:443/x/y"]}"#,
            r#"{"urls":["rtmp://h/a/b"]}"#,
            r#"{"webhook":{"url":"https://h/hook","key":"k"}}"#,
            r#"{"room":"r","layout":{"template":"custom","tiles":[{"x":0,"y":0,"w":0.5,"h":0.5,"user":"u","z":1}],"background":{"color":"0x102030"}},"encode":{"width":1280,"height":720,"fps":30,"kbps":2000},"audio":{"mode":"mix"},"outputs":{"rtmp_urls":["rtmp://h/a/b"]}}"#,
        ].iter().enumerate() {
            put("json_bodies", &format!("body{i}"), &[[i as u8].as_slice(), body.as_bytes()].concat());
        }
    }
}
