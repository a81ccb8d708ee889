//! H.264 bitstream helpers for ingest: the AVC decoder configuration record (SPS/PPS) that RTMP
//! and MP4 carry, length-prefixed (AVCC) and Annex-B NAL units, and RTP packetization (RFC 6184: single NAL unit
//! packets and FU-A fragments, packetization-mode 1).

/// NAL unit types used here.
pub const NAL_IDR: u8 = 5;
pub const NAL_SPS: u8 = 7;
pub const NAL_PPS: u8 = 8;
const NAL_FU_A: u8 = 28;
const NAL_STAP_A: u8 = 24;

pub fn nal_type(nal: &[u8]) -> Option<u8> {
    nal.first().map(|b| b & 0x1f)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum H264Error {
    #[error("the AVC decoder configuration is truncated or malformed")]
    BadConfig,
    #[error("a NAL unit length runs past the end of the data")]
    BadLength,
}

/// The AVCDecoderConfigurationRecord (ISO/IEC 14496-15 §5.2.4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvcConfig {
    pub profile: u8,
    pub level: u8,
    /// Bytes of each NAL unit's length prefix (1, 2 or 4).
    pub length_size: usize,
    pub sps: Vec<Vec<u8>>,
    pub pps: Vec<Vec<u8>>,
}

impl AvcConfig {
    pub fn parse(data: &[u8]) -> Result<AvcConfig, H264Error> {
        let mut r = Reader(data);
        if r.u8()? != 1 {
            return Err(H264Error::BadConfig);
        }
        let profile = r.u8()?;
        let _compat = r.u8()?;
        let level = r.u8()?;
        let length_size = (r.u8()? & 0x03) as usize + 1;
        if length_size == 3 {
            return Err(H264Error::BadConfig);
        }
        let sps_count = r.u8()? & 0x1f;
        let mut sps = Vec::with_capacity(sps_count as usize);
        for _ in 0..sps_count {
            let len = r.u16()? as usize;
            sps.push(r.take(len)?.to_vec());
        }
        let pps_count = r.u8()?;
        let mut pps = Vec::with_capacity(pps_count as usize);
        for _ in 0..pps_count {
            let len = r.u16()? as usize;
            pps.push(r.take(len)?.to_vec());
        }
        if sps.is_empty() || pps.is_empty() || sps.iter().chain(&pps).any(|n| n.is_empty()) {
            return Err(H264Error::BadConfig);
        }
        Ok(AvcConfig { profile, level, length_size, sps, pps })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], H264Error> {
        if self.0.len() < n {
            return Err(H264Error::BadConfig);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, H264Error> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, H264Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
}

/// The NAL units of a length-prefixed access unit (AVCC format), in order.
/// Appends NAL units each behind its 4-byte big-endian length (AVCC/HVCC samples, FLV frames).
pub fn write_length_prefixed<N: AsRef<[u8]>>(nalus: &[N], out: &mut Vec<u8>) {
    for n in nalus {
        let n = n.as_ref();
        out.extend_from_slice(&(n.len() as u32).to_be_bytes());
        out.extend_from_slice(n);
    }
}

pub fn split_length_prefixed(mut data: &[u8], length_size: usize) -> Result<Vec<&[u8]>, H264Error> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.len() < length_size {
            return Err(H264Error::BadLength);
        }
        let len = data[..length_size].iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
        let rest = &data[length_size..];
        if len > rest.len() {
            return Err(H264Error::BadLength);
        }
        if len > 0 {
            out.push(&rest[..len]);
        }
        data = &rest[len..];
    }
    Ok(out)
}

/// The NAL units of an Annex-B byte stream (start codes `00 00 01` / `00 00 00 01`), in order.
/// Bytes before the first start code are ignored; trailing zero bytes of a unit are trimmed.
pub fn split_annex_b(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::with_capacity(starts.len());
    for (k, &s) in starts.iter().enumerate() {
        let end = starts.get(k + 1).map(|&n| n - 3).unwrap_or(data.len());
        let mut unit = &data[s..end.max(s)];
        while let [rest @ .., 0] = unit {
            unit = rest;
        }
        if !unit.is_empty() {
            out.push(unit);
        }
    }
    out
}

/// One RTP packet's worth of an access unit, before SSRC and headers are added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpPayload {
    pub seq: u64,
    pub ts: u32,
    pub marker: bool,
    pub keyframe: bool,
    pub payload: Vec<u8>,
}

/// Access units (NAL units + 90 kHz timestamp) in, RTP payloads out, with SPS/PPS put ahead of
/// every IDR that lacks them so a viewer can start at any keyframe. Parameter sets come from the
/// container (`set_parameter_sets`) or are learnt from the stream itself (Annex-B sources).
pub struct H264Packetizer {
    sps: Vec<Vec<u8>>,
    pps: Vec<Vec<u8>>,
    next_seq: u64,
    max_payload: usize,
}

impl H264Packetizer {
    pub fn new(max_payload: usize) -> H264Packetizer {
        H264Packetizer { sps: Vec::new(), pps: Vec::new(), next_seq: 1, max_payload }
    }

    pub fn set_parameter_sets(&mut self, sps: Vec<Vec<u8>>, pps: Vec<Vec<u8>>) {
        self.sps = sps;
        self.pps = pps;
    }

    pub fn has_parameter_sets(&self) -> bool {
        !self.sps.is_empty() && !self.pps.is_empty()
    }

    /// Appends the RTP payloads of one access unit. Filler data (type 12) is dropped; AUDs and
    /// SEI pass.
    pub fn push(&mut self, nalus: &[&[u8]], ts90: u32, out: &mut Vec<RtpPayload>) {
        let idr = nalus.iter().any(|n| nal_type(n) == Some(NAL_IDR));
        let sps: Vec<&[u8]> = nalus.iter().copied().filter(|n| nal_type(n) == Some(NAL_SPS)).collect();
        let pps: Vec<&[u8]> = nalus.iter().copied().filter(|n| nal_type(n) == Some(NAL_PPS)).collect();
        if !sps.is_empty() {
            self.sps = sps.iter().map(|n| n.to_vec()).collect();
        }
        if !pps.is_empty() {
            self.pps = pps.iter().map(|n| n.to_vec()).collect();
        }
        let mut units: Vec<&[u8]> = Vec::with_capacity(nalus.len() + 2);
        if idr && sps.is_empty() {
            units.extend(self.sps.iter().map(|v| v.as_slice()));
            units.extend(self.pps.iter().map(|v| v.as_slice()));
        }
        units.extend(nalus.iter().copied().filter(|n| nal_type(n) != Some(12)));
        let mut payloads = Vec::new();
        packetize(units, self.max_payload, &mut payloads);
        let n = payloads.len();
        for (i, payload) in payloads.into_iter().enumerate() {
            out.push(RtpPayload { seq: self.next_seq, ts: ts90, marker: i + 1 == n, keyframe: idr, payload });
            self.next_seq += 1;
        }
    }
}

/// Splits NAL units into RTP payloads of at most `max_payload` bytes: a NAL unit that fits is
/// sent whole; a larger one is cut into FU-A fragments. The last payload of the access unit
/// carries the marker bit (the caller sets it on the last element).
pub fn packetize<'a>(nalus: impl IntoIterator<Item = &'a [u8]>, max_payload: usize, out: &mut Vec<Vec<u8>>) {
    assert!(max_payload > 2, "an FU-A fragment needs room for its two header bytes");
    for nal in nalus {
        if nal.is_empty() {
            continue;
        }
        if nal.len() <= max_payload {
            out.push(nal.to_vec());
            continue;
        }
        let header = nal[0];
        let indicator = (header & 0xe0) | NAL_FU_A;
        let mut body = &nal[1..];
        let mut first = true;
        while !body.is_empty() {
            let n = body.len().min(max_payload - 2);
            let last = n == body.len();
            let fu_header = (header & 0x1f) | if first { 0x80 } else { 0 } | if last { 0x40 } else { 0 };
            let mut p = Vec::with_capacity(n + 2);
            p.push(indicator);
            p.push(fu_header);
            p.extend_from_slice(&body[..n]);
            out.push(p);
            body = &body[n..];
            first = false;
        }
    }
}

/// Reassembles the NAL units of RTP payloads made by `packetize` (for tests and the MCU's
/// depacketizer): single NAL unit packets and FU-A fragments.
pub fn depacketize(payloads: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut fragment: Option<Vec<u8>> = None;
    for p in payloads {
        match nal_type(p) {
            Some(NAL_FU_A) if p.len() >= 2 => {
                let (start, end) = (p[1] & 0x80 != 0, p[1] & 0x40 != 0);
                if start {
                    fragment = Some(vec![(p[0] & 0xe0) | (p[1] & 0x1f)]);
                }
                if let Some(f) = fragment.as_mut() {
                    f.extend_from_slice(&p[2..]);
                }
                if end {
                    if let Some(f) = fragment.take() {
                        out.push(f);
                    }
                }
            }
            Some(NAL_STAP_A) => {
                // Aggregation packet: 16-bit size + NAL unit, repeated (browsers send SPS+PPS so).
                let mut rest = &p[1..];
                while rest.len() >= 2 {
                    let n = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                    if n == 0 || rest.len() < 2 + n {
                        break;
                    }
                    out.push(rest[2..2 + n].to_vec());
                    rest = &rest[2 + n..];
                }
            }
            Some(_) => out.push(p.clone()),
            None => {}
        }
    }
    out
}

/// What an RTP payload (RFC 6184) says of its picture's place in the prediction chain: whether
/// the picture is a non-reference one (`nal_ref_idc` 0: nothing decoded after it refers to
/// it, so it can be dropped — B-frames, and the top temporal layer of a browser's OpenH264
/// with `L1T2`/`L1T3`), and whether the packet starts the picture (its first slice,
/// `first_mb_in_slice` 0). None for a packet without a coded slice in it (a parameter set, an
/// SEI) or one this does not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceRef {
    pub non_reference: bool,
    pub picture_start: bool,
}

/// Reads `SliceRef` from the first bytes of an RTP payload, without copying.
pub fn rtp_slice_ref(payload: &[u8]) -> Option<SliceRef> {
    // A slice header starts with first_mb_in_slice as ue(v): 0 is the single bit 1.
    let is_slice = |t: u8| t == 1 || t == NAL_IDR;
    let first_mb_zero = |b: Option<&u8>| b.is_some_and(|b| b & 0x80 != 0);
    let b0 = *payload.first()?;
    // An IDR is never taken for droppable, whatever its (invalid) nal_ref_idc 0 says.
    let non_reference = |t: u8| (b0 >> 5) & 3 == 0 && t != NAL_IDR;
    match b0 & 0x1f {
        t if is_slice(t) => Some(SliceRef { non_reference: non_reference(t), picture_start: first_mb_zero(payload.get(1)) }),
        NAL_FU_A => {
            let fu = *payload.get(1)?;
            let t = fu & 0x1f;
            is_slice(t).then(|| SliceRef { non_reference: non_reference(t), picture_start: fu & 0x80 != 0 && first_mb_zero(payload.get(2)) })
        }
        NAL_STAP_A => {
            // The aggregate's NRI is the highest of its units'; the picture starts here if a
            // unit in it is a first slice.
            let (mut rest, mut slice, mut start, mut idr) = (&payload[1..], false, false, false);
            while rest.len() >= 2 {
                let n = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                let Some(unit) = rest.get(2..2 + n).filter(|u| !u.is_empty()) else { break };
                let t = unit[0] & 0x1f;
                if is_slice(t) {
                    slice = true;
                    idr |= t == NAL_IDR;
                    start |= first_mb_zero(unit.get(1));
                }
                rest = &rest[2 + n..];
            }
            slice.then_some(SliceRef { non_reference: !idr && non_reference(1), picture_start: start })
        }
        _ => None,
    }
}

/// NAL units as an Annex-B byte stream (what FFmpeg's H.264 decoder takes without extradata).
pub fn to_annex_b(nalus: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nalus.iter().map(|n| n.len() + 4).sum());
    for n in nalus {
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_bytes() -> Vec<u8> {
        let sps = [0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01];
        let pps = [0x68, 0xce, 0x3c, 0x80];
        let mut v = vec![1, 0x42, 0xc0, 0x1f, 0xff, 0xe1, 0, sps.len() as u8];
        v.extend_from_slice(&sps);
        v.extend_from_slice(&[1, 0, pps.len() as u8]);
        v.extend_from_slice(&pps);
        v
    }

    #[test]
    fn parses_the_decoder_configuration() {
        let c = AvcConfig::parse(&config_bytes()).unwrap();
        assert_eq!((c.profile, c.level, c.length_size), (0x42, 0x1f, 4));
        assert_eq!(nal_type(&c.sps[0]), Some(NAL_SPS));
        assert_eq!(nal_type(&c.pps[0]), Some(NAL_PPS));
        let full = config_bytes();
        for n in 0..full.len() {
            assert!(AvcConfig::parse(&full[..n]).is_err(), "truncated at {n}");
        }
    }

    #[test]
    fn splits_length_prefixed_units() {
        let data = [0, 0, 0, 2, 0x65, 0xaa, 0, 0, 0, 1, 0x41];
        let n = split_length_prefixed(&data, 4).unwrap();
        assert_eq!(n, vec![&[0x65, 0xaa][..], &[0x41][..]]);
        assert_eq!(split_length_prefixed(&data[..9], 4), Err(H264Error::BadLength));
        assert_eq!(split_length_prefixed(&[0, 5, 1], 2), Err(H264Error::BadLength));
    }

    #[test]
    fn packetize_round_trips_and_respects_the_size() {
        let big: Vec<u8> = std::iter::once(0x65).chain((0..5000).map(|i| i as u8)).collect();
        let small = vec![0x41, 1, 2, 3];
        let mut out = Vec::new();
        packetize([big.as_slice(), small.as_slice()], 1200, &mut out);
        assert!(out.iter().all(|p| p.len() <= 1200));
        assert_eq!(nal_type(&out[0]), Some(NAL_FU_A));
        assert_eq!(out[0][1] & 0x80, 0x80, "start bit");
        assert_eq!(out[0][1] & 0x1f, NAL_IDR);
        assert_eq!(depacketize(&out), vec![big, small]);
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        for len in 0..300 {
            let mut v = vec![0u8; len];
            for b in &mut v {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            let _ = AvcConfig::parse(&v);
            for size in [1, 2, 4] {
                let _ = split_length_prefixed(&v, size);
            }
            let _ = depacketize(&[v.clone()]);
            let _ = split_annex_b(&v);
        }
    }

    #[test]
    fn stap_a_packets_are_unpacked() {
        let stap = vec![24, 0, 3, 0x67, 1, 2, 0, 2, 0x68, 3];
        assert_eq!(depacketize(&[stap, vec![0x65, 9]]), vec![vec![0x67, 1, 2], vec![0x68, 3], vec![0x65, 9]]);
        assert_eq!(split_annex_b(&to_annex_b(&[vec![0x67, 1], vec![0x65, 2]])), vec![&[0x67, 1][..], &[0x65, 2][..]]);
    }

    #[test]
    fn annex_b_units_split_on_both_start_code_lengths() {
        let data = [0xff, 0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 9, 9, 0, 0];
        let units = split_annex_b(&data);
        assert_eq!(units, vec![&[0x67, 1, 2][..], &[0x68, 3][..], &[0x65, 9, 9][..]]);
        assert!(split_annex_b(&[1, 2, 3]).is_empty());
    }

    #[test]
    fn packetizer_learns_in_band_parameter_sets_and_repeats_them_before_idrs() {
        let mut p = H264Packetizer::new(1200);
        let mut out = Vec::new();
        let (sps, pps) = (&[0x67, 0x42, 0xc0, 0x1f][..], &[0x68, 0xce][..]);
        p.push(&[sps, pps, &[0x65, 1]], 900, &mut out);
        assert_eq!(out.len(), 3, "parameter sets already in the access unit are not doubled");
        assert!(p.has_parameter_sets());
        out.clear();
        p.push(&[&[0x41, 2]], 3900, &mut out);
        assert_eq!((out.len(), out[0].keyframe, out[0].marker), (1, false, true));
        out.clear();
        p.push(&[&[0x65, 3], &[0x0c, 0xff]], 6900, &mut out);
        let got: Vec<Vec<u8>> = out.iter().map(|o| o.payload.clone()).collect();
        assert_eq!(got, vec![sps.to_vec(), pps.to_vec(), vec![0x65, 3]], "filler dropped, SPS/PPS ahead of the IDR");
        assert!(out.iter().all(|o| o.keyframe && o.ts == 6900));
        assert_eq!(out.iter().map(|o| o.seq).collect::<Vec<_>>(), vec![5, 6, 7], "sequence numbers continue");
    }

    #[test]
    fn a_payload_tells_a_non_reference_picture_and_its_first_slice() {
        let at = |p: &[u8]| rtp_slice_ref(p).map(|r| (r.non_reference, r.picture_start));
        // Single NAL units: a non-reference P slice (NRI 0) starting a picture, a reference one
        // continuing a picture (first_mb_in_slice 1 = bits 010), an IDR.
        assert_eq!(at(&[0x01, 0x88, 0x10]), Some((true, true)));
        assert_eq!(at(&[0x41, 0x40, 0x10]), Some((false, false)));
        assert_eq!(at(&[0x65, 0x88]), Some((false, true)));
        // FU-A: the start fragment of a non-reference slice, and a middle fragment of it.
        assert_eq!(at(&[0x1c, 0x81, 0x9a, 0x00]), Some((true, true)));
        assert_eq!(at(&[0x1c, 0x01, 0x9a, 0x00]), Some((true, false)));
        // STAP-A of SPS + PPS + IDR slice, and one of SPS + PPS only; an SEI; nothing.
        let stap = [0x78, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xce, 0, 2, 0x65, 0x88];
        assert_eq!(at(&stap), Some((false, true)));
        assert_eq!(at(&stap[..9]), None);
        assert_eq!(at(&[0x06, 0x05, 0x01]), None);
        assert_eq!(at(&[]), None);
        assert_eq!(at(&[0x1c]), None);
        // A STAP-A whose unit length runs past the end reads what it can.
        assert_eq!(at(&[0x78, 0, 9, 0x65]), None);
        // An IDR with nal_ref_idc 0 (invalid) is not taken for droppable, alone, fragmented or
        // aggregated.
        assert_eq!(at(&[0x05, 0x88]), Some((false, true)));
        assert_eq!(at(&[0x1c, 0x85, 0x88]), Some((false, true)));
        assert_eq!(at(&[0x18, 0, 2, 0x05, 0x88]), Some((false, true)));
        assert_eq!(at(&[0x18, 0, 2, 0x01, 0x88]), Some((true, true)));
    }
}
