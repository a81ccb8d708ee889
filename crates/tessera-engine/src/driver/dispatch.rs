//! One UDP port, several media workers: the dispatcher reads the shared socket and hands each
//! datagram to the worker that holds its peer. A new flow starts with a STUN binding request,
//! whose USERNAME names our ufrag (RFC 8445 §7.2.2); the workers publish which ufrags they hold
//! (`UfragIndex`), and the dispatcher remembers the source address for everything after it
//! (DTLS, SRTP, consent checks). ICE-TCP connections are routed the same way by their first
//! frame.
//!
//! Datagrams travel in batches (one buffer, many datagrams), which the workers send back to be
//! filled again: no allocation per datagram.

use super::*;
use crate::sfu::UfragIndex;
use std::collections::HashMap;
use std::ops::Range;

/// Datagrams read per wake-up before the batches go out.
const READ_BATCH: usize = 64;
/// Batches a worker may have waiting before the dispatcher drops what it reads for it (the
/// worker is far behind; the kernel would drop them otherwise, and the other workers must not
/// wait on it).
const QUEUED_BATCHES: usize = 256;
/// A source address not heard from for this long is forgotten (its peer is long gone: consent
/// checks come every few seconds).
const ADDRESS_IDLE: Duration = Duration::from_secs(120);

/// Datagrams read for one worker: their bytes end to end in one buffer.
#[derive(Default)]
pub(super) struct DatagramBatch {
    data: Vec<u8>,
    items: Vec<(SocketAddr, Range<usize>)>,
}

impl DatagramBatch {
    fn push(&mut self, source: SocketAddr, bytes: &[u8]) {
        let start = self.data.len();
        self.data.extend_from_slice(bytes);
        self.items.push((source, start..self.data.len()));
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.items.iter().map(|(source, r)| (*source, &self.data[r.clone()]))
    }

    fn clear(&mut self) {
        self.data.clear();
        self.items.clear();
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// A worker's inbox from the dispatcher, and where it returns emptied batches.
pub(super) struct WorkerInbox {
    pub datagrams: mpsc::Receiver<DatagramBatch>,
    pub recycle: std::sync::mpsc::Sender<DatagramBatch>,
}

impl WorkerInbox {
    pub(super) fn give_back(&self, mut batch: DatagramBatch) {
        batch.clear();
        let _ = self.recycle.send(batch);
    }
}

/// Which worker a flow belongs to, learned from binding requests.
pub(super) struct Routes {
    ufrags: UfragIndex,
    by_addr: HashMap<SocketAddr, (usize, Instant)>,
    last_prune: Instant,
}

impl Routes {
    pub(super) fn new(ufrags: UfragIndex, now: Instant) -> Routes {
        Routes { ufrags, by_addr: HashMap::new(), last_prune: now }
    }

    /// The worker for a datagram from `source`, or `None` (nobody's: dropped, as a single SFU
    /// drops a packet of no session).
    pub(super) fn route(&mut self, source: SocketAddr, data: &[u8], now: Instant) -> Option<usize> {
        if let Some(ufrag) = tessera_rtc::demux::binding_request_local_ufrag(data) {
            let worker = self.ufrags.read().unwrap_or_else(|e| e.into_inner()).get(ufrag).copied();
            if let Some(w) = worker {
                let w = w as usize;
                self.by_addr.insert(source, (w, now));
                return Some(w);
            }
        }
        let (w, seen) = self.by_addr.get_mut(&source)?;
        *seen = now;
        Some(*w)
    }

    fn prune(&mut self, now: Instant) {
        if now - self.last_prune < ADDRESS_IDLE / 4 {
            return;
        }
        self.last_prune = now;
        self.by_addr.retain(|_, (_, seen)| now - *seen < ADDRESS_IDLE);
    }
}

pub(super) fn worker_inboxes(workers: usize) -> (Vec<mpsc::Sender<DatagramBatch>>, Vec<WorkerInbox>, std::sync::mpsc::Receiver<DatagramBatch>) {
    let (recycle, recycled) = std::sync::mpsc::channel();
    let (mut senders, mut inboxes) = (Vec::new(), Vec::new());
    for _ in 0..workers {
        let (tx, rx) = mpsc::channel(QUEUED_BATCHES);
        senders.push(tx);
        inboxes.push(WorkerInbox { datagrams: rx, recycle: recycle.clone() });
    }
    (senders, inboxes, recycled)
}

/// The dispatcher's loop: reads the socket (and ICE-TCP events) until every worker is gone.
pub(super) async fn run(
    socket: UdpSocket,
    mut tcp_events: Option<mpsc::Receiver<TcpEvent>>,
    workers: Vec<mpsc::Sender<DatagramBatch>>,
    tcp_workers: Vec<mpsc::Sender<TcpEvent>>,
    recycled: std::sync::mpsc::Receiver<DatagramBatch>,
    ufrags: UfragIndex,
    counters: Arc<SfuCounters>,
) {
    let mut routes = Routes::new(ufrags, Instant::now());
    let mut buf = vec![0u8; 2048];
    let mut filling: Vec<DatagramBatch> = (0..workers.len()).map(|_| DatagramBatch::default()).collect();
    // ICE-TCP: connections whose first frame has not said which worker they are for, and the
    // worker of each routed one.
    let mut unrouted_tcp: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut tcp_routes: HashMap<SocketAddr, usize> = HashMap::new();
    loop {
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let now = Instant::now();
                let mut next = r.ok();
                let mut read = 0;
                while let Some((n, source)) = next {
                    if let Some(w) = routes.route(source, &buf[..n], now) {
                        filling[w].push(source, &buf[..n]);
                    }
                    read += 1;
                    if read == READ_BATCH {
                        break;
                    }
                    next = socket.try_recv_from(&mut buf).ok();
                }
                for (w, batch) in filling.iter_mut().enumerate() {
                    if batch.is_empty() {
                        continue;
                    }
                    let fresh = recycled.try_recv().unwrap_or_default();
                    let full = std::mem::replace(batch, fresh);
                    let n = full.items.len() as u64;
                    if let Err(e) = workers[w].try_send(full) {
                        counters.ingress_dropped.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                        if matches!(e, mpsc::error::TrySendError::Closed(_)) && workers.iter().all(|w| w.is_closed()) {
                            return;
                        }
                    }
                }
                routes.prune(now);
            }
            Some(event) = next_tcp(&mut tcp_events) => match event {
                TcpEvent::Opened { remote, writer } => {
                    unrouted_tcp.insert(remote, writer);
                }
                TcpEvent::Frame { remote, local, data } => {
                    let worker = match tcp_routes.get(&remote) {
                        Some(w) => Some(*w),
                        None => {
                            let w = routes.route(remote, &data, Instant::now());
                            if let (Some(w), Some(writer)) = (w, unrouted_tcp.remove(&remote)) {
                                tcp_routes.insert(remote, w);
                                let _ = tcp_workers[w].send(TcpEvent::Opened { remote, writer }).await;
                            }
                            w.filter(|_| tcp_routes.contains_key(&remote))
                        }
                    };
                    if let Some(w) = worker {
                        let _ = tcp_workers[w].send(TcpEvent::Frame { remote, local, data }).await;
                    }
                }
                TcpEvent::Closed { remote } => {
                    unrouted_tcp.remove(&remote);
                    if let Some(w) = tcp_routes.remove(&remote) {
                        let _ = tcp_workers[w].send(TcpEvent::Closed { remote }).await;
                    }
                }
            },
        }
    }
}

/// The next ICE-TCP event (never, without a listener).
pub(super) async fn next_tcp(rx: &mut Option<mpsc::Receiver<TcpEvent>>) -> Option<TcpEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &[u8]) -> Vec<u8> {
        // A STUN binding request with only a USERNAME attribute (RFC 5389 §6, §15.3).
        let padded = username.len().div_ceil(4) * 4;
        let mut p = vec![0x00, 0x01];
        p.extend_from_slice(&((4 + padded) as u16).to_be_bytes());
        p.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        p.extend_from_slice(&[7; 12]);
        p.extend_from_slice(&[0x00, 0x06]);
        p.extend_from_slice(&(username.len() as u16).to_be_bytes());
        p.extend_from_slice(username);
        p.resize(20 + 4 + padded, 0);
        p
    }

    #[test]
    fn a_flow_goes_to_the_worker_of_its_ufrag_and_stays_there() {
        let ufrags: UfragIndex = Default::default();
        ufrags.write().unwrap().insert("w1frag".into(), 1);
        ufrags.write().unwrap().insert("w0frag".into(), 0);
        let now = Instant::now();
        let mut routes = Routes::new(ufrags.clone(), now);
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:6000".parse().unwrap();
        let srtp = [0x80u8, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        // Nothing is known of a source before its binding request.
        assert_eq!(routes.route(a, &srtp, now), None);
        assert_eq!(routes.route(a, &binding_request(b"w1frag:client"), now), Some(1));
        assert_eq!(routes.route(b, &binding_request(b"w0frag:client"), now), Some(0));
        // DTLS/SRTP after it follows the address.
        assert_eq!(routes.route(a, &srtp, now), Some(1));
        assert_eq!(routes.route(b, &srtp, now), Some(0));
        // An unknown ufrag does not move a known flow; a peer that moves to another worker's
        // ufrag (a new session from the same port) does.
        assert_eq!(routes.route(a, &binding_request(b"nobody:client"), now), Some(1));
        assert_eq!(routes.route(a, &binding_request(b"w0frag:client"), now), Some(0));
        // Idle addresses are forgotten.
        let later = now + ADDRESS_IDLE * 2;
        routes.prune(later);
        assert_eq!(routes.route(b, &srtp, later), None);
    }

    #[test]
    fn a_batch_keeps_each_datagram_whole() {
        let mut batch = DatagramBatch::default();
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        batch.push(a, b"first");
        batch.push(a, b"");
        batch.push(a, b"third one");
        let got: Vec<&[u8]> = batch.iter().map(|(_, d)| d).collect();
        assert_eq!(got, vec![&b"first"[..], &b""[..], &b"third one"[..]]);
        batch.clear();
        assert!(batch.is_empty());
    }
}
