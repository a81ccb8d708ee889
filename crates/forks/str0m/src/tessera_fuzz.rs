//! Tessera fork: entry points for Tessera's coverage-guided fuzz targets (`fuzz/` in Tessera's
//! repository), into the parsers that read a remote peer's decrypted RTCP and RTP headers and
//! the state those feed. Exports only: nothing here changes what the library does. Always
//! compiled (no feature), so turning a fuzz target on does not change the features the rest of
//! a workspace builds this crate with.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::bwe_::Bwe;
use crate::Rtc;
use crate::rtp_::{extend_u16, Bitrate, Extension, ExtensionMap, Rtcp, RtcpFb, RtpHeader};
use crate::rtp_::{TwccPacketId, TwccRecvRegister, TwccSendRegister};

/// Packets a send register has sent before the peer's feedback is applied: the TWCC reports a
/// fuzzer writes find sequence numbers to acknowledge (the first 1,024).
const SENT: u16 = 1024;

/// A decrypted SRTCP packet from a peer: the compound parse (SR, RR, SDES, BYE, NACK, PLI, FIR,
/// REMB, XR, TWCC, …), the conversion to feedback, and every TWCC report applied to a send
/// register that sent `SENT` packets, with the estimator updated from what it acknowledged, as
/// a session does on each report.
pub fn rtcp(data: &[u8]) {
    let mut parsed = VecDeque::new();
    Rtcp::read_packet(data, &mut parsed);

    let start = Instant::now();
    let mut register = TwccSendRegister::new(SENT as usize);
    for seq in 0..SENT {
        register.register_seq(TwccPacketId::new(seq as u64), start + Duration::from_millis(seq as u64 / 4), 1_200);
    }
    let mut bwe = Bwe::new(Bitrate::kbps(300));
    bwe.set_bitrate(Bitrate::kbps(100), Bitrate::mbps(2));
    let mut now = start + Duration::from_millis(300);

    let mut feedback = Vec::new();
    RtcpFb::extend_from_rtcp(&mut feedback, parsed);
    for fb in feedback {
        if let RtcpFb::Twcc(twcc) = fb {
            now += Duration::from_millis(50);
            if let Some(records) = register.apply_report(twcc, now) {
                bwe.update(records, now);
            }
            let _ = bwe.handle_timeout(now, true);
            let _ = bwe.poll_estimate();
            let _ = bwe.queue_delay();
            let _ = bwe.queue_left(now);
            let _ = bwe.delivered_bitrate(Duration::from_millis(500));
            let _ = register.loss(Duration::from_secs(1), now);
            let _ = register.rtt();
        }
    }
}

/// RTP headers from a peer, one after another (each prefixed by its length, one byte), read
/// with the extension map Tessera negotiates (Chrome's standard ids and playout delay) plus
/// every other extension this crate parses on the ids left; each transport-wide sequence
/// number goes into a receive register, whose feedback is then built as a session does.
pub fn rtp_headers(data: &[u8]) {
    let exts = extension_map();
    let mut register = TwccRecvRegister::new(100);
    let mut now = Instant::now();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let (packet, tail) = tail.split_at((len as usize).min(tail.len()));
        rest = tail;
        now += Duration::from_millis(5);
        let Some(header) = RtpHeader::parse(packet, &exts) else { continue };
        if let Some(seq) = header.ext_vals.transport_cc {
            let extended = extend_u16(register.max_seq().map(|s| *s), seq);
            register.update_seq(extended.into(), now);
            let _ = register.loss();
        }
        let _ = header.ext_vals.mid.map(|m| m.to_string());
        let _ = header.ext_vals.rid.map(|r| r.to_string());
    }
    while register.build_report(1_200).is_some() {}
    let _ = register.loss();
}

fn extension_map() -> ExtensionMap {
    let mut exts = ExtensionMap::standard();
    exts.set(5, Extension::TransmissionTimeOffset);
    exts.set(6, Extension::VideoContentType);
    exts.set(7, Extension::VideoTiming);
    exts.set(8, Extension::ColorSpace);
    exts.set(9, Extension::FrameMarking);
    exts.set(12, Extension::PlayoutDelay);
    exts.set(14, Extension::AbsoluteCaptureTime);
    exts
}

/// A seed input for `rtp_headers`, as this crate writes headers: a video packet of simulcast
/// layer "h" (MID, RID, transport-wide sequence numbers, absolute send time, playout delay),
/// its repair packet (RRID), and an audio packet with its level, each prefixed by its length.
pub fn rtp_header_seed() -> Vec<u8> {
    use crate::rtp_::{MediaTime, Mid, Rid};
    let exts = extension_map();
    let now = Instant::now();
    let mut video = RtpHeader { marker: true, payload_type: 96.into(), sequence_number: 7, timestamp: 90_000, ssrc: 11.into(), ..Default::default() };
    video.ext_vals.mid = Some(Mid::from("1"));
    video.ext_vals.rid = Some(Rid::from("h"));
    video.ext_vals.transport_cc = Some(65_534);
    video.ext_vals.abs_send_time = Some(now);
    video.ext_vals.play_delay_min = Some(MediaTime::from_90khz(0));
    video.ext_vals.play_delay_max = Some(MediaTime::from_90khz(0));
    let mut repair = RtpHeader { payload_type: 97.into(), sequence_number: 3, timestamp: 90_000, ssrc: 12.into(), ..Default::default() };
    repair.ext_vals.mid = Some(Mid::from("1"));
    repair.ext_vals.rid_repair = Some(Rid::from("h"));
    repair.ext_vals.transport_cc = Some(1);
    let mut audio = RtpHeader { payload_type: 111.into(), sequence_number: 9, timestamp: 48_000, ssrc: 13.into(), ..Default::default() };
    audio.ext_vals.mid = Some(Mid::from("0"));
    audio.ext_vals.audio_level = Some(-30);
    audio.ext_vals.voice_activity = Some(true);
    audio.ext_vals.transport_cc = Some(0);
    let mut seed = Vec::new();
    for header in [video, repair, audio] {
        let mut buf = [0u8; 255];
        let n = header.write_to(&mut buf, &exts);
        seed.push(n as u8);
        seed.extend_from_slice(&buf[..n]);
    }
    seed
}

/// Seed inputs for `rtcp`, as this crate writes them (so the fuzzer starts from well-formed
/// packets): TWCC reports of packets 0..200 received with gaps and a reordering, a compound of
/// a receiver report, a NACK, a PLI and a REMB.
pub fn rtcp_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use crate::rtp_::{Nack, NackEntry, Pli, ReceiverReport, ReceptionReport, Remb, ReportList, Ssrc};
    let write = |mut list: VecDeque<Rtcp>| {
        let mut buf = vec![0; 1_200];
        let n = Rtcp::write_packet(&mut list, &mut buf, |_| {});
        buf.truncate(n);
        buf
    };
    let mut register = TwccRecvRegister::new(300);
    let start = Instant::now();
    for seq in (0u64..200).filter(|s| s % 17 != 3) {
        let seq = if seq == 50 { 51 } else if seq == 51 { 50 } else { seq };
        register.update_seq(seq.into(), start + Duration::from_micros(seq * 4_100));
    }
    let mut seeds = Vec::new();
    while let Some(twcc) = register.build_report(1_100) {
        seeds.push(("twcc", write([Rtcp::Twcc(twcc)].into())));
    }
    let mut reports = ReportList::new();
    reports.push(ReceptionReport { ssrc: Ssrc::from(2), fraction_lost: 12, packets_lost: 40, max_seq: 70_000, jitter: 90, last_sr_time: 0x1234_5678, last_sr_delay: 6_553 });
    let mut nacks = ReportList::new();
    nacks.push(NackEntry { pid: 120, blp: 0b1010_0000_0000_0001 });
    let compound = [
        Rtcp::ReceiverReport(ReceiverReport { sender_ssrc: Ssrc::from(1), reports }),
        Rtcp::Nack(Nack { sender_ssrc: Ssrc::from(1), ssrc: Ssrc::from(2), reports: nacks }),
        Rtcp::Pli(Pli { sender_ssrc: Ssrc::from(1), ssrc: Ssrc::from(2) }),
        Rtcp::Remb(Remb { sender_ssrc: Ssrc::from(1), ssrc: Ssrc::from(2), bitrate: 1_500_000.0, ssrcs: vec![2] }),
    ];
    seeds.push(("compound", write(compound.into())));
    seeds
}

/// A TWCC report written by this crate and read back carries the receive times it was built
/// from, ±250 µs (its resolution): 25 packets 100 ms apart (after the first few, a run of
/// large deltas) then ten 5 ms apart (a run of small ones). Returns what differs, for a test of Tessera's.
pub fn twcc_round_trip() -> Result<(), String> {
    let start = Instant::now();
    let times: Vec<Instant> = (0..35u64).map(|i| start + Duration::from_millis(if i <= 24 { i * 100 } else { 2_400 + (i - 24) * 5 })).collect();
    let mut register = TwccRecvRegister::new(100);
    for (seq, at) in times.iter().enumerate() {
        register.update_seq((seq as u64).into(), *at);
    }
    let twcc = register.build_report(1_200).ok_or("no report built")?;
    let mut list = VecDeque::from([Rtcp::Twcc(twcc)]);
    let mut buf = vec![0; 1_200];
    let n = Rtcp::write_packet(&mut list, &mut buf, |_| {});
    let mut parsed = VecDeque::new();
    Rtcp::read_packet(&buf[..n], &mut parsed);
    let Some(Rtcp::Twcc(twcc)) = parsed.pop_front() else { return Err("the report did not parse back".into()) };
    let read: Vec<(u64, Instant)> = twcc.into_iter(start, 0.into()).filter_map(|(seq, _, at)| Some((*seq, at?))).collect();
    if read.len() != times.len() {
        return Err(format!("{} of {} packets read back", read.len(), times.len()));
    }
    let (first_sent, first_read) = (times[0], read[0].1);
    for ((seq, at), sent) in read.iter().zip(&times) {
        let want = sent.duration_since(first_sent).as_micros() as i64;
        let got = at.duration_since(first_read).as_micros() as i64;
        if (want - got).abs() > 250 {
            return Err(format!("packet {seq}: received {want} µs after the first, reported {got}"));
        }
    }
    Ok(())
}

// ---- A whole session: what a connected peer's packets reach once SRTP has decrypted them ----

/// Our socket and the peer's, for a session `session` drives.
const LOCAL: &str = "10.0.0.1:5000";
const REMOTE: &str = "10.0.0.2:6000";
/// What the session sends the peer: video with its repair stream, and audio.
const VIDEO_TX: u32 = 0x1001;
const VIDEO_TX_RTX: u32 = 0x1002;
const AUDIO_TX: u32 = 0x2001;
/// What the peer publishes to the session: two simulcast layers (each with a repair stream)
/// and audio.
const VIDEO_RX: [(u32, u32, &str); 2] = [(0x3001, 0x3002, "h"), (0x3003, 0x3004, "l")];
const AUDIO_RX: u32 = 0x4001;
const MID_AUDIO: &str = "0";
const MID_VIDEO: &str = "1";
/// The DTLS exporter's output both sides derive their SRTP keys from (AES-256-GCM: two keys of
/// 32 bytes and two salts of 12).
const KEYS: [u8; 88] = {
    let mut k = [0u8; 88];
    let mut i = 0;
    while i < 88 {
        k[i] = (i as u8).wrapping_mul(37).wrapping_add(11);
        i += 1;
    }
    k
};
/// A packet from the fuzzer is at most this long (a datagram).
const MAX_PACKET: usize = 1_400;
/// Time an input may let pass, and video packets it may have the session send: every timer of
/// a session (reports, stats, the estimator's) runs within seconds, and its retransmission
/// cache holds 2,048 packets. Past these an input's waits and sends do nothing (most random
/// bytes read as waits: hours of timers per input would make the target slow, not deeper).
const MAX_WAIT: Duration = Duration::from_secs(10);
const MAX_SENT: u64 = 4_096;

/// The remote peer's sending side: encrypts what a fuzzer writes as the peer's RTP and RTCP
/// with the keys the session decrypts with, so the bytes pass SRTP's authentication and reach
/// everything behind it (the rollover counter's estimate included).
struct PeerSrtp {
    ctx: crate::rtp_::SrtpContext,
    /// The peer's receiving side, which reads what the session sends (`SessionSummary`).
    rx: crate::rtp_::SrtpContext,
    exts: ExtensionMap,
    /// The highest extended sequence number written per SSRC: the peer's rollover counter.
    seqs: std::collections::HashMap<u32, u64>,
    /// The same for what the session sent.
    rx_seqs: std::collections::HashMap<u32, u64>,
}

impl PeerSrtp {
    fn rtp(&mut self, plain: &[u8]) -> Option<Vec<u8>> {
        let header = RtpHeader::parse(plain, &self.exts)?;
        let last = self.seqs.get(&*header.ssrc).copied();
        let seq = extend_u16(last, header.sequence_number);
        self.seqs.insert(*header.ssrc, last.map_or(seq, |l| l.max(seq)));
        Some(self.ctx.protect_rtp(plain, &header, seq))
    }

    fn rtcp(&mut self, plain: &[u8]) -> Option<Vec<u8>> {
        // The SRTCP header (8 bytes) stays in the clear.
        (plain.len() >= 8).then(|| self.ctx.protect_rtcp(plain))
    }

    /// Reads a datagram the session sent into `summary`. A datagram the peer cannot decrypt
    /// (or parse) is a bug: the session only sends what it encrypted itself.
    fn read_sent(&mut self, datagram: &[u8], summary: &mut SessionSummary) {
        let is_rtcp = matches!(datagram, [_, pt, ..] if (192..=223).contains(pt));
        if is_rtcp {
            let plain = self.rx.unprotect_rtcp(datagram).expect("the peer decrypts the session's RTCP");
            let mut parsed = VecDeque::new();
            Rtcp::read_packet(&plain, &mut parsed);
            for p in parsed {
                match p {
                    Rtcp::Nack(n) => summary.nacked.extend(n.reports.iter().flat_map(|e| e.into_iter(0.into())).map(|seq| (*n.ssrc, seq.as_u16()))),
                    Rtcp::Pli(p) => summary.keyframes_asked.push(*p.ssrc),
                    Rtcp::Fir(f) => summary.keyframes_asked.extend(f.reports.iter().map(|e| *e.ssrc)),
                    Rtcp::Twcc(_) => summary.twcc_reports += 1,
                    _ => {}
                }
            }
            return;
        }
        let header = RtpHeader::parse(datagram, &self.exts).expect("the session's RTP parses");
        let last = self.rx_seqs.get(&*header.ssrc).copied();
        let seq = extend_u16(last, header.sequence_number);
        self.rx_seqs.insert(*header.ssrc, last.map_or(seq, |l| l.max(seq)));
        let payload = self.rx.unprotect_rtp(datagram, &header, seq).expect("the peer decrypts the session's RTP");
        // RTP padding (RFC 3550 5.1): its last byte counts the padding bytes.
        let padding = if header.has_padding { payload.last().map_or(0, |n| *n as usize) } else { 0 };
        let payload = &payload[..payload.len().saturating_sub(padding)];
        match *header.ssrc {
            // A repair packet: its original sequence number first (RFC 4588); padding has none.
            VIDEO_TX_RTX => match payload {
                [a, b, ..] => summary.resent.push(u16::from_be_bytes([*a, *b])),
                _ => summary.padding += 1,
            },
            VIDEO_TX | AUDIO_TX => summary.sent_media += 1,
            _ => summary.padding += 1,
        }
    }
}

/// What a `session` run did, as its peer saw it: the datagrams the session sent (decrypted
/// and read) and the events it gave the application.
#[derive(Debug, Default)]
pub struct SessionSummary {
    /// Media packets sent (video and audio, first sends).
    pub sent_media: usize,
    /// The original sequence numbers of the video packets resent on the repair stream.
    pub resent: Vec<u16>,
    /// Padding and probes.
    pub padding: usize,
    /// (SSRC, sequence number) of every packet the session NACKed.
    pub nacked: Vec<(u32, u16)>,
    /// The SSRCs of the session's keyframe requests to the peer (PLI and FIR).
    pub keyframes_asked: Vec<u32>,
    /// TWCC reports the session sent the peer.
    pub twcc_reports: usize,
    /// (SSRC, sequence number) of the peer's packets the session gave the application.
    pub received: Vec<(u32, u64)>,
    /// The peer's keyframe requests the session gave the application (by SSRC).
    pub keyframe_requests: usize,
}

/// Makes `rtc` connected as if ICE had nominated `LOCAL → REMOTE` and DTLS (`rtc` passive) had
/// exported `KEYS` for AES-256-GCM, which is what browsers negotiate, without either handshake.
fn connect(rtc: &mut Rtc) -> PeerSrtp {
    use crate::config::KeyingMaterial;
    use crate::crypto::dtls::SrtpProfile;
    let provider = rtc.crypto_provider.clone();
    let mat = KeyingMaterial::new(&KEYS);
    rtc.session.set_keying_material(KeyingMaterial::new(&KEYS), &provider, SrtpProfile::AEAD_AES_256_GCM, false);
    rtc.dtls_connected = true;
    rtc.send_addr = Some(crate::SendAddr { proto: crate::net::Protocol::Udp, source: LOCAL.parse().unwrap(), destination: REMOTE.parse().unwrap() });
    rtc.wake_all();
    // The active side's sender uses the left half, which the passive side receives with.
    let ctx = crate::rtp_::SrtpContext::new(&provider, SrtpProfile::AEAD_AES_256_GCM, &mat, true);
    let rx = crate::rtp_::SrtpContext::new(&provider, SrtpProfile::AEAD_AES_256_GCM, &mat, false);
    PeerSrtp { ctx, rx, exts: rtc.session.exts.clone(), seqs: Default::default(), rx_seqs: Default::default() }
}

/// One step of a session, as `session` reads it from the fuzzer's bytes. Each starts with a byte
/// whose low two bits say which, and whose upper six a count (`n`).
#[derive(Debug)]
pub enum SessionOp<'a> {
    /// The peer's RTCP (then a two-byte length and the packet, in the clear; encrypted here).
    Rtcp(&'a [u8]),
    /// The peer's RTP (the same framing).
    Rtp(&'a [u8]),
    /// The session sends `n + 1` video packets and one audio packet (up to `MAX_SENT`).
    Send(u8),
    /// Time passes, `n * 5` ms, with every timeout due in between handled in turn (up to
    /// `MAX_WAIT` from the start).
    Wait(u8),
}

impl SessionOp<'_> {
    /// Appends this step to an input for `session`.
    pub fn write(&self, out: &mut Vec<u8>) {
        let framed = |out: &mut Vec<u8>, op: u8, p: &[u8]| {
            out.push(op);
            out.extend_from_slice(&(p.len() as u16).to_be_bytes());
            out.extend_from_slice(p);
        };
        match self {
            SessionOp::Rtcp(p) => framed(out, 0, p),
            SessionOp::Rtp(p) => framed(out, 1, p),
            SessionOp::Send(n) => out.push(2 | (n.min(&63) << 2)),
            SessionOp::Wait(n) => out.push(3 | (n.min(&63) << 2)),
        }
    }
}

fn read_ops(mut data: &[u8]) -> impl Iterator<Item = SessionOp<'_>> {
    std::iter::from_fn(move || {
        let (&op, rest) = data.split_first()?;
        data = rest;
        let n = op >> 2;
        Some(match op & 3 {
            0 | 1 => {
                let len = match data {
                    [a, b, ..] => u16::from_be_bytes([*a, *b]) as usize,
                    _ => data.len(),
                };
                data = &data[2.min(data.len())..];
                let (p, rest) = data.split_at(len.min(data.len()).min(MAX_PACKET));
                data = rest;
                if op & 3 == 0 { SessionOp::Rtcp(p) } else { SessionOp::Rtp(p) }
            }
            2 => SessionOp::Send(n),
            _ => SessionOp::Wait(n),
        })
    })
}

/// A connected session as a peer's packets reach it: `rtc` (built as the application builds
/// its peers, in RTP mode) gets the streams above, SRTP keys and a nominated pair, and then the
/// steps in `data`: the peer's RTCP into the send streams (NACKs answered from the
/// retransmission cache, keyframe requests, receiver reports, REMB, TWCC into the estimator and
/// the pacer, BYE, XR) and its RTP into the receive streams (simulcast layers found by RID,
/// repair packets unwrapped, NACKs and TWCC feedback built), with the session sending media and
/// time passing between them. Every output is drained as an application does. `configure_tx`
/// sets up each send stream as the application does. Returns what the peer saw.
pub fn session(mut rtc: Rtc, start: Instant, data: &[u8], configure_tx: impl Fn(&mut crate::rtp::StreamTx)) -> SessionSummary {
    use crate::media::{MediaKind, Mid, Rid};
    use crate::net::{Protocol, Receive};
    use crate::rtp::RtpWrite;
    use crate::Input;

    let (mid_audio, mid_video) = (Mid::from(MID_AUDIO), Mid::from(MID_VIDEO));
    let video_pt = rtc.codec_config().params().iter().find(|p| p.spec().codec.is_video()).map(|p| p.pt());
    let audio_pt = rtc.codec_config().params().iter().find(|p| p.spec().codec.is_audio()).map(|p| p.pt());
    let mut summary = SessionSummary::default();
    let (Some(video_pt), Some(audio_pt)) = (video_pt, audio_pt) else { return summary };
    {
        let mut api = rtc.direct_api();
        api.enable_twcc_feedback();
        api.declare_media(mid_audio, MediaKind::Audio);
        api.declare_media(mid_video, MediaKind::Video);
        configure_tx(api.declare_stream_tx(VIDEO_TX.into(), Some(VIDEO_TX_RTX.into()), mid_video, None));
        configure_tx(api.declare_stream_tx(AUDIO_TX.into(), None, mid_audio, None));
        for (ssrc, rtx, rid) in VIDEO_RX {
            api.expect_stream_rx(ssrc.into(), Some(rtx.into()), mid_video, Some(Rid::from(rid)));
        }
        api.expect_stream_rx(AUDIO_RX.into(), None, mid_audio, None);
    }
    let mut peer = connect(&mut rtc);
    let (local, remote) = (LOCAL.parse().unwrap(), REMOTE.parse().unwrap());

    let mut now = start;
    let Some(mut next_timeout) = drain(&mut rtc, now, &mut peer, &mut summary) else { return summary };
    let (mut video_seq, mut audio_seq, mut frames) = (0u64, 0u64, 0u32);
    for op in read_ops(data) {
        let handled = match op {
            SessionOp::Rtcp(p) | SessionOp::Rtp(p) => {
                let encrypted = if matches!(op, SessionOp::Rtcp(_)) { peer.rtcp(p) } else { peer.rtp(p) };
                let Some(encrypted) = encrypted else { continue };
                let Ok(receive) = Receive::new(Protocol::Udp, remote, local, &encrypted) else { continue };
                rtc.handle_input(Input::Receive(now, receive))
            }
            SessionOp::Send(_) if video_seq >= MAX_SENT => Ok(()),
            SessionOp::Send(n) => {
                let mut api = rtc.direct_api();
                for i in 0..=n {
                    let marker = (video_seq + 1) % 4 == 0;
                    let payload = vec![i; 200 + (video_seq % 7) as usize * 150];
                    if let Some(tx) = api.stream_tx(&VIDEO_TX.into()) {
                        tx.write_rtp(RtpWrite::new(video_pt, video_seq.into(), frames.wrapping_mul(3_000), now, payload).marker(marker).nackable(true));
                    }
                    video_seq += 1;
                    frames += marker as u32;
                }
                if let Some(tx) = api.stream_tx(&AUDIO_TX.into()) {
                    tx.write_rtp(RtpWrite::new(audio_pt, audio_seq.into(), (audio_seq as u32).wrapping_mul(960), now, vec![0xfc; 80]));
                }
                audio_seq += 1;
                Ok(())
            }
            SessionOp::Wait(n) => {
                let until = (now + Duration::from_millis(n as u64 * 5)).min(start + MAX_WAIT);
                let mut result = Ok(());
                while next_timeout <= until && result.is_ok() {
                    now = now.max(next_timeout);
                    result = rtc.handle_input(Input::Timeout(now));
                    let Some(next) = drain(&mut rtc, now, &mut peer, &mut summary) else { return summary };
                    next_timeout = next;
                }
                now = until;
                result.and_then(|_| rtc.handle_input(Input::Timeout(now)))
            }
        };
        // An error ends the session, as the application then drops the peer.
        if handled.is_err() {
            return summary;
        }
        let Some(next) = drain(&mut rtc, now, &mut peer, &mut summary) else { return summary };
        next_timeout = next;
    }
    summary
}

/// Polls `rtc` until it has nothing more before its next timeout, which it returns; None when
/// it failed (the application then drops the peer).
fn drain(rtc: &mut Rtc, now: Instant, peer: &mut PeerSrtp, summary: &mut SessionSummary) -> Option<Instant> {
    // A timeout already due is handled at once, as an application's loop does; one that stays
    // due after it was handled would spin that loop for ever.
    let mut due_again = 0;
    loop {
        match rtc.poll_output() {
            Ok(crate::Output::Timeout(at)) if at <= now => {
                due_again += 1;
                assert!(due_again < 10_000, "a timeout stays due after it is handled ({at:?} at {now:?}, {:?})", rtc.last_timeout_reason);
                rtc.handle_input(crate::Input::Timeout(now)).ok()?;
            }
            Ok(crate::Output::Timeout(at)) => return Some(at),
            Ok(crate::Output::Transmit(t)) => peer.read_sent(&t.contents, summary),
            Ok(crate::Output::Event(crate::Event::RtpPacket(p))) => summary.received.push((*p.header.ssrc, *p.seq_no)),
            Ok(crate::Output::Event(crate::Event::KeyframeRequest(_))) => summary.keyframe_requests += 1,
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// Seed inputs for `session`, for a session built as `rtc` is (its payload types): a peer that
/// views (receiver reports, NACKs of sent packets, PLI, FIR, REMB, a TWCC report of what was
/// sent, BYE) and one that publishes (two simulcast layers with gaps, a repair packet, audio, a
/// sender report), and both in one.
pub fn session_seeds(rtc: &Rtc) -> Vec<(&'static str, Vec<u8>)> {
    use crate::media::{Mid, Rid};
    use crate::rtp_::{Fir, FirEntry, Goodbye, MediaTime, Nack, NackEntry, Pli, ReceiverReport, ReceptionReport, Remb, ReportList, SenderInfo, SenderReport, Ssrc};
    let pts = |video: bool| rtc.codec_config().params().iter().find(|p| p.spec().codec.is_video() == video).map(|p| (p.pt(), p.resend()));
    let (Some((video_pt, video_rtx_pt)), Some((audio_pt, _))) = (pts(true), pts(false)) else { return Vec::new() };
    let exts = &rtc.session.exts;
    let rtcp = |list: Vec<Rtcp>| {
        let mut list = VecDeque::from(list);
        let mut buf = vec![0; 1_200];
        let n = Rtcp::write_packet(&mut list, &mut buf, |_| {});
        buf.truncate(n);
        buf
    };
    let rtp = |header: RtpHeader, payload: &[u8]| {
        let mut buf = vec![0; 1_400];
        let n = header.write_to(&mut buf, exts);
        buf.truncate(n);
        buf.extend_from_slice(payload);
        buf
    };
    let viewer_ssrc = Ssrc::from(0x5555);
    let report = |ssrc: u32, max_seq: u32| {
        let mut reports = ReportList::new();
        reports.push(ReceptionReport { ssrc: ssrc.into(), fraction_lost: 3, packets_lost: 1, max_seq, jitter: 40, last_sr_time: 0, last_sr_delay: 0 });
        Rtcp::ReceiverReport(ReceiverReport { sender_ssrc: viewer_ssrc, reports })
    };

    let mut viewer = Vec::new();
    SessionOp::Send(19).write(&mut viewer);
    SessionOp::Wait(4).write(&mut viewer);
    let mut nacks = ReportList::new();
    nacks.push(NackEntry { pid: 3, blp: 0b101 });
    let nack = Rtcp::Nack(Nack { sender_ssrc: viewer_ssrc, ssrc: VIDEO_TX.into(), reports: nacks });
    let pli = Rtcp::Pli(Pli { sender_ssrc: viewer_ssrc, ssrc: VIDEO_TX.into() });
    SessionOp::Rtcp(&rtcp(vec![report(VIDEO_TX, 19), nack, pli])).write(&mut viewer);
    SessionOp::Wait(10).write(&mut viewer);
    let mut acked = TwccRecvRegister::new(100);
    let start = Instant::now();
    for seq in (0u64..22).filter(|s| *s != 5) {
        acked.update_seq(seq.into(), start + Duration::from_millis(seq * 2));
    }
    while let Some(twcc) = acked.build_report(1_100) {
        SessionOp::Rtcp(&rtcp(vec![Rtcp::Twcc(twcc)])).write(&mut viewer);
    }
    SessionOp::Send(9).write(&mut viewer);
    SessionOp::Wait(20).write(&mut viewer);
    let mut firs = ReportList::new();
    firs.push(FirEntry { ssrc: VIDEO_TX.into(), seq_no: 1 });
    let remb = Rtcp::Remb(Remb { sender_ssrc: viewer_ssrc, ssrc: 0.into(), bitrate: 400_000.0, ssrcs: vec![VIDEO_TX] });
    SessionOp::Rtcp(&rtcp(vec![report(AUDIO_TX, 1), Rtcp::Fir(Fir { sender_ssrc: viewer_ssrc, reports: firs }), remb])).write(&mut viewer);
    SessionOp::Wait(63).write(&mut viewer);
    SessionOp::Wait(63).write(&mut viewer);
    let mut bye = ReportList::new();
    bye.push(Ssrc::from(VIDEO_TX));
    SessionOp::Rtcp(&rtcp(vec![report(VIDEO_TX, 29), Rtcp::Goodbye(Goodbye { reports: bye })])).write(&mut viewer);

    let mut publisher = Vec::new();
    let mut twcc_seq = 0u16;
    for seq in (0u16..40).filter(|s| ![7, 8, 20].contains(s)) {
        let layers: &[(u32, &str)] = if seq % 2 == 0 { &[(VIDEO_RX[0].0, "h"), (VIDEO_RX[1].0, "l")] } else { &[(VIDEO_RX[0].0, "h")] };
        for (ssrc, rid) in layers {
            let seq = if *rid == "l" { seq / 2 } else { seq };
            let mut h = RtpHeader { marker: seq % 4 == 3, payload_type: video_pt, sequence_number: seq, timestamp: (seq as u32 / 4) * 3_000, ssrc: (*ssrc).into(), ..Default::default() };
            h.ext_vals.mid = Some(Mid::from(MID_VIDEO));
            h.ext_vals.rid = Some(Rid::from(*rid));
            h.ext_vals.transport_cc = Some(twcc_seq);
            twcc_seq += 1;
            SessionOp::Rtp(&rtp(h, &[0x41; 300])).write(&mut publisher);
        }
        SessionOp::Wait(2).write(&mut publisher);
    }
    if let Some(rtx_pt) = video_rtx_pt {
        // The repair packet for sequence number 7: its original sequence number first.
        let mut h = RtpHeader { payload_type: rtx_pt, sequence_number: 0, timestamp: 3_000, ssrc: VIDEO_RX[0].1.into(), ..Default::default() };
        h.ext_vals.mid = Some(Mid::from(MID_VIDEO));
        h.ext_vals.rid_repair = Some(Rid::from("h"));
        h.ext_vals.transport_cc = Some(twcc_seq);
        twcc_seq += 1;
        let mut payload = 7u16.to_be_bytes().to_vec();
        payload.extend_from_slice(&[0x41; 300]);
        SessionOp::Rtp(&rtp(h, &payload)).write(&mut publisher);
    }
    let mut h = RtpHeader { payload_type: audio_pt, sequence_number: 1, timestamp: 960, ssrc: AUDIO_RX.into(), ..Default::default() };
    h.ext_vals.mid = Some(Mid::from(MID_AUDIO));
    h.ext_vals.audio_level = Some(-30);
    h.ext_vals.voice_activity = Some(true);
    h.ext_vals.transport_cc = Some(twcc_seq);
    SessionOp::Rtp(&rtp(h, &[0xfc; 80])).write(&mut publisher);
    let sr = Rtcp::SenderReport(SenderReport {
        sender_info: SenderInfo {
            ssrc: VIDEO_RX[0].0.into(),
            ntp_time: std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            rtp_time: MediaTime::from_90khz(30_000),
            sender_packet_count: 37,
            sender_octet_count: 11_100,
        },
        reports: ReportList::new(),
    });
    SessionOp::Rtcp(&rtcp(vec![sr])).write(&mut publisher);
    for _ in 0..4 {
        SessionOp::Wait(63).write(&mut publisher);
    }

    let both = [publisher.as_slice(), viewer.as_slice()].concat();
    vec![("viewer", viewer), ("publisher", publisher), ("both", both)]
}
