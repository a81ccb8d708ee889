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

/// What an RTP packet's VP8 payload descriptor (RFC 7741 §4.2) says about its frame: what an
/// SFU needs to drop temporal layers and keep the picture IDs its viewer sees continuous.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// The first packet of a frame (S=1, partition 0).
    pub start: bool,
    /// The picture ID and whether it is the 15-bit form (M=1).
    pub picture_id: Option<(u16, bool)>,
    pub tl0_pic_idx: Option<u8>,
    /// The temporal layer (TID) and whether the frame is a layer sync (Y): it depends only on
    /// the base layer, so a viewer may start taking this layer at it.
    pub temporal: Option<(u8, bool)>,
    /// Where the picture ID and TL0PICIDX are in the payload.
    picture_id_at: u8,
    tl0_at: u8,
}

impl Descriptor {
    /// Parses the descriptor at the start of `payload`; `None` when it is cut short.
    pub fn parse(payload: &[u8]) -> Option<Descriptor> {
        let b0 = *payload.first()?;
        let mut d = Descriptor { start: b0 & 0x10 != 0 && b0 & 0x07 == 0, picture_id: None, tl0_pic_idx: None, temporal: None, picture_id_at: 0, tl0_at: 0 };
        if b0 & 0x80 == 0 {
            return Some(d);
        }
        let x = *payload.get(1)?;
        let mut i = 2;
        if x & 0x80 != 0 {
            let p0 = *payload.get(i)?;
            d.picture_id_at = i as u8;
            d.picture_id = Some(match p0 & 0x80 != 0 {
                true => {
                    i += 2;
                    ((u16::from(p0 & 0x7f) << 8) | u16::from(*payload.get(i - 1)?), true)
                }
                false => {
                    i += 1;
                    (u16::from(p0), false)
                }
            });
        }
        if x & 0x40 != 0 {
            d.tl0_pic_idx = Some(*payload.get(i)?);
            d.tl0_at = i as u8;
            i += 1;
        }
        // T (0x20) carries TID and Y; K (0x10) alone shares the byte with KEYIDX.
        if x & 0x20 != 0 {
            let t = *payload.get(i)?;
            d.temporal = Some((t >> 6, t & 0x20 != 0));
        } else if x & 0x10 != 0 {
            payload.get(i)?;
        }
        Some(d)
    }

    /// The picture ID's modulus: 2^15 or 2^7.
    pub fn picture_id_modulus(&self) -> u32 {
        match self.picture_id {
            Some((_, true)) => 1 << 15,
            _ => 1 << 7,
        }
    }

    /// Writes `id` (taken modulo the form's width) as the picture ID of `payload`, the packet
    /// this descriptor was parsed from. Does nothing where it has none.
    pub fn set_picture_id(&self, payload: &mut [u8], id: u16) {
        match self.picture_id {
            Some((_, true)) => {
                let id = id & 0x7fff;
                let at = usize::from(self.picture_id_at);
                payload[at] = 0x80 | (id >> 8) as u8;
                payload[at + 1] = id as u8;
            }
            Some((_, false)) => payload[usize::from(self.picture_id_at)] = (id & 0x7f) as u8,
            None => {}
        }
    }

    /// Writes `tl0` as the TL0PICIDX of `payload`, the packet this descriptor was parsed from.
    /// Does nothing where it has none.
    pub fn set_tl0_pic_idx(&self, payload: &mut [u8], tl0: u8) {
        if self.tl0_pic_idx.is_some() {
            payload[usize::from(self.tl0_at)] = tl0;
        }
    }
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

    #[test]
    fn the_descriptor_gives_picture_id_tl0_and_temporal_layer_and_takes_a_new_picture_id() {
        // X, S; I L T; 15-bit picture ID 0x1234; TL0PICIDX 9; TID 2 with Y; then the payload.
        let mut p = vec![0x90, 0xe0, 0x80 | 0x12, 0x34, 9, 0x80 | 0x20, 0xaa];
        let d = Descriptor::parse(&p).unwrap();
        assert_eq!((d.start, d.picture_id, d.tl0_pic_idx, d.temporal), (true, Some((0x1234, true)), Some(9), Some((2, true))));
        d.set_picture_id(&mut p, 0x8001);
        assert_eq!(&p[2..4], &[0x80, 0x01], "taken modulo 2^15, the M bit kept");
        assert_eq!(depacketize(&p), Some((true, &[0xaa][..])));
        // A 7-bit picture ID, K without T (KEYIDX only), a continuation packet.
        let mut q = vec![0x80, 0x90, 0x05, 0x11, 0xbb];
        let d = Descriptor::parse(&q).unwrap();
        assert_eq!((d.start, d.picture_id, d.temporal), (false, Some((5, false)), None));
        d.set_picture_id(&mut q, 130);
        assert_eq!(q[2], 2);
        assert_eq!(Descriptor::parse(&[0x10]).map(|d| d.picture_id), Some(None));
        for cut in [&[0x90][..], &[0x90, 0x80], &[0x90, 0x80, 0x81], &[0x90, 0x20], &[0x90, 0x40]] {
            assert_eq!(Descriptor::parse(cut), None, "{cut:?}");
        }
    }
}
