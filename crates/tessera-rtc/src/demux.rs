//! Classifying datagrams on the shared UDP port (RFC 7983) and reading the STUN username that
//! routes a new flow to its peer (RFC 8445 §7.2.2: `USERNAME` is `<server ufrag>:<client ufrag>`).

/// What a datagram on the WebRTC port carries, from its first byte (RFC 7983 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramKind {
    Stun,
    Dtls,
    Rtp,
    Unknown,
}

pub fn classify(packet: &[u8]) -> DatagramKind {
    match packet.first() {
        Some(0..=3) => DatagramKind::Stun,
        Some(20..=63) => DatagramKind::Dtls,
        Some(128..=191) => DatagramKind::Rtp,
        _ => DatagramKind::Unknown,
    }
}

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const BINDING_REQUEST: u16 = 0x0001;
const ATTR_USERNAME: u16 = 0x0006;
const HEADER_LEN: usize = 20;

/// The server-side ufrag named by a STUN binding request, or `None` for anything else
/// (other STUN messages, truncated or malformed packets).
pub fn binding_request_local_ufrag(packet: &[u8]) -> Option<&str> {
    if packet.len() < HEADER_LEN || classify(packet) != DatagramKind::Stun || packet[4..8] != MAGIC_COOKIE {
        return None;
    }
    if u16::from_be_bytes([packet[0], packet[1]]) != BINDING_REQUEST {
        return None;
    }
    let body_len = u16::from_be_bytes([packet[2], packet[3]]) as usize;
    let body = packet.get(HEADER_LEN..HEADER_LEN + body_len)?;
    let mut rest = body;
    while rest.len() >= 4 {
        let attr_type = u16::from_be_bytes([rest[0], rest[1]]);
        let len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        let value = rest.get(4..4 + len)?;
        if attr_type == ATTR_USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split_once(':').map(|(local, _)| local).filter(|u| !u.is_empty());
        }
        // Attributes are padded to 4 bytes.
        let padded = 4 + len.div_ceil(4) * 4;
        rest = rest.get(padded..).unwrap_or(&[]);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &[u8], extra_before: &[(u16, &[u8])]) -> Vec<u8> {
        let mut attrs = Vec::new();
        let mut push = |t: u16, v: &[u8]| {
            attrs.extend_from_slice(&t.to_be_bytes());
            attrs.extend_from_slice(&(v.len() as u16).to_be_bytes());
            attrs.extend_from_slice(v);
            while attrs.len() % 4 != 0 {
                attrs.push(0);
            }
        };
        for (t, v) in extra_before {
            push(*t, v);
        }
        push(ATTR_USERNAME, username);
        let mut p = Vec::new();
        p.extend_from_slice(&BINDING_REQUEST.to_be_bytes());
        p.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        p.extend_from_slice(&MAGIC_COOKIE);
        p.extend_from_slice(&[7; 12]);
        p.extend_from_slice(&attrs);
        p
    }

    #[test]
    fn reads_the_local_ufrag() {
        let p = binding_request(b"srvUfrag:cli", &[(0x8029, &[1, 2, 3, 4, 5, 6, 7, 8]), (0x0024, &[0, 0, 0, 1]), (0x9999, b"odd")]);
        assert_eq!(classify(&p), DatagramKind::Stun);
        assert_eq!(binding_request_local_ufrag(&p), Some("srvUfrag"));
    }

    #[test]
    fn refuses_everything_else() {
        let good = binding_request(b"a:b", &[]);
        // Every truncation is refused without a panic.
        for n in 0..good.len() {
            assert_eq!(binding_request_local_ufrag(&good[..n]), None, "len {n}");
        }
        let mut response = good.clone();
        response[0] = 0x01; // 0x0101: binding success response
        assert_eq!(binding_request_local_ufrag(&response), None);
        let mut no_cookie = good.clone();
        no_cookie[4] = 0;
        assert_eq!(binding_request_local_ufrag(&no_cookie), None);
        assert_eq!(binding_request_local_ufrag(&binding_request(b"nocolon", &[])), None);
        assert_eq!(binding_request_local_ufrag(&binding_request(b":b", &[])), None);
        assert_eq!(binding_request_local_ufrag(&binding_request(&[0xff, b':', b'b'], &[])), None);
        assert_eq!(classify(&[0x80, 0x60]), DatagramKind::Rtp);
        assert_eq!(classify(&[22, 0xfe]), DatagramKind::Dtls);
        assert_eq!(classify(&[]), DatagramKind::Unknown);
    }
}
