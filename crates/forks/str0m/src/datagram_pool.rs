//! Tessera fork: buffers for outgoing SRTP/SRTCP datagrams, reused.
//!
//! Every packet an SFU forwards is encrypted into a datagram of its own, so allocating each one
//! (and freeing it, often on the thread that wrote it to the socket) was a heap round trip per
//! copy. An application that hands written datagrams back with [`recycle_datagram`] has them
//! reused for the next packets built on that thread; one that does not just allocates as before.
//! The pool is per thread (no locks) and bounded, so a burst that recycles more than is needed
//! soon frees the rest.

use std::cell::RefCell;

/// Buffers a thread keeps: a few frames' copies to every viewer of a busy worker.
const MAX_POOLED: usize = 4096;
/// A fresh buffer's capacity: any datagram str0m builds fits, so a reused one never grows.
const BUFFER_CAPACITY: usize = 1500;
/// A larger buffer handed back is freed, not kept: the pool holds datagram-sized memory only.
const MAX_KEPT_CAPACITY: usize = 4 * BUFFER_CAPACITY;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Hands a datagram's buffer (from [`Transmit::contents`][crate::net::Transmit]) back for reuse
/// once it has been written.
pub fn recycle_datagram(buf: Vec<u8>) {
    if !(BUFFER_CAPACITY..=MAX_KEPT_CAPACITY).contains(&buf.capacity()) {
        return;
    }
    // Its length is kept: those bytes are initialized, so the next packet built in it need not
    // zero them again (every caller of `datagram_buffer` overwrites what it keeps).
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < MAX_POOLED {
            pool.push(buf);
        }
    });
}

/// A buffer of `len` initialized bytes, reused where one was recycled on this thread. Its
/// contents are unspecified (zeros, or a former datagram's bytes): the caller writes every byte
/// it keeps. Zeroing a whole datagram per forwarded copy was 1.4-1.8 % of the SFU's time at 100
/// viewers.
pub(crate) fn datagram_buffer(len: usize) -> Vec<u8> {
    let mut buf = POOL
        .with(|pool| pool.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(len.max(BUFFER_CAPACITY)));
    // Shortening keeps the bytes as they are; only growth past the kept length writes zeros.
    buf.resize(len, 0);
    buf
}

