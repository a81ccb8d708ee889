//! Batched UDP sends for the media egress: many messages in one `sendmmsg(2)` call, and each
//! message either one datagram or several equal-size datagrams to the same destination sent as
//! UDP GSO segments (`UDP_SEGMENT`, Linux ≥ 4.18): the kernel walks its send path (route, skb,
//! device queue) once per message and cuts the segments at the end, in the NIC when it can.
//! And one receive: a datagram with the kernel's stamp of when it arrived (`SO_TIMESTAMPNS`),
//! for a reader that measures latency and must not count its own lag.
//!
//! The one crate besides the FFmpeg bindings and the test bed's link emulator with `unsafe`
//! code: the `msghdr` and control-message plumbing that rustix does not offer for
//! `UDP_SEGMENT`. It plans nothing; callers say what goes in each message.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

/// The kernel's UDP_MAX_SEGMENTS: segments one GSO message may carry.
pub const MAX_SEGMENTS: usize = 64;
/// Bytes one GSO message may carry (an IP datagram's 65,535 less IPv6 and UDP headers, rounded
/// down).
pub const MAX_MESSAGE_BYTES: usize = 65_000;
/// Messages per `sendmmsg` call (the kernel caps a call at UIO_MAXIOV, 1,024).
pub const MAX_MESSAGES_PER_CALL: usize = 256;

/// One message of a batch: `segments` (one or more datagrams) to `to`. With more than one, all
/// but the last must be `segment_size` bytes and the last at most that (the kernel's rule).
pub struct Message<'a> {
    pub to: SocketAddr,
    pub segments: &'a [&'a [u8]],
    pub segment_size: u16,
}

impl Message<'_> {
    fn is_well_formed(&self) -> bool {
        let size = usize::from(self.segment_size);
        match self.segments {
            [] => false,
            [_] => true,
            [init @ .., last] => {
                self.segments.len() <= MAX_SEGMENTS && size * self.segments.len() <= MAX_MESSAGE_BYTES && init.iter().all(|s| s.len() == size) && (1..=size).contains(&last.len())
            }
        }
    }
}

/// Whether this kernel takes `UDP_SEGMENT` on `socket` (it reads the option back).
pub fn gso_supported(socket: &impl AsRawFd) -> bool {
    #[cfg(target_os = "linux")]
    {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `value` and `len` are valid for writes of the sizes given, for the call.
        let r = unsafe { libc::getsockopt(socket.as_raw_fd(), libc::SOL_UDP, libc::UDP_SEGMENT, (&raw mut value).cast(), &mut len) };
        r == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = socket;
        false
    }
}

/// Whether a failed send of a GSO message means the kernel or the device will not segment
/// (EIO: a device without checksum offload; EINVAL, EOPNOTSUPP: a path it cannot segment for),
/// so the caller should send those datagrams one per message.
pub fn is_gso_refusal(e: &io::Error) -> bool {
    #[cfg(target_os = "linux")]
    {
        matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL | libc::EOPNOTSUPP))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = e;
        false
    }
}

/// Sends up to `MAX_MESSAGES_PER_CALL` of `messages` in one `sendmmsg` call on a UDP socket;
/// returns how many messages the kernel took (it stops at the first that fails; that one's
/// error is returned only when it is the first).
#[cfg(target_os = "linux")]
pub fn send_messages(socket: &impl AsRawFd, messages: &[Message<'_>]) -> io::Result<usize> {
    let messages = &messages[..messages.len().min(MAX_MESSAGES_PER_CALL)];
    if messages.is_empty() {
        return Ok(0);
    }
    // The kernel cuts a message's bytes every `segment_size` whatever the iovecs: a wrong
    // message would go out as torn datagrams, so it is refused here.
    if let Some(bad) = messages.iter().position(|m| !m.is_well_formed()) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("message {bad}: segments not of segment_size (the last at most), or too many")));
    }
    // Everything the headers point into is built first and not touched until the call returns.
    let addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)> = messages.iter().map(|m| sockaddr(&m.to)).collect();
    let iovecs: Vec<libc::iovec> = messages.iter().flat_map(|m| m.segments.iter()).map(|s| libc::iovec { iov_base: s.as_ptr() as *mut libc::c_void, iov_len: s.len() }).collect();
    let mut controls: Vec<Control> = messages.iter().map(|m| Control::segment_size(m.segment_size)).collect();
    let mut headers: Vec<libc::mmsghdr> = Vec::with_capacity(messages.len());
    let mut first = 0;
    for ((m, (addr, addr_len)), control) in messages.iter().zip(&addrs).zip(controls.iter_mut()) {
        // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths); fields set below.
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_name = (addr as *const libc::sockaddr_storage).cast_mut().cast();
        hdr.msg_namelen = *addr_len;
        hdr.msg_iov = iovecs[first..].as_ptr().cast_mut();
        hdr.msg_iovlen = m.segments.len();
        first += m.segments.len();
        if m.segments.len() > 1 {
            hdr.msg_control = control.0.as_mut_ptr().cast();
            hdr.msg_controllen = CONTROL_SPACE;
        }
        headers.push(libc::mmsghdr { msg_hdr: hdr, msg_len: 0 });
    }
    // SAFETY: `headers` holds `headers.len()` initialised mmsghdrs whose pointers (addresses,
    // iovecs, control buffers, the segments' bytes) all outlive the call; the kernel only reads
    // them (it writes `msg_len`, inside `headers`).
    let sent = unsafe { libc::sendmmsg(socket.as_raw_fd(), headers.as_mut_ptr(), headers.len() as libc::c_uint, 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// One `cmsghdr` carrying `UDP_SEGMENT` (a `u16`), aligned as the kernel reads it.
#[cfg(target_os = "linux")]
#[repr(C, align(8))]
struct Control([u8; CONTROL_SPACE]);

/// CMSG_SPACE(sizeof(u16)).
#[cfg(target_os = "linux")]
// SAFETY: CMSG_SPACE is arithmetic on its argument (unsafe only by libc's declaration).
const CONTROL_SPACE: usize = unsafe { libc::CMSG_SPACE(2) } as usize;

#[cfg(target_os = "linux")]
impl Control {
    fn segment_size(size: u16) -> Control {
        let mut c = Control([0; CONTROL_SPACE]);
        let header = c.0.as_mut_ptr().cast::<libc::cmsghdr>();
        // SAFETY: `c.0` is CMSG_SPACE(2) bytes, 8-aligned: room for a cmsghdr and, at
        // CMSG_DATA, the u16; CMSG_LEN is arithmetic.
        unsafe {
            (*header).cmsg_len = libc::CMSG_LEN(2) as _;
            (*header).cmsg_level = libc::SOL_UDP;
            (*header).cmsg_type = libc::UDP_SEGMENT;
            std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<u16>(), size);
        }
        c
    }
}

/// Asks the kernel to stamp each datagram `socket` receives with the time it arrived
/// (`SO_TIMESTAMPNS`, the realtime clock), which [`recv_stamped`] reads back: a reader that
/// falls behind then still knows when each datagram came, not only when it was read.
#[cfg(target_os = "linux")]
pub fn stamp_arrivals(socket: &impl AsRawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `on` is valid for reads of its size for the call.
    let r = unsafe { libc::setsockopt(socket.as_raw_fd(), libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, (&raw const on).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one datagram into `buf` without waiting (`WouldBlock` when none is queued): its
/// length, its source, and the kernel's arrival stamp when the socket was asked for them
/// ([`stamp_arrivals`]). A datagram longer than `buf` is cut to it, as `recv_from` does.
#[cfg(target_os = "linux")]
pub fn recv_stamped(socket: &impl AsRawFd, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<std::time::SystemTime>)> {
    // SAFETY: an all-zero sockaddr_storage is valid; the kernel writes the source into it.
    let mut source: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut control = StampControl([0; STAMP_CONTROL_SPACE]);
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths); fields set below.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_name = (&raw mut source).cast();
    hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    hdr.msg_iov = &raw mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = control.0.as_mut_ptr().cast();
    hdr.msg_controllen = STAMP_CONTROL_SPACE;
    // SAFETY: every pointer in `hdr` (source, iovec over `buf`, control buffer) is valid for
    // writes of the length given and outlives the call.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut hdr, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let source = socket_addr(&source).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "a datagram from an address family other than IPv4/IPv6"))?;
    let mut stamp = None;
    // SAFETY: `hdr` is the header the kernel filled: CMSG_FIRSTHDR/NXTHDR walk its control
    // buffer within `msg_controllen`, and a SCM_TIMESTAMPNS message carries a timespec.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
                stamp = Some(std::time::UNIX_EPOCH + std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
            }
            c = libc::CMSG_NXTHDR(&hdr, c);
        }
    }
    Ok((n as usize, source, stamp))
}

/// Room for one `SCM_TIMESTAMPNS` control message (a timespec), aligned as the kernel writes it.
#[cfg(target_os = "linux")]
#[repr(C, align(8))]
struct StampControl([u8; STAMP_CONTROL_SPACE]);

/// CMSG_SPACE(sizeof(struct timespec)).
#[cfg(target_os = "linux")]
// SAFETY: CMSG_SPACE is arithmetic on its argument (unsafe only by libc's declaration).
const STAMP_CONTROL_SPACE: usize = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::timespec>() as u32) } as usize;

#[cfg(target_os = "linux")]
fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in (smaller, aligned).
            let sin = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::from((sin.sin_addr.s_addr.to_ne_bytes(), u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6 (smaller, aligned).
            let sin6 = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(ip, u16::from_be(sin6.sin6_port), sin6.sin6_flowinfo, sin6.sin6_scope_id)))
        }
        _ => None,
    }
}

#[cfg(target_os = "linux")]
fn sockaddr(to: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid; the family's fields are written below.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match to {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&raw mut storage).cast::<libc::sockaddr_in>(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&raw mut storage).cast::<libc::sockaddr_in6>(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    fn receiver() -> UdpSocket {
        let r = UdpSocket::bind("127.0.0.1:0").unwrap();
        r.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        r
    }

    /// A GSO message arrives as its datagrams, whole and in order, next to single datagrams in
    /// the same call; the kernel counts messages, not datagrams.
    #[test]
    fn segments_arrive_as_datagrams() {
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(gso_supported(&sender), "this kernel takes UDP_SEGMENT (Linux >= 4.18)");
        let (a, b) = (receiver(), receiver());
        let datagrams: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; if i == 4 { 300 } else { 1000 }]).collect();
        let segments: Vec<&[u8]> = datagrams.iter().map(|d| d.as_slice()).collect();
        let single = [b"hello".as_slice()];
        let messages =
            [Message { to: a.local_addr().unwrap(), segments: &segments, segment_size: 1000 }, Message { to: b.local_addr().unwrap(), segments: &single, segment_size: 5 }];
        assert_eq!(send_messages(&sender, &messages).unwrap(), 2);
        let mut buf = [0u8; 2048];
        for i in 0..5u8 {
            let len = a.recv(&mut buf).unwrap();
            assert_eq!(len, if i == 4 { 300 } else { 1000 });
            assert!(buf[..len].iter().all(|&x| x == i));
        }
        let len = b.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"hello");
    }

    /// A stamped socket says when each datagram arrived, before it was read: a reader that
    /// comes late reads the earlier time.
    #[test]
    fn a_stamped_datagram_says_when_it_arrived() {
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let r = receiver();
        stamp_arrivals(&r).unwrap();
        let mut buf = [0u8; 64];
        // The kernel stamps a datagram when its receive softirq runs. On a loaded machine (the
        // whole test suite on two cores) that can be deferred to ksoftirqd for as long as the
        // reader sleeps (one run in `make test` read 11 µs), so the best of five tries counts.
        let mut waits = Vec::new();
        for _ in 0..5 {
            let before = std::time::SystemTime::now();
            sender.send_to(b"stamped", r.local_addr().unwrap()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(50));
            let (n, from, stamp) = recv_stamped(&r, &mut buf).unwrap();
            let read_at = std::time::SystemTime::now();
            assert_eq!((&buf[..n], from), (b"stamped".as_slice(), sender.local_addr().unwrap()));
            let stamp = stamp.expect("an arrival stamp");
            assert!(stamp >= before - std::time::Duration::from_millis(1), "stamped before it was sent");
            waits.push(read_at.duration_since(stamp).unwrap());
            if waits.last().is_some_and(|w| *w >= std::time::Duration::from_millis(45)) {
                break;
            }
        }
        assert!(waits.iter().any(|w| *w >= std::time::Duration::from_millis(45)), "the stamp is the arrival, not the read: {waits:?}");
        // Nothing more queued: the call does not wait.
        assert_eq!(recv_stamped(&r, &mut buf).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        // An unstamped socket reads datagrams without a stamp.
        let plain = receiver();
        sender.send_to(b"x", plain.local_addr().unwrap()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(recv_stamped(&plain, &mut buf).unwrap().2, None);
    }

    /// The kernel cuts a GSO message every `segment_size` bytes whatever its iovecs: segments of
    /// another size would arrive torn, so such a message is refused before the call.
    #[test]
    fn unequal_segments_are_refused() {
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = receiver();
        let (x, y) = (vec![1u8; 500], vec![2u8; 900]);
        let segments = [x.as_slice(), y.as_slice()];
        let messages = [Message { to: a.local_addr().unwrap(), segments: &segments, segment_size: 500 }];
        assert_eq!(send_messages(&sender, &messages).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        a.set_read_timeout(Some(std::time::Duration::from_millis(100))).unwrap();
        assert!(a.recv(&mut [0u8; 2048]).is_err(), "nothing was sent");
    }
}
