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
}
