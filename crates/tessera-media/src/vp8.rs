//! VP8 RTP packetization (RFC 7741): a one-byte payload descriptor, S set on the first packet
//! of a frame, partition index 0. Enough to pass a pulled VP8 stream through to viewers.

/// Splits one VP8 frame into RTP payloads of at most `max_payload` bytes.
pub fn packetize(frame: &[u8], max_payload: usize, out: &mut Vec<Vec<u8>>) {
    assert!(max_payload > 1, "a VP8 payload needs room for its descriptor");
    let mut first = true;
    for chunk in frame.chunks(max_payload - 1) {
        let mut p = Vec::with_capacity(chunk.len() + 1);
        // X=0 R=0 N=0 S=first PartID=0
        p.push(if first { 0x10 } else { 0x00 });
        p.extend_from_slice(chunk);
        out.push(p);
        first = false;
    }
}

/// The VP8 payload of one RTP packet (the payload descriptor stripped) and whether it starts a
/// partition-0 frame (S=1, PID=0). `None` for a malformed descriptor.
pub fn depacketize(payload: &[u8]) -> Option<(bool, &[u8])> {
    let b0 = *payload.first()?;
    let start = b0 & 0x10 != 0 && b0 & 0x07 == 0;
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let x = *payload.get(i)?;
        i += 1;
        if x & 0x80 != 0 {
            // PictureID: 7 or 15 bits.
            i += if *payload.get(i)? & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1;
        }
        if x & 0x30 != 0 {
            i += 1;
        }
    }
    payload.get(i..).map(|p| (start, p))
}

/// A VP8 frame is a keyframe when bit 0 of its first byte (the inverse key frame flag) is 0.
pub fn is_keyframe(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 0x01 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_with_start_bit_on_the_first_packet_only() {
        let frame: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
        let mut out = Vec::new();
        packetize(&frame, 1200, &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(out.iter().map(|p| p[0]).collect::<Vec<_>>(), vec![0x10, 0, 0]);
        let joined: Vec<u8> = out.iter().flat_map(|p| p[1..].to_vec()).collect();
        assert_eq!(joined, frame);
        assert_eq!(depacketize(&out[0]), Some((true, &frame[..1199])));
        // X=1, I=1 with a 15-bit picture id, then the payload.
        assert_eq!(depacketize(&[0x90, 0x80, 0x81, 0x23, 7, 8]), Some((true, &[7u8, 8][..])));
        assert_eq!(depacketize(&[0x90, 0x80]), None);
        assert!(is_keyframe(&[0x50]) && !is_keyframe(&[0x51]) && !is_keyframe(&[]));
    }
}
