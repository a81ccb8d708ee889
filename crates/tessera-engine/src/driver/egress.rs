//! The media task's UDP egress: the datagrams one turn of the loop produced go, as one batch,
//! to a thread of their own that writes them with `sendmmsg(2)` (many datagrams, many
//! destinations, one system call). The kernel's send path — on loopback it also delivers to
//! the receiving socket — is then paid on another core while the media task goes on with the
//! next packets, and a batch costs one wake-up instead of one call per copy. A process with one
//! core (`taskset`, a one-CPU container) writes inline instead: there the thread could only
//! take turns with the media task, at a context switch per batch.
//!
//! The queue is bounded and pushes back: when the writer is that far behind (the machine is past
//! capacity) the media task waits for room rather than dropping datagrams at random — which
//! would tear frames and bring NACK storms. Its own queues then age, and the viewers' frame
//! gates drop whole frames (`sfu/consumer.rs`), so the delay stays bounded there.

use crate::sfu::SfuCounters;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

/// Batches the writer may have queued before the media task waits: at ~100 datagrams a batch,
/// a few ms of a saturated core.
const QUEUED_BATCHES: usize = 64;
/// Datagrams per `sendmmsg` call (the kernel's limit is UIO_MAXIOV, 1024).
const PER_CALL: usize = 256;

pub(super) type Batch = Vec<(Vec<u8>, SocketAddr)>;

/// The media task's end: collects one turn's datagrams, then hands them over.
pub(super) struct Egress {
    batch: Batch,
    to: To,
    counters: Arc<SfuCounters>,
}

/// Where a turn's batch goes.
enum To {
    /// The writer thread; emptied batches come back, so their allocations are reused.
    Thread { to_writer: tokio::sync::mpsc::Sender<Batch>, recycled: Receiver<Batch> },
    /// Written by the media task itself: with one core to run on, a thread of its own only
    /// adds a context switch per batch (BENCHMARKS.md has the pinned runs: no loss, no
    /// proven gain either).
    Inline(Writer),
}

impl Egress {
    /// Starts the writer thread on `socket` (a clone of the media task's socket), or writes
    /// inline where the process has one core.
    pub(super) fn start(socket: std::net::UdpSocket, counters: Arc<SfuCounters>) -> std::io::Result<Egress> {
        // Room for bursts (a keyframe to hundreds of viewers) while the kernel drains; the kernel
        // caps it at net.core.wmem_max.
        #[cfg(target_os = "linux")]
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(&socket, 4 << 20);
        if std::thread::available_parallelism().is_ok_and(|n| n.get() == 1) {
            return Ok(Egress::inline(socket, counters));
        }
        Egress::threaded(socket, counters)
    }

    fn inline(socket: std::net::UdpSocket, counters: Arc<SfuCounters>) -> Egress {
        Egress { batch: Vec::with_capacity(PER_CALL), to: To::Inline(Writer::new(socket)), counters }
    }

    fn threaded(socket: std::net::UdpSocket, counters: Arc<SfuCounters>) -> std::io::Result<Egress> {
        let (to_writer, mut batches) = tokio::sync::mpsc::channel::<Batch>(QUEUED_BATCHES);
        let (recycle, recycled) = sync_channel::<Batch>(QUEUED_BATCHES + 2);
        let writer_counters = counters.clone();
        std::thread::Builder::new().name("tessera-egress".into()).spawn(move || {
            let mut writer = Writer::new(socket);
            while let Some(mut batch) = batches.blocking_recv() {
                writer.write(&batch, &writer_counters);
                batch.clear();
                let _ = recycle.try_send(batch);
            }
        })?;
        Ok(Egress { batch: Vec::with_capacity(PER_CALL), to: To::Thread { to_writer, recycled }, counters })
    }

    pub(super) fn push(&mut self, datagram: Vec<u8>, to: SocketAddr) {
        self.batch.push((datagram, to));
    }

    /// Hands what was collected to the writer; waits while its queue is full.
    pub(super) async fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        match &mut self.to {
            To::Inline(writer) => {
                writer.write(&self.batch, &self.counters);
                self.batch.clear();
            }
            To::Thread { to_writer, recycled } => {
                let next = recycled.try_recv().unwrap_or_else(|_| Vec::with_capacity(PER_CALL));
                let batch = std::mem::replace(&mut self.batch, next);
                if let Err(lost) = to_writer.send(batch).await {
                    // The writer thread is gone (it never ends on its own).
                    self.counters.datagrams_dropped.fetch_add(lost.0.len() as u64, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The writer thread's side.
struct Writer {
    socket: std::net::UdpSocket,
}

impl Writer {
    fn new(socket: std::net::UdpSocket) -> Writer {
        Writer { socket }
    }

    #[cfg(target_os = "linux")]
    fn write(&mut self, batch: &[(Vec<u8>, SocketAddr)], counters: &SfuCounters) {
        use rustix::io::Errno;
        use rustix::net::{sendmmsg, MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};
        use std::io::IoSlice;
        let mut rest = batch;
        let mut waits = 0;
        while !rest.is_empty() {
            let chunk = &rest[..rest.len().min(PER_CALL)];
            // Per call, not per datagram: the headers borrow these.
            let addrs: Vec<SocketAddrAny> = chunk.iter().map(|(_, to)| SocketAddrAny::from(*to)).collect();
            let slices: Vec<[IoSlice<'_>; 1]> = chunk.iter().map(|(d, _)| [IoSlice::new(d)]).collect();
            let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = chunk.iter().map(|_| SendAncillaryBuffer::default()).collect();
            let mut headers: Vec<MMsgHdr<'_>> = addrs.iter().zip(&slices).zip(controls.iter_mut()).map(|((a, s), c)| MMsgHdr::new_with_addr(a, s, c)).collect();
            counters.send_calls.fetch_add(1, Ordering::Relaxed);
            match sendmmsg(&self.socket, &mut headers, SendFlags::empty()) {
                Ok(sent) => {
                    let sent = sent.clamp(1, chunk.len());
                    counters.datagrams_sent.fetch_add(sent as u64, Ordering::Relaxed);
                    rest = &rest[sent..];
                }
                Err(Errno::INTR) => {}
                // The send buffer is full (the socket is non-blocking: it is shared with the
                // receiving task): let it drain, a bounded number of times.
                Err(Errno::AGAIN) if waits < 20 => {
                    waits += 1;
                    std::thread::sleep(std::time::Duration::from_micros(500));
                }
                Err(e) => {
                    // The first datagram cannot go (unreachable destination, buffer still
                    // full): skip it, send the rest.
                    tracing::debug!(to = %chunk[0].1, "send failed: {e}");
                    counters.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
                    rest = &rest[1..];
                }
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn write(&mut self, batch: &[(Vec<u8>, SocketAddr)], counters: &SfuCounters) {
        for (datagram, to) in batch {
            counters.send_calls.fetch_add(1, Ordering::Relaxed);
            let mut result = self.socket.send_to(datagram, to);
            for _ in 0..20 {
                match result {
                    Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(std::time::Duration::from_micros(500)),
                    _ => break,
                }
                result = self.socket.send_to(datagram, to);
            }
            match result {
                Ok(_) => counters.datagrams_sent.fetch_add(1, Ordering::Relaxed),
                Err(_) => counters.datagrams_dropped.fetch_add(1, Ordering::Relaxed),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything pushed arrives, whole and in order, to each destination; the counters say
    /// how many datagrams went in how many calls.
    #[tokio::test]
    async fn batches_arrive_whole_and_in_order() {
        batches_arrive_whole_and_in_order_through(|socket, counters| Egress::threaded(socket, counters).unwrap()).await;
    }

    /// The same, written by the media task itself (a process with one core).
    #[tokio::test]
    async fn batches_written_inline_arrive_whole_and_in_order() {
        batches_arrive_whole_and_in_order_through(Egress::inline).await;
    }

    async fn batches_arrive_whole_and_in_order_through(start: impl Fn(std::net::UdpSocket, Arc<SfuCounters>) -> Egress) {
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let receivers: Vec<std::net::UdpSocket> = (0..3).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        for r in &receivers {
            r.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
            let _ = rustix::net::sockopt::set_socket_recv_buffer_size(r, 4 << 20);
        }
        let counters = Arc::new(SfuCounters::default());
        let mut egress = start(sender.try_clone().unwrap(), counters.clone());
        // 600 datagrams over two turns: more than one sendmmsg call's worth in the first.
        for turn in 0..2u16 {
            for i in 0..300u16 {
                let n = turn * 300 + i;
                let to = receivers[(n % 3) as usize].local_addr().unwrap();
                let mut d = n.to_be_bytes().to_vec();
                d.resize(100 + (n % 50) as usize, n as u8);
                egress.push(d, to);
            }
            egress.flush().await;
        }
        for (k, r) in receivers.iter().enumerate() {
            let mut buf = [0u8; 2048];
            for n in (0..600u16).filter(|n| (*n % 3) as usize == k) {
                let len = r.recv(&mut buf).unwrap();
                assert_eq!(u16::from_be_bytes([buf[0], buf[1]]), n);
                assert_eq!(len, 100 + (n % 50) as usize);
            }
        }
        // The writer counts after its call returns, maybe after the datagrams arrived.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while counters.datagrams_sent.load(Ordering::Relaxed) < 600 && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(counters.datagrams_sent.load(Ordering::Relaxed), 600);
        assert_eq!(counters.datagrams_dropped.load(Ordering::Relaxed), 0);
        let calls = counters.send_calls.load(Ordering::Relaxed);
        assert!((3..=10).contains(&calls), "{calls} calls for 600 datagrams in two batches");
    }
}
