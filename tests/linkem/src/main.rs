//! `linkem`: a network link emulator for the test bed (this kernel has no netem).
//!
//! Bridges two interfaces frame by frame (AF_PACKET, with the virtio-net header passed through
//! so GSO and checksum offload survive) and impairs each direction like netem over tbf: random
//! or Gilbert–Elliott burst loss, a rate cap with a drop-tail queue, delay with jitter, and
//! optional reordering. Directions: `down` is from `--server-if` to `--client-if`, `up` the
//! other way.
//!
//! Impairments are set at start (`--down`, `--up`) and changed while running by lines on stdin:
//! `down rate=400 queue=200 delay=25 jitter=5 loss=5 burst=10:5 reorder=1` (kbit/s, ms, %,
//! `burst=<average loss %>:<mean burst length in packets>`; a key left out keeps its value;
//! `rate=0` is unlimited), `both ...`, `stats` (one JSON line of counters), `mark` and `queue`
//! (below) and `quit`. Prints `{"ready":true}` once bridging.
//!
//! `queue` answers each direction's queueing delay since the last `mark` (or the start), in
//! whole ms, sampled every `QUEUE_TICK`: what a packet arriving at that moment would have
//! waited behind the rate cap. It is the part of a round trip that a sender's rate adds, read
//! at every tick rather than from a browser's few smoothed STUN round trips.

use std::collections::BinaryHeap;
use std::io::BufRead;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const VNET_HDR_LEN: usize = 10;
const SOL_PACKET: libc::c_int = 263;
const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
/// How often the queueing delay is sampled (`queue`).
const QUEUE_TICK: Duration = Duration::from_millis(10);
/// At most this many samples are kept per direction (10 minutes at `QUEUE_TICK`).
const QUEUE_SAMPLES_MAX: usize = 60_000;

#[derive(Debug, Clone, Copy, Default)]
struct Impairment {
    rate_kbps: f64,
    queue_ms: f64,
    delay_ms: f64,
    jitter_ms: f64,
    loss_pct: f64,
    /// Gilbert–Elliott: average loss and mean burst length (packets); 0 = off.
    burst_pct: f64,
    burst_len: f64,
    reorder_pct: f64,
}

impl Impairment {
    fn apply(&mut self, spec: &str) -> Result<(), String> {
        for kv in spec.split_whitespace() {
            let (k, v) = kv.split_once('=').ok_or_else(|| format!("{kv}: key=value"))?;
            let num = |s: &str| s.trim_end_matches(['%', 'k', 'm', 's']).parse::<f64>().map_err(|_| format!("{kv}: not a number"));
            match k {
                "rate" => self.rate_kbps = num(v)?,
                "queue" => self.queue_ms = num(v)?,
                "delay" => self.delay_ms = num(v)?,
                "jitter" => self.jitter_ms = num(v)?,
                "loss" => self.loss_pct = num(v)?,
                "reorder" => self.reorder_pct = num(v)?,
                "burst" => {
                    let (p, l) = v.split_once(':').ok_or_else(|| format!("{kv}: burst=<loss %>:<mean length>"))?;
                    self.burst_pct = num(p)?;
                    self.burst_len = num(l)?.max(1.0);
                }
                _ => return Err(format!("{k}: unknown key")),
            }
        }
        Ok(())
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    frames: u64,
    bytes: u64,
    lost: u64,
    queue_drops: u64,
    reordered: u64,
    /// Frames that were several packets (a GSO skb, the virtio-net header's gso_type set): the
    /// impairments would apply to them whole. The harness caps the server side's GSO segments
    /// at 1 (the kernel cuts them first, as a NIC would), so this stays 0.
    gso_frames: u64,
}

struct Frame {
    at: Instant,
    seq: u64,
    data: Vec<u8>,
}

impl PartialEq for Frame {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at && self.seq == o.seq
    }
}
impl Eq for Frame {}
impl PartialOrd for Frame {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Frame {
    // Earliest release first (BinaryHeap is a max-heap).
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        o.at.cmp(&self.at).then(o.seq.cmp(&self.seq))
    }
}

/// One direction: the impairment and its state (serializer, loss chain, release queue).
struct Link {
    imp: Impairment,
    link_free_at: Instant,
    last_release: Instant,
    bad_state: bool,
    rng: u64,
    seq: u64,
    queue: BinaryHeap<Frame>,
    count: Counters,
    /// The queueing delay in ms at each `QUEUE_TICK` since the last `mark`.
    queued_ms: Vec<u32>,
}

impl Link {
    fn new(imp: Impairment, seed: u64) -> Link {
        let now = Instant::now();
        Link { imp, link_free_at: now, last_release: now, bad_state: false, rng: seed | 1, seq: 0, queue: BinaryHeap::new(), count: Counters::default(), queued_ms: Vec::new() }
    }

    /// Records what a packet arriving now would wait behind the rate cap.
    fn sample_queue(&mut self, now: Instant) {
        if self.queued_ms.len() < QUEUE_SAMPLES_MAX {
            self.queued_ms.push(self.link_free_at.saturating_duration_since(now).as_millis() as u32);
        }
    }

    fn uniform(&mut self) -> f64 {
        // xorshift64*: enough for loss draws.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn lose(&mut self) -> bool {
        if self.imp.burst_pct > 0.0 {
            // Two states: bad loses every packet and is left with 1/len per packet; good is
            // entered from bad so that the time in bad is the average loss.
            let r = 1.0 / self.imp.burst_len;
            let loss = (self.imp.burst_pct / 100.0).min(0.99);
            let p = r * loss / (1.0 - loss);
            let u = self.uniform();
            self.bad_state = if self.bad_state { u >= r } else { u < p };
            if self.bad_state {
                return true;
            }
        }
        self.imp.loss_pct > 0.0 && self.uniform() * 100.0 < self.imp.loss_pct
    }

    /// Takes a frame arriving now; queues it for its release time or drops it.
    fn admit(&mut self, data: Vec<u8>, is_ip: bool, now: Instant) {
        self.count.frames += 1;
        if data.get(1).is_some_and(|&gso_type| gso_type != 0) {
            self.count.gso_frames += 1;
        }
        self.count.bytes += data.len() as u64;
        if is_ip && self.lose() {
            self.count.lost += 1;
            return;
        }
        let mut depart = now;
        if self.imp.rate_kbps > 0.0 {
            let start = self.link_free_at.max(now);
            let queued = start.duration_since(now).as_secs_f64() * 1000.0;
            let limit = if self.imp.queue_ms > 0.0 { self.imp.queue_ms } else { 100.0 };
            if queued > limit {
                self.count.queue_drops += 1;
                return;
            }
            let wire = (data.len() - VNET_HDR_LEN) as f64 * 8.0 / (self.imp.rate_kbps * 1000.0);
            depart = start + Duration::from_secs_f64(wire);
            self.link_free_at = depart;
        }
        let jitter = if self.imp.jitter_ms > 0.0 { (self.uniform() * 2.0 - 1.0) * self.imp.jitter_ms } else { 0.0 };
        let delay = (self.imp.delay_ms + jitter).max(0.0);
        let mut at = depart + Duration::from_secs_f64(delay / 1000.0);
        let reorder = self.imp.reorder_pct > 0.0 && self.uniform() * 100.0 < self.imp.reorder_pct;
        if reorder {
            // Held back behind the next few packets.
            at += Duration::from_millis(10);
            self.count.reordered += 1;
        } else {
            // Jitter alone does not reorder (a real queue keeps order).
            at = at.max(self.last_release);
            self.last_release = at;
        }
        self.seq += 1;
        self.queue.push(Frame { at, seq: self.seq, data });
    }
}

struct Direction {
    link: Mutex<Link>,
    wake: Condvar,
}

fn open(ifname: &str) -> Result<(libc::c_int, libc::c_int), String> {
    let cname = std::ffi::CString::new(ifname).map_err(|e| e.to_string())?;
    // SAFETY: plain socket syscalls on values we own; every return is checked.
    unsafe {
        let index = libc::if_nametoindex(cname.as_ptr()) as libc::c_int;
        if index == 0 {
            return Err(format!("{ifname}: no such interface"));
        }
        let proto = (libc::ETH_P_ALL as u16).to_be() as libc::c_int;
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto);
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        let one: libc::c_int = 1;
        for opt in [PACKET_VNET_HDR, PACKET_IGNORE_OUTGOING] {
            if libc::setsockopt(fd, SOL_PACKET, opt, &one as *const _ as *const libc::c_void, 4) != 0 {
                return Err(format!("setsockopt {opt}: {}", std::io::Error::last_os_error()));
            }
        }
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto as u16;
        sll.sll_ifindex = index;
        if libc::bind(fd, &sll as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_ll>() as u32) != 0 {
            return Err(format!("bind {ifname}: {}", std::io::Error::last_os_error()));
        }
        Ok((fd, index))
    }
}

fn is_ip(frame: &[u8]) -> bool {
    // virtio header, then Ethernet: the EtherType at 12..14.
    frame.len() > VNET_HDR_LEN + 14 && matches!(&frame[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14], [0x08, 0x00] | [0x86, 0xdd])
}

/// Reads frames from `from` into `dir`.
fn receive(fd: libc::c_int, dir: Arc<Direction>) {
    let mut buf = vec![0u8; 70_000];
    loop {
        // SAFETY: buf outlives the call and its length is passed.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        let frame = buf[..n as usize].to_vec();
        let ip = is_ip(&frame);
        let mut link = dir.link.lock().unwrap();
        link.admit(frame, ip, Instant::now());
        dir.wake.notify_one();
    }
}

/// Sends `dir`'s frames out of `fd` at their release times.
fn release(fd: libc::c_int, dir: Arc<Direction>) {
    let mut link = dir.link.lock().unwrap();
    loop {
        let now = Instant::now();
        match link.queue.peek().map(|f| f.at) {
            Some(at) if at <= now => {
                let f = link.queue.pop().expect("peeked");
                drop(link);
                // SAFETY: the frame outlives the call; a failed send is a lost frame.
                unsafe { libc::send(fd, f.data.as_ptr() as *const libc::c_void, f.data.len(), 0) };
                link = dir.link.lock().unwrap();
            }
            Some(at) => link = dir.wake.wait_timeout(link, at - now).unwrap().0,
            None => link = dir.wake.wait(link).unwrap(),
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut server_if, mut client_if, mut down, mut up) = (String::new(), String::new(), Impairment::default(), Impairment::default());
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_default();
        let r = match a.as_str() {
            "--server-if" => {
                server_if = v;
                Ok(())
            }
            "--client-if" => {
                client_if = v;
                Ok(())
            }
            "--down" => down.apply(&v),
            "--up" => up.apply(&v),
            _ => Err(format!("{a}: usage: linkem --server-if IF --client-if IF [--down SPEC] [--up SPEC]")),
        };
        if let Err(e) = r {
            eprintln!("linkem: {e}");
            std::process::exit(2);
        }
    }
    let (s_fd, c_fd) = match (open(&server_if), open(&client_if)) {
        (Ok(s), Ok(c)) => (s.0, c.0),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("linkem: {e}");
            std::process::exit(1);
        }
    };
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    let downlink = Arc::new(Direction { link: Mutex::new(Link::new(down, seed)), wake: Condvar::new() });
    let uplink = Arc::new(Direction { link: Mutex::new(Link::new(up, seed.rotate_left(17))), wake: Condvar::new() });
    for (from, to, dir) in [(s_fd, c_fd, downlink.clone()), (c_fd, s_fd, uplink.clone())] {
        let d = dir.clone();
        std::thread::spawn(move || receive(from, d));
        std::thread::spawn(move || release(to, dir));
    }
    {
        let dirs = [downlink.clone(), uplink.clone()];
        std::thread::spawn(move || {
            let mut next = Instant::now();
            loop {
                next += QUEUE_TICK;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                let now = Instant::now();
                for d in &dirs {
                    d.link.lock().unwrap().sample_queue(now);
                }
            }
        });
    }
    println!("{{\"ready\":true}}");
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let (cmd, rest) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        let dirs: &[&Arc<Direction>] = match cmd {
            "down" => &[&downlink],
            "up" => &[&uplink],
            "both" => &[&downlink, &uplink],
            "stats" => {
                let d = downlink.link.lock().unwrap().count;
                let u = uplink.link.lock().unwrap().count;
                let j = |c: Counters| {
                    format!(
                        "{{\"frames\":{},\"bytes\":{},\"lost\":{},\"queue_drops\":{},\"reordered\":{},\"gso_frames\":{}}}",
                        c.frames, c.bytes, c.lost, c.queue_drops, c.reordered, c.gso_frames
                    )
                };
                println!("{{\"down\":{},\"up\":{}}}", j(d), j(u));
                continue;
            }
            "mark" => {
                for d in [&downlink, &uplink] {
                    d.link.lock().unwrap().queued_ms.clear();
                }
                println!("{{\"ok\":true}}");
                continue;
            }
            "queue" => {
                let j = |d: &Arc<Direction>| {
                    let l = d.link.lock().unwrap();
                    l.queued_ms.iter().map(|q| q.to_string()).collect::<Vec<_>>().join(",")
                };
                println!("{{\"tick_ms\":{},\"down\":[{}],\"up\":[{}]}}", QUEUE_TICK.as_millis(), j(&downlink), j(&uplink));
                continue;
            }
            "quit" => break,
            "" => continue,
            other => {
                println!("{{\"error\":\"{other}: down|up|both|stats|mark|queue|quit\"}}");
                continue;
            }
        };
        for d in dirs {
            let mut link = d.link.lock().unwrap();
            let mut imp = link.imp;
            match imp.apply(rest) {
                Ok(()) => link.imp = imp,
                Err(e) => println!("{{\"error\":\"{e}\"}}"),
            }
        }
        println!("{{\"ok\":true}}");
    }
}
