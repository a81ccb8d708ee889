//! The picture size a video RTP packet announces, for live stats (PRODUCT.md §7 `stats`):
//! H.264 from the sequence parameter set (sent ahead of every IDR, alone or in a STAP-A), VP8
//! from the keyframe header. Remote bytes: every read is bounded, nothing here panics.

use crate::{h264, vp8, Codec};

/// The size announced by this packet, if it carries one.
pub fn of_packet(codec: Codec, payload: &[u8]) -> Option<(u32, u32)> {
    match codec {
        Codec::Opus => None,
        // An original kept for recordings: one packet holds the whole access unit.
        Codec::H265 => h264::split_annex_b(payload).into_iter().find(|n| crate::h265::nal_type(n) == Some(crate::h265::NAL_SPS)).and_then(hevc_sps_size),
        Codec::Av1 => {
            // The first OBU element of a packet that starts one: a sequence header (sent ahead
            // of every keyframe).
            let (&agg, rest) = payload.split_first()?;
            if agg & 0x80 != 0 {
                return None;
            }
            let element = if (agg >> 4) & 3 == 1 {
                rest
            } else {
                let (len, n) = crate::av1::read_leb128(rest)?;
                rest.get(n..n.checked_add(usize::try_from(len).ok()?)?)?
            };
            let obu = crate::av1::split_obus(element)?.into_iter().next()?;
            if obu.obu_type() != crate::av1::OBU_SEQUENCE_HEADER {
                return None;
            }
            av1_sequence_size(obu.payload)
        }
        Codec::Vp8 => {
            let (start, frame) = vp8::depacketize(payload)?;
            // Keyframe: a 3-byte tag, the start code 9d 01 2a, then 14-bit width and height.
            if !start || !vp8::is_keyframe(frame) || frame.get(3..6)? != [0x9d, 0x01, 0x2a] {
                return None;
            }
            let w = u16::from_le_bytes([*frame.get(6)?, *frame.get(7)?]) & 0x3fff;
            let h = u16::from_le_bytes([*frame.get(8)?, *frame.get(9)?]) & 0x3fff;
            Some((w as u32, h as u32))
        }
        Codec::H264 => match h264::nal_type(payload)? {
            h264::NAL_SPS => sps_size(payload),
            24 => {
                // STAP-A: 16-bit sizes, then NAL units.
                let mut rest = payload.get(1..)?;
                while rest.len() > 2 {
                    let n = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                    let nal = rest.get(2..2 + n)?;
                    if h264::nal_type(nal) == Some(h264::NAL_SPS) {
                        return sps_size(nal);
                    }
                    rest = &rest[2 + n..];
                }
                None
            }
            _ => None,
        },
    }
}

/// Reads Exp-Golomb coded fields from an RBSP (emulation prevention bytes removed).
struct Bits {
    data: Vec<u8>,
    pos: usize,
}

impl Bits {
    fn bit(&mut self) -> Option<u32> {
        let b = self.data.get(self.pos / 8)?;
        let v = (b >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(v as u32)
    }
    fn bits(&mut self, n: u32) -> Option<u32> {
        (0..n).try_fold(0u32, |acc, _| Some(acc << 1 | self.bit()?))
    }
    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        Some(((1u64 << zeros) - 1 + self.bits(zeros)? as u64).min(u32::MAX as u64) as u32)
    }
    /// AV1's uvlc() (§4.10.3).
    fn ue_uvlc(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros >= 32 {
                return None;
            }
        }
        self.bits(zeros)
    }
    fn se(&mut self) -> Option<i64> {
        let k = self.ue()? as i64;
        Some(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }
}

/// The largest frame size an AV1 sequence header allows (AV1 §5.5.1): what encoders set to the
/// stream's size.
pub fn av1_sequence_size(obu: &[u8]) -> Option<(u32, u32)> {
    let mut r = Bits { data: obu.iter().take(64).copied().collect(), pos: 0 };
    av1_sequence_start(&mut r).map(|s| s.size)
}

/// What an `av1C` record repeats of an AV1 sequence header (AV1-ISOBMFF §2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Av1SequenceInfo {
    pub size: (u32, u32),
    pub profile: u8,
    pub level0: u8,
    pub tier0: u8,
    pub high_bitdepth: bool,
    pub twelve_bit: bool,
    pub monochrome: bool,
    pub subsampling: (u8, u8),
    pub chroma_sample_position: u8,
}

struct Av1Start {
    size: (u32, u32),
    profile: u8,
    reduced: bool,
    level0: u8,
    tier0: u8,
}

fn av1_sequence_start(r: &mut Bits) -> Option<Av1Start> {
    let profile = r.bits(3)? as u8;
    r.bits(1)?; // still_picture
    let reduced = r.bit()? == 1;
    let (mut level0, mut tier0) = (0, 0);
    if reduced {
        level0 = r.bits(5)? as u8;
    } else {
        let mut buffer_delay_bits = 0;
        let decoder_model = if r.bit()? == 1 {
            r.bits(32)?;
            r.bits(32)?;
            if r.bit()? == 1 {
                r.ue_uvlc()?;
            }
            let present = r.bit()? == 1;
            if present {
                buffer_delay_bits = r.bits(5)? + 1;
                r.bits(32)?;
                r.bits(10)?;
            }
            present
        } else {
            false
        };
        let initial_display_delay = r.bit()? == 1;
        let operating_points = r.bits(5)? + 1;
        for i in 0..operating_points {
            r.bits(12)?;
            let level = r.bits(5)? as u8;
            let tier = if level > 7 { r.bits(1)? as u8 } else { 0 };
            if i == 0 {
                (level0, tier0) = (level, tier);
            }
            if decoder_model && r.bit()? == 1 {
                r.bits(buffer_delay_bits)?;
                r.bits(buffer_delay_bits)?;
                r.bits(1)?;
            }
            if initial_display_delay && r.bit()? == 1 {
                r.bits(4)?;
            }
        }
    }
    let width_bits = r.bits(4)? + 1;
    let height_bits = r.bits(4)? + 1;
    let size = (r.bits(width_bits)? + 1, r.bits(height_bits)? + 1);
    Some(Av1Start { size, profile, reduced, level0, tier0 })
}

/// An AV1 sequence header OBU's payload, read through its color_config (AV1 §5.5.1–§5.5.2).
pub fn av1_sequence_info(obu: &[u8]) -> Option<Av1SequenceInfo> {
    let mut r = Bits { data: obu.iter().take(256).copied().collect(), pos: 0 };
    let start = av1_sequence_start(&mut r)?;
    if !start.reduced && r.bit()? == 1 {
        r.bits(4)?; // delta_frame_id_length_minus_2
        r.bits(3)?; // additional_frame_id_length_minus_1
    }
    r.bits(3)?; // use_128x128_superblock, enable_filter_intra, enable_intra_edge_filter
    if !start.reduced {
        r.bits(4)?; // interintra, masked compound, warped motion, dual filter
        let order_hint = r.bit()? == 1;
        if order_hint {
            r.bits(2)?; // enable_jnt_comp, enable_ref_frame_mvs
        }
        let force_screen_content_tools = if r.bit()? == 1 { 2 } else { r.bits(1)? };
        if force_screen_content_tools > 0 && r.bit()? == 0 {
            r.bits(1)?; // seq_force_integer_mv
        }
        if order_hint {
            r.bits(3)?; // order_hint_bits_minus_1
        }
    }
    r.bits(3)?; // enable_superres, enable_cdef, enable_restoration
                // color_config
    let high_bitdepth = r.bit()? == 1;
    let twelve_bit = start.profile == 2 && high_bitdepth && r.bit()? == 1;
    let monochrome = start.profile != 1 && r.bit()? == 1;
    let (mut primaries, mut transfer, mut matrix) = (2, 2, 2);
    if r.bit()? == 1 {
        (primaries, transfer, matrix) = (r.bits(8)?, r.bits(8)?, r.bits(8)?);
    }
    let (subsampling, position) = if monochrome {
        ((1, 1), 0)
    } else if primaries == 1 && transfer == 13 && matrix == 0 {
        ((0, 0), 0)
    } else {
        r.bits(1)?; // color_range
        let subsampling = match start.profile {
            0 => (1, 1),
            1 => (0, 0),
            _ if twelve_bit => {
                let x = r.bits(1)? as u8;
                (x, if x == 1 { r.bits(1)? as u8 } else { 0 })
            }
            _ => (1, 0),
        };
        let position = if subsampling == (1, 1) { r.bits(2)? as u8 } else { 0 };
        (subsampling, position)
    };
    Some(Av1SequenceInfo {
        size: start.size,
        profile: start.profile,
        level0: start.level0,
        tier0: start.tier0,
        high_bitdepth,
        twelve_bit,
        monochrome,
        subsampling,
        chroma_sample_position: position,
    })
}

/// Width and height from an SPS NAL unit (ITU-T H.264 §7.3.2.1.1), cropping applied.
pub fn sps_size(nal: &[u8]) -> Option<(u32, u32)> {
    // At most 256 bytes are read: an SPS is far shorter.
    let mut data = Vec::with_capacity(64);
    let mut zeros = 0;
    for &b in nal.get(1..)?.iter().take(256) {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        data.push(b);
    }
    let mut r = Bits { data, pos: 0 };
    let profile = r.bits(8)?;
    r.bits(16)?; // constraint flags, level
    r.ue()?; // seq_parameter_set_id
    let mut chroma_format = 1;
    if [100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135].contains(&profile) {
        chroma_format = r.ue()?;
        if chroma_format == 3 {
            r.bit()?; // separate_colour_plane_flag
        }
        r.ue()?; // bit depths
        r.ue()?;
        r.bit()?; // qpprime_y_zero_transform_bypass_flag
        if r.bit()? == 1 {
            for i in 0..if chroma_format == 3 { 12 } else { 8 } {
                if r.bit()? == 1 {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i64, 8i64);
                    for _ in 0..size {
                        if next != 0 {
                            next = (last + r.se()? + 256).rem_euclid(256);
                        }
                        if next != 0 {
                            last = next;
                        }
                    }
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?;
        }
        1 => {
            r.bit()?;
            r.se()?;
            r.se()?;
            for _ in 0..r.ue()?.min(255) {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.bit()?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = r.ue()? as u64 + 1;
    let height_units = r.ue()? as u64 + 1;
    let frame_mbs_only = r.bit()? as u64;
    if frame_mbs_only == 0 {
        r.bit()?;
    }
    r.bit()?; // direct_8x8_inference_flag
    let (mut cl, mut cr, mut ct, mut cb) = (0u64, 0u64, 0u64, 0u64);
    if r.bit()? == 1 {
        (cl, cr, ct, cb) = (r.ue()? as u64, r.ue()? as u64, r.ue()? as u64, r.ue()? as u64);
    }
    let (sub_w, sub_h) = match chroma_format {
        1 => (2, 2),
        2 => (2, 1),
        _ => (1, 1),
    };
    let (crop_x, crop_y) = if chroma_format == 0 { (1, 2 - frame_mbs_only) } else { (sub_w, sub_h * (2 - frame_mbs_only)) };
    let w = (width_mbs * 16).checked_sub(crop_x * (cl + cr))?;
    let h = ((2 - frame_mbs_only) * height_units * 16).checked_sub(crop_y * (ct + cb))?;
    (w > 0 && h > 0 && w <= 16384 && h <= 16384).then_some((w as u32, h as u32))
}

/// The bytes of a NAL unit after its `header` bytes with emulation prevention removed, at most
/// 256 (a parameter set is far shorter).
fn rbsp(nal: &[u8], header: usize) -> Option<Vec<u8>> {
    let mut data = Vec::with_capacity(64);
    let mut zeros = 0;
    for &b in nal.get(header..)?.iter().take(256) {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        data.push(b);
    }
    Some(data)
}

/// Width and height from an H.265 SPS NAL unit (ITU-T H.265 §7.3.2.2), the conformance window
/// applied.
pub fn hevc_sps_size(nal: &[u8]) -> Option<(u32, u32)> {
    hevc_sps_info(nal).map(|i| (i.width, i.height))
}

/// What an `hvcC` record repeats of an H.265 SPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HevcSpsInfo {
    pub width: u32,
    pub height: u32,
    /// The 12 bytes of general_profile_space … general_level_idc, as `hvcC` carries them.
    pub general_profile_tier_level: [u8; 12],
    pub max_sub_layers: u8,
    pub temporal_id_nesting: bool,
    pub chroma_format_idc: u8,
    pub bit_depth_luma: u8,
    pub bit_depth_chroma: u8,
}

/// An H.265 SPS (ITU-T H.265 §7.3.2.2) up to its bit depths; the size with the conformance
/// window applied.
pub fn hevc_sps_info(nal: &[u8]) -> Option<HevcSpsInfo> {
    let mut r = Bits { data: rbsp(nal, 2)?, pos: 0 };
    r.bits(4)?; // sps_video_parameter_set_id
    let sub_layers = r.bits(3)? as usize; // sps_max_sub_layers_minus1
    let nesting = r.bit()? == 1; // sps_temporal_id_nesting_flag
                                 // profile_tier_level(1, sub_layers): the general part is 88 bits, then the level.
    let mut general = [0u8; 12];
    for b in general.iter_mut() {
        *b = r.bits(8)? as u8;
    }
    let mut present = Vec::with_capacity(sub_layers);
    for _ in 0..sub_layers {
        present.push((r.bit()?, r.bit()?));
    }
    if sub_layers > 0 {
        for _ in sub_layers..8 {
            r.bits(2)?;
        }
    }
    for (profile, level) in present {
        if profile == 1 {
            r.bits(32)?;
            r.bits(32)?;
            r.bits(24)?;
        }
        if level == 1 {
            r.bits(8)?;
        }
    }
    r.ue()?; // sps_seq_parameter_set_id
    let chroma_format = r.ue()?;
    if chroma_format > 3 {
        return None;
    }
    if chroma_format == 3 {
        r.bit()?; // separate_colour_plane_flag
    }
    let (width, height) = (r.ue()? as u64, r.ue()? as u64);
    let (mut w, mut h) = (width, height);
    if r.bit()? == 1 {
        let (sub_w, sub_h) = match chroma_format {
            1 => (2, 2),
            2 => (2, 1),
            _ => (1, 1),
        };
        let (left, right, top, bottom) = (r.ue()? as u64, r.ue()? as u64, r.ue()? as u64, r.ue()? as u64);
        w = width.checked_sub(sub_w * (left + right))?;
        h = height.checked_sub(sub_h * (top + bottom))?;
    }
    if !(w > 0 && h > 0 && w <= 16384 && h <= 16384) {
        return None;
    }
    // A stream cut short after the size still has a size; its bit depths default to 8.
    let luma = r.ue().map_or(8, |d| d.min(8) + 8) as u8;
    let chroma = r.ue().map_or(8, |d| d.min(8) + 8) as u8;
    Some(HevcSpsInfo {
        width: w as u32,
        height: h as u32,
        general_profile_tier_level: general,
        max_sub_layers: sub_layers as u8 + 1,
        temporal_id_nesting: nesting,
        chroma_format_idc: chroma_format as u8,
        bit_depth_luma: luma,
        bit_depth_chroma: chroma,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn av1_sequence_headers_of_svt_and_aom_and_their_rtp_packets() {
        // SVT-AV1 640x360 and libaom 1280x720 (4:4:4, profile 1), from `ffmpeg -f obu`.
        let svt = [0x00, 0x00, 0x00, 0x0c, 0xc4, 0xff, 0x67, 0x3e, 0xfe, 0x40, 0x10];
        let aom = [0x20, 0x00, 0x00, 0x2d, 0x4c, 0xff, 0xb3, 0xcc, 0xaf, 0x92, 0x02, 0x1a, 0x00, 0x40];
        assert_eq!(av1_sequence_size(&svt), Some((640, 360)));
        assert_eq!(av1_sequence_size(&aom), Some((1280, 720)));
        for n in 0..svt.len() {
            assert!(matches!(av1_sequence_size(&svt[..n]), None | Some((640, 360))), "cut at {n}");
        }
        assert_eq!(av1_sequence_size(&svt[..4]), None);
        let mut tu = vec![0x12, 0x00, 0x0a, svt.len() as u8];
        tu.extend_from_slice(&svt);
        tu.extend_from_slice(&[0x32, 0x03, 1, 2, 3]);
        let mut packets = Vec::new();
        crate::av1::packetize(&tu, true, 1200, &mut packets).unwrap();
        assert_eq!(of_packet(Codec::Av1, &packets[0]), Some((640, 360)));
        assert_eq!(of_packet(Codec::Av1, &[0x80, 2, 0x0a, 0]), None, "a continuation");
    }

    #[test]
    fn hevc_sps_of_x265_and_truncations() {
        // libx265 640x360 (the coded height 368 is cropped by the conformance window).
        let x265_360p = [
            0x42, 0x01, 0x01, 0x01, 0x60, 0x00, 0x00, 0x03, 0x00, 0x90, 0x00, 0x00, 0x03, 0x00, 0x00, 0x03, 0x00, 0x3f, 0xa0, 0x05, 0x02, 0x01, 0x69, 0x65, 0x95, 0x9a, 0x49, 0x32,
            0xbc, 0x05, 0xa0, 0x20, 0x00, 0x00, 0x03, 0x00, 0x20, 0x00, 0x00, 0x03, 0x03, 0xc1,
        ];
        assert_eq!(hevc_sps_size(&x265_360p), Some((640, 360)));
        let mut au = vec![0, 0, 0, 1];
        au.extend_from_slice(&x265_360p);
        assert_eq!(of_packet(Codec::H265, &au), Some((640, 360)));
        // Cut before the size fields: none; anywhere: no panic.
        for n in 0..x265_360p.len() {
            let size = hevc_sps_size(&x265_360p[..n]);
            assert!(n >= 20 || size.is_none(), "{n} bytes: {size:?}");
        }
    }

    /// Found by the `rtp` fuzz target: a VP8 keyframe cut right after its start code indexed
    /// past its end (a remote publisher's packet, read for live stats).
    #[test]
    fn a_truncated_vp8_keyframe_header_is_no_size() {
        assert_eq!(of_packet(Codec::Vp8, &[0x10, 0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a]), None);
        assert_eq!(of_packet(Codec::Vp8, &[0x10, 0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a, 0x80]), None);
    }

    #[test]
    fn sps_of_common_encoders() {
        // libx264 1280x720 High (cropping 736 → 720 rows).
        let x264_720p =
            [0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9, 0x40, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x83, 0x19, 0x60];
        assert_eq!(sps_size(&x264_720p), Some((1280, 720)));
        // libx264 constrained baseline 640x360 (cropping 368 → 360 rows).
        let baseline_360p = [0x67, 0x42, 0xc0, 0x1e, 0xd9, 0x00, 0xa0, 0x2f, 0xf9, 0x70, 0x11, 0x00, 0x00, 0x03, 0x00, 0x01, 0x00, 0x00, 0x03, 0x00, 0x3c, 0x0f, 0x16, 0x2e, 0x48];
        assert_eq!(sps_size(&baseline_360p), Some((640, 360)));
        // In a STAP-A with the PPS.
        let mut stap = vec![24u8, 0, baseline_360p.len() as u8];
        stap.extend_from_slice(&baseline_360p);
        stap.extend_from_slice(&[0, 4, 0x68, 0xce, 0x3c, 0x80]);
        assert_eq!(of_packet(Codec::H264, &stap), Some((640, 360)));
    }

    #[test]
    fn vp8_keyframe_header() {
        // Descriptor (S=1), tag, start code, 320x240.
        let pkt = [0x10, 0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00, 0xff];
        assert_eq!(of_packet(Codec::Vp8, &pkt), Some((320, 240)));
        assert_eq!(of_packet(Codec::Vp8, &pkt[..8]), None);
    }

    #[test]
    fn garbage_is_no_size_and_no_panic() {
        let mut seed = 7u32;
        for len in 0..300 {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (seed >> 16) as u8
                })
                .collect();
            let _ = of_packet(Codec::H264, &buf);
            let _ = sps_size(&buf);
            let _ = of_packet(Codec::Vp8, &buf);
        }
        assert_eq!(sps_size(&[0x67]), None);
    }
}
