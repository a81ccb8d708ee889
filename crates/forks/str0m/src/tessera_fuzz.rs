//! Tessera fork: entry points for Tessera's coverage-guided fuzz targets (`fuzz/` in Tessera's
//! repository), into the parsers that read a remote peer's decrypted RTCP and RTP headers and
//! the state those feed. Exports only: nothing here changes what the library does. Always
//! compiled (no feature), so turning a fuzz target on does not change the features the rest of
//! a workspace builds this crate with.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::bwe_::Bwe;
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
