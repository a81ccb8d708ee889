//! The media task's UDP egress: the datagrams one turn of the loop produced go, as one batch,
//! to a thread of their own that writes them with `sendmmsg(2)` (many datagrams, many
//! destinations, one system call). Within a batch, a destination's equal-size datagrams (a
//! frame's packets to one viewer) go as one UDP GSO message (`tessera-udp`), so the kernel's
//! send path runs once per message instead of once per datagram. That path — on loopback it
//! also delivers to the receiving socket — is paid on another core while the media task goes
//! on with the next packets, and a batch costs one wake-up instead of one call per copy. A
//! process with one core (`taskset`, a one-CPU container) writes inline instead: there the
//! thread could only take turns with the media task, at a context switch per batch.
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
/// Datagrams a batch is expected to hold (its allocation is reused).
const BATCH_CAPACITY: usize = 256;

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
    /// `gso`: send a destination's equal-size datagrams as one UDP GSO message where the
    /// kernel takes it (`udp_gso` in the config; off for a path that mishandles it).
    pub(super) fn start(socket: std::net::UdpSocket, counters: Arc<SfuCounters>, gso: bool) -> std::io::Result<Egress> {
        // Room for bursts (a keyframe to hundreds of viewers) while the kernel drains; the kernel
        // caps it at net.core.wmem_max.
        #[cfg(target_os = "linux")]
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(&socket, 4 << 20);
        if std::thread::available_parallelism().is_ok_and(|n| n.get() == 1) {
            return Ok(Egress::inline(socket, counters, gso));
        }
        Egress::threaded(socket, counters, gso)
    }

    fn inline(socket: std::net::UdpSocket, counters: Arc<SfuCounters>, gso: bool) -> Egress {
        Egress { batch: Vec::with_capacity(BATCH_CAPACITY), to: To::Inline(Writer::new(socket, gso)), counters }
    }

    fn threaded(socket: std::net::UdpSocket, counters: Arc<SfuCounters>, gso: bool) -> std::io::Result<Egress> {
        let (to_writer, mut batches) = tokio::sync::mpsc::channel::<Batch>(QUEUED_BATCHES);
        let (recycle, recycled) = sync_channel::<Batch>(QUEUED_BATCHES + 2);
        let writer_counters = counters.clone();
        std::thread::Builder::new().name("tessera-egress".into()).spawn(move || {
            let mut writer = Writer::new(socket, gso);
            // The batch goes back with its datagrams: the media task reuses their buffers.
            while let Some(batch) = batches.blocking_recv() {
                writer.write(&batch, &writer_counters);
                let _ = recycle.try_send(batch);
            }
        })?;
        Ok(Egress { batch: Vec::with_capacity(BATCH_CAPACITY), to: To::Thread { to_writer, recycled }, counters })
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
                recycle(&mut self.batch);
            }
            To::Thread { to_writer, recycled } => {
                let mut next = recycled.try_recv().unwrap_or_else(|_| Vec::with_capacity(BATCH_CAPACITY));
                recycle(&mut next);
                let batch = std::mem::replace(&mut self.batch, next);
                if let Err(lost) = to_writer.send(batch).await {
                    // The writer thread is gone (it never ends on its own).
                    self.counters.datagrams_dropped.fetch_add(lost.0.len() as u64, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Empties a written batch, handing its datagrams' buffers back to str0m, which encrypts the
/// next packets into them: a forwarded copy then costs no allocation (nor a free on the writer
/// thread, glibc's slow path for memory another thread allocated).
fn recycle(batch: &mut Batch) {
    for (datagram, _) in batch.drain(..) {
        tessera_rtc::str0m::net::recycle_datagram(datagram);
    }
}

/// The writer thread's side.
struct Writer {
    socket: std::net::UdpSocket,
    /// Whether a destination's equal-size datagrams go as one GSO message.
    gso: bool,
}

impl Writer {
    fn new(socket: std::net::UdpSocket, gso: bool) -> Writer {
        let gso = gso && tessera_udp::gso_supported(&socket);
        Writer { socket, gso }
    }

    #[cfg(target_os = "linux")]
    fn write(&mut self, batch: &[(Vec<u8>, SocketAddr)], counters: &SfuCounters) {
        use std::io::ErrorKind;
        use tessera_udp::{send_messages, Message, MAX_MESSAGES_PER_CALL};
        let plan = Plan::new(batch, self.gso);
        let slices: Vec<&[u8]> = plan.order.iter().map(|&i| batch[i].0.as_slice()).collect();
        let message = |r: &std::ops::Range<usize>| Message { to: batch[plan.order[r.start]].1, segments: &slices[r.clone()], segment_size: slices[r.start].len() as u16 };
        let mut messages: Vec<Message<'_>> = plan.messages.iter().map(message).collect();
        let mut next = 0;
        let mut waits = 0;
        while next < messages.len() {
            let chunk = &messages[next..messages.len().min(next + MAX_MESSAGES_PER_CALL)];
            counters.send_calls.fetch_add(1, Ordering::Relaxed);
            match send_messages(&self.socket, chunk) {
                Ok(sent) => {
                    let sent = sent.clamp(1, chunk.len());
                    let datagrams: usize = chunk[..sent].iter().map(|m| m.segments.len()).sum();
                    counters.datagrams_sent.fetch_add(datagrams as u64, Ordering::Relaxed);
                    let gso = chunk[..sent].iter().filter(|m| m.segments.len() > 1).count();
                    counters.gso_messages.fetch_add(gso as u64, Ordering::Relaxed);
                    next += sent;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // The send buffer is full (the socket is non-blocking: it is shared with the
                // receiving task): let it drain, a bounded number of times.
                Err(e) if e.kind() == ErrorKind::WouldBlock && waits < 20 => {
                    waits += 1;
                    std::thread::sleep(std::time::Duration::from_micros(500));
                }
                // A device without checksum offload refuses GSO (EIO), as may a path the kernel
                // cannot segment for: the rest, and every batch after, go one datagram a message.
                Err(e) if chunk[0].segments.len() > 1 && tessera_udp::is_gso_refusal(&e) => {
                    tracing::warn!("UDP GSO refused ({e}); sending one datagram per message from now on");
                    self.gso = false;
                    let rest: Vec<Message<'_>> =
                        messages[next..].iter().flat_map(|m| m.segments.chunks(1).map(move |one| Message { to: m.to, segments: one, segment_size: one[0].len() as u16 })).collect();
                    messages = rest;
                    next = 0;
                }
                Err(e) => {
                    // The first message cannot go (unreachable destination, buffer still full):
                    // skip it, send the rest.
                    tracing::debug!(to = %chunk[0].to, "send failed: {e}");
                    counters.datagrams_dropped.fetch_add(chunk[0].segments.len() as u64, Ordering::Relaxed);
                    next += 1;
                }
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn write(&mut self, batch: &[(Vec<u8>, SocketAddr)], counters: &SfuCounters) {
        let _ = self.gso;
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

/// How a batch goes out: its datagrams in sending order (by destination with GSO, each
/// destination's in the order they were pushed), cut into messages — runs of one destination's
/// datagrams of one size, the last of a run possibly shorter (the kernel's GSO rule), at most
/// `tessera_udp::MAX_SEGMENTS` and `MAX_MESSAGE_BYTES` each. Without GSO, one datagram each.
struct Plan {
    order: Vec<usize>,
    messages: Vec<std::ops::Range<usize>>,
}

impl Plan {
    fn new(batch: &[(Vec<u8>, SocketAddr)], gso: bool) -> Plan {
        let mut order: Vec<usize> = (0..batch.len()).collect();
        if !gso {
            return Plan { messages: (0..batch.len()).map(|i| i..i + 1).collect(), order };
        }
        // Stable: each destination's datagrams keep their order.
        order.sort_by_key(|&i| batch[i].1);
        let mut messages = Vec::new();
        let mut start = 0;
        while start < order.len() {
            let (to, size) = (batch[order[start]].1, batch[order[start]].0.len());
            // Segments of `size` bytes one message may carry (an empty datagram, or one too
            // large to be a segment size, goes alone).
            let room = if size == 0 || size > usize::from(u16::MAX) { 1 } else { tessera_udp::MAX_SEGMENTS.min(tessera_udp::MAX_MESSAGE_BYTES / size) };
            let mut end = start + 1;
            while end < order.len() && end - start < room {
                let (next_to, next_len) = (batch[order[end]].1, batch[order[end]].0.len());
                if next_to != to || next_len > size || next_len == 0 {
                    break;
                }
                end += 1;
                if next_len < size {
                    break; // a shorter datagram ends the message
                }
            }
            messages.push(start..end);
            start = end;
        }
        Plan { order, messages }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything pushed arrives, whole and in order, to each destination; the counters say
    /// how many datagrams went in how many calls.
    #[tokio::test]
    async fn batches_arrive_whole_and_in_order() {
        batches_arrive_whole_and_in_order_through(|socket, counters| Egress::threaded(socket, counters, true).unwrap(), true).await;
    }

    /// The same, written by the media task itself (a process with one core), and without GSO.
    #[tokio::test]
    async fn batches_written_inline_arrive_whole_and_in_order() {
        batches_arrive_whole_and_in_order_through(|socket, counters| Egress::inline(socket, counters, true), true).await;
        batches_arrive_whole_and_in_order_through(|socket, counters| Egress::inline(socket, counters, false), false).await;
    }

    /// A frame's packets to one viewer go as one message: equal-size runs per destination, a
    /// shorter datagram ends a run, a longer one starts the next; each destination's order kept.
    #[test]
    fn a_destinations_equal_size_datagrams_make_one_message() {
        let (a, b): (SocketAddr, SocketAddr) = ("10.0.0.1:5000".parse().unwrap(), "10.0.0.2:5000".parse().unwrap());
        let batch: Batch = [(a, 100), (b, 100), (a, 100), (a, 60), (b, 100), (a, 100), (a, 120), (b, 40)].into_iter().map(|(to, len)| (vec![0u8; len], to)).collect();
        let plan = Plan::new(&batch, true);
        let messages: Vec<Vec<usize>> = plan.messages.iter().map(|r| plan.order[r.clone()].to_vec()).collect();
        assert_eq!(messages, vec![vec![0, 2, 3], vec![5], vec![6], vec![1, 4, 7]]);
        let without: Vec<Vec<usize>> = Plan::new(&batch, false).messages.iter().map(|r| r.clone().collect()).collect();
        assert_eq!(without, (0..8).map(|i| vec![i]).collect::<Vec<_>>());
        // At most 64 segments a message.
        let many: Batch = (0..130).map(|_| (vec![0u8; 200], a)).collect();
        let lens: Vec<usize> = Plan::new(&many, true).messages.iter().map(|r| r.len()).collect();
        assert_eq!(lens, vec![64, 64, 2]);
    }

    async fn batches_arrive_whole_and_in_order_through(start: impl Fn(std::net::UdpSocket, Arc<SfuCounters>) -> Egress, gso: bool) {
        // Runs of equal size per destination, now and then a shorter one (a frame's last packet).
        let len = |n: u16| if n.is_multiple_of(7) { 60 } else { 100 + (n / 60) as usize };
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
                d.resize(len(n), n as u8);
                egress.push(d, to);
            }
            egress.flush().await;
        }
        for (k, r) in receivers.iter().enumerate() {
            let mut buf = [0u8; 2048];
            for n in (0..600u16).filter(|n| (*n % 3) as usize == k) {
                let got = r.recv(&mut buf).unwrap();
                assert_eq!(u16::from_be_bytes([buf[0], buf[1]]), n);
                assert!(buf[2..got].iter().all(|&x| x == n as u8), "datagram {n} whole");
                assert_eq!(got, len(n));
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
        assert!((2..=10).contains(&calls), "{calls} calls for 600 datagrams in two batches");
        let gso_messages = counters.gso_messages.load(Ordering::Relaxed);
        assert_eq!(gso_messages > 0, gso, "{gso_messages} GSO messages");
    }
}
