//! The pre-call network test (PRODUCT.md §9, `POST /v1/speedtest`) as a plain state machine
//! with injected time: control messages (JSON text on `speedtest-ctl`) and data frames (binary on
//! `speedtest-data`) in, control messages and data frames out, the result at the end.
//!
//! Phases, after the client's `{"type":"start","up_kbps":U,"down_kbps":D}`, a second apart
//! (`SETTLE`; before the downlink, also until the uplink is quiet):
//! 1. **ping**, 2 s: the client sends 50 pings a second; each is echoed at once. Like RTCP's
//!    sender and receiver reports, a ping carries the server time of the last echo the client
//!    got and how long it held it, so the server measures the round trip itself.
//! 2. **up**, 5 s (skipped when U is 0): the client sends 1000-byte frames paced at U; the server
//!    counts what arrives.
//! 3. **down**, 5 s (skipped when D is 0): the server sends 1000-byte frames paced at D (never
//!    more than the channel's buffer holds, so the transport's congestion control decides what
//!    the path carries); then asks for `{"type":"down_report","received":n,"bytes":b}`.
//!
//! The server announces each phase on ctl (`{"type":"phase","name":…}`), then sends `result`.
//! Frames (big-endian): ping `01 seq:u32 echo_ts:u32 held_ms:u32 echoes:u32` padded to 100
//! bytes; echo `02 seq:u32 server_ts:u32` padded to 100; up `03 seq:u32` padded to 1000;
//! down `04 seq:u32` padded to 1000. Times are milliseconds since the test began.

use serde_json::{json, Value};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub const PING_PHASE: Duration = Duration::from_secs(2);
pub const LOAD_PHASE: Duration = Duration::from_secs(5);
/// A quiet second between phases: what one phase left queued (the browser's uplink buffer, its
/// delayed acknowledgements) does not spill into the next. An acknowledgement held up behind a
/// saturated uplink for over a second would otherwise time out the server's SCTP sender and
/// leave it in congestion avoidance from one packet for the whole downlink phase.
pub const SETTLE: Duration = Duration::from_secs(1);
/// Before the downlink, the settle also waits until no uplink frame has arrived for this long
/// (at most [`SETTLE_MAX`]): a browser's socket can hold seconds of uplink frames beyond what
/// its data channel reports as buffered, and the downlink's acknowledgements would queue behind
/// them, time out the server's SCTP sender and leave it in congestion avoidance from one packet.
pub const SETTLE_QUIET: Duration = Duration::from_millis(300);
pub const SETTLE_MAX: Duration = Duration::from_secs(6);
/// How long the client has to start, and to report the downlink.
const START_WITHIN: Duration = Duration::from_secs(10);
const REPORT_WITHIN: Duration = Duration::from_secs(3);
/// Requested rates are 10–5000 kbit/s (0 skips the direction).
pub const RATES_KBPS: std::ops::RangeInclusive<u32> = 10..=5000;
pub const PING_BYTES: usize = 100;
pub const LOAD_BYTES: usize = 1000;
/// The downlink is paced in steps this long.
pub const PACING_STEP: Duration = Duration::from_millis(10);
/// Frames are not queued past this much unsent data on the channel.
pub const MAX_BUFFERED: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Up,
    Down,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    WaitStart,
    Ping,
    /// Between phases, then the next one.
    Settle(Next),
    Up,
    Down,
    Report,
    Done,
}

/// What the test gives out.
#[derive(Debug, Clone, PartialEq)]
pub enum SpeedTestOutput {
    /// A JSON message for `speedtest-ctl`.
    Control(String),
    /// A frame for `speedtest-data`.
    Data(Vec<u8>),
}

/// The numbers behind the result.
#[derive(Debug, Default, Clone)]
struct Counts {
    pings: u32,
    ping_max_seq: Option<u32>,
    /// When each echo went out, and the latest (echoes due back, echoes the client got).
    echoes_sent_at: Vec<Instant>,
    echoes_back: Option<(u32, u32)>,
    rtts: Vec<f64>,
    up_frames: u32,
    up_bytes: u64,
    up_max_seq: Option<u32>,
    up_first: Option<Instant>,
    up_last: Option<Instant>,
    down_sent: u32,
    down_received: Option<(u32, u64)>,
}

pub struct SpeedTest {
    created: Instant,
    phase: Phase,
    phase_end: Instant,
    /// A settle ends by this time even if uplink frames still trickle in.
    settle_cap: Instant,
    up_kbps: u32,
    down_kbps: u32,
    /// Downlink bytes owed by the pacer.
    down_credit: f64,
    next_step: Instant,
    counts: Counts,
    server_ip: String,
    out: VecDeque<SpeedTestOutput>,
}

impl SpeedTest {
    pub fn new(server_ip: String, now: Instant) -> SpeedTest {
        SpeedTest {
            created: now,
            phase: Phase::WaitStart,
            phase_end: now + START_WITHIN,
            settle_cap: now,
            up_kbps: 0,
            down_kbps: 0,
            down_credit: 0.0,
            next_step: now,
            counts: Counts::default(),
            server_ip,
            out: VecDeque::new(),
        }
    }

    fn ms(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.created).as_millis() as u32
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    pub fn poll_output(&mut self) -> Option<SpeedTestOutput> {
        self.out.pop_front()
    }

    /// When `handle_timeout` is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Done => None,
            Phase::Down => Some(self.next_step.min(self.phase_end)),
            _ => Some(self.phase_end),
        }
    }

    fn control(&mut self, v: Value) {
        self.out.push_back(SpeedTestOutput::Control(v.to_string()));
    }

    fn fail(&mut self, why: &str) {
        self.control(json!({"type": "result", "success": false, "err_msg": why, "ip": self.server_ip, "quality": 0, "up_lost_rate": 0.0, "down_lost_rate": 0.0, "rtt": -1, "available_up_bandwidth": -1, "available_down_bandwidth": -1}));
        self.phase = Phase::Done;
    }

    fn enter(&mut self, phase: Phase, now: Instant) {
        let (phase, len) = match phase {
            Phase::Up if self.up_kbps == 0 => return self.enter(Phase::Down, now),
            Phase::Down if self.down_kbps == 0 => return self.finish(),
            Phase::Ping => (phase, PING_PHASE),
            Phase::Settle(_) => {
                self.phase = phase;
                self.phase_end = now + SETTLE;
                self.settle_cap = now + SETTLE_MAX;
                return;
            }
            Phase::Up | Phase::Down => (phase, LOAD_PHASE),
            Phase::Report => (phase, REPORT_WITHIN),
            _ => (phase, Duration::ZERO),
        };
        self.phase = phase;
        self.phase_end = now + len;
        self.next_step = now;
        let name = match phase {
            Phase::Ping => "ping",
            Phase::Up => "up",
            Phase::Down => "down",
            _ => "report",
        };
        self.control(json!({"type": "phase", "name": name, "ms": len.as_millis() as u64}));
    }

    /// A message on `speedtest-ctl`.
    pub fn handle_control(&mut self, text: &str, now: Instant) {
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return self.fail("a control message is JSON");
        };
        match (v["type"].as_str(), self.phase) {
            (Some("start"), Phase::WaitStart) => {
                let rate = |k: &str| v[k].as_u64().filter(|r| *r == 0 || RATES_KBPS.contains(&(*r as u32))).map(|r| r as u32);
                match (rate("up_kbps"), rate("down_kbps")) {
                    (Some(u), Some(d)) => {
                        self.up_kbps = u;
                        self.down_kbps = d;
                        self.enter(Phase::Ping, now);
                    }
                    _ => self.fail("up_kbps and down_kbps are 10 to 5000 (0 skips)"),
                }
            }
            (Some("down_report"), Phase::Report) => {
                let (n, b) = (v["received"].as_u64().unwrap_or(0), v["bytes"].as_u64().unwrap_or(0));
                self.counts.down_received = Some((n.min(u32::MAX as u64) as u32, b));
                self.finish();
            }
            _ => {}
        }
    }

    /// A frame on `speedtest-data`.
    pub fn handle_data(&mut self, frame: &[u8], now: Instant) {
        let word = |i: usize| frame.get(i..i + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        match (frame.first(), self.phase) {
            (Some(1), Phase::Ping | Phase::Up) => {
                let Some(seq) = word(1) else { return };
                let c = &mut self.counts;
                c.pings += 1;
                c.ping_max_seq = c.ping_max_seq.max(Some(seq));
                if let (Some(echo_ts), Some(held), Some(echoes)) = (word(5), word(9), word(13)) {
                    let rtt = self.ms(now) as f64 - echo_ts as f64 - held as f64;
                    if echo_ts > 0 && (0.0..10_000.0).contains(&rtt) {
                        let c = &mut self.counts;
                        c.rtts.push(rtt);
                        // Echoes sent a round trip (and a little) before now have had time to
                        // reach the client and be counted in this ping.
                        let cutoff = now.checked_sub(Duration::from_secs_f64(rtt / 1000.0) + Duration::from_millis(2));
                        let due = cutoff.map_or(0, |t| c.echoes_sent_at.iter().filter(|s| **s <= t).count() as u32);
                        c.echoes_back = Some((due, echoes.min(due)));
                    }
                }
                if self.phase == Phase::Ping {
                    let mut echo = vec![0u8; PING_BYTES];
                    echo[0] = 2;
                    echo[1..5].copy_from_slice(&seq.to_be_bytes());
                    echo[5..9].copy_from_slice(&self.ms(now).max(1).to_be_bytes());
                    self.counts.echoes_sent_at.push(now);
                    self.out.push_back(SpeedTestOutput::Data(echo));
                }
            }
            (Some(3), Phase::Up) => {
                let Some(seq) = word(1) else { return };
                let c = &mut self.counts;
                c.up_frames += 1;
                c.up_bytes += frame.len() as u64;
                c.up_max_seq = c.up_max_seq.max(Some(seq));
                c.up_first.get_or_insert(now);
                c.up_last = Some(now);
            }
            (Some(_), Phase::Settle(Next::Down)) => {
                // Uplink frames still arriving: the path back is not quiet yet.
                self.phase_end = self.phase_end.max(now + SETTLE_QUIET).min(self.settle_cap);
            }
            _ => {}
        }
    }

    /// Advances phases and paces the downlink; `buffered` is what the data channel holds unsent.
    pub fn handle_timeout(&mut self, now: Instant, buffered: usize) {
        match self.phase {
            Phase::Done => {}
            Phase::Down if now < self.phase_end => {
                if now >= self.next_step {
                    let step = now.saturating_duration_since(self.next_step - PACING_STEP.min(self.next_step - self.created)).min(PACING_STEP * 5);
                    self.down_credit += self.down_kbps as f64 * 1000.0 / 8.0 * step.as_secs_f64();
                    self.next_step = now + PACING_STEP;
                    let mut room = MAX_BUFFERED.saturating_sub(buffered);
                    while self.down_credit >= LOAD_BYTES as f64 && room >= LOAD_BYTES {
                        let mut f = vec![0u8; LOAD_BYTES];
                        f[0] = 4;
                        f[1..5].copy_from_slice(&self.counts.down_sent.to_be_bytes());
                        self.counts.down_sent += 1;
                        self.out.push_back(SpeedTestOutput::Data(f));
                        self.down_credit -= LOAD_BYTES as f64;
                        room -= LOAD_BYTES;
                    }
                    // Credit does not pile up while the path is full.
                    self.down_credit = self.down_credit.min(LOAD_BYTES as f64 * 4.0);
                }
            }
            _ if now < self.phase_end => {}
            Phase::WaitStart => self.fail("no start within 10 s"),
            Phase::Ping if self.up_kbps == 0 && self.down_kbps == 0 => self.finish(),
            Phase::Ping if self.up_kbps == 0 => self.enter(Phase::Settle(Next::Down), now),
            Phase::Ping => self.enter(Phase::Settle(Next::Up), now),
            Phase::Settle(Next::Up) => self.enter(Phase::Up, now),
            Phase::Up if self.down_kbps == 0 => self.finish(),
            Phase::Up => self.enter(Phase::Settle(Next::Down), now),
            Phase::Settle(Next::Down) => self.enter(Phase::Down, now),
            Phase::Down => self.enter(Phase::Report, now),
            Phase::Report => self.finish(),
        }
    }

    /// The transport did not take a downlink frame (its buffer is full): it does not count as
    /// sent.
    pub fn not_sent(&mut self, frame: &[u8]) {
        if frame.first() == Some(&4) {
            self.counts.down_sent = self.counts.down_sent.saturating_sub(1);
        }
    }

    fn finish(&mut self) {
        let c = &self.counts;
        let lost = |got: u32, of: u64| if of == 0 { 0.0 } else { (1.0 - got as f64 / of as f64).clamp(0.0, 1.0) };
        // Uplink loss: of the load frames when there were some, else of the pings. Sequence
        // numbers are the client's: any u32 (the fuzzer found u32::MAX + 1).
        let up_lost = match c.up_max_seq {
            Some(m) => lost(c.up_frames, m as u64 + 1),
            None => lost(c.pings, c.ping_max_seq.map_or(0, |m| m as u64 + 1)),
        };
        // Downlink loss: of the load frames when reported, else of the echoes.
        let down_lost = match c.down_received {
            Some((n, _)) if c.down_sent > 0 => lost(n, c.down_sent as u64),
            _ => c.echoes_back.map_or(0.0, |(due, got)| lost(got, due as u64)),
        };
        let mut rtts = c.rtts.clone();
        rtts.sort_by(f64::total_cmp);
        let rtt = rtts.get(rtts.len() / 2).copied();
        let secs = LOAD_PHASE.as_secs_f64();
        let up_bw = if self.up_kbps == 0 || c.up_frames == 0 { -1 } else { (c.up_bytes as f64 * 8.0 / secs / 1000.0).round() as i64 };
        let down_bw = match c.down_received {
            Some((_, b)) if self.down_kbps > 0 => (b as f64 * 8.0 / secs / 1000.0).round() as i64,
            _ => -1,
        };
        let quality = crate::quality::score(Some(up_lost.max(down_lost) * 100.0), rtt);
        let result = json!({
            "type": "result", "success": true, "err_msg": "", "ip": self.server_ip, "quality": quality,
            "up_lost_rate": (up_lost * 1000.0).round() / 1000.0, "down_lost_rate": (down_lost * 1000.0).round() / 1000.0,
            "rtt": rtt.map_or(-1, |r| r.round() as i64),
            "available_up_bandwidth": up_bw, "available_down_bandwidth": down_bw,
        });
        self.control(result);
        self.phase = Phase::Done;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated client over a link with `one_way` delay each way, sending and receiving at
    /// most `up_cap` / `down_cap` kbit/s (what does not fit is lost).
    fn run(up: u32, down: u32, one_way: Duration, up_cap: u32, down_cap: u32) -> Value {
        let t0 = Instant::now();
        let mut st = SpeedTest::new("10.0.0.1".into(), t0);
        st.handle_control(&format!(r#"{{"type":"start","up_kbps":{up},"down_kbps":{down}}}"#), t0);
        let mut now = t0;
        let mut to_server: Vec<(Instant, Vec<u8>)> = Vec::new();
        let mut to_client: Vec<(Instant, SpeedTestOutput)> = Vec::new();
        let (mut phase, mut seq, mut last_echo, mut echoes, mut received, mut bytes) = (String::new(), 0u32, None::<(u32, Instant)>, 0u32, 0u32, 0u64);
        let (mut up_sent_bytes, mut down_window_bytes, mut window_start, mut credit) = (0f64, 0f64, t0, 0f64);
        let step = Duration::from_millis(5);
        for _ in 0..20_000 {
            now += step;
            // The client.
            if now.duration_since(window_start) >= Duration::from_secs(1) {
                (up_sent_bytes, down_window_bytes, window_start) = (0.0, 0.0, now);
            }
            let ms = now.duration_since(t0).as_millis() as u64;
            if phase == "ping" && ms.is_multiple_of(20) {
                let mut f = vec![0u8; PING_BYTES];
                f[0] = 1;
                f[1..5].copy_from_slice(&seq.to_be_bytes());
                if let Some((ts, at)) = last_echo {
                    f[5..9].copy_from_slice(&ts.to_be_bytes());
                    f[9..13].copy_from_slice(&(now.duration_since(at).as_millis() as u32).to_be_bytes());
                }
                f[13..17].copy_from_slice(&echoes.to_be_bytes());
                seq += 1;
                to_server.push((now + one_way, f));
            }
            if phase == "up" {
                // Paced at `up`; beyond the link's cap, frames are lost.
                credit += up as f64 * 1000.0 / 8.0 * step.as_secs_f64();
                while credit >= 1000.0 {
                    credit -= 1000.0;
                    let mut f = vec![0u8; LOAD_BYTES];
                    f[0] = 3;
                    f[1..5].copy_from_slice(&seq.to_be_bytes());
                    seq += 1;
                    up_sent_bytes += 1000.0;
                    if up_sent_bytes <= up_cap as f64 * 1000.0 / 8.0 {
                        to_server.push((now + one_way, f));
                    }
                }
            }
            let due: Vec<_> = to_server.iter().filter(|(t, _)| *t <= now).map(|(_, f)| f.clone()).collect();
            to_server.retain(|(t, _)| *t > now);
            for f in due {
                st.handle_data(&f, now);
            }
            st.handle_timeout(now, 0);
            while let Some(o) = st.poll_output() {
                to_client.push((now + one_way, o));
            }
            let due: Vec<_> = to_client.iter().filter(|(t, _)| *t <= now).map(|(_, o)| o.clone()).collect();
            to_client.retain(|(t, _)| *t > now);
            for o in due {
                match o {
                    SpeedTestOutput::Control(c) => {
                        let v: Value = serde_json::from_str(&c).unwrap();
                        match v["type"].as_str() {
                            Some("phase") => {
                                phase = v["name"].as_str().unwrap().to_owned();
                                seq = 0;
                                if phase == "report" {
                                    st.handle_control(&format!(r#"{{"type":"down_report","received":{received},"bytes":{bytes}}}"#), now);
                                }
                            }
                            Some("result") => return v,
                            _ => {}
                        }
                    }
                    SpeedTestOutput::Data(f) if f[0] == 2 => {
                        echoes += 1;
                        last_echo = Some((u32::from_be_bytes([f[5], f[6], f[7], f[8]]), now));
                    }
                    SpeedTestOutput::Data(f) => {
                        down_window_bytes += f.len() as f64;
                        if down_window_bytes <= down_cap as f64 * 1000.0 / 8.0 {
                            received += 1;
                            bytes += f.len() as u64;
                        }
                    }
                }
            }
            if phase == "report" {
                st.handle_timeout(now, 0);
            }
        }
        panic!("no result");
    }

    #[test]
    fn a_shaped_link_is_measured() {
        let r = run(5000, 5000, Duration::from_millis(50), 2000, 4000);
        assert_eq!(r["success"], true, "{r}");
        let rtt = r["rtt"].as_i64().unwrap();
        assert!((95..=110).contains(&rtt), "{r}");
        let up = r["available_up_bandwidth"].as_i64().unwrap();
        let down = r["available_down_bandwidth"].as_i64().unwrap();
        assert!((1800..=2100).contains(&up), "{r}");
        assert!((3600..=4100).contains(&down), "{r}");
        assert!(r["up_lost_rate"].as_f64().unwrap() > 0.4, "half of 5000 kbit/s does not fit: {r}");
        assert_eq!(r["ip"], "10.0.0.1");
    }

    #[test]
    fn a_clean_link_and_skipped_directions() {
        let r = run(1000, 0, Duration::from_millis(10), 100_000, 100_000);
        assert_eq!((r["up_lost_rate"].as_f64(), r["available_down_bandwidth"].as_i64()), (Some(0.0), Some(-1)), "{r}");
        assert!((900..=1100).contains(&r["available_up_bandwidth"].as_i64().unwrap()), "{r}");
        assert_eq!(r["quality"], 1, "{r}");
        let r = run(0, 0, Duration::from_millis(10), 100_000, 100_000);
        assert_eq!((r["available_up_bandwidth"].as_i64(), r["available_down_bandwidth"].as_i64()), (Some(-1), Some(-1)), "{r}");
        assert!((18..=25).contains(&r["rtt"].as_i64().unwrap()), "{r}");
    }

    /// Drives a test with no client traffic up to the settle before the downlink; then uplink
    /// frames keep arriving every 100 ms until `trickle_until`. Returns when the downlink began.
    fn downlink_start(trickle_until: Duration) -> Duration {
        let t0 = Instant::now();
        let mut st = SpeedTest::new("ip".into(), t0);
        st.handle_control(r#"{"type":"start","up_kbps":100,"down_kbps":100}"#, t0);
        let mut now = t0;
        let up_ended = PING_PHASE + SETTLE + LOAD_PHASE;
        let mut frame = vec![3u8; LOAD_BYTES];
        frame[1..5].copy_from_slice(&7u32.to_be_bytes());
        while now < t0 + Duration::from_secs(30) {
            now += Duration::from_millis(10);
            let t = now - t0;
            if t > up_ended && t <= up_ended + trickle_until && t.as_millis().is_multiple_of(100) {
                st.handle_data(&frame, now);
            }
            if st.poll_timeout().is_some_and(|at| at <= now) {
                st.handle_timeout(now, 0);
            }
            while let Some(o) = st.poll_output() {
                if matches!(&o, SpeedTestOutput::Control(c) if c.contains(r#""name":"down""#)) {
                    return t - up_ended;
                }
            }
        }
        panic!("the downlink never began");
    }

    #[test]
    fn the_downlink_waits_for_the_uplink_backlog_to_drain() {
        // A quiet path: the plain one-second settle.
        let quiet = downlink_start(Duration::ZERO);
        assert!(quiet >= SETTLE && quiet < SETTLE + Duration::from_millis(30), "{quiet:?}");
        // Frames for 2.5 s after the uplink ended: the downlink starts once 300 ms passed without.
        let drained = downlink_start(Duration::from_millis(2500));
        assert!(drained >= Duration::from_millis(2800) && drained < Duration::from_millis(2850), "{drained:?}");
        // A path that never goes quiet: at most SETTLE_MAX.
        let capped = downlink_start(Duration::from_secs(20));
        assert!(capped >= SETTLE_MAX && capped < SETTLE_MAX + Duration::from_millis(30), "{capped:?}");
    }

    #[test]
    fn rates_outside_the_range_fail_the_test() {
        for (u, d) in [(5001, 100), (100, 9), (-1, 100)] {
            let t0 = Instant::now();
            let mut st = SpeedTest::new("ip".into(), t0);
            st.handle_control(&format!(r#"{{"type":"start","up_kbps":{u},"down_kbps":{d}}}"#), t0);
            let Some(SpeedTestOutput::Control(c)) = st.poll_output() else { panic!() };
            let v: Value = serde_json::from_str(&c).unwrap();
            assert_eq!((v["type"].as_str(), v["success"].as_bool()), (Some("result"), Some(false)), "{v}");
            assert!(st.is_done());
        }
        let t0 = Instant::now();
        let mut st = SpeedTest::new("ip".into(), t0);
        st.handle_timeout(t0 + Duration::from_secs(11), 0);
        assert!(st.is_done(), "no start: the test ends");
    }
}
