//! H.265 (HEVC) as far as Tessera handles it: an RTMP publisher's original kept for recordings
//! (viewers get it transcoded to H.264). NAL unit types (ITU-T H.265 §7.4.2.2) and the
//! `HEVCDecoderConfigurationRecord` (ISO/IEC 14496-15 §8.3.3) that Enhanced RTMP's sequence
//! start carries. Remote bytes: every read is bounded.

pub const NAL_VPS: u8 = 32;
pub const NAL_SPS: u8 = 33;
pub const NAL_PPS: u8 = 34;

/// The type of a NAL unit (its 2-byte header's bits 1–6).
pub fn nal_type(nal: &[u8]) -> Option<u8> {
    nal.first().map(|b| (b >> 1) & 0x3f)
}

/// An intra random access point (BLA, IDR, CRA): a picture a decoder can start at.
pub fn is_irap(nal: &[u8]) -> bool {
    nal_type(nal).is_some_and(|t| (16..=23).contains(&t))
}

/// What an `hvcC` record holds for a decoder: the NAL length size and the parameter sets
/// (VPS, SPS, PPS, SEI) in their order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HevcConfig {
    pub length_size: usize,
    pub parameter_sets: Vec<Vec<u8>>,
}

impl HevcConfig {
    pub fn parse(record: &[u8]) -> Option<HevcConfig> {
        // 22 bytes of profile, level and format fields; lengthSizeMinusOne in byte 21.
        if record.len() < 23 || record[0] != 1 {
            return None;
        }
        let length_size = (record[21] & 0x03) as usize + 1;
        let arrays = record[22];
        let mut rest = &record[23..];
        let mut parameter_sets = Vec::new();
        for _ in 0..arrays {
            let count = u16::from_be_bytes([*rest.get(1)?, *rest.get(2)?]);
            rest = rest.get(3..)?;
            for _ in 0..count {
                let n = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]) as usize;
                parameter_sets.push(rest.get(2..2 + n)?.to_vec());
                rest = &rest[2 + n..];
            }
        }
        Some(HevcConfig { length_size, parameter_sets })
    }
}

/// An `hvcC` record (ISO/IEC 14496-15 §8.3.3) for these parameter sets, 4-byte lengths: what
/// an Enhanced RTMP sequence start carries. The profile, level, chroma format and bit depths
/// come from the SPS; `None` when it cannot be read.
pub fn hvcc_record(vps: &[u8], sps: &[u8], pps: &[u8]) -> Option<Vec<u8>> {
    let info = crate::picture_size::hevc_sps_info(sps)?;
    let mut r = Vec::with_capacity(23 + 15 + vps.len() + sps.len() + pps.len());
    r.push(1);
    r.extend_from_slice(&info.general_profile_tier_level);
    r.extend_from_slice(&[0xf0, 0x00, 0xfc, 0xfc | info.chroma_format_idc, 0xf8 | (info.bit_depth_luma - 8), 0xf8 | (info.bit_depth_chroma - 8), 0, 0]);
    r.push(((info.max_sub_layers & 7) << 3) | (u8::from(info.temporal_id_nesting) << 2) | 3);
    r.push(3);
    for (kind, nal) in [(NAL_VPS, vps), (NAL_SPS, sps), (NAL_PPS, pps)] {
        r.push(0x80 | kind);
        r.extend_from_slice(&1u16.to_be_bytes());
        r.extend_from_slice(&u16::try_from(nal.len()).ok()?.to_be_bytes());
        r.extend_from_slice(nal);
    }
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hvcc_records_and_nal_types() {
        let mut record = vec![1u8];
        record.extend_from_slice(&[0; 20]);
        record.push(0xf0 | 3); // 4-byte lengths
        record.push(2); // two arrays
        record.extend_from_slice(&[0x20, 0, 1, 0, 3, 0x40, 1, 9]); // VPS
        record.extend_from_slice(&[0x21, 0, 1, 0, 2, 0x42, 1]); // SPS
        let c = HevcConfig::parse(&record).unwrap();
        assert_eq!(c.length_size, 4);
        assert_eq!(c.parameter_sets, vec![vec![0x40, 1, 9], vec![0x42, 1]]);
        assert_eq!(nal_type(&c.parameter_sets[0]), Some(NAL_VPS));
        assert_eq!(nal_type(&c.parameter_sets[1]), Some(NAL_SPS));
        assert!(is_irap(&[19 << 1, 1]) && !is_irap(&[1 << 1, 1]));
        // Truncated anywhere: none.
        for n in 0..record.len() {
            assert!(HevcConfig::parse(&record[..n]).is_none() || n >= 23, "{n}");
        }
        assert!(HevcConfig::parse(&record[..record.len() - 1]).is_none());
    }

    #[test]
    fn an_hvcc_record_is_built_from_x265_parameter_sets() {
        // libx265's 640x360 SPS: Main profile, level 2.1, 4:2:0, 8 bits.
        let sps = [
            0x42, 0x01, 0x01, 0x01, 0x60, 0x00, 0x00, 0x03, 0x00, 0x90, 0x00, 0x00, 0x03, 0x00, 0x00, 0x03, 0x00, 0x3f, 0xa0, 0x05, 0x02, 0x01, 0x69, 0x65, 0x95, 0x9a, 0x49, 0x32,
            0xbc, 0x05, 0xa0, 0x20, 0x00, 0x00, 0x03, 0x00, 0x20, 0x00, 0x00, 0x03, 0x03, 0xc1,
        ];
        let (vps, pps) = ([0x40, 0x01, 0x0c], [0x44, 0x01, 0xc1]);
        let record = hvcc_record(&vps, &sps, &pps).unwrap();
        assert_eq!(record[..13], [1, 0x01, 0x60, 0, 0, 0, 0x90, 0, 0, 0, 0, 0, 0x3f], "profile, compatibility, constraints, level");
        assert_eq!(record[16..22], [0xfd, 0xf8, 0xf8, 0, 0, 0x0f], "4:2:0, 8-bit, one temporal layer, nested, 4-byte lengths");
        let parsed = HevcConfig::parse(&record).unwrap();
        assert_eq!(parsed, HevcConfig { length_size: 4, parameter_sets: vec![vps.to_vec(), sps.to_vec(), pps.to_vec()] });
        assert_eq!(hvcc_record(&vps, &sps[..6], &pps), None);
    }
}
