//! Random strings for secrets, keys and ids, from the OS CSPRNG.

use base64::Engine;

/// Fills `buf` from the operating system's CSPRNG. Failure means the OS has no entropy source,
/// which no server can run without, so it panics with a clear message.
pub fn fill(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the operating system's random number generator is unavailable");
}

/// A random RTP SSRC for a stream the server originates (RFC 3550 §8.1: chosen at random so
/// that two sources in one session are unlikely to collide).
pub fn ssrc() -> u32 {
    let mut b = [0u8; 4];
    fill(&mut b);
    u32::from_be_bytes(b)
}

/// A uniformly random string of `len` characters drawn from `alphabet` (rejection sampling,
/// so no character is favoured).
pub fn string_from(alphabet: &[u8], len: usize) -> String {
    debug_assert!(!alphabet.is_empty() && alphabet.len() <= 256);
    // Largest multiple of the alphabet size that fits in a byte: bytes above it are rejected.
    let limit = 256 - (256 % alphabet.len());
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        fill(&mut buf);
        for &b in &buf {
            if (b as usize) < limit && out.len() < len {
                out.push(alphabet[b as usize % alphabet.len()] as char);
            }
        }
    }
    out
}

/// A secret of 32 random bytes encoded as base64url without padding (43 characters).
pub fn secret() -> String {
    let mut bytes = [0u8; 32];
    fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A task id: 16 lowercase hex characters.
pub fn task_id() -> String {
    string_from(b"0123456789abcdef", 16)
}

/// A session id: 22 characters `[A-Za-z0-9]` (about 131 bits).
pub fn session_id() -> String {
    string_from(BASE62, 22)
}

pub const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
pub const BASE32_LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_alphabets() {
        let s = secret();
        assert_eq!(s.len(), 43);
        assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        let t = task_id();
        assert_eq!(t.len(), 16);
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        let sid = session_id();
        assert_eq!(sid.len(), 22);
        assert!(sid.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(secret(), secret());
    }
}
