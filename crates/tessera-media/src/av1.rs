//! AV1 bitstream helpers: OBUs of the low-overhead format (what Enhanced RTMP, MP4 and Matroska
//! carry), and the RTP payload format (AOM "RTP Payload Format For AV1" v1.0) a WebRTC viewer
//! that negotiated AV1 takes. Only what forwarding an AV1 original needs: split a temporal unit,
//! packetize it, and (for tests and fuzzing) put it back together.

/// OBU types (AV1 §6.2.2).
pub const OBU_SEQUENCE_HEADER: u8 = 1;
pub const OBU_TEMPORAL_DELIMITER: u8 = 2;
pub const OBU_TILE_LIST: u8 = 8;
pub const OBU_PADDING: u8 = 15;

/// One OBU: its header (one or two bytes, `obu_has_size_field` cleared) and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Obu<'a> {
    pub header: [u8; 2],
    pub header_len: usize,
    pub payload: &'a [u8],
}

impl Obu<'_> {
    pub fn obu_type(&self) -> u8 {
        (self.header[0] >> 3) & 0x0f
    }

    /// The OBU with its size field, on its own.
    pub fn sized(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload.len() + 4);
        self.write_sized(&mut out);
        out
    }

    /// Appends the OBU with its size field (the low-overhead format).
    pub fn write_sized(&self, out: &mut Vec<u8>) {
        out.push(self.header[0] | 0x02);
        out.extend_from_slice(&self.header[1..self.header_len]);
        write_leb128(self.payload.len() as u64, out);
        out.extend_from_slice(self.payload);
    }
}

/// Reads a LEB128 value (at most 8 bytes, AV1 §4.10.5): the value and the bytes it took.
pub fn read_leb128(data: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, b) in data.iter().take(8).enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

pub fn write_leb128(mut value: u64, out: &mut Vec<u8>) {
    loop {
        let b = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn leb128_len(value: usize) -> usize {
    let mut n = 1;
    let mut v = value >> 7;
    while v != 0 {
        n += 1;
        v >>= 7;
    }
    n
}

/// Splits a temporal unit in the low-overhead format (every OBU but the last with a size
/// field) into its OBUs. `None` when an OBU overruns the data or its forbidden bit is set.
pub fn split_obus(mut data: &[u8]) -> Option<Vec<Obu<'_>>> {
    let mut obus = Vec::new();
    while !data.is_empty() {
        let first = data[0];
        if first & 0x80 != 0 {
            return None;
        }
        let extension = first & 0x04 != 0;
        let has_size = first & 0x02 != 0;
        let header_len = if extension { 2 } else { 1 };
        let header = [first & !0x02, if extension { *data.get(1)? } else { 0 }];
        let rest = data.get(header_len..)?;
        let (payload, next) = if has_size {
            let (size, n) = read_leb128(rest)?;
            let end = n.checked_add(usize::try_from(size).ok()?)?;
            (rest.get(n..end)?, &rest[end..])
        } else {
            (rest, &rest[rest.len()..])
        };
        obus.push(Obu { header, header_len, payload });
        data = next;
    }
    Some(obus)
}

/// The configuration OBUs of an `av1C` record (ISO BMFF AV1 binding §2.3): a sequence header
/// after the four fixed bytes, when the record carries one.
pub fn sequence_header_of_config(av1c: &[u8]) -> Option<Vec<u8>> {
    if av1c.len() < 4 || av1c[0] != 0x81 {
        return None;
    }
    find_sequence_header(&av1c[4..]).map(|seq| seq.sized())
}

/// The first sequence header OBU among `obus` (low-overhead format).
fn find_sequence_header(obus: &[u8]) -> Option<Obu<'_>> {
    split_obus(obus)?.into_iter().find(|o| o.obu_type() == OBU_SEQUENCE_HEADER)
}

/// A temporal unit's sequence header OBU (with its size field, as an `av1C` builder takes it)
/// and the largest picture size it allows.
pub fn sequence_header_obu(temporal_unit: &[u8]) -> Option<(Vec<u8>, (u32, u32))> {
    let seq = find_sequence_header(temporal_unit)?;
    let size = crate::picture_size::av1_sequence_size(seq.payload)?;
    Some((seq.sized(), size))
}

/// An `av1C` record (AV1-ISOBMFF §2.3) for the sequence header among `obus` (a temporal unit,
/// or the header alone): what an Enhanced RTMP sequence start and an MP4 carry. `None` when
/// there is none or it cannot be read.
pub fn av1c_record(obus: &[u8]) -> Option<Vec<u8>> {
    let seq = find_sequence_header(obus)?;
    let i = crate::picture_size::av1_sequence_info(seq.payload)?;
    let mut r = vec![
        0x81,
        (i.profile << 5) | (i.level0 & 0x1f),
        (i.tier0 << 7)
            | (u8::from(i.high_bitdepth) << 6)
            | (u8::from(i.twelve_bit) << 5)
            | (u8::from(i.monochrome) << 4)
            | (i.subsampling.0 << 3)
            | (i.subsampling.1 << 2)
            | i.chroma_sample_position,
        0,
    ];
    seq.write_sized(&mut r);
    Some(r)
}

/// Whether a temporal unit carries a sequence header OBU.
pub fn has_sequence_header(temporal_unit: &[u8]) -> bool {
    find_sequence_header(temporal_unit).is_some()
}

/// Packetizes one temporal unit into RTP payloads of at most `max_payload` bytes. Every OBU
/// element carries its length (W = 0); temporal delimiters, tile lists and padding are dropped
/// (§5 of the payload format); an OBU larger than the room left is fragmented (Y, then Z).
/// `new_sequence` sets N on the first packet (a keyframe that starts a coded video sequence).
/// The caller marks the last payload.
pub fn packetize(temporal_unit: &[u8], new_sequence: bool, max_payload: usize, out: &mut Vec<Vec<u8>>) -> Option<()> {
    let max_payload = max_payload.max(16);
    let obus = split_obus(temporal_unit)?;
    let first = out.len();
    let mut packet = vec![0u8];
    for obu in obus.iter().filter(|o| !matches!(o.obu_type(), OBU_TEMPORAL_DELIMITER | OBU_TILE_LIST | OBU_PADDING)) {
        let header = &obu.header[..obu.header_len];
        let mut element: Vec<u8> = Vec::with_capacity(header.len() + obu.payload.len());
        element.extend_from_slice(header);
        element.extend_from_slice(obu.payload);
        let mut rest = &element[..];
        while !rest.is_empty() {
            let room = max_payload - packet.len();
            // At least the length byte and one byte of the OBU, or a new packet.
            if room < 2 {
                out.push(std::mem::replace(&mut packet, vec![0]));
                continue;
            }
            let mut take = rest.len().min(room - 1);
            while take + leb128_len(take) > room {
                take -= 1;
            }
            write_leb128(take as u64, &mut packet);
            packet.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if !rest.is_empty() {
                packet[0] |= 0x40;
                out.push(std::mem::replace(&mut packet, vec![0]));
            }
        }
    }
    if packet.len() > 1 {
        out.push(packet);
    } else if out.len() == first {
        return None;
    }
    // A packet that begins with a fresh element (after a full flush) is not a continuation.
    fix_continuations(&mut out[first..]);
    if new_sequence {
        out[first][0] |= 0x08;
    }
    Some(())
}

/// Z must say whether the first element continues the previous packet's last one: it does
/// exactly when that packet set Y.
fn fix_continuations(packets: &mut [Vec<u8>]) {
    let mut continues = false;
    for p in packets.iter_mut() {
        if continues {
            p[0] |= 0x80;
        } else {
            p[0] &= !0x80;
        }
        continues = p[0] & 0x40 != 0;
    }
}

/// Puts RTP payloads of one temporal unit back into the low-overhead format (with a temporal
/// delimiter first, size fields on every OBU), as a decoder or an MP4 writer takes it.
pub fn depacketize(payloads: &[&[u8]]) -> Option<Vec<u8>> {
    let mut out = vec![0x12, 0x00];
    let mut pending: Vec<u8> = Vec::new();
    for p in payloads {
        let (&agg, mut rest) = p.split_first()?;
        let w = (agg >> 4) & 0x03;
        let continues = agg & 0x80 != 0;
        let more = agg & 0x40 != 0;
        if !continues && !pending.is_empty() {
            return None;
        }
        let mut index = 0;
        while !rest.is_empty() {
            index += 1;
            let element = if w != 0 && index == w {
                std::mem::take(&mut rest)
            } else {
                let (len, n) = read_leb128(rest)?;
                let end = n.checked_add(usize::try_from(len).ok()?)?;
                let e = rest.get(n..end)?;
                rest = &rest[end..];
                e
            };
            pending.extend_from_slice(element);
            let last = rest.is_empty();
            if !(last && more) {
                push_with_size(&std::mem::take(&mut pending), &mut out)?;
            }
        }
    }
    if !pending.is_empty() {
        return None;
    }
    Some(out)
}

fn push_with_size(element: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let first = *element.first()?;
    let header_len = if first & 0x04 != 0 { 2 } else { 1 };
    let header = element.get(..header_len)?;
    let payload = &element[header_len..];
    out.push(header[0] | 0x02);
    out.extend_from_slice(&header[1..]);
    write_leb128(payload.len() as u64, out);
    out.extend_from_slice(payload);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obu(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut o = vec![(kind << 3) | 0x02];
        write_leb128(payload.len() as u64, &mut o);
        o.extend_from_slice(payload);
        o
    }

    #[test]
    fn leb128_round_trips() {
        for v in [0u64, 1, 127, 128, 300, 16_383, 16_384, 1 << 40] {
            let mut b = Vec::new();
            write_leb128(v, &mut b);
            assert_eq!(read_leb128(&b), Some((v, b.len())));
            assert_eq!(b.len(), leb128_len(v as usize));
        }
        assert_eq!(read_leb128(&[0x80; 9]), None);
    }

    #[test]
    fn a_temporal_unit_survives_packetizing_at_every_size() {
        let seq = obu(OBU_SEQUENCE_HEADER, &[0, 0, 0, 0x4a, 0xab]);
        let frame: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let mut tu = obu(OBU_TEMPORAL_DELIMITER, &[]);
        tu.extend_from_slice(&seq);
        tu.extend_from_slice(&obu(6, &frame));
        tu.extend_from_slice(&obu(OBU_PADDING, &[0; 9]));
        let mut expected = vec![0x12, 0];
        expected.extend_from_slice(&seq);
        expected.extend_from_slice(&obu(6, &frame));
        for max in [16, 17, 100, 127, 128, 129, 1200, 6000] {
            let mut out = Vec::new();
            packetize(&tu, true, max, &mut out).unwrap();
            assert!(out.iter().all(|p| p.len() <= max), "max {max}");
            assert_eq!(out[0][0] & 0x88, 0x08, "N on the first, no Z");
            assert_eq!(out.last().unwrap()[0] & 0x40, 0, "the last does not continue");
            for w in out.windows(2) {
                assert_eq!(w[0][0] & 0x40 != 0, w[1][0] & 0x80 != 0, "Y then Z");
            }
            let payloads: Vec<&[u8]> = out.iter().map(|p| p.as_slice()).collect();
            assert_eq!(depacketize(&payloads).unwrap(), expected, "max {max}");
        }
    }

    #[test]
    fn the_sequence_header_comes_from_an_av1c_record() {
        let seq = obu(OBU_SEQUENCE_HEADER, &[1, 2, 3]);
        let mut record = vec![0x81, 0x08, 0x0c, 0x00];
        record.extend_from_slice(&seq);
        assert_eq!(sequence_header_of_config(&record), Some(seq.clone()));
        assert!(has_sequence_header(&seq) && !has_sequence_header(&obu(6, &[1])));
        assert_eq!(sequence_header_of_config(&[0x81, 0, 0, 0]), None);
        // SVT-AV1's 640x360 header: profile 0, level index 1 (2.1), 4:2:0 (both subsampling
        // bits), as FFmpeg's MP4 muxer writes it; it reads back to the same header.
        let svt = obu(OBU_SEQUENCE_HEADER, &[0x00, 0x00, 0x00, 0x0c, 0xc4, 0xff, 0x67, 0x3e, 0xfe, 0x40, 0x10]);
        let record = av1c_record(&svt).unwrap();
        assert_eq!(record[..4], [0x81, 0x01, 0x0c, 0x00]);
        assert_eq!(sequence_header_of_config(&record), Some(svt));
        assert_eq!(split_obus(&[0x32, 0x05, 1]), None, "an OBU past the end");
        assert_eq!(split_obus(&[0x80]), None, "the forbidden bit");
    }
}
